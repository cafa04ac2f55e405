//! Faults from outside (SPEC §5.4–5.5): issuers answering 429/5xx/HTML/garbage, resetting connections, cutting
//! bodies short, streaming endless bodies or never answering; sinks that are slow, down, failing or forbidding.
//! Transient faults are retried with bounded, jittered backoff and leave no orphan; persistent ones mark the token
//! failed (metrics, `/readyz`, logs say why) until its next attempt or a `rotate`; a broken issuer or sink never
//! delays the healthy tokens.
//!
//! Faults the emulator cannot produce come from [`FaultProxy`], a tiny HTTP/1.1 proxy in front of the emulator or
//! OpenBao that answers matching requests with a fault and forwards the rest.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use token_rotator_emulators::tfc::{Config, TokenKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::harness::{
    free_port, metric, run_cli_async, wait_for, DaemonProc, Output, Stack, ROOT_TOKEN,
};

// ---------------------------------------------------------------------------------------------------------------
// The fault-injecting proxy
// ---------------------------------------------------------------------------------------------------------------

/// What the proxy does with a request that matches a rule.
#[derive(Clone, Debug)]
pub(crate) enum Fault {
    /// Answer with this status, content type, extra headers and body; nothing reaches the upstream.
    Respond {
        status: u16,
        content_type: &'static str,
        headers: Vec<(&'static str, String)>,
        body: String,
    },
    /// Read the request and never answer (the client's timeout decides).
    Hang,
    /// Reset the connection (RST) without answering; nothing reaches the upstream.
    Reset,
    /// Forward to the upstream (which acts on it), then reset instead of relaying the answer.
    ForwardThenReset,
    /// Forward, then relay the status, headers and a correct `Content-Length` with only half the body, and close.
    ForwardTruncated,
    /// Answer `status` with a body that never ends (until the client stops reading).
    Endless { status: u16 },
    /// Forward after this delay.
    Delay(Duration),
    /// Forward, and relay the answer with every `from` in its body replaced by `to`.
    ForwardRewritten {
        from: &'static str,
        to: &'static str,
    },
    /// Answer `status` with a JSON:API error whose detail quotes the request's `Authorization` header, as a
    /// careless server or proxy does; nothing reaches the upstream.
    EchoAuthorization { status: u16 },
}

impl Fault {
    pub(crate) fn status(status: u16, content_type: &'static str, body: &str) -> Fault {
        Fault::Respond {
            status,
            content_type,
            headers: Vec::new(),
            body: body.to_string(),
        }
    }

    fn name(&self) -> String {
        match self {
            Fault::Respond { status, .. } => format!("respond {status}"),
            Fault::Hang => "hang".into(),
            Fault::Reset => "reset".into(),
            Fault::ForwardThenReset => "forward-then-reset".into(),
            Fault::ForwardTruncated => "forward-truncated".into(),
            Fault::Endless { status } => format!("endless {status}"),
            Fault::Delay(d) => format!("delay {d:?}"),
            Fault::ForwardRewritten { .. } => "forward-rewritten".into(),
            Fault::EchoAuthorization { status } => format!("echo-authorization {status}"),
        }
    }
}

/// Requests with this method (any when `None`) whose path contains `path` get `fault`, `times` times.
#[derive(Clone, Debug)]
pub(crate) struct Rule {
    pub method: Option<&'static str>,
    pub path: String,
    pub times: usize,
    pub fault: Fault,
}

impl Rule {
    pub(crate) fn new(
        method: Option<&'static str>,
        path: &str,
        times: usize,
        fault: Fault,
    ) -> Rule {
        Rule {
            method,
            path: path.to_string(),
            times,
            fault,
        }
    }
}

/// One request as the proxy saw it.
#[derive(Clone, Debug)]
pub(crate) struct Hit {
    pub at: Instant,
    pub method: String,
    pub path: String,
    /// The fault applied, or `None` when forwarded untouched.
    pub fault: Option<String>,
}

#[derive(Default)]
struct ProxyState {
    rules: Mutex<Vec<Rule>>,
    hits: Mutex<Vec<Hit>>,
    /// Body bytes the proxy managed to write for `Endless` answers.
    endless_bytes: AtomicU64,
}

pub(crate) struct FaultProxy {
    pub addr: SocketAddr,
    state: Arc<ProxyState>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

struct ParsedRequest {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl FaultProxy {
    /// Listens on 127.0.0.1 and forwards to `upstream` (`http://host:port`, no trailing slash).
    pub(crate) async fn start(upstream: &str) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(ProxyState::default());
        let upstream = upstream.trim_end_matches('/').to_string();
        let http = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let st = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let st = st.clone();
                let http = http.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move { serve(stream, st, http, upstream).await });
            }
        });
        FaultProxy {
            addr,
            state,
            accept,
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub(crate) fn add(&self, rule: Rule) {
        self.state.rules.lock().unwrap().push(rule);
    }

    /// Removes every rule: from now on everything is forwarded.
    pub(crate) fn clear(&self) {
        self.state.rules.lock().unwrap().clear();
    }

    pub(crate) fn hits(&self) -> Vec<Hit> {
        self.state.hits.lock().unwrap().clone()
    }

    pub(crate) fn hits_for(&self, method: &str, path: &str) -> Vec<Hit> {
        self.hits()
            .into_iter()
            .filter(|h| h.method == method && h.path.contains(path))
            .collect()
    }

    pub(crate) fn endless_bytes(&self) -> u64 {
        self.state.endless_bytes.load(Ordering::Relaxed)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

async fn read_request(s: &mut TcpStream) -> Option<ParsedRequest> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        if buf.len() > 64 * 1024 {
            return None;
        }
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let target = first.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let mut body = buf[head_end + 4..].to_vec();
    if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        // Decode chunks until the terminating zero-size chunk.
        let mut out = Vec::new();
        loop {
            while find(&body, b"\r\n").is_none() {
                let n = s.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                body.extend_from_slice(&chunk[..n]);
            }
            let eol = find(&body, b"\r\n").unwrap();
            let size_text = String::from_utf8_lossy(&body[..eol]).to_string();
            let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
            while body.len() < eol + 2 + size + 2 {
                let n = s.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                body.extend_from_slice(&chunk[..n]);
            }
            if size == 0 {
                break;
            }
            out.extend_from_slice(&body[eol + 2..eol + 2 + size]);
            body.drain(..eol + 2 + size + 2);
        }
        body = out;
    } else {
        let len: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while body.len() < len {
            let n = s.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            body.extend_from_slice(&chunk[..n]);
        }
        body.truncate(len);
    }
    Some(ParsedRequest {
        method,
        target,
        headers,
        body,
    })
}

struct Upstream {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

async fn forward(http: &reqwest::Client, upstream: &str, req: &ParsedRequest) -> Upstream {
    let method = reqwest::Method::from_bytes(req.method.as_bytes()).unwrap();
    let mut rb = http.request(method, format!("{upstream}{}", req.target));
    for (k, v) in &req.headers {
        if !matches!(
            k.as_str(),
            "host" | "content-length" | "connection" | "transfer-encoding" | "keep-alive"
        ) {
            rb = rb.header(k.as_str(), v.as_str());
        }
    }
    match rb.body(req.body.clone()).send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let headers = resp
                .headers()
                .iter()
                .filter(|(k, _)| {
                    !matches!(
                        k.as_str(),
                        "content-length" | "connection" | "transfer-encoding" | "keep-alive"
                    )
                })
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                .collect();
            let body = resp.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
            Upstream {
                status,
                headers,
                body,
            }
        }
        Err(_) => Upstream {
            status: 502,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: b"fault proxy: upstream unreachable".to_vec(),
        },
    }
}

fn head(status: u16, headers: &[(String, String)], content_length: Option<usize>) -> Vec<u8> {
    let reason = reqwest::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Unknown");
    let mut out = format!("HTTP/1.1 {status} {reason}\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(n) = content_length {
        out.push_str(&format!("content-length: {n}\r\n"));
    }
    out.push_str("connection: close\r\n\r\n");
    out.into_bytes()
}

async fn serve(mut s: TcpStream, st: Arc<ProxyState>, http: reqwest::Client, upstream: String) {
    let Some(req) = read_request(&mut s).await else {
        return;
    };
    let path = req.target.split('?').next().unwrap_or("").to_string();
    let fault = {
        let mut rules = st.rules.lock().unwrap();
        rules
            .iter_mut()
            .find(|r| {
                r.times > 0 && r.method.is_none_or(|m| m == req.method) && path.contains(&r.path)
            })
            .map(|r| {
                r.times -= 1;
                r.fault.clone()
            })
    };
    st.hits.lock().unwrap().push(Hit {
        at: Instant::now(),
        method: req.method.clone(),
        path,
        fault: fault.as_ref().map(Fault::name),
    });
    let relay = |u: Upstream| {
        let mut out = head(u.status, &u.headers, Some(u.body.len()));
        out.extend_from_slice(&u.body);
        out
    };
    match fault {
        None => {
            let u = forward(&http, &upstream, &req).await;
            let _ = s.write_all(&relay(u)).await;
        }
        Some(Fault::Delay(d)) => {
            tokio::time::sleep(d).await;
            let u = forward(&http, &upstream, &req).await;
            let _ = s.write_all(&relay(u)).await;
        }
        Some(Fault::Respond {
            status,
            content_type,
            headers,
            body,
        }) => {
            let mut hs: Vec<(String, String)> = vec![("content-type".into(), content_type.into())];
            hs.extend(headers.into_iter().map(|(k, v)| (k.to_string(), v)));
            let mut out = head(status, &hs, Some(body.len()));
            out.extend_from_slice(body.as_bytes());
            let _ = s.write_all(&out).await;
        }
        Some(Fault::ForwardRewritten { from, to }) => {
            let mut u = forward(&http, &upstream, &req).await;
            u.body = String::from_utf8_lossy(&u.body)
                .replace(from, to)
                .into_bytes();
            let _ = s.write_all(&relay(u)).await;
        }
        Some(Fault::EchoAuthorization { status }) => {
            let auth = req
                .headers
                .iter()
                .find(|(k, _)| k == "authorization")
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            let body = json!({"errors": [{"status": status.to_string(), "title": "refused", "detail": format!("credential {auth} refused")}]}).to_string();
            let hs = vec![("content-type".to_string(), JSON_API.to_string())];
            let mut out = head(status, &hs, Some(body.len()));
            out.extend_from_slice(body.as_bytes());
            let _ = s.write_all(&out).await;
        }
        Some(Fault::Hang) => {
            // Keep the connection open until the client gives up (bounded, so no task outlives a test for long).
            let mut b = [0u8; 1];
            let _ = tokio::time::timeout(Duration::from_secs(300), s.read(&mut b)).await;
            return;
        }
        Some(Fault::Reset) => {
            let _ = s.set_zero_linger();
            return;
        }
        Some(Fault::ForwardThenReset) => {
            let _ = forward(&http, &upstream, &req).await;
            let _ = s.set_zero_linger();
            return;
        }
        Some(Fault::ForwardTruncated) => {
            let u = forward(&http, &upstream, &req).await;
            let mut out = head(u.status, &u.headers, Some(u.body.len()));
            out.extend_from_slice(&u.body[..u.body.len() / 2]);
            let _ = s.write_all(&out).await;
        }
        Some(Fault::Endless { status }) => {
            let hs = vec![(
                "content-type".to_string(),
                "application/vnd.api+json".to_string(),
            )];
            if s.write_all(&head(status, &hs, None)).await.is_err() {
                return;
            }
            let chunk = format!(
                "{{\"data\":[{}",
                "{\"id\":\"ENDLESS-BODY-MARKER\"},".repeat(4096)
            );
            let cap: u64 = 256 * 1024 * 1024;
            while st.endless_bytes.load(Ordering::Relaxed) < cap {
                match s.write_all(chunk.as_bytes()).await {
                    Ok(()) => {
                        st.endless_bytes
                            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    }
                    Err(_) => return,
                }
            }
            return;
        }
    }
    let _ = s.shutdown().await;
}

// ---------------------------------------------------------------------------------------------------------------
// Helpers shared by the tests below
// ---------------------------------------------------------------------------------------------------------------

pub(crate) const JSON_API: &str = "application/vnd.api+json";

fn tfc_error(status: u16, title: &str) -> String {
    json!({"errors": [{"status": status.to_string(), "title": title}]}).to_string()
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Gaps between consecutive hits.
fn gaps(hits: &[Hit]) -> Vec<f64> {
    hits.windows(2)
        .map(|w| secs(w[1].at.duration_since(w[0].at)))
        .collect()
}

/// The shared [`Stack`], with a policy assembled table by table (each faulty issuer or sink behind its own proxy).
pub(crate) struct Env {
    stack: Stack,
    /// Issuer tables, sink tables and token tables, assembled by `policy`.
    issuers: String,
    sinks: String,
    pub(crate) tokens: String,
    pub(crate) envs: Vec<(String, String)>,
}

impl std::ops::Deref for Env {
    type Target = Stack;
    fn deref(&self) -> &Stack {
        &self.stack
    }
}

impl Env {
    pub(crate) async fn new() -> Env {
        let stack = Stack::new(Config::default()).await;
        let sinks = format!(
            "[sinks.vault]\nkind = \"vault\"\naddress = \"{}\"\nauth = {{ method = \"token\", token = {{ env = \"VAULT_TOKEN\" }} }}\n",
            stack.bao.addr
        );
        Env {
            stack,
            issuers: String::new(),
            sinks,
            tokens: String::new(),
            envs: vec![("VAULT_TOKEN".into(), ROOT_TOKEN.into())],
        }
    }

    /// An organization with its own admin and issuer `name` at `address` (the emulator or a proxy before it).
    pub(crate) fn issuer(&mut self, name: &str, org: &str, address: &str) {
        let admin = self.tfc.add_organization(org);
        let var = format!("TFC_{}", name.replace('-', "_").to_uppercase());
        self.issuers.push_str(&format!(
            "\n[issuers.{name}]\nkind = \"tfe\"\naddress = \"{address}\"\ntoken = {{ env = \"{var}\" }}\n"
        ));
        self.envs.push((var, admin));
    }

    pub(crate) fn sink(&mut self, name: &str, address: &str) {
        self.sinks.push_str(&format!(
            "\n[sinks.{name}]\nkind = \"vault\"\naddress = \"{address}\"\nauth = {{ method = \"token\", token = {{ env = \"VAULT_TOKEN\" }} }}\n"
        ));
    }

    /// A team token of a new team in `org`, written to `sink` at `faults/<name>`; returns the team id.
    pub(crate) fn team_token(
        &mut self,
        name: &str,
        issuer: &str,
        org: &str,
        sink: &str,
        extra: &str,
    ) -> String {
        let team = self.tfc.add_team(org, &format!("team-{name}"));
        self.tokens.push_str(&format!(
            "\n[tokens.{name}]\nissuer = \"{issuer}\"\ntype = \"team\"\nteam_id = \"{team}\"\nlifetime = \"1h\"\n{extra}\nsinks = [{{ sink = \"{sink}\", path = \"faults/{name}\" }}]\n"
        ));
        team
    }

    pub(crate) fn org_token(
        &mut self,
        name: &str,
        issuer: &str,
        org: &str,
        sink: &str,
        extra: &str,
    ) {
        self.tokens.push_str(&format!(
            "\n[tokens.{name}]\nissuer = \"{issuer}\"\ntype = \"organization\"\norganization = \"{org}\"\nlifetime = \"1h\"\n{extra}\nsinks = [{{ sink = \"{sink}\", path = \"faults/{name}\" }}]\n"
        ));
    }

    pub(crate) fn policy(&self, listen: Option<u16>) -> PathBuf {
        let listen = listen
            .map(|p| format!("listen = \"127.0.0.1:{p}\"\n"))
            .unwrap_or_default();
        self.work.write_policy(&format!(
            "[daemon]\nstate_dir = \"{}\"\n{listen}\n{}\n{}\n{}",
            self.work.state_dir().display(),
            self.issuers,
            self.sinks,
            self.tokens
        ))
    }

    pub(crate) fn env_refs(&self) -> Vec<(&str, &str)> {
        self.envs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    pub(crate) async fn cli(&self, args: &[&str], timeout: Duration) -> Output {
        run_cli_async(
            args.iter().map(|s| s.to_string()).collect(),
            self.envs.clone(),
            timeout,
        )
        .await
    }

    pub(crate) async fn record(&self, name: &str) -> Option<Value> {
        self.bao.kv2_get("secret", &format!("faults/{name}")).await
    }

    /// Valid described team tokens of `team`.
    pub(crate) fn valid_team_tokens(&self, team: &str) -> Vec<String> {
        self.tfc
            .valid_tokens()
            .into_iter()
            .filter(|t| t.kind == TokenKind::Team && t.team_id.as_deref() == Some(team))
            .map(|t| t.id)
            .collect()
    }

    pub(crate) fn team_creates(&self, team: &str) -> usize {
        self.tfc
            .request_log()
            .iter()
            .filter(|r| {
                r.method == "POST"
                    && r.path == format!("/api/v2/teams/{team}/authentication-tokens")
                    && r.status == 201
            })
            .count()
    }

    pub(crate) fn org_creates(&self, org: &str) -> usize {
        self.tfc
            .request_log()
            .iter()
            .filter(|r| {
                r.method == "POST"
                    && r.path == format!("/api/v2/organizations/{org}/authentication-token")
                    && r.status == 201
            })
            .count()
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------------------------

/// How a transient issuer fault shows at the proxy, and what the retries must look like.
struct IssuerCase {
    name: &'static str,
    /// Requests (method, path substring) that get the fault.
    method: &'static str,
    path: &'static str,
    fault: Fault,
    times: usize,
    /// Expected requests at the proxy on `path` in the first run, and the minimum gap before each retry (seconds).
    /// A create that may have reached the issuer is never resent within the run: one request, no gaps.
    min_gaps: Vec<f64>,
    max_gaps: Vec<f64>,
    /// Whether the faulted request reached the emulator (a token was created) before the answer was lost.
    landed: bool,
}

/// Slack for a loaded 2-core machine on top of the documented backoff bounds.
const SLACK: f64 = 0.75;

fn issuer_cases() -> Vec<IssuerCase> {
    let create = "/authentication-tokens";
    // transient(): 0.5 s, 1 s, 2 s … each plus up to 100 % jitter.
    let backoff2 = (vec![0.5, 1.0], vec![1.0 + SLACK, 2.0 + SLACK]);
    // A create that fails after it was sent is sent once in the run, and minted again (once) by the next run.
    let once = |name, fault, landed| IssuerCase {
        name,
        method: "POST",
        path: create,
        fault,
        times: 1,
        min_gaps: vec![],
        max_gaps: vec![],
        landed,
    };
    let cases = vec![
        // Refused before it was acted on: resent within the run, never before X-RateLimit-Reset (1 s, plus up to
        // 0.25 s of jitter).
        IssuerCase {
            name: "rate-limited",
            method: "POST",
            path: create,
            fault: Fault::Respond {
                status: 429,
                content_type: JSON_API,
                headers: vec![
                    ("x-ratelimit-limit", "30".into()),
                    ("x-ratelimit-reset", "1.0".into()),
                ],
                body: tfc_error(429, "Too many requests"),
            },
            times: 2,
            min_gaps: vec![1.0, 1.0],
            max_gaps: vec![1.25 + SLACK, 2.0 + SLACK],
            landed: false,
        },
        once(
            "internal-error",
            Fault::status(500, JSON_API, &tfc_error(500, "internal server error")),
            false,
        ),
        once(
            "unavailable",
            Fault::status(503, "text/plain", "Service Unavailable"),
            false,
        ),
        once(
            "html-502",
            Fault::status(
                502,
                "text/html",
                "<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body><h1>FAULT-PAGE-MARKER</h1></body></html>",
            ),
            false,
        ),
        once("reset", Fault::Reset, false),
        once(
            "not-json",
            Fault::status(201, "text/plain", "Created, but not JSON"),
            false,
        ),
        once("endless-body", Fault::Endless { status: 201 }, false),
        // The issuer created the token but the answer was lost: the next run mints once more, and the first token
        // must not stay an orphan (found by its label and revoked).
        once("reset-after-create", Fault::ForwardThenReset, true),
        once("truncated-201", Fault::ForwardTruncated, true),
        // Reads are resent within the run, with jittered backoff.
        IssuerCase {
            name: "probe-503",
            method: "GET",
            path: "/api/v2/account/details",
            fault: Fault::status(503, JSON_API, &tfc_error(503, "unavailable")),
            times: 2,
            min_gaps: backoff2.0.clone(),
            max_gaps: backoff2.1.clone(),
            landed: false,
        },
        IssuerCase {
            name: "probe-html-502",
            method: "GET",
            path: "/api/v2/account/details",
            fault: Fault::status(
                502,
                "text/html",
                "<html><body>FAULT-PAGE-MARKER</body></html>",
            ),
            times: 2,
            min_gaps: backoff2.0.clone(),
            max_gaps: backoff2.1.clone(),
            landed: false,
        },
    ];
    cases
}

/// Two `run --once` over tokens whose issuer or sink misbehaves for a while: in the first, reads and refused (429)
/// creates are retried within their bounds while a create that may have reached the issuer is never resent (SPEC
/// §5.10); in the second every token ends up rotated with one more create, nothing is minted twice in one attempt,
/// what a lost answer left behind is swept, and the endless body is cut off after a bounded read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_faults_are_retried_within_bounds_and_leave_no_orphan() {
    let mut env = Env::new().await;
    let cases = issuer_cases();
    let mut proxies = BTreeMap::new();
    let mut teams = BTreeMap::new();
    for c in &cases {
        let proxy = FaultProxy::start(&env.tfc.url()).await;
        proxy.add(Rule::new(Some(c.method), c.path, c.times, c.fault.clone()));
        let issuer = format!("i-{}", c.name);
        let org = format!("org-{}", c.name);
        env.issuer(&issuer, &org, &proxy.url());
        let team = env.team_token(c.name, &issuer, &org, "vault", "");
        proxies.insert(c.name, proxy);
        teams.insert(c.name, team);
    }
    // A singleton whose create answer is cut short: the retried create replaces it; no second live token.
    let org_proxy = FaultProxy::start(&env.tfc.url()).await;
    org_proxy.add(Rule::new(
        Some("POST"),
        "/authentication-token",
        1,
        Fault::ForwardTruncated,
    ));
    env.issuer("i-org-truncated", "org-truncated", &org_proxy.url());
    env.org_token(
        "org-truncated",
        "i-org-truncated",
        "org-truncated",
        "vault",
        "",
    );

    // Sink faults: slow, 503 on writes, and a write whose answer is lost after Vault applied it.
    env.issuer("i-sinks", "org-sinks", &env.tfc.url());
    let slow = FaultProxy::start(&env.bao.addr).await;
    slow.add(Rule::new(
        None,
        "/v1/",
        usize::MAX,
        Fault::Delay(Duration::from_millis(1500)),
    ));
    let failing = FaultProxy::start(&env.bao.addr).await;
    failing.add(Rule::new(
        Some("POST"),
        "/v1/secret/data/",
        2,
        Fault::status(503, "application/json", r#"{"errors":["Vault is sealed"]}"#),
    ));
    let lossy = FaultProxy::start(&env.bao.addr).await;
    lossy.add(Rule::new(
        Some("POST"),
        "/v1/secret/data/",
        1,
        Fault::ForwardThenReset,
    ));
    let mut sink_teams = BTreeMap::new();
    for (name, proxy) in [
        ("vault-slow", &slow),
        ("vault-503", &failing),
        ("vault-lost-answer", &lossy),
    ] {
        env.sink(name, &proxy.url());
        let team = env.team_token(name, "i-sinks", "org-sinks", name, "");
        sink_teams.insert(name, team);
    }

    let policy = env.policy(None);
    let started = Instant::now();
    let out = env
        .cli(
            &["run", "--once", "--config", policy.to_str().unwrap()],
            Duration::from_secs(100),
        )
        .await;
    let took = started.elapsed();
    assert_eq!(
        out.code, 1,
        "the creates whose outcome is unknown fail this run: {}",
        out.stderr
    );
    assert!(took < Duration::from_secs(30), "bounded: {took:?}");
    for c in &cases {
        let hits = proxies[c.name].hits_for(c.method, c.path);
        let g = gaps(&hits);
        assert_eq!(
            (hits.len(), g.len()),
            (c.min_gaps.len() + 1, c.min_gaps.len()),
            "{}: requests at the proxy: {:?}",
            c.name,
            hits.iter().map(|h| h.fault.clone()).collect::<Vec<_>>()
        );
        for (i, gap) in g.iter().enumerate() {
            assert!(
                *gap >= c.min_gaps[i] && *gap <= c.max_gaps[i],
                "{}: retry {} came after {gap:.3}s, expected {}..{}",
                c.name,
                i + 1,
                c.min_gaps[i],
                c.max_gaps[i]
            );
        }
        if c.min_gaps.is_empty() {
            assert!(
                out.stderr
                    .lines()
                    .any(|l| l.contains("rotation attempt failed")
                        && l.contains(&format!("token={}", c.name))
                        && l.contains("not sent again blindly")),
                "{}: the failure says why the create was not resent",
                c.name
            );
        }
    }
    // The singleton whose create answer was cut short: not ready, to be minted again.
    assert!(
        out.stderr.contains("the stored token may be dead"),
        "{}",
        out.stderr
    );

    // The next run (the next attempt) mints once for each of them, and sweeps what a lost answer left behind.
    let again = env
        .cli(
            &["run", "--once", "--config", policy.to_str().unwrap()],
            Duration::from_secs(100),
        )
        .await;
    assert_eq!(
        again.code, 0,
        "every token rotated in the end: {}",
        again.stderr
    );
    for c in &cases {
        let team = &teams[c.name];
        let record = env
            .record(c.name)
            .await
            .unwrap_or_else(|| panic!("{}: no record", c.name));
        assert!(
            env.tfc.is_valid(record["token"].as_str().unwrap()),
            "{}: the stored token is valid",
            c.name
        );
        assert_eq!(
            env.valid_team_tokens(team),
            vec![record["token_id"].as_str().unwrap().to_string()],
            "{}: the stored token is the only valid one (no orphan)",
            c.name
        );
        assert_eq!(
            env.team_creates(team),
            1 + usize::from(c.landed),
            "{}: tokens created",
            c.name
        );
    }
    // That the backoff is jittered is a property of the retry policy, tested there without real time
    // (`retry::tests::transient_backoff_is_jittered_and_bounded`); here each gap is within its bounds.

    // The endless body was cut off: the daemon stopped reading after its cap (1 MiB) plus socket buffers.
    let endless = proxies["endless-body"].endless_bytes();
    assert!(
        endless > 0 && endless < 32 * 1024 * 1024,
        "read {endless} bytes of an endless body"
    );

    // The singleton: two creates (one per run, never two in one), one live token, the stored one.
    let org = env.record("org-truncated").await.unwrap();
    assert!(env.tfc.is_valid(org["token"].as_str().unwrap()));
    assert_eq!(env.org_creates("org-truncated"), 2);

    for name in ["vault-slow", "vault-503", "vault-lost-answer"] {
        let record = env
            .record(name)
            .await
            .unwrap_or_else(|| panic!("{name}: no record"));
        assert!(
            env.tfc.is_valid(record["token"].as_str().unwrap()),
            "{name}"
        );
        assert_eq!(
            env.team_creates(&sink_teams[name]),
            1,
            "{name}: never re-minted for a sink fault"
        );
    }
    let writes = gaps(&failing.hits_for("POST", "/v1/secret/data/"));
    assert_eq!(writes.len(), 2, "two failed writes, then one that landed");
    assert!(
        writes[0] >= 0.5 && writes[1] >= 1.0,
        "sink writes back off: {writes:?}"
    );
    assert!(
        lossy.hits_for("POST", "/v1/secret/data/").len() >= 2,
        "the lost write was retried"
    );
    // Error pages and bodies never leak into the logs.
    for out in [&out, &again] {
        assert!(
            !out.stderr.contains("FAULT-PAGE-MARKER"),
            "an HTML error page reached the log"
        );
        assert!(
            !out.stderr.contains("ENDLESS-BODY-MARKER"),
            "an endless body reached the log"
        );
        assert!(
            !out.stderr.contains(".atlasv1."),
            "a token value reached the log"
        );
    }
}

/// A create that is never answered: the client's 30 s request timeout ends the wait (a real socket, a real
/// process: the one slow test of this module, on its own so that it runs beside the others), and the create is
/// not resent (the issuer may have acted on it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_that_is_never_answered_times_out_once_and_is_not_resent() {
    let mut env = Env::new().await;
    let proxy = FaultProxy::start(&env.tfc.url()).await;
    proxy.add(Rule::new(
        Some("POST"),
        "/authentication-tokens",
        1,
        Fault::Hang,
    ));
    env.issuer("i-hang", "org-hang", &proxy.url());
    env.team_token("hang", "i-hang", "org-hang", "vault", "");
    let policy = env.policy(None);
    let started = Instant::now();
    let out = env
        .cli(
            &["run", "--once", "--config", policy.to_str().unwrap()],
            Duration::from_secs(100),
        )
        .await;
    let took = started.elapsed();
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        (Duration::from_secs(29)..Duration::from_secs(45)).contains(&took),
        "the request timeout (30 s) bounds the wait: {took:?}"
    );
    assert_eq!(proxy.hits_for("POST", "/authentication-tokens").len(), 1);
    assert!(
        out.stderr
            .lines()
            .any(|l| l.contains("token=hang") && l.contains("not sent again blindly")),
        "{}",
        out.stderr
    );
}

/// Persistent faults: a create answered 503 is sent once (it may have happened) and marks the token failed (metrics,
/// `/readyz`, the log say why) with the next attempt backed off; a 404 fails at once without a retry loop; a
/// forbidden or unreachable sink fails before anything is minted; a singleton whose sink refuses writes keeps its
/// journaled token. `rotate` then tries again at once, and the singleton's token is pushed, never re-minted.
/// (How long failing writes are retried is a time rule, tested on the paused clock:
/// `sim::rules::failing_sink_writes_are_retried_within_bounds_and_the_minted_token_is_pushed_not_minted_again`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_faults_mark_the_token_failed_and_rotate_tries_again() {
    let mut env = Env::new().await;
    let down = FaultProxy::start(&env.tfc.url()).await;
    down.add(Rule::new(
        Some("POST"),
        "/authentication-tokens",
        usize::MAX,
        Fault::status(
            503,
            "text/html",
            "<html><body>FAULT-PAGE-MARKER maintenance</body></html>",
        ),
    ));
    env.issuer("i-down", "org-down", &down.url());
    let down_team = env.team_token("issuer-503", "i-down", "org-down", "vault", "");

    let gone = FaultProxy::start(&env.tfc.url()).await;
    gone.add(Rule::new(
        Some("POST"),
        "/authentication-tokens",
        usize::MAX,
        Fault::status(404, JSON_API, &tfc_error(404, "not found")),
    ));
    env.issuer("i-gone", "org-gone", &gone.url());
    let gone_team = env.team_token("issuer-404", "i-gone", "org-gone", "vault", "");

    env.issuer("i-ok", "org-ok", &env.tfc.url());
    let forbidden = FaultProxy::start(&env.bao.addr).await;
    forbidden.add(Rule::new(
        None,
        "/v1/secret/",
        usize::MAX,
        Fault::status(
            403,
            "application/json",
            r#"{"errors":["permission denied"]}"#,
        ),
    ));
    env.sink("forbidden", &forbidden.url());
    let forbidden_team = env.team_token("sink-403", "i-ok", "org-ok", "forbidden", "");
    env.sink("unreachable", &format!("http://127.0.0.1:{}", free_port()));
    let unreachable_team = env.team_token("sink-down", "i-ok", "org-ok", "unreachable", "");
    let healthy_team = env.team_token("healthy", "i-ok", "org-ok", "vault", "");

    env.issuer("i-single", "org-single", &env.tfc.url());
    let refusing = FaultProxy::start(&env.bao.addr).await;
    refusing.add(Rule::new(
        Some("POST"),
        "/v1/secret/data/",
        usize::MAX,
        Fault::status(
            403,
            "application/json",
            r#"{"errors":["permission denied"]}"#,
        ),
    ));
    env.sink("refusing", &refusing.url());
    env.org_token("org-unstored", "i-single", "org-single", "refusing", "");

    let port = free_port();
    let policy = env.policy(Some(port));
    let daemon = DaemonProc::start(&policy, port, &env.env_refs()).await;
    let started = Instant::now();

    // Fast failures first: the 404, the forbidden sink, the unreachable sink.
    let m = wait_for(Duration::from_secs(20), "the fast failures", || async {
        let m = daemon.metrics().await;
        ["issuer-404", "sink-403", "sink-down"]
            .iter()
            .all(|t| {
                metric(
                    &m,
                    "token_rotator_token_consecutive_failures",
                    &[("token", t)],
                ) == Some(1.0)
            })
            .then_some(m)
    })
    .await;
    assert_eq!(
        gone.hits_for("POST", "/authentication-tokens").len(),
        1,
        "a permanent 404 is not retried"
    );
    assert_eq!(
        env.team_creates(&forbidden_team),
        0,
        "nothing minted when a sink cannot be read"
    );
    assert_eq!(
        env.team_creates(&unreachable_team),
        0,
        "nothing minted when a sink is down"
    );
    assert_eq!(
        metric(&m, "token_rotator_token_ready", &[("token", "healthy")]),
        Some(1.0),
        "the healthy token is not held up"
    );
    let healthy = env.record("healthy").await.unwrap();
    assert_eq!(
        env.valid_team_tokens(&healthy_team),
        vec![healthy["token_id"].as_str().unwrap().to_string()],
        "the healthy token rotated normally"
    );

    // Then the refused sink writes (a 403 is not retried) and the create answered 503, which is sent once: it may
    // have reached the issuer (SPEC §5.10).
    let m = wait_for(
        Duration::from_secs(45),
        "the transient retries to run out",
        || async {
            let m = daemon.metrics().await;
            ["issuer-503", "org-unstored"]
                .iter()
                .all(|t| {
                    metric(
                        &m,
                        "token_rotator_token_consecutive_failures",
                        &[("token", t)],
                    ) == Some(1.0)
                })
                .then_some(m)
        },
    )
    .await;
    let waited = started.elapsed();
    let tries = down.hits_for("POST", "/authentication-tokens");
    assert_eq!(
        tries.len(),
        1,
        "a create answered 503 may have happened: it is never resent blindly"
    );
    assert!(waited < Duration::from_secs(40), "{waited:?}");
    assert_eq!(
        metric(
            &m,
            "token_rotator_issuer_requests_total",
            &[("issuer", "i-down"), ("status", "503")]
        ),
        Some(1.0)
    );
    for t in [
        "issuer-503",
        "issuer-404",
        "sink-403",
        "sink-down",
        "org-unstored",
    ] {
        assert_eq!(
            metric(&m, "token_rotator_token_ready", &[("token", t)]),
            Some(0.0),
            "{t}"
        );
        assert_eq!(
            metric(
                &m,
                "token_rotator_rotations_total",
                &[("token", t), ("result", "failure")]
            )
            .unwrap_or(0.0),
            if t.starts_with("sink") { 0.0 } else { 1.0 },
            "{t}: a rotation was attempted only when the sinks could be read"
        );
    }
    let (code, body) = daemon.readyz().await;
    assert_eq!(code, 503);
    let reasons: BTreeMap<String, String> = body["unhealthy"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["token"].as_str().unwrap().to_string(),
                u["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        reasons.keys().cloned().collect::<Vec<_>>(),
        vec![
            "issuer-404",
            "issuer-503",
            "org-unstored",
            "sink-403",
            "sink-down"
        ],
        "{body}"
    );
    for (token, needle) in [
        ("issuer-503", "503"),
        ("issuer-404", "404"),
        ("sink-403", "403"),
        ("sink-down", "cannot reach Vault"),
        ("org-unstored", "403"),
    ] {
        assert!(
            reasons[token].contains(needle),
            "{token}: {}",
            reasons[token]
        );
        assert!(
            !reasons[token].contains("FAULT-PAGE-MARKER"),
            "{token}: the error page is not quoted"
        );
    }
    // The next attempts are backed off (30 s after a transient failure, 1 h after a permanent one).
    let status = env
        .cli(
            &["status", "--json", "--config", policy.to_str().unwrap()],
            Duration::from_secs(20),
        )
        .await;
    let rows: Vec<Value> = serde_json::from_str(&status.stdout).unwrap();
    let next = |t: &str| {
        let row = rows.iter().find(|r| r["name"] == t).unwrap();
        let at = chrono::DateTime::parse_from_rfc3339(row["next_due"].as_str().unwrap()).unwrap();
        at.timestamp()
            - chrono::DateTime::<chrono::Utc>::from(std::time::SystemTime::now()).timestamp()
    };
    // 30 s after the last failed try (attempt_backoff(1)), give or take the rounding to whole seconds.
    let expected = 30.0 - tries[0].at.elapsed().as_secs_f64();
    let remaining = next("issuer-503") as f64;
    assert!(
        (remaining - expected).abs() <= 2.0,
        "transient: next attempt in {remaining}s, expected about {expected:.1}s"
    );
    assert_eq!(
        down.hits_for("POST", "/authentication-tokens").len(),
        1,
        "not tried again before then"
    );
    assert!(
        next("issuer-404") > 50 * 60,
        "permanent: {}",
        next("issuer-404")
    );
    // The singleton was minted once and is kept in the journal while its sink refuses writes.
    assert_eq!(env.org_creates("org-single"), 1);
    assert!(
        env.work.journal_entry("org-unstored").is_some(),
        "the minted singleton is journaled"
    );
    let stderr = daemon.stderr();
    assert!(
        stderr.contains("the new token is minted but not stored in every sink"),
        "the singleton's plight is logged at error level"
    );
    assert!(stderr.lines().any(|l| l.contains("ERROR")
        && l.contains("rotation attempt failed")
        && l.contains("issuer-503")
        && l.contains("503")));
    assert!(
        !stderr.contains("FAULT-PAGE-MARKER"),
        "an HTML error page reached the log"
    );

    // The faults end; `rotate` tries again now instead of at the backed-off time.
    down.clear();
    gone.clear();
    forbidden.clear();
    refusing.clear();
    let out = env
        .cli(
            &[
                "rotate",
                "--config",
                policy.to_str().unwrap(),
                "issuer-503",
                "issuer-404",
                "sink-403",
                "org-unstored",
            ],
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("handed to the running daemon"),
        "{}",
        out.stderr
    );
    let m = daemon.metrics().await;
    for t in ["issuer-503", "issuer-404", "sink-403", "org-unstored"] {
        assert_eq!(
            metric(&m, "token_rotator_token_ready", &[("token", t)]),
            Some(1.0),
            "{t}"
        );
        let record = env.record(t).await.unwrap();
        assert!(env.tfc.is_valid(record["token"].as_str().unwrap()), "{t}");
    }
    assert_eq!(
        env.org_creates("org-single"),
        1,
        "the journaled singleton was pushed, not re-minted"
    );
    assert_eq!(env.valid_team_tokens(&down_team).len(), 1);
    assert_eq!(env.valid_team_tokens(&gone_team).len(), 1);
    let (code, body) = daemon.readyz().await;
    assert_eq!(code, 503);
    assert_eq!(
        body["unhealthy"].as_array().unwrap().len(),
        1,
        "only the unreachable sink is left: {body}"
    );
    assert_eq!(daemon.terminate(), 0);
}

/// One issuer that never answers and one sink that never answers, next to 100 healthy tokens rotating every 6 s:
/// the healthy ones rotate on time, twice, while the broken ones hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_broken_issuer_and_one_broken_sink_never_delay_100_healthy_tokens() {
    let mut env = Env::new().await;
    let issuers = ["h0", "h1", "h2", "h3"];
    for (i, name) in issuers.iter().enumerate() {
        env.issuer(name, &format!("org-h{i}"), &env.tfc.url());
    }
    let mut teams = Vec::new();
    for n in 0..100 {
        let i = n % issuers.len();
        let team = env.team_token(
            &format!("t{n:03}"),
            issuers[i],
            &format!("org-h{i}"),
            "vault",
            "every = \"6s\"",
        );
        teams.push(team);
    }
    let hung_issuer = FaultProxy::start(&env.tfc.url()).await;
    hung_issuer.add(Rule::new(None, "/", usize::MAX, Fault::Hang));
    env.issuer("hung", "org-hung", &hung_issuer.url());
    env.team_token(
        "broken-issuer",
        "hung",
        "org-hung",
        "vault",
        "every = \"6s\"",
    );
    let hung_sink = FaultProxy::start(&env.bao.addr).await;
    hung_sink.add(Rule::new(None, "/", usize::MAX, Fault::Hang));
    env.sink("hung-sink", &hung_sink.url());
    env.team_token("broken-sink", "h0", "org-h0", "hung-sink", "every = \"6s\"");

    let port = free_port();
    let policy = env.policy(Some(port));
    let started = Instant::now();
    let daemon = DaemonProc::start(&policy, port, &env.env_refs()).await;
    let names: Vec<String> = (0..100).map(|n| format!("t{n:03}")).collect();

    // Polls every healthy record until `done` holds for each (bounded).
    async fn poll_records(
        env: &Env,
        names: &[String],
        timeout: Duration,
        what: &str,
        mut keep: impl FnMut(&str, &Value) -> bool,
    ) -> BTreeMap<String, Value> {
        let deadline = Instant::now() + timeout;
        let mut got = BTreeMap::new();
        loop {
            for n in names {
                if !got.contains_key(n) {
                    if let Some(r) = env.record(n).await {
                        if keep(n, &r) {
                            got.insert(n.clone(), r);
                        }
                    }
                }
            }
            if got.len() == names.len() {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {} of {}",
                got.len(),
                names.len()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let first = poll_records(
        &env,
        &names,
        Duration::from_secs(30),
        "the first rotation of 100 healthy tokens",
        |_, _| true,
    )
    .await;
    let first_round = started.elapsed();
    assert!(
        first_round < Duration::from_secs(20),
        "first round took {first_round:?}"
    );
    let second = poll_records(
        &env,
        &names,
        Duration::from_secs(30),
        "the second rotation of 100 healthy tokens",
        |n, r| r["token_id"] != first[n]["token_id"],
    )
    .await;
    let created = |r: &Value| {
        chrono::DateTime::parse_from_rfc3339(r["created_at"].as_str().unwrap()).unwrap()
    };
    let mut late = Vec::new();
    for n in &names {
        let gap = (created(&second[n]) - created(&first[n])).num_milliseconds() as f64 / 1000.0;
        // Due 6 s after the first; one second of slack for the issuer's pacing of 25 tokens per issuer.
        if !(5.0..=6.0 + 4.0).contains(&gap) {
            late.push(format!("{n}: {gap:.1}s"));
        }
    }
    assert!(late.is_empty(), "healthy tokens off schedule: {late:?}");

    let m = daemon.metrics().await;
    for n in &names {
        assert_eq!(
            metric(&m, "token_rotator_token_ready", &[("token", n)]),
            Some(1.0),
            "{n}"
        );
    }
    for t in ["broken-issuer", "broken-sink"] {
        assert_eq!(
            metric(&m, "token_rotator_token_ready", &[("token", t)]),
            Some(0.0),
            "{t}"
        );
    }
    let (code, body) = daemon.readyz().await;
    assert_eq!(code, 503);
    let unhealthy: Vec<&str> = body["unhealthy"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["token"].as_str().unwrap())
        .collect();
    assert_eq!(unhealthy, vec!["broken-issuer", "broken-sink"], "{body}");
    assert!(!hung_issuer.hits().is_empty() && !hung_sink.hits().is_empty());
    assert_eq!(
        env.tfc
            .request_log()
            .iter()
            .filter(|r| r.status == 429)
            .count(),
        0,
        "never rate limited"
    );
    assert_eq!(
        daemon.terminate(),
        0,
        "SIGTERM exits 0 even with hung requests in flight"
    );
}
