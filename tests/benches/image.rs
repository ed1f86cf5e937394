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
//!   `AKANDA_BENCH_IMAGE=PATH` boots that image instead of building one (no build figures);
//!   `AKANDA_BENCH_BASELINE_IMAGE=PATH` boots a second image alternately, run by run, for an
//!   A/B under the same load.

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

/// Boot-to-ready in seconds, from verify's report; `None` when the image did not become ready
/// (a baseline image that cannot read this attachment's config drive, for example).
fn boot_to_ready(image: &Path, args: &[&str]) -> Option<f64> {
    let out = Command::new(image_bin())
        .arg("verify")
        .arg(image)
        .args(args)
        .args(["--timeout", &verify_timeout().to_string()])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("akanda-image verify: {e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    out.status.success().then_some(())?;
    text.lines()
        .find_map(|l| l.trim().strip_prefix("boot-to-ready: "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|s| s.parse().ok())
}

/// `AKANDA_BENCH_TIMEOUT` (seconds, default 300): how long verify waits for the agent.
fn verify_timeout() -> u64 {
    std::env::var("AKANDA_BENCH_TIMEOUT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

fn median(mut xs: Vec<f64>) -> Option<f64> {
    xs.sort_by(|a, b| a.total_cmp(b));
    (!xs.is_empty()).then(|| xs[xs.len() / 2])
}

fn show(times: &[Option<f64>]) -> String {
    let all: Vec<String> = times
        .iter()
        .map(|t| t.map_or("failed".to_string(), |t| format!("{t:.1}")))
        .collect();
    match median(times.iter().flatten().copied().collect()) {
        Some(m) => format!("median {m:.1} ({})", all.join(" / ")),
        None => format!("never ready ({})", all.join(" / ")),
    }
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
    // AKANDA_BENCH_IMAGE: boot this image instead of building one (no build figures).
    let prebuilt = std::env::var_os("AKANDA_BENCH_IMAGE").map(PathBuf::from);
    let image = prebuilt
        .clone()
        .unwrap_or_else(|| work.path().join("akanda-router.qcow2"));
    if prebuilt.is_none() {
        build_figures(work.path(), &image);
    }
    boot_figures(&image);
}

fn build_figures(work: &Path, image: &Path) {
    if std::env::var("AKANDA_BENCH_SKIP_COLD").as_deref() != Ok("1") {
        let cold_cache = work.join("cache");
        let s = build(&work.join("cold.qcow2"), &cold_cache);
        println!("cold build (fresh cache): {s:.1} s");
    }
    let cache = PathBuf::from("/var/cache/akanda-image");
    build(image, &cache); // make sure the base is cached
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
    let s = build(image, &cache);
    println!(
        "warm rebuild after an agent change: {:.1} s (cargo build --release -p akanda-agent {agent:.1} s + image {s:.1} s)",
        agent + s
    );
    let size = std::fs::metadata(image).unwrap().len();
    println!("qcow2 size: {:.1} MiB", size as f64 / 1048576.0);
}

/// Boot-to-ready for every attachment × firmware. With AKANDA_BENCH_BASELINE_IMAGE, that image
/// is booted too, alternating with ours run by run, so both see the same load.
fn boot_figures(image: &Path) {
    let baseline = std::env::var_os("AKANDA_BENCH_BASELINE_IMAGE").map(PathBuf::from);
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
    println!("boot-to-ready, s ({rounds} round(s) each; ours, then the baseline if given):");
    for (name, args) in attachments {
        for firmware in ["bios", "uefi"] {
            let mut a = vec!["--firmware", firmware];
            a.extend_from_slice(args);
            let (mut ours, mut base) = (Vec::new(), Vec::new());
            for _ in 0..rounds {
                ours.push(boot_to_ready(image, &a));
                if let Some(b) = &baseline {
                    base.push(boot_to_ready(b, &a));
                }
            }
            println!("  {name:<38} {firmware:<5} {}", show(&ours));
            if baseline.is_some() {
                println!("  {:<38} {:<5} baseline {}", "", "", show(&base));
            }
        }
    }
}
