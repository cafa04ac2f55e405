//! End to end: the TFC emulator mints, a real OpenBao stores, the daemon rotates. Assertions are on what the
//! sink holds, which tokens the issuer still accepts, and what `/metrics` and `/readyz` say.

use std::time::Duration;

use serde_json::{json, Value};
use token_rotator_emulators::tfc::{Config, TokenKind};

use crate::harness::{
    assert_valid_org_record, free_port, metric, run_cli_async, wait_for, DaemonProc, Stack,
    ROOT_TOKEN,
};

/// The shared stack plus this module's single org-token policy.
struct Env(Stack);

impl std::ops::Deref for Env {
    type Target = Stack;
    fn deref(&self) -> &Stack {
        &self.0
    }
}

async fn setup() -> Env {
    Env(Stack::new(Config::default()).await)
}

impl Env {
    /// The `ci-org` organization token of `acme`, stored at `<mount>/ci/tfc-org`.
    fn policy(&self, listen: u16, mount: &str, token_keys: &str) -> std::path::PathBuf {
        self.write_policy(
            listen,
            "",
            &format!("mount = \"{mount}\""),
            &format!(
                "[tokens.ci-org]\nissuer = \"tfc\"\ntype = \"organization\"\norganization = \"acme\"\n{token_keys}\nsinks = [{{ sink = \"vault\", path = \"ci/tfc-org\" }}]\n"
            ),
        )
    }

    /// The org tokens of `acme` the emulator still accepts.
    fn valid_org_tokens(&self) -> Vec<token_rotator_emulators::tfc::TokenInfo> {
        self.tfc
            .valid_tokens()
            .into_iter()
            .filter(|t| t.kind == TokenKind::Organization && t.organization == "acme")
            .collect()
    }

    fn org_creates(&self) -> usize {
        self.tfc
            .request_count_for("POST", "/api/v2/organizations/acme/authentication-token")
    }

    /// The sink record holds exactly the one org token the emulator still considers valid.
    fn assert_record_is_the_valid_token(&self, record: &Value) {
        assert_valid_org_record(&self.tfc, record);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn org_token_rotates_into_vault_end_to_end() {
    let env = setup().await;
    let port = free_port();
    // Due 4 s after each creation: the daemon rotates every few seconds.
    let policy = env.policy(
        port,
        "secret",
        "lifetime = \"40s\"\nrotate_before = \"36s\"",
    );
    let envs = env.envs();
    let mut env_refs: Vec<(&str, &str)> =
        envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    env_refs.push(("RUST_LOG", "trace"));
    let daemon = DaemonProc::start(&policy, port, &env_refs).await;

    let first = wait_for(Duration::from_secs(20), "the first record", || async {
        env.bao.kv2_get("secret", "ci/tfc-org").await
    })
    .await;
    env.assert_record_is_the_valid_token(&first);
    let first_value = first["token"].as_str().unwrap().to_string();

    // The expiry metric equals the issuer's expired-at; the token is ready.
    let text = wait_for(Duration::from_secs(10), "ready metric", || async {
        let m = daemon.metrics().await;
        (metric(&m, "token_rotator_token_ready", &[("token", "ci-org")]) == Some(1.0)).then_some(m)
    })
    .await;
    let expiry = metric(
        &text,
        "token_rotator_token_expiry_timestamp_seconds",
        &[
            ("token", "ci-org"),
            ("issuer", "tfc"),
            ("type", "organization"),
        ],
    )
    .expect("expiry metric");
    let valid = env.valid_org_tokens();
    assert_eq!(expiry as i64, valid[0].expired_at.unwrap().timestamp());
    assert!(
        metric(
            &text,
            "token_rotator_rotations_total",
            &[("token", "ci-org"), ("result", "success")]
        )
        .unwrap()
            >= 1.0
    );
    assert_eq!(
        metric(
            &text,
            "token_rotator_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, "token_rotator_config_last_reload_success", &[]),
        Some(1.0)
    );
    for name in [
        "token_rotator_token_next_rotation_timestamp_seconds",
        "token_rotator_token_last_success_timestamp_seconds",
        "token_rotator_token_consecutive_failures",
        "token_rotator_revocations_total",
        "token_rotator_rotation_duration_seconds_bucket",
        "token_rotator_issuer_requests_total",
        "token_rotator_sink_writes_total",
    ] {
        assert!(text.contains(name), "{name} is exported");
    }
    let (code, body) = daemon.readyz().await;
    assert_eq!(
        (code, &body),
        (200, &json!({"ready": true, "unhealthy": []}))
    );

    // A second rotation replaces it; the issuer no longer accepts the old value.
    let second = wait_for(Duration::from_secs(20), "a second rotation", || async {
        env.bao
            .kv2_get("secret", "ci/tfc-org")
            .await
            .filter(|r| r["token"].as_str() != Some(first_value.as_str()))
    })
    .await;
    env.assert_record_is_the_valid_token(&second);
    assert!(
        !env.tfc.is_valid(&first_value),
        "the replaced token is dead"
    );

    let stderr = daemon.stderr();
    let code = daemon.terminate();
    assert_eq!(code, 0, "SIGTERM exits 0");
    for secret in [
        first_value.as_str(),
        second["token"].as_str().unwrap(),
        env.admin.as_str(),
        ROOT_TOKEN,
    ] {
        assert!(
            !stderr.contains(secret),
            "a secret value appeared in the daemon's stderr"
        );
    }
    assert!(
        stderr.contains("rotation complete"),
        "the log tells what happened"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_once_rotates_only_what_is_due() {
    let env = setup().await;
    let policy = env.policy(free_port(), "secret", "lifetime = \"30d\"");
    let out = env.once(&policy, &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let record = env
        .bao
        .kv2_get("secret", "ci/tfc-org")
        .await
        .expect("record written");
    env.assert_record_is_the_valid_token(&record);
    assert_eq!(env.org_creates(), 1);

    // Nothing is due 20 days before rotate_before: a second run changes nothing.
    let out = env.once(&policy, &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(env.org_creates(), 1, "no second mint");
    assert_eq!(
        env.bao.kv2_get("secret", "ci/tfc-org").await.unwrap()["token_id"],
        record["token_id"]
    );
    assert_eq!(env.bao.kv2_version("secret", "ci/tfc-org").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_v1_mount_is_detected_and_written() {
    let env = setup().await;
    env.bao.enable_kv("kv1", 1).await;
    let policy = env.policy(free_port(), "kv1", "lifetime = \"30d\"");
    let out = env.once(&policy, &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let record = env
        .bao
        .kv1_get("kv1", "ci/tfc-org")
        .await
        .expect("KV v1 record");
    env.assert_record_is_the_valid_token(&record);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_write_is_detected_and_never_overwritten() {
    let env = setup().await;
    let policy = env.policy(free_port(), "secret", "lifetime = \"30d\"");
    // The issuer answers slowly; meanwhile someone else writes the same path.
    env.tfc.set_create_delay(Duration::from_secs(2));
    let run = tokio::spawn({
        let policy = policy.clone();
        let envs = env.envs();
        async move {
            run_cli_async(
                vec![
                    "run".into(),
                    "--once".into(),
                    "--config".into(),
                    policy.display().to_string(),
                ],
                envs,
                Duration::from_secs(60),
            )
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    let other = json!({"token": "written-by-someone-else", "owner": "another tool"});
    env.bao.kv2_put("secret", "ci/tfc-org", other.clone()).await;
    let out = run.await.unwrap();
    assert_eq!(out.code, 1, "the conflict fails the run: {}", out.stderr);
    assert!(
        out.stderr.contains("check-and-set"),
        "the conflict is reported: {}",
        out.stderr
    );
    assert_eq!(
        env.bao.kv2_get("secret", "ci/tfc-org").await.unwrap(),
        other,
        "never overwritten"
    );
    assert_eq!(env.org_creates(), 1);

    // The minted token was journaled: the next run re-reads the record and stores it, without minting again.
    env.tfc.set_create_delay(Duration::ZERO);
    let out = env.once(&policy, &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(env.org_creates(), 1, "nothing minted twice");
    let record = env.bao.kv2_get("secret", "ci/tfc-org").await.unwrap();
    env.assert_record_is_the_valid_token(&record);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_credential_fails_with_a_clear_message_and_touches_nothing() {
    let env = setup().await;
    let policy = env.policy(free_port(), "secret", "lifetime = \"30d\"");
    let out = env
        .once(&policy, &[("TFC_TOKEN", "not-a-valid-token")])
        .await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("401"), "{}", out.stderr);
    assert!(
        out.stderr.contains("check `token` of [issuers.tfc]"),
        "{}",
        out.stderr
    );
    assert!(env.bao.kv2_get("secret", "ci/tfc-org").await.is_none());
    assert!(!out.stderr.contains("not-a-valid-token"));
}

#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_the_journal_write_resumes_without_minting_again() {
    let env = setup().await;
    let policy = env.policy(free_port(), "secret", "lifetime = \"30d\"");
    let out = env
        .once(&policy, &[("TOKEN_ROTATOR_FAILPOINT", "after-journal")])
        .await;
    assert_ne!(out.code, 0, "the process aborted: {}", out.stderr);
    assert!(
        env.bao.kv2_get("secret", "ci/tfc-org").await.is_none(),
        "nothing stored before the crash"
    );
    assert_eq!(
        env.valid_org_tokens().len(),
        1,
        "the issuer minted (and replaced the old token)"
    );

    let out = env.once(&policy, &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("resuming an interrupted rotation"),
        "{}",
        out.stderr
    );
    assert_eq!(
        env.org_creates(),
        1,
        "the journaled value was pushed, not re-minted"
    );
    let record = env.bao.kv2_get("secret", "ci/tfc-org").await.unwrap();
    env.assert_record_is_the_valid_token(&record);
}

#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_journal_never_shows_the_token_and_still_resumes() {
    let env = setup().await;
    let key = env.work.write_secret("state.key", &"ab".repeat(32));
    let text =
        std::fs::read_to_string(env.policy(free_port(), "secret", "lifetime = \"30d\"")).unwrap();
    let text = text.replacen(
        "[daemon]\n",
        &format!("[daemon]\nstate_key = {{ file = \"{}\" }}\n", key.display()),
        1,
    );
    let policy = env.work.write_policy(&text);
    let out = env
        .once(&policy, &[("TOKEN_ROTATOR_FAILPOINT", "after-journal")])
        .await;
    assert_ne!(out.code, 0);
    let raw = String::from_utf8(env.work.journal_entry("ci-org").expect("journaled")).unwrap();
    let log = String::from_utf8_lossy(&env.work.journal_log()).into_owned();
    assert!(raw.contains("xchacha20poly1305"), "sealed: {raw}");
    let valid = env.valid_org_tokens();
    assert_eq!(valid.len(), 1);
    assert!(
        !raw.contains(&valid[0].id) && !log.contains(&valid[0].id),
        "not even the token id is readable, in the entry or anywhere in the log"
    );

    // A wrong key is refused with a clear error and nothing is lost.
    let wrong = env.work.write_secret("wrong.key", &"cd".repeat(32));
    let wrong_policy = env
        .work
        .write_policy(&text.replace(&key.display().to_string(), &wrong.display().to_string()));
    let out = env.once(&wrong_policy, &[]).await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("wrong `state_key`"), "{}", out.stderr);

    let policy = env.work.write_policy(&text);
    let out = env.once(&policy, &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        env.org_creates(),
        1,
        "resumed from the sealed journal, not re-minted"
    );
    env.assert_record_is_the_valid_token(&env.bao.kv2_get("secret", "ci/tfc-org").await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_org_token_that_is_its_own_issuer_credential_rotates_itself() {
    let env = setup().await;
    // Bootstrap: the org token itself, stored where the daemon keeps it, is the issuer's credential.
    let expires = token_rotator::clock::now() + chrono::TimeDelta::days(30);
    let (id0, v0) = env
        .tfc
        .mint(TokenKind::Organization, "acme", None, Some(expires));
    env.bao
        .kv2_put(
            "secret",
            "ci/tfc-org",
            json!({"token": v0, "token_id": id0, "issuer": "tfc", "type": "organization",
                   "created_at": "2026-01-01T00:00:00Z", "expires_at": crate::harness::rfc3339(expires)}),
        )
        .await;
    let port = free_port();
    let text =
        std::fs::read_to_string(env.policy(port, "secret", "lifetime = \"30d\"\nevery = \"2s\""))
            .unwrap();
    let policy = env.work.write_policy(&text.replace(
        "token = { env = \"TFC_TOKEN\" }",
        "token = { sink = \"vault\", path = \"ci/tfc-org\" }",
    ));
    let envs = [("VAULT_TOKEN", ROOT_TOKEN)];
    let daemon = DaemonProc::start(&policy, port, &envs).await;
    // Two rotations in a row: the second only works if the daemon switched to the first one's value.
    let mut seen = vec![id0.clone()];
    for n in 0..2 {
        let id = wait_for(Duration::from_secs(20), "a self-rotation", || async {
            let r = env.bao.kv2_get("secret", "ci/tfc-org").await?;
            let id = r["token_id"].as_str()?.to_string();
            (!seen.contains(&id)).then_some(id)
        })
        .await;
        assert!(
            !env.tfc.is_valid(&v0),
            "rotation {n}: the bootstrap token is dead"
        );
        seen.push(id);
    }
    let m = daemon.metrics().await;
    assert_eq!(
        metric(
            &m,
            "token_rotator_token_consecutive_failures",
            &[("token", "ci-org")]
        ),
        Some(0.0),
        "{}",
        daemon.stderr()
    );
    assert_eq!(daemon.terminate(), 0);

    // After a restart the credential is read from the sink again: the next rotation works too.
    let daemon = DaemonProc::start(&policy, port, &envs).await;
    let last = seen.last().unwrap().clone();
    wait_for(
        Duration::from_secs(20),
        "a rotation after restart",
        || async {
            let r = env.bao.kv2_get("secret", "ci/tfc-org").await?;
            (r["token_id"].as_str()? != last).then_some(())
        },
    )
    .await;
    let record = env.bao.kv2_get("secret", "ci/tfc-org").await.unwrap();
    env.assert_record_is_the_valid_token(&record);
    assert_eq!(daemon.terminate(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_at_the_sink_path_is_reported_treated_as_no_record_and_replaced_through_cas() {
    let env = setup().await;
    env.bao
        .kv2_put(
            "secret",
            "ci/tfc-org",
            json!({"password": "hunter2-not-ours", "note": "left by a human"}),
        )
        .await;
    let policy = env.policy(free_port(), "secret", "lifetime = \"30d\"");
    let out = env.once(&policy, &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("not our record"),
        "the garbage is reported: {}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("hunter2-not-ours"),
        "without quoting it"
    );
    let record = env.bao.kv2_get("secret", "ci/tfc-org").await.unwrap();
    env.assert_record_is_the_valid_token(&record);
    assert_eq!(
        env.bao.kv2_version("secret", "ci/tfc-org").await,
        2,
        "written with cas = the garbage's version"
    );
}
