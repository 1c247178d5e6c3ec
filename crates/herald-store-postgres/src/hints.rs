//! Hints across nodes: `LISTEN/NOTIFY` on one channel, and the app/endpoint caches that the
//! notifications keep coherent.
//!
//! Writers call `pg_notify('herald_hints', ...)` inside the transaction that makes the
//! change, so PostgreSQL delivers the hint only if and when it commits:
//! - `work`: unheld work was committed (a notification, a retry, a recovery, a release);
//! - `app:<id>` / `endpoint:<id>`: settings changed; the listener fetches the current
//!   version and hands it on as [`Hint::AppChanged`] / [`Hint::EndpointChanged`];
//! - `revoked:<node>:<seq>,<seq>...`: held deliveries left the node's hands (canceled, or
//!   retried by hand); only that node's subscribers get [`Hint::Revoked`].
//!
//! `work` is the hot one (every notification makes work): writers do not notify inside
//! their transactions but signal the store's [`WorkSignal`] after they commit, and one
//! task sends a single `work` for all the signals since its last one (at most one per
//! 5 ms). The listener passes `work` on to its engines at most once per 10 ms (100 ms
//! while their claims keep finding nothing): every node hears every node's commits, and
//! each `work` makes each engine claim. A transaction that
//! notifies takes a database-wide lock through its commit (PostgreSQL serializes the
//! notification queue), so notifying in every notification's transaction would serialize
//! their commits and their fsyncs.
//!
//! Each store keeps one listening connection of its own ([`start`]). Hints are lossy by
//! nature: a notification sent while the connection is down is gone. The listener checks
//! its connection every few seconds (and closes the pool's connections idle for 5 minutes,
//! `connect::close_idle`), reconnects with backoff when it broke, and then
//! clears the caches, sends every subscriber [`Hint::Work`] (work may have been committed
//! meanwhile) and announces the current settings of every app and endpoint its nodes hold
//! work for (settings may have changed meanwhile). Revocations sent while it was away stay
//! lost: the engine learns of those when its outcome turns out stale. The engine stays
//! correct without hints (it claims on a timer).
//!
//! The caches ([`Contexts`]) hold the [`AppCtx`]/[`EndpointCtx`] versions that claimed
//! jobs carry, so a claim does not re-read settings. A change committed here or on any
//! other node reaches every store's cache through its `app:`/`endpoint:` notification,
//! which invalidates the entry before its hint goes out. A generation counter closes the
//! races around that: nothing read from a snapshot older than an invalidation is cached,
//! and a claim that overlapped an invalidation reads its jobs' versions again, so no job
//! reaches the engine with a version older than a hint the engine already has.
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use deadpool_postgres::GenericClient;
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;

use herald_store::model::*;
use herald_store::queue::{Hint, HintReceiver, NodeId};
use herald_store::{Result, Sealer};

use crate::{backend, rows, Inner};

/// The one channel every hint goes through.
pub(crate) const CHANNEL: &str = "herald_hints";
/// How often the listener checks that its connection still answers.
const CHECK_EVERY: Duration = Duration::from_secs(5);
/// How long that check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// NOTIFY payloads must stay under 8000 bytes; revocations are split below this.
const MAX_PAYLOAD: usize = 7000;

/// How long the work signaller waits after a `work` before the next one, so that a burst
/// of commits costs one notification.
const WORK_COALESCE: Duration = Duration::from_millis(5);
/// The least time between two `work` hints to this store's engines (those owed meanwhile
/// are folded into one at the end of the gap).
const WORK_GAP: Duration = Duration::from_millis(10);
/// The gap once this store's claims found nothing [`IDLE_AFTER`] times in a row: a node
/// that only watches another node's endpoints looks ten times a second, not a hundred
/// (each look costs the busy node's machine too). Its claim timer, and a claim that finds
/// work, bring it back at once.
const IDLE_WORK_GAP: Duration = Duration::from_millis(100);
const IDLE_AFTER: u32 = 3;

/// The gap before the next `work` hint, by how idle this store's claims have been.
fn work_gap(inner: &Inner) -> Duration {
    if inner.idle_claims.load(Ordering::Relaxed) >= IDLE_AFTER {
        IDLE_WORK_GAP
    } else {
        WORK_GAP
    }
}

/// Coalesced `work` hints (see the module doc): [`WorkSignal::signal`] after a commit that
/// made unheld work.
pub(crate) struct WorkSignal {
    tx: mpsc::Sender<()>,
}

impl WorkSignal {
    /// The signal, and the task that turns signals into notifications (it ends when the
    /// store is gone).
    pub(crate) fn new() -> (WorkSignal, mpsc::Receiver<()>) {
        let (tx, rx) = mpsc::channel(1);
        (WorkSignal { tx }, rx)
    }

    pub(crate) fn signal(&self) {
        // Full means a signal is already pending: this one is folded into it.
        let _ = self.tx.try_send(());
    }
}

pub(crate) fn start_work_signaller(store: Weak<Inner>, mut rx: mpsc::Receiver<()>) {
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            let Some(inner) = store.upgrade() else { return };
            let sent = async {
                let client = inner.client().await?;
                notify(&client, "work").await
            }
            .await;
            if let Err(e) = sent {
                tracing::debug!(error = %e, "cannot send a work hint");
            }
            drop(inner);
            tokio::time::sleep(WORK_COALESCE).await;
        }
    });
}

/// `pg_notify` inside the caller's transaction: delivered when (if) it commits.
pub(crate) async fn notify(c: &impl GenericClient, payload: &str) -> Result<()> {
    let stmt = c
        .prepare_cached("SELECT pg_notify($1, $2)")
        .await
        .map_err(backend)?;
    c.execute(&stmt, &[&CHANNEL, &payload])
        .await
        .map_err(backend)?;
    Ok(())
}

/// Notifies each holding node that these deliveries left its hands: `held` is
/// `(seq, node)` for every changed delivery that some node held.
pub(crate) async fn notify_revoked(c: &impl GenericClient, held: &[(i64, String)]) -> Result<()> {
    let mut by_node: HashMap<&str, Vec<i64>> = HashMap::new();
    for (seq, node) in held {
        by_node.entry(node.as_str()).or_default().push(*seq);
    }
    for (node, seqs) in by_node {
        let prefix = format!("revoked:{node}:");
        let mut payload = prefix.clone();
        for seq in seqs {
            if payload.len() > MAX_PAYLOAD {
                notify(c, &payload).await?;
                payload = prefix.clone();
            }
            if payload.len() > prefix.len() {
                payload.push(',');
            }
            payload.push_str(&seq.to_string());
        }
        notify(c, &payload).await?;
    }
    Ok(())
}

/// The engines subscribed to this store's hints.
#[derive(Default)]
pub(crate) struct Subscribers {
    list: Mutex<Vec<(NodeId, mpsc::UnboundedSender<Hint>)>>,
}

impl Subscribers {
    pub(crate) fn subscribe(&self, node: NodeId) -> HintReceiver {
        let (tx, rx) = mpsc::unbounded_channel();
        if let Ok(mut list) = self.list.lock() {
            list.push((node, tx));
        }
        rx
    }

    fn any(&self) -> bool {
        self.list.lock().map(|l| !l.is_empty()).unwrap_or(false)
    }

    /// The nodes subscribed here.
    fn nodes(&self) -> Vec<String> {
        let mut nodes: Vec<String> = self
            .list
            .lock()
            .map(|l| l.iter().map(|(n, _)| n.to_string()).collect())
            .unwrap_or_default();
        nodes.sort_unstable();
        nodes.dedup();
        nodes
    }

    /// Sends a hint to every subscriber (forgetting those that went away).
    pub(crate) fn broadcast(&self, hint: Hint) {
        if let Ok(mut list) = self.list.lock() {
            list.retain(|(_, tx)| tx.send(hint.clone()).is_ok());
        }
    }

    /// Sends a hint to the subscribers of one node.
    pub(crate) fn send_to(&self, node: &str, hint: Hint) {
        if let Ok(mut list) = self.list.lock() {
            list.retain(|(n, tx)| &**n != node || tx.send(hint.clone()).is_ok());
        }
    }
}

/// Cached app and endpoint versions (see the module doc).
#[derive(Default)]
pub(crate) struct Contexts {
    apps: Mutex<HashMap<String, Arc<AppCtx>>>,
    endpoints: Mutex<HashMap<String, Arc<EndpointCtx>>>,
    /// Bumped by every invalidation, before its hint goes out: a claim that saw it change
    /// while it ran may hold versions older than a hint the engine already applied, and
    /// reads them again ([`Contexts::refresh`]).
    generation: AtomicU64,
    /// Opens the credentials of the apps read (here and by the rest of the driver) and seals
    /// those written (see `herald_store::sealing`).
    pub(crate) sealer: Sealer,
}

impl Contexts {
    pub(crate) fn with_sealer(sealer: Sealer) -> Contexts {
        Contexts {
            sealer,
            ..Contexts::default()
        }
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// `jobs` with their app and endpoint read again, when the cache was invalidated since
    /// `generation` (see the field's doc); as they are otherwise.
    pub(crate) async fn refresh(
        &self,
        c: &impl GenericClient,
        jobs: Vec<Arc<ClaimedDelivery>>,
        generation: u64,
    ) -> Result<Vec<Arc<ClaimedDelivery>>> {
        if jobs.is_empty() || self.generation() == generation {
            return Ok(jobs);
        }
        let app_ids: Vec<&str> = jobs.iter().map(|j| j.app.id.as_str()).collect();
        let endpoint_ids: Vec<&str> = jobs
            .iter()
            .filter_map(|j| j.endpoint.as_ref().map(|e| e.id.as_str()))
            .collect();
        let now = self.generation();
        let (apps, endpoints) = self.resolve(c, &app_ids, &endpoint_ids, now).await?;
        Ok(jobs
            .iter()
            .map(|j| {
                let mut fresh = (**j).clone();
                if let Some(app) = apps.get(&j.app.id) {
                    fresh.app = app.clone();
                }
                if let Some(e) = j.endpoint.as_ref().and_then(|e| endpoints.get(&e.id)) {
                    fresh.endpoint = Some(e.clone());
                }
                Arc::new(fresh)
            })
            .collect())
    }

    /// Caches a version this store just committed, unless something was invalidated since
    /// `generation` (read before the write): then a newer version may exist already.
    pub(crate) fn put_app_since(&self, ctx: Arc<AppCtx>, generation: u64) {
        if self.generation() == generation {
            self.put_app(ctx);
        }
    }

    /// [`Contexts::put_app_since`] for an endpoint.
    pub(crate) fn put_endpoint_since(&self, ctx: Arc<EndpointCtx>, generation: u64) {
        if self.generation() == generation {
            self.put_endpoint(ctx);
        }
    }

    pub(crate) fn put_app(&self, ctx: Arc<AppCtx>) {
        if let Ok(mut m) = self.apps.lock() {
            m.insert(ctx.id.clone(), ctx);
        }
    }

    pub(crate) fn put_endpoint(&self, ctx: Arc<EndpointCtx>) {
        if let Ok(mut m) = self.endpoints.lock() {
            if ctx.deleted {
                m.remove(&ctx.id);
            } else {
                m.insert(ctx.id.clone(), ctx);
            }
        }
    }

    fn forget_app(&self, id: &str) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut m) = self.apps.lock() {
            m.remove(id);
        }
    }

    pub(crate) fn forget_endpoint(&self, id: &str) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut m) = self.endpoints.lock() {
            m.remove(id);
        }
    }

    fn clear(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut m) = self.apps.lock() {
            m.clear();
        }
        if let Ok(mut m) = self.endpoints.lock() {
            m.clear();
        }
    }

    /// The contexts of these apps and (live) endpoints, from the cache or, for those
    /// missing, read on `c` (inside the caller's transaction). Deleted or missing ones are
    /// absent from the answer. What is read is cached only if nothing was invalidated
    /// since `generation`, read before `c`'s snapshot was taken: otherwise the snapshot may
    /// predate a change whose hint already went out, and caching it would keep it stale.
    pub(crate) async fn resolve(
        &self,
        c: &impl GenericClient,
        app_ids: &[&str],
        endpoint_ids: &[&str],
        generation: u64,
    ) -> Result<(
        HashMap<String, Arc<AppCtx>>,
        HashMap<String, Arc<EndpointCtx>>,
    )> {
        let mut apps = HashMap::new();
        let mut missing_apps = Vec::new();
        if let Ok(m) = self.apps.lock() {
            for id in app_ids {
                match m.get(*id) {
                    Some(ctx) => {
                        apps.insert(id.to_string(), ctx.clone());
                    }
                    None => missing_apps.push(*id),
                }
            }
        }
        let mut endpoints = HashMap::new();
        let mut missing_endpoints = Vec::new();
        if let Ok(m) = self.endpoints.lock() {
            for id in endpoint_ids {
                match m.get(*id) {
                    Some(ctx) => {
                        endpoints.insert(id.to_string(), ctx.clone());
                    }
                    None => missing_endpoints.push(*id),
                }
            }
        }
        missing_apps.sort_unstable();
        missing_apps.dedup();
        missing_endpoints.sort_unstable();
        missing_endpoints.dedup();
        if !missing_apps.is_empty() {
            for app in rows::get_apps(c, &self.sealer, &missing_apps).await? {
                let ctx = Arc::new(AppCtx::from_app(&app));
                if self.generation() == generation {
                    self.put_app(ctx.clone());
                }
                apps.insert(app.id, ctx);
            }
        }
        if !missing_endpoints.is_empty() {
            for ep in rows::get_endpoints(c, &missing_endpoints).await? {
                let ctx = Arc::new(EndpointCtx::from_endpoint(&ep));
                if self.generation() == generation {
                    self.put_endpoint(ctx.clone());
                }
                endpoints.insert(ep.id, ctx);
            }
        }
        Ok((apps, endpoints))
    }
}

/// A listening connection: its client (kept for the liveness check; dropping it closes
/// the connection), the notifications its driver task forwards, and that task.
struct Listening {
    client: tokio_postgres::Client,
    payloads: mpsc::UnboundedReceiver<String>,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// The `application_name` of listening connections (to tell them apart in
/// `pg_stat_activity`).
pub(crate) const LISTENER_NAME: &str = "herald-hints";

async fn listen(inner: &Inner) -> Result<Listening> {
    let (client, mut connection) = inner.target.connect_as(LISTENER_NAME).await?;
    let (tx, payloads) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if tx.send(n.payload().to_string()).is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::debug!(error = %crate::describe(&e), "hint connection failed");
                    return;
                }
                None => return,
            }
        }
    });
    let listening = Listening {
        client,
        payloads,
        driver,
    };
    listening
        .client
        .batch_execute(&format!("LISTEN {CHANNEL}"))
        .await
        .map_err(backend)?;
    Ok(listening)
}

/// Opens the listening connection (so a store that connected hears every hint committed
/// from then on) and starts the task that serves it and reconnects it.
pub(crate) async fn start(inner: &Arc<Inner>) -> Result<tokio::task::AbortHandle> {
    let first = listen(inner).await?;
    let task = tokio::spawn(run(Arc::downgrade(inner), first));
    Ok(task.abort_handle())
}

async fn run(store: Weak<Inner>, first: Listening) {
    let mut current = Some(first);
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut listening = match current.take() {
            Some(l) => l,
            None => {
                let Some(inner) = store.upgrade() else { return };
                match listen(&inner).await {
                    Ok(l) => {
                        tracing::info!("hint listener reconnected");
                        backoff = Duration::from_millis(100);
                        // Anything may have changed or been committed meanwhile.
                        inner.contexts.clear();
                        inner.subscribers.broadcast(Hint::Work);
                        if let Err(e) = resync(&inner).await {
                            tracing::warn!(error = %e, "re-announcing settings failed");
                        }
                        l
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "hint listener cannot connect; retrying");
                        drop(inner);
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                }
            }
        };
        let mut check = tokio::time::interval(CHECK_EVERY);
        check.tick().await;
        // `work` hints reach the engines at most once per WORK_GAP: every node hears every
        // node's commits, and each `work` makes each engine claim.
        let mut last_work: Option<tokio::time::Instant> = None;
        let mut work_owed: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                payload = listening.payloads.recv() => {
                    let Some(payload) = payload else { break };
                    let Some(inner) = store.upgrade() else { return };
                    if payload == "work" {
                        let now = tokio::time::Instant::now();
                        match last_work.map(|t| t + work_gap(&inner)) {
                            Some(next) if next > now => {
                                work_owed.get_or_insert(next);
                            }
                            _ => {
                                inner.subscribers.broadcast(Hint::Work);
                                last_work = Some(now);
                            }
                        }
                    } else if let Err(e) = handle(&inner, &payload).await {
                        tracing::warn!(error = %e, hint = %payload, "handling a hint failed");
                    }
                }
                _ = sleep_until_owed(work_owed) => {
                    work_owed = None;
                    let Some(inner) = store.upgrade() else { return };
                    inner.subscribers.broadcast(Hint::Work);
                    last_work = Some(tokio::time::Instant::now());
                }
                _ = check.tick() => {
                    let Some(inner) = store.upgrade() else { return };
                    crate::connect::close_idle(&inner.pool, crate::connect::IDLE_CLOSE);
                    drop(inner);
                    let alive = tokio::time::timeout(
                        CHECK_TIMEOUT,
                        listening.client.simple_query("SELECT 1"),
                    )
                    .await;
                    if !matches!(alive, Ok(Ok(_))) {
                        break;
                    }
                }
            }
        }
        tracing::warn!("hint listener lost its connection; reconnecting");
        // The caches can no longer learn of changes until the listener is back.
        if let Some(inner) = store.upgrade() {
            inner.contexts.clear();
        }
    }
}

/// After a reconnection: the settings changes announced while the listener was away are
/// lost, so announce the current apps and endpoints of everything the subscribed nodes
/// hold (deleted endpoints as such), which is all the engines keep settings for.
async fn resync(inner: &Inner) -> Result<()> {
    let nodes = inner.subscribers.nodes();
    if nodes.is_empty() {
        return Ok(());
    }
    let client = inner.client().await?;
    let held = client
        .query(
            "SELECT DISTINCT app_id, endpoint_id FROM deliveries WHERE locked_by = ANY($1)",
            &[&nodes],
        )
        .await
        .map_err(backend)?;
    let mut app_ids = Vec::new();
    let mut endpoint_ids = Vec::new();
    for row in &held {
        app_ids.push(rows::col::<&str>(row, 0)?);
        if let Some(e) = rows::col::<Option<&str>>(row, 1)? {
            endpoint_ids.push(e);
        }
    }
    app_ids.sort_unstable();
    app_ids.dedup();
    endpoint_ids.sort_unstable();
    endpoint_ids.dedup();
    for app in rows::get_apps(&client, &inner.contexts.sealer, &app_ids).await? {
        inner
            .subscribers
            .broadcast(Hint::AppChanged(Arc::new(AppCtx::from_app(&app))));
    }
    for id in endpoint_ids {
        if let Some((ep, deleted)) = rows::get_endpoint_any(&client, id).await? {
            let mut ctx = EndpointCtx::from_endpoint(&ep);
            ctx.deleted = deleted;
            inner
                .subscribers
                .broadcast(Hint::EndpointChanged(Arc::new(ctx)));
        }
    }
    Ok(())
}

/// Sleeps until `owed`, or forever when nothing is owed.
async fn sleep_until_owed(owed: Option<tokio::time::Instant>) {
    match owed {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Acts on one notification payload (see the module doc).
async fn handle(inner: &Inner, payload: &str) -> Result<()> {
    if payload == "work" {
        inner.subscribers.broadcast(Hint::Work);
    } else if let Some(id) = payload.strip_prefix("app:") {
        inner.contexts.forget_app(id);
        if !inner.subscribers.any() {
            return Ok(());
        }
        let client = inner.client().await?;
        if let Some(app) = rows::get_app(&client, &inner.contexts.sealer, id).await? {
            let ctx = Arc::new(AppCtx::from_app(&app));
            inner.contexts.put_app(ctx.clone());
            inner.subscribers.broadcast(Hint::AppChanged(ctx));
        }
    } else if let Some(id) = payload.strip_prefix("endpoint:") {
        inner.contexts.forget_endpoint(id);
        if !inner.subscribers.any() {
            return Ok(());
        }
        if let Some((ep, deleted)) = rows::get_endpoint_any(&inner.client().await?, id).await? {
            let mut ctx = EndpointCtx::from_endpoint(&ep);
            ctx.deleted = deleted;
            let ctx = Arc::new(ctx);
            inner.contexts.put_endpoint(ctx.clone());
            inner.subscribers.broadcast(Hint::EndpointChanged(ctx));
        }
    } else if let Some(rest) = payload.strip_prefix("revoked:") {
        // Node ids contain no ':' (`node_<ulid>`); split at the last one to be safe.
        if let Some((node, seqs)) = rest.rsplit_once(':') {
            let seqs: Vec<i64> = seqs.split(',').filter_map(|s| s.parse().ok()).collect();
            if !seqs.is_empty() {
                inner.subscribers.send_to(node, Hint::Revoked(seqs));
            }
        }
    } else {
        tracing::debug!(hint = %payload, "unknown hint ignored");
    }
    Ok(())
}
