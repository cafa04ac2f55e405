//! The issuer seam: whoever mints, proves and revokes tokens (HCP Terraform / TFE today).

pub mod tfe;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::metrics::Metrics;
use crate::policy::{IssuerConfig, IssuerKind, TokenPolicy};
use crate::secret::SecretString;

/// A token the issuer just created. `Debug` never shows the value.
#[derive(Clone)]
pub struct MintedToken {
    pub value: SecretString,
    pub token_id: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for MintedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MintedToken")
            .field("value", &"[REDACTED]")
            .field("token_id", &self.token_id)
            .field("created_at", &self.created_at)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Bounded error kinds: decide retries and explain failures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IssuerErrorKind {
    /// 401: the credential is wrong, expired or revoked.
    Unauthorized,
    /// 404: missing, or not allowed (TFC answers 404 for both).
    NotFound,
    /// 429.
    RateLimited,
    /// 5xx, timeouts, connection errors, truncated bodies.
    Unavailable,
    /// Any other 4xx (409, 415, 422, …): the request itself is refused.
    Rejected,
    /// A 2xx whose body is not what the API documents.
    Protocol,
    /// The issuer cannot be used at all (bad credential reference, bad CA file).
    Config,
}

#[derive(Debug, thiserror::Error)]
#[error("issuer {issuer}: {message}")]
pub struct IssuerError {
    pub issuer: String,
    pub kind: IssuerErrorKind,
    pub status: Option<u16>,
    pub message: String,
    pub retry_after: Option<Duration>,
}

impl IssuerError {
    pub fn retryable(&self) -> bool {
        matches!(
            self.kind,
            IssuerErrorKind::RateLimited | IssuerErrorKind::Unavailable
        )
    }
}

#[async_trait]
pub trait Issuer: Send + Sync {
    fn name(&self) -> &str;
    /// Creates a new token for `token`, valid until `expires_at` where the type expires.
    async fn mint(
        &self,
        token: &TokenPolicy,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<MintedToken, IssuerError>;
    /// Proves that `value` works (the identity probe).
    async fn verify(&self, token: &TokenPolicy, value: &SecretString) -> Result<(), IssuerError>;
    /// Proves the issuer's own credential works, changing nothing (`check --online`).
    async fn probe(&self) -> Result<(), IssuerError>;
}

/// Builds the issuer for one `[issuers.NAME]` table with its already-resolved credential.
pub fn build(
    cfg: &IssuerConfig,
    credential: SecretString,
    metrics: Arc<Metrics>,
) -> Result<Arc<dyn Issuer>, IssuerError> {
    match cfg.kind {
        IssuerKind::Tfe => Ok(Arc::new(tfe::TfeIssuer::new(cfg, credential, metrics)?)),
    }
}
