//! The payment sandbox (`herald serve --sandbox`) end to end: payments created over the API,
//! paid or canceled through the checkout page's forms (as a browser posts them, redirects not
//! followed), notifications delivered by the real engine to a real receiver and checked with
//! the providers' own SDKs and with Herald's verifier.
mod common;
#[path = "common/interop.rs"]
mod interop;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{Received, Receiver, Reply, TestServer};
use herald_protocols::receive::IncomingRequest;
use herald_protocols::{alipay, Profile, ReceiverKeys};
use herald_server::sandbox::SandboxOptions;
use serde_json::{json, Value};

async fn sandbox() -> TestServer {
    TestServer::start_sandbox(SandboxOptions::default()).await
}

/// Creates an app of `profile`; returns its id and the once-shown credentials view.
async fn app(server: &TestServer, profile: &str, extra: Value) -> (String, Value) {
    let mut body = json!({"name": "Coffee & <Co>", "profile": profile});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let (status, v) = server.call("POST", "/v1/apps", Some(body)).await;
    assert_eq!(status, 201, "{v}");
    (
        v["id"].as_str().unwrap().to_string(),
        v["credentials"].clone(),
    )
}

async fn create_payment(server: &TestServer, body: Value) -> Value {
    let (status, v) = server
        .call("POST", "/v1/sandbox/payments", Some(body))
        .await;
    assert_eq!(status, 201, "{v}");
    v
}

/// Posts the checkout page's form like a browser; returns the status and Location.
async fn post_form(server: &TestServer, path: &str) -> (u16, Option<String>, String) {
    let resp = server
        .client
        .post(format!("{}{path}", server.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("")
        .send()
        .await
        .expect("form post");
    let status = resp.status().as_u16();
    let location = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    (status, location, resp.text().await.unwrap_or_default())
}

async fn payment(server: &TestServer, id: &str) -> Value {
    let (status, v) = server
        .call("GET", &format!("/v1/sandbox/payments/{id}"), None)
        .await;
    assert_eq!(status, 200, "{v}");
    v
}

fn headers_of(r: &Received) -> Vec<(String, String)> {
    r.headers
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect()
}

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The receiver keys that verify what the app signs, from the stored credentials.
async fn keys(server: &TestServer, app_id: &str) -> (Profile, ReceiverKeys) {
    let app = server
        .running
        .as_ref()
        .unwrap()
        .store
        .get_app(app_id)
        .await
        .unwrap()
        .unwrap();
    let keys = app
        .profile
        .receiver_keys_from(&app.credentials, now_s())
        .expect("receiver keys");
    (app.profile, keys)
}

fn verify(
    profile: Profile,
    keys: &ReceiverKeys,
    r: &Received,
) -> Result<herald_protocols::receive::VerifiedNotification, String> {
    let headers = headers_of(r);
    profile
        .verify(
            keys,
            &IncomingRequest {
                method: "POST",
                headers: &headers,
                query: "",
                body: &r.body,
                now: now_s(),
            },
        )
        .map_err(|e| e.to_string())
}

/// Waits until the event's first notification reached `status`.
async fn wait_event_delivered(server: &TestServer, payment_id: &str, seq: usize, status: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let p = payment(server, payment_id).await;
        if let Some(id) = p["events"][seq]["notifications"][0]["notification_id"].as_str() {
            server.wait_status(id, status).await;
            return;
        }
        assert!(Instant::now() < deadline, "no notification recorded: {p:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn form(body: &[u8]) -> BTreeMap<String, String> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

fn ack(profile: &str) -> Reply {
    match profile {
        "alipay" => Reply::Status(200, "success"),
        "wechatpay-v2" => Reply::Status(
            200,
            "<xml><return_code><![CDATA[SUCCESS]]></return_code><return_msg><![CDATA[OK]]></return_msg></xml>",
        ),
        _ => Reply::Status(204, ""),
    }
}

/// Create, pay through the page's form, and check the delivered notification with the
/// provider's SDK and with `Profile::verify`; returns the receiver's request.
async fn paid_notification_is_accepted(
    profile: &str,
    sdk_keys: impl Fn(&Value) -> Value,
) -> (TestServer, Value, Received) {
    let server = sandbox().await;
    let reply = ack(profile);
    let rx = Receiver::start(move |_, _| reply.clone()).await;
    let (app_id, creds) = app(&server, profile, json!({})).await;
    let p = create_payment(
        &server,
        json!({"app_id": app_id, "out_trade_no": "T-1001", "amount": 8800,
               "subject": "Coffee x2", "notify_url": rx.url("/notify"),
               "return_url": "http://shop.test/return?from=sandbox"}),
    )
    .await;
    assert_eq!(p["status"], "WAIT_BUYER_PAY");
    let id = p["payment_id"].as_str().unwrap().to_string();
    let (status, location, _) = post_form(&server, &format!("/pay/{id}/pay")).await;
    assert_eq!(status, 303);
    let location = location.expect("a redirect to return_url");
    assert!(
        location.starts_with("http://shop.test/return?from=sandbox&"),
        "{location}"
    );
    assert!(location.contains("out_trade_no=T-1001"), "{location}");

    let got = rx.wait_count(1).await.remove(0);
    let (prof, keys) = keys(&server, &app_id).await;
    let v = verify(prof, &keys, &got).expect("Herald's verifier accepts the notification");
    assert_eq!(v.out_trade_no.as_deref(), Some("T-1001"));
    let sdk_headers: BTreeMap<String, String> = headers_of(&got).into_iter().collect();
    let (ok, out) = interop::sdk_check(profile, &sdk_headers, &got.body, &sdk_keys(&creds));
    assert!(
        ok,
        "{profile}: the SDK rejected the sandbox's notification: {out}"
    );
    wait_event_delivered(&server, &id, 0, "succeeded").await;
    assert_eq!(payment(&server, &id).await["status"], "TRADE_SUCCESS");
    (
        server,
        json!({"payment_id": id, "app_id": app_id, "location": location}),
        got,
    )
}

#[tokio::test]
async fn alipay_payment_notifies_trade_success_and_signs_only_alipays_return_parameters() {
    let (server, p, got) = paid_notification_is_accepted(
        "alipay",
        |c| json!({"app_id": c["app_id"], "public_key_pem": c["public_key_pem"]}),
    )
    .await;
    let f = form(&got.body);
    assert_eq!(f["trade_status"], "TRADE_SUCCESS");
    assert_eq!(f["total_amount"], "88.00");
    assert_eq!(f["notify_type"], "trade_status_sync");
    for k in [
        "notify_id",
        "notify_time",
        "app_id",
        "trade_no",
        "receipt_amount",
        "buyer_pay_amount",
        "subject",
        "gmt_create",
        "gmt_payment",
    ] {
        assert!(f.contains_key(k), "{k} missing: {f:?}");
    }
    // The return redirect: Alipay's own parameters verify as an alipay.trade.page.pay.return;
    // the return_url's own parameter (`from`) rides along unsigned, as Alipay passes it.
    let location = p["location"].as_str().unwrap();
    let full_query = location.split_once('?').unwrap().1;
    let ours: Vec<(String, String)> = url::form_urlencoded::parse(full_query.as_bytes())
        .into_owned()
        .filter(|(k, _)| k != "from")
        .collect();
    assert_eq!(
        form(full_query.as_bytes())["from"],
        "sandbox",
        "the custom parameter is passed on"
    );
    let query = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(&ours)
        .finish();
    let query = query.as_str();
    let (prof, keys) = keys(&server, p["app_id"].as_str().unwrap()).await;
    assert!(
        prof.verify(
            &keys,
            &IncomingRequest {
                method: "GET",
                headers: &[],
                query: full_query,
                body: b"",
                now: now_s(),
            },
        )
        .is_err(),
        "the custom parameter is not signed: verifying it with Alipay's fails"
    );
    let v = prof
        .verify(
            &keys,
            &IncomingRequest {
                method: "GET",
                headers: &[],
                query,
                body: b"",
                now: now_s(),
            },
        )
        .expect("the return_url parameters verify");
    assert_eq!(
        v.event_type.as_deref(),
        Some("alipay.trade.page.pay.return")
    );
    assert_eq!(v.amount.map(|a| a.minor), Some(8800));
    let tampered = query.replace("total_amount=88.00", "total_amount=1.00");
    assert!(prof
        .verify(
            &keys,
            &IncomingRequest {
                method: "GET",
                headers: &[],
                query: &tampered,
                body: b"",
                now: now_s()
            }
        )
        .is_err());
}

#[tokio::test]
async fn wechatpay_v2_payment_notification_passes_wechatpy() {
    let (_server, _, got) = paid_notification_is_accepted(
        "wechatpay-v2",
        |c| json!({"appid": c["appid"], "mch_id": c["mch_id"], "api_key": c["api_key"]}),
    )
    .await;
    let body = String::from_utf8_lossy(&got.body);
    for k in [
        "<total_fee><![CDATA[8800]]>",
        "<fee_type><![CDATA[CNY]]>",
        "<trade_type><![CDATA[NATIVE]]>",
        "<return_code><![CDATA[SUCCESS]]>",
        "<result_code><![CDATA[SUCCESS]]>",
        "<time_end>",
        "<transaction_id>",
        "<nonce_str>",
        "<appid>",
        "<mch_id>",
        "<cash_fee><![CDATA[8800]]>",
        "<bank_type><![CDATA[OTHERS]]>",
        "<is_subscribe><![CDATA[N]]>",
        "<openid><![CDATA[o",
    ] {
        assert!(body.contains(k), "{k} missing: {body}");
    }
    // An MD5 merchant's notify carries no sign_type, as WeChat's do.
    assert!(!body.contains("sign_type"), "{body}");
}

#[tokio::test]
async fn wechatpay_v3_payment_notification_passes_the_sdk() {
    let (server, p, got) = paid_notification_is_accepted("wechatpay-v3", |c| {
        json!({"mchid": c["mchid"], "api_v3_key": c["api_v3_key"], "public_key_pem": c["public_key_pem"], "serial": c["serial"]})
    })
    .await;
    let (prof, keys) = keys(&server, p["app_id"].as_str().unwrap()).await;
    let v = verify(prof, &keys, &got).unwrap();
    assert_eq!(v.event_type.as_deref(), Some("TRANSACTION.SUCCESS"));
    assert_eq!(v.amount.map(|a| a.minor), Some(8800));
    let t = &v.fields["resource"];
    assert_eq!(t["trade_state"], "SUCCESS");
    assert_eq!(t["trade_state_desc"], "支付成功");
    assert_eq!(t["bank_type"], "OTHERS");
    let openid = t["payer"]["openid"].as_str().unwrap();
    assert!(openid.starts_with('o') && openid.len() == 28, "{openid}");
    // New apps get a WeChat Pay public-key id, sent as Wechatpay-Serial.
    let serial = got.header("wechatpay-serial");
    assert!(serial.starts_with("PUB_KEY_ID_"), "{serial}");
    assert!(serial["PUB_KEY_ID_".len()..]
        .bytes()
        .all(|b| b.is_ascii_digit()));
}

#[tokio::test]
async fn stripe_payment_sends_payment_intent_succeeded() {
    let (_server, _, got) =
        paid_notification_is_accepted("stripe", |c| json!({"secret": c["secret"]})).await;
    let e = got.json();
    assert_eq!(e["type"], "payment_intent.succeeded");
    let o = &e["data"]["object"];
    assert_eq!(o["object"], "payment_intent");
    assert!(o["id"].as_str().unwrap().starts_with("pi_"));
    assert_eq!(
        (o["amount"].as_i64(), o["amount_received"].as_i64()),
        (Some(8800), Some(8800))
    );
    assert_eq!(o["currency"], "usd");
    assert_eq!(o["metadata"]["out_trade_no"], "T-1001");
    // Today's dated API version by default, and the request that caused it (none: the buyer
    // paid).
    assert_eq!(e["api_version"], "2026-01-28.clover");
    assert_eq!(e["request"], json!({"id": null, "idempotency_key": null}));
}

#[tokio::test]
async fn stripe_events_carry_the_api_version_set_for_the_app() {
    let server = sandbox().await;
    let rx = Receiver::start(Receiver::ok()).await;
    let (app_id, creds) = app(
        &server,
        "stripe",
        json!({"credentials": {"api_version": "2024-06-20"}}),
    )
    .await;
    assert_eq!(creds["api_version"], "2024-06-20");
    let p = create_payment(
        &server,
        json!({"app_id": app_id, "out_trade_no": "T-ver", "amount": 500, "subject": "pen",
               "notify_url": rx.url("/notify"), "drills": {"bad_signature": true}}),
    )
    .await;
    let id = p["payment_id"].as_str().unwrap();
    post_form(&server, &format!("/pay/{id}/pay")).await;
    // The real event and the drill's foreign-signed copy: the same version on both.
    let got = rx.wait_count(2).await;
    let mut accepted = 0;
    for r in &got {
        assert_eq!(r.json()["api_version"], "2024-06-20");
        let headers: BTreeMap<String, String> = headers_of(r).into_iter().collect();
        let (ok, _) = interop::sdk_check(
            "stripe",
            &headers,
            &r.body,
            &json!({"secret": creds["secret"]}),
        );
        accepted += usize::from(ok);
    }
    assert_eq!(accepted, 1, "the SDK takes the real event only");
    let (status, v) = server
        .call(
            "POST",
            "/v1/apps",
            Some(
                json!({"name": "x", "profile": "stripe", "credentials": {"api_version": "clover"}}),
            ),
        )
        .await;
    assert_eq!(status, 422, "{v}");
}

#[tokio::test]
async fn standard_webhooks_payment_sends_payment_succeeded() {
    let (_server, p, got) =
        paid_notification_is_accepted("standard-webhooks", |c| json!({"secret": c["secret"]}))
            .await;
    let e = got.json();
    assert_eq!(e["type"], "payment.succeeded");
    assert_eq!(e["amount"], 8800);
    assert_eq!(e["currency"], "USD");
    assert_eq!(e["app_id"], p["app_id"]);
    assert!(p["location"].as_str().unwrap().contains("payment_id=pay_"));
}

#[tokio::test]
async fn a_handler_that_answers_wrongly_twice_gets_the_third_attempt_on_schedule() {
    let server = sandbox().await;
    let rx = Receiver::start(|n, _| {
        if n < 2 {
            Reply::Status(200, "fail")
        } else {
            Reply::Status(200, "success")
        }
    })
    .await;
    let (app_id, _) = app(&server, "alipay", json!({"retry": [0.3, 0.3]})).await;
    let p = create_payment(
        &server,
        json!({"app_id": app_id, "out_trade_no": "T-retry", "total_amount": "1.00",
               "subject": "tea", "notify_url": rx.url("/notify")}),
    )
    .await;
    let id = p["payment_id"].as_str().unwrap();
    let (status, _, html) = post_form(&server, &format!("/pay/{id}/pay")).await;
    assert_eq!(status, 200, "no return_url: the paid page");
    assert!(html.contains("TRADE_SUCCESS"), "{html}");
    let got = rx.wait_count(3).await;
    let gap1 = got[1].at - got[0].at;
    let gap2 = got[2].at - got[1].at;
    assert!(
        gap1 >= Duration::from_millis(250) && gap2 >= Duration::from_millis(250),
        "{gap1:?} {gap2:?}"
    );
    let ids: Vec<String> = got
        .iter()
        .map(|r| form(&r.body)["notify_id"].clone())
        .collect();
    assert!(
        ids.iter().all(|i| i == &ids[0]),
        "one notify id on every attempt: {ids:?}"
    );
    wait_event_delivered(&server, id, 0, "succeeded").await;
}

#[tokio::test]
async fn refunds_are_notified_after_the_payment_in_order_and_bounded() {
    let server = sandbox().await;
    let rx = Receiver::start(|_, _| Reply::Status(200, "success")).await;
    let (app_id, _) = app(&server, "alipay", json!({})).await;
    let p = create_payment(
        &server,
        json!({"app_id": app_id, "out_trade_no": "T-refund", "total_amount": "10.00",
               "subject": "book", "notify_url": rx.url("/notify")}),
    )
    .await;
    let id = p["payment_id"].as_str().unwrap();
    let refund_path = format!("/v1/sandbox/payments/{id}/refund");
    let (status, v) = server
        .call("POST", &refund_path, Some(json!({"amount": 100})))
        .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (409, Some("conflict")),
        "{v}"
    );
    post_form(&server, &format!("/pay/{id}/pay")).await;
    let (status, v) = server
        .call("POST", &refund_path, Some(json!({"amount": 300})))
        .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["refunded_total"], 300);
    let (status, v) = server
        .call("POST", &refund_path, Some(json!({"refund_amount": "7.01"})))
        .await;
    assert_eq!(status, 422, "more than is left: {v}");
    let (status, v) = server
        .call("POST", &refund_path, Some(json!({"refund_amount": "7.00"})))
        .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["status"], "TRADE_CLOSED");

    let got = rx.wait_count(3).await;
    let f: Vec<_> = got.iter().map(|r| form(&r.body)).collect();
    assert_eq!(f[0]["trade_status"], "TRADE_SUCCESS");
    assert!(!f[0].contains_key("refund_fee"));
    assert_eq!(
        (f[1]["trade_status"].as_str(), f[1]["refund_fee"].as_str()),
        ("TRADE_SUCCESS", "3.00")
    );
    assert!(f[1].contains_key("out_biz_no") && f[1].contains_key("gmt_refund"));
    assert_eq!(
        (f[2]["trade_status"].as_str(), f[2]["refund_fee"].as_str()),
        ("TRADE_CLOSED", "10.00")
    );
    let view = payment(&server, id).await;
    assert_eq!(view["refunded_amount"], 1000);
    assert_eq!(view["refunds"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn out_of_order_drill_delivers_the_refund_before_the_payment() {
    let server = sandbox().await;
    let rx = Receiver::start(Receiver::ok()).await;
    let (app_id, _) = app(&server, "standard-webhooks", json!({})).await;
    let p = create_payment(
        &server,
        json!({"app_id": app_id, "out_trade_no": "T-ooo", "amount": 500, "subject": "cake",
               "notify_url": rx.url("/notify"), "drills": {"out_of_order": true}}),
    )
    .await;
    let id = p["payment_id"].as_str().unwrap();
    post_form(&server, &format!("/pay/{id}/pay")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.count(), 0, "the payment notification is held back");
    assert_eq!(payment(&server, id).await["events"][0]["held"], true);
    let (status, v) = server
        .call(
            "POST",
            &format!("/v1/sandbox/payments/{id}/refund"),
            Some(json!({"amount": 200})),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let got = rx.wait_count(2).await;
    assert_eq!(got[0].json()["type"], "refund.succeeded");
    assert_eq!(got[0].json()["refund_amount"], 200);
    assert_eq!(got[0].json()["refunded_total"], 200);
    assert_eq!(got[1].json()["type"], "payment.succeeded");
}

#[tokio::test]
async fn drills_send_duplicates_a_foreign_signed_copy_and_a_correctly_signed_tampered_amount() {
    let server = sandbox().await;
    let rx = Receiver::start(Receiver::ok()).await;
    let (app_id, _) = app(&server, "standard-webhooks", json!({})).await;
    let p = create_payment(
        &server,
        json!({"app_id": app_id, "out_trade_no": "T-drill", "amount": 500, "subject": "pie",
               "notify_url": rx.url("/notify")}),
    )
    .await;
    let id = p["payment_id"].as_str().unwrap();
    let (status, v) = server
        .call(
            "POST",
            &format!("/v1/sandbox/payments/{id}/drills"),
            Some(json!({"duplicate": 2, "bad_signature": true, "tampered_amount": true})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    post_form(&server, &format!("/pay/{id}/pay")).await;
    let got = rx.wait_count(5).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(rx.count(), 5, "1 + 2 duplicates + 2 drill copies");
    let (prof, keys) = keys(&server, &app_id).await;
    let (good, bad): (Vec<_>, Vec<_>) = got.iter().partition(|r| verify(prof, &keys, r).is_ok());
    // The bad_signature copy alone fails verification (signed by a foreign key).
    assert_eq!(bad.len(), 1);
    assert_eq!(bad[0].json()["amount"], 500);
    // The tampered copy verifies: only the amount check can refuse it. It has its own notify
    // id, so dedupe by notify id does not hide it.
    assert_eq!(good.len(), 4);
    let (real, tampered): (Vec<&Received>, Vec<&Received>) =
        good.iter().partition(|r| r.json()["amount"] == 500);
    assert_eq!(real.len(), 3);
    assert!(real
        .iter()
        .all(|r| r.header("webhook-id") == real[0].header("webhook-id")));
    assert_eq!(tampered.len(), 1);
    assert_eq!(
        tampered[0].json()["amount"],
        600,
        "the tampered copy claims more"
    );
    assert_ne!(
        tampered[0].header("webhook-id"),
        real[0].header("webhook-id")
    );
}

#[tokio::test]
async fn alipay_tampered_amount_drill_passes_the_sdk_with_a_changed_total() {
    let server = sandbox().await;
    let rx = Receiver::start(|_, _| Reply::Status(200, "success")).await;
    let (app_id, creds) = app(&server, "alipay", json!({})).await;
    let p = create_payment(
        &server,
        json!({"app_id": app_id, "out_trade_no": "T-tamper", "total_amount": "88.00",
               "subject": "tea", "notify_url": rx.url("/notify"),
               "drills": {"tampered_amount": true}}),
    )
    .await;
    let id = p["payment_id"].as_str().unwrap();
    post_form(&server, &format!("/pay/{id}/pay")).await;
    let got = rx.wait_count(2).await;
    let keys = json!({"app_id": creds["app_id"], "public_key_pem": creds["public_key_pem"]});
    let mut totals = vec![];
    let mut notify_ids = vec![];
    for r in &got {
        let headers: BTreeMap<String, String> = headers_of(r).into_iter().collect();
        let (ok, out) = interop::sdk_check("alipay", &headers, &r.body, &keys);
        assert!(ok, "python-alipay-sdk verifies every copy: {out}");
        let f = form(&r.body);
        totals.push(f["total_amount"].clone());
        notify_ids.push(f["notify_id"].clone());
    }
    totals.sort();
    assert_eq!(totals, ["88.00", "89.00"]);
    assert_ne!(notify_ids[0], notify_ids[1]);
}

#[tokio::test]
async fn trade_query_is_signed_like_the_alipay_gateway() {
    let (server, app_id, resp) = paid_trade_query("alipay").await;
    let text = resp.text().await.unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let inner = &v["alipay_trade_query_response"];
    assert_eq!(inner["trade_status"], "TRADE_SUCCESS");
    assert_eq!(inner["total_amount"], "12.34");
    // The signature covers the raw text of the response object.
    let start = text.find(":").unwrap() + 1;
    let end = text.rfind(",\"sign\"").unwrap();
    let raw = &text[start..end];
    let (_, keys) = keys(&server, &app_id).await;
    let ReceiverKeys::Alipay(k) = keys else {
        panic!("alipay keys")
    };
    assert!(alipay::verify_query_response(
        &k,
        raw,
        v["sign"].as_str().unwrap()
    ));
    assert!(!alipay::verify_query_response(
        &k,
        &raw.replace("12.34", "99.99"),
        v["sign"].as_str().unwrap()
    ));
    let (status, _) = server.call("GET", "/v1/sandbox/trades/T-q", None).await;
    assert_eq!(status, 422, "app_id is required");
    let (status, _) = server
        .call_raw(
            "GET",
            &format!("/v1/sandbox/trades/T-q?app_id={app_id}"),
            None,
            None,
            &[],
        )
        .await;
    assert_eq!(status, 401, "the admin token is required");
}

#[tokio::test]
async fn same_out_trade_no_is_idempotent_and_different_terms_conflict() {
    let server = sandbox().await;
    let (app_id, _) = app(&server, "alipay", json!({})).await;
    let terms = json!({"app_id": app_id, "out_trade_no": "T-idem", "total_amount": "5.00",
                       "subject": "tea", "notify_url": "http://shop.test/notify"});
    let first = create_payment(&server, terms.clone()).await;
    assert!(first["payment_url"]
        .as_str()
        .unwrap()
        .starts_with(&format!("{}/pay/pay_", server.base)));
    assert!(first["qr_code_svg"].as_str().unwrap().starts_with("<svg"));
    let (status, again) = server
        .call("POST", "/v1/sandbox/payments", Some(terms.clone()))
        .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["payment_id"], first["payment_id"]);
    let mut other = terms.clone();
    other["total_amount"] = json!("6.00");
    let (status, v) = server
        .call("POST", "/v1/sandbox/payments", Some(other))
        .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (409, Some("conflict")),
        "{v}"
    );

    for (bad, why) in [
        (json!({"amount": 500}), "both amounts"),
        (json!({"total_amount": "5.001"}), "too many decimals"),
        (json!({"currency": "USD"}), "alipay is CNY"),
        (json!({"notify_url": "ftp://x"}), "bad notify_url"),
        (json!({"out_trade_no": "has space"}), "bad out_trade_no"),
        (json!({"app_id": "app_missing"}), "unknown app"),
        (json!({"drills": {"duplicate": 99}}), "too many duplicates"),
    ] {
        let mut body = terms.clone();
        body["out_trade_no"] = json!("T-bad");
        for (k, v) in bad.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, v) = server
            .call("POST", "/v1/sandbox/payments", Some(body))
            .await;
        assert_eq!(status, 422, "{why}: {v}");
        assert!(v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    let (status, v) = server
        .call(
            "GET",
            "/v1/sandbox/trades/T-bad?app_id=".to_string().as_str(),
            None,
        )
        .await;
    assert_ne!(status, 200, "nothing was created: {v}");
    let (status, _) = server
        .call_raw(
            "POST",
            "/v1/sandbox/payments",
            Some(terms.to_string().into_bytes()),
            None,
            &[],
        )
        .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn cancel_closes_the_trade_and_alipay_notifies_trade_closed() {
    let server = sandbox().await;
    let rx = Receiver::start(|_, _| Reply::Status(200, "success")).await;
    let (app_id, _) = app(&server, "alipay", json!({})).await;
    let p = create_payment(
        &server,
        json!({"app_id": app_id, "out_trade_no": "T-cancel", "total_amount": "3.00",
               "subject": "bun", "notify_url": rx.url("/notify")}),
    )
    .await;
    let id = p["payment_id"].as_str().unwrap();
    let (status, _, html) = post_form(&server, &format!("/pay/{id}/cancel")).await;
    assert_eq!(status, 200);
    assert!(html.contains("TRADE_CLOSED"), "{html}");
    let got = rx.wait_count(1).await;
    let f = form(&got[0].body);
    assert_eq!(f["trade_status"], "TRADE_CLOSED");
    let (prof, keys) = keys(&server, &app_id).await;
    verify(prof, &keys, &got[0]).expect("the close notification verifies");
    assert_eq!(payment(&server, id).await["status"], "TRADE_CLOSED");
    let (status, _, _) = post_form(&server, &format!("/pay/{id}/pay")).await;
    assert_eq!(status, 409, "a closed trade cannot be paid");
}

#[tokio::test]
async fn an_unpaid_payment_closes_at_its_timeout() {
    let server = TestServer::start_sandbox(SandboxOptions {
        unpaid_timeout: Duration::from_millis(700),
        ..SandboxOptions::default()
    })
    .await;
    let rx = Receiver::start(Receiver::ok()).await;
    let (app_id, _) = app(&server, "standard-webhooks", json!({})).await;
    let p = create_payment(
        &server,
        json!({"app_id": app_id, "out_trade_no": "T-expire", "amount": 100, "subject": "gum",
               "notify_url": rx.url("/notify")}),
    )
    .await;
    let id = p["payment_id"].as_str().unwrap();
    let got = rx.wait_count(1).await;
    assert_eq!(got[0].json()["type"], "payment.closed");
    let v = payment(&server, id).await;
    assert_eq!(
        (v["status"].as_str(), v["close_reason"].as_str()),
        (Some("TRADE_CLOSED"), Some("expired"))
    );
}

#[tokio::test]
async fn checkout_page_shows_amount_subject_qr_and_pay_button_escaped() {
    let server = sandbox().await;
    let (app_id, _) = app(&server, "wechatpay-v3", json!({})).await;
    let p = create_payment(
        &server,
        json!({"app_id": app_id, "out_trade_no": "T-page", "total_amount": "1234.50",
               "subject": "<script>alert(1)</script> latte", "notify_url": "http://shop.test/n"}),
    )
    .await;
    let id = p["payment_id"].as_str().unwrap();
    let resp = server
        .client
        .get(format!("{}/pay/{id}", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let html = resp.text().await.unwrap();
    assert!(html.contains("1234.50"), "{html}");
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt; latte"));
    assert!(!html.contains("<script>alert"), "the subject is escaped");
    assert!(
        html.contains("Coffee &amp; &lt;Co&gt;"),
        "the merchant is the app's name"
    );
    assert!(html.contains("<svg"));
    assert!(html.contains("id=\"pay\"") && html.contains("id=\"cancel\""));
    let resp = server
        .client
        .get(format!("{}/pay/pay_nope", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}

#[tokio::test]
async fn paying_twice_sends_one_notification_and_a_wechat_v2_refund_sends_the_encrypted_refund_notify(
) {
    let server = sandbox().await;
    let reply = ack("wechatpay-v2");
    let rx = Receiver::start(move |_, _| reply.clone()).await;
    let (app_id, creds) = app(&server, "wechatpay-v2", json!({})).await;
    let p = create_payment(
        &server,
        json!({"app_id": app_id, "out_trade_no": "T-twice", "amount": 100, "subject": "gum",
               "notify_url": rx.url("/notify")}),
    )
    .await;
    let id = p["payment_id"].as_str().unwrap();
    post_form(&server, &format!("/pay/{id}/pay")).await;
    let (status, _, html) = post_form(&server, &format!("/pay/{id}/pay")).await;
    assert_eq!(status, 200);
    assert!(html.contains("TRADE_SUCCESS"));
    wait_event_delivered(&server, id, 0, "succeeded").await;
    let (status, v) = server
        .call(
            "POST",
            &format!("/v1/sandbox/payments/{id}/refund"),
            Some(json!({"amount": 40})),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    assert!(v["notification"]["notification_id"].is_string(), "{v}");
    let got = rx.wait_count(2).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        rx.count(),
        2,
        "one payment notification, one refund notification"
    );
    // WeChat's shape: return_code, appid, mch_id, nonce_str, req_info; no sign.
    let fields = herald_protocols::wechatpay_v2::parse_xml(&got[1].body).unwrap();
    let names: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        ["return_code", "appid", "mch_id", "nonce_str", "req_info"]
    );
    let req_info = &fields[4].1;
    let info = herald_protocols::wechatpay_v2::refund_notify::decrypt_req_info(
        creds["api_key"].as_str().unwrap(),
        req_info,
    )
    .expect("req_info decrypts with the API key");
    assert_eq!((info.refund_fee, info.total_fee), (40, 100));
    assert_eq!(info.out_trade_no, "T-twice");
    assert_eq!(info.refund_status, "SUCCESS");
    assert_eq!(info.refund_id, v["refund_id"].as_str().unwrap());
    let (prof, keys) = keys(&server, &app_id).await;
    let n = verify(prof, &keys, &got[1]).expect("the receiver takes it");
    assert_eq!(n.notify_id, info.refund_id);
    let headers: BTreeMap<String, String> = headers_of(&got[1]).into_iter().collect();
    let (ok, out) = interop::sdk_check(
        "wechatpay-v2",
        &headers,
        &got[1].body,
        &json!({"appid": creds["appid"], "mch_id": creds["mch_id"], "api_key": creds["api_key"]}),
    );
    assert!(ok, "wechatpy decrypts it: {out}");
    assert!(out.contains("\"refund_fee\": 40"), "{out}");
    assert_eq!(
        payment(&server, id).await["events"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[tokio::test]
async fn wechatpay_v2_hmac_notifications_carry_no_sign_type_like_wechats() {
    let server = sandbox().await;
    let reply = ack("wechatpay-v2");
    let rx = Receiver::start(move |_, _| reply.clone()).await;
    let (app_id, creds) = app(
        &server,
        "wechatpay-v2",
        json!({"credentials": {"sign_type": "HMAC-SHA256"}}),
    )
    .await;
    let p = create_payment(
        &server,
        json!({"app_id": app_id, "out_trade_no": "T-hmac", "amount": 100, "subject": "gum",
               "notify_url": rx.url("/notify")}),
    )
    .await;
    let id = p["payment_id"].as_str().unwrap();
    post_form(&server, &format!("/pay/{id}/pay")).await;
    let got = rx.wait_count(1).await;
    let fields = herald_protocols::wechatpay_v2::parse_xml(&got[0].body).unwrap();
    assert!(
        fields.iter().all(|(k, _)| k != "sign_type"),
        "no sign_type: {fields:?}"
    );
    let sign = fields.iter().find(|(k, _)| k == "sign").unwrap().1.clone();
    assert_eq!(sign.len(), 64, "an HMAC-SHA256 sign");
    assert_eq!(
        herald_protocols::wechatpay_v2::sign(
            &fields,
            creds["api_key"].as_str().unwrap(),
            herald_protocols::wechatpay_v2::SignType::HmacSha256
        ),
        sign
    );
    let (prof, keys) = keys(&server, &app_id).await;
    verify(prof, &keys, &got[0]).expect("Herald's receiver takes it");
}

/// Pays a fresh trade of `profile` and returns (server, app id, the trade query's response).
async fn paid_trade_query(profile: &str) -> (TestServer, String, reqwest::Response) {
    let server = sandbox().await;
    let rx = Receiver::start(|_, _| Reply::Status(200, "success")).await;
    let (app_id, _) = app(&server, profile, json!({})).await;
    let p = create_payment(
        &server,
        json!({"app_id": app_id, "out_trade_no": "T-q", "amount": 1234,
               "subject": "tea", "notify_url": rx.url("/notify")}),
    )
    .await;
    let id = p["payment_id"].as_str().unwrap();
    post_form(&server, &format!("/pay/{id}/pay")).await;
    let resp = server
        .client
        .get(format!(
            "{}/v1/sandbox/trades/T-q?app_id={app_id}",
            server.base
        ))
        .bearer_auth(common::TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    (server, app_id, resp)
}

#[tokio::test]
async fn trade_query_is_signed_like_wechat_pay_v2_orderquery() {
    let (server, app_id, resp) = paid_trade_query("wechatpay-v2").await;
    let body = resp.bytes().await.unwrap().to_vec();
    let (profile, keys) = keys(&server, &app_id).await;
    let headers = vec![("content-type".to_string(), "text/xml".to_string())];
    let check = |body: &[u8]| {
        profile.verify(
            &keys,
            &IncomingRequest {
                method: "POST",
                headers: &headers,
                query: "",
                body,
                now: now_s(),
            },
        )
    };
    let n = check(&body).expect("the orderquery XML's sign verifies with the API key");
    assert_eq!(n.status.as_deref(), Some("SUCCESS"));
    assert_eq!(n.fields["trade_state"], "SUCCESS");
    assert_eq!(n.amount.map(|a| a.minor), Some(1234));
    let tampered = String::from_utf8(body).unwrap().replace("1234", "9999");
    assert!(
        check(tampered.as_bytes()).is_err(),
        "a changed total_fee fails"
    );
}

#[tokio::test]
async fn trade_query_is_signed_like_wechat_pay_v3_responses() {
    let (server, app_id, resp) = paid_trade_query("wechatpay-v3").await;
    let header = |name: &str| resp.headers()[name].to_str().unwrap().to_string();
    let (ts, nonce, sig) = (
        header("wechatpay-timestamp"),
        header("wechatpay-nonce"),
        header("wechatpay-signature"),
    );
    let body = resp.text().await.unwrap();
    let app = server
        .running
        .as_ref()
        .unwrap()
        .store
        .get_app(&app_id)
        .await
        .unwrap()
        .unwrap();
    let herald_protocols::profile::Credentials::WechatPayV3(c) = &app.credentials else {
        panic!("wechatpay-v3 credentials")
    };
    let public = herald_protocols::keys::parse_private_key(&c.private_key)
        .unwrap()
        .to_public_key();
    let signed = |body: &str| format!("{ts}\n{nonce}\n{body}\n");
    assert!(herald_protocols::keys::verify_sha256(
        &public,
        signed(&body).as_bytes(),
        &sig
    ));
    assert!(!herald_protocols::keys::verify_sha256(
        &public,
        signed(&body.replace("1234", "9999")).as_bytes(),
        &sig
    ));
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["trade_state"], "SUCCESS");
    assert_eq!(v["amount"]["total"], 1234);
}

fn is_alipay_user_id(s: &str) -> bool {
    s.len() == 16 && s.starts_with("2088") && s.bytes().all(|b| b.is_ascii_digit())
}

#[tokio::test]
async fn alipay_notifications_carry_seller_buyer_and_fund_fields_like_real_ones() {
    let server = sandbox().await;
    let rx = Receiver::start(|_, _| Reply::Status(200, "success")).await;
    let (app_id, creds) = app(&server, "alipay", json!({})).await;
    let mut sellers = vec![];
    for no in ["T-a1", "T-a2"] {
        let p = create_payment(
            &server,
            json!({"app_id": app_id, "out_trade_no": no, "total_amount": "0.01",
                   "subject": "gum", "notify_url": rx.url("/notify")}),
        )
        .await;
        sellers.push(p["seller_id"].as_str().unwrap().to_string());
        let id = p["payment_id"].as_str().unwrap();
        post_form(&server, &format!("/pay/{id}/pay")).await;
    }
    let got = rx.wait_count(2).await;
    let f = form(&got[0].body);
    // A seller_id for every app, the same on all its payments.
    assert!(is_alipay_user_id(&f["seller_id"]), "{f:?}");
    assert_eq!(sellers, [f["seller_id"].clone(), f["seller_id"].clone()]);
    assert_eq!(form(&got[1].body)["seller_id"], f["seller_id"]);
    assert_eq!(f["auth_app_id"], creds["app_id"].as_str().unwrap());
    assert!(is_alipay_user_id(&f["buyer_id"]), "{f:?}");
    assert!(f["buyer_logon_id"].contains("****"), "{f:?}");
    assert_eq!(f["invoice_amount"], "0.01");
    assert_eq!(f["point_amount"], "0.00");
    assert_eq!(
        f["fund_bill_list"],
        r#"[{"amount":"0.01","fundChannel":"ALIPAYACCOUNT"}]"#
    );
    let headers: BTreeMap<String, String> = headers_of(&got[0]).into_iter().collect();
    let (ok, out) = interop::sdk_check(
        "alipay",
        &headers,
        &got[0].body,
        &json!({"app_id": creds["app_id"], "public_key_pem": creds["public_key_pem"]}),
    );
    assert!(ok, "{out}");
}

#[tokio::test]
async fn alipay_refund_notification_has_gmt_refund_with_milliseconds() {
    let server = sandbox().await;
    let rx = Receiver::start(|_, _| Reply::Status(200, "success")).await;
    let (app_id, _) = app(&server, "alipay", json!({})).await;
    let p = create_payment(
        &server,
        json!({"app_id": app_id, "out_trade_no": "T-gmt", "total_amount": "2.00",
               "subject": "gum", "notify_url": rx.url("/notify")}),
    )
    .await;
    let id = p["payment_id"].as_str().unwrap();
    post_form(&server, &format!("/pay/{id}/pay")).await;
    let (status, v) = server
        .call(
            "POST",
            &format!("/v1/sandbox/payments/{id}/refund"),
            Some(json!({"amount": 50})),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let got = rx.wait_count(2).await;
    let f = form(&got[1].body);
    // 2019-08-15 15:56:22.123
    let g = f["gmt_refund"].as_bytes();
    assert_eq!(g.len(), 23, "{}", f["gmt_refund"]);
    assert_eq!((g[10], g[19]), (b' ', b'.'), "{}", f["gmt_refund"]);
    assert!(
        g[20..].iter().all(u8::is_ascii_digit),
        "{}",
        f["gmt_refund"]
    );
    assert_eq!(f["refund_fee"], "0.50");
    let (prof, keys) = keys(&server, &app_id).await;
    verify(prof, &keys, &got[1]).expect("the refund notification verifies");
}

#[tokio::test]
async fn trade_finished_drill_ends_the_refund_window_and_alipay_notifies_it() {
    let server = sandbox().await;
    let rx = Receiver::start(|_, _| Reply::Status(200, "success")).await;
    let (app_id, creds) = app(&server, "alipay", json!({})).await;
    let p = create_payment(
        &server,
        json!({"app_id": app_id, "out_trade_no": "T-fin", "total_amount": "5.00",
               "subject": "gum", "notify_url": rx.url("/notify")}),
    )
    .await;
    let id = p["payment_id"].as_str().unwrap();
    post_form(&server, &format!("/pay/{id}/pay")).await;
    let refund_path = format!("/v1/sandbox/payments/{id}/refund");
    let (status, v) = server
        .call("POST", &refund_path, Some(json!({"amount": 100})))
        .await;
    assert_eq!(status, 201, "{v}");
    let (status, v) = server
        .call(
            "POST",
            &format!("/v1/sandbox/payments/{id}/drills"),
            Some(json!({"trade_finished": true})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["status"], "TRADE_FINISHED");
    let got = rx.wait_count(3).await;
    let f = form(&got[2].body);
    assert_eq!(f["trade_status"], "TRADE_FINISHED");
    assert_eq!(f["refund_fee"], "1.00");
    assert!(f.contains_key("gmt_close"), "{f:?}");
    let headers: BTreeMap<String, String> = headers_of(&got[2]).into_iter().collect();
    let (ok, out) = interop::sdk_check(
        "alipay",
        &headers,
        &got[2].body,
        &json!({"app_id": creds["app_id"], "public_key_pem": creds["public_key_pem"]}),
    );
    assert!(ok, "{out}");
    // The window is over: no more refunds.
    let (status, v) = server
        .call("POST", &refund_path, Some(json!({"amount": 100})))
        .await;
    assert_eq!(status, 409, "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("TRADE_FINISHED"));
}

#[tokio::test]
async fn wechatpay_v3_abnormal_and_closed_refunds_are_notified_with_their_summary() {
    let server = sandbox().await;
    let rx = Receiver::start(Receiver::ok()).await;
    let (app_id, _) = app(&server, "wechatpay-v3", json!({})).await;
    let p = create_payment(
        &server,
        json!({"app_id": app_id, "out_trade_no": "T-abn", "amount": 1000,
               "subject": "gum", "notify_url": rx.url("/notify")}),
    )
    .await;
    let id = p["payment_id"].as_str().unwrap();
    post_form(&server, &format!("/pay/{id}/pay")).await;
    let refund_path = format!("/v1/sandbox/payments/{id}/refund");
    for status in ["ABNORMAL", "CLOSED"] {
        let (code, v) = server
            .call(
                "POST",
                &refund_path,
                Some(json!({"amount": 300, "status": status})),
            )
            .await;
        assert_eq!(code, 201, "{v}");
        assert_eq!(v["refund_status"], status);
        assert_eq!(v["refunded_total"], 0, "nothing was refunded");
    }
    let got = rx.wait_count(3).await;
    let (prof, keys) = keys(&server, &app_id).await;
    for (r, (event, summary, status)) in got[1..].iter().zip([
        ("REFUND.ABNORMAL", "退款异常", "ABNORMAL"),
        ("REFUND.CLOSED", "退款关闭", "CLOSED"),
    ]) {
        let body = r.json();
        assert_eq!(
            (body["event_type"].as_str(), body["summary"].as_str()),
            (Some(event), Some(summary))
        );
        let n = verify(prof, &keys, r).unwrap();
        assert_eq!(n.fields["resource"]["refund_status"], status);
        assert!(n.fields["resource"].get("success_time").is_none());
    }
    assert_eq!(payment(&server, id).await["refundable_amount"], 1000);
    // Other providers report only successful refunds.
    let (alipay_app, _) = app(&server, "alipay", json!({})).await;
    let p = create_payment(
        &server,
        json!({"app_id": alipay_app, "out_trade_no": "T-abn", "total_amount": "1.00",
               "subject": "gum", "notify_url": rx.url("/notify")}),
    )
    .await;
    let id = p["payment_id"].as_str().unwrap();
    post_form(&server, &format!("/pay/{id}/pay")).await;
    let (code, v) = server
        .call(
            "POST",
            &format!("/v1/sandbox/payments/{id}/refund"),
            Some(json!({"amount": 10, "status": "ABNORMAL"})),
        )
        .await;
    assert_eq!(code, 422, "{v}");
}

#[tokio::test]
async fn wechat_pay_attempts_time_out_after_5_seconds() {
    let server = sandbox().await;
    let rx = Receiver::start(|_, _| Reply::Hang).await;
    let (app_id, _) = app(&server, "wechatpay-v2", json!({"retry": [60]})).await;
    let p = create_payment(
        &server,
        json!({"app_id": app_id, "out_trade_no": "T-slow", "amount": 100,
               "subject": "gum", "notify_url": rx.url("/notify")}),
    )
    .await;
    let id = p["payment_id"].as_str().unwrap();
    post_form(&server, &format!("/pay/{id}/pay")).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let attempt = loop {
        let v = payment(&server, id).await;
        if let Some(nid) = v["events"][0]["notifications"][0]["notification_id"].as_str() {
            let n = server.notification(nid).await;
            let attempts = &n["deliveries"][0]["attempts"];
            if attempts.as_array().is_some_and(|a| !a.is_empty()) {
                break attempts[0].clone();
            }
        }
        assert!(Instant::now() < deadline, "no attempt recorded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(attempt["error_class"], "timeout", "{attempt}");
    let ms = attempt["duration_ms"].as_u64().unwrap();
    assert!((4_900..8_000).contains(&ms), "timed out after {ms} ms");
}

/// A paid trade `no` (amount in minor units) of a new app of `profile`, its notifications
/// answered; returns the app id, its once-shown credentials, the payment id and the receiver.
async fn paid_trade(
    server: &TestServer,
    profile: &str,
    no: &str,
    amount: i64,
) -> (String, Value, String, Receiver) {
    let reply = ack(profile);
    let rx = Receiver::start(move |_, _| reply.clone()).await;
    let (app_id, creds) = app(server, profile, json!({})).await;
    let p = create_payment(
        server,
        json!({"app_id": app_id, "out_trade_no": no, "amount": amount, "subject": "tea",
               "notify_url": rx.url("/notify")}),
    )
    .await;
    let id = p["payment_id"].as_str().unwrap().to_string();
    post_form(server, &format!("/pay/{id}/pay")).await;
    (app_id, creds, id, rx)
}

/// Posts an Alipay gateway request (system parameters in the URL, biz_content in the form
/// body, as alipay-sdk-java does); returns the raw answer and its signature header.
async fn alipay_gateway(
    server: &TestServer,
    alipay_app_id: &str,
    method: &str,
    biz: Value,
) -> (String, Option<String>) {
    let query = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("app_id", alipay_app_id),
            ("method", method),
            ("charset", "utf-8"),
            ("sign_type", "RSA2"),
            ("timestamp", "2026-11-27 18:00:00"),
            ("version", "1.0"),
            ("sign", "bm90LWNoZWNrZWQ="),
        ])
        .finish();
    let body = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("biz_content", &biz.to_string())
        .finish();
    let resp = server
        .client
        .post(format!("{}/gateway.do?{query}", server.base))
        .header(
            "content-type",
            "application/x-www-form-urlencoded;charset=utf-8",
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let note = resp
        .headers()
        .get("herald-sandbox-request-signature")
        .map(|v| v.to_str().unwrap().to_string());
    (resp.text().await.unwrap(), note)
}

/// Checks an Alipay answer's signature over the exact text of its `key` object; returns it.
fn alipay_verified(keys: &ReceiverKeys, text: &str, key: &str) -> Value {
    let v: Value = serde_json::from_str(text).unwrap();
    let start = text.find(&format!("\"{key}\":")).unwrap() + key.len() + 3;
    let end = text.rfind(",\"sign\":").unwrap();
    let ReceiverKeys::Alipay(k) = keys else {
        panic!("alipay keys")
    };
    assert!(
        alipay::verify_query_response(k, &text[start..end], v["sign"].as_str().unwrap()),
        "the answer's sign verifies: {text}"
    );
    v[key].clone()
}

#[tokio::test]
async fn alipay_gateway_answers_trade_query_and_refund_signed_with_provider_errors() {
    let server = sandbox().await;
    let (app_id, creds, _, rx) = paid_trade(&server, "alipay", "T-gw", 1000).await;
    let alipay_app = creds["app_id"].as_str().unwrap();
    let (_, keys) = keys(&server, &app_id).await;

    let (text, note) = alipay_gateway(
        &server,
        alipay_app,
        "alipay.trade.query",
        json!({"out_trade_no": "T-gw"}),
    )
    .await;
    assert!(
        note.is_some_and(|n| n.starts_with("not-verified")),
        "the reply says the merchant's signature was not checked"
    );
    let q = alipay_verified(&keys, &text, "alipay_trade_query_response");
    assert_eq!(
        (q["code"].as_str(), q["msg"].as_str()),
        (Some("10000"), Some("Success"))
    );
    assert_eq!(q["trade_status"], "TRADE_SUCCESS");
    assert_eq!(q["total_amount"], "10.00");
    assert_eq!(
        q["fund_bill_list"],
        json!([{"amount": "10.00", "fund_channel": "ALIPAYACCOUNT"}])
    );
    assert!(is_alipay_user_id(q["buyer_user_id"].as_str().unwrap()));
    // By the provider's trade number too.
    let (text, _) = alipay_gateway(
        &server,
        alipay_app,
        "alipay.trade.query",
        json!({"trade_no": q["trade_no"]}),
    )
    .await;
    assert_eq!(
        alipay_verified(&keys, &text, "alipay_trade_query_response")["out_trade_no"],
        "T-gw"
    );

    let (text, _) = alipay_gateway(
        &server,
        alipay_app,
        "alipay.trade.query",
        json!({"out_trade_no": "T-none"}),
    )
    .await;
    let q = alipay_verified(&keys, &text, "alipay_trade_query_response");
    assert_eq!(
        (q["code"].as_str(), q["sub_code"].as_str()),
        (Some("40004"), Some("ACQ.TRADE_NOT_EXIST"))
    );

    let refund = json!({"out_trade_no": "T-gw", "refund_amount": "2.50", "out_request_no": "R1"});
    let (text, _) =
        alipay_gateway(&server, alipay_app, "alipay.trade.refund", refund.clone()).await;
    let r = alipay_verified(&keys, &text, "alipay_trade_refund_response");
    assert_eq!(r["code"], "10000", "{text}");
    assert_eq!(
        (
            r["fund_change"].as_str(),
            r["refund_fee"].as_str(),
            r["send_back_fee"].as_str()
        ),
        (Some("Y"), Some("2.50"), Some("2.50"))
    );
    // The same out_request_no again moves no money.
    let (text, _) = alipay_gateway(&server, alipay_app, "alipay.trade.refund", refund).await;
    let r = alipay_verified(&keys, &text, "alipay_trade_refund_response");
    assert_eq!(r["fund_change"], "N");
    let (text, _) = alipay_gateway(
        &server,
        alipay_app,
        "alipay.trade.refund",
        json!({"out_trade_no": "T-gw", "refund_amount": "7.51", "out_request_no": "R2"}),
    )
    .await;
    let r = alipay_verified(&keys, &text, "alipay_trade_refund_response");
    assert_eq!(
        (r["code"].as_str(), r["sub_code"].as_str()),
        (Some("40004"), Some("ACQ.REFUND_AMT_NOT_EQUAL_TOTAL"))
    );
    // The refund was notified like one made through the sandbox API.
    let got = rx.wait_count(2).await;
    let f = form(&got[1].body);
    assert_eq!(
        (f["refund_fee"].as_str(), f["out_biz_no"].as_str()),
        ("2.50", "R1")
    );
    // An app_id the sandbox does not know: Alipay's unsigned error_response.
    let (text, _) = alipay_gateway(
        &server,
        "2021000000000000",
        "alipay.trade.query",
        json!({"out_trade_no": "T-gw"}),
    )
    .await;
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error_response"]["sub_code"], "isv.invalid-app-id");
}

/// A WeChat Pay v2 request body signed with `api_key` (MD5, or HMAC-SHA256 when
/// `sign_type` is one of the fields).
fn v2_request(fields: &[(&str, &str)], api_key: &str) -> String {
    use herald_protocols::wechatpay_v2::{sign, SignType};
    let fields: Vec<(String, String)> = fields
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let t = if fields
        .iter()
        .any(|(k, v)| k == "sign_type" && v == "HMAC-SHA256")
    {
        SignType::HmacSha256
    } else {
        SignType::Md5
    };
    let s = sign(&fields, api_key, t);
    let mut xml = String::from("<xml>");
    for (k, v) in fields.iter().chain([("sign".to_string(), s)].iter()) {
        xml.push_str(&format!("<{k}><![CDATA[{v}]]></{k}>"));
    }
    xml + "</xml>"
}

async fn post_xml(server: &TestServer, path: &str, xml: String) -> BTreeMap<String, String> {
    let resp = server
        .client
        .post(format!("{}{path}", server.base))
        .header("content-type", "text/xml")
        .body(xml)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.bytes().await.unwrap();
    herald_protocols::wechatpay_v2::parse_xml(&body)
        .unwrap()
        .into_iter()
        .collect()
}

fn v2_answer_verifies(answer: &BTreeMap<String, String>, api_key: &str) -> bool {
    use herald_protocols::wechatpay_v2::{sign, SignType};
    let fields: Vec<(String, String)> =
        answer.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let t = if answer["sign"].len() == 64 {
        SignType::HmacSha256
    } else {
        SignType::Md5
    };
    sign(&fields, api_key, t) == answer["sign"]
}

#[tokio::test]
async fn wechat_v2_orderquery_and_refund_check_the_merchants_sign_and_answer_signed() {
    let server = sandbox().await;
    let (_, creds, _, _rx) = paid_trade(&server, "wechatpay-v2", "T-v2gw", 1000).await;
    let key = creds["api_key"].as_str().unwrap();
    let (appid, mch_id) = (
        creds["appid"].as_str().unwrap(),
        creds["mch_id"].as_str().unwrap(),
    );
    let nonce = "5K8264ILTKCH16CQ2502SI8ZNMTM67VS";

    let q = post_xml(
        &server,
        "/pay/orderquery",
        v2_request(
            &[
                ("appid", appid),
                ("mch_id", mch_id),
                ("nonce_str", nonce),
                ("out_trade_no", "T-v2gw"),
            ],
            key,
        ),
    )
    .await;
    assert_eq!(
        (
            q["return_code"].as_str(),
            q["result_code"].as_str(),
            q["trade_state"].as_str()
        ),
        ("SUCCESS", "SUCCESS", "SUCCESS"),
        "{q:?}"
    );
    assert_eq!(
        (q["total_fee"].as_str(), q["cash_fee"].as_str()),
        ("1000", "1000")
    );
    assert!(q["openid"].starts_with('o') && q.contains_key("bank_type"));
    assert!(v2_answer_verifies(&q, key), "{q:?}");

    // An HMAC-SHA256 request is answered in HMAC-SHA256.
    let q = post_xml(
        &server,
        "/pay/orderquery",
        v2_request(
            &[
                ("appid", appid),
                ("mch_id", mch_id),
                ("nonce_str", nonce),
                ("out_trade_no", "T-none"),
                ("sign_type", "HMAC-SHA256"),
            ],
            key,
        ),
    )
    .await;
    assert_eq!(
        (
            q["return_code"].as_str(),
            q["result_code"].as_str(),
            q["err_code"].as_str()
        ),
        ("SUCCESS", "FAIL", "ORDERNOTEXIST")
    );
    assert_eq!(q["sign"].len(), 64);
    assert!(v2_answer_verifies(&q, key));

    // A request signed with another key is refused.
    let q = post_xml(
        &server,
        "/pay/orderquery",
        v2_request(
            &[
                ("appid", appid),
                ("mch_id", mch_id),
                ("nonce_str", nonce),
                ("out_trade_no", "T-v2gw"),
            ],
            "0123456789abcdef0123456789abcdef",
        ),
    )
    .await;
    assert_eq!(
        (q["return_code"].as_str(), q["return_msg"].as_str()),
        ("FAIL", "签名错误")
    );

    let refund = |fee: &'static str, no: &'static str| {
        v2_request(
            &[
                ("appid", appid),
                ("mch_id", mch_id),
                ("nonce_str", nonce),
                ("out_trade_no", "T-v2gw"),
                ("out_refund_no", no),
                ("total_fee", "1000"),
                ("refund_fee", fee),
            ],
            key,
        )
    };
    let r = post_xml(&server, "/secapi/pay/refund", refund("300", "RF1")).await;
    assert_eq!(
        (r["return_code"].as_str(), r["result_code"].as_str()),
        ("SUCCESS", "SUCCESS"),
        "{r:?}"
    );
    assert_eq!(
        (r["refund_fee"].as_str(), r["out_refund_no"].as_str()),
        ("300", "RF1")
    );
    assert!(r["refund_id"].starts_with("503"));
    assert!(v2_answer_verifies(&r, key));
    let r = post_xml(&server, "/secapi/pay/refund", refund("701", "RF2")).await;
    assert_eq!(
        (r["result_code"].as_str(), r["err_code"].as_str()),
        ("FAIL", "INVALID_REQUEST"),
        "more than is left: {r:?}"
    );
    let q = post_xml(
        &server,
        "/pay/orderquery",
        v2_request(
            &[
                ("appid", appid),
                ("mch_id", mch_id),
                ("nonce_str", nonce),
                ("out_trade_no", "T-v2gw"),
            ],
            key,
        ),
    )
    .await;
    assert_eq!(q["trade_state"], "REFUND");
}

#[tokio::test]
async fn wechat_v3_query_and_refund_answer_at_the_providers_paths_signed() {
    let server = sandbox().await;
    let (app_id, creds, _, rx) = paid_trade(&server, "wechatpay-v3", "T-v3gw", 1000).await;
    let mchid = creds["mchid"].as_str().unwrap();
    let public =
        herald_protocols::keys::parse_public_key(creds["public_key_pem"].as_str().unwrap())
            .unwrap();
    let check = |resp: &reqwest::Response| {
        let h = |n: &str| resp.headers()[n].to_str().unwrap().to_string();
        assert_eq!(h("wechatpay-serial"), creds["serial"].as_str().unwrap());
        assert!(h("herald-sandbox-request-signature").starts_with("not-verified"));
        (
            h("wechatpay-timestamp"),
            h("wechatpay-nonce"),
            h("wechatpay-signature"),
        )
    };
    let verifies = |(ts, nonce, sig): &(String, String, String), body: &str| {
        herald_protocols::keys::verify_sha256(
            &public,
            format!("{ts}\n{nonce}\n{body}\n").as_bytes(),
            sig,
        )
    };

    let resp = server
        .client
        .get(format!(
            "{}/v3/pay/transactions/out-trade-no/T-v3gw?mchid={mchid}",
            server.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let sig = check(&resp);
    let body = resp.text().await.unwrap();
    assert!(verifies(&sig, &body));
    let t: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (t["trade_state"].as_str(), t["trade_state_desc"].as_str()),
        (Some("SUCCESS"), Some("支付成功"))
    );
    assert!(t["payer"]["openid"].as_str().unwrap().starts_with('o'));

    let resp = server
        .client
        .get(format!(
            "{}/v3/pay/transactions/out-trade-no/T-none?mchid={mchid}",
            server.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let sig = check(&resp);
    let body = resp.text().await.unwrap();
    assert!(verifies(&sig, &body));
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["code"],
        "ORDER_NOT_EXIST"
    );

    // The refund's notification goes to the notify_url of the refund request.
    let refund_rx = Receiver::start(Receiver::ok()).await;
    let auth = format!(
        "WECHATPAY2-SHA256-RSA2048 mchid=\"{mchid}\",nonce_str=\"abc\",signature=\"eA==\",timestamp=\"1\",serial_no=\"00\""
    );
    let resp = server
        .client
        .post(format!("{}/v3/refund/domestic/refunds", server.base))
        .header("authorization", &auth)
        .json(&json!({"out_trade_no": "T-v3gw", "out_refund_no": "RF-1",
                      "notify_url": refund_rx.url("/refund-notify"),
                      "amount": {"refund": 400, "total": 1000, "currency": "CNY"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let sig = check(&resp);
    let body = resp.text().await.unwrap();
    assert!(verifies(&sig, &body));
    let r: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (r["status"].as_str(), r["out_refund_no"].as_str()),
        (Some("SUCCESS"), Some("RF-1"))
    );
    assert_eq!(r["amount"]["refund"], 400);
    let got = refund_rx.wait_count(1).await;
    assert_eq!(got[0].json()["event_type"], "REFUND.SUCCESS");
    assert_eq!(
        rx.count(),
        1,
        "only the payment went to the payment's notify_url"
    );
    let (prof, keys) = keys(&server, &app_id).await;
    verify(prof, &keys, &got[0]).expect("the refund notification verifies");

    let resp = server
        .client
        .post(format!("{}/v3/refund/domestic/refunds", server.base))
        .header("authorization", &auth)
        .json(&json!({"out_trade_no": "T-none", "out_refund_no": "RF-2",
                      "amount": {"refund": 1, "total": 1, "currency": "CNY"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["code"],
        "RESOURCE_NOT_EXISTS"
    );
}

#[tokio::test]
async fn wechatpay_v2_tampered_copy_is_correctly_signed_under_its_own_transaction_id() {
    let server = sandbox().await;
    let reply = ack("wechatpay-v2");
    let rx = Receiver::start(move |_, _| reply.clone()).await;
    let (app_id, _) = app(&server, "wechatpay-v2", json!({})).await;
    let p = create_payment(
        &server,
        json!({"app_id": app_id, "out_trade_no": "T-v2t", "amount": 100, "subject": "gum",
               "notify_url": rx.url("/notify"), "drills": {"tampered_amount": true}}),
    )
    .await;
    let id = p["payment_id"].as_str().unwrap();
    post_form(&server, &format!("/pay/{id}/pay")).await;
    let got = rx.wait_count(2).await;
    let (prof, keys) = keys(&server, &app_id).await;
    let mut seen: Vec<(String, String)> = got
        .iter()
        .map(|r| {
            let n = verify(prof, &keys, r).expect("both copies are correctly signed");
            (
                n.fields["total_fee"].as_str().unwrap().to_string(),
                n.transaction_id.unwrap(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!((seen[0].0.as_str(), seen[1].0.as_str()), ("100", "200"));
    // No notify id on the wire: the dedupe key differs, so the amount check sees it.
    assert_ne!(seen[0].1, seen[1].1);
}

async fn get(server: &TestServer, path: &str) -> (u16, Option<String>, String) {
    let resp = server
        .client
        .get(format!("{}{path}", server.base))
        .send()
        .await
        .expect("get");
    let status = resp.status().as_u16();
    let location = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    (status, location, resp.text().await.unwrap_or_default())
}

#[tokio::test]
async fn checkout_page_polls_its_status_and_moves_on_when_paid_on_another_device() {
    let server = sandbox().await;
    let rx = Receiver::start(|_, _| Reply::Status(200, "success")).await;
    let (app_id, _) = app(&server, "alipay", json!({})).await;
    let p = create_payment(
        &server,
        json!({"app_id": app_id, "out_trade_no": "T-phone", "total_amount": "5.00",
               "subject": "tea", "notify_url": rx.url("/notify"),
               "return_url": "http://shop.test/orders/T-phone/return"}),
    )
    .await;
    let id = p["payment_id"].as_str().unwrap();
    let (status, _, html) = get(&server, &format!("/pay/{id}")).await;
    assert_eq!(status, 200);
    assert!(html.contains("<script>"), "the page polls: {html}");
    assert!(html.contains("/status"), "{html}");
    assert!(html.contains(&format!("data-payment=\"{id}\"")), "{html}");

    let (status, _, body) = get(&server, &format!("/pay/{id}/status")).await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["state"], "WAIT_BUYER_PAY");
    assert!(v["next"].is_null(), "{v}");
    // Nothing to return to before the payment.
    let (status, location, _) = get(&server, &format!("/pay/{id}/return")).await;
    assert_eq!((status, location), (200, None));

    // The phone pays (the same form, from another client).
    let (status, _, _) = post_form(&server, &format!("/pay/{id}/pay")).await;
    assert_eq!(status, 303);

    let (_, _, body) = get(&server, &format!("/pay/{id}/status")).await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["state"], "TRADE_SUCCESS");
    let next = v["next"].as_str().expect("where the page goes");
    assert_eq!(next, format!("/pay/{id}/return"));
    let (status, location, _) = get(&server, next).await;
    assert_eq!(status, 303);
    let location = location.expect("the return redirect");
    assert!(
        location.starts_with("http://shop.test/orders/T-phone/return?"),
        "{location}"
    );
    assert!(location.contains("out_trade_no=T-phone"), "{location}");
    assert!(
        location.contains("sign="),
        "Alipay's signed return parameters: {location}"
    );

    let (_, _, body) = get(&server, "/pay/pay_nope/status").await;
    assert!(body.contains("not_found"), "{body}");
}

#[tokio::test]
async fn checkout_page_shows_its_expiry_and_says_a_loopback_qr_works_on_this_machine_only() {
    let server = sandbox().await;
    let (app_id, _) = app(&server, "wechatpay-v2", json!({})).await;
    let p = create_payment(
        &server,
        json!({"app_id": app_id, "out_trade_no": "T-exp", "amount": 100, "subject": "gum",
               "notify_url": "http://shop.test/n"}),
    )
    .await;
    let id = p["payment_id"].as_str().unwrap();
    let expires_at = payment(&server, id).await["expires_at"]
        .as_str()
        .expect("an unpaid payment expires")
        .to_string();
    // 2026-11-27T21:50:00Z (or with fractions) -> "2026-11-27 21:50:00".
    let shown = format!("{} {}", &expires_at[..10], &expires_at[11..19]);
    let (_, _, html) = get(&server, &format!("/pay/{id}")).await;
    assert!(
        html.contains(&format!("Pay before {shown} UTC")),
        "{shown}: {html}"
    );
    assert!(html.contains("id=\"countdown\""), "{html}");
    assert!(server.base.contains("127.0.0.1"));
    assert!(
        html.contains("which only this machine can open"),
        "the QR hint tells the truth: {html}"
    );
    assert!(!html.contains("Scan to pay on your phone"), "{html}");
}

#[tokio::test]
async fn cancel_returns_the_buyer_to_the_shop_and_closes_the_trade() {
    let server = sandbox().await;
    let (app_id, _) = app(&server, "wechatpay-v3", json!({})).await;
    let p = create_payment(
        &server,
        json!({"app_id": app_id, "out_trade_no": "T-back", "amount": 100, "subject": "gum",
               "notify_url": "http://shop.test/n",
               "return_url": "http://shop.test/orders/T-back/return?x=1"}),
    )
    .await;
    let id = p["payment_id"].as_str().unwrap();
    let (status, location, _) = post_form(&server, &format!("/pay/{id}/cancel")).await;
    assert_eq!(status, 303);
    assert_eq!(
        location.as_deref(),
        Some("http://shop.test/orders/T-back/return?x=1"),
        "back to the shop, without payment parameters"
    );
    assert_eq!(payment(&server, id).await["status"], "TRADE_CLOSED");
    let (_, _, body) = get(&server, &format!("/pay/{id}/status")).await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["state"], "TRADE_CLOSED");
    assert_eq!(v["next"], format!("/pay/{id}"));
}
