//! The embedded SQLite driver: WAL mode, migrations embedded in the binary, one writer
//! thread that group-commits (see [`writer`]), and a small pool of read-only connections
//! for the API's queries.
mod rows;
mod sandbox;
mod schema;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use herald_protocols::Credentials;
use rusqlite::{Connection, OpenFlags};
use tokio::sync::{mpsc, oneshot};

use self::schema::backend;
use self::writer::{Op, Writer};
use herald_store::model::*;
use herald_store::{EventReceiver, Result, Store, StoreError};

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
    events: Mutex<Option<EventReceiver>>,
    readers: Arc<Readers>,
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
        .map_err(|e| StoreError::Backend(format!("reader task failed: {e}")))?
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and runs its migrations.
    /// Must be called inside a Tokio runtime.
    pub fn open(path: impl AsRef<Path>, durability: Durability) -> Result<SqliteStore> {
        let path = path.as_ref().to_path_buf();
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
        conn.pragma_update(None, "foreign_keys", "OFF")
            .map_err(backend)?;
        // Each operation runs in a savepoint; keep their sub-journals in memory instead of a
        // temporary file (otherwise every savepoint costs write syscalls).
        conn.pragma_update(None, "temp_store", "MEMORY")
            .map_err(backend)?;
        // 32 MiB of page cache for the writer (the default is 2 MiB): the hot pages of the
        // due index and the newest rows stay cached across batches.
        conn.pragma_update(None, "cache_size", -32_768)
            .map_err(backend)?;
        conn.set_prepared_statement_cache_capacity(64);
        schema::migrate(&mut conn)?;

        let (ops_tx, ops_rx) = mpsc::channel(WRITE_QUEUE);
        // Unbounded on purpose: the writer must never block on the engine (the engine itself
        // waits on the writer's queue). Its volume is bounded by the commit rate, and the
        // engine's handling of an event is far cheaper than the commit that produced it.
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let writer = Writer::new(conn, ev_tx);
        std::thread::Builder::new()
            .name("herald-sqlite-writer".into())
            .spawn(move || writer.run(ops_rx))
            .map_err(|e| StoreError::Backend(format!("cannot start the writer thread: {e}")))?;
        Ok(SqliteStore {
            ops: ops_tx,
            events: Mutex::new(Some(ev_rx)),
            readers: Arc::new(Readers {
                path,
                pool: Mutex::new(Vec::new()),
            }),
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
impl Store for SqliteStore {
    fn take_events(&self) -> Option<EventReceiver> {
        self.events.lock().ok().and_then(|mut e| e.take())
    }

    async fn create_app(&self, new: NewApp) -> Result<App> {
        self.call(|r| Op::CreateApp(new, r)).await
    }

    async fn get_app(&self, id: &str) -> Result<Option<App>> {
        let id = id.to_string();
        self.readers.read(move |c| rows::get_app(c, &id)).await
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

    async fn list_endpoints(&self, app_id: &str) -> Result<Vec<Endpoint>> {
        let app_id = app_id.to_string();
        self.readers
            .read(move |c| rows::list_endpoints(c, &app_id))
            .await
    }

    async fn update_endpoint(
        &self,
        app_id: &str,
        id: &str,
        patch: EndpointPatch,
        now: Millis,
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

    async fn delete_endpoint(&self, app_id: &str, id: &str, now: Millis) -> Result<bool> {
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
    ) -> Result<Page<NotificationDetail>> {
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

    async fn retry_delivery(&self, id: &str, now: Millis) -> Result<Option<Delivery>> {
        let id = id.to_string();
        self.call(|reply| Op::RetryDelivery { id, now, reply })
            .await
    }

    async fn recover(&self, app_id: &str, since: Millis, now: Millis) -> Result<u64> {
        let app_id = app_id.to_string();
        self.call(|reply| Op::Recover {
            app_id,
            since,
            now,
            reply,
        })
        .await
    }

    async fn record_attempt(&self, report: AttemptReport) -> Result<()> {
        self.ops
            .send(Op::RecordAttempt(report))
            .await
            .map_err(|_| StoreError::Closed)
    }

    async fn request_load(&self, request: LoadRequest) -> Result<()> {
        self.ops
            .send(Op::Load(request))
            .await
            .map_err(|_| StoreError::Closed)
    }

    async fn postpone(&self, jobs: Vec<Arc<Job>>, next_at: Millis) -> Result<()> {
        self.ops
            .send(Op::Postpone(jobs, next_at))
            .await
            .map_err(|_| StoreError::Closed)
    }

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

    async fn get_meta(&self, key: &str) -> Result<Option<String>> {
        let key = key.to_string();
        self.readers.read(move |c| rows::get_meta(c, &key)).await
    }

    async fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        let (k, v) = (key.to_string(), value.to_string());
        self.call(|r| Op::SetMeta(k, v, r)).await
    }
}
