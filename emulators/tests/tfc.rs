//! Behaviour of the HCP Terraform emulator, driven over HTTP like the daemon drives the real API.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use reqwest::header::{HeaderMap, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};
use token_rotator_emulators::tfc::{
    Config, TfcEmulator, TfcHandle, TokenKind, TokenState, VariableInfo,
};

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

    async fn patch(&self, path: &str, token: &str, body: Value) -> Resp {
        self.call(Method::PATCH, path, Some(token), Some(body))
            .await
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
            "--workspace",
            "prod",
            "--varset",
            "shared",
            "--admin-token-file",
        ])
        .arg(&token_file)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut url = None;
    let mut team_id = None;
    let mut ws_id = None;
    let mut varset_id = None;
    // Teams, then workspaces, then variable sets.
    while varset_id.is_none() {
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
        if let Some(rest) = line.trim().strip_prefix("tfc-emulator workspace prod id ") {
            ws_id = Some(rest.to_owned());
        }
        if let Some(rest) = line.trim().strip_prefix("tfc-emulator varset shared id ") {
            varset_id = Some(rest.to_owned());
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
    for owner in [ws_id.unwrap(), varset_id.unwrap()] {
        let path = if owner.starts_with("varset-") {
            format!("varsets/{owner}/relationships/vars")
        } else {
            format!("workspaces/{owner}/vars")
        };
        let created = client
            .post(format!("{url}/api/v2/{path}"))
            .header(AUTHORIZATION, format!("Bearer {token}"))
            .header(CONTENT_TYPE, JSONAPI)
            .body(
                json!({"data": {"type": "vars", "attributes": {
                    "key": "TFE_TOKEN", "value": "binary-secret", "category": "env", "sensitive": true,
                }}})
                .to_string(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), StatusCode::CREATED);
    }

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
    assert!(rest.contains("POST /api/v2/varsets/"), "{rest}");
    assert!(!rest.contains("binary-secret"));
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

// --- Workspace and variable-set variables ---

fn var_body(attributes: Value) -> Value {
    json!({"data": {"type": "vars", "attributes": attributes}})
}

/// The collection path of a workspace's or a variable set's variables.
fn vars_path(owner_id: &str) -> String {
    if owner_id.starts_with("varset-") {
        format!("varsets/{owner_id}/relationships/vars")
    } else {
        format!("workspaces/{owner_id}/vars")
    }
}

/// `(status, detail, pointer)` of a one-error answer.
fn validation_error(resp: &Resp) -> (StatusCode, &str, &str) {
    let err = &resp.body["errors"][0];
    assert_eq!(err["status"], resp.status.as_str(), "{}", resp.body);
    (
        resp.status,
        err["detail"].as_str().unwrap_or_default(),
        err["source"]["pointer"].as_str().unwrap_or_default(),
    )
}

/// Create, list, show, update and delete on one owner (a workspace or a variable set), as its own test.
async fn variable_lifecycle(tfc: &TfcHandle, api: &Api, token: &str, owner_id: &str) {
    let path = vars_path(owner_id);
    let owner_type = if owner_id.starts_with("varset-") {
        "varsets"
    } else {
        "workspaces"
    };
    let created = api
        .post(
            &path,
            token,
            var_body(json!({
                "key": "region", "value": "eu-west-1", "description": "where",
                "category": "terraform", "hcl": false, "sensitive": false,
            })),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(created.header("content-type"), Some(JSONAPI));
    let var = created.data().clone();
    let id = var["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("var-") && is_alnum(&id[4..], 16), "{id}");
    assert_eq!(var["type"], "vars");
    let attrs = &var["attributes"];
    assert_eq!(attrs["key"], "region");
    assert_eq!(attrs["value"], "eu-west-1");
    assert_eq!(attrs["description"], "where");
    assert_eq!(attrs["category"], "terraform");
    assert_eq!(
        (attrs["hcl"].clone(), attrs["sensitive"].clone()),
        (json!(false), json!(false))
    );
    let created_at = parse_time(&attrs["created-at"]);
    assert!((wall_clock() - created_at).num_seconds().abs() < 60);
    let version = attrs["version-id"].as_str().unwrap().to_owned();
    assert!(
        version.len() == 36 && version.chars().all(|c| c.is_ascii_hexdigit()),
        "{version}"
    );
    assert_eq!(
        var["relationships"]["configurable"]["data"],
        json!({"id": owner_id, "type": owner_type})
    );
    assert!(var["relationships"]["configurable"]["links"]["related"]
        .as_str()
        .unwrap()
        .starts_with("/api/v2/"));
    assert_eq!(var["links"]["self"], format!("/api/v2/{path}/{id}"));

    // Defaults: value "", hcl and sensitive false, no description.
    let env = api
        .post(
            &path,
            token,
            var_body(json!({"key": "TF_LOG", "category": "env"})),
        )
        .await;
    assert_eq!(env.status, StatusCode::CREATED, "{}", env.body);
    let env_attrs = &env.data()["attributes"];
    assert_eq!(env_attrs["value"], "");
    assert_eq!(env_attrs["description"], Value::Null);
    assert_eq!(env_attrs["hcl"], false);
    assert_eq!(env_attrs["sensitive"], false);
    let env_id = env.data()["id"].as_str().unwrap().to_owned();

    let list = api.get(&path, token).await;
    assert_eq!(list.status, StatusCode::OK);
    let ids: Vec<&str> = list
        .data()
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [id.as_str(), env_id.as_str()]);
    assert_eq!(list.data()[0], var);
    let shown = api.get(&format!("{path}/{id}"), token).await;
    assert_eq!((shown.status, shown.data()), (StatusCode::OK, &var));

    // Only the attributes present change; the version-id changes every time.
    let updated = api
        .patch(
            &format!("{path}/{id}"),
            token,
            json!({"data": {"type": "vars", "id": id, "attributes": {"value": "us-east-2"}}}),
        )
        .await;
    assert_eq!(updated.status, StatusCode::OK, "{}", updated.body);
    let attrs = &updated.data()["attributes"];
    assert_eq!(attrs["value"], "us-east-2");
    assert_eq!(attrs["key"], "region");
    assert_eq!(attrs["description"], "where");
    assert_eq!(attrs["created-at"], var["attributes"]["created-at"]);
    let version2 = attrs["version-id"].as_str().unwrap().to_owned();
    assert_ne!(version2, version);
    let seen = tfc.variable(owner_id, "region", "terraform").unwrap();
    assert_eq!(
        seen,
        VariableInfo {
            id: id.clone(),
            key: "region".into(),
            value: "us-east-2".into(),
            sensitive: false,
            category: "terraform".into(),
            description: Some("where".into()),
            version_id: version2.clone(),
        }
    );
    let empty = api
        .patch(&format!("{path}/{id}"), token, var_body(json!({})))
        .await;
    assert_eq!(empty.status, StatusCode::OK);
    assert_eq!(empty.data()["attributes"]["value"], "us-east-2");
    assert_ne!(empty.data()["attributes"]["version-id"], version2.as_str());
    let renamed = api
        .patch(
            &format!("{path}/{id}"),
            token,
            var_body(json!({"key": "aws_region", "description": null, "hcl": true})),
        )
        .await;
    assert_eq!(renamed.status, StatusCode::OK, "{}", renamed.body);
    assert_eq!(renamed.data()["attributes"]["key"], "aws_region");
    assert_eq!(renamed.data()["attributes"]["description"], Value::Null);
    assert_eq!(renamed.data()["attributes"]["hcl"], true);
    assert!(tfc.variable(owner_id, "region", "terraform").is_none());
    assert!(tfc.variable(owner_id, "aws_region", "env").is_none());
    assert_eq!(
        tfc.variable(owner_id, "aws_region", "terraform")
            .unwrap()
            .id,
        id
    );

    let deleted = api.delete(&format!("{path}/{id}"), token).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert_eq!(deleted.body, Value::Null);
    assert!(tfc.variable(owner_id, "aws_region", "terraform").is_none());
    let list = api.get(&path, token).await;
    assert_eq!(list.data().as_array().unwrap().len(), 1);
    for (method, body) in [
        (Method::GET, None),
        (Method::PATCH, Some(var_body(json!({"value": "x"})))),
        (Method::DELETE, None),
    ] {
        let gone = api
            .call(method.clone(), &format!("{path}/{id}"), Some(token), body)
            .await;
        assert_eq!(gone.status, StatusCode::NOT_FOUND, "{method}");
    }
}

#[tokio::test]
async fn workspace_variables_are_created_listed_updated_and_deleted() {
    let tfc = TfcEmulator::start(unlimited()).await.unwrap();
    let admin = tfc.add_organization("acme");
    let ws = tfc.add_workspace("acme", "prod");
    assert!(ws.starts_with("ws-") && is_alnum(&ws[3..], 16), "{ws}");
    assert_eq!(tfc.add_workspace("acme", "prod"), ws);
    let api = Api::new(&tfc);
    variable_lifecycle(&tfc, &api, &admin, &ws).await;

    let listed = api.get(&vars_path(&ws), &admin).await;
    assert_eq!(
        listed.data()[0]["relationships"]["configurable"]["links"]["related"],
        "/api/v2/organizations/acme/workspaces/prod"
    );
    // The organization token and a team token of the organization may manage variables too.
    let (_, org_token) = tfc.mint(TokenKind::Organization, "acme", None, None);
    let team = tfc.add_team("acme", "deployers");
    let (_, team_token) = tfc.mint(TokenKind::Team, &team, Some("ci"), None);
    for token in [&org_token, &team_token] {
        let resp = api
            .post(
                &vars_path(&ws),
                token,
                var_body(json!({"key": format!("k{}", &token[..4]), "category": "env"})),
            )
            .await;
        assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.body);
    }
    assert_eq!(
        api.get(&vars_path(&ws), &team_token)
            .await
            .data()
            .as_array()
            .unwrap()
            .len(),
        3
    );
}

#[tokio::test]
async fn varset_variables_are_created_listed_updated_and_deleted() {
    let tfc = TfcEmulator::start(unlimited()).await.unwrap();
    let admin = tfc.add_organization("acme");
    let varset = tfc.add_varset("acme", "shared");
    assert!(
        varset.starts_with("varset-") && is_alnum(&varset[7..], 16),
        "{varset}"
    );
    assert_eq!(tfc.add_varset("acme", "shared"), varset);
    let api = Api::new(&tfc);

    let shown = api.get(&format!("varsets/{varset}"), &admin).await;
    assert_eq!(shown.status, StatusCode::OK, "{}", shown.body);
    assert_eq!(shown.data()["id"], varset.as_str());
    assert_eq!(shown.data()["type"], "varsets");
    let attrs = &shown.data()["attributes"];
    assert_eq!(attrs["name"], "shared");
    assert_eq!(attrs["description"], "");
    assert_eq!(attrs["global"], false);
    assert_eq!(attrs["priority"], false);
    assert_eq!(attrs["var-count"], 0);
    assert_eq!(
        shown.data()["relationships"]["parent"]["data"],
        json!({"id": "acme", "type": "organizations"})
    );

    variable_lifecycle(&tfc, &api, &admin, &varset).await;

    let listed = api.get(&vars_path(&varset), &admin).await;
    assert_eq!(
        listed.data()[0]["relationships"]["configurable"]["links"]["related"],
        format!("/api/v2/varsets/{varset}")
    );
    let shown = api.get(&format!("varsets/{varset}"), &admin).await;
    assert_eq!(shown.data()["attributes"]["var-count"], 1);
    assert_eq!(
        shown.data()["relationships"]["vars"]["data"],
        json!([{"id": listed.data()[0]["id"], "type": "vars"}])
    );
    // A variable set's variable is not reachable through a workspace path, nor the other way round.
    let ws = tfc.add_workspace("acme", "prod");
    let var_id = listed.data()[0]["id"].as_str().unwrap();
    assert_eq!(
        api.get(&format!("workspaces/{ws}/vars/{var_id}"), &admin)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.get(&format!("varsets/{ws}"), &admin).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.get(&format!("workspaces/{varset}/vars"), &admin)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn sensitive_variable_values_are_never_returned() {
    let tfc = TfcEmulator::start(unlimited()).await.unwrap();
    let admin = tfc.add_organization("acme");
    let ws = tfc.add_workspace("acme", "prod");
    let varset = tfc.add_varset("acme", "shared");
    let api = Api::new(&tfc);
    let secret = "s3cr3t-value-1";

    for owner in [&ws, &varset] {
        let path = vars_path(owner);
        let created = api
            .post(
                &path,
                &admin,
                var_body(json!({"key": "TFE_TOKEN", "value": secret, "category": "env", "sensitive": true})),
            )
            .await;
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
        assert_eq!(created.data()["attributes"]["value"], Value::Null);
        assert_eq!(created.data()["attributes"]["sensitive"], true);
        let id = created.data()["id"].as_str().unwrap().to_owned();
        let var_path = format!("{path}/{id}");

        let list = api.get(&path, &admin).await;
        assert_eq!(list.data()[0]["attributes"]["value"], Value::Null);
        assert_eq!(
            api.get(&var_path, &admin).await.data()["attributes"]["value"],
            Value::Null
        );
        let seen = tfc.variable(owner, "TFE_TOKEN", "env").unwrap();
        assert_eq!((seen.value.as_str(), seen.sensitive), (secret, true));
        assert!(!format!("{seen:?}").contains(secret));

        // A new value may be written, never read back.
        let updated = api
            .patch(
                &var_path,
                &admin,
                var_body(json!({"value": "s3cr3t-value-2", "sensitive": true, "key": "TFE_TOKEN"})),
            )
            .await;
        assert_eq!(updated.status, StatusCode::OK, "{}", updated.body);
        assert_eq!(updated.data()["attributes"]["value"], Value::Null);
        assert!(!updated.body.to_string().contains("s3cr3t"));
        let seen2 = tfc.variable(owner, "TFE_TOKEN", "env").unwrap();
        assert_eq!(seen2.value, "s3cr3t-value-2");
        assert_ne!(seen2.version_id, seen.version_id);
        assert_eq!(
            updated.data()["attributes"]["version-id"],
            seen2.version_id.as_str()
        );

        // Never back to non-sensitive, and no renaming (terraform-provider-tfe issues #317, #170).
        let unhide = api
            .patch(&var_path, &admin, var_body(json!({"sensitive": false})))
            .await;
        let (status, detail, pointer) = validation_error(&unhide);
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(
            detail.starts_with("Sensitive cannot be changed from true to false"),
            "{detail}"
        );
        assert_eq!(pointer, "/data/attributes/sensitive");
        let rename = api
            .patch(&var_path, &admin, var_body(json!({"key": "OTHER"})))
            .await;
        assert_eq!(
            validation_error(&rename),
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                "Key cannot be updated for a sensitive variable",
                "/data/attributes/key"
            )
        );
        assert_eq!(tfc.variable(owner, "TFE_TOKEN", "env").unwrap(), seen2);

        // Out-of-band edits reach the consumer and change the version, and stay hidden from the API.
        tfc.set_variable_value(owner, "TFE_TOKEN", "env", "s3cr3t-value-3");
        let seen3 = tfc.variable(owner, "TFE_TOKEN", "env").unwrap();
        assert_eq!(seen3.value, "s3cr3t-value-3");
        assert_ne!(seen3.version_id, seen2.version_id);
        let shown = api.get(&var_path, &admin).await;
        assert_eq!(shown.data()["attributes"]["value"], Value::Null);
        assert_eq!(
            shown.data()["attributes"]["version-id"],
            seen3.version_id.as_str()
        );

        // A plain variable made sensitive is hidden from then on.
        let plain = api
            .post(
                &path,
                &admin,
                var_body(json!({"key": "plain", "value": "visible", "category": "terraform"})),
            )
            .await;
        assert_eq!(plain.data()["attributes"]["value"], "visible");
        let plain_path = format!("{path}/{}", plain.data()["id"].as_str().unwrap());
        let hidden = api
            .patch(&plain_path, &admin, var_body(json!({"sensitive": true})))
            .await;
        assert_eq!(hidden.status, StatusCode::OK);
        assert_eq!(hidden.data()["attributes"]["value"], Value::Null);
        let list = api.get(&path, &admin).await;
        assert!(list
            .data()
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["attributes"]["value"].is_null()));
        assert!(
            !list.body.to_string().contains("s3cr3t") && !list.body.to_string().contains("visible")
        );
        assert_eq!(
            tfc.variable(owner, "plain", "terraform").unwrap().value,
            "visible"
        );
    }
}

#[tokio::test]
async fn variable_validation_errors_are_422_with_a_pointer() {
    let tfc = TfcEmulator::start(unlimited()).await.unwrap();
    let admin = tfc.add_organization("acme");
    let ws = tfc.add_workspace("acme", "prod");
    let varset = tfc.add_varset("acme", "shared");
    let api = Api::new(&tfc);
    let taken = (
        StatusCode::UNPROCESSABLE_ENTITY,
        "Key has already been taken",
        "/data/attributes/key",
    );

    for owner in [&ws, &varset] {
        let path = vars_path(owner);
        let first = api
            .post(
                &path,
                &admin,
                var_body(json!({"key": "token", "value": "a", "category": "terraform"})),
            )
            .await;
        assert_eq!(first.status, StatusCode::CREATED);
        // Same key and category: taken, sensitive or not.
        for sensitive in [false, true] {
            let dup = api
                .post(&path, &admin, var_body(json!({"key": "token", "value": "b", "category": "terraform", "sensitive": sensitive})))
                .await;
            assert_eq!(validation_error(&dup), taken);
            assert_eq!(dup.header("content-type"), Some(JSONAPI));
        }
        assert_eq!(
            tfc.variable(owner, "token", "terraform").unwrap().value,
            "a"
        );
        // Same key, other category: fine.
        let env = api
            .post(
                &path,
                &admin,
                var_body(json!({"key": "token", "value": "c", "category": "env"})),
            )
            .await;
        assert_eq!(env.status, StatusCode::CREATED, "{}", env.body);
        // An update may not collide either.
        let env_path = format!("{path}/{}", env.data()["id"].as_str().unwrap());
        let collide = api
            .patch(
                &env_path,
                &admin,
                var_body(json!({"category": "terraform"})),
            )
            .await;
        assert_eq!(validation_error(&collide), taken);
        assert_eq!(tfc.variable(owner, "token", "env").unwrap().value, "c");

        let bad_category = (
            StatusCode::UNPROCESSABLE_ENTITY,
            "Category is not included in the list",
            "/data/attributes/category",
        );
        for attrs in [
            json!({"key": "k", "category": "policy-set"}),
            json!({"key": "k", "category": "TERRAFORM"}),
            json!({"key": "k"}),
        ] {
            let resp = api.post(&path, &admin, var_body(attrs.clone())).await;
            assert_eq!(validation_error(&resp), bad_category, "{attrs}");
        }
        let resp = api
            .patch(&env_path, &admin, var_body(json!({"category": "secret"})))
            .await;
        assert_eq!(validation_error(&resp), bad_category);

        let blank = (
            StatusCode::UNPROCESSABLE_ENTITY,
            "Key can't be blank",
            "/data/attributes/key",
        );
        for attrs in [
            json!({"category": "env"}),
            json!({"key": "", "category": "env"}),
            json!({"key": "  ", "category": "env"}),
        ] {
            let resp = api.post(&path, &admin, var_body(attrs.clone())).await;
            assert_eq!(validation_error(&resp), blank, "{attrs}");
        }
        let resp = api
            .patch(&env_path, &admin, var_body(json!({"key": ""})))
            .await;
        assert_eq!(validation_error(&resp), blank);

        for (body, pointer) in [
            (
                json!({"data": {"type": "variables", "attributes": {"key": "k", "category": "env"}}}),
                "/data/type",
            ),
            (
                json!({"data": {"attributes": {"key": "k", "category": "env"}}}),
                "/data/type",
            ),
            (
                json!({"data": {"type": "vars", "attributes": {"key": 7, "category": "env"}}}),
                "/data/attributes/key",
            ),
            (
                json!({"data": {"type": "vars", "attributes": {"key": "k", "category": "env", "sensitive": "yes"}}}),
                "/data/attributes/sensitive",
            ),
            (json!({"vars": {}}), "/data"),
        ] {
            let resp = api.post(&path, &admin, body.clone()).await;
            let (status, _, got) = validation_error(&resp);
            assert_eq!(
                (status, got),
                (StatusCode::UNPROCESSABLE_ENTITY, pointer),
                "{body}"
            );
        }
        let wrong_id = api
            .patch(
                &env_path,
                &admin,
                json!({"data": {"type": "vars", "id": "var-other", "attributes": {"value": "x"}}}),
            )
            .await;
        assert_eq!(validation_error(&wrong_id).2, "/data/id");
        let not_json = api.call(Method::POST, &path, Some(&admin), None).await;
        assert_eq!(not_json.status, StatusCode::UNPROCESSABLE_ENTITY);
        // Nothing was created or changed by the refusals.
        assert_eq!(
            api.get(&path, &admin)
                .await
                .data()
                .as_array()
                .unwrap()
                .len(),
            2
        );
        assert_eq!(tfc.variable(owner, "token", "env").unwrap().value, "c");
    }
}

#[tokio::test]
async fn variable_endpoints_need_the_content_type_a_token_and_the_same_organization() {
    let tfc = TfcEmulator::start(unlimited()).await.unwrap();
    let admin = tfc.add_organization("acme");
    let other_admin = tfc.add_organization("globex");
    let ws = tfc.add_workspace("acme", "prod");
    let varset = tfc.add_varset("acme", "shared");
    let other_ws = tfc.add_workspace("globex", "prod");
    let api = Api::new(&tfc);
    let body = var_body(json!({"key": "k", "value": "v", "category": "env"}));
    let ws_var = api.post(&vars_path(&ws), &admin, body.clone()).await;
    let ws_var_path = format!(
        "{}/{}",
        vars_path(&ws),
        ws_var.data()["id"].as_str().unwrap()
    );
    let vs_var = api.post(&vars_path(&varset), &admin, body.clone()).await;
    let vs_var_path = format!(
        "{}/{}",
        vars_path(&varset),
        vs_var.data()["id"].as_str().unwrap()
    );

    // 415 on every mutation without the JSON:API media type, before anything else.
    for (method, path) in [
        (Method::POST, vars_path(&ws)),
        (Method::PATCH, ws_var_path.clone()),
        (Method::DELETE, ws_var_path.clone()),
        (Method::POST, vars_path(&varset)),
        (Method::PATCH, vs_var_path.clone()),
        (Method::DELETE, vs_var_path.clone()),
    ] {
        for content_type in [None, Some("application/json")] {
            let mut req = api
                .request(method.clone(), &path, Some(&admin))
                .body(var_body(json!({"key": "x", "category": "env"})).to_string());
            if let Some(ct) = content_type {
                req = req.header(CONTENT_TYPE, ct);
            }
            let resp = send(req).await;
            assert_eq!(
                resp.status,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "{method} {path}"
            );
            assert_eq!(resp.body["errors"][0]["status"], "415");
        }
    }
    assert!(tfc.variable(&ws, "x", "env").is_none());
    assert_eq!(tfc.variable(&ws, "k", "env").unwrap().value, "v");

    // 401 without a usable token, an agent token included.
    let pool = tfc.add_agent_pool("acme", "pool");
    let (_, agent) = tfc.mint(TokenKind::Agent, &pool, Some("agent"), None);
    let (expired_id, expired) = tfc.mint(TokenKind::Organization, "acme", None, None);
    tfc.set_expired_at(&expired_id, wall_clock() - TimeDelta::seconds(1));
    let paths = [
        vars_path(&ws),
        ws_var_path.clone(),
        format!("varsets/{varset}"),
        vars_path(&varset),
        vs_var_path.clone(),
    ];
    for path in &paths {
        for token in [
            None,
            Some("abcdefghijklmn.atlasv1.nope"),
            Some(agent.as_str()),
            Some(expired.as_str()),
        ] {
            let resp = api.call(Method::GET, path, token, None).await;
            assert_eq!(resp.status, StatusCode::UNAUTHORIZED, "{path}");
            assert_eq!(
                resp.body,
                json!({"errors": [{"status": "401", "title": "unauthorized"}]})
            );
        }
    }
    let anonymous = api
        .call(Method::POST, &vars_path(&ws), None, Some(body.clone()))
        .await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);

    // 404 for another organization's tokens, the audit-trails token, and unknown ids.
    let (_, audit) = tfc.mint(TokenKind::AuditTrails, "acme", None, None);
    for token in [&other_admin, &audit] {
        for path in &paths {
            let resp = api.get(path, token).await;
            assert_eq!(resp.status, StatusCode::NOT_FOUND, "{path}");
            assert_eq!(resp.body["errors"][0]["status"], "404");
        }
        for (method, path) in [
            (Method::POST, vars_path(&ws)),
            (Method::PATCH, ws_var_path.clone()),
            (Method::DELETE, ws_var_path.clone()),
            (Method::POST, vars_path(&varset)),
            (Method::PATCH, vs_var_path.clone()),
            (Method::DELETE, vs_var_path.clone()),
        ] {
            let resp = api
                .call(
                    method.clone(),
                    &path,
                    Some(token),
                    Some(var_body(
                        json!({"value": "stolen", "key": "k2", "category": "env"}),
                    )),
                )
                .await;
            assert_eq!(resp.status, StatusCode::NOT_FOUND, "{method} {path}");
        }
    }
    assert_eq!(tfc.variable(&ws, "k", "env").unwrap().value, "v");
    assert_eq!(tfc.variable(&varset, "k", "env").unwrap().value, "v");
    assert!(tfc.variable(&ws, "k2", "env").is_none());
    // acme's owner cannot reach globex's workspace either.
    let cross = api.post(&vars_path(&other_ws), &admin, body.clone()).await;
    assert_eq!(cross.status, StatusCode::NOT_FOUND);
    assert_eq!(
        api.get(&vars_path(&other_ws), &other_admin).await.status,
        StatusCode::OK
    );
    for path in [
        "workspaces/ws-unknown0000000000/vars".to_owned(),
        format!("{}/var-unknown000000000", vars_path(&ws)),
        "varsets/varset-unknown0000000000".to_owned(),
        format!("{}/var-unknown000000000", vars_path(&varset)),
    ] {
        assert_eq!(
            api.get(&path, &admin).await.status,
            StatusCode::NOT_FOUND,
            "{path}"
        );
    }
    // Methods the API does not have are 404.
    assert_eq!(
        api.call(Method::PUT, &ws_var_path, Some(&admin), Some(body.clone()))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.call(Method::DELETE, &vars_path(&ws), Some(&admin), None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.call(
            Method::PATCH,
            &format!("varsets/{varset}"),
            Some(&admin),
            Some(body)
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
}
