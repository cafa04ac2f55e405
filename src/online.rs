//! `check --online`: prove each issuer credential and read each sink target, changing nothing.

use crate::daemon::{build_rotator, Shared};
use crate::journal::Journal;
use crate::policy::Policy;
use crate::sink::Content;

/// Prints one line per probe; returns whether all passed.
pub async fn check(policy: &Policy) -> bool {
    // The daemon's own construction (credentials from env, file or a sink record), with a journal it never writes.
    let shared = Shared::for_command(Journal::open_read_only(&policy.daemon.state_dir));
    let rotator = build_rotator(policy, &shared).await;
    let mut ok = true;
    for (name, built) in &rotator.sinks {
        if let Err(why) = built {
            ok = false;
            println!("sink {name}: FAILED: {why}");
        }
    }
    for (name, built) in &rotator.issuers {
        let result = match built {
            Ok(i) => i.probe().await.map_err(|e| e.message),
            Err(why) => Err(why.clone()),
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
        // SPEC §10: an organization policy that caps token lifetimes is read and compared with `lifetime`.
        if let Some(Ok(issuer)) = rotator.issuers.get(&*t.issuer) {
            let render = crate::policy::duration::render;
            match issuer.lifetime_cap(t).await {
                Ok(Some(cap)) => match t.schedule.lifetime {
                    Some(l) if l > cap.max => {
                        ok = false;
                        println!(
                            "token {}: FAILED: `lifetime` ({}) is above {}; {}",
                            t.name,
                            render(l),
                            cap.describe(),
                            cap.advice(&t.name, None)
                        );
                    }
                    _ => println!(
                        "token {}: ok (lifetime within {}, {})",
                        t.name,
                        cap.what,
                        render(cap.max)
                    ),
                },
                Ok(None) => {}
                Err(e) => println!(
                    "token {}: cannot read the organization's token-lifetime policy ({}); not checked",
                    t.name, e.message
                ),
            }
        }
        for st in &t.sinks {
            let Some(Ok(s)) = rotator.sinks.get(&*st.sink) else {
                continue;
            };
            match s.probe(&st.target).await {
                Ok(o) => {
                    let what = match &o.content {
                        Content::Absent if st.target.is_delivery() => {
                            "not written yet; writable as far as a read can tell".to_string()
                        }
                        Content::Absent => "no record yet".to_string(),
                        Content::Record(r) => format!("holds token {}", r.token_id),
                        Content::Garbage(why) => format!("holds something else ({why})"),
                        Content::Delivered(h) => format!("delivery target; {}", h.describe()),
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
