//! Schedule maths: pure functions of `now` (no clock reads here), so every rule is table-testable.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use crate::policy::Schedule;
use crate::record::rfc3339;
use crate::record::CurrentToken;

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
    /// Due earlier, waiting for the maintenance window that opens then.
    Window { due: Box<DueReason>, window: String },
    /// The next window opens too late (less than `min_validity` left): rotate at once.
    WindowMissed { due: Box<DueReason>, window: String },
    /// The journal says the current token is not to be trusted (why): rotate at once.
    Forced(String),
    /// `manual = true`: nothing is rotated automatically; what the schedule would say otherwise.
    Manual(Box<DueReason>),
}

impl DueReason {
    /// Whether the window could not be waited for (logged and counted by the daemon).
    pub fn window_missed(&self) -> bool {
        matches!(self, DueReason::WindowMissed { .. })
    }
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
            DueReason::Window { due, window } => write!(f, "{due}; waiting for the window `{window}`"),
            DueReason::Forced(why) => write!(f, "{why}: rotate at once"),
            DueReason::Manual(would) => write!(
                f,
                "manual: rotated only by `token-rotator rotate` (the schedule would say: {would})"
            ),
            DueReason::WindowMissed { due, window } => write!(
                f,
                "{due}; the next window `{window}` opens too late (less than min_validity would be left), rotating at once"
            ),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Due {
    /// `None` only for `DueReason::Never` and `DueReason::Manual`.
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

/// When the token whose current state is `current` must next be rotated: never by itself for a `manual` token.
///
/// `jitter_offset` is the random delay (≤ the policy's `jitter`) drawn for this token's current cycle. A due time
/// in the past means "now" (after a suspend the rotation happens at once, once).
pub fn next_due(
    schedule: &Schedule,
    current: Option<&CurrentToken>,
    jitter_offset: Duration,
    now: DateTime<Utc>,
) -> Due {
    let due = scheduled(schedule, current, jitter_offset, now);
    if schedule.manual {
        manual(due)
    } else {
        due
    }
}

/// A due time for a `manual` token: none, with the reason it would have had.
pub fn manual(due: Due) -> Due {
    Due {
        at: None,
        reason: DueReason::Manual(Box::new(due.reason)),
    }
}

fn scheduled(
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
            let at = at.max(now);
            match &schedule.window {
                None => Due {
                    at: Some(at),
                    reason,
                },
                Some(w) => apply_window(w, schedule.min_validity, cur.expires_at, at, reason),
            }
        }
    }
}

/// Moves a due time into the next maintenance window, unless that would leave less than `min_validity`.
fn apply_window(
    w: &crate::policy::Window,
    min_validity: Option<Duration>,
    expires_at: Option<DateTime<Utc>>,
    at: DateTime<Utc>,
    reason: DueReason,
) -> Due {
    let local = at.with_timezone(&w.timezone);
    // Inside a window that opened at or before `at` and is still open: go now.
    if let Ok(open) = w.cron.find_previous_occurrence(&local, true) {
        if at < open.with_timezone(&Utc) + delta(w.duration) {
            return Due {
                at: Some(at),
                reason,
            };
        }
    }
    let next = w
        .cron
        .find_next_occurrence(&local, false)
        .ok()
        .map(|t| t.with_timezone(&Utc));
    let deadline = match (expires_at, min_validity) {
        (Some(exp), Some(mv)) => Some(exp - delta(mv)),
        (Some(exp), None) => Some(exp),
        _ => None,
    };
    match next {
        Some(start) if deadline.is_none_or(|dl| start <= dl) => Due {
            at: Some(start),
            reason: DueReason::Window {
                due: Box::new(reason),
                window: w.text.clone(),
            },
        },
        _ => Due {
            at: Some(at),
            reason: DueReason::WindowMissed {
                due: Box::new(reason),
                window: w.text.clone(),
            },
        },
    }
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
            window: None,
            min_validity: Some(Duration::from_secs(rb_d * DAY / 2)),
            manual: false,
            revoke_after_use: false,
        }
    }

    fn window(cron: &str, hours: u64, tz: &str) -> Option<crate::policy::Window> {
        Some(crate::policy::Window {
            cron: crate::policy::parse_cron(cron).unwrap(),
            text: cron.into(),
            duration: Duration::from_secs(hours * 3600),
            timezone: tz.parse().unwrap(),
        })
    }

    /// Due at `due` (expires 10 days later with rotate_before 10d), with the given window: when does it run?
    fn windowed(due: &str, cron: &str, hours: u64, tz: &str) -> Due {
        let due_at = t(due);
        let expires = due_at + TimeDelta::days(10);
        let mut s = sched(30, 10, None);
        s.window = window(cron, hours, tz).map(Box::new);
        let c = CurrentToken {
            token_id: "at-1".into(),
            created_at: expires - TimeDelta::days(30),
            expires_at: Some(expires),
        };
        next_due(&s, Some(&c), Duration::ZERO, due_at - TimeDelta::days(1))
    }

    #[test]
    fn a_manual_token_is_never_due_and_says_what_the_schedule_would() {
        let mut s = sched(30, 10, None);
        s.manual = true;
        let now = t("2026-01-01T00:00:00Z");
        let none = next_due(&s, None, Duration::ZERO, now);
        assert_eq!(none.at, None);
        assert_eq!(
            none.reason,
            DueReason::Manual(Box::new(DueReason::NoRecord))
        );
        assert!(!none.is_due(now + TimeDelta::days(365)));
        let expired = CurrentToken {
            token_id: "at-1".into(),
            created_at: t("2025-11-01T00:00:00Z"),
            expires_at: Some(t("2025-12-01T00:00:00Z")),
        };
        let due = next_due(&s, Some(&expired), Duration::ZERO, now);
        assert_eq!(due.at, None);
        assert_eq!(
            due.reason.to_string(),
            "manual: rotated only by `token-rotator rotate` (the schedule would say: expired at 2025-12-01T00:00:00Z)"
        );
    }

    #[test]
    fn windows_table() {
        // (name, due, cron, window hours, zone, expected time, expect waiting (true) or in-window/missed)
        let cases = [
            (
                "inside an open window: at once",
                "2026-06-10T03:30:00Z",
                "0 3 * * *",
                1,
                "UTC",
                "2026-06-10T03:30:00Z",
            ),
            (
                "before today's window: wait for it",
                "2026-06-10T01:00:00Z",
                "0 3 * * *",
                1,
                "UTC",
                "2026-06-10T03:00:00Z",
            ),
            (
                "after today's window: tomorrow's",
                "2026-06-10T05:00:00Z",
                "0 3 * * *",
                1,
                "UTC",
                "2026-06-11T03:00:00Z",
            ),
            (
                "weekly window, Sundays",
                "2026-06-10T05:00:00Z",
                "0 3 * * 0",
                1,
                "UTC",
                "2026-06-14T03:00:00Z",
            ),
            (
                "zone: 03:00 Berlin summer time is 01:00Z",
                "2026-06-10T00:00:00Z",
                "0 3 * * *",
                1,
                "Europe/Berlin",
                "2026-06-10T01:00:00Z",
            ),
            (
                "zone: winter time is 02:00Z",
                "2026-01-10T00:00:00Z",
                "0 3 * * *",
                1,
                "Europe/Berlin",
                "2026-01-10T02:00:00Z",
            ),
        ];
        for (name, due, cron, hours, tz, want) in cases {
            let d = windowed(due, cron, hours, tz);
            assert_eq!(d.at, Some(t(want)), "{name}: {}", d.reason);
        }
    }

    #[test]
    fn dst_transition_days_in_berlin() {
        // Spring forward, 2026-03-29: 02:00 local jumps to 03:00. A 02:30 window start does not exist that day.
        // croner (like OCPS cron) runs a start that falls in the gap at the end of the gap: 03:00 CEST = 01:00Z.
        let d = windowed("2026-03-28T23:00:00Z", "30 2 * * *", 1, "Europe/Berlin");
        assert_eq!(d.at, Some(t("2026-03-29T01:00:00Z")), "{}", d.reason);
        // A window at 03:00 on the spring-forward day is 01:00Z (CEST).
        let d = windowed("2026-03-28T23:00:00Z", "0 3 * * *", 1, "Europe/Berlin");
        assert_eq!(d.at, Some(t("2026-03-29T01:00:00Z")));
        // Fall back, 2026-10-25: 03:00 local becomes 02:00 again; 02:30 happens twice. The first one counts.
        let d = windowed("2026-10-24T23:00:00Z", "30 2 * * *", 1, "Europe/Berlin");
        assert_eq!(d.at, Some(t("2026-10-25T00:30:00Z")), "{}", d.reason);
        // The day after, 02:30 is CET again: 01:30Z.
        let d = windowed("2026-10-25T03:00:00Z", "30 2 * * *", 1, "Europe/Berlin");
        assert_eq!(d.at, Some(t("2026-10-26T01:30:00Z")));
    }

    #[test]
    fn a_window_that_opens_too_late_is_skipped_and_said_so() {
        // Window only on 1 January; the token expires in 10 days with min_validity 5 days.
        let d = windowed("2026-06-10T05:00:00Z", "0 3 1 1 *", 1, "UTC");
        assert_eq!(d.at, Some(t("2026-06-10T05:00:00Z")));
        assert!(d.reason.window_missed(), "{}", d.reason);
        assert!(d.reason.to_string().contains("opens too late"));
    }

    #[test]
    fn every_combined_with_rotate_before_and_a_window() {
        let mut s = sched(30, 10, Some(7));
        s.window = window("0 3 * * *", 2, "UTC").map(Box::new);
        let c = cur("2026-06-01T12:00:00Z", Some("2026-07-01T12:00:00Z"));
        // `every` (7d) is earlier than expiry-based (21 Jun); it waits for the next 03:00 window.
        let d = next_due(&s, Some(&c), Duration::ZERO, t("2026-06-02T00:00:00Z"));
        assert_eq!(d.at, Some(t("2026-06-09T03:00:00Z")));
        assert!(d.reason.to_string().contains("every 7d"), "{}", d.reason);
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
