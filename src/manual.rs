//! `token-rotator completions SHELL` and `token-rotator man`: generated from the clap definitions so the help text
//! has one source (`clap_complete`, `clap_mangen`), plus the man-page sections clap does not know (exit status,
//! environment, files, signals).

use std::io::Write;
use std::path::Path;

use crate::policy::DEFAULT_CONFIG_PATH;

const BIN: &str = "token-rotator";

/// The completion script for `shell`.
///
/// clap_complete's bash script spells the dispatch state of a hyphenated binary two ways: the word loop arrives at
/// `token__rotator__subcmd__check`, the case arms are labelled `token__subcmd__rotator__subcmd__check`, so nothing
/// after a subcommand ever completes (clap-rs/clap#6421, #6529; fixes proposed in #6428, #6530, not released as of
/// clap_complete 4.6.12). The arms are relabelled the way the loop spells them; once upstream is fixed this
/// replaces nothing. `tests/integration/cli_docs.rs` drives the script in bash.
pub fn completions(shell: clap_complete::Shell, cmd: &mut clap::Command) -> Vec<u8> {
    let mut script = Vec::new();
    clap_complete::generate(shell, cmd, BIN, &mut script);
    if shell == clap_complete::Shell::Bash {
        let text = String::from_utf8_lossy(&script);
        return text
            .replace("token__subcmd__rotator", "token__rotator")
            .into_bytes();
    }
    script
}

/// The top-level page: clap's sections, then ours. `exit_statuses`: each status and what it means, from the
/// command line's own definitions.
pub fn page(cmd: clap::Command, exit_statuses: &[(u8, &str)]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let man = clap_mangen::Man::new(cmd);
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    man.render_subcommands_section(&mut out)?;
    out.write_all(extra_sections(exit_statuses).as_bytes())?;
    man.render_version_section(&mut out)?;
    Ok(out)
}

/// `token-rotator.1` (the page above) and a page per command (`token-rotator-run.1`, …) written into `dir`.
pub fn write_pages(
    cmd: clap::Command,
    exit_statuses: &[(u8, &str)],
    dir: &Path,
) -> Result<(), String> {
    clap_mangen::generate_to(cmd.clone(), dir)
        .map_err(|e| format!("writing man pages to {}: {e}", dir.display()))?;
    let top = dir.join("token-rotator.1");
    let text = page(cmd, exit_statuses).map_err(|e| format!("rendering the man page: {e}"))?;
    std::fs::write(&top, text).map_err(|e| format!("writing {}: {e}", top.display()))
}

/// Plain text as roff: backslashes and hyphens escaped, a leading control character defused.
fn roff_text(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('-', "\\-");
    if escaped.starts_with(['.', '\'']) {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}

/// Sections after the generated ones, in roff (`\-` is a literal hyphen-minus).
fn extra_sections(exit_statuses: &[(u8, &str)]) -> String {
    let mut out = String::from(".SH \"EXIT STATUS\"\n");
    for (code, meaning) in exit_statuses {
        out.push_str(&format!(".TP\n\\fB{code}\\fR\n{}\n", roff_text(meaning)));
    }
    let config = roff_text(DEFAULT_CONFIG_PATH);
    out.push_str(&format!(
        r#".SH ENVIRONMENT
.TP
\fBTOKEN_ROTATOR_CONFIG\fR
Policy path when \fB\-\-config\fR is not given (default \fI{config}\fR).
.TP
\fBSTATE_DIRECTORY\fR
Set by systemd's StateDirectory=; the default journal and lock directory when the policy sets no state_dir.
.TP
\fBCREDENTIALS_DIRECTORY\fR
Set by systemd's LoadCredential=; a secret reference {{ file = "$CREDENTIALS_DIRECTORY/NAME" }} reads there.
.TP
\fBRUST_LOG\fR
Log filter (default info). Logs go to standard error; no log line ever holds a token value.
.SH FILES
.TP
\fI{config}\fR
The policy (TOML). Validate it with \fBtoken\-rotator check\fR.
.TP
\fI/var/lib/token\-rotator\fR
The journal and the instance lock (state_dir); private to the daemon (mode 0700).
.SH SIGNALS
SIGTERM and SIGINT finish the steps in flight and exit; SIGHUP reloads the policy.
.SH "SEE ALSO"
\fBsystemd.exec\fR(5), \fBsystemd\-analyze\fR(1)
"#
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::roff_text;

    #[test]
    fn plain_text_cannot_become_a_roff_request() {
        assert_eq!(roff_text(".SH x"), "\\&.SH x");
        assert_eq!(roff_text("'br"), "\\&'br");
        assert_eq!(roff_text("a-b\\c"), "a\\-b\\ec");
    }
}
