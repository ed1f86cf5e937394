//! The agent's state directory: the last good config and the NIC names, each written
//! atomically (temp file, fsync, rename, fsync of the directory) with mode 0600, so a crash or
//! power cut leaves either the old file or the new one, never half of one. A config can be
//! staged (written and fsynced) while an apply runs and committed (renamed) when it succeeded.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// Opens (creating if needed) the state directory, mode 0711: daemons that drop
    /// privileges (dnsmasq) must reach their files under it, but nobody else may list it; the
    /// config itself is 0600.
    pub fn open(root: impl Into<PathBuf>) -> io::Result<StateDir> {
        let root = root.into();
        fs::create_dir_all(&root)?;
        fs::set_permissions(&root, fs::Permissions::from_mode(0o711))?;
        // Temp files of writes a crash interrupted (`.NAME.tmp.PID`, see [`Staged`]): no one
        // else writes here, and the file they were for is whole (old or new).
        for entry in fs::read_dir(&root)?.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') && name.contains(".tmp.") && entry.path().is_file() {
                fs::remove_file(entry.path())?;
                tracing::info!(file = %name, "removed a temp file a crash left");
            }
        }
        Ok(StateDir { root })
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    pub fn config_path(&self) -> PathBuf {
        self.root.join("config.json")
    }

    pub fn nics_path(&self) -> PathBuf {
        self.root.join("nics.json")
    }

    /// What an apply in progress is about to change beyond the saved config (the NICs it
    /// configures for the first time, as they were before): a restart after a crash puts
    /// them back. See `Appliance` ("leftovers").
    pub fn intent_path(&self) -> PathBuf {
        self.root.join("applying.json")
    }

    /// Writes the intent, atomically (temp file, rename) but without fsync: it only has to
    /// outlive the agent's process, not the machine (a reboot empties the kernel it
    /// describes).
    pub fn save_intent(&self, bytes: &[u8]) -> io::Result<()> {
        Staged::create(&self.intent_path(), bytes, 0o600)?.rename()
    }

    pub fn load_intent(&self) -> io::Result<Option<Vec<u8>>> {
        read_optional(&self.intent_path())
    }

    /// Removes the intent; a missing one is fine.
    pub fn remove_intent(&self) -> io::Result<()> {
        match fs::remove_file(self.intent_path()) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// The last config that applied successfully, if any.
    pub fn load_config(&self) -> io::Result<Option<Vec<u8>>> {
        read_optional(&self.config_path())
    }

    pub fn save_config(&self, bytes: &[u8]) -> io::Result<()> {
        write_atomic(&self.config_path(), bytes)
    }

    /// Writes and fsyncs a config beside the saved one, without replacing it: an apply stages
    /// its config while the kernel work runs and commits it only once everything succeeded, so
    /// a crash or power cut before the commit leaves the last good config in place.
    pub fn stage_config(&self, bytes: &[u8]) -> io::Result<Staged> {
        Staged::write(&self.config_path(), bytes, 0o600)
    }

    /// Removes the saved config durably (an apply onto a router that had none failed after
    /// its config was saved). A missing file is fine.
    pub fn remove_config(&self) -> io::Result<()> {
        match fs::remove_file(self.config_path()) {
            Ok(()) => File::open(&self.root)?.sync_all(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }
}

pub fn read_optional(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes `path` atomically with mode 0600 (the agent's own state).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_mode(path, bytes, 0o600)
}

/// Writes `path` atomically (temp file, fsync, rename, fsync of the directory) with `mode`,
/// whatever the umask.
pub fn write_atomic_mode(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    Staged::write(path, bytes, mode)?.commit()
}

/// Writes several files atomically (each a temp file renamed into place, mode `mode`) with
/// one `syncfs` of their filesystem for all of them, then `last` the same way: a crash leaves
/// `last` only if every file before it is complete. Where per-file fsyncs are slow (a VM's
/// first boot writes its TLS material: eight fsyncs cost ~0.8 s under TCG), two syncs do.
pub fn write_all_then(files: &[(&Path, &[u8])], last: (&Path, &[u8]), mode: u32) -> io::Result<()> {
    let unsynced = |path: &Path, bytes: &[u8]| -> io::Result<()> {
        let staged = Staged::create(path, bytes, mode)?;
        staged.rename()
    };
    let sync = |path: &Path| -> io::Result<()> {
        let dir = File::open(path.parent().unwrap_or(Path::new(".")))?;
        nix::unistd::syncfs(&dir).map_err(io::Error::from)
    };
    for (path, bytes) in files {
        unsynced(path, bytes)?;
    }
    if let Some((path, _)) = files.first() {
        sync(path)?;
    }
    unsynced(last.0, last.1)?;
    sync(last.0)
}

/// A file written and fsynced under a temporary name beside `path`, not yet renamed into
/// place. Dropped uncommitted, it is removed; a crash leaves only a dot-file that the next
/// write of the same path truncates.
#[must_use = "a staged file is removed unless committed"]
pub struct Staged {
    tmp: PathBuf,
    path: PathBuf,
    committed: bool,
}

impl Staged {
    fn write(path: &Path, bytes: &[u8], mode: u32) -> io::Result<Staged> {
        let staged = Staged::create(path, bytes, mode)?;
        File::open(&staged.tmp)?.sync_all()?;
        Ok(staged)
    }

    /// Writes the temp file, not synced.
    fn create(path: &Path, bytes: &[u8], mode: u32) -> io::Result<Staged> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let name = path
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
        let staged = Staged {
            tmp: dir.join(format!(
                ".{}.tmp.{}",
                name.to_string_lossy(),
                std::process::id()
            )),
            path: path.to_path_buf(),
            committed: false,
        };
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&staged.tmp)?;
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        Ok(staged)
    }

    /// Renames the file into place, without syncing anything.
    fn rename(mut self) -> io::Result<()> {
        fs::rename(&self.tmp, &self.path)?;
        self.committed = true;
        Ok(())
    }

    /// Renames the file into place and fsyncs the directory.
    pub fn commit(self) -> io::Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new(".")).to_path_buf();
        self.rename()?;
        File::open(dir)?.sync_all()
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path().join("state")).unwrap();
        assert_eq!(state.load_config().unwrap(), None);
        state.save_config(b"one").unwrap();
        state.save_config(b"two").unwrap();
        assert_eq!(state.load_config().unwrap().unwrap(), b"two");
        let mode = fs::metadata(state.config_path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let leftovers: Vec<_> = fs::read_dir(state.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("config.json")]);
        state.remove_config().unwrap();
        assert_eq!(state.load_config().unwrap(), None);
        state.remove_config().unwrap();
    }

    #[test]
    fn a_staged_config_replaces_the_saved_one_only_when_committed() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        state.save_config(b"old").unwrap();
        let staged = state.stage_config(b"new").unwrap();
        assert_eq!(state.load_config().unwrap().as_deref(), Some(&b"old"[..]));
        drop(staged);
        assert_eq!(state.load_config().unwrap().as_deref(), Some(&b"old"[..]));
        let names = || -> Vec<std::ffi::OsString> {
            fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect()
        };
        assert_eq!(names(), vec![std::ffi::OsString::from("config.json")]);
        state.stage_config(b"new").unwrap().commit().unwrap();
        assert_eq!(state.load_config().unwrap().as_deref(), Some(&b"new"[..]));
        assert_eq!(names(), vec![std::ffi::OsString::from("config.json")]);
    }

    #[test]
    fn files_then_last_are_written_whole_with_their_mode() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, last) = (
            dir.path().join("a.pem"),
            dir.path().join("b.key"),
            dir.path().join("marker"),
        );
        fs::write(&a, "old").unwrap();
        write_all_then(&[(&a, b"A"), (&b, b"B")], (&last, b"done"), 0o600).unwrap();
        for (path, want) in [(&a, "A"), (&b, "B"), (&last, "done")] {
            assert_eq!(fs::read_to_string(path).unwrap(), want);
            let mode = fs::metadata(path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", path.display());
        }
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            3,
            "no temp file left"
        );
    }
}
