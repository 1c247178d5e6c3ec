//! The writer's operational side: recording endpoint health (the breaker rule itself is
//! `herald_store::health`) with the ops notification it causes (an outbox, committed in the
//! same operation), apps' ops targets (internal apps, see `herald_store::ops_outbox`), and
//! retention purges. Each is a
//! short write inside the writer's group commit, so a purge batch waits its turn between
//! claims and outcomes and never holds the database for long.
use rusqlite::{params, OptionalExtension};

use super::Writer;
use crate::rows;
use crate::schema::backend;
use herald_store::health::*;
use herald_store::model::{AppPatch, EndpointPatch, UnixMillis};
use herald_store::ops_outbox::{
    ops_app, ops_endpoint, ops_notification as ops_notification_for, OpsTarget, INTERNAL_OPS,
};
use herald_store::queue::Hint;
use herald_store::EndpointUrl;
use herald_store::Result;

impl Writer {
    /// Applies the report under the writer and, when it caused a notified transition of an
    /// endpoint whose app has an ops target, stores the ops notification in the same
    /// operation (one savepoint: both commit or neither does; see `herald_store::ops_outbox`).
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
        let mut own_hints = Vec::new();
        let mut ops_notification = None;
        if let Some(t) = transition {
            if let Some(ops_app_id) = self.ops_app_of(&ep.app_id)? {
                if let Some(new) = ops_notification_for(&ops_app_id, t, &ep, report.now) {
                    let created = self.create_notification(new, None, &mut own_hints)?;
                    ops_notification = Some(created.notification.id);
                }
            }
        }
        let ctx = self.cache_endpoint(&ep);
        if transition.is_some() {
            hints.push(Hint::EndpointChanged(ctx));
            if was_blocked && !ep.health.blocks(report.now) {
                hints.push(Hint::Work);
            }
        }
        hints.append(&mut own_hints);
        Ok(Some(HealthRecorded {
            endpoint: ep,
            transition,
            ops_notification,
        }))
    }

    /// The live internal app holding `app_id`'s ops target, if it has one (an internal app
    /// never has one).
    fn ops_app_of(&self, app_id: &str) -> Result<Option<String>> {
        self.conn
            .prepare_cached(
                "SELECT o.id FROM apps a JOIN apps o ON o.id = a.ops_app_id
                 WHERE a.id = ?1 AND a.internal IS NULL AND o.deleted_at IS NULL",
            )
            .and_then(|mut s| s.query_row([app_id], |r| r.get(0)).optional())
            .map_err(backend)
    }

    /// Sets, changes or clears the app's ops target (see `OpsStore::set_app_ops`).
    pub(super) fn set_app_ops(
        &mut self,
        app_id: &str,
        ops: Option<OpsTarget>,
        now: UnixMillis,
        hints: &mut Vec<Hint>,
    ) -> Result<bool> {
        let row: Option<(Option<String>, Option<String>)> = self
            .conn
            .prepare_cached(
                "SELECT internal, ops_app_id FROM apps WHERE id = ?1 AND deleted_at IS NULL",
            )
            .and_then(|mut s| {
                s.query_row([app_id], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
            })
            .map_err(backend)?;
        let Some((internal, current)) = row else {
            return Ok(false);
        };
        if internal.is_some() {
            return Ok(false);
        }
        let current = match current {
            Some(id) => rows::get_app(&self.conn, &self.sealer, &id)?.map(|a| a.id),
            None => None,
        };
        match (ops, current) {
            (Some(target), Some(ops_app_id)) => {
                self.set_credentials(&ops_app_id, target.credentials, hints)?;
                let patch = AppPatch {
                    retry: Some(target.retry),
                    ..AppPatch::default()
                };
                self.update_app(&ops_app_id, patch, hints)?;
                let ep_id: Option<String> = self
                    .conn
                    .query_row(
                        "SELECT id FROM endpoints WHERE app_id = ?1 AND deleted = 0",
                        [&ops_app_id],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(backend)?;
                let patch = EndpointPatch {
                    url: Some(EndpointUrl::from_stored(target.url.clone())),
                    enabled: Some(true),
                    ..EndpointPatch::default()
                };
                match ep_id {
                    Some(ep_id) => {
                        self.update_endpoint(&ops_app_id, &ep_id, patch, now, hints)?;
                    }
                    None => {
                        self.create_endpoint(ops_endpoint(&ops_app_id, &target.url, now))?;
                    }
                }
            }
            (Some(target), None) => {
                let app = self.create_app(ops_app(app_id, &target, now))?;
                self.conn
                    .execute(
                        "UPDATE apps SET internal = ?2 WHERE id = ?1",
                        params![app.id, INTERNAL_OPS],
                    )
                    .map_err(backend)?;
                self.create_endpoint(ops_endpoint(&app.id, &target.url, now))?;
                self.conn
                    .execute(
                        "UPDATE apps SET ops_app_id = ?2, ops_url = NULL, ops_credentials = NULL
                         WHERE id = ?1",
                        params![app_id, app.id],
                    )
                    .map_err(backend)?;
            }
            (None, current) => {
                if let Some(ops_app_id) = current {
                    self.delete_app(&ops_app_id, now, hints)?;
                }
                self.conn
                    .execute(
                        "UPDATE apps SET ops_app_id = NULL, ops_url = NULL, ops_credentials = NULL
                         WHERE id = ?1",
                        [app_id],
                    )
                    .map_err(backend)?;
            }
        }
        Ok(true)
    }

    /// Moves ops targets set before migration 8 (the URL and sealed secret on the app's
    /// row) into internal apps, in one transaction, once at open. `now` stamps the new rows.
    pub(crate) fn upgrade_legacy_ops_targets(&mut self, now: UnixMillis) -> Result<()> {
        let ids: Vec<String> = {
            let mut stmt = self
                .conn
                .prepare(
                    "SELECT id FROM apps WHERE ops_url IS NOT NULL AND ops_app_id IS NULL
                       AND deleted_at IS NULL AND internal IS NULL",
                )
                .map_err(backend)?;
            let rows = stmt.query_map([], |r| r.get(0)).map_err(backend)?;
            rows.collect::<rusqlite::Result<_>>().map_err(backend)?
        };
        if ids.is_empty() {
            return Ok(());
        }
        self.conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(backend)?;
        let result = (|| {
            let mut ignored = Vec::new();
            for id in &ids {
                if let Some(target) = rows::get_legacy_app_ops(&self.conn, &self.sealer, id)? {
                    self.set_app_ops(id, Some(target), now, &mut ignored)?;
                }
            }
            Ok(())
        })();
        match result {
            Ok(()) => self.conn.execute_batch("COMMIT").map_err(backend),
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
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
