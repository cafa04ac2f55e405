//! GitHub Actions secrets as a delivery target (`kind = "github-actions"`, SPEC §11): repository, environment and
//! organization secrets, on github.com or GitHub Enterprise Server (`address = "https://HOST/api/v3"`).
//!
//! Wire facts (docs.github.com/en/rest/actions/secrets, API version 2022-11-28): the value is encrypted with the
//! scope's public key (`GET …/secrets/public-key` → `key_id`, base64 `key`) as a libsodium sealed box, base64, and
//! `PUT …/secrets/NAME` with `key_id` (201 created, 204 updated); `GET …/secrets/NAME` shows `updated_at`, never the
//! value, so a write is confirmed by the secret's `updated_at` and that is what a read reports. Organization
//! secrets carry `visibility` (`all`, `private`, `selected` + `selected_repository_ids`). Rate limits
//! (docs.github.com/en/rest/using-the-rest-api/rate-limits-for-the-rest-api): a primary limit announced by
//! `x-ratelimit-remaining` / `x-ratelimit-reset` (epoch seconds), secondary limits answered 403/429 with
//! `retry-after`; mutations at most one per second; `User-Agent` required (the one client sets it).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use chrono::{DateTime, Utc};
use reqwest::{Method, Url};
use serde_json::{json, Value};

use super::rest::{self, Answer, Request};
use super::{Content, Holds, Observed, Sink, SinkError, SinkErrorKind, Target, Version};
use crate::policy::diag::Diagnostics;
use crate::policy::fields::{check_address, non_empty, read_local_secret_ref, read_path};
use crate::policy::kinds::{SinkSettings, SinkSpec, TargetKey};
use crate::policy::reader::TableReader;
use crate::policy::SecretRef;
use crate::policy::{GithubScope, GithubSecret, Visibility};
use crate::record::SinkRecord;
use crate::retry::Pacer;
use crate::secret::{ExposeSecret, SecretString};

pub const DEFAULT_ADDRESS: &str = "https://api.github.com";
const ACCEPT: &str = "application/vnd.github+json";
const API_VERSION: (&str, &str) = ("x-github-api-version", "2022-11-28");

/// The `[sinks.NAME]` table of `kind = "github-actions"`.
#[derive(Clone, Debug)]
pub struct GithubConfig {
    pub address: String,
    pub token: SecretRef,
    pub ca_file: Option<PathBuf>,
}

impl SinkSettings for GithubConfig {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

pub struct GithubSink {
    name: String,
    client: reqwest::Client,
    base: Url,
    credential: SecretString,
    /// Reads, and mutations (GitHub: at least a second apart); a rate-limit answer blocks both.
    reads: Pacer,
    writes: Pacer,
    /// The public key of each scope (`key_id`, key), until a write finds it stale.
    keys: Mutex<HashMap<String, (String, [u8; 32])>>,
    /// What this process last wrote to each secret: the token id and the `updated_at` GitHub showed right after.
    /// While the secret still shows that time it holds that token; a later time means someone else wrote it.
    /// (After a restart or a reload nothing is known: a read falls back to comparing the write time.)
    written: Mutex<HashMap<String, (String, DateTime<Utc>)>>,
}

impl GithubSink {
    fn error(&self, kind: SinkErrorKind, message: impl Into<String>) -> SinkError {
        SinkError::new(&self.name, kind, message)
    }

    fn secret<'t>(&self, target: &'t Target) -> Result<&'t GithubSecret, SinkError> {
        match target {
            Target::GithubSecret(s) => Ok(s),
            other => Err(self.error(
                SinkErrorKind::Permanent,
                format!("a github-actions sink takes `repository` or `organization` and `name`, not {other}"),
            )),
        }
    }

    /// The scope's `…/secrets` segments.
    fn scope_segments(scope: &GithubScope) -> Vec<&str> {
        match scope {
            GithubScope::Repository(r) => {
                let (owner, repo) = r.split_once('/').unwrap_or((r, ""));
                vec!["repos", owner, repo, "actions", "secrets"]
            }
            GithubScope::Environment {
                repository,
                environment,
            } => {
                let (owner, repo) = repository.split_once('/').unwrap_or((repository, ""));
                vec!["repos", owner, repo, "environments", environment, "secrets"]
            }
            GithubScope::Organization { org, .. } => vec!["orgs", org, "actions", "secrets"],
        }
    }

    fn url(&self, scope: &GithubScope, last: &str) -> Url {
        let mut segments = Self::scope_segments(scope);
        segments.push(last);
        rest::url(&self.base, &segments)
    }

    /// One request, waiting out a short rate limit (a long one fails the write as unavailable).
    async fn call(
        &self,
        method: Method,
        url: Url,
        body: Option<Value>,
    ) -> Result<Answer, SinkError> {
        let pacer = if method == Method::GET {
            &self.reads
        } else {
            &self.writes
        };
        let body = body.map(|b| b.to_string().into_bytes());
        rest::send_waiting(
            &self.name,
            &self.client,
            pacer,
            &[&self.reads, &self.writes],
            || Request {
                method: method.clone(),
                url: url.clone(),
                scheme: "Bearer",
                credential: &self.credential,
                content_type: body.is_some().then_some("application/json"),
                accept: ACCEPT,
                extra: &[API_VERSION],
                body: body.clone(),
            },
            |answer| rate_limited(answer, crate::clock::now()),
        )
        .await
    }

    fn refused(&self, what: &str, answer: &Answer, value: Option<&SecretString>) -> SinkError {
        let message = answer
            .json()
            .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_default();
        let hint = match answer.status {
            401 => " (the token was refused)",
            403 => " (the token lacks the permission: repository secrets need `secrets: write`, organization ones `organization_secrets: write`)",
            404 => " (it does not exist, or this token may not see it)",
            _ => "",
        };
        let mut known = vec![&self.credential];
        known.extend(value);
        self.error(
            rest::kind_of(answer.status),
            format!(
                "{what}: HTTP {}{hint}: {}",
                answer.status,
                rest::said(&message, &known)
            ),
        )
    }

    /// The scope's public key, from the cache unless `fresh`.
    async fn public_key(
        &self,
        scope: &GithubScope,
        fresh: bool,
    ) -> Result<(String, [u8; 32]), SinkError> {
        let cache_key = format!("{scope:?}");
        if !fresh {
            if let Some(k) = self
                .keys
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&cache_key)
            {
                return Ok(k.clone());
            }
        }
        let answer = self
            .call(Method::GET, self.url(scope, "public-key"), None)
            .await?;
        if answer.status != 200 {
            return Err(self.refused("reading the secrets' public key", &answer, None));
        }
        let parsed = answer.json().and_then(|v| {
            let id = v.get("key_id")?.as_str()?.to_string();
            let key = base64::engine::general_purpose::STANDARD
                .decode(v.get("key")?.as_str()?)
                .ok()?;
            Some((id, <[u8; 32]>::try_from(key.as_slice()).ok()?))
        });
        let key = parsed.ok_or_else(|| {
            self.error(
                SinkErrorKind::Unavailable,
                "the secrets' public key answer is not a key_id and a 32-byte base64 key",
            )
        })?;
        self.keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(cache_key, key.clone());
        Ok(key)
    }

    async fn put(
        &self,
        s: &GithubSecret,
        value: &SecretString,
        fresh_key: bool,
    ) -> Result<Answer, SinkError> {
        let (key_id, key) = self.public_key(&s.scope, fresh_key).await?;
        let sealed = seal(&key, value.expose_secret().as_bytes())
            .map_err(|why| self.error(SinkErrorKind::Permanent, why))?;
        let mut body = json!({"encrypted_value": sealed, "key_id": key_id});
        if let GithubScope::Organization {
            visibility,
            selected,
            ..
        } = &s.scope
        {
            body["visibility"] = json!(visibility.as_str());
            if *visibility == Visibility::Selected && !selected.is_empty() {
                body["selected_repository_ids"] = json!(selected);
            }
        }
        self.call(Method::PUT, self.url(&s.scope, &s.name), Some(body))
            .await
    }
}

/// The libsodium sealed box of `value` for `public_key`, base64 (what GitHub's `encrypted_value` is).
pub fn seal(public_key: &[u8; 32], value: &[u8]) -> Result<String, String> {
    let key = crypto_box::PublicKey::from(*public_key);
    let sealed = key
        .seal(&mut crypto_box::aead::OsRng, value)
        .map_err(|_| "sealing the value failed".to_string())?;
    Ok(base64::engine::general_purpose::STANDARD.encode(sealed))
}

/// How long GitHub asks us to wait, when the answer is a rate limit: `retry-after` (secondary limits), or the
/// primary limit's reset when `x-ratelimit-remaining` is 0.
fn rate_limited(answer: &Answer, now: DateTime<Utc>) -> Option<Duration> {
    if !matches!(answer.status, 403 | 429) {
        return None;
    }
    if let Some(secs) = answer
        .header("retry-after")
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        return Some(Duration::from_secs(secs.min(3600)));
    }
    if answer.header("x-ratelimit-remaining").map(str::trim) == Some("0") {
        let reset = answer
            .header("x-ratelimit-reset")?
            .trim()
            .parse::<i64>()
            .ok()?;
        let wait = (reset - now.timestamp()).clamp(1, 3600);
        return Some(Duration::from_secs(wait as u64));
    }
    // A secondary limit without `retry-after` (a 429, or a 403 that says so): GitHub says to wait at least a
    // minute.
    let says_secondary = answer
        .json()
        .and_then(|v| v.get("message")?.as_str().map(str::to_ascii_lowercase))
        .is_some_and(|m| m.contains("secondary rate limit"));
    if answer.status == 429 || says_secondary {
        return Some(Duration::from_secs(60));
    }
    None
}

#[async_trait]
impl Sink for GithubSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn read(&self, target: &Target) -> Result<Observed, SinkError> {
        let s = self.secret(target)?;
        let answer = self
            .call(Method::GET, self.url(&s.scope, &s.name), None)
            .await?;
        match answer.status {
            200 => {
                let at = answer
                    .json()
                    .and_then(|v| v.get("updated_at")?.as_str()?.parse::<DateTime<Utc>>().ok())
                    .ok_or_else(|| {
                        self.error(
                            SinkErrorKind::Unavailable,
                            format!("reading {s}: no `updated_at` in the answer"),
                        )
                    })?;
                let ours = self
                    .written
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&s.to_string())
                    .cloned();
                let content = match ours {
                    Some((id, when)) if when == at => Content::Delivered(Holds::TokenId(id)),
                    Some(_) => Content::Garbage(
                        "written by someone else since token-rotator wrote it".into(),
                    ),
                    None => Content::Delivered(Holds::WrittenAt(at)),
                };
                Ok(Observed {
                    version: Version::Unversioned,
                    content,
                })
            }
            404 => {
                // No such secret — or no such repository, environment or organization: the public key tells.
                self.public_key(&s.scope, true).await?;
                Ok(Observed {
                    version: Version::Absent,
                    content: Content::Absent,
                })
            }
            _ => Err(self.refused(&format!("reading {s}"), &answer, None)),
        }
    }

    async fn probe(&self, target: &Target) -> Result<Observed, SinkError> {
        let observed = self.read(target).await?;
        // An absent secret's read already fetched the key (to tell a missing scope from a missing secret).
        if !matches!(observed.content, Content::Absent) {
            let s = self.secret(target)?;
            self.public_key(&s.scope, true).await?;
        }
        Ok(observed)
    }

    async fn write(
        &self,
        target: &Target,
        record: &SinkRecord,
        _expected: Version,
    ) -> Result<(), SinkError> {
        let s = self.secret(target)?;
        let mut answer = self.put(s, &record.token, false).await?;
        if answer.status == 422 {
            // The scope's key may have been rotated since it was cached: once more with a fresh key.
            answer = self.put(s, &record.token, true).await?;
        }
        if !matches!(answer.status, 201 | 204) {
            return Err(self.refused(&format!("writing {s}"), &answer, Some(&record.token)));
        }
        let key = s.to_string();
        self.written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
        // What GitHub shows of our write, to tell it from a later one by someone else.
        let shown = self
            .call(Method::GET, self.url(&s.scope, &s.name), None)
            .await?;
        let at = (shown.status == 200)
            .then(|| shown.json())
            .flatten()
            .and_then(|v| v.get("updated_at")?.as_str()?.parse::<DateTime<Utc>>().ok());
        if let Some(at) = at {
            self.written
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key, (record.token_id.clone(), at));
        }
        Ok(())
    }
}

/// The policy side of `kind = "github-actions"`.
pub struct GithubSpec;

#[async_trait]
impl super::SinkKind for GithubSpec {
    async fn build(
        &self,
        name: &str,
        settings: &dyn SinkSettings,
    ) -> Result<Arc<dyn Sink>, SinkError> {
        let cfg = super::settings_of::<GithubConfig>(name, settings)?;
        let credential = cfg.token.resolve_local().map_err(|e| {
            SinkError::new(
                name,
                SinkErrorKind::Permanent,
                format!("token {}: {e}", cfg.token),
            )
        })?;
        let client = crate::http::client(cfg.ca_file.as_deref())
            .map_err(|e| SinkError::new(name, SinkErrorKind::Permanent, e.to_string()))?;
        Ok(Arc::new(GithubSink {
            name: name.to_string(),
            client,
            base: rest::base_url(name, &cfg.address)?,
            credential,
            reads: Pacer::new(10),
            writes: Pacer::new(1),
            keys: Mutex::new(HashMap::new()),
            written: Mutex::new(HashMap::new()),
        }))
    }
}

/// `^[A-Za-z_][A-Za-z0-9_]*$`, not `GITHUB_…` (docs.github.com: "Naming your secrets").
fn check_secret_name(name: &str) -> Result<(), String> {
    let ok_chars = name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    let first = name.chars().next();
    if !ok_chars || first.is_none_or(|c| c.is_ascii_digit()) {
        return Err(format!(
            "`name` \"{name}\" must contain only letters, digits and `_`, and not start with a digit"
        ));
    }
    if name.to_ascii_uppercase().starts_with("GITHUB_") {
        return Err(format!(
            "`name` \"{name}\" must not start with GITHUB_ (reserved by GitHub)"
        ));
    }
    Ok(())
}

impl SinkSpec for GithubSpec {
    fn name(&self) -> &'static str {
        "github-actions"
    }

    fn target_key(&self) -> TargetKey {
        TargetKey::Own
    }

    fn keys(&self) -> &'static [&'static str] {
        &["address", "token", "ca_file"]
    }

    fn delivers(&self) -> bool {
        true
    }

    fn place(&self, settings: &dyn SinkSettings) -> Option<String> {
        let cfg = settings.as_any().downcast_ref::<GithubConfig>()?;
        Some(format!(
            "github-actions {}",
            cfg.address.trim_end_matches('/').to_ascii_lowercase()
        ))
    }

    fn read(&self, t: &mut TableReader, d: &mut Diagnostics) -> Option<Arc<dyn SinkSettings>> {
        let mut ok = true;
        let address = match t.opt_str(d, "address") {
            Some(a) if check_address(d, "address", &t.name, &a) => a.into_inner(),
            Some(_) => {
                ok = false;
                String::new()
            }
            None => DEFAULT_ADDRESS.to_string(),
        };
        let token = if t.has("token") {
            read_local_secret_ref(t, d, "token")
        } else {
            t.missing(d, "token", " (e.g. `token = { env = \"GITHUB_TOKEN\" }`)");
            None
        };
        let ca_file = read_path(t, d, "ca_file");
        let token = token?;
        ok.then(|| {
            Arc::new(GithubConfig {
                address,
                token,
                ca_file,
            }) as Arc<dyn SinkSettings>
        })
    }

    fn read_target(
        &self,
        _sink: &str,
        _token: &str,
        r: &mut TableReader,
        d: &mut Diagnostics,
    ) -> Option<Target> {
        let repository = r.opt_str(d, "repository");
        let environment = r.opt_str(d, "environment");
        let organization = r.opt_str(d, "organization");
        let visibility = r.opt_str(d, "visibility");
        let selected = r.get("selected_repository_ids");
        let name = r.req_str(d, "name").and_then(|n| non_empty(d, n, "name"));
        let name = name.and_then(|n| match check_secret_name(&n) {
            Ok(()) => Some(n),
            Err(why) => {
                d.push(r.get_span("name").unwrap_or(r.span.clone()), why);
                None
            }
        });
        let scope = match (repository, organization) {
            (Some(repo), None) => {
                for (key, v) in [
                    ("visibility", r.get_span("visibility")),
                    (
                        "selected_repository_ids",
                        r.get_span("selected_repository_ids"),
                    ),
                ] {
                    if let Some(span) = v {
                        d.push(
                            span,
                            format!(
                                "`{key}` is for organization secrets; {} names a repository",
                                r.name
                            ),
                        );
                        return None;
                    }
                }
                let repo = non_empty(d, repo.clone(), "repository").filter(|s| {
                    let parts: Vec<&str> = s.split('/').collect();
                    let ok = parts.len() == 2 && parts.iter().all(|p| !p.is_empty());
                    if !ok {
                        d.push(
                            repo.span(),
                            format!(
                                "`repository` in {} must be \"OWNER/NAME\", found \"{s}\"",
                                r.name
                            ),
                        );
                    }
                    ok
                })?;
                match environment {
                    Some(env) => GithubScope::Environment {
                        repository: repo,
                        environment: non_empty(d, env, "environment")?,
                    },
                    None => GithubScope::Repository(repo),
                }
            }
            (None, Some(org)) => {
                if let Some(env) = environment {
                    d.push(
                        env.span(),
                        format!(
                            "`environment` needs `repository`; {} names an organization",
                            r.name
                        ),
                    );
                    return None;
                }
                let org = non_empty(d, org, "organization")?;
                let Some(vis) = visibility else {
                    r.missing(d, "visibility", " (\"all\", \"private\" or \"selected\": which repositories see the secret)");
                    return None;
                };
                let visibility = match vis.get_ref().as_str() {
                    "all" => Visibility::All,
                    "private" => Visibility::Private,
                    "selected" => Visibility::Selected,
                    other => {
                        d.push(vis.span(), format!("`visibility` in {} must be \"all\", \"private\" or \"selected\", found \"{other}\"", r.name));
                        return None;
                    }
                };
                let mut ids = Vec::new();
                if let Some(v) = selected {
                    if visibility != Visibility::Selected {
                        d.push(
                            v.span(),
                            format!(
                                "`selected_repository_ids` in {} needs `visibility = \"selected\"`",
                                r.name
                            ),
                        );
                        return None;
                    }
                    let Some(items) = v.get_ref().as_array() else {
                        crate::policy::reader::wrong_type(
                            d,
                            v,
                            "`selected_repository_ids`",
                            "an array of repository ids",
                        );
                        return None;
                    };
                    for item in items.iter() {
                        match item
                            .get_ref()
                            .as_integer()
                            .and_then(|i| u64::from_str_radix(i.as_str(), i.radix()).ok())
                        {
                            Some(id) => ids.push(id),
                            None => {
                                d.push(item.span(), "`selected_repository_ids` holds repository ids (positive integers)");
                                return None;
                            }
                        }
                    }
                }
                GithubScope::Organization {
                    org,
                    visibility,
                    selected: ids,
                }
            }
            (Some(_), Some(_)) => {
                d.push(
                    r.span.clone(),
                    format!("{} takes `repository` or `organization`, not both", r.name),
                );
                return None;
            }
            (None, None) => {
                r.missing(d, "repository", " (or `organization`)");
                return None;
            }
        };
        Some(Target::GithubSecret(Box::new(GithubSecret {
            scope,
            name: name?,
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_with_the_private_key_only() {
        let secret = crypto_box::SecretKey::generate(&mut crypto_box::aead::OsRng);
        let public = *secret.public_key().as_bytes();
        let sealed = seal(&public, b"the token").unwrap();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .unwrap();
        assert_eq!(secret.unseal(&bytes).unwrap(), b"the token");
        let other = crypto_box::SecretKey::generate(&mut crypto_box::aead::OsRng);
        assert!(other.unseal(&bytes).is_err());
    }

    #[test]
    fn secret_names_follow_githubs_rules() {
        assert!(check_secret_name("TF_API_TOKEN").is_ok());
        assert!(check_secret_name("_x1").is_ok());
        assert!(check_secret_name("1X").is_err());
        assert!(check_secret_name("A-B").is_err());
        assert!(check_secret_name("github_token").is_err());
    }

    fn answer(status: u16, headers: &[(&'static str, &str)]) -> Answer {
        let mut h = reqwest::header::HeaderMap::new();
        for (k, v) in headers {
            h.insert(*k, v.parse().unwrap());
        }
        Answer {
            status,
            headers: h,
            body: Vec::new(),
        }
    }

    #[test]
    fn rate_limits_are_read_from_the_headers() {
        let now: DateTime<Utc> = "2026-12-05T00:00:00Z".parse().unwrap();
        assert_eq!(
            rate_limited(&answer(403, &[("retry-after", "30")]), now),
            Some(Duration::from_secs(30))
        );
        let reset = (now.timestamp() + 90).to_string();
        assert_eq!(
            rate_limited(
                &answer(
                    403,
                    &[
                        ("x-ratelimit-remaining", "0"),
                        ("x-ratelimit-reset", &reset)
                    ]
                ),
                now
            ),
            Some(Duration::from_secs(90))
        );
        // A plain 403 is a refusal, not a limit.
        assert_eq!(
            rate_limited(&answer(403, &[("x-ratelimit-remaining", "12")]), now),
            None
        );
        assert_eq!(
            rate_limited(&answer(429, &[]), now),
            Some(Duration::from_secs(60))
        );
        // GitHub may answer a secondary limit 403 without `retry-after`: its message says so.
        let mut secondary = answer(403, &[]);
        secondary.body =
            br#"{"message":"You have exceeded a secondary rate limit. Please wait a few minutes."}"#
                .to_vec();
        assert_eq!(rate_limited(&secondary, now), Some(Duration::from_secs(60)));
        assert_eq!(
            rate_limited(&answer(200, &[("retry-after", "5")]), now),
            None
        );
    }

    fn record(id: &str, value: &str) -> SinkRecord {
        SinkRecord {
            token: SecretString::from(value.to_string()),
            token_id: id.into(),
            issuer: "tfc".into(),
            token_type: "team".into(),
            created_at: crate::clock::now(),
            expires_at: None,
        }
    }

    /// What GitHub shows of a secret is only its write time: the sink remembers the time of its own write, so a
    /// later write by someone else makes the secret lag (and a sink without that memory compares the times).
    #[tokio::test]
    async fn a_secret_written_by_someone_else_after_us_lags() {
        use super::super::SinkKind;
        let gh = token_rotator_emulators::github::GithubEmulator::start(Default::default())
            .await
            .unwrap();
        gh.add_repo("acme/infra");
        gh.add_token("unit-test-github-token-0123456789", &["repo:acme/infra"]);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gh-token");
        std::fs::write(&file, "unit-test-github-token-0123456789").unwrap();
        let cfg = GithubConfig {
            address: gh.base_url(),
            token: SecretRef::File(file),
            ca_file: None,
        };
        let sink = || async { GithubSpec.build("gh", &cfg).await.unwrap() };
        let target = Target::GithubSecret(Box::new(GithubSecret {
            scope: GithubScope::Repository("acme/infra".into()),
            name: "TF_API_TOKEN".into(),
        }));
        let ours = sink().await;
        let first = record("at-1", "value-one-0123456789");
        ours.write(&target, &first, Version::Absent).await.unwrap();
        assert_eq!(
            gh.secret("repo:acme/infra", "TF_API_TOKEN").unwrap().value,
            "value-one-0123456789"
        );
        let read = ours.read(&target).await.unwrap();
        assert!(read.surely_holds(&first), "{:?}", read.content);
        // Someone else writes the secret a few seconds later (another tool with the same access).
        gh.advance_clock(Duration::from_secs(5));
        let other = sink().await;
        other
            .write(
                &target,
                &record("at-2", "value-two-0123456789"),
                Version::Unversioned,
            )
            .await
            .unwrap();
        let read = ours.read(&target).await.unwrap();
        assert!(!read.holds(&first), "{:?}", read.content);
        // A sink that wrote nothing (a restart) can only compare the write time with the token's creation.
        let fresh = sink().await;
        let read = fresh.read(&target).await.unwrap();
        assert!(read.holds(&first) && !read.surely_holds(&first));
    }
}
