//! A first throughput measurement (the full `herald bench` comes later): N notifications
//! already stored are drained by the engine to a local sink, every outcome durably
//! recorded (SQLite, synchronous=FULL); the ceiling is a plain pooled keep-alive client
//! POSTing the same bodies to the same sink at the same concurrency, in the same process.
//!
//! Run: `cargo bench -p herald --bench delivery_rate -- [N] [CONCURRENCY]`
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_engine::{Engine, EngineConfig, TargetPolicy};
use herald_protocols::standard_webhooks::{KeyEntry, Keys};
use herald_protocols::{Credentials, Profile};
use herald_store::sqlite::{Durability, SqliteStore};
use herald_store::{NewApp, NewNotification, Store};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let n: usize = args.first().and_then(|s| s.parse().ok()).unwrap_or(20_000);
    let concurrency: u32 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(8);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(n, concurrency));
}

async fn run(n: usize, concurrency: u32) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sink = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let app = axum::Router::new().fallback(|| async { axum::http::StatusCode::NO_CONTENT });
        axum::serve(listener, app).await
    });
    let url = format!("http://{sink}/notify");
    let body = r#"{"out_trade_no":"20261123000001","total_amount":"88.00","trade_status":"TRADE_SUCCESS","subject":"coffee"}"#;

    // Ceiling: the same bodies, the same sink, the same concurrency, no Herald.
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .unwrap();
    let started = Instant::now();
    let per = n / concurrency as usize;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, url) = (client.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..per {
                let r = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                let _ = r.bytes().await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let ceiling = (per * concurrency as usize) as f64 / started.elapsed().as_secs_f64();

    // Herald: store N notifications first, then time the engine draining them.
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path().join("bench.db"), Durability::Full).unwrap());
    let app = store
        .create_app(NewApp {
            name: "bench".into(),
            profile: Profile::StandardWebhooks,
            retry: None,
            ack: None,
            credentials: Credentials::StandardWebhooks(Keys {
                keys: vec![KeyEntry {
                    secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
                    expires_at: None,
                }],
            }),
            now: herald_engine::now_ms(),
        })
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for chunk in 0..64 {
        let (store, app, url) = (store.clone(), app.id.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            for _ in (chunk..n).step_by(64) {
                store
                    .create_notification(NewNotification {
                        app_id: app.clone(),
                        event_type: "trade.success".into(),
                        payload: body.into(),
                        notify_url: Some(url.clone()),
                        idempotency_key: None,
                        order_key: None,
                        now: herald_engine::now_ms(),
                    })
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let config = EngineConfig {
        default_max_in_flight: concurrency,
        target_policy: Arc::new(TargetPolicy {
            allow_private: true,
            allow: vec![],
        }),
        ..EngineConfig::default()
    };
    let started = Instant::now();
    let engine = Engine::start(store.clone(), config, std::future::pending()).unwrap();
    while (engine.stats.succeeded.load(Ordering::Relaxed) as usize) < n {
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "drain did not finish"
        );
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    println!("ceiling  (plain client, concurrency {concurrency}): {ceiling:>9.0} req/s");
    println!(
        "delivery (Herald, {n} stored, durable):   {rate:>9.0} deliveries/s  = {:.2}x ceiling",
        rate / ceiling
    );
}
