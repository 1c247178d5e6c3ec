//! SQL for the operator dashboard's reads ([`DashboardStore`](herald_store::DashboardStore)),
//! each in a read-only transaction of its own ([`report`]). Which index serves each query is
//! said next to it; the bounds are the seam's (see `herald_store::dashboard`).
use deadpool_postgres::GenericClient;
use futures_util::future::BoxFuture;
use tokio_postgres::types::ToSql;

use herald_store::dashboard::*;
use herald_store::model::*;
use herald_store::{Result, StoreError};

use crate::rows::{col, summaries_with_deliveries};
use crate::{backend, sandbox, Inner};

/// Runs one dashboard report: `read` in a read-only transaction with sequential scans
/// allowed again. The pool's sessions turn them off for the queue's statements (see
/// `connect::SESSION_OPTIONS`), but a report aggregates over many rows, and for one over
/// most of a table a whole-table scan is the faster plan (the troubled endpoints of a window
/// covering 180,000 attempts: 72 ms with it, 113-123 ms without). Two more round trips, on
/// a page an operator loads, not on the delivery path.
pub(crate) async fn report<T, F>(inner: &Inner, read: F) -> Result<T>
where
    F: for<'t> FnOnce(&'t deadpool_postgres::Transaction<'t>) -> BoxFuture<'t, Result<T>>,
{
    let mut client = inner.client().await?;
    let tx = client
        .build_transaction()
        .read_only(true)
        .start()
        .await
        .map_err(backend)?;
    tx.batch_execute("SET LOCAL enable_seqscan = on")
        .await
        .map_err(backend)?;
    let out = read(&tx).await?;
    tx.commit().await.map_err(backend)?;
    Ok(out)
}

fn limit_of(limit: u32) -> i64 {
    i64::from(limit.clamp(1, MAX_PAGE))
}

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0).min(COUNT_CAP)
}

/// Apps by id: the primary key.
pub(crate) async fn list_apps(c: &impl GenericClient, page: &ListPage) -> Result<Page<AppSummary>> {
    let after = page.cursor.clone().unwrap_or_default();
    let limit = limit_of(page.limit);
    let stmt = c
        .prepare_cached(
            "SELECT id, name, profile, created_at FROM apps WHERE internal IS NULL AND id > $1
             ORDER BY id LIMIT $2",
        )
        .await
        .map_err(backend)?;
    let rows = c
        .query(&stmt, &[&after, &(limit + 1)])
        .await
        .map_err(backend)?;
    let mut items = rows
        .iter()
        .map(|r| {
            Ok(AppSummary {
                id: col(r, 0)?,
                name: col(r, 1)?,
                profile: col(r, 2)?,
                created_at: col(r, 3)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let more = items.len() as i64 > limit;
    items.truncate(limit as usize);
    Ok(Page {
        next_cursor: more.then(|| items.last().map(|a| a.id.clone())).flatten(),
        items,
    })
}

/// Attempts per minute: a range of `attempts_by_time (at, error_class)`.
pub(crate) async fn activity(
    c: &impl GenericClient,
    since: UnixMillis,
    until: UnixMillis,
) -> Result<Vec<MinuteActivity>> {
    let stmt = c
        .prepare_cached(
            "SELECT (at / 60000) * 60000 AS minute,
                    COUNT(*) FILTER (WHERE error_class IS NULL),
                    COUNT(*) FILTER (WHERE error_class IS NOT NULL)
             FROM attempts WHERE at >= $1 AND at < $2
             GROUP BY minute ORDER BY minute",
        )
        .await
        .map_err(backend)?;
    c.query(&stmt, &[&since, &until])
        .await
        .map_err(backend)?
        .iter()
        .map(|r| {
            Ok(MinuteActivity {
                minute: col(r, 0)?,
                succeeded: u64::try_from(col::<i64>(r, 1)?).unwrap_or(0),
                failed: u64::try_from(col::<i64>(r, 2)?).unwrap_or(0),
            })
        })
        .collect()
}

/// Pending and due walk `deliveries_due` (unheld) and `deliveries_held_by_node` (held);
/// failed walks `deliveries_failed_by_app`. Each stops at the cap.
pub(crate) async fn queue_counts(c: &impl GenericClient, now: UnixMillis) -> Result<QueueCounts> {
    let cap = COUNT_CAP as i64 + 1;
    let stmt = c
        .prepare_cached(
            "SELECT
               (SELECT COUNT(*) FROM (SELECT 1 FROM deliveries WHERE status = 'pending'
                                        AND locked_by IS NULL LIMIT $1) a)
             + (SELECT COUNT(*) FROM (SELECT 1 FROM deliveries WHERE locked_by IS NOT NULL
                                        AND status = 'pending' LIMIT $1) b),
               (SELECT COUNT(*) FROM (SELECT 1 FROM deliveries WHERE status = 'pending'
                                        AND next_at <= $2 LIMIT $1) c),
               (SELECT COUNT(*) FROM (SELECT 1 FROM deliveries WHERE locked_by IS NOT NULL
                                        AND status = 'pending' LIMIT $1) d),
               (SELECT COUNT(*) FROM (SELECT 1 FROM deliveries WHERE status = 'failed'
                                        LIMIT $1) e)",
        )
        .await
        .map_err(backend)?;
    let r = c.query_one(&stmt, &[&cap, &now]).await.map_err(backend)?;
    Ok(QueueCounts {
        pending: count(col(&r, 0)?),
        due: count(col(&r, 1)?),
        held: count(col(&r, 2)?),
        failed: count(col(&r, 3)?),
    })
}

/// The window's attempts through `attempts_by_time`, each joined to its delivery by primary
/// key.
pub(crate) async fn troubled_endpoints(
    c: &impl GenericClient,
    since: UnixMillis,
    limit: u32,
) -> Result<Vec<EndpointTrouble>> {
    let stmt = c
        .prepare_cached(
            "SELECT app_id, endpoint_id, url, failures, last_at, last_ok FROM (
               SELECT d.app_id, d.endpoint_id, MAX(d.url) AS url,
                      COUNT(*) FILTER (WHERE a.error_class IS NOT NULL) AS failures,
                      MAX(a.at) AS last_at,
                      MAX(a.at) FILTER (WHERE a.error_class IS NULL) AS last_ok
               FROM attempts a JOIN deliveries d ON d.seq = a.delivery_seq
               WHERE a.at >= $1
               GROUP BY d.app_id, d.endpoint_id,
                        CASE WHEN d.endpoint_id IS NULL THEN d.url END) t
             WHERE last_ok IS NULL OR last_ok < last_at
             ORDER BY failures DESC, last_at DESC LIMIT $2",
        )
        .await
        .map_err(backend)?;
    c.query(&stmt, &[&since, &limit_of(limit)])
        .await
        .map_err(backend)?
        .iter()
        .map(|r| {
            Ok(EndpointTrouble {
                app_id: col(r, 0)?,
                endpoint_id: col(r, 1)?,
                url: col(r, 2)?,
                failures: u64::try_from(col::<i64>(r, 3)?).unwrap_or(0),
                last_attempt_at: col(r, 4)?,
                last_success_at: col(r, 5)?,
            })
        })
        .collect()
}

/// The endpoint's latest deliveries through `deliveries_by_endpoint_seq (endpoint_id, seq)`,
/// their attempts by primary key; pending through `deliveries_by_endpoint`.
pub(crate) async fn endpoint_health(
    c: &impl GenericClient,
    endpoint_id: &str,
) -> Result<EndpointRecent> {
    let stmt = c
        .prepare_cached(
            "SELECT a.at, a.error_class IS NULL FROM attempts a
             WHERE a.delivery_seq IN (SELECT seq FROM deliveries WHERE endpoint_id = $1
                                      ORDER BY seq DESC LIMIT $2)
             ORDER BY a.at DESC, a.delivery_seq DESC, a.n DESC",
        )
        .await
        .map_err(backend)?;
    let attempts = c
        .query(&stmt, &[&endpoint_id, &i64::from(HEALTH_DELIVERIES)])
        .await
        .map_err(backend)?
        .iter()
        .map(|r| Ok((col::<UnixMillis>(r, 0)?, col::<bool>(r, 1)?)))
        .collect::<Result<Vec<_>>>()?;
    let pending = c
        .prepare_cached(
            "SELECT COUNT(*) FROM (SELECT 1 FROM deliveries
                                   WHERE endpoint_id = $1 AND status = 'pending' LIMIT $2) p",
        )
        .await
        .map_err(backend)?;
    let pending = c
        .query_one(&pending, &[&endpoint_id, &(COUNT_CAP as i64 + 1)])
        .await
        .map_err(backend)?;
    Ok(EndpointRecent {
        last_attempt_at: attempts.first().map(|(at, _)| *at),
        last_success_at: attempts.iter().find(|(_, ok)| *ok).map(|(at, _)| *at),
        consecutive_failures: attempts.iter().take_while(|(_, ok)| !ok).count() as u64,
        pending: count(col(&pending, 0)?),
    })
}

/// The scan window walks `notifications` by primary key (all apps) or `notifications_by_app
/// (app_id, seq)`, newest first, at most [`SEARCH_SCAN`] rows; a notify id is looked up in
/// `deliveries_by_notify_id` first. Filters apply within the window; the status filter reads
/// the notification's deliveries through `deliveries_by_notification`.
pub(crate) async fn search_notifications(
    c: &impl GenericClient,
    q: &SearchNotifications,
) -> Result<Page<NotificationSummary>> {
    let before: i64 = match &q.cursor {
        Some(cur) => cur.parse().map_err(|_| StoreError::BadCursor)?,
        None => i64::MAX,
    };
    let limit = limit_of(q.limit);
    let mut args: Vec<Box<dyn ToSql + Sync + Send>> = vec![Box::new(before)];
    let mut window_where = vec!["seq < $1".to_string()];
    if let Some(app) = &q.app_id {
        args.push(Box::new(app.clone()));
        window_where.push(format!("app_id = ${}", args.len()));
    }
    if let Some(notify_id) = &q.notify_id {
        args.push(Box::new(notify_id.clone()));
        window_where.push(format!(
            "seq IN (SELECT notification_seq FROM deliveries WHERE notify_id = ${})",
            args.len()
        ));
    }
    let window = format!(
        "SELECT * FROM notifications WHERE {} ORDER BY seq DESC LIMIT {SEARCH_SCAN}",
        window_where.join(" AND ")
    );
    let window_args = args.len();
    let mut filters = Vec::new();
    if let Some(t) = &q.event_type {
        args.push(Box::new(t.to_string()));
        filters.push(format!("n.event_type = ${}", args.len()));
    }
    if let Some(k) = &q.key {
        args.push(Box::new(k.clone()));
        filters.push(format!(
            "(n.order_key = ${0} OR (n.payload::json ->> 'out_trade_no') = ${0})",
            args.len()
        ));
    }
    if let Some(from) = q.from {
        args.push(Box::new(from));
        filters.push(format!("n.created_at >= ${}", args.len()));
    }
    if let Some(until) = q.until {
        args.push(Box::new(until));
        filters.push(format!("n.created_at < ${}", args.len()));
    }
    match q.status {
        None => {}
        Some(DeliveryStatus::Succeeded) => filters.push(
            "EXISTS (SELECT 1 FROM deliveries d WHERE d.notification_seq = n.seq)
             AND NOT EXISTS (SELECT 1 FROM deliveries d
                             WHERE d.notification_seq = n.seq AND d.status <> 'succeeded')"
                .into(),
        ),
        Some(s) => {
            args.push(Box::new(s.as_str().to_string()));
            filters.push(format!(
                "EXISTS (SELECT 1 FROM deliveries d
                         WHERE d.notification_seq = n.seq AND d.status = ${})",
                args.len()
            ));
        }
    }
    if filters.is_empty() {
        filters.push("TRUE".into());
    }
    let params: Vec<&(dyn ToSql + Sync)> = args
        .iter()
        .map(|a| a.as_ref() as &(dyn ToSql + Sync))
        .collect();
    let reach = c
        .query_one(
            &format!("SELECT COUNT(*), MIN(seq) FROM ({window}) w"),
            &params[..window_args],
        )
        .await
        .map_err(backend)?;
    let scanned: i64 = col(&reach, 0)?;
    let lowest: Option<i64> = col(&reach, 1)?;
    let sql = format!(
        "SELECT n.seq, n.id, n.app_id, n.event_type, n.notify_url, n.idempotency_key,
                n.order_key, n.created_at
         FROM ({window}) n WHERE {} ORDER BY n.seq DESC LIMIT {}",
        filters.join(" AND "),
        limit + 1
    );
    let rows = c.query(&sql, &params).await.map_err(backend)?;
    let (items, last_seq, more) = summaries_with_deliveries(c, &rows, limit).await?;
    let next_cursor = if more {
        last_seq
    } else if scanned >= i64::from(SEARCH_SCAN) {
        lowest
    } else {
        None
    };
    Ok(Page {
        items,
        next_cursor: next_cursor.map(|s| s.to_string()),
    })
}

/// Sandbox payments by primary key, newest id first (ids are ULIDs).
pub(crate) async fn list_sandbox_payments(
    c: &impl GenericClient,
    page: &ListPage,
) -> Result<Page<SandboxPayment>> {
    let limit = limit_of(page.limit);
    let rows = match &page.cursor {
        Some(before) => {
            let stmt = c
                .prepare_cached(&format!(
                    "{} WHERE id < $1 ORDER BY id DESC LIMIT $2",
                    sandbox::SELECT
                ))
                .await
                .map_err(backend)?;
            c.query(&stmt, &[before, &(limit + 1)]).await
        }
        None => {
            let stmt = c
                .prepare_cached(&format!("{} ORDER BY id DESC LIMIT $1", sandbox::SELECT))
                .await
                .map_err(backend)?;
            c.query(&stmt, &[&(limit + 1)]).await
        }
    }
    .map_err(backend)?;
    let mut items = rows
        .iter()
        .map(sandbox::from_row)
        .collect::<Result<Vec<_>>>()?;
    let more = items.len() as i64 > limit;
    items.truncate(limit as usize);
    Ok(Page {
        next_cursor: more.then(|| items.last().map(|p| p.id.clone())).flatten(),
        items,
    })
}
