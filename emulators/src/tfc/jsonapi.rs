//! JSON:API documents the emulator answers with: errors, token resources, users, teams, variables, variable sets,
//! and paginated lists (token-apis.md A.0 "The authentication-tokens resource", "Errors", "Pagination"; TFC docs
//! `workspace-variables.mdx`, `variable-sets.mdx`).

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Map, Value};

use super::model::{
    OwnerKind, ResourceRef, Team, Token, TokenKind, TtlPolicy, User, Variable, Varset,
};

/// `2023-04-06T12:00:00.000Z`: ISO 8601 UTC with milliseconds, as in the TFC docs samples.
pub(crate) fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub(crate) fn error(status: u16, title: &str, detail: Option<&str>) -> Value {
    let mut err = Map::new();
    err.insert("status".into(), json!(status.to_string()));
    err.insert("title".into(), json!(title));
    if let Some(detail) = detail {
        err.insert("detail".into(), json!(detail));
    }
    json!({ "errors": [Value::Object(err)] })
}

/// A validation error naming the offending member of the request document (`source.pointer`, JSON:API error
/// objects), e.g. `/data/attributes/key`.
pub(crate) fn error_at(status: u16, title: &str, detail: &str, pointer: &str) -> Value {
    json!({ "errors": [{
        "status": status.to_string(),
        "title": title,
        "detail": detail,
        "source": { "pointer": pointer },
    }] })
}

/// The documented 429 body; note `status` is a number here, unlike every other error (TFC docs `api-docs/index.mdx`).
pub(crate) fn rate_limited() -> Value {
    json!({"errors":[{"detail":"You have exceeded the API's rate limit.","status":429,"title":"Too many requests"}]})
}

fn reference(r: &ResourceRef) -> Value {
    json!({ "id": r.id, "type": r.kind })
}

/// One `authentication-tokens` resource. `reveal` is true only for the create response: "The token value is
/// returned only by the create call. Every read/list returns `"token": null`" (A.0).
pub(crate) fn token_resource(token: &Token, reveal: bool) -> Value {
    let mut attributes = Map::new();
    attributes.insert("created-at".into(), json!(timestamp(token.created_at)));
    attributes.insert(
        "last-used-at".into(),
        json!(token.last_used_at.map(timestamp)),
    );
    attributes.insert("description".into(), json!(token.description));
    attributes.insert(
        "token".into(),
        if reveal {
            json!(token.value)
        } else {
            Value::Null
        },
    );
    // Agent tokens have no `expired-at` at all (A.5: docs samples, go-tfe `AgentToken`, provider resource).
    if token.kind != TokenKind::Agent {
        attributes.insert("expired-at".into(), json!(token.expired_at.map(timestamp)));
    }
    let mut relationships = Map::new();
    if let Some(team_id) = &token.team_id {
        relationships.insert(
            "team".into(),
            json!({ "data": { "id": team_id, "type": "teams" } }),
        );
    }
    relationships.insert(
        "created-by".into(),
        json!({ "data": reference(&token.created_by) }),
    );
    json!({
        "id": token.id,
        "type": "authentication-tokens",
        "attributes": attributes,
        "relationships": relationships,
    })
}

/// One `organization-token-ttl-policies` resource (go-tfe HEAD spec `components.schemas.token-ttl-policy`; go-tfe
/// `OrganizationTokenTTLPolicy`): `max-ttl-ms` an integer, the timestamps ISO 8601.
pub(crate) fn ttl_policy(policy: &TtlPolicy) -> Value {
    json!({
        "id": policy.id,
        "type": "organization-token-ttl-policies",
        "attributes": {
            "token-type": policy.token_type.as_str(),
            "max-ttl-ms": policy.max_ttl_ms,
            "created-at": timestamp(policy.created_at),
            "updated-at": timestamp(policy.updated_at),
        },
    })
}

/// One `vars` resource (TFC docs `workspace-variables.mdx` samples; `created-at` and `description` as in the
/// `all-vars` and variable-set samples). A sensitive variable's `value` is always `null`: "If true then the
/// variable is written once and not visible thereafter". `related` is the owner's link: for a workspace
/// `/api/v2/organizations/:org/workspaces/:name`, for a variable set `/api/v2/varsets/:id`.
pub(crate) fn variable(var: &Variable, related: &str) -> Value {
    let self_link = match var.owner_kind {
        OwnerKind::Workspace => format!("/api/v2/workspaces/{}/vars/{}", var.owner_id, var.id),
        OwnerKind::Varset => format!(
            "/api/v2/varsets/{}/relationships/vars/{}",
            var.owner_id, var.id
        ),
    };
    json!({
        "id": var.id,
        "type": "vars",
        "attributes": {
            "key": var.key,
            "value": if var.sensitive { Value::Null } else { json!(var.value) },
            "sensitive": var.sensitive,
            "category": var.category,
            "hcl": var.hcl,
            "created-at": timestamp(var.created_at),
            "description": var.description,
            "version-id": var.version_id,
        },
        "relationships": {
            "configurable": {
                "data": { "id": var.owner_id, "type": var.owner_kind.resource_type() },
                "links": { "related": related },
            },
        },
        "links": { "self": self_link },
    })
}

/// `GET /varsets/:id` (TFC docs `variable-sets.mdx` "Show Variable Set" sample). The emulator's sets are owned by
/// their organization and applied to no workspace or project.
pub(crate) fn varset(varset: &Varset, var_ids: &[&str]) -> Value {
    let vars: Vec<Value> = var_ids
        .iter()
        .map(|id| json!({ "id": id, "type": "vars" }))
        .collect();
    let org = json!({ "id": varset.org, "type": "organizations" });
    json!({
        "data": {
            "id": varset.id,
            "type": "varsets",
            "attributes": {
                "name": varset.name,
                "description": varset.description,
                "global": varset.global,
                "priority": varset.priority,
                "updated-at": timestamp(varset.updated_at),
                "var-count": var_ids.len(),
                "workspace-count": 0,
                "project-count": 0,
            },
            "relationships": {
                "organization": { "data": org },
                "vars": { "data": vars },
                "workspaces": { "data": [] },
                "projects": { "data": [] },
                "parent": { "data": org },
            },
        }
    })
}

/// `GET /account/details` (TFC docs `api-docs/account.mdx` sample; its two `links` objects merged into one).
pub(crate) fn account_details(user: &User, token_id: &str) -> Value {
    let related = match user.resource.kind {
        "organizations" => format!("/api/v2/organizations/{}", user.resource.id),
        "teams" => format!("/api/v2/teams/{}", user.resource.id),
        _ => format!("/api/v2/users/{}", user.resource.id),
    };
    json!({
        "data": {
            "id": user.id,
            "type": "users",
            "attributes": {
                "username": user.username,
                "is-service-account": user.service,
                "auth-method": "tfc",
                "avatar-url": "https://www.gravatar.com/avatar/00000000000000000000000000000000?s=100&d=mm",
                "v2-only": user.service,
                "is-site-admin": false,
                "is-sso-login": false,
                "email": if user.service { Value::Null } else { json!(format!("{}@example.test", user.username)) },
                "unconfirmed-email": null,
                "permissions": {
                    "can-create-organizations": !user.service,
                    "can-change-email": !user.service,
                    "can-change-username": !user.service,
                },
            },
            "relationships": {
                "authentication-tokens": {
                    "links": { "related": format!("/api/v2/users/{}/authentication-tokens", user.id) },
                },
                "authenticated-resource": {
                    "data": reference(&user.resource),
                    "links": { "related": related },
                },
            },
            "links": {
                "self": format!("/api/v2/users/{}", user.id),
                "auth-token": format!("/api/v2/authentication-tokens/{token_id}"),
            },
        }
    })
}

pub(crate) fn team(team: &Team, is_owners: bool) -> Value {
    json!({
        "data": {
            "id": team.id,
            "type": "teams",
            "attributes": {
                "name": team.name,
                "sso-team-id": null,
                "users-count": if is_owners { 1 } else { 0 },
                "visibility": if is_owners { "secret" } else { "organization" },
                "allow-member-token-management": true,
                "permissions": {
                    "can-update-membership": true,
                    "can-destroy": !is_owners,
                    "can-update-organization-access": !is_owners,
                    "can-update-api-token": true,
                    "can-update-visibility": !is_owners,
                },
                "organization-access": {
                    "manage-policies": is_owners,
                    "manage-workspaces": is_owners,
                    "manage-vcs-settings": is_owners,
                    "manage-agent-pools": is_owners,
                    "manage-teams": is_owners,
                    "manage-organization-access": is_owners,
                },
            },
            "relationships": {
                "organization": { "data": { "id": team.org, "type": "organizations" } },
                "authentication-token": { "meta": {} },
            },
            "links": { "self": format!("/api/v2/teams/{}", team.id) },
        }
    })
}

/// Page selection from `page[number]` / `page[size]`: default size 20, "The maximum page size is 100" (A.0
/// Pagination); larger sizes are clamped, non-numbers and zero fall back to the defaults.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Page {
    pub number: usize,
    pub size: usize,
}

impl Page {
    pub fn from_query(number: Option<&str>, size: Option<&str>) -> Page {
        let number = number
            .and_then(|n| n.trim().parse::<usize>().ok())
            .filter(|n| *n >= 1)
            .unwrap_or(1);
        let size = size
            .and_then(|s| s.trim().parse::<usize>().ok())
            .filter(|s| *s >= 1)
            .unwrap_or(20)
            .min(100);
        Page { number, size }
    }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A list document with TFC's `links {self, first, prev, next, last}` and `meta.pagination`. `url` is the
/// absolute URL of the collection; `extra` are the other query parameters to carry into the links.
pub(crate) fn paginated(
    items: Vec<Value>,
    page: Page,
    url: &str,
    extra: &[(String, String)],
) -> Value {
    let total_count = items.len();
    let total_pages = total_count.div_ceil(page.size).max(1);
    let data: Vec<Value> = items
        .into_iter()
        .skip((page.number - 1).saturating_mul(page.size))
        .take(page.size)
        .collect();
    let link = |n: usize| {
        let mut link = format!("{url}?page%5Bnumber%5D={n}&page%5Bsize%5D={}", page.size);
        for (k, v) in extra {
            link.push_str(&format!("&{}={}", percent_encode(k), percent_encode(v)));
        }
        link
    };
    let prev = (page.number > 1).then(|| page.number.min(total_pages + 1) - 1);
    let next = (page.number < total_pages).then_some(page.number + 1);
    json!({
        "data": data,
        "links": {
            "self": link(page.number),
            "first": link(1),
            "prev": prev.map(link),
            "next": next.map(link),
            "last": link(total_pages),
        },
        "meta": {
            "pagination": {
                "current-page": page.number,
                "page-size": page.size,
                "prev-page": prev,
                "next-page": next,
                "total-pages": total_pages,
                "total-count": total_count,
            }
        }
    })
}
