//! An installed `akanda-image` builds an image without the checkout it was compiled in.
//!
//! The builder, the release agent and the shipped elements are copied into a temporary
//! prefix laid out as an install would be (`PREFIX/bin/akanda-image`,
//! `PREFIX/bin/akanda-agent`, `PREFIX/share/akanda-image/elements/`), and the build runs from
//! there with the temporary directory as its working directory and no elements variable: the
//! elements and the agent can only be found from the executable's own location.
//!
//! The debootstrap base is shared with `image_root.rs` through the cache
//! (`$AKANDA_IMAGE_CACHE`, default `/var/cache/akanda-image`), so once it is cached the build
//! takes seconds. The image is raw (no compression) and deleted with the prefix.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn cache_dir() -> PathBuf {
    std::env::var_os("AKANDA_IMAGE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/akanda-image"))
}

fn run(cmd: &mut Command) -> (Output, String) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("--- {cmd:?} ({}):\n{text}", out.status);
    (out, text)
}

/// `cp -a`: keeps the elements' executable bits and symlinks.
fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    let (out, text) = run(Command::new("cp").arg("-a").arg(from).arg(to));
    assert!(out.status.success(), "{text}");
}

fn sha256(path: &Path) -> String {
    let (out, text) = run(Command::new("sha256sum").arg(path));
    assert!(out.status.success(), "{text}");
    text.split_whitespace().next().unwrap().to_string()
}

#[test]
fn installed_builder_finds_elements_and_agent_from_its_prefix() {
    if !akanda_tests::require_root() {
        return;
    }
    let prefix_dir = tempfile::Builder::new()
        .prefix("akt-install-")
        .tempdir()
        .unwrap();
    let prefix = prefix_dir.path();
    let image_bin = prefix.join("bin/akanda-image");
    let agent_bin = prefix.join("bin/akanda-agent");
    let elements = prefix.join("share/akanda-image/elements");
    copy(&akanda_tests::workspace_bin("akanda-image"), &image_bin);
    copy(&akanda_tests::release_bin("akanda-agent"), &agent_bin);
    copy(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../elements"),
        &elements,
    );
    let installed = |args: &[&str]| {
        let mut c = Command::new(&image_bin);
        c.args(args)
            .current_dir(prefix)
            .env_remove("AKANDA_ELEMENTS_PATH");
        c
    };

    // Every element comes from the prefix.
    let (out, text) = run(&mut installed(&["list-elements"]));
    assert!(out.status.success(), "{text}");
    let froms: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("from "))
        .collect();
    assert!(
        froms.iter().any(|f| f.ends_with("/akanda-router")),
        "{text}"
    );
    let shipped = elements.canonicalize().unwrap();
    for from in &froms {
        assert!(
            Path::new(from).starts_with(&shipped),
            "{from} is not under {}",
            shipped.display()
        );
    }

    // The default image, from the prefix alone.
    let image = prefix.join("router.raw");
    let cache = cache_dir();
    let (out, text) = run(&mut installed(&[
        "build",
        "-o",
        "router.raw",
        "--format",
        "raw",
        "--root-size",
        "1",
        "--cache-dir",
        cache.to_str().unwrap(),
    ]));
    assert!(
        out.status.success(),
        "build from the prefix failed:\n{text}"
    );
    assert!(
        text.contains(&format!("agent: {}", agent_bin.display())),
        "the agent beside the executable: {text}"
    );
    assert!(text.contains("akanda-router"), "{text}");
    assert!(image.is_file(), "{text}");
    // The agent in the image is the one installed beside akanda-image.
    let manifest = std::fs::read_to_string(prefix.join("router.raw.manifest")).unwrap();
    let line = manifest
        .lines()
        .find(|l| l.starts_with("/usr/local/sbin/akanda-agent f 755 0:0 "))
        .unwrap_or_else(|| panic!("no agent in the manifest"));
    assert!(line.ends_with(&sha256(&agent_bin)), "{line}");
}
