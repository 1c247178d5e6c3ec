//! The receiver's inbox: the merchant's orders, the notify ids already processed, and the one
//! operation that makes a notification take effect exactly once ([`InboxStore::process`]).
//!
//! Owns the inbox's tables (`herald_orders`, `herald_inbox_*`), their migrations and all of
//! their SQL, in two drivers: [`SqliteInbox`] (one file, safe with several processes) and
//! [`PgInbox`] (PostgreSQL, for several nodes). What a notification *means* (which state an
//! order moves to) is decided by the caller, `herald-receiver`, inside the `decide` closure,
//! while the order is locked; the store only guarantees the lock, the dedupe and atomicity.
//! The conformance cases every driver runs are in [`conformance`].
pub mod conformance;
mod postgres;
mod schema;
mod sqlite;

use std::fmt;
use std::str::FromStr;

use async_trait::async_trait;
/// Order times are Unix milliseconds, the same type Herald's own store uses.
pub use herald_protocols::UnixMillis;

pub use self::postgres::PgInbox;
pub use self::sqlite::SqliteInbox;

/// Where an order is. Orders only move forward: `Unpaid -> Paid -> PartiallyRefunded ->
/// Refunded`, or `Unpaid -> Closed` (the receiver enforces this; the store records it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OrderState {
    Unpaid,
    Paid,
    PartiallyRefunded,
    Refunded,
    Closed,
}

impl OrderState {
    /// Every state, in the order of the forward path (`Closed` last).
    pub const ALL: [OrderState; 5] = [
        OrderState::Unpaid,
        OrderState::Paid,
        OrderState::PartiallyRefunded,
        OrderState::Refunded,
        OrderState::Closed,
    ];

    /// The stored name: `unpaid`, `paid`, `partially_refunded`, `refunded`, `closed`.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderState::Unpaid => "unpaid",
            OrderState::Paid => "paid",
            OrderState::PartiallyRefunded => "partially_refunded",
            OrderState::Refunded => "refunded",
            OrderState::Closed => "closed",
        }
    }
}

impl fmt::Display for OrderState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state name that is not one of [`OrderState::as_str`]'s.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown order state {0:?}; expected unpaid, paid, partially_refunded, refunded or closed")]
pub struct UnknownOrderState(pub String);

impl FromStr for OrderState {
    type Err = UnknownOrderState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        OrderState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownOrderState(s.to_string()))
    }
}

/// An order the merchant creates before the customer pays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewOrder {
    /// The merchant's order reference, as sent to the provider (`out_trade_no`).
    pub out_trade_no: String,
    /// The total in minor units (fen, cents); never negative.
    pub amount_minor: i64,
    /// ISO 4217 code (`CNY`, `USD`); compared case-insensitively with notifications.
    pub currency: String,
    /// What the order is for (shown to the customer).
    pub subject: String,
}

/// An order as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderRecord {
    pub out_trade_no: String,
    pub amount_minor: i64,
    pub currency: String,
    pub subject: String,
    pub state: OrderState,
    /// How much has been refunded so far, minor units.
    pub refunded_minor: i64,
    /// The provider's transaction id, once a notification carried one.
    pub transaction_id: Option<String>,
    /// When the order was stored.
    pub created_at: UnixMillis,
    /// When the order last changed.
    pub updated_at: UnixMillis,
}

/// A parameter of a merchant statement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SqlValue {
    Null,
    Int(i64),
    Text(String),
}

/// One of the merchant's own statements, run in the same transaction as the order change.
/// Placeholders are the backend's own: `?1, ?2` on SQLite, `$1, $2` on PostgreSQL (see
/// [`Dialect::placeholder`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Statement {
    pub sql: String,
    pub params: Vec<SqlValue>,
}

impl Statement {
    /// A statement with its parameters.
    pub fn new(sql: impl Into<String>, params: Vec<SqlValue>) -> Self {
        Statement {
            sql: sql.into(),
            params,
        }
    }
}

/// Which SQL a driver speaks, for writing merchant statements that run on either.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// The `n`th (1-based) positional placeholder: `?n` on SQLite, `$n` on PostgreSQL.
    pub fn placeholder(self, n: usize) -> String {
        match self {
            Dialect::Sqlite => format!("?{n}"),
            Dialect::Postgres => format!("${n}"),
        }
    }
}

/// What to do with a notification, decided while its order is locked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Move the order (set every field given), run the merchant's statements, record the
    /// notify id; all in one transaction.
    Apply {
        state: OrderState,
        refunded_minor: i64,
        /// Stored as given (`None` clears it): pass the order's own when nothing changes.
        transaction_id: Option<String>,
        statements: Vec<Statement>,
    },
    /// Change nothing but record the notify id (a stale or meaningless notification that is
    /// still acknowledged).
    Ignore { reason: String },
    /// Roll back and record nothing: the provider should send it again.
    Reject { reason: String },
}

/// What [`InboxStore::process`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProcessOutcome {
    /// The order moved and the notify id was recorded.
    Applied { from: OrderState, to: OrderState },
    /// The notify id was recorded; the order (in `state`) did not change.
    Ignored { state: OrderState, reason: String },
    /// The notify id was already recorded; `decide` was not called.
    Duplicate,
    /// `decide` rejected it; nothing was recorded.
    Rejected { reason: String },
    /// No order has this `out_trade_no`; `decide` was not called, nothing was recorded.
    UnknownOrder,
}

/// Inbox errors. Outcomes a caller expects (duplicates, unknown orders) are not errors.
///
/// A failure that comes from the database keeps the driver's error (rusqlite or
/// tokio-postgres) as its [`source`](std::error::Error::source); its message is a line an
/// operator can act on (the statement and the driver's summary, which for PostgreSQL is the
/// server's message and detail that `tokio_postgres::Error`'s `Display` leaves out).
#[derive(Debug, thiserror::Error)]
pub enum InboxError {
    /// An order with this `out_trade_no` already exists.
    #[error("conflict: {0}")]
    Conflict(String),
    /// A value the inbox cannot store (a negative amount, an empty order reference).
    #[error("invalid: {0}")]
    Invalid(String),
    /// The PostgreSQL URL given to [`PgInbox::connect`](crate::PgInbox::connect) does not
    /// parse.
    #[error("invalid: bad PostgreSQL URL: {0}")]
    BadUrl(#[source] tokio_postgres::Error),
    /// A merchant statement failed; the transaction was rolled back. `message` names the
    /// statement and what went wrong.
    #[error("merchant statement failed: {message}")]
    Statement {
        message: String,
        #[source]
        source: Option<BoxError>,
    },
    /// The database failed (connection, I/O, a newer schema, a stored value it cannot read).
    #[error("inbox storage failure: {context}")]
    Backend {
        context: String,
        #[source]
        source: Option<BoxError>,
    },
}

/// The lower error an [`InboxError`] keeps.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

impl InboxError {
    /// A storage failure caused by `source`.
    pub fn backend(context: impl Into<String>, source: impl Into<BoxError>) -> InboxError {
        InboxError::Backend {
            context: context.into(),
            source: Some(source.into()),
        }
    }

    /// A storage failure with no lower error (the inbox is closed, its schema is newer).
    pub fn backend_msg(context: impl Into<String>) -> InboxError {
        InboxError::Backend {
            context: context.into(),
            source: None,
        }
    }

    /// A merchant statement that failed with `source`.
    pub fn statement(message: impl Into<String>, source: impl Into<BoxError>) -> InboxError {
        InboxError::Statement {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// A merchant statement the inbox refuses (no lower error).
    pub fn statement_msg(message: impl Into<String>) -> InboxError {
        InboxError::Statement {
            message: message.into(),
            source: None,
        }
    }
}

/// The `decide` callback of [`InboxStore::process`].
pub type Decide = Box<dyn FnOnce(&OrderRecord) -> Decision + Send>;

/// The inbox's storage: orders and the exactly-once processing of notifications.
#[async_trait]
pub trait InboxStore: Send + Sync {
    /// Which SQL merchant statements must be written in.
    fn dialect(&self) -> Dialect;

    /// Stores a new `Unpaid` order. An existing `out_trade_no` is [`InboxError::Conflict`].
    async fn create_order(&self, new: NewOrder) -> Result<OrderRecord, InboxError>;

    /// The order with this reference, if any.
    async fn order(&self, out_trade_no: &str) -> Result<Option<OrderRecord>, InboxError>;

    /// Up to `limit` orders, newest first.
    async fn list_orders(&self, limit: u32) -> Result<Vec<OrderRecord>, InboxError>;

    /// Locks the order, dedupes on notify_id (Duplicate without calling `decide`), calls
    /// `decide` with the locked row, applies Apply (update + merchant statements + record
    /// notify_id) or Ignore (record notify_id only) and commits; Reject rolls back and
    /// records nothing. Returns only after the commit is durable. A failing merchant
    /// statement rolls everything back and is [`InboxError::Statement`].
    async fn process(
        &self,
        notify_id: &str,
        out_trade_no: &str,
        decide: Decide,
    ) -> Result<ProcessOutcome, InboxError>;

    /// Runs merchant statements in one transaction outside any notification (creating the
    /// merchant's own tables, for instance). Returns the rows changed.
    async fn execute(&self, statements: Vec<Statement>) -> Result<u64, InboxError>;

    /// The first column of the first row of a merchant query (`SELECT count(*) ...`), or
    /// `None` when it returns no row. Integer and text columns are supported.
    async fn query_value(
        &self,
        sql: &str,
        params: Vec<SqlValue>,
    ) -> Result<Option<SqlValue>, InboxError>;
}

/// Refuses orders the inbox cannot hold.
pub(crate) fn validate(new: &NewOrder) -> Result<(), InboxError> {
    if new.out_trade_no.trim().is_empty() {
        return Err(InboxError::Invalid("out_trade_no is empty".into()));
    }
    if new.amount_minor < 0 {
        return Err(InboxError::Invalid(format!(
            "amount_minor {} is negative",
            new.amount_minor
        )));
    }
    if new.currency.len() != 3 || !new.currency.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(InboxError::Invalid(format!(
            "currency {:?} is not a three-letter ISO 4217 code",
            new.currency
        )));
    }
    Ok(())
}

/// Now, as stored in `created_at`, `updated_at` and the migrations table (Unix ms).
pub(crate) fn now_ms() -> UnixMillis {
    UnixMillis::now()
}

/// The row a fresh order is stored as.
/// The error for a second order with the same `out_trade_no`.
pub(crate) fn order_exists(out_trade_no: &str) -> InboxError {
    InboxError::Conflict(format!("an order {out_trade_no:?} already exists"))
}

pub(crate) fn fresh_record(new: NewOrder) -> OrderRecord {
    let now = now_ms();
    OrderRecord {
        out_trade_no: new.out_trade_no,
        amount_minor: new.amount_minor,
        currency: new.currency.to_ascii_uppercase(),
        subject: new.subject,
        state: OrderState::Unpaid,
        refunded_minor: 0,
        transaction_id: None,
        created_at: now,
        updated_at: now,
    }
}

/// A stored state name back to the enum (a bad one means the table was edited by hand).
pub(crate) fn parse_state(s: &str) -> Result<OrderState, InboxError> {
    s.parse()
        .map_err(|e: UnknownOrderState| InboxError::backend(format!("stored order: {e}"), e))
}
