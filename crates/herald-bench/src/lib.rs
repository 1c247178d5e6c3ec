//! `herald bench`: measures Herald on this machine against baselines measured in the same
//! run, and reports each figure with its ratio and its target. Owns the scenario
//! list, the sizes (full and `--quick`), and running the chosen scenarios in order; the
//! command line is the `herald` binary's `cmd::bench`, and Herald itself is `herald-server`,
//! started in process.
//!
//! One file per scenario ([`ceiling`], [`delivery`], [`ingest`], [`e2e`], [`latency`],
//! [`isolation`], [`backlog`], [`profiles`]), and the pieces they share: the loopback sinks
//! ([`sink`]), the closed-loop client ([`load`]), stores and engines ([`fixture`]), Herald
//! through its HTTP API ([`herald_api`]), `/proc` readings ([`procfs`]), the progress line
//! ([`progress`]) and the results ([`report`]).
//!
//! Everything runs in this process on loopback, on the same runtime, so Herald, its sinks
//! and its clients share the same cores, exactly as the baselines do. Completions are
//! counted from the engine's own counters, not from the sender's side.
use anyhow::Context as _;
pub mod backlog;
mod ceiling;
mod delivery;
mod e2e;
mod fixture;
mod herald_api;
mod ingest;
mod isolation;
mod latency;
mod load;
mod procfs;
mod profiles;
mod progress;
pub mod report;
mod sink;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use herald_protocols::Profile;

use self::report::{Report, ScenarioReport};
use self::sink::AckSink;

/// The scenarios, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Scenario {
    /// A plain keep-alive client against the sink: what the machine allows, and the CPU
    /// time one request costs.
    Ceiling,
    /// Stored notifications drained by the engine, every outcome durable.
    Delivery,
    /// Notifications accepted through the HTTP API: alone, then while they are delivered.
    Ingest,
    /// Notifications posted through the API by 32 producers and delivered, end to end, on
    /// SQLite and (when at hand) PostgreSQL with one and three nodes; each phase's CPU time
    /// per notification is also shown in the ceiling's requests.
    E2e,
    /// Accept to first attempt at half load.
    Latency,
    /// A healthy endpoint's rate while 100 endpoints hang.
    Isolation,
    /// Memory, idle CPU and restart time with deliveries scheduled for later.
    Backlog,
    /// Signing cost of each wire profile.
    Profiles,
}

impl Scenario {
    pub const ALL: [Scenario; 8] = [
        Scenario::Ceiling,
        Scenario::Delivery,
        Scenario::Ingest,
        Scenario::E2e,
        Scenario::Latency,
        Scenario::Isolation,
        Scenario::Backlog,
        Scenario::Profiles,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Ceiling => "ceiling",
            Scenario::Delivery => "delivery",
            Scenario::Ingest => "ingest",
            Scenario::E2e => "e2e",
            Scenario::Latency => "latency",
            Scenario::Isolation => "isolation",
            Scenario::Backlog => "backlog",
            Scenario::Profiles => "profiles",
        }
    }

    /// The scenarios whose results this one compares with (they run first).
    fn needs(self) -> &'static [Scenario] {
        match self {
            Scenario::Delivery | Scenario::E2e => &[Scenario::Ceiling],
            Scenario::Latency => &[Scenario::Ceiling, Scenario::Delivery, Scenario::Ingest],
            _ => &[],
        }
    }
}

/// How much each scenario does.
#[derive(Clone, Debug)]
pub struct Sizes {
    /// Requests of the ceiling and notifications of the delivery scenario.
    pub delivery: u64,
    /// Notifications posted in the ingest scenario (and its no-op baseline).
    pub ingest: u64,
    /// Notifications posted and delivered in each end-to-end run.
    pub e2e: u64,
    /// How long the latency scenario posts.
    pub latency_window: Duration,
    /// Deliveries to the healthy endpoint, in each isolation measurement.
    pub isolation: u64,
    /// Isolation measurements of each kind (alone, beside hanging endpoints), interleaved;
    /// the medians are reported.
    pub isolation_rounds: usize,
    /// Deliveries scheduled for later in the backlog scenario.
    pub backlog: u64,
    /// How long idle CPU is watched.
    pub idle_window: Duration,
    /// How long each profile's signing loop runs.
    pub profile_window: Duration,
}

impl Sizes {
    pub fn full() -> Sizes {
        Sizes {
            delivery: 100_000,
            ingest: 50_000,
            e2e: 30_000,
            latency_window: Duration::from_secs(10),
            isolation: 50_000,
            isolation_rounds: 5,
            backlog: 1_000_000,
            idle_window: Duration::from_secs(5),
            profile_window: Duration::from_secs(1),
        }
    }

    /// A few seconds per scenario, even in a debug build.
    pub fn quick() -> Sizes {
        Sizes {
            delivery: 2_000,
            ingest: 1_000,
            e2e: 1_000,
            latency_window: Duration::from_secs(2),
            isolation: 1_000,
            isolation_rounds: 1,
            backlog: 20_000,
            idle_window: Duration::from_secs(1),
            profile_window: Duration::from_millis(200),
        }
    }
}

/// What to run and how.
#[derive(Clone, Debug)]
pub struct Plan {
    pub quick: bool,
    /// Requests in flight: the clients' concurrency and Herald's in-flight limit toward
    /// the sink.
    pub concurrency: u32,
    pub sizes: Sizes,
    /// The latency scenario's load, notifications/s; `None`: half the delivery rate, or half
    /// the ingest rate when that is lower.
    pub latency_rate: Option<f64>,
    /// Where temporary databases go.
    pub dir: PathBuf,
    /// The PostgreSQL database of the end-to-end scenario's PostgreSQL runs; `None`: a
    /// throwaway cluster when this machine has PostgreSQL, else SQLite only.
    pub postgres: Option<String>,
    /// The databases the e2e scenario measures on.
    pub e2e_databases: E2eDatabases,
    pub scenarios: BTreeSet<Scenario>,
}

/// The databases the e2e scenario measures on (`--e2e-db`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum E2eDatabases {
    /// SQLite, then PostgreSQL when one is at hand.
    #[default]
    All,
    /// SQLite only.
    Sqlite,
    /// PostgreSQL only (one node, then three); fails when none is at hand.
    Postgres,
}

impl Plan {
    /// The chosen scenarios (all when none is chosen) and those they compare with.
    pub fn select(chosen: &[Scenario]) -> BTreeSet<Scenario> {
        let mut out = BTreeSet::new();
        let mut todo: Vec<Scenario> = if chosen.is_empty() {
            Scenario::ALL.to_vec()
        } else {
            chosen.to_vec()
        };
        while let Some(s) = todo.pop() {
            if out.insert(s) {
                todo.extend_from_slice(s.needs());
            }
        }
        out
    }
}

/// Runs the plan's scenarios in order; the first one that cannot run ends the bench.
pub async fn run(plan: &Plan) -> anyhow::Result<Report> {
    // The sink of the ceiling, delivery, ingest, isolation and backlog scenarios, shared
    // so the ceiling and Herald are measured against the very same receiver.
    let sink = AckSink::start(Profile::StandardWebhooks, false).await?;
    let mut ceiling = None;
    let mut delivery_rate = None;
    let mut ingest_rate = None;
    let mut scenarios = Vec::new();
    for &s in &plan.scenarios {
        eprintln!("bench {}: starting", s.name());
        let started = Instant::now();
        let figures = match s {
            Scenario::Ceiling => {
                let (c, figures) = ceiling::run(plan, &sink).await?;
                ceiling = Some(c);
                figures
            }
            Scenario::Delivery => {
                let c = ceiling.context("delivery needs the ceiling")?;
                let (rate, figures) = delivery::run(plan, &sink, c).await?;
                delivery_rate = Some(rate);
                figures
            }
            Scenario::Ingest => {
                let (rate, figures) = ingest::run(plan, &sink).await?;
                ingest_rate = Some(rate);
                figures
            }
            Scenario::E2e => {
                let c = ceiling.context("e2e needs the ceiling")?;
                e2e::run(plan, &sink, c).await?
            }
            Scenario::Latency => {
                let c = ceiling.context("latency needs the ceiling")?;
                let delivery = delivery_rate.context("latency needs the delivery rate")?;
                let ingest = ingest_rate.context("latency needs the ingest rate")?;
                latency::run(plan, c, delivery, ingest).await?
            }
            Scenario::Isolation => isolation::run(plan, &sink).await?,
            Scenario::Backlog => backlog::run(plan, &sink).await?,
            Scenario::Profiles => profiles::run(plan).await?,
        };
        let seconds = started.elapsed().as_secs_f64();
        eprintln!("bench {}: done in {seconds:.1}s", s.name());
        scenarios.push(ScenarioReport {
            name: s.name(),
            seconds,
            figures,
        });
    }
    Ok(Report {
        quick: plan.quick,
        release: !cfg!(debug_assertions),
        concurrency: plan.concurrency,
        scenarios,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scenario_brings_what_it_compares_with() {
        let s = Plan::select(&[Scenario::Latency]);
        assert_eq!(
            s.into_iter().collect::<Vec<_>>(),
            vec![
                Scenario::Ceiling,
                Scenario::Delivery,
                Scenario::Ingest,
                Scenario::Latency
            ]
        );
        assert_eq!(Plan::select(&[]).len(), Scenario::ALL.len());
        assert_eq!(
            Plan::select(&[Scenario::Profiles, Scenario::Backlog])
                .into_iter()
                .collect::<Vec<_>>(),
            vec![Scenario::Backlog, Scenario::Profiles]
        );
    }

    #[test]
    fn names_match_the_command_line() {
        use clap::ValueEnum;
        for s in Scenario::ALL {
            let v = s.to_possible_value().map(|v| v.get_name().to_string());
            assert_eq!(v.as_deref(), Some(s.name()));
        }
    }
}
