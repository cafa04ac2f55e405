//! The layering of ARCHITECTURE.md ("Layers"), checked on the source: which top-level module may use which (a
//! whitelist, so a new arrow is a decision made here, in review), that the arrows form no cycle, and that only the
//! daemon spawns tasks. Test code (`#[cfg(test)]` modules) is left out: a test may reach anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each module and the modules it may use, lowest layer first.
const ALLOWED: &[(&str, &[&str])] = &[
    // Leaves: no module of ours below them.
    ("clock", &[]),
    ("secret", &[]),
    ("redact", &["secret"]),
    ("http", &["redact"]),
    ("record", &["secret"]),
    ("retry", &["clock"]),
    // The policy knows values, not the parts that act on them: never a sink, an issuer or the rotation.
    ("policy", &["secret", "clock"]),
    ("logging", &["policy"]),
    ("manual", &["policy"]),
    ("schedule", &["policy", "record"]),
    ("status", &["record", "schedule"]),
    ("metrics", &["clock", "status"]),
    ("journal", &["clock", "record", "secret"]),
    // Telling consumers: runs one action; never the token value (it gets none).
    ("notify", &["http", "policy", "record", "redact", "secret"]),
    // The plug-ins: a sink never reaches an issuer and the other way round.
    // Delivery sinks (SPEC §11) talk REST through the one client builder and pace like issuers do.
    (
        "sink",
        &[
            "clock", "http", "policy", "record", "redact", "retry", "secret",
        ],
    ),
    (
        "issuer",
        &[
            "clock", "http", "metrics", "policy", "record", "redact", "retry", "secret",
        ],
    ),
    (
        "rotation",
        &[
            "clock", "issuer", "journal", "metrics", "notify", "policy", "record", "redact",
            "retry", "schedule", "secret", "sink", "status",
        ],
    ),
    // Several instances: the lease, the shared journal, the fence in front of issuers and shared sinks.
    (
        "cluster",
        &[
            "clock", "http", "issuer", "journal", "metrics", "policy", "record", "secret", "sink",
            "status",
        ],
    ),
    (
        "daemon",
        &[
            "clock", "cluster", "http", "issuer", "journal", "metrics", "notify", "policy",
            "retry", "rotation", "schedule", "secret", "sink", "status",
        ],
    ),
    ("online", &["daemon", "journal", "policy", "sink"]),
    (
        "commands",
        &["clock", "daemon", "journal", "policy", "record", "status"],
    ),
    (
        "cli",
        &[
            "commands", "daemon", "http", "logging", "manual", "online", "policy",
        ],
    ),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The file without its `#[cfg(test)]` modules (inline ones up to their closing brace, and `mod x;` lines).
fn without_tests(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let next = lines.get(i + 1).map(|l| l.trim()).unwrap_or("");
        let test_module = next.starts_with("mod ") || next.starts_with("pub(crate) mod ");
        if lines[i].trim() == "#[cfg(test)]" && test_module {
            if next.ends_with(';') {
                i += 2;
                continue;
            }
            let mut depth = 0i32;
            let mut j = i + 1;
            while j < lines.len() {
                depth +=
                    lines[j].matches('{').count() as i32 - lines[j].matches('}').count() as i32;
                j += 1;
                if depth <= 0 {
                    break;
                }
            }
            i = j;
            continue;
        }
        out.push(lines[i]);
        i += 1;
    }
    out.join("\n")
}

/// The top-level module a file belongs to (`src/rotation/finish.rs` → `rotation`).
fn module_of(path: &Path) -> Option<String> {
    let rel = path.strip_prefix(src()).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.trim_end_matches(".rs");
    (name != "lib" && name != "main").then(|| name.to_string())
}

/// The files of test modules declared out of line (`#[cfg(test)] mod tests;` → `tests.rs` beside `mod.rs`).
fn test_files(files: &[PathBuf]) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    for f in files {
        let text = std::fs::read_to_string(f).unwrap();
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        for w in lines.windows(2) {
            let name = w[1]
                .strip_prefix("mod ")
                .or_else(|| w[1].strip_prefix("pub(crate) mod "))
                .and_then(|r| r.strip_suffix(';'));
            if let (true, Some(name)) = (w[0] == "#[cfg(test)]", name) {
                let dir = if f
                    .file_name()
                    .is_some_and(|n| n == "mod.rs" || n == "lib.rs")
                {
                    f.parent().unwrap().to_path_buf()
                } else {
                    f.with_extension("")
                };
                out.insert(dir.join(format!("{name}.rs")));
            }
        }
    }
    out
}

/// The production files of the crate: test modules left out.
fn production_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let tests = test_files(&files);
    files.retain(|f| !tests.contains(f));
    files
}

/// The leading module name of a path (`sink::Sink` → `sink`).
fn leading_name(path: &str) -> String {
    path.chars()
        .take_while(|c| c.is_ascii_lowercase() || *c == '_')
        .collect()
}

/// `a::X, b::{c, d}` → `["a::X", "b::{c, d}"]`.
fn split_top_level(group: &str) -> Vec<String> {
    let (mut out, mut cur, mut depth) = (Vec::new(), String::new(), 0);
    for c in group.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    out.push(cur);
    out
}

/// The text without `//` comments (doc comments name modules without using them).
fn without_comments(text: &str) -> String {
    text.lines()
        .map(|l| match l.trim_start().starts_with("//") {
            true => "",
            false => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every `crate::<module>` a module's production code names.
fn uses() -> BTreeMap<String, BTreeSet<String>> {
    let files = production_files();
    let modules: BTreeSet<String> = files.iter().filter_map(|f| module_of(f)).collect();
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let Some(m) = module_of(f) else { continue };
        let text = without_comments(&without_tests(&std::fs::read_to_string(f).unwrap()));
        let entry = out.entry(m.clone()).or_default();
        for (i, _) in text.match_indices("crate::") {
            let rest = &text[i + "crate::".len()..];
            // `crate::{a::X, b}` names several modules at once.
            let names: Vec<String> = match rest.strip_prefix('{') {
                Some(group) => {
                    let mut depth = 0;
                    let inner: String = group
                        .chars()
                        .take_while(|c| {
                            match c {
                                '{' => depth += 1,
                                '}' if depth == 0 => return false,
                                '}' => depth -= 1,
                                _ => {}
                            }
                            true
                        })
                        .collect();
                    split_top_level(&inner)
                        .iter()
                        .map(|item| leading_name(item.trim()))
                        .collect()
                }
                None => vec![leading_name(rest)],
            };
            for name in names {
                if name != m && modules.contains(&name) {
                    entry.insert(name);
                }
            }
        }
    }
    out
}

#[test]
fn every_module_uses_only_the_layers_it_may() {
    let allowed: BTreeMap<&str, BTreeSet<&str>> = ALLOWED
        .iter()
        .map(|(m, deps)| (*m, deps.iter().copied().collect()))
        .collect();
    let mut wrong = Vec::new();
    for (module, used) in uses() {
        let Some(may) = allowed.get(module.as_str()) else {
            wrong.push(format!(
                "module `{module}` is not in the layering (tests/layers.rs, ARCHITECTURE.md)"
            ));
            continue;
        };
        for u in used {
            if !may.contains(u.as_str()) {
                wrong.push(format!("`{module}` must not use `{u}`"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_layering_has_no_cycle() {
    let graph: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    // Each module may use only modules listed before it: the list is a topological order.
    let mut seen = BTreeSet::new();
    for (module, deps) in ALLOWED {
        for d in deps.iter() {
            assert!(
                seen.contains(d),
                "`{module}` may use `{d}`, which is not below it: a cycle is possible"
            );
            assert!(
                graph.contains_key(d),
                "`{d}` is not a module of the layering"
            );
        }
        seen.insert(*module);
    }
}

#[test]
fn only_the_daemon_spawns_tasks() {
    let files = production_files();
    let mut wrong = Vec::new();
    for f in &files {
        if module_of(f).as_deref() == Some("daemon") {
            continue;
        }
        let text = without_tests(&std::fs::read_to_string(f).unwrap());
        for needle in ["tokio::spawn(", "tokio::task::spawn(", ".spawn(async"] {
            if text.contains(needle) {
                wrong.push(format!("{} calls {needle}", f.display()));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The "must not depend on" rules of ARCHITECTURE.md, spelled out: the whitelist above must keep them, and the
/// code must follow them.
const MUST_NOT: &[(&str, &[&str])] = &[
    (
        "policy",
        &["sink", "issuer", "rotation", "journal", "daemon"],
    ),
    ("sink", &["issuer", "rotation", "journal", "daemon"]),
    ("issuer", &["sink", "rotation", "journal", "daemon"]),
    (
        "journal",
        &["issuer", "sink", "rotation", "daemon", "status", "cluster"],
    ),
    ("schedule", &["status", "rotation", "daemon"]),
    // The rotation never knows about the lease: the fence wraps the issuers and sinks it is handed.
    ("rotation", &["daemon", "cluster"]),
    ("cluster", &["rotation", "daemon"]),
    ("record", &["policy", "sink", "issuer"]),
];

#[test]
fn the_must_not_rules_hold() {
    let used = uses();
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    for (module, never) in MUST_NOT {
        for n in *never {
            assert!(
                !allowed[module].contains(n),
                "ALLOWED lets `{module}` use `{n}`, which ARCHITECTURE.md forbids"
            );
            assert!(
                !used.get(*module).is_some_and(|u| u.contains(*n)),
                "`{module}` uses `{n}`"
            );
        }
    }
    // The scan sees what it must: test modules kept out of line are left out, production code is read.
    let files = production_files();
    assert!(!files.iter().any(|f| f.ends_with("policy/tests.rs")));
    assert!(used["rotation"].contains("journal") && used["policy"].contains("secret"));
    assert_eq!(
        split_top_level("a::X, b::{c, d}")
            .iter()
            .map(|i| leading_name(i.trim()))
            .collect::<Vec<_>>(),
        vec!["a", "b"],
        "grouped imports are read"
    );
}
