//! `/v1/apps/{app_id}/endpoints`: an app's subscribed URLs, with their event-type filter,
//! retry, ack and attempt-timeout overrides, in-flight limit and ordering. An app has at
//! most [`MAX_ENDPOINTS_PER_APP`] endpoints; the list is paged.
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use herald_store::{EndpointPatch, EndpointUrl, ListEndpoints, NewEndpoint};
use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::extract::JsonBody;
use super::views::{EndpointView, Page};
use super::{views, ApiState, MAX_ENDPOINTS_PER_APP};
use crate::clock::now_ms;

/// The most attempts one endpoint may be allowed in flight.
pub const MAX_IN_FLIGHT_LIMIT: u32 = 256;
/// The range an endpoint's attempt timeout may be set in (milliseconds).
const TIMEOUT_MS_RANGE: std::ops::RangeInclusive<u32> = 100..=60_000;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEndpoint {
    /// An absolute http(s) URL with a host, at most 2048 bytes.
    #[schema(value_type = String)]
    url: EndpointUrl,
    #[serde(default)]
    event_types: Option<Vec<String>>,
    #[serde(default)]
    retry: Option<Value>,
    #[serde(default)]
    ack: Option<String>,
    #[serde(default)]
    max_in_flight: Option<u32>,
    #[serde(default)]
    ordered: Option<bool>,
    #[serde(default)]
    enabled: Option<bool>,
    /// Overrides the profile's attempt timeout (WeChat Pay 5 s, others 15 s).
    #[serde(default)]
    timeout_ms: Option<u32>,
}

fn event_types(v: &[String]) -> Result<Vec<String>, ApiError> {
    if v.len() > 100 {
        return Err(ApiError::Invalid(
            "event_types has more than 100 entries".into(),
        ));
    }
    v.iter()
        .map(|t| views::bounded_text("event_types[]", t, 256))
        .collect()
}

fn timeout_ms(n: u64) -> Result<u32, ApiError> {
    match u32::try_from(n) {
        Ok(n) if TIMEOUT_MS_RANGE.contains(&n) => Ok(n),
        _ => Err(ApiError::Invalid(format!(
            "timeout_ms must be between {} and {}",
            TIMEOUT_MS_RANGE.start(),
            TIMEOUT_MS_RANGE.end()
        ))),
    }
}

fn max_in_flight(n: u32) -> Result<u32, ApiError> {
    if n == 0 || n > MAX_IN_FLIGHT_LIMIT {
        return Err(ApiError::Invalid(format!(
            "max_in_flight must be between 1 and {MAX_IN_FLIGHT_LIMIT}"
        )));
    }
    Ok(n)
}

#[utoipa::path(post, path = "/v1/apps/{app_id}/endpoints", tag = "endpoints",
    params(("app_id" = String, Path)),
    request_body = CreateEndpoint,
    responses(
        (status = 201, description = "Created", body = EndpointView),
        (status = 404, description = "No such app", body = ErrorBody),
        (status = 409, description = "The app has 100 endpoints already", body = ErrorBody),
        (status = 422, description = "Invalid, or a target the policy refuses", body = ErrorBody),
    ))]
pub async fn create(
    State(state): State<ApiState>,
    Path(app_id): Path<String>,
    JsonBody(req): JsonBody<CreateEndpoint>,
) -> Result<(StatusCode, Json<EndpointView>), ApiError> {
    let new = NewEndpoint {
        app_id,
        url: views::permit_endpoint_url(&state.target_policy, req.url)?,
        event_types: req.event_types.as_deref().map(event_types).transpose()?,
        retry: req.retry.as_ref().map(views::parse_retry).transpose()?,
        ack: req.ack.as_deref().map(views::parse_ack).transpose()?,
        max_in_flight: max_in_flight(req.max_in_flight.unwrap_or(state.default_max_in_flight))?,
        ordered: req.ordered.unwrap_or(false),
        enabled: req.enabled.unwrap_or(true),
        timeout_ms: req.timeout_ms.map(|n| timeout_ms(n.into())).transpose()?,
        now: now_ms(),
    };
    // Counting and creating are serialized in this process, so concurrent requests to one
    // node cannot pass the limit together (nodes sharing a database could, by at most one
    // endpoint per other node at once).
    let _one_at_a_time = CREATING.lock().await;
    let existing = state
        .store
        .list_endpoints(
            &new.app_id,
            ListEndpoints {
                limit: MAX_ENDPOINTS_PER_APP,
                cursor: None,
            },
        )
        .await?;
    if existing.items.len() >= MAX_ENDPOINTS_PER_APP as usize {
        return Err(ApiError::Conflict(format!(
            "the app already has {MAX_ENDPOINTS_PER_APP} endpoints, the most an app may have; \
             delete one (or use event_types filters on fewer endpoints) before adding another"
        )));
    }
    let ep = state.store.create_endpoint(new).await?;
    Ok((StatusCode::CREATED, Json(views::endpoint(&ep))))
}

/// Serializes endpoint creation in this process (see [`create`]).
static CREATING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    #[serde(default)]
    limit: Option<u32>,
    #[serde(default)]
    cursor: Option<String>,
}

/// A page of the app's endpoints by creation time (then id). The default page (100) holds every
/// endpoint an app may have.
#[utoipa::path(get, path = "/v1/apps/{app_id}/endpoints", tag = "endpoints",
    params(
        ("app_id" = String, Path),
        ("limit" = Option<u32>, Query, description = "1 to 100, default 100"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "The app's endpoints by creation time", body = Page<EndpointView>),
        (status = 404, description = "No such app", body = ErrorBody),
    ))]
pub async fn list(
    State(state): State<ApiState>,
    Path(app_id): Path<String>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Page<EndpointView>>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::Invalid(e.body_text()))?;
    let limit = super::page_limit(q.limit, super::MAX_PAGE_LIMIT)?;
    state
        .store
        .get_app(&app_id)
        .await?
        .ok_or(ApiError::NotFound("app"))?;
    let page = state
        .store
        .list_endpoints(
            &app_id,
            ListEndpoints {
                limit,
                cursor: q.cursor,
            },
        )
        .await?;
    Ok(Json(Page {
        data: page.items.iter().map(views::endpoint).collect(),
        next_cursor: page.next_cursor,
    }))
}

#[utoipa::path(get, path = "/v1/apps/{app_id}/endpoints/{endpoint_id}", tag = "endpoints",
    params(("app_id" = String, Path), ("endpoint_id" = String, Path)),
    responses(
        (status = 200, description = "The endpoint", body = EndpointView),
        (status = 404, description = "No such endpoint", body = ErrorBody),
    ))]
pub async fn get(
    State(state): State<ApiState>,
    Path((app_id, id)): Path<(String, String)>,
) -> Result<Json<EndpointView>, ApiError> {
    let ep = state
        .store
        .get_endpoint(&app_id, &id)
        .await?
        .ok_or(ApiError::NotFound("endpoint"))?;
    Ok(Json(views::endpoint(&ep)))
}

/// Reads a PATCH body: absent keys stay, `null` clears nullable fields.
fn parse_patch(
    body: Map<String, Value>,
    policy: &herald_engine::TargetPolicy,
) -> Result<EndpointPatch, ApiError> {
    let mut patch = EndpointPatch::default();
    for (key, value) in body {
        let invalid = |what: &str| ApiError::Invalid(format!("{key} must be {what}"));
        match key.as_str() {
            "url" => {
                let s = value.as_str().ok_or_else(|| invalid("a URL string"))?;
                let url = EndpointUrl::parse(s.to_string())?;
                patch.url = Some(views::permit_endpoint_url(policy, url)?);
            }
            "event_types" => {
                patch.event_types = Some(match value {
                    Value::Null => None,
                    v => {
                        let list: Vec<String> = serde_json::from_value(v)
                            .map_err(|_| invalid("a list of strings or null"))?;
                        Some(event_types(&list)?)
                    }
                })
            }
            "retry" => {
                patch.retry = Some(match value {
                    Value::Null => None,
                    v => Some(views::parse_retry(&v)?),
                })
            }
            "ack" => {
                patch.ack = Some(match value {
                    Value::Null => None,
                    Value::String(s) => Some(views::parse_ack(&s)?),
                    _ => return Err(invalid("a string or null")),
                })
            }
            "max_in_flight" => {
                let n = value
                    .as_u64()
                    .ok_or_else(|| invalid("a positive integer"))?;
                patch.max_in_flight = Some(max_in_flight(u32::try_from(n).unwrap_or(u32::MAX))?);
            }
            "ordered" => {
                patch.ordered = Some(value.as_bool().ok_or_else(|| invalid("true or false"))?)
            }
            "enabled" => {
                patch.enabled = Some(value.as_bool().ok_or_else(|| invalid("true or false"))?)
            }
            "timeout_ms" => {
                patch.timeout_ms = Some(match value {
                    Value::Null => None,
                    v => {
                        Some(timeout_ms(v.as_u64().ok_or_else(|| {
                            invalid("a number of milliseconds or null")
                        })?)?)
                    }
                })
            }
            _ => return Err(ApiError::Invalid(format!("unknown field {key:?}"))),
        }
    }
    Ok(patch)
}

#[utoipa::path(patch, path = "/v1/apps/{app_id}/endpoints/{endpoint_id}", tag = "endpoints",
    params(("app_id" = String, Path), ("endpoint_id" = String, Path)),
    request_body(content = CreateEndpoint, description = "Any of the fields; absent ones stay, `null` clears event_types, retry, ack and timeout_ms"),
    responses(
        (status = 200, description = "The changed endpoint", body = EndpointView),
        (status = 404, description = "No such endpoint", body = ErrorBody),
        (status = 422, description = "Invalid", body = ErrorBody),
    ))]
pub async fn update(
    State(state): State<ApiState>,
    Path((app_id, id)): Path<(String, String)>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<Json<EndpointView>, ApiError> {
    let patch = parse_patch(body, &state.target_policy)?;
    let ep = state
        .store
        .update_endpoint(&app_id, &id, patch, now_ms())
        .await?
        .ok_or(ApiError::NotFound("endpoint"))?;
    Ok(Json(views::endpoint(&ep)))
}

#[utoipa::path(delete, path = "/v1/apps/{app_id}/endpoints/{endpoint_id}", tag = "endpoints",
    params(("app_id" = String, Path), ("endpoint_id" = String, Path)),
    responses(
        (status = 204, description = "Deleted; its pending deliveries are canceled"),
        (status = 404, description = "No such endpoint", body = ErrorBody),
    ))]
pub async fn delete(
    State(state): State<ApiState>,
    Path((app_id, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    if state.store.delete_endpoint(&app_id, &id, now_ms()).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("endpoint"))
    }
}
