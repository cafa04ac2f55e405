//! The crash matrix (SPEC §5.1–5.3): for every failpoint step and every token family, the process dies there
//! (`abort`, as uncatchable as `kill -9`), restarts, and the invariants hold: the sinks hold a token the issuer
//! accepts, no token the daemon minted stays valid but untracked, the old token is revoked exactly once and only
//! after its successor is stored everywhere and proven, and nothing is minted twice for one rotation unless the
//! first value was provably lost (never journaled). A second test kills a running daemon with a real SIGKILL
//! while its create request is in flight.
//!
//! Each scenario starts from an "old" token minted out of band and stored in both sinks with a `created_at` a day
//! in the past, under `every = "1h"`: the first run finds it due, the restart finds the new token fresh. So no
//! scenario sleeps, and every request counted below belongs to exactly one rotation.

#![cfg(feature = "failpoints")]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use futures_util::future::join_all;
use serde_json::{json, Value};
use token_rotator_emulators::pulumi::{self, PulumiEmulator, PulumiHandle};
use token_rotator_emulators::tfc::{Config, TfcEmulator, TfcHandle, TokenKind};

use crate::harness::{
    free_port, metric, run_cli_async, wait_for, Bao, DaemonProc, Output, Workdir, ROOT_TOKEN,
};

/// Every failpoint in `src/rotation.rs`, in the order a rotation reaches them.
const STEPS: [&str; 7] = [
    "before-create",
    "after-create",
    "after-journal",
    "after-sink-write",
    "after-verify",
    "before-revoke",
    "after-revoke",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    /// TFC organization token: a singleton, replaced by the issuer at create time.
    TfcOrg,
    /// TFC described team token: several coexist; the old one is revoked after grace (`0s` here).
    TfcTeam,
    /// Pulumi organization token: several coexist, names unique forever; revoked after grace.
    PulumiOrg,
}

impl Family {
    fn type_name(self) -> &'static str {
        match self {
            Family::TfcOrg | Family::PulumiOrg => "organization",
            Family::TfcTeam => "team",
        }
    }

    fn singleton(self) -> bool {
        self == Family::TfcOrg
    }

    fn issuer_kind(self) -> &'static str {
        match self {
            Family::TfcOrg | Family::TfcTeam => "tfe",
            Family::PulumiOrg => "pulumi",
        }
    }
}

/// The emulator a scenario runs against.
#[derive(Clone, Copy)]
enum Backend<'a> {
    Tfc(&'a TfcHandle),
    Pulumi(&'a PulumiHandle),
}

/// One request as either emulator logged it, on the wall clock.
#[derive(Clone, Debug)]
struct Req {
    method: String,
    path: String,
    status: u16,
    at: DateTime<Utc>,
    token_id: Option<String>,
}

/// A token as either emulator knows it.
struct Tok {
    id: String,
    valid: bool,
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn wall_now() -> DateTime<Utc> {
    DateTime::<Utc>::from(SystemTime::now())
}

/// Converts the emulator's `Instant`s to wall-clock time (to compare with Vault's version timestamps).
struct Anchor {
    instant: Instant,
    wall: DateTime<Utc>,
}

impl Anchor {
    fn new() -> Anchor {
        Anchor {
            instant: Instant::now(),
            wall: wall_now(),
        }
    }

    fn wall(&self, at: Instant) -> DateTime<Utc> {
        let d = TimeDelta::from_std(at.saturating_duration_since(self.instant)).unwrap();
        self.wall + d
    }
}

/// One cell of the matrix: its own organization (so rate limits and token lists never mix), its own state_dir.
struct Scenario<'a> {
    backend: Backend<'a>,
    bao: &'a Bao,
    family: Family,
    step: &'static str,
    org: String,
    admin: String,
    /// The team (team family) or organization (org family) whose token rotates.
    target: String,
    work: Workdir,
    policy: PathBuf,
    old_id: String,
    old_value: String,
    /// A token of the same team made by hand, without our label: never touched (team family).
    foreign: Option<String>,
    /// Requests before this (the test's own set-up) are not the daemon's.
    since: DateTime<Utc>,
}

impl<'a> Scenario<'a> {
    async fn new(backend: Backend<'a>, bao: &'a Bao, family: Family, step: &'static str) -> Self {
        let prefix = match family {
            Family::TfcOrg => "org",
            Family::TfcTeam => "team",
            Family::PulumiOrg => "pulumi",
        };
        let org = format!("{prefix}-{step}");
        let work = Workdir::new();
        let yesterday = wall_now() - TimeDelta::days(1);
        let expires = wall_now() + TimeDelta::days(29);
        let (admin, target, old_id, old_value, foreign) = match backend {
            Backend::Tfc(tfc) => {
                let admin = tfc.add_organization(&org);
                match family {
                    Family::TfcOrg => {
                        let (id, value) =
                            tfc.mint(TokenKind::Organization, &org, None, Some(expires));
                        (admin, org.clone(), id, value, None)
                    }
                    _ => {
                        let team = tfc.add_team(&org, "platform");
                        let label =
                            format!("token-rotator ci {}", yesterday.format("%Y%m%dT%H%M%SZ"));
                        let (id, value) =
                            tfc.mint(TokenKind::Team, &team, Some(&label), Some(expires));
                        let (foreign, _) =
                            tfc.mint(TokenKind::Team, &team, Some("made by hand"), None);
                        (admin, team, id, value, Some(foreign))
                    }
                }
            }
            Backend::Pulumi(p) => {
                let login = format!("admin-{step}");
                let admin = p.add_user(&login);
                p.add_organization(&org, &login);
                let label = format!("ci-{}", yesterday.format("%Y%m%d%H%M%S"));
                let (id, value) = pulumi_create(p, &admin, &org, &label, expires).await;
                let (foreign, _) = pulumi_create(p, &admin, &org, "made-by-hand", expires).await;
                (admin, org.clone(), id, value, Some(foreign))
            }
        };
        let key = match family {
            Family::TfcOrg | Family::PulumiOrg => format!("organization = \"{target}\""),
            Family::TfcTeam => format!("team_id = \"{target}\""),
        };
        let address = match backend {
            Backend::Tfc(t) => t.url(),
            Backend::Pulumi(p) => p.url(),
        };
        let policy = work.write_policy(&format!(
            r#"[daemon]
state_dir = "{state}"

[issuers.iss]
kind = "{kind}"
address = "{address}"
token = {{ env = "ISSUER_TOKEN" }}

[sinks.vault]
kind = "vault"
address = "{bao}"
auth = {{ method = "token", token = {{ env = "VAULT_TOKEN" }} }}

[sinks.legacy]
kind = "vault"
address = "{bao}"
mount = "kv1"
auth = {{ method = "token", token = {{ env = "VAULT_TOKEN" }} }}

[tokens.ci]
issuer = "iss"
type = "{ty}"
{key}
lifetime = "30d"
every = "1h"
grace = "0s"
sinks = [{{ sink = "vault", path = "crash/{org}" }}, {{ sink = "legacy", path = "crash/{org}" }}]
"#,
            state = work.state_dir().display(),
            kind = family.issuer_kind(),
            bao = bao.addr,
            ty = family.type_name(),
        ));
        Scenario {
            backend,
            bao,
            family,
            step,
            org,
            admin,
            target,
            work,
            policy,
            old_id,
            old_value,
            foreign,
            since: wall_now(),
        }
    }

    fn is_valid(&self, value: &str) -> bool {
        match self.backend {
            Backend::Tfc(t) => t.is_valid(value),
            Backend::Pulumi(p) => p.is_valid(value),
        }
    }

    fn token_id_of(&self, value: &str) -> Option<String> {
        match self.backend {
            Backend::Tfc(t) => t.token_id_of(value),
            Backend::Pulumi(p) => p.token_id_of(value),
        }
    }

    /// Every token of this family's kind in this scenario's organization (or team).
    fn tokens(&self) -> Vec<Tok> {
        match self.backend {
            Backend::Tfc(t) => {
                let kind = match self.family {
                    Family::TfcOrg => TokenKind::Organization,
                    _ => TokenKind::Team,
                };
                t.all_tokens()
                    .into_iter()
                    .filter(|i| i.kind == kind && i.organization == self.org)
                    .map(|i| Tok {
                        id: i.id,
                        valid: i.state == token_rotator_emulators::tfc::TokenState::Active,
                    })
                    .collect()
            }
            Backend::Pulumi(p) => {
                let valid: Vec<String> = p.valid_tokens().into_iter().map(|i| i.id).collect();
                p.all_tokens()
                    .into_iter()
                    .filter(|i| {
                        i.kind == pulumi::TokenKind::Organization
                            && i.org.as_deref() == Some(self.org.as_str())
                    })
                    .map(|i| Tok {
                        valid: valid.contains(&i.id),
                        id: i.id,
                    })
                    .collect()
            }
        }
    }

    /// When the old token expires, per the issuer.
    fn old_expiry(&self) -> DateTime<Utc> {
        match self.backend {
            Backend::Tfc(t) => t.token_info(&self.old_id).unwrap().expired_at.unwrap(),
            Backend::Pulumi(p) => {
                let info = p
                    .all_tokens()
                    .into_iter()
                    .find(|i| i.id == self.old_id)
                    .unwrap();
                DateTime::from_timestamp(info.expires, 0).unwrap()
            }
        }
    }

    /// Stores the old token in both sinks as if the daemon had rotated it a day ago.
    async fn seed(&self) {
        let record = json!({
            "token": self.old_value,
            "token_id": self.old_id,
            "issuer": "iss",
            "type": self.family.type_name(),
            "created_at": rfc3339(wall_now() - TimeDelta::days(1)),
            "expires_at": rfc3339(self.old_expiry()),
        });
        let path = format!("crash/{}", self.org);
        self.bao.kv2_put("secret", &path, record.clone()).await;
        let (status, body) = self
            .bao
            .api(reqwest::Method::POST, &format!("kv1/{path}"), Some(record))
            .await;
        assert!(status == 204 || status == 200, "kv1 put: {status} {body}");
    }

    async fn once(&self, failpoint: Option<&str>) -> Output {
        let mut envs = vec![
            ("ISSUER_TOKEN".to_string(), self.admin.clone()),
            ("VAULT_TOKEN".to_string(), ROOT_TOKEN.to_string()),
            ("RUST_LOG".to_string(), "debug".to_string()),
        ];
        if let Some(f) = failpoint {
            envs.push(("TOKEN_ROTATOR_FAILPOINT".into(), f.into()));
        }
        run_cli_async(
            vec![
                "run".into(),
                "--once".into(),
                "--config".into(),
                self.policy.display().to_string(),
            ],
            envs,
            Duration::from_secs(60),
        )
        .await
    }

    async fn records(&self) -> (Option<Value>, Option<Value>) {
        let path = format!("crash/{}", self.org);
        (
            self.bao.kv2_get("secret", &path).await,
            self.bao.kv1_get("kv1", &path).await,
        )
    }

    fn journal(&self) -> Option<Value> {
        self.work
            .journal_entry("ci")
            .map(|b| serde_json::from_slice(&b).expect("the journal is JSON"))
    }

    fn create_path(&self) -> String {
        match self.family {
            Family::TfcOrg => format!("/api/v2/organizations/{}/authentication-token", self.org),
            Family::TfcTeam => format!("/api/v2/teams/{}/authentication-tokens", self.target),
            Family::PulumiOrg => format!("/api/orgs/{}/tokens", self.org),
        }
    }

    fn revoke_path(&self, id: &str) -> String {
        match self.family {
            Family::PulumiOrg => format!("/api/orgs/{}/tokens/{id}", self.org),
            _ => format!("/api/v2/authentication-tokens/{id}"),
        }
    }

    fn probe_path(&self) -> &'static str {
        match self.family {
            Family::PulumiOrg => "/api/user",
            _ => "/api/v2/account/details",
        }
    }

    /// This scenario's requests, in the order the emulator answered them, on the wall clock.
    fn log(&self, anchor: &Anchor) -> Vec<Req> {
        let mine: Vec<String> = self.tokens().into_iter().map(|t| t.id).collect();
        let all: Vec<Req> = match self.backend {
            Backend::Tfc(t) => t
                .request_log()
                .into_iter()
                .map(|r| Req {
                    method: r.method,
                    path: r.path,
                    status: r.status,
                    at: anchor.wall(r.at),
                    token_id: r.token_id,
                })
                .collect(),
            Backend::Pulumi(p) => p
                .request_log()
                .into_iter()
                .map(|r| Req {
                    method: r.method,
                    path: r.path,
                    status: r.status,
                    at: r.at,
                    token_id: r.token_id,
                })
                .collect(),
        };
        let org_prefix = match self.family {
            Family::PulumiOrg => format!("/api/orgs/{}/", self.org),
            _ => format!("/api/v2/organizations/{}/", self.org),
        };
        all.into_iter()
            .filter(|r| r.at >= self.since)
            .filter(|r| {
                r.path == self.create_path()
                    || r.path.starts_with(&org_prefix)
                    || r.path == format!("/api/v2/teams/{}", self.target)
                    || r.token_id.as_ref().is_some_and(|id| mine.contains(id))
                    || mine.iter().any(|m| r.path == self.revoke_path(m))
            })
            .collect()
    }

    /// Tokens of this family, for this scenario's org or team, that the issuer accepts now.
    fn valid_ids(&self) -> Vec<String> {
        self.tokens()
            .into_iter()
            .filter(|t| t.valid)
            .map(|t| t.id)
            .collect()
    }

    fn deletes_of(&self, id: &str, anchor: &Anchor) -> Vec<Req> {
        let path = self.revoke_path(id);
        self.log(anchor)
            .into_iter()
            .filter(|r| r.method == "DELETE" && r.path == path)
            .collect()
    }

    fn ids_created_by_daemon(&self) -> Vec<String> {
        self.tokens()
            .into_iter()
            .map(|t| t.id)
            .filter(|id| *id != self.old_id && Some(id) != self.foreign.as_ref())
            .collect()
    }

    fn ctx(&self) -> String {
        format!("[{:?} / {}]", self.family, self.step)
    }

    /// The state right after the crash: the process died where it was told to, with the expected effects.
    async fn check_crash(&self, out: &Output, anchor: &Anchor) {
        let ctx = self.ctx();
        let reached = !(self.family.singleton() && self.step.contains("revoke"));
        if !reached {
            // Singletons are replaced by the issuer at create time: there is no revocation step to die in.
            assert_eq!(
                out.code, 0,
                "{ctx} a singleton never reaches {}: {}",
                self.step, out.stderr
            );
            assert!(!out.stderr.contains("failpoint"), "{ctx} {}", out.stderr);
            return;
        }
        assert_ne!(out.code, 0, "{ctx} the process died: {}", out.stderr);
        assert!(
            out.stderr
                .contains(&format!("failpoint {}: aborting", self.step)),
            "{ctx} died at the failpoint: {}",
            out.stderr
        );
        let (v2, v1) = self.records().await;
        let (v2, v1) = (v2.unwrap(), v1.unwrap());
        let creates = self.ids_created_by_daemon().len();
        let journal = self.journal();
        let minted_id = journal
            .as_ref()
            .and_then(|j| j.pointer("/rotation/minted/token_id"))
            .and_then(Value::as_str)
            .map(str::to_string);
        match self.step {
            "before-create" => {
                assert_eq!(creates, 0, "{ctx} the create never went out");
                let j = journal.expect("the rotation is journaled before the create");
                assert_eq!(j["rotation"]["phase"], "minting", "{ctx}");
                assert!(self.is_valid(&self.old_value), "{ctx} nothing replaced");
            }
            "after-create" => {
                assert_eq!(creates, 1, "{ctx}");
                assert!(minted_id.is_none(), "{ctx} the answer was never journaled");
                assert_eq!(v2["token_id"], json!(self.old_id), "{ctx}");
                assert_eq!(
                    self.is_valid(&self.old_value),
                    !self.family.singleton(),
                    "{ctx} a singleton's create replaced the old token at once"
                );
            }
            "after-journal" => {
                assert_eq!(creates, 1, "{ctx}");
                let id = minted_id.expect("the value is journaled");
                assert_eq!(self.ids_created_by_daemon(), vec![id], "{ctx}");
                assert_eq!(v2["token_id"], json!(self.old_id), "{ctx} not stored yet");
                assert_eq!(v1["token_id"], json!(self.old_id), "{ctx} not stored yet");
            }
            "after-sink-write" => {
                // The sinks are written concurrently; the failpoint fires once the first write is confirmed.
                let id = minted_id.expect("the value is journaled");
                assert!(
                    v2["token_id"] == json!(id) || v1["token_id"] == json!(id),
                    "{ctx} stored in at least one sink"
                );
                if !self.family.singleton() {
                    assert!(
                        self.is_valid(&self.old_value),
                        "{ctx} the old token still works"
                    );
                    assert!(self.deletes_of(&self.old_id, anchor).is_empty(), "{ctx}");
                }
            }
            "after-verify" => {
                let id = minted_id.expect("the value is journaled");
                assert_eq!(v2["token_id"], json!(id), "{ctx} stored in KV v2");
                assert_eq!(v1["token_id"], json!(id), "{ctx} stored in KV v1");
                if !self.family.singleton() {
                    assert!(
                        self.is_valid(&self.old_value),
                        "{ctx} the old token outlives the crash until its successor is proven"
                    );
                    assert!(self.deletes_of(&self.old_id, anchor).is_empty(), "{ctx}");
                }
            }
            "before-revoke" | "after-revoke" => {
                let j = journal.expect("the revocation is journaled");
                assert!(j["rotation"].is_null(), "{ctx} the rotation was closed");
                assert_eq!(
                    j["revocations"][0]["token_id"],
                    json!(self.old_id),
                    "{ctx} the old token awaits revocation"
                );
                assert_ne!(v2["token_id"], json!(self.old_id), "{ctx}");
                assert_eq!(v1["token_id"], v2["token_id"], "{ctx}");
                assert_eq!(
                    self.is_valid(&self.old_value),
                    self.step == "before-revoke",
                    "{ctx}"
                );
            }
            other => unreachable!("{other}"),
        }
    }

    /// The invariants after the restart.
    async fn check_restart(&self, out: &Output, anchor: &Anchor) {
        let ctx = self.ctx();
        assert_eq!(out.code, 0, "{ctx} the restart completes: {}", out.stderr);
        match self.step {
            "after-journal" | "after-sink-write" | "after-verify" => assert!(
                out.stderr.contains("resuming an interrupted rotation"),
                "{ctx} {}",
                out.stderr
            ),
            "before-create" | "after-create" => assert!(
                out.stderr
                    .contains("interrupted before its token was journaled"),
                "{ctx} {}",
                out.stderr
            ),
            _ => {}
        }

        // 1. Both sinks hold the same record, and the issuer accepts its token.
        let (v2, v1) = self.records().await;
        let (v2, v1) = (v2.unwrap(), v1.unwrap());
        assert_eq!(v2, v1, "{ctx} both sinks hold the same record");
        let value = v2["token"].as_str().unwrap();
        let id = v2["token_id"].as_str().unwrap().to_string();
        assert_ne!(id, self.old_id, "{ctx} the rotation happened");
        assert!(
            self.is_valid(value),
            "{ctx} the stored token is valid at the issuer; restart's stderr:\n{}",
            out.stderr
        );
        assert_eq!(self.token_id_of(value), Some(id.clone()), "{ctx}");
        assert_eq!(v2["type"], self.family.type_name(), "{ctx}");

        // 2. No orphan: the only valid tokens are the stored one (and a foreign one the daemon must not touch).
        let mut expected = vec![id.clone()];
        expected.extend(self.foreign.clone());
        let mut valid = self.valid_ids();
        valid.sort();
        expected.sort();
        assert_eq!(
            valid, expected,
            "{ctx} no token minted by the daemon stays valid but untracked"
        );

        // 3. Nothing minted twice for one rotation, unless the first value was never journaled (after-create).
        let lost = usize::from(self.step == "after-create");
        assert_eq!(
            self.ids_created_by_daemon().len(),
            1 + lost,
            "{ctx} tokens minted for this rotation"
        );

        // 4. Revocations: each token revoked at most once; the old one exactly once (coexisting types), and only
        //    after the new one was stored in every sink and proven with the identity probe.
        let log = self.log(anchor);
        for t in self.ids_created_by_daemon().iter().chain([&self.old_id]) {
            let ok = self
                .deletes_of(t, anchor)
                .iter()
                .filter(|r| r.status == 204)
                .count();
            assert!(ok <= 1, "{ctx} {t} revoked {ok} times");
        }
        if self.family.singleton() {
            assert!(
                !self.is_valid(&self.old_value),
                "{ctx} the issuer replaced the old singleton"
            );
            assert!(
                log.iter().all(|r| r.method != "DELETE"),
                "{ctx} a singleton is never revoked separately"
            );
        } else {
            let revoked: Vec<&Req> = log
                .iter()
                .filter(|r| {
                    r.method == "DELETE"
                        && r.status == 204
                        && r.path == self.revoke_path(&self.old_id)
                })
                .collect();
            assert_eq!(
                revoked.len(),
                1,
                "{ctx} the old token is revoked exactly once"
            );
            let revoked_at = revoked[0].at;
            let proven_at = log
                .iter()
                .find(|r| {
                    r.path == self.probe_path()
                        && r.status == 200
                        && r.token_id.as_deref() == Some(id.as_str())
                })
                .map(|r| r.at)
                .expect("the new token was proven with the identity probe");
            assert!(
                proven_at < revoked_at,
                "{ctx} revoked only after the new token was proven"
            );
            let stored_at = self.kv2_time_of(&id).await;
            assert!(
                stored_at < revoked_at,
                "{ctx} revoked only after the new token was stored ({stored_at} vs {revoked_at})"
            );
            if self.step == "after-revoke" {
                assert_eq!(
                    self.deletes_of(&self.old_id, anchor)
                        .iter()
                        .filter(|r| r.status == 404)
                        .count(),
                    1,
                    "{ctx} the restart repeats the unjournaled revocation, which finds it gone"
                );
            }
        }
        // The orphan of an after-create crash was swept (coexisting) or replaced (singleton).
        for orphan in self
            .ids_created_by_daemon()
            .into_iter()
            .filter(|t| *t != id)
        {
            assert!(
                !self.valid_ids().contains(&orphan),
                "{ctx} orphan {orphan} is dead"
            );
        }
        if let Some(f) = &self.foreign {
            assert!(
                self.deletes_of(f, anchor).is_empty(),
                "{ctx} foreign token untouched"
            );
        }

        // 5. Finished work leaves no journal entry.
        assert!(
            self.journal().is_none(),
            "{ctx} journal left: {:?}",
            self.journal()
        );
    }

    /// When the KV v2 version holding token `id` was written.
    async fn kv2_time_of(&self, id: &str) -> DateTime<Utc> {
        let path = format!("crash/{}", self.org);
        let (_, meta) = self
            .bao
            .api(
                reqwest::Method::GET,
                &format!("secret/metadata/{path}"),
                None,
            )
            .await;
        let versions = meta["data"]["versions"].as_object().unwrap();
        for (n, v) in versions {
            let (_, data) = self
                .bao
                .api(
                    reqwest::Method::GET,
                    &format!("secret/data/{path}?version={n}"),
                    None,
                )
                .await;
            if data["data"]["data"]["token_id"] == json!(id) {
                let t = v["created_time"].as_str().unwrap();
                return DateTime::parse_from_rfc3339(t).unwrap().with_timezone(&Utc);
            }
        }
        panic!("no KV v2 version holds {id}");
    }

    async fn run(self, anchor: &Anchor) {
        self.seed().await;
        let crashed = self.once(Some(self.step)).await;
        self.check_crash(&crashed, anchor).await;
        let restarted = self.once(None).await;
        self.check_restart(&restarted, anchor).await;
        let stored = self.records().await.0.unwrap()["token"]
            .as_str()
            .unwrap()
            .to_string();
        for out in [&crashed, &restarted] {
            for secret in [
                self.admin.as_str(),
                self.old_value.as_str(),
                &stored,
                ROOT_TOKEN,
            ] {
                assert!(
                    !out.stderr.contains(secret),
                    "{} a secret reached stderr",
                    self.ctx()
                );
            }
            assert!(
                !out.stderr.contains(".atlasv1."),
                "{} a token value reached stderr",
                self.ctx()
            );
        }
    }
}

async fn matrix(family: Family) {
    let tfc = TfcEmulator::start(Config::default()).await.unwrap();
    let pulumi = PulumiEmulator::start(pulumi::Config::default())
        .await
        .unwrap();
    let backend = match family {
        Family::PulumiOrg => Backend::Pulumi(&pulumi),
        _ => Backend::Tfc(&tfc),
    };
    let bao = Bao::start().await;
    bao.enable_kv("kv1", 1).await;
    let anchor = Anchor::new();
    let mut scenarios = Vec::new();
    for step in STEPS {
        scenarios.push(Scenario::new(backend, &bao, family, step).await);
    }
    join_all(scenarios.into_iter().map(|s| s.run(&anchor))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_matrix_tfc_organization_token() {
    matrix(Family::TfcOrg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_matrix_tfc_team_token() {
    matrix(Family::TfcTeam).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_matrix_pulumi_organization_token() {
    matrix(Family::PulumiOrg).await;
}

/// Creates a Pulumi organization token through the API (as an admin would), returning `(id, value)`.
async fn pulumi_create(
    p: &PulumiHandle,
    admin: &str,
    org: &str,
    name: &str,
    expires: DateTime<Utc>,
) -> (String, String) {
    let resp = reqwest::Client::new()
        .post(format!("{}/api/orgs/{org}/tokens", p.url()))
        .header("Authorization", format!("token {admin}"))
        .header("Accept", "application/vnd.pulumi+8")
        .json(&json!({"name": name, "description": "made by the test", "expires": expires.timestamp()}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let body: Value = resp.json().await.unwrap();
    (
        body["id"].as_str().unwrap().to_string(),
        body["tokenValue"].as_str().unwrap().to_string(),
    )
}

/// A real `kill -9` of a running daemon while its create request is in flight (the issuer has created the token;
/// the answer never arrives), then a restart as a daemon: the orphan is swept or replaced, the sinks end up with a
/// valid token, `/readyz` turns ready, and the old token is revoked once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_an_in_flight_create_then_restart() {
    let tfc = TfcEmulator::start(Config::default()).await.unwrap();
    let pulumi = PulumiEmulator::start(pulumi::Config::default())
        .await
        .unwrap();
    let bao = Bao::start().await;
    bao.enable_kv("kv1", 1).await;
    let anchor = Anchor::new();
    for family in [Family::TfcOrg, Family::TfcTeam, Family::PulumiOrg] {
        let backend = match family {
            Family::PulumiOrg => Backend::Pulumi(&pulumi),
            _ => Backend::Tfc(&tfc),
        };
        let delay = |d: Duration| match backend {
            Backend::Tfc(t) => t.set_create_delay(d),
            Backend::Pulumi(p) => p.set_create_delay(d),
        };
        let s = Scenario::new(backend, &bao, family, "sigkill").await;
        s.seed().await;
        let port = free_port();
        let policy = s.policy_with_listen(port);
        let envs = [
            ("ISSUER_TOKEN", s.admin.as_str()),
            ("VAULT_TOKEN", ROOT_TOKEN),
        ];
        delay(Duration::from_secs(30));
        let daemon = DaemonProc::start(&policy, port, &envs).await;
        // Wait until the create request reached the issuer (the token exists), then SIGKILL.
        wait_for(
            Duration::from_secs(20),
            "the create to reach the issuer",
            || async { (!s.ids_created_by_daemon().is_empty()).then_some(()) },
        )
        .await;
        let status = std::process::Command::new("kill")
            .arg("-KILL")
            .arg(daemon.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success());
        drop(daemon);
        delay(Duration::ZERO);
        let ctx = format!("[{family:?} / sigkill]");
        assert_eq!(
            s.records().await.0.unwrap()["token_id"],
            json!(s.old_id),
            "{ctx} nothing stored before the kill"
        );

        let port = free_port();
        let policy = s.policy_with_listen(port);
        let daemon = DaemonProc::start(&policy, port, &envs).await;
        let text = wait_for(
            Duration::from_secs(30),
            "the restarted daemon to be ready",
            || async {
                let m = daemon.metrics().await;
                (metric(&m, "token_rotator_token_ready", &[("token", "ci")]) == Some(1.0)
                    && s.journal().is_none())
                .then_some(m)
            },
        )
        .await;
        let (code, body) = daemon.readyz().await;
        assert_eq!(
            (code, body),
            (200, json!({"ready": true, "unhealthy": []})),
            "{ctx}"
        );
        assert!(
            metric(
                &text,
                "token_rotator_rotations_total",
                &[("token", "ci"), ("result", "success")]
            ) >= Some(1.0),
            "{ctx}"
        );
        let stderr = daemon.stderr();
        assert_eq!(daemon.terminate(), 0, "{ctx}");
        let out = Output {
            code: 0,
            stdout: String::new(),
            stderr,
        };
        // The same invariants as the failpoint matrix: the value was lost with the process, so two creates.
        let mut s = s;
        s.step = "after-create";
        s.check_restart(&out, &anchor).await;
    }
}

impl Scenario<'_> {
    /// The scenario's policy with a `listen` address, for running it as a daemon.
    fn policy_with_listen(&self, port: u16) -> PathBuf {
        let text = std::fs::read_to_string(&self.policy).unwrap();
        let text = text.replacen(
            "[daemon]\n",
            &format!("[daemon]\nlisten = \"127.0.0.1:{port}\"\n"),
            1,
        );
        let p: &Path = &self.policy;
        let out = p.with_file_name(format!("policy-{port}.toml"));
        std::fs::write(&out, text).unwrap();
        out
    }
}
