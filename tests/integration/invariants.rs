//! Regression tests for the outside review of the invariants (SPEC §5.10–§5.14), each reproduced the way it was
//! found: a real daemon process, a real listener, the TFC emulator behind a proxy that lets a create commit and
//! then drops the answer, and servers that echo the credential they were sent. Each test failed before its fix.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::Value;
use token_rotator_emulators::tfc::TokenKind;

use crate::faults::{Env, Fault, FaultProxy, Rule};
use crate::harness::{free_port, metric, run_cli_async, wait_for, DaemonProc};

const RUST_LOG_ALL: (&str, &str) = ("RUST_LOG", "trace");

fn rotate_args(policy: &std::path::Path, names: &[&str]) -> Vec<String> {
    let mut v = vec![
        "rotate".to_string(),
        "--config".into(),
        policy.display().to_string(),
    ];
    v.extend(names.iter().map(|s| s.to_string()));
    v
}

/// Finding 1: a singleton's create that commits and loses its answer is sent once (never again blindly); the
/// token turns not ready at once (its stored value is dead), and the next attempt mints again. That the next
/// attempt waits for the backoff is a time rule, tested on the paused clock
/// (`sim::rules::an_ambiguous_singleton_create_is_sent_again_only_after_the_backoff`); here an operator's second
/// `rotate` brings it forward.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ambiguous_singleton_create_is_sent_once_reported_not_ready_and_minted_again() {
    let mut env = Env::new().await;
    let proxy = FaultProxy::start(&env.tfc.url()).await;
    env.issuer("i-amb", "org-amb", &proxy.url());
    env.org_token("amb", "i-amb", "org-amb", "vault", "");
    let port = free_port();
    let policy = env.policy(Some(port));
    let daemon = DaemonProc::start(&policy, port, &env.env_refs()).await;
    let first = wait_for(Duration::from_secs(20), "the first rotation", || async {
        env.record("amb").await
    })
    .await;
    assert_eq!(env.org_creates("org-amb"), 1);

    // The next create reaches the issuer (which replaces the stored token), and its answer is lost.
    proxy.add(Rule::new(
        Some("POST"),
        "/authentication-token",
        1,
        Fault::ForwardThenReset,
    ));
    let out = run_cli_async(
        rotate_args(&policy, &["amb"]),
        env.envs.clone(),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("not sent again blindly"),
        "{}",
        out.stdout
    );
    assert_eq!(
        env.org_creates("org-amb"),
        2,
        "the create that may have happened was not resent"
    );
    assert!(
        !env.tfc.is_valid(first["token"].as_str().unwrap()),
        "the issuer replaced the stored token"
    );
    let (code, body) = daemon.readyz().await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body["unhealthy"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["token"] == "amb"),
        "{body}"
    );
    let m = daemon.metrics().await;
    assert_eq!(
        metric(&m, "token_rotator_token_ready", &[("token", "amb")]),
        Some(0.0)
    );

    // The next attempt mints once more, and the token is ready again with a live value.
    let out = run_cli_async(
        rotate_args(&policy, &["amb"]),
        env.envs.clone(),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let record = env.record("amb").await.unwrap();
    assert_ne!(record["token_id"], first["token_id"]);
    assert!(env.tfc.is_valid(record["token"].as_str().unwrap()));
    assert_eq!(env.org_creates("org-amb"), 3);
    wait_for(Duration::from_secs(10), "ready again", || async {
        (daemon.readyz().await.0 == 200).then_some(())
    })
    .await;
}

/// Finding 1: a 201 whose `created-at` does not parse still hands over its token: the value is stored, not thrown
/// away (the organization's previous token is already dead by then).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_created_answer_with_an_unreadable_time_keeps_its_token() {
    let mut env = Env::new().await;
    let proxy = FaultProxy::start(&env.tfc.url()).await;
    proxy.add(Rule::new(
        Some("POST"),
        "/authentication-token",
        1,
        Fault::ForwardRewritten {
            from: "\"created-at\":\"",
            to: "\"created-at\":\"not a time ",
        },
    ));
    env.issuer("i-time", "org-time", &proxy.url());
    env.org_token("t", "i-time", "org-time", "vault", "");
    let policy = env.policy(None);
    let out = env
        .cli(
            &["run", "--once", "--config", policy.to_str().unwrap()],
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        proxy
            .hits()
            .iter()
            .any(|h| h.fault.as_deref() == Some("forward-rewritten")),
        "the mangled answer was served"
    );
    let record = env.record("t").await.unwrap();
    assert!(env.tfc.is_valid(record["token"].as_str().unwrap()));
    assert_eq!(env.org_creates("org-time"), 1, "minted once");
    assert!(
        out.stderr.contains("invalid `created-at`"),
        "{}",
        out.stderr
    );
}

/// Finding 3: 400 connections that send nothing, against a daemon allowed 256 descriptors: `/healthz` still
/// answers, a rotation still journals and stores its token, and nothing fails with "Too many open files".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_connections_starve_neither_healthz_nor_the_journal() {
    let mut env = Env::new().await;
    env.issuer("i-fd", "org-fd", &env.tfc.url());
    env.org_token("fd", "i-fd", "org-fd", "vault", "");
    let port = free_port();
    let policy = env.policy(Some(port));
    let daemon = DaemonProc::start_limited(&policy, port, &env.env_refs(), Some(256)).await;
    wait_for(Duration::from_secs(20), "the first rotation", || async {
        env.record("fd").await
    })
    .await;
    let held: Vec<TcpStream> = (0..400)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", port)).ok())
        .collect();
    assert!(held.len() >= 300, "connections opened: {}", held.len());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let healthz = client
        .get(format!("{}/healthz", daemon.base))
        .send()
        .await
        .expect("/healthz answers while 400 connections are held");
    assert_eq!(healthz.status(), 200);
    let before = env.record("fd").await.unwrap();
    let out = run_cli_async(
        rotate_args(&policy, &["fd"]),
        env.envs.clone(),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let after = env.record("fd").await.unwrap();
    assert_ne!(after["token_id"], before["token_id"]);
    assert!(env.tfc.is_valid(after["token"].as_str().unwrap()));
    let fds = std::fs::read_dir(format!("/proc/{}/fd", daemon.pid()))
        .map(|d| d.count())
        .unwrap_or(0);
    assert!(fds < 200, "the daemon holds {fds} descriptors");
    drop(held);
    let stderr = daemon.stderr();
    assert!(
        !stderr.contains("Too many open files"),
        "{}",
        stderr
            .lines()
            .filter(|l| l.contains("Too many"))
            .take(3)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// CPU time (user + system, seconds) a process has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

/// Finding 3: when the daemon is out of descriptors, a pending connection on the control socket makes `accept`
/// fail at once, every time; the loop backs off instead of spinning a core, and serves the request once
/// descriptors are free again. (The daemon's descriptor limit is lowered to what it holds with `prlimit`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_accept_on_the_control_socket_does_not_spin() {
    let mut env = Env::new().await;
    env.issuer("i-spin", "org-spin", &env.tfc.url());
    env.org_token("spin", "i-spin", "org-spin", "vault", "");
    let port = free_port();
    let policy = env.policy(Some(port));
    let daemon = DaemonProc::start(&policy, port, &env.env_refs()).await;
    wait_for(Duration::from_secs(20), "the first rotation", || async {
        env.record("spin").await
    })
    .await;
    let pid = daemon.pid();
    let prlimit = |n: usize| {
        let ok = std::process::Command::new("prlimit")
            .args(["--pid", &pid.to_string(), &format!("--nofile={n}:")])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "prlimit (util-linux) is needed for this test");
    };
    // The limit bounds descriptor numbers: the lowest free number as the limit leaves none (EMFILE for every new
    // descriptor), whatever high-numbered ones the daemon inherited.
    let used: std::collections::BTreeSet<usize> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let lowest_free = (0..).find(|n| !used.contains(n)).unwrap();
    prlimit(lowest_free);
    let socket = env.work.state_dir().join("control.sock");
    let mut pending = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    pending.write_all(b"{\"cmd\":\"status\"}\n").unwrap();
    let cpu0 = cpu_seconds(pid);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let busy = (cpu_seconds(pid) - cpu0) / t0.elapsed().as_secs_f64();
    assert!(
        busy < 0.3,
        "the daemon used {:.0} % of a core",
        busy * 100.0
    );
    assert!(
        daemon
            .stderr()
            .contains("accepting on the control socket failed; backing off"),
        "the accept did fail"
    );
    // Descriptors come back: the waiting request is served.
    prlimit(4096);
    pending
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(&pending), &mut answer).unwrap();
    assert!(answer.contains("\"tokens\""), "{answer}");
}

/// Finding 4: servers that echo the bearer they were sent into their error bodies (the create's admin credential,
/// the new token at its identity probe) never get it into the log, `/readyz`, `status` or `rotate` output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_echoed_credential_is_never_shown() {
    let mut env = Env::new().await;
    env.tfc.set_echo_credentials(true);
    let proxy = FaultProxy::start(&env.tfc.url()).await;
    env.issuer("i-echo", "org-echo", &proxy.url());
    env.team_token("echo", "i-echo", "org-echo", "vault", "grace = \"0s\"");
    let port = free_port();
    let policy = env.policy(Some(port));
    let envs: Vec<(&str, &str)> = env.env_refs().into_iter().chain([RUST_LOG_ALL]).collect();
    // The first create fails with a 500 that quotes the admin credential (the emulator's echo mode) ...
    env.tfc.fail_next(1, 500);
    let daemon = DaemonProc::start(&policy, port, &envs).await;
    wait_for(Duration::from_secs(20), "the first failure", || async {
        let m = daemon.metrics().await;
        metric(
            &m,
            "token_rotator_token_consecutive_failures",
            &[("token", "echo")],
        )
        .filter(|f| *f >= 1.0)
    })
    .await;
    // ... and the next one's identity probe is refused by a proxy that quotes the new token.
    proxy.add(Rule::new(
        Some("GET"),
        "/api/v2/account/details",
        1,
        Fault::EchoAuthorization { status: 401 },
    ));
    let rotated = run_cli_async(
        rotate_args(&policy, &["echo"]),
        env.envs.clone(),
        Duration::from_secs(60),
    )
    .await;
    let record = env
        .record("echo")
        .await
        .expect("the new token is stored before its probe");
    let new_value = record["token"].as_str().unwrap().to_string();
    let (_, readyz) = daemon.readyz().await;
    let status = env
        .cli(
            &["status", "--json", "--config", policy.to_str().unwrap()],
            Duration::from_secs(20),
        )
        .await;
    assert!(
        proxy
            .hits()
            .iter()
            .any(|h| h.fault.as_deref() == Some("echo-authorization 401")),
        "the probe was refused"
    );
    let admin = env
        .envs
        .iter()
        .find(|(k, _)| k == "TFC_I_ECHO")
        .unwrap()
        .1
        .clone();
    let shown = [
        ("the log", daemon.stderr()),
        ("/readyz", readyz.to_string()),
        ("status", status.stdout.clone()),
        ("rotate", format!("{}{}", rotated.stdout, rotated.stderr)),
    ];
    let mut redacted = false;
    for (what, text) in &shown {
        for secret in [admin.as_str(), new_value.as_str(), ".atlasv1."] {
            assert!(!text.contains(secret), "{what} shows a secret");
        }
        redacted |= text.contains("[REDACTED]");
    }
    assert!(redacted, "the echoed text was seen and masked: {readyz}");
}

/// Finding 5: a new token whose identity probe keeps being refused is not retried forever: after a few refusals
/// it is given up, a fresh token is minted, and the given-up token is revoked once the fresh one is proven.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_refused_by_its_probe_is_replaced_not_probed_forever() {
    let mut env = Env::new().await;
    let proxy = FaultProxy::start(&env.tfc.url()).await;
    env.issuer("i-probe", "org-probe", &proxy.url());
    let team = env.team_token("probe", "i-probe", "org-probe", "vault", "grace = \"0s\"");
    let policy = env.policy(None);
    let cfg = policy.to_str().unwrap().to_string();
    let once = env
        .cli(
            &["run", "--once", "--config", &cfg],
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(once.code, 0, "{}", once.stderr);
    let first = env.record("probe").await.unwrap();
    proxy.add(Rule::new(
        Some("GET"),
        "/api/v2/account/details",
        3,
        Fault::status(
            401,
            crate::faults::JSON_API,
            r#"{"errors":[{"status":"401","title":"unauthorized"}]}"#,
        ),
    ));
    let mut outs = Vec::new();
    for _ in 0..4 {
        outs.push(
            run_cli_async(
                rotate_args(&policy, &["probe"]),
                env.envs.clone(),
                Duration::from_secs(60),
            )
            .await,
        );
    }
    assert_eq!(outs[0].code, 1, "{}\n{}", outs[0].stdout, outs[0].stderr);
    assert!(
        outs[0]
            .stdout
            .contains("failed its identity probe (1 of 3)"),
        "{}",
        outs[0].stdout
    );
    assert!(outs[2].stdout.contains("given up"), "{}", outs[2].stdout);
    assert_eq!(outs[3].code, 0, "{}\n{}", outs[3].stdout, outs[3].stderr);
    let last = env.record("probe").await.unwrap();
    assert!(env.tfc.is_valid(last["token"].as_str().unwrap()));
    assert_eq!(
        env.team_creates(&team),
        3,
        "the first token, the refused one, and its replacement"
    );
    assert_eq!(
        env.valid_team_tokens(&team),
        vec![last["token_id"].as_str().unwrap().to_string()],
        "the first and the refused token are revoked"
    );
    assert_ne!(last["token_id"], first["token_id"]);
}

/// Finding 6: an old agent token waits for its successor's first use; when that successor is itself replaced
/// before anyone used it, the old token now waits for the newest one — it is not stranded forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_after_use_follows_a_successor_replaced_before_its_first_use() {
    let mut env = Env::new().await;
    env.issuer("i-agent", "org-agent", &env.tfc.url());
    let pool = env.tfc.add_agent_pool("org-agent", "pool");
    env.tokens.push_str(&format!(
        "\n[tokens.agent]\nissuer = \"i-agent\"\ntype = \"agent\"\nagent_pool_id = \"{pool}\"\nevery = \"1h\"\nrevoke_after_use = true\nsinks = [{{ sink = \"vault\", path = \"faults/agent\" }}]\n"
    ));
    let policy = env.policy(None);
    let cfg = policy.to_str().unwrap().to_string();
    assert_eq!(
        env.cli(
            &["run", "--once", "--config", &cfg],
            Duration::from_secs(60)
        )
        .await
        .code,
        0
    );
    let a = env.record("agent").await.unwrap();
    for _ in 0..2 {
        let out = run_cli_async(
            rotate_args(&policy, &["agent"]),
            env.envs.clone(),
            Duration::from_secs(60),
        )
        .await;
        assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    }
    let c = env.record("agent").await.unwrap();
    let valid = |id: &Value| {
        env.tfc
            .valid_tokens()
            .iter()
            .any(|t| t.kind == TokenKind::Agent && t.id == id.as_str().unwrap())
    };
    assert!(valid(&a["token_id"]), "nobody used a successor yet");
    // The agent picks up the newest token; the next visit revokes every older one.
    env.tfc.mark_used(c["token_id"].as_str().unwrap());
    assert_eq!(
        env.cli(
            &["run", "--once", "--config", &cfg],
            Duration::from_secs(60)
        )
        .await
        .code,
        0
    );
    let agents: Vec<String> = env
        .tfc
        .valid_tokens()
        .into_iter()
        .filter(|t| t.kind == TokenKind::Agent && t.agent_pool_id.as_deref() == Some(pool.as_str()))
        .map(|t| t.id)
        .collect();
    assert_eq!(
        agents,
        vec![c["token_id"].as_str().unwrap().to_string()],
        "only the used token is left"
    );
    assert!(
        env.work.journal_entry("agent").is_none(),
        "nothing left waiting"
    );
}

fn sighup(pid: u32) {
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

/// Finding 7: a token removed from the policy and added back while its visit is in flight never gets a second
/// visit next to the first: its creates never overlap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_readded_during_its_visit_is_not_visited_twice_at_once() {
    let mut env = Env::new().await;
    env.issuer("i-re", "org-re", &env.tfc.url());
    // A neighbour that stays: a policy without any token is refused.
    env.team_token("stays", "i-re", "org-re", "vault", "");
    let team = env.team_token(
        "re",
        "i-re",
        "org-re",
        "vault",
        "every = \"1s\"\ngrace = \"0s\"",
    );
    let port = free_port();
    let full = std::fs::read_to_string(env.policy(Some(port))).unwrap();
    let without = full.split("\n[tokens.re]").next().unwrap().to_string();
    let policy = env.work.write_policy(&full);
    env.tfc.set_create_delay(Duration::from_millis(1500));
    let daemon = DaemonProc::start(&policy, port, &env.env_refs()).await;
    let path = format!("/api/v2/teams/{team}/authentication-tokens");
    wait_for(Duration::from_secs(20), "the first rotation", || async {
        env.record("re").await
    })
    .await;
    // Written whole (temp file, rename): a reload never reads half a policy.
    let write = |text: &str| {
        let tmp = policy.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &policy).unwrap();
    };
    let count = |needle: &str| daemon.stderr().matches(needle).count();
    for i in 1..=3 {
        // A rotation every second, each create answered after 1.5 s: a visit is almost always in flight here.
        tokio::time::sleep(Duration::from_millis(500)).await;
        write(&without);
        sighup(daemon.pid());
        wait_for(Duration::from_secs(10), "the token removed", || async {
            (count("token removed from the policy") >= i).then_some(())
        })
        .await;
        write(&full);
        sighup(daemon.pid());
        wait_for(Duration::from_secs(10), "the token added back", || async {
            (count("token added") >= i).then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    // The emulator answers a create 1.5 s after it arrived: two creates arriving less than that apart overlapped.
    let arrivals: Vec<Instant> = env
        .tfc
        .request_log()
        .iter()
        .filter(|r| r.method == "POST" && r.path == path)
        .map(|r| r.at)
        .collect();
    assert!(arrivals.len() >= 3, "{} creates", arrivals.len());
    for w in arrivals.windows(2) {
        let gap = w[1].duration_since(w[0]);
        assert!(
            gap >= Duration::from_millis(1450),
            "two creates overlapped ({gap:?} apart)"
        );
    }
    assert!(daemon.stderr().contains("token added"));
}

/// Finding 7: a reload builds new issuers but keeps their pacers: a 429's reset is honoured across it (SPEC §5.4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_the_rate_limit_block() {
    let mut env = Env::new().await;
    env.issuer("i-rl", "org-rl", &env.tfc.url());
    env.team_token("rl-a", "i-rl", "org-rl", "vault", "");
    env.team_token("rl-b", "i-rl", "org-rl", "vault", "");
    let port = free_port();
    let policy = env.policy(Some(port));
    let daemon = DaemonProc::start(&policy, port, &env.env_refs()).await;
    wait_for(Duration::from_secs(20), "the first rotations", || async {
        (env.record("rl-a").await.is_some() && env.record("rl-b").await.is_some()).then_some(())
    })
    .await;
    // Every request is refused for 4 s; a rotation meets the 429 and waits for its reset ...
    env.tfc.throttle_for(Duration::from_secs(4));
    let a = tokio::spawn(run_cli_async(
        rotate_args(&policy, &["rl-a"]),
        env.envs.clone(),
        Duration::from_secs(60),
    ));
    wait_for(Duration::from_secs(10), "the 429", || async {
        env.tfc
            .request_log()
            .iter()
            .any(|r| r.status == 429)
            .then_some(())
    })
    .await;
    // ... the policy is reloaded (new issuers), and another rotation starts on them.
    sighup(daemon.pid());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let b = run_cli_async(
        rotate_args(&policy, &["rl-b"]),
        env.envs.clone(),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(b.code, 0, "{}\n{}", b.stdout, b.stderr);
    assert_eq!(a.await.unwrap().code, 0);
    assert_eq!(
        env.tfc.requests_before_rate_limit_reset(),
        0,
        "nothing was sent before a 429's reset had passed"
    );
}

/// Finding 8: a token name whose escaped journal file name would be too long rotates like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_token_name_rotates() {
    let mut env = Env::new().await;
    env.issuer("i-long", "org-long", &env.tfc.url());
    let name = "é".repeat(60); // 60 characters, 360 bytes once escaped: too long for one file name
    env.tokens.push_str(&format!(
        "\n[tokens.\"{name}\"]\nissuer = \"i-long\"\ntype = \"organization\"\norganization = \"org-long\"\nsinks = [{{ sink = \"vault\", path = \"faults/long\" }}]\n"
    ));
    let policy = env.policy(None);
    let cfg = policy.to_str().unwrap().to_string();
    let check = env
        .cli(&["check", "--config", &cfg], Duration::from_secs(20))
        .await;
    assert_eq!(check.code, 0, "{}", check.stderr);
    let out = env
        .cli(
            &["run", "--once", "--config", &cfg],
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let record = env.record("long").await.unwrap();
    assert!(env.tfc.is_valid(record["token"].as_str().unwrap()));
}

/// Finding 8: with `state_key` set, a plain (unsealed) journal entry is refused: whoever can write to `state_dir`
/// cannot plant a token value or a revocation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planted_plain_journal_entry_is_refused_when_the_journal_is_sealed() {
    let mut env = Env::new().await;
    env.issuer("i-seal", "org-seal", &env.tfc.url());
    env.org_token("sealed", "i-seal", "org-seal", "vault", "");
    let key = env.work.write_secret("state.key", &"ab".repeat(32));
    let policy = env.policy(None);
    let text = std::fs::read_to_string(&policy).unwrap().replacen(
        "[daemon]\n",
        &format!("[daemon]\nstate_key = {{ file = \"{}\" }}\n", key.display()),
        1,
    );
    std::fs::write(&policy, text).unwrap();
    let journal = env.work.state_dir().join("journal");
    std::fs::create_dir_all(&journal).unwrap();
    std::fs::set_permissions(
        env.work.state_dir(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let planted = serde_json::json!({
        "format": 1, "token": "sealed", "issuer": "i-seal", "token_type": "organization",
        "rotation": {"started_at": "2026-01-01T00:00:00Z", "phase": "minted", "label": null,
            "minted": {"value": "PLANTED-VALUE-0000", "token_id": "at-planted", "created_at": "2026-01-01T00:00:00Z", "expires_at": null},
            "stored": [], "replaces": null},
        "revocations": [], "sweep": false
    });
    std::fs::write(journal.join("sealed.json"), planted.to_string()).unwrap();
    let out = env
        .cli(
            &["run", "--once", "--config", policy.to_str().unwrap()],
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("not encrypted"), "{}", out.stderr);
    assert!(
        env.record("sealed").await.is_none(),
        "the planted value reached no sink"
    );
}
