//! The fence in front of every issuer call and every shared-sink write of an instance in cluster mode: a standby,
//! or a holder whose lease may have lapsed, is refused before anything goes out (SPEC §8.1). A refused create never
//! left the process, so it is not an ambiguous one: nothing is minted, nothing needs sweeping.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::Fence;
use crate::issuer::{IssuedToken, Issuer, IssuerError, IssuerErrorKind, MintedToken};
use crate::policy::TokenPolicy;
use crate::record::SinkRecord;
use crate::secret::SecretString;
use crate::sink::{Observed, Sink, SinkError, SinkErrorKind, Target, Version};

pub struct FencedIssuer {
    pub inner: Arc<dyn Issuer>,
    pub fence: Arc<Fence>,
}

impl FencedIssuer {
    fn check(&self) -> Result<(), IssuerError> {
        self.fence.check().map(|_| ()).map_err(|why| {
            IssuerError::new(self.inner.name(), IssuerErrorKind::Unavailable, None, why)
        })
    }
}

#[async_trait]
impl Issuer for FencedIssuer {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn label(&self, token: &TokenPolicy, at: DateTime<Utc>) -> String {
        self.inner.label(token, at)
    }

    fn is_own_label(&self, token: &TokenPolicy, label: &str) -> bool {
        self.inner.is_own_label(token, label)
    }

    async fn mint(
        &self,
        token: &TokenPolicy,
        label: &str,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<MintedToken, IssuerError> {
        self.check()?;
        self.inner.mint(token, label, expires_at).await
    }

    async fn read_back(
        &self,
        token: &TokenPolicy,
        token_id: &str,
    ) -> Result<Option<IssuedToken>, IssuerError> {
        self.check()?;
        self.inner.read_back(token, token_id).await
    }

    async fn verify(&self, token: &TokenPolicy, value: &SecretString) -> Result<(), IssuerError> {
        self.check()?;
        self.inner.verify(token, value).await
    }

    async fn revoke(&self, token: &TokenPolicy, token_id: &str) -> Result<(), IssuerError> {
        self.check()?;
        self.inner.revoke(token, token_id).await
    }

    async fn list_own(&self, token: &TokenPolicy) -> Result<Vec<IssuedToken>, IssuerError> {
        self.check()?;
        self.inner.list_own(token).await
    }

    async fn probe(&self) -> Result<(), IssuerError> {
        self.check()?;
        self.inner.probe().await
    }

    fn credential_is(&self, value: &SecretString) -> bool {
        self.inner.credential_is(value)
    }

    fn set_credential(&self, value: SecretString) {
        self.inner.set_credential(value)
    }
}

/// A shared sink (Vault, AWS): reads pass, writes need the lease. Local sinks (files) are not wrapped: every
/// instance keeps its own copy.
pub struct FencedSink {
    pub inner: Arc<dyn Sink>,
    pub fence: Arc<Fence>,
}

#[async_trait]
impl Sink for FencedSink {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn read(&self, target: &Target) -> Result<Observed, SinkError> {
        self.inner.read(target).await
    }

    async fn write(
        &self,
        target: &Target,
        record: &SinkRecord,
        expected: Version,
    ) -> Result<(), SinkError> {
        self.fence
            .check()
            .map_err(|why| SinkError::new(self.inner.name(), SinkErrorKind::Unavailable, why))?;
        self.inner.write(target, record, expected).await
    }
}
