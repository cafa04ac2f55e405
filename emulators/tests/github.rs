//! Behaviour of the GitHub Actions secrets emulator, driven over HTTP like a client drives api.github.com.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use crypto_box::aead::OsRng;
use crypto_box::PublicKey;
use reqwest::header::{HeaderMap, AUTHORIZATION, USER_AGENT};
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};
use token_rotator_emulators::github::{Config, GithubEmulator, GithubHandle};

const UA: &str = "token-rotator-tests";

struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
    body: Value,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn message(&self) -> &str {
        self.body["message"].as_str().unwrap_or_default()
    }
}

struct Api {
    client: Client,
    base: String,
}

impl Api {
    fn new(handle: &GithubHandle) -> Api {
        Api {
            client: Client::new(),
            base: handle.base_url(),
        }
    }

    /// A well-behaved request: `User-Agent`, the API version, `Accept`, and the token as `Bearer`.
    fn request(&self, method: Method, path: &str, token: Option<&str>) -> reqwest::RequestBuilder {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .header(USER_AGENT, UA)
            .header("Accept", "application/vnd.github+json")
            .header("X-GitHub-Api-Version", "2022-11-28");
        if let Some(token) = token {
            req = req.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        req
    }

    async fn get(&self, path: &str, token: &str) -> Resp {
        send(self.request(Method::GET, path, Some(token))).await
    }

    async fn put(&self, path: &str, token: &str, body: Value) -> Resp {
        send(
            self.request(Method::PUT, path, Some(token))
                .body(body.to_string()),
        )
        .await
    }

    /// `GET {prefix}/public-key`, then the sealed `value` for it: `(key_id, encrypted_value)`.
    async fn seal_for(&self, prefix: &str, token: &str, value: &str) -> (String, String) {
        let r = self.get(&format!("{prefix}/public-key"), token).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        let key_id = r.body["key_id"].as_str().expect("key_id").to_string();
        let key = B64
            .decode(r.body["key"].as_str().expect("key"))
            .expect("key is base64");
        assert_eq!(key.len(), 32);
        (key_id, seal(&key, value))
    }
}

fn seal(public_key: &[u8], value: &str) -> String {
    let pk = PublicKey::from_slice(public_key).expect("32-byte key");
    B64.encode(pk.seal(&mut OsRng, value.as_bytes()).expect("seal"))
}

async fn send(req: reqwest::RequestBuilder) -> Resp {
    let resp = req.send().await.expect("request reaches the emulator");
    let status = resp.status();
    let headers = resp.headers().clone();
    let text = resp.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Resp {
        status,
        headers,
        text,
        body,
    }
}

fn parse_time(v: &Value) -> DateTime<Utc> {
    let s = v.as_str().expect("timestamp string");
    assert!(
        s.ends_with('Z') && s.len() == "2024-01-01T00:00:00Z".len(),
        "{s}"
    );
    DateTime::parse_from_rfc3339(s)
        .expect("RFC 3339")
        .with_timezone(&Utc)
}

const REPO: &str = "/repos/acme/app/actions/secrets";
const ENV: &str = "/repos/acme/app/environments/production/secrets";
const ORG: &str = "/orgs/acme/actions/secrets";

/// acme/app (with a `production` environment), the acme organization, and tokens:
/// `repo-token` (acme/app only), `org-token` (all of acme), `other-token` (another repository).
async fn fixture(cfg: Config) -> (GithubHandle, Api) {
    let gh = GithubEmulator::start(cfg).await.expect("emulator starts");
    gh.add_org("acme");
    gh.add_repo("acme/app");
    gh.add_repo("acme/lib");
    gh.add_repo("someone/else");
    gh.add_environment("acme/app", "production");
    gh.add_token("repo-token", &["repo:acme/app"]);
    gh.add_token("org-token", &["org:acme"]);
    gh.add_token("other-token", &["repo:someone/else"]);
    let api = Api::new(&gh);
    (gh, api)
}

fn assert_rate_headers(r: &Resp) {
    for h in [
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
        "x-ratelimit-used",
    ] {
        assert!(
            r.header(h).is_some_and(|v| v.parse::<i64>().is_ok()),
            "{h} on {}",
            r.status
        );
    }
    assert_eq!(r.header("x-ratelimit-resource"), Some("core"));
}

#[tokio::test]
async fn repository_secret_create_update_read() {
    let (gh, api) = fixture(Config::default()).await;

    let (key_id, sealed) = api.seal_for(REPO, "repo-token", "first value").await;
    assert_eq!(gh.public_key("repo:acme/app").0, key_id);
    let r = api
        .put(
            &format!("{REPO}/my_token"),
            "repo-token",
            json!({"encrypted_value": sealed, "key_id": key_id}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_rate_headers(&r);

    let r = api.get(&format!("{REPO}/MY_TOKEN"), "repo-token").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["name"], "MY_TOKEN");
    let created = parse_time(&r.body["created_at"]);
    assert_eq!(parse_time(&r.body["updated_at"]), created);
    assert_eq!(r.body.as_object().map(|o| o.len()), Some(3), "{}", r.body);

    let info = gh.secret("repo:acme/app", "my_token").expect("stored");
    assert_eq!(info.value, "first value");
    assert_eq!(info.name, "MY_TOKEN");
    assert_eq!(info.key_id, key_id);
    assert_eq!(info.created_at, created);
    assert_eq!(info.visibility, None);

    gh.advance_clock(Duration::from_secs(90));
    let (key_id, sealed) = api.seal_for(REPO, "org-token", "second value").await;
    let r = api
        .put(
            &format!("{REPO}/My_Token"),
            "org-token",
            json!({"encrypted_value": sealed, "key_id": key_id}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert!(r.text.is_empty());

    let r = api.get(&format!("{REPO}/my_token"), "repo-token").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(parse_time(&r.body["created_at"]), created);
    let updated = parse_time(&r.body["updated_at"]);
    assert!(
        updated >= created + chrono::TimeDelta::seconds(90),
        "{updated} vs {created}"
    );
    let info = gh.secret("repo:acme/app", "MY_TOKEN").expect("stored");
    assert_eq!(info.value, "second value");
    assert_eq!(info.updated_at, updated);

    let r = api.get(&format!("{REPO}/NOPE"), "repo-token").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.message(), "Not Found");
    assert_rate_headers(&r);

    let log = gh.requests();
    assert!(log
        .iter()
        .any(|l| l.method == "PUT" && l.path == format!("{REPO}/my_token") && l.status == 201));
}

#[tokio::test]
async fn token_scheme_is_accepted() {
    let (_gh, api) = fixture(Config::default()).await;
    let r = send(
        api.client
            .get(format!("{}{REPO}/public-key", api.base))
            .header(USER_AGENT, UA)
            .header(AUTHORIZATION, "token repo-token"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn stale_key_id_and_bad_ciphertext_are_422() {
    let (gh, api) = fixture(Config::default()).await;
    let (old_key_id, sealed_old) = api.seal_for(REPO, "repo-token", "v").await;
    let new_key_id = gh.rotate_key("repo:acme/app");
    assert_ne!(new_key_id, old_key_id);

    let r = api
        .put(
            &format!("{REPO}/X"),
            "repo-token",
            json!({"encrypted_value": sealed_old, "key_id": old_key_id}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.message().contains("key_id"), "{}", r.text);
    assert_rate_headers(&r);

    // Current key id, but sealed to the old key: does not open.
    let r = api
        .put(
            &format!("{REPO}/X"),
            "repo-token",
            json!({"encrypted_value": sealed_old, "key_id": new_key_id}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        r.message(),
        "Bad request - validation failed due to an improperly encrypted secret"
    );

    // Base64, but not a sealed box.
    let r = api
        .put(
            &format!("{REPO}/X"),
            "repo-token",
            json!({"encrypted_value": B64.encode(b"plain text, not sealed"), "key_id": new_key_id}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.message().contains("improperly encrypted"));

    // Not base64.
    let r = api
        .put(
            &format!("{REPO}/X"),
            "repo-token",
            json!({"encrypted_value": "not base64!", "key_id": new_key_id}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.message().contains("does not match"), "{}", r.text);

    // Missing key_id.
    let r = api
        .put(
            &format!("{REPO}/X"),
            "repo-token",
            json!({"encrypted_value": "YQ=="}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        r.message(),
        "Invalid request.\n\n\"key_id\" wasn't supplied."
    );

    // Not JSON.
    let r = send(
        api.request(Method::PUT, &format!("{REPO}/X"), Some("repo-token"))
            .body("{"),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.message(), "Problems parsing JSON");

    assert!(gh.secret("repo:acme/app", "X").is_none());

    // The new key works.
    let (key_id, sealed) = api.seal_for(REPO, "repo-token", "after rotation").await;
    assert_eq!(key_id, new_key_id);
    let r = api
        .put(
            &format!("{REPO}/X"),
            "repo-token",
            json!({"encrypted_value": sealed, "key_id": key_id}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(
        gh.secret("repo:acme/app", "x").unwrap().value,
        "after rotation"
    );
}

#[tokio::test]
async fn secret_names_are_checked() {
    let (_gh, api) = fixture(Config::default()).await;
    let (key_id, sealed) = api.seal_for(REPO, "repo-token", "v").await;
    for bad in ["GITHUB_TOKEN", "github_x", "1ABC", "A-B"] {
        let r = api
            .put(
                &format!("{REPO}/{bad}"),
                "repo-token",
                json!({"encrypted_value": sealed, "key_id": key_id}),
            )
            .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
        assert!(r.message().starts_with("Invalid request."), "{}", r.text);
    }
}

#[tokio::test]
async fn authentication_access_and_user_agent() {
    let (_gh, api) = fixture(Config::default()).await;
    let path = format!("{REPO}/public-key");

    let r = send(api.request(Method::GET, &path, None)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.message(), "Requires authentication");
    assert!(r.body["documentation_url"].is_string());
    assert_rate_headers(&r);

    let r = api.get(&path, "who-knows").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.message(), "Bad credentials");

    let r = send(
        api.client
            .get(format!("{}{path}", api.base))
            .header(USER_AGENT, UA)
            .header(AUTHORIZATION, "Basic cmVwby10b2tlbg=="),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    // A valid token without access to the repository, or to the organization.
    let r = api.get(&path, "other-token").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.message(), "Not Found");
    let r = api.get(&format!("{ORG}/public-key"), "repo-token").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // A repository that does not exist, even for an org token.
    let r = api
        .get(
            "/repos/acme/missing/actions/secrets/public-key",
            "org-token",
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // No User-Agent: refused before anything else.
    let r = send(
        api.client
            .get(format!("{}{path}", api.base))
            .header(AUTHORIZATION, "Bearer repo-token"),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(
        r.text.starts_with("Request forbidden by administrative rules. Please make sure your request has a User-Agent header"),
        "{}",
        r.text
    );
    assert_rate_headers(&r);

    // Unknown paths and methods are 404.
    let r = send(api.request(Method::POST, &format!("{REPO}/X"), Some("repo-token"))).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = api
        .get("/repos/acme/app/actions/variables", "repo-token")
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // An unsupported API version.
    let r = send(
        api.client
            .get(format!("{}{path}", api.base))
            .header(USER_AGENT, UA)
            .header("X-GitHub-Api-Version", "2020-01-01")
            .header(AUTHORIZATION, "Bearer repo-token"),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn environment_secrets() {
    let (gh, api) = fixture(Config::default()).await;
    let (key_id, sealed) = api.seal_for(ENV, "repo-token", "env value").await;
    assert_ne!(key_id, gh.public_key("repo:acme/app").0);
    assert_eq!(key_id, gh.public_key("env:acme/app:production").0);

    // Sealed to the repository key: not this environment's.
    let (repo_key_id, repo_sealed) = api.seal_for(REPO, "repo-token", "env value").await;
    let r = api
        .put(
            &format!("{ENV}/DEPLOY"),
            "repo-token",
            json!({"encrypted_value": repo_sealed, "key_id": repo_key_id}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);

    let r = api
        .put(
            &format!("{ENV}/DEPLOY"),
            "repo-token",
            json!({"encrypted_value": sealed, "key_id": key_id}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let r = api.get(&format!("{ENV}/deploy"), "repo-token").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["name"], "DEPLOY");
    assert_eq!(
        gh.secret("env:acme/app:production", "DEPLOY")
            .unwrap()
            .value,
        "env value"
    );
    assert!(gh.secret("repo:acme/app", "DEPLOY").is_none());

    for path in [
        "/repos/acme/app/environments/staging/secrets/public-key",
        "/repos/acme/app/environments/staging/secrets/DEPLOY",
    ] {
        let r = api.get(path, "repo-token").await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(r.message(), "Not Found");
    }
    let r = api
        .put(
            "/repos/acme/app/environments/staging/secrets/DEPLOY",
            "repo-token",
            json!({"encrypted_value": sealed, "key_id": key_id}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn organization_secrets_and_visibility() {
    let (gh, api) = fixture(Config::default()).await;
    let (key_id, sealed) = api.seal_for(ORG, "org-token", "org value").await;

    let r = api
        .put(
            &format!("{ORG}/SHARED"),
            "org-token",
            json!({"encrypted_value": sealed, "key_id": key_id}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        r.message(),
        "Invalid request.\n\n\"visibility\" wasn't supplied."
    );

    let r = api
        .put(
            &format!("{ORG}/SHARED"),
            "org-token",
            json!({"encrypted_value": sealed, "key_id": key_id, "visibility": "public"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.message().contains("visibility"), "{}", r.text);
    assert!(gh.secret("org:acme", "SHARED").is_none());

    let r = api
        .put(
            &format!("{ORG}/SHARED"),
            "org-token",
            json!({"encrypted_value": sealed, "key_id": key_id, "visibility": "all"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let r = api.get(&format!("{ORG}/SHARED"), "org-token").await;
    assert_eq!(r.body["visibility"], "all");
    assert!(r.body.get("selected_repositories_url").is_none());

    let lib_id = gh.repo_id("acme/lib").unwrap();
    let r = api
        .put(
            &format!("{ORG}/SHARED"),
            "org-token",
            json!({"encrypted_value": sealed, "key_id": key_id, "visibility": "selected",
                   "selected_repository_ids": [lib_id]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = api.get(&format!("{ORG}/SHARED"), "org-token").await;
    assert_eq!(r.body["visibility"], "selected");
    assert_eq!(
        r.body["selected_repositories_url"],
        format!(
            "{}/orgs/acme/actions/secrets/SHARED/repositories",
            gh.base_url()
        )
    );
    let info = gh.secret("org:acme", "shared").unwrap();
    assert_eq!(info.value, "org value");
    assert_eq!(info.visibility.as_deref(), Some("selected"));
    assert_eq!(info.selected_repository_ids, vec![lib_id]);

    // A repository outside the organization.
    let else_id = gh.repo_id("someone/else").unwrap();
    let r = api
        .put(
            &format!("{ORG}/SHARED"),
            "org-token",
            json!({"encrypted_value": sealed, "key_id": key_id, "visibility": "selected",
                   "selected_repository_ids": [else_id]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);

    // The unknown organization.
    let r = api
        .get("/orgs/nobody/actions/secrets/public-key", "org-token")
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn primary_rate_limit() {
    let (gh, api) = fixture(Config {
        primary_limit: Some(3),
        primary_window: Duration::from_secs(60),
    })
    .await;
    let path = format!("{REPO}/public-key");
    let mut reset = None;
    for i in 1..=3u32 {
        let r = api.get(&path, "repo-token").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.header("x-ratelimit-limit"), Some("3"));
        assert_eq!(r.header("x-ratelimit-used"), Some(i.to_string().as_str()));
        assert_eq!(
            r.header("x-ratelimit-remaining"),
            Some((3 - i).to_string().as_str())
        );
        reset = r.header("x-ratelimit-reset").map(str::to_string);
    }
    let r = api.get(&path, "repo-token").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(r.header("x-ratelimit-reset"), reset.as_deref());
    assert_eq!(r.header("x-ratelimit-resource"), Some("core"));
    assert!(
        r.message()
            .starts_with("API rate limit exceeded for user ID "),
        "{}",
        r.text
    );
    let reset: i64 = reset.unwrap().parse().unwrap();
    let now = gh.now().timestamp();
    assert!(reset > now && reset <= now + 61, "{reset} vs {now}");

    // Per token: another token still has its budget.
    let r = api.get(&path, "org-token").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("x-ratelimit-remaining"), Some("2"));

    // The window ends.
    gh.advance_clock(Duration::from_secs(61));
    let r = api.get(&path, "repo-token").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("x-ratelimit-remaining"), Some("2"));
}

#[tokio::test]
async fn secondary_rate_limit() {
    let (gh, api) = fixture(Config::default()).await;
    let path = format!("{REPO}/public-key");
    gh.secondary_limit(2, 30);
    for _ in 0..2 {
        let r = api.get(&path, "repo-token").await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        assert_eq!(r.header("retry-after"), Some("30"));
        assert!(
            r.message()
                .starts_with("You have exceeded a secondary rate limit"),
            "{}",
            r.text
        );
        assert_rate_headers(&r);
        assert_eq!(r.header("x-ratelimit-limit"), Some("5000"));
    }
    let r = api.get(&path, "repo-token").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.header("retry-after").is_none());
    assert_eq!(r.header("x-ratelimit-used"), Some("1"));
    let statuses: Vec<u16> = gh.requests().iter().map(|l| l.status).collect();
    assert_eq!(statuses, vec![403, 403, 200]);
}

#[tokio::test]
async fn stop_closes_the_listener() {
    let (gh, api) = fixture(Config::default()).await;
    let r = api.get(&format!("{REPO}/public-key"), "repo-token").await;
    assert_eq!(r.status, StatusCode::OK);
    gh.stop().await;
    let err = Client::new()
        .get(format!("{}{REPO}/public-key", api.base))
        .header(USER_AGENT, UA)
        .send()
        .await;
    assert!(err.is_err());
}
