//! Row mapping and the read queries (apps, endpoints, notifications, deliveries, attempts,
//! settings), usable on a pooled connection or inside a transaction.
use std::collections::HashMap;

use deadpool_postgres::GenericClient;
use herald_protocols::{AckRule, Credentials, Profile, RetryPolicy};
use tokio_postgres::Row;

use herald_store::health::{BreakerState, EndpointHealth, OpsTarget};
use herald_store::model::*;
use herald_store::{EndpointUrl, EventType, IdempotencyKey, NotifyUrl, OrderKey};
use herald_store::{Result, SealCensus, Sealer, StoreError};

use crate::backend;

pub(crate) const APP_COLS: &str = "id, name, profile, retry, ack, credentials, created_at";
pub(crate) const ENDPOINT_COLS: &str = "id, app_id, url, event_types, retry, ack, max_in_flight, \
     ordered, enabled, timeout_ms, created_at, updated_at, deleted, \
     health_state, health_failures, health_failing_since, health_last_success_at, \
     health_last_failure_at, breaker_open_until, breaker_opened, disabled_reason, health_changed_at";
pub(crate) const NOTIFICATION_COLS: &str =
    "seq, id, app_id, event_type, payload, notify_url, idempotency_key, order_key, created_at";
/// Delivery columns, prefixed `d.`, joined with its notification `n` for the id.
pub(crate) const DELIVERY_COLS: &str = "d.seq, d.id, n.id, d.app_id, d.endpoint_id, d.url, \
     d.notify_id, d.status, d.attempts, d.next_at, d.created_at, d.updated_at";

/// A stored value this Herald cannot read, with the decoder's error as the source.
fn decode(what: &str, e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::backend(format!("bad {what} in the database: {e}"), e)
}

/// A column, or a decoding failure naming it.
pub(crate) fn col<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a Row,
    idx: usize,
) -> Result<T> {
    row.try_get(idx).map_err(|e| {
        let name = row.columns().get(idx).map(|c| c.name()).unwrap_or("?");
        decode(&format!("column {name}"), e)
    })
}

fn json_col<T: serde::de::DeserializeOwned>(
    row: &Row,
    idx: usize,
    what: &str,
) -> Result<Option<T>> {
    let text: Option<String> = col(row, idx)?;
    text.map(|t| serde_json::from_str(&t).map_err(|e| decode(what, e)))
        .transpose()
}

pub(crate) fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| StoreError::backend(e.to_string(), e))
}

pub(crate) fn opt_json<T: serde::Serialize>(v: &Option<T>) -> Result<Option<String>> {
    v.as_ref().map(to_json).transpose()
}

fn u32_col(row: &Row, idx: usize) -> Result<u32> {
    let v: i32 = col(row, idx)?;
    u32::try_from(v).map_err(|e| decode("count", e))
}

/// The profile of an app row ([`APP_COLS`]).
pub(crate) fn app_profile(row: &Row) -> Result<Profile> {
    let profile: String = col(row, 2)?;
    profile.parse().map_err(|e| decode("profile", e))
}

/// An app row ([`APP_COLS`]), its credentials opened with `sealer`.
pub(crate) fn app_from_row(row: &Row, sealer: &Sealer) -> Result<App> {
    let id: String = col(row, 0)?;
    let profile = app_profile(row)?;
    let stored: String = col(row, 5)?;
    let credentials: Credentials = sealer.open_credentials(&id, &stored)?;
    Ok(App {
        id,
        name: col(row, 1)?,
        profile,
        retry: json_col::<RetryPolicy>(row, 3, "retry policy")?,
        ack: json_col::<AckRule>(row, 4, "ack rule")?,
        credentials,
        created_at: col(row, 6)?,
    })
}

/// An endpoint row ([`ENDPOINT_COLS`]) and whether it is deleted.
pub(crate) fn endpoint_from_row(row: &Row) -> Result<(Endpoint, bool)> {
    let timeout: Option<i32> = col(row, 9)?;
    Ok((
        Endpoint {
            id: col(row, 0)?,
            app_id: col(row, 1)?,
            url: EndpointUrl::from_stored(col(row, 2)?),
            event_types: json_col(row, 3, "event types")?,
            retry: json_col(row, 4, "retry policy")?,
            ack: json_col(row, 5, "ack rule")?,
            max_in_flight: u32_col(row, 6)?,
            ordered: col(row, 7)?,
            enabled: col(row, 8)?,
            timeout_ms: timeout
                .map(|t| u32::try_from(t).map_err(|e| decode("timeout", e)))
                .transpose()?,
            created_at: col(row, 10)?,
            updated_at: col(row, 11)?,
            health: health_from_row(row, 13)?,
        },
        col(row, 12)?,
    ))
}

/// The health columns of an endpoint row, from `at` on (see [`ENDPOINT_COLS`]).
fn health_from_row(row: &Row, at: usize) -> Result<EndpointHealth> {
    let state: String = col(row, at)?;
    Ok(EndpointHealth {
        state: BreakerState::parse(&state).ok_or_else(|| {
            StoreError::backend_msg(format!("bad breaker state in the database: {state}"))
        })?,
        consecutive_failures: u32_col(row, at + 1)?,
        failing_since: col(row, at + 2)?,
        last_success_at: col(row, at + 3)?,
        last_failure_at: col(row, at + 4)?,
        open_until: col(row, at + 5)?,
        times_opened: u32_col(row, at + 6)?,
        disabled_reason: col(row, at + 7)?,
        changed_at: col(row, at + 8)?,
    })
}

/// The sealing scope of an ops secret stored before migration 8 on its app's row.
fn legacy_ops_scope(app_id: &str) -> String {
    format!("{app_id}/ops")
}

/// An ops target stored before migration 8 on its app's row (see
/// `ops::upgrade_legacy_ops_targets`).
pub(crate) async fn get_legacy_app_ops(
    c: &impl GenericClient,
    sealer: &Sealer,
    app_id: &str,
) -> Result<Option<OpsTarget>> {
    let Some(row) = c
        .query_opt(
            "SELECT ops_url, ops_credentials FROM apps WHERE id = $1",
            &[&app_id],
        )
        .await
        .map_err(backend)?
    else {
        return Ok(None);
    };
    let url: Option<String> = col(&row, 0)?;
    let stored: Option<String> = col(&row, 1)?;
    Ok(match (url, stored) {
        (Some(url), Some(stored)) => Some(OpsTarget {
            url,
            credentials: sealer.open_credentials(&legacy_ops_scope(app_id), &stored)?,
            retry: None,
        }),
        _ => None,
    })
}

/// The app's ops target, read from its internal app: `None` when there is no such live
/// app, `Some(None)` when it has no target.
pub(crate) async fn get_app_ops(
    c: &impl GenericClient,
    sealer: &Sealer,
    app_id: &str,
) -> Result<Option<Option<OpsTarget>>> {
    let Some(row) = c
        .query_opt(
            "SELECT ops_app_id FROM apps
             WHERE id = $1 AND deleted_at IS NULL AND internal IS NULL",
            &[&app_id],
        )
        .await
        .map_err(backend)?
    else {
        return Ok(None);
    };
    let Some(ops_app_id) = col::<Option<String>>(&row, 0)? else {
        return Ok(Some(None));
    };
    let Some(app) = get_app(c, sealer, &ops_app_id).await? else {
        return Ok(Some(None));
    };
    let url = c
        .query_opt(
            "SELECT url FROM endpoints WHERE app_id = $1 AND NOT deleted",
            &[&ops_app_id],
        )
        .await
        .map_err(backend)?;
    Ok(Some(match url {
        Some(row) => Some(OpsTarget {
            url: col(&row, 0)?,
            credentials: app.credentials,
            retry: app.retry,
        }),
        None => None,
    }))
}

pub(crate) fn notification_from_row(row: &Row) -> Result<(i64, Notification)> {
    Ok((
        col(row, 0)?,
        Notification {
            id: col(row, 1)?,
            app_id: col(row, 2)?,
            event_type: EventType::from_stored(col(row, 3)?),
            payload: col(row, 4)?,
            notify_url: col::<Option<String>>(row, 5)?.map(NotifyUrl::from_stored),
            idempotency_key: col::<Option<String>>(row, 6)?.map(IdempotencyKey::from_stored),
            order_key: col::<Option<String>>(row, 7)?.map(OrderKey::from_stored),
            created_at: col(row, 8)?,
        },
    ))
}

pub(crate) fn delivery_from_row(row: &Row) -> Result<(i64, Delivery)> {
    let status: String = col(row, 7)?;
    Ok((
        col(row, 0)?,
        Delivery {
            id: col(row, 1)?,
            notification_id: col(row, 2)?,
            app_id: col(row, 3)?,
            endpoint_id: col(row, 4)?,
            url: col(row, 5)?,
            notify_id: col(row, 6)?,
            status: DeliveryStatus::parse(&status).ok_or_else(|| {
                StoreError::backend_msg(format!("bad status in the database: {status}"))
            })?,
            attempts: u32_col(row, 8)?,
            next_attempt_at: col(row, 9)?,
            created_at: col(row, 10)?,
            updated_at: col(row, 11)?,
        },
    ))
}

fn attempt_from_row(row: &Row) -> Result<(i64, Attempt)> {
    let code: Option<i32> = col(row, 4)?;
    Ok((
        col(row, 0)?,
        Attempt {
            n: u32_col(row, 1)?,
            at: col(row, 2)?,
            duration_ms: u32_col(row, 3)?,
            status_code: code
                .map(|c| u16::try_from(c).map_err(|e| decode("status code", e)))
                .transpose()?,
            response: col(row, 5)?,
            error_class: col(row, 6)?,
            error: col(row, 7)?,
        },
    ))
}

pub(crate) async fn get_app(
    c: &impl GenericClient,
    sealer: &Sealer,
    id: &str,
) -> Result<Option<App>> {
    let sql = format!("SELECT {APP_COLS} FROM apps WHERE id = $1 AND deleted_at IS NULL");
    let stmt = c.prepare_cached(&sql).await.map_err(backend)?;
    let row = c.query_opt(&stmt, &[&id]).await.map_err(backend)?;
    row.as_ref().map(|r| app_from_row(r, sealer)).transpose()
}

/// A page of the live apps by id; the cursor is the last id of the previous page.
pub(crate) async fn list_apps(
    c: &impl GenericClient,
    sealer: &Sealer,
    page: &ListApps,
) -> Result<Page<App>> {
    let limit = page.limit.clamp(1, MAX_PAGE) as usize;
    let after = page.cursor.clone().unwrap_or_default();
    let sql = format!(
        "SELECT {APP_COLS} FROM apps WHERE deleted_at IS NULL AND internal IS NULL AND id > $1
         ORDER BY id LIMIT $2"
    );
    let stmt = c.prepare_cached(&sql).await.map_err(backend)?;
    let fetch = limit as i64 + 1;
    let rows = c.query(&stmt, &[&after, &fetch]).await.map_err(backend)?;
    let more = rows.len() > limit;
    let items = rows
        .iter()
        .take(limit)
        .map(|r| app_from_row(r, sealer))
        .collect::<Result<Vec<_>>>()?;
    let next_cursor = if more {
        items.last().map(|a| a.id.clone())
    } else {
        None
    };
    Ok(Page { items, next_cursor })
}

fn api_key_from_row(row: &Row) -> Result<ApiKey> {
    Ok(ApiKey {
        id: col(row, 0)?,
        app_id: col(row, 1)?,
        prefix: col(row, 2)?,
        created_at: col(row, 3)?,
        last_used_at: col(row, 4)?,
    })
}

pub(crate) async fn list_api_keys(c: &impl GenericClient, app_id: &str) -> Result<Vec<ApiKey>> {
    let rows = c
        .query(
            "SELECT id, app_id, prefix, created_at, last_used_at FROM api_keys
             WHERE app_id = $1 ORDER BY created_at, id",
            &[&app_id],
        )
        .await
        .map_err(backend)?;
    rows.iter().map(api_key_from_row).collect()
}

/// The key with this hash, when its app is live.
pub(crate) async fn find_api_key(
    c: &impl GenericClient,
    key_sha256: &str,
) -> Result<Option<ApiKey>> {
    let stmt = c
        .prepare_cached(
            "SELECT k.id, k.app_id, k.prefix, k.created_at, k.last_used_at
             FROM api_keys k JOIN apps a ON a.id = k.app_id
             WHERE k.key_sha256 = $1 AND a.deleted_at IS NULL",
        )
        .await
        .map_err(backend)?;
    let row = c.query_opt(&stmt, &[&key_sha256]).await.map_err(backend)?;
    row.as_ref().map(api_key_from_row).transpose()
}

/// The apps with these ids (missing ones are left out).
pub(crate) async fn get_apps(
    c: &impl GenericClient,
    sealer: &Sealer,
    ids: &[&str],
) -> Result<Vec<App>> {
    let sql = format!("SELECT {APP_COLS} FROM apps WHERE id = ANY($1)");
    let stmt = c.prepare_cached(&sql).await.map_err(backend)?;
    let rows = c.query(&stmt, &[&ids]).await.map_err(backend)?;
    rows.iter().map(|r| app_from_row(r, sealer)).collect()
}

/// Every app's credentials as stored, `(id, credentials)`; locked for update with `lock`.
pub(crate) async fn stored_credentials(
    c: &impl GenericClient,
    lock: bool,
) -> Result<Vec<(String, String)>> {
    let sql = if lock {
        "SELECT id, credentials FROM apps ORDER BY id FOR UPDATE"
    } else {
        "SELECT id, credentials FROM apps ORDER BY id"
    };
    let rows = c.query(sql, &[]).await.map_err(backend)?;
    rows.iter().map(|r| Ok((col(r, 0)?, col(r, 1)?))).collect()
}

/// Every source's `keys` column as stored (deleted sources too), by id; `lock` holds the
/// rows for a rewrite.
pub(crate) async fn stored_source_keys(
    c: &impl GenericClient,
    lock: bool,
) -> Result<Vec<(String, String)>> {
    let sql = if lock {
        "SELECT id, keys FROM sources ORDER BY id FOR UPDATE"
    } else {
        "SELECT id, keys FROM sources ORDER BY id"
    };
    let rows = c.query(sql, &[]).await.map_err(backend)?;
    rows.iter().map(|r| Ok((col(r, 0)?, col(r, 1)?))).collect()
}

/// Opens every app's credentials and every source's keys with `sealer` and counts how they
/// are held.
pub(crate) async fn check_credentials(
    c: &impl GenericClient,
    sealer: &Sealer,
) -> Result<SealCensus> {
    let mut census = SealCensus::default();
    let sources = stored_source_keys(c, false).await?;
    for (id, stored) in stored_credentials(c, false)
        .await?
        .into_iter()
        .chain(sources)
    {
        sealer.check(&id, &stored, &mut census)?;
    }
    Ok(census)
}

/// An endpoint by id, deleted or not.
pub(crate) async fn get_endpoint_any(
    c: &impl GenericClient,
    id: &str,
) -> Result<Option<(Endpoint, bool)>> {
    let sql = format!("SELECT {ENDPOINT_COLS} FROM endpoints WHERE id = $1");
    let stmt = c.prepare_cached(&sql).await.map_err(backend)?;
    let row = c.query_opt(&stmt, &[&id]).await.map_err(backend)?;
    row.as_ref().map(endpoint_from_row).transpose()
}

/// The live (not deleted) endpoints with these ids.
pub(crate) async fn get_endpoints(c: &impl GenericClient, ids: &[&str]) -> Result<Vec<Endpoint>> {
    let sql = format!("SELECT {ENDPOINT_COLS} FROM endpoints WHERE id = ANY($1) AND NOT deleted");
    let stmt = c.prepare_cached(&sql).await.map_err(backend)?;
    let rows = c.query(&stmt, &[&ids]).await.map_err(backend)?;
    rows.iter()
        .map(|r| endpoint_from_row(r).map(|(e, _)| e))
        .collect()
}

pub(crate) async fn get_endpoint(
    c: &impl GenericClient,
    app_id: &str,
    id: &str,
) -> Result<Option<Endpoint>> {
    let sql = format!(
        "SELECT {ENDPOINT_COLS} FROM endpoints WHERE app_id = $1 AND id = $2 AND NOT deleted"
    );
    let stmt = c.prepare_cached(&sql).await.map_err(backend)?;
    let row = c.query_opt(&stmt, &[&app_id, &id]).await.map_err(backend)?;
    row.as_ref()
        .map(|r| endpoint_from_row(r).map(|(e, _)| e))
        .transpose()
}

pub(crate) async fn list_endpoints(c: &impl GenericClient, app_id: &str) -> Result<Vec<Endpoint>> {
    let sql = format!(
        "SELECT {ENDPOINT_COLS} FROM endpoints WHERE app_id = $1 AND NOT deleted
         ORDER BY created_at, id"
    );
    let stmt = c.prepare_cached(&sql).await.map_err(backend)?;
    let rows = c.query(&stmt, &[&app_id]).await.map_err(backend)?;
    rows.iter()
        .map(|r| endpoint_from_row(r).map(|(e, _)| e))
        .collect()
}

/// A cursor for keyset pages ordered by `(created_at, id)`.
fn endpoint_cursor(e: &Endpoint) -> String {
    format!("{}:{}", e.created_at, e.id)
}

fn parse_endpoint_cursor(cur: &str) -> Result<(i64, String)> {
    let (at, id) = cur.split_once(':').ok_or(StoreError::BadCursor)?;
    Ok((
        at.parse().map_err(|_| StoreError::BadCursor)?,
        id.to_string(),
    ))
}

/// A page of the app's live endpoints in creation order.
pub(crate) async fn list_endpoints_page(
    c: &impl GenericClient,
    app_id: &str,
    page: &ListEndpoints,
) -> Result<Page<Endpoint>> {
    let (after_at, after_id) = match &page.cursor {
        Some(cur) => parse_endpoint_cursor(cur)?,
        None => (i64::MIN, String::new()),
    };
    let limit = page.limit.clamp(1, MAX_PAGE) as usize;
    let sql = format!(
        "SELECT {ENDPOINT_COLS} FROM endpoints
         WHERE app_id = $1 AND NOT deleted AND (created_at, id) > ($2, $3)
         ORDER BY created_at, id LIMIT $4"
    );
    let stmt = c.prepare_cached(&sql).await.map_err(backend)?;
    let fetch = limit as i64 + 1;
    let rows = c
        .query(&stmt, &[&app_id, &after_at, &after_id, &fetch])
        .await
        .map_err(backend)?;
    let more = rows.len() > limit;
    let items = rows
        .iter()
        .take(limit)
        .map(|r| endpoint_from_row(r).map(|(e, _)| e))
        .collect::<Result<Vec<_>>>()?;
    Ok(Page {
        next_cursor: if more {
            items.last().map(endpoint_cursor)
        } else {
            None
        },
        items,
    })
}

/// The latest [`DETAIL_ATTEMPTS`] attempts of these deliveries, by delivery seq, each in
/// attempt order.
async fn attempts_of(
    c: &impl GenericClient,
    delivery_seqs: &[i64],
) -> Result<HashMap<i64, Vec<Attempt>>> {
    let mut out: HashMap<i64, Vec<Attempt>> = HashMap::new();
    if delivery_seqs.is_empty() {
        return Ok(out);
    }
    let stmt = c
        .prepare_cached(
            "SELECT delivery_seq, n, at, duration_ms, status_code, response, error_class, error
             FROM (SELECT a.*, row_number() OVER (PARTITION BY delivery_seq ORDER BY n DESC) AS rn
                   FROM attempts a WHERE delivery_seq = ANY($1)) latest
             WHERE rn <= $2 ORDER BY delivery_seq, n",
        )
        .await
        .map_err(backend)?;
    let keep = i64::from(DETAIL_ATTEMPTS);
    for row in c
        .query(&stmt, &[&delivery_seqs, &keep])
        .await
        .map_err(backend)?
    {
        let (seq, a) = attempt_from_row(&row)?;
        out.entry(seq).or_default().push(a);
    }
    Ok(out)
}

/// A page of the delivery's attempts, oldest first; `None` when it does not exist.
pub(crate) async fn list_attempts(
    c: &impl GenericClient,
    id: &str,
    page: &ListAttempts,
) -> Result<Option<Page<Attempt>>> {
    let after: i32 = match &page.cursor {
        Some(cur) => cur.parse().map_err(|_| StoreError::BadCursor)?,
        None => 0,
    };
    let Some((seq, _)) = get_delivery(c, id).await? else {
        return Ok(None);
    };
    let limit = page.limit.clamp(1, MAX_PAGE) as usize;
    let stmt = c
        .prepare_cached(
            "SELECT delivery_seq, n, at, duration_ms, status_code, response, error_class, error
             FROM attempts WHERE delivery_seq = $1 AND n > $2 ORDER BY n LIMIT $3",
        )
        .await
        .map_err(backend)?;
    let fetch = limit as i64 + 1;
    let rows = c
        .query(&stmt, &[&seq, &after, &fetch])
        .await
        .map_err(backend)?;
    let more = rows.len() > limit;
    let items = rows
        .iter()
        .take(limit)
        .map(|r| attempt_from_row(r).map(|(_, a)| a))
        .collect::<Result<Vec<_>>>()?;
    Ok(Some(Page {
        next_cursor: if more {
            items.last().map(|a| a.n.to_string())
        } else {
            None
        },
        items,
    }))
}

/// The deliveries of these notifications, by notification seq, each in creation order.
pub(crate) async fn deliveries_of(
    c: &impl GenericClient,
    notification_seqs: &[i64],
) -> Result<HashMap<i64, Vec<(i64, Delivery)>>> {
    let mut out: HashMap<i64, Vec<(i64, Delivery)>> = HashMap::new();
    if notification_seqs.is_empty() {
        return Ok(out);
    }
    let sql = format!(
        "SELECT {DELIVERY_COLS}, d.notification_seq
         FROM deliveries d JOIN notifications n ON n.seq = d.notification_seq
         WHERE d.notification_seq = ANY($1) ORDER BY d.seq"
    );
    let stmt = c.prepare_cached(&sql).await.map_err(backend)?;
    for row in c
        .query(&stmt, &[&notification_seqs])
        .await
        .map_err(backend)?
    {
        let nseq: i64 = col(&row, 12)?;
        out.entry(nseq).or_default().push(delivery_from_row(&row)?);
    }
    Ok(out)
}

pub(crate) async fn get_delivery(
    c: &impl GenericClient,
    id: &str,
) -> Result<Option<(i64, Delivery)>> {
    let sql = format!(
        "SELECT {DELIVERY_COLS} FROM deliveries d JOIN notifications n ON n.seq = d.notification_seq
         WHERE d.id = $1"
    );
    let stmt = c.prepare_cached(&sql).await.map_err(backend)?;
    let row = c.query_opt(&stmt, &[&id]).await.map_err(backend)?;
    row.as_ref().map(delivery_from_row).transpose()
}

pub(crate) async fn get_delivery_detail(
    c: &impl GenericClient,
    id: &str,
) -> Result<Option<DeliveryDetail>> {
    let Some((seq, delivery)) = get_delivery(c, id).await? else {
        return Ok(None);
    };
    let mut attempts = attempts_of(c, &[seq]).await?;
    Ok(Some(DeliveryDetail {
        delivery,
        attempts: attempts.remove(&seq).unwrap_or_default(),
    }))
}

/// Notifications with their deliveries and each delivery's latest attempts, in the order
/// given (three queries however many notifications).
async fn details(
    c: &impl GenericClient,
    notifications: Vec<(i64, Notification)>,
) -> Result<Vec<NotificationDetail>> {
    let nseqs: Vec<i64> = notifications.iter().map(|(s, _)| *s).collect();
    let mut deliveries = deliveries_of(c, &nseqs).await?;
    let dseqs: Vec<i64> = deliveries
        .values()
        .flat_map(|ds| ds.iter().map(|(s, _)| *s))
        .collect();
    let mut attempts = attempts_of(c, &dseqs).await?;
    Ok(notifications
        .into_iter()
        .map(|(seq, notification)| NotificationDetail {
            notification,
            deliveries: deliveries
                .remove(&seq)
                .unwrap_or_default()
                .into_iter()
                .map(|(dseq, delivery)| DeliveryDetail {
                    delivery,
                    attempts: attempts.remove(&dseq).unwrap_or_default(),
                })
                .collect(),
        })
        .collect())
}

pub(crate) async fn get_notification_by_seq(
    c: &impl GenericClient,
    seq: i64,
) -> Result<Option<(i64, Notification)>> {
    let sql = format!("SELECT {NOTIFICATION_COLS} FROM notifications WHERE seq = $1");
    let stmt = c.prepare_cached(&sql).await.map_err(backend)?;
    let row = c.query_opt(&stmt, &[&seq]).await.map_err(backend)?;
    row.as_ref().map(notification_from_row).transpose()
}

pub(crate) async fn get_notification(
    c: &impl GenericClient,
    id: &str,
) -> Result<Option<NotificationDetail>> {
    let sql = format!("SELECT {NOTIFICATION_COLS} FROM notifications WHERE id = $1");
    let stmt = c.prepare_cached(&sql).await.map_err(backend)?;
    let Some(row) = c.query_opt(&stmt, &[&id]).await.map_err(backend)? else {
        return Ok(None);
    };
    let found = notification_from_row(&row)?;
    Ok(details(c, vec![found]).await?.pop())
}

/// A page of the app's notifications as summaries: the payload column is never read, nor
/// are attempts (two queries however long the page).
pub(crate) async fn list_notifications(
    c: &impl GenericClient,
    app_id: &str,
    filter: &ListNotifications,
) -> Result<Page<NotificationSummary>> {
    let before: i64 = match &filter.cursor {
        Some(cur) => cur.parse().map_err(|_| StoreError::BadCursor)?,
        None => i64::MAX,
    };
    let status_clause = match filter.status {
        None => "",
        Some(DeliveryStatus::Succeeded) => {
            "AND EXISTS (SELECT 1 FROM deliveries d WHERE d.notification_seq = n.seq)
             AND NOT EXISTS (SELECT 1 FROM deliveries d
                             WHERE d.notification_seq = n.seq AND d.status <> 'succeeded')"
        }
        Some(_) => {
            "AND EXISTS (SELECT 1 FROM deliveries d
                         WHERE d.notification_seq = n.seq AND d.status = $4)"
        }
    };
    let sql = format!(
        "SELECT n.seq, n.id, n.app_id, n.event_type, n.notify_url, n.idempotency_key,
                n.order_key, n.created_at
         FROM notifications n WHERE n.app_id = $1 AND n.seq < $2 {status_clause}
         ORDER BY n.seq DESC LIMIT $3"
    );
    let limit = i64::from(filter.limit.clamp(1, MAX_PAGE));
    let stmt = c.prepare_cached(&sql).await.map_err(backend)?;
    let fetch = limit + 1;
    let rows = match filter.status {
        Some(s) if s != DeliveryStatus::Succeeded => {
            c.query(&stmt, &[&app_id, &before, &fetch, &s.as_str()])
                .await
        }
        _ => c.query(&stmt, &[&app_id, &before, &fetch]).await,
    }
    .map_err(backend)?;
    let (items, last_seq, more) = summaries_with_deliveries(c, &rows, limit).await?;
    Ok(Page {
        items,
        next_cursor: if more {
            last_seq.map(|s| s.to_string())
        } else {
            None
        },
    })
}

pub(crate) async fn get_meta(c: &impl GenericClient, key: &str) -> Result<Option<String>> {
    let stmt = c
        .prepare_cached("SELECT value FROM meta WHERE key = $1")
        .await
        .map_err(backend)?;
    let row = c.query_opt(&stmt, &[&key]).await.map_err(backend)?;
    row.as_ref().map(|r| col(r, 0)).transpose()
}

/// Notification summary rows (`seq, id, app_id, event_type, notify_url, idempotency_key,
/// order_key, created_at`), at most `limit` of them, each with its deliveries: the
/// summaries, the last `seq` taken (the next page's cursor) and whether more rows came.
pub(crate) async fn summaries_with_deliveries(
    c: &impl GenericClient,
    rows: &[tokio_postgres::Row],
    limit: i64,
) -> Result<(Vec<NotificationSummary>, Option<i64>, bool)> {
    let more = rows.len() as i64 > limit;
    let found = rows
        .iter()
        .take(limit as usize)
        .map(|r| {
            Ok((
                col::<i64>(r, 0)?,
                NotificationSummary {
                    id: col(r, 1)?,
                    app_id: col(r, 2)?,
                    event_type: EventType::from_stored(col(r, 3)?),
                    notify_url: col::<Option<String>>(r, 4)?.map(NotifyUrl::from_stored),
                    idempotency_key: col::<Option<String>>(r, 5)?.map(IdempotencyKey::from_stored),
                    order_key: col::<Option<String>>(r, 6)?.map(OrderKey::from_stored),
                    created_at: col(r, 7)?,
                    deliveries: Vec::new(),
                },
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let last_seq = found.last().map(|(s, _)| *s);
    let nseqs: Vec<i64> = found.iter().map(|(s, _)| *s).collect();
    let mut deliveries = deliveries_of(c, &nseqs).await?;
    let items = found
        .into_iter()
        .map(|(seq, mut n)| {
            n.deliveries = deliveries
                .remove(&seq)
                .unwrap_or_default()
                .into_iter()
                .map(|(_, d)| d)
                .collect();
            n
        })
        .collect();
    Ok((items, last_seq, more))
}
