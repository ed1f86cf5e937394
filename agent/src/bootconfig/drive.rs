//! Finding the config drive: waiting for the kernel's storage probing, reading superblocks,
//! and reading the documents from a read-only mount or a directory.

use super::*;

// ---------------------------------------------------------------------------------------------
// Finding and reading the config drive

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FsType {
    Iso9660,
    Vfat,
}

impl FsType {
    fn kernel_name(self) -> &'static str {
        match self {
            FsType::Iso9660 => "iso9660",
            FsType::Vfat => "vfat",
        }
    }
}

/// Bytes of a device needed by [`detect_label`]: the ISO 9660 primary volume descriptor ends
/// at 34 KiB.
pub(crate) const PROBE_BYTES: usize = 0x8800;

fn trimmed(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .trim_end_matches([' ', '\0'])
        .to_string()
}

/// The filesystem type and label of a device from its first [`PROBE_BYTES`]. Pure.
pub(crate) fn detect_label(head: &[u8]) -> Option<(FsType, String)> {
    // ISO 9660: primary volume descriptor at sector 16 (of 2048 bytes): type 1, "CD001",
    // volume identifier at byte 40, 32 characters padded with spaces.
    if head.len() >= 0x8000 + 72 && head[0x8000] == 1 && &head[0x8001..0x8006] == b"CD001" {
        return Some((FsType::Iso9660, trimmed(&head[0x8028..0x8048])));
    }
    // FAT: boot sector signature 55 AA; the extended BPB (signature 0x29) holds the label,
    // at 0x2B for FAT12/16 and 0x47 for FAT32.
    if head.len() >= 512 && head[510] == 0x55 && head[511] == 0xaa {
        if head[0x42] == 0x29 && &head[0x52..0x57] == b"FAT32" {
            return Some((FsType::Vfat, trimmed(&head[0x47..0x52])));
        }
        if head[0x26] == 0x29 && &head[0x36..0x39] == b"FAT" {
            return Some((FsType::Vfat, trimmed(&head[0x2b..0x36])));
        }
    }
    None
}

/// Block devices whose label is `config-2` (case-insensitive: FAT labels are often upper-cased).
pub(super) fn find_config_drives() -> Vec<(PathBuf, FsType)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/sys/class/block") else {
        return out;
    };
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("loop") && !n.starts_with("ram") && !n.starts_with("zram"))
        .collect();
    names.sort();
    for name in names {
        let dev = PathBuf::from("/dev").join(&name);
        let Ok(mut f) = File::open(&dev) else {
            continue;
        };
        let mut head = vec![0u8; PROBE_BYTES];
        if f.seek(SeekFrom::Start(0)).is_err() || f.read_exact(&mut head).is_err() {
            continue;
        }
        if let Some((fs, label)) = detect_label(&head) {
            if label.eq_ignore_ascii_case(CONFIG_DRIVE_LABEL) {
                out.push((dev, fs));
            }
        }
    }
    out
}

/// network_data.json, meta_data.json and user_data (empty when absent), read from a
/// directory (a mounted or extracted config drive).
pub(super) fn read_dir_docs(dir: &Path) -> Result<Docs, BootConfigError> {
    let read = |name: &str| {
        let path = dir.join("openstack/latest").join(name);
        std::fs::read(&path).map_err(|source| BootConfigError::Io {
            path: path.display().to_string(),
            source,
        })
    };
    let nd = read(ND)?;
    // meta_data.json is optional for our purposes: without it, defaults apply.
    let md = match read(MD) {
        Ok(md) => md,
        Err(BootConfigError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            b"{}".to_vec()
        }
        Err(e) => return Err(e),
    };
    let ud = match read(UD) {
        Ok(ud) => ud,
        Err(BootConfigError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            Vec::new()
        }
        Err(e) => return Err(e),
    };
    Ok((nd, md, ud))
}

type Docs = (Vec<u8>, Vec<u8>, Vec<u8>);

pub(super) fn read_device(dev: &Path, fs: FsType) -> Result<Docs, BootConfigError> {
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    let drive_err = |message: String| BootConfigError::Drive {
        device: dev.display().to_string(),
        message,
    };
    std::fs::create_dir_all(MOUNT_POINT).map_err(|source| BootConfigError::Io {
        path: MOUNT_POINT.into(),
        source,
    })?;
    mount(
        Some(dev),
        MOUNT_POINT,
        Some(fs.kernel_name()),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| drive_err(format!("mount ({}) read-only: {e}", fs.kernel_name())))?;
    let docs = read_dir_docs(Path::new(MOUNT_POINT));
    if let Err(e) = umount2(MOUNT_POINT, MntFlags::MNT_DETACH) {
        tracing::warn!(error = %e, "unmounting the config drive");
    }
    docs
}

/// What the kernel is still probing that could hide a config drive, read from sysfs (`sys`
/// is `/sys`, or a copy in tests). Empty means every block device that the present storage
/// controllers will ever show exists now.
///
/// - every PCI mass-storage controller (class 0x01: IDE, SATA/AHCI, SCSI, NVMe, and the
///   virtio-blk and virtio-scsi functions) has a driver bound;
/// - every virtio block or SCSI device has a driver bound;
/// - no kernel module is still running its init (`initstate` = `coming`).
///
/// A device that no driver of this kernel claims (its `modalias` matches nothing in
/// `modules.alias` or `modules.builtin.alias` of `modules`, the running kernel's module
/// directory) will never get one, so it is not waited for: an unknown emulated controller
/// costs nothing. A kernel without those files (unusual) waits for every device.
///
/// A driver is bound only when its probe has returned, and the image's initramfs loads the
/// storage drivers with modprobe, which returns after the module's asynchronous probing
/// (libata's port probe, sd and sr) is done, with SCSI scans made synchronous by
/// `scsi_mod.scan=sync`. So this is the kernel's own end of probing, not a timed guess.
pub(crate) fn storage_pending(sys: &Path, modules: &Path) -> Vec<String> {
    let mut pending = Vec::new();
    let aliases = driver_aliases(modules);
    let claimed = |dev: &Path| {
        let modalias = std::fs::read_to_string(dev.join("modalias")).unwrap_or_default();
        aliases.is_empty() || aliases.iter().any(|a| glob_match(a, modalias.trim()))
    };
    let bound = |dev: &Path| dev.join("driver").exists() || !claimed(dev);
    let read = |path: PathBuf| std::fs::read_to_string(path).unwrap_or_default();
    let entries = |dir: PathBuf| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        v.sort();
        v
    };
    for dev in entries(sys.join("bus/pci/devices")) {
        let class =
            u32::from_str_radix(read(dev.join("class")).trim().trim_start_matches("0x"), 16);
        if class.is_ok_and(|c| c >> 16 == 0x01) && !bound(&dev) {
            pending.push(format!(
                "PCI storage controller {} has no driver yet",
                file_name(&dev)
            ));
        }
    }
    for dev in entries(sys.join("bus/virtio/devices")) {
        // Virtio device ids: 2 block, 8 SCSI host.
        let id = u32::from_str_radix(read(dev.join("device")).trim().trim_start_matches("0x"), 16);
        if matches!(id, Ok(2 | 8)) && !bound(&dev) {
            pending.push(format!(
                "virtio storage device {} has no driver yet",
                file_name(&dev)
            ));
        }
    }
    for module in entries(sys.join("module")) {
        if read(module.join("initstate")).trim() == "coming" {
            pending.push(format!("module {} is loading", file_name(&module)));
        }
    }
    pending
}

/// The device patterns of the drivers this kernel has, as modules or built in.
fn driver_aliases(modules: &Path) -> Vec<String> {
    ["modules.alias", "modules.builtin.alias"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(modules.join(f)).ok())
        .flat_map(|text| {
            text.lines()
                .filter_map(|l| l.strip_prefix("alias "))
                .filter_map(|l| l.split_whitespace().next())
                .filter(|p| p.starts_with("pci:") || p.starts_with("virtio:"))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Shell-style match with `*` and `?`, as modules.alias patterns use.
fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The sysfs path of a block device (`/devices/pci0000:00/0000:00:1f.2/ata1/...`), which
/// names the bus it hangs on: logged so an operator sees how the drive was attached.
pub(super) fn device_path(dev: &Path) -> String {
    let link = Path::new("/sys/class/block").join(file_name(dev));
    std::fs::read_link(&link)
        .map(|p| p.to_string_lossy().trim_start_matches("../..").to_string())
        .unwrap_or_else(|_| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    fn iso_head(label: &str) -> Vec<u8> {
        let mut b = vec![0u8; PROBE_BYTES];
        b[0x8000] = 1;
        b[0x8001..0x8006].copy_from_slice(b"CD001");
        let mut id = [b' '; 32];
        id[..label.len()].copy_from_slice(label.as_bytes());
        b[0x8028..0x8048].copy_from_slice(&id);
        b
    }

    fn fat16_head(label: &str) -> Vec<u8> {
        let mut b = vec![0u8; PROBE_BYTES];
        b[0x26] = 0x29;
        let mut l = [b' '; 11];
        l[..label.len()].copy_from_slice(label.as_bytes());
        b[0x2b..0x36].copy_from_slice(&l);
        b[0x36..0x3e].copy_from_slice(b"FAT16   ");
        b[510] = 0x55;
        b[511] = 0xaa;
        b
    }

    #[test]
    fn labels_of_iso9660_and_vfat() {
        assert_eq!(
            detect_label(&iso_head("config-2")),
            Some((FsType::Iso9660, "config-2".into()))
        );
        assert_eq!(
            detect_label(&fat16_head("CONFIG-2")),
            Some((FsType::Vfat, "CONFIG-2".into()))
        );
        let mut fat32 = vec![0u8; PROBE_BYTES];
        fat32[0x42] = 0x29;
        fat32[0x47..0x52].copy_from_slice(b"config-2   ");
        fat32[0x52..0x5a].copy_from_slice(b"FAT32   ");
        fat32[510] = 0x55;
        fat32[511] = 0xaa;
        assert_eq!(
            detect_label(&fat32),
            Some((FsType::Vfat, "config-2".into()))
        );
        assert_eq!(detect_label(&vec![0u8; PROBE_BYTES]), None);
        // An MBR (55 AA but no FAT BPB) is not a filesystem.
        let mut mbr = vec![0u8; PROBE_BYTES];
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        assert_eq!(detect_label(&mbr), None);
    }

    #[test]
    fn a_real_vfat_config_drive_is_recognised() {
        // mkfs.vfat is how Nova makes VFAT config drives; skip quietly where it is missing
        // (the VM test covers the whole path).
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("cfg.img");
        let ok = std::process::Command::new("mkfs.vfat")
            .args(["-C", "-n", "config-2"])
            .arg(&img)
            .arg("1024")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !ok {
            eprintln!("mkfs.vfat not available: covered by the image test");
            return;
        }
        let mut head = vec![0u8; PROBE_BYTES];
        File::open(&img).unwrap().read_exact(&mut head).unwrap();
        let (fs, label) = detect_label(&head).unwrap();
        assert_eq!(fs, FsType::Vfat);
        assert!(label.eq_ignore_ascii_case(CONFIG_DRIVE_LABEL), "{label}");
    }

    /// A fake `/sys` with the entries [`storage_pending`] reads.
    struct FakeSys(tempfile::TempDir);

    impl FakeSys {
        fn new() -> FakeSys {
            FakeSys(tempfile::tempdir().unwrap())
        }
        fn device(&self, bus: &str, name: &str, file: &str, value: &str, driver: bool) {
            let dir = self
                .0
                .path()
                .join("bus")
                .join(bus)
                .join("devices")
                .join(name);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(file), format!("{value}\n")).unwrap();
            if driver {
                std::fs::create_dir_all(dir.join("driver")).unwrap();
            }
        }
        fn module(&self, name: &str, state: &str) {
            let dir = self.0.path().join("module").join(name);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("initstate"), format!("{state}\n")).unwrap();
        }
    }

    #[test]
    fn module_alias_patterns_match_like_modprobe() {
        assert!(glob_match(
            "pci:v*d*sv*sd*bc01sc06i01*",
            "pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01"
        ));
        assert!(glob_match(
            "virtio:d00000008v*",
            "virtio:d00000008v00001AF4"
        ));
        assert!(!glob_match(
            "virtio:d00000002v*",
            "virtio:d00000008v00001AF4"
        ));
        assert!(glob_match(
            "pci:v00008086d00007010sv*sd*bc*sc*i*",
            "pci:v00008086d00007010sv00001AF4sd00001100bc01sc01i80"
        ));
        assert!(!glob_match("pci:v00001000d*", "pci:v00008086d00007010"));
        assert!(glob_match("a?c*", "abcdef") && !glob_match("a?c", "abcd"));
    }

    #[test]
    fn a_controller_no_driver_claims_is_not_waited_for() {
        let sys = FakeSys::new();
        sys.device("pci", "0000:00:1f.2", "class", "0x010601", false);
        std::fs::write(
            sys.0.path().join("bus/pci/devices/0000:00:1f.2/modalias"),
            "pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01\n",
        )
        .unwrap();
        let modules = tempfile::tempdir().unwrap();
        // This kernel has no AHCI driver (Debian's cloud kernel): nothing to wait for.
        std::fs::write(
            modules.path().join("modules.alias"),
            "alias pci:v00008086d00007010sv*sd*bc*sc*i* ata_piix\n",
        )
        .unwrap();
        assert!(storage_pending(sys.0.path(), modules.path()).is_empty());
        // With ahci among the modules, the unbound controller is pending.
        std::fs::write(
            modules.path().join("modules.builtin.alias"),
            "alias pci:v*d*sv*sd*bc01sc06i01* ahci\n",
        )
        .unwrap();
        assert_eq!(
            storage_pending(sys.0.path(), modules.path()),
            ["PCI storage controller 0000:00:1f.2 has no driver yet"]
        );
    }

    #[test]
    fn storage_probing_is_finished_only_when_every_controller_is_bound() {
        let sys = FakeSys::new();
        // q35: AHCI controller, a virtio-blk function, a NIC (class 0x02) and a bridge.
        sys.device("pci", "0000:00:1f.2", "class", "0x010601", false);
        sys.device("pci", "0000:04:00.0", "class", "0x010000", true);
        sys.device("pci", "0000:01:00.0", "class", "0x020000", false);
        sys.device("pci", "0000:00:00.0", "class", "0x060000", false);
        sys.device("virtio", "virtio3", "device", "0x0008", false);
        sys.device("virtio", "virtio1", "device", "0x0001", false); // a NIC: not storage
        sys.module("ahci", "coming");
        sys.module("ext4", "live");
        assert_eq!(
            storage_pending(sys.0.path(), Path::new("/nonexistent")),
            [
                "PCI storage controller 0000:00:1f.2 has no driver yet",
                "virtio storage device virtio3 has no driver yet",
                "module ahci is loading",
            ]
        );
        sys.device("pci", "0000:00:1f.2", "class", "0x010601", true);
        sys.device("virtio", "virtio3", "device", "0x0008", true);
        sys.module("ahci", "live");
        assert!(storage_pending(sys.0.path(), Path::new("/nonexistent")).is_empty());
        // A machine without any of it (or no sysfs at all) has nothing to wait for.
        assert!(storage_pending(Path::new("/nonexistent"), Path::new("/nonexistent")).is_empty());
    }
}
