//! Herald's delivery engine: which delivery is due, who may send it now, the HTTP attempt,
//! its outcome and the next attempt time. It never blocks on one endpoint.
//!
//! The store is the source of truth; the engine claims soon-due work from the store's queue
//! and keeps it in memory (the scheduler), makes attempts with one pooled client
//! ([`attempt`]) under the target policy ([`ssrf`]), and hands every outcome back to the
//! store, which applies it only while this node's claim holds. Several engines may share one
//! database: each claims its own work under a lease, and a dead engine's work is taken over
//! when its lease expires. After a restart every pending delivery (including those that were
//! in flight) is claimed and attempted again.
//!
//! The engine never reads the wall clock directly: it asks its [`Clock`], so tests run it on
//! Tokio's paused time.
pub mod attempt;
pub mod metrics;
pub mod raw;
mod scheduler;
pub mod ssrf;

use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use herald_store::{BreakerPolicy, NodeId, Queue, UnixMillis};

pub use ssrf::TargetPolicy;

/// Engine settings. Defaults are the documented ones.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Attempts in flight across all destinations. Large on purpose: a hanging endpoint
    /// holds at most its own in-flight limit, and this must exceed the sum of those for
    /// misbehaving endpoints so healthy ones keep slots.
    pub global_concurrency: usize,
    /// In-flight limit of an ad-hoc `notify_url` destination (endpoints carry their own).
    pub default_max_in_flight: u32,
    /// Most attempts one app may have in flight: its share of `global_concurrency`, so one
    /// tenant whose endpoints hang cannot hold every slot while others have work.
    pub app_max_in_flight: usize,
    pub connect_timeout: Duration,
    /// Total time for one attempt, response body included.
    pub request_timeout: Duration,
    /// Most bytes of a response read.
    pub response_read_cap: usize,
    /// Most bytes of a response stored with the attempt.
    pub response_store_cap: usize,
    /// How far ahead of now the engine claims work and keeps it in memory.
    pub window: Duration,
    /// Most deliveries held in memory.
    pub max_in_memory: usize,
    /// Most deliveries per claim.
    pub claim_batch: usize,
    /// How often the engine claims without a hint (hints only make it sooner).
    pub claim_interval: Duration,
    /// How long a node's claims hold without a renewal: a dead node's work is taken over
    /// after at most this plus half of it. Renewed every third of it.
    pub lease: Duration,
    /// Where the engine reads the time.
    pub clock: Arc<dyn Clock>,
    pub target_policy: Arc<TargetPolicy>,
    pub user_agent: String,
    /// How long shutdown waits for attempts in flight.
    pub shutdown_grace: Duration,
    /// Endpoint health: when the breaker opens, how long it cools down, when a failing
    /// endpoint is disabled (see `herald_store::health`).
    pub breaker: BreakerPolicy,
    /// How often an endpoint's success is recorded in the store while it stays healthy
    /// (its `last_success_at`); successes after a failure are always recorded.
    pub success_record_interval: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            global_concurrency: 2048,
            default_max_in_flight: 8,
            app_max_in_flight: 1024,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(15),
            response_read_cap: 64 * 1024,
            response_store_cap: 4 * 1024,
            window: Duration::from_secs(60),
            max_in_memory: 100_000,
            claim_batch: 10_000,
            claim_interval: Duration::from_secs(1),
            lease: Duration::from_secs(30),
            clock: Arc::new(SystemClock),
            target_policy: Arc::new(TargetPolicy::default()),
            user_agent: concat!("Herald/", env!("CARGO_PKG_VERSION")).to_string(),
            shutdown_grace: Duration::from_secs(5),
            breaker: BreakerPolicy::default(),
            success_record_interval: Duration::from_secs(60),
        }
    }
}

/// Counters the engine keeps while it runs (for `herald bench`, metrics and tests).
#[derive(Debug, Default)]
pub struct EngineStats {
    pub attempts: AtomicU64,
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    pub in_flight: AtomicU64,
    pub in_memory: AtomicU64,
    /// Deliveries postponed to relieve memory (see the scheduler's parking).
    pub parked: AtomicU64,
    /// Attempts that failed for lack of local resources (descriptors, buffers): retried
    /// without being counted against the delivery or its destination.
    pub local_failures: AtomicU64,
    /// Claims answered by the store; the first one means the engine is ready (it holds
    /// what was due soon and free).
    pub claims: AtomicU64,
    /// Health reports written to the store (see `EngineConfig::success_record_interval`).
    pub health_reports: AtomicU64,
    /// Labelled counters and histograms for `/metrics`.
    pub metrics: Arc<metrics::EngineMetrics>,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

/// A running engine.
pub struct Engine {
    pub stats: Arc<EngineStats>,
    pub task: tokio::task::JoinHandle<()>,
}

impl Engine {
    /// Starts the engine on `queue` until `shutdown` completes, attempting over HTTP. Must be
    /// called inside a Tokio runtime.
    pub fn start(
        queue: Arc<dyn Queue>,
        config: EngineConfig,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<Engine, EngineError> {
        let client = attempt::build_client(&config).map_err(EngineError::Client)?;
        let attempter = Arc::new(attempt::HttpAttempter {
            client,
            policy: config.target_policy.clone(),
            read_cap: config.response_read_cap,
            store_cap: config.response_store_cap,
            clock: config.clock.clone(),
            request_timeout: config.request_timeout,
            urls: Default::default(),
        });
        Ok(Engine::with_attempter(queue, config, attempter, shutdown))
    }

    /// Starts the engine with another way of making attempts (tests).
    pub fn with_attempter(
        queue: Arc<dyn Queue>,
        config: EngineConfig,
        attempter: Arc<dyn attempt::Attempter>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Engine {
        let stats = Arc::new(EngineStats::default());
        let scheduler = scheduler::Scheduler::new(queue, config, attempter, stats.clone());
        let task = tokio::spawn(scheduler.run(shutdown));
        Engine { stats, task }
    }
}

/// Where the engine reads the time, in unix milliseconds.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    fn now(&self) -> UnixMillis;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixMillis {
        now_ms()
    }
}

/// A clock that starts at a fixed time and follows Tokio's clock from there, so tests that
/// pause and advance Tokio's time move the engine's time with it.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    start: UnixMillis,
    origin: tokio::time::Instant,
}

impl TokioClock {
    /// Must be called inside a Tokio runtime.
    pub fn starting_at(start: UnixMillis) -> TokioClock {
        TokioClock {
            start,
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> UnixMillis {
        self.start + self.origin.elapsed()
    }
}

/// A fresh node id for a lease.
pub(crate) fn new_node_id() -> NodeId {
    NodeId::from(format!("node_{}", ulid::Ulid::new()))
}

/// The wall clock in unix milliseconds.
pub fn now_ms() -> UnixMillis {
    UnixMillis::now()
}
