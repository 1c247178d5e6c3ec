//! The single writer: one thread owns the write connection and applies queued operations
//! in batches, many per transaction (group commit), so durability costs one fsync per batch
//! rather than one per notification or attempt.
//!
//! It is also the sequencer: after each commit it sends the engine what the batch made
//! attemptable, in commit order, on the event stream. Loads for the engine's window run in
//! the same sequence, which is what makes the engine's watermark race-free.
//!
//! The writer keeps small caches of app and endpoint settings (it is the only one who
//! changes them, so it keeps them coherent); a failed commit clears them.
use std::collections::HashMap;
use std::sync::Arc;

use herald_protocols::Credentials;
use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::{mpsc, oneshot};
use ulid::Ulid;

use super::rows::{self, opt_json, to_json};
use super::schema::backend;
use herald_store::model::*;
use herald_store::{Result, StoreError};

/// Most operations applied in one transaction. Bounds how long one commit holds replies.
const MAX_BATCH: usize = 2048;

pub(crate) type Reply<T> = oneshot::Sender<Result<T>>;

pub(crate) enum Op {
    CreateApp(NewApp, Reply<App>),
    SetCredentials(String, Credentials, Reply<Option<App>>),
    CreateEndpoint(NewEndpoint, Reply<Endpoint>),
    UpdateEndpoint {
        app_id: String,
        id: String,
        patch: EndpointPatch,
        now: Millis,
        reply: Reply<Option<Endpoint>>,
    },
    DeleteEndpoint {
        app_id: String,
        id: String,
        now: Millis,
        reply: Reply<bool>,
    },
    CreateNotification(NewNotification, Reply<CreatedNotification>),
    RetryDelivery {
        id: String,
        now: Millis,
        reply: Reply<Option<Delivery>>,
    },
    Recover {
        app_id: String,
        since: Millis,
        now: Millis,
        reply: Reply<u64>,
    },
    RecordAttempt(AttemptReport),
    Load(LoadRequest),
    Postpone(Vec<Arc<Job>>, Millis),
    SetMeta(String, String, Reply<()>),
    WriteSandbox(SandboxWrite, Reply<SandboxWritten>),
}

/// What to do with an operation's result once the batch's fate is known.
type Completion = Box<dyn FnOnce(Option<&StoreError>) + Send>;

fn complete<T: Send + 'static>(reply: Reply<T>, result: Result<T>) -> Completion {
    Box::new(move |commit_error| {
        let _ = reply.send(match commit_error {
            Some(e) => Err(e.clone()),
            None => result,
        });
    })
}

pub(crate) struct Writer {
    conn: Connection,
    events: mpsc::UnboundedSender<StoreEvent>,
    apps: HashMap<String, Arc<AppCtx>>,
    endpoints: HashMap<String, Arc<EndpointCtx>>,
    /// Apps whose complete endpoint list is in `endpoints`.
    endpoint_lists: HashMap<String, Vec<String>>,
}

impl Writer {
    pub(crate) fn new(conn: Connection, events: mpsc::UnboundedSender<StoreEvent>) -> Writer {
        Writer {
            conn,
            events,
            apps: HashMap::new(),
            endpoints: HashMap::new(),
            endpoint_lists: HashMap::new(),
        }
    }

    /// Runs until every sender of `ops` is gone.
    pub(crate) fn run(mut self, mut ops: mpsc::Receiver<Op>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(first) = ops.blocking_recv() {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match ops.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            self.apply_batch(&mut batch);
        }
    }

    fn apply_batch(&mut self, batch: &mut Vec<Op>) {
        let mut completions: Vec<Completion> = Vec::with_capacity(batch.len());
        let mut events: Vec<StoreEvent> = Vec::new();
        // For engine ops that succeeded: what to tell the engine if the commit then fails.
        let mut on_commit_failure: Vec<StoreEvent> = Vec::new();

        if let Err(e) = self.exec_cached("BEGIN IMMEDIATE") {
            let err = backend(e);
            for op in batch.drain(..) {
                self.fail_op(op, &err);
            }
            return;
        }
        let mut aborted: Option<StoreError> = None;
        let mut ops = batch.drain(..);
        for op in ops.by_ref() {
            if let Err(e) = self.exec_cached("SAVEPOINT op") {
                let err = backend(e);
                self.fail_op(op, &err);
                aborted = Some(err);
                break;
            }
            let mut op_events = Vec::new();
            let (ok, completion, failure_event) = self.apply(op, &mut op_events);
            if ok {
                let _ = self.exec_cached("RELEASE op");
                events.append(&mut op_events);
            } else {
                let _ = self.exec_cached("ROLLBACK TO op");
                let _ = self.exec_cached("RELEASE op");
            }
            if let Some(c) = completion {
                completions.push(c);
            }
            if let Some(ev) = failure_event {
                if ok {
                    on_commit_failure.push(ev);
                } else {
                    events.push(ev);
                }
            }
            // Some errors (disk full, I/O) roll back the whole transaction, not just the
            // savepoint: then nothing of this batch may be reported as done.
            if self.conn.is_autocommit() {
                aborted = Some(StoreError::Backend(
                    "the transaction was rolled back by the database".into(),
                ));
                break;
            }
        }
        let remaining: Vec<Op> = ops.collect();
        let outcome = match aborted {
            Some(err) => Err(err),
            None => self.exec_cached("COMMIT").map_err(backend),
        };
        match outcome {
            Ok(()) => {
                for c in completions {
                    c(None);
                }
                for ev in events {
                    let _ = self.events.send(ev);
                }
            }
            Err(err) => {
                tracing::error!(error = %err, "the batch is rolled back");
                if !self.conn.is_autocommit() {
                    let _ = self.conn.execute_batch("ROLLBACK");
                }
                self.clear_caches();
                for c in completions {
                    c(Some(&err));
                }
                // Every engine-side op of the batch must be retried by the engine.
                for ev in on_commit_failure.into_iter().chain(events) {
                    if matches!(
                        ev,
                        StoreEvent::AttemptNotRecorded { .. }
                            | StoreEvent::LoadFailed { .. }
                            | StoreEvent::Postponed { .. }
                    ) {
                        let _ = self.events.send(ev);
                    }
                }
            }
        }
        for op in remaining {
            self.fail_op(
                op,
                &StoreError::Backend("an earlier operation of its batch failed".into()),
            );
        }
    }

    /// Runs a parameterless statement from the statement cache: the per-operation
    /// savepoints run thousands of times a second and must not be parsed each time.
    fn exec_cached(&self, sql: &str) -> rusqlite::Result<()> {
        self.conn.prepare_cached(sql)?.execute([]).map(|_| ())
    }

    fn clear_caches(&mut self) {
        self.apps.clear();
        self.endpoints.clear();
        self.endpoint_lists.clear();
    }

    /// Reports an operation that could not even start.
    fn fail_op(&self, op: Op, err: &StoreError) {
        match op {
            Op::CreateApp(_, r) => complete(r, Err(err.clone()))(None),
            Op::SetCredentials(_, _, r) => complete(r, Err(err.clone()))(None),
            Op::CreateEndpoint(_, r) => complete(r, Err(err.clone()))(None),
            Op::UpdateEndpoint { reply, .. } => complete(reply, Err(err.clone()))(None),
            Op::DeleteEndpoint { reply, .. } => complete(reply, Err(err.clone()))(None),
            Op::CreateNotification(_, r) => complete(r, Err(err.clone()))(None),
            Op::RetryDelivery { reply, .. } => complete(reply, Err(err.clone()))(None),
            Op::Recover { reply, .. } => complete(reply, Err(err.clone()))(None),
            Op::SetMeta(_, _, r) => complete(r, Err(err.clone()))(None),
            Op::WriteSandbox(_, r) => complete(r, Err(err.clone()))(None),
            Op::RecordAttempt(report) => {
                let _ = self
                    .events
                    .send(StoreEvent::AttemptNotRecorded { job: report.job });
            }
            Op::Load(request) => {
                let _ = self.events.send(StoreEvent::LoadFailed { request });
            }
            Op::Postpone(jobs, _) => {
                let requested = jobs.iter().map(|j| j.seq).collect();
                let _ = self.events.send(StoreEvent::Postponed { jobs, requested });
            }
        }
    }

    /// Applies one operation inside the open transaction. Returns whether it succeeded, the
    /// reply to send after commit, and for engine ops the event that reports a failed commit
    /// (when the op succeeded) or the op's own failure (when it did not).
    fn apply(
        &mut self,
        op: Op,
        events: &mut Vec<StoreEvent>,
    ) -> (bool, Option<Completion>, Option<StoreEvent>) {
        fn done<T: Send + 'static>(
            reply: Reply<T>,
            r: Result<T>,
        ) -> (bool, Option<Completion>, Option<StoreEvent>) {
            (r.is_ok(), Some(complete(reply, r)), None)
        }
        match op {
            Op::CreateApp(new, reply) => {
                let r = self.create_app(new);
                done(reply, r)
            }
            Op::SetCredentials(id, creds, reply) => {
                let r = self.set_credentials(&id, creds, events);
                done(reply, r)
            }
            Op::CreateEndpoint(new, reply) => {
                let r = self.create_endpoint(new);
                done(reply, r)
            }
            Op::UpdateEndpoint {
                app_id,
                id,
                patch,
                now,
                reply,
            } => {
                let r = self.update_endpoint(&app_id, &id, patch, now, events);
                done(reply, r)
            }
            Op::DeleteEndpoint {
                app_id,
                id,
                now,
                reply,
            } => {
                let r = self.delete_endpoint(&app_id, &id, now, events);
                done(reply, r)
            }
            Op::CreateNotification(new, reply) => {
                let r = self.create_notification(new, None, events);
                done(reply, r)
            }
            Op::RetryDelivery { id, now, reply } => {
                let r = self.retry_delivery(&id, now, events);
                done(reply, r)
            }
            Op::Recover {
                app_id,
                since,
                now,
                reply,
            } => {
                let r = self.recover(&app_id, since, now, events);
                done(reply, r)
            }
            Op::SetMeta(k, v, reply) => {
                let r = self
                    .conn
                    .execute(
                        "INSERT INTO meta (key, value) VALUES (?1, ?2)
                         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        [&k, &v],
                    )
                    .map(|_| ())
                    .map_err(backend);
                done(reply, r)
            }
            Op::WriteSandbox(write, reply) => {
                let r = self.write_sandbox(write, events);
                done(reply, r)
            }
            Op::RecordAttempt(report) => {
                let job = report.job.clone();
                match self.record_attempt(report, events) {
                    Ok(()) => (true, None, Some(StoreEvent::AttemptNotRecorded { job })),
                    Err(e) => {
                        tracing::error!(error = %e, delivery = %job.id, "recording an attempt failed");
                        (false, None, Some(StoreEvent::AttemptNotRecorded { job }))
                    }
                }
            }
            Op::Load(request) => match self.load(request) {
                Ok((jobs, exhausted, last_key)) => {
                    events.push(StoreEvent::Loaded {
                        request,
                        jobs,
                        exhausted,
                        last_key,
                    });
                    (true, None, Some(StoreEvent::LoadFailed { request }))
                }
                Err(e) => {
                    tracing::error!(error = %e, "loading due deliveries failed");
                    (false, None, Some(StoreEvent::LoadFailed { request }))
                }
            },
            Op::Postpone(jobs, next_at) => {
                let requested: Vec<i64> = jobs.iter().map(|j| j.seq).collect();
                let unchanged = StoreEvent::Postponed {
                    jobs: jobs.clone(),
                    requested: requested.clone(),
                };
                match self.postpone(jobs, next_at) {
                    Ok(moved) => {
                        events.push(StoreEvent::Postponed {
                            jobs: moved,
                            requested,
                        });
                        (true, None, Some(unchanged))
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "postponing deliveries failed");
                        (false, None, Some(unchanged))
                    }
                }
            }
        }
    }

    // --- caches -------------------------------------------------------------------------

    fn app_ctx(&mut self, id: &str) -> Result<Option<Arc<AppCtx>>> {
        if let Some(ctx) = self.apps.get(id) {
            return Ok(Some(ctx.clone()));
        }
        let Some(app) = rows::get_app(&self.conn, id)? else {
            return Ok(None);
        };
        let ctx = Arc::new(AppCtx::from_app(&app));
        self.apps.insert(id.to_string(), ctx.clone());
        Ok(Some(ctx))
    }

    fn endpoint_ctx(&mut self, id: &str) -> Result<Option<Arc<EndpointCtx>>> {
        if let Some(ctx) = self.endpoints.get(id) {
            return Ok(Some(ctx.clone()));
        }
        let Some(ep) = rows::get_endpoint_by_id(&self.conn, id)? else {
            return Ok(None);
        };
        let ctx = Arc::new(EndpointCtx::from_endpoint(&ep));
        self.endpoints.insert(id.to_string(), ctx.clone());
        Ok(Some(ctx))
    }

    fn app_endpoints(&mut self, app_id: &str) -> Result<Vec<Arc<EndpointCtx>>> {
        if !self.endpoint_lists.contains_key(app_id) {
            let list = rows::list_endpoints(&self.conn, app_id)?;
            let ids = list.iter().map(|e| e.id.clone()).collect();
            for e in list {
                self.endpoints
                    .insert(e.id.clone(), Arc::new(EndpointCtx::from_endpoint(&e)));
            }
            self.endpoint_lists.insert(app_id.to_string(), ids);
        }
        let ids = self.endpoint_lists.get(app_id).cloned().unwrap_or_default();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(ctx) = self.endpoint_ctx(&id)? {
                out.push(ctx);
            }
        }
        Ok(out)
    }

    fn cache_endpoint(&mut self, ep: &Endpoint) -> Arc<EndpointCtx> {
        let ctx = Arc::new(EndpointCtx::from_endpoint(ep));
        self.endpoints.insert(ep.id.clone(), ctx.clone());
        if let Some(list) = self.endpoint_lists.get_mut(&ep.app_id) {
            if !list.contains(&ep.id) {
                list.push(ep.id.clone());
            }
        }
        ctx
    }

    // --- apps and endpoints --------------------------------------------------------------

    fn create_app(&mut self, new: NewApp) -> Result<App> {
        let app = App {
            id: format!("app_{}", Ulid::new()),
            name: new.name,
            profile: new.profile,
            retry: new.retry,
            ack: new.ack,
            credentials: new.credentials,
            created_at: new.now,
        };
        self.conn
            .prepare_cached(
                "INSERT INTO apps (id, name, profile, retry, ack, credentials, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    app.id,
                    app.name,
                    app.profile.name(),
                    opt_json(&app.retry).ok().flatten(),
                    opt_json(&app.ack).ok().flatten(),
                    to_json(&app.credentials).unwrap_or_default(),
                    app.created_at
                ])
            })
            .map_err(backend)?;
        self.apps
            .insert(app.id.clone(), Arc::new(AppCtx::from_app(&app)));
        self.endpoint_lists.insert(app.id.clone(), Vec::new());
        Ok(app)
    }

    fn set_credentials(
        &mut self,
        id: &str,
        creds: Credentials,
        events: &mut Vec<StoreEvent>,
    ) -> Result<Option<App>> {
        let n = self
            .conn
            .execute(
                "UPDATE apps SET credentials = ?2 WHERE id = ?1",
                params![id, to_json(&creds)?],
            )
            .map_err(backend)?;
        if n == 0 {
            return Ok(None);
        }
        let app = rows::get_app(&self.conn, id)?.ok_or(StoreError::NotFound("app"))?;
        let ctx = Arc::new(AppCtx::from_app(&app));
        self.apps.insert(id.to_string(), ctx.clone());
        events.push(StoreEvent::AppChanged(ctx));
        Ok(Some(app))
    }

    fn create_endpoint(&mut self, new: NewEndpoint) -> Result<Endpoint> {
        if self.app_ctx(&new.app_id)?.is_none() {
            return Err(StoreError::NotFound("app"));
        }
        let ep = Endpoint {
            id: format!("ep_{}", Ulid::new()),
            app_id: new.app_id,
            url: new.url,
            event_types: new.event_types,
            retry: new.retry,
            ack: new.ack,
            max_in_flight: new.max_in_flight,
            ordered: new.ordered,
            enabled: new.enabled,
            created_at: new.now,
            updated_at: new.now,
        };
        self.write_endpoint(&ep, true)?;
        // Make sure the app's list is complete before adding to it.
        self.app_endpoints(&ep.app_id)?;
        self.cache_endpoint(&ep);
        Ok(ep)
    }

    fn write_endpoint(&self, ep: &Endpoint, insert: bool) -> Result<()> {
        let sql = if insert {
            "INSERT INTO endpoints (id, app_id, url, event_types, retry, ack, max_in_flight, ordered, enabled, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
        } else {
            "UPDATE endpoints SET url = ?3, event_types = ?4, retry = ?5, ack = ?6, max_in_flight = ?7,
                ordered = ?8, enabled = ?9, updated_at = ?11
             WHERE id = ?1 AND app_id = ?2"
        };
        self.conn
            .prepare_cached(sql)
            .and_then(|mut s| {
                s.execute(params![
                    ep.id,
                    ep.app_id,
                    ep.url,
                    opt_json(&ep.event_types).ok().flatten(),
                    opt_json(&ep.retry).ok().flatten(),
                    opt_json(&ep.ack).ok().flatten(),
                    ep.max_in_flight,
                    ep.ordered,
                    ep.enabled,
                    ep.created_at,
                    ep.updated_at
                ])
            })
            .map(|_| ())
            .map_err(backend)
    }

    fn update_endpoint(
        &mut self,
        app_id: &str,
        id: &str,
        patch: EndpointPatch,
        now: Millis,
        events: &mut Vec<StoreEvent>,
    ) -> Result<Option<Endpoint>> {
        let Some(mut ep) = rows::get_endpoint(&self.conn, app_id, id)? else {
            return Ok(None);
        };
        if let Some(v) = patch.url {
            ep.url = v;
        }
        if let Some(v) = patch.event_types {
            ep.event_types = v;
        }
        if let Some(v) = patch.retry {
            ep.retry = v;
        }
        if let Some(v) = patch.ack {
            ep.ack = v;
        }
        if let Some(v) = patch.max_in_flight {
            ep.max_in_flight = v;
        }
        if let Some(v) = patch.ordered {
            ep.ordered = v;
        }
        if let Some(v) = patch.enabled {
            ep.enabled = v;
        }
        ep.updated_at = now;
        self.write_endpoint(&ep, false)?;
        let ctx = self.cache_endpoint(&ep);
        events.push(StoreEvent::EndpointChanged(ctx));
        Ok(Some(ep))
    }

    fn delete_endpoint(
        &mut self,
        app_id: &str,
        id: &str,
        now: Millis,
        events: &mut Vec<StoreEvent>,
    ) -> Result<bool> {
        let Some(ep) = rows::get_endpoint(&self.conn, app_id, id)? else {
            return Ok(false);
        };
        self.conn
            .execute(
                "UPDATE endpoints SET deleted = 1, updated_at = ?2 WHERE id = ?1",
                params![id, now],
            )
            .map_err(backend)?;
        let canceled = {
            let mut stmt = self
                .conn
                .prepare_cached(
                    "UPDATE deliveries SET status = 'canceled', next_at = NULL, updated_at = ?2
                     WHERE endpoint_id = ?1 AND status = 'pending' RETURNING seq",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map(params![id, now], |r| r.get::<_, i64>(0))
                .map_err(backend)?;
            rows.collect::<rusqlite::Result<Vec<i64>>>()
                .map_err(backend)?
        };
        self.endpoints.remove(id);
        if let Some(list) = self.endpoint_lists.get_mut(app_id) {
            list.retain(|e| e != id);
        }
        let mut ctx = EndpointCtx::from_endpoint(&ep);
        ctx.deleted = true;
        events.push(StoreEvent::EndpointChanged(Arc::new(ctx)));
        if !canceled.is_empty() {
            events.push(StoreEvent::Canceled(canceled));
        }
        Ok(true)
    }

    // --- notifications -------------------------------------------------------------------

    fn existing_notification(&self, seq: i64) -> Result<CreatedNotification> {
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
    fn write_sandbox(
        &mut self,
        write: SandboxWrite,
        events: &mut Vec<StoreEvent>,
    ) -> Result<SandboxWritten> {
        let payment = super::sandbox::put(&self.conn, &write.payment, write.expected_version)?;
        let mut created = Vec::with_capacity(write.notifications.len());
        let mut own_events = Vec::new();
        for n in write.notifications {
            created.push(self.create_notification(n.new, n.notify_id, &mut own_events)?);
        }
        events.append(&mut own_events);
        Ok(SandboxWritten {
            payment,
            notifications: created,
        })
    }

    /// Stores a notification and its deliveries; `notify_id`, when given, is every new
    /// delivery's notify id instead of a fresh one.
    fn create_notification(
        &mut self,
        new: NewNotification,
        notify_id: Option<String>,
        events: &mut Vec<StoreEvent>,
    ) -> Result<CreatedNotification> {
        if let Some(key) = &new.idempotency_key {
            let found: Option<i64> = self
                .conn
                .prepare_cached(
                    "SELECT seq FROM notifications WHERE app_id = ?1 AND idempotency_key = ?2",
                )
                .and_then(|mut s| s.query_row([&new.app_id, key], |r| r.get(0)).optional())
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
            Some(url) => vec![(
                None,
                url.clone(),
                new.order_key
                    .as_ref()
                    .map(|k| format!("app:{}:{k}", new.app_id)),
            )],
            None => self
                .app_endpoints(&new.app_id)?
                .into_iter()
                .filter(|e| {
                    e.enabled && event_type_matches(e.event_types.as_deref(), &new.event_type)
                })
                .map(|e| {
                    let key = if e.ordered {
                        Some(format!("ep:{}", e.id))
                    } else {
                        new.order_key.as_ref().map(|k| format!("ep:{}:{k}", e.id))
                    };
                    let url = e.url.clone();
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
        let nseq = self
            .conn
            .prepare_cached(
                "INSERT INTO notifications (id, app_id, event_type, payload, notify_url, idempotency_key, order_key, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) RETURNING seq",
            )
            .and_then(|mut s| {
                s.query_row(
                    params![
                        notification.id,
                        notification.app_id,
                        notification.event_type,
                        notification.payload,
                        notification.notify_url,
                        notification.idempotency_key,
                        notification.order_key,
                        notification.created_at
                    ],
                    |r| r.get::<_, i64>(0),
                )
            })
            .map_err(backend)?;

        let payload: Arc<str> = Arc::from(notification.payload.as_str());
        let mut deliveries = Vec::with_capacity(targets.len());
        let mut jobs = Vec::new();
        for (endpoint, url, order_key) in targets {
            let blocked = match &order_key {
                Some(k) => self.has_pending_in_order(k, i64::MAX)?,
                None => false,
            };
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
                    "INSERT INTO deliveries (id, notification_seq, app_id, endpoint_id, url, notify_id, status, attempts, next_at, order_key, created_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', 0, ?7, ?8, ?7, ?7) RETURNING seq",
                )
                .and_then(|mut s| {
                    s.query_row(
                        params![
                            delivery.id,
                            nseq,
                            delivery.app_id,
                            delivery.endpoint_id,
                            delivery.url,
                            delivery.notify_id,
                            new.now,
                            order_key
                        ],
                        |r| r.get::<_, i64>(0),
                    )
                })
                .map_err(backend)?;
            if !blocked {
                jobs.push(Arc::new(Job {
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
            events.push(StoreEvent::Scheduled(jobs));
        }
        Ok(CreatedNotification {
            notification,
            deliveries,
            replayed: false,
        })
    }

    /// True when a pending delivery with this order key and a lower seq exists.
    fn has_pending_in_order(&self, order_key: &str, before_seq: i64) -> Result<bool> {
        self.conn
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM deliveries
                 WHERE order_key = ?1 AND status = 'pending' AND seq < ?2)",
            )
            .and_then(|mut s| s.query_row(params![order_key, before_seq], |r| r.get(0)))
            .map_err(backend)
    }

    // --- deliveries ----------------------------------------------------------------------

    /// Builds jobs for the given delivery seqs (those pending and not blocked by order).
    fn jobs_for(&mut self, seqs: &[i64]) -> Result<Vec<Arc<Job>>> {
        let mut jobs = Vec::with_capacity(seqs.len());
        for &seq in seqs {
            let row = self
                .conn
                .prepare_cached(&format!(
                    "{JOB_SELECT} WHERE d.seq = ?1 AND d.status = 'pending'"
                ))
                .and_then(|mut s| s.query_row([seq], JobRow::from_row).optional())
                .map_err(backend)?;
            if let Some(row) = row {
                if let Some(k) = &row.order_key {
                    if self.has_pending_in_order(k, row.seq)? {
                        continue;
                    }
                }
                if let Some(job) = self.job_from_row(row)? {
                    jobs.push(job);
                }
            }
        }
        Ok(jobs)
    }

    fn job_from_row(&mut self, row: JobRow) -> Result<Option<Arc<Job>>> {
        let Some(app) = self.app_ctx(&row.app_id)? else {
            return Ok(None);
        };
        let endpoint = match &row.endpoint_id {
            Some(id) => match self.endpoint_ctx(id)? {
                Some(e) => Some(e),
                // A pending delivery of a deleted endpoint cannot exist (deletion cancels).
                None => return Ok(None),
            },
            None => None,
        };
        Ok(Some(Arc::new(Job {
            seq: row.seq,
            id: row.id,
            notify_id: row.notify_id,
            notification_id: row.notification_id,
            app,
            endpoint,
            url: row.url,
            event_type: row.event_type,
            payload: Arc::from(row.payload),
            created_at: row.created_at,
            attempts: row.attempts,
            next_at: row.next_at,
            order_key: row.order_key,
        })))
    }

    fn retry_delivery(
        &mut self,
        id: &str,
        now: Millis,
        events: &mut Vec<StoreEvent>,
    ) -> Result<Option<Delivery>> {
        let Some((seq, d)) = rows::get_delivery(&self.conn, id)? else {
            return Ok(None);
        };
        if d.status == DeliveryStatus::Canceled {
            return Err(StoreError::Conflict(
                "the delivery was canceled (its endpoint was deleted)".into(),
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
        self.conn
            .execute(
                "UPDATE deliveries SET status = 'pending', next_at = ?2, updated_at = ?2 WHERE seq = ?1",
                params![seq, now],
            )
            .map_err(backend)?;
        let jobs = self.jobs_for(&[seq])?;
        if !jobs.is_empty() {
            events.push(StoreEvent::Scheduled(jobs));
        }
        Ok(rows::get_delivery(&self.conn, id)?.map(|(_, d)| d))
    }

    /// Puts failed deliveries back to pending in one statement, skipping those whose
    /// endpoint was deleted and those a later delivery of the same order key has overtaken
    /// (reviving them would break the order). The engine is told to reload from `now`.
    fn recover(
        &mut self,
        app_id: &str,
        since: Millis,
        now: Millis,
        events: &mut Vec<StoreEvent>,
    ) -> Result<u64> {
        let n = self
            .conn
            .prepare_cached(
                "UPDATE deliveries SET status = 'pending', next_at = ?3, updated_at = ?3
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
            events.push(StoreEvent::Rewind { from: now });
        }
        Ok(n as u64)
    }

    /// Moves parked jobs to `next_at` if they are still pending with the attempt count the
    /// engine saw. Returns the moved jobs with their new time.
    fn postpone(&mut self, jobs: Vec<Arc<Job>>, next_at: Millis) -> Result<Vec<Arc<Job>>> {
        let mut moved = Vec::with_capacity(jobs.len());
        let mut stmt = self
            .conn
            .prepare_cached(
                "UPDATE deliveries SET next_at = ?3
                 WHERE seq = ?1 AND status = 'pending' AND attempts = ?2",
            )
            .map_err(backend)?;
        for job in jobs {
            if stmt
                .execute(params![job.seq, job.attempts, next_at])
                .map_err(backend)?
                == 1
            {
                let mut j = (*job).clone();
                j.next_at = next_at;
                moved.push(Arc::new(j));
            }
        }
        Ok(moved)
    }

    fn record_attempt(
        &mut self,
        report: AttemptReport,
        events: &mut Vec<StoreEvent>,
    ) -> Result<()> {
        let job = &report.job;
        let a = &report.attempt;
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
        let (status, next_at) = match report.outcome {
            Outcome::Succeeded => (DeliveryStatus::Succeeded, None),
            Outcome::Failed => (DeliveryStatus::Failed, None),
            Outcome::Retry { next_at } => (DeliveryStatus::Pending, Some(next_at)),
        };
        // Conditional on the state the engine saw: a stale outcome changes nothing.
        let applied = self
            .conn
            .prepare_cached(
                "UPDATE deliveries SET status = ?3, attempts = ?4, next_at = ?5, updated_at = ?6
                 WHERE seq = ?1 AND status = 'pending' AND attempts = ?2",
            )
            .and_then(|mut s| {
                s.execute(params![
                    job.seq,
                    job.attempts,
                    status.as_str(),
                    a.n,
                    next_at,
                    a.at
                ])
            })
            .map_err(backend)?
            == 1;
        let (status, updated) = if applied {
            let mut j = (**job).clone();
            j.attempts = a.n;
            if let Some(t) = next_at {
                j.next_at = t;
            }
            (status, Arc::new(j))
        } else {
            let current: Option<String> = self
                .conn
                .prepare_cached("SELECT status FROM deliveries WHERE seq = ?1")
                .and_then(|mut s| s.query_row([job.seq], |r| r.get(0)).optional())
                .map_err(backend)?;
            let current = current
                .as_deref()
                .and_then(DeliveryStatus::parse)
                .unwrap_or(DeliveryStatus::Canceled);
            (current, job.clone())
        };
        events.push(StoreEvent::AttemptRecorded {
            job: updated,
            status,
            applied,
        });
        // Not applied but still pending (the delivery changed meanwhile): hand the engine
        // its current state, so it is not dropped from memory.
        if !applied && status == DeliveryStatus::Pending {
            let jobs = self.jobs_for(&[job.seq])?;
            if !jobs.is_empty() {
                events.push(StoreEvent::Scheduled(jobs));
            }
        }
        // The delivery ended: the next one with its order key may go.
        if applied && status.is_final() {
            if let Some(k) = &job.order_key {
                let next: Option<i64> = self
                    .conn
                    .prepare_cached(
                        "SELECT seq FROM deliveries WHERE order_key = ?1 AND status = 'pending'
                         ORDER BY seq LIMIT 1",
                    )
                    .and_then(|mut s| s.query_row([k], |r| r.get(0)).optional())
                    .map_err(backend)?;
                if let Some(seq) = next {
                    let jobs = self.jobs_for(&[seq])?;
                    if !jobs.is_empty() {
                        events.push(StoreEvent::Scheduled(jobs));
                    }
                }
            }
        }
        Ok(())
    }

    fn load(&mut self, req: LoadRequest) -> Result<LoadOutcome> {
        let rows = {
            let mut stmt = self
                .conn
                .prepare_cached(&format!(
                    "{JOB_SELECT}
                     WHERE d.status = 'pending' AND (d.next_at, d.seq) > (?1, ?2) AND d.next_at <= ?3
                       AND (d.order_key IS NULL OR NOT EXISTS (
                            SELECT 1 FROM deliveries p
                            WHERE p.order_key = d.order_key AND p.status = 'pending' AND p.seq < d.seq))
                     ORDER BY d.next_at, d.seq LIMIT ?4"
                ))
                .map_err(backend)?;
            let rows = stmt
                .query_map(
                    params![req.after.0, req.after.1, req.horizon, req.limit as i64],
                    JobRow::from_row,
                )
                .map_err(backend)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(backend)?
        };
        let exhausted = rows.len() < req.limit;
        let last_key = rows.last().map(|r| (r.next_at, r.seq));
        let mut jobs = Vec::with_capacity(rows.len());
        let mut orphans = Vec::new();
        for row in rows {
            let seq = row.seq;
            match self.job_from_row(row)? {
                Some(job) => jobs.push(job),
                None => orphans.push(seq),
            }
        }
        if !orphans.is_empty() {
            // A pending delivery whose app or endpoint is gone can never be sent.
            tracing::warn!(
                count = orphans.len(),
                "canceling pending deliveries whose app or endpoint is gone"
            );
            let mut stmt = self
                .conn
                .prepare_cached(
                    "UPDATE deliveries SET status = 'canceled', next_at = NULL WHERE seq = ?1 AND status = 'pending'",
                )
                .map_err(backend)?;
            for seq in orphans {
                stmt.execute([seq]).map_err(backend)?;
            }
        }
        Ok((jobs, exhausted, last_key))
    }
}

/// Loaded jobs, whether the range is exhausted, and the last key scanned.
type LoadOutcome = (Vec<Arc<Job>>, bool, Option<(Millis, i64)>);

const JOB_SELECT: &str = "SELECT d.seq, d.id, d.notify_id, n.id, d.app_id, d.endpoint_id, d.url, n.event_type, n.payload,
            d.attempts, d.next_at, d.order_key, n.created_at
     FROM deliveries d JOIN notifications n ON n.seq = d.notification_seq";

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
    next_at: Millis,
    order_key: Option<String>,
    created_at: Millis,
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
