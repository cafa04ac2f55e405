//! Pulumi Cloud end to end: the strict Pulumi emulator mints, a real OpenBao stores, the daemon rotates. Every type
//! (organization, team, personal), overlap through `grace`, unique ≤ 40-character names, the org-admin permission
//! rule, org expiry caps, the orphan sweep by label, and a policy mixing TFC and Pulumi.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use token_rotator_emulators::pulumi::{TokenInfo, TokenKind};

use crate::harness::{
    free_port, run_cli_async, wait_for, DaemonProc, Issuers, Output, Stack, ROOT_TOKEN,
};

/// The shared [`Stack`], with Pulumi's helpers.
struct Env(Stack);

impl std::ops::Deref for Env {
    type Target = Stack;
    fn deref(&self) -> &Stack {
        &self.0
    }
}

impl Env {
    async fn new() -> Env {
        Env(Stack::new(Default::default()).await)
    }

    /// A policy with the issuer `pulumi` (credential from `$PULUMI_TOKEN`: alice, admin of `acme`), the sink
    /// `vault`, and `tokens`.
    fn policy(&self, listen: u16, tokens: &str) -> PathBuf {
        self.write_policy_for(Issuers::Pulumi, listen, "", "", tokens)
    }

    /// Runs the CLI with the stack's environment plus `extra` (which wins).
    async fn cli(&self, args: &[&str], extra: &[(&str, &str)]) -> Output {
        let mut envs = self.envs();
        envs.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        run_cli_async(
            args.iter().map(|a| a.to_string()).collect(),
            envs,
            Duration::from_secs(60),
        )
        .await
    }

    async fn once(&self, policy: &Path, extra: &[(&str, &str)]) -> Output {
        self.cli(
            &["run", "--once", "--config", policy.to_str().unwrap()],
            extra,
        )
        .await
    }

    /// A direct API call, as an operator (or a test) would make it.
    async fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = reqwest::Client::new()
            .request(method, format!("{}{path}", self.pulumi.url()))
            .header("Accept", "application/vnd.pulumi+8")
            .header("Authorization", format!("token {token}"));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Creates a token by hand (not through the daemon): returns (id, value).
    async fn mint_by_hand(&self, path: &str, token: &str, body: Value) -> (String, String) {
        let (status, reply) = self
            .api(reqwest::Method::POST, path, token, Some(body))
            .await;
        assert_eq!(status, 200, "{path}: {reply}");
        (
            reply["id"].as_str().unwrap().to_string(),
            reply["tokenValue"].as_str().unwrap().to_string(),
        )
    }

    fn info(&self, id: &str) -> TokenInfo {
        self.pulumi
            .all_tokens()
            .into_iter()
            .find(|t| t.id == id)
            .unwrap_or_else(|| panic!("no token {id} at the emulator"))
    }

    fn valid(&self, id: &str) -> bool {
        self.pulumi.valid_tokens().iter().any(|t| t.id == id)
    }

    /// Every token of `kind` whose label (name; description for personal tokens) is `<prefix>-<14 digits>`.
    fn labelled(&self, kind: TokenKind, prefix: &str) -> Vec<TokenInfo> {
        self.pulumi
            .all_tokens()
            .into_iter()
            .filter(|t| t.kind == kind && is_label(label_of(t), prefix))
            .collect()
    }

    /// The record holds the one token of this policy token that the emulator still accepts, with the issuer's own
    /// creation time and expiry.
    fn assert_record_is_the_one_valid(
        &self,
        record: &Value,
        kind: TokenKind,
        prefix: &str,
    ) -> TokenInfo {
        let value = record["token"].as_str().expect("record has a token");
        assert!(
            self.pulumi.is_valid(value),
            "the stored token is valid at the issuer"
        );
        let valid: Vec<TokenInfo> = self
            .labelled(kind, prefix)
            .into_iter()
            .filter(|t| self.valid(&t.id))
            .collect();
        assert_eq!(
            valid.len(),
            1,
            "exactly one valid {kind:?} token labelled {prefix}: {valid:?}"
        );
        let info = valid.into_iter().next().unwrap();
        assert_eq!(record["token_id"], json!(info.id));
        assert_eq!(self.pulumi.token_id_of(value), Some(info.id.clone()));
        assert_eq!(record["issuer"], "pulumi");
        assert_eq!(record["type"], kind.as_str());
        assert_eq!(
            time(&record["expires_at"]).timestamp(),
            info.expires,
            "expires_at is the issuer's expiry"
        );
        assert!(info.expires > 0, "an expiry is always requested");
        assert_eq!(
            time(&record["created_at"]).timestamp_millis(),
            info.created.timestamp_millis(),
            "created_at is the issuer's creation time"
        );
        info
    }
}

fn label_of(t: &TokenInfo) -> &str {
    if t.kind == TokenKind::Personal {
        &t.description
    } else {
        &t.name
    }
}

/// `<prefix>-<YYYYMMDDhhmmss>`.
fn is_label(label: &str, prefix: &str) -> bool {
    label
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('-'))
        .is_some_and(|ts| ts.len() == 14 && ts.bytes().all(|b| b.is_ascii_digit()))
}

fn time(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("not a time: {v}")))
        .unwrap()
        .with_timezone(&Utc)
}

fn now() -> DateTime<Utc> {
    token_rotator::clock::now()
}

fn id_of(record: &Value) -> String {
    record["token_id"].as_str().unwrap().to_string()
}

async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

const THREE_TYPES: &str = r#"[tokens.ci-org]
issuer = "pulumi"
type = "organization"
organization = "acme"
lifetime = "2h"
every = "1s"
grace = "0s"
sinks = [{ sink = "vault", path = "pulumi/org" }]

[tokens.ci-team]
issuer = "pulumi"
type = "team"
organization = "acme"
team = "platform"
lifetime = "2h"
every = "1s"
grace = "0s"
sinks = [{ sink = "vault", path = "pulumi/team" }]

[tokens.ci-personal]
issuer = "pulumi"
type = "personal"
name_prefix = "ci-me"
lifetime = "2h"
every = "1s"
grace = "0s"
sinks = [{ sink = "vault", path = "pulumi/personal" }]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_rotates_into_vault_with_the_issuers_expiry() {
    let env = Env::new().await;
    let policy = env.policy(free_port(), THREE_TYPES);
    let started = now();
    let out = env.once(&policy, &[("RUST_LOG", "trace")]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);

    let org = env.record("pulumi/org").await;
    let team = env.record("pulumi/team").await;
    let personal = env.record("pulumi/personal").await;
    let org_info = env.assert_record_is_the_one_valid(&org, TokenKind::Organization, "ci-org");
    let team_info = env.assert_record_is_the_one_valid(&team, TokenKind::Team, "ci-team");
    let personal_info = env.assert_record_is_the_one_valid(&personal, TokenKind::Personal, "ci-me");
    // Labels: names for org and team tokens, the description for personal tokens (they have no name).
    assert_eq!(org_info.description, "managed by token-rotator (ci-org)");
    assert_eq!(team_info.description, "managed by token-rotator (ci-team)");
    assert_eq!(team_info.team.as_deref(), Some("platform"));
    assert!(!org_info.admin, "admin defaults to false");
    assert_eq!(personal_info.user.as_deref(), Some("alice"));
    // `expires` = now + lifetime (unix seconds).
    for info in [&org_info, &team_info, &personal_info] {
        let asked = info.expires - started.timestamp();
        assert!(
            (7195..=7215).contains(&asked),
            "expires ≈ now + 2h, got +{asked}s"
        );
    }

    // The wire: `token` scheme, the Pulumi media type, JSON bodies, an audit reason on every change; each new
    // token proved itself with GET /api/user.
    let log = env.pulumi.request_log();
    assert!(!log.is_empty());
    for r in &log {
        assert_eq!(r.auth_scheme.as_deref(), Some("token"), "{r:?}");
        assert!(r.accept_is_pulumi(), "{r:?}");
        if r.method == "POST" || r.method == "DELETE" {
            assert!(
                r.query.as_deref().unwrap_or("").contains("reason="),
                "audit reason sent: {r:?}"
            );
        }
        if r.method == "POST" {
            assert_eq!(r.content_type.as_deref(), Some("application/json"));
        }
    }
    for info in [&org_info, &team_info, &personal_info] {
        assert!(
            log.iter().any(|r| r.method == "GET"
                && r.path == "/api/user"
                && r.status == 200
                && r.token_id.as_deref() == Some(info.id.as_str())),
            "token {} was proven with GET /api/user",
            info.id
        );
    }
    // Nothing secret in the logs, even at trace level.
    for secret in [
        org["token"].as_str().unwrap(),
        team["token"].as_str().unwrap(),
        personal["token"].as_str().unwrap(),
        env.pulumi_admin.as_str(),
        ROOT_TOKEN,
    ] {
        assert!(!out.stderr.contains(secret), "a secret leaked into the log");
    }

    // The next rotation (grace 0s) revokes each old token through its own DELETE endpoint.
    sleep_ms(1100).await;
    let out = env.once(&policy, &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    for (path, old, kind, prefix) in [
        ("pulumi/org", &org, TokenKind::Organization, "ci-org"),
        ("pulumi/team", &team, TokenKind::Team, "ci-team"),
        ("pulumi/personal", &personal, TokenKind::Personal, "ci-me"),
    ] {
        let new = env.record(path).await;
        assert_ne!(id_of(&new), id_of(old), "{path} rotated");
        assert!(!env.valid(&id_of(old)), "{path}: the old token was revoked");
        env.assert_record_is_the_one_valid(&new, kind, prefix);
    }
    assert!(
        env.pulumi.is_valid(&env.pulumi_admin),
        "the issuer credential is untouched"
    );
    for path in [
        "/api/orgs/acme/tokens/",
        "/api/orgs/acme/teams/platform/tokens/",
        "/api/user/tokens/",
    ] {
        assert!(
            env.pulumi
                .request_log()
                .iter()
                .any(|r| r.method == "DELETE" && r.path.starts_with(path) && r.status == 204),
            "revoked through DELETE {path}:id"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_old_token_stays_valid_through_grace_then_is_revoked() {
    let env = Env::new().await;
    let tokens = |every: &str| {
        format!(
            r#"[tokens.ci-team]
issuer = "pulumi"
type = "team"
organization = "acme"
team = "platform"
lifetime = "1h"
every = "{every}"
grace = "2s"
sinks = [{{ sink = "vault", path = "pulumi/team" }}]
"#
        )
    };
    let policy = env.policy(free_port(), &tokens("1s"));
    assert_eq!(env.once(&policy, &[]).await.code, 0);
    let first = env.record("pulumi/team").await;
    sleep_ms(1100).await;
    let out = env.once(&policy, &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let second = env.record("pulumi/team").await;
    assert_ne!(id_of(&first), id_of(&second));
    // Overlap: both work right after the switch.
    assert!(
        env.valid(&id_of(&first)),
        "the old token stays valid through grace"
    );
    assert!(env.pulumi.is_valid(second["token"].as_str().unwrap()));

    // Grace passed: the next run revokes it (nothing else is due).
    sleep_ms(2100).await;
    let policy = env.policy(free_port(), &tokens("1h"));
    let out = env.once(&policy, &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!env.valid(&id_of(&first)), "revoked after grace");
    assert_eq!(id_of(&env.record("pulumi/team").await), id_of(&second));
    env.assert_record_is_the_one_valid(&second, TokenKind::Team, "ci-team");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_stay_unique_and_within_forty_characters_over_100_rotations() {
    let env = Env::new().await;
    let started = Instant::now();
    // A token name longer than 25 characters: the default name_prefix is its first 25 characters.
    let name = "ci-platform-team-deployments-prod";
    let prefix = &name[..25];
    let port = free_port();
    let policy = env.policy(
        port,
        &format!(
            r#"[tokens.{name}]
issuer = "pulumi"
type = "team"
organization = "acme"
team = "platform"
lifetime = "1h"
grace = "0s"
sinks = [{{ sink = "vault", path = "pulumi/names" }}]
"#
        ),
    );
    let config = policy.to_str().unwrap();

    // Two rotations by two processes within one second: the second name is taken (409, reserved forever), so the
    // second process picks a fresh name once. Started just after a second boundary; retried if the machine was too
    // slow to fit both into one second.
    let conflicts = || {
        env.pulumi
            .request_log()
            .iter()
            .filter(|r| r.method == "POST" && r.status == 409)
            .count()
    };
    let mut rotations = 0;
    for _ in 0..3 {
        let subsec = now().timestamp_subsec_millis();
        sleep_ms(u64::from(1000 - subsec) + 20).await;
        for _ in 0..2 {
            let out = env.cli(&["rotate", "--config", config, name], &[]).await;
            assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
            rotations += 1;
        }
        if conflicts() > 0 {
            break;
        }
    }
    assert!(
        conflicts() > 0,
        "two rotations within one second met a taken name"
    );

    // The second process borrowed the next second for its name; let the clock pass it (a third process in the same
    // second would meet two taken names, and the rotation retries only once).
    sleep_ms(2100).await;

    // Many more through a running daemon, each forced with `rotate`: faster than one a second.
    let envs = env.envs();
    let refs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let daemon = DaemonProc::start(&policy, port, &refs).await;
    // /healthz answers before the control socket is bound.
    let socket = env.work.state_dir().join("control.sock");
    wait_for(Duration::from_secs(10), "the control socket", || async {
        socket.exists().then_some(())
    })
    .await;
    while rotations < 100 {
        let out = env.cli(&["rotate", "--config", config, name], &[]).await;
        assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
        assert!(
            out.stderr.contains("handed to the running daemon"),
            "{}",
            out.stderr
        );
        rotations += 1;
    }
    assert_eq!(daemon.terminate(), 0);

    let ours = env.labelled(TokenKind::Team, prefix);
    assert_eq!(
        ours.len(),
        rotations,
        "one token per rotation, none minted twice"
    );
    let names: HashSet<&str> = ours.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names.len(), ours.len(), "every name is unique");
    for t in &ours {
        assert_eq!(
            t.name.chars().count(),
            40,
            "{} is 25 + 1 + 14 characters",
            t.name
        );
    }
    let created_seconds: HashSet<i64> = ours.iter().map(|t| t.created.timestamp()).collect();
    assert!(
        created_seconds.len() < ours.len(),
        "several rotations happened within the same second"
    );
    let record = env.record("pulumi/names").await;
    env.assert_record_is_the_one_valid(&record, TokenKind::Team, prefix);
    assert!(
        started.elapsed() < Duration::from_secs(50),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn org_tokens_need_an_org_admins_personal_token() {
    let env = Env::new().await;
    let policy = env.policy(
        free_port(),
        r#"[tokens.ci-org]
issuer = "pulumi"
type = "organization"
organization = "acme"
lifetime = "1h"
every = "1s"
grace = "0s"
sinks = [{ sink = "vault", path = "pulumi/org" }]
"#,
    );
    assert_eq!(env.once(&policy, &[]).await.code, 0);
    let before = env.record("pulumi/org").await;
    let version = env.bao.kv2_version("secret", "pulumi/org").await;

    // Machine tokens, made by the admin: a member-level and an admin org token.
    let (_, member_bot) = env
        .mint_by_hand(
            "/api/orgs/acme/tokens",
            &env.pulumi_admin,
            json!({"name": "bot-member", "description": "ci bot", "admin": false, "expires": 0}),
        )
        .await;
    let (_, admin_bot) = env
        .mint_by_hand(
            "/api/orgs/acme/tokens",
            &env.pulumi_admin,
            json!({"name": "bot-admin", "description": "ci bot", "admin": true, "expires": 0}),
        )
        .await;
    sleep_ms(1100).await;
    for machine in [&member_bot, &admin_bot] {
        let out = env
            .once(&policy, &[("PULUMI_TOKEN", machine.as_str())])
            .await;
        assert_eq!(out.code, 1, "{}", out.stderr);
        assert!(
            out.stderr.contains("403")
                && out.stderr.contains(
                    "organization tokens can only be created or deleted with the personal access token of an admin of \"acme\"; machine tokens (organization or team tokens, even admin ones) cannot"
                ),
            "the failure explains the permission rule: {}",
            out.stderr
        );
        assert!(
            !out.stderr.contains(machine.as_str()),
            "the credential never appears"
        );
        // The sinks are untouched and the current token still works.
        assert_eq!(env.bao.kv2_version("secret", "pulumi/org").await, version);
        assert_eq!(env.record("pulumi/org").await, before);
        env.assert_record_is_the_one_valid(&before, TokenKind::Organization, "ci-org");
    }
    assert_eq!(
        env.labelled(TokenKind::Organization, "ci-org").len(),
        1,
        "nothing was minted"
    );
}

/// Pulumi's access token expiry policy (SPEC §10, pulumi/docs PR 20344) refuses organization and team tokens whose
/// expiry is beyond its cap: `check --online` reads the cap and names the key to change, a rotation that asks for more
/// fails with the same advice and stores nothing, and one within the cap works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_org_expiry_policy_refuses_longer_tokens_and_the_error_names_the_key() {
    let env = Env::new().await;
    // The admin's own personal token never expires, so the policy would bar it from the organization's routes
    // (403) as the service does; an exemption stands in for an admin token that complies.
    let admin_id = env.pulumi.token_id_of(&env.pulumi_admin).unwrap();
    env.pulumi.set_expiry_policy_exempt(&admin_id, true);
    env.pulumi.set_expiry_policy("acme", Some(7));
    let tokens = |lifetime: &str| {
        format!(
            r#"[tokens.ci-org]
issuer = "pulumi"
type = "organization"
organization = "acme"
lifetime = "{lifetime}"
sinks = [{{ sink = "vault", path = "pulumi/org" }}]

[tokens.ci-team]
issuer = "pulumi"
type = "team"
organization = "acme"
team = "platform"
lifetime = "{lifetime}"
sinks = [{{ sink = "vault", path = "pulumi/team" }}]
"#
        )
    };
    let policy = env.policy(free_port(), &tokens("30d"));
    let check = env
        .cli(
            &["check", "--online", "--config", policy.to_str().unwrap()],
            &[],
        )
        .await;
    assert_eq!(check.code, 1, "{}\n{}", check.stdout, check.stderr);
    for name in ["ci-org", "ci-team"] {
        assert!(
            check.stdout.contains(&format!(
                "token {name}: FAILED: `lifetime` (30d) is above the access token expiry policy of organization \"acme\""
            )) && check
                .stdout
                .contains(&format!("lower `lifetime` in [tokens.{name}] to 7d or less")),
            "{}",
            check.stdout
        );
    }
    let out = env.once(&policy, &[]).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("lower `lifetime` in [tokens.ci-org] (now 30d) to 7d or less"),
        "{}",
        out.stderr
    );
    assert!(env.bao.kv2_get("secret", "pulumi/org").await.is_none());
    assert!(env.bao.kv2_get("secret", "pulumi/team").await.is_none());
    assert!(
        env.labelled(TokenKind::Organization, "ci-org").is_empty(),
        "nothing was created"
    );

    // Within the cap: minted with the requested expiry, stored, and `check --online` agrees.
    let policy = env.policy(free_port(), &tokens("5d"));
    let out = env.once(&policy, &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    for (path, kind, prefix) in [
        ("pulumi/org", TokenKind::Organization, "ci-org"),
        ("pulumi/team", TokenKind::Team, "ci-team"),
    ] {
        let record = env.record(path).await;
        let info = env.assert_record_is_the_one_valid(&record, kind, prefix);
        let hours = (time(&record["expires_at"]) - now()).num_hours();
        assert!((5 * 24 - 1..=5 * 24).contains(&hours), "{hours}h");
        assert_eq!(time(&record["expires_at"]).timestamp(), info.expires);
    }
    let check = env
        .cli(
            &["check", "--online", "--config", policy.to_str().unwrap()],
            &[],
        )
        .await;
    assert_eq!(check.code, 0, "{}\n{}", check.stdout, check.stderr);
    assert!(
        check
            .stdout
            .contains("token ci-org: ok (lifetime within the access token expiry policy"),
        "{}",
        check.stdout
    );
}

#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_with_our_label_are_swept_and_foreign_tokens_are_never_touched() {
    let env = Env::new().await;
    const TEAM: &str = r#"[tokens.ci-team]
issuer = "pulumi"
type = "team"
organization = "acme"
team = "platform"
lifetime = "1h"
every = "1s"
grace = "0s"
sinks = [{ sink = "vault", path = "pulumi/team" }]
"#;
    const PERSONAL: &str = r#"[tokens.ci-me]
issuer = "pulumi"
type = "personal"
lifetime = "1h"
every = "1s"
grace = "0s"
sinks = [{ sink = "vault", path = "pulumi/personal" }]
"#;
    let both = env.policy(free_port(), &format!("{TEAM}\n{PERSONAL}"));
    assert_eq!(env.once(&both, &[]).await.code, 0);
    let team0 = id_of(&env.record("pulumi/team").await);
    let personal0 = id_of(&env.record("pulumi/personal").await);

    // Tokens someone else made: never ours, whatever they look like.
    let team_path = "/api/orgs/acme/teams/platform/tokens";
    let hand = |name: &str| json!({"name": name, "description": "by hand", "expires": 0});
    let (foreign_team, _) = env
        .mint_by_hand(team_path, &env.pulumi_admin, hand("made-by-hand"))
        .await;
    let (lookalike_team, _) = env
        .mint_by_hand(
            team_path,
            &env.pulumi_admin,
            hand("ci-team-other-20200101000000"),
        )
        .await;
    let (foreign_personal, _) = env
        .mint_by_hand(
            "/api/user/tokens",
            &env.pulumi_admin,
            json!({"description": "laptop", "expires": 0}),
        )
        .await;
    // Untracked tokens that carry our label (as a crash of an older version would leave them).
    let (labelled_team, _) = env
        .mint_by_hand(team_path, &env.pulumi_admin, hand("ci-team-20200101000000"))
        .await;
    let (labelled_personal, _) = env
        .mint_by_hand(
            "/api/user/tokens",
            &env.pulumi_admin,
            json!({"description": "ci-me-20200101000000", "expires": 0}),
        )
        .await;

    // The issuer answers, then the process dies before the journal write: a labelled token nobody tracks.
    let mut crash_orphans = Vec::new();
    for (tokens, kind, prefix, current) in [
        (TEAM, TokenKind::Team, "ci-team", &team0),
        (PERSONAL, TokenKind::Personal, "ci-me", &personal0),
    ] {
        sleep_ms(1100).await;
        let policy = env.policy(free_port(), tokens);
        let out = env
            .once(&policy, &[("TOKEN_ROTATOR_FAILPOINT", "after-create")])
            .await;
        assert_ne!(out.code, 0);
        let orphans: Vec<String> = env
            .labelled(kind, prefix)
            .into_iter()
            .filter(|t| {
                env.valid(&t.id)
                    && t.id != *current
                    && !t.name.ends_with("20200101000000")
                    && !t.description.ends_with("20200101000000")
            })
            .map(|t| t.id)
            .collect();
        assert_eq!(
            orphans.len(),
            1,
            "the crash left one untracked {kind:?} token"
        );
        crash_orphans.extend(orphans);
    }

    // The next rotation of each token sweeps every untracked token with its label.
    sleep_ms(1100).await;
    let both = env.policy(free_port(), &format!("{TEAM}\n{PERSONAL}"));
    let out = env.once(&both, &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    for id in crash_orphans
        .iter()
        .chain([&labelled_team, &labelled_personal])
    {
        assert!(
            !env.valid(id),
            "the orphan {} ({}) was revoked",
            id,
            label_of(&env.info(id))
        );
    }
    for id in [&foreign_team, &lookalike_team, &foreign_personal] {
        assert!(
            env.valid(id),
            "{} without our label is untouched",
            label_of(&env.info(id))
        );
    }
    assert!(
        env.pulumi.is_valid(&env.pulumi_admin),
        "the credential is untouched"
    );
    let team = env.record("pulumi/team").await;
    let personal = env.record("pulumi/personal").await;
    assert_ne!(id_of(&team), team0);
    assert_ne!(id_of(&personal), personal0);
    env.assert_record_is_the_one_valid(&team, TokenKind::Team, "ci-team");
    env.assert_record_is_the_one_valid(&personal, TokenKind::Personal, "ci-me");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tfc_org_token_and_a_pulumi_team_token_rotate_in_one_run() {
    let env = Env::new().await;
    let tfc = &env.tfc;
    let tfc_admin = env.admin.clone();
    // An admin organization token may manage team tokens (an org admin's personal token is not needed).
    let (_, admin_bot) = env
        .mint_by_hand(
            "/api/orgs/acme/tokens",
            &env.pulumi_admin,
            json!({"name": "bot-admin", "description": "ci bot", "admin": true, "expires": 0}),
        )
        .await;
    let policy = env.write_policy_for(
        Issuers::Both,
        free_port(),
        "",
        "",
        r#"[tokens.tfc-org]
issuer = "tfc"
type = "organization"
organization = "acme"
sinks = [{ sink = "vault", path = "mixed/tfc-org" }]

[tokens.pulumi-team]
issuer = "pulumi"
type = "team"
organization = "acme"
team = "platform"
sinks = [{ sink = "vault", path = "mixed/pulumi-team" }]
"#,
    );
    let out = env
        .once(
            &policy,
            &[
                ("TFC_TOKEN", tfc_admin.as_str()),
                ("PULUMI_TOKEN", admin_bot.as_str()),
            ],
        )
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let t = env.record("mixed/tfc-org").await;
    assert_eq!(t["issuer"], "tfc");
    assert_eq!(t["type"], "organization");
    assert!(tfc.is_valid(t["token"].as_str().unwrap()));
    let p = env.record("mixed/pulumi-team").await;
    let info = env.assert_record_is_the_one_valid(&p, TokenKind::Team, "pulumi-team");
    assert_eq!(info.created_by, "acme", "created with the admin org token");
    // Default lifetime: 30 days.
    let days = (time(&p["expires_at"]) - now()).num_hours();
    assert!((30 * 24 - 1..=30 * 24).contains(&days), "{days}h");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttling_pulumi_is_waited_out_honouring_retry_after() {
    let env = Env::new().await;
    let policy = env.policy(
        free_port(),
        r#"[tokens.ci-team]
issuer = "pulumi"
type = "team"
organization = "acme"
team = "platform"
sinks = [{ sink = "vault", path = "pulumi/team" }]
"#,
    );
    env.pulumi
        .throttle_for(Duration::from_millis(1500), Some(2));
    let started = Instant::now();
    let out = env.once(&policy, &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(started.elapsed() >= Duration::from_millis(1500));
    let throttled = env
        .pulumi
        .request_log()
        .iter()
        .filter(|r| r.status == 429)
        .count();
    assert!(
        throttled <= 2,
        "no retry storm: {throttled} requests met the 429"
    );
    let record = env.record("pulumi/team").await;
    env.assert_record_is_the_one_valid(&record, TokenKind::Team, "ci-team");
}
