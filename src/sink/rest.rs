//! The HTTP side shared by the delivery sinks that talk to a REST API (`tfe-variable`, `github-actions`): one
//! request through the one client builder (`http.rs`: rustls, timeouts, no redirects, capped bodies), paced, with
//! every word the server says redacted before it becomes part of a message. Each sink maps statuses itself.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Method, Url};

use super::{SinkError, SinkErrorKind};
use crate::retry::Pacer;
use crate::secret::{ExposeSecret, SecretString};

/// The longest wait a sink sits out itself before a request when the service asked it to slow down; a longer one
/// fails the write as unavailable (retried by the rotation's backoff, the token not ready meanwhile).
pub const MAX_INLINE_WAIT: Duration = Duration::from_secs(60);

/// An answer: status, headers, body (capped).
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// One request of a delivery sink.
pub struct Request<'a> {
    pub method: Method,
    pub url: Url,
    /// `Authorization: <scheme> <credential>`.
    pub scheme: &'static str,
    pub credential: &'a SecretString,
    pub content_type: Option<&'static str>,
    pub accept: &'static str,
    pub extra: &'a [(&'static str, &'static str)],
    pub body: Option<Vec<u8>>,
}

/// Sends `req` once, after `pacer` gives it a slot. A transport failure is `Unavailable` (the rotation retries; every
/// request of these sinks is idempotent: a `PUT`/`PATCH` of the same value, or a read).
pub async fn send(
    sink: &str,
    client: &reqwest::Client,
    pacer: &Pacer,
    req: Request<'_>,
) -> Result<Answer, SinkError> {
    // A long block (a rate limit's reset far ahead) fails the write now rather than holding the visit: the
    // rotation's backoff tries again, the token not ready meanwhile.
    let blocked = pacer.blocked_for().await;
    if blocked > MAX_INLINE_WAIT {
        return Err(SinkError::new(
            sink,
            SinkErrorKind::Unavailable,
            format!(
                "rate-limited for another {} s; retried later",
                blocked.as_secs()
            ),
        ));
    }
    pacer.acquire().await;
    let mut headers = HeaderMap::new();
    let mut auth = HeaderValue::from_str(&format!(
        "{} {}",
        req.scheme,
        req.credential.expose_secret()
    ))
    .map_err(|_| {
        SinkError::new(
            sink,
            SinkErrorKind::Permanent,
            "the credential contains characters an HTTP header cannot carry",
        )
    })?;
    auth.set_sensitive(true);
    headers.insert(AUTHORIZATION, auth);
    headers.insert(
        reqwest::header::ACCEPT,
        HeaderValue::from_static(req.accept),
    );
    if let Some(ct) = req.content_type {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(ct));
    }
    for (k, v) in req.extra {
        headers.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    let mut r = client.request(req.method, req.url).headers(headers);
    if let Some(body) = req.body {
        r = r.body(body);
    }
    let resp = r.send().await.map_err(|e| {
        let refused = crate::http::certificate_refusal(&e).is_some();
        SinkError::new(
            sink,
            if refused {
                SinkErrorKind::Permanent
            } else {
                SinkErrorKind::Unavailable
            },
            crate::http::reason(&e),
        )
    })?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = crate::http::read_capped(resp)
        .await
        .map_err(|e| SinkError::new(sink, SinkErrorKind::Unavailable, crate::http::reason(&e)))?;
    Ok(Answer {
        status,
        headers,
        body,
    })
}

/// [`send`], waiting out short rate limits: `limit` says how long an answer asks to wait (`None`: it is not a rate
/// limit); every pacer in `block` then holds its requests that long. A wait longer than [`MAX_INLINE_WAIT`], or a
/// third limit in a row, fails the request as unavailable (the rotation's backoff tries again).
pub async fn send_waiting<'a>(
    sink: &str,
    client: &reqwest::Client,
    pacer: &Pacer,
    block: &[&Pacer],
    request: impl Fn() -> Request<'a>,
    limit: impl Fn(&Answer) -> Option<Duration>,
) -> Result<Answer, SinkError> {
    for _ in 0..3 {
        let req = request();
        let what = format!("{} {}", req.method, req.url.path());
        let answer = send(sink, client, pacer, req).await?;
        let Some(wait) = limit(&answer) else {
            return Ok(answer);
        };
        for p in block {
            p.block_for(wait).await;
        }
        if wait > MAX_INLINE_WAIT {
            return Err(SinkError::new(
                sink,
                SinkErrorKind::Unavailable,
                format!(
                    "{what}: rate-limited for {} s; retried later",
                    wait.as_secs()
                ),
            ));
        }
        tracing::warn!(sink = %sink, wait_s = wait.as_secs(), "the service asked to slow down; waiting");
    }
    Err(SinkError::new(
        sink,
        SinkErrorKind::Unavailable,
        "still rate-limited after waiting twice; retried later",
    ))
}

/// The kind of error a status that is not a success means, for statuses every REST API shares.
pub fn kind_of(status: u16) -> SinkErrorKind {
    match status {
        401 | 403 => SinkErrorKind::Forbidden,
        408 | 429 | 500..=599 => SinkErrorKind::Unavailable,
        _ => SinkErrorKind::Permanent,
    }
}

/// What the server said, safe to show: `known` secrets and credential shapes masked, bounded.
pub fn said(text: &str, known: &[&SecretString]) -> String {
    let t = crate::redact::outside_text(text, known);
    if t.is_empty() {
        "no detail".into()
    } else {
        t
    }
}

/// Base URL with a trailing slash, so that joined paths stay under it (`https://HOST/api/v3/` for GitHub
/// Enterprise Server).
pub fn base_url(sink: &str, address: &str) -> Result<Url, SinkError> {
    Url::parse(&format!("{}/", address.trim_end_matches('/'))).map_err(|e| {
        SinkError::new(
            sink,
            SinkErrorKind::Permanent,
            format!("invalid address: {e}"),
        )
    })
}

/// `base` + percent-encoded `segments`.
pub fn url(base: &Url, segments: &[&str]) -> Url {
    let mut url = base.clone();
    {
        let mut path = url
            .path_segments_mut()
            .expect("http(s) URLs have path segments");
        path.pop_if_empty().extend(segments);
    }
    url
}
