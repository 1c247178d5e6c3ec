//! Retention: finished notifications (every delivery succeeded, failed or canceled) are
//! deleted with their deliveries, payloads and attempts once they finished longer ago than
//! the retention period (`herald serve --retention`, default 30 days; `herald purge` on
//! demand). What is deleted is gone: `GET /v1/notifications/{id}` and the delivery reads
//! answer 404 for it, and an idempotency key it used may create a new notification.
//! Pending work is never purged, whatever its age.
//!
//! Purging runs in batches of [`BATCH`] notifications, each one short transaction (on
//! SQLite, one operation in the single writer's queue between claims and outcomes), with a
//! pause between batches, so a large purge never stalls delivery.
use std::sync::Arc;
use std::time::Duration;

use herald_store::{PurgeParams, Purged, Store, StoreError, UnixMillis};
use tokio::sync::watch;

use crate::metrics::ServerMetrics;

/// Notifications per purge batch.
pub const BATCH: u32 = 500;
/// Pause between batches.
const PAUSE: Duration = Duration::from_millis(50);
/// How often the background task looks for work to purge.
const EVERY: Duration = Duration::from_secs(600);
/// The first look, shortly after start.
const FIRST: Duration = Duration::from_secs(10);

/// Purges everything that finished before `before`, batch by batch, until nothing is left
/// or `stop` says so. `on_batch` sees each batch's counts.
pub async fn purge_before(
    store: &dyn Store,
    before: UnixMillis,
    mut on_batch: impl FnMut(Purged),
    stop: Option<&watch::Receiver<bool>>,
) -> Result<Purged, StoreError> {
    let mut total = Purged::default();
    loop {
        if stop.is_some_and(|s| *s.borrow()) {
            break;
        }
        let batch = store
            .purge_finished(PurgeParams {
                before,
                limit: BATCH,
            })
            .await?;
        total.add(batch);
        on_batch(batch);
        if batch.notifications < u64::from(BATCH) {
            break;
        }
        tokio::time::sleep(PAUSE).await;
    }
    Ok(total)
}

/// Runs retention in the background until `stop`.
pub fn spawn(
    store: Arc<dyn Store>,
    retention: Duration,
    metrics: Arc<ServerMetrics>,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut wait = FIRST;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            wait = EVERY;
            let before = crate::clock::now_ms() - retention;
            match purge_before(
                store.as_ref(),
                before,
                |b| metrics.count_purged(b),
                Some(&stop),
            )
            .await
            {
                Ok(p) if p.notifications > 0 => tracing::info!(
                    notifications = p.notifications,
                    deliveries = p.deliveries,
                    attempts = p.attempts,
                    "retention purged finished notifications"
                ),
                Ok(_) => {}
                Err(StoreError::Closed) => return,
                Err(e) => tracing::warn!(error = %e, "retention purge failed; trying again later"),
            }
        }
    })
}
