//! The token types of HCP Terraform / Terraform Enterprise (`kind = "tfe"`) and their policy keys (SPEC §3 "Token
//! types"; token-apis.md A.1–A.6).

use std::any::Any;

use crate::policy::diag::Diagnostics;
use crate::policy::fields::required;
use crate::policy::kinds::{same_as, IssuerSpec, KeyType, TokenKind, TokenType};
use crate::policy::reader::TableReader;

/// What one TFC policy token regenerates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TfeType {
    /// The organization token: a singleton that the create call replaces.
    Organization { organization: String },
    /// The audit-trails token (`?token=audit-trails`): a singleton, independent of the organization token.
    AuditTrails { organization: String },
    /// A team token with a description: several coexist per team.
    Team { team_id: String },
    /// The legacy (description-less) team token: a singleton per team.
    TeamLegacy { team_id: String },
    /// An agent-pool token: several coexist; never expires; cannot call the API.
    Agent { agent_pool_id: String },
}

impl TokenType for TfeType {
    fn type_name(&self) -> &'static str {
        match self {
            TfeType::Organization { .. } => "organization",
            TfeType::AuditTrails { .. } => "audit-trails",
            TfeType::Team { .. } => "team",
            TfeType::TeamLegacy { .. } => "team-legacy",
            TfeType::Agent { .. } => "agent",
        }
    }

    fn is_singleton(&self) -> bool {
        matches!(
            self,
            TfeType::Organization { .. } | TfeType::AuditTrails { .. } | TfeType::TeamLegacy { .. }
        )
    }

    fn expires(&self) -> bool {
        !matches!(self, TfeType::Agent { .. })
    }

    fn can_prove_itself(&self) -> bool {
        !matches!(self, TfeType::Agent { .. })
    }

    /// Team and agent tokens carry `last-used-at`; singletons are replaced at create time.
    fn shows_last_use(&self) -> bool {
        matches!(self, TfeType::Team { .. } | TfeType::Agent { .. })
    }

    /// The sweep reads one team's or one pool's tokens; singletons are replaced in place and never swept.
    fn label_scope(&self, address: &str) -> Option<String> {
        match self {
            TfeType::Team { team_id } => Some(format!("team {team_id} at {address}")),
            TfeType::Agent { agent_pool_id, .. } => {
                Some(format!("agent pool {agent_pool_id} at {address}"))
            }
            _ => None,
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn same_as(&self, other: &dyn TokenType) -> bool {
        same_as(self, other)
    }
}

/// The policy side of `kind = "tfe"`.
pub struct TfeSpec;

/// The longest `description` TFC takes (with room for the timestamp the daemon appends).
const MAX_DESCRIPTION: usize = 80;

impl IssuerSpec for TfeSpec {
    fn name(&self) -> &'static str {
        "tfe"
    }

    fn title(&self) -> &'static str {
        "TFC"
    }

    fn default_address(&self) -> &'static str {
        "https://app.terraform.io"
    }

    fn types(&self) -> &'static [&'static str] {
        &[
            "organization",
            "audit-trails",
            "team",
            "team-legacy",
            "agent",
        ]
    }

    fn type_keys(&self) -> &'static [(&'static str, KeyType)] {
        &[
            ("organization", KeyType::Str),
            ("team_id", KeyType::Str),
            ("agent_pool_id", KeyType::Str),
        ]
    }

    fn read_type(&self, ty: &str, t: &mut TableReader, d: &mut Diagnostics) -> Option<TokenKind> {
        let req = required;
        let kind = match ty {
            "organization" => TfeType::Organization {
                organization: req(t, d, "organization")?,
            },
            "audit-trails" => TfeType::AuditTrails {
                organization: req(t, d, "organization")?,
            },
            "team" => TfeType::Team {
                team_id: req(t, d, "team_id")?,
            },
            "team-legacy" => TfeType::TeamLegacy {
                team_id: req(t, d, "team_id")?,
            },
            "agent" => TfeType::Agent {
                agent_pool_id: req(t, d, "agent_pool_id")?,
            },
            _ => return None,
        };
        Some(TokenKind::new(kind))
    }

    fn label_key(&self) -> &'static str {
        "description"
    }

    fn read_label(
        &self,
        t: &mut TableReader,
        d: &mut Diagnostics,
        token_name: &str,
    ) -> Option<String> {
        match t.opt_str(d, "description") {
            Some(s)
                if s.get_ref().trim().is_empty()
                    || s.get_ref().chars().count() > MAX_DESCRIPTION =>
            {
                d.push(
                    s.span(),
                    format!(
                        "`description` in {} must be 1 to {MAX_DESCRIPTION} characters",
                        t.name
                    ),
                );
                None
            }
            Some(s) => Some(s.into_inner()),
            None => Some(format!("token-rotator {token_name}")),
        }
    }
}
