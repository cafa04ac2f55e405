//! The emulators' clock and randomness: the real ones, or — inside a simulation, per thread — whatever the
//! simulation says (its paused clock, a seeded generator), so that the emulated service and the daemon under test
//! share one notion of time and a run replays exactly.

use std::cell::RefCell;

use chrono::{DateTime, Utc};
use rand::{RngCore, SeedableRng};

type Now = Box<dyn Fn() -> DateTime<Utc>>;

thread_local! {
    static SIMULATED: RefCell<Option<(Now, rand::rngs::StdRng)>> = const { RefCell::new(None) };
}

/// The service's wall clock.
#[allow(clippy::disallowed_methods)]
pub fn now() -> DateTime<Utc> {
    SIMULATED.with(|s| match &*s.borrow() {
        Some((now, _)) => now(),
        None => Utc::now(),
    })
}

/// Runs `f` with the service's random generator.
pub fn with_rng<T>(f: impl FnOnce(&mut dyn RngCore) -> T) -> T {
    SIMULATED.with(|s| match &mut *s.borrow_mut() {
        Some((_, rng)) => f(rng),
        None => f(&mut rand::rng()),
    })
}

/// Ends the simulation of this thread when dropped.
pub struct SimulationGuard(());

impl Drop for SimulationGuard {
    fn drop(&mut self) {
        SIMULATED.with(|s| *s.borrow_mut() = None);
    }
}

/// From now on (on this thread) the emulators read the time from `now` and draw from a generator seeded with
/// `seed`.
pub fn simulate(now: impl Fn() -> DateTime<Utc> + 'static, seed: u64) -> SimulationGuard {
    SIMULATED.with(|s| {
        *s.borrow_mut() = Some((Box::new(now), rand::rngs::StdRng::seed_from_u64(seed)));
    });
    SimulationGuard(())
}
