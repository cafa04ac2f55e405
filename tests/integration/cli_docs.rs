//! `completions` and `man`: generated from the clap definitions, so every command and flag the parser knows is
//! in them; the bash script really completes; the man page renders.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::{binary, run_cli};

/// Every user-facing command (SPEC §2 plus the helpers): a new one must show up in completions and the man page.
const COMMANDS: &[&str] = &[
    "run",
    "check",
    "plan",
    "rotate",
    "status",
    "healthcheck",
    "completions",
    "man",
];

/// How each shell's script declares a subcommand (clap_complete's output), so that a word that merely occurs in a
/// description ("runtime", "EXIT STATUS") does not count.
fn declares(shell: &str, cmd: &str) -> String {
    match shell {
        "bash" => format!("token__rotator__subcmd__{}", cmd.replace('-', "__")),
        "zsh" => format!("'{cmd}:"),
        "fish" => format!("-a \"{cmd}\""),
        "elvish" => format!("cand {cmd} "),
        "powershell" => format!("[CompletionResult]::new('{cmd}', '{cmd}'"),
        _ => unreachable!(),
    }
}

#[test]
fn completion_scripts_name_every_command_and_flag() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = run_cli(&["completions", shell], &[], Duration::from_secs(20));
        assert_eq!(out.code, 0, "{shell}: {}", out.stderr);
        for cmd in COMMANDS {
            let declared = declares(shell, cmd);
            assert!(
                out.stdout.contains(&declared),
                "{shell} completion lacks {declared}"
            );
        }
        for flag in ["config", "online", "once", "all", "json", "log-format"] {
            // fish spells a long flag `-l config`; the others `--config`.
            let spelled = if shell == "fish" {
                format!("-l {flag}")
            } else {
                format!("--{flag}")
            };
            assert!(
                out.stdout.contains(&spelled),
                "{shell} completion lacks {spelled}"
            );
        }
    }
    let bad = run_cli(&["completions", "tcsh"], &[], Duration::from_secs(20));
    assert_eq!(bad.code, 2, "an unknown shell is a usage error");
    assert!(bad.stderr.contains("tcsh"), "{}", bad.stderr);
}

/// Sources the bash script and asks it what follows the words typed, as bash's programmable completion does.
fn bash_complete(words: &[&str]) -> Vec<String> {
    let script = format!(
        r#"source <("{bin}" completions bash) || exit 3
COMP_WORDS=({words}); COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))
COMP_LINE="${{COMP_WORDS[*]}}"; COMP_POINT=${{#COMP_LINE}}
_token__rotator token-rotator "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
printf '%s\n' "${{COMPREPLY[@]}}""#,
        bin = binary(),
        words = words
            .iter()
            .map(|w| format!("'{w}'"))
            .collect::<Vec<_>>()
            .join(" "),
    );
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", &script])
        .stdin(Stdio::null())
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "bash completion failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn bash_completion_completes_commands_flags_and_shells() {
    assert_eq!(bash_complete(&["token-rotator", "ch"]), ["check"]);
    assert_eq!(bash_complete(&["token-rotator", "ro"]), ["rotate"]);
    let check_flags = bash_complete(&["token-rotator", "check", "--"]);
    for flag in ["--config", "--online", "--help"] {
        assert!(check_flags.iter().any(|f| f == flag), "{check_flags:?}");
    }
    assert!(
        !check_flags.iter().any(|f| f == "--once"),
        "--once belongs to run: {check_flags:?}"
    );
    let shells = bash_complete(&["token-rotator", "completions", ""]);
    for shell in ["bash", "zsh", "fish"] {
        assert!(shells.iter().any(|s| s == shell), "{shells:?}");
    }
}

#[test]
fn man_page_documents_every_command_exit_codes_and_files() {
    let out = run_cli(&["man"], &[], Duration::from_secs(20));
    assert_eq!(out.code, 0, "{}", out.stderr);
    let page = out.stdout;
    assert!(page.contains(".TH token-rotator 1"), "{page}");
    for section in [
        ".SH NAME",
        ".SH SYNOPSIS",
        ".SH DESCRIPTION",
        ".SH OPTIONS",
        ".SH SUBCOMMANDS",
        ".SH \"EXIT STATUS\"",
        ".SH ENVIRONMENT",
        ".SH FILES",
        ".SH VERSION",
    ] {
        assert!(page.contains(section), "man page lacks {section}");
    }
    // Each command is listed with a reference to its own page, and no page is referenced that is not written.
    for cmd in COMMANDS {
        let reference = format!("token\\-rotator\\-{}(1)", cmd.replace('-', "\\-"));
        assert!(page.contains(&reference), "man page lacks {reference}");
    }
    let references = page
        .lines()
        .filter(|l| l.starts_with("token\\-rotator\\-") && l.ends_with("(1)"))
        .count();
    assert_eq!(
        references,
        COMMANDS.len(),
        "one reference per command, no other: {page}"
    );
    assert!(
        !page.contains("token\\-rotator\\-help(1)"),
        "no page is written for `help`"
    );
    assert!(page.contains("/etc/token\\-rotator/policy.toml"));
    assert!(page.contains("TOKEN_ROTATOR_CONFIG"));
    assert!(page.contains(env!("CARGO_PKG_VERSION")));

    let text = groff(&page);
    for heading in ["EXIT STATUS", "ENVIRONMENT", "FILES", "SUBCOMMANDS"] {
        assert!(
            text.contains(heading),
            "rendered page lacks {heading}:\n{text}"
        );
    }
    assert!(text.contains("/etc/token-rotator/policy.toml"), "{text}");
}

/// Formats a page with groff (Debian's groff-base, which man-db needs) with every warning on: any warning fails the
/// test. Returns the text as a terminal would show it.
fn groff(page: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("page.1");
    std::fs::write(&file, page).unwrap();
    let out = Command::new("groff")
        .args(["-man", "-ww", "-Tutf8", "-P-cbou"])
        .arg(&file)
        .stdin(Stdio::null())
        .output()
        .expect("groff runs (Debian: groff-base)");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "groff warned: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // -P-cbou: no escape sequences, no overstriking, so the text can be searched.
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn man_out_dir_writes_one_page_per_command() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_cli(
        &["man", "--out-dir", dir.path().to_str().unwrap()],
        &[],
        Duration::from_secs(20),
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let top = std::fs::read_to_string(dir.path().join("token-rotator.1")).unwrap();
    assert!(
        top.contains(".SH \"EXIT STATUS\""),
        "the top page is ours, not clap's bare one"
    );
    for cmd in COMMANDS {
        let page = std::fs::read_to_string(dir.path().join(format!("token-rotator-{cmd}.1")))
            .unwrap_or_else(|e| panic!("token-rotator-{cmd}.1: {e}"));
        assert!(page.contains(".SH SYNOPSIS"), "{cmd}: {page}");
        groff(&page);
    }
    let rotate = std::fs::read_to_string(dir.path().join("token-rotator-rotate.1")).unwrap();
    assert!(rotate.contains("\\-\\-all"), "{rotate}");

    let missing = run_cli(
        &[
            "man",
            "--out-dir",
            dir.path().join("no/such").to_str().unwrap(),
        ],
        &[],
        Duration::from_secs(20),
    );
    assert_eq!(missing.code, 1);
    assert!(missing.stderr.contains("no/such"), "{}", missing.stderr);
}
