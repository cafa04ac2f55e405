//! Prometheus metrics (SPEC §7) over an explicit registry. Per-token gauges are computed from the status board at
//! scrape time, so a token removed from the policy leaves no stale series.

use std::sync::Mutex;

use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::status::StatusBoard;

pub struct Metrics {
    registry: Registry,
    expiry: GaugeVec,
    next_rotation: GaugeVec,
    last_success: GaugeVec,
    ready: IntGaugeVec,
    consecutive_failures: IntGaugeVec,
    pub rotations: IntCounterVec,
    pub revocations: IntCounterVec,
    pub rotation_duration: HistogramVec,
    pub issuer_requests: IntCounterVec,
    pub sink_writes: IntCounterVec,
    pub config_last_reload_success: Gauge,
    pub window_missed: IntCounterVec,
    /// Serialises scrapes: gauges are reset and refilled per scrape.
    scrape: Mutex<()>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    r.register(Box::new(c.clone()))
        .expect("metric names are unique");
    c
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &r,
                GaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let int_gauge = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &r,
                IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &r,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let m = Metrics {
            expiry: gauge(
                "token_rotator_token_expiry_timestamp_seconds",
                "Expiry of the current token (absent when it never expires).",
                &["token", "issuer", "type"],
            ),
            next_rotation: gauge(
                "token_rotator_token_next_rotation_timestamp_seconds",
                "When the next rotation is due.",
                &["token"],
            ),
            last_success: gauge(
                "token_rotator_token_last_success_timestamp_seconds",
                "Last successful rotation.",
                &["token"],
            ),
            ready: int_gauge(
                "token_rotator_token_ready",
                "1 when the current token is unexpired, stored in every sink, and its last rotation attempt did not fail.",
                &["token"],
            ),
            consecutive_failures: int_gauge(
                "token_rotator_token_consecutive_failures",
                "Failed attempts since the last success.",
                &["token"],
            ),
            rotations: counter("token_rotator_rotations_total", "Rotations by result.", &["token", "result"]),
            revocations: counter(
                "token_rotator_revocations_total",
                "Old tokens revoked, by result.",
                &["token", "result"],
            ),
            rotation_duration: reg(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "token_rotator_rotation_duration_seconds",
                        "Time from create to stored to verified.",
                    )
                    .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0]),
                    &["issuer"],
                )
                .expect("valid metric"),
            ),
            issuer_requests: counter(
                "token_rotator_issuer_requests_total",
                "Requests to issuers by HTTP status code, or `error`.",
                &["issuer", "status"],
            ),
            sink_writes: counter("token_rotator_sink_writes_total", "Sink writes by result.", &["sink", "result"]),
            config_last_reload_success: reg(
                &r,
                Gauge::new(
                    "token_rotator_config_last_reload_success",
                    "1 after a successful start or reload, 0 after a rejected reload.",
                )
                .expect("valid metric"),
            ),
            window_missed: counter(
                "token_rotator_window_missed_total",
                "Rotations done outside the maintenance window because waiting would leave less than min_validity.",
                &["token"],
            ),
            scrape: Mutex::new(()),
            registry: r,
        };
        let build = reg(
            &m.registry,
            GaugeVec::new(
                Opts::new("token_rotator_build_info", "Build information."),
                &["version"],
            )
            .expect("valid metric"),
        );
        build
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1.0);
        m
    }

    /// Creates the zero-valued series of a token, so that `rate()` and `increase()` work from the first scrape.
    pub fn init_token(&self, token: &str) {
        for result in ["success", "failure"] {
            self.rotations.with_label_values(&[token, result]);
            self.revocations.with_label_values(&[token, result]);
        }
        self.window_missed.with_label_values(&[token]);
    }

    pub fn init_sink(&self, sink: &str) {
        for result in ["success", "failure"] {
            self.sink_writes.with_label_values(&[sink, result]);
        }
    }

    /// Drops the counters of a token that left the policy.
    pub fn forget_token(&self, token: &str) {
        for result in ["success", "failure"] {
            let _ = self.rotations.remove_label_values(&[token, result]);
            let _ = self.revocations.remove_label_values(&[token, result]);
        }
        let _ = self.window_missed.remove_label_values(&[token]);
    }

    /// Renders the text exposition format, refreshing the per-token gauges from `board` first.
    pub fn render(&self, board: &StatusBoard) -> String {
        let _guard = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        for g in [&self.expiry, &self.next_rotation, &self.last_success] {
            g.reset();
        }
        self.ready.reset();
        self.consecutive_failures.reset();
        let now = crate::clock::now();
        board.for_each(|s| {
            let name = s.name.as_str();
            if let Some(cur) = &s.current {
                if let Some(exp) = cur.expires_at {
                    self.expiry
                        .with_label_values(&[name, s.issuer.as_str(), s.token_type.as_str()])
                        .set(exp.timestamp() as f64);
                }
            }
            if let Some(next) = s.next_due {
                self.next_rotation
                    .with_label_values(&[name])
                    .set(next.timestamp() as f64);
            }
            if let Some(t) = s.last_success {
                self.last_success
                    .with_label_values(&[name])
                    .set(t.timestamp() as f64);
            }
            self.ready
                .with_label_values(&[name])
                .set(i64::from(s.is_ready(now)));
            self.consecutive_failures
                .with_label_values(&[name])
                .set(i64::from(s.consecutive_failures));
        });
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding to a Vec cannot fail");
        String::from_utf8(out).expect("prometheus text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
