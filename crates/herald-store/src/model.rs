//! The domain model as the store keeps it: apps, endpoints, notifications, deliveries and
//! attempts, plus the resolved views the engine works with ([`ClaimedDelivery`], [`AppCtx`],
//! [`EndpointCtx`]).
//!
//! Producers' fields are validated types ([`EventType`], [`NotifyUrl`], [`IdempotencyKey`],
//! [`OrderKey`], an endpoint's [`EndpointUrl`]; see [`crate::fields`]). Times are unix milliseconds ([`UnixMillis`]) and always passed in by
//! the caller, so tests control the clock.
use std::sync::Arc;

/// Every time in the model is a [`UnixMillis`] (re-exported so `use crate::model::*` sees it).
pub use herald_protocols::UnixMillis;
use herald_protocols::{AckRule, Credentials, Profile, RetryPolicy};
use serde::{Deserialize, Serialize};

use crate::fields::{EndpointUrl, EventType, IdempotencyKey, NotifyUrl, OrderKey};
use crate::health::{BreakerState, EndpointHealth};

/// The state of one delivery. A closed set, enforced by a CHECK constraint in every driver.
///
/// - `Pending`: created by a notification (or put back by a manual retry / recover); has a
///   `next_attempt_at`. Left only by the engine recording an attempt outcome, or by the
///   endpoint or the app being deleted.
/// - `Succeeded`: the receiver acknowledged. Final (a manual retry may send it again).
/// - `Failed`: the retry schedule is spent without an ack. A manual retry or `recover` puts it
///   back to `Pending`.
/// - `Canceled`: its endpoint or its app was deleted while it was pending. Final.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    Pending,
    Succeeded,
    Failed,
    Canceled,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Succeeded => "succeeded",
            DeliveryStatus::Failed => "failed",
            DeliveryStatus::Canceled => "canceled",
        }
    }

    pub fn parse(s: &str) -> Option<DeliveryStatus> {
        Some(match s {
            "pending" => DeliveryStatus::Pending,
            "succeeded" => DeliveryStatus::Succeeded,
            "failed" => DeliveryStatus::Failed,
            "canceled" => DeliveryStatus::Canceled,
            _ => return None,
        })
    }

    pub fn is_final(self) -> bool {
        !matches!(self, DeliveryStatus::Pending)
    }
}

/// A tenant: a merchant account on a platform, or a SaaS product's customer.
#[derive(Clone, Debug)]
pub struct App {
    pub id: String,
    pub name: String,
    pub profile: Profile,
    /// Overrides the profile's default retry policy for the app's deliveries.
    pub retry: Option<RetryPolicy>,
    /// Overrides the profile's default ack rule.
    pub ack: Option<AckRule>,
    pub credentials: Credentials,
    pub created_at: UnixMillis,
}

#[derive(Clone, Debug)]
pub struct NewApp {
    pub name: String,
    pub profile: Profile,
    pub retry: Option<RetryPolicy>,
    pub ack: Option<AckRule>,
    pub credentials: Credentials,
    pub now: UnixMillis,
}

/// A page of the live apps, by id.
#[derive(Clone, Debug, Default)]
pub struct ListApps {
    /// At most this many (1 to [`MAX_PAGE`]; 0 counts as 1).
    pub limit: u32,
    /// Opaque cursor from a previous page.
    pub cursor: Option<String>,
}

/// A partial update of an app; `None` leaves a field as it is, and for the nullable ones
/// `Some(None)` goes back to the profile's default.
#[derive(Clone, Debug, Default)]
pub struct AppPatch {
    pub name: Option<String>,
    pub retry: Option<Option<RetryPolicy>>,
    pub ack: Option<Option<AckRule>>,
}

impl AppPatch {
    /// Applies the patch to `app`. Every driver applies patches this way.
    pub fn apply(self, app: &mut App) {
        if let Some(v) = self.name {
            app.name = v;
        }
        if let Some(v) = self.retry {
            app.retry = v;
        }
        if let Some(v) = self.ack {
            app.ack = v;
        }
    }
}

/// An API key scoped to one app, as stored: never the key itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKey {
    /// `key_<ulid>`.
    pub id: String,
    pub app_id: String,
    /// The key's first characters (`hk_` and a few more), to tell keys apart in lists.
    pub prefix: String,
    pub created_at: UnixMillis,
    /// When it last authenticated a request (to about a minute); `None` if never.
    pub last_used_at: Option<UnixMillis>,
}

#[derive(Clone, Debug)]
pub struct NewApiKey {
    pub app_id: String,
    pub prefix: String,
    /// SHA-256 of the key, lowercase hex.
    pub key_sha256: String,
    pub now: UnixMillis,
}

/// A subscribed URL of an app.
#[derive(Clone, Debug, PartialEq)]
pub struct Endpoint {
    pub id: String,
    pub app_id: String,
    pub url: EndpointUrl,
    /// Event-type filter; `None` receives every event type. See [`event_type_matches`].
    pub event_types: Option<Vec<String>>,
    pub retry: Option<RetryPolicy>,
    pub ack: Option<AckRule>,
    pub max_in_flight: u32,
    pub ordered: bool,
    pub enabled: bool,
    /// Overrides the profile's attempt timeout (milliseconds).
    pub timeout_ms: Option<u32>,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
    /// The circuit breaker and auto-disable state (see [`crate::health`]).
    pub health: EndpointHealth,
}

#[derive(Clone, Debug)]
pub struct NewEndpoint {
    pub app_id: String,
    pub url: EndpointUrl,
    pub event_types: Option<Vec<String>>,
    pub retry: Option<RetryPolicy>,
    pub ack: Option<AckRule>,
    pub max_in_flight: u32,
    pub ordered: bool,
    pub enabled: bool,
    pub timeout_ms: Option<u32>,
    pub now: UnixMillis,
}

/// A partial update; `None` leaves a field as it is. For nullable fields the inner `None`
/// clears the value.
#[derive(Clone, Debug, Default)]
pub struct EndpointPatch {
    pub url: Option<EndpointUrl>,
    pub event_types: Option<Option<Vec<String>>>,
    pub retry: Option<Option<RetryPolicy>>,
    pub ack: Option<Option<AckRule>>,
    pub max_in_flight: Option<u32>,
    pub ordered: Option<bool>,
    pub enabled: Option<bool>,
    pub timeout_ms: Option<Option<u32>>,
}

impl EndpointPatch {
    /// Applies the patch to `ep`, changed at `now`. Every driver applies patches this way.
    pub fn apply(self, ep: &mut Endpoint, now: UnixMillis) {
        if let Some(v) = self.url {
            ep.url = v;
        }
        if let Some(v) = self.event_types {
            ep.event_types = v;
        }
        if let Some(v) = self.retry {
            ep.retry = v;
        }
        if let Some(v) = self.ack {
            ep.ack = v;
        }
        if let Some(v) = self.max_in_flight {
            ep.max_in_flight = v;
        }
        if let Some(v) = self.ordered {
            ep.ordered = v;
        }
        if let Some(v) = self.enabled {
            ep.enabled = v;
            if v && ep.health.state == BreakerState::Disabled {
                // Enabling an endpoint that health disabled starts its health afresh; its
                // held-back deliveries become claimable again.
                ep.health = EndpointHealth {
                    last_success_at: ep.health.last_success_at,
                    last_failure_at: ep.health.last_failure_at,
                    changed_at: Some(now),
                    ..EndpointHealth::default()
                };
            }
        }
        if let Some(v) = self.timeout_ms {
            ep.timeout_ms = v;
        }
        ep.updated_at = now;
    }
}

/// What a producer sent. Immutable once stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Notification {
    pub id: String,
    pub app_id: String,
    pub event_type: EventType,
    /// The producer's JSON payload, byte for byte.
    pub payload: String,
    pub notify_url: Option<NotifyUrl>,
    pub idempotency_key: Option<IdempotencyKey>,
    pub order_key: Option<OrderKey>,
    pub created_at: UnixMillis,
}

#[derive(Clone, Debug)]
pub struct NewNotification {
    pub app_id: String,
    pub event_type: EventType,
    pub payload: String,
    /// Send to this URL alone (the payment-API style) instead of the app's endpoints.
    pub notify_url: Option<NotifyUrl>,
    pub idempotency_key: Option<IdempotencyKey>,
    pub order_key: Option<OrderKey>,
    pub now: UnixMillis,
}

impl NewNotification {
    /// Whether an endpoint (enabled or not, with its event-type filter) receives this
    /// notification. Every driver routes by this rule.
    pub fn goes_to(&self, enabled: bool, event_types: Option<&[String]>) -> bool {
        enabled && event_type_matches(event_types, &self.event_type)
    }

    /// The order key of this notification's delivery to the endpoint `(id, ordered)`, or to
    /// its `notify_url` when `None`: an ordered endpoint serializes everything it receives;
    /// otherwise the notification's own `order_key`, scoped to the endpoint (or to the app
    /// for a `notify_url`), serializes what shares it.
    pub fn order_key_for(&self, endpoint: Option<(&str, bool)>) -> Option<String> {
        match endpoint {
            Some((id, true)) => Some(format!("ep:{id}")),
            Some((id, false)) => self.order_key.as_ref().map(|k| format!("ep:{id}:{k}")),
            None => self
                .order_key
                .as_ref()
                .map(|k| format!("app:{}:{k}", self.app_id)),
        }
    }
}

/// One notification to one URL.
#[derive(Clone, Debug, PartialEq)]
pub struct Delivery {
    pub id: String,
    pub notification_id: String,
    pub app_id: String,
    pub endpoint_id: Option<String>,
    pub url: String,
    /// Stable across attempts: the receiver's dedupe key.
    pub notify_id: String,
    pub status: DeliveryStatus,
    pub attempts: u32,
    pub next_attempt_at: Option<UnixMillis>,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
}

/// One HTTP try.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Attempt {
    /// 1 for the first attempt.
    pub n: u32,
    pub at: UnixMillis,
    pub duration_ms: u32,
    pub status_code: Option<u16>,
    /// The first 4 KiB of the response body, as lossy UTF-8.
    pub response: Option<String>,
    /// `connect`, `timeout`, `tls`, `bad-ack`, `http-status`, `blocked-target`, `request`,
    /// `body`, or `None` when acknowledged.
    pub error_class: Option<String>,
    /// A short human-readable reason (never contains secrets).
    pub error: Option<String>,
}

/// The most attempts a detail read ([`AdminStore::get_delivery`],
/// [`AdminStore::get_notification`]) embeds per delivery: the latest ones. The rest are paged
/// with [`AdminStore::list_attempts`]; [`Delivery::attempts`] says how many there are in all.
///
/// [`AdminStore::get_delivery`]: crate::AdminStore::get_delivery
/// [`AdminStore::get_notification`]: crate::AdminStore::get_notification
/// [`AdminStore::list_attempts`]: crate::AdminStore::list_attempts
pub const DETAIL_ATTEMPTS: u32 = 20;

/// The most rows one list call returns, whatever limit it asks for (the API's own maxima are
/// lower).
pub const MAX_PAGE: u32 = 1000;

#[derive(Clone, Debug)]
pub struct DeliveryDetail {
    pub delivery: Delivery,
    /// At most [`DETAIL_ATTEMPTS`], the latest ones, in attempt order.
    pub attempts: Vec<Attempt>,
}

#[derive(Clone, Debug)]
pub struct NotificationDetail {
    pub notification: Notification,
    pub deliveries: Vec<DeliveryDetail>,
}

/// A notification as a list shows it: no payload, and its deliveries without their
/// attempts, so a page's size (and the memory reading it takes) does not depend on what
/// producers sent or how often receivers failed.
#[derive(Clone, Debug, PartialEq)]
pub struct NotificationSummary {
    pub id: String,
    pub app_id: String,
    pub event_type: EventType,
    pub notify_url: Option<NotifyUrl>,
    pub idempotency_key: Option<IdempotencyKey>,
    pub order_key: Option<OrderKey>,
    pub created_at: UnixMillis,
    /// In creation order. One per matching endpoint (an app has at most a bounded number of
    /// endpoints, see the API), or one for a `notify_url`.
    pub deliveries: Vec<Delivery>,
}

/// The result of storing a notification.
#[derive(Clone, Debug)]
pub struct CreatedNotification {
    pub notification: Notification,
    pub deliveries: Vec<Delivery>,
    /// True when the idempotency key matched an earlier notification: nothing was created
    /// and the earlier notification is returned.
    pub replayed: bool,
}

/// Filter for listing an app's notifications.
#[derive(Clone, Debug, Default)]
pub struct ListNotifications {
    /// `pending`/`failed`/`canceled`: some delivery has that status; `succeeded`: every
    /// delivery succeeded.
    pub status: Option<DeliveryStatus>,
    pub limit: u32,
    /// Opaque cursor from a previous page.
    pub cursor: Option<String>,
}

/// A page of an app's endpoints, by `created_at` then id.
#[derive(Clone, Debug, Default)]
pub struct ListEndpoints {
    /// At most this many (1 to [`MAX_PAGE`]; 0 counts as 1).
    pub limit: u32,
    /// Opaque cursor from a previous page.
    pub cursor: Option<String>,
}

/// A page of a delivery's attempts, oldest first.
#[derive(Clone, Debug, Default)]
pub struct ListAttempts {
    /// At most this many (1 to [`MAX_PAGE`]; 0 counts as 1).
    pub limit: u32,
    /// Opaque cursor from a previous page.
    pub cursor: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// True when `event_type` passes `filter`: `None` or `"*"` matches everything, `"a.*"`
/// matches `a.` followed by anything, any other pattern matches itself exactly.
pub fn event_type_matches(filter: Option<&[String]>, event_type: &str) -> bool {
    let Some(patterns) = filter else { return true };
    patterns.iter().any(|p| {
        if p == "*" {
            true
        } else if let Some(prefix) = p.strip_suffix('*') {
            event_type.starts_with(prefix)
        } else {
            p == event_type
        }
    })
}

// ---------------------------------------------------------------------------------------
// What the engine works with.

/// An app as the engine needs it to sign and judge deliveries.
#[derive(Clone, Debug)]
pub struct AppCtx {
    pub id: String,
    pub profile: Profile,
    pub credentials: Credentials,
    /// The app's retry policy, or its profile's default.
    pub retry: RetryPolicy,
    /// The app's ack rule, or its profile's default.
    pub ack: AckRule,
}

impl AppCtx {
    pub fn from_app(app: &App) -> AppCtx {
        AppCtx {
            id: app.id.clone(),
            profile: app.profile,
            credentials: app.credentials.clone(),
            retry: app
                .retry
                .clone()
                .unwrap_or_else(|| app.profile.default_retry()),
            ack: app
                .ack
                .clone()
                .unwrap_or_else(|| app.profile.default_ack_for(&app.credentials)),
        }
    }
}

/// An endpoint as the engine needs it.
#[derive(Clone, Debug)]
pub struct EndpointCtx {
    pub id: String,
    pub app_id: String,
    pub url: EndpointUrl,
    pub event_types: Option<Vec<String>>,
    pub retry: Option<RetryPolicy>,
    pub ack: Option<AckRule>,
    pub max_in_flight: u32,
    pub ordered: bool,
    pub enabled: bool,
    pub timeout_ms: Option<u32>,
    /// Set on the last version of a deleted endpoint, so the engine drops what it holds.
    pub deleted: bool,
    /// The endpoint's breaker as of this version (see [`crate::health`]).
    pub health: EndpointHealth,
}

impl EndpointCtx {
    pub fn from_endpoint(e: &Endpoint) -> EndpointCtx {
        EndpointCtx {
            id: e.id.clone(),
            app_id: e.app_id.clone(),
            url: e.url.clone(),
            event_types: e.event_types.clone(),
            retry: e.retry.clone(),
            ack: e.ack.clone(),
            max_in_flight: e.max_in_flight,
            ordered: e.ordered,
            enabled: e.enabled,
            timeout_ms: e.timeout_ms,
            deleted: false,
            health: e.health.clone(),
        }
    }
}

/// A delivery as the engine holds it after claiming it: the `deliveries` row (the same row
/// the API shows as a [`Delivery`]) with everything needed to attempt it. `app` and
/// `endpoint` are the versions current when it was claimed; the engine replaces them with
/// newer versions it learns of through [`Hint`](crate::Hint)s.
#[derive(Clone, Debug)]
pub struct ClaimedDelivery {
    /// The delivery's internal sequence number: creation order, the timer tiebreak.
    pub seq: i64,
    pub id: String,
    pub notify_id: String,
    pub notification_id: String,
    pub app: Arc<AppCtx>,
    pub endpoint: Option<Arc<EndpointCtx>>,
    /// The URL recorded at creation (for endpoint deliveries the endpoint's current URL wins):
    /// an [`EndpointUrl`] or a [`NotifyUrl`] as it was then, so a plain string.
    pub url: String,
    pub event_type: EventType,
    pub payload: Arc<str>,
    /// When the notification was created (unix ms).
    pub created_at: UnixMillis,
    /// Attempts already made.
    pub attempts: u32,
    pub next_at: UnixMillis,
    /// The delivery's scoped order key ([`NewNotification::order_key_for`]: `ep:...` or
    /// `app:...`), not the producer's [`OrderKey`] itself.
    pub order_key: Option<String>,
}

impl ClaimedDelivery {
    /// The timer key: due time, then creation order.
    pub fn key(&self) -> (UnixMillis, i64) {
        (self.next_at, self.seq)
    }
}

/// What the engine decided after an attempt (the receiver library's `Outcome` is something
/// else: what processing a notification did to an order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptOutcome {
    Succeeded,
    Retry { next_at: UnixMillis },
    Failed,
}

impl AttemptOutcome {
    /// The delivery's status and next attempt time once this outcome is applied.
    pub fn status_and_next_at(self) -> (DeliveryStatus, Option<UnixMillis>) {
        match self {
            AttemptOutcome::Succeeded => (DeliveryStatus::Succeeded, None),
            AttemptOutcome::Failed => (DeliveryStatus::Failed, None),
            AttemptOutcome::Retry { next_at } => (DeliveryStatus::Pending, Some(next_at)),
        }
    }
}

/// An attempt and its outcome, to be recorded.
#[derive(Clone, Debug)]
pub struct AttemptReport {
    pub job: Arc<ClaimedDelivery>,
    pub attempt: Attempt,
    pub outcome: AttemptOutcome,
}

// ---------------------------------------------------------------------------------------
// The payment sandbox's trades.

/// One sandbox payment (a trade of `herald serve --sandbox`) as the store keeps it: the
/// columns the store indexes, plus the sandbox's own JSON document, which the store keeps
/// byte for byte and never interprets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxPayment {
    pub id: String,
    pub app_id: String,
    pub out_trade_no: String,
    /// The sandbox's document (state, amounts, refunds, events).
    pub doc: String,
    /// Bumped by every write; a write names the version it read (optimistic concurrency).
    pub version: i64,
    /// When an unpaid trade closes by itself; `None` once it is paid or closed.
    pub deadline: Option<UnixMillis>,
}

/// A notification the sandbox enqueues together with a trade change.
#[derive(Clone, Debug)]
pub struct SandboxNotification {
    pub new: NewNotification,
    /// The delivery's notify id, chosen by the sandbox (so a duplicate drill can send the same
    /// notify id again); `None` lets the store pick one as usual.
    pub notify_id: Option<String>,
}

/// One atomic sandbox change: the payment's new document and the notifications that change
/// enqueues, committed in one transaction (both or neither).
#[derive(Clone, Debug)]
pub struct SandboxWrite {
    /// The new row; its `version` is ignored (the store sets it).
    pub payment: SandboxPayment,
    /// `None` inserts a new payment (`Err(Conflict)` when the app already has one with this
    /// `out_trade_no`); `Some(v)` updates it only if its version is still `v` (else
    /// `Err(Conflict)`: someone else changed it first).
    pub expected_version: Option<i64>,
    pub notifications: Vec<SandboxNotification>,
}

/// What a [`SandboxWrite`] committed.
#[derive(Clone, Debug)]
pub struct SandboxWritten {
    pub payment: SandboxPayment,
    /// In the order of [`SandboxWrite::notifications`].
    pub notifications: Vec<CreatedNotification>,
}

// ---------------------------------------------------------------------------------------
// Sources: the inbound gateway (`POST /v1/sources`, `/in/{id}`).

/// How a source forwards what it verified to its destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SourceFormat {
    /// The decoded notification as JSON, signed with the source's `whsec_` secret.
    #[serde(rename = "standard-webhooks")]
    StandardWebhooks,
    /// The provider's original headers and body, plus Herald's signature headers.
    #[serde(rename = "raw")]
    Raw,
}

impl SourceFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceFormat::StandardWebhooks => "standard-webhooks",
            SourceFormat::Raw => "raw",
        }
    }

    pub fn parse(s: &str) -> Option<SourceFormat> {
        match s {
            "standard-webhooks" => Some(SourceFormat::StandardWebhooks),
            "raw" => Some(SourceFormat::Raw),
            _ => None,
        }
    }
}

/// What a source verifies with: the strings `herald listen --key` takes (platform public
/// keys, API keys, `whsec_` secrets) and WeChat Pay v3's APIv3 key. Secrets: drivers seal
/// this (as JSON, bound to the source's id) and it is never returned by the API.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceKeys {
    pub keys: Vec<String>,
    #[serde(default)]
    pub decrypt_key: Option<String>,
    /// For the `dialect` profile: the dialect (a preset name or its JSON form); absent, the
    /// `epay` preset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dialect: Option<serde_json::Value>,
}

impl std::fmt::Debug for SourceKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SourceKeys(<redacted>)")
    }
}

/// An inbound gateway: providers post to it, Herald verifies with `profile` and `keys`,
/// stores each valid notification as a notification of the source's own app (`app_id`,
/// whose `whsec_` secret signs the forwards) and delivers it to the source's one endpoint
/// (`endpoint_id`, the destination) ordered per `out_trade_no`.
#[derive(Clone, Debug, PartialEq)]
pub struct Source {
    pub id: String,
    pub name: String,
    /// The provider's wire profile, by its registry name (`alipay`, `wechatpay-v3`...).
    pub profile: String,
    pub keys: SourceKeys,
    /// Refuse notifications whose app id is not this one.
    pub expect_app_id: Option<String>,
    /// Refuse notifications whose merchant (seller, mch) id is not this one.
    pub expect_merchant_id: Option<String>,
    pub format: SourceFormat,
    /// The source's internal app: its notifications are what the source received.
    pub app_id: String,
    /// The destination: the internal app's one endpoint.
    pub endpoint_id: String,
    pub created_at: UnixMillis,
}

/// A source to create, with its internal app and destination endpoint, in one transaction.
#[derive(Clone, Debug)]
pub struct NewSource {
    pub name: String,
    pub profile: String,
    pub keys: SourceKeys,
    pub expect_app_id: Option<String>,
    pub expect_merchant_id: Option<String>,
    pub format: SourceFormat,
    /// The internal app (its `app_id` is filled in by the store).
    pub app: NewApp,
    /// The destination endpoint (its `app_id` is ignored: the store sets the new app's).
    pub destination: NewEndpoint,
}

/// A page of live sources, by `created_at` then id.
#[derive(Clone, Debug, Default)]
pub struct ListSources {
    /// At most this many (1 to [`MAX_PAGE`]; 0 counts as 1).
    pub limit: u32,
    /// Opaque cursor from a previous page.
    pub cursor: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_type_filter_matches_exact_prefix_and_wildcard() {
        let f = vec!["trade.*".to_string(), "refund.success".to_string()];
        assert!(event_type_matches(Some(&f), "trade.success"));
        assert!(event_type_matches(Some(&f), "trade.closed.partial"));
        assert!(event_type_matches(Some(&f), "refund.success"));
        assert!(!event_type_matches(Some(&f), "refund.failed"));
        assert!(!event_type_matches(Some(&f), "trade"));
        assert!(event_type_matches(None, "anything"));
        assert!(event_type_matches(Some(&["*".to_string()]), "anything"));
        assert!(!event_type_matches(Some(&[]), "anything"));
    }
}
