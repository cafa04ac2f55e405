//! `notify` and `notify_events` on a token (SPEC §9): the actions that tell consumers a token changed.

use std::path::PathBuf;
use std::time::Duration;

use toml::de::DeValue;

use super::diag::Diagnostics;
use super::fields::{check_address, no_nul, read_secret_ref};
use super::reader::{wrong_type, TableReader};
use super::SecretRef;

/// How long an action may run when its `timeout` is not given.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest `timeout` an action may have: a hung action holds its token's visits.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(600);

/// What happened to a token, as actions and their receivers name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotifyEvent {
    /// A new token is stored in every sink and verified; its predecessor is not revoked yet.
    Rotated,
    /// The token turned not ready.
    Failed,
}

impl NotifyEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            NotifyEvent::Rotated => "rotated",
            NotifyEvent::Failed => "failed",
        }
    }
}

/// One action of a token's `notify` list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotifyAction {
    pub target: ActionTarget,
    pub timeout: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ActionTarget {
    /// A program and its arguments, run without a shell.
    Exec { program: PathBuf, args: Vec<String> },
    /// An HTTPS endpoint (plain http only to loopback) that receives a signed JSON body.
    Webhook { url: String, secret: SecretRef },
}

impl std::fmt::Display for NotifyAction {
    /// How logs and errors name an action: the program or the URL without its query (which may carry a key).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.target {
            ActionTarget::Exec { program, .. } => write!(f, "exec {}", program.display()),
            ActionTarget::Webhook { url, .. } => {
                let shown = reqwest::Url::parse(url)
                    .map(|mut u| {
                        u.set_query(None);
                        u.set_fragment(None);
                        let _ = u.set_password(None);
                        let _ = u.set_username("");
                        u.to_string()
                    })
                    .unwrap_or_else(|_| "(invalid URL)".into());
                write!(f, "webhook {shown}")
            }
        }
    }
}

/// A token's actions and the events they run for. Empty when the token has no `notify`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Notify {
    pub actions: Vec<NotifyAction>,
    pub events: Vec<NotifyEvent>,
}

impl Notify {
    /// Whether `event` runs this token's actions.
    pub fn wants(&self, event: NotifyEvent) -> bool {
        !self.actions.is_empty() && self.events.contains(&event)
    }
}

/// Reads `notify` and `notify_events` of one token table.
pub(super) fn read_notify(t: &mut TableReader, d: &mut Diagnostics) -> Option<Notify> {
    let mut ok = true;
    let events = match t.get("notify_events") {
        None => vec![NotifyEvent::Rotated],
        Some(v) => match read_events(d, &t.name, v) {
            Some(e) => e,
            None => {
                ok = false;
                Vec::new()
            }
        },
    };
    let mut actions = Vec::new();
    if let Some(v) = t.get("notify") {
        match v.get_ref() {
            DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    match read_action(d, &format!("`notify[{i}]` in {}", t.name), item) {
                        Some(a) => actions.push(a),
                        None => ok = false,
                    }
                }
            }
            _ => {
                wrong_type(
                    d,
                    v,
                    &format!("`notify` in {}", t.name),
                    "an array of tables such as [{ exec = [\"/usr/bin/systemctl\", \"reload\", \"app.service\"] }]",
                );
                ok = false;
            }
        }
    } else if t.has("notify_events") {
        let span = t.get_span("notify_events").unwrap_or(t.span.clone());
        d.push(
            span,
            format!(
                "`notify_events` in {} has no `notify` actions to run",
                t.name
            ),
        );
        ok = false;
    }
    ok.then_some(Notify { actions, events })
}

fn read_events(
    d: &mut Diagnostics,
    table: &str,
    v: &serde_spanned::Spanned<DeValue<'_>>,
) -> Option<Vec<NotifyEvent>> {
    let what = format!("`notify_events` in {table}");
    let Some(items) = v.get_ref().as_array() else {
        wrong_type(d, v, &what, "an array such as [\"rotated\", \"failed\"]");
        return None;
    };
    let mut out = Vec::new();
    let mut ok = true;
    for item in items {
        match item.get_ref().as_str() {
            Some("rotated") if !out.contains(&NotifyEvent::Rotated) => {
                out.push(NotifyEvent::Rotated)
            }
            Some("failed") if !out.contains(&NotifyEvent::Failed) => out.push(NotifyEvent::Failed),
            Some(e @ ("rotated" | "failed")) => {
                d.push(item.span(), format!("{what} names \"{e}\" twice"));
                ok = false;
            }
            Some(other) => {
                d.push(
                    item.span(),
                    format!(
                        "{what}: unknown event \"{other}\"; expected \"rotated\" or \"failed\""
                    ),
                );
                ok = false;
            }
            None => {
                wrong_type(d, item, &format!("an entry of {what}"), "a string");
                ok = false;
            }
        }
    }
    if ok && out.is_empty() {
        d.push(
            v.span(),
            format!(
                "{what} is empty; leave it out for the default [\"rotated\"], or remove `notify`"
            ),
        );
        ok = false;
    }
    ok.then_some(out)
}

fn read_action(
    d: &mut Diagnostics,
    what: &str,
    item: &serde_spanned::Spanned<DeValue<'_>>,
) -> Option<NotifyAction> {
    let Some(table) = item.get_ref().as_table() else {
        wrong_type(
            d,
            item,
            what,
            "a table with `exec = [...]` or `webhook = \"https://…\"`",
        );
        return None;
    };
    let mut r = TableReader::new(what.to_string(), item.span(), table);
    let timeout = match r.opt_duration(d, "timeout") {
        None => Some(DEFAULT_TIMEOUT),
        Some(t) if t.get_ref().is_zero() || *t.get_ref() > MAX_TIMEOUT => {
            d.push(
                t.span(),
                format!("`timeout` in {what} must be between 1s and 10m"),
            );
            None
        }
        Some(t) => Some(t.into_inner()),
    };
    let target = match (r.has("exec"), r.has("webhook")) {
        (true, true) => {
            d.push(
                item.span(),
                format!("{what} has both `exec` and `webhook`; write one action per table"),
            );
            r.allow(&["exec", "webhook", "secret"]);
            None
        }
        (false, false) => {
            d.push(
                item.span(),
                format!(
                    "{what} needs `exec = [\"/path/to/program\", …]` or `webhook = \"https://…\"`"
                ),
            );
            r.allow(&["secret"]);
            None
        }
        (true, false) => read_exec(&mut r, d, what),
        (false, true) => read_webhook(&mut r, d, what),
    };
    r.finish(d);
    Some(NotifyAction {
        target: target?,
        timeout: timeout?,
    })
}

fn read_exec(r: &mut TableReader, d: &mut Diagnostics, what: &str) -> Option<ActionTarget> {
    let v = r.get("exec")?;
    let Some(items) = v.get_ref().as_array() else {
        wrong_type(
            d,
            v,
            &format!("`exec` in {what}"),
            "an array: the program's absolute path, then its arguments (no shell)",
        );
        return None;
    };
    let mut argv = Vec::new();
    for item in items {
        let Some(s) = item.get_ref().as_str() else {
            wrong_type(
                d,
                item,
                &format!("an entry of `exec` in {what}"),
                "a string",
            );
            return None;
        };
        let s = serde_spanned::Spanned::new(item.span(), s.to_string());
        if !no_nul(d, &s, &format!("`exec` in {what}")) {
            return None;
        }
        argv.push(s);
    }
    let Some(program) = argv.first() else {
        d.push(
            v.span(),
            format!("`exec` in {what} is empty; give the program's absolute path first"),
        );
        return None;
    };
    if !program.get_ref().starts_with('/') {
        d.push(
            program.span(),
            format!(
                "`exec` in {what} must start with the program's absolute path (there is no shell and no PATH search), found \"{}\"",
                program.get_ref()
            ),
        );
        return None;
    }
    Some(ActionTarget::Exec {
        program: PathBuf::from(program.get_ref()),
        args: argv[1..].iter().map(|a| a.get_ref().clone()).collect(),
    })
}

fn read_webhook(r: &mut TableReader, d: &mut Diagnostics, what: &str) -> Option<ActionTarget> {
    let url = r.req_str(d, "webhook");
    let secret = read_secret_ref(r, d, "secret");
    let url = url?;
    if !check_address(d, "webhook", what, &url) {
        return None;
    }
    Some(ActionTarget::Webhook {
        url: url.into_inner(),
        secret: secret?,
    })
}
