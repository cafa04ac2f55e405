//! The emulated state: repositories, environments, organizations, their sealed-box key pairs and secrets, and the
//! tokens that may reach them. Everything here runs under the emulator's one lock.

use std::collections::{BTreeMap, HashMap};

use base64::Engine as _;
use chrono::{DateTime, Utc};
use crypto_box::SecretKey;

use super::SecretInfo;

/// GitHub's documented size limit for one secret ("Secrets are limited to 48 KB in size").
pub const MAX_SECRET_BYTES: usize = 48 * 1024;

/// One sealed-box key pair of a repository, environment or organization.
pub struct KeyPair {
    pub id: String,
    secret: SecretKey,
    /// Base64 (standard, padded) of the 32-byte X25519 public key.
    pub public_b64: String,
}

impl KeyPair {
    /// A fresh pair from the emulator's generator (seeded inside a simulation), with a numeric `key_id` like
    /// GitHub's (`"568250167242549743"`) that differs from `previous`.
    fn generate(previous: Option<&str>) -> KeyPair {
        let mut bytes = [0u8; crypto_box::KEY_SIZE];
        let mut id = String::new();
        crate::clock::with_rng(|r| {
            r.fill_bytes(&mut bytes);
            loop {
                id = (100_000_000_000_000_000 + r.next_u64() % 900_000_000_000_000_000).to_string();
                if Some(id.as_str()) != previous {
                    break;
                }
            }
        });
        let secret = SecretKey::from_bytes(bytes);
        let public_b64 =
            base64::engine::general_purpose::STANDARD.encode(secret.public_key().as_bytes());
        KeyPair {
            id,
            secret,
            public_b64,
        }
    }

    /// Opens a sealed box addressed to this key.
    pub fn unseal(&self, ciphertext: &[u8]) -> Option<Vec<u8>> {
        self.secret.unseal(ciphertext).ok()
    }
}

/// One stored secret (the decrypted value: what a workflow would see).
#[derive(Clone)]
pub struct Secret {
    pub name: String,
    pub value: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub key_id: String,
    pub visibility: Option<String>,
    pub selected_repository_ids: Vec<u64>,
}

impl Secret {
    pub fn info(&self) -> SecretInfo {
        SecretInfo {
            name: self.name.clone(),
            value: self.value.clone(),
            created_at: self.created_at,
            updated_at: self.updated_at,
            visibility: self.visibility.clone(),
            selected_repository_ids: self.selected_repository_ids.clone(),
            key_id: self.key_id.clone(),
        }
    }
}

/// A secrets scope: its current key and its secrets, keyed by the uppercased name.
pub struct Vault {
    pub key: KeyPair,
    pub secrets: BTreeMap<String, Secret>,
}

impl Vault {
    fn new() -> Vault {
        Vault {
            key: KeyPair::generate(None),
            secrets: BTreeMap::new(),
        }
    }

    fn rotate(&mut self) -> String {
        self.key = KeyPair::generate(Some(&self.key.id));
        self.key.id.clone()
    }
}

pub struct Environment {
    pub vault: Vault,
}

pub struct Repo {
    pub id: u64,
    /// Lowercased owner, for organization membership.
    pub owner: String,
    pub vault: Vault,
    /// Keyed by the lowercased environment name.
    pub environments: BTreeMap<String, Environment>,
}

pub struct Org {
    /// As added (responses use it).
    pub name: String,
    pub vault: Vault,
}

/// What a token may reach.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Grant {
    /// `owner/name`, lowercased.
    Repo(String),
    /// Organization (or owner) login, lowercased: the org itself and every repository it owns.
    Org(String),
}

pub struct Token {
    /// Reported in the primary rate-limit message ("API rate limit exceeded for user ID …").
    pub user_id: u64,
    grants: Vec<Grant>,
}

/// A scope addressed by the API or a test: `repo:owner/name`, `env:owner/name:env`, `org:name`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    Repo(String),
    Env(String, String),
    Org(String),
}

impl Scope {
    /// Parses a test's scope string; names are matched case-insensitively.
    pub fn parse(s: &str) -> Option<Scope> {
        if let Some(repo) = s.strip_prefix("repo:") {
            valid_repo(repo).then(|| Scope::Repo(repo.to_ascii_lowercase()))
        } else if let Some(rest) = s.strip_prefix("env:") {
            let (repo, env) = rest.split_once(':')?;
            (valid_repo(repo) && !env.is_empty())
                .then(|| Scope::Env(repo.to_ascii_lowercase(), env.to_lowercase()))
        } else if let Some(org) = s.strip_prefix("org:") {
            (!org.is_empty() && !org.contains('/')).then(|| Scope::Org(org.to_ascii_lowercase()))
        } else {
            None
        }
    }

    /// The repository or organization whose access decides.
    fn owner_and_repo(&self) -> (&str, Option<&str>) {
        match self {
            Scope::Repo(r) | Scope::Env(r, _) => (r.split('/').next().unwrap_or_default(), Some(r)),
            Scope::Org(o) => (o, None),
        }
    }
}

fn valid_repo(full: &str) -> bool {
    matches!(full.split_once('/'), Some((o, n)) if !o.is_empty() && !n.is_empty() && !n.contains('/'))
}

#[derive(Default)]
pub struct Store {
    repos: BTreeMap<String, Repo>,
    orgs: BTreeMap<String, Org>,
    tokens: HashMap<String, Token>,
    next_repo_id: u64,
    next_user_id: u64,
    clock_offset: chrono::TimeDelta,
}

impl Store {
    /// The emulator's clock: the crate's clock (a simulation's, or the wall clock) shifted by
    /// [`Store::advance_clock`].
    pub fn now(&self) -> DateTime<Utc> {
        crate::clock::now() + self.clock_offset
    }

    pub fn advance_clock(&mut self, by: std::time::Duration) {
        let by = chrono::TimeDelta::from_std(by).unwrap_or(chrono::TimeDelta::MAX);
        self.clock_offset = self
            .clock_offset
            .checked_add(&by)
            .unwrap_or(chrono::TimeDelta::MAX);
    }

    pub fn add_token(&mut self, token: &str, scopes: &[&str]) {
        let grants: Vec<Grant> = scopes
            .iter()
            .map(|s| {
                if let Some(repo) = s.strip_prefix("repo:").filter(|r| valid_repo(r)) {
                    Grant::Repo(repo.to_ascii_lowercase())
                } else if let Some(org) = s.strip_prefix("org:").filter(|o| !o.is_empty()) {
                    Grant::Org(org.to_ascii_lowercase())
                } else {
                    panic!("github emulator: token scope must be \"repo:owner/name\" or \"org:name\", not {s:?}")
                }
            })
            .collect();
        assert!(!token.is_empty(), "github emulator: empty token");
        let next_user_id = &mut self.next_user_id;
        let entry = self.tokens.entry(token.to_string()).or_insert_with(|| {
            *next_user_id += 1;
            Token {
                user_id: 1_000_000 + *next_user_id,
                grants: Vec::new(),
            }
        });
        for g in grants {
            if !entry.grants.contains(&g) {
                entry.grants.push(g);
            }
        }
    }

    pub fn remove_token(&mut self, token: &str) {
        self.tokens.remove(token);
    }

    pub fn token(&self, token: &str) -> Option<&Token> {
        self.tokens.get(token)
    }

    pub fn add_repo(&mut self, full: &str) -> u64 {
        assert!(
            valid_repo(full),
            "github emulator: a repository is \"owner/name\", not {full:?}"
        );
        let key = full.to_ascii_lowercase();
        if let Some(r) = self.repos.get(&key) {
            return r.id;
        }
        self.next_repo_id += 1;
        let id = 500_000_000 + self.next_repo_id;
        let owner = key.split('/').next().unwrap_or_default().to_string();
        self.repos.insert(
            key,
            Repo {
                id,
                owner,
                vault: Vault::new(),
                environments: BTreeMap::new(),
            },
        );
        id
    }

    pub fn repo_id(&self, full: &str) -> Option<u64> {
        self.repos.get(&full.to_ascii_lowercase()).map(|r| r.id)
    }

    pub fn add_environment(&mut self, full: &str, env: &str) {
        assert!(!env.is_empty(), "github emulator: empty environment name");
        let repo = self
            .repos
            .get_mut(&full.to_ascii_lowercase())
            .unwrap_or_else(|| panic!("github emulator: unknown repository {full:?}"));
        repo.environments
            .entry(env.to_lowercase())
            .or_insert_with(|| Environment {
                vault: Vault::new(),
            });
    }

    pub fn add_org(&mut self, org: &str) {
        assert!(
            !org.is_empty() && !org.contains('/'),
            "github emulator: bad organization name {org:?}"
        );
        self.orgs
            .entry(org.to_ascii_lowercase())
            .or_insert_with(|| Org {
                name: org.to_string(),
                vault: Vault::new(),
            });
    }

    pub fn org_name(&self, org: &str) -> Option<&str> {
        self.orgs.get(org).map(|o| o.name.as_str())
    }

    /// Ids of the repositories `org` owns.
    pub fn org_repo_ids(&self, org: &str) -> Vec<u64> {
        self.repos
            .values()
            .filter(|r| r.owner == org)
            .map(|r| r.id)
            .collect()
    }

    /// The scope's vault, if it exists (repository, environment of an existing repository, organization).
    pub fn vault(&self, scope: &Scope) -> Option<&Vault> {
        match scope {
            Scope::Repo(r) => self.repos.get(r).map(|r| &r.vault),
            Scope::Env(r, e) => self
                .repos
                .get(r)
                .and_then(|r| r.environments.get(e))
                .map(|e| &e.vault),
            Scope::Org(o) => self.orgs.get(o).map(|o| &o.vault),
        }
    }

    pub fn vault_mut(&mut self, scope: &Scope) -> Option<&mut Vault> {
        match scope {
            Scope::Repo(r) => self.repos.get_mut(r).map(|r| &mut r.vault),
            Scope::Env(r, e) => self
                .repos
                .get_mut(r)
                .and_then(|r| r.environments.get_mut(e))
                .map(|e| &mut e.vault),
            Scope::Org(o) => self.orgs.get_mut(o).map(|o| &mut o.vault),
        }
    }

    /// A new key pair for the scope; returns its `key_id`. `None` when the scope does not exist.
    pub fn rotate_key(&mut self, scope: &Scope) -> Option<String> {
        self.vault_mut(scope).map(Vault::rotate)
    }

    /// Whether `token` may reach the scope: a `repo:` grant for that repository (and its environments), or an
    /// `org:` grant for the owner.
    pub fn may_access(&self, token: &Token, scope: &Scope) -> bool {
        let (owner, repo) = scope.owner_and_repo();
        token.grants.iter().any(|g| match g {
            Grant::Org(o) => o == owner,
            Grant::Repo(r) => Some(r.as_str()) == repo,
        })
    }
}

/// GitHub's secret-name rules (docs "Secrets reference": alphanumerics and underscores, not starting with a number
/// or the `GITHUB_` prefix, case-insensitive and stored uppercased). Returns the stored name, or the 422 message.
pub fn check_secret_name(name: &str) -> Result<String, &'static str> {
    let upper = name.to_ascii_uppercase();
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        Err("Invalid request.\n\nSecret names can only contain alphanumeric characters ([a-z], [A-Z], [0-9]) or underscores (_). Spaces are not allowed.")
    } else if name.as_bytes()[0].is_ascii_digit() {
        Err("Invalid request.\n\nSecret names must not start with a number.")
    } else if upper.starts_with("GITHUB_") {
        Err("Invalid request.\n\nSecret names must not start with the GITHUB_ prefix.")
    } else {
        Ok(upper)
    }
}

/// `^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=|[A-Za-z0-9+/]{4})$`, the `pattern` of
/// `encrypted_value` in GitHub's OpenAPI description.
pub fn matches_base64_pattern(s: &str) -> bool {
    let b = s.as_bytes();
    if b.is_empty() || !b.len().is_multiple_of(4) {
        return false;
    }
    let alpha = |c: &u8| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/';
    let pad = b.iter().rev().take_while(|c| **c == b'=').count();
    pad <= 2 && b[..b.len() - pad].iter().all(alpha)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(check_secret_name("my_token").as_deref(), Ok("MY_TOKEN"));
        assert_eq!(check_secret_name("_X1").as_deref(), Ok("_X1"));
        assert!(check_secret_name("1X").is_err());
        assert!(check_secret_name("github_token").is_err());
        assert!(check_secret_name("A-B").is_err());
        assert!(check_secret_name("A B").is_err());
        assert!(check_secret_name("").is_err());
        assert!(check_secret_name("GITHUB").is_ok());
    }

    #[test]
    fn base64_pattern() {
        assert!(matches_base64_pattern("c2VjcmV0"));
        assert!(matches_base64_pattern("YQ=="));
        assert!(matches_base64_pattern("YWI="));
        assert!(!matches_base64_pattern(""));
        assert!(!matches_base64_pattern("YQ"));
        assert!(!matches_base64_pattern("Y==="));
        assert!(!matches_base64_pattern("ainsdr-34234vsdf-dfdf"));
        assert!(!matches_base64_pattern("YQ==YQ=="));
    }

    #[test]
    fn scopes() {
        assert_eq!(
            Scope::parse("repo:Acme/App"),
            Some(Scope::Repo("acme/app".into()))
        );
        assert_eq!(
            Scope::parse("env:acme/app:Prod"),
            Some(Scope::Env("acme/app".into(), "prod".into()))
        );
        assert_eq!(Scope::parse("org:Acme"), Some(Scope::Org("acme".into())));
        assert_eq!(Scope::parse("repo:acme"), None);
        assert_eq!(Scope::parse("team:x"), None);
    }
}
