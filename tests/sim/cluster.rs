//! Cluster mode in the simulation (SPEC §8): two engines — each the real scheduler, rotator and journal behind its
//! own fence and lease keeper — over one lease store, one shared journal (with check-and-set per entry, as
//! `cluster::VaultCoord` keeps it in KV v2) and the same issuers and sinks. Partitions cut one engine off the lease
//! store and the shared journal for a while; crashes kill one engine and start it again. Besides the world's
//! invariants (one create per token in flight across both engines, nothing revoked that a sink holds, nothing
//! minted lost unless its holder died or lost the lease before it was durable), the two fences are never open at
//! once.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use token_rotator::cluster::{Fence, LeaseKeeper, LeaseRecord, LeaseStore, LeaseView, Role};
use token_rotator::journal::{EntryConflict, EntryStore, Journal, MemoryStore};
use token_rotator::policy::ClusterSettings;
use token_rotator::sink::{SinkError, SinkErrorKind};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::world::World;

/// The lease record and its version: the coordination store both engines share.
#[derive(Default)]
pub struct LeaseCell {
    lease: Mutex<(Option<LeaseRecord>, u64)>,
    /// The version of each journal entry (check-and-set), kept next to the entries in `World::store`.
    entry_versions: Mutex<HashMap<String, u64>>,
    /// Entries whose next write by either engine meets another engine's write made just before it (the former
    /// holder's held write, flushed by it as a standby, landing between this visit's read and its write).
    pub interleave: Mutex<std::collections::HashSet<String>>,
}

/// One engine's connection to the coordination store; `cut` is a partition.
pub struct Link {
    cell: Arc<LeaseCell>,
    store: Arc<MemoryStore>,
    cut: Arc<AtomicBool>,
    /// Entry versions as this engine last saw them.
    seen: Mutex<HashMap<String, u64>>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Link")
    }
}

fn unreachable() -> SinkError {
    SinkError::new("store", SinkErrorKind::Unavailable, "partitioned")
}

impl Link {
    fn cut(&self) -> io::Result<()> {
        if self.cut.load(Ordering::SeqCst) {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "partitioned"));
        }
        Ok(())
    }

    fn version(&self, token: &str) -> u64 {
        self.cell
            .entry_versions
            .lock()
            .unwrap()
            .get(token)
            .copied()
            .unwrap_or(0)
    }

    /// Check-and-set on the version this engine last read or wrote (none: refused, as `VaultCoord` does), then
    /// `write` (which may fail: nothing changes).
    async fn put(
        &self,
        token: &str,
        write: impl std::future::Future<Output = io::Result<()>>,
    ) -> io::Result<()> {
        self.cut()?;
        if self.cell.interleave.lock().unwrap().remove(token) {
            *self
                .cell
                .entry_versions
                .lock()
                .unwrap()
                .entry(token.to_string())
                .or_default() += 1;
        }
        let current = self.version(token);
        let expected = self.seen.lock().unwrap().get(token).copied();
        if expected != Some(current) {
            self.seen.lock().unwrap().remove(token);
            return Err(EntryConflict::io(
                "check-and-set: written by another engine, or never read here",
            ));
        }
        write.await?;
        let next = current + 1;
        self.cell
            .entry_versions
            .lock()
            .unwrap()
            .insert(token.to_string(), next);
        self.seen.lock().unwrap().insert(token.to_string(), next);
        Ok(())
    }
}

#[async_trait]
impl EntryStore for Link {
    async fn read(&self, token: &str) -> io::Result<Option<Vec<u8>>> {
        self.cut()?;
        let version = self.version(token);
        self.seen.lock().unwrap().insert(token.to_string(), version);
        self.store.read(token).await
    }

    async fn peek(&self, token: &str) -> io::Result<Option<Vec<u8>>> {
        self.cut()?;
        self.store.read(token).await
    }

    async fn write(&self, token: &str, bytes: Vec<u8>) -> io::Result<()> {
        self.put(token, self.store.write(token, bytes)).await
    }

    async fn remove(&self, token: &str) -> io::Result<()> {
        self.put(token, self.store.remove(token)).await
    }

    fn location(&self, token: &str) -> String {
        format!("shared:{token}")
    }
}

#[async_trait]
impl LeaseStore for Link {
    async fn read_lease(&self) -> Result<LeaseView, SinkError> {
        if self.cut.load(Ordering::SeqCst) {
            return Err(unreachable());
        }
        let l = self.cell.lease.lock().unwrap();
        Ok(LeaseView {
            record: l.0.clone(),
            version: l.1,
        })
    }

    async fn write_lease(&self, record: &LeaseRecord, cas: u64) -> Result<u64, SinkError> {
        if self.cut.load(Ordering::SeqCst) {
            return Err(unreachable());
        }
        let mut l = self.cell.lease.lock().unwrap();
        if l.1 != cas {
            return Err(SinkError::new("store", SinkErrorKind::Conflict, "cas"));
        }
        *l = (Some(record.clone()), l.1 + 1);
        Ok(l.1)
    }
}

/// The cluster settings of the simulation: a short lease, so that hand-overs happen often.
pub fn settings() -> ClusterSettings {
    ClusterSettings {
        store: "kv-a".into(),
        path: "sim".into(),
        lease_duration: std::time::Duration::from_secs(6),
        identity: None,
    }
}

/// What one engine adds to a single daemon: its fence, its link (with the partition switch) and its lease keeper.
pub struct Member {
    pub fence: Arc<Fence>,
    pub cut: Arc<AtomicBool>,
    pub journal: Arc<Journal>,
    keeper: tokio::task::JoinHandle<()>,
    watcher: Option<tokio::task::JoinHandle<()>>,
    stop: CancellationToken,
}

impl Member {
    /// An engine's membership: a fence, a link to `cell`, the journal over it, and its lease keeper (started).
    pub fn join(
        world: &Arc<World>,
        cell: &Arc<LeaseCell>,
        index: usize,
        metrics: Arc<token_rotator::metrics::Metrics>,
        board: token_rotator::status::StatusBoard,
    ) -> Member {
        let s = settings();
        let fence = Fence::new(format!("engine-{index}"), s.fence_after());
        let cut = Arc::new(AtomicBool::new(false));
        let link = Arc::new(Link {
            cell: cell.clone(),
            store: world.store.clone(),
            cut: cut.clone(),
            seen: Mutex::new(HashMap::new()),
        });
        let journal = Arc::new(Journal::new(link.clone()));
        let keeper = LeaseKeeper {
            drained: Default::default(),
            store: link,
            fence: fence.clone(),
            settings: s,
            metrics,
            board,
        };
        let stop = CancellationToken::new();
        let keeper = {
            let stop = stop.clone();
            tokio::spawn(
                async move { keeper.run(stop).await }
                    .instrument(tracing::info_span!("engine", n = index)),
            )
        };
        Member {
            fence,
            cut,
            journal,
            keeper,
            watcher: None,
            stop,
        }
    }

    /// Follows this engine's role: a new holder is, for the rules about what a restart may do (mint again after
    /// an ambiguous create, lose a value not yet durable), a new process; and the world's checks look at the
    /// holder (`live`), the moment it takes over, and at no board while nobody holds the lease.
    pub fn watch(&mut self, world: &Arc<World>, live: crate::world::Live) {
        let mut role = self.fence.subscribe();
        let world = Arc::downgrade(world);
        let journal = live.journal.clone();
        self.watcher = Some(tokio::spawn(async move {
            while role.changed().await.is_ok() {
                let Some(w) = world.upgrade() else {
                    return;
                };
                if *role.borrow() == Role::Leader {
                    w.lock().facts.crashes.push(crate::world::world_now());
                    w.set_live(Some(live.clone()));
                } else if w.live().is_some_and(|l| Arc::ptr_eq(&l.journal, &journal)) {
                    w.set_live(None);
                }
            }
        }));
    }

    /// `kill -9`: no release.
    pub fn kill(&self) {
        self.keeper.abort();
        if let Some(w) = &self.watcher {
            w.abort();
        }
        self.stop.cancel();
    }
}

/// Seed 587 of the two-engine simulation, pinned down: a new holder's first visit of a singleton whose create the
/// former holder sent with its answer lost (the stored token is dead at the issuer) meets another engine's write of
/// the shared entry and is run again. In between the token must not show ready, as the takeover left it.
#[test]
fn a_new_holders_visit_that_meets_another_engines_write_leaves_a_replaced_singleton_not_ready() {
    crate::rules::paused(31, async {
        let dir = tempfile::tempdir().unwrap();
        let spec = crate::Spec {
            only: Some(vec!["org"]),
            schedule: "lifetime = \"2h\"\nrotate_before = \"40m\"".into(),
            ..crate::Spec::default()
        };
        let (world, _) = crate::build_world_with(31, dir.path(), &spec, true);
        let cell = Arc::new(LeaseCell::default());
        let mut engines = vec![
            Some(crate::start_engine(&world, Some((&cell, 0)))),
            Some(crate::start_engine(&world, Some((&cell, 1)))),
        ];
        // Checks the world every 100 ms: the window this is about lasts a second.
        let run_for = |d: std::time::Duration| {
            let world = world.clone();
            async move {
                let end = tokio::time::Instant::now() + d;
                while tokio::time::Instant::now() < end {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    world.check_step();
                    if let Some(v) = world.lock().violation.clone() {
                        panic!("invariant broken at {}: {v}", crate::world::world_now());
                    }
                }
            }
        };
        let leader = |engines: &[Option<crate::Incarnation>]| {
            engines.iter().position(|e| {
                e.as_ref()
                    .and_then(|e| e.member.as_ref())
                    .is_some_and(|m| m.fence.role() == Role::Leader)
            })
        };
        crate::show_live(&world, &engines);
        run_for(std::time::Duration::from_secs(60)).await;
        let holder = leader(&engines).expect("an engine holds the lease");
        // The holder's create of a new org token reaches TFC, which replaces the stored token; the answer is lost.
        world
            .lock()
            .faults
            .forced_wire
            .push_back(crate::faults::WireFault::LostAfter { timeout: false });
        let (reply, _answer) = tokio::sync::oneshot::channel();
        let inc = engines[holder].as_ref().unwrap();
        world
            .lock()
            .facts
            .nudged_at
            .insert("org".into(), crate::world::world_now());
        inc.rotate
            .send(token_rotator::daemon::control::RotateRequest {
                tokens: vec!["org".into()],
                all: false,
                reply,
            })
            .await
            .unwrap();
        run_for(std::time::Duration::from_secs(5)).await;
        let tfc_org = || {
            world
                .tfc
                .all_tokens()
                .into_iter()
                .filter(|t| t.kind == token_rotator_emulators::tfc::TokenKind::Organization)
                .count()
        };
        assert_eq!(tfc_org(), 2, "the ambiguous create reached TFC");
        // Then it is cut off and the other engine takes over; that one's first write of the entry meets another.
        engines[holder]
            .as_ref()
            .unwrap()
            .member
            .as_ref()
            .unwrap()
            .cut
            .store(true, Ordering::SeqCst);
        cell.interleave.lock().unwrap().insert("org".into());
        run_for(std::time::Duration::from_secs(90)).await;
        assert_eq!(
            leader(&engines),
            Some(1 - holder),
            "the other engine took over"
        );
        assert!(
            cell.interleave.lock().unwrap().is_empty(),
            "the new holder's visit met the other write"
        );
        // It mints again (once) and the token is ready with a token TFC accepts in every target.
        run_for(std::time::Duration::from_secs(120)).await;
        assert_eq!(tfc_org(), 3, "minted once more");
        let org = world.live_status("org").expect("a holder");
        assert_eq!(org.unready_reason(token_rotator::clock::now()), None);
        for inc in engines.iter_mut().filter_map(Option::take) {
            crate::crash(&world, inc).await;
        }
    });
}
