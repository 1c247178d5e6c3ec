//! Runs the store conformance suite against the SQLite driver, plus what only a file-backed
//! driver can show (data survives reopening).
use herald_store_sqlite::{Durability, SqliteStore};
use herald_store::Store;

async fn fresh() -> SqliteStore {
    let dir = tempfile::tempdir().expect("tempdir");
    // Keep the directory for the test's lifetime (the process exits soon after).
    let path = dir.keep().join("herald.db");
    SqliteStore::open(path, Durability::Normal).expect("open store")
}

herald_store::conformance_tests!(fresh());

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
