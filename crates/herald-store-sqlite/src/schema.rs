//! The SQLite schema and its migrations, embedded in the binary and applied in order at
//! open time. `PRAGMA user_version` records how many have run; migration numbers are the
//! same in every driver.
use rusqlite::Connection;

use herald_store::{Result, StoreError};

/// Each entry is one migration; never edit a released one, append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: the initial schema.
    r#"
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE apps (
        id          TEXT PRIMARY KEY,
        name        TEXT NOT NULL,
        profile     TEXT NOT NULL,
        retry       TEXT,
        ack         TEXT,
        credentials TEXT NOT NULL,
        created_at  INTEGER NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE endpoints (
        id            TEXT PRIMARY KEY,
        app_id        TEXT NOT NULL REFERENCES apps(id),
        url           TEXT NOT NULL,
        event_types   TEXT,
        retry         TEXT,
        ack           TEXT,
        max_in_flight INTEGER NOT NULL CHECK (max_in_flight > 0),
        ordered       INTEGER NOT NULL CHECK (ordered IN (0, 1)),
        enabled       INTEGER NOT NULL CHECK (enabled IN (0, 1)),
        deleted       INTEGER NOT NULL DEFAULT 0 CHECK (deleted IN (0, 1)),
        created_at    INTEGER NOT NULL,
        updated_at    INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX endpoints_by_app ON endpoints(app_id) WHERE deleted = 0;

    CREATE TABLE notifications (
        seq             INTEGER PRIMARY KEY,
        id              TEXT NOT NULL UNIQUE,
        app_id          TEXT NOT NULL REFERENCES apps(id),
        event_type      TEXT NOT NULL,
        payload         TEXT NOT NULL,
        notify_url      TEXT,
        idempotency_key TEXT,
        order_key       TEXT,
        created_at      INTEGER NOT NULL
    );
    CREATE UNIQUE INDEX notifications_idempotency
        ON notifications(app_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
    CREATE INDEX notifications_by_app ON notifications(app_id, seq);

    CREATE TABLE deliveries (
        seq              INTEGER PRIMARY KEY,
        id               TEXT NOT NULL UNIQUE,
        notification_seq INTEGER NOT NULL REFERENCES notifications(seq),
        app_id           TEXT NOT NULL,
        endpoint_id      TEXT,
        url              TEXT NOT NULL,
        notify_id        TEXT NOT NULL,
        status           TEXT NOT NULL
            CHECK (status IN ('pending', 'succeeded', 'failed', 'canceled')),
        attempts         INTEGER NOT NULL DEFAULT 0,
        next_at          INTEGER,
        order_key        TEXT,
        created_at       INTEGER NOT NULL,
        updated_at       INTEGER NOT NULL,
        CHECK ((status = 'pending') = (next_at IS NOT NULL))
    );
    -- The engine's window loads walk this index in (next_at, seq) order.
    CREATE INDEX deliveries_due ON deliveries(next_at, seq) WHERE status = 'pending';
    -- "Is an earlier delivery with my order key still pending?"
    CREATE INDEX deliveries_order ON deliveries(order_key, seq)
        WHERE status = 'pending' AND order_key IS NOT NULL;
    CREATE INDEX deliveries_by_notification ON deliveries(notification_seq);
    CREATE INDEX deliveries_failed_by_app ON deliveries(app_id, created_at) WHERE status = 'failed';
    CREATE INDEX deliveries_by_endpoint ON deliveries(endpoint_id) WHERE status = 'pending';

    CREATE TABLE attempts (
        delivery_seq INTEGER NOT NULL REFERENCES deliveries(seq),
        n            INTEGER NOT NULL,
        at           INTEGER NOT NULL,
        duration_ms  INTEGER NOT NULL,
        status_code  INTEGER,
        response     TEXT,
        error_class  TEXT,
        error        TEXT,
        PRIMARY KEY (delivery_seq, n)
    ) WITHOUT ROWID;
    "#,
    // 2: the payment sandbox's trades (`herald serve --sandbox`). `doc` is the sandbox's own
    // JSON document; the store indexes only what it looks rows up by.
    r#"
    CREATE TABLE sandbox_payments (
        id           TEXT PRIMARY KEY,
        app_id       TEXT NOT NULL REFERENCES apps(id),
        out_trade_no TEXT NOT NULL,
        doc          TEXT NOT NULL,
        version      INTEGER NOT NULL,
        deadline     INTEGER
    ) WITHOUT ROWID;
    CREATE UNIQUE INDEX sandbox_payments_by_trade ON sandbox_payments(app_id, out_trade_no);
    CREATE INDEX sandbox_payments_by_deadline ON sandbox_payments(deadline, id)
        WHERE deadline IS NOT NULL;
    "#,
    // 3: the claim-based queue. `locked_by` names the node holding a pending delivery (NULL:
    // claimable when due); `nodes` holds each node's lease. Claims walk the due index and
    // skip held rows; the held index covers endpoint deliveries only and answers "does
    // another node serve this endpoint?". Neither index changes when an ad-hoc delivery is
    // claimed, so a claim costs one row write (the delivery drain's hot path). Endpoints may
    // override the profile's attempt timeout.
    r#"
    ALTER TABLE deliveries ADD COLUMN locked_by TEXT;
    CREATE TABLE nodes (
        id          TEXT PRIMARY KEY,
        lease_until INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX deliveries_held ON deliveries(endpoint_id, locked_by)
        WHERE locked_by IS NOT NULL AND endpoint_id IS NOT NULL;
    ALTER TABLE endpoints ADD COLUMN timeout_ms INTEGER;
    "#,
    // 4: deleting apps (`deleted_at`, NULL while live) and API keys scoped to one app: the
    // SHA-256 of each key (never the key), a prefix to tell keys apart, when it was last used.
    r#"
    ALTER TABLE apps ADD COLUMN deleted_at INTEGER;
    CREATE TABLE api_keys (
        id           TEXT PRIMARY KEY,
        app_id       TEXT NOT NULL REFERENCES apps(id),
        prefix       TEXT NOT NULL,
        key_sha256   TEXT NOT NULL UNIQUE,
        created_at   INTEGER NOT NULL,
        last_used_at INTEGER
    ) WITHOUT ROWID;
    CREATE INDEX api_keys_by_app ON api_keys(app_id, created_at);
    "#,
    // 5: the inbound gateway's sources. What a source receives is a notification of its
    // internal app (`app_id`) delivered to its one endpoint (`endpoint_id`); `keys` holds the
    // verification keys, sealed like apps' credentials.
    r#"
    CREATE TABLE sources (
        id                 TEXT PRIMARY KEY,
        name               TEXT NOT NULL,
        profile            TEXT NOT NULL,
        keys               TEXT NOT NULL,
        expect_app_id      TEXT,
        expect_merchant_id TEXT,
        format             TEXT NOT NULL CHECK (format IN ('standard-webhooks', 'raw')),
        app_id             TEXT NOT NULL REFERENCES apps(id),
        endpoint_id        TEXT NOT NULL REFERENCES endpoints(id),
        created_at         INTEGER NOT NULL,
        deleted            INTEGER NOT NULL DEFAULT 0 CHECK (deleted IN (0, 1))
    ) WITHOUT ROWID;
    CREATE INDEX sources_live ON sources(created_at, id) WHERE deleted = 0;
    "#,
    // 6: the operator dashboard's reads. Attempts by time (the overview's per-minute chart
    // and its endpoints in trouble read the last hour's range, index only); an endpoint's
    // latest deliveries (its health); deliveries by notify id (search by what a receiver
    // saw).
    r#"
    CREATE INDEX attempts_by_time ON attempts(at, error_class);
    CREATE INDEX deliveries_by_endpoint_seq ON deliveries(endpoint_id, seq)
        WHERE endpoint_id IS NOT NULL;
    CREATE INDEX deliveries_by_notify_id ON deliveries(notify_id);
    "#,
    // 7: operations. Each endpoint's health (circuit breaker, auto-disable; see
    // `herald_store::health`); claims skip the endpoints listed by the partial index. Apps'
    // ops notification target (its secret sealed like credentials). Retention walks
    // finished deliveries by notification.
    r#"
    ALTER TABLE endpoints ADD COLUMN health_state TEXT NOT NULL DEFAULT 'closed'
        CHECK (health_state IN ('closed', 'open', 'disabled'));
    ALTER TABLE endpoints ADD COLUMN health_failures INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE endpoints ADD COLUMN health_failing_since INTEGER;
    ALTER TABLE endpoints ADD COLUMN health_last_success_at INTEGER;
    ALTER TABLE endpoints ADD COLUMN health_last_failure_at INTEGER;
    ALTER TABLE endpoints ADD COLUMN breaker_open_until INTEGER;
    ALTER TABLE endpoints ADD COLUMN breaker_opened INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE endpoints ADD COLUMN disabled_reason TEXT;
    ALTER TABLE endpoints ADD COLUMN health_changed_at INTEGER;
    CREATE INDEX endpoints_unhealthy ON endpoints(id, breaker_open_until)
        WHERE health_state <> 'closed';
    ALTER TABLE apps ADD COLUMN ops_url TEXT;
    ALTER TABLE apps ADD COLUMN ops_credentials TEXT;
    CREATE INDEX notifications_by_time ON notifications(created_at);
    "#,
    // 8: durable ops notifications (`herald_store::ops_outbox`). An app's ops target is an
    // internal app (`internal = 'ops'`) with one endpoint, named by the owner's `ops_app_id`;
    // a source's app is internal too (`'source'`). Internal apps are hidden from app lists.
    // Targets set under migration 7 (`ops_url`, `ops_credentials`) are moved into internal
    // apps by the driver at open (they are sealed, so SQL cannot move them).
    r#"
    ALTER TABLE apps ADD COLUMN internal TEXT CHECK (internal IN ('ops', 'source'));
    ALTER TABLE apps ADD COLUMN ops_app_id TEXT REFERENCES apps(id);
    UPDATE apps SET internal = 'source' WHERE id IN (SELECT app_id FROM sources);
    "#,
    // 9: the dashboard's sessions and one-time login links (see `herald_store::sessions`):
    // the SHA-256 of each random id (never the id), its principal (`admin` or an API key's
    // id, with the key's app), and its expiry. Live ones are counted per principal at
    // sign-in; expired ones are purged by expiry.
    r#"
    CREATE TABLE dashboard_sessions (
        id_sha256  TEXT PRIMARY KEY,
        principal  TEXT NOT NULL,
        app_id     TEXT,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX dashboard_sessions_by_principal ON dashboard_sessions(principal, expires_at);
    CREATE INDEX dashboard_sessions_by_expiry ON dashboard_sessions(expires_at);
    CREATE TABLE dashboard_login_links (
        id_sha256  TEXT PRIMARY KEY,
        principal  TEXT NOT NULL,
        app_id     TEXT,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX dashboard_login_links_by_expiry ON dashboard_login_links(expires_at);
    "#,
];

/// Applies every migration not yet applied, each in its own transaction.
pub(crate) fn migrate(conn: &mut Connection) -> Result<()> {
    let applied: usize = conn
        .query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))
        .map_err(backend)? as usize;
    if applied > MIGRATIONS.len() {
        return Err(StoreError::backend_msg(format!(
            "the database is at schema version {applied}, newer than this Herald ({}); upgrade Herald",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        let tx = conn.transaction().map_err(backend)?;
        tx.execute_batch(sql).map_err(backend)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)
            .map_err(backend)?;
        tx.commit().map_err(backend)?;
    }
    Ok(())
}

/// A rusqlite error as a storage failure: its message as the context, the error itself as
/// the source.
pub(crate) fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::backend(e.to_string(), e)
}
