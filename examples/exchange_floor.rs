//! The floor under the daemon's CPU per rotation (BENCHMARKS.md, issue 19): what one bare HTTP exchange and one
//! durable append cost this process, with the daemon's own HTTP client (`token_rotator::http::client`) on the
//! daemon's runtime (tokio, current thread), against the benchmark's OpenBao. No rotation logic, no JSON of ours,
//! no journal format: whatever a rotation costs above `exchanges × exchange + writes × write` is ours.
//!
//! `bench/run.py` runs it after the daemon's rotation phase and prints the figures next to the daemon's:
//!
//! ```sh
//! cargo build --release --locked --example exchange_floor
//! target/release/examples/exchange_floor --vault http://127.0.0.1:8200 --vault-token-file F --dir D
//! ```
//!
//! Each figure is measured twice: chained (each exchange sent when the previous answer arrives, as a rotation's
//! sink steps follow one another; the process sleeps only while it awaits an answer), and paced at `--rate` per
//! second (a timer between exchanges, as the issuer's pacer spaces a rotation's create and identity probe: each
//! then starts from an idle process, which costs one more wake-up). One JSON object per line on stdout.

use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};

struct Args {
    vault: String,
    token: SecretString,
    dir: std::path::PathBuf,
    count: u32,
    rate: f64,
}

fn args() -> Result<Args, String> {
    let mut vault = None;
    let mut token_file = None;
    let mut dir = None;
    let mut count = 2000;
    let mut rate: f64 = 700.0;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--vault" => vault = Some(value),
            "--vault-token-file" => token_file = Some(value),
            "--dir" => dir = Some(value),
            "--count" => count = value.parse().map_err(|e| format!("--count: {e}"))?,
            "--rate" => rate = value.parse().map_err(|e| format!("--rate: {e}"))?,
            // Not echoed: a value passed by mistake in a flag's place could be a secret.
            _ => {
                return Err(
                    "unknown argument (see the usage at the top of examples/exchange_floor.rs)"
                        .into(),
                )
            }
        }
    }
    if count == 0 {
        return Err("--count must be at least 1".into());
    }
    if !(rate.is_finite() && rate >= 1.0) {
        return Err("--rate must be at least 1 per second".into());
    }
    let token_file = token_file.ok_or("--vault-token-file is required")?;
    let token = std::fs::read_to_string(&token_file)
        .map_err(|e| format!("cannot read {token_file}: {e}"))?;
    Ok(Args {
        vault: vault.ok_or("--vault is required")?,
        token: SecretString::from(token.trim().to_owned()),
        dir: dir.ok_or("--dir is required")?.into(),
        count,
        rate,
    })
}

/// CPU time of every thread of this process so far, in nanoseconds (`/proc/self/task/*/schedstat`: exact, where
/// `/proc/self/stat` counts clock ticks). The runtime has one thread and nothing here starts another (the address
/// is an IP literal: no resolver thread), so no thread's time is lost by its exit. An error where the kernel does
/// not keep these figures: no figure rather than a wrong one.
fn cpu_ns() -> Result<u64, String> {
    let tasks =
        std::fs::read_dir("/proc/self/task").map_err(|e| format!("/proc/self/task: {e}"))?;
    let mut total = 0u64;
    for task in tasks {
        let path = task.map_err(|e| e.to_string())?.path().join("schedstat");
        let s = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        total += s
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or_else(|| format!("{}: no CPU time in it", path.display()))?;
    }
    Ok(total)
}

/// Runs `one` `count` times, chained (`pace` none) or paced, and prints its CPU and wall time per call.
async fn measure<F, Fut>(
    what: &str,
    count: u32,
    pace: Option<Duration>,
    mut one: F,
) -> Result<(), String>
where
    F: FnMut(u32) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let mut next = tokio::time::Instant::now();
    let (cpu0, wall0) = (cpu_ns()?, Instant::now());
    for i in 0..count {
        if let Some(every) = pace {
            // Never behind: a late exchange does not make the next ones back to back.
            next = (next + every).max(tokio::time::Instant::now());
            tokio::time::sleep_until(next).await;
        }
        one(i).await.map_err(|e| format!("{what} #{i}: {e}"))?;
    }
    let cpu = cpu_ns()?.saturating_sub(cpu0);
    let wall = wall0.elapsed();
    println!(
        "{{\"what\":\"{what}\",\"mode\":\"{}\",\"count\":{count},\"cpu_us\":{:.1},\"wall_us\":{:.1}}}",
        if pace.is_some() { "paced" } else { "chained" },
        cpu as f64 / 1e3 / f64::from(count),
        wall.as_secs_f64() * 1e6 / f64::from(count),
    );
    Ok(())
}

async fn exchange(req: reqwest::RequestBuilder, want: reqwest::StatusCode) -> Result<(), String> {
    let resp = req
        .send()
        .await
        .map_err(|e| token_rotator::http::reason(&e))?;
    let status = resp.status();
    token_rotator::http::read_capped(resp)
        .await
        .map_err(|e| token_rotator::http::reason(&e))?;
    if status != want {
        return Err(format!("answered {status}, expected {want}"));
    }
    Ok(())
}

async fn run(a: Args) -> Result<(), String> {
    let client = token_rotator::http::client(None).map_err(|e| e.to_string())?;
    // Keys of this run only: the check-and-set creates below would find a previous run's keys taken.
    let pid = std::process::id();
    let kv = |path: &str| format!("{}/v1/secret/data/exchange-floor-{pid}/{path}", a.vault);
    let token = a.token.expose_secret();
    let record = serde_json::json!({ "data": { "token": "x".repeat(90), "expires_at": "2027-01-04T14:50:07Z" } });
    let ok = reqwest::StatusCode::OK;
    let pace = Duration::from_secs_f64(1.0 / a.rate);
    // Warm: one connection in the pool, the record to read.
    exchange(
        client
            .post(kv("read"))
            .header("X-Vault-Token", token)
            .json(&record),
        ok,
    )
    .await?;
    for (mode, pace) in [("chained", None), ("paced", Some(pace))] {
        measure("kv_read", a.count, pace, |_| {
            exchange(client.get(kv("read")).header("X-Vault-Token", token), ok)
        })
        .await?;
        // A new key each time with `cas = 0`: the check-and-set create the sinks make.
        measure("kv_cas_write", a.count, pace, |i| {
            let mut body = record.clone();
            body["options"] = serde_json::json!({ "cas": 0 });
            exchange(
                client
                    .post(kv(&format!("{mode}-{i}")))
                    .header("X-Vault-Token", token)
                    .json(&body),
                ok,
            )
        })
        .await?;
    }
    // A durable append: a record's worth of bytes, then fdatasync (the journal's log; no group commit here).
    let path = a.dir.join("exchange-floor.log");
    let file = std::sync::Arc::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?,
    );
    let line = vec![b'x'; 300];
    let writes = a.count.min(500);
    for pace in [None, Some(pace)] {
        measure("durable_append", writes, pace, |_| {
            let (file, line) = (file.clone(), line.clone());
            async move {
                use std::io::Write;
                (&*file)
                    .write_all(&line)
                    .and_then(|()| file.sync_data())
                    .map_err(|e| e.to_string())
            }
        })
        .await?;
    }
    let _ = std::fs::remove_file(&path);
    Ok(())
}

fn main() {
    let outcome = args().and_then(|a| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?
            .block_on(run(a))
    });
    if let Err(e) = outcome {
        eprintln!("exchange_floor: {e}");
        std::process::exit(1);
    }
}
