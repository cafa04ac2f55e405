//! The one issuer transport, shared by every HTTP issuer (HCP Terraform / TFE, Pulumi Cloud): the wire seam
//! ([`Exchange`]), pacing, metrics, the mapping of statuses to error kinds, redaction of what the server says, and
//! **the one retry rule**:
//!
//! - A read (`GET`) or a delete is retried on 429, 5xx, timeouts and cut-off answers: repeating it changes
//!   nothing (a second delete of a gone token is a 404, which counts as revoked).
//! - A create (`POST`) is retried only when it cannot have reached the server: the connection never opened, or the
//!   server refused it with 429 before acting. Anything else — a timeout, a reset, a 5xx, a 2xx whose body was cut
//!   off — may have created a token, so the create is **never resent blindly** (SPEC §5.10): the error carries
//!   `outcome_unknown`, and the rotation decides (a singleton may already be replaced: the token turns not ready and
//!   the next attempt mints once, after backoff; a coexisting token is looked for by its label and swept).
//! - Every other status (401, 403, 404, 409, 415, 422, …) is an answer, not a fault: never retried here.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use backon::Retryable;
use chrono::{DateTime, Utc};
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Method, Url};
use serde_json::Value;

use super::{IssuerError, IssuerErrorKind};
use crate::metrics::Metrics;
use crate::policy::IssuerConfig;
use crate::retry::{IssuerPacers, Pacer};
use crate::secret::{ExposeSecret, SecretString};

/// A request as it goes on the wire.
#[derive(Debug)]
pub struct WireRequest {
    pub method: Method,
    pub url: Url,
    /// Holds the `Authorization` header, marked sensitive (its `Debug` shows no value).
    pub headers: HeaderMap,
    pub body: Option<Vec<u8>>,
}

/// What came back: status, headers, and the body — or why it could not be read to its end (the server answered,
/// so it acted on the request). `Debug` leaves the body out (a create's answer holds the new token).
pub struct WireResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Result<Vec<u8>, String>,
}

/// No answer. `sent` is false only when the request certainly never reached the server (the connection did not
/// open); a timeout or a reset after that may hide a request the server acted on.
#[derive(Debug)]
pub struct WireError {
    pub sent: bool,
    /// The server's certificate was refused for a reason retrying cannot fix (unknown CA, wrong name): the
    /// operator must set `ca_file`, fix `address` or the server.
    pub refused_certificate: Option<crate::http::CertificateRefusal>,
    pub message: String,
}

/// The wire seam: HTTPS through reqwest in the daemon, an in-memory model of the service in the simulation.
#[async_trait]
pub trait Exchange: Send + Sync {
    async fn exchange(&self, req: WireRequest) -> Result<WireResponse, WireError>;
}

/// The daemon's exchange: one reqwest client (rustls, timeouts, no redirects, capped bodies; see `http.rs`).
pub struct HttpExchange {
    client: reqwest::Client,
}

impl HttpExchange {
    pub fn new(client: reqwest::Client) -> Self {
        HttpExchange { client }
    }
}

#[async_trait]
impl Exchange for HttpExchange {
    async fn exchange(&self, req: WireRequest) -> Result<WireResponse, WireError> {
        let mut r = self
            .client
            .request(req.method, req.url)
            .headers(req.headers);
        if let Some(body) = req.body {
            r = r.body(body);
        }
        let resp = r.send().await.map_err(|e| WireError {
            // A connection that never opened carried nothing; anything later may have reached the server.
            sent: !e.is_connect(),
            refused_certificate: crate::http::certificate_refusal(&e),
            message: crate::http::reason(&e),
        })?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = crate::http::read_capped(resp)
            .await
            .map_err(|e| crate::http::reason(&e));
        Ok(WireResponse {
            status,
            headers,
            body,
        })
    }
}

/// How one API spells the common things.
pub struct Dialect {
    /// Names the API in messages ("the HCP Terraform API").
    pub product: &'static str,
    /// `Authorization: <scheme> <token>`.
    pub auth_scheme: &'static str,
    pub accept: &'static str,
    pub content_type: &'static str,
    /// Whether a request of this method carries `Content-Type` even without a body (TFC: every mutation).
    pub content_type_on: fn(&Method) -> bool,
    /// The server's own words in an error body, before redaction.
    pub error_text: fn(&[u8]) -> String,
    /// How long a 429 asks the client to wait.
    pub rate_limit_wait: fn(&HeaderMap, DateTime<Utc>) -> Option<Duration>,
}

/// What a request does at the issuer; decides whether a failed one may be sent again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// `GET`: changes nothing.
    Read,
    /// `DELETE`: repeating it is harmless.
    Delete,
    /// `POST` that creates a token: repeating it could create a second one or replace the one just created.
    Create,
}

impl Effect {
    fn method(self) -> Method {
        match self {
            Effect::Read => Method::GET,
            Effect::Delete => Method::DELETE,
            Effect::Create => Method::POST,
        }
    }
}

/// One API call.
pub struct Call<'a> {
    pub effect: Effect,
    pub url: Url,
    /// The token the call is made with: the issuer's credential, or a new token being proven.
    pub bearer: &'a SecretString,
    pub body: Option<&'a Value>,
    /// What the call does, for messages ("creating the organization token of \"acme\"").
    pub what: &'a str,
}

/// A 2xx answer. `Debug` leaves the body out (a create's answer holds the new token).
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reply")
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for WireResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WireResponse")
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// A failed exchange, and whether the request may have reached the server.
struct Failed {
    error: IssuerError,
    sent: bool,
}

/// The retry rule of the module documentation, in one place.
fn may_send_again(effect: Effect, f: &Failed) -> bool {
    match f.error.kind {
        // The server refused before acting; the pacers hold every request to this issuer until the reset.
        IssuerErrorKind::RateLimited => true,
        IssuerErrorKind::Unavailable => effect != Effect::Create || !f.sent,
        _ => false,
    }
}

pub struct ApiBase {
    pub name: String,
    pub base: Url,
    /// Replaced in place when the issuer's own credential is the token being rotated (self-rotation).
    credential: crate::secret::LiveSecret,
    exchange: Arc<dyn Exchange>,
    /// Shared with every earlier and later build of this issuer (a reload must not forget a 429 block).
    pacers: Arc<IssuerPacers>,
    metrics: Arc<Metrics>,
    dialect: &'static Dialect,
    /// Whether `ca_file` is set (for the hint when the server's certificate is refused).
    has_ca_file: bool,
}

impl std::fmt::Debug for ApiBase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiBase")
            .field("name", &self.name)
            .field("base", &self.base.as_str())
            .finish_non_exhaustive()
    }
}

/// What an issuer needs besides its table and credential.
#[derive(Clone)]
pub struct IssuerDeps {
    pub exchange: Arc<dyn Exchange>,
    pub pacers: Arc<IssuerPacers>,
    pub metrics: Arc<Metrics>,
}

impl IssuerDeps {
    /// Dependencies whose exchange never reaches anything: for tests of an issuer's pure parts.
    #[doc(hidden)]
    pub fn unreachable() -> Self {
        struct Nowhere;
        #[async_trait]
        impl Exchange for Nowhere {
            async fn exchange(&self, _req: WireRequest) -> Result<WireResponse, WireError> {
                Err(WireError {
                    sent: false,
                    refused_certificate: None,
                    message: "no network in this test".into(),
                })
            }
        }
        IssuerDeps {
            exchange: Arc::new(Nowhere),
            pacers: Arc::new(IssuerPacers::new(25)),
            metrics: Arc::new(Metrics::new()),
        }
    }
}

impl ApiBase {
    /// What to do about a refused certificate, for the error message.
    fn certificate_hint(&self, refusal: crate::http::CertificateRefusal) -> String {
        use crate::http::CertificateRefusal as R;
        let table = format!("[issuers.{}]", self.name);
        match refusal {
            R::UnknownIssuer if self.has_ca_file => format!(
                " (the server's certificate is not signed by the CA in `ca_file` of {table}: point it at the CA that signed it)"
            ),
            R::UnknownIssuer => format!(
                " (the server's certificate is not signed by a CA we trust: set `ca_file` of {table} to the CA that signed it)"
            ),
            R::WrongName => format!(
                " (the server's certificate is not valid for this host name: check `address` of {table})"
            ),
            R::Other => " (the server's certificate was refused)".to_string(),
        }
    }

    pub fn new(
        cfg: &IssuerConfig,
        credential: SecretString,
        deps: IssuerDeps,
        dialect: &'static Dialect,
    ) -> Result<Self, IssuerError> {
        let base = Url::parse(&format!("{}/", cfg.address.trim_end_matches('/'))).map_err(|e| {
            IssuerError::new(
                &cfg.name,
                IssuerErrorKind::Config,
                None,
                format!("invalid address: {e}"),
            )
        })?;
        Ok(ApiBase {
            name: cfg.name.clone(),
            base,
            credential: crate::secret::LiveSecret::new(credential),
            exchange: deps.exchange,
            pacers: deps.pacers,
            metrics: deps.metrics,
            dialect,
            has_ca_file: cfg.ca_file.is_some(),
        })
    }

    pub fn credential(&self) -> SecretString {
        self.credential.get()
    }

    /// The credential itself, shared: a sink that borrows this issuer calls with its current value.
    pub fn live_credential(&self) -> crate::secret::LiveSecret {
        self.credential.clone()
    }

    pub fn credential_is(&self, value: &SecretString) -> bool {
        self.credential.is(value)
    }

    pub fn set_credential(&self, value: SecretString) {
        self.credential.set(value);
    }

    /// The pacer for requests made with `bearer`: the credential's own (SPEC: `requests_per_second` is "a
    /// client-side limit for calls made with this credential"), or the one for a new token's identity probe, which
    /// the service counts against that token's own user.
    fn pacer_for(&self, bearer: &SecretString) -> &Pacer {
        if self.credential_is(bearer) {
            &self.pacers.credential
        } else {
            &self.pacers.probe
        }
    }

    pub fn error(
        &self,
        kind: IssuerErrorKind,
        status: Option<u16>,
        message: impl Into<String>,
    ) -> IssuerError {
        IssuerError::new(&self.name, kind, status, message)
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
    fn count(&self, status: &str) {
        self.metrics
            .issuer_requests
            .with_label_values(&[self.name.as_str(), status])
            .inc();
    }

    /// Server text made safe to show: the bearer of this call and the issuer's credential are masked by value.
    fn outside(&self, raw: &str, bearer: &SecretString) -> String {
        crate::redact::outside_text(raw, &[bearer, &self.credential()])
    }

    /// One exchange: paced, counted, classified. Never retried here.
    async fn send_once(&self, call: &Call<'_>) -> Result<Reply, Failed> {
        let method = call.effect.method();
        let mut auth = HeaderValue::from_str(&format!(
            "{} {}",
            self.dialect.auth_scheme,
            call.bearer.expose_secret()
        ))
        .map_err(|_| Failed {
            error: self.error(
                IssuerErrorKind::Config,
                None,
                "the token is not a valid HTTP header value",
            ),
            sent: false,
        })?;
        auth.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, auth);
        headers.insert(ACCEPT, HeaderValue::from_static(self.dialect.accept));
        if call.body.is_some() || (self.dialect.content_type_on)(&method) {
            headers.insert(
                CONTENT_TYPE,
                HeaderValue::from_static(self.dialect.content_type),
            );
        }
        let body = call
            .body
            .map(|b| serde_json::to_vec(b).expect("JSON values serialise"));
        self.pacer_for(call.bearer).acquire().await;
        let what = call.what;
        let resp = match self
            .exchange
            .exchange(WireRequest {
                method,
                url: call.url.clone(),
                headers,
                body,
            })
            .await
        {
            Ok(r) => r,
            Err(e) => {
                self.count("error");
                let (kind, hint) = match e.refused_certificate {
                    Some(refusal) => (IssuerErrorKind::Config, self.certificate_hint(refusal)),
                    None => (IssuerErrorKind::Unavailable, String::new()),
                };
                return Err(Failed {
                    error: self.error(
                        kind,
                        None,
                        format!("{what}: {}{hint}", self.outside(&e.message, call.bearer)),
                    ),
                    sent: e.sent,
                });
            }
        };
        let status = resp.status;
        self.count(&status.to_string());
        let bytes = resp.body.map_err(|why| Failed {
            error: self.error(
                IssuerErrorKind::Unavailable,
                Some(status),
                format!(
                    "{what}: the {status} answer was cut off: {}",
                    self.outside(&why, call.bearer)
                ),
            ),
            sent: true,
        })?;
        if (200..300).contains(&status) {
            let body = if bytes.iter().all(u8::is_ascii_whitespace) {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).map_err(|_| Failed {
                    error: self.error(
                        IssuerErrorKind::Unavailable,
                        Some(status),
                        format!(
                            "{what}: the {status} answer is not JSON (cut off, or not {}?)",
                            self.dialect.product
                        ),
                    ),
                    sent: true,
                })?
            };
            return Ok(Reply { status, body });
        }
        let detail = self.outside(&(self.dialect.error_text)(&bytes), call.bearer);
        let detail = if detail.is_empty() {
            String::new()
        } else {
            format!(": {detail}")
        };
        let kind = match status {
            401 => IssuerErrorKind::Unauthorized,
            403 => IssuerErrorKind::Forbidden,
            404 => IssuerErrorKind::NotFound,
            409 => IssuerErrorKind::Conflict,
            429 => IssuerErrorKind::RateLimited,
            s if s >= 500 => IssuerErrorKind::Unavailable,
            _ => IssuerErrorKind::Rejected,
        };
        if kind == IssuerErrorKind::RateLimited {
            // After a 429 nothing goes out with this bearer before the reset has passed (SPEC §5.4).
            let wait = (self.dialect.rate_limit_wait)(&resp.headers, crate::clock::now())
                .unwrap_or(Duration::from_secs(1))
                + crate::clock::random_up_to(Duration::from_millis(250));
            self.pacers.block_for(wait).await;
            let mut error = self.error(
                kind,
                Some(status),
                format!(
                    "{what}: 429 rate limited{detail}; waiting {:.1}s",
                    wait.as_secs_f64()
                ),
            );
            error.retry_after = Some(wait);
            return Err(Failed { error, sent: false });
        }
        let hint = match status {
            406 | 415 => format!(
                " (the server refused the media types; is `address` of [issuers.{}] {}?)",
                self.name, self.dialect.product
            ),
            _ => String::new(),
        };
        Err(Failed {
            error: self.error(
                kind,
                Some(status),
                format!("{what}: {status}{detail}{hint}"),
            ),
            sent: true,
        })
    }

    /// One call under the retry rule of the module documentation.
    pub async fn call(&self, call: Call<'_>) -> Result<Reply, IssuerError> {
        let effect = call.effect;
        let result = (|| self.send_once(&call))
            .retry(crate::retry::transient())
            .when(|f: &Failed| may_send_again(effect, f))
            .notify(|f: &Failed, wait: Duration| {
                tracing::warn!(issuer = %self.name, error = %f.error, retry_in_ms = wait.as_millis() as u64, "issuer request failed; retrying");
            })
            .await;
        result.map_err(|f| {
            let mut error = f.error;
            error.outcome_unknown =
                effect == Effect::Create && f.sent && error.kind == IssuerErrorKind::Unavailable;
            if error.outcome_unknown {
                error.message.push_str(
                    " (the create may have reached the issuer: it is not sent again blindly)",
                );
            }
            error
        })
    }

    /// One call, no retry (`check --online`: an answer now, not after backoff).
    pub async fn call_once(&self, call: Call<'_>) -> Result<Reply, IssuerError> {
        self.send_once(&call).await.map_err(|f| f.error)
    }

    /// A call with the issuer's own credential (everything but a new token's probe).
    pub async fn call_as_issuer(
        &self,
        effect: Effect,
        url: Url,
        body: Option<&Value>,
        what: &str,
    ) -> Result<Reply, IssuerError> {
        let credential = self.credential();
        self.call(Call {
            effect,
            url,
            bearer: &credential,
            body,
            what,
        })
        .await
    }

    /// The identity probe of a new token (`GET url` with the token as bearer).
    pub async fn prove(
        &self,
        url: Url,
        value: &SecretString,
        what: &str,
    ) -> Result<(), IssuerError> {
        self.call(Call {
            effect: Effect::Read,
            url,
            bearer: value,
            body: None,
            what,
        })
        .await
        .map(|_| ())
        .map_err(|mut e| {
            if matches!(
                e.kind,
                IssuerErrorKind::Unauthorized | IssuerErrorKind::Forbidden
            ) {
                e.message.push_str(" (the issuer refused the token itself)");
            }
            e
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(kind: IssuerErrorKind, sent: bool) -> Failed {
        Failed {
            error: IssuerError::new("i", kind, None, "x"),
            sent,
        }
    }

    #[test]
    fn creates_are_sent_again_only_when_they_cannot_have_reached_the_server() {
        use Effect::*;
        use IssuerErrorKind::*;
        // Refused before acting, or never sent: safe for every effect.
        for effect in [Read, Delete, Create] {
            assert!(may_send_again(effect, &failed(RateLimited, false)));
            assert!(may_send_again(effect, &failed(Unavailable, false)));
        }
        // Sent, then a timeout/reset/5xx/cut-off answer: a read or delete again, a create never.
        assert!(may_send_again(Read, &failed(Unavailable, true)));
        assert!(may_send_again(Delete, &failed(Unavailable, true)));
        assert!(!may_send_again(Create, &failed(Unavailable, true)));
        // Answers are not faults.
        for kind in [
            Unauthorized,
            Forbidden,
            NotFound,
            Conflict,
            Rejected,
            Protocol,
        ] {
            assert!(!may_send_again(Read, &failed(kind, true)));
        }
    }
}
