//! The scheduler: one task that owns all in-memory delivery state and decides who may be
//! attempted now. It works against the store's claim-based queue (`herald_store::queue`).
//!
//! - **Claims.** Memory holds only deliveries this node has claimed: due before `now +
//!   window`. Claims run on a timer (`claim_interval`), at once when a hint says work was
//!   committed, and again straight away while a claim comes back full. What another node
//!   holds is never claimed here, so several engines on one database never attempt the same
//!   delivery while their leases hold. Hints are only wake-ups: if one is lost, the timer's
//!   claim finds the work anyway.
//! - **Lost answers.** A claim can commit and its answer be lost with the connection; so can
//!   an outcome that kept the delivery held. Then the store says this node holds work its
//!   memory lacks, and nobody would send it. After such a failure the next claim first
//!   takes back what the store says the node holds ([`Queue::held`]); memory skips what it
//!   already has.
//! - **Lease.** The node renews its lease every `lease / 3`. When a renewal says the lease
//!   was lost (or none succeeded for a whole lease, e.g. the database was unreachable), other
//!   nodes may have taken the work over: the scheduler forgets everything it holds (late
//!   outcomes of attempts in flight are stale and change nothing), takes a new node id and
//!   claims afresh. Every `lease / 2` it also rescues the work of nodes whose lease expired.
//! - **Timers.** A `BTreeSet` of `(next_at, seq)`: ordered, so the earliest is at the front
//!   and eviction takes from the back.
//! - **Queues.** Due deliveries move to their destination's ready queue (an endpoint, or the
//!   origin of an ad-hoc `notify_url` within its app). A destination has its own in-flight
//!   limit; a global limit caps all attempts, and an app may hold at most its share of it
//!   (`app_max_in_flight`), so one tenant's hanging endpoints, whose limits can add up past
//!   the global one, never take every slot from the others. Destinations take turns (round
//!   robin), so a slow one fills only its own slots. A destination whose recent attempts all
//!   failed drops to one attempt at a time until one succeeds.
//! - **Parking.** When memory passes its bound because a destination cannot keep up, the
//!   tail of the longest ready queues is released in the store with a later time (no attempt
//!   spent) and dropped from memory; claims bring it back later.
//! - **No silent loss.** Every attempt task reports back, even when it panics (a drop
//!   guard), so slots never leak. An outcome the store cannot take is offered again for up
//!   to a lease (the database may be restarting); after that the delivery is attempted
//!   again after a backoff (it stays held by this node, so nobody else sends it).
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use herald_store::{
    AppCtx, AttemptReport, ClaimParams, CompleteParams, Completed, DeliveryStatus, EndpointCtx,
    HeldParams, Hint, HintReceiver, Job, Lease, LeaseParams, Millis, NodeId, Outcome, Queue,
    ReleaseParams, StoreError,
};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::time::Instant;

use crate::attempt::{effective_rules, next_outcome, Attempter};
use crate::{new_node_id, Clock, EngineConfig, EngineStats};

/// Consecutive failed attempts after which a destination gets one attempt at a time.
const UNHEALTHY_AFTER: u32 = 5;
/// Hints or task messages handled before dispatching again.
const MSG_BATCH: usize = 1024;
/// Delay before a job whose outcome could not be recorded is tried again; doubles with each
/// consecutive storage failure, up to `RECORD_RETRY_MAX`.
const RECORD_RETRY: Millis = 1_000;
const RECORD_RETRY_MAX: Millis = 30_000;
/// Pauses between tries to record an outcome while the store fails.
const RECORD_PAUSE_MIN: Duration = Duration::from_millis(250);
const RECORD_PAUSE_MAX: Duration = Duration::from_secs(4);
/// Ready jobs a destination keeps in memory when parking.
const PARK_KEEP_MIN: usize = 64;
/// Pause before claiming again after a failed claim, lease or release call.
const STORE_RETRY: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// In the timer set.
    Waiting,
    /// In its destination's ready queue.
    Ready,
    InFlight,
    /// Revoked (canceled, retried by hand, lease lost) while in flight: drop it when its
    /// outcome arrives.
    InFlightRevoked,
    /// Being released (parked) in the store; leaves memory when the store confirms.
    Parking,
}

struct Slot {
    job: Arc<Job>,
    state: State,
}

#[derive(Default)]
struct Dest {
    /// The app the destination belongs to (its share of the global limit is the app's).
    app: Arc<str>,
    ready: VecDeque<i64>,
    in_flight: u32,
    limit: u32,
    consecutive_failures: u32,
    /// In `ready_dests`.
    queued: bool,
}

impl Dest {
    fn effective_limit(&self) -> u32 {
        if self.consecutive_failures >= UNHEALTHY_AFTER {
            1
        } else {
            self.limit.max(1)
        }
    }

    fn can_send(&self) -> bool {
        !self.ready.is_empty() && self.in_flight < self.effective_limit()
    }
}

/// What spawned tasks (attempts and store calls) tell the scheduler.
enum TaskMsg {
    /// The HTTP exchange ended: release the destination's slot. `success` is the
    /// receiver's answer, for the destination's health.
    HttpDone { dest: Arc<str>, success: bool },
    /// The store took the attempt's outcome.
    Completed { job: Arc<Job>, completed: Completed },
    /// The outcome never reached the store; `slot_held` when the HTTP slot was not
    /// released yet either.
    Lost {
        job: Arc<Job>,
        dest: Arc<str>,
        slot_held: bool,
    },
    /// A claim's answer (`None`: it failed). `node` is who claimed.
    Claimed {
        node: NodeId,
        limit: usize,
        jobs: Option<Vec<Arc<Job>>>,
    },
    /// A release's answer: the seqs asked for and those the store released.
    Released {
        requested: Vec<i64>,
        released: Option<Vec<i64>>,
    },
    /// A lease renewal's answer.
    Renewed { node: NodeId, lease: Option<Lease> },
    /// The node (re)registered.
    Registered { node: NodeId, ok: bool },
}

/// Reports an attempt task's job as lost unless disarmed (its outcome reached the store).
/// Runs on panic too, so the scheduler's slots never leak.
struct AttemptGuard {
    job: Option<Arc<Job>>,
    dest: Arc<str>,
    slot_held: bool,
    tx: UnboundedSender<TaskMsg>,
}

impl AttemptGuard {
    /// The HTTP exchange is over: free the slot now, before the outcome is committed, so a
    /// destination's in-flight limit counts requests, not commits.
    fn http_done(&mut self, success: bool) {
        self.slot_held = false;
        let _ = self.tx.send(TaskMsg::HttpDone {
            dest: self.dest.clone(),
            success,
        });
    }

    fn disarm(&mut self) -> Option<Arc<Job>> {
        self.job.take()
    }
}

impl Drop for AttemptGuard {
    fn drop(&mut self) {
        if let Some(job) = self.job.take() {
            let _ = self.tx.send(TaskMsg::Lost {
                job,
                dest: self.dest.clone(),
                slot_held: self.slot_held,
            });
        }
    }
}

pub(crate) struct Scheduler {
    queue: Arc<dyn Queue>,
    config: EngineConfig,
    clock: Arc<dyn Clock>,
    attempter: Arc<dyn Attempter>,
    stats: Arc<EngineStats>,
    node: NodeId,
    /// The node's lease is registered (claims wait until it is).
    registered: bool,
    timers: BTreeSet<(Millis, i64)>,
    jobs: HashMap<i64, Slot>,
    dests: HashMap<Arc<str>, Dest>,
    ready_dests: VecDeque<Arc<str>>,
    in_flight: usize,
    /// Attempts in flight per app, against `EngineConfig::app_max_in_flight`.
    app_in_flight: HashMap<Arc<str>, usize>,
    /// Destinations with work that wait because their app holds its whole share.
    waiting_for_app: HashMap<Arc<str>, Vec<Arc<str>>>,
    claim_pending: bool,
    /// A hint arrived while a claim was running: claim again when it answers.
    claim_again: bool,
    /// A store call's answer was lost (a claim that failed, an outcome that may have
    /// applied): the next claim first takes back what the store says this node holds.
    readopt: bool,
    next_claim_at: Instant,
    renew_pending: bool,
    next_renew_at: Instant,
    /// When the lease was last confirmed (by registering or renewing).
    lease_confirmed_at: Instant,
    next_rescue_at: Instant,
    apps: HashMap<String, Arc<AppCtx>>,
    endpoints: HashMap<String, Arc<EndpointCtx>>,
    /// Jobs in `Parking` state.
    parking: usize,
    /// Attempts whose HTTP exchange is over and whose outcome is being committed.
    recording: usize,
    /// Consecutive storage failures to record outcomes (for backoff).
    record_failures: u32,
    task_tx: UnboundedSender<TaskMsg>,
    task_rx: Option<UnboundedReceiver<TaskMsg>>,
}

impl Scheduler {
    pub(crate) fn new(
        queue: Arc<dyn Queue>,
        config: EngineConfig,
        attempter: Arc<dyn Attempter>,
        stats: Arc<EngineStats>,
    ) -> Scheduler {
        let (task_tx, task_rx) = unbounded_channel();
        let now = Instant::now();
        Scheduler {
            queue,
            clock: config.clock.clone(),
            config,
            attempter,
            stats,
            node: new_node_id(),
            registered: false,
            timers: BTreeSet::new(),
            jobs: HashMap::new(),
            dests: HashMap::new(),
            ready_dests: VecDeque::new(),
            in_flight: 0,
            app_in_flight: HashMap::new(),
            waiting_for_app: HashMap::new(),
            claim_pending: false,
            claim_again: false,
            readopt: false,
            next_claim_at: now,
            renew_pending: false,
            next_renew_at: now,
            lease_confirmed_at: now,
            next_rescue_at: now,
            apps: HashMap::new(),
            endpoints: HashMap::new(),
            parking: 0,
            recording: 0,
            record_failures: 0,
            task_tx,
            task_rx: Some(task_rx),
        }
    }

    fn lease_ms(&self) -> Millis {
        self.config.lease.as_millis() as Millis
    }

    fn window_ms(&self) -> Millis {
        self.config.window.as_millis() as Millis
    }

    pub(crate) async fn run(mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut tasks = self.task_rx.take().expect("run is called once");
        // `None` once the store dropped its side: then the timer's claims alone find work.
        let mut hints = Some(self.queue.hints(self.node.clone()));
        self.register();
        loop {
            let now = self.clock.now();
            self.promote_due(now);
            self.dispatch();
            self.keep_memory_bounded(now);
            self.maintain(now);
            self.stats
                .in_memory
                .store(self.jobs.len() as u64, Ordering::Relaxed);
            self.stats
                .in_flight
                .store(self.in_flight as u64, Ordering::Relaxed);

            let wake = self.next_wake(now);
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                Some(msg) = tasks.recv() => {
                    self.task_msg(msg);
                    for _ in 0..MSG_BATCH {
                        match tasks.try_recv() {
                            Ok(msg) => self.task_msg(msg),
                            Err(_) => break,
                        }
                    }
                }
                hint = next_hint(&mut hints) => {
                    match hint {
                        Some(h) => {
                            self.hint(h);
                            for _ in 0..MSG_BATCH {
                                match hints.as_mut().map(|r| r.try_recv()) {
                                    Some(Ok(h)) => self.hint(h),
                                    _ => break,
                                }
                            }
                        }
                        None => hints = None,
                    }
                }
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
        self.shut_down(tasks).await;
    }

    /// When the loop must look again: the first timer, the next claim, renewal or rescue.
    fn next_wake(&self, now: Millis) -> Instant {
        let soon = Instant::now() + Duration::from_millis(1);
        let mut wake = self
            .timers
            .first()
            .map(|&(t, _)| Instant::now() + Duration::from_millis((t - now).max(0) as u64))
            .unwrap_or(Instant::now() + Duration::from_secs(3600));
        if self.registered && !self.claim_pending {
            wake = wake.min(self.next_claim_at.max(soon));
        }
        if !self.renew_pending {
            wake = wake.min(self.next_renew_at.max(soon));
        }
        wake.min(self.next_rescue_at.max(soon))
    }

    /// Lets attempts in flight finish and be recorded, for a bounded time, then gives back
    /// everything still held so another node (or the next start) takes it at once.
    async fn shut_down(&mut self, mut tasks: UnboundedReceiver<TaskMsg>) {
        let deadline = Instant::now() + self.config.shutdown_grace;
        while self.in_flight > 0 || self.recording > 0 {
            match tokio::time::timeout_at(deadline, tasks.recv()).await {
                Ok(Some(msg)) => self.task_msg(msg),
                _ => break,
            }
        }
        let held: Vec<(i64, u32)> = self
            .jobs
            .values()
            .filter(|s| matches!(s.state, State::Waiting | State::Ready))
            .map(|s| (s.job.seq, s.job.attempts))
            .collect();
        if !held.is_empty() {
            let params = ReleaseParams {
                node: self.node.clone(),
                jobs: held,
                next_at: None,
                now: self.clock.now(),
            };
            let _ = tokio::time::timeout(Duration::from_secs(2), self.queue.release(params)).await;
        }
    }

    // --- the lease and claims ------------------------------------------------------------

    fn register(&mut self) {
        let params = LeaseParams {
            node: self.node.clone(),
            now: self.clock.now(),
            lease: self.lease_ms(),
        };
        let queue = self.queue.clone();
        let tx = self.task_tx.clone();
        self.renew_pending = true;
        tokio::spawn(async move {
            let node = params.node.clone();
            let ok = match queue.register_node(params, true).await {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot register the node's lease; retrying");
                    false
                }
            };
            let _ = tx.send(TaskMsg::Registered { node, ok });
        });
    }

    /// Starts the lease renewal, the rescue of dead nodes' work and claims when they are due.
    fn maintain(&mut self, now: Millis) {
        let instant = Instant::now();
        if !self.renew_pending && instant >= self.next_renew_at {
            if !self.registered {
                self.register();
            } else {
                self.renew_pending = true;
                let params = LeaseParams {
                    node: self.node.clone(),
                    now,
                    lease: self.lease_ms(),
                };
                let queue = self.queue.clone();
                let tx = self.task_tx.clone();
                tokio::spawn(async move {
                    let node = params.node.clone();
                    let lease = match queue.renew_lease(params).await {
                        Ok(l) => Some(l),
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot renew the node's lease");
                            None
                        }
                    };
                    let _ = tx.send(TaskMsg::Renewed { node, lease });
                });
            }
        }
        if instant >= self.next_rescue_at {
            self.next_rescue_at = instant + self.config.lease / 2;
            let queue = self.queue.clone();
            tokio::spawn(async move {
                match queue.rescue(now).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(
                        deliveries = n,
                        "released the work of nodes whose lease expired"
                    ),
                    Err(e) => tracing::warn!(error = %e, "cannot rescue expired leases"),
                }
            });
        }
        self.maybe_claim(now);
    }

    fn maybe_claim(&mut self, now: Millis) {
        if !self.registered || self.claim_pending || Instant::now() < self.next_claim_at {
            return;
        }
        let room = self.config.max_in_memory.saturating_sub(self.jobs.len());
        if room < self.config.max_in_memory / 4 {
            // Memory is too full to be worth a claim; look again soon (parking and
            // completions free room).
            self.next_claim_at = Instant::now() + Duration::from_millis(100);
            return;
        }
        let limit = room.min(self.config.claim_batch);
        let params = ClaimParams {
            node: self.node.clone(),
            now,
            horizon: now + self.window_ms(),
            limit,
        };
        self.claim_pending = true;
        self.claim_again = false;
        let readopt = std::mem::take(&mut self.readopt).then(|| HeldParams {
            node: params.node.clone(),
            now,
            horizon: params.horizon,
        });
        let queue = self.queue.clone();
        let tx = self.task_tx.clone();
        tokio::spawn(async move {
            let node = params.node.clone();
            let held = match readopt {
                Some(p) => queue.held(p).await.map(Some),
                None => Ok(None),
            };
            let jobs = match held {
                Ok(held) => match queue.claim(params).await {
                    Ok(mut jobs) => {
                        jobs.extend(held.unwrap_or_default());
                        Some(jobs)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "claiming due deliveries failed");
                        None
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, "reading what this node holds failed");
                    None
                }
            };
            let _ = tx.send(TaskMsg::Claimed { node, limit, jobs });
        });
    }

    fn on_claimed(&mut self, node: NodeId, limit: usize, jobs: Option<Vec<Arc<Job>>>) {
        self.claim_pending = false;
        let Some(jobs) = jobs else {
            // The claim may have committed and its answer been lost.
            self.readopt = true;
            self.next_claim_at = Instant::now() + STORE_RETRY;
            return;
        };
        self.stats.claims.fetch_add(1, Ordering::Relaxed);
        if node != self.node {
            // Claimed under a lease that has since been lost: those are not ours to send.
            return;
        }
        let full = jobs.len() >= limit;
        for job in jobs {
            self.admit(job);
        }
        self.next_claim_at = if full || self.claim_again {
            Instant::now()
        } else {
            Instant::now() + self.config.claim_interval
        };
    }

    fn on_renewed(&mut self, node: NodeId, lease: Option<Lease>) {
        self.renew_pending = false;
        if node != self.node {
            return;
        }
        match lease {
            Some(Lease::Held) => {
                self.lease_confirmed_at = Instant::now();
                self.next_renew_at = Instant::now() + self.config.lease / 3;
            }
            Some(Lease::Lost) => {
                self.lease_lost("the node's lease expired and its work was released")
            }
            None => {
                self.next_renew_at = Instant::now() + STORE_RETRY;
                if self.lease_confirmed_at.elapsed() >= self.config.lease {
                    self.lease_lost("the lease could not be renewed for a whole lease period");
                }
            }
        }
    }

    /// Other nodes may hold our work now: forget it all and start over as a new node.
    fn lease_lost(&mut self, why: &str) {
        tracing::warn!(node = %self.node, reason = why, "lease lost: dropping held work and re-registering");
        let seqs: Vec<i64> = self.jobs.keys().copied().collect();
        self.revoke(&seqs);
        self.node = new_node_id();
        self.registered = false;
        self.next_renew_at = Instant::now();
    }

    fn on_registered(&mut self, node: NodeId, ok: bool) {
        self.renew_pending = false;
        if node != self.node {
            return;
        }
        if ok {
            self.registered = true;
            self.lease_confirmed_at = Instant::now();
            self.next_renew_at = Instant::now() + self.config.lease / 3;
            self.next_claim_at = Instant::now();
        } else {
            self.next_renew_at = Instant::now() + STORE_RETRY;
        }
    }

    /// Takes a claimed job into memory (or refreshes a waiting one).
    fn admit(&mut self, job: Arc<Job>) {
        if let Some(ep) = &job.endpoint {
            self.endpoints
                .entry(ep.id.clone())
                .or_insert_with(|| ep.clone());
        }
        self.apps
            .entry(job.app.id.clone())
            .or_insert_with(|| job.app.clone());
        match self.jobs.get_mut(&job.seq) {
            Some(slot) => {
                if slot.state == State::Waiting {
                    self.timers.remove(&slot.job.key());
                    self.timers.insert(job.key());
                    slot.job = job;
                }
            }
            None => {
                self.timers.insert(job.key());
                self.jobs.insert(
                    job.seq,
                    Slot {
                        job,
                        state: State::Waiting,
                    },
                );
            }
        }
    }

    /// Drops jobs that are no longer this node's to send.
    fn revoke(&mut self, seqs: &[i64]) {
        for &seq in seqs {
            let Some(slot) = self.jobs.get_mut(&seq) else {
                continue;
            };
            match slot.state {
                State::InFlight => slot.state = State::InFlightRevoked,
                State::InFlightRevoked => {}
                State::Parking => {
                    self.parking -= 1;
                    self.jobs.remove(&seq);
                }
                // A ready one stays in its queue as a stale entry, skipped there.
                State::Waiting | State::Ready => {
                    self.timers.remove(&slot.job.key());
                    self.jobs.remove(&seq);
                }
            }
        }
    }

    // --- memory --------------------------------------------------------------------------

    /// Keeps memory bounded. First releases the latest waiting jobs (the store keeps them;
    /// a later claim brings them back). If ready jobs alone exceed the bound (destinations
    /// that cannot keep up), parks the tail of the longest ready queues with a later time.
    fn keep_memory_bounded(&mut self, now: Millis) {
        let max = self.config.max_in_memory;
        if self.jobs.len() - self.parking <= max {
            return;
        }
        let target = max * 3 / 4;
        let mut count = self.jobs.len() - self.parking;
        let mut evict = Vec::new();
        for &key in self.timers.iter().rev() {
            if count <= target {
                break;
            }
            evict.push(key);
            count -= 1;
        }
        let mut to_release = Vec::new();
        for key in evict {
            self.timers.remove(&key);
            if let Some(slot) = self.jobs.get_mut(&key.1) {
                slot.state = State::Parking;
                to_release.push(slot.job.clone());
            }
        }
        if !to_release.is_empty() {
            self.release(to_release, None);
        }
        if count <= max {
            return;
        }
        // Park: the longest ready queues give up their tails.
        let mut queues: Vec<(usize, Arc<str>)> = self
            .dests
            .iter()
            .map(|(k, d)| (d.ready.len(), k.clone()))
            .filter(|(len, _)| *len > PARK_KEEP_MIN)
            .collect();
        queues.sort_unstable_by_key(|q| std::cmp::Reverse(q.0));
        let mut parked = Vec::new();
        for (_, key) in queues {
            if count <= target {
                break;
            }
            let Some(dest) = self.dests.get_mut(&key) else {
                continue;
            };
            let keep = (dest.limit as usize * 16).max(PARK_KEEP_MIN);
            while dest.ready.len() > keep && count > target {
                let Some(seq) = dest.ready.pop_back() else {
                    break;
                };
                if let Some(slot) = self.jobs.get_mut(&seq) {
                    if slot.state == State::Ready {
                        slot.state = State::Parking;
                        parked.push(slot.job.clone());
                        count -= 1;
                    }
                }
            }
        }
        if parked.is_empty() {
            return;
        }
        tracing::warn!(
            count = parked.len(),
            "destinations cannot keep up: parking part of their backlog in the store"
        );
        self.stats
            .parked
            .fetch_add(parked.len() as u64, Ordering::Relaxed);
        // Beyond the claim horizon, so claims do not bring them straight back.
        self.release(parked, Some(now + self.window_ms() + 1));
    }

    /// Gives jobs (already in `Parking` state) back to the store.
    fn release(&mut self, jobs: Vec<Arc<Job>>, next_at: Option<Millis>) {
        self.parking += jobs.len();
        let requested: Vec<i64> = jobs.iter().map(|j| j.seq).collect();
        let params = ReleaseParams {
            node: self.node.clone(),
            jobs: jobs.iter().map(|j| (j.seq, j.attempts)).collect(),
            next_at,
            now: self.clock.now(),
        };
        let queue = self.queue.clone();
        let tx = self.task_tx.clone();
        tokio::spawn(async move {
            let released = match queue.release(params).await {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!(error = %e, "releasing deliveries failed");
                    None
                }
            };
            let _ = tx.send(TaskMsg::Released {
                requested,
                released,
            });
        });
    }

    fn on_released(&mut self, requested: Vec<i64>, released: Option<Vec<i64>>) {
        let released: HashSet<i64> = released.unwrap_or_default().into_iter().collect();
        for seq in requested {
            let Some(slot) = self.jobs.get_mut(&seq) else {
                continue;
            };
            if slot.state != State::Parking {
                continue;
            }
            self.parking -= 1;
            if released.contains(&seq) {
                self.jobs.remove(&seq);
            } else {
                // Not released (the call failed, or the delivery changed meanwhile and a
                // hint says so): keep it as it was.
                slot.state = State::Waiting;
                self.timers.insert(slot.job.key());
            }
        }
    }

    // --- hints and task messages ---------------------------------------------------------

    fn hint(&mut self, hint: Hint) {
        match hint {
            Hint::Claimed(jobs) => {
                for job in jobs {
                    self.admit(job);
                }
            }
            Hint::Work => {
                if self.claim_pending {
                    self.claim_again = true;
                } else {
                    self.next_claim_at = Instant::now();
                }
            }
            Hint::Revoked(seqs) => self.revoke(&seqs),
            Hint::AppChanged(app) => {
                self.apps.insert(app.id.clone(), app);
            }
            Hint::EndpointChanged(ep) => {
                if let Some(dest) = self.dests.get_mut(ep.id.as_str()) {
                    dest.limit = ep.max_in_flight;
                }
                if ep.deleted {
                    self.endpoints.remove(&ep.id);
                } else {
                    self.endpoints.insert(ep.id.clone(), ep);
                }
            }
        }
    }

    fn task_msg(&mut self, msg: TaskMsg) {
        match msg {
            TaskMsg::HttpDone { dest, success } => {
                self.recording += 1;
                self.release_slot(dest, Some(success));
            }
            TaskMsg::Completed { job, completed } => {
                self.recording = self.recording.saturating_sub(1);
                self.on_completed(job, completed);
            }
            TaskMsg::Lost {
                job,
                dest,
                slot_held,
            } => {
                if slot_held {
                    self.release_slot(dest, None);
                } else {
                    self.recording = self.recording.saturating_sub(1);
                }
                self.attempt_lost(job);
            }
            TaskMsg::Claimed { node, limit, jobs } => self.on_claimed(node, limit, jobs),
            TaskMsg::Released {
                requested,
                released,
            } => self.on_released(requested, released),
            TaskMsg::Renewed { node, lease } => self.on_renewed(node, lease),
            TaskMsg::Registered { node, ok } => self.on_registered(node, ok),
        }
    }

    fn on_completed(&mut self, job: Arc<Job>, completed: Completed) {
        self.record_failures = 0;
        let revoked = matches!(
            self.jobs.get(&job.seq).map(|s| s.state),
            Some(State::InFlightRevoked)
        );
        self.jobs.remove(&job.seq);
        if completed.applied {
            match completed.status {
                Some(DeliveryStatus::Succeeded) => {
                    self.stats.succeeded.fetch_add(1, Ordering::Relaxed);
                }
                Some(DeliveryStatus::Failed) => {
                    self.stats.failed.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
        }
        if revoked {
            return;
        }
        if !completed.applied && completed.status == Some(DeliveryStatus::Pending) {
            // Still pending but not as this attempt saw it: perhaps this very outcome was
            // applied by a try whose answer was lost. Take back whatever the store says
            // this node holds.
            self.readopt = true;
            self.next_claim_at = Instant::now();
        }
        if let Some(held) = completed.held {
            self.admit(held);
        }
        if let Some(next) = completed.successor {
            self.admit(next);
        }
    }

    /// An attempt whose outcome did not reach the store (storage failure, or the task
    /// died): release its slots and try it again after a backoff. The store still shows the
    /// delivery as held by this node, so nobody else sends it meanwhile.
    fn attempt_lost(&mut self, job: Arc<Job>) {
        let revoked = matches!(
            self.jobs.get(&job.seq).map(|s| s.state),
            Some(State::InFlightRevoked)
        );
        self.jobs.remove(&job.seq);
        if revoked {
            return;
        }
        self.record_failures = self.record_failures.saturating_add(1);
        let backoff = RECORD_RETRY
            .saturating_mul(1 << self.record_failures.min(20))
            .min(RECORD_RETRY_MAX);
        let mut retry = (*job).clone();
        retry.next_at = self.clock.now() + backoff;
        self.admit(Arc::new(retry));
    }

    /// Releases an attempt's HTTP slots. `success` is `None` when the endpoint's answer is
    /// not known (the attempt was lost), which leaves its health as it was.
    fn release_slot(&mut self, key: Arc<str>, success: Option<bool>) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if let Some(dest) = self.dests.get(&key) {
            let app = dest.app.clone();
            self.app_slot_freed(&app);
        }
        if let Some(dest) = self.dests.get_mut(&key) {
            dest.in_flight = dest.in_flight.saturating_sub(1);
            match success {
                Some(true) => dest.consecutive_failures = 0,
                Some(false) => {
                    dest.consecutive_failures = dest.consecutive_failures.saturating_add(1)
                }
                None => {}
            }
            if dest.can_send() && !dest.queued {
                dest.queued = true;
                self.ready_dests.push_back(key);
            } else if dest.ready.is_empty() && dest.in_flight == 0 {
                self.dests.remove(&key);
            }
        }
    }

    /// One of `app`'s attempts ended: when the app was at its share, its waiting
    /// destinations take turns again.
    fn app_slot_freed(&mut self, app: &Arc<str>) {
        let Some(n) = self.app_in_flight.get_mut(app) else {
            return;
        };
        *n = n.saturating_sub(1);
        let now = *n;
        if now == 0 {
            self.app_in_flight.remove(app);
        }
        if now < self.config.app_max_in_flight {
            for dkey in self.waiting_for_app.remove(app).unwrap_or_default() {
                if let Some(dest) = self.dests.get_mut(&dkey) {
                    if dest.can_send() && !dest.queued {
                        dest.queued = true;
                        self.ready_dests.push_back(dkey);
                    }
                }
            }
        }
    }

    // --- dispatch ------------------------------------------------------------------------

    /// The destination of a job: its endpoint, or (ad-hoc `notify_url`) the URL's origin
    /// within the app, so two apps notifying one host do not share a queue.
    fn dest_key(&self, job: &Job) -> Arc<str> {
        match &job.endpoint {
            Some(ep) => Arc::from(ep.id.as_str()),
            None => Arc::from(format!("{} {}", job.app.id, origin_of(&job.url))),
        }
    }

    /// Moves every job due at `now` to its destination's ready queue.
    fn promote_due(&mut self, now: Millis) {
        while let Some(&key) = self.timers.first() {
            if key.0 > now {
                break;
            }
            self.timers.remove(&key);
            let Some(slot) = self.jobs.get_mut(&key.1) else {
                continue;
            };
            slot.state = State::Ready;
            let job = slot.job.clone();
            let dkey = self.dest_key(&job);
            let limit = match &job.endpoint {
                Some(ep) => self
                    .endpoints
                    .get(&ep.id)
                    .map(|e| e.max_in_flight)
                    .unwrap_or(ep.max_in_flight),
                None => self.config.default_max_in_flight,
            };
            let dest = self.dests.entry(dkey.clone()).or_insert_with(|| Dest {
                app: Arc::from(job.app.id.as_str()),
                limit,
                ..Dest::default()
            });
            dest.ready.push_back(key.1);
            if dest.can_send() && !dest.queued {
                dest.queued = true;
                self.ready_dests.push_back(dkey);
            }
        }
    }

    /// Starts attempts while there is capacity, one per destination per turn.
    fn dispatch(&mut self) {
        while self.in_flight < self.config.global_concurrency {
            let Some(dkey) = self.ready_dests.pop_front() else {
                break;
            };
            let Some(dest) = self.dests.get_mut(&dkey) else {
                continue;
            };
            dest.queued = false;
            let app_busy = self.app_in_flight.get(&dest.app).copied().unwrap_or(0);
            if app_busy >= self.config.app_max_in_flight && dest.can_send() {
                // The app holds its whole share of the global limit: this destination waits
                // for one of the app's own attempts to end, and others take the slots.
                self.waiting_for_app
                    .entry(dest.app.clone())
                    .or_default()
                    .push(dkey);
                continue;
            }
            let mut started = None;
            while dest.in_flight < dest.effective_limit() {
                let Some(seq) = dest.ready.pop_front() else {
                    break;
                };
                match self.jobs.get_mut(&seq) {
                    Some(slot) if slot.state == State::Ready => {
                        slot.state = State::InFlight;
                        dest.in_flight += 1;
                        started = Some(slot.job.clone());
                        break;
                    }
                    _ => continue, // stale entry (revoked or parked)
                }
            }
            if dest.can_send() {
                dest.queued = true;
                self.ready_dests.push_back(dkey.clone());
            }
            if let Some(job) = started {
                self.in_flight += 1;
                *self.app_in_flight.entry(dest.app.clone()).or_default() += 1;
                self.spawn_attempt(job, dkey.clone());
            } else if dest.ready.is_empty() && dest.in_flight == 0 && dest.consecutive_failures == 0
            {
                self.dests.remove(&dkey);
            }
        }
    }

    fn spawn_attempt(&self, job: Arc<Job>, dest: Arc<str>) {
        let app = self
            .apps
            .get(&job.app.id)
            .cloned()
            .unwrap_or_else(|| job.app.clone());
        let endpoint = job.endpoint.as_ref().map(|e| {
            self.endpoints
                .get(&e.id)
                .cloned()
                .unwrap_or_else(|| e.clone())
        });
        let queue = self.queue.clone();
        let attempter = self.attempter.clone();
        let clock = self.clock.clone();
        let stats = self.stats.clone();
        let node = self.node.clone();
        let window = self.window_ms();
        let lease = self.config.lease;
        let tx = self.task_tx.clone();
        let mut guard = AttemptGuard {
            job: Some(job.clone()),
            dest,
            slot_held: true,
            tx: self.task_tx.clone(),
        };
        tokio::spawn(async move {
            let result = attempter.attempt(&job, &app, endpoint.as_deref()).await;
            if result.is_local() {
                // Herald ran out of something of its own (descriptors, buffers, memory): not
                // the receiver's failure. Dropping the guard reports the job as lost, which
                // frees its slot without judging the destination and tries it again after a
                // backoff, the attempt not spent.
                stats.local_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(delivery = %job.id, error = ?result.attempt.error,
                    "an attempt failed for lack of local resources; it is not counted");
                return;
            }
            stats.attempts.fetch_add(1, Ordering::Relaxed);
            guard.http_done(result.verdict == herald_protocols::Verdict::Acked);
            let (retry, _) = effective_rules(&app, endpoint.as_deref());
            let now = clock.now();
            let outcome: Outcome = {
                let mut rng = rand::thread_rng();
                next_outcome(&result.verdict, result.attempt.n, retry, now, &mut rng)
            };
            tracing::debug!(delivery = %job.id, n = result.attempt.n, status = ?result.attempt.status_code,
                error_class = ?result.attempt.error_class, ?outcome, "attempt");
            let params = CompleteParams {
                node,
                report: AttemptReport {
                    job: job.clone(),
                    attempt: result.attempt,
                    outcome,
                },
                now,
                horizon: now + window,
            };
            // The receiver answered: record that, retrying while the database is away (for
            // up to a lease; after that another node may hold the delivery, and a late
            // outcome would be stale anyway). Re-sending the request would bother the
            // receiver for nothing. If it still cannot be recorded, the guard reports the
            // job as lost and it is attempted again later.
            let give_up = tokio::time::Instant::now() + lease;
            let mut pause = RECORD_PAUSE_MIN;
            loop {
                match queue.complete(params.clone()).await {
                    Ok(completed) => {
                        if let Some(job) = guard.disarm() {
                            let _ = tx.send(TaskMsg::Completed { job, completed });
                        }
                        break;
                    }
                    Err(e @ StoreError::Closed) => {
                        tracing::warn!(error = %e, delivery = %job.id, "the store is closed: the outcome is not recorded");
                        break;
                    }
                    Err(e) if tokio::time::Instant::now() + pause < give_up => {
                        tracing::warn!(error = %e, delivery = %job.id, "recording an attempt failed; trying again");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(RECORD_PAUSE_MAX);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, delivery = %job.id, "recording an attempt failed");
                        break;
                    }
                }
            }
        });
    }
}

/// The next hint; never resolves once the hint stream is gone.
async fn next_hint(hints: &mut Option<HintReceiver>) -> Option<Hint> {
    match hints {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// `scheme://host:port` of a URL: the destination key of ad-hoc deliveries.
fn origin_of(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => u.origin().ascii_serialization(),
        Err(_) => url.to_string(),
    }
}
