//! Latency: from accepting a notification to its first attempt reaching the receiver, at
//! half load: half the delivery rate measured in the same run, or half the ingest rate
//! when that is lower (beyond what the API accepts, a paced sender only measures the queue
//! in front of it, which grows for as long as the run lasts). Notifications are POSTed through the API on a fixed
//! schedule (open loop: a slow answer does not delay the next send), the client notes when
//! it started each POST and which notify id the `202` returned, and the sink notes when
//! each `webhook-id` first arrived; latency = arrival - POST start, so it includes the
//! durable commit before the `202`. The baseline is the ceiling's request round trip.
//! `--latency-rate` sets another load; a warning says when Herald could not keep the pace
//! (then the figures include queueing in front of the API).
use anyhow::Context as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald_protocols::Profile;
use tokio::sync::Semaphore;

use super::ceiling::Ceiling;
use super::fixture;
use super::herald_api::{self, Herald};
use super::load::{self, percentile};
use super::progress::Progress;
use super::report::{Figure, Target};
use super::sink::AckSink;
use super::Plan;

/// Fewest notifications sent, whatever the rate, so percentiles mean something.
const MIN_SENT: u64 = 50;
/// POSTs awaiting their answer at most. When Herald answers slower than the schedule, the
/// schedule waits here (and the measured rate shows it) instead of piling up requests.
const OUTSTANDING: usize = 1024;

pub async fn run(
    plan: &Plan,
    ceiling: Ceiling,
    delivery_rate: f64,
    ingest_rate: f64,
) -> anyhow::Result<Vec<Figure>> {
    // What the load is half of.
    let (full_name, full) = if plan.latency_rate.is_none() && ingest_rate < delivery_rate {
        ("ingest rate", ingest_rate)
    } else {
        ("delivery rate", delivery_rate)
    };
    let rate = plan.latency_rate.unwrap_or(full / 2.0).max(1.0);
    let total = ((rate * plan.sizes.latency_window.as_secs_f64()).ceil() as u64).max(MIN_SENT);
    let sink = AckSink::start(Profile::StandardWebhooks, true).await?;
    let arrivals = sink
        .arrivals
        .clone()
        .context("the latency sink does not record arrivals")?;
    let client = load::client(plan.concurrency)?;
    let herald = Herald::start(plan, &client, &sink.url("/hook"), true).await?;
    let (sent, send_time) = match paced(&client, &herald, rate, total).await {
        Ok(sent) => sent,
        Err(e) => {
            herald.stop().await;
            return Err(e);
        }
    };

    // Every first attempt should be in by now or very soon; wait for the stragglers.
    let waited = fixture::wait_until(
        "latency: first attempts",
        fixture::drain_timeout(total),
        || arrivals.lock().map(|a| a.len()).unwrap_or(0) >= sent.len(),
    )
    .await;
    herald.stop().await;
    waited?;

    let seen = arrivals
        .lock()
        .ok()
        .context("the arrivals table is poisoned")?;
    let mut micros = Vec::with_capacity(sent.len());
    for (id, t0) in &sent {
        let at = seen
            .get(id)
            .with_context(|| format!("latency: {id} never reached the sink"))?;
        micros.push(at.saturating_duration_since(*t0).as_micros() as u64);
    }
    micros.sort_unstable();
    let ms = |p| percentile(&micros, p) as f64 / 1000.0;
    let paced_rate = sent.len() as f64 / send_time.as_secs_f64().max(1e-9);
    if paced_rate < 0.95 * rate {
        eprintln!(
            "bench latency: warning: Herald accepted {paced_rate:.0}/s of the {rate:.0}/s asked; \
             the API is saturated, so these latencies include queueing (see --latency-rate)"
        );
    }
    Ok(vec![
        Figure::new("paced load", paced_rate, "notifications/s").against(
            full_name,
            full,
            "notifications/s",
        ),
        Figure::new("accept -> first attempt p50", ms(50.0), "ms").against(
            "ceiling round trip p50",
            ceiling.p50_ms,
            "ms",
        ),
        Figure::new("accept -> first attempt p99", ms(99.0), "ms")
            .against("ceiling round trip p99", ceiling.p99_ms, "ms")
            .target(Target::Below(10.0)),
        Figure::new("accept -> first attempt max", ms(100.0), "ms"),
    ])
}

/// Sends `total` notifications at `rate` per second; returns each notify id with the
/// instant its POST started, and how long the sending took.
async fn paced(
    client: &reqwest::Client,
    herald: &Herald,
    rate: f64,
    total: u64,
) -> anyhow::Result<(Vec<(String, Instant)>, Duration)> {
    let url: Arc<str> = herald.notifications_url().into();
    let body = herald_api::notification_body();
    let sent: Arc<Mutex<Vec<(String, Instant)>>> =
        Arc::new(Mutex::new(Vec::with_capacity(total as usize)));
    let first_error: Arc<Mutex<Option<String>>> = Arc::default();
    let outstanding = Arc::new(Semaphore::new(OUTSTANDING));
    let progress = Progress::start("latency: paced", total, {
        let sent = sent.clone();
        Arc::new(move || sent.lock().map(|s| s.len() as u64).unwrap_or(0))
    });

    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut i = 0u64;
    while i < total {
        ticker.tick().await;
        // Everything due by now on the schedule goes out now (the timer's resolution is
        // 1 ms; sending in small bursts keeps the schedule at any rate).
        let due = ((started.elapsed().as_secs_f64() * rate) as u64 + 1).min(total);
        while i < due {
            let permit = outstanding
                .clone()
                .acquire_owned()
                .await
                .context("latency")?;
            let req = herald_api::post(client, &url, &body);
            let (sent, first_error) = (sent.clone(), first_error.clone());
            tokio::spawn(async move {
                let t0 = Instant::now();
                match accepted_notify_id(req).await {
                    Ok(id) => {
                        if let Ok(mut s) = sent.lock() {
                            s.push((id, t0));
                        }
                    }
                    Err(e) => {
                        if let Ok(mut f) = first_error.lock() {
                            f.get_or_insert(format!("{e:#}"));
                        }
                    }
                }
                drop(permit);
            });
            i += 1;
        }
    }
    // All answers in: take back every permit.
    let _all = outstanding
        .acquire_many(OUTSTANDING as u32)
        .await
        .context("latency")?;
    let send_time = started.elapsed();
    progress.finish().await;
    if let Some(e) = first_error.lock().ok().and_then(|mut f| f.take()) {
        anyhow::bail!("latency: a POST failed: {e}");
    }
    let sent = std::mem::take(&mut *sent.lock().ok().context("the sent list is poisoned")?);
    Ok((sent, send_time))
}

/// Sends one notification and returns the notify id of its (only) delivery.
async fn accepted_notify_id(req: reqwest::RequestBuilder) -> anyhow::Result<String> {
    let resp = req.send().await?;
    let status = resp.status();
    let bytes = resp.bytes().await.context("reading the answer")?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).context("the answer is not JSON")?;
    if status.as_u16() != 202 {
        anyhow::bail!("answered {status}: {v}");
    }
    v["deliveries"][0]["notify_id"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("no deliveries[0].notify_id in {v}"))
}
