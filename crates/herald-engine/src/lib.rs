//! Herald's delivery engine: which delivery is due, who may send it now, the HTTP attempt,
//! its outcome and the next attempt time. It never blocks on one endpoint.
//!
//! The store is the source of truth; the engine keeps a bounded window of soon-due work in
//! memory ([`scheduler`]), makes attempts with one pooled client ([`attempt`]) under the
//! target policy ([`ssrf`]), and hands every outcome back to the store, whose group commit
//! makes it durable. After a restart every pending delivery (including those that were in
//! flight) is loaded and attempted again.
pub mod attempt;
mod scheduler;
pub mod ssrf;

use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use herald_store::{Millis, Store};

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
    pub connect_timeout: Duration,
    /// Total time for one attempt, response body included.
    pub request_timeout: Duration,
    /// Most bytes of a response read.
    pub response_read_cap: usize,
    /// Most bytes of a response stored with the attempt.
    pub response_store_cap: usize,
    /// How far ahead of now the in-memory window reaches.
    pub window: Duration,
    /// Most deliveries held in memory.
    pub max_in_memory: usize,
    /// Most deliveries per load.
    pub load_page: usize,
    pub target_policy: Arc<TargetPolicy>,
    pub user_agent: String,
    /// How long shutdown waits for attempts in flight.
    pub shutdown_grace: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            global_concurrency: 2048,
            default_max_in_flight: 8,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(15),
            response_read_cap: 64 * 1024,
            response_store_cap: 4 * 1024,
            window: Duration::from_secs(60),
            max_in_memory: 100_000,
            load_page: 10_000,
            target_policy: Arc::new(TargetPolicy::default()),
            user_agent: concat!("Herald/", env!("CARGO_PKG_VERSION")).to_string(),
            shutdown_grace: Duration::from_secs(5),
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
    /// Window loads answered by the store; the first one means the engine is ready (it
    /// holds everything due soon).
    pub loads: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("the store's event stream was already taken by another engine")]
    EventsTaken,
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

/// A running engine.
pub struct Engine {
    pub stats: Arc<EngineStats>,
    pub task: tokio::task::JoinHandle<()>,
}

impl Engine {
    /// Starts the engine on `store` until `shutdown` completes. Must be called inside a
    /// Tokio runtime.
    pub fn start(
        store: Arc<dyn Store>,
        config: EngineConfig,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<Engine, EngineError> {
        let events = store.take_events().ok_or(EngineError::EventsTaken)?;
        let client =
            attempt::build_client(&config).map_err(|e| EngineError::Client(e.to_string()))?;
        let sender = Arc::new(attempt::Sender {
            client,
            policy: config.target_policy.clone(),
            read_cap: config.response_read_cap,
            store_cap: config.response_store_cap,
            request_timeout: config.request_timeout,
        });
        let stats = Arc::new(EngineStats::default());
        let scheduler = scheduler::Scheduler::new(store, config, sender, stats.clone());
        let task = tokio::spawn(scheduler.run(events, shutdown));
        Ok(Engine { stats, task })
    }
}

/// The wall clock in unix milliseconds.
pub fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}
