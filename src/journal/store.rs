//! Where journal entries are kept: the seam between the journal's logic (entries, sealing, held writes) and the
//! medium. [`DiskStore`] is `state_dir` (one file per token, atomic and durable, its I/O on tokio's blocking pool);
//! [`MemoryStore`] keeps entries in memory with injectable write failures, for the deterministic simulation;
//! `cluster::VaultCoord` keeps them in Vault/OpenBao KV v2 for several instances (SPEC §8).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_trait::async_trait;
use sha2::{Digest, Sha256};

use super::JournalError;

/// One token's entry, as bytes (already sealed when a `state_key` is set).
#[async_trait]
pub trait EntryStore: Send + Sync + std::fmt::Debug {
    /// The entry of `token`, if there is one, read by the visit that will write it next (a store with
    /// check-and-set remembers the version it read).
    async fn read(&self, token: &str) -> io::Result<Option<Vec<u8>>>;
    /// The entry of `token` for a look only (the sweep reading a neighbour, a standby, `plan`): changes nothing the
    /// next write of that entry depends on.
    async fn peek(&self, token: &str) -> io::Result<Option<Vec<u8>>> {
        self.read(token).await
    }
    /// Replaces the entry atomically and durably: after `Ok`, a crash keeps these bytes; after `Err`, the old
    /// entry or the new one is there, never a mix. A store shared by several instances refuses a write when the
    /// entry changed since this process last read or wrote it, with an [`EntryConflict`].
    async fn write(&self, token: &str, bytes: Vec<u8>) -> io::Result<()>;
    /// Removes the entry (nothing there is fine), durably.
    async fn remove(&self, token: &str) -> io::Result<()>;
    /// Where the entry of `token` lives, for messages.
    fn location(&self, token: &str) -> String;
    /// Whether writes are refused (`plan`'s view).
    fn read_only(&self) -> bool {
        false
    }
}

/// What a shared store answers when the entry changed since this process read it (another instance wrote it):
/// the `io::Error` payload [`super::JournalError::is_conflict`] looks for. Only shared stores produce it.
#[derive(Debug)]
pub struct EntryConflict(pub String);

impl std::fmt::Display for EntryConflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for EntryConflict {}

impl EntryConflict {
    pub fn io(why: impl Into<String>) -> io::Error {
        io::Error::other(EntryConflict(why.into()))
    }
}

/// Runs blocking file I/O on tokio's blocking pool: an `fdatasync` and a directory `fsync` take milliseconds,
/// which on a runtime worker would hold up the pacers' timers, `/metrics` and the watchdog.
async fn off_runtime<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Only when the runtime shuts down under the I/O; a write is atomic either way.
        Err(_) => Err(io::Error::new(
            io::ErrorKind::Interrupted,
            "journal I/O cancelled: the runtime is shutting down",
        )),
    }
}

/// `state_dir/journal/<token>.json`, 0600; written to a temporary file, fdatasync'd, renamed, and the directory
/// fsync'd. Holds the `state_dir` lock for its lifetime (unless read-only).
#[derive(Debug)]
pub struct DiskStore {
    dir: PathBuf,
    /// `None` for a read-only view (`plan`), which neither locks nor writes.
    _lock: Option<File>,
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The longest file name most file systems take (`NAME_MAX`).
const NAME_MAX: usize = 255;
/// Room kept for the suffixes (`.json.tmp`).
const SUFFIX_ROOM: usize = 16;

/// Token names become file names: everything but `[A-Za-z0-9_-]` is %-escaped (so no `.`/`..`/`/` tricks). A name
/// whose escaped form would be too long for a file name keeps a readable start and ends with a digest of the whole
/// name, so every policy name has a file (the policy caps names at 128 characters; escaping can triple them).
pub fn file_stem(token: &str) -> String {
    let mut out = String::new();
    for b in token.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.len() + SUFFIX_ROOM <= NAME_MAX {
        return out;
    }
    let digest: String = Sha256::digest(token.as_bytes())[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut cut = 100;
    while !out.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}~{digest}", &out[..cut])
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir).and_then(|d| d.sync_all())
}

impl DiskStore {
    /// Creates (0700) or checks `state_dir`, takes its lock, and prepares `journal/`.
    pub fn open(state_dir: &Path) -> Result<Self, JournalError> {
        if !state_dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(state_dir)
                .map_err(io_at(state_dir))?;
        }
        let mode = fs::metadata(state_dir)
            .map_err(io_at(state_dir))?
            .permissions()
            .mode()
            & 0o777;
        if mode & 0o077 != 0 {
            return Err(JournalError::Permissions {
                path: state_dir.display().to_string(),
                mode,
            });
        }
        let lock_path = state_dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_at(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(JournalError::Locked(state_dir.display().to_string()))
            }
            Err(fs::TryLockError::Error(e)) => return Err(io_at(&lock_path)(e)),
        }
        let dir = state_dir.join("journal");
        if !dir.exists() {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .map_err(io_at(&dir))?;
            fsync_dir(state_dir).map_err(io_at(state_dir))?;
        }
        Ok(DiskStore {
            dir,
            _lock: Some(lock),
        })
    }

    /// A read-only view for `plan`: no lock, nothing created; a missing `state_dir` reads as an empty journal.
    pub fn read_only(state_dir: &Path) -> Self {
        DiskStore {
            dir: state_dir.join("journal"),
            _lock: None,
        }
    }

    /// Whether another process holds the `state_dir` lock (a daemon is running there).
    pub fn is_locked(state_dir: &Path) -> bool {
        let Ok(f) = OpenOptions::new().write(true).open(state_dir.join("lock")) else {
            return false;
        };
        matches!(f.try_lock(), Err(fs::TryLockError::WouldBlock))
    }

    fn path(&self, token: &str) -> PathBuf {
        self.dir.join(format!("{}.json", file_stem(token)))
    }

    /// Whether any entry is stored (an unreadable directory counts as having some: nothing is assumed away).
    pub fn has_entries(&self) -> bool {
        match fs::read_dir(&self.dir) {
            Ok(entries) => entries
                .flatten()
                .any(|e| e.path().extension().is_some_and(|x| x == "json")),
            Err(e) => e.kind() != io::ErrorKind::NotFound,
        }
    }

    fn refuse_if_read_only(&self) -> io::Result<()> {
        if self._lock.is_none() {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the journal was opened read-only",
            ));
        }
        Ok(())
    }
}

/// The file operations of [`DiskStore`], on owned paths so that they can run on the blocking pool.
mod files {
    use super::*;

    pub fn read(path: &Path) -> io::Result<Option<Vec<u8>>> {
        match fs::read(path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn write(dir: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let tmp = path.with_extension("json.tmp");
        {
            let mut f = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(bytes)?;
            // fdatasync: the data and the metadata needed to read it back (size, blocks), not the timestamps.
            f.sync_data()?;
        }
        fs::rename(&tmp, path)?;
        fsync_dir(dir)
    }

    pub fn remove(dir: &Path, path: &Path) -> io::Result<()> {
        match fs::remove_file(path) {
            Ok(()) => fsync_dir(dir),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[async_trait]
impl EntryStore for DiskStore {
    async fn read(&self, token: &str) -> io::Result<Option<Vec<u8>>> {
        let path = self.path(token);
        off_runtime(move || files::read(&path)).await
    }

    async fn write(&self, token: &str, bytes: Vec<u8>) -> io::Result<()> {
        self.refuse_if_read_only()?;
        let (dir, path) = (self.dir.clone(), self.path(token));
        off_runtime(move || files::write(&dir, &path, &bytes)).await
    }

    async fn remove(&self, token: &str) -> io::Result<()> {
        self.refuse_if_read_only()?;
        let (dir, path) = (self.dir.clone(), self.path(token));
        off_runtime(move || files::remove(&dir, &path)).await
    }

    fn location(&self, token: &str) -> String {
        self.path(token).display().to_string()
    }

    fn read_only(&self) -> bool {
        self._lock.is_none()
    }
}

/// A journal write the simulation is about to make: `Some(error)` fails it (nothing is written).
pub type WriteFault = Box<dyn FnMut(&str) -> Option<io::Error> + Send>;

/// Sees every write the store accepted (the simulation notes when a minted value became durable).
pub type WriteObserver = Box<dyn Fn(&str, &[u8]) + Send>;

/// Entries in memory: what survives a simulated crash is exactly what `write` accepted.
#[derive(Default)]
pub struct MemoryStore {
    entries: Mutex<BTreeMap<String, Vec<u8>>>,
    fault: Mutex<Option<WriteFault>>,
    observer: Mutex<Option<WriteObserver>>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// Every write and remove asks `fault` first (`None` removes it).
    pub fn set_fault(&self, fault: Option<WriteFault>) {
        *self.fault.lock().unwrap_or_else(|p| p.into_inner()) = fault;
    }

    fn check(&self, token: &str) -> io::Result<()> {
        match self
            .fault
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
            .and_then(|f| f(token))
        {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Every accepted write is shown to `observer` (`None` removes it).
    pub fn set_observer(&self, observer: Option<WriteObserver>) {
        *self.observer.lock().unwrap_or_else(|p| p.into_inner()) = observer;
    }

    /// The tokens that have an entry.
    pub fn tokens(&self) -> Vec<String> {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }
}

#[async_trait]
impl EntryStore for MemoryStore {
    async fn read(&self, token: &str) -> io::Result<Option<Vec<u8>>> {
        Ok(self
            .entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
            .cloned())
    }

    async fn write(&self, token: &str, bytes: Vec<u8>) -> io::Result<()> {
        self.check(token)?;
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(token.to_string(), bytes.clone());
        if let Some(o) = &*self.observer.lock().unwrap_or_else(|p| p.into_inner()) {
            o(token, &bytes);
        }
        Ok(())
    }

    async fn remove(&self, token: &str) -> io::Result<()> {
        self.check(token)?;
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(token);
        Ok(())
    }

    fn location(&self, token: &str) -> String {
        format!("memory:{token}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_token_name_has_a_file_name_of_its_own() {
        assert_eq!(file_stem("ci/org.x"), "ci%2Forg%2Ex");
        let long = "ä".repeat(128);
        let stem = file_stem(&long);
        assert!(stem.len() + ".json.tmp".len() <= NAME_MAX, "{}", stem.len());
        let other = format!("{}b", "ä".repeat(127));
        assert_ne!(file_stem(&other), stem, "names that share a start differ");
    }

    #[tokio::test]
    async fn a_name_too_long_for_one_file_still_saves() {
        let root = tempfile::tempdir().unwrap();
        let store = DiskStore::open(&root.path().join("state")).unwrap();
        let name = "x.".repeat(128);
        store.write(&name, b"{}".to_vec()).await.unwrap();
        assert_eq!(
            store.read(&name).await.unwrap().as_deref(),
            Some(&b"{}"[..])
        );
        store.remove(&name).await.unwrap();
        assert_eq!(store.read(&name).await.unwrap(), None);
    }
}
