//! The schedule keys of a token table (SPEC §3): lifetime, rotate_before, every, jitter, grace, the maintenance
//! window and min_validity, with their defaults and the rules between them.

use std::time::Duration;

use serde_spanned::Spanned;

use super::diag::Diagnostics;
use super::duration;
use super::kinds::{IssuerSpec, TokenKind};
use super::reader::TableReader;

const DEFAULT_LIFETIME: Duration = Duration::from_secs(30 * 86_400);
const DEFAULT_GRACE: Duration = Duration::from_secs(3600);

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
    /// `manual = true`: watched (records, metrics, readiness) but rotated only by `token-rotator rotate NAME`.
    pub manual: bool,
    /// `revoke_after_use = true`: the old token goes as soon as its successor is used (or when `grace` ends).
    pub revoke_after_use: bool,
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

pub(super) fn read_schedule(
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
    let manual = t
        .opt_bool(d, "manual")
        .map(Spanned::into_inner)
        .unwrap_or(false);
    let revoke_after_use = t.opt_bool(d, "revoke_after_use");
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
    if let (Some(k), Some(r)) = (kind, &revoke_after_use) {
        if !k.shows_last_use() {
            d.push(
                r.span(),
                format!(
                    "`revoke_after_use` in {} does not apply to tokens of `type = \"{}\"`{}",
                    t.name,
                    k.type_name(),
                    if k.is_singleton() {
                        " (the issuer replaces the old token when the new one is created)"
                    } else {
                        " (the issuer does not show when its tokens were last used)"
                    }
                ),
            );
            ok = false;
        }
    }
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
        manual,
        revoke_after_use: revoke_after_use.is_some_and(|r| *r.get_ref()),
    })
}
