//! End to end: notifications POSTed through the HTTP API by 32 clients while the engine
//! delivers each one to the sink, every step durable. The figure is notifications delivered
//! per second, from the first POST to the last acknowledgement counted by the engines,
//! against the ceiling measured in the same run (a plain client posting to the same sink).
//!
//! On embedded SQLite always; on PostgreSQL too when one is at hand (`--postgres URL`, or a
//! throwaway cluster started from this machine's PostgreSQL binaries): first one node, then
//! three nodes on the same database with the producers spread over all three, which is how
//! a deployment that outgrew one machine runs.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::ceiling::Ceiling;
use super::fixture;
use super::herald_api::{self, Herald};
use super::load::{self, MakeRequest};
use super::progress::Progress;
use super::report::{Figure, Target};
use super::sink::AckSink;
use super::Plan;
use herald_server::server::Database;

/// Producers posting at once (the scenario's fixed setting, whatever `--concurrency` says).
const PRODUCERS: u32 = 32;

pub async fn run(plan: &Plan, sink: &AckSink, ceiling: Ceiling) -> anyhow::Result<Vec<Figure>> {
    let n = plan.sizes.e2e;
    let dir = fixture::temp_dir(plan)?;
    let sqlite = Database::Sqlite(dir.path().join("e2e.db"));
    let rate = measure(plan, sink, "e2e: sqlite", &sqlite, 1).await?;
    let mut figures = vec![Figure::new(
        format!("SQLite, {n} posted by {PRODUCERS} producers, each delivered"),
        rate,
        "notifications/s",
    )
    .against("ceiling", ceiling.rate, "req/s")
    .target(Target::RatioAtLeast(0.3))];
    match postgres(plan) {
        Ok(url) => {
            let one = measure(
                plan,
                sink,
                "e2e: postgres, 1 node",
                &Database::Postgres(url),
                1,
            )
            .await?;
            figures.push(
                Figure::new("PostgreSQL, one node", one, "notifications/s")
                    .against("ceiling", ceiling.rate, "req/s")
                    .target(Target::RatioAtLeast(0.08)),
            );
            let url = postgres(plan)?;
            let three = measure(
                plan,
                sink,
                "e2e: postgres, 3 nodes",
                &Database::Postgres(url),
                3,
            )
            .await?;
            figures.push(
                Figure::new(
                    "PostgreSQL, three nodes on one database",
                    three,
                    "notifications/s",
                )
                .against("one node", one, "notifications/s")
                .target(Target::RatioAtLeast(1.0)),
            );
        }
        Err(why) => eprintln!("bench e2e: PostgreSQL skipped ({why:#}); pass --postgres URL"),
    }
    Ok(figures)
}

/// Posts `plan.sizes.e2e` notifications spread over `nodes` Herald nodes on `database` and
/// waits until the engines counted every acknowledgement; returns notifications/s.
async fn measure(
    plan: &Plan,
    sink: &AckSink,
    label: &str,
    database: &Database,
    nodes: usize,
) -> anyhow::Result<f64> {
    let n = plan.sizes.e2e;
    let client = load::client(PRODUCERS)?;
    let first = Herald::start_on(plan, &client, database.clone(), &sink.url("/hook"), None).await?;
    let mut others = Vec::new();
    for _ in 1..nodes {
        others.push(
            Herald::start_on(
                plan,
                &client,
                database.clone(),
                &sink.url("/hook"),
                Some(first.app_id.clone()),
            )
            .await?,
        );
    }
    let urls: Arc<Vec<String>> = Arc::new(
        std::iter::once(first.notifications_url())
            .chain(others.iter().map(|h| h.notifications_url()))
            .collect(),
    );
    let stats: Vec<_> = std::iter::once(first.running.stats.clone())
        .chain(others.iter().map(|h| h.running.stats.clone()))
        .collect();
    let succeeded = move || -> u64 {
        stats
            .iter()
            .map(|s| s.succeeded.load(Ordering::Relaxed))
            .sum()
    };
    let body = herald_api::notification_body();
    let turn = Arc::new(AtomicUsize::new(0));
    let make: MakeRequest = Arc::new(move |c, _| {
        let i = turn.fetch_add(1, Ordering::Relaxed) % urls.len();
        herald_api::post(c, &urls[i], &body)
    });
    let started = Instant::now();
    let posted = load::closed_loop(&format!("{label}: post"), &client, n, PRODUCERS, make).await;
    let result = match posted {
        Ok(_) => {
            let progress =
                Progress::start(format!("{label}: deliver"), n, Arc::new(succeeded.clone()));
            let drained =
                fixture::wait_until(label, fixture::drain_timeout(n), || succeeded() >= n).await;
            progress.finish().await;
            drained.map(|_| n as f64 / started.elapsed().as_secs_f64().max(1e-9))
        }
        Err(e) => Err(e),
    };
    for h in others {
        h.stop().await;
    }
    first.stop().await;
    result
}

/// The PostgreSQL database to measure on: `--postgres`, else a new database on a
/// throwaway cluster started from this machine's PostgreSQL binaries (each run gets its
/// own); the reason when there is none.
fn postgres(plan: &Plan) -> anyhow::Result<String> {
    match &plan.postgres {
        Some(url) => Ok(url.clone()),
        None => herald_pgtest::try_database().map_err(anyhow::Error::msg),
    }
}
