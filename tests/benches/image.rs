//! Image benchmark (root): cold build, warm rebuild after an agent change, qcow2 size, and
//! boot-to-agent-ready under TCG for each config drive attachment and firmware.
//!
//! `cargo build --workspace --bins && cargo build --release -p akanda-agent &&
//!  sudo cargo bench -p akanda-tests --bench image`
//!
//! - The cold build uses a fresh cache directory (debootstrap from the mirror, .debs
//!   included). Set `AKANDA_BENCH_SKIP_COLD=1` to skip it.
//! - "Warm after an agent change" touches `agent/src/main.rs`, then runs
//!   `cargo build --release -p akanda-agent` and the image build with the cached base.
//! - Boot-to-ready: `AKANDA_BENCH_BOOTS` rounds (default 1) of every attachment × firmware.

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
            .arg(cache)
            .arg("--agent-bin")
            .arg(akanda_tests::release_bin("akanda-agent")),
    )
    .0
}

/// Boot-to-ready in seconds, from verify's report.
fn boot_to_ready(image: &Path, args: &[&str]) -> f64 {
    let (_, text) = timed(
        Command::new(image_bin())
            .arg("verify")
            .arg(image)
            .args(args)
            .args(["--timeout", "300"]),
    );
    text.lines()
        .find_map(|l| l.trim().strip_prefix("boot-to-ready: "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|s| s.parse().ok())
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
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let f = std::fs::File::options()
        .write(true)
        .open(workspace.join("agent/src/main.rs"))
        .unwrap();
    f.set_modified(std::time::SystemTime::now()).unwrap();
    let (agent, _) = timed(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(&workspace)
            .args(["build", "--release", "-p", "akanda-agent"]),
    );
    let s = build(&image, &cache);
    println!(
        "warm rebuild after an agent change: {:.1} s (cargo build --release -p akanda-agent {agent:.1} s + image {s:.1} s)",
        agent + s
    );
    let size = std::fs::metadata(&image).unwrap().len();
    println!("qcow2 size: {:.1} MiB", size as f64 / 1048576.0);
    let rounds: usize = std::env::var("AKANDA_BENCH_BOOTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let attachments: [(&str, &[&str]); 5] = [
        ("q35, ISO 9660 on SATA CD-ROM", &[]),
        ("pc, ISO 9660 on IDE CD-ROM", &["--machine", "pc"]),
        (
            "q35, ISO 9660 on virtio-scsi CD-ROM",
            &["--cdrom-bus", "scsi"],
        ),
        (
            "q35, VFAT on virtio-blk",
            &["--config-drive-format", "vfat"],
        ),
        ("q35, no config drive (DHCP)", &["--dhcp"]),
    ];
    println!("boot-to-ready, s ({rounds} round(s) each):");
    for (name, args) in attachments {
        for firmware in ["bios", "uefi"] {
            let times: Vec<String> = (0..rounds)
                .map(|_| {
                    let mut a = vec!["--firmware", firmware];
                    a.extend_from_slice(args);
                    format!("{:.1}", boot_to_ready(&image, &a))
                })
                .collect();
            println!("  {name:<38} {firmware:<5} {}", times.join(" / "));
        }
    }
}
