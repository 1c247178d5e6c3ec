//! The single writer: one thread owns the write connection and applies queued operations
//! in batches, many per transaction (group commit), so durability costs one fsync per batch
//! rather than one per notification, claim or attempt.
//!
//! Each operation runs in its own savepoint, so one failing operation rolls back alone
//! (except the two hot ones, which validate before they write: see `needs_savepoint`); an
//! error that rolls back the whole transaction (disk full, I/O) fails every operation of the
//! batch, and nothing of it is reported as done. Replies and hints go out only after the
//! commit.
//!
//! The operations themselves live by concern: [`admin`] (apps, their API keys and endpoints,
//! and the caches of their settings), [`notifications`] (creating notifications and sandbox
//! trades, manual retry and recover), [`queue`] (the engine's claims, outcomes, releases and
//! leases), [`sources`] (the inbound gateway's sources with their apps and endpoints),
//! [`ops`] (endpoint health, apps' ops targets, retention purges) and [`sessions`] (the
//! dashboard's sessions and login links).
//! The writer keeps small caches of app and endpoint settings (it is the only one who changes
//! them, so it keeps them coherent); a failed commit clears them.
mod admin;
mod notifications;
mod ops;
mod queue;
mod sessions;
mod sources;

use std::collections::HashMap;
use std::sync::Arc;

use herald_protocols::Credentials;
use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use super::schema::backend;
use super::HintHub;
use herald_store::health::{HealthRecorded, HealthReport, OpsTarget, PurgeParams, Purged};
use herald_store::model::*;
use herald_store::queue::*;
use herald_store::sessions::{NewSession, SessionPrincipal};
use herald_store::{Result, SealCensus, Sealer, StoreError};

pub(crate) use self::sessions::Table;

/// Most operations applied in one transaction. Bounds how long one commit holds replies.
const MAX_BATCH: usize = 2048;

pub(crate) type Reply<T> = oneshot::Sender<Result<T>>;

pub(crate) enum Op {
    CreateApp(NewApp, Reply<App>),
    SetCredentials(String, Credentials, Reply<Option<App>>),
    ResealCredentials(Reply<SealCensus>),
    UpdateApp(String, AppPatch, Reply<Option<App>>),
    DeleteApp(String, UnixMillis, Reply<Option<u64>>),
    CreateApiKey(NewApiKey, Reply<ApiKey>),
    DeleteApiKey(String, String, Reply<bool>),
    TouchApiKey(String, UnixMillis, Reply<()>),
    CreateEndpoint(NewEndpoint, Reply<Endpoint>),
    UpdateEndpoint {
        app_id: String,
        id: String,
        patch: EndpointPatch,
        now: UnixMillis,
        reply: Reply<Option<Endpoint>>,
    },
    DeleteEndpoint {
        app_id: String,
        id: String,
        now: UnixMillis,
        reply: Reply<bool>,
    },
    CreateNotification(NewNotification, Reply<CreatedNotification>),
    RetryDelivery {
        id: String,
        now: UnixMillis,
        reply: Reply<Option<Delivery>>,
    },
    Recover {
        app_id: String,
        since: UnixMillis,
        now: UnixMillis,
        reply: Reply<u64>,
    },
    SetMeta(String, String, Reply<()>),
    SetMetaIfAbsent(String, String, Reply<bool>),
    CreateSource(Box<NewSource>, Reply<Source>),
    DeleteSource {
        id: String,
        now: UnixMillis,
        reply: Reply<bool>,
    },
    WriteSandbox(SandboxWrite, Reply<SandboxWritten>),
    RegisterNode(LeaseParams, bool, Reply<()>),
    RenewLease(LeaseParams, Reply<Lease>),
    Leave(NodeId, Reply<bool>),
    Rescue(UnixMillis, Reply<u64>),
    Claim(ClaimParams, Reply<Vec<Arc<ClaimedDelivery>>>),
    Complete(Box<CompleteParams>, Reply<Completed>),
    Release(ReleaseParams, Reply<Vec<i64>>),
    Held(HeldParams, Reply<Vec<Arc<ClaimedDelivery>>>),
    RecordHealth(HealthReport, Reply<Option<HealthRecorded>>),
    SetAppOps(String, Option<OpsTarget>, UnixMillis, Reply<bool>),
    Purge(PurgeParams, Reply<Purged>),
    /// `AdminStore::recover_endpoint`.
    RecoverEndpoint {
        app_id: String,
        endpoint_id: String,
        since: UnixMillis,
        now: UnixMillis,
        reply: Reply<Option<u64>>,
    },
    /// A dashboard session or login link (`SessionStore`).
    CreateSession(Table, NewSession, Reply<bool>),
    DeleteSession(String, Reply<bool>),
    ConsumeLoginLink(String, UnixMillis, Reply<Option<SessionPrincipal>>),
    PurgeSessions(UnixMillis, Reply<u64>),
    /// Stop after this batch (see `MetaStore::close`).
    Close(Reply<()>),
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
    hints: Arc<HintHub>,
    /// Seals credentials as they are written, opens them as they are read.
    sealer: Sealer,
    apps: HashMap<String, Arc<AppCtx>>,
    endpoints: HashMap<String, Arc<EndpointCtx>>,
    /// Apps whose complete endpoint list is in `endpoints`.
    endpoint_lists: HashMap<String, Vec<String>>,
    /// The node new deliveries are claimed for at birth (see `Queue::register_node`).
    birth_node: Option<NodeId>,
}

impl Writer {
    pub(crate) fn new(conn: Connection, hints: Arc<HintHub>, sealer: Sealer) -> Writer {
        Writer {
            conn,
            hints,
            sealer,
            apps: HashMap::new(),
            endpoints: HashMap::new(),
            endpoint_lists: HashMap::new(),
            birth_node: None,
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
            let closing = batch.iter().any(|op| matches!(op, Op::Close(_)));
            self.apply_batch(&mut batch);
            if closing {
                // Dropping the receiver fails whatever is queued or sent from now on.
                ops.close();
                while let Ok(op) = ops.try_recv() {
                    fail_op(op, &StoreError::Closed);
                }
                return;
            }
        }
    }

    fn apply_batch(&mut self, batch: &mut Vec<Op>) {
        let mut completions: Vec<Completion> = Vec::with_capacity(batch.len());
        let mut hints: Vec<Hint> = Vec::new();

        if let Err(e) = self.exec_cached("BEGIN IMMEDIATE") {
            let err = backend(e);
            for op in batch.drain(..) {
                fail_op(op, &err);
            }
            return;
        }
        let mut aborted: Option<StoreError> = None;
        let mut ops = batch.drain(..);
        for op in ops.by_ref() {
            let guarded = needs_savepoint(&op);
            if guarded {
                if let Err(e) = self.exec_cached("SAVEPOINT op") {
                    let err = backend(e);
                    fail_op(op, &err);
                    aborted = Some(err);
                    break;
                }
            }
            let written_before = self.conn.total_changes();
            let mut op_hints = Vec::new();
            let (ok, completion) = self.apply(op, &mut op_hints);
            if ok {
                if guarded {
                    let _ = self.exec_cached("RELEASE op");
                }
                hints.append(&mut op_hints);
            } else if guarded {
                let _ = self.exec_cached("ROLLBACK TO op");
                let _ = self.exec_cached("RELEASE op");
            } else if self.conn.total_changes() != written_before {
                // An unguarded operation failed after writing part of itself: nothing can
                // undo that part alone, so the whole batch fails (see `needs_savepoint`).
                completions.push(completion);
                aborted = Some(StoreError::backend_msg(
                    "an operation failed after writing part of itself; its batch is rolled back",
                ));
                break;
            }
            completions.push(completion);
            // Some errors (disk full, I/O) roll back the whole transaction, not just the
            // savepoint: then nothing of this batch may be reported as done.
            if self.conn.is_autocommit() {
                aborted = Some(StoreError::backend_msg(
                    "the transaction was rolled back by the database",
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
                self.hints.send_all(hints);
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
            }
        }
        for op in remaining {
            fail_op(
                op,
                &StoreError::backend_msg("an earlier operation of its batch failed"),
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

    /// Applies one operation inside the open transaction. Returns whether it succeeded and
    /// the reply to send once the commit's fate is known; `hints` collects what to tell the
    /// engines after the commit.
    fn apply(&mut self, op: Op, hints: &mut Vec<Hint>) -> (bool, Completion) {
        fn done<T: Send + 'static>(reply: Reply<T>, r: Result<T>) -> (bool, Completion) {
            (r.is_ok(), complete(reply, r))
        }
        match op {
            Op::CreateApp(new, reply) => {
                let r = self.create_app(new);
                done(reply, r)
            }
            Op::SetCredentials(id, creds, reply) => {
                let r = self.set_credentials(&id, creds, hints);
                done(reply, r)
            }
            Op::ResealCredentials(reply) => {
                let r = self.reseal_credentials();
                done(reply, r)
            }
            Op::UpdateApp(id, patch, reply) => {
                let r = self.update_app(&id, patch, hints);
                done(reply, r)
            }
            Op::DeleteApp(id, now, reply) => {
                let r = self.delete_app(&id, now, hints);
                done(reply, r)
            }
            Op::CreateApiKey(new, reply) => {
                let r = self.create_api_key(new);
                done(reply, r)
            }
            Op::DeleteApiKey(app_id, id, reply) => {
                let r = self.delete_api_key(&app_id, &id);
                done(reply, r)
            }
            Op::TouchApiKey(id, now, reply) => {
                let r = self.touch_api_key(&id, now);
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
                let r = self.update_endpoint(&app_id, &id, patch, now, hints);
                done(reply, r)
            }
            Op::DeleteEndpoint {
                app_id,
                id,
                now,
                reply,
            } => {
                let r = self.delete_endpoint(&app_id, &id, now, hints);
                done(reply, r)
            }
            Op::CreateNotification(new, reply) => {
                let r = self.create_notification(new, None, hints);
                done(reply, r)
            }
            Op::RetryDelivery { id, now, reply } => {
                let r = self.retry_delivery(&id, now, hints);
                done(reply, r)
            }
            Op::Recover {
                app_id,
                since,
                now,
                reply,
            } => {
                let r = self.recover(&app_id, since, now, hints);
                done(reply, r)
            }
            Op::RecoverEndpoint {
                app_id,
                endpoint_id,
                since,
                now,
                reply,
            } => {
                let r = self.recover_endpoint(&app_id, &endpoint_id, since, now, hints);
                done(reply, r)
            }
            Op::CreateSession(table, new, reply) => {
                let r = self.create_session(table, new);
                done(reply, r)
            }
            Op::DeleteSession(id, reply) => {
                let r = self.delete_session(&id);
                done(reply, r)
            }
            Op::ConsumeLoginLink(id, now, reply) => {
                let r = self.consume_login_link(&id, now);
                done(reply, r)
            }
            Op::PurgeSessions(now, reply) => {
                let r = self.purge_sessions(now);
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
            Op::SetMetaIfAbsent(k, v, reply) => {
                let r = self
                    .conn
                    .execute(
                        "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO NOTHING",
                        [&k, &v],
                    )
                    .map(|n| n == 1)
                    .map_err(backend);
                done(reply, r)
            }
            Op::WriteSandbox(write, reply) => {
                let r = self.write_sandbox(write, hints);
                done(reply, r)
            }
            Op::CreateSource(new, reply) => {
                let r = self.create_source(*new);
                done(reply, r)
            }
            Op::DeleteSource { id, now, reply } => {
                let r = self.delete_source(&id, now, hints);
                done(reply, r)
            }
            Op::RegisterNode(params, claim_new, reply) => {
                let r = self.register_node(&params, claim_new);
                done(reply, r)
            }
            Op::RenewLease(params, reply) => {
                let r = self.renew_lease(&params);
                done(reply, r)
            }
            Op::Leave(node, reply) => {
                let r = Ok(self.leave(&node));
                done(reply, r)
            }
            Op::Rescue(now, reply) => {
                let r = self.rescue(now, hints);
                done(reply, r)
            }
            Op::Claim(params, reply) => {
                let r = self.claim(&params);
                done(reply, r)
            }
            Op::Complete(params, reply) => {
                let r = self.complete(*params);
                done(reply, r)
            }
            Op::Release(params, reply) => {
                let r = self.release(&params, hints);
                done(reply, r)
            }
            Op::Held(params, reply) => {
                let r = self.held(&params.node, params.horizon);
                done(reply, r)
            }
            Op::RecordHealth(report, reply) => {
                let r = self.record_health(report, hints);
                done(reply, r)
            }
            Op::SetAppOps(app_id, ops, now, reply) => {
                let r = self.set_app_ops(&app_id, ops, now, hints);
                if r.is_err() {
                    // Its savepoint is rolled back: so are the caches it touched.
                    self.clear_caches();
                }
                done(reply, r)
            }
            Op::Purge(params, reply) => {
                let r = self.purge_finished(params);
                done(reply, r)
            }
            Op::Close(reply) => done(reply, Ok(())),
        }
    }
}

/// Whether an operation runs in its own savepoint. The two that run once per notification
/// (storing one, recording an attempt's outcome) do not: each of them checks everything a
/// caller can get wrong (unknown app, a replayed idempotency key, a stale outcome) before its
/// first write, so once it has written, only the database itself can fail it (disk full, I/O,
/// a collision of fresh random ids). Such a failure fails the whole batch, as a failed commit
/// does, so nothing of it is acknowledged. Without the savepoint SQLite copies no page into a
/// sub-journal: in a savepoint every page an operation first touches is copied there, for
/// each operation of the batch anew, and the savepoint's own statements run twice per
/// operation.
fn needs_savepoint(op: &Op) -> bool {
    !matches!(op, Op::CreateNotification(..) | Op::Complete(..))
}

/// Sends `err` as an operation's reply.
fn fail<T>(reply: Reply<T>, err: &StoreError) {
    let _ = reply.send(Err(err.clone()));
}

/// Reports an operation that could not even start.
fn fail_op(op: Op, err: &StoreError) {
    match op {
        Op::CreateApp(_, r) => fail(r, err),
        Op::SetCredentials(_, _, r) => fail(r, err),
        Op::ResealCredentials(r) => fail(r, err),
        Op::UpdateApp(_, _, r) => fail(r, err),
        Op::DeleteApp(_, _, r) => fail(r, err),
        Op::CreateApiKey(_, r) => fail(r, err),
        Op::DeleteApiKey(_, _, r) => fail(r, err),
        Op::TouchApiKey(_, _, r) => fail(r, err),
        Op::CreateEndpoint(_, r) => fail(r, err),
        Op::UpdateEndpoint { reply, .. } => fail(reply, err),
        Op::DeleteEndpoint { reply, .. } => fail(reply, err),
        Op::CreateNotification(_, r) => fail(r, err),
        Op::RetryDelivery { reply, .. } => fail(reply, err),
        Op::Recover { reply, .. } => fail(reply, err),
        Op::RecoverEndpoint { reply, .. } => fail(reply, err),
        Op::CreateSession(_, _, r) => fail(r, err),
        Op::DeleteSession(_, r) => fail(r, err),
        Op::ConsumeLoginLink(_, _, r) => fail(r, err),
        Op::PurgeSessions(_, r) => fail(r, err),
        Op::SetMeta(_, _, r) => fail(r, err),
        Op::SetMetaIfAbsent(_, _, r) => fail(r, err),
        Op::WriteSandbox(_, r) => fail(r, err),
        Op::CreateSource(_, r) => fail(r, err),
        Op::DeleteSource { reply, .. } => fail(reply, err),
        Op::RegisterNode(_, _, r) => fail(r, err),
        Op::RenewLease(_, r) => fail(r, err),
        Op::Leave(_, r) => fail(r, err),
        Op::Rescue(_, r) => fail(r, err),
        Op::Claim(_, r) => fail(r, err),
        Op::Complete(_, r) => fail(r, err),
        Op::Release(_, r) => fail(r, err),
        Op::Held(_, r) => fail(r, err),
        Op::RecordHealth(_, r) => fail(r, err),
        Op::SetAppOps(_, _, _, r) => fail(r, err),
        Op::Purge(_, r) => fail(r, err),
        Op::Close(r) => fail(r, err),
    }
}
