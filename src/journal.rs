//! The rotation journal in `state_dir`: a minted token is persisted here (0600, fsync'd) before anything else
//! happens, so that a crash at any later point resumes instead of losing it (SPEC §5.1).
//!
//! Layout: `state_dir/` (0700) holds `lock` (held for the daemon's lifetime) and `journal/<token>.json`, one file
//! per token with a rotation in progress. Finished rotations delete their file, so the journal stays small.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::issuer::MintedToken;
use crate::secret::{ExposeSecret, SecretString};

pub const FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("state_dir {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("state_dir {path} is accessible by group or others (mode {mode:04o}); run `chmod 0700 {path}`")]
    Permissions { path: String, mode: u32 },
    #[error("state_dir {0} is locked by another token-rotator process; two daemons must not share a state_dir")]
    Locked(String),
    #[error(
        "journal file {path} is unreadable ({why}); move it aside after checking its token by hand"
    )]
    Corrupt { path: String, why: String },
}

/// Where a rotation stands. See ARCHITECTURE.md "Rotation state machine".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The create request is about to be sent; no value known yet.
    Minting,
    /// The issuer returned a token; it is being pushed to the sinks.
    Minted,
    /// Stored and read back everywhere and proven with the identity probe.
    Verified,
}

/// A minted token as journaled. The value is serialised only into the 0600 journal file.
#[derive(Clone, Serialize, Deserialize)]
pub struct JournaledToken {
    #[serde(serialize_with = "expose")]
    pub value: SecretString,
    pub token_id: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
}

fn expose<S: serde::Serializer>(s: &SecretString, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(s.expose_secret())
}

impl std::fmt::Debug for JournaledToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JournaledToken")
            .field("value", &"[REDACTED]")
            .field("token_id", &self.token_id)
            .finish_non_exhaustive()
    }
}

impl From<&MintedToken> for JournaledToken {
    fn from(m: &MintedToken) -> Self {
        JournaledToken {
            value: m.value.clone(),
            token_id: m.token_id.clone(),
            created_at: m.created_at,
            expires_at: m.expires_at,
        }
    }
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
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Rotation {
    pub started_at: DateTime<Utc>,
    pub phase: Phase,
    /// The label sent to the issuer (TFC description, Pulumi name), so an orphan can be recognised.
    pub label: Option<String>,
    pub minted: Option<JournaledToken>,
    /// Sink targets (`sink:target`) that hold and read back `minted`.
    pub stored: Vec<String>,
    /// The token this rotation replaces, revoked once the new one is stored and verified (coexisting types).
    pub replaces: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRevocation {
    pub token_id: String,
    /// Not before this time (`grace` after the successor was stored and verified).
    pub not_before: DateTime<Utc>,
    /// Revoke as soon as this successor shows a `last-used-at` (agent tokens with `revoke_after_use`).
    pub after_use_of: Option<String>,
    #[serde(default)]
    pub attempts: u32,
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
        }
    }

    /// Nothing in progress: the file can go (compaction).
    pub fn is_idle(&self) -> bool {
        self.rotation.is_none() && self.revocations.is_empty() && !self.sweep
    }
}

#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    /// `None` for a read-only view (`plan`), which neither locks nor writes.
    _lock: Option<File>,
    /// With `[daemon] state_key`, entries are sealed with XChaCha20-Poly1305 (the token name as associated data).
    key: Option<JournalKey>,
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

/// An encrypted journal file.
#[derive(Serialize, Deserialize)]
struct Sealed {
    format: u32,
    cipher: String,
    nonce: String,
    data: String,
}

const CIPHER: &str = "xchacha20poly1305";

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Token names become file names: everything but `[A-Za-z0-9_-]` is %-escaped (so no `.`/`..`/`/` tricks).
fn file_name(token: &str) -> String {
    let mut out = String::new();
    for b in token.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out + ".json"
}

fn fsync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

impl Journal {
    /// Creates (0700) or checks `state_dir`, takes its lock, and prepares `journal/`.
    pub fn open(state_dir: &Path) -> Result<Self, JournalError> {
        if !state_dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(state_dir)
                .map_err(io(state_dir))?;
        }
        let mode = fs::metadata(state_dir)
            .map_err(io(state_dir))?
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
            .map_err(io(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(JournalError::Locked(state_dir.display().to_string()))
            }
            Err(fs::TryLockError::Error(e)) => return Err(io(&lock_path)(e)),
        }
        let dir = state_dir.join("journal");
        if !dir.exists() {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .map_err(io(&dir))?;
            fsync_dir(state_dir)?;
        }
        Ok(Journal {
            dir,
            _lock: Some(lock),
            key: None,
        })
    }

    /// Seals entries with `key` from now on (and requires it to read sealed ones).
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
        serde_json::to_vec_pretty(&sealed).expect("sealed entries serialise")
    }

    fn unseal(
        &self,
        token: &str,
        bytes: Vec<u8>,
        corrupt: impl Fn(String) -> JournalError,
    ) -> Result<Vec<u8>, JournalError> {
        use base64::Engine as _;
        use chacha20poly1305::aead::{Aead, KeyInit, Payload};
        let Ok(sealed) = serde_json::from_slice::<Sealed>(&bytes) else {
            // A plain entry (written before `state_key` was set) is read as is and sealed at the next write.
            return Ok(bytes);
        };
        let Some(key) = &self.key else {
            return Err(corrupt(
                "the entry is encrypted; set `[daemon] state_key` to the key it was written with"
                    .into(),
            ));
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

    /// A read-only view for `plan`: no lock, nothing created; a missing `state_dir` reads as an empty journal.
    pub fn open_read_only(state_dir: &Path) -> Journal {
        Journal {
            dir: state_dir.join("journal"),
            _lock: None,
            key: None,
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
        self.dir.join(file_name(token))
    }

    pub fn load(&self, token: &str) -> Result<Option<Entry>, JournalError> {
        let path = self.path(token);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&path)(e)),
        };
        let corrupt = |why: String| JournalError::Corrupt {
            path: path.display().to_string(),
            why,
        };
        let bytes = self.unseal(token, bytes, corrupt)?;
        let corrupt = |why: String| JournalError::Corrupt {
            path: path.display().to_string(),
            why,
        };
        let entry: Entry = serde_json::from_slice(&bytes)
            // serde_json's message names a line and column, never the content.
            .map_err(|e| {
                corrupt(format!(
                    "invalid JSON at line {} column {}",
                    e.line(),
                    e.column()
                ))
            })?;
        if entry.format != FORMAT {
            return Err(corrupt(format!("format {} is not {FORMAT}", entry.format)));
        }
        Ok(Some(entry))
    }

    /// Atomically replaces the token's entry: temp file (0600) → fdatasync → rename → fsync the directory. An idle
    /// entry removes the file, so finished work leaves nothing behind.
    pub fn save(&self, entry: &Entry) -> Result<(), JournalError> {
        if self._lock.is_none() {
            return Err(JournalError::Io {
                path: self.dir.display().to_string(),
                source: std::io::Error::other("the journal was opened read-only"),
            });
        }
        if entry.is_idle() {
            return self.remove(&entry.token);
        }
        let path = self.path(&entry.token);
        let tmp = path.with_extension("json.tmp");
        let bytes = self.seal(
            &entry.token,
            serde_json::to_vec_pretty(entry).expect("journal entries serialise"),
        );
        {
            let mut f = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io(&tmp))?;
            f.write_all(&bytes).map_err(io(&tmp))?;
            // fdatasync: the data and the metadata needed to read it back (size, blocks), not the timestamps.
            f.sync_data().map_err(io(&tmp))?;
        }
        fs::rename(&tmp, &path).map_err(io(&path))?;
        fsync_dir(&self.dir)
    }

    /// [`Journal::save`] on tokio's blocking pool. Its `fdatasync` and directory `fsync` take milliseconds on a
    /// real disk; on a runtime worker they would hold up every other task there — the pacer's timers (requests
    /// released late reach the issuer bunched: 429s), `/metrics`, the watchdog ping. The entry is copied; the
    /// caller still waits for the write to be durable before it goes on (the journal-first invariant).
    pub async fn save_async(self: &Arc<Self>, entry: &Entry) -> Result<(), JournalError> {
        let journal = Arc::clone(self);
        let entry = entry.clone();
        match tokio::task::spawn_blocking(move || journal.save(&entry)).await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Only when the runtime shuts down under the write; the write itself is atomic either way.
            Err(_) => Err(JournalError::Io {
                path: self.dir.display().to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::Interrupted,
                    "journal write cancelled: the runtime is shutting down",
                ),
            }),
        }
    }

    /// The rotation finished: its entry goes.
    pub fn remove(&self, token: &str) -> Result<(), JournalError> {
        if self._lock.is_none() {
            return Err(JournalError::Io {
                path: self.dir.display().to_string(),
                source: std::io::Error::other("the journal was opened read-only"),
            });
        }
        let path = self.path(token);
        match fs::remove_file(&path) {
            Ok(()) => fsync_dir(&self.dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&path)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_remove_with_private_modes() {
        let root = tempfile::tempdir().unwrap();
        let state = root.path().join("state");
        let j = Journal::open(&state).unwrap();
        assert_eq!(
            fs::metadata(&state).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let mut e = Entry::new("ci/org.x", "tfc", "organization");
        e.rotation = Some(Rotation {
            started_at: crate::clock::now(),
            phase: Phase::Minted,
            label: None,
            minted: Some(JournaledToken {
                value: SecretString::from("VALUE-xyz".to_string()),
                token_id: "at-1".into(),
                created_at: crate::clock::now(),
                expires_at: None,
            }),
            stored: vec![],
            replaces: None,
        });
        j.save(&e).unwrap();
        let file = state.join("journal").join("ci%2Forg%2Ex.json");
        assert_eq!(
            fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let back = j.load("ci/org.x").unwrap().unwrap();
        assert_eq!(
            back.rotation.unwrap().minted.unwrap().value.expose_secret(),
            "VALUE-xyz"
        );
        assert!(!format!("{e:?}").contains("VALUE-xyz"));
        e.rotation = None;
        j.save(&e).unwrap();
        assert!(
            j.load("ci/org.x").unwrap().is_none(),
            "an idle entry is compacted away"
        );
        assert!(!file.exists());
    }

    #[test]
    fn state_key_seals_entries_and_a_wrong_key_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let state = root.path().join("state");
        let key = JournalKey::parse(&SecretString::from("11".repeat(32))).unwrap();
        let j = Journal::open(&state).unwrap().with_key(Some(key));
        let mut e = Entry::new("tok", "tfc", "team");
        e.sweep = true;
        e.revocations.push(PendingRevocation {
            token_id: "at-secretive".into(),
            not_before: crate::clock::now(),
            after_use_of: None,
            attempts: 0,
        });
        j.save(&e).unwrap();
        let raw = fs::read_to_string(state.join("journal").join("tok.json")).unwrap();
        assert!(
            raw.contains("xchacha20poly1305") && !raw.contains("at-secretive"),
            "sealed on disk"
        );
        assert_eq!(
            j.load("tok").unwrap().unwrap().revocations[0].token_id,
            "at-secretive"
        );
        drop(j);
        let wrong = JournalKey::parse(&SecretString::from("22".repeat(32))).unwrap();
        let j = Journal::open(&state).unwrap().with_key(Some(wrong));
        assert!(matches!(j.load("tok"), Err(JournalError::Corrupt { .. })));
        drop(j);
        let j = Journal::open(&state).unwrap();
        let err = j.load("tok").unwrap_err().to_string();
        assert!(err.contains("state_key"), "{err}");
        assert!(JournalKey::parse(&SecretString::from("short".to_string())).is_err());
    }

    #[test]
    fn second_daemon_is_refused_and_open_dirs_rejected() {
        let root = tempfile::tempdir().unwrap();
        let state = root.path().join("state");
        let _first = Journal::open(&state).unwrap();
        assert!(matches!(
            Journal::open(&state),
            Err(JournalError::Locked(_))
        ));
        let open = root.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o755)).unwrap();
        assert!(matches!(
            Journal::open(&open),
            Err(JournalError::Permissions { .. })
        ));
    }
}
