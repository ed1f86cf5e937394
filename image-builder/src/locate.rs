//! Where the builder finds its elements and the agent: from its options, its environment and
//! its own executable's location, never from where it was compiled. So an `akanda-image`
//! installed to a prefix (or copied with its elements) builds on any machine.
//!
//! Layouts recognised beside the executable:
//! - an install prefix: `PREFIX/bin/akanda-image`, `PREFIX/bin/akanda-agent`,
//!   `PREFIX/share/akanda-image/elements/`;
//! - a checkout: `CHECKOUT/target/PROFILE/akanda-image` (and `akanda-agent`), with
//!   `CHECKOUT/elements/` beside the workspace's `Cargo.toml`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Colon-separated directories of elements, searched after `--elements-path`.
pub(crate) const ELEMENTS_PATH_ENV: &str = "AKANDA_ELEMENTS_PATH";
/// The shipped elements under an install prefix.
pub(crate) const SHARE_ELEMENTS: &str = "share/akanda-image/elements";
/// The agent binary, expected beside `akanda-image`.
pub(crate) const AGENT_BIN_NAME: &str = "akanda-agent";
/// How many directories above the executable a checkout is looked for: `target/release/`
/// is two, `target/x86_64-unknown-linux-gnu/release/` three.
const CHECKOUT_DEPTH: usize = 4;

/// The elements path, in lookup order: `--elements-path` entries, then `$AKANDA_ELEMENTS_PATH`,
/// then the shipped elements found from this executable ([`shipped_elements`]).
pub fn elements_path(cli: &[PathBuf]) -> Vec<PathBuf> {
    let exe = std::env::current_exe().ok();
    elements_path_from(cli, std::env::var_os(ELEMENTS_PATH_ENV), exe.as_deref())
}

/// [`elements_path`] with its inputs given, for tests.
pub(crate) fn elements_path_from(
    cli: &[PathBuf],
    env: Option<OsString>,
    exe: Option<&Path>,
) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = cli.to_vec();
    if let Some(env) = env {
        out.extend(std::env::split_paths(&env).filter(|p| !p.as_os_str().is_empty()));
    }
    match exe.and_then(shipped_elements) {
        Some(shipped) => out.push(shipped.canonicalize().unwrap_or(shipped)),
        None => tracing::warn!(
            exe = ?exe,
            "no shipped elements beside this executable (neither ../{SHARE_ELEMENTS} nor a \
             checkout's elements/): only --elements-path and ${ELEMENTS_PATH_ENV} are searched"
        ),
    }
    out
}

/// The shipped elements directory for the executable `exe`: the install prefix's
/// `share/akanda-image/elements`, else the `elements/` of the checkout it was built in.
pub(crate) fn shipped_elements(exe: &Path) -> Option<PathBuf> {
    let bin_dir = exe.parent()?;
    let prefix = bin_dir.parent().map(|p| p.join(SHARE_ELEMENTS));
    if let Some(p) = prefix.filter(|p| p.is_dir()) {
        return Some(p);
    }
    // A checkout: the nearest ancestor holding both the workspace's Cargo.toml and elements/.
    bin_dir
        .ancestors()
        .skip(1)
        .take(CHECKOUT_DEPTH)
        .find(|dir| dir.join("Cargo.toml").is_file() && dir.join("elements").is_dir())
        .map(|dir| dir.join("elements"))
}

/// The agent binary beside the executable `exe` (`target/release/akanda-agent` after
/// `cargo build --release`, which builds both at once so the agent is compiled once, or
/// `PREFIX/bin/akanda-agent` where both are installed).
pub(crate) fn agent_beside(exe: &Path) -> Option<PathBuf> {
    Some(exe.parent()?.join(AGENT_BIN_NAME))
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    fn mkdirs(root: &Path, dirs: &[&str]) {
        for d in dirs {
            fs::create_dir_all(root.join(d)).unwrap();
        }
    }

    #[test]
    fn order_is_cli_then_environment_then_shipped() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().canonicalize().unwrap();
        mkdirs(&root, &["usr/bin", "usr/share/akanda-image/elements"]);
        let exe = root.join("usr/bin/akanda-image");
        let env = std::env::join_paths(["/env/one", "", "/env/two"]).unwrap();
        let got = elements_path_from(
            &[PathBuf::from("/cli/a"), PathBuf::from("/cli/b")],
            Some(env),
            Some(&exe),
        );
        assert_eq!(
            got,
            [
                PathBuf::from("/cli/a"),
                PathBuf::from("/cli/b"),
                PathBuf::from("/env/one"),
                PathBuf::from("/env/two"),
                root.join("usr/share/akanda-image/elements"),
            ]
        );
    }

    #[test]
    fn install_prefix_is_found_from_the_executable() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        mkdirs(root, &["opt/ak/bin", "opt/ak/share/akanda-image/elements"]);
        assert_eq!(
            shipped_elements(&root.join("opt/ak/bin/akanda-image")),
            Some(root.join("opt/ak/share/akanda-image/elements"))
        );
    }

    #[test]
    fn checkout_is_found_from_target_profile() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        mkdirs(
            root,
            &[
                "src/akanda/target/release",
                "src/akanda/elements/akanda-router",
            ],
        );
        fs::write(root.join("src/akanda/Cargo.toml"), "[workspace]\n").unwrap();
        let want = Some(root.join("src/akanda/elements"));
        assert_eq!(
            shipped_elements(&root.join("src/akanda/target/release/akanda-image")),
            want
        );
        // A cross build's target/TRIPLE/release/ too.
        mkdirs(
            root,
            &["src/akanda/target/x86_64-unknown-linux-gnu/release"],
        );
        assert_eq!(
            shipped_elements(
                &root.join("src/akanda/target/x86_64-unknown-linux-gnu/release/akanda-image")
            ),
            want
        );
    }

    #[test]
    fn prefix_wins_over_a_checkout_and_nothing_is_none() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        // A prefix inside a checkout-looking tree: the prefix's elements are the ones
        // installed with this binary.
        mkdirs(
            root,
            &["elements", "p/bin", "p/share/akanda-image/elements"],
        );
        fs::write(root.join("Cargo.toml"), "").unwrap();
        assert_eq!(
            shipped_elements(&root.join("p/bin/akanda-image")),
            Some(root.join("p/share/akanda-image/elements"))
        );
        let bare = tempfile::tempdir().unwrap();
        mkdirs(bare.path(), &["bin"]);
        assert_eq!(
            shipped_elements(&bare.path().join("bin/akanda-image")),
            None
        );
        // Without a shipped directory the path is what was given.
        assert_eq!(
            elements_path_from(
                &[PathBuf::from("/cli")],
                None,
                Some(&bare.path().join("bin/akanda-image"))
            ),
            [PathBuf::from("/cli")]
        );
    }

    #[test]
    fn agent_is_beside_the_executable() {
        assert_eq!(
            agent_beside(Path::new("/opt/ak/bin/akanda-image")),
            Some(PathBuf::from("/opt/ak/bin/akanda-agent"))
        );
    }
}
