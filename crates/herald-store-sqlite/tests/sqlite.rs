//! Runs the store conformance suite against the SQLite driver, plus what only a file-backed
//! driver can show (data survives reopening).
use herald_store::MetaStore;
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
                now: 1_700_000_000_000,
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

    use herald_protocols::standard_webhooks::{KeyEntry, Keys};
    use herald_protocols::{Credentials, Profile};
    use herald_store::*;
    use herald_store_sqlite::{Durability, SqliteStore};

    const T0: Millis = 1_700_000_000_000;

    async fn app_and_node(store: &SqliteStore, claim_new: bool) -> (App, NodeId) {
        let app = store
            .create_app(NewApp {
                name: "shop".into(),
                profile: Profile::StandardWebhooks,
                retry: None,
                ack: None,
                credentials: Credentials::StandardWebhooks(Keys {
                    keys: vec![KeyEntry {
                        secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
                        expires_at: None,
                    }],
                }),
                now: T0,
            })
            .await
            .unwrap();
        let node: NodeId = Arc::from("node_local");
        store
            .register_node(
                LeaseParams {
                    node: node.clone(),
                    now: T0,
                    lease: 30_000,
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
            horizon: T0 + 60_000,
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
                    lease: 30_000,
                },
                false,
            )
            .await
            .unwrap();
        let jobs = store
            .claim(ClaimParams {
                node,
                now: T0,
                horizon: T0 + 60_000,
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
