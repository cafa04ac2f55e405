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
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let board = board.clone();
            let rotate_tx = rotate_tx.clone();
            tokio::spawn(async move {
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
    reader.read_line(&mut line).await?;
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
                match rx.await {
                    Ok(results) => Response::Rotate { results },
                    Err(_) => Response::Error {
                        error: "the daemon stopped before the rotation finished".into(),
                    },
                }
            }
        }
    };
    let mut out = serde_json::to_vec(&response).expect("responses serialise");
    out.push(b'\n');
    write.write_all(&out).await?;
    write.shutdown().await
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
