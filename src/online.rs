//! `check --online`: prove each issuer credential and read each sink target, changing nothing.

use std::sync::Arc;

use crate::metrics::Metrics;
use crate::policy::Policy;

/// Prints one line per probe; returns whether all passed.
pub async fn check(policy: &Policy) -> bool {
    let metrics = Arc::new(Metrics::new());
    let mut ok = true;
    let mut sinks = std::collections::HashMap::new();
    for (name, cfg) in &policy.sinks {
        match crate::sink::build(cfg).await {
            Ok(s) => {
                sinks.insert(name.clone(), s);
            }
            Err(e) => {
                ok = false;
                println!("sink {name}: FAILED: {}", e.message);
            }
        }
    }
    for (name, cfg) in &policy.issuers {
        let cred = match &cfg.token {
            crate::secret::SecretRef::Sink { sink, target } => match sinks.get(sink) {
                Some(s) => match s.read(target).await {
                    Ok(o) => o
                        .record()
                        .map(|r| r.token.clone())
                        .ok_or_else(|| format!("no record at {sink}:{target}")),
                    Err(e) => Err(e.to_string()),
                },
                None => Err(format!("sink {sink} is unusable")),
            },
            other => other.resolve_local().map_err(|e| e.to_string()),
        };
        let result = match cred {
            Ok(cred) => match crate::issuer::build(cfg, cred, metrics.clone()) {
                Ok(i) => i.probe().await.map_err(|e| e.message),
                Err(e) => Err(e.message),
            },
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => println!("issuer {name}: ok (credential accepted)"),
            Err(e) => {
                ok = false;
                println!("issuer {name}: FAILED: {e}");
            }
        }
    }
    for t in policy.tokens.values() {
        for st in &t.sinks {
            let Some(s) = sinks.get(&st.sink) else {
                continue;
            };
            match s.read(&st.target).await {
                Ok(o) => {
                    let what = match &o.content {
                        crate::sink::Content::Absent => "no record yet".to_string(),
                        crate::sink::Content::Record(r) => format!("holds token {}", r.token_id),
                        crate::sink::Content::Garbage(why) => {
                            format!("holds something else ({why})")
                        }
                    };
                    println!("token {} → {st}: ok ({what})", t.name);
                }
                Err(e) => {
                    ok = false;
                    println!("token {} → {st}: FAILED: {e}", t.name);
                }
            }
        }
    }
    ok
}
