//! The rotation journal: a minted token is persisted here (0600, fsync'd) before anything else happens, so that a
//! crash at any later point resumes instead of losing it (SPEC §5.1).
//!
//! One entry per token with work in progress (a rotation, old tokens waiting to be revoked, a sweep, a forced
//! rotation); finished work removes the entry, so the journal stays small. Entries are kept by an
//! [`EntryStore`] (`state_dir` on disk, or memory in the simulation), sealed with `state_key` when one is set.
//!
//! A write that fails (a full disk, no file descriptors left) loses nothing (SPEC §5.12): the entry is *held* in
//! memory, `load` returns it, and the next visit of the token writes it again before it does anything else. The
//! journal also keeps, for the daemon's lifetime, one lock per token (at most one visit of a token at a time, even
//! across policy reloads) and the token ids each token's sink records named when they were last read (the orphan
//! sweep never revokes those, SPEC §5.11).

pub mod disk;
pub mod store;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::record::MintedToken;
use crate::secret::{ExposeSecret, SecretString};
pub use disk::DiskStore;
pub use store::{EntryConflict, EntryStore, MemoryStore};

pub const FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("state_dir {path} is accessible by group or others (mode {mode:04o}); run `chmod 0700 {path}`")]
    Permissions { path: String, mode: u32 },
    #[error("state_dir {0} is locked by another token-rotator process; two daemons must not share a state_dir")]
    Locked(String),
    #[error(
        "journal {path} is unreadable ({why}); the daemon leaves that token alone until it is fixed"
    )]
    Corrupt { path: String, why: String },
    #[error("the journal was opened read-only")]
    ReadOnly,
}

impl JournalError {
    /// A failed read or write (a full disk, no descriptors left, an I/O error) passes; the entry is held in memory
    /// meanwhile. The others need an operator.
    pub fn is_transient(&self) -> bool {
        matches!(self, JournalError::Io { .. })
    }

    /// A shared store refused the write: the entry changed since this process read it (another instance).
    pub fn is_conflict(&self) -> bool {
        matches!(self, JournalError::Io { source, .. }
            if source.get_ref().is_some_and(|e| e.is::<store::EntryConflict>()))
    }
}

/// Where a rotation stands. See ARCHITECTURE.md "Rotation state machine".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The create request is about to be sent (or was sent without an answer); no value known.
    Minting,
    /// The issuer returned a token; it is being pushed to the sinks.
    Minted,
    /// Stored and read back everywhere and proven with the identity probe.
    Verified,
}

/// One token's journal: the rotation in progress (if any) and the old tokens waiting to be revoked.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Entry {
    pub format: u32,
    pub token: String,
    pub issuer: String,
    pub token_type: String,
    pub rotation: Option<Rotation>,
    /// Old tokens of coexisting types, revoked after `grace` (or after their successor is used).
    #[serde(default)]
    pub revocations: Vec<PendingRevocation>,
    /// A create may have happened without its answer being journaled: look for orphans at the issuer.
    #[serde(default)]
    pub sweep: bool,
    /// The next visit rotates whatever the schedule says, and why (the current token is not trusted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub must_rotate: Option<String>,
    /// Events whose `notify` actions have not all run yet (SPEC §9), oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notices: Vec<PendingNotice>,
}

/// One event to tell consumers about, journaled before any of its actions runs so that a crash still runs them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingNotice {
    /// The same for every try (receivers can drop a repeated delivery).
    pub delivery: String,
    /// `rotated` or `failed`.
    pub event: String,
    pub token_id: Option<String>,
    pub created_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    /// How many of the token's actions, in order, have succeeded.
    #[serde(default)]
    pub done: usize,
    /// Failed tries of the action at `done`.
    #[serde(default)]
    pub attempts: u32,
    /// Not tried again before this time (the backoff after a failure).
    pub not_before: DateTime<Utc>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Rotation {
    pub started_at: DateTime<Utc>,
    pub phase: Phase,
    /// The label sent to the issuer (TFC description, Pulumi name), so an orphan can be recognised.
    pub label: Option<String>,
    pub minted: Option<MintedToken>,
    /// Sink targets (`sink:target`) that hold and read back `minted`.
    pub stored: Vec<String>,
    /// The token this rotation replaces, revoked once the new one is stored and verified (coexisting types).
    pub replaces: Option<String>,
    /// Identity probes of `minted` that the issuer refused (401/403): after a few the value is given up.
    #[serde(default)]
    pub probe_failures: u32,
    /// `minted` is its issuer's own credential (a coexisting type): the issuer switches to it once it is proven.
    #[serde(default)]
    pub own_credential: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRevocation {
    pub token_id: String,
    /// Not before this time (`grace` after the successor was stored and verified).
    pub not_before: DateTime<Utc>,
    /// Revoke as soon as this successor is used (`revoke_after_use`), or when `not_before` comes.
    pub after_use_of: Option<String>,
    /// When the successor was stored and proven (the start of `grace`): a later use of this token means a
    /// consumer had not cut over yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_at: Option<DateTime<Utc>>,
    /// For a successor the daemon's own identity probe touches (team, Pulumi tokens): the issuer stamps that
    /// probe as a use, so only a use later than this counts (the probe's end plus a margin for the issuer's clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_after: Option<DateTime<Utc>>,
    /// The successor's last use as first read after `use_after` was set, which may be the daemon's own probe:
    /// only a later one counts. Meaningful once `baseline_taken`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_baseline: Option<DateTime<Utc>>,
    #[serde(default)]
    pub baseline_taken: bool,
    #[serde(default)]
    pub attempts: u32,
    /// Waits for a successor that is stored and verified: set for the tokens of a rotation that was given up
    /// (its new token failed the probe); the next completed rotation starts their `grace`.
    #[serde(default)]
    pub held: bool,
}

impl Entry {
    pub fn new(token: &str, issuer: &str, token_type: &str) -> Self {
        Entry {
            format: FORMAT,
            token: token.into(),
            issuer: issuer.into(),
            token_type: token_type.into(),
            rotation: None,
            revocations: Vec::new(),
            sweep: false,
            must_rotate: None,
            notices: Vec::new(),
        }
    }

    /// Nothing in progress: the entry can go (compaction).
    pub fn is_idle(&self) -> bool {
        self.rotation.is_none()
            && self.revocations.is_empty()
            && !self.sweep
            && self.must_rotate.is_none()
            && self.notices.is_empty()
    }

    /// Every token id this entry names: the one being rotated in, the one it replaces, those awaiting revocation.
    pub fn named_ids(&self) -> impl Iterator<Item = &str> {
        let rotation = self.rotation.iter().flat_map(|r| {
            r.minted
                .iter()
                .map(|m| m.token_id.as_str())
                .chain(r.replaces.as_deref())
        });
        rotation.chain(
            self.revocations.iter().flat_map(|r| {
                std::iter::once(r.token_id.as_str()).chain(r.after_use_of.as_deref())
            }),
        )
    }
}

type VisitLocks = Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>;

/// A token's place from [`Journal::visit`]. Dropped, it lets the next visit of the token in, and forgets the
/// token's lock when no other visit holds or waits for it (kept for every token, 10,000 locks were 1.4 MB; issue
/// 19). Every clone of a lock is taken, and its count read, under the map's mutex, and an entry is removed only at
/// a count of one: a waiter's clone keeps it, so a token never has two locks. A waiter that gives up drops its
/// clone outside the mutex; racing with the holder's drop, that can leave an unused entry, reused and removed by
/// the token's next visit.
pub struct VisitGuard {
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
    locks: Arc<VisitLocks>,
    token: String,
}

impl Drop for VisitGuard {
    fn drop(&mut self) {
        self.guard.take();
        let mut locks = lock(&self.locks);
        if locks
            .get(&self.token)
            .is_some_and(|m| Arc::strong_count(m) == 1)
        {
            locks.remove(&self.token);
        }
    }
}

pub struct Journal {
    store: Arc<dyn EntryStore>,
    /// With `[daemon] state_key`, entries are sealed with XChaCha20-Poly1305 (the token name as associated data).
    key: Option<JournalKey>,
    /// Entries whose latest write failed: the newest state, written again before the token's next step.
    held: Mutex<HashMap<String, Entry>>,
    /// One visit per token at a time: a lock per token visited or waited for now ([`VisitGuard`]).
    visits: Arc<VisitLocks>,
    /// The token ids each token's sink records named when last read ([`id_digest`]s), keyed on the policy's name
    /// allocation.
    seen: Mutex<HashMap<Arc<str>, Seen>>,
}

/// The ids one token's records named ([`Journal::note_seen`]), as [`id_digest`]s.
enum Seen {
    One(u64),
    Many(Box<[u64]>),
}

/// A 64-bit digest of a token id, what the daemon keeps of an id for its lifetime where it only needs to recognise
/// it again (issue 19). Two ids with one digest would make the orphan sweep take the second for a claimed one and
/// leave it: the safe side (SipHash with fixed keys: stable within a process, never stored).
pub fn id_digest(id: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    id.hash(&mut h);
    h.finish()
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("store", &self.store)
            .field("sealed", &self.key.is_some())
            .finish_non_exhaustive()
    }
}

/// The journal's encryption key: 32 bytes, given as 64 hex characters or standard base64.
#[derive(Clone)]
pub struct JournalKey(chacha20poly1305::Key);

impl std::fmt::Debug for JournalKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JournalKey([REDACTED])")
    }
}

impl JournalKey {
    pub fn parse(secret: &SecretString) -> Result<Self, String> {
        use base64::Engine as _;
        let text = secret.expose_secret().trim();
        let bytes = if text.len() == 64 && text.chars().all(|c| c.is_ascii_hexdigit()) {
            (0..32)
                .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).expect("hex digits"))
                .collect::<Vec<u8>>()
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|_| "state_key must be 32 bytes as 64 hex characters or base64 (e.g. `openssl rand -hex 32`)".to_string())?
        };
        if bytes.len() != 32 {
            return Err(format!("state_key must be 32 bytes, found {}", bytes.len()));
        }
        Ok(JournalKey(*chacha20poly1305::Key::from_slice(&bytes)))
    }
}

/// An encrypted journal entry.
#[derive(Serialize, Deserialize)]
struct Sealed {
    format: u32,
    cipher: String,
    nonce: String,
    data: String,
}

const CIPHER: &str = "xchacha20poly1305";

/// How an entry is read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Read {
    /// By the visit that writes it next: held entry first, and the store remembers the version.
    ForWrite,
    /// A look: held entry first, nothing remembered.
    Look,
    /// A look at the store only.
    StoredLook,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Journal {
    pub fn new(store: Arc<dyn EntryStore>) -> Self {
        Journal {
            store,
            key: None,
            held: Mutex::new(HashMap::new()),
            visits: Arc::default(),
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// The journal in `state_dir`, locked for this process.
    pub fn open(state_dir: &Path) -> Result<Self, JournalError> {
        Ok(Journal::new(Arc::new(DiskStore::open(state_dir)?)))
    }

    /// A read-only view for `plan`: no lock, nothing created; a missing `state_dir` reads as an empty journal.
    pub fn open_read_only(state_dir: &Path) -> Journal {
        Journal::new(Arc::new(DiskStore::read_only(state_dir)))
    }

    /// Whether another process holds the `state_dir` lock (a daemon is running there).
    pub fn is_locked(state_dir: &Path) -> bool {
        DiskStore::is_locked(state_dir)
    }

    /// Seals entries with `key` from now on (and requires it to read them).
    pub fn with_key(mut self, key: Option<JournalKey>) -> Self {
        self.key = key;
        self
    }

    fn seal(&self, token: &str, plain: Vec<u8>) -> Vec<u8> {
        use base64::Engine as _;
        use chacha20poly1305::aead::{Aead, KeyInit, Payload};
        let Some(key) = &self.key else {
            return plain;
        };
        let nonce_bytes: [u8; 24] = rand::random();
        let nonce = chacha20poly1305::XNonce::from_slice(&nonce_bytes);
        let data = chacha20poly1305::XChaCha20Poly1305::new(&key.0)
            .encrypt(
                nonce,
                Payload {
                    msg: &plain,
                    aad: token.as_bytes(),
                },
            )
            .expect("XChaCha20-Poly1305 encryption does not fail for in-memory data");
        let sealed = Sealed {
            format: FORMAT,
            cipher: CIPHER.into(),
            nonce: nonce_bytes.iter().map(|b| format!("{b:02x}")).collect(),
            data: base64::engine::general_purpose::STANDARD.encode(data),
        };
        serde_json::to_vec(&sealed).expect("sealed entries serialise")
    }

    fn unseal(
        &self,
        token: &str,
        bytes: Vec<u8>,
        corrupt: impl Fn(String) -> JournalError,
    ) -> Result<Vec<u8>, JournalError> {
        use base64::Engine as _;
        use chacha20poly1305::aead::{Aead, KeyInit, Payload};
        let sealed = serde_json::from_slice::<Sealed>(&bytes).ok();
        let (Some(key), Some(sealed)) = (&self.key, sealed.as_ref()) else {
            return match (&self.key, sealed) {
                (None, None) => Ok(bytes),
                (None, Some(_)) => Err(corrupt(
                    "the entry is encrypted; set `[daemon] state_key` to the key it was written with"
                        .into(),
                )),
                // With a key, only sealed entries are trusted: whoever can write to `state_dir` could otherwise
                // plant a plain entry (a token value of their choosing, revocations of someone else's tokens).
                _ => Err(corrupt(
                    "the entry is not encrypted but `state_key` is set: it was not written by this daemon with \
                     this key (finish that rotation without `state_key`)"
                        .into(),
                )),
            };
        };
        if sealed.cipher != CIPHER {
            return Err(corrupt(format!("unknown cipher {}", sealed.cipher)));
        }
        let nonce: Vec<u8> = (0..sealed.nonce.len() / 2)
            .filter_map(|i| u8::from_str_radix(sealed.nonce.get(2 * i..2 * i + 2)?, 16).ok())
            .collect();
        if nonce.len() != 24 {
            return Err(corrupt("bad nonce".into()));
        }
        let data = base64::engine::general_purpose::STANDARD
            .decode(&sealed.data)
            .map_err(|_| corrupt("bad ciphertext encoding".into()))?;
        chacha20poly1305::XChaCha20Poly1305::new(&key.0)
            .decrypt(
                chacha20poly1305::XNonce::from_slice(&nonce),
                Payload {
                    msg: &data,
                    aad: token.as_bytes(),
                },
            )
            .map_err(|_| {
                corrupt("cannot decrypt: wrong `state_key`, or the file was altered".into())
            })
    }

    fn io(&self, token: &str) -> impl FnOnce(std::io::Error) -> JournalError {
        let path = self.store.location(token);
        move |source| JournalError::Io { path, source }
    }

    /// The entry of `token`: the one held in memory after a failed write, else the stored one.
    pub async fn load(&self, token: &str) -> Result<Option<Entry>, JournalError> {
        self.fetch(token, Read::ForWrite).await
    }

    /// The entry of `token` for a look only (another token's sweep, `plan`): the held one, else the stored one,
    /// read without touching what the next write of it is checked against.
    pub async fn peek(&self, token: &str) -> Result<Option<Entry>, JournalError> {
        self.fetch(token, Read::Look).await
    }

    /// The stored entry of `token`, ignoring one held here (a cluster standby: what the lease holder wrote, not what
    /// this process failed to write when it held the lease), read without touching the next write's version.
    pub async fn peek_stored(&self, token: &str) -> Result<Option<Entry>, JournalError> {
        self.fetch(token, Read::StoredLook).await
    }

    async fn fetch(&self, token: &str, how: Read) -> Result<Option<Entry>, JournalError> {
        if how != Read::StoredLook {
            if let Some(e) = lock(&self.held).get(token) {
                return Ok(Some(e.clone()));
            }
        }
        let read = match how {
            Read::ForWrite => self.store.read(token).await,
            Read::Look | Read::StoredLook => self.store.peek(token).await,
        };
        let Some(bytes) = read.map_err(self.io(token))? else {
            return Ok(None);
        };
        self.decode(token, bytes)
    }

    /// An entry's bytes as read from the store: unsealed, parsed and checked.
    fn decode(&self, token: &str, bytes: Vec<u8>) -> Result<Option<Entry>, JournalError> {
        let path = self.store.location(token);
        let corrupt = |why: String| JournalError::Corrupt {
            path: path.clone(),
            why,
        };
        let bytes = self.unseal(token, bytes, corrupt)?;
        let entry: Entry = serde_json::from_slice(&bytes)
            // serde_json's message names a line and column, never the content.
            .map_err(|e| JournalError::Corrupt {
                path: path.clone(),
                why: format!("invalid JSON at line {} column {}", e.line(), e.column()),
            })?;
        if entry.format != FORMAT {
            return Err(JournalError::Corrupt {
                path,
                why: format!("format {} is not {FORMAT}", entry.format),
            });
        }
        if entry.token != token {
            return Err(JournalError::Corrupt {
                path,
                why: "the entry belongs to another token".into(),
            });
        }
        Ok(Some(entry))
    }

    /// The durable write of one entry (an idle entry removes it).
    async fn write(&self, entry: &Entry) -> Result<(), JournalError> {
        if entry.is_idle() {
            return self
                .store
                .remove(&entry.token)
                .await
                .map_err(self.io(&entry.token));
        }
        let bytes = self.seal(
            &entry.token,
            serde_json::to_vec(entry).expect("journal entries serialise"),
        );
        self.store
            .write(&entry.token, bytes)
            .await
            .map_err(self.io(&entry.token))
    }

    /// Replaces the token's entry durably; the caller waits for it before its next step (the journal-first
    /// invariant). On failure the entry stays held in memory (`load` returns it) and the error says why; nothing
    /// is lost while the process lives.
    pub async fn save(&self, entry: &Entry) -> Result<(), JournalError> {
        if self.store.read_only() {
            return Err(JournalError::ReadOnly);
        }
        lock(&self.held).insert(entry.token.clone(), entry.clone());
        match self.write(entry).await {
            Ok(()) => {
                lock(&self.held).remove(&entry.token);
                Ok(())
            }
            Err(e) if e.is_conflict() => {
                // Another instance wrote this entry since this one read it (cluster mode): its state wins, and
                // this one, written later, would roll it back. Dropped; the next visit reads the entry again. A
                // value minted here and never stored is an orphan the next holder's sweep (or its re-mint of a
                // singleton) deals with, as after a crash.
                lock(&self.held).remove(&entry.token);
                let minted = entry
                    .rotation
                    .as_ref()
                    .and_then(|r| r.minted.as_ref())
                    .map(|m| m.token_id.clone());
                tracing::warn!(token = %entry.token, dropped_token_id = ?minted, "the journal entry was changed by another instance; this write is dropped and the entry read again");
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// Writes the entry held after a failed write, if any. `Ok` means the stored entry is the newest one.
    pub async fn flush(&self, token: &str) -> Result<(), JournalError> {
        let held = lock(&self.held).get(token).cloned();
        match held {
            Some(entry) => {
                tracing::info!(token = %token, "writing a journal entry whose earlier write failed");
                self.save(&entry).await
            }
            None => Ok(()),
        }
    }

    /// Writes every held entry (a token a reload removed has no next visit to do it; an exit must not drop one).
    /// Returns the tokens whose entry is still only in memory, with why.
    pub async fn flush_all(&self) -> Vec<(String, JournalError)> {
        // In name order: the same run writes in the same order (the simulation replays a seed exactly).
        let mut tokens: Vec<String> = lock(&self.held).keys().cloned().collect();
        tokens.sort();
        let mut failed = Vec::new();
        for token in tokens {
            let _visit = self.visit(&token).await;
            if let Err(e) = self.flush(&token).await {
                failed.push((token, e));
            }
        }
        failed
    }

    /// Before the process exits: `flush_all`, a few times a second apart; what still fails is logged at `error`
    /// (its minted value, if any, is lost with the process). Returns whether everything is durable.
    pub async fn flush_before_exit(&self) -> bool {
        for attempt in 1..=3 {
            let failed = self.flush_all().await;
            if failed.is_empty() {
                return true;
            }
            if attempt == 3 {
                for (token, e) in failed {
                    tracing::error!(token = %token, error = %e, "a journal entry could not be written before exit; an interrupted rotation of this token may mint again at the next start");
                }
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
        false
    }

    /// Waits until no other visit of `token` runs, and holds that place until the guard is dropped.
    pub async fn visit(&self, token: &str) -> VisitGuard {
        let m = lock(&self.visits)
            .entry(token.to_string())
            .or_default()
            .clone();
        VisitGuard {
            guard: Some(m.lock_owned().await),
            locks: self.visits.clone(),
            token: token.to_string(),
        }
    }

    /// Notes which token ids the sink records of `token` named when just read.
    pub fn note_seen<'a>(&self, token: &Arc<str>, ids: impl IntoIterator<Item = &'a str>) {
        // Kept for every token for the daemon's lifetime (issue 19): the policy's name as the key, and the ids as
        // digests, usually one (every record names the current token), with no allocation.
        let mut ids: Vec<u64> = ids.into_iter().map(id_digest).collect();
        ids.sort_unstable();
        ids.dedup();
        let ids = match ids[..] {
            [one] => Seen::One(one),
            _ => Seen::Many(ids.into_boxed_slice()),
        };
        lock(&self.seen).insert(token.clone(), ids);
    }

    /// The [`id_digest`]s of the token ids the records of `token` named when last read in this process (`None`:
    /// never read).
    pub fn seen(&self, token: &str) -> Option<HashSet<u64>> {
        lock(&self.seen).get(token).map(|ids| match ids {
            Seen::One(id) => HashSet::from([*id]),
            Seen::Many(ids) => ids.iter().copied().collect(),
        })
    }
}

#[cfg(test)]
mod tests;
