//! sd_notify: READY once the policy is loaded and `listen` is bound, watchdog pings, STOPPING on shutdown.
//! Without `NOTIFY_SOCKET` every call is a no-op.

pub fn ready() {
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    if let Some(usec) = watchdog_usec() {
        // Ping at half the watchdog interval.
        let every = std::time::Duration::from_micros(usec / 2);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
            }
        });
    }
}

pub fn stopping() {
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
}

/// `WATCHDOG_USEC`, when the watchdog applies to this process: `WATCHDOG_PID`, if set, must be ours
/// (sd_watchdog_enabled(3); the sd-notify crate insists on the PID being set, systemd does not).
fn watchdog_usec() -> Option<u64> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    match std::env::var("WATCHDOG_PID") {
        Ok(pid) if pid.parse::<u32>().ok() != Some(std::process::id()) => None,
        _ => (usec > 0).then_some(usec),
    }
}
