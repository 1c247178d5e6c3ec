//! What the driver's unit tests share: a store on a fresh database, and how PostgreSQL
//! planned a prepared statement (several hot statements are written so that it keeps their
//! generic plans, and the tests check that it does) and a session's settings.
use deadpool_postgres::GenericClient;

/// A store on a fresh database of the tests' throwaway cluster.
pub(crate) async fn store() -> crate::PgStore {
    crate::PgStore::connect(&herald_pgtest::database())
        .await
        .expect("store")
}

/// How often this session ran the one prepared statement whose text is `LIKE pattern` on
/// its generic plan, and on a custom one; and the session's `plan_cache_mode` after.
pub(crate) async fn plans(c: &impl GenericClient, pattern: &str) -> ((i64, i64), String) {
    let row = c
        .query_one(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements
             WHERE statement LIKE $1 AND statement NOT LIKE '%pg_prepared_statements%'",
            &[&pattern],
        )
        .await
        .expect("the prepared statement");
    ((row.get(0), row.get(1)), show(c, "plan_cache_mode").await)
}

/// The session's value of setting `name`.
pub(crate) async fn show(c: &impl GenericClient, name: &str) -> String {
    c.query_one(&format!("SHOW {name}"), &[])
        .await
        .expect("show")
        .get(0)
}

/// The first column of every row `sql` answers, as text (an `EXPLAIN`'s plan lines, say).
pub(crate) async fn lines(c: &impl GenericClient, sql: &str) -> Vec<String> {
    c.query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| r.get(0))
        .collect()
}
