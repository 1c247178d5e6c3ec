//! The inbound gateway end to end: sources created over the API, providers' notifications
//! (real ones, from the payment sandbox) posted to `/in/{id}`, verified, stored, answered
//! with the provider's exact replies and forwarded by the engine to a real receiver.
mod common;

use std::time::{Duration, Instant};

use common::{Receiver, Reply, TestServer};
use herald_protocols::receive::IncomingRequest;
use herald_protocols::Profile;
use herald_server::sandbox::SandboxOptions;
use serde_json::{json, Value};

async fn sandbox() -> TestServer {
    TestServer::start_sandbox(SandboxOptions::default()).await
}

async fn merchant(server: &TestServer, profile: &str) -> (String, Value) {
    let (status, v) = server
        .call(
            "POST",
            "/v1/apps",
            Some(json!({"name": "merchant", "profile": profile})),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    (
        v["id"].as_str().unwrap().to_string(),
        v["credentials"].clone(),
    )
}

async fn pay(server: &TestServer, body: Value) -> String {
    let (status, v) = server
        .call("POST", "/v1/sandbox/payments", Some(body))
        .await;
    assert_eq!(status, 201, "{v}");
    let id = v["payment_id"].as_str().unwrap().to_string();
    let resp = server
        .client
        .post(format!("{}/pay/{id}/pay", server.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("")
        .send()
        .await
        .expect("pay");
    assert_eq!(resp.status().as_u16(), 200);
    id
}

async fn received(server: &TestServer, source_id: &str) -> Vec<Value> {
    let (status, v) = server
        .call(
            "GET",
            &format!("/v1/sources/{source_id}/notifications"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{v}");
    v["data"].as_array().cloned().unwrap_or_default()
}

/// Posts bytes to a path as a provider would; returns status, content type and body.
async fn post(
    server: &TestServer,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> (u16, String, String) {
    let resp = server
        .client
        .post(format!("{}{path}", server.base))
        .header("content-type", content_type)
        .body(body.to_vec())
        .send()
        .await
        .expect("post");
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (status, ct, resp.text().await.unwrap_or_default())
}

#[tokio::test]
async fn creating_a_source_checks_its_settings_and_shows_the_secret_only_once() {
    let server = sandbox().await;
    let (_, creds) = merchant(&server, "alipay").await;
    let pem = creds["public_key_pem"].as_str().unwrap();
    let ok = json!({"name": "alipay in", "profile": "alipay", "keys": [pem],
                    "destination": {"url": "http://127.0.0.1:9/notify"}});
    let with = |k: &str, v: Value| {
        let mut b = ok.clone();
        b[k] = v;
        b
    };
    let key_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(key_file.path(), pem).unwrap();
    let bad: Vec<(Value, &str)> = vec![
        (with("profile", json!("paypal")), "unknown profile"),
        (with("keys", json!([])), "keys is empty"),
        (
            with("keys", json!(["MIIB-not-a-key-SECRETSECRET"])),
            "keys:",
        ),
        (
            with("keys", json!([key_file.path().to_str().unwrap()])),
            "not file names",
        ),
        (
            with(
                "destination",
                json!({"url": "http://127.0.0.1:9/n", "format": "xml"}),
            ),
            "destination.format",
        ),
        (
            with("destination", json!({"url": "ftp://x/"})),
            "destination.url",
        ),
        (with("retry", json!("hourly-ish")), "retry"),
    ];
    for (body, why) in bad {
        let (status, v) = server.call("POST", "/v1/sources", Some(body.clone())).await;
        assert_eq!(status, 422, "{why}: {v}");
        let msg = v["error"]["message"].as_str().unwrap_or("");
        assert!(msg.contains(why), "{why}: {msg}");
        assert!(!msg.contains("SECRETSECRET"), "a key is echoed: {msg}");
    }
    let (status, _) = server
        .call_raw(
            "POST",
            "/v1/sources",
            Some(ok.to_string().into_bytes()),
            None,
            &[],
        )
        .await;
    assert_eq!(status, 401, "admin only");
    let (status, v) = server.call("GET", "/v1/sources", None).await;
    assert_eq!(
        (status, v["data"].as_array().map(Vec::len)),
        (200, Some(0)),
        "nothing was created"
    );

    let (status, created) = server.call("POST", "/v1/sources", Some(ok.clone())).await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap();
    let secret = created["secret"].as_str().unwrap();
    assert!(
        id.starts_with("src_") && secret.starts_with("whsec_"),
        "{created}"
    );
    assert_eq!(
        created["ingest_url"],
        format!("{}/in/{id}", server.base),
        "{created}"
    );
    assert_eq!(created["destination"]["format"], "standard-webhooks");
    assert_eq!(created["profile"], "alipay");
    // Alipay's own schedule by default, in seconds.
    assert_eq!(
        created["retry"],
        json!(Profile::Alipay
            .default_retry()
            .delays_ms
            .iter()
            .map(|d| d / 1000)
            .collect::<Vec<_>>())
    );
    let (status, shown) = server.call("GET", &format!("/v1/sources/{id}"), None).await;
    assert_eq!(status, 200);
    let text = shown.to_string();
    assert!(
        !text.contains(secret) && !text.contains("BEGIN PUBLIC KEY"),
        "{text}"
    );
    assert_eq!(shown["keys"], 1);
    let (_, list) = server.call("GET", "/v1/sources", None).await;
    assert_eq!(list["data"][0]["id"], id);
    assert!(!list.to_string().contains(secret));

    let (status, _) = server
        .call("DELETE", &format!("/v1/sources/{id}"), None)
        .await;
    assert_eq!(status, 204);
    let (status, _) = server.call("GET", &format!("/v1/sources/{id}"), None).await;
    assert_eq!(status, 404);
    let (status, _) = server
        .call("DELETE", &format!("/v1/sources/{id}"), None)
        .await;
    assert_eq!(status, 404);
    let (status, _, _) = post(
        &server,
        &format!("/in/{id}"),
        "application/x-www-form-urlencoded",
        b"a=b",
    )
    .await;
    assert_eq!(status, 404, "a deleted source accepts nothing");
}

/// One real Alipay notification of a sandbox payment (signed by the app), captured.
async fn alipay_notification(server: &TestServer, app_id: &str, no: &str) -> (String, Vec<u8>) {
    let capture = Receiver::start(|_, _| Reply::Status(200, "success")).await;
    pay(
        server,
        json!({"app_id": app_id, "out_trade_no": no, "total_amount": "8.80",
               "subject": "coffee", "notify_url": capture.url("/notify")}),
    )
    .await;
    let got = capture.wait_count(1).await.remove(0);
    (got.header("content-type"), got.body.to_vec())
}

#[tokio::test]
async fn a_source_refuses_forged_and_foreign_notifications_with_the_providers_failure_reply() {
    let server = sandbox().await;
    let (app_id, creds) = merchant(&server, "alipay").await;
    let pem = creds["public_key_pem"].as_str().unwrap();
    let mk = |expect: &str| {
        json!({"name": "in", "profile": "alipay", "keys": [pem], "expect_app_id": expect,
               "destination": {"url": "http://127.0.0.1:9/notify"}})
    };
    let (_, ours) = server
        .call(
            "POST",
            "/v1/sources",
            Some(mk(creds["app_id"].as_str().unwrap())),
        )
        .await;
    let (_, foreign) = server
        .call("POST", "/v1/sources", Some(mk("2021000000009999")))
        .await;
    let (ct, body) = alipay_notification(&server, &app_id, "F-1").await;
    let fail = Profile::Alipay.failure_reply("");

    // One byte of the amount changed: the signature no longer verifies.
    let text = String::from_utf8(body.clone()).unwrap();
    assert!(text.contains("total_amount=8.80"), "{text}");
    let forged = text.replace("total_amount=8.80", "total_amount=0.01");
    let ours_path = format!("/in/{}", ours["id"].as_str().unwrap());
    let (status, _, reply) = post(&server, &ours_path, &ct, forged.as_bytes()).await;
    assert_eq!(
        (status, reply.as_bytes()),
        (fail.status, fail.body.as_slice())
    );
    assert!(received(&server, ours["id"].as_str().unwrap())
        .await
        .is_empty());

    // Correctly signed, but for another app id than the source expects.
    let foreign_path = format!("/in/{}", foreign["id"].as_str().unwrap());
    let (status, _, reply) = post(&server, &foreign_path, &ct, &body).await;
    assert_eq!(
        (status, reply.as_bytes()),
        (fail.status, fail.body.as_slice())
    );
    assert!(received(&server, foreign["id"].as_str().unwrap())
        .await
        .is_empty());

    // A body over the limit is refused before anything is read into a notification.
    let huge = vec![b'a'; 1024 * 1024 + 1];
    let (status, _, _) = post(&server, &ours_path, &ct, &huge).await;
    assert_eq!(status, 413);
    assert!(received(&server, ours["id"].as_str().unwrap())
        .await
        .is_empty());

    // The genuine one: exactly "success", stored once with its notify id and order.
    let (status, _, reply) = post(&server, &ours_path, &ct, &body).await;
    assert_eq!((status, reply.as_str()), (200, "success"));
    let got = received(&server, ours["id"].as_str().unwrap()).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["out_trade_no"], "F-1");
    assert_eq!(got[0]["event_type"], "payment");
    let notify_id = url::form_urlencoded::parse(&body)
        .find(|(k, _)| k == "notify_id")
        .map(|(_, v)| v.into_owned())
        .unwrap();
    assert_eq!(got[0]["notify_id"], notify_id);
}

#[tokio::test]
async fn a_source_forwards_the_decoded_notification_signed_with_its_secret() {
    let server = sandbox().await;
    let (app_id, creds) = merchant(&server, "wechatpay-v3").await;
    let rx = Receiver::start(Receiver::ok()).await;
    let (_, src) = server
        .call(
            "POST",
            "/v1/sources",
            Some(json!({"name": "v3 in", "profile": "wechatpay-v3",
                        "keys": [format!("{}={}", creds["serial"].as_str().unwrap(),
                                         creds["public_key_pem"].as_str().unwrap())],
                        "decrypt_key": creds["api_v3_key"],
                        "expect_merchant_id": creds["mchid"],
                        "destination": {"url": rx.url("/hook")}})),
        )
        .await;
    pay(
        &server,
        json!({"app_id": app_id, "out_trade_no": "V3-1", "amount": 1234, "subject": "tea",
               "notify_url": src["ingest_url"]}),
    )
    .await;
    let got = rx.wait_count(1).await.remove(0);
    // Verifies with the source's secret, as any Standard Webhooks library does.
    let keys = Profile::StandardWebhooks
        .receiver_keys(&[src["secret"].as_str().unwrap().to_string()], None)
        .unwrap();
    let headers: Vec<(String, String)> = got
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let req = IncomingRequest {
        method: "POST",
        headers: &headers,
        query: "",
        body: &got.body,
        now,
    };
    Profile::StandardWebhooks
        .verify(&keys, &req)
        .expect("the forward verifies with the source's secret");
    let n = got.json();
    assert_eq!(n["profile"], "wechatpay-v3");
    assert_eq!(n["kind"], "payment");
    assert_eq!(n["out_trade_no"], "V3-1");
    assert_eq!(n["amount"], 1234);
    assert_eq!(n["currency"], "CNY");
    assert_eq!(n["status"], "SUCCESS");
    assert_eq!(n["fields"]["resource"]["trade_state"], "SUCCESS", "{n:#}");
    assert_eq!(n["notify_id"], n["fields"]["id"]);
}

#[tokio::test]
async fn a_raw_source_forwards_the_providers_request_with_heralds_signature() {
    let server = sandbox().await;
    let (app_id, creds) = merchant(&server, "wechatpay-v2").await;
    let rx = Receiver::start(Receiver::ok()).await;
    let api_key = creds["api_key"].as_str().unwrap().to_string();
    let (status, src) = server
        .call(
            "POST",
            "/v1/sources",
            Some(
                json!({"name": "v2 raw", "profile": "wechatpay-v2", "keys": [api_key],
                        "destination": {"url": rx.url("/raw"), "format": "raw"}}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{src}");
    assert_eq!(src["destination"]["format"], "raw");
    pay(
        &server,
        json!({"app_id": app_id, "out_trade_no": "RAW-1", "amount": 100, "subject": "tea",
               "notify_url": src["ingest_url"]}),
    )
    .await;
    let got = rx.wait_count(1).await.remove(0);
    let headers: Vec<(String, String)> = got
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let req = IncomingRequest {
        method: "POST",
        headers: &headers,
        query: "",
        body: &got.body,
        now,
    };
    // The provider's own XML, its sign intact: the merchant's WeChat Pay check passes...
    assert!(
        got.body.starts_with(b"<xml>"),
        "{:?}",
        String::from_utf8_lossy(&got.body)
    );
    let wx = Profile::WechatPayV2
        .receiver_keys(&[api_key], None)
        .unwrap();
    let n = Profile::WechatPayV2
        .verify(&wx, &req)
        .expect("WeChat's signature intact");
    assert_eq!(n.out_trade_no.as_deref(), Some("RAW-1"));
    assert!(
        got.header("content-type").contains("xml"),
        "{}",
        got.header("content-type")
    );
    // ...and Herald's signature over the same bytes verifies with the source's secret.
    let sw = Profile::StandardWebhooks
        .receiver_keys(&[src["secret"].as_str().unwrap().to_string()], None)
        .unwrap();
    Profile::StandardWebhooks
        .verify(&sw, &req)
        .expect("Herald's signature verifies");
    let mut tampered = got.body.to_vec();
    let at = tampered.len() - 8;
    tampered[at] ^= 1;
    let req = IncomingRequest {
        body: &tampered,
        ..req
    };
    assert!(Profile::StandardWebhooks.verify(&sw, &req).is_err());
}

#[tokio::test]
async fn a_source_forwards_one_notification_of_an_order_at_a_time_in_the_order_received() {
    let server = sandbox().await;
    let (app_id, creds) = merchant(&server, "standard-webhooks").await;
    // The app fails the first forward: the order's next notification must wait for it.
    let rx = Receiver::start(|i, _| {
        if i == 0 {
            Reply::Status(500, "busy")
        } else {
            Reply::Status(204, "")
        }
    })
    .await;
    let (_, src) = server
        .call(
            "POST",
            "/v1/sources",
            Some(json!({"name": "sw in", "profile": "standard-webhooks",
                        "keys": [creds["secret"]], "retry": [1, 1],
                        "destination": {"url": rx.url("/hook")}})),
        )
        .await;
    let payment = pay(
        &server,
        json!({"app_id": app_id, "out_trade_no": "O-1", "amount": 700, "subject": "jam",
               "notify_url": src["ingest_url"]}),
    )
    .await;
    rx.wait_count(1).await;
    let (status, v) = server
        .call(
            "POST",
            &format!("/v1/sandbox/payments/{payment}/refund"),
            Some(json!({"amount": 700})),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    // The refund reached the gateway while the payment's forward was failing...
    let deadline = Instant::now() + Duration::from_secs(10);
    while received(&server, src["id"].as_str().unwrap()).await.len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the refund never reached the source"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ...and still reaches the app only after the payment did.
    let got = rx.wait_count(3).await;
    let kinds: Vec<String> = got
        .iter()
        .map(|r| r.json()["kind"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(kinds, vec!["payment", "payment", "refund"]);
    assert_eq!(rx.in_flight.lock().unwrap().1, 1, "never two at once");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.count(), 3);
}

#[tokio::test]
async fn a_dialect_source_verifies_with_its_own_dialect_and_answers_its_ack_text() {
    let server = sandbox().await;
    // A merchant on a custom dialect: the epay rules with an ack text of its own.
    let mut dialect =
        serde_json::to_value(herald_protocols::dialect::Dialect::preset("epay").unwrap()).unwrap();
    dialect["name"] = json!("acme");
    dialect["ack"] = json!("OK-ACME");
    let key = "acme-merchant-key-0123456789";
    let (status, app) = server
        .call(
            "POST",
            "/v1/apps",
            Some(json!({"name": "acme", "profile": "dialect",
                        "credentials": {"dialect": dialect, "key": key, "fields": {"pid": "1001"}}})),
        )
        .await;
    assert_eq!(status, 201, "{app}");
    let app_id = app["id"].as_str().unwrap().to_string();

    // A dialect option is refused for another profile, and an unknown preset by name.
    let (status, v) = server
        .call(
            "POST",
            "/v1/sources",
            Some(
                json!({"name": "x", "profile": "alipay", "keys": ["k"], "dialect": "epay",
                        "destination": {"url": "http://127.0.0.1:9/x"}}),
            ),
        )
        .await;
    assert_eq!(status, 422, "{v}");
    assert!(v.to_string().contains("dialect profile only"), "{v}");
    let (status, v) = server
        .call(
            "POST",
            "/v1/sources",
            Some(
                json!({"name": "x", "profile": "dialect", "keys": [key], "dialect": "nope",
                        "destination": {"url": "http://127.0.0.1:9/x"}}),
            ),
        )
        .await;
    assert_eq!(status, 422, "{v}");
    assert!(v.to_string().contains("no preset named"), "{v}");

    let rx = Receiver::start(Receiver::ok()).await;
    let (status, src) = server
        .call(
            "POST",
            "/v1/sources",
            Some(
                json!({"name": "acme in", "profile": "dialect", "keys": [key],
                        "dialect": dialect, "destination": {"url": rx.url("/hook")}}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{src}");
    pay(
        &server,
        json!({"app_id": app_id, "out_trade_no": "D-1", "amount": 990, "subject": "tea",
               "notify_url": src["ingest_url"]}),
    )
    .await;
    let got = rx.wait_count(1).await.remove(0);
    let n = got.json();
    assert_eq!(n["profile"], "dialect");
    assert_eq!(n["out_trade_no"], "D-1", "{n:#}");
    // The platform's delivery to the source succeeded: the source answered the dialect's
    // own ack text (the app's ack rule), not the epay preset's `success`.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, list) = server
            .call("GET", &format!("/v1/apps/{app_id}/notifications"), None)
            .await;
        let status = list["data"][0]["deliveries"][0]["status"].clone();
        if status == "succeeded" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sandbox's delivery to the source did not succeed: {list:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        received(&server, src["id"].as_str().unwrap()).await.len(),
        1
    );
}
