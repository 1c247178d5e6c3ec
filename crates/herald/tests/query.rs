//! The receiver's trade query fallback (`herald_receiver::TradeQuery`, `Inbox::reconcile`)
//! against the sandbox's provider APIs (Alipay `alipay.trade.query`, WeChat Pay v2
//! `orderquery`, v3 `GET /v3/pay/transactions/out-trade-no/{no}`): a payment whose
//! notification never got through is applied from the signed query answer exactly once (the
//! late notification and a repeated query change nothing), a trade WeChat Pay closes without
//! a notification closes the order, an answer signed with another key is refused, and a trade
//! the platform never saw moves nothing.
mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Received, Receiver, Reply, TestServer};
use herald_inbox::{NewOrder, OrderState, SqliteInbox};
use herald_protocols::{keys, Credentials, Profile, ReceiverKeys};
use herald_receiver::{
    Inbox, Outcome, QueryError, RawRequest, ReconcileError, TradeQuery, TradeState,
};
use herald_server::sandbox::SandboxOptions;
use serde_json::{json, Value};

fn now_s() -> i64 {
    herald_engine::now_ms().to_seconds().get()
}

/// A sandbox app of `profile`: its id and stored credentials.
async fn app(server: &TestServer, profile: Profile) -> (String, Credentials) {
    let (status, v) = server
        .call(
            "POST",
            "/v1/apps",
            Some(json!({"name": "query shop", "profile": profile.name()})),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let stored = server
        .running
        .as_ref()
        .unwrap()
        .store
        .get_app(&id)
        .await
        .unwrap()
        .unwrap();
    (id, stored.credentials)
}

/// The merchant's trade query against the sandbox, as a merchant configures it: its own
/// request-signing key (Alipay, v3), its API key (v2).
fn trade_query(server: &TestServer, creds: &Credentials) -> TradeQuery {
    let merchant_key = || keys::private_pem_pkcs8(&keys::generate_rsa_2048()).unwrap();
    match creds {
        Credentials::Alipay(c) => TradeQuery::alipay(
            &format!("{}/gateway.do", server.base),
            &c.app_id,
            &merchant_key(),
        ),
        Credentials::WechatPayV2(c) => {
            TradeQuery::wechatpay_v2(&server.base, &c.appid, &c.mch_id, &c.api_key, c.sign_type)
        }
        Credentials::WechatPayV3(c) => {
            TradeQuery::wechatpay_v3(&server.base, &c.mchid, "MERCHANT0SERIAL", &merchant_key())
        }
        other => panic!("no trade query for {other:?}"),
    }
    .expect("the trade query is configured")
}

/// The merchant's inbox for the app, verifying with the platform keys, holding one order.
async fn inbox(
    profile: Profile,
    keys: ReceiverKeys,
    dir: &std::path::Path,
    out_trade_no: &str,
    amount_minor: i64,
) -> Inbox {
    let inbox = Inbox::new(
        herald_receiver::Receiver::new(profile, keys),
        Arc::new(SqliteInbox::open(&dir.join("shop.db")).unwrap()),
    );
    inbox
        .create_order(NewOrder {
            out_trade_no: out_trade_no.into(),
            amount_minor,
            currency: "CNY".into(),
            subject: "tea".into(),
        })
        .await
        .unwrap();
    inbox
}

async fn create_payment(server: &TestServer, body: Value) -> String {
    let (status, v) = server
        .call("POST", "/v1/sandbox/payments", Some(body))
        .await;
    assert_eq!(status, 201, "{v}");
    v["payment_id"].as_str().unwrap().to_string()
}

async fn pay(server: &TestServer, id: &str) {
    let resp = server
        .client
        .post(format!("{}/pay/{id}/pay", server.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("")
        .send()
        .await
        .unwrap();
    assert!(
        resp.status().is_success() || resp.status().as_u16() == 303,
        "{}",
        resp.status()
    );
}

fn raw(r: &Received) -> RawRequest {
    RawRequest {
        method: "POST".into(),
        headers: r
            .headers
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
            .collect(),
        query: String::new(),
        body: r.body.clone(),
    }
}

#[tokio::test]
async fn a_paid_trade_whose_notification_was_lost_is_applied_from_the_query_exactly_once() {
    for profile in [Profile::Alipay, Profile::WechatPayV2, Profile::WechatPayV3] {
        let server = TestServer::start_sandbox(SandboxOptions::default()).await;
        // The merchant's notify_url is down: every attempt fails, nothing reaches the inbox.
        let down = Receiver::start(|_, _| Reply::Status(503, "down")).await;
        let (app_id, creds) = app(&server, profile).await;
        let no = format!("Q-{}", profile.name());
        let id = create_payment(
            &server,
            json!({"app_id": app_id, "out_trade_no": no, "amount": 1250, "currency": "CNY",
                   "subject": "tea", "notify_url": down.url("/notify")}),
        )
        .await;
        let dir = tempfile::tempdir().unwrap();
        let keys = profile.receiver_keys_from(&creds, now_s()).unwrap();
        let inbox = inbox(profile, keys, dir.path(), &no, 1250).await;
        let query = trade_query(&server, &creds);
        let handled = Arc::new(AtomicUsize::new(0));
        let count = || {
            let handled = handled.clone();
            move |_: &mut herald_receiver::Effects, t: &herald_receiver::Transition| {
                assert_eq!(t.to, OrderState::Paid);
                handled.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        };

        // Before the payment: the platform says not paid, and nothing moves.
        let r = inbox.reconcile(&query, &no, count()).await.unwrap();
        assert_eq!(r.answer.state, TradeState::NotPaid, "{profile:?}");
        assert_eq!(r.outcome, None);

        pay(&server, &id).await;
        let lost = down.wait_count(1).await.remove(0);
        let r = inbox.reconcile(&query, &no, count()).await.unwrap();
        assert_eq!(r.answer.state, TradeState::Paid, "{profile:?}: {r:?}");
        assert_eq!(
            r.answer.amount.as_ref().map(|a| a.minor),
            Some(1250),
            "{profile:?}"
        );
        assert_eq!(
            r.outcome,
            Some(Outcome::Applied {
                from: OrderState::Unpaid,
                to: OrderState::Paid
            }),
            "{profile:?}"
        );
        let order = inbox.order(&no).await.unwrap().unwrap();
        assert_eq!(order.state, OrderState::Paid);
        assert_eq!(order.transaction_id, r.answer.transaction_id);

        // The late notification is acknowledged and changes nothing.
        let late = inbox.receive(&raw(&lost), count()).await;
        assert!(
            matches!(late.result, Ok(Outcome::Stale { .. })),
            "{profile:?}: {:?}",
            late.result
        );
        assert_eq!(late.reply, profile.ack_reply(), "{profile:?}");
        // Asking again is a duplicate.
        let again = inbox.reconcile(&query, &no, count()).await.unwrap();
        assert_eq!(again.outcome, Some(Outcome::Duplicate), "{profile:?}");
        assert_eq!(
            handled.load(Ordering::SeqCst),
            1,
            "{profile:?}: fulfilled once"
        );
    }
}

#[tokio::test]
async fn a_trade_wechat_pay_closes_without_a_notification_closes_the_order_through_the_query() {
    for profile in [Profile::WechatPayV2, Profile::WechatPayV3] {
        let server = TestServer::start_sandbox(SandboxOptions {
            unpaid_timeout: Duration::from_millis(300),
            ..SandboxOptions::default()
        })
        .await;
        let rx = Receiver::start(Receiver::ok()).await;
        let (app_id, creds) = app(&server, profile).await;
        let id = create_payment(
            &server,
            json!({"app_id": app_id, "out_trade_no": "Q-closed", "amount": 300, "currency": "CNY",
                   "subject": "tea", "notify_url": rx.url("/notify")}),
        )
        .await;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (_, p) = server
                .call("GET", &format!("/v1/sandbox/payments/{id}"), None)
                .await;
            if p["status"] == "TRADE_CLOSED" {
                break;
            }
            assert!(Instant::now() < deadline, "{p}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let dir = tempfile::tempdir().unwrap();
        let keys = profile.receiver_keys_from(&creds, now_s()).unwrap();
        let inbox = inbox(profile, keys, dir.path(), "Q-closed", 300).await;
        let r = inbox
            .reconcile(&trade_query(&server, &creds), "Q-closed", |_, _| Ok(()))
            .await
            .unwrap();
        assert_eq!(r.answer.state, TradeState::Closed, "{profile:?}");
        assert_eq!(
            r.outcome,
            Some(Outcome::Applied {
                from: OrderState::Unpaid,
                to: OrderState::Closed
            }),
            "{profile:?}"
        );
        assert_eq!(rx.count(), 0, "{profile:?}: WeChat Pay sent nothing");
    }
}

#[tokio::test]
async fn a_query_answer_not_signed_by_the_platform_is_refused_and_moves_nothing() {
    for profile in [Profile::Alipay, Profile::WechatPayV3] {
        let server = TestServer::start_sandbox(SandboxOptions::default()).await;
        let rx = Receiver::start(|_, _| Reply::Status(503, "")).await;
        let (app_id, creds) = app(&server, profile).await;
        let id = create_payment(
            &server,
            json!({"app_id": app_id, "out_trade_no": "Q-forged", "amount": 100, "currency": "CNY",
                   "subject": "tea", "notify_url": rx.url("/notify")}),
        )
        .await;
        pay(&server, &id).await;
        // The merchant trusts another platform key than the one that signs the answers.
        let (other, _) = profile.create_credentials(&Value::Null).unwrap();
        let wrong = profile.receiver_keys_from(&other, now_s()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let inbox = inbox(profile, wrong, dir.path(), "Q-forged", 100).await;
        let err = inbox
            .reconcile(&trade_query(&server, &creds), "Q-forged", |_, _| Ok(()))
            .await
            .unwrap_err();
        assert!(
            matches!(err, ReconcileError::Query(QueryError::BadSignature(_))),
            "{profile:?}: {err}"
        );
        let order = inbox.order("Q-forged").await.unwrap().unwrap();
        assert_eq!(order.state, OrderState::Unpaid, "{profile:?}");
    }
}

#[tokio::test]
async fn a_trade_the_platform_never_saw_is_not_found_and_moves_nothing() {
    let server = TestServer::start_sandbox(SandboxOptions::default()).await;
    let (app_id, creds) = app(&server, Profile::WechatPayV2).await;
    // One payment makes the sandbox know the merchant; the order asked about is another.
    create_payment(
        &server,
        json!({"app_id": app_id, "out_trade_no": "Q-known", "amount": 100, "currency": "CNY",
               "subject": "tea", "notify_url": "http://127.0.0.1:9/n"}),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let keys = Profile::WechatPayV2
        .receiver_keys_from(&creds, now_s())
        .unwrap();
    let inbox = inbox(Profile::WechatPayV2, keys, dir.path(), "Q-never", 100).await;
    let r = inbox
        .reconcile(&trade_query(&server, &creds), "Q-never", |_, _| Ok(()))
        .await
        .unwrap();
    assert_eq!(r.answer.state, TradeState::NotFound);
    assert_eq!(r.outcome, None);
    assert_eq!(
        inbox.order("Q-never").await.unwrap().unwrap().state,
        OrderState::Unpaid
    );
}
