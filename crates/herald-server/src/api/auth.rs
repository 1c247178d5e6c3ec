//! Who is calling: the one place where a presented credential becomes a [`Principal`], and
//! the rules of what each principal may do.
//!
//! Two kinds of credential are accepted as `Authorization: Bearer <token>`:
//! - the **admin token** (compared by SHA-256, in constant time; no database read): every
//!   route;
//! - an **API key** of one app (`hk_...`, looked up by its SHA-256): sending that app's
//!   notifications and reading its notifications, deliveries and attempts, nothing else.
//!
//! A missing or unknown credential is 401; a valid one used beyond its scope is 403.
//! Anything that serves requests (the API, the sandbox, the dashboard) turns a credential
//! into a principal with [`authenticate`] (or [`authenticate_token`] for a token it read
//! elsewhere, such as a login form), then asks the principal ([`Principal::require_admin`],
//! [`Principal::require_app`]). Handlers get it as an extractor: the `/v1` routes are
//! wrapped in [`authenticated`], which stores it in the request's extensions.
use axum::extract::{FromRequestParts, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine as _;
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::error::ApiError;
use super::ApiState;
use crate::clock::now_ms;

/// What an API key starts with.
pub const API_KEY_PREFIX: &str = "hk_";
/// How many characters of a key are kept to tell keys apart (`hk_` and 8 more).
const SHOWN_PREFIX_LEN: usize = 11;
/// A key's `last_used_at` is written again only when it is older than this, so using a key
/// costs a write at most once a minute, not once a request.
const TOUCH_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// The caller of a request, once authenticated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// The admin token: everything.
    Admin,
    /// An API key of one app.
    App { app_id: String, key_id: String },
}

impl Principal {
    /// Administration (apps, endpoints, keys, retries, the sandbox): the admin token only.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self {
            Principal::Admin => Ok(()),
            Principal::App { .. } => Err(ApiError::Forbidden(
                "an app's API key cannot do this; use the admin token".into(),
            )),
        }
    }

    /// Sending and reading one app's notifications: the admin token, or that app's key.
    pub fn require_app(&self, app_id: &str) -> Result<(), ApiError> {
        match self {
            Principal::Admin => Ok(()),
            Principal::App { app_id: own, .. } if own == app_id => Ok(()),
            Principal::App { .. } => Err(ApiError::Forbidden(
                "this API key belongs to another app".into(),
            )),
        }
    }
}

/// Turns the request's `Authorization` header into a principal: 401 when it is missing,
/// not a bearer token, or not a known credential. See the module doc.
pub async fn authenticate(state: &ApiState, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let token = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .ok_or(ApiError::Unauthorized)?;
    authenticate_token(state, token).await
}

/// Turns a presented token into a principal: the admin token, or a live app's API key
/// (whose last use is recorded, at most once a minute). 401 otherwise.
pub async fn authenticate_token(state: &ApiState, token: &str) -> Result<Principal, ApiError> {
    let hash = hash_token(token);
    if constant_time_eq(&hash, &state.admin_token_sha256) {
        return Ok(Principal::Admin);
    }
    if !token.starts_with(API_KEY_PREFIX) {
        return Err(ApiError::Unauthorized);
    }
    let key = state
        .store
        .find_api_key(&hex(&hash))
        .await?
        .ok_or(ApiError::Unauthorized)?;
    let now = now_ms();
    if key
        .last_used_at
        .is_none_or(|at| now.saturating_sub(at) >= TOUCH_EVERY)
    {
        if let Err(e) = state.store.touch_api_key(&key.id, now).await {
            tracing::warn!(key = %key.id, error = %e, "cannot record the API key's last use");
        }
    }
    Ok(Principal::App {
        app_id: key.app_id,
        key_id: key.id,
    })
}

/// The `/v1` guard: authenticates the request (401 otherwise) and keeps the principal in its
/// extensions for the handlers' [`Principal`] extractor.
pub(crate) async fn authenticated(
    State(state): State<ApiState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let principal = authenticate(&state, req.headers()).await?;
    req.extensions_mut().insert(principal);
    Ok(next.run(req).await)
}

/// The guard of administration routes (and the sandbox's `/v1/sandbox`): the admin token
/// only (401 without a valid credential, 403 with an app's key).
pub(crate) async fn admin_only(
    State(state): State<ApiState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let principal = match req.extensions().get::<Principal>() {
        Some(p) => p.clone(),
        None => authenticate(&state, req.headers()).await?,
    };
    principal.require_admin()?;
    Ok(next.run(req).await)
}

impl FromRequestParts<ApiState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ApiState,
    ) -> Result<Self, Self::Rejection> {
        if let Some(p) = parts.extensions.get::<Principal>() {
            return Ok(p.clone());
        }
        authenticate(state, &parts.headers).await
    }
}

/// A new API key: `hk_` and 32 random bytes (base64url), its shown prefix, and its SHA-256
/// (hex), which is all the store keeps.
pub(crate) fn new_api_key() -> (String, String, String) {
    let mut raw = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut raw);
    let key = format!(
        "{API_KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    );
    let prefix = key[..SHOWN_PREFIX_LEN].to_string();
    let hash = hex(&hash_token(&key));
    (key, prefix, hash)
}

pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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

    #[test]
    fn new_api_keys_are_random_prefixed_and_only_their_hash_is_kept() {
        let (k1, p1, h1) = new_api_key();
        let (k2, _, h2) = new_api_key();
        assert!(k1.starts_with("hk_") && k1.len() == 46, "{k1}");
        assert_ne!(k1, k2);
        assert!(k1.starts_with(&p1) && p1.len() == SHOWN_PREFIX_LEN);
        assert_eq!(h1, hex(&Sha256::digest(k1.as_bytes())));
        assert_ne!(h1, h2);
        assert!(!h1.contains(&k1[3..]));
    }

    #[test]
    fn an_app_key_reaches_its_own_app_only_and_no_administration() {
        let key = Principal::App {
            app_id: "app_1".into(),
            key_id: "key_1".into(),
        };
        assert!(key.require_app("app_1").is_ok());
        assert!(matches!(
            key.require_app("app_2"),
            Err(ApiError::Forbidden(_))
        ));
        assert!(matches!(key.require_admin(), Err(ApiError::Forbidden(_))));
        assert!(Principal::Admin.require_admin().is_ok());
        assert!(Principal::Admin.require_app("app_2").is_ok());
    }
}
