//! Runs the store conformance suite against the SQLite driver, plus what only a file-backed
//! driver can show (data survives reopening).
use herald_store::{MetaStore, UnixMillis};
use herald_store_sqlite::{Durability, SqliteStore};

async fn fresh() -> SqliteStore {
    let dir = tempfile::tempdir().expect("tempdir");
    // Keep the directory for the test's lifetime (the process exits soon after).
    let path = dir.keep().join("herald.db");
    SqliteStore::open(path, Durability::Normal).expect("open store")
}

herald_store::conformance_tests!(fresh());

/// One SQLite file reopened with various keyrings; its column read and written directly.
struct Sealing {
    path: std::path::PathBuf,
}

async fn sealing() -> Sealing {
    let dir = tempfile::tempdir().expect("tempdir");
    Sealing {
        path: dir.keep().join("herald.db"),
    }
}

#[async_trait::async_trait]
impl herald_store::conformance::SealingHarness for Sealing {
    type Store = SqliteStore;

    async fn open(&self, sealer: herald_store::Sealer) -> SqliteStore {
        SqliteStore::open_sealed(&self.path, Durability::Normal, sealer).expect("open store")
    }

    async fn raw_credentials(&self, app_id: &str) -> String {
        let conn = rusqlite::Connection::open(&self.path).expect("open the file");
        conn.query_row(
            "SELECT credentials FROM apps WHERE id = ?1",
            [app_id],
            |r| r.get(0),
        )
        .expect("the app's row")
    }

    async fn set_raw_credentials(&self, app_id: &str, raw: &str) {
        let conn = rusqlite::Connection::open(&self.path).expect("open the file");
        conn.execute(
            "UPDATE apps SET credentials = ?2 WHERE id = ?1",
            [app_id, raw],
        )
        .expect("update the app's row");
    }

    async fn raw_source_keys(&self, source_id: &str) -> String {
        let conn = rusqlite::Connection::open(&self.path).expect("open the file");
        conn.query_row("SELECT keys FROM sources WHERE id = ?1", [source_id], |r| {
            r.get(0)
        })
        .expect("the source's row")
    }

    async fn set_raw_source_keys(&self, source_id: &str, raw: &str) {
        let conn = rusqlite::Connection::open(&self.path).expect("open the file");
        conn.execute(
            "UPDATE sources SET keys = ?2 WHERE id = ?1",
            [source_id, raw],
        )
        .expect("update the source's row");
    }
}

herald_store::sealing_conformance_tests!(sealing());

#[tokio::test]
async fn committed_data_survives_reopening_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.db");
    let id = {
        let store = SqliteStore::open(&path, Durability::Full).unwrap();
        store.set_meta("token", "abc").await.unwrap();
        "token"
    };
    let store = SqliteStore::open(&path, Durability::Full).unwrap();
    assert_eq!(store.get_meta(id).await.unwrap().as_deref(), Some("abc"));
}

/// Ops targets set under migration 7 (the URL and sealed secret on the app's row) are moved
/// into an internal app when the file is opened, once.
#[tokio::test]
async fn an_ops_target_stored_before_migration_8_is_moved_into_an_internal_app_at_open() {
    use herald_protocols::standard_webhooks::Keys;
    use herald_protocols::{Credentials, Profile};
    use herald_store::{AdminStore, NewApp, OpsStore, OpsTarget};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.db");
    let creds = Credentials::StandardWebhooks(Keys::single(
        "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD".into(),
    ));
    let app = {
        let store = SqliteStore::open(&path, Durability::Full).unwrap();
        let app = store
            .create_app(NewApp {
                name: "shop".into(),
                profile: Profile::StandardWebhooks,
                retry: None,
                ack: None,
                credentials: creds.clone(),
                now: UnixMillis::new(1_700_000_000_000),
            })
            .await
            .unwrap();
        store.close().await;
        app
    };
    // As migration 7 stored it (no keyring: the credentials' JSON as is).
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "UPDATE apps SET ops_url = 'https://ops.example/old', ops_credentials = ?2 WHERE id = ?1",
        [app.id.as_str(), &serde_json::to_string(&creds).unwrap()],
    )
    .unwrap();
    drop(conn);
    let expected = OpsTarget {
        url: "https://ops.example/old".into(),
        credentials: creds,
        retry: None,
    };
    for _ in 0..2 {
        let store = SqliteStore::open(&path, Durability::Full).unwrap();
        assert_eq!(
            store.get_app_ops(&app.id).await.unwrap(),
            Some(expected.clone())
        );
        store.close().await;
    }
    let conn = rusqlite::Connection::open(&path).unwrap();
    let (internal, legacy): (i64, i64) = conn
        .query_row(
            "SELECT (SELECT COUNT(*) FROM apps WHERE internal = 'ops'),
                    (SELECT COUNT(*) FROM apps WHERE ops_url IS NOT NULL)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(
        (internal, legacy),
        (1, 0),
        "moved once, the old columns cleared"
    );
}

mod single_process {
    use std::sync::Arc;

    use herald_store::*;
    use herald_store_sqlite::{Durability, SqliteStore};

    const T0: UnixMillis = UnixMillis::new(1_700_000_000_000);

    fn ms(n: u64) -> std::time::Duration {
        std::time::Duration::from_millis(n)
    }

    async fn app_and_node(store: &SqliteStore, claim_new: bool) -> (App, NodeId) {
        let app = store
            .create_app(conformance::new_app("shop", T0))
            .await
            .unwrap();
        let node: NodeId = Arc::from("node_local");
        store
            .register_node(
                LeaseParams {
                    node: node.clone(),
                    now: T0,
                    lease: ms(30_000),
                },
                claim_new,
            )
            .await
            .unwrap();
        (app, node)
    }

    async fn notify(store: &SqliteStore, app: &App) -> CreatedNotification {
        store
            .create_notification(NewNotification {
                app_id: app.id.clone(),
                event_type: "e".parse().unwrap(),
                payload: "{}".into(),
                notify_url: Some("https://merchant.example/notify".parse().unwrap()),
                idempotency_key: None,
                order_key: None,
                now: T0,
            })
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn new_deliveries_are_claimed_at_birth_and_handed_over_in_a_hint() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("h.db"), Durability::Normal).unwrap();
        let (app, node) = app_and_node(&store, true).await;
        let mut hints = store.hints(node.clone());
        let created = notify(&store, &app).await;
        match hints.recv().await {
            Some(Hint::Claimed(jobs)) => {
                assert_eq!(jobs.len(), 1);
                assert_eq!(jobs[0].id, created.deliveries[0].id);
            }
            other => panic!("expected Claimed, got {other:?}"),
        }
        let claim = ClaimParams {
            node,
            now: T0,
            horizon: T0 + ms(60_000),
            limit: 10,
        };
        assert!(
            store.claim(claim).await.unwrap().is_empty(),
            "already held by the node"
        );
    }

    #[tokio::test]
    async fn without_claims_at_birth_new_work_is_announced_for_claiming() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("h.db"), Durability::Normal).unwrap();
        let (app, node) = app_and_node(&store, false).await;
        let mut hints = store.hints(node.clone());
        notify(&store, &app).await;
        assert!(matches!(hints.recv().await, Some(Hint::Work)));
    }

    #[tokio::test]
    async fn a_second_process_cannot_open_the_same_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.db");
        let first = SqliteStore::open(&path, Durability::Normal).unwrap();
        let err = SqliteStore::open(&path, Durability::Normal)
            .err()
            .expect("the second open is refused");
        assert!(err.to_string().contains("another Herald process"), "{err}");
        drop(first);
    }

    #[tokio::test]
    async fn reopening_releases_what_the_previous_process_held() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.db");
        let created = {
            let store = SqliteStore::open(&path, Durability::Full).unwrap();
            let (app, _) = app_and_node(&store, true).await;
            notify(&store, &app).await
        };
        // The writer thread of the dropped store lets go of the file shortly.
        let store = loop {
            match SqliteStore::open(&path, Durability::Full) {
                Ok(s) => break s,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            }
        };
        let node: NodeId = Arc::from("node_next");
        store
            .register_node(
                LeaseParams {
                    node: node.clone(),
                    now: T0,
                    lease: ms(30_000),
                },
                false,
            )
            .await
            .unwrap();
        let jobs = store
            .claim(ClaimParams {
                node,
                now: T0,
                horizon: T0 + ms(60_000),
                limit: 10,
            })
            .await
            .unwrap();
        assert_eq!(jobs.len(), 1, "claimable at once, no lease to wait out");
        assert_eq!(jobs[0].id, created.deliveries[0].id);
    }
}

/// A path SQLite cannot open (here a directory) is a storage failure that keeps rusqlite's
/// error as its source, for code and reports that need the driver's own words.
#[tokio::test]
async fn a_store_opened_on_a_directory_fails_with_rusqlites_error_as_its_source() {
    let outer = tempfile::tempdir().expect("tempdir");
    let dir = outer.path().join("not-a-file");
    std::fs::create_dir(&dir).expect("mkdir");
    let err = match SqliteStore::open(&dir, Durability::Normal) {
        Ok(_) => panic!("a directory opened as a database"),
        Err(e) => e,
    };
    assert!(err.is_backend(), "{err:?}");
    let source = std::error::Error::source(&err).expect("the driver's error is kept");
    let sqlite = source
        .downcast_ref::<rusqlite::Error>()
        .unwrap_or_else(|| panic!("the source is rusqlite's error, not {source:?}"));
    assert!(
        matches!(sqlite, rusqlite::Error::SqliteFailure(..)),
        "{sqlite:?}"
    );
    assert!(err.to_string().starts_with("storage failure: "), "{err}");
}

/// An app of the standard-webhooks profile in a fresh file, for the writer's batch cases.
async fn store_with_app() -> (SqliteStore, std::path::PathBuf, herald_store::App) {
    use herald_protocols::standard_webhooks::Keys;
    use herald_protocols::{Credentials, Profile};
    use herald_store::{AdminStore, NewApp};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.keep().join("herald.db");
    let store = SqliteStore::open(&path, Durability::Normal).unwrap();
    let app = store
        .create_app(NewApp {
            name: "shop".into(),
            profile: Profile::StandardWebhooks,
            retry: None,
            ack: None,
            credentials: Credentials::StandardWebhooks(Keys::single(
                "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD".into(),
            )),
            now: UnixMillis::new(1_700_000_000_000),
        })
        .await
        .unwrap();
    (store, path, app)
}

fn to_url(app_id: &str, url: &str) -> herald_store::NewNotification {
    herald_store::NewNotification {
        app_id: app_id.into(),
        event_type: "trade.success".parse().unwrap(),
        payload: r#"{"amount": 100}"#.into(),
        notify_url: Some(url.parse().unwrap()),
        idempotency_key: None,
        order_key: None,
        now: UnixMillis::new(1_700_000_000_000),
    }
}

fn count(path: &std::path::Path, table: &str) -> i64 {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
        .unwrap()
}

/// Storing a notification runs without a savepoint of its own (see the writer's
/// `needs_savepoint`). When the database fails it after its notification row is written (here
/// a trigger raises on its delivery's insert), nothing of it stays: the batch is rolled back,
/// the caller gets the error, and the store goes on working.
#[tokio::test]
async fn a_notification_failing_after_its_first_write_leaves_nothing_behind() {
    use herald_store::AdminStore;

    let (store, path, app) = store_with_app().await;
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "CREATE TRIGGER fail_delivery BEFORE INSERT ON deliveries
         WHEN NEW.url = 'https://fail.example/hook'
         BEGIN SELECT RAISE(ABORT, 'the disk failed'); END;",
    )
    .unwrap();
    drop(conn);

    let err = store
        .create_notification(to_url(&app.id, "https://fail.example/hook"))
        .await
        .expect_err("the delivery's insert fails");
    assert!(err.to_string().contains("rolled back"), "{err}");
    assert_eq!(count(&path, "notifications"), 0);
    assert_eq!(count(&path, "deliveries"), 0);

    let ok = store
        .create_notification(to_url(&app.id, "https://ok.example/hook"))
        .await
        .expect("the next notification is stored");
    assert_eq!(ok.deliveries.len(), 1);
    assert_eq!(count(&path, "notifications"), 1);
    assert_eq!(count(&path, "deliveries"), 1);
    store.close().await;
}

/// A notification refused before it writes anything (an unknown app) fails alone: the
/// notifications committed in the same batches are all stored.
#[tokio::test]
async fn a_notification_refused_before_writing_fails_alone_in_its_batch() {
    use herald_store::{AdminStore, StoreError};

    let (store, path, app) = store_with_app().await;
    let store = std::sync::Arc::new(store);
    let mut tasks = Vec::new();
    for i in 0..200 {
        let store = store.clone();
        let app_id = if i % 2 == 0 {
            app.id.clone()
        } else {
            "app_unknown".to_string()
        };
        tasks.push(tokio::spawn(async move {
            store
                .create_notification(to_url(&app_id, "https://ok.example/hook"))
                .await
        }));
    }
    let (mut stored, mut refused) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => stored += 1,
            Err(StoreError::NotFound(what)) => {
                assert_eq!(what, "app");
                refused += 1
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!((stored, refused), (100, 100));
    assert_eq!(count(&path, "notifications"), 100);
    assert_eq!(count(&path, "deliveries"), 100);
    store.close().await;
}
