//! Strict behaviours of the Pulumi Cloud emulator, driven over HTTP like a real client would
//! (reference: shared/reference/token-apis.md Part B).

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use token_rotator_emulators::pulumi::{
    Config, PulumiEmulator, PulumiHandle, TokenKind, TokenState,
};

const ACCEPT: &str = "application/vnd.pulumi+8";
const DAY: i64 = 86_400;

struct Api {
    emu: PulumiHandle,
    http: reqwest::Client,
    /// Personal token of `alice`, admin of `acme`.
    admin: String,
}

struct Reply {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    text: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }
}

async fn setup() -> Api {
    setup_with(Config::default()).await
}

async fn setup_with(cfg: Config) -> Api {
    let emu = PulumiEmulator::start(cfg).await.unwrap();
    let admin = emu.add_user("alice");
    emu.add_organization("acme", "alice");
    emu.add_team("acme", "ops");
    emu.add_team("acme", "dev");
    Api {
        emu,
        http: reqwest::Client::new(),
        admin,
    }
}

impl Api {
    async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.emu.url()))
            .header("Accept", ACCEPT);
        if let Some(t) = token {
            req = req.header("Authorization", format!("token {t}"));
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let (status, headers) = (resp.status(), resp.headers().clone());
        Reply {
            status,
            headers,
            text: resp.text().await.unwrap(),
        }
    }

    async fn get(&self, path: &str, token: &str) -> Reply {
        self.send(Method::GET, path, Some(token), None).await
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> Reply {
        self.send(Method::POST, path, Some(token), Some(body)).await
    }

    async fn delete(&self, path: &str, token: &str) -> Reply {
        self.send(Method::DELETE, path, Some(token), None).await
    }

    fn in_days(&self, days: i64) -> i64 {
        self.emu.now().timestamp() + days * DAY
    }

    /// Creates an org token with the admin's personal token; returns (id, value).
    async fn org_token(&self, name: &str, admin: bool) -> (String, String) {
        let r = self
            .post(
                "/api/orgs/acme/tokens",
                &self.admin,
                json!({"name": name, "description": "d", "admin": admin, "expires": self.in_days(30)}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        let v = r.json();
        (
            v["id"].as_str().unwrap().to_string(),
            v["tokenValue"].as_str().unwrap().to_string(),
        )
    }

    async fn team_token(&self, team: &str, name: &str) -> (String, String) {
        let r = self
            .post(
                &format!("/api/orgs/acme/teams/{team}/tokens"),
                &self.admin,
                json!({"name": name, "description": "d", "expires": self.in_days(30)}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        let v = r.json();
        (
            v["id"].as_str().unwrap().to_string(),
            v["tokenValue"].as_str().unwrap().to_string(),
        )
    }
}

fn assert_error(r: &Reply, status: u16, message: &str) {
    assert_eq!(r.status.as_u16(), status, "{}", r.text);
    assert_eq!(r.json(), json!({"code": status, "message": message}));
}

fn ids(list: &Value) -> Vec<String> {
    list["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn create_returns_the_value_once_and_the_list_never_does() {
    let api = setup().await;
    let (id, value) = api.org_token("ci-1", false).await;
    assert!(value.starts_with("pul-") && value.len() == 44, "{value}");
    assert!(value[4..].chars().all(|c| c.is_ascii_hexdigit()));
    assert!(api.emu.is_valid(&value));
    assert_eq!(api.emu.token_id_of(&value).as_deref(), Some(id.as_str()));

    let r = api.get("/api/orgs/acme/tokens", &api.admin).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        !r.text.contains(&value) && !r.text.contains("tokenValue"),
        "{}",
        r.text
    );
    let item = &r.json()["tokens"][0];
    assert_eq!(item["id"], json!(id));
    assert_eq!(item["name"], "ci-1");
    assert_eq!(item["type"], "organization");
    assert_eq!(item["createdBy"], "alice");
    assert_eq!(item["admin"], false);
    assert_eq!(item["lastUsed"], 0);
    assert!(item["expires"].as_i64().unwrap() > 0);
    assert!(chrono::DateTime::parse_from_rfc3339(item["created"].as_str().unwrap()).is_ok());

    let info = api
        .emu
        .all_tokens()
        .into_iter()
        .find(|t| t.id == id)
        .unwrap();
    assert_eq!(
        (info.kind, info.state, info.org.as_deref()),
        (TokenKind::Organization, TokenState::Active, Some("acme"))
    );
}

#[tokio::test]
async fn names_are_at_most_40_characters() {
    let api = setup().await;
    let forty = "n".repeat(40);
    api.org_token(&forty, false).await;
    let body = json!({"name": "n".repeat(41), "description": "", "admin": false, "expires": 0});
    let r = api
        .post("/api/orgs/acme/tokens", &api.admin, body.clone())
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert_eq!(r.json()["code"], 400);
    let r = api
        .post("/api/orgs/acme/teams/ops/tokens", &api.admin, body)
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = api
        .post(
            "/api/orgs/acme/tokens",
            &api.admin,
            json!({"description": "no name", "expires": 0}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn names_are_reserved_forever_across_org_and_team_tokens() {
    let api = setup().await;
    let (id, _) = api.org_token("shared-name", false).await;
    let conflict = "Conflict: token name already exists";
    let body = json!({"name": "shared-name", "description": "", "admin": false, "expires": 0});
    assert_error(
        &api.post("/api/orgs/acme/tokens", &api.admin, body.clone())
            .await,
        409,
        conflict,
    );
    assert_error(
        &api.post("/api/orgs/acme/teams/ops/tokens", &api.admin, body.clone())
            .await,
        409,
        conflict,
    );

    let r = api
        .delete(&format!("/api/orgs/acme/tokens/{id}"), &api.admin)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert!(r.text.is_empty());
    assert_error(
        &api.post("/api/orgs/acme/tokens", &api.admin, body.clone())
            .await,
        409,
        conflict,
    );

    // A team token's name is reserved for org tokens too; another org has its own namespace.
    api.team_token("dev", "team-name").await;
    let body = json!({"name": "team-name", "description": "", "admin": false, "expires": 0});
    assert_error(
        &api.post("/api/orgs/acme/tokens", &api.admin, body).await,
        409,
        conflict,
    );
    api.emu.add_organization("other", "alice");
    let body = json!({"name": "shared-name", "description": "", "admin": false, "expires": 0});
    assert_eq!(
        api.post("/api/orgs/other/tokens", &api.admin, body)
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn expires_is_unix_seconds_within_two_years() {
    let api = setup().await;
    let create = |name: &str, expires: i64| {
        api.post(
            "/api/orgs/acme/tokens",
            &api.admin,
            json!({"name": name, "description": "", "admin": false, "expires": expires}),
        )
    };
    let now = api.emu.now().timestamp();
    assert_eq!(
        create("past", now - 10).await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        create("three-years", now + 3 * 365 * DAY).await.status,
        StatusCode::BAD_REQUEST
    );
    // Milliseconds instead of seconds is a classic client bug: it lands far beyond two years.
    assert_eq!(
        create("millis", (now + DAY) * 1000).await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(create("negative", -1).await.status, StatusCode::BAD_REQUEST);
    let r = api
        .post(
            "/api/orgs/acme/tokens",
            &api.admin,
            json!({"name": "str", "admin": false, "expires": "soon"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // Rejected names are not reserved.
    assert_eq!(create("past", now + 729 * DAY).await.status, StatusCode::OK);
    assert_eq!(create("never", 0).await.status, StatusCode::OK);
    let never = api
        .emu
        .valid_tokens()
        .into_iter()
        .find(|t| t.name == "never")
        .unwrap();
    assert_eq!(never.expires, 0);
    // Team and personal tokens follow the same rule.
    let r = api
        .post(
            "/api/orgs/acme/teams/ops/tokens",
            &api.admin,
            json!({"name": "t", "expires": now + 800 * DAY}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = api
        .post(
            "/api/user/tokens",
            &api.admin,
            json!({"description": "p", "expires": now + 800 * DAY}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn tokens_not_currently_valid_get_401() {
    let api = setup().await;
    let unauthorized = "Unauthorized: No credentials provided or are invalid.";
    assert_error(
        &api.send(Method::GET, "/api/user", None, None).await,
        401,
        unauthorized,
    );
    assert_error(
        &api.get("/api/user", "pul-0000000000000000000000000000000000000000")
            .await,
        401,
        unauthorized,
    );

    // `Bearer` is not the Pulumi scheme (reference B.0).
    let r = api
        .http
        .get(format!("{}/api/user", api.emu.url()))
        .header("Accept", ACCEPT)
        .header("Authorization", format!("Bearer {}", api.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // Deleted through the API.
    let (id, value) = api.org_token("gone", false).await;
    assert_eq!(api.get("/api/user", &value).await.status, StatusCode::OK);
    api.delete(&format!("/api/orgs/acme/tokens/{id}"), &api.admin)
        .await;
    assert_error(&api.get("/api/user", &value).await, 401, unauthorized);
    assert!(!api.emu.is_valid(&value));

    // Revoked out of band.
    let (id, value) = api.org_token("revoked", false).await;
    api.emu.revoke(&id);
    assert_eq!(
        api.get("/api/user", &value).await.status,
        StatusCode::UNAUTHORIZED
    );

    // Expired: valid until `expires`, 401 from then on.
    let (_, value) = api.org_token("expiring", false).await; // 30 days
    api.emu.advance_clock(Duration::from_secs(29 * DAY as u64));
    assert_eq!(api.get("/api/user", &value).await.status, StatusCode::OK);
    api.emu.advance_clock(Duration::from_secs(DAY as u64));
    assert_eq!(
        api.get("/api/user", &value).await.status,
        StatusCode::UNAUTHORIZED
    );
    let info = api
        .emu
        .all_tokens()
        .into_iter()
        .find(|t| t.name == "expiring")
        .unwrap();
    assert_eq!(info.state, TokenState::Expired);
    assert!(api.emu.valid_tokens().iter().all(|t| t.name != "expiring"));
}

#[tokio::test]
async fn every_authenticated_call_updates_last_used() {
    let api = setup().await;
    let (id, value) = api.org_token("used", true).await;
    let last_used = |api: &Api| {
        api.emu
            .all_tokens()
            .into_iter()
            .find(|t| t.id == id)
            .unwrap()
            .last_used
    };
    assert_eq!(last_used(&api), 0);
    api.get("/api/user", &value).await;
    let first = last_used(&api);
    assert!(first > 0);
    api.emu.advance_clock(Duration::from_secs(60));
    // Even a forbidden call is authenticated, so it counts.
    let r = api
        .post(
            "/api/orgs/acme/tokens",
            &value,
            json!({"name": "x", "admin": false, "expires": 0}),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(last_used(&api), first + 60);
    let list = api.get("/api/orgs/acme/tokens", &api.admin).await.json();
    let item = list["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == json!(id))
        .unwrap()
        .clone();
    assert_eq!(item["lastUsed"], json!(first + 60));
}

#[tokio::test]
async fn get_user_identifies_personal_and_machine_tokens() {
    let api = setup().await;
    let me = api.get("/api/user", &api.admin).await.json();
    assert_eq!(me["githubLogin"], "alice");
    assert!(me.get("tokenInfo").is_none(), "{me}");
    assert_eq!(
        me["organizations"],
        json!([{"name": "acme", "githubLogin": "acme", "avatarUrl": "", "role": "admin"}])
    );

    let (_, org_value) = api.org_token("org-probe", false).await;
    let me = api.get("/api/user", &org_value).await.json();
    assert_eq!(
        me["tokenInfo"],
        json!({"name": "org-probe", "organization": "acme", "team": ""})
    );

    let (_, team_value) = api.team_token("ops", "team-probe").await;
    let me = api.get("/api/user", &team_value).await.json();
    assert_eq!(
        me["tokenInfo"],
        json!({"name": "team-probe", "organization": "acme", "team": "ops"})
    );
}

#[tokio::test]
async fn team_token_delete_rejects_ids_that_are_not_team_tokens() {
    let api = setup().await;
    let (org_id, _) = api.org_token("an-org-token", false).await;
    let r = api
        .delete(
            &format!("/api/orgs/acme/teams/ops/tokens/{org_id}"),
            &api.admin,
        )
        .await;
    assert_error(&r, 400, "the requested token is not a team token");
    let personal = api.emu.token_id_of(&api.admin).unwrap();
    let r = api
        .delete(
            &format!("/api/orgs/acme/teams/ops/tokens/{personal}"),
            &api.admin,
        )
        .await;
    assert_error(&r, 400, "the requested token is not a team token");

    let (team_id, team_value) = api.team_token("ops", "a-team-token").await;
    // Another team's path, or the org endpoint, does not find it.
    assert_eq!(
        api.delete(
            &format!("/api/orgs/acme/teams/dev/tokens/{team_id}"),
            &api.admin
        )
        .await
        .status,
        404
    );
    assert_eq!(
        api.delete(&format!("/api/orgs/acme/tokens/{team_id}"), &api.admin)
            .await
            .status,
        404
    );
    let r = api
        .delete(
            &format!("/api/orgs/acme/teams/ops/tokens/{team_id}"),
            &api.admin,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert!(!api.emu.is_valid(&team_value));
    let r = api
        .delete(
            &format!("/api/orgs/acme/teams/ops/tokens/{team_id}"),
            &api.admin,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.json()["code"], 404);
    let r = api
        .delete("/api/orgs/acme/teams/ops/tokens/no-such-id", &api.admin)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = api
        .delete("/api/orgs/acme/tokens/no-such-id", &api.admin)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn machine_tokens_cannot_create_or_delete_org_tokens() {
    let api = setup().await;
    let (victim, _) = api.org_token("victim", false).await;
    let (_, admin_org) = api.org_token("admin-org", true).await;
    let (_, member_org) = api.org_token("member-org", false).await;
    let (team_victim, _) = api.team_token("ops", "team-victim").await;
    let (_, team) = api.team_token("ops", "team-caller").await;
    let forbidden = "You do not have permission to perform this operation.";
    let body = json!({"name": "by-machine", "description": "", "admin": false, "expires": 0});

    for machine in [&admin_org, &member_org, &team] {
        assert_error(
            &api.post("/api/orgs/acme/tokens", machine, body.clone())
                .await,
            403,
            forbidden,
        );
        assert_error(
            &api.delete(&format!("/api/orgs/acme/tokens/{victim}"), machine)
                .await,
            403,
            forbidden,
        );
        // Machine tokens have no personal tokens to manage.
        assert_eq!(
            api.post(
                "/api/user/tokens",
                machine,
                json!({"description": "", "expires": 0})
            )
            .await
            .status,
            403
        );
        assert_eq!(api.get("/api/user/tokens", machine).await.status, 403);
    }
    // Only the admin org token may list org tokens and manage team tokens.
    assert_eq!(
        api.get("/api/orgs/acme/tokens", &admin_org).await.status,
        StatusCode::OK
    );
    assert_eq!(
        api.get("/api/orgs/acme/tokens", &member_org).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        api.get("/api/orgs/acme/tokens", &team).await.status,
        StatusCode::FORBIDDEN
    );
    let r = api
        .post(
            "/api/orgs/acme/teams/dev/tokens",
            &admin_org,
            json!({"name": "by-admin-org", "expires": 0}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let created = api
        .emu
        .valid_tokens()
        .into_iter()
        .find(|t| t.name == "by-admin-org")
        .unwrap();
    assert_eq!(
        (created.kind, created.created_by.as_str()),
        (TokenKind::Team, "acme")
    );
    assert_eq!(
        api.get("/api/orgs/acme/teams/dev/tokens", &admin_org)
            .await
            .status,
        StatusCode::OK
    );
    let r = api
        .delete(
            &format!("/api/orgs/acme/teams/ops/tokens/{team_victim}"),
            &member_org,
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = api
        .delete(
            &format!("/api/orgs/acme/teams/ops/tokens/{team_victim}"),
            &team,
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = api
        .delete(
            &format!("/api/orgs/acme/teams/ops/tokens/{team_victim}"),
            &admin_org,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    // Nothing above deleted the org token.
    assert!(api.emu.valid_tokens().iter().any(|t| t.id == victim));
}

#[tokio::test]
async fn only_org_admins_personal_tokens_manage_org_tokens() {
    let api = setup().await;
    let bob = api.emu.add_user("bob");
    api.emu.add_member("acme", "bob");
    let carol = api.emu.add_user("carol"); // not a member
    let body = json!({"name": "x", "description": "", "admin": false, "expires": 0});
    assert_eq!(
        api.post("/api/orgs/acme/tokens", &bob, body.clone())
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        api.get("/api/orgs/acme/tokens", &bob).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        api.post("/api/orgs/acme/teams/ops/tokens", &bob, body.clone())
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        api.post("/api/orgs/acme/tokens", &carol, body.clone())
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        api.post("/api/orgs/nope/tokens", &api.admin, body.clone())
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.post("/api/orgs/acme/teams/nope/tokens", &api.admin, body)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let me = api.get("/api/user", &bob).await.json();
    assert_eq!(me["organizations"][0]["role"], "member");
}

#[tokio::test]
async fn personal_tokens_belong_to_the_calling_user() {
    let api = setup().await;
    let bob = api.emu.add_user("bob");
    let r = api
        .post(
            "/api/user/tokens",
            &api.admin,
            json!({"description": "rotated", "expires": api.in_days(30)}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let created = r.json();
    let (id, value) = (
        created["id"].as_str().unwrap().to_string(),
        created["tokenValue"].as_str().unwrap(),
    );
    assert!(value.starts_with("pul-"));

    let mine = api.get("/api/user/tokens", &api.admin).await;
    assert!(!mine.text.contains(value));
    let mine = mine.json();
    assert_eq!(ids(&mine).len(), 2, "bootstrap token and the new one");
    let item = mine["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == json!(id))
        .unwrap()
        .clone();
    assert_eq!(
        (item["type"].clone(), item["description"].clone()),
        (json!("personal"), json!("rotated"))
    );
    assert!(!ids(&api.get("/api/user/tokens", &bob).await.json()).contains(&id));

    // Bob cannot delete Alice's token; Alice can.
    assert_eq!(
        api.delete(&format!("/api/user/tokens/{id}"), &bob)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.delete(&format!("/api/user/tokens/{id}"), &api.admin)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        api.delete(&format!("/api/user/tokens/{id}"), &api.admin)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert!(!api.emu.is_valid(value));
}

#[tokio::test]
async fn lists_page_with_continuation_token_and_filter() {
    let api = setup().await;
    let mut created = Vec::new();
    for i in 0..5 {
        created.push(api.org_token(&format!("page-{i}"), false).await.0);
    }
    let mut seen = Vec::new();
    let mut path = "/api/orgs/acme/tokens?maxResults=2".to_string();
    let mut pages = 0;
    loop {
        let page = api.get(&path, &api.admin).await.json();
        pages += 1;
        seen.extend(ids(&page));
        match page["continuationToken"].as_str() {
            Some(ct) => path = format!("/api/orgs/acme/tokens?maxResults=2&continuationToken={ct}"),
            None => {
                assert!(page["continuationToken"].is_null());
                break;
            }
        }
    }
    assert_eq!((pages, &seen), (3, &created));

    let invalid = "Invalid continuationToken or maxResults value.";
    for q in [
        "maxResults=0",
        "maxResults=1001",
        "maxResults=ten",
        "continuationToken=garbage",
    ] {
        assert_error(
            &api.get(&format!("/api/orgs/acme/tokens?{q}"), &api.admin)
                .await,
            400,
            invalid,
        );
    }
    assert_eq!(
        api.get("/api/orgs/acme/tokens?maxResults=1000", &api.admin)
            .await
            .status,
        StatusCode::OK
    );

    // Default filter is active; deleted tokens never come back.
    let short = api
        .post(
            "/api/orgs/acme/tokens",
            &api.admin,
            json!({"name": "short", "admin": false, "expires": api.in_days(1)}),
        )
        .await
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    api.delete(&format!("/api/orgs/acme/tokens/{}", created[0]), &api.admin)
        .await;
    api.emu.advance_clock(Duration::from_secs(2 * DAY as u64));
    let active = ids(&api.get("/api/orgs/acme/tokens", &api.admin).await.json());
    assert_eq!(active, created[1..].to_vec());
    let expired = ids(&api
        .get("/api/orgs/acme/tokens?filter=expired", &api.admin)
        .await
        .json());
    assert_eq!(expired, vec![short.clone()]);
    let all = ids(&api
        .get("/api/orgs/acme/tokens?filter=all", &api.admin)
        .await
        .json());
    assert_eq!(all.len(), 5);
    assert!(all.contains(&short) && !all.contains(&created[0]));
    assert_eq!(
        api.get("/api/orgs/acme/tokens?filter=bogus", &api.admin)
            .await
            .status,
        StatusCode::BAD_REQUEST
    );

    // Team lists only show that team's tokens.
    let (ops_id, _) = api.team_token("ops", "ops-1").await;
    api.team_token("dev", "dev-1").await;
    assert_eq!(
        ids(&api
            .get("/api/orgs/acme/teams/ops/tokens", &api.admin)
            .await
            .json()),
        vec![ops_id]
    );
}

#[tokio::test]
async fn wire_headers_are_enforced_and_recorded() {
    let api = setup().await;
    // No Accept: refused, and the log says so.
    let r = api
        .http
        .get(format!("{}/api/user", api.emu.url()))
        .header("Authorization", format!("token {}", api.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_ACCEPTABLE);
    let log = api.emu.request_log();
    let last = log.last().unwrap();
    assert!(!last.accept_is_pulumi(), "{last:?}");

    // The provider's +9 is accepted too.
    let r = api
        .http
        .get(format!("{}/api/user", api.emu.url()))
        .header("Accept", "application/vnd.pulumi+9")
        .header("Authorization", format!("token {}", api.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // POST without Content-Type: application/json is 415; malformed JSON is 400.
    let r = api
        .http
        .post(format!("{}/api/orgs/acme/tokens", api.emu.url()))
        .header("Accept", ACCEPT)
        .header("Authorization", format!("token {}", api.admin))
        .body(r#"{"name":"x","admin":false,"expires":0}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], 415);
    let r = api
        .http
        .post(format!("{}/api/orgs/acme/tokens", api.emu.url()))
        .header("Accept", ACCEPT)
        .header("Content-Type", "application/json")
        .header("Authorization", format!("token {}", api.admin))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    let (_, value) = api.org_token("logged", false).await;
    api.get("/api/user", &value).await;
    let log = api.emu.request_log();
    let last = log.last().unwrap();
    assert_eq!(
        (last.method.as_str(), last.path.as_str(), last.status),
        ("GET", "/api/user", 200)
    );
    assert!(last.accept_is_pulumi());
    assert_eq!(last.auth_scheme.as_deref(), Some("token"));
    assert_eq!(last.token_id, api.emu.token_id_of(&value));
    assert!(!format!("{log:?}").contains(&value) && !format!("{log:?}").contains(&api.admin));

    // Relaxed mode for clients that are not under test.
    api.emu.set_require_accept(false);
    let r = api
        .http
        .get(format!("{}/api/user", api.emu.url()))
        .header("Authorization", format!("token {value}"));
    assert_eq!(r.send().await.unwrap().status(), StatusCode::OK);
}

#[tokio::test]
async fn unknown_paths_get_a_plain_text_404() {
    let api = setup().await;
    let r = api
        .get("/api/orgs/acme/tokens/some-id/extra", &api.admin)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.text, "404 page not found\n");
    assert_eq!(
        api.get("/api/orgs/acme/tokens/some-id", &api.admin)
            .await
            .status,
        StatusCode::METHOD_NOT_ALLOWED
    );
}

#[tokio::test]
async fn injected_failures_throttling_and_rate_limit() {
    let api = setup().await;
    api.emu.fail_next(2, 503);
    assert_error(
        &api.get("/api/user", &api.admin).await,
        503,
        "Service Unavailable",
    );
    assert_eq!(
        api.get("/api/user", &api.admin).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        api.get("/api/user", &api.admin).await.status,
        StatusCode::OK
    );

    api.emu.throttle_for(Duration::from_millis(300), Some(7));
    let r = api.get("/api/user", &api.admin).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers.get("retry-after").unwrap(), "7");
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(
        api.get("/api/user", &api.admin).await.status,
        StatusCode::OK
    );
    api.emu.throttle_for(Duration::from_millis(200), None);
    let r = api.get("/api/user", &api.admin).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers.get("retry-after").is_none());

    let limited = setup_with(Config {
        rate_limit_per_second: Some(3),
    })
    .await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(
            limited
                .get("/api/user", &limited.admin)
                .await
                .status
                .as_u16(),
        );
    }
    assert_eq!(&statuses[..3], &[200, 200, 200]);
    assert!(statuses[3..].iter().all(|&s| s == 429), "{statuses:?}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        limited.get("/api/user", &limited.admin).await.status,
        StatusCode::OK
    );
}

const POLICY_403: &str = "The `acme` organization enforces a max access token expiry of `7` days that your current token does not meet. Please generate a new token with a TTL meeting your org's threshold to perform this request.";
const POLICY_400: &str = "Bad Request: the token's expiry exceeds the `acme` organization's maximum access token expiry of `7` days; set `expires` to at most 7 days from now";

impl Api {
    /// A personal token of the calling user expiring in `days` (0 = never); returns (id, value).
    async fn personal_token(&self, token: &str, days: i64) -> (String, String) {
        let expires = if days == 0 { 0 } else { self.in_days(days) };
        let r = self
            .post(
                "/api/user/tokens",
                token,
                json!({"description": "p", "expires": expires}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        let v = r.json();
        (
            v["id"].as_str().unwrap().to_string(),
            v["tokenValue"].as_str().unwrap().to_string(),
        )
    }
}

#[tokio::test]
async fn expiry_policy_refuses_org_and_team_tokens_beyond_the_cap() {
    let api = setup().await;
    api.emu.set_expiry_policy("acme", Some(7));
    // The admin's bootstrap token never expires, so it no longer works against acme; a 5-day one does.
    let (_, admin) = api.personal_token(&api.admin, 5).await;

    for (path, expires) in [
        ("/api/orgs/acme/tokens", api.in_days(30)),
        ("/api/orgs/acme/tokens", 0),
        ("/api/orgs/acme/teams/ops/tokens", api.in_days(8)),
        ("/api/orgs/acme/teams/ops/tokens", 0),
    ] {
        let r = api
            .post(
                path,
                &admin,
                json!({"name": "ci", "description": "d", "admin": false, "expires": expires}),
            )
            .await;
        assert_error(&r, 400, POLICY_400);
    }
    // Nothing was created, and the name is still free.
    assert!(api.emu.all_tokens().iter().all(|t| t.name != "ci"));
    let list = api.get("/api/orgs/acme/tokens?filter=all", &admin).await;
    assert!(ids(&list.json()).is_empty(), "{}", list.text);
    let ok = api
        .post(
            "/api/orgs/acme/tokens",
            &admin,
            json!({"name": "ci", "admin": false, "expires": api.in_days(7)}),
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
    let value = ok.json()["tokenValue"].as_str().unwrap().to_string();
    assert!(api.emu.is_usable_in(&value, "acme"));
    let team = api
        .post(
            "/api/orgs/acme/teams/ops/tokens",
            &admin,
            json!({"name": "ci-team", "expires": api.in_days(3)}),
        )
        .await;
    assert_eq!(team.status, StatusCode::OK, "{}", team.text);
    // Expiries are kept as asked: the policy refuses, it never caps.
    let listed = api.get("/api/orgs/acme/tokens", &admin).await.json();
    assert_eq!(listed["tokens"][0]["expires"], api.in_days(7));

    // Personal tokens are created whatever their expiry (the policy applies where they are used).
    api.personal_token(&api.admin, 0).await;
    api.personal_token(&api.admin, 700).await;
}

#[tokio::test]
async fn personal_tokens_out_of_policy_get_403_on_org_routes_only() {
    let api = setup().await;
    api.emu.set_expiry_policy("acme", Some(7));
    let (_, long) = api.personal_token(&api.admin, 30).await;
    for token in [&api.admin, &long] {
        for path in [
            "/api/orgs/acme/tokens",
            "/api/orgs/acme/teams/ops/tokens",
            "/api/orgs/acme/metadata",
        ] {
            assert_error(&api.get(path, token).await, 403, POLICY_403);
        }
        assert!(!api.emu.is_usable_in(token, "acme"));
        assert!(api.emu.is_valid(token));
        // Not an organization resource: the identity probe and the user's own tokens still answer.
        let me = api.get("/api/user", token).await;
        assert_eq!(me.status, StatusCode::OK, "{}", me.text);
        assert_eq!(me.json()["githubLogin"], "alice");
        assert_eq!(
            api.get("/api/user/tokens", token).await.status,
            StatusCode::OK
        );
    }
    // Another organization without a policy is unaffected.
    api.emu.add_organization("globex", "alice");
    assert_eq!(
        api.get("/api/orgs/globex/tokens", &api.admin).await.status,
        StatusCode::OK
    );
    // Lifting the policy lets them back in.
    api.emu.set_expiry_policy("acme", None);
    assert_eq!(
        api.get("/api/orgs/acme/tokens", &long).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn existing_tokens_are_judged_on_every_request() {
    let api = setup().await;
    // Created before the policy: an admin org token and a personal token for 30 days, a compliant one for 5.
    let (_, org_token) = api.org_token("ci-admin", true).await;
    let (_, thirty) = api.personal_token(&api.admin, 30).await;
    let (_, five) = api.personal_token(&api.admin, 5).await;
    api.emu.set_expiry_policy("acme", Some(7));

    assert_error(
        &api.get("/api/orgs/acme/teams/ops/tokens", &org_token).await,
        403,
        POLICY_403,
    );
    assert_error(
        &api.get("/api/orgs/acme/tokens", &thirty).await,
        403,
        POLICY_403,
    );
    assert_eq!(
        api.get("/api/orgs/acme/tokens", &five).await.status,
        StatusCode::OK
    );
    // The machine token still identifies itself on /api/user.
    assert_eq!(
        api.get("/api/user", &org_token).await.status,
        StatusCode::OK
    );

    // 25 days later they have 5 days left. The service's rule since September 2026 judges the total lifetime
    // (created → expires, 30 days): still refused.
    api.emu.advance_clock(Duration::from_secs(25 * DAY as u64));
    assert_error(
        &api.get("/api/orgs/acme/tokens", &thirty).await,
        403,
        POLICY_403,
    );
    assert_error(
        &api.get("/api/orgs/acme/teams/ops/tokens", &org_token).await,
        403,
        POLICY_403,
    );
    // Under the rule as first shipped (remaining lifetime), old long-expiry tokens age into compliance.
    api.emu.set_expiry_compliance(
        token_rotator_emulators::pulumi::ExpiryCompliance::RemainingLifetime,
    );
    assert_eq!(
        api.get("/api/orgs/acme/tokens", &thirty).await.status,
        StatusCode::OK
    );
    assert_eq!(
        api.get("/api/orgs/acme/teams/ops/tokens", &org_token)
            .await
            .status,
        StatusCode::OK
    );
    // A never-expiring token violates any policy under either rule.
    assert_error(
        &api.get("/api/orgs/acme/tokens", &api.admin).await,
        403,
        POLICY_403,
    );
}

#[tokio::test]
async fn expiry_policy_is_read_and_set_through_org_settings_and_exemptions_apply() {
    let api = setup().await;
    let (_, admin) = api.personal_token(&api.admin, 5).await;
    let meta = api.get("/api/orgs/acme/metadata", &admin).await;
    assert_eq!(meta.status, StatusCode::OK, "{}", meta.text);
    assert_eq!(meta.json()["maxAccessTokenExpiryDays"], Value::Null);
    assert_eq!(meta.json()["userRole"], "admin");

    let set = |days: Value| json!({"setMaxAccessTokenExpiryDays": days});
    let r = api
        .send(
            Method::PATCH,
            "/api/orgs/acme",
            Some(&admin),
            Some(set(json!(7))),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json()["maxAccessTokenExpiryDays"], 7);
    assert_eq!(
        api.get("/api/orgs/acme/metadata", &admin).await.json()["maxAccessTokenExpiryDays"],
        7
    );
    for bad in [json!(3651), json!(-1), json!(1.5), json!("7")] {
        let r = api
            .send(
                Method::PATCH,
                "/api/orgs/acme",
                Some(&admin),
                Some(set(bad.clone())),
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.text);
    }
    // Bob, a member who is not an admin, has only a never-expiring token: refused; exempt, he may read the policy
    // but not set it.
    let bob = api.emu.add_user("bob");
    api.emu.add_member("acme", "bob");
    let bob_id = api.emu.token_id_of(&bob).unwrap();
    assert_error(
        &api.get("/api/orgs/acme/metadata", &bob).await,
        403,
        POLICY_403,
    );

    // Exempt tokens pass whatever their expiry.
    api.emu.set_expiry_policy_exempt(&bob_id, true);
    let meta = api.get("/api/orgs/acme/metadata", &bob).await;
    assert_eq!(meta.status, StatusCode::OK, "{}", meta.text);
    assert_eq!(meta.json()["userRole"], "member");
    assert_eq!(
        api.send(
            Method::PATCH,
            "/api/orgs/acme",
            Some(&bob),
            Some(set(json!(0)))
        )
        .await
        .status,
        StatusCode::FORBIDDEN
    );
    api.emu.set_expiry_policy_exempt(&bob_id, false);
    assert_error(
        &api.get("/api/orgs/acme/metadata", &bob).await,
        403,
        POLICY_403,
    );

    // 0 clears the policy; the never-expiring bootstrap token works again.
    let r = api
        .send(
            Method::PATCH,
            "/api/orgs/acme",
            Some(&admin),
            Some(set(json!(0))),
        )
        .await;
    assert_eq!(r.json()["maxAccessTokenExpiryDays"], Value::Null);
    assert_eq!(
        api.get("/api/orgs/acme/tokens", &api.admin).await.status,
        StatusCode::OK
    );
    // The old name still sets the same single policy.
    api.emu.set_org_max_expiry_days("acme", Some(7));
    assert_error(
        &api.get("/api/orgs/acme/tokens", &api.admin).await,
        403,
        POLICY_403,
    );
}

#[tokio::test]
async fn a_slow_create_still_creates_the_token() {
    let api = setup().await;
    api.emu.set_create_delay(Duration::from_secs(3));
    let r = api
        .http
        .post(format!("{}/api/orgs/acme/tokens", api.emu.url()))
        .header("Accept", ACCEPT)
        .header("Authorization", format!("token {}", api.admin))
        .timeout(Duration::from_millis(500))
        .json(&json!({"name": "slow", "description": "", "admin": false, "expires": 0}))
        .send()
        .await;
    assert!(r.unwrap_err().is_timeout());
    assert!(api.emu.valid_tokens().iter().any(|t| t.name == "slow"));
    let list = api.get("/api/orgs/acme/tokens", &api.admin).await.json();
    assert_eq!(list["tokens"][0]["name"], "slow");
}

#[tokio::test]
async fn refuses_non_loopback_addresses() {
    let err = PulumiEmulator::start_on(Config::default(), "0.0.0.0:0".parse().unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

#[cfg(unix)]
#[tokio::test]
async fn the_binary_serves_and_writes_a_private_token_file() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::fs::PermissionsExt;

    let dir = std::env::temp_dir().join(format!("pulumi-emulator-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("token");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pulumi-emulator"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--user",
            "alice",
            "--org",
            "acme",
            "--team",
            "ops",
            "--token-file",
        ])
        .arg(&token_file)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let url = loop {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "binary exited early"
        );
        if let Some(url) = line.trim().strip_prefix("pulumi-emulator listening on ") {
            break url.to_string();
        }
    };
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let token = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_string();
    assert!(token.starts_with("pul-"));

    let http = reqwest::Client::new();
    let r = http
        .post(format!("{url}/api/orgs/acme/teams/ops/tokens"))
        .header("Accept", ACCEPT)
        .header("Authorization", format!("token {token}"))
        .json(&json!({"name": "from-bin", "description": "", "expires": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let value = r.json::<Value>().await.unwrap()["tokenValue"]
        .as_str()
        .unwrap()
        .to_string();

    line.clear();
    stderr.read_line(&mut line).unwrap();
    assert!(
        line.contains("POST /api/orgs/acme/teams/ops/tokens 200"),
        "{line}"
    );
    assert!(!line.contains(&token) && !line.contains(&value));
    child.kill().unwrap();
    child.wait().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
