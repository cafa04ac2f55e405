//! The sink seam: where new token values are written and read back (SPEC §4). Only `sink/*` talks to secret stores.

pub mod aws;
pub mod file;
pub mod github;
mod rest;
pub mod tfe_variable;
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
    /// A delivery target (SPEC §11) holds a bare value, never the record: what it says of that value.
    Delivered(Holds),
}

/// How far behind the token's `created_at` a delivery target's own write time may read and still count as a write
/// of that token: the service's clock and the issuer's are not ours (a write always follows the mint).
pub const WRITTEN_AT_SKEW: chrono::TimeDelta = chrono::TimeDelta::minutes(10);

/// What a delivery target says of the value it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Holds {
    /// The token id it was last written for (a TFC variable's description).
    TokenId(String),
    /// When it was last written, by the service's clock (a GitHub secret's `updated_at`).
    WrittenAt(chrono::DateTime<chrono::Utc>),
    /// A digest of the value ([`digest`]; a token file).
    Digest([u8; 16]),
}

impl Holds {
    /// For `check --online` and messages.
    pub fn describe(&self) -> String {
        match self {
            Holds::TokenId(id) => format!("holds token {id}"),
            Holds::WrittenAt(at) => format!("last written {}", crate::record::rfc3339(*at)),
            Holds::Digest(_) => "holds a token".into(),
        }
    }
}

/// The first 16 bytes of the SHA-256 of `bytes`: a file's version, a token file's content.
pub fn digest(bytes: &[u8]) -> [u8; 16] {
    use sha2::{Digest, Sha256};
    let full = Sha256::digest(bytes);
    let mut out = [0u8; 16];
    out.copy_from_slice(&full[..16]);
    out
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

    /// Whether the target holds `record`'s token: the same record, or a delivery target that shows this value.
    pub fn holds(&self, record: &SinkRecord) -> bool {
        use crate::secret::ExposeSecret;
        match &self.content {
            Content::Record(r) => r.same_as(record),
            Content::Delivered(Holds::TokenId(id)) => *id == record.token_id,
            Content::Delivered(Holds::WrittenAt(at)) => *at >= record.created_at - WRITTEN_AT_SKEW,
            Content::Delivered(Holds::Digest(d)) => {
                *d == digest(record.token.expose_secret().as_bytes())
            }
            Content::Absent | Content::Garbage(_) => false,
        }
    }

    /// [`Self::holds`], where the target can tell: a write time (GitHub) only says that *something* was written
    /// after the token was minted — enough for a visit's view, not enough to skip a write that may not have
    /// happened (a write a crash or a failure interrupted, seconds after the previous token's).
    pub fn surely_holds(&self, record: &SinkRecord) -> bool {
        !matches!(self.content, Content::Delivered(Holds::WrittenAt(_))) && self.holds(record)
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
    /// `check --online`: what `read` does, and whatever else proves a later write can work, changing nothing
    /// (GitHub: the scope's public key is readable).
    async fn probe(&self, target: &Target) -> Result<Observed, SinkError> {
        self.read(target).await
    }
    /// A sink that borrows an issuer's connection (`issuer = "…"`, [`SinkSpec::borrowed_issuer`]) is handed that
    /// issuer's live credential (it follows a self-rotation) and pacers once the issuer is built.
    fn link(&self, _link: IssuerLink) {}
}

/// What a sink borrows from an issuer: the credential it calls with (replaced in place when the daemon rotates it)
/// and the pacers every call with that credential shares.
#[derive(Clone)]
pub struct IssuerLink {
    /// The issuer's `address` and `ca_file`.
    pub address: String,
    pub ca_file: Option<std::path::PathBuf>,
    pub credential: crate::secret::LiveSecret,
    pub pacers: std::sync::Arc<crate::retry::IssuerPacers>,
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
pub static KINDS: &[&dyn SinkKind] = &[
    &vault::VaultSpec,
    &aws::AwsSpec,
    &file::FileSpec,
    &tfe_variable::TfeVariableSpec,
    &github::GithubSpec,
];

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
