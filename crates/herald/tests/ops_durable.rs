//! Durable operational notifications and the breaker across nodes, on the real binary:
//! an ops notification is committed with the breaker transition that causes it, so it is
//! retried like any notification, survives `kill -9`, and is sent once; two PostgreSQL
//! nodes keep one endpoint's breaker together (nothing sent while it cools down, one
//! probe, one `endpoint.breaker_opened`). Loopback only, bounded in time.
#[path = "common/fleet.rs"]
mod fleet;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, StatusCode};
use fleet::Node;
use herald_protocols::standard_webhooks::{self as sw, VerifyKey};
use serde_json::{json, Value};

const OPS_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// One request a [`Scripted`] receiver got.
#[derive(Clone, Debug)]
struct Hit {
    /// Wall-clock arrival (unix ms), comparable with the store's times.
    at: i64,
    status: u16,
    headers: HeaderMap,
    body: String,
}

impl Hit {
    fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// A receiver answering each request with the status its current `status` says, keeping
/// every request with the answer it got.
#[derive(Clone)]
struct Scripted {
    url: String,
    status: Arc<Mutex<u16>>,
    hits: Arc<Mutex<Vec<Hit>>>,
}

impl Scripted {
    async fn start(status: u16) -> Scripted {
        let status = Arc::new(Mutex::new(status));
        let hits = Arc::new(Mutex::new(Vec::new()));
        let (s, h) = (status.clone(), hits.clone());
        let app = axum::Router::new().fallback(move |headers: HeaderMap, body: String| {
            let (s, h) = (s.clone(), h.clone());
            async move {
                let code = *s.lock().expect("status");
                h.lock().expect("hits").push(Hit {
                    at: now_ms(),
                    status: code,
                    headers,
                    body,
                });
                StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().expect("receiver address");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Scripted {
            url: format!("http://{addr}/hook"),
            status,
            hits,
        }
    }

    fn answer(&self, status: u16) {
        *self.status.lock().expect("status") = status;
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().expect("hits").clone()
    }

    async fn wait_until(&self, what: &str, secs: u64, pred: impl Fn(&[Hit]) -> bool) -> Vec<Hit> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let hits = self.hits();
            if pred(&hits) {
                return hits;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn call(base: &str, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
    let (status, v) = fleet::call(
        &reqwest::Client::new(),
        &[base.to_string()],
        method,
        path,
        Some(body),
        None,
    )
    .await;
    (status, v)
}

/// Sets the app's ops target to `url` with the test secret and a quick retry schedule.
async fn set_ops(base: &str, app: &str, url: &str, retry: Value) {
    let (status, v) = call(
        base,
        reqwest::Method::PUT,
        &format!("/v1/apps/{app}/ops"),
        json!({"url": url, "secret": OPS_SECRET, "retry": retry}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
}

async fn notify(base: &str, app: &str, n: usize) {
    let (status, v) = call(
        base,
        reqwest::Method::POST,
        &format!("/v1/apps/{app}/notifications"),
        json!({"event_type": "trade.success", "payload": {"n": n}}),
    )
    .await;
    assert_eq!(status, 202, "{v}");
}

fn verify_ops(hit: &Hit) {
    sw::verify(
        &hit.header("webhook-id"),
        &hit.header("webhook-timestamp"),
        &hit.header("webhook-signature"),
        hit.body.as_bytes(),
        &[VerifyKey::parse(OPS_SECRET).expect("secret")],
        now_ms() / 1000,
    )
    .expect("signed with the ops secret");
}

#[tokio::test]
async fn an_ops_receiver_that_fails_the_first_tries_gets_the_notification_on_a_retry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite://{}", dir.path().join("herald.db").display());
    let node = Node::start(&db, fleet::free_port(), &[]).await;
    let base = node.url();
    let gone = Scripted::start(410).await;
    let ops = Scripted::start(500).await;
    let app = fleet::app_with_endpoint(
        &reqwest::Client::new(),
        std::slice::from_ref(&base),
        &gone.url,
    )
    .await;
    set_ops(&base, &app, &ops.url, json!([0.2, 0.2, 0.2, 0.2])).await;
    notify(&base, &app, 1).await;

    // The 410 disables the endpoint; its notification fails twice, then is acknowledged.
    ops.wait_until("two refused tries", 20, |h| h.len() >= 2)
        .await;
    ops.answer(204);
    let hits = ops
        .wait_until("the acknowledged retry", 20, |h| {
            h.iter().any(|x| x.status == 204)
        })
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let hits_after = ops.hits();
    assert_eq!(
        hits_after.len(),
        hits.len(),
        "nothing is sent after the acknowledgement"
    );
    assert!(hits.len() >= 3, "{} tries", hits.len());
    let first_id = hits[0].header("webhook-id");
    assert!(
        hits.iter().all(|h| h.header("webhook-id") == first_id),
        "every try is the same notification"
    );
    let acked: Vec<&Hit> = hits.iter().filter(|h| h.status == 204).collect();
    assert_eq!(acked.len(), 1);
    verify_ops(acked[0]);
    let body = acked[0].json();
    assert_eq!(body["type"], "endpoint.disabled");
    assert_eq!(body["data"]["app_id"], app.as_str());
    assert_eq!(
        body["data"]["health"]["disabled_reason"],
        "the endpoint answered 410 Gone"
    );
    // The retries follow the schedule given (0.2 s apart at least).
    for pair in hits.windows(2) {
        assert!(pair[1].at - pair[0].at >= 150, "retried too soon");
    }
    assert_eq!(
        gone.hits().len(),
        1,
        "the gone endpoint is not sent to again"
    );
}

#[tokio::test]
async fn a_server_killed_after_a_breaker_opened_delivers_its_ops_notification_after_restart_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite://{}", dir.path().join("herald.db").display());
    let breaker = [
        "--breaker-failures",
        "2",
        "--breaker-cooldown",
        "10m",
        "--breaker-cooldown-max",
        "10m",
    ];
    let mut node = Node::start(&db, fleet::free_port(), &breaker).await;
    let base = node.url();
    let failing = Scripted::start(500).await;
    let ops = Scripted::start(503).await;
    let app = fleet::app_with_endpoint(
        &reqwest::Client::new(),
        std::slice::from_ref(&base),
        &failing.url,
    )
    .await;
    set_ops(&base, &app, &ops.url, json!(vec![0.3; 20])).await;
    notify(&base, &app, 1).await;

    // The breaker opened and its notification was tried, not delivered: kill -9 now.
    ops.wait_until("a refused try", 20, |h| !h.is_empty()).await;
    node.kill9().await;
    let before = ops.hits();
    assert!(before.iter().all(|h| h.status == 503));
    ops.answer(204);

    node.restart().await;
    let hits = ops
        .wait_until("the notification after the restart", 20, |h| {
            h.len() > before.len()
        })
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let all = ops.hits();
    assert_eq!(all.len(), hits.len(), "sent once after the restart");
    assert_eq!(all.len(), before.len() + 1);
    let id = all[0].header("webhook-id");
    assert!(
        all.iter().all(|h| h.header("webhook-id") == id),
        "the same notification, not a second one"
    );
    let last = all.last().expect("one");
    verify_ops(last);
    let body = last.json();
    assert_eq!(body["type"], "endpoint.breaker_opened");
    assert_eq!(body["data"]["app_id"], app.as_str());
    assert_eq!(body["data"]["health"]["state"], "open");
    assert_eq!(body["data"]["health"]["consecutive_failures"], 2);
    node.kill9().await;
}

#[tokio::test]
async fn two_postgres_nodes_hold_an_open_breaker_send_one_probe_and_one_breaker_opened_notification(
) {
    let url = herald_pgtest::database();
    let cooldown = "3s";
    let args = [
        "--breaker-failures",
        "3",
        "--breaker-cooldown",
        cooldown,
        "--breaker-cooldown-max",
        cooldown,
        "--lease",
        "3",
    ];
    let mut a = Node::start(&url, fleet::free_port(), &args).await;
    let mut b = Node::start(&url, fleet::free_port(), &args).await;
    let bases = [a.url(), b.url()];
    let failing = Scripted::start(500).await;
    let ops = Scripted::start(204).await;
    let app = fleet::app_with_endpoint(&reqwest::Client::new(), &bases, &failing.url).await;
    set_ops(&bases[0], &app, &ops.url, json!(vec![0.2; 10])).await;
    // Work for the endpoint accepted by both nodes.
    for n in 0..20 {
        notify(&bases[n % 2], &app, n).await;
    }

    let opened = ops
        .wait_until("endpoint.breaker_opened", 30, |h| !h.is_empty())
        .await;
    let body = opened[0].json();
    assert_eq!(body["type"], "endpoint.breaker_opened");
    verify_ops(&opened[0]);
    let health = &body["data"]["health"];
    let changed_at = health["changed_at"].as_i64().expect("changed_at (ms)");
    let open_until = health["open_until"].as_i64().expect("open_until (ms)");
    assert_eq!(open_until - changed_at, 3_000);

    // Past the cool-down, the probe, and most of the next cool-down.
    let settle = open_until + 2_500;
    while now_ms() < settle {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let hits = failing.hits();
    // Attempts answered after the breaker opened were already on their way (started
    // before); none may start later while it cools down, on either node.
    let quiet: Vec<i64> = hits
        .iter()
        .map(|h| h.at)
        .filter(|at| *at > changed_at + 250 && *at < open_until)
        .collect();
    assert!(
        quiet.is_empty(),
        "sent while the breaker was open: {} attempts, opened at {changed_at}, until {open_until}: {quiet:?}",
        quiet.len()
    );
    let probes: Vec<i64> = hits
        .iter()
        .map(|h| h.at)
        .filter(|at| *at >= open_until && *at < settle)
        .collect();
    assert_eq!(
        probes.len(),
        1,
        "one probe after the cool-down (opened at {changed_at}, until {open_until}): {probes:?}"
    );
    let types: Vec<String> = ops
        .hits()
        .iter()
        .map(|h| h.json()["type"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        types,
        vec!["endpoint.breaker_opened".to_string()],
        "one ops notification (a failed probe reopens the breaker silently)"
    );
    a.kill9().await;
    b.kill9().await;
}
