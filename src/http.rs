//! The one HTTP client builder for issuers: rustls, optional extra CA, timeouts, no redirects.

use std::path::Path;
use std::time::Duration;

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Responses larger than this are cut off: a token API never needs more, and a hostile peer gets no memory.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientBuildError {
    #[error("cannot read CA file {path}: {source}")]
    CaRead {
        path: String,
        source: std::io::Error,
    },
    #[error("CA file {path} holds no usable PEM certificate: {source}")]
    CaParse {
        path: String,
        source: reqwest::Error,
    },
    /// With reqwest's causes: its own text is only "builder error" (the cause says, e.g., that the platform has
    /// no CA certificates).
    #[error("cannot build HTTP client: {0}")]
    Build(String),
}

/// The client for issuers without `ca_file` (platform roots only), shared by all of them: loading the platform
/// trust store costs milliseconds per client, and one connection pool serves every issuer.
static PLATFORM: std::sync::OnceLock<Result<reqwest::Client, String>> = std::sync::OnceLock::new();

/// Builds the shared client on a background thread, so that `run` loads the trust store while it parses the
/// policy (a large policy takes ~100 ms; start-up to READY is a benchmark figure).
pub fn warm_up() {
    std::thread::spawn(|| {
        let _ = platform();
    });
}

fn platform() -> Result<reqwest::Client, ClientBuildError> {
    // A caller arriving while the warm-up thread builds it waits for that build instead of starting another.
    PLATFORM
        .get_or_init(|| {
            builder()
                .build()
                .map_err(|e| crate::redact::error_chain(&e))
        })
        .clone()
        .map_err(ClientBuildError::Build)
}

fn builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .user_agent(concat!("token-rotator/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
}

/// Builds a client that verifies TLS (adding `ca_file` to the platform roots, never replacing verification),
/// times out, and does not follow redirects (a redirect would carry our credential to another place).
pub fn client(ca_file: Option<&Path>) -> Result<reqwest::Client, ClientBuildError> {
    let Some(path) = ca_file else {
        return platform();
    };
    let display = path.display().to_string();
    let pem = std::fs::read(path).map_err(|source| ClientBuildError::CaRead {
        path: display.clone(),
        source,
    })?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|source| {
        ClientBuildError::CaParse {
            path: display,
            source,
        }
    })?;
    builder()
        .tls_certs_merge(certs)
        .build()
        .map_err(|e| ClientBuildError::Build(crate::redact::error_chain(&e)))
}

/// Reads at most `MAX_BODY_BYTES` of a response body.
pub async fn read_capped(mut resp: reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        let room = MAX_BODY_BYTES.saturating_sub(out.len());
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if out.len() >= MAX_BODY_BYTES {
            break;
        }
    }
    Ok(out)
}

/// The error chain of a transport error, for messages (reqwest errors never contain header values).
/// Why TLS refused the server's certificate, when retrying cannot help until someone changes something.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertificateRefusal {
    /// Not signed by a CA we trust (no `ca_file`, or the wrong one).
    UnknownIssuer,
    /// Not valid for the host name of `address`.
    WrongName,
    /// Revoked, badly signed, unusable.
    Other,
}

/// The refusal in reqwest's error chain (rustls `InvalidCertificate`), if any. An expired or not-yet-valid
/// certificate is left out: a local clock stepped wrong or a server renewing late heals by itself, so it stays a
/// transient failure. The rustls error sits inside nested `io::Error`s, whose `source()` skips their payload, so
/// each `io::Error` is opened with `get_ref` as well as followed by `source`.
pub fn certificate_refusal(e: &reqwest::Error) -> Option<CertificateRefusal> {
    use rustls::CertificateError as C;
    let mut todo: Vec<&(dyn std::error::Error + 'static)> = vec![e];
    // A bound, not an expected depth.
    for _ in 0..32 {
        let s = todo.pop()?;
        if let Some(rustls::Error::InvalidCertificate(c)) = s.downcast_ref::<rustls::Error>() {
            return match c {
                C::Expired
                | C::ExpiredContext { .. }
                | C::NotValidYet
                | C::NotValidYetContext { .. }
                | C::ExpiredRevocationList
                | C::ExpiredRevocationListContext { .. } => None,
                C::UnknownIssuer => Some(CertificateRefusal::UnknownIssuer),
                C::NotValidForName | C::NotValidForNameContext { .. } => {
                    Some(CertificateRefusal::WrongName)
                }
                _ => Some(CertificateRefusal::Other),
            };
        }
        if let Some(inner) = s
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            todo.push(inner);
        }
        if let Some(next) = s.source() {
            todo.push(next);
        }
    }
    None
}

/// A transport error as one line: what failed, then each cause.
pub fn reason(e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    format!("{what}{}", crate::redact::causes(e))
}
