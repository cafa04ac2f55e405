//! The simulated world: the two token services (the in-repo emulators, driven in memory), the secret stores (KV
//! models with versions and check-and-set), the journal's store, what the world has seen happen (facts), and the
//! invariants checked against it after every step.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use futures_util::FutureExt;
use token_rotator::issuer::pulumi::PulumiType;
use token_rotator::journal::{Journal, MemoryStore};
use token_rotator::policy::{Policy, TokenPolicy};
use token_rotator::record::SinkRecord;
use token_rotator::secret::ExposeSecret;
use token_rotator::sink::Target;
use token_rotator::status::StatusBoard;
use token_rotator_emulators::pulumi::PulumiHandle;
use token_rotator_emulators::tfc::TfcHandle;

use crate::faults::Faults;

/// Which service a request goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    Tfc,
    Pulumi,
}

/// One sink target's content: its version (0 = nothing there) and record.
#[derive(Clone, Default)]
pub struct Slot {
    pub version: u64,
    pub record: Option<SinkRecord>,
    /// When it was last written, by the world's clock (what a GitHub secret shows of itself).
    pub written_at: Option<DateTime<Utc>>,
}

/// What the world saw happen, for the invariants.
#[derive(Default)]
pub struct Facts {
    /// Token id → the policy token whose create made it (creates the service acted on, answered or not).
    pub created_for: HashMap<String, String>,
    /// Token values whose create answer reached the daemon: value → (policy token, id, when).
    pub delivered: BTreeMap<String, (String, String, DateTime<Utc>)>,
    /// Ids in the order their creates were acted on, with the policy token each is for.
    pub created_order: Vec<(String, String)>,
    /// When the daemon was killed.
    pub crashes: Vec<DateTime<Utc>>,
    /// Per bearer: no request before this time (a 429 asked to wait until then).
    pub blocked_until: HashMap<String, DateTime<Utc>>,
    /// When each minted value first reached the journal's store (durable).
    pub durable_at: HashMap<String, DateTime<Utc>>,
    /// Per policy token: when a create's outcome became unknown to the daemon (no create may follow blindly).
    pub ambiguous_at: HashMap<String, DateTime<Utc>>,
    /// Per policy token: the last `rotate` request or reload that dropped it (they may start a new attempt).
    pub nudged_at: HashMap<String, DateTime<Utc>>,
    /// Values an identity probe succeeded with (the answer reached the daemon).
    pub verified: HashSet<String>,
    /// Token ids ever written to a policy token's sink targets.
    pub stored: HashMap<String, HashSet<String>>,
    /// Per policy token, the ids that were at some moment stored in every target and proven (stored, for types
    /// that cannot prove themselves): a successor an older token may be revoked after.
    pub complete: HashMap<String, HashSet<String>>,
    /// Values revoked behind the daemon's back (a token holding one may be reported ready until it notices).
    pub revoked_outside: HashSet<String>,
    /// Creates in flight per policy token.
    pub creates_in_flight: HashMap<String, u32>,
    /// Every secret value the world knows (credentials, every token value a create answered with).
    pub secrets: BTreeSet<String>,
    /// A digest of what happened, in order: two runs of one seed must agree.
    pub trace: u64,
    pub requests: u64,
    /// Every sink read and write of a policy token's targets, in order (the time-rule tests read them).
    pub sink_ops: Vec<SinkOp>,
    /// Per policy token, the token ids its `rotated` notify actions were run for (all of them, successfully).
    pub notified: HashMap<String, HashSet<String>>,
    /// Token ids a consumer used (the simulation's consumers of `revoke_after_use` tokens).
    pub consumer_used: HashSet<String>,
    /// When each id was first seen complete (stored in every target and proven), on the daemon's clock.
    pub complete_at: HashMap<String, DateTime<Utc>>,
    /// When the daemon's wall clock was stepped (world time).
    pub clock_jumps: Vec<DateTime<Utc>>,
}

/// One sink operation on a policy token's target.
#[derive(Clone, Debug)]
pub struct SinkOp {
    pub at: DateTime<Utc>,
    pub token: String,
    pub write: bool,
}

pub struct Inner {
    pub faults: Faults,
    pub facts: Facts,
    /// `(sink, target)` → content.
    pub sinks: BTreeMap<(String, String), Slot>,
    pub violation: Option<String>,
}

/// The running daemon's journal, status board and control channel (none while it is down).
#[derive(Clone)]
pub struct Live {
    pub journal: Arc<Journal>,
    pub board: StatusBoard,
    pub control: tokio::sync::mpsc::Sender<token_rotator::daemon::Control>,
    pub metrics: Arc<token_rotator::metrics::Metrics>,
}

pub struct World {
    pub tfc: TfcHandle,
    pub pulumi: PulumiHandle,
    pub store: Arc<MemoryStore>,
    pub policy: Policy,
    /// `(sink, target)` → the policy token it belongs to.
    pub target_owner: HashMap<(String, String), String>,
    /// TFC team id / agent pool id → what creates there are for.
    pub tfc_scopes: HashMap<String, String>,
    /// The policy without each token (reloads that drop one).
    pub policy_without: HashMap<String, Policy>,
    pub inner: Mutex<Inner>,
    pub live: Mutex<Option<Live>>,
}

pub fn hash_in(trace: &mut u64, s: &str) {
    // FNV-1a: stable across runs and platforms (the std hasher is randomly keyed).
    for b in s.bytes() {
        *trace ^= u64::from(b);
        *trace = trace.wrapping_mul(0x100_0000_01b3);
    }
}

impl World {
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn live(&self) -> Option<Live> {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set_live(&self, live: Option<Live>) {
        *self.live.lock().unwrap_or_else(|p| p.into_inner()) = live;
    }

    /// A reload that drops `name` and adds it back after `back_after` (a visit of it may be in flight).
    pub fn reload_without(self: &Arc<Self>, name: &str, back_after: std::time::Duration) {
        let Some(live) = self.live() else {
            return;
        };
        self.lock()
            .facts
            .nudged_at
            .insert(name.to_string(), world_now());
        let without = self.policy_without[name].clone();
        let full = self.policy.clone();
        let _ = live
            .control
            .try_send(token_rotator::daemon::Control::Reload(Box::new(without)));
        tokio::spawn(async move {
            tokio::time::sleep(back_after).await;
            let _ = live
                .control
                .send(token_rotator::daemon::Control::Reload(Box::new(full)))
                .await;
        });
    }

    pub fn token(&self, name: &str) -> &TokenPolicy {
        &self.policy.tokens[name]
    }

    /// Records a broken invariant (the first one wins) with the simulated time it broke at.
    pub fn violate(&self, what: String) {
        let mut inner = self.lock();
        if inner.violation.is_none() {
            let at = token_rotator_emulators::clock::now();
            inner.violation = Some(format!("{} {what}", at.to_rfc3339()));
        }
    }

    pub fn is_valid(&self, service: Service, value: &str) -> bool {
        match service {
            Service::Tfc => self.tfc.is_valid(value),
            Service::Pulumi => self.pulumi.is_valid(value),
        }
    }

    pub fn service_of(&self, token: &TokenPolicy) -> Service {
        match token.kind.downcast::<PulumiType>() {
            Some(_) => Service::Pulumi,
            None => Service::Tfc,
        }
    }

    /// The records the targets of `token` hold now.
    pub fn records_of(&self, token: &TokenPolicy) -> Vec<Option<SinkRecord>> {
        let inner = self.lock();
        token
            .sinks
            .iter()
            .map(|st| {
                inner
                    .sinks
                    .get(&(st.sink.to_string(), target_key(&st.target)))
                    .and_then(|s| s.record.clone())
            })
            .collect()
    }

    /// Notes that `token`'s targets all hold one record that is proven (or cannot be), if they do.
    pub fn note_complete(&self, token: &str) {
        let t = self.token(token);
        let records = self.records_of(t);
        let Some(Some(first)) = records.first() else {
            return;
        };
        if !records
            .iter()
            .all(|r| r.as_ref().is_some_and(|r| r.token_id == first.token_id))
        {
            return;
        }
        let mut inner = self.lock();
        let proven = !t.kind.can_prove_itself()
            || inner.facts.verified.contains(first.token.expose_secret());
        if proven {
            inner
                .facts
                .complete
                .entry(token.to_string())
                .or_default()
                .insert(first.token_id.clone());
            inner
                .facts
                .complete_at
                .entry(first.token_id.clone())
                // The daemon's clock (it jumps with the simulated wall clock): `grace` is counted on it.
                .or_insert_with(token_rotator::clock::now);
        }
    }

    /// The line of `name` on the board the checks look at (the daemon's, or the lease holder's).
    pub fn live_status(&self, name: &str) -> Option<token_rotator::status::TokenStatus> {
        let live = self.live()?;
        live.board.snapshot().into_iter().find(|s| &*s.name == name)
    }

    /// Invariant (SPEC §5.10, §5.2): a token the daemon reports ready has, in every sink target, a record whose
    /// token the issuer accepts (unless someone revoked it behind the daemon's back: it learns that later).
    /// Invariant (SPEC §5.13): nothing the daemon shows quotes a secret.
    pub fn check_step(&self) {
        let Some(live) = self.live() else {
            return;
        };
        let now = token_rotator::clock::now();
        let secrets: Vec<String> = self.lock().facts.secrets.iter().cloned().collect();
        for status in live.board.snapshot() {
            for text in [&status.last_error, &status.pending].into_iter().flatten() {
                if let Some(s) = secrets.iter().find(|s| text.contains(s.as_str())) {
                    self.violate(format!(
                        "a secret ({}…) is shown in the status of {}: {text}",
                        &s[..6.min(s.len())],
                        status.name
                    ));
                }
            }
            if !status.is_ready(now) {
                continue;
            }
            let Some(token) = self.policy.tokens.get(&status.name) else {
                continue;
            };
            let service = self.service_of(token);
            let revoked_outside = self.lock().facts.revoked_outside.clone();
            for (st, record) in token.sinks.iter().zip(self.records_of(token)) {
                match record {
                    None => self.violate(format!(
                        "{} is reported ready but {st} holds no record",
                        token.name
                    )),
                    Some(r) => {
                        let value = r.token.expose_secret();
                        if !self.is_valid(service, value) && !revoked_outside.contains(value) {
                            self.violate(format!(
                                "{} is reported ready but {st} holds token {} which the issuer does not accept",
                                token.name, r.token_id
                            ));
                        }
                    }
                }
            }
        }
    }

    /// Invariants at a revocation of `id` (SPEC §5.2, §5.11): no record names it, no journal entry is rotating it
    /// in, and when it was ever stored for its policy token, every target of that token holds a verified successor.
    pub fn check_revoke(&self, id: &str) {
        let inner = self.lock();
        for ((sink, target), slot) in &inner.sinks {
            if slot.record.as_ref().is_some_and(|r| r.token_id == id) {
                let msg = format!("token {id} is revoked while {sink}:{target} holds it");
                drop(inner);
                self.violate(msg);
                return;
            }
        }
        let owner = inner.facts.created_for.get(id).cloned();
        let stored_before = owner
            .as_ref()
            .is_some_and(|o| inner.facts.stored.get(o).is_some_and(|s| s.contains(id)));
        // A successor: created after `id` for the same token, once stored everywhere and proven.
        let position = |x: &str| inner.facts.created_order.iter().position(|(i, _)| i == x);
        // Whether `ids` of the owner name a token created after `id`.
        let later_in = |ids: &HashMap<String, HashSet<String>>| {
            owner.as_ref().is_some_and(|o| {
                ids.get(o)
                    .is_some_and(|done| done.iter().any(|y| y != id && position(y) > position(id)))
            })
        };
        let successor = later_in(&inner.facts.complete);
        // SPEC §9: the consumers were told of a successor before the old token goes.
        let told = later_in(&inner.facts.notified);
        // SPEC §10: a `revoke_after_use` token that proves itself (team, Pulumi) loses its old token before
        // `grace` is over only once a consumer used a successor (the daemon's own probe does not count).
        let early_after_use = owner
            .as_ref()
            .and_then(|o| self.policy.tokens.get(o.as_str()))
            .is_some_and(|t| {
                t.schedule.revoke_after_use
                    && t.kind.can_prove_itself()
                    && !inner.facts.complete.get(&*t.name).is_some_and(|done| {
                        done.iter().any(|y| {
                            y != id
                                && position(y) > position(id)
                                && (inner.facts.consumer_used.contains(y)
                                    || inner.facts.complete_at.get(y).is_some_and(|at| {
                                        let since = token_rotator::clock::now() - *at;
                                        // `grace` is wall-clock time: a step of the clock since then (either
                                        // way) moves the daemon's view of it; that is not this rule's business.
                                        let stepped = inner
                                            .facts
                                            .clock_jumps
                                            .iter()
                                            .any(|j| *j >= world_now() - since.abs());
                                        stepped
                                            || since
                                                >= chrono::TimeDelta::from_std(t.schedule.grace)
                                                    .unwrap()
                                    }))
                        })
                    })
            });
        let notifies = owner
            .as_ref()
            .and_then(|o| self.policy.tokens.get(o.as_str()))
            .is_some_and(|t| !t.notify.actions.is_empty());
        drop(inner);
        if let Some(live) = self.live() {
            for name in self.policy.tokens.keys() {
                if let Some(Ok(Some(e))) = live.journal.load(name).now_or_never() {
                    if e.rotation
                        .as_ref()
                        .and_then(|r| r.minted.as_ref())
                        .is_some_and(|m| m.token_id == id)
                    {
                        self.violate(format!(
                            "token {id} is revoked while the journal of {name} is rotating it in"
                        ));
                    }
                }
            }
        }
        if let (Some(owner), true, true) = (&owner, stored_before, early_after_use) {
            self.violate(format!(
                "old token {id} of {owner} is revoked before its grace is over though no consumer used a successor"
            ));
        }
        if let (Some(owner), true, false, true) = (&owner, stored_before, told, notifies) {
            self.violate(format!(
                "old token {id} of {owner} is revoked before the consumers were told of a successor"
            ));
        }
        if let (Some(owner), true, false) = (owner, stored_before, successor) {
            self.violate(format!(
                "old token {id} of {owner} is revoked before a successor was stored in every target and proven"
            ));
        }
    }

    /// Scans what the daemon wrote and serves (its log, `/metrics`) for any secret the world knows (SPEC §5.13).
    pub fn check_shown(&self, log: &str) {
        let secrets: Vec<String> = self.lock().facts.secrets.iter().cloned().collect();
        let mut shown = vec![("the log", log.to_string())];
        if let Some(live) = self.live() {
            shown.push(("/metrics", live.metrics.render(&live.board)));
        }
        for (what, text) in shown {
            if let Some(s) = secrets.iter().find(|s| text.contains(s.as_str())) {
                self.violate(format!("{what} shows a secret ({}…)", &s[..6.min(s.len())]));
            }
        }
    }

    /// The end state after the calm phase, every fault gone (SPEC §5.1, §5.3): every token is ready; each target
    /// holds a token the issuer accepts; the tokens this daemon created that are still valid are exactly the
    /// stored ones (no orphan, no old token left behind); every value handed to the daemon is either stored or dead.
    pub fn check_end(&self) -> Result<(), String> {
        let live = self.live().ok_or("the daemon is not running at the end")?;
        let now = token_rotator::clock::now();
        for status in live.board.snapshot() {
            if let Some(why) = status.unready_reason(now) {
                return Err(format!("{} is not ready at the end: {why}", status.name));
            }
        }
        let mut current: HashMap<String, String> = HashMap::new();
        for token in self.policy.tokens.values() {
            let service = self.service_of(token);
            let records = self.records_of(token);
            let first = records[0]
                .as_ref()
                .ok_or(format!("{} has no record at the end", token.name))?;
            for (st, r) in token.sinks.iter().zip(&records) {
                let r = r.as_ref().ok_or(format!("{st} has no record at the end"))?;
                if r.token_id != first.token_id {
                    return Err(format!("the targets of {} disagree at the end", token.name));
                }
                if !self.is_valid(service, r.token.expose_secret()) {
                    return Err(format!(
                        "{st} holds token {} which the issuer does not accept",
                        r.token_id
                    ));
                }
            }
            current.insert(first.token_id.clone(), token.name.to_string());
        }
        let facts_created: Vec<(String, String)> = self
            .lock()
            .facts
            .created_for
            .iter()
            .map(|(id, t)| (id.clone(), t.clone()))
            .collect();
        for (id, owner) in facts_created {
            let token = self.token(&owner);
            let valid = match self.service_of(token) {
                Service::Tfc => self
                    .tfc
                    .token_info(&id)
                    .is_some_and(|t| t.state == token_rotator_emulators::tfc::TokenState::Active),
                Service::Pulumi => self.pulumi.valid_tokens().iter().any(|t| t.id == id),
            };
            if valid && current.get(&id) != Some(&owner) {
                return Err(format!(
                    "token {id} created for {owner} is still valid but no record holds it (an orphan or a leaked old token)"
                ));
            }
        }
        let (delivered, crashes, stored) = {
            let inner = self.lock();
            (
                inner.facts.delivered.clone(),
                inner.facts.crashes.clone(),
                inner.facts.stored.clone(),
            )
        };
        for (value, (owner, id, at)) in delivered {
            let service = self.service_of(self.token(&owner));
            if self.is_valid(service, &value) && current.get(&id) != Some(&owner) {
                return Err(format!(
                    "the value of token {id} ({owner}) was handed to the daemon, is still valid, and is stored nowhere"
                ));
            }
            // Handed over and never stored: lost unless a crash took it before it was durable (SPEC §5.1).
            let ever_stored = stored.get(&owner).is_some_and(|s| s.contains(&id));
            let durable = self.lock().facts.durable_at.get(&value).copied();
            let first_crash = crashes.iter().filter(|c| **c >= at).min().copied();
            let excused = match (first_crash, durable) {
                (Some(crash), Some(d)) => d > crash,
                (Some(_), None) => true,
                (None, _) => false,
            };
            if !ever_stored && !excused {
                return Err(format!(
                    "the value of token {id} ({owner}) was handed to the daemon and never stored ({})",
                    match durable {
                        Some(_) => "it was journaled, and no restart pushed it",
                        None => "it was never journaled, and no crash lost it",
                    }
                ));
            }
        }
        Ok(())
    }
}

pub fn target_key(t: &Target) -> String {
    t.to_string()
}

/// When the simulated world says it is (the services' clock, which the daemon's clock jumps do not move).
pub fn world_now() -> DateTime<Utc> {
    token_rotator_emulators::clock::now()
}
