//! Reading a large policy a slice at a time. `toml` builds its whole syntax tree, and before it a vector of every
//! lexer token and one of parser events: about 40 bytes of heap per byte of policy at its peak (61 MB for the
//! 1.5 MB policy of 10,000 tokens, BENCHMARKS.md), which glibc then keeps. A policy is mostly `[tokens.NAME]`
//! sections, each read on its own, so the document is cut at token boundaries and each slice is parsed, read and
//! dropped before the next: the peak is one slice's.
//!
//! Each slice is parsed as its own document; the problems found while reading it are moved by the slice's offset,
//! so errors keep their `file:line:col` (what is read keeps no span). The cut is made only where it cannot change
//! what the document means: between sections of different tokens, with every other table before the first token
//! section, every section of a token in one slice, and no root key under `tokens`. Anything else (a `[tokens]`
//! table, a token's sections apart, a header this scan does not understand) is parsed whole, as before.

use std::collections::HashSet;
use std::ops::Range;

/// Below this size a policy is parsed whole (the peak is small anyway: under 3 MB).
pub(super) const MIN_SPLIT: usize = 64 << 10;

/// The size of a slice (a token larger than this is a slice of its own). Small, so that each slice's lexer and
/// event vectors stay under glibc's 128 KiB mmap threshold: they are then served from the heap and reused by the
/// next slice. Slices of an eighth of the file (190 KiB at 10,000 tokens) made vectors of megabytes, each mapped and
/// unmapped, and each unmap raised glibc's dynamic mmap threshold, so the next slices' vectors grew the heap
/// instead, which the daemon kept for good. `check` of 10,000 tokens peaked at 26.7 MB RSS with them and 21.1 MB
/// with 8 KiB slices, no slower (BENCHMARKS.md, History, row t).
pub(super) const SLICE: usize = 8 << 10;

/// Where to cut `source`: the end of the head (everything before the first token section) and the slices of token
/// sections, each about `target` bytes and holding whole tokens. `None`: parse it whole.
pub(super) fn split(source: &str, target: usize) -> Option<(usize, Vec<Range<usize>>)> {
    let mut scan = Scan::default();
    let mut head_end = None;
    let mut slices: Vec<Range<usize>> = Vec::new();
    let mut slice_start = 0;
    let mut current: Option<String> = None;
    let mut finished: HashSet<String> = HashSet::new();
    let mut at = 0;
    for line in source.split_inclusive('\n') {
        let start = at;
        at += line.len();
        if scan.depth == 0 && scan.string.is_none() {
            let trimmed = line.trim_start_matches([' ', '\t']);
            if trimmed.starts_with('[') {
                match header(trimmed)? {
                    Header::Token(name) => {
                        if head_end.is_none() {
                            head_end = Some(start);
                            slice_start = start;
                        }
                        if current.as_deref() != Some(name.as_str()) {
                            if let Some(prev) = current.take() {
                                finished.insert(prev);
                                if start - slice_start >= target {
                                    slices.push(slice_start..start);
                                    slice_start = start;
                                }
                            }
                            if finished.contains(&name) {
                                return None; // a token's sections apart
                            }
                            current = Some(name);
                        }
                        continue;
                    }
                    Header::Other if head_end.is_some() => return None,
                    Header::Other => continue,
                }
            }
        }
        scan.line(line)?;
    }
    if scan.string.is_some() || scan.depth != 0 {
        return None; // unterminated: let the parser say where
    }
    let head_end = head_end?;
    slices.push(slice_start..source.len());
    Some((head_end, slices))
}

enum Header {
    /// `[tokens.NAME…]` or `[[tokens.NAME…]]`.
    Token(String),
    Other,
}

/// The key path of a table header line; `None` where this scan is not sure (quoted keys with escapes, a `[tokens]`
/// table itself).
fn header(line: &str) -> Option<Header> {
    let inner = line.strip_prefix("[[").or_else(|| line.strip_prefix('['))?;
    let mut keys = Vec::new();
    let mut rest = inner.trim_start_matches([' ', '\t']);
    loop {
        let (key, after) = if let Some(r) = rest.strip_prefix('"') {
            let end = r.find('"')?;
            if r[..end].contains('\\') {
                return None;
            }
            (&r[..end], &r[end + 1..])
        } else if let Some(r) = rest.strip_prefix('\'') {
            let end = r.find('\'')?;
            (&r[..end], &r[end + 1..])
        } else {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
                .unwrap_or(rest.len());
            if end == 0 {
                return None;
            }
            (&rest[..end], &rest[end..])
        };
        keys.push(key);
        rest = after.trim_start_matches([' ', '\t']);
        match rest.strip_prefix('.') {
            Some(r) => rest = r.trim_start_matches([' ', '\t']),
            None => break,
        }
    }
    if !rest.starts_with(']') {
        return None;
    }
    match keys.as_slice() {
        ["tokens"] => None,
        ["tokens", name, ..] => Some(Header::Token(name.to_string())),
        _ => Some(Header::Other),
    }
}

/// Just enough of TOML's lexical structure to know whether a line starts outside every string, array and inline
/// table (where a `[` at its start opens a table header).
#[derive(Default)]
struct Scan {
    /// Inside a multi-line string: its delimiter.
    string: Option<&'static str>,
    /// Open `[` and `{` of values.
    depth: usize,
}

impl Scan {
    /// `None`: something this scan does not follow (a closing bracket with none open).
    fn line(&mut self, line: &str) -> Option<()> {
        let b = line.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if let Some(delim) = self.string {
                let d = delim.as_bytes();
                if delim == "\"\"\"" && b[i] == b'\\' {
                    i += 2;
                    continue;
                }
                if b[i..].starts_with(d) {
                    // A closing delimiter may carry up to two more quotes of content before it.
                    let mut end = i + 3;
                    while end < b.len() && b[end] == d[0] && end < i + 5 {
                        end += 1;
                    }
                    self.string = None;
                    i = end;
                } else {
                    i += 1;
                }
                continue;
            }
            match b[i] {
                b'#' => return Some(()),
                b'"' | b'\'' => {
                    let q = b[i];
                    if b[i..].starts_with(if q == b'"' { b"\"\"\"" } else { b"'''" }) {
                        self.string = Some(if q == b'"' { "\"\"\"" } else { "'''" });
                        i += 3;
                        continue;
                    }
                    i += 1;
                    while i < b.len() && b[i] != q && b[i] != b'\n' {
                        if q == b'"' && b[i] == b'\\' {
                            i += 1;
                        }
                        i += 1;
                    }
                    i += 1;
                }
                b'[' | b'{' => {
                    self.depth += 1;
                    i += 1;
                }
                b']' | b'}' => {
                    self.depth = self.depth.checked_sub(1)?;
                    i += 1;
                }
                _ => i += 1,
            }
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(n: usize) -> String {
        let mut s = String::from("[daemon]\nstate_dir = \"/x\"\n\n[sinks.v]\nkind = \"file\"\n\n");
        for i in 0..n {
            s.push_str(&format!(
                "[tokens.\"t{i}\"]\nissuer = \"a\"\nsinks = [\n  {{ sink = \"v\", path = \"p{i}\" }},\n]\n\
                 [tokens.\"t{i}\".schedule]\nevery = \"1h\"\n\n"
            ));
        }
        s
    }

    #[test]
    fn slices_hold_whole_tokens_and_cover_the_document() {
        let src = tokens(50);
        let (head, slices) = split(&src, 500).unwrap();
        assert!(src[..head].contains("[sinks.v]") && !src[..head].contains("tokens"));
        assert!(slices.len() > 5, "{}", slices.len());
        assert_eq!(slices[0].start, head);
        assert_eq!(slices.last().unwrap().end, src.len());
        for w in slices.windows(2) {
            assert_eq!(w[0].end, w[1].start);
        }
        for s in &slices {
            assert!(
                src[s.clone()].starts_with("[tokens.\""),
                "{:?}",
                &src[s.clone()][..20]
            );
        }
        for i in 0..50 {
            let holds = |s: &Range<usize>| src[s.clone()].contains(&format!("[tokens.\"t{i}\"]\n"));
            let slice = slices.iter().find(|s| holds(s)).unwrap();
            assert!(
                src[slice.clone()].contains(&format!("[tokens.\"t{i}\".schedule]")),
                "both sections of t{i} in one slice"
            );
        }
    }

    #[test]
    fn shapes_it_cannot_cut_safely_are_parsed_whole() {
        let base = tokens(3);
        for bad in [
            format!("{base}[sinks.late]\nkind = \"file\"\n"),
            format!("{base}[tokens.\"t0\".extra]\nx = 1\n"),
            format!("[tokens]\n{base}"),
            format!("{base}[tokens.\"a\\u0041\"]\nx = 1\n"),
            format!("{base}x = \"\"\"\n[tokens.y]\n"),
            format!("{base}x = ]\n"),
        ] {
            assert!(split(&bad, 10).is_none(), "{bad}");
        }
        assert!(
            split("[daemon]\n", 10).is_none(),
            "no tokens: nothing to cut"
        );
    }

    #[test]
    fn headers_inside_strings_and_arrays_are_not_headers() {
        let src = "[daemon]\nx = \"\"\"\n[tokens.fake]\n\"\"\"\ny = [\n[1, 2],\n]\nz = '''\n[sinks.q]'''\n\
                   [tokens.a]\nissuer = \"i\" # [tokens.b]\n[tokens.b]\nissuer = \"[x]\"\n";
        let (head, slices) = split(src, 1).unwrap();
        assert_eq!(&src[head..head + 10], "[tokens.a]");
        assert_eq!(slices.len(), 2);
        assert!(src[slices[1].clone()].starts_with("[tokens.b]"));
    }
}
