//! Runs the inbox conformance suite against both drivers (SQLite in a fresh file, PostgreSQL
//! in a fresh database of this process's throwaway cluster), plus what only one driver shows.
use std::sync::Arc;

use herald_inbox::{InboxError, InboxStore, NewOrder, OrderState, PgInbox, SqliteInbox};

mod sqlite {
    use super::*;

    async fn fresh() -> Arc<dyn InboxStore> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.keep().join("inbox.db");
        Arc::new(SqliteInbox::open(&path).expect("open inbox"))
    }

    herald_inbox::inbox_conformance_tests!(fresh());
}

mod postgres {
    use super::*;

    async fn fresh() -> Arc<dyn InboxStore> {
        let url = herald_pgtest::database();
        Arc::new(PgInbox::connect(&url).await.expect("connect inbox"))
    }

    herald_inbox::inbox_conformance_tests!(fresh());
}

fn order(no: &str) -> NewOrder {
    NewOrder {
        out_trade_no: no.into(),
        amount_minor: 100,
        currency: "CNY".into(),
        subject: "tea".into(),
    }
}

#[tokio::test]
async fn sqlite_inbox_survives_reopening_and_shares_a_file_with_the_delivery_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("herald.db");
    let _store =
        herald_store_sqlite::SqliteStore::open(&path, herald_store_sqlite::Durability::Full)
            .expect("delivery store");
    {
        let inbox = SqliteInbox::open(&path).expect("open");
        inbox.create_order(order("A1")).await.expect("create");
    }
    let inbox = SqliteInbox::open(&path).expect("reopen");
    let o = inbox.order("A1").await.expect("read").expect("kept");
    assert_eq!(o.state, OrderState::Unpaid);
}

#[tokio::test]
async fn postgres_migrations_run_once_when_two_nodes_connect_at_the_same_time() {
    let url = herald_pgtest::database();
    let (a, b) = tokio::join!(PgInbox::connect(&url), PgInbox::connect(&url));
    let (a, b) = (a.expect("first node"), b.expect("second node"));
    a.create_order(order("A1")).await.expect("create");
    let err = b.create_order(order("A1")).await.unwrap_err();
    assert!(matches!(err, InboxError::Conflict(_)), "{err}");
}

#[tokio::test]
async fn a_bad_postgres_url_is_a_clear_error() {
    let err = PgInbox::connect("postgres://herald@127.0.0.1:1/none")
        .await
        .err()
        .expect("no server on port 1");
    assert!(err.to_string().contains("cannot connect"), "{err}");
    let err = PgInbox::connect("not a url ===")
        .await
        .err()
        .expect("bad url");
    assert!(matches!(err, InboxError::BadUrl(_)), "{err}");
    assert!(
        err.to_string().starts_with("invalid: bad PostgreSQL URL"),
        "{err}"
    );
}

#[test]
fn order_states_round_trip_through_their_names() {
    for s in OrderState::ALL {
        assert_eq!(s.as_str().parse::<OrderState>(), Ok(s));
    }
    assert!("PAID".parse::<OrderState>().is_err());
}

/// Driver failures keep the driver's error as their source: an inbox opened on a directory
/// has rusqlite's, a PostgreSQL URL that does not parse has tokio-postgres's.
#[tokio::test]
async fn inbox_errors_keep_the_drivers_error_as_their_source() {
    let outer = tempfile::tempdir().expect("tempdir");
    let dir = outer.path().join("not-a-file");
    std::fs::create_dir(&dir).expect("mkdir");
    let err = match SqliteInbox::open(&dir) {
        Ok(_) => panic!("a directory opened as an inbox"),
        Err(e) => e,
    };
    assert!(matches!(err, InboxError::Backend { .. }), "{err:?}");
    let source = std::error::Error::source(&err).expect("rusqlite's error is kept");
    assert!(
        source.downcast_ref::<rusqlite::Error>().is_some(),
        "{source:?}"
    );

    let err = match PgInbox::connect("postgres://herald@127.0.0.1:notaport/db").await {
        Ok(_) => panic!("a bad URL connected"),
        Err(e) => e,
    };
    assert!(matches!(err, InboxError::BadUrl(_)), "{err:?}");
    let source = std::error::Error::source(&err).expect("the parser's error is kept");
    assert!(
        source.downcast_ref::<tokio_postgres::Error>().is_some(),
        "{source:?}"
    );
}
