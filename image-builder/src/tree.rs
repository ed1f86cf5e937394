//! The image's root tree on the build host: copied with `cp -a`, tidied of per-build files,
//! listed in a manifest, and its times clamped for reproducible builds.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::build::{io, BuildError};
use crate::tools::{self, cmd};

pub(crate) fn copy_tree(from: &Path, to: &Path) -> Result<(), BuildError> {
    // cp -a keeps ownership, modes, hard links, device nodes and xattrs.
    tools::run(cmd("cp", ["-a"]).arg(from).arg(to))?;
    Ok(())
}

/// Removes what differs from build to build without being part of the system (logs, caches,
/// the machine id).
pub(crate) fn tidy(root: &Path) -> Result<(), BuildError> {
    let remove_children = |dir: &str, keep: &[&str]| {
        if let Ok(entries) = fs::read_dir(root.join(dir)) {
            for e in entries.flatten() {
                let name = e.file_name();
                if keep.iter().any(|k| name == *k) {
                    continue;
                }
                let p = e.path();
                if p.is_dir() && !p.is_symlink() {
                    let _ = fs::remove_dir_all(&p);
                } else {
                    let _ = fs::remove_file(&p);
                }
            }
        }
    };
    remove_children("tmp", &[]);
    remove_children("var/tmp", &[]);
    remove_children("var/cache/apt", &["archives"]);
    remove_children("var/cache/apt/archives", &["partial"]);
    remove_children("var/lib/apt/lists", &["partial"]);
    remove_children(
        "var/cache/debconf",
        &["config.dat", "templates.dat", "passwords.dat"],
    );
    for f in [
        "var/cache/ldconfig/aux-cache",
        "var/lib/dbus/machine-id",
        "etc/hostid",
        "var/lib/systemd/random-seed",
        "var/log/bootstrap.log",
        "var/log/dpkg.log",
        "var/log/alternatives.log",
        "var/log/apt/history.log",
        "var/log/apt/term.log",
        "var/log/apt/eipp.log.xz",
    ] {
        let _ = fs::remove_file(root.join(f));
    }
    // An empty machine-id: systemd generates one at first boot, so every VM has its own.
    fs::write(root.join("etc/machine-id"), "").map_err(io("empty /etc/machine-id"))?;
    Ok(())
}

pub(crate) fn clamp_mtimes(dir: &Path, epoch: i64) -> Result<(), BuildError> {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = fs::read_dir(&d).map_err(io(format!("read {}", d.display())))?;
        for e in entries.flatten() {
            let p = e.path();
            let Ok(meta) = fs::symlink_metadata(&p) else {
                continue;
            };
            if meta.is_dir() {
                stack.push(p.clone());
            }
            if meta.mtime() > epoch || meta.atime() > epoch {
                let t = TimeSpec::new(epoch.min(meta.mtime()), 0);
                let _ = utimensat(
                    nix::fcntl::AT_FDCWD,
                    &p,
                    &t,
                    &t,
                    UtimensatFlags::NoFollowSymlink,
                );
            }
        }
    }
    // Directories last touched by the removals above.
    let t = TimeSpec::new(epoch, 0);
    let _ = utimensat(
        nix::fcntl::AT_FDCWD,
        dir,
        &t,
        &t,
        UtimensatFlags::NoFollowSymlink,
    );
    Ok(())
}

/// Writes one line per file of the tree (sorted): type, mode, owner, size, SHA-256 or link
/// target, path. Two builds from the same inputs can be compared with `diff`. Returns the
/// tree's size in bytes (blocks actually used).
pub(crate) fn write_manifest(root: &Path, out: &Path) -> Result<u64, BuildError> {
    let mut lines = Vec::new();
    let mut total = 0u64;
    let mut stack = vec![root.to_path_buf()];
    let mut seen_inodes = BTreeSet::new();
    while let Some(d) = stack.pop() {
        let entries = fs::read_dir(&d).map_err(io(format!("read {}", d.display())))?;
        for e in entries.flatten() {
            let p = e.path();
            let meta = fs::symlink_metadata(&p).map_err(io(format!("stat {}", p.display())))?;
            if seen_inodes.insert((meta.dev(), meta.ino())) {
                total += meta.blocks() * 512;
            }
            let rel = p.strip_prefix(root).unwrap_or(&p).display().to_string();
            let ft = meta.file_type();
            let (kind, what) = if ft.is_dir() {
                stack.push(p.clone());
                ("d", "-".to_string())
            } else if ft.is_symlink() {
                (
                    "l",
                    fs::read_link(&p)
                        .map(|t| t.display().to_string())
                        .unwrap_or_default(),
                )
            } else if ft.is_file() {
                let mut h = Sha256::new();
                let mut f = File::open(&p).map_err(io(format!("open {}", p.display())))?;
                std::io::copy(&mut f, &mut h).map_err(io(format!("read {}", p.display())))?;
                ("f", hex::encode(h.finalize()))
            } else {
                ("o", format!("rdev {}", meta.rdev()))
            };
            lines.push(format!(
                "/{rel} {kind} {:o} {}:{} {} {what}",
                meta.mode() & 0o7777,
                meta.uid(),
                meta.gid(),
                if ft.is_file() { meta.len() } else { 0 },
            ));
        }
    }
    lines.sort();
    let mut text = lines.join("\n");
    text.push('\n');
    fs::write(out, text).map_err(io(format!("write {}", out.display())))?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_lists_content_hashes_sorted() {
        let d = tempfile::tempdir().unwrap();
        let o = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("etc")).unwrap();
        fs::write(d.path().join("etc/b"), "hello").unwrap();
        std::os::unix::fs::symlink("b", d.path().join("etc/a")).unwrap();
        let out = o.path().join("manifest");
        write_manifest(d.path(), &out).unwrap();
        let text = fs::read_to_string(&out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("/etc d 755"), "{text}");
        assert!(
            lines[1].starts_with("/etc/a l ") && lines[1].ends_with(" b"),
            "{text}"
        );
        assert!(
            lines[2]
                .ends_with("5 2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"),
            "{text}"
        );
    }
}
