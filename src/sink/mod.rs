//! The sink seam: where new token values are written and read back (SPEC §4). Only `sink/*` talks to secret stores.

pub mod aws;
pub mod file;
pub mod vault;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

pub use crate::policy::Target;
use crate::policy::{SinkConfig, SinkSettings, SinkSpec};
use crate::record::SinkRecord;

/// The version a write must find in place (check-and-set), as observed by the last read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// Nothing was there.
    Absent,
    /// KV v2 `current_version`.
    Kv2(u64),
    /// The store has no versions to compare (KV v1): the write cannot detect a concurrent writer.
    Unversioned,
    /// AWS Secrets Manager: the `VersionId` that holds `AWSCURRENT`.
    Aws(AwsVersionId),
    /// A file's content digest (first 16 bytes of its SHA-256): a write fails if the file changed since it was read.
    Digest([u8; 16]),
}

/// An AWS Secrets Manager `VersionId` (32–64 characters), kept inline so that `Version` stays `Copy`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct AwsVersionId {
    len: u8,
    bytes: [u8; AwsVersionId::MAX],
}

impl AwsVersionId {
    pub const MAX: usize = 64;

    /// `None` when `id` is longer than AWS allows (64) or not ASCII.
    pub fn new(id: &str) -> Option<Self> {
        if id.len() > Self::MAX || !id.is_ascii() {
            return None;
        }
        let mut bytes = [0u8; Self::MAX];
        bytes[..id.len()].copy_from_slice(id.as_bytes());
        Some(AwsVersionId {
            len: id.len() as u8,
            bytes,
        })
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII is ever stored.
        std::str::from_utf8(&self.bytes[..self.len as usize]).unwrap_or_default()
    }
}

impl fmt::Debug for AwsVersionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for AwsVersionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a read found at a target.
#[derive(Debug)]
pub enum Content {
    Absent,
    Record(SinkRecord),
    /// Something that is not our record; the reason never quotes the content.
    Garbage(String),
}

#[derive(Debug)]
pub struct Observed {
    pub version: Version,
    pub content: Content,
}

impl Observed {
    pub fn record(&self) -> Option<&SinkRecord> {
        match &self.content {
            Content::Record(r) => Some(r),
            _ => None,
        }
    }
}

/// Classifies a stored value: our record, or garbage (the reason never quotes the content).
pub fn content_of_value(v: &serde_json::Value) -> Content {
    match v.as_object() {
        Some(map) => match SinkRecord::from_json(map) {
            Ok(r) => Content::Record(r),
            Err(why) => Content::Garbage(format!("not a token-rotator record: {why}")),
        },
        None => Content::Garbage("not a JSON object".into()),
    }
}

/// `content_of_value` for raw bytes (a file, an AWS `SecretString`).
pub fn content_of_bytes(bytes: &[u8]) -> Content {
    match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(v) => content_of_value(&v),
        Err(_) => Content::Garbage("not valid JSON".into()),
    }
}

/// Bounded set of error kinds, usable as metric labels and to decide on retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SinkErrorKind {
    /// Check-and-set found another version: someone else wrote. Never overwritten in this attempt.
    Conflict,
    /// Credential or policy does not allow the operation.
    Forbidden,
    /// Store unreachable, sealed, rate-limited or 5xx: retry later.
    Unavailable,
    /// The read-back did not return what was written.
    Mismatch,
    /// Anything else that retrying will not fix (bad mount, bad request).
    Permanent,
}

#[derive(Debug, thiserror::Error)]
#[error("sink {sink}: {message}")]
pub struct SinkError {
    pub sink: String,
    pub kind: SinkErrorKind,
    pub message: String,
}

impl SinkError {
    /// The one constructor every sink uses; `message` must already be free of secrets (`redact`).
    pub fn new(sink: &str, kind: SinkErrorKind, message: impl Into<String>) -> Self {
        SinkError {
            sink: sink.to_string(),
            kind,
            message: message.into(),
        }
    }

    pub fn retryable(&self) -> bool {
        matches!(
            self.kind,
            SinkErrorKind::Unavailable | SinkErrorKind::Mismatch
        )
    }
}

#[async_trait]
pub trait Sink: Send + Sync {
    fn name(&self) -> &str;
    /// Reads what is stored at `target`, with the version a following write must expect.
    async fn read(&self, target: &Target) -> Result<Observed, SinkError>;
    /// Writes `record` if the target is still at `expected` (check-and-set where the store supports it).
    async fn write(
        &self,
        target: &Target,
        record: &SinkRecord,
        expected: Version,
    ) -> Result<(), SinkError>;
}

/// A sink kind: its policy table ([`SinkSpec`], next to the sink's code) and how it is built from it.
#[async_trait]
pub trait SinkKind: SinkSpec {
    /// Builds the sink `name` from the settings this kind read from its table.
    async fn build(
        &self,
        name: &str,
        settings: &dyn SinkSettings,
    ) -> Result<Arc<dyn Sink>, SinkError>;
}

/// Every sink kind of this build. A new kind is a new module and one line here.
pub static KINDS: &[&dyn SinkKind] = &[&vault::VaultSpec, &aws::AwsSpec, &file::FileSpec];

/// The policy side of [`KINDS`].
pub fn specs() -> Vec<&'static dyn SinkSpec> {
    KINDS.iter().map(|k| *k as &'static dyn SinkSpec).collect()
}

/// The settings of a sink of kind `T`'s table: a table of another kind here is a bug of the caller.
pub fn settings_of<'a, T: SinkSettings>(
    name: &str,
    settings: &'a dyn SinkSettings,
) -> Result<&'a T, SinkError> {
    settings.as_any().downcast_ref().ok_or_else(|| {
        SinkError::new(
            name,
            SinkErrorKind::Permanent,
            "its settings are of another sink kind",
        )
    })
}

/// Builds the sink for one `[sinks.NAME]` table.
pub async fn build(cfg: &SinkConfig) -> Result<Arc<dyn Sink>, SinkError> {
    let kind = KINDS
        .iter()
        .find(|k| k.name() == cfg.kind())
        .ok_or_else(|| {
            SinkError::new(
                &cfg.name,
                SinkErrorKind::Permanent,
                format!("kind \"{}\" is not built into this binary", cfg.kind()),
            )
        })?;
    kind.build(&cfg.name, cfg.settings.as_ref()).await
}
