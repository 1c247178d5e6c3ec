//! The payment sandbox playing the seed-era WeChat Pay (`wechatpay-legacy`) and an EPay-style
//! aggregator (`dialect`): a merchant app of that profile gets the provider's own
//! notification (the signed query and the buyer's XML; the EPay GET with `pid`, `money`,
//! `trade_status` and a lower-case MD5 `sign`), delivered by the real engine to `herald
//! listen`'s receiver, which verifies it with keys taken from the app's once-shown
//! credentials and answers the exact acknowledgement the engine waits for.
mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::TestServer;
use herald_protocols::Profile;
use herald_server::sandbox::SandboxOptions;
use serde_json::{json, Value};

/// Starts `herald listen`'s receiver for `profile` with these keys (and dialect); returns
/// its address and the lines it prints.
async fn listener(
    profile: Profile,
    keys: &[String],
    dialect: Option<&str>,
) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let rk = profile.receiver_keys(keys, None).expect("receiver keys");
    let rk = herald::cmd::verify::with_dialect(profile, rk, keys, dialect).expect("dialect");
    let lines = Arc::new(Mutex::new(Vec::new()));
    let out = lines.clone();
    let receiver = herald::cmd::listen::Receiver {
        profile,
        keys: Arc::new(rk),
        status: None,
        forward: None,
        dump: None,
        out: Arc::new(move |l| out.lock().unwrap().push(l)),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, herald::cmd::listen::router(receiver)).await });
    (addr, lines)
}

/// Creates an app, a payment of 88.00 for `T-1001` notifying `notify_url`, pays it through
/// the checkout form, and waits until the payment's notification is acknowledged.
async fn pay(server: &TestServer, app_id: &str, notify_url: &str) -> Value {
    let (status, p) = server
        .call(
            "POST",
            "/v1/sandbox/payments",
            Some(
                json!({"app_id": app_id, "out_trade_no": "T-1001", "amount": 8800,
                        "subject": "Coffee x2", "notify_url": notify_url,
                        "return_url": "http://shop.test/return"}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{p}");
    let id = p["payment_id"].as_str().unwrap().to_string();
    let resp = server
        .client
        .post(format!("{}/pay/{id}/pay", server.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 303);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, v) = server
            .call("GET", &format!("/v1/sandbox/payments/{id}"), None)
            .await;
        if let Some(n) = v["events"][0]["notifications"][0]["notification_id"].as_str() {
            return server.wait_status(n, "succeeded").await;
        }
        assert!(Instant::now() < deadline, "no notification: {v:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn verified(lines: &Arc<Mutex<Vec<String>>>) -> Value {
    let lines = lines.lock().unwrap().clone();
    assert_eq!(lines.len(), 1, "one request, verified: {lines:#?}");
    assert!(lines[0].starts_with("verified "), "{}", lines[0]);
    let json = &lines[0][lines[0].find('{').expect("the decoded notification")..];
    serde_json::from_str(json).unwrap()
}

#[tokio::test]
async fn the_sandbox_sends_a_seed_era_wechat_notification_that_herald_listen_verifies_and_acks() {
    let server = TestServer::start_sandbox(SandboxOptions::default()).await;
    let (status, app) = server
        .call(
            "POST",
            "/v1/apps",
            Some(json!({"name": "2014 shop", "profile": "wechatpay-legacy"})),
        )
        .await;
    assert_eq!(status, 201, "{app}");
    let c = &app["credentials"];
    let keys = vec![
        c["partner_key"].as_str().unwrap().to_string(),
        format!("appkey={}", c["app_key"].as_str().unwrap()),
    ];
    let (addr, lines) = listener(Profile::WechatPayLegacy, &keys, None).await;
    let n = pay(
        &server,
        app["id"].as_str().unwrap(),
        &format!("http://{addr}/notify"),
    )
    .await;
    assert_eq!(n["deliveries"][0]["attempt_count"], 1, "{n:#}");
    let v = verified(&lines);
    assert_eq!(v["profile"], "wechatpay-legacy");
    assert_eq!(v["out_trade_no"], "T-1001");
    assert_eq!(v["amount"]["minor"], 8800);
    assert_eq!(v["status"], "0");
    assert_eq!(v["merchant_id"], c["partner"]);
    assert_eq!(v["app_id"], c["appid"]);
    for f in [
        "bank_type",
        "notify_id",
        "time_end",
        "transaction_id",
        "OpenId",
        "AppSignature",
        "NonceStr",
    ] {
        assert!(v["fields"].get(f).is_some(), "{f} in {v:#}");
    }
    assert_eq!(v["fields"]["sign_type"], "MD5");
    assert_eq!(v["fields"]["SignMethod"], "sha1");
}

#[tokio::test]
async fn the_sandbox_sends_an_epay_notification_that_herald_listen_verifies_and_acks() {
    let server = TestServer::start_sandbox(SandboxOptions::default()).await;
    let (status, app) = server
        .call(
            "POST",
            "/v1/apps",
            Some(json!({"name": "epay shop", "profile": "dialect",
                        "credentials": {"dialect": "epay", "fields": {"pid": "1001"}}})),
        )
        .await;
    assert_eq!(status, 201, "{app}");
    let key = app["credentials"]["key"].as_str().unwrap().to_string();
    let (addr, lines) = listener(Profile::Dialect, &[key], Some("epay")).await;
    let n = pay(
        &server,
        app["id"].as_str().unwrap(),
        &format!("http://{addr}/notify"),
    )
    .await;
    assert_eq!(n["deliveries"][0]["attempt_count"], 1, "{n:#}");
    let v = verified(&lines);
    assert!(
        lines.lock().unwrap()[0].starts_with("verified GET /notify"),
        "{:?}",
        lines
    );
    assert_eq!(v["profile"], "dialect");
    assert_eq!(v["out_trade_no"], "T-1001");
    assert_eq!(v["amount"]["minor"], 8800);
    assert_eq!(v["event_type"], "paid");
    assert_eq!(v["merchant_id"], "1001");
    assert_eq!(v["fields"]["money"], "88.00");
    assert_eq!(v["fields"]["trade_status"], "TRADE_SUCCESS");
    assert_eq!(v["fields"]["sign_type"], "MD5");
    assert_eq!(v["fields"]["type"], "alipay");
    assert_eq!(v["fields"]["name"], "Coffee x2");
    let sign = v["fields"]["sign"].as_str().unwrap();
    assert!(
        sign.len() == 32
            && sign
                .bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()),
        "{sign}"
    );
}

#[tokio::test]
async fn a_dialect_app_with_its_own_ack_text_is_acknowledged_only_by_that_text() {
    let server = TestServer::start_sandbox(SandboxOptions::default()).await;
    let dialect = json!({
        "name": "acme", "canonical": "form", "key_placement": "append-param", "algorithm": "md5",
        "hex_case": "upper", "signature": {"field": "sign"}, "method": "POST", "ack": "OK",
        "fields": {"out_trade_no": "order", "amount": "amount", "amount_decimals": 0,
                   "status": "state", "paid_value": "PAID", "notify_id": "trade"}
    });
    let (status, app) = server
        .call(
            "POST",
            "/v1/apps",
            Some(
                json!({"name": "acme", "profile": "dialect", "credentials": {"dialect": dialect}}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{app}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("acme.json");
    std::fs::write(&file, dialect.to_string()).unwrap();
    let key = app["credentials"]["key"].as_str().unwrap().to_string();
    let (addr, lines) = listener(Profile::Dialect, &[key], Some(file.to_str().unwrap())).await;
    let n = pay(
        &server,
        app["id"].as_str().unwrap(),
        &format!("http://{addr}/notify"),
    )
    .await;
    assert_eq!(n["deliveries"][0]["attempt_count"], 1, "{n:#}");
    let v = verified(&lines);
    assert_eq!(v["fields"]["amount"], "8800");
    assert_eq!(v["fields"]["state"], "PAID");
    // The engine took "OK" as the ack because the app's dialect says so: an "success" would not.
    let (_, a) = server
        .call(
            "GET",
            &format!("/v1/apps/{}", app["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(a["credentials"]["dialect"]["ack"], "OK", "{a:#}");
}
