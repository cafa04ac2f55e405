//! Telling consumers (SPEC §9): one `exec` or `webhook` action run for one event. What runs when, in which order,
//! and how often it is tried again is the rotation's business (`rotation/notify.rs`, journaled); this module only
//! runs an action once, bounded by its timeout, and says whether it worked.
//!
//! Neither kind ever carries the token value: an `exec` program gets the event in its environment (cleared first:
//! the daemon's own environment may hold credentials) with an empty stdin; a webhook gets the event as JSON,
//! signed with HMAC-SHA256 (RFC 2104, as GitHub signs its webhooks: `X-Hub-Signature-256: sha256=<hex>`,
//! <https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries>).

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use secrecy::ExposeSecret;
use sha2::Sha256;
use tokio::io::AsyncReadExt;

use crate::policy::notify::{ActionTarget, NotifyAction};
use crate::secret::SecretString;

/// What an action is told: the SPEC §9 fields, never the value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub event: String,
    /// The policy name of the token.
    pub token: String,
    pub token_id: Option<String>,
    pub issuer: String,
    pub token_type: String,
    pub created_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    /// The same for every try of one notice: receivers can drop a repeated delivery.
    pub delivery: String,
}

fn time(t: Option<DateTime<Utc>>) -> String {
    t.map(crate::record::rfc3339).unwrap_or_default()
}

impl Message {
    /// The webhook body: exactly the SPEC §9 keys.
    pub fn body(&self) -> Vec<u8> {
        let t = |v: Option<DateTime<Utc>>| {
            v.map(|t| serde_json::Value::String(crate::record::rfc3339(t)))
                .unwrap_or(serde_json::Value::Null)
        };
        serde_json::to_vec(&serde_json::json!({
            "event": self.event,
            "token": self.token,
            "token_id": self.token_id,
            "issuer": self.issuer,
            "type": self.token_type,
            "created_at": t(self.created_at),
            "expires_at": t(self.expires_at),
        }))
        .expect("a JSON object of strings serialises")
    }

    /// The variables an `exec` program gets (SPEC §9, plus the creation time and the delivery id).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("TOKEN_ROTATOR_EVENT", self.event.clone()),
            ("TOKEN_ROTATOR_TOKEN", self.token.clone()),
            (
                "TOKEN_ROTATOR_TOKEN_ID",
                self.token_id.clone().unwrap_or_default(),
            ),
            ("TOKEN_ROTATOR_ISSUER", self.issuer.clone()),
            ("TOKEN_ROTATOR_TYPE", self.token_type.clone()),
            ("TOKEN_ROTATOR_CREATED_AT", time(self.created_at)),
            ("TOKEN_ROTATOR_EXPIRES_AT", time(self.expires_at)),
            ("TOKEN_ROTATOR_DELIVERY", self.delivery.clone()),
        ]
    }
}

/// `sha256=<hex>` of the HMAC-SHA256 of `body` keyed with `secret`.
pub fn signature(secret: &SecretString, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.expose_secret().as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in digest.iter() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// How actions are carried out: processes and HTTPS (the daemon), or a model (the simulation, tests).
#[async_trait]
pub trait Deliver: Send + Sync {
    /// Runs `action` once for `message`; `secret` is the webhook's resolved key. `Err` says why it failed, in
    /// words fit for a log (no value of any secret).
    async fn deliver(
        &self,
        action: &NotifyAction,
        message: &Message,
        secret: Option<&SecretString>,
    ) -> Result<(), String>;
}

/// The variables an action's process keeps from the daemon's environment; everything else is cleared (the daemon
/// may hold credentials in its environment, and an action never receives one).
const KEPT_ENV: &[&str] = &["PATH", "HOME", "LANG", "LC_ALL", "TZ"];
/// What a process is given as `PATH` when the daemon has none.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// How much of a failing program's stderr reaches the log.
const STDERR_KEPT: usize = 2048;
/// How long stderr is still read after the program exited (a process it started may keep the pipe open).
const STDERR_DRAIN: Duration = Duration::from_millis(500);

/// The real thing: child processes and HTTPS.
#[derive(Default)]
pub struct Network {
    client: std::sync::OnceLock<Result<reqwest::Client, String>>,
}

impl Network {
    pub fn new() -> Arc<Self> {
        Arc::new(Network::default())
    }

    fn client(&self) -> Result<reqwest::Client, String> {
        self.client
            .get_or_init(|| crate::http::client(None).map_err(|e| e.to_string()))
            .clone()
    }

    async fn exec(
        &self,
        program: &std::path::Path,
        args: &[String],
        timeout: Duration,
        message: &Message,
    ) -> Result<(), String> {
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .current_dir("/")
            // Its own process group, so that a timeout ends whatever it started too.
            .process_group(0)
            .kill_on_drop(true);
        for k in KEPT_ENV {
            if let Some(v) = std::env::var_os(k) {
                cmd.env(k, v);
            }
        }
        if std::env::var_os("PATH").is_none() {
            cmd.env("PATH", DEFAULT_PATH);
        }
        for (k, v) in message.env() {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
        let pid = child.id();
        let mut stderr = child.stderr.take();
        let run = async {
            // Keep the start of stderr while waiting, so a chatty program never blocks on a full pipe; but the exit
            // decides, not the pipe: something the program started may hold stderr open long after it exited.
            let mut kept = Vec::new();
            let mut buf = [0u8; 4096];
            let keep = |kept: &mut Vec<u8>, n: usize, buf: &[u8]| {
                let room = STDERR_KEPT.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            };
            let status = loop {
                let Some(err) = stderr.as_mut() else {
                    break child.wait().await;
                };
                tokio::select! {
                    status = child.wait() => break status,
                    read = err.read(&mut buf) => match read {
                        Ok(0) | Err(_) => stderr = None,
                        Ok(n) => keep(&mut kept, n, &buf),
                    },
                }
            };
            // What the program wrote just before it exited, briefly.
            if let Some(err) = stderr.as_mut() {
                let _ = tokio::time::timeout(STDERR_DRAIN, async {
                    while let Ok(n @ 1..) = err.read(&mut buf).await {
                        keep(&mut kept, n, &buf);
                    }
                })
                .await;
            }
            (status, kept)
        };
        match tokio::time::timeout(timeout, run).await {
            Ok((Ok(status), _)) if status.success() => Ok(()),
            Ok((Ok(status), kept)) => {
                let what = match status.code() {
                    Some(code) => format!("exited with status {code}"),
                    None => "was killed by a signal".to_string(),
                };
                let said = crate::redact::outside_text(&String::from_utf8_lossy(&kept), &[]);
                let said = said.trim();
                Err(if said.is_empty() {
                    format!("{} {what}", program.display())
                } else {
                    format!("{} {what}: {said}", program.display())
                })
            }
            Ok((Err(e), _)) => Err(format!("waiting for {} failed: {e}", program.display())),
            Err(_) => {
                // The child leads its own group and was not reaped (wait did not return), so the id is still its
                // own; the direct child is also killed when `child` is dropped.
                if let Some(pid) = pid.and_then(|p| rustix::process::Pid::from_raw(p as i32)) {
                    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
                }
                Err(format!(
                    "{} did not finish within {}s; it was killed",
                    program.display(),
                    timeout.as_secs()
                ))
            }
        }
    }

    async fn webhook(
        &self,
        url: &str,
        timeout: Duration,
        message: &Message,
        secret: &SecretString,
    ) -> Result<(), String> {
        let client = self.client()?;
        let body = message.body();
        let signature = signature(secret, &body);
        let sent = client
            .post(url)
            .timeout(timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("X-Token-Rotator-Event", &message.event)
            .header("X-Token-Rotator-Delivery", &message.delivery)
            .header("X-Token-Rotator-Signature-256", signature)
            .body(body)
            .send()
            .await
            .map_err(|e| crate::http::reason(&e.without_url()))?;
        let status = sent.status();
        // The answer's body is not read: a receiver may echo what it was sent, and only the status counts.
        drop(sent);
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("answered {}", status.as_u16()))
        }
    }
}

#[async_trait]
impl Deliver for Network {
    async fn deliver(
        &self,
        action: &NotifyAction,
        message: &Message,
        secret: Option<&SecretString>,
    ) -> Result<(), String> {
        match &action.target {
            ActionTarget::Exec { program, args } => {
                self.exec(program, args, action.timeout, message).await
            }
            ActionTarget::Webhook { url, .. } => {
                let secret = secret.ok_or("the webhook's secret is not available")?;
                self.webhook(url, action.timeout, message, secret).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> Message {
        Message {
            event: "rotated".into(),
            token: "ci".into(),
            token_id: Some("at-1".into()),
            issuer: "tfc".into(),
            token_type: "team".into(),
            created_at: None,
            expires_at: None,
            delivery: "d1".into(),
        }
    }

    fn sh(script: &str, timeout: Duration) -> NotifyAction {
        NotifyAction {
            target: ActionTarget::Exec {
                program: "/bin/sh".into(),
                args: vec!["-c".into(), script.into()],
            },
            timeout,
        }
    }

    /// A program that exits while something it started keeps stderr open has finished: its exit decides.
    #[tokio::test]
    async fn an_exec_action_ends_with_its_program_not_with_its_stderr() {
        // (Were the pipe to decide, this would run into its timeout and fail.)
        let action = sh(
            "sleep 20 & echo started >&2; exit 0",
            Duration::from_secs(5),
        );
        let r = Network::default().deliver(&action, &message(), None).await;
        assert_eq!(r, Ok(()));
        let action = sh("echo 'no luck' >&2; exit 3", Duration::from_secs(60));
        let r = Network::default().deliver(&action, &message(), None).await;
        assert_eq!(r, Err("/bin/sh exited with status 3: no luck".to_string()));
    }

    /// A program past its timeout is killed with everything it started (its process group).
    #[tokio::test]
    async fn an_exec_action_past_its_timeout_is_killed_with_its_group() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("survived");
        let action = sh(
            &format!("(sleep 3; touch {}) & sleep 30", marker.display()),
            Duration::from_secs(1),
        );
        let r = Network::default().deliver(&action, &message(), None).await;
        assert_eq!(
            r,
            Err("/bin/sh did not finish within 1s; it was killed".to_string())
        );
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert!(
            !marker.exists(),
            "a process the action started outlived its timeout"
        );
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_the_exact_body() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let key = SecretString::from("Jefe".to_string());
        assert_eq!(
            signature(&key, b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn the_body_has_exactly_the_spec_keys_and_no_value() {
        let m = Message {
            event: "rotated".into(),
            token: "ci".into(),
            token_id: Some("at-1".into()),
            issuer: "tfc".into(),
            token_type: "team".into(),
            created_at: Some("2026-12-04T10:00:00Z".parse().unwrap()),
            expires_at: None,
            delivery: "d1".into(),
        };
        let v: serde_json::Value = serde_json::from_slice(&m.body()).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "created_at",
                "event",
                "expires_at",
                "issuer",
                "token",
                "token_id",
                "type"
            ]
        );
        assert_eq!(v["created_at"], "2026-12-04T10:00:00Z");
        assert!(v["expires_at"].is_null());
    }
}
