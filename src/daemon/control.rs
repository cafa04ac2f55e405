//! The control socket (`state_dir/control.sock`, mode 0600): `status` and `rotate` talk to a running daemon
//! through it. One JSON request line, one JSON response line.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use crate::status::{StatusBoard, TokenStatus};

/// A rotation requested through the socket may take this long before the client gives up waiting.
pub const ROTATE_TIMEOUT: Duration = Duration::from_secs(600);
const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Connections served at once; more wait in the socket's backlog (the socket is 0600: only the daemon's user).
const MAX_CONNECTIONS: usize = 32;
/// The request line must arrive within this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("control.sock")
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Status,
    Rotate { tokens: Vec<String>, all: bool },
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RotateResult {
    pub token: String,
    pub ok: bool,
    pub message: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Response {
    Status { tokens: Vec<TokenStatus> },
    Rotate { results: Vec<RotateResult> },
    Error { error: String },
}

/// A rotate request handed to the scheduler loop.
#[derive(Debug)]
pub struct RotateRequest {
    pub tokens: Vec<String>,
    pub all: bool,
    pub reply: oneshot::Sender<Vec<RotateResult>>,
}

/// Binds the socket (replacing a stale one: the caller holds the `state_dir` lock) and serves it.
pub fn serve(
    state_dir: &Path,
    board: StatusBoard,
    rotate_tx: mpsc::Sender<RotateRequest>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    use std::os::unix::fs::PermissionsExt;
    let path = socket_path(state_dir);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let places = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    Ok(tokio::spawn(async move {
        let mut failures: u32 = 0;
        loop {
            let Ok(place) = places.clone().acquire_owned().await else {
                return;
            };
            let stream = match listener.accept().await {
                Ok((stream, _)) => {
                    failures = 0;
                    stream
                }
                Err(e) => {
                    // No descriptors left (EMFILE) answers at once, every time: wait instead of spinning a core.
                    failures = failures.saturating_add(1);
                    if failures == 1 || failures.is_power_of_two() {
                        tracing::warn!(error = %e, failures, "accepting on the control socket failed; backing off");
                    }
                    tokio::time::sleep(super::server::accept_backoff(failures)).await;
                    continue;
                }
            };
            let board = board.clone();
            let rotate_tx = rotate_tx.clone();
            tokio::spawn(async move {
                let _place = place;
                if let Err(e) = handle(stream, board, rotate_tx).await {
                    tracing::debug!(error = %e, "control connection failed");
                }
            });
        }
    }))
}

async fn handle(
    stream: UnixStream,
    board: StatusBoard,
    rotate_tx: mpsc::Sender<RotateRequest>,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read).take(MAX_REQUEST_BYTES as u64);
    tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line))
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "no request line in time")
        })??;
    let response = match serde_json::from_str::<Request>(&line) {
        Err(e) => Response::Error {
            error: format!("bad request: {e}"),
        },
        Ok(Request::Status) => Response::Status {
            tokens: board.snapshot(),
        },
        Ok(Request::Rotate { tokens, all }) => {
            let (reply, rx) = oneshot::channel();
            if rotate_tx
                .send(RotateRequest { tokens, all, reply })
                .await
                .is_err()
            {
                Response::Error {
                    error: "the daemon is shutting down".into(),
                }
            } else {
                match tokio::time::timeout(ROTATE_TIMEOUT, rx).await {
                    Ok(Ok(results)) => Response::Rotate { results },
                    Ok(Err(_)) => Response::Error {
                        error: "the daemon stopped before the rotation finished".into(),
                    },
                    Err(_) => Response::Error {
                        error: format!(
                            "the rotation did not finish within {}s; `status` shows how it stands",
                            ROTATE_TIMEOUT.as_secs()
                        ),
                    },
                }
            }
        }
    };
    let mut out = serde_json::to_vec(&response).expect("responses serialise");
    out.push(b'\n');
    // A client that does not read its answer does not hold a place for long.
    tokio::time::timeout(REQUEST_TIMEOUT, async {
        write.write_all(&out).await?;
        write.shutdown().await
    })
    .await
    .map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the answer was not read in time",
        )
    })?
}

/// Sends one request to the daemon of `state_dir`. `Ok(None)` when no daemon is listening.
pub async fn request(
    state_dir: &Path,
    req: &Request,
    timeout: Duration,
) -> Result<Option<Response>, String> {
    let path = socket_path(state_dir);
    let stream = match UnixStream::connect(&path).await {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(format!("cannot connect to {}: {e}", path.display())),
    };
    let exchange = async {
        let (read, mut write) = stream.into_split();
        let mut line = serde_json::to_vec(req).expect("requests serialise");
        line.push(b'\n');
        write.write_all(&line).await.map_err(|e| e.to_string())?;
        let mut answer = String::new();
        BufReader::new(read)
            .read_line(&mut answer)
            .await
            .map_err(|e| e.to_string())?;
        serde_json::from_str::<Response>(&answer)
            .map_err(|e| format!("bad answer from the daemon: {e}"))
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(r) => r.map(Some),
        Err(_) => Err(format!(
            "no answer from the daemon within {}s",
            timeout.as_secs()
        )),
    }
}
