//! `/v1/apps`: create an app (with generated or given credentials), read it, rotate its
//! signing secret with a grace period. At most [`MAX_SIGNING_SECRETS`] secrets sign side by
//! side (each adds a signature to every request): a rotation past that drops the oldest
//! ones still in their grace period.
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use herald_protocols::{Credentials, Profile};
use herald_store::NewApp;
use serde::Deserialize;
use serde_json::Value;

use super::error::ApiError;
use super::extract::{parse_json, JsonBody};
use super::{views, ApiState};
use crate::clock::now_ms;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateApp {
    name: String,
    #[serde(default)]
    profile: Option<String>,
    #[serde(default)]
    retry: Option<Value>,
    #[serde(default)]
    ack: Option<String>,
    #[serde(default)]
    credentials: Option<Value>,
}

pub async fn create(
    State(state): State<ApiState>,
    JsonBody(req): JsonBody<CreateApp>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
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

pub async fn get(
    State(state): State<ApiState>,
    Path(app_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let app = state
        .store
        .get_app(&app_id)
        .await?
        .ok_or(ApiError::NotFound("app"))?;
    let public = app.profile.public_view(&app.credentials);
    Ok(Json(views::app(&app, public)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rotate {
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

pub async fn rotate(
    State(state): State<ApiState>,
    Path(app_id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
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
    let now = now_ms() / 1000;
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
