//! Text that comes from outside (issuer and secret-store error bodies, their messages) is untrusted: a server may
//! echo the credential it was sent, or a token, into its error detail (SPEC §5.13). Every such text passes through
//! [`outside_text`] before it becomes part of one of our messages, so no log line, `/readyz`, `status`, `plan` or CLI
//! output can show it.
//!
//! What is masked: every secret the caller knows was involved (the request's bearer and the issuer's credential
//! for issuers; the store's token and the value being written for sinks), and anything shaped like a credential (HCP Terraform `….atlasv1.…`, Pulumi
//! `pul-…`, Vault/OpenBao `hvs.…`/`s.…`, long random runs). Control characters become spaces (no forged log
//! lines), and the text is cut to a bounded length.

use crate::secret::{ExposeSecret, SecretString};

/// Longest text kept from outside, in characters.
pub const MAX_CHARS: usize = 300;
pub const MASK: &str = "[REDACTED]";

/// `raw` made safe to show: known secrets and credential-shaped runs masked, control characters removed,
/// whitespace collapsed, at most [`MAX_CHARS`] characters.
pub fn outside_text(raw: &str, known: &[&SecretString]) -> String {
    let mut text: String = raw
        .chars()
        .map(|c| if is_unsafe_char(c) { ' ' } else { c })
        .collect();
    for secret in known {
        let s = secret.expose_secret();
        // A very short "secret" would mask ordinary words; credentials are never that short.
        if s.len() >= 4 && text.contains(s) {
            text = text.replace(s, MASK);
        }
    }
    let text = mask_shapes(&text);
    let mut text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.chars().count() > MAX_CHARS {
        text = text.chars().take(MAX_CHARS).collect();
        text.push('…');
    }
    text
}

/// Control characters (newlines would forge log lines), Unicode line separators and bidirectional overrides.
fn is_unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// Characters a credential is made of (base64, base64url, dots and dashes).
fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+' | '/' | '=' | '~')
}

/// Whether one maximal run of token characters looks like a credential.
fn looks_like_credential(run: &str) -> bool {
    let len = run.len();
    // HCP Terraform / TFE: `<14>.atlasv1.<67>` (token-apis.md A.0).
    if run.contains(".atlasv1.") {
        return true;
    }
    // Pulumi: `pul-` + 40 hex (token-apis.md B.3).
    if let Some(i) = run.find("pul-") {
        if run[i + 4..]
            .chars()
            .take_while(char::is_ascii_alphanumeric)
            .count()
            >= 20
        {
            return true;
        }
    }
    // Vault / OpenBao service, batch and recovery tokens: `hvs.…`, `hvb.…`, `hvr.…`, `s.…`, `b.…`, `r.…`.
    for prefix in ["hvs.", "hvb.", "hvr.", "s.", "b.", "r."] {
        if let Some(rest) = run.strip_prefix(prefix) {
            if rest.len() >= 20 {
                return true;
            }
        }
    }
    // Anything long that mixes letters and digits: a random secret rather than a word or a path.
    len >= 32
        && run.chars().any(|c| c.is_ascii_digit())
        && run.chars().any(|c| c.is_ascii_alphabetic())
}

fn mask_shapes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut run_start: Option<usize> = None;
    let flush = |out: &mut String, run: &str| {
        if looks_like_credential(run) {
            out.push_str(MASK);
        } else {
            out.push_str(run);
        }
    };
    for (i, c) in text.char_indices() {
        if is_token_char(c) {
            run_start.get_or_insert(i);
        } else {
            if let Some(s) = run_start.take() {
                flush(&mut out, &text[s..i]);
            }
            out.push(c);
        }
    }
    if let Some(s) = run_start {
        flush(&mut out, &text[s..]);
    }
    out
}

/// An error and each of its causes on one line (`error: cause: cause…`). Transport errors say little at the top
/// ("builder error", "error sending request"); the reason is in the chain. Text from a server is not in these
/// (reqwest's and rustls' causes are our libraries' own words); a caller that adds a server's text still passes the
/// whole through [`outside_text`].
pub fn error_chain(e: &dyn std::error::Error) -> String {
    format!("{e}{}", causes(e))
}

/// `": cause: cause…"` for each cause of `e` (empty when it has none).
pub fn causes(e: &dyn std::error::Error) -> String {
    let mut out = String::new();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> SecretString {
        SecretString::from(s.to_string())
    }

    #[test]
    fn known_secrets_and_credential_shapes_are_masked() {
        let bearer = secret("root-token-for-tests");
        let tfc = "ZgqYdzuvlv8Iyg.atlasv1.6nV7t1OyFls341jo1xdZTP72fN0uu9VL55ozqzekfmToGFbhoFvvygIRy2mwVAXomOE";
        let pul = "pul-0123456789abcdef0123456789abcdef01234567";
        let raw = format!(
            "token root-token-for-tests is bad; also {tfc}, \"{pul}\", hvs.CAESIJ1a2b3c4d5e6f7g8h9i0jk and s.AbCdEfGhIjKlMnOpQrStUvWx"
        );
        let out = outside_text(&raw, &[&bearer]);
        for leak in ["root-token-for-tests", tfc, pul, "hvs.CAESIJ", "s.AbCdEfGh"] {
            assert!(!out.contains(leak), "{leak} leaked: {out}");
        }
        assert!(out.starts_with("token [REDACTED] is bad"), "{out}");
    }

    #[test]
    fn ordinary_text_ids_and_paths_survive() {
        let raw = "Validation failed: Description has already been taken (team-Y7RyjccPVBKVEdp7, at-4cLZs1nU9ZfnXz2Q, secret/data/ci/tfc-org)";
        assert_eq!(outside_text(raw, &[]), raw);
    }

    #[test]
    fn control_characters_cannot_forge_log_lines_and_length_is_bounded() {
        let out = outside_text("bad\nINFO forged line\r\u{202e}x\ty", &[]);
        assert_eq!(out, "bad INFO forged line x y");
        let long = "word ".repeat(200);
        let out = outside_text(&long, &[]);
        assert_eq!(out.chars().count(), MAX_CHARS + 1);
        assert!(out.ends_with('…'));
    }

    #[test]
    fn short_known_values_do_not_mask_words() {
        assert_eq!(outside_text("not found", &[&secret("no")]), "not found");
    }
}
