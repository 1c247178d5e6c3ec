//! What a verified notification means for an order, per profile, and the forward-only state
//! machine that decides whether it moves the order.
//!
//! Owns two pure steps: [`read`] asks the notification's profile what it means for the order
//! (an [`Event`] plus the order total it claims; the mapping lives with each profile in
//! `herald_protocols::order`); [`step`] compares that with the locked order and says where
//! the order goes, if anywhere. Orders only move forward:
//! `Unpaid -> Paid -> PartiallyRefunded -> Refunded`, and `Unpaid -> Closed`; a refund that
//! arrives before its payment moves an unpaid order straight to (partially) refunded, and a
//! payment arriving after that is stale.
use crate::Rejection;
use herald_inbox::{OrderRecord, OrderState};
use herald_protocols::receive::{Amount, VerifiedNotification};

pub(crate) use herald_protocols::order::{OrderEvent as Event, OrderReading as Reading};

/// Where [`step`] takes the order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// The order moves forward.
    Forward { to: OrderState, refunded_minor: i64 },
    /// Nothing to do (a replay, a late payment after a refund or close...): acknowledged.
    Stale(String),
}

/// Reads a notification of any profile: what it means for its order is the profile's to
/// say ([`herald_protocols::Profile::read_order`]); a notification that cannot be read is
/// refused as invalid.
pub(crate) fn read(n: &VerifiedNotification) -> Result<Reading, Rejection> {
    n.profile.read_order(n).map_err(Rejection::Invalid)
}

/// Decides where the locked `order` goes on `reading`. An amount that is not the order's is
/// [`Rejection::AmountMismatch`]; so is a refund larger than what is left to refund.
pub(crate) fn step(order: &OrderRecord, reading: &Reading) -> Result<Step, Rejection> {
    use OrderState::*;
    let order_amount = || Amount {
        minor: order.amount_minor,
        currency: order.currency.clone(),
    };
    if let Event::NoChange(status) = &reading.event {
        return Ok(Step::Stale(format!(
            "status {status} does not move an order"
        )));
    }
    if let Some(total) = &reading.total {
        if total.minor != order.amount_minor
            || !total.currency.eq_ignore_ascii_case(&order.currency)
        {
            return Err(Rejection::AmountMismatch {
                expected: order_amount(),
                got: total.clone(),
            });
        }
    }
    let stale = || Ok(Step::Stale(format!("the order is already {}", order.state)));
    let refund_to = |refunded: i64| Step::Forward {
        to: if refunded >= order.amount_minor {
            Refunded
        } else {
            PartiallyRefunded
        },
        refunded_minor: refunded,
    };
    let refund_currency = || {
        reading
            .total
            .as_ref()
            .map_or_else(|| order.currency.clone(), |t| t.currency.clone())
    };
    match (&reading.event, order.state) {
        (Event::NoChange(status), _) => Ok(Step::Stale(format!(
            "status {status} does not move an order"
        ))),
        (Event::Paid, Unpaid) => Ok(Step::Forward {
            to: Paid,
            refunded_minor: order.refunded_minor,
        }),
        (Event::Closed | Event::ClosedOrRefunded, Unpaid) => Ok(Step::Forward {
            to: Closed,
            refunded_minor: order.refunded_minor,
        }),
        (Event::ClosedOrRefunded, Paid | PartiallyRefunded) => Ok(refund_to(order.amount_minor)),
        (Event::RefundedTotal(_) | Event::Refund(_), Refunded | Closed) => stale(),
        (Event::RefundedTotal(r), _) => {
            if *r <= 0 || *r > order.amount_minor {
                return Err(Rejection::AmountMismatch {
                    expected: order_amount(),
                    got: Amount {
                        minor: *r,
                        currency: refund_currency(),
                    },
                });
            }
            if *r <= order.refunded_minor {
                return Ok(Step::Stale(format!(
                    "a refunded total of {r} is already recorded ({} refunded)",
                    order.refunded_minor
                )));
            }
            Ok(refund_to(*r))
        }
        (Event::Refund(d), _) => {
            let left = order.amount_minor - order.refunded_minor;
            if *d <= 0 || *d > left {
                return Err(Rejection::AmountMismatch {
                    expected: Amount {
                        minor: left,
                        currency: order.currency.clone(),
                    },
                    got: Amount {
                        minor: *d,
                        currency: refund_currency(),
                    },
                });
            }
            Ok(refund_to(order.refunded_minor + d))
        }
        (Event::Paid | Event::Closed | Event::ClosedOrRefunded, _) => stale(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_protocols::receive::ReceiveError;
    use serde_json::{json, Value};
    use std::collections::BTreeMap;

    fn order(state: OrderState, refunded: i64) -> OrderRecord {
        OrderRecord {
            out_trade_no: "A1".into(),
            amount_minor: 100,
            currency: "CNY".into(),
            subject: "tea".into(),
            state,
            refunded_minor: refunded,
            transaction_id: None,
            created_at: herald_protocols::UnixMillis::EPOCH,
            updated_at: herald_protocols::UnixMillis::EPOCH,
        }
    }

    fn cny(minor: i64) -> Option<Amount> {
        Some(Amount {
            minor,
            currency: "CNY".into(),
        })
    }

    fn n(
        profile: &'static str,
        status: Option<&str>,
        event_type: Option<&str>,
        amount: Option<Amount>,
        fields: Value,
    ) -> VerifiedNotification {
        let fields: BTreeMap<String, Value> = match fields {
            Value::Object(m) => m.into_iter().collect(),
            _ => BTreeMap::new(),
        };
        VerifiedNotification {
            profile: profile.parse().unwrap_or_else(|e| panic!("{e}")),
            notify_id: "n1".into(),
            app_id: None,
            merchant_id: None,
            out_trade_no: Some("A1".into()),
            transaction_id: Some("T1".into()),
            amount,
            status: status.map(str::to_string),
            event_type: event_type.map(str::to_string),
            fields,
        }
    }

    fn goes(n: &VerifiedNotification, from: OrderState, refunded: i64) -> Step {
        let r = read(n).unwrap_or_else(|e| panic!("read: {e}"));
        step(&order(from, refunded), &r).unwrap_or_else(|e| panic!("step: {e}"))
    }

    fn fwd(to: OrderState, refunded_minor: i64) -> Step {
        Step::Forward { to, refunded_minor }
    }

    use OrderState::*;

    #[test]
    fn alipay_success_pays_trade_closed_refunds_a_paid_order_and_closes_an_unpaid_one() {
        let paid = n("alipay", Some("TRADE_SUCCESS"), None, cny(100), json!({}));
        assert_eq!(goes(&paid, Unpaid, 0), fwd(Paid, 0));
        assert!(matches!(goes(&paid, Refunded, 100), Step::Stale(_)));
        let closed = n("alipay", Some("TRADE_CLOSED"), None, cny(100), json!({}));
        assert_eq!(goes(&closed, Paid, 0), fwd(Refunded, 100));
        assert_eq!(goes(&closed, PartiallyRefunded, 30), fwd(Refunded, 100));
        assert_eq!(goes(&closed, Unpaid, 0), fwd(Closed, 0));
        let waiting = n("alipay", Some("WAIT_BUYER_PAY"), None, cny(100), json!({}));
        assert_eq!(
            goes(&waiting, Unpaid, 0),
            Step::Stale("status WAIT_BUYER_PAY does not move an order".into())
        );
    }

    #[test]
    fn an_alipay_zero_refund_fee_is_no_refund_and_the_trade_status_decides() {
        // Alipay's notify sample: TRADE_SUCCESS with refund_fee=0.00 and gmt_close.
        let fields = json!({"refund_fee": "0.00", "gmt_close": "2016-07-19 14:10:46"});
        let paid = n(
            "alipay",
            Some("TRADE_SUCCESS"),
            None,
            cny(100),
            fields.clone(),
        );
        assert_eq!(goes(&paid, Unpaid, 0), fwd(Paid, 0));
        let closed = n("alipay", Some("TRADE_CLOSED"), None, cny(100), fields);
        assert_eq!(goes(&closed, Unpaid, 0), fwd(Closed, 0));
        let negative = n(
            "alipay",
            Some("TRADE_SUCCESS"),
            None,
            cny(100),
            json!({"refund_fee": "-1.00"}),
        );
        assert!(matches!(
            read(&negative),
            Err(Rejection::Invalid(ReceiveError::BadAmount(_)))
        ));
    }

    #[test]
    fn alipay_refund_fee_is_the_cumulative_refunded_total() {
        let partial = n(
            "alipay",
            Some("TRADE_SUCCESS"),
            None,
            cny(100),
            json!({"refund_fee": "0.30"}),
        );
        assert_eq!(goes(&partial, Paid, 0), fwd(PartiallyRefunded, 30));
        assert!(matches!(
            goes(&partial, PartiallyRefunded, 30),
            Step::Stale(_)
        ));
        let full = n(
            "alipay",
            Some("TRADE_CLOSED"),
            None,
            cny(100),
            json!({"refund_fee": "1.00"}),
        );
        assert_eq!(goes(&full, PartiallyRefunded, 30), fwd(Refunded, 100));
        // Arriving before the payment: straight to refunded.
        assert_eq!(goes(&full, Unpaid, 0), fwd(Refunded, 100));
    }

    #[test]
    fn wechat_v2_pays_only_on_success_result_codes() {
        let ok = json!({"return_code": "SUCCESS", "result_code": "SUCCESS"});
        let paid = n("wechatpay-v2", Some("SUCCESS"), None, cny(100), ok);
        assert_eq!(goes(&paid, Unpaid, 0), fwd(Paid, 0));
        let fail = json!({"return_code": "SUCCESS", "result_code": "FAIL"});
        let failed = n("wechatpay-v2", Some("FAIL"), None, cny(100), fail);
        assert!(matches!(goes(&failed, Unpaid, 0), Step::Stale(_)));
    }

    #[test]
    fn a_wechat_v2_order_query_answer_pays_on_success_closes_on_closed_and_waits_on_notpay() {
        let answer = |state: &str| {
            n(
                "wechatpay-v2",
                Some(state),
                None,
                cny(100),
                json!({"return_code": "SUCCESS", "result_code": "SUCCESS", "trade_state": state}),
            )
        };
        assert_eq!(goes(&answer("SUCCESS"), Unpaid, 0), fwd(Paid, 0));
        assert_eq!(goes(&answer("CLOSED"), Unpaid, 0), fwd(Closed, 0));
        assert_eq!(goes(&answer("REVOKED"), Unpaid, 0), fwd(Closed, 0));
        assert!(matches!(goes(&answer("CLOSED"), Paid, 0), Step::Stale(_)));
        assert!(matches!(goes(&answer("NOTPAY"), Unpaid, 0), Step::Stale(_)));
    }

    #[test]
    fn wechat_v3_refunds_add_the_refund_amount_after_checking_the_order_total() {
        let refund = n(
            "wechatpay-v3",
            Some("SUCCESS"),
            Some("REFUND.SUCCESS"),
            cny(40),
            json!({"resource": {"refund_status": "SUCCESS", "amount": {"total": 100, "refund": 40}}}),
        );
        assert_eq!(goes(&refund, Paid, 0), fwd(PartiallyRefunded, 40));
        assert_eq!(goes(&refund, PartiallyRefunded, 60), fwd(Refunded, 100));
        let wrong_total = n(
            "wechatpay-v3",
            Some("SUCCESS"),
            Some("REFUND.SUCCESS"),
            cny(40),
            json!({"resource": {"refund_status": "SUCCESS", "amount": {"total": 999, "refund": 40}}}),
        );
        let r = read(&wrong_total).expect("read");
        assert!(matches!(
            step(&order(Paid, 0), &r),
            Err(Rejection::AmountMismatch { .. })
        ));
        let closed = n(
            "wechatpay-v3",
            Some("CLOSED"),
            Some("TRANSACTION.CLOSED"),
            cny(100),
            json!({"resource": {"trade_state": "CLOSED"}}),
        );
        assert_eq!(goes(&closed, Unpaid, 0), fwd(Closed, 0));
        assert!(matches!(goes(&closed, Paid, 0), Step::Stale(_)));
    }

    #[test]
    fn stripe_charge_refunded_carries_the_cumulative_refund() {
        let ev = |t: &str, object: Value| {
            n(
                "stripe",
                Some(t),
                Some(t),
                cny(100),
                json!({"data": {"object": object}}),
            )
        };
        let refunded = ev(
            "charge.refunded",
            json!({"amount": 100, "amount_refunded": 25}),
        );
        assert_eq!(goes(&refunded, Paid, 0), fwd(PartiallyRefunded, 25));
        let canceled = ev("payment_intent.canceled", json!({}));
        assert_eq!(goes(&canceled, Unpaid, 0), fwd(Closed, 0));
        let session = n(
            "stripe",
            Some("checkout.session.completed"),
            Some("checkout.session.completed"),
            None,
            json!({"data": {"object": {"amount_total": 100, "currency": "cny", "payment_status": "paid"}}}),
        );
        assert_eq!(goes(&session, Unpaid, 0), fwd(Paid, 0));
        let other = ev("customer.created", json!({}));
        assert!(matches!(goes(&other, Unpaid, 0), Step::Stale(_)));
    }

    #[test]
    fn a_payment_needs_an_amount_and_the_wrong_one_is_a_mismatch() {
        let no_amount = n(
            "standard-webhooks",
            None,
            Some("payment.succeeded"),
            None,
            json!({}),
        );
        assert!(matches!(read(&no_amount), Err(Rejection::Invalid(_))));
        let usd = n(
            "standard-webhooks",
            None,
            Some("payment.succeeded"),
            Some(Amount {
                minor: 100,
                currency: "USD".into(),
            }),
            json!({}),
        );
        let r = read(&usd).expect("read");
        assert!(matches!(
            step(&order(Unpaid, 0), &r),
            Err(Rejection::AmountMismatch { .. })
        ));
    }

    #[test]
    fn refunds_beyond_what_is_left_are_refused() {
        let refund = n(
            "standard-webhooks",
            None,
            Some("refund.succeeded"),
            cny(100),
            json!({"refund_amount": 80}),
        );
        let r = read(&refund).expect("read");
        assert!(matches!(
            step(&order(PartiallyRefunded, 30), &r),
            Err(Rejection::AmountMismatch { .. })
        ));
        assert_eq!(step(&order(Paid, 0), &r), Ok(fwd(PartiallyRefunded, 80)));
    }
}
