//! Sinks against real services: AWS Secrets Manager (moto's server mode), the file sink, OpenBao with AppRole and
//! Kubernetes auth and with TLS, and one token fanned out to all three kinds.
//!
//! moto caveat (shared/reference/secret-stores.md B.9, gap 1): after a stage move moto may answer a plain
//! `GetSecretValue` with the old version, so these tests read with an explicit `VersionStage` and check labels
//! with `DescribeSecret`.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aws_sdk_secretsmanager::config::{BehaviorVersion, Credentials, Region};
use serde_json::{json, Value};
use token_rotator::record::SinkRecord;
use token_rotator::secret::SecretString;
use token_rotator::sink::aws::AwsSinkConfig;
use token_rotator::sink::aws::{client_request_token, AwsSink};
use token_rotator::sink::{Content, Sink, SinkErrorKind, Target, Version};
use token_rotator_emulators::tfc::Config;

use crate::harness::{
    self, assert_valid_org_record, file_sink_table, free_port, run_cli, run_cli_async, wait_for,
    Bao, DaemonProc, Issuers, Moto, Output, Stack, Workdir, ROOT_TOKEN,
};

const REGION: &str = "us-east-1";
/// The secret access key the daemon gets; it must never show up in a log.
const AWS_SECRET_KEY: &str = "aws-secret-key-never-logged";

// ---------------------------------------------------------------------------------------------------------------
// moto

/// What these tests do with the shared moto server.
impl Moto {
    /// A Secrets Manager client of the test itself, to look at what the daemon left.
    fn client(&self) -> aws_sdk_secretsmanager::Client {
        let conf = aws_sdk_secretsmanager::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .endpoint_url(&self.url)
            .credentials_provider(Credentials::new("testing", "testing", None, None, "tests"))
            .build();
        aws_sdk_secretsmanager::Client::from_conf(conf)
    }

    /// The sink in this process, with static credentials (no environment variables touched).
    fn sink(&self) -> AwsSink {
        let sdk = aws_config::SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .credentials_provider(
                aws_sdk_secretsmanager::config::SharedCredentialsProvider::new(Credentials::new(
                    "testing", "testing", None, None, "tests",
                )),
            )
            .build();
        AwsSink::from_sdk_config(
            "aws",
            &AwsSinkConfig {
                region: Some(REGION.into()),
                endpoint_url: Some(self.url.clone()),
                kms_key_id: None,
            },
            &sdk,
        )
        .unwrap()
    }

    /// The environment a daemon process needs: static credentials, no profile files, no IMDS.
    fn envs(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", "AKIDTOKENROTATORTEST"),
            ("AWS_SECRET_ACCESS_KEY", AWS_SECRET_KEY),
            ("AWS_REGION", REGION),
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("AWS_CONFIG_FILE", "/nonexistent/aws-config"),
            (
                "AWS_SHARED_CREDENTIALS_FILE",
                "/nonexistent/aws-credentials",
            ),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }
}

/// `VersionId → stages` of a secret.
async fn stages(sm: &aws_sdk_secretsmanager::Client, id: &str) -> HashMap<String, Vec<String>> {
    sm.describe_secret()
        .secret_id(id)
        .send()
        .await
        .unwrap()
        .version_ids_to_stages()
        .cloned()
        .unwrap_or_default()
}

fn holder<'a>(stages: &'a HashMap<String, Vec<String>>, label: &str) -> Vec<&'a str> {
    stages
        .iter()
        .filter(|(_, s)| s.iter().any(|l| l == label))
        .map(|(v, _)| v.as_str())
        .collect()
}

/// The `SecretString` at `stage`, parsed.
async fn secret_at(sm: &aws_sdk_secretsmanager::Client, id: &str, stage: &str) -> (String, Value) {
    let out = sm
        .get_secret_value()
        .secret_id(id)
        .version_stage(stage)
        .send()
        .await
        .unwrap();
    (
        out.version_id().unwrap().to_string(),
        serde_json::from_str(out.secret_string().unwrap()).unwrap(),
    )
}

fn record(id: &str, value: &str) -> SinkRecord {
    SinkRecord {
        token: SecretString::from(value.to_string()),
        token_id: id.into(),
        issuer: "tfc".into(),
        token_type: "organization".into(),
        created_at: "2026-01-01T00:00:00Z".parse().unwrap(),
        expires_at: Some("2026-02-01T00:00:00Z".parse().unwrap()),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// A TFC org token with configurable sinks

/// The shared [`Stack`]; the tests choose the sinks.
struct Env(Stack);

impl std::ops::Deref for Env {
    type Target = Stack;
    fn deref(&self) -> &Stack {
        &self.0
    }
}

impl Env {
    async fn new() -> Env {
        Env(Stack::new(Config::default()).await)
    }

    /// A policy with the `ci-org` token written to `targets`, sinks defined by `sinks` (TOML tables).
    fn policy(&self, sinks: &str, targets: &str, token_keys: &str) -> PathBuf {
        self.policy_at(free_port(), sinks, targets, token_keys)
    }

    fn policy_at(&self, listen: u16, sinks: &str, targets: &str, token_keys: &str) -> PathBuf {
        self.write_policy_sinks(
            Issuers::Tfc,
            listen,
            "",
            sinks,
            &format!(
                "[tokens.ci-org]\nissuer = \"tfc\"\ntype = \"organization\"\norganization = \"acme\"\n{token_keys}\nsinks = [{targets}]\n"
            ),
        )
    }

    async fn once(&self, policy: &Path, extra: &[(String, String)]) -> Output {
        let mut envs = vec![("TFC_TOKEN".to_string(), self.admin.clone())];
        envs.extend(extra.iter().cloned());
        run_cli_async(
            vec![
                "run".into(),
                "--once".into(),
                "--config".into(),
                policy.display().to_string(),
            ],
            envs,
            Duration::from_secs(90),
        )
        .await
    }

    fn org_creates(&self) -> usize {
        self.tfc
            .request_count_for("POST", "/api/v2/organizations/acme/authentication-token")
    }

    /// The record is the one org token the emulator still accepts.
    fn assert_valid_record(&self, r: &Value) {
        assert_valid_org_record(&self.tfc, r);
    }
}

fn aws_sink_table(moto: &Moto) -> String {
    harness::aws_sink_table(moto, REGION)
}

// ---------------------------------------------------------------------------------------------------------------
// AWS Secrets Manager

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn org_token_rotates_into_aws_secrets_manager_with_current_and_previous() {
    let env = Env::new().await;
    let moto = Moto::start().await;
    let sm = moto.client();
    // Due one second after each creation, so the second `run --once` rotates again.
    let policy = env.policy(
        &aws_sink_table(&moto),
        "{ sink = \"aws\", secret_id = \"prod/tfc-org\" }",
        "lifetime = \"60s\"\nrotate_before = \"59s\"",
    );
    let mut envs = moto.envs();
    envs.push(("RUST_LOG".into(), "trace".into()));

    let out = env.once(&policy, &envs).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    // Created, tagged, the record is AWSCURRENT and its VersionId is our deterministic token.
    let described = sm
        .describe_secret()
        .secret_id("prod/tfc-org")
        .send()
        .await
        .unwrap();
    assert!(
        described
            .tags()
            .iter()
            .any(|t| t.key() == Some("managed-by") && t.value() == Some("token-rotator")),
        "tag managed-by = token-rotator: {:?}",
        described.tags()
    );
    let (v1, first) = secret_at(&sm, "prod/tfc-org", "AWSCURRENT").await;
    env.assert_valid_record(&first);
    assert_eq!(v1.len(), 36, "a UUID-formatted ClientRequestToken: {v1}");
    let first_value = first["token"].as_str().unwrap().to_string();

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let out2 = env.once(&policy, &envs).await;
    assert_eq!(out2.code, 0, "{}", out2.stderr);
    assert_eq!(env.org_creates(), 2);
    let (v2, second) = secret_at(&sm, "prod/tfc-org", "AWSCURRENT").await;
    assert_ne!(v1, v2);
    env.assert_valid_record(&second);
    assert!(!env.tfc.is_valid(&first_value), "the old org token is dead");
    let (prev_id, previous) = secret_at(&sm, "prod/tfc-org", "AWSPREVIOUS").await;
    assert_eq!(prev_id, v1);
    assert_eq!(previous, first, "AWSPREVIOUS keeps the previous record");
    let labels = stages(&sm, "prod/tfc-org").await;
    assert_eq!(holder(&labels, "AWSCURRENT"), vec![v2.as_str()]);
    assert_eq!(holder(&labels, "AWSPREVIOUS"), vec![v1.as_str()]);
    assert!(
        holder(&labels, "AWSPENDING").is_empty(),
        "AWSPENDING is taken off after the move: {labels:?}"
    );
    // The secret was not created twice.
    assert_eq!(
        sm.list_secrets().send().await.unwrap().secret_list().len(),
        1
    );

    for text in [&out.stderr, &out2.stderr] {
        for secret in [
            first_value.as_str(),
            second["token"].as_str().unwrap(),
            env.admin.as_str(),
            AWS_SECRET_KEY,
        ] {
            assert!(
                !text.contains(secret),
                "a secret value appeared in the daemon's stderr at RUST_LOG=trace"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_write_is_idempotent_and_checks_the_current_version() {
    let moto = Moto::start().await;
    let sm = moto.client();
    let sink = moto.sink();
    let id = Target::SecretId("app/token".into());

    let o = sink.read(&id).await.unwrap();
    assert_eq!(o.version, Version::Absent);
    assert!(matches!(o.content, Content::Absent));

    let r1 = record("at-1", "value-one");
    sink.write(&id, &r1, Version::Absent).await.unwrap();
    let o1 = sink.read(&id).await.unwrap();
    assert!(o1.record().unwrap().same_as(&r1));
    let v1 = client_request_token(&r1);
    assert_eq!(
        o1.version,
        Version::Aws(token_rotator::sink::AwsVersionId::new(&v1).unwrap())
    );

    // A crash after staging: AWSPENDING already holds the next record under the same ClientRequestToken.
    let r2 = record("at-2", "value-two");
    let v2 = client_request_token(&r2);
    sm.put_secret_value()
        .secret_id("app/token")
        .client_request_token(&v2)
        .secret_string(serde_json::to_string(&Value::Object(r2.to_json())).unwrap())
        .version_stages("AWSPENDING")
        .send()
        .await
        .unwrap();
    // The retried write reuses the token: AWS ignores the repeated PutSecretValue, then AWSCURRENT moves.
    sink.write(&id, &r2, o1.version).await.unwrap();
    // And once more, as a retry after a lost response would: nothing changes.
    sink.write(&id, &r2, o1.version).await.unwrap();
    let versions = sm
        .list_secret_version_ids()
        .secret_id("app/token")
        .include_deprecated(true)
        .send()
        .await
        .unwrap();
    let mut ids: Vec<&str> = versions
        .versions()
        .iter()
        .filter_map(|v| v.version_id())
        .collect();
    ids.sort();
    let mut want = vec![v1.as_str(), v2.as_str()];
    want.sort();
    assert_eq!(ids, want, "one version per record, no duplicates");
    let labels = stages(&sm, "app/token").await;
    assert_eq!(holder(&labels, "AWSCURRENT"), vec![v2.as_str()]);
    assert_eq!(holder(&labels, "AWSPREVIOUS"), vec![v1.as_str()]);
    let o2 = sink.read(&id).await.unwrap();
    assert!(o2.record().unwrap().same_as(&r2));

    // Someone else puts a value (staged, then made current, as a careful writer does; moto mislabels a plain
    // PutSecretValue after a stage move, secret-stores.md B.9 gap 2): a write expecting the version read before
    // fails without writing.
    let foreign = "f".repeat(32);
    sm.put_secret_value()
        .secret_id("app/token")
        .client_request_token(&foreign)
        .secret_string("{\"written\":\"elsewhere\"}")
        .version_stages("AWSPENDING")
        .send()
        .await
        .unwrap();
    sm.update_secret_version_stage()
        .secret_id("app/token")
        .version_stage("AWSCURRENT")
        .move_to_version_id(&foreign)
        .remove_from_version_id(&v2)
        .send()
        .await
        .unwrap();
    let r3 = record("at-3", "value-three");
    let e = sink.write(&id, &r3, o2.version).await.unwrap_err();
    assert_eq!(e.kind, SinkErrorKind::Conflict, "{e}");
    assert!(!e.message.contains("value-three"));
    let (_, now) = secret_at(&sm, "app/token", "AWSCURRENT").await;
    assert_eq!(now, json!({"written": "elsewhere"}), "never overwritten");
    assert!(!stages(&sm, "app/token")
        .await
        .contains_key(&client_request_token(&r3)));
    // What the foreign writer left is read as "not our record", without quoting it.
    match sink.read(&id).await.unwrap().content {
        Content::Garbage(why) => assert!(!why.contains("elsewhere"), "{why}"),
        other => panic!("{other:?}"),
    }

    // A record over the 64 KB SecretString limit is refused before anything is sent.
    let current = sink.read(&id).await.unwrap().version;
    let huge = record("at-4", &"x".repeat(70_000));
    let e = sink.write(&id, &huge, current).await.unwrap_err();
    assert_eq!(e.kind, SinkErrorKind::Permanent);
    assert!(e.message.contains("65536"), "{e}");
    assert!(!stages(&sm, "app/token")
        .await
        .contains_key(&client_request_token(&huge)));

    // A secret created concurrently (between our read and our write) is a conflict, not an overwrite.
    let other = Target::SecretId("app/raced".into());
    assert_eq!(sink.read(&other).await.unwrap().version, Version::Absent);
    sm.create_secret()
        .name("app/raced")
        .secret_string("{\"first\":\"writer\"}")
        .send()
        .await
        .unwrap();
    let e = sink.write(&other, &r1, Version::Absent).await.unwrap_err();
    assert_eq!(e.kind, SinkErrorKind::Conflict, "{e}");
    let (_, raced) = secret_at(&sm, "app/raced", "AWSCURRENT").await;
    assert_eq!(raced, json!({"first": "writer"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_aws_endpoint_is_retried_then_reported_and_nothing_is_minted() {
    let env = Env::new().await;
    let moto = Moto::start().await;
    let dead = format!("http://127.0.0.1:{}", free_port());
    let policy = env.policy(
        &format!(
            "[sinks.aws]\nkind = \"aws-secretsmanager\"\nregion = \"{REGION}\"\nendpoint_url = \"{dead}\"\n"
        ),
        "{ sink = \"aws\", secret_id = \"prod/tfc-org\" }",
        "lifetime = \"30d\"",
    );
    let out = env.once(&policy, &moto.envs()).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("prod/tfc-org") && out.stderr.contains("cannot reach AWS"),
        "{}",
        out.stderr
    );
    assert_eq!(
        env.org_creates(),
        0,
        "the sink is read before anything is minted"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// File sink

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn org_token_lands_in_a_private_file_replaced_atomically() {
    let env = Env::new().await;
    let dir = env.work.path().join("run/token-rotator");
    let policy = env.policy(
        &file_sink_table(&dir),
        "{ sink = \"files\", path = \"tfc/org.json\" }",
        "lifetime = \"60s\"\nrotate_before = \"59s\"",
    );
    let out = env.once(&policy, &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let file = dir.join("tfc/org.json");
    let first: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    env.assert_valid_record(&first);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&file), 0o600);
    assert_eq!(mode(&dir), 0o700, "the sink directory is created private");
    assert_eq!(mode(&dir.join("tfc")), 0o700, "parents are created private");

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let out = env.once(&policy, &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let second: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_ne!(second["token_id"], first["token_id"]);
    env.assert_valid_record(&second);
    assert_eq!(mode(&file), 0o600);
    let names: Vec<String> = std::fs::read_dir(dir.join("tfc"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["org.json"], "no temporary file left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_escaping_the_directory_is_refused_at_write_time() {
    let env = Env::new().await;
    let dir = env.work.path().join("sink");
    let outside = env.work.path().join("outside");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    let policy = env.policy(
        &file_sink_table(&dir),
        "{ sink = \"files\", path = \"esc/org.json\" }",
        "lifetime = \"30d\"",
    );
    // The issuer answers slowly; meanwhile `esc` appears as a link to a directory outside the sink.
    env.tfc.set_create_delay(Duration::from_secs(2));
    let run = tokio::spawn({
        let policy = policy.clone();
        let admin = env.admin.clone();
        async move {
            run_cli_async(
                vec![
                    "run".into(),
                    "--once".into(),
                    "--config".into(),
                    policy.display().to_string(),
                ],
                vec![("TFC_TOKEN".into(), admin)],
                Duration::from_secs(90),
            )
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    std::os::unix::fs::symlink(&outside, dir.join("esc")).unwrap();
    let out = run.await.unwrap();
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("outside") && out.stderr.contains("symbolic link"),
        "{}",
        out.stderr
    );
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "nothing was written outside the sink directory"
    );
    assert_eq!(env.org_creates(), 1);

    // The minted token is journaled: once the link is gone, the next run stores it without minting again.
    std::fs::remove_file(dir.join("esc")).unwrap();
    env.tfc.set_create_delay(Duration::ZERO);
    let out = env.once(&policy, &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(env.org_creates(), 1, "nothing minted twice");
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("esc/org.json")).unwrap()).unwrap();
    env.assert_valid_record(&r);

    // A link as the final component is refused before anything is minted.
    std::fs::write(outside.join("victim"), "keep").unwrap();
    std::os::unix::fs::symlink(outside.join("victim"), dir.join("linked.json")).unwrap();
    let policy = env.policy(
        &file_sink_table(&dir),
        "{ sink = \"files\", path = \"linked.json\" }",
        "lifetime = \"30d\"",
    );
    let out = env.once(&policy, &[]).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("symbolic link"), "{}", out.stderr);
    assert_eq!(
        std::fs::read_to_string(outside.join("victim")).unwrap(),
        "keep"
    );
}

#[test]
fn check_rejects_file_targets_that_leave_the_directory() {
    let w = Workdir::new();
    for (target, fragment) in [
        (
            "../escape.json",
            "must not contain empty, `.` or `..` components",
        ),
        (
            "a/../../escape.json",
            "must not contain empty, `.` or `..` components",
        ),
        (
            "/etc/escape.json",
            "must be relative to the sink's directory",
        ),
    ] {
        let policy = w.write_policy(&format!(
            r#"[issuers.tfc]
kind = "tfe"
token = {{ env = "TFC_TOKEN" }}

[sinks.files]
kind = "file"
directory = "/run/token-rotator"

[tokens.ci-org]
issuer = "tfc"
type = "organization"
organization = "acme"
sinks = [{{ sink = "files", path = "{target}" }}]
"#
        ));
        let p = policy.display().to_string();
        let out = run_cli(&["check", "--config", &p], &[], Duration::from_secs(20));
        assert_eq!(out.code, 2, "{target}: {}", out.stderr);
        assert!(
            out.stderr.contains(&format!("{p}:13:")) && out.stderr.contains(fragment),
            "{target}: {}",
            out.stderr
        );
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Vault: AppRole, Kubernetes, TLS

fn vault_sink_table(bao: &Bao, auth: &str, extra: &str) -> String {
    format!(
        "[sinks.vault]\nkind = \"vault\"\naddress = \"{}\"\nmount = \"secret\"\n{extra}auth = {auth}\n",
        bao.addr
    )
}

const ROTATOR_POLICY: &str = r#"
path "secret/data/ci/*" { capabilities = ["create", "update", "read"] }
path "secret/metadata/ci/*" { capabilities = ["read"] }
path "sys/internal/ui/mounts/secret" { capabilities = ["read"] }
"#;

async fn bao_ok(bao: &Bao, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
    let (status, body) = bao.api(method, path, body).await;
    assert!((200..300).contains(&status), "{path}: {status} {body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approle_login_renews_and_logs_in_again_past_max_ttl_and_after_revocation() {
    use reqwest::Method;
    let env = Env::new().await;
    let bao = Bao::start().await;
    bao_ok(
        &bao,
        Method::POST,
        "sys/auth/approle",
        Some(json!({"type": "approle"})),
    )
    .await;
    bao_ok(
        &bao,
        Method::PUT,
        "sys/policies/acl/rotator",
        Some(json!({ "policy": ROTATOR_POLICY })),
    )
    .await;
    // Short lives: renewed at 2 s, capped at 6 s, so the daemon must renew and log in again while it runs.
    bao_ok(
        &bao,
        Method::POST,
        "auth/approle/role/rotator",
        Some(json!({"token_policies": ["rotator"], "token_ttl": "3s", "token_max_ttl": "6s"})),
    )
    .await;
    let role_id = bao_ok(&bao, Method::GET, "auth/approle/role/rotator/role-id", None).await
        ["data"]["role_id"]
        .as_str()
        .unwrap()
        .to_string();
    let secret_id = bao_ok(
        &bao,
        Method::POST,
        "auth/approle/role/rotator/secret-id",
        None,
    )
    .await["data"]["secret_id"]
        .as_str()
        .unwrap()
        .to_string();
    let secret_file = env.work.write_secret("approle-secret-id", &secret_id);
    let port = free_port();
    let policy = env.policy_at(
        port,
        &vault_sink_table(
            &bao,
            &format!(
                "{{ method = \"approle\", role_id = \"{role_id}\", secret_id = {{ file = \"{}\" }} }}",
                secret_file.display()
            ),
            "",
        ),
        "{ sink = \"vault\", path = \"ci/tfc-org\" }",
        // Due 2 s after each creation: a rotation every 2–3 s.
        "lifetime = \"60s\"\nrotate_before = \"58s\"",
    );
    let daemon = DaemonProc::start(&policy, port, &[("TFC_TOKEN", env.admin.as_str())]).await;

    // Rotations keep landing for well past the token's max TTL.
    let started = Instant::now();
    let mut seen: Vec<String> = Vec::new();
    while started.elapsed() < Duration::from_secs(10) {
        let id = wait_for(Duration::from_secs(20), "the next rotation", || async {
            let r = bao.kv2_get("secret", "ci/tfc-org").await?;
            let id = r["token_id"].as_str()?.to_string();
            (!seen.contains(&id)).then_some(id)
        })
        .await;
        seen.push(id);
    }
    assert!(seen.len() >= 3, "{seen:?}");
    let log = daemon.stderr();
    assert!(log.contains("renewed the Vault token"), "renewal: {log}");
    assert!(
        log.matches("logged in to Vault").count() >= 2,
        "a new login after the max TTL: {log}"
    );

    // Every token AppRole issued is revoked behind the daemon's back: the next write is denied, the daemon logs
    // in again and retries.
    let before = daemon.stderr().len();
    bao_ok(
        &bao,
        Method::PUT,
        "sys/leases/revoke-prefix/auth/approle/login",
        None,
    )
    .await;
    let last = seen.last().unwrap().clone();
    wait_for(
        Duration::from_secs(20),
        "a rotation after the revocation",
        || async {
            let r = bao.kv2_get("secret", "ci/tfc-org").await?;
            (r["token_id"].as_str()? != last).then_some(())
        },
    )
    .await;
    let record = bao.kv2_get("secret", "ci/tfc-org").await.unwrap();
    let stderr = daemon.stderr();
    assert_eq!(daemon.terminate(), 0);
    let after = &stderr[before..];
    // Noticed at the denial, at a failed renewal, or replaced by a login that was due anyway (max TTL) when the
    // machine is slow enough that the revocation and the next lease check meet: a new token in every case.
    assert!(
        after.contains("Vault denied the token")
            || after.contains("renewing the Vault token failed")
            || after.contains("logged in to Vault"),
        "the revoked token was noticed and replaced: {after}"
    );
    assert!(
        record["token"]
            .as_str()
            .is_some_and(|v| env.tfc.is_valid(v)),
        "the latest record holds the valid token"
    );
    assert!(
        !stderr.contains(&secret_id),
        "the secret_id never reaches the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_over_tls_with_a_private_ca() {
    let env = Env::new().await;
    let bao = Bao::start_tls().await;
    let ca = bao.ca_file.clone().unwrap();
    let token_auth = "{ method = \"token\", token = { env = \"VAULT_TOKEN\" } }";
    let envs = vec![("VAULT_TOKEN".to_string(), ROOT_TOKEN.to_string())];

    // Without the CA the server is not trusted (and VAULT_SKIP_VERIFY changes nothing).
    let untrusted = env.policy(
        &vault_sink_table(&bao, token_auth, ""),
        "{ sink = \"vault\", path = \"ci/tfc-org\" }",
        "lifetime = \"30d\"",
    );
    let mut skip = envs.clone();
    skip.push(("VAULT_SKIP_VERIFY".into(), "true".into()));
    let out = env.once(&untrusted, &skip).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert_eq!(env.org_creates(), 0);
    assert!(bao.kv2_get("secret", "ci/tfc-org").await.is_none());

    let policy = env.policy(
        &vault_sink_table(
            &bao,
            token_auth,
            &format!("ca_file = \"{}\"\n", ca.display()),
        ),
        "{ sink = \"vault\", path = \"ci/tfc-org\" }",
        "lifetime = \"30d\"",
    );
    let out = env.once(&policy, &envs).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    env.assert_valid_record(&bao.kv2_get("secret", "ci/tfc-org").await.unwrap());
}

// ---------------------------------------------------------------------------------------------------------------
// Fan-out

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_token_fans_out_to_vault_aws_and_a_file_in_one_run() {
    let env = Env::new().await;
    let bao = Bao::start().await;
    let moto = Moto::start().await;
    let sm = moto.client();
    let dir = env.work.path().join("files");
    let sinks = format!(
        "{}\n{}\n{}",
        vault_sink_table(
            &bao,
            "{ method = \"token\", token = { env = \"VAULT_TOKEN\" } }",
            ""
        ),
        aws_sink_table(&moto),
        file_sink_table(&dir)
    );
    let policy = env.policy(
        &sinks,
        "{ sink = \"vault\", path = \"ci/tfc-org\" }, { sink = \"aws\", secret_id = \"prod/tfc-org\" }, { sink = \"files\", path = \"tfc-org.json\" }",
        "lifetime = \"30d\"",
    );
    let mut envs = moto.envs();
    envs.push(("VAULT_TOKEN".into(), ROOT_TOKEN.into()));
    let out = env.once(&policy, &envs).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(env.org_creates(), 1);

    let in_vault = bao.kv2_get("secret", "ci/tfc-org").await.unwrap();
    let (_, in_aws) = secret_at(&sm, "prod/tfc-org", "AWSCURRENT").await;
    let in_file: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tfc-org.json")).unwrap()).unwrap();
    env.assert_valid_record(&in_vault);
    assert_eq!(in_aws, in_vault, "AWS holds the same record");
    assert_eq!(in_file, in_vault, "the file holds the same record");

    // All three agree: a second run has nothing to do.
    let out = env.once(&policy, &envs).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(env.org_creates(), 1, "a second run mints nothing");
}

/// An unsigned-but-well-formed service-account JWT: OpenBao reads its claims and asks the TokenReview API.
fn service_account_jwt(jti: &str) -> String {
    use base64::Engine as _;
    let b64 = |v: &Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    };
    format!(
        "{}.{}.{}",
        b64(&json!({"alg": "RS256", "typ": "JWT", "kid": "test"})),
        b64(&json!({
            "iss": "kubernetes/serviceaccount",
            "sub": "system:serviceaccount:default:rotator",
            "jti": jti,
            "kubernetes.io/serviceaccount/namespace": "default",
            "kubernetes.io/serviceaccount/service-account.name": "rotator",
            "kubernetes.io/serviceaccount/service-account.uid": "6b1a1e0e-0000-4000-8000-000000000001",
            "kubernetes.io/serviceaccount/secret.name": "rotator-token",
        })),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([7u8; 64])
    )
}

/// A fake Kubernetes TokenReview API that approves every token and records which ones it was shown.
async fn token_review_server() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use axum::routing::post;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let app = axum::Router::new().route(
        "/apis/authentication.k8s.io/v1/tokenreviews",
        post({
            let seen = seen.clone();
            move |axum::Json(body): axum::Json<Value>| {
                let seen = seen.clone();
                async move {
                    if let Some(t) = body["spec"]["token"].as_str() {
                        seen.lock().unwrap().push(t.to_string());
                    }
                    axum::Json(json!({
                        "apiVersion": "authentication.k8s.io/v1",
                        "kind": "TokenReview",
                        "status": {
                            "authenticated": true,
                            "user": {
                                "username": "system:serviceaccount:default:rotator",
                                "uid": "6b1a1e0e-0000-4000-8000-000000000001",
                                "groups": ["system:serviceaccounts"]
                            }
                        }
                    }))
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_login_rereads_the_service_account_token_at_each_login() {
    use reqwest::Method;
    let env = Env::new().await;
    // TLS OpenBao: its CA is also the PEM the Kubernetes config wants for the (fake) API server.
    let bao = Bao::start_tls().await;
    let ca = bao.ca_file.clone().unwrap();
    let (k8s, reviewed) = token_review_server().await;
    bao_ok(
        &bao,
        Method::POST,
        "sys/auth/kubernetes",
        Some(json!({"type": "kubernetes"})),
    )
    .await;
    bao_ok(
        &bao,
        Method::POST,
        "auth/kubernetes/config",
        Some(json!({
            "kubernetes_host": k8s,
            "disable_local_ca_jwt": true,
            "kubernetes_ca_cert": std::fs::read_to_string(&ca).unwrap(),
            "token_reviewer_jwt": service_account_jwt("reviewer"),
        })),
    )
    .await;
    bao_ok(
        &bao,
        Method::PUT,
        "sys/policies/acl/rotator",
        Some(json!({ "policy": ROTATOR_POLICY })),
    )
    .await;
    // The token cannot outlive 3 s: the daemon has to log in again while it runs.
    bao_ok(
        &bao,
        Method::POST,
        "auth/kubernetes/role/rotator",
        Some(json!({
            "bound_service_account_names": ["rotator"],
            "bound_service_account_namespaces": ["default"],
            "token_policies": ["rotator"],
            "token_ttl": "3s",
            "token_max_ttl": "3s",
        })),
    )
    .await;
    let first_jwt = service_account_jwt("first");
    let jwt_file = env.work.write_secret("sa-token", &first_jwt);
    let port = free_port();
    let policy = env.policy_at(
        port,
        &vault_sink_table(
            &bao,
            &format!(
                "{{ method = \"kubernetes\", role = \"rotator\", jwt_file = \"{}\" }}",
                jwt_file.display()
            ),
            &format!("ca_file = \"{}\"\n", ca.display()),
        ),
        "{ sink = \"vault\", path = \"ci/tfc-org\" }",
        "lifetime = \"60s\"\nrotate_before = \"58s\"",
    );
    let daemon = DaemonProc::start(&policy, port, &[("TFC_TOKEN", env.admin.as_str())]).await;
    let first = wait_for(Duration::from_secs(20), "the first record", || async {
        bao.kv2_get("secret", "ci/tfc-org").await
    })
    .await;
    assert!(reviewed.lock().unwrap().contains(&first_jwt));

    // The kubelet rotates the projected token: the next login sends the new one.
    let second_jwt = service_account_jwt("second");
    std::fs::write(&jwt_file, format!("{second_jwt}\n")).unwrap();
    wait_for(
        Duration::from_secs(20),
        "a login with the new JWT",
        || async { reviewed.lock().unwrap().contains(&second_jwt).then_some(()) },
    )
    .await;
    let first_id = first["token_id"].as_str().unwrap().to_string();
    wait_for(
        Duration::from_secs(20),
        "a rotation with the new login",
        || async {
            let r = bao.kv2_get("secret", "ci/tfc-org").await?;
            (r["token_id"].as_str()? != first_id).then_some(())
        },
    )
    .await;
    let stderr = daemon.stderr();
    assert_eq!(daemon.terminate(), 0);
    assert!(stderr.contains("method=\"kubernetes\""), "{stderr}");
    for jwt in [&first_jwt, &second_jwt] {
        assert!(
            !stderr.contains(jwt.as_str()),
            "the JWT never reaches the log"
        );
    }
}

#[test]
fn check_accepts_every_sink_kind_and_vault_auth_and_locates_mistakes() {
    let w = Workdir::new();
    let base = |auth: &str| {
        format!(
            r#"[issuers.tfc]
kind = "tfe"
token = {{ env = "TFC_TOKEN" }}

[sinks.vault]
kind = "vault"
address = "https://vault.internal:8200"
auth = {auth}

[sinks.aws]
kind = "aws-secretsmanager"
region = "eu-west-1"
kms_key_id = "alias/tokens"

[sinks.files]
kind = "file"
directory = "/run/token-rotator"

[tokens.ci-org]
issuer = "tfc"
type = "organization"
organization = "acme"
sinks = [
  {{ sink = "vault", path = "ci/tfc-org" }},
  {{ sink = "aws", secret_id = "prod/tfc-org" }},
  {{ sink = "files", path = "tfc-org.json" }},
]
"#
        )
    };
    let check = |text: String| {
        let p = w.write_policy(&text).display().to_string();
        let out = run_cli(&["check", "--config", &p], &[], Duration::from_secs(20));
        (out.code, out.stderr.replace(&p, "POLICY"))
    };
    for auth in [
        "{ method = \"token\", token = { env = \"VAULT_TOKEN\" } }",
        "{ method = \"approle\", role_id = \"r-1\", secret_id = { file = \"/run/secrets/secret-id\" } }",
        "{ method = \"approle\", mount = \"ops/approle\", role_id = \"r-1\", secret_id = { env = \"SECRET_ID\" } }",
        "{ method = \"kubernetes\", role = \"rotator\" }",
        "{ method = \"kubernetes\", mount = \"k8s\", role = \"rotator\", jwt_file = \"/var/run/secrets/tokens/vault\" }",
    ] {
        let (code, stderr) = check(base(auth));
        assert_eq!(code, 0, "{auth}: {stderr}");
    }
    for (auth, fragment) in [
        (
            "{ method = \"approle\", role_id = \"r-1\", secret_id = \"s3cr3t\" }",
            "POLICY:8:59: `secret_id` in [sinks.vault.auth] must not be written inline",
        ),
        (
            "{ method = \"approle\", role_id = \"r-1\", secret_id = { sink = \"files\", path = \"x\" } }",
            "must be an `env` or `file` reference",
        ),
        (
            "{ method = \"approle\", secret_id = { env = \"S\" } }",
            "POLICY:8:8: missing key `role_id`",
        ),
        (
            "{ method = \"kubernetes\", jwt_file = \"/t\" }",
            "POLICY:8:8: missing key `role`",
        ),
        (
            "{ method = \"kubernetes\", role = \"r\", token = { env = \"X\" } }",
            "unknown key `token`",
        ),
    ] {
        let (code, stderr) = check(base(auth));
        assert_eq!(code, 2, "{auth}: {stderr}");
        assert!(stderr.contains(fragment), "{auth}: {stderr}");
    }
}
