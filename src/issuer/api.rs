//! What every HTTP issuer shares: its name, base URL, swappable credential, the one HTTP client, the request pacer,
//! request metrics and error construction.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use reqwest::Url;

use super::{IssuerError, IssuerErrorKind};
use crate::metrics::Metrics;
use crate::policy::IssuerConfig;
use crate::retry::Pacer;
use crate::secret::{ExposeSecret, SecretString};

pub struct ApiBase {
    pub name: String,
    pub base: Url,
    /// Replaced in place when the issuer's own credential is the token being rotated (self-rotation).
    credential: RwLock<SecretString>,
    pub http: reqwest::Client,
    /// Paces the requests made with the issuer credential (SPEC: `requests_per_second` is "a client-side limit for
    /// calls made with this credential").
    pacer: Pacer,
    /// Paces requests made with any other bearer — the identity probe of a freshly minted token, which the
    /// service counts against that token's own user, not against the issuer credential's.
    probe_pacer: Pacer,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for ApiBase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiBase")
            .field("name", &self.name)
            .field("base", &self.base.as_str())
            .finish_non_exhaustive()
    }
}

impl ApiBase {
    pub fn new(
        cfg: &IssuerConfig,
        credential: SecretString,
        metrics: Arc<Metrics>,
    ) -> Result<Self, IssuerError> {
        let config_err = |message: String| IssuerError {
            issuer: cfg.name.clone(),
            kind: IssuerErrorKind::Config,
            status: None,
            message,
            retry_after: None,
        };
        let base = Url::parse(&format!("{}/", cfg.address.trim_end_matches('/')))
            .map_err(|e| config_err(format!("invalid address: {e}")))?;
        let http =
            crate::http::client(cfg.ca_file.as_deref()).map_err(|e| config_err(e.to_string()))?;
        Ok(ApiBase {
            name: cfg.name.clone(),
            base,
            credential: RwLock::new(credential),
            http,
            pacer: Pacer::new(cfg.requests_per_second),
            probe_pacer: Pacer::new(cfg.requests_per_second),
            metrics,
        })
    }

    pub fn credential(&self) -> SecretString {
        self.credential
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn credential_is(&self, value: &SecretString) -> bool {
        self.credential().expose_secret() == value.expose_secret()
    }

    /// The pacer for requests made with `bearer`: the credential's own, or the one for other tokens' probes.
    fn pacer_for(&self, bearer: &SecretString) -> &Pacer {
        if self.credential_is(bearer) {
            &self.pacer
        } else {
            &self.probe_pacer
        }
    }

    /// Waits for the slot of a request made with `bearer`.
    pub async fn pace(&self, bearer: &SecretString) {
        self.pacer_for(bearer).acquire().await;
    }

    /// After a 429 to a request made with `bearer`: nothing more is sent with it before `wait` has passed.
    pub async fn rate_limited(&self, bearer: &SecretString, wait: Duration) {
        self.pacer_for(bearer).block_for(wait).await;
    }

    pub fn set_credential(&self, value: SecretString) {
        *self.credential.write().unwrap_or_else(|p| p.into_inner()) = value;
    }

    pub fn error(
        &self,
        kind: IssuerErrorKind,
        status: Option<u16>,
        message: impl Into<String>,
    ) -> IssuerError {
        IssuerError {
            issuer: self.name.clone(),
            kind,
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    /// `{address}/<prefix…>/<segments…>`, each segment percent-encoded.
    pub fn url(&self, prefix: &[&str], segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        {
            let mut path = url.path_segments_mut().expect("http(s) URLs have paths");
            path.pop_if_empty().extend(prefix).extend(segments);
        }
        url
    }

    /// Counts one request in `token_rotator_issuer_requests_total` (HTTP status, or `error`).
    pub fn count(&self, status: &str) {
        self.metrics
            .issuer_requests
            .with_label_values(&[self.name.as_str(), status])
            .inc();
    }
}

/// A random delay in `[0, max]`, added to rate-limit waits so that clients do not retry in lockstep.
pub fn jitter(max: Duration) -> Duration {
    max.mul_f64(rand::random::<f64>())
}
