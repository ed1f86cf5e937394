//! The agent's state directory: the last good config, the NIC names and the TLS material,
//! each kept so that a crash or power cut leaves the old version or the new one, never half of
//! one, with mode 0600.
//!
//! The config is kept in two slot files, `config.0` and `config.1`: a 512-byte header (one
//! line: generation, length, SHA-256 of the config, and a check of the line) and the config's
//! JSON after it. The slot whose header is valid, whose JSON matches its SHA-256, and whose
//! generation is the higher, holds the last good config. An apply writes its config into the
//! other slot while the kernel work runs (the old header then no longer matches: the slot is
//! out of play), and commits it once everything succeeded by writing that slot's header and
//! one `fdatasync`: one flush on the path to the 200. A rename and a directory fsync cost a
//! journal commit (two flushes, and a wait for whatever else the filesystem has in flight),
//! and a staged file fsynced apart one flush more. The header needs no ordering against the
//! JSON: until both are on disk the SHA-256 does not match, and the other slot stands. Other
//! files are replaced atomically (temp file, fsync, rename, fsync of the directory).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
    /// The config slot in force and its generation, as this process last committed it: a
    /// push then reads neither slot back (at 10,000 floating IPs, 1.3 MB read and 545 KB
    /// hashed). `None` until the first commit, and after a failed one: the slots are read.
    /// The agent is the state directory's only writer.
    slot_in_force: Arc<Mutex<Option<(u8, u64)>>>,
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
        Ok(StateDir::existing(root))
    }

    /// A state directory as it is, changing nothing (to read it).
    pub fn existing(root: impl Into<PathBuf>) -> StateDir {
        StateDir {
            root: root.into(),
            slot_in_force: Arc::default(),
        }
    }

    fn known_slot(&self) -> Option<(u8, u64)> {
        *self.slot_in_force.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_known_slot(&self, slot: Option<(u8, u64)>) {
        *self.slot_in_force.lock().unwrap_or_else(|e| e.into_inner()) = slot;
    }

    pub(crate) fn path(&self) -> &Path {
        &self.root
    }

    /// Where an agent before the slots kept its config: read when there is no slot, removed
    /// by the first commit.
    pub(crate) fn legacy_config_path(&self) -> PathBuf {
        self.root.join("config.json")
    }

    /// Slot 0 or 1 of the config.
    pub(crate) fn slot_path(&self, slot: u8) -> PathBuf {
        self.root.join(format!("config.{slot}"))
    }

    pub(crate) fn nics_path(&self) -> PathBuf {
        self.root.join("nics.json")
    }

    /// What an apply in progress is about to change beyond the saved config (the NICs it
    /// configures for the first time, as they were before): a restart after a crash puts
    /// them back. See `Appliance` ("leftovers").
    pub(crate) fn intent_path(&self) -> PathBuf {
        self.root.join("applying.json")
    }

    /// Writes the intent, atomically (temp file, rename) but without fsync: it only has to
    /// outlive the agent's process, not the machine (a reboot empties the kernel it
    /// describes).
    pub(crate) fn save_intent(&self, bytes: &[u8]) -> io::Result<()> {
        Staged::create(&self.intent_path(), bytes, 0o600)?.rename()
    }

    pub(crate) fn load_intent(&self) -> io::Result<Option<Vec<u8>>> {
        read_optional(&self.intent_path())
    }

    /// Removes the intent; a missing one is fine.
    pub(crate) fn remove_intent(&self) -> io::Result<()> {
        match fs::remove_file(self.intent_path()) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// The last config that applied successfully, if any: that of the slot in force (see the
    /// module's documentation), else (an older agent's state) `config.json`.
    pub fn load_config(&self) -> io::Result<Option<Vec<u8>>> {
        let slots = [self.read_slot(0)?, self.read_slot(1)?];
        match in_force(&slots) {
            Some((slot, header)) => Ok(header
                .config
                .and_then(|range| Some(slots[usize::from(slot)].as_deref()?.get(range)?.to_vec()))),
            // No slot, or none whole: a first config staged and never committed (its header
            // not written, or written without all of its JSON), or a pre-slot agent's state.
            None => read_optional(&self.legacy_config_path()),
        }
    }

    /// Saves a config: staged, then committed.
    pub(crate) fn save_config(&self, bytes: &[u8]) -> io::Result<()> {
        self.stage_config(bytes, None)?.commit()
    }

    /// Writes a config into the slot that is not in force, without committing it: an apply
    /// stages its config while the kernel work runs and commits it only once everything
    /// succeeded, so a crash or power cut before the commit leaves the last good config in
    /// force. The JSON is written in place after the header and padded with spaces to the
    /// slot's size (so the commit's `fdatasync` flushes data only, no metadata, unless the slot
    /// grows); its write-back to disk is started at once, so the commit finds it done.
    /// `sha256`: the JSON's SHA-256 in hex, when the caller already has it.
    pub(crate) fn stage_config(
        &self,
        bytes: &[u8],
        sha256: Option<String>,
    ) -> io::Result<StagedConfig> {
        let current = match self.known_slot() {
            Some(known) => Some(known),
            None => {
                let slots = [self.read_slot(0)?, self.read_slot(1)?];
                in_force(&slots).map(|(slot, header)| (slot, header.generation))
            }
        };
        let slot = match current {
            Some((0, _)) => 1,
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
        // Room for the header, the document and a newline; grown by a quarter beyond what it
        // needs so that floating IPs added one by one do not grow it at every push, and shrunk
        // when a quarter of it would do.
        let needed = HEADER_BYTES + bytes.len() + 1;
        let capacity = if needed > size || needed < size / 4 {
            (needed + needed / 4).next_multiple_of(SLOT_GRANULE)
        } else {
            size
        };
        let mut body = Vec::with_capacity(capacity - HEADER_BYTES);
        body.extend_from_slice(bytes);
        body.push(b'\n');
        body.resize(capacity - HEADER_BYTES, b' ');
        file.write_all_at(&body, HEADER_BYTES as u64)?;
        if capacity != size {
            // The slot's size is metadata: it goes to disk now, off the commit's path.
            file.set_len(capacity as u64)?;
            file.sync_all()?;
            if created {
                File::open(&self.root)?.sync_all()?;
            }
        } else {
            // Starts the write-back without waiting for it (nor flushing the disk's cache).
            let _ = nix::fcntl::posix_fadvise(
                &file,
                0,
                0,
                nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
            );
        }
        Ok(StagedConfig {
            file,
            slot,
            header: SlotHeader {
                generation: current.map_or(1, |(_, generation)| generation + 1),
                config: Some(HEADER_BYTES..HEADER_BYTES + bytes.len()),
                sha256: sha256.unwrap_or_else(|| hex::encode(Sha256::digest(bytes))),
            },
            state: self.clone(),
        })
    }

    /// Records durably that there is no saved config (an apply onto a router that had none
    /// failed after its config was committed): a header without a config, of a newer
    /// generation, in the slot not in force.
    pub(crate) fn remove_config(&self) -> io::Result<()> {
        self.set_known_slot(None);
        let slots = [self.read_slot(0)?, self.read_slot(1)?];
        let Some((slot, current)) = in_force(&slots) else {
            return self.remove_legacy_config();
        };
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(self.slot_path(1 - slot))?;
        let header = SlotHeader {
            generation: current.generation + 1,
            config: None,
            sha256: String::new(),
        };
        file.write_all_at(&header.encode(), 0)?;
        file.sync_all()?;
        File::open(&self.root)?.sync_all()?;
        self.remove_legacy_config()
    }

    /// A slot's bytes (`None` when the file does not exist).
    fn read_slot(&self, slot: u8) -> io::Result<Option<Vec<u8>>> {
        read_optional(&self.slot_path(slot))
    }

    /// The pre-slot `config.json`, once a commit supersedes it. Not synced: were it to come
    /// back after a crash, the slots still win.
    fn remove_legacy_config(&self) -> io::Result<()> {
        match fs::remove_file(self.legacy_config_path()) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// Slots grow and shrink by this much.
const SLOT_GRANULE: usize = 64 * 1024;
/// A slot's header: within one sector, so that it is written whole or not at all (a torn one
/// fails its check, and the other slot stands).
const HEADER_BYTES: usize = 512;

/// The slot in force among `slots` (each file's bytes): the one with a valid header whose
/// config matches its SHA-256, of the higher generation. The newer header is checked against
/// its config first, so a push hashes one config, not two.
fn in_force(slots: &[Option<Vec<u8>>; 2]) -> Option<(u8, SlotHeader)> {
    let mut headers: Vec<(u8, SlotHeader, &[u8])> = (0..2u8)
        .filter_map(|i| {
            let bytes = slots[usize::from(i)].as_deref()?;
            Some((i, SlotHeader::decode(bytes.get(..HEADER_BYTES)?)?, bytes))
        })
        .collect();
    headers.sort_by_key(|(_, h, _)| std::cmp::Reverse(h.generation));
    headers.into_iter().find_map(|(i, header, bytes)| {
        let whole = match &header.config {
            None => true,
            Some(range) => bytes
                .get(range.clone())
                .is_some_and(|c| hex::encode(Sha256::digest(c)) == header.sha256),
        };
        whole.then_some((i, header))
    })
}

/// A slot's header, one line of text: `akanda-config 1 GENERATION LENGTH|- SHA256|- CHECK`,
/// where CHECK is the first 16 hex digits of the SHA-256 of everything before it, and `-`
/// says the slot records that no config is saved.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SlotHeader {
    generation: u64,
    /// Where the config is in the slot file (`None`: no saved config).
    config: Option<std::ops::Range<usize>>,
    sha256: String,
}

impl SlotHeader {
    fn encode(&self) -> Vec<u8> {
        let (length, sha) = match &self.config {
            Some(range) => (range.len().to_string(), self.sha256.as_str()),
            None => ("-".to_string(), "-"),
        };
        let body = format!("akanda-config 1 {} {length} {sha} ", self.generation);
        let check = &hex::encode(Sha256::digest(body.as_bytes()))[..16];
        let mut out = format!("{body}{check}\n").into_bytes();
        out.resize(HEADER_BYTES, 0);
        out
    }

    fn decode(bytes: &[u8]) -> Option<SlotHeader> {
        let text = std::str::from_utf8(bytes.split(|b| *b == 0).next()?).ok()?;
        let line = text.split('\n').next()?;
        let (body, check) = line.rsplit_once(' ')?;
        let body = format!("{body} ");
        if hex::encode(Sha256::digest(body.as_bytes())).get(..16) != Some(check) {
            return None;
        }
        let fields: Vec<&str> = body.split_whitespace().collect();
        let ["akanda-config", "1", generation, length, sha] = fields[..] else {
            return None;
        };
        let config = match length {
            "-" => None,
            n => Some(HEADER_BYTES..HEADER_BYTES + n.parse::<usize>().ok()?),
        };
        Some(SlotHeader {
            generation: generation.parse().ok()?,
            config,
            sha256: if sha == "-" {
                String::new()
            } else {
                sha.to_string()
            },
        })
    }
}

/// A config written into a slot, not yet committed. Dropped uncommitted, it changes nothing:
/// the other slot is still in force.
#[must_use = "a staged config is in force only once committed"]
pub(crate) struct StagedConfig {
    file: File,
    slot: u8,
    header: SlotHeader,
    state: StateDir,
}

impl StagedConfig {
    /// Writes the slot's header and flushes the slot (its JSON, if the write-back has not
    /// finished, and the header): from then on the slot is in force. A failure leaves it
    /// unknown which slot is: the next stage reads them.
    pub(crate) fn commit(self) -> io::Result<()> {
        self.state.set_known_slot(None);
        self.file.write_all_at(&self.header.encode(), 0)?;
        self.file.sync_data()?;
        self.state
            .set_known_slot(Some((self.slot, self.header.generation)));
        self.state.remove_legacy_config()
    }
}

pub(crate) fn read_optional(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes `path` atomically with mode 0600 (the agent's own state).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_mode(path, bytes, 0o600)
}

/// Writes `path` atomically (temp file, fsync, rename, fsync of the directory) with `mode`,
/// whatever the umask.
pub(crate) fn write_atomic_mode(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
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
pub(crate) struct Staged {
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
    pub(crate) fn commit(self) -> io::Result<()> {
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
        assert_eq!(names(state.path()), ["config.0", "config.1"]);
        for name in names(state.path()) {
            assert_eq!(mode(&state.path().join(name)), 0o600);
        }
        // A slot is a header line, then the JSON document padded with JSON whitespace.
        let slot = fs::read(state.slot_path(1)).unwrap();
        assert!(slot.starts_with(b"akanda-config 1 2 9 "), "{slot:?}");
        let json: serde_json::Value = serde_json::from_slice(&slot[HEADER_BYTES..]).unwrap();
        assert_eq!(json, serde_json::json!({"two": 2}));
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
        let staged = state.stage_config(b"new", None).unwrap();
        assert_eq!(state.load_config().unwrap().as_deref(), Some(&b"old"[..]));
        drop(staged);
        assert_eq!(state.load_config().unwrap().as_deref(), Some(&b"old"[..]));
        // Staged again after a failed apply: the same free slot, never the one in force.
        let staged = state.stage_config(b"newer", None).unwrap();
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
    fn a_torn_header_or_config_leaves_the_previous_config() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        state.save_config(b"first").unwrap();
        state.save_config(b"second").unwrap();
        let second = fs::read(state.slot_path(1)).unwrap();
        // A torn header (its generation is the newer): the other slot stands. A write is torn
        // only by a power cut: the agent that finds it is a new process (`open` anew).
        let mut torn = second.clone();
        torn[16] ^= 0x55;
        fs::write(state.slot_path(1), &torn).unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        assert_eq!(state.load_config().unwrap().as_deref(), Some(&b"first"[..]));
        // The header on disk but not all of the config (the disk wrote them in another
        // order, and the power went): the other slot stands.
        let mut torn = second.clone();
        torn[HEADER_BYTES] = b'S';
        fs::write(state.slot_path(1), &torn).unwrap();
        assert_eq!(state.load_config().unwrap().as_deref(), Some(&b"first"[..]));
        // The next config goes into the slot that is not in force (the torn one), never over
        // the one in force.
        state.save_config(b"third").unwrap();
        assert_eq!(
            fs::read(state.slot_path(1)).unwrap()[HEADER_BYTES..][..5],
            *b"third"
        );
        assert_eq!(
            fs::read(state.slot_path(0)).unwrap()[HEADER_BYTES..][..5],
            *b"first"
        );
        assert_eq!(state.load_config().unwrap().as_deref(), Some(&b"third"[..]));
        // Nothing whole at all (a first config staged, never committed): no saved config.
        fs::write(state.slot_path(0), b"garbage").unwrap();
        fs::write(state.slot_path(1), b"garbage").unwrap();
        assert_eq!(state.load_config().unwrap(), None);
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
