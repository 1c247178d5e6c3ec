//! The operational side on PostgreSQL: recording endpoint health (the rule itself is
//! `herald_store::health`; the endpoint row is locked `FOR UPDATE`, so several nodes'
//! reports for one endpoint apply one after the other), apps' ops targets, the backlog and
//! breaker counts for metrics, and retention purges (one short transaction per batch).
use std::sync::Arc;

use deadpool_postgres::GenericClient;

use herald_store::health::*;
use herald_store::model::*;
use herald_store::{Result, StoreError};

use crate::admin::write_endpoint;
use crate::hints::notify;
use crate::rows::{self, col, ENDPOINT_COLS};
use crate::{backend, Inner};

pub(crate) async fn record_health(
    inner: &Inner,
    report: HealthReport,
) -> Result<Option<HealthRecorded>> {
    let generation = inner.contexts.generation();
    let mut client = inner.client().await?;
    let tx = client.transaction().await.map_err(backend)?;
    let row = tx
        .query_opt(
            &format!(
                "SELECT {ENDPOINT_COLS} FROM endpoints WHERE id = $1 AND NOT deleted FOR UPDATE"
            ),
            &[&report.endpoint_id],
        )
        .await
        .map_err(backend)?;
    let Some(row) = row else { return Ok(None) };
    let (mut ep, _) = rows::endpoint_from_row(&row)?;
    let was_blocked = ep.health.blocks(report.now);
    let transition = report.apply(&mut ep.health);
    if transition == Some(HealthTransition::Disabled) {
        ep.enabled = false;
        ep.updated_at = report.now;
    }
    write_endpoint(&tx, &ep).await?;
    let mut ops = None;
    if transition.is_some() {
        notify(&tx, &format!("endpoint:{}", ep.id)).await?;
        if was_blocked && !ep.health.blocks(report.now) {
            notify(&tx, "work").await?;
        }
        ops = rows::get_app_ops(&tx, &inner.contexts.sealer, &ep.app_id)
            .await?
            .flatten();
    }
    tx.commit().await.map_err(backend)?;
    if transition.is_some() {
        inner
            .contexts
            .put_endpoint_since(Arc::new(EndpointCtx::from_endpoint(&ep)), generation);
    }
    Ok(Some(HealthRecorded {
        endpoint: ep,
        transition,
        ops,
    }))
}

pub(crate) async fn set_app_ops(
    inner: &Inner,
    app_id: &str,
    ops: Option<OpsTarget>,
) -> Result<bool> {
    let (url, sealed) = match &ops {
        Some(t) => (
            Some(t.url.clone()),
            Some(
                inner
                    .contexts
                    .sealer
                    .seal_credentials(&rows::ops_scope(app_id), &t.credentials)?,
            ),
        ),
        None => (None, None),
    };
    let client = inner.client().await?;
    let n = client
        .execute(
            "UPDATE apps SET ops_url = $2, ops_credentials = $3 WHERE id = $1",
            &[&app_id, &url, &sealed],
        )
        .await
        .map_err(backend)?;
    Ok(n == 1)
}

pub(crate) async fn get_app_ops(inner: &Inner, app_id: &str) -> Result<Option<OpsTarget>> {
    let client = inner.client().await?;
    rows::get_app_ops(&client, &inner.contexts.sealer, app_id)
        .await?
        .ok_or(StoreError::NotFound("app"))
}

pub(crate) async fn pending_count(inner: &Inner) -> Result<u64> {
    let client = inner.client().await?;
    let row = client
        .query_one(
            "SELECT COUNT(*) FROM deliveries WHERE status = 'pending'",
            &[],
        )
        .await
        .map_err(backend)?;
    let n: i64 = col(&row, 0)?;
    Ok(n as u64)
}

pub(crate) async fn breaker_counts(inner: &Inner) -> Result<Vec<(BreakerState, u64)>> {
    let client = inner.client().await?;
    let rows = client
        .query(
            "SELECT health_state, COUNT(*) FROM endpoints WHERE NOT deleted GROUP BY health_state",
            &[],
        )
        .await
        .map_err(backend)?;
    let mut out = Vec::new();
    for row in rows {
        let state: String = col(&row, 0)?;
        let n: i64 = col(&row, 1)?;
        let state = BreakerState::parse(&state)
            .ok_or_else(|| StoreError::backend_msg(format!("bad breaker state {state:?}")))?;
        out.push((state, n as u64));
    }
    Ok(out)
}

/// One retention batch (see `OpsStore::purge_finished`): the candidates are locked `FOR
/// UPDATE SKIP LOCKED`, so a concurrent change (a manual retry) is never purged under it, and
/// deliveries are re-checked under the lock.
pub(crate) async fn purge_finished(inner: &Inner, p: PurgeParams) -> Result<Purged> {
    let mut client = inner.client().await?;
    let tx = client.transaction().await.map_err(backend)?;
    let limit = i64::from(p.limit.max(1));
    let row = tx
        .query_one(
            "WITH picked AS (
                 SELECT n.seq FROM notifications n
                 WHERE n.created_at < $1
                   AND NOT EXISTS (SELECT 1 FROM deliveries d
                                   WHERE d.notification_seq = n.seq
                                     AND (d.status = 'pending' OR d.updated_at >= $1))
                 ORDER BY n.created_at, n.seq LIMIT $2
                 FOR UPDATE OF n SKIP LOCKED),
             dels AS (
                 SELECT d.seq FROM deliveries d JOIN picked ON d.notification_seq = picked.seq
                 FOR UPDATE OF d),
             a AS (DELETE FROM attempts WHERE delivery_seq IN (SELECT seq FROM dels) RETURNING 1),
             d AS (DELETE FROM deliveries WHERE seq IN (SELECT seq FROM dels) RETURNING 1),
             n AS (DELETE FROM notifications WHERE seq IN (SELECT seq FROM picked) RETURNING 1)
             SELECT (SELECT COUNT(*) FROM n), (SELECT COUNT(*) FROM d), (SELECT COUNT(*) FROM a)",
            &[&p.before, &limit],
        )
        .await
        .map_err(backend)?;
    tx.commit().await.map_err(backend)?;
    let count = |i| -> Result<u64> { col::<i64>(&row, i).map(|n| n as u64) };
    Ok(Purged {
        notifications: count(0)?,
        deliveries: count(1)?,
        attempts: count(2)?,
    })
}
