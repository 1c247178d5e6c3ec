//! `/v1/apps`: create an app (with generated or given credentials), list, read, change
//! (name, retry, ack) and delete apps, rotate an app's signing secret with a grace period,
//! and its API keys (`/v1/apps/{app_id}/keys`). At most [`MAX_SIGNING_SECRETS`] secrets sign
//! side by side (each adds a signature to every request): a rotation past that drops the
//! oldest ones still in their grace period.
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use herald_protocols::{Credentials, Profile};
use herald_store::{AppPatch, ListApps, NewApiKey, NewApp};
use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::extract::{parse_json, JsonBody};
use super::views::{ApiKeyView, AppView, CreatedApiKeyView, Page};
use super::{views, ApiState};
use crate::clock::now_ms;

/// The most API keys an app may have; creating one more is 409.
pub const MAX_API_KEYS_PER_APP: usize = 100;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApp {
    /// 1 to 256 characters.
    name: String,
    /// `standard-webhooks` (the default), `alipay`, `wechatpay-v2`, `wechatpay-v3` or
    /// `stripe`.
    #[serde(default)]
    profile: Option<String>,
    /// A policy name or delays in seconds; overrides the profile's default.
    #[serde(default)]
    retry: Option<Value>,
    #[serde(default)]
    ack: Option<String>,
    /// The profile's credentials; generated when absent (and shown once).
    #[serde(default)]
    credentials: Option<Value>,
}

#[utoipa::path(post, path = "/v1/apps", tag = "apps",
    request_body = CreateApp,
    responses(
        (status = 201, description = "Created; secrets are shown in this response only", body = AppView),
        (status = 422, description = "Invalid", body = ErrorBody),
    ))]
pub async fn create(
    State(state): State<ApiState>,
    JsonBody(req): JsonBody<CreateApp>,
) -> Result<(StatusCode, Json<AppView>), ApiError> {
    let name = views::bounded_text("name", &req.name, 256)?;
    let profile: Profile = match &req.profile {
        Some(p) => p
            .parse()
            .map_err(|e: herald_protocols::ProfileError| ApiError::Invalid(e.to_string()))?,
        None => Profile::StandardWebhooks,
    };
    let retry = req.retry.as_ref().map(views::parse_retry).transpose()?;
    let ack = req.ack.as_deref().map(views::parse_ack).transpose()?;
    let (credentials, once) = profile
        .create_credentials(req.credentials.as_ref().unwrap_or(&Value::Null))
        .map_err(|e| ApiError::Invalid(e.to_string()))?;
    let app = state
        .store
        .create_app(NewApp {
            name,
            profile,
            retry,
            ack,
            credentials,
            now: now_ms(),
        })
        .await?;
    tracing::info!(app = %app.id, profile = profile.name(), "app created");
    Ok((StatusCode::CREATED, Json(views::app(&app, once))))
}

#[utoipa::path(get, path = "/v1/apps", tag = "apps",
    params(
        ("limit" = Option<u32>, Query, description = "1 to 100, default 50"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
    ),
    responses((status = 200, description = "The live apps, by id (creation order)", body = Page<AppView>)))]
pub async fn list(
    State(state): State<ApiState>,
    query: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Page<AppView>>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::Invalid(e.body_text()))?;
    let limit = super::page_limit(q.limit, 50)?;
    let page = state
        .store
        .list_apps(ListApps {
            limit,
            cursor: q.cursor,
        })
        .await?;
    Ok(Json(Page {
        data: page
            .items
            .iter()
            .map(|a| views::app(a, a.profile.public_view(&a.credentials)))
            .collect(),
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

#[utoipa::path(get, path = "/v1/apps/{app_id}", tag = "apps",
    params(("app_id" = String, Path)),
    responses(
        (status = 200, description = "The app, with the public part of its credentials", body = AppView),
        (status = 404, description = "No such app (or it was deleted)", body = ErrorBody),
    ))]
pub async fn get(
    State(state): State<ApiState>,
    Path(app_id): Path<String>,
) -> Result<Json<AppView>, ApiError> {
    let app = state
        .store
        .get_app(&app_id)
        .await?
        .ok_or(ApiError::NotFound("app"))?;
    let public = app.profile.public_view(&app.credentials);
    Ok(Json(views::app(&app, public)))
}

/// A change to an app: absent fields stay, `null` puts `retry` or `ack` back to the
/// profile's default. The profile and credentials cannot change here (rotate the secret).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct UpdateApp {
    name: Option<String>,
    retry: Option<Value>,
    ack: Option<String>,
}

fn parse_app_patch(body: Map<String, Value>) -> Result<AppPatch, ApiError> {
    let mut patch = AppPatch::default();
    for (key, value) in body {
        let invalid = |what: &str| ApiError::Invalid(format!("{key} must be {what}"));
        match key.as_str() {
            "name" => {
                let s = value.as_str().ok_or_else(|| invalid("a string"))?;
                patch.name = Some(views::bounded_text("name", s, 256)?);
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
            _ => {
                return Err(ApiError::Invalid(format!(
                    "unknown field {key:?} (an app's name, retry and ack can change)"
                )))
            }
        }
    }
    Ok(patch)
}

#[utoipa::path(patch, path = "/v1/apps/{app_id}", tag = "apps",
    params(("app_id" = String, Path)),
    request_body = UpdateApp,
    responses(
        (status = 200, description = "The changed app", body = AppView),
        (status = 404, description = "No such app", body = ErrorBody),
        (status = 422, description = "Invalid", body = ErrorBody),
    ))]
pub async fn update(
    State(state): State<ApiState>,
    Path(app_id): Path<String>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<Json<AppView>, ApiError> {
    let patch = parse_app_patch(body)?;
    let app = state
        .store
        .update_app(&app_id, patch)
        .await?
        .ok_or(ApiError::NotFound("app"))?;
    state.apps.forget(&app_id);
    tracing::info!(app = %app.id, "app changed");
    let public = app.profile.public_view(&app.credentials);
    Ok(Json(views::app(&app, public)))
}

/// What deleting an app did.
#[derive(serde::Serialize, ToSchema)]
pub struct DeletedApp {
    pub id: String,
    pub deleted: bool,
    /// Pending deliveries canceled (never attempted again).
    pub canceled_deliveries: u64,
}

#[utoipa::path(delete, path = "/v1/apps/{app_id}", tag = "apps",
    params(("app_id" = String, Path)),
    responses(
        (status = 200, description = "Deleted: its endpoints and API keys are gone and its pending deliveries canceled; its notifications stay readable", body = DeletedApp),
        (status = 404, description = "No such app", body = ErrorBody),
    ))]
pub async fn delete(
    State(state): State<ApiState>,
    Path(app_id): Path<String>,
) -> Result<Json<DeletedApp>, ApiError> {
    let canceled = state
        .store
        .delete_app(&app_id, now_ms())
        .await?
        .ok_or(ApiError::NotFound("app"))?;
    state.apps.forget(&app_id);
    tracing::info!(app = %app_id, canceled_deliveries = canceled, "app deleted");
    Ok(Json(DeletedApp {
        id: app_id,
        deleted: true,
        canceled_deliveries: canceled,
    }))
}

#[utoipa::path(post, path = "/v1/apps/{app_id}/keys", tag = "api keys",
    params(("app_id" = String, Path)),
    responses(
        (status = 201, description = "The new key, shown once (only its SHA-256 is stored)", body = CreatedApiKeyView),
        (status = 404, description = "No such app", body = ErrorBody),
        (status = 409, description = "The app has 100 keys already", body = ErrorBody),
    ))]
pub async fn create_key(
    State(state): State<ApiState>,
    Path(app_id): Path<String>,
) -> Result<(StatusCode, Json<CreatedApiKeyView>), ApiError> {
    let existing = state.store.list_api_keys(&app_id).await?;
    if existing.len() >= MAX_API_KEYS_PER_APP {
        return Err(ApiError::Conflict(format!(
            "the app already has {MAX_API_KEYS_PER_APP} API keys; revoke one first"
        )));
    }
    let (key, prefix, key_sha256) = super::auth::new_api_key();
    let stored = state
        .store
        .create_api_key(NewApiKey {
            app_id,
            prefix,
            key_sha256,
            now: now_ms(),
        })
        .await?;
    tracing::info!(app = %stored.app_id, key = %stored.id, "API key created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedApiKeyView {
            api_key: views::api_key(&stored),
            key,
        }),
    ))
}

/// An app's API keys.
#[derive(serde::Serialize, ToSchema)]
pub struct ApiKeyList {
    pub data: Vec<ApiKeyView>,
}

#[utoipa::path(get, path = "/v1/apps/{app_id}/keys", tag = "api keys",
    params(("app_id" = String, Path)),
    responses(
        (status = 200, description = "The app's keys, oldest first (never the keys themselves)", body = ApiKeyList),
        (status = 404, description = "No such app", body = ErrorBody),
    ))]
pub async fn list_keys(
    State(state): State<ApiState>,
    Path(app_id): Path<String>,
) -> Result<Json<ApiKeyList>, ApiError> {
    state
        .store
        .get_app(&app_id)
        .await?
        .ok_or(ApiError::NotFound("app"))?;
    let keys = state.store.list_api_keys(&app_id).await?;
    Ok(Json(ApiKeyList {
        data: keys.iter().map(views::api_key).collect(),
    }))
}

#[utoipa::path(delete, path = "/v1/apps/{app_id}/keys/{key_id}", tag = "api keys",
    params(("app_id" = String, Path), ("key_id" = String, Path)),
    responses(
        (status = 204, description = "Revoked: the key is refused from now on"),
        (status = 404, description = "The app has no such key", body = ErrorBody),
    ))]
pub async fn delete_key(
    State(state): State<ApiState>,
    Path((app_id, key_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    if state.store.delete_api_key(&app_id, &key_id).await? {
        tracing::info!(app = %app_id, key = %key_id, "API key revoked");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("API key"))
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rotate {
    /// Seconds the old secret keeps signing; default one day, at most 30 days.
    #[serde(default)]
    grace_period: Option<u64>,
}

/// Most secrets signing at once: the current one and nine still in their grace period.
pub const MAX_SIGNING_SECRETS: usize = 10;

/// Keeps the newest [`MAX_SIGNING_SECRETS`] secrets (the current one first, then the old
/// ones newest first, as rotation orders them); returns how many were dropped.
fn cap_signing_secrets(credentials: &mut Credentials) -> usize {
    let before;
    match credentials {
        Credentials::StandardWebhooks(k) => {
            before = k.keys.len();
            k.keys.truncate(MAX_SIGNING_SECRETS);
            before - k.keys.len()
        }
        Credentials::Stripe(c) => {
            before = c.secrets.len();
            c.secrets.truncate(MAX_SIGNING_SECRETS);
            before - c.secrets.len()
        }
        // One key at a time: rotation replaces it.
        Credentials::Alipay(_)
        | Credentials::WechatPayV2(_)
        | Credentials::WechatPayV3(_)
        | Credentials::WechatPayLegacy(_)
        | Credentials::Dialect(_) => 0,
    }
}

const DEFAULT_GRACE: u64 = 24 * 3600;
const MAX_GRACE: u64 = 30 * 24 * 3600;

#[utoipa::path(post, path = "/v1/apps/{app_id}/secret/rotate", tag = "apps",
    params(("app_id" = String, Path)),
    request_body(content = Option<Rotate>, description = "Optional; an empty body keeps the default grace period"),
    responses(
        (status = 200, description = "The app with its new secret, shown once", body = AppView),
        (status = 404, description = "No such app", body = ErrorBody),
    ))]
pub async fn rotate(
    State(state): State<ApiState>,
    Path(app_id): Path<String>,
    body: Bytes,
) -> Result<Json<AppView>, ApiError> {
    let req: Rotate = if body.iter().all(u8::is_ascii_whitespace) {
        Rotate { grace_period: None }
    } else {
        parse_json(&body)?
    };
    let grace = req.grace_period.unwrap_or(DEFAULT_GRACE);
    if grace > MAX_GRACE {
        return Err(ApiError::Invalid(format!(
            "grace_period is at most {MAX_GRACE} seconds (30 days)"
        )));
    }
    let app = state
        .store
        .get_app(&app_id)
        .await?
        .ok_or(ApiError::NotFound("app"))?;
    let now = now_ms().to_seconds().get();
    let (mut credentials, once) = app
        .profile
        .rotate(&app.credentials, now + grace as i64, now)
        .map_err(|e| ApiError::Invalid(e.to_string()))?;
    let dropped = cap_signing_secrets(&mut credentials);
    if dropped > 0 {
        tracing::info!(app = %app.id, dropped, "oldest rotating secrets retired early (at most {MAX_SIGNING_SECRETS} sign side by side)");
    }
    let app = state
        .store
        .set_app_credentials(&app_id, credentials)
        .await?
        .ok_or(ApiError::NotFound("app"))?;
    state.apps.forget(&app_id);
    tracing::info!(app = %app.id, grace_seconds = grace, "app secret rotated");
    Ok(Json(views::app(&app, once)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_protocols::standard_webhooks::{KeyEntry, Keys};

    #[test]
    fn rotation_keeps_the_newest_ten_secrets() {
        let mut keys = vec![KeyEntry::current("whsec_new".into())];
        for i in 0..15 {
            keys.push(KeyEntry {
                secret: format!("whsec_old{i}"),
                expires_at: Some(1000 - i),
            });
        }
        let mut c = Credentials::StandardWebhooks(Keys { keys });
        assert_eq!(cap_signing_secrets(&mut c), 6);
        let Credentials::StandardWebhooks(k) = c else {
            unreachable!()
        };
        assert_eq!(k.keys.len(), MAX_SIGNING_SECRETS);
        assert_eq!(k.keys[0].secret, "whsec_new");
        assert_eq!(k.keys[9].secret, "whsec_old8");
    }
}
