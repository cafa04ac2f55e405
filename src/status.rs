//! What the daemon knows of each token's health, shared by the scheduler, `/readyz` and `/metrics`.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use crate::record::CurrentToken;
use crate::schedule::DueReason;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenStatus {
    /// Shared with the board's key and the policy (one allocation per token name).
    pub name: Arc<str>,
    /// Shared with the policy (one allocation per issuer, not per token).
    pub issuer: Arc<str>,
    /// A `&'static` type name in the daemon (no copy per token); owned when read from the control socket.
    pub token_type: Cow<'static, str>,
    pub current: Option<CurrentToken>,
    /// Every sink target holds `current`.
    pub stored_everywhere: bool,
    pub last_success: Option<DateTime<Utc>>,
    pub consecutive_failures: u32,
    /// Why the last attempt failed; never contains a token value.
    pub last_error: Option<String>,
    pub next_due: Option<DateTime<Utc>>,
    pub next_reason: NextReason,
    /// Set while a visit is in flight that makes the stored token unusable until it ends (a singleton being
    /// replaced at the issuer): why the token is not ready meanwhile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<String>,
    /// The last use of a replaced token still in its grace (SPEC §10): a consumer that has not cut over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_last_used: Option<DateTime<Utc>>,
}

impl TokenStatus {
    pub fn new(
        name: impl Into<Arc<str>>,
        issuer: impl Into<Arc<str>>,
        token_type: &'static str,
    ) -> Self {
        TokenStatus {
            name: name.into(),
            issuer: issuer.into(),
            token_type: Cow::Borrowed(token_type),
            current: None,
            stored_everywhere: false,
            last_success: None,
            consecutive_failures: 0,
            last_error: None,
            next_due: None,
            next_reason: NextReason::NotExamined,
            pending: None,
            previous_last_used: None,
        }
    }

    /// A token rotated successfully at `now`, valid for 30 days, due again in 20, stored everywhere: the fixture of
    /// the `/metrics` render benchmark and the exposition tests.
    #[doc(hidden)]
    pub fn healthy(
        name: &str,
        issuer: &str,
        token_type: &'static str,
        token_id: &str,
        now: DateTime<Utc>,
    ) -> Self {
        TokenStatus {
            current: Some(CurrentToken {
                token_id: token_id.into(),
                created_at: now,
                expires_at: Some(now + chrono::Duration::days(30)),
            }),
            stored_everywhere: true,
            last_success: Some(now),
            next_due: Some(now + chrono::Duration::days(20)),
            ..TokenStatus::new(name, issuer, token_type)
        }
    }

    /// SPEC §7 `token_ready`: unexpired, stored in every sink, last attempt did not fail.
    pub fn is_ready(&self, now: DateTime<Utc>) -> bool {
        self.unready_reason(now).is_none()
    }

    pub fn unready_reason(&self, now: DateTime<Utc>) -> Option<String> {
        if let Some(why) = &self.pending {
            return Some(why.clone());
        }
        if self.consecutive_failures > 0 {
            return Some(format!(
                "last rotation attempt failed ({} in a row): {}",
                self.consecutive_failures,
                self.last_error.as_deref().unwrap_or("unknown error")
            ));
        }
        let Some(cur) = &self.current else {
            return Some("no token stored yet".into());
        };
        if let Some(exp) = cur.expires_at {
            if exp <= now {
                return Some(format!(
                    "current token {} expired at {}",
                    cur.token_id,
                    crate::record::rfc3339(exp)
                ));
            }
        }
        if !self.stored_everywhere {
            return Some(format!(
                "current token {} is not stored in every sink",
                cur.token_id
            ));
        }
        None
    }
}

/// Why `next_due` is when it is. Kept as the schedule's own value and rendered only when read (`status`, the
/// control socket): a rendered text per token was 0.6 MB of small long-lived allocations at 10,000 tokens, made
/// among the short-lived ones of each visit (BENCHMARKS.md, issue 19). A token with a window or `manual` still
/// keeps a small allocation (the boxed reason, the window's text). Serialized as its text, so the control socket's
/// JSON is as before either way; read back as [`NextReason::Text`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NextReason {
    /// Before the token's first visit.
    NotExamined,
    /// What the schedule said at the end of the last visit.
    Due(DueReason),
    /// The last attempt failed; retried after backoff (the count of failures in a row).
    Retry(u32),
    /// As rendered by another process (the control socket's client).
    Text(String),
}

impl fmt::Display for NextReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NextReason::NotExamined => f.write_str("not yet examined"),
            NextReason::Due(why) => why.fmt(f),
            NextReason::Retry(failures) => {
                write!(f, "retry after a failed attempt ({failures} in a row)")
            }
            NextReason::Text(text) => f.write_str(text),
        }
    }
}

impl Serialize for NextReason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for NextReason {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(NextReason::Text)
    }
}

/// Inserts the entries whose keys `map` lacks (the first of equal keys wins), in one bulk build. `BTreeMap`'s
/// inserts one at a time in key order split each full leaf in two and leave the leaves about half full (the board
/// of 10,000 tokens took 1,665 leaves, 4.9 MB); a map built from a sorted run, merged in with `append`, has full
/// ones (BENCHMARKS.md, issue 19). More than one entry rebuilds the whole map: for registering many at once.
pub fn insert_missing<K: Ord, V>(
    map: &mut BTreeMap<K, V>,
    entries: impl IntoIterator<Item = (K, V)>,
) {
    let fresh = entries
        .into_iter()
        .filter(|(k, _)| !map.contains_key(k))
        .collect();
    append_absent(map, fresh);
}

/// The bulk build of [`insert_missing`], for entries whose keys the caller found absent from `map`.
fn append_absent<K: Ord, V>(map: &mut BTreeMap<K, V>, mut fresh: Vec<(K, V)>) {
    // Stable: of equal keys the first stays first, and `dedup_by` keeps it.
    fresh.sort_by(|a, b| a.0.cmp(&b.0));
    fresh.dedup_by(|later, first| later.0 == first.0);
    if fresh.len() <= 1 {
        map.extend(fresh);
        return;
    }
    let mut packed: BTreeMap<K, V> = fresh.into_iter().collect();
    map.append(&mut packed);
}

#[derive(Clone, Debug, Default)]
pub struct StatusBoard {
    inner: Arc<RwLock<BTreeMap<Arc<str>, TokenStatus>>>,
    /// In cluster mode, this instance's role (`"leader"` or `"standby"`, SPEC §8.5); `None` without `[cluster]`.
    role: Arc<RwLock<Option<&'static str>>>,
}

impl StatusBoard {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn set_role(&self, role: &'static str) {
        *self.role.write().unwrap_or_else(|p| p.into_inner()) = Some(role);
    }

    pub fn role(&self) -> Option<&'static str> {
        *self.role.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a token's status unless the board already has one for it.
    pub fn add(&self, status: TokenStatus) {
        insert_missing(&mut self.write(), [(status.name.clone(), status)]);
    }

    /// Adds a status for each token (name, issuer, type) the board does not have yet, in one bulk build
    /// ([`insert_missing`]); a token already there is not built at all (the daemon takes on every token twice at
    /// start-up: the board is filled before `/readyz` answers).
    pub fn add_all<'a>(
        &self,
        tokens: impl IntoIterator<Item = (&'a Arc<str>, &'a Arc<str>, &'static str)>,
    ) {
        let mut board = self.write();
        let fresh: Vec<(Arc<str>, TokenStatus)> = tokens
            .into_iter()
            .filter(|(name, _, _)| !board.contains_key(&***name))
            .map(|(name, issuer, ty)| {
                (
                    name.clone(),
                    TokenStatus::new(name.clone(), issuer.clone(), ty),
                )
            })
            .collect();
        append_absent(&mut board, fresh);
    }

    pub fn remove(&self, name: &str) {
        self.write().remove(name);
    }

    pub fn update(&self, name: &str, f: impl FnOnce(&mut TokenStatus)) {
        if let Some(s) = self.write().get_mut(name) {
            f(s);
        }
    }

    pub fn get(&self, name: &str) -> Option<TokenStatus> {
        self.read().get(name).cloned()
    }

    pub fn for_each(&self, mut f: impl FnMut(&TokenStatus)) {
        for s in self.read().values() {
            f(s);
        }
    }

    /// Runs `f` over every status at once, in name order, under one read lock.
    pub fn with_all<R>(&self, f: impl FnOnce(&BTreeMap<Arc<str>, TokenStatus>) -> R) -> R {
        f(&self.read())
    }

    pub fn snapshot(&self) -> Vec<TokenStatus> {
        self.read().values().cloned().collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<Arc<str>, TokenStatus>> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<Arc<str>, TokenStatus>> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The control socket carries the reason as the text it always had: a client of another version reads it.
    #[test]
    fn the_next_reason_travels_as_its_text() {
        let expires_at = "2027-01-04T14:50:07Z".parse().unwrap();
        let cases = [
            (NextReason::NotExamined, "not yet examined"),
            (NextReason::Retry(3), "retry after a failed attempt (3 in a row)"),
            (
                NextReason::Due(DueReason::Expiry {
                    expires_at,
                    rotate_before: std::time::Duration::from_secs(7 * 86400),
                }),
                "expires at 2027-01-04T14:50:07Z, rotate 7d before",
            ),
            (
                NextReason::Due(DueReason::Manual(Box::new(DueReason::NoRecord))),
                "manual: rotated only by `token-rotator rotate` (the schedule would say: no record in the sinks: \
                 rotate at start-up)",
            ),
        ];
        for (reason, text) in cases {
            let mut s = TokenStatus::new("t", "i", "team");
            s.next_reason = reason;
            let json = serde_json::to_value(&s).unwrap();
            assert_eq!(json["next_reason"], text);
            let back: TokenStatus = serde_json::from_value(json).unwrap();
            assert_eq!(back.next_reason, NextReason::Text(text.into()));
            assert_eq!(back.next_reason.to_string(), text);
        }
    }

    #[test]
    fn insert_missing_keeps_what_is_there_and_the_first_of_equal_keys() {
        let mut map: BTreeMap<String, u32> = [("b".to_string(), 1)].into_iter().collect();
        insert_missing(
            &mut map,
            [("c", 2), ("b", 3), ("a", 4), ("c", 5)].map(|(k, v)| (k.to_string(), v)),
        );
        let got: Vec<(&str, u32)> = map.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(got, [("a", 4), ("b", 1), ("c", 2)]);
        insert_missing(&mut map, [("d".to_string(), 6)]);
        insert_missing(&mut map, []);
        assert_eq!(map.len(), 4);
        assert_eq!(map["d"], 6);
    }
}
