//! The sink's own Vault token: how it logs in (token, AppRole, Kubernetes), its lease, renewal at two thirds of
//! the TTL, and a new login after a denial (secret-stores.md A.3–A.5).

use std::time::Duration;

use chrono::{DateTime, Utc};
use vaultrs::api::AuthInfo;
use vaultrs::client::{Client as _, VaultClient};
use vaultrs::error::ClientError;

use super::{check_header_value, VaultAuth, VaultSink};
use crate::policy::SecretRef;
use crate::secret::{ExposeSecret, SecretString};
use crate::sink::{SinkError, SinkErrorKind};

/// The token's lease as last learned (login, renewal or lookup), and a counter bumped at each new token so that
/// concurrent operations denied at once log in only once.
pub(super) struct Session {
    pub(super) lease: Option<Lease>,
    pub(super) generation: u64,
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

impl VaultSink {
    /// Makes sure the token is usable for the next operation (renewal or login when due); returns the token's
    /// generation for [`Self::refresh_after_denied`].
    pub(super) async fn ensure_token(&self) -> Result<u64, SinkError> {
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
    pub(super) async fn refresh_after_denied(&self, seen: u64) -> Result<bool, SinkError> {
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
            VaultAuth::Token { token } => {
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
            VaultAuth::AppRole {
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
            VaultAuth::Kubernetes {
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
