//! The HTTP API (axum): routes, shared state, the admin-token guard, and the JSON views of
//! domain objects. Handlers live in one file per resource; errors map to HTTP in
//! [`error`].
mod apps;
mod endpoints;
pub mod error;
pub(crate) mod extract;
mod notifications;
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

/// What every handler shares.
#[derive(Clone)]
pub struct ApiState {
    pub store: Arc<dyn Store>,
    /// SHA-256 of the admin token; requests are compared by hash, the token is not kept.
    pub admin_token_sha256: [u8; 32],
    /// The engine's target policy: URLs it will always refuse are refused at the door.
    pub target_policy: Arc<TargetPolicy>,
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
        .route("/notifications/{id}", get(notifications::get))
        .route("/deliveries/{id}", get(notifications::get_delivery))
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
