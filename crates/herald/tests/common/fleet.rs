//! Fault-test support: real `herald serve` processes that can be killed with `-9` (or
//! stopped with `SIGTERM`) and started again, a receiver that fails a share of attempts at
//! random and counts what it acknowledged, and a loader that posts notifications until each
//! is accepted.
//! Everything is on loopback and bounded in time.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use rand::Rng;
use serde_json::{json, Value};

pub const TOKEN: &str = "fleet-admin-token";

/// One `herald serve` process on a fixed loopback port.
pub struct Node {
    pub port: u16,
    db: String,
    extra: Vec<String>,
    child: Option<tokio::process::Child>,
}

impl Node {
    /// Starts a node and waits until its `/healthz` answers.
    pub async fn start(db: &str, port: u16, extra: &[&str]) -> Node {
        let mut node = Node {
            port,
            db: db.to_string(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        node.restart().await;
        node
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts the process again (after a kill) and waits until it is healthy.
    pub async fn restart(&mut self) {
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
            .args([
                "serve",
                "--db",
                &self.db,
                "--listen",
                &format!("127.0.0.1:{}", self.port),
                "--admin-token",
                TOKEN,
                "--allow-private-targets",
            ])
            .args(&self.extra)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("herald starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = reqwest::Client::new();
        loop {
            if let Ok(r) = client.get(format!("{}/healthz", self.url())).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "node on {} never became healthy",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `SIGTERM`: the graceful stop `herald serve` takes on Ctrl-C; waits (at most 15 s)
    /// for the process to exit and returns its exit status.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("a running node");
        let pid = child.id().expect("a running node has a pid");
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "SIGTERM sent");
        tokio::time::timeout(Duration::from_secs(15), child.wait())
            .await
            .expect("the node exits within 15 s of SIGTERM")
            .expect("exit status")
    }

    /// `kill -9`: no shutdown, no flush, nothing but what was committed survives.
    pub async fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }
}

/// A free loopback port (bound and released; good enough on a test machine).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// What the receiver saw.
#[derive(Default)]
pub struct Seen {
    /// Acknowledged receptions per `webhook-id`.
    pub acked: HashMap<String, u32>,
    /// When each acknowledgement was sent.
    pub ack_times: Vec<Instant>,
}

/// A receiver that answers 500 to a share of requests at random and 204 to the rest.
pub struct FlakyReceiver {
    pub url: String,
    pub seen: Arc<Mutex<Seen>>,
    pub in_progress: Arc<AtomicUsize>,
}

#[derive(Clone)]
struct ReceiverState {
    fail_ratio: f64,
    seen: Arc<Mutex<Seen>>,
    in_progress: Arc<AtomicUsize>,
}

async fn receive(State(st): State<ReceiverState>, headers: HeaderMap) -> StatusCode {
    st.in_progress.fetch_add(1, Ordering::SeqCst);
    // A little work, so attempts overlap as they do against a real merchant.
    tokio::time::sleep(Duration::from_millis(2)).await;
    let fail = rand::thread_rng().gen_bool(st.fail_ratio);
    let status = if fail {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        let id = headers
            .get("webhook-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let mut seen = st.seen.lock().expect("seen");
        *seen.acked.entry(id).or_default() += 1;
        seen.ack_times.push(Instant::now());
        StatusCode::NO_CONTENT
    };
    st.in_progress.fetch_sub(1, Ordering::SeqCst);
    status
}

impl FlakyReceiver {
    pub async fn start(fail_ratio: f64) -> FlakyReceiver {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let in_progress = Arc::new(AtomicUsize::new(0));
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(ReceiverState {
                fail_ratio,
                seen: seen.clone(),
                in_progress: in_progress.clone(),
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().expect("receiver address");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FlakyReceiver {
            url: format!("http://{addr}/hook"),
            seen,
            in_progress,
        }
    }

    /// Attempts that may be lost by a kill now: requests being handled, and those
    /// acknowledged in the last `window` (their outcome may not be committed yet).
    pub fn in_flight(&self, window: Duration) -> usize {
        let seen = self.seen.lock().expect("seen");
        let recent = seen
            .ack_times
            .iter()
            .rev()
            .take_while(|t| t.elapsed() < window)
            .count();
        recent + self.in_progress.load(Ordering::SeqCst)
    }

    pub fn acked_ids(&self) -> usize {
        self.seen.lock().expect("seen").acked.len()
    }

    /// Receptions beyond the first of each id.
    pub fn repeats(&self) -> u64 {
        self.seen
            .lock()
            .expect("seen")
            .acked
            .values()
            .map(|n| u64::from(n.saturating_sub(1)))
            .sum()
    }

    pub fn has(&self, id: &str) -> bool {
        self.seen.lock().expect("seen").acked.contains_key(id)
    }
}

/// Calls the API of one of `bases`, trying the others (and again after a pause) until one
/// answers with something other than a connection error or a 5xx, for up to 60 s.
pub async fn call(
    client: &reqwest::Client,
    bases: &[String],
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
    idempotency_key: Option<&str>,
) -> (u16, Value) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut i = rand::thread_rng().gen_range(0..bases.len());
    loop {
        let base = &bases[i % bases.len()];
        i += 1;
        let mut req = client
            .request(method.clone(), format!("{base}{path}"))
            .bearer_auth(TOKEN)
            .timeout(Duration::from_secs(10));
        if let Some(b) = &body {
            req = req.json(b);
        }
        if let Some(k) = idempotency_key {
            req = req.header("Idempotency-Key", k);
        }
        if let Ok(resp) = req.send().await {
            let status = resp.status().as_u16();
            if status < 500 {
                let v = resp.json().await.unwrap_or(Value::Null);
                return (status, v);
            }
        }
        assert!(
            Instant::now() < deadline,
            "no node accepted {path} for 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An app whose deliveries retry quickly and often enough that a receiver failing a third
/// of attempts at random never exhausts them, with one endpoint at `url`.
pub async fn app_with_endpoint(client: &reqwest::Client, bases: &[String], url: &str) -> String {
    let retry: Vec<f64> = vec![0.05; 40];
    let (status, app) = call(
        client,
        bases,
        reqwest::Method::POST,
        "/v1/apps",
        Some(json!({"name": "fleet", "retry": retry})),
        None,
    )
    .await;
    assert_eq!(status, 201, "{app}");
    let id = app["id"].as_str().expect("app id").to_string();
    let (status, ep) = call(
        client,
        bases,
        reqwest::Method::POST,
        &format!("/v1/apps/{id}/endpoints"),
        Some(json!({"url": url, "max_in_flight": 16})),
        None,
    )
    .await;
    assert_eq!(status, 201, "{ep}");
    id
}

/// Posts `count` notifications with `concurrency` workers, each retried with its
/// idempotency key until accepted; returns the notify id of every accepted one.
pub async fn post_notifications(
    bases: Arc<Vec<String>>,
    app: String,
    count: usize,
    concurrency: usize,
) -> Vec<String> {
    let next = Arc::new(AtomicUsize::new(0));
    let ids = Arc::new(Mutex::new(Vec::with_capacity(count)));
    let client = reqwest::Client::new();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (bases, app, next, ids, client) = (
            bases.clone(),
            app.clone(),
            next.clone(),
            ids.clone(),
            client.clone(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= count {
                    break;
                }
                let key = format!("n-{i}");
                let (status, v) = call(
                    &client,
                    &bases,
                    reqwest::Method::POST,
                    &format!("/v1/apps/{app}/notifications"),
                    Some(json!({"event_type": "order.paid", "payload": {"n": i}})),
                    Some(&key),
                )
                .await;
                assert!(status == 202 || status == 200, "{status} {v}");
                let id = v["deliveries"][0]["notify_id"]
                    .as_str()
                    .expect("a delivery")
                    .to_string();
                ids.lock().expect("ids").push(id);
            }
        }));
    }
    for w in workers {
        w.await.expect("loader worker");
    }
    let ids = ids.lock().expect("ids").clone();
    ids
}

/// One request a [`Recorder`] received: its `webhook-id` header and its JSON body.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub webhook_id: String,
    pub body: Value,
}

/// A receiver that acknowledges everything (204) and keeps every request it got.
pub struct Recorder {
    pub url: String,
    pub got: Arc<Mutex<Vec<Recorded>>>,
}

async fn record(
    State(got): State<Arc<Mutex<Vec<Recorded>>>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let webhook_id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
    got.lock()
        .expect("recorded")
        .push(Recorded { webhook_id, body });
    StatusCode::NO_CONTENT
}

impl Recorder {
    pub async fn start() -> Recorder {
        let got = Arc::new(Mutex::new(Vec::new()));
        let app = axum::Router::new()
            .route("/notify", axum::routing::post(record))
            .with_state(got.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind recorder");
        let addr = listener.local_addr().expect("recorder address");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Recorder {
            url: format!("http://{addr}/notify"),
            got,
        }
    }

    pub fn received(&self) -> Vec<Recorded> {
        self.got.lock().expect("recorded").clone()
    }
}
