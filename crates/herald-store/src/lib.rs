//! Herald's storage seam: the traits every driver implements, the data model ([`model`]) and
//! the conformance suite ([`conformance`]) every driver runs unchanged.
//!
//! The store is the source of truth. The engine sees only the claim-based [`Queue`] (see
//! [`queue`] for claims, leases and hints); the API, the sandbox and the settings use their
//! own traits ([`AdminStore`], [`SandboxStore`], [`MetaStore`], [`ApiKeyStore`],
//! [`SourceStore`], [`DashboardStore`], [`OpsStore`], and the dashboard's sign-in state in
//! [`SessionStore`]). [`Store`] is all of them, which is what a driver provides: `herald-store-sqlite` (embedded, one node, the default) and
//! `herald-store-postgres` (several nodes on one database). Nothing outside a driver writes
//! SQL. Drivers seal apps' credentials before writing them and open them when reading (see
//! [`sealing`]).

pub mod conformance;
pub mod dashboard;
pub mod fields;
pub mod health;
pub mod model;
pub mod ops_outbox;
pub mod queue;
pub mod sealing;
pub mod sessions;

use async_trait::async_trait;

pub use dashboard::DashboardStore;
pub use fields::{EndpointUrl, EventType, FieldError, IdempotencyKey, NotifyUrl, OrderKey};
pub use health::*;
pub use herald_protocols::{UnixMillis, UnixSeconds};
pub use model::*;
pub use ops_outbox::*;
pub use queue::*;
pub use sealing::{SealCensus, Sealer};
pub use sessions::SessionStore;

/// Storage errors. Caller mistakes (missing rows) are `Ok(None)`/`Ok(false)` on the traits,
/// so what is left here is either a conflict the API reports, or an unexpected failure.
///
/// A [`StoreError::Backend`] keeps the error it comes from (the driver's rusqlite,
/// tokio-postgres, pool or I/O error) as its [`source`](std::error::Error::source), so code
/// can look at it (a SQLSTATE, an I/O kind) and a report can walk the chain. Its `Display`
/// is `storage failure: ` and the context, which the drivers write as one line an operator
/// can act on (for a driver error, what Herald was doing and the driver's own summary, such
/// as PostgreSQL's message and detail, which `tokio_postgres::Error`'s `Display` leaves
/// out), so printing the error alone still says what went wrong. The source is behind an
/// [`Arc`](std::sync::Arc) because one failed batch answers every operation in it with the
/// same error (hence `Clone`).
#[derive(Clone, Debug)]
pub enum StoreError {
    NotFound(&'static str),
    Conflict(String),
    BadCursor,
    /// The database refused or failed (I/O, disk full, connection lost), or returned
    /// something this Herald cannot read. The API answers 503.
    Backend {
        /// What the store was doing, or what is wrong; free of secrets (no URL password,
        /// no key, no credential).
        context: String,
        /// The driver's own error, when there is one.
        source: Option<BackendSource>,
    },
    Closed,
}

/// The error a [`StoreError::Backend`] comes from.
pub type BackendSource = std::sync::Arc<dyn std::error::Error + Send + Sync + 'static>;

impl StoreError {
    /// A storage failure caused by `source` (a driver, pool or I/O error) while doing
    /// `context`.
    pub fn backend(
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> StoreError {
        StoreError::Backend {
            context: context.into(),
            source: Some(BackendSource::from(source.into())),
        }
    }

    /// A storage failure with no lower error to carry: the database holds something this
    /// Herald cannot read, or the store's own state forbids the operation.
    pub fn backend_msg(context: impl Into<String>) -> StoreError {
        StoreError::Backend {
            context: context.into(),
            source: None,
        }
    }

    /// Whether this is a [`StoreError::Backend`].
    pub fn is_backend(&self) -> bool {
        matches!(self, StoreError::Backend { .. })
    }
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::NotFound(what) => write!(f, "{what} not found"),
            StoreError::Conflict(m) => write!(f, "conflict: {m}"),
            StoreError::BadCursor => f.write_str("invalid cursor"),
            StoreError::Backend { context, .. } => write!(f, "storage failure: {context}"),
            StoreError::Closed => f.write_str("the store is shut down"),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Backend {
                source: Some(source),
                ..
            } => Some(&**source as &(dyn std::error::Error + 'static)),
            _ => None,
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Everything a driver provides: the engine's queue plus administration, the sandbox's
/// trades, settings, app-scoped API keys, the inbound gateway's sources, the dashboard's
/// reads and operations (endpoint health, retention). Implemented for every type that
/// implements the eight.
pub trait Store:
    Queue
    + AdminStore
    + SandboxStore
    + MetaStore
    + ApiKeyStore
    + SourceStore
    + DashboardStore
    + OpsStore
    + SessionStore
{
}

impl<T> Store for T where
    T: Queue
        + AdminStore
        + SandboxStore
        + MetaStore
        + ApiKeyStore
        + SourceStore
        + DashboardStore
        + OpsStore
        + SessionStore
{
}

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
    /// Opens every app's credentials (and every source's keys) with the store's keyring and
    /// counts how they are held; an error names the first app (or source) whose credentials
    /// do not open (a key missing from the keyring, an altered value). Servers check this at
    /// start.
    async fn check_credentials(&self) -> Result<SealCensus>;
    /// Rewrites every app's credentials (and every source's keys) that are not sealed under
    /// the keyring's first key (plaintext, or an older key) under it, in one transaction
    /// (`herald rekey`); nothing is written when one does not open. Without a key, only
    /// counts.
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
        now: UnixMillis,
    ) -> Result<Option<Endpoint>>;
    /// Deletes the endpoint and cancels its pending deliveries. False when it did not exist.
    async fn delete_endpoint(&self, app_id: &str, id: &str, now: UnixMillis) -> Result<bool>;

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
    async fn retry_delivery(&self, id: &str, now: UnixMillis) -> Result<Option<Delivery>>;
    /// Puts every failed delivery of the app created at or after `since` back to pending,
    /// due now. Returns how many.
    async fn recover(&self, app_id: &str, since: UnixMillis, now: UnixMillis) -> Result<u64>;

    // -------------------------------------------------------------------------------------
    // Apps: listing, changing and deleting them. A deleted app is gone for every read and
    // write above (`get_app` is `None`, creating its endpoints or notifications is
    // `Err(NotFound("app"))`, a retry of its deliveries is `Err(Conflict)`, recover finds
    // nothing); its notifications, deliveries and attempts stay readable by id.

    /// The live apps, a page at a time, by id (ULIDs: creation order to the millisecond).
    async fn list_apps(&self, page: ListApps) -> Result<Page<App>>;
    /// Changes the app's name, retry policy or ack rule (see [`AppPatch`]); the engines pick
    /// up the new settings for the deliveries they hold. `None` when there is no such live
    /// app.
    async fn update_app(&self, id: &str, patch: AppPatch) -> Result<Option<App>>;
    /// Deletes the app in one transaction: it is marked deleted, its endpoints are deleted,
    /// its API keys revoked, and every pending delivery of it canceled (final: never
    /// attempted again; an outcome reported later by a node that held one is stale and
    /// changes nothing). Returns how many deliveries were canceled, `None` when there is no
    /// such live app.
    async fn delete_app(&self, id: &str, now: UnixMillis) -> Result<Option<u64>>;

    // -------------------------------------------------------------------------------------
    // Recovering one endpoint: like `recover`, for the deliveries to `endpoint_id` alone
    // (created at or after `since`). `None` when the app has no such live endpoint.

    async fn recover_endpoint(
        &self,
        app_id: &str,
        endpoint_id: &str,
        since: UnixMillis,
        now: UnixMillis,
    ) -> Result<Option<u64>>;
}

/// API keys scoped to one app (`hk_...`). The store keeps only the SHA-256 of a key (hex) and
/// a short prefix to recognise it by; the key itself is shown once, by the API, and never
/// stored.
#[async_trait]
pub trait ApiKeyStore: Send + Sync + 'static {
    /// Stores a key for a live app. `Err(NotFound("app"))` when there is none;
    /// `Err(Conflict)` when the hash is already stored.
    async fn create_api_key(&self, new: NewApiKey) -> Result<ApiKey>;
    /// The app's keys, oldest first. The API bounds how many an app has.
    async fn list_api_keys(&self, app_id: &str) -> Result<Vec<ApiKey>>;
    /// Revokes (deletes) the app's key. False when the app has no such key.
    async fn delete_api_key(&self, app_id: &str, id: &str) -> Result<bool>;
    /// The key whose SHA-256 (hex) this is, when it exists and its app is live.
    async fn find_api_key(&self, key_sha256: &str) -> Result<Option<ApiKey>>;
    /// Records that the key was used at `now` (the API calls this at most about once a
    /// minute per key, so using a key costs no write per request).
    async fn touch_api_key(&self, id: &str, now: UnixMillis) -> Result<()>;
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

/// The inbound gateway's sources (see [`Source`]). What a source receives is stored with
/// [`AdminStore::create_notification`] on its app (idempotency key: the provider's notify
/// id; order key: the `out_trade_no`), so a received notification and its forward commit
/// together and copies dedupe there.
#[async_trait]
pub trait SourceStore: Send + Sync + 'static {
    /// Creates the internal app, its destination endpoint and the source in one
    /// transaction (all or nothing). The keys are sealed under the store's keyring.
    async fn create_source(&self, new: NewSource) -> Result<Source>;
    /// A live (not deleted) source.
    async fn get_source(&self, id: &str) -> Result<Option<Source>>;
    /// Live sources, a page at a time, by `created_at` then id.
    async fn list_sources(&self, page: ListSources) -> Result<Page<Source>>;
    /// Marks the source deleted (its ingest URL stops accepting) and deletes its destination
    /// endpoint, canceling pending forwards. False when it did not exist (or was deleted).
    async fn delete_source(&self, id: &str, now: UnixMillis) -> Result<bool>;
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
    /// Sets `key` only when it has no value yet; true when this call set it (the first of
    /// several nodes starting at once wins, the others read its value).
    async fn set_meta_if_absent(&self, key: &str, value: &str) -> Result<bool>;
}
