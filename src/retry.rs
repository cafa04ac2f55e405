//! The one retry policy (exponential backoff with jitter, bounded) and the per-issuer request pacers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use backon::ExponentialBuilder;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// Backoff for transient failures inside one rotation attempt: 0.5 s, 1 s, 2 s, … capped at 20 s, 5 retries.
/// The jitter is seeded from `clock` so that a simulation replays exactly.
pub fn transient() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_jitter()
        .with_jitter_seed(crate::clock::random_u64())
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(20))
        .with_max_times(5)
}

/// Delay before the next attempt after a failed rotation attempt: 30 s doubling to at most 15 min.
pub fn attempt_backoff(consecutive_failures: u32) -> Duration {
    let exp = consecutive_failures.saturating_sub(1).min(5);
    let base = Duration::from_secs(30) * 2u32.pow(exp);
    base.min(Duration::from_secs(15 * 60))
}

/// Paces requests to one issuer: at most `per_second`, evenly spaced, and none before a 429's reset time.
#[derive(Debug)]
pub struct Pacer {
    /// Nanoseconds between two requests; changed in place when a reload changes `requests_per_second`.
    interval_ns: AtomicU64,
    state: Mutex<PacerState>,
}

#[derive(Debug)]
struct PacerState {
    next_free: Instant,
    blocked_until: Instant,
}

fn interval_ns(per_second: u32) -> u64 {
    (Duration::from_secs(1) / per_second.max(1)).as_nanos() as u64
}

impl Pacer {
    pub fn new(per_second: u32) -> Self {
        let now = Instant::now();
        Pacer {
            interval_ns: AtomicU64::new(interval_ns(per_second)),
            state: Mutex::new(PacerState {
                next_free: now,
                blocked_until: now,
            }),
        }
    }

    pub fn set_rate(&self, per_second: u32) {
        self.interval_ns
            .store(interval_ns(per_second), Ordering::Relaxed);
    }

    /// Waits for this request's slot. A request whose slot comes while a 429 block is on (it arrived while the
    /// request waited) queues again behind the block, at the steady pace, rather than leaving with every other
    /// waiting request at the instant the block ends.
    pub async fn acquire(&self) {
        loop {
            let slot = {
                let mut s = self.state.lock().await;
                let slot = s.next_free.max(s.blocked_until).max(Instant::now());
                s.next_free = slot + Duration::from_nanos(self.interval_ns.load(Ordering::Relaxed));
                slot
            };
            tokio::time::sleep_until(slot).await;
            if self.state.lock().await.blocked_until <= Instant::now() {
                return;
            }
        }
    }

    /// How long a 429 block still holds every request (zero when none does).
    pub async fn blocked_for(&self) -> Duration {
        self.state
            .lock()
            .await
            .blocked_until
            .saturating_duration_since(Instant::now())
    }

    /// After a 429: nobody sends before `reset` has passed (SPEC §5.4); requests that got a slot meanwhile queue
    /// again after it.
    pub async fn block_for(&self, reset: Duration) {
        let mut s = self.state.lock().await;
        let until = Instant::now() + reset;
        if until > s.blocked_until {
            s.blocked_until = until;
        }
        if s.next_free < s.blocked_until {
            s.next_free = s.blocked_until;
        }
    }
}

/// The two pacers of one issuer: requests made with its credential, and identity probes of new tokens (which the
/// service counts against the new token's own user).
#[derive(Debug)]
pub struct IssuerPacers {
    pub credential: Pacer,
    pub probe: Pacer,
}

impl IssuerPacers {
    pub fn new(per_second: u32) -> Self {
        IssuerPacers {
            credential: Pacer::new(per_second),
            probe: Pacer::new(per_second),
        }
    }

    /// After a 429 to any request: no request goes to the issuer before `reset` (SPEC §5.4), whatever its bearer.
    pub async fn block_for(&self, reset: Duration) {
        self.credential.block_for(reset).await;
        self.probe.block_for(reset).await;
    }
}

/// Every issuer's pacers, kept for the daemon's lifetime: a reload builds new issuers but must neither forget a
/// 429 block (SPEC §5.4) nor let old and new work each send the full rate.
#[derive(Debug, Default)]
pub struct PacerRegistry {
    by_issuer: std::sync::Mutex<HashMap<String, Arc<IssuerPacers>>>,
}

impl PacerRegistry {
    /// The pacers of issuer `name`, created at `per_second` or updated to it.
    pub fn get(&self, name: &str, per_second: u32) -> Arc<IssuerPacers> {
        let mut map = self.by_issuer.lock().unwrap_or_else(|p| p.into_inner());
        let pacers = map
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(IssuerPacers::new(per_second)));
        pacers.credential.set_rate(per_second);
        pacers.probe.set_rate(per_second);
        pacers.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_backoff_is_jittered_and_bounded() {
        use backon::BackoffBuilder;
        let firsts: Vec<Duration> = (0..20)
            .map(|_| transient().build().next().unwrap())
            .collect();
        for d in &firsts {
            assert!(
                *d >= Duration::from_millis(500) && *d <= Duration::from_millis(1000),
                "{d:?}"
            );
        }
        let distinct: std::collections::BTreeSet<_> = firsts.iter().collect();
        assert!(distinct.len() > 15, "jittered: {firsts:?}");
        let all: Vec<Duration> = transient().build().collect();
        assert_eq!(all.len(), 5, "five retries");
        assert!(all.iter().all(|d| *d <= Duration::from_secs(40)));
    }

    #[test]
    fn attempt_backoff_grows_and_caps() {
        assert_eq!(attempt_backoff(1), Duration::from_secs(30));
        assert_eq!(attempt_backoff(2), Duration::from_secs(60));
        assert_eq!(attempt_backoff(20), Duration::from_secs(900));
    }

    #[tokio::test(start_paused = true)]
    async fn pacer_spaces_requests_and_honours_blocks() {
        let p = Pacer::new(10);
        let start = Instant::now();
        for _ in 0..10 {
            p.acquire().await;
        }
        // Ten requests at 10/s: the tenth goes at 0.9 s.
        assert_eq!(start.elapsed(), Duration::from_millis(900));
        p.block_for(Duration::from_secs(5)).await;
        p.acquire().await;
        assert!(start.elapsed() >= Duration::from_millis(5900));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_waiting_for_its_slot_also_waits_out_a_later_block() {
        let p = std::sync::Arc::new(Pacer::new(1));
        p.acquire().await;
        let start = Instant::now();
        // The next slot is 1 s away; a 429 arrives meanwhile asking for 3 s.
        let waiting = {
            let p = p.clone();
            tokio::spawn(async move { p.acquire().await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        p.block_for(Duration::from_secs(3)).await;
        waiting.await.unwrap();
        assert!(
            start.elapsed() >= Duration::from_millis(3100),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn requests_waiting_through_a_block_leave_at_the_steady_pace_not_at_once() {
        let p = std::sync::Arc::new(Pacer::new(10));
        let start = Instant::now();
        let waiting: Vec<_> = (0..20)
            .map(|_| {
                let p = p.clone();
                tokio::spawn(async move {
                    p.acquire().await;
                    Instant::now()
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        p.block_for(Duration::from_secs(5)).await;
        let mut at = Vec::new();
        for w in waiting {
            at.push(w.await.unwrap().duration_since(start));
        }
        at.sort();
        let after: Vec<_> = at
            .iter()
            .filter(|t| **t >= Duration::from_secs(5))
            .collect();
        assert!(after.len() >= 18, "{at:?}");
        for pair in after.windows(2) {
            assert!(*pair[1] - *pair[0] >= Duration::from_millis(100), "{at:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_reload_keeps_the_block_and_the_pace_of_an_issuer() {
        let registry = PacerRegistry::default();
        let before = registry.get("tfc", 10);
        before.credential.block_for(Duration::from_secs(5)).await;
        // A reload asks again (at another rate): the same pacers, still blocked, at the new rate.
        let after = registry.get("tfc", 20);
        assert!(Arc::ptr_eq(&before, &after));
        let start = Instant::now();
        after.credential.acquire().await;
        assert!(start.elapsed() >= Duration::from_secs(5));
        after.credential.acquire().await;
        assert_eq!(start.elapsed(), Duration::from_millis(5050));
    }
}
