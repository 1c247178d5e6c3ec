//! The store conformance suite against PostgreSQL: every case in a fresh database of this
//! process's throwaway cluster.
use herald_store_postgres::PgStore;

async fn fresh() -> PgStore {
    PgStore::connect(&herald_pgtest::database())
        .await
        .expect("connect to a fresh database")
}

herald_store::conformance_tests!(fresh());
