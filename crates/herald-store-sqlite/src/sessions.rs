//! Finding a dashboard session (`herald_store::SessionStore::find_session`) on the reader
//! pool: one read by primary key that also checks an API key's session against its key and
//! app (both by primary key), so a revoked key's sessions end without a write.
use rusqlite::{params, Connection, OptionalExtension};

use super::schema::backend;
use herald_store::sessions::{SessionPrincipal, SessionRecord};
use herald_store::Result;
use herald_store::UnixMillis;

pub(crate) fn find_session(
    conn: &Connection,
    id_sha256: &str,
    now: UnixMillis,
) -> Result<Option<SessionRecord>> {
    let row: Option<(String, Option<String>, UnixMillis, UnixMillis)> = conn
        .prepare_cached(
            "SELECT s.principal, s.app_id, s.created_at, s.expires_at FROM dashboard_sessions s
             WHERE s.id_sha256 = ?1 AND s.expires_at > ?2
               AND (s.principal = 'admin' OR EXISTS (
                    SELECT 1 FROM api_keys k JOIN apps a ON a.id = k.app_id
                    WHERE k.id = s.principal AND k.app_id = s.app_id AND a.deleted_at IS NULL))",
        )
        .and_then(|mut s| {
            s.query_row(params![id_sha256, now], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .optional()
        })
        .map_err(backend)?;
    Ok(row.and_then(|(p, app, created_at, expires_at)| {
        Some(SessionRecord {
            principal: SessionPrincipal::from_columns(&p, app)?,
            created_at,
            expires_at,
        })
    }))
}
