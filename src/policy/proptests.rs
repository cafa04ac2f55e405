//! Property tests: any mutation of a valid policy either parses or is rejected with located diagnostics —
//! never a panic, never an unlocated message.

use std::path::Path;

use proptest::prelude::*;

use super::{parse, Env};

const VALID: &str = r#"[daemon]
state_dir = "/tmp/x"
listen = "127.0.0.1:9851"

[issuers.tfc]
kind = "tfe"
address = "https://app.terraform.io"
token = { env = "TFC_TOKEN" }
requests_per_second = 20

[sinks.vault]
kind = "vault"
address = "https://vault.internal:8200"
mount = "secret"
auth = { method = "token", token = { file = "/run/secrets/vault" } }

[tokens.ci-org]
issuer = "tfc"
type = "organization"
organization = "acme"
lifetime = "30d"
rotate_before = "10d"
every = "7d"
jitter = "1h"
window = "0 3 * * 1-5"
timezone = "Europe/Berlin"
sinks = [{ sink = "vault", path = "ci/tfc-org" }]

[tokens.team]
issuer = "tfc"
type = "team"
team_id = "team-abc"
grace = "2h"
sinks = [{ sink = "vault", path = "ci/team" }]
"#;

fn values() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("1".to_string()),
        Just("true".to_string()),
        Just("[]".to_string()),
        Just("{}".to_string()),
        Just("\"\"".to_string()),
        Just("\"99999999999999999999d\"".to_string()),
        Just("\"0s\"".to_string()),
        Just("-3".to_string()),
        Just("1.5e300".to_string()),
        Just("1979-05-27T07:32:00Z".to_string()),
        Just("{ env = \"\" }".to_string()),
        Just("\"http://10.0.0.1\"".to_string()),
        "\"[\\PC]{0,12}\"".prop_map(|s| s.replace('\\', "")),
        "[a-z0-9 =\\[\\]{}\",.]{0,16}",
    ]
}

#[derive(Debug, Clone)]
enum Mutation {
    DeleteLine(usize),
    DuplicateLine(usize),
    ReplaceValue(usize, String),
    InsertJunk(usize, String, String),
    Truncate(usize),
    Unicode(usize, String),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let lines = VALID.lines().count();
    prop_oneof![
        (0..lines).prop_map(Mutation::DeleteLine),
        (0..lines).prop_map(Mutation::DuplicateLine),
        (0..lines, values()).prop_map(|(l, v)| Mutation::ReplaceValue(l, v)),
        (0..lines, "[a-z_]{1,10}", values()).prop_map(|(l, k, v)| Mutation::InsertJunk(l, k, v)),
        (0..VALID.len()).prop_map(Mutation::Truncate),
        (0..lines, "\\PC{1,8}").prop_map(|(l, s)| Mutation::Unicode(l, s)),
    ]
}

/// Applies one mutation to `base` (line indices wrap around its length).
fn apply(m: &Mutation, base: &str) -> String {
    let mut lines: Vec<String> = base.lines().map(String::from).collect();
    if lines.is_empty() {
        lines.push(String::new());
    }
    let n = lines.len();
    let m = match m.clone() {
        Mutation::DeleteLine(i) => Mutation::DeleteLine(i % n),
        Mutation::DuplicateLine(i) => Mutation::DuplicateLine(i % n),
        Mutation::ReplaceValue(i, v) => Mutation::ReplaceValue(i % n, v),
        Mutation::InsertJunk(i, k, v) => Mutation::InsertJunk(i % n, k, v),
        Mutation::Unicode(i, s) => Mutation::Unicode(i % n, s),
        t @ Mutation::Truncate(_) => t,
    };
    match &m {
        Mutation::DeleteLine(i) => {
            lines.remove(*i);
        }
        Mutation::DuplicateLine(i) => {
            let l = lines[*i].clone();
            lines.insert(*i, l);
        }
        Mutation::ReplaceValue(i, v) => {
            if let Some((k, _)) = lines[*i].split_once('=') {
                lines[*i] = format!("{k}= {v}");
            }
        }
        Mutation::InsertJunk(i, k, v) => lines.insert(*i, format!("{k} = {v}")),
        Mutation::Truncate(len) => {
            let mut cut = (*len).min(base.len());
            while !base.is_char_boundary(cut) {
                cut -= 1;
            }
            return base[..cut].to_string();
        }
        Mutation::Unicode(i, s) => lines[*i].push_str(s),
    }
    lines.join("\n")
}

fn check_located(src: &str) {
    match parse(
        "p.toml",
        Path::new("p.toml"),
        src,
        &Env::default(),
        &crate::kinds(),
    ) {
        Ok(_) => {}
        Err(mut d) => {
            let rendered = d.render();
            assert!(
                !rendered.is_empty(),
                "an invalid policy has at least one message"
            );
            let line_count = src.lines().count().max(1) + 1;
            for r in rendered {
                let rest = r
                    .strip_prefix("p.toml:")
                    .unwrap_or_else(|| panic!("unlocated: {r}"));
                let mut parts = rest.splitn(3, ':');
                let line: usize = parts
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap_or_else(|_| panic!("no line: {r}"));
                let col: usize = parts
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap_or_else(|_| panic!("no column: {r}"));
                assert!(
                    line >= 1 && line <= line_count,
                    "line {line} out of range in {r}"
                );
                assert!(col >= 1, "column in {r}");
                assert!(
                    parts.next().is_some_and(|m| !m.trim().is_empty()),
                    "a message in {r}"
                );
            }
        }
    }
}

#[test]
fn the_base_policy_is_valid() {
    super::tests::parse_ok(VALID);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn mutated_policies_never_panic_and_errors_are_located(muts in proptest::collection::vec(mutation(), 1..4)) {
        let mut src = VALID.to_string();
        for m in &muts {
            src = apply(m, &src);
        }
        check_located(&src);
    }

    #[test]
    fn arbitrary_text_never_panics(src in "\\PC{0,400}") {
        check_located(&src);
    }

    /// Read in slices (`chunks`, here of any size down to one token each), a mutated policy reads exactly as when
    /// parsed whole: the same tokens, or the same located errors. Only a policy of 64 KiB or more is sliced in
    /// use; the slicing does not depend on the size.
    #[test]
    fn a_policy_read_in_slices_reads_as_the_whole(
        muts in proptest::collection::vec(mutation(), 0..4),
        target in 1usize..400,
    ) {
        let mut src = VALID.to_string();
        for m in &muts {
            src = apply(m, &src);
        }
        let read = |split| {
            super::parse_parts("p.toml", Path::new("p.toml"), &src, &Env::default(), &crate::kinds(), split)
                .map(|r| r.map(|p| format!("{:?}", p.tokens)).map_err(|mut d| d.render()))
        };
        let whole = read(None).expect("a whole parse always gives a result");
        if let Some(split) = super::chunks::split(&src, target) {
            // `None`: a slice did not parse on its own, and the whole file is parsed instead (as `parse` does).
            if let Some(sliced) = read(Some(split)) {
                prop_assert_eq!(sliced, whole);
            }
        }
    }
}

#[test]
fn a_huge_policy_is_handled() {
    let mut src = VALID.to_string();
    for i in 0..5000 {
        src.push_str(&format!(
            "\n[tokens.t{i}]\nissuer = \"tfc\"\ntype = \"team\"\nteam_id = \"team-{i}\"\nsinks = [{{ sink = \"vault\", path = \"p/{i}\" }}]\n"
        ));
    }
    let p = super::tests::parse_ok(&src);
    assert_eq!(p.tokens.len(), 5002);
    // And one error deep inside is still located exactly.
    let broken = src.replacen("team_id = \"team-4321\"", "team_id = 4321", 1);
    let mut d = parse(
        "p.toml",
        Path::new("p.toml"),
        &broken,
        &Env::default(),
        &crate::kinds(),
    )
    .unwrap_err();
    let lines = d.render();
    assert_eq!(lines.len(), 1, "{lines:?}");
    let want_line = broken.lines().position(|l| l == "team_id = 4321").unwrap() + 1;
    assert!(
        lines[0].starts_with(&format!("p.toml:{want_line}:11: ")),
        "{}",
        lines[0]
    );
}
