//! Delivery: how fast the engine drains a backlog with every outcome durably recorded.
//! N notifications (to the sink's `notify_url`, a standard-webhooks app) are stored first;
//! then the engine starts and the clock runs until the engine counts N acknowledged
//! deliveries. Compared with the ceiling: the same requests without Herald, measured again
//! right after the drain; the baseline is the mean of the two, so that the machine's speed
//! drifting between them (seen on shared machines: 57k to 92k req/s within minutes) does not
//! decide the ratio, and the drift itself is shown.
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use herald_protocols::Profile;
use herald_store::Store;

use super::ceiling::Ceiling;
use super::fixture::{self, BenchEngine};
use super::progress::Progress;
use super::report::{Figure, Target};
use super::sink::AckSink;
use super::Plan;

/// Returns the rate (deliveries/s) and the figures.
pub async fn run(
    plan: &Plan,
    sink: &AckSink,
    ceiling: Ceiling,
) -> anyhow::Result<(f64, Vec<Figure>)> {
    let n = plan.sizes.delivery;
    let dir = fixture::temp_dir(plan)?;
    let store: Arc<dyn Store> = fixture::open_store(&dir.path().join("herald.db"))?;
    let app = fixture::create_app(store.as_ref(), "bench", Profile::StandardWebhooks).await?;
    let url = sink.url("/notify");
    fixture::insert("delivery: store", store.clone(), n, {
        let app_id = app.id.clone();
        Arc::new(move |_| fixture::notification(&app_id, Some(&url), herald_engine::now_ms()))
    })
    .await?;

    let served_before = sink.served.load(Ordering::Relaxed);
    let engine = BenchEngine::start(
        store.clone(),
        fixture::engine_config(plan.concurrency, Duration::from_secs(15)),
    )?;
    let stats = engine.stats.clone();
    let progress = Progress::start("delivery", n, {
        let stats = stats.clone();
        Arc::new(move || stats.succeeded.load(Ordering::Relaxed))
    });
    let elapsed = fixture::wait_until("delivery", fixture::drain_timeout(n), || {
        engine.succeeded() >= n
    })
    .await;
    progress.finish().await;
    engine.stop().await;
    let elapsed = elapsed?;
    // The engine's count is the figure; the sink's is the cross-check that every counted
    // acknowledgement answered a request that really arrived.
    let served = sink.served.load(Ordering::Relaxed) - served_before;
    if served < n {
        anyhow::bail!(
            "delivery: the engine counted {n} acknowledgements, the sink served {served}"
        );
    }

    let rate = n as f64 / elapsed.as_secs_f64().max(1e-9);
    let (after, _) = super::ceiling::run(plan, sink).await?;
    let baseline = (ceiling.rate + after.rate) / 2.0;
    let figures = vec![
        Figure::new(format!("{n} stored, durable"), rate, "deliveries/s")
            .against("ceiling, mean of before and after", baseline, "req/s")
            .target(Target::RatioAtLeast(0.5)),
        Figure::new("ceiling again, after the drain", after.rate, "req/s").against(
            "ceiling before",
            ceiling.rate,
            "req/s",
        ),
    ];
    Ok((rate, figures))
}
