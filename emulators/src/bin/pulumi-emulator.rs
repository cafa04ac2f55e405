//! `pulumi-emulator`: runs the Pulumi Cloud token-API emulator for the demo and manual testing.
//!
//! ```text
//! pulumi-emulator --listen 127.0.0.1:PORT --user LOGIN --org ORG [--team T]... [--token-file PATH]
//!                 [--rate-limit N]
//! ```
//! The user becomes an admin of the organization; its personal token goes to `--token-file` (mode 0600), or to
//! stdout when no file is given. Stderr gets the listening line and one line per request, never a token value.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use token_rotator_emulators::pulumi::{Config, PulumiEmulator};

const USAGE: &str =
    "usage: pulumi-emulator --listen 127.0.0.1:PORT --user LOGIN --org ORG [--team TEAM]... \
                     [--token-file PATH] [--rate-limit N]";

#[derive(Debug)]
struct Args {
    listen: SocketAddr,
    user: String,
    org: String,
    teams: Vec<String>,
    token_file: Option<PathBuf>,
    rate_limit: Option<u32>,
}

fn parse_args(mut argv: impl Iterator<Item = String>) -> Result<Args, String> {
    let (mut listen, mut user, mut org, mut token_file, mut rate_limit) =
        (None, None, None, None, None);
    let mut teams = Vec::new();
    while let Some(flag) = argv.next() {
        if flag == "--help" || flag == "-h" {
            return Err(String::new());
        }
        // Accept both `--flag value` and `--flag=value`.
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (flag, None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| argv.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match name.as_str() {
            "--listen" => {
                let v = value()?;
                listen = Some(
                    v.parse::<SocketAddr>()
                        .map_err(|e| format!("--listen {v}: {e}"))?,
                );
            }
            "--user" => user = Some(value()?),
            "--org" => org = Some(value()?),
            "--team" => teams.push(value()?),
            "--token-file" => token_file = Some(PathBuf::from(value()?)),
            "--rate-limit" => {
                let v = value()?;
                rate_limit = Some(
                    v.parse::<u32>()
                        .map_err(|e| format!("--rate-limit {v}: {e}"))?,
                );
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let listen = listen.ok_or("--listen is required")?;
    if !listen.ip().is_loopback() {
        return Err(format!(
            "refusing to listen on {listen}: only loopback addresses are allowed"
        ));
    }
    let nonempty = |v: Option<String>, flag: &str| {
        v.filter(|s| !s.is_empty())
            .ok_or(format!("{flag} is required"))
    };
    Ok(Args {
        listen,
        user: nonempty(user, "--user")?,
        org: nonempty(org, "--org")?,
        teams,
        token_file,
        rate_limit,
    })
}

/// Writes the token with mode 0600 from the start (the file never exists with wider permissions).
fn write_token_file(path: &PathBuf, token: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(0o600);
        let mut f = options.open(path)?;
        // An existing file keeps its old mode through open(); tighten it.
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(format!("{token}\n").as_bytes())?;
        f.sync_all()
    }
    #[cfg(not(unix))]
    {
        let mut f = options.open(path)?;
        f.write_all(format!("{token}\n").as_bytes())
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(msg) if msg.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(msg) => {
            eprintln!("pulumi-emulator: {msg}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let cfg = Config {
        rate_limit_per_second: args.rate_limit,
    };
    let handle = match PulumiEmulator::start_on(cfg, args.listen).await {
        Ok(h) => h,
        Err(e) => {
            eprintln!("pulumi-emulator: cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    handle.set_request_echo(true);
    let token = handle.add_user(&args.user);
    handle.add_organization(&args.org, &args.user);
    for team in &args.teams {
        handle.add_team(&args.org, team);
    }
    match &args.token_file {
        Some(path) => {
            if let Err(e) = write_token_file(path, &token) {
                eprintln!("pulumi-emulator: cannot write {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
            eprintln!(
                "pulumi-emulator: personal token of {} written to {}",
                args.user,
                path.display()
            );
        }
        None => println!("{token}"),
    }
    eprintln!("pulumi-emulator listening on {}", handle.url());
    shutdown_signal().await;
    eprintln!("pulumi-emulator: shutting down");
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::parse_args;

    fn args(s: &str) -> Result<super::Args, String> {
        parse_args(s.split_whitespace().map(str::to_string))
    }

    #[test]
    fn parses_all_flags() {
        let a = args("--listen 127.0.0.1:8080 --user alice --org acme --team ops --team=dev --token-file /tmp/t")
            .unwrap();
        assert_eq!(a.listen.port(), 8080);
        assert_eq!(a.teams, ["ops", "dev"]);
        assert_eq!((a.user.as_str(), a.org.as_str()), ("alice", "acme"));
        assert!(a.token_file.is_some());
    }

    #[test]
    fn refuses_non_loopback_and_missing_flags() {
        assert!(args("--listen 0.0.0.0:8080 --user a --org b")
            .unwrap_err()
            .contains("loopback"));
        assert!(args("--listen 127.0.0.1:1 --org b")
            .unwrap_err()
            .contains("--user"));
        assert!(args("--listen 127.0.0.1:1 --user a --org b --bogus")
            .unwrap_err()
            .contains("unknown"));
        assert!(args("--listen [::1]:1 --user a --org b").is_ok());
    }
}
