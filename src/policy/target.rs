//! Where in a sink a token's record lives: a target, and a sink paired with a target.

use std::fmt;

/// Where in a sink a record lives.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// Vault KV path or file path.
    Path(String),
    /// AWS Secrets Manager secret id.
    SecretId(String),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Path(p) => write!(f, "{p}"),
            Target::SecretId(s) => write!(f, "{s}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SinkTarget {
    pub sink: String,
    pub target: Target,
}

impl std::fmt::Display for SinkTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.sink, self.target)
    }
}
