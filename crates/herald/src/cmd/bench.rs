//! `herald bench`: its arguments and help, the refusal to measure a debug build, and the
//! output (the table, or `--json`). The scenarios are in the `herald-bench` crate.
use anyhow::Context as _;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use herald_bench::{E2eDatabases, Plan, Scenario, Sizes};

const SCENARIOS: &str = "\
Scenarios (every figure is shown with a baseline measured in the same run, their ratio,
and its target; targets are reported, not enforced):
  ceiling    A plain pooled keep-alive client POSTs the delivery request (same body, same
             signature headers) to a loopback sink at --concurrency: what the machine
             allows without Herald. Its round trip is the latency baseline.
  delivery   --count notifications stored (SQLite, synchronous=FULL), then the engine
             started and timed until it counts every acknowledgement: deliveries/s with
             every outcome durable, against the mean of the ceiling and the ceiling
             measured again right after the drain. Target: >= 0.5x.
  ingest     Notifications/s accepted through the HTTP API (202 after a durable commit),
             first accepting alone (the app's endpoint disabled), then while the endpoint
             receives every one, against a no-op axum handler hit by the same client.
             Target (accepting alone): >= 0.3x the no-op.
  e2e        30,000 notifications (--quick: 1,000) POSTed through the API by 32
             producers while the engine delivers each to the sink: delivered/s from the
             first POST to the last acknowledgement, against the ceiling. On SQLite (target >= 0.3x), then on
             PostgreSQL (--postgres URL, or a throwaway cluster when this machine has
             PostgreSQL's binaries): one node (target >= 0.08x), and three nodes on one
             database with the producers spread over them (target: no slower than one);
             then both again with the load spread over 6 apps of one endpoint each (one
             node holds an endpoint's deliveries at a time, so one endpoint is one
             node's work). Each PostgreSQL run gets a fresh database on the throwaway
             cluster; with --postgres every run uses that one database, on top of the
             rows the runs before it left. --e2e-db sqlite (or postgres) measures on one
             database only. Each phase also reports this process's CPU time (user +
             system, /proc/self/stat) per notification, in µs: producers, API, engine,
             store and sink together (PostgreSQL's own processes not counted); other
             work on the machine barely moves it, unlike the rate.
  latency    Accept -> first attempt p50/p99/max while posting at half load (paced, open
             loop): half the delivery rate, or half the ingest rate when that is lower;
             --latency-rate sets another load. Against the ceiling's round trip.
             Target: p99 < 10 ms.
  isolation  A healthy endpoint's delivery rate while 100 endpoints accept and never
             answer, against its rate alone (medians of 5 interleaved rounds; --quick:
             1). Target: >= 0.9x.
  backlog    --backlog deliveries scheduled a day ahead; Herald restarted on them in a
             fresh process: resident memory (against before loading), CPU while idle,
             and start to ready (against an empty database). Targets: < 256 MiB,
             < 1% of a core, < 5 s.
  profiles   Signing cost of each wire profile (Profile::encode) on one core, against
             standard-webhooks.

Sinks, clients and Herald share this process and its cores, on loopback; databases are
temporary (under --dir) and removed afterwards. Progress goes to standard error every 2 s,
the table (or --json) to standard output. Exit status 0 unless a scenario cannot run.

Examples:
  cargo run --release -- bench
  herald bench --quick --json
  herald bench --scenario latency --concurrency 32";

/// Measure delivery, ingest, latency, isolation, backlog and signing cost against baselines
/// measured in the same run.
#[derive(Args, Debug)]
#[command(after_long_help = SCENARIOS)]
pub struct BenchArgs {
    /// Small sizes and short windows: every scenario in a few seconds (allowed in a debug
    /// build).
    #[arg(long)]
    pub quick: bool,
    /// Run only this scenario (repeatable); the scenarios it compares with run too.
    #[arg(long = "scenario", value_name = "NAME", value_enum)]
    pub scenarios: Vec<Scenario>,
    /// Print one JSON object (every figure, baseline, ratio, target and pass flag) instead
    /// of the table.
    #[arg(long)]
    pub json: bool,
    /// Requests in flight: the clients' concurrency and Herald's in-flight limit toward the
    /// sink.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub concurrency: u32,
    /// Requests of the ceiling and notifications of the delivery scenario [default: 100000;
    /// with --quick: 2000].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Deliveries scheduled in the backlog scenario [default: 1000000; with --quick: 20000].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub backlog: Option<u64>,
    /// Load of the latency scenario, notifications/s [default: half the delivery rate
    /// measured in the same run, or half the ingest rate when that is lower].
    #[arg(long, value_name = "PER_SECOND", value_parser = clap::value_parser!(u64).range(1..))]
    pub latency_rate: Option<u64>,
    /// PostgreSQL database for the e2e scenario's PostgreSQL runs, e.g.
    /// postgres://herald@127.0.0.1:5432/herald_bench [default: a throwaway cluster when
    /// this machine has PostgreSQL's server binaries, else SQLite only].
    #[arg(long, value_name = "URL")]
    pub postgres: Option<String>,
    /// The databases the e2e scenario measures on: all (SQLite, then PostgreSQL when one is
    /// at hand), sqlite, or postgres.
    #[arg(long = "e2e-db", value_name = "DB", value_enum, default_value_t = E2eDatabases::All)]
    pub e2e_databases: E2eDatabases,
    /// Directory for the temporary databases: put it on the disk you mean to measure
    /// [default: the system's temporary directory].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Measure a debug build anyway (its numbers mean little).
    #[arg(long)]
    pub allow_debug: bool,
    /// Internal: the backlog scenario's restarted process, on this database.
    #[arg(long, value_name = "DB", hide = true)]
    pub backlog_probe: Option<PathBuf>,
    /// Internal: how long the backlog probe watches idle CPU, milliseconds.
    #[arg(long, value_name = "MS", hide = true, default_value_t = 5000)]
    pub probe_idle_ms: u64,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<bool> {
    if let Some(db) = &args.backlog_probe {
        let idle = Duration::from_millis(args.probe_idle_ms);
        let report = herald_bench::backlog::probe(db, args.concurrency, idle).await?;
        println!("{report}");
        return Ok(true);
    }
    if cfg!(debug_assertions) && !args.quick && !args.allow_debug {
        anyhow::bail!(
            "this is a debug build, whose numbers mean little: build with --release \
                    (cargo run --release -- bench), or pass --quick (a smoke run) or \
                    --allow-debug"
        );
    }
    let mut sizes = if args.quick {
        Sizes::quick()
    } else {
        Sizes::full()
    };
    if let Some(n) = args.count {
        sizes.delivery = n;
    }
    if let Some(n) = args.backlog {
        sizes.backlog = n;
    }
    let dir = args.dir.unwrap_or_else(std::env::temp_dir);
    if !dir.is_dir() {
        anyhow::bail!("--dir {} is not a directory", dir.display());
    }
    let plan = Plan {
        quick: args.quick,
        concurrency: args.concurrency,
        sizes,
        latency_rate: args.latency_rate.map(|r| r as f64),
        dir,
        postgres: args.postgres,
        e2e_databases: args.e2e_databases,
        scenarios: Plan::select(&args.scenarios),
    };
    let report = herald_bench::run(&plan).await?;
    if args.json {
        let text =
            serde_json::to_string_pretty(&report.json()).context("cannot print the report")?;
        println!("{text}");
    } else {
        print!("{}", report.table());
    }
    Ok(true)
}
