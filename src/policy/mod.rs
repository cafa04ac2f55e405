//! The policy file: raw TOML → validated domain types, with every problem located (`PATH:LINE:COL: message`).
//!
//! The same `load` is used by `check`, start-up and reload (SPEC §2–3).

pub mod diag;
pub mod duration;
#[cfg(test)]
mod proptests;
mod reader;
mod secret_ref;
mod target;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_spanned::Spanned;
use toml::de::{DeTable, DeValue};

pub use diag::Diagnostics;
use reader::{wrong_type, Span, TableReader};

pub use secret_ref::{SecretError, SecretRef};
pub use target::{SinkTarget, Target};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/token-rotator/policy.toml";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9851";
pub const DEFAULT_TFE_ADDRESS: &str = "https://app.terraform.io";
pub const DEFAULT_PULUMI_ADDRESS: &str = "https://api.pulumi.com";
/// Pulumi caps token expiry at two years (Pulumi docs, access-tokens.md).
const PULUMI_MAX_LIFETIME: Duration = Duration::from_secs(730 * 86_400);
/// Pulumi names are `<name_prefix>-<YYYYMMDDhhmmss>`, at most 40 characters (SPEC §3).
pub const PULUMI_MAX_NAME_PREFIX: usize = 25;
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

#[derive(Clone, Debug)]
pub struct IssuerConfig {
    pub name: String,
    pub kind: IssuerKind,
    pub address: String,
    pub token: SecretRef,
    pub ca_file: Option<PathBuf>,
    pub requests_per_second: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IssuerKind {
    Tfe,
    Pulumi,
}

impl IssuerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IssuerKind::Tfe => "tfe",
            IssuerKind::Pulumi => "pulumi",
        }
    }

    fn default_address(self) -> &'static str {
        match self {
            IssuerKind::Tfe => DEFAULT_TFE_ADDRESS,
            IssuerKind::Pulumi => DEFAULT_PULUMI_ADDRESS,
        }
    }
}

/// Kinds this build implements; the others parse but `check` says they are not supported yet.
pub const SUPPORTED_ISSUER_KINDS: &[&str] = &["tfe", "pulumi"];
pub const SUPPORTED_SINK_KINDS: &[&str] = &["vault", "aws-secretsmanager", "file"];
pub const SUPPORTED_VAULT_AUTH: &[&str] = &["token", "approle", "kubernetes"];

#[derive(Clone, Debug)]
pub struct SinkConfig {
    pub name: String,
    pub kind: SinkKind,
}

#[derive(Clone, Debug)]
pub enum SinkKind {
    Vault(VaultSinkConfig),
    AwsSecretsManager(AwsSinkConfig),
    File(FileSinkConfig),
}

impl SinkKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            SinkKind::Vault(_) => "vault",
            SinkKind::AwsSecretsManager(_) => "aws-secretsmanager",
            SinkKind::File(_) => "file",
        }
    }

    /// Whether targets are named by `path` (Vault, file) rather than `secret_id` (AWS).
    pub fn takes_path(&self) -> bool {
        !matches!(self, SinkKind::AwsSecretsManager(_))
    }
}

#[derive(Clone, Debug)]
pub struct AwsSinkConfig {
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    pub kms_key_id: Option<String>,
}

#[derive(Clone, Debug)]
pub struct FileSinkConfig {
    pub directory: PathBuf,
}

#[derive(Clone, Debug)]
pub struct VaultSinkConfig {
    pub address: String,
    pub mount: String,
    pub namespace: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub kv_version: Option<u8>,
    pub auth: VaultAuth,
}

#[derive(Clone, Debug)]
pub enum VaultAuth {
    Token {
        token: SecretRef,
    },
    AppRole {
        mount: String,
        role_id: String,
        secret_id: SecretRef,
    },
    Kubernetes {
        mount: String,
        role: String,
        jwt_file: PathBuf,
    },
}

impl VaultAuth {
    pub fn method(&self) -> &'static str {
        match self {
            VaultAuth::Token { .. } => "token",
            VaultAuth::AppRole { .. } => "approle",
            VaultAuth::Kubernetes { .. } => "kubernetes",
        }
    }
}

/// What the daemon regenerates for one policy token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenKind {
    /// TFC/TFE organization token: a singleton that the create call replaces.
    TfeOrganization { organization: String },
    /// TFC audit-trails token (`?token=audit-trails`): a singleton, independent of the organization token.
    TfeAuditTrails { organization: String },
    /// TFC team token with a description: several coexist per team.
    TfeTeam { team_id: String },
    /// TFC legacy (description-less) team token: a singleton per team.
    TfeTeamLegacy { team_id: String },
    /// TFC agent-pool token: several coexist; never expires; cannot call the API.
    TfeAgent {
        agent_pool_id: String,
        revoke_after_use: bool,
    },
    /// Pulumi organization token (needs an org admin's personal token to manage).
    PulumiOrganization {
        organization: String,
        admin: bool,
        role_id: Option<String>,
    },
    /// Pulumi team token, the team addressed by name.
    PulumiTeam { organization: String, team: String },
    /// Pulumi personal access token of the calling user.
    PulumiPersonal,
}

impl TokenKind {
    /// The `type` key as written in the policy and in sink records.
    pub fn type_name(&self) -> &'static str {
        match self {
            TokenKind::TfeOrganization { .. } | TokenKind::PulumiOrganization { .. } => {
                "organization"
            }
            TokenKind::TfeAuditTrails { .. } => "audit-trails",
            TokenKind::TfeTeam { .. } | TokenKind::PulumiTeam { .. } => "team",
            TokenKind::TfeTeamLegacy { .. } => "team-legacy",
            TokenKind::TfeAgent { .. } => "agent",
            TokenKind::PulumiPersonal => "personal",
        }
    }

    /// Singleton types are replaced by the issuer at create time: the old token dies when the new one is minted.
    pub fn is_singleton(&self) -> bool {
        matches!(
            self,
            TokenKind::TfeOrganization { .. }
                | TokenKind::TfeAuditTrails { .. }
                | TokenKind::TfeTeamLegacy { .. }
        )
    }

    /// Whether tokens of this type carry an expiry (agent tokens never expire).
    pub fn expires(&self) -> bool {
        !matches!(self, TokenKind::TfeAgent { .. })
    }

    /// Whether a token of this type can call the issuer's identity probe (agent tokens cannot).
    pub fn can_prove_itself(&self) -> bool {
        !matches!(self, TokenKind::TfeAgent { .. })
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
pub fn load(path: &Path) -> Result<Policy, PolicyError> {
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
    parse(&display, path, &source, &Env::from_process()).map_err(PolicyError::Invalid)
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
pub fn parse(display: &str, path: &Path, source: &str, env: &Env) -> Result<Policy, Diagnostics> {
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
    let issuers = read_named(&mut root, &mut d, "issuers", read_issuer);
    let sinks = read_named(&mut root, &mut d, "sinks", read_sink);
    let tokens = read_tokens(&mut root, &mut d, &issuers, &sinks);
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
    read_one: fn(&mut TableReader, &mut Diagnostics, &str) -> Option<T>,
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

fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.parse::<std::net::IpAddr>()
        .map(|ip| ip.is_loopback())
        .unwrap_or(false)
}

/// SPEC §5.6: `https://` everywhere, plain `http://` only to loopback addresses.
fn check_address(d: &mut Diagnostics, key: &str, table: &str, v: &Spanned<String>) -> bool {
    let text = v.get_ref();
    let Ok(url) = reqwest::Url::parse(text) else {
        d.push(
            v.span(),
            format!("`{key}` in {table} is not a valid URL: \"{text}\""),
        );
        return false;
    };
    let host = url.host_str().unwrap_or("");
    match url.scheme() {
        "https" if !host.is_empty() => true,
        "http" if is_loopback_host(host) => true,
        "http" => {
            d.push(
                v.span(),
                format!(
                    "`{key}` in {table} uses plain http:// to {host}; only loopback addresses may use http://, use https://"
                ),
            );
            false
        }
        _ => {
            d.push(
                v.span(),
                format!("`{key}` in {table} must be an https:// URL, found \"{text}\""),
            );
            false
        }
    }
}

fn read_path(t: &mut TableReader, d: &mut Diagnostics, key: &'static str) -> Option<PathBuf> {
    let v = t.opt_str(d, key)?;
    if v.get_ref().is_empty() {
        d.push(v.span(), format!("`{key}` in {} must not be empty", t.name));
        return None;
    }
    if !no_nul(d, &v, &format!("`{key}` in {}", t.name)) {
        return None;
    }
    Some(PathBuf::from(v.into_inner()))
}

/// A path the operating system can take: no NUL byte (it would silently cut the path short).
fn no_nul(d: &mut Diagnostics, v: &Spanned<String>, what: &str) -> bool {
    if v.get_ref().contains('\0') {
        d.push(v.span(), format!("{what} contains a NUL character"));
        return false;
    }
    true
}

/// Reads a secret reference; an inline string gets a message saying what to write instead.
fn read_secret_ref(
    t: &mut TableReader,
    d: &mut Diagnostics,
    key: &'static str,
) -> Option<SecretRef> {
    let Some(v) = t.get(key) else {
        t.missing(
            d,
            key,
            &format!(" (write `{key} = {{ env = \"NAME\" }}` or `{key} = {{ file = \"PATH\" }}`)"),
        );
        return None;
    };
    secret_ref_value(d, &format!("`{key}` in {}", t.name), key, v)
}

fn secret_ref_value(
    d: &mut Diagnostics,
    what: &str,
    key: &str,
    v: &Spanned<DeValue<'_>>,
) -> Option<SecretRef> {
    let table = match v.get_ref() {
        DeValue::String(_) => {
            d.push(
                v.span(),
                format!(
                    "{what} must not be written inline; write `{key} = {{ env = \"NAME\" }}` or `{key} = {{ file = \"PATH\" }}` (or `{{ sink = \"NAME\", path = \"…\" }}`) instead"
                ),
            );
            return None;
        }
        DeValue::Table(table) => table,
        _ => {
            wrong_type(d, v, what, "a secret reference such as { env = \"NAME\" }");
            return None;
        }
    };
    let mut r = TableReader::new(what.to_string(), v.span(), table);
    let present: Vec<&str> = ["env", "file", "sink"]
        .into_iter()
        .filter(|k| r.has(k))
        .collect();
    let result = match present.as_slice() {
        ["env"] => r.opt_str(d, "env").and_then(|s| {
            if s.get_ref().is_empty() {
                d.push(s.span(), format!("{what}: `env` must name a variable"));
                None
            } else {
                Some(SecretRef::Env(s.into_inner()))
            }
        }),
        ["file"] => r.opt_str(d, "file").and_then(|s| {
            if s.get_ref().is_empty() {
                d.push(s.span(), format!("{what}: `file` must name a path"));
                None
            } else if !no_nul(d, &s, &format!("{what}: `file`")) {
                None
            } else {
                Some(SecretRef::File(PathBuf::from(s.into_inner())))
            }
        }),
        ["sink"] => {
            let sink = r.opt_str(d, "sink");
            let target = read_target(&mut r, d);
            match (sink, target) {
                (Some(sink), Some(target)) => Some(SecretRef::Sink {
                    sink: sink.into_inner(),
                    target,
                }),
                _ => None,
            }
        }
        [] => {
            d.push(
                v.span(),
                format!("{what} must have one of `env`, `file` or `sink`"),
            );
            None
        }
        _ => {
            d.push(
                v.span(),
                format!("{what} must have exactly one of `env`, `file` or `sink`"),
            );
            r.allow(&["env", "file", "sink", "path", "secret_id"]);
            None
        }
    };
    r.finish(d);
    result
}

/// `path = "…"` or `secret_id = "…"` in a sink reference.
fn read_target(r: &mut TableReader, d: &mut Diagnostics) -> Option<Target> {
    match (r.has("path"), r.has("secret_id")) {
        (true, false) => r
            .opt_str(d, "path")
            .and_then(|p| non_empty(d, p, "path").map(Target::Path)),
        (false, true) => r
            .opt_str(d, "secret_id")
            .and_then(|p| non_empty(d, p, "secret_id").map(Target::SecretId)),
        (true, true) => {
            d.push(
                r.span.clone(),
                format!("{} must have `path` or `secret_id`, not both", r.name),
            );
            r.allow(&["path", "secret_id"]);
            None
        }
        (false, false) => {
            r.missing(d, "path", " (or `secret_id` for an AWS sink)");
            None
        }
    }
}

fn non_empty(d: &mut Diagnostics, v: Spanned<String>, key: &str) -> Option<String> {
    if v.get_ref().trim().is_empty() {
        d.push(v.span(), format!("`{key}` must not be empty"));
        None
    } else {
        Some(v.into_inner())
    }
}

/// Reads `kind`: one of `known`; a known kind that this build does not implement yet is reported as such.
fn read_kind<'k>(
    t: &mut TableReader,
    d: &mut Diagnostics,
    known: &[&'k str],
    supported: &[&str],
) -> Option<&'k str> {
    let kind = t.req_str(d, "kind")?;
    match known.iter().find(|k| **k == kind.get_ref()) {
        Some(k) if supported.contains(k) => Some(k),
        Some(k) => {
            d.push(
                kind.span(),
                format!(
                    "`kind = \"{k}\"` in {} is not supported by this version of token-rotator (supported: {})",
                    t.name,
                    supported.join(", ")
                ),
            );
            None
        }
        None => {
            d.push(
                kind.span(),
                format!(
                    "unknown `kind = \"{}\"` in {}; expected one of: {}",
                    kind.get_ref(),
                    t.name,
                    known.join(", ")
                ),
            );
            None
        }
    }
}

fn read_issuer(t: &mut TableReader, d: &mut Diagnostics, name: &str) -> Option<IssuerConfig> {
    let kind = read_kind(t, d, &["tfe", "pulumi"], SUPPORTED_ISSUER_KINDS);
    let kind = match kind {
        Some("tfe") => Some(IssuerKind::Tfe),
        Some("pulumi") => Some(IssuerKind::Pulumi),
        _ => None,
    };
    let address = match t.opt_str(d, "address") {
        Some(a) => check_address(d, "address", &t.name, &a).then(|| a.into_inner()),
        None => kind.map(|k| k.default_address().to_string()),
    };
    let token = read_secret_ref(t, d, "token");
    let ca_file = read_path(t, d, "ca_file");
    let rps = t
        .opt_int(d, "requests_per_second", 1..=1000)
        .map(|v| v.into_inner() as u32)
        .unwrap_or(DEFAULT_REQUESTS_PER_SECOND);
    Some(IssuerConfig {
        name: name.to_string(),
        kind: kind?,
        address: address?.trim_end_matches('/').to_string(),
        token: token?,
        ca_file,
        requests_per_second: rps,
    })
}

fn read_sink(t: &mut TableReader, d: &mut Diagnostics, name: &str) -> Option<SinkConfig> {
    let kind = read_kind(
        t,
        d,
        &["vault", "aws-secretsmanager", "file"],
        SUPPORTED_SINK_KINDS,
    );
    let kind = match kind {
        Some("vault") => SinkKind::Vault(read_vault(t, d)?),
        Some("aws-secretsmanager") => SinkKind::AwsSecretsManager(read_aws(t, d)?),
        Some("file") => SinkKind::File(read_file_sink(t, d)?),
        _ => {
            t.allow(&[
                "address",
                "mount",
                "namespace",
                "ca_file",
                "kv_version",
                "auth",
                "region",
                "endpoint_url",
                "kms_key_id",
                "directory",
            ]);
            return None;
        }
    };
    Some(SinkConfig {
        name: name.to_string(),
        kind,
    })
}

fn read_aws(t: &mut TableReader, d: &mut Diagnostics) -> Option<AwsSinkConfig> {
    let region = t
        .opt_str(d, "region")
        .and_then(|r| non_empty(d, r, "region"));
    let mut ok = true;
    let endpoint_url = t.opt_str(d, "endpoint_url").and_then(|e| {
        if check_address(d, "endpoint_url", &t.name, &e) {
            Some(e.into_inner())
        } else {
            ok = false;
            None
        }
    });
    let kms_key_id = t
        .opt_str(d, "kms_key_id")
        .and_then(|k| non_empty(d, k, "kms_key_id"));
    ok.then_some(AwsSinkConfig {
        region,
        endpoint_url,
        kms_key_id,
    })
}

fn read_file_sink(t: &mut TableReader, d: &mut Diagnostics) -> Option<FileSinkConfig> {
    let dir = t.req_str(d, "directory")?;
    if !no_nul(d, &dir, &format!("`directory` in {}", t.name)) {
        return None;
    }
    if !Path::new(dir.get_ref()).is_absolute() {
        d.push(
            dir.span(),
            format!("`directory` in {} must be an absolute path", t.name),
        );
        return None;
    }
    Some(FileSinkConfig {
        directory: PathBuf::from(dir.into_inner()),
    })
}

/// A file sink target must stay inside the sink's directory: relative, no `..`, no empty components.
fn check_file_target(path: &str) -> Result<(), String> {
    if path.starts_with('/') {
        return Err(format!(
            "file target `{path}` must be relative to the sink's directory"
        ));
    }
    if path.contains('\0') {
        return Err(format!(
            "file target `{}` contains a NUL character",
            path.replace('\0', "\\0")
        ));
    }
    for part in path.split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return Err(format!(
                "file target `{path}` must not contain empty, `.` or `..` components"
            ));
        }
    }
    Ok(())
}

fn read_vault(t: &mut TableReader, d: &mut Diagnostics) -> Option<VaultSinkConfig> {
    let address = t
        .req_str(d, "address")
        .and_then(|a| check_address(d, "address", &t.name, &a).then(|| a.into_inner()));
    let mount = match t.opt_str(d, "mount") {
        Some(m) => non_empty(d, m, "mount").map(|m| m.trim_matches('/').to_string()),
        None => Some("secret".to_string()),
    };
    let namespace = t.opt_str(d, "namespace").map(Spanned::into_inner);
    let ca_file = read_path(t, d, "ca_file");
    let kv_version = t
        .opt_int(d, "kv_version", 1..=2)
        .map(|v| v.into_inner() as u8);
    let auth = match t.opt_table(d, "auth") {
        None => {
            if !t.has("auth") {
                t.missing(
                    d,
                    "auth",
                    " (e.g. `auth = { method = \"token\", token = { env = \"VAULT_TOKEN\" } }`)",
                );
            }
            None
        }
        Some(mut a) => {
            let method = a.req_str(d, "method");
            let auth = match method.as_ref().map(|m| m.get_ref().as_str()) {
                Some("token") => {
                    read_secret_ref(&mut a, d, "token").map(|token| VaultAuth::Token { token })
                }
                Some("approle") if SUPPORTED_VAULT_AUTH.contains(&"approle") => {
                    let mount = read_auth_mount(&mut a, d, "approle");
                    let role_id = a
                        .req_str(d, "role_id")
                        .and_then(|r| non_empty(d, r, "role_id"));
                    let secret_id = read_local_secret_ref(&mut a, d, "secret_id");
                    match (mount, role_id, secret_id) {
                        (Some(mount), Some(role_id), Some(secret_id)) => Some(VaultAuth::AppRole {
                            mount,
                            role_id,
                            secret_id,
                        }),
                        _ => None,
                    }
                }
                Some("kubernetes") if SUPPORTED_VAULT_AUTH.contains(&"kubernetes") => {
                    let mount = read_auth_mount(&mut a, d, "kubernetes");
                    let role = a.req_str(d, "role").and_then(|r| non_empty(d, r, "role"));
                    let jwt_file = if a.has("jwt_file") {
                        read_path(&mut a, d, "jwt_file")
                    } else {
                        Some(PathBuf::from(DEFAULT_K8S_JWT_FILE))
                    };
                    match (mount, role, jwt_file) {
                        (Some(mount), Some(role), Some(jwt_file)) => Some(VaultAuth::Kubernetes {
                            mount,
                            role,
                            jwt_file,
                        }),
                        _ => None,
                    }
                }
                Some(m @ ("approle" | "kubernetes")) => {
                    d.push(
                        method.as_ref().map(|s| s.span()).unwrap_or(a.span.clone()),
                        format!("Vault auth method \"{m}\" is not supported by this version of token-rotator (supported: {})", SUPPORTED_VAULT_AUTH.join(", ")),
                    );
                    a.allow(&["mount", "role_id", "secret_id", "role", "jwt_file", "token"]);
                    None
                }
                Some(other) => {
                    d.push(
                        method.as_ref().map(|s| s.span()).unwrap_or(a.span.clone()),
                        format!("unknown Vault auth `method = \"{other}\"`; expected one of: token, approle, kubernetes"),
                    );
                    None
                }
                None => None,
            };
            a.finish(d);
            auth
        }
    };
    Some(VaultSinkConfig {
        address: address?.trim_end_matches('/').to_string(),
        mount: mount?,
        namespace,
        ca_file,
        kv_version,
        auth: auth?,
    })
}

/// Where Kubernetes mounts a pod's service-account token.
const DEFAULT_K8S_JWT_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// `mount` of a Vault auth method: default the method's name, no surrounding slashes.
fn read_auth_mount(a: &mut TableReader, d: &mut Diagnostics, default: &str) -> Option<String> {
    match a.opt_str(d, "mount") {
        Some(m) => non_empty(d, m, "mount").map(|m| m.trim_matches('/').to_string()),
        None => Some(default.to_string()),
    }
}

/// A secret reference read before any sink exists (a sink's own credential): `env` or `file` only.
fn read_local_secret_ref(
    a: &mut TableReader,
    d: &mut Diagnostics,
    key: &'static str,
) -> Option<SecretRef> {
    let span = a.get(key).map(|v| v.span());
    match read_secret_ref(a, d, key)? {
        SecretRef::Sink { .. } => {
            d.push(
                span.unwrap_or(a.span.clone()),
                format!("`{key}` in {} must be an `env` or `file` reference (a sink's credential cannot come from a sink)", a.name),
            );
            None
        }
        r => Some(r),
    }
}

const TFE_TYPES: &[&str] = &[
    "organization",
    "audit-trails",
    "team",
    "team-legacy",
    "agent",
];
const PULUMI_TYPES: &[&str] = &["organization", "team", "personal"];

fn read_tokens(
    root: &mut TableReader,
    d: &mut Diagnostics,
    issuers: &Named<IssuerConfig>,
    sinks: &Named<SinkConfig>,
) -> BTreeMap<String, Arc<TokenPolicy>> {
    let mut out = BTreeMap::new();
    // Which token already writes to a sink target, for the duplicate check.
    let mut targets: HashMap<SinkTarget, String> = HashMap::new();
    // Which token already uses a label in a sweep scope, for the collision check.
    let mut labels: HashMap<((IssuerKind, String), String), String> = HashMap::new();
    let Some(section) = root.opt_table(d, "tokens") else {
        return out;
    };
    for (name, value) in section.entries() {
        let Some(table) = value.get_ref().as_table() else {
            wrong_type(d, value, &format!("`tokens.{}`", name.get_ref()), "a table");
            continue;
        };
        let named_ok = check_name(d, &name, "tokens");
        let mut t = TableReader::new(format!("[tokens.{}]", name.get_ref()), name.span(), table);
        let label_span = t
            .get_span("description")
            .or_else(|| t.get_span("name_prefix"));
        if let Some(token) = read_token(&mut t, d, name.get_ref(), issuers, sinks, &mut targets) {
            if let Some(scope) = label_scope(&token, issuers) {
                let label = sweep_label(&token);
                match labels.get(&(scope.clone(), label.clone())) {
                    Some(other) => d.push(
                        label_span.unwrap_or_else(|| name.span()),
                        format!(
                            "[tokens.{}] labels its tokens like [tokens.{other}] (\"{label}\") in the same {}: the orphan sweep could not tell their tokens apart; give one of them another `{}`",
                            name.get_ref(),
                            scope.1,
                            if scope.0 == IssuerKind::Tfe { "description" } else { "name_prefix" },
                        ),
                    ),
                    None => {
                        labels.insert((scope, label), name.get_ref().clone());
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

/// Where a token's labels must be unique for the orphan sweep to tell tokens apart (SPEC §5.11): the issuer kind
/// and address (two issuer tables may point at the same service) and the resource whose token list the sweep
/// reads, for the types that are swept (singletons are replaced in place and never swept).
fn label_scope(token: &TokenPolicy, issuers: &Named<IssuerConfig>) -> Option<(IssuerKind, String)> {
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
    let what = match &token.kind {
        TokenKind::TfeTeam { team_id } => format!("team {team_id} at {at}"),
        TokenKind::TfeAgent { agent_pool_id, .. } => format!("agent pool {agent_pool_id} at {at}"),
        // Org and team token names share one namespace per organization (token-apis.md B).
        TokenKind::PulumiOrganization { organization, .. }
        | TokenKind::PulumiTeam { organization, .. } => {
            format!("Pulumi organization \"{organization}\" at {at}")
        }
        // The caller's own tokens: issuer tables at one address may hold one user's credential.
        TokenKind::PulumiPersonal => format!("personal tokens at {at}"),
        TokenKind::TfeOrganization { .. }
        | TokenKind::TfeAuditTrails { .. }
        | TokenKind::TfeTeamLegacy { .. } => return None,
    };
    Some((issuer.kind, what))
}

/// The part of a label the sweep compares: the TFC description, or the Pulumi name prefix as names use it.
fn sweep_label(token: &TokenPolicy) -> String {
    match token.kind {
        TokenKind::PulumiOrganization { .. }
        | TokenKind::PulumiTeam { .. }
        | TokenKind::PulumiPersonal => token.label.chars().take(PULUMI_MAX_NAME_PREFIX).collect(),
        _ => token.label.clone(),
    }
}

fn read_token(
    t: &mut TableReader,
    d: &mut Diagnostics,
    name: &str,
    issuers: &Named<IssuerConfig>,
    sinks: &Named<SinkConfig>,
    targets: &mut HashMap<SinkTarget, String>,
) -> Option<TokenPolicy> {
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
    let type_key = t.req_str(d, "type");
    let kind = match (issuer, type_key.as_ref()) {
        (Some(issuer), Some(ty)) => read_token_kind(t, d, issuer, ty),
        _ => {
            check_kind_keys(t, d);
            None
        }
    };
    let schedule = read_schedule(t, d, kind.as_ref());
    let label = read_label(t, d, name, issuer.map(|i| i.kind));
    let sink_targets = read_token_sinks(t, d, name, sinks, targets);
    Some(TokenPolicy {
        name: name.to_string(),
        issuer: issuer_key?.into_inner(),
        kind: kind?,
        schedule: schedule?,
        label: label?,
        sinks: sink_targets?,
    })
}

/// TFC `description` / Pulumi `name_prefix`, with their defaults.
fn read_label(
    t: &mut TableReader,
    d: &mut Diagnostics,
    name: &str,
    kind: Option<IssuerKind>,
) -> Option<String> {
    match kind {
        Some(IssuerKind::Tfe) => {
            if let Some(v) = t.get("name_prefix") {
                d.push(
                    v.span(),
                    format!(
                        "`name_prefix` in {} is for Pulumi tokens; TFC tokens take `description`",
                        t.name
                    ),
                );
            }
            match t.opt_str(d, "description") {
                Some(s) if s.get_ref().trim().is_empty() || s.get_ref().chars().count() > 80 => {
                    d.push(
                        s.span(),
                        format!("`description` in {} must be 1 to 80 characters", t.name),
                    );
                    None
                }
                Some(s) => Some(s.into_inner()),
                None => Some(format!("token-rotator {name}")),
            }
        }
        Some(IssuerKind::Pulumi) => {
            if let Some(v) = t.get("description") {
                d.push(
                    v.span(),
                    format!(
                        "`description` in {} is for TFC tokens; Pulumi tokens take `name_prefix`",
                        t.name
                    ),
                );
            }
            match t.opt_str(d, "name_prefix") {
                Some(s) => {
                    let ok_chars = s
                        .get_ref()
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
                    if s.get_ref().is_empty()
                        || s.get_ref().chars().count() > PULUMI_MAX_NAME_PREFIX
                        || !ok_chars
                    {
                        d.push(
                            s.span(),
                            format!(
                                "`name_prefix` in {} must be 1 to {PULUMI_MAX_NAME_PREFIX} characters of A-Z, a-z, 0-9, `-`, `_`, `.` (names are `<name_prefix>-<YYYYMMDDhhmmss>`, at most 40 characters)",
                                t.name
                            ),
                        );
                        None
                    } else {
                        Some(s.into_inner())
                    }
                }
                None => {
                    let cleaned: String = name
                        .chars()
                        .map(|c| {
                            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                                c
                            } else {
                                '-'
                            }
                        })
                        .take(PULUMI_MAX_NAME_PREFIX)
                        .collect();
                    Some(cleaned)
                }
            }
        }
        None => {
            t.allow(&["description", "name_prefix"]);
            None
        }
    }
}

fn known_list(known: &[&str]) -> String {
    if known.is_empty() {
        String::new()
    } else {
        format!(" (defined: {})", known.join(", "))
    }
}

fn read_token_kind(
    t: &mut TableReader,
    d: &mut Diagnostics,
    issuer: &IssuerConfig,
    ty: &Spanned<String>,
) -> Option<TokenKind> {
    let kind = read_known_kind(t, d, issuer, ty);
    check_kind_keys(t, d);
    kind
}

fn read_known_kind(
    t: &mut TableReader,
    d: &mut Diagnostics,
    issuer: &IssuerConfig,
    ty: &Spanned<String>,
) -> Option<TokenKind> {
    let req = |t: &mut TableReader, d: &mut Diagnostics, key: &'static str| {
        let v = t.req_str(d, key)?;
        non_empty(d, v, key)
    };
    let kind = match (issuer.kind, ty.get_ref().as_str()) {
        (IssuerKind::Tfe, "organization") => Some(TokenKind::TfeOrganization {
            organization: req(t, d, "organization")?,
        }),
        (IssuerKind::Tfe, "audit-trails") => Some(TokenKind::TfeAuditTrails {
            organization: req(t, d, "organization")?,
        }),
        (IssuerKind::Tfe, "team") => Some(TokenKind::TfeTeam {
            team_id: req(t, d, "team_id")?,
        }),
        (IssuerKind::Tfe, "team-legacy") => Some(TokenKind::TfeTeamLegacy {
            team_id: req(t, d, "team_id")?,
        }),
        (IssuerKind::Tfe, "agent") => {
            let pool = req(t, d, "agent_pool_id");
            let revoke_after_use = t
                .opt_bool(d, "revoke_after_use")
                .map(Spanned::into_inner)
                .unwrap_or(false);
            Some(TokenKind::TfeAgent {
                agent_pool_id: pool?,
                revoke_after_use,
            })
        }
        (IssuerKind::Pulumi, "organization") => {
            let org = req(t, d, "organization");
            let admin = t
                .opt_bool(d, "admin")
                .map(Spanned::into_inner)
                .unwrap_or(false);
            let role_id = t
                .opt_str(d, "role_id")
                .and_then(|r| non_empty(d, r, "role_id"));
            Some(TokenKind::PulumiOrganization {
                organization: org?,
                admin,
                role_id,
            })
        }
        (IssuerKind::Pulumi, "team") => {
            let org = req(t, d, "organization");
            let team = req(t, d, "team");
            Some(TokenKind::PulumiTeam {
                organization: org?,
                team: team?,
            })
        }
        (IssuerKind::Pulumi, "personal") => Some(TokenKind::PulumiPersonal),
        (kind, other) => {
            let types = if kind == IssuerKind::Tfe {
                TFE_TYPES
            } else {
                PULUMI_TYPES
            };
            d.push(
                ty.span(),
                format!(
                    "unknown `type = \"{other}\"` for issuer \"{}\" (kind \"{}\"); expected one of: {}",
                    issuer.name,
                    kind.as_str(),
                    types.join(", ")
                ),
            );
            None
        }
    };
    kind
}

/// The type-specific keys, checked for their value types whatever the `type` (a wrong `type` must not hide a
/// wrong `team_id`); keys the type does not take are allowed here and checked by their type's reader.
fn check_kind_keys(t: &mut TableReader, d: &mut Diagnostics) {
    for key in [
        "organization",
        "team_id",
        "agent_pool_id",
        "team",
        "role_id",
    ] {
        let _ = t.opt_str(d, key);
    }
    for key in ["admin", "revoke_after_use"] {
        let _ = t.opt_bool(d, key);
    }
}

fn read_schedule(
    t: &mut TableReader,
    d: &mut Diagnostics,
    kind: Option<&TokenKind>,
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
    let expires = kind.map(TokenKind::expires).unwrap_or(true);
    if !expires {
        if let Some(l) = &lifetime {
            d.push(
                l.span(),
                format!(
                    "{}: agent tokens never expire, so `lifetime` does not apply; use `every`",
                    t.name
                ),
            );
            ok = false;
        }
        if let Some(rb) = &rotate_before {
            d.push(
                rb.span(),
                format!(
                    "{}: agent tokens never expire, so `rotate_before` does not apply; use `every`",
                    t.name
                ),
            );
            ok = false;
        }
        if every.is_none() && kind.is_some() {
            t.missing(
                d,
                "every",
                " (agent tokens never expire, so `every` sets the rotation period)",
            );
            ok = false;
        }
    }
    if let (
        Some(
            TokenKind::PulumiOrganization { .. }
            | TokenKind::PulumiTeam { .. }
            | TokenKind::PulumiPersonal,
        ),
        Some(l),
    ) = (kind, &lifetime)
    {
        if *l.get_ref() > PULUMI_MAX_LIFETIME {
            d.push(
                l.span(),
                format!(
                    "`lifetime` in {} exceeds Pulumi's maximum of two years (730d)",
                    t.name
                ),
            );
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
        let expects_path = cfg.kind.takes_path();
        if expects_path != matches!(target, Target::Path(_)) {
            let want = if expects_path {
                "`path`"
            } else {
                "`secret_id`"
            };
            d.push(
                item.span(),
                format!(
                    "sink \"{}\" (kind \"{}\") takes {want}",
                    sink.get_ref(),
                    cfg.kind.as_str()
                ),
            );
            ok = false;
            continue;
        }
        if let (SinkKind::File(_), Target::Path(p)) = (&cfg.kind, &target) {
            if let Err(why) = check_file_target(p) {
                d.push(item.span(), why);
                ok = false;
                continue;
            }
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
        match parse("p.toml", Path::new("p.toml"), src, &Env::default()) {
            Ok(_) => vec![],
            Err(mut d) => d.render(),
        }
    }

    #[test]
    fn good_policy_parses_with_defaults() {
        let p = parse("p.toml", Path::new("p.toml"), GOOD, &Env::default()).unwrap();
        let t = &p.tokens["ci-org"];
        assert_eq!(t.schedule.lifetime, Some(Duration::from_secs(30 * 86_400)));
        assert_eq!(
            t.schedule.rotate_before,
            Some(Duration::from_secs(10 * 86_400))
        );
        assert_eq!(t.schedule.grace, Duration::from_secs(3600));
        assert_eq!(p.daemon.listen.to_string(), "127.0.0.1:9851");
        match &p.sinks["vault"].kind {
            SinkKind::Vault(v) => assert_eq!(v.mount, "secret"),
            other => panic!("unexpected {other:?}"),
        }
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
            let err = load(Path::new(special)).unwrap_err().to_string();
            assert!(err.contains("not a regular file"), "{special}: {err}");
        }
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if made.is_ok_and(|s| s.success()) {
            // Opened without blocking, then refused: a FIFO never hangs `check`.
            let err = load(&fifo).unwrap_err().to_string();
            assert!(err.contains("not a regular file"), "{err}");
        }
        let big = dir.path().join("big.toml");
        std::fs::write(&big, vec![b'#'; MAX_POLICY_BYTES as usize + 1]).unwrap();
        let err = load(&big).unwrap_err().to_string();
        assert!(err.contains("larger than"), "{err}");
    }

    #[test]
    fn state_directory_env_sets_default_state_dir() {
        let src = GOOD.replace("state_dir = \"/tmp/x\"\n", "");
        let env = Env {
            state_directory: Some("/var/lib/token-rotator:/other".into()),
        };
        let p = parse("p.toml", Path::new("p.toml"), &src, &env).unwrap();
        assert_eq!(p.daemon.state_dir, PathBuf::from("/var/lib/token-rotator"));
    }
}
