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
mod session;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::{Mutex, OnceCell, RwLock};
use vaultrs::api::kv2::requests::{ReadSecretRequest, SetSecretRequestOptions};
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;

use super::{Content, Observed, Sink, SinkError, SinkErrorKind, Target, Version};
use crate::policy::{SecretRef, SinkSettings};
use crate::record::SinkRecord;
use crate::secret::{ExposeSecret, SecretString};
pub use config::{VaultAuth, VaultSinkConfig, VaultSpec};
use session::Session;
pub use session::{Due, Lease};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub struct VaultSink {
    name: String,
    mount: String,
    address: String,
    configured_kv: Option<u8>,
    detected_kv: OnceCell<u8>,
    /// Holds the current Vault token; swapped under the write lock at login.
    client: RwLock<VaultClient>,
    /// How the sink logs in (from its `auth` table).
    login: VaultAuth,
    session: Mutex<Session>,
}

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
        let token = match &cfg.auth {
            VaultAuth::Token { token } => {
                let value = token
                    .resolve_local()
                    .map_err(|e| err(SinkErrorKind::Permanent, format!("Vault token: {e}")))?;
                check_header_value(&value)
                    .map_err(|why| err(SinkErrorKind::Permanent, format!("Vault token: {why}")))?;
                value
            }
            VaultAuth::AppRole { secret_id, .. } => {
                if matches!(secret_id, SecretRef::Sink { .. }) {
                    return Err(err(
                        SinkErrorKind::Permanent,
                        "AppRole `secret_id` must be an `env` or `file` reference".into(),
                    ));
                }
                SecretString::from(String::new())
            }
            VaultAuth::Kubernetes { .. } => SecretString::from(String::new()),
        };
        let login = cfg.auth.clone();
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
                    crate::redact::error_chain(&e)
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
            other => Err(self.error(
                SinkErrorKind::Permanent,
                format!("a Vault sink takes `path`, not {other}"),
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
pub(super) fn check_header_value(token: &SecretString) -> Result<(), &'static str> {
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
        let path = self.path(target)?;
        self.logged_in(|| self.read_once(path)).await
    }

    async fn write(
        &self,
        target: &Target,
        record: &SinkRecord,
        expected: Version,
    ) -> Result<(), SinkError> {
        let path = self.path(target)?;
        // A 403 means nothing was written: retrying with a new token is safe.
        self.logged_in(|| self.write_once(path, record, expected))
            .await
    }
}

impl VaultSink {
    /// Runs `op` logged in; a 403 (the token expired or was revoked under us) logs in again and runs it once more
    /// (a refused request changed nothing).
    async fn logged_in<T, F, Fut>(&self, op: F) -> Result<T, SinkError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, SinkError>>,
    {
        let seen = self.ensure_token().await?;
        match op().await {
            Err(e)
                if e.kind == SinkErrorKind::Forbidden
                    && self.refresh_after_denied(seen).await? =>
            {
                op().await
            }
            r => r,
        }
    }

    /// A KV v2 secret of this sink's mount as JSON, with its current version (`0`: never written; a deleted
    /// latest version reads as `None` with its version). For the cluster lease and shared journal (SPEC §8).
    pub async fn kv2_read(&self, path: &str) -> Result<(Option<Value>, u64), SinkError> {
        self.logged_in(|| self.kv2_read_once(path)).await
    }

    /// Writes a KV v2 secret if its current version is still `cas` (`0`: it must not exist). Returns the new
    /// version. A mismatch is a [`SinkErrorKind::Conflict`] and writes nothing.
    pub async fn kv2_write(&self, path: &str, data: &Value, cas: u64) -> Result<u64, SinkError> {
        self.logged_in(|| self.kv2_write_once(path, data, cas))
            .await
    }

    async fn kv2_read_once(&self, path: &str) -> Result<(Option<Value>, u64), SinkError> {
        let client = self.client.read().await;
        let client = &*client;
        let endpoint = ReadSecretRequest::builder()
            .mount(self.mount.as_str())
            .path(path)
            .build()
            .map_err(|e| self.error(SinkErrorKind::Permanent, format!("read {path}: {e}")))?;
        match vaultrs::api::exec_with_result(client, endpoint).await {
            Ok(resp) => Ok((Some(resp.data), resp.metadata.version)),
            Err(e) if is_not_found(&e) => {
                // Missing key, or latest version soft-deleted/destroyed: CAS must name the key's current version.
                match vaultrs::kv2::read_metadata(client, &self.mount, path).await {
                    Ok(meta) => Ok((None, meta.current_version)),
                    Err(e) if is_not_found(&e) => Ok((None, 0)),
                    Err(e) => Err(self.map_err("read metadata of", path, e)),
                }
            }
            Err(e) => Err(self.map_err("read", path, e)),
        }
    }

    async fn kv2_write_once(
        &self,
        path: &str,
        data: &(impl serde::Serialize + Sync),
        cas: u64,
    ) -> Result<u64, SinkError> {
        let cas = u32::try_from(cas).map_err(|_| {
            self.error(
                SinkErrorKind::Permanent,
                format!("write {path}: version {cas} exceeds check-and-set range"),
            )
        })?;
        let client = self.client.read().await;
        vaultrs::kv2::set_with_options(
            &*client,
            &self.mount,
            path,
            data,
            SetSecretRequestOptions { cas },
        )
        .await
        .map(|meta| meta.version)
        .map_err(|e| self.map_err("write", path, e))
    }
}

impl VaultSink {
    async fn read_once(&self, path: &str) -> Result<Observed, SinkError> {
        // The version lookup takes the client lock itself: ask before holding it.
        if self.kv_version().await? == 1 {
            let client = self.client.read().await;
            return match vaultrs::kv1::get::<Value>(&*client, &self.mount, path).await {
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
        let (data, version) = self.kv2_read_once(path).await?;
        Ok(Observed {
            version: if version == 0 {
                Version::Absent
            } else {
                Version::Kv2(version)
            },
            content: data.map(|d| self.content_of(&d)).unwrap_or(Content::Absent),
        })
    }

    async fn write_once(
        &self,
        path: &str,
        record: &SinkRecord,
        expected: Version,
    ) -> Result<(), SinkError> {
        let data = record.to_json();
        if self.kv_version().await? == 1 {
            // KV v1 has no versions: nothing to compare, the write replaces in place.
            let client = self.client.read().await;
            let map: HashMap<&str, &Value> = data.iter().map(|(k, v)| (k.as_str(), v)).collect();
            return vaultrs::kv1::set(&*client, &self.mount, path, &map)
                .await
                .map_err(|e| self.map_err("write", path, e));
        }
        let cas = match expected {
            Version::Absent => 0,
            Version::Kv2(v) => v,
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
        self.kv2_write_once(path, &data, cas).await.map(|_| ())
    }
}
