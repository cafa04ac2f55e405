//! HashiCorp Vault / OpenBao KV sink (v1 and v2), written with check-and-set on v2.
//!
//! Facts relied on (shared/reference/secret-stores.md A.2–A.4, Vault KV v2 API docs):
//! CAS mismatch is `400 "check-and-set parameter did not match the current version"`; a missing key is
//! `404 {"errors":[]}`; a soft-deleted version is a 404 with the normal envelope; the KV version is read from
//! `GET /v1/sys/internal/ui/mounts/<mount>` (`data.options.version`), as the Vault CLI does.
//!
//! Auth (A.5): `token`, `approle` (`auth/<mount>/login` with role_id + secret_id) and `kubernetes`
//! (`auth/<mount>/login` with the service-account JWT, re-read from its file at each login). vaultrs has no
//! renewal (A.5.5), so the sink keeps the token's lease itself ([`Lease`]): before each operation it renews the
//! token (`renew-self`) once two thirds of its TTL have passed, logs in again when renewal fails or the token
//! cannot be renewed any further, and uses a non-renewable token until shortly before it expires. A `403
//! permission denied` (revoked or expired token) makes it log in again once and retry the operation. With
//! `method = "token"`, "logging in" means resolving the token reference again (an agent may have refreshed the
//! file). Time comes from `crate::clock` only.

mod config;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::sync::{Mutex, OnceCell, RwLock};
use vaultrs::api::kv2::requests::{ReadSecretRequest, SetSecretRequestOptions};
use vaultrs::api::AuthInfo;
use vaultrs::client::{Client as _, VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;

use super::{Content, Observed, Sink, SinkError, SinkErrorKind, Target, Version};
use crate::policy::{SecretRef, SinkSettings};
use crate::record::SinkRecord;
use crate::secret::{ExposeSecret, SecretString};
pub use config::{VaultAuth, VaultSinkConfig, VaultSpec};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub struct VaultSink {
    name: String,
    mount: String,
    address: String,
    configured_kv: Option<u8>,
    detected_kv: OnceCell<u8>,
    /// Holds the current Vault token; swapped under the write lock at login.
    client: RwLock<VaultClient>,
    login: Login,
    session: Mutex<Session>,
}

/// How the daemon gets its own Vault token.
enum Login {
    Token {
        token: SecretRef,
    },
    AppRole {
        mount: String,
        role_id: String,
        secret_id: SecretRef,
    },
    Kubernetes {
        mount: String,
        role: String,
        jwt_file: PathBuf,
    },
}

impl Login {
    fn method(&self) -> &'static str {
        match self {
            Login::Token { .. } => "token",
            Login::AppRole { .. } => "approle",
            Login::Kubernetes { .. } => "kubernetes",
        }
    }
}

/// The token's lease as last learned (login, renewal or lookup), and a counter bumped at each new token so that
/// concurrent operations denied at once log in only once.
struct Session {
    lease: Option<Lease>,
    generation: u64,
}

/// What Vault said of the current token, and when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    pub since: DateTime<Utc>,
    /// `None`: the token does not expire (TTL 0, e.g. a root token).
    pub ttl: Option<Duration>,
    pub renewable: bool,
}

/// What the token needs before the next operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Due {
    Nothing,
    Renew,
    Login,
}

impl Lease {
    pub fn from_ttl(since: DateTime<Utc>, ttl_secs: u64, renewable: bool) -> Self {
        Lease {
            since,
            ttl: (ttl_secs > 0).then(|| Duration::from_secs(ttl_secs)),
            renewable,
        }
    }

    fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.ttl
            .map(|t| self.since + chrono::TimeDelta::from_std(t).unwrap_or(chrono::TimeDelta::MAX))
    }

    /// Renew at two thirds of the TTL; a token that cannot be renewed is used until 90 % of its TTL (so that no
    /// request races its expiry), then replaced by a new login; an expired one is replaced at once.
    pub fn due(&self, now: DateTime<Utc>) -> Due {
        let Some(ttl) = self.ttl else {
            return Due::Nothing;
        };
        let age = (now - self.since).to_std().unwrap_or(Duration::ZERO);
        if age >= ttl {
            Due::Login
        } else if self.renewable && age >= ttl * 2 / 3 {
            Due::Renew
        } else if !self.renewable && age >= ttl * 9 / 10 {
            Due::Login
        } else {
            Due::Nothing
        }
    }

    /// The lease after a renewal answered `ttl_secs`: a renewal that no longer extends the expiry (the max TTL
    /// is reached) makes the token non-renewable, so it is used until it expires and then replaced.
    pub fn renewed(&self, now: DateTime<Utc>, ttl_secs: u64, renewable: bool) -> Lease {
        let next = Lease::from_ttl(now, ttl_secs, renewable);
        let extended = match (self.expires_at(), next.expires_at()) {
            (Some(old), Some(new)) => new > old + chrono::TimeDelta::seconds(1),
            _ => true,
        };
        Lease {
            renewable: renewable && extended,
            ..next
        }
    }
}

// The vaultrs client holds the Vault token in plain text: never let it reach a Debug formatter.
impl std::fmt::Debug for VaultSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultSink")
            .field("name", &self.name)
            .field("address", &self.address)
            .field("mount", &self.mount)
            .field("auth", &self.login.method())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl super::SinkKind for VaultSpec {
    async fn build(
        &self,
        name: &str,
        settings: &dyn SinkSettings,
    ) -> Result<Arc<dyn super::Sink>, SinkError> {
        let cfg = super::settings_of::<VaultSinkConfig>(name, settings)?;
        Ok(Arc::new(VaultSink::new(name, cfg)?))
    }
}

impl VaultSink {
    pub fn new(name: &str, cfg: &VaultSinkConfig) -> Result<Self, SinkError> {
        let err = |kind, message: String| SinkError::new(name, kind, message);
        // A `token` is resolved now, so a missing one makes the sink unusable at once; other methods log in at
        // the first operation (a Vault that is down at start-up must not make the sink unusable until reload).
        let (login, token) = match &cfg.auth {
            VaultAuth::Token { token } => {
                let value = token
                    .resolve_local()
                    .map_err(|e| err(SinkErrorKind::Permanent, format!("Vault token: {e}")))?;
                check_header_value(&value)
                    .map_err(|why| err(SinkErrorKind::Permanent, format!("Vault token: {why}")))?;
                (
                    Login::Token {
                        token: token.clone(),
                    },
                    value,
                )
            }
            VaultAuth::AppRole {
                mount,
                role_id,
                secret_id,
            } => {
                if matches!(secret_id, SecretRef::Sink { .. }) {
                    return Err(err(
                        SinkErrorKind::Permanent,
                        "AppRole `secret_id` must be an `env` or `file` reference".into(),
                    ));
                }
                (
                    Login::AppRole {
                        mount: mount.clone(),
                        role_id: role_id.clone(),
                        secret_id: secret_id.clone(),
                    },
                    SecretString::from(String::new()),
                )
            }
            VaultAuth::Kubernetes {
                mount,
                role,
                jwt_file,
            } => (
                Login::Kubernetes {
                    mount: mount.clone(),
                    role: role.clone(),
                    jwt_file: jwt_file.clone(),
                },
                SecretString::from(String::new()),
            ),
        };
        let mut settings = VaultClientSettingsBuilder::default();
        // Every setting is pinned so that VAULT_* environment variables (VAULT_SKIP_VERIFY above all) have no effect.
        settings
            .address(&cfg.address)
            .token(token.expose_secret())
            .verify(true)
            .ca_certs(
                cfg.ca_file
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>(),
            )
            .identity(None)
            .timeout(Some(REQUEST_TIMEOUT));
        if let Some(ns) = &cfg.namespace {
            settings.namespace(Some(ns.clone()));
        } else {
            settings.namespace(None);
        }
        let settings = settings.build().map_err(|e| {
            err(
                SinkErrorKind::Permanent,
                format!("Vault client settings: {e}"),
            )
        })?;
        let client = VaultClient::new(settings).map_err(|e| {
            err(
                SinkErrorKind::Permanent,
                format!("Vault client: {}", describe(&e)),
            )
        })?;
        Ok(VaultSink {
            name: name.to_string(),
            mount: cfg.mount.clone(),
            address: cfg.address.clone(),
            configured_kv: cfg.kv_version,
            detected_kv: OnceCell::new(),
            client: RwLock::new(client),
            login,
            session: Mutex::new(Session {
                lease: None,
                generation: 0,
            }),
        })
    }

    /// Makes sure the token is usable for the next operation (renewal or login when due); returns the token's
    /// generation for [`Self::refresh_after_denied`].
    async fn ensure_token(&self) -> Result<u64, SinkError> {
        let mut session = self.session.lock().await;
        let now = crate::clock::now();
        match session.lease.map(|l| l.due(now)) {
            Some(Due::Nothing) => {}
            None | Some(Due::Login) => self.log_in(&mut session).await?,
            Some(Due::Renew) => {
                if let Err(e) = self.renew(&mut session).await {
                    tracing::warn!(sink = %self.name, error = %e, "renewing the Vault token failed; logging in again");
                    self.log_in(&mut session).await?;
                }
            }
        }
        Ok(session.generation)
    }

    /// After a 403: a new token (once per generation), so that the denied operation can be retried. `false`:
    /// there is no other token to try (`method = "token"` and the reference still holds the same value).
    async fn refresh_after_denied(&self, seen: u64) -> Result<bool, SinkError> {
        let mut session = self.session.lock().await;
        if session.generation != seen {
            return Ok(true);
        }
        tracing::info!(sink = %self.name, method = self.login.method(), "Vault denied the token (revoked or expired?); logging in again");
        let before = session.generation;
        self.log_in(&mut session).await?;
        Ok(session.generation != before)
    }

    async fn renew(&self, session: &mut Session) -> Result<(), SinkError> {
        let auth = {
            let client = self.client.read().await;
            vaultrs::token::renew_self(&*client, None).await
        }
        .map_err(|e| self.login_error("renew-self", e))?;
        let now = crate::clock::now();
        let old = session.lease.unwrap_or(Lease::from_ttl(now, 0, false));
        let lease = old.renewed(now, auth.lease_duration, auth.renewable);
        tracing::debug!(sink = %self.name, ttl_s = auth.lease_duration, renewable = lease.renewable, "renewed the Vault token");
        session.lease = Some(lease);
        Ok(())
    }

    /// Gets a token the configured way and installs it; the session's generation changes when the token did.
    async fn log_in(&self, session: &mut Session) -> Result<(), SinkError> {
        let now = crate::clock::now();
        let (mount, auth): (&str, AuthInfo) = match &self.login {
            Login::Token { token } => {
                let value = match token.resolve_local() {
                    Ok(v) if check_header_value(&v).is_ok() => Some(v),
                    Ok(_) => None,
                    Err(e) => {
                        tracing::warn!(sink = %self.name, error = %e, "cannot read the Vault token again; keeping the one in use");
                        None
                    }
                };
                let mut client = self.client.write().await;
                if let Some(v) = value {
                    if v.expose_secret() != client.settings.token {
                        client.set_token(v.expose_secret());
                        session.generation += 1;
                        tracing::info!(sink = %self.name, "the Vault token reference holds a new token; using it");
                    }
                }
                // A token's lease is learned with lookup-self (in Vault's default policy). Without it the token
                // is just used, and replaced only after a 403.
                session.lease = match vaultrs::token::lookup_self(&*client).await {
                    Ok(info) => Some(Lease::from_ttl(
                        now,
                        info.ttl,
                        info.renewable.unwrap_or(false),
                    )),
                    Err(e) => {
                        tracing::debug!(sink = %self.name, error = %self.map_err("lookup-self", "", e), "cannot look up the Vault token; it is renewed only on demand");
                        Some(Lease::from_ttl(now, 0, false))
                    }
                };
                return Ok(());
            }
            Login::AppRole {
                mount,
                role_id,
                secret_id,
            } => {
                let secret = secret_id.resolve_local().map_err(|e| {
                    self.error(SinkErrorKind::Permanent, format!("AppRole secret_id: {e}"))
                })?;
                let mut client = self.client.write().await;
                // Login paths are unauthenticated: never send the old token along.
                client.set_token("");
                let r =
                    vaultrs::auth::approle::login(&*client, mount, role_id, secret.expose_secret())
                        .await;
                (mount, self.install(session, &mut client, r, mount)?)
            }
            Login::Kubernetes {
                mount,
                role,
                jwt_file,
            } => {
                let jwt = SecretRef::File(jwt_file.clone())
                    .resolve_local()
                    .map_err(|e| {
                        self.error(
                            SinkErrorKind::Permanent,
                            format!("Kubernetes service-account token: {e}"),
                        )
                    })?;
                let mut client = self.client.write().await;
                client.set_token("");
                let r = vaultrs::auth::kubernetes::login(
                    &*client,
                    mount,
                    role,
                    jwt.expose_secret().trim(),
                )
                .await;
                (mount, self.install(session, &mut client, r, mount)?)
            }
        };
        session.generation += 1;
        session.lease = Some(Lease::from_ttl(now, auth.lease_duration, auth.renewable));
        tracing::info!(sink = %self.name, method = self.login.method(), mount = %mount, ttl_s = auth.lease_duration, renewable = auth.renewable, "logged in to Vault");
        Ok(())
    }

    /// Installs the token a login returned. On failure the client is left without a token and the lease is
    /// forgotten, so that the next operation logs in first.
    fn install(
        &self,
        session: &mut Session,
        client: &mut VaultClient,
        r: Result<AuthInfo, ClientError>,
        mount: &str,
    ) -> Result<AuthInfo, SinkError> {
        session.lease = None;
        let auth = r.map_err(|e| self.login_error(&format!("login at auth/{mount}"), e))?;
        let token = SecretString::from(auth.client_token.clone());
        check_header_value(&token).map_err(|why| {
            self.error(
                SinkErrorKind::Permanent,
                format!("login at auth/{mount}: {why}"),
            )
        })?;
        client.set_token(token.expose_secret());
        Ok(auth)
    }

    /// A failed login or renewal: 400/403 mean the credential or role is wrong.
    fn login_error(&self, op: &str, e: ClientError) -> SinkError {
        match &e {
            ClientError::APIError { code, errors } => {
                let kind = match code {
                    400 | 401 | 403 => SinkErrorKind::Forbidden,
                    412 | 429 | 500..=599 => SinkErrorKind::Unavailable,
                    _ => SinkErrorKind::Permanent,
                };
                self.error(
                    kind,
                    format!(
                        "{op} ({} auth): Vault answered {code}: {}",
                        self.login.method(),
                        errors.join("; ")
                    ),
                )
            }
            _ => {
                let mut mapped = self.map_err(op, "", e);
                mapped.message = format!("{} ({} auth)", mapped.message, self.login.method());
                mapped
            }
        }
    }

    fn error(&self, kind: SinkErrorKind, message: impl Into<String>) -> SinkError {
        let mut message = message.into();
        // Vault's own words may echo the token it was sent (a dev or custom-id token has no telltale shape).
        if let Ok(client) = self.client.try_read() {
            let token = SecretString::from(client.settings.token.clone());
            message = crate::redact::outside_text(&message, &[&token]);
        }
        SinkError::new(&self.name, kind, message)
    }

    async fn kv_version(&self) -> Result<u8, SinkError> {
        if let Some(v) = self.configured_kv {
            return Ok(v);
        }
        self.detected_kv
            .get_or_try_init(|| self.detect_kv_version())
            .await
            .copied()
    }

    /// The Vault CLI's preflight: `sys/internal/ui/mounts/<mount>`; 404 means an old server, so KV v1.
    async fn detect_kv_version(&self) -> Result<u8, SinkError> {
        let url = format!(
            "{}/v1/sys/internal/ui/mounts/{}",
            self.address.trim_end_matches('/'),
            self.mount
        );
        let client = self.client.read().await;
        let mut req = client.http.http.get(&url).header("X-Vault-Request", "true");
        let mut token_header = reqwest::header::HeaderValue::from_str(&client.settings.token)
            .map_err(|_| {
                self.error(
                    SinkErrorKind::Permanent,
                    "Vault token is not a valid header value",
                )
            })?;
        token_header.set_sensitive(true);
        req = req.header("X-Vault-Token", token_header);
        if let Some(ns) = &client.settings.namespace {
            req = req.header("X-Vault-Namespace", ns);
        }
        drop(client);
        let resp = req.send().await.map_err(|e| {
            self.error(
                SinkErrorKind::Unavailable,
                format!(
                    "cannot reach Vault at {}: {}",
                    self.address,
                    reqwest_reason(&e)
                ),
            )
        })?;
        let status = resp.status().as_u16();
        match status {
            200 => {
                let body: Value = resp.json().await.map_err(|_| {
                    self.error(SinkErrorKind::Unavailable, "mount lookup returned invalid JSON")
                })?;
                let version = body
                    .pointer("/data/options/version")
                    .and_then(Value::as_str)
                    .unwrap_or("1");
                Ok(if version == "2" { 2 } else { 1 })
            }
            404 => Ok(1),
            403 => Err(self.error(
                SinkErrorKind::Forbidden,
                format!(
                    "cannot detect the KV version of mount \"{}\" (403 permission denied on sys/internal/ui/mounts/{}): grant read on that path or set `kv_version` in the sink",
                    self.mount, self.mount
                ),
            )),
            s if s == 429 || s >= 500 => Err(self.error(
                SinkErrorKind::Unavailable,
                format!("Vault answered {s} to the KV version lookup"),
            )),
            s => Err(self.error(
                SinkErrorKind::Permanent,
                format!("Vault answered {s} to the KV version lookup of mount \"{}\"", self.mount),
            )),
        }
    }

    fn path<'t>(&self, target: &'t Target) -> Result<&'t str, SinkError> {
        match target {
            Target::Path(p) => Ok(p.trim_matches('/')),
            Target::SecretId(_) => Err(self.error(
                SinkErrorKind::Permanent,
                "a Vault sink takes `path`, not `secret_id`",
            )),
        }
    }

    /// Turns a vaultrs error into our error, with the path and Vault's own message; never the response body.
    fn map_err(&self, op: &str, path: &str, e: ClientError) -> SinkError {
        let full = if path.is_empty() {
            String::new()
        } else {
            format!(" {}/{}", self.mount, path)
        };
        match &e {
            ClientError::APIError { code, errors } => {
                // Vault's own words: untrusted text, masked like every other server's (SPEC §5.13).
                let msg = crate::redact::outside_text(&errors.join("; "), &[]);
                let (kind, hint) = match code {
                    400 if msg.contains("check-and-set") => (
                        SinkErrorKind::Conflict,
                        " (another writer changed the secret since it was read; not overwritten)",
                    ),
                    403 => (
                        SinkErrorKind::Forbidden,
                        " (the daemon's Vault token or its policy does not allow this: grant create, update and read on the KV path)",
                    ),
                    404 => (SinkErrorKind::Permanent, " (no such mount or path, or no permission to see it)"),
                    412 | 429 | 500..=599 => (SinkErrorKind::Unavailable, ""),
                    _ => (SinkErrorKind::Permanent, ""),
                };
                self.error(
                    kind,
                    format!("{op}{full}: Vault answered {code}: {msg}{hint}"),
                )
            }
            ClientError::RestClientError { source } => {
                use rustify::errors::ClientError as R;
                match source {
                    R::ServerResponseError { code, .. } => {
                        let kind = if *code == 429 || *code >= 500 {
                            SinkErrorKind::Unavailable
                        } else {
                            SinkErrorKind::Permanent
                        };
                        self.error(kind, format!("{op}{full}: Vault answered {code}"))
                    }
                    _ => self.error(
                        SinkErrorKind::Unavailable,
                        format!(
                            "{op}{full}: cannot reach Vault at {}: {}",
                            self.address,
                            describe(&e)
                        ),
                    ),
                }
            }
            _ => self.error(
                SinkErrorKind::Permanent,
                format!("{op}{full}: {}", describe(&e)),
            ),
        }
    }

    fn content_of(&self, data: &Value) -> Content {
        super::content_of_value(data)
    }
}

/// vaultrs puts the token into a header with `unwrap`: refuse a value that is not a valid header value.
fn check_header_value(token: &SecretString) -> Result<(), &'static str> {
    reqwest::header::HeaderValue::from_str(token.expose_secret())
        .map(|_| ())
        .map_err(|_| "the token contains characters that cannot be sent in a header")
}

/// A short description of a vaultrs error: its Display chain without any response content.
fn describe(e: &ClientError) -> String {
    let mut out = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        let text = s.to_string();
        // Response bodies are never part of our messages; rustify puts them only in ServerResponseError.content.
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        src = s.source();
    }
    crate::redact::outside_text(&out, &[])
}

fn reqwest_reason(e: &reqwest::Error) -> String {
    let mut out = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

fn is_not_found(e: &ClientError) -> bool {
    match e {
        ClientError::APIError { code: 404, .. } => true,
        ClientError::RestClientError { source } => matches!(
            source,
            rustify::errors::ClientError::ServerResponseError { code: 404, .. }
        ),
        _ => false,
    }
}

#[async_trait]
impl Sink for VaultSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn read(&self, target: &Target) -> Result<Observed, SinkError> {
        let seen = self.ensure_token().await?;
        match self.read_once(target).await {
            Err(e)
                if e.kind == SinkErrorKind::Forbidden
                    && self.refresh_after_denied(seen).await? =>
            {
                self.read_once(target).await
            }
            r => r,
        }
    }

    async fn write(
        &self,
        target: &Target,
        record: &SinkRecord,
        expected: Version,
    ) -> Result<(), SinkError> {
        let seen = self.ensure_token().await?;
        // A 403 means nothing was written: retrying with a new token is safe.
        match self.write_once(target, record, expected).await {
            Err(e)
                if e.kind == SinkErrorKind::Forbidden
                    && self.refresh_after_denied(seen).await? =>
            {
                self.write_once(target, record, expected).await
            }
            r => r,
        }
    }
}

impl VaultSink {
    async fn read_once(&self, target: &Target) -> Result<Observed, SinkError> {
        let path = self.path(target)?;
        // The version lookup takes the client lock itself: ask before holding it.
        let kv = self.kv_version().await?;
        let client = self.client.read().await;
        let client = &*client;
        if kv == 1 {
            return match vaultrs::kv1::get::<Value>(client, &self.mount, path).await {
                Ok(data) => Ok(Observed {
                    version: Version::Unversioned,
                    content: self.content_of(&data),
                }),
                Err(e) if is_not_found(&e) => Ok(Observed {
                    version: Version::Unversioned,
                    content: Content::Absent,
                }),
                Err(e) => Err(self.map_err("read", path, e)),
            };
        }
        let endpoint = ReadSecretRequest::builder()
            .mount(self.mount.as_str())
            .path(path)
            .build()
            .map_err(|e| self.error(SinkErrorKind::Permanent, format!("read {path}: {e}")))?;
        match vaultrs::api::exec_with_result(client, endpoint).await {
            Ok(resp) => Ok(Observed {
                version: Version::Kv2(resp.metadata.version),
                content: self.content_of(&resp.data),
            }),
            Err(e) if is_not_found(&e) => {
                // Missing key, or latest version soft-deleted/destroyed: CAS must name the key's current version.
                match vaultrs::kv2::read_metadata(client, &self.mount, path).await {
                    Ok(meta) => Ok(Observed {
                        version: Version::Kv2(meta.current_version),
                        content: Content::Absent,
                    }),
                    Err(e) if is_not_found(&e) => Ok(Observed {
                        version: Version::Absent,
                        content: Content::Absent,
                    }),
                    Err(e) => Err(self.map_err("read metadata of", path, e)),
                }
            }
            Err(e) => Err(self.map_err("read", path, e)),
        }
    }

    async fn write_once(
        &self,
        target: &Target,
        record: &SinkRecord,
        expected: Version,
    ) -> Result<(), SinkError> {
        let path = self.path(target)?;
        let data = record.to_json();
        let kv = self.kv_version().await?;
        let client = self.client.read().await;
        let client = &*client;
        if kv == 1 {
            // KV v1 has no versions: nothing to compare, the write replaces in place.
            let map: HashMap<&str, &Value> = data.iter().map(|(k, v)| (k.as_str(), v)).collect();
            return vaultrs::kv1::set(client, &self.mount, path, &map)
                .await
                .map_err(|e| self.map_err("write", path, e));
        }
        let cas = match expected {
            Version::Absent => 0,
            Version::Kv2(v) => u32::try_from(v).map_err(|_| {
                self.error(
                    SinkErrorKind::Permanent,
                    format!("write {path}: version {v} exceeds check-and-set range"),
                )
            })?,
            Version::Unversioned => {
                return Err(self.error(
                    SinkErrorKind::Conflict,
                    format!("write {path}: the mount changed from KV v1 to v2 since it was read"),
                ))
            }
            Version::Aws(_) | Version::Digest(_) => {
                return Err(self.error(
                    SinkErrorKind::Permanent,
                    format!("write {path}: the expected version is not a Vault version"),
                ))
            }
        };
        vaultrs::kv2::set_with_options(
            client,
            &self.mount,
            path,
            &data,
            SetSecretRequestOptions { cas },
        )
        .await
        .map(|_| ())
        .map_err(|e| self.map_err("write", path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    #[test]
    fn lease_renews_at_two_thirds_and_logs_in_when_it_cannot() {
        let renewable = Lease::from_ttl(at(0), 30, true);
        assert_eq!(renewable.due(at(0)), Due::Nothing);
        assert_eq!(renewable.due(at(19)), Due::Nothing);
        assert_eq!(renewable.due(at(20)), Due::Renew);
        assert_eq!(renewable.due(at(29)), Due::Renew);
        // Expired while the daemon slept: renewal is pointless.
        assert_eq!(renewable.due(at(30)), Due::Login);
        assert_eq!(renewable.due(at(3000)), Due::Login);
        // A clock that went backwards never triggers anything.
        assert_eq!(renewable.due(at(-100)), Due::Nothing);

        let fixed = Lease::from_ttl(at(0), 100, false);
        assert_eq!(fixed.due(at(89)), Due::Nothing);
        assert_eq!(fixed.due(at(90)), Due::Login);

        let root = Lease::from_ttl(at(0), 0, false);
        assert_eq!(root.ttl, None);
        assert_eq!(root.due(at(1_000_000)), Due::Nothing);
    }

    #[test]
    fn a_renewal_that_no_longer_extends_the_token_stops_renewing() {
        let lease = Lease::from_ttl(at(0), 30, true);
        // Renewed at 20 s for another 30 s: extended, still renewable.
        let next = lease.renewed(at(20), 30, true);
        assert!(next.renewable);
        assert_eq!(next.due(at(39)), Due::Nothing);
        assert_eq!(next.due(at(40)), Due::Renew);
        // Capped by the max TTL: the expiry stays at 50 s, so the token is used until then, then replaced.
        let capped = next.renewed(at(40), 10, true);
        assert!(!capped.renewable);
        assert_eq!(capped.due(at(48)), Due::Nothing);
        assert_eq!(capped.due(at(49)), Due::Login);
    }
}
