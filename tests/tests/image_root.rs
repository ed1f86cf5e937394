//! The Service Instance image, built and booted for real.
//!
//! One test, sequential on purpose (each step needs the previous one, and two TCG guests at
//! once on a 2-core CI machine would only slow each other down):
//! 1. `akanda-image build` of the default image plus an element from a temporary
//!    `--elements-path`; the element's install.d script must have run (in the chroot) and
//!    its file must be in the image's ext4 root (read back with debugfs, no mount).
//! 2. `akanda-image verify` with the config drive attached in each way an OpenStack compute
//!    node attaches one: ISO 9660 on a SATA CD-ROM (q35, the default), on an IDE CD-ROM
//!    (pc, under SeaBIOS and OVMF), on a SCSI CD-ROM behind virtio-scsi (under OVMF), and VFAT
//!    on a virtio-blk disk.
//!    Each time the agent's own log line must name the device it read, and the agent must
//!    answer on the config drive's management address (the management namespace runs no DHCP
//!    server then, so a lease cannot be what answers), over mutual TLS only (the config drive's
//!    user_data carries the TLS material; plain HTTP must fail); NICs named geN with their
//!    MACs, a PUT of a config for them, a tenant namespace pings the router.
//! 3. `akanda-image verify --firmware uefi --dhcp`: OVMF and the no-config-drive fallback
//!    (DHCP from dnsmasq in the management namespace); without TLS material or the plain-HTTP
//!    opt-in the agent must refuse the PUT (403).
//! 4. A failing element script: the error names the element, the phase, the script and the
//!    tail of its output.
//!
//! The debootstrap base is cached in `$AKANDA_IMAGE_CACHE` (default `/var/cache/akanda-image`,
//! the builder's own default), so only the first run on a machine pays for debootstrap.
//! The image gets the release agent (`target/release/akanda-agent`, built by scripts/test).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

/// `target/<profile>/akanda-image`, beside the test executable.
fn image_bin() -> PathBuf {
    akanda_tests::workspace_bin("akanda-image")
}

fn cache_dir() -> PathBuf {
    std::env::var_os("AKANDA_IMAGE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/akanda-image"))
}

fn run(cmd: &mut Command) -> (Output, String) {
    let started = Instant::now();
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "--- {cmd:?} ({:.1} s, {}):\n{text}",
        started.elapsed().as_secs_f64(),
        out.status
    );
    (out, text)
}

/// An element whose install.d script records that it ran inside the image tree.
fn write_test_element(dir: &Path) {
    let el = dir.join("akt-marker");
    std::fs::create_dir_all(el.join("install.d")).unwrap();
    std::fs::write(
        el.join("README.md"),
        "Test element: writes /etc/akt-marker.\n",
    )
    .unwrap();
    std::fs::write(el.join("element-deps"), "operating-system\n").unwrap();
    let script = el.join("install.d/50-marker");
    // /etc/debian_version exists only inside the Debian tree, so the marker proves the
    // script ran in the chroot, in install.d.
    std::fs::write(
        &script,
        "#!/bin/bash\nset -eu\necho \"phase=install.d debian=$(cat /etc/debian_version) \
         elements=$IMAGE_ELEMENT\" > /etc/akt-marker\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();

    let bad = dir.join("akt-broken");
    std::fs::create_dir_all(bad.join("post-install.d")).unwrap();
    std::fs::write(bad.join("element-deps"), "operating-system\n").unwrap();
    let script = bad.join("post-install.d/30-fails");
    std::fs::write(
        &script,
        "#!/bin/bash\necho 'step one done'\necho 'akt: something went wrong' >&2\nexit 7\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
}

/// Reads a file from the image's root filesystem without mounting it: qemu-img to raw, then
/// debugfs at the root partition's offset.
fn read_from_image(image: &Path, work: &Path, path: &str) -> String {
    let raw = work.join("check.raw");
    let (out, text) = run(Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(image)
        .arg(&raw));
    assert!(out.status.success(), "{text}");
    // Root partition: p3 at sector 69632 (image-builder/src/disk.rs ROOT_START).
    let (out, text) = run(Command::new("debugfs")
        .args(["-R", &format!("cat {path}")])
        .arg(format!("{}?offset={}", raw.display(), 69632 * 512)));
    assert!(out.status.success(), "{text}");
    let _ = std::fs::remove_file(&raw);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn image_builds_boots_under_bios_and_uefi_and_routes() {
    if !akanda_tests::require_root() {
        return;
    }
    let work = tempfile::Builder::new()
        .prefix("akt-image-")
        .tempdir()
        .unwrap();
    let elements = work.path().join("elements");
    write_test_element(&elements);
    let image = work.path().join("akanda-router.qcow2");

    // 1. Build, with the test element.
    let (out, text) = run(Command::new(image_bin())
        .arg("build")
        .arg("-o")
        .arg(&image)
        .arg("--cache-dir")
        .arg(cache_dir())
        .arg("--elements-path")
        .arg(&elements)
        .arg("--agent-bin")
        .arg(akanda_tests::release_bin("akanda-agent"))
        .args(["--element", "akt-marker"]));
    assert!(out.status.success(), "build failed:\n{text}");
    assert!(text.contains("phase timings:"), "{text}");
    assert!(text.contains("akt-marker"), "element list: {text}");
    let size = std::fs::metadata(&image).unwrap().len();
    eprintln!("qcow2 size: {:.1} MiB", size as f64 / 1048576.0);
    assert!(size <= 120 << 20, "qcow2 is {size} bytes, over 120 MiB");
    let marker = read_from_image(&image, work.path(), "/etc/akt-marker");
    assert!(
        marker.starts_with("phase=install.d debian=12."),
        "{marker:?}"
    );
    assert!(marker.contains("akt-marker"), "{marker:?}");
    let manifest = std::fs::read_to_string(format!("{}.manifest", image.display())).unwrap();
    assert!(
        manifest.contains("\n/etc/akt-marker f 644 0:0 "),
        "not in the manifest"
    );
    assert!(manifest.contains("\n/usr/local/sbin/akanda-agent f 755 0:0 "));

    // 2. The config drive in each way a compute node attaches it.
    let attachments: [(&[&str], &str, &str); 6] = [
        (
            &["--firmware", "bios"],
            "machine Q35, ISO 9660 on a SATA CD-ROM",
            "/dev/sr0 (",
        ),
        (
            &["--firmware", "bios", "--machine", "pc"],
            "machine Pc, ISO 9660 on an IDE CD-ROM",
            "/dev/sr0 (",
        ),
        // hw_cdrom_bus=sata, which `akanda-image upload` sets, on a pc machine (an AHCI
        // controller added, as libvirt does).
        (
            &[
                "--firmware",
                "bios",
                "--machine",
                "pc",
                "--cdrom-bus",
                "sata",
            ],
            "machine Pc, ISO 9660 on a SATA CD-ROM",
            "/dev/sr0 (",
        ),
        // OVMF leaves the PIIX IDE channels disabled: the vm element's initramfs enables them.
        (
            &["--firmware", "uefi", "--machine", "pc"],
            "machine Pc, ISO 9660 on an IDE CD-ROM",
            "/dev/sr0 (",
        ),
        (
            &["--firmware", "uefi", "--cdrom-bus", "scsi"],
            "machine Q35, ISO 9660 on a SCSI CD-ROM (virtio-scsi)",
            "/dev/sr0 (",
        ),
        (
            &["--firmware", "bios", "--config-drive-format", "vfat"],
            "machine Q35, VFAT on a virtio-blk disk",
            "/dev/vdb (",
        ),
    ];
    for (args, attachment, device) in attachments {
        let (out, text) = run(Command::new(image_bin())
            .arg("verify")
            .arg(&image)
            .args(args)
            .args(["--timeout", "300"]));
        assert!(out.status.success(), "verify {args:?} failed:\n{text}");
        assert!(text.contains("verify: OK ("), "{text}");
        assert!(text.contains(attachment), "{attachment}: {text}");
        assert!(
            text.contains(&format!("the agent read the config drive from {device}")),
            "{attachment}: the agent's log must name the device: {text}"
        );
        // The config drive's static management address, not a lease.
        assert!(
            text.contains("at [fdca:3ba5:a17a:acda::5]:5000"),
            "{attachment}: {text}"
        );
        assert!(text.contains("tenant ping to 192.168.0.1: OK"), "{text}");
        // The config drive carried TLS material: mutual TLS only, plain HTTP refused.
        assert!(
            text.contains("mutual TLS: server certificate verified; plain HTTP and a client without a certificate refused"),
            "{attachment}: {text}"
        );
    }

    // 3. OVMF, no config drive: DHCP fallback.
    let (out, text) = run(Command::new(image_bin()).arg("verify").arg(&image).args([
        "--firmware",
        "uefi",
        "--dhcp",
        "--timeout",
        "300",
    ]));
    assert!(out.status.success(), "verify (UEFI, DHCP) failed:\n{text}");
    assert!(text.contains("verify: OK (Uefi)"), "{text}");
    assert!(
        text.contains("10.99.0."),
        "listens on the DHCP lease: {text}"
    );
    // No config drive: no TLS material and no opt-in, so the image refuses config changes.
    assert!(text.contains("PUT /v1/system/config: 403"), "{text}");

    // 4. A failing element script is reported with its name, phase and output.
    let broken = work.path().join("broken.qcow2");
    let (out, text) = run(Command::new(image_bin())
        .arg("build")
        .arg("-o")
        .arg(&broken)
        .arg("--cache-dir")
        .arg(cache_dir())
        .arg("--elements-path")
        .arg(&elements)
        .args(["--element", "akt-broken"]));
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("element akt-broken: post-install.d/30-fails failed (exit status: 7)"),
        "{text}"
    );
    assert!(text.contains("akt: something went wrong"), "{text}");
    assert!(text.contains("step one done"), "{text}");
    assert!(!broken.exists(), "no image after a failed build");
    // The failed build kept its log for the operator; this test does not need it.
    let log = text
        .lines()
        .find_map(|l| l.strip_prefix("Full build log: "))
        .unwrap_or_else(|| panic!("no build log path: {text}"));
    assert!(Path::new(log).is_file(), "{log}");
    std::fs::remove_dir_all(Path::new(log).parent().unwrap()).unwrap();
}

#[test]
fn list_elements_shows_dependencies_and_descriptions() {
    let (out, text) = run(Command::new(image_bin()).arg("list-elements"));
    assert!(out.status.success(), "{text}");
    let router = text
        .lines()
        .find(|l| l.starts_with("akanda-router "))
        .unwrap_or_else(|| panic!("no akanda-router line: {text}"));
    assert!(
        router.contains("deps: vm,akanda-agent,router-services"),
        "{router}"
    );
    assert!(router.contains("The default Akanda router"), "{router}");
    for name in [
        "debian-minimal",
        "akanda-agent",
        "router-services",
        "vm",
        "debug-user",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(name)),
            "{name} missing: {text}"
        );
    }
}
