//! The `[tokens.NAME]` tables: issuer and type, schedule, label, sink targets, and the checks across tokens
//! (one token per sink target, labels the orphan sweep can tell apart).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_spanned::Spanned;
use toml::de::DeValue;

use super::cluster::ClusterSettings;
use super::diag::Diagnostics;
use super::kinds::{self, IssuerSpec, Kinds, TokenKind};
use super::reader::{wrong_type, TableReader};
use super::timing::read_schedule;
use super::{
    check_name, IssuerConfig, Named, Schedule, SinkConfig, SinkTarget, Target, TokenPolicy,
};

/// What every token table is read against.
pub(super) struct TokensContext<'a> {
    pub issuers: &'a Named<IssuerConfig>,
    pub sinks: &'a Named<SinkConfig>,
    pub kinds: &'a Kinds,
    /// `Some` with a `[cluster]` table (`Some(None)`: the table was invalid, already reported).
    pub cluster: Option<Option<&'a ClusterSettings>>,
}

/// Reads `[tokens.*]` from one document or from several slices of one (`chunks`), keeping what the checks across
/// tokens need between them.
#[derive(Default)]
pub(super) struct TokensReader {
    pub out: BTreeMap<Arc<str>, Arc<TokenPolicy>>,
    /// Which token already writes to a sink target, for the duplicate check.
    targets: HashMap<SinkTarget, String>,
    /// Which token already uses a label in a sweep scope (issuer kind, scope), for the collision check.
    labels: HashMap<(&'static str, String, String), String>,
    /// Each issuer's address as one spelling (`label_scope`), worked out once per issuer.
    addresses: HashMap<String, String>,
    shared: Shared,
}

/// The schedules and notify lists tokens can share (one copy each instead of one per token).
#[derive(Default)]
struct Shared {
    /// Issuer and sink names: a handful, each named by thousands of tokens.
    names: std::collections::HashSet<Arc<str>>,
    schedules: HashMap<ScheduleKey, Arc<Schedule>>,
    /// The distinct `notify` lists without actions (a handful: they differ only in their events).
    no_actions: Vec<Arc<super::notify::Notify>>,
}

/// A schedule without a maintenance window, as a hashable value (every other field).
type ScheduleKey = (
    [Option<std::time::Duration>; 4],
    [std::time::Duration; 2],
    [bool; 2],
);

impl Shared {
    fn name(&mut self, name: &mut Arc<str>) {
        match self.names.get(name) {
            Some(shared) => *name = shared.clone(),
            None => {
                self.names.insert(name.clone());
            }
        }
    }

    fn share(&mut self, token: &mut TokenPolicy) {
        self.name(&mut token.issuer);
        for st in &mut token.sinks {
            self.name(&mut st.sink);
        }
        let s = &token.schedule;
        if s.window.is_none() {
            let key = (
                [s.lifetime, s.rotate_before, s.every, s.min_validity],
                [s.jitter, s.grace],
                [s.manual, s.revoke_after_use],
            );
            token.schedule = self
                .schedules
                .entry(key)
                .or_insert_with(|| token.schedule.clone())
                .clone();
        }
        if token.notify.actions.is_empty() {
            // Equal, not merely action-less: `notify = []` may still name its events, and a reload compares
            // policies by value.
            match self.no_actions.iter().find(|n| **n == token.notify) {
                Some(shared) => token.notify = shared.clone(),
                None => self.no_actions.push(token.notify.clone()),
            }
        }
    }
}

impl TokensReader {
    pub(super) fn read(
        &mut self,
        root: &mut TableReader,
        d: &mut Diagnostics,
        ctx: &TokensContext,
    ) {
        let TokensContext {
            issuers,
            sinks,
            kinds,
            cluster,
        } = *ctx;
        let Some(section) = root.opt_table(d, "tokens") else {
            return;
        };
        let (out, targets, labels) = (&mut self.out, &mut self.targets, &mut self.labels);
        let label_keys: Vec<&'static str> = kinds.issuers.iter().map(|k| k.label_key()).collect();
        for (name, value) in section.entries() {
            let Some(table) = value.get_ref().as_table() else {
                wrong_type(d, value, &format!("`tokens.{}`", name.get_ref()), "a table");
                continue;
            };
            let named_ok = check_name(d, &name, "tokens");
            let mut t =
                TableReader::new(format!("[tokens.{}]", name.get_ref()), name.span(), table);
            let label_span = label_keys.iter().find_map(|k| t.get_span(k));
            let read = read_token(&mut t, d, name.get_ref(), issuers, sinks, targets, kinds);
            if let Some((token, spec)) = read {
                let local = |st: &SinkTarget| {
                    sinks
                        .get(&*st.sink)
                        .and_then(|(_, cfg)| cfg.as_ref())
                        .is_some_and(|cfg| cfg.spec.is_local())
                };
                if let Some(Some(c)) = cluster {
                    // The lease and the shared journal live under `path` in the store: a record there would clobber
                    // them, or they it.
                    let under = |st: &SinkTarget| {
                        *st.sink == *c.store
                            && matches!(&st.target, Target::Path(p)
                            if p.trim_matches('/') == c.path || p.trim_matches('/').starts_with(&format!("{}/", c.path)))
                    };
                    if let Some(st) = token.sinks.iter().find(|st| under(st)) {
                        d.push(
                        name.span(),
                        format!(
                            "[tokens.{}] writes to {st}, under the [cluster] path \"{}\" where the lease and the shared journal live; choose another path",
                            name.get_ref(),
                            c.path
                        ),
                    );
                    }
                }
                let shared_record = |st: &SinkTarget| !local(st) && !st.target.is_delivery();
                if cluster.is_some() && !token.sinks.iter().any(shared_record) {
                    d.push(
                    name.span(),
                    format!(
                        "[tokens.{}] keeps its record only in `file` sinks, which every instance keeps on its own disk: with [cluster] a token needs a shared record sink (vault or aws) that standbys copy from",
                        name.get_ref()
                    ),
                );
                }
                if let Some(scope) = label_scope(&token, issuers, &mut self.addresses) {
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
                    let mut token = token;
                    self.shared.share(&mut token);
                    out.insert(token.name.clone(), Arc::new(token));
                }
            }
            t.finish(d);
        }
    }
}

/// Where a token's labels must be unique for the orphan sweep to tell tokens apart (SPEC §5.11): the resource
/// whose token list the sweep reads, at the issuer's address (two issuer tables may point at the same service),
/// for the types that are swept (singletons are replaced in place and never swept).
fn label_scope(
    token: &TokenPolicy,
    issuers: &Named<IssuerConfig>,
    addresses: &mut HashMap<String, String>,
) -> Option<String> {
    let issuer = issuers.get(&*token.issuer)?.1.as_ref()?;
    if let Some(at) = addresses.get(&*token.issuer) {
        return token.kind.label_scope(at);
    }
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
    let scope = token.kind.label_scope(&at);
    addresses.insert(token.issuer.to_string(), at);
    scope
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
    if let (Some(kind), Some(ty)) = (&kind, &type_key) {
        refuse_other_types_keys(t, d, kinds, kind, ty);
    }
    check_kind_keys(t, d, kinds);
    let schedule = read_schedule(t, d, kind.as_ref(), spec);
    let label = read_label(t, d, name, spec, kinds);
    let sink_targets = read_token_sinks(t, d, name, sinks, targets);
    let notify = super::notify::read_notify(t, d);
    let token = TokenPolicy {
        name: name.into(),
        issuer: issuer_key?.into_inner().into(),
        kind: kind?,
        schedule: Arc::new(schedule?),
        label: label?,
        sinks: sink_targets?,
        notify: Arc::new(notify?),
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

pub(super) fn known_list(known: &[&str]) -> String {
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

/// A type-specific key the token's type did not read belongs to another type or kind: refused, so that
/// `revoke_after_use` on a team token or `team_id` on a Pulumi token does not pass for a setting that works.
fn refuse_other_types_keys(
    t: &mut TableReader,
    d: &mut Diagnostics,
    kinds: &Kinds,
    kind: &TokenKind,
    ty: &Spanned<String>,
) {
    let mut seen: Vec<&str> = Vec::new();
    for spec in &kinds.issuers {
        for (key, _) in spec.type_keys() {
            if seen.contains(key) || t.used(key) || !t.has(key) {
                continue;
            }
            seen.push(key);
            let span = t.get_span(key).unwrap_or_else(|| ty.span());
            d.push(
                span,
                format!(
                    "`{key}` in {} does not apply to tokens of `type = \"{}\"`",
                    t.name,
                    kind.type_name()
                ),
            );
        }
    }
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
    // Exactly as many as listed: a grown vector keeps room for four (~300 bytes a token at 100,000 tokens).
    let mut out = Vec::with_capacity(items.len());
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
        let Some(sink) = r.req_str(d, "sink") else {
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
            // Its other keys depend on the sink's kind: not reported as unknown.
            ok = false;
            continue;
        };
        let Some(cfg) = cfg else {
            ok = false;
            continue;
        };
        let target = cfg.spec.read_target(sink.get_ref(), token, &mut r, d);
        r.finish(d);
        let Some(target) = target else {
            ok = false;
            continue;
        };
        if let Err(why) = cfg.spec.check_target(&target) {
            d.push(item.span(), why);
            ok = false;
            continue;
        }
        let st = SinkTarget {
            sink: sink.get_ref().as_str().into(),
            target,
        };
        let identity = SinkTarget {
            sink: cfg
                .spec
                .place(cfg.settings.as_ref())
                .map_or_else(|| st.sink.clone(), Into::into),
            target: st.target.identity(),
        };
        if let Some(other) = targets.get(&identity) {
            d.push(
                item.span(),
                format!(
                    "sink target {st} is already written by token \"{other}\"; each target holds one token"
                ),
            );
            ok = false;
            continue;
        }
        targets.insert(identity, token.to_string());
        out.push(st);
    }
    if ok && out.iter().all(|st| st.target.is_delivery()) {
        // SPEC §11: the daemon learns a token's state from its records; a delivery target holds only the value.
        d.push(
            v.span(),
            format!(
                "{} has only delivery targets: a token needs at least one record sink (vault, aws-secretsmanager, or a file in the default format) from which the daemon learns its state",
                t.name
            ),
        );
        return None;
    }
    ok.then_some(out)
}
