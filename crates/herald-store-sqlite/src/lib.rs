//! The embedded SQLite driver: WAL mode, migrations embedded in the binary, one writer
//! thread that group-commits (see `writer`), and a small pool of read-only connections for
//! the API's queries.
//!
//! One process owns a database file: opening it takes an exclusive lock on `<file>.lock`
//! (a second Herald on the same file is refused with a clear error), and releases every
//! claim a previous process left behind, so a restart after `kill -9` resumes at once
//! instead of waiting for the dead process's lease to expire. Hints are exact: they go from
//! the writer to the engine in process, after each commit.
mod dashboard;
mod rows;
mod sandbox;
mod schema;
mod sessions;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use herald_protocols::Credentials;
use rusqlite::{Connection, OpenFlags};
use tokio::sync::{mpsc, oneshot};

use self::schema::backend;
use self::writer::{Op, Table, Writer};
use herald_store::dashboard::*;
use herald_store::health::*;
use herald_store::model::*;
use herald_store::queue::*;
use herald_store::sessions::{NewSession, SessionPrincipal, SessionRecord};
use herald_store::{
    AdminStore, ApiKeyStore, DashboardStore, MetaStore, Result, SandboxStore, SealCensus, Sealer,
    SessionStore, SourceStore, StoreError,
};

/// Operations queued for the writer. When the queue is full, callers (API requests, attempt
/// tasks) wait: that is the backpressure that keeps memory bounded under overload.
const WRITE_QUEUE: usize = 16 * 1024;
/// Read-only connections kept open for queries.
const READERS: usize = 4;

/// How durable a commit is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Durability {
    /// fsync on every commit (`synchronous = FULL`): nothing acknowledged is lost even on
    /// power failure. The default.
    #[default]
    Full,
    /// `synchronous = NORMAL` in WAL mode: survives a process crash, may lose the last
    /// commits on power failure. For benchmarks and tests.
    Normal,
}

/// A Herald store in one SQLite file.
pub struct SqliteStore {
    ops: mpsc::Sender<Op>,
    hints: Arc<HintHub>,
    readers: Arc<Readers>,
    /// Opens the credentials the readers read (the writer has its own clone).
    sealer: Sealer,
    /// The exclusive lock on `<file>.lock`, held until the store is closed or dropped.
    lock: Mutex<Option<std::fs::File>>,
}

/// The engines subscribed to hints. Unbounded on purpose: the writer must never block on an
/// engine (engines wait on the writer's queue); the volume is bounded by the commit rate.
#[derive(Default)]
pub(crate) struct HintHub {
    subscribers: Mutex<Vec<mpsc::UnboundedSender<Hint>>>,
}

impl HintHub {
    fn subscribe(&self) -> HintReceiver {
        let (tx, rx) = mpsc::unbounded_channel();
        if let Ok(mut subs) = self.subscribers.lock() {
            subs.push(tx);
        }
        rx
    }

    pub(crate) fn send_all(&self, hints: Vec<Hint>) {
        if hints.is_empty() {
            return;
        }
        let Ok(mut subs) = self.subscribers.lock() else {
            return;
        };
        subs.retain(|s| !s.is_closed());
        if let [only] = subs.as_slice() {
            for h in hints {
                let _ = only.send(h);
            }
            return;
        }
        for h in hints {
            for s in subs.iter() {
                let _ = s.send(h.clone());
            }
        }
    }
}

struct Readers {
    path: PathBuf,
    pool: Mutex<Vec<Connection>>,
}

impl Readers {
    fn open(&self) -> Result<Connection> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(backend)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(backend)?;
        Ok(conn)
    }

    async fn read<T, F>(self: &Arc<Self>, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let pooled = this.pool.lock().ok().and_then(|mut p| p.pop());
            let conn = match pooled {
                Some(c) => c,
                None => this.open()?,
            };
            let out = f(&conn);
            if let Ok(mut p) = this.pool.lock() {
                if p.len() < READERS {
                    p.push(conn);
                }
            }
            out
        })
        .await
        .map_err(|e| StoreError::backend(format!("reader task failed: {e}"), e))?
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and runs its migrations.
    /// Must be called inside a Tokio runtime. Credentials are written in plaintext (see
    /// [`SqliteStore::open_sealed`]).
    pub fn open(path: impl AsRef<Path>, durability: Durability) -> Result<SqliteStore> {
        SqliteStore::open_sealed(path, durability, Sealer::none())
    }

    /// [`SqliteStore::open`], sealing apps' credentials with `sealer` as they are written and
    /// opening them with it as they are read (see `herald_store::sealing`).
    pub fn open_sealed(
        path: impl AsRef<Path>,
        durability: Durability,
        sealer: Sealer,
    ) -> Result<SqliteStore> {
        let path = path.as_ref().to_path_buf();
        let lock = lock_file(&path)?;
        let mut conn = Connection::open(&path).map_err(backend)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(backend)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(backend)?;
        conn.pragma_update(
            None,
            "synchronous",
            match durability {
                Durability::Full => "FULL",
                Durability::Normal => "NORMAL",
            },
        )
        .map_err(backend)?;
        // Foreign keys are off on purpose (SQLite's default, made explicit): the writer is the
        // only code that inserts, and each operation inserts a row only after inserting or
        // reading its parent in the same transaction, so the checks could never fail; enforcing
        // them would add a parent-index probe to every delivery and attempt insert on the hot
        // path. The schema's REFERENCES clauses document the relations (PostgreSQL, where
        // several nodes write, enforces those its hot path does not already guarantee; see
        // its migration 10).
        conn.pragma_update(None, "foreign_keys", "OFF")
            .map_err(backend)?;
        // Most operations run in a savepoint (not the per-notification ones, see the writer's
        // `needs_savepoint`); keep their sub-journals in memory instead of a temporary file
        // (otherwise every savepoint costs write syscalls).
        conn.pragma_update(None, "temp_store", "MEMORY")
            .map_err(backend)?;
        // 32 MiB of page cache for the writer (the default is 2 MiB): the hot pages of the
        // due index and the newest rows stay cached across batches.
        conn.pragma_update(None, "cache_size", -32_768)
            .map_err(backend)?;
        conn.set_prepared_statement_cache_capacity(64);
        schema::migrate(&mut conn)?;
        // This process owns the file now: whatever an earlier process held is free again.
        conn.execute_batch(
            "UPDATE deliveries SET locked_by = NULL WHERE locked_by IS NOT NULL;
             DELETE FROM nodes;",
        )
        .map_err(backend)?;

        let (ops_tx, ops_rx) = mpsc::channel(WRITE_QUEUE);
        let hints = Arc::new(HintHub::default());
        let mut writer = Writer::new(conn, hints.clone(), sealer.clone());
        // Opening is the one place a driver reads the clock: it stamps the internal apps of
        // ops targets set before migration 8, moved now.
        let now = UnixMillis::now();
        writer.upgrade_legacy_ops_targets(now)?;
        std::thread::Builder::new()
            .name("herald-sqlite-writer".into())
            .spawn(move || writer.run(ops_rx))
            .map_err(|e| StoreError::backend(format!("cannot start the writer thread: {e}"), e))?;
        Ok(SqliteStore {
            ops: ops_tx,
            hints,
            readers: Arc::new(Readers {
                path,
                pool: Mutex::new(Vec::new()),
            }),
            sealer,
            lock: Mutex::new(Some(lock)),
        })
    }

    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T>>) -> Op) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.ops
            .send(make(tx))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}

#[async_trait]
impl Queue for SqliteStore {
    async fn register_node(&self, params: LeaseParams, claim_new: bool) -> Result<()> {
        self.call(|r| Op::RegisterNode(params, claim_new, r)).await
    }

    async fn renew_lease(&self, params: LeaseParams) -> Result<Lease> {
        self.call(|r| Op::RenewLease(params, r)).await
    }

    async fn leave(&self, node: NodeId) -> Result<bool> {
        self.call(|r| Op::Leave(node, r)).await
    }

    async fn rescue(&self, now: UnixMillis) -> Result<u64> {
        self.call(|r| Op::Rescue(now, r)).await
    }

    async fn claim(&self, params: ClaimParams) -> Result<Vec<Arc<ClaimedDelivery>>> {
        self.call(|r| Op::Claim(params, r)).await
    }

    async fn complete(&self, params: CompleteParams) -> Result<Completed> {
        self.call(|r| Op::Complete(Box::new(params), r)).await
    }

    async fn release(&self, params: ReleaseParams) -> Result<Vec<i64>> {
        self.call(|r| Op::Release(params, r)).await
    }

    async fn held(&self, params: HeldParams) -> Result<Vec<Arc<ClaimedDelivery>>> {
        self.call(|r| Op::Held(params, r)).await
    }

    fn hints(&self, _node: NodeId) -> HintReceiver {
        self.hints.subscribe()
    }

    async fn record_health(&self, report: HealthReport) -> Result<Option<HealthRecorded>> {
        self.call(|r| Op::RecordHealth(report, r)).await
    }
}

#[async_trait]
impl OpsStore for SqliteStore {
    async fn set_app_ops(
        &self,
        app_id: &str,
        ops: Option<OpsTarget>,
        now: UnixMillis,
    ) -> Result<bool> {
        let app_id = app_id.to_string();
        self.call(|r| Op::SetAppOps(app_id, ops, now, r)).await
    }

    async fn get_app_ops(&self, app_id: &str) -> Result<Option<OpsTarget>> {
        let app_id = app_id.to_string();
        let sealer = self.sealer.clone();
        self.readers
            .read(move |c| rows::get_app_ops(c, &sealer, &app_id))
            .await?
            .ok_or(StoreError::NotFound("app"))
    }

    async fn pending_count(&self) -> Result<u64> {
        self.readers.read(rows::pending_count).await
    }

    async fn breaker_counts(&self) -> Result<Vec<(BreakerState, u64)>> {
        self.readers.read(rows::breaker_counts).await
    }

    async fn purge_finished(&self, params: PurgeParams) -> Result<Purged> {
        self.call(|r| Op::Purge(params, r)).await
    }
}

#[async_trait]
impl AdminStore for SqliteStore {
    async fn create_app(&self, new: NewApp) -> Result<App> {
        self.call(|r| Op::CreateApp(new, r)).await
    }

    async fn get_app(&self, id: &str) -> Result<Option<App>> {
        let id = id.to_string();
        let sealer = self.sealer.clone();
        self.readers
            .read(move |c| rows::get_app(c, &sealer, &id))
            .await
    }

    async fn check_credentials(&self) -> Result<SealCensus> {
        let sealer = self.sealer.clone();
        self.readers
            .read(move |c| rows::check_credentials(c, &sealer))
            .await
    }

    async fn reseal_credentials(&self) -> Result<SealCensus> {
        self.call(Op::ResealCredentials).await
    }

    async fn set_app_credentials(&self, id: &str, credentials: Credentials) -> Result<Option<App>> {
        let id = id.to_string();
        self.call(|r| Op::SetCredentials(id, credentials, r)).await
    }

    async fn create_endpoint(&self, new: NewEndpoint) -> Result<Endpoint> {
        self.call(|r| Op::CreateEndpoint(new, r)).await
    }

    async fn get_endpoint(&self, app_id: &str, id: &str) -> Result<Option<Endpoint>> {
        let (app_id, id) = (app_id.to_string(), id.to_string());
        self.readers
            .read(move |c| rows::get_endpoint(c, &app_id, &id))
            .await
    }

    async fn list_endpoints(&self, app_id: &str, page: ListEndpoints) -> Result<Page<Endpoint>> {
        let app_id = app_id.to_string();
        self.readers
            .read(move |c| rows::list_endpoints_page(c, &app_id, &page))
            .await
    }

    async fn update_endpoint(
        &self,
        app_id: &str,
        id: &str,
        patch: EndpointPatch,
        now: UnixMillis,
    ) -> Result<Option<Endpoint>> {
        let (app_id, id) = (app_id.to_string(), id.to_string());
        self.call(|reply| Op::UpdateEndpoint {
            app_id,
            id,
            patch,
            now,
            reply,
        })
        .await
    }

    async fn delete_endpoint(&self, app_id: &str, id: &str, now: UnixMillis) -> Result<bool> {
        let (app_id, id) = (app_id.to_string(), id.to_string());
        self.call(|reply| Op::DeleteEndpoint {
            app_id,
            id,
            now,
            reply,
        })
        .await
    }

    async fn create_notification(&self, new: NewNotification) -> Result<CreatedNotification> {
        self.call(|r| Op::CreateNotification(new, r)).await
    }

    async fn get_notification(&self, id: &str) -> Result<Option<NotificationDetail>> {
        let id = id.to_string();
        self.readers
            .read(move |c| rows::get_notification(c, &id))
            .await
    }

    async fn list_notifications(
        &self,
        app_id: &str,
        filter: ListNotifications,
    ) -> Result<Page<NotificationSummary>> {
        let app_id = app_id.to_string();
        self.readers
            .read(move |c| rows::list_notifications(c, &app_id, &filter))
            .await
    }

    async fn get_delivery(&self, id: &str) -> Result<Option<DeliveryDetail>> {
        let id = id.to_string();
        self.readers
            .read(move |c| rows::get_delivery_detail(c, &id))
            .await
    }

    async fn list_attempts(&self, id: &str, page: ListAttempts) -> Result<Option<Page<Attempt>>> {
        let id = id.to_string();
        self.readers
            .read(move |c| rows::list_attempts(c, &id, &page))
            .await
    }

    async fn retry_delivery(&self, id: &str, now: UnixMillis) -> Result<Option<Delivery>> {
        let id = id.to_string();
        self.call(|reply| Op::RetryDelivery { id, now, reply })
            .await
    }

    async fn recover(&self, app_id: &str, since: UnixMillis, now: UnixMillis) -> Result<u64> {
        let app_id = app_id.to_string();
        self.call(|reply| Op::Recover {
            app_id,
            since,
            now,
            reply,
        })
        .await
    }

    async fn list_apps(&self, page: ListApps) -> Result<Page<App>> {
        let sealer = self.sealer.clone();
        self.readers
            .read(move |c| rows::list_apps(c, &sealer, &page))
            .await
    }

    async fn update_app(&self, id: &str, patch: AppPatch) -> Result<Option<App>> {
        let id = id.to_string();
        self.call(|r| Op::UpdateApp(id, patch, r)).await
    }

    async fn delete_app(&self, id: &str, now: UnixMillis) -> Result<Option<u64>> {
        let id = id.to_string();
        self.call(|r| Op::DeleteApp(id, now, r)).await
    }

    async fn recover_endpoint(
        &self,
        app_id: &str,
        endpoint_id: &str,
        since: UnixMillis,
        now: UnixMillis,
    ) -> Result<Option<u64>> {
        let (app_id, endpoint_id) = (app_id.to_string(), endpoint_id.to_string());
        self.call(|reply| Op::RecoverEndpoint {
            app_id,
            endpoint_id,
            since,
            now,
            reply,
        })
        .await
    }
}

#[async_trait]
impl SessionStore for SqliteStore {
    async fn create_session(&self, new: NewSession) -> Result<bool> {
        self.call(|r| Op::CreateSession(Table::Sessions, new, r))
            .await
    }

    async fn find_session(
        &self,
        id_sha256: &str,
        now: UnixMillis,
    ) -> Result<Option<SessionRecord>> {
        let id = id_sha256.to_string();
        self.readers
            .read(move |c| sessions::find_session(c, &id, now))
            .await
    }

    async fn delete_session(&self, id_sha256: &str) -> Result<bool> {
        let id = id_sha256.to_string();
        self.call(|r| Op::DeleteSession(id, r)).await
    }

    async fn create_login_link(&self, new: NewSession) -> Result<bool> {
        self.call(|r| Op::CreateSession(Table::Links, new, r)).await
    }

    async fn consume_login_link(
        &self,
        id_sha256: &str,
        now: UnixMillis,
    ) -> Result<Option<SessionPrincipal>> {
        let id = id_sha256.to_string();
        self.call(|r| Op::ConsumeLoginLink(id, now, r)).await
    }

    async fn purge_sessions(&self, now: UnixMillis) -> Result<u64> {
        self.call(|r| Op::PurgeSessions(now, r)).await
    }
}

#[async_trait]
impl ApiKeyStore for SqliteStore {
    async fn create_api_key(&self, new: NewApiKey) -> Result<ApiKey> {
        self.call(|r| Op::CreateApiKey(new, r)).await
    }

    async fn list_api_keys(&self, app_id: &str) -> Result<Vec<ApiKey>> {
        let app_id = app_id.to_string();
        self.readers
            .read(move |c| rows::list_api_keys(c, &app_id))
            .await
    }

    async fn delete_api_key(&self, app_id: &str, id: &str) -> Result<bool> {
        let (app_id, id) = (app_id.to_string(), id.to_string());
        self.call(|r| Op::DeleteApiKey(app_id, id, r)).await
    }

    async fn find_api_key(&self, key_sha256: &str) -> Result<Option<ApiKey>> {
        let hash = key_sha256.to_string();
        self.readers
            .read(move |c| rows::find_api_key(c, &hash))
            .await
    }

    async fn touch_api_key(&self, id: &str, now: UnixMillis) -> Result<()> {
        let id = id.to_string();
        self.call(|r| Op::TouchApiKey(id, now, r)).await
    }
}

#[async_trait]
impl SourceStore for SqliteStore {
    async fn create_source(&self, new: NewSource) -> Result<Source> {
        self.call(|r| Op::CreateSource(Box::new(new), r)).await
    }

    async fn get_source(&self, id: &str) -> Result<Option<Source>> {
        let (sealer, id) = (self.sealer.clone(), id.to_string());
        self.readers
            .read(move |c| rows::get_source(c, &sealer, &id))
            .await
    }

    async fn list_sources(&self, page: ListSources) -> Result<Page<Source>> {
        let sealer = self.sealer.clone();
        self.readers
            .read(move |c| rows::list_sources_page(c, &sealer, &page))
            .await
    }

    async fn delete_source(&self, id: &str, now: UnixMillis) -> Result<bool> {
        let id = id.to_string();
        self.call(|reply| Op::DeleteSource { id, now, reply }).await
    }
}

#[async_trait]
impl DashboardStore for SqliteStore {
    async fn list_app_summaries(&self, page: ListPage) -> Result<Page<AppSummary>> {
        self.readers
            .read(move |c| dashboard::list_apps(c, &page))
            .await
    }

    async fn activity(&self, since: UnixMillis, until: UnixMillis) -> Result<Vec<MinuteActivity>> {
        self.readers
            .read(move |c| dashboard::activity(c, since, until))
            .await
    }

    async fn queue_counts(&self, now: UnixMillis) -> Result<QueueCounts> {
        self.readers
            .read(move |c| dashboard::queue_counts(c, now))
            .await
    }

    async fn troubled_endpoints(
        &self,
        since: UnixMillis,
        limit: u32,
    ) -> Result<Vec<EndpointTrouble>> {
        self.readers
            .read(move |c| dashboard::troubled_endpoints(c, since, limit))
            .await
    }

    async fn endpoint_health(&self, endpoint_id: &str) -> Result<EndpointRecent> {
        let id = endpoint_id.to_string();
        self.readers
            .read(move |c| dashboard::endpoint_health(c, &id))
            .await
    }

    async fn search_notifications(
        &self,
        search: SearchNotifications,
    ) -> Result<Page<NotificationSummary>> {
        self.readers
            .read(move |c| dashboard::search_notifications(c, &search))
            .await
    }

    async fn list_sandbox_payments(&self, page: ListPage) -> Result<Page<SandboxPayment>> {
        self.readers
            .read(move |c| dashboard::list_sandbox_payments(c, &page))
            .await
    }
}

#[async_trait]
impl SandboxStore for SqliteStore {
    async fn write_sandbox_payment(&self, write: SandboxWrite) -> Result<SandboxWritten> {
        self.call(|r| Op::WriteSandbox(write, r)).await
    }

    async fn get_sandbox_payment(&self, id: &str) -> Result<Option<SandboxPayment>> {
        let id = id.to_string();
        self.readers.read(move |c| sandbox::get(c, &id)).await
    }

    async fn find_sandbox_payment(
        &self,
        app_id: &str,
        out_trade_no: &str,
    ) -> Result<Option<SandboxPayment>> {
        let (app_id, out_trade_no) = (app_id.to_string(), out_trade_no.to_string());
        self.readers
            .read(move |c| sandbox::find(c, &app_id, &out_trade_no))
            .await
    }

    async fn sandbox_deadlines(&self, limit: u32) -> Result<Vec<SandboxPayment>> {
        self.readers
            .read(move |c| sandbox::deadlines(c, limit))
            .await
    }
}

#[async_trait]
impl MetaStore for SqliteStore {
    async fn ping(&self) -> Result<()> {
        self.readers
            .read(|c| {
                c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))
                    .map(|_| ())
                    .map_err(backend)
            })
            .await
    }

    async fn close(&self) {
        // The writer commits what it has, answers, and stops; everything queued later fails.
        let _ = self.call(Op::Close).await;
        if let Ok(mut lock) = self.lock.lock() {
            lock.take();
        }
    }

    async fn get_meta(&self, key: &str) -> Result<Option<String>> {
        let key = key.to_string();
        self.readers.read(move |c| rows::get_meta(c, &key)).await
    }

    async fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        let (k, v) = (key.to_string(), value.to_string());
        self.call(|r| Op::SetMeta(k, v, r)).await
    }

    async fn set_meta_if_absent(&self, key: &str, value: &str) -> Result<bool> {
        let (k, v) = (key.to_string(), value.to_string());
        self.call(|r| Op::SetMetaIfAbsent(k, v, r)).await
    }
}

/// How long opening waits for an earlier owner of the file to let go (a process that is
/// exiting, or a store of this process still being dropped) before refusing.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Takes the exclusive lock that makes one process the owner of the database at `path`.
fn lock_file(path: &Path) -> Result<std::fs::File> {
    let mut name = path.as_os_str().to_os_string();
    name.push(".lock");
    let lock_path = PathBuf::from(name);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| {
            StoreError::backend(
                format!("cannot open the lock file {}: {e}", lock_path.display()),
                e,
            )
        })?;
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match file.try_lock() {
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => break lock_result(file, other, path, &lock_path),
        }
    }
}

fn lock_result(
    file: std::fs::File,
    result: std::result::Result<(), std::fs::TryLockError>,
    path: &Path,
    lock_path: &Path,
) -> Result<std::fs::File> {
    match result {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::backend_msg(format!(
            "another Herald process is using {} (its lock {} is held); one process owns an SQLite database, use PostgreSQL for several nodes",
            path.display(),
            lock_path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(StoreError::backend(
            format!("cannot lock {}: {e}", lock_path.display()),
            e,
        )),
    }
}
