//! Behaviour of the HCP Terraform emulator, driven over HTTP like the daemon drives the real API.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use reqwest::header::{HeaderMap, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};
use token_rotator_emulators::tfc::{Config, TfcEmulator, TfcHandle, TokenKind, TokenState};

const JSONAPI: &str = "application/vnd.api+json";

/// The emulator stamps tokens with the wall clock, so the tests compare against it too.
#[allow(clippy::disallowed_methods)]
fn wall_clock() -> DateTime<Utc> {
    Utc::now()
}

struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn data(&self) -> &Value {
        &self.body["data"]
    }
}

struct Api {
    client: Client,
    base: String,
}

impl Api {
    fn new(handle: &TfcHandle) -> Api {
        Api {
            client: Client::new(),
            base: handle.url(),
        }
    }

    fn request(&self, method: Method, path: &str, token: Option<&str>) -> reqwest::RequestBuilder {
        let mut req = self
            .client
            .request(method, format!("{}/api/v2/{path}", self.base));
        if let Some(token) = token {
            req = req.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        req
    }

    /// Sends like a correct client: the JSON:API content type on every POST/PATCH/DELETE.
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Resp {
        let mutating = method != Method::GET;
        let mut req = self.request(method, path, token);
        if mutating {
            req = req.header(CONTENT_TYPE, JSONAPI);
        }
        if let Some(body) = body {
            req = req.body(body.to_string());
        }
        send(req).await
    }

    async fn get(&self, path: &str, token: &str) -> Resp {
        self.call(Method::GET, path, Some(token), None).await
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> Resp {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    async fn delete(&self, path: &str, token: &str) -> Resp {
        self.call(Method::DELETE, path, Some(token), None).await
    }
}

async fn send(req: reqwest::RequestBuilder) -> Resp {
    let resp = req.send().await.expect("request reaches the emulator");
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.expect("body");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("JSON body")
    };
    Resp {
        status,
        headers,
        body,
    }
}

/// `path?k=v&…` with keys and values percent-encoded (brackets included, as the docs ask).
fn with_query(path: &str, pairs: &[(&str, &str)]) -> String {
    let encode = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    let query: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect();
    format!("{path}?{}", query.join("&"))
}

fn token_body(attributes: Value) -> Value {
    json!({"data": {"type": "authentication-tokens", "attributes": attributes}})
}

fn unlimited() -> Config {
    Config {
        rate_limit_per_second: None,
    }
}

fn parse_time(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().expect("a timestamp"))
        .expect("RFC 3339")
        .with_timezone(&Utc)
}

fn is_alnum(s: &str, len: usize) -> bool {
    s.len() == len && s.chars().all(|c| c.is_ascii_alphanumeric())
}

fn assert_token_value_shape(value: &str) {
    let parts: Vec<&str> = value.split('.').collect();
    assert_eq!(parts.len(), 3, "{}", parts.len());
    assert!(is_alnum(parts[0], 14) && parts[1] == "atlasv1" && is_alnum(parts[2], 67));
}

#[tokio::test]
async fn mutations_without_the_jsonapi_content_type_get_415() {
    let tfc = TfcEmulator::start(Config::default()).await.unwrap();
    let admin = tfc.add_organization("acme");
    let api = Api::new(&tfc);

    let no_type = api
        .request(
            Method::POST,
            "organizations/acme/authentication-token",
            Some(&admin),
        )
        .body(token_body(json!({})).to_string());
    let resp = send(no_type).await;
    assert_eq!(resp.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(resp.header("content-type"), Some(JSONAPI));
    assert_eq!(resp.body["errors"][0]["status"], "415");

    let plain_json = api
        .request(
            Method::POST,
            "organizations/acme/authentication-token",
            Some(&admin),
        )
        .header(CONTENT_TYPE, "application/json")
        .body(token_body(json!({})).to_string());
    assert_eq!(
        send(plain_json).await.status,
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );

    // Even a body-less DELETE needs it (go-tfe `content_type.go`).
    let delete = api.request(
        Method::DELETE,
        "organizations/acme/authentication-token",
        Some(&admin),
    );
    assert_eq!(
        send(delete).await.status,
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
    // Nothing was created by the refused POSTs.
    assert_eq!(tfc.valid_tokens().len(), 1);

    // A charset parameter is tolerated: this one reaches the route (no org token yet → 404).
    let with_charset = api
        .request(
            Method::DELETE,
            "organizations/acme/authentication-token",
            Some(&admin),
        )
        .header(CONTENT_TYPE, "application/vnd.api+json; charset=utf-8");
    assert_eq!(send(with_charset).await.status, StatusCode::NOT_FOUND);

    // GET needs no content type.
    assert_eq!(
        api.get("account/details", &admin).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn bad_credentials_get_401_and_ping_needs_none() {
    let tfc = TfcEmulator::start(Config::default()).await.unwrap();
    let admin = tfc.add_organization("acme");
    let api = Api::new(&tfc);

    let expected = json!({"errors": [{"status": "401", "title": "unauthorized"}]});
    let missing = api.call(Method::GET, "account/details", None, None).await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(missing.body, expected);
    assert_eq!(missing.header("content-type"), Some(JSONAPI));
    let unknown = api
        .get("account/details", "abcdefghijklmn.atlasv1.nope")
        .await;
    assert_eq!(
        (unknown.status, unknown.body),
        (StatusCode::UNAUTHORIZED, expected.clone())
    );
    let wrong_scheme = send(
        api.request(Method::GET, "account/details", None)
            .header(AUTHORIZATION, format!("token {admin}")),
    )
    .await;
    assert_eq!(wrong_scheme.status, StatusCode::UNAUTHORIZED);

    let ping = api.call(Method::GET, "ping", None, None).await;
    assert!(ping.status.is_success());
    assert_eq!(ping.header("tfp-appname"), Some("HCP Terraform"));
    assert!(ping.header("tfp-api-version").is_some());
    assert_eq!(ping.header("x-ratelimit-limit"), Some("30"));

    let me = api.get("account/details", &admin).await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.data()["type"], "users");
    assert_eq!(me.data()["attributes"]["is-service-account"], false);
    let user_id = me.data()["id"].as_str().unwrap();
    assert!(user_id.starts_with("user-"));
    assert_eq!(
        me.data()["relationships"]["authenticated-resource"]["data"],
        json!({"id": user_id, "type": "users"})
    );
    let admin_id = tfc.token_id_of(&admin).unwrap();
    assert_eq!(
        me.data()["links"]["auth-token"],
        format!("/api/v2/authentication-tokens/{admin_id}")
    );
}

#[tokio::test]
async fn organization_token_replaces_its_predecessor_and_shows_its_value_once() {
    let tfc = TfcEmulator::start(Config::default()).await.unwrap();
    let admin = tfc.add_organization("acme");
    let api = Api::new(&tfc);

    let before = wall_clock();
    let first = api
        .post(
            "organizations/acme/authentication-token",
            &admin,
            token_body(json!({})),
        )
        .await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    assert_eq!(first.header("content-type"), Some(JSONAPI));
    let data = first.data();
    let id = data["id"].as_str().unwrap();
    assert!(id.starts_with("at-") && is_alnum(&id[3..], 16), "{id}");
    assert_eq!(data["type"], "authentication-tokens");
    let value = data["attributes"]["token"].as_str().unwrap().to_owned();
    assert_token_value_shape(&value);
    assert_eq!(data["attributes"]["last-used-at"], Value::Null);
    assert_eq!(data["attributes"]["description"], Value::Null);
    assert_eq!(data["relationships"]["created-by"]["data"]["type"], "users");
    // Default expiry: 63113904000 ms (730.5 days) after creation.
    let expired_at = parse_time(&data["attributes"]["expired-at"]);
    let created_at = parse_time(&data["attributes"]["created-at"]);
    assert!(created_at >= before - TimeDelta::seconds(1));
    assert_eq!(
        expired_at - created_at,
        TimeDelta::milliseconds(63_113_904_000)
    );

    let read = api
        .get("organizations/acme/authentication-token", &admin)
        .await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.data()["id"], id);
    assert_eq!(read.data()["attributes"]["token"], Value::Null);
    let by_id = api
        .get(&format!("authentication-tokens/{id}"), &admin)
        .await;
    assert_eq!(by_id.data()["attributes"]["token"], Value::Null);

    let me = api.get("account/details", &value).await;
    assert_eq!(me.status, StatusCode::OK);
    let username = me.data()["attributes"]["username"].as_str().unwrap();
    assert!(username.starts_with("api-org-acme-"), "{username}");
    assert_eq!(me.data()["attributes"]["is-service-account"], true);
    assert_eq!(
        me.data()["relationships"]["authenticated-resource"]["data"],
        json!({"id": "acme", "type": "organizations"})
    );
    assert_eq!(
        me.data()["links"]["auth-token"],
        format!("/api/v2/authentication-tokens/{id}")
    );

    let second = api
        .post(
            "organizations/acme/authentication-token",
            &admin,
            token_body(json!({})),
        )
        .await;
    assert_eq!(second.status, StatusCode::CREATED);
    let second_value = second.data()["attributes"]["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(second_value, value);
    assert!(!tfc.is_valid(&value));
    assert_eq!(
        api.get("account/details", &value).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        api.get("account/details", &second_value).await.status,
        StatusCode::OK
    );
    assert_eq!(tfc.token_info(id).unwrap().state, TokenState::Replaced);

    assert_eq!(
        api.delete("organizations/acme/authentication-token", &admin)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert!(!tfc.is_valid(&second_value));
    assert_eq!(
        api.get("organizations/acme/authentication-token", &admin)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.delete("organizations/acme/authentication-token", &admin)
            .await
            .status,
        StatusCode::NOT_FOUND
    );

    // Unknown organization, and somebody else's organization: 404.
    let other_admin = tfc.add_organization("other");
    let nf = api
        .post(
            "organizations/nope/authentication-token",
            &admin,
            token_body(json!({})),
        )
        .await;
    assert_eq!(
        nf.body,
        json!({"errors": [{"status": "404", "title": "not found"}]})
    );
    let foreign = api
        .post(
            "organizations/acme/authentication-token",
            &other_admin,
            token_body(json!({})),
        )
        .await;
    assert_eq!(foreign.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn organization_token_can_rotate_itself() {
    let tfc = TfcEmulator::start(Config::default()).await.unwrap();
    let admin = tfc.add_organization("acme");
    let api = Api::new(&tfc);
    let first = api
        .post(
            "organizations/acme/authentication-token",
            &admin,
            token_body(json!({})),
        )
        .await;
    let org_token = first.data()["attributes"]["token"]
        .as_str()
        .unwrap()
        .to_owned();

    let rotated = api
        .post(
            "organizations/acme/authentication-token",
            &org_token,
            token_body(json!({})),
        )
        .await;
    assert_eq!(rotated.status, StatusCode::CREATED);
    assert_eq!(
        rotated.data()["relationships"]["created-by"]["data"],
        json!({"id": "acme", "type": "organizations"})
    );
    let new_token = rotated.data()["attributes"]["token"].as_str().unwrap();
    assert!(!tfc.is_valid(&org_token));
    assert!(tfc.is_valid(new_token));
    assert_eq!(
        api.get("account/details", &org_token).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn audit_trails_token_is_a_separate_singleton() {
    let tfc = TfcEmulator::start(Config::default()).await.unwrap();
    let admin = tfc.add_organization("acme");
    let api = Api::new(&tfc);
    let org = api
        .post(
            "organizations/acme/authentication-token",
            &admin,
            token_body(json!({})),
        )
        .await;
    let org_token = org.data()["attributes"]["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let audit_path = "organizations/acme/authentication-token?token=audit-trails";
    let audit = api
        .post(
            audit_path,
            &admin,
            json!({"data": {"type": "authentication-token", "attributes": {}}}),
        )
        .await;
    assert_eq!(audit.status, StatusCode::CREATED, "{}", audit.body);
    let audit_token = audit.data()["attributes"]["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let audit_again = api
        .post(audit_path, &org_token, token_body(json!({})))
        .await;
    assert_eq!(audit_again.status, StatusCode::CREATED);
    assert!(
        tfc.is_valid(&org_token),
        "rotating the audit-trails token leaves the org token alone"
    );
    assert!(!tfc.is_valid(&audit_token));
    let audit_token = audit_again.data()["attributes"]["token"]
        .as_str()
        .unwrap()
        .to_owned();

    let read = api.get(audit_path, &admin).await;
    assert_eq!(read.data()["id"], audit_again.data()["id"]);
    assert_ne!(read.data()["id"], org.data()["id"]);
    assert_eq!(
        tfc.token_info(read.data()["id"].as_str().unwrap())
            .unwrap()
            .kind,
        TokenKind::AuditTrails
    );

    // Only the owners and the org token manage org-level tokens; the audit token reads the audit trail.
    let by_audit = api
        .post(
            "organizations/acme/authentication-token",
            &audit_token,
            token_body(json!({})),
        )
        .await;
    assert_eq!(by_audit.status, StatusCode::NOT_FOUND);
    assert_eq!(
        api.get("organization/audit-trail", &audit_token)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        api.get("organization/audit-trail", &admin).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.get("organizations/acme/authentication-token?token=nope", &admin)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn create_bodies_and_expiry_are_validated_and_honoured() {
    let tfc = TfcEmulator::start(unlimited()).await.unwrap();
    let admin = tfc.add_organization("acme");
    let api = Api::new(&tfc);
    let path = "organizations/acme/authentication-token";

    for bad in [
        json!("not an object"),
        json!({}),
        json!({"data": null}),
        json!({"data": {"attributes": {}}}),
        json!({"data": {"type": "workspaces", "attributes": {}}}),
        token_body(json!({"expired-at": "next tuesday"})),
        token_body(json!({"expired-at": 1767225600})),
        token_body(json!({"expired-at": "2001-01-01T00:00:00Z"})),
    ] {
        let resp = api.post(path, &admin, bad.clone()).await;
        assert_eq!(resp.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
        assert_eq!(resp.body["errors"][0]["status"], "422");
    }
    let empty = send(
        api.request(Method::POST, path, Some(&admin))
            .header(CONTENT_TYPE, JSONAPI),
    )
    .await;
    assert_eq!(empty.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        tfc.valid_tokens().iter().all(|t| t.kind == TokenKind::User),
        "nothing was minted"
    );

    let at = wall_clock() + TimeDelta::days(30);
    let at_text = at.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let ok = api
        .post(path, &admin, token_body(json!({"expired-at": at_text})))
        .await;
    assert_eq!(ok.status, StatusCode::CREATED);
    assert_eq!(
        parse_time(&ok.data()["attributes"]["expired-at"]).timestamp(),
        at.timestamp()
    );
    let value = ok.data()["attributes"]["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let id = ok.data()["id"].as_str().unwrap().to_owned();
    assert_eq!(
        tfc.token_info(&id).unwrap().expired_at.unwrap().timestamp(),
        at.timestamp()
    );

    tfc.set_expired_at(&id, wall_clock() - TimeDelta::seconds(1));
    assert!(!tfc.is_valid(&value));
    assert_eq!(
        api.get("account/details", &value).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(tfc.token_info(&id).unwrap().state, TokenState::Expired);
    // Expired but not deleted: still shown.
    assert_eq!(api.get(path, &admin).await.status, StatusCode::OK);
}

#[tokio::test]
async fn described_team_tokens_coexist_with_unique_descriptions() {
    let tfc = TfcEmulator::start(unlimited()).await.unwrap();
    let admin = tfc.add_organization("acme");
    let team = tfc.add_team("acme", "platform");
    assert!(team.starts_with("team-") && is_alnum(&team[5..], 16));
    let api = Api::new(&tfc);
    let path = format!("teams/{team}/authentication-tokens");

    let a = api
        .post(
            &path,
            &admin,
            token_body(json!({"description": "rotator 1"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    assert_eq!(
        a.data()["relationships"]["team"]["data"],
        json!({"id": team, "type": "teams"})
    );
    assert_eq!(a.data()["attributes"]["description"], "rotator 1");
    let a_value = a.data()["attributes"]["token"].as_str().unwrap().to_owned();
    let a_id = a.data()["id"].as_str().unwrap().to_owned();
    let b = api
        .post(
            &path,
            &admin,
            token_body(json!({"description": "rotator 2"})),
        )
        .await;
    assert_eq!(b.status, StatusCode::CREATED);
    let b_value = b.data()["attributes"]["token"].as_str().unwrap().to_owned();
    assert!(tfc.is_valid(&a_value) && tfc.is_valid(&b_value));

    let dup = api
        .post(
            &path,
            &admin,
            token_body(json!({"description": "rotator 1"})),
        )
        .await;
    assert_eq!(dup.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        dup.body,
        json!({"errors": [{"status": "422", "title": "invalid attributes", "detail": "Validation failed: Description has already been taken"}]})
    );
    for missing in [json!({}), json!({"description": null})] {
        assert_eq!(
            api.post(&path, &admin, token_body(missing)).await.status,
            StatusCode::UNPROCESSABLE_ENTITY
        );
    }
    // The empty string is a description, not a legacy token.
    assert_eq!(
        api.post(&path, &admin, token_body(json!({"description": ""})))
            .await
            .status,
        StatusCode::CREATED
    );

    // The service user of a team token.
    let me = api.get("account/details", &a_value).await;
    assert!(me.data()["attributes"]["username"]
        .as_str()
        .unwrap()
        .starts_with("api-team-"));
    assert_eq!(
        me.data()["relationships"]["authenticated-resource"]["data"],
        json!({"id": team, "type": "teams"})
    );

    // The legacy token is a singleton beside the described ones.
    let legacy_path = format!("teams/{team}/authentication-token");
    let l1 = api.post(&legacy_path, &admin, token_body(json!({}))).await;
    assert_eq!(l1.status, StatusCode::CREATED);
    assert_eq!(
        l1.data()["relationships"]["team"]["data"]["id"],
        team.as_str()
    );
    let l1_value = l1.data()["attributes"]["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let l2 = api.post(&legacy_path, &admin, token_body(json!({}))).await;
    let l2_value = l2.data()["attributes"]["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(!tfc.is_valid(&l1_value) && tfc.is_valid(&l2_value));
    assert!(tfc.is_valid(&a_value) && tfc.is_valid(&b_value));
    assert_eq!(
        api.get(&legacy_path, &admin).await.data()["attributes"]["token"],
        Value::Null
    );
    // By team id, the legacy token (spec: "Can be a token ID or a team ID").
    assert_eq!(
        api.get(&format!("authentication-tokens/{team}"), &admin)
            .await
            .data()["id"],
        l2.data()["id"]
    );

    // Revoke by id; the description becomes free again.
    assert_eq!(
        api.delete(&format!("authentication-tokens/{a_id}"), &admin)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        api.get("account/details", &a_value).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        api.delete(&format!("authentication-tokens/{a_id}"), &admin)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.get(&format!("authentication-tokens/{a_id}"), &admin)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let reused = api
        .post(
            &path,
            &admin,
            token_body(json!({"description": "rotator 1"})),
        )
        .await;
    assert_eq!(reused.status, StatusCode::CREATED);

    // There is no per-team list endpoint; an old TFE has no described tokens at all.
    assert_eq!(api.get(&path, &admin).await.status, StatusCode::NOT_FOUND);
    tfc.set_multi_team_tokens_supported(false);
    let old_tfe = api
        .post(
            &path,
            &admin,
            token_body(json!({"description": "rotator 3"})),
        )
        .await;
    assert_eq!(old_tfe.status, StatusCode::NOT_FOUND);
    assert_eq!(
        api.post(&legacy_path, &admin, token_body(json!({})))
            .await
            .status,
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn team_tokens_reach_only_their_own_team() {
    let tfc = TfcEmulator::start(unlimited()).await.unwrap();
    let admin = tfc.add_organization("acme");
    let other_admin = tfc.add_organization("globex");
    let platform = tfc.add_team("acme", "platform");
    let data_team = tfc.add_team("acme", "data");
    assert_eq!(tfc.add_team("acme", "data"), data_team);
    let api = Api::new(&tfc);

    let team_view = api.get(&format!("teams/{platform}"), &admin).await;
    assert_eq!(team_view.status, StatusCode::OK);
    assert_eq!(team_view.data()["type"], "teams");
    assert_eq!(team_view.data()["attributes"]["name"], "platform");
    assert_eq!(
        team_view.data()["relationships"]["organization"]["data"],
        json!({"id": "acme", "type": "organizations"})
    );
    assert_eq!(
        api.get(&format!("teams/{platform}"), &other_admin)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.get("teams/team-doesnotexist0000", &admin).await.status,
        StatusCode::NOT_FOUND
    );

    let created = api
        .post(
            &format!("teams/{platform}/authentication-tokens"),
            &admin,
            token_body(json!({"description": "x"})),
        )
        .await;
    let platform_token = created.data()["attributes"]["token"]
        .as_str()
        .unwrap()
        .to_owned();

    // Its own team: may read it and rotate its tokens. Another team or org-level tokens: 404.
    assert_eq!(
        api.get(&format!("teams/{platform}"), &platform_token)
            .await
            .status,
        StatusCode::OK
    );
    let own = api
        .post(
            &format!("teams/{platform}/authentication-tokens"),
            &platform_token,
            token_body(json!({"description": "y"})),
        )
        .await;
    assert_eq!(own.status, StatusCode::CREATED);
    assert_eq!(
        own.data()["relationships"]["created-by"]["data"],
        json!({"id": platform, "type": "teams"})
    );
    let foreign = api
        .post(
            &format!("teams/{data_team}/authentication-tokens"),
            &platform_token,
            token_body(json!({"description": "z"})),
        )
        .await;
    assert_eq!(foreign.status, StatusCode::NOT_FOUND);
    assert_eq!(
        api.get(&format!("teams/{data_team}"), &platform_token)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let org_level = api
        .post(
            "organizations/acme/authentication-token",
            &platform_token,
            token_body(json!({})),
        )
        .await;
    assert_eq!(org_level.status, StatusCode::NOT_FOUND);
    let cross_org = api
        .post(
            &format!("teams/{platform}/authentication-tokens"),
            &other_admin,
            token_body(json!({"description": "w"})),
        )
        .await;
    assert_eq!(cross_org.status, StatusCode::NOT_FOUND);

    // A token of the owners team has owner rights.
    let owners = tfc.owners_team_id("acme").unwrap();
    let (_, owners_token) = tfc.mint(TokenKind::Team, &owners, Some("owners ci"), None);
    let by_owners = api
        .post(
            "organizations/acme/authentication-token",
            &owners_token,
            token_body(json!({})),
        )
        .await;
    assert_eq!(by_owners.status, StatusCode::CREATED);
}

#[tokio::test]
async fn org_team_token_list_paginates_filters_and_hides_values() {
    let tfc = TfcEmulator::start(unlimited()).await.unwrap();
    let admin = tfc.add_organization("acme");
    let platform = tfc.add_team("acme", "Platform");
    let data_team = tfc.add_team("acme", "data");
    let api = Api::new(&tfc);
    for i in 0..25 {
        let resp = api
            .post(
                &format!("teams/{platform}/authentication-tokens"),
                &admin,
                token_body(json!({"description": format!("t{i}")})),
            )
            .await;
        assert_eq!(resp.status, StatusCode::CREATED);
    }
    for i in 0..3 {
        api.post(
            &format!("teams/{data_team}/authentication-tokens"),
            &admin,
            token_body(json!({"description": format!("d{i}")})),
        )
        .await;
    }
    api.post(
        &format!("teams/{data_team}/authentication-token"),
        &admin,
        token_body(json!({})),
    )
    .await;

    let page1 = api.get("organizations/acme/team-tokens", &admin).await;
    assert_eq!(page1.status, StatusCode::OK);
    assert_eq!(page1.data().as_array().unwrap().len(), 20);
    let meta = &page1.body["meta"]["pagination"];
    assert_eq!(meta["current-page"], 1);
    assert_eq!(meta["page-size"], 20);
    assert_eq!(meta["prev-page"], Value::Null);
    assert_eq!(meta["next-page"], 2);
    assert_eq!(meta["total-pages"], 2);
    assert_eq!(meta["total-count"], 29);
    let next = page1.body["links"]["next"].as_str().unwrap();
    assert!(
        next.starts_with(&tfc.url()) && next.contains("page%5Bnumber%5D=2"),
        "{next}"
    );
    assert!(page1
        .data()
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["attributes"]["token"].is_null()));

    let page2 = send(api.request(
        Method::GET,
        &with_query(
            "organizations/acme/team-tokens",
            &[("page[number]", "2"), ("page[size]", "20")],
        ),
        Some(&admin),
    ))
    .await;
    assert_eq!(page2.data().as_array().unwrap().len(), 9);
    assert_eq!(page2.body["meta"]["pagination"]["next-page"], Value::Null);
    assert_eq!(page2.body["meta"]["pagination"]["prev-page"], 1);
    assert_eq!(page2.body["links"]["next"], Value::Null);

    let big = send(api.request(
        Method::GET,
        &with_query("organizations/acme/team-tokens", &[("page[size]", "1000")]),
        Some(&admin),
    ))
    .await;
    assert_eq!(big.body["meta"]["pagination"]["page-size"], 100);
    assert_eq!(big.data().as_array().unwrap().len(), 29);

    let filtered = send(api.request(
        Method::GET,
        &with_query("organizations/acme/team-tokens", &[("q", "platf")]),
        Some(&admin),
    ))
    .await;
    let items = filtered.data().as_array().unwrap();
    assert_eq!(items.len(), 20);
    assert_eq!(filtered.body["meta"]["pagination"]["total-count"], 25);
    assert!(items
        .iter()
        .all(|t| t["relationships"]["team"]["data"]["id"] == platform.as_str()));
    assert!(filtered.body["links"]["next"]
        .as_str()
        .unwrap()
        .contains("q=platf"));

    let data_only = send(api.request(
        Method::GET,
        &with_query(
            "organizations/acme/team-tokens",
            &[("q", "DATA"), ("sort", "-created-at")],
        ),
        Some(&admin),
    ))
    .await;
    assert_eq!(
        data_only.data().as_array().unwrap().len(),
        4,
        "3 described + 1 legacy"
    );
    let bad_sort = send(api.request(
        Method::GET,
        &with_query("organizations/acme/team-tokens", &[("sort", "colour")]),
        Some(&admin),
    ))
    .await;
    assert_eq!(bad_sort.status, StatusCode::BAD_REQUEST);
    let expired = send(api.request(
        Method::GET,
        &with_query(
            "organizations/acme/team-tokens",
            &[("filter[status]", "expired")],
        ),
        Some(&admin),
    ))
    .await;
    assert_eq!(expired.body["meta"]["pagination"]["total-count"], 0);
    assert_eq!(
        api.get("organizations/nope/team-tokens", &admin)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn agent_tokens_need_a_description_never_expire_and_cannot_call_the_api() {
    let tfc = TfcEmulator::start(unlimited()).await.unwrap();
    let admin = tfc.add_organization("acme");
    let pool = tfc.add_agent_pool("acme", "default");
    assert!(pool.starts_with("apool-") && is_alnum(&pool[6..], 16));
    let api = Api::new(&tfc);
    let path = format!("agent-pools/{pool}/authentication-tokens");

    for bad in [
        json!({}),
        json!({"description": null}),
        json!({"description": "  "}),
    ] {
        assert_eq!(
            api.post(&path, &admin, token_body(bad)).await.status,
            StatusCode::UNPROCESSABLE_ENTITY
        );
    }
    let a = api
        .post(
            &path,
            &admin,
            token_body(json!({"description": "agent 1", "expired-at": "whenever"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let attributes = a.data()["attributes"].as_object().unwrap();
    assert!(
        !attributes.contains_key("expired-at"),
        "agent tokens have no expiry attribute"
    );
    let a_value = attributes["token"].as_str().unwrap().to_owned();
    let a_id = a.data()["id"].as_str().unwrap().to_owned();
    let b = api
        .post(
            &path,
            &admin,
            json!({"data": {"type": "agent-tokens", "attributes": {"description": "agent 2"}}}),
        )
        .await;
    assert_eq!(b.status, StatusCode::CREATED);
    assert!(tfc.is_valid(&a_value));
    assert_eq!(tfc.token_info(&a_id).unwrap().expired_at, None);

    // "not valid for direct usage in the HCP Terraform API"
    assert_eq!(
        api.get("account/details", &a_value).await.status,
        StatusCode::UNAUTHORIZED
    );

    let list = api.get(&path, &admin).await;
    assert_eq!(list.status, StatusCode::OK);
    assert_eq!(list.body["meta"]["pagination"]["total-count"], 2);
    assert!(list
        .data()
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["attributes"]["token"].is_null()));
    let newest_first = send(api.request(
        Method::GET,
        &with_query(&path, &[("sort", "-created-at")]),
        Some(&admin),
    ))
    .await;
    assert_eq!(newest_first.data()[0]["id"], b.data()["id"]);

    let shown = api
        .get(&format!("authentication-tokens/{a_id}"), &admin)
        .await;
    assert_eq!(shown.data()["attributes"]["last-used-at"], Value::Null);
    tfc.mark_used(&a_id);
    let shown = api
        .get(&format!("authentication-tokens/{a_id}"), &admin)
        .await;
    assert!(shown.data()["attributes"]["last-used-at"].is_string());

    assert_eq!(
        api.delete(&format!("authentication-tokens/{a_id}"), &admin)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert!(!tfc.is_valid(&a_value));
    assert_eq!(
        api.get(&path, &admin).await.body["meta"]["pagination"]["total-count"],
        1
    );
    assert_eq!(
        api.delete(&format!("authentication-tokens/{a_id}"), &admin)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let unknown_pool = api.post(
        "agent-pools/apool-nope/authentication-tokens",
        &admin,
        token_body(json!({"description": "x"})),
    );
    assert_eq!(unknown_pool.await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn every_use_updates_last_used_at() {
    let tfc = TfcEmulator::start(Config::default()).await.unwrap();
    let admin = tfc.add_organization("acme");
    let team = tfc.add_team("acme", "platform");
    let api = Api::new(&tfc);
    let created = api
        .post(
            &format!("teams/{team}/authentication-tokens"),
            &admin,
            token_body(json!({"description": "x"})),
        )
        .await;
    let id = created.data()["id"].as_str().unwrap().to_owned();
    let value = created.data()["attributes"]["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(tfc.token_info(&id).unwrap().last_used_at, None);
    let before = wall_clock();
    api.get("account/details", &value).await;
    let used = tfc.token_info(&id).unwrap().last_used_at.expect("used");
    assert!(used >= before);
    let shown = api
        .get(&format!("authentication-tokens/{id}"), &admin)
        .await;
    assert_eq!(
        parse_time(&shown.data()["attributes"]["last-used-at"]).timestamp_millis(),
        used.timestamp_millis()
    );
    assert!(tfc
        .token_info(&tfc.token_id_of(&admin).unwrap())
        .unwrap()
        .last_used_at
        .is_some());
}

#[tokio::test]
async fn rate_limit_is_30_per_second_per_user_with_reset_and_no_retry_after() {
    let tfc = TfcEmulator::start(Config::default()).await.unwrap();
    let admin = tfc.add_organization("acme");
    let (_, org_token) = tfc.mint(TokenKind::Organization, "acme", None, None);
    let api = Api::new(&tfc);

    let burst = (0..40).map(|_| api.get("account/details", &admin));
    let responses = join_all(burst).await;
    let ok = responses
        .iter()
        .filter(|r| r.status == StatusCode::OK)
        .count();
    let limited: Vec<&Resp> = responses
        .iter()
        .filter(|r| r.status == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    assert_eq!((ok, limited.len()), (30, 10));
    let r = limited[0];
    assert_eq!(
        r.body,
        json!({"errors": [{"detail": "You have exceeded the API's rate limit.", "status": 429, "title": "Too many requests"}]})
    );
    assert_eq!(r.header("x-ratelimit-limit"), Some("30"));
    let reset: f64 = r.header("x-ratelimit-reset").unwrap().parse().unwrap();
    assert!(reset > 0.0 && reset <= 1.0, "{reset}");
    assert!(r.header("retry-after").is_none());

    // Another user (the org's service user) has its own budget.
    assert_eq!(
        api.get("account/details", &org_token).await.status,
        StatusCode::OK
    );
    assert!(tfc.max_requests_in_window(Duration::from_secs(1)) >= 40);

    tokio::time::sleep(Duration::from_secs_f64(reset) + Duration::from_millis(20)).await;
    assert_eq!(
        api.get("account/details", &admin).await.status,
        StatusCode::OK
    );

    // Unauthenticated requests are limited per IP, and still answer 401 within the budget.
    let anonymous = (0..35).map(|_| api.call(Method::GET, "account/details", None, None));
    let responses = join_all(anonymous).await;
    let unauthorized = responses
        .iter()
        .filter(|r| r.status == StatusCode::UNAUTHORIZED)
        .count();
    let limited = responses
        .iter()
        .filter(|r| r.status == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!((unauthorized, limited), (30, 5));
}

/// Drives the requests concurrently (no `futures` crate in this workspace).
async fn join_all<F>(futures: impl Iterator<Item = F>) -> Vec<Resp>
where
    F: std::future::Future<Output = Resp>,
{
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = futures.map(Box::pin).collect();
    let mut results: Vec<Option<Resp>> = (0..pinned.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, fut) in pinned.iter_mut().enumerate() {
            if results[i].is_none() {
                match fut.as_mut().poll(cx) {
                    std::task::Poll::Ready(r) => results[i] = Some(r),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    results.into_iter().map(|r| r.expect("completed")).collect()
}

#[tokio::test]
async fn throttling_and_injected_failures() {
    let tfc = TfcEmulator::start(Config::default()).await.unwrap();
    let admin = tfc.add_organization("acme");
    let api = Api::new(&tfc);

    tfc.throttle_for(Duration::from_millis(300));
    let throttled = api.get("account/details", &admin).await;
    assert_eq!(throttled.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(throttled.header("x-ratelimit-limit"), Some("30"));
    let reset: f64 = throttled
        .header("x-ratelimit-reset")
        .unwrap()
        .parse()
        .unwrap();
    assert!(reset > 0.0 && reset <= 0.3, "{reset}");
    assert!(throttled.header("retry-after").is_none());
    // Ignoring the reset is visible in the log.
    api.get("account/details", &admin).await;
    assert_eq!(tfc.requests_before_rate_limit_reset(), 1);
    tokio::time::sleep(Duration::from_millis(320)).await;
    assert_eq!(
        api.get("account/details", &admin).await.status,
        StatusCode::OK
    );

    tfc.fail_next(2, 503);
    let first = api.get("account/details", &admin).await;
    assert_eq!(first.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(first.body["errors"][0]["status"], "503");
    assert_eq!(first.header("content-type"), Some(JSONAPI));
    assert_eq!(
        api.call(Method::GET, "ping", None, None).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        api.get("account/details", &admin).await.status,
        StatusCode::OK
    );

    let log = tfc.request_log();
    assert_eq!(log.len(), tfc.request_count());
    assert_eq!(
        log.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![429, 429, 200, 503, 503, 200]
    );
    assert_eq!(tfc.request_count_for("GET", "/api/v2/account/details"), 5);
    assert_eq!(log[0].token_id, tfc.token_id_of(&admin));
}

#[tokio::test]
async fn create_delay_holds_the_answer_after_the_token_exists() {
    let tfc = TfcEmulator::start(Config::default()).await.unwrap();
    let admin = tfc.add_organization("acme");
    let (_, old) = tfc.mint(TokenKind::Organization, "acme", None, None);
    tfc.set_create_delay(Duration::from_millis(400));
    let api = Api::new(&tfc);
    let started = Instant::now();
    let create = api.post(
        "organizations/acme/authentication-token",
        &admin,
        token_body(json!({})),
    );
    let observe = async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        (
            tfc.is_valid(&old),
            tfc.valid_tokens()
                .iter()
                .filter(|t| t.kind == TokenKind::Organization)
                .count(),
        )
    };
    let (resp, (old_valid, org_tokens)) = tokio::join!(create, observe);
    assert_eq!(resp.status, StatusCode::CREATED);
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert!(
        !old_valid,
        "the predecessor dies when the server commits, not when the client reads"
    );
    assert_eq!(org_tokens, 1);
}

#[tokio::test]
async fn unknown_routes_and_methods_are_404() {
    let tfc = TfcEmulator::start(Config::default()).await.unwrap();
    let admin = tfc.add_organization("acme");
    let api = Api::new(&tfc);
    let nf = api.get("no/such/thing", &admin).await;
    assert_eq!(nf.status, StatusCode::NOT_FOUND);
    assert_eq!(nf.header("content-type"), Some(JSONAPI));
    let put = api
        .call(
            Method::PUT,
            "organizations/acme/authentication-token",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(put.status, StatusCode::NOT_FOUND);
    let outside = send(api.client.get(format!("{}/v1/thing", tfc.url()))).await;
    assert_eq!(outside.status, StatusCode::NOT_FOUND);
    // Unknown routes are 404 even without a credential.
    assert_eq!(
        api.call(Method::GET, "nope", None, None).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn tls_server_is_trusted_through_the_returned_ca() {
    let (tfc, ca_pem) = TfcEmulator::start_tls(Config::default()).await.unwrap();
    assert!(tfc.url().starts_with("https://127.0.0.1:"));
    assert!(ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
    let admin = tfc.add_organization("acme");
    let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap();
    let client = Client::builder().tls_certs_only([ca]).build().unwrap();
    for host in [
        tfc.url(),
        format!("https://localhost:{}", tfc.addr().port()),
    ] {
        let resp = client
            .get(format!("{host}/api/v2/account/details"))
            .header(AUTHORIZATION, format!("Bearer {admin}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }
    let untrusted = Client::new()
        .get(format!("{}/api/v2/ping", tfc.url()))
        .send()
        .await;
    assert!(untrusted.is_err(), "an unknown CA must be refused");
}

#[tokio::test]
async fn stop_closes_the_listener() {
    let tfc = TfcEmulator::start(Config::default()).await.unwrap();
    let url = tfc.url();
    let clone = tfc.clone();
    drop(clone);
    assert!(
        Client::new()
            .get(format!("{url}/api/v2/ping"))
            .send()
            .await
            .is_ok(),
        "a dropped clone stops nothing"
    );
    tfc.stop().await;
    assert!(Client::new()
        .get(format!("{url}/api/v2/ping"))
        .send()
        .await
        .is_err());
}

#[tokio::test]
async fn binary_serves_writes_a_private_admin_token_and_logs_without_secrets() {
    let dir = std::env::temp_dir().join(format!("tfc-emulator-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("admin-token");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tfc-emulator"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--org",
            "acme",
            "--team",
            "ci",
            "--admin-token-file",
        ])
        .arg(&token_file)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut url = None;
    let mut team_id = None;
    while team_id.is_none() {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "emulator exited early"
        );
        if let Some(rest) = line.trim().strip_prefix("tfc-emulator listening on ") {
            url = Some(rest.to_owned());
        }
        if let Some(rest) = line.trim().strip_prefix("tfc-emulator team ci id ") {
            team_id = Some(rest.to_owned());
        }
    }
    let url = url.expect("listening line comes first");
    let token = std::fs::read_to_string(&token_file).unwrap();
    assert_eq!(
        std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let token = token.trim_end().to_owned();

    let client = Client::new();
    let me = client
        .get(format!("{url}/api/v2/teams/{}", team_id.unwrap()))
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), StatusCode::OK);

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(child.wait().unwrap().success(), "SIGTERM exits 0");
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("GET /api/v2/teams/"), "{rest}");
    assert!(!rest.contains(&token));
    std::fs::remove_dir_all(&dir).unwrap();

    let refused = Command::new(env!("CARGO_BIN_EXE_tfc-emulator"))
        .args(["--listen", "0.0.0.0:0", "--org", "acme"])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(refused.code(), Some(2));
}

// --- Organization maximum-TTL policy ---

const TWO_YEARS_MS: i64 = 63_113_904_000;
const DAY_MS: i64 = 86_400_000;

fn ttl_body(policies: Value) -> Value {
    json!({"data": {"type": "organization-token-ttl-policies", "attributes": {"token-ttl-policies": policies}}})
}

fn policies_by_type(resp: &Resp) -> std::collections::BTreeMap<String, i64> {
    resp.data()
        .as_array()
        .expect("data is an array")
        .iter()
        .map(|p| {
            assert_eq!(p["type"], "organization-token-ttl-policies", "{p}");
            assert!(p["id"].as_str().is_some_and(|id| !id.is_empty()), "{p}");
            parse_time(&p["attributes"]["created-at"]);
            parse_time(&p["attributes"]["updated-at"]);
            (
                p["attributes"]["token-type"].as_str().unwrap().to_owned(),
                p["attributes"]["max-ttl-ms"]
                    .as_i64()
                    .expect("max-ttl-ms is an integer"),
            )
        })
        .collect()
}

#[tokio::test]
async fn token_ttl_policies_are_listed_and_partially_updated_by_owners() {
    let tfc = TfcEmulator::start(unlimited()).await.unwrap();
    let admin = tfc.add_organization("acme");
    let other_admin = tfc.add_organization("globex");
    let api = Api::new(&tfc);
    let path = "organizations/acme/token-ttl-policies";

    // One policy per token type, each at the 2-year default.
    let list = api.get(path, &admin).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.body);
    assert_eq!(list.header("content-type"), Some(JSONAPI));
    let defaults: std::collections::BTreeMap<String, i64> =
        ["audit_trails", "metrics", "organization", "team", "user"]
            .into_iter()
            .map(|t| (t.to_owned(), TWO_YEARS_MS))
            .collect();
    assert_eq!(policies_by_type(&list), defaults);

    // Same auth pipeline as every route.
    let anonymous = api.call(Method::GET, path, None, None).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        api.get("organizations/nope/token-ttl-policies", &admin)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.get(path, &other_admin).await.status,
        StatusCode::NOT_FOUND
    );
    let put = api.call(Method::PUT, path, Some(&admin), None).await;
    assert_eq!(put.status, StatusCode::NOT_FOUND);

    // A non-owner team's token: the spec's 403.
    let dev = tfc.add_team("acme", "dev");
    let (_, dev_token) = tfc.mint(TokenKind::Team, &dev, Some("ci"), None);
    let forbidden = api.get(path, &dev_token).await;
    assert_eq!(forbidden.status, StatusCode::FORBIDDEN);
    assert_eq!(
        forbidden.body["errors"][0]["detail"],
        "User is not part of the owners team of the organization"
    );
    // The organization token reads but does not update; an owners-team token does both.
    let (_, org_token) = tfc.mint(TokenKind::Organization, "acme", None, None);
    assert_eq!(api.get(path, &org_token).await.status, StatusCode::OK);
    let update = ttl_body(json!([{"token-type": "organization", "max-ttl-ms": 60 * DAY_MS}]));
    assert_eq!(
        api.call(Method::PATCH, path, Some(&org_token), Some(update.clone()))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let owners = tfc.owners_team_id("acme").unwrap();
    let (_, owners_token) = tfc.mint(TokenKind::Team, &owners, Some("owners ci"), None);
    assert_eq!(api.get(path, &owners_token).await.status, StatusCode::OK);

    // PATCH without the JSON:API content type: 415, like every write.
    let plain = send(
        api.request(Method::PATCH, path, Some(&admin))
            .header(CONTENT_TYPE, "application/json")
            .body(update.to_string()),
    )
    .await;
    assert_eq!(plain.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // A partial update answers every policy.
    let updated = api
        .call(Method::PATCH, path, Some(&owners_token), Some(update))
        .await;
    assert_eq!(updated.status, StatusCode::OK, "{}", updated.body);
    let mut expected = defaults.clone();
    expected.insert("organization".into(), 60 * DAY_MS);
    assert_eq!(policies_by_type(&updated), expected);
    let two = ttl_body(json!([
        {"token-type": "audit_trails", "max-ttl-ms": 7 * DAY_MS},
        {"token-type": "team", "max-ttl-ms": 3_600_000},
    ]));
    let updated = api.call(Method::PATCH, path, Some(&admin), Some(two)).await;
    expected.insert("audit_trails".into(), 7 * DAY_MS);
    expected.insert("team".into(), 3_600_000);
    assert_eq!(policies_by_type(&updated), expected);
    assert_eq!(policies_by_type(&api.get(path, &admin).await), expected);

    // Validation: 422, nothing applied.
    for bad in [
        ttl_body(json!([{"token-type": "audit-trails", "max-ttl-ms": DAY_MS}])),
        ttl_body(json!([{"token-type": "agent", "max-ttl-ms": DAY_MS}])),
        ttl_body(json!([{"token-type": "organization", "max-ttl-ms": 0}])),
        ttl_body(json!([{"token-type": "organization", "max-ttl-ms": -5}])),
        ttl_body(json!([{"token-type": "organization", "max-ttl-ms": 1.5}])),
        ttl_body(json!([{"token-type": "organization", "max-ttl-ms": "86400000"}])),
        ttl_body(json!([{"token-type": "organization"}])),
        ttl_body(json!([
            {"token-type": "user", "max-ttl-ms": DAY_MS},
            {"token-type": "nope", "max-ttl-ms": DAY_MS},
        ])),
        ttl_body(json!([])),
        json!({"data": {"type": "authentication-tokens", "attributes": {"token-ttl-policies": [{"token-type": "user", "max-ttl-ms": DAY_MS}]}}}),
        json!({"token_ttl_policies": [{"token_type": "user", "max_ttl_ms": DAY_MS}]}),
    ] {
        let resp = api
            .call(Method::PATCH, path, Some(&admin), Some(bad.clone()))
            .await;
        assert_eq!(resp.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
        assert_eq!(resp.body["errors"][0]["status"], "422");
    }
    assert_eq!(policies_by_type(&api.get(path, &admin).await), expected);
}

#[tokio::test]
async fn tokens_over_a_new_max_ttl_answer_401_but_stay_listed() {
    let tfc = TfcEmulator::start(unlimited()).await.unwrap();
    let admin = tfc.add_organization("acme");
    let api = Api::new(&tfc);
    let dev = tfc.add_team("acme", "dev");

    // Created before any policy: the org token with the 2-year default, a team token for 30 days.
    let org = api
        .post(
            "organizations/acme/authentication-token",
            &admin,
            token_body(json!({})),
        )
        .await;
    let org_id = org.data()["id"].as_str().unwrap().to_owned();
    let org_token = org.data()["attributes"]["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let in_30_days = wall_clock() + TimeDelta::days(30);
    let team = api
        .post(
            &format!("teams/{dev}/authentication-tokens"),
            &admin,
            token_body(json!({"description": "ci", "expired-at": in_30_days.to_rfc3339()})),
        )
        .await;
    let team_token = team.data()["attributes"]["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let team_id = team.data()["id"].as_str().unwrap().to_owned();
    for token in [&org_token, &team_token] {
        assert_eq!(
            api.get("account/details", token).await.status,
            StatusCode::OK
        );
    }

    // A 60-day limit on organization tokens: the 2-year org token stops working at once, like a revoked one.
    tfc.set_max_ttl(
        "acme",
        "organization",
        Some(Duration::from_secs(60 * 86_400)),
    );
    let refused = api.get("account/details", &org_token).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        refused.body,
        json!({"errors": [{"status": "401", "title": "unauthorized"}]})
    );
    assert!(!tfc.is_valid(&org_token));
    assert_eq!(
        tfc.token_info(&org_id).unwrap().state,
        TokenState::OverMaxTtl
    );
    // The compliant team token keeps working.
    assert_eq!(
        api.get("account/details", &team_token).await.status,
        StatusCode::OK
    );
    // Other credentials still see the refused token, with its expired-at.
    let shown = api
        .get("organizations/acme/authentication-token", &admin)
        .await;
    assert_eq!(shown.status, StatusCode::OK);
    assert_eq!(shown.data()["id"], org_id.as_str());
    assert_eq!(
        shown.data()["attributes"]["expired-at"],
        org.data()["attributes"]["expired-at"]
    );
    assert_eq!(
        api.get(&format!("authentication-tokens/{org_id}"), &admin)
            .await
            .status,
        StatusCode::OK
    );

    // A team limit below 30 days, set over the API, catches the team token too; it stays in the org-wide list.
    let patch = api
        .call(
            Method::PATCH,
            "organizations/acme/token-ttl-policies",
            Some(&admin),
            Some(ttl_body(
                json!([{"token-type": "team", "max-ttl-ms": 7 * DAY_MS}]),
            )),
        )
        .await;
    assert_eq!(patch.status, StatusCode::OK);
    assert_eq!(
        api.get("account/details", &team_token).await.status,
        StatusCode::UNAUTHORIZED
    );
    let list = api.get("organizations/acme/team-tokens", &admin).await;
    let ids: Vec<&str> = list
        .data()
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [team_id.as_str()]);
    assert_eq!(
        tfc.max_ttl("acme", TokenKind::Team),
        Some(Duration::from_secs(7 * 86_400))
    );
    assert_eq!(tfc.max_ttl("acme", TokenKind::Agent), None);

    // The owners' user token is not capped; switching the feature off makes both tokens work again.
    assert_eq!(
        api.get("account/details", &admin).await.status,
        StatusCode::OK
    );
    tfc.set_max_ttl_enabled("acme", false);
    assert_eq!(tfc.max_ttl("acme", TokenKind::Team), None);
    for token in [&org_token, &team_token] {
        assert_eq!(
            api.get("account/details", token).await.status,
            StatusCode::OK
        );
    }
}

#[tokio::test]
async fn creates_beyond_the_max_ttl_are_refused_and_the_default_is_the_limit() {
    let tfc = TfcEmulator::start(unlimited()).await.unwrap();
    let admin = tfc.add_organization("acme");
    let api = Api::new(&tfc);
    let dev = tfc.add_team("acme", "dev");
    tfc.set_max_ttl(
        "acme",
        "organization",
        Some(Duration::from_secs(60 * 86_400)),
    );
    tfc.set_max_ttl("acme", "team", Some(Duration::from_secs(7 * 86_400)));

    let in_days = |d: i64| (wall_clock() + TimeDelta::days(d)).to_rfc3339();
    let refused = api
        .post(
            "organizations/acme/authentication-token",
            &admin,
            token_body(json!({"expired-at": in_days(90)})),
        )
        .await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        refused.body,
        json!({"errors": [{
            "status": "422",
            "title": "invalid attributes",
            "detail": "Validation failed: Expired at exceeds the organization's maximum token TTL of 60 days",
        }]})
    );
    for (path, attrs) in [
        (
            format!("teams/{dev}/authentication-tokens"),
            json!({"description": "ci", "expired-at": in_days(8)}),
        ),
        (
            format!("teams/{dev}/authentication-token"),
            json!({"expired-at": in_days(8)}),
        ),
    ] {
        let resp = api.post(&path, &admin, token_body(attrs)).await;
        assert_eq!(resp.status, StatusCode::UNPROCESSABLE_ENTITY, "{path}");
        assert_eq!(
            resp.body["errors"][0]["detail"],
            "Validation failed: Expired at exceeds the organization's maximum token TTL of 7 days"
        );
    }
    // Nothing was minted (only the owners' seed token exists).
    assert_eq!(tfc.all_tokens().len(), 1);

    // Without `expired-at` the token lives exactly the limit, not two years, and works.
    let created = api
        .post(
            "organizations/acme/authentication-token",
            &admin,
            token_body(json!({})),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let attrs = &created.data()["attributes"];
    assert_eq!(
        parse_time(&attrs["expired-at"]) - parse_time(&attrs["created-at"]),
        TimeDelta::days(60)
    );
    let value = attrs["token"].as_str().unwrap();
    assert_eq!(
        api.get("account/details", value).await.status,
        StatusCode::OK
    );
    let team = api
        .post(
            &format!("teams/{dev}/authentication-tokens"),
            &admin,
            token_body(json!({"description": "ci", "expired-at": in_days(6)})),
        )
        .await;
    assert_eq!(team.status, StatusCode::CREATED, "{}", team.body);
    let team_value = team.data()["attributes"]["token"].as_str().unwrap();
    assert_eq!(
        api.get("account/details", team_value).await.status,
        StatusCode::OK
    );
    // Out-of-band mints default to the limit too.
    let (id, _) = tfc.mint(TokenKind::TeamLegacy, &dev, None, None);
    let info = tfc.token_info(&id).unwrap();
    assert_eq!(
        info.expired_at.unwrap() - info.created_at,
        TimeDelta::days(7)
    );
    // Agent tokens are not in the policy.
    let pool = tfc.add_agent_pool("acme", "pool");
    let agent = api
        .post(
            &format!("agent-pools/{pool}/authentication-tokens"),
            &admin,
            token_body(json!({"description": "agent"})),
        )
        .await;
    assert_eq!(agent.status, StatusCode::CREATED);
}
