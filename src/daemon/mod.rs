//! The daemon: opens the journal, serves the endpoints and the control socket, installs the signal handlers, and
//! runs the scheduler ([`scheduler::Daemon`]) until shutdown.
//!
//! - `build.rs`: issuers, sinks and the rotator from a policy (also for `plan`, `rotate`, `check --online`);
//! - `scheduler.rs`: the deadline loop, reloads and `rotate` requests.

pub mod build;
pub mod control;
pub mod scheduler;
pub mod server;
pub mod systemd;

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use build::{
    build_rotator, build_sinks_only, open_cluster, open_journal, Backends, Network, SetupError,
    Shared,
};
pub use scheduler::{Control, Daemon, Inputs};

use crate::cluster::LeaseKeeper;
use crate::metrics::Metrics;
use crate::policy;
use crate::retry::PacerRegistry;
use crate::status::StatusBoard;
use control::RotateRequest;
use server::AppState;

#[derive(Clone, Copy, Debug, Default)]
pub struct RunOptions {
    pub once: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Setup(#[from] build::SetupError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
}

/// Runs the daemon until shutdown (or, with `once`, until every token was visited). Returns whether every
/// visit succeeded.
pub async fn run(
    policy: policy::Policy,
    opts: RunOptions,
    cancel: CancellationToken,
) -> Result<bool, RunError> {
    let metrics = Arc::new(Metrics::new());
    let board = StatusBoard::new();
    let (journal, cluster) = match &policy.cluster {
        None => (open_journal(&policy, false)?, None),
        Some(_) if opts.once => {
            return Err(SetupError::Cluster(
                "`run --once` mints without the lease; with [cluster] run the daemon (a standby waits for the lease)"
                    .into(),
            )
            .into())
        }
        Some(settings) => {
            let (journal, coord, fence) = open_cluster(&policy)?;
            board.set_role(crate::cluster::Role::Standby.as_str());
            metrics.cluster();
            tracing::info!(identity = %fence.identity(), store = %settings.store, path = %settings.path, "cluster mode: only the lease holder mints");
            (journal, Some((coord, fence, settings.clone())))
        }
    };
    // Every token is on the board before /readyz can answer: an empty board would read as ready while the
    // issuers and sinks are still being built.
    board.add_all(
        policy
            .tokens
            .values()
            .map(|t| (&t.name, &t.issuer, t.kind.type_name())),
    );
    let shared = Shared {
        journal: Arc::new(journal),
        metrics: metrics.clone(),
        pacers: Arc::new(PacerRegistry::default()),
        backends: Arc::new(Network),
        board: Some(board.clone()),
        fence: cluster.as_ref().map(|(_, fence, _)| fence.clone()),
    };
    // The lease is kept until the loop has let in-flight rotations reach a journaled state; then released.
    let lease_stop = CancellationToken::new();
    let drained = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let lease = cluster.map(|(store, fence, settings)| {
        let keeper = LeaseKeeper {
            drained: drained.clone(),
            store,
            fence,
            settings,
            metrics: metrics.clone(),
            board: board.clone(),
        };
        let stop = lease_stop.clone();
        tokio::spawn(async move { keeper.run(stop).await })
    });
    let (control_tx, control_rx) = mpsc::channel::<Control>(4);

    // The control socket is up before /healthz answers, so `rotate` works as soon as the daemon looks healthy.
    let (rotate_tx, rotate_rx) = mpsc::channel::<RotateRequest>(16);
    let control = if opts.once {
        None
    } else {
        match control::serve(&policy.daemon.state_dir, board.clone(), rotate_tx) {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::warn!(error = %e, "cannot open the control socket; `rotate` and `status` will not reach this daemon");
                None
            }
        }
    };
    let server = if opts.once {
        None
    } else {
        let addr = policy.daemon.listen;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| RunError::Listen {
                addr: addr.to_string(),
                source,
            })?;
        let bound = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| addr.to_string());
        let app = server::router(AppState {
            metrics: metrics.clone(),
            board: board.clone(),
        });
        tracing::info!(listen = %bound, "serving /metrics, /healthz and /readyz on http://{bound}/");
        Some(tokio::spawn(server::serve(listener, app, cancel.clone())))
    };

    let policy_path = policy.path.clone();
    let state_dir = policy.daemon.state_dir.clone();
    let mut d = Daemon::new(policy, shared, board).await;
    if !opts.once {
        systemd::ready();
        spawn_signal_handlers(policy_path, cancel.clone(), control_tx, metrics);
    }
    tracing::info!(
        tokens = d.token_count(),
        once = opts.once,
        "token-rotator started"
    );
    let ok = d
        .run_loop(
            Inputs {
                cancel: cancel.clone(),
                control: control_rx,
                rotate: rotate_rx,
            },
            opts.once,
        )
        .await;
    if let Some(l) = lease {
        drained.store(d.drained(), std::sync::atomic::Ordering::SeqCst);
        lease_stop.cancel();
        let _ = l.await;
    }
    if let Some(s) = server {
        cancel.cancel();
        let _ = s.await;
    }
    if let Some(c) = control {
        c.abort();
        let _ = std::fs::remove_file(control::socket_path(&state_dir));
    }
    Ok(ok)
}

/// SIGTERM/SIGINT cancel (a second one exits at once); SIGHUP reloads the policy or keeps the old one.
fn spawn_signal_handlers(
    path: std::path::PathBuf,
    cancel: CancellationToken,
    control: mpsc::Sender<Control>,
    metrics: Arc<Metrics>,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
                _ = hup.recv() => {
                    tracing::info!(path = %path.display(), "SIGHUP: reloading the policy");
                    // Parsed on the blocking pool: a huge or hostile file must not stall /healthz or the loop.
                    let p = path.clone();
                    let loaded = tokio::task::spawn_blocking(move || policy::load(&p, &crate::kinds())).await;
                    match loaded {
                        Ok(Ok(p)) => {
                            // Never wait here: this task must stay free to hear SIGTERM.
                            if control.try_send(Control::Reload(Box::new(p))).is_err() {
                                tracing::warn!("reloads are arriving faster than they are applied; send SIGHUP again once this one is done");
                            }
                        }
                        Ok(Err(e)) => {
                            metrics.config_last_reload_success.set(0.0);
                            for line in e.lines() {
                                tracing::error!(problem = %line, "reload rejected; keeping the previous policy");
                            }
                        }
                        Err(e) => {
                            metrics.config_last_reload_success.set(0.0);
                            tracing::error!(error = %e, "reload failed; keeping the previous policy");
                        }
                    }
                    continue;
                }
            }
            if cancel.is_cancelled() {
                tracing::warn!(
                    "second signal: exiting now; the journal resumes any interrupted rotation"
                );
                std::process::exit(0);
            }
            tracing::info!("shutdown requested");
            systemd::stopping();
            cancel.cancel();
        }
    });
}
