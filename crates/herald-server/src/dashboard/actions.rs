//! The dashboard's actions (POST, behind the session guard's CSRF and Origin checks): resend
//! a delivery, recover an app's (or one endpoint's) failed deliveries since a time, enable or
//! disable an endpoint, rotate an app's signing secret, and the API-key button. Each makes the same
//! store call as the JSON API's counterpart, then redirects to the page it came from with a
//! fixed message. Each is admin-only, as its API route is: an API key's session gets 403.
use std::fmt::Write as _;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;
use herald_store::EndpointPatch;

use super::html::{esc, page, parse_datetime, url_part};
use super::pages::nav;
use super::{html, redirect, Authed, DashState, Fail, FormData};
use crate::clock::now_ms;

/// `POST /actions/deliveries/{id}/resend`: the delivery is due again now (a failed or
/// succeeded one goes back to pending for one more try).
pub async fn resend(
    State(state): State<DashState>,
    Extension(authed): Extension<Authed>,
    Path(id): Path<String>,
) -> Result<Response, Fail> {
    authed.require_admin()?;
    let d = state
        .api
        .store
        .retry_delivery(&id, now_ms())
        .await?
        .ok_or_else(|| Fail::new(StatusCode::NOT_FOUND, "No such delivery."))?;
    tracing::info!(delivery = %d.id, principal = %super::auth::label(&authed.session.principal), "dashboard: delivery resent");
    Ok(redirect(&format!(
        "/notifications/{}?done=resent#{}",
        url_part(&d.notification_id),
        url_part(&d.id)
    )))
}

/// `POST /actions/apps/{app_id}/recover` `since=YYYY-MM-DDTHH:MM` (UTC): every failed
/// delivery of the app created since then goes back to pending.
pub async fn recover(
    State(state): State<DashState>,
    Extension(authed): Extension<Authed>,
    Extension(form): Extension<FormData>,
    Path(app_id): Path<String>,
) -> Result<Response, Fail> {
    authed.require_admin()?;
    let since = form.get("since").and_then(parse_datetime).ok_or_else(|| {
        Fail::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Give the time to recover from (YYYY-MM-DDTHH:MM, UTC). Nothing was changed.",
        )
    })?;
    let store = &state.api.store;
    store
        .get_app(&app_id)
        .await?
        .ok_or_else(|| Fail::new(StatusCode::NOT_FOUND, "No such app."))?;
    let n = store.recover(&app_id, since, now_ms()).await?;
    tracing::info!(app = %app_id, requeued = n, principal = %super::auth::label(&authed.session.principal), "dashboard: failed deliveries recovered");
    Ok(redirect(&format!(
        "/apps/{}?done=recovered",
        url_part(&app_id)
    )))
}

/// `POST /actions/apps/{app_id}/endpoints/{endpoint_id}/recover` `since=YYYY-MM-DDTHH:MM`
/// (UTC): every failed delivery to that endpoint created since then goes back to pending.
pub async fn recover_endpoint(
    State(state): State<DashState>,
    Extension(authed): Extension<Authed>,
    Extension(form): Extension<FormData>,
    Path((app_id, endpoint_id)): Path<(String, String)>,
) -> Result<Response, Fail> {
    authed.require_admin()?;
    let since = form.get("since").and_then(parse_datetime).ok_or_else(|| {
        Fail::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Give the time to recover from (YYYY-MM-DDTHH:MM, UTC). Nothing was changed.",
        )
    })?;
    let n = state
        .api
        .store
        .recover_endpoint(&app_id, &endpoint_id, since, now_ms())
        .await?
        .ok_or_else(|| Fail::new(StatusCode::NOT_FOUND, "No such endpoint."))?;
    tracing::info!(app = %app_id, endpoint = %endpoint_id, requeued = n, principal = %super::auth::label(&authed.session.principal), "dashboard: an endpoint's failed deliveries recovered");
    Ok(redirect(&format!(
        "/apps/{}/endpoints/{}?done=recovered-endpoint",
        url_part(&app_id),
        url_part(&endpoint_id)
    )))
}

/// `POST /actions/apps/{app_id}/endpoints/{endpoint_id}/enabled` `enabled=true|false`.
pub async fn set_enabled(
    State(state): State<DashState>,
    Extension(authed): Extension<Authed>,
    Extension(form): Extension<FormData>,
    Path((app_id, endpoint_id)): Path<(String, String)>,
) -> Result<Response, Fail> {
    authed.require_admin()?;
    let enabled = match form.get("enabled") {
        Some("true") => true,
        Some("false") => false,
        _ => {
            return Err(Fail::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "enabled must be true or false. Nothing was changed.",
            ))
        }
    };
    let ep = state
        .api
        .store
        .update_endpoint(
            &app_id,
            &endpoint_id,
            EndpointPatch {
                enabled: Some(enabled),
                ..Default::default()
            },
            now_ms(),
        )
        .await?
        .ok_or_else(|| Fail::new(StatusCode::NOT_FOUND, "No such endpoint."))?;
    tracing::info!(endpoint = %ep.id, enabled, principal = %super::auth::label(&authed.session.principal), "dashboard: endpoint switched");
    Ok(redirect(&format!(
        "/apps/{}?done={}",
        url_part(&app_id),
        if enabled { "enabled" } else { "disabled" }
    )))
}

/// `POST /actions/apps/{app_id}/rotate`: the JSON API's rotation (default grace period);
/// the new public material and any secret generated are shown once, on this response only.
pub async fn rotate(
    State(state): State<DashState>,
    Extension(authed): Extension<Authed>,
    Path(app_id): Path<String>,
) -> Result<Response, Fail> {
    authed.require_admin()?;
    let axum::Json(view) =
        crate::api::apps::rotate(State(state.api.clone()), Path(app_id.clone()), Bytes::new())
            .await?;
    let pretty = serde_json::to_string_pretty(&view).unwrap_or_default();
    let mut b = format!(
        "<h1>Secret rotated</h1><div class=\"flash\">The app signs with its new credentials from now on.</div>\
         <div class=\"panel\"><p>Give the receiver what it needs to verify the new signatures. \
         A generated secret is shown <strong>only on this page</strong>; it is not kept in a readable form anywhere else.</p>\
         <pre>{}</pre></div>",
        esc(&pretty)
    );
    let _ = write!(
        b,
        "<p><a href=\"/apps/{}\">Back to the app</a></p>",
        url_part(&app_id)
    );
    Ok(html(
        StatusCode::OK,
        page("Secret rotated", Some(nav(&state, &authed, "/apps")), &b),
    ))
}

/// `POST /actions/apps/{app_id}/api-keys`: the JSON API's key creation; the key is shown
/// once, on this response only (Herald keeps its SHA-256).
pub async fn create_api_key(
    State(state): State<DashState>,
    Extension(authed): Extension<Authed>,
    Path(app_id): Path<String>,
) -> Result<Response, Fail> {
    authed.require_admin()?;
    let (_, axum::Json(created)) =
        crate::api::apps::create_key(State(state.api.clone()), Path(app_id.clone())).await?;
    let mut b = format!(
        "<h1>API key created</h1><div class=\"flash\">Give this key to the app's producers: it \
         sends this app's notifications and reads its notifications and deliveries, nothing else.</div>\
         <div class=\"panel\"><p>The key is shown <strong>only on this page</strong>; Herald keeps \
         only its hash. Revoke it with <code>DELETE /v1/apps/{{app}}/keys/{}</code>.</p>\
         <pre>{}</pre></div>",
        esc(&created.api_key.id),
        esc(&created.key)
    );
    let _ = write!(
        b,
        "<p><a href=\"/apps/{}\">Back to the app</a></p>",
        url_part(&app_id)
    );
    Ok(html(
        StatusCode::CREATED,
        page("API key created", Some(nav(&state, &authed, "/apps")), &b),
    ))
}
