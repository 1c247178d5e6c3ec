//! The writer's share of the dashboard's sign-in state (`herald_store::sessions`): storing
//! sessions and login links under their caps, ending sessions, using up a link (a delete that
//! returns the row, so a link serves once), and purging expired rows in bounded batches.
//! Finding a session is a read (`crate::sessions`).
use rusqlite::{params, OptionalExtension};

use super::Writer;
use crate::schema::backend;
use herald_store::sessions::{NewSession, SessionPrincipal, PURGE_BATCH};
use herald_store::{Result, StoreError, UnixMillis};

/// Which of the two tables.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Table {
    Sessions,
    Links,
}

impl Writer {
    /// Inserts a session (capped per principal) or a link (capped in all).
    pub(super) fn create_session(&mut self, table: Table, new: NewSession) -> Result<bool> {
        let cap = i64::from(new.max_live);
        let live: i64 = match table {
            Table::Sessions => self
                .conn
                .prepare_cached(
                    "SELECT COUNT(*) FROM (SELECT 1 FROM dashboard_sessions
                 WHERE principal = ?1 AND expires_at > ?2 LIMIT ?3)",
                )
                .and_then(|mut s| {
                    s.query_row(params![new.principal.column(), new.now, cap], |r| r.get(0))
                }),
            Table::Links => self
                .conn
                .prepare_cached(
                    "SELECT COUNT(*) FROM (SELECT 1 FROM dashboard_login_links
                 WHERE expires_at > ?1 LIMIT ?2)",
                )
                .and_then(|mut s| s.query_row(params![new.now, cap], |r| r.get(0))),
        }
        .map_err(backend)?;
        if live >= cap {
            return Ok(false);
        }
        let sql = match table {
            Table::Sessions => {
                "INSERT INTO dashboard_sessions (id_sha256, principal, app_id, created_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)"
            }
            Table::Links => {
                "INSERT INTO dashboard_login_links (id_sha256, principal, app_id, created_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)"
            }
        };
        match self.conn.prepare_cached(sql).and_then(|mut s| {
            s.execute(params![
                new.id_sha256,
                new.principal.column(),
                new.principal.app_column(),
                new.now,
                new.expires_at
            ])
        }) {
            Ok(_) => Ok(true),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(StoreError::Conflict("that session id is taken".into()))
            }
            Err(e) => Err(backend(e)),
        }
    }

    pub(super) fn delete_session(&mut self, id_sha256: &str) -> Result<bool> {
        self.conn
            .prepare_cached("DELETE FROM dashboard_sessions WHERE id_sha256 = ?1")
            .and_then(|mut s| s.execute([id_sha256]))
            .map(|n| n > 0)
            .map_err(backend)
    }

    /// Deletes the link whatever its expiry; its principal if it was still valid at `now`.
    pub(super) fn consume_login_link(
        &mut self,
        id_sha256: &str,
        now: UnixMillis,
    ) -> Result<Option<SessionPrincipal>> {
        let row: Option<(String, Option<String>, UnixMillis)> = self
            .conn
            .prepare_cached(
                "DELETE FROM dashboard_login_links WHERE id_sha256 = ?1
                 RETURNING principal, app_id, expires_at",
            )
            .and_then(|mut s| {
                s.query_row([id_sha256], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .optional()
            })
            .map_err(backend)?;
        Ok(row
            .filter(|(_, _, expires_at)| *expires_at > now)
            .and_then(|(p, app, _)| SessionPrincipal::from_columns(&p, app)))
    }

    pub(super) fn purge_sessions(&mut self, now: UnixMillis) -> Result<u64> {
        let mut n = 0;
        for sql in [
            "DELETE FROM dashboard_sessions WHERE id_sha256 IN (
                 SELECT id_sha256 FROM dashboard_sessions WHERE expires_at <= ?1 LIMIT ?2)",
            "DELETE FROM dashboard_login_links WHERE id_sha256 IN (
                 SELECT id_sha256 FROM dashboard_login_links WHERE expires_at <= ?1 LIMIT ?2)",
        ] {
            n += self
                .conn
                .prepare_cached(sql)
                .and_then(|mut s| s.execute(params![now, i64::from(PURGE_BATCH)]))
                .map_err(backend)? as u64;
        }
        Ok(n)
    }
}
