//! The writer's side of the engine's queue: claims, conditional outcomes, releases and node
//! leases (see `herald_store::queue` for what each must guarantee).
//!
//! On SQLite all of it runs inside the single writer's group commit, so a claim is one cheap
//! statement among many in a batch, and claims never race each other. One node is the usual
//! case (the database file is locked by one process), but the rules are the same as on
//! PostgreSQL, so the conformance suite runs unchanged.
use std::sync::Arc;

use rusqlite::{params, OptionalExtension};

use super::Writer;
use crate::schema::backend;
use herald_store::model::*;
use herald_store::queue::*;
use herald_store::EventType;
use herald_store::Result;

/// A delivery joined with its notification: everything a [`ClaimedDelivery`] needs.
const JOB_SELECT: &str = "SELECT d.seq, d.id, d.notify_id, n.id, d.app_id, d.endpoint_id, d.url, n.event_type, n.payload,
            d.attempts, d.next_at, d.order_key, n.created_at
     FROM deliveries d JOIN notifications n ON n.seq = d.notification_seq";

/// Pending, unheld deliveries due by `?2` that may be claimed by node `?1`: the first of
/// their order key, and of an endpoint no other node holds (one uncorrelated set, computed
/// once per claim, not a probe per candidate), and not held back by its endpoint's health
/// at `?4` (now). A node that was forgotten (its lease expired) claims nothing until it
/// registers again.
const CLAIMABLE: &str = "EXISTS (SELECT 1 FROM nodes WHERE id = ?1)
       AND d.status = 'pending' AND d.locked_by IS NULL AND d.next_at <= ?2
       AND (d.order_key IS NULL OR NOT EXISTS (
            SELECT 1 FROM deliveries p
            WHERE p.order_key = d.order_key AND p.status = 'pending' AND p.seq < d.seq))
       AND (d.endpoint_id IS NULL OR d.endpoint_id NOT IN (
            SELECT h.endpoint_id FROM deliveries h
            WHERE h.locked_by IS NOT NULL AND h.endpoint_id IS NOT NULL AND h.locked_by <> ?1))
       AND (d.endpoint_id IS NULL OR d.endpoint_id NOT IN (
            SELECT b.id FROM endpoints b
            WHERE b.health_state <> 'closed'
              AND (b.health_state = 'disabled' OR b.breaker_open_until > ?4)))";

impl Writer {
    pub(super) fn register_node(&mut self, p: &LeaseParams, claim_new: bool) -> Result<()> {
        self.conn
            .execute(
                "INSERT INTO nodes (id, lease_until) VALUES (?1, ?2)
                 ON CONFLICT (id) DO UPDATE SET lease_until = excluded.lease_until",
                params![&*p.node, p.now + p.lease],
            )
            .map_err(backend)?;
        if claim_new {
            self.birth_node = Some(p.node.clone());
        }
        Ok(())
    }

    pub(super) fn renew_lease(&mut self, p: &LeaseParams) -> Result<Lease> {
        let n = self
            .conn
            .prepare_cached("UPDATE nodes SET lease_until = ?2 WHERE id = ?1")
            .and_then(|mut s| s.execute(params![&*p.node, p.now + p.lease]))
            .map_err(backend)?;
        Ok(if n == 1 { Lease::Held } else { Lease::Lost })
    }

    /// Stops claiming new deliveries at birth for `node`. The lease is kept (false): SQLite's
    /// claims do not count nodes, and proving that the node holds nothing would read every
    /// pending delivery (no index leads with `locked_by`); a lease that runs out is
    /// forgotten by the next rescue.
    pub(super) fn leave(&mut self, node: &str) -> bool {
        if self.birth_node.as_deref() == Some(node) {
            self.birth_node = None;
        }
        false
    }

    /// Releases what expired nodes held, then forgets those nodes. Nothing to do (one
    /// indexed read) while every node is alive, which is always on a healthy single process;
    /// releasing scans the held rows, which only a lost lease makes necessary.
    pub(super) fn rescue(&mut self, now: UnixMillis, hints: &mut Vec<Hint>) -> Result<u64> {
        let expired: Vec<String> = {
            let mut stmt = self
                .conn
                .prepare_cached("SELECT id FROM nodes WHERE lease_until < ?1")
                .map_err(backend)?;
            let rows = stmt
                .query_map([now], |r| r.get::<_, String>(0))
                .map_err(backend)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(backend)?
        };
        if expired.is_empty() {
            return Ok(0);
        }
        let mut n = 0;
        for node in &expired {
            n += self
                .conn
                .prepare_cached("UPDATE deliveries SET locked_by = NULL WHERE locked_by = ?1")
                .and_then(|mut s| s.execute([node]))
                .map_err(backend)?;
            self.conn
                .prepare_cached("DELETE FROM nodes WHERE id = ?1")
                .and_then(|mut s| s.execute([node]))
                .map_err(backend)?;
        }
        if let Some(node) = &self.birth_node {
            if expired.iter().any(|e| **e == **node) {
                // The local node was forgotten: it re-registers when it learns so.
                self.birth_node = None;
            }
        }
        if n > 0 {
            hints.push(Hint::Work);
        }
        Ok(n as u64)
    }

    pub(super) fn claim(&mut self, p: &ClaimParams) -> Result<Vec<Arc<ClaimedDelivery>>> {
        let rows = {
            let mut stmt = self
                .conn
                .prepare_cached(&format!(
                    "{JOB_SELECT} WHERE {CLAIMABLE} ORDER BY d.next_at, d.seq LIMIT ?3"
                ))
                .map_err(backend)?;
            let rows = stmt
                .query_map(
                    params![&*p.node, p.horizon, p.limit as i64, p.now],
                    JobRow::from_row,
                )
                .map_err(backend)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(backend)?
        };
        let mut jobs = Vec::with_capacity(rows.len());
        let mut orphans = Vec::new();
        for row in rows {
            let seq = row.seq;
            match job_from_row(self, row)? {
                Some(job) => jobs.push(job),
                None => orphans.push(seq),
            }
        }
        let mut lock = self
            .conn
            .prepare_cached("UPDATE deliveries SET locked_by = ?2 WHERE seq = ?1")
            .map_err(backend)?;
        for job in &jobs {
            lock.execute(params![job.seq, &*p.node]).map_err(backend)?;
        }
        drop(lock);
        if !orphans.is_empty() {
            // A pending delivery whose app or endpoint is gone can never be sent.
            tracing::warn!(
                count = orphans.len(),
                "canceling pending deliveries whose app or endpoint is gone"
            );
            let mut stmt = self
                .conn
                .prepare_cached(
                    "UPDATE deliveries SET status = 'canceled', next_at = NULL
                     WHERE seq = ?1 AND status = 'pending'",
                )
                .map_err(backend)?;
            for seq in orphans {
                stmt.execute([seq]).map_err(backend)?;
            }
        }
        Ok(jobs)
    }

    pub(super) fn complete(&mut self, p: CompleteParams) -> Result<Completed> {
        let job = &p.report.job;
        let a = &p.report.attempt;
        let (status, next_at) = p.report.outcome.status_and_next_at();
        let keep = p.keeps();
        // Conditional on the state the engine saw and on the claim: a stale outcome changes
        // nothing.
        let applied = self
            .conn
            .prepare_cached(
                "UPDATE deliveries SET status = ?3, attempts = ?4, next_at = ?5, updated_at = ?6,
                        locked_by = CASE WHEN ?7 THEN locked_by ELSE NULL END
                 WHERE seq = ?1 AND status = 'pending' AND attempts = ?2 AND locked_by = ?8",
            )
            .and_then(|mut s| {
                s.execute(params![
                    job.seq,
                    job.attempts,
                    status.as_str(),
                    a.n,
                    next_at,
                    a.at,
                    keep,
                    &*p.node
                ])
            })
            .map_err(backend)?
            == 1;
        if !applied {
            let current: Option<String> = self
                .conn
                .prepare_cached("SELECT status FROM deliveries WHERE seq = ?1")
                .and_then(|mut s| s.query_row([job.seq], |r| r.get(0)).optional())
                .map_err(backend)?;
            return Ok(Completed {
                applied: false,
                status: current.as_deref().and_then(DeliveryStatus::parse),
                held: None,
                successor: None,
            });
        }
        self.conn
            .prepare_cached(
                "INSERT OR IGNORE INTO attempts (delivery_seq, n, at, duration_ms, status_code, response, error_class, error)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    job.seq,
                    a.n,
                    a.at,
                    a.duration_ms,
                    a.status_code,
                    a.response,
                    a.error_class,
                    a.error
                ])
            })
            .map_err(backend)?;
        let held = if keep {
            let mut j = (**job).clone();
            j.attempts = a.n;
            if let Some(t) = next_at {
                j.next_at = t;
            }
            Some(Arc::new(j))
        } else {
            None
        };
        // The delivery ended: the next one with its order key may go, and this node takes it.
        let mut successor = None;
        if status.is_final() {
            if let Some(k) = &job.order_key {
                let next: Option<(i64, UnixMillis, Option<String>)> = self
                    .conn
                    .prepare_cached(
                        "SELECT seq, next_at, locked_by FROM deliveries
                         WHERE order_key = ?1 AND status = 'pending' ORDER BY seq LIMIT 1",
                    )
                    .and_then(|mut s| {
                        s.query_row([k], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                            .optional()
                    })
                    .map_err(backend)?;
                if let Some((seq, due, None)) = next {
                    if due <= p.horizon {
                        successor = self.claim_one(seq, &p.node)?;
                    }
                }
            }
        }
        Ok(Completed {
            applied: true,
            status: Some(status),
            held,
            successor,
        })
    }

    pub(super) fn held(
        &mut self,
        node: &NodeId,
        horizon: UnixMillis,
    ) -> Result<Vec<Arc<ClaimedDelivery>>> {
        let rows = {
            let mut stmt = self
                .conn
                .prepare_cached(&format!(
                    "{JOB_SELECT} WHERE d.locked_by = ?1 AND d.status = 'pending' AND d.next_at <= ?2
                     ORDER BY d.next_at, d.seq"
                ))
                .map_err(backend)?;
            let rows = stmt
                .query_map(params![&**node, horizon], JobRow::from_row)
                .map_err(backend)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(backend)?
        };
        let mut jobs = Vec::with_capacity(rows.len());
        for row in rows {
            if let Some(job) = job_from_row(self, row)? {
                jobs.push(job);
            }
        }
        Ok(jobs)
    }

    /// Claims one pending, unheld delivery for `node` and builds its job.
    fn claim_one(&mut self, seq: i64, node: &NodeId) -> Result<Option<Arc<ClaimedDelivery>>> {
        let row = self
            .conn
            .prepare_cached(&format!(
                "{JOB_SELECT} WHERE d.seq = ?1 AND d.status = 'pending' AND d.locked_by IS NULL"
            ))
            .and_then(|mut s| s.query_row([seq], JobRow::from_row).optional())
            .map_err(backend)?;
        let Some(row) = row else { return Ok(None) };
        let Some(job) = job_from_row(self, row)? else {
            return Ok(None);
        };
        self.conn
            .prepare_cached("UPDATE deliveries SET locked_by = ?2 WHERE seq = ?1")
            .and_then(|mut s| s.execute(params![seq, &**node]))
            .map_err(backend)?;
        Ok(Some(job))
    }

    pub(super) fn release(&mut self, p: &ReleaseParams, hints: &mut Vec<Hint>) -> Result<Vec<i64>> {
        let mut released = Vec::with_capacity(p.jobs.len());
        let mut stmt = self
            .conn
            .prepare_cached(
                "UPDATE deliveries SET locked_by = NULL, next_at = coalesce(?4, next_at)
                 WHERE seq = ?1 AND status = 'pending' AND attempts = ?2 AND locked_by = ?3",
            )
            .map_err(backend)?;
        for &(seq, attempts) in &p.jobs {
            if stmt
                .execute(params![seq, attempts, &*p.node, p.next_at])
                .map_err(backend)?
                == 1
            {
                released.push(seq);
            }
        }
        if !released.is_empty() {
            hints.push(Hint::Work);
        }
        Ok(released)
    }
}

/// Builds a job from its row with the current app and endpoint settings; `None` when the
/// app or endpoint is gone.
fn job_from_row(w: &mut Writer, row: JobRow) -> Result<Option<Arc<ClaimedDelivery>>> {
    let Some(app) = w.app_ctx(&row.app_id)? else {
        return Ok(None);
    };
    let endpoint = match &row.endpoint_id {
        Some(id) => match w.endpoint_ctx(id)? {
            Some(e) => Some(e),
            // A pending delivery of a deleted endpoint cannot exist (deletion cancels).
            None => return Ok(None),
        },
        None => None,
    };
    Ok(Some(Arc::new(ClaimedDelivery {
        seq: row.seq,
        id: row.id,
        notify_id: row.notify_id,
        notification_id: row.notification_id,
        app,
        endpoint,
        url: row.url,
        event_type: EventType::from_stored(row.event_type),
        payload: Arc::from(row.payload),
        created_at: row.created_at,
        attempts: row.attempts,
        next_at: row.next_at,
        order_key: row.order_key,
    })))
}

struct JobRow {
    seq: i64,
    id: String,
    notify_id: String,
    notification_id: String,
    app_id: String,
    endpoint_id: Option<String>,
    url: String,
    event_type: String,
    payload: String,
    attempts: u32,
    next_at: UnixMillis,
    order_key: Option<String>,
    created_at: UnixMillis,
}

impl JobRow {
    fn from_row(r: &rusqlite::Row) -> rusqlite::Result<JobRow> {
        Ok(JobRow {
            seq: r.get(0)?,
            id: r.get(1)?,
            notify_id: r.get(2)?,
            notification_id: r.get(3)?,
            app_id: r.get(4)?,
            endpoint_id: r.get(5)?,
            url: r.get(6)?,
            event_type: r.get(7)?,
            payload: r.get(8)?,
            attempts: r.get(9)?,
            next_at: r.get(10)?,
            order_key: r.get(11)?,
            created_at: r.get(12)?,
        })
    }
}
