//! `check`: the shipped example parses; every broken policy exits 2 with `PATH:LINE:COL: message`.

use std::time::Duration;

use crate::harness::{run_cli, Workdir};

const BASE: &str = r#"[daemon]
state_dir = "/tmp/token-rotator-check"

[issuers.tfc]
kind = "tfe"
address = "http://127.0.0.1:9"
token = { env = "TFC_TOKEN" }

[sinks.vault]
kind = "vault"
address = "http://127.0.0.1:8200"
mount = "secret"
auth = { method = "token", token = { env = "VAULT_TOKEN" } }

[tokens.ci-org]
issuer = "tfc"
type = "organization"
organization = "acme"
lifetime = "30d"
rotate_before = "10d"
sinks = [{ sink = "vault", path = "ci/tfc-org" }]
"#;

fn check(text: &str) -> (i32, String, String) {
    let w = Workdir::new();
    let path = w.write_policy(text);
    let p = path.to_str().unwrap().to_string();
    let out = run_cli(&["check", "--config", &p], &[], Duration::from_secs(20));
    (out.code, out.stderr.replace(&p, "POLICY"), out.stdout)
}

#[test]
fn shipped_example_policy_is_valid() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/policy.example.toml");
    let out = run_cli(
        &["check", "--config", example],
        &[],
        Duration::from_secs(20),
    );
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    assert!(out.stdout.contains("ok"), "{}", out.stdout);
}

#[test]
fn base_policy_is_valid() {
    let (code, stderr, _) = check(BASE);
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn config_path_falls_back_to_the_environment_variable() {
    let w = Workdir::new();
    let path = w.write_policy(BASE);
    let out = run_cli(
        &["check"],
        &[("TOKEN_ROTATOR_CONFIG", path.to_str().unwrap())],
        Duration::from_secs(20),
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = run_cli(
        &["check", "--config", "/nonexistent/policy.toml"],
        &[],
        Duration::from_secs(20),
    );
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("/nonexistent/policy.toml"),
        "{}",
        out.stderr
    );
}

#[test]
fn usage_errors_exit_2_and_version_exits_0() {
    assert_eq!(
        run_cli(&["frobnicate"], &[], Duration::from_secs(20)).code,
        2
    );
    assert_eq!(
        run_cli(&["run", "--bogus"], &[], Duration::from_secs(20)).code,
        2
    );
    let v = run_cli(&["--version"], &[], Duration::from_secs(20));
    assert_eq!(v.code, 0);
    assert!(v.stdout.contains(env!("CARGO_PKG_VERSION")));
}

fn team_token(name: &str, description: &str) -> String {
    format!("\n[tokens.{name}]\nissuer = \"tfc\"\ntype = \"team\"\nteam_id = \"team-1\"\ndescription = \"{description}\"\nsinks = [{{ sink = \"vault\", path = \"{name}\" }}]\n")
}

fn pulumi_token(name: &str) -> String {
    format!("\n[tokens.{name}]\nissuer = \"pulumi\"\ntype = \"organization\"\norganization = \"acme\"\nsinks = [{{ sink = \"vault\", path = \"{name}\" }}]\n")
}

/// (name, edit of BASE, expected `LINE:COL: ` prefix, expected message fragment)
fn corpus() -> Vec<(&'static str, String, &'static str, &'static str)> {
    let r = |from: &str, to: &str| {
        assert!(BASE.contains(from), "corpus edit does not apply: {from}");
        BASE.replacen(from, to, 1)
    };
    vec![
        ("unknown key", r("lifetime = \"30d\"", "lifetime = \"30d\"\nlifetyme = \"3d\""), "20:1", "unknown key `lifetyme` in [tokens.ci-org]"),
        ("unknown top-level table", format!("{BASE}\n[extra]\nx = 1\n"), "23:2", "unknown key `extra` in the policy"),
        ("wrong type", r("lifetime = \"30d\"", "lifetime = 30"), "19:12", "`lifetime` in [tokens.ci-org] must be a duration string"),
        ("inline secret", r("token = { env = \"TFC_TOKEN\" }", "token = \"abc.atlasv1.def\""), "7:9", "must not be written inline; write `token = { env = \"NAME\" }`"),
        ("unknown issuer", r("issuer = \"tfc\"", "issuer = \"tfcc\""), "16:10", "refers to unknown issuer \"tfcc\" (defined: tfc)"),
        ("unknown sink", r("{ sink = \"vault\", path", "{ sink = \"vaulty\", path"), "21:19", "refers to unknown sink \"vaulty\""),
        ("bad duration", r("lifetime = \"30d\"", "lifetime = \"30 days\""), "19:12", "invalid duration `30 days`"),
        ("rotate_before >= lifetime", r("rotate_before = \"10d\"", "rotate_before = \"30d\""), "20:17", "`rotate_before` (30d) in [tokens.ci-org] must be shorter than `lifetime` (30d)"),
        ("duplicate sink target", format!("{BASE}\n[tokens.other]\nissuer = \"tfc\"\ntype = \"organization\"\norganization = \"beta\"\nsinks = [{{ sink = \"vault\", path = \"ci/tfc-org\" }}]\n"), "27:10", "sink target vault:ci/tfc-org is already written by token \"ci-org\""),
        ("http to a non-loopback host", r("address = \"http://127.0.0.1:9\"", "address = \"http://tfe.example.com\""), "6:11", "plain http:// to tfe.example.com"),
        ("missing required key", r("organization = \"acme\"\n", ""), "15:9", "missing key `organization` in [tokens.ci-org]"),
        ("missing token of an issuer", r("token = { env = \"TFC_TOKEN\" }\n", ""), "4:10", "missing key `token` in [issuers.tfc]"),
        ("unknown issuer kind", r("kind = \"tfe\"", "kind = \"gitlab\""), "5:8", "unknown `kind = \"gitlab\"` in [issuers.tfc]"),
        ("unknown token type", r("type = \"organization\"", "type = \"project\""), "17:8", "unknown `type = \"project\"`"),
        ("bad listen address", r("[daemon]\n", "[daemon]\nlisten = \"localhost\"\n"), "2:10", "`listen` must be an IP address and port"),
        ("empty sinks", r("sinks = [{ sink = \"vault\", path = \"ci/tfc-org\" }]", "sinks = []"), "21:9", "must name at least one sink"),
        ("secret reference with two sources", r("token = { env = \"TFC_TOKEN\" }", "token = { env = \"A\", file = \"/b\" }"), "7:9", "must have exactly one of `env`, `file` or `sink`"),
        ("TOML syntax error", r("lifetime = \"30d\"", "lifetime = \"30d"), "19:16", "TOML syntax error"),
        ("sink target key for the wrong sink kind", r("{ sink = \"vault\", path = \"ci/tfc-org\" }", "{ sink = \"vault\", secret_id = \"x\" }"), "21:10", "takes `path`"),
        ("manual that is not a boolean", r("lifetime = \"30d\"", "lifetime = \"30d\"\nmanual = \"yes\""), "20:10", "`manual` in [tokens.ci-org] must be a boolean"),
        ("zero verify_interval", r("[daemon]\n", "[daemon]\nverify_interval = \"0s\"\n"), "2:19", "`verify_interval` must be longer than 0s"),
        ("bad log format", r("[daemon]\n", "[daemon]\nlog_format = \"xml\"\n"), "2:14", "`log_format` must be \"text\" or \"json\""),
        ("non-https scheme", r("address = \"http://127.0.0.1:8200\"", "address = \"ftp://vault\""), "11:11", "must be an https:// URL"),
        // The outside review of the invariants (SPEC §5.11, §5.13): each of these passed `check` before.
        ("a policy without tokens", BASE[..BASE.find("[tokens.ci-org]").unwrap()].to_string(), "1:1", "the policy defines no tokens"),
        ("a NUL in a path", r("state_dir = \"/tmp/token-rotator-check\"", "state_dir = \"/tmp/x\\u0000y\""), "2:13", "`state_dir` contains a NUL character"),
        ("a newline in a token name", r("[tokens.ci-org]", "[tokens.\"ci\\nINFO forged line\"]"), "15:9", "contains the control character U+000A"),
        ("a token name too long", r("[tokens.ci-org]", &format!("[tokens.{}]", "x".repeat(129))), "15:9", "longer than 128 characters"),
        ("a wrong-typed key under a wrong type", r("type = \"organization\"\norganization = \"acme\"", "type = \"project\"\nteam_id = 5"), "18:11", "`team_id` in [tokens.ci-org] must be a string"),
        ("two team tokens with one label", format!("{BASE}{}{}", team_token("a", "ci"), team_token("b", "ci")), "34:15", "[tokens.b] labels its tokens like [tokens.a]"),
        ("two Pulumi names cut to one prefix", format!("{BASE}\n[issuers.pulumi]\nkind = \"pulumi\"\naddress = \"http://127.0.0.1:9\"\ntoken = {{ env = \"P\" }}\n{}{}", pulumi_token("release-pipeline-production-eu"), pulumi_token("release-pipeline-production-us")), "34:9", "[tokens.release-pipeline-production-us] labels its tokens like [tokens.release-pipeline-production-eu]"),
    ]
}

#[test]
fn invalid_policy_corpus_exits_2_with_located_errors() {
    let cases = corpus();
    assert!(cases.len() >= 15);
    let mut wrong = Vec::new();
    for (name, text, at, fragment) in cases {
        let (code, stderr, stdout) = check(&text);
        assert_eq!(code, 2, "{name}: exit code; stderr:\n{stderr}");
        assert!(stdout.is_empty(), "{name}: nothing on stdout");
        let want = format!("POLICY:{at}: ");
        let line = stderr.lines().find(|l| l.contains(fragment));
        let line = line
            .unwrap_or_else(|| panic!("{name}: no line mentions {fragment:?}; stderr:\n{stderr}"));
        if !line.starts_with(&want) {
            wrong.push(format!("{name}: expected location {want}, got: {line}"));
        }
        for l in stderr.lines() {
            assert!(
                l.starts_with("POLICY:"),
                "{name}: every line is located: {l}"
            );
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// A path that is not a regular file is refused at once: `/dev/zero` would be read forever, a FIFO would block.
#[test]
fn only_regular_policy_files_are_read() {
    let w = Workdir::new();
    let fifo = w.path().join("policy.fifo");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    for path in ["/dev/zero", fifo.to_str().unwrap()] {
        let out = run_cli(&["check", "--config", path], &[], Duration::from_secs(20));
        assert_eq!(out.code, 2, "{path}: {}", out.stderr);
        assert!(
            out.stderr.contains("not a regular file"),
            "{path}: {}",
            out.stderr
        );
    }
}

#[test]
fn every_problem_is_reported_not_only_the_first() {
    let text = BASE
        .replace("lifetime = \"30d\"", "lifetime = \"3x\"")
        .replace("issuer = \"tfc\"", "issuer = \"nope\"")
        .replace(
            "mount = \"secret\"",
            "mount = \"secret\"\ncolour = \"blue\"",
        );
    let (code, stderr, _) = check(&text);
    assert_eq!(code, 2);
    assert_eq!(stderr.lines().count(), 3, "{stderr}");
}

#[test]
fn every_example_policy_is_valid() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/examples");
    let mut checked = 0;
    for dir in std::fs::read_dir(&root).unwrap() {
        let p = dir.unwrap().path().join("policy.toml");
        if !p.exists() {
            continue;
        }
        let out = run_cli(
            &["check", "--config", p.to_str().unwrap()],
            &[],
            Duration::from_secs(20),
        );
        assert_eq!(out.code, 0, "{}: {}", p.display(), out.stderr);
        checked += 1;
    }
    assert!(checked >= 2, "the examples were found");
}
