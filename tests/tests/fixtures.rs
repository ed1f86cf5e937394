//! The fixtures in `tests/fixtures/` are copies of `../shared/conformance/`, so that a lone
//! clone can run every test. This keeps the copies honest wherever the shared folder is
//! there (a developer's machine, CI); a clone without it skips, saying so.

use std::path::{Path, PathBuf};

/// (copy in this repository, original in `../shared/conformance/`)
const COPIES: &[(&str, &str)] = &[
    (
        "tests/fixtures/nova-config-drive/network_data.json",
        "nova-config-drive/network_data.json",
    ),
    (
        "tests/fixtures/nova-config-drive/meta_data.json",
        "nova-config-drive/meta_data.json",
    ),
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn fixtures_are_identical_to_the_shared_conformance_files() {
    let shared = workspace().join("../shared/conformance");
    if !shared.is_dir() {
        eprintln!("{} is absent: nothing to compare against", shared.display());
        return;
    }
    for (copy, original) in COPIES {
        let ours = std::fs::read(workspace().join(copy)).unwrap_or_else(|e| panic!("{copy}: {e}"));
        let theirs = std::fs::read(shared.join(original))
            .unwrap_or_else(|e| panic!("shared/conformance/{original}: {e}"));
        assert!(
            ours == theirs,
            "{copy} differs from shared/conformance/{original}: copy it again"
        );
    }
}
