//! Where journal entries are kept: the seam between the journal's logic (entries, sealing, held writes) and the
//! medium. [`super::DiskStore`] is `state_dir` (one append-only log with group commit, `disk.rs`);
//! [`MemoryStore`] keeps entries in memory with injectable write failures, for the deterministic simulation;
//! `cluster::VaultCoord` keeps them in Vault/OpenBao KV v2 for several instances (SPEC §8).

use std::collections::BTreeMap;
use std::io;
use std::sync::Mutex;

use async_trait::async_trait;
use sha2::{Digest, Sha256};

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

/// The longest file name most file systems take (`NAME_MAX`).
const NAME_MAX: usize = 255;
/// Room kept for the suffixes (`.json.tmp`).
const SUFFIX_ROOM: usize = 16;

/// Token names become file and key names: everything but `[A-Za-z0-9_-]` is %-escaped (so no `.`/`..`/`/` tricks). A name
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
        let store = super::super::DiskStore::open(&root.path().join("state")).unwrap();
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
