//! Secret stores in the simulation: KV models with a version per target and check-and-set, as Vault KV v2 behaves,
//! through the seeded fault schedule (down, an answer lost after the write landed, a concurrent writer, latency);
//! and the [`Backends`] that hands them, and the simulated wire, to the daemon.

use std::sync::Arc;

use async_trait::async_trait;
use token_rotator::daemon::Backends;
use token_rotator::issuer::api::Exchange;
use token_rotator::policy::{IssuerConfig, SinkConfig};
use token_rotator::record::SinkRecord;
use token_rotator::sink::{
    Content, Holds, Observed, Sink, SinkError, SinkErrorKind, Target, Version,
};

use crate::faults::SinkFault;
use crate::wire::SimWire;
use crate::world::{hash_in, target_key, Service, World};

pub struct SimSink {
    pub name: String,
    pub world: Arc<World>,
    /// A delivery target's kind (`tfe-variable`, `github-actions`): it shows what the real one shows of its value.
    pub delivers: Option<&'static str>,
}

impl SimSink {
    fn error(&self, kind: SinkErrorKind, message: &str) -> SinkError {
        SinkError::new(&self.name, kind, message)
    }

    /// Notes an operation on `target` (for the time-rule tests), then fails it if the store is down or refuses.
    fn meet(&self, target: &Target, write: bool, fault: SinkFault) -> Result<(), SinkError> {
        let key = self.key(target);
        if let Some(owner) = self.world.target_owner.get(&key) {
            self.world.lock().facts.sink_ops.push(crate::world::SinkOp {
                at: crate::world::world_now(),
                token: owner.clone(),
                write,
            });
        }
        match fault {
            SinkFault::Down => Err(self.error(SinkErrorKind::Unavailable, "store down")),
            SinkFault::Refused => Err(self.error(SinkErrorKind::Forbidden, "permission denied")),
            _ => Ok(()),
        }
    }

    fn key(&self, target: &Target) -> (String, String) {
        (self.name.clone(), target_key(target))
    }
}

#[async_trait]
impl Sink for SimSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn read(&self, target: &Target) -> Result<Observed, SinkError> {
        let (fault, latency) = {
            let mut inner = self.world.lock();
            (inner.faults.sink(false), inner.faults.latency(1, 50))
        };
        tokio::time::sleep(latency).await;
        self.meet(target, false, fault)?;
        if fault == SinkFault::Slow {
            let extra = self.world.lock().faults.latency(5_000, 40_000);
            tokio::time::sleep(extra).await;
        }
        let inner = self.world.lock();
        let slot = inner
            .sinks
            .get(&self.key(target))
            .cloned()
            .unwrap_or_default();
        if let Some(kind) = self.delivers {
            return Ok(Observed {
                version: if slot.version == 0 {
                    Version::Absent
                } else {
                    Version::Unversioned
                },
                content: match (slot.record, kind) {
                    (None, _) => Content::Absent,
                    (Some(_), "github-actions") => Content::Delivered(Holds::WrittenAt(
                        slot.written_at.expect("a written slot has a write time"),
                    )),
                    (Some(r), _) => Content::Delivered(Holds::TokenId(r.token_id)),
                },
            });
        }
        Ok(Observed {
            version: if slot.version == 0 {
                Version::Absent
            } else {
                Version::Kv2(slot.version)
            },
            content: match slot.record {
                Some(r) => Content::Record(r),
                None => Content::Absent,
            },
        })
    }

    async fn write(
        &self,
        target: &Target,
        record: &SinkRecord,
        expected: Version,
    ) -> Result<(), SinkError> {
        let (fault, latency) = {
            let mut inner = self.world.lock();
            (inner.faults.sink(true), inner.faults.latency(1, 50))
        };
        tokio::time::sleep(latency).await;
        let key = self.key(target);
        self.meet(target, true, fault)?;
        match fault {
            SinkFault::Slow => {
                let extra = self.world.lock().faults.latency(5_000, 40_000);
                tokio::time::sleep(extra).await;
            }
            SinkFault::ConcurrentWriter => {
                // Someone else rewrites the same content: only the version moves.
                let mut inner = self.world.lock();
                let slot = inner.sinks.entry(key.clone()).or_default();
                slot.version += 1;
            }
            _ => {}
        }
        {
            let mut inner = self.world.lock();
            let slot = inner.sinks.entry(key.clone()).or_default();
            let matches = match expected {
                // A delivery target has no check-and-set: last writer wins.
                _ if self.delivers.is_some() => true,
                Version::Absent => slot.version == 0,
                Version::Kv2(v) => slot.version == v,
                _ => false,
            };
            if !matches {
                return Err(self.error(SinkErrorKind::Conflict, "check-and-set: the version moved"));
            }
            slot.version += 1;
            slot.record = Some(record.clone());
            slot.written_at = Some(crate::world::world_now());
            let owner = self.world.target_owner.get(&key).cloned();
            if let Some(owner) = owner {
                inner
                    .facts
                    .stored
                    .entry(owner)
                    .or_default()
                    .insert(record.token_id.clone());
            }
            let line = format!("store {}:{} {}", key.0, key.1, record.token_id);
            hash_in(&mut inner.facts.trace, &line);
        }
        if let Some(owner) = self.world.target_owner.get(&key) {
            self.world.note_complete(owner);
        }
        self.world.check_step();
        if fault == SinkFault::LostAnswer {
            return Err(self.error(SinkErrorKind::Unavailable, "connection reset"));
        }
        Ok(())
    }
}

/// The daemon's issuers and sinks in the simulation.
pub struct SimBackends {
    pub world: Arc<World>,
}

#[async_trait]
impl Backends for SimBackends {
    fn exchange(&self, cfg: &IssuerConfig) -> Result<Arc<dyn Exchange>, String> {
        Ok(Arc::new(SimWire {
            world: self.world.clone(),
            service: match cfg.kind {
                "pulumi" => Service::Pulumi,
                _ => Service::Tfc,
            },
        }))
    }

    async fn sink(&self, cfg: &SinkConfig) -> Result<Arc<dyn Sink>, SinkError> {
        Ok(Arc::new(SimSink {
            name: cfg.name.clone(),
            world: self.world.clone(),
            delivers: cfg.spec.delivers().then(|| cfg.kind()),
        }))
    }

    fn deliverer(&self) -> Arc<dyn token_rotator::notify::Deliver> {
        Arc::new(SimDeliver {
            world: self.world.clone(),
        })
    }
}

/// Notify actions in the simulation: they fail by the seed's schedule, and a `rotated` one checks what its
/// receiver would see (SPEC §9): the new token already in every sink target of its token.
pub struct SimDeliver {
    pub world: Arc<World>,
}

#[async_trait]
impl token_rotator::notify::Deliver for SimDeliver {
    async fn deliver(
        &self,
        action: &token_rotator::policy::notify::NotifyAction,
        message: &token_rotator::notify::Message,
        secret: Option<&token_rotator::secret::SecretString>,
    ) -> Result<(), String> {
        use token_rotator::policy::notify::ActionTarget;
        use token_rotator::secret::ExposeSecret;
        if matches!(action.target, ActionTarget::Webhook { .. })
            && secret.map(|s| s.expose_secret().to_string()) != Some("sim-hook-secret".into())
        {
            self.world.violate(format!(
                "the webhook of {} got the wrong secret",
                message.token
            ));
        }
        let latency = self.world.lock().faults.latency(1, 200);
        tokio::time::sleep(latency).await;
        if self.world.lock().faults.notify_fails() {
            return Err("receiver down".into());
        }
        if message.event == "rotated" {
            let token = self.world.token(&message.token);
            let id = message.token_id.clone().unwrap_or_default();
            for (st, r) in token.sinks.iter().zip(self.world.records_of(token)) {
                if r.as_ref().map(|r| r.token_id.as_str()) != Some(id.as_str()) {
                    self.world.violate(format!(
                        "{} is told of {id} while {st} holds {}",
                        message.token,
                        r.map(|r| r.token_id).unwrap_or_else(|| "nothing".into())
                    ));
                }
            }
            // Told once the last action ran (actions run in order).
            if token.notify.actions.last() != Some(action) {
                return Ok(());
            }
            let mut inner = self.world.lock();
            hash_in(
                &mut inner.facts.trace,
                &format!("notified {} {id}", message.token),
            );
            inner
                .facts
                .notified
                .entry(message.token.clone())
                .or_default()
                .insert(id);
        }
        Ok(())
    }
}
