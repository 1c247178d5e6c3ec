//! Herald's storage: the [`Store`] trait, its embedded SQLite driver ([`sqlite`]) and the
//! conformance suite ([`conformance`]) that every driver runs unchanged.
//!
//! The store is the source of truth and the sequencer: every change goes through it, and
//! after each commit it tells the engine what became attemptable, in commit order, on one
//! event stream ([`StoreEvent`]). That single ordered stream is what lets the engine keep a
//! bounded in-memory window of due work without races against concurrent writes. Nothing
//! outside a driver writes SQL.

pub mod conformance;
pub mod inbox;
pub mod model;
pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::mpsc;

pub use model::*;

/// Storage errors. Caller mistakes (missing rows) are `Ok(None)`/`Ok(false)` on the trait,
/// so what is left here is either a conflict the API reports, or an unexpected failure.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("invalid cursor")]
    BadCursor,
    #[error("storage failure: {0}")]
    Backend(String),
    #[error("the store is shut down")]
    Closed,
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The receiving end of a store's event stream (see [`StoreEvent`]).
pub type EventReceiver = mpsc::UnboundedReceiver<StoreEvent>;

/// The storage operations Herald needs. Methods that change state are committed (durably)
/// before they return; their effect on due work reaches the engine as [`StoreEvent`]s.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Takes the event stream. There is one stream per store; a second call returns `None`.
    fn take_events(&self) -> Option<EventReceiver>;

    // Apps.
    async fn create_app(&self, new: NewApp) -> Result<App>;
    async fn get_app(&self, id: &str) -> Result<Option<App>>;
    /// Replaces the app's credentials (key rotation).
    async fn set_app_credentials(
        &self,
        id: &str,
        credentials: herald_protocols::Credentials,
    ) -> Result<Option<App>>;

    // Endpoints. `Err(NotFound("app"))` when the app does not exist.
    async fn create_endpoint(&self, new: NewEndpoint) -> Result<Endpoint>;
    async fn get_endpoint(&self, app_id: &str, id: &str) -> Result<Option<Endpoint>>;
    async fn list_endpoints(&self, app_id: &str) -> Result<Vec<Endpoint>>;
    async fn update_endpoint(
        &self,
        app_id: &str,
        id: &str,
        patch: EndpointPatch,
        now: Millis,
    ) -> Result<Option<Endpoint>>;
    /// Deletes the endpoint and cancels its pending deliveries. False when it did not exist.
    async fn delete_endpoint(&self, app_id: &str, id: &str, now: Millis) -> Result<bool>;

    // Notifications.
    /// Stores a notification and its deliveries (to `notify_url`, or to every enabled
    /// endpoint whose filter matches) in one transaction. An idempotency key already used by
    /// the app returns the first notification with `replayed = true` and creates nothing.
    /// `Err(NotFound("app"))` when the app does not exist.
    async fn create_notification(&self, new: NewNotification) -> Result<CreatedNotification>;
    async fn get_notification(&self, id: &str) -> Result<Option<NotificationDetail>>;
    async fn list_notifications(
        &self,
        app_id: &str,
        filter: ListNotifications,
    ) -> Result<Page<NotificationDetail>>;

    // Deliveries.
    async fn get_delivery(&self, id: &str) -> Result<Option<DeliveryDetail>>;
    /// Makes the delivery due now (a failed or succeeded one goes back to pending for one more
    /// try). `Err(Conflict)` for a canceled delivery.
    async fn retry_delivery(&self, id: &str, now: Millis) -> Result<Option<Delivery>>;
    /// Puts every failed delivery of the app created at or after `since` back to pending,
    /// due now. Returns how many.
    async fn recover(&self, app_id: &str, since: Millis, now: Millis) -> Result<u64>;

    // The engine's side.
    /// Queues an attempt's outcome; the result arrives as `AttemptRecorded` (or
    /// `AttemptNotRecorded`). Waits only when the writer's queue is full.
    async fn record_attempt(&self, report: AttemptReport) -> Result<()>;
    /// Queues a load; the answer arrives as `Loaded` (or `LoadFailed`), in commit order.
    async fn request_load(&self, request: LoadRequest) -> Result<()>;
    /// Queues moving pending jobs (not in flight) to a later time without an attempt: the
    /// engine parks the backlog of a destination that cannot keep up, so memory stays
    /// bounded. The answer arrives as `Postponed`.
    async fn postpone(&self, jobs: Vec<Arc<Job>>, next_at: Millis) -> Result<()>;

    // The payment sandbox (`herald serve --sandbox`).
    /// Inserts or updates a sandbox payment and enqueues its notifications in one
    /// transaction (see [`SandboxWrite`]). `Err(NotFound("app"))` when a notification's app
    /// does not exist; nothing is written then.
    async fn write_sandbox_payment(&self, write: SandboxWrite) -> Result<SandboxWritten>;
    async fn get_sandbox_payment(&self, id: &str) -> Result<Option<SandboxPayment>>;
    async fn find_sandbox_payment(
        &self,
        app_id: &str,
        out_trade_no: &str,
    ) -> Result<Option<SandboxPayment>>;
    /// The payments that have a deadline, earliest deadline first, at most `limit`.
    async fn sandbox_deadlines(&self, limit: u32) -> Result<Vec<SandboxPayment>>;

    // Small key-value settings (the admin token's hash).
    async fn get_meta(&self, key: &str) -> Result<Option<String>>;
    async fn set_meta(&self, key: &str, value: &str) -> Result<()>;
}
