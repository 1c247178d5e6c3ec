//! What the scenarios that drive the store and engine directly set up: a durable SQLite
//! store (`synchronous=FULL`) in a fresh temporary directory, apps with generated
//! credentials, endpoints, bulk inserts from many tasks (the store's writer group-commits
//! them, so this is how a busy API would fill it), and an engine that can be stopped and
//! whose counters are waited on.
use anyhow::Context as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_engine::{Engine, EngineConfig, EngineStats, TargetPolicy};
use herald_protocols::Profile;
use herald_store::{
    App, Endpoint, EventType, NewApp, NewEndpoint, NewNotification, NotifyUrl, Store, UnixMillis,
};
use herald_store_sqlite::{Durability, SqliteStore};
use tokio::sync::oneshot;

use super::progress::Progress;
use super::Plan;

/// The payload of every notification: a small payment result, as a provider would send.
/// Its fields suit every profile (wechatpay-v2 needs `out_trade_no` or `transaction_id`).
pub const PAYLOAD: &str = r#"{"out_trade_no":"20261123000001","transaction_id":"4200002026112300001","total_amount":"88.00","total_fee":8800,"trade_status":"TRADE_SUCCESS","subject":"coffee"}"#;
pub const EVENT_TYPE: &str = "trade.success";

/// Tasks inserting at once. Many, so each group commit carries many rows; the store's
/// write queue (16k operations) bounds what they can have waiting.
const INSERT_TASKS: u64 = 256;

/// A fresh temporary directory under the plan's directory; removed when dropped.
pub fn temp_dir(plan: &Plan) -> anyhow::Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix("herald-bench-")
        .tempdir_in(&plan.dir)
        .with_context(|| {
            format!(
                "cannot create a temporary directory in {}",
                plan.dir.display()
            )
        })
}

/// Opens a durable store. Must be called inside the runtime.
pub fn open_store(path: &Path) -> anyhow::Result<Arc<SqliteStore>> {
    SqliteStore::open(path, Durability::Full)
        .map(Arc::new)
        .with_context(|| format!("cannot open {}", path.display()))
}

pub async fn create_app(store: &dyn Store, name: &str, profile: Profile) -> anyhow::Result<App> {
    let (credentials, _) = profile
        .create_credentials(&serde_json::Value::Null)
        .with_context(|| format!("{} credentials", profile.name()))?;
    store
        .create_app(NewApp {
            name: name.into(),
            profile,
            retry: None,
            ack: None,
            credentials,
            now: herald_engine::now_ms(),
        })
        .await
        .context("create app")
}

pub async fn create_endpoint(
    store: &dyn Store,
    app_id: &str,
    url: String,
    max_in_flight: u32,
) -> anyhow::Result<Endpoint> {
    store
        .create_endpoint(NewEndpoint {
            app_id: app_id.into(),
            url: url.parse().context("endpoint url")?,
            event_types: None,
            retry: None,
            ack: None,
            max_in_flight,
            ordered: false,
            enabled: true,
            timeout_ms: None,
            now: herald_engine::now_ms(),
        })
        .await
        .context("create endpoint")
}

/// A notification of `app_id` with the bench payload, created at `now`, to `notify_url`
/// (or to the app's endpoints when `None`).
pub fn notification(app_id: &str, notify_url: Option<&str>, now: UnixMillis) -> NewNotification {
    NewNotification {
        app_id: app_id.into(),
        event_type: EventType::internal(EVENT_TYPE),
        payload: PAYLOAD.into(),
        notify_url: notify_url.map(|u| NotifyUrl::from_stored(u.to_string())),
        idempotency_key: None,
        order_key: None,
        now,
    }
}

/// Stores `n` notifications made by `make` from many tasks, with a progress line.
pub async fn insert(
    label: &str,
    store: Arc<dyn Store>,
    n: u64,
    make: Arc<dyn Fn(u64) -> NewNotification + Send + Sync>,
) -> anyhow::Result<()> {
    let done = Arc::new(AtomicU64::new(0));
    let progress = Progress::start(label, n, {
        let done = done.clone();
        Arc::new(move || done.load(Ordering::Relaxed))
    });
    let mut tasks = Vec::new();
    for first in 0..INSERT_TASKS.min(n) {
        let (store, make, done) = (store.clone(), make.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = first;
            while i < n {
                store
                    .create_notification(make(i))
                    .await
                    .with_context(|| format!("storing notification {i}"))?;
                done.fetch_add(1, Ordering::Relaxed);
                i += INSERT_TASKS;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await
            .with_context(|| format!("{label}: an insert task died"))??;
    }
    progress.finish().await;
    Ok(())
}

/// The engine settings of the bench: loopback targets allowed, `concurrency` in flight per
/// ad-hoc `notify_url` destination, attempts time out after `request_timeout`.
pub fn engine_config(concurrency: u32, request_timeout: Duration) -> EngineConfig {
    EngineConfig {
        default_max_in_flight: concurrency,
        request_timeout,
        target_policy: Arc::new(TargetPolicy {
            allow_private: true,
            allow: vec![],
        }),
        // Shutdown is between measurements; what is cut short does not matter.
        shutdown_grace: Duration::from_millis(500),
        ..EngineConfig::default()
    }
}

/// An engine the bench can stop.
pub struct BenchEngine {
    pub stats: Arc<EngineStats>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl BenchEngine {
    pub fn start(store: Arc<dyn Store>, config: EngineConfig) -> anyhow::Result<BenchEngine> {
        let (stop, stopped) = oneshot::channel::<()>();
        let engine = Engine::start(store, config, async move {
            let _ = stopped.await;
        })
        .context("cannot start the engine")?;
        Ok(BenchEngine {
            stats: engine.stats,
            stop: Some(stop),
            task: engine.task,
        })
    }

    /// Stops the engine and waits for it (attempts in flight get its shutdown grace).
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }

    /// Deliveries acknowledged so far.
    pub fn succeeded(&self) -> u64 {
        self.stats.succeeded.load(Ordering::Relaxed)
    }
}

/// Polls `done` every 2 ms until true; the time it took, or an error after `timeout`.
/// Polling an atomic counter is cheap and 2 ms is below every phase's resolution.
pub async fn wait_until(
    what: &str,
    timeout: Duration,
    mut done: impl FnMut() -> bool,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    while !done() {
        if started.elapsed() > timeout {
            anyhow::bail!("{what}: not done after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(started.elapsed())
}

/// How long a drain of `n` deliveries may take before the bench calls it stuck: generous
/// (a debug build on a slow disk) but finite.
pub fn drain_timeout(n: u64) -> Duration {
    Duration::from_secs(120 + n / 100)
}
