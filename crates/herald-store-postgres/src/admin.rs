//! What the API writes: apps, endpoints, notifications and their deliveries, manual retries
//! and recoveries. Each change that the engines must learn of notifies them (see `hints`)
//! inside its own transaction.
use std::collections::HashMap;
use std::sync::Arc;

use deadpool_postgres::GenericClient;
use herald_protocols::{Credentials, Profile};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use ulid::Ulid;

use herald_store::health::EndpointHealth;
use herald_store::model::*;
use herald_store::queue::NodeId;
use herald_store::{Result, SealCensus, Sealer, StoreError};

use crate::hints::{notify, notify_revoked, CHANNEL};
use crate::rows::{self, col, opt_json, APP_COLS, ENDPOINT_COLS};
use crate::{backend, violated, Inner};

fn int(v: u32, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| StoreError::Conflict(format!("{what} is too large: {v}")))
}

/// A new app's row from its request, with a fresh id.
pub(crate) fn app_row(new: NewApp) -> App {
    App {
        id: format!("app_{}", Ulid::new()),
        name: new.name,
        profile: new.profile,
        retry: new.retry,
        ack: new.ack,
        credentials: new.credentials,
        created_at: new.now,
    }
}

/// Inserts an app's row, its credentials sealed; `internal` names what owns an internal app
/// (`ops_outbox::INTERNAL_OPS` / `INTERNAL_SOURCE`), `None` for a producer's app.
pub(crate) async fn insert_app(
    c: &impl GenericClient,
    sealer: &Sealer,
    app: &App,
    internal: Option<&str>,
) -> Result<()> {
    c.execute(
        "INSERT INTO apps (id, name, profile, retry, ack, credentials, created_at, internal)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            &app.id,
            &app.name,
            &app.profile.name(),
            &opt_json(&app.retry)?,
            &opt_json(&app.ack)?,
            &sealer.seal_credentials(&app.id, &app.credentials)?,
            &app.created_at,
            &internal,
        ],
    )
    .await
    .map_err(backend)?;
    Ok(())
}

pub(crate) async fn create_app(inner: &Inner, new: NewApp) -> Result<App> {
    let app = app_row(new);
    let generation = inner.contexts.generation();
    let client = inner.client().await?;
    insert_app(&client, &inner.contexts.sealer, &app, None).await?;
    inner
        .contexts
        .put_app_since(Arc::new(AppCtx::from_app(&app)), generation);
    Ok(app)
}

pub(crate) async fn set_app_credentials(
    inner: &Inner,
    id: &str,
    creds: Credentials,
) -> Result<Option<App>> {
    let generation = inner.contexts.generation();
    let client = inner.client().await?;
    let payload = format!("app:{id}");
    let row = client
        .query_opt(
            &format!(
                "WITH u AS (UPDATE apps SET credentials = $2 WHERE id = $1 AND deleted_at IS NULL
                            RETURNING {APP_COLS})
                 SELECT {APP_COLS}, pg_notify($3, $4)::text FROM u"
            ),
            &[
                &id,
                &inner.contexts.sealer.seal_credentials(id, &creds)?,
                &CHANNEL,
                &payload,
            ],
        )
        .await
        .map_err(backend)?;
    let Some(row) = row else { return Ok(None) };
    let app = rows::app_from_row(&row, &inner.contexts.sealer)?;
    inner
        .contexts
        .put_app_since(Arc::new(AppCtx::from_app(&app)), generation);
    Ok(Some(app))
}

/// Rewrites every app's credentials not sealed under the sealing key, in one transaction
/// holding their rows (see `AdminStore::reseal_credentials`). The opened credentials do not
/// change, so no cache is told.
pub(crate) async fn reseal_credentials(inner: &Inner) -> Result<SealCensus> {
    let mut client = inner.client().await?;
    let tx = client.transaction().await.map_err(backend)?;
    let sealer = &inner.contexts.sealer;
    let mut census = SealCensus::default();
    for (id, stored) in rows::stored_credentials(&tx, true).await? {
        if let Some(sealed) = sealer.reseal(&id, &stored, &mut census)? {
            tx.execute(
                "UPDATE apps SET credentials = $2 WHERE id = $1",
                &[&id, &sealed],
            )
            .await
            .map_err(backend)?;
            census.resealed += 1;
        }
    }
    for (id, stored) in rows::stored_source_keys(&tx, true).await? {
        if let Some(sealed) = sealer.reseal(&id, &stored, &mut census)? {
            tx.execute(
                "UPDATE sources SET keys = $2 WHERE id = $1",
                &[&id, &sealed],
            )
            .await
            .map_err(backend)?;
            census.resealed += 1;
        }
    }
    tx.commit().await.map_err(backend)?;
    Ok(census)
}

pub(crate) async fn update_app(inner: &Inner, id: &str, patch: AppPatch) -> Result<Option<App>> {
    let generation = inner.contexts.generation();
    let mut client = inner.client().await?;
    let tx = client.transaction().await.map_err(backend)?;
    let row = tx
        .query_opt(
            &format!("SELECT {APP_COLS} FROM apps WHERE id = $1 AND deleted_at IS NULL FOR UPDATE"),
            &[&id],
        )
        .await
        .map_err(backend)?;
    let Some(row) = row else { return Ok(None) };
    let mut app = rows::app_from_row(&row, &inner.contexts.sealer)?;
    patch.apply(&mut app);
    tx.execute(
        "UPDATE apps SET name = $2, retry = $3, ack = $4 WHERE id = $1",
        &[&id, &app.name, &opt_json(&app.retry)?, &opt_json(&app.ack)?],
    )
    .await
    .map_err(backend)?;
    notify(&tx, &format!("app:{id}")).await?;
    tx.commit().await.map_err(backend)?;
    inner
        .contexts
        .put_app_since(Arc::new(AppCtx::from_app(&app)), generation);
    Ok(Some(app))
}

/// Deletes the app (see `AdminStore::delete_app`). The app row is locked `FOR UPDATE` first:
/// that waits for notifications being stored for it (they lock it `FOR KEY SHARE`), so their
/// deliveries are committed and canceled here, and those that come later find it deleted.
pub(crate) async fn delete_app(inner: &Inner, id: &str, now: UnixMillis) -> Result<Option<u64>> {
    let mut client = inner.client().await?;
    let tx = client.transaction().await.map_err(backend)?;
    let Some(deleted) = delete_app_in(&tx, id, now).await? else {
        return Ok(None);
    };
    tx.commit().await.map_err(backend)?;
    for ep in &deleted.endpoints {
        inner.contexts.forget_endpoint(ep);
    }
    Ok(Some(deleted.canceled))
}

/// What [`delete_app_in`] did, for the caches once it commits.
pub(crate) struct AppDeleted {
    /// Deliveries of the app itself that were canceled.
    pub(crate) canceled: u64,
    /// Endpoints deleted (the app's, and its ops target's).
    pub(crate) endpoints: Vec<String>,
}

/// [`delete_app`] inside the caller's transaction. The app's ops target (its internal app,
/// see `herald_store::ops_outbox`) is deleted with it.
pub(crate) async fn delete_app_in(
    tx: &impl GenericClient,
    id: &str,
    now: UnixMillis,
) -> Result<Option<AppDeleted>> {
    let mut out = AppDeleted {
        canceled: 0,
        endpoints: Vec::new(),
    };
    let mut next = Some(id.to_string());
    let mut first = true;
    while let Some(id) = next.take() {
        let live = tx
            .query_opt(
                "SELECT ops_app_id FROM apps WHERE id = $1 AND deleted_at IS NULL FOR UPDATE",
                &[&id],
            )
            .await
            .map_err(backend)?;
        let Some(live) = live else {
            if first {
                return Ok(None);
            }
            break;
        };
        next = col::<Option<String>>(&live, 0)?;
        tx.execute(
            "UPDATE apps SET deleted_at = $2 WHERE id = $1",
            &[&id, &now],
        )
        .await
        .map_err(backend)?;
        let endpoints = tx
            .query(
                "UPDATE endpoints SET deleted = TRUE, updated_at = $2
                 WHERE app_id = $1 AND NOT deleted RETURNING id",
                &[&id, &now],
            )
            .await
            .map_err(backend)?;
        tx.execute("DELETE FROM api_keys WHERE app_id = $1", &[&id])
            .await
            .map_err(backend)?;
        let canceled = cancel_pending(tx, Pending::OfApp, &id, now).await?;
        for row in &endpoints {
            let ep: String = col(row, 0)?;
            notify(tx, &format!("endpoint:{ep}")).await?;
            out.endpoints.push(ep);
        }
        notify(tx, &format!("app:{id}")).await?;
        if first {
            out.canceled = canceled;
        }
        first = false;
    }
    forget_holders(tx, &out.endpoints).await?;
    Ok(Some(out))
}

/// Deletes the claims' holder rows of deleted endpoints (see `queue`): nothing pending is
/// left to claim from them. Called after the transaction's other row writes, since it waits
/// for a claim that holds one of those rows (a claim never waits for this transaction's
/// rows: it skips them).
async fn forget_holders(
    tx: &impl GenericClient,
    endpoints: &[impl AsRef<str> + Sync],
) -> Result<()> {
    if endpoints.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = endpoints.iter().map(AsRef::as_ref).collect();
    tx.execute(
        "DELETE FROM endpoint_holders WHERE endpoint_id = ANY($1)",
        &[&ids],
    )
    .await
    .map_err(backend)?;
    Ok(())
}

// --- API keys ----------------------------------------------------------------------------

pub(crate) async fn create_api_key(inner: &Inner, new: NewApiKey) -> Result<ApiKey> {
    let key = ApiKey {
        id: format!("key_{}", Ulid::new()),
        app_id: new.app_id,
        prefix: new.prefix,
        created_at: new.now,
        last_used_at: None,
    };
    let client = inner.client().await?;
    let n = client
        .execute(
            "INSERT INTO api_keys (id, app_id, prefix, key_sha256, created_at)
             SELECT $1::text, $2::text, $3::text, $4::text, $5::bigint
             FROM apps WHERE id = $2 AND deleted_at IS NULL",
            &[
                &key.id,
                &key.app_id,
                &key.prefix,
                &new.key_sha256,
                &key.created_at,
            ],
        )
        .await
        .map_err(|e| match violated(&e, &SqlState::UNIQUE_VIOLATION) {
            Some(_) => StoreError::Conflict("this API key is already stored".into()),
            None => backend(e),
        })?;
    if n == 0 {
        return Err(StoreError::NotFound("app"));
    }
    Ok(key)
}

pub(crate) async fn delete_api_key(inner: &Inner, app_id: &str, id: &str) -> Result<bool> {
    let client = inner.client().await?;
    let n = client
        .execute(
            "DELETE FROM api_keys WHERE app_id = $1 AND id = $2",
            &[&app_id, &id],
        )
        .await
        .map_err(backend)?;
    Ok(n > 0)
}

pub(crate) async fn touch_api_key(inner: &Inner, id: &str, now: UnixMillis) -> Result<()> {
    let client = inner.client().await?;
    client
        .execute(
            "UPDATE api_keys SET last_used_at = $2
             WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $2)",
            &[&id, &now],
        )
        .await
        .map_err(backend)?;
    Ok(())
}

/// A new endpoint's row from its request, with a fresh id and a healthy start.
pub(crate) fn endpoint_row(new: NewEndpoint) -> Endpoint {
    Endpoint {
        id: format!("ep_{}", Ulid::new()),
        app_id: new.app_id,
        url: new.url,
        event_types: new.event_types,
        retry: new.retry,
        ack: new.ack,
        max_in_flight: new.max_in_flight,
        ordered: new.ordered,
        enabled: new.enabled,
        timeout_ms: new.timeout_ms,
        created_at: new.now,
        updated_at: new.now,
        health: EndpointHealth::default(),
    }
}

/// Inserts an endpoint's row; the caller has inserted or locked its app in the same
/// transaction.
pub(crate) async fn insert_endpoint(c: &impl GenericClient, ep: &Endpoint) -> Result<()> {
    c.execute(
        "INSERT INTO endpoints (id, app_id, url, event_types, retry, ack, max_in_flight,
                                ordered, enabled, timeout_ms, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        &[
            &ep.id,
            &ep.app_id,
            &ep.url.as_str(),
            &opt_json(&ep.event_types)?,
            &opt_json(&ep.retry)?,
            &opt_json(&ep.ack)?,
            &int(ep.max_in_flight, "max_in_flight")?,
            &ep.ordered,
            &ep.enabled,
            &ep.timeout_ms.map(|t| int(t, "timeout_ms")).transpose()?,
            &ep.created_at,
            &ep.updated_at,
        ],
    )
    .await
    .map_err(backend)?;
    Ok(())
}

pub(crate) async fn create_endpoint(inner: &Inner, new: NewEndpoint) -> Result<Endpoint> {
    let ep = endpoint_row(new);
    let client = inner.client().await?;
    // Only for a live app (the app row locked as the foreign key's check would).
    let inserted = client
        .execute(
            "WITH a AS (SELECT id FROM apps WHERE id = $2 AND deleted_at IS NULL FOR KEY SHARE)
             INSERT INTO endpoints (id, app_id, url, event_types, retry, ack, max_in_flight,
                                    ordered, enabled, timeout_ms, created_at, updated_at)
             SELECT $1::text, $2::text, $3::text, $4::text, $5::text, $6::text, $7::int4,
                    $8::bool, $9::bool, $10::int4, $11::int8, $12::int8
             FROM a",
            &[
                &ep.id,
                &ep.app_id,
                &ep.url.as_str(),
                &opt_json(&ep.event_types)?,
                &opt_json(&ep.retry)?,
                &opt_json(&ep.ack)?,
                &int(ep.max_in_flight, "max_in_flight")?,
                &ep.ordered,
                &ep.enabled,
                &ep.timeout_ms.map(|t| int(t, "timeout_ms")).transpose()?,
                &ep.created_at,
                &ep.updated_at,
            ],
        )
        .await
        .map_err(|e| match violated(&e, &SqlState::FOREIGN_KEY_VIOLATION) {
            Some(_) => StoreError::NotFound("app"),
            None => backend(e),
        })?;
    if inserted == 0 {
        return Err(StoreError::NotFound("app"));
    }
    Ok(ep)
}

pub(crate) async fn update_endpoint(
    inner: &Inner,
    app_id: &str,
    id: &str,
    patch: EndpointPatch,
    now: UnixMillis,
) -> Result<Option<Endpoint>> {
    let generation = inner.contexts.generation();
    let mut client = inner.client().await?;
    let tx = client.transaction().await.map_err(backend)?;
    let row = tx
        .query_opt(
            &format!(
                "SELECT {ENDPOINT_COLS} FROM endpoints
                 WHERE app_id = $1 AND id = $2 AND NOT deleted FOR UPDATE"
            ),
            &[&app_id, &id],
        )
        .await
        .map_err(backend)?;
    let Some(row) = row else { return Ok(None) };
    let (mut ep, _) = rows::endpoint_from_row(&row)?;
    let was_blocked = ep.health.blocks(now);
    patch.apply(&mut ep, now);
    write_endpoint(&tx, &ep).await?;
    notify(&tx, &format!("endpoint:{id}")).await?;
    if was_blocked && !ep.health.blocks(now) {
        notify(&tx, "work").await?;
    }
    tx.commit().await.map_err(backend)?;
    inner
        .contexts
        .put_endpoint_since(Arc::new(EndpointCtx::from_endpoint(&ep)), generation);
    Ok(Some(ep))
}

pub(crate) async fn delete_endpoint(
    inner: &Inner,
    app_id: &str,
    id: &str,
    now: UnixMillis,
) -> Result<bool> {
    let mut client = inner.client().await?;
    let tx = client.transaction().await.map_err(backend)?;
    let deleted = tx
        .execute(
            "UPDATE endpoints SET deleted = TRUE, updated_at = $3
             WHERE id = $1 AND app_id = $2 AND NOT deleted",
            &[&id, &app_id, &now],
        )
        .await
        .map_err(backend)?;
    if deleted == 0 {
        return Ok(false);
    }
    // Cancel what is pending, telling the nodes that held some of it.
    cancel_pending(&tx, Pending::OfEndpoint, id, now).await?;
    forget_holders(&tx, &[id]).await?;
    notify(&tx, &format!("endpoint:{id}")).await?;
    tx.commit().await.map_err(backend)?;
    inner.contexts.forget_endpoint(id);
    Ok(true)
}

// --- notifications -----------------------------------------------------------------------

/// A notification's delivery targets: `(endpoint id, url, order key)`.
type Targets = Vec<(Option<String>, String, Option<String>)>;

/// The state a new notification is decided on: its app's profile (its credentials are not
/// needed, so not opened), the endpoints it may fan out to, and the seq of the notification
/// that already used its idempotency key.
async fn read_for_notification(
    c: &impl GenericClient,
    new: &NewNotification,
) -> Result<(Profile, Vec<Endpoint>, Option<i64>)> {
    // Without a key, a statement of its own: one whose key may be NULL was planned anew on
    // every run (a plan for a NULL key skips the lookup, so it always looked cheaper).
    let app_query = async {
        match new.idempotency_key.as_deref() {
            Some(key) => {
                let sql = format!(
                    "SELECT {APP_COLS},
                            (SELECT seq FROM notifications
                             WHERE app_id = $1 AND idempotency_key = $2)
                     FROM apps WHERE id = $1 AND deleted_at IS NULL"
                );
                let stmt = c.prepare_cached(&sql).await.map_err(backend)?;
                c.query_opt(&stmt, &[&new.app_id, &key]).await
            }
            None => {
                let sql = format!(
                    "SELECT {APP_COLS}, NULL::bigint FROM apps WHERE id = $1 AND deleted_at IS NULL"
                );
                let stmt = c.prepare_cached(&sql).await.map_err(backend)?;
                c.query_opt(&stmt, &[&new.app_id]).await
            }
        }
        .map_err(backend)
    };
    // Pipelined with the app's row: the endpoints, when the notification fans out.
    let (app_row, endpoints) = if new.notify_url.is_none() {
        tokio::try_join!(app_query, rows::list_endpoints(c, &new.app_id))?
    } else {
        (app_query.await?, Vec::new())
    };
    let row = app_row.ok_or(StoreError::NotFound("app"))?;
    let profile = rows::app_profile(&row)?;
    let existing: Option<i64> = col(&row, 7)?;
    Ok((profile, endpoints, existing))
}

fn targets(new: &NewNotification, endpoints: &[Endpoint]) -> Targets {
    match &new.notify_url {
        Some(url) => vec![(None, url.to_string(), new.order_key_for(None))],
        None => endpoints
            .iter()
            .filter(|e| new.goes_to(e.enabled, e.event_types.as_deref()))
            .map(|e| {
                let key = new.order_key_for(Some((&e.id, e.ordered)));
                (Some(e.id.clone()), e.url.to_string(), key)
            })
            .collect(),
    }
}

/// The notification stored earlier under the same idempotency key.
async fn existing(c: &impl GenericClient, seq: i64) -> Result<CreatedNotification> {
    let (_, notification) = rows::get_notification_by_seq(c, seq)
        .await?
        .ok_or(StoreError::NotFound("notification"))?;
    let deliveries = rows::deliveries_of(c, &[seq])
        .await?
        .remove(&seq)
        .unwrap_or_default()
        .into_iter()
        .map(|(_, d)| d)
        .collect();
    Ok(CreatedNotification {
        notification,
        deliveries,
        replayed: true,
    })
}

/// The app row is locked `FOR KEY SHARE` (as a foreign key's check would) with its
/// liveness in the condition: an app deleted meanwhile (`delete_app` holds it `FOR UPDATE`)
/// is re-checked once its deletion commits, and nothing is inserted for it. This lock is
/// the check: the notification's and the delivery's foreign keys were dropped by migration
/// 10, since this one statement guarantees both parents (its app, and its notification).
const INSERT_NOTIFICATION: &str = "
    WITH a AS (SELECT id FROM apps WHERE id = $2 AND deleted_at IS NULL FOR KEY SHARE),
    n AS (
        INSERT INTO notifications
            (id, app_id, event_type, payload, notify_url, idempotency_key, order_key, created_at)
        SELECT $1::text, $2::text, $3::text, $4::text, $5::text, $6::text, $7::text, $8::bigint
        FROM a
        ON CONFLICT (app_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
        RETURNING seq),
    d AS (
        INSERT INTO deliveries (id, notification_seq, app_id, endpoint_id, url, notify_id,
                                status, attempts, next_at, order_key, created_at, updated_at)
        SELECT t.id, n.seq, $2, t.endpoint_id, t.url, t.notify_id, 'pending', 0, $8,
               t.order_key, $8, $8
        FROM n, unnest($9::text[], $10::text[], $11::text[], $12::text[], $13::text[])
                WITH ORDINALITY AS t(id, endpoint_id, url, notify_id, order_key, ord)
        ORDER BY t.ord
        RETURNING seq)
    SELECT n.seq, (SELECT count(*) FROM d) FROM n";

/// What a new notification of one app is decided on: the app's profile (its credentials
/// are not needed, so not opened) and the endpoints it may fan out to. A group commit reads
/// this once per app for all of that app's notifications in the batch, or takes it from the
/// store's [`TargetsCache`].
pub(crate) struct AppTargets {
    profile: Profile,
    endpoints: Vec<Endpoint>,
    /// What this was read as ([`fingerprint_of`]): the batch insert refuses to decide on
    /// it once the rows say otherwise.
    fingerprint: String,
}

/// What a decision on an app's notifications depends on, as one text: a SHA-256 (hex) of
/// the app's profile and, for each of its live endpoints in id order, the id, URL, event
/// types, `ordered` and `enabled`, encoded as JSON (unambiguous whatever the values hold).
/// Any change that can change a decision changes it: an endpoint added, deleted, disabled
/// (by hand or by its health), its URL or filter changed. Changes that cannot, such as the
/// health counters every failed attempt writes, leave it as it was, so a cached entry
/// survives them. `{app}` is the alias of the app row.
fn fingerprint_of(app: &str) -> String {
    format!(
        "encode(sha256(convert_to(json_build_array({app}.profile,
            (SELECT json_agg(json_build_array(fe.id, fe.url, fe.event_types, fe.ordered,
                                              fe.enabled) ORDER BY fe.id)
             FROM endpoints fe WHERE fe.app_id = {app}.id AND NOT fe.deleted))::text,
            'UTF8')), 'hex')"
    )
}

/// The [`AppTargets`] a store's group commits decided on, by app id, so that a batch of
/// notifications of apps seen before costs one statement (the insert) instead of three
/// (the app, its endpoints, the insert): the two reads were more than half of the
/// statements of the e2e bench's one-node PostgreSQL phase, and one of the batch's two
/// round trips before its commit. An entry is never trusted blindly: the insert checks
/// every app's [fingerprint](fingerprint_of) against the rows in its own snapshot and
/// inserts nothing when one differs (a change made on this node or any other since the
/// read), and the batch then reads them again ([`TargetsCache::forget`]). (The engine's
/// `hints::Contexts` caches single apps and endpoints for claimed jobs, kept coherent by
/// lossy hints; a decision needs an app's whole endpoint list, exactly, so it is not served
/// from there.) Bounded by the endpoints it holds ([`TargetsCache::MAX_ENDPOINTS`]): past
/// that it starts over, and an app with more endpoints than that is not kept at all.
#[derive(Default)]
pub(crate) struct TargetsCache {
    kept: std::sync::Mutex<Kept>,
    /// Reads of targets from the database that filled it (what the tests count).
    pub(crate) reads: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct Kept {
    apps: HashMap<String, Arc<AppTargets>>,
    /// The endpoints of all of `apps` (each app counts one more, for the app itself).
    size: usize,
}

impl TargetsCache {
    /// Most endpoints (and apps) kept: a few tens of megabytes at most.
    const MAX_ENDPOINTS: usize = 100_000;

    /// The targets of every app of `app_ids`, when all are cached.
    pub(crate) fn all(&self, app_ids: &[&str]) -> Option<HashMap<String, Arc<AppTargets>>> {
        let kept = self.kept.lock().ok()?;
        app_ids
            .iter()
            .map(|id| kept.apps.get(*id).map(|t| (id.to_string(), t.clone())))
            .collect()
    }

    fn put(&self, read: &HashMap<String, Arc<AppTargets>>) {
        self.reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Ok(mut kept) = self.kept.lock() else {
            return;
        };
        for (id, t) in read {
            let size = t.endpoints.len() + 1;
            if size > Self::MAX_ENDPOINTS {
                continue;
            }
            if kept.size + size > Self::MAX_ENDPOINTS {
                *kept = Kept::default();
            }
            if let Some(old) = kept.apps.insert(id.clone(), t.clone()) {
                kept.size -= old.endpoints.len() + 1;
            }
            kept.size += size;
        }
    }

    /// Drops the entries of `app_ids` (found changed by an insert).
    pub(crate) fn forget(&self, app_ids: &[&str]) {
        if let Ok(mut kept) = self.kept.lock() {
            for id in app_ids {
                if let Some(old) = kept.apps.remove(*id) {
                    kept.size -= old.endpoints.len() + 1;
                }
            }
        }
    }
}

/// Reads the [`AppTargets`] of the live apps among `app_ids`, by app id: two statements
/// (the apps' rows, and their endpoints in creation order), pipelined, however many apps.
/// An unknown or deleted app is absent from the answer; no app, no statement.
///
/// A batch of one app (the usual case) reads by equality (`id = $1`), several by
/// `= ANY($1)`. PostgreSQL plans the array form anew on most runs: its plan for the actual
/// array (one element) always looks cheaper than the generic plan, which assumes ten. The
/// equality form's generic plan costs what a fresh plan would, so PostgreSQL keeps it after
/// its first runs. Measured with `pg_stat_statements` in the e2e bench's PostgreSQL phases:
/// planning took 0.37 s of the one-node phase's 4.95 s of statement time and 0.48 s of the
/// three-node phase's 5.79 s, as much as running the two reads.
///
/// What is read goes into `cache` (when given) for the next batches.
pub(crate) async fn read_apps_targets(
    c: &impl GenericClient,
    app_ids: &[&str],
    cache: Option<&TargetsCache>,
) -> Result<HashMap<String, Arc<AppTargets>>> {
    if app_ids.is_empty() {
        return Ok(HashMap::new());
    }
    let one = app_ids.first().filter(|_| app_ids.len() == 1);
    let (test, arg): (&str, &(dyn ToSql + Sync)) = match &one {
        Some(id) => ("= $1", id),
        None => ("= ANY($1)", &app_ids),
    };
    let app_stmt = c
        .prepare_cached(&format!(
            "SELECT {APP_COLS}, {} FROM apps WHERE id {test} AND deleted_at IS NULL",
            fingerprint_of("apps")
        ))
        .await
        .map_err(backend)?;
    let endpoint_stmt = c
        .prepare_cached(&format!(
            "SELECT {ENDPOINT_COLS} FROM endpoints WHERE app_id {test} AND NOT deleted
             ORDER BY created_at, id"
        ))
        .await
        .map_err(backend)?;
    let (apps, endpoints) = tokio::try_join!(
        async { c.query(&app_stmt, &[arg]).await.map_err(backend) },
        async { c.query(&endpoint_stmt, &[arg]).await.map_err(backend) },
    )?;
    // The fingerprint follows the app's columns.
    let fingerprint_column = APP_COLS.split(',').count();
    let mut out = HashMap::with_capacity(apps.len());
    for row in &apps {
        let id: String = col(row, 0)?;
        let targets = AppTargets {
            profile: rows::app_profile(row)?,
            endpoints: Vec::new(),
            fingerprint: col(row, fingerprint_column)?,
        };
        out.insert(id, targets);
    }
    for row in &endpoints {
        let (endpoint, _) = rows::endpoint_from_row(row)?;
        if let Some(app) = out.get_mut(&endpoint.app_id) {
            app.endpoints.push(endpoint);
        }
    }
    let out: HashMap<String, Arc<AppTargets>> =
        out.into_iter().map(|(id, t)| (id, Arc::new(t))).collect();
    if let Some(cache) = cache {
        cache.put(&out);
    }
    Ok(out)
}

/// Stores a notification and its deliveries in one statement (atomic on its own, or part
/// of the caller's transaction). `None` when another transaction took the idempotency key
/// first (the insert does nothing then, and aborts no transaction; the caller reads that
/// notification instead). `Err(NotFound("app"))` when the app is gone, also when it was
/// deleted while this ran.
pub(crate) async fn insert_notification(
    c: &impl GenericClient,
    new: NewNotification,
    notify_id: Option<String>,
) -> Result<Option<CreatedNotification>> {
    let (profile, endpoints, found) = read_for_notification(c, &new).await?;
    if let Some(seq) = found {
        return existing(c, seq).await.map(Some);
    }
    insert_decided(c, new, notify_id, profile, &endpoints).await
}

/// A new notification as decided on its app's profile and endpoints: its row, its
/// deliveries' rows (with their ids and notify ids made here), and each delivery's order key.
struct Decided {
    notification: Notification,
    deliveries: Vec<Delivery>,
    order_keys: Vec<Option<String>>,
}

fn decide(
    new: NewNotification,
    notify_id: Option<String>,
    profile: Profile,
    endpoints: &[Endpoint],
) -> Decided {
    let targets = targets(&new, endpoints);
    let notification = Notification {
        id: format!("ntf_{}", Ulid::new()),
        app_id: new.app_id,
        event_type: new.event_type,
        payload: new.payload,
        notify_url: new.notify_url,
        idempotency_key: new.idempotency_key,
        order_key: new.order_key,
        created_at: new.now,
    };
    let mut deliveries = Vec::with_capacity(targets.len());
    let mut order_keys = Vec::with_capacity(targets.len());
    for (endpoint_id, url, order_key) in targets {
        deliveries.push(Delivery {
            id: format!("dlv_{}", Ulid::new()),
            notification_id: notification.id.clone(),
            app_id: notification.app_id.clone(),
            endpoint_id,
            url,
            notify_id: notify_id.clone().unwrap_or_else(|| profile.new_notify_id()),
            status: DeliveryStatus::Pending,
            attempts: 0,
            next_attempt_at: Some(new.now),
            created_at: new.now,
            updated_at: new.now,
        });
        order_keys.push(order_key);
    }
    Decided {
        notification,
        deliveries,
        order_keys,
    }
}

/// The insert of [`insert_notification`], once the app's profile and endpoints are known
/// and no notification holds the idempotency key (a race for the key still ends in `None`).
async fn insert_decided(
    c: &impl GenericClient,
    new: NewNotification,
    notify_id: Option<String>,
    profile: Profile,
    endpoints: &[Endpoint],
) -> Result<Option<CreatedNotification>> {
    let Decided {
        notification,
        deliveries,
        order_keys,
    } = decide(new, notify_id, profile, endpoints);
    let ids: Vec<&str> = deliveries.iter().map(|d| d.id.as_str()).collect();
    let endpoint_ids: Vec<Option<&str>> = deliveries
        .iter()
        .map(|d| d.endpoint_id.as_deref())
        .collect();
    let urls: Vec<&str> = deliveries.iter().map(|d| d.url.as_str()).collect();
    let notify_ids: Vec<&str> = deliveries.iter().map(|d| d.notify_id.as_str()).collect();
    let stmt = c
        .prepare_cached(INSERT_NOTIFICATION)
        .await
        .map_err(backend)?;
    let inserted = c
        .query_opt(
            &stmt,
            &[
                &notification.id,
                &notification.app_id,
                &notification.event_type.as_str(),
                &notification.payload,
                &notification.notify_url.as_deref(),
                &notification.idempotency_key.as_deref(),
                &notification.order_key.as_deref(),
                &notification.created_at,
                &ids,
                &endpoint_ids,
                &urls,
                &notify_ids,
                &order_keys,
            ],
        )
        .await;
    match inserted {
        Ok(Some(_)) => Ok(Some(CreatedNotification {
            notification,
            deliveries,
            replayed: false,
        })),
        // Without a key, only a deleted app inserts nothing.
        Ok(None) if notification.idempotency_key.is_none() => Err(StoreError::NotFound("app")),
        Ok(None) => Ok(None),
        Err(e) => Err(backend(e)),
    }
}

/// Stores a notification inside a group commit's transaction, decided on `app` as the
/// batch read it (`None`: no such app). Only a notification with an idempotency key reads
/// anything more (whether the key was used); a lost race for the key reads the winner,
/// which the transaction then sees.
pub(crate) async fn create_in_batch(
    c: &impl GenericClient,
    new: NewNotification,
    app: Option<&AppTargets>,
) -> Result<CreatedNotification> {
    let app = app.ok_or(StoreError::NotFound("app"))?;
    let (app_id, key) = (new.app_id.clone(), new.idempotency_key.clone());
    if let Some(key) = &key {
        let stmt = c
            .prepare_cached(
                "SELECT seq FROM notifications WHERE app_id = $1 AND idempotency_key = $2",
            )
            .await
            .map_err(backend)?;
        if let Some(row) = c
            .query_opt(&stmt, &[&app_id, &key.as_str()])
            .await
            .map_err(backend)?
        {
            return existing(c, col(&row, 0)?).await;
        }
    }
    match insert_decided(c, new, None, app.profile, &app.endpoints).await? {
        Some(created) => Ok(created),
        None => existing_by_key(c, &app_id, key.as_deref().unwrap_or_default()).await,
    }
}

/// [`INSERT_NOTIFICATION`] for many notifications without an idempotency key, in one
/// statement: `$1` the apps (locked `FOR KEY SHARE` as in the single insert, so an app
/// deleted meanwhile gets nothing inserted), `$2..$8` one element per notification, `$9..$14`
/// one element per delivery with the id of its notification (its app and time are its
/// notification's). Rows go in in the order given
/// (`ORDER BY ord`), so identities, and with them the order of an order key's deliveries,
/// follow the batch's order.
///
/// Claims at birth (see [`Birth`]): with `$15` a node and `$16` the time, a delivery without
/// an order key is inserted held by that node when the node's lease is live and either the
/// delivery has no endpoint, or its endpoint's holder row names the node, is not locked by
/// a claim (`FOR KEY SHARE SKIP LOCKED`: the row stays locked until this statement commits,
/// so a claim of that endpoint on any node skips it meanwhile and, once it commits, sees the
/// deliveries held) and its health does not hold it back. With `$15` NULL nothing is
/// claimed.
///
/// With `$17` the [fingerprints](fingerprint_of) of the apps `$1` (in the same order) as the
/// batch's targets were read, nothing is inserted when one of them differs from the rows in
/// this statement's snapshot (the targets were read from the cache, and a change was
/// committed since); the answer is then one row of NULLs. With `$17` NULL there is no such
/// check (targets read just before, by the batch itself).
///
/// Answers the ids of the notifications inserted (with a NULL seq), then the id and seq of
/// each delivery claimed at birth.
static INSERT_NOTIFICATIONS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    INSERT_NOTIFICATIONS_SQL.replace("{fingerprint}", &fingerprint_of("fa"))
});

/// [`INSERT_NOTIFICATIONS`] before its fingerprint expression is put in.
const INSERT_NOTIFICATIONS_SQL: &str = "
    WITH a AS (SELECT id FROM apps WHERE id = ANY($1::text[]) AND deleted_at IS NULL
               ORDER BY id FOR KEY SHARE),
    stale AS MATERIALIZED (
        SELECT 1 FROM unnest($1::text[], $17::text[]) AS v(app, fingerprint)
        WHERE $17::text[] IS NOT NULL
          AND v.fingerprint IS DISTINCT FROM (SELECT {fingerprint} FROM apps fa
                                               WHERE fa.id = v.app)
        LIMIT 1),
    me AS MATERIALIZED (SELECT id FROM nodes WHERE id = $15::text AND lease_until >= $16),
    h AS MATERIALIZED (
        SELECT hh.endpoint_id FROM endpoint_holders hh
        WHERE hh.endpoint_id = ANY($11::text[]) AND hh.node_id = $15::text
          AND EXISTS (SELECT 1 FROM me)
          AND NOT EXISTS (SELECT 1 FROM endpoints b
                          WHERE b.id = hh.endpoint_id AND b.health_state <> 'closed'
                            AND (b.health_state = 'disabled' OR b.breaker_open_until > $16))
        ORDER BY hh.endpoint_id FOR KEY SHARE SKIP LOCKED),
    n AS (
        INSERT INTO notifications
            (id, app_id, event_type, payload, notify_url, order_key, created_at)
        SELECT t.id, t.app_id, t.event_type, t.payload, t.notify_url, t.order_key, t.created_at
        FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                    $8::bigint[])
                WITH ORDINALITY AS t(id, app_id, event_type, payload, notify_url, order_key,
                                     created_at, ord)
        WHERE t.app_id IN (SELECT id FROM a) AND NOT EXISTS (SELECT 1 FROM stale)
        ORDER BY t.ord
        RETURNING seq, id, app_id, created_at),
    d AS (
        INSERT INTO deliveries (id, notification_seq, app_id, endpoint_id, url, notify_id,
                                status, attempts, next_at, order_key, created_at, updated_at,
                                locked_by)
        SELECT u.id, n.seq, n.app_id, u.endpoint_id, u.url, u.notify_id, 'pending', 0,
               n.created_at, u.order_key, n.created_at, n.created_at,
               CASE WHEN u.order_key IS NULL
                     AND CASE WHEN u.endpoint_id IS NULL THEN EXISTS (SELECT 1 FROM me)
                              ELSE u.endpoint_id IN (SELECT endpoint_id FROM h) END
                    THEN $15::text END
        FROM unnest($9::text[], $10::text[], $11::text[], $12::text[], $13::text[],
                    $14::text[])
                WITH ORDINALITY AS u(notification_id, id, endpoint_id, url, notify_id,
                                     order_key, ord)
             JOIN n ON n.id = u.notification_id
        ORDER BY u.ord
        RETURNING seq, id, locked_by IS NOT NULL AS born)
    SELECT n.id, NULL::bigint FROM n
    UNION ALL
    SELECT d.id, d.seq FROM d WHERE d.born
    UNION ALL
    SELECT NULL, NULL FROM stale";

/// Claiming new deliveries at birth on PostgreSQL, for the node this store's engine runs
/// (`Queue::register_node` with `claim_new`): the group commit's insert takes the deliveries
/// it may ([`INSERT_NOTIFICATIONS`]) and the engine gets them as `Hint::Claimed` once the
/// insert committed, so a notification needs no claim and no peek. The store asks for it
/// only while its last peek counted no other live node (`Inner::live_nodes`): on a fleet the
/// endpoints move between nodes by the fair-share rule of the claims, which deliveries
/// claimed at birth would hold in place. The holder-row lock keeps the one-node-per-endpoint
/// rule either way.
pub(crate) struct Birth {
    pub(crate) node: NodeId,
    pub(crate) now: UnixMillis,
}

/// The deliveries a batch insert claimed at birth, to be handed to the birth node once the
/// insert has committed (`batch::hand_over`).
#[derive(Default)]
pub(crate) struct Born {
    /// As jobs, with the app and endpoint contexts they were built with.
    pub(crate) jobs: Vec<Arc<ClaimedDelivery>>,
    /// The contexts' generation read before the insert (see `Contexts::refresh`).
    pub(crate) generation: u64,
    /// Some were claimed but could not be made into jobs (their app or endpoint was deleted
    /// meanwhile, or reading it failed): the node should read back what it holds.
    pub(crate) unsure: bool,
}

/// What [`create_many_in_batch`] stored: one result per notification, in order; what it
/// claimed at birth; and whether some new delivery was left without a holder (`unclaimed`:
/// claims take it, so the caller signals work).
pub(crate) struct ManyCreated {
    pub(crate) results: Vec<Result<CreatedNotification>>,
    pub(crate) born: Born,
    pub(crate) unclaimed: bool,
    /// Nothing was stored: an app's targets changed since they were read (only when asked
    /// to check them). The caller reads them again and stores the batch then.
    pub(crate) stale: bool,
}

/// Stores many notifications without an idempotency key inside a group commit's
/// transaction, in one statement ([`INSERT_NOTIFICATIONS`]) instead of one each: each
/// decided on its app as the batch read it (`None`: no such app), with the new deliveries
/// claimed at birth for `birth` where they may be. A result is `NotFound("app")` for a
/// notification whose app is unknown or was deleted meanwhile. An error of the statement
/// (which aborts the transaction) is every one's. With `check`, the statement first checks
/// that the apps' targets are what they were read as (see [`ManyCreated::stale`]).
pub(crate) async fn create_many_in_batch(
    inner: &Inner,
    c: &impl GenericClient,
    news: Vec<(NewNotification, Option<&AppTargets>)>,
    birth: Option<&Birth>,
    check: bool,
) -> ManyCreated {
    // Each notification's app fingerprint as its targets were read, in the order of `news`.
    let fingerprints: Vec<Option<&str>> = news
        .iter()
        .map(|(_, app)| app.map(|a| a.fingerprint.as_str()))
        .collect();
    let decided: Vec<Option<Decided>> = news
        .into_iter()
        .map(|(new, app)| app.map(|a| decide(new, None, a.profile, &a.endpoints)))
        .collect();
    let rows: Vec<&Decided> = decided.iter().flatten().collect();
    if rows.is_empty() {
        return ManyCreated {
            results: decided
                .into_iter()
                .map(|_| Err(StoreError::NotFound("app")))
                .collect(),
            born: Born::default(),
            unclaimed: false,
            stale: false,
        };
    }
    let generation = inner.contexts.generation();
    // The batch's apps, each once with its fingerprint (all of its notifications share it).
    let mut app_rows: Vec<(&str, &str)> = decided
        .iter()
        .zip(&fingerprints)
        .filter_map(|(d, fp)| Some((d.as_ref()?.notification.app_id.as_str(), (*fp)?)))
        .collect();
    app_rows.sort_unstable();
    app_rows.dedup_by_key(|(id, _)| *id);
    let apps: Vec<&str> = app_rows.iter().map(|(id, _)| *id).collect();
    let app_fingerprints: Option<Vec<&str>> =
        check.then(|| app_rows.iter().map(|(_, fp)| *fp).collect());
    let n = |f: fn(&Notification) -> Option<&str>| -> Vec<Option<&str>> {
        rows.iter().map(|d| f(&d.notification)).collect()
    };
    let ids = n(|x| Some(&x.id));
    let app_ids = n(|x| Some(&x.app_id));
    let event_types = n(|x| Some(x.event_type.as_str()));
    let payloads = n(|x| Some(&x.payload));
    let notify_urls = n(|x| x.notify_url.as_deref());
    let order_keys = n(|x| x.order_key.as_deref());
    let created: Vec<UnixMillis> = rows.iter().map(|d| d.notification.created_at).collect();
    let each = || {
        rows.iter()
            .flat_map(|d| d.deliveries.iter().zip(&d.order_keys))
    };
    let d_notifications: Vec<&str> = each().map(|(d, _)| d.notification_id.as_str()).collect();
    let d_ids: Vec<&str> = each().map(|(d, _)| d.id.as_str()).collect();
    let d_endpoints: Vec<Option<&str>> = each().map(|(d, _)| d.endpoint_id.as_deref()).collect();
    let d_urls: Vec<&str> = each().map(|(d, _)| d.url.as_str()).collect();
    let d_notify_ids: Vec<&str> = each().map(|(d, _)| d.notify_id.as_str()).collect();
    let d_order_keys: Vec<Option<&str>> = each().map(|(_, k)| k.as_deref()).collect();
    let birth_node: Option<&str> = birth.map(|b| &*b.node);
    let birth_now: UnixMillis = birth.map(|b| b.now).unwrap_or(UnixMillis::new(0));
    let inserted = async {
        let stmt = c
            .prepare_cached(&INSERT_NOTIFICATIONS)
            .await
            .map_err(backend)?;
        let rows = c
            .query(
                &stmt,
                &[
                    &apps,
                    &ids,
                    &app_ids,
                    &event_types,
                    &payloads,
                    &notify_urls,
                    &order_keys,
                    &created,
                    &d_notifications,
                    &d_ids,
                    &d_endpoints,
                    &d_urls,
                    &d_notify_ids,
                    &d_order_keys,
                    &birth_node,
                    &birth_now,
                    &app_fingerprints,
                ],
            )
            .await
            .map_err(backend)?;
        let mut notifications = std::collections::HashSet::new();
        let mut born = HashMap::new();
        let mut stale = false;
        for r in &rows {
            let Some(id) = col::<Option<String>>(r, 0)? else {
                stale = true;
                continue;
            };
            match col::<Option<i64>>(r, 1)? {
                None => {
                    notifications.insert(id);
                }
                Some(seq) => {
                    born.insert(id, seq);
                }
            }
        }
        Ok::<_, StoreError>((notifications, born, stale))
    }
    .await;
    if matches!(inserted, Ok((_, _, true))) {
        return ManyCreated {
            results: Vec::new(),
            born: Born::default(),
            unclaimed: false,
            stale: true,
        };
    }
    let (born, unclaimed) = match &inserted {
        Ok((notifications, born, _)) => {
            let stored = rows
                .iter()
                .filter(|d| notifications.contains(&d.notification.id))
                .map(|d| d.deliveries.len())
                .sum::<usize>();
            let (jobs, unsure) = born_jobs(inner, c, generation, &rows, born).await;
            let born_now = Born {
                jobs,
                generation,
                unsure,
            };
            (born_now, stored > born.len())
        }
        Err(_) => (Born::default(), false),
    };
    let results = decided
        .into_iter()
        .map(|d| {
            let d = d.ok_or(StoreError::NotFound("app"))?;
            match &inserted {
                Err(e) => Err(e.clone()),
                Ok((ids, _, _)) if ids.contains(&d.notification.id) => Ok(CreatedNotification {
                    notification: d.notification,
                    deliveries: d.deliveries,
                    replayed: false,
                }),
                // Deleted since the batch read it.
                Ok(_) => Err(StoreError::NotFound("app")),
            }
        })
        .collect();
    ManyCreated {
        results,
        born,
        unclaimed,
        stale: false,
    }
}

/// The deliveries [`INSERT_NOTIFICATIONS`] claimed at birth (`born`: delivery id to seq), as
/// jobs: their app's and endpoint's contexts from the store's cache (read on `c` when
/// missing). True with them when some could not be made (the app or endpoint is gone, or
/// reading it failed): those stay held by the node, which reads them back.
async fn born_jobs(
    inner: &Inner,
    c: &impl GenericClient,
    generation: u64,
    rows: &[&Decided],
    born: &HashMap<String, i64>,
) -> (Vec<Arc<ClaimedDelivery>>, bool) {
    if born.is_empty() {
        return (Vec::new(), false);
    }
    let mut app_ids = Vec::new();
    let mut endpoint_ids = Vec::new();
    for d in rows {
        for delivery in &d.deliveries {
            if born.contains_key(&delivery.id) {
                app_ids.push(delivery.app_id.as_str());
                endpoint_ids.extend(delivery.endpoint_id.as_deref());
            }
        }
    }
    app_ids.sort_unstable();
    app_ids.dedup();
    endpoint_ids.sort_unstable();
    endpoint_ids.dedup();
    let Ok((apps, endpoints)) = inner
        .contexts
        .resolve(c, &app_ids, &endpoint_ids, generation)
        .await
    else {
        return (Vec::new(), true);
    };
    let mut jobs = Vec::with_capacity(born.len());
    let mut unsure = false;
    for d in rows {
        // Shared by the notification's born deliveries; made only if it has one.
        let mut payload: Option<Arc<str>> = None;
        for (delivery, order_key) in d.deliveries.iter().zip(&d.order_keys) {
            let Some(&seq) = born.get(&delivery.id) else {
                continue;
            };
            let Some(app) = apps.get(&delivery.app_id) else {
                unsure = true;
                continue;
            };
            let endpoint = match &delivery.endpoint_id {
                None => None,
                Some(id) => match endpoints.get(id) {
                    Some(e) => Some(e.clone()),
                    None => {
                        unsure = true;
                        continue;
                    }
                },
            };
            jobs.push(Arc::new(ClaimedDelivery {
                seq,
                id: delivery.id.clone(),
                notify_id: delivery.notify_id.clone(),
                notification_id: d.notification.id.clone(),
                app: app.clone(),
                endpoint,
                url: delivery.url.clone(),
                event_type: d.notification.event_type.clone(),
                payload: payload
                    .get_or_insert_with(|| Arc::from(d.notification.payload.as_str()))
                    .clone(),
                created_at: d.notification.created_at,
                attempts: 0,
                next_at: d.notification.created_at,
                order_key: order_key.clone(),
            }));
        }
    }
    (jobs, unsure)
}

/// Stores a notification in its own statement (outside a group commit).
pub(crate) async fn create_notification_alone(
    inner: &Inner,
    new: NewNotification,
) -> Result<CreatedNotification> {
    let client = inner.client().await?;
    let (app_id, key) = (new.app_id.clone(), new.idempotency_key.clone());
    if let Some(created) = insert_notification(&client, new, None).await? {
        if !created.replayed && !created.deliveries.is_empty() {
            inner.work.signal();
        }
        return Ok(created);
    }
    // Another node stored a notification with the same idempotency key first.
    existing_by_key(&client, &app_id, key.as_deref().unwrap_or_default()).await
}

/// The notification the app stored under this idempotency key, as a replay.
pub(crate) async fn existing_by_key(
    c: &impl GenericClient,
    app_id: &str,
    key: &str,
) -> Result<CreatedNotification> {
    let row = c
        .query_opt(
            "SELECT seq FROM notifications WHERE app_id = $1 AND idempotency_key = $2",
            &[&app_id, &key],
        )
        .await
        .map_err(backend)?
        // Nothing inserted and nothing stored under the key: the app was deleted meanwhile.
        .ok_or(StoreError::NotFound("app"))?;
    existing(c, col(&row, 0)?).await
}

// --- deliveries --------------------------------------------------------------------------

pub(crate) async fn retry_delivery(
    inner: &Inner,
    id: &str,
    now: UnixMillis,
) -> Result<Option<Delivery>> {
    let mut client = inner.client().await?;
    let tx = client.transaction().await.map_err(backend)?;
    let row = tx
        .query_opt(
            "SELECT d.seq, d.status, d.endpoint_id, d.locked_by, COALESCE(e.deleted, FALSE),
                    d.order_key IS NOT NULL AND EXISTS (
                        SELECT 1 FROM deliveries s WHERE s.order_key = d.order_key
                        AND s.status = 'pending' AND s.seq > d.seq),
                    a.deleted_at IS NOT NULL
             FROM deliveries d LEFT JOIN endpoints e ON e.id = d.endpoint_id
                  JOIN apps a ON a.id = d.app_id
             WHERE d.id = $1 FOR UPDATE OF d FOR KEY SHARE OF a",
            &[&id],
        )
        .await
        .map_err(backend)?;
    let Some(row) = row else { return Ok(None) };
    let seq: i64 = col(&row, 0)?;
    let status: String = col(&row, 1)?;
    let endpoint_id: Option<String> = col(&row, 2)?;
    let held_by: Option<String> = col(&row, 3)?;
    let endpoint_deleted: bool = col(&row, 4)?;
    let later_pending: bool = col(&row, 5)?;
    let app_deleted: bool = col(&row, 6)?;
    if status == "canceled" {
        return Err(StoreError::Conflict(
            "the delivery was canceled (its endpoint or app was deleted)".into(),
        ));
    }
    if app_deleted {
        return Err(StoreError::Conflict(
            "the delivery's app was deleted".into(),
        ));
    }
    if endpoint_id.is_some() && endpoint_deleted {
        return Err(StoreError::Conflict(
            "the delivery's endpoint was deleted".into(),
        ));
    }
    if status != "pending" && later_pending {
        return Err(StoreError::Conflict(
            "a later delivery with the same order key is still pending; retry this one after it ends".into(),
        ));
    }
    tx.execute(
        "UPDATE deliveries
         SET status = 'pending', next_at = $2, updated_at = $2, locked_by = NULL
         WHERE seq = $1",
        &[&seq, &now],
    )
    .await
    .map_err(backend)?;
    if let Some(node) = held_by {
        notify_revoked(&tx, &[(seq, node)]).await?;
    }
    notify(&tx, "work").await?;
    let delivery = rows::get_delivery(&tx, id).await?.map(|(_, d)| d);
    tx.commit().await.map_err(backend)?;
    Ok(delivery)
}

/// Puts failed deliveries back to pending in one statement, skipping those whose endpoint
/// was deleted and those a later delivery of the same order key has overtaken (reviving
/// them would break the order).
pub(crate) async fn recover(
    inner: &Inner,
    app_id: &str,
    since: UnixMillis,
    now: UnixMillis,
) -> Result<u64> {
    let client = inner.client().await?;
    let row = client
        .query_one(
            "WITH a AS (SELECT id FROM apps WHERE id = $1 AND deleted_at IS NULL FOR KEY SHARE),
             r AS (
                 UPDATE deliveries SET status = 'pending', next_at = $3, updated_at = $3,
                                       locked_by = NULL
                 WHERE app_id = $1 AND status = 'failed' AND created_at >= $2
                   AND EXISTS (SELECT 1 FROM a)
                   AND (endpoint_id IS NULL OR EXISTS (
                        SELECT 1 FROM endpoints e
                        WHERE e.id = deliveries.endpoint_id AND NOT e.deleted))
                   AND (order_key IS NULL OR NOT EXISTS (
                        SELECT 1 FROM deliveries s WHERE s.order_key = deliveries.order_key
                        AND s.status = 'pending' AND s.seq > deliveries.seq))
                 RETURNING seq)
             SELECT count(*) FROM r",
            &[&app_id, &since, &now],
        )
        .await
        .map_err(backend)?;
    let n: i64 = col(&row, 0)?;
    if n > 0 {
        inner.work.signal();
    }
    Ok(u64::try_from(n).unwrap_or(0))
}

/// `recover` for one endpoint's deliveries; `None` when the app has no such live endpoint
/// (the endpoint row is share-locked, so a concurrent deletion waits for this or follows it).
pub(crate) async fn recover_endpoint(
    inner: &Inner,
    app_id: &str,
    endpoint_id: &str,
    since: UnixMillis,
    now: UnixMillis,
) -> Result<Option<u64>> {
    let client = inner.client().await?;
    let row = client
        .query_one(
            "WITH e AS (SELECT e.id FROM endpoints e JOIN apps a ON a.id = e.app_id
                        WHERE e.id = $2 AND e.app_id = $1 AND NOT e.deleted
                          AND a.deleted_at IS NULL FOR KEY SHARE OF e),
             r AS (
                 UPDATE deliveries SET status = 'pending', next_at = $4, updated_at = $4,
                                       locked_by = NULL
                 WHERE app_id = $1 AND endpoint_id = $2 AND status = 'failed'
                   AND created_at >= $3 AND EXISTS (SELECT 1 FROM e)
                   AND (order_key IS NULL OR NOT EXISTS (
                        SELECT 1 FROM deliveries s WHERE s.order_key = deliveries.order_key
                        AND s.status = 'pending' AND s.seq > deliveries.seq))
                 RETURNING seq)
             SELECT (SELECT count(*) FROM e), (SELECT count(*) FROM r)",
            &[&app_id, &endpoint_id, &since, &now],
        )
        .await
        .map_err(backend)?;
    let found: i64 = col(&row, 0)?;
    let n: i64 = col(&row, 1)?;
    if found == 0 {
        return Ok(None);
    }
    if n > 0 {
        inner.work.signal();
    }
    Ok(Some(u64::try_from(n).unwrap_or(0)))
}

/// Rewrites an existing endpoint row: its settings and its health.
pub(crate) async fn write_endpoint(c: &impl GenericClient, ep: &Endpoint) -> Result<()> {
    let h = &ep.health;
    c.execute(
        "UPDATE endpoints SET url = $2, event_types = $3, retry = $4, ack = $5,
             max_in_flight = $6, ordered = $7, enabled = $8, timeout_ms = $9, updated_at = $10,
             health_state = $11, health_failures = $12, health_failing_since = $13,
             health_last_success_at = $14, health_last_failure_at = $15,
             breaker_open_until = $16, breaker_opened = $17, disabled_reason = $18,
             health_changed_at = $19
         WHERE id = $1",
        &[
            &ep.id,
            &ep.url.as_str(),
            &opt_json(&ep.event_types)?,
            &opt_json(&ep.retry)?,
            &opt_json(&ep.ack)?,
            &int(ep.max_in_flight, "max_in_flight")?,
            &ep.ordered,
            &ep.enabled,
            &ep.timeout_ms.map(|t| int(t, "timeout_ms")).transpose()?,
            &ep.updated_at,
            &h.state.as_str(),
            &(h.consecutive_failures.min(i32::MAX as u32) as i32),
            &h.failing_since,
            &h.last_success_at,
            &h.last_failure_at,
            &h.open_until,
            &(h.times_opened.min(i32::MAX as u32) as i32),
            &h.disabled_reason,
            &h.changed_at,
        ],
    )
    .await
    .map_err(backend)?;
    Ok(())
}

/// Whose pending deliveries [`cancel_pending`] cancels.
#[derive(Clone, Copy)]
enum Pending {
    OfApp,
    OfEndpoint,
}

/// Cancels the pending deliveries of an app or an endpoint being deleted, inside `tx`, and
/// tells the nodes that held some of them to drop them. Answers how many it canceled.
async fn cancel_pending(
    tx: &impl GenericClient,
    of: Pending,
    id: &str,
    now: UnixMillis,
) -> Result<u64> {
    let column = match of {
        Pending::OfApp => "app_id",
        Pending::OfEndpoint => "endpoint_id",
    };
    let canceled = tx
        .query(
            &format!(
                "WITH old AS (
                     SELECT seq, locked_by FROM deliveries
                     WHERE {column} = $1 AND status = 'pending' FOR UPDATE)
                 UPDATE deliveries d
                 SET status = 'canceled', next_at = NULL, updated_at = $2, locked_by = NULL
                 FROM old WHERE d.seq = old.seq
                 RETURNING d.seq, old.locked_by"
            ),
            &[&id, &now],
        )
        .await
        .map_err(backend)?;
    let mut held = Vec::new();
    for row in &canceled {
        if let Some(node) = col::<Option<String>>(row, 1)? {
            held.push((col::<i64>(row, 0)?, node));
        }
    }
    notify_revoked(tx, &held).await?;
    Ok(canceled.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cache of targets never holds more than its bound of endpoints, whatever the
    /// apps it is given: it starts over past the bound, skips an app bigger than the bound,
    /// and counts what it forgets.
    #[test]
    fn the_targets_cache_holds_at_most_its_bound_of_endpoints() {
        let endpoint = endpoint_row(herald_store::conformance::new_endpoint(
            "app_1",
            "https://a.example/hook",
        ));
        let app = |endpoints: usize| {
            Arc::new(AppTargets {
                profile: Profile::StandardWebhooks,
                endpoints: vec![endpoint.clone(); endpoints],
                fingerprint: String::new(),
            })
        };
        let size = |cache: &TargetsCache| cache.kept.lock().expect("lock").size;
        let cache = TargetsCache::default();
        let per_app = TargetsCache::MAX_ENDPOINTS / 4;
        for i in 0..10 {
            let id = format!("app_{i}");
            cache.put(&HashMap::from([(id.clone(), app(per_app))]));
            assert!(size(&cache) <= TargetsCache::MAX_ENDPOINTS, "after {id}");
            assert!(cache.all(&[id.as_str()]).is_some(), "{id} is kept");
        }
        assert!(cache.all(&["app_0"]).is_none(), "the first apps made room");

        cache.put(&HashMap::from([(
            "huge".to_string(),
            app(TargetsCache::MAX_ENDPOINTS),
        )]));
        assert!(cache.all(&["huge"]).is_none(), "bigger than the bound");

        let before = size(&cache);
        cache.forget(&["app_9", "unknown"]);
        assert_eq!(size(&cache), before - (per_app + 1));
        assert!(cache.all(&["app_9"]).is_none());
    }

    #[tokio::test]
    async fn a_batch_of_one_apps_reads_settle_on_their_generic_plans() {
        let store = crate::testing::store().await;
        let app = create_app(
            &store.inner,
            herald_store::conformance::new_app("shop", UnixMillis::new(1_000)),
        )
        .await
        .expect("app");
        let client = store.inner.client().await.expect("client");
        // PostgreSQL plans a prepared statement anew on its first five runs, then keeps
        // the generic plan unless a fresh plan looks cheaper.
        for _ in 0..10 {
            let read = read_apps_targets(&client, &[app.id.as_str()], None)
                .await
                .expect("read");
            assert!(read.contains_key(&app.id));
        }
        for pattern in ["SELECT id, name%", "SELECT id, app_id%"] {
            let (runs, _) = crate::testing::plans(&client, pattern).await;
            assert_eq!(runs, (5, 5), "{pattern}");
        }
    }
}
