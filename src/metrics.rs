//! Prometheus metrics (SPEC §7). The few global series (histogram, request and sink-write counters, reload and build
//! info) live in an explicit `prometheus` registry. The per-token families — ten series per token, 100,000 at 10,000
//! tokens — are written straight from the status board and a compact counter table into the text format at scrape
//! time: no per-token registry series, nothing to reset, and a token removed from the policy leaves no stale series.
//! (Through the registry a 10,000-token scrape took ~180 ms: `gather` clones every label pair into protobuf-style
//! structs and sorts them; see BENCHMARKS.md.)

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry,
    TextEncoder,
};

use chrono::{DateTime, Utc};

use crate::status::{StatusBoard, TokenStatus};

/// A token's counters (`rotations_total`, `revocations_total`, `notifications_total`, `window_missed_total`).
#[derive(Clone, Copy, Debug, Default)]
struct TokenCounters {
    rotations: [u64; 2],
    revocations: [u64; 2],
    notifications: [u64; 2],
    window_missed: u64,
}

/// `result` label values, indexed by `!ok as usize`.
const RESULTS: [&str; 2] = ["success", "failure"];

/// The per-token gauges (SPEC §7): name, help, and whether the series carry `issuer` and `type` besides `token`.
const GAUGES: [(&str, &str, bool); 6] = [
    (
        "token_rotator_token_expiry_timestamp_seconds",
        "Expiry of the current token (absent when it never expires).",
        true,
    ),
    (
        "token_rotator_token_next_rotation_timestamp_seconds",
        "When the next rotation is due.",
        false,
    ),
    (
        "token_rotator_token_last_success_timestamp_seconds",
        "Last successful rotation.",
        false,
    ),
    (
        "token_rotator_token_ready",
        "1 when the current token is unexpired, stored in every sink, and its last rotation attempt did not fail.",
        false,
    ),
    (
        "token_rotator_token_consecutive_failures",
        "Failed attempts since the last success.",
        false,
    ),
    (
        "token_rotator_previous_token_last_used_timestamp_seconds",
        "Last use of the replaced token while it is in grace (absent when none is, or it was not used).",
        false,
    ),
];

/// A token's `GAUGES` values, in that order (`None`: no series).
type GaugeRow = [Option<i64>; 6];

pub struct Metrics {
    registry: Registry,
    tokens: RwLock<BTreeMap<Arc<str>, TokenCounters>>,
    /// Size of the last exposition, to allocate the next one at once.
    last_size: AtomicUsize,
    pub rotation_duration: HistogramVec,
    pub issuer_requests: IntCounterVec,
    pub sink_writes: IntCounterVec,
    pub config_last_reload_success: Gauge,
    /// `[cluster]` series (SPEC §8.5), registered when the daemon runs in cluster mode.
    cluster: std::sync::OnceLock<ClusterMetrics>,
}

/// The lease's series: `token_rotator_cluster_leader`, `token_rotator_cluster_lease_transitions_total`.
#[derive(Clone)]
pub struct ClusterMetrics {
    pub leader: Gauge,
    pub transitions: prometheus::IntCounter,
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
        let counter = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &r,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let m = Metrics {
            tokens: RwLock::new(BTreeMap::new()),
            last_size: AtomicUsize::new(0),
            rotation_duration: reg(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "token_rotator_rotation_duration_seconds",
                        "Time from create to stored to verified.",
                    )
                    .buckets(vec![
                        0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
                    ]),
                    &["issuer"],
                )
                .expect("valid metric"),
            ),
            issuer_requests: counter(
                "token_rotator_issuer_requests_total",
                "Requests to issuers by HTTP status code, or `error`.",
                &["issuer", "status"],
            ),
            sink_writes: counter(
                "token_rotator_sink_writes_total",
                "Sink writes by result.",
                &["sink", "result"],
            ),
            config_last_reload_success: reg(
                &r,
                Gauge::new(
                    "token_rotator_config_last_reload_success",
                    "1 after a successful start or reload, 0 after a rejected reload.",
                )
                .expect("valid metric"),
            ),
            registry: r,
            cluster: std::sync::OnceLock::new(),
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

    /// The cluster series, registered at the first call.
    pub fn cluster(&self) -> &ClusterMetrics {
        self.cluster.get_or_init(|| ClusterMetrics {
            leader: reg(
                &self.registry,
                Gauge::new(
                    "token_rotator_cluster_leader",
                    "1 while this instance holds the cluster lease (the only one that mints).",
                )
                .expect("valid metric"),
            ),
            transitions: reg(
                &self.registry,
                prometheus::IntCounter::new(
                    "token_rotator_cluster_lease_transitions_total",
                    "Times this instance became or stopped being the lease holder.",
                )
                .expect("valid metric"),
            ),
        })
    }

    /// Creates the zero-valued series of a token, so that `rate()` and `increase()` work from the first scrape.
    pub fn init_token(&self, token: &str) {
        self.init_tokens([&Arc::from(token)]);
    }

    /// `init_token` of many at once, in one bulk build (`status::insert_missing`).
    pub fn init_tokens<'a>(&self, tokens: impl IntoIterator<Item = &'a Arc<str>>) {
        crate::status::insert_missing(
            &mut self.counters_mut(),
            tokens
                .into_iter()
                .map(|t| (t.clone(), TokenCounters::default())),
        );
    }

    pub fn init_sink(&self, sink: &str) {
        for result in RESULTS {
            self.sink_writes.with_label_values(&[sink, result]);
        }
    }

    /// Drops the counters of a token that left the policy.
    pub fn forget_token(&self, token: &str) {
        self.counters_mut().remove(token);
    }

    /// Counts a rotation attempt in `token_rotator_rotations_total`.
    pub fn count_rotation(&self, token: &str, ok: bool) {
        self.count(token, |c| c.rotations[usize::from(!ok)] += 1);
    }

    /// Counts a revocation attempt in `token_rotator_revocations_total`.
    pub fn count_revocation(&self, token: &str, ok: bool) {
        self.count(token, |c| c.revocations[usize::from(!ok)] += 1);
    }

    /// Counts one run of a notify action in `token_rotator_notifications_total` (SPEC §9).
    pub fn count_notification(&self, token: &str, ok: bool) {
        self.count(token, |c| c.notifications[usize::from(!ok)] += 1);
    }

    /// Counts a rotation done outside the maintenance window (`token_rotator_window_missed_total`).
    pub fn count_window_missed(&self, token: &str) {
        self.count(token, |c| c.window_missed += 1);
    }

    /// Only tokens registered with `init_token` are counted: a visit that finishes after a reload dropped its
    /// token must not bring the token's series back.
    fn count(&self, token: &str, f: impl FnOnce(&mut TokenCounters)) {
        if let Some(c) = self.counters_mut().get_mut(token) {
            f(c);
        }
    }

    fn counters_mut(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<Arc<str>, TokenCounters>> {
        self.tokens.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Renders the text exposition format: the registry's global series, then the per-token families from
    /// `board` and the counter table.
    pub fn render(&self, board: &StatusBoard) -> String {
        let mut head = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut head)
            .expect("text encoding to a Vec cannot fail");
        let mut out = String::with_capacity(self.last_size.load(Ordering::Relaxed) + 4096);
        out.push_str(std::str::from_utf8(&head).expect("prometheus text format is UTF-8"));
        let now = crate::clock::now();
        // One pass over the board (under its lock) collects each token's labels and gauge values; the families
        // are then written from those two sequential arrays.
        let mut w = board.with_all(|tokens| Writer::for_board(&mut out, tokens, now));
        for (column, (name, help, full)) in GAUGES.iter().enumerate() {
            w.gauge_family(column, name, help, *full);
        }
        drop(w);
        {
            let counters = self.tokens.read().unwrap_or_else(|p| p.into_inner());
            let mut w = Writer::for_counters(&mut out, &counters);
            w.counter_family(
                &counters,
                "token_rotator_rotations_total",
                "Rotations by result.",
                |c| &c.rotations,
            );
            w.counter_family(
                &counters,
                "token_rotator_revocations_total",
                "Old tokens revoked, by result.",
                |c| &c.revocations,
            );
            w.counter_family(
                &counters,
                "token_rotator_notifications_total",
                "Notify actions run (exec, webhook), by result.",
                |c| &c.notifications,
            );
            w.counter_family(
                &counters,
                "token_rotator_window_missed_total",
                "Rotations done outside the maintenance window because waiting would leave less than min_validity.",
                |c| std::slice::from_ref(&c.window_missed),
            );
        }
        self.last_size.store(out.len(), Ordering::Relaxed);
        out
    }
}

/// The label sets of every token in iteration order, escaped once per scrape rather than once per series, and
/// contiguous: a scrape reads each token's strings once instead of once per family (at 10,000 tokens those reads
/// are cache misses and were most of a scrape's time).
#[derive(Default)]
struct Labels {
    text: String,
    ends: Vec<usize>,
}

impl Labels {
    fn push(&mut self, pairs: &[(&str, &str)]) {
        for (i, (k, v)) in pairs.iter().enumerate() {
            self.text.push(if i == 0 { '{' } else { ',' });
            self.text.push_str(k);
            self.text.push_str("=\"");
            label_value(&mut self.text, v);
            self.text.push('"');
        }
        self.ends.push(self.text.len());
    }

    /// `{k="v",…` of the `i`-th token, without the closing brace.
    fn get(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.text[start..self.ends[i]]
    }
}

/// Writes per-token families in the text exposition format (version 0.0.4).
struct Writer<'a> {
    out: &'a mut String,
    /// `{token="…"` of each token.
    token: Labels,
    /// `{token="…",issuer="…",type="…"` of each token (only for the board's families).
    full: Labels,
    /// The `GAUGES` of each token (only for the board's families).
    rows: Vec<GaugeRow>,
}

impl<'a> Writer<'a> {
    fn for_board(
        out: &'a mut String,
        tokens: &BTreeMap<Arc<str>, TokenStatus>,
        now: DateTime<Utc>,
    ) -> Self {
        let mut w = Writer {
            out,
            token: Labels::default(),
            full: Labels::default(),
            rows: Vec::with_capacity(tokens.len()),
        };
        for s in tokens.values() {
            w.token.push(&[("token", &s.name)]);
            w.full.push(&[
                ("token", &s.name),
                ("issuer", &s.issuer),
                ("type", &s.token_type),
            ]);
            w.rows.push([
                s.current
                    .as_ref()
                    .and_then(|c| c.expires_at)
                    .map(|t| t.timestamp()),
                s.next_due.map(|t| t.timestamp()),
                s.last_success.map(|t| t.timestamp()),
                Some(i64::from(s.is_ready(now))),
                Some(i64::from(s.consecutive_failures)),
                s.previous_last_used.map(|t| t.timestamp()),
            ]);
        }
        w
    }

    fn for_counters(out: &'a mut String, counters: &BTreeMap<Arc<str>, TokenCounters>) -> Self {
        let mut token = Labels::default();
        for name in counters.keys() {
            token.push(&[("token", name)]);
        }
        Writer {
            out,
            token,
            full: Labels::default(),
            rows: Vec::new(),
        }
    }

    fn header(&mut self, name: &str, help: &str, kind: &str) {
        // HELP texts are ours: no backslash or newline to escape.
        let _ = write!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
    }

    /// `name{labels` of the `i`-th token — the caller closes the label set.
    fn open(&mut self, name: &str, i: usize, full: bool) {
        self.out.push_str(name);
        let labels = if full { &self.full } else { &self.token };
        self.out.push_str(labels.get(i));
    }

    fn value(&mut self, v: impl itoa::Integer) {
        self.out.push_str("} ");
        self.out.push_str(itoa::Buffer::new().format(v));
        self.out.push('\n');
    }

    /// One gauge family from column `column` of the rows; a token without a value has no series.
    fn gauge_family(&mut self, column: usize, name: &str, help: &str, full: bool) {
        // The family is announced even when no token has a series in it now (no old token in grace, no token that
        // expires): scrapers and `promtool check metrics` see every family the daemon can export.
        if !self.rows.is_empty() {
            self.header(name, help, "gauge");
        }
        for i in 0..self.rows.len() {
            let Some(v) = self.rows[i][column] else {
                continue;
            };
            self.open(name, i, full);
            self.value(v);
        }
    }

    /// One counter family: a series per token, or two (`result` = `success`, `failure`) when `values` gives two.
    fn counter_family(
        &mut self,
        counters: &BTreeMap<Arc<str>, TokenCounters>,
        name: &str,
        help: &str,
        values: impl Fn(&TokenCounters) -> &[u64],
    ) {
        if counters.is_empty() {
            return;
        }
        self.header(name, help, "counter");
        for (i, c) in counters.values().enumerate() {
            match values(c) {
                [n] => {
                    self.open(name, i, false);
                    self.value(*n);
                }
                ns => {
                    for (result, n) in RESULTS.iter().zip(ns) {
                        self.open(name, i, false);
                        self.out.push_str(",result=\"");
                        self.out.push_str(result);
                        self.out.push('"');
                        self.value(*n);
                    }
                }
            }
        }
    }
}

/// A label value, escaped per the text format (backslash, double quote, newline).
fn label_value(out: &mut String, v: &str) {
    if !v.bytes().any(|b| matches!(b, b'\\' | b'"' | b'\n')) {
        out.push_str(v);
        return;
    }
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{CurrentToken, TokenStatus};
    use chrono::{TimeZone, Utc};

    fn board() -> StatusBoard {
        let board = StatusBoard::new();
        let created = Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap();
        let mut a = TokenStatus::new("ci-org", "tfc", "organization");
        a.current = Some(CurrentToken {
            token_id: "at-1".into(),
            created_at: created,
            expires_at: Some(Utc.with_ymd_and_hms(2099, 1, 1, 0, 0, 0).unwrap()),
        });
        a.stored_everywhere = true;
        a.last_success = Some(created);
        a.next_due = Some(Utc.with_ymd_and_hms(2098, 12, 1, 0, 0, 0).unwrap());
        board.add(a);
        let mut b = TokenStatus::new("team-a", "tfc", "team");
        b.consecutive_failures = 3;
        board.add(b);
        board
    }

    #[test]
    fn per_token_families_render_from_the_board_and_the_counters() {
        let m = Metrics::new();
        let board = board();
        m.init_token("ci-org");
        m.init_token("team-a");
        m.count_rotation("ci-org", true);
        m.count_rotation("team-a", false);
        m.count_rotation("team-a", false);
        m.count_revocation("ci-org", true);
        m.count_window_missed("team-a");
        let text = m.render(&board);
        for line in [
            "# TYPE token_rotator_token_expiry_timestamp_seconds gauge",
            "token_rotator_token_expiry_timestamp_seconds{token=\"ci-org\",issuer=\"tfc\",type=\"organization\"} 4070908800",
            "token_rotator_token_next_rotation_timestamp_seconds{token=\"ci-org\"} 4068230400",
            "token_rotator_token_last_success_timestamp_seconds{token=\"ci-org\"} 1793491200",
            "token_rotator_token_ready{token=\"ci-org\"} 1",
            "token_rotator_token_ready{token=\"team-a\"} 0",
            "token_rotator_token_consecutive_failures{token=\"team-a\"} 3",
            "# TYPE token_rotator_rotations_total counter",
            "token_rotator_rotations_total{token=\"ci-org\",result=\"success\"} 1",
            "token_rotator_rotations_total{token=\"team-a\",result=\"failure\"} 2",
            "token_rotator_revocations_total{token=\"ci-org\",result=\"success\"} 1",
            "token_rotator_revocations_total{token=\"team-a\",result=\"failure\"} 0",
            "token_rotator_window_missed_total{token=\"ci-org\"} 0",
            "token_rotator_window_missed_total{token=\"team-a\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing `{line}` in\n{text}");
        }
        let build = format!(
            "token_rotator_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        assert!(text.lines().any(|l| l == build), "{text}");
        // A token without an expiry or a due time has no such series; each family is one group with one header.
        assert!(!text.contains("expiry_timestamp_seconds{token=\"team-a\""));
        assert_eq!(
            text.matches("# TYPE token_rotator_rotations_total ")
                .count(),
            1
        );
        m.forget_token("team-a");
        board.remove("team-a");
        m.count_rotation("team-a", true);
        assert!(
            !m.render(&board).contains("team-a"),
            "a dropped token stays dropped"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        label_value(&mut out, "a\\b\"c\nd");
        assert_eq!(out, r#"a\\b\"c\nd"#);
    }
}
