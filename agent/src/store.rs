//! The agent's state directory: the last good config, the NIC names and the TLS material,
//! each kept so that a crash or power cut leaves the old version or the new one, never half of
//! one, with mode 0600.
//!
//! The config is kept in two slots, `config.0.json` and `config.1.json`, and `config.commit`
//! says which of them is the last good config (see [`CommitRecord`]). An apply stages its
//! config in the other slot (overwritten in place, fsynced) while the kernel work runs, and
//! commits it once everything succeeded by writing one 512-byte record: one small write and
//! one flush on the path to the 200, where a rename and a directory fsync cost a journal
//! commit (two flushes, and a wait for whatever else the filesystem has in flight). A crash
//! or power cut before the record is on disk leaves the previous config committed. Other files
//! are replaced atomically (temp file, fsync, rename, fsync of the directory).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

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

    /// A state directory as it is, changing nothing (to read it).
    pub fn existing(root: impl Into<PathBuf>) -> StateDir {
        StateDir { root: root.into() }
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Where an agent before the slots kept its config: read when no commit record exists,
    /// removed by the first commit.
    pub fn legacy_config_path(&self) -> PathBuf {
        self.root.join("config.json")
    }

    /// The commit record: which slot holds the last good config.
    pub fn commit_path(&self) -> PathBuf {
        self.root.join("config.commit")
    }

    /// Slot 0 or 1 of the config.
    pub fn slot_path(&self, slot: u8) -> PathBuf {
        self.root.join(format!("config.{slot}.json"))
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

    /// The last config that applied successfully, if any: the newest commit record whose
    /// slot holds what it names, else (an older agent's state) `config.json`.
    pub fn load_config(&self) -> io::Result<Option<Vec<u8>>> {
        let mut records = self.commit_records()?;
        if records.is_empty() {
            return read_optional(&self.legacy_config_path());
        }
        records.sort_by_key(|r| std::cmp::Reverse(r.generation));
        for record in &records {
            let Some(slot) = record.slot else {
                return Ok(None);
            };
            let Some(bytes) = read_optional(&self.slot_path(slot))? else {
                continue;
            };
            if let Some(config) = bytes.get(..record.length) {
                if hex::encode(Sha256::digest(config)) == record.sha256 {
                    return Ok(Some(config.to_vec()));
                }
            }
            tracing::warn!(
                slot,
                generation = record.generation,
                "a config slot does not hold what its commit record names: the older record is used"
            );
        }
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "no config slot holds what {} names",
                self.commit_path().display()
            ),
        ))
    }

    /// Saves a config: staged, then committed.
    pub fn save_config(&self, bytes: &[u8]) -> io::Result<()> {
        self.stage_config(bytes)?.commit()
    }

    /// Writes and fsyncs a config into the slot that does not hold the last good one, without
    /// committing it: an apply stages its config while the kernel work runs and commits it
    /// only once everything succeeded, so a crash or power cut before the commit leaves the
    /// last good config in force. The slot is overwritten in place and padded with spaces
    /// (JSON whitespace) to its size, so that the fsync flushes data only, no metadata, unless
    /// the slot has to grow.
    pub fn stage_config(&self, bytes: &[u8]) -> io::Result<StagedConfig> {
        let current = self.newest_record()?;
        let slot = match current.as_ref().and_then(|r| r.slot) {
            Some(0) => 1,
            _ => 0,
        };
        let path = self.slot_path(slot);
        let created = !path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)?;
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
        let size = usize::try_from(file.metadata()?.len()).unwrap_or(usize::MAX);
        // Room for the document and a newline; grown by a quarter beyond what it needs so that
        // floating IPs added one by one do not grow it at every push, and shrunk when a quarter
        // of it would do.
        let needed = bytes.len() + 1;
        let capacity = if needed > size || needed < size / 4 {
            (needed + needed / 4).next_multiple_of(SLOT_GRANULE)
        } else {
            size
        };
        let mut padded = Vec::with_capacity(capacity);
        padded.extend_from_slice(bytes);
        padded.push(b'\n');
        padded.resize(capacity, b' ');
        file.write_all_at(&padded, 0)?;
        if capacity != size {
            file.set_len(capacity as u64)?;
            file.sync_all()?;
        } else {
            file.sync_data()?;
        }
        if created {
            File::open(&self.root)?.sync_all()?;
        }
        Ok(StagedConfig {
            state: self.clone(),
            record: CommitRecord {
                generation: current.map_or(1, |r| r.generation + 1),
                slot: Some(slot),
                length: bytes.len(),
                sha256: hex::encode(Sha256::digest(bytes)),
            },
        })
    }

    /// Records durably that there is no saved config (an apply onto a router that had none
    /// failed after its config was committed).
    pub fn remove_config(&self) -> io::Result<()> {
        let generation = self.newest_record()?.map_or(1, |r| r.generation + 1);
        self.write_record(&CommitRecord {
            generation,
            slot: None,
            length: 0,
            sha256: String::new(),
        })?;
        self.remove_legacy_config()
    }

    /// The valid commit records (none when there is no commit file).
    fn commit_records(&self) -> io::Result<Vec<CommitRecord>> {
        let Some(bytes) = read_optional(&self.commit_path())? else {
            return Ok(Vec::new());
        };
        Ok(bytes
            .chunks(RECORD_BYTES)
            .take(2)
            .filter_map(CommitRecord::decode)
            .collect())
    }

    fn newest_record(&self) -> io::Result<Option<CommitRecord>> {
        Ok(self
            .commit_records()?
            .into_iter()
            .max_by_key(|r| r.generation))
    }

    /// Writes `record` over the older of the two records (its place is its generation's
    /// parity) and flushes it: the commit. The file is made once, whole, before its first
    /// record.
    fn write_record(&self, record: &CommitRecord) -> io::Result<()> {
        let path = self.commit_path();
        if !path.exists() {
            write_atomic(&path, &[0; 2 * RECORD_BYTES])?;
        }
        let file = OpenOptions::new().write(true).open(&path)?;
        let offset = (record.generation % 2) * RECORD_BYTES as u64;
        file.write_all_at(&record.encode(), offset)?;
        file.sync_data()
    }

    /// The pre-slot `config.json`, once a commit record supersedes it. Not synced: were it
    /// to come back after a crash, the commit record still wins.
    fn remove_legacy_config(&self) -> io::Result<()> {
        match fs::remove_file(self.legacy_config_path()) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// Slots grow and shrink by this much.
const SLOT_GRANULE: usize = 64 * 1024;
/// One commit record: within one sector, so that it is written whole or not at all (a torn
/// one fails its check and the other record stands).
const RECORD_BYTES: usize = 512;

/// Which slot holds the last good config, as one line of text in a 512-byte record:
/// `akanda-commit 1 GENERATION SLOT|- LENGTH SHA256 CHECK`, where CHECK is the first 16 hex
/// digits of the SHA-256 of everything before it. `config.commit` holds two records; the one
/// with the higher generation is in force, and a commit overwrites the other.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CommitRecord {
    generation: u64,
    /// `None`: no saved config.
    slot: Option<u8>,
    /// Bytes of the slot that are the config (the rest is padding).
    length: usize,
    sha256: String,
}

impl CommitRecord {
    fn encode(&self) -> Vec<u8> {
        let slot = self.slot.map_or("-".to_string(), |s| s.to_string());
        let sha = if self.sha256.is_empty() {
            "-"
        } else {
            &self.sha256
        };
        let body = format!(
            "akanda-commit 1 {} {slot} {} {sha} ",
            self.generation, self.length
        );
        let check = &hex::encode(Sha256::digest(body.as_bytes()))[..16];
        let mut out = format!("{body}{check}\n").into_bytes();
        out.resize(RECORD_BYTES, 0);
        out
    }

    fn decode(bytes: &[u8]) -> Option<CommitRecord> {
        let text = std::str::from_utf8(bytes).ok()?;
        let line = text.split('\n').next()?;
        let (body, check) = line.rsplit_once(' ')?;
        let body = format!("{body} ");
        if hex::encode(Sha256::digest(body.as_bytes())).get(..16) != Some(check) {
            return None;
        }
        let fields: Vec<&str> = body.split_whitespace().collect();
        let ["akanda-commit", "1", generation, slot, length, sha] = fields[..] else {
            return None;
        };
        Some(CommitRecord {
            generation: generation.parse().ok()?,
            slot: match slot {
                "-" => None,
                "0" => Some(0),
                "1" => Some(1),
                _ => return None,
            },
            length: length.parse().ok()?,
            sha256: if sha == "-" {
                String::new()
            } else {
                sha.to_string()
            },
        })
    }
}

/// A config written and fsynced into a slot, not yet committed. Dropped uncommitted, it
/// changes nothing: the commit record still names the last good config.
#[must_use = "a staged config is in force only once committed"]
pub struct StagedConfig {
    state: StateDir,
    record: CommitRecord,
}

impl StagedConfig {
    /// Writes the commit record that puts the staged config in force, and flushes it.
    pub fn commit(self) -> io::Result<()> {
        self.state.write_record(&self.record)?;
        self.state.remove_legacy_config()
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

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn saved_configs_alternate_slots_with_mode_0600_and_can_be_removed() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path().join("state")).unwrap();
        assert_eq!(state.load_config().unwrap(), None);
        state.save_config(b"{\"one\":1}").unwrap();
        state.save_config(b"{\"two\":2}").unwrap();
        assert_eq!(state.load_config().unwrap().unwrap(), b"{\"two\":2}");
        assert_eq!(
            names(state.path()),
            ["config.0.json", "config.1.json", "config.commit"]
        );
        for name in names(state.path()) {
            assert_eq!(mode(&state.path().join(name)), 0o600);
        }
        // A slot is the JSON document, padded with JSON whitespace.
        let slot: serde_json::Value =
            serde_json::from_slice(&fs::read(state.slot_path(1)).unwrap()).unwrap();
        assert_eq!(slot, serde_json::json!({"two": 2}));
        state.remove_config().unwrap();
        assert_eq!(state.load_config().unwrap(), None);
        state.save_config(b"three").unwrap();
        assert_eq!(state.load_config().unwrap().unwrap(), b"three");
    }

    #[test]
    fn a_staged_config_is_in_force_only_when_committed() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        state.save_config(b"old").unwrap();
        let staged = state.stage_config(b"new").unwrap();
        assert_eq!(state.load_config().unwrap().as_deref(), Some(&b"old"[..]));
        drop(staged);
        assert_eq!(state.load_config().unwrap().as_deref(), Some(&b"old"[..]));
        // Staged again after a failed apply: the same free slot, never the one in force.
        let staged = state.stage_config(b"newer").unwrap();
        assert_eq!(state.load_config().unwrap().as_deref(), Some(&b"old"[..]));
        staged.commit().unwrap();
        assert_eq!(state.load_config().unwrap().as_deref(), Some(&b"newer"[..]));
        // A state directory opened anew (a restart) reads the same.
        let reopened = StateDir::open(dir.path()).unwrap();
        assert_eq!(
            reopened.load_config().unwrap().as_deref(),
            Some(&b"newer"[..])
        );
    }

    #[test]
    fn a_torn_record_or_slot_leaves_the_previous_config() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        state.save_config(b"first").unwrap();
        state.save_config(b"second").unwrap();
        // A torn commit record (generation 2, at offset 0): the other one stands.
        let commit = fs::read(state.commit_path()).unwrap();
        let mut torn = commit.clone();
        torn[20] ^= 0x55;
        fs::write(state.commit_path(), &torn).unwrap();
        assert_eq!(state.load_config().unwrap().as_deref(), Some(&b"first"[..]));
        // A slot that does not hold what the newest record names: the older record stands.
        fs::write(state.commit_path(), &commit).unwrap();
        let second = state.slot_path(1);
        let mut bytes = fs::read(&second).unwrap();
        bytes[0] = b'S';
        fs::write(&second, bytes).unwrap();
        assert_eq!(state.load_config().unwrap().as_deref(), Some(&b"first"[..]));
        // Nothing valid at all is an error, not an empty box.
        fs::write(state.slot_path(0), b"garbage").unwrap();
        assert!(state.load_config().is_err());
    }

    #[test]
    fn an_older_agents_config_json_is_read_until_the_first_commit() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        fs::write(state.legacy_config_path(), b"legacy").unwrap();
        assert_eq!(
            state.load_config().unwrap().as_deref(),
            Some(&b"legacy"[..])
        );
        state.save_config(b"new").unwrap();
        assert!(!state.legacy_config_path().exists());
        assert_eq!(state.load_config().unwrap().as_deref(), Some(&b"new"[..]));
    }

    #[test]
    fn slots_grow_and_shrink_by_granules_and_keep_their_size_between() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let size = |slot| fs::metadata(state.slot_path(slot)).unwrap().len() as usize;
        state.save_config(&vec![b'a'; 100_000]).unwrap();
        assert_eq!(size(0), 2 * SLOT_GRANULE);
        state.save_config(&vec![b'b'; 100_000]).unwrap();
        state.save_config(&vec![b'c'; 100_050]).unwrap();
        assert_eq!(size(0), 2 * SLOT_GRANULE, "a little larger fits in place");
        state.save_config(b"small").unwrap();
        assert_eq!(size(1), SLOT_GRANULE, "shrunk");
        assert_eq!(state.load_config().unwrap().as_deref(), Some(&b"small"[..]));
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
