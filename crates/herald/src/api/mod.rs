//! The HTTP API (axum): routes, shared state, the admin-token guard, and the JSON views of
//! domain objects. Handlers live in one file per resource; errors map to HTTP in
//! [`error`].
mod apps;
mod endpoints;
pub mod error;
pub(crate) mod extract;
mod notifications;
mod ops;
pub(crate) mod views;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use herald_engine::TargetPolicy;
use herald_store::Store;
use serde_json::json;
use sha2::{Digest, Sha256};

use self::error::ApiError;

/// Request bodies larger than this get 413.
pub const MAX_BODY: usize = 1024 * 1024;

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
    /// time. Apps are never deleted; a rotation here drops the entry. A rotation on another
    /// node leaves an older version here, which still encodes the same way.
    pub apps: Arc<AppCache>,
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

/// Builds the router with every route.
pub fn router(state: ApiState) -> Router {
    let v1 = Router::new()
        .route("/apps", post(apps::create))
        .route("/apps/{app_id}", get(apps::get))
        .route("/apps/{app_id}/secret/rotate", post(apps::rotate))
        .route(
            "/apps/{app_id}/endpoints",
            post(endpoints::create).get(endpoints::list),
        )
        .route(
            "/apps/{app_id}/endpoints/{endpoint_id}",
            get(endpoints::get)
                .patch(endpoints::update)
                .delete(endpoints::delete),
        )
        .route(
            "/apps/{app_id}/notifications",
            post(notifications::create).get(notifications::list),
        )
        .route("/apps/{app_id}/recover", post(notifications::recover))
        .route(
            "/apps/{app_id}/ops",
            axum::routing::put(ops::set)
                .get(ops::get)
                .delete(ops::delete),
        )
        .route("/notifications/{id}", get(notifications::get))
        .route("/deliveries/{id}", get(notifications::get_delivery))
        .route(
            "/deliveries/{id}/attempts",
            get(notifications::list_attempts),
        )
        .route("/deliveries/{id}/retry", post(notifications::retry))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin));
    Router::new()
        .route("/healthz", get(healthz))
        .nest("/v1", v1)
        .fallback(|| async { ApiError::NotFound("route") })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// Healthy while the database answers (within 2 s): a node that cannot reach it says so, so
/// a load balancer sends requests elsewhere.
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

pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The admin-token guard (also used by the sandbox's `/v1/sandbox` routes).
pub(crate) async fn require_admin(
    State(state): State<ApiState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    match presented {
        Some(token) if constant_time_eq(&hash_token(token), &state.admin_token_sha256) => {
            Ok(next.run(req).await)
        }
        _ => Err(ApiError::Unauthorized),
    }
}

/// The token of an `Authorization: Bearer <token>` value; the scheme is matched
/// case-insensitively (RFC 9110, section 11.1), and an empty token is none.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    (!token.is_empty()).then_some(token)
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_the_token_must_be_there() {
        for v in ["Bearer t", "bearer t", "BEARER  t ", "bEaReR t"] {
            assert_eq!(bearer_token(v), Some("t"), "{v:?}");
        }
        for v in ["Basic t", "Bearert", "Bearer ", "Bearer", "t", ""] {
            assert_eq!(bearer_token(v), None, "{v:?}");
        }
    }
}
