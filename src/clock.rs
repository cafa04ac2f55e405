//! The one place that reads the wall clock and draws random numbers. Everything else takes `now` as a parameter
//! or asks here (clippy.toml forbids `Utc::now` elsewhere), so schedule maths are pure and a simulation can drive
//! the whole daemon on tokio's paused clock with a seeded generator (`simulate`), replaying a run exactly.

use std::cell::RefCell;

use chrono::{DateTime, TimeDelta, Utc};
use rand::{Rng, SeedableRng};

/// A simulated clock and generator, per thread (a simulation runs on one current-thread runtime).
struct Simulation {
    /// The wall-clock time at `start`.
    base: DateTime<Utc>,
    start: tokio::time::Instant,
    /// Jumps of the wall clock (NTP steps, a suspended VM): added to what the monotonic clock says.
    jumped: TimeDelta,
    rng: rand::rngs::StdRng,
}

thread_local! {
    static SIMULATED: RefCell<Option<Simulation>> = const { RefCell::new(None) };
}

#[allow(clippy::disallowed_methods)]
pub fn now() -> DateTime<Utc> {
    SIMULATED.with(|s| match &*s.borrow() {
        Some(sim) => {
            let elapsed = tokio::time::Instant::now().saturating_duration_since(sim.start);
            sim.base + TimeDelta::from_std(elapsed).unwrap_or(TimeDelta::MAX) + sim.jumped
        }
        None => Utc::now(),
    })
}

/// A uniformly random number in `[0, 1)`.
pub fn random_fraction() -> f64 {
    SIMULATED.with(|s| match &mut *s.borrow_mut() {
        Some(sim) => sim.rng.random::<f64>(),
        None => rand::random::<f64>(),
    })
}

/// A random 64-bit number (retry jitter seeds).
pub fn random_u64() -> u64 {
    SIMULATED.with(|s| match &mut *s.borrow_mut() {
        Some(sim) => sim.rng.random::<u64>(),
        None => rand::random::<u64>(),
    })
}

/// Ends the simulation of this thread when dropped.
#[doc(hidden)]
pub struct SimulationGuard(());

impl Drop for SimulationGuard {
    fn drop(&mut self) {
        SIMULATED.with(|s| *s.borrow_mut() = None);
    }
}

/// From now on (on this thread) the wall clock is `base` plus tokio's (paused) clock, and random numbers come
/// from a generator seeded with `seed`. Call inside the runtime that drives the simulation.
#[doc(hidden)]
pub fn simulate(base: DateTime<Utc>, seed: u64) -> SimulationGuard {
    SIMULATED.with(|s| {
        *s.borrow_mut() = Some(Simulation {
            base,
            start: tokio::time::Instant::now(),
            jumped: TimeDelta::zero(),
            rng: rand::rngs::StdRng::seed_from_u64(seed),
        })
    });
    SimulationGuard(())
}

/// Steps the simulated wall clock by `delta` (forwards or backwards), as an NTP step or a resumed VM would.
#[doc(hidden)]
pub fn jump(delta: TimeDelta) {
    SIMULATED.with(|s| {
        if let Some(sim) = &mut *s.borrow_mut() {
            sim.jumped += delta;
        }
    });
}

/// A uniformly random duration in `[0, max]` (schedule jitter, rate-limit waits).
pub fn random_up_to(max: std::time::Duration) -> std::time::Duration {
    if max.is_zero() {
        return max;
    }
    max.mul_f64(random_fraction())
}
