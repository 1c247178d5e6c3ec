//! The operational side on PostgreSQL: recording endpoint health (the rule itself is
//! `herald_store::health`; the endpoint row is locked `FOR UPDATE`, so several nodes'
//! reports for one endpoint apply one after the other) with the ops notification a
//! transition causes (an outbox, same transaction), apps' ops targets (internal apps), the backlog and
//! breaker counts for metrics, and retention purges (one short transaction per batch).
use std::sync::Arc;

use deadpool_postgres::GenericClient;

use herald_store::health::*;
use herald_store::model::*;
use herald_store::ops_outbox::{
    ops_app, ops_endpoint, ops_notification as ops_notification_for, INTERNAL_OPS,
};
use herald_store::{EndpointUrl, Result, Sealer, StoreError};

use crate::admin::{
    app_row, delete_app_in, endpoint_row, insert_app, insert_endpoint, insert_notification,
    write_endpoint,
};
use crate::hints::notify;
use crate::rows::{self, col, opt_json, APP_COLS, ENDPOINT_COLS};
use crate::{backend, Inner};

/// Applies the report with the endpoint row locked and, when it caused a notified
/// transition of an endpoint whose app has an ops target, stores the ops notification in
/// the same transaction (an outbox: both commit or neither; see `herald_store::ops_outbox`).
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
    let mut ops_notification = None;
    if let Some(t) = transition {
        notify(&tx, &format!("endpoint:{}", ep.id)).await?;
        if was_blocked && !ep.health.blocks(report.now) {
            notify(&tx, "work").await?;
        }
        let ops_app = tx
            .query_opt(
                "SELECT o.id FROM apps a JOIN apps o ON o.id = a.ops_app_id
                 WHERE a.id = $1 AND a.internal IS NULL AND o.deleted_at IS NULL",
                &[&ep.app_id],
            )
            .await
            .map_err(backend)?;
        if let Some(ops_app) = ops_app {
            let ops_app: String = col(&ops_app, 0)?;
            if let Some(new) = ops_notification_for(&ops_app, t, &ep, report.now) {
                // No idempotency key, so never `None` (a deleted app is an error).
                let created = insert_notification(&tx, new, None)
                    .await?
                    .ok_or(StoreError::NotFound("app"))?;
                notify(&tx, "work").await?;
                ops_notification = Some(created.notification.id);
            }
        }
    }
    tx.commit().await.map_err(backend)?;
    if transition.is_some() {
        inner
            .contexts
            .put_endpoint_since(Arc::new(EndpointCtx::from_endpoint(&ep)), generation);
    }
    if ops_notification.is_some() {
        inner.work.signal();
    }
    Ok(Some(HealthRecorded {
        endpoint: ep,
        transition,
        ops_notification,
    }))
}

/// Sets, changes or clears the app's ops target in one transaction (see
/// `OpsStore::set_app_ops`).
pub(crate) async fn set_app_ops(
    inner: &Inner,
    app_id: &str,
    ops: Option<OpsTarget>,
    now: UnixMillis,
) -> Result<bool> {
    let generation = inner.contexts.generation();
    let mut client = inner.client().await?;
    let tx = client.transaction().await.map_err(backend)?;
    let changed = set_app_ops_in(&tx, &inner.contexts.sealer, app_id, ops, now).await?;
    let Some(changed) = changed else {
        return Ok(false);
    };
    tx.commit().await.map_err(backend)?;
    if let Some(app) = changed.app {
        inner
            .contexts
            .put_app_since(Arc::new(AppCtx::from_app(&app)), generation);
    }
    if let Some(ep) = changed.endpoint {
        inner
            .contexts
            .put_endpoint_since(Arc::new(EndpointCtx::from_endpoint(&ep)), generation);
    }
    for ep in changed.forgotten {
        inner.contexts.forget_endpoint(&ep);
    }
    Ok(true)
}

/// What [`set_app_ops_in`] changed, for the caches once it commits.
#[derive(Default)]
struct OpsChanged {
    app: Option<App>,
    endpoint: Option<Endpoint>,
    forgotten: Vec<String>,
}

async fn set_app_ops_in(
    tx: &impl GenericClient,
    sealer: &Sealer,
    app_id: &str,
    ops: Option<OpsTarget>,
    now: UnixMillis,
) -> Result<Option<OpsChanged>> {
    let Some(row) = tx
        .query_opt(
            "SELECT internal, ops_app_id FROM apps WHERE id = $1 AND deleted_at IS NULL FOR UPDATE",
            &[&app_id],
        )
        .await
        .map_err(backend)?
    else {
        return Ok(None);
    };
    if col::<Option<String>>(&row, 0)?.is_some() {
        return Ok(None);
    }
    let current = match col::<Option<String>>(&row, 1)? {
        Some(id) => tx
            .query_opt(
                "SELECT id FROM apps WHERE id = $1 AND deleted_at IS NULL FOR UPDATE",
                &[&id],
            )
            .await
            .map_err(backend)?
            .map(|_| id),
        None => None,
    };
    let mut changed = OpsChanged::default();
    match (ops, current) {
        (Some(target), Some(ops_app)) => {
            let row = tx
                .query_one(
                    &format!(
                        "UPDATE apps SET credentials = $2, retry = $3 WHERE id = $1
                         RETURNING {APP_COLS}"
                    ),
                    &[
                        &ops_app,
                        &sealer.seal_credentials(&ops_app, &target.credentials)?,
                        &opt_json(&target.retry)?,
                    ],
                )
                .await
                .map_err(backend)?;
            changed.app = Some(rows::app_from_row(&row, sealer)?);
            notify(tx, &format!("app:{ops_app}")).await?;
            let ep_row = tx
                .query_opt(
                    &format!(
                        "SELECT {ENDPOINT_COLS} FROM endpoints
                         WHERE app_id = $1 AND NOT deleted FOR UPDATE"
                    ),
                    &[&ops_app],
                )
                .await
                .map_err(backend)?;
            let ep = match ep_row {
                Some(row) => {
                    let (mut ep, _) = rows::endpoint_from_row(&row)?;
                    EndpointPatch {
                        url: Some(EndpointUrl::from_stored(target.url.clone())),
                        enabled: Some(true),
                        ..EndpointPatch::default()
                    }
                    .apply(&mut ep, now);
                    write_endpoint(tx, &ep).await?;
                    ep
                }
                None => {
                    let ep = endpoint_row(ops_endpoint(&ops_app, &target.url, now));
                    insert_endpoint(tx, &ep).await?;
                    ep
                }
            };
            notify(tx, &format!("endpoint:{}", ep.id)).await?;
            notify(tx, "work").await?;
            changed.endpoint = Some(ep);
        }
        (Some(target), None) => {
            let app = app_row(ops_app(app_id, &target, now));
            insert_app(tx, sealer, &app, Some(INTERNAL_OPS)).await?;
            let ep = endpoint_row(ops_endpoint(&app.id, &target.url, now));
            insert_endpoint(tx, &ep).await?;
            tx.execute(
                "UPDATE apps SET ops_app_id = $2, ops_url = NULL, ops_credentials = NULL
                 WHERE id = $1",
                &[&app_id, &app.id],
            )
            .await
            .map_err(backend)?;
            changed.app = Some(app);
            changed.endpoint = Some(ep);
        }
        (None, current) => {
            if let Some(ops_app) = current {
                if let Some(deleted) = delete_app_in(tx, &ops_app, now).await? {
                    changed.forgotten = deleted.endpoints;
                }
            }
            tx.execute(
                "UPDATE apps SET ops_app_id = NULL, ops_url = NULL, ops_credentials = NULL
                 WHERE id = $1",
                &[&app_id],
            )
            .await
            .map_err(backend)?;
        }
    }
    Ok(Some(changed))
}

/// Moves ops targets set before migration 8 (the URL and sealed secret on the app's row)
/// into internal apps, once at connect. Each app is moved in its own transaction with its
/// row locked, so nodes starting together move each once.
pub(crate) async fn upgrade_legacy_ops_targets(inner: &Inner, now: UnixMillis) -> Result<()> {
    let client = inner.client().await?;
    let ids = client
        .query(
            "SELECT id FROM apps WHERE ops_url IS NOT NULL AND ops_app_id IS NULL
               AND deleted_at IS NULL AND internal IS NULL",
            &[],
        )
        .await
        .map_err(backend)?;
    drop(client);
    for row in ids {
        let id: String = col(&row, 0)?;
        let mut client = inner.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        let locked = tx
            .query_opt(
                "SELECT id FROM apps WHERE id = $1 AND ops_app_id IS NULL FOR UPDATE",
                &[&id],
            )
            .await
            .map_err(backend)?;
        if locked.is_none() {
            continue;
        }
        let sealer = &inner.contexts.sealer;
        if let Some(target) = rows::get_legacy_app_ops(&tx, sealer, &id).await? {
            set_app_ops_in(&tx, sealer, &id, Some(target), now).await?;
        }
        tx.commit().await.map_err(backend)?;
    }
    Ok(())
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
