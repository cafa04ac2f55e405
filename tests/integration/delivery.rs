//! Delivery targets (SPEC §11), end to end: a TFC team token rotated by the daemon into OpenBao (its record), a
//! workspace variable, a variable-set variable (through the TFC emulator, with the issuer's credential), a
//! repository secret and an environment secret (through the GitHub emulator, which unseals what it receives with its
//! private key: what a workflow would read) and a bare token file. After every rotation each consumer holds the
//! value the record holds, and the issuer accepts it; a crash between the record and the delivery targets loses
//! nothing.

use std::path::{Path, PathBuf};

use token_rotator_emulators::github::{GithubEmulator, GithubHandle};
use token_rotator_emulators::tfc::{Config, TokenState};

use crate::harness::{Output, Stack};

const GITHUB_TOKEN: &str = "ghp_deliveryTestToken0123456789abcdefABCD";

struct Consumers {
    stack: Stack,
    github: GithubHandle,
    workspace: String,
    varset: String,
    files: PathBuf,
    policy: PathBuf,
}

impl Consumers {
    async fn new(with_environment_secret: bool) -> Consumers {
        let stack = Stack::new(Config::default()).await;
        let team = stack.tfc.add_team("acme", "platform");
        let workspace = stack.tfc.add_workspace("acme", "infra");
        let varset = stack.tfc.add_varset("acme", "ci");
        let github = GithubEmulator::start(Default::default()).await.unwrap();
        github.add_repo("acme/infra");
        github.add_environment("acme/infra", "prod");
        github.add_token(GITHUB_TOKEN, &["repo:acme/infra"]);
        let files = stack.work.path().join("files");
        let sinks = format!(
            r#"[sinks.vault]
kind = "vault"
address = "{bao}"
auth = {{ method = "token", token = {{ env = "VAULT_TOKEN" }} }}

[sinks.tfc-vars]
kind = "tfe-variable"
issuer = "tfc"

[sinks.github]
kind = "github-actions"
address = "{gh}"
token = {{ env = "GITHUB_TOKEN" }}

[sinks.files]
kind = "file"
directory = "{files}"
"#,
            bao = stack.bao.addr,
            gh = github.base_url(),
            files = files.display()
        );
        let environment = if with_environment_secret {
            r#"  { sink = "github", repository = "acme/infra", environment = "prod", name = "TF_API_TOKEN" },"#
        } else {
            ""
        };
        let tokens = format!(
            r#"[tokens.ci-team]
issuer = "tfc"
type = "team"
team_id = "{team}"
lifetime = "30d"
grace = "0s"
sinks = [
  {{ sink = "vault", path = "ci/team" }},
  {{ sink = "tfc-vars", workspace_id = "{workspace}", key = "TFE_TOKEN", category = "env" }},
  {{ sink = "tfc-vars", varset_id = "{varset}", key = "tfe_token", category = "terraform" }},
  {{ sink = "github", repository = "acme/infra", name = "TF_API_TOKEN" }},
{environment}
  {{ sink = "files", path = "ci-team.token", format = "token" }},
]
"#
        );
        let policy = stack.write_policy_sinks(
            crate::harness::Issuers::Tfc,
            crate::harness::free_port(),
            "",
            &sinks,
            &tokens,
        );
        Consumers {
            stack,
            github,
            workspace,
            varset,
            files,
            policy,
        }
    }

    async fn cli(&self, args: &[&str], extra: &[(&str, &str)]) -> Output {
        let mut envs = vec![("GITHUB_TOKEN", GITHUB_TOKEN)];
        envs.extend_from_slice(extra);
        self.stack.cli(args, &self.policy, &envs).await
    }

    /// The record's token id and value.
    async fn record(&self) -> (String, String) {
        let r = self.stack.record("ci/team").await;
        (
            r["token_id"].as_str().unwrap().to_string(),
            r["token"].as_str().unwrap().to_string(),
        )
    }

    /// Every consumer holds the record's token, and the issuer accepts it.
    async fn assert_delivered(&self, with_environment_secret: bool, ctx: &str) -> (String, String) {
        let (id, value) = self.record().await;
        assert!(
            self.stack.tfc.is_valid(&value),
            "{ctx}: the record's token is accepted"
        );
        for (owner, key, category) in [
            (&self.workspace, "TFE_TOKEN", "env"),
            (&self.varset, "tfe_token", "terraform"),
        ] {
            let var = self
                .stack
                .tfc
                .variable(owner, key, category)
                .unwrap_or_else(|| panic!("{ctx}: no variable {key} on {owner}"));
            assert!(
                var.value == value,
                "{ctx}: {owner}/{key} holds another value"
            );
            assert!(var.sensitive, "{ctx}: {owner}/{key} is sensitive");
            assert_eq!(
                var.description.as_deref(),
                Some(format!("managed by token-rotator: ci-team {id}").as_str()),
                "{ctx}"
            );
        }
        let mut scopes = vec!["repo:acme/infra"];
        if with_environment_secret {
            scopes.push("env:acme/infra:prod");
        }
        for scope in scopes {
            let secret = self
                .github
                .secret(scope, "TF_API_TOKEN")
                .unwrap_or_else(|| panic!("{ctx}: no secret in {scope}"));
            assert!(
                secret.value == value,
                "{ctx}: the secret of {scope} holds another value"
            );
        }
        let file = self.files.join("ci-team.token");
        assert!(
            std::fs::read_to_string(&file).unwrap() == value,
            "{ctx}: the token file holds the bare token"
        );
        assert_eq!(mode(&file), 0o600, "{ctx}");
        (id, value)
    }
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_consumer_holds_the_current_token_after_every_rotation() {
    let c = Consumers::new(true).await;
    let out = c.cli(&["run", "--once"], &[]).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let (first_id, first_value) = c.assert_delivered(true, "first rotation").await;
    // Nothing in the output shows a value.
    assert!(!out.stderr.contains(&first_value) && !out.stdout.contains(&first_value));
    let ids_of_vars: Vec<String> = [
        (&c.workspace, "TFE_TOKEN", "env"),
        (&c.varset, "tfe_token", "terraform"),
    ]
    .iter()
    .map(|(o, k, cat)| c.stack.tfc.variable(o, k, cat).unwrap().id)
    .collect();
    let mut previous = first_id.clone();
    for round in 0..2 {
        // GitHub's secondary rate limit answers the next request: the sink waits it out.
        if round == 1 {
            c.github.secondary_limit(1, 1);
        }
        let out = c.cli(&["rotate", "ci-team"], &[]).await;
        assert_eq!(out.code, 0, "round {round}: {}\n{}", out.stdout, out.stderr);
        let (id, value) = c.assert_delivered(true, &format!("rotation {round}")).await;
        assert_ne!(id, previous, "round {round}: a new token");
        assert!(!out.stderr.contains(&value) && !out.stdout.contains(&value));
        // The old token goes only after every consumer holds the new one (grace 0s here).
        assert_eq!(
            c.stack.tfc.token_info(&previous).unwrap().state,
            TokenState::Revoked,
            "round {round}"
        );
        previous = id;
    }
    // Updated in place: consumers (and the API) keep the variable ids.
    for (i, (o, k, cat)) in [
        (&c.workspace, "TFE_TOKEN", "env"),
        (&c.varset, "tfe_token", "terraform"),
    ]
    .iter()
    .enumerate()
    {
        assert_eq!(c.stack.tfc.variable(o, k, cat).unwrap().id, ids_of_vars[i]);
    }
    let _ = first_value;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_lags_gets_the_current_token_without_a_new_one() {
    let c = Consumers::new(false).await;
    let out = c.cli(&["run", "--once"], &[]).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let (id, _) = c.assert_delivered(false, "first").await;
    let minted = c.stack.tfc.valid_tokens().len();
    // Someone deleted the workspace variable, and a new target (the environment secret) joins the policy: the
    // next visit delivers the current token to both, minting nothing.
    let var = c
        .stack
        .tfc
        .variable(&c.workspace, "TFE_TOKEN", "env")
        .unwrap();
    let deleted = reqwest::Client::new()
        .delete(format!(
            "{}/api/v2/workspaces/{}/vars/{}",
            c.stack.tfc.url(),
            c.workspace,
            var.id
        ))
        .bearer_auth(&c.stack.admin)
        .header("content-type", "application/vnd.api+json")
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status().as_u16(), 204);
    let text = std::fs::read_to_string(&c.policy).unwrap().replace(
        "{ sink = \"files\", path = \"ci-team.token\", format = \"token\" },",
        "{ sink = \"files\", path = \"ci-team.token\", format = \"token\" },\n  { sink = \"github\", repository = \"acme/infra\", environment = \"prod\", name = \"TF_API_TOKEN\" },",
    );
    std::fs::write(&c.policy, text).unwrap();
    let plan = c.cli(&["plan"], &[]).await;
    assert_eq!(plan.code, 0, "{}\n{}", plan.stdout, plan.stderr);
    assert!(
        plan.stdout.contains("delivered there at the next visit")
            && plan.stdout.contains("environments/prod/TF_API_TOKEN")
            && plan
                .stdout
                .contains(&format!("{}/env/TFE_TOKEN", c.workspace)),
        "plan shows the lagging targets: {}",
        plan.stdout
    );
    let out = c.cli(&["run", "--once"], &[]).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        c.github
            .secret("env:acme/infra:prod", "TF_API_TOKEN")
            .is_some(),
        "the new target is written"
    );
    let (again, _) = c.assert_delivered(true, "after the new target").await;
    assert_eq!(again, id, "no new token for a target that lagged");
    assert_eq!(c.stack.tfc.valid_tokens().len(), minted);
    assert!(
        out.stderr.contains("delivered the current token"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_online_probes_each_delivery_target_read_only() {
    let c = Consumers::new(true).await;
    let out = c.cli(&["check", "--online"], &[]).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    for target in [
        format!("tfc-vars:{}/env/TFE_TOKEN: ok", c.workspace),
        format!("tfc-vars:{}/terraform/tfe_token: ok", c.varset),
        "github:acme/infra/TF_API_TOKEN: ok".to_string(),
        "github:acme/infra/environments/prod/TF_API_TOKEN: ok".to_string(),
    ] {
        assert!(out.stdout.contains(&target), "{target} in {}", out.stdout);
    }
    // Read only: nothing was written anywhere.
    assert!(c.github.secret("repo:acme/infra", "TF_API_TOKEN").is_none());
    assert!(c
        .stack
        .tfc
        .variable(&c.workspace, "TFE_TOKEN", "env")
        .is_none());
    assert!(
        c.github.requests().iter().all(|r| r.method == "GET"),
        "only reads"
    );
    // A token that may not see the repository: the check says so, and never shows the token.
    c.github.remove_token(GITHUB_TOKEN);
    c.github.add_token(GITHUB_TOKEN, &["repo:acme/other"]);
    let out = c.cli(&["check", "--online"], &[]).await;
    assert_ne!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains("github:acme/infra/TF_API_TOKEN: FAILED"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains(GITHUB_TOKEN) && !out.stderr.contains(GITHUB_TOKEN));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_target_keeps_the_token_not_ready_and_the_old_token_alive() {
    let c = Consumers::new(false).await;
    let out = c.cli(&["run", "--once"], &[]).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let (old_id, _) = c.assert_delivered(false, "first").await;
    // GitHub refuses the token: the record gets the new token, the delivery fails, the old token stays valid.
    c.github.remove_token(GITHUB_TOKEN);
    let out = c.cli(&["rotate", "ci-team"], &[]).await;
    assert_ne!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("github"), "{}", out.stderr);
    assert!(
        !out.stderr.contains(GITHUB_TOKEN),
        "the credential is never shown"
    );
    let (new_id, new_value) = c.record().await;
    assert_ne!(new_id, old_id);
    assert_eq!(
        c.stack.tfc.token_info(&old_id).unwrap().state,
        TokenState::Active,
        "the old token is not revoked while a consumer lacks the new one"
    );
    // GitHub takes the token again: the interrupted rotation finishes with the same new token.
    c.github.add_token(GITHUB_TOKEN, &["repo:acme/infra"]);
    let out = c.cli(&["run", "--once"], &[]).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let (id, value) = c.assert_delivered(false, "after the retry").await;
    assert_eq!((id.as_str(), value == new_value), (new_id.as_str(), true));
    assert_eq!(
        c.stack.tfc.token_info(&old_id).unwrap().state,
        TokenState::Revoked
    );
}

#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_the_record_and_the_delivery_targets_loses_nothing() {
    let c = Consumers::new(true).await;
    let out = c.cli(&["run", "--once"], &[]).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let (old_id, old_value) = c.assert_delivered(true, "first").await;
    let out = c
        .cli(
            &["rotate", "ci-team"],
            &[("TOKEN_ROTATOR_FAILPOINT", "before-delivery")],
        )
        .await;
    assert!(
        out.stderr.contains("failpoint before-delivery: aborting"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    // The record holds the new token; the consumers still hold the old one, which still works.
    let (new_id, new_value) = c.record().await;
    assert_ne!(new_id, old_id);
    assert!(
        c.github
            .secret("repo:acme/infra", "TF_API_TOKEN")
            .unwrap()
            .value
            == old_value,
        "the crash came before the delivery"
    );
    assert!(c.stack.tfc.is_valid(&old_value), "the old token is alive");
    let minted = c.stack.tfc.valid_tokens().len();
    // The restart finishes the rotation from the journal: the same new token everywhere, nothing minted again.
    let out = c.cli(&["run", "--once"], &[]).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let (id, value) = c.assert_delivered(true, "after the restart").await;
    assert_eq!(id, new_id);
    assert!(value == new_value);
    assert!(
        c.stack.tfc.valid_tokens().len() < minted,
        "the old token is revoked, no new one minted"
    );
    assert_eq!(
        c.stack.tfc.token_info(&old_id).unwrap().state,
        TokenState::Revoked
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_variable_sink_follows_its_issuers_credential_when_the_daemon_rotates_it() {
    use serde_json::json;
    use token_rotator_emulators::tfc::TokenKind;
    let stack = Stack::new(Config::default()).await;
    let workspace = stack.tfc.add_workspace("acme", "infra");
    // The organization token is the issuer's own credential (kept in OpenBao), and the variable sink borrows it:
    // each rotation kills the old one at once, so a sink that kept the old credential would be refused.
    let expires = token_rotator::clock::now() + chrono::TimeDelta::days(30);
    let (id0, v0) = stack
        .tfc
        .mint(TokenKind::Organization, "acme", None, Some(expires));
    stack
        .bao
        .kv2_put(
            "secret",
            "ci/tfc-org",
            json!({"token": v0, "token_id": id0, "issuer": "tfc", "type": "organization",
                   "created_at": "2026-01-01T00:00:00Z", "expires_at": crate::harness::rfc3339(expires)}),
        )
        .await;
    let port = crate::harness::free_port();
    let sinks = format!(
        "[sinks.vault]\nkind = \"vault\"\naddress = \"{}\"\nauth = {{ method = \"token\", token = {{ env = \"VAULT_TOKEN\" }} }}\n\n[sinks.tfc-vars]\nkind = \"tfe-variable\"\nissuer = \"tfc\"\n",
        stack.bao.addr
    );
    let tokens = format!(
        r#"[tokens.ci-org]
issuer = "tfc"
type = "organization"
organization = "acme"
lifetime = "30d"
every = "2s"
sinks = [
  {{ sink = "vault", path = "ci/tfc-org" }},
  {{ sink = "tfc-vars", workspace_id = "{workspace}", key = "TFE_TOKEN", category = "env" }},
]
"#
    );
    let policy = stack.write_policy_sinks(crate::harness::Issuers::Tfc, port, "", &sinks, &tokens);
    let text = std::fs::read_to_string(&policy).unwrap().replace(
        "token = { env = \"TFC_TOKEN\" }",
        "token = { sink = \"vault\", path = \"ci/tfc-org\" }",
    );
    std::fs::write(&policy, text).unwrap();
    let daemon = stack
        .daemon(&policy, port, &[("TFC_TOKEN", "unused")])
        .await;
    let mut seen = vec![id0];
    for n in 0..3 {
        let (id, value) = crate::harness::wait_for(
            std::time::Duration::from_secs(30),
            "a rotation delivered to the variable",
            || async {
                let r = stack.bao.kv2_get("secret", "ci/tfc-org").await?;
                let id = r["token_id"].as_str()?.to_string();
                let value = r["token"].as_str()?.to_string();
                let var = stack.tfc.variable(&workspace, "TFE_TOKEN", "env")?;
                (!seen.contains(&id) && var.value == value).then_some((id, value))
            },
        )
        .await;
        assert!(stack.tfc.is_valid(&value), "rotation {n}");
        seen.push(id);
    }
    assert!(
        !daemon.stderr().contains("HTTP 401"),
        "no call with a dead credential: {}",
        daemon.stderr()
    );
    assert_eq!(daemon.terminate(), 0);
}
