//! `GET /metrics`: Herald's measurements in the Prometheus text format (0.0.4), written by
//! hand (a few counters, gauges and histograms need no library), and the API middleware
//! that counts requests by route template and gives each one a request id.
//!
//! `/metrics` needs no token, like `/healthz`: it shows only counts by profile, outcome,
//! route template, status and breaker state (no ids, URLs, payloads or secrets), and a
//! scraper then needs no admin credentials. Keep the API's port off the public internet,
//! or filter `/metrics` at the proxy, if even counts are not for everyone.
//!
//! Request ids: a request's `X-Request-Id` (1 to 128 visible ASCII characters) is kept,
//! otherwise one is generated (`req_<ulid>`); it is returned in the response's
//! `X-Request-Id` and is a field of the request's log span, so every log line the request
//! causes carries it.
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use herald_engine::metrics::HistogramSnapshot;
use herald_engine::EngineStats;
use herald_store::{Purged, Store};
use tracing::Instrument;

pub const REQUEST_ID: &str = "x-request-id";

/// What the API and the background tasks measure (the engine keeps its own).
#[derive(Debug, Default)]
pub struct ServerMetrics {
    /// API requests by (method, route template, status).
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    /// What retention purged since start.
    purged: Mutex<Purged>,
}

impl ServerMetrics {
    fn count_request(&self, method: &Method, route: &str, status: u16) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((method.as_str().to_string(), route.to_string(), status))
                .or_default() += 1;
        }
    }

    pub fn count_purged(&self, p: Purged) {
        if let Ok(mut m) = self.purged.lock() {
            m.add(p);
        }
    }
}

/// The state `/metrics` reads.
#[derive(Clone)]
pub struct MetricsState {
    pub server: Arc<ServerMetrics>,
    pub engine: Arc<EngineStats>,
    pub store: Arc<dyn Store>,
}

/// A request id from the client, when it is one we can echo and log safely.
fn client_request_id(req: &Request) -> Option<String> {
    let v = req.headers().get(REQUEST_ID)?.to_str().ok()?;
    (!v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .then(|| v.to_string())
}

/// The API middleware: request id, log span, and the request count by route template.
pub async fn observe(
    State(metrics): State<Arc<ServerMetrics>>,
    mut req: Request,
    next: Next,
) -> Response {
    let id = client_request_id(&req).unwrap_or_else(|| format!("req_{}", ulid::Ulid::new()));
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = req.method().clone();
    if let Ok(v) = HeaderValue::from_str(&id) {
        req.headers_mut().insert(REQUEST_ID, v.clone());
    }
    let span = tracing::info_span!("request", request_id = %id, %method, %route);
    let started = Instant::now();
    let mut resp = next.run(req).instrument(span.clone()).await;
    let status = resp.status().as_u16();
    metrics.count_request(&method, &route, status);
    span.in_scope(|| {
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        if resp.status().is_server_error() {
            tracing::warn!(status, duration_ms = ms, "request failed");
        } else {
            tracing::debug!(status, duration_ms = ms, "request");
        }
    });
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    resp
}

/// `GET /metrics`.
pub async fn render(State(state): State<MetricsState>) -> Response {
    let mut out = String::with_capacity(8 * 1024);
    let backlog = state.store.pending_count().await;
    let breakers = state.store.breaker_counts().await;
    write_all(&mut out, &state, backlog.ok(), breakers.ok());
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

fn write_all(
    out: &mut String,
    state: &MetricsState,
    backlog: Option<u64>,
    breakers: Option<Vec<(herald_store::BreakerState, u64)>>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let e = &state.engine;
    let m = &e.metrics;

    header(out, "herald_deliveries_total", "counter",
        "Deliveries that ended, by the app's profile and outcome (succeeded, failed: schedule spent).");
    for (labels, n) in m.deliveries.snapshot() {
        sample(
            out,
            "herald_deliveries_total",
            &[("profile", labels[0]), ("outcome", labels[1])],
            n as f64,
        );
    }
    header(out, "herald_attempts_total", "counter",
        "HTTP attempts by profile and result (succeeded, retry: not acknowledged and tried again later, failed: not acknowledged, schedule spent).");
    for (labels, n) in m.attempts.snapshot() {
        sample(
            out,
            "herald_attempts_total",
            &[("profile", labels[0]), ("result", labels[1])],
            n as f64,
        );
    }
    header(
        out,
        "herald_attempt_duration_seconds",
        "histogram",
        "Duration of an attempt's HTTP exchange, response included.",
    );
    histogram(
        out,
        "herald_attempt_duration_seconds",
        &[],
        &m.attempt_seconds.snapshot(),
    );
    header(
        out,
        "herald_store_commit_duration_seconds",
        "histogram",
        "Time for the store to commit an attempt's outcome (group-committed with others).",
    );
    histogram(
        out,
        "herald_store_commit_duration_seconds",
        &[("op", "complete")],
        &m.store_commit_seconds.snapshot(),
    );

    if let Some(n) = backlog {
        header(
            out,
            "herald_deliveries_pending",
            "gauge",
            "Deliveries pending in the store (due now or later), on every node.",
        );
        sample(out, "herald_deliveries_pending", &[], n as f64);
    }
    header(
        out,
        "herald_attempts_in_flight",
        "gauge",
        "Attempts this node has in flight.",
    );
    sample(
        out,
        "herald_attempts_in_flight",
        &[],
        e.in_flight.load(Relaxed) as f64,
    );
    header(
        out,
        "herald_deliveries_in_memory",
        "gauge",
        "Deliveries this node holds in memory (claimed, due within the window).",
    );
    sample(
        out,
        "herald_deliveries_in_memory",
        &[],
        e.in_memory.load(Relaxed) as f64,
    );

    if let Some(counts) = breakers {
        header(
            out,
            "herald_endpoints",
            "gauge",
            "Endpoints by breaker state (closed, open, disabled).",
        );
        for state in [
            herald_store::BreakerState::Closed,
            herald_store::BreakerState::Open,
            herald_store::BreakerState::Disabled,
        ] {
            let n = counts
                .iter()
                .find(|(s, _)| *s == state)
                .map(|c| c.1)
                .unwrap_or(0);
            sample(
                out,
                "herald_endpoints",
                &[("breaker_state", state.as_str())],
                n as f64,
            );
        }
    }
    header(out, "herald_breaker_transitions_total", "counter",
        "Endpoint breaker transitions recorded by this node (opened, reopened, recovered, disabled).");
    for (labels, n) in m.breaker_transitions.snapshot() {
        sample(
            out,
            "herald_breaker_transitions_total",
            &[("transition", labels[0])],
            n as f64,
        );
    }
    header(
        out,
        "herald_ops_notifications_total",
        "counter",
        "Operational notifications queued by event type (committed with the breaker transition this node recorded; their deliveries count in herald_deliveries_total).",
    );
    for (labels, n) in m.ops_notifications.snapshot() {
        sample(
            out,
            "herald_ops_notifications_total",
            &[("event_type", labels[0]), ("result", labels[1])],
            n as f64,
        );
    }

    header(
        out,
        "herald_http_requests_total",
        "counter",
        "API requests by method, route template (not the raw path) and status.",
    );
    let requests = state
        .server
        .requests
        .lock()
        .map(|m| m.clone())
        .unwrap_or_default();
    for ((method, route, status), n) in requests {
        let status = status.to_string();
        sample(
            out,
            "herald_http_requests_total",
            &[("method", &method), ("route", &route), ("status", &status)],
            n as f64,
        );
    }
    header(
        out,
        "herald_purged_total",
        "counter",
        "What retention removed since start (notifications, deliveries, attempts).",
    );
    let purged = state.server.purged.lock().map(|p| *p).unwrap_or_default();
    for (kind, n) in [
        ("notifications", purged.notifications),
        ("deliveries", purged.deliveries),
        ("attempts", purged.attempts),
    ] {
        sample(out, "herald_purged_total", &[("kind", kind)], n as f64);
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(
        out,
        "# HELP {name} {}",
        help.replace('\\', "\\\\").replace('\n', "\\n")
    );
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A label value escaped as the text format requires.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], v: f64) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, val)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{k}=\"{}\"", escape(val));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {v}");
}

fn histogram(out: &mut String, name: &str, labels: &[(&str, &str)], h: &HistogramSnapshot) {
    let bucket = format!("{name}_bucket");
    for (le, n) in &h.buckets {
        let le = le.to_string();
        let mut l = labels.to_vec();
        l.push(("le", &le));
        sample(out, &bucket, &l, *n as f64);
    }
    let mut l = labels.to_vec();
    l.push(("le", "+Inf"));
    sample(out, &bucket, &l, h.count as f64);
    sample(out, &format!("{name}_sum"), labels, h.sum_seconds);
    sample(out, &format!("{name}_count"), labels, h.count as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        sample(&mut out, "m", &[("route", "a\"b\\c\nd")], 1.0);
        assert_eq!(out, "m{route=\"a\\\"b\\\\c\\nd\"} 1\n");
    }

    #[test]
    fn histograms_have_cumulative_buckets_an_inf_bucket_sum_and_count() {
        let h = herald_engine::metrics::Histogram::new(&[0.1, 1.0]);
        h.observe(std::time::Duration::from_millis(50));
        h.observe(std::time::Duration::from_millis(500));
        h.observe(std::time::Duration::from_secs(5));
        let mut out = String::new();
        histogram(&mut out, "x", &[("op", "c")], &h.snapshot());
        assert_eq!(
            out,
            "x_bucket{op=\"c\",le=\"0.1\"} 1\nx_bucket{op=\"c\",le=\"1\"} 2\n\
             x_bucket{op=\"c\",le=\"+Inf\"} 3\nx_sum{op=\"c\"} 5.55\nx_count{op=\"c\"} 3\n"
        );
    }
}
