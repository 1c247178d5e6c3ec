//! What the driver's unit tests share: a new app to store, and how PostgreSQL planned a
//! prepared statement (several hot statements are written so that it keeps their generic
//! plans, and the tests check that it does).
use deadpool_postgres::GenericClient;
use herald_protocols::standard_webhooks::{KeyEntry, Keys};
use herald_protocols::{Credentials, Profile};
use herald_store::model::{NewApp, UnixMillis};

/// A Standard Webhooks app named `shop`, created at `now`.
pub(crate) fn shop(now: UnixMillis) -> NewApp {
    NewApp {
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
        now,
    }
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
    let mode = c
        .query_one("SHOW plan_cache_mode", &[])
        .await
        .expect("show");
    ((row.get(0), row.get(1)), mode.get(0))
}

/// The session's value of setting `name`.
pub(crate) async fn show(c: &impl GenericClient, name: &str) -> String {
    c.query_one(&format!("SHOW {name}"), &[])
        .await
        .expect("show")
        .get(0)
}
