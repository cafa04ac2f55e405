//! Building what a policy describes: the journal, every sink, every issuer (whose credential may live in a
//! sink), and the [`Rotator`] over them. The same construction serves the daemon, its reloads, `plan`, `rotate`
//! and `check --online`; the simulation builds on its own [`Backends`].

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;

use crate::cluster::fenced::{FencedExchange, FencedSink};
use crate::cluster::{vault::VaultCoord, Fence};
use crate::issuer::{self, api::Exchange, api::HttpExchange, api::IssuerDeps};
use crate::journal::{DiskStore, Journal, JournalError, JournalKey};
use crate::metrics::Metrics;
use crate::policy::SecretError;
use crate::policy::{IssuerConfig, Policy, SinkConfig};
use crate::retry::PacerRegistry;
use crate::rotation::Rotator;
use crate::sink::{self, Sink, SinkError};
use crate::status::StatusBoard;

/// What issuers and sinks are built on: the network (the daemon), or in-memory models (the simulation).
#[async_trait]
pub trait Backends: Send + Sync {
    /// The wire an issuer talks over.
    fn exchange(&self, cfg: &IssuerConfig) -> Result<Arc<dyn Exchange>, String>;
    /// The sink of one `[sinks.NAME]` table.
    async fn sink(&self, cfg: &SinkConfig) -> Result<Arc<dyn Sink>, SinkError>;
    /// How `notify` actions run.
    fn deliverer(&self) -> Arc<dyn crate::notify::Deliver>;
}

/// The real thing: HTTPS through the one client builder, the sink kinds of `sink::build`.
pub struct Network;

#[async_trait]
impl Backends for Network {
    fn exchange(&self, cfg: &IssuerConfig) -> Result<Arc<dyn Exchange>, String> {
        let client = crate::http::client(cfg.ca_file.as_deref()).map_err(|e| e.to_string())?;
        Ok(Arc::new(HttpExchange::new(client)))
    }

    async fn sink(&self, cfg: &SinkConfig) -> Result<Arc<dyn Sink>, SinkError> {
        sink::build(cfg).await
    }

    fn deliverer(&self) -> Arc<dyn crate::notify::Deliver> {
        static NETWORK: std::sync::OnceLock<Arc<crate::notify::Network>> =
            std::sync::OnceLock::new();
        NETWORK.get_or_init(crate::notify::Network::new).clone()
    }
}

/// What every rotator the daemon builds shares, from start to exit: a reload builds new issuers and sinks over
/// the same journal (held writes, visit locks), pacers (429 blocks), metrics and status board.
#[derive(Clone)]
pub struct Shared {
    pub journal: Arc<Journal>,
    pub metrics: Arc<Metrics>,
    pub pacers: Arc<PacerRegistry>,
    pub backends: Arc<dyn Backends>,
    pub board: Option<StatusBoard>,
    /// With `[cluster]`: whether this instance holds the lease. Issuers and shared sinks are built behind it.
    pub fence: Option<Arc<Fence>>,
}

impl Shared {
    /// One-shot commands: the network, fresh metrics and pacers, no status board.
    pub fn for_command(journal: Journal) -> Self {
        Shared {
            journal: Arc::new(journal),
            metrics: Arc::new(Metrics::new()),
            pacers: Arc::new(PacerRegistry::default()),
            backends: Arc::new(Network),
            board: None,
            fence: None,
        }
    }
}

/// Why the journal of a policy cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("state_key: {0}")]
    StateKeyUnreadable(#[from] SecretError),
    #[error("state_key: {0}")]
    StateKeyInvalid(String),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("[cluster]: {0}")]
    Cluster(String),
}

/// The `state_key` of `policy`, resolved and parsed.
fn journal_key(policy: &Policy) -> Result<Option<JournalKey>, SetupError> {
    match &policy.daemon.state_key {
        None => Ok(None),
        Some(r) => {
            let secret = r.resolve_local()?;
            JournalKey::parse(&secret)
                .map(Some)
                .map_err(SetupError::StateKeyInvalid)
        }
    }
}

/// Opens the journal of `policy` (read-only for `plan`), with its `state_key` when one is set. With `[cluster]`
/// the journal is the shared one, and only a read-only view opens here: writes need the lease
/// ([`open_cluster`]).
pub fn open_journal(policy: &Policy, read_only: bool) -> Result<Journal, SetupError> {
    let key = journal_key(policy)?;
    let journal = match (&policy.cluster, read_only) {
        (None, true) => Journal::open_read_only(&policy.daemon.state_dir),
        (None, false) => Journal::open(&policy.daemon.state_dir)?,
        (Some(_), true) => Journal::new(Arc::new(
            VaultCoord::new(policy, false).map_err(SetupError::Cluster)?,
        )),
        (Some(_), false) => {
            return Err(SetupError::Cluster(
                "only the lease holder writes the journal: run `rotate` against a running instance (no daemon answers on this host's control socket)"
                    .into(),
            ))
        }
    };
    Ok(journal.with_key(key))
}

/// With `[cluster]`: the shared journal and the lease over the coordination store, behind this instance's fence.
/// `state_dir` keeps the local lock (one daemon per `state_dir`); a local journal left with interrupted rotations
/// (from before `[cluster]` was set) must be finished first, or its minted values would be forgotten.
pub fn open_cluster(policy: &Policy) -> Result<(Journal, Arc<VaultCoord>, Arc<Fence>), SetupError> {
    let settings = policy
        .cluster
        .as_ref()
        .ok_or_else(|| SetupError::Cluster("the policy has no [cluster] table".into()))?;
    let key = journal_key(policy)?;
    let local = DiskStore::open(&policy.daemon.state_dir)?;
    if local.has_entries() {
        return Err(SetupError::Cluster(format!(
            "{} holds journal entries written without [cluster]: run the daemon once without [cluster] (or `token-rotator run --once`) to finish those rotations, then enable it",
            local.log_path().display()
        )));
    }
    let identity = settings
        .identity
        .clone()
        .unwrap_or_else(crate::cluster::default_identity);
    let fence = Fence::new(identity, settings.fence_after());
    let coord = Arc::new(
        VaultCoord::new(policy, true)
            .map_err(SetupError::Cluster)?
            .with_local_lock(local),
    );
    let journal = Journal::new(coord.clone()).with_key(key);
    Ok((journal, coord, fence))
}

/// Builds every sink, then every issuer (whose credential may live in a sink).
pub async fn build_rotator(policy: &Policy, shared: &Shared) -> Rotator {
    let mut rotator = build_sinks(policy, shared).await;
    for (name, cfg) in &policy.issuers {
        let built = match rotator.resolve_secret(&cfg.token).await {
            Ok(cred) => shared.backends.exchange(cfg).and_then(|exchange| {
                // Cluster mode: every request to the issuer asks the fence first.
                let exchange: Arc<dyn Exchange> = match &shared.fence {
                    Some(fence) => Arc::new(FencedExchange {
                        inner: exchange,
                        fence: fence.clone(),
                    }),
                    None => exchange,
                };
                let deps = IssuerDeps {
                    exchange,
                    pacers: shared.pacers.get(name, cfg.requests_per_second),
                    metrics: shared.metrics.clone(),
                };
                issuer::build(cfg, cred, deps).map_err(|e| e.message)
            }),
            Err(why) => Err(format!("credential {}: {why}", cfg.token)),
        };
        if let Err(why) = &built {
            tracing::error!(issuer = %name, error = %why, "issuer is unusable; its tokens will fail");
        }
        rotator.issuers.insert(name.clone(), built);
    }
    // Sinks that borrow an issuer's connection call with its live credential and share its pacers.
    for (sink, issuer, icfg) in borrowing(policy, &rotator) {
        let credential = match rotator.issuers.get(issuer) {
            Some(Ok(built)) => built.live_credential(),
            _ => None,
        };
        if let Some(credential) = credential {
            sink.link(issuer_link(shared, issuer, icfg, credential));
        }
    }
    rotator
}

/// The sinks of `policy` that borrow an issuer's connection (`issuer = "…"`), with that issuer's name and table.
fn borrowing<'p>(
    policy: &'p Policy,
    rotator: &Rotator,
) -> Vec<(Arc<dyn Sink>, &'p str, &'p IssuerConfig)> {
    policy
        .sinks
        .values()
        .filter_map(|cfg| {
            let (issuer, _) = cfg.spec.borrowed_issuer(cfg.settings.as_ref())?;
            let (name, icfg) = policy.issuers.get_key_value(&issuer)?;
            match rotator.sinks.get(&cfg.name) {
                Some(Ok(sink)) => Some((sink.clone(), name.as_str(), icfg)),
                _ => None,
            }
        })
        .collect()
}

fn issuer_link(
    shared: &Shared,
    issuer: &str,
    icfg: &IssuerConfig,
    credential: crate::secret::LiveSecret,
) -> crate::sink::IssuerLink {
    crate::sink::IssuerLink {
        address: icfg.address.clone(),
        ca_file: icfg.ca_file.clone(),
        credential,
        pacers: shared.pacers.get(issuer, icfg.requests_per_second),
    }
}

/// A rotator that can read the sinks but has no issuers (`plan` never calls one). A sink that borrows an issuer's
/// connection (delivery targets, which `plan` reads too) gets that issuer's credential as it is now; only that
/// credential is resolved.
pub async fn build_sinks_only(policy: &Policy, shared: &Shared) -> Rotator {
    let rotator = build_sinks(policy, shared).await;
    for (sink, issuer, icfg) in borrowing(policy, &rotator) {
        match rotator.resolve_secret(&icfg.token).await {
            Ok(value) => sink.link(issuer_link(
                shared,
                issuer,
                icfg,
                crate::secret::LiveSecret::new(value),
            )),
            Err(why) => {
                tracing::error!(sink = %sink.name(), issuer = %issuer, error = %why, "the credential of the issuer this sink borrows cannot be read")
            }
        }
    }
    rotator
}

/// Every sink of `policy`, and a rotator over them without issuers.
async fn build_sinks(policy: &Policy, shared: &Shared) -> Rotator {
    let mut sinks = HashMap::new();
    for (name, cfg) in &policy.sinks {
        shared.metrics.init_sink(name);
        let built = shared.backends.sink(cfg).await.map_err(|e| e.message);
        // Every instance keeps its own local sinks; the shared ones are written by the lease holder only.
        let built = match (&shared.fence, built) {
            (Some(fence), Ok(inner)) if !cfg.spec.is_local() => Ok(Arc::new(FencedSink {
                inner,
                fence: fence.clone(),
            }) as Arc<dyn Sink>),
            (_, built) => built,
        };
        if let Err(why) = &built {
            tracing::error!(sink = %name, error = %why, "sink is unusable; tokens writing to it will fail");
        }
        sinks.insert(name.clone(), built);
    }
    Rotator {
        issuers: HashMap::new(),
        credential_refs: policy
            .issuers
            .iter()
            .map(|(name, cfg)| (name.clone(), cfg.token.clone()))
            .collect(),
        local_sinks: policy
            .sinks
            .values()
            .filter(|cfg| cfg.spec.is_local())
            .map(|cfg| cfg.name.clone())
            .collect(),
        level_locals: policy.cluster.is_some(),
        sinks,
        journal: shared.journal.clone(),
        metrics: shared.metrics.clone(),
        tokens: policy.tokens.values().cloned().collect(),
        board: shared.board.clone(),
        liveness: Default::default(),
        deliverer: shared.backends.deliverer(),
    }
}
