//! The token types of Pulumi Cloud (`kind = "pulumi"`) and their policy keys (SPEC §3 "Token types";
//! token-apis.md Part B).

use std::any::Any;
use std::time::Duration;

use serde_spanned::Spanned;

use crate::policy::diag::Diagnostics;
use crate::policy::fields::{non_empty, required};
use crate::policy::kinds::{same_as, IssuerSpec, KeyType, TokenKind, TokenType};
use crate::policy::reader::TableReader;

/// Names are `<name_prefix>-<YYYYMMDDhhmmss>`, at most 40 characters (SPEC §3): the prefix takes at most 25.
pub const MAX_NAME_PREFIX: usize = 25;
/// Pulumi caps token expiry at two years (Pulumi docs, access-tokens.md).
const MAX_LIFETIME: Duration = Duration::from_secs(730 * 86_400);

/// What one Pulumi policy token regenerates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PulumiType {
    /// An organization token (managed only with an org admin's personal token).
    Organization {
        organization: String,
        admin: bool,
        role_id: Option<String>,
    },
    /// A team token, the team addressed by name.
    Team { organization: String, team: String },
    /// A personal access token of the calling user.
    Personal,
}

impl TokenType for PulumiType {
    /// Every Pulumi token's list entry carries `lastUsed`.
    fn shows_last_use(&self) -> bool {
        true
    }

    fn type_name(&self) -> &'static str {
        match self {
            PulumiType::Organization { .. } => "organization",
            PulumiType::Team { .. } => "team",
            PulumiType::Personal => "personal",
        }
    }

    /// Org and team token names share one namespace per organization; personal tokens are the credential's user's
    /// (issuer tables at one address may hold one user's credential).
    fn label_scope(&self, address: &str) -> Option<String> {
        Some(match self {
            PulumiType::Organization { organization, .. }
            | PulumiType::Team { organization, .. } => {
                format!("Pulumi organization \"{organization}\" at {address}")
            }
            PulumiType::Personal => format!("personal tokens at {address}"),
        })
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn same_as(&self, other: &dyn TokenType) -> bool {
        same_as(self, other)
    }
}

/// The policy side of `kind = "pulumi"`.
pub struct PulumiSpec;

impl IssuerSpec for PulumiSpec {
    fn name(&self) -> &'static str {
        "pulumi"
    }

    fn title(&self) -> &'static str {
        "Pulumi"
    }

    fn default_address(&self) -> &'static str {
        "https://api.pulumi.com"
    }

    fn types(&self) -> &'static [&'static str] {
        &["organization", "team", "personal"]
    }

    fn type_keys(&self) -> &'static [(&'static str, KeyType)] {
        &[
            ("organization", KeyType::Str),
            ("team", KeyType::Str),
            ("admin", KeyType::Bool),
            ("role_id", KeyType::Str),
        ]
    }

    fn read_type(&self, ty: &str, t: &mut TableReader, d: &mut Diagnostics) -> Option<TokenKind> {
        let req = required;
        let kind = match ty {
            "organization" => {
                let organization = req(t, d, "organization");
                let admin = t
                    .opt_bool(d, "admin")
                    .map(Spanned::into_inner)
                    .unwrap_or(false);
                let role_id = t
                    .opt_str(d, "role_id")
                    .and_then(|r| non_empty(d, r, "role_id"));
                PulumiType::Organization {
                    organization: organization?,
                    admin,
                    role_id,
                }
            }
            "team" => {
                let organization = req(t, d, "organization");
                let team = req(t, d, "team");
                PulumiType::Team {
                    organization: organization?,
                    team: team?,
                }
            }
            "personal" => PulumiType::Personal,
            _ => return None,
        };
        Some(TokenKind::new(kind))
    }

    fn label_key(&self) -> &'static str {
        "name_prefix"
    }

    fn read_label(
        &self,
        t: &mut TableReader,
        d: &mut Diagnostics,
        token_name: &str,
    ) -> Option<String> {
        let allowed = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
        match t.opt_str(d, "name_prefix") {
            Some(s) => {
                let text = s.get_ref();
                if text.is_empty()
                    || text.chars().count() > MAX_NAME_PREFIX
                    || !text.chars().all(allowed)
                {
                    d.push(
                        s.span(),
                        format!(
                            "`name_prefix` in {} must be 1 to {MAX_NAME_PREFIX} characters of A-Z, a-z, 0-9, `-`, `_`, `.` (names are `<name_prefix>-<YYYYMMDDhhmmss>`, at most 40 characters)",
                            t.name
                        ),
                    );
                    None
                } else {
                    Some(s.into_inner())
                }
            }
            None => Some(
                token_name
                    .chars()
                    .map(|c| if allowed(c) { c } else { '-' })
                    .take(MAX_NAME_PREFIX)
                    .collect(),
            ),
        }
    }

    fn sweep_label(&self, label: &str) -> String {
        label.chars().take(MAX_NAME_PREFIX).collect()
    }

    fn check_lifetime(&self, lifetime: Duration) -> Result<(), String> {
        if lifetime > MAX_LIFETIME {
            return Err("exceeds Pulumi's maximum of two years (730d)".into());
        }
        Ok(())
    }
}
