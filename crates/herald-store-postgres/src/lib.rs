//! Herald's PostgreSQL driver: several stateless nodes over one database.
//!
//! [`PgStore`] implements the seam's traits ([`Queue`], [`AdminStore`], [`SandboxStore`],
//! [`MetaStore`], [`ApiKeyStore`], [`SourceStore`], [`DashboardStore`]) with the same semantics as the SQLite driver, in these parts:
//! - `connect`: the URL, TLS over rustls, the connection pool;
//! - `schema`: migrations, run at connect under an advisory lock (also [`migrate`] alone);
//! - `rows`: row mapping and the read queries;
//! - `admin`, `sandbox` and `sources`: what the API, the sandbox and the gateway write;
//! - `queue`: the engine's claim-based queue (`FOR UPDATE SKIP LOCKED` claims under
//!   per-endpoint holder rows, a fair share of endpoints per node, node leases,
//!   conditional outcomes);
//! - `ops`: endpoint health, apps' ops targets, metrics counts, retention purges;
//! - `sessions`: the dashboard's sessions and one-time login links;
//! - `hints`: `LISTEN/NOTIFY` wake-ups and the app/endpoint caches they keep coherent.
//!
//! Writes cost a fixed number of round trips, whatever a notification fans out to: the
//! notification and all its deliveries are one multi-row statement; and concurrent
//! notifications and outcomes are group-committed (`batch`).
mod admin;
mod batch;
mod connect;
mod dashboard;
mod hints;
mod ops;
mod queue;
mod rows;
mod sandbox;
mod schema;
mod sessions;
mod sources;
#[cfg(test)]
mod testing;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::Pool;
use herald_protocols::Credentials;

use herald_store::dashboard::*;
use herald_store::health::*;
use herald_store::model::*;
use herald_store::queue::*;
use herald_store::sessions::{NewSession, SessionPrincipal, SessionRecord};
use herald_store::{
    AdminStore, ApiKeyStore, DashboardStore, MetaStore, Result, SandboxStore, SealCensus, Sealer,
    SessionStore, SourceStore, StoreError,
};

use self::connect::Target;
use self::hints::{Contexts, Subscribers, WorkSignal};

/// How long [`MetaStore::ping`] waits for the database before calling it unreachable.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// A Herald store in a PostgreSQL database. Cheap to share (`Arc` it); each instance keeps
/// a connection pool and one listening connection for hints.
pub struct PgStore {
    inner: Arc<Inner>,
    listener: tokio::task::AbortHandle,
}

pub(crate) struct Inner {
    pub(crate) pool: Pool,
    pub(crate) target: Target,
    pub(crate) contexts: Contexts,
    /// What the group commit decides new notifications on, by app (see `admin::TargetsCache`).
    pub(crate) targets: admin::TargetsCache,
    pub(crate) subscribers: Subscribers,
    pub(crate) work: WorkSignal,
    pub(crate) batcher: batch::Batcher,
    /// Claims in a row that found nothing for this store's nodes: `work` hints reach an
    /// idle node less often (see `hints`).
    pub(crate) idle_claims: std::sync::atomic::AtomicU32,
    /// Live nodes on the database, as this store's last peek counted them (1 until then).
    pub(crate) live_nodes: std::sync::atomic::AtomicU32,
    /// The node new deliveries are claimed at birth for while it is alone
    /// (`admin::Birth`): the last registered with `claim_new`, until it leaves.
    pub(crate) birth_node: std::sync::Mutex<Option<NodeId>>,
    /// The health check's own connection (see [`MetaStore::ping`]).
    health: tokio::sync::Mutex<Option<tokio_postgres::Client>>,
}

impl Inner {
    pub(crate) fn birth_node(&self) -> Option<NodeId> {
        self.birth_node.lock().ok().and_then(|b| b.clone())
    }

    pub(crate) fn set_birth_node(&self, node: NodeId) {
        if let Ok(mut b) = self.birth_node.lock() {
            *b = Some(node);
        }
    }

    /// Stops claiming at birth for `node` (a node that leaves); another birth node stays.
    pub(crate) fn forget_birth_node(&self, node: &str) {
        if let Ok(mut b) = self.birth_node.lock() {
            if b.as_deref() == Some(node) {
                *b = None;
            }
        }
    }

    /// Whom a group commit claims new deliveries for at birth, at `now`: the birth node,
    /// while the last peek counted no other live node (see `admin::Birth`).
    pub(crate) fn birth(&self, now: UnixMillis) -> Option<admin::Birth> {
        if self.live_nodes.load(std::sync::atomic::Ordering::Relaxed) > 1 {
            return None;
        }
        self.birth_node().map(|node| admin::Birth { node, now })
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

/// Runs the migrations not yet applied to the database at `url`, alone (`herald migrate`).
pub async fn migrate(url: &str) -> Result<()> {
    let target = Target::parse(url)?;
    let (mut client, connection) = target.connect().await?;
    let driver = tokio::spawn(connection);
    let result = schema::migrate(&mut client).await;
    drop(client);
    let _ = driver.await;
    result
}

impl PgStore {
    /// Connects to `url` (`postgres://user@host:port/db`; `?sslmode=require` for TLS,
    /// verified against the public roots or `&sslrootcert=/path/ca.pem`), runs the
    /// migrations, and starts listening for hints. Must be called inside a Tokio runtime.
    /// Credentials are written in plaintext (see [`PgStore::connect_sealed`]).
    pub async fn connect(url: &str) -> Result<PgStore> {
        PgStore::connect_sealed(url, Sealer::none()).await
    }

    /// [`PgStore::connect`], sealing apps' credentials with `sealer` as they are written and
    /// opening them with it as they are read (see `herald_store::sealing`).
    pub async fn connect_sealed(url: &str, sealer: Sealer) -> Result<PgStore> {
        let target = Target::parse(url)?;
        let pool = target.pool()?;
        {
            let mut client = pool.get().await.map_err(pool_error)?;
            schema::migrate(&mut client).await?;
        }
        let (work, signals) = WorkSignal::new();
        let (batcher, writes) = batch::Batcher::new();
        let inner = Arc::new(Inner {
            pool,
            target,
            contexts: Contexts::with_sealer(sealer),
            targets: admin::TargetsCache::default(),
            subscribers: Subscribers::default(),
            work,
            batcher,
            idle_claims: std::sync::atomic::AtomicU32::new(0),
            live_nodes: std::sync::atomic::AtomicU32::new(1),
            birth_node: std::sync::Mutex::new(None),
            health: tokio::sync::Mutex::new(None),
        });
        batch::start(Arc::downgrade(&inner), writes);
        hints::start_work_signaller(Arc::downgrade(&inner), signals);
        let listener = hints::start(&inner).await?;
        // Connecting is the one place the driver reads the clock: it stamps the internal
        // apps of ops targets set before migration 8, moved now.
        let now = UnixMillis::now();
        ops::upgrade_legacy_ops_targets(&inner, now).await?;
        Ok(PgStore { inner, listener })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.inner.client().await
    }
}

impl Inner {
    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.pool.get().await.map_err(pool_error)
    }
}

/// A PostgreSQL error with the server's message, code and detail when there is one (the
/// bare `Display` of `tokio_postgres::Error` says only "db error").
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{} ({})", db.message(), db.code().code());
            if let Some(detail) = db.detail() {
                s.push_str(": ");
                s.push_str(detail);
            }
            s
        }
        None => e.to_string(),
    }
}

/// A tokio-postgres error as a storage failure: [`describe`]'s line as the context, the
/// error itself as the source.
pub(crate) fn backend(e: tokio_postgres::Error) -> StoreError {
    StoreError::backend(describe(&e), e)
}

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => {
            StoreError::backend(format!("cannot connect: {}", describe(&e)), e)
        }
        deadpool_postgres::PoolError::Closed => StoreError::Closed,
        other => StoreError::backend(format!("no database connection: {other}"), other),
    }
}

/// The name of the constraint a unique or foreign-key violation broke, if that is what `e` is.
pub(crate) fn violated(
    e: &tokio_postgres::Error,
    code: &tokio_postgres::error::SqlState,
) -> Option<String> {
    let db = e.as_db_error()?;
    (db.code() == code).then(|| db.constraint().unwrap_or("").to_string())
}

#[async_trait]
impl AdminStore for PgStore {
    async fn create_app(&self, new: NewApp) -> Result<App> {
        admin::create_app(&self.inner, new).await
    }

    async fn get_app(&self, id: &str) -> Result<Option<App>> {
        rows::get_app(&self.client().await?, &self.inner.contexts.sealer, id).await
    }

    async fn check_credentials(&self) -> Result<SealCensus> {
        rows::check_credentials(&self.client().await?, &self.inner.contexts.sealer).await
    }

    async fn reseal_credentials(&self) -> Result<SealCensus> {
        admin::reseal_credentials(&self.inner).await
    }

    async fn set_app_credentials(&self, id: &str, credentials: Credentials) -> Result<Option<App>> {
        admin::set_app_credentials(&self.inner, id, credentials).await
    }

    async fn create_endpoint(&self, new: NewEndpoint) -> Result<Endpoint> {
        admin::create_endpoint(&self.inner, new).await
    }

    async fn get_endpoint(&self, app_id: &str, id: &str) -> Result<Option<Endpoint>> {
        rows::get_endpoint(&self.client().await?, app_id, id).await
    }

    async fn list_endpoints(&self, app_id: &str, page: ListEndpoints) -> Result<Page<Endpoint>> {
        rows::list_endpoints_page(&self.client().await?, app_id, &page).await
    }

    async fn update_endpoint(
        &self,
        app_id: &str,
        id: &str,
        patch: EndpointPatch,
        now: UnixMillis,
    ) -> Result<Option<Endpoint>> {
        admin::update_endpoint(&self.inner, app_id, id, patch, now).await
    }

    async fn delete_endpoint(&self, app_id: &str, id: &str, now: UnixMillis) -> Result<bool> {
        admin::delete_endpoint(&self.inner, app_id, id, now).await
    }

    async fn create_notification(&self, new: NewNotification) -> Result<CreatedNotification> {
        self.inner.batcher.create(new).await
    }

    async fn get_notification(&self, id: &str) -> Result<Option<NotificationDetail>> {
        rows::get_notification(&self.client().await?, id).await
    }

    async fn list_notifications(
        &self,
        app_id: &str,
        filter: ListNotifications,
    ) -> Result<Page<NotificationSummary>> {
        rows::list_notifications(&self.client().await?, app_id, &filter).await
    }

    async fn get_delivery(&self, id: &str) -> Result<Option<DeliveryDetail>> {
        rows::get_delivery_detail(&self.client().await?, id).await
    }

    async fn list_attempts(&self, id: &str, page: ListAttempts) -> Result<Option<Page<Attempt>>> {
        rows::list_attempts(&self.client().await?, id, &page).await
    }

    async fn retry_delivery(&self, id: &str, now: UnixMillis) -> Result<Option<Delivery>> {
        admin::retry_delivery(&self.inner, id, now).await
    }

    async fn recover(&self, app_id: &str, since: UnixMillis, now: UnixMillis) -> Result<u64> {
        admin::recover(&self.inner, app_id, since, now).await
    }

    async fn list_apps(&self, page: ListApps) -> Result<Page<App>> {
        rows::list_apps(&self.client().await?, &self.inner.contexts.sealer, &page).await
    }

    async fn update_app(&self, id: &str, patch: AppPatch) -> Result<Option<App>> {
        admin::update_app(&self.inner, id, patch).await
    }

    async fn delete_app(&self, id: &str, now: UnixMillis) -> Result<Option<u64>> {
        admin::delete_app(&self.inner, id, now).await
    }

    async fn recover_endpoint(
        &self,
        app_id: &str,
        endpoint_id: &str,
        since: UnixMillis,
        now: UnixMillis,
    ) -> Result<Option<u64>> {
        admin::recover_endpoint(&self.inner, app_id, endpoint_id, since, now).await
    }
}

#[async_trait]
impl SessionStore for PgStore {
    async fn create_session(&self, new: NewSession) -> Result<bool> {
        sessions::create(&self.inner, new, false).await
    }

    async fn find_session(
        &self,
        id_sha256: &str,
        now: UnixMillis,
    ) -> Result<Option<SessionRecord>> {
        sessions::find(&self.client().await?, id_sha256, now).await
    }

    async fn delete_session(&self, id_sha256: &str) -> Result<bool> {
        sessions::delete(&self.inner, id_sha256).await
    }

    async fn create_login_link(&self, new: NewSession) -> Result<bool> {
        sessions::create(&self.inner, new, true).await
    }

    async fn consume_login_link(
        &self,
        id_sha256: &str,
        now: UnixMillis,
    ) -> Result<Option<SessionPrincipal>> {
        sessions::consume_link(&self.inner, id_sha256, now).await
    }

    async fn purge_sessions(&self, now: UnixMillis) -> Result<u64> {
        sessions::purge(&self.inner, now).await
    }
}

#[async_trait]
impl ApiKeyStore for PgStore {
    async fn create_api_key(&self, new: NewApiKey) -> Result<ApiKey> {
        admin::create_api_key(&self.inner, new).await
    }

    async fn list_api_keys(&self, app_id: &str) -> Result<Vec<ApiKey>> {
        rows::list_api_keys(&self.client().await?, app_id).await
    }

    async fn delete_api_key(&self, app_id: &str, id: &str) -> Result<bool> {
        admin::delete_api_key(&self.inner, app_id, id).await
    }

    async fn find_api_key(&self, key_sha256: &str) -> Result<Option<ApiKey>> {
        rows::find_api_key(&self.client().await?, key_sha256).await
    }

    async fn touch_api_key(&self, id: &str, now: UnixMillis) -> Result<()> {
        admin::touch_api_key(&self.inner, id, now).await
    }
}

#[async_trait]
impl SourceStore for PgStore {
    async fn create_source(&self, new: NewSource) -> Result<Source> {
        sources::create(&self.inner, new).await
    }

    async fn get_source(&self, id: &str) -> Result<Option<Source>> {
        sources::get(&self.client().await?, &self.inner.contexts.sealer, id).await
    }

    async fn list_sources(&self, page: ListSources) -> Result<Page<Source>> {
        sources::list(&self.client().await?, &self.inner.contexts.sealer, &page).await
    }

    async fn delete_source(&self, id: &str, now: UnixMillis) -> Result<bool> {
        sources::delete(&self.inner, id, now).await
    }
}

#[async_trait]
impl DashboardStore for PgStore {
    async fn list_app_summaries(&self, page: ListPage) -> Result<Page<AppSummary>> {
        dashboard::report(&self.inner, move |tx| {
            Box::pin(async move { dashboard::list_apps(tx, &page).await })
        })
        .await
    }

    async fn activity(&self, since: UnixMillis, until: UnixMillis) -> Result<Vec<MinuteActivity>> {
        dashboard::report(&self.inner, move |tx| {
            Box::pin(dashboard::activity(tx, since, until))
        })
        .await
    }

    async fn queue_counts(&self, now: UnixMillis) -> Result<QueueCounts> {
        dashboard::report(&self.inner, move |tx| {
            Box::pin(dashboard::queue_counts(tx, now))
        })
        .await
    }

    async fn troubled_endpoints(
        &self,
        since: UnixMillis,
        limit: u32,
    ) -> Result<Vec<EndpointTrouble>> {
        dashboard::report(&self.inner, move |tx| {
            Box::pin(dashboard::troubled_endpoints(tx, since, limit))
        })
        .await
    }

    async fn endpoint_health(&self, endpoint_id: &str) -> Result<EndpointRecent> {
        let id = endpoint_id.to_string();
        dashboard::report(&self.inner, move |tx| {
            Box::pin(async move { dashboard::endpoint_health(tx, &id).await })
        })
        .await
    }

    async fn search_notifications(
        &self,
        search: SearchNotifications,
    ) -> Result<Page<NotificationSummary>> {
        dashboard::report(&self.inner, move |tx| {
            Box::pin(async move { dashboard::search_notifications(tx, &search).await })
        })
        .await
    }

    async fn list_sandbox_payments(&self, page: ListPage) -> Result<Page<SandboxPayment>> {
        dashboard::report(&self.inner, move |tx| {
            Box::pin(async move { dashboard::list_sandbox_payments(tx, &page).await })
        })
        .await
    }
}

#[async_trait]
impl SandboxStore for PgStore {
    async fn write_sandbox_payment(&self, write: SandboxWrite) -> Result<SandboxWritten> {
        sandbox::write(&self.inner, write).await
    }

    async fn get_sandbox_payment(&self, id: &str) -> Result<Option<SandboxPayment>> {
        sandbox::get(&self.client().await?, id).await
    }

    async fn find_sandbox_payment(
        &self,
        app_id: &str,
        out_trade_no: &str,
    ) -> Result<Option<SandboxPayment>> {
        sandbox::find(&self.client().await?, app_id, out_trade_no).await
    }

    async fn sandbox_deadlines(&self, limit: u32) -> Result<Vec<SandboxPayment>> {
        sandbox::deadlines(&self.client().await?, limit).await
    }
}

#[async_trait]
impl MetaStore for PgStore {
    /// `SELECT 1` on a connection of its own, so that a pool busy with work does not make
    /// a reachable database look unhealthy. A connection that failed or did not answer in
    /// time is dropped, and the next ping connects afresh.
    async fn ping(&self) -> Result<()> {
        let deadline = tokio::time::Instant::now() + PING_TIMEOUT;
        let late = || {
            StoreError::backend_msg(format!(
                "the database did not answer within {PING_TIMEOUT:?}"
            ))
        };
        if self.inner.pool.is_closed() {
            return Err(StoreError::Closed);
        }
        let mut slot = tokio::time::timeout_at(deadline, self.inner.health.lock())
            .await
            .map_err(|_| late())?;
        let client = match slot.take() {
            Some(c) if !c.is_closed() => c,
            _ => {
                let (client, connection) = tokio::time::timeout_at(
                    deadline,
                    self.inner.target.connect_as("herald-health"),
                )
                .await
                .map_err(|_| late())??;
                tokio::spawn(connection);
                client
            }
        };
        tokio::time::timeout_at(deadline, client.simple_query("SELECT 1"))
            .await
            .map_err(|_| late())?
            .map_err(backend)?;
        *slot = Some(client);
        Ok(())
    }

    /// Commits what was queued for a group commit, then stops listening for hints, drops
    /// the health check's connection and closes the pool: later calls fail with
    /// [`StoreError::Closed`], and the connections go back to the server (nothing is held
    /// across nodes that a close must let go: a node's claims end with its lease, or with
    /// the engine's releases before it closes the store).
    async fn close(&self) {
        self.inner.batcher.close().await;
        self.listener.abort();
        self.inner.health.lock().await.take();
        self.inner.pool.close();
    }

    async fn get_meta(&self, key: &str) -> Result<Option<String>> {
        rows::get_meta(&self.client().await?, key).await
    }

    async fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO meta (key, value) VALUES ($1, $2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                &[&key, &value],
            )
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn set_meta_if_absent(&self, key: &str, value: &str) -> Result<bool> {
        let client = self.client().await?;
        let n = client
            .execute(
                "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
                &[&key, &value],
            )
            .await
            .map_err(backend)?;
        Ok(n == 1)
    }
}

#[async_trait]
impl Queue for PgStore {
    async fn register_node(&self, params: LeaseParams, claim_new: bool) -> Result<()> {
        queue::register_node(&self.inner, params, claim_new).await
    }

    async fn renew_lease(&self, params: LeaseParams) -> Result<Lease> {
        queue::renew_lease(&self.inner, params).await
    }

    async fn leave(&self, node: NodeId) -> Result<bool> {
        queue::leave(&self.inner, &node).await
    }

    async fn rescue(&self, now: UnixMillis) -> Result<u64> {
        queue::rescue(&self.inner, now).await
    }

    async fn claim(&self, params: ClaimParams) -> Result<Vec<Arc<ClaimedDelivery>>> {
        queue::claim(&self.inner, params).await
    }

    async fn complete(&self, params: CompleteParams) -> Result<Completed> {
        if queue::frees_successor(&params) {
            // Claims the successor under its endpoint's holder row: not inside a group commit.
            queue::complete(&self.inner, params).await
        } else {
            self.inner.batcher.complete(params).await
        }
    }

    async fn release(&self, params: ReleaseParams) -> Result<Vec<i64>> {
        queue::release(&self.inner, params).await
    }

    async fn held(&self, params: HeldParams) -> Result<Vec<Arc<ClaimedDelivery>>> {
        queue::held(&self.inner, params).await
    }

    fn hints(&self, node: NodeId) -> HintReceiver {
        self.inner.subscribers.subscribe(node)
    }

    async fn record_health(&self, report: HealthReport) -> Result<Option<HealthRecorded>> {
        ops::record_health(&self.inner, report).await
    }
}

#[async_trait]
impl OpsStore for PgStore {
    async fn set_app_ops(
        &self,
        app_id: &str,
        target: Option<OpsTarget>,
        now: UnixMillis,
    ) -> Result<bool> {
        ops::set_app_ops(&self.inner, app_id, target, now).await
    }

    async fn get_app_ops(&self, app_id: &str) -> Result<Option<OpsTarget>> {
        ops::get_app_ops(&self.inner, app_id).await
    }

    async fn pending_count(&self) -> Result<u64> {
        ops::pending_count(&self.inner).await
    }

    async fn breaker_counts(&self) -> Result<Vec<(BreakerState, u64)>> {
        ops::breaker_counts(&self.inner).await
    }

    async fn purge_finished(&self, params: PurgeParams) -> Result<Purged> {
        ops::purge_finished(&self.inner, params).await
    }
}
