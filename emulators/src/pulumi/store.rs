//! Accounts, organizations, tokens and the rules of the Pulumi Cloud token API, without HTTP.
//!
//! "Reference" below means `shared/reference/token-apis.md`, Part B.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Months, SecondsFormat, Utc};
use serde_json::{json, Map, Value};

use super::ApiError;

/// Longest token name the API accepts (reference B.1, spec `CreateOrgToken`).
pub const MAX_NAME_CHARS: usize = 40;
/// `maxResults` default and ceiling of the list endpoints (reference B.0, "Pagination").
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

/// Which of the three token families a token belongs to (the list's `type` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenKind {
    Personal,
    Organization,
    Team,
}

impl TokenKind {
    /// The value of the list item's `type` field (spec `AccessToken.type`).
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Personal => "personal",
            TokenKind::Organization => "organization",
            TokenKind::Team => "team",
        }
    }
}

/// Where a token stands right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenState {
    Active,
    Expired,
    Deleted,
}

/// What the emulator knows about one token (never its value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    pub kind: TokenKind,
    pub id: String,
    /// Empty for personal tokens, which have no name.
    pub name: String,
    pub description: String,
    /// Organization of an organization or team token.
    pub org: Option<String>,
    /// Team name of a team token.
    pub team: Option<String>,
    /// Owner login of a personal token.
    pub user: Option<String>,
    pub admin: bool,
    pub role_id: Option<String>,
    /// `createdBy`: the login of the creator (the org name when an org token created it).
    pub created_by: String,
    pub created: DateTime<Utc>,
    /// Unix seconds; 0 = never expires. As requested: the expiry policy refuses, it never caps.
    pub expires: i64,
    /// Unix seconds of the last authenticated call; 0 = never used.
    pub last_used: i64,
    pub deleted: Option<DateTime<Utc>>,
    pub state: TokenState,
}

/// Who is calling, decided from the token in `Authorization`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    User { login: String },
    Org { org: String, admin: bool },
    Team { org: String, team: String },
}

#[derive(Debug, Clone)]
pub struct Caller {
    /// Index of the authenticating token in the store.
    token_idx: usize,
    pub token_id: String,
    pub token_name: String,
    pub principal: Principal,
}

impl Caller {
    /// The `githubLogin` this caller acts as (the robot user of a machine token is named after its org or team).
    fn login(&self) -> &str {
        match &self.principal {
            Principal::User { login } => login,
            Principal::Org { org, .. } => org,
            Principal::Team { team, .. } => team,
        }
    }
}

/// The fields of a create body, after type checks.
#[derive(Debug, Default)]
pub struct CreateBody {
    pub name: Option<String>,
    pub description: String,
    pub admin: bool,
    pub expires: i64,
    pub role_id: Option<String>,
}

/// What a list call asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListFilter {
    Active,
    Expired,
    All,
}

#[derive(Debug)]
pub struct ListQuery {
    filter: ListFilter,
    after_seq: Option<usize>,
    max: usize,
}

#[derive(Debug)]
struct Token {
    value: String,
    kind: TokenKind,
    id: String,
    name: String,
    description: String,
    org: Option<String>,
    team: Option<String>,
    user: Option<String>,
    admin: bool,
    role_id: Option<String>,
    created_by: String,
    created: DateTime<Utc>,
    expires: i64,
    last_used: i64,
    deleted: Option<DateTime<Utc>>,
}

impl Token {
    fn state(&self, now: DateTime<Utc>) -> TokenState {
        if self.deleted.is_some() {
            TokenState::Deleted
        } else if self.expires != 0 && now.timestamp() >= self.expires {
            TokenState::Expired
        } else {
            TokenState::Active
        }
    }

    fn info(&self, now: DateTime<Utc>) -> TokenInfo {
        TokenInfo {
            kind: self.kind,
            id: self.id.clone(),
            name: self.name.clone(),
            description: self.description.clone(),
            org: self.org.clone(),
            team: self.team.clone(),
            user: self.user.clone(),
            admin: self.admin,
            role_id: self.role_id.clone(),
            created_by: self.created_by.clone(),
            created: self.created,
            expires: self.expires,
            last_used: self.last_used,
            deleted: self.deleted,
            state: self.state(now),
        }
    }

    /// One item of a list response (spec schema `AccessToken`); never the value.
    fn list_item(&self) -> Value {
        let mut item = json!({
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "created": self.created.to_rfc3339_opts(SecondsFormat::Millis, true),
            "lastUsed": self.last_used,
            "expires": self.expires,
            "admin": self.admin,
            "createdBy": self.created_by,
            "type": self.kind.as_str(),
        });
        if let Some(role) = &self.role_id {
            item["role"] = json!({"id": role, "name": role, "defaultIdentifier": "member"});
        }
        item
    }
}

#[derive(Debug)]
struct User {
    id: String,
}

#[derive(Debug)]
struct Org {
    id: String,
    created: DateTime<Utc>,
    admins: BTreeSet<String>,
    members: BTreeSet<String>,
    teams: BTreeSet<String>,
    /// Names of every org and team token ever created here, deleted ones included (reference B.1).
    reserved_names: HashSet<String>,
    /// The access token expiry policy: `maxAccessTokenExpiryDays` of `GET /api/orgs/{org}/metadata`.
    max_expiry_days: Option<u32>,
}

/// How the access token expiry policy judges a token (see [`Store::check_expiry_policy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExpiryCompliance {
    /// The token's total lifetime, `expires` − `created`, is within the cap: a token created with a longer
    /// lifetime stays blocked until it is recreated. What the service does since pulumi/pulumi-service#48924, per
    /// https://github.com/pulumi/docs/pull/21382 (2026-09-03): "a token now complies when its total lifetime, from
    /// creation to expiration, is within the policy maximum, rather than its remaining lifetime".
    #[default]
    TotalLifetime,
    /// The rule as first shipped (https://github.com/pulumi/docs/pull/20344; Pulumi docs
    /// `administration/access-identity/access-tokens.md` "How compliance is evaluated"; the OpenAPI spec's
    /// `maxAccessTokenExpiryDays`): "its remaining lifetime — the time between now and its expiration — is within
    /// the policy maximum", so "A token created with a long expiry becomes compliant once its remaining lifetime
    /// falls within the cap."
    RemainingLifetime,
}

/// The whole account database of one emulator.
#[derive(Debug)]
pub struct Store {
    users: BTreeMap<String, User>,
    orgs: BTreeMap<String, Org>,
    /// In creation order; deleted tokens stay (soft delete), so an index is a stable sequence number.
    tokens: Vec<Token>,
    by_value: HashMap<String, usize>,
    clock_offset: chrono::Duration,
    /// Makes continuation tokens opaque and specific to this emulator instance.
    page_salt: String,
    /// Ids of tokens the expiry policy ignores, standing in for the documented exemptions.
    policy_exempt: HashSet<String>,
    compliance: ExpiryCompliance,
}

impl Default for Store {
    fn default() -> Self {
        Store {
            users: BTreeMap::new(),
            orgs: BTreeMap::new(),
            tokens: Vec::new(),
            by_value: HashMap::new(),
            clock_offset: chrono::Duration::zero(),
            page_salt: format!("{:08x}", crate::clock::with_rng(|r| r.next_u32())),
            policy_exempt: HashSet::new(),
            compliance: ExpiryCompliance::default(),
        }
    }
}

/// A random UUID v4 in its usual text form (token and user ids look like `74529ccd-…`, reference B.3).
fn new_uuid() -> String {
    let mut b = [0u8; 16];
    crate::clock::with_rng(|r| r.fill_bytes(&mut b));
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// `pul-` followed by 40 hex characters (reference B.3: "the tokenValue (prefixed with 'pul-')").
fn new_token_value() -> String {
    let mut b = [0u8; 20];
    crate::clock::with_rng(|r| r.fill_bytes(&mut b));
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("pul-{h}")
}

fn forbidden() -> ApiError {
    // Text observed from the real API when an org token attempts an operation it lacks
    // (https://github.com/pulumi/pulumi-pulumiservice/issues/188).
    ApiError::new(403, "You do not have permission to perform this operation.")
}

fn token_not_found() -> ApiError {
    ApiError::new(404, "Not Found: access token not found")
}

impl Store {
    /// The emulator's clock: the only place it reads wall time, shifted by [`Store::advance_clock`].
    #[allow(clippy::disallowed_methods)]
    pub fn now(&self) -> DateTime<Utc> {
        crate::clock::now() + self.clock_offset
    }

    pub fn advance_clock(&mut self, by: std::time::Duration) {
        let by = chrono::Duration::from_std(by).unwrap_or(chrono::Duration::MAX);
        self.clock_offset = self
            .clock_offset
            .checked_add(&by)
            .unwrap_or(chrono::Duration::MAX);
    }

    fn ensure_user(&mut self, login: &str) {
        self.users
            .entry(login.to_string())
            .or_insert_with(|| User { id: new_uuid() });
    }

    fn ensure_org(&mut self, org: &str) -> &mut Org {
        let created = self.now();
        self.orgs.entry(org.to_string()).or_insert_with(|| Org {
            id: new_uuid(),
            created,
            admins: BTreeSet::new(),
            members: BTreeSet::new(),
            teams: BTreeSet::new(),
            reserved_names: HashSet::new(),
            max_expiry_days: None,
        })
    }

    pub fn add_user(&mut self, login: &str) -> String {
        self.ensure_user(login);
        let now = self.now();
        self.insert_token(Token {
            value: String::new(),
            kind: TokenKind::Personal,
            id: new_uuid(),
            name: String::new(),
            description: "emulator bootstrap token".to_string(),
            org: None,
            team: None,
            user: Some(login.to_string()),
            admin: false,
            role_id: None,
            created_by: login.to_string(),
            created: now,
            expires: 0,
            last_used: 0,
            deleted: None,
        })
        .1
    }

    pub fn add_organization(&mut self, org: &str, admin_login: &str) {
        self.ensure_user(admin_login);
        let o = self.ensure_org(org);
        o.admins.insert(admin_login.to_string());
        o.members.insert(admin_login.to_string());
    }

    pub fn add_member(&mut self, org: &str, login: &str) {
        self.ensure_user(login);
        self.ensure_org(org).members.insert(login.to_string());
    }

    pub fn add_team(&mut self, org: &str, team: &str) {
        self.ensure_org(org).teams.insert(team.to_string());
    }

    pub fn set_expiry_policy(&mut self, org: &str, days: Option<u32>) {
        self.ensure_org(org).max_expiry_days = days.filter(|d| *d > 0);
    }

    pub fn set_policy_exempt(&mut self, token_id: &str, exempt: bool) {
        if exempt {
            self.policy_exempt.insert(token_id.to_string());
        } else {
            self.policy_exempt.remove(token_id);
        }
    }

    pub fn set_expiry_compliance(&mut self, rule: ExpiryCompliance) {
        self.compliance = rule;
    }

    /// Whether the token with this value may be used against `org` now: valid, and compliant with the org's
    /// expiry policy (or exempt, or no policy).
    pub fn is_usable_in(&self, value: &str, org: &str) -> bool {
        let now = self.now();
        self.by_value.get(value).is_some_and(|&i| {
            self.tokens[i].state(now) == TokenState::Active && self.complies(i, org, now)
        })
    }

    fn complies(&self, idx: usize, org: &str, now: DateTime<Utc>) -> bool {
        let Some(days) = self.orgs.get(org).and_then(|o| o.max_expiry_days) else {
            return true;
        };
        let token = &self.tokens[idx];
        if self.policy_exempt.contains(&token.id) {
            return true;
        }
        // "A token that never expires violates any policy."
        if token.expires == 0 {
            return false;
        }
        let from = match self.compliance {
            ExpiryCompliance::TotalLifetime => token.created.timestamp(),
            ExpiryCompliance::RemainingLifetime => now.timestamp(),
        };
        token.expires - from <= i64::from(days) * 86_400
    }

    /// The access token expiry policy, checked on every request against `org` (any `/api/orgs/{org}/…` route),
    /// for personal, organization and team tokens alike: "Compliance is evaluated on every request, not just when
    /// the token is created" (Pulumi docs `administration/access-identity/access-tokens.md`, "Access token expiry
    /// policy", https://github.com/pulumi/docs/pull/20344). A non-compliant token is refused with 403 and the
    /// documented message ("Requests rejected by the policy receive a `403 Forbidden` response whose message names
    /// the organization and its policy maximum", with the CLI example "[403] The `acme-corp` organization enforces
    /// a max access token expiry of `14` days that your current token does not meet. Please generate a new token
    /// with a TTL meeting your org's threshold to perform this request.").
    ///
    /// Not checked on `/api/user` and `/api/user/tokens`: the policy covers tokens "used against their
    /// organization", and "Personal tokens are user-scoped and span all of a user's organizations … requests made
    /// with a non-compliant personal token against an organization that enforces a policy are rejected" (same
    /// page); the user endpoints are no organization's resource ([inference] for machine tokens calling
    /// `/api/user`, treated the same way).
    ///
    /// Exemptions: the docs exempt web console sessions, OIDC-exchanged tokens and "internally issued credentials
    /// such as deployment agent pool tokens"; the spec adds "system-managed tokens (deployment runners, agent pools,
    /// stack tokens)". The emulator has none of those, so tests mark tokens exempt by id instead.
    pub fn check_expiry_policy(&self, caller: &Caller, org: &str) -> Result<(), ApiError> {
        if self.complies(caller.token_idx, org, self.now()) {
            return Ok(());
        }
        let days = self
            .orgs
            .get(org)
            .and_then(|o| o.max_expiry_days)
            .unwrap_or(0);
        Err(ApiError::new(
            403,
            format!(
                "The `{org}` organization enforces a max access token expiry of `{days}` days that your current \
                 token does not meet. Please generate a new token with a TTL meeting your org's threshold to \
                 perform this request."
            ),
        ))
    }

    /// Creation of org and team tokens under a policy: "the API rejects creation requests that exceed it or omit an
    /// expiry" (Pulumi docs, "What the policy affects"). [inference] The status and message are not documented: 400
    /// like the other `expires` refusals of these endpoints (spec `CreateOrgToken`, `CreateTeamToken`), naming the
    /// organization and its maximum. Checked against the time left from now, which at creation is the token's
    /// whole lifetime under either compliance rule.
    fn check_creation_policy(&self, org: &str, expires: i64) -> Result<(), ApiError> {
        let Some(days) = self.orgs.get(org).and_then(|o| o.max_expiry_days) else {
            return Ok(());
        };
        if expires != 0 && expires - self.now().timestamp() <= i64::from(days) * 86_400 {
            return Ok(());
        }
        Err(ApiError::new(
            400,
            format!(
                "Bad Request: the token's expiry exceeds the `{org}` organization's maximum access token expiry of \
                 `{days}` days; set `expires` to at most {days} days from now"
            ),
        ))
    }

    /// `GET /api/orgs/{org}/metadata` (spec `GetOrganizationMetadata`, schema `OrganizationMetadata`), the
    /// documented read of the policy: `maxAccessTokenExpiryDays`, "Null means no policy". Only the schema's
    /// required fields plus that one are answered, with placeholder values; `features` carries only
    /// `accessTokenExpiryPolicyEnabled`. [inference] Any member of the organization may read it (personal tokens
    /// of members, org and team tokens of the org); others get 403.
    pub fn org_metadata(&self, caller: &Caller, org: &str) -> Result<Value, ApiError> {
        let o = self.org(org)?;
        let role = match &caller.principal {
            Principal::User { login } if o.admins.contains(login) => "admin",
            Principal::User { login } if o.members.contains(login) => "member",
            Principal::Org { org: of, admin } if of == org => {
                if *admin {
                    "admin"
                } else {
                    "member"
                }
            }
            Principal::Team { org: of, .. } if of == org => "member",
            _ => return Err(forbidden()),
        };
        Ok(json!({
            "id": o.id,
            "created": o.created.to_rfc3339_opts(SecondsFormat::Millis, true),
            "kind": "pulumi",
            "userRole": role,
            "memberCount": o.members.len(),
            "stackCount": 0,
            "environmentCount": 0,
            "accountCount": 0,
            "aiEnablement": "disabled",
            "auditLogsEnabled": true,
            "webhooksEnabled": true,
            "defaultAccountPermission": 0,
            "defaultEnvironmentPermission": "none",
            "defaultStackPermission": 0,
            "insightsTrialUsingPolicy": false,
            "membersCanCreateAccounts": false,
            "membersCanCreateStacks": true,
            "membersCanCreateTeams": false,
            "membersCanDeleteStacks": false,
            "membersCanTransferStacks": false,
            "naturalLanguageSearchDisabled": true,
            "neoAgentDisabled": true,
            "neoApprovalMode": "manual",
            "neoCLIExplanationsDisabled": true,
            "neoEnabled": false,
            "neoTaskSharingMode": "none",
            "preferredVCS": "none",
            "features": {"accessTokenExpiryPolicyEnabled": true},
            "maxAccessTokenExpiryDays": o.max_expiry_days,
        }))
    }

    /// `PATCH /api/orgs/{org}` (spec `UpdateOrganizationSettings`) with `setMaxAccessTokenExpiryDays`: "A value of 0
    /// clears the policy … Leave the field unset to make no change"; the docs' UI takes "between 1 and 3650". Other
    /// settings are ignored. Answers the metadata. Admins only: an org admin's personal token or an admin org
    /// token ("any operation an organization administrator can perform, except creating or deleting other
    /// organization tokens", reference B.4). An out-of-range or non-integer value is the spec's 400 "Invalid
    /// organization settings" (message [inference]).
    pub fn update_org_settings(
        &mut self,
        caller: &Caller,
        org: &str,
        body: &[u8],
    ) -> Result<Value, ApiError> {
        self.org(org)?;
        if !(self.is_org_admin(caller, org) || Self::is_admin_org_token(caller, org)) {
            return Err(forbidden());
        }
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::new(400, format!("Bad Request: invalid JSON body: {e}")))?;
        let obj = value
            .as_object()
            .ok_or_else(|| ApiError::new(400, "Bad Request: the body must be a JSON object"))?;
        match obj.get("setMaxAccessTokenExpiryDays") {
            None | Some(Value::Null) => {}
            Some(v) => {
                let days = v.as_u64().filter(|d| *d <= 3650).ok_or_else(|| {
                    ApiError::new(
                        400,
                        "Bad Request: setMaxAccessTokenExpiryDays must be an integer between 0 and 3650",
                    )
                })?;
                self.set_expiry_policy(org, Some(days as u32));
            }
        }
        self.org_metadata(caller, org)
    }

    /// Marks a token deleted, as if its owner had deleted it. Unknown ids are ignored.
    pub fn revoke(&mut self, token_id: &str) {
        let now = self.now();
        if let Some(t) = self.tokens.iter_mut().find(|t| t.id == token_id) {
            t.deleted.get_or_insert(now);
        }
    }

    pub fn is_valid(&self, value: &str) -> bool {
        let now = self.now();
        self.by_value
            .get(value)
            .is_some_and(|&i| self.tokens[i].state(now) == TokenState::Active)
    }

    pub fn token_id_of(&self, value: &str) -> Option<String> {
        self.by_value.get(value).map(|&i| self.tokens[i].id.clone())
    }

    pub fn tokens(&self, only_valid: bool) -> Vec<TokenInfo> {
        let now = self.now();
        self.tokens
            .iter()
            .map(|t| t.info(now))
            .filter(|t| !only_valid || t.state == TokenState::Active)
            .collect()
    }

    /// Stores a token under a fresh value; returns (id, value).
    fn insert_token(&mut self, mut token: Token) -> (String, String) {
        token.value = new_token_value();
        let (id, value) = (token.id.clone(), token.value.clone());
        self.by_value.insert(value.clone(), self.tokens.len());
        self.tokens.push(token);
        (id, value)
    }

    /// Resolves `Authorization: token <value>`; a missing header, another scheme, an unknown, deleted or expired
    /// token are all 401 (reference B.0: "will return a 401 status code if the token is missing or invalid").
    /// A successful call stamps the token's `lastUsed`.
    pub fn authenticate(&mut self, authorization: Option<&str>) -> Result<Caller, ApiError> {
        // Text observed from the real API (https://github.com/pulumi/pulumi-pulumiservice/issues/160).
        let unauthorized =
            || ApiError::new(401, "Unauthorized: No credentials provided or are invalid.");
        let value = authorization
            .and_then(|h| h.strip_prefix("token "))
            .map(str::trim)
            .ok_or_else(unauthorized)?;
        let now = self.now();
        let &idx = self.by_value.get(value).ok_or_else(unauthorized)?;
        let token = &mut self.tokens[idx];
        if token.state(now) != TokenState::Active {
            return Err(unauthorized());
        }
        token.last_used = now.timestamp();
        let principal = match token.kind {
            TokenKind::Personal => Principal::User {
                login: token.user.clone().unwrap_or_default(),
            },
            TokenKind::Organization => Principal::Org {
                org: token.org.clone().unwrap_or_default(),
                admin: token.admin,
            },
            TokenKind::Team => Principal::Team {
                org: token.org.clone().unwrap_or_default(),
                team: token.team.clone().unwrap_or_default(),
            },
        };
        Ok(Caller {
            token_idx: idx,
            token_id: token.id.clone(),
            token_name: token.name.clone(),
            principal,
        })
    }

    fn org(&self, org: &str) -> Result<&Org, ApiError> {
        self.orgs
            .get(org)
            .ok_or_else(|| ApiError::new(404, format!("Not Found: organization '{org}' not found")))
    }

    fn team_exists(&self, org: &str, team: &str) -> Result<(), ApiError> {
        if self.org(org)?.teams.contains(team) {
            Ok(())
        } else {
            Err(ApiError::new(
                404,
                format!("Not Found: team '{team}' not found"),
            ))
        }
    }

    fn is_org_admin(&self, caller: &Caller, org: &str) -> bool {
        matches!(&caller.principal, Principal::User { login } if self.orgs.get(org).is_some_and(|o| o.admins.contains(login)))
    }

    fn is_admin_org_token(caller: &Caller, org: &str) -> bool {
        matches!(&caller.principal, Principal::Org { org: o, admin: true } if o == org)
    }

    /// Create/delete org tokens: an org admin's personal token only; machine tokens, even admin org tokens,
    /// cannot (reference B.4, Part E 7).
    pub fn check_manage_org_tokens(&self, caller: &Caller, org: &str) -> Result<(), ApiError> {
        self.org(org)?;
        if self.is_org_admin(caller, org) {
            Ok(())
        } else {
            Err(forbidden())
        }
    }

    /// List org tokens: org admins, and admin org tokens ("List access tokens" ✅ for Admin, reference B.4).
    pub fn check_list_org_tokens(&self, caller: &Caller, org: &str) -> Result<(), ApiError> {
        self.org(org)?;
        if self.is_org_admin(caller, org) || Self::is_admin_org_token(caller, org) {
            Ok(())
        } else {
            Err(forbidden())
        }
    }

    /// Team tokens: org admins and admin org tokens may list, create and delete (reference B.4).
    pub fn check_manage_team_tokens(
        &self,
        caller: &Caller,
        org: &str,
        team: &str,
    ) -> Result<(), ApiError> {
        self.org(org)?;
        if !(self.is_org_admin(caller, org) || Self::is_admin_org_token(caller, org)) {
            return Err(forbidden());
        }
        self.team_exists(org, team)
    }

    /// Personal tokens belong to a user; machine tokens have none to manage.
    pub fn check_personal(caller: &Caller) -> Result<&str, ApiError> {
        match &caller.principal {
            Principal::User { login } => Ok(login),
            _ => Err(forbidden()),
        }
    }

    /// Checks `expires` (reference B.4: unix seconds, up to two years ahead, 0 = never).
    fn check_expires(&self, requested: i64) -> Result<i64, ApiError> {
        let now = self.now();
        if requested < 0 {
            return Err(ApiError::new(
                400,
                "Bad Request: expires must be a unix timestamp in seconds, or 0 for no expiry",
            ));
        }
        if requested != 0 && requested <= now.timestamp() {
            return Err(ApiError::new(
                400,
                "Bad Request: expires must be in the future",
            ));
        }
        let limit = now
            .checked_add_months(Months::new(24))
            .unwrap_or(now)
            .timestamp();
        if requested > limit {
            return Err(ApiError::new(
                400,
                "Bad Request: expires cannot be more than two years in the future",
            ));
        }
        Ok(requested)
    }

    fn check_name(&self, org: &str, name: Option<&str>) -> Result<String, ApiError> {
        let name = name.unwrap_or_default();
        if name.is_empty() {
            return Err(ApiError::new(400, "Bad Request: name is required"));
        }
        if name.chars().count() > MAX_NAME_CHARS {
            return Err(ApiError::new(
                400,
                "Bad Request: token name cannot exceed 40 characters",
            ));
        }
        if self.org(org)?.reserved_names.contains(name) {
            // Names stay reserved after deletion, shared by org and team tokens (reference B.1); the text is the
            // one observed in https://github.com/pulumi/pulumi-pulumiservice/issues/389.
            return Err(ApiError::new(409, "Conflict: token name already exists"));
        }
        Ok(name.to_string())
    }

    /// `POST /api/orgs/{org}/tokens` or `POST /api/orgs/{org}/teams/{team}/tokens`; permission already checked.
    pub fn create_machine_token(
        &mut self,
        caller: &Caller,
        org: &str,
        team: Option<&str>,
        body: CreateBody,
    ) -> Result<Value, ApiError> {
        let name = self.check_name(org, body.name.as_deref())?;
        let expires = self.check_expires(body.expires)?;
        // Refused, never capped: no token is created and the name stays free.
        self.check_creation_policy(org, expires)?;
        let now = self.now();
        self.ensure_org(org).reserved_names.insert(name.clone());
        let (kind, admin, role_id) = match team {
            Some(_) => (TokenKind::Team, false, None),
            None => (TokenKind::Organization, body.admin, body.role_id),
        };
        let (id, value) = self.insert_token(Token {
            value: String::new(),
            kind,
            id: new_uuid(),
            name,
            description: body.description,
            org: Some(org.to_string()),
            team: team.map(str::to_string),
            user: None,
            admin,
            role_id,
            created_by: caller.login().to_string(),
            created: now,
            expires,
            last_used: 0,
            deleted: None,
        });
        Ok(json!({"id": id, "tokenValue": value}))
    }

    /// `POST /api/user/tokens` for the calling user.
    pub fn create_personal_token(
        &mut self,
        login: &str,
        body: CreateBody,
    ) -> Result<Value, ApiError> {
        // Personal tokens "can't be blocked at creation" (Pulumi docs): the policy applies when they are used.
        let expires = self.check_expires(body.expires)?;
        let now = self.now();
        let (id, value) = self.insert_token(Token {
            value: String::new(),
            kind: TokenKind::Personal,
            id: new_uuid(),
            name: String::new(),
            description: body.description,
            org: None,
            team: None,
            user: Some(login.to_string()),
            admin: false,
            role_id: None,
            created_by: login.to_string(),
            created: now,
            expires,
            last_used: 0,
            deleted: None,
        });
        Ok(json!({"id": id, "tokenValue": value}))
    }

    /// Lists the tokens `select` picks, in creation order, one page at a time (spec `ListAccessTokensResponse`).
    fn list(&self, query: &ListQuery, select: impl Fn(&Token) -> bool) -> Value {
        let now = self.now();
        let start = query.after_seq.map_or(0, |s| s + 1);
        let mut page = Vec::new();
        let mut last_seq = None;
        let mut more = false;
        for (seq, t) in self.tokens.iter().enumerate().skip(start) {
            if !select(t) {
                continue;
            }
            let keep = match (query.filter, t.state(now)) {
                (_, TokenState::Deleted) => false,
                (ListFilter::Active, s) => s == TokenState::Active,
                (ListFilter::Expired, s) => s == TokenState::Expired,
                (ListFilter::All, _) => true,
            };
            if !keep {
                continue;
            }
            if page.len() == query.max {
                more = true;
                break;
            }
            page.push(t.list_item());
            last_seq = Some(seq);
        }
        let continuation = match (more, last_seq) {
            (true, Some(seq)) => Value::String(format!("{}{:x}", self.page_salt, seq)),
            _ => Value::Null,
        };
        json!({"tokens": page, "continuationToken": continuation})
    }

    pub fn list_org(&self, org: &str, q: &ListQuery) -> Value {
        self.list(q, |t| {
            t.kind == TokenKind::Organization && t.org.as_deref() == Some(org)
        })
    }

    pub fn list_team(&self, org: &str, team: &str, q: &ListQuery) -> Value {
        self.list(q, |t| {
            t.kind == TokenKind::Team
                && t.org.as_deref() == Some(org)
                && t.team.as_deref() == Some(team)
        })
    }

    pub fn list_personal(&self, login: &str, q: &ListQuery) -> Value {
        self.list(q, |t| {
            t.kind == TokenKind::Personal && t.user.as_deref() == Some(login)
        })
    }

    fn live_token_mut(&mut self, id: &str) -> Option<&mut Token> {
        self.tokens
            .iter_mut()
            .find(|t| t.id == id && t.deleted.is_none())
    }

    /// `DELETE /api/orgs/{org}/tokens/{id}`: 404 unless it is a live org token of that org.
    pub fn delete_org_token(&mut self, org: &str, id: &str) -> Result<(), ApiError> {
        let now = self.now();
        match self.live_token_mut(id) {
            Some(t) if t.kind == TokenKind::Organization && t.org.as_deref() == Some(org) => {
                t.deleted = Some(now);
                Ok(())
            }
            _ => Err(token_not_found()),
        }
    }

    /// `DELETE /api/orgs/{org}/teams/{team}/tokens/{id}`: 400 "the requested token is not a team token" when the id
    /// names a live token of another kind (spec `DeleteTeamToken`); 404 when unknown or another team's.
    pub fn delete_team_token(&mut self, org: &str, team: &str, id: &str) -> Result<(), ApiError> {
        let now = self.now();
        match self.live_token_mut(id) {
            Some(t) if t.kind != TokenKind::Team => Err(ApiError::new(
                400,
                "the requested token is not a team token",
            )),
            Some(t) if t.org.as_deref() == Some(org) && t.team.as_deref() == Some(team) => {
                t.deleted = Some(now);
                Ok(())
            }
            _ => Err(token_not_found()),
        }
    }

    /// `DELETE /api/user/tokens/{id}`: only the caller's own tokens (spec `DeletePersonalToken`: 404 if missing).
    pub fn delete_personal_token(&mut self, login: &str, id: &str) -> Result<(), ApiError> {
        let now = self.now();
        match self.live_token_mut(id) {
            Some(t) if t.kind == TokenKind::Personal && t.user.as_deref() == Some(login) => {
                t.deleted = Some(now);
                Ok(())
            }
            _ => Err(token_not_found()),
        }
    }

    /// `GET /api/user` (spec `User`); machine tokens get `tokenInfo {name, organization, team}` (spec `TokenInfo`:
    /// "set only for machine tokens").
    pub fn current_user(&self, caller: &Caller) -> Value {
        let org_summary = |org: &str, role: &str| json!({"name": org, "githubLogin": org, "avatarUrl": "", "role": role});
        let (id, login, orgs, token_info) = match &caller.principal {
            Principal::User { login } => {
                let orgs: Vec<Value> = self
                    .orgs
                    .iter()
                    .filter(|(_, o)| o.members.contains(login))
                    .map(|(name, o)| {
                        org_summary(
                            name,
                            if o.admins.contains(login) {
                                "admin"
                            } else {
                                "member"
                            },
                        )
                    })
                    .collect();
                let id = self
                    .users
                    .get(login)
                    .map(|u| u.id.clone())
                    .unwrap_or_default();
                (id, login.clone(), orgs, None)
            }
            Principal::Org { org, admin } => (
                format!("org-robot-{org}"),
                org.clone(),
                vec![org_summary(org, if *admin { "admin" } else { "member" })],
                Some(json!({"name": caller.token_name, "organization": org, "team": ""})),
            ),
            Principal::Team { org, team } => (
                format!("team-robot-{org}-{team}"),
                team.clone(),
                vec![org_summary(org, "member")],
                Some(json!({"name": caller.token_name, "organization": org, "team": team})),
            ),
        };
        let mut user = Map::new();
        user.insert("id".into(), json!(id));
        user.insert("githubLogin".into(), json!(login));
        user.insert("name".into(), json!(login));
        user.insert("email".into(), json!(format!("{login}@example.invalid")));
        user.insert("avatarUrl".into(), json!(""));
        user.insert("organizations".into(), json!(orgs));
        user.insert("identities".into(), json!(["Pulumi"]));
        user.insert("siteAdmin".into(), json!(false));
        user.insert("hasMFA".into(), json!(false));
        user.insert("isOrgManaged".into(), json!(false));
        user.insert("isManagedByMultiOrg".into(), json!(false));
        if let Some(info) = token_info {
            user.insert("tokenInfo".into(), info);
        }
        Value::Object(user)
    }

    /// Parses `filter`, `continuationToken`, `maxResults` (and the older `show_expired`, reference B.0).
    pub fn parse_list_query(&self, pairs: &[(String, String)]) -> Result<ListQuery, ApiError> {
        // The spec's own text for this 400 (`ListOrgTokens`, `ListTeamTokens`, `ListPersonalTokens`).
        let invalid = || ApiError::new(400, "Invalid continuationToken or maxResults value.");
        let mut q = ListQuery {
            filter: ListFilter::Active,
            after_seq: None,
            max: DEFAULT_PAGE,
        };
        let mut saw_filter = false;
        for (k, v) in pairs {
            match k.as_str() {
                "filter" => {
                    saw_filter = true;
                    q.filter = match v.as_str() {
                        "" | "active" => ListFilter::Active,
                        "expired" => ListFilter::Expired,
                        "all" => ListFilter::All,
                        _ => {
                            return Err(ApiError::new(
                                400,
                                "Bad Request: filter must be one of active, expired, all",
                            ))
                        }
                    }
                }
                "show_expired" if !saw_filter && v == "true" => q.filter = ListFilter::All,
                "maxResults" => match v.parse::<usize>() {
                    Ok(n) if (1..=MAX_PAGE).contains(&n) => q.max = n,
                    _ => return Err(invalid()),
                },
                "continuationToken" if !v.is_empty() => {
                    let seq = v
                        .strip_prefix(&self.page_salt)
                        .and_then(|hex| usize::from_str_radix(hex, 16).ok())
                        .filter(|&s| s < self.tokens.len())
                        .ok_or_else(invalid)?;
                    q.after_seq = Some(seq);
                }
                _ => {}
            }
        }
        Ok(q)
    }
}

/// Decodes a create body strictly by type; absent (or null) fields take the zero values a Go server decodes them to
/// (the legacy provider never sends `expires`, reference B.5).
pub fn parse_create_body(bytes: &[u8]) -> Result<CreateBody, ApiError> {
    let bad = |m: &str| ApiError::new(400, format!("Bad Request: {m}"));
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| bad(&format!("invalid JSON body: {e}")))?;
    let obj = value
        .as_object()
        .ok_or_else(|| bad("the body must be a JSON object"))?;
    let field = |k: &str| obj.get(k).filter(|v| !v.is_null());
    let string = |k: &str| -> Result<Option<String>, ApiError> {
        field(k)
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| bad(&format!("`{k}` must be a string")))
            })
            .transpose()
    };
    let expires = field("expires")
        .map(|v| {
            v.as_i64()
                .ok_or_else(|| bad("`expires` must be an integer (unix seconds)"))
        })
        .transpose()?
        .unwrap_or(0);
    let admin = field("admin")
        .map(|v| v.as_bool().ok_or_else(|| bad("`admin` must be a boolean")))
        .transpose()?
        .unwrap_or(false);
    Ok(CreateBody {
        name: string("name")?,
        description: string("description")?.unwrap_or_default(),
        admin,
        expires,
        role_id: string("roleID")?.filter(|r| !r.is_empty()),
    })
}
