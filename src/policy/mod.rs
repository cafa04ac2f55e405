//! The policy file: raw TOML → validated domain types, with every problem located (`PATH:LINE:COL: message`).
//!
//! The same `load` is used by `check`, start-up and reload (SPEC §2–3).

pub mod diag;
pub mod duration;
pub mod fields;
pub mod kinds;
#[cfg(test)]
mod proptests;
pub mod reader;
mod secret_ref;
mod target;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_spanned::Spanned;
use toml::de::{DeTable, DeValue};

pub use diag::Diagnostics;
use fields::{no_nul, read_secret_ref, read_target};
pub use kinds::{IssuerSpec, Kinds, SinkSettings, SinkSpec, TargetKey, TokenKind, TokenType};
use reader::{wrong_type, Span, TableReader};

pub use secret_ref::{SecretError, SecretRef};
pub use target::{SinkTarget, Target};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/token-rotator/policy.toml";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9851";
const DEFAULT_LIFETIME: Duration = Duration::from_secs(30 * 86_400);
const DEFAULT_GRACE: Duration = Duration::from_secs(3600);
const DEFAULT_DRIFT_CHECK: Duration = Duration::from_secs(3600);
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
    /// Shared with the daemon's scheduler slots and in-flight visits: one copy of each token's policy.
    pub tokens: BTreeMap<String, Arc<TokenPolicy>>,
}

#[derive(Clone, Debug)]
pub struct DaemonSettings {
    pub state_dir: PathBuf,
    pub listen: SocketAddr,
    pub log_format: Option<LogFormat>,
    pub drift_check: Duration,
    /// Encrypts the journal at rest (`env` or `file` reference to a 32-byte key).
    pub state_key: Option<SecretRef>,
}

/// An `[issuers.NAME]` table: what every issuer kind shares. Type-specific keys live on each token's
/// [`TokenKind`].
#[derive(Clone, Debug)]
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
    pub name: String,
    pub issuer: String,
    pub kind: TokenKind,
    pub schedule: Schedule,
    /// How new tokens are labelled at the issuer (TFC `description`, Pulumi `name_prefix`); the issuer adds a
    /// UTC timestamp so each one is unique and recognisable as ours.
    pub label: String,
    pub sinks: Vec<SinkTarget>,
}

/// The schedule keys of SPEC §3, with defaults applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// Requested validity of each new token; `None` for types that never expire.
    pub lifetime: Option<Duration>,
    pub rotate_before: Option<Duration>,
    pub every: Option<Duration>,
    pub jitter: Duration,
    pub grace: Duration,
    /// Rotations wait for this window unless that would leave less than `min_validity`.
    /// Boxed: a `Window` is ~360 bytes, and most tokens have none (10,000 tokens are held in memory).
    pub window: Option<Box<Window>>,
    pub min_validity: Option<Duration>,
}

/// A maintenance window: a 5-field cron for its starts, how long it stays open, and the zone it is read in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    pub cron: croner::Cron,
    pub text: String,
    pub duration: Duration,
    pub timezone: chrono_tz::Tz,
}

const DEFAULT_WINDOW_DURATION: Duration = Duration::from_secs(3600);

/// Parses a 5-field cron (minute hour day-of-month month day-of-week).
pub fn parse_cron(text: &str) -> Result<croner::Cron, String> {
    let fields = text.split_whitespace().count();
    if fields != 5 {
        return Err(format!(
            "`window` must be a 5-field cron (minute hour day-of-month month day-of-week), found {fields} fields"
        ));
    }
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Disallowed)
        .build()
        .parse(text)
        .map_err(|e| format!("`window` is not a valid cron: {e}"))
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
    let mut d = Diagnostics::new(display, source);
    let (doc, syntax_errors) = DeTable::parse_recoverable(source);
    for e in &syntax_errors {
        let span = e.span().unwrap_or(0..0);
        d.push(
            span,
            format!("TOML syntax error: {}", first_line(e.message())),
        );
    }
    if !syntax_errors.is_empty() {
        return Err(d);
    }
    let mut root = TableReader::new("the policy", 0..0, doc.get_ref());

    let daemon = read_daemon(&mut root, &mut d, env);
    let issuers = read_named(&mut root, &mut d, "issuers", |t, d, name| {
        read_issuer(t, d, name, kinds)
    });
    let sinks = read_named(&mut root, &mut d, "sinks", |t, d, name| {
        read_sink(t, d, name, kinds)
    });
    let tokens = read_tokens(&mut root, &mut d, &issuers, &sinks, kinds);
    root.finish(&mut d);
    if d.is_empty() && tokens.is_empty() {
        d.push(
            0..0,
            "the policy defines no tokens: add a `[tokens.NAME]` table (see config/policy.example.toml)",
        );
    }

    if !d.is_empty() {
        return Err(d);
    }
    Ok(Policy {
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
        tokens,
    })
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
    if let Some(dc) = t.opt_duration(d, "drift_check") {
        if dc.get_ref().is_zero() {
            d.push(dc.span(), "`drift_check` must be longer than 0s");
            ok = false;
        } else {
            settings.drift_check = dc.into_inner();
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
type Named<T> = BTreeMap<String, (Span, Option<T>)>;

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

fn read_tokens(
    root: &mut TableReader,
    d: &mut Diagnostics,
    issuers: &Named<IssuerConfig>,
    sinks: &Named<SinkConfig>,
    kinds: &Kinds,
) -> BTreeMap<String, Arc<TokenPolicy>> {
    let mut out = BTreeMap::new();
    // Which token already writes to a sink target, for the duplicate check.
    let mut targets: HashMap<SinkTarget, String> = HashMap::new();
    // Which token already uses a label in a sweep scope (issuer kind, scope), for the collision check.
    let mut labels: HashMap<(&'static str, String, String), String> = HashMap::new();
    let Some(section) = root.opt_table(d, "tokens") else {
        return out;
    };
    let label_keys: Vec<&'static str> = kinds.issuers.iter().map(|k| k.label_key()).collect();
    for (name, value) in section.entries() {
        let Some(table) = value.get_ref().as_table() else {
            wrong_type(d, value, &format!("`tokens.{}`", name.get_ref()), "a table");
            continue;
        };
        let named_ok = check_name(d, &name, "tokens");
        let mut t = TableReader::new(format!("[tokens.{}]", name.get_ref()), name.span(), table);
        let label_span = label_keys.iter().find_map(|k| t.get_span(k));
        let read = read_token(
            &mut t,
            d,
            name.get_ref(),
            issuers,
            sinks,
            &mut targets,
            kinds,
        );
        if let Some((token, spec)) = read {
            if let Some(scope) = label_scope(&token, issuers) {
                let label = spec.sweep_label(&token.label);
                let key = (spec.name(), scope.clone(), label.clone());
                match labels.get(&key) {
                    Some(other) => d.push(
                        label_span.unwrap_or_else(|| name.span()),
                        format!(
                            "[tokens.{}] labels its tokens like [tokens.{other}] (\"{label}\") in the same {scope}: the orphan sweep could not tell their tokens apart; give one of them another `{}`",
                            name.get_ref(),
                            spec.label_key(),
                        ),
                    ),
                    None => {
                        labels.insert(key, name.get_ref().clone());
                    }
                }
            }
            if named_ok {
                out.insert(name.get_ref().clone(), Arc::new(token));
            }
        }
        t.finish(d);
    }
    out
}

/// The longest name of a token, issuer or sink (they become file names, metric labels and log fields).
pub const MAX_NAME_CHARS: usize = 128;

/// A table key used as a name: 1 to [`MAX_NAME_CHARS`] characters, no control characters (a newline in a name
/// would forge log lines), no Unicode line separators or direction overrides.
fn check_name(d: &mut Diagnostics, name: &Spanned<String>, section: &str) -> bool {
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

/// Where a token's labels must be unique for the orphan sweep to tell tokens apart (SPEC §5.11): the resource
/// whose token list the sweep reads, at the issuer's address (two issuer tables may point at the same service),
/// for the types that are swept (singletons are replaced in place and never swept).
fn label_scope(token: &TokenPolicy, issuers: &Named<IssuerConfig>) -> Option<String> {
    let issuer = issuers.get(&token.issuer)?.1.as_ref()?;
    // One service however its address is spelled (case, default port, a trailing slash).
    let at = reqwest::Url::parse(&issuer.address)
        .ok()
        .and_then(|u| {
            Some(format!(
                "{}://{}:{}",
                u.scheme(),
                u.host_str()?.to_ascii_lowercase(),
                u.port_or_known_default()?
            ))
        })
        .unwrap_or_else(|| issuer.address.clone());
    token.kind.label_scope(&at)
}

/// A token table; with it, the kind of its issuer (for the label rules).
fn read_token(
    t: &mut TableReader,
    d: &mut Diagnostics,
    name: &str,
    issuers: &Named<IssuerConfig>,
    sinks: &Named<SinkConfig>,
    targets: &mut HashMap<SinkTarget, String>,
    kinds: &Kinds,
) -> Option<(TokenPolicy, &'static dyn IssuerSpec)> {
    let issuer_key = t.req_str(d, "issuer");
    let issuer = issuer_key
        .as_ref()
        .and_then(|i| match issuers.get(i.get_ref()) {
            Some((_, cfg)) => cfg.as_ref(),
            None => {
                let known: Vec<&str> = issuers.keys().map(String::as_str).collect();
                d.push(
                    i.span(),
                    format!(
                        "{} refers to unknown issuer \"{}\"{}",
                        t.name,
                        i.get_ref(),
                        known_list(&known)
                    ),
                );
                None
            }
        });
    let spec = issuer.and_then(|i| kinds.issuer(i.kind));
    let type_key = t.req_str(d, "type");
    let kind = match (issuer, spec, type_key.as_ref()) {
        (Some(issuer), Some(spec), Some(ty)) => read_token_kind(t, d, issuer, spec, ty),
        _ => None,
    };
    check_kind_keys(t, d, kinds);
    let schedule = read_schedule(t, d, kind.as_ref(), spec);
    let label = read_label(t, d, name, spec, kinds);
    let sink_targets = read_token_sinks(t, d, name, sinks, targets);
    let token = TokenPolicy {
        name: name.to_string(),
        issuer: issuer_key?.into_inner(),
        kind: kind?,
        schedule: schedule?,
        label: label?,
        sinks: sink_targets?,
    };
    Some((token, spec?))
}

/// The label key of the issuer's kind, with its default; another kind's label key is refused with a pointer.
fn read_label(
    t: &mut TableReader,
    d: &mut Diagnostics,
    name: &str,
    spec: Option<&'static dyn IssuerSpec>,
    kinds: &Kinds,
) -> Option<String> {
    let Some(spec) = spec else {
        for k in &kinds.issuers {
            t.allow(&[k.label_key()]);
        }
        return None;
    };
    for other in &kinds.issuers {
        let key = other.label_key();
        if key == spec.label_key() {
            continue;
        }
        if let Some(v) = t.get(key) {
            d.push(
                v.span(),
                format!(
                    "`{key}` in {} is for {} tokens; {} tokens take `{}`",
                    t.name,
                    other.title(),
                    spec.title(),
                    spec.label_key()
                ),
            );
        }
    }
    spec.read_label(t, d, name)
}

fn known_list(known: &[&str]) -> String {
    if known.is_empty() {
        String::new()
    } else {
        format!(" (defined: {})", known.join(", "))
    }
}

/// `type`: one of the issuer kind's types, read with its keys by the kind.
fn read_token_kind(
    t: &mut TableReader,
    d: &mut Diagnostics,
    issuer: &IssuerConfig,
    spec: &dyn IssuerSpec,
    ty: &Spanned<String>,
) -> Option<TokenKind> {
    if !spec.types().contains(&ty.get_ref().as_str()) {
        d.push(
            ty.span(),
            format!(
                "unknown `type = \"{}\"` for issuer \"{}\" (kind \"{}\"); expected one of: {}",
                ty.get_ref(),
                issuer.name,
                spec.name(),
                spec.types().join(", ")
            ),
        );
        return None;
    }
    spec.read_type(ty.get_ref(), t, d)
}

/// The type-specific keys of every kind, checked for their value types whatever the `type` (a wrong `type` must
/// not hide a wrong `team_id`); keys the type does not take are allowed here.
fn check_kind_keys(t: &mut TableReader, d: &mut Diagnostics, kinds: &Kinds) {
    for spec in &kinds.issuers {
        for (key, ty) in spec.type_keys() {
            match ty {
                kinds::KeyType::Str => {
                    let _ = t.opt_str(d, key);
                }
                kinds::KeyType::Bool => {
                    let _ = t.opt_bool(d, key);
                }
            }
        }
    }
}

fn read_schedule(
    t: &mut TableReader,
    d: &mut Diagnostics,
    kind: Option<&TokenKind>,
    spec: Option<&'static dyn IssuerSpec>,
) -> Option<Schedule> {
    let mut ok = true;
    let lifetime = t.opt_duration(d, "lifetime");
    let rotate_before = t.opt_duration(d, "rotate_before");
    let every = t.opt_duration(d, "every");
    let jitter = t.opt_duration(d, "jitter");
    let grace = t.opt_duration(d, "grace");
    let window_text = t.opt_str(d, "window");
    let window_duration = t.opt_duration(d, "window_duration");
    let timezone = t.opt_str(d, "timezone");
    let min_validity = t.opt_duration(d, "min_validity");
    let cron = window_text
        .as_ref()
        .and_then(|w| match parse_cron(w.get_ref()) {
            Ok(c) => Some(c),
            Err(e) => {
                d.push(w.span(), format!("{e} (in {})", t.name));
                ok = false;
                None
            }
        });
    let tz = match &timezone {
        None => Some(chrono_tz::UTC),
        Some(z) => match z.get_ref().parse::<chrono_tz::Tz>() {
            Ok(tz) => Some(tz),
            Err(_) => {
                d.push(
                    z.span(),
                    format!("`timezone` in {} must be an IANA zone name such as \"Europe/Berlin\", found \"{}\"", t.name, z.get_ref()),
                );
                ok = false;
                None
            }
        },
    };
    if window_text.is_none() {
        for (key, v) in [
            (
                "window_duration",
                window_duration.as_ref().map(|v| v.span()),
            ),
            ("timezone", timezone.as_ref().map(|v| v.span())),
        ] {
            if let Some(span) = v {
                d.push(
                    span,
                    format!("`{key}` in {} only applies with `window`", t.name),
                );
                ok = false;
            }
        }
    }
    if let Some(wd) = &window_duration {
        if wd.get_ref().is_zero() {
            d.push(
                wd.span(),
                format!("`window_duration` in {} must be longer than 0s", t.name),
            );
            ok = false;
        }
    }
    let window = match (cron, window_text, tz) {
        (Some(cron), Some(text), Some(timezone)) => Some(Box::new(Window {
            cron,
            text: text.into_inner(),
            duration: window_duration
                .map(Spanned::into_inner)
                .unwrap_or(DEFAULT_WINDOW_DURATION),
            timezone,
        })),
        _ => None,
    };
    for (key, v) in [("lifetime", &lifetime), ("every", &every)] {
        if let Some(v) = v {
            if v.get_ref().is_zero() {
                d.push(
                    v.span(),
                    format!("`{key}` in {} must be longer than 0s", t.name),
                );
                ok = false;
            }
        }
    }
    let expires = kind.map(|k| k.expires()).unwrap_or(true);
    let type_name = kind.map(|k| k.type_name()).unwrap_or_default();
    if !expires {
        if let Some(l) = &lifetime {
            d.push(
                l.span(),
                format!(
                    "{}: {type_name} tokens never expire, so `lifetime` does not apply; use `every`",
                    t.name
                ),
            );
            ok = false;
        }
        if let Some(rb) = &rotate_before {
            d.push(
                rb.span(),
                format!(
                    "{}: {type_name} tokens never expire, so `rotate_before` does not apply; use `every`",
                    t.name
                ),
            );
            ok = false;
        }
        if every.is_none() && kind.is_some() {
            t.missing(
                d,
                "every",
                &format!(" ({type_name} tokens never expire, so `every` sets the rotation period)"),
            );
            ok = false;
        }
    }
    if let (Some(spec), Some(_), Some(l)) = (spec, kind, &lifetime) {
        if let Err(why) = spec.check_lifetime(*l.get_ref()) {
            d.push(l.span(), format!("`lifetime` in {} {why}", t.name));
            ok = false;
        }
    }
    let lifetime_value = if expires {
        Some(
            lifetime
                .as_ref()
                .map(|l| *l.get_ref())
                .unwrap_or(DEFAULT_LIFETIME),
        )
    } else {
        None
    };
    let rotate_before_value = match (&rotate_before, lifetime_value) {
        (Some(rb), Some(life)) => {
            if *rb.get_ref() >= life {
                d.push(
                    rb.span(),
                    format!(
                        "`rotate_before` ({}) in {} must be shorter than `lifetime` ({})",
                        duration::render(*rb.get_ref()),
                        t.name,
                        duration::render(life)
                    ),
                );
                ok = false;
            }
            Some(*rb.get_ref())
        }
        (Some(rb), None) => Some(*rb.get_ref()),
        (None, Some(life)) => Some(life / 3),
        (None, None) => None,
    };
    if let (Some(j), Some(life)) = (&jitter, lifetime_value) {
        let rb = rotate_before_value.unwrap_or(life / 3);
        if *j.get_ref() >= rb {
            d.push(
                j.span(),
                format!(
                    "`jitter` ({}) in {} must be shorter than `rotate_before` ({}), or the token could expire first",
                    duration::render(*j.get_ref()),
                    t.name,
                    duration::render(rb)
                ),
            );
            ok = false;
        }
    }
    let min_validity_value = match (&min_validity, lifetime_value) {
        (Some(mv), Some(life)) if *mv.get_ref() >= life => {
            d.push(
                mv.span(),
                format!(
                    "`min_validity` in {} must be shorter than `lifetime`",
                    t.name
                ),
            );
            ok = false;
            None
        }
        (Some(mv), _) => Some(*mv.get_ref()),
        (None, _) => rotate_before_value.map(|rb| rb / 2),
    };
    if !ok || kind.is_none() {
        return None;
    }
    Some(Schedule {
        lifetime: lifetime_value,
        rotate_before: rotate_before_value,
        every: every.map(Spanned::into_inner),
        jitter: jitter.map(Spanned::into_inner).unwrap_or_default(),
        grace: grace.map(Spanned::into_inner).unwrap_or(DEFAULT_GRACE),
        window,
        min_validity: min_validity_value,
    })
}

fn read_token_sinks(
    t: &mut TableReader,
    d: &mut Diagnostics,
    token: &str,
    sinks: &Named<SinkConfig>,
    targets: &mut HashMap<SinkTarget, String>,
) -> Option<Vec<SinkTarget>> {
    if !t.has("sinks") {
        t.missing(
            d,
            "sinks",
            " (e.g. `sinks = [{ sink = \"vault\", path = \"ci/token\" }]`)",
        );
        return None;
    }
    let v = t.get("sinks")?;
    let Some(items) = v.get_ref().as_array() else {
        wrong_type(
            d,
            v,
            &format!("`sinks` in {}", t.name),
            "an array of tables",
        );
        return None;
    };
    if items.is_empty() {
        d.push(
            v.span(),
            format!("`sinks` in {} must name at least one sink", t.name),
        );
        return None;
    }
    let mut out = Vec::new();
    let mut ok = true;
    for item in items.iter() {
        let item: &Spanned<DeValue> = item;
        let Some(table) = item.get_ref().as_table() else {
            wrong_type(
                d,
                item,
                &format!("an entry of `sinks` in {}", t.name),
                "a table like { sink = \"NAME\", path = \"…\" }",
            );
            ok = false;
            continue;
        };
        let mut r = TableReader::new(format!("a `sinks` entry of {}", t.name), item.span(), table);
        let sink = r.req_str(d, "sink");
        let target = read_target(&mut r, d);
        r.finish(d);
        let (Some(sink), Some(target)) = (sink, target) else {
            ok = false;
            continue;
        };
        let Some((_, cfg)) = sinks.get(sink.get_ref()) else {
            let known: Vec<&str> = sinks.keys().map(String::as_str).collect();
            d.push(
                sink.span(),
                format!(
                    "{} refers to unknown sink \"{}\"{}",
                    t.name,
                    sink.get_ref(),
                    known_list(&known)
                ),
            );
            ok = false;
            continue;
        };
        let Some(cfg) = cfg else {
            ok = false;
            continue;
        };
        let key = cfg.spec.target_key();
        if !key.fits(&target) {
            d.push(
                item.span(),
                format!(
                    "sink \"{}\" (kind \"{}\") takes `{}`",
                    sink.get_ref(),
                    cfg.kind(),
                    key.as_str()
                ),
            );
            ok = false;
            continue;
        }
        if let Err(why) = cfg.spec.check_target(&target) {
            d.push(item.span(), why);
            ok = false;
            continue;
        }
        let st = SinkTarget {
            sink: sink.get_ref().clone(),
            target,
        };
        if let Some(other) = targets.get(&st) {
            d.push(
                item.span(),
                format!(
                    "sink target {st} is already written by token \"{other}\"; each target holds one token"
                ),
            );
            ok = false;
            continue;
        }
        targets.insert(st.clone(), token.to_string());
        out.push(st);
    }
    ok.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[daemon]
state_dir = "/tmp/x"

[issuers.tfc]
kind = "tfe"
address = "http://127.0.0.1:1234"
token = { env = "TFC_TOKEN" }

[sinks.vault]
kind = "vault"
address = "http://127.0.0.1:8200"
auth = { method = "token", token = { env = "VAULT_TOKEN" } }

[tokens.ci-org]
issuer = "tfc"
type = "organization"
organization = "acme"
lifetime = "30d"
sinks = [{ sink = "vault", path = "ci/tfc-org" }]
"#;

    fn errors(src: &str) -> Vec<String> {
        match parse(
            "p.toml",
            Path::new("p.toml"),
            src,
            &Env::default(),
            &crate::kinds(),
        ) {
            Ok(_) => vec![],
            Err(mut d) => d.render(),
        }
    }

    #[test]
    fn good_policy_parses_with_defaults() {
        let p = parse(
            "p.toml",
            Path::new("p.toml"),
            GOOD,
            &Env::default(),
            &crate::kinds(),
        )
        .unwrap();
        let t = &p.tokens["ci-org"];
        assert_eq!(t.schedule.lifetime, Some(Duration::from_secs(30 * 86_400)));
        assert_eq!(
            t.schedule.rotate_before,
            Some(Duration::from_secs(10 * 86_400))
        );
        assert_eq!(t.schedule.grace, Duration::from_secs(3600));
        assert_eq!(p.daemon.listen.to_string(), "127.0.0.1:9851");
        let vault = p.sinks["vault"]
            .settings::<crate::sink::vault::VaultSinkConfig>()
            .expect("vault settings");
        assert_eq!(vault.mount, "secret");
        assert_eq!(t.label, "token-rotator ci-org");
    }

    #[test]
    fn every_problem_is_reported_with_its_location() {
        let src = GOOD
            .replace("lifetime = \"30d\"", "lifetime = \"30x\"\nbogus = 1")
            .replace("token = { env = \"TFC_TOKEN\" }", "token = \"abc\"");
        let errs = errors(&src);
        assert_eq!(errs.len(), 3, "{errs:#?}");
        assert!(
            errs[0].starts_with("p.toml:8:9: `token` in [issuers.tfc] must not be written inline"),
            "{errs:#?}"
        );
        assert!(errs
            .iter()
            .any(|e| e.contains("`lifetime` in [tokens.ci-org]: invalid duration")));
        assert!(errs
            .iter()
            .any(|e| e.contains("unknown key `bogus` in [tokens.ci-org]")));
    }

    #[test]
    fn missing_key_is_reported_at_the_table_line() {
        let src = GOOD.replace("organization = \"acme\"\n", "");
        let errs = errors(&src);
        assert_eq!(
            errs,
            vec!["p.toml:15:9: missing key `organization` in [tokens.ci-org]".to_string()]
        );
    }

    #[test]
    fn an_empty_policy_is_refused() {
        assert_eq!(
            errors(""),
            vec!["p.toml:1:1: the policy defines no tokens: add a `[tokens.NAME]` table (see config/policy.example.toml)".to_string()]
        );
        let no_tokens = &GOOD[..GOOD.find("[tokens.ci-org]").unwrap()];
        assert_eq!(errors(no_tokens).len(), 1);
    }

    #[test]
    fn names_with_control_characters_or_too_long_are_refused() {
        let src = GOOD.replace("[tokens.ci-org]", "[tokens.\"ci\\nINFO forged\"]");
        let errs = errors(&src);
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert!(errs[0].contains("control character U+000A"), "{errs:#?}");
        let long = "x".repeat(MAX_NAME_CHARS + 1);
        let errs = errors(&GOOD.replace("[tokens.ci-org]", &format!("[tokens.{long}]")));
        assert!(errs[0].contains("longer than 128"), "{errs:#?}");
        // A 128-character name is fine (its journal file name is shortened with a digest).
        let ok = "y".repeat(MAX_NAME_CHARS);
        assert!(errors(&GOOD.replace("[tokens.ci-org]", &format!("[tokens.{ok}]"))).is_empty());
    }

    #[test]
    fn a_nul_in_a_path_is_refused() {
        let src = GOOD.replace("state_dir = \"/tmp/x\"", "state_dir = \"/tmp/x\\u0000y\"");
        let errs = errors(&src);
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert!(errs[0].contains("NUL"), "{errs:#?}");
    }

    #[test]
    fn a_wrong_type_does_not_hide_a_wrong_typed_key() {
        let src = GOOD
            .replace("type = \"organization\"", "type = \"bogus\"")
            .replace("organization = \"acme\"", "team_id = 5");
        let errs = errors(&src);
        assert_eq!(errs.len(), 2, "{errs:#?}");
        assert!(
            errs.iter()
                .any(|e| e.contains("`team_id` in [tokens.ci-org] must be a string")),
            "{errs:#?}"
        );
    }

    #[test]
    fn labels_that_the_sweep_could_confuse_are_refused() {
        let team = |name: &str, extra: &str| {
            format!("[tokens.{name}]\nissuer = \"tfc\"\ntype = \"team\"\nteam_id = \"team-1\"\n{extra}\nsinks = [{{ sink = \"vault\", path = \"{name}\" }}]\n")
        };
        let base = &GOOD[..GOOD.find("[tokens.ci-org]").unwrap()];
        let src = format!(
            "{base}{}{}",
            team("a", "description = \"ci\""),
            team("b", "description = \"ci\"")
        );
        let errs = errors(&src);
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert!(
            errs[0].contains("[tokens.b] labels its tokens like [tokens.a]"),
            "{errs:#?}"
        );
        // Another team, or another description: fine.
        let other = team("b", "description = \"ci\"").replace("team-1", "team-2");
        assert!(errors(&format!(
            "{base}{}{other}",
            team("a", "description = \"ci\"")
        ))
        .is_empty());
        // Pulumi: default prefixes are token names cut to 25 characters.
        let pulumi = |name: &str, org: &str| {
            format!("[tokens.{name}]\nissuer = \"pulumi\"\ntype = \"organization\"\norganization = \"{org}\"\nsinks = [{{ sink = \"vault\", path = \"{name}\" }}]\n")
        };
        let issuers = format!("{base}[issuers.pulumi]\nkind = \"pulumi\"\naddress = \"http://127.0.0.1:9\"\ntoken = {{ env = \"P\" }}\n");
        let a = "a-very-long-token-name-shared-start-one";
        let b = "a-very-long-token-name-shared-start-two";
        let errs = errors(&format!(
            "{issuers}{}{}",
            pulumi(a, "acme"),
            pulumi(b, "acme")
        ));
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert!(errs[0].contains("name_prefix"), "{errs:#?}");
        assert!(errors(&format!(
            "{issuers}{}{}",
            pulumi(a, "acme"),
            pulumi(b, "other")
        ))
        .is_empty());
    }

    #[test]
    fn only_regular_files_are_read_and_never_past_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        for special in ["/dev/zero", "/dev/null"] {
            let err = load(Path::new(special), &crate::kinds())
                .unwrap_err()
                .to_string();
            assert!(err.contains("not a regular file"), "{special}: {err}");
        }
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if made.is_ok_and(|s| s.success()) {
            // Opened without blocking, then refused: a FIFO never hangs `check`.
            let err = load(&fifo, &crate::kinds()).unwrap_err().to_string();
            assert!(err.contains("not a regular file"), "{err}");
        }
        let big = dir.path().join("big.toml");
        std::fs::write(&big, vec![b'#'; MAX_POLICY_BYTES as usize + 1]).unwrap();
        let err = load(&big, &crate::kinds()).unwrap_err().to_string();
        assert!(err.contains("larger than"), "{err}");
    }

    #[test]
    fn state_directory_env_sets_default_state_dir() {
        let src = GOOD.replace("state_dir = \"/tmp/x\"\n", "");
        let env = Env {
            state_directory: Some("/var/lib/token-rotator:/other".into()),
        };
        let p = parse("p.toml", Path::new("p.toml"), &src, &env, &crate::kinds()).unwrap();
        assert_eq!(p.daemon.state_dir, PathBuf::from("/var/lib/token-rotator"));
    }
}
