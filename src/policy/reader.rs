//! A typed walk over toml's spanned document tree that collects every problem instead of stopping at the first.
//!
//! serde's derive stops at the first error; operators fixing a policy want all of them at once, each located.

use std::ops::Range;
use std::time::Duration;

use serde_spanned::Spanned;
use toml::de::{DeTable, DeValue};

use super::diag::Diagnostics;
use super::duration;

pub type Span = Range<usize>;

/// A table being read: remembers which keys were consumed so that the rest can be reported as unknown.
pub struct TableReader<'a, 'i> {
    /// Human name for messages, e.g. `[tokens.ci-org]`.
    pub name: String,
    /// Where a missing key is reported: the line of the table (its header or inline braces).
    pub span: Span,
    table: &'a DeTable<'i>,
    /// A handful of keys per table: a `Vec` beats a set (10,000 token tables are read at start-up).
    used: Vec<&'static str>,
}

impl<'a, 'i> TableReader<'a, 'i> {
    pub fn new(name: impl Into<String>, span: Span, table: &'a DeTable<'i>) -> Self {
        Self {
            name: name.into(),
            span,
            table,
            used: Vec::new(),
        }
    }

    /// The entries of this table in source order, each with its key span.
    pub fn entries(&self) -> Vec<(Spanned<String>, &'a Spanned<DeValue<'i>>)> {
        let mut entries: Vec<_> = self
            .table
            .iter()
            .map(|(k, v)| (Spanned::new(k.span(), k.get_ref().to_string()), v))
            .collect();
        entries.sort_by_key(|(k, _)| k.span().start);
        entries
    }

    /// Where `key` is written, without reading it.
    pub fn get_span(&self, key: &'static str) -> Option<Span> {
        self.table.get(key).map(|v| v.span())
    }

    pub fn has(&self, key: &'static str) -> bool {
        self.table.get(key).is_some()
    }

    pub fn get(&mut self, key: &'static str) -> Option<&'a Spanned<DeValue<'i>>> {
        self.mark(key);
        self.table.get(key)
    }

    /// Whether a reader already took `key`.
    pub fn used(&self, key: &str) -> bool {
        self.used.contains(&key)
    }

    fn mark(&mut self, key: &'static str) {
        if !self.used.contains(&key) {
            self.used.push(key);
        }
    }

    pub fn missing(&self, d: &mut Diagnostics, key: &'static str, hint: &str) {
        d.push(
            self.span.clone(),
            format!("missing key `{key}` in {}{hint}", self.name),
        );
    }

    pub fn opt_str(&mut self, d: &mut Diagnostics, key: &'static str) -> Option<Spanned<String>> {
        let v = self.get(key)?;
        match v.get_ref().as_str() {
            Some(s) => Some(Spanned::new(v.span(), s.to_string())),
            None => {
                wrong_type(d, v, &format!("`{key}` in {}", self.name), "a string");
                None
            }
        }
    }

    pub fn req_str(&mut self, d: &mut Diagnostics, key: &'static str) -> Option<Spanned<String>> {
        if !self.has(key) {
            self.missing(d, key, "");
            self.mark(key);
            return None;
        }
        self.opt_str(d, key)
    }

    pub fn opt_bool(&mut self, d: &mut Diagnostics, key: &'static str) -> Option<Spanned<bool>> {
        let v = self.get(key)?;
        match v.get_ref().as_bool() {
            Some(b) => Some(Spanned::new(v.span(), b)),
            None => {
                wrong_type(d, v, &format!("`{key}` in {}", self.name), "a boolean");
                None
            }
        }
    }

    /// An integer within `range`.
    pub fn opt_int(
        &mut self,
        d: &mut Diagnostics,
        key: &'static str,
        range: std::ops::RangeInclusive<i64>,
    ) -> Option<Spanned<i64>> {
        let v = self.get(key)?;
        let Some(int) = v.get_ref().as_integer() else {
            wrong_type(d, v, &format!("`{key}` in {}", self.name), "an integer");
            return None;
        };
        match i64::from_str_radix(int.as_str(), int.radix()) {
            Ok(n) if range.contains(&n) => Some(Spanned::new(v.span(), n)),
            _ => {
                d.push(
                    v.span(),
                    format!(
                        "`{key}` in {} must be between {} and {}",
                        self.name,
                        range.start(),
                        range.end()
                    ),
                );
                None
            }
        }
    }

    pub fn opt_duration(
        &mut self,
        d: &mut Diagnostics,
        key: &'static str,
    ) -> Option<Spanned<Duration>> {
        let v = self.get(key)?;
        let Some(text) = v.get_ref().as_str() else {
            wrong_type(
                d,
                v,
                &format!("`{key}` in {}", self.name),
                "a duration string such as \"12h\"",
            );
            return None;
        };
        match duration::parse(text) {
            Ok(dur) => Some(Spanned::new(v.span(), dur)),
            Err(e) => {
                d.push(v.span(), format!("`{key}` in {}: {e}", self.name));
                None
            }
        }
    }

    pub fn opt_table(
        &mut self,
        d: &mut Diagnostics,
        key: &'static str,
    ) -> Option<TableReader<'a, 'i>> {
        let v = self.get(key)?;
        match v.get_ref().as_table() {
            Some(t) => Some(TableReader::new(
                format!("{}.{key}", self.name.trim_end_matches(']')) + "]",
                v.span(),
                t,
            )),
            None => {
                wrong_type(d, v, &format!("`{key}` in {}", self.name), "a table");
                None
            }
        }
    }

    /// Reports every key that no reader method consumed.
    pub fn finish(self, d: &mut Diagnostics) {
        // The sorted list of known keys only when a key is unknown: 10,000 token tables have none.
        let mut known: Option<Vec<&str>> = None;
        for (k, _) in self.table.iter() {
            if !self.used.contains(&k.get_ref().as_ref()) {
                let known = known.get_or_insert_with(|| {
                    let mut known = self.used.clone();
                    known.sort_unstable();
                    known
                });
                let expected = if known.is_empty() {
                    String::new()
                } else {
                    format!("; expected one of: {}", known.join(", "))
                };
                d.push(
                    k.span(),
                    format!("unknown key `{}` in {}{expected}", k.get_ref(), self.name),
                );
            }
        }
    }

    /// Marks keys as known without reading them (so `finish` does not report them).
    pub fn allow(&mut self, keys: &[&'static str]) {
        for k in keys {
            self.mark(k);
        }
    }
}

pub fn wrong_type(d: &mut Diagnostics, v: &Spanned<DeValue<'_>>, what: &str, expected: &str) {
    d.push(
        v.span(),
        format!(
            "{what} must be {expected}, found {}",
            article(v.get_ref().type_str())
        ),
    );
}

fn article(type_name: &str) -> String {
    match type_name.chars().next() {
        Some('a' | 'e' | 'i' | 'o' | 'u') => format!("an {type_name}"),
        _ => format!("a {type_name}"),
    }
}
