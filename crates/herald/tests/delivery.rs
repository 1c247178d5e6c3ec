//! Delivery behaviour end to end: the real server, a fresh database, real HTTP receivers.
mod common;

use std::time::Duration;

use common::{engine_config, Receiver, Reply, TestServer, SECRET};
use herald_protocols::standard_webhooks::{self as sw, VerifyKey};
use serde_json::json;

fn verify(r: &common::Received, key: &str) -> Result<(), sw::VerifyError> {
    let now = herald_engine::now_ms().to_seconds().get();
    sw::verify(
        &r.header("webhook-id"),
        &r.header("webhook-timestamp"),
        &r.header("webhook-signature"),
        &r.body,
        &[VerifyKey::parse(key).unwrap()],
        now,
    )
}

#[tokio::test]
async fn notification_is_delivered_signed_with_the_payload_byte_for_byte() {
    let server = TestServer::start().await;
    let rx = Receiver::start(Receiver::ok()).await;
    let app = server.app(json!({})).await;
    server.endpoint(&app, json!({"url": rx.url("/hook")})).await;
    // Unusual spacing and key order must survive untouched.
    let raw = r#"{"event_type":"trade.success","payload":{ "z": 1,  "a": "支付" }}"#;
    let (status, v) = server
        .call_raw(
            "POST",
            &format!("/v1/apps/{app}/notifications"),
            Some(raw.as_bytes().to_vec()),
            Some(common::TOKEN),
            &[],
        )
        .await;
    assert_eq!(status, 202, "{v}");
    let id = v["id"].as_str().unwrap();
    let notify_id = v["deliveries"][0]["notify_id"]
        .as_str()
        .unwrap()
        .to_string();
    let done = server.wait_status(id, "succeeded").await;
    let got = rx.received();
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].body[..], r#"{ "z": 1,  "a": "支付" }"#.as_bytes());
    assert_eq!(got[0].header("webhook-id"), notify_id);
    assert_eq!(got[0].header("content-type"), "application/json");
    verify(&got[0], SECRET).expect("signature verifies with the app secret");
    let attempts = &done["deliveries"][0]["attempts"];
    assert_eq!(attempts.as_array().unwrap().len(), 1);
    assert_eq!(attempts[0]["status_code"], 204);
    assert_eq!(attempts[0]["error_class"], serde_json::Value::Null);
}

#[tokio::test]
async fn delivery_is_retried_on_schedule_until_acked_with_the_same_notify_id() {
    let server = TestServer::start().await;
    let rx = Receiver::start(|n, _| {
        if n < 2 {
            Reply::Status(500, "oops")
        } else {
            Reply::Status(200, "")
        }
    })
    .await;
    let app = server.app(json!({})).await;
    server
        .endpoint(
            &app,
            json!({"url": rx.url("/hook"), "retry": [0.2, 0.4, 5]}),
        )
        .await;
    let n = server
        .notify(&app, json!({"event_type": "e", "payload": {"k": 1}}))
        .await;
    let done = server
        .wait_status(n["id"].as_str().unwrap(), "succeeded")
        .await;
    let got = rx.received();
    assert_eq!(got.len(), 3);
    let ids: Vec<_> = got.iter().map(|r| r.header("webhook-id")).collect();
    assert!(
        ids.iter().all(|i| *i == ids[0]),
        "notify id is stable: {ids:?}"
    );
    // The schedule's delays separate the attempts (lower bounds only).
    assert!(got[1].at - got[0].at >= Duration::from_millis(190));
    assert!(got[2].at - got[1].at >= Duration::from_millis(390));
    for r in &got {
        verify(r, SECRET).expect("every attempt is signed");
    }
    let d = &done["deliveries"][0];
    assert_eq!(d["attempt_count"], 3);
    let attempts = d["attempts"].as_array().unwrap();
    assert_eq!(attempts[0]["error_class"], "http-status");
    assert_eq!(attempts[0]["status_code"], 500);
    assert_eq!(attempts[0]["response"], "oops");
    assert_eq!(attempts[2]["error_class"], serde_json::Value::Null);
}

#[tokio::test]
async fn delivery_fails_when_the_schedule_is_spent() {
    let server = TestServer::start().await;
    let rx = Receiver::start(|_, _| Reply::Status(500, "")).await;
    let app = server.app(json!({"retry": [0.05, 0.05]})).await;
    server.endpoint(&app, json!({"url": rx.url("/")})).await;
    let n = server
        .notify(&app, json!({"event_type": "e", "payload": {}}))
        .await;
    let done = server
        .wait_status(n["id"].as_str().unwrap(), "failed")
        .await;
    assert_eq!(rx.count(), 3, "first attempt plus two retries");
    assert_eq!(done["deliveries"][0]["attempt_count"], 3);
    assert_eq!(
        done["deliveries"][0]["next_attempt_at"],
        serde_json::Value::Null
    );
}

#[tokio::test]
async fn body_ack_rule_needs_the_exact_acknowledgement() {
    let server = TestServer::start().await;
    let rx = Receiver::start(|n, _| match n {
        0 => Reply::Status(200, "<html>ok</html>"),
        1 => Reply::Status(200, "SUCCESS"),
        _ => Reply::Status(200, " success\n"),
    })
    .await;
    let app = server.app(json!({})).await;
    server
        .endpoint(
            &app,
            json!({"url": rx.url("/"), "ack": "body:success", "retry": [0.05, 0.05, 0.05]}),
        )
        .await;
    let n = server
        .notify(&app, json!({"event_type": "e", "payload": {}}))
        .await;
    let done = server
        .wait_status(n["id"].as_str().unwrap(), "succeeded")
        .await;
    let attempts = done["deliveries"][0]["attempts"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(attempts.len(), 3);
    assert_eq!(attempts[0]["error_class"], "bad-ack");
    assert_eq!(attempts[1]["error_class"], "bad-ack");
}

#[tokio::test]
async fn retry_after_on_503_postpones_the_next_attempt() {
    let server = TestServer::start().await;
    let rx = Receiver::start(|n, _| {
        if n == 0 {
            Reply::StatusWithHeader(503, "busy", "retry-after", "1")
        } else {
            Reply::Status(204, "")
        }
    })
    .await;
    let app = server.app(json!({})).await;
    server
        .endpoint(&app, json!({"url": rx.url("/"), "retry": [0.05]}))
        .await;
    let n = server
        .notify(&app, json!({"event_type": "e", "payload": {}}))
        .await;
    server
        .wait_status(n["id"].as_str().unwrap(), "succeeded")
        .await;
    let got = rx.received();
    assert!(
        got[1].at - got[0].at >= Duration::from_millis(950),
        "waited {:?}",
        got[1].at - got[0].at
    );
}

#[tokio::test]
async fn notify_url_sends_to_that_url_alone() {
    let server = TestServer::start().await;
    let endpoint_rx = Receiver::start(Receiver::ok()).await;
    let direct_rx = Receiver::start(Receiver::ok()).await;
    let app = server.app(json!({})).await;
    server
        .endpoint(&app, json!({"url": endpoint_rx.url("/")}))
        .await;
    let n = server
        .notify(
            &app,
            json!({"event_type": "e", "payload": {"x": 1}, "notify_url": direct_rx.url("/notify")}),
        )
        .await;
    assert_eq!(n["deliveries"].as_array().unwrap().len(), 1);
    server
        .wait_status(n["id"].as_str().unwrap(), "succeeded")
        .await;
    assert_eq!(direct_rx.count(), 1);
    assert_eq!(endpoint_rx.count(), 0);
}

#[tokio::test]
async fn fan_out_follows_event_type_filters_and_enabled_flags() {
    let server = TestServer::start().await;
    let trade = Receiver::start(Receiver::ok()).await;
    let refund = Receiver::start(Receiver::ok()).await;
    let off = Receiver::start(Receiver::ok()).await;
    let app = server.app(json!({})).await;
    server
        .endpoint(
            &app,
            json!({"url": trade.url("/"), "event_types": ["trade.*"]}),
        )
        .await;
    server
        .endpoint(
            &app,
            json!({"url": refund.url("/"), "event_types": ["refund.success"]}),
        )
        .await;
    server
        .endpoint(&app, json!({"url": off.url("/"), "enabled": false}))
        .await;
    let a = server
        .notify(&app, json!({"event_type": "trade.success", "payload": {}}))
        .await;
    let b = server
        .notify(&app, json!({"event_type": "refund.success", "payload": {}}))
        .await;
    server
        .wait_status(a["id"].as_str().unwrap(), "succeeded")
        .await;
    server
        .wait_status(b["id"].as_str().unwrap(), "succeeded")
        .await;
    assert_eq!(trade.count(), 1);
    assert_eq!(refund.count(), 1);
    assert_eq!(off.count(), 0);
}

#[tokio::test]
async fn same_idempotency_key_returns_the_first_notification_and_sends_once() {
    let server = TestServer::start().await;
    let rx = Receiver::start(Receiver::ok()).await;
    let app = server.app(json!({})).await;
    server.endpoint(&app, json!({"url": rx.url("/")})).await;
    let path = format!("/v1/apps/{app}/notifications");
    let body = json!({"event_type": "e", "payload": {"n": 1}})
        .to_string()
        .into_bytes();
    let (s1, h1, v1) = server
        .call_full(
            "POST",
            &path,
            Some(body.clone()),
            Some(common::TOKEN),
            &[("idempotency-key", "pay-1")],
        )
        .await;
    // The same request, with the key in the body this time (a different body would be 409:
    // see hardening.rs).
    let body2 = json!({"event_type": "e", "payload": {"n": 1}, "idempotency_key": "pay-1"})
        .to_string()
        .into_bytes();
    let (s2, h2, v2) = server
        .call_full("POST", &path, Some(body2), Some(common::TOKEN), &[])
        .await;
    assert_eq!((s1, s2), (202, 202));
    assert_eq!(v1["id"], v2["id"]);
    // The same deliveries (their status may have moved on in between).
    let ids = |v: &serde_json::Value| {
        v["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&v1), ids(&v2));
    assert!(h1.get("idempotent-replayed").is_none());
    assert_eq!(h2.get("idempotent-replayed").unwrap(), "true");
    server
        .wait_status(v1["id"].as_str().unwrap(), "succeeded")
        .await;
    let (_, list) = server
        .call("GET", &format!("/v1/apps/{app}/notifications"), None)
        .await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert_eq!(rx.count(), 1);
    assert_eq!(rx.received()[0].json(), json!({"n": 1}));
}

#[tokio::test]
async fn ordered_endpoint_sends_one_at_a_time_in_creation_order() {
    let server = TestServer::start().await;
    // The first attempt fails: the rest must wait for its retry to succeed.
    let rx = Receiver::start(|n, _| {
        if n == 0 {
            Reply::Status(500, "")
        } else {
            Reply::Status(204, "")
        }
    })
    .await;
    let app = server.app(json!({})).await;
    server
        .endpoint(
            &app,
            json!({"url": rx.url("/"), "ordered": true, "retry": [0.3]}),
        )
        .await;
    let mut ids = Vec::new();
    for i in 0..6 {
        let n = server
            .notify(&app, json!({"event_type": "e", "payload": {"seq": i}}))
            .await;
        ids.push(n["id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        server.wait_status(id, "succeeded").await;
    }
    let seqs: Vec<i64> = rx
        .received()
        .iter()
        .map(|r| r.json()["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, vec![0, 0, 1, 2, 3, 4, 5]);
    assert_eq!(rx.in_flight.lock().unwrap().1, 1, "never two at once");
}

#[tokio::test]
async fn order_key_orders_notify_url_deliveries_per_key() {
    let server = TestServer::start().await;
    let rx = Receiver::start(|n, _| {
        if n == 0 {
            Reply::Status(500, "")
        } else {
            Reply::Status(204, "")
        }
    })
    .await;
    let app = server.app(json!({"retry": [0.3]})).await;
    let url = rx.url("/notify");
    let paid = server
        .notify(&app, json!({"event_type": "trade.success", "payload": {"s": "paid"}, "notify_url": url, "order_key": "T1"}))
        .await;
    let refunded = server
        .notify(&app, json!({"event_type": "trade.refund", "payload": {"s": "refunded"}, "notify_url": url, "order_key": "T1"}))
        .await;
    server
        .wait_status(refunded["id"].as_str().unwrap(), "succeeded")
        .await;
    server
        .wait_status(paid["id"].as_str().unwrap(), "succeeded")
        .await;
    let states: Vec<String> = rx
        .received()
        .iter()
        .map(|r| r.json()["s"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(states, vec!["paid", "paid", "refunded"]);
}

#[tokio::test]
async fn hanging_endpoint_does_not_delay_another() {
    let server = TestServer::start().await;
    let hanging = Receiver::start(|_, _| Reply::Hang).await;
    let healthy = Receiver::start(Receiver::ok()).await;
    let slow_app = server.app(json!({})).await;
    let app = server.app(json!({})).await;
    server
        .endpoint(&slow_app, json!({"url": hanging.url("/")}))
        .await;
    server
        .endpoint(&app, json!({"url": healthy.url("/")}))
        .await;
    let mut slow = Vec::new();
    for _ in 0..30 {
        slow.push(
            server
                .notify(&slow_app, json!({"event_type": "e", "payload": {}}))
                .await,
        );
    }
    hanging.wait_count(8).await;
    let mut fast = Vec::new();
    for _ in 0..20 {
        fast.push(
            server
                .notify(&app, json!({"event_type": "e", "payload": {}}))
                .await,
        );
    }
    for n in &fast {
        server
            .wait_status(n["id"].as_str().unwrap(), "succeeded")
            .await;
    }
    assert_eq!(healthy.count(), 20);
    // The hanging endpoint holds exactly its own in-flight limit, and its work is pending.
    assert_eq!(hanging.count(), 8);
    let s = server.notification(slow[0]["id"].as_str().unwrap()).await;
    assert_eq!(s["status"], "pending");
}

#[tokio::test]
async fn pending_deliveries_are_attempted_again_after_a_restart() {
    let server = TestServer::start().await;
    let rx = Receiver::start(|_, _| Reply::Hang).await;
    let app = server.app(json!({})).await;
    server
        .endpoint(&app, json!({"url": rx.url("/"), "retry": [3600]}))
        .await;
    let mut ids = Vec::new();
    for i in 0..12 {
        let n = server
            .notify(&app, json!({"event_type": "e", "payload": {"i": i}}))
            .await;
        ids.push(n["id"].as_str().unwrap().to_string());
    }
    rx.wait_count(8).await; // 8 in flight, 4 queued
    let (db, dir) = server.stop().await;
    rx.set_script(|_, _| Reply::Status(204, ""));
    let server = TestServer::start_on(db, engine_config(true)).await;
    for id in &ids {
        let v = server.wait_status(id, "succeeded").await;
        assert_eq!(v["deliveries"][0]["status"], "succeeded");
    }
    let delivered: std::collections::HashSet<i64> = rx
        .received()
        .iter()
        .filter_map(|r| r.json()["i"].as_i64())
        .collect();
    assert_eq!(delivered.len(), 12);
    drop(dir);
}

#[tokio::test]
async fn private_targets_are_refused_by_default_and_recorded_as_blocked() {
    // A literal private address or a localhost name is refused at the door (422); a name
    // that resolves to one only at delivery time is the engine's to block (its resolver
    // check is unit-tested in herald-engine's ssrf.rs). Here: a delivery accepted while
    // private targets were allowed, attempted after a restart without that permission.
    let rx = Receiver::start(Receiver::ok()).await;
    let strict = TestServer::start_with(engine_config(false)).await;
    let app = strict.app(json!({"retry": []})).await;
    let by_ip = rx.url("/");
    let by_name = format!("http://localhost:{}/", rx.addr.port());
    for url in [&by_ip, &by_name] {
        let (status, v) = strict
            .call(
                "POST",
                &format!("/v1/apps/{app}/notifications"),
                Some(json!({"event_type": "e", "payload": {}, "notify_url": url})),
            )
            .await;
        assert_eq!(status, 422, "{url}: {v}");
    }
    drop(strict);

    // The first attempt hangs in a receiver that never answers; the server stops with it
    // in flight, and restarts without permission for private targets.
    let hang = Receiver::start(|_, _| Reply::Hang).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("herald.db");
    let open = TestServer::start_on(db.clone(), engine_config(true)).await;
    let app = open.app(json!({"retry": []})).await;
    let by_name = format!("http://localhost:{}/", hang.addr.port());
    let n = open
        .notify(
            &app,
            json!({"event_type": "e", "payload": {}, "notify_url": by_name}),
        )
        .await;
    let id = n["id"].as_str().unwrap().to_string();
    hang.wait_count(1).await;
    let _ = open.stop().await;
    let strict = TestServer::start_on(db, engine_config(false)).await;
    let done = strict.wait_status(&id, "failed").await;
    let a = &done["deliveries"][0]["attempts"][0];
    assert_eq!(a["error_class"], "blocked-target", "{a}");
    assert!(a["error"].as_str().unwrap().contains("non-public"), "{a}");
    assert_eq!(rx.count(), 0, "nothing reached the private receiver");
    assert_eq!(hang.count(), 1, "no attempt after the restart reached it");
}

#[tokio::test]
async fn rotated_secret_signs_with_new_and_old_keys_during_grace() {
    let server = TestServer::start().await;
    let rx = Receiver::start(Receiver::ok()).await;
    let app = server.app(json!({})).await;
    server.endpoint(&app, json!({"url": rx.url("/")})).await;
    let (status, rotated) = server
        .call(
            "POST",
            &format!("/v1/apps/{app}/secret/rotate"),
            Some(json!({"grace_period": 3600})),
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    let new_secret = rotated["credentials"]["secret"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(new_secret, SECRET);
    let n = server
        .notify(&app, json!({"event_type": "e", "payload": {}}))
        .await;
    server
        .wait_status(n["id"].as_str().unwrap(), "succeeded")
        .await;
    let got = rx.received();
    verify(&got[0], &new_secret).expect("new key signs");
    verify(&got[0], SECRET).expect("old key still signs during the grace period");
    // The secret is never shown again.
    let (_, app_view) = server.call("GET", &format!("/v1/apps/{app}"), None).await;
    assert!(!app_view.to_string().contains("whsec_"), "{app_view}");
}

#[tokio::test]
async fn failed_delivery_can_be_retried_by_hand_and_recovered() {
    let server = TestServer::start().await;
    let rx = Receiver::start(|_, _| Reply::Status(500, "")).await;
    let app = server.app(json!({"retry": []})).await;
    server.endpoint(&app, json!({"url": rx.url("/")})).await;
    let n = server
        .notify(&app, json!({"event_type": "e", "payload": {}}))
        .await;
    let id = n["id"].as_str().unwrap().to_string();
    server.wait_status(&id, "failed").await;

    rx.set_script(|_, _| Reply::Status(204, ""));
    let dlv = n["deliveries"][0]["id"].as_str().unwrap();
    let (status, v) = server
        .call("POST", &format!("/v1/deliveries/{dlv}/retry"), None)
        .await;
    assert_eq!(status, 202, "{v}");
    let done = server.wait_status(&id, "succeeded").await;
    assert_eq!(done["deliveries"][0]["attempt_count"], 2);

    // recover: everything failed since a time goes back to pending.
    rx.set_script(|_, _| Reply::Status(500, ""));
    let m = server
        .notify(&app, json!({"event_type": "e", "payload": {}}))
        .await;
    let mid = m["id"].as_str().unwrap().to_string();
    server.wait_status(&mid, "failed").await;
    rx.set_script(|_, _| Reply::Status(204, ""));
    let (status, v) = server
        .call(
            "POST",
            &format!("/v1/apps/{app}/recover"),
            Some(json!({"since": "2000-01-01T00:00:00Z"})),
        )
        .await;
    assert_eq!((status, v["requeued"].as_u64()), (202, Some(1)));
    server.wait_status(&mid, "succeeded").await;
}

#[tokio::test]
async fn ed25519_app_signs_v1a_verifiable_with_its_public_key() {
    let server = TestServer::start().await;
    let rx = Receiver::start(Receiver::ok()).await;
    let (status, v) = server
        .call(
            "POST",
            "/v1/apps",
            Some(json!({"name": "ed", "credentials": {"key_type": "ed25519"}})),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let app = v["id"].as_str().unwrap().to_string();
    let public = v["credentials"]["public_key"].as_str().unwrap().to_string();
    assert!(public.starts_with("whpk_"));
    server.endpoint(&app, json!({"url": rx.url("/")})).await;
    let n = server
        .notify(&app, json!({"event_type": "e", "payload": {}}))
        .await;
    server
        .wait_status(n["id"].as_str().unwrap(), "succeeded")
        .await;
    let got = rx.received();
    assert!(got[0].header("webhook-signature").starts_with("v1a,"));
    verify(&got[0], &public).expect("verifies with the public key");
}

#[tokio::test]
async fn stuck_endpoint_backlog_is_parked_memory_stays_bounded_and_nothing_is_lost() {
    let mut config = engine_config(true);
    config.max_in_memory = 200;
    config.claim_batch = 100;
    config.window = Duration::from_secs(2);
    config.request_timeout = Duration::from_secs(1);
    // What is measured here is memory under a backlog the endpoint cannot take; the breaker
    // would hold that backlog back in the store after 10 failures (and delay the recovery
    // below by its cool-down), so it stays closed here. tests/ops.rs and the scheduler's
    // tests cover the breaker.
    config.breaker.failure_threshold = u32::MAX;
    let server = TestServer::start_with(config).await;
    let stuck = Receiver::start(|_, _| Reply::Hang).await;
    let healthy = Receiver::start(Receiver::ok()).await;
    let slow_app = server.app(json!({"retry": [0.2]})).await;
    let app = server.app(json!({})).await;
    server
        .endpoint(&slow_app, json!({"url": stuck.url("/")}))
        .await;
    server
        .endpoint(&app, json!({"url": healthy.url("/")}))
        .await;
    let mut slow = Vec::new();
    for _ in 0..600 {
        slow.push(
            server
                .notify(&slow_app, json!({"event_type": "e", "payload": {}}))
                .await,
        );
    }
    let mut fast = Vec::new();
    for _ in 0..50 {
        fast.push(
            server
                .notify(&app, json!({"event_type": "e", "payload": {}}))
                .await,
        );
    }
    for n in &fast {
        server
            .wait_status(n["id"].as_str().unwrap(), "succeeded")
            .await;
    }
    let stats = server.running.as_ref().unwrap().stats.clone();
    let in_memory = stats.in_memory.load(std::sync::atomic::Ordering::Relaxed);
    assert!(in_memory <= 200, "memory holds {in_memory} deliveries");
    assert!(
        stats.parked.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "the backlog was parked"
    );
    // The endpoint recovers: every parked or evicted delivery is still delivered.
    stuck.set_script(|_, _| Reply::Status(204, ""));
    for n in &slow {
        server
            .wait_status(n["id"].as_str().unwrap(), "succeeded")
            .await;
    }
}

#[tokio::test]
async fn an_endpoints_timeout_ms_limits_each_attempt() {
    let server = TestServer::start().await;
    let hanging = Receiver::start(|_, _| Reply::Hang).await;
    let app = server.app(json!({"retry": [60]})).await;
    let (status, ep) = server
        .call(
            "POST",
            &format!("/v1/apps/{app}/endpoints"),
            Some(json!({"url": hanging.url("/"), "timeout_ms": 300})),
        )
        .await;
    assert_eq!(status, 201, "{ep}");
    assert_eq!(ep["timeout_ms"], 300);
    let n = server
        .notify(&app, json!({"event_type": "e", "payload": {}}))
        .await;
    let v = server
        .wait_for(n["id"].as_str().unwrap(), |v| {
            v["deliveries"][0]["attempts"]
                .as_array()
                .is_some_and(|a| !a.is_empty())
        })
        .await;
    let attempt = &v["deliveries"][0]["attempts"][0];
    assert_eq!(attempt["error_class"], "timeout", "{attempt}");
    // Cut at the endpoint's 300 ms, not the default 15 s.
    assert!(
        attempt["duration_ms"].as_u64().unwrap() < 5_000,
        "{attempt}"
    );
    // Out of range is refused, and null clears it.
    let ep_id = ep["id"].as_str().unwrap();
    let (status, _) = server
        .call(
            "PATCH",
            &format!("/v1/apps/{app}/endpoints/{ep_id}"),
            Some(json!({"timeout_ms": 0})),
        )
        .await;
    assert_eq!(status, 422);
    let (status, v) = server
        .call(
            "PATCH",
            &format!("/v1/apps/{app}/endpoints/{ep_id}"),
            Some(json!({"timeout_ms": null})),
        )
        .await;
    assert_eq!(
        (status, &v["timeout_ms"]),
        (200, &serde_json::Value::Null),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_apps_hanging_endpoints_do_not_starve_another_apps_healthy_endpoint() {
    // Ten endpoints of one app never answer, each allowed the most attempts at once (256):
    // together past the global limit (here 200, so the test stays small). Another app's
    // healthy endpoint still gets a slot at once, not when the hanging attempts time out.
    let mut config = engine_config(true);
    config.global_concurrency = 200;
    config.app_max_in_flight = 100;
    let server = TestServer::start_with(config).await;
    let hanging = Receiver::start(|_, _| Reply::Hang).await;
    let healthy = Receiver::start(Receiver::ok()).await;
    let hog = server.app(json!({})).await;
    for i in 0..10 {
        server
            .endpoint(
                &hog,
                json!({"url": hanging.url(&format!("/{i}")), "max_in_flight": 256}),
            )
            .await;
    }
    for _ in 0..30 {
        server
            .notify(&hog, json!({"event_type": "e", "payload": {}}))
            .await;
    }
    hanging.wait_count(100).await;
    let app = server.app(json!({})).await;
    server
        .endpoint(&app, json!({"url": healthy.url("/")}))
        .await;
    let started = std::time::Instant::now();
    let n = server
        .notify(&app, json!({"event_type": "e", "payload": {}}))
        .await;
    server
        .wait_status(n["id"].as_str().unwrap(), "succeeded")
        .await;
    // The hanging attempts time out only after 15 s: delivered well before that.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "waited {:?}",
        started.elapsed()
    );
    assert_eq!(
        hanging.count(),
        100,
        "the hanging app holds its share, no more"
    );
}
