//! Every profile end to end: a payment notification signed by the protocols crate, as the
//! provider would send it, is received through the inbox exactly once and acknowledged with
//! the provider's exact ack; a tampered copy gets the provider's exact failure reply.
mod common;

use common::*;
use herald_inbox::OrderState;
use herald_protocols::receive::ReceiveError;
use herald_protocols::wechatpay_v2::refund_notify::{self, RefundInfo};
use herald_protocols::wechatpay_v2::{self, SignType};
use herald_protocols::Profile;
use herald_receiver::{Inbox, Outcome, RawRequest, Receiver, Rejection};
use serde_json::{json, Value};

/// A sender for `profile` and one payment of 100 (minor units, CNY) for order `A1`:
/// (event type, payload) as the platform hands it to the engine.
fn payment(profile: Profile) -> (Sender, &'static str, Value) {
    match profile {
        Profile::StandardWebhooks => (
            sw(),
            "payment.succeeded",
            sw_body("payment.succeeded", "A1", 100),
        ),
        Profile::Alipay => (
            Sender::new(
                profile,
                json!({"app_id": "2021000000000001", "seller_id": "2088000000000001"}),
            ),
            "trade.success",
            json!({"out_trade_no": "A1", "trade_no": "T1", "total_amount": "1.00", "trade_status": "TRADE_SUCCESS"}),
        ),
        Profile::WechatPayV2 => (
            Sender::new(
                profile,
                json!({"appid": "wx0000000000000001", "mch_id": "1900000001"}),
            ),
            "trade.success",
            json!({"out_trade_no": "A1", "transaction_id": "T1", "total_fee": 100, "fee_type": "CNY"}),
        ),
        Profile::WechatPayV3 => (
            Sender::new(
                profile,
                json!({"appid": "wx0000000000000001", "mchid": "1900000001"}),
            ),
            "TRANSACTION.SUCCESS",
            json!({"out_trade_no": "A1", "transaction_id": "T1", "trade_state": "SUCCESS",
                   "amount": {"total": 100, "currency": "CNY"}}),
        ),
        Profile::Stripe => (
            Sender::new(profile, Value::Null),
            "payment_intent.succeeded",
            json!({"id": "pi_1", "amount": 100, "currency": "cny", "metadata": {"out_trade_no": "A1"}}),
        ),
        Profile::WechatPayLegacy => (
            Sender::new(
                profile,
                json!({"appid": "wx0000000000000001", "partner": "1220000001"}),
            ),
            "trade.success",
            json!({"out_trade_no": "A1", "transaction_id": "1220000001201409023179351860", "total_fee": 100}),
        ),
        Profile::Dialect => (
            Sender::new(
                profile,
                json!({"dialect": "epay", "fields": {"pid": "1001"}}),
            ),
            "trade.success",
            json!({"out_trade_no": "A1", "trade_no": "20261127120000123456", "money": "1.00",
                   "trade_status": "TRADE_SUCCESS", "type": "alipay", "name": "coffee"}),
        ),
    }
}

#[tokio::test]
async fn every_profile_pays_the_order_exactly_once_and_acks_byte_exactly() {
    for profile in Profile::ALL {
        let (sender, event_type, payload) = payment(profile);
        if matches!(
            profile,
            Profile::Alipay
                | Profile::WechatPayV2
                | Profile::WechatPayV3
                | Profile::WechatPayLegacy
        ) {
            // The receiver checks the ids these wires carry.
            assert!(sender.app_id().is_some() && sender.merchant_id().is_some());
        }
        let store = sqlite().await;
        let inbox = Inbox::new(sender.receiver(), store.clone());
        new_order(&inbox, "A1", 100).await;
        let req = sender.request(&profile.new_notify_id(), event_type, &payload);
        let calls = calls();
        let first = inbox.receive(&req, handler(&calls)).await;
        assert_eq!(
            first.result,
            Ok(Outcome::Applied {
                from: OrderState::Unpaid,
                to: OrderState::Paid
            }),
            "{}",
            profile.name()
        );
        assert_eq!(first.reply, profile.ack_reply(), "{}", profile.name());
        assert!(
            profile
                .default_ack()
                .is_ack(first.reply.status, &first.reply.body),
            "{}: the sender's own ack rule accepts the reply",
            profile.name()
        );
        let again = inbox.receive(&req, handler(&calls)).await;
        assert_eq!(again.result, Ok(Outcome::Duplicate), "{}", profile.name());
        assert_eq!(again.reply, profile.ack_reply(), "{}", profile.name());
        assert_eq!(count(&calls), 1, "{}", profile.name());
        assert_eq!(log_rows(&*store).await, 1, "{}", profile.name());
        let o = inbox.order("A1").await.expect("read").expect("order");
        assert_eq!(o.state, OrderState::Paid, "{}", profile.name());
        assert!(o.transaction_id.is_some(), "{}", profile.name());
    }
}

#[tokio::test]
async fn every_profile_refuses_a_tampered_copy_with_its_exact_failure_reply() {
    let replies = [
        (Profile::StandardWebhooks, 400),
        (Profile::Alipay, 200),
        (Profile::WechatPayV2, 200),
        (Profile::WechatPayV3, 500),
        (Profile::Stripe, 400),
        (Profile::WechatPayLegacy, 200),
        (Profile::Dialect, 200),
    ];
    for (profile, status) in replies {
        let (sender, event_type, payload) = payment(profile);
        let store = sqlite().await;
        let inbox = Inbox::new(sender.receiver(), store.clone());
        new_order(&inbox, "A1", 100).await;
        let mut req = sender.request(&profile.new_notify_id(), event_type, &payload);
        // The body, or the query of a GET (an EPay-style dialect sends no body).
        let mut body = if req.body.is_empty() {
            req.query.clone().into_bytes()
        } else {
            req.body.to_vec()
        };
        let i = body
            .iter()
            .rposition(|b| b.is_ascii_alphanumeric())
            .expect("a character to change");
        body[i] = if body[i] == b'A' { b'B' } else { b'A' };
        if req.body.is_empty() {
            req.query = String::from_utf8(body).expect("ASCII query");
        } else {
            req.body = body.into();
        }
        let calls = calls();
        let handled = inbox.receive(&req, handler(&calls)).await;
        let Err(r @ Rejection::Invalid(_)) = &handled.result else {
            panic!(
                "{}: expected a refusal, got {:?}",
                profile.name(),
                handled.result
            );
        };
        assert_eq!(
            handled.reply,
            profile.failure_reply(&r.reply_reason()),
            "{}",
            profile.name()
        );
        assert_eq!(handled.reply.status, status, "{}", profile.name());
        assert!(
            !profile
                .default_ack()
                .is_ack(handled.reply.status, &handled.reply.body),
            "{}: the provider will send again",
            profile.name()
        );
        assert_eq!(count(&calls), 0);
        let o = inbox.order("A1").await.expect("read").expect("order");
        assert_eq!(o.state, OrderState::Unpaid, "{}", profile.name());
    }
}

#[tokio::test]
async fn a_notification_for_another_merchant_is_refused() {
    let (sender, event_type, payload) = payment(Profile::WechatPayV3);
    let store = sqlite().await;
    let receiver = herald_receiver::Receiver::new(Profile::WechatPayV3, sender.keys())
        .with_clock(|| NOW)
        .expect_merchant_id("1900000999");
    let inbox = Inbox::new(receiver, store.clone());
    new_order(&inbox, "A1", 100).await;
    let req = sender.request("evt-1", event_type, &payload);
    let handled = inbox.receive(&req, handler(&calls())).await;
    assert_eq!(
        handled.result,
        Err(Rejection::ForeignMerchant {
            got: "1900000001".into()
        })
    );
    assert_eq!(log_rows(&*store).await, 0);
}

#[tokio::test]
async fn alipay_refund_then_close_after_payment_ends_refunded() {
    let (sender, event_type, payload) = payment(Profile::Alipay);
    let store = sqlite().await;
    let inbox = Inbox::new(sender.receiver(), store.clone());
    new_order(&inbox, "A1", 100).await;
    let calls = calls();
    let send = |id: &str, p: &Value| sender.request(id, event_type, p);
    let paid = inbox.receive(&send("1", &payload), handler(&calls)).await;
    assert!(
        matches!(paid.result, Ok(Outcome::Applied { .. })),
        "{paid:?}"
    );
    let mut partial = payload.clone();
    partial["refund_fee"] = "0.40".into();
    let r = inbox.receive(&send("2", &partial), handler(&calls)).await;
    assert_eq!(
        r.result,
        Ok(Outcome::Applied {
            from: OrderState::Paid,
            to: OrderState::PartiallyRefunded
        })
    );
    let mut closed = payload.clone();
    closed["trade_status"] = "TRADE_CLOSED".into();
    let r = inbox.receive(&send("3", &closed), handler(&calls)).await;
    assert_eq!(
        r.result,
        Ok(Outcome::Applied {
            from: OrderState::PartiallyRefunded,
            to: OrderState::Refunded
        })
    );
    let o = inbox.order("A1").await.expect("read").expect("order");
    assert_eq!((o.state, o.refunded_minor), (OrderState::Refunded, 100));
}

// ---------------------------------------------------------------------------------------
// Real traffic the receiver must take (issue 10)

/// A WeChat Pay v2 API key for the hand-built notifications below.
const WX_KEY: &str = "192006250b4c09247ec02edce69f6a2d";

/// A WeChat Pay v2 body: the fields in order, then `sign` computed with `sign_type`.
fn wechat_v2_body(fields: &[(&str, &str)], sign_type: SignType) -> RawRequest {
    let mut pairs: Vec<(String, String)> = fields
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let sign = wechatpay_v2::sign(&pairs, WX_KEY, sign_type);
    pairs.push(("sign".into(), sign));
    let mut xml = String::from("<xml>");
    for (k, v) in &pairs {
        xml.push_str(&format!("<{k}><![CDATA[{v}]]></{k}>"));
    }
    xml.push_str("</xml>");
    RawRequest {
        method: "POST".into(),
        headers: vec![("Content-Type".into(), "text/xml".into())],
        query: String::new(),
        body: xml.into_bytes().into(),
    }
}

/// A real HMAC-SHA256 payment notification's fields, as WeChat sent them: no `sign_type`
/// (binarywang/WxJava issue #1585; the merchant's key is not public, so the sign is
/// recomputed with [`WX_KEY`]). Order `A1` and 100 fen replace the original order and 1 fen.
const WX_HMAC_NOTIFY: &[(&str, &str)] = &[
    ("appid", "wxbabdf7a3a9acdfef"),
    ("bank_type", "OTHERS"),
    ("cash_fee", "100"),
    ("fee_type", "CNY"),
    ("is_subscribe", "N"),
    ("mch_id", "1583165551"),
    ("nonce_str", "1590477937689"),
    ("openid", "oWeP25T9OE1ixbLUgN0DxMuSZ6N4"),
    ("out_trade_no", "A1"),
    ("result_code", "SUCCESS"),
    ("return_code", "SUCCESS"),
    ("time_end", "20200526152550"),
    ("total_fee", "100"),
    ("trade_type", "JSAPI"),
    ("transaction_id", "4200000540202005267407409907"),
];

fn wx_hmac_sender() -> Sender {
    Sender::new(
        Profile::WechatPayV2,
        json!({"appid": "wxbabdf7a3a9acdfef", "mch_id": "1583165551",
               "api_key": WX_KEY, "sign_type": "HMAC-SHA256"}),
    )
}

#[tokio::test]
async fn a_wechat_v2_hmac_notify_without_sign_type_pays_the_order_of_an_hmac_merchant() {
    let req = wechat_v2_body(WX_HMAC_NOTIFY, SignType::HmacSha256);
    // Configured from the merchant's credentials (sign type HMAC-SHA256) ...
    let configured = wx_hmac_sender().receiver();
    // ... and from a bare API key, as `herald listen --key` builds it (the sign's length).
    let bare = Receiver::new(
        Profile::WechatPayV2,
        Profile::WechatPayV2
            .receiver_keys(&[WX_KEY.to_string()], None)
            .expect("keys"),
    )
    .with_clock(|| NOW)
    .expect_app_id("wxbabdf7a3a9acdfef")
    .expect_merchant_id("1583165551");
    for receiver in [configured, bare] {
        let store = sqlite().await;
        let inbox = Inbox::new(receiver, store.clone());
        new_order(&inbox, "A1", 100).await;
        let handled = inbox.receive(&req, handler(&calls())).await;
        assert_eq!(
            handled.result,
            Ok(Outcome::Applied {
                from: OrderState::Unpaid,
                to: OrderState::Paid
            })
        );
        assert_eq!(handled.reply, Profile::WechatPayV2.ack_reply());
    }
}

#[tokio::test]
async fn a_wechat_v2_md5_sign_is_refused_for_a_merchant_configured_for_hmac() {
    let req = wechat_v2_body(WX_HMAC_NOTIFY, SignType::Md5);
    let store = sqlite().await;
    let inbox = Inbox::new(wx_hmac_sender().receiver(), store.clone());
    new_order(&inbox, "A1", 100).await;
    let handled = inbox.receive(&req, handler(&calls())).await;
    assert!(
        matches!(
            handled.result,
            Err(Rejection::Invalid(ReceiveError::BadSignature(_)))
        ),
        "{:?}",
        handled.result
    );
}

/// Alipay's own asynchronous-notify sample (the App-payment notify shown with Alipay's
/// "verify the signature yourself" guide, quoted e.g. in alipay-easysdk integrations): a
/// TRADE_SUCCESS payment that carries `refund_fee=0.00` and `gmt_close`. Only the order
/// number (`A1`) differs; `sign` is recomputed with the test key.
fn alipay_sample_payment() -> Value {
    json!({
        "total_amount": "2.00",
        "buyer_id": "2088102116773037",
        "body": "大乐透2.1",
        "trade_no": "2016071921001003030200089909",
        "refund_fee": "0.00",
        "notify_time": "2016-07-19 14:10:49",
        "subject": "大乐透2.1",
        "charset": "utf-8",
        "notify_type": "trade_status_sync",
        "out_trade_no": "A1",
        "gmt_close": "2016-07-19 14:10:46",
        "gmt_payment": "2016-07-19 14:10:47",
        "trade_status": "TRADE_SUCCESS",
        "version": "1.0",
        "gmt_create": "2016-07-19 14:10:44",
        "app_id": "2015102700040153",
        "seller_id": "2088102119685838",
        "notify_id": "4a91b7a78a503640467525113fb7d8bg8e"
    })
}

fn alipay_sample_sender() -> Sender {
    Sender::new(
        Profile::Alipay,
        json!({"app_id": "2015102700040153", "seller_id": "2088102119685838"}),
    )
}

#[tokio::test]
async fn an_alipay_payment_with_a_zero_refund_fee_and_gmt_close_pays_the_order() {
    let sender = alipay_sample_sender();
    let store = sqlite().await;
    let inbox = Inbox::new(sender.receiver(), store.clone());
    new_order(&inbox, "A1", 200).await;
    let req = sender.request(
        "4a91b7a78a503640467525113fb7d8bg8e",
        "trade.success",
        &alipay_sample_payment(),
    );
    let handled = inbox.receive(&req, handler(&calls())).await;
    assert_eq!(
        handled.result,
        Ok(Outcome::Applied {
            from: OrderState::Unpaid,
            to: OrderState::Paid
        })
    );
    assert_eq!(handled.reply, Profile::Alipay.ack_reply());
    let o = inbox.order("A1").await.expect("read").expect("order");
    assert_eq!((o.state, o.refunded_minor), (OrderState::Paid, 0));
}

#[tokio::test]
async fn an_alipay_refund_is_a_refund_only_when_its_fee_is_above_zero() {
    // Each notify below gets its own notify id (the sample's would make them duplicates).
    let alipay_sample_payment = || {
        let mut p = alipay_sample_payment();
        p.as_object_mut().map(|o| o.remove("notify_id"));
        p
    };
    let sender = alipay_sample_sender();
    let store = sqlite().await;
    let inbox = Inbox::new(sender.receiver(), store.clone());
    new_order(&inbox, "A1", 200).await;
    let calls = calls();
    let paid = sender.request("n1", "trade.success", &alipay_sample_payment());
    assert!(matches!(
        inbox.receive(&paid, handler(&calls)).await.result,
        Ok(Outcome::Applied { .. })
    ));
    // A partial refund notify: refund fields and a refund fee above zero (gmt_refund with
    // milliseconds, as Alipay sends it).
    let mut refund = alipay_sample_payment();
    refund["refund_fee"] = "0.50".into();
    refund["out_biz_no"] = "R1".into();
    refund["gmt_refund"] = "2016-07-20 10:00:00.123".into();
    let r = sender.request("n2", "trade.success", &refund);
    assert_eq!(
        inbox.receive(&r, handler(&calls)).await.result,
        Ok(Outcome::Applied {
            from: OrderState::Paid,
            to: OrderState::PartiallyRefunded
        })
    );
    let o = inbox.order("A1").await.expect("read").expect("order");
    assert_eq!(
        (o.state, o.refunded_minor),
        (OrderState::PartiallyRefunded, 50)
    );
    // A negative refund fee is not an amount.
    let mut negative = alipay_sample_payment();
    negative["refund_fee"] = "-0.50".into();
    let r = sender.request("n3", "trade.success", &negative);
    assert!(matches!(
        inbox.receive(&r, handler(&calls)).await.result,
        Err(Rejection::Invalid(ReceiveError::BadAmount(_)))
    ));
}

/// The WeChat Pay v2 credentials inside a sender.
fn wx_creds(sender: &Sender) -> wechatpay_v2::Credentials {
    match &sender.creds {
        herald_protocols::Credentials::WechatPayV2(c) => c.clone(),
        _ => panic!("not a wechatpay-v2 sender"),
    }
}

/// A refund of `refund_fee` out of 100 fen for order `A1`, shaped like WxJava's decrypted
/// refund-notify sample (`WxPayRefundNotifyResultTest`).
fn wx_refund(refund_id: &str, refund_fee: i64, total_fee: i64, status: &str) -> RefundInfo {
    RefundInfo {
        transaction_id: "T1".into(),
        out_trade_no: "A1".into(),
        refund_id: refund_id.into(),
        out_refund_no: format!("R{refund_id}"),
        total_fee,
        settlement_total_fee: Some(total_fee),
        refund_fee,
        settlement_refund_fee: Some(refund_fee),
        refund_status: status.into(),
        success_time: (status == "SUCCESS").then(|| "2017-07-26 02:45:49".into()),
        refund_recv_accout: Some("用户零钱".into()),
        refund_account: Some("REFUND_SOURCE_UNSETTLED_FUNDS".into()),
        refund_request_source: Some("API".into()),
        extra: vec![],
    }
}

fn wx_refund_request(sender: &Sender, info: &RefundInfo) -> RawRequest {
    let enc = refund_notify::encode(&wx_creds(sender), info).expect("encode");
    RawRequest {
        method: "POST".into(),
        headers: vec![("Content-Type".into(), enc.content_type)],
        query: String::new(),
        body: enc.body.into(),
    }
}

/// A paid order `A1` of 100 fen in a fresh inbox for `sender`.
async fn wx_paid_inbox(sender: &Sender) -> Inbox {
    let (_, event_type, payload) = payment(Profile::WechatPayV2);
    let inbox = Inbox::new(sender.receiver(), sqlite().await);
    new_order(&inbox, "A1", 100).await;
    let paid = inbox
        .receive(
            &sender.request("p", event_type, &payload),
            handler(&calls()),
        )
        .await;
    assert!(
        matches!(paid.result, Ok(Outcome::Applied { .. })),
        "{paid:?}"
    );
    inbox
}

#[tokio::test]
async fn wechat_v2_refund_notifications_refund_the_order_once_per_refund_id() {
    let (sender, _, _) = payment(Profile::WechatPayV2);
    let inbox = wx_paid_inbox(&sender).await;
    let calls = calls();
    let first = wx_refund_request(&sender, &wx_refund("5000001", 40, 100, "SUCCESS"));
    let r = inbox.receive(&first, handler(&calls)).await;
    assert_eq!(
        r.result,
        Ok(Outcome::Applied {
            from: OrderState::Paid,
            to: OrderState::PartiallyRefunded
        })
    );
    assert_eq!(r.reply, Profile::WechatPayV2.ack_reply());
    // WeChat sends the same refund again (a fresh nonce_str, the same refund_id).
    let again = wx_refund_request(&sender, &wx_refund("5000001", 40, 100, "SUCCESS"));
    assert_ne!(again.body, first.body);
    let r = inbox.receive(&again, handler(&calls)).await;
    assert_eq!(r.result, Ok(Outcome::Duplicate));
    assert_eq!(r.reply, Profile::WechatPayV2.ack_reply());
    let o = inbox.order("A1").await.expect("read").expect("order");
    assert_eq!(
        (o.state, o.refunded_minor),
        (OrderState::PartiallyRefunded, 40)
    );
    // The rest, as a second refund.
    let rest = wx_refund_request(&sender, &wx_refund("5000002", 60, 100, "SUCCESS"));
    assert_eq!(
        inbox.receive(&rest, handler(&calls)).await.result,
        Ok(Outcome::Applied {
            from: OrderState::PartiallyRefunded,
            to: OrderState::Refunded
        })
    );
    assert_eq!(count(&calls), 2);
    let o = inbox.order("A1").await.expect("read").expect("order");
    assert_eq!((o.state, o.refunded_minor), (OrderState::Refunded, 100));
}

#[tokio::test]
async fn a_wechat_v2_refund_whose_total_or_amount_is_not_the_orders_is_refused() {
    let (sender, _, _) = payment(Profile::WechatPayV2);
    let inbox = wx_paid_inbox(&sender).await;
    for info in [
        wx_refund("5000001", 40, 999, "SUCCESS"),
        wx_refund("5000002", 140, 100, "SUCCESS"),
    ] {
        let r = inbox
            .receive(&wx_refund_request(&sender, &info), handler(&calls()))
            .await;
        assert!(
            matches!(r.result, Err(Rejection::AmountMismatch { .. })),
            "{:?}",
            r.result
        );
        assert!(!Profile::WechatPayV2
            .default_ack()
            .is_ack(r.reply.status, &r.reply.body));
    }
    let o = inbox.order("A1").await.expect("read").expect("order");
    assert_eq!((o.state, o.refunded_minor), (OrderState::Paid, 0));
}

#[tokio::test]
async fn a_wechat_v2_refund_that_failed_or_was_closed_moves_nothing_and_is_acknowledged() {
    let (sender, _, _) = payment(Profile::WechatPayV2);
    let inbox = wx_paid_inbox(&sender).await;
    for (id, status) in [("5000001", "CHANGE"), ("5000002", "REFUNDCLOSE")] {
        let r = inbox
            .receive(
                &wx_refund_request(&sender, &wx_refund(id, 40, 100, status)),
                handler(&calls()),
            )
            .await;
        assert!(
            matches!(
                &r.result,
                Ok(Outcome::Stale {
                    state: OrderState::Paid,
                    ..
                })
            ),
            "{status}: {:?}",
            r.result
        );
        assert_eq!(r.reply, Profile::WechatPayV2.ack_reply());
    }
}

#[tokio::test]
async fn a_wechat_v2_refund_encrypted_with_another_key_or_for_another_merchant_is_refused() {
    let (sender, _, _) = payment(Profile::WechatPayV2);
    let inbox = wx_paid_inbox(&sender).await;
    // Another merchant's key: req_info does not decrypt.
    let stranger = Sender::new(
        Profile::WechatPayV2,
        json!({"appid": "wx0000000000000001", "mch_id": "1900000001"}),
    );
    let r = inbox
        .receive(
            &wx_refund_request(&stranger, &wx_refund("5000001", 40, 100, "SUCCESS")),
            handler(&calls()),
        )
        .await;
    assert!(
        matches!(
            r.result,
            Err(Rejection::Invalid(
                ReceiveError::Decrypt(_) | ReceiveError::MalformedBody(_)
            ))
        ),
        "{:?}",
        r.result
    );
    // The right key, but another merchant's mch_id in the outer XML.
    let mut other = wx_creds(&sender);
    other.mch_id = "1900000999".into();
    let enc =
        refund_notify::encode(&other, &wx_refund("5000002", 40, 100, "SUCCESS")).expect("encode");
    let req = RawRequest {
        method: "POST".into(),
        headers: vec![("Content-Type".into(), enc.content_type)],
        query: String::new(),
        body: enc.body.into(),
    };
    let r = inbox.receive(&req, handler(&calls())).await;
    assert_eq!(
        r.result,
        Err(Rejection::ForeignMerchant {
            got: "1900000999".into()
        })
    );
    let o = inbox.order("A1").await.expect("read").expect("order");
    assert_eq!((o.state, o.refunded_minor), (OrderState::Paid, 0));
}

/// A real refund notification's `req_info` and its merchant key, quoted by several SDKs'
/// tests (silenceper/wechat `pay/notify/refund_test.go`, data source
/// studygolang.com/articles/11811; go-pay/gopay): a full refund of 6 fen.
const REAL_WX_KEY: &str = "ziR0QKsTUfMOuochC9RfCdmfHECorQAP";
const REAL_REQ_INFO: &str = "YYwp8C48th0wnQzTqeI+41pflB26v+smFj9z6h9RPBgxTyZyxc+4YNEz7QEgZNWj/6rIb2MfyWMZmCc41CfjKSssoSZPXxOhUayb6KvNSZ1p6frOX1PDWzhyruXK7ouNND+gDsG4yZ0XXzsL4/pYNwLLba/71QrnkJ/BHcByk4EXnglju5DLup9pJQSnTxjomI9Rxu57m9jg5lLQFxMWXyeASZJNvof0ulnHlWJswS4OxKOkmW7VEyKyLGV6npoOm03Qsx2wkRxLsSa9gPpg4hdaReeUqh1FMbm7aWjyrVYT/MEZWg98p4GomEIYvz34XfDncTezX4bf/ZiSLXt79aE1/YTZrYfymXeCrGjlbe0rg/T2ezJHAC870u2vsVbY1/KcE2A443N+DEnAziXlBQ1AeWq3Rqk/O6/TMM0lomzgctAOiAMg+bh5+Gu1ubA9O3E+vehULydD5qx2o6i3+qA9ORbH415NyRrQdeFq5vmCiRikp5xYptWiGZA0tkoaLKMPQ4ndE5gWHqiBbGPfULZWokI+QjjhhBmwgbd6J0VqpRorwOuzC/BHdkP72DCdNcm7IDUpggnzBIy0+seWIkcHEryKjge3YDHpJeQCqrAH0CgxXHDt1xtbQbST1VqFyuhPhUjDXMXrknrGPN/oE1t0rLRq+78cI+k8xe5E6seeUXQsEe8r3358mpcDYSmXWSXVZxK6er9EF98APqHwcndyEJD2YyCh/mMVhERuX+7kjlRXSiNUWa/Cv/XAKFQuvUYA5ea2eYWtPRHa4DpyuF1SNsaqVKfgqKXZrJHfAgslVpSVqUpX4zkKszHF4kwMZO3M7J1P94Mxa7Tm9mTOJePOoHPXeEB+m9rX6pSfoi3mJDQ5inJ+Vc4gOkg/Wd/lqiy6TTyP/dHDN6/v+AuJx5AXBo/2NDD3fWhHjkqEKIuARr2ClZt9ZRQO4HkXdZo7CN06sGCHk48Tg8PmxnxKcMZm7Aoquv5yMIM2gWSWIRJhwJ8cUpafIHc+GesDlbF6Zbt+/KXkafJAQq2RklEN+WvZ/zFz113EPgWPjp16TwBoziq96MMekvWKY/vdhjol8VFtGH9F61Oy1Xwf6DJtPw==";

#[tokio::test]
async fn a_real_wechat_v2_refund_notification_refunds_its_order() {
    let sender = Sender::new(
        Profile::WechatPayV2,
        json!({"appid": "wx2421b1c4370ec43b", "mch_id": "10000100", "api_key": REAL_WX_KEY}),
    );
    let order = "4893e76d8c8b434cb64e9cd536338e33";
    let inbox = Inbox::new(sender.receiver(), sqlite().await);
    new_order(&inbox, order, 6).await;
    let payment = json!({"out_trade_no": order, "transaction_id": "4200000015201711256947025404",
                         "total_fee": 6, "fee_type": "CNY"});
    let paid = inbox
        .receive(
            &sender.request("p", "trade.success", &payment),
            handler(&calls()),
        )
        .await;
    assert!(
        matches!(paid.result, Ok(Outcome::Applied { .. })),
        "{paid:?}"
    );
    // The outer XML as WeChat sends it (WxJava's sample), with the real req_info.
    let body = format!(
        "<xml><return_code>SUCCESS</return_code><appid><![CDATA[wx2421b1c4370ec43b]]></appid>\
         <mch_id><![CDATA[10000100]]></mch_id>\
         <nonce_str><![CDATA[1ee38e38b04990449808688cf3a763b7]]></nonce_str>\
         <req_info><![CDATA[{REAL_REQ_INFO}]]></req_info></xml>"
    );
    let req = RawRequest {
        method: "POST".into(),
        headers: vec![("Content-Type".into(), "text/xml".into())],
        query: String::new(),
        body: body.into_bytes().into(),
    };
    let r = inbox.receive(&req, handler(&calls())).await;
    assert_eq!(
        r.result,
        Ok(Outcome::Applied {
            from: OrderState::Paid,
            to: OrderState::Refunded
        })
    );
    assert_eq!(r.reply, Profile::WechatPayV2.ack_reply());
    let o = inbox.order(order).await.expect("read").expect("order");
    assert_eq!((o.state, o.refunded_minor), (OrderState::Refunded, 6));
}

#[tokio::test]
async fn a_notification_lacking_an_id_its_wire_always_carries_is_refused_when_one_is_expected() {
    // WeChat Pay v2 payment notifications always carry appid and mch_id (WeChat's 支付结果通知
    // lists both as required; real ones, e.g. WxJava #1585's, have both). Signed correctly,
    // but one of them left out:
    for (missing, field) in [("appid", "appid"), ("mch_id", "mch_id")] {
        let fields: Vec<(&str, &str)> = WX_HMAC_NOTIFY
            .iter()
            .copied()
            .filter(|(k, _)| *k != missing)
            .collect();
        let req = wechat_v2_body(&fields, SignType::HmacSha256);
        let inbox = Inbox::new(wx_hmac_sender().receiver(), sqlite().await);
        new_order(&inbox, "A1", 100).await;
        let handled = inbox.receive(&req, handler(&calls())).await;
        assert!(
            matches!(&handled.result,
                Err(Rejection::Invalid(ReceiveError::Missing(m))) if m.starts_with(field)),
            "{missing}: {:?}",
            handled.result
        );
        let o = inbox.order("A1").await.expect("read").expect("order");
        assert_eq!(o.state, OrderState::Unpaid);
    }
}

#[tokio::test]
async fn an_alipay_notification_without_seller_id_is_taken_by_a_receiver_expecting_one() {
    // Alipay's notify parameters list seller_id as optional: its absence must not cost a
    // payment; a present one that differs is still refused.
    let sender = Sender::new(Profile::Alipay, json!({"app_id": "2015102700040153"}));
    let receiver = sender.receiver().expect_merchant_id("2088102119685838");
    let inbox = Inbox::new(receiver, sqlite().await);
    new_order(&inbox, "A1", 200).await;
    let mut payload = alipay_sample_payment();
    payload.as_object_mut().map(|o| o.remove("seller_id"));
    let handled = inbox
        .receive(
            &sender.request("n1", "trade.success", &payload),
            handler(&calls()),
        )
        .await;
    assert!(
        matches!(handled.result, Ok(Outcome::Applied { .. })),
        "{:?}",
        handled.result
    );
}

#[tokio::test]
async fn an_id_a_wire_carries_only_sometimes_is_checked_only_when_present() {
    // Stripe events carry `account` only for Connect: a receiver expecting an account still
    // takes an event without one.
    let (sender, event_type, payload) = payment(Profile::Stripe);
    let receiver = sender.receiver().expect_merchant_id("acct_1");
    let inbox = Inbox::new(receiver, sqlite().await);
    new_order(&inbox, "A1", 100).await;
    let handled = inbox
        .receive(
            &sender.request("evt_1", event_type, &payload),
            handler(&calls()),
        )
        .await;
    assert!(
        matches!(handled.result, Ok(Outcome::Applied { .. })),
        "{:?}",
        handled.result
    );
}

/// A WeChat Pay v3 merchant whose platform certificate serial starts with zeros (as WeChat
/// sends it in `Wechatpay-Serial`; wechatpay-apiv3/wechatpay-go#46 fixed an SDK that dropped
/// them), and the pieces a receiver is configured with.
fn v3_sender() -> (Sender, herald_protocols::wechatpay_v3::Credentials) {
    let sender = Sender::new(
        Profile::WechatPayV3,
        json!({"appid": "wx0000000000000001", "mchid": "1900000001",
               "serial": "00F4C5AE6B1D2C3E4F5061728394A5B6C7D8E9F0"}),
    );
    let c = match &sender.creds {
        herald_protocols::Credentials::WechatPayV3(c) => c.clone(),
        _ => panic!("not a wechatpay-v3 sender"),
    };
    (sender, c)
}

#[tokio::test]
async fn a_wechat_v3_receiver_matches_the_serial_without_case_or_leading_zeros() {
    let (sender, c) = v3_sender();
    let public = sender.view["public_key"].as_str().expect("public key");
    // Configured as a tool prints it: lower-case, no leading zeros.
    let keys = Profile::WechatPayV3
        .receiver_keys(
            &[format!("f4c5ae6b1d2c3e4f5061728394a5b6c7d8e9f0={public}")],
            Some(&c.api_v3_key),
        )
        .expect("keys");
    let receiver = Receiver::new(Profile::WechatPayV3, keys)
        .with_clock(|| NOW)
        .expect_app_id("wx0000000000000001")
        .expect_merchant_id("1900000001");
    let inbox = Inbox::new(receiver, sqlite().await);
    new_order(&inbox, "A1", 100).await;
    let (_, event_type, payload) = payment(Profile::WechatPayV3);
    let req = sender.request("evt-1", event_type, &payload);
    let serial = req
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("Wechatpay-Serial"))
        .map(|(_, v)| v.clone());
    assert_eq!(
        serial.as_deref(),
        Some("00F4C5AE6B1D2C3E4F5061728394A5B6C7D8E9F0")
    );
    let handled = inbox.receive(&req, handler(&calls())).await;
    assert_eq!(
        handled.result,
        Ok(Outcome::Applied {
            from: OrderState::Unpaid,
            to: OrderState::Paid
        })
    );
}

#[tokio::test]
async fn a_wechat_v3_notification_whose_resource_type_is_not_encrypt_resource_is_refused() {
    let (sender, c) = v3_sender();
    let inbox = Inbox::new(sender.receiver(), sqlite().await);
    new_order(&inbox, "A1", 100).await;
    let (_, event_type, payload) = payment(Profile::WechatPayV3);
    let mut req = sender.request("evt-1", event_type, &payload);
    let body = String::from_utf8(req.body.to_vec())
        .expect("utf-8")
        .replace(
            r#""resource_type":"encrypt-resource""#,
            r#""resource_type":"plain""#,
        );
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .expect("header")
    };
    // Signed correctly for the changed body: only resource_type is wrong.
    let message = format!(
        "{}\n{}\n{body}\n",
        header("Wechatpay-Timestamp"),
        header("Wechatpay-Nonce")
    );
    let sig = herald_protocols::keys::sign_sha256_cached(&c.private_key, message.as_bytes())
        .expect("sign");
    req.headers
        .retain(|(k, _)| !k.eq_ignore_ascii_case("Wechatpay-Signature"));
    req.headers.push(("Wechatpay-Signature".into(), sig));
    req.body = body.into_bytes().into();
    let handled = inbox.receive(&req, handler(&calls())).await;
    assert!(
        matches!(&handled.result,
            Err(Rejection::Invalid(ReceiveError::MalformedBody(m))) if m.contains("resource_type")),
        "{:?}",
        handled.result
    );
    let o = inbox.order("A1").await.expect("read").expect("order");
    assert_eq!(o.state, OrderState::Unpaid);
}

#[tokio::test]
async fn a_stripe_event_signed_ahead_of_the_receivers_clock_is_taken_as_stripes_libraries_do() {
    // stripe-node and stripe-python refuse only a timestamp older than the 300 s tolerance;
    // one ahead of the receiver's clock (skew) verifies.
    let (sender, event_type, payload) = payment(Profile::Stripe);
    let inbox = Inbox::new(sender.receiver(), sqlite().await);
    new_order(&inbox, "A1", 100).await;
    let ahead = sender.request_at("evt_1", event_type, &payload, NOW + 900);
    let handled = inbox.receive(&ahead, handler(&calls())).await;
    assert_eq!(
        handled.result,
        Ok(Outcome::Applied {
            from: OrderState::Unpaid,
            to: OrderState::Paid
        })
    );
    let stale = sender.request_at("evt_2", event_type, &payload, NOW - 301);
    let handled = inbox.receive(&stale, handler(&calls())).await;
    assert!(
        matches!(
            handled.result,
            Err(Rejection::Invalid(
                ReceiveError::TimestampOutOfWindow { .. }
            ))
        ),
        "{:?}",
        handled.result
    );
}

// ---------------------------------------------------------------------------------------
// The seed-era WeChat Pay and configurable dialects

#[tokio::test]
async fn a_seed_era_wechat_notification_pays_once_and_an_unpaid_trade_state_does_not() {
    let (sender, event_type, payload) = payment(Profile::WechatPayLegacy);
    let store = sqlite().await;
    let inbox = Inbox::new(sender.receiver(), store.clone());
    new_order(&inbox, "A1", 100).await;
    // trade_state other than 0: acknowledged, the order does not move.
    let mut unpaid = payload.clone();
    unpaid["trade_state"] = json!("1");
    let calls = calls();
    let r = inbox
        .receive(
            &sender.request("n-unpaid", event_type, &unpaid),
            handler(&calls),
        )
        .await;
    assert!(
        matches!(r.result, Ok(Outcome::Stale { .. })),
        "{:?}",
        r.result
    );
    assert_eq!(r.reply.body, b"success");
    assert_eq!(count(&calls), 0);
    // The paid one moves it, once, whatever the copies.
    let req = sender.request("n-paid", event_type, &payload);
    assert_eq!(req.method, "POST");
    assert!(req.query.contains("trade_state=0") && req.query.contains("sign="));
    for _ in 0..2 {
        let r = inbox.receive(&req, handler(&calls)).await;
        assert_eq!(r.reply.body, b"success");
    }
    assert_eq!(count(&calls), 1);
    let o = inbox.order("A1").await.expect("read").expect("order");
    assert_eq!(o.state, OrderState::Paid);
    // Another partner's notification is refused.
    let r = Receiver::new(Profile::WechatPayLegacy, sender.keys())
        .with_clock(|| NOW)
        .expect_merchant_id("1220000999")
        .verify(&req);
    assert!(matches!(r, Err(Rejection::ForeignMerchant { .. })), "{r:?}");
}

#[tokio::test]
async fn a_custom_dialect_pays_once_and_answers_its_own_ack_text() {
    let dialect = json!({
        "name": "acme", "canonical": "json", "key_placement": "hmac", "algorithm": "hmac-sha256",
        "hex_case": "upper", "signature": {"header": "X-Acme-Sign"}, "method": "POST", "exclude": [],
        "ack": "OK",
        "fields": {"out_trade_no": "order", "amount": "cents", "amount_decimals": 0, "status": "state",
                   "paid_value": "PAID", "notify_id": "event_id"}
    });
    let sender = Sender::new(Profile::Dialect, json!({ "dialect": dialect }));
    let store = sqlite().await;
    let inbox = Inbox::new(sender.receiver(), store.clone());
    new_order(&inbox, "A1", 250).await;
    let calls = calls();
    let req = sender.request(
        "evt_1",
        "trade.success",
        &json!({"order": "A1", "cents": 250, "state": "PAID", "event_id": "evt_1"}),
    );
    assert!(req.headers.iter().any(|(k, _)| k == "X-Acme-Sign"));
    let first = inbox.receive(&req, handler(&calls)).await;
    assert_eq!(
        first.result,
        Ok(Outcome::Applied {
            from: OrderState::Unpaid,
            to: OrderState::Paid
        })
    );
    assert_eq!(first.reply.body, b"OK");
    let again = inbox.receive(&req, handler(&calls)).await;
    assert_eq!(again.result, Ok(Outcome::Duplicate));
    assert_eq!(count(&calls), 1);
    // A wrong amount is refused with the failure reply, which is not the ack text.
    new_order(&inbox, "A2", 250).await;
    let cheap = sender.request(
        "evt_2",
        "trade.success",
        &json!({"order": "A2", "cents": 1, "state": "PAID", "event_id": "evt_2"}),
    );
    let r = inbox.receive(&cheap, handler(&calls)).await;
    assert!(r.result.is_err(), "{:?}", r.result);
    assert_ne!(r.reply.body, b"OK");
    assert_eq!(count(&calls), 1);
}
