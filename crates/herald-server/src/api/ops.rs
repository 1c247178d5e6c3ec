//! `/v1/apps/{app_id}/ops`: where an app's operational notifications go (endpoint breaker
//! opened, recovered, disabled). `PUT` sets the URL, the Standard Webhooks secret they are
//! signed with (generated unless given; shown only in that response) and optionally their
//! retry schedule (the Standard Webhooks one by default); `GET` shows the URL, `DELETE`
//! stops them and cancels those still pending. They are durable: the store commits each
//! with the breaker transition that causes it, and the engine delivers it like any
//! notification (see `herald_store::ops_outbox`).
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use herald_protocols::standard_webhooks::{self, Keys, SigningSecret};
use herald_protocols::Credentials;
use herald_store::OpsTarget;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::{ApiError, ErrorBody};
use super::extract::JsonBody;
use super::{views, ApiState};
use crate::clock::now_ms;

/// Where an app's operational notifications go, and the secret that signs them.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetOps {
    url: String,
    /// A `whsec_` secret; generated when absent.
    #[serde(default)]
    secret: Option<String>,
    /// The retry schedule, in the form an app's `retry` takes; absent: `standard`
    /// (5 s, 5 m, 30 m, 2 h, 5 h, 10 h, 10 h).
    #[serde(default)]
    retry: Option<Value>,
}

#[utoipa::path(put, path = "/v1/apps/{app_id}/ops", tag = "apps",
    params(("app_id" = String, Path)),
    request_body = SetOps,
    responses(
        (status = 200, description = "Set: the URL (password masked), the secret (shown in this response only) and the events sent"),
        (status = 404, description = "No such app", body = ErrorBody),
        (status = 422, description = "Invalid URL or secret", body = ErrorBody),
    ))]
pub async fn set(
    State(state): State<ApiState>,
    Path(app_id): Path<String>,
    JsonBody(req): JsonBody<SetOps>,
) -> Result<Json<Value>, ApiError> {
    let url = views::parse_target(&state.target_policy, "url", &req.url)?.into_string();
    let secret = match req.secret {
        Some(s) => match SigningSecret::parse_for_signing(&s) {
            Ok(SigningSecret::Hmac(_)) => s,
            _ => {
                return Err(ApiError::Invalid(
                    "secret must be a Standard Webhooks HMAC secret (whsec_ + base64)".into(),
                ))
            }
        },
        None => standard_webhooks::generate_hmac_secret(),
    };
    let retry = req.retry.as_ref().map(views::parse_retry).transpose()?;
    let target = OpsTarget {
        url: url.clone(),
        credentials: Credentials::StandardWebhooks(Keys::single(secret.clone())),
        retry,
    };
    if !state
        .store
        .set_app_ops(&app_id, Some(target), now_ms())
        .await?
    {
        return Err(ApiError::NotFound("app"));
    }
    Ok(Json(json!({
        "url": views::masked_url(&url),
        "secret": secret,
        "events": herald_store::OPS_EVENT_TYPES,
    })))
}

#[utoipa::path(get, path = "/v1/apps/{app_id}/ops", tag = "apps",
    params(("app_id" = String, Path)),
    responses(
        (status = 200, description = "The URL operational notifications go to (password masked)"),
        (status = 404, description = "No such app, or no ops target", body = ErrorBody),
    ))]
pub async fn get(
    State(state): State<ApiState>,
    Path(app_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    match state.store.get_app_ops(&app_id).await? {
        Some(t) => Ok(Json(json!({"url": views::masked_url(&t.url)}))),
        None => Err(ApiError::NotFound("ops target")),
    }
}

#[utoipa::path(delete, path = "/v1/apps/{app_id}/ops", tag = "apps",
    params(("app_id" = String, Path)),
    responses(
        (status = 204, description = "Operational notifications stopped (those still pending are canceled)"),
        (status = 404, description = "No such app", body = ErrorBody),
    ))]
pub async fn delete(
    State(state): State<ApiState>,
    Path(app_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if !state.store.set_app_ops(&app_id, None, now_ms()).await? {
        return Err(ApiError::NotFound("app"));
    }
    Ok(StatusCode::NO_CONTENT)
}
