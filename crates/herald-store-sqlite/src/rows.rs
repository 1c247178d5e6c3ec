//! Row mapping and the read queries, shared by the reader pool and the writer (which reads
//! inside its own transaction).
use herald_protocols::{AckRule, Credentials, Profile, RetryPolicy};
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::schema::backend;
use herald_store::health::{BreakerState, EndpointHealth, OpsTarget};
use herald_store::model::*;
use herald_store::sealing::CredentialsError;
use herald_store::{EndpointUrl, EventType, IdempotencyKey, NotifyUrl, OrderKey};
use herald_store::{Result, SealCensus, Sealer, StoreError};
use rusqlite::types::Type;

pub(crate) const APP_COLS: &str = "id, name, profile, retry, ack, credentials, created_at";
pub(crate) const ENDPOINT_COLS: &str =
    "id, app_id, url, event_types, retry, ack, max_in_flight, ordered, enabled, created_at, updated_at, timeout_ms, \
     health_state, health_failures, health_failing_since, health_last_success_at, health_last_failure_at, \
     breaker_open_until, breaker_opened, disabled_reason, health_changed_at";
pub(crate) const NOTIFICATION_COLS: &str =
    "seq, id, app_id, event_type, payload, notify_url, idempotency_key, order_key, created_at";
/// Delivery columns, prefixed `d.`, joined with its notification `n` for the id.
pub(crate) const DELIVERY_COLS: &str =
    "d.seq, d.id, n.id, d.app_id, d.endpoint_id, d.url, d.notify_id, \
     d.status, d.attempts, d.next_at, d.created_at, d.updated_at";

/// A stored value this Herald cannot read; keeps the parser's error when there is one.
#[derive(Debug, thiserror::Error)]
#[error("bad {what} in the database: {value}")]
struct BadValue {
    what: String,
    value: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

fn decode_err(what: &str, e: impl std::fmt::Display) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        0,
        rusqlite::types::Type::Text,
        Box::new(BadValue {
            what: what.to_string(),
            value: e.to_string(),
            source: None,
        }),
    )
}

/// A JSON column that does not parse: serde_json's error is the source.
fn json_err(what: &str, e: serde_json::Error) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        0,
        rusqlite::types::Type::Text,
        Box::new(BadValue {
            what: what.to_string(),
            value: e.to_string(),
            source: Some(Box::new(e)),
        }),
    )
}

fn json_col<T: serde::de::DeserializeOwned>(
    row: &Row,
    idx: usize,
    what: &str,
) -> rusqlite::Result<Option<T>> {
    let text: Option<String> = row.get(idx)?;
    text.map(|t| serde_json::from_str(&t).map_err(|e| json_err(what, e)))
        .transpose()
}

pub(crate) fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| StoreError::backend(e.to_string(), e))
}

pub(crate) fn opt_json<T: serde::Serialize>(v: &Option<T>) -> Result<Option<String>> {
    v.as_ref().map(to_json).transpose()
}

/// An app row ([`APP_COLS`]), its credentials opened with `sealer` (a failure to open them is
/// a conversion failure carrying the [`CredentialsError`], see [`app_error`]).
pub(crate) fn app_from_row(row: &Row, sealer: &Sealer) -> rusqlite::Result<App> {
    let id: String = row.get(0)?;
    let profile: String = row.get(2)?;
    let profile: Profile = profile.parse().map_err(|e| decode_err("profile", e))?;
    let stored: String = row.get(5)?;
    let credentials: Credentials = sealer
        .open_credentials(&id, &stored)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(5, Type::Text, Box::new(e)))?;
    Ok(App {
        id,
        name: row.get(1)?,
        profile,
        retry: json_col::<RetryPolicy>(row, 3, "retry policy")?,
        ack: json_col::<AckRule>(row, 4, "ack rule")?,
        credentials,
        created_at: row.get(6)?,
    })
}

pub(crate) fn endpoint_from_row(row: &Row) -> rusqlite::Result<Endpoint> {
    Ok(Endpoint {
        id: row.get(0)?,
        app_id: row.get(1)?,
        url: EndpointUrl::from_stored(row.get(2)?),
        event_types: json_col(row, 3, "event types")?,
        retry: json_col(row, 4, "retry policy")?,
        ack: json_col(row, 5, "ack rule")?,
        max_in_flight: row.get(6)?,
        ordered: row.get(7)?,
        enabled: row.get(8)?,
        created_at: row.get(9)?,
        updated_at: row.get(10)?,
        timeout_ms: row.get(11)?,
        health: health_from_row(row, 12)?,
    })
}

/// The health columns of an endpoint row, from `at` on (see [`ENDPOINT_COLS`]).
pub(crate) fn health_from_row(row: &Row, at: usize) -> rusqlite::Result<EndpointHealth> {
    let state: String = row.get(at)?;
    Ok(EndpointHealth {
        state: BreakerState::parse(&state).ok_or_else(|| decode_err("breaker state", &state))?,
        consecutive_failures: row.get(at + 1)?,
        failing_since: row.get(at + 2)?,
        last_success_at: row.get(at + 3)?,
        last_failure_at: row.get(at + 4)?,
        open_until: row.get(at + 5)?,
        times_opened: row.get(at + 6)?,
        disabled_reason: row.get(at + 7)?,
        changed_at: row.get(at + 8)?,
    })
}

pub(crate) fn notification_from_row(row: &Row) -> rusqlite::Result<(i64, Notification)> {
    Ok((
        row.get(0)?,
        Notification {
            id: row.get(1)?,
            app_id: row.get(2)?,
            event_type: EventType::from_stored(row.get(3)?),
            payload: row.get(4)?,
            notify_url: row.get::<_, Option<String>>(5)?.map(NotifyUrl::from_stored),
            idempotency_key: row
                .get::<_, Option<String>>(6)?
                .map(IdempotencyKey::from_stored),
            order_key: row.get::<_, Option<String>>(7)?.map(OrderKey::from_stored),
            created_at: row.get(8)?,
        },
    ))
}

pub(crate) fn delivery_from_row(row: &Row) -> rusqlite::Result<(i64, Delivery)> {
    let status: String = row.get(7)?;
    Ok((
        row.get(0)?,
        Delivery {
            id: row.get(1)?,
            notification_id: row.get(2)?,
            app_id: row.get(3)?,
            endpoint_id: row.get(4)?,
            url: row.get(5)?,
            notify_id: row.get(6)?,
            status: DeliveryStatus::parse(&status).ok_or_else(|| decode_err("status", &status))?,
            attempts: row.get(8)?,
            next_attempt_at: row.get(9)?,
            created_at: row.get(10)?,
            updated_at: row.get(11)?,
        },
    ))
}

pub(crate) fn get_app(conn: &Connection, sealer: &Sealer, id: &str) -> Result<Option<App>> {
    conn.prepare_cached(&format!(
        "SELECT {APP_COLS} FROM apps WHERE id = ?1 AND deleted_at IS NULL"
    ))
    .and_then(|mut s| s.query_row([id], |r| app_from_row(r, sealer)).optional())
    .map_err(app_error)
}

/// A page of the live apps by id; the cursor is the last id of the previous page.
pub(crate) fn list_apps(conn: &Connection, sealer: &Sealer, page: &ListApps) -> Result<Page<App>> {
    let limit = page.limit.clamp(1, MAX_PAGE);
    let after = page.cursor.clone().unwrap_or_default();
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {APP_COLS} FROM apps WHERE deleted_at IS NULL AND internal IS NULL AND id > ?1
             ORDER BY id LIMIT ?2"
        ))
        .map_err(backend)?;
    let rows = stmt
        .query_map(params![after, i64::from(limit) + 1], |r| {
            app_from_row(r, sealer)
        })
        .map_err(app_error)?;
    let mut items = rows
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(app_error)?;
    let more = items.len() > limit as usize;
    items.truncate(limit as usize);
    let next_cursor = if more {
        items.last().map(|a| a.id.clone())
    } else {
        None
    };
    Ok(Page { items, next_cursor })
}

pub(crate) const API_KEY_COLS: &str = "id, app_id, prefix, created_at, last_used_at";

fn api_key_from_row(row: &Row) -> rusqlite::Result<ApiKey> {
    Ok(ApiKey {
        id: row.get(0)?,
        app_id: row.get(1)?,
        prefix: row.get(2)?,
        created_at: row.get(3)?,
        last_used_at: row.get(4)?,
    })
}

pub(crate) fn list_api_keys(conn: &Connection, app_id: &str) -> Result<Vec<ApiKey>> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {API_KEY_COLS} FROM api_keys WHERE app_id = ?1 ORDER BY created_at, id"
        ))
        .map_err(backend)?;
    let rows = stmt
        .query_map([app_id], api_key_from_row)
        .map_err(backend)?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(backend)
}

/// The key with this hash, when its app is live.
pub(crate) fn find_api_key(conn: &Connection, key_sha256: &str) -> Result<Option<ApiKey>> {
    conn.prepare_cached(
        "SELECT k.id, k.app_id, k.prefix, k.created_at, k.last_used_at
         FROM api_keys k JOIN apps a ON a.id = k.app_id
         WHERE k.key_sha256 = ?1 AND a.deleted_at IS NULL",
    )
    .and_then(|mut s| s.query_row([key_sha256], api_key_from_row).optional())
    .map_err(backend)
}

/// A failure reading an app: its credentials' own error when they did not open.
fn app_error(e: rusqlite::Error) -> StoreError {
    match e {
        rusqlite::Error::FromSqlConversionFailure(_, _, inner) => {
            match inner.downcast::<CredentialsError>() {
                Ok(creds) => StoreError::from(*creds),
                Err(other) => backend(rusqlite::Error::FromSqlConversionFailure(
                    5,
                    Type::Text,
                    other,
                )),
            }
        }
        other => backend(other),
    }
}

/// Every app's credentials as stored: `(id, credentials)`.
pub(crate) fn stored_credentials(conn: &Connection) -> Result<Vec<(String, String)>> {
    let mut stmt = conn
        .prepare("SELECT id, credentials FROM apps ORDER BY id")
        .map_err(backend)?;
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(backend)?;
    rows.collect::<rusqlite::Result<_>>().map_err(backend)
}

/// Every source's `keys` column as stored (deleted sources too), by id.
pub(crate) fn stored_source_keys(conn: &Connection) -> Result<Vec<(String, String)>> {
    let mut stmt = conn
        .prepare("SELECT id, keys FROM sources ORDER BY id")
        .map_err(backend)?;
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(backend)?;
    rows.collect::<rusqlite::Result<_>>().map_err(backend)
}

/// Opens every app's credentials and every source's keys with `sealer` and counts how they
/// are held.
pub(crate) fn check_credentials(conn: &Connection, sealer: &Sealer) -> Result<SealCensus> {
    let mut census = SealCensus::default();
    for (id, stored) in stored_credentials(conn)?
        .into_iter()
        .chain(stored_source_keys(conn)?)
    {
        sealer.check(&id, &stored, &mut census)?;
    }
    Ok(census)
}

pub(crate) fn get_endpoint(conn: &Connection, app_id: &str, id: &str) -> Result<Option<Endpoint>> {
    conn.prepare_cached(&format!(
        "SELECT {ENDPOINT_COLS} FROM endpoints WHERE app_id = ?1 AND id = ?2 AND deleted = 0"
    ))
    .and_then(|mut s| s.query_row([app_id, id], endpoint_from_row).optional())
    .map_err(backend)
}

pub(crate) fn get_endpoint_by_id(conn: &Connection, id: &str) -> Result<Option<Endpoint>> {
    conn.prepare_cached(&format!(
        "SELECT {ENDPOINT_COLS} FROM endpoints WHERE id = ?1 AND deleted = 0"
    ))
    .and_then(|mut s| s.query_row([id], endpoint_from_row).optional())
    .map_err(backend)
}

pub(crate) fn list_endpoints(conn: &Connection, app_id: &str) -> Result<Vec<Endpoint>> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {ENDPOINT_COLS} FROM endpoints WHERE app_id = ?1 AND deleted = 0 ORDER BY created_at, id"
        ))
        .map_err(backend)?;
    let rows = stmt
        .query_map([app_id], endpoint_from_row)
        .map_err(backend)?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(backend)
}

/// A cursor for keyset pages ordered by `(created_at, id)`.
fn endpoint_cursor(e: &Endpoint) -> String {
    format!("{}:{}", e.created_at, e.id)
}

fn parse_endpoint_cursor(c: &str) -> Result<(i64, String)> {
    let (at, id) = c.split_once(':').ok_or(StoreError::BadCursor)?;
    Ok((
        at.parse().map_err(|_| StoreError::BadCursor)?,
        id.to_string(),
    ))
}

/// A page of the app's live endpoints in creation order.
pub(crate) fn list_endpoints_page(
    conn: &Connection,
    app_id: &str,
    page: &ListEndpoints,
) -> Result<Page<Endpoint>> {
    let (after_at, after_id) = match &page.cursor {
        Some(c) => parse_endpoint_cursor(c)?,
        None => (i64::MIN, String::new()),
    };
    let limit = page.limit.clamp(1, MAX_PAGE) as usize;
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {ENDPOINT_COLS} FROM endpoints
             WHERE app_id = ?1 AND deleted = 0 AND (created_at > ?2 OR (created_at = ?2 AND id > ?3))
             ORDER BY created_at, id LIMIT ?4"
        ))
        .map_err(backend)?;
    let mut items = stmt
        .query_map(
            params![app_id, after_at, after_id, limit as i64 + 1],
            endpoint_from_row,
        )
        .map_err(backend)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(backend)?;
    let more = items.len() > limit;
    items.truncate(limit);
    Ok(Page {
        next_cursor: if more {
            items.last().map(endpoint_cursor)
        } else {
            None
        },
        items,
    })
}

fn attempt_from_row(r: &Row) -> rusqlite::Result<Attempt> {
    Ok(Attempt {
        n: r.get(0)?,
        at: r.get(1)?,
        duration_ms: r.get(2)?,
        status_code: r.get(3)?,
        response: r.get(4)?,
        error_class: r.get(5)?,
        error: r.get(6)?,
    })
}

/// The delivery's latest [`DETAIL_ATTEMPTS`] attempts, in attempt order.
pub(crate) fn attempts_of(conn: &Connection, delivery_seq: i64) -> Result<Vec<Attempt>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT n, at, duration_ms, status_code, response, error_class, error FROM
               (SELECT n, at, duration_ms, status_code, response, error_class, error
                FROM attempts WHERE delivery_seq = ?1 ORDER BY n DESC LIMIT ?2)
             ORDER BY n",
        )
        .map_err(backend)?;
    let rows = stmt
        .query_map(params![delivery_seq, DETAIL_ATTEMPTS], attempt_from_row)
        .map_err(backend)?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(backend)
}

/// A page of the delivery's attempts, oldest first; `None` when it does not exist.
pub(crate) fn list_attempts(
    conn: &Connection,
    id: &str,
    page: &ListAttempts,
) -> Result<Option<Page<Attempt>>> {
    let after: u32 = match &page.cursor {
        Some(c) => c.parse().map_err(|_| StoreError::BadCursor)?,
        None => 0,
    };
    let Some((seq, _)) = get_delivery(conn, id)? else {
        return Ok(None);
    };
    let limit = page.limit.clamp(1, MAX_PAGE) as usize;
    let mut stmt = conn
        .prepare_cached(
            "SELECT n, at, duration_ms, status_code, response, error_class, error
             FROM attempts WHERE delivery_seq = ?1 AND n > ?2 ORDER BY n LIMIT ?3",
        )
        .map_err(backend)?;
    let mut items = stmt
        .query_map(params![seq, after, limit as i64 + 1], attempt_from_row)
        .map_err(backend)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(backend)?;
    let more = items.len() > limit;
    items.truncate(limit);
    Ok(Some(Page {
        next_cursor: if more {
            items.last().map(|a| a.n.to_string())
        } else {
            None
        },
        items,
    }))
}

pub(crate) fn deliveries_of(
    conn: &Connection,
    notification_seq: i64,
) -> Result<Vec<(i64, Delivery)>> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {DELIVERY_COLS} FROM deliveries d JOIN notifications n ON n.seq = d.notification_seq
             WHERE d.notification_seq = ?1 ORDER BY d.seq"
        ))
        .map_err(backend)?;
    let rows = stmt
        .query_map([notification_seq], delivery_from_row)
        .map_err(backend)?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(backend)
}

pub(crate) fn get_delivery(conn: &Connection, id: &str) -> Result<Option<(i64, Delivery)>> {
    conn.prepare_cached(&format!(
        "SELECT {DELIVERY_COLS} FROM deliveries d JOIN notifications n ON n.seq = d.notification_seq
         WHERE d.id = ?1"
    ))
    .and_then(|mut s| s.query_row([id], delivery_from_row).optional())
    .map_err(backend)
}

pub(crate) fn get_delivery_detail(conn: &Connection, id: &str) -> Result<Option<DeliveryDetail>> {
    let Some((seq, delivery)) = get_delivery(conn, id)? else {
        return Ok(None);
    };
    Ok(Some(DeliveryDetail {
        delivery,
        attempts: attempts_of(conn, seq)?,
    }))
}

fn detail(conn: &Connection, seq: i64, notification: Notification) -> Result<NotificationDetail> {
    let deliveries = deliveries_of(conn, seq)?
        .into_iter()
        .map(|(dseq, delivery)| {
            Ok(DeliveryDetail {
                delivery,
                attempts: attempts_of(conn, dseq)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(NotificationDetail {
        notification,
        deliveries,
    })
}

pub(crate) fn get_notification_by_seq(
    conn: &Connection,
    seq: i64,
) -> Result<Option<(i64, Notification)>> {
    conn.prepare_cached(&format!(
        "SELECT {NOTIFICATION_COLS} FROM notifications WHERE seq = ?1"
    ))
    .and_then(|mut s| s.query_row([seq], notification_from_row).optional())
    .map_err(backend)
}

pub(crate) fn get_notification(conn: &Connection, id: &str) -> Result<Option<NotificationDetail>> {
    let found = conn
        .prepare_cached(&format!(
            "SELECT {NOTIFICATION_COLS} FROM notifications WHERE id = ?1"
        ))
        .and_then(|mut s| s.query_row([id], notification_from_row).optional())
        .map_err(backend)?;
    found.map(|(seq, n)| detail(conn, seq, n)).transpose()
}

/// A page of the app's notifications as summaries: the payload column is never read, nor
/// are attempts.
pub(crate) fn list_notifications(
    conn: &Connection,
    app_id: &str,
    filter: &ListNotifications,
) -> Result<Page<NotificationSummary>> {
    let before: i64 = match &filter.cursor {
        Some(c) => c.parse().map_err(|_| StoreError::BadCursor)?,
        None => i64::MAX,
    };
    let status_clause = match filter.status {
        None => "",
        Some(DeliveryStatus::Succeeded) => {
            "AND EXISTS (SELECT 1 FROM deliveries d WHERE d.notification_seq = n.seq)
             AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.notification_seq = n.seq AND d.status != 'succeeded')"
        }
        Some(_) => {
            "AND EXISTS (SELECT 1 FROM deliveries d WHERE d.notification_seq = n.seq AND d.status = ?4)"
        }
    };
    let sql = format!(
        "SELECT n.seq, n.id, n.app_id, n.event_type, n.notify_url, n.idempotency_key, n.order_key, n.created_at
         FROM notifications n WHERE n.app_id = ?1 AND n.seq < ?2 {status_clause}
         ORDER BY n.seq DESC LIMIT ?3"
    );
    let limit = filter.limit.clamp(1, MAX_PAGE) as i64;
    let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
    let status = filter.status.map(|s| s.as_str()).unwrap_or("");
    let from_row = |r: &Row| -> rusqlite::Result<(i64, NotificationSummary)> {
        Ok((
            r.get(0)?,
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
    };
    let rows = if matches!(filter.status, Some(s) if s != DeliveryStatus::Succeeded) {
        stmt.query_map(params![app_id, before, limit + 1, status], from_row)
    } else {
        stmt.query_map(params![app_id, before, limit + 1], from_row)
    }
    .map_err(backend)?
    .collect::<rusqlite::Result<Vec<_>>>()
    .map_err(backend)?;
    let more = rows.len() as i64 > limit;
    let mut items = Vec::with_capacity(rows.len().min(limit as usize));
    let mut last_seq = None;
    for (seq, mut n) in rows.into_iter().take(limit as usize) {
        last_seq = Some(seq);
        n.deliveries = deliveries_of(conn, seq)?
            .into_iter()
            .map(|(_, d)| d)
            .collect();
        items.push(n);
    }
    Ok(Page {
        items,
        next_cursor: if more {
            last_seq.map(|s| s.to_string())
        } else {
            None
        },
    })
}

pub(crate) fn get_meta(conn: &Connection, key: &str) -> Result<Option<String>> {
    conn.prepare_cached("SELECT value FROM meta WHERE key = ?1")
        .and_then(|mut s| s.query_row([key], |r| r.get(0)).optional())
        .map_err(backend)
}

// --- sources ----------------------------------------------------------------------------

pub(crate) const SOURCE_COLS: &str = "id, name, profile, keys, expect_app_id, expect_merchant_id, \
     format, app_id, endpoint_id, created_at";

fn source_from_row(r: &Row, sealer: &Sealer) -> Result<Source> {
    let get = |e: rusqlite::Error| backend(e);
    let id: String = r.get(0).map_err(get)?;
    let stored: String = r.get(3).map_err(get)?;
    let format: String = r.get(6).map_err(get)?;
    Ok(Source {
        keys: sealer.open_source_keys(&id, &stored)?,
        name: r.get(1).map_err(get)?,
        profile: r.get(2).map_err(get)?,
        expect_app_id: r.get(4).map_err(get)?,
        expect_merchant_id: r.get(5).map_err(get)?,
        format: SourceFormat::parse(&format).ok_or_else(|| {
            StoreError::backend_msg(format!("bad source format {format:?} in the database"))
        })?,
        app_id: r.get(7).map_err(get)?,
        endpoint_id: r.get(8).map_err(get)?,
        created_at: r.get(9).map_err(get)?,
        id,
    })
}

/// A live source.
pub(crate) fn get_source(conn: &Connection, sealer: &Sealer, id: &str) -> Result<Option<Source>> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {SOURCE_COLS} FROM sources WHERE id = ?1 AND deleted = 0"
        ))
        .map_err(backend)?;
    let mut rows = stmt.query(params![id]).map_err(backend)?;
    match rows.next().map_err(backend)? {
        Some(r) => source_from_row(r, sealer).map(Some),
        None => Ok(None),
    }
}

/// A page of live sources in creation order.
pub(crate) fn list_sources_page(
    conn: &Connection,
    sealer: &Sealer,
    page: &ListSources,
) -> Result<Page<Source>> {
    let (after_at, after_id) = match &page.cursor {
        Some(c) => parse_endpoint_cursor(c)?,
        None => (i64::MIN, String::new()),
    };
    let limit = page.limit.clamp(1, MAX_PAGE) as usize;
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {SOURCE_COLS} FROM sources
             WHERE deleted = 0 AND (created_at > ?1 OR (created_at = ?1 AND id > ?2))
             ORDER BY created_at, id LIMIT ?3"
        ))
        .map_err(backend)?;
    let mut rows = stmt
        .query(params![after_at, after_id, limit as i64 + 1])
        .map_err(backend)?;
    let mut items = Vec::new();
    while let Some(r) = rows.next().map_err(backend)? {
        items.push(source_from_row(r, sealer)?);
    }
    let more = items.len() > limit;
    items.truncate(limit);
    Ok(Page {
        next_cursor: if more {
            items.last().map(|s| format!("{}:{}", s.created_at, s.id))
        } else {
            None
        },
        items,
    })
}

/// The sealing scope of an ops secret stored before migration 8 on its app's row.
fn legacy_ops_scope(app_id: &str) -> String {
    format!("{app_id}/ops")
}

/// An ops target stored before migration 8 on its app's row (see
/// `Writer::upgrade_legacy_ops_targets`).
pub(crate) fn get_legacy_app_ops(
    conn: &Connection,
    sealer: &Sealer,
    app_id: &str,
) -> Result<Option<OpsTarget>> {
    let row: Option<(Option<String>, Option<String>)> = conn
        .prepare_cached("SELECT ops_url, ops_credentials FROM apps WHERE id = ?1")
        .and_then(|mut s| {
            s.query_row([app_id], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .map_err(backend)?;
    Ok(match row {
        Some((Some(url), Some(stored))) => Some(OpsTarget {
            url,
            credentials: sealer.open_credentials(&legacy_ops_scope(app_id), &stored)?,
            retry: None,
        }),
        _ => None,
    })
}

/// The app's ops target, read from its internal app: `None` when there is no such live
/// app, `Some(None)` when it has no target.
pub(crate) fn get_app_ops(
    conn: &Connection,
    sealer: &Sealer,
    app_id: &str,
) -> Result<Option<Option<OpsTarget>>> {
    let row: Option<Option<String>> = conn
        .prepare_cached(
            "SELECT ops_app_id FROM apps WHERE id = ?1 AND deleted_at IS NULL AND internal IS NULL",
        )
        .and_then(|mut s| s.query_row([app_id], |r| r.get(0)).optional())
        .map_err(backend)?;
    let Some(ops_app_id) = row else {
        return Ok(None);
    };
    let Some(ops_app_id) = ops_app_id else {
        return Ok(Some(None));
    };
    let Some(app) = get_app(conn, sealer, &ops_app_id)? else {
        return Ok(Some(None));
    };
    let url: Option<String> = conn
        .prepare_cached("SELECT url FROM endpoints WHERE app_id = ?1 AND deleted = 0")
        .and_then(|mut s| s.query_row([&ops_app_id], |r| r.get(0)).optional())
        .map_err(backend)?;
    Ok(Some(url.map(|url| OpsTarget {
        url,
        credentials: app.credentials,
        retry: app.retry,
    })))
}

pub(crate) fn pending_count(conn: &Connection) -> Result<u64> {
    conn.prepare_cached("SELECT COUNT(*) FROM deliveries WHERE status = 'pending'")
        .and_then(|mut s| s.query_row([], |r| r.get::<_, i64>(0)))
        .map(|n| n as u64)
        .map_err(backend)
}

pub(crate) fn breaker_counts(conn: &Connection) -> Result<Vec<(BreakerState, u64)>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT health_state, COUNT(*) FROM endpoints WHERE deleted = 0 GROUP BY health_state",
        )
        .map_err(backend)?;
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
        .map_err(backend)?;
    let mut out = Vec::new();
    for row in rows {
        let (state, n) = row.map_err(backend)?;
        let state = BreakerState::parse(&state)
            .ok_or_else(|| StoreError::backend_msg(format!("bad breaker state {state:?}")))?;
        out.push((state, n as u64));
    }
    Ok(out)
}
