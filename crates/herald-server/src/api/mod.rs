//! The HTTP API (axum): the route table, shared state, and the JSON views of domain objects.
//! Handlers live in one file per resource; who may call what is decided in [`auth`]; errors
//! map to HTTP in [`error`]; the OpenAPI document and its docs page are in [`openapi`].
pub(crate) mod apps;
pub mod auth;
mod endpoints;
pub use endpoints::MAX_IN_FLIGHT_LIMIT;
pub use herald_http::error;
pub use herald_http::extract;
mod notifications;
pub mod openapi;
pub(crate) mod ops;
pub(crate) mod sources;
pub(crate) mod views;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::middleware;
use axum::routing::{get, post, MethodRouter};
use axum::{Json, Router};
use herald_engine::TargetPolicy;
use herald_store::Store;
use serde_json::json;

use self::error::ApiError;

pub use self::auth::{authenticate, authenticate_token, hash_token, Principal};
pub use herald_http::MAX_BODY;

/// The most items one page of a list holds (notifications, endpoints, attempts); a larger
/// `limit` is 422. With summaries in notification lists, a page stays small whatever the
/// payloads.
pub const MAX_PAGE_LIMIT: u32 = 100;

/// The most endpoints an app may have; creating one more is 409. A notification has one
/// delivery per matching endpoint (or one for a `notify_url`), so this bounds its deliveries
/// too.
pub const MAX_ENDPOINTS_PER_APP: u32 = 100;

/// A list's `limit` parameter: `default` when absent, 422 outside `1..=MAX_PAGE_LIMIT`.
pub(crate) fn page_limit(limit: Option<u32>, default: u32) -> Result<u32, ApiError> {
    match limit {
        None => Ok(default),
        Some(n) if (1..=MAX_PAGE_LIMIT).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::Invalid(format!(
            "limit must be between 1 and {MAX_PAGE_LIMIT}, not {n}; page with next_cursor"
        ))),
    }
}

/// What every handler shares.
#[derive(Clone)]
pub struct ApiState {
    pub store: Arc<dyn Store>,
    /// SHA-256 of the admin token; requests are compared by hash, the token is not kept.
    pub admin_token_sha256: [u8; 32],
    /// The engine's target policy: URLs it will always refuse are refused at the door.
    pub target_policy: Arc<TargetPolicy>,
    /// Apps as the accept path needs them (the profile and credentials of the encoding
    /// check), so accepting a notification does not read the app from the database each
    /// time. A rotation, change or deletion here drops the entry. A rotation on another
    /// node leaves an older version here, which still encodes the same way; an app deleted
    /// on another node may stay here, but the store refuses its notifications (404).
    pub apps: Arc<AppCache>,
    /// The in-flight limit of an endpoint created without one (`--default-max-in-flight`).
    pub default_max_in_flight: u32,
}

/// A bounded map of apps by id (see [`ApiState::apps`]).
#[derive(Default)]
pub struct AppCache {
    apps: std::sync::Mutex<std::collections::HashMap<String, Arc<herald_store::App>>>,
}

impl AppCache {
    /// Most apps kept; past it the map starts over (a cache, not the truth).
    const MAX: usize = 10_000;

    pub async fn get(
        &self,
        store: &dyn Store,
        id: &str,
    ) -> Result<Option<Arc<herald_store::App>>, herald_store::StoreError> {
        if let Some(app) = self.apps.lock().ok().and_then(|m| m.get(id).cloned()) {
            return Ok(Some(app));
        }
        let Some(app) = store.get_app(id).await?.map(Arc::new) else {
            return Ok(None);
        };
        if let Ok(mut m) = self.apps.lock() {
            if m.len() >= Self::MAX {
                m.clear();
            }
            m.insert(id.to_string(), app.clone());
        }
        Ok(Some(app))
    }

    pub fn forget(&self, id: &str) {
        if let Ok(mut m) = self.apps.lock() {
            m.remove(id);
        }
    }
}

/// Who may call a route (enforced by the layers [`router`] puts on it; see [`auth`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// No credential needed.
    Public,
    /// The admin token, or an API key of the app the request concerns (the handler checks
    /// which app with [`Principal::require_app`]).
    App,
    /// The admin token only.
    Admin,
}

/// Every route of the API: path (axum's syntax, which is OpenAPI's), who may call it, and
/// its handlers. [`router`] builds the router from this table and nothing else, and the
/// OpenAPI drift test walks it, so a new route goes here, with `#[utoipa::path]` on each of
/// its handlers and the handlers listed in [`openapi::ApiDoc`].
pub fn routes() -> Vec<(&'static str, Access, MethodRouter<ApiState>)> {
    use Access::*;
    vec![
        ("/healthz", Public, get(healthz)),
        ("/openapi.json", Public, get(openapi::document)),
        ("/docs", Public, get(openapi::docs_page)),
        ("/v1/apps", Admin, post(apps::create).get(apps::list)),
        (
            "/v1/apps/{app_id}",
            Admin,
            get(apps::get).patch(apps::update).delete(apps::delete),
        ),
        ("/v1/apps/{app_id}/secret/rotate", Admin, post(apps::rotate)),
        (
            "/v1/apps/{app_id}/keys",
            Admin,
            post(apps::create_key).get(apps::list_keys),
        ),
        (
            "/v1/apps/{app_id}/keys/{key_id}",
            Admin,
            axum::routing::delete(apps::delete_key),
        ),
        (
            "/v1/apps/{app_id}/endpoints",
            Admin,
            post(endpoints::create).get(endpoints::list),
        ),
        (
            "/v1/apps/{app_id}/endpoints/{endpoint_id}",
            Admin,
            get(endpoints::get)
                .patch(endpoints::update)
                .delete(endpoints::delete),
        ),
        (
            "/v1/apps/{app_id}/notifications",
            App,
            post(notifications::create).get(notifications::list),
        ),
        (
            "/v1/apps/{app_id}/recover",
            Admin,
            post(notifications::recover),
        ),
        (
            "/v1/apps/{app_id}/endpoints/{endpoint_id}/recover",
            Admin,
            post(notifications::recover_endpoint),
        ),
        (
            "/v1/apps/{app_id}/ops",
            Admin,
            axum::routing::put(ops::set)
                .get(ops::get)
                .delete(ops::delete),
        ),
        ("/v1/notifications/{id}", App, get(notifications::get)),
        ("/v1/deliveries/{id}", App, get(notifications::get_delivery)),
        (
            "/v1/deliveries/{id}/attempts",
            App,
            get(notifications::list_attempts),
        ),
        (
            "/v1/deliveries/{id}/retry",
            Admin,
            post(notifications::retry),
        ),
        (
            "/v1/sources",
            Admin,
            post(sources::create).get(sources::list),
        ),
        (
            "/v1/sources/{id}",
            Admin,
            get(sources::get).delete(sources::delete),
        ),
        (
            "/v1/sources/{id}/notifications",
            Admin,
            get(sources::received),
        ),
        // The inbound gateway's ingest URLs: providers post here (aggregator dialects such as
        // EPay may call with GET and the query), unauthenticated (each request is verified
        // with its source's keys).
        (
            "/in/{source_id}",
            Public,
            get(sources::ingest).post(sources::ingest),
        ),
    ]
}

/// Builds the router from [`routes`]: each route behind the guard its [`Access`] asks for;
/// a wrong method is 405 with `Allow` and the JSON error body; an unknown path is 404.
pub fn router(state: ApiState) -> Router {
    let mut router = Router::new();
    for (path, access, methods) in routes() {
        let methods = match access {
            Access::Public => methods,
            Access::App => methods.route_layer(middleware::from_fn_with_state(
                state.clone(),
                auth::authenticated,
            )),
            Access::Admin => methods
                .route_layer(middleware::from_fn_with_state(
                    state.clone(),
                    auth::admin_only,
                ))
                .route_layer(middleware::from_fn_with_state(
                    state.clone(),
                    auth::authenticated,
                )),
        };
        router = router.route(path, methods);
    }
    router
        .fallback(|| async { ApiError::NotFound("route") })
        .layer(middleware::map_response(error::method_not_allowed_as_json))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// Healthy while the database answers (within 2 s): a node that cannot reach it says so, so
/// a load balancer sends requests elsewhere.
#[utoipa::path(get, path = "/healthz", tag = "health", security(),
    responses(
        (status = 200, description = "The database answers"),
        (status = 503, description = "The database is unreachable"),
    ))]
async fn healthz(State(state): State<ApiState>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let ping = tokio::time::timeout(std::time::Duration::from_secs(2), state.store.ping()).await;
    match ping {
        Ok(Ok(())) => Json(json!({"status": "ok"})).into_response(),
        Ok(Err(e)) => unhealthy(&e.to_string()),
        Err(_) => unhealthy("the database did not answer within 2 s"),
    }
}

fn unhealthy(why: &str) -> axum::response::Response {
    use axum::response::IntoResponse;
    tracing::warn!(reason = why, "health check failed");
    (
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"status": "unavailable", "error": {"code": "unavailable", "message": "the database is unreachable"}})),
    )
        .into_response()
}

/// The admin-only guard, for routers outside [`routes`] (the sandbox's `/v1/sandbox`).
pub(crate) use self::auth::admin_only as require_admin;
