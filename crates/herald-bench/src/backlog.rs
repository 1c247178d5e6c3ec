//! Backlog: what a large number of deliveries scheduled for later costs while they wait.
//! A million deliveries (`--quick`: 20,000) are stored due in a day, the engine is started
//! on them once and stopped; then Herald is restarted on that database in a fresh process
//! (`herald bench --backlog-probe DB`, the [`probe`] below), which reports:
//! - resident memory once the engine is up (VmRSS), against its own before opening
//!   anything: a fresh process, so nothing measured earlier in this run is counted;
//! - CPU while idle (utime + stime over 5 s, `--quick` 1 s) as a percentage of one core;
//! - the time from start (store open + engine start) to ready (the engine's first window
//!   load answered), against the same restart on an empty database.
use anyhow::Context as _;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_protocols::Profile;
use herald_store::Store;
use serde_json::{json, Value};

use super::fixture::{self, BenchEngine};
use super::procfs;
use super::report::{Figure, Target};
use super::sink::AckSink;
use super::Plan;

/// How far ahead the backlog is scheduled: far beyond the engine's in-memory window.
const AHEAD: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
const MIB: f64 = 1024.0 * 1024.0;

pub async fn run(plan: &Plan, sink: &AckSink) -> anyhow::Result<Vec<Figure>> {
    let n = plan.sizes.backlog;
    let empty_dir = fixture::temp_dir(plan)?;
    let empty_db = empty_dir.path().join("empty.db");
    drop(fixture::open_store(&empty_db)?);

    let dir = fixture::temp_dir(plan)?;
    let db = dir.path().join("herald.db");
    {
        let store: Arc<dyn Store> = fixture::open_store(&db)?;
        let app = fixture::create_app(store.as_ref(), "backlog", Profile::StandardWebhooks).await?;
        let url = sink.url("/later");
        let later = herald_engine::now_ms() + AHEAD;
        fixture::insert(
            "backlog: store",
            store.clone(),
            n,
            Arc::new(move |_| fixture::notification(&app.id, Some(&url), later)),
        )
        .await?;
        // The first start; then store and engine are dropped, and the probe restarts.
        let engine = BenchEngine::start(
            store.clone(),
            fixture::engine_config(plan.concurrency, Duration::from_secs(15)),
        )?;
        let ready = fixture::wait_until("backlog: first start", Duration::from_secs(120), || {
            engine.stats.claims.load(Ordering::Relaxed) >= 1
        })
        .await;
        engine.stop().await;
        ready?;
    }

    eprintln!("bench backlog: restarting on {n} scheduled deliveries in a fresh process");
    let full = run_probe(plan, &db, plan.sizes.idle_window).await?;
    eprintln!("bench backlog: restarting on the empty database in a fresh process");
    let empty = run_probe(plan, &empty_db, Duration::ZERO).await?;

    let num = |v: &Value, k: &str| {
        v[k].as_f64()
            .with_context(|| format!("backlog probe: no {k} in {v}"))
    };
    let rss = num(&full, "rss_up_bytes")? / MIB;
    let rss_before = num(&full, "rss_before_bytes")? / MIB;
    Ok(vec![
        Figure::new(format!("resident memory, {n} scheduled"), rss, "MiB")
            .against("before loading", rss_before, "MiB")
            .target(Target::Below(256.0)),
        Figure::new(
            "CPU while idle",
            num(&full, "idle_cpu_percent")?,
            "% of a core",
        )
        .target(Target::Below(1.0)),
        Figure::new(
            "restart to ready",
            num(&full, "ready_seconds")? * 1000.0,
            "ms",
        )
        .against(
            "empty database",
            num(&empty, "ready_seconds")? * 1000.0,
            "ms",
        )
        .target(Target::Below(5000.0)),
    ])
}

/// Runs [`probe`] in a fresh `herald` process and returns its report.
async fn run_probe(plan: &Plan, db: &Path, idle: Duration) -> anyhow::Result<Value> {
    let exe = std::env::current_exe().context("cannot find this binary")?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("bench")
        .arg("--backlog-probe")
        .arg(db)
        .arg("--probe-idle-ms")
        .arg(idle.as_millis().to_string())
        .arg("--concurrency")
        .arg(plan.concurrency.to_string())
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true);
    let out = tokio::time::timeout(idle + Duration::from_secs(300), cmd.output())
        .await
        .context("backlog probe: no answer after 5 minutes")?
        .context("backlog probe: cannot run")?;
    if !out.status.success() {
        anyhow::bail!("backlog probe failed ({})", out.status);
    }
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "backlog probe: bad report: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The restarted process: open the store at `db`, start the engine, wait until it is
/// ready, then watch memory and CPU for `idle`. Returns what `run` reads.
pub async fn probe(db: &Path, concurrency: u32, idle: Duration) -> anyhow::Result<Value> {
    if !db.exists() {
        anyhow::bail!("{} does not exist", db.display());
    }
    let rss_before = procfs::rss_bytes()?;
    let started = Instant::now();
    let store: Arc<dyn Store> = fixture::open_store(db)?;
    let engine = BenchEngine::start(
        store,
        fixture::engine_config(concurrency, Duration::from_secs(15)),
    )?;
    let stats = engine.stats.clone();
    let ready = fixture::wait_until("ready", Duration::from_secs(120), || {
        stats.claims.load(Ordering::Relaxed) >= 1
    })
    .await;
    let ready = match ready {
        Ok(_) => started.elapsed(),
        Err(e) => {
            engine.stop().await;
            return Err(e);
        }
    };
    let rss_ready = procfs::rss_bytes()?;
    let idle_cpu = if idle.is_zero() {
        None
    } else {
        let (cpu0, t0) = (procfs::cpu_seconds()?, Instant::now());
        tokio::time::sleep(idle).await;
        let used = procfs::cpu_seconds()? - cpu0;
        Some(100.0 * used / t0.elapsed().as_secs_f64())
    };
    let rss_up = rss_ready.max(procfs::rss_bytes()?);
    let in_memory = stats.in_memory.load(Ordering::Relaxed);
    engine.stop().await;
    Ok(json!({
        "rss_before_bytes": rss_before,
        "rss_up_bytes": rss_up,
        "ready_seconds": ready.as_secs_f64(),
        "idle_cpu_percent": idle_cpu,
        "in_memory": in_memory,
    }))
}
