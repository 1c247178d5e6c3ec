//! Herald's storage seam: the traits every driver implements, the data model ([`model`]) and
//! the conformance suite ([`conformance`]) every driver runs unchanged.
//!
//! The store is the source of truth. The engine sees only the claim-based [`Queue`] (see
//! [`queue`] for claims, leases and hints); the API, the sandbox and the settings use their
//! own traits ([`AdminStore`], [`SandboxStore`], [`MetaStore`]). [`Store`] is all four, which
//! is what a driver provides: `herald-store-sqlite` (embedded, one node, the default) and
//! `herald-store-postgres` (several nodes on one database). Nothing outside a driver writes
//! SQL. Drivers seal apps' credentials before writing them and open them when reading (see
//! [`sealing`]).

pub mod conformance;
pub mod health;
pub mod model;
pub mod queue;
pub mod sealing;

use async_trait::async_trait;

pub use health::*;
pub use model::*;
pub use queue::*;
pub use sealing::{SealCensus, Sealer};

/// Storage errors. Caller mistakes (missing rows) are `Ok(None)`/`Ok(false)` on the traits,
/// so what is left here is either a conflict the API reports, or an unexpected failure.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("invalid cursor")]
    BadCursor,
    /// The database refused or failed (I/O, disk full, connection lost). The API answers 503.
    #[error("storage failure: {0}")]
    Backend(String),
    #[error("the store is shut down")]
    Closed,
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Everything a driver provides: the engine's queue plus administration, the sandbox's
/// trades, settings and operations (endpoint health, retention). Implemented for every type that implements the four.
pub trait Store: Queue + AdminStore + SandboxStore + MetaStore + OpsStore {}

impl<T: Queue + AdminStore + SandboxStore + MetaStore + OpsStore> Store for T {}

/// Apps, endpoints, notifications and deliveries as the API administers and queries them.
/// Methods that change state are committed (durably) before they return; what they change
/// for the engines reaches them as [`Hint`]s.
#[async_trait]
pub trait AdminStore: Send + Sync + 'static {
    // Apps.
    async fn create_app(&self, new: NewApp) -> Result<App>;
    async fn get_app(&self, id: &str) -> Result<Option<App>>;
    /// Replaces the app's credentials (key rotation).
    async fn set_app_credentials(
        &self,
        id: &str,
        credentials: herald_protocols::Credentials,
    ) -> Result<Option<App>>;
    /// Opens every app's credentials with the store's keyring and counts how they are held;
    /// an error names the first app whose credentials do not open (a key missing from the
    /// keyring, an altered value). Servers check this at start.
    async fn check_credentials(&self) -> Result<SealCensus>;
    /// Rewrites every app's credentials that are not sealed under the keyring's first key
    /// (plaintext, or an older key) under it, in one transaction (`herald rekey`); nothing
    /// is written when one does not open. Without a key, only counts.
    async fn reseal_credentials(&self) -> Result<SealCensus>;

    // Endpoints. `Err(NotFound("app"))` when the app does not exist.
    async fn create_endpoint(&self, new: NewEndpoint) -> Result<Endpoint>;
    async fn get_endpoint(&self, app_id: &str, id: &str) -> Result<Option<Endpoint>>;
    /// The app's live endpoints, a page at a time, by `created_at` then id.
    async fn list_endpoints(&self, app_id: &str, page: ListEndpoints) -> Result<Page<Endpoint>>;
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
    /// The notification with its payload and deliveries, each delivery with at most its
    /// latest [`DETAIL_ATTEMPTS`] attempts.
    async fn get_notification(&self, id: &str) -> Result<Option<NotificationDetail>>;
    /// The app's notifications, newest first, as summaries: no payloads and no attempts are
    /// read, so the memory a page takes is bounded by its length.
    async fn list_notifications(
        &self,
        app_id: &str,
        filter: ListNotifications,
    ) -> Result<Page<NotificationSummary>>;

    // Deliveries.
    /// The delivery with at most its latest [`DETAIL_ATTEMPTS`] attempts.
    async fn get_delivery(&self, id: &str) -> Result<Option<DeliveryDetail>>;
    /// The delivery's attempts, a page at a time, oldest first. `None` when the delivery does
    /// not exist.
    async fn list_attempts(&self, id: &str, page: ListAttempts) -> Result<Option<Page<Attempt>>>;
    /// Makes the delivery due now (a failed or succeeded one goes back to pending for one more
    /// try). `Err(Conflict)` for a canceled delivery.
    async fn retry_delivery(&self, id: &str, now: Millis) -> Result<Option<Delivery>>;
    /// Puts every failed delivery of the app created at or after `since` back to pending,
    /// due now. Returns how many.
    async fn recover(&self, app_id: &str, since: Millis, now: Millis) -> Result<u64>;
}

/// The payment sandbox's trades (`herald serve --sandbox`).
#[async_trait]
pub trait SandboxStore: Send + Sync + 'static {
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
}

/// Small key-value settings (the admin token's hash), and the database's reachability.
#[async_trait]
pub trait MetaStore: Send + Sync + 'static {
    /// Succeeds when the database answers a trivial query now (for `/healthz`).
    async fn ping(&self) -> Result<()>;
    /// Stops the store: what was queued is committed, later calls fail with
    /// [`StoreError::Closed`], and the database is let go (the SQLite file's lock is
    /// released, so the same process may open it again at once).
    async fn close(&self);
    async fn get_meta(&self, key: &str) -> Result<Option<String>>;
    async fn set_meta(&self, key: &str, value: &str) -> Result<()>;
}
