//! The inbox on PostgreSQL, for receivers on several nodes. `process` locks the order row
//! with `SELECT ... FOR UPDATE` inside its transaction, so copies of notifications for one
//! order run one after another while other orders proceed; the notify id is the primary
//! key of `herald_inbox_notifications`, inserted with `ON CONFLICT DO NOTHING` as the last
//! line of defence. A commit returns after PostgreSQL made it durable
//! (`synchronous_commit` as the server has it, `on` by default).
//!
//! Connections come from a small pool of our own (idle clients in a mutex, a semaphore for
//! the limit); a client whose connection broke is dropped instead of returned.
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::BytesMut;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use tokio_postgres::{Client, Config, NoTls, Row};

use super::schema::{self, ORDER_COLUMNS};
use super::{
    fresh_record, now_ms, order_exists, parse_state, validate, Decide, Decision, Dialect,
    InboxError, InboxStore, NewOrder, OrderRecord, OrderState, ProcessOutcome, SqlValue, Statement,
};

/// Connections open at once.
const CONNECTIONS: usize = 8;
/// Any constant: the advisory lock key migrations take so nodes do not migrate at once.
const MIGRATION_LOCK: i64 = 0x6865_7261_6c64_0001;

/// The inbox in a PostgreSQL database.
pub struct PgInbox {
    pool: Arc<Pool>,
}

struct Pool {
    config: Config,
    idle: Mutex<Vec<Client>>,
    permits: Semaphore,
}

/// A client on loan from the pool; returned when dropped (unless its connection broke).
struct Pooled<'a> {
    client: Option<Client>,
    pool: &'a Pool,
    _permit: SemaphorePermit<'a>,
}

impl std::ops::Deref for Pooled<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.client.as_ref().expect("present until dropped")
    }
}

impl std::ops::DerefMut for Pooled<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        self.client.as_mut().expect("present until dropped")
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            if !client.is_closed() {
                if let Ok(mut idle) = self.pool.idle.lock() {
                    idle.push(client);
                }
            }
        }
    }
}

/// A PostgreSQL error with the server's message, code and detail when there is one (the
/// bare `Display` of `tokio_postgres::Error` says only "db error").
fn describe(e: &tokio_postgres::Error) -> String {
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

fn backend(e: tokio_postgres::Error) -> InboxError {
    InboxError::backend(describe(&e), e)
}

impl Pool {
    async fn get(&self) -> Result<Pooled<'_>, InboxError> {
        let permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| InboxError::backend_msg("the inbox is closed"))?;
        let idle = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let client = match idle {
            Some(c) => c,
            None => self.connect().await?,
        };
        Ok(Pooled {
            client: Some(client),
            pool: self,
            _permit: permit,
        })
    }

    async fn connect(&self) -> Result<Client, InboxError> {
        let (client, connection) = self
            .config
            .connect(NoTls)
            .await
            .map_err(|e| InboxError::backend(format!("cannot connect: {}", describe(&e)), e))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %describe(&e), "inbox connection closed");
            }
        });
        Ok(client)
    }
}

impl PgInbox {
    /// Connects to the database at `url` (`postgres://user@host:port/db`, or the key=value
    /// form) and runs the inbox's migrations. Must be called inside a Tokio runtime.
    pub async fn connect(url: &str) -> Result<Self, InboxError> {
        let config: Config = url.parse().map_err(InboxError::BadUrl)?;
        let pool = Pool {
            config,
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(CONNECTIONS),
        };
        migrate(&mut *pool.get().await?).await?;
        Ok(PgInbox {
            pool: Arc::new(pool),
        })
    }
}

/// Applies the migrations not yet recorded, in one transaction holding an advisory lock.
async fn migrate(client: &mut Client) -> Result<(), InboxError> {
    let tx = client.transaction().await.map_err(backend)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(backend)?;
    tx.batch_execute(schema::MIGRATIONS_TABLE)
        .await
        .map_err(backend)?;
    let applied: i32 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM herald_inbox_migrations",
            &[],
        )
        .await
        .map_err(backend)?
        .get(0);
    let applied = usize::try_from(applied).unwrap_or(usize::MAX);
    if applied > schema::POSTGRES.len() {
        return Err(InboxError::backend_msg(format!(
            "the inbox is at schema version {applied}, newer than this Herald ({}); upgrade Herald",
            schema::POSTGRES.len()
        )));
    }
    for (i, sql) in schema::POSTGRES.iter().enumerate().skip(applied) {
        tx.batch_execute(sql).await.map_err(backend)?;
        tx.execute(
            "INSERT INTO herald_inbox_migrations (version, applied_at) VALUES ($1, $2)",
            &[&((i + 1) as i32), &now_ms()],
        )
        .await
        .map_err(backend)?;
    }
    tx.commit().await.map_err(backend)
}

fn read_order(row: &Row) -> Result<OrderRecord, InboxError> {
    let get = |e: tokio_postgres::Error| InboxError::backend(format!("stored order: {e}"), e);
    let state: String = row.try_get(4).map_err(get)?;
    Ok(OrderRecord {
        out_trade_no: row.try_get(0).map_err(get)?,
        amount_minor: row.try_get(1).map_err(get)?,
        currency: row.try_get(2).map_err(get)?,
        subject: row.try_get(3).map_err(get)?,
        state: parse_state(&state)?,
        refunded_minor: row.try_get(5).map_err(get)?,
        transaction_id: row.try_get(6).map_err(get)?,
        created_at: row.try_get(7).map_err(get)?,
        updated_at: row.try_get(8).map_err(get)?,
    })
}

impl ToSql for SqlValue {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        let text_like = <&str as ToSql>::accepts(ty);
        match self {
            SqlValue::Null => Ok(IsNull::Yes),
            SqlValue::Int(v) => match *ty {
                Type::INT8 => v.to_sql(ty, out),
                Type::INT4 => i32::try_from(*v)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*v)?.to_sql(ty, out),
                Type::BOOL => (*v != 0).to_sql(ty, out),
                _ if text_like => v.to_string().as_str().to_sql(ty, out),
                _ => Err(format!("cannot pass an integer as a {ty} parameter").into()),
            },
            SqlValue::Text(s) => match *ty {
                _ if text_like => s.as_str().to_sql(ty, out),
                Type::INT8 => s.trim().parse::<i64>()?.to_sql(ty, out),
                Type::INT4 => s.trim().parse::<i32>()?.to_sql(ty, out),
                Type::INT2 => s.trim().parse::<i16>()?.to_sql(ty, out),
                _ => Err(format!("cannot pass text as a {ty} parameter").into()),
            },
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

fn as_params(params: &[SqlValue]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

async fn run_statement(
    tx: &tokio_postgres::Transaction<'_>,
    st: &Statement,
) -> Result<u64, InboxError> {
    tx.execute(st.sql.as_str(), &as_params(&st.params))
        .await
        .map_err(|e| InboxError::statement(format!("{}: {}", st.sql, describe(&e)), e))
}

/// Records a processed notify id. False when another transaction recorded it first.
async fn record(
    tx: &tokio_postgres::Transaction<'_>,
    notify_id: &str,
    order: &OrderRecord,
    outcome: &str,
    to: OrderState,
    reason: Option<&str>,
) -> Result<bool, InboxError> {
    let inserted = tx
        .execute(
            "INSERT INTO herald_inbox_notifications
                 (notify_id, out_trade_no, outcome, from_state, to_state, reason, received_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (notify_id) DO NOTHING",
            &[
                &notify_id,
                &order.out_trade_no,
                &outcome,
                &order.state.as_str(),
                &to.as_str(),
                &reason,
                &now_ms(),
            ],
        )
        .await
        .map_err(backend)?;
    Ok(inserted == 1)
}

#[async_trait]
impl InboxStore for PgInbox {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    async fn create_order(&self, new: NewOrder) -> Result<OrderRecord, InboxError> {
        validate(&new)?;
        let order = fresh_record(new);
        let client = self.pool.get().await?;
        let inserted = client
            .execute(
                "INSERT INTO herald_orders
                     (out_trade_no, amount_minor, currency, subject, state, refunded_minor,
                      transaction_id, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, 0, NULL, $6, $6)
                 ON CONFLICT (out_trade_no) DO NOTHING",
                &[
                    &order.out_trade_no,
                    &order.amount_minor,
                    &order.currency,
                    &order.subject,
                    &order.state.as_str(),
                    &order.created_at,
                ],
            )
            .await
            .map_err(backend)?;
        if inserted == 0 {
            return Err(order_exists(&order.out_trade_no));
        }
        Ok(order)
    }

    async fn order(&self, out_trade_no: &str) -> Result<Option<OrderRecord>, InboxError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                &format!("SELECT {ORDER_COLUMNS} FROM herald_orders WHERE out_trade_no = $1"),
                &[&out_trade_no],
            )
            .await
            .map_err(backend)?;
        row.as_ref().map(read_order).transpose()
    }

    async fn list_orders(&self, limit: u32) -> Result<Vec<OrderRecord>, InboxError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &format!("SELECT {ORDER_COLUMNS} FROM herald_orders ORDER BY seq DESC LIMIT $1"),
                &[&i64::from(limit)],
            )
            .await
            .map_err(backend)?;
        rows.iter().map(read_order).collect()
    }

    async fn process(
        &self,
        notify_id: &str,
        out_trade_no: &str,
        decide: Decide,
    ) -> Result<ProcessOutcome, InboxError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await.map_err(backend)?;
        let row = tx
            .query_opt(
                &format!(
                    "SELECT {ORDER_COLUMNS} FROM herald_orders WHERE out_trade_no = $1 FOR UPDATE"
                ),
                &[&out_trade_no],
            )
            .await
            .map_err(backend)?;
        let Some(order) = row.as_ref().map(read_order).transpose()? else {
            tx.rollback().await.map_err(backend)?;
            return Ok(ProcessOutcome::UnknownOrder);
        };
        // Every earlier copy for this order has committed or rolled back by now: this
        // statement sees what they recorded.
        let seen = tx
            .query_opt(
                "SELECT 1 FROM herald_inbox_notifications WHERE notify_id = $1",
                &[&notify_id],
            )
            .await
            .map_err(backend)?
            .is_some();
        if seen {
            tx.rollback().await.map_err(backend)?;
            return Ok(ProcessOutcome::Duplicate);
        }
        let outcome = match decide(&order) {
            Decision::Apply {
                state,
                refunded_minor,
                transaction_id,
                statements,
            } => {
                tx.execute(
                    "UPDATE herald_orders
                     SET state = $2, refunded_minor = $3, transaction_id = $4, updated_at = $5
                     WHERE out_trade_no = $1",
                    &[
                        &out_trade_no,
                        &state.as_str(),
                        &refunded_minor,
                        &transaction_id,
                        &now_ms(),
                    ],
                )
                .await
                .map_err(backend)?;
                for st in &statements {
                    run_statement(&tx, st).await?;
                }
                if !record(&tx, notify_id, &order, "applied", state, None).await? {
                    tx.rollback().await.map_err(backend)?;
                    return Ok(ProcessOutcome::Duplicate);
                }
                ProcessOutcome::Applied {
                    from: order.state,
                    to: state,
                }
            }
            Decision::Ignore { reason } => {
                if !record(
                    &tx,
                    notify_id,
                    &order,
                    "ignored",
                    order.state,
                    Some(&reason),
                )
                .await?
                {
                    tx.rollback().await.map_err(backend)?;
                    return Ok(ProcessOutcome::Duplicate);
                }
                ProcessOutcome::Ignored {
                    state: order.state,
                    reason,
                }
            }
            Decision::Reject { reason } => {
                tx.rollback().await.map_err(backend)?;
                return Ok(ProcessOutcome::Rejected { reason });
            }
        };
        tx.commit().await.map_err(backend)?;
        Ok(outcome)
    }

    async fn execute(&self, statements: Vec<Statement>) -> Result<u64, InboxError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await.map_err(backend)?;
        let mut changed = 0;
        for st in &statements {
            changed += run_statement(&tx, st).await?;
        }
        tx.commit().await.map_err(backend)?;
        Ok(changed)
    }

    async fn query_value(
        &self,
        sql: &str,
        params: Vec<SqlValue>,
    ) -> Result<Option<SqlValue>, InboxError> {
        let client = self.pool.get().await?;
        let fail =
            |e: tokio_postgres::Error| InboxError::statement(format!("{sql}: {}", describe(&e)), e);
        let Some(row) = client
            .query_opt(sql, &as_params(&params))
            .await
            .map_err(fail)?
        else {
            return Ok(None);
        };
        let ty = row
            .columns()
            .first()
            .map(|c| c.type_().clone())
            .ok_or_else(|| InboxError::statement_msg(format!("{sql}: returns no column")))?;
        let value = match ty {
            Type::INT8 => row
                .try_get::<_, Option<i64>>(0)
                .map(|v| v.map(SqlValue::Int)),
            Type::INT4 => row
                .try_get::<_, Option<i32>>(0)
                .map(|v| v.map(|v| SqlValue::Int(v.into()))),
            Type::INT2 => row
                .try_get::<_, Option<i16>>(0)
                .map(|v| v.map(|v| SqlValue::Int(v.into()))),
            ref t if <String as tokio_postgres::types::FromSql>::accepts(t) => row
                .try_get::<_, Option<String>>(0)
                .map(|v| v.map(SqlValue::Text)),
            other => {
                return Err(InboxError::statement_msg(format!(
                    "{sql}: the first column is {other}; only integers and text are supported"
                )))
            }
        }
        .map_err(fail)?;
        Ok(Some(value.unwrap_or(SqlValue::Null)))
    }
}
