//! The dashboard's sessions and one-time login links on PostgreSQL
//! (`herald_store::SessionStore`), shared by every node on the database. Creating one counts
//! the live ones under a transaction-scoped advisory lock (per principal for sessions, one
//! for links), so two nodes signing the same principal in cannot pass the cap together;
//! using up a link is one `DELETE ... RETURNING`, which exactly one of racing nodes wins;
//! finding a session is one read by primary key that also checks an API key's session
//! against its key and app.
use deadpool_postgres::GenericClient;
use tokio_postgres::error::SqlState;

use herald_store::sessions::{NewSession, SessionPrincipal, SessionRecord, PURGE_BATCH};
use herald_store::UnixMillis;
use herald_store::{Result, StoreError};

use crate::rows::col;
use crate::{backend, violated, Inner};

/// Namespaces of the advisory locks taken here (the first key of `pg_advisory_xact_lock`).
const SESSION_LOCK: i32 = 0x4853_4553; // "HSES"
const LINK_LOCK: i32 = 0x484c_4e4b; // "HLNK"

/// Inserts a session (`links` false, capped per principal) or a login link (capped in all).
pub(crate) async fn create(inner: &Inner, new: NewSession, links: bool) -> Result<bool> {
    let mut client = inner.client().await?;
    let tx = client.transaction().await.map_err(backend)?;
    let cap = i64::from(new.max_live);
    let principal = new.principal.column();
    let live: i64 = if links {
        tx.execute("SELECT pg_advisory_xact_lock($1, 0)", &[&LINK_LOCK])
            .await
            .map_err(backend)?;
        let row = tx
            .query_one(
                "SELECT count(*) FROM (SELECT 1 FROM dashboard_login_links
                 WHERE expires_at > $1 LIMIT $2) l",
                &[&new.now, &cap],
            )
            .await
            .map_err(backend)?;
        col(&row, 0)?
    } else {
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))",
            &[&SESSION_LOCK, &principal],
        )
        .await
        .map_err(backend)?;
        let row = tx
            .query_one(
                "SELECT count(*) FROM (SELECT 1 FROM dashboard_sessions
                 WHERE principal = $1 AND expires_at > $2 LIMIT $3) l",
                &[&principal, &new.now, &cap],
            )
            .await
            .map_err(backend)?;
        col(&row, 0)?
    };
    if live >= cap {
        return Ok(false);
    }
    let sql = if links {
        "INSERT INTO dashboard_login_links (id_sha256, principal, app_id, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5)"
    } else {
        "INSERT INTO dashboard_sessions (id_sha256, principal, app_id, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5)"
    };
    tx.execute(
        sql,
        &[
            &new.id_sha256,
            &principal,
            &new.principal.app_column(),
            &new.now,
            &new.expires_at,
        ],
    )
    .await
    .map_err(|e| match violated(&e, &SqlState::UNIQUE_VIOLATION) {
        Some(_) => StoreError::Conflict("that session id is taken".into()),
        None => backend(e),
    })?;
    tx.commit().await.map_err(backend)?;
    Ok(true)
}

pub(crate) async fn find(
    c: &impl GenericClient,
    id_sha256: &str,
    now: UnixMillis,
) -> Result<Option<SessionRecord>> {
    let stmt = c
        .prepare_cached(
            "SELECT s.principal, s.app_id, s.created_at, s.expires_at FROM dashboard_sessions s
             WHERE s.id_sha256 = $1 AND s.expires_at > $2
               AND (s.principal = 'admin' OR EXISTS (
                    SELECT 1 FROM api_keys k JOIN apps a ON a.id = k.app_id
                    WHERE k.id = s.principal AND k.app_id = s.app_id AND a.deleted_at IS NULL))",
        )
        .await
        .map_err(backend)?;
    let Some(row) = c
        .query_opt(&stmt, &[&id_sha256, &now])
        .await
        .map_err(backend)?
    else {
        return Ok(None);
    };
    let principal: String = col(&row, 0)?;
    let app_id: Option<String> = col(&row, 1)?;
    let (created_at, expires_at): (UnixMillis, UnixMillis) = (col(&row, 2)?, col(&row, 3)?);
    Ok(
        SessionPrincipal::from_columns(&principal, app_id).map(|principal| SessionRecord {
            principal,
            created_at,
            expires_at,
        }),
    )
}

pub(crate) async fn delete(inner: &Inner, id_sha256: &str) -> Result<bool> {
    let client = inner.client().await?;
    let n = client
        .execute(
            "DELETE FROM dashboard_sessions WHERE id_sha256 = $1",
            &[&id_sha256],
        )
        .await
        .map_err(backend)?;
    Ok(n > 0)
}

pub(crate) async fn consume_link(
    inner: &Inner,
    id_sha256: &str,
    now: UnixMillis,
) -> Result<Option<SessionPrincipal>> {
    let client = inner.client().await?;
    let Some(row) = client
        .query_opt(
            "DELETE FROM dashboard_login_links WHERE id_sha256 = $1
             RETURNING principal, app_id, expires_at",
            &[&id_sha256],
        )
        .await
        .map_err(backend)?
    else {
        return Ok(None);
    };
    let expires_at: UnixMillis = col(&row, 2)?;
    if expires_at <= now {
        return Ok(None);
    }
    let principal: String = col(&row, 0)?;
    Ok(SessionPrincipal::from_columns(&principal, col(&row, 1)?))
}

pub(crate) async fn purge(inner: &Inner, now: UnixMillis) -> Result<u64> {
    let client = inner.client().await?;
    let batch = i64::from(PURGE_BATCH);
    let mut n = 0;
    for sql in [
        "DELETE FROM dashboard_sessions WHERE id_sha256 IN (
             SELECT id_sha256 FROM dashboard_sessions WHERE expires_at <= $1 LIMIT $2)",
        "DELETE FROM dashboard_login_links WHERE id_sha256 IN (
             SELECT id_sha256 FROM dashboard_login_links WHERE expires_at <= $1 LIMIT $2)",
    ] {
        n += client
            .execute(sql, &[&now, &batch])
            .await
            .map_err(backend)?;
    }
    Ok(n)
}
