//! Strict local emulator of the GitHub Actions secrets REST API (API version 2022-11-28,
//! docs.github.com/en/rest/actions/secrets): repository, environment and organization secrets, on loopback HTTP.
//!
//! Endpoints (paths relative to [`GithubHandle::base_url`], which stands for `https://api.github.com`):
//! - `GET /repos/{owner}/{repo}/actions/secrets/public-key` → 200 `{"key_id","key"}`;
//! - `GET|PUT|DELETE /repos/{owner}/{repo}/actions/secrets/{secret_name}`;
//! - `GET /repos/{owner}/{repo}/environments/{environment_name}/secrets/public-key`;
//! - `GET|PUT|DELETE /repos/{owner}/{repo}/environments/{environment_name}/secrets/{secret_name}`;
//! - `GET /orgs/{org}/actions/secrets/public-key`;
//! - `GET|PUT|DELETE /orgs/{org}/actions/secrets/{secret_name}`.
//!
//! `key` is the standard, padded base64 of a 32-byte X25519 public key; `PUT` takes
//! `{"encrypted_value","key_id"}` (organizations also `"visibility"` and optionally `"selected_repository_ids"`),
//! where `encrypted_value` is the base64 of a libsodium sealed box (`crypto_box_seal`) addressed to that key. The
//! emulator opens it with the scope's private key and keeps the plaintext for [`GithubHandle::secret`]: what a
//! workflow would see. `PUT` answers 201 `{}` when it created the secret, 204 (no body) when it updated it; `GET`
//! answers `{"name","created_at","updated_at"}` (RFC 3339, whole seconds, `Z`), organizations add `"visibility"`
//! and, for `selected`, `"selected_repositories_url"`. Secret names are matched case-insensitively and stored
//! uppercased; owner, repository, organization and environment names are matched case-insensitively.
//!
//! The request pipeline is described in `github/server.rs`. Error bodies are GitHub's
//! `{"message","documentation_url","status"}` (`status` a string), except the missing-`User-Agent` refusal,
//! which is GitHub's plain-text edge answer. Every response carries `x-ratelimit-limit`, `x-ratelimit-remaining`,
//! `x-ratelimit-reset` (epoch seconds), `x-ratelimit-used`, `x-ratelimit-resource: core`, `x-github-request-id`
//! and `x-github-api-version-selected: 2022-11-28`.
//!
//! Documented or observed behaviour:
//! - 401 `Requires authentication` (no `Authorization`), 401 `Bad credentials` (unknown token), 404 `Not Found`
//!   for anything the token may not see (GitHub hides private resources behind 404);
//! - 403 for a missing `User-Agent` with the text "Request forbidden by administrative rules. Please make sure
//!   your request has a User-Agent header …" (REST docs "User agent required");
//! - 403 `API rate limit exceeded for user ID N. …` with `x-ratelimit-remaining: 0` (primary limit), 403
//!   `You have exceeded a secondary rate limit. …` with `retry-after` (secondary limit) (REST docs "Rate limits");
//! - 422 `Invalid request.\n\n"key_id" wasn't supplied.` (github/rest-api-description #419), 422 `Invalid
//!   request.\n\n<value> does not match /^(?:[A-Za-z0-9+\/]{4})*…$/.` for an `encrypted_value` outside the
//!   OpenAPI pattern (rest-api-description #1688), 422 `Bad request - validation failed due to an improperly
//!   encrypted secret` for a value that does not open (terraform-provider-github #2315), 400 `Problems parsing
//!   JSON`;
//! - the secret-name rules and the 48 KB limit (docs "Secrets reference").
//!
//! Inferred (no documented or observed body; shapes follow GitHub's JSON-schema messages):
//! - a `key_id` that is not the scope's current key → 422 `Bad request - validation failed: key_id does not
//!   match the current public key` (checked before the value is opened);
//! - bad secret names on `PUT` → 422 `Invalid request.\n\nSecret names can only contain alphanumeric characters
//!   ([a-z], [A-Z], [0-9]) or underscores (_). Spaces are not allowed.`, `… must not start with a number.`,
//!   `… must not start with the GITHUB_ prefix.`; on `GET`/`DELETE` such a name is simply 404 (it cannot exist);
//! - `"visibility"` missing → 422 `Invalid request.\n\n"visibility" wasn't supplied.`; invalid → 422 `Invalid
//!   request.\n\nFor 'properties/visibility', "x" is not a member of ["all", "private", "selected"].`;
//!   non-empty `selected_repository_ids` without `selected` → 422; an id that is not a repository of the
//!   organization → 422; type errors → 422 `Invalid request.\n\nFor 'properties/<key>', <v> is not a string.`;
//!   several required keys missing → `"a", "b" weren't supplied.`; a value over 48 KB → 422;
//! - an `X-GitHub-Api-Version` other than `2022-11-28` → 400; an unknown path or a method a path does not have →
//!   404 `Not Found` (axum's 405 would never come from GitHub);
//! - the primary limit as a fixed window per token that starts with the bucket's first request; requests refused
//!   for the limit, the secondary limit or a missing `User-Agent` are not counted; unknown and missing credentials
//!   share one "anonymous" bucket (reported limit 60 unless configured; tokens 5000);
//! - `PUT` with `visibility: "selected"` and no ids keeps the ids an earlier `selected` set.
//!
//! Time comes from [`crate::clock`] (plus [`GithubHandle::advance_clock`]) and key pairs, key ids and request
//! ids from its generator, so a simulation drives and replays the emulator. Test knobs on [`GithubHandle`].

mod server;
mod store;

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use chrono::{DateTime, Utc};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use server::Shared;
use store::Scope;

pub use store::MAX_SECRET_BYTES;

/// Emulator settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Requests per token per [`Config::primary_window`] before 403 `API rate limit exceeded`; `None` (the default)
    /// enforces nothing (the headers then report GitHub's 5000 per hour, 60 for unauthenticated callers).
    pub primary_limit: Option<u32>,
    /// Length of the primary window; default one hour, as GitHub's.
    pub primary_window: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            primary_limit: None,
            primary_window: Duration::from_secs(3600),
        }
    }
}

/// One request as the emulator answered it: never a body, a header or a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    pub method: String,
    /// Path without the query string, as sent (percent-encoded).
    pub path: String,
    pub status: u16,
    /// On the emulator's clock.
    pub at: DateTime<Utc>,
}

/// A stored secret, as a workflow would see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretInfo {
    /// Uppercased, as GitHub stores it.
    pub name: String,
    /// The decrypted plaintext (lossy UTF-8).
    pub value: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Organization secrets: `all`, `private` or `selected`; `None` for repository and environment secrets.
    pub visibility: Option<String>,
    /// Organization secrets with `selected` visibility: the repository ids that may use it.
    pub selected_repository_ids: Vec<u64>,
    /// The `key_id` of the public key it was sealed to.
    pub key_id: String,
}

/// Starts emulator servers.
pub struct GithubEmulator;

impl GithubEmulator {
    /// Plain HTTP on `127.0.0.1` with an ephemeral port.
    pub async fn start(cfg: Config) -> io::Result<GithubHandle> {
        Self::bind(cfg, SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
    }

    /// Plain HTTP on the given loopback address (refuses any other address).
    pub async fn bind(cfg: Config, addr: SocketAddr) -> io::Result<GithubHandle> {
        if !addr.ip().is_loopback() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the github emulator listens on loopback addresses only, not {addr}"),
            ));
        }
        let tcp = TcpListener::bind(addr).await?;
        let local = tcp.local_addr()?;
        let (shared, app) = prepare(&cfg, format!("http://{local}"));
        let (stop, mut stop_rx) = watch::channel(false);
        let served = app.clone();
        let task = tokio::spawn(async move {
            let _ = axum::serve(tcp, served)
                .with_graceful_shutdown(async move {
                    let _ = stop_rx.wait_for(|stop| *stop).await;
                })
                .await;
        });
        Ok(GithubHandle {
            shared,
            app,
            server: Arc::new(ServerGuard {
                addr: local,
                stop,
                task: Mutex::new(Some(task)),
            }),
        })
    }

    /// An emulator without a listener: requests go through [`GithubHandle::dispatch`], on the caller's task (the
    /// deterministic simulation). `base_url()` names an address nothing listens on.
    pub fn in_memory(cfg: Config) -> GithubHandle {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 9));
        let (shared, app) = prepare(&cfg, format!("http://{addr}"));
        let (stop, _) = watch::channel(false);
        GithubHandle {
            shared,
            app,
            server: Arc::new(ServerGuard {
                addr,
                stop,
                task: Mutex::new(None),
            }),
        }
    }
}

fn prepare(cfg: &Config, base_url: String) -> (Arc<Shared>, Router) {
    let shared = Arc::new(Shared::new(cfg, base_url));
    let app = Router::new()
        .fallback(server::handle)
        .with_state(Arc::clone(&shared));
    (shared, app)
}

/// Stops the server when the last clone of its handle is dropped.
struct ServerGuard {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// A running emulator. Clones share the same server and state; the server stops when the last clone is dropped
/// or on [`GithubHandle::stop`] / [`GithubHandle::shutdown`].
#[derive(Clone)]
pub struct GithubHandle {
    shared: Arc<Shared>,
    app: Router,
    server: Arc<ServerGuard>,
}

impl std::fmt::Debug for GithubHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GithubHandle")
            .field("addr", &self.server.addr)
            .finish_non_exhaustive()
    }
}

fn scope(s: &str) -> Scope {
    Scope::parse(s).unwrap_or_else(|| {
        panic!(
            "github emulator: scope must be \"repo:owner/name\", \"env:owner/name:env\" or \"org:name\", not {s:?}"
        )
    })
}

impl GithubHandle {
    /// `http://127.0.0.1:PORT` (no trailing slash): what `https://api.github.com` is for the real service.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    /// Same as [`GithubHandle::base_url`], named like the other emulators' handles.
    pub fn url(&self) -> String {
        self.base_url()
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// Stops the server (for every clone of this handle) and waits until the listener is closed and in-flight
    /// requests have been answered.
    pub async fn stop(self) {
        let _ = self.server.stop.send(true);
        let task = self
            .server
            .task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    /// Stops the server (for every clone of this handle). Returns at once.
    pub fn shutdown(self) {
        let _ = self.server.stop.send(true);
    }

    /// One request through the emulator's pipeline without a socket.
    pub async fn dispatch(
        &self,
        request: axum::http::Request<axum::body::Body>,
    ) -> axum::http::Response<axum::body::Body> {
        use tower::ServiceExt;
        match self.app.clone().oneshot(request).await {
            Ok(r) => r,
            Err(never) => match never {},
        }
    }

    // --- Fixtures ---

    /// Registers `token` (used as `Authorization: Bearer <token>` or `token <token>`) with what it may reach:
    /// `"repo:owner/name"` (that repository and its environments) or `"org:name"` (the organization and every
    /// repository it owns). Calling it again for the same token adds scopes. Panics on a malformed scope.
    pub fn add_token(&self, token: &str, scopes: &[&str]) {
        self.shared.lock().store.add_token(token, scopes);
    }

    /// Forgets a token (it is `Bad credentials` from then on), as if it were revoked.
    pub fn remove_token(&self, token: &str) {
        self.shared.lock().store.remove_token(token);
    }

    /// Creates the repository `"owner/name"` (with its own key pair) if needed and returns its numeric id (for
    /// `selected_repository_ids`). A repository whose owner is an organization belongs to it. Panics on a
    /// malformed name.
    pub fn add_repo(&self, full_name: &str) -> u64 {
        self.shared.lock().store.add_repo(full_name)
    }

    /// The id of a repository added with [`GithubHandle::add_repo`].
    pub fn repo_id(&self, full_name: &str) -> Option<u64> {
        self.shared.lock().store.repo_id(full_name)
    }

    /// Creates an environment (with its own key pair) of an existing repository, if needed. Panics on an unknown
    /// repository.
    pub fn add_environment(&self, repo: &str, environment: &str) {
        self.shared.lock().store.add_environment(repo, environment);
    }

    /// Creates an organization (with its own key pair) if needed.
    pub fn add_org(&self, org: &str) {
        self.shared.lock().store.add_org(org);
    }

    /// Gives the scope (`"repo:owner/name"`, `"env:owner/name:env"`, `"org:name"`) a new key pair and returns
    /// its `key_id`; the previous `key_id` is stale from then on (`PUT` with it → 422). Stored secrets stay.
    /// Panics on a malformed or unknown scope.
    pub fn rotate_key(&self, scope_str: &str) -> String {
        self.shared
            .lock()
            .store
            .rotate_key(&scope(scope_str))
            .unwrap_or_else(|| panic!("github emulator: unknown scope {scope_str:?}"))
    }

    /// The scope's current `(key_id, base64 public key)`, as `GET …/public-key` answers. Panics on a malformed or
    /// unknown scope.
    pub fn public_key(&self, scope_str: &str) -> (String, String) {
        let emu = self.shared.lock();
        let vault = emu
            .store
            .vault(&scope(scope_str))
            .unwrap_or_else(|| panic!("github emulator: unknown scope {scope_str:?}"));
        (vault.key.id.clone(), vault.key.public_b64.clone())
    }

    /// A stored secret (name case-insensitive), with its decrypted value. `None` when the scope or the secret
    /// does not exist. Panics on a malformed scope.
    pub fn secret(&self, scope_str: &str, name: &str) -> Option<SecretInfo> {
        let emu = self.shared.lock();
        emu.store
            .vault(&scope(scope_str))?
            .secrets
            .get(&name.to_ascii_uppercase())
            .map(store::Secret::info)
    }

    /// Every secret of the scope, by name. Empty when the scope does not exist. Panics on a malformed scope.
    pub fn secrets(&self, scope_str: &str) -> Vec<SecretInfo> {
        let emu = self.shared.lock();
        emu.store
            .vault(&scope(scope_str))
            .map(|v| v.secrets.values().map(store::Secret::info).collect())
            .unwrap_or_default()
    }

    // --- Fault injection and inspection ---

    /// The next `n` requests (any path, after the `User-Agent` check, before authentication) answer 403
    /// `You have exceeded a secondary rate limit…` with `retry-after: <retry_after_secs>`. `n = 0` clears it.
    pub fn secondary_limit(&self, n: u32, retry_after_secs: u64) {
        self.shared.lock().secondary = (n > 0).then_some((n, retry_after_secs));
    }

    /// Every request so far, in the order they were answered.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.lock().log.clone()
    }

    pub fn clear_requests(&self) {
        self.shared.lock().log.clear();
    }

    /// Prints one line per request to stderr: method, path and status, never a body or a token.
    pub fn set_request_logging(&self, on: bool) {
        self.shared.log_requests.store(on, Ordering::Relaxed);
    }

    /// Moves the emulator's clock forward (timestamps, rate-limit windows).
    pub fn advance_clock(&self, by: Duration) {
        self.shared.lock().store.advance_clock(by);
    }

    /// The emulator's current time.
    pub fn now(&self) -> DateTime<Utc> {
        self.shared.lock().store.now()
    }
}
