//! The seeded fault schedule: what goes wrong, and when. Every decision comes from one generator seeded with the
//! run's seed, asked in the order the (deterministic) run asks, so a seed replays exactly.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What happens to one issuer request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireFault {
    None,
    /// The connection never opens: nothing reaches the service.
    NotSent,
    /// A 503 from a proxy in front of the service (its body quotes the bearer): nothing reaches the service.
    Unavailable,
    /// 429 with the service's reset header: nothing reaches the service.
    RateLimited,
    /// The request is lost in transit: nothing reaches the service, the client times out (30 s).
    LostBefore,
    /// The service acts on the request; the answer is lost (reset), at once or after the client's timeout.
    LostAfter {
        timeout: bool,
    },
    /// The service acts; the answer's status and headers arrive, its body is cut off.
    CutAfter,
    /// The service acts; a proxy in front of it answers 503 anyway (its upstream timed out).
    CommitThen503,
    /// The identity probe of a new token is answered 401 by something in front of the service.
    RefuseProbe,
    /// The answer comes late (1–10 s).
    Slow,
}

/// What happens to one sink operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SinkFault {
    None,
    /// The store is unreachable: nothing happens.
    Down,
    /// The write lands; its answer is lost.
    LostAnswer,
    /// Someone else rewrites the target (same content, new version) just before this write: a CAS conflict.
    ConcurrentWriter,
    /// The answer comes late (5–40 s).
    Slow,
    /// The store refuses the credential (403): retrying soon will not help.
    Refused,
}

/// What happens to one journal write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JournalFault {
    None,
    /// EMFILE: no descriptors left.
    NoDescriptors,
    /// ENOSPC: the disk is full.
    DiskFull,
}

/// The knobs of one seed: how harsh its faults are, drawn from the seed itself.
#[derive(Clone, Debug)]
pub struct Profile {
    pub wire: f64,
    pub sink: f64,
    pub journal: f64,
    /// Chance that an identity probe is refused (some seeds refuse often, to reach the give-up path).
    pub refuse_probe: f64,
    /// Chance that a create makes the operator reload a policy without its token (added back soon after).
    pub reload_during_create: f64,
    /// Mean time between crashes, reloads, `rotate` requests, behind-the-back revocations and clock jumps.
    pub crash_every: Duration,
    pub rotate_every: Duration,
    pub reload_every: Duration,
    pub revoke_every: Duration,
    pub jump_every: Duration,
    /// Chance that a notify action fails (the receiver is down, the program exits non-zero).
    pub notify: f64,
}

pub struct Faults {
    rng: StdRng,
    pub profile: Profile,
    /// Faults are injected only while this is on (the calm phase turns it off).
    pub active: bool,
    /// Every sink operation meets this, whatever `active` says (the time-rule tests set it).
    pub forced_sink: Option<SinkFault>,
    /// Every sink write meets this (reads go through), whatever `active` says.
    pub forced_write: Option<SinkFault>,
    /// The next issuer requests meet these, in order, whatever `active` says.
    pub forced_wire: std::collections::VecDeque<WireFault>,
}

impl Faults {
    pub fn new(seed: u64) -> Faults {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_fa17_0000_0001);
        let minutes = |rng: &mut StdRng, lo: u64, hi: u64| {
            Duration::from_secs(60 * rng.random_range(lo..=hi))
        };
        let profile = Profile {
            wire: rng.random_range(0.02..0.30),
            sink: rng.random_range(0.0..0.20),
            journal: rng.random_range(0.0..0.10),
            refuse_probe: if rng.random_bool(0.3) {
                rng.random_range(0.3..0.9)
            } else {
                rng.random_range(0.0..0.05)
            },
            reload_during_create: rng.random_range(0.0..0.15),
            crash_every: minutes(&mut rng, 30, 180),
            rotate_every: minutes(&mut rng, 30, 240),
            reload_every: minutes(&mut rng, 30, 240),
            revoke_every: minutes(&mut rng, 60, 300),
            jump_every: minutes(&mut rng, 60, 400),
            notify: rng.random_range(0.0..0.5),
        };
        Faults {
            rng,
            profile,
            active: true,
            forced_sink: None,
            forced_write: None,
            forced_wire: Default::default(),
        }
    }

    /// Whether this create makes the operator reload a policy without its token, and when it comes back.
    pub fn reload_during_create(&mut self) -> Option<Duration> {
        (self.active && self.rng.random_bool(self.profile.reload_during_create))
            .then(|| Duration::from_millis(self.rng.random_range(0..3_000)))
    }

    pub fn rng(&mut self) -> &mut StdRng {
        &mut self.rng
    }

    /// A latency in `[lo, hi]` milliseconds.
    pub fn latency(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.rng.random_range(lo..=hi))
    }

    pub fn wire(&mut self, is_probe: bool) -> WireFault {
        if let Some(forced) = self.forced_wire.pop_front() {
            return forced;
        }
        if !self.active {
            return WireFault::None;
        }
        if is_probe && self.rng.random_bool(self.profile.refuse_probe) {
            return WireFault::RefuseProbe;
        }
        if !self.rng.random_bool(self.profile.wire) {
            return WireFault::None;
        }
        match self.rng.random_range(0..100) {
            0..15 => WireFault::NotSent,
            15..35 => WireFault::Unavailable,
            35..50 => WireFault::RateLimited,
            50..58 => WireFault::LostBefore,
            58..72 => WireFault::LostAfter {
                timeout: self.rng.random_bool(0.3),
            },
            72..80 => WireFault::CutAfter,
            80..88 => WireFault::CommitThen503,
            _ => WireFault::Slow,
        }
    }

    pub fn sink(&mut self, write: bool) -> SinkFault {
        if let Some(forced) = self.forced_sink {
            return forced;
        }
        if let (true, Some(forced)) = (write, self.forced_write) {
            return forced;
        }
        if !self.active || !self.rng.random_bool(self.profile.sink) {
            return SinkFault::None;
        }
        match (self.rng.random_range(0..100), write) {
            (0..40, _) => SinkFault::Down,
            (40..60, true) => SinkFault::LostAnswer,
            (60..80, true) => SinkFault::ConcurrentWriter,
            _ => SinkFault::Slow,
        }
    }

    /// Whether this run of a notify action fails.
    pub fn notify_fails(&mut self) -> bool {
        self.active && self.rng.random_bool(self.profile.notify)
    }

    pub fn journal(&mut self) -> JournalFault {
        if !self.active || !self.rng.random_bool(self.profile.journal) {
            return JournalFault::None;
        }
        if self.rng.random_bool(0.5) {
            JournalFault::NoDescriptors
        } else {
            JournalFault::DiskFull
        }
    }

    /// The time until the next event of a kind that happens every `mean` on average (exponential).
    pub fn next_in(&mut self, mean: Duration) -> Duration {
        let u: f64 = self.rng.random_range(0.0001..1.0);
        Duration::from_secs_f64(-u.ln() * mean.as_secs_f64()).max(Duration::from_secs(1))
    }
}
