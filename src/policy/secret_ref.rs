//! Secret references (`{ env = … }`, `{ file = … }`, `{ sink = …, path|secret_id = … }`) and the resolution of the
//! local ones. A value read through a reference is a `SecretString` from the moment it is read.

use std::fmt;
use std::path::PathBuf;

use super::Target;
use crate::secret::SecretString;

/// Where a credential comes from. Never holds the credential itself.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretRef {
    Env(String),
    File(PathBuf),
    /// The `token` field of a record this daemon stored in a sink.
    Sink {
        sink: String,
        target: Target,
    },
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::Env(name) => write!(f, "env {name}"),
            SecretRef::File(path) => write!(f, "file {}", path.display()),
            SecretRef::Sink { sink, target } => write!(f, "sink {sink} {target}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("environment variable {0} is not set or not valid UTF-8")]
    EnvMissing(String),
    #[error("cannot read secret file {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("secret file {0} is not valid UTF-8")]
    FileNotUtf8(PathBuf),
    #[error("secret from {0} is empty")]
    Empty(String),
    #[error("cannot read secret from sink {sink}: {message}")]
    Sink { sink: String, message: String },
}

impl SecretRef {
    /// Resolves `env` and `file` references. Sink references are resolved by the caller, which owns the sinks.
    pub fn resolve_local(&self) -> Result<SecretString, SecretError> {
        let value = match self {
            SecretRef::Env(name) => {
                std::env::var(name).map_err(|_| SecretError::EnvMissing(name.clone()))?
            }
            SecretRef::File(path) => {
                let path = expand_credentials_dir(path);
                let bytes = std::fs::read(&path).map_err(|source| SecretError::File {
                    path: path.clone(),
                    source,
                })?;
                let mut text =
                    String::from_utf8(bytes).map_err(|_| SecretError::FileNotUtf8(path.clone()))?;
                // SPEC §3: one trailing newline is trimmed.
                if text.ends_with('\n') {
                    text.pop();
                    if text.ends_with('\r') {
                        text.pop();
                    }
                }
                text
            }
            SecretRef::Sink { sink, .. } => {
                return Err(SecretError::Sink {
                    sink: sink.clone(),
                    message: "sink references are resolved through the sink".into(),
                })
            }
        };
        if value.is_empty() {
            return Err(SecretError::Empty(self.to_string()));
        }
        Ok(SecretString::from(value))
    }
}

/// `$CREDENTIALS_DIRECTORY/…` in a file reference reads systemd's `LoadCredential=` directory.
fn expand_credentials_dir(path: &std::path::Path) -> PathBuf {
    let text = path.to_string_lossy();
    if let Some(rest) = text.strip_prefix("$CREDENTIALS_DIRECTORY/") {
        if let Ok(dir) = std::env::var("CREDENTIALS_DIRECTORY") {
            return PathBuf::from(dir).join(rest);
        }
    }
    path.to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::ExposeSecret;

    #[test]
    fn file_reference_trims_one_newline() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        std::fs::write(&p, "abc\n\n").unwrap();
        let s = SecretRef::File(p).resolve_local().unwrap();
        assert_eq!(s.expose_secret(), "abc\n");
    }

    #[test]
    fn debug_of_secret_string_is_redacted() {
        let s = SecretString::from("super-secret-value".to_string());
        assert!(!format!("{s:?}").contains("super-secret-value"));
    }
}
