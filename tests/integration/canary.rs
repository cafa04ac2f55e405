//! Secret hygiene (SPEC §2: "No log line, metric label, error message or panic ever contains a token value or any
//! secret read from a reference"). A full rotation cycle over every supported issuer kind and sink, with failures
//! (a rejected credential, a forbidden sink, a check-and-set conflict, a singleton whose sink refuses the write,
//! a flaky issuer, a panic), runs at `trace` in text and JSON formats; everything the process emits is scanned:
//! stderr, `/metrics`, `/readyz`, `/healthz`, `status`, `plan`, `check --online`, `rotate` and their error
//! messages, and panic output. Every secret is recognisable: TFC values contain `.atlasv1.`, Pulumi values are
//! `pul-` and 40 hex digits, and the credentials are known to the test.

#![cfg(feature = "failpoints")]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use token_rotator_emulators::tfc::{Config, TfcEmulator};

use crate::faults::{Fault, FaultProxy, Rule};
use crate::harness::{
    free_port, metric, run_cli_async, Bao, DaemonProc, Moto, Output, Workdir, ROOT_TOKEN,
};

const VAULT_CANARY: &str = "canary-vault-token-7f3a9c51e2";
const BAD_CREDENTIAL: &str = "CANARY-BAD-CREDENTIAL-5f1e2d3c4b";
const AWS_CANARY_SECRET: &str = "CANARYawsSecretAccessKey0123456789abcdefXY";

/// Every way a secret could show: a known value, any TFC token value, any Pulumi token value.
fn leaks(text: &str, secrets: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    for (i, s) in secrets.iter().enumerate() {
        if text.contains(s.as_str()) {
            found.push(format!("known secret #{i}"));
        }
    }
    if text.contains(".atlasv1.") {
        found.push("a TFC token value (.atlasv1.)".into());
    }
    for (i, _) in text.match_indices("pul-") {
        let rest = &text.as_bytes()[i + 4..];
        if rest.len() >= 40 && rest[..40].iter().all(u8::is_ascii_hexdigit) {
            found.push("a Pulumi token value (pul-…)".into());
        }
    }
    found
}

struct Collected {
    outputs: Vec<(String, String)>,
}

impl Collected {
    fn add(&mut self, what: impl Into<String>, text: impl Into<String>) {
        self.outputs.push((what.into(), text.into()));
    }

    fn cli(&mut self, what: &str, out: &Output) {
        self.add(format!("{what} (stdout)"), out.stdout.clone());
        self.add(format!("{what} (stderr)"), out.stderr.clone());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_logs_metrics_endpoints_cli_output_or_panics() {
    // The scanner itself finds what it must.
    assert!(!leaks("x 0123.atlasv1.abcd x", &[]).is_empty());
    assert!(!leaks(&format!("pul-{}", "0a".repeat(20)), &[]).is_empty());
    assert!(!leaks("…known…", &["known".into()]).is_empty());
    assert!(leaks("pulumi-org pul-xyz", &[]).is_empty());
    // The kinds this build registers (`issuer::KINDS`, `sink::KINDS`): a new kind is covered here once added.
    let kinds = token_rotator::kinds();
    let supported_issuers: Vec<&str> = kinds.issuers.iter().map(|k| k.name()).collect();
    let supported_sinks: Vec<&str> = kinds.sinks.iter().map(|k| k.name()).collect();
    let tfc = TfcEmulator::start(Config::default()).await.unwrap();
    let bao = Bao::start().await;
    bao.enable_kv("kv1", 1).await;
    let work = Workdir::new();
    // A Vault token with a recognisable value for the daemon (root may choose a token's id).
    let (status, body) = bao
        .api(
            reqwest::Method::POST,
            "auth/token/create",
            Some(json!({"id": VAULT_CANARY, "policies": ["root"], "ttl": "1h"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // Issuer credentials from each kind of reference: env, file, a record in a sink; and one the issuer rejects.
    let admin_env = tfc.add_organization("acme");
    let admin_file = tfc.add_organization("beta");
    let admin_sink = tfc.add_organization("gamma");
    let admin_delta = tfc.add_organization("delta");
    let admin_flaky = tfc.add_organization("epsilon");
    let admin_bad_org = tfc.add_organization("zeta");
    let cred_file = work.write_secret("tfc-admin", &admin_file);
    bao.kv2_put(
        "secret",
        "canary/admin-gamma",
        json!({
            "token": admin_sink,
            "token_id": tfc.token_id_of(&admin_sink).unwrap(),
            "issuer": "bootstrap",
            "type": "user",
            "created_at": "2026-01-01T00:00:00Z",
            "expires_at": null,
        }),
    )
    .await;
    let legacy_team = tfc.add_team("beta", "legacy");
    let team = tfc.add_team("gamma", "platform");
    let pool = tfc.add_agent_pool("acme", "default");
    let flaky_team = tfc.add_team("epsilon", "flaky");
    let forbidden_team = tfc.add_team("acme", "forbidden");
    let cas_team = tfc.add_team("acme", "cas");

    // The flaky issuer: a 500 to a read (retried at once), then a create whose answer is cut short (not resent: an
    // orphan to sweep, the token minted again at the next attempt, 30 s later).
    let flaky = FaultProxy::start(&tfc.url()).await;
    flaky.add(Rule::new(
        Some("GET"),
        "/api/v2/account/details",
        1,
        Fault::status(
            500,
            "application/vnd.api+json",
            r#"{"errors":[{"status":"500","title":"oops"}]}"#,
        ),
    ));
    flaky.add(Rule::new(
        Some("POST"),
        "/authentication-tokens",
        1,
        Fault::ForwardTruncated,
    ));
    // A Vault in front of which some paths fail: forbidden, one CAS conflict, a refused write.
    let vault_proxy = FaultProxy::start(&bao.addr).await;
    vault_proxy.add(Rule::new(
        None,
        "/v1/secret/data/canary/forbidden",
        usize::MAX,
        Fault::status(
            403,
            "application/json",
            r#"{"errors":["permission denied"]}"#,
        ),
    ));
    vault_proxy.add(Rule::new(
        Some("POST"),
        "/v1/secret/data/canary/cas",
        1,
        Fault::status(
            400,
            "application/json",
            r#"{"errors":["check-and-set parameter did not match the current version"]}"#,
        ),
    ));
    vault_proxy.add(Rule::new(
        Some("POST"),
        "/v1/secret/data/canary/unstored",
        usize::MAX,
        Fault::status(
            403,
            "application/json",
            r#"{"errors":["permission denied"]}"#,
        ),
    ));

    let mut secrets: Vec<String> = vec![
        admin_env.clone(),
        admin_file.clone(),
        admin_sink.clone(),
        admin_delta.clone(),
        admin_flaky.clone(),
        admin_bad_org.clone(),
        VAULT_CANARY.into(),
        BAD_CREDENTIAL.into(),
        ROOT_TOKEN.into(),
    ];
    let mut envs: Vec<(String, String)> = vec![
        ("VAULT_TOKEN".into(), VAULT_CANARY.into()),
        ("TFC_TOKEN".into(), admin_env.clone()),
        ("TFC_DELTA".into(), admin_delta.clone()),
        ("TFC_FLAKY".into(), admin_flaky.clone()),
        ("TFC_BAD".into(), BAD_CREDENTIAL.into()),
        ("RUST_LOG".into(), "trace".into()),
        ("RUST_BACKTRACE".into(), "1".into()),
    ];

    let port = free_port();
    // AWS Secrets Manager through moto, once the sink exists (with a recognisable secret access key).
    let moto = if supported_sinks.contains(&"aws-secretsmanager") {
        Some(Moto::start().await)
    } else {
        None
    };
    let mut policy = format!(
        r#"[daemon]
state_dir = "{state}"
listen = "127.0.0.1:{port}"

[issuers.tfc]
kind = "tfe"
address = "{tfc}"
token = {{ env = "TFC_TOKEN" }}

[issuers.tfc-file]
kind = "tfe"
address = "{tfc}"
token = {{ file = "{cred_file}" }}

[issuers.tfc-sink]
kind = "tfe"
address = "{tfc}"
token = {{ sink = "vault", path = "canary/admin-gamma" }}

[issuers.tfc-delta]
kind = "tfe"
address = "{tfc}"
token = {{ env = "TFC_DELTA" }}

[issuers.tfc-flaky]
kind = "tfe"
address = "{flaky}"
token = {{ env = "TFC_FLAKY" }}

[issuers.tfc-bad]
kind = "tfe"
address = "{tfc}"
token = {{ env = "TFC_BAD" }}

[sinks.vault]
kind = "vault"
address = "{bao}"
auth = {{ method = "token", token = {{ env = "VAULT_TOKEN" }} }}

[sinks.kv1]
kind = "vault"
address = "{bao}"
mount = "kv1"
auth = {{ method = "token", token = {{ env = "VAULT_TOKEN" }} }}

[sinks.vault-proxy]
kind = "vault"
address = "{proxy}"
auth = {{ method = "token", token = {{ env = "VAULT_TOKEN" }} }}

[tokens.org]
issuer = "tfc"
type = "organization"
organization = "acme"
lifetime = "1h"
every = "4s"
sinks = [{{ sink = "vault", path = "canary/org" }}, {{ sink = "kv1", path = "canary/org" }}{org_aws}]

[tokens.audit]
issuer = "tfc"
type = "audit-trails"
organization = "acme"
lifetime = "1h"
every = "4s"
sinks = [{{ sink = "vault", path = "canary/audit" }}]

[tokens.legacy]
issuer = "tfc-file"
type = "team-legacy"
team_id = "{legacy_team}"
lifetime = "1h"
every = "4s"
sinks = [{{ sink = "vault", path = "canary/legacy" }}]

[tokens.team]
issuer = "tfc-sink"
type = "team"
team_id = "{team}"
lifetime = "1h"
every = "4s"
grace = "0s"
sinks = [{{ sink = "vault", path = "canary/team" }}, {{ sink = "kv1", path = "canary/team" }}]

[tokens.agent]
issuer = "tfc"
type = "agent"
agent_pool_id = "{pool}"
every = "4s"
grace = "0s"
sinks = [{{ sink = "vault", path = "canary/agent" }}]

[tokens.flaky]
issuer = "tfc-flaky"
type = "team"
team_id = "{flaky_team}"
lifetime = "1h"
every = "4s"
grace = "0s"
sinks = [{{ sink = "vault", path = "canary/flaky" }}]

[tokens.bad-cred]
issuer = "tfc-bad"
type = "organization"
organization = "zeta"
sinks = [{{ sink = "vault", path = "canary/bad-cred" }}]

[tokens.forbidden]
issuer = "tfc"
type = "team"
team_id = "{forbidden_team}"
sinks = [{{ sink = "vault-proxy", path = "canary/forbidden" }}]

[tokens.cas]
issuer = "tfc"
type = "team"
team_id = "{cas_team}"
sinks = [{{ sink = "vault-proxy", path = "canary/cas" }}]

[tokens.unstored]
issuer = "tfc-delta"
type = "organization"
organization = "delta"
sinks = [{{ sink = "vault-proxy", path = "canary/unstored" }}]
"#,
        state = work.state_dir().display(),
        tfc = tfc.url(),
        flaky = flaky.url(),
        bao = bao.addr,
        proxy = vault_proxy.url(),
        cred_file = cred_file.display(),
        org_aws = if moto.is_some() {
            ", { sink = \"aws\", secret_id = \"canary/org\" }"
        } else {
            ""
        },
    );
    if let Some(m) = &moto {
        policy.push_str(&format!(
            "\n[sinks.aws]\nkind = \"aws-secretsmanager\"\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n",
            m.url
        ));
        envs.extend(
            [
                ("AWS_ACCESS_KEY_ID", "AKIACANARY0000000000"),
                ("AWS_SECRET_ACCESS_KEY", AWS_CANARY_SECRET),
                ("AWS_REGION", "us-east-1"),
                ("AWS_EC2_METADATA_DISABLED", "true"),
                ("AWS_CONFIG_FILE", "/nonexistent/aws-config"),
                (
                    "AWS_SHARED_CREDENTIALS_FILE",
                    "/nonexistent/aws-credentials",
                ),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        secrets.push(AWS_CANARY_SECRET.into());
    }
    let mut healthy = vec!["org", "audit", "legacy", "team", "agent", "flaky"];
    let mut failing = vec!["bad-cred", "forbidden", "cas", "unstored"];
    // Sinks and issuers other engineers add: covered as soon as the policy accepts them.
    let mut file_dir = None;
    if supported_sinks.contains(&"file") {
        let dir = work.path().join("files");
        std::fs::create_dir_all(&dir).unwrap();
        policy.push_str(&format!(
            "\n[sinks.files]\nkind = \"file\"\ndirectory = \"{}\"\n\n[tokens.file-org]\nissuer = \"tfc-delta\"\ntype = \"audit-trails\"\norganization = \"delta\"\nlifetime = \"1h\"\nevery = \"4s\"\nsinks = [{{ sink = \"files\", path = \"audit.json\" }}]\n",
            dir.display()
        ));
        healthy.push("file-org");
        file_dir = Some(dir);
    }
    let pulumi = if supported_issuers.contains(&"pulumi") {
        let p = token_rotator_emulators::pulumi::PulumiEmulator::start(Default::default())
            .await
            .unwrap();
        let admin = p.add_user("canary-admin");
        p.add_organization("acme", "canary-admin");
        secrets.push(admin.clone());
        envs.push(("PULUMI_TOKEN".into(), admin));
        policy.push_str(&format!(
            "\n[issuers.pulumi]\nkind = \"pulumi\"\naddress = \"{}\"\ntoken = {{ env = \"PULUMI_TOKEN\" }}\n\n[tokens.pulumi-org]\nissuer = \"pulumi\"\ntype = \"organization\"\norganization = \"acme\"\nlifetime = \"1h\"\nevery = \"4s\"\ngrace = \"0s\"\nsinks = [{{ sink = \"vault\", path = \"canary/pulumi-org\" }}]\n",
            p.url()
        ));
        // A rejected Pulumi credential shaped like a real one: the pattern scan would see it anywhere.
        let bad = format!("pul-{}", "c0ffee42".repeat(5));
        secrets.push(bad.clone());
        envs.push(("PULUMI_BAD".into(), bad));
        policy.push_str(&format!(
            "\n[issuers.pulumi-bad]\nkind = \"pulumi\"\naddress = \"{}\"\ntoken = {{ env = \"PULUMI_BAD\" }}\n\n[tokens.pulumi-bad-cred]\nissuer = \"pulumi-bad\"\ntype = \"organization\"\norganization = \"acme\"\nsinks = [{{ sink = \"vault\", path = \"canary/pulumi-bad-cred\" }}]\n",
            p.url()
        ));
        failing.push("pulumi-bad-cred");
        healthy.push("pulumi-org");
        Some(p)
    } else {
        None
    };
    let policy_path: PathBuf = work.write_policy(&policy);
    let config = policy_path.display().to_string();
    let env_refs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let cli = |args: Vec<&str>, extra: Vec<(&str, &str)>| {
        let mut e = envs.clone();
        e.extend(
            extra
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        run_cli_async(
            args.into_iter().map(String::from).collect(),
            e,
            Duration::from_secs(90),
        )
    };
    let mut seen_values: Vec<String> = Vec::new();
    let mut got = Collected {
        outputs: Vec::new(),
    };

    // Pass 1: the daemon, text logs at trace: two rotations of every healthy token, the failures recorded.
    let daemon = DaemonProc::start(&policy_path, port, &env_refs).await;
    let mut first: BTreeMap<&str, String> = BTreeMap::new();
    let mut rotated_twice: Vec<&str> = Vec::new();
    // The flaky token's second attempt would come 30 s after its first (attempt backoff, tested on the paused
    // clock in tests/sim/rules.rs); an operator's `rotate` brings it forward, and its output is scanned too.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut failed_seen: Vec<&str> = Vec::new();
    let mut nudged = false;
    loop {
        for t in &healthy {
            if let Some(r) = bao.kv2_get("secret", &format!("canary/{t}")).await {
                let id = r["token_id"].as_str().unwrap().to_string();
                if let Some(v) = r["token"].as_str() {
                    if !seen_values.iter().any(|s| s == v) {
                        seen_values.push(v.to_string());
                    }
                }
                match first.get(t) {
                    None => {
                        first.insert(t, id);
                    }
                    Some(f) if *f != id && !rotated_twice.contains(t) => rotated_twice.push(t),
                    _ => {}
                }
            }
        }
        if let Some(dir) = &file_dir {
            if let Ok(text) = std::fs::read_to_string(dir.join("audit.json")) {
                let v: Value = serde_json::from_str(&text).unwrap();
                let value = v["token"].as_str().unwrap().to_string();
                if !seen_values.contains(&value) {
                    if let Some(f) = first.get("file-org") {
                        if *f != v["token_id"] && !rotated_twice.contains(&"file-org") {
                            rotated_twice.push("file-org");
                        }
                    } else {
                        first.insert("file-org", v["token_id"].as_str().unwrap().to_string());
                    }
                    seen_values.push(value);
                }
            }
        }
        let m = daemon.metrics().await;
        let flaky_failed = metric(
            &m,
            "token_rotator_token_consecutive_failures",
            &[("token", "flaky")],
        )
        .is_some_and(|f| f >= 1.0);
        if flaky_failed && !nudged {
            nudged = true;
            let out = cli(vec!["rotate", "flaky", "--config", &config], vec![]).await;
            assert_eq!(
                out.code, 0,
                "the nudge rotates the flaky token: {}",
                out.stdout
            );
            got.cli("rotate flaky (during pass 1)", &out);
        }
        // Sticky: a transient failure (the one CAS conflict) heals at its next attempt, 30 s later.
        for t in &failing {
            if metric(
                &m,
                "token_rotator_token_consecutive_failures",
                &[("token", t)],
            )
            .is_some_and(|f| f >= 1.0)
                && !failed_seen.contains(t)
            {
                failed_seen.push(t);
            }
        }
        let failed = failed_seen.len() == failing.len();
        if failed && rotated_twice.len() == healthy.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cycle did not complete: rotated twice {rotated_twice:?} of {healthy:?}, failures recorded: {failed}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Everything an operator or a scraper can see while the daemon runs.
    let metrics = daemon.metrics().await;
    assert!(metrics.contains("token_rotator_rotations_total"));
    if moto.is_some() {
        assert!(
            metric(
                &metrics,
                "token_rotator_sink_writes_total",
                &[("sink", "aws"), ("result", "success")]
            ) >= Some(2.0),
            "the AWS sink was written at least twice"
        );
    }
    got.add("/metrics", metrics);
    let (code, readyz) = daemon.readyz().await;
    assert_eq!(code, 503, "the failures make the daemon unready: {readyz}");
    let readyz = readyz.to_string();
    assert!(
        readyz.contains("bad-cred") && readyz.contains("401"),
        "{readyz}"
    );
    got.add("/readyz", readyz);
    let healthz = reqwest::get(format!("{}/healthz", daemon.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    got.add("/healthz", healthz);
    for args in [
        vec!["status", "--config", &config],
        vec!["status", "--json", "--config", &config],
        vec!["plan", "--config", &config],
        vec!["plan", "--json", "--config", &config],
        vec!["check", "--config", &config],
        vec!["check", "--online", "--config", &config],
    ] {
        let out = cli(args.clone(), vec![]).await;
        if args[..2] == ["status", "--json"] {
            assert!(
                out.stdout.contains("\"name\": \"bad-cred\""),
                "status lists the tokens: {}",
                out.stdout
            );
        }
        got.cli(&args.join(" "), &out);
    }
    // The CAS conflict and the refused write end; `rotate` pushes the journaled values. The forbidden sink and
    // the rejected credential still fail: their error messages are part of the output too.
    vault_proxy.clear();
    vault_proxy.add(Rule::new(
        None,
        "/v1/secret/data/canary/forbidden",
        usize::MAX,
        Fault::status(
            403,
            "application/json",
            r#"{"errors":["permission denied"]}"#,
        ),
    ));
    let out = cli(
        vec![
            "rotate",
            "--config",
            &config,
            "cas",
            "unstored",
            "forbidden",
            "bad-cred",
        ],
        vec![],
    )
    .await;
    assert_eq!(
        out.code, 1,
        "two of four still fail: {}{}",
        out.stdout, out.stderr
    );
    assert!(
        out.stderr.contains("handed to the running daemon"),
        "{}",
        out.stderr
    );
    got.cli("rotate (through the daemon)", &out);
    let stderr = daemon.stderr();
    assert_eq!(daemon.terminate(), 0);
    assert!(stderr.contains("TRACE"), "the daemon logged at trace");
    assert!(stderr.contains("rotation complete"));
    assert!(stderr.contains("revoked the old token"), "revocations ran");
    assert!(
        stderr.contains("orphaned token"),
        "the flaky issuer's orphan was swept"
    );
    assert!(
        stderr.contains("minted but not stored in every sink"),
        "the refused singleton write was reported"
    );
    assert!(
        stderr.contains("check-and-set"),
        "the CAS conflict was reported"
    );
    got.add("daemon stderr (text, trace)", stderr);
    for t in ["cas", "unstored"] {
        let r = bao.kv2_get("secret", &format!("canary/{t}")).await.unwrap();
        let v = r["token"].as_str().unwrap().to_string();
        assert!(tfc.is_valid(&v), "{t}: rotate pushed a valid token");
        seen_values.push(v);
    }

    // Pass 2: JSON logs at trace, and a panic after the journal write in every due rotation.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let out = cli(
        vec!["--log-format", "json", "run", "--once", "--config", &config],
        vec![("TOKEN_ROTATOR_FAILPOINT", "after-journal:panic")],
    )
    .await;
    assert_eq!(
        out.code, 1,
        "panicked rotations count as failures: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("panicked at"),
        "panic output is part of the scan"
    );
    assert!(out.stderr.contains("failpoint after-journal: panicking"));
    let json_lines = out.stderr.lines().filter(|l| l.starts_with('{')).count();
    assert!(json_lines > 10, "JSON log lines: {json_lines}");
    assert!(out.stderr.contains("\"level\":\"TRACE\""), "JSON at trace");
    got.cli("run --once, JSON, panicking", &out);

    // Pass 3: JSON again; the panicked rotations resume from the journal.
    let out = cli(
        vec!["--log-format", "json", "run", "--once", "--config", &config],
        vec![],
    )
    .await;
    assert_eq!(
        out.code, 1,
        "bad-cred and forbidden still fail: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("resuming an interrupted rotation"),
        "{}",
        out.stderr
    );
    got.cli("run --once, JSON, resuming", &out);
    for args in [
        vec![
            "--log-format",
            "json",
            "plan",
            "--json",
            "--config",
            &config,
        ],
        vec![
            "--log-format",
            "json",
            "check",
            "--online",
            "--config",
            &config,
        ],
        vec![
            "--log-format",
            "json",
            "rotate",
            "--config",
            &config,
            "bad-cred",
            "forbidden",
        ],
    ] {
        let out = cli(args.clone(), vec![]).await;
        got.cli(&args.join(" "), &out);
    }
    for t in &healthy {
        if let Some(r) = bao.kv2_get("secret", &format!("canary/{t}")).await {
            let v = r["token"].as_str().unwrap().to_string();
            assert!(
                tfc.is_valid(&v) || pulumi.as_ref().is_some_and(|p| p.is_valid(&v)),
                "{t}: the resumed token is valid"
            );
            seen_values.push(v);
        }
    }

    // The scan: zero occurrences of any secret in anything the process emitted.
    assert!(
        seen_values.len() >= healthy.len() * 2,
        "token values were collected: {}",
        seen_values.len()
    );
    secrets.extend(seen_values);
    let mut problems = Vec::new();
    for (what, text) in &got.outputs {
        for leak in leaks(text, &secrets) {
            problems.push(format!("{what}: {leak}"));
        }
    }
    assert!(problems.is_empty(), "secrets leaked: {problems:#?}");
    let total: usize = got.outputs.iter().map(|(_, t)| t.len()).sum();
    assert!(
        total > 100_000,
        "the scan covered real output ({total} bytes)"
    );
}
