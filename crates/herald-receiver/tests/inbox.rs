//! The receiver's guarantees, run unchanged against the SQLite and the PostgreSQL inbox:
//! any number of concurrent or repeated copies make one state change, orders never move
//! backwards, and whatever is refused changes and records nothing and gets the profile's
//! exact failure reply.
mod common;

use std::sync::Arc;

use common::*;
use herald_inbox::{InboxStore, OrderState};
use herald_protocols::receive::ReceiveError;
use herald_protocols::Profile;
use herald_receiver::{Outcome, Rejection};

macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    super::$case(crate::common::sqlite().await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    super::$case(crate::common::postgres().await).await;
                }
            )*
        }
    };
}

on_both_backends!(
    two_hundred_concurrent_copies_change_the_order_once_and_all_get_the_exact_ack,
    duplicates_after_success_are_acked_without_calling_the_handler,
    a_refund_arriving_before_its_payment_ends_refunded_and_never_goes_back_to_paid,
    partial_refunds_accumulate_once_each_until_refunded,
    a_payment_after_close_is_stale_acked_and_the_handler_not_called,
    an_amount_mismatch_is_refused_and_records_nothing,
    a_foreign_app_id_is_refused_and_changes_nothing,
    a_bad_signature_or_a_truncated_body_is_refused_and_changes_nothing,
    an_expired_timestamp_is_refused_and_changes_nothing,
    a_failing_handler_rolls_back_and_the_redelivery_applies,
    a_panicking_handler_is_a_refusal_not_a_crash,
    an_unknown_order_is_refused_but_a_notification_naming_no_order_is_acked_untouched,
);

/// The failure reply Standard Webhooks expects for `r`: 400 with `{"error": reason}`.
fn assert_failure_reply(reply: &herald_protocols::receive::Reply, r: &Rejection) {
    let expected = Profile::StandardWebhooks.failure_reply(&r.reply_reason());
    assert_eq!(reply, &expected);
    assert_eq!(reply.status, 400);
    assert_eq!(reply.content_type, "application/json");
    let body: serde_json::Value = serde_json::from_slice(&reply.body).expect("json");
    assert_eq!(body, serde_json::json!({ "error": r.reply_reason() }));
}

async fn assert_untouched(store: &dyn InboxStore, no: &str) {
    let o = store.order(no).await.expect("read").expect("order");
    assert_eq!(o.state, OrderState::Unpaid);
    assert_eq!(o.refunded_minor, 0);
    assert_eq!(o.transaction_id, None);
    assert_eq!(log_rows(store).await, 0);
}

async fn two_hundred_concurrent_copies_change_the_order_once_and_all_get_the_exact_ack(
    store: Arc<dyn InboxStore>,
) {
    let inbox = sw_inbox(store.clone());
    new_order(&inbox, "A1", 100).await;
    let req = sw().request("msg_1", "", &sw_body("payment.succeeded", "A1", 100));
    let calls = calls();
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let (inbox, req, h) = (inbox.clone(), req.clone(), handler(&calls));
            // A slow handler holds the order lock while the other copies arrive.
            let slow = move |e: &mut herald_receiver::Effects, t: &herald_receiver::Transition| {
                std::thread::sleep(std::time::Duration::from_millis(20));
                h(e, t)
            };
            tokio::spawn(async move { inbox.receive(&req, slow).await })
        })
        .collect();
    let ack = Profile::StandardWebhooks.ack_reply();
    let (mut applied, mut duplicates) = (0, 0);
    for t in tasks {
        let handled = t.await.expect("task");
        assert_eq!(handled.reply, ack, "{:?}", handled.result);
        assert_eq!((handled.reply.status, handled.reply.body.len()), (204, 0));
        match handled.result {
            Ok(Outcome::Applied { from, to }) => {
                assert_eq!((from, to), (OrderState::Unpaid, OrderState::Paid));
                applied += 1;
            }
            Ok(Outcome::Duplicate) => duplicates += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((applied, duplicates), (1, 199));
    assert_eq!(count(&calls), 1);
    assert_eq!(log_rows(&*store).await, 1);
    let o = inbox.order("A1").await.expect("read").expect("order");
    assert_eq!(o.state, OrderState::Paid);
    assert_eq!(o.transaction_id.as_deref(), Some("T-A1"));
}

async fn duplicates_after_success_are_acked_without_calling_the_handler(
    store: Arc<dyn InboxStore>,
) {
    let inbox = sw_inbox(store.clone());
    new_order(&inbox, "A1", 100).await;
    let req = sw().request("msg_1", "", &sw_body("payment.succeeded", "A1", 100));
    let calls = calls();
    let first = inbox.receive(&req, handler(&calls)).await;
    assert!(matches!(first.result, Ok(Outcome::Applied { .. })));
    for _ in 0..3 {
        let again = inbox.receive(&req, handler(&calls)).await;
        assert_eq!(again.result, Ok(Outcome::Duplicate));
        assert_eq!(again.reply, Profile::StandardWebhooks.ack_reply());
    }
    // The same notify id signed again later (a retry) is still the same notification.
    let retry = sw().request_at(
        "msg_1",
        "",
        &sw_body("payment.succeeded", "A1", 100),
        NOW + 60,
    );
    let later = herald_receiver::Inbox::new(
        herald_receiver::Receiver::new(Profile::StandardWebhooks, sw().keys())
            .with_clock(|| NOW + 60),
        inbox.store().clone(),
    );
    assert_eq!(
        later.receive(&retry, handler(&calls)).await.result,
        Ok(Outcome::Duplicate)
    );
    assert_eq!(count(&calls), 1);
    assert_eq!(log_rows(&*store).await, 1);
}

async fn a_refund_arriving_before_its_payment_ends_refunded_and_never_goes_back_to_paid(
    store: Arc<dyn InboxStore>,
) {
    let inbox = sw_inbox(store.clone());
    new_order(&inbox, "A1", 100).await;
    let mut refund = sw_body("refund.succeeded", "A1", 100);
    refund["refund_amount"] = 100.into();
    let calls = calls();
    let first = inbox
        .receive(&sw().request("msg_refund", "", &refund), handler(&calls))
        .await;
    assert_eq!(
        first.result,
        Ok(Outcome::Applied {
            from: OrderState::Unpaid,
            to: OrderState::Refunded
        })
    );
    let paid = sw().request("msg_pay", "", &sw_body("payment.succeeded", "A1", 100));
    let late = inbox.receive(&paid, handler(&calls)).await;
    match &late.result {
        Ok(Outcome::Stale { state, .. }) => assert_eq!(*state, OrderState::Refunded),
        other => panic!("expected stale, got {other:?}"),
    }
    assert_eq!(late.reply, Profile::StandardWebhooks.ack_reply());
    assert_eq!(
        inbox.receive(&paid, handler(&calls)).await.result,
        Ok(Outcome::Duplicate),
        "the stale copy was recorded"
    );
    let o = inbox.order("A1").await.expect("read").expect("order");
    assert_eq!((o.state, o.refunded_minor), (OrderState::Refunded, 100));
    assert_eq!(count(&calls), 1);
    assert_eq!(log_rows(&*store).await, 1);
}

async fn partial_refunds_accumulate_once_each_until_refunded(store: Arc<dyn InboxStore>) {
    let inbox = sw_inbox(store.clone());
    new_order(&inbox, "A1", 100).await;
    let calls = calls();
    let pay = sw().request("msg_pay", "", &sw_body("payment.succeeded", "A1", 100));
    inbox
        .receive(&pay, handler(&calls))
        .await
        .result
        .expect("paid");
    let refund = |id: &str, amount: i64| {
        let mut body = sw_body("refund.succeeded", "A1", 100);
        body["refund_amount"] = amount.into();
        sw().request(id, "", &body)
    };
    let r1 = refund("msg_r1", 30);
    for _ in 0..2 {
        inbox
            .receive(&r1, handler(&calls))
            .await
            .result
            .expect("r1");
    }
    let o = inbox.order("A1").await.expect("read").expect("order");
    assert_eq!(
        (o.state, o.refunded_minor),
        (OrderState::PartiallyRefunded, 30)
    );
    let r2 = inbox.receive(&refund("msg_r2", 70), handler(&calls)).await;
    assert_eq!(
        r2.result,
        Ok(Outcome::Applied {
            from: OrderState::PartiallyRefunded,
            to: OrderState::Refunded
        })
    );
    let over = inbox.receive(&refund("msg_r3", 1), handler(&calls)).await;
    assert!(matches!(over.result, Ok(Outcome::Stale { .. })), "{over:?}");
    let o = inbox.order("A1").await.expect("read").expect("order");
    assert_eq!((o.state, o.refunded_minor), (OrderState::Refunded, 100));
    assert_eq!(count(&calls), 3);
    assert_eq!(log_rows(&*store).await, 3);
}

async fn a_payment_after_close_is_stale_acked_and_the_handler_not_called(
    store: Arc<dyn InboxStore>,
) {
    let inbox = sw_inbox(store.clone());
    new_order(&inbox, "A1", 100).await;
    let calls = calls();
    let close = sw().request("msg_close", "", &sw_body("payment.closed", "A1", 100));
    let closed = inbox.receive(&close, handler(&calls)).await;
    assert_eq!(
        closed.result,
        Ok(Outcome::Applied {
            from: OrderState::Unpaid,
            to: OrderState::Closed
        })
    );
    let pay = sw().request("msg_pay", "", &sw_body("payment.succeeded", "A1", 100));
    let late = inbox.receive(&pay, handler(&calls)).await;
    assert!(
        matches!(
            late.result,
            Ok(Outcome::Stale {
                state: OrderState::Closed,
                ..
            })
        ),
        "{late:?}"
    );
    assert_eq!(late.reply, Profile::StandardWebhooks.ack_reply());
    let unknown = sw().request("msg_other", "", &sw_body("invoice.created", "A1", 100));
    let ignored = inbox.receive(&unknown, handler(&calls)).await;
    assert_eq!(
        ignored.result,
        Ok(Outcome::Stale {
            state: OrderState::Closed,
            reason: "status invoice.created does not move an order".into()
        })
    );
    assert_eq!(count(&calls), 1);
}

async fn an_amount_mismatch_is_refused_and_records_nothing(store: Arc<dyn InboxStore>) {
    let inbox = sw_inbox(store.clone());
    new_order(&inbox, "A1", 100).await;
    let calls = calls();
    let forged = sw().request("msg_1", "", &sw_body("payment.succeeded", "A1", 1));
    let handled = inbox.receive(&forged, handler(&calls)).await;
    let Err(r @ Rejection::AmountMismatch { .. }) = &handled.result else {
        panic!("expected a mismatch, got {:?}", handled.result);
    };
    assert_failure_reply(&handled.reply, r);
    let mut usd = sw_body("payment.succeeded", "A1", 100);
    usd["currency"] = "USD".into();
    let usd = inbox
        .receive(&sw().request("msg_1", "", &usd), handler(&calls))
        .await;
    assert!(matches!(usd.result, Err(Rejection::AmountMismatch { .. })));
    assert_untouched(&*store, "A1").await;
    assert_eq!(count(&calls), 0);
    // Nothing recorded: the genuine notification with the same id still applies.
    let genuine = sw().request("msg_1", "", &sw_body("payment.succeeded", "A1", 100));
    let ok = inbox.receive(&genuine, handler(&calls)).await;
    assert!(matches!(ok.result, Ok(Outcome::Applied { .. })), "{ok:?}");
}

async fn a_foreign_app_id_is_refused_and_changes_nothing(store: Arc<dyn InboxStore>) {
    let inbox = sw_inbox(store.clone());
    new_order(&inbox, "A1", 100).await;
    let calls = calls();
    let mut body = sw_body("payment.succeeded", "A1", 100);
    body["app_id"] = "app_someone_else".into();
    let handled = inbox
        .receive(&sw().request("msg_1", "", &body), handler(&calls))
        .await;
    let expected = Rejection::ForeignApp {
        got: "app_someone_else".into(),
    };
    assert_eq!(handled.result, Err(expected.clone()));
    assert_failure_reply(&handled.reply, &expected);
    assert_untouched(&*store, "A1").await;
    assert_eq!(count(&calls), 0);
}

async fn a_bad_signature_or_a_truncated_body_is_refused_and_changes_nothing(
    store: Arc<dyn InboxStore>,
) {
    let inbox = sw_inbox(store.clone());
    new_order(&inbox, "A1", 100).await;
    let calls = calls();
    let good = sw().request("msg_1", "", &sw_body("payment.succeeded", "A1", 100));

    let mut tampered = good.clone();
    let mut body = tampered.body.to_vec();
    let i = body
        .iter()
        .position(|b| *b == b'1')
        .expect("a digit to change");
    body[i] = b'9';
    tampered.body = body.into();

    let mut truncated = good.clone();
    truncated.body = good.body.slice(..good.body.len() / 2);

    let other_key = herald_protocols::Profile::StandardWebhooks;
    let stranger = Sender::new(other_key, serde_json::Value::Null);
    let foreign_key = stranger.request("msg_1", "", &sw_body("payment.succeeded", "A1", 100));

    for req in [&tampered, &truncated, &foreign_key] {
        let handled = inbox.receive(req, handler(&calls)).await;
        let Err(r @ Rejection::Invalid(ReceiveError::BadSignature(_))) = &handled.result else {
            panic!("expected a bad signature, got {:?}", handled.result);
        };
        assert_failure_reply(&handled.reply, r);
    }
    assert_untouched(&*store, "A1").await;
    assert_eq!(count(&calls), 0);
}

async fn an_expired_timestamp_is_refused_and_changes_nothing(store: Arc<dyn InboxStore>) {
    let inbox = sw_inbox(store.clone());
    new_order(&inbox, "A1", 100).await;
    let calls = calls();
    let old = sw().request_at(
        "msg_1",
        "",
        &sw_body("payment.succeeded", "A1", 100),
        NOW - 3_600,
    );
    let handled = inbox.receive(&old, handler(&calls)).await;
    let Err(r @ Rejection::Invalid(ReceiveError::TimestampOutOfWindow { timestamp, now })) =
        &handled.result
    else {
        panic!("expected an expired timestamp, got {:?}", handled.result);
    };
    assert_eq!((*timestamp, *now), (NOW - 3_600, NOW));
    assert_failure_reply(&handled.reply, r);
    assert_untouched(&*store, "A1").await;
    assert_eq!(count(&calls), 0);
}

async fn a_failing_handler_rolls_back_and_the_redelivery_applies(store: Arc<dyn InboxStore>) {
    let inbox = sw_inbox(store.clone());
    new_order(&inbox, "A1", 100).await;
    let req = sw().request("msg_1", "", &sw_body("payment.succeeded", "A1", 100));
    let handled = inbox
        .receive(&req, |effects, t| {
            effects.execute(
                "INSERT INTO merchant_log (out_trade_no, state) VALUES ('x', 'y')",
                vec![],
            );
            Err(format!("warehouse is down for {}", t.out_trade_no))
        })
        .await;
    let expected = Rejection::Handler("warehouse is down for A1".into());
    assert_eq!(handled.result, Err(expected.clone()));
    assert_failure_reply(&handled.reply, &expected);
    assert_untouched(&*store, "A1").await;
    // A failing merchant statement is a handler failure too, and rolls back.
    let bad_sql = inbox
        .receive(&req, |effects, _| {
            effects.execute("INSERT INTO no_such_table VALUES (1)", vec![]);
            Ok(())
        })
        .await;
    assert!(
        matches!(bad_sql.result, Err(Rejection::Handler(_))),
        "{bad_sql:?}"
    );
    assert_untouched(&*store, "A1").await;
    let calls = calls();
    let retry = inbox.receive(&req, handler(&calls)).await;
    assert!(
        matches!(retry.result, Ok(Outcome::Applied { .. })),
        "{retry:?}"
    );
    assert_eq!(log_rows(&*store).await, 1);
}

async fn a_panicking_handler_is_a_refusal_not_a_crash(store: Arc<dyn InboxStore>) {
    let inbox = sw_inbox(store.clone());
    new_order(&inbox, "A1", 100).await;
    let req = sw().request("msg_1", "", &sw_body("payment.succeeded", "A1", 100));
    let handled = inbox.receive(&req, |_, _| panic!("merchant bug")).await;
    assert_eq!(
        handled.result,
        Err(Rejection::Handler("the handler panicked".into()))
    );
    assert_untouched(&*store, "A1").await;
    let calls = calls();
    let retry = inbox.receive(&req, handler(&calls)).await;
    assert!(
        matches!(retry.result, Ok(Outcome::Applied { .. })),
        "{retry:?}"
    );
}

async fn an_unknown_order_is_refused_but_a_notification_naming_no_order_is_acked_untouched(
    store: Arc<dyn InboxStore>,
) {
    let inbox = sw_inbox(store.clone());
    let calls = calls();
    let req = sw().request("msg_1", "", &sw_body("payment.succeeded", "NOPE", 100));
    let handled = inbox.receive(&req, handler(&calls)).await;
    let expected = Rejection::UnknownOrder("NOPE".into());
    assert_eq!(handled.result, Err(expected.clone()));
    assert_failure_reply(&handled.reply, &expected);
    let mut no_ref = sw_body("payment.succeeded", "x", 100);
    no_ref
        .as_object_mut()
        .expect("object")
        .remove("out_trade_no");
    // Verified but about no order (a customer event, say): acknowledged, since sending it
    // again could not make it name one; nothing recorded, the handler not run.
    let handled = inbox
        .receive(&sw().request("msg_2", "", &no_ref), handler(&calls))
        .await;
    assert!(
        matches!(handled.result, Ok(Outcome::Unrelated { .. })),
        "{handled:?}"
    );
    assert_eq!(handled.reply, Profile::StandardWebhooks.ack_reply());
    assert_eq!(count(&calls), 0);
    assert_eq!(log_rows(&*store).await, 0);
}
