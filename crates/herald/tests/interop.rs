//! Interop: the providers' own Python SDKs (python-alipay-sdk, wechatpy, wechatpayv3,
//! stripe, standardwebhooks) verify notifications that Herald delivered to a test receiver:
//! payloads given to the notifications API, and the payment sandbox's own notifications
//! (payment, refund, close, finish) for every profile. The SDKs' API clients also query and
//! refund trades at the sandbox's provider paths, with only their base URL changed.
//! The test builds its own virtualenv under target/ on first use (pip from PyPI), so
//! `cargo test` needs no setup beyond `python3`.
mod common;
#[path = "common/interop.rs"]
mod interop;

use std::collections::BTreeMap;

use common::{Received, Receiver, Reply, TestServer};
use herald_server::sandbox::SandboxOptions;
use interop::{sdk_call, sdk_check};
use serde_json::{json, Value};

/// Delivers one notification through an app of `profile` and has the SDK check it, then
/// checks that the SDK rejects the same request with one body byte changed.
async fn delivered_notification_passes_the_sdk(
    profile: &str,
    credentials: Value,
    event_type: &str,
    payload: Value,
    ack: Reply,
    keys_from: impl Fn(&Value) -> Value,
) -> String {
    let server = TestServer::start().await;
    let rx = Receiver::start(move |_, _| ack.clone()).await;
    let (status, app) = server
        .call(
            "POST",
            "/v1/apps",
            Some(json!({"name": "interop", "profile": profile, "credentials": credentials})),
        )
        .await;
    assert_eq!(status, 201, "{app}");
    let app_id = app["id"].as_str().unwrap().to_string();
    let n = server
        .notify(
            &app_id,
            json!({"event_type": event_type, "payload": payload, "notify_url": rx.url("/notify")}),
        )
        .await;
    server
        .wait_status(n["id"].as_str().unwrap(), "succeeded")
        .await;
    let got = rx.received().remove(0);
    let headers: BTreeMap<String, String> = got
        .headers
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let keys = keys_from(&app["credentials"]);
    let (ok, out) = sdk_check(profile, &headers, &got.body, &keys);
    assert!(
        ok,
        "{profile}: the SDK rejected Herald's notification: {out}\nbody: {}",
        String::from_utf8_lossy(&got.body)
    );
    let mut tampered = got.body.to_vec();
    let i = tampered.len() / 2;
    tampered[i] = if tampered[i] == b'7' { b'8' } else { b'7' };
    let (ok, out) = sdk_check(profile, &headers, &tampered, &keys);
    assert!(!ok, "{profile}: the SDK accepted a tampered body: {out}");
    out_of(&sdk_check(profile, &headers, &got.body, &keys).1)
}

fn out_of(s: &str) -> String {
    s.trim().to_string()
}

#[tokio::test]
async fn standardwebhooks_sdk_accepts_herald_notifications() {
    let out = delivered_notification_passes_the_sdk(
        "standard-webhooks",
        json!(null),
        "payment.succeeded",
        json!({"out_trade_no": "T-1", "amount": 880}),
        Reply::Status(204, ""),
        |c| json!({"secret": c["secret"]}),
    )
    .await;
    assert!(out.contains("T-1"), "{out}");
}

#[tokio::test]
async fn alipay_sdk_accepts_herald_notifications() {
    let out = delivered_notification_passes_the_sdk(
        "alipay",
        json!(null),
        "trade.success",
        json!({"out_trade_no": "20261123-0001", "trade_no": "2026112322001400001", "total_amount": "88.00",
               "receipt_amount": "88.00", "trade_status": "TRADE_SUCCESS", "subject": "咖啡 x2", "buyer_id": "2088102177846880"}),
        Reply::Status(200, "success"),
        |c| json!({"app_id": c["app_id"], "public_key_pem": c["public_key_pem"]}),
    )
    .await;
    assert!(
        out.contains("20261123-0001") && out.contains("TRADE_SUCCESS"),
        "{out}"
    );
}

#[tokio::test]
async fn wechatpy_accepts_herald_v2_notifications() {
    let out = delivered_notification_passes_the_sdk(
        "wechatpay-v2",
        json!(null),
        "trade.success",
        json!({"out_trade_no": "W2-0001", "transaction_id": "4200000001202611230000000001", "total_fee": 1,
               "fee_type": "CNY", "openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o", "trade_type": "NATIVE",
               "bank_type": "CMC", "time_end": "20261123201500"}),
        Reply::Status(200, "<xml><return_code><![CDATA[SUCCESS]]></return_code><return_msg><![CDATA[OK]]></return_msg></xml>"),
        |c| json!({"appid": c["appid"], "mch_id": c["mch_id"], "api_key": c["api_key"]}),
    )
    .await;
    assert!(out.contains("W2-0001"), "{out}");
}

#[tokio::test]
async fn wechatpayv3_sdk_accepts_and_decrypts_herald_notifications() {
    let out = delivered_notification_passes_the_sdk(
        "wechatpay-v3",
        json!(null),
        "TRANSACTION.SUCCESS",
        json!({"out_trade_no": "W3-0001", "transaction_id": "4200000001202611230000000002", "trade_type": "NATIVE",
               "trade_state": "SUCCESS", "trade_state_desc": "支付成功", "bank_type": "OTHERS",
               "success_time": "2026-11-23T20:15:00+08:00", "payer": {"openid": "o1"},
               "amount": {"total": 880, "payer_total": 880, "currency": "CNY", "payer_currency": "CNY"}}),
        Reply::Status(204, ""),
        |c| json!({"mchid": c["mchid"], "api_v3_key": c["api_v3_key"], "public_key_pem": c["public_key_pem"], "serial": c["serial"]}),
    )
    .await;
    assert!(out.contains("W3-0001") && out.contains("880"), "{out}");
}

#[tokio::test]
async fn stripe_sdk_accepts_herald_events() {
    let out = delivered_notification_passes_the_sdk(
        "stripe",
        json!(null),
        "payment_intent.succeeded",
        json!({"id": "pi_3Nexample", "object": "payment_intent", "amount": 2000, "currency": "usd", "status": "succeeded"}),
        Reply::Status(200, ""),
        |c| json!({"secret": c["secret"]}),
    )
    .await;
    assert!(out.contains("payment_intent.succeeded"), "{out}");
}

fn headers_map(r: &Received) -> BTreeMap<String, String> {
    r.headers
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect()
}

/// What the sandbox does to one trade before the SDK checks its notifications.
enum Step {
    Pay,
    Refund(i64),
    Finish,
    Cancel,
}

/// Runs `steps` on a sandbox trade of `profile` (one trade per `Cancel`-free sequence; a
/// `Cancel` step uses a second, unpaid trade), waits for `expect` notifications, and has the
/// provider's SDK accept every one and refuse each with one body byte changed. Returns the
/// SDK's outputs.
async fn sandbox_notifications_pass_the_sdk(
    profile: &str,
    ack: Reply,
    steps: &[Step],
    expect: usize,
    keys_from: impl Fn(&Value) -> Value,
) -> Vec<String> {
    let server = TestServer::start_sandbox(SandboxOptions::default()).await;
    let rx = Receiver::start(move |_, _| ack.clone()).await;
    let (status, app) = server
        .call(
            "POST",
            "/v1/apps",
            Some(json!({"name": "interop", "profile": profile})),
        )
        .await;
    assert_eq!(status, 201, "{app}");
    let app_id = app["id"].as_str().unwrap().to_string();
    let create = |no: &str| {
        json!({"app_id": app_id, "out_trade_no": no, "amount": 1000, "subject": "咖啡 x2",
               "notify_url": rx.url("/notify")})
    };
    let (status, p) = server
        .call("POST", "/v1/sandbox/payments", Some(create("SB-1")))
        .await;
    assert_eq!(status, 201, "{p}");
    let id = p["payment_id"].as_str().unwrap().to_string();
    let post = |path: String| {
        server
            .client
            .post(format!("{}{path}", server.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("")
            .send()
    };
    for step in steps {
        match step {
            Step::Pay => {
                post(format!("/pay/{id}/pay")).await.expect("pay");
            }
            Step::Refund(amount) => {
                let (status, v) = server
                    .call(
                        "POST",
                        &format!("/v1/sandbox/payments/{id}/refund"),
                        Some(json!({"amount": amount})),
                    )
                    .await;
                assert_eq!(status, 201, "{v}");
            }
            Step::Finish => {
                let (status, v) = server
                    .call(
                        "POST",
                        &format!("/v1/sandbox/payments/{id}/drills"),
                        Some(json!({"trade_finished": true})),
                    )
                    .await;
                assert_eq!(status, 200, "{v}");
            }
            Step::Cancel => {
                let (status, p) = server
                    .call("POST", "/v1/sandbox/payments", Some(create("SB-2")))
                    .await;
                assert_eq!(status, 201, "{p}");
                let other = p["payment_id"].as_str().unwrap();
                post(format!("/pay/{other}/cancel")).await.expect("cancel");
            }
        }
    }
    let got = rx.wait_count(expect).await;
    let keys = keys_from(&app["credentials"]);
    let mut outs = vec![];
    for r in &got {
        let headers = headers_map(r);
        let (ok, accepted) = sdk_check(profile, &headers, &r.body, &keys);
        assert!(
            ok,
            "{profile}: the SDK rejected the sandbox's notification: {accepted}\nbody: {}",
            String::from_utf8_lossy(&r.body)
        );
        let mut tampered = r.body.to_vec();
        let i = tampered.len() / 2;
        tampered[i] = if tampered[i] == b'7' { b'8' } else { b'7' };
        let (ok, out) = sdk_check(profile, &headers, &tampered, &keys);
        assert!(!ok, "{profile}: the SDK accepted a tampered body: {out}");
        outs.push(out_of(&accepted));
    }
    outs
}

#[tokio::test]
async fn alipay_sdk_accepts_the_sandboxs_payment_refund_finish_and_close_notifications() {
    let outs = sandbox_notifications_pass_the_sdk(
        "alipay",
        Reply::Status(200, "success"),
        &[Step::Pay, Step::Refund(300), Step::Finish, Step::Cancel],
        4,
        |c| json!({"app_id": c["app_id"], "public_key_pem": c["public_key_pem"]}),
    )
    .await;
    let all = outs.join("\n");
    for s in [
        "TRADE_SUCCESS",
        "TRADE_FINISHED",
        "TRADE_CLOSED",
        "gmt_refund",
        "fund_bill_list",
        "buyer_logon_id",
    ] {
        assert!(all.contains(s), "{s} missing: {all}");
    }
}

#[tokio::test]
async fn wechatpy_accepts_the_sandboxs_payment_and_refund_notifications() {
    let outs = sandbox_notifications_pass_the_sdk(
        "wechatpay-v2",
        Reply::Status(
            200,
            "<xml><return_code><![CDATA[SUCCESS]]></return_code></xml>",
        ),
        &[Step::Pay, Step::Refund(300)],
        2,
        |c| json!({"appid": c["appid"], "mch_id": c["mch_id"], "api_key": c["api_key"]}),
    )
    .await;
    for s in ["openid", "bank_type", "cash_fee", "is_subscribe", "SB-1"] {
        assert!(outs[0].contains(s), "{s} missing: {}", outs[0]);
    }
    // The refund notification, decrypted by wechatpy.
    assert!(
        outs[1].contains("\"refund_fee\": 300") && outs[1].contains("refund_id"),
        "{}",
        outs[1]
    );
}

#[tokio::test]
async fn wechatpayv3_sdk_accepts_the_sandboxs_payment_and_refund_notifications() {
    let outs = sandbox_notifications_pass_the_sdk(
        "wechatpay-v3",
        Reply::Status(204, ""),
        &[Step::Pay, Step::Refund(400)],
        2,
        |c| json!({"mchid": c["mchid"], "api_v3_key": c["api_v3_key"], "public_key_pem": c["public_key_pem"], "serial": c["serial"]}),
    )
    .await;
    assert!(
        outs[0].contains("trade_state_desc") && outs[0].contains("openid"),
        "{}",
        outs[0]
    );
    assert!(outs[1].contains("REFUND.SUCCESS"), "{}", outs[1]);
}

#[tokio::test]
async fn stripe_sdk_accepts_the_sandboxs_events() {
    let outs = sandbox_notifications_pass_the_sdk(
        "stripe",
        Reply::Status(200, ""),
        &[Step::Pay, Step::Refund(1000), Step::Cancel],
        3,
        |c| json!({"secret": c["secret"]}),
    )
    .await;
    let all = outs.join("\n");
    for s in [
        "payment_intent.succeeded",
        "charge.refunded",
        "payment_intent.canceled",
    ] {
        assert!(all.contains(s), "{s} missing: {all}");
    }
}

#[tokio::test]
async fn standardwebhooks_sdk_accepts_the_sandboxs_notifications() {
    let outs = sandbox_notifications_pass_the_sdk(
        "standard-webhooks",
        Reply::Status(204, ""),
        &[Step::Pay, Step::Refund(500), Step::Cancel],
        3,
        |c| json!({"secret": c["secret"]}),
    )
    .await;
    let all = outs.join("\n");
    for s in ["payment.succeeded", "refund.succeeded", "payment.closed"] {
        assert!(all.contains(s), "{s} missing: {all}");
    }
}

/// A paid sandbox trade `no` of 10.00 for a new app of `profile`; returns the server, the
/// app's once-shown credentials and the notification receiver.
async fn paid_sandbox_trade(profile: &str, no: &str, ack: Reply) -> (TestServer, Value, Receiver) {
    let server = TestServer::start_sandbox(SandboxOptions::default()).await;
    let rx = Receiver::start(move |_, _| ack.clone()).await;
    let (status, app) = server
        .call(
            "POST",
            "/v1/apps",
            Some(json!({"name": "interop", "profile": profile})),
        )
        .await;
    assert_eq!(status, 201, "{app}");
    let (status, p) = server
        .call(
            "POST",
            "/v1/sandbox/payments",
            Some(
                json!({"app_id": app["id"], "out_trade_no": no, "amount": 1000,
                        "subject": "tea", "notify_url": rx.url("/notify")}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{p}");
    let id = p["payment_id"].as_str().unwrap();
    server
        .client
        .post(format!("{}/pay/{id}/pay", server.base))
        .send()
        .await
        .expect("pay");
    rx.wait_count(1).await;
    (server, app["credentials"].clone(), rx)
}

// The SDK blocks this thread while the server answers it: the server needs other workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_alipay_sdk_queries_and_refunds_through_the_sandbox_gateway() {
    let (server, c, rx) =
        paid_sandbox_trade("alipay", "SDK-A1", Reply::Status(200, "success")).await;
    let keys = json!({"app_id": c["app_id"], "public_key_pem": c["public_key_pem"]});
    let q = sdk_call(
        "alipay",
        &server.base,
        &keys,
        "query",
        json!({"out_trade_no": "SDK-A1"}),
    );
    assert_eq!(q["ok"], true, "{q}");
    assert_eq!(q["result"]["trade_status"], "TRADE_SUCCESS", "{q}");
    assert_eq!(q["result"]["total_amount"], "10.00");
    let q = sdk_call(
        "alipay",
        &server.base,
        &keys,
        "query",
        json!({"out_trade_no": "SDK-none"}),
    );
    assert_eq!(q["ok"], true, "a signed business error: {q}");
    assert_eq!(q["result"]["sub_code"], "ACQ.TRADE_NOT_EXIST");
    let r = sdk_call(
        "alipay",
        &server.base,
        &keys,
        "refund",
        json!({"refund_amount": "3.00", "out_trade_no": "SDK-A1", "out_request_no": "R-1"}),
    );
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(
        (
            r["result"]["code"].as_str(),
            r["result"]["refund_fee"].as_str()
        ),
        (Some("10000"), Some("3.00"))
    );
    rx.wait_count(2).await;
    // Another key than the app's: the SDK refuses the answer.
    let other = TestServer::start().await;
    let (_, foreign) = other
        .call(
            "POST",
            "/v1/apps",
            Some(json!({"name": "x", "profile": "alipay"})),
        )
        .await;
    let wrong =
        json!({"app_id": c["app_id"], "public_key_pem": foreign["credentials"]["public_key_pem"]});
    let q = sdk_call(
        "alipay",
        &server.base,
        &wrong,
        "query",
        json!({"out_trade_no": "SDK-A1"}),
    );
    assert_eq!(q["ok"], false, "{q}");
}

// The SDK blocks this thread while the server answers it: the server needs other workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wechatpy_queries_and_refunds_through_the_sandbox() {
    let (server, c, _rx) = paid_sandbox_trade(
        "wechatpay-v2",
        "SDK-W2",
        Reply::Status(
            200,
            "<xml><return_code><![CDATA[SUCCESS]]></return_code></xml>",
        ),
    )
    .await;
    let keys = json!({"appid": c["appid"], "mch_id": c["mch_id"], "api_key": c["api_key"]});
    let q = sdk_call(
        "wechatpay-v2",
        &server.base,
        &keys,
        "query",
        json!({"out_trade_no": "SDK-W2"}),
    );
    assert_eq!(q["ok"], true, "{q}");
    assert_eq!(q["result"]["trade_state"], "SUCCESS");
    assert_eq!(q["result"]["total_fee"], "1000");
    let q = sdk_call(
        "wechatpay-v2",
        &server.base,
        &keys,
        "query",
        json!({"out_trade_no": "SDK-none"}),
    );
    assert_eq!(q["ok"], false);
    assert!(
        q["error"].as_str().unwrap().contains("ORDERNOTEXIST"),
        "{q}"
    );
    let r = sdk_call(
        "wechatpay-v2",
        &server.base,
        &keys,
        "refund",
        json!({"total_fee": 1000, "refund_fee": 400, "out_refund_no": "RF-1", "out_trade_no": "SDK-W2"}),
    );
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["result"]["refund_fee"], "400");
    // A wrong API key: the sandbox refuses the request's sign.
    let mut wrong = keys.clone();
    wrong["api_key"] = json!("0123456789abcdef0123456789abcdef");
    let q = sdk_call(
        "wechatpay-v2",
        &server.base,
        &wrong,
        "query",
        json!({"out_trade_no": "SDK-W2"}),
    );
    assert_eq!(q["ok"], false);
    assert!(q["error"].as_str().unwrap().contains("签名错误"), "{q}");
}

// The SDK blocks this thread while the server answers it: the server needs other workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wechatpayv3_sdk_queries_and_refunds_through_the_sandbox() {
    let (server, c, rx) =
        paid_sandbox_trade("wechatpay-v3", "SDK-W3", Reply::Status(204, "")).await;
    let keys = json!({"mchid": c["mchid"], "appid": c["appid"], "api_v3_key": c["api_v3_key"],
                      "public_key_pem": c["public_key_pem"], "serial": c["serial"]});
    let q = sdk_call(
        "wechatpay-v3",
        &server.base,
        &keys,
        "query",
        json!({"out_trade_no": "SDK-W3"}),
    );
    assert_eq!(q["ok"], true, "{q}");
    assert_eq!(q["result"]["status"], 200);
    assert_eq!(q["result"]["body"]["trade_state"], "SUCCESS");
    let q = sdk_call(
        "wechatpay-v3",
        &server.base,
        &keys,
        "query",
        json!({"out_trade_no": "SDK-none"}),
    );
    assert_eq!(q["result"]["status"], 404, "{q}");
    assert_eq!(q["result"]["body"]["code"], "ORDER_NOT_EXIST");
    let r = sdk_call(
        "wechatpay-v3",
        &server.base,
        &keys,
        "refund",
        json!({"out_refund_no": "RF-1", "out_trade_no": "SDK-W3",
               "amount": {"refund": 250, "total": 1000, "currency": "CNY"}}),
    );
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["result"]["status"], 200, "{r}");
    assert_eq!(r["result"]["body"]["amount"]["refund"], 250);
    let got = rx.wait_count(2).await;
    assert_eq!(got[1].json()["event_type"], "REFUND.SUCCESS");
    // Another platform key: the SDK refuses the answer's signature.
    let other = TestServer::start().await;
    let (_, foreign) = other
        .call(
            "POST",
            "/v1/apps",
            Some(json!({"name": "x", "profile": "wechatpay-v3"})),
        )
        .await;
    let mut wrong = keys.clone();
    wrong["public_key_pem"] = foreign["credentials"]["public_key_pem"].clone();
    let q = sdk_call(
        "wechatpay-v3",
        &server.base,
        &wrong,
        "query",
        json!({"out_trade_no": "SDK-W3"}),
    );
    assert_eq!(q["ok"], false, "{q}");
}
