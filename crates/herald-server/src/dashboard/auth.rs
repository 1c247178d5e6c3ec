//! Who is signed in to the dashboard, and how: a credential typed into the sign-in form
//! becomes a [`Principal`] through [`authenticate`] (the admin token, or an app's API key:
//! the same rule as the API's `Authorization` header), a principal gets a server-side session
//! whose random id is the only thing the browser holds (an `HttpOnly`, `SameSite=Strict`
//! cookie), and every POST carries the session's CSRF token and passes an Origin check.
//!
//! Sessions and one-time login links are kept through the store seam
//! ([`herald_store::SessionStore`]), so every node on one database knows them and a restart
//! signs no one out. The store keeps only the SHA-256 of a session's id; the CSRF token is
//! derived from the id ([`csrf_token`]), so it is not stored either. Looking a session up on
//! each request is one indexed read and no write; an API key's sessions end at their next
//! request once the key is revoked (the lookup checks the key). Bounds: a session lasts
//! [`SESSION_TTL`], a principal has at most [`MAX_SESSIONS_PER_PRINCIPAL`] live sessions,
//! a login link (`herald demo`) is single-use, expires after [`LINK_TTL`], and at most
//! [`MAX_LINKS`] are unused at once; expired rows are purged at each sign-in.
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use base64::Engine as _;
use herald_store::sessions::{NewSession, SessionPrincipal};
use herald_store::{Store, StoreError};
use rand::RngCore;
use sha2::{Digest, Sha256};

pub use crate::api::Principal;
use crate::api::{error::ApiError, ApiState};
use crate::clock::now_ms;

/// The session cookie's name.
pub const COOKIE: &str = "herald_session";
/// How long a session lasts after sign-in.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// How long a one-time login link stays valid.
pub const LINK_TTL: Duration = Duration::from_secs(10 * 60);
/// The most live sessions one principal (the admin, or one API key) has; past it, signing in
/// is refused until some expire or sign out.
pub const MAX_SESSIONS_PER_PRINCIPAL: u32 = 1_000;
/// The most unused, unexpired login links at once.
pub const MAX_LINKS: u32 = 1_000;

/// Turns a credential typed into the sign-in form into a principal: the admin token, or a
/// live app's API key (see `crate::api::auth`). `Ok(None)` when it is neither.
pub async fn authenticate(
    state: &ApiState,
    credential: &str,
) -> Result<Option<Principal>, ApiError> {
    let credential = credential.trim();
    if credential.is_empty() {
        return Ok(None);
    }
    match crate::api::authenticate_token(state, credential).await {
        Ok(p) => Ok(Some(p)),
        Err(ApiError::Unauthorized) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A short name of the principal for logs (never a credential).
pub fn label(p: &Principal) -> String {
    match p {
        Principal::Admin => "admin".into(),
        Principal::App { key_id, .. } => format!("api key {key_id}"),
    }
}

fn to_store(p: &Principal) -> SessionPrincipal {
    match p {
        Principal::Admin => SessionPrincipal::Admin,
        Principal::App { app_id, key_id } => SessionPrincipal::ApiKey {
            app_id: app_id.clone(),
            key_id: key_id.clone(),
        },
    }
}

fn from_store(p: SessionPrincipal) -> Principal {
    match p {
        SessionPrincipal::Admin => Principal::Admin,
        SessionPrincipal::ApiKey { app_id, key_id } => Principal::App { app_id, key_id },
    }
}

#[derive(Clone, Debug)]
pub struct Session {
    pub principal: Principal,
    /// The token every POST form carries.
    pub csrf: String,
}

/// Sessions and one-time login links, through the store (see the module doc).
pub struct Sessions {
    store: Arc<dyn Store>,
}

fn random_token() -> String {
    let mut raw = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut raw);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

/// What the store knows a session or link by: the SHA-256 of its secret, hex.
fn key(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The CSRF token of the session with this id: a hash of the id under its own label, so it
/// differs from the stored key and gives nothing of the id away.
pub fn csrf_token(session_id: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"herald dashboard csrf\0");
    h.update(session_id.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(h.finalize())
}

impl Sessions {
    pub fn new(store: Arc<dyn Store>) -> Sessions {
        Sessions { store }
    }

    /// Starts a session; returns its id (the cookie value), or `None` when the principal
    /// already has [`MAX_SESSIONS_PER_PRINCIPAL`]. Expired sessions and links are purged
    /// first (a batch at most).
    pub async fn start(&self, principal: &Principal) -> Result<Option<String>, StoreError> {
        let now = now_ms();
        if let Err(e) = self.store.purge_sessions(now).await {
            tracing::warn!(error = %e, "cannot purge expired dashboard sessions");
        }
        let id = random_token();
        let stored = self
            .store
            .create_session(NewSession {
                id_sha256: key(&id),
                principal: to_store(principal),
                now,
                expires_at: now + SESSION_TTL,
                max_live: MAX_SESSIONS_PER_PRINCIPAL,
            })
            .await?;
        Ok(stored.then_some(id))
    }

    /// The live session with this id.
    pub async fn get(&self, id: &str) -> Result<Option<Session>, StoreError> {
        Ok(self
            .store
            .find_session(&key(id), now_ms())
            .await?
            .map(|s| Session {
                principal: from_store(s.principal),
                csrf: csrf_token(id),
            }))
    }

    pub async fn end(&self, id: &str) -> Result<(), StoreError> {
        self.store.delete_session(&key(id)).await.map(|_| ())
    }

    /// A one-time login link's secret for `principal`, valid for [`LINK_TTL`]; `None` when
    /// [`MAX_LINKS`] are unused.
    pub async fn issue_link(&self, principal: &Principal) -> Result<Option<String>, StoreError> {
        let now = now_ms();
        let secret = random_token();
        let stored = self
            .store
            .create_login_link(NewSession {
                id_sha256: key(&secret),
                principal: to_store(principal),
                now,
                expires_at: now + LINK_TTL,
                max_live: MAX_LINKS,
            })
            .await?;
        Ok(stored.then_some(secret))
    }

    /// Uses up a login link: its principal when it was issued, unused and unexpired (on any
    /// node: exactly one use wins).
    pub async fn redeem_link(&self, secret: &str) -> Result<Option<Principal>, StoreError> {
        if secret.is_empty() {
            return Ok(None);
        }
        Ok(self
            .store
            .consume_login_link(&key(secret), now_ms())
            .await?
            .map(from_store))
    }
}

/// The session id in the request's `Cookie` header.
pub fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_string())
}

/// The `Set-Cookie` value that stores a session id.
pub fn set_cookie(id: &str) -> String {
    format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        SESSION_TTL.as_secs()
    )
}

/// The `Set-Cookie` value that removes it.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// The Origin check for a POST: a browser names the page's origin in `Origin` (or, failing
/// that, `Referer`); it must be this server's own (`http(s)://` + the `Host` header). A
/// request with neither header is not a browser's cross-site form post and passes (the CSRF
/// token still has to match).
pub fn same_origin(headers: &HeaderMap) -> bool {
    let Some(host) = headers
        .get(axum::http::header::HOST)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let origin = headers
        .get(axum::http::header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| {
            let referer = headers.get(axum::http::header::REFERER)?.to_str().ok()?;
            let u = url::Url::parse(referer).ok()?;
            Some(u.origin().ascii_serialization())
        });
    match origin {
        None => true,
        Some(o) => o == format!("http://{host}") || o == format!("https://{host}"),
    }
}

/// Compares two CSRF tokens in constant time (by hash).
pub fn csrf_matches(expected: &str, presented: &str) -> bool {
    let a: [u8; 32] = Sha256::digest(expected.as_bytes()).into();
    let b: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    a.iter().zip(&b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_csrf_token_is_derived_from_the_session_id_and_is_neither_it_nor_its_stored_key() {
        let (a, b) = (random_token(), random_token());
        assert_eq!(csrf_token(&a), csrf_token(&a));
        assert_ne!(csrf_token(&a), csrf_token(&b));
        assert_ne!(csrf_token(&a), a);
        assert_ne!(csrf_token(&a), key(&a));
        assert!(csrf_matches(&csrf_token(&a), &csrf_token(&a)));
        assert!(!csrf_matches(&csrf_token(&a), &csrf_token(&b)));
    }

    #[test]
    fn origin_must_be_this_host() {
        let mut h = HeaderMap::new();
        h.insert("host", "127.0.0.1:8080".parse().unwrap());
        assert!(same_origin(&h));
        h.insert("origin", "http://127.0.0.1:8080".parse().unwrap());
        assert!(same_origin(&h));
        h.insert("origin", "http://evil.example".parse().unwrap());
        assert!(!same_origin(&h));
        h.remove("origin");
        h.insert("referer", "http://evil.example/x".parse().unwrap());
        assert!(!same_origin(&h));
        h.insert("referer", "http://127.0.0.1:8080/apps".parse().unwrap());
        assert!(same_origin(&h));
    }

    #[test]
    fn the_cookie_is_httponly_and_strict() {
        let c = set_cookie("abc");
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.contains("Max-Age="));
    }
}
