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
