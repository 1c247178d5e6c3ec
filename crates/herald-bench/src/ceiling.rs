//! Ceiling: what this machine allows without Herald. A plain pooled keep-alive client POSTs
//! the delivery scenario's request (the same signed body and headers) to the same sink at
//! the same concurrency. Its rate is the delivery scenario's baseline; its round trip
//! (p50/p99) is the latency scenario's. Its CPU time per request (client and sink, one
//! exchange) is the unit the e2e scenario's CPU per notification is read in: a notification
//! makes two such exchanges (producer to API, engine to sink) besides Herald's own work.
use anyhow::Context as _;
use std::sync::Arc;

use herald_protocols::{OutgoingNotification, Profile};

use super::fixture::{EVENT_TYPE, PAYLOAD};
use super::load::{self, MakeRequest};
use super::procfs;
use super::report::Figure;
use super::sink::AckSink;
use super::Plan;

/// The unit of the ceiling's CPU figure.
pub const CPU_UNIT: &str = "µs CPU/request";

/// The ceiling's numbers, for the scenarios that compare with them.
#[derive(Clone, Copy, Debug)]
pub struct Ceiling {
    pub rate: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Microseconds of this process's CPU time (user + system, every thread) per request.
    pub cpu_us: f64,
}

pub async fn run(plan: &Plan, sink: &AckSink) -> anyhow::Result<(Ceiling, Vec<Figure>)> {
    // One attempt as Herald would sign it, sent over and over.
    let profile = Profile::StandardWebhooks;
    let (creds, _) = profile
        .create_credentials(&serde_json::Value::Null)
        .context("ceiling credentials")?;
    let now = herald_engine::now_ms().to_seconds().get();
    let notify_id = profile.new_notify_id();
    let encoded = profile
        .encode(
            &creds,
            &OutgoingNotification {
                notify_id: &notify_id,
                event_type: EVENT_TYPE,
                payload: PAYLOAD.as_bytes(),
                timestamp: herald_protocols::UnixSeconds::new(now),
                created_at: herald_protocols::UnixSeconds::new(now),
            },
        )
        .context("ceiling")?;
    let encoded = Arc::new(encoded);
    let url = sink.url("/notify");
    let make: MakeRequest = Arc::new(move |client, _| {
        let mut req = client
            .post(&url)
            .header("content-type", &encoded.content_type)
            .body(encoded.body.clone());
        for (k, v) in &encoded.headers {
            req = req.header(k, v);
        }
        req
    });
    let client = load::client(plan.concurrency)?;
    let cpu_before = procfs::cpu_seconds()?;
    let r = load::closed_loop(
        "ceiling",
        &client,
        plan.sizes.delivery,
        plan.concurrency,
        make,
    )
    .await?;
    let cpu = procfs::cpu_seconds()? - cpu_before;
    let ceiling = Ceiling {
        rate: r.rate(),
        p50_ms: r.round_trip_ms(50.0),
        p99_ms: r.round_trip_ms(99.0),
        cpu_us: cpu * 1e6 / r.done.max(1) as f64,
    };
    let c = plan.concurrency;
    let figures = vec![
        Figure::new(
            format!("plain client, {c} in flight"),
            ceiling.rate,
            "req/s",
        ),
        Figure::new("round trip p50", ceiling.p50_ms, "ms"),
        Figure::new("round trip p99", ceiling.p99_ms, "ms"),
        Figure::new(
            "CPU time of the whole process per request",
            ceiling.cpu_us,
            CPU_UNIT,
        ),
    ];
    Ok((ceiling, figures))
}
