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
//! - **Endpoint health.** Every failed attempt of an endpoint, and its first success after
//!   failures (otherwise one success per `success_record_interval`), is recorded in the
//!   store, which applies the breaker rule (`herald_store::health`) atomically across nodes.
//!   When the breaker opens or the endpoint is disabled, the endpoint's jobs in memory go
//!   back to the store (no attempt spent) and claims skip them until the cool-down ends;
//!   then the endpoint is half-open and gets one attempt at a time until a success closes
//!   it. The store commits each notified transition's ops notification with it (an outbox,
//!   `herald_store::ops_outbox`); it is then delivered like any other notification.
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
    AppCtx, AttemptOutcome, AttemptReport, BreakerState, ClaimParams, ClaimedDelivery,
    CompleteParams, Completed, DeliveryStatus, EndpointCtx, HealthRecorded, HealthReport,
    HealthSignal, HealthTransition, HeldParams, Hint, HintReceiver, Lease, LeaseParams, NodeId,
    Queue, ReleaseParams, StoreError, UnixMillis,
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
const RECORD_RETRY: Duration = Duration::from_secs(1);
const RECORD_RETRY_MAX: Duration = Duration::from_secs(30);
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
    job: Arc<ClaimedDelivery>,
    state: State,
}

#[derive(Default)]
struct HealthMemo {
    /// A failure was reported since the last recorded success.
    dirty: bool,
    success_recorded_at: Option<UnixMillis>,
    /// A report is being recorded; what comes meanwhile waits in `queued` and goes in the
    /// next report, so an endpoint has one health write in flight at a time.
    recording: bool,
    queued: Vec<HealthSignal>,
    /// A failure that may open the breaker or disable the endpoint (at the threshold, a
    /// failed probe, a 410) is queued or being recorded: the endpoint sends nothing until
    /// the store answered, so no attempt slips out between the failure and the transition.
    gating: bool,
    /// `gating` for the report being recorded.
    recording_gates: bool,
}

#[derive(Default)]
struct Dest {
    /// The app the destination belongs to (its share of the global limit is the app's).
    app: Arc<str>,
    ready: VecDeque<i64>,
    in_flight: u32,
    limit: u32,
    consecutive_failures: u32,
    /// The endpoint's breaker is half-open: one probe at a time until a success closes it.
    probe: bool,
    /// In `ready_dests`.
    queued: bool,
}

impl Dest {
    fn effective_limit(&self) -> u32 {
        if self.probe || self.consecutive_failures >= UNHEALTHY_AFTER {
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
    /// The HTTP exchange ended: release the destination's slot. `signal` is the
    /// receiver's answer, for the destination's health (and the endpoint's, if any).
    HttpDone {
        dest: Arc<str>,
        endpoint: Option<Arc<str>>,
        signal: HealthSignal,
    },
    /// The store recorded an endpoint's health report (`None`: the call failed, or the
    /// endpoint is gone).
    Health {
        endpoint: Arc<str>,
        signal: HealthSignal,
        recorded: Option<Box<HealthRecorded>>,
    },
    /// The store took the attempt's outcome.
    Completed {
        job: Arc<ClaimedDelivery>,
        completed: Completed,
    },
    /// The outcome never reached the store; `slot_held` when the HTTP slot was not
    /// released yet either.
    Lost {
        job: Arc<ClaimedDelivery>,
        dest: Arc<str>,
        slot_held: bool,
    },
    /// A claim's answer (`None`: it failed). `node` is who claimed.
    Claimed {
        node: NodeId,
        limit: usize,
        jobs: Option<Vec<Arc<ClaimedDelivery>>>,
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
    job: Option<Arc<ClaimedDelivery>>,
    dest: Arc<str>,
    endpoint: Option<Arc<str>>,
    slot_held: bool,
    tx: UnboundedSender<TaskMsg>,
}

impl AttemptGuard {
    /// The HTTP exchange is over: free the slot now, before the outcome is committed, so a
    /// destination's in-flight limit counts requests, not commits.
    fn http_done(&mut self, signal: HealthSignal) {
        self.slot_held = false;
        let _ = self.tx.send(TaskMsg::HttpDone {
            dest: self.dest.clone(),
            endpoint: self.endpoint.clone(),
            signal,
        });
    }

    fn disarm(&mut self) -> Option<Arc<ClaimedDelivery>> {
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
    timers: BTreeSet<(UnixMillis, i64)>,
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
    /// Per endpoint: whether the store has failures on record that a success must clear,
    /// and when a success was last recorded.
    health_memo: HashMap<Arc<str>, HealthMemo>,
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
            health_memo: HashMap::new(),
            task_tx,
            task_rx: Some(task_rx),
        }
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
    fn next_wake(&self, now: UnixMillis) -> Instant {
        let soon = Instant::now() + Duration::from_millis(1);
        let mut wake = self
            .timers
            .first()
            .map(|&(t, _)| Instant::now() + t.saturating_sub(now))
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
    /// everything still held so another node (or the next start) takes it at once, and
    /// leaves the fleet ([`Queue::leave`]).
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
        // Then leave: other nodes stop counting this one at once when it holds nothing (an
        // attempt still out past the grace keeps the lease, which then runs out as usual).
        let _ =
            tokio::time::timeout(Duration::from_secs(2), self.queue.leave(self.node.clone())).await;
    }

    // --- the lease and claims ------------------------------------------------------------

    fn register(&mut self) {
        let params = LeaseParams {
            node: self.node.clone(),
            now: self.clock.now(),
            lease: self.config.lease,
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
    fn maintain(&mut self, now: UnixMillis) {
        let instant = Instant::now();
        if !self.renew_pending && instant >= self.next_renew_at {
            if !self.registered {
                self.register();
            } else {
                self.renew_pending = true;
                let params = LeaseParams {
                    node: self.node.clone(),
                    now,
                    lease: self.config.lease,
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

    fn maybe_claim(&mut self, now: UnixMillis) {
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
            horizon: now + self.config.window,
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

    fn on_claimed(&mut self, node: NodeId, limit: usize, jobs: Option<Vec<Arc<ClaimedDelivery>>>) {
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
    fn admit(&mut self, job: Arc<ClaimedDelivery>) {
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
    fn keep_memory_bounded(&mut self, now: UnixMillis) {
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
        self.release(
            parked,
            Some(now + self.config.window + Duration::from_millis(1)),
        );
    }

    /// Gives jobs (already in `Parking` state) back to the store.
    fn release(&mut self, jobs: Vec<Arc<ClaimedDelivery>>, next_at: Option<UnixMillis>) {
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
            Hint::Work => self.claim_now(),
            Hint::Reread => {
                self.readopt = true;
                self.claim_now();
            }
            Hint::Revoked(seqs) => self.revoke(&seqs),
            Hint::AppChanged(app) => {
                self.apps.insert(app.id.clone(), app);
            }
            Hint::EndpointChanged(ep) => self.endpoint_changed(ep),
        }
    }

    /// Claims at once, or again as soon as the claim that is out answers.
    fn claim_now(&mut self) {
        if self.claim_pending {
            self.claim_again = true;
        } else {
            self.next_claim_at = Instant::now();
        }
    }

    fn task_msg(&mut self, msg: TaskMsg) {
        match msg {
            TaskMsg::HttpDone {
                dest,
                endpoint,
                signal,
            } => {
                self.recording += 1;
                self.release_slot(dest, Some(signal == HealthSignal::Success));
                if let Some(endpoint) = endpoint {
                    self.report_health(endpoint, signal);
                }
            }
            TaskMsg::Health {
                endpoint,
                signal,
                recorded,
            } => self.on_health(endpoint, signal, recorded),
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

    fn on_completed(&mut self, job: Arc<ClaimedDelivery>, completed: Completed) {
        self.record_failures = 0;
        let revoked = matches!(
            self.jobs.get(&job.seq).map(|s| s.state),
            Some(State::InFlightRevoked)
        );
        self.jobs.remove(&job.seq);
        if completed.applied {
            let profile = job.app.profile.name();
            match completed.status {
                Some(DeliveryStatus::Succeeded) => {
                    self.stats.succeeded.fetch_add(1, Ordering::Relaxed);
                    self.stats.metrics.deliveries.inc(&[profile, "succeeded"]);
                }
                Some(DeliveryStatus::Failed) => {
                    self.stats.failed.fetch_add(1, Ordering::Relaxed);
                    self.stats.metrics.deliveries.inc(&[profile, "failed"]);
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
    fn attempt_lost(&mut self, job: Arc<ClaimedDelivery>) {
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
            .saturating_mul(1u32 << self.record_failures.min(20))
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

    // --- endpoint health -----------------------------------------------------------------

    /// A newer version of an endpoint (settings or health, from this node or another).
    fn endpoint_changed(&mut self, ep: Arc<EndpointCtx>) {
        if let Some(dest) = self.dests.get_mut(ep.id.as_str()) {
            dest.limit = ep.max_in_flight;
            dest.probe = ep.health.state == BreakerState::Open;
            if ep.health.state == BreakerState::Closed && ep.health.consecutive_failures == 0 {
                dest.consecutive_failures = 0;
            }
        }
        if ep.deleted {
            self.endpoints.remove(&ep.id);
            self.health_memo.remove(ep.id.as_str());
            return;
        }
        let blocked = ep.health.blocks(self.clock.now());
        let id = ep.id.clone();
        self.endpoints.insert(id.clone(), ep);
        if blocked {
            self.hold_back(&id);
        }
    }

    /// Records an attempt's answer in the endpoint's health when it matters: every failure,
    /// the first success after a failure or while the breaker is not closed, and otherwise
    /// one success per `success_record_interval`.
    fn report_health(&mut self, endpoint: Arc<str>, signal: HealthSignal) {
        let now = self.clock.now();
        let memo = self.health_memo.entry(endpoint.clone()).or_default();
        if signal == HealthSignal::Success {
            // The breaker's state reaches this node with every transition; its failure
            // count does not (the copy here may be old), so a success is recorded when this
            // node reported a failure since its last success, the breaker is not closed, or
            // the interval has passed (which covers failures other nodes reported).
            let unhealthy = self
                .endpoints
                .get(&*endpoint)
                .is_some_and(|e| e.health.state != BreakerState::Closed);
            let interval = self.config.success_record_interval;
            let due = memo
                .success_recorded_at
                .is_none_or(|t| now.saturating_sub(t) >= interval);
            if !(memo.dirty || unhealthy || due) {
                return;
            }
            memo.dirty = false;
            memo.success_recorded_at = Some(now);
        } else {
            memo.dirty = true;
            let decisive = signal == HealthSignal::Gone
                || self.dests.get(&endpoint).is_some_and(|d| {
                    d.probe || d.consecutive_failures >= self.config.breaker.failure_threshold
                });
            if decisive {
                memo.gating = true;
            }
        }
        memo.queued.push(signal);
        if !memo.recording {
            self.send_health(endpoint);
        }
    }

    /// Sends the endpoint's queued signals as one report.
    fn send_health(&mut self, endpoint: Arc<str>) {
        let Some(memo) = self.health_memo.get_mut(&endpoint) else {
            return;
        };
        if memo.queued.is_empty() {
            return;
        }
        memo.recording = true;
        memo.recording_gates = std::mem::take(&mut memo.gating);
        let signals = std::mem::take(&mut memo.queued);
        let success = signals.last() == Some(&HealthSignal::Success);
        self.stats.health_reports.fetch_add(1, Ordering::Relaxed);
        let report = HealthReport {
            endpoint_id: endpoint.to_string(),
            signals,
            now: self.clock.now(),
            policy: self.config.breaker,
        };
        let queue = self.queue.clone();
        let tx = self.task_tx.clone();
        tokio::spawn(async move {
            let recorded = match queue.record_health(report).await {
                Ok(r) => r.map(Box::new),
                Err(e) => {
                    tracing::warn!(error = %e, endpoint = %endpoint, "recording the endpoint's health failed");
                    None
                }
            };
            let signal = if success {
                HealthSignal::Success
            } else {
                HealthSignal::Failure
            };
            let _ = tx.send(TaskMsg::Health {
                endpoint,
                signal,
                recorded,
            });
        });
    }

    fn health_gates(&self, endpoint: &str) -> bool {
        self.health_memo
            .get(endpoint)
            .is_some_and(|m| m.gating || (m.recording && m.recording_gates))
    }

    fn on_health(
        &mut self,
        endpoint: Arc<str>,
        signal: HealthSignal,
        recorded: Option<Box<HealthRecorded>>,
    ) {
        if let Some(memo) = self.health_memo.get_mut(&endpoint) {
            memo.recording = false;
            memo.recording_gates = false;
        }
        // What came meanwhile goes now; the endpoint may send again once nothing gates it.
        self.send_health(endpoint.clone());
        if !self.health_gates(&endpoint) {
            if let Some(dest) = self.dests.get_mut(&endpoint) {
                if dest.can_send() && !dest.queued {
                    dest.queued = true;
                    self.ready_dests.push_back(endpoint.clone());
                }
            }
        }
        let Some(recorded) = recorded else {
            if signal == HealthSignal::Success {
                // Not recorded: try again with the next success.
                if let Some(memo) = self.health_memo.get_mut(&endpoint) {
                    memo.dirty = true;
                }
            }
            return;
        };
        let ep = &recorded.endpoint;
        let Some(transition) = recorded.transition else {
            return;
        };
        let kind = match transition {
            HealthTransition::Opened => "opened",
            HealthTransition::Reopened => "reopened",
            HealthTransition::Recovered => "recovered",
            HealthTransition::Disabled => "disabled",
        };
        self.stats.metrics.breaker_transitions.inc(&[kind]);
        match transition {
            HealthTransition::Recovered => tracing::info!(endpoint = %ep.id, app = %ep.app_id,
                "endpoint recovered: its breaker is closed"),
            HealthTransition::Disabled => tracing::warn!(endpoint = %ep.id, app = %ep.app_id,
                reason = ?ep.health.disabled_reason, "endpoint disabled"),
            _ => tracing::warn!(endpoint = %ep.id, app = %ep.app_id,
                failures = ep.health.consecutive_failures, open_until = ?ep.health.open_until,
                "endpoint breaker opened: its deliveries wait for the cool-down"),
        }
        if let (Some(id), Some(event_type)) = (&recorded.ops_notification, transition.event_type())
        {
            // Committed with the transition; the engine delivers it like any other.
            self.stats
                .metrics
                .ops_notifications
                .inc(&[event_type, "queued"]);
            tracing::info!(event_type, endpoint = %ep.id, app = %ep.app_id, notification = %id,
                "ops notification queued");
        }
        let ctx = Arc::new(EndpointCtx::from_endpoint(ep));
        self.endpoint_changed(ctx);
    }

    /// The endpoint may not be sent to now: its jobs waiting or ready in memory go back to
    /// the store unchanged (claims skip them until the endpoint may be sent to again).
    fn hold_back(&mut self, endpoint: &str) {
        let mut back = Vec::new();
        for slot in self.jobs.values_mut() {
            if !matches!(slot.state, State::Waiting | State::Ready) {
                continue;
            }
            if slot.job.endpoint.as_ref().is_some_and(|e| e.id == endpoint) {
                if slot.state == State::Waiting {
                    self.timers.remove(&slot.job.key());
                }
                // A ready one stays in its queue as a stale entry, skipped there.
                slot.state = State::Parking;
                back.push(slot.job.clone());
            }
        }
        if !back.is_empty() {
            tracing::debug!(
                endpoint,
                count = back.len(),
                "holding back an unhealthy endpoint's deliveries"
            );
            self.release(back, None);
        }
    }

    // --- dispatch ------------------------------------------------------------------------

    /// The destination of a job: its endpoint, or (ad-hoc `notify_url`) the URL's origin
    /// within the app, so two apps notifying one host do not share a queue.
    fn dest_key(&self, job: &ClaimedDelivery) -> Arc<str> {
        match &job.endpoint {
            Some(ep) => Arc::from(ep.id.as_str()),
            None => Arc::from(format!("{} {}", job.app.id, origin_of(&job.url))),
        }
    }

    /// Moves every job due at `now` to its destination's ready queue.
    fn promote_due(&mut self, now: UnixMillis) {
        let mut held_back = Vec::new();
        while let Some(&key) = self.timers.first() {
            if key.0 > now {
                break;
            }
            self.timers.remove(&key);
            let Some(slot) = self.jobs.get_mut(&key.1) else {
                continue;
            };
            let job = slot.job.clone();
            let ep = job
                .endpoint
                .as_ref()
                .map(|ep| self.endpoints.get(&ep.id).unwrap_or(ep).clone());
            if ep.as_ref().is_some_and(|e| e.health.blocks(now)) {
                // Its breaker opened (or it was disabled) since it was claimed.
                slot.state = State::Parking;
                held_back.push(job);
                continue;
            }
            slot.state = State::Ready;
            let dkey = self.dest_key(&job);
            let limit = match &ep {
                Some(ep) => ep.max_in_flight,
                None => self.config.default_max_in_flight,
            };
            let (probe, failures) = match &ep {
                Some(ep) => (
                    ep.health.state == BreakerState::Open,
                    ep.health.consecutive_failures,
                ),
                None => (false, 0),
            };
            let dest = self.dests.entry(dkey.clone()).or_insert_with(|| Dest {
                app: Arc::from(job.app.id.as_str()),
                limit,
                probe,
                consecutive_failures: failures,
                ..Dest::default()
            });
            dest.ready.push_back(key.1);
            if dest.can_send() && !dest.queued {
                dest.queued = true;
                self.ready_dests.push_back(dkey);
            }
        }
        if !held_back.is_empty() {
            self.release(held_back, None);
        }
    }

    /// Starts attempts while there is capacity, one per destination per turn.
    fn dispatch(&mut self) {
        while self.in_flight < self.config.global_concurrency {
            let Some(dkey) = self.ready_dests.pop_front() else {
                break;
            };
            let gated = self.health_gates(&dkey);
            let Some(dest) = self.dests.get_mut(&dkey) else {
                continue;
            };
            dest.queued = false;
            if gated {
                // Waits for the store's answer on its health (re-queued then).
                continue;
            }
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

    fn spawn_attempt(&self, job: Arc<ClaimedDelivery>, dest: Arc<str>) {
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
        let window = self.config.window;
        let lease = self.config.lease;
        let tx = self.task_tx.clone();
        let mut guard = AttemptGuard {
            job: Some(job.clone()),
            dest,
            endpoint: job.endpoint.as_ref().map(|e| Arc::from(e.id.as_str())),
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
            let signal = if result.verdict == herald_protocols::Verdict::Acked {
                HealthSignal::Success
            } else if result.attempt.status_code == Some(410) {
                HealthSignal::Gone
            } else {
                HealthSignal::Failure
            };
            guard.http_done(signal);
            let metrics = &stats.metrics;
            metrics
                .attempt_seconds
                .observe(Duration::from_millis(result.attempt.duration_ms.into()));
            let (retry, _) = effective_rules(&app, endpoint.as_deref());
            let now = clock.now();
            let outcome: AttemptOutcome = {
                let mut rng = rand::thread_rng();
                next_outcome(&result.verdict, result.attempt.n, retry, now, &mut rng)
            };
            let result_label = match outcome {
                AttemptOutcome::Succeeded => "succeeded",
                AttemptOutcome::Retry { .. } => "retry",
                AttemptOutcome::Failed => "failed",
            };
            metrics.attempts.inc(&[app.profile.name(), result_label]);
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
                let started = tokio::time::Instant::now();
                let result = queue.complete(params.clone()).await;
                stats
                    .metrics
                    .store_commit_seconds
                    .observe(started.elapsed());
                match result {
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
