//! What a verified notification says about the merchant's order: the provider-specific
//! meaning of a notification, kept next to the profile that decodes it.
//!
//! Each profile module provides `read_order` (its statuses and event types mapped to an
//! [`OrderEvent`], plus the order total the notification claims) and `carried_ids` (the
//! app and merchant id fields its wire always carries). [`crate::Profile::read_order`] and
//! [`crate::Profile::carried_ids`] dispatch with an exhaustive `match`, so a new profile does
//! not compile until it says what its notifications mean. What to *do* with an event (the
//! forward-only order state machine, the amount check against the order) is the receiver's.
use serde::Serialize;
use serde_json::Value;

use crate::receive::{Amount, ReceiveError};

/// What a notification reports about its order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum OrderEvent {
    /// The order was paid.
    Paid,
    /// The order was closed unpaid.
    Closed,
    /// Alipay `TRADE_CLOSED` without refund fields: a full refund when the order was paid,
    /// a close when it was not.
    ClosedOrRefunded,
    /// The total refunded so far, as the provider counts it (cumulative), in minor units.
    RefundedTotal(i64),
    /// The amount of this one refund, in minor units (each counted once: notify ids are
    /// deduplicated).
    Refund(i64),
    /// A status that does not move an order (`WAIT_BUYER_PAY`, an unrelated event), named.
    NoChange(String),
}

impl OrderEvent {
    /// A short lowercase name: `paid`, `closed`, `closed_or_refunded`, `refunded_total`,
    /// `refund`, `no_change`.
    pub fn kind(&self) -> &'static str {
        match self {
            OrderEvent::Paid => "paid",
            OrderEvent::Closed => "closed",
            OrderEvent::ClosedOrRefunded => "closed_or_refunded",
            OrderEvent::RefundedTotal(_) => "refunded_total",
            OrderEvent::Refund(_) => "refund",
            OrderEvent::NoChange(_) => "no_change",
        }
    }
}

/// A notification read for an order: what happened, and the order total it claims (which a
/// receiver checks against its own order: forged and tampered notifications exist).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OrderReading {
    pub event: OrderEvent,
    pub total: Option<Amount>,
}

impl OrderReading {
    /// An event that moves nothing and claims no total.
    pub fn no_change(what: impl Into<String>) -> OrderReading {
        OrderReading {
            event: OrderEvent::NoChange(what.into()),
            total: None,
        }
    }
}

/// The app-id and merchant-id fields a profile's wire always carries (by their wire names),
/// so a receiver that expects one refuses a notification lacking it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CarriedIds {
    pub app_id: Option<&'static str>,
    pub merchant_id: Option<&'static str>,
}

/// A non-empty string field.
pub(crate) fn text(v: Option<&Value>) -> Option<&str> {
    v.and_then(Value::as_str).filter(|s| !s.is_empty())
}

pub(crate) fn missing(what: &str) -> ReceiveError {
    ReceiveError::Missing(what.to_string())
}

/// An integer amount field.
pub(crate) fn int_field(v: Option<&Value>, what: &str) -> Result<i64, ReceiveError> {
    let v = v.ok_or_else(|| missing(what))?;
    v.as_i64()
        .ok_or_else(|| ReceiveError::BadAmount(v.to_string()))
}

/// The status a notification names for a [`OrderEvent::NoChange`]: its status, else its
/// event type.
pub(crate) fn status_name(n: &crate::receive::VerifiedNotification) -> String {
    n.status
        .clone()
        .or_else(|| n.event_type.clone())
        .unwrap_or_else(|| "(none)".into())
}
