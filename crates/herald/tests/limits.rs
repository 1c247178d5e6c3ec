//! Bounded responses: lists carry summaries and refuse oversized pages, detail views embed a
//! bounded number of attempts and page the rest, endpoint lists are paged, and an app's
//! endpoints are capped. The real server (in this process), a fresh database.
mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{Receiver, Reply, TestServer, TOKEN};
use serde_json::{json, Value};

/// The documented maxima (README, "Limits").
const MAX_PAGE: usize = 100;
const MAX_ENDPOINTS: usize = 100;
const DETAIL_ATTEMPTS: usize = 20;

/// A `/proc/self/status` field in bytes (Linux reports kB).
fn status_kb(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// GET with the admin token, the raw body.
async fn get_raw(server: &TestServer, path: &str) -> (u16, Vec<u8>) {
    let resp = server
        .client
        .get(format!("{}{}", server.base, path))
        .header("authorization", format!("Bearer {TOKEN}"))
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    (status, resp.bytes().await.expect("body").to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_of_large_payloads_answers_small_summaries_in_bounded_memory() {
    const N: usize = 50;
    const PAYLOAD: usize = 256 * 1024;
    let server = TestServer::start().await;
    // The receiver never acknowledges, slowly: deliveries stay pending with an attempt or two.
    let rx = Receiver::start(|_, _: &common::Received| Reply::Status(500, "no")).await;
    let app = server.app(json!({"retry": [3600]})).await;
    let blob = "x".repeat(PAYLOAD);
    for i in 0..N {
        server
            .notify(
                &app,
                json!({"event_type": "big", "payload": {"i": i, "blob": blob},
                       "notify_url": rx.url("/")}),
            )
            .await;
    }
    drop(blob);
    // Their first attempts are made (the engine reads the payloads for them) before measuring.
    rx.wait_count(N).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Sample the resident size while the lists are read; the peak (VmHWM) is reset first
    // where the kernel allows it, and sampled by hand as well.
    let peak_reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let before = status_kb("VmRSS:").expect("VmRSS");
    let peak = Arc::new(AtomicU64::new(before));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some(rss) = status_kb("VmRSS:") {
                    peak.fetch_max(rss, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let mut sizes = Vec::new();
    let mut last = Vec::new();
    for _ in 0..3 {
        let (status, body) =
            get_raw(&server, &format!("/v1/apps/{app}/notifications?limit={N}")).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        sizes.push(body.len());
        last = body;
    }
    stop.store(true, Ordering::Relaxed);
    sampler.join().expect("sampler");
    let mut after = peak.load(Ordering::Relaxed);
    if peak_reset {
        after = after.max(status_kb("VmHWM:").unwrap_or(0));
    }
    let grew = after.saturating_sub(before);
    let payloads = (N * PAYLOAD) as u64;
    eprintln!(
        "list of {N} x {PAYLOAD} B payloads: responses {sizes:?} B; RSS {before} -> peak {after} \
         (+{grew} B; payloads total {payloads} B; VmHWM reset: {peak_reset})"
    );
    for size in sizes {
        assert!(size < 64 * 1024, "the list answered {size} bytes");
    }
    assert!(
        grew < payloads / 2,
        "reading the list grew the process by {grew} bytes (payloads total {payloads})"
    );
    let v: Value = serde_json::from_slice(&last).expect("json");
    let data = v["data"].as_array().expect("data");
    assert_eq!(data.len(), N);
    for n in data {
        assert!(n.get("payload").is_none(), "a summary has no payload");
        assert_eq!(n["event_type"], "big");
        assert_eq!(n["notify_url"], rx.url("/"));
        let d = &n["deliveries"][0];
        assert!(d.get("attempts").is_none(), "no attempts in a list: {d}");
        assert!(d["attempt_count"].is_u64(), "{d}");
        assert!(d["status"].is_string() && d["notify_id"].is_string(), "{d}");
    }
    // The payloads are still there, one at a time, in the detail view.
    let (_, list) = server
        .call(
            "GET",
            &format!("/v1/apps/{app}/notifications?limit=1"),
            None,
        )
        .await;
    let id = list["data"][0]["id"].as_str().unwrap();
    let detail = server.notification(id).await;
    assert_eq!(detail["payload"]["blob"].as_str().unwrap().len(), PAYLOAD);
}

#[tokio::test]
async fn a_limit_above_the_maximum_is_refused_with_a_clear_message() {
    let server = TestServer::start().await;
    let rx = Receiver::start(Receiver::ok()).await;
    let app = server.app(json!({})).await;
    let n = server
        .notify(
            &app,
            json!({"event_type": "e", "payload": {}, "notify_url": rx.url("/")}),
        )
        .await;
    let delivery = n["deliveries"][0]["id"].as_str().unwrap().to_string();
    for path in [
        format!("/v1/apps/{app}/notifications"),
        format!("/v1/apps/{app}/endpoints"),
        format!("/v1/deliveries/{delivery}/attempts"),
    ] {
        let (status, v) = server
            .call("GET", &format!("{path}?limit={}", MAX_PAGE + 1), None)
            .await;
        assert_eq!(status, 422, "{path}: {v}");
        assert_eq!(v["error"]["code"], "invalid", "{v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("limit must be between 1 and 100"),
            "{path}: {message}"
        );
        let (status, v) = server
            .call("GET", &format!("{path}?limit={MAX_PAGE}"), None)
            .await;
        assert_eq!(status, 200, "{path}: {v}");
        let (status, v) = server.call("GET", &format!("{path}?limit=0"), None).await;
        assert_eq!(status, 422, "{path}: {v}");
        let (status, v) = server
            .call("GET", &format!("{path}?cursor=zzz"), None)
            .await;
        assert_eq!(status, 422, "{path}: {v}");
        assert_eq!(v["error"]["code"], "invalid", "{v}");
    }
}

#[tokio::test]
async fn detail_views_embed_the_latest_attempts_and_page_through_the_rest() {
    const ATTEMPTS: usize = 25;
    let server = TestServer::start().await;
    let rx = Receiver::start(|_, _: &common::Received| Reply::Status(500, "no")).await;
    let app = server.app(json!({"retry": []})).await;
    let n = server
        .notify(
            &app,
            json!({"event_type": "e", "payload": {}, "notify_url": rx.url("/"),
                   "order_key": "o-1", "idempotency_key": "k-1"}),
        )
        .await;
    let id = n["id"].as_str().unwrap().to_string();
    let delivery = n["deliveries"][0]["id"].as_str().unwrap().to_string();
    // No retry schedule: each try fails at once; a manual retry asks for one more.
    let mut last = Value::Null;
    for i in 1..=ATTEMPTS {
        if i > 1 {
            let (status, v) = server
                .call("POST", &format!("/v1/deliveries/{delivery}/retry"), None)
                .await;
            assert_eq!(status, 202, "{v}");
        }
        last = server
            .wait_for(&id, |v| {
                v["status"] == "failed" && v["deliveries"][0]["attempt_count"] == i
            })
            .await;
    }
    let embedded = |v: &Value| -> Vec<u64> {
        v["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["n"].as_u64().unwrap())
            .collect()
    };
    let latest: Vec<u64> = ((ATTEMPTS - DETAIL_ATTEMPTS + 1) as u64..=ATTEMPTS as u64).collect();
    let d = &last["deliveries"][0];
    assert_eq!(embedded(d), latest, "the notification embeds the latest 20");
    assert_eq!(d["attempt_count"], ATTEMPTS, "and says how many in all");
    assert_eq!(d["attempts_truncated"], true);
    let (status, d) = server
        .call("GET", &format!("/v1/deliveries/{delivery}"), None)
        .await;
    assert_eq!(status, 200, "{d}");
    assert_eq!(embedded(&d), latest, "the delivery embeds the latest 20");
    assert_eq!(d["attempt_count"], ATTEMPTS);
    assert_eq!(d["attempts_truncated"], true);

    // Every attempt, oldest first, a page at a time.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/deliveries/{delivery}/attempts?limit=10&cursor={c}"),
            None => format!("/v1/deliveries/{delivery}/attempts?limit=10"),
        };
        let (status, page) = server.call("GET", &path, None).await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["attempt_count"], ATTEMPTS);
        let data = page["data"].as_array().unwrap();
        assert!(data.len() <= 10);
        for a in data {
            assert_eq!(a["status_code"], 500, "{a}");
            seen.push(a["n"].as_u64().unwrap());
        }
        pages += 1;
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, (1..=ATTEMPTS as u64).collect::<Vec<_>>());
    let (status, v) = server
        .call("GET", "/v1/deliveries/dlv_missing/attempts", None)
        .await;
    assert_eq!(status, 404, "{v}");
    assert_eq!(v["error"]["code"], "not_found");

    // The list's summary of the same notification: the count, not the attempts.
    let (_, list) = server
        .call("GET", &format!("/v1/apps/{app}/notifications"), None)
        .await;
    let s = &list["data"][0];
    assert_eq!(s["id"], id.as_str());
    assert_eq!(s["order_key"], "o-1");
    assert_eq!(s["idempotency_key"], "k-1");
    assert_eq!(s["status"], "failed");
    let sd = &s["deliveries"][0];
    assert_eq!(sd["id"], delivery.as_str());
    assert_eq!(sd["attempt_count"], ATTEMPTS);
    assert!(sd.get("attempts").is_none(), "{sd}");
    drop(rx);
}

#[tokio::test]
async fn endpoint_lists_are_paged_and_hold_every_endpoint_once() {
    let server = TestServer::start().await;
    let app = server.app(json!({})).await;
    let mut created = Vec::new();
    for i in 0..7 {
        created.push(
            server
                .endpoint(
                    &app,
                    json!({"url": format!("https://user:pw@hooks.example.com/{i}")}),
                )
                .await,
        );
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/apps/{app}/endpoints?limit=3&cursor={c}"),
            None => format!("/v1/apps/{app}/endpoints?limit=3"),
        };
        let (status, page) = server.call("GET", &path, None).await;
        assert_eq!(status, 200, "{page}");
        let data = page["data"].as_array().unwrap();
        assert!(data.len() <= 3, "{page}");
        for e in data {
            assert!(e["url"].as_str().unwrap().contains("****"), "masked: {e}");
            seen.push(e["id"].as_str().unwrap().to_string());
        }
        pages += 1;
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    // Creation order is by creation time (milliseconds), ties by id.
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), seen.len(), "no endpoint twice: {seen:?}");
    created.sort();
    assert_eq!(sorted, created, "every endpoint");
    // Without a limit, one page holds every endpoint an app may have.
    let (_, all) = server
        .call("GET", &format!("/v1/apps/{app}/endpoints"), None)
        .await;
    assert_eq!(all["data"].as_array().unwrap().len(), 7);
    assert_eq!(all["next_cursor"], Value::Null);
}

#[tokio::test]
async fn an_app_may_have_at_most_a_hundred_endpoints() {
    let server = TestServer::start().await;
    let app = server.app(json!({})).await;
    let other = server.app(json!({})).await;
    let mut ids = Vec::new();
    for i in 0..MAX_ENDPOINTS {
        ids.push(
            server
                .endpoint(
                    &app,
                    json!({"url": format!("https://hooks.example.com/{i}")}),
                )
                .await,
        );
    }
    let (status, v) = server
        .call(
            "POST",
            &format!("/v1/apps/{app}/endpoints"),
            Some(json!({"url": "https://hooks.example.com/one-more"})),
        )
        .await;
    assert_eq!(status, 409, "{v}");
    assert_eq!(v["error"]["code"], "conflict");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("already has 100 endpoints"),
        "a clear message: {message}"
    );
    let (_, all) = server
        .call("GET", &format!("/v1/apps/{app}/endpoints"), None)
        .await;
    assert_eq!(all["data"].as_array().unwrap().len(), MAX_ENDPOINTS);
    assert_eq!(
        all["next_cursor"],
        Value::Null,
        "one default page holds them"
    );

    // Another app is not affected; deleting one makes room again.
    server
        .endpoint(&other, json!({"url": "https://hooks.example.com/x"}))
        .await;
    let (status, _) = server
        .call(
            "DELETE",
            &format!("/v1/apps/{app}/endpoints/{}", ids[0]),
            None,
        )
        .await;
    assert!(status == 204 || status == 200, "{status}");
    server
        .endpoint(&app, json!({"url": "https://hooks.example.com/again"}))
        .await;
}

#[tokio::test]
async fn a_notification_has_at_most_a_hundred_deliveries_and_lists_as_a_small_summary() {
    // Deliveries per notification follow from endpoints per app: one per matching endpoint.
    let server = TestServer::start().await;
    let rx = Receiver::start(Receiver::ok()).await;
    let app = server.app(json!({})).await;
    for i in 0..MAX_ENDPOINTS {
        server
            .endpoint(&app, json!({"url": rx.url(&format!("/{i}"))}))
            .await;
    }
    let (status, v) = server
        .call(
            "POST",
            &format!("/v1/apps/{app}/endpoints"),
            Some(json!({"url": rx.url("/one-more")})),
        )
        .await;
    assert_eq!(status, 409, "{v}");
    let n = server
        .notify(&app, json!({"event_type": "e", "payload": {}}))
        .await;
    assert_eq!(n["deliveries"].as_array().unwrap().len(), MAX_ENDPOINTS);
    server
        .wait_status(n["id"].as_str().unwrap(), "succeeded")
        .await;
    let (status, body) = get_raw(&server, &format!("/v1/apps/{app}/notifications")).await;
    assert_eq!(status, 200);
    assert!(body.len() < 64 * 1024, "{} bytes", body.len());
    let v: Value = serde_json::from_slice(&body).unwrap();
    let deliveries = v["data"][0]["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), MAX_ENDPOINTS);
    for d in deliveries {
        assert_eq!(d["attempt_count"], 1, "{d}");
        assert!(d.get("attempts").is_none(), "{d}");
        assert!(d["endpoint_id"].is_string(), "{d}");
    }
}
