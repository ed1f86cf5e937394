//! Disk assembly without loop devices or mounts: one GPT image that boots under BIOS
//! (SeaBIOS) and UEFI (OVMF).
//!
//! Layout (512-byte sectors): p1 BIOS boot 1 MiB @2048 (GRUB core.img), p2 ESP 32 MiB FAT
//! @4096 (systemd-boot, the kernel and the initramfs), p3 ext4 root, then 1 MiB for the
//! backup GPT. The root filesystem is written straight into the image file at its partition
//! offset by `mkfs.ext4 -E offset= -d`; the ESP is built as a small FAT file with mtools and
//! copied in. See `../shared/spec/images-and-vms.md` §3.
//!
//! - BIOS: GRUB's core.img with its config embedded, so nothing GRUB-related lives in the
//!   root fs and there is no menu (timeout 0). It loads `/vmlinuz` and `/initrd.img` from the
//!   root filesystem.
//! - UEFI: systemd-boot (timeout 0) starts the kernel's own EFI stub with the same command
//!   line, from copies of the kernel and initramfs on the ESP. Not GRUB: GRUB 2.06's EFI heap
//!   is a quarter of the VM's memory, and Debian's generic kernel needs 64 MiB of it to
//!   unpack (`init_size`), so GRUB ran out of memory in a 256 MiB VM. The EFI stub allocates
//!   that memory from the firmware instead.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::tools::{self, cmd, ToolError};

pub(crate) const SECTOR: u64 = 512;
pub(crate) const BIOS_START: u64 = 2048;
pub(crate) const BIOS_SECTORS: u64 = 2048;
pub(crate) const ESP_START: u64 = 4096;
pub(crate) const ESP_SECTORS: u64 = 32 * 2048;
pub(crate) const ROOT_START: u64 = ESP_START + ESP_SECTORS;
pub(crate) const ROOT_LABEL: &str = "akanda-root";

/// GPT partition type GUIDs.
const TYPE_BIOS_BOOT: &str = "21686148-6449-6E6F-744E-656564454649";
const TYPE_ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
const TYPE_LINUX_ROOT_X86_64: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";

/// GRUB modules built into both GRUB images (the config is embedded, so nothing is loaded
/// from disk at boot).
const GRUB_MODULES: &str =
    "part_gpt part_msdos ext2 search search_fs_uuid linux boot serial terminal echo normal \
     configfile gzio";

/// Identifiers written into the image. With `SOURCE_DATE_EPOCH` they are derived from it so
/// two builds give the same bytes; otherwise they are random, so two images never share a
/// filesystem UUID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ids {
    pub(crate) disk_guid: String,
    pub(crate) root_partuuid: String,
    pub(crate) root_uuid: String,
    pub(crate) ext4_hash_seed: String,
    /// FAT volume id, 8 hex digits.
    pub(crate) esp_volume_id: String,
}

fn uuid_from(bytes: &[u8]) -> String {
    let mut b = [0u8; 16];
    b.copy_from_slice(&bytes[..16]);
    // RFC 4122 variant 1, version 4 layout (random-looking, well-formed).
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

impl Ids {
    /// Derived from a seed (the `SOURCE_DATE_EPOCH` value and the build's inputs).
    pub(crate) fn derived(seed: &str) -> Ids {
        let h = |what: &str| Sha256::digest(format!("akanda-image {what} {seed}").as_bytes());
        Ids {
            disk_guid: uuid_from(&h("disk")),
            root_partuuid: uuid_from(&h("root-part")),
            root_uuid: uuid_from(&h("root-fs")),
            ext4_hash_seed: uuid_from(&h("hash-seed")),
            esp_volume_id: hex::encode(&h("esp")[..4]),
        }
    }

    pub(crate) fn random() -> Ids {
        let mut seed = [0u8; 32];
        // getrandom(2) cannot fail for 32 bytes once the pool is initialised; fall back to
        // the clock and pid so a failure never blocks a build.
        // SAFETY: seed is a valid writable buffer of the given length.
        let n = unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), 0) };
        if n != seed.len() as isize {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            seed[..16].copy_from_slice(&t.as_nanos().to_le_bytes());
            seed[16..20].copy_from_slice(&std::process::id().to_le_bytes());
        }
        Ids::derived(&hex::encode(seed))
    }
}

/// The kernel command line: serial console last so it is `/dev/console` (what OpenStack's
/// console log shows); root by filesystem UUID, mounted read-write at once (no fsck pass, no
/// remount: the agent can start before local-fs.target); `net.ifnames=0` so udev never
/// renames a NIC while the agent renames it to `geN`; `scsi_mod.scan=sync` so a SCSI host
/// (virtio-scsi) has scanned its devices before its driver's module load returns, which is
/// what lets the agent look for the config drive once, without a timed wait (see the `vm`
/// element's `root.d/50-small-initramfs`); `cryptomgr.notests` skips the self-tests of every
/// kernel crypto algorithm at registration (mainline's default; Debian turns them on), about
/// 0.4 s of a boot under emulation, for checks of the kernel's own implementations.
pub(crate) fn kernel_cmdline(ids: &Ids) -> String {
    format!(
        "root=UUID={} rw console=tty0 console=ttyS0,115200n8 net.ifnames=0 scsi_mod.scan=sync cryptomgr.notests panic=10",
        ids.root_uuid
    )
}

/// systemd-boot's files on the ESP: `loader/loader.conf` and the one boot entry.
pub(crate) fn systemd_boot_files(ids: &Ids) -> [(&'static str, String); 2] {
    [
        (
            "loader/loader.conf",
            "timeout 0\ndefault akanda.conf\neditor no\nauto-entries no\nauto-firmware no\n".into(),
        ),
        (
            "loader/entries/akanda.conf",
            format!(
                "title Akanda router\nlinux /vmlinuz\ninitrd /initrd.img\noptions {}\n",
                kernel_cmdline(ids)
            ),
        ),
    ]
}

/// systemd-boot's EFI binary on the build host (Debian package `systemd-boot-efi`).
pub(crate) const SYSTEMD_BOOT_EFI: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";

/// The GRUB config embedded in the BIOS GRUB image: no menu, serial console, straight to Linux.
pub(crate) fn grub_cfg(ids: &Ids) -> String {
    format!(
        "set timeout=0\n\
         serial --unit=0 --speed=115200\n\
         terminal_input serial console\n\
         terminal_output serial console\n\
         search --no-floppy --fs-uuid --set=root {uuid}\n\
         linux /vmlinuz {cmdline}\n\
         initrd /initrd.img\n\
         boot\n",
        uuid = ids.root_uuid,
        cmdline = kernel_cmdline(ids),
    )
}

/// The sfdisk script for the layout.
pub(crate) fn sfdisk_script(ids: &Ids, root_sectors: u64) -> String {
    format!(
        "label: gpt\n\
         label-id: {disk}\n\
         start={BIOS_START}, size={BIOS_SECTORS}, type={TYPE_BIOS_BOOT}, name=bios, uuid={bios}\n\
         start={ESP_START}, size={ESP_SECTORS}, type={TYPE_ESP}, name=esp, uuid={esp}\n\
         start={ROOT_START}, size={root_sectors}, type={TYPE_LINUX_ROOT_X86_64}, name=root, uuid={root}\n",
        disk = ids.disk_guid,
        // The two small partitions' GUIDs are derived from the disk GUID so they are
        // reproducible too.
        bios = uuid_from(&Sha256::digest(format!("bios {}", ids.disk_guid).as_bytes())),
        esp = uuid_from(&Sha256::digest(format!("esp {}", ids.disk_guid).as_bytes())),
        root = ids.root_partuuid,
    )
}

/// Points GRUB's BIOS boot chain at core.img in the BIOS boot partition: the two sector
/// pointers `grub-bios-setup` would write (it needs a block device, we have a file).
/// boot.img (MBR) at 0x5c holds the LBA of core.img's first sector (diskboot.img); diskboot's
/// blocklist at 0x1f4 holds the LBA of the rest of core.img. `grub-mkimage` already filled in
/// the blocklist length. GRUB 2.06 offsets; the qemu boot test catches a change.
pub(crate) fn patch_bios_boot(image: &mut File, core_lba: u64) -> std::io::Result<()> {
    image.seek(SeekFrom::Start(0x5c))?;
    image.write_all(&core_lba.to_le_bytes())?;
    image.seek(SeekFrom::Start(core_lba * SECTOR + 0x1f4))?;
    image.write_all(&(core_lba + 1).to_le_bytes())?;
    Ok(())
}

/// Copies `src` into `dst` at byte `offset`, skipping all-zero blocks so the image stays sparse.
fn copy_into(src: &Path, dst: &mut File, offset: u64) -> std::io::Result<()> {
    let mut f = File::open(src)?;
    let mut buf = vec![0u8; 1 << 16];
    let mut pos = offset;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if buf[..n].iter().any(|&b| b != 0) {
            dst.seek(SeekFrom::Start(pos))?;
            dst.write_all(&buf[..n])?;
        }
        pos += n as u64;
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("GRUB core.img is {0} bytes, larger than the 1 MiB BIOS boot partition")]
    CoreTooBig(u64),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DiskError {
    let what = what.into();
    move |source| DiskError::Io { what, source }
}

/// Sizes the root partition: the tree's size plus a third for metadata and some free space
/// at first boot, at least `min_mib`.
pub(crate) fn root_mib(tree_bytes: u64, min_mib: u64) -> u64 {
    let mib = tree_bytes.div_ceil(1 << 20);
    (mib + mib / 3 + 64).max(min_mib)
}

/// Builds `raw` from the root tree. `epoch` pins the timestamps mkfs writes.
pub(crate) fn assemble(
    rootfs: &Path,
    raw: &Path,
    work: &Path,
    ids: &Ids,
    root_mib: u64,
    epoch: Option<u64>,
) -> Result<(), DiskError> {
    let root_sectors = root_mib * 2048;
    let total = ROOT_START + root_sectors + 2048;
    let _ = fs::remove_file(raw);
    {
        let f = File::create(raw).map_err(io(format!("create {}", raw.display())))?;
        f.set_len(total * SECTOR)
            .map_err(io(format!("size {}", raw.display())))?;
    }
    let mut sfdisk = cmd("sfdisk", ["--quiet", "--no-reread", "--no-tell-kernel"]);
    sfdisk.arg(raw);
    tools::run_with_input(&mut sfdisk, sfdisk_script(ids, root_sectors).as_bytes())?;

    // Root filesystem, written at the partition offset. Reserved blocks are 1%: an appliance
    // has no users to reserve space from, but root-owned daemons still get a margin.
    let mut mkfs = cmd("mkfs.ext4", ["-q", "-F", "-m", "1", "-L", ROOT_LABEL, "-U"]);
    mkfs.arg(&ids.root_uuid)
        .arg("-E")
        .arg(format!(
            "offset={},root_owner=0:0,hash_seed={}",
            ROOT_START * SECTOR,
            ids.ext4_hash_seed
        ))
        .arg("-d")
        .arg(rootfs)
        .arg(raw)
        .arg(format!("{}k", root_sectors / 2));
    if let Some(epoch) = epoch {
        mkfs.env("E2FSPROGS_FAKE_TIME", epoch.to_string());
    }
    tools::run(&mut mkfs)?;

    let cfg = work.join("grub.cfg");
    fs::write(&cfg, grub_cfg(ids)).map_err(io("write grub.cfg"))?;

    // UEFI: systemd-boot, its config, and the kernel and initramfs, on a FAT ESP made with
    // mtools. Every file gets the epoch's time (mcopy -m keeps it in the FAT entry).
    let esp_files = work.join("esp");
    let _ = fs::remove_dir_all(&esp_files);
    let mut files: Vec<(std::path::PathBuf, &str)> = Vec::new();
    let mut put = |name: &'static str, bytes: &[u8]| -> Result<(), DiskError> {
        let path = esp_files.join(name.replace('/', "_"));
        fs::create_dir_all(&esp_files).map_err(io("create the ESP staging directory"))?;
        fs::write(&path, bytes).map_err(io(format!("stage {name}")))?;
        if let Some(epoch) = epoch {
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(epoch);
            File::options()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_modified(t))
                .map_err(io(format!("set the time of {name}")))?;
        }
        files.push((path, name));
        Ok(())
    };
    let boot_efi = fs::read(SYSTEMD_BOOT_EFI).map_err(io(SYSTEMD_BOOT_EFI))?;
    put("EFI/BOOT/BOOTX64.EFI", &boot_efi)?;
    for (name, text) in systemd_boot_files(ids) {
        put(name, text.as_bytes())?;
    }
    for name in ["vmlinuz", "initrd.img"] {
        let bytes =
            fs::read(resolve_in(rootfs, name)).map_err(io(format!("read /{name} of the image")))?;
        put(name, &bytes)?;
    }
    let esp = work.join("esp.img");
    let _ = fs::remove_file(&esp);
    let mut mkvfat = cmd("mkfs.vfat", ["-C", "-n", "ESP", "-i"]);
    mkvfat
        .arg(&ids.esp_volume_id)
        .arg("--invariant")
        .arg(&esp)
        .arg((ESP_SECTORS / 2).to_string());
    tools::run(&mut mkvfat)?;
    let mtools_env = |c: &mut Command| {
        // mtools stamps new directories with the current time unless SOURCE_DATE_EPOCH is set.
        if let Some(epoch) = epoch {
            c.env("SOURCE_DATE_EPOCH", epoch.to_string());
        }
        c.env("MTOOLS_SKIP_CHECK", "1");
    };
    let mut mmd = cmd("mmd", ["-i"]);
    mmd.arg(&esp)
        .args(["::/EFI", "::/EFI/BOOT", "::/loader", "::/loader/entries"]);
    mtools_env(&mut mmd);
    tools::run(&mut mmd)?;
    for (path, name) in &files {
        let mut mcopy = cmd("mcopy", ["-m", "-i"]);
        mcopy.arg(&esp).arg(path).arg(format!("::/{name}"));
        mtools_env(&mut mcopy);
        tools::run(&mut mcopy)?;
    }
    let _ = fs::remove_dir_all(&esp_files);
    let cfg = work.join("grub.cfg");
    fs::write(&cfg, grub_cfg(ids)).map_err(io("write grub.cfg"))?;

    // BIOS: core.img with the embedded config into the BIOS boot partition.
    let core = work.join("core.img");
    let mut mkimage = cmd("grub-mkimage", ["-O", "i386-pc", "-p", "/boot/grub", "-c"]);
    mkimage
        .arg(&cfg)
        .arg("-o")
        .arg(&core)
        .arg("biosdisk")
        .args(GRUB_MODULES.split_whitespace());
    tools::run(&mut mkimage)?;
    let core_len = fs::metadata(&core).map_err(io("core.img"))?.len();
    if core_len > BIOS_SECTORS * SECTOR {
        return Err(DiskError::CoreTooBig(core_len));
    }

    let mut image = OpenOptions::new()
        .read(true)
        .write(true)
        .open(raw)
        .map_err(io(format!("open {}", raw.display())))?;
    copy_into(&esp, &mut image, ESP_START * SECTOR).map_err(io("copy the ESP into the image"))?;
    copy_into(&core, &mut image, BIOS_START * SECTOR).map_err(io("copy core.img"))?;
    // boot.img's code goes into MBR bytes 0..440 only: the protective MBR's partition
    // table that sfdisk wrote after it must stay.
    let boot = fs::read("/usr/lib/grub/i386-pc/boot.img").map_err(io("read GRUB boot.img"))?;
    image
        .seek(SeekFrom::Start(0))
        .and_then(|_| image.write_all(&boot[..440]))
        .map_err(io("write the MBR boot code"))?;
    patch_bios_boot(&mut image, BIOS_START).map_err(io("patch the BIOS boot chain"))?;
    image.sync_all().map_err(io("sync the image"))?;
    Ok(())
}

/// `rootfs/NAME`, following symbolic links inside the tree: Debian's `/vmlinuz` is a link
/// to `boot/vmlinuz-VERSION`, and an absolute link must not resolve on the build host.
fn resolve_in(rootfs: &Path, name: &str) -> std::path::PathBuf {
    let mut path = rootfs.join(name);
    for _ in 0..8 {
        let Ok(target) = fs::read_link(&path) else {
            break;
        };
        path = match target.strip_prefix("/") {
            Ok(abs) => rootfs.join(abs),
            Err(_) => path.parent().unwrap_or(rootfs).join(target),
        };
    }
    path
}

/// `qemu-img convert` to the final format. qcow2 is compressed (zlib, which every QEMU and
/// Glance consumer reads; zstd would be 5x faster but needs QEMU >= 5.1 on the compute hosts).
pub(crate) fn convert(raw: &Path, out: &Path, qcow2: bool) -> Result<(), DiskError> {
    let tmp = out.with_extension("partial");
    let mut c = cmd("qemu-img", ["convert", "-f", "raw", "-O"]);
    if qcow2 {
        c.args(["qcow2", "-c", "-m", "2"]);
    } else {
        c.arg("raw");
    }
    c.arg(raw).arg(&tmp);
    tools::run(&mut c)?;
    fs::rename(&tmp, out).map_err(io(format!("rename to {}", out.display())))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_stable_and_well_formed() {
        let a = Ids::derived("1700000000");
        assert_eq!(a, Ids::derived("1700000000"));
        assert_ne!(a.root_uuid, Ids::derived("1700000001").root_uuid);
        assert_eq!(a.root_uuid.len(), 36);
        assert_eq!(&a.root_uuid[14..15], "4");
        assert_eq!(a.esp_volume_id.len(), 8);
        assert_ne!(Ids::random().root_uuid, Ids::random().root_uuid);
    }

    #[test]
    fn systemd_boot_entry_has_the_same_command_line() {
        let ids = Ids::derived("x");
        let [(loader, conf), (entry, text)] = systemd_boot_files(&ids);
        assert_eq!(loader, "loader/loader.conf");
        assert!(
            conf.starts_with("timeout 0\ndefault akanda.conf\n"),
            "{conf}"
        );
        assert_eq!(entry, "loader/entries/akanda.conf");
        assert!(
            text.contains("linux /vmlinuz\ninitrd /initrd.img\n"),
            "{text}"
        );
        assert!(
            text.contains(&format!("options {}\n", kernel_cmdline(&ids))),
            "{text}"
        );
    }

    #[test]
    fn links_resolve_inside_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("boot")).unwrap();
        fs::write(root.join("boot/vmlinuz-6.1"), "kernel").unwrap();
        std::os::unix::fs::symlink("boot/vmlinuz-6.1", root.join("vmlinuz")).unwrap();
        std::os::unix::fs::symlink("/boot/vmlinuz-6.1", root.join("abs")).unwrap();
        assert_eq!(
            fs::read_to_string(resolve_in(root, "vmlinuz")).unwrap(),
            "kernel"
        );
        assert_eq!(
            fs::read_to_string(resolve_in(root, "abs")).unwrap(),
            "kernel"
        );
    }

    #[test]
    fn grub_cfg_boots_straight_to_linux_on_serial() {
        let ids = Ids::derived("x");
        let cfg = grub_cfg(&ids);
        assert!(cfg.starts_with("set timeout=0\n"));
        assert!(cfg.contains(&format!("--set=root {}", ids.root_uuid)));
        assert!(cfg.contains("console=ttyS0,115200n8"));
        assert!(cfg.ends_with("boot\n"));
    }

    #[test]
    fn bios_patch_writes_both_pointers() {
        let mut f = tempfile::tempfile().unwrap();
        f.set_len(2 * 1024 * 1024).unwrap();
        patch_bios_boot(&mut f, 2048).unwrap();
        let mut b = vec![0u8; 2 * 1024 * 1024];
        f.seek(SeekFrom::Start(0)).unwrap();
        f.read_exact(&mut b).unwrap();
        assert_eq!(&b[0x5c..0x64], &2048u64.to_le_bytes());
        let at = 2048 * 512 + 0x1f4;
        assert_eq!(&b[at..at + 8], &2049u64.to_le_bytes());
    }

    #[test]
    fn root_size_has_headroom() {
        assert_eq!(root_mib(0, 1024), 1024);
        assert_eq!(root_mib(3000 << 20, 1024), 3000 + 1000 + 64);
    }
}
