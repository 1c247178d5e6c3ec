//! The operator dashboard's read side ([`DashboardStore`]): the few questions the dashboard
//! asks that the API does not (apps in a list, attempts per minute, the backlog, endpoints
//! in trouble, an endpoint's health, notification search, sandbox payments in a list).
//!
//! Kept apart from [`AdminStore`](crate::AdminStore) because these are operator views, not
//! API resources. Every call is bounded: lists are keyset-paged with at most [`MAX_PAGE`]
//! rows, counts stop at [`COUNT_CAP`], time-window reads walk the attempts' time index
//! (`attempts_by_time`, migration 4) over the window only, and a search examines at most
//! [`SEARCH_SCAN`] notifications per call (a page may then come back short, with a cursor to
//! go on from where it stopped).
use async_trait::async_trait;

use crate::fields::EventType;
use crate::model::*;
use crate::Result;

/// Counts the dashboard shows stop here ("100000+"): counting a huge backlog on every page
/// view is not worth its cost.
pub const COUNT_CAP: u64 = 100_000;

/// The most notifications one [`DashboardStore::search_notifications`] call examines.
pub const SEARCH_SCAN: u32 = 5_000;

/// The most recent deliveries of an endpoint whose attempts [`DashboardStore::endpoint_health`]
/// reads.
pub const HEALTH_DELIVERIES: u32 = 50;

/// An app as a list shows it: no credentials are read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppSummary {
    pub id: String,
    pub name: String,
    /// The profile's name (`alipay`, `stripe`, ...).
    pub profile: String,
    pub created_at: UnixMillis,
}

/// A keyset page request: `limit` (1 to [`MAX_PAGE`]; 0 counts as 1) and an opaque cursor.
#[derive(Clone, Debug, Default)]
pub struct ListPage {
    pub limit: u32,
    pub cursor: Option<String>,
}

/// Attempts made in one minute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MinuteActivity {
    /// The minute's start (unix ms, a multiple of 60 000).
    pub minute: UnixMillis,
    /// Attempts the receiver acknowledged.
    pub succeeded: u64,
    /// Attempts that failed (any error class).
    pub failed: u64,
}

/// The queue as a whole, each count capped at [`COUNT_CAP`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueCounts {
    /// Pending deliveries (due now or later).
    pub pending: u64,
    /// Pending deliveries due at or before `now`.
    pub due: u64,
    /// Pending deliveries a node holds (claimed).
    pub held: u64,
    /// Deliveries whose retries are spent.
    pub failed: u64,
}

/// A destination whose latest attempt in a time window failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointTrouble {
    pub app_id: String,
    /// `None` for a `notify_url` destination.
    pub endpoint_id: Option<String>,
    pub url: String,
    /// Failed attempts in the window.
    pub failures: u64,
    pub last_attempt_at: UnixMillis,
    /// The latest acknowledged attempt in the window, if any.
    pub last_success_at: Option<UnixMillis>,
}

/// An endpoint's recent health, read from the attempts of its latest
/// [`HEALTH_DELIVERIES`] deliveries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointRecent {
    /// The latest acknowledged attempt among those read.
    pub last_success_at: Option<UnixMillis>,
    pub last_attempt_at: Option<UnixMillis>,
    /// Failed attempts since the latest acknowledged one (all of those read when none was).
    pub consecutive_failures: u64,
    /// Pending deliveries of the endpoint (capped at [`COUNT_CAP`]).
    pub pending: u64,
}

/// A notification search. Every given field must match; `limit` as in [`ListPage`].
#[derive(Clone, Debug, Default)]
pub struct SearchNotifications {
    pub app_id: Option<String>,
    /// As in [`ListNotifications::status`].
    pub status: Option<DeliveryStatus>,
    pub event_type: Option<EventType>,
    /// The notification's `order_key`, or its payload's top-level `out_trade_no`.
    pub key: Option<String>,
    /// A delivery's notify id (what the receiver saw).
    pub notify_id: Option<String>,
    /// Created at or after.
    pub from: Option<UnixMillis>,
    /// Created before.
    pub until: Option<UnixMillis>,
    pub limit: u32,
    pub cursor: Option<String>,
}

/// The operator dashboard's reads. See the module doc for how each is bounded.
#[async_trait]
pub trait DashboardStore: Send + Sync + 'static {
    /// Apps by id, a page at a time.
    async fn list_app_summaries(&self, page: ListPage) -> Result<Page<AppSummary>>;
    /// Attempts per minute made in `[since, until)`, oldest minute first; minutes without
    /// attempts are left out.
    async fn activity(&self, since: UnixMillis, until: UnixMillis) -> Result<Vec<MinuteActivity>>;
    /// The backlog, judged at `now`.
    async fn queue_counts(&self, now: UnixMillis) -> Result<QueueCounts>;
    /// Destinations whose latest attempt at or after `since` failed, most failures first, at
    /// most `limit`.
    async fn troubled_endpoints(
        &self,
        since: UnixMillis,
        limit: u32,
    ) -> Result<Vec<EndpointTrouble>>;
    /// The endpoint's recent health (all zero/none when it has had no attempts).
    async fn endpoint_health(&self, endpoint_id: &str) -> Result<EndpointRecent>;
    /// Notifications matching the search, newest first, as summaries. Examines at most
    /// [`SEARCH_SCAN`] notifications per call: a page may hold fewer than `limit` items and
    /// still carry a cursor, from which the next call goes on. `Err(BadCursor)` for a cursor
    /// this store did not make.
    async fn search_notifications(
        &self,
        search: SearchNotifications,
    ) -> Result<Page<NotificationSummary>>;
    /// Sandbox payments, newest first (by id), a page at a time.
    async fn list_sandbox_payments(&self, page: ListPage) -> Result<Page<SandboxPayment>>;
}
