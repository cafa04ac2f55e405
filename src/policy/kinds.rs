//! The seams through which issuer and sink kinds bring their own configuration to the policy. Each kind's module
//! (`issuer/tfe`, `sink/vault`, …) implements [`IssuerSpec`] or [`SinkSpec`] next to the code that uses the
//! values; the policy only walks the file, reports problems and holds what the kinds read. A new kind is one new
//! module and one line in its family's list (`issuer::KINDS`, `sink::KINDS`).

use std::any::Any;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use super::diag::Diagnostics;
use super::reader::TableReader;
use super::Target;

/// What a policy token regenerates: one type of one issuer kind (TFC `team`, Pulumi `organization`, …), with its
/// type-specific keys. The rotation asks it how tokens of the type behave; the issuer downcasts it to its own.
pub trait TokenType: fmt::Debug + Send + Sync + 'static {
    /// The `type` key as written in the policy and in sink records.
    fn type_name(&self) -> &'static str;
    /// Replaced by the issuer at create time: the old token dies when the new one is minted.
    fn is_singleton(&self) -> bool {
        false
    }
    /// Tokens of this type carry an expiry.
    fn expires(&self) -> bool {
        true
    }
    /// A token of this type can call the issuer's identity probe.
    fn can_prove_itself(&self) -> bool {
        true
    }
    /// The issuer shows when a token of this type was last used (TFC `last-used-at`, Pulumi `lastUsed`), so
    /// `revoke_after_use` can work.
    fn shows_last_use(&self) -> bool {
        false
    }
    /// Where this type's labels must be unique for the orphan sweep (SPEC §5.11) at the issuer's normalised
    /// address (`scheme://host:port`); `None` when tokens of the type are never swept (singletons).
    fn label_scope(&self, address: &str) -> Option<String>;
    fn as_any(&self) -> &dyn Any;
    /// Same type, same keys.
    fn same_as(&self, other: &dyn TokenType) -> bool;
}

/// A policy token's [`TokenType`], shared (cheap to clone), compared by value.
#[derive(Clone)]
pub struct TokenKind(Arc<dyn TokenType>);

impl TokenKind {
    pub fn new(t: impl TokenType) -> Self {
        TokenKind(Arc::new(t))
    }

    /// The issuer's own type, when this token is of its kind.
    pub fn downcast<T: TokenType>(&self) -> Option<&T> {
        self.0.as_any().downcast_ref()
    }
}

impl Deref for TokenKind {
    type Target = dyn TokenType;

    fn deref(&self) -> &Self::Target {
        self.0.as_ref()
    }
}

impl fmt::Debug for TokenKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.0.as_ref(), f)
    }
}

impl PartialEq for TokenKind {
    fn eq(&self, other: &Self) -> bool {
        self.0.same_as(other.0.as_ref())
    }
}

impl Eq for TokenKind {}

/// `same_as` for a type that is `PartialEq`.
pub fn same_as<T: TokenType + PartialEq>(this: &T, other: &dyn TokenType) -> bool {
    other.as_any().downcast_ref::<T>() == Some(this)
}

/// The value type of a type-specific key (checked whatever the token's `type`, so a wrong `type` never hides a
/// wrong-typed key).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyType {
    Str,
    Bool,
}

/// An issuer kind (`kind = "tfe"`): its tables' defaults, its token types and their keys, its labels.
pub trait IssuerSpec: Sync + 'static {
    /// The `kind` value.
    fn name(&self) -> &'static str;
    /// How operators call the service in messages ("TFC", "Pulumi").
    fn title(&self) -> &'static str;
    fn default_address(&self) -> &'static str;
    /// The `type`s this kind issues.
    fn types(&self) -> &'static [&'static str];
    /// Every type-specific key of this kind, with its value type.
    fn type_keys(&self) -> &'static [(&'static str, KeyType)];
    /// Reads the keys of a token of type `ty` (one of `types()`); every problem reported, located.
    fn read_type(&self, ty: &str, t: &mut TableReader, d: &mut Diagnostics) -> Option<TokenKind>;
    /// The key that labels this kind's tokens at the issuer (TFC `description`, Pulumi `name_prefix`).
    fn label_key(&self) -> &'static str;
    /// Reads the label key, with its default for a token named `token_name`.
    fn read_label(
        &self,
        t: &mut TableReader,
        d: &mut Diagnostics,
        token_name: &str,
    ) -> Option<String>;
    /// How much of a label the orphan sweep compares (Pulumi: the first 25 characters).
    fn sweep_label(&self, label: &str) -> String {
        label.to_string()
    }
    /// Rules of the issuer on `lifetime` (Pulumi: at most two years).
    fn check_lifetime(&self, _lifetime: Duration) -> Result<(), String> {
        Ok(())
    }
}

/// How a sink kind names its targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetKey {
    /// `path = "…"` (Vault, files).
    Path,
    /// `secret_id = "…"` (AWS Secrets Manager).
    SecretId,
    /// Keys of the kind's own (delivery targets: `workspace_id` + `key`, `repository` + `name`, …).
    Own,
}

impl TargetKey {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKey::Path => "path",
            TargetKey::SecretId => "secret_id",
            TargetKey::Own => "its own target keys",
        }
    }

    pub fn fits(self, target: &Target) -> bool {
        matches!(
            (self, target),
            (TargetKey::Path, Target::Path(_)) | (TargetKey::SecretId, Target::SecretId(_))
        )
    }
}

/// A sink's settings as its kind read them from its table; the sink module downcasts them to its own.
pub trait SinkSettings: fmt::Debug + Send + Sync + 'static {
    fn as_any(&self) -> &dyn Any;
}

/// A sink kind (`kind = "vault"`): its table and its targets.
pub trait SinkSpec: Sync + 'static {
    /// The `kind` value.
    fn name(&self) -> &'static str;
    fn target_key(&self) -> TargetKey;
    /// Every key of this kind's table (a table whose `kind` is wrong does not get them reported as unknown).
    fn keys(&self) -> &'static [&'static str];
    /// Reads the table; every problem reported, located.
    fn read(&self, t: &mut TableReader, d: &mut Diagnostics) -> Option<Arc<dyn SinkSettings>>;
    /// Reads a token's target in a sink of this kind from its `sinks` entry (`sink` already read): by default
    /// the kind's [`TargetKey`]; a delivery kind reads its own keys. Every problem reported, located.
    fn read_target(
        &self,
        sink: &str,
        _token: &str,
        r: &mut TableReader,
        d: &mut Diagnostics,
    ) -> Option<Target> {
        read_keyed_target(self.name(), self.target_key(), sink, r, d)
    }
    /// Rules on a target beyond its key (files: relative, no `..`).
    fn check_target(&self, _target: &Target) -> Result<(), String> {
        Ok(())
    }
    /// Where a sink of this kind writes, when two sink tables can reach one place (two `github-actions` tables on
    /// one GitHub): targets of sinks with the same place are one target for the "one token per target" rule.
    /// `None`: the sink's name.
    fn place(&self, _settings: &dyn SinkSettings) -> Option<String> {
        None
    }
    /// Every target of this kind is a delivery target (SPEC §11): written, never read for a record, so it can
    /// neither hold a credential (`{ sink = … }`) nor be the only place a token's state is kept.
    fn delivers(&self) -> bool {
        false
    }
    /// The issuer whose address, credential and pacing this sink borrows (`issuer = "…"`), and the issuer kind it
    /// must be of.
    fn borrowed_issuer(&self, _settings: &dyn SinkSettings) -> Option<(String, &'static str)> {
        None
    }
    /// Whether a sink of this kind can hold the cluster lease and shared journal (`[cluster] store`, SPEC §8):
    /// `Err` says why not.
    fn coordination(&self, _settings: &dyn SinkSettings) -> Result<(), String> {
        Err(format!(
            "a `{}` sink cannot hold the cluster lease; use a `vault` sink on a KV v2 mount",
            self.name()
        ))
    }
    /// Whether each instance has its own copy of this sink (files): in cluster mode, standbys keep it equal to the
    /// shared record, and a token needs at least one target that is not local.
    fn is_local(&self) -> bool {
        false
    }
}

/// The kinds a policy may use: the registries of `issuer` and `sink`, handed to [`super::load`].
#[derive(Clone)]
pub struct Kinds {
    pub issuers: Vec<&'static dyn IssuerSpec>,
    pub sinks: Vec<&'static dyn SinkSpec>,
}

impl Kinds {
    pub fn issuer(&self, name: &str) -> Option<&'static dyn IssuerSpec> {
        self.issuers.iter().copied().find(|k| k.name() == name)
    }

    pub fn sink(&self, name: &str) -> Option<&'static dyn SinkSpec> {
        self.sinks.iter().copied().find(|k| k.name() == name)
    }
}

/// A target named by `key` (`path` or `secret_id`) in sink `sink` of kind `kind`.
pub fn read_keyed_target(
    kind: &str,
    key: TargetKey,
    sink: &str,
    r: &mut TableReader,
    d: &mut Diagnostics,
) -> Option<Target> {
    let target = super::fields::read_target(r, d)?;
    if !key.fits(&target) {
        d.push(
            r.span.clone(),
            format!("sink \"{sink}\" (kind \"{kind}\") takes `{}`", key.as_str()),
        );
        return None;
    }
    Some(target)
}
