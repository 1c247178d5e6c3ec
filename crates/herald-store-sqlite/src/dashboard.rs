//! SQL for the operator dashboard's reads ([`DashboardStore`](herald_store::DashboardStore)),
//! run on the reader pool. Which index serves each query is said next to it; the bounds are
//! the seam's (see `herald_store::dashboard`).
use rusqlite::types::Value;
use rusqlite::{params, params_from_iter, Connection, Row};

use super::rows::deliveries_of;
use super::sandbox;
use super::schema::backend;
use herald_store::dashboard::*;
use herald_store::model::*;
use herald_store::{EventType, IdempotencyKey, NotifyUrl, OrderKey};
use herald_store::{Result, StoreError};

fn limit_of(limit: u32) -> i64 {
    i64::from(limit.clamp(1, MAX_PAGE))
}

fn capped(conn: &Connection, sql: &str, args: &[&dyn rusqlite::ToSql]) -> Result<u64> {
    // `sql` selects at most COUNT_CAP + 1 rows; counting them stops there.
    let n: i64 = conn
        .prepare_cached(&format!("SELECT COUNT(*) FROM ({sql})"))
        .and_then(|mut s| s.query_row(args, |r| r.get(0)))
        .map_err(backend)?;
    Ok((n.max(0) as u64).min(COUNT_CAP))
}

/// Apps by id: the primary key.
pub(crate) fn list_apps(conn: &Connection, page: &ListPage) -> Result<Page<AppSummary>> {
    let after = page.cursor.clone().unwrap_or_default();
    let limit = limit_of(page.limit);
    let mut stmt = conn
        .prepare_cached(
            "SELECT id, name, profile, created_at FROM apps WHERE internal IS NULL AND id > ?1
             ORDER BY id LIMIT ?2",
        )
        .map_err(backend)?;
    let mut items = stmt
        .query_map(params![after, limit + 1], |r| {
            Ok(AppSummary {
                id: r.get(0)?,
                name: r.get(1)?,
                profile: r.get(2)?,
                created_at: r.get(3)?,
            })
        })
        .map_err(backend)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(backend)?;
    let more = items.len() as i64 > limit;
    items.truncate(limit as usize);
    Ok(Page {
        next_cursor: more.then(|| items.last().map(|a| a.id.clone())).flatten(),
        items,
    })
}

/// Attempts per minute: a range of `attempts_by_time (at, error_class)`, index only.
pub(crate) fn activity(
    conn: &Connection,
    since: UnixMillis,
    until: UnixMillis,
) -> Result<Vec<MinuteActivity>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT (at / 60000) * 60000 AS minute,
                    SUM(CASE WHEN error_class IS NULL THEN 1 ELSE 0 END),
                    SUM(CASE WHEN error_class IS NULL THEN 0 ELSE 1 END)
             FROM attempts WHERE at >= ?1 AND at < ?2
             GROUP BY minute ORDER BY minute",
        )
        .map_err(backend)?;
    let rows = stmt
        .query_map(params![since, until], |r| {
            Ok(MinuteActivity {
                minute: r.get(0)?,
                succeeded: r.get::<_, i64>(1)?.max(0) as u64,
                failed: r.get::<_, i64>(2)?.max(0) as u64,
            })
        })
        .map_err(backend)?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(backend)
}

/// Pending and due walk the partial index `deliveries_due (next_at, seq) WHERE pending`;
/// held walks `deliveries_held` plus the due index for ad-hoc deliveries; failed walks
/// `deliveries_failed_by_app`. Each stops at the cap.
pub(crate) fn queue_counts(conn: &Connection, now: UnixMillis) -> Result<QueueCounts> {
    let cap = COUNT_CAP as i64 + 1;
    Ok(QueueCounts {
        pending: capped(
            conn,
            "SELECT 1 FROM deliveries WHERE status = 'pending' AND next_at IS NOT NULL LIMIT ?1",
            &[&cap],
        )?,
        due: capped(
            conn,
            "SELECT 1 FROM deliveries WHERE status = 'pending' AND next_at <= ?2 LIMIT ?1",
            &[&cap, &now],
        )?,
        held: capped(
            conn,
            "SELECT 1 FROM deliveries WHERE status = 'pending' AND next_at IS NOT NULL
             AND locked_by IS NOT NULL LIMIT ?1",
            &[&cap],
        )?,
        failed: capped(
            conn,
            "SELECT 1 FROM deliveries WHERE status = 'failed' LIMIT ?1",
            &[&cap],
        )?,
    })
}

/// The window's attempts through `attempts_by_time`, each joined to its delivery by primary
/// key.
pub(crate) fn troubled_endpoints(
    conn: &Connection,
    since: UnixMillis,
    limit: u32,
) -> Result<Vec<EndpointTrouble>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT d.app_id, d.endpoint_id, MAX(d.url),
                    SUM(CASE WHEN a.error_class IS NULL THEN 0 ELSE 1 END) AS failures,
                    MAX(a.at) AS last_at,
                    MAX(CASE WHEN a.error_class IS NULL THEN a.at END) AS last_ok
             FROM attempts a JOIN deliveries d ON d.seq = a.delivery_seq
             WHERE a.at >= ?1
             GROUP BY d.app_id, d.endpoint_id, CASE WHEN d.endpoint_id IS NULL THEN d.url END
             HAVING last_ok IS NULL OR last_ok < last_at
             ORDER BY failures DESC, last_at DESC LIMIT ?2",
        )
        .map_err(backend)?;
    let rows = stmt
        .query_map(params![since, limit_of(limit)], |r| {
            Ok(EndpointTrouble {
                app_id: r.get(0)?,
                endpoint_id: r.get(1)?,
                url: r.get(2)?,
                failures: r.get::<_, i64>(3)?.max(0) as u64,
                last_attempt_at: r.get(4)?,
                last_success_at: r.get(5)?,
            })
        })
        .map_err(backend)?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(backend)
}

/// The endpoint's latest deliveries through `deliveries_by_endpoint_seq (endpoint_id, seq)`,
/// their attempts by primary key; pending through `deliveries_by_endpoint`.
pub(crate) fn endpoint_health(conn: &Connection, endpoint_id: &str) -> Result<EndpointRecent> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT a.at, a.error_class IS NULL FROM attempts a
             WHERE a.delivery_seq IN (SELECT seq FROM deliveries WHERE endpoint_id = ?1
                                      ORDER BY seq DESC LIMIT ?2)
             ORDER BY a.at DESC, a.delivery_seq DESC, a.n DESC",
        )
        .map_err(backend)?;
    let attempts = stmt
        .query_map(params![endpoint_id, HEALTH_DELIVERIES], |r| {
            Ok((r.get::<_, UnixMillis>(0)?, r.get::<_, bool>(1)?))
        })
        .map_err(backend)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(backend)?;
    let mut health = health_of(&attempts);
    health.pending = capped(
        conn,
        "SELECT 1 FROM deliveries INDEXED BY deliveries_by_endpoint
         WHERE endpoint_id = ?2 AND status = 'pending' LIMIT ?1",
        &[&(COUNT_CAP as i64 + 1), &endpoint_id],
    )?;
    Ok(health)
}

/// Health from attempts newest first: `(at, acknowledged)`.
pub(crate) fn health_of(attempts: &[(UnixMillis, bool)]) -> EndpointRecent {
    EndpointRecent {
        last_attempt_at: attempts.first().map(|(at, _)| *at),
        last_success_at: attempts.iter().find(|(_, ok)| *ok).map(|(at, _)| *at),
        consecutive_failures: attempts.iter().take_while(|(_, ok)| !ok).count() as u64,
        pending: 0,
    }
}

/// The scan window walks `notifications` by primary key (all apps) or `notifications_by_app
/// (app_id, seq)`, newest first, at most [`SEARCH_SCAN`] rows; a notify id is looked up in
/// `deliveries_by_notify_id` first. Filters apply within the window; the status filter
/// reads the notification's deliveries through `deliveries_by_notification`.
pub(crate) fn search_notifications(
    conn: &Connection,
    q: &SearchNotifications,
) -> Result<Page<NotificationSummary>> {
    let before: i64 = match &q.cursor {
        Some(c) => c.parse().map_err(|_| StoreError::BadCursor)?,
        None => i64::MAX,
    };
    let limit = limit_of(q.limit);
    let mut window_where = vec!["seq < ?".to_string()];
    let mut window_args: Vec<Value> = vec![Value::Integer(before)];
    if let Some(app) = &q.app_id {
        window_where.push("app_id = ?".into());
        window_args.push(Value::Text(app.clone()));
    }
    if let Some(notify_id) = &q.notify_id {
        window_where
            .push("seq IN (SELECT notification_seq FROM deliveries WHERE notify_id = ?)".into());
        window_args.push(Value::Text(notify_id.clone()));
    }
    let window = format!(
        "SELECT * FROM notifications WHERE {} ORDER BY seq DESC LIMIT {SEARCH_SCAN}",
        window_where.join(" AND ")
    );
    // How far the window reaches: where the next call goes on when this one finds too few.
    let (scanned, lowest): (i64, Option<i64>) = conn
        .prepare(&format!("SELECT COUNT(*), MIN(seq) FROM ({window})"))
        .and_then(|mut s| {
            s.query_row(params_from_iter(window_args.iter()), |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
        })
        .map_err(backend)?;

    let mut filters = Vec::new();
    let mut args = window_args.clone();
    if let Some(t) = &q.event_type {
        filters.push("n.event_type = ?".to_string());
        args.push(Value::Text(t.to_string()));
    }
    if let Some(k) = &q.key {
        filters.push(
            "(n.order_key = ? OR (json_valid(n.payload)
               AND CAST(json_extract(n.payload, '$.out_trade_no') AS TEXT) = ?))"
                .into(),
        );
        args.push(Value::Text(k.clone()));
        args.push(Value::Text(k.clone()));
    }
    if let Some(from) = q.from {
        filters.push("n.created_at >= ?".into());
        args.push(Value::Integer(from.get()));
    }
    if let Some(until) = q.until {
        filters.push("n.created_at < ?".into());
        args.push(Value::Integer(until.get()));
    }
    match q.status {
        None => {}
        Some(DeliveryStatus::Succeeded) => filters.push(
            "EXISTS (SELECT 1 FROM deliveries d WHERE d.notification_seq = n.seq)
             AND NOT EXISTS (SELECT 1 FROM deliveries d
                             WHERE d.notification_seq = n.seq AND d.status != 'succeeded')"
                .into(),
        ),
        Some(s) => {
            filters.push(
                "EXISTS (SELECT 1 FROM deliveries d WHERE d.notification_seq = n.seq AND d.status = ?)"
                    .into(),
            );
            args.push(Value::Text(s.as_str().into()));
        }
    }
    if filters.is_empty() {
        filters.push("1".into());
    }
    let sql = format!(
        "SELECT n.seq, n.id, n.app_id, n.event_type, n.notify_url, n.idempotency_key, n.order_key,
                n.created_at
         FROM ({window}) n WHERE {} ORDER BY n.seq DESC LIMIT {}",
        filters.join(" AND "),
        limit + 1
    );
    let mut stmt = conn.prepare(&sql).map_err(backend)?;
    let found = stmt
        .query_map(params_from_iter(args.iter()), |r: &Row| {
            Ok((
                r.get::<_, i64>(0)?,
                NotificationSummary {
                    id: r.get(1)?,
                    app_id: r.get(2)?,
                    event_type: EventType::from_stored(r.get(3)?),
                    notify_url: r.get::<_, Option<String>>(4)?.map(NotifyUrl::from_stored),
                    idempotency_key: r
                        .get::<_, Option<String>>(5)?
                        .map(IdempotencyKey::from_stored),
                    order_key: r.get::<_, Option<String>>(6)?.map(OrderKey::from_stored),
                    created_at: r.get(7)?,
                    deliveries: Vec::new(),
                },
            ))
        })
        .map_err(backend)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(backend)?;
    let more = found.len() as i64 > limit;
    let mut items = Vec::with_capacity(found.len());
    let mut last_seq = None;
    for (seq, mut n) in found.into_iter().take(limit as usize) {
        last_seq = Some(seq);
        n.deliveries = deliveries_of(conn, seq)?
            .into_iter()
            .map(|(_, d)| d)
            .collect();
        items.push(n);
    }
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
pub(crate) fn list_sandbox_payments(
    conn: &Connection,
    page: &ListPage,
) -> Result<Page<SandboxPayment>> {
    let before = page.cursor.clone().unwrap_or_else(|| "\u{10FFFF}".into());
    let limit = limit_of(page.limit);
    let mut stmt = conn
        .prepare_cached(&format!(
            "{} WHERE id < ?1 ORDER BY id DESC LIMIT ?2",
            sandbox::SELECT
        ))
        .map_err(backend)?;
    let mut items = stmt
        .query_map(params![before, limit + 1], sandbox::from_row)
        .map_err(backend)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(backend)?;
    let more = items.len() as i64 > limit;
    items.truncate(limit as usize);
    Ok(Page {
        next_cursor: more.then(|| items.last().map(|p| p.id.clone())).flatten(),
        items,
    })
}
