//! The sandbox's trade document: what one payment is (terms, provider ids, state, refunds,
//! drills) and the events it emitted. Stored by herald-store as an opaque JSON document next
//! to the columns it indexes (`sandbox_payments`).
use herald_protocols::Profile;
use herald_store::{SandboxPayment, UnixMillis};
use serde::{Deserialize, Serialize};

/// A trade's state, named as Alipay names them (the sandbox's lingua franca).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TradeState {
    WaitBuyerPay,
    TradeSuccess,
    /// Paid, and the refund window is over: no more refunds (Alipay's `TRADE_FINISHED`).
    TradeFinished,
    TradeClosed,
}

impl TradeState {
    pub fn as_str(self) -> &'static str {
        match self {
            TradeState::WaitBuyerPay => "WAIT_BUYER_PAY",
            TradeState::TradeSuccess => "TRADE_SUCCESS",
            TradeState::TradeFinished => "TRADE_FINISHED",
            TradeState::TradeClosed => "TRADE_CLOSED",
        }
    }
}

/// Failure drills: how the notifications enqueued from now on are misdelivered on purpose.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drills {
    /// Extra copies of each notification, with the same notify id.
    #[serde(default)]
    pub duplicate: u32,
    /// Hold the payment notification back until the first refund, then deliver it after the
    /// refund's.
    #[serde(default)]
    pub out_of_order: bool,
    /// One extra copy of each notification signed with a key the receiver does not trust.
    #[serde(default)]
    pub bad_signature: bool,
    /// One extra copy of each notification with the amount raised by 1.00, correctly signed
    /// with the app's own key and under a notify id of its own: only the merchant's amount
    /// check can refuse it.
    #[serde(default)]
    pub tampered_amount: bool,
    /// End the refund window now: a paid trade becomes `TRADE_FINISHED` (Alipay notifies
    /// it); set before the payment, the trade finishes right after it is paid.
    #[serde(default)]
    pub trade_finished: bool,
}

impl Drills {
    pub const MAX_DUPLICATES: u32 = 10;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Paid,
    Closed,
    Refund,
    Finished,
}

/// One thing that happened to the trade and what was enqueued for it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Event {
    /// 1, 2, ... in the trade's order.
    pub seq: u32,
    pub kind: EventKind,
    pub at: UnixMillis,
    /// The notification's event type and payload; `None` when the provider sends none.
    pub event_type: Option<String>,
    pub payload: Option<String>,
    /// The delivery's notify id, the same on every attempt and on duplicate copies.
    pub notify_id: Option<String>,
    /// True while an out-of-order drill holds the notification back.
    #[serde(default)]
    pub held: bool,
    /// The notifications enqueued for it: the real one first, then drill copies.
    #[serde(default)]
    pub notifications: Vec<Enqueued>,
    /// Why no notification is sent, when none is.
    pub note: Option<String>,
    /// Where its notification goes when not the payment's `notify_url` (a refund request to
    /// the provider's API may name its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify_url: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Enqueued {
    /// `notification`, `duplicate`, `bad_signature` or `tampered_amount`.
    pub role: String,
    pub notification_id: String,
    pub delivery_id: Option<String>,
}

/// How a refund ended, as WeChat Pay v3 reports it (`REFUND.SUCCESS`, `REFUND.ABNORMAL`,
/// `REFUND.CLOSED`); the other providers only report successes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RefundStatus {
    #[default]
    Success,
    /// The money could not reach the buyer (e.g. a closed bank card); the merchant must
    /// settle it another way.
    Abnormal,
    /// The refund was closed without paying out.
    Closed,
}

impl RefundStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RefundStatus::Success => "SUCCESS",
            RefundStatus::Abnormal => "ABNORMAL",
            RefundStatus::Closed => "CLOSED",
        }
    }
}

/// Who paid: the buyer's ids at the provider, fixed when the trade is paid.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Buyer {
    /// Alipay `buyer_id` (`2088` + 12 digits).
    pub buyer_id: String,
    /// Alipay `buyer_logon_id`, masked as Alipay shows it (`159****5620`).
    pub buyer_logon_id: String,
    /// WeChat Pay `openid` (the buyer's id under the merchant's appid).
    pub openid: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Refund {
    pub seq: u32,
    pub out_refund_no: String,
    pub refund_id: String,
    pub amount: i64,
    /// Refunded so far, this refund included when it succeeded.
    pub refunded_total: i64,
    pub at: UnixMillis,
    #[serde(default)]
    pub status: RefundStatus,
}

/// One sandbox payment.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Payment {
    pub id: String,
    pub app_id: String,
    pub profile: Profile,
    pub out_trade_no: String,
    pub subject: String,
    /// The order total in minor units.
    pub amount: i64,
    pub currency: String,
    pub notify_url: String,
    pub return_url: Option<String>,
    /// The provider's transaction id (`trade_no`, `transaction_id`, `pi_...`).
    pub trade_no: String,
    /// Alipay: the seller's `2088...` id (the app's configured one, else derived from the
    /// app id), fixed at creation.
    #[serde(default)]
    pub seller_id: Option<String>,
    pub state: TradeState,
    pub created_at: UnixMillis,
    /// When an unpaid trade closes by itself.
    pub expires_at: UnixMillis,
    pub paid_at: Option<UnixMillis>,
    /// Who paid (set when paid).
    #[serde(default)]
    pub buyer: Option<Buyer>,
    /// When the refund window ended (`TRADE_FINISHED`).
    #[serde(default)]
    pub finished_at: Option<UnixMillis>,
    pub closed_at: Option<UnixMillis>,
    pub close_reason: Option<String>,
    #[serde(default)]
    pub refunds: Vec<Refund>,
    #[serde(default)]
    pub drills: Drills,
    #[serde(default)]
    pub events: Vec<Event>,
}

impl Payment {
    /// Refunded so far (successful refunds only).
    pub fn refunded(&self) -> i64 {
        self.refunds.last().map_or(0, |r| r.refunded_total)
    }

    pub fn next_seq(&self) -> u32 {
        self.events.len() as u32 + 1
    }

    /// The row herald-store keeps: indexed columns and this document.
    pub fn to_row(&self) -> Result<SandboxPayment, serde_json::Error> {
        Ok(SandboxPayment {
            id: self.id.clone(),
            app_id: self.app_id.clone(),
            out_trade_no: self.out_trade_no.clone(),
            doc: serde_json::to_string(self)?,
            version: 0,
            deadline: (self.state == TradeState::WaitBuyerPay).then_some(self.expires_at),
        })
    }

    pub fn from_row(row: &SandboxPayment) -> Result<Payment, serde_json::Error> {
        serde_json::from_str(&row.doc)
    }
}
