//! Every HCP Terraform / TFE token type against the strict emulator and a real OpenBao: singletons replace,
//! coexisting types overlap through `grace`, agent tokens wait for use, orphans are swept, rate limits hold.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use token_rotator_emulators::tfc::{Config, TfcEmulator, TokenKind};

use crate::harness::{free_port, metric, run_cli_async, wait_for, Bao, Stack, Workdir, ROOT_TOKEN};

/// The shared stack plus this module's views of the issuer.
struct Env(Stack);

impl std::ops::Deref for Env {
    type Target = Stack;
    fn deref(&self) -> &Stack {
        &self.0
    }
}

impl Env {
    async fn new(cfg: Config) -> Env {
        Env(Stack::new(cfg).await)
    }

    /// A policy with the given token tables (issuer `tfc`, sink `vault`).
    fn policy(&self, listen: u16, tokens: &str) -> PathBuf {
        self.write_policy(listen, "", "", tokens)
    }

    fn valid_of(&self, kind: TokenKind) -> Vec<String> {
        self.tfc
            .valid_tokens()
            .into_iter()
            .filter(|t| t.kind == kind)
            .map(|t| t.id)
            .collect()
    }

    fn token_valid(&self, id: &str) -> bool {
        self.tfc.valid_tokens().iter().any(|t| t.id == id)
    }
}

fn id_of(record: &Value) -> String {
    record["token_id"].as_str().unwrap().to_string()
}

async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn singleton_types_replace_the_old_token_at_create() {
    let env = Env::new(Config::default()).await;
    let team = env.tfc.add_team("acme", "platform");
    let tokens = |every: &str| {
        format!(
            r#"[tokens.audit]
issuer = "tfc"
type = "audit-trails"
organization = "acme"
every = "{every}"
sinks = [{{ sink = "vault", path = "ci/audit" }}]

[tokens.legacy]
issuer = "tfc"
type = "team-legacy"
team_id = "{team}"
every = "{every}"
sinks = [{{ sink = "vault", path = "ci/legacy" }}]
"#
        )
    };
    let policy = env.policy(free_port(), &tokens("1s"));
    let out = env.once(&policy, &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let audit1 = env.record("ci/audit").await;
    let legacy1 = env.record("ci/legacy").await;
    assert_eq!(audit1["type"], "audit-trails");
    assert_eq!(legacy1["type"], "team-legacy");
    assert_eq!(env.valid_of(TokenKind::AuditTrails), vec![id_of(&audit1)]);
    assert_eq!(env.valid_of(TokenKind::TeamLegacy), vec![id_of(&legacy1)]);

    sleep_ms(1100).await;
    let out = env.once(&policy, &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let audit2 = env.record("ci/audit").await;
    let legacy2 = env.record("ci/legacy").await;
    assert_ne!(id_of(&audit1), id_of(&audit2));
    assert_eq!(
        env.valid_of(TokenKind::AuditTrails),
        vec![id_of(&audit2)],
        "the old audit token died at create"
    );
    assert_eq!(
        env.valid_of(TokenKind::TeamLegacy),
        vec![id_of(&legacy2)],
        "the old legacy token died at create"
    );
    assert!(env.tfc.is_valid(audit2["token"].as_str().unwrap()));
    // The audit-trails token is independent of the organization token (none was created).
    assert!(env.valid_of(TokenKind::Organization).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn team_token_overlaps_through_grace_then_the_old_one_is_revoked() {
    let env = Env::new(Config::default()).await;
    let team = env.tfc.add_team("acme", "platform");
    let port = free_port();
    let policy = env.policy(
        port,
        &format!(
            r#"[tokens.ci-team]
issuer = "tfc"
type = "team"
team_id = "{team}"
lifetime = "1h"
every = "6s"
grace = "2s"
sinks = [{{ sink = "vault", path = "ci/team" }}]
"#
        ),
    );
    let daemon = env.daemon(&policy, port, &[]).await;
    let first = wait_for(Duration::from_secs(20), "the first team token", || async {
        env.bao.kv2_get("secret", "ci/team").await
    })
    .await;
    let first_id = id_of(&first);
    let info = env.tfc.token_info(&first_id).unwrap();
    assert_eq!(info.kind, TokenKind::Team);
    assert!(
        info.description
            .as_deref()
            .unwrap_or("")
            .starts_with("token-rotator ci-team "),
        "labelled for recognition: {:?}",
        info.description
    );

    let second = wait_for(Duration::from_secs(20), "the second team token", || async {
        env.bao
            .kv2_get("secret", "ci/team")
            .await
            .filter(|r| id_of(r) != first_id)
    })
    .await;
    // Overlap: right after the switch both tokens work.
    assert!(
        env.token_valid(&first_id),
        "the old token stays valid through grace"
    );
    assert!(env.tfc.is_valid(second["token"].as_str().unwrap()));
    // After grace, the old one is revoked and the new one remains.
    wait_for(
        Duration::from_secs(10),
        "the old token's revocation",
        || async { (!env.token_valid(&first_id)).then_some(()) },
    )
    .await;
    assert!(env.tfc.is_valid(second["token"].as_str().unwrap()));
    let m = daemon.metrics().await;
    assert!(
        metric(
            &m,
            "token_rotator_revocations_total",
            &[("token", "ci-team"), ("result", "success")]
        )
        .unwrap()
            >= 1.0
    );
    assert_eq!(daemon.terminate(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_once_leaves_revocations_in_grace_for_the_next_run() {
    let env = Env::new(Config::default()).await;
    let team = env.tfc.add_team("acme", "platform");
    let tokens = |every: &str| {
        format!(
            r#"[tokens.ci-team]
issuer = "tfc"
type = "team"
team_id = "{team}"
lifetime = "1h"
every = "{every}"
grace = "3s"
sinks = [{{ sink = "vault", path = "ci/team" }}]
"#
        )
    };
    let policy = env.policy(free_port(), &tokens("1s"));
    assert_eq!(env.once(&policy, &[]).await.code, 0);
    let first = id_of(&env.record("ci/team").await);
    sleep_ms(1100).await;
    let out = env.once(&policy, &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let second = id_of(&env.record("ci/team").await);
    assert_ne!(first, second);
    assert!(env.token_valid(&first), "in grace: not revoked by this run");
    assert!(
        env.work.journal_entry("ci-team").is_some(),
        "the pending revocation is journaled"
    );

    // Grace passed: the next run revokes it (nothing else is due with `every = 1h`).
    sleep_ms(3100).await;
    let policy = env.policy(free_port(), &tokens("1h"));
    let out = env.once(&policy, &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!env.token_valid(&first), "revoked after grace");
    assert!(env.token_valid(&second));
    assert_eq!(id_of(&env.record("ci/team").await), second);
    assert!(
        env.work.journal_entry("ci-team").is_none(),
        "finished work leaves no journal entry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_token_is_revoked_once_its_successor_is_used() {
    let env = Env::new(Config::default()).await;
    let pool = env.tfc.add_agent_pool("acme", "default");
    let tokens = |every: &str| {
        format!(
            r#"[tokens.agents]
issuer = "tfc"
type = "agent"
agent_pool_id = "{pool}"
every = "{every}"
revoke_after_use = true
sinks = [{{ sink = "vault", path = "ci/agent" }}]
"#
        )
    };
    let policy = env.policy(free_port(), &tokens("1s"));
    assert_eq!(env.once(&policy, &[]).await.code, 0);
    let first = env.record("ci/agent").await;
    assert_eq!(
        first["expires_at"],
        Value::Null,
        "agent tokens never expire"
    );
    sleep_ms(1100).await;
    assert_eq!(env.once(&policy, &[]).await.code, 0);
    let second = id_of(&env.record("ci/agent").await);
    let policy = env.policy(free_port(), &tokens("1h"));

    // Not used yet: the old token stays.
    let out = env.once(&policy, &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        env.token_valid(&id_of(&first)),
        "kept until the successor is used"
    );

    env.tfc.mark_used(&second);
    let out = env.once(&policy, &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        !env.token_valid(&id_of(&first)),
        "revoked once the successor shows last-used-at"
    );
    assert!(env.token_valid(&second));
}

#[test]
fn agent_tokens_require_every_and_refuse_lifetime() {
    let w = Workdir::new();
    let p = w.write_policy(
        r#"[issuers.tfc]
kind = "tfe"
token = { env = "T" }
[sinks.v]
kind = "vault"
address = "http://127.0.0.1:8200"
auth = { method = "token", token = { env = "V" } }
[tokens.a]
issuer = "tfc"
type = "agent"
agent_pool_id = "apool-1"
lifetime = "30d"
sinks = [{ sink = "v", path = "a" }]
"#,
    );
    let out = crate::harness::run_cli(
        &["check", "--config", p.to_str().unwrap()],
        &[],
        Duration::from_secs(20),
    );
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains(
            ":12:12: [tokens.a]: agent tokens never expire, so `lifetime` does not apply"
        ),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains(":8:9: missing key `every` in [tokens.a]"),
        "{}",
        out.stderr
    );
}

#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orphan_minted_before_a_crash_is_swept_and_foreign_tokens_are_untouched() {
    let env = Env::new(Config::default()).await;
    let team = env.tfc.add_team("acme", "platform");
    let (foreign, _) = env
        .tfc
        .mint(TokenKind::Team, &team, Some("made by hand"), None);
    let tokens = |every: &str| {
        format!(
            r#"[tokens.ci-team]
issuer = "tfc"
type = "team"
team_id = "{team}"
lifetime = "1h"
every = "{every}"
grace = "0s"
sinks = [{{ sink = "vault", path = "ci/team" }}]
"#
        )
    };
    let policy = env.policy(free_port(), &tokens("1s"));
    assert_eq!(env.once(&policy, &[]).await.code, 0);
    let current = id_of(&env.record("ci/team").await);
    sleep_ms(1100).await;
    // The issuer answers, then the process dies before the journal write: a labelled token nobody tracks.
    let out = env
        .once(&policy, &[("TOKEN_ROTATOR_FAILPOINT", "after-create")])
        .await;
    assert_ne!(out.code, 0);
    let orphans: Vec<String> = env
        .valid_of(TokenKind::Team)
        .into_iter()
        .filter(|id| *id != current && *id != foreign)
        .collect();
    assert_eq!(orphans.len(), 1, "the crash left one untracked token");

    let policy = env.policy(free_port(), &tokens("1h"));
    let out = env.once(&policy, &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!env.token_valid(&orphans[0]), "the orphan was revoked");
    assert!(env.token_valid(&current), "the current token is untouched");
    assert!(
        env.token_valid(&foreign),
        "a token without our label is never touched"
    );
    assert_eq!(id_of(&env.record("ci/team").await), current);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttling_issuer_is_waited_out_without_a_retry_storm() {
    let env = Env::new(Config::default()).await;
    let policy = env.policy(
        free_port(),
        r#"[tokens.ci-org]
issuer = "tfc"
type = "organization"
organization = "acme"
sinks = [{ sink = "vault", path = "ci/org" }]
"#,
    );
    env.tfc.throttle_for(Duration::from_secs(5));
    let out = env.once(&policy, &[]).await;
    assert_eq!(
        out.code, 0,
        "the rotation completes after the throttle: {}",
        out.stderr
    );
    let record = env.record("ci/org").await;
    assert!(env.tfc.is_valid(record["token"].as_str().unwrap()));
    let log = env.tfc.request_log();
    let throttled = log.iter().filter(|r| r.status == 429).count();
    assert!(
        throttled <= 6,
        "a bounded number of requests during the throttle, got {throttled} 429s"
    );
    assert_eq!(
        env.tfc.requests_before_rate_limit_reset(),
        0,
        "nothing sent before X-RateLimit-Reset passed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tfe_with_a_private_ca_and_an_old_version_without_multi_team_tokens() {
    let (tfc, ca_pem) = TfcEmulator::start_tls(Config::default()).await.unwrap();
    let admin = tfc.add_organization("acme");
    let team = tfc.add_team("acme", "platform");
    let env = Env(Stack::with(tfc, admin).await);
    let ca = env.work.path().join("tfe-ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    assert!(env.tfc.url().starts_with("https://"));
    let tokens = format!(
        r#"[tokens.ci-org]
issuer = "tfc"
type = "organization"
organization = "acme"
sinks = [{{ sink = "vault", path = "ci/org" }}]

[tokens.ci-team]
issuer = "tfc"
type = "team"
team_id = "{team}"
sinks = [{{ sink = "vault", path = "ci/team" }}]
"#
    );
    // Without the CA the TLS handshake fails: verification is never switched off.
    let policy = env.write_policy(free_port(), "", "", &tokens);
    let started = std::time::Instant::now();
    let out = env.once(&policy, &[]).await;
    assert_eq!(out.code, 1);
    assert!(env.bao.kv2_get("secret", "ci/org").await.is_none());
    // A refused certificate is a configuration problem: said so, and not retried as if the server were down.
    assert!(
        out.stderr.contains("not signed by a CA we trust")
            && out.stderr.contains("set `ca_file` of [issuers.tfc]"),
        "{}",
        out.stderr
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "a refused certificate is not retried: {:?}",
        started.elapsed()
    );

    env.tfc.set_multi_team_tokens_supported(false);
    let policy = env.write_policy(
        free_port(),
        &format!("ca_file = \"{}\"", ca.display()),
        "",
        &tokens,
    );
    let out = env.once(&policy, &[]).await;
    assert_eq!(out.code, 1, "the team token fails on this TFE version");
    let org = env.record("ci/org").await;
    assert!(
        env.tfc.is_valid(org["token"].as_str().unwrap()),
        "the org token rotated over TLS with the private CA"
    );
    assert!(
        out.stderr
            .contains("Terraform Enterprise version without multiple team tokens"),
        "a clear error for an old TFE: {}",
        out.stderr
    );
    assert!(env.bao.kv2_get("secret", "ci/team").await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_team_tokens_due_at_once_stay_under_the_rate_limit() {
    let tfc = TfcEmulator::start(Config::default()).await.unwrap();
    let bao = Bao::start().await;
    let work = Workdir::new();
    let orgs = ["org-a", "org-b", "org-c"];
    let mut policy = format!(
        "[daemon]\nstate_dir = \"{}\"\n\n[sinks.vault]\nkind = \"vault\"\naddress = \"{}\"\nauth = {{ method = \"token\", token = {{ env = \"VAULT_TOKEN\" }} }}\n",
        work.state_dir().display(),
        bao.addr
    );
    let mut envs = vec![("VAULT_TOKEN".to_string(), ROOT_TOKEN.to_string())];
    let mut teams = Vec::new();
    for (i, org) in orgs.iter().enumerate() {
        let admin = tfc.add_organization(org);
        envs.push((format!("TFC_{i}"), admin));
        policy.push_str(&format!(
            "\n[issuers.{org}]\nkind = \"tfe\"\naddress = \"{}\"\ntoken = {{ env = \"TFC_{i}\" }}\n",
            tfc.url()
        ));
    }
    for n in 0..500 {
        let org = orgs[n % 3];
        let team = tfc.add_team(org, &format!("team-{n}"));
        policy.push_str(&format!(
            "\n[tokens.t{n}]\nissuer = \"{org}\"\ntype = \"team\"\nteam_id = \"{team}\"\nsinks = [{{ sink = \"vault\", path = \"many/t{n}\" }}]\n"
        ));
        teams.push(team);
    }
    let path = work.write_policy(&policy);
    let out = run_cli_async(
        vec![
            "run".into(),
            "--once".into(),
            "--config".into(),
            path.display().to_string(),
        ],
        envs,
        Duration::from_secs(300),
    )
    .await;
    assert_eq!(
        out.code,
        0,
        "{}",
        out.stderr
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
    let log = tfc.request_log();
    assert_eq!(
        log.iter().filter(|r| r.status == 429).count(),
        0,
        "never rate limited"
    );
    for n in (0..500).step_by(7) {
        let r = bao
            .kv2_get("secret", &format!("many/t{n}"))
            .await
            .expect("record");
        assert!(tfc.is_valid(r["token"].as_str().unwrap()));
    }
    let team_tokens = tfc
        .valid_tokens()
        .into_iter()
        .filter(|t| t.kind == TokenKind::Team)
        .count();
    assert_eq!(
        team_tokens, 500,
        "one new token per team, nothing minted twice"
    );
}

/// An organization's maximum-TTL policy (SPEC §10; token-apis.md "Organization maximum-TTL policy"): read by
/// `check --online`, which names the key to change; a rotation asking for more is refused by the service and its
/// error says the same; an existing token above a newly lowered limit stops working (401) and the liveness probe
/// reports why and which key to change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_maximum_ttl_policy_is_read_and_the_errors_name_the_key() {
    let env = Env::new(Config::default()).await;
    let team = env.tfc.add_team("acme", "platform");
    env.tfc
        .set_max_ttl("acme", "team", Some(Duration::from_secs(7 * 86_400)));
    let tokens = |lifetime: &str| {
        format!(
            "[tokens.ci-team]\nissuer = \"tfc\"\ntype = \"team\"\nteam_id = \"{team}\"\nlifetime = \"{lifetime}\"\nsinks = [{{ sink = \"vault\", path = \"ttl/team\" }}]\n\n[tokens.ci-org]\nissuer = \"tfc\"\ntype = \"organization\"\norganization = \"acme\"\nlifetime = \"30d\"\nsinks = [{{ sink = \"vault\", path = \"ttl/org\" }}]\n"
        )
    };
    let policy = env.policy(free_port(), &tokens("30d"));
    let check = env.cli(&["check", "--online"], &policy, &[]).await;
    assert_eq!(check.code, 1, "{}\n{}", check.stdout, check.stderr);
    assert!(
        check.stdout.contains(
            "token ci-team: FAILED: `lifetime` (30d) is above the maximum TTL of team tokens in organization \"acme\" (7d); lower `lifetime` in [tokens.ci-team] to 7d or less"
        ),
        "{}",
        check.stdout
    );
    assert!(
        check
            .stdout
            .contains("token ci-org: ok (lifetime within the maximum TTL of organization tokens"),
        "{}",
        check.stdout
    );
    let out = env.once(&policy, &[]).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("lower `lifetime` in [tokens.ci-team] (now 30d) to 7d or less"),
        "{}",
        out.stderr
    );
    assert!(env.bao.kv2_get("secret", "ttl/team").await.is_none());
    assert!(env.valid_of(TokenKind::Team).is_empty());

    // The organization lowers the limit for organization tokens below the stored one's lifetime: it stops working
    // at once, and the liveness probe says why.
    let listen = free_port();
    let policy = env.policy(listen, &tokens("5d"));
    let policy_text = std::fs::read_to_string(&policy)
        .unwrap()
        .replace("[daemon]\n", "[daemon]\nverify_interval = \"1m\"\n");
    std::fs::write(&policy, policy_text).unwrap();
    let daemon = env.daemon(&policy, listen, &[]).await;
    let org_id = wait_for(
        Duration::from_secs(30),
        "the organization token",
        || async {
            env.bao
                .kv2_get("secret", "ttl/org")
                .await
                .map(|r| id_of(&r))
        },
    )
    .await;
    env.tfc.set_max_ttl(
        "acme",
        "organization",
        Some(Duration::from_secs(10 * 86_400)),
    );
    assert!(!env
        .tfc
        .is_valid(env.record("ttl/org").await["token"].as_str().unwrap()));
    // The next probe comes `verify_interval` after the first, on a whole minute (probes coalesce on minute
    // boundaries): up to two minutes after the start, whatever second of the minute it was.
    let log = wait_for(Duration::from_secs(150), "the liveness verdict", || async {
        let log = daemon.stderr();
        log.contains("the current token is dead").then_some(log)
    })
    .await;
    assert!(
        log.contains(&format!(
            "the current token {org_id} is refused by the issuer: its lifetime (30d) is above the maximum TTL of organization tokens in organization \"acme\" (10d); lower `lifetime` in [tokens.ci-org] to 10d or less"
        )),
        "{log}"
    );
    assert_eq!(daemon.terminate(), 0);
}
