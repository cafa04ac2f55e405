//! The one retry policy (exponential backoff with jitter, bounded) and the per-issuer request pacer.

use std::time::Duration;

use backon::ExponentialBuilder;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// Backoff for transient failures inside one rotation attempt: 0.5 s, 1 s, 2 s, … capped at 20 s, 5 retries.
pub fn transient() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_jitter()
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
    interval: Duration,
    state: Mutex<PacerState>,
}

#[derive(Debug)]
struct PacerState {
    next_free: Instant,
    blocked_until: Instant,
}

impl Pacer {
    pub fn new(per_second: u32) -> Self {
        let now = Instant::now();
        Pacer {
            interval: Duration::from_secs(1) / per_second.max(1),
            state: Mutex::new(PacerState {
                next_free: now,
                blocked_until: now,
            }),
        }
    }

    /// Waits for this request's slot.
    pub async fn acquire(&self) {
        let slot = {
            let mut s = self.state.lock().await;
            let slot = s.next_free.max(s.blocked_until).max(Instant::now());
            s.next_free = slot + self.interval;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }

    /// After a 429: nobody sends before `reset` has passed (SPEC §5.4).
    pub async fn block_for(&self, reset: Duration) {
        let mut s = self.state.lock().await;
        let until = Instant::now() + reset;
        if until > s.blocked_until {
            s.blocked_until = until;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
