//! Readers for the values every table shares (addresses, paths, secret references, targets), used by the policy
//! and by each kind's own table reader.

use std::path::PathBuf;

use serde_spanned::Spanned;
use toml::de::DeValue;

use super::diag::Diagnostics;
use super::reader::{wrong_type, TableReader};
use super::{SecretRef, Target};

pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.parse::<std::net::IpAddr>()
        .map(|ip| ip.is_loopback())
        .unwrap_or(false)
}

/// SPEC §5.6: `https://` everywhere, plain `http://` only to loopback addresses.
pub fn check_address(d: &mut Diagnostics, key: &str, table: &str, v: &Spanned<String>) -> bool {
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

pub fn read_path(t: &mut TableReader, d: &mut Diagnostics, key: &'static str) -> Option<PathBuf> {
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
pub fn no_nul(d: &mut Diagnostics, v: &Spanned<String>, what: &str) -> bool {
    if v.get_ref().contains('\0') {
        d.push(v.span(), format!("{what} contains a NUL character"));
        return false;
    }
    true
}

/// Reads a secret reference; an inline string gets a message saying what to write instead.
pub fn read_secret_ref(
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
pub fn read_target(r: &mut TableReader, d: &mut Diagnostics) -> Option<Target> {
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

/// A required key holding a non-empty string.
pub fn required(t: &mut TableReader, d: &mut Diagnostics, key: &'static str) -> Option<String> {
    let v = t.req_str(d, key)?;
    non_empty(d, v, key)
}

pub fn non_empty(d: &mut Diagnostics, v: Spanned<String>, key: &str) -> Option<String> {
    if v.get_ref().trim().is_empty() {
        d.push(v.span(), format!("`{key}` must not be empty"));
        None
    } else {
        Some(v.into_inner())
    }
}

/// A secret reference read before any sink exists (a sink's own credential): `env` or `file` only.
pub fn read_local_secret_ref(
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
