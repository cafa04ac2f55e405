//! Command line (SPEC §2): parse, run the command, map the outcome to an exit code (0 ok, 1 runtime, 2 usage/policy).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum, ValueHint};
use tokio_util::sync::CancellationToken;

use crate::daemon::{self, RunOptions};
use crate::policy::{self, LogFormat, Policy, DEFAULT_CONFIG_PATH};

#[derive(Parser, Debug)]
#[command(
    name = "token-rotator",
    version,
    about = "Keeps HCP Terraform / TFE and Pulumi Cloud tokens fresh in Vault/OpenBao, AWS Secrets Manager and files",
    long_about = LONG_ABOUT,
    // `--help` on every command; no `help` subcommand, which would need its own man page.
    disable_help_subcommand = true
)]
pub struct Cli {
    /// Log format on stderr (overrides `[daemon] log_format`).
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormatArg>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormatArg {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon (with --once: rotate what is due, then exit).
    Run {
        #[arg(long, value_name = "PATH", value_hint = ValueHint::FilePath)]
        config: Option<PathBuf>,
        /// Rotate what is due, then exit.
        #[arg(long)]
        once: bool,
    },
    /// Per token: current token, expiry, next rotation time and why. Changes nothing.
    Plan {
        #[arg(long, value_name = "PATH", value_hint = ValueHint::FilePath)]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Rotate now (hands the request to a running daemon if there is one).
    Rotate {
        #[arg(long, value_name = "PATH", value_hint = ValueHint::FilePath)]
        config: Option<PathBuf>,
        /// Every token of the policy.
        #[arg(long, conflicts_with = "names")]
        all: bool,
        /// Token names.
        #[arg(required_unless_present = "all")]
        names: Vec<String>,
    },
    /// Health of every token as the running daemon sees it.
    Status {
        #[arg(long, value_name = "PATH", value_hint = ValueHint::FilePath)]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Exit 0 when the daemon answers /healthz on `listen` (for container HEALTHCHECKs; no curl needed).
    Healthcheck {
        #[arg(long, value_name = "PATH", value_hint = ValueHint::FilePath)]
        config: Option<PathBuf>,
    },
    /// Validate the policy; with --online also probe issuers and sinks (read-only).
    Check {
        #[arg(long, value_name = "PATH", value_hint = ValueHint::FilePath)]
        config: Option<PathBuf>,
        /// Also prove each issuer credential and read each sink target, changing nothing.
        #[arg(long)]
        online: bool,
    },
    /// Print a shell completion script to stdout.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) to stdout; with --out-dir, write it and one page per command there.
    Man {
        #[arg(long, value_name = "DIR", value_hint = ValueHint::DirPath)]
        out_dir: Option<PathBuf>,
    },
}

const LONG_ABOUT: &str = "Keeps HCP Terraform / Terraform Enterprise organization, team and agent tokens and Pulumi Cloud \
tokens fresh. It reads a TOML policy of tokens, mints each successor before the current token expires, writes it to \
HashiCorp Vault / OpenBao KV, AWS Secrets Manager or a file, proves the new token works, revokes the old one only when \
that is safe, and serves Prometheus metrics, /healthz and /readyz on the policy's `listen` address.";

pub const EXIT_RUNTIME: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
/// Each exit status and its meaning (SPEC §2), for the man page.
const EXIT_STATUSES: &[(u8, &str)] = &[
    (0, "Success."),
    (
        EXIT_RUNTIME,
        "A runtime failure: a rotation, a sink or an issuer failed.",
    ),
    (
        EXIT_USAGE,
        "Usage error or invalid policy; check prints every problem as PATH:LINE:COL: message.",
    ),
];

/// Generated text (a completion script, the man page) on stdout. A reader that stops early (`| head`) is not an
/// error.
fn print_generated(text: &[u8]) -> ExitCode {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("token-rotator: writing to stdout: {e}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

/// `--config`, else `$TOKEN_ROTATOR_CONFIG`, else the default path.
fn config_path(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| std::env::var_os("TOKEN_ROTATOR_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH))
}

fn load_or_report(path: &std::path::Path) -> Result<Policy, ExitCode> {
    policy::load(path, &crate::kinds()).map_err(|e| {
        for line in e.lines() {
            eprintln!("{line}");
        }
        ExitCode::from(EXIT_USAGE)
    })
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let flag_format = cli.log_format.map(|f| match f {
        LogFormatArg::Text => LogFormat::Text,
        LogFormatArg::Json => LogFormat::Json,
    });
    match cli.command {
        Command::Completions { shell } => {
            print_generated(&crate::manual::completions(shell, &mut Cli::command()))
        }
        Command::Man { out_dir: None } => {
            match crate::manual::page(Cli::command(), EXIT_STATUSES) {
                Ok(page) => print_generated(&page),
                Err(e) => {
                    eprintln!("token-rotator: rendering the man page: {e}");
                    ExitCode::from(EXIT_RUNTIME)
                }
            }
        }
        Command::Man { out_dir: Some(dir) } => {
            match crate::manual::write_pages(Cli::command(), EXIT_STATUSES, &dir) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("token-rotator: {e}");
                    ExitCode::from(EXIT_RUNTIME)
                }
            }
        }
        Command::Run { config, once } => {
            crate::http::warm_up();
            let path = config_path(config);
            let policy = match load_or_report(&path) {
                Ok(p) => p,
                Err(code) => return code,
            };
            crate::logging::init(flag_format.or(policy.daemon.log_format).unwrap_or_default());
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            let cancel = CancellationToken::new();
            match rt.block_on(daemon::run(policy, RunOptions { once }, cancel)) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) if once => ExitCode::from(EXIT_RUNTIME),
                Ok(false) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "token-rotator cannot run");
                    eprintln!("token-rotator: {e}");
                    ExitCode::from(EXIT_RUNTIME)
                }
            }
        }
        Command::Plan { config, json } => with_runtime(config, flag_format, |p| async move {
            if crate::commands::plan(&p, json).await {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_RUNTIME)
            }
        }),
        Command::Status { config, json } => with_runtime(config, flag_format, |p| async move {
            match crate::commands::status(&p, json).await {
                Some(true) => ExitCode::SUCCESS,
                _ => ExitCode::from(EXIT_RUNTIME),
            }
        }),
        Command::Rotate { config, all, names } => {
            with_runtime(config, flag_format, |p| async move {
                match crate::commands::rotate(&p, names, all).await {
                    Ok(true) => ExitCode::SUCCESS,
                    Ok(false) => ExitCode::from(EXIT_RUNTIME),
                    Err(e) => {
                        eprintln!("token-rotator: {e}");
                        ExitCode::from(EXIT_RUNTIME)
                    }
                }
            })
        }
        Command::Healthcheck { config } => with_runtime(config, flag_format, |p| async move {
            let mut addr = p.daemon.listen;
            if addr.ip().is_unspecified() {
                addr.set_ip(if addr.is_ipv4() {
                    std::net::Ipv4Addr::LOCALHOST.into()
                } else {
                    std::net::Ipv6Addr::LOCALHOST.into()
                });
            }
            let url = format!("http://{addr}/healthz");
            let ok = match reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(5))
                .build()
            {
                Ok(c) => c
                    .get(&url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success()),
                Err(_) => false,
            };
            if ok {
                ExitCode::SUCCESS
            } else {
                eprintln!("token-rotator: {url} did not answer 200");
                ExitCode::from(EXIT_RUNTIME)
            }
        }),
        Command::Check { config, online } => {
            let path = config_path(config);
            let policy = match load_or_report(&path) {
                Ok(p) => p,
                Err(code) => return code,
            };
            if !online {
                println!(
                    "{}: ok ({} issuers, {} sinks, {} tokens)",
                    path.display(),
                    policy.issuers.len(),
                    policy.sinks.len(),
                    policy.tokens.len()
                );
                return ExitCode::SUCCESS;
            }
            crate::logging::init(flag_format.or(policy.daemon.log_format).unwrap_or_default());
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            if rt.block_on(crate::online::check(&policy)) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_RUNTIME)
            }
        }
    }
}

/// Loads the policy, starts logging (warnings only, so command output stays readable) and a runtime, and runs `f`.
fn with_runtime<F, Fut>(config: Option<PathBuf>, format: Option<LogFormat>, f: F) -> ExitCode
where
    F: FnOnce(Policy) -> Fut,
    Fut: std::future::Future<Output = ExitCode>,
{
    let path = config_path(config);
    let policy = match load_or_report(&path) {
        Ok(p) => p,
        Err(code) => return code,
    };
    if std::env::var_os("RUST_LOG").is_none() {
        crate::logging::init_with_default(
            format.or(policy.daemon.log_format).unwrap_or_default(),
            "warn",
        );
    } else {
        crate::logging::init(format.or(policy.daemon.log_format).unwrap_or_default());
    }
    match runtime() {
        Ok(rt) => rt.block_on(f(policy)),
        Err(code) => code,
    }
}

/// The tokio runtime every async command runs on: one thread. The daemon waits on the network almost all the
/// time (about 1 ms of CPU per rotation against a rate limit of tens per second), and a second worker thread
/// only added cross-thread wake-ups: on two cores, 27 % more CPU per rotation (BENCHMARKS.md, History, row h).
/// What blocks (policy parse on reload, file I/O, the journal's `fdatasync`) runs on the blocking pool or the
/// journal's own thread, never here.
fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("token-rotator: cannot start the async runtime: {e}");
            ExitCode::from(EXIT_RUNTIME)
        })
}
