//! The PostgreSQL schema and its migrations, applied in order by [`migrate`] under an
//! advisory lock so that nodes starting together do not migrate at once.
//!
//! Migrations 1 to 9 are numbered as in the SQLite driver: 1 the initial schema, 2 the
//! sandbox's payments, 3 the claim-based queue, 4 deleting apps and app-scoped API keys, 5 the inbound
//! gateway's sources, 6 the dashboard's indexes, 7 endpoint health, ops targets and
//! retention, 8 durable ops notifications, 9 dashboard sessions, 10 the hot write path
//! without foreign-key checks its statements already guarantee, and one index of held
//! deliveries instead of two, 11 endpoints spread over nodes (`endpoint_holders`). 10 and
//! 11 are PostgreSQL's own: the SQLite driver has one writer and no claims across nodes.
//! `herald_store_migrations` records which ran.
//! Millisecond times are `BIGINT`, sequence numbers identity columns; the delivery status is
//! a closed set enforced by a CHECK constraint, as on SQLite.
use tokio_postgres::Client;

use herald_store::{Result, StoreError};

use crate::backend;

/// Any constant: the advisory lock key migrations take (distinct from the inbox's).
const MIGRATION_LOCK: i64 = 0x6865_7261_6c64_0002;

const MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS herald_store_migrations (
    version    INTEGER PRIMARY KEY,
    applied_at BIGINT NOT NULL
)";

/// Each entry is one migration; never edit a released one, append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: the initial schema.
    r#"
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );

    CREATE TABLE apps (
        id          TEXT PRIMARY KEY,
        name        TEXT NOT NULL,
        profile     TEXT NOT NULL,
        retry       TEXT,
        ack         TEXT,
        credentials TEXT NOT NULL,
        created_at  BIGINT NOT NULL
    );

    CREATE TABLE endpoints (
        id            TEXT PRIMARY KEY,
        app_id        TEXT NOT NULL REFERENCES apps(id),
        url           TEXT NOT NULL,
        event_types   TEXT,
        retry         TEXT,
        ack           TEXT,
        max_in_flight INTEGER NOT NULL CHECK (max_in_flight > 0),
        ordered       BOOLEAN NOT NULL,
        enabled       BOOLEAN NOT NULL,
        deleted       BOOLEAN NOT NULL DEFAULT FALSE,
        created_at    BIGINT NOT NULL,
        updated_at    BIGINT NOT NULL
    );
    CREATE INDEX endpoints_by_app ON endpoints(app_id) WHERE NOT deleted;

    CREATE TABLE notifications (
        seq             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        id              TEXT NOT NULL UNIQUE,
        app_id          TEXT NOT NULL REFERENCES apps(id),
        event_type      TEXT NOT NULL,
        payload         TEXT NOT NULL,
        notify_url      TEXT,
        idempotency_key TEXT,
        order_key       TEXT,
        created_at      BIGINT NOT NULL
    );
    CREATE UNIQUE INDEX notifications_idempotency
        ON notifications(app_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
    CREATE INDEX notifications_by_app ON notifications(app_id, seq);

    CREATE TABLE deliveries (
        seq              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        id               TEXT NOT NULL UNIQUE,
        notification_seq BIGINT NOT NULL REFERENCES notifications(seq),
        app_id           TEXT NOT NULL,
        endpoint_id      TEXT,
        url              TEXT NOT NULL,
        notify_id        TEXT NOT NULL,
        status           TEXT NOT NULL
            CHECK (status IN ('pending', 'succeeded', 'failed', 'canceled')),
        attempts         INTEGER NOT NULL DEFAULT 0,
        next_at          BIGINT,
        order_key        TEXT,
        created_at       BIGINT NOT NULL,
        updated_at       BIGINT NOT NULL,
        CHECK ((status = 'pending') = (next_at IS NOT NULL))
    );
    CREATE INDEX deliveries_due ON deliveries(next_at, seq) WHERE status = 'pending';
    -- "Is an earlier delivery with my order key still pending?"
    CREATE INDEX deliveries_order ON deliveries(order_key, seq)
        WHERE status = 'pending' AND order_key IS NOT NULL;
    CREATE INDEX deliveries_by_notification ON deliveries(notification_seq);
    CREATE INDEX deliveries_failed_by_app ON deliveries(app_id, created_at) WHERE status = 'failed';
    CREATE INDEX deliveries_by_endpoint ON deliveries(endpoint_id) WHERE status = 'pending';

    CREATE TABLE attempts (
        delivery_seq BIGINT NOT NULL REFERENCES deliveries(seq),
        n            INTEGER NOT NULL,
        at           BIGINT NOT NULL,
        duration_ms  INTEGER NOT NULL,
        status_code  INTEGER,
        response     TEXT,
        error_class  TEXT,
        error        TEXT,
        PRIMARY KEY (delivery_seq, n)
    );
    "#,
    // 2: the payment sandbox's trades (`herald serve --sandbox`). `doc` is the sandbox's own
    // JSON document; the store indexes only what it looks rows up by.
    r#"
    CREATE TABLE sandbox_payments (
        id           TEXT PRIMARY KEY,
        app_id       TEXT NOT NULL REFERENCES apps(id),
        out_trade_no TEXT NOT NULL,
        doc          TEXT NOT NULL,
        version      BIGINT NOT NULL,
        deadline     BIGINT
    );
    CREATE UNIQUE INDEX sandbox_payments_by_trade ON sandbox_payments(app_id, out_trade_no);
    CREATE INDEX sandbox_payments_by_deadline ON sandbox_payments(deadline, id)
        WHERE deadline IS NOT NULL;
    "#,
    // 3: the claim-based queue. A delivery is held while `locked_by` names a node; a node
    // holds its claims while its lease (`nodes.lease_until`) runs. Endpoints get an attempt
    // timeout of their own.
    r#"
    ALTER TABLE deliveries ADD COLUMN locked_by TEXT;
    ALTER TABLE endpoints ADD COLUMN timeout_ms INTEGER;
    CREATE TABLE nodes (
        id          TEXT PRIMARY KEY,
        lease_until BIGINT NOT NULL
    );
    -- Claims walk due, unheld work in (next_at, seq) order.
    DROP INDEX deliveries_due;
    CREATE INDEX deliveries_due ON deliveries(next_at, seq)
        WHERE status = 'pending' AND locked_by IS NULL;
    -- "Does another node hold a delivery of this endpoint?"
    CREATE INDEX deliveries_held_by_endpoint ON deliveries(endpoint_id, locked_by)
        WHERE locked_by IS NOT NULL;
    -- Rescue releases what a dead node held.
    CREATE INDEX deliveries_held_by_node ON deliveries(locked_by)
        WHERE locked_by IS NOT NULL;
    "#,
    // 4: deleting apps (`deleted_at`, NULL while live) and API keys scoped to one app: the
    // SHA-256 of each key (never the key), a prefix to tell keys apart, when it was last used.
    r#"
    ALTER TABLE apps ADD COLUMN deleted_at BIGINT;
    CREATE TABLE api_keys (
        id           TEXT PRIMARY KEY,
        app_id       TEXT NOT NULL REFERENCES apps(id),
        prefix       TEXT NOT NULL,
        key_sha256   TEXT NOT NULL UNIQUE,
        created_at   BIGINT NOT NULL,
        last_used_at BIGINT
    );
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
        created_at         BIGINT NOT NULL,
        deleted            BOOLEAN NOT NULL DEFAULT FALSE
    );
    CREATE INDEX sources_live ON sources(created_at, id) WHERE NOT deleted;
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
    // notifications by creation time.
    r#"
    ALTER TABLE endpoints ADD COLUMN health_state TEXT NOT NULL DEFAULT 'closed'
        CHECK (health_state IN ('closed', 'open', 'disabled'));
    ALTER TABLE endpoints ADD COLUMN health_failures INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE endpoints ADD COLUMN health_failing_since BIGINT;
    ALTER TABLE endpoints ADD COLUMN health_last_success_at BIGINT;
    ALTER TABLE endpoints ADD COLUMN health_last_failure_at BIGINT;
    ALTER TABLE endpoints ADD COLUMN breaker_open_until BIGINT;
    ALTER TABLE endpoints ADD COLUMN breaker_opened INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE endpoints ADD COLUMN disabled_reason TEXT;
    ALTER TABLE endpoints ADD COLUMN health_changed_at BIGINT;
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
    // apps by the driver at connect (they are sealed, so SQL cannot move them).
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
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL
    );
    CREATE INDEX dashboard_sessions_by_principal ON dashboard_sessions(principal, expires_at);
    CREATE INDEX dashboard_sessions_by_expiry ON dashboard_sessions(expires_at);
    CREATE TABLE dashboard_login_links (
        id_sha256  TEXT PRIMARY KEY,
        principal  TEXT NOT NULL,
        app_id     TEXT,
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL
    );
    CREATE INDEX dashboard_login_links_by_expiry ON dashboard_login_links(expires_at);
    "#,
    // 10: the hot write path's foreign-key checks. Each was a trigger run per row (a
    // `SELECT ... FOR KEY SHARE` of the referenced row) on the statements every notification
    // pays for, and each referenced row is guaranteed by the statement itself:
    // a notification is inserted only from its app's row, read and locked `FOR KEY SHARE`
    // (`deleted_at IS NULL`) in the same statement, and apps are never deleted, only marked;
    // a delivery only in the statement that inserts its notification (`RETURNING seq`); an
    // attempt only in the statement that updated its delivery under the claim (joined to the
    // `UPDATE`'s `RETURNING`). Retention deletes attempts, deliveries and notifications in
    // one statement. Without them a notification's insert touches about 30 buffers instead
    // of 39 (`pg_stat_statements`, docs/performance.md).
    r#"
    ALTER TABLE notifications DROP CONSTRAINT IF EXISTS notifications_app_id_fkey;
    ALTER TABLE deliveries DROP CONSTRAINT IF EXISTS deliveries_notification_seq_fkey;
    ALTER TABLE attempts DROP CONSTRAINT IF EXISTS attempts_delivery_seq_fkey;
    -- What nodes hold: one index instead of two. Every claim wrote an entry in both
    -- (`locked_by` changes, so no update of a delivery is HOT), and no statement looks held
    -- rows up by endpoint first: the claim's "endpoints other live nodes hold" reads each
    -- other node's rows (`locked_by = o.id`, then their `endpoint_id`), as do the hints and
    -- rescue: all served by this index's leading column.
    DROP INDEX deliveries_held_by_endpoint;
    DROP INDEX deliveries_held_by_node;
    CREATE INDEX deliveries_held_by_node ON deliveries(locked_by, endpoint_id)
        WHERE locked_by IS NOT NULL;
    "#,
    // 11: endpoints spread over nodes (see `queue.rs`). One row per endpoint, taken with a
    // row lock by every claim of the endpoint's deliveries, names the node that claimed it
    // last; rows are added by the claims themselves. Claims go endpoint by endpoint: the
    // endpoints with unheld pending work by a skip scan, and each one's due, unheld work
    // in (next_at, seq) order, both on the partial index below.
    r#"
    CREATE TABLE endpoint_holders (
        endpoint_id TEXT PRIMARY KEY,
        node_id     TEXT
    );
    INSERT INTO endpoint_holders (endpoint_id) SELECT id FROM endpoints;
    CREATE INDEX deliveries_due_by_endpoint ON deliveries(endpoint_id, next_at, seq)
        WHERE status = 'pending' AND locked_by IS NULL;
    "#,
];

/// Applies every migration not yet applied, in one transaction that holds an advisory
/// lock (nodes starting together wait for the first one instead of migrating twice).
pub(crate) async fn migrate(client: &mut Client) -> Result<()> {
    migrate_to(client, MIGRATIONS.len()).await
}

/// [`migrate`], stopping after migration `target` (tests start from an older schema).
async fn migrate_to(client: &mut Client, target: usize) -> Result<()> {
    let tx = client.transaction().await.map_err(backend)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(backend)?;
    tx.batch_execute(MIGRATIONS_TABLE).await.map_err(backend)?;
    let applied: i32 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM herald_store_migrations",
            &[],
        )
        .await
        .map_err(backend)?
        .get(0);
    let applied = usize::try_from(applied).unwrap_or(usize::MAX);
    if applied > MIGRATIONS.len() {
        return Err(StoreError::backend_msg(format!(
            "the database is at schema version {applied}, newer than this Herald ({}); upgrade Herald",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().take(target).skip(applied) {
        tx.batch_execute(sql).await.map_err(backend)?;
        let version = i32::try_from(i + 1).unwrap_or(i32::MAX);
        tx.execute(
            "INSERT INTO herald_store_migrations (version, applied_at)
             VALUES ($1, (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT)",
            &[&version],
        )
        .await
        .map_err(backend)?;
    }
    tx.commit().await.map_err(backend)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn client(url: &str) -> Client {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        client
    }

    async fn count(c: &Client, sql: &str) -> i64 {
        c.query_one(sql, &[]).await.expect(sql).get(0)
    }

    #[tokio::test]
    async fn migration_10_keeps_stored_rows_and_drops_only_the_hot_paths_foreign_keys() {
        let url = herald_pgtest::database();
        let mut c = client(&url).await;
        migrate_to(&mut c, 9).await.expect("migrate to 9");
        c.batch_execute(
            "INSERT INTO apps (id, name, profile, credentials, created_at)
                 VALUES ('app_1', 'shop', 'standard-webhooks', 'sealed', 1);
             INSERT INTO notifications (id, app_id, event_type, payload, created_at)
                 VALUES ('ntf_1', 'app_1', 'payment.succeeded', '{}', 1);
             INSERT INTO deliveries (id, notification_seq, app_id, url, notify_id, status,
                                     attempts, next_at, created_at, updated_at)
                 SELECT 'dlv_1', seq, 'app_1', 'http://127.0.0.1:9/', 'msg_1', 'pending', 1,
                        5, 1, 1 FROM notifications;
             INSERT INTO attempts (delivery_seq, n, at, duration_ms, status_code)
                 SELECT seq, 1, 2, 3, 500 FROM deliveries;",
        )
        .await
        .expect("rows at version 9");
        let fks = "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND conname IN
                   ('notifications_app_id_fkey', 'deliveries_notification_seq_fkey',
                    'attempts_delivery_seq_fkey')";
        assert_eq!(count(&c, fks).await, 3);

        migrate_to(&mut c, 10).await.expect("migrate to 10");
        assert_eq!(
            count(
                &c,
                "SELECT MAX(version)::bigint FROM herald_store_migrations"
            )
            .await,
            10
        );
        assert_eq!(count(&c, fks).await, 0);
        // The foreign keys of what is not written per notification stay.
        assert_eq!(
            count(
                &c,
                "SELECT count(*) FROM pg_constraint WHERE contype = 'f'
                 AND conname IN ('endpoints_app_id_fkey', 'api_keys_app_id_fkey')"
            )
            .await,
            2
        );
        let kept = c
            .query_one(
                "SELECT n.id, d.id, d.status, a.status_code
                 FROM notifications n JOIN deliveries d ON d.notification_seq = n.seq
                      JOIN attempts a ON a.delivery_seq = d.seq",
                &[],
            )
            .await
            .expect("the rows stored before migration 10");
        assert_eq!(kept.get::<_, String>(0), "ntf_1");
        assert_eq!(kept.get::<_, String>(1), "dlv_1");
        assert_eq!(kept.get::<_, String>(2), "pending");
        assert_eq!(kept.get::<_, Option<i32>>(3), Some(500));

        // Held deliveries: one index, by node then endpoint.
        let held: Vec<String> = c
            .query(
                "SELECT indexdef FROM pg_indexes
                 WHERE tablename = 'deliveries' AND indexname LIKE 'deliveries_held%'",
                &[],
            )
            .await
            .expect("held indexes")
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(held.len(), 1, "{held:?}");
        assert!(
            held[0].contains("deliveries_held_by_node")
                && held[0].contains("(locked_by, endpoint_id)")
                && held[0].contains("WHERE (locked_by IS NOT NULL)"),
            "{held:?}"
        );

        // Run again: nothing left to apply, nothing changes.
        migrate_to(&mut c, 10).await.expect("migrate to 10 again");
        assert_eq!(count(&c, "SELECT count(*) FROM deliveries").await, 1);
    }
}
