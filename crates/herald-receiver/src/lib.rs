//! Herald's receiver, for merchants: raw request -> verified notification -> inbox
//! (durable dedupe, per-order lock, forward-only state machine) -> the reply the provider
//! expects.
//!
//! Owns the receiving flow and its vocabulary: [`RawRequest`] (what reached the notify
//! URL), [`Receiver`] (signature, timestamp and the merchant's own ids), [`Inbox`] (one
//! notification, one state change, at most once, with the merchant's effects in the same
//! transaction), [`Rejection`] (why a notification was refused) and [`Handled`] (the outcome
//! and its reply). The wire formats live in `herald-protocols`; the tables and their SQL in
//! `herald-store::inbox`. When a notification is late or never comes, [`TradeQuery`] asks the
//! platform's trade query API (Alipay, WeChat Pay v2 and v3) and [`Inbox::reconcile`] applies
//! its verified answer through the same inbox, exactly once.
//!
//! ```no_run
//! # async fn demo(inbox: herald_receiver::Inbox, req: herald_receiver::RawRequest) {
//! let handled = inbox
//!     .receive(&req, |effects, t| {
//!         effects.execute(
//!             "INSERT INTO shipments (out_trade_no) VALUES (?1)",
//!             vec![herald_inbox::SqlValue::Text(t.out_trade_no.clone())],
//!         );
//!         Ok(())
//!     })
//!     .await;
//! // handled.reply: the ack (or the failure reply that makes the provider send again).
//! # }
//! ```
#[cfg(feature = "axum")]
pub mod axum;
mod inbox;
pub mod query;
mod receiver;
mod state;

use herald_inbox::OrderState;
use herald_protocols::receive::{Amount, ReceiveError, Reply};

pub use crate::inbox::{Effects, Inbox, Transition};
pub use crate::query::{
    QueryError, ReconcileError, Reconciled, TradeAnswer, TradeQuery, TradeState,
};
pub use crate::receiver::Receiver;

/// A request as it reached the notify URL, nothing parsed yet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawRequest {
    /// `POST` for notifications.
    pub method: String,
    /// Every header, names in any case, in the order received.
    pub headers: Vec<(String, String)>,
    /// The query string without `?` (empty for most notifications).
    pub query: String,
    /// The body exactly as received: signatures cover these bytes.
    pub body: bytes::Bytes,
}

/// Why a notification was refused. Every rejection gets the profile's failure reply, so the
/// provider sends the notification again; messages never contain key material.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The request did not verify (signature, timestamp, body) or could not be decoded.
    #[error("{0}")]
    Invalid(ReceiveError),
    /// Signed, but for another app than the one this receiver expects.
    #[error("the notification is for app {got:?}, not this receiver's")]
    ForeignApp { got: String },
    /// Signed, but for another merchant than the one this receiver expects.
    #[error("the notification is for merchant {got:?}, not this receiver's")]
    ForeignMerchant { got: String },
    /// No order has this `out_trade_no`.
    #[error("unknown order {0:?}")]
    UnknownOrder(String),
    /// The amount or currency is not the order's: a possible forgery.
    #[error(
        "amount mismatch: the order expects {} {}, the notification says {} {}",
        .expected.minor, .expected.currency, .got.minor, .got.currency
    )]
    AmountMismatch { expected: Amount, got: Amount },
    /// The inbox's storage failed; nothing was recorded.
    #[error("storage failure: {0}")]
    Store(String),
    /// The merchant's handler (or one of its statements) failed; nothing was recorded.
    #[error("handler failed: {0}")]
    Handler(String),
}

impl Rejection {
    /// The reason put in the failure reply: the message, except for storage and handler
    /// failures, whose details stay in the merchant's log.
    pub fn reply_reason(&self) -> String {
        match self {
            Rejection::Store(_) | Rejection::Handler(_) => {
                "temporary failure; please send again".into()
            }
            other => other.to_string(),
        }
    }
}

/// What processing a verified notification did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The order moved (the handler ran and its statements committed with the change).
    Applied { from: OrderState, to: OrderState },
    /// This notify id was processed before: nothing done, acknowledged again.
    Duplicate,
    /// Nothing to do for the order (in `state`): a replay, a late payment after a refund or
    /// close, a status that moves nothing. Recorded and acknowledged; the handler did not run.
    Stale { state: OrderState, reason: String },
    /// A verified notification that names no order (e.g. a Stripe `customer.created`):
    /// acknowledged so the provider stops sending it, nothing recorded, handler not run.
    /// Sending it again could not make it name an order.
    Unrelated { reason: String },
}

/// A handled request: the outcome and the reply to send (the profile's ack for `Ok`, its
/// failure reply for `Err`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handled {
    pub result: Result<Outcome, Rejection>,
    pub reply: Reply,
}
