//! Notifications and deliveries: accept a notification (committed before the 202), read it
//! with its deliveries and their latest attempts, list an app's notifications (summaries: no
//! payloads, no attempts), page through a delivery's attempts, retry a delivery, recover
//! failed deliveries.
//!
//! Accepting refuses with 422 what could never be sent: a payload the app's profile cannot
//! encode (the profile's real encoder runs on it) and a `notify_url` the target policy
//! always refuses. An idempotency key already used answers the first notification only
//! when the request is the same (event type, payload bytes, notify_url, order_key), else
//! 409.
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use herald_protocols::{OutgoingNotification, ProfileError};
use herald_store::{
    DeliveryStatus, EventType, IdempotencyKey, ListAttempts, ListNotifications, NewNotification,
    Notification, NotifyUrl, OrderKey,
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;

use super::auth::Principal;
use super::error::{ApiError, ErrorBody};
use super::extract::JsonBody;
use super::views::{
    AcceptedView, AttemptView, DeliverySummaryView, DeliveryView, NotificationSummaryView,
    NotificationView, Page,
};
use super::{views, ApiState};
use crate::clock::now_ms;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateNotification {
    /// Not blank, at most 256 characters, no control characters.
    #[schema(value_type = String)]
    event_type: EventType,
    /// A JSON object, kept byte for byte: it is what gets signed and sent.
    #[schema(value_type = Object)]
    payload: Box<RawValue>,
    /// An absolute http(s) URL with a host, at most 2048 bytes.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    notify_url: Option<NotifyUrl>,
    /// Not blank, at most 256 characters, no control characters.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    idempotency_key: Option<IdempotencyKey>,
    /// Serializes deliveries that share it: not blank, at most 256 characters, no control
    /// characters.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    order_key: Option<OrderKey>,
}

#[utoipa::path(post, path = "/v1/apps/{app_id}/notifications", tag = "notifications",
    params(
        ("app_id" = String, Path),
        ("Idempotency-Key" = Option<String>, Header, description = "Replays the first notification made with this key"),
    ),
    request_body = CreateNotification,
    responses(
        (status = 202, description = "Committed (durably) with its deliveries", body = AcceptedView),
        (status = 403, description = "An API key of another app", body = ErrorBody),
        (status = 404, description = "No such app", body = ErrorBody),
        (status = 409, description = "The idempotency key was used for a different request", body = ErrorBody),
        (status = 422, description = "Invalid, or the profile cannot send it", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn create(
    State(state): State<ApiState>,
    principal: Principal,
    Path(app_id): Path<String>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<CreateNotification>,
) -> Result<Response, ApiError> {
    principal.require_app(&app_id)?;
    // The body's fields were parsed into their types as it was read (422 with the field's
    // message otherwise); what is left here is policy.
    let event_type = req.event_type;
    if event_type == herald_engine::raw::RAW_EVENT_TYPE {
        return Err(ApiError::Invalid(format!(
            "event_type {:?} is reserved for the gateway's raw forwards",
            event_type.as_str()
        )));
    }
    if !req.payload.get().starts_with('{') {
        return Err(ApiError::Invalid("payload must be a JSON object".into()));
    }
    let header_key = match headers.get("idempotency-key") {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| {
                    ApiError::Invalid("the Idempotency-Key header must be visible ASCII".into())
                })?
                .parse::<IdempotencyKey>()?,
        ),
        None => None,
    };
    let idempotency_key = match (req.idempotency_key, header_key) {
        (Some(b), Some(h)) if b != h => {
            return Err(ApiError::Invalid(
                "idempotency_key in the body and the Idempotency-Key header differ".into(),
            ))
        }
        (Some(k), _) | (None, Some(k)) => Some(k),
        (None, None) => None,
    };
    let notify_url = req.notify_url;
    if let Some(url) = &notify_url {
        views::permit_notify_url(&state.target_policy, url)?;
    }
    let order_key = req.order_key;
    let now = now_ms();
    let app = state
        .apps
        .get(state.store.as_ref(), &app_id)
        .await?
        .ok_or(ApiError::NotFound("app"))?;
    // The profile's own encoder, as the engine will run it: what fails here would fail on
    // every attempt.
    let encoded = app.profile.encode(
        &app.credentials,
        &OutgoingNotification {
            notify_id: &app.profile.new_notify_id(),
            event_type: &event_type,
            payload: req.payload.get().as_bytes(),
            timestamp: now.to_seconds(),
            created_at: now.to_seconds(),
        },
    );
    match encoded {
        Ok(_) => {}
        Err(ProfileError::Encode(e)) => {
            return Err(ApiError::Invalid(format!(
                "the {} profile cannot send this notification: {e}",
                app.profile.name()
            )))
        }
        Err(e @ (ProfileError::Sign(_) | ProfileError::SigningSecret(_))) => {
            return Err(ApiError::Invalid(format!(
                "the {} profile cannot send this notification: {e}",
                app.profile.name()
            )))
        }
        Err(e) => return Err(ApiError::Internal(format!("encoding check: {e}"))),
    }
    let new = NewNotification {
        app_id,
        event_type,
        payload: req.payload.get().to_string(),
        notify_url,
        idempotency_key,
        order_key,
        now,
    };
    let request = (
        new.event_type.clone(),
        new.payload.clone(),
        new.notify_url.clone(),
        new.order_key.clone(),
    );
    let created = state.store.create_notification(new).await?;
    if created.replayed && !same_request(&created.notification, &request) {
        return Err(ApiError::Conflict(format!(
            "this Idempotency-Key was already used for a different request (notification {}); \
             a key may only be reused to retry the same event_type, payload, notify_url and order_key",
            created.notification.id
        )));
    }
    let body = AcceptedView {
        id: created.notification.id.clone(),
        event_type: created.notification.event_type.to_string(),
        created_at: views::rfc3339(created.notification.created_at),
        deliveries: created
            .deliveries
            .iter()
            .map(views::delivery_summary)
            .collect(),
    };
    let mut resp = (StatusCode::ACCEPTED, Json(body)).into_response();
    if created.replayed {
        resp.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(resp)
}

/// What makes two requests the same: event type, payload bytes, notify_url, order_key.
type RequestShape = (EventType, String, Option<NotifyUrl>, Option<OrderKey>);

/// True when a stored notification was made from the same request (event type, payload
/// bytes, notify_url, order_key).
fn same_request(n: &Notification, req: &RequestShape) -> bool {
    let (event_type, payload, notify_url, order_key) = req;
    n.event_type == *event_type
        && n.payload.as_bytes() == payload.as_bytes()
        && n.notify_url == *notify_url
        && n.order_key == *order_key
}

#[utoipa::path(get, path = "/v1/notifications/{id}", tag = "notifications",
    params(("id" = String, Path)),
    responses(
        (status = 200, description = "The notification, its payload and deliveries with their latest attempts", body = NotificationView),
        (status = 403, description = "An API key of another app", body = ErrorBody),
        (status = 404, description = "No such notification", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn get(
    State(state): State<ApiState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<NotificationView>, ApiError> {
    let n = state
        .store
        .get_notification(&id)
        .await?
        .ok_or(ApiError::NotFound("notification"))?;
    principal.require_app(&n.notification.app_id)?;
    Ok(Json(views::notification(&n)))
}

#[utoipa::path(get, path = "/v1/deliveries/{id}", tag = "deliveries",
    params(("id" = String, Path)),
    responses(
        (status = 200, description = "The delivery with its latest attempts", body = DeliveryView),
        (status = 403, description = "An API key of another app", body = ErrorBody),
        (status = 404, description = "No such delivery", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn get_delivery(
    State(state): State<ApiState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<DeliveryView>, ApiError> {
    let d = state
        .store
        .get_delivery(&id)
        .await?
        .ok_or(ApiError::NotFound("delivery"))?;
    principal.require_app(&d.delivery.app_id)?;
    Ok(Json(views::delivery(&d)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    limit: Option<u32>,
    #[serde(default)]
    cursor: Option<String>,
}

impl ListQuery {
    /// The store's list parameters: a known status, a limit in range (default 50), the
    /// cursor as given. Shared by an app's list and a source's received list.
    pub(crate) fn params(self) -> Result<ListNotifications, ApiError> {
        let status = self
            .status
            .as_deref()
            .map(|s| {
                DeliveryStatus::parse(s).ok_or_else(|| {
                    ApiError::Invalid(format!(
                        "status must be pending, succeeded, failed or canceled, not {s:?}"
                    ))
                })
            })
            .transpose()?;
        Ok(ListNotifications {
            status,
            limit: super::page_limit(self.limit, 50)?,
            cursor: self.cursor,
        })
    }
}

#[utoipa::path(get, path = "/v1/apps/{app_id}/notifications", tag = "notifications",
    params(
        ("app_id" = String, Path),
        ("status" = Option<String>, Query, description = "pending, succeeded, failed or canceled"),
        ("limit" = Option<u32>, Query, description = "1 to 100, default 50"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "The app's notifications, newest first, as summaries", body = Page<NotificationSummaryView>),
        (status = 403, description = "An API key of another app", body = ErrorBody),
        (status = 404, description = "No such app", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn list(
    State(state): State<ApiState>,
    principal: Principal,
    Path(app_id): Path<String>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Page<NotificationSummaryView>>, ApiError> {
    principal.require_app(&app_id)?;
    let Query(q) = query.map_err(|e| ApiError::Invalid(e.body_text()))?;
    let params = q.params()?;
    state
        .store
        .get_app(&app_id)
        .await?
        .ok_or(ApiError::NotFound("app"))?;
    let page = state.store.list_notifications(&app_id, params).await?;
    Ok(Json(Page {
        data: page.items.iter().map(views::notification_summary).collect(),
        next_cursor: page.next_cursor,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    #[serde(default)]
    limit: Option<u32>,
    #[serde(default)]
    cursor: Option<String>,
}

/// A page of a delivery's attempts.
#[derive(Serialize, ToSchema)]
pub struct AttemptPage {
    pub data: Vec<AttemptView>,
    /// How many attempts the delivery has in all.
    pub attempt_count: u32,
    pub next_cursor: Option<String>,
}

/// `GET /v1/deliveries/{id}/attempts`: every attempt, oldest first, a page at a time.
#[utoipa::path(get, path = "/v1/deliveries/{id}/attempts", tag = "deliveries",
    params(
        ("id" = String, Path),
        ("limit" = Option<u32>, Query, description = "1 to 100, default 50"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "Every attempt, oldest first", body = AttemptPage),
        (status = 403, description = "An API key of another app", body = ErrorBody),
        (status = 404, description = "No such delivery", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn list_attempts(
    State(state): State<ApiState>,
    principal: Principal,
    Path(id): Path<String>,
    query: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<AttemptPage>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::Invalid(e.body_text()))?;
    let limit = super::page_limit(q.limit, 50)?;
    let d = state
        .store
        .get_delivery(&id)
        .await?
        .ok_or(ApiError::NotFound("delivery"))?;
    principal.require_app(&d.delivery.app_id)?;
    let page = state
        .store
        .list_attempts(
            &id,
            ListAttempts {
                limit,
                cursor: q.cursor,
            },
        )
        .await?
        .ok_or(ApiError::NotFound("delivery"))?;
    let url = &d.delivery.url;
    Ok(Json(AttemptPage {
        data: page.items.iter().map(|a| views::attempt(a, url)).collect(),
        attempt_count: d.delivery.attempts,
        next_cursor: page.next_cursor,
    }))
}

#[utoipa::path(post, path = "/v1/deliveries/{id}/retry", tag = "deliveries",
    params(("id" = String, Path)),
    responses(
        (status = 202, description = "Due now", body = DeliverySummaryView),
        (status = 404, description = "No such delivery", body = ErrorBody),
        (status = 409, description = "Canceled, its endpoint or app deleted, or a later delivery of its order key is pending", body = ErrorBody),
    ))]
pub async fn retry(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<DeliverySummaryView>), ApiError> {
    let d = state
        .store
        .retry_delivery(&id, now_ms())
        .await?
        .ok_or(ApiError::NotFound("delivery"))?;
    Ok((StatusCode::ACCEPTED, Json(views::delivery_summary(&d))))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Recover {
    /// RFC 3339: failed deliveries created at or after this time go back to pending.
    since: String,
}

/// How many deliveries a recover put back to pending.
#[derive(Serialize, ToSchema)]
pub struct Recovered {
    pub requeued: u64,
}

#[utoipa::path(post, path = "/v1/apps/{app_id}/recover", tag = "deliveries",
    params(("app_id" = String, Path)),
    request_body = Recover,
    responses(
        (status = 202, description = "Requeued", body = Recovered),
        (status = 404, description = "No such app", body = ErrorBody),
    ))]
pub async fn recover(
    State(state): State<ApiState>,
    Path(app_id): Path<String>,
    JsonBody(req): JsonBody<Recover>,
) -> Result<(StatusCode, Json<Recovered>), ApiError> {
    let since = views::parse_rfc3339(&req.since)?;
    state
        .store
        .get_app(&app_id)
        .await?
        .ok_or(ApiError::NotFound("app"))?;
    let n = state.store.recover(&app_id, since, now_ms()).await?;
    Ok((StatusCode::ACCEPTED, Json(Recovered { requeued: n })))
}

#[utoipa::path(post, path = "/v1/apps/{app_id}/endpoints/{endpoint_id}/recover", tag = "deliveries",
    params(("app_id" = String, Path), ("endpoint_id" = String, Path)),
    request_body = Recover,
    responses(
        (status = 202, description = "The endpoint's failed deliveries created since then are pending again", body = Recovered),
        (status = 404, description = "No such app or endpoint", body = ErrorBody),
        (status = 422, description = "`since` is not an RFC 3339 time", body = ErrorBody),
    ))]
pub async fn recover_endpoint(
    State(state): State<ApiState>,
    Path((app_id, endpoint_id)): Path<(String, String)>,
    JsonBody(req): JsonBody<Recover>,
) -> Result<(StatusCode, Json<Recovered>), ApiError> {
    let since = views::parse_rfc3339(&req.since)?;
    let n = state
        .store
        .recover_endpoint(&app_id, &endpoint_id, since, now_ms())
        .await?
        .ok_or(ApiError::NotFound("endpoint"))?;
    Ok((StatusCode::ACCEPTED, Json(Recovered { requeued: n })))
}
