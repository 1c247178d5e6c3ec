//! The writer's notifications: storing one with its deliveries (claimed at birth for the
//! local node when one registered for that), the sandbox's trade changes with theirs, and
//! putting deliveries back to pending by hand (retry, recover).
use std::sync::Arc;

use rusqlite::{params, OptionalExtension};
use ulid::Ulid;

use super::Writer;
use crate::rows;
use crate::schema::backend;
use herald_store::model::*;
use herald_store::queue::Hint;
use herald_store::{Result, StoreError};

impl Writer {
    pub(super) fn existing_notification(&self, seq: i64) -> Result<CreatedNotification> {
        let (_, notification) = rows::get_notification_by_seq(&self.conn, seq)?
            .ok_or(StoreError::NotFound("notification"))?;
        let deliveries = rows::deliveries_of(&self.conn, seq)?
            .into_iter()
            .map(|(_, d)| d)
            .collect();
        Ok(CreatedNotification {
            notification,
            deliveries,
            replayed: true,
        })
    }

    /// The sandbox's trade change and its notifications, all or nothing (the caller's
    /// savepoint rolls back a partial failure).
    pub(super) fn write_sandbox(
        &mut self,
        write: SandboxWrite,
        hints: &mut Vec<Hint>,
    ) -> Result<SandboxWritten> {
        let payment = crate::sandbox::put(&self.conn, &write.payment, write.expected_version)?;
        let mut created = Vec::with_capacity(write.notifications.len());
        let mut own_hints = Vec::new();
        for n in write.notifications {
            created.push(self.create_notification(n.new, n.notify_id, &mut own_hints)?);
        }
        hints.append(&mut own_hints);
        Ok(SandboxWritten {
            payment,
            notifications: created,
        })
    }

    /// Stores a notification and its deliveries; `notify_id`, when given, is every new
    /// delivery's notify id instead of a fresh one.
    pub(super) fn create_notification(
        &mut self,
        new: NewNotification,
        notify_id: Option<String>,
        hints: &mut Vec<Hint>,
    ) -> Result<CreatedNotification> {
        if let Some(key) = &new.idempotency_key {
            let found: Option<i64> = self
                .conn
                .prepare_cached(
                    "SELECT seq FROM notifications WHERE app_id = ?1 AND idempotency_key = ?2",
                )
                .and_then(|mut s| {
                    s.query_row([&new.app_id, key.as_str()], |r| r.get(0))
                        .optional()
                })
                .map_err(backend)?;
            if let Some(seq) = found {
                return self.existing_notification(seq);
            }
        }
        let app = self
            .app_ctx(&new.app_id)?
            .ok_or(StoreError::NotFound("app"))?;

        // Where it goes: (endpoint, url, order key).
        let targets: Vec<(Option<Arc<EndpointCtx>>, String, Option<String>)> = match &new.notify_url
        {
            Some(url) => vec![(None, url.to_string(), new.order_key_for(None))],
            None => self
                .app_endpoints(&new.app_id)?
                .into_iter()
                .filter(|e| new.goes_to(e.enabled, e.event_types.as_deref()))
                .map(|e| {
                    let key = new.order_key_for(Some((&e.id, e.ordered)));
                    let url = e.url.to_string();
                    (Some(e), url, key)
                })
                .collect(),
        };

        let notification = Notification {
            id: format!("ntf_{}", Ulid::new()),
            app_id: new.app_id,
            event_type: new.event_type,
            payload: new.payload,
            notify_url: new.notify_url,
            idempotency_key: new.idempotency_key,
            order_key: new.order_key,
            created_at: new.now,
        };
        // Plain inserts with the new row's seq read back by `last_insert_rowid` (the rowid
        // alias), not `RETURNING seq`: SQLite runs RETURNING as a trigger that buffers its rows
        // in a temporary table, which also makes the statement "multi-write", so each one
        // opened a statement journal and copied every page it touched into it.
        let nseq = self
            .conn
            .prepare_cached(
                "INSERT INTO notifications (id, app_id, event_type, payload, notify_url, idempotency_key, order_key, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    notification.id,
                    notification.app_id,
                    notification.event_type.as_str(),
                    notification.payload,
                    notification.notify_url.as_deref(),
                    notification.idempotency_key.as_deref(),
                    notification.order_key.as_deref(),
                    notification.created_at
                ])
            })
            .map(|_| self.conn.last_insert_rowid())
            .map_err(backend)?;

        let payload: Arc<str> = Arc::from(notification.payload.as_str());
        let birth = self.birth_node.clone();
        let mut deliveries = Vec::with_capacity(targets.len());
        let mut jobs = Vec::new();
        for (endpoint, url, order_key) in targets {
            // Not claimed at birth: a successor of its order key, or a delivery to an
            // endpoint whose breaker holds it back (claims take it when it may go).
            let blocked = match &order_key {
                Some(k) => self.has_pending_in_order(k, i64::MAX)?,
                None => false,
            } || endpoint.as_ref().is_some_and(|e| e.health.blocks(new.now));
            let delivery = Delivery {
                id: format!("dlv_{}", Ulid::new()),
                notification_id: notification.id.clone(),
                app_id: notification.app_id.clone(),
                endpoint_id: endpoint.as_ref().map(|e| e.id.clone()),
                url,
                notify_id: notify_id
                    .clone()
                    .unwrap_or_else(|| app.profile.new_notify_id()),
                status: DeliveryStatus::Pending,
                attempts: 0,
                next_attempt_at: Some(new.now),
                created_at: new.now,
                updated_at: new.now,
            };
            let seq = self
                .conn
                .prepare_cached(
                    "INSERT INTO deliveries (id, notification_seq, app_id, endpoint_id, url, notify_id, status, attempts, next_at, order_key, created_at, updated_at, locked_by)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', 0, ?7, ?8, ?7, ?7, ?9)",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        delivery.id,
                        nseq,
                        delivery.app_id,
                        delivery.endpoint_id,
                        delivery.url,
                        delivery.notify_id,
                        new.now,
                        order_key,
                        if blocked { None } else { birth.as_deref() }
                    ])
                })
                .map(|_| self.conn.last_insert_rowid())
                .map_err(backend)?;
            if !blocked && birth.is_some() {
                jobs.push(Arc::new(ClaimedDelivery {
                    seq,
                    id: delivery.id.clone(),
                    notify_id: delivery.notify_id.clone(),
                    notification_id: notification.id.clone(),
                    app: app.clone(),
                    endpoint,
                    url: delivery.url.clone(),
                    event_type: notification.event_type.clone(),
                    payload: payload.clone(),
                    created_at: notification.created_at,
                    attempts: 0,
                    next_at: new.now,
                    order_key,
                }));
            }
            deliveries.push(delivery);
        }
        if !jobs.is_empty() {
            hints.push(Hint::Claimed(jobs));
        } else if !deliveries.is_empty() && birth.is_none() {
            hints.push(Hint::Work);
        }
        Ok(CreatedNotification {
            notification,
            deliveries,
            replayed: false,
        })
    }

    /// True when a pending delivery with this order key and a lower seq exists.
    pub(super) fn has_pending_in_order(&self, order_key: &str, before_seq: i64) -> Result<bool> {
        self.conn
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM deliveries
                 WHERE order_key = ?1 AND status = 'pending' AND seq < ?2)",
            )
            .and_then(|mut s| s.query_row(params![order_key, before_seq], |r| r.get(0)))
            .map_err(backend)
    }

    pub(super) fn retry_delivery(
        &mut self,
        id: &str,
        now: UnixMillis,
        hints: &mut Vec<Hint>,
    ) -> Result<Option<Delivery>> {
        let Some((seq, d)) = rows::get_delivery(&self.conn, id)? else {
            return Ok(None);
        };
        if d.status == DeliveryStatus::Canceled {
            return Err(StoreError::Conflict(
                "the delivery was canceled (its endpoint or app was deleted)".into(),
            ));
        }
        if self.app_ctx(&d.app_id)?.is_none() {
            return Err(StoreError::Conflict(
                "the delivery's app was deleted".into(),
            ));
        }
        if let Some(ep) = &d.endpoint_id {
            if self.endpoint_ctx(ep)?.is_none() {
                return Err(StoreError::Conflict(
                    "the delivery's endpoint was deleted".into(),
                ));
            }
        }
        if d.status != DeliveryStatus::Pending {
            let later_pending: bool = self
                .conn
                .prepare_cached(
                    "SELECT EXISTS (SELECT 1 FROM deliveries s, deliveries d
                     WHERE d.seq = ?1 AND d.order_key IS NOT NULL AND s.order_key = d.order_key
                       AND s.status = 'pending' AND s.seq > d.seq)",
                )
                .and_then(|mut st| st.query_row([seq], |r| r.get(0)))
                .map_err(backend)?;
            if later_pending {
                return Err(StoreError::Conflict(
                    "a later delivery with the same order key is still pending; retry this one after it ends".into(),
                ));
            }
        }
        // Whoever held it (a pending delivery due later) lets go: it is due now, for any node.
        let held: Option<String> = self
            .conn
            .query_row(
                "SELECT locked_by FROM deliveries WHERE seq = ?1",
                [seq],
                |r| r.get(0),
            )
            .map_err(backend)?;
        self.conn
            .execute(
                "UPDATE deliveries SET status = 'pending', next_at = ?2, updated_at = ?2, locked_by = NULL
                 WHERE seq = ?1",
                params![seq, now],
            )
            .map_err(backend)?;
        if held.is_some() {
            hints.push(Hint::Revoked(vec![seq]));
        }
        hints.push(Hint::Work);
        Ok(rows::get_delivery(&self.conn, id)?.map(|(_, d)| d))
    }

    /// Puts failed deliveries back to pending in one statement, skipping those whose
    /// endpoint was deleted and those a later delivery of the same order key has overtaken
    /// (reviving them would break the order). The engines are told there is work.
    pub(super) fn recover(
        &mut self,
        app_id: &str,
        since: UnixMillis,
        now: UnixMillis,
        hints: &mut Vec<Hint>,
    ) -> Result<u64> {
        if self.app_ctx(app_id)?.is_none() {
            return Ok(0);
        }
        let n = self
            .conn
            .prepare_cached(
                "UPDATE deliveries SET status = 'pending', next_at = ?3, updated_at = ?3, locked_by = NULL
                 WHERE app_id = ?1 AND status = 'failed' AND created_at >= ?2
                   AND (endpoint_id IS NULL OR EXISTS (
                        SELECT 1 FROM endpoints e WHERE e.id = deliveries.endpoint_id AND e.deleted = 0))
                   AND (order_key IS NULL OR NOT EXISTS (
                        SELECT 1 FROM deliveries s WHERE s.order_key = deliveries.order_key
                        AND s.status = 'pending' AND s.seq > deliveries.seq))",
            )
            .and_then(|mut st| st.execute(params![app_id, since, now]))
            .map_err(backend)?;
        if n > 0 {
            hints.push(Hint::Work);
        }
        Ok(n as u64)
    }

    /// `recover` for one endpoint's deliveries; `None` when the app has no such live
    /// endpoint.
    pub(super) fn recover_endpoint(
        &mut self,
        app_id: &str,
        endpoint_id: &str,
        since: UnixMillis,
        now: UnixMillis,
        hints: &mut Vec<Hint>,
    ) -> Result<Option<u64>> {
        if self.app_ctx(app_id)?.is_none() {
            return Ok(None);
        }
        let live = self
            .conn
            .prepare_cached("SELECT 1 FROM endpoints WHERE id = ?1 AND app_id = ?2 AND deleted = 0")
            .and_then(|mut st| st.exists(params![endpoint_id, app_id]))
            .map_err(backend)?;
        if !live {
            return Ok(None);
        }
        let n = self
            .conn
            .prepare_cached(
                "UPDATE deliveries SET status = 'pending', next_at = ?4, updated_at = ?4, locked_by = NULL
                 WHERE app_id = ?1 AND endpoint_id = ?2 AND status = 'failed' AND created_at >= ?3
                   AND (order_key IS NULL OR NOT EXISTS (
                        SELECT 1 FROM deliveries s WHERE s.order_key = deliveries.order_key
                        AND s.status = 'pending' AND s.seq > deliveries.seq))",
            )
            .and_then(|mut st| st.execute(params![app_id, endpoint_id, since, now]))
            .map_err(backend)?;
        if n > 0 {
            hints.push(Hint::Work);
        }
        Ok(Some(n as u64))
    }
}
