//! Where in a sink a token's record lives: a target, and a sink paired with a target. Record targets hold the
//! SPEC §4 record the daemon learns its state from; delivery targets (SPEC §11) hold the bare token for a consumer.

use std::fmt;

/// Where in a sink a token goes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// Vault KV path or file path: the record.
    Path(String),
    /// AWS Secrets Manager secret id: the record.
    SecretId(String),
    /// A file holding the bare token (`format = "token"`).
    TokenFile(String),
    /// An HCP Terraform / TFE variable (`tfe-variable`). Boxed, as the GitHub secret: the record targets every
    /// token has stay a string's size (issue 19).
    TfeVariable(Box<TfeVariable>),
    /// A GitHub Actions secret (`github-actions`).
    GithubSecret(Box<GithubSecret>),
}

impl Target {
    /// A delivery target (SPEC §11): it holds the bare token, never the record, so the daemon cannot learn a
    /// token's state from it.
    pub fn is_delivery(&self) -> bool {
        matches!(
            self,
            Target::TokenFile(_) | Target::TfeVariable(_) | Target::GithubSecret(_)
        )
    }

    /// What two targets must not share (one token per place): a file is one file whatever its format, an
    /// organization secret is one secret whatever visibility each token would give it, and GitHub compares names
    /// without case.
    pub fn identity(&self) -> Target {
        match self {
            Target::TokenFile(p) => Target::Path(p.clone()),
            Target::GithubSecret(s) => Target::GithubSecret(Box::new(GithubSecret {
                scope: match &s.scope {
                    GithubScope::Organization { org, .. } => GithubScope::Organization {
                        org: org.to_ascii_lowercase(),
                        visibility: Visibility::All,
                        selected: Vec::new(),
                    },
                    GithubScope::Repository(r) => GithubScope::Repository(r.to_ascii_lowercase()),
                    GithubScope::Environment {
                        repository,
                        environment,
                    } => GithubScope::Environment {
                        repository: repository.to_ascii_lowercase(),
                        environment: environment.to_lowercase(),
                    },
                },
                // GitHub matches secret names case-insensitively.
                name: s.name.to_ascii_uppercase(),
            })),
            Target::TfeVariable(v) => Target::TfeVariable(Box::new(TfeVariable {
                token: String::new(),
                ..(**v).clone()
            })),
            other => other.clone(),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Path(p) | Target::TokenFile(p) => write!(f, "{p}"),
            Target::SecretId(s) => write!(f, "{s}"),
            Target::TfeVariable(v) => write!(f, "{v}"),
            Target::GithubSecret(s) => write!(f, "{s}"),
        }
    }
}

/// Where a TFC variable lives.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum VarOwner {
    /// `workspace_id = "ws-…"`: `/api/v2/workspaces/:id/vars`.
    Workspace(String),
    /// `varset_id = "varset-…"`: `/api/v2/varsets/:id/relationships/vars`.
    Varset(String),
}

/// `category`: how a run sees the variable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum VarCategory {
    /// An environment variable of the run (`TFE_TOKEN`).
    Env,
    /// A Terraform input variable.
    Terraform,
}

impl VarCategory {
    pub fn as_str(self) -> &'static str {
        match self {
            VarCategory::Env => "env",
            VarCategory::Terraform => "terraform",
        }
    }
}

/// A sensitive TFC variable holding the bare token; its key and category identify it in its workspace or set.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TfeVariable {
    pub owner: VarOwner,
    pub key: String,
    pub category: VarCategory,
    /// The policy token written there, named in the variable's description.
    pub token: String,
}

impl fmt::Display for TfeVariable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let owner = match &self.owner {
            VarOwner::Workspace(id) | VarOwner::Varset(id) => id,
        };
        write!(f, "{owner}/{}/{}", self.category.as_str(), self.key)
    }
}

/// Which repositories of the organization see an organization secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Visibility {
    All,
    Private,
    Selected,
}

impl Visibility {
    pub fn as_str(self) -> &'static str {
        match self {
            Visibility::All => "all",
            Visibility::Private => "private",
            Visibility::Selected => "selected",
        }
    }
}

/// Whose secret it is.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GithubScope {
    /// `repository = "owner/name"`.
    Repository(String),
    /// `repository` + `environment`.
    Environment {
        repository: String,
        environment: String,
    },
    /// `organization` + `visibility` (+ `selected_repository_ids` with `selected`).
    Organization {
        org: String,
        visibility: Visibility,
        selected: Vec<u64>,
    },
}

/// A GitHub Actions secret holding the bare token.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GithubSecret {
    pub scope: GithubScope,
    pub name: String,
}

impl fmt::Display for GithubSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.scope {
            GithubScope::Repository(r) => write!(f, "{r}/{}", self.name),
            GithubScope::Environment {
                repository,
                environment,
            } => write!(f, "{repository}/environments/{environment}/{}", self.name),
            GithubScope::Organization { org, .. } => write!(f, "orgs/{org}/{}", self.name),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SinkTarget {
    /// The `[sinks.*]` table; one allocation shared by every target in that sink (`tokens::Shared`).
    pub sink: std::sync::Arc<str>,
    pub target: Target,
}

impl std::fmt::Display for SinkTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.sink, self.target)
    }
}
