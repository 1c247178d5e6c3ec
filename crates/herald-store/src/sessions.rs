//! The dashboard's sign-in state ([`SessionStore`]): sessions and one-time login links, kept
//! in the database so that every node behind one address sees the same ones and a restart
//! signs no one out.
//!
//! Only the SHA-256 of a session's (or link's) random id is stored: the id itself lives in
//! the browser's cookie (or in the link) alone, so reading the table signs no one in. A
//! session names its principal: the admin, or one app's API key; a key's sessions stop being
//! found as soon as the key is revoked or its app deleted (the lookup checks the key in the
//! same indexed read, so nothing has to be written on each request, and nothing has to be
//! cleaned up at revocation). Sessions and links are bounded: a cap of live ones per
//! principal (sessions) or in all (links), checked at creation; expired ones are deleted by
//! [`SessionStore::purge_sessions`] in bounded batches.
use async_trait::async_trait;

use crate::Result;
use crate::UnixMillis;

/// The most expired rows one [`SessionStore::purge_sessions`] call deletes from each table.
pub const PURGE_BATCH: u32 = 1_000;

/// Who a session (or a login link) signs in as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionPrincipal {
    /// The holder of the admin token.
    Admin,
    /// An app's API key: that app only, what the key may do.
    ApiKey { app_id: String, key_id: String },
}

impl SessionPrincipal {
    /// What the stores keep in their `principal` column: `admin`, or the key's id (`key_...`,
    /// never `admin`).
    pub fn column(&self) -> &str {
        match self {
            SessionPrincipal::Admin => "admin",
            SessionPrincipal::ApiKey { key_id, .. } => key_id,
        }
    }

    /// The app column: the key's app, `None` for the admin.
    pub fn app_column(&self) -> Option<&str> {
        match self {
            SessionPrincipal::Admin => None,
            SessionPrincipal::ApiKey { app_id, .. } => Some(app_id),
        }
    }

    /// Back from the two columns; `None` when they do not make a principal.
    pub fn from_columns(principal: &str, app_id: Option<String>) -> Option<SessionPrincipal> {
        match (principal, app_id) {
            ("admin", None) => Some(SessionPrincipal::Admin),
            ("admin", Some(_)) => None,
            (key, Some(app_id)) => Some(SessionPrincipal::ApiKey {
                app_id,
                key_id: key.to_string(),
            }),
            (_, None) => None,
        }
    }
}

/// A session (or login link) to store.
#[derive(Clone, Debug)]
pub struct NewSession {
    /// SHA-256 of the random id, lowercase hex.
    pub id_sha256: String,
    pub principal: SessionPrincipal,
    pub now: UnixMillis,
    pub expires_at: UnixMillis,
    /// Refused (`Ok(false)`) when this many live ones already exist: sessions of the same
    /// principal, or login links in all.
    pub max_live: u32,
}

/// A live session as found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRecord {
    pub principal: SessionPrincipal,
    pub created_at: UnixMillis,
    pub expires_at: UnixMillis,
}

/// The dashboard's sessions and one-time login links. See the module doc.
#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Stores a session; `Ok(false)` (nothing stored) when its principal already has
    /// `max_live` sessions unexpired at `now` (also when several nodes sign it in at once).
    async fn create_session(&self, new: NewSession) -> Result<bool>;
    /// The session whose id hashes to `id_sha256`, if it expires after `now` and, for an API
    /// key's, the key still exists and its app is not deleted. One indexed read, no write.
    async fn find_session(&self, id_sha256: &str, now: UnixMillis)
        -> Result<Option<SessionRecord>>;
    /// Ends a session (sign-out); whether there was one.
    async fn delete_session(&self, id_sha256: &str) -> Result<bool>;
    /// Stores a one-time login link; `Ok(false)` when `max_live` unexpired links exist.
    async fn create_login_link(&self, new: NewSession) -> Result<bool>;
    /// Uses up a login link: deletes it and returns its principal if it was unexpired at
    /// `now`. Exactly one of several concurrent calls (on any node) gets the principal.
    async fn consume_login_link(
        &self,
        id_sha256: &str,
        now: UnixMillis,
    ) -> Result<Option<SessionPrincipal>>;
    /// Deletes sessions and links expired at `now`, at most [`PURGE_BATCH`] of each; how many.
    async fn purge_sessions(&self, now: UnixMillis) -> Result<u64>;
}
