use super::*;

const GOOD: &str = r#"
[daemon]
state_dir = "/tmp/x"

[issuers.tfc]
kind = "tfe"
address = "http://127.0.0.1:1234"
token = { env = "TFC_TOKEN" }

[sinks.vault]
kind = "vault"
address = "http://127.0.0.1:8200"
auth = { method = "token", token = { env = "VAULT_TOKEN" } }

[tokens.ci-org]
issuer = "tfc"
type = "organization"
organization = "acme"
lifetime = "30d"
sinks = [{ sink = "vault", path = "ci/tfc-org" }]
"#;

/// `src` read as a policy that must be valid.
pub(super) fn parse_ok(src: &str) -> Policy {
    parse(
        "p.toml",
        Path::new("p.toml"),
        src,
        &Env::default(),
        &crate::kinds(),
    )
    .unwrap()
}

fn errors(src: &str) -> Vec<String> {
    match parse(
        "p.toml",
        Path::new("p.toml"),
        src,
        &Env::default(),
        &crate::kinds(),
    ) {
        Ok(_) => vec![],
        Err(mut d) => d.render(),
    }
}

#[test]
fn good_policy_parses_with_defaults() {
    let p = parse_ok(GOOD);
    let t = &p.tokens["ci-org"];
    assert_eq!(t.schedule.lifetime, Some(Duration::from_secs(30 * 86_400)));
    assert_eq!(
        t.schedule.rotate_before,
        Some(Duration::from_secs(10 * 86_400))
    );
    assert_eq!(t.schedule.grace, Duration::from_secs(3600));
    assert_eq!(p.daemon.listen.to_string(), "127.0.0.1:9851");
    let vault = p.sinks["vault"]
        .settings::<crate::sink::vault::VaultSinkConfig>()
        .expect("vault settings");
    assert_eq!(vault.mount, "secret");
    assert_eq!(t.label, "token-rotator ci-org");
}

#[test]
fn every_problem_is_reported_with_its_location() {
    let src = GOOD
        .replace("lifetime = \"30d\"", "lifetime = \"30x\"\nbogus = 1")
        .replace("token = { env = \"TFC_TOKEN\" }", "token = \"abc\"");
    let errs = errors(&src);
    assert_eq!(errs.len(), 3, "{errs:#?}");
    assert!(
        errs[0].starts_with("p.toml:8:9: `token` in [issuers.tfc] must not be written inline"),
        "{errs:#?}"
    );
    assert!(errs
        .iter()
        .any(|e| e.contains("`lifetime` in [tokens.ci-org]: invalid duration")));
    assert!(errs
        .iter()
        .any(|e| e.contains("unknown key `bogus` in [tokens.ci-org]")));
}

#[test]
fn missing_key_is_reported_at_the_table_line() {
    let src = GOOD.replace("organization = \"acme\"\n", "");
    let errs = errors(&src);
    assert_eq!(
        errs,
        vec!["p.toml:15:9: missing key `organization` in [tokens.ci-org]".to_string()]
    );
}

#[test]
fn an_empty_policy_is_refused() {
    assert_eq!(
        errors(""),
        vec!["p.toml:1:1: the policy defines no tokens: add a `[tokens.NAME]` table (see config/policy.example.toml)".to_string()]
    );
    let no_tokens = &GOOD[..GOOD.find("[tokens.ci-org]").unwrap()];
    assert_eq!(errors(no_tokens).len(), 1);
}

#[test]
fn names_with_control_characters_or_too_long_are_refused() {
    let src = GOOD.replace("[tokens.ci-org]", "[tokens.\"ci\\nINFO forged\"]");
    let errs = errors(&src);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(errs[0].contains("control character U+000A"), "{errs:#?}");
    let long = "x".repeat(MAX_NAME_CHARS + 1);
    let errs = errors(&GOOD.replace("[tokens.ci-org]", &format!("[tokens.{long}]")));
    assert!(errs[0].contains("longer than 128"), "{errs:#?}");
    // A 128-character name is fine (its journal file name is shortened with a digest).
    let ok = "y".repeat(MAX_NAME_CHARS);
    assert!(errors(&GOOD.replace("[tokens.ci-org]", &format!("[tokens.{ok}]"))).is_empty());
}

#[test]
fn a_nul_in_a_path_is_refused() {
    let src = GOOD.replace("state_dir = \"/tmp/x\"", "state_dir = \"/tmp/x\\u0000y\"");
    let errs = errors(&src);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(errs[0].contains("NUL"), "{errs:#?}");
}

#[test]
fn a_wrong_type_does_not_hide_a_wrong_typed_key() {
    let src = GOOD
        .replace("type = \"organization\"", "type = \"bogus\"")
        .replace("organization = \"acme\"", "team_id = 5");
    let errs = errors(&src);
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert!(
        errs.iter()
            .any(|e| e.contains("`team_id` in [tokens.ci-org] must be a string")),
        "{errs:#?}"
    );
}

#[test]
fn labels_that_the_sweep_could_confuse_are_refused() {
    let team = |name: &str, extra: &str| {
        format!("[tokens.{name}]\nissuer = \"tfc\"\ntype = \"team\"\nteam_id = \"team-1\"\n{extra}\nsinks = [{{ sink = \"vault\", path = \"{name}\" }}]\n")
    };
    let base = &GOOD[..GOOD.find("[tokens.ci-org]").unwrap()];
    let src = format!(
        "{base}{}{}",
        team("a", "description = \"ci\""),
        team("b", "description = \"ci\"")
    );
    let errs = errors(&src);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(
        errs[0].contains("[tokens.b] labels its tokens like [tokens.a]"),
        "{errs:#?}"
    );
    // Another team, or another description: fine.
    let other = team("b", "description = \"ci\"").replace("team-1", "team-2");
    assert!(errors(&format!(
        "{base}{}{other}",
        team("a", "description = \"ci\"")
    ))
    .is_empty());
    // Pulumi: default prefixes are token names cut to 25 characters.
    let pulumi = |name: &str, org: &str| {
        format!("[tokens.{name}]\nissuer = \"pulumi\"\ntype = \"organization\"\norganization = \"{org}\"\nsinks = [{{ sink = \"vault\", path = \"{name}\" }}]\n")
    };
    let issuers = format!("{base}[issuers.pulumi]\nkind = \"pulumi\"\naddress = \"http://127.0.0.1:9\"\ntoken = {{ env = \"P\" }}\n");
    let a = "a-very-long-token-name-shared-start-one";
    let b = "a-very-long-token-name-shared-start-two";
    let errs = errors(&format!(
        "{issuers}{}{}",
        pulumi(a, "acme"),
        pulumi(b, "acme")
    ));
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(errs[0].contains("name_prefix"), "{errs:#?}");
    assert!(errors(&format!(
        "{issuers}{}{}",
        pulumi(a, "acme"),
        pulumi(b, "other")
    ))
    .is_empty());
}

#[test]
fn only_regular_files_are_read_and_never_past_the_cap() {
    let dir = tempfile::tempdir().unwrap();
    for special in ["/dev/zero", "/dev/null"] {
        let err = load(Path::new(special), &crate::kinds())
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a regular file"), "{special}: {err}");
    }
    let fifo = dir.path().join("fifo");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    if made.is_ok_and(|s| s.success()) {
        // Opened without blocking, then refused: a FIFO never hangs `check`.
        let err = load(&fifo, &crate::kinds()).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
    }
    let big = dir.path().join("big.toml");
    std::fs::write(&big, vec![b'#'; MAX_POLICY_BYTES as usize + 1]).unwrap();
    let err = load(&big, &crate::kinds()).unwrap_err().to_string();
    assert!(err.contains("larger than"), "{err}");
}

#[test]
fn state_directory_env_sets_default_state_dir() {
    let src = GOOD.replace("state_dir = \"/tmp/x\"\n", "");
    let env = Env {
        state_directory: Some("/var/lib/token-rotator:/other".into()),
    };
    let p = parse("p.toml", Path::new("p.toml"), &src, &env, &crate::kinds()).unwrap();
    assert_eq!(p.daemon.state_dir, PathBuf::from("/var/lib/token-rotator"));
}

#[test]
fn keys_of_other_types_and_kinds_are_refused_where_they_would_do_nothing() {
    let e = errors(&GOOD.replace(
        "organization = \"acme\"\n",
        "organization = \"acme\"\nrevoke_after_use = true\nteam = \"x\"\n",
    ));
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(
        e[0].starts_with("p.toml:19:20: `revoke_after_use` in [tokens.ci-org] does not apply to tokens of `type = \"organization\"`"),
        "{e:?}"
    );
    assert!(
        e[1].contains("`team` in [tokens.ci-org] does not apply"),
        "{e:?}"
    );
    // A wrong `type` reports the type, not every key it would have taken.
    let e = errors(&GOOD.replace("type = \"organization\"", "type = \"org\""));
    assert_eq!(e.len(), 1, "{e:?}");
}

/// GOOD with a `[cluster]` table (`cluster` lines) and an extra sink table and token target.
fn clustered(cluster: &str, extra: &str) -> String {
    format!("{GOOD}\n{extra}\n[cluster]\n{cluster}\n")
}

#[test]
fn cluster_table_reads_with_defaults_and_its_timings() {
    let p = parse(
        "p.toml",
        Path::new("p.toml"),
        &clustered("store = \"vault\"\npath = \"/token-rotator/prod/\"", ""),
        &Env::default(),
        &crate::kinds(),
    )
    .unwrap();
    let c = p.cluster.expect("cluster settings");
    assert_eq!(c.path, "token-rotator/prod", "slashes trimmed");
    assert_eq!(c.lease_duration, Duration::from_secs(15));
    assert_eq!(c.renew_every(), Duration::from_secs(5));
    assert_eq!(c.fence_after(), Duration::from_secs(10));
    assert_eq!(c.identity, None);
}

#[test]
fn cluster_problems_are_located() {
    let files = "[sinks.files]\nkind = \"file\"\ndirectory = \"/tmp/f\"\n[sinks.old]\nkind = \"vault\"\naddress = \"http://127.0.0.1:8200\"\nkv_version = 1\nauth = { method = \"token\", token = { env = \"VAULT_TOKEN\" } }\n[tokens.local]\nissuer = \"tfc\"\ntype = \"team\"\nteam_id = \"team-1\"\nsinks = [{ sink = \"files\", path = \"t.json\" }]";
    let cases: &[(&str, &str)] = &[
        (
            "store = \"files\"\npath = \"x\"",
            "a `file` sink cannot hold the cluster lease",
        ),
        ("store = \"old\"\npath = \"x\"", "KV v1 lacks"),
        ("store = \"nope\"\npath = \"x\"", "`store` names no sink"),
        (
            "store = \"vault\"\npath = \"a/../b\"",
            "no empty, `.` or `..` segments",
        ),
        (
            "store = \"vault\"\npath = \"x\"\nlease_duration = \"1s\"",
            "between 3s and 10m",
        ),
        (
            "store = \"vault\"\npath = \"x\"\nidentity = \"\"",
            "`identity` must be 1 to 128",
        ),
        ("store = \"vault\"", "missing"),
        ("store = \"vault\"\npath = \"x\"\nleader = true", "leader"),
    ];
    for (cluster, want) in cases {
        let errs = errors(&clustered(cluster, files));
        assert!(
            errs.iter()
                .any(|e| e.contains(want) && e.starts_with("p.toml:")),
            "{cluster}: {errs:?}"
        );
    }
    // A token that writes only to local files has no shared record for standbys to copy.
    let errs = errors(&clustered("store = \"vault\"\npath = \"x\"", files));
    let local: Vec<_> = errs
        .iter()
        .filter(|e| e.contains("[tokens.local] keeps its record only in `file` sinks"))
        .collect();
    assert_eq!(local.len(), 1, "{errs:?}");
    assert!(
        local[0].starts_with("p.toml:30:"),
        "at the token table: {}",
        local[0]
    );
    // A record under the cluster path would clobber the lease or the shared journal.
    let errs = errors(&clustered("store = \"vault\"\npath = \"ci\"", ""));
    assert!(
        errs.iter()
            .any(|e| e
                .contains("[tokens.ci-org] writes to vault:ci/tfc-org, under the [cluster] path")),
        "{errs:?}"
    );
    // Without [cluster] the same token is fine.
    let plain = format!("{GOOD}\n{files}\n");
    assert!(errors(&plain).is_empty(), "{:?}", errors(&plain));
}

#[test]
fn notify_actions_are_read_with_their_defaults() {
    let src = GOOD.replace(
        "lifetime = \"30d\"\n",
        "lifetime = \"30d\"\nnotify = [\n  { exec = [\"/usr/bin/systemctl\", \"reload\", \"app.service\"] },\n  { webhook = \"https://hooks.example.com/rotated?key=abc\", secret = { env = \"HOOK_SECRET\" }, timeout = \"10s\" },\n]\nnotify_events = [\"rotated\", \"failed\"]\n",
    );
    let p = parse_ok(&src);
    let n = &p.tokens["ci-org"].notify;
    assert_eq!(n.actions.len(), 2);
    assert_eq!(n.actions[0].timeout, notify::DEFAULT_TIMEOUT);
    assert_eq!(
        n.actions[0].target,
        notify::ActionTarget::Exec {
            program: PathBuf::from("/usr/bin/systemctl"),
            args: vec!["reload".into(), "app.service".into()],
        }
    );
    assert_eq!(n.actions[1].timeout, Duration::from_secs(10));
    // How logs name the webhook: never its query (it may carry a key).
    assert_eq!(
        n.actions[1].to_string(),
        "webhook https://hooks.example.com/rotated"
    );
    assert!(n.wants(notify::NotifyEvent::Failed));
    // Without `notify_events`: `rotated` only; without `notify`: nothing.
    let p = parse(
        "p.toml",
        Path::new("p.toml"),
        &src.replace("notify_events = [\"rotated\", \"failed\"]\n", ""),
        &Env::default(),
        &crate::kinds(),
    )
    .unwrap();
    assert!(p.tokens["ci-org"]
        .notify
        .wants(notify::NotifyEvent::Rotated));
    assert!(!p.tokens["ci-org"].notify.wants(notify::NotifyEvent::Failed));
}

#[test]
fn bad_notify_actions_are_located() {
    let with = |lines: &str| {
        errors(&GOOD.replace(
            "lifetime = \"30d\"\n",
            &format!("lifetime = \"30d\"\n{lines}\n"),
        ))
    };
    let e = with("notify = [{ exec = [\"systemctl\", \"reload\"] }]");
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with("p.toml:20:21: `exec` in `notify[0]` in [tokens.ci-org] must start with the program's absolute path"),
        "{e:?}"
    );
    let e =
        with("notify = [{ webhook = \"http://hooks.example.com/x\", secret = { env = \"S\" } }]");
    assert!(
        e[0].starts_with("p.toml:20:23:") && e[0].contains("plain http://"),
        "{e:?}"
    );
    let e = with("notify = [{ webhook = \"https://hooks.example.com/x\" }]");
    assert!(e[0].contains("missing") || e[0].contains("secret"), "{e:?}");
    let e = with("notify = [{ webhook = \"https://h.example/x\", secret = \"inline\" }]");
    assert!(e[0].contains("must not be written inline"), "{e:?}");
    let e = with("notify = [{ exec = [\"/bin/true\"], webhook = \"https://h.example/x\" }]");
    assert!(e[0].contains("both `exec` and `webhook`"), "{e:?}");
    let e = with("notify = [{ exec = [\"/bin/true\"], timeout = \"0s\" }]");
    assert!(e[0].contains("between 1s and 10m"), "{e:?}");
    let e = with("notify = [{ exec = [\"/bin/true\"], shell = true }]");
    assert!(e[0].contains("unknown key `shell`"), "{e:?}");
    let e =
        with("notify = [{ exec = [\"/bin/true\"] }]\nnotify_events = [\"rotated\", \"expired\"]");
    assert!(
        e[0].starts_with("p.toml:21:29:") && e[0].contains("unknown event \"expired\""),
        "{e:?}"
    );
    let e = with("notify_events = [\"failed\"]");
    assert!(e[0].contains("has no `notify` actions"), "{e:?}");
}

/// GOOD plus delivery sinks and `extra` targets on a second token.
fn with_delivery(sinks: &str, targets: &str) -> String {
    format!(
        r#"{GOOD}
[sinks.files]
kind = "file"
directory = "/tmp/files"

[sinks.tfc-vars]
kind = "tfe-variable"
issuer = "tfc"

[sinks.github]
kind = "github-actions"
token = {{ env = "GITHUB_TOKEN" }}
{sinks}

[tokens.ci-team]
issuer = "tfc"
type = "team"
team_id = "team-1"
sinks = [
{targets}
]
"#
    )
}

#[test]
fn delivery_targets_parse_with_their_keys() {
    let src = with_delivery(
        "",
        r#"  { sink = "vault", path = "ci/team" },
  { sink = "tfc-vars", workspace_id = "ws-1", key = "TFE_TOKEN", category = "env" },
  { sink = "tfc-vars", varset_id = "varset-1", key = "tfe_token", category = "terraform" },
  { sink = "github", repository = "acme/infra", name = "TF_API_TOKEN" },
  { sink = "github", repository = "acme/infra", environment = "prod", name = "TF_API_TOKEN" },
  { sink = "github", organization = "acme", visibility = "selected", selected_repository_ids = [1, 2], name = "TF_API_TOKEN" },
  { sink = "files", path = "ci-team.token", format = "token" },"#,
    );
    let p = parse_ok(&src);
    let t = &p.tokens["ci-team"];
    let shown: Vec<String> = t.sinks.iter().map(|st| st.to_string()).collect();
    assert_eq!(
        shown,
        [
            "vault:ci/team",
            "tfc-vars:ws-1/env/TFE_TOKEN",
            "tfc-vars:varset-1/terraform/tfe_token",
            "github:acme/infra/TF_API_TOKEN",
            "github:acme/infra/environments/prod/TF_API_TOKEN",
            "github:orgs/acme/TF_API_TOKEN",
            "files:ci-team.token",
        ]
    );
    assert_eq!(
        t.sinks.iter().filter(|st| st.target.is_delivery()).count(),
        6
    );
    let Target::GithubSecret(secret) = &t.sinks[5].target else {
        panic!("{:?}", t.sinks[5].target)
    };
    match &secret.scope {
        GithubScope::Organization {
            visibility,
            selected,
            ..
        } => {
            assert_eq!(*visibility, Visibility::Selected);
            assert_eq!(selected, &[1, 2]);
        }
        other => panic!("{other:?}"),
    }
    match &t.sinks[1].target {
        Target::TfeVariable(v) => assert_eq!(v.token, "ci-team"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn delivery_target_mistakes_are_located() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "",
            r#"  { sink = "github", repository = "acme/infra", name = "TF_API_TOKEN" },"#,
            "p.toml:39:9: [tokens.ci-team] has only delivery targets: a token needs at least one record sink",
        ),
        (
            "",
            r#"  { sink = "vault", path = "a" }, { sink = "files", path = "t", format = "yaml" },"#,
            "`format` in a `sinks` entry of [tokens.ci-team] must be \"record\" or \"token\", found \"yaml\"",
        ),
        (
            "",
            r#"  { sink = "vault", path = "a" }, { sink = "tfc-vars", workspace_id = "ws-1", varset_id = "v", key = "K", category = "env" },"#,
            "takes `workspace_id` or `varset_id`, not both",
        ),
        (
            "",
            r#"  { sink = "vault", path = "a" }, { sink = "tfc-vars", workspace_id = "ws-1", key = "K", category = "envs" },"#,
            "`category` in a `sinks` entry of [tokens.ci-team] must be \"env\" or \"terraform\", found \"envs\"",
        ),
        (
            "",
            r#"  { sink = "vault", path = "a" }, { sink = "github", organization = "acme", name = "T" },"#,
            "missing key `visibility`",
        ),
        (
            "",
            r#"  { sink = "vault", path = "a" }, { sink = "github", repository = "acme", name = "T" },"#,
            "`repository` in a `sinks` entry of [tokens.ci-team] must be \"OWNER/NAME\", found \"acme\"",
        ),
        (
            "",
            r#"  { sink = "vault", path = "a" }, { sink = "github", repository = "acme/x", name = "GITHUB_TOKEN" },"#,
            "must not start with GITHUB_",
        ),
        (
            "",
            r#"  { sink = "vault", path = "a" }, { sink = "github", repository = "acme/x", visibility = "all", name = "T" },"#,
            "`visibility` is for organization secrets",
        ),
        (
            "",
            r#"  { sink = "vault", path = "a" }, { sink = "github", path = "x" },"#,
            "unknown key `path`",
        ),
        (
            "\n[sinks.other-vars]\nkind = \"tfe-variable\"\nissuer = \"nope\"\n",
            r#"  { sink = "vault", path = "a" },"#,
            "[sinks.other-vars] borrows issuer \"nope\", which is not defined",
        ),
        (
            "\n[sinks.other-vars]\nkind = \"tfe-variable\"\naddress = \"https://tfe.example\"\n",
            r#"  { sink = "vault", path = "a" },"#,
            "missing key `issuer`",
        ),
        (
            "\n[sinks.other-vars]\nkind = \"tfe-variable\"\nissuer = \"tfc\"\naddress = \"https://tfe.example\"\n",
            r#"  { sink = "vault", path = "a" },"#,
            "takes `issuer` (whose address, credential and CA it uses) or `address` + `token`",
        ),
        (
            "",
            r#"  { sink = "vault", path = "a" }, { sink = "github", repository = "acme/x", name = "T" }, { sink = "github", repository = "ACME/X", name = "t" },"#,
            "is already written by token \"ci-team\"",
        ),
        (
            "",
            r#"  { sink = "vault", path = "a" }, { sink = "files", path = "x" }, { sink = "files", path = "x", format = "token" },"#,
            "sink target files:x is already written by token \"ci-team\"",
        ),
        (
            "",
            r#"  { sink = "vault", path = "a" }, { sink = "github", repository = "acme/x", environment = "Prod", name = "T" }, { sink = "github", repository = "acme/x", environment = "prod", name = "T" },"#,
            "is already written by token \"ci-team\"",
        ),
        (
            "\n[sinks.github2]\nkind = \"github-actions\"\naddress = \"https://api.github.com/\"\ntoken = { env = \"OTHER\" }\n",
            r#"  { sink = "vault", path = "a" }, { sink = "github", repository = "acme/x", name = "T" }, { sink = "github2", repository = "acme/x", name = "T" },"#,
            "sink target github2:acme/x/T is already written by token \"ci-team\"",
        ),
        (
            "\n[issuers.tfc2]\nkind = \"tfe\"\ntoken = { sink = \"github\", path = \"x\" }\n",
            r#"  { sink = "vault", path = "a" },"#,
            "[issuers.tfc2] reads its `token` from sink \"github\", a delivery target that holds no record",
        ),
        (
            "\n[issuers.tfc2]\nkind = \"tfe\"\ntoken = { sink = \"files\", path = \"ci.token\" }\n",
            r#"  { sink = "vault", path = "a" }, { sink = "files", path = "ci.token", format = "token" },"#,
            "[issuers.tfc2] reads its `token` from files:ci.token, which [tokens.ci-team] writes as a bare token",
        ),
        (
            "",
            r#"  { sink = "vault", path = "a" }, { sink = "tfc-vars", workspace_id = "ws-1", key = "TFE TOKEN", category = "env" },"#,
            "`key` in a `sinks` entry of [tokens.ci-team] must not contain spaces",
        ),
    ];
    for (sinks, targets, want) in cases {
        let errs = errors(&with_delivery(sinks, targets));
        assert!(
            errs.iter()
                .any(|e| e.contains(want) && e.starts_with("p.toml:")),
            "want {want:?} in {errs:#?}"
        );
    }
}

/// A policy large enough to be read in slices (`chunks`) reads exactly as when parsed whole: the same policy, or
/// the same located errors.
#[test]
fn a_large_policy_read_in_slices_reads_as_the_whole() {
    let mut src = GOOD.replace(
        "[tokens.ci-org]",
        "[sinks.files]\nkind = \"file\"\ndirectory = \"/tmp/records\"\n\n[tokens.ci-org]",
    );
    let mut i = 0;
    // 512 KiB: the errors below name tokens up to team-1700.
    while src.len() < 512 << 10 {
        src.push_str(&format!(
            "[tokens.\"team-{i}\"]\nissuer = \"tfc\"\ntype = \"team\"\nteam_id = \"team-{i:08}\"\n\
             sinks = [\n  {{ sink = \"vault\", path = \"ci/team-{i}\" }},\n  {{ sink = \"files\", path = \"t{i}.json\" }},\n]\n\
             every = \"{}h\"\n[[tokens.\"team-{i}\".notify]]\nexec = [\"/bin/true\", \"{i}\"]\n\n",
            1 + i % 5
        ));
        i += 1;
    }
    let whole = |s: &str| {
        parse_parts(
            "p.toml",
            Path::new("p.toml"),
            s,
            &Env::default(),
            &crate::kinds(),
            None,
        )
        .unwrap()
    };
    let sliced = |s: &str| {
        let split = chunks::split(s, chunks::SLICE).expect("this policy is cut");
        let least = (s.len() - split.0) / (2 * chunks::SLICE);
        assert!(split.1.len() >= least, "{} slices", split.1.len());
        parse_parts(
            "p.toml",
            Path::new("p.toml"),
            s,
            &Env::default(),
            &crate::kinds(),
            Some(split),
        )
        .expect("the slices parse")
    };
    let ok = |r: Result<Policy, Diagnostics>| r.map_err(|mut d| d.render()).unwrap();
    let (a, b) = (ok(whole(&src)), ok(sliced(&src)));
    assert_eq!(a.tokens.len(), i + 1);
    assert_eq!(format!("{:?}", a.tokens), format!("{:?}", b.tokens));
    assert_eq!(format!("{:?}", a.daemon), format!("{:?}", b.daemon));
    // Errors in the head, in a late slice and across slices (the same target twice, a label clash) are located
    // in the whole file.
    let bad = src
        .replace(
            "[tokens.\"team-1500\"]\nissuer = \"tfc\"",
            "[tokens.\"team-1500\"]\nissuer = \"tfc\"\nbogus = 1",
        )
        .replace("path = \"ci/team-1700\"", "path = \"ci/team-3\"")
        .replace("lifetime = \"30d\"", "lifetime = \"thirty days\"");
    let (Err(mut e1), Err(mut e2)) = (whole(&bad), sliced(&bad)) else {
        panic!("the bad policy was accepted");
    };
    let (l1, l2) = (e1.render(), e2.render());
    assert!(l1.len() >= 3, "{l1:?}");
    assert_eq!(l1, l2);
    assert!(l1.iter().any(|l| l.contains("bogus")), "{l1:?}");
    // A syntax error in a slice: the whole parse reports it, as before.
    let broken = src.replace("\"/bin/true\", \"1202\"]", "\"/bin/true\", \"1202]");
    assert_ne!(broken, src);
    let Err(mut e) = whole(&broken) else {
        panic!("the broken policy was accepted");
    };
    assert_eq!(errors(&broken), e.render());
}

/// Tokens with equal schedules (and no `notify` actions) share one copy; a different schedule, a window or actions
/// get their own, with the values read for that token.
#[test]
fn equal_schedules_are_shared_and_different_ones_kept_apart() {
    let mut src = GOOD.to_string();
    for (name, extra) in [
        ("a", ""),
        ("b", ""),
        ("c", "every = \"2h\"\n"),
        ("d", "window = \"0 3 * * *\"\n"),
        ("e", "notify = [{ exec = [\"/bin/true\"] }]\n"),
        ("f", "notify = []\nnotify_events = [\"failed\"]\n"),
    ] {
        src.push_str(&format!(
            "\n[tokens.{name}]\nissuer = \"tfc\"\ntype = \"team\"\nteam_id = \"team-{name}\"\n\
             sinks = [{{ sink = \"vault\", path = \"ci/{name}\" }}]\n{extra}"
        ));
    }
    let p = parse_ok(&src);
    let t = |n: &str| &p.tokens[n];
    assert!(Arc::ptr_eq(&t("a").schedule, &t("b").schedule));
    assert!(Arc::ptr_eq(&t("a").schedule, &t("e").schedule));
    assert!(Arc::ptr_eq(&t("a").notify, &t("b").notify));
    assert!(!Arc::ptr_eq(&t("a").schedule, &t("c").schedule));
    assert_eq!(t("c").schedule.every, Some(Duration::from_secs(7200)));
    assert!(t("d").schedule.window.is_some() && t("a").schedule.window.is_none());
    assert!(!Arc::ptr_eq(&t("a").schedule, &t("d").schedule));
    assert_eq!(t("e").notify.actions.len(), 1);
    assert!(t("a").notify.actions.is_empty());
    // Action-less, but other events: its own copy (a reload compares policies by value).
    assert!(!Arc::ptr_eq(&t("a").notify, &t("f").notify));
    assert_eq!(t("f").notify.events, [notify::NotifyEvent::Failed]);
    assert_ne!(t("a").notify.events, t("f").notify.events);
}
