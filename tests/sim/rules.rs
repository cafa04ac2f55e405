//! The time rules of SPEC §3 and §5.4, one at a time, on tokio's paused clock: the real scheduler and rotator in a
//! calm world (no faults, no events), hours of policy time in milliseconds. What is asserted is what an operator
//! would see at the issuer and the sinks: when tokens are created and revoked, when the stores are read.
//!
//! - rotations come `rotate_before` ahead of expiry, delayed by at most `jitter`;
//! - a maintenance `window` holds a rotation until it opens, unless that would leave less than `min_validity`;
//! - an old coexisting token lives through `grace` after its successor, then is revoked;
//! - a `revoke_after_use` token waits for its successor's first use, noticed within a minute;
//! - failed attempts back off 30 s doubling to 15 min; a refusal (403) waits for the permanent schedule (1 h);
//! - drift checks of many tokens share whole-minute wake-ups.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Timelike, Utc};
use token_rotator_emulators::tfc::{TokenInfo, TokenKind};

use crate::faults::SinkFault;
use crate::world::World;
use crate::{build_world_with, crash, start_daemon, Incarnation, Spec, TICK};
use token_rotator::secret::ExposeSecret;

const BASE: &str = "2026-03-01T00:00:00Z";

fn base() -> DateTime<Utc> {
    BASE.parse().unwrap()
}

/// Runs `fut` on a single-threaded runtime whose clock is paused, with the daemon's and the services' clocks
/// following it from [`BASE`].
pub(crate) fn paused<F: Future>(seed: u64, fut: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async move {
        let base = base();
        let _clock = token_rotator::clock::simulate(base, seed);
        let start = tokio::time::Instant::now();
        let _service_clock = token_rotator_emulators::clock::simulate(
            move || base + TimeDelta::from_std(start.elapsed()).unwrap(),
            seed ^ 0xe1u64,
        );
        fut.await
    })
}

/// A calm world with some of the simulation's tokens, and the daemon running over it.
struct Rig {
    world: Arc<World>,
    daemon: Option<Incarnation>,
    _dir: tempfile::TempDir,
}

impl Rig {
    fn new(seed: u64, spec: Spec) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let (world, _) = build_world_with(seed, dir.path(), &spec, true);
        let daemon = Some(start_daemon(&world));
        Rig {
            world,
            daemon,
            _dir: dir,
        }
    }

    /// Lets `d` of policy time pass, checking the invariants every minute.
    async fn run_for(&self, d: Duration) {
        let end = tokio::time::Instant::now() + d;
        while tokio::time::Instant::now() < end {
            let next = (tokio::time::Instant::now() + TICK).min(end);
            tokio::time::sleep_until(next).await;
            self.world.check_step();
            if let Some(v) = self.world.lock().violation.clone() {
                panic!("invariant broken at {}: {v}", crate::world::world_now());
            }
        }
    }

    /// `token-rotator rotate NAME`, as the operator would.
    async fn rotate(&self, token: &str) {
        self.world
            .lock()
            .facts
            .nudged_at
            .insert(token.to_string(), crate::world::world_now());
        let (reply, _answer) = tokio::sync::oneshot::channel();
        let inc = self.daemon.as_ref().unwrap();
        inc.rotate
            .send(token_rotator::daemon::control::RotateRequest {
                tokens: vec![token.to_string()],
                all: false,
                reply,
            })
            .await
            .unwrap();
    }

    /// A policy reload, as SIGHUP would deliver it.
    async fn reload(&self, policy: token_rotator::policy::Policy) {
        let inc = self.daemon.as_ref().unwrap();
        inc.control
            .send(token_rotator::daemon::Control::Reload(Box::new(policy)))
            .await
            .unwrap();
    }

    fn forced_sink(&self, fault: Option<SinkFault>) {
        self.world.lock().faults.forced_sink = fault;
    }

    /// The TFC tokens `keep` selects, oldest first.
    fn tfc_tokens(&self, keep: impl Fn(&TokenInfo) -> bool) -> Vec<TokenInfo> {
        let mut all: Vec<TokenInfo> = self
            .world
            .tfc
            .all_tokens()
            .into_iter()
            .filter(keep)
            .collect();
        all.sort_by_key(|t| t.created_at);
        all
    }

    fn org_tokens(&self) -> Vec<TokenInfo> {
        self.tfc_tokens(|t| t.kind == TokenKind::Organization && t.organization == "alpha")
    }

    fn team_tokens(&self, label: &str) -> Vec<TokenInfo> {
        self.tfc_tokens(|t| {
            t.kind == TokenKind::Team
                && t.description
                    .as_deref()
                    .is_some_and(|d| d.starts_with(&format!("{label} ")))
        })
    }

    fn agent_tokens(&self) -> Vec<TokenInfo> {
        self.tfc_tokens(|t| t.kind == TokenKind::Agent)
    }

    /// When the daemon started an attempt on `token`: its sink operations, a new attempt after 10 s of quiet.
    fn attempts(&self, token: &str) -> Vec<DateTime<Utc>> {
        let mut out: Vec<DateTime<Utc>> = Vec::new();
        let mut last: Option<DateTime<Utc>> = None;
        for op in self
            .world
            .lock()
            .facts
            .sink_ops
            .iter()
            .filter(|o| o.token == token)
        {
            if last.is_none_or(|l| op.at - l > TimeDelta::seconds(10)) {
                out.push(op.at);
            }
            last = Some(op.at);
        }
        out
    }

    /// The token's line on the daemon's status board.
    fn status(&self, name: &str) -> token_rotator::status::TokenStatus {
        self.world
            .live_status(name)
            .expect("the daemon runs, the token on its board")
    }

    async fn stop(mut self) {
        if let Some(inc) = self.daemon.take() {
            crash(&self.world, inc).await;
        }
        if let Some(v) = self.world.lock().violation.clone() {
            panic!("invariant broken: {v}");
        }
    }
}

fn minutes(d: TimeDelta) -> f64 {
    d.num_milliseconds() as f64 / 60_000.0
}

fn gaps(tokens: &[TokenInfo]) -> Vec<f64> {
    tokens
        .windows(2)
        .map(|w| minutes(w[1].created_at - w[0].created_at))
        .collect()
}

fn spec(only: &[&'static str], schedule: &str) -> Spec {
    Spec {
        only: Some(only.to_vec()),
        schedule: schedule.into(),
        ..Spec::default()
    }
}

#[test]
fn rotations_come_rotate_before_ahead_of_expiry_delayed_by_at_most_the_jitter() {
    paused(1, async {
        let rig = Rig::new(
            1,
            spec(
                &["org", "team-a", "pulumi"],
                "lifetime = \"2h\"\nrotate_before = \"40m\"\njitter = \"5m\"\ngrace = \"10m\"",
            ),
        );
        rig.run_for(Duration::from_secs(12 * 3600)).await;
        for (what, tokens) in [
            ("organization", rig.org_tokens()),
            ("team", rig.team_tokens("ci team-a")),
        ] {
            let g = gaps(&tokens);
            assert!(g.len() >= 7, "{what}: {} rotations in 12 h", g.len());
            // Due 40 min before a 2 h expiry (80 min after the create), plus up to 5 min of jitter.
            assert!(
                g.iter().all(|m| (80.0..=85.5).contains(m)),
                "{what}: minutes between creates {g:?}"
            );
            // The jitter is drawn again for each new token: the gaps are not all the same.
            let spread = g.iter().cloned().fold(f64::MIN, f64::max)
                - g.iter().cloned().fold(f64::MAX, f64::min);
            assert!(spread > 0.5, "{what}: the jitter never varied: {g:?}");
        }
        let mut pulumi: Vec<_> = rig
            .world
            .pulumi
            .all_tokens()
            .into_iter()
            .filter(|t| t.name.starts_with("sim-ci-"))
            .collect();
        pulumi.sort_by_key(|t| t.created);
        let g: Vec<f64> = pulumi
            .windows(2)
            .map(|w| minutes(w[1].created - w[0].created))
            .collect();
        assert!(
            g.len() >= 7 && g.iter().all(|m| (80.0..=85.5).contains(m)),
            "pulumi: {g:?}"
        );
        rig.stop().await;
    });
}

#[test]
fn a_window_holds_rotations_until_it_opens() {
    paused(2, async {
        let rig = Rig::new(
            2,
            spec(&["org"], "lifetime = \"2d\"\nrotate_before = \"1d\"\nwindow = \"0 3 * * *\"\nwindow_duration = \"1h\""),
        );
        rig.run_for(Duration::from_secs(5 * 86_400)).await;
        let tokens = rig.org_tokens();
        // The first token is made at once (nothing stored); every later one between 03:00 and 04:00 UTC, once a day.
        assert_eq!(tokens[0].created_at.date_naive(), base().date_naive());
        let later: Vec<DateTime<Utc>> = tokens[1..].iter().map(|t| t.created_at).collect();
        assert_eq!(later.len(), 4, "one rotation a day: {later:?}");
        assert!(later.iter().all(|t| t.hour() == 3), "{later:?}");
        rig.stop().await;
    });
}

#[test]
fn a_window_too_far_away_gives_way_to_min_validity() {
    paused(3, async {
        // The window opens on 1 January only: waiting for it would leave less than `min_validity`, so each rotation
        // goes at once when due (SPEC §3), a day after the create.
        let rig = Rig::new(
            3,
            spec(&["org"], "lifetime = \"2d\"\nrotate_before = \"1d\"\nwindow = \"0 3 1 1 *\"\nmin_validity = \"12h\""),
        );
        rig.run_for(Duration::from_secs(5 * 86_400)).await;
        let g = gaps(&rig.org_tokens());
        assert!(g.len() >= 3, "{g:?}");
        assert!(g.iter().all(|m| (1439.9..=1441.0).contains(m)), "{g:?}");
        let live = rig.world.live().unwrap();
        let m = live.metrics.render(&live.board);
        let missed = m
            .lines()
            .find(|l| {
                l.starts_with("token_rotator_window_missed_total{") && l.contains("token=\"org\"")
            })
            .unwrap_or_else(|| panic!("no window_missed_total for org in:\n{m}"));
        assert!(
            missed.ends_with(&format!(" {}", g.len())),
            "each rotation counted: {missed}"
        );
        rig.stop().await;
    });
}

#[test]
fn an_old_team_token_lives_through_grace_then_is_revoked() {
    paused(4, async {
        let rig = Rig::new(
            4,
            spec(
                &["team-a"],
                "lifetime = \"2h\"\nrotate_before = \"40m\"\ngrace = \"25m\"",
            ),
        );
        rig.run_for(Duration::from_secs(8 * 3600)).await;
        let tokens = rig.team_tokens("ci team-a");
        assert!(tokens.len() >= 6, "{} tokens", tokens.len());
        for w in tokens.windows(2) {
            let ended = w[0].ended_at.expect("the old token is revoked");
            let lived = minutes(ended - w[1].created_at);
            assert!(
                (25.0..=26.0).contains(&lived),
                "revoked {lived} min after its successor was created"
            );
        }
        let live = tokens.iter().filter(|t| t.ended_at.is_none()).count();
        assert_eq!(live, 1, "only the newest is valid once grace is over");
        rig.stop().await;
    });
}

#[test]
fn an_agent_token_is_revoked_only_after_its_successor_is_used() {
    paused(5, async {
        let mut s = spec(&["agent"], "");
        s.agent_schedule = "every = \"90m\"\ngrace = \"10m\"".into();
        let rig = Rig::new(5, s);
        // 1 h 40 min: the second token exists; nobody has used it, so the first stays valid past its grace.
        rig.run_for(Duration::from_secs(100 * 60)).await;
        let tokens = rig.agent_tokens();
        assert_eq!(tokens.len(), 2);
        assert!(tokens.iter().all(|t| t.ended_at.is_none()), "{tokens:?}");
        rig.run_for(Duration::from_secs(20 * 60 + 30)).await;
        assert!(rig.agent_tokens()[0].ended_at.is_none());
        // An agent picks the new token up half a minute past 2 h: the old one is revoked within the minute that
        // follows (the daemon looks for the use every minute).
        let used_at = crate::world::world_now();
        rig.world.tfc.mark_used(&tokens[1].id);
        rig.run_for(Duration::from_secs(5 * 60)).await;
        let ended = rig.agent_tokens()[0].ended_at.expect("revoked after use");
        let after = (ended - used_at).num_seconds();
        assert!((0..=75).contains(&after), "revoked {after} s after the use");
        rig.stop().await;
    });
}

#[test]
fn an_ambiguous_singleton_create_is_sent_again_only_after_the_backoff() {
    paused(9, async {
        let rig = Rig::new(
            9,
            spec(&["org"], "lifetime = \"2h\"\nrotate_before = \"40m\""),
        );
        rig.run_for(Duration::from_secs(60)).await;
        assert_eq!(rig.org_tokens().len(), 1);
        // An operator asks for a rotation; the create reaches TFC (which replaces the stored token) and its
        // answer is lost.
        rig.world
            .lock()
            .faults
            .forced_wire
            .push_back(crate::faults::WireFault::LostAfter { timeout: false });
        let asked = crate::world::world_now();
        rig.rotate("org").await;
        rig.run_for(Duration::from_secs(20)).await;
        let tokens = rig.org_tokens();
        assert_eq!(tokens.len(), 2, "the ambiguous create was sent once");
        let status = rig.status("org");
        assert!(
            status.unready_reason(crate::world::world_now()).is_some(),
            "not ready: the stored token is dead"
        );
        rig.run_for(Duration::from_secs(60)).await;
        let tokens = rig.org_tokens();
        assert_eq!(tokens.len(), 3, "minted once more");
        let after = (tokens[2].created_at - asked).num_seconds();
        assert!(
            (30..=45).contains(&after),
            "the next create came {after} s after the first"
        );
        assert_eq!(
            rig.status("org").unready_reason(crate::world::world_now()),
            None
        );
        rig.stop().await;
    });
}

#[test]
fn failing_sink_writes_are_retried_within_bounds_and_the_minted_token_is_pushed_not_minted_again() {
    paused(10, async {
        let rig = Rig::new(
            10,
            spec(&["org"], "lifetime = \"2h\"\nrotate_before = \"40m\""),
        );
        rig.world.lock().faults.forced_write = Some(SinkFault::Down);
        rig.run_for(Duration::from_secs(60)).await;
        let writes: Vec<DateTime<Utc>> = rig
            .world
            .lock()
            .facts
            .sink_ops
            .iter()
            .filter(|o| o.write && o.at < base() + TimeDelta::seconds(40))
            .map(|o| o.at)
            .collect();
        // The first attempt (the next one comes 30 s after it fails). Two targets, each written once and retried five times, 0.5 s doubling with jitter: 15.5–31 s.
        assert_eq!(writes.len(), 12, "{writes:?}");
        let span = (writes[writes.len() - 1] - writes[0]).num_milliseconds() as f64 / 1000.0;
        assert!((15.5..=31.5).contains(&span), "retries took {span} s");
        rig.run_for(Duration::from_secs(20 * 60)).await;
        assert_eq!(
            rig.org_tokens().len(),
            1,
            "never minted again while the store refuses"
        );
        rig.world.lock().faults.forced_write = None;
        rig.run_for(Duration::from_secs(16 * 60)).await;
        let tokens = rig.org_tokens();
        assert_eq!(tokens.len(), 1, "the journaled token was pushed");
        let records = rig.world.records_of(rig.world.token("org"));
        assert!(records
            .iter()
            .all(|r| r.as_ref().is_some_and(|r| r.token_id == tokens[0].id)));
        rig.stop().await;
    });
}

#[test]
fn failed_attempts_back_off_from_30_s_doubling_to_15_min() {
    paused(6, async {
        let rig = Rig::new(
            6,
            spec(&["team-a"], "lifetime = \"2h\"\nrotate_before = \"40m\""),
        );
        rig.forced_sink(Some(SinkFault::Down));
        rig.run_for(Duration::from_secs(3 * 3600)).await;
        let starts = rig.attempts("team-a");
        let g: Vec<i64> = starts
            .windows(2)
            .map(|w| (w[1] - w[0]).num_seconds())
            .collect();
        let expected = [30, 60, 120, 240, 480, 900, 900, 900];
        assert!(g.len() >= expected.len(), "{g:?}");
        for (got, want) in g.iter().zip(expected) {
            // Each attempt retries its reads for a few seconds before it fails.
            assert!(
                (want..=want + 15).contains(got),
                "seconds between attempts {g:?}, expected about {expected:?}"
            );
        }
        // The store comes back: the next attempt rotates.
        rig.forced_sink(None);
        rig.run_for(Duration::from_secs(16 * 60)).await;
        assert_eq!(rig.team_tokens("ci team-a").len(), 1);
        rig.stop().await;
    });
}

#[test]
fn a_refusing_sink_waits_for_the_permanent_schedule() {
    paused(7, async {
        let rig = Rig::new(
            7,
            spec(&["team-a"], "lifetime = \"2h\"\nrotate_before = \"40m\""),
        );
        rig.forced_sink(Some(SinkFault::Refused));
        rig.run_for(Duration::from_secs(4 * 3600 + 60)).await;
        let starts = rig.attempts("team-a");
        let g: Vec<i64> = starts
            .windows(2)
            .map(|w| (w[1] - w[0]).num_seconds())
            .collect();
        // A 403 is not retried within the attempt (one read per target) nor 30 s later: the next try is an hour on.
        let ops = rig.world.lock().facts.sink_ops.len();
        assert_eq!(
            ops,
            starts.len() * rig.world.token("team-a").sinks.len(),
            "one read per attempt"
        );
        assert_eq!(g.len(), 4, "{g:?}");
        assert!(g.iter().all(|s| (3600..=3610).contains(s)), "{g:?}");
        assert!(rig.team_tokens("ci team-a").is_empty(), "nothing minted");
        rig.stop().await;
    });
}

#[test]
fn a_reload_that_changes_a_failing_tokens_sink_tries_it_again_at_once() {
    paused(11, async {
        let rig = Rig::new(
            11,
            spec(&["team-a"], "lifetime = \"2h\"\nrotate_before = \"40m\""),
        );
        rig.forced_sink(Some(SinkFault::Refused));
        rig.run_for(Duration::from_secs(120)).await;
        assert_eq!(rig.attempts("team-a").len(), 1);
        // The operator fixes the store's permissions: a reload of the same policy changes nothing, so the token
        // keeps its permanent backoff ...
        rig.forced_sink(None);
        rig.reload(rig.world.policy.clone()).await;
        rig.run_for(Duration::from_secs(120)).await;
        assert_eq!(
            rig.attempts("team-a").len(),
            1,
            "an unchanged policy is no reason to try early"
        );
        // ... but a reload that changes the sink's table (here its directory) tries again at once.
        let mut fixed = rig.world.policy.clone();
        let sink = fixed.sinks.get_mut("kv-a").unwrap();
        sink.settings = Arc::new(token_rotator::sink::file::FileSinkConfig {
            directory: "/nonexistent/kv-a-fixed".into(),
        });
        rig.reload(fixed).await;
        rig.run_for(Duration::from_secs(60)).await;
        assert_eq!(rig.attempts("team-a").len(), 2);
        assert_eq!(
            rig.team_tokens("ci team-a").len(),
            1,
            "rotated right after the reload"
        );
        rig.stop().await;
    });
}

#[test]
fn drift_checks_of_many_tokens_share_whole_minute_wake_ups() {
    paused(8, async {
        let rig = Rig::new(
            8,
            spec(
                &["org", "team-a", "team-b", "legacy"],
                "lifetime = \"2d\"\nrotate_before = \"1d\"",
            ),
        );
        rig.run_for(Duration::from_secs(3 * 3600)).await;
        let first_hour = base() + TimeDelta::hours(1);
        let ops: Vec<_> = rig
            .world
            .lock()
            .facts
            .sink_ops
            .iter()
            .filter(|o| o.at >= first_hour)
            .cloned()
            .collect();
        // Nothing is due for a day: every visit is a drift check (10 min), at a whole minute, all tokens at once.
        assert!(
            ops.iter().all(|o| !o.write),
            "no writes while nothing is due"
        );
        assert!(
            ops.iter().all(|o| o.at.second() == 0),
            "{:?}",
            ops.iter().map(|o| o.at).collect::<Vec<_>>()
        );
        let mut wakeups: Vec<DateTime<Utc>> = ops
            .iter()
            .map(|o| o.at.with_nanosecond(0).unwrap())
            .collect();
        wakeups.dedup();
        assert!(
            (11..=13).contains(&wakeups.len()),
            "{} wake-ups in 2 h: {wakeups:?}",
            wakeups.len()
        );
        for token in ["org", "team-a", "team-b", "legacy"] {
            let n = ops.iter().filter(|o| o.token == token).count();
            let targets = rig.world.token(token).sinks.len();
            assert_eq!(
                n,
                wakeups.len() * targets,
                "{token} is read at every shared wake-up"
            );
        }
        rig.stop().await;
    });
}

#[test]
fn a_manual_token_is_minted_and_rotated_only_when_asked() {
    paused(11, async {
        let rig = Rig::new(
            11,
            spec(
                &["org", "team-a"],
                "lifetime = \"2h\"\nrotate_before = \"40m\"\ngrace = \"10m\"\nmanual = true",
            ),
        );
        let status = |name: &str| rig.status(name);
        let (org0, team0) = (rig.org_tokens().len(), rig.team_tokens("ci team-a").len());

        // No record yet: nothing is minted, and the token is not ready with a reason that says what to do.
        rig.run_for(Duration::from_secs(3 * 3600)).await;
        assert_eq!(
            rig.org_tokens().len(),
            org0,
            "an org token minted by itself"
        );
        assert_eq!(
            rig.team_tokens("ci team-a").len(),
            team0,
            "a team token minted by itself"
        );
        for name in ["org", "team-a"] {
            let s = status(name);
            assert!(
                !s.is_ready(token_rotator::clock::now()),
                "{name} ready without a record"
            );
            let why = s.pending.clone().unwrap_or_default();
            assert!(
                why.contains("manual token with no record yet")
                    && why.contains(&format!("token-rotator rotate {name}")),
                "{name}: {why}"
            );
        }

        // Asked: one rotation each, and the tokens are ready.
        rig.rotate("org").await;
        rig.rotate("team-a").await;
        rig.run_for(Duration::from_secs(120)).await;
        assert_eq!(rig.org_tokens().len(), org0 + 1);
        assert_eq!(rig.team_tokens("ci team-a").len(), team0 + 1);
        for name in ["org", "team-a"] {
            let s = status(name);
            assert!(
                s.is_ready(token_rotator::clock::now()),
                "{name}: {:?}",
                s.pending
            );
            assert!(
                s.next_due.is_none(),
                "{name} has a due time: {:?}",
                s.next_due
            );
            assert!(
                s.next_reason.to_string().starts_with("manual: "),
                "{name}: {}",
                s.next_reason
            );
        }

        // Due after 80 min, expired after 2 h: still nothing by itself, and an expired token is not ready.
        rig.run_for(Duration::from_secs(5 * 3600)).await;
        assert_eq!(
            rig.org_tokens().len(),
            org0 + 1,
            "rotated by itself when due"
        );
        assert_eq!(
            rig.team_tokens("ci team-a").len(),
            team0 + 1,
            "rotated by itself when due"
        );
        let org = status("org");
        assert!(
            !org.is_ready(token_rotator::clock::now()),
            "an expired token is ready"
        );
        assert!(
            org.next_reason.to_string().contains("expired at"),
            "{}",
            org.next_reason
        );

        // Asked again: rotated again.
        rig.rotate("org").await;
        rig.run_for(Duration::from_secs(120)).await;
        assert_eq!(rig.org_tokens().len(), org0 + 2);
        assert!(status("org").is_ready(token_rotator::clock::now()));
        rig.stop().await;
    });
}

#[test]
fn a_token_revoked_behind_the_daemons_back_is_replaced_within_the_verify_interval_and_a_minute() {
    paused(12, async {
        let rig = Rig::new(
            12,
            Spec {
                // Nothing rotates by its schedule within the test: every create is liveness's.
                agent_schedule: "every = \"30d\"\ngrace = \"10m\"".into(),
                ..spec(
                    &["org", "team-a", "team-b", "agent", "pulumi"],
                    "lifetime = \"30d\"\nrotate_before = \"10d\"\ngrace = \"10m\"",
                )
            },
        );
        let verify_interval = rig.world.policy.daemon.verify_interval;
        assert_eq!(verify_interval, Duration::from_secs(3600), "the default");
        let interval = TimeDelta::from_std(verify_interval).unwrap();
        // Probes run at the first visit, then on whole minutes an interval apart: revoke one second after the
        // probe at the end of the first hour, the worst moment (the next probe is a whole interval away).
        rig.run_for(Duration::from_secs(3600 + 1)).await;
        let id_of = |name: &str| {
            rig.world
                .records_of(rig.world.token(name))
                .first()
                .cloned()
                .flatten()
                .map(|r| r.token_id)
        };
        let count = |name: &str| {
            rig.world
                .lock()
                .facts
                .created_order
                .iter()
                .filter(|(_, t)| t == name)
                .count()
        };
        let revoked_names = ["org", "team-a", "agent", "pulumi"];
        let revoked: Vec<String> = revoked_names
            .iter()
            .map(|n| id_of(n).expect("a record"))
            .collect();
        let created: Vec<usize> = revoked_names.iter().map(|n| count(n)).collect();
        let healthy = (id_of("team-b").unwrap(), count("team-b"));
        let at = token_rotator::clock::now();
        for name in revoked_names {
            crate::revoke_outside(&rig.world, name, false);
        }
        // Minute by minute: when each record names another token.
        let mut replaced: Vec<Option<TimeDelta>> = vec![None; revoked_names.len()];
        for _ in 0..(3 * 60) {
            rig.run_for(Duration::from_secs(60)).await;
            for (i, name) in revoked_names.iter().enumerate() {
                if replaced[i].is_none() && id_of(name).as_ref() != Some(&revoked[i]) {
                    replaced[i] = Some(token_rotator::clock::now() - at);
                }
            }
        }
        for (i, name) in revoked_names.iter().enumerate() {
            let after = replaced[i]
                .unwrap_or_else(|| panic!("{name}: the dead token is still stored after 3 h"));
            assert!(
                after <= interval + TimeDelta::seconds(60),
                "{name}: replaced {} s after the revoke",
                after.num_seconds()
            );
            // Once: the successor is alive, so the probes of the next intervals leave it alone.
            assert_eq!(
                count(name),
                created[i] + 1,
                "{name}: creates after the revoke"
            );
            let record = rig.world.records_of(rig.world.token(name))[0]
                .clone()
                .unwrap();
            assert!(
                rig.world.is_valid(
                    rig.world.service_of(rig.world.token(name)),
                    record.token.expose_secret()
                ),
                "{name}: the new record is not accepted by the issuer"
            );
        }
        assert_eq!(
            (id_of("team-b").unwrap(), count("team-b")),
            healthy,
            "a healthy token was rotated"
        );
        rig.stop().await;
    });
}

#[test]
fn a_token_found_dead_again_soon_after_its_replacement_is_left_for_a_person() {
    paused(13, async {
        let rig = Rig::new(
            13,
            spec(&["org"], "lifetime = \"30d\"\nrotate_before = \"10d\""),
        );
        let count = || rig.org_tokens().len();
        let status = || rig.status("org");
        rig.run_for(Duration::from_secs(3600 + 1)).await;
        crate::revoke_outside(&rig.world, "org", false);
        // Found at the next probe (an hour after the last), confirmed 10 s later, replaced.
        rig.run_for(Duration::from_secs(3600 + 120)).await;
        let after_first = count();
        assert!(
            status().is_ready(token_rotator::clock::now()),
            "{:?}",
            status().pending
        );
        // Something else keeps regenerating it: the replacement dies too.
        crate::revoke_outside(&rig.world, "org", false);
        rig.run_for(Duration::from_secs(2 * 3600)).await;
        assert_eq!(
            count(),
            after_first,
            "replaced again: a rotation war with whatever else regenerates it"
        );
        let s = status();
        assert!(!s.is_ready(token_rotator::clock::now()));
        let why = s.pending.clone().unwrap_or_default();
        assert!(
            why.contains("found dead again") && why.contains("token-rotator rotate org"),
            "{why}"
        );
        // A person looked, and asks: rotated, ready.
        rig.rotate("org").await;
        rig.run_for(Duration::from_secs(120)).await;
        assert_eq!(count(), after_first + 1);
        assert!(
            status().is_ready(token_rotator::clock::now()),
            "{:?}",
            status().pending
        );
        rig.stop().await;
    });
}
