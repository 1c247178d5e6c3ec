//! Ingest: notifications per second accepted through the HTTP API, each `202` after a
//! durable commit: first accepting alone (the app's endpoint disabled, so nothing is sent:
//! the target figure), then while the engine delivers every notification to the app's one
//! endpoint (accepting and sending at once share the cores). The baseline is the same server
//! stack doing nothing: an axum router whose handler reads the body and answers `202`, hit
//! by the same client at the same concurrency with the same request.
use anyhow::Context as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;

use super::herald_api::{self, Herald};
use super::load::{self, MakeRequest};
use super::report::{Figure, Target};
use super::sink::AckSink;
use super::Plan;

/// Returns the accept rate (notifications/s) and the figures.
pub async fn run(plan: &Plan, sink: &AckSink) -> anyhow::Result<(f64, Vec<Figure>)> {
    let n = plan.sizes.ingest;
    let client = load::client(plan.concurrency)?;
    let body = herald_api::notification_body();

    // Baseline: the no-op handler, same path, same headers, same body.
    let noop = NoopServer::start().await?;
    let url = format!("{}/v1/apps/app_bench/notifications", noop.base);
    let make: MakeRequest = {
        let body = body.clone();
        Arc::new(move |c, _| herald_api::post(c, &url, &body))
    };
    let baseline = load::closed_loop("ingest: no-op", &client, n, plan.concurrency, make).await?;
    drop(noop);

    // Accepting alone: the endpoint is disabled, so the API and the durable commit have
    // the machine to themselves (the target's condition).
    let herald = Herald::start(plan, &client, &sink.url("/hook"), false).await?;
    let url = herald.notifications_url();
    let make: MakeRequest = {
        let body = body.clone();
        Arc::new(move |c, _| herald_api::post(c, &url, &body))
    };
    let alone = load::closed_loop("ingest: accept only", &client, n, plan.concurrency, make).await;
    herald.stop().await;
    let alone = alone?;

    // Accepting while delivering every notification: both halves share the two cores.
    let herald = Herald::start(plan, &client, &sink.url("/hook"), true).await?;
    let url = herald.notifications_url();
    let make: MakeRequest = Arc::new(move |c, _| herald_api::post(c, &url, &body));
    let result =
        load::closed_loop("ingest: with delivery", &client, n, plan.concurrency, make).await;
    let delivered = herald.running.stats.succeeded.load(Ordering::Relaxed);
    herald.stop().await;
    let r = result?;

    let c = plan.concurrency;
    let figures = vec![
        Figure::new(
            format!("accepted, durable, {c} in flight"),
            alone.rate(),
            "notifications/s",
        )
        .against("no-op handler", baseline.rate(), "req/s")
        .target(Target::RatioAtLeast(0.3)),
        Figure::new(
            format!("accepted while delivering each, {c} in flight"),
            r.rate(),
            "notifications/s",
        )
        .against("no-op handler", baseline.rate(), "req/s"),
        Figure::new(
            "delivered meanwhile",
            delivered as f64 / r.elapsed.as_secs_f64().max(1e-9),
            "deliveries/s",
        )
        .against("accepted", r.rate(), "notifications/s"),
    ];
    Ok((r.rate(), figures))
}

/// The baseline server: axum on loopback, one route that reads the body and answers 202.
struct NoopServer {
    base: String,
    task: tokio::task::JoinHandle<()>,
}

impl NoopServer {
    async fn start() -> anyhow::Result<NoopServer> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("cannot bind the no-op server")?;
        let addr = listener.local_addr().context("no-op server address")?;
        let app = Router::new().route(
            "/v1/apps/{app_id}/notifications",
            post(|body: Bytes| async move {
                std::hint::black_box(body);
                StatusCode::ACCEPTED
            }),
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(NoopServer {
            base: format!("http://{addr}"),
            task,
        })
    }
}

impl Drop for NoopServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
