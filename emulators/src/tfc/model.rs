//! The emulated service's data: organizations, teams, agent pools, users and their authentication tokens,
//! workspaces and variable sets with their variables, plus the test knobs (injected failures, throttling, create delay) and the request log. Everything here is plain
//! synchronous code run under the emulator's one mutex; the HTTP layer (`http.rs`) only reads and mutates it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rand::distr::Alphanumeric;
use rand::Rng;

/// "The exact default TTL the API uses is `63113904000` ms" (token-apis.md A.0 Expiry), i.e. 730.5 days.
pub(crate) const DEFAULT_TTL_MS: i64 = 63_113_904_000;

/// The kind of an authentication token (token-apis.md A.1–A.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TokenKind {
    /// A user's own token (the owners-team user token returned by `add_organization`).
    User,
    /// The organization token: one per organization, creating one replaces the previous one.
    Organization,
    /// The audit-trails token (`?token=audit-trails`): one per organization, independent of the org token.
    AuditTrails,
    /// The legacy, description-less team token: one per team, replaced on create.
    TeamLegacy,
    /// A described team token (`POST /teams/:id/authentication-tokens`); several coexist per team.
    Team,
    /// An agent-pool token; several coexist per pool; never expires; cannot call the API.
    Agent,
}

impl TokenKind {
    /// A short stable name, e.g. for assertions and log lines.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::User => "user",
            TokenKind::Organization => "organization",
            TokenKind::AuditTrails => "audit-trails",
            TokenKind::TeamLegacy => "team-legacy",
            TokenKind::Team => "team",
            TokenKind::Agent => "agent",
        }
    }

    pub(crate) fn is_team(self) -> bool {
        matches!(self, TokenKind::Team | TokenKind::TeamLegacy)
    }

    /// The maximum-TTL policy that caps this kind, if the emulator enforces one. Agent tokens are not in the
    /// policy's enum. User tokens are not capped by the emulator: its only user token is the never-expiring
    /// owners-team seed token the tests administer with, and the real service's rule for user tokens (which span
    /// organizations; "Maximum lifespan allowed for user tokens to access the organization's resources", tfe
    /// provider docs) is not pinned down by any source; the `user` policy is stored and reported only.
    pub(crate) fn ttl_type(self) -> Option<TtlTokenType> {
        match self {
            TokenKind::Organization => Some(TtlTokenType::Organization),
            TokenKind::AuditTrails => Some(TtlTokenType::AuditTrails),
            TokenKind::Team | TokenKind::TeamLegacy => Some(TtlTokenType::Team),
            TokenKind::User | TokenKind::Agent => None,
        }
    }
}

/// Lifecycle state of a token as seen by [`crate::tfc::TfcHandle::all_tokens`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TokenState {
    /// Usable now.
    Active,
    /// Past its `expired-at`; still listed by the API until deleted, but rejected with 401.
    Expired,
    /// Deleted through the API (or [`crate::tfc::TfcHandle::revoke`]).
    Revoked,
    /// Invalidated because a newer singleton token (org, audit-trails, legacy team) was created.
    Replaced,
    /// Live and unexpired, but its lifetime (`expired-at` − `created-at`) exceeds its organization's maximum TTL
    /// for its token type while the organization's `max-ttl-enabled` is on: rejected with 401 like a revoked
    /// token, still listed by the API ("Existing tokens that exceed newly configured limits will stop working and
    /// return an unauthorized error", tfe provider `website/docs/r/org_max_token_ttl_policy.html.markdown`).
    /// Lowering the limit again (or switching the feature off) makes it work again: the emulator judges the
    /// policy on every request and never revokes (an inference; the provider PR #1996 text says "revoked").
    OverMaxTtl,
}

/// The token types of the organization maximum-TTL policy (`token-type` enum of the go-tfe HEAD OpenAPI spec
/// `components.schemas.token-ttl-policy`; note `audit_trails` with an underscore, unlike the `?token=audit-trails`
/// query value). The go-tfe v1 integration test sees four policies ("API returns all 4 token type policies",
/// `organization_token_ttl_policy_integration_test.go`); the newer spec adds `metrics`, so the emulator answers
/// five.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum TtlTokenType {
    Organization,
    Team,
    User,
    AuditTrails,
    Metrics,
}

impl TtlTokenType {
    pub const ALL: [TtlTokenType; 5] = [
        TtlTokenType::Organization,
        TtlTokenType::Team,
        TtlTokenType::User,
        TtlTokenType::AuditTrails,
        TtlTokenType::Metrics,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TtlTokenType::Organization => "organization",
            TtlTokenType::Team => "team",
            TtlTokenType::User => "user",
            TtlTokenType::AuditTrails => "audit_trails",
            TtlTokenType::Metrics => "metrics",
        }
    }

    pub fn parse(s: &str) -> Option<TtlTokenType> {
        TtlTokenType::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// One `organization-token-ttl-policies` resource.
pub(crate) struct TtlPolicy {
    pub id: String,
    pub token_type: TtlTokenType,
    pub max_ttl_ms: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Metadata of one token, for test assertions. Never carries the token value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenInfo {
    /// `at-` followed by 16 alphanumerics.
    pub id: String,
    pub kind: TokenKind,
    pub description: Option<String>,
    /// Name of the organization the token belongs to.
    pub organization: String,
    /// Set for team tokens (legacy and described).
    pub team_id: Option<String>,
    /// Set for agent tokens.
    pub agent_pool_id: Option<String>,
    pub created_at: DateTime<Utc>,
    /// `None` for tokens that never expire (agent tokens, the owners-team user token).
    pub expired_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    /// When the token was revoked or replaced.
    pub ended_at: Option<DateTime<Utc>>,
    pub state: TokenState,
}

/// A workspace or variable-set variable as a consumer (a Terraform run) sees it: with its real value, even when
/// it is sensitive and the API never shows it. `Debug` leaves the value out.
#[derive(Clone, PartialEq, Eq)]
pub struct VariableInfo {
    /// `var-` followed by 16 alphanumerics.
    pub id: String,
    pub key: String,
    pub value: String,
    pub sensitive: bool,
    /// `terraform` or `env`.
    pub category: String,
    pub description: Option<String>,
    /// Changes on every update (36 lowercase hex digits, as in the docs samples).
    pub version_id: String,
}

impl std::fmt::Debug for VariableInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VariableInfo")
            .field("id", &self.id)
            .field("key", &self.key)
            .field("value", &format_args!("<{} bytes>", self.value.len()))
            .field("sensitive", &self.sensitive)
            .field("category", &self.category)
            .field("description", &self.description)
            .field("version_id", &self.version_id)
            .finish()
    }
}

/// One request as the emulator saw it. Never carries a token value.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    pub method: String,
    /// The URL path, without the query string.
    pub path: String,
    pub query: Option<String>,
    pub status: u16,
    /// When the request arrived.
    pub at: Instant,
    /// The rate-limit bucket the request was counted in: the caller's user id (`user-…`) for a valid API
    /// token, else `ip:<address>`.
    pub principal: String,
    /// Id of the valid token that authenticated the request, if any.
    pub token_id: Option<String>,
    /// For a 429: the `X-RateLimit-Reset` the emulator sent.
    pub rate_limit_reset: Option<Duration>,
}

/// A JSON:API resource identifier (`{"id", "type"}`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ResourceRef {
    pub id: String,
    pub kind: &'static str,
}

pub(crate) struct Token {
    pub id: String,
    /// The secret. Only ever written into a create response; no `Debug` on this type so it cannot leak into logs.
    pub value: String,
    pub kind: TokenKind,
    pub org: String,
    pub team_id: Option<String>,
    pub pool_id: Option<String>,
    pub description: Option<String>,
    pub created_at: DateTime<Utc>,
    pub expired_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    /// `Revoked` or `Replaced`, and when.
    pub ended: Option<(TokenState, DateTime<Utc>)>,
    /// The (possibly synthetic "service") user the token authenticates as; `None` for agent tokens.
    pub user_id: Option<String>,
    pub created_by: ResourceRef,
}

impl Token {
    /// Not revoked or replaced (it may still be expired: the API keeps listing expired tokens).
    pub fn is_live(&self) -> bool {
        self.ended.is_none()
    }

    pub fn is_valid_at(&self, now: DateTime<Utc>) -> bool {
        self.is_live() && self.expired_at.is_none_or(|at| at > now)
    }

    pub fn state_at(&self, now: DateTime<Utc>) -> TokenState {
        match self.ended {
            Some((state, _)) => state,
            None if self.is_valid_at(now) => TokenState::Active,
            None => TokenState::Expired,
        }
    }

    pub fn info(&self, now: DateTime<Utc>) -> TokenInfo {
        TokenInfo {
            id: self.id.clone(),
            kind: self.kind,
            description: self.description.clone(),
            organization: self.org.clone(),
            team_id: self.team_id.clone(),
            agent_pool_id: self.pool_id.clone(),
            created_at: self.created_at,
            expired_at: self.expired_at,
            last_used_at: self.last_used_at,
            ended_at: self.ended.map(|(_, at)| at),
            state: self.state_at(now),
        }
    }

    /// The resource a request made with this token acts as, for `created-by` of tokens it creates.
    pub fn acting_as(&self) -> ResourceRef {
        match self.kind {
            TokenKind::Organization | TokenKind::AuditTrails => ResourceRef {
                id: self.org.clone(),
                kind: "organizations",
            },
            TokenKind::Team | TokenKind::TeamLegacy => ResourceRef {
                id: self.team_id.clone().unwrap_or_default(),
                kind: "teams",
            },
            TokenKind::User | TokenKind::Agent => ResourceRef {
                id: self.user_id.clone().unwrap_or_default(),
                kind: "users",
            },
        }
    }
}

pub(crate) struct User {
    pub id: String,
    pub username: String,
    /// Org and team tokens authenticate as a synthetic "service user" (TFC docs `api-docs/account.mdx`).
    pub service: bool,
    /// What `authenticated-resource` points at: the org, the team, or the user itself.
    pub resource: ResourceRef,
}

pub(crate) struct Org {
    pub name: String,
    pub owners_team_id: String,
    pub owner_user_id: String,
    pub service_user_id: String,
    /// The organization attribute `max-ttl-enabled` (go-tfe v1 `organization.go`), off by default.
    pub max_ttl_enabled: bool,
    /// One per [`TtlTokenType`], in [`TtlTokenType::ALL`] order, each at the 2-year default until changed.
    pub ttl_policies: Vec<TtlPolicy>,
}

impl Org {
    pub fn ttl_policy_mut(&mut self, token_type: TtlTokenType) -> &mut TtlPolicy {
        self.ttl_policies
            .iter_mut()
            .find(|p| p.token_type == token_type)
            .expect("every organization has a policy per token type")
    }
}

pub(crate) struct Team {
    pub id: String,
    pub name: String,
    pub org: String,
    pub service_user_id: String,
}

pub(crate) struct Pool {
    pub id: String,
    pub org: String,
}

pub(crate) struct Workspace {
    pub id: String,
    pub name: String,
    pub org: String,
}

/// An organization-owned variable set (no project parent, not applied to any workspace: the emulator models only
/// its variables).
pub(crate) struct Varset {
    pub id: String,
    pub name: String,
    pub org: String,
    pub description: String,
    pub global: bool,
    pub priority: bool,
    pub updated_at: DateTime<Utc>,
}

/// What a variable belongs to: its `configurable` relationship.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OwnerKind {
    Workspace,
    Varset,
}

impl OwnerKind {
    /// The JSON:API type of the owner.
    pub fn resource_type(self) -> &'static str {
        match self {
            OwnerKind::Workspace => "workspaces",
            OwnerKind::Varset => "varsets",
        }
    }
}

/// A workspace or variable-set variable. No `Debug`: the value may be a secret.
pub(crate) struct Variable {
    pub id: String,
    pub owner_kind: OwnerKind,
    pub owner_id: String,
    pub key: String,
    /// The real value; the API shows `null` instead while `sensitive` is set.
    pub value: String,
    pub description: Option<String>,
    pub category: String,
    pub hcl: bool,
    pub sensitive: bool,
    pub created_at: DateTime<Utc>,
    pub version_id: String,
}

impl Variable {
    pub fn info(&self) -> VariableInfo {
        VariableInfo {
            id: self.id.clone(),
            key: self.key.clone(),
            value: self.value.clone(),
            sensitive: self.sensitive,
            category: self.category.clone(),
            description: self.description.clone(),
            version_id: self.version_id.clone(),
        }
    }
}

/// Everything the emulator knows, behind one mutex.
pub(crate) struct State {
    pub orgs: BTreeMap<String, Org>,
    pub teams: BTreeMap<String, Team>,
    pub pools: BTreeMap<String, Pool>,
    pub workspaces: BTreeMap<String, Workspace>,
    pub varsets: BTreeMap<String, Varset>,
    /// Workspace and variable-set variables, in creation order.
    pub variables: Vec<Variable>,
    pub users: HashMap<String, User>,
    /// In creation order; never removed (revoked tokens stay for `all_tokens`).
    pub tokens: Vec<Token>,
    by_value: HashMap<String, usize>,
    // Test knobs.
    pub create_delay: Duration,
    pub fail_remaining: usize,
    pub fail_status: u16,
    pub throttle_until: Option<Instant>,
    pub multi_team_tokens: bool,
    /// Accepted requests per rate-limit principal within the last second (sliding window).
    pub rate_windows: HashMap<String, VecDeque<Instant>>,
    pub log: Vec<RequestRecord>,
}

/// The emulator's one read of the wall clock: the service's own (`crate::clock`), not the client's.
pub(crate) fn now() -> DateTime<Utc> {
    crate::clock::now()
}

pub(crate) fn random_alnum(len: usize) -> String {
    crate::clock::with_rng(|rng| {
        rng.sample_iter(&Alphanumeric)
            .take(len)
            .map(char::from)
            .collect()
    })
}

fn random_lower_alnum(len: usize) -> String {
    random_alnum(len).to_ascii_lowercase()
}

/// Token ids look like `at-6yEmxNAhaoQLH1Da` (token-apis.md A.0); team, pool and user ids use the same shape.
pub(crate) fn new_id(prefix: &str) -> String {
    format!("{prefix}-{}", random_alnum(16))
}

/// `version-id` of a variable: 36 lowercase hex digits, like `1aa07d63ea8ff4df941c94ca9ddfd5d2bd04` (TFC docs
/// `workspace-variables.mdx` samples).
pub(crate) fn new_version_id() -> String {
    crate::clock::with_rng(|rng| {
        (0..36)
            .map(|_| char::from_digit(rng.random_range(0..16u32), 16).expect("a hex digit"))
            .collect()
    })
}

/// Token values look like `ZgqYdzuvlv8Iyg.atlasv1.6nV7…` (14 + `.atlasv1.` + 67; token-apis.md A.0).
fn new_token_value() -> String {
    format!("{}.atlasv1.{}", random_alnum(14), random_alnum(67))
}

impl State {
    pub fn new() -> Self {
        State {
            orgs: BTreeMap::new(),
            teams: BTreeMap::new(),
            pools: BTreeMap::new(),
            workspaces: BTreeMap::new(),
            varsets: BTreeMap::new(),
            variables: Vec::new(),
            users: HashMap::new(),
            tokens: Vec::new(),
            by_value: HashMap::new(),
            create_delay: Duration::ZERO,
            fail_remaining: 0,
            fail_status: 500,
            throttle_until: None,
            multi_team_tokens: true,
            rate_windows: HashMap::new(),
            log: Vec::new(),
        }
    }

    fn add_user(
        &mut self,
        username: String,
        service: bool,
        resource: Option<ResourceRef>,
    ) -> String {
        let id = new_id("user");
        let resource = resource.unwrap_or_else(|| ResourceRef {
            id: id.clone(),
            kind: "users",
        });
        self.users.insert(
            id.clone(),
            User {
                id: id.clone(),
                username,
                service,
                resource,
            },
        );
        id
    }

    fn add_team_record(&mut self, org: &str, name: &str) -> String {
        let id = new_id("team");
        // Team service users are named `api-team-<random>` (vault plugin PR #96 `account_details.go`).
        let service_user_id = self.add_user(
            format!("api-team-{}", random_lower_alnum(10)),
            true,
            Some(ResourceRef {
                id: id.clone(),
                kind: "teams",
            }),
        );
        self.teams.insert(
            id.clone(),
            Team {
                id: id.clone(),
                name: name.to_owned(),
                org: org.to_owned(),
                service_user_id,
            },
        );
        id
    }

    /// Creates the organization, its owners team, an owner user, and returns that user's never-expiring token value.
    pub fn add_organization(&mut self, name: &str, now: DateTime<Utc>) -> String {
        assert!(
            !self.orgs.contains_key(name),
            "tfc emulator: organization {name:?} already exists"
        );
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "tfc emulator: organization names are letters, digits, '-' and '_'"
        );
        let owner_user_id = self.add_user(format!("owner-{name}"), false, None);
        // Org service users are named `api-org-<orgname>-<random>` (vault plugin PR #96 `account_details.go`).
        let service_user_id = self.add_user(
            format!("api-org-{name}-{}", random_lower_alnum(10)),
            true,
            Some(ResourceRef {
                id: name.to_owned(),
                kind: "organizations",
            }),
        );
        let owners_team_id = self.add_team_record(name, "owners");
        let ttl_policies = TtlTokenType::ALL
            .into_iter()
            .map(|token_type| TtlPolicy {
                // The id's shape is not documented (go-tfe only asserts it is not empty).
                id: new_id("ttlp"),
                token_type,
                max_ttl_ms: DEFAULT_TTL_MS,
                created_at: now,
                updated_at: now,
            })
            .collect();
        self.orgs.insert(
            name.to_owned(),
            Org {
                name: name.to_owned(),
                owners_team_id,
                owner_user_id: owner_user_id.clone(),
                service_user_id,
                max_ttl_enabled: false,
                ttl_policies,
            },
        );
        let created_by = ResourceRef {
            id: owner_user_id.clone(),
            kind: "users",
        };
        let idx = self.insert_token(
            TokenKind::User,
            name,
            None,
            None,
            Some("owners-team user token (emulator seed)".to_owned()),
            None,
            Some(owner_user_id),
            created_by,
            now,
        );
        self.tokens[idx].value.clone()
    }

    /// Adds a team; an existing team of that name in the organization is returned as is.
    pub fn add_team(&mut self, org: &str, name: &str) -> String {
        assert!(
            self.orgs.contains_key(org),
            "tfc emulator: unknown organization {org:?}"
        );
        if let Some(team) = self.teams.values().find(|t| t.org == org && t.name == name) {
            return team.id.clone();
        }
        self.add_team_record(org, name)
    }

    pub fn add_agent_pool(&mut self, org: &str, _name: &str) -> String {
        assert!(
            self.orgs.contains_key(org),
            "tfc emulator: unknown organization {org:?}"
        );
        let id = new_id("apool");
        self.pools.insert(
            id.clone(),
            Pool {
                id: id.clone(),
                org: org.to_owned(),
            },
        );
        id
    }

    /// Adds a workspace; an existing workspace of that name in the organization is returned as is.
    pub fn add_workspace(&mut self, org: &str, name: &str) -> String {
        assert!(
            self.orgs.contains_key(org),
            "tfc emulator: unknown organization {org:?}"
        );
        if let Some(ws) = self
            .workspaces
            .values()
            .find(|w| w.org == org && w.name == name)
        {
            return ws.id.clone();
        }
        let id = new_id("ws");
        self.workspaces.insert(
            id.clone(),
            Workspace {
                id: id.clone(),
                name: name.to_owned(),
                org: org.to_owned(),
            },
        );
        id
    }

    /// Adds an organization-owned variable set (not global, no priority, empty description); an existing set of
    /// that name in the organization is returned as is.
    pub fn add_varset(&mut self, org: &str, name: &str, now: DateTime<Utc>) -> String {
        assert!(
            self.orgs.contains_key(org),
            "tfc emulator: unknown organization {org:?}"
        );
        if let Some(vs) = self
            .varsets
            .values()
            .find(|v| v.org == org && v.name == name)
        {
            return vs.id.clone();
        }
        let id = new_id("varset");
        self.varsets.insert(
            id.clone(),
            Varset {
                id: id.clone(),
                name: name.to_owned(),
                org: org.to_owned(),
                description: String::new(),
                global: false,
                priority: false,
                updated_at: now,
            },
        );
        id
    }

    /// The organization of a workspace or variable set.
    pub fn owner_org(&self, kind: OwnerKind, id: &str) -> Option<&str> {
        match kind {
            OwnerKind::Workspace => self.workspaces.get(id).map(|w| w.org.as_str()),
            OwnerKind::Varset => self.varsets.get(id).map(|v| v.org.as_str()),
        }
    }

    /// The variable of a workspace or variable set (by owner id, whatever its kind) with this key and category.
    pub fn find_variable(&self, owner_id: &str, key: &str, category: &str) -> Option<usize> {
        self.variables
            .iter()
            .position(|v| v.owner_id == owner_id && v.key == key && v.category == category)
    }

    /// A variable changed: a new `version-id`, and the variable set's `updated-at`.
    pub fn touch_variable(&mut self, idx: usize, now: DateTime<Utc>) {
        let var = &mut self.variables[idx];
        var.version_id = new_version_id();
        if var.owner_kind == OwnerKind::Varset {
            if let Some(vs) = self.varsets.get_mut(&var.owner_id) {
                vs.updated_at = now;
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn insert_token(
        &mut self,
        kind: TokenKind,
        org: &str,
        team_id: Option<String>,
        pool_id: Option<String>,
        description: Option<String>,
        expired_at: Option<DateTime<Utc>>,
        user_id: Option<String>,
        created_by: ResourceRef,
        now: DateTime<Utc>,
    ) -> usize {
        let value = new_token_value();
        let idx = self.tokens.len();
        self.by_value.insert(value.clone(), idx);
        self.tokens.push(Token {
            id: new_id("at"),
            value,
            kind,
            org: org.to_owned(),
            team_id,
            pool_id,
            description,
            created_at: now,
            expired_at,
            last_used_at: None,
            ended: None,
            user_id,
            created_by,
        });
        idx
    }

    /// Mints a token of `kind` for `target` (org name, team id or pool id) with the API's semantics: singleton
    /// kinds replace their live predecessor. `created_by` is the acting resource. Returns the token's index.
    pub fn mint(
        &mut self,
        kind: TokenKind,
        target: &str,
        description: Option<String>,
        expired_at: Option<DateTime<Utc>>,
        created_by: ResourceRef,
        now: DateTime<Utc>,
    ) -> Result<usize, &'static str> {
        let (org, team_id, pool_id, user_id) = match kind {
            TokenKind::Organization | TokenKind::AuditTrails => {
                let org = self.orgs.get(target).ok_or("unknown organization")?;
                (
                    org.name.clone(),
                    None,
                    None,
                    Some(org.service_user_id.clone()),
                )
            }
            TokenKind::Team | TokenKind::TeamLegacy => {
                let team = self.teams.get(target).ok_or("unknown team")?;
                (
                    team.org.clone(),
                    Some(team.id.clone()),
                    None,
                    Some(team.service_user_id.clone()),
                )
            }
            TokenKind::Agent => {
                let pool = self.pools.get(target).ok_or("unknown agent pool")?;
                (pool.org.clone(), None, Some(pool.id.clone()), None)
            }
            TokenKind::User => {
                let org = self.orgs.get(target).ok_or("unknown organization")?;
                (
                    org.name.clone(),
                    None,
                    None,
                    Some(org.owner_user_id.clone()),
                )
            }
        };
        match kind {
            // "Generates a new organization API token, replacing any existing token." (A.1); the audit-trails
            // token is a separate singleton (A.2); a new legacy team token revokes the previous legacy one but
            // not the described ones (A.4).
            TokenKind::Organization | TokenKind::AuditTrails | TokenKind::TeamLegacy => {
                for token in &mut self.tokens {
                    if token.is_live()
                        && token.kind == kind
                        && token.org == org
                        && token.team_id == team_id
                    {
                        token.ended = Some((TokenState::Replaced, now));
                    }
                }
            }
            TokenKind::Team => {
                let taken = self.tokens.iter().any(|t| {
                    t.is_live()
                        && t.kind == TokenKind::Team
                        && t.team_id == team_id
                        && t.description == description
                });
                if taken {
                    return Err("Validation failed: Description has already been taken");
                }
            }
            TokenKind::Agent | TokenKind::User => {}
        }
        Ok(self.insert_token(
            kind,
            &org,
            team_id,
            pool_id,
            description,
            expired_at,
            user_id,
            created_by,
            now,
        ))
    }

    /// The owner user of the organization that `target` (org name, team id or pool id) belongs to.
    pub fn owner_of(&self, kind: TokenKind, target: &str) -> Option<String> {
        let org = match kind {
            TokenKind::Organization | TokenKind::AuditTrails | TokenKind::User => target,
            TokenKind::Team | TokenKind::TeamLegacy => &self.teams.get(target)?.org,
            TokenKind::Agent => &self.pools.get(target)?.org,
        };
        self.orgs.get(org).map(|o| o.owner_user_id.clone())
    }

    /// The maximum lifetime in milliseconds the organization allows for tokens of `kind`, when its
    /// `max-ttl-enabled` is on and the kind is capped (see [`TokenKind::ttl_type`]).
    pub fn max_ttl_ms(&self, org: &str, kind: TokenKind) -> Option<i64> {
        let org = self.orgs.get(org).filter(|o| o.max_ttl_enabled)?;
        let token_type = kind.ttl_type()?;
        org.ttl_policies
            .iter()
            .find(|p| p.token_type == token_type)
            .map(|p| p.max_ttl_ms)
    }

    /// "Existing tokens that exceed newly configured limits will stop working and return an unauthorized error"
    /// (tfe provider `org_max_token_ttl_policy.html.markdown`): the token's lifetime, `expired-at` − `created-at`,
    /// is over its organization's limit for its type. A capped token without an expiry is always over.
    pub fn over_max_ttl(&self, token: &Token) -> bool {
        self.max_ttl_ms(&token.org, token.kind)
            .is_some_and(|limit| match token.expired_at {
                Some(at) => (at - token.created_at).num_milliseconds() > limit,
                None => true,
            })
    }

    /// The token authenticates now: live, unexpired, and within its organization's maximum TTL.
    pub fn usable(&self, idx: usize, now: DateTime<Utc>) -> bool {
        let token = &self.tokens[idx];
        token.is_valid_at(now) && !self.over_max_ttl(token)
    }

    /// [`Token::info`], with [`TokenState::OverMaxTtl`] for a token the maximum-TTL policy rejects.
    pub fn info(&self, idx: usize, now: DateTime<Utc>) -> TokenInfo {
        let token = &self.tokens[idx];
        let mut info = token.info(now);
        if info.state == TokenState::Active && self.over_max_ttl(token) {
            info.state = TokenState::OverMaxTtl;
        }
        info
    }

    pub fn lookup_value(&self, value: &str) -> Option<usize> {
        self.by_value.get(value).copied()
    }

    /// Index of the live (not revoked/replaced) token with this id.
    pub fn live_by_id(&self, id: &str) -> Option<usize> {
        self.tokens.iter().position(|t| t.id == id && t.is_live())
    }

    pub fn any_by_id(&self, id: &str) -> Option<usize> {
        self.tokens.iter().position(|t| t.id == id)
    }

    /// The live singleton token of `kind` for an org (or a team, for legacy team tokens).
    pub fn live_singleton(
        &self,
        kind: TokenKind,
        org: &str,
        team_id: Option<&str>,
    ) -> Option<usize> {
        self.tokens.iter().position(|t| {
            t.is_live() && t.kind == kind && t.org == org && t.team_id.as_deref() == team_id
        })
    }

    // --- Who may do what (token-apis.md A.8). Forbidden requests answer 404, like the real API (A.0). ---

    /// The owners-team user token, or a token of the owners team itself.
    pub fn is_owner(&self, caller: &Token, org: &str) -> bool {
        let Some(o) = self.orgs.get(org) else {
            return false;
        };
        match caller.kind {
            TokenKind::User => caller.user_id.as_deref() == Some(o.owner_user_id.as_str()),
            TokenKind::Team | TokenKind::TeamLegacy => {
                caller.org == org && caller.team_id.as_deref() == Some(o.owners_team_id.as_str())
            }
            _ => false,
        }
    }

    /// "Only members of the owners team, the owners team API token, and the organization API token can access
    /// this endpoint." (TFC docs `organization-tokens.mdx`, `audit-trails-tokens.mdx`; A.1, A.2). Org tokens may
    /// also manage team tokens and agent pools of their organization (A.8).
    pub fn can_administer(&self, caller: &Token, org: &str) -> bool {
        self.is_owner(caller, org) || (caller.kind == TokenKind::Organization && caller.org == org)
    }

    /// Administrators, plus a team's own tokens for that team ("Manage team tokens": team tokens 🔶, A.3; the
    /// emulator treats the team's member-token-management setting as enabled).
    pub fn can_manage_team(&self, caller: &Token, team: &Team) -> bool {
        self.can_administer(caller, &team.org)
            || (caller.kind.is_team() && caller.team_id.as_deref() == Some(&team.id))
    }

    pub fn can_manage_token(&self, caller: &Token, target: &Token) -> bool {
        match target.kind {
            TokenKind::User => caller.kind == TokenKind::User && caller.user_id == target.user_id,
            TokenKind::Organization | TokenKind::AuditTrails | TokenKind::Agent => {
                self.can_administer(caller, &target.org)
            }
            TokenKind::Team | TokenKind::TeamLegacy => target
                .team_id
                .as_deref()
                .and_then(|id| self.teams.get(id))
                .is_some_and(|team| self.can_manage_team(caller, team)),
        }
    }

    /// Sliding one-second window per principal: at most `limit` accepted requests in any second. On refusal
    /// returns how long until the oldest counted request leaves the window (`X-RateLimit-Reset`).
    pub fn rate_check(
        &mut self,
        principal: &str,
        limit: u32,
        now: Instant,
    ) -> Result<(), Duration> {
        let window = self.rate_windows.entry(principal.to_owned()).or_default();
        while window
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
        {
            window.pop_front();
        }
        if window.len() >= limit as usize {
            let oldest = *window.front().expect("limit is at least 1");
            let reset = (oldest + Duration::from_secs(1)).saturating_duration_since(now);
            return Err(reset.max(Duration::from_millis(1)));
        }
        window.push_back(now);
        Ok(())
    }
}
