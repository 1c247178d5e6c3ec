//! Every profile end to end: a payment notification signed by the protocols crate, as the
//! provider would send it, is received through the inbox exactly once and acknowledged with
//! the provider's exact ack; a tampered copy gets the provider's exact failure reply.
mod common;

use common::*;
use herald_inbox::OrderState;
use herald_protocols::Profile;
use herald_receiver::{Inbox, Outcome, Rejection};
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
    }
}

#[tokio::test]
async fn every_profile_pays_the_order_exactly_once_and_acks_byte_exactly() {
    for profile in Profile::ALL {
        let (sender, event_type, payload) = payment(profile);
        if matches!(
            profile,
            Profile::Alipay | Profile::WechatPayV2 | Profile::WechatPayV3
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
    ];
    for (profile, status) in replies {
        let (sender, event_type, payload) = payment(profile);
        let store = sqlite().await;
        let inbox = Inbox::new(sender.receiver(), store.clone());
        new_order(&inbox, "A1", 100).await;
        let mut req = sender.request(&profile.new_notify_id(), event_type, &payload);
        let mut body = req.body.to_vec();
        let i = body
            .iter()
            .rposition(|b| b.is_ascii_alphanumeric())
            .expect("a character to change");
        body[i] = if body[i] == b'A' { b'B' } else { b'A' };
        req.body = body.into();
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
