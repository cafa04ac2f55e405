//! Operations artifacts: the Prometheus alert rules (`promtool check rules` and the rule unit tests), the metric names
//! the rules and the Grafana dashboard use (each one must be a SPEC §7 metric the daemon exports), the dashboard's
//! shape, the runbook links, and a real Prometheus that scrapes a live daemon and fires the shipped alerts.
//! `promtool` and `prometheus` come from `PROMTOOL` / `PROMETHEUS`, else PATH; `bash scripts/install-test-deps.sh`
//! installs both. A missing tool fails the test: nothing here is skipped silently.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{free_port, DaemonProc, Workdir};

const RUNBOOK_BASE: &str =
    "https://github.com/token-rotator/token-rotator/blob/main/docs/runbook.md";

/// SPEC §7, with each metric's type.
/// Metrics the daemon exports beyond SPEC §7 (documented in the README too).
const EXTRA_METRICS: &[(&str, &str)] = &[
    ("token_rotator_window_missed_total", "counter"),
    // SPEC §8.5, exported in cluster mode.
    ("token_rotator_cluster_leader", "gauge"),
    ("token_rotator_cluster_lease_transitions_total", "counter"),
];

const SPEC_METRICS: &[(&str, &str)] = &[
    ("token_rotator_token_expiry_timestamp_seconds", "gauge"),
    (
        "token_rotator_token_next_rotation_timestamp_seconds",
        "gauge",
    ),
    (
        "token_rotator_token_last_success_timestamp_seconds",
        "gauge",
    ),
    ("token_rotator_token_ready", "gauge"),
    ("token_rotator_token_consecutive_failures", "gauge"),
    ("token_rotator_rotations_total", "counter"),
    ("token_rotator_revocations_total", "counter"),
    ("token_rotator_rotation_duration_seconds", "histogram"),
    ("token_rotator_issuer_requests_total", "counter"),
    ("token_rotator_sink_writes_total", "counter"),
    ("token_rotator_config_last_reload_success", "gauge"),
    ("token_rotator_build_info", "gauge"),
    // SPEC §9 and §10.
    ("token_rotator_notifications_total", "counter"),
    (
        "token_rotator_previous_token_last_used_timestamp_seconds",
        "gauge",
    ),
];

/// The alerts SPEC §7 and issue 8 require.
const REQUIRED_ALERTS: &[&str] = &[
    "TokenRotatorTokenExpiringSoon",
    "TokenRotatorRotationFailing",
    "TokenRotatorTokenOverdue",
    "TokenRotatorTokenNotReady",
    "TokenRotatorDown",
    "TokenRotatorReloadFailed",
    // Issue 17: consumers are told, and cut over.
    "TokenRotatorNotifyFailing",
    "TokenRotatorConsumerOnOldToken",
];

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo(rel)).unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
}

/// `$VAR` if set (it must exist), else `name` on PATH; a missing tool fails the test with the way to install it.
fn tool(var: &str, name: &str) -> PathBuf {
    let hint = "run `bash scripts/install-test-deps.sh` (it installs Debian's prometheus package, which provides \
                promtool and prometheus)";
    if let Some(p) = std::env::var_os(var) {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "{var}={} does not exist: {hint}, or fix {var}",
            p.display()
        );
        return p;
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| panic!("`{name}` not found on PATH and {var} is not set: {hint}"))
}

struct Finished {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `cmd` to completion, at most `timeout` (then kills it and fails).
fn run_bounded(cmd: &mut Command, timeout: Duration) -> Finished {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let reader = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = reader(Box::new(child.stdout.take().unwrap()));
    let err = reader(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Finished {
        code: status.code(),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// alerts.yml, read with a small line reader (the file's layout is ours; the rule count is cross-checked with promtool)

#[derive(Debug, Default)]
struct Rule {
    alert: String,
    expr: String,
    for_: Option<String>,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

fn unquote(v: &str) -> String {
    let v = v.trim();
    if v.len() >= 2
        && (v.starts_with('"') && v.ends_with('"') || v.starts_with('\'') && v.ends_with('\''))
    {
        v[1..v.len() - 1].to_string()
    } else {
        v.to_string()
    }
}

/// The value of a `key: value` line, following YAML block scalars (`|`, `>-`, …) onto the more-indented lines below.
fn scalar(lines: &[&str], i: &mut usize, value: &str) -> String {
    let value = value.trim();
    if !(value.starts_with('|') || value.starts_with('>')) {
        return unquote(value);
    }
    let base = indent(lines[*i]);
    let mut parts = Vec::new();
    while *i + 1 < lines.len() && (lines[*i + 1].trim().is_empty() || indent(lines[*i + 1]) > base)
    {
        *i += 1;
        parts.push(lines[*i].trim());
    }
    let sep = if value.starts_with('|') { "\n" } else { " " };
    parts.join(sep).trim().to_string()
}

fn parse_rules(text: &str) -> Vec<Rule> {
    let lines: Vec<&str> = text.lines().collect();
    let mut rules: Vec<Rule> = Vec::new();
    let mut section = "";
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let t = line.trim();
        if t.starts_with('#') || t.is_empty() {
            i += 1;
            continue;
        }
        if let Some(name) = t.strip_prefix("- alert:") {
            rules.push(Rule {
                alert: unquote(name),
                ..Rule::default()
            });
            section = "";
        } else if let Some(rule) = rules.last_mut() {
            if let Some((key, value)) = t.split_once(':') {
                match (section, key) {
                    (_, "expr") => rule.expr = scalar(&lines, &mut i, value),
                    (_, "for") => rule.for_ = Some(unquote(value)),
                    (_, "labels") | (_, "annotations") if value.trim().is_empty() => section = key,
                    ("labels", k) => {
                        let v = scalar(&lines, &mut i, value);
                        rule.labels.insert(k.to_string(), v);
                    }
                    ("annotations", k) => {
                        let v = scalar(&lines, &mut i, value);
                        rule.annotations.insert(k.to_string(), v);
                    }
                    _ => {}
                }
            }
        }
        i += 1;
    }
    rules
}

fn shipped_rules() -> Vec<Rule> {
    let rules = parse_rules(&read("config/prometheus/alerts.yml"));
    assert!(!rules.is_empty(), "no rule found in alerts.yml");
    rules
}

// ---------------------------------------------------------------------------------------------------------------
// PromQL: the metric names an expression selects

/// Never metric names here: operators, and aggregations (which may be followed by `by (…)` before their parenthesis).
const PROMQL_KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "atan2",
    "inf",
    "nan",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];
const PROMQL_LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Index just past the `close` matching the `open` at `i`, skipping quoted strings.
fn skip_group(c: &[char], mut i: usize, open: char, close: char) -> usize {
    let mut depth = 0;
    while i < c.len() {
        match c[i] {
            q @ ('"' | '\'' | '`') => i = skip_string(c, i, q) - 1,
            x if x == open => depth += 1,
            x if x == close => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    c.len()
}

fn skip_string(c: &[char], mut i: usize, quote: char) -> usize {
    i += 1;
    while i < c.len() && c[i] != quote {
        if c[i] == '\\' && quote != '`' {
            i += 1;
        }
        i += 1;
    }
    i + 1
}

/// Every metric name `expr` selects (identifiers that are not functions, keywords, label lists, label matchers,
/// ranges, strings, numbers, durations or Grafana `$variables`).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let c: Vec<char> = expr.chars().collect();
    let ident = |ch: char| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':';
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < c.len() {
        match c[i] {
            q @ ('"' | '\'' | '`') => i = skip_string(&c, i, q),
            '{' => i = skip_group(&c, i, '{', '}'),
            '[' => i = skip_group(&c, i, '[', ']'),
            '#' => {
                while i < c.len() && c[i] != '\n' {
                    i += 1;
                }
            }
            '$' => {
                i += 1;
                if i < c.len() && c[i] == '{' {
                    i = skip_group(&c, i, '{', '}');
                } else {
                    while i < c.len() && ident(c[i]) {
                        i += 1;
                    }
                }
            }
            ch if ch.is_ascii_digit() || ch == '.' => {
                while i < c.len() && (ident(c[i]) || c[i] == '.') {
                    i += 1;
                }
            }
            ch if ch.is_ascii_alphabetic() || ch == '_' || ch == ':' => {
                let start = i;
                while i < c.len() && ident(c[i]) {
                    i += 1;
                }
                let word: String = c[start..i].iter().collect();
                let mut j = i;
                while j < c.len() && c[j].is_whitespace() {
                    j += 1;
                }
                let call = j < c.len() && c[j] == '(';
                let lower = word.to_ascii_lowercase();
                if PROMQL_LABEL_LISTS.contains(&lower.as_str()) {
                    if call {
                        i = skip_group(&c, j, '(', ')');
                    }
                } else if !call && !PROMQL_KEYWORDS.contains(&lower.as_str()) {
                    names.insert(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

/// The hand-written per-token families parse and lint clean (`promtool check metrics`: format, HELP, TYPE,
/// counter suffixes, one group per family).
#[test]
fn the_exposition_passes_promtool_check_metrics() {
    let promtool = tool("PROMTOOL", "promtool");
    let mut child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(exposition().as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool finishes");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn promql_metric_names_are_found_and_nothing_else() {
    let got = metric_names(
        r#"histogram_quantile(0.9, sum by (le, issuer) (rate(a_bucket{x=~"b|c{}", y='d'}[$window])))
           / on (job) group_left(version) b_total offset 5m or absent(up{job="t"}) and time() - c > 3 * 86400
           unless ${var} + $__rate_interval"#,
    );
    let want: BTreeSet<String> = ["a_bucket", "b_total", "up", "c"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(got, want);
}

/// The exposition `/metrics` renders with every metric populated.
fn exposition() -> String {
    use token_rotator::status::{StatusBoard, TokenStatus};
    let metrics = token_rotator::metrics::Metrics::new();
    let board = StatusBoard::new();
    let now = token_rotator::clock::now();
    board.add(TokenStatus::healthy(
        "ci-org",
        "tfc",
        "organization",
        "at-1",
        now,
    ));
    metrics.init_token("ci-org");
    metrics.init_sink("vault");
    metrics.cluster().leader.set(1.0);
    metrics
        .rotation_duration
        .with_label_values(&["tfc"])
        .observe(0.2);
    metrics
        .issuer_requests
        .with_label_values(&["tfc", "201"])
        .inc();
    metrics.render(&board)
}

/// The families `/metrics` renders, by type, with every metric populated.
fn exported_metrics() -> BTreeMap<String, String> {
    exposition()
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(n, t)| (n.to_string(), t.trim().to_string()))
        .collect()
}

/// `name` is a metric the daemon exports (a histogram's `_bucket`/`_sum`/`_count` series count as the histogram).
fn resolve<'a>(name: &'a str, types: &BTreeMap<String, String>) -> Option<&'a str> {
    if types.contains_key(name) {
        return Some(name);
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        name.strip_suffix(suffix)
            .filter(|base| types.get(*base).map(String::as_str) == Some("histogram"))
    })
}

fn dashboard() -> Value {
    let text = read("config/grafana/token-rotator.json");
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("config/grafana/token-rotator.json is not valid JSON: {e}"))
}

/// Every panel, rows' nested panels included.
fn all_panels(d: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    let mut stack: Vec<Value> = d["panels"].as_array().cloned().unwrap_or_default();
    while let Some(p) = stack.pop() {
        if let Some(nested) = p["panels"].as_array() {
            stack.extend(nested.iter().cloned());
        }
        out.push(p);
    }
    out
}

/// Every PromQL expression in the dashboard: panel targets, and the metric selector of `label_values(…)` variables.
fn dashboard_exprs(d: &Value) -> Vec<String> {
    let mut exprs: Vec<String> = all_panels(d)
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_string))
        .collect();
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        let q = v["query"]["query"]
            .as_str()
            .or(v["query"].as_str())
            .unwrap_or("");
        if let Some(args) = q
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
        {
            if let Some((selector, _label)) = args.rsplit_once(',') {
                exprs.push(selector.trim().to_string());
            }
        }
    }
    exprs
}

// ---------------------------------------------------------------------------------------------------------------

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let promtool = tool("PROMTOOL", "promtool");
    let check = run_bounded(
        Command::new(&promtool)
            .arg("check")
            .arg("rules")
            .arg(repo("config/prometheus/alerts.yml")),
        Duration::from_secs(60),
    );
    assert_eq!(
        check.code,
        Some(0),
        "promtool check rules failed:\n{}{}",
        check.stdout,
        check.stderr
    );
    // The line reader the other tests use sees the same rules promtool does.
    let found = format!("SUCCESS: {} rules found", shipped_rules().len());
    assert!(
        check.stdout.contains(&found),
        "promtool: {}; expected {found:?}",
        check.stdout
    );

    let test = run_bounded(
        Command::new(&promtool)
            .arg("test")
            .arg("rules")
            .arg(repo("config/prometheus/alerts_test.yml")),
        Duration::from_secs(60),
    );
    assert_eq!(
        test.code,
        Some(0),
        "promtool test rules failed:\n{}{}",
        test.stdout,
        test.stderr
    );
}

#[test]
fn alert_rules_cover_every_required_alert_and_each_has_a_severity_texts_and_a_runbook_section() {
    let rules = shipped_rules();
    let test_file = read("config/prometheus/alerts_test.yml");
    let anchors = heading_anchors(&read("docs/runbook.md"));
    for required in REQUIRED_ALERTS {
        assert!(
            rules.iter().any(|r| r.alert == *required),
            "alerts.yml has no {required}"
        );
    }
    for r in &rules {
        let a = &r.alert;
        assert!(!r.expr.is_empty(), "{a}: no expr");
        assert!(
            matches!(
                r.labels.get("severity").map(String::as_str),
                Some("warning" | "critical")
            ),
            "{a}: labels.severity must be warning or critical: {:?}",
            r.labels
        );
        for key in ["summary", "description", "runbook_url"] {
            assert!(
                r.annotations.get(key).is_some_and(|v| !v.is_empty()),
                "{a}: annotations.{key} missing"
            );
        }
        assert!(
            r.annotations["description"].contains("{{ $labels."),
            "{a}: the description names the affected token / instance"
        );
        let url = &r.annotations["runbook_url"];
        let anchor = url
            .strip_prefix(&format!("{RUNBOOK_BASE}#"))
            .unwrap_or_else(|| panic!("{a}: runbook_url {url} is not {RUNBOOK_BASE}#<anchor>"));
        assert_eq!(
            anchor,
            a.to_lowercase(),
            "{a}: the anchor is the alert's own section"
        );
        assert!(
            anchors.contains(anchor),
            "{a}: docs/runbook.md has no section #{anchor}"
        );
        // Each alert is exercised by the promtool unit tests.
        assert!(
            test_file.contains(&format!("alertname: {a}\n")),
            "{a}: no test in alerts_test.yml"
        );
    }
    let down = rules
        .iter()
        .filter(|r| r.alert == "TokenRotatorDown")
        .map(|r| r.expr.as_str())
        .collect::<Vec<_>>();
    assert!(
        down.iter()
            .any(|e| e.contains(r#"up{job="token-rotator"} == 0"#))
            && down
                .iter()
                .any(|e| e.contains(r#"absent(up{job="token-rotator"})"#)),
        "TokenRotatorDown covers both a down and an absent target: {down:?}"
    );
}

#[test]
fn alert_rules_and_dashboard_use_only_metrics_the_daemon_exports() {
    let spec: BTreeMap<String, String> = SPEC_METRICS
        .iter()
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect();

    // The README's metric table is the SPEC's.
    let readme = read("README.md");
    let section = readme
        .split("## Endpoints and metrics")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("README has an `Endpoints and metrics` section");
    let documented: BTreeSet<String> = section
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|n| n.starts_with("token_rotator_"))
        .map(str::to_string)
        .collect();
    let mut expected: BTreeSet<String> = spec.keys().cloned().collect();
    expected.extend(EXTRA_METRICS.iter().map(|(n, _)| n.to_string()));
    assert_eq!(
        documented, expected,
        "README metric table vs SPEC §7 plus the documented extras"
    );
    for (name, ty) in EXTRA_METRICS {
        assert_eq!(
            exported_metrics().get(*name).map(String::as_str),
            Some(*ty),
            "{name} is exported"
        );
    }

    // The daemon exports every SPEC metric with its SPEC type.
    let exported = exported_metrics();
    for (name, ty) in &spec {
        assert_eq!(
            exported.get(name),
            Some(ty),
            "the daemon exports {name} as a {ty}: {exported:?}"
        );
    }

    let check = |origin: &str, exprs: &[String]| {
        let mut used = BTreeSet::new();
        for expr in exprs {
            assert!(
                !expr.contains("__name__"),
                "{origin}: select metrics by name, not __name__: {expr}"
            );
            let names = metric_names(expr);
            assert!(!names.is_empty(), "{origin}: no metric in {expr}");
            for name in names {
                if name == "up" {
                    continue;
                }
                let base = resolve(&name, &exported).unwrap_or_else(|| {
                    panic!("{origin}: `{name}` is not a metric the daemon exports (in {expr})")
                });
                assert!(
                    spec.contains_key(base) || EXTRA_METRICS.iter().any(|(n, _)| *n == base),
                    "{origin}: `{name}` is not a SPEC §7 metric (in {expr})"
                );
                used.insert(base.to_string());
            }
        }
        used
    };

    let rules = shipped_rules();
    let rule_exprs: Vec<String> = rules.iter().map(|r| r.expr.clone()).collect();
    let used = check("alerts.yml", &rule_exprs);
    for needed in [
        "token_rotator_token_expiry_timestamp_seconds",
        "token_rotator_token_consecutive_failures",
        "token_rotator_rotations_total",
        "token_rotator_token_next_rotation_timestamp_seconds",
        "token_rotator_token_ready",
        "token_rotator_config_last_reload_success",
        "token_rotator_revocations_total",
    ] {
        assert!(used.contains(needed), "no alert uses {needed}");
    }

    let d = dashboard();
    let exprs = dashboard_exprs(&d);
    assert!(!exprs.is_empty(), "the dashboard has no PromQL");
    let used = check("token-rotator.json", &exprs);
    for needed in [
        "token_rotator_token_expiry_timestamp_seconds",
        "token_rotator_token_next_rotation_timestamp_seconds",
        "token_rotator_rotations_total",
        "token_rotator_sink_writes_total",
        "token_rotator_issuer_requests_total",
        "token_rotator_token_ready",
        "token_rotator_rotation_duration_seconds",
    ] {
        assert!(used.contains(needed), "no dashboard panel shows {needed}");
    }
}

#[test]
fn grafana_dashboard_is_valid_json_with_panels_on_a_selectable_prometheus() {
    let d = dashboard();
    assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()), "title");
    assert!(d["uid"].as_str().is_some_and(|t| !t.is_empty()), "uid");
    let vars = d["templating"]["list"].as_array().expect("templating.list");
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no `{name}` variable"))
    };
    assert_eq!(var("DS_PROMETHEUS")["type"], "datasource");
    assert_eq!(var("DS_PROMETHEUS")["query"], "prometheus");
    let token = var("token");
    assert_eq!(token["type"], "query");
    let token_query = token["query"]["query"].as_str().or(token["query"].as_str());
    assert_eq!(
        token_query,
        Some("label_values(token_rotator_token_ready, token)")
    );
    assert_eq!(token["datasource"]["uid"], "${DS_PROMETHEUS}");

    let panels = all_panels(&d);
    let graphs: Vec<&Value> = panels.iter().filter(|p| p["type"] != "row").collect();
    assert!(
        graphs.len() >= 7,
        "expected the panels of issue 8, found {}",
        graphs.len()
    );
    let mut ids = BTreeSet::new();
    for p in &panels {
        let title = p["title"].as_str().unwrap_or("?");
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate panel id in {title}"
        );
        for k in ["x", "y", "w", "h"] {
            assert!(p["gridPos"][k].is_u64(), "{title}: gridPos.{k}");
        }
    }
    for p in graphs {
        let title = p["title"].as_str().unwrap_or("?");
        assert_eq!(
            p["datasource"]["uid"], "${DS_PROMETHEUS}",
            "{title}: panel data source"
        );
        let targets = p["targets"].as_array().filter(|t| !t.is_empty());
        for t in targets.unwrap_or_else(|| panic!("{title}: no targets")) {
            assert!(
                t["expr"].as_str().is_some_and(|e| !e.trim().is_empty()),
                "{title}: empty expr"
            );
            assert_eq!(
                t["datasource"]["uid"], "${DS_PROMETHEUS}",
                "{title}: target data source"
            );
            assert!(t["refId"].is_string(), "{title}: refId");
        }
    }
}

/// GitHub's anchors for the headings of a Markdown document.
fn heading_anchors(md: &str) -> BTreeSet<String> {
    let mut in_code = false;
    let mut anchors = BTreeSet::new();
    for line in md.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code || !line.starts_with('#') {
            continue;
        }
        let text = line.trim_start_matches('#').trim();
        let slug: String = text
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        anchors.insert(slug);
    }
    anchors
}

#[test]
fn ops_docs_links_resolve() {
    for doc in ["docs/runbook.md", "docs/operations.md"] {
        let text = read(doc);
        let dir = repo(doc).parent().unwrap().to_path_buf();
        for (i, _) in text.match_indices("](") {
            let rest = &text[i + 2..];
            let target = &rest[..rest.find(')').expect("closing parenthesis")];
            if target.starts_with("http://") || target.starts_with("https://") {
                continue;
            }
            let (file, anchor) = target.split_once('#').unwrap_or((target, ""));
            let path = if file.is_empty() {
                repo(doc)
            } else {
                dir.join(file)
            };
            assert!(
                path.exists(),
                "{doc}: link to {target}: {} does not exist",
                path.display()
            );
            if !anchor.is_empty() {
                let anchors = heading_anchors(&std::fs::read_to_string(&path).unwrap());
                assert!(
                    anchors.contains(anchor),
                    "{doc}: link to {target}: no such section"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// A real Prometheus, a live daemon, the shipped rules

/// A Prometheus server on 127.0.0.1, killed on drop.
struct Prometheus {
    child: Child,
    base: String,
    log: PathBuf,
    http: reqwest::Client,
}

impl Prometheus {
    async fn start(dir: &Path, config: &str) -> Prometheus {
        let bin = tool("PROMETHEUS", "prometheus");
        let cfg = dir.join("prometheus.yml");
        std::fs::write(&cfg, config).unwrap();
        let log = dir.join("prometheus.log");
        let port = free_port();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start prometheus");
        let mut p = Prometheus {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("prometheus exited ({status}):\n{}", p.log());
            }
            if let Ok(r) = p.http.get(format!("{}/-/ready", p.base)).send().await {
                if r.status().is_success() {
                    return p;
                }
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready within 20 s:\n{}",
                p.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn api(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let url = reqwest::Url::parse_with_params(&format!("{}/api/v1/{path}", self.base), query)
            .unwrap();
        let r = self
            .http
            .get(url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("prometheus {path}: {e}"));
        let body: Value = r.json().await.unwrap();
        assert_eq!(
            body["status"], "success",
            "prometheus {path} {query:?}: {body}"
        );
        body["data"].clone()
    }

    /// The firing alerts, as their label maps.
    async fn firing(&self) -> Vec<Value> {
        let data = self.api("alerts", &[]).await;
        data["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|a| a["state"] == "firing")
            .map(|a| a["labels"].clone())
            .collect()
    }

    /// Waits (bounded) until an alert whose labels contain `labels` fires; returns its labels.
    async fn wait_firing(&self, labels: &[(&str, &str)], timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let firing = self.firing().await;
            if let Some(a) = firing
                .iter()
                .find(|a| labels.iter().all(|(k, v)| a[*k] == *v))
            {
                return a.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no firing alert with {labels:?} within {timeout:?}; firing: {firing:?}\nprometheus log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// alerts.yml with every `for:` shortened to 1 s, so that the test does not wait 15 minutes.
fn rules_with_short_for() -> String {
    let text = read("config/prometheus/alerts.yml");
    let mut replaced = 0;
    let out: Vec<String> = text
        .lines()
        .map(|l| match l.trim_start().strip_prefix("for:") {
            Some(_) => {
                replaced += 1;
                format!("{}for: 1s", &l[..indent(l)])
            }
            None => l.to_string(),
        })
        .collect();
    assert_eq!(
        replaced,
        shipped_rules().iter().filter(|r| r.for_.is_some()).count()
    );
    out.join("\n") + "\n"
}

/// Grafana's variables replaced by values Prometheus accepts.
fn grafana_to_promql(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$window", "1h")
        .replace("$token", ".*")
        .replace("$instance", ".*")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_fires_the_shipped_alerts_against_a_live_daemon() {
    let work = Workdir::new();
    // Issuer and sink at loopback ports nobody listens on: every attempt fails, the token is never ready.
    let dead_issuer = free_port();
    let dead_sink = free_port();
    let listen = free_port();
    let policy_text = format!(
        r#"[daemon]
state_dir = "{state}"
listen = "127.0.0.1:{listen}"

[issuers.tfc]
kind = "tfe"
address = "http://127.0.0.1:{dead_issuer}"
token = {{ env = "TFC_TOKEN" }}

[sinks.vault]
kind = "vault"
address = "http://127.0.0.1:{dead_sink}"
kv_version = 2
auth = {{ method = "token", token = {{ env = "VAULT_TOKEN" }} }}

[tokens.ci-org]
issuer = "tfc"
type = "organization"
organization = "acme"
sinks = [{{ sink = "vault", path = "ci/tfc-org" }}]
"#,
        state = work.state_dir().display(),
    );
    let policy = work.write_policy(&policy_text);
    let daemon = DaemonProc::start(
        &policy,
        listen,
        &[
            ("TFC_TOKEN", "tfc-credential"),
            ("VAULT_TOKEN", "vault-credential"),
        ],
    )
    .await;
    let instance = format!("127.0.0.1:{listen}");

    let prom_dir = tempfile::tempdir().unwrap();
    std::fs::write(prom_dir.path().join("rules.yml"), rules_with_short_for()).unwrap();
    let prom = Prometheus::start(
        prom_dir.path(),
        &format!(
            r#"global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - rules.yml
scrape_configs:
  - job_name: token-rotator
    static_configs:
      - targets: ["{instance}"]
"#
        ),
    )
    .await;

    let not_ready = prom
        .wait_firing(
            &[
                ("alertname", "TokenRotatorTokenNotReady"),
                ("token", "ci-org"),
            ],
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(not_ready["instance"], instance.as_str());
    assert_eq!(not_ready["job"], "token-rotator");
    assert_eq!(not_ready["severity"], "warning");

    // Every rule evaluates without error against the real series.
    let groups = prom.api("rules", &[]).await;
    for g in groups["groups"].as_array().unwrap() {
        for r in g["rules"].as_array().unwrap() {
            assert_eq!(
                r["health"], "ok",
                "rule {} does not evaluate: {}",
                r["name"], r["lastError"]
            );
        }
    }
    let firing = prom.firing().await;
    for quiet in [
        "TokenRotatorDown",
        "TokenRotatorReloadFailed",
        "TokenRotatorTokenExpiringSoon",
    ] {
        assert!(
            !firing.iter().any(|a| a["alertname"] == quiet),
            "{quiet} fires while it should not: {firing:?}"
        );
    }

    // The dashboard's queries run on a real Prometheus, and its token variable lists the daemon's token.
    let d = dashboard();
    for expr in dashboard_exprs(&d) {
        let data = prom
            .api("query", &[("query", &grafana_to_promql(&expr))])
            .await;
        // The version join matches the daemon's series (a wrong `on (…)` would silently return nothing).
        if expr.contains("group_left") {
            let result = data["result"].as_array().unwrap();
            assert_eq!(result.len(), 1, "{expr}: {data}");
            assert_eq!(result[0]["metric"]["version"], env!("CARGO_PKG_VERSION"));
        }
    }
    let tokens = prom
        .api(
            "label/token/values",
            &[("match[]", "token_rotator_token_ready")],
        )
        .await;
    assert!(
        tokens.as_array().unwrap().contains(&Value::from("ci-org")),
        "{tokens}"
    );

    // A rejected reload: the daemon keeps running and says so through the metric.
    std::fs::write(&policy, format!("{policy_text}\nnot_a_key = 1\n")).unwrap();
    let hup = Command::new("kill")
        .arg("-HUP")
        .arg(daemon.pid().to_string())
        .status()
        .unwrap();
    assert!(hup.success());
    let reload = prom
        .wait_firing(
            &[("alertname", "TokenRotatorReloadFailed")],
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(reload["instance"], instance.as_str());

    // The daemon goes away.
    assert_eq!(daemon.terminate(), 0, "SIGTERM exits 0");
    let down = prom
        .wait_firing(
            &[("alertname", "TokenRotatorDown")],
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(
        down["instance"],
        instance.as_str(),
        "up == 0, not absent: the target is known"
    );
    assert_eq!(down["severity"], "critical");
}
