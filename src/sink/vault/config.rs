//! The `[sinks.NAME]` table of `kind = "vault"` (HashiCorp Vault / OpenBao KV, SPEC §3).

use std::any::Any;
use std::path::PathBuf;
use std::sync::Arc;

use serde_spanned::Spanned;

use crate::policy::diag::Diagnostics;
use crate::policy::fields::{
    check_address, non_empty, read_local_secret_ref, read_path, read_secret_ref,
};
use crate::policy::kinds::{SinkSettings, SinkSpec, TargetKey};
use crate::policy::reader::TableReader;
use crate::policy::SecretRef;

#[derive(Clone, Debug)]
pub struct VaultSinkConfig {
    pub address: String,
    pub mount: String,
    pub namespace: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub kv_version: Option<u8>,
    pub auth: VaultAuth,
}

impl SinkSettings for VaultSinkConfig {
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// How the daemon gets its own Vault token.
#[derive(Clone, Debug)]
pub enum VaultAuth {
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

impl VaultAuth {
    pub fn method(&self) -> &'static str {
        match self {
            VaultAuth::Token { .. } => "token",
            VaultAuth::AppRole { .. } => "approle",
            VaultAuth::Kubernetes { .. } => "kubernetes",
        }
    }
}

/// Where Kubernetes mounts a pod's service-account token.
const DEFAULT_K8S_JWT_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// `mount` of a Vault auth method: default the method's name, no surrounding slashes.
fn read_auth_mount(a: &mut TableReader, d: &mut Diagnostics, default: &str) -> Option<String> {
    match a.opt_str(d, "mount") {
        Some(m) => non_empty(d, m, "mount").map(|m| m.trim_matches('/').to_string()),
        None => Some(default.to_string()),
    }
}

fn read_auth(a: &mut TableReader, d: &mut Diagnostics) -> Option<VaultAuth> {
    let method = a.req_str(d, "method");
    match method.as_ref().map(|m| m.get_ref().as_str()) {
        Some("token") => read_secret_ref(a, d, "token").map(|token| VaultAuth::Token { token }),
        Some("approle") => {
            let mount = read_auth_mount(a, d, "approle");
            let role_id = a
                .req_str(d, "role_id")
                .and_then(|r| non_empty(d, r, "role_id"));
            let secret_id = read_local_secret_ref(a, d, "secret_id");
            Some(VaultAuth::AppRole {
                mount: mount?,
                role_id: role_id?,
                secret_id: secret_id?,
            })
        }
        Some("kubernetes") => {
            let mount = read_auth_mount(a, d, "kubernetes");
            let role = a.req_str(d, "role").and_then(|r| non_empty(d, r, "role"));
            let jwt_file = if a.has("jwt_file") {
                read_path(a, d, "jwt_file")
            } else {
                Some(PathBuf::from(DEFAULT_K8S_JWT_FILE))
            };
            Some(VaultAuth::Kubernetes {
                mount: mount?,
                role: role?,
                jwt_file: jwt_file?,
            })
        }
        Some(other) => {
            d.push(
                method.as_ref().map(|s| s.span()).unwrap_or(a.span.clone()),
                format!("unknown Vault auth `method = \"{other}\"`; expected one of: token, approle, kubernetes"),
            );
            a.allow(&["mount", "role_id", "secret_id", "role", "jwt_file", "token"]);
            None
        }
        None => None,
    }
}

/// The policy side of `kind = "vault"`.
pub struct VaultSpec;

impl SinkSpec for VaultSpec {
    fn name(&self) -> &'static str {
        "vault"
    }

    fn target_key(&self) -> TargetKey {
        TargetKey::Path
    }

    fn coordination(&self, settings: &dyn SinkSettings) -> Result<(), String> {
        match settings.as_any().downcast_ref::<VaultSinkConfig>() {
            Some(cfg) if cfg.kv_version == Some(1) => Err(
                "the cluster lease needs check-and-set, which KV v1 lacks: use a sink on a KV v2 mount".into(),
            ),
            _ => Ok(()),
        }
    }

    fn keys(&self) -> &'static [&'static str] {
        &[
            "address",
            "mount",
            "namespace",
            "ca_file",
            "kv_version",
            "auth",
        ]
    }

    fn read(&self, t: &mut TableReader, d: &mut Diagnostics) -> Option<Arc<dyn SinkSettings>> {
        let address = t
            .req_str(d, "address")
            .and_then(|a| check_address(d, "address", &t.name, &a).then(|| a.into_inner()));
        let mount = match t.opt_str(d, "mount") {
            Some(m) => non_empty(d, m, "mount").map(|m| m.trim_matches('/').to_string()),
            None => Some("secret".to_string()),
        };
        let namespace = t.opt_str(d, "namespace").map(Spanned::into_inner);
        let ca_file = read_path(t, d, "ca_file");
        let kv_version = t
            .opt_int(d, "kv_version", 1..=2)
            .map(|v| v.into_inner() as u8);
        let auth = match t.opt_table(d, "auth") {
            None => {
                if !t.has("auth") {
                    t.missing(
                        d,
                        "auth",
                        " (e.g. `auth = { method = \"token\", token = { env = \"VAULT_TOKEN\" } }`)",
                    );
                }
                None
            }
            Some(mut a) => {
                let auth = read_auth(&mut a, d);
                a.finish(d);
                auth
            }
        };
        Some(Arc::new(VaultSinkConfig {
            address: address?.trim_end_matches('/').to_string(),
            mount: mount?,
            namespace,
            ca_file,
            kv_version,
            auth: auth?,
        }))
    }
}
