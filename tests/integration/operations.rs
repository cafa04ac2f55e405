//! The operator's commands and signals: `plan`, `rotate` (through the daemon and without one), `status`,
//! SIGHUP reload, and the systemd notify protocol.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use token_rotator_emulators::tfc::Config;

use crate::harness::{free_port, metric, wait_for, DaemonProc, Output, Stack};

/// The shared stack, listening on one port for the whole test.
struct Env {
    stack: Stack,
    listen: u16,
}

impl std::ops::Deref for Env {
    type Target = Stack;
    fn deref(&self) -> &Stack {
        &self.stack
    }
}

impl Env {
    async fn new() -> Env {
        Env {
            stack: Stack::new(Config::default()).await,
            listen: free_port(),
        }
    }

    /// An `organization` token of acme, or (`audit`) its audit-trails token: both manageable by acme's owners.
    fn token(name: &str, kind: &str) -> String {
        let ty = if kind == "audit" {
            "audit-trails"
        } else {
            "organization"
        };
        format!(
            "[tokens.{name}]\nissuer = \"tfc\"\ntype = \"{ty}\"\norganization = \"acme\"\nsinks = [{{ sink = \"vault\", path = \"ops/{name}\" }}]\n"
        )
    }

    fn policy(&self, tokens: &str) -> PathBuf {
        self.stack.write_policy(self.listen, "", "", tokens)
    }

    async fn cli(&self, args: &[&str], policy: &std::path::Path) -> Output {
        self.stack.cli(args, policy, &[]).await
    }

    async fn daemon(&self, policy: &std::path::Path) -> DaemonProc {
        self.stack.daemon(policy, self.listen, &[]).await
    }

    async fn token_id(&self, name: &str) -> Option<String> {
        self.bao
            .kv2_get("secret", &format!("ops/{name}"))
            .await
            .and_then(|r| r["token_id"].as_str().map(String::from))
    }
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(ok.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_shows_the_next_rotation_and_why_without_changing_anything() {
    let env = Env::new().await;
    let policy = env.policy(&Env::token("ci-org", "acme"));
    let out = env.cli(&["plan"], &policy).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("NEXT ROTATION"), "{}", out.stdout);
    assert!(
        out.stdout
            .contains("no record in the sinks: rotate at start-up"),
        "{}",
        out.stdout
    );
    assert_eq!(env.tfc.request_count(), 0, "plan never calls the issuer");
    assert!(
        env.token_id("ci-org").await.is_none(),
        "plan writes nothing"
    );

    assert_eq!(env.cli(&["run", "--once"], &policy).await.code, 0);
    let id = env.token_id("ci-org").await.unwrap();
    let out = env.cli(&["plan", "--json"], &policy).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let rows: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(rows[0]["token"], "ci-org");
    assert_eq!(rows[0]["current_token_id"], Value::String(id));
    assert!(
        rows[0]["reason"]
            .as_str()
            .unwrap()
            .contains("rotate 10d before"),
        "{rows}"
    );
    let next =
        chrono::DateTime::parse_from_rfc3339(rows[0]["next_rotation"].as_str().unwrap()).unwrap();
    let expires =
        chrono::DateTime::parse_from_rfc3339(rows[0]["expires_at"].as_str().unwrap()).unwrap();
    assert_eq!((expires - next).num_days(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_goes_through_the_running_daemon_and_status_reports_it() {
    let env = Env::new().await;
    let policy = env.policy(&Env::token("ci-org", "acme"));
    let daemon = env.daemon(&policy).await;
    let first = wait_for(Duration::from_secs(20), "first record", || {
        env.token_id("ci-org")
    })
    .await;

    let out = env.cli(&["rotate", "ci-org"], &policy).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("handed to the running daemon"),
        "{}",
        out.stderr
    );
    assert!(
        out.stdout.starts_with("ci-org: ok: rotated"),
        "{}",
        out.stdout
    );
    let second = env.token_id("ci-org").await.unwrap();
    assert_ne!(first, second);
    assert!(out.stdout.contains(&second));

    let out = env.cli(&["status", "--json"], &policy).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let rows: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(rows[0]["name"], "ci-org");
    assert_eq!(rows[0]["ready"], true);
    assert_eq!(rows[0]["current"]["token_id"], Value::String(second));
    let out = env.cli(&["status"], &policy).await;
    assert!(
        out.stdout.contains("READY") && out.stdout.contains("yes"),
        "{}",
        out.stdout
    );

    let out = env.cli(&["rotate", "nope"], &policy).await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("no token named nope"));
    let socket = env.work.state_dir().join("control.sock");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(daemon.terminate(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_without_a_daemon_rotates_under_the_lock_and_status_says_none_runs() {
    let env = Env::new().await;
    let policy = env.policy(&Env::token("ci-org", "acme"));
    let out = env.cli(&["rotate", "--all"], &policy).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!out.stderr.contains("handed to the running daemon"));
    let id = env.token_id("ci-org").await.expect("rotated locally");
    assert!(out.stdout.contains(&id));
    let out = env.cli(&["status"], &policy).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("no daemon is running"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_adds_and_removes_tokens_and_rejects_a_broken_policy() {
    let env = Env::new().await;
    let policy = env.policy(&Env::token("a", "acme"));
    let daemon = env.daemon(&policy).await;
    wait_for(Duration::from_secs(20), "token a", || env.token_id("a")).await;

    env.policy(&format!(
        "{}\n{}",
        Env::token("a", "acme"),
        Env::token("b", "audit")
    ));
    signal(daemon.pid(), "HUP");
    wait_for(Duration::from_secs(20), "token b after reload", || {
        env.token_id("b")
    })
    .await;

    // A broken policy is rejected, the old one kept, and the gauge says so.
    std::fs::write(&policy, "[tokens.a]\nissuer = 1\n").unwrap();
    signal(daemon.pid(), "HUP");
    let m = wait_for(Duration::from_secs(10), "rejected reload", || async {
        let m = daemon.metrics().await;
        (metric(&m, "token_rotator_config_last_reload_success", &[]) == Some(0.0)).then_some(m)
    })
    .await;
    assert_eq!(
        metric(&m, "token_rotator_token_ready", &[("token", "b")]),
        Some(1.0),
        "old policy kept"
    );
    assert!(
        daemon.stderr().contains("reload rejected"),
        "located errors are logged"
    );

    // Removing a token drops its series.
    env.policy(&Env::token("a", "acme"));
    signal(daemon.pid(), "HUP");
    wait_for(Duration::from_secs(10), "b dropped", || async {
        let m = daemon.metrics().await;
        (metric(&m, "token_rotator_token_ready", &[("token", "b")]).is_none()
            && metric(&m, "token_rotator_config_last_reload_success", &[]) == Some(1.0))
        .then_some(())
    })
    .await;
    assert!(
        !daemon.metrics().await.contains("token=\"b\""),
        "no stale series for a removed token"
    );
    assert_eq!(daemon.terminate(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_notify_ready_watchdog_and_stopping() {
    let env = Env::new().await;
    let policy = env.policy(&Env::token("ci-org", "acme"));
    let sock_path = env.work.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let notify = sock_path.display().to_string();
    let daemon = env
        .stack
        .daemon(
            &policy,
            env.listen,
            &[("NOTIFY_SOCKET", &notify), ("WATCHDOG_USEC", "400000")],
        )
        .await;
    let mut seen = String::new();
    let mut buf = [0u8; 512];
    while !(seen.contains("READY=1") && seen.contains("WATCHDOG=1")) {
        let n = sock.recv(&mut buf).expect("a notification within 20 s");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        seen.push('\n');
    }
    let pid = daemon.pid();
    signal(pid, "TERM");
    loop {
        let n = sock.recv(&mut buf).expect("STOPPING within 20 s");
        if String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1") {
            break;
        }
    }
    assert_eq!(daemon.terminate(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_online_proves_credentials_and_reads_sinks_without_changing_anything() {
    let env = Env::new().await;
    let policy = env.policy(&Env::token("ci-org", "org"));
    let out = env.cli(&["check", "--online"], &policy).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("issuer tfc: ok (credential accepted)"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("token ci-org → vault:ops/ci-org: ok (no record yet)"),
        "{}",
        out.stdout
    );

    let out = env
        .stack
        .cli(
            &["check", "--online"],
            &policy,
            &[("TFC_TOKEN", "not-a-valid-token")],
        )
        .await;
    assert_eq!(out.code, 1);
    assert!(
        out.stdout.contains("issuer tfc: FAILED") && out.stdout.contains("401"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("not-a-valid-token") && !out.stderr.contains("not-a-valid-token"));
    let creates = env
        .tfc
        .request_log()
        .iter()
        .filter(|r| r.method != "GET")
        .count();
    assert_eq!(creates, 0, "check --online only reads");
    assert!(env.token_id("ci-org").await.is_none(), "and writes nothing");
}

/// SPEC §3 `window`: a due rotation whose next window opens too late (less than `min_validity` would be left)
/// rotates at once, and says so in the logs and in `token_rotator_window_missed_total`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_that_opens_too_late_is_not_waited_for_and_is_counted() {
    let env = Env::new().await;
    // Seeded by an earlier rotation: 29 days old, expiring in 20 minutes.
    let now = token_rotator::clock::now();
    env.bao
        .kv2_put(
            "secret",
            "ops/ci-org",
            serde_json::json!({
                "token": "seeded.atlasv1.not-a-live-token",
                "token_id": "at-seeded",
                "issuer": "tfc",
                "type": "organization",
                "created_at": crate::harness::rfc3339(now - chrono::Duration::days(29)),
                "expires_at": crate::harness::rfc3339(now + chrono::Duration::minutes(20)),
            }),
        )
        .await;
    // The window opens on 1 January only; min_validity 1h is more than the 20 minutes left.
    let token = Env::token("ci-org", "acme")
        + "lifetime = \"30d\"\nrotate_before = \"2d\"\nwindow = \"0 3 1 1 *\"\nmin_validity = \"1h\"\n";
    let policy = env.policy(&token);
    let daemon = env.daemon(&policy).await;
    let text = wait_for(Duration::from_secs(30), "a rotation", || async {
        let m = daemon.metrics().await;
        (metric(
            &m,
            "token_rotator_rotations_total",
            &[("token", "ci-org"), ("result", "success")],
        ) == Some(1.0))
        .then_some(m)
    })
    .await;
    assert_eq!(
        metric(
            &text,
            "token_rotator_window_missed_total",
            &[("token", "ci-org")]
        ),
        Some(1.0),
        "{text}\n{}",
        daemon.stderr()
    );
    assert!(
        daemon.stderr().contains("opens too late"),
        "{}",
        daemon.stderr()
    );
    crate::harness::assert_valid_org_record(&env.tfc, &env.record("ops/ci-org").await);
}

/// `manual = true` (SPEC §10): the daemon watches the token but mints nothing by itself; `rotate NAME` does;
/// `plan` and `status` say why nothing is scheduled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_token_is_watched_and_rotated_only_by_rotate() {
    let env = Env::new().await;
    let tokens = Env::token("ci-org", "acme").replace(
        "organization = \"acme\"\n",
        "organization = \"acme\"\nmanual = true\n",
    );
    let policy = env.policy(&tokens);
    let org_tokens = || {
        env.tfc
            .all_tokens()
            .into_iter()
            .filter(|t| t.kind == token_rotator_emulators::tfc::TokenKind::Organization)
            .count()
    };
    let before = org_tokens();
    let daemon = env.daemon(&policy).await;

    // Not ready, with the reason and the command to run; nothing minted, nothing stored.
    let body = wait_for(
        Duration::from_secs(20),
        "the manual token reported",
        || async {
            let (code, body) = daemon.readyz().await;
            (code == 503 && body.to_string().contains("manual token with no record yet"))
                .then_some(body)
        },
    )
    .await;
    assert!(
        body.to_string().contains("token-rotator rotate ci-org"),
        "{body}"
    );
    assert_eq!(org_tokens(), before, "minted by itself");
    assert_eq!(env.token_id("ci-org").await, None);
    let plan = env.cli(&["plan"], &policy).await;
    assert!(
        plan.stdout
            .contains("manual: rotated only by `token-rotator rotate`"),
        "{}",
        plan.stdout
    );
    let status = env.cli(&["status", "--json"], &policy).await;
    let rows: Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(rows[0]["ready"], false, "{}", status.stdout);
    assert!(rows[0]["next_due"].is_null(), "{}", status.stdout);
    let metrics = daemon.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "token_rotator_token_ready",
            &[("token", "ci-org")]
        ),
        Some(0.0)
    );
    assert_eq!(
        metric(
            &metrics,
            "token_rotator_token_next_rotation_timestamp_seconds",
            &[("token", "ci-org")]
        ),
        None,
        "a manual token has no next rotation time"
    );

    // Asked: rotated once, stored, valid, ready.
    let out = env.cli(&["rotate", "ci-org"], &policy).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(org_tokens(), before + 1);
    let record = env.record("ops/ci-org").await;
    crate::harness::assert_valid_org_record(&env.tfc, &record);
    let (code, body) = daemon.readyz().await;
    assert_eq!(code, 200, "{body}");
    let status = env.cli(&["status"], &policy).await;
    assert!(status.stdout.contains("manual"), "{}", status.stdout);
    assert_eq!(daemon.terminate(), 0);
}

/// Liveness (SPEC §10): a token revoked at the issuer behind the daemon's back is found by the probe every
/// `verify_interval` (probes share whole-minute wake-ups) and replaced at once; a manual token found dead turns not
/// ready with a reason that says what happened, and nothing is minted for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_revoked_at_the_issuer_is_found_and_replaced_and_a_manual_one_turns_not_ready() {
    let env = Env::new().await;
    let tokens = format!(
        "{}{}",
        Env::token("ci-org", "acme"),
        Env::token("ci-audit", "audit").replace(
            "organization = \"acme\"\n",
            "organization = \"acme\"\nmanual = true\n",
        )
    );
    let policy = env.policy(&tokens);
    let text = std::fs::read_to_string(&policy).unwrap();
    std::fs::write(
        &policy,
        text.replacen("[daemon]\n", "[daemon]\nverify_interval = \"5s\"\n", 1),
    )
    .unwrap();
    let daemon = env.daemon(&policy).await;
    let org = wait_for(Duration::from_secs(20), "the org token stored", || {
        env.token_id("ci-org")
    })
    .await;
    let out = env.cli(&["rotate", "ci-audit"], &policy).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let audit = env.token_id("ci-audit").await.unwrap();
    let creates = || env.tfc.all_tokens().len();
    let before = creates();

    env.tfc.revoke(&org);
    env.tfc.revoke(&audit);
    // verify_interval (5 s) rounded up to a whole minute, the confirming probe 10 s later, and the rotation.
    let replaced = wait_for(
        Duration::from_secs(100),
        "the revoked org token replaced",
        || async { env.token_id("ci-org").await.filter(|id| *id != org) },
    )
    .await;
    crate::harness::assert_valid_org_record(&env.tfc, &env.record("ops/ci-org").await);
    let body = wait_for(
        Duration::from_secs(100),
        "the manual token reported dead",
        || async {
            let (code, body) = daemon.readyz().await;
            (code == 503
                && body
                    .to_string()
                    .contains("refused by the issuer (401 at the liveness probe, twice)"))
            .then_some(body)
        },
    )
    .await;
    assert!(body.to_string().contains("ci-audit"), "{body}");
    assert!(
        body.to_string().contains("token-rotator rotate ci-audit"),
        "{body}"
    );
    assert_eq!(
        env.token_id("ci-audit").await.as_deref(),
        Some(audit.as_str()),
        "the manual token was rotated"
    );
    assert_eq!(
        creates(),
        before + 1,
        "one create: the org token's successor ({replaced})"
    );
    assert!(
        daemon.stderr().contains("the current token is dead"),
        "{}",
        daemon.stderr()
    );
    assert_eq!(daemon.terminate(), 0);
}
