//! Group commit for the hot writes: notifications from the API and attempt outcomes from
//! the engine.
//!
//! Concurrent calls queue here, and a batch of them runs in one transaction: their
//! statements are pipelined (sent together, answered in order), so a batch costs a few
//! round trips and one commit (one WAL flush) however many operations it holds. Up to
//! [`IN_FLIGHT`] batches commit at once (one while other nodes share the database); the
//! next batch forms while they do. What a new notification is decided on (its app's
//! profile and endpoints) is read for the whole batch before its writes, in two statements
//! however many apps it holds (`admin::read_apps_targets`), unless the store's cache holds
//! every app of the batch (`admin::TargetsCache`: the insert then checks, in its own
//! snapshot, that nothing those apps' notifications are decided on changed since, and
//! stores nothing when it did; the batch reads them and stores again). The batch's
//! notifications without an idempotency key are then one statement for all of them
//! (`admin::create_many_in_batch`: an `INSERT ... SELECT FROM unnest(...)` of the
//! notifications and one of their deliveries); one with a key is its own insert after a
//! lookup of the key, since it may be a replay. That insert also claims new deliveries at
//! birth for this store's node while it is alone on the database (`admin::Birth`); they go
//! to the engine as `Hint::Claimed` once the batch committed, and the `work` signal goes out
//! only when some new delivery was left for claims. (Measured with
//! `pg_stat_statements` in the e2e bench: one statement per notification cost about 0.10 ms
//! of the database's time each; in the batch's one statement a notification costs about
//! 0.05 ms.)
//!
//! The batch's outcomes are one statement (`queue::complete_many`: an `UPDATE ... FROM
//! unnest(...)` with the attempts' `INSERT ... SELECT` in the same statement) rather than
//! one statement each.
//!
//! A batch whose writes are that one statement (only notifications without a key, or only
//! outcomes `complete_many` takes) runs it without a transaction: the statement is atomic
//! and commits by itself, so the batch saves `BEGIN` and `COMMIT`, two of its three or
//! four round trips. A batch of both (notifications without a key and such outcomes) runs
//! the two statements side by side on two connections, each committing by itself: they
//! share nothing that needs one snapshot, and a transaction would put `BEGIN` and `COMMIT`
//! around them on the notifications' path (the API's callers wait for it; with claims at
//! birth, outcomes arrive steadily and most batches are mixed). Only a batch holding a
//! notification with a key, or an outcome one statement cannot take, runs in one
//! transaction.
//!
//! A failed statement aborts the whole transaction, and PostgreSQL then answers `COMMIT`
//! with a rollback; so a batch in which any statement failed is not committed, and each of
//! its operations runs again alone (one bad operation, or a deadlock between two nodes'
//! batches, is then nobody else's problem). Caller mistakes that fail no statement (an
//! unknown app) are answered from the batch as they are. When the database cannot be
//! reached, every operation of the batch gets that failure at once.
use std::collections::HashMap;
use std::sync::{Arc, Weak};

use deadpool_postgres::GenericClient;
use futures_util::future::join_all;
use tokio::sync::{mpsc, oneshot, Semaphore};

use herald_store::model::*;
use herald_store::queue::{CompleteParams, Completed, Hint};
use herald_store::{Result, StoreError};

use crate::{admin, backend, queue, Inner};

/// Most operations in one transaction.
const MAX_BATCH: usize = 256;
/// Batches committing at once on a database this node has to itself; one while other
/// live nodes commit there too ([`permits`]), since the database's commits are then shared.
/// Fewer batches in flight make each one larger (more of the queue's writes wait for the
/// next), so fewer statements and commits for the same work. Measured with the e2e bench
/// (PostgreSQL phases, 2 to 4 runs each, alternately), the same number on every node: 4 in
/// flight gave one node 4,537-4,626 notifications/s and three nodes 2,613-2,964; 2 gave
/// 4,820-5,486 and 3,613-3,972; 1 gave 4,476-4,753 and 3,953-4,300. Taking one once a
/// second node is seen, three nodes went from 2,791 and 3,491 to 4,303 and 4,557 (the
/// bench process's CPU from 195 to 149-158 µs a notification), two runs of each build,
/// alternately.
const IN_FLIGHT: usize = 2;
/// Operations waiting for a batch; callers wait when it is full (backpressure).
const QUEUE: usize = 8 * 1024;

enum Write {
    Create(
        NewNotification,
        oneshot::Sender<Result<CreatedNotification>>,
    ),
    Complete(CompleteParams, oneshot::Sender<Result<Completed>>),
}

/// The queue of writes waiting for a batch.
pub(crate) struct Batcher {
    /// `None` once closed: later writes fail with [`StoreError::Closed`].
    tx: std::sync::Mutex<Option<mpsc::Sender<Write>>>,
    /// Answered by the batch task once everything queued before the close is committed.
    drained: tokio::sync::Mutex<Option<oneshot::Receiver<()>>>,
}

impl Batcher {
    /// The batcher, and its queue's receiving end for [`start`].
    pub(crate) fn new() -> (Batcher, BatchQueue) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (done, drained) = oneshot::channel();
        (
            Batcher {
                tx: std::sync::Mutex::new(Some(tx)),
                drained: tokio::sync::Mutex::new(Some(drained)),
            },
            BatchQueue(rx, done),
        )
    }

    async fn send(&self, w: Write) -> Result<()> {
        let tx = self
            .tx
            .lock()
            .ok()
            .and_then(|t| t.clone())
            .ok_or(StoreError::Closed)?;
        tx.send(w).await.map_err(|_| StoreError::Closed)
    }

    pub(crate) async fn create(&self, new: NewNotification) -> Result<CreatedNotification> {
        let (reply, answer) = oneshot::channel();
        self.send(Write::Create(new, reply)).await?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    pub(crate) async fn complete(&self, params: CompleteParams) -> Result<Completed> {
        let (reply, answer) = oneshot::channel();
        self.send(Write::Complete(params, reply)).await?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Takes no more writes and returns once everything queued before is committed (or
    /// failed).
    pub(crate) async fn close(&self) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        if let Some(drained) = self.drained.lock().await.take() {
            let _ = drained.await;
        }
    }
}

/// The receiving end of a [`Batcher`]'s queue, and how it says it is drained.
pub(crate) struct BatchQueue(mpsc::Receiver<Write>, oneshot::Sender<()>);

/// Starts the task that forms and commits batches; it ends when the store is gone.
pub(crate) fn start(store: Weak<Inner>, queue: BatchQueue) {
    let BatchQueue(mut rx, drained) = queue;
    tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(IN_FLIGHT));
        loop {
            let share = match store.upgrade() {
                Some(inner) => permits(&inner),
                None => return,
            };
            let Ok(slot) = slots.clone().acquire_many_owned(share).await else {
                return;
            };
            let Some(first) = rx.recv().await else { break };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(w) => batch.push(w),
                    Err(_) => break,
                }
            }
            let Some(inner) = store.upgrade() else { return };
            tokio::spawn(async move {
                run(&inner, batch).await;
                drop(slot);
            });
        }
        // Closed and drained: wait for the batches still committing.
        let all = u32::try_from(IN_FLIGHT).unwrap_or(u32::MAX);
        let _ = slots.acquire_many(all).await;
        let _ = drained.send(());
    });
}

/// The permits a batch takes: one of [`IN_FLIGHT`] on a database this node has to itself,
/// all of them when its last peek counted other live nodes (`Inner::live_nodes`).
fn permits(inner: &Inner) -> u32 {
    if inner.live_nodes.load(std::sync::atomic::Ordering::Relaxed) > 1 {
        u32::try_from(IN_FLIGHT).unwrap_or(u32::MAX)
    } else {
        1
    }
}

/// What one operation of a batch produced, to be sent once the batch's fate is known.
enum Done {
    Create(Result<CreatedNotification>),
    Complete(Result<Completed>),
}

impl Done {
    /// The error of a statement that failed (which aborted the transaction, or stored
    /// nothing of a statement that was the whole batch).
    fn failure(&self) -> Option<&StoreError> {
        match self {
            Done::Create(Err(e @ StoreError::Backend { .. }))
            | Done::Complete(Err(e @ StoreError::Backend { .. })) => Some(e),
            _ => None,
        }
    }
}

/// The first statement failure among a batch's results (see [`Done::failure`]).
fn first_failure(done: &[Done]) -> Option<StoreError> {
    done.iter().find_map(Done::failure).cloned()
}

/// Whether a batch's outcomes can go in one statement (`queue::complete_many`): each
/// delivery once, and none freeing a successor (which `Store::complete` already sends
/// elsewhere).
fn set_based(completes: &[&CompleteParams]) -> bool {
    let mut seqs: Vec<i64> = completes.iter().map(|p| p.report.job.seq).collect();
    seqs.sort_unstable();
    seqs.dedup();
    seqs.len() == completes.len() && !completes.iter().any(|p| queue::frees_successor(p))
}

/// The outcomes of a batch, in its order.
fn completes_of(batch: &[Write]) -> Vec<&CompleteParams> {
    batch
        .iter()
        .filter_map(|w| match w {
            Write::Complete(p, _) => Some(p),
            Write::Create(..) => None,
        })
        .collect()
}

/// A notification that goes in the batch's one insert: one without an idempotency key (one
/// with a key may be a replay, which reads the stored one instead).
fn plain(new: &NewNotification) -> bool {
    new.idempotency_key.is_none()
}

async fn run(inner: &Inner, batch: Vec<Write>) {
    // Notifications without a key take the batch insert even alone: it is as many
    // statements as the single insert's, and it claims at birth.
    if batch
        .iter()
        .all(|w| matches!(w, Write::Create(new, _) if plain(new)))
    {
        return creates_in_one_statement(inner, batch).await;
    }
    if batch.len() == 1 {
        for w in batch {
            alone(inner, w).await;
        }
        return;
    }
    let completes = completes_of(&batch);
    if completes.len() == batch.len() && set_based(&completes) {
        return completes_in_one_statement(inner, batch).await;
    }
    if set_based(&completes)
        && batch.iter().all(|w| {
            matches!(w, Write::Complete(..)) || matches!(w, Write::Create(new, _) if plain(new))
        })
    {
        // Two statements that need no shared snapshot: each commits by itself, side by side
        // on two connections, instead of `BEGIN`, both, `COMMIT` on one.
        let (creates, completes): (Vec<Write>, Vec<Write>) = batch
            .into_iter()
            .partition(|w| matches!(w, Write::Create(..)));
        tokio::join!(
            creates_in_one_statement(inner, creates),
            completes_in_one_statement(inner, completes)
        );
        return;
    }
    let generation = inner.contexts.generation();
    let mut client = match inner.client().await {
        Ok(c) => c,
        Err(e) => return fail_all(batch, e),
    };
    let tx = match client.transaction().await {
        Ok(tx) => tx,
        Err(e) => return fail_all(batch, backend(e)),
    };
    let apps = match admin::read_apps_targets(&tx, &app_ids_of(&batch), None).await {
        Ok(apps) => apps,
        Err(e) => {
            // As a failed statement: each operation runs again alone.
            drop(tx);
            return each_alone(inner, &client, batch, e).await;
        }
    };
    // The outcomes go in one statement when they can; else one each.
    let set_based = set_based(&completes);
    // Notifications without an idempotency key go in one statement; one with a key is
    // its own.
    let creates = plain_creates(&batch, &apps);
    let birth = birth_of(inner, &batch);
    let many_creates = async {
        if creates.is_empty() {
            None
        } else {
            Some(admin::create_many_in_batch(inner, &tx, creates, birth.as_ref(), false).await)
        }
    };
    let each = join_all(batch.iter().map(|w| async {
        match w {
            Write::Create(new, _) if plain(new) => None,
            Write::Create(new, _) => Some(Done::Create(
                admin::create_in_batch(
                    &tx,
                    new.clone(),
                    apps.get(new.app_id.as_str()).map(|a| &**a),
                )
                .await,
            )),
            Write::Complete(..) if set_based => None,
            Write::Complete(p, _) => Some(Done::Complete(
                queue::complete_in(inner, generation, &tx, p).await,
            )),
        }
    }));
    let many = async {
        if set_based && !completes.is_empty() {
            queue::complete_many(&tx, &completes).await
        } else {
            Ok(Vec::new())
        }
    };
    let (each, many, many_creates) = tokio::join!(each, many, many_creates);
    let mut many = match many {
        Ok(v) => v.into_iter().map(Ok).collect::<Vec<_>>(),
        Err(e) => vec![Err(e); completes.len()],
    }
    .into_iter();
    let (results, born, unclaimed) = match many_creates {
        Some(m) => (m.results, m.born, m.unclaimed),
        None => (Vec::new(), admin::Born::default(), false),
    };
    let mut many_creates = results.into_iter();
    let no_answer = || StoreError::backend_msg("internal error: a batch operation got no answer");
    let done: Vec<Done> = each
        .into_iter()
        .zip(&batch)
        .map(|(d, w)| {
            d.unwrap_or_else(|| match w {
                Write::Create(..) => {
                    Done::Create(many_creates.next().unwrap_or_else(|| Err(no_answer())))
                }
                Write::Complete(..) => {
                    Done::Complete(many.next().unwrap_or_else(|| Err(no_answer())))
                }
            })
        })
        .collect();
    if let Some(e) = first_failure(&done) {
        // A statement failed and the transaction with it: each runs again alone.
        drop(tx);
        return each_alone(inner, &client, batch, e).await;
    }
    if let Err(e) = tx.commit().await {
        // Whether it committed is unknown: the callers retry (the API's producers with
        // their idempotency keys; the engine's outcomes are conditional), and the birth
        // node reads back what it holds.
        if !born.jobs.is_empty() || born.unsure {
            reread_if(inner, birth.as_ref());
        }
        return fail_all(batch, backend(e));
    }
    hand_over(inner, &client, birth.as_ref(), born).await;
    let keyed = batch
        .iter()
        .any(|w| matches!(w, Write::Create(new, _) if !plain(new)));
    answer(inner, batch, done, unclaimed || keyed);
}

/// Sends each operation of a committed batch its result, and the `work` signal when new
/// deliveries were stored that may be unclaimed (`unclaimed`: not all of them were claimed
/// at birth).
fn answer(inner: &Inner, batch: Vec<Write>, done: Vec<Done>, unclaimed: bool) {
    let mut work = false;
    for (w, d) in batch.into_iter().zip(done) {
        match (w, d) {
            (Write::Create(_, reply), Done::Create(r)) => {
                work |= matches!(&r, Ok(c) if !c.replayed && !c.deliveries.is_empty());
                let _ = reply.send(r);
            }
            (Write::Complete(_, reply), Done::Complete(r)) => {
                let _ = reply.send(r);
            }
            (w, _) => fail_all(
                vec![w],
                StoreError::backend_msg("internal error: batch outcomes out of order"),
            ),
        }
    }
    if work && unclaimed {
        inner.work.signal();
    }
}

/// The apps of the batch's notifications, each once.
fn app_ids_of(batch: &[Write]) -> Vec<&str> {
    let mut app_ids: Vec<&str> = batch
        .iter()
        .filter_map(|w| match w {
            Write::Create(new, _) => Some(new.app_id.as_str()),
            Write::Complete(..) => None,
        })
        .collect();
    app_ids.sort_unstable();
    app_ids.dedup();
    app_ids
}

/// The batch's notifications that go in its one insert, each with its app as read.
fn plain_creates<'a>(
    batch: &[Write],
    apps: &'a HashMap<String, Arc<admin::AppTargets>>,
) -> Vec<(NewNotification, Option<&'a admin::AppTargets>)> {
    batch
        .iter()
        .filter_map(|w| match w {
            Write::Create(new, _) if plain(new) => {
                Some((new.clone(), apps.get(new.app_id.as_str()).map(|a| &**a)))
            }
            _ => None,
        })
        .collect()
}

/// A batch of notifications without an idempotency key, stored by one statement, which
/// commits by itself. (The transaction of a mixed batch would add `BEGIN` and `COMMIT`,
/// two round trips, and share nothing: each statement reads its own snapshot either way.)
/// Their apps' targets come from the store's cache when every app of the batch is there,
/// and the insert checks them (`admin::TargetsCache`); otherwise, or when the insert found
/// one changed, they are read first (two statements) and the insert takes them as read.
async fn creates_in_one_statement(inner: &Inner, batch: Vec<Write>) {
    let client = match inner.client().await {
        Ok(c) => c,
        Err(e) => return fail_all(batch, e),
    };
    let birth = birth_of(inner, &batch);
    let app_ids = app_ids_of(&batch);
    let mut stored = None;
    if let Some(apps) = inner.targets.all(&app_ids) {
        let many = admin::create_many_in_batch(
            inner,
            &client,
            plain_creates(&batch, &apps),
            birth.as_ref(),
            true,
        )
        .await;
        if many.stale {
            // Changed since it was cached: nothing was stored; read, and store on that.
            inner.targets.forget(&app_ids);
        } else {
            stored = Some(many);
        }
    }
    let many = match stored {
        Some(many) => many,
        None => {
            let apps = match admin::read_apps_targets(&client, &app_ids, Some(&inner.targets)).await
            {
                Ok(apps) => apps,
                Err(e) => return each_alone(inner, &client, batch, e).await,
            };
            admin::create_many_in_batch(
                inner,
                &client,
                plain_creates(&batch, &apps),
                birth.as_ref(),
                false,
            )
            .await
        }
    };
    let done: Vec<Done> = many.results.into_iter().map(Done::Create).collect();
    match first_failure(&done) {
        Some(e) => {
            reread_if(inner, birth.as_ref());
            each_alone(inner, &client, batch, e).await
        }
        None => {
            hand_over(inner, &client, birth.as_ref(), many.born).await;
            answer(inner, batch, done, many.unclaimed);
        }
    }
}

/// The batch's claims at birth (see `admin::Birth`), judged at the latest time of its
/// notifications (the callers' clock: the driver reads none).
fn birth_of(inner: &Inner, batch: &[Write]) -> Option<admin::Birth> {
    let now = batch
        .iter()
        .filter_map(|w| match w {
            Write::Create(new, _) => Some(new.now),
            Write::Complete(..) => None,
        })
        .max()?;
    inner.birth(now)
}

/// After a batch that claimed at birth failed (it may have committed all the same, the
/// answer lost): the birth node reads back what it holds.
fn reread_if(inner: &Inner, birth: Option<&admin::Birth>) {
    if let Some(b) = birth {
        inner.subscribers.send_to(&b.node, Hint::Reread);
    }
}

/// Sends the deliveries a committed batch claimed at birth to their node, with their app
/// and endpoint read again when a change overlapped the batch (`Contexts::refresh`); when
/// some could not be handed over, the node reads back what it holds.
async fn hand_over(
    inner: &Inner,
    client: &deadpool_postgres::Object,
    birth: Option<&admin::Birth>,
    born: admin::Born,
) {
    let Some(b) = birth else { return };
    let mut reread = born.unsure;
    if !born.jobs.is_empty() {
        // The node has work: `work` hints for what claims must take reach it without the
        // idle node's gap (see `hints`).
        inner
            .idle_claims
            .store(0, std::sync::atomic::Ordering::Relaxed);
        match inner
            .contexts
            .refresh(client, born.jobs, born.generation)
            .await
        {
            Ok(jobs) => inner.subscribers.send_to(&b.node, Hint::Claimed(jobs)),
            Err(_) => reread = true,
        }
    }
    if reread {
        inner.subscribers.send_to(&b.node, Hint::Reread);
    }
}

/// A batch of outcomes that `queue::complete_many` takes: one statement, which commits by
/// itself (see [`creates_in_one_statement`]).
async fn completes_in_one_statement(inner: &Inner, batch: Vec<Write>) {
    let client = match inner.client().await {
        Ok(c) => c,
        Err(e) => return fail_all(batch, e),
    };
    let completes = completes_of(&batch);
    let done: Vec<Done> = match queue::complete_many(&client, &completes).await {
        Ok(v) => v.into_iter().map(|c| Done::Complete(Ok(c))).collect(),
        Err(e @ StoreError::Backend { .. }) => return each_alone(inner, &client, batch, e).await,
        Err(e) => completes
            .iter()
            .map(|_| Done::Complete(Err(e.clone())))
            .collect(),
    };
    answer(inner, batch, done, false);
}

/// After a batch's statement failed (so nothing of it was stored): each operation runs
/// again alone, or, when the connection was lost (so whether it committed is unknown),
/// every one gets the failure.
async fn each_alone(
    inner: &Inner,
    client: &deadpool_postgres::Object,
    batch: Vec<Write>,
    e: StoreError,
) {
    if client.is_closed() {
        return fail_all(
            batch,
            StoreError::backend("the database connection was lost", e),
        );
    }
    tracing::debug!(error = %e, size = batch.len(), "batch not stored; each runs alone");
    join_all(batch.into_iter().map(|w| alone(inner, w))).await;
}

/// Answers every operation of a batch with the same failure.
fn fail_all(batch: Vec<Write>, e: StoreError) {
    for w in batch {
        match w {
            Write::Create(_, reply) => {
                let _ = reply.send(Err(e.clone()));
            }
            Write::Complete(_, reply) => {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

/// One operation in its own transaction.
async fn alone(inner: &Inner, w: Write) {
    match w {
        Write::Create(new, reply) => {
            let _ = reply.send(admin::create_notification_alone(inner, new).await);
        }
        Write::Complete(p, reply) => {
            let _ = reply.send(queue::complete(inner, p).await);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use herald_store::model::*;
    use herald_store::queue::{ClaimParams, LeaseParams, NodeId};
    use herald_store::{AdminStore, Queue};

    use super::*;
    use crate::PgStore;

    const T0: UnixMillis = UnixMillis::new(1_700_000_000_000);

    async fn register(store: &PgStore, name: &str) -> NodeId {
        let node: NodeId = Arc::from(name);
        let lease = LeaseParams {
            node: node.clone(),
            now: T0,
            lease: std::time::Duration::from_secs(30),
        };
        // Without claims at birth: this test claims what it stores.
        store.register_node(lease, false).await.expect("register");
        node
    }

    /// Alone on its database a node keeps [`IN_FLIGHT`] batches committing; once its peek
    /// counts another live node, one (their batches share the database's commits).
    #[tokio::test]
    async fn a_node_commits_one_batch_at_a_time_once_it_sees_another_node() {
        let url = herald_pgtest::database();
        let a = PgStore::connect(&url).await.expect("store a");
        let node_a = register(&a, "node_a").await;
        assert_eq!(permits(&a.inner), 1, "a node alone");
        let app = a
            .create_app(herald_store::conformance::new_app("shop", T0))
            .await
            .expect("app");
        let claim = |node: NodeId| ClaimParams {
            node,
            now: T0,
            horizon: T0 + std::time::Duration::from_secs(60),
            limit: 10,
        };
        for round in 0..2 {
            a.create_notification(NewNotification {
                app_id: app.id.clone(),
                event_type: "trade.success".parse().expect("event type"),
                payload: "{}".into(),
                notify_url: Some("https://m.example/notify".parse().expect("url")),
                idempotency_key: None,
                order_key: None,
                now: T0,
            })
            .await
            .expect("notification");
            if round == 1 {
                let b = PgStore::connect(&url).await.expect("store b");
                register(&b, "node_b").await;
            }
            let jobs = a.claim(claim(node_a.clone())).await.expect("claim");
            assert_eq!(jobs.len(), 1);
            let want = if round == 0 { 1 } else { IN_FLIGHT };
            assert_eq!(permits(&a.inner) as usize, want, "round {round}");
        }
    }

    /// A group commit decides a notification on its app's targets from the store's cache,
    /// reading nothing, yet on the endpoints as they are: each change another node makes
    /// (an endpoint added, one disabled, one deleted, the app deleted) reaches the very next
    /// notification, while a health write, which changes no decision, keeps the cache
    /// serving.
    #[tokio::test]
    async fn cached_targets_follow_every_endpoint_change_another_node_makes() {
        use herald_store::conformance::{new_app, new_endpoint};
        use std::sync::atomic::Ordering::Relaxed;

        let url = herald_pgtest::database();
        let a = PgStore::connect(&url).await.expect("store a");
        let b = PgStore::connect(&url).await.expect("store b");
        let app = a.create_app(new_app("shop", T0)).await.expect("app");
        let one = a
            .create_endpoint(new_endpoint(&app.id, "https://one.example/hook"))
            .await
            .expect("endpoint one");
        let notification = || NewNotification {
            app_id: app.id.clone(),
            event_type: "trade.success".parse().expect("event type"),
            payload: "{}".into(),
            notify_url: None,
            idempotency_key: None,
            order_key: None,
            now: T0,
        };
        // Where node a's next notification of the app goes.
        let send = || async {
            let created = a
                .create_notification(notification())
                .await
                .expect("notification");
            let mut to: Vec<String> = created
                .deliveries
                .iter()
                .filter_map(|d| d.endpoint_id.clone())
                .collect();
            to.sort();
            to
        };
        assert_eq!(send().await, vec![one.id.clone()]);
        let reads = a.inner.targets.reads.load(Relaxed);
        assert_eq!(send().await, vec![one.id.clone()]);
        assert_eq!(
            a.inner.targets.reads.load(Relaxed),
            reads,
            "the second notification's targets came from the cache"
        );
        // What every failed attempt writes (another node's health report) changes nothing
        // a decision depends on: the cache still serves.
        b.inner
            .client()
            .await
            .expect("client")
            .execute(
                "UPDATE endpoints SET health_failures = health_failures + 1 WHERE id = $1",
                &[&one.id],
            )
            .await
            .expect("a health write");
        assert_eq!(send().await, vec![one.id.clone()]);
        assert_eq!(
            a.inner.targets.reads.load(Relaxed),
            reads,
            "a health write left the cached targets alone"
        );

        let two = b
            .create_endpoint(new_endpoint(&app.id, "https://two.example/hook"))
            .await
            .expect("endpoint two");
        let mut both = vec![one.id.clone(), two.id.clone()];
        both.sort();
        assert_eq!(send().await, both, "an endpoint added on node b");

        let off = EndpointPatch {
            enabled: Some(false),
            ..EndpointPatch::default()
        };
        b.update_endpoint(&app.id, &one.id, off, T0)
            .await
            .expect("disable")
            .expect("endpoint one");
        assert_eq!(
            send().await,
            vec![two.id.clone()],
            "endpoint one disabled on b"
        );

        assert!(b
            .delete_endpoint(&app.id, &two.id, T0)
            .await
            .expect("delete"));
        assert!(send().await.is_empty(), "endpoint two deleted on b");
        let reads = a.inner.targets.reads.load(Relaxed);
        assert!(send().await.is_empty());
        assert_eq!(a.inner.targets.reads.load(Relaxed), reads, "cached again");

        // The app deleted on b: a's next notification of it is refused, nothing stored.
        b.delete_app(&app.id, T0)
            .await
            .expect("delete the app")
            .expect("the app existed");
        let refused = a.create_notification(notification()).await;
        assert!(
            matches!(refused, Err(herald_store::StoreError::NotFound("app"))),
            "{refused:?}"
        );
    }
}
