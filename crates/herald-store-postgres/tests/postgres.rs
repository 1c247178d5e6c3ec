//! The store conformance suite against PostgreSQL: every case in a fresh database of this
//! process's throwaway cluster.
use herald_store_postgres::PgStore;

async fn fresh() -> PgStore {
    PgStore::connect(&herald_pgtest::database())
        .await
        .expect("connect to a fresh database")
}

herald_store::conformance_tests!(fresh());

/// One fresh database reconnected with various keyrings; its column read and written over a
/// plain connection.
struct Sealing {
    url: String,
}

async fn sealing() -> Sealing {
    Sealing {
        url: herald_pgtest::database(),
    }
}

impl Sealing {
    async fn client(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
        client
    }
}

#[async_trait::async_trait]
impl herald_store::conformance::SealingHarness for Sealing {
    type Store = PgStore;

    async fn open(&self, sealer: herald_store::Sealer) -> PgStore {
        PgStore::connect_sealed(&self.url, sealer)
            .await
            .expect("connect to the database")
    }

    async fn raw_credentials(&self, app_id: &str) -> String {
        self.client()
            .await
            .query_one("SELECT credentials FROM apps WHERE id = $1", &[&app_id])
            .await
            .expect("the app's row")
            .get(0)
    }

    async fn set_raw_credentials(&self, app_id: &str, raw: &str) {
        self.client()
            .await
            .execute(
                "UPDATE apps SET credentials = $2 WHERE id = $1",
                &[&app_id, &raw],
            )
            .await
            .expect("update the app's row");
    }

    async fn raw_source_keys(&self, source_id: &str) -> String {
        self.client()
            .await
            .query_one("SELECT keys FROM sources WHERE id = $1", &[&source_id])
            .await
            .expect("the source's row")
            .get(0)
    }

    async fn set_raw_source_keys(&self, source_id: &str, raw: &str) {
        self.client()
            .await
            .execute(
                "UPDATE sources SET keys = $2 WHERE id = $1",
                &[&source_id, &raw],
            )
            .await
            .expect("update the source's row");
    }
}

herald_store::sealing_conformance_tests!(sealing());

/// A server that is not there (a loopback port nobody listens on any more) is a storage
/// failure whose source is tokio-postgres's error, not a copy of its text.
#[tokio::test]
async fn a_store_whose_server_is_gone_fails_with_tokio_postgres_error_as_its_source() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let url = format!("postgres://herald@127.0.0.1:{port}/herald?connect_timeout=5");
    let err = match PgStore::connect(&url).await {
        Ok(_) => panic!("connected to a closed port"),
        Err(e) => e,
    };
    assert!(err.is_backend(), "{err:?}");
    let source = std::error::Error::source(&err).expect("the driver's error is kept");
    let pg = source
        .downcast_ref::<tokio_postgres::Error>()
        .unwrap_or_else(|| panic!("the source is tokio-postgres's error, not {source:?}"));
    assert!(pg.as_db_error().is_none(), "{pg:?}");
    // And tokio-postgres's own cause (the refused connection) is reachable below it.
    let io = std::error::Error::source(pg)
        .and_then(|e| e.downcast_ref::<std::io::Error>())
        .unwrap_or_else(|| panic!("the I/O cause is kept under {pg:?}"));
    assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused, "{io:?}");
}
