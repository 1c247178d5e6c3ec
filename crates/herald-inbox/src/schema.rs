//! The inbox's tables and their migrations, per driver, embedded in the binary. Each driver
//! records the migrations it ran in `herald_inbox_migrations` (not SQLite's `user_version`,
//! which the delivery store owns: both may share one database file). Migration numbers are
//! the same in both drivers; never edit a released one, append a new one.

/// SQLite migrations, in order.
pub(crate) const SQLITE: &[&str] = &[
    // 1: orders and processed notifications.
    r#"
    CREATE TABLE herald_orders (
        seq            INTEGER PRIMARY KEY,
        out_trade_no   TEXT NOT NULL UNIQUE,
        amount_minor   INTEGER NOT NULL CHECK (amount_minor >= 0),
        currency       TEXT NOT NULL,
        subject        TEXT NOT NULL,
        state          TEXT NOT NULL
            CHECK (state IN ('unpaid', 'paid', 'partially_refunded', 'refunded', 'closed')),
        refunded_minor INTEGER NOT NULL DEFAULT 0 CHECK (refunded_minor >= 0),
        transaction_id TEXT,
        created_at     INTEGER NOT NULL,
        updated_at     INTEGER NOT NULL
    );

    CREATE TABLE herald_inbox_notifications (
        notify_id    TEXT PRIMARY KEY,
        out_trade_no TEXT NOT NULL,
        outcome      TEXT NOT NULL CHECK (outcome IN ('applied', 'ignored')),
        from_state   TEXT NOT NULL,
        to_state     TEXT NOT NULL,
        reason       TEXT,
        received_at  INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX herald_inbox_notifications_by_order ON herald_inbox_notifications(out_trade_no);
    "#,
];

/// PostgreSQL migrations, in order (the same numbers as [`SQLITE`]).
pub(crate) const POSTGRES: &[&str] = &[
    // 1: orders and processed notifications.
    r#"
    CREATE TABLE herald_orders (
        seq            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        out_trade_no   TEXT NOT NULL UNIQUE,
        amount_minor   BIGINT NOT NULL CHECK (amount_minor >= 0),
        currency       TEXT NOT NULL,
        subject        TEXT NOT NULL,
        state          TEXT NOT NULL
            CHECK (state IN ('unpaid', 'paid', 'partially_refunded', 'refunded', 'closed')),
        refunded_minor BIGINT NOT NULL DEFAULT 0 CHECK (refunded_minor >= 0),
        transaction_id TEXT,
        created_at     BIGINT NOT NULL,
        updated_at     BIGINT NOT NULL
    );

    CREATE TABLE herald_inbox_notifications (
        notify_id    TEXT PRIMARY KEY,
        out_trade_no TEXT NOT NULL,
        outcome      TEXT NOT NULL CHECK (outcome IN ('applied', 'ignored')),
        from_state   TEXT NOT NULL,
        to_state     TEXT NOT NULL,
        reason       TEXT,
        received_at  BIGINT NOT NULL
    );
    CREATE INDEX herald_inbox_notifications_by_order ON herald_inbox_notifications(out_trade_no);
    "#,
];

/// The table that records which migrations ran (created before the first migration).
pub(crate) const MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS herald_inbox_migrations (
    version    INTEGER PRIMARY KEY,
    applied_at BIGINT NOT NULL
)";

/// The columns every order query selects, in the order the row readers expect.
pub(crate) const ORDER_COLUMNS: &str = "out_trade_no, amount_minor, currency, subject, state, \
     refunded_minor, transaction_id, created_at, updated_at";
