//! The fixtures in `tests/fixtures/` are copies of the shared conformance samples (the
//! `conformance` folder of `../shared/`, beside the repository), so that a lone
//! clone can run every test. This keeps the copies honest wherever the shared folder is
//! there (a developer's machine, CI); a clone without it skips, saying so.

use std::path::{Path, PathBuf};

/// (copy in this repository, original in the shared conformance folder)
const COPIES: &[(&str, &str)] = &[
    (
        "tests/fixtures/astara-router-basic.json",
        "astara-router-basic.json",
    ),
    (
        "tests/fixtures/astara-router-full.json",
        "astara-router-full.json",
    ),
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
    let shared = workspace().join("../shared").join("conformance");
    if !shared.is_dir() {
        eprintln!("{} is absent: nothing to compare against", shared.display());
        return;
    }
    for (copy, original) in COPIES {
        let ours = std::fs::read(workspace().join(copy)).unwrap_or_else(|e| panic!("{copy}: {e}"));
        let theirs = std::fs::read(shared.join(original))
            .unwrap_or_else(|e| panic!("{}: {e}", shared.join(original).display()));
        assert!(
            ours == theirs,
            "{copy} differs from {}: copy it again",
            shared.join(original).display()
        );
    }
}
