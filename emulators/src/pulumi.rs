//! Strict local emulator of the Pulumi Cloud access-token API (organization, team and personal tokens, and
//! `GET /api/user`), on loopback HTTP.
//!
//! Behaviour follows `shared/reference/token-apis.md` Part B (the Pulumi OpenAPI spec and docs). Strict on purpose:
//! `Authorization: token <t>` only (a `Bearer` scheme is 401), `Accept: application/vnd.pulumi+N` (N ≥ 8) required,
//! POST bodies must be `application/json` (415), names ≤ 40 characters and reserved forever per organization (409),
//! `expires` in unix seconds no more than two years ahead (400), values only in the create response, list paging with
//! `continuationToken`, and machine tokens cannot create or delete organization tokens (403).
//!
//! The organization access token expiry policy (a cap in days, [`PulumiHandle::set_expiry_policy`]): org and team
//! token creation beyond the cap (or without expiry) is refused with 400; every request against the organization
//! (`/api/orgs/{org}/…`) with a non-compliant personal, org or team token is refused with 403; the cap is read from
//! `GET /api/orgs/{org}/metadata` (`maxAccessTokenExpiryDays`) and set by `PATCH /api/orgs/{org}`
//! (`setMaxAccessTokenExpiryDays`). Details and sources in `pulumi/store.rs` (`Store::check_expiry_policy`).
//!
//! Endpoints: `POST|GET /api/orgs/{org}/tokens`, `DELETE /api/orgs/{org}/tokens/{id}`,
//! `POST|GET /api/orgs/{org}/teams/{team}/tokens`, `DELETE /api/orgs/{org}/teams/{team}/tokens/{id}`,
//! `GET /api/orgs/{org}/metadata`, `PATCH /api/orgs/{org}`,
//! `POST|GET /api/user/tokens`, `DELETE /api/user/tokens/{id}`, `GET /api/user`.

mod server;
mod store;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use server::{ApiError, Shared};
pub use store::{ExpiryCompliance, TokenInfo, TokenKind, TokenState, MAX_NAME_CHARS};

/// Emulator settings.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Requests per second across all callers before 429 (with `Retry-After: 1`); `None` = unlimited.
    pub rate_limit_per_second: Option<u32>,
}

/// One request as the emulator saw it. Holds no token value: only the `Authorization` scheme and the id of the
/// token that authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    pub method: String,
    /// Path without the query string.
    pub path: String,
    pub query: Option<String>,
    pub status: u16,
    /// The `Accept` header as sent, if any.
    pub accept: Option<String>,
    pub content_type: Option<String>,
    /// `token`, `Bearer`, … (first word of `Authorization`).
    pub auth_scheme: Option<String>,
    /// Id of the token that authenticated the call (absent when authentication failed or never ran).
    pub token_id: Option<String>,
    /// On the emulator's clock (see [`PulumiHandle::advance_clock`]).
    pub at: DateTime<Utc>,
}

impl RequestRecord {
    /// Whether the request carried `Accept: application/vnd.pulumi+N` with N ≥ 8.
    pub fn accept_is_pulumi(&self) -> bool {
        server::accept_is_pulumi(self.accept.as_deref())
    }
}

/// Starts emulators.
pub struct PulumiEmulator;

impl PulumiEmulator {
    /// Serves on `127.0.0.1` at a free port.
    pub async fn start(cfg: Config) -> std::io::Result<PulumiHandle> {
        Self::start_on(cfg, SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
    }

    /// Serves on `addr`, which must be a loopback address.
    pub async fn start_on(cfg: Config, addr: SocketAddr) -> std::io::Result<PulumiHandle> {
        if !addr.ip().is_loopback() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "refusing to listen on {addr}: the emulator serves loopback addresses only"
                ),
            ));
        }
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(&cfg));
        let app = server::router(shared.clone());
        let served = app.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, served).await {
                eprintln!("pulumi-emulator: server stopped: {e}");
            }
        });
        Ok(PulumiHandle {
            inner: Arc::new(HandleInner {
                shared,
                app,
                addr,
                task: Some(task.abort_handle()),
            }),
        })
    }

    /// An emulator without a listener: requests go through [`PulumiHandle::dispatch`], on the caller's task (the
    /// deterministic simulation). `url()` names an address nothing listens on.
    pub fn in_memory(cfg: Config) -> PulumiHandle {
        let shared = Arc::new(Shared::new(&cfg));
        PulumiHandle {
            inner: Arc::new(HandleInner {
                app: server::router(shared.clone()),
                shared,
                addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 9)),
                task: None,
            }),
        }
    }
}

struct HandleInner {
    shared: Arc<Shared>,
    app: axum::Router,
    addr: SocketAddr,
    task: Option<tokio::task::AbortHandle>,
}

impl Drop for HandleInner {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// Controls a running emulator; the server stops when the last clone is dropped.
#[derive(Clone)]
pub struct PulumiHandle {
    inner: Arc<HandleInner>,
}

impl std::fmt::Debug for PulumiHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PulumiHandle")
            .field("addr", &self.inner.addr)
            .finish_non_exhaustive()
    }
}

impl PulumiHandle {
    fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    /// Base URL, e.g. `http://127.0.0.1:41234` (API paths start with `/api/`).
    pub fn url(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// One request through the emulator without a socket.
    pub async fn dispatch(
        &self,
        request: axum::http::Request<axum::body::Body>,
    ) -> axum::http::Response<axum::body::Body> {
        use tower::ServiceExt;
        match self.inner.app.clone().oneshot(request).await {
            Ok(r) => r,
            Err(never) => match never {},
        }
    }

    /// A server that echoes what it was sent: every error answer's message quotes the request's `Authorization`
    /// header (token included), as careless servers and proxies do.
    pub fn set_echo_credentials(&self, on: bool) {
        self.shared().lock().control.echo_credentials = on;
    }

    /// Creates the user if needed and returns a fresh never-expiring personal access token for it.
    pub fn add_user(&self, login: &str) -> String {
        self.shared().lock().store.add_user(login)
    }

    /// Creates the organization if needed; `admin_login` becomes an org admin (the user is created if needed).
    pub fn add_organization(&self, org: &str, admin_login: &str) {
        self.shared()
            .lock()
            .store
            .add_organization(org, admin_login);
    }

    /// Adds a non-admin member.
    pub fn add_member(&self, org: &str, login: &str) {
        self.shared().lock().store.add_member(org, login);
    }

    /// Adds a team (addressed by name in the API, reference B.2).
    pub fn add_team(&self, org: &str, team: &str) {
        self.shared().lock().store.add_team(org, team);
    }

    /// True while the token is neither deleted nor expired.
    pub fn is_valid(&self, token_value: &str) -> bool {
        self.shared().lock().store.is_valid(token_value)
    }

    /// Id of any token this emulator issued, valid or not.
    pub fn token_id_of(&self, token_value: &str) -> Option<String> {
        self.shared().lock().store.token_id_of(token_value)
    }

    /// Tokens that authenticate right now, in creation order.
    pub fn valid_tokens(&self) -> Vec<TokenInfo> {
        self.shared().lock().store.tokens(true)
    }

    /// Every token ever issued, deleted and expired ones included, in creation order.
    pub fn all_tokens(&self) -> Vec<TokenInfo> {
        self.shared().lock().store.tokens(false)
    }

    /// Delays each successful create response by `d` (the token already exists while the client waits).
    pub fn set_create_delay(&self, d: Duration) {
        self.shared().lock().control.create_delay = d;
    }

    /// The next `n` requests (any endpoint, before authentication) answer `status` with an error body.
    pub fn fail_next(&self, n: usize, status: u16) {
        self.shared().lock().control.fail_next = (n > 0).then_some((n, status));
    }

    /// Every request answers 429 for `d`, with `Retry-After: <secs>` when given.
    pub fn throttle_for(&self, d: Duration, retry_after: Option<u64>) {
        let mut emu = self.shared().lock();
        emu.control.throttle_until = Some(Instant::now() + d);
        emu.control.throttle_retry_after = retry_after;
    }

    /// Requests seen so far, oldest first.
    pub fn request_log(&self) -> Vec<RequestRecord> {
        self.shared().lock().log.clone()
    }

    pub fn clear_request_log(&self) {
        self.shared().lock().log.clear();
    }

    /// The organization's access token expiry policy, as an admin sets it in the console (Settings > Access
    /// Management): at most `days` for personal, organization and team tokens used against `org`. `None` (or
    /// `Some(0)`) removes it. The real policy is one number for all three token kinds; what differs per kind is
    /// the enforcement (org and team tokens are refused at creation, personal tokens when used against the org;
    /// every kind is refused on the org's routes while non-compliant). Creates the organization if needed.
    pub fn set_expiry_policy(&self, org: &str, days: Option<u32>) {
        self.shared().lock().store.set_expiry_policy(org, days);
    }

    /// Former name of [`PulumiHandle::set_expiry_policy`]. The policy no longer caps new tokens silently: org and
    /// team creates beyond the cap are refused with 400, and non-compliant tokens (the never-expiring
    /// [`PulumiHandle::add_user`] tokens included) get 403 on the organization's routes.
    pub fn set_org_max_expiry_days(&self, org: &str, days: Option<u32>) {
        self.set_expiry_policy(org, days);
    }

    /// Exempts a token (by id) from every organization's expiry policy, standing in for the credentials the
    /// service exempts (OIDC-exchanged tokens, deployment runner and agent pool tokens, web sessions). `false`
    /// removes the exemption.
    pub fn set_expiry_policy_exempt(&self, token_id: &str, exempt: bool) {
        self.shared()
            .lock()
            .store
            .set_policy_exempt(token_id, exempt);
    }

    /// Which rule judges compliance on each request; default [`ExpiryCompliance::TotalLifetime`], the service's
    /// rule since September 2026.
    pub fn set_expiry_compliance(&self, rule: ExpiryCompliance) {
        self.shared().lock().store.set_expiry_compliance(rule);
    }

    /// True while the token is valid and may be used against `org`'s routes (compliant with its expiry policy,
    /// exempt, or no policy).
    pub fn is_usable_in(&self, token_value: &str, org: &str) -> bool {
        self.shared().lock().store.is_usable_in(token_value, org)
    }

    /// Deletes a token out of band (as an admin in the web console would). Unknown ids are ignored.
    pub fn revoke(&self, token_id: &str) {
        self.shared().lock().store.revoke(token_id);
    }

    /// Moves the emulator's clock forward (token expiry, `lastUsed`, `created`, the two-year limit).
    pub fn advance_clock(&self, by: Duration) {
        self.shared().lock().store.advance_clock(by);
    }

    /// The emulator's current time.
    pub fn now(&self) -> DateTime<Utc> {
        self.shared().lock().store.now()
    }

    /// Whether a missing or non-Pulumi `Accept` header is refused with 406 (default true).
    pub fn set_require_accept(&self, required: bool) {
        self.shared().lock().control.require_accept = required;
    }

    /// Prints one line per request (method, path, status; never token values) on stderr.
    pub fn set_request_echo(&self, on: bool) {
        self.shared().lock().control.echo_requests = on;
    }
}

#[cfg(test)]
mod tests {
    use super::server::accept_is_pulumi;

    #[test]
    fn accept_versions() {
        assert!(accept_is_pulumi(Some("application/vnd.pulumi+8")));
        assert!(accept_is_pulumi(Some(
            "application/json, application/vnd.pulumi+9"
        )));
        assert!(!accept_is_pulumi(Some("application/vnd.pulumi+7")));
        assert!(!accept_is_pulumi(Some("application/json")));
        assert!(!accept_is_pulumi(None));
    }
}
