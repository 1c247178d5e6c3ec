//! The inbox on one SQLite file: WAL, `synchronous = FULL` (a commit is on disk before
//! `process` returns), a busy timeout, and every write in a `BEGIN IMMEDIATE` transaction,
//! which takes the database's write lock up front. That lock serialises writers across
//! threads and processes alike, so it is also the per-order lock `process` needs.
//!
//! Connections live in a small pool and are used on Tokio's blocking threads.
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::types::{Value, ValueRef};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use tokio::sync::Semaphore;

use super::schema::{self, ORDER_COLUMNS};
use super::{
    fresh_record, now_ms, order_exists, validate, Decide, Decision, Dialect, InboxError,
    InboxStore, NewOrder, OrderRecord, OrderState, ProcessOutcome, SqlValue, Statement,
};

/// Connections open at once (writers queue on the database lock anyway).
const CONNECTIONS: usize = 4;
/// How long a writer waits for another (thread or process) to release the lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// The inbox in one SQLite file. Cheap to share behind an `Arc`; several processes may open
/// the same file.
pub struct SqliteInbox {
    shared: Arc<Shared>,
}

struct Shared {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
}

fn backend(e: rusqlite::Error) -> InboxError {
    InboxError::backend(e.to_string(), e)
}

impl Shared {
    fn connect(&self) -> Result<Connection, InboxError> {
        let conn = Connection::open(&self.path).map_err(|e| {
            InboxError::backend(format!("cannot open {}: {e}", self.path.display()), e)
        })?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(backend)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(backend)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(backend)?;
        conn.set_prepared_statement_cache_capacity(32);
        Ok(conn)
    }
}

impl SqliteInbox {
    /// Opens (creating if needed) the inbox in the SQLite file at `path` and runs its
    /// migrations. The file may also hold the delivery store's tables.
    pub fn open(path: &Path) -> Result<Self, InboxError> {
        let shared = Shared {
            path: path.to_path_buf(),
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(CONNECTIONS)),
        };
        let mut conn = shared.connect()?;
        migrate(&mut conn)?;
        if let Ok(mut idle) = shared.idle.lock() {
            idle.push(conn);
        }
        Ok(SqliteInbox {
            shared: Arc::new(shared),
        })
    }

    /// Runs `f` with a pooled connection on a blocking thread.
    async fn run<T, F>(&self, f: F) -> Result<T, InboxError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, InboxError> + Send + 'static,
    {
        let permit = self
            .shared
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| InboxError::backend_msg("the inbox is closed"))?;
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let pooled = shared.idle.lock().ok().and_then(|mut idle| idle.pop());
            let mut conn = match pooled {
                Some(c) => c,
                None => shared.connect()?,
            };
            let out = f(&mut conn);
            if let Ok(mut idle) = shared.idle.lock() {
                idle.push(conn);
            }
            out
        })
        .await
        .map_err(|e| InboxError::backend(format!("inbox task failed: {e}"), e))?
    }
}

/// Applies the migrations not yet recorded, under the write lock (another process may be
/// migrating the same file).
fn migrate(conn: &mut Connection) -> Result<(), InboxError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(backend)?;
    tx.execute_batch(schema::MIGRATIONS_TABLE)
        .map_err(backend)?;
    let applied: i64 = tx
        .query_row(
            "SELECT COALESCE(MAX(version), 0) FROM herald_inbox_migrations",
            [],
            |r| r.get(0),
        )
        .map_err(backend)?;
    let applied = usize::try_from(applied).unwrap_or(usize::MAX);
    if applied > schema::SQLITE.len() {
        return Err(InboxError::backend_msg(format!(
            "the inbox is at schema version {applied}, newer than this Herald ({}); upgrade Herald",
            schema::SQLITE.len()
        )));
    }
    for (i, sql) in schema::SQLITE.iter().enumerate().skip(applied) {
        tx.execute_batch(sql).map_err(backend)?;
        tx.execute(
            "INSERT INTO herald_inbox_migrations (version, applied_at) VALUES (?1, ?2)",
            params![(i + 1) as i64, now_ms()],
        )
        .map_err(backend)?;
    }
    tx.commit().map_err(backend)
}

fn read_order(row: &rusqlite::Row<'_>) -> rusqlite::Result<OrderRecord> {
    let state: String = row.get(4)?;
    let state = state.parse::<OrderState>().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(4, rusqlite::types::Type::Text, Box::new(e))
    })?;
    Ok(OrderRecord {
        out_trade_no: row.get(0)?,
        amount_minor: row.get(1)?,
        currency: row.get(2)?,
        subject: row.get(3)?,
        state,
        refunded_minor: row.get(5)?,
        transaction_id: row.get(6)?,
        created_at: row.get(7)?,
        updated_at: row.get(8)?,
    })
}

fn load(conn: &Connection, out_trade_no: &str) -> Result<Option<OrderRecord>, InboxError> {
    conn.prepare_cached(&format!(
        "SELECT {ORDER_COLUMNS} FROM herald_orders WHERE out_trade_no = ?1"
    ))
    .and_then(|mut st| st.query_row([out_trade_no], read_order).optional())
    .map_err(backend)
}

fn to_value(v: &SqlValue) -> Value {
    match v {
        SqlValue::Null => Value::Null,
        SqlValue::Int(i) => Value::Integer(*i),
        SqlValue::Text(s) => Value::Text(s.clone()),
    }
}

/// Runs one merchant statement (rows it returns are read and dropped). Returns rows changed.
fn run_statement(conn: &Connection, st: &Statement) -> Result<u64, InboxError> {
    let fail = |e: rusqlite::Error| InboxError::statement(format!("{}: {e}", st.sql), e);
    let mut prepared = conn.prepare(&st.sql).map_err(fail)?;
    let mut rows = prepared
        .query(rusqlite::params_from_iter(st.params.iter().map(to_value)))
        .map_err(fail)?;
    while rows.next().map_err(fail)?.is_some() {}
    Ok(conn.changes())
}

fn record(
    conn: &Connection,
    notify_id: &str,
    order: &OrderRecord,
    outcome: &str,
    to: OrderState,
    reason: Option<&str>,
) -> Result<(), InboxError> {
    conn.prepare_cached(
        "INSERT INTO herald_inbox_notifications
             (notify_id, out_trade_no, outcome, from_state, to_state, reason, received_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .and_then(|mut st| {
        st.execute(params![
            notify_id,
            order.out_trade_no,
            outcome,
            order.state.as_str(),
            to.as_str(),
            reason,
            now_ms()
        ])
    })
    .map_err(backend)?;
    Ok(())
}

fn process_locked(
    conn: &mut Connection,
    notify_id: &str,
    out_trade_no: &str,
    decide: Decide,
) -> Result<ProcessOutcome, InboxError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(backend)?;
    let seen = tx
        .prepare_cached("SELECT 1 FROM herald_inbox_notifications WHERE notify_id = ?1")
        .and_then(|mut st| st.exists([notify_id]))
        .map_err(backend)?;
    if seen {
        return Ok(ProcessOutcome::Duplicate);
    }
    let Some(order) = load(&tx, out_trade_no)? else {
        return Ok(ProcessOutcome::UnknownOrder);
    };
    match decide(&order) {
        Decision::Apply {
            state,
            refunded_minor,
            transaction_id,
            statements,
        } => {
            tx.prepare_cached(
                "UPDATE herald_orders
                 SET state = ?2, refunded_minor = ?3, transaction_id = ?4, updated_at = ?5
                 WHERE out_trade_no = ?1",
            )
            .and_then(|mut st| {
                st.execute(params![
                    out_trade_no,
                    state.as_str(),
                    refunded_minor,
                    transaction_id,
                    now_ms()
                ])
            })
            .map_err(backend)?;
            for st in &statements {
                run_statement(&tx, st)?;
            }
            record(&tx, notify_id, &order, "applied", state, None)?;
            tx.commit().map_err(backend)?;
            Ok(ProcessOutcome::Applied {
                from: order.state,
                to: state,
            })
        }
        Decision::Ignore { reason } => {
            record(
                &tx,
                notify_id,
                &order,
                "ignored",
                order.state,
                Some(&reason),
            )?;
            tx.commit().map_err(backend)?;
            Ok(ProcessOutcome::Ignored {
                state: order.state,
                reason,
            })
        }
        Decision::Reject { reason } => Ok(ProcessOutcome::Rejected { reason }),
    }
}

#[async_trait]
impl InboxStore for SqliteInbox {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    async fn create_order(&self, new: NewOrder) -> Result<OrderRecord, InboxError> {
        validate(&new)?;
        let order = fresh_record(new);
        self.run(move |conn| {
            let inserted = conn
                .prepare_cached(
                    "INSERT INTO herald_orders
                         (out_trade_no, amount_minor, currency, subject, state, refunded_minor,
                          transaction_id, created_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, 0, NULL, ?6, ?6)
                     ON CONFLICT (out_trade_no) DO NOTHING",
                )
                .and_then(|mut st| {
                    st.execute(params![
                        order.out_trade_no,
                        order.amount_minor,
                        order.currency,
                        order.subject,
                        order.state.as_str(),
                        order.created_at
                    ])
                })
                .map_err(backend)?;
            if inserted == 0 {
                return Err(order_exists(&order.out_trade_no));
            }
            Ok(order)
        })
        .await
    }

    async fn order(&self, out_trade_no: &str) -> Result<Option<OrderRecord>, InboxError> {
        let key = out_trade_no.to_string();
        self.run(move |conn| load(conn, &key)).await
    }

    async fn list_orders(&self, limit: u32) -> Result<Vec<OrderRecord>, InboxError> {
        self.run(move |conn| {
            let mut st = conn
                .prepare_cached(&format!(
                    "SELECT {ORDER_COLUMNS} FROM herald_orders ORDER BY seq DESC LIMIT ?1"
                ))
                .map_err(backend)?;
            let rows = st
                .query_map([i64::from(limit)], read_order)
                .map_err(backend)?;
            rows.map(|r| r.map_err(backend)).collect()
        })
        .await
    }

    async fn process(
        &self,
        notify_id: &str,
        out_trade_no: &str,
        decide: Decide,
    ) -> Result<ProcessOutcome, InboxError> {
        let (notify_id, out_trade_no) = (notify_id.to_string(), out_trade_no.to_string());
        self.run(move |conn| process_locked(conn, &notify_id, &out_trade_no, decide))
            .await
    }

    async fn execute(&self, statements: Vec<Statement>) -> Result<u64, InboxError> {
        self.run(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(backend)?;
            let mut changed = 0;
            for st in &statements {
                changed += run_statement(&tx, st)?;
            }
            tx.commit().map_err(backend)?;
            Ok(changed)
        })
        .await
    }

    async fn query_value(
        &self,
        sql: &str,
        params: Vec<SqlValue>,
    ) -> Result<Option<SqlValue>, InboxError> {
        let sql = sql.to_string();
        self.run(move |conn| {
            let fail = |e: rusqlite::Error| InboxError::statement(format!("{sql}: {e}"), e);
            let mut st = conn.prepare(&sql).map_err(fail)?;
            let mut rows = st
                .query(rusqlite::params_from_iter(params.iter().map(to_value)))
                .map_err(fail)?;
            let Some(row) = rows.next().map_err(fail)? else {
                return Ok(None);
            };
            match row.get_ref(0).map_err(fail)? {
                ValueRef::Null => Ok(Some(SqlValue::Null)),
                ValueRef::Integer(i) => Ok(Some(SqlValue::Int(i))),
                ValueRef::Text(t) => Ok(Some(SqlValue::Text(
                    String::from_utf8_lossy(t).into_owned(),
                ))),
                other => Err(InboxError::statement_msg(format!(
                    "{sql}: the first column is {:?}; only integers and text are supported",
                    other.data_type()
                ))),
            }
        })
        .await
    }
}
