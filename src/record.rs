//! The record every sink target holds (SPEC §4): one JSON object with the token and what the daemon knows of it.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::secret::{ExposeSecret, SecretString};

/// The token currently in the sinks, as far as the daemon knows (never its value).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CurrentToken {
    pub token_id: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// A token an issuer just created, as the rotation and its journal keep it. `Debug` never shows the value; it is
/// serialised only into the journal entry (0600, sealed when `state_key` is set).
#[derive(Clone, Serialize, Deserialize)]
pub struct MintedToken {
    #[serde(serialize_with = "expose")]
    pub value: SecretString,
    pub token_id: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
}

fn expose<S: serde::Serializer>(s: &SecretString, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(s.expose_secret())
}

impl std::fmt::Debug for MintedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MintedToken")
            .field("value", &"[REDACTED]")
            .field("token_id", &self.token_id)
            .field("created_at", &self.created_at)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// What lands in a sink. `Debug` never shows the token value.
#[derive(Clone)]
pub struct SinkRecord {
    pub token: SecretString,
    pub token_id: String,
    pub issuer: String,
    pub token_type: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for SinkRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkRecord")
            .field("token", &"[REDACTED]")
            .field("token_id", &self.token_id)
            .field("issuer", &self.issuer)
            .field("type", &self.token_type)
            .field("created_at", &self.created_at)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

impl SinkRecord {
    /// The JSON object written to a sink. This is one of the few places a token value is exposed.
    pub fn to_json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert(
            "token".into(),
            Value::String(self.token.expose_secret().to_string()),
        );
        m.insert("token_id".into(), Value::String(self.token_id.clone()));
        m.insert("issuer".into(), Value::String(self.issuer.clone()));
        m.insert("type".into(), Value::String(self.token_type.clone()));
        m.insert("created_at".into(), Value::String(rfc3339(self.created_at)));
        m.insert(
            "expires_at".into(),
            self.expires_at
                .map(|t| Value::String(rfc3339(t)))
                .unwrap_or(Value::Null),
        );
        m
    }

    /// Parses a record read from a sink; the error says what is wrong without quoting any value.
    pub fn from_json(m: &Map<String, Value>) -> Result<Self, String> {
        let text = |key: &str| -> Result<String, String> {
            match m.get(key) {
                Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
                Some(_) => Err(format!("`{key}` is not a non-empty string")),
                None => Err(format!("`{key}` is missing")),
            }
        };
        let time = |key: &str, s: &str| -> Result<DateTime<Utc>, String> {
            DateTime::parse_from_rfc3339(s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| format!("`{key}` is not an RFC 3339 time"))
        };
        let token = SecretString::from(text("token")?);
        let created_at = time("created_at", &text("created_at")?)?;
        let expires_at = match m.get("expires_at") {
            Some(Value::Null) => None,
            Some(Value::String(s)) => Some(time("expires_at", s)?),
            Some(_) => return Err("`expires_at` is neither a string nor null".into()),
            None => return Err("`expires_at` is missing".into()),
        };
        Ok(SinkRecord {
            token,
            token_id: text("token_id")?,
            issuer: text("issuer")?,
            token_type: text("type")?,
            created_at,
            expires_at,
        })
    }

    /// Same content, token value included (used to confirm a read-back).
    pub fn same_as(&self, other: &SinkRecord) -> bool {
        self.token.expose_secret() == other.token.expose_secret()
            && self.token_id == other.token_id
            && self.issuer == other.issuer
            && self.token_type == other.token_type
            && self.created_at == other.created_at
            && self.expires_at == other.expires_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SinkRecord {
        SinkRecord {
            token: SecretString::from("tok-VALUE-123".to_string()),
            token_id: "at-1".into(),
            issuer: "tfc".into(),
            token_type: "organization".into(),
            created_at: "2026-01-01T00:00:00.123Z".parse().unwrap(),
            expires_at: Some("2026-02-01T00:00:00Z".parse().unwrap()),
        }
    }

    #[test]
    fn round_trips_and_matches_spec_keys() {
        let r = sample();
        let json = r.to_json();
        let keys: Vec<&str> = json.keys().map(String::as_str).collect();
        assert_eq!(keys.len(), 6);
        for k in [
            "token",
            "token_id",
            "issuer",
            "type",
            "created_at",
            "expires_at",
        ] {
            assert!(keys.contains(&k));
        }
        assert_eq!(json["expires_at"], "2026-02-01T00:00:00Z");
        assert!(SinkRecord::from_json(&json).unwrap().same_as(&r));
    }

    #[test]
    fn debug_is_redacted() {
        assert!(!format!("{:?}", sample()).contains("tok-VALUE-123"));
    }

    #[test]
    fn garbage_is_rejected_without_quoting_values() {
        let mut m = Map::new();
        m.insert("token".into(), Value::String("leaky-value".into()));
        let err = SinkRecord::from_json(&m).unwrap_err();
        assert!(!err.contains("leaky-value"));
    }
}
