//! `plan`, `status` and `rotate`: the operator's view of the tokens and the way to force a rotation.

use serde::Serialize;

use crate::daemon::control::{self, Request, Response, RotateResult};
use crate::daemon::{build_rotator, build_sinks_only, open_journal, SetupError, Shared};
use crate::journal::Journal;
use crate::policy::Policy;
use crate::record::rfc3339;

#[derive(Serialize)]
struct PlanRow {
    token: String,
    issuer: String,
    #[serde(rename = "type")]
    token_type: String,
    current_token_id: Option<String>,
    created_at: Option<String>,
    expires_at: Option<String>,
    stored_everywhere: bool,
    next_rotation: Option<String>,
    reason: String,
    notes: Vec<String>,
    error: Option<String>,
}

fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let last = cells.len() - 1;
        cells
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                if i == last {
                    c
                } else {
                    format!("{c:<w$}", w = widths[i])
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out.push('\n');
        out.push_str(&line(r.clone()));
    }
    out
}

/// `plan`: reads the sinks and the journal, computes each token's next rotation and why. Changes nothing.
/// Returns whether every token could be inspected.
pub async fn plan(policy: &Policy, json: bool) -> bool {
    let journal = match open_journal(policy, true) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("token-rotator: {e}");
            return false;
        }
    };
    let rotator = build_sinks_only(policy, &Shared::for_command(journal)).await;
    let now = crate::clock::now();
    let mut rows = Vec::new();
    let mut ok = true;
    for t in policy.tokens.values() {
        let row = match rotator.inspect(t, now).await {
            Ok(i) => PlanRow {
                token: t.name.to_string(),
                issuer: t.issuer.to_string(),
                token_type: t.kind.type_name().into(),
                current_token_id: i.current.as_ref().map(|c| c.token_id.clone()),
                created_at: i.current.as_ref().map(|c| rfc3339(c.created_at)),
                expires_at: i.current.as_ref().and_then(|c| c.expires_at).map(rfc3339),
                stored_everywhere: i.stored_everywhere,
                next_rotation: i
                    .due
                    .at
                    .map(|at| if at <= now { "now".into() } else { rfc3339(at) }),
                reason: i.due.reason.to_string(),
                notes: i.notes,
                error: None,
            },
            Err(e) => {
                ok = false;
                PlanRow {
                    token: t.name.to_string(),
                    issuer: t.issuer.to_string(),
                    token_type: t.kind.type_name().into(),
                    current_token_id: None,
                    created_at: None,
                    expires_at: None,
                    stored_everywhere: false,
                    next_rotation: None,
                    reason: "cannot read the sinks".into(),
                    notes: Vec::new(),
                    error: Some(e.to_string()),
                }
            }
        };
        rows.push(row);
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).expect("plan rows serialise")
        );
    } else {
        let cells: Vec<Vec<String>> = rows
            .iter()
            .map(|r| {
                let mut reason = r
                    .error
                    .clone()
                    .map(|e| format!("ERROR: {e}"))
                    .unwrap_or_else(|| r.reason.clone());
                for n in &r.notes {
                    reason.push_str(&format!("; {n}"));
                }
                vec![
                    r.token.clone(),
                    r.issuer.clone(),
                    r.token_type.clone(),
                    r.current_token_id.clone().unwrap_or_else(|| "-".into()),
                    r.expires_at.clone().unwrap_or_else(|| "-".into()),
                    r.next_rotation.clone().unwrap_or_else(|| "never".into()),
                    reason,
                ]
            })
            .collect();
        println!(
            "{}",
            table(
                &[
                    "TOKEN",
                    "ISSUER",
                    "TYPE",
                    "CURRENT",
                    "EXPIRES",
                    "NEXT ROTATION",
                    "REASON"
                ],
                &cells
            )
        );
    }
    ok
}

/// `status`: asks the running daemon. Returns `None` (and says why) when no daemon answers.
pub async fn status(policy: &Policy, json: bool) -> Option<bool> {
    let answer = control::request(
        &policy.daemon.state_dir,
        &Request::Status,
        std::time::Duration::from_secs(10),
    )
    .await;
    let tokens = match answer {
        Ok(Some(Response::Status { tokens })) => tokens,
        Ok(Some(Response::Error { error })) => {
            eprintln!("token-rotator: the daemon answered: {error}");
            return Some(false);
        }
        Ok(Some(_)) => {
            eprintln!("token-rotator: unexpected answer from the daemon");
            return Some(false);
        }
        Ok(None) => {
            eprintln!(
                "token-rotator: no daemon is running on {} (no control socket); `token-rotator plan` shows what the sinks hold",
                policy.daemon.state_dir.display()
            );
            return None;
        }
        Err(e) => {
            eprintln!("token-rotator: {e}");
            return None;
        }
    };
    let now = crate::clock::now();
    let all_ready = tokens.iter().all(|t| t.is_ready(now));
    if json {
        #[derive(Serialize)]
        struct Row<'a> {
            ready: bool,
            unready_reason: Option<String>,
            #[serde(flatten)]
            status: &'a crate::status::TokenStatus,
        }
        let rows: Vec<Row> = tokens
            .iter()
            .map(|t| Row {
                ready: t.is_ready(now),
                unready_reason: t.unready_reason(now),
                status: t,
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).expect("status rows serialise")
        );
    } else {
        let cells: Vec<Vec<String>> = tokens
            .iter()
            .map(|t| {
                vec![
                    t.name.to_string(),
                    if t.is_ready(now) {
                        "yes".into()
                    } else {
                        "NO".into()
                    },
                    t.current
                        .as_ref()
                        .map(|c| c.token_id.clone())
                        .unwrap_or_else(|| "-".into()),
                    t.current
                        .as_ref()
                        .and_then(|c| c.expires_at)
                        .map(rfc3339)
                        .unwrap_or_else(|| "-".into()),
                    t.next_due.map(rfc3339).unwrap_or_else(|| "-".into()),
                    t.consecutive_failures.to_string(),
                    t.unready_reason(now)
                        .unwrap_or_else(|| t.next_reason.to_string()),
                ]
            })
            .collect();
        println!(
            "{}",
            table(
                &[
                    "TOKEN",
                    "READY",
                    "CURRENT",
                    "EXPIRES",
                    "NEXT ROTATION",
                    "FAILURES",
                    "DETAIL"
                ],
                &cells
            )
        );
    }
    Some(all_ready)
}

/// Why `rotate` could not run at all (a token that failed to rotate is a result, not this).
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error("no token named {name} in {policy}")]
    UnknownToken { name: String, policy: String },
    #[error("{0}")]
    Control(String),
    #[error("the daemon answered: {0}")]
    Daemon(String),
    #[error("unexpected answer from the daemon")]
    Unexpected,
    #[error("a daemon holds the lock on {0} but its control socket does not answer")]
    Unresponsive(String),
    #[error(transparent)]
    Setup(#[from] SetupError),
}

/// `rotate`: hands the request to a running daemon, else rotates here under the `state_dir` lock.
pub async fn rotate(policy: &Policy, names: Vec<String>, all: bool) -> Result<bool, RotateError> {
    for n in &names {
        if !policy.tokens.contains_key(n.as_str()) {
            return Err(RotateError::UnknownToken {
                name: n.clone(),
                policy: policy.path.display().to_string(),
            });
        }
    }
    let req = Request::Rotate {
        tokens: names.clone(),
        all,
    };
    let results = match control::request(&policy.daemon.state_dir, &req, control::ROTATE_TIMEOUT)
        .await
        .map_err(RotateError::Control)?
    {
        Some(Response::Rotate { results }) => {
            eprintln!("token-rotator: handed to the running daemon");
            results
        }
        Some(Response::Error { error }) => return Err(RotateError::Daemon(error)),
        Some(_) => return Err(RotateError::Unexpected),
        None => {
            if Journal::is_locked(&policy.daemon.state_dir) {
                return Err(RotateError::Unresponsive(
                    policy.daemon.state_dir.display().to_string(),
                ));
            }
            let shared = Shared::for_command(open_journal(policy, false)?);
            let rotator = build_rotator(policy, &shared).await;
            let selected: Vec<_> = policy
                .tokens
                .values()
                .filter(|t| all || names.iter().any(|n| **n == *t.name))
                .collect();
            let mut results = Vec::new();
            for t in selected {
                let r = rotator
                    .tend(
                        t,
                        true,
                        std::time::Duration::ZERO,
                        None,
                        crate::clock::now(),
                    )
                    .await;
                results.push(match r {
                    Ok(tended) => RotateResult {
                        token: t.name.to_string(),
                        ok: true,
                        message: format!(
                            "rotated; current token {}",
                            tended
                                .current
                                .map(|c| c.token_id)
                                .unwrap_or_else(|| "?".into())
                        ),
                    },
                    Err(f) => RotateResult {
                        token: t.name.to_string(),
                        ok: false,
                        message: f.error.to_string(),
                    },
                });
            }
            if !shared.journal.flush_before_exit().await {
                results.push(RotateResult {
                    token: "(journal)".into(),
                    ok: false,
                    message: "a journal entry could not be written; see the log".into(),
                });
            }
            results
        }
    };
    let mut ok = true;
    for r in &results {
        ok &= r.ok;
        println!(
            "{}: {}: {}",
            r.token,
            if r.ok { "ok" } else { "FAILED" },
            r.message
        );
    }
    Ok(ok)
}
