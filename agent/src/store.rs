//! The agent's state directory: the last good config and the NIC names, each written
//! atomically (temp file, fsync, rename, fsync of the directory) with mode 0600, so a crash or
//! power cut leaves either the old file or the new one, never half of one.

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

    /// The last config that applied successfully, if any.
    pub fn load_config(&self) -> io::Result<Option<Vec<u8>>> {
        read_optional(&self.config_path())
    }

    pub fn save_config(&self, bytes: &[u8]) -> io::Result<()> {
        write_atomic(&self.config_path(), bytes)
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
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
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
}
