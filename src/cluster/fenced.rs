//! The fence in front of every issuer request and every shared-sink write of an instance in cluster mode: a standby,
//! or a holder whose lease may have lapsed, is refused before anything goes out (SPEC §8.1). A refused create never
//! left the process, so it is not an ambiguous one: nothing is minted, nothing needs sweeping.

use std::sync::Arc;

use async_trait::async_trait;

use super::Fence;
use crate::issuer::api::{Exchange, WireError, WireRequest, WireResponse};
use crate::record::SinkRecord;
use crate::sink::{Observed, Sink, SinkError, SinkErrorKind, Target, Version};

/// Every request to an issuer (creates, probes, lists, revocations, and every retry of one) asks the fence first,
/// after the quiet period of a new holder (`Fence::quiet_until`): a refused request never left the process
/// (`sent: false`), so a refused create is not an ambiguous one.
pub struct FencedExchange {
    pub inner: Arc<dyn Exchange>,
    pub fence: Arc<Fence>,
}

#[async_trait]
impl Exchange for FencedExchange {
    async fn exchange(&self, req: WireRequest) -> Result<WireResponse, WireError> {
        if let Some(until) = self.fence.quiet_until() {
            tokio::time::sleep_until(until).await;
        }
        if let Err(why) = self.fence.check() {
            return Err(WireError {
                sent: false,
                refused_certificate: None,
                message: why.to_string(),
            });
        }
        self.inner.exchange(req).await
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

    async fn probe(&self, target: &Target) -> Result<Observed, SinkError> {
        self.inner.probe(target).await
    }

    fn link(&self, link: crate::sink::IssuerLink) {
        self.inner.link(link)
    }
}
