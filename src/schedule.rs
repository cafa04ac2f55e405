//! Schedule maths: pure functions of `now` (no clock reads here), so every rule is table-testable.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use crate::policy::Schedule;
use crate::record::rfc3339;
use crate::status::CurrentToken;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DueReason {
    /// No sink holds a record: rotate at start-up.
    NoRecord,
    /// The sinks hold different tokens (or some hold none).
    SinksDisagree,
    /// `rotate_before` reached ahead of expiry.
    Expiry {
        expires_at: DateTime<Utc>,
        rotate_before: Duration,
    },
    /// The current token already expired.
    Expired { expires_at: DateTime<Utc> },
    /// `every` since the last rotation.
    Every {
        last: DateTime<Utc>,
        every: Duration,
    },
    /// Neither applies (a type that never expires without `every`).
    Never,
}

impl fmt::Display for DueReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use crate::policy::duration::render;
        match self {
            DueReason::NoRecord => write!(f, "no record in the sinks: rotate at start-up"),
            DueReason::SinksDisagree => write!(f, "the sinks do not all hold the current token"),
            DueReason::Expiry {
                expires_at,
                rotate_before,
            } => write!(
                f,
                "expires at {}, rotate {} before",
                rfc3339(*expires_at),
                render(*rotate_before)
            ),
            DueReason::Expired { expires_at } => write!(f, "expired at {}", rfc3339(*expires_at)),
            DueReason::Every { last, every } => {
                write!(
                    f,
                    "every {} since the last rotation at {}",
                    render(*every),
                    rfc3339(*last)
                )
            }
            DueReason::Never => write!(f, "nothing schedules a rotation"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Due {
    /// `None` only for `DueReason::Never`.
    pub at: Option<DateTime<Utc>>,
    pub reason: DueReason,
}

impl Due {
    pub fn is_due(&self, now: DateTime<Utc>) -> bool {
        self.at.is_some_and(|at| at <= now)
    }
}

fn delta(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

/// When the token whose current state is `current` must next be rotated.
///
/// `jitter_offset` is the random delay (≤ the policy's `jitter`) drawn for this token's current cycle. A due time
/// in the past means "now" (after a suspend the rotation happens at once, once).
pub fn next_due(
    schedule: &Schedule,
    current: Option<&CurrentToken>,
    jitter_offset: Duration,
    now: DateTime<Utc>,
) -> Due {
    let Some(cur) = current else {
        return Due {
            at: Some(now),
            reason: DueReason::NoRecord,
        };
    };
    if let Some(exp) = cur.expires_at {
        if exp <= now {
            return Due {
                at: Some(now),
                reason: DueReason::Expired { expires_at: exp },
            };
        }
    }
    let by_expiry = match (cur.expires_at, schedule.rotate_before) {
        (Some(exp), Some(rb)) => Some((
            exp - delta(rb),
            DueReason::Expiry {
                expires_at: exp,
                rotate_before: rb,
            },
        )),
        _ => None,
    };
    let by_every = schedule.every.map(|every| {
        (
            cur.created_at + delta(every),
            DueReason::Every {
                last: cur.created_at,
                every,
            },
        )
    });
    let chosen = match (by_expiry, by_every) {
        (Some(a), Some(b)) => Some(if b.0 < a.0 { b } else { a }),
        (a, b) => a.or(b),
    };
    match chosen {
        None => Due {
            at: None,
            reason: DueReason::Never,
        },
        Some((at, reason)) => {
            let mut at = at + delta(jitter_offset);
            // Jitter never pushes a rotation past expiry.
            if let Some(exp) = cur.expires_at {
                at = at.min(exp);
            }
            Due {
                at: Some(at.max(now)),
                reason,
            }
        }
    }
}

/// A random offset in `[0, jitter]`.
pub fn draw_jitter(jitter: Duration) -> Duration {
    if jitter.is_zero() {
        return Duration::ZERO;
    }
    jitter.mul_f64(rand::random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }
    const DAY: u64 = 86_400;
    fn sched(lifetime_d: u64, rb_d: u64, every_d: Option<u64>) -> Schedule {
        Schedule {
            lifetime: Some(Duration::from_secs(lifetime_d * DAY)),
            rotate_before: Some(Duration::from_secs(rb_d * DAY)),
            every: every_d.map(|d| Duration::from_secs(d * DAY)),
            jitter: Duration::ZERO,
            grace: Duration::from_secs(3600),
        }
    }
    fn cur(created: &str, expires: Option<&str>) -> CurrentToken {
        CurrentToken {
            token_id: "at-1".into(),
            created_at: t(created),
            expires_at: expires.map(t),
        }
    }

    #[test]
    fn table() {
        let now = t("2026-06-10T00:00:00Z");
        type Case = (
            &'static str,
            Schedule,
            Option<CurrentToken>,
            Option<&'static str>,
            &'static str,
        );
        let cases: Vec<Case> = vec![
            (
                "no record",
                sched(30, 10, None),
                None,
                Some("2026-06-10T00:00:00Z"),
                "no record",
            ),
            (
                "expiry-based",
                sched(30, 10, None),
                Some(cur("2026-06-01T00:00:00Z", Some("2026-07-01T00:00:00Z"))),
                Some("2026-06-21T00:00:00Z"),
                "expires",
            ),
            (
                "every comes first",
                sched(30, 10, Some(7)),
                Some(cur("2026-06-01T00:00:00Z", Some("2026-07-01T00:00:00Z"))),
                Some("2026-06-10T00:00:00Z"),
                "every",
            ),
            (
                "expiry comes first despite every",
                sched(30, 10, Some(25)),
                Some(cur("2026-06-01T00:00:00Z", Some("2026-07-01T00:00:00Z"))),
                Some("2026-06-21T00:00:00Z"),
                "expires",
            ),
            (
                "already expired: at once",
                sched(30, 10, None),
                Some(cur("2026-05-01T00:00:00Z", Some("2026-06-01T00:00:00Z"))),
                Some("2026-06-10T00:00:00Z"),
                "expired",
            ),
            (
                "overdue after a suspend: now, once",
                sched(30, 10, None),
                Some(cur("2026-05-15T00:00:00Z", Some("2026-06-14T00:00:00Z"))),
                Some("2026-06-10T00:00:00Z"),
                "expires",
            ),
        ];
        for (name, s, c, want_at, want_reason) in cases {
            let due = next_due(&s, c.as_ref(), Duration::ZERO, now);
            assert_eq!(due.at, want_at.map(t), "{name}");
            assert!(
                due.reason.to_string().contains(want_reason),
                "{name}: {}",
                due.reason
            );
        }
    }

    #[test]
    fn jitter_delays_but_never_past_expiry() {
        let now = t("2026-06-10T00:00:00Z");
        let c = cur("2026-06-01T00:00:00Z", Some("2026-07-01T00:00:00Z"));
        let due = next_due(
            &sched(30, 10, None),
            Some(&c),
            Duration::from_secs(3600),
            now,
        );
        assert_eq!(due.at, Some(t("2026-06-21T01:00:00Z")));
        let due = next_due(
            &sched(30, 10, None),
            Some(&c),
            Duration::from_secs(20 * DAY),
            now,
        );
        assert_eq!(due.at, Some(t("2026-07-01T00:00:00Z")));
    }

    #[test]
    fn never_expiring_without_every_is_never_due() {
        let mut s = sched(30, 10, None);
        s.lifetime = None;
        s.rotate_before = None;
        let due = next_due(
            &s,
            Some(&cur("2026-06-01T00:00:00Z", None)),
            Duration::ZERO,
            t("2026-06-10T00:00:00Z"),
        );
        assert_eq!(due.at, None);
    }
}
