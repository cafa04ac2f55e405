//! The coordination store in Vault/OpenBao KV v2 (`[cluster] store`): the lease at `<path>/lease` and one
//! journal entry per token at `<path>/journal/<token>`, every write a check-and-set.

use std::collections::HashMap;
use std::io;
use std::sync::Mutex;

use async_trait::async_trait;
use serde_json::{json, Value};

use super::{LeaseRecord, LeaseStore, LeaseView};
use crate::journal::store::file_stem;
use crate::journal::{DiskStore, EntryConflict, EntryStore};
use crate::policy::{ClusterSettings, Policy};
use crate::sink::vault::{VaultSink, VaultSinkConfig};
use crate::sink::{SinkError, SinkErrorKind};

/// The lease and the shared journal in one KV v2 mount.
pub struct VaultCoord {
    sink: VaultSink,
    mount: String,
    path: String,
    /// The version of each journal entry as last read or written here: the next write's check-and-set.
    versions: Mutex<HashMap<String, u64>>,
    /// `false`: a read-only view (`plan`). Journal writes are not fenced: check-and-set on each entry keeps an
    /// instance that lost the lease from rolling back the new holder's entries, and lets it journal a value an
    /// issuer answered just after its fence closed when nobody else touched the entry.
    writable: bool,
    /// `state_dir`'s lock, held for the process's lifetime (one daemon per `state_dir`).
    _local: Option<DiskStore>,
}

impl std::fmt::Debug for VaultCoord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultCoord")
            .field("sink", &self.sink)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// A journal entry that was removed (KV v2 keeps versions: a tombstone keeps the check-and-set chain going,
/// where deleting the metadata would let a stale writer start it again at version 0).
const TOMBSTONE: &str = "";

fn io_err(e: SinkError) -> io::Error {
    let kind = match e.kind {
        SinkErrorKind::Unavailable => io::ErrorKind::TimedOut,
        SinkErrorKind::Forbidden => io::ErrorKind::PermissionDenied,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, e.message)
}

impl VaultCoord {
    /// The store `[cluster]` names; read-only unless `writable`.
    pub fn new(policy: &Policy, writable: bool) -> Result<Self, String> {
        let settings: &ClusterSettings = policy
            .cluster
            .as_ref()
            .ok_or("the policy has no [cluster] table")?;
        let cfg = policy
            .sinks
            .get(&settings.store)
            .and_then(|c| c.settings::<VaultSinkConfig>())
            .ok_or_else(|| format!("[cluster] store \"{}\" is not a vault sink", settings.store))?;
        let sink = VaultSink::new(&settings.store, cfg).map_err(|e| e.to_string())?;
        Ok(VaultCoord {
            sink,
            mount: cfg.mount.clone(),
            path: settings.path.clone(),
            versions: Mutex::new(HashMap::new()),
            writable,
            _local: None,
        })
    }

    /// Keeps `state_dir`'s lock for as long as this store lives.
    pub fn with_local_lock(mut self, local: DiskStore) -> Self {
        self._local = Some(local);
        self
    }

    fn lease_path(&self) -> String {
        format!("{}/lease", self.path)
    }

    fn entry_path(&self, token: &str) -> String {
        format!("{}/journal/{}", self.path, file_stem(token))
    }

    fn version_of(&self, token: &str) -> Option<u64> {
        self.versions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
            .copied()
    }

    fn remember(&self, token: &str, version: Option<u64>) {
        let mut v = self.versions.lock().unwrap_or_else(|p| p.into_inner());
        match version {
            Some(version) => v.insert(token.to_string(), version),
            None => v.remove(token),
        };
    }

    /// Writes `text` as the entry of `token`, checked and set against the version this process last read or wrote:
    /// an entry another instance wrote since is never overwritten. No version known (never read here) is refused
    /// the same way: the caller reads the entry first.
    async fn put(&self, token: &str, text: &str) -> io::Result<()> {
        if !self.writable {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the journal was opened read-only",
            ));
        }
        let path = self.entry_path(token);
        let Some(cas) = self.version_of(token) else {
            return Err(EntryConflict::io(
                "the shared journal entry was not read by this instance before this write",
            ));
        };
        let data = json!({ "token": token, "entry": text });
        match self.sink.kv2_write(&path, &data, cas).await {
            Ok(v) => {
                self.remember(token, Some(v));
                Ok(())
            }
            Err(e) if e.kind == SinkErrorKind::Conflict => {
                self.remember(token, None);
                Err(EntryConflict::io(e.message))
            }
            // Unknown whether it landed: the next write finds out (a conflict if it did, and this process's
            // state is then re-read).
            Err(e) => Err(io_err(e)),
        }
    }
}

impl VaultCoord {
    /// The entry of `token` (`None`: a tombstone or no entry) and the version it was read at.
    async fn fetch(&self, token: &str) -> io::Result<(Option<Vec<u8>>, u64)> {
        let (data, version) = self
            .sink
            .kv2_read(&self.entry_path(token))
            .await
            .map_err(io_err)?;
        Ok((
            entry_text(data.as_ref()).map(|t| t.as_bytes().to_vec()),
            version,
        ))
    }
}

/// The entry text in a journal secret (`None`: a tombstone or no entry).
fn entry_text(data: Option<&Value>) -> Option<&str> {
    data?
        .get("entry")
        .and_then(Value::as_str)
        .filter(|t| *t != TOMBSTONE)
}

#[async_trait]
impl EntryStore for VaultCoord {
    async fn read(&self, token: &str) -> io::Result<Option<Vec<u8>>> {
        let (entry, version) = self.fetch(token).await?;
        // The version and the content come from one read: the next write is checked against exactly what this
        // process saw (a replica that lags makes that write conflict, never overwrite).
        self.remember(token, Some(version));
        Ok(entry)
    }

    async fn peek(&self, token: &str) -> io::Result<Option<Vec<u8>>> {
        Ok(self.fetch(token).await?.0)
    }

    async fn write(&self, token: &str, bytes: Vec<u8>) -> io::Result<()> {
        let text = String::from_utf8(bytes)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "entry is not UTF-8"))?;
        self.put(token, &text).await
    }

    async fn remove(&self, token: &str) -> io::Result<()> {
        self.put(token, TOMBSTONE).await
    }

    fn location(&self, token: &str) -> String {
        format!("{}/{}", self.mount, self.entry_path(token))
    }

    fn read_only(&self) -> bool {
        !self.writable
    }
}

#[async_trait]
impl LeaseStore for VaultCoord {
    async fn read_lease(&self) -> Result<LeaseView, SinkError> {
        let (data, version) = self.sink.kv2_read(&self.lease_path()).await?;
        let record = match data {
            None => None,
            Some(v) => Some(serde_json::from_value::<LeaseRecord>(v).map_err(|_| {
                SinkError::new(
                    self.sink_name(),
                    SinkErrorKind::Permanent,
                    format!(
                        "{}/{} is not a token-rotator lease record; it is not overwritten",
                        self.mount,
                        self.lease_path()
                    ),
                )
            })?),
        };
        Ok(LeaseView { record, version })
    }

    async fn write_lease(&self, record: &LeaseRecord, cas: u64) -> Result<u64, SinkError> {
        let data = serde_json::to_value(record).expect("lease records serialise");
        self.sink.kv2_write(&self.lease_path(), &data, cas).await
    }
}

impl VaultCoord {
    fn sink_name(&self) -> &str {
        use crate::sink::Sink as _;
        self.sink.name()
    }
}
