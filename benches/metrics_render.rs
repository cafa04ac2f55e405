//! `/metrics` render time in-process, without the HTTP transfer: `cargo bench --bench metrics_render`.
//! Prints the median and the fastest of 30 renders at 100, 1,000 and 10,000 tokens (BENCHMARKS.md).

use std::time::{Duration, Instant};

use token_rotator::metrics::Metrics;
use token_rotator::status::{StatusBoard, TokenStatus};

fn main() {
    for n in [100usize, 1_000, 10_000] {
        let metrics = Metrics::new();
        let board = StatusBoard::new();
        let now = token_rotator::clock::now();
        for i in 0..n {
            let (issuer, kind) = (
                format!("org{}", i % 4 + 1),
                if i % 2500 == 0 {
                    "organization"
                } else {
                    "team"
                },
            );
            let name = format!("{issuer}-team-{i:05}");
            board.add(TokenStatus::healthy(
                &name,
                &issuer,
                kind,
                &format!("at-{i}"),
                now,
            ));
            metrics.init_token(&name);
            metrics.count_rotation(&name, true);
        }
        let mut times: Vec<Duration> = Vec::new();
        let mut size = 0;
        for _ in 0..30 {
            let t = Instant::now();
            let text = metrics.render(&board);
            times.push(t.elapsed());
            size = text.len();
        }
        times.sort();
        println!(
            "{n:>6} tokens: render median {:>7.2} ms, fastest {:>7.2} ms, {:>5} KiB",
            times[times.len() / 2].as_secs_f64() * 1000.0,
            times[0].as_secs_f64() * 1000.0,
            size / 1024
        );
    }
}
