//! Deterministic simulation of the rotation engine (SPEC §5, invariants 1–14).
//!
//! The real scheduler ([`Daemon`]), rotator, issuer clients (their one transport and retry rule) and journal run
//! against the in-repo emulators of HCP Terraform and Pulumi Cloud (driven in memory, no sockets) and KV models of
//! the secret stores, on tokio's paused clock, single-threaded, with every random choice drawn from the seed. A
//! seeded schedule injects what the world does to a daemon: a create that commits and loses its answer, 5xx, 429
//! with a reset, timeouts, answers cut off, refused identity probes, sinks that are down or slow or lose an
//! answer, concurrent writers (check-and-set conflicts), journal writes failing with EMFILE or ENOSPC, crashes at
//! arbitrary points and restarts, policy reloads that drop a token and add it back, tokens revoked behind the
//! daemon's back, wall-clock jumps. After every step the invariants are checked (`world.rs`); after the faults stop
//! and the daemon settles, the end state is checked.
//!
//! Learned from FoundationDB's and TigerBeetle's simulators: one thread, simulated time, seeded everything, and a
//! failing seed is a replayable bug. A failing seed prints the command that replays it:
//! `SIM_SEED=<n> SIM_LOG=1 cargo test --test sim replay -- --ignored --nocapture`.
//! `SIM_SEEDS` (default 1000) and `SIM_FIRST` (default 0) choose the seeds of the main test.

mod cluster;
mod faults;
mod rules;
mod sinks;
mod wire;
mod world;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use futures_util::FutureExt;
use rand::seq::IndexedRandom;
use rand::Rng;
use token_rotator::daemon::{Control, Daemon, Inputs, Shared};
use token_rotator::journal::{Journal, MemoryStore};
use token_rotator::metrics::Metrics;
use token_rotator::policy::{self, Policy};
use token_rotator::retry::PacerRegistry;
use token_rotator::secret::ExposeSecret;
use token_rotator::status::{StatusBoard, TokenStatus};
use token_rotator_emulators::pulumi::PulumiEmulator;
use token_rotator_emulators::tfc::TfcEmulator;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use faults::{Faults, JournalFault};
use sinks::SimBackends;
use world::{Facts, Inner, Live, Service, World};

/// How long faults are injected, then how long the daemon gets to settle (SPEC §5.4: backoff ≤ 15 min, a
/// permanent failure is retried after 1 h).
const FAULT_PHASE: Duration = Duration::from_secs(10 * 3600);
const SETTLE_LIMIT: Duration = Duration::from_secs(6 * 3600);
const TICK: Duration = Duration::from_secs(60);

/// Which of the world's policy tokens a run has, and their schedules (the time-rule tests narrow them down).
#[derive(Clone)]
pub struct Spec {
    /// `None`: every token.
    pub only: Option<Vec<&'static str>>,
    /// The schedule keys of every token but the agent token.
    pub schedule: String,
    /// The agent token's schedule keys.
    pub agent_schedule: String,
    /// `[daemon] drift_check`.
    pub drift_check: &'static str,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            only: None,
            schedule:
                "lifetime = \"2h\"\nrotate_before = \"40m\"\njitter = \"5m\"\ngrace = \"10m\""
                    .into(),
            agent_schedule: "every = \"90m\"\njitter = \"5m\"\ngrace = \"10m\"".into(),
            drift_check: "10m",
        }
    }
}

fn policy_text(dir: &std::path::Path, team1: &str, team2: &str, pool: &str, spec: &Spec) -> String {
    let notify = format!(
        "notify = [{{ exec = [\"/usr/bin/true\"] }}, {{ webhook = \"https://hooks.example/rotated\", secret = {{ file = \"{}\" }} }}]",
        dir.join("hook-secret").display()
    );
    let token = |name: &str, body: &str, sinks: &str| {
        if spec.only.as_ref().is_some_and(|o| !o.contains(&name)) {
            return String::new();
        }
        // Every token tells its consumers, through a program and a webhook (run by the simulation's model).
        format!("\n[tokens.{name}]\n{body}\nsinks = [{sinks}]\n{notify}\n")
    };
    let kv = |sink: &str, path: &str| format!("{{ sink = \"{sink}\", path = \"{path}\" }}");
    let schedule = spec.schedule.as_str();
    let agent_schedule = spec.agent_schedule.as_str();
    let mut p = format!(
        r#"[daemon]
state_dir = "{state}"
listen = "127.0.0.1:1"
drift_check = "{drift}"

[issuers.tfc]
kind = "tfe"
address = "http://127.0.0.1:9"
token = {{ file = "{tfc}" }}

[issuers.pulumi]
kind = "pulumi"
address = "http://127.0.0.1:9"
token = {{ file = "{pulumi}" }}

[sinks.kv-a]
kind = "file"
directory = "/nonexistent/kv-a"

[sinks.kv-b]
kind = "file"
directory = "/nonexistent/kv-b"

# Delivery targets (SPEC §11): write-only, modelled like the real ones (a TFC variable names the token id it
# holds; a GitHub secret shows only when it was written).
[sinks.vars]
kind = "tfe-variable"
issuer = "tfc"

[sinks.gh]
kind = "github-actions"
token = {{ file = "{gh}" }}
"#,
        gh = dir.join("gh-token").display(),
        state = dir.join("state").display(),
        tfc = dir.join("tfc-admin").display(),
        pulumi = dir.join("pulumi-admin").display(),
        drift = spec.drift_check,
    );
    p += &token(
        "org",
        &format!("issuer = \"tfc\"\ntype = \"organization\"\norganization = \"alpha\"\n{schedule}"),
        &format!(
            "{}, {}, {{ sink = \"vars\", workspace_id = \"ws-sim\", key = \"TFE_TOKEN\", category = \"env\" }}",
            kv("kv-a", "org"),
            kv("kv-b", "org")
        ),
    );
    // Two policy tokens on one team: the orphan sweep of one must never touch the other's.
    // team-a's old token goes once a consumer uses the new one (the daemon's own probe is not a use).
    for (name, sink, extra, delivery) in [
        ("team-a", "kv-a", "\nrevoke_after_use = true", ""),
        (
            "team-b",
            "kv-b",
            "",
            ", { sink = \"gh\", repository = \"acme/infra\", name = \"TF_API_TOKEN\" }",
        ),
    ] {
        p += &token(
            name,
            &format!("issuer = \"tfc\"\ntype = \"team\"\nteam_id = \"{team1}\"\ndescription = \"ci {name}\"\n{schedule}{extra}"),
            &format!("{}{delivery}", kv(sink, name)),
        );
    }
    p += &token(
        "legacy",
        &format!("issuer = \"tfc\"\ntype = \"team-legacy\"\nteam_id = \"{team2}\"\n{schedule}"),
        &kv("kv-b", "legacy"),
    );
    p += &token(
        "agent",
        &format!("issuer = \"tfc\"\ntype = \"agent\"\nagent_pool_id = \"{pool}\"\n{agent_schedule}\nrevoke_after_use = true"),
        &kv("kv-a", "agent"),
    );
    p += &token(
        "pulumi",
        &format!("issuer = \"pulumi\"\ntype = \"organization\"\norganization = \"pacme\"\nname_prefix = \"sim-ci\"\n{schedule}"),
        &format!(
            "{}, {}, {{ sink = \"gh\", organization = \"acme\", visibility = \"private\", name = \"PULUMI_ACCESS_TOKEN\" }}",
            kv("kv-a", "pulumi"),
            kv("kv-b", "pulumi")
        ),
    );
    p += &token(
        "pulumi-team",
        &format!("issuer = \"pulumi\"\ntype = \"team\"\norganization = \"pacme\"\nteam = \"devs\"\nname_prefix = \"sim-team\"\n{schedule}"),
        &kv("kv-b", "pulumi-team"),
    );
    p += &token(
        "pulumi-personal",
        &format!(
            "issuer = \"pulumi\"\ntype = \"personal\"\nname_prefix = \"sim-personal\"\n{schedule}"
        ),
        &kv("kv-a", "pulumi-personal"),
    );
    p
}

/// One run of the daemon (until a crash or the end).
struct Incarnation {
    task: JoinHandle<()>,
    control: mpsc::Sender<Control>,
    rotate: mpsc::Sender<token_rotator::daemon::control::RotateRequest>,
    /// In cluster mode: this engine's fence, partition switch and lease keeper.
    member: Option<cluster::Member>,
    live: Live,
}

fn start_daemon(world: &Arc<World>) -> Incarnation {
    let inc = start_engine(world, None);
    world.set_live(Some(inc.live.clone()));
    inc
}

/// A daemon; in cluster mode (`Some((cell, index))`) one engine of two, over the shared lease and journal.
fn start_engine(
    world: &Arc<World>,
    cluster: Option<(&Arc<cluster::LeaseCell>, usize)>,
) -> Incarnation {
    let board = StatusBoard::new();
    for t in world.policy.tokens.values() {
        board.add(TokenStatus::new(
            t.name.clone(),
            t.issuer.clone(),
            t.kind.type_name(),
        ));
    }
    let (control, control_rx) = mpsc::channel(16);
    let (rotate, rotate_rx) = mpsc::channel(4);
    let metrics = Arc::new(Metrics::new());
    let mut member = cluster.map(|(cell, index)| {
        cluster::Member::join(world, cell, index, metrics.clone(), board.clone())
    });
    let journal = match &member {
        Some(m) => m.journal.clone(),
        None => Arc::new(Journal::new(world.store.clone())),
    };
    let live = Live {
        journal: journal.clone(),
        board: board.clone(),
        control: control.clone(),
        metrics: metrics.clone(),
    };
    if let Some(m) = member.as_mut() {
        m.watch(world, live.clone());
    }
    let shared = Shared {
        journal,
        metrics,
        pacers: Arc::new(PacerRegistry::default()),
        backends: Arc::new(SimBackends {
            world: world.clone(),
        }),
        board: Some(board.clone()),
        fence: member.as_ref().map(|m| m.fence.clone()),
    };
    let policy = world.policy.clone();
    // In cluster mode every line an engine logs (its visits are spawned in its span) names the engine.
    let span = match cluster {
        Some((_, index)) => tracing::info_span!("engine", n = index),
        None => tracing::Span::none(),
    };
    let task = tokio::spawn(
        async move {
            let mut d = Daemon::new(policy, shared, board).await;
            d.run_loop(
                Inputs {
                    cancel: CancellationToken::new(),
                    control: control_rx,
                    rotate: rotate_rx,
                },
                false,
            )
            .await;
        }
        .instrument(span),
    );
    Incarnation {
        task,
        control,
        rotate,
        member,
        live,
    }
}

/// `kill -9`: the daemon stops wherever it is (every task dropped at its current await point); what it held in
/// memory (the journal's held writes, pacers, the board) is gone.
async fn crash(world: &World, inc: Incarnation) {
    world.set_live(None);
    world.lock().facts.crashes.push(world::world_now());
    if let Some(m) = &inc.member {
        m.kill();
    }
    inc.task.abort();
    let _ = inc.task.await;
}

/// The world's checks look at the daemon, or in cluster mode at the engine holding the lease: its journal's held
/// writes are the ones that count, and its board is the authoritative one (a standby's view of the records lags by
/// up to `FOLLOW_EVERY`; while nobody holds the lease nothing is checked against a board).
fn show_live(world: &World, engines: &[Option<Incarnation>]) {
    let live = engines.iter().flatten().find(|i| {
        i.member
            .as_ref()
            .is_none_or(|m| m.fence.role() == token_rotator::cluster::Role::Leader)
    });
    world.set_live(live.map(|i| i.live.clone()));
}

enum Event {
    Crash {
        down: Duration,
    },
    Reload {
        drop: Option<String>,
        back_after: Duration,
    },
    RevokeOutside {
        token: String,
        newest: bool,
    },
    /// The operator runs `token-rotator rotate NAME`.
    Rotate {
        token: String,
    },
    Jump {
        by: TimeDelta,
    },
    /// Cluster mode: an engine loses the lease store and the shared journal for a while.
    Partition {
        engine: usize,
        heal_after: Duration,
    },
}

/// Cluster mode: partitions of either engine, merged into the events (drawn after them, so a seed's other events
/// are those of the single-engine run).
fn plan_partitions(world: &World, events: &mut Vec<(Duration, Event)>) {
    let mut inner = world.lock();
    let rng = inner.faults.rng();
    let mut at = Duration::ZERO;
    loop {
        at += Duration::from_millis(rng.random_range(20_000..240_000));
        if at >= FAULT_PHASE {
            break;
        }
        events.push((
            at,
            Event::Partition {
                engine: rng.random_range(0..2),
                heal_after: Duration::from_millis(rng.random_range(1_000..60_000)),
            },
        ));
    }
    events.sort_by_key(|(at, _)| *at);
}

/// Cluster mode: never two fences open at once (SPEC §8.1).
fn check_fences(world: &World, engines: &[Option<Incarnation>]) {
    let open: Vec<usize> = engines
        .iter()
        .enumerate()
        .filter(|(_, e)| {
            e.as_ref()
                .and_then(|e| e.member.as_ref())
                .is_some_and(|m| m.fence.check().is_ok())
        })
        .map(|(i, _)| i)
        .collect();
    if open.len() > 1 {
        world.violate(format!("the fences of engines {open:?} are open at once"));
    }
}

fn plan_events(faults: &mut Faults, names: &[String]) -> Vec<(Duration, Event)> {
    let mut events = Vec::new();
    let p = faults.profile.clone();
    for (mean, kind) in [
        (p.crash_every, 0),
        (p.reload_every, 1),
        (p.revoke_every, 2),
        (p.jump_every, 3),
        (p.rotate_every, 4),
    ] {
        let mut at = Duration::ZERO;
        loop {
            at += faults.next_in(mean);
            if at >= FAULT_PHASE {
                break;
            }
            let rng = faults.rng();
            let event = match kind {
                0 => Event::Crash {
                    down: Duration::from_millis(rng.random_range(0..300_000)),
                },
                1 => Event::Reload {
                    drop: rng
                        .random_bool(0.7)
                        .then(|| names.choose(rng).unwrap().clone()),
                    back_after: Duration::from_millis(rng.random_range(0..90_000)),
                },
                2 => Event::RevokeOutside {
                    token: names.choose(rng).unwrap().clone(),
                    newest: rng.random_bool(0.5),
                },
                3 => Event::Jump {
                    by: TimeDelta::seconds(rng.random_range(-120..600)),
                },
                _ => Event::Rotate {
                    token: names.choose(rng).unwrap().clone(),
                },
            };
            // Sub-second times: crashes land between the awaits of a visit, not only on whole seconds.
            let jitter = Duration::from_micros(rng.random_range(0..1_000_000));
            events.push((at + jitter, event));
        }
    }
    events.sort_by_key(|(at, _)| *at);
    events
}

fn build_world(seed: u64, dir: &std::path::Path) -> (Arc<World>, Vec<(Duration, Event)>) {
    build_world_with(seed, dir, &Spec::default(), false)
}

/// A world with the tokens and schedules of `spec`; `calm`: no faults and no events (the time-rule tests).
fn build_world_with(
    seed: u64,
    dir: &std::path::Path,
    spec: &Spec,
    calm: bool,
) -> (Arc<World>, Vec<(Duration, Event)>) {
    let tfc = TfcEmulator::in_memory(token_rotator_emulators::tfc::Config {
        rate_limit_per_second: None,
    });
    let pulumi = PulumiEmulator::in_memory(Default::default());
    // Careless servers: every error the services answer quotes the bearer it was sent.
    tfc.set_echo_credentials(true);
    pulumi.set_echo_credentials(true);
    let tfc_admin = tfc.add_organization("alpha");
    let team1 = tfc.add_team("alpha", "one");
    let team2 = tfc.add_team("alpha", "two");
    let pool = tfc.add_agent_pool("alpha", "pool");
    let pulumi_admin = pulumi.add_user("sim-admin");
    pulumi.add_organization("pacme", "sim-admin");
    pulumi.add_team("pacme", "devs");
    std::fs::write(dir.join("tfc-admin"), &tfc_admin).unwrap();
    std::fs::write(dir.join("pulumi-admin"), &pulumi_admin).unwrap();
    std::fs::write(dir.join("hook-secret"), "sim-hook-secret").unwrap();
    std::fs::write(dir.join("gh-token"), "sim-github-token").unwrap();
    let text = policy_text(dir, &team1, &team2, &pool, spec);
    let path = dir.join("policy.toml");
    let policy: Policy = policy::parse(
        "sim.toml",
        &path,
        &text,
        &policy::Env::default(),
        &token_rotator::kinds(),
    )
    .unwrap_or_else(|mut d| panic!("the simulation's policy: {:?}", d.render()));
    let mut target_owner = HashMap::new();
    for t in policy.tokens.values() {
        for st in &t.sinks {
            target_owner.insert(
                (st.sink.to_string(), world::target_key(&st.target)),
                t.name.to_string(),
            );
        }
    }
    let tfc_scopes = HashMap::from([
        (team1, "team".to_string()),
        (team2, "legacy".to_string()),
        (pool, "agent".to_string()),
    ]);
    let policy_without = policy
        .tokens
        .keys()
        .map(|name| {
            let mut p = policy.clone();
            p.tokens.remove(name);
            (name.to_string(), p)
        })
        .collect();
    let mut faults = Faults::new(seed);
    let names: Vec<String> = policy.tokens.keys().map(|k| k.to_string()).collect();
    let events = if calm {
        faults.active = false;
        Vec::new()
    } else {
        plan_events(&mut faults, &names)
    };
    let store = Arc::new(MemoryStore::default());
    let mut facts = Facts::default();
    facts.secrets.insert(tfc_admin);
    facts.secrets.insert(pulumi_admin);
    let world = Arc::new(World {
        tfc,
        pulumi,
        store: store.clone(),
        policy,
        target_owner,
        tfc_scopes,
        policy_without,
        inner: Mutex::new(Inner {
            faults,
            facts,
            sinks: BTreeMap::new(),
            violation: None,
        }),
        live: Mutex::new(None),
    });
    // Journal writes fail now and then (EMFILE, ENOSPC): nothing is written, the daemon holds the entry.
    let w = Arc::downgrade(&world);
    store.set_fault(Some(Box::new(move |_token| {
        let world = w.upgrade()?;
        let fault = world.lock().faults.journal();
        match fault {
            JournalFault::None => None,
            JournalFault::NoDescriptors => Some(std::io::Error::from_raw_os_error(libc::EMFILE)),
            JournalFault::DiskFull => Some(std::io::Error::from_raw_os_error(libc::ENOSPC)),
        }
    })));
    // When a minted value becomes durable (the journal's store accepted an entry holding it).
    let w = Arc::downgrade(&world);
    store.set_observer(Some(Box::new(move |_token, bytes| {
        let Some(world) = w.upgrade() else {
            return;
        };
        let entry: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
        if let Some(v) = entry
            .pointer("/rotation/minted/value")
            .and_then(serde_json::Value::as_str)
        {
            let at = world::world_now();
            world
                .lock()
                .facts
                .durable_at
                .entry(v.to_string())
                .or_insert(at);
        }
    })));
    (world, events)
}

/// What one seed did.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    violation: Option<String>,
    trace: u64,
    requests: u64,
    settled_after: Option<Duration>,
}

/// A consumer of the agent token uses whatever its sink holds (so `revoke_after_use` can revoke the old one).
/// While faults last it picks the new token up late (sometimes only after the next rotation).
fn use_agent_token(world: &World) {
    for name in ["agent", "team-a"] {
        if !world.policy.tokens.contains_key(name) {
            continue;
        }
        let records = world.records_of(world.token(name));
        if let Some(Some(r)) = records.first() {
            world.tfc.mark_used(&r.token_id);
            world.lock().facts.consumer_used.insert(r.token_id.clone());
        }
    }
}

/// Someone revokes a token of `name` at the issuer: the one its first target holds, or the newest one created for
/// it (possibly not stored or not proven yet).
fn revoke_outside(world: &World, name: &str, newest: bool) {
    let token = world.token(name);
    let id = if newest {
        let inner = world.lock();
        inner
            .facts
            .created_order
            .iter()
            .rev()
            .find(|(_, t)| t == name)
            .map(|(id, _)| id.clone())
    } else {
        world
            .records_of(token)
            .first()
            .cloned()
            .flatten()
            .map(|r| r.token_id)
    };
    let Some(id) = id else {
        return;
    };
    // Every value of this id is exempt from "ready means the issuer accepts it" until the daemon notices.
    let values: Vec<String> = {
        let inner = world.lock();
        inner
            .facts
            .delivered
            .iter()
            .filter(|(_, (_, i, _))| *i == id)
            .map(|(v, _)| v.clone())
            .collect()
    };
    let records: Vec<String> = world
        .records_of(token)
        .into_iter()
        .flatten()
        .filter(|r| r.token_id == id)
        .map(|r| r.token.expose_secret().to_string())
        .collect();
    world
        .lock()
        .facts
        .revoked_outside
        .extend(values.into_iter().chain(records));
    match world.service_of(token) {
        Service::Tfc => world.tfc.revoke(&id),
        Service::Pulumi => world.pulumi.revoke(&id),
    }
}

/// The daemon is at rest: running, every token ready, no journal entry (no rotation, revocation or sweep open),
/// and no record holds a token revoked behind its back (without liveness probes it replaces one at its next
/// scheduled rotation).
fn settled(world: &World) -> bool {
    let Some(live) = world.live() else {
        return false;
    };
    let now = token_rotator::clock::now();
    let outside = world.lock().facts.revoked_outside.clone();
    let stale = world.policy.tokens.values().any(|t| {
        world
            .records_of(t)
            .iter()
            .flatten()
            .any(|r| outside.contains(r.token.expose_secret()))
    });
    !stale
        && world.store.tokens().is_empty()
        && world.policy.tokens.keys().all(|n| {
            live.journal
                .load(n)
                .now_or_never()
                .and_then(|r| r.ok())
                .flatten()
                .is_none()
        })
        && live.board.snapshot().iter().all(|s| s.is_ready(now))
}

async fn simulate(seed: u64, log: &Captured, clustered: bool) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let (world, mut events) = build_world(seed, dir.path());
    let start = tokio::time::Instant::now();
    let cell = Arc::new(cluster::LeaseCell::default());
    let mut engines: Vec<Option<Incarnation>> = if clustered {
        plan_partitions(&world, &mut events);
        vec![
            Some(start_engine(&world, Some((&cell, 0)))),
            Some(start_engine(&world, Some((&cell, 1)))),
        ]
    } else {
        vec![Some(start_engine(&world, None))]
    };
    show_live(&world, &engines);
    let mut events = events.into_iter().peekable();
    let mut next_tick = TICK;
    let mut settled_after = None;
    loop {
        let elapsed = start.elapsed();
        if world.lock().violation.is_some() {
            break;
        }
        if elapsed >= FAULT_PHASE {
            world.lock().faults.active = false;
        }
        // The next thing to do: an event, or the next tick.
        let next_event = events.peek().map(|(at, _)| *at);
        let until = match next_event {
            Some(at) if at < next_tick => at,
            _ => next_tick,
        };
        tokio::time::sleep_until(start + until).await;
        if next_event == Some(until) && until < next_tick {
            let (_, event) = events.next().unwrap();
            match event {
                Event::Crash { down } => {
                    let i = world.lock().faults.rng().random_range(0..engines.len());
                    if let Some(inc) = engines[i].take() {
                        crash(&world, inc).await;
                    }
                    show_live(&world, &engines);
                    tokio::time::sleep(down).await;
                    engines[i] = Some(start_engine(&world, clustered.then_some((&cell, i))));
                    show_live(&world, &engines);
                }
                Event::Partition { engine, heal_after } => {
                    if let Some(m) = engines[engine].as_ref().and_then(|e| e.member.as_ref()) {
                        let cut = m.cut.clone();
                        cut.store(true, std::sync::atomic::Ordering::SeqCst);
                        tokio::spawn(async move {
                            tokio::time::sleep(heal_after).await;
                            cut.store(false, std::sync::atomic::Ordering::SeqCst);
                        });
                    }
                }
                Event::Reload { drop, back_after } => {
                    if let Some(name) = &drop {
                        world
                            .lock()
                            .facts
                            .nudged_at
                            .insert(name.clone(), world::world_now());
                    }
                    let first = match &drop {
                        Some(name) => world.policy_without[name].clone(),
                        None => world.policy.clone(),
                    };
                    for inc in engines.iter().flatten() {
                        let _ = inc
                            .control
                            .send(Control::Reload(Box::new(first.clone())))
                            .await;
                    }
                    if drop.is_some() {
                        tokio::time::sleep(back_after).await;
                        for inc in engines.iter().flatten() {
                            let full = world.policy.clone();
                            let _ = inc.control.send(Control::Reload(Box::new(full))).await;
                        }
                    }
                }
                Event::RevokeOutside { token, newest } => revoke_outside(&world, &token, newest),
                Event::Jump { by } => {
                    world
                        .lock()
                        .facts
                        .clock_jumps
                        .push(crate::world::world_now());
                    token_rotator::clock::jump(by)
                }
                Event::Rotate { token } => {
                    world
                        .lock()
                        .facts
                        .nudged_at
                        .insert(token.clone(), world::world_now());
                    // Asked of every engine: a standby refuses, the holder rotates.
                    for inc in engines.iter().flatten() {
                        let (reply, _answer) = tokio::sync::oneshot::channel();
                        let _ = inc
                            .rotate
                            .send(token_rotator::daemon::control::RotateRequest {
                                tokens: vec![token.clone()],
                                all: false,
                                reply,
                            })
                            .await;
                    }
                }
            }
            check_fences(&world, &engines);
            world.check_step();
            continue;
        }
        next_tick += TICK;
        check_fences(&world, &engines);
        world.check_step();
        let picks_up = elapsed >= FAULT_PHASE || world.lock().faults.rng().random_bool(0.03);
        if picks_up {
            use_agent_token(&world);
        }
        if elapsed >= FAULT_PHASE && events.peek().is_none() {
            if settled(&world) {
                settled_after = Some(elapsed - FAULT_PHASE);
                if let Err(why) = world.check_end() {
                    world.violate(format!("end state: {why}"));
                }
                break;
            }
            if elapsed >= FAULT_PHASE + SETTLE_LIMIT {
                let live = world.live();
                let now = token_rotator::clock::now();
                let why: Vec<String> = live
                    .map(|l| {
                        l.board
                            .snapshot()
                            .iter()
                            .filter_map(|s| {
                                s.unready_reason(now).map(|r| format!("{}: {r}", s.name))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                world.violate(format!(
                    "the daemon did not settle within {}h of the faults ending (journal entries: {:?}; not ready: {why:?})",
                    SETTLE_LIMIT.as_secs() / 3600,
                    world.store.tokens()
                ));
                break;
            }
        }
    }
    world.check_shown(&log.text());
    for inc in engines.iter_mut().filter_map(Option::take) {
        crash(&world, inc).await;
    }
    let inner = world.lock();
    Outcome {
        violation: inner.violation.clone(),
        trace: inner.facts.trace,
        requests: inner.facts.requests,
        settled_after,
    }
}

/// Runs one seed on its own single-threaded runtime with a paused clock.
/// Collects what the daemon logs in one run (every level down to `debug`), to be scanned for secrets.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}

/// Log lines carry the daemon's (simulated) time.
struct SimTime;

impl tracing_subscriber::fmt::time::FormatTime for SimTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        write!(
            w,
            "{}",
            token_rotator::clock::now().format("%dT%H:%M:%S%.3f")
        )
    }
}

/// Runs one seed on its own single-threaded runtime with a paused clock; returns the outcome and the log.
fn run_seed_logged(seed: u64) -> (Outcome, String) {
    run_seed_logged_as(seed, false)
}

/// [`run_seed_logged`], with two engines in cluster mode when `clustered`.
fn run_seed_logged_as(seed: u64, clustered: bool) -> (Outcome, String) {
    let log = Captured::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            "debug,rustify=warn,vaultrs=warn",
        ))
        .with_writer(move || writer.clone())
        .with_timer(SimTime)
        .with_ansi(false)
        .finish();
    let _log = tracing::subscriber::set_default(subscriber);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let outcome = rt.block_on(async {
        let base: DateTime<Utc> = "2026-03-01T00:00:00Z".parse().unwrap();
        let _clock = token_rotator::clock::simulate(base, seed);
        let start = tokio::time::Instant::now();
        let _service_clock = token_rotator_emulators::clock::simulate(
            move || base + TimeDelta::from_std(start.elapsed()).unwrap(),
            seed ^ 0xe1u64,
        );
        simulate(seed, &log, clustered).await
    });
    (outcome, log.text())
}

fn run_seed(seed: u64) -> Outcome {
    run_seed_logged(seed).0
}

fn replay_command(seed: u64, clustered: bool) -> String {
    let cluster = if clustered { "SIM_CLUSTER=1 " } else { "" };
    format!(
        "{cluster}SIM_SEED={seed} SIM_LOG=1 cargo test --test sim replay -- --ignored --nocapture"
    )
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn thousands_of_seeded_fault_schedules_keep_every_invariant() {
    run_many(env_u64("SIM_FIRST", 0), env_u64("SIM_SEEDS", 1000), false);
}

/// Cluster mode (SPEC §8): two engines, one lease store and shared journal, partitions and crashes of either.
#[test]
fn two_engines_over_one_store_keep_every_invariant_and_one_minter() {
    run_many(
        env_u64("SIM_FIRST", 0),
        env_u64("SIM_CLUSTER_SEEDS", 100),
        true,
    );
}

fn run_many(first: u64, count: u64, clustered: bool) {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .min(8) as u64;
    let started = Instant::now();
    let results: Vec<(u64, Outcome)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    (first..first + count)
                        .filter(|seed| seed % threads == t)
                        .map(|seed| (seed, run_seed_logged_as(seed, clustered).0))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a simulation thread panicked"))
            .collect()
    });
    let failures: Vec<&(u64, Outcome)> = results
        .iter()
        .filter(|(_, o)| o.violation.is_some())
        .collect();
    let requests: u64 = results.iter().map(|(_, o)| o.requests).sum();
    let slowest = results
        .iter()
        .filter_map(|(_, o)| o.settled_after)
        .max()
        .unwrap_or_default();
    let mode = if clustered { " (two engines)" } else { "" };
    eprintln!(
        "simulated {count} seeds{mode} ({first}..{}) in {:.1}s: {requests} issuer requests, settled within {} min after the faults",
        first + count,
        started.elapsed().as_secs_f64(),
        slowest.as_secs() / 60
    );
    for (seed, o) in &failures {
        eprintln!(
            "seed {seed}: {}\n  replay: {}",
            o.violation.as_deref().unwrap_or(""),
            replay_command(*seed, clustered)
        );
    }
    assert!(
        failures.is_empty(),
        "{} of {count} seeds{mode} broke an invariant (first: seed {}); replay with: {}",
        failures.len(),
        failures[0].0,
        replay_command(failures[0].0, clustered)
    );
}

/// Two runs of one seed do exactly the same thing (the premise of a replayable failure).
#[test]
fn a_seed_replays_exactly() {
    let a = run_seed(7);
    let b = run_seed(7);
    assert!(a.requests > 100, "the run did something: {a:?}");
    assert_eq!(a, b);
    assert_ne!(run_seed(8).trace, a.trace, "another seed, another run");
}

/// A seed does the same on a fresh thread as after other seeds on this one, which is how `replay` meets a seed
/// that failed among many. Seeds 14 and 29 (two engines) differed while the scheduler's `select!` was unbiased:
/// its branch order came from tokio's random per-runtime seed, and a role change met a visit's end.
#[test]
fn a_seed_replays_alone_as_it_ran_among_others() {
    let among: Vec<Outcome> = [3, 14, 29]
        .into_iter()
        .map(|seed| run_seed_logged_as(seed, true).0)
        .collect();
    for (seed, before) in [14, 29].into_iter().zip(&among[1..]) {
        assert!(before.requests > 100, "the run did something: {before:?}");
        for _ in 0..2 {
            let alone = std::thread::spawn(move || run_seed_logged_as(seed, true).0)
                .join()
                .unwrap();
            assert_eq!(&alone, before, "seed {seed}");
        }
    }
}

/// `SIM_SEED=<n> [SIM_LOG=1] cargo test --test sim replay -- --ignored --nocapture`
#[test]
#[ignore = "replays the seed in SIM_SEED"]
fn replay() {
    let seed = env_u64("SIM_SEED", 0);
    let (outcome, log) = run_seed_logged_as(seed, std::env::var_os("SIM_CLUSTER").is_some());
    if std::env::var_os("SIM_LOG").is_some() {
        eprintln!("{log}");
    }
    eprintln!("seed {seed}: {outcome:?}");
    assert!(outcome.violation.is_none(), "{:?}", outcome.violation);
}
