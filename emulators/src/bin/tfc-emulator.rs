//! `tfc-emulator`: the HCP Terraform token API emulator as a process, for the demo.
//!
//! ```text
//! tfc-emulator --listen 127.0.0.1:PORT --org acme [--team NAME]... [--teams N] [--team-ids-out PATH]
//!              [--agent-pool NAME]... [--workspace NAME]... [--varset NAME]... [--admin-token-file PATH]
//!              [--tls-ca-out PATH] [--rate-limit N]
//! ```
//! Writes the owners-team user token to `--admin-token-file` (mode 0600), serves HTTPS with a fresh CA written to
//! `--tls-ca-out` when given, logs one line per request (method, path, status) to stderr, and exits 0 on
//! SIGINT/SIGTERM. Token values are never printed. `--teams N` adds N more teams named `team-00001`, `team-00002`,
//! … (for benchmarks: thousands of teams without thousands of arguments); `--team-ids-out` writes one
//! `NAME ID` line per team added, after all of them exist. `--workspace` and `--varset` add a workspace or an
//! organization-owned variable set (for variables) and log its id.
#![forbid(unsafe_code)]

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::ExitCode;

use token_rotator_emulators::tfc::{Config, TfcEmulator};

const USAGE: &str = "usage: tfc-emulator --listen 127.0.0.1:PORT --org NAME [--team NAME]... [--teams N] \
[--team-ids-out PATH] [--agent-pool NAME]... [--workspace NAME]... [--varset NAME]... [--admin-token-file PATH] \
[--tls-ca-out PATH] [--rate-limit N (0 = off)]";

/// `--teams` at most: a bound for a benchmark fixture, not a limit of the service.
const MAX_GENERATED_TEAMS: u32 = 100_000;

struct Args {
    listen: SocketAddr,
    org: String,
    teams: Vec<String>,
    generated_teams: u32,
    team_ids_out: Option<PathBuf>,
    pools: Vec<String>,
    workspaces: Vec<String>,
    varsets: Vec<String>,
    admin_token_file: Option<PathBuf>,
    tls_ca_out: Option<PathBuf>,
    rate_limit: Option<u32>,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut listen = None;
    let mut org = None;
    let mut parsed = Args {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        org: String::new(),
        teams: Vec::new(),
        generated_teams: 0,
        team_ids_out: None,
        pools: Vec::new(),
        workspaces: Vec::new(),
        varsets: Vec::new(),
        admin_token_file: None,
        tls_ca_out: None,
        rate_limit: Some(30),
    };
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            return Err(String::new());
        }
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => {
                let v = value()?;
                listen = Some(
                    v.parse::<SocketAddr>()
                        .map_err(|_| format!("--listen: {v:?} is not IP:PORT"))?,
                );
            }
            "--org" => org = Some(value()?),
            "--team" => parsed.teams.push(value()?),
            "--teams" => {
                let v = value()?;
                parsed.generated_teams = v
                    .parse::<u32>()
                    .ok()
                    .filter(|n| *n <= MAX_GENERATED_TEAMS)
                    .ok_or_else(|| {
                        format!("--teams: {v:?} is not a number from 0 to {MAX_GENERATED_TEAMS}")
                    })?;
            }
            "--team-ids-out" => parsed.team_ids_out = Some(PathBuf::from(value()?)),
            "--agent-pool" => parsed.pools.push(value()?),
            "--workspace" => parsed.workspaces.push(value()?),
            "--varset" => parsed.varsets.push(value()?),
            "--admin-token-file" => parsed.admin_token_file = Some(PathBuf::from(value()?)),
            "--tls-ca-out" => parsed.tls_ca_out = Some(PathBuf::from(value()?)),
            "--rate-limit" => {
                let v = value()?;
                let n = v
                    .parse::<u32>()
                    .map_err(|_| format!("--rate-limit: {v:?} is not a number"))?;
                parsed.rate_limit = (n > 0).then_some(n);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if let Some(listen) = listen {
        if !listen.ip().is_loopback() {
            return Err(format!("--listen: refusing non-loopback address {listen}"));
        }
        parsed.listen = listen;
    }
    parsed.org = org.ok_or("--org is required")?;
    if parsed.org.is_empty()
        || !parsed
            .org
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err("--org: organization names are letters, digits, '-' and '_'".to_owned());
    }
    Ok(parsed)
}

/// Replaces `path` with a file only the owner can read.
fn write_private(path: &PathBuf, contents: &str) -> std::io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents.as_bytes())
}

async fn wait_for_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r,
        _ = term.recv() => Ok(()),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(e) if e.is_empty() => {
            eprintln!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("tfc-emulator: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let cfg = Config {
        rate_limit_per_second: args.rate_limit,
    };
    let started = match &args.tls_ca_out {
        Some(ca_path) => TfcEmulator::bind_tls(cfg, args.listen)
            .await
            .and_then(|(handle, ca_pem)| fs::write(ca_path, ca_pem).map(|()| handle)),
        None => TfcEmulator::bind(cfg, args.listen).await,
    };
    let handle = match started {
        Ok(handle) => handle,
        Err(e) => {
            eprintln!("tfc-emulator: cannot start on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    handle.set_request_logging(true);
    let admin_token = handle.add_organization(&args.org);
    match &args.admin_token_file {
        Some(path) => {
            if let Err(e) = write_private(path, &format!("{admin_token}\n")) {
                eprintln!("tfc-emulator: cannot write {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        }
        None => eprintln!(
            "tfc-emulator: no --admin-token-file given: the owners-team token is not available"
        ),
    }
    drop(admin_token);
    eprintln!("tfc-emulator listening on {}", handle.url());
    if let Some(owners) = handle.owners_team_id(&args.org) {
        eprintln!("tfc-emulator team owners id {owners}");
    }
    let mut team_ids = String::new();
    for team in &args.teams {
        let id = handle.add_team(&args.org, team);
        eprintln!("tfc-emulator team {team} id {id}");
        team_ids.push_str(&format!("{team} {id}\n"));
    }
    for i in 1..=args.generated_teams {
        let team = format!("team-{i:05}");
        let id = handle.add_team(&args.org, &team);
        team_ids.push_str(&format!("{team} {id}\n"));
    }
    if let Some(path) = &args.team_ids_out {
        // Written whole and renamed, so that a reader polling for the file never sees half of it.
        let tmp = path.with_extension("tmp");
        if let Err(e) = fs::write(&tmp, &team_ids).and_then(|()| fs::rename(&tmp, path)) {
            eprintln!("tfc-emulator: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    for pool in &args.pools {
        eprintln!(
            "tfc-emulator agent-pool {pool} id {}",
            handle.add_agent_pool(&args.org, pool)
        );
    }
    for workspace in &args.workspaces {
        eprintln!(
            "tfc-emulator workspace {workspace} id {}",
            handle.add_workspace(&args.org, workspace)
        );
    }
    for varset in &args.varsets {
        eprintln!(
            "tfc-emulator varset {varset} id {}",
            handle.add_varset(&args.org, varset)
        );
    }
    if let Err(e) = wait_for_signal().await {
        eprintln!("tfc-emulator: cannot wait for signals: {e}");
        return ExitCode::FAILURE;
    }
    handle.stop().await;
    ExitCode::SUCCESS
}
