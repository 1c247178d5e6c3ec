//! The unpaid-timeout timer: closes waiting trades at their deadline. It sleeps until the
//! earliest deadline in the store (or until a new payment wakes it), closes what is due, and
//! sleeps again; it never polls rows one by one. Deadlines are in the store, so a restart
//! picks up where it left off.
//!
//! A new payment wakes only the timer of the node that created it. On a database shared by
//! several nodes, every timer also reads the deadlines again at least every
//! `SandboxOptions::recheck` (the lease length under `herald serve`), so a trade whose
//! creator died still closes, by a live node, within its timeout plus that bound. Closing is
//! a compare-and-set on the trade's version: when two timers race, one closes it.
use std::time::Duration;

use tokio::sync::watch;

use super::Sandbox;
use herald_engine::now_ms;

/// How many due payments one pass reads.
const BATCH: u32 = 64;
/// How long a payment that could not be closed waits before the next try.
const CLOSE_RETRY: Duration = Duration::from_secs(1);

pub async fn run(sandbox: Sandbox, mut stop: watch::Receiver<bool>) {
    loop {
        if *stop.borrow() {
            return;
        }
        let recheck = sandbox.inner.recheck;
        let sleep = match pass(&sandbox).await {
            Ok(Some(next)) => next.saturating_sub(now_ms()).min(recheck),
            Ok(None) => recheck,
            Err(e) => {
                tracing::warn!(error = %e, "the sandbox timer cannot read deadlines; retrying");
                Duration::from_secs(1)
            }
        };
        if sleep.is_zero() {
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = sandbox.inner.wake.notified() => {}
            _ = stop.changed() => {}
        }
    }
}

/// Closes the due payments of the earliest batch; returns the next deadline (now when the
/// batch was full of due ones, so the caller goes again at once).
async fn pass(
    sandbox: &Sandbox,
) -> Result<Option<herald_store::UnixMillis>, herald_store::StoreError> {
    let rows = sandbox.store().sandbox_deadlines(BATCH).await?;
    let now = now_ms();
    for row in &rows {
        let Some(deadline) = row.deadline else {
            continue;
        };
        if deadline > now {
            return Ok(Some(deadline));
        }
        match sandbox.close(&row.id, "expired").await {
            Ok(_) => tracing::info!(payment = %row.id, "unpaid sandbox payment expired"),
            Err(e) => {
                // It stays due: try again in a second rather than at once, forever.
                tracing::warn!(payment = %row.id, error = %e, "closing an expired sandbox payment failed; retrying in 1 s");
                return Ok(Some(now + CLOSE_RETRY));
            }
        }
    }
    Ok((rows.len() as u32 == BATCH).then_some(now))
}
