//! `token-rotator completions SHELL` and `token-rotator man`: generated from the clap definitions so the help text
//! has one source (`clap_complete`, `clap_mangen`), plus the man-page sections clap does not know (exit status,
//! environment, files).

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use crate::cli::{EXIT_RUNTIME, EXIT_USAGE};
use crate::policy::DEFAULT_CONFIG_PATH;

/// Sections after the generated ones, in roff. `\-` is a literal hyphen-minus.
fn extra_sections() -> String {
    format!(
        r#".SH "EXIT STATUS"
.TP
\fB0\fR
Success.
.TP
\fB{EXIT_RUNTIME}\fR
A runtime failure: a rotation, a sink or an issuer failed.
.TP
\fB{EXIT_USAGE}\fR
Usage error or invalid policy; \fBcheck\fR prints every problem as PATH:LINE:COL: message.
.SH ENVIRONMENT
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
"#,
        config = DEFAULT_CONFIG_PATH.replace('-', "\\-"),
    )
}

/// The top-level page: clap's sections, then ours.
pub fn render(cmd: clap::Command, out: &mut dyn Write) -> std::io::Result<()> {
    let man = clap_mangen::Man::new(cmd);
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    man.render_subcommands_section(out)?;
    out.write_all(extra_sections().as_bytes())?;
    man.render_version_section(out)
}

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

const BIN: &str = "token-rotator";

/// Writes generated text to stdout. A reader that stops early (`| head`) is not an error.
pub fn print(text: &[u8]) -> ExitCode {
    match std::io::stdout().lock().write_all(text) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("token-rotator: writing to stdout: {e}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

/// Without a directory: the top-level page on stdout. With one: `token-rotator.1` and a page per command
/// (`token-rotator-run.1`, …) written there.
pub fn write(cmd: clap::Command, out_dir: Option<&Path>) -> ExitCode {
    let done = match out_dir {
        None => {
            let mut page = Vec::new();
            match render(cmd, &mut page) {
                Ok(()) => return print(&page),
                Err(e) => Err(format!("rendering the man page: {e}")),
            }
        }
        Some(dir) => (|| {
            clap_mangen::generate_to(cmd.clone(), dir)
                .map_err(|e| format!("writing man pages to {}: {e}", dir.display()))?;
            let top = dir.join("token-rotator.1");
            let mut buf = Vec::new();
            render(cmd, &mut buf).map_err(|e| format!("rendering the man page: {e}"))?;
            std::fs::write(&top, buf).map_err(|e| format!("writing {}: {e}", top.display()))
        })(),
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("token-rotator: {e}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}
