//! The writer's operational side: recording endpoint health (the breaker rule itself is
//! `herald_store::health`), apps' ops notification targets, and retention purges. Each is a
//! short write inside the writer's group commit, so a purge batch waits its turn between
//! claims and outcomes and never holds the database for long.
use rusqlite::params;

use super::Writer;
use crate::rows;
use crate::schema::backend;
use herald_store::health::*;
use herald_store::queue::Hint;
use herald_store::Result;

impl Writer {
    pub(super) fn record_health(
        &mut self,
        report: HealthReport,
        hints: &mut Vec<Hint>,
    ) -> Result<Option<HealthRecorded>> {
        let Some(mut ep) = rows::get_endpoint_by_id(&self.conn, &report.endpoint_id)? else {
            return Ok(None);
        };
        let was_blocked = ep.health.blocks(report.now);
        let transition = report.apply(&mut ep.health);
        if transition == Some(HealthTransition::Disabled) {
            ep.enabled = false;
            ep.updated_at = report.now;
        }
        self.write_endpoint(&ep, false)?;
        let ctx = self.cache_endpoint(&ep);
        let mut ops = None;
        if transition.is_some() {
            hints.push(Hint::EndpointChanged(ctx));
            if was_blocked && !ep.health.blocks(report.now) {
                hints.push(Hint::Work);
            }
            ops = self.read_ops(&ep.app_id)?;
        }
        Ok(Some(HealthRecorded {
            endpoint: ep,
            transition,
            ops,
        }))
    }

    fn read_ops(&self, app_id: &str) -> Result<Option<OpsTarget>> {
        rows::get_app_ops(&self.conn, &self.sealer, app_id).map(Option::flatten)
    }

    pub(super) fn set_app_ops(&mut self, app_id: &str, ops: Option<OpsTarget>) -> Result<bool> {
        let (url, sealed) = match &ops {
            Some(t) => (
                Some(t.url.clone()),
                Some(
                    self.sealer
                        .seal_credentials(&rows::ops_scope(app_id), &t.credentials)?,
                ),
            ),
            None => (None, None),
        };
        let n = self
            .conn
            .execute(
                "UPDATE apps SET ops_url = ?2, ops_credentials = ?3 WHERE id = ?1",
                params![app_id, url, sealed],
            )
            .map_err(backend)?;
        Ok(n == 1)
    }

    /// One retention batch (see `OpsStore::purge_finished`).
    pub(super) fn purge_finished(&mut self, p: PurgeParams) -> Result<Purged> {
        let seqs: Vec<i64> = {
            let mut stmt = self
                .conn
                .prepare_cached(
                    "SELECT n.seq FROM notifications n
                     WHERE n.created_at < ?1
                       AND NOT EXISTS (SELECT 1 FROM deliveries d
                                       WHERE d.notification_seq = n.seq
                                         AND (d.status = 'pending' OR d.updated_at >= ?1))
                     ORDER BY n.created_at, n.seq LIMIT ?2",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map(params![p.before, p.limit.max(1)], |r| r.get::<_, i64>(0))
                .map_err(backend)?;
            rows.collect::<rusqlite::Result<_>>().map_err(backend)?
        };
        let mut purged = Purged::default();
        for seq in seqs {
            purged.attempts += self
                .conn
                .prepare_cached(
                    "DELETE FROM attempts WHERE delivery_seq IN
                       (SELECT seq FROM deliveries WHERE notification_seq = ?1)",
                )
                .and_then(|mut s| s.execute([seq]))
                .map_err(backend)? as u64;
            purged.deliveries += self
                .conn
                .prepare_cached("DELETE FROM deliveries WHERE notification_seq = ?1")
                .and_then(|mut s| s.execute([seq]))
                .map_err(backend)? as u64;
            purged.notifications += self
                .conn
                .prepare_cached("DELETE FROM notifications WHERE seq = ?1")
                .and_then(|mut s| s.execute([seq]))
                .map_err(backend)? as u64;
        }
        Ok(purged)
    }
}
