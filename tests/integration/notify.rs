//! Telling consumers (SPEC §9), end to end against the TFC emulator and a real OpenBao: a webhook receiver and an
//! `exec` program look, at the moment they are run, at what a consumer would see — the new token already in the
//! sink, the old one still accepted by the issuer — and at what they were given (never a token value).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;
use token_rotator_emulators::tfc::{Config, TfcHandle, TokenState};

use crate::harness::{free_port, metric, wait_for, Bao, Stack, ROOT_TOKEN};

const HOOK_SECRET: &str = "hook-secret-for-tests-0123456789";

/// What the receiver saw of one delivery, checked while the request was in flight.
#[derive(Clone, Debug)]
struct Seen {
    body: Value,
    delivery: String,
    event: String,
    signature_ok: bool,
    /// The `token_id` the sink held when the hook ran.
    sink_token_id: Option<String>,
    /// Whether each token id the test asked about was still accepted by the issuer when the hook ran.
    still_valid: Vec<(String, bool)>,
    answered: u16,
}

#[derive(Clone)]
struct Receiver {
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Deliveries answered 503 before the receiver accepts (to see the retry).
    fail_first: Arc<Mutex<u32>>,
    /// Token ids whose validity the receiver notes at each delivery.
    watch: Arc<Mutex<Vec<String>>>,
    tfc: TfcHandle,
    bao_addr: String,
    sink_path: String,
}

async fn hook(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |k: &str| {
        headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(HOOK_SECRET.as_bytes()).unwrap();
    mac.update(&body);
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let signature_ok = header("x-token-rotator-signature-256") == format!("sha256={expected}")
        && header("content-type") == "application/json";
    // What a consumer fetching the token right now would get.
    let resp = reqwest::Client::new()
        .get(format!("{}/v1/secret/data/{}", r.bao_addr, r.sink_path))
        .header("X-Vault-Token", ROOT_TOKEN)
        .send()
        .await
        .ok()
        .filter(|resp| resp.status().is_success());
    let record: Option<Value> = match resp {
        Some(resp) => resp.json().await.ok(),
        None => None,
    };
    let sink_token_id = record
        .as_ref()
        .and_then(|v| v.pointer("/data/data/token_id"))
        .and_then(Value::as_str)
        .map(String::from);
    let watch = r.watch.lock().unwrap().clone();
    let still_valid = watch
        .iter()
        .map(|id| {
            let ok = r
                .tfc
                .token_info(id)
                .is_some_and(|i| i.state == TokenState::Active);
            (id.clone(), ok)
        })
        .collect();
    let answered = {
        let mut left = r.fail_first.lock().unwrap();
        if *left > 0 {
            *left -= 1;
            503
        } else {
            204
        }
    };
    r.seen.lock().unwrap().push(Seen {
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        delivery: header("x-token-rotator-delivery"),
        event: header("x-token-rotator-event"),
        signature_ok,
        sink_token_id,
        still_valid,
        answered,
    });
    StatusCode::from_u16(answered).unwrap()
}

async fn start_receiver(r: Receiver) -> u16 {
    let port = free_port();
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .with_state(r);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

/// A receiver listening for `stack`'s token stored at `sink_path`, and the handles the tests steer it with.
struct Hook {
    seen: Arc<Mutex<Vec<Seen>>>,
    fail_first: Arc<Mutex<u32>>,
    watch: Arc<Mutex<Vec<String>>>,
    port: u16,
}

impl Hook {
    async fn start(stack: &Stack, sink_path: &str) -> Hook {
        let r = Receiver {
            seen: Arc::default(),
            fail_first: Arc::default(),
            watch: Arc::default(),
            tfc: stack.tfc.clone(),
            bao_addr: stack.bao.addr.clone(),
            sink_path: sink_path.into(),
        };
        let (seen, fail_first, watch) = (r.seen.clone(), r.fail_first.clone(), r.watch.clone());
        Hook {
            port: start_receiver(r).await,
            seen,
            fail_first,
            watch,
        }
    }
}

/// An `exec` program that writes what it got (arguments, environment, stdin) into `out/<n>`.
fn hook_script(dir: &Path) -> PathBuf {
    let path = dir.join("hook.sh");
    std::fs::write(
        &path,
        "#!/bin/sh\nn=$(ls \"$1\" | wc -l)\n{ echo \"ARGS=$*\"; env; echo STDIN-BEGIN; cat; echo STDIN-END; } > \"$1/run-$n\"\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn runs(out: &Path) -> Vec<String> {
    let mut names: Vec<_> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    names
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect()
}

async fn record_id(bao: &Bao, path: &str) -> Option<String> {
    bao.kv2_get("secret", path)
        .await
        .and_then(|r| r["token_id"].as_str().map(String::from))
}

/// The `rotated` actions run after the new token is in the sink and proven, while the old one still works, in
/// order, retried after a failure with the same delivery id; the old token is revoked only after they succeeded.
/// Neither the program nor the webhook is given a token value or a credential of the daemon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_are_told_with_the_new_token_stored_and_the_old_one_alive() {
    let stack = Stack::new(Config::default()).await;
    let team = stack.tfc.add_team("acme", "platform");
    let hook = Hook::start(&stack, "hooks/ci-team").await;
    let (seen, watch, port) = (&hook.seen, &hook.watch, hook.port);
    let out = stack.work.path().join("exec-out");
    std::fs::create_dir(&out).unwrap();
    let script = hook_script(stack.work.path());
    let listen = free_port();
    let tokens = format!(
        r#"[tokens.ci-team]
issuer = "tfc"
type = "team"
team_id = "{team}"
lifetime = "1h"
grace = "0s"
sinks = [{{ sink = "vault", path = "hooks/ci-team" }}]
notify = [
  {{ exec = ["{script}", "{out}"], timeout = "20s" }},
  {{ webhook = "http://127.0.0.1:{port}/hook", secret = {{ env = "HOOK_SECRET" }}, timeout = "5s" }},
]
"#,
        script = script.display(),
        out = out.display(),
    );
    let policy = stack.write_policy(listen, "", "", &tokens);
    let daemon = stack
        .daemon(&policy, listen, &[("HOOK_SECRET", HOOK_SECRET)])
        .await;
    let first = wait_for(Duration::from_secs(30), "the first delivery", || async {
        let s = seen.lock().unwrap().clone();
        s.first().cloned()
    })
    .await;
    let first_id = record_id(&stack.bao, "hooks/ci-team").await.unwrap();
    assert_eq!(
        first.body["token_id"],
        first_id.as_str(),
        "{:?}",
        first.body
    );
    assert_eq!(first.sink_token_id.as_deref(), Some(first_id.as_str()));

    // The second rotation: its predecessor must still work while the consumers are told.
    *watch.lock().unwrap() = vec![first_id.clone()];
    let seen_before = seen.lock().unwrap().len();
    let out_rotate = stack.cli(&["rotate", "ci-team"], &policy, &[]).await;
    assert_eq!(
        out_rotate.code, 0,
        "{}\n{}",
        out_rotate.stdout, out_rotate.stderr
    );
    let second = wait_for(Duration::from_secs(30), "the second delivery", || async {
        let s = seen.lock().unwrap().clone();
        s.get(seen_before).cloned()
    })
    .await;
    let second_id = record_id(&stack.bao, "hooks/ci-team").await.unwrap();
    assert_ne!(second_id, first_id);
    assert_eq!(second.event, "rotated");
    assert!(second.signature_ok, "{second:?}");
    assert_eq!(second.body["token_id"], second_id.as_str());
    assert_eq!(second.sink_token_id.as_deref(), Some(second_id.as_str()));
    assert_eq!(second.still_valid, vec![(first_id.clone(), true)]);
    let body = second.body.as_object().unwrap();
    let mut keys: Vec<&str> = body.keys().map(String::as_str).collect();
    keys.sort_unstable();
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
    assert_eq!(body["token"], "ci-team");
    assert_eq!(body["issuer"], "tfc");
    assert_eq!(body["type"], "team");
    // Then (grace 0s) the old token goes.
    wait_for(Duration::from_secs(20), "the old token revoked", || async {
        (stack.tfc.token_info(&first_id).unwrap().state == TokenState::Revoked).then_some(())
    })
    .await;

    // The program ran first for each rotation, with the documented environment and nothing secret.
    let new_value = stack.record("hooks/ci-team").await["token"]
        .as_str()
        .unwrap()
        .to_string();
    let ran = runs(&out);
    assert_eq!(ran.len(), 2, "{ran:?}");
    let last = &ran[1];
    for line in [
        "TOKEN_ROTATOR_EVENT=rotated".to_string(),
        "TOKEN_ROTATOR_TOKEN=ci-team".to_string(),
        format!("TOKEN_ROTATOR_TOKEN_ID={second_id}"),
        "TOKEN_ROTATOR_ISSUER=tfc".to_string(),
        "TOKEN_ROTATOR_TYPE=team".to_string(),
        format!("ARGS={}", out.display()),
        "STDIN-BEGIN\nSTDIN-END".to_string(),
    ] {
        assert!(last.contains(&line), "missing {line:?} in {last}");
    }
    assert!(last.contains("TOKEN_ROTATOR_EXPIRES_AT=20"), "{last}");
    for secret in [
        &new_value,
        &stack.admin,
        &ROOT_TOKEN.to_string(),
        &HOOK_SECRET.to_string(),
    ] {
        assert!(
            !last.contains(secret.as_str()),
            "the program was given a secret: {last}"
        );
    }
    for var in [
        "TFC_TOKEN=",
        "VAULT_TOKEN=",
        "HOOK_SECRET=",
        "PULUMI_TOKEN=",
    ] {
        assert!(
            !last.contains(var),
            "{var} leaked into the program's environment"
        );
    }
    let metrics = daemon.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "token_rotator_notifications_total",
            &[("token", "ci-team"), ("result", "success")]
        ),
        Some(4.0),
        "two rotations (the first, then `rotate` through the daemon), two actions each"
    );
    let log = daemon.stderr();
    assert!(!log.contains(&new_value));
    assert!(!log.contains(HOOK_SECRET));
    assert_eq!(daemon.terminate(), 0);
}

/// A refused delivery is tried again within seconds with the same delivery id, and the old token waits for it;
/// the failure is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_webhook_is_retried_and_the_old_token_waits_for_it() {
    let stack = Stack::new(Config::default()).await;
    let team = stack.tfc.add_team("acme", "platform");
    let hook = Hook::start(&stack, "hooks/ci-team").await;
    let (seen, watch, fail_first, port) = (&hook.seen, &hook.watch, &hook.fail_first, hook.port);
    let listen = free_port();
    let tokens = format!(
        r#"[tokens.ci-team]
issuer = "tfc"
type = "team"
team_id = "{team}"
lifetime = "1h"
grace = "0s"
sinks = [{{ sink = "vault", path = "hooks/ci-team" }}]
notify = [{{ webhook = "http://127.0.0.1:{port}/hook", secret = {{ env = "HOOK_SECRET" }} }}]
notify_events = ["rotated", "failed"]
"#
    );
    let policy = stack.write_policy(listen, "", "", &tokens);
    let daemon = stack
        .daemon(&policy, listen, &[("HOOK_SECRET", HOOK_SECRET)])
        .await;
    wait_for(Duration::from_secs(30), "the first delivery", || async {
        (!seen.lock().unwrap().is_empty()).then_some(())
    })
    .await;
    let first_id = record_id(&stack.bao, "hooks/ci-team").await.unwrap();
    *watch.lock().unwrap() = vec![first_id.clone()];
    *fail_first.lock().unwrap() = 2;
    let out = stack.cli(&["rotate", "ci-team"], &policy, &[]).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let second_id = record_id(&stack.bao, "hooks/ci-team").await.unwrap();
    // Two refusals (5 s, then 10 s of backoff), then the delivery that is accepted.
    let deliveries = wait_for(Duration::from_secs(60), "the accepted retry", || async {
        let s = seen.lock().unwrap().clone();
        (s.len() >= 4 && s[3].answered == 204).then_some(s)
    })
    .await;
    let tries = &deliveries[1..4];
    assert!(tries
        .iter()
        .all(|s| s.body["token_id"] == second_id.as_str()));
    assert!(
        tries
            .iter()
            .all(|s| s.delivery == tries[0].delivery && !s.delivery.is_empty()),
        "one delivery id for every try: {tries:?}"
    );
    assert_ne!(tries[0].delivery, deliveries[0].delivery);
    // The old token was alive at every try, including the accepted one.
    for t in tries {
        assert_eq!(t.still_valid, vec![(first_id.clone(), true)], "{t:?}");
    }
    wait_for(Duration::from_secs(20), "the old token revoked", || async {
        (stack.tfc.token_info(&first_id).unwrap().state == TokenState::Revoked).then_some(())
    })
    .await;
    let metrics = daemon.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "token_rotator_notifications_total",
            &[("token", "ci-team"), ("result", "failure")]
        ),
        Some(2.0)
    );

    // The token turns not ready (a rotation the issuer refuses): the `failed` event is told.
    let before = seen.lock().unwrap().len();
    stack.tfc.fail_next(3, 422);
    let out = stack.cli(&["rotate", "ci-team"], &policy, &[]).await;
    assert_ne!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let failed = wait_for(Duration::from_secs(60), "the failed event", || async {
        let s = seen.lock().unwrap().clone();
        s[before..].iter().find(|s| s.event == "failed").cloned()
    })
    .await;
    assert_eq!(failed.body["event"], "failed");
    assert_eq!(failed.body["token_id"], second_id.as_str());
    assert!(failed.signature_ok);
    assert_eq!(daemon.terminate(), 0);
}

/// A crash between the closing journal write and the actions (SPEC §9): the next start runs them, for the token the
/// sink holds, and only then revokes the old token, which lived through the crash.
#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_before_the_actions_run_them_after_the_restart() {
    let stack = Stack::new(Config::default()).await;
    let team = stack.tfc.add_team("acme", "platform");
    let out = stack.work.path().join("exec-out");
    std::fs::create_dir(&out).unwrap();
    let script = hook_script(stack.work.path());
    let tokens = format!(
        r#"[tokens.ci-team]
issuer = "tfc"
type = "team"
team_id = "{team}"
lifetime = "1h"
grace = "0s"
sinks = [{{ sink = "vault", path = "hooks/ci-team" }}]
notify = [{{ exec = ["{script}", "{out}"] }}]
"#,
        script = script.display(),
        out = out.display(),
    );
    let policy = stack.write_policy(free_port(), "", "", &tokens);
    let first = stack.once(&policy, &[]).await;
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert_eq!(runs(&out).len(), 1);
    let first_id = record_id(&stack.bao, "hooks/ci-team").await.unwrap();

    let crashed = stack
        .cli(
            &["rotate", "ci-team"],
            &policy,
            &[("TOKEN_ROTATOR_FAILPOINT", "before-notify")],
        )
        .await;
    assert!(
        crashed.stderr.contains("failpoint before-notify: aborting"),
        "{}",
        crashed.stderr
    );
    let second_id = record_id(&stack.bao, "hooks/ci-team").await.unwrap();
    assert_ne!(second_id, first_id, "the crash came after the store");
    assert_eq!(runs(&out).len(), 1, "nothing was told before the crash");
    assert_eq!(
        stack.tfc.token_info(&first_id).unwrap().state,
        TokenState::Active,
        "the old token waits for the consumers"
    );

    let resumed = stack.once(&policy, &[]).await;
    assert_eq!(resumed.code, 0, "{}", resumed.stderr);
    let ran = runs(&out);
    assert_eq!(ran.len(), 2, "{ran:?}");
    assert!(
        ran[1].contains(&format!("TOKEN_ROTATOR_TOKEN_ID={second_id}")),
        "{}",
        ran[1]
    );
    assert_eq!(
        stack.tfc.token_info(&first_id).unwrap().state,
        TokenState::Revoked
    );
    assert_eq!(
        record_id(&stack.bao, "hooks/ci-team").await,
        Some(second_id)
    );
}

/// `revoke_after_use` on a team token (SPEC §10): the daemon's own identity probe of the new token is not a use;
/// while the old token is in grace its last use is on `/metrics`; once a consumer uses the new token the old one is
/// revoked (long before `grace` ends), with a warning that a consumer was still on it after the switch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_team_token_with_revoke_after_use_goes_once_its_successor_is_used() {
    let stack = Stack::new(Config::default()).await;
    let team = stack.tfc.add_team("acme", "platform");
    let listen = free_port();
    let tokens = format!(
        r#"[tokens.ci-team]
issuer = "tfc"
type = "team"
team_id = "{team}"
lifetime = "1h"
grace = "1h"
revoke_after_use = true
sinks = [{{ sink = "vault", path = "hooks/ci-team" }}]
"#
    );
    let policy = stack.write_policy(listen, "", "", &tokens);
    let daemon = stack.daemon(&policy, listen, &[]).await;
    let first_id = wait_for(Duration::from_secs(30), "the first token", || {
        record_id(&stack.bao, "hooks/ci-team")
    })
    .await;
    let out = stack.cli(&["rotate", "ci-team"], &policy, &[]).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let second_id = record_id(&stack.bao, "hooks/ci-team").await.unwrap();
    assert_ne!(first_id, second_id);
    assert!(
        stack
            .tfc
            .token_info(&second_id)
            .unwrap()
            .last_used_at
            .is_some(),
        "the identity probe stamps the new token, as the service does"
    );
    // A consumer still on the old token: its use shows while the old token is in grace.
    let old_use = token_rotator::clock::now();
    stack.tfc.mark_used_at(&first_id, old_use);
    let shown = wait_for(
        Duration::from_secs(90),
        "the old token's last use",
        || async {
            metric(
                &daemon.metrics().await,
                "token_rotator_previous_token_last_used_timestamp_seconds",
                &[("token", "ci-team")],
            )
        },
    )
    .await;
    // The service keeps milliseconds; the metric is whole seconds.
    assert!(
        (shown as i64 - old_use.timestamp()).abs() <= 1,
        "{shown} vs {old_use}"
    );
    assert_eq!(
        stack.tfc.token_info(&first_id).unwrap().state,
        TokenState::Active,
        "the probe of the new token is not a consumer's use"
    );
    // The consumer cuts over (as the service records it, a little later than the daemon's probe).
    stack.tfc.mark_used_at(
        &second_id,
        token_rotator::clock::now() + chrono::Duration::minutes(2),
    );
    wait_for(
        Duration::from_secs(90),
        "the old token revoked after the use",
        || async {
            (stack.tfc.token_info(&first_id).unwrap().state == TokenState::Revoked).then_some(())
        },
    )
    .await;
    wait_for(
        Duration::from_secs(10),
        "the metric gone with the old token",
        || async {
            metric(
                &daemon.metrics().await,
                "token_rotator_previous_token_last_used_timestamp_seconds",
                &[("token", "ci-team")],
            )
            .is_none()
            .then_some(())
        },
    )
    .await;
    assert_eq!(
        stack.tfc.token_info(&second_id).unwrap().state,
        TokenState::Active
    );
    let log = daemon.stderr();
    assert!(
        log.contains("was used after its successor was stored"),
        "{log}"
    );
    assert!(log.contains("its successor was used"), "{log}");
    assert_eq!(daemon.terminate(), 0);
}

/// `failed` at a token's first visit after a start (SPEC §9): a daemon started while its issuer refuses the
/// credential tells the receivers at once; and `run --once` waits for the `failed` actions before it exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_is_told_at_the_first_visit_and_by_run_once() {
    let stack = Stack::new(Config::default()).await;
    let hook = Hook::start(&stack, "hooks/ci-org").await;
    let (seen, port) = (&hook.seen, hook.port);
    let listen = free_port();
    let tokens = format!(
        r#"[tokens.ci-org]
issuer = "tfc"
type = "organization"
organization = "acme"
sinks = [{{ sink = "vault", path = "hooks/ci-org" }}]
notify = [{{ webhook = "http://127.0.0.1:{port}/hook", secret = {{ env = "HOOK_SECRET" }} }}]
notify_events = ["rotated", "failed"]
"#
    );
    let policy = stack.write_policy(listen, "", "", &tokens);
    let bad = [
        ("HOOK_SECRET", HOOK_SECRET),
        ("TFC_TOKEN", "not-a-valid-token"),
    ];
    let out = stack.once(&policy, &bad).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    let events: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.event.clone())
        .collect();
    assert_eq!(events, ["failed"], "run --once told before exiting");
    let failed = seen.lock().unwrap()[0].clone();
    assert!(failed.signature_ok);
    assert!(failed.body["token_id"].is_null(), "{:?}", failed.body);
    assert!(!out.stderr.contains("not-a-valid-token"));

    // The daemon: its first delivery is refused; the token's own visits now wait an hour (a refused credential is
    // a permanent error), yet the event is tried again within seconds, with the same delivery id.
    *hook.fail_first.lock().unwrap() = 1;
    let daemon = stack.daemon(&policy, listen, &bad).await;
    let tries = wait_for(
        Duration::from_secs(30),
        "failed told again by the daemon",
        || async {
            let s = seen.lock().unwrap().clone();
            (s.len() >= 3).then_some(s)
        },
    )
    .await;
    assert_eq!((tries[1].answered, tries[2].answered), (503, 204));
    assert!(tries[1..].iter().all(|t| t.event == "failed"));
    assert_eq!(tries[1].delivery, tries[2].delivery);
    assert_eq!(daemon.terminate(), 0);
}
