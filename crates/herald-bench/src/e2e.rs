//! End to end: notifications POSTed through the HTTP API by 32 clients while the engine
//! delivers each one to the sink, every step durable. The figure is notifications delivered
//! per second, from the first POST to the last acknowledgement counted by the engines,
//! against the ceiling measured in the same run (a plain client posting to the same sink).
//!
//! On embedded SQLite always; on PostgreSQL too when one is at hand (`--postgres URL`, or a
//! throwaway cluster started from this machine's PostgreSQL binaries): first one node, then
//! three nodes on the same database with the producers spread over all three, which is how
//! a deployment that outgrew one machine runs. `--e2e-db` picks one database only.
//!
//! One node at a time holds an endpoint's deliveries (the rule that keeps per-endpoint
//! in-flight limits across nodes), so with the single endpoint three nodes deliver through
//! one. The PostgreSQL runs are therefore measured on two more shapes: the same total
//! load spread over [`SPREAD`] apps with one endpoint each (each notification still makes one
//! delivery), one node and then three, so that each node can hold some of the endpoints;
//! and every notification sent to its own `notify_url` (the sink, as a payment platform
//! names each merchant's URL in the notification) instead of an endpoint, which no rule
//! ties to a node.
//!
//! Each phase also reports the process's CPU time (user + system, every thread) per
//! notification over the same interval: producers, API, engine, store and sink all run in
//! this process, and on PostgreSQL the database's own processes are not counted. Unlike the
//! rate, other work on the machine barely moves it, so it is the figure to compare builds by
//! on a shared machine.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::ceiling::Ceiling;
use super::fixture;
use super::herald_api::{self, Herald};
use super::load::{self, MakeRequest};
use super::procfs;
use super::progress::Progress;
use super::report::{Figure, Target};
use super::sink::AckSink;
use super::{E2eDatabases, Plan};
use herald_server::server::Database;

/// Producers posting at once (the scenario's fixed setting, whatever `--concurrency` says).
const PRODUCERS: u32 = 32;
/// Endpoints (one app each) the spread shape's notifications go to.
pub const SPREAD: usize = 6;
/// The unit of the CPU figures.
pub const CPU_UNIT: &str = "µs CPU/notification";

/// Where a phase's notifications go.
#[derive(Clone, Copy, PartialEq)]
enum Shape {
    /// This many apps with one endpoint each.
    Endpoints(usize),
    /// Each notification's own `notify_url`.
    NotifyUrl,
}

impl Shape {
    /// What the phase's names add for this shape.
    fn label(self) -> String {
        match self {
            Shape::Endpoints(1) => String::new(),
            Shape::Endpoints(n) => format!(", {n} endpoints"),
            Shape::NotifyUrl => ", notify_url".into(),
        }
    }

    /// The apps (one endpoint each) the phase creates.
    fn apps(self) -> usize {
        match self {
            Shape::Endpoints(n) => n,
            Shape::NotifyUrl => 1,
        }
    }
}

/// What one phase measured.
struct Phase {
    /// Notifications delivered per second.
    rate: f64,
    /// Microseconds of this process's CPU time per notification.
    cpu_us: f64,
}

/// The CPU figure of a phase called `what`, against the ceiling's CPU per request: the
/// ratio is how many of the ceiling's exchanges one notification costs (two of them are its
/// own HTTP exchanges). With the cores saturated, a rate of `r` times the ceiling's allows
/// at most `1 / r` of them, so the SQLite target of 0.3x needs 3.3 or less.
fn cpu_figure(what: &str, phase: &Phase, ceiling: Ceiling) -> Figure {
    Figure::new(
        format!("{what}: CPU time of the whole process per notification"),
        phase.cpu_us,
        CPU_UNIT,
    )
    .against(
        "ceiling, per request",
        ceiling.cpu_us,
        super::ceiling::CPU_UNIT,
    )
}

pub async fn run(plan: &Plan, sink: &AckSink, ceiling: Ceiling) -> anyhow::Result<Vec<Figure>> {
    let n = plan.sizes.e2e;
    let mut figures = Vec::new();
    if plan.e2e_databases != E2eDatabases::Postgres {
        let dir = fixture::temp_dir(plan)?;
        let sqlite = Database::Sqlite(dir.path().join("e2e.db"));
        let phase = measure(plan, sink, "e2e: sqlite", &sqlite, 1, Shape::Endpoints(1)).await?;
        figures.push(
            Figure::new(
                format!("SQLite, {n} posted by {PRODUCERS} producers, each delivered"),
                phase.rate,
                "notifications/s",
            )
            .against("ceiling", ceiling.rate, "req/s")
            .target(Target::RatioAtLeast(0.3)),
        );
        figures.push(cpu_figure("SQLite", &phase, ceiling));
    }
    if plan.e2e_databases == E2eDatabases::Sqlite {
        return Ok(figures);
    }
    match postgres(plan) {
        Ok(url) => {
            for shape in [
                Shape::Endpoints(1),
                Shape::Endpoints(SPREAD),
                Shape::NotifyUrl,
            ] {
                let label = shape.label();
                let one = measure(
                    plan,
                    sink,
                    &format!("e2e: postgres, 1 node{label}"),
                    &Database::Postgres(if shape == Shape::Endpoints(1) {
                        url.clone()
                    } else {
                        postgres(plan)?
                    }),
                    1,
                    shape,
                )
                .await?;
                figures.push(
                    Figure::new(
                        format!("PostgreSQL, one node{label}"),
                        one.rate,
                        "notifications/s",
                    )
                    .against("ceiling", ceiling.rate, "req/s")
                    .target(Target::RatioAtLeast(0.08)),
                );
                figures.push(cpu_figure(
                    &format!("PostgreSQL, one node{label}"),
                    &one,
                    ceiling,
                ));
                let three = measure(
                    plan,
                    sink,
                    &format!("e2e: postgres, 3 nodes{label}"),
                    &Database::Postgres(postgres(plan)?),
                    3,
                    shape,
                )
                .await?;
                figures.push(
                    Figure::new(
                        format!("PostgreSQL, three nodes on one database{label}"),
                        three.rate,
                        "notifications/s",
                    )
                    .against(format!("one node{label}"), one.rate, "notifications/s")
                    .target(Target::RatioAtLeast(1.0)),
                );
                figures.push(cpu_figure(
                    &format!("PostgreSQL, three nodes{label}"),
                    &three,
                    ceiling,
                ));
            }
        }
        Err(why) if plan.e2e_databases == E2eDatabases::Postgres => {
            anyhow::bail!("e2e: no PostgreSQL to measure on ({why:#}); pass --postgres URL")
        }
        Err(why) => eprintln!("bench e2e: PostgreSQL skipped ({why:#}); pass --postgres URL"),
    }
    Ok(figures)
}

/// Posts `plan.sizes.e2e` notifications spread over `nodes` Herald nodes on `database` and
/// over the apps of `shape` (or all to the sink as their `notify_url`), and waits until the
/// engines counted every acknowledgement; returns notifications/s and the process's CPU
/// time per notification, both from the first POST to the last acknowledgement.
async fn measure(
    plan: &Plan,
    sink: &AckSink,
    label: &str,
    database: &Database,
    nodes: usize,
    shape: Shape,
) -> anyhow::Result<Phase> {
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
    let mut apps = vec![first.app_id.clone()];
    for _ in 1..shape.apps() {
        apps.push(first.add_app(plan, &client, &sink.url("/hook")).await?);
    }
    // Consecutive posts go to different nodes and, a round of nodes later, to the next app.
    let all: Vec<&Herald> = std::iter::once(&first).chain(others.iter()).collect();
    let urls: Arc<Vec<String>> = Arc::new(
        apps.iter()
            .flat_map(|app| all.iter().map(move |h| h.notifications_url_of(app)))
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
    let body = match shape {
        Shape::Endpoints(_) => herald_api::notification_body(),
        Shape::NotifyUrl => herald_api::notification_body_to(&sink.url("/hook")),
    };
    let turn = Arc::new(AtomicUsize::new(0));
    let make: MakeRequest = Arc::new(move |c, _| {
        let i = turn.fetch_add(1, Ordering::Relaxed) % urls.len();
        herald_api::post(c, &urls[i], &body)
    });
    let cpu_before = procfs::cpu_seconds()?;
    let started = Instant::now();
    let posted = load::closed_loop(&format!("{label}: post"), &client, n, PRODUCERS, make).await;
    let result = match posted {
        Ok(_) => {
            let progress =
                Progress::start(format!("{label}: deliver"), n, Arc::new(succeeded.clone()));
            let drained =
                fixture::wait_until(label, fixture::drain_timeout(n), || succeeded() >= n).await;
            let elapsed = started.elapsed().as_secs_f64().max(1e-9);
            let cpu = procfs::cpu_seconds().map(|after| after - cpu_before);
            progress.finish().await;
            drained.and_then(|_| {
                cpu.map(|cpu| Phase {
                    rate: n as f64 / elapsed,
                    cpu_us: cpu * 1e6 / n as f64,
                })
            })
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
        None => Ok(herald_pgtest::try_database()?),
    }
}
