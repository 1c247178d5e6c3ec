//! Isolation: a healthy endpoint keeps its delivery rate while 100 other endpoints hang.
//! Measured the same way, one right after the other: the healthy endpoint alone, then
//! beside 100 endpoints (of another app) whose sink accepts every connection and never
//! answers, each endpoint holding its whole in-flight limit for the whole measurement (the
//! attempt timeout is longer than the run). Five rounds of the pair (`--quick`: one),
//! each on a fresh database; the medians are compared.
//!
//! Each time the engine is already running (and the hanging endpoints have filled their
//! slots) when M deliveries to the healthy endpoint are stored, all due at one instant T a
//! little later; the clock runs from T until the engine counts M acknowledgements. So the
//! figure is the steady state, not the start-up of 800 hung connections, and the insert
//! rate does not limit the drain.
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_protocols::Profile;
use herald_store::Store;

use super::fixture::{self, BenchEngine};
use super::progress::Progress;
use super::report::{Figure, Target};
use super::sink::{AckSink, HangSink};
use super::Plan;

/// Endpoints that never answer.
const HANGING: u64 = 100;
/// Their in-flight limit: the API's default for an endpoint.
const HANGING_IN_FLIGHT: u32 = 8;
/// Notifications to the hanging app; each fans out to every one of its endpoints, so each
/// endpoint has twice its limit pending and stays full.
const HANGING_NOTIFICATIONS: u64 = 2 * HANGING_IN_FLIGHT as u64;
/// Longer than any measurement: hung attempts stay hung until the sink lets go.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(600);

pub async fn run(plan: &Plan, sink: &AckSink) -> anyhow::Result<Vec<Figure>> {
    let m = plan.sizes.isolation;
    let rounds = plan.sizes.isolation_rounds.max(1);
    // Interleaved rounds and medians: a drain lasts about a second and is bound by fsync,
    // whose latency on a shared disk moves one drain by more than the 10% the target
    // allows, alone or not.
    let (mut alone, mut with, mut held) = (Vec::new(), Vec::new(), u64::MAX);
    for round in 1..=rounds {
        alone.push(phase(plan, sink, false, round).await?.rate);
        let w = phase(plan, sink, true, round).await?;
        eprintln!(
            "bench isolation: round {round}: alone {:.0}/s, beside hanging {:.0}/s",
            alone[alone.len() - 1],
            w.rate
        );
        with.push(w.rate);
        held = held.min(w.held);
    }
    let slots = HANGING * HANGING_IN_FLIGHT as u64;
    let of = if rounds > 1 {
        format!(", median of {rounds}")
    } else {
        String::new()
    };
    Ok(vec![
        Figure::new(
            format!("healthy endpoint, {m} deliveries, {HANGING} hanging{of}"),
            median(&mut with),
            "deliveries/s",
        )
        .against(format!("alone{of}"), median(&mut alone), "deliveries/s")
        .target(Target::RatioAtLeast(0.9)),
        Figure::new(
            "attempts held by hanging endpoints",
            held as f64,
            "attempts",
        )
        .against(
            format!("{HANGING} x {HANGING_IN_FLIGHT} in flight"),
            slots as f64,
            "attempts",
        ),
    ])
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

struct Measured {
    /// The healthy endpoint's deliveries per second.
    rate: f64,
    /// Connections the hanging sink held throughout (the fewest seen at T and at the end).
    held: u64,
}

/// One measurement on a fresh database, with a fresh hanging sink when `hanging` (so no
/// connection held by an earlier round is counted).
async fn phase(
    plan: &Plan,
    sink: &AckSink,
    hanging: bool,
    round: usize,
) -> anyhow::Result<Measured> {
    let label = match (hanging, plan.sizes.isolation_rounds > 1) {
        (true, true) => format!("isolation: with hanging {round}"),
        (true, false) => "isolation: with hanging".to_string(),
        (false, true) => format!("isolation: alone {round}"),
        (false, false) => "isolation: alone".to_string(),
    };
    let dir = fixture::temp_dir(plan)?;
    let store: Arc<dyn Store> = fixture::open_store(&dir.path().join("herald.db"))?;
    let good = fixture::create_app(store.as_ref(), "healthy", Profile::StandardWebhooks).await?;
    fixture::create_endpoint(
        store.as_ref(),
        &good.id,
        sink.url("/healthy"),
        plan.concurrency,
    )
    .await?;
    let hang = if hanging {
        Some(HangSink::start().await?)
    } else {
        None
    };
    if let Some(hang) = &hang {
        let bad = fixture::create_app(store.as_ref(), "hanging", Profile::StandardWebhooks).await?;
        for i in 0..HANGING {
            fixture::create_endpoint(
                store.as_ref(),
                &bad.id,
                hang.url(&format!("/e{i}")),
                HANGING_IN_FLIGHT,
            )
            .await?;
        }
        fixture::insert(
            "isolation: store hanging",
            store.clone(),
            HANGING_NOTIFICATIONS,
            Arc::new(move |_| fixture::notification(&bad.id, None, herald_engine::now_ms())),
        )
        .await?;
    }

    let engine = BenchEngine::start(
        store.clone(),
        fixture::engine_config(plan.concurrency, ATTEMPT_TIMEOUT),
    )?;
    let measured = measure(plan, &engine, store, &good.id, hang.as_ref(), &label).await;
    engine.stop().await;
    // Closing the held connections ends the hung attempts at once.
    if let Some(hang) = hang {
        hang.stop();
    }
    measured
}

async fn measure(
    plan: &Plan,
    engine: &BenchEngine,
    store: Arc<dyn Store>,
    app_id: &str,
    hanging: Option<&HangSink>,
    label: &str,
) -> anyhow::Result<Measured> {
    let m = plan.sizes.isolation;
    let slots = HANGING * HANGING_IN_FLIGHT as u64;
    let held = || hanging.map(|h| h.open.load(Ordering::Relaxed)).unwrap_or(0);
    if hanging.is_some() {
        fixture::wait_until(
            "isolation: hanging endpoints filling their slots",
            Duration::from_secs(60),
            || held() >= slots,
        )
        .await?;
    }
    // T: far enough ahead for the inserts (at 20,000/s, about half the usual rate).
    let margin = Duration::from_secs(1) + Duration::from_micros(50 * m);
    let t_instant = Instant::now() + margin;
    let t_ms = herald_engine::now_ms() + margin;
    let app_id = app_id.to_string();
    fixture::insert(
        "isolation: store healthy",
        store,
        m,
        Arc::new(move |_| fixture::notification(&app_id, None, t_ms)),
    )
    .await?;
    if Instant::now() >= t_instant {
        anyhow::bail!(
            "{label}: storing {m} deliveries took longer than the {margin:?} allowed \
             before they fall due"
        );
    }
    tokio::time::sleep_until(t_instant.into()).await;
    let held_at_t = held();
    let progress = Progress::start(label, m, {
        let stats = engine.stats.clone();
        Arc::new(move || stats.succeeded.load(Ordering::Relaxed))
    });
    // Hanging deliveries never succeed, so the engine's count is the healthy endpoint's.
    let done =
        fixture::wait_until(label, fixture::drain_timeout(m), || engine.succeeded() >= m).await;
    let elapsed = t_instant.elapsed();
    progress.finish().await;
    done?;
    Ok(Measured {
        rate: m as f64 / elapsed.as_secs_f64().max(1e-9),
        held: held_at_t.min(held()),
    })
}
