//! The policy file: raw TOML → validated domain types, with every problem located (`PATH:LINE:COL: message`).
//!
//! The same `load` is used by `check`, start-up and reload (SPEC §2–3).

mod chunks;
pub mod cluster;
pub mod diag;
pub mod duration;
pub mod fields;
pub mod kinds;
pub mod notify;
#[cfg(test)]
mod proptests;
pub mod reader;
mod secret_ref;
mod target;
mod timing;
mod tokens;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_spanned::Spanned;
use toml::de::DeTable;

pub use cluster::ClusterSettings;
pub use diag::Diagnostics;
use fields::{no_nul, read_secret_ref};
pub use kinds::{IssuerSpec, Kinds, SinkSettings, SinkSpec, TargetKey, TokenKind, TokenType};
use reader::{wrong_type, Span, TableReader};

pub use secret_ref::{SecretError, SecretRef};
pub use target::{
    GithubScope, GithubSecret, SinkTarget, Target, TfeVariable, VarCategory, VarOwner, Visibility,
};
pub use timing::{parse_cron, Schedule, Window};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/token-rotator/policy.toml";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9851";
const DEFAULT_DRIFT_CHECK: Duration = Duration::from_secs(3600);
const DEFAULT_VERIFY_INTERVAL: Duration = Duration::from_secs(3600);
const DEFAULT_REQUESTS_PER_SECOND: u32 = 25;
/// Policy files larger than this are refused before parsing.
const MAX_POLICY_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Clone, Debug)]
pub struct Policy {
    pub path: PathBuf,
    pub daemon: DaemonSettings,
    pub issuers: BTreeMap<String, IssuerConfig>,
    pub sinks: BTreeMap<String, SinkConfig>,
    /// `[cluster]`: several instances, one lease holder (SPEC §8).
    pub cluster: Option<ClusterSettings>,
    /// Shared with the daemon's scheduler slots and in-flight visits: one copy of each token's policy.
    /// Keyed on each token's own `name` (one allocation per name, shared by the daemon's maps; issue 19).
    pub tokens: BTreeMap<Arc<str>, Arc<TokenPolicy>>,
}

#[derive(Clone, Debug)]
pub struct DaemonSettings {
    pub state_dir: PathBuf,
    pub listen: SocketAddr,
    pub log_format: Option<LogFormat>,
    pub drift_check: Duration,
    /// How often the current token of each token is proven to still work (SPEC §10 liveness).
    pub verify_interval: Duration,
    /// Encrypts the journal at rest (`env` or `file` reference to a 32-byte key).
    pub state_key: Option<SecretRef>,
}

/// An `[issuers.NAME]` table: what every issuer kind shares. Type-specific keys live on each token's
/// [`TokenKind`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuerConfig {
    pub name: String,
    /// The `kind` value, one of the registered [`IssuerSpec`]s.
    pub kind: &'static str,
    pub address: String,
    pub token: SecretRef,
    pub ca_file: Option<PathBuf>,
    pub requests_per_second: u32,
}

/// A `[sinks.NAME]` table: its kind and the settings that kind read from it.
#[derive(Clone)]
pub struct SinkConfig {
    pub name: String,
    pub spec: &'static dyn SinkSpec,
    pub settings: Arc<dyn SinkSettings>,
}

impl SinkConfig {
    /// The `kind` value.
    pub fn kind(&self) -> &'static str {
        self.spec.name()
    }

    /// The settings as the sink kind's own type (`None` for another kind's).
    pub fn settings<T: SinkSettings>(&self) -> Option<&T> {
        self.settings.as_any().downcast_ref()
    }
}

impl fmt::Debug for SinkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SinkConfig")
            .field("name", &self.name)
            .field("kind", &self.kind())
            .field("settings", &self.settings)
            .finish()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenPolicy {
    pub name: Arc<str>,
    /// The `[issuers.*]` table; one allocation shared by every token of that issuer (`tokens::Shared`).
    pub issuer: Arc<str>,
    pub kind: TokenKind,
    /// Shared by the tokens with the same schedule (no maintenance window), as `notify` by those without actions:
    /// 10,000 tokens held 10,000 equal copies (`tokens::Shared`; issue 19).
    pub schedule: Arc<Schedule>,
    /// How new tokens are labelled at the issuer (TFC `description`, Pulumi `name_prefix`); the issuer adds a
    /// UTC timestamp so each one is unique and recognisable as ours.
    pub label: String,
    pub sinks: Vec<SinkTarget>,
    /// Actions that tell consumers the token changed (SPEC §9); empty without `notify`.
    pub notify: Arc<notify::Notify>,
}

/// Why a policy could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{path}: cannot read policy: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(Diagnostics),
}

impl PolicyError {
    /// Lines for stderr, one per problem.
    pub fn lines(&self) -> Vec<String> {
        match self {
            PolicyError::Read { .. } => vec![self.to_string()],
            PolicyError::Invalid(d) => d.clone().render(),
        }
    }
}

/// Reads and validates a policy file. `display_path` is the path as the operator gave it.
///
/// Only a regular file is read (a FIFO would block, `/dev/zero` never ends), opened without blocking and read up
/// to [`MAX_POLICY_BYTES`] whatever its size claims to be.
pub fn load(path: &Path, kinds: &Kinds) -> Result<Policy, PolicyError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let display = path.display().to_string();
    let read_err = |source| PolicyError::Read {
        path: display.clone(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    if !meta.is_file() {
        return Err(read_err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        )));
    }
    let mut bytes = Vec::new();
    file.take(MAX_POLICY_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_POLICY_BYTES {
        let mut d = Diagnostics::new(display.clone(), "");
        d.push(
            0..0,
            format!("policy file is larger than {MAX_POLICY_BYTES} bytes"),
        );
        return Err(PolicyError::Invalid(d));
    }
    let source = match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => {
            let offset = e.utf8_error().valid_up_to();
            let text = String::from_utf8_lossy(e.as_bytes()).into_owned();
            let mut d = Diagnostics::new(display.clone(), text);
            d.push(offset..offset, "policy file is not valid UTF-8");
            return Err(PolicyError::Invalid(d));
        }
    };
    parse(&display, path, &source, &Env::from_process(), kinds).map_err(PolicyError::Invalid)
}

/// The parts of the process environment that change policy defaults (kept explicit for tests).
#[derive(Clone, Debug, Default)]
pub struct Env {
    pub state_directory: Option<String>,
}

impl Env {
    pub fn from_process() -> Self {
        Env {
            state_directory: std::env::var("STATE_DIRECTORY").ok(),
        }
    }
}

/// Parses and validates policy text; `display` names the file in diagnostics.
/// Parses and validates policy text with the issuer and sink kinds of `kinds`.
pub fn parse(
    display: &str,
    path: &Path,
    source: &str,
    env: &Env,
    kinds: &Kinds,
) -> Result<Policy, Diagnostics> {
    if source.len() >= chunks::MIN_SPLIT {
        if let Some(result) = chunks::split(source, chunks::SLICE)
            .and_then(|split| parse_parts(display, path, source, env, kinds, Some(split)))
        {
            return result;
        }
    }
    parse_parts(display, path, source, env, kinds, None).expect("a whole parse always answers")
}

/// Pushes `toml`'s syntax errors; whether there were any.
fn push_syntax_errors(d: &mut Diagnostics, errors: &[toml::de::Error]) -> bool {
    for e in errors {
        let span = e.span().unwrap_or(0..0);
        d.push(
            span,
            format!("TOML syntax error: {}", first_line(e.message())),
        );
    }
    !errors.is_empty()
}

/// Parses the policy whole (`split` `None`) or as a head and slices of token sections (`chunks`); `None`: the
/// slices do not parse on their own as the whole would (a syntax error somewhere, `tokens` keys in the head), so
/// parse it whole, which reports exactly as before.
fn parse_parts(
    display: &str,
    path: &Path,
    source: &str,
    env: &Env,
    kinds: &Kinds,
    split: Option<(usize, Vec<std::ops::Range<usize>>)>,
) -> Option<Result<Policy, Diagnostics>> {
    // The source is copied into the diagnostics only when there are some to render.
    let mut d = Diagnostics::new(display, "");
    let head_end = split.as_ref().map_or(source.len(), |(end, _)| *end);
    let (doc, syntax_errors) = DeTable::parse_recoverable(&source[..head_end]);
    if split.is_some() && (!syntax_errors.is_empty() || doc.get_ref().contains_key("tokens")) {
        return None;
    }
    if push_syntax_errors(&mut d, &syntax_errors) {
        return Some(Err(d.with_source(source)));
    }
    let mut root = TableReader::new("the policy", 0..0, doc.get_ref());

    let daemon = read_daemon(&mut root, &mut d, env);
    let issuers = read_named(&mut root, &mut d, "issuers", |t, d, name| {
        read_issuer(t, d, name, kinds)
    });
    let sinks = read_named(&mut root, &mut d, "sinks", |t, d, name| {
        read_sink(t, d, name, kinds)
    });
    check_borrowed_issuers(&mut d, &issuers, &sinks);
    let cluster_table = root.has("cluster");
    let cluster = cluster::read_cluster(&mut root, &mut d, &sinks);
    let ctx = tokens::TokensContext {
        issuers: &issuers,
        sinks: &sinks,
        kinds,
        cluster: cluster_table.then_some(cluster.as_ref()),
    };
    let mut reader = tokens::TokensReader::default();
    reader.read(&mut root, &mut d, &ctx);
    for range in split.iter().flat_map(|(_, slices)| slices) {
        // The slice on its own; what it reports is moved to where the slice is in the file (no span is kept in
        // what is read).
        let (doc, errors) = DeTable::parse_recoverable(&source[range.clone()]);
        if !errors.is_empty() {
            return None;
        }
        let before = d.items.len();
        let mut slice_root = TableReader::new("the policy", 0..0, doc.get_ref());
        reader.read(&mut slice_root, &mut d, &ctx);
        slice_root.finish(&mut d);
        d.shift_since(before, range.start);
    }
    // Rebuilt in bulk: inserted one at a time in file order its leaves are about half full (BENCHMARKS.md, issue 19).
    let tokens: BTreeMap<Arc<str>, Arc<TokenPolicy>> = reader.out.into_iter().collect();
    check_credential_sources(&mut d, &issuers, &sinks, &tokens);
    root.finish(&mut d);
    if d.is_empty() && tokens.is_empty() {
        d.push(
            0..0,
            "the policy defines no tokens: add a `[tokens.NAME]` table (see config/policy.example.toml)",
        );
    }

    if !d.is_empty() {
        return Some(Err(d.with_source(source)));
    }
    Some(Ok(Policy {
        path: path.to_path_buf(),
        daemon: daemon.expect("daemon settings present when there are no diagnostics"),
        issuers: issuers
            .into_iter()
            .filter_map(|(k, (_, v))| Some((k, v?)))
            .collect(),
        sinks: sinks
            .into_iter()
            .filter_map(|(k, (_, v))| Some((k, v?)))
            .collect(),
        cluster,
        tokens,
    }))
}

/// An issuer credential kept in a sink (`token = { sink = … }`) is read from a record: never from a delivery
/// target (SPEC §11), which holds no record — a delivery sink, or a file some token writes with `format = "token"`.
fn check_credential_sources(
    d: &mut Diagnostics,
    issuers: &Named<IssuerConfig>,
    sinks: &Named<SinkConfig>,
    tokens: &BTreeMap<Arc<str>, Arc<TokenPolicy>>,
) {
    for (name, (span, cfg)) in issuers {
        let Some(SecretRef::Sink { sink, target }) = cfg.as_ref().map(|c| &c.token) else {
            continue;
        };
        let delivery_sink = sinks
            .get(sink)
            .and_then(|(_, c)| c.as_ref())
            .is_some_and(|c| c.spec.delivers());
        let token_file = tokens.values().find(|t| {
            t.sinks.iter().any(|st| {
                *st.sink == **sink
                    && st.target.is_delivery()
                    && st.target.identity() == target.identity()
            })
        });
        if delivery_sink {
            d.push(
                span.clone(),
                format!("[issuers.{name}] reads its `token` from sink \"{sink}\", a delivery target that holds no record; keep the credential in a vault, aws-secretsmanager or file (record) sink"),
            );
        } else if let Some(t) = token_file {
            d.push(
                span.clone(),
                format!("[issuers.{name}] reads its `token` from {sink}:{target}, which [tokens.{}] writes as a bare token (`format = \"token\"`); point it at the token's record instead", t.name),
            );
        }
    }
}

/// A sink that borrows an issuer's connection (`issuer = "…"`) names an issuer of the kind it talks to.
fn check_borrowed_issuers(
    d: &mut Diagnostics,
    issuers: &Named<IssuerConfig>,
    sinks: &Named<SinkConfig>,
) {
    for (name, (span, cfg)) in sinks {
        let Some(cfg) = cfg else { continue };
        let Some((issuer, kind)) = cfg.spec.borrowed_issuer(cfg.settings.as_ref()) else {
            continue;
        };
        match issuers.get(&issuer) {
            None => {
                let known: Vec<&str> = issuers.keys().map(String::as_str).collect();
                d.push(
                    span.clone(),
                    format!(
                        "[sinks.{name}] borrows issuer \"{issuer}\", which is not defined{}",
                        tokens::known_list(&known)
                    ),
                );
            }
            Some((_, Some(i))) if i.kind != kind => d.push(
                span.clone(),
                format!(
                    "[sinks.{name}] (kind \"{}\") borrows issuer \"{issuer}\", which is of kind \"{}\"; it needs a \"{kind}\" issuer",
                    cfg.kind(),
                    i.kind
                ),
            ),
            _ => {}
        }
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s).trim()
}

fn read_daemon(root: &mut TableReader, d: &mut Diagnostics, env: &Env) -> Option<DaemonSettings> {
    let default_state_dir = || {
        env.state_directory
            .as_deref()
            .and_then(|s| s.split(':').next())
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("./state"))
    };
    let mut settings = DaemonSettings {
        state_dir: default_state_dir(),
        listen: DEFAULT_LISTEN
            .parse()
            .expect("valid default listen address"),
        log_format: None,
        drift_check: DEFAULT_DRIFT_CHECK,
        verify_interval: DEFAULT_VERIFY_INTERVAL,
        state_key: None,
    };
    let Some(mut t) = root.opt_table(d, "daemon") else {
        return Some(settings);
    };
    t.name = "[daemon]".into();
    let mut ok = true;
    if let Some(dir) = t.opt_str(d, "state_dir") {
        if dir.get_ref().is_empty() {
            d.push(dir.span(), "`state_dir` must not be empty");
            ok = false;
        } else if !no_nul(d, &dir, "`state_dir`") {
            ok = false;
        } else {
            settings.state_dir = PathBuf::from(dir.into_inner());
        }
    }
    if let Some(listen) = t.opt_str(d, "listen") {
        match listen.get_ref().parse::<SocketAddr>() {
            Ok(addr) => settings.listen = addr,
            Err(_) => {
                d.push(
                    listen.span(),
                    format!(
                        "`listen` must be an IP address and port such as \"{DEFAULT_LISTEN}\", found \"{}\"",
                        listen.get_ref()
                    ),
                );
                ok = false;
            }
        }
    }
    if let Some(fmt) = t.opt_str(d, "log_format") {
        match fmt.get_ref().as_str() {
            "text" => settings.log_format = Some(LogFormat::Text),
            "json" => settings.log_format = Some(LogFormat::Json),
            other => {
                d.push(
                    fmt.span(),
                    format!("`log_format` must be \"text\" or \"json\", found \"{other}\""),
                );
                ok = false;
            }
        }
    }
    for (key, slot) in [
        ("drift_check", &mut settings.drift_check),
        ("verify_interval", &mut settings.verify_interval),
    ] {
        if let Some(v) = t.opt_duration(d, key) {
            if v.get_ref().is_zero() {
                d.push(v.span(), format!("`{key}` must be longer than 0s"));
                ok = false;
            } else {
                *slot = v.into_inner();
            }
        }
    }
    if t.has("state_key") {
        match read_secret_ref(&mut t, d, "state_key") {
            Some(SecretRef::Sink { .. }) => {
                d.push(t.span.clone(), "`state_key` in [daemon] must be an `env` or `file` reference (the journal is read before any sink)");
                ok = false;
            }
            Some(r) => settings.state_key = Some(r),
            None => ok = false,
        }
    }
    t.finish(d);
    ok.then_some(settings)
}

/// Declared entries; `None` when the entry itself is invalid (already reported), so references to it stay quiet.
pub(super) type Named<T> = BTreeMap<String, (Span, Option<T>)>;

/// Reads `[issuers.*]` / `[sinks.*]`: a table of named tables.
fn read_named<T>(
    root: &mut TableReader,
    d: &mut Diagnostics,
    key: &'static str,
    mut read_one: impl FnMut(&mut TableReader, &mut Diagnostics, &str) -> Option<T>,
) -> Named<T> {
    let mut out = BTreeMap::new();
    let Some(section) = root.opt_table(d, key) else {
        return out;
    };
    for (name, value) in section.entries() {
        let Some(table) = value.get_ref().as_table() else {
            wrong_type(d, value, &format!("`{key}.{}`", name.get_ref()), "a table");
            continue;
        };
        check_name(d, &name, key);
        let label = format!("[{key}.{}]", name.get_ref());
        let mut t = TableReader::new(label, name.span(), table);
        let item = read_one(&mut t, d, name.get_ref());
        out.insert(name.get_ref().clone(), (name.span(), item));
        t.finish(d);
    }
    out
}

/// Reads `kind`: the name of one of `known`.
fn read_kind<K: Copy>(
    t: &mut TableReader,
    d: &mut Diagnostics,
    known: &[K],
    name_of: impl Fn(K) -> &'static str,
) -> Option<K> {
    let kind = t.req_str(d, "kind")?;
    let found = known
        .iter()
        .copied()
        .find(|k| name_of(*k) == kind.get_ref());
    if found.is_none() {
        let names: Vec<&str> = known.iter().map(|k| name_of(*k)).collect();
        d.push(
            kind.span(),
            format!(
                "unknown `kind = \"{}\"` in {}; expected one of: {}",
                kind.get_ref(),
                t.name,
                names.join(", ")
            ),
        );
    }
    found
}

fn read_issuer(
    t: &mut TableReader,
    d: &mut Diagnostics,
    name: &str,
    kinds: &Kinds,
) -> Option<IssuerConfig> {
    let spec = read_kind(t, d, &kinds.issuers, |k| k.name());
    let address = match t.opt_str(d, "address") {
        Some(a) => fields::check_address(d, "address", &t.name, &a).then(|| a.into_inner()),
        None => spec.map(|k| k.default_address().to_string()),
    };
    let token = read_secret_ref(t, d, "token");
    let ca_file = fields::read_path(t, d, "ca_file");
    let rps = t
        .opt_int(d, "requests_per_second", 1..=1000)
        .map(|v| v.into_inner() as u32)
        .unwrap_or(DEFAULT_REQUESTS_PER_SECOND);
    Some(IssuerConfig {
        name: name.to_string(),
        kind: spec?.name(),
        address: address?.trim_end_matches('/').to_string(),
        token: token?,
        ca_file,
        requests_per_second: rps,
    })
}

/// A sink table: its `kind`, then the kind reads the rest. A table whose `kind` is wrong gets only that reported.
fn read_sink(
    t: &mut TableReader,
    d: &mut Diagnostics,
    name: &str,
    kinds: &Kinds,
) -> Option<SinkConfig> {
    let Some(spec) = read_kind(t, d, &kinds.sinks, |k| k.name()) else {
        for k in &kinds.sinks {
            t.allow(k.keys());
        }
        return None;
    };
    let settings = spec.read(t, d)?;
    Some(SinkConfig {
        name: name.to_string(),
        spec,
        settings,
    })
}

/// The longest name of a token, issuer or sink (they become file names, metric labels and log fields).
pub const MAX_NAME_CHARS: usize = 128;

/// A table key used as a name: 1 to [`MAX_NAME_CHARS`] characters, no control characters (a newline in a name
/// would forge log lines), no Unicode line separators or direction overrides.
pub(super) fn check_name(d: &mut Diagnostics, name: &Spanned<String>, section: &str) -> bool {
    let n = name.get_ref();
    let bad_char = n.chars().find(|c| {
        c.is_control()
            || matches!(
                c,
                '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
            )
    });
    let problem = if n.is_empty() {
        Some("must not be empty".to_string())
    } else if n.chars().count() > MAX_NAME_CHARS {
        Some(format!("is longer than {MAX_NAME_CHARS} characters"))
    } else {
        bad_char.map(|c| format!("contains the control character U+{:04X}", c as u32))
    };
    match problem {
        Some(p) => {
            d.push(name.span(), format!("the name of a `{section}` table {p}"));
            false
        }
        None => true,
    }
}

#[cfg(test)]
mod tests;
