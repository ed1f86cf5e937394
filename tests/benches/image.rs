//! Image benchmark (root): cold build, warm rebuild after an agent change, qcow2 size, and
//! boot-to-agent-ready under TCG for SeaBIOS and OVMF.
//!
//! `cargo build --workspace --bins && sudo cargo bench -p akanda-tests --bench image`
//!
//! - The cold build uses a fresh cache directory (debootstrap from the mirror, .debs
//!   included). Set `AKANDA_BENCH_SKIP_COLD=1` to skip it.
//! - "Warm after an agent change" touches `agent/src/main.rs`, then builds with the default
//!   cache. The time includes cargo's incremental release build of the agent and the image
//!   build with the cached base.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

fn image_bin() -> PathBuf {
    akanda_tests::workspace_bin("akanda-image")
}

fn timed(cmd: &mut Command) -> (f64, String) {
    let t = Instant::now();
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    (t.elapsed().as_secs_f64(), text)
}

fn build(out: &Path, cache: &Path) -> f64 {
    timed(
        Command::new(image_bin())
            .arg("build")
            .arg("-o")
            .arg(out)
            .arg("--cache-dir")
            .arg(cache),
    )
    .0
}

fn boot_to_ready(image: &Path, firmware: &str) -> String {
    let (_, text) = timed(Command::new(image_bin()).arg("verify").arg(image).args([
        "--firmware",
        firmware,
        "--timeout",
        "300",
    ]));
    text.lines()
        .find(|l| l.contains("boot-to-ready"))
        .map(|l| l.trim().to_string())
        .unwrap_or_else(|| panic!("no boot-to-ready line:\n{text}"))
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the image bench needs root (debootstrap, chroot, network namespaces)");
        std::process::exit(1);
    }
    let work = tempfile::Builder::new()
        .prefix("akt-image-bench-")
        .tempdir()
        .unwrap();
    let image = work.path().join("akanda-router.qcow2");
    if std::env::var("AKANDA_BENCH_SKIP_COLD").as_deref() != Ok("1") {
        let cold_cache = work.path().join("cache");
        let s = build(&work.path().join("cold.qcow2"), &cold_cache);
        println!("cold build (fresh cache): {s:.1} s");
    }
    let cache = PathBuf::from("/var/cache/akanda-image");
    build(&image, &cache); // make sure the base is cached
    let main_rs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/src/main.rs");
    let f = std::fs::File::options().write(true).open(&main_rs).unwrap();
    f.set_modified(std::time::SystemTime::now()).unwrap();
    let s = build(&image, &cache);
    println!("warm rebuild after an agent change: {s:.1} s");
    let size = std::fs::metadata(&image).unwrap().len();
    println!("qcow2 size: {:.1} MiB", size as f64 / 1048576.0);
    println!("SeaBIOS: {}", boot_to_ready(&image, "bios"));
    println!("OVMF:    {}", boot_to_ready(&image, "uefi"));
}
