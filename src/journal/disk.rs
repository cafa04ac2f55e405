//! The journal on disk: one append-only log, `state_dir/journal.log`, shared by every token, with group commit.
//!
//! Every write or removal appends one record; a writer thread takes whatever writes are queued when it comes round,
//! appends them with one `write`, and makes them durable with **one `fdatasync` for all of them** before it answers
//! any (group commit: the rotations that reach a durable step together share a disk flush, where one file per entry
//! cost each of them a new inode, an `fdatasync`, a rename and a directory `fsync`). The live entries are kept in
//! memory, so reads never touch the disk; entries exist only while a token has work in progress, so this is small.
//!
//! Crash semantics (the same as the file-per-entry store before it, which the crash matrix and the simulation
//! check): after a write's `Ok`, a crash keeps it; after an `Err`, the old entry or the new one is there, never a mix.
//! What is on disk is a prefix of what was appended: records are length-prefixed and checksummed, and opening the
//! log keeps the longest valid prefix and cuts a torn tail. An acknowledged record is always inside that prefix
//! (it was followed by an `fdatasync` before its answer), so the cut only drops writes that were never answered.
//!
//! Failures: a failed append is cut off again (`ftruncate` to where the batch began) and its writes answered with
//! the error. After a failed `fdatasync` the file's state is unknown (the kernel may have dropped the dirty pages and
//! marked them clean, so a later `fdatasync` would lie), so the log is not appended to again: the next batch first
//! rewrites it whole from the acknowledged entries (temporary file, `fdatasync`, rename, directory `fsync`) and
//! carries on only if that worked. The same rewrite compacts the log once it is mostly superseded records.
//!
//! Migration: the journal used to be one file per token (`state_dir/journal/<token>.json`). Opening for writing
//! moves such files into the log (log durable first, then the files removed); a crash in between repeats the move
//! at the next start, and the files win over the log for their tokens, since nothing else wrote the log meanwhile.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};

use async_trait::async_trait;
use sha2::{Digest, Sha256};

use super::store::{file_stem, EntryStore};
use super::JournalError;

/// The log's first bytes (format 1).
const MAGIC: &[u8; 8] = b"TRJLOG1\n";
/// A record: `len: u32 LE`, `check: [u8; 8]` (the first 8 bytes of SHA-256 of the body), then the body of `len`
/// bytes: `op: u8` (1 put, 2 remove), `name_len: u16 LE`, the token name, then (put) the entry.
const HEADER: usize = 12;
const PUT: u8 = 1;
const REMOVE: u8 = 2;
/// No entry is near this; a larger length is a torn or foreign tail, not a record.
const MAX_RECORD: usize = 64 << 20;
/// The log is rewritten with only the live entries once it is larger than this and four times what they take.
const COMPACT_AT: u64 = 1 << 20;
/// ... or, right after a batch that removed an entry (a rotation finished), larger than this.
const COMPACT_AFTER_REMOVE: u64 = 64 << 10;
/// At most this many queued writes go into one append (bounds the batch's buffer).
const MAX_BATCH: usize = 512;

fn check(body: &[u8]) -> [u8; 8] {
    let mut out = [0; 8];
    out.copy_from_slice(&Sha256::digest(body)[..8]);
    out
}

fn encode(out: &mut Vec<u8>, token: &str, bytes: Option<&[u8]>) {
    let name = token.as_bytes();
    let body_len = 1 + 2 + name.len() + bytes.map_or(0, <[u8]>::len);
    let start = out.len();
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 8]);
    out.push(if bytes.is_some() { PUT } else { REMOVE });
    out.extend_from_slice(&(name.len() as u16).to_le_bytes());
    out.extend_from_slice(name);
    out.extend_from_slice(bytes.unwrap_or_default());
    let sum = check(&out[start + HEADER..]);
    out[start + 4..start + HEADER].copy_from_slice(&sum);
}

/// Replays `data` (a whole log file) into `entries`; returns the length of the valid prefix. A log without the
/// magic is refused (it is not ours), an empty one is fine.
fn replay(data: &[u8], entries: &mut HashMap<String, Vec<u8>>) -> Result<usize, String> {
    if data.is_empty() {
        return Ok(0);
    }
    if data.len() < MAGIC.len() {
        // A crash while the first bytes of a new log were written: nothing in it was ever acknowledged.
        return if MAGIC.starts_with(data) {
            Ok(0)
        } else {
            Err("not a token-rotator journal log".into())
        };
    }
    if &data[..MAGIC.len()] != MAGIC {
        return Err("not a token-rotator journal log (unknown format)".into());
    }
    let mut at = MAGIC.len();
    while let Some(head) = data.get(at..at + HEADER) {
        let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes")) as usize;
        if !(3..=MAX_RECORD).contains(&len) {
            break;
        }
        let Some(body) = data.get(at + HEADER..at + HEADER + len) else {
            break;
        };
        if head[4..] != check(body) {
            break;
        }
        let name_len = u16::from_le_bytes([body[1], body[2]]) as usize;
        let Some(name) = body
            .get(3..3 + name_len)
            .and_then(|n| std::str::from_utf8(n).ok())
        else {
            break;
        };
        match body[0] {
            PUT => {
                entries.insert(name.to_string(), body[3 + name_len..].to_vec());
            }
            REMOVE if body.len() == 3 + name_len => {
                entries.remove(name);
            }
            _ => break,
        }
        at += HEADER + len;
    }
    Ok(at)
}

/// The offset of the first whole, checksummed record after `from`, if any: what tells damage inside the log from a
/// torn tail (an append cut short by a crash leaves no whole record after the cut that was ever acknowledged...
/// but the kernel may write a batch's pages out of order, so a later record of the same unacknowledged batch can
/// survive a torn one; that case is kept aside too, harmlessly).
fn record_after(data: &[u8], from: usize) -> Option<usize> {
    (from + 1..data.len().saturating_sub(HEADER)).find(|&at| {
        let len = u32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes")) as usize;
        (3..=MAX_RECORD).contains(&len)
            && data
                .get(at + HEADER..at + HEADER + len)
                .is_some_and(|body| data[at + 4..at + HEADER] == check(body))
    })
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir).and_then(|d| d.sync_all())
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The token a per-token file of the old layout belongs to: its name unescaped, or (a name too long for a file
/// name, kept as a start and a digest) the `token` of a plain entry.
fn legacy_token(stem: &str, bytes: &[u8]) -> Option<String> {
    if !stem.contains('~') {
        let mut out = Vec::new();
        let b = stem.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' {
                out.push(u8::from_str_radix(stem.get(i + 1..i + 3)?, 16).ok()?);
                i += 3;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        // Only a name this layout would have given the token (not an operator's `x.orig.json`).
        return String::from_utf8(out)
            .ok()
            .filter(|token| file_stem(token) == stem);
    }
    #[derive(serde::Deserialize)]
    struct Named {
        token: String,
    }
    let named: Named = serde_json::from_slice(bytes).ok()?;
    (file_stem(&named.token) == stem).then_some(named.token)
}

/// The entries found in a directory of the old layout, and the files read (to remove once moved).
type Legacy = (HashMap<String, Vec<u8>>, Vec<PathBuf>);

/// The entries in the old per-token files of `dir` (`None`: no such directory), and the files read.
fn read_legacy(dir: &Path) -> io::Result<Option<Legacy>> {
    let listing = match fs::read_dir(dir) {
        Ok(l) => l,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let (mut entries, mut files) = (HashMap::new(), Vec::new());
    for item in listing {
        let path = item?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name.ends_with(".json.tmp") {
            // An unfinished replacement: the old layout never acknowledged it.
            files.push(path);
            continue;
        }
        let Some(stem) = name.strip_suffix(".json") else {
            continue;
        };
        let bytes = fs::read(&path)?;
        let Some(token) = legacy_token(stem, &bytes) else {
            if stem.contains('~') {
                return Err(io::Error::other(format!(
                    "cannot tell which token {} belongs to (an encrypted entry of a long token name): finish its \
                     rotation with the previous version of token-rotator first",
                    path.display()
                )));
            }
            continue; // not a name this layout writes: left alone
        };
        entries.insert(token, bytes);
        files.push(path);
    }
    Ok(Some((entries, files)))
}

/// A rewrite that failed; `renamed`: the new log already replaced the old one (only the directory `fsync`
/// failed), so the old file is no longer the log and must not be appended to.
struct RewriteError {
    error: io::Error,
    renamed: bool,
}

/// Writes a new log holding exactly `entries` in place of `path`: temporary file, `fdatasync`, rename, directory
/// `fsync`. Returns the open file and its length.
fn rewrite(path: &Path, entries: &HashMap<String, Vec<u8>>) -> Result<(File, u64), RewriteError> {
    let tmp = path.with_extension("log.tmp");
    let mut buf = MAGIC.to_vec();
    let mut names: Vec<&String> = entries.keys().collect();
    names.sort();
    for name in names {
        encode(&mut buf, name, Some(&entries[name]));
    }
    let written = (|| {
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&buf)?;
        f.sync_data()?;
        fs::rename(&tmp, path)?;
        Ok(f)
    })();
    let mut f = written.map_err(|error| {
        let _ = fs::remove_file(&tmp);
        RewriteError {
            error,
            renamed: false,
        }
    })?;
    fsync_dir(path.parent().unwrap_or(Path::new(".")))
        .and_then(|()| f.seek(SeekFrom::End(0)))
        .map_err(|error| RewriteError {
            error,
            renamed: true,
        })?;
    Ok((f, buf.len() as u64))
}

/// Reads the log at `path` (a missing file is an empty log). With `repair`, a torn tail is cut off durably.
fn load(path: &Path, repair: bool) -> io::Result<(HashMap<String, Vec<u8>>, u64)> {
    let mut entries = HashMap::new();
    let mut data = Vec::new();
    match File::open(path) {
        Ok(mut f) => {
            f.read_to_end(&mut data)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((entries, 0)),
        Err(e) => return Err(e),
    }
    let valid = replay(&data, &mut entries).map_err(io::Error::other)?;
    if repair && valid < data.len() {
        if let Some(at) = record_after(&data, valid) {
            // Not a torn tail: a whole record follows the damage (a bad sector, a flipped bit). The daemon goes on
            // from what is before it; everything is kept for the operator.
            let aside =
                path.with_extension(format!("log.damaged-{}", crate::clock::now().timestamp()));
            let mut f = OpenOptions::new()
                .create_new(true)
                .write(true)
                .mode(0o600)
                .open(&aside)?;
            f.write_all(&data)?;
            f.sync_data()?;
            tracing::error!(path = %path.display(), offset = valid, next_record = at, copy = %aside.display(), "the journal log is damaged before its end: continuing from the records before the damage; the whole log is kept in the copy");
        }
        let f = OpenOptions::new().write(true).open(path)?;
        f.set_len(valid as u64)?;
        f.sync_data()?;
    }
    Ok((entries, valid as u64))
}

/// One queued write: `None` removes the entry.
struct Op {
    token: String,
    bytes: Option<Vec<u8>>,
    done: tokio::sync::oneshot::Sender<io::Result<()>>,
}

/// What the writer thread owns.
struct Writer {
    path: PathBuf,
    file: File,
    len: u64,
    /// Set after a failed `fdatasync`: the next batch rewrites the log before it appends.
    broken: bool,
    /// `broken`, for the remove fast path on the caller's side.
    clean: Arc<AtomicBool>,
    entries: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    commits: Arc<AtomicU64>,
    /// Keeps `state_dir`'s lock until the last queued write is done.
    _lock: Arc<File>,
}

impl Writer {
    fn run(mut self, ops: mpsc::Receiver<Op>) {
        while let Ok(first) = ops.recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match ops.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            let result = self.commit(&batch);
            for op in batch {
                let answer = match &result {
                    Ok(()) => Ok(()),
                    Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
                };
                let _ = op.done.send(answer);
            }
        }
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<u8>>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_broken(&mut self, broken: bool) {
        self.broken = broken;
        self.clean.store(!broken, Ordering::SeqCst);
    }

    /// Rewrites the log from the acknowledged entries. If the new log replaced the old one but could not be made
    /// durable, the old file is no longer the log: the next batch rewrites again before it appends.
    fn rebuild(&mut self) -> io::Result<()> {
        let snapshot = self.live().clone();
        match rewrite(&self.path, &snapshot) {
            Ok((file, len)) => {
                self.file = file;
                self.len = len;
                self.set_broken(false);
                Ok(())
            }
            Err(e) => {
                if e.renamed {
                    self.set_broken(true);
                }
                Err(e.error)
            }
        }
    }

    fn commit(&mut self, batch: &[Op]) -> io::Result<()> {
        if self.broken {
            self.rebuild()?;
        }
        let mut buf = Vec::new();
        let mut removed = false;
        {
            let live = self.live();
            for (i, op) in batch.iter().enumerate() {
                // Removing what the log does not hold (nothing acknowledged, nothing earlier in this batch) writes
                // nothing: after a failed `fdatasync` the rewrite above already made the log match `live`.
                if op.bytes.is_none()
                    && !live.contains_key(&op.token)
                    && !batch[..i].iter().any(|o| o.token == op.token)
                {
                    continue;
                }
                removed |= op.bytes.is_none();
                encode(&mut buf, &op.token, op.bytes.as_deref());
            }
        }
        if buf.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.file.write_all(&buf) {
            // Cut the partial append off again; if even that fails, rewrite before the next append.
            if self.file.set_len(self.len).is_err()
                || self.file.seek(SeekFrom::Start(self.len)).is_err()
            {
                self.set_broken(true);
            }
            return Err(e);
        }
        if let Err(e) = self.file.sync_data() {
            self.set_broken(true);
            return Err(e);
        }
        self.len += buf.len() as u64;
        self.commits.fetch_add(1, Ordering::Relaxed);
        let live_bytes = {
            let mut live = self.live();
            for op in batch {
                match &op.bytes {
                    Some(b) => live.insert(op.token.clone(), b.clone()),
                    None => live.remove(&op.token),
                };
            }
            live.iter()
                .map(|(k, v)| (HEADER + 3 + k.len() + v.len()) as u64)
                .sum::<u64>()
        };
        // Superseded records keep old values (plain JSON without `state_key`) in the file until a rewrite: once the
        // log is mostly superseded, it is rewritten at 1 MiB, or at 64 KiB right after a finished rotation.
        let threshold = if removed {
            COMPACT_AFTER_REMOVE
        } else {
            COMPACT_AT
        };
        if self.len > threshold && self.len > 4 * live_bytes {
            // Already durable in the old log: a failed compaction only means trying again after the next batch.
            if let Err(e) = self.rebuild() {
                tracing::warn!(path = %self.path.display(), error = %e, "compacting the journal log failed; will retry");
            }
        }
        Ok(())
    }
}

/// `state_dir/journal.log` (0600) behind `state_dir/lock` (see the module docs).
pub struct DiskStore {
    state_dir: PathBuf,
    path: PathBuf,
    /// The acknowledged entries (read-only: what the log held when first read).
    entries: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    /// Writable stores: the writer thread's queue, started by the first write.
    queue: Option<Mutex<Option<mpsc::Sender<Op>>>>,
    /// What the writer thread starts from (taken by the first write).
    pending: Mutex<Option<PendingWriter>>,
    /// Read-only stores: loaded at the first read.
    snapshot: OnceLock<()>,
    commits: Arc<AtomicU64>,
    /// False while the writer must rewrite the log before its next append.
    clean: Arc<AtomicBool>,
    _lock: Option<Arc<File>>,
}

impl std::fmt::Debug for DiskStore {
    /// The path only: the entries hold minted values.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

struct PendingWriter {
    file: File,
    len: u64,
}

impl DiskStore {
    /// Creates (0700) or checks `state_dir`, takes its lock, moves a journal of the old layout into the log, cuts a
    /// torn tail and loads the live entries.
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
        let path = state_dir.join("journal.log");
        let corrupt = |why: String| JournalError::Corrupt {
            path: path.display().to_string(),
            why,
        };
        let (mut entries, mut len) = load(&path, true).map_err(|e| match e.kind() {
            io::ErrorKind::Other => corrupt(e.to_string()),
            _ => io_at(&path)(e),
        })?;
        let legacy_dir = state_dir.join("journal");
        let legacy = read_legacy(&legacy_dir).map_err(io_at(&legacy_dir))?;
        let file = match legacy {
            Some((old, files)) => {
                entries.extend(old);
                let (file, new_len) =
                    rewrite(&path, &entries).map_err(|e| io_at(&path)(e.error))?;
                for f in files {
                    fs::remove_file(&f).map_err(io_at(&f))?;
                }
                fsync_dir(&legacy_dir).map_err(io_at(&legacy_dir))?;
                // Something else kept there (an operator's copy) keeps the directory; the next start finds no entry
                // files in it and moves nothing.
                if fs::remove_dir(&legacy_dir).is_ok() {
                    fsync_dir(state_dir).map_err(io_at(state_dir))?;
                }
                len = new_len;
                file
            }
            None if len == 0 => {
                rewrite(&path, &entries)
                    .map_err(|e| io_at(&path)(e.error))?
                    .0
            }
            None => {
                let mut f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .map_err(io_at(&path))?;
                f.seek(SeekFrom::Start(len)).map_err(io_at(&path))?;
                f
            }
        };
        let len = if len == 0 { MAGIC.len() as u64 } else { len };
        Ok(DiskStore {
            state_dir: state_dir.to_path_buf(),
            path,
            entries: Arc::new(Mutex::new(entries)),
            queue: Some(Mutex::new(None)),
            pending: Mutex::new(Some(PendingWriter { file, len })),
            snapshot: OnceLock::new(),
            commits: Arc::default(),
            clean: Arc::new(AtomicBool::new(true)),
            _lock: Some(Arc::new(lock)),
        })
    }

    /// A read-only view for `plan`: no lock, nothing created or repaired; a missing `state_dir` reads as an empty
    /// journal. It reads the log once, at the first read, and also sees files of the old layout.
    pub fn read_only(state_dir: &Path) -> Self {
        DiskStore {
            state_dir: state_dir.to_path_buf(),
            path: state_dir.join("journal.log"),
            entries: Arc::default(),
            queue: None,
            pending: Mutex::new(None),
            snapshot: OnceLock::new(),
            commits: Arc::default(),
            clean: Arc::new(AtomicBool::new(true)),
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

    /// Whether any entry is stored.
    pub fn has_entries(&self) -> bool {
        !self.live().is_empty()
    }

    /// How many group commits (appends made durable with one `fdatasync`) this store has made: for benchmarks
    /// and tests of the batching.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Where the log lives.
    pub fn log_path(&self) -> &Path {
        &self.path
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<u8>>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Read-only views load the log (and any old-layout files, which win) at their first read; a log being
    /// appended to by a running daemon may end in a torn record, which is left out.
    fn ensure_loaded(&self) -> io::Result<()> {
        if self.queue.is_some() || self.snapshot.get().is_some() {
            return Ok(());
        }
        // The old files first: a daemon starting meanwhile writes the log before it deletes them.
        let legacy = read_legacy(&self.state_dir.join("journal"))?;
        let (mut entries, _) = load(&self.path, false)?;
        if let Some((old, _)) = legacy {
            entries.extend(old);
        }
        *self.live() = entries;
        let _ = self.snapshot.set(());
        Ok(())
    }

    async fn submit(&self, token: &str, bytes: Option<Vec<u8>>) -> io::Result<()> {
        if HEADER + 3 + token.len() + bytes.as_ref().map_or(0, Vec::len) > MAX_RECORD
            || token.len() > usize::from(u16::MAX)
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "journal entry too large for one log record",
            ));
        }
        let Some(queue) = &self.queue else {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the journal was opened read-only",
            ));
        };
        let (done, answer) = tokio::sync::oneshot::channel();
        let op = Op {
            token: token.to_string(),
            bytes,
            done,
        };
        {
            let mut q = queue.lock().unwrap_or_else(|p| p.into_inner());
            if q.is_none() {
                *q = Some(self.start_writer()?);
            }
            q.as_ref()
                .expect("started above")
                .send(op)
                .map_err(|_| io::Error::other("the journal writer stopped"))?;
        }
        answer
            .await
            .unwrap_or_else(|_| Err(io::Error::other("the journal writer stopped")))
    }

    fn start_writer(&self) -> io::Result<mpsc::Sender<Op>> {
        let start = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| io::Error::other("the journal writer stopped"))?;
        let writer = Writer {
            path: self.path.clone(),
            file: start.file,
            len: start.len,
            broken: false,
            clean: self.clean.clone(),
            entries: self.entries.clone(),
            commits: self.commits.clone(),
            _lock: self._lock.clone().expect("writable stores hold the lock"),
        };
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("journal".into())
            .spawn(move || writer.run(rx))?;
        Ok(tx)
    }
}

#[async_trait]
impl EntryStore for DiskStore {
    async fn read(&self, token: &str) -> io::Result<Option<Vec<u8>>> {
        self.ensure_loaded()?;
        Ok(self.live().get(token).cloned())
    }

    async fn write(&self, token: &str, bytes: Vec<u8>) -> io::Result<()> {
        self.submit(token, Some(bytes)).await
    }

    async fn remove(&self, token: &str) -> io::Result<()> {
        // Nothing acknowledged to remove and the log matches what was acknowledged: nothing to write. (Visits are
        // one at a time per token, so no write of this token is in flight.)
        if self.queue.is_some()
            && self.clean.load(Ordering::SeqCst)
            && !self.live().contains_key(token)
        {
            return Ok(());
        }
        self.submit(token, None).await
    }

    fn location(&self, token: &str) -> String {
        format!("{} (entry {token:?})", self.path.display())
    }

    fn read_only(&self) -> bool {
        self.queue.is_none()
    }
}

/// The stored entry of `token` in the journal of `state_dir`, read from disk without the lock (for tests and
/// tools looking at a stopped daemon's journal).
pub fn read_stored(state_dir: &Path, token: &str) -> io::Result<Option<Vec<u8>>> {
    let store = DiskStore::read_only(state_dir);
    store.ensure_loaded()?;
    let entry = store.live().get(token).cloned();
    Ok(entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: usize) -> Vec<u8> {
        format!("{{\"n\":{i}}}").into_bytes()
    }

    #[tokio::test]
    async fn entries_survive_a_reopen_and_removals_stay_removed() {
        let root = tempfile::tempdir().unwrap();
        let state = root.path().join("state");
        {
            let store = DiskStore::open(&state).unwrap();
            store.write("a", entry(1)).await.unwrap();
            store.write("b/c", entry(2)).await.unwrap();
            store.write("a", entry(3)).await.unwrap();
            store.remove("b/c").await.unwrap();
            store.write("d", entry(4)).await.unwrap();
        }
        let store = reopen(&state).await;
        assert_eq!(store.read("a").await.unwrap(), Some(entry(3)));
        assert_eq!(store.read("b/c").await.unwrap(), None);
        assert_eq!(store.read("d").await.unwrap(), Some(entry(4)));
        let mode = fs::metadata(store.log_path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    /// Opens `state` once the store dropped just before has finished its queued writes and let go of the lock.
    async fn reopen(state: &Path) -> DiskStore {
        for _ in 0..500 {
            match DiskStore::open(state) {
                Err(JournalError::Locked(_)) => {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await
                }
                other => return other.unwrap(),
            }
        }
        panic!("the lock was never released");
    }

    /// A log of ten entries `t0`…`t9` written and closed: its temporary root, `state_dir`, the log's path and bytes.
    async fn log_of_ten() -> (tempfile::TempDir, PathBuf, PathBuf, Vec<u8>) {
        let root = tempfile::tempdir().unwrap();
        let state = root.path().join("state");
        {
            let store = DiskStore::open(&state).unwrap();
            for i in 0..10 {
                store.write(&format!("t{i}"), entry(i)).await.unwrap();
            }
        }
        let path = state.join("journal.log");
        let whole = fs::read(&path).unwrap();
        (root, state, path, whole)
    }

    #[tokio::test]
    async fn a_torn_tail_is_cut_and_every_acknowledged_write_is_kept() {
        let (_root, state, path, whole) = log_of_ten().await;
        // Every cut inside the last record (a crash mid-append) and garbage after it keep the first nine.
        let last_start = replay(&whole[..whole.len() - 1], &mut HashMap::new()).unwrap();
        assert!(last_start > MAGIC.len() && last_start < whole.len());
        for cut in [last_start + 1, last_start + HEADER, whole.len() - 1] {
            fs::write(&path, &whole[..cut]).unwrap();
            let store = reopen(&state).await;
            assert_eq!(store.read("t8").await.unwrap(), Some(entry(8)));
            assert_eq!(store.read("t9").await.unwrap(), None, "cut at {cut}");
            drop(store);
            assert_eq!(fs::metadata(&path).unwrap().len() as usize, last_start);
        }
        let mut garbage = whole.clone();
        garbage.extend_from_slice(&[0xff; 40]);
        fs::write(&path, &garbage).unwrap();
        let store = reopen(&state).await;
        assert_eq!(store.read("t9").await.unwrap(), Some(entry(9)));
        store.write("t10", entry(10)).await.unwrap();
        drop(store);
        assert_eq!(
            reopen(&state).await.read("t10").await.unwrap(),
            Some(entry(10)),
            "appended after the cut, not after the garbage"
        );
    }

    #[tokio::test]
    async fn damage_before_the_end_keeps_a_copy_of_the_whole_log() {
        let (_root, state, path, whole) = log_of_ten().await;
        // Flip a byte inside the sixth record's body.
        let mut at = MAGIC.len();
        for _ in 0..5 {
            at += HEADER + u32::from_le_bytes(whole[at..at + 4].try_into().unwrap()) as usize;
        }
        let mut damaged = whole.clone();
        damaged[at + HEADER + 1] ^= 0x40;
        fs::write(&path, &damaged).unwrap();
        let store = reopen(&state).await;
        assert_eq!(store.read("t4").await.unwrap(), Some(entry(4)));
        assert_eq!(store.read("t7").await.unwrap(), None);
        let copies: Vec<_> = fs::read_dir(&state)
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("journal.log.damaged-")
            })
            .collect();
        assert_eq!(copies.len(), 1, "one copy kept");
        assert_eq!(
            fs::read(copies[0].path()).unwrap(),
            damaged,
            "the whole log, as found"
        );
        let last = replay(&whole[..whole.len() - 1], &mut HashMap::new()).unwrap();
        assert_eq!(
            record_after(&whole[..whole.len() - 1], last),
            None,
            "a torn tail has no copy"
        );
    }

    #[tokio::test]
    async fn a_finished_rotation_compacts_a_small_log_so_old_values_do_not_linger() {
        let root = tempfile::tempdir().unwrap();
        let state = root.path().join("state");
        let store = DiskStore::open(&state).unwrap();
        let value = b"OLD-VALUE-1234".to_vec();
        store.write("a", value.clone()).await.unwrap();
        for i in 0..100 {
            store.write("b", vec![b'y'; 1024 + i]).await.unwrap();
        }
        store.remove("a").await.unwrap();
        store.remove("b").await.unwrap();
        let log = fs::read(store.log_path()).unwrap();
        assert!(
            !log.windows(value.len()).any(|w| w == value),
            "rewritten after the removal ({} bytes)",
            log.len()
        );
        assert_eq!(store.read("a").await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_foreign_file_is_refused_not_overwritten() {
        let root = tempfile::tempdir().unwrap();
        let state = root.path().join("state");
        fs::DirBuilder::new().mode(0o700).create(&state).unwrap();
        fs::write(state.join("journal.log"), b"something else entirely").unwrap();
        let err = DiskStore::open(&state).unwrap_err();
        assert!(matches!(err, JournalError::Corrupt { .. }), "{err}");
        assert_eq!(
            fs::read(state.join("journal.log")).unwrap(),
            b"something else entirely"
        );
    }

    #[tokio::test]
    async fn concurrent_writes_share_commits_and_all_land() {
        let root = tempfile::tempdir().unwrap();
        let state = root.path().join("state");
        let store = Arc::new(DiskStore::open(&state).unwrap());
        let mut tasks = Vec::new();
        for i in 0..200 {
            let s = store.clone();
            tasks.push(tokio::spawn(async move {
                s.write(&format!("t{i}"), entry(i)).await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert!(store.commits() >= 1 && store.commits() <= 200);
        drop(store);
        let store = reopen(&state).await;
        for i in 0..200 {
            assert_eq!(store.read(&format!("t{i}")).await.unwrap(), Some(entry(i)));
        }
    }

    #[tokio::test]
    async fn the_log_is_compacted_and_keeps_the_live_entries() {
        let root = tempfile::tempdir().unwrap();
        let state = root.path().join("state");
        let store = DiskStore::open(&state).unwrap();
        let big = vec![b'x'; 4096];
        for round in 0..400 {
            store.write("busy", big.clone()).await.unwrap();
            store.write("steady", entry(round)).await.unwrap();
        }
        store.remove("busy").await.unwrap();
        let len = fs::metadata(store.log_path()).unwrap().len();
        assert!(len < 2 * COMPACT_AT, "compacted: {len} bytes");
        drop(store);
        let store = reopen(&state).await;
        assert_eq!(store.read("steady").await.unwrap(), Some(entry(399)));
        assert_eq!(store.read("busy").await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_failed_append_is_answered_with_the_error_and_the_log_recovers() {
        let root = tempfile::tempdir().unwrap();
        let state = root.path().join("state");
        let store = DiskStore::open(&state).unwrap();
        store.write("kept", entry(1)).await.unwrap();
        // Swap the writer's file for a read-only handle: the next append fails like a full disk would.
        {
            let path = state.join("journal.log");
            let ro = File::open(&path).unwrap();
            let (tx, rx) = mpsc::channel::<Op>();
            let old = store.queue.as_ref().unwrap().lock().unwrap().replace(tx);
            drop(old);
            let writer = Writer {
                path,
                file: ro,
                len: fs::metadata(state.join("journal.log")).unwrap().len(),
                broken: false,
                clean: store.clean.clone(),
                entries: store.entries.clone(),
                commits: store.commits.clone(),
                _lock: store._lock.clone().unwrap(),
            };
            std::thread::spawn(move || writer.run(rx));
        }
        let err = store.write("lost", entry(2)).await.unwrap_err();
        assert_ne!(
            err.kind(),
            io::ErrorKind::Other,
            "the OS error is kept: {err}"
        );
        assert_eq!(store.read("lost").await.unwrap(), None, "not acknowledged");
        // The read-only handle cannot be truncated either: the next batch rewrites the log and goes on.
        store.write("after", entry(3)).await.unwrap();
        drop(store);
        let store = reopen(&state).await;
        assert_eq!(store.read("kept").await.unwrap(), Some(entry(1)));
        assert_eq!(store.read("after").await.unwrap(), Some(entry(3)));
        assert_eq!(store.read("lost").await.unwrap(), None);
    }

    #[tokio::test]
    async fn files_of_the_old_layout_move_into_the_log() {
        let root = tempfile::tempdir().unwrap();
        let state = root.path().join("state");
        let old = state.join("journal");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&old)
            .unwrap();
        fs::write(old.join("ci%2Forg%2Ex.json"), entry(1)).unwrap();
        let long = "x.".repeat(128);
        let plain_long = serde_json::to_vec(&serde_json::json!({ "token": long })).unwrap();
        fs::write(old.join(format!("{}.json", file_stem(&long))), &plain_long).unwrap();
        fs::write(old.join("half.json.tmp"), b"{").unwrap();
        fs::write(old.join("notes.txt"), b"an operator's copy").unwrap();
        fs::write(old.join("ci%2Forg%2Ex.orig.json"), b"{}").unwrap();
        assert_eq!(
            read_stored(&state, "ci/org.x").unwrap(),
            Some(entry(1)),
            "a read-only view sees them before the move"
        );
        let store = DiskStore::open(&state).unwrap();
        assert_eq!(
            fs::read_dir(&old).unwrap().count(),
            2,
            "only what was not an entry is left"
        );
        assert_eq!(store.read("ci/org.x").await.unwrap(), Some(entry(1)));
        assert_eq!(store.read(&long).await.unwrap(), Some(plain_long));
        assert_eq!(store.live().len(), 2);
        store.write("ci/org.x", entry(5)).await.unwrap();
        drop(store);
        let store = reopen(&state).await;
        assert_eq!(
            store.read("ci/org.x").await.unwrap(),
            Some(entry(5)),
            "a later start moves nothing again"
        );
    }
}
