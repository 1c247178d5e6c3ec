//! Who is signed in to the dashboard, and how: credentials become a [`Principal`] through
//! [`authenticate`] (today the admin token; a second kind, such as an app's API key, plugs
//! in there as one more match), a principal gets a server-side session whose random id is
//! the only thing the browser holds (an `HttpOnly`, `SameSite=Strict` cookie), and every
//! POST carries the session's CSRF token and passes an Origin check.
//!
//! Sessions live in this process's memory, bounded ([`MAX_SESSIONS`]) and expiring
//! ([`SESSION_TTL`]): a restart signs everyone out, and with several nodes behind one
//! address the balancer must keep a browser on one node. One-time login links (`herald demo`)
//! are single-use and expire after [`LINK_TTL`].
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use base64::Engine as _;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::api::ApiState;

/// The session cookie's name.
pub const COOKIE: &str = "herald_session";
/// How long a session lasts after sign-in.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// How long a one-time login link stays valid.
pub const LINK_TTL: Duration = Duration::from_secs(10 * 60);
/// The most sessions (and, separately, unused login links) kept; past it, signing in is
/// refused until some expire or sign out.
pub const MAX_SESSIONS: usize = 10_000;

/// Who a session acts as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// The holder of the admin token: every app, every action.
    Admin,
}

impl Principal {
    pub fn label(&self) -> &'static str {
        match self {
            Principal::Admin => "admin",
        }
    }
}

/// Turns a presented credential into a principal, or `None`. The admin token is compared
/// by its SHA-256 hash in constant time; API keys (per app) would be tried here next.
pub fn authenticate(state: &ApiState, credential: &str) -> Option<Principal> {
    let credential = credential.trim();
    if credential.is_empty() {
        return None;
    }
    let presented = crate::api::hash_token(credential);
    let same = presented
        .iter()
        .zip(&state.admin_token_sha256)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0;
    same.then_some(Principal::Admin)
}

#[derive(Clone, Debug)]
pub struct Session {
    pub principal: Principal,
    /// The token every POST form carries.
    pub csrf: String,
    expires: Instant,
}

/// Sessions and one-time login links, keyed by the SHA-256 of their secret (the secret
/// itself is only in the browser's cookie, or in the link).
#[derive(Default)]
pub struct Sessions {
    sessions: Mutex<HashMap<[u8; 32], Session>>,
    links: Mutex<HashMap<[u8; 32], (Principal, Instant)>>,
}

fn random_token() -> String {
    let mut raw = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut raw);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

fn key(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

impl Sessions {
    /// Starts a session; returns its id (the cookie value), or `None` when full.
    pub fn start(&self, principal: Principal) -> Option<String> {
        let mut map = self.sessions.lock().ok()?;
        let now = Instant::now();
        if map.len() >= MAX_SESSIONS {
            map.retain(|_, s| s.expires > now);
            if map.len() >= MAX_SESSIONS {
                return None;
            }
        }
        let id = random_token();
        map.insert(
            key(&id),
            Session {
                principal,
                csrf: random_token(),
                expires: now + SESSION_TTL,
            },
        );
        Some(id)
    }

    /// The live session with this id.
    pub fn get(&self, id: &str) -> Option<Session> {
        let mut map = self.sessions.lock().ok()?;
        let k = key(id);
        match map.get(&k) {
            Some(s) if s.expires > Instant::now() => Some(s.clone()),
            Some(_) => {
                map.remove(&k);
                None
            }
            None => None,
        }
    }

    pub fn end(&self, id: &str) {
        if let Ok(mut map) = self.sessions.lock() {
            map.remove(&key(id));
        }
    }

    /// A one-time login link's secret for `principal`, valid for [`LINK_TTL`].
    pub fn issue_link(&self, principal: Principal) -> Option<String> {
        let mut links = self.links.lock().ok()?;
        let now = Instant::now();
        links.retain(|_, (_, until)| *until > now);
        if links.len() >= MAX_SESSIONS {
            return None;
        }
        let secret = random_token();
        links.insert(key(&secret), (principal, now + LINK_TTL));
        Some(secret)
    }

    /// Uses up a login link: its principal when it was issued, unused and unexpired.
    pub fn redeem_link(&self, secret: &str) -> Option<Principal> {
        let mut links = self.links.lock().ok()?;
        let (principal, until) = links.remove(&key(secret))?;
        (until > Instant::now()).then_some(principal)
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
    let (a, b) = (key(expected), key(presented));
    a.iter().zip(&b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_login_link_works_once() {
        let s = Sessions::default();
        let link = s.issue_link(Principal::Admin).unwrap();
        assert_eq!(s.redeem_link(&link), Some(Principal::Admin));
        assert_eq!(s.redeem_link(&link), None);
        assert_eq!(s.redeem_link("made-up"), None);
    }

    #[test]
    fn an_ended_session_is_gone() {
        let s = Sessions::default();
        let id = s.start(Principal::Admin).unwrap();
        let session = s.get(&id).unwrap();
        assert_eq!(session.principal, Principal::Admin);
        assert_ne!(session.csrf, id);
        s.end(&id);
        assert!(s.get(&id).is_none());
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
