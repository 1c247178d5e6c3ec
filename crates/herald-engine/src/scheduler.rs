//! The scheduler: one task that owns all in-memory delivery state and decides who may be
//! attempted now.
//!
//! - **Window.** Memory holds only deliveries due before a *watermark* `(time, seq)`; the
//!   store holds the rest. Loads extend the watermark page by page; store events about
//!   deliveries beyond the watermark are ignored (a later load brings them). Because loads
//!   and events come through the store's single ordered stream, every pending delivery is
//!   either in memory or beyond the watermark, never both, never neither.
//! - **Timers.** A `BTreeSet` of `(next_at, seq)`: ordered, so the earliest is at the front
//!   and eviction takes from the back.
//! - **Queues.** Due deliveries move to their destination's ready queue (an endpoint, or the
//!   origin of an ad-hoc `notify_url`). A destination has its own in-flight limit; a global
//!   limit caps all attempts. Destinations take turns (round robin), so a slow one fills only
//!   its own slots. A destination whose recent attempts all failed drops to one attempt at a
//!   time until one succeeds.
//! - **Parking.** When memory passes its bound because a destination cannot keep up, the
//!   tail of the longest ready queues is postponed in the store (moved past the watermark,
//!   no attempt spent) and dropped from memory; loads bring it back later.
//! - **No silent loss.** Every attempt task reports back, even when it panics (a drop
//!   guard), so slots never leak and the delivery is tried again.
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use herald_store::{
    AppCtx, AttemptReport, DeliveryStatus, EndpointCtx, EventReceiver, Job, LoadRequest, Millis,
    Outcome, Store, StoreEvent,
};
use tokio::time::Instant;

use crate::attempt::{effective_rules, next_outcome, Sender};
use crate::{now_ms, EngineConfig, EngineStats};

/// Consecutive failed attempts after which a destination gets one attempt at a time.
const UNHEALTHY_AFTER: u32 = 5;
/// Events handled before dispatching again.
const EVENT_BATCH: usize = 1024;
/// Delay before a job whose outcome could not be recorded is tried again; doubles with each
/// consecutive storage failure, up to `RECORD_RETRY_MAX`.
const RECORD_RETRY: Millis = 1_000;
const RECORD_RETRY_MAX: Millis = 300_000;
/// Ready jobs a destination keeps in memory when parking.
const PARK_KEEP_MIN: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// In the timer set.
    Waiting,
    /// In its destination's ready queue.
    Ready,
    InFlight,
    /// Canceled while in flight: drop it when its outcome arrives.
    InFlightCanceled,
    /// Being postponed in the store; leaves memory when the store confirms.
    Parking,
}

struct Slot {
    job: Arc<Job>,
    state: State,
    /// Kept in memory whatever the watermark (its outcome could not be recorded, so the
    /// store does not know its retry time).
    pinned: bool,
}

#[derive(Default)]
struct Dest {
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

pub(crate) struct Scheduler {
    store: Arc<dyn Store>,
    config: EngineConfig,
    sender: Arc<Sender>,
    stats: Arc<EngineStats>,
    timers: BTreeSet<(Millis, i64)>,
    jobs: HashMap<i64, Slot>,
    dests: HashMap<Arc<str>, Dest>,
    ready_dests: VecDeque<Arc<str>>,
    in_flight: usize,
    watermark: (Millis, i64),
    /// Everything up to the watermark's time is loaded (the last load was not cut short).
    caught_up: bool,
    load_pending: bool,
    next_load_at: Instant,
    apps: HashMap<String, Arc<AppCtx>>,
    endpoints: HashMap<String, Arc<EndpointCtx>>,
    /// Jobs in `Parking` state.
    parking: usize,
    /// Attempts whose HTTP exchange is over and whose outcome is being committed.
    recording: usize,
    /// Consecutive storage failures to record outcomes (for backoff).
    record_failures: u32,
    /// Attempt tasks report here: when their HTTP exchange is over (the slot is free while
    /// the outcome is being committed), and when they ended without handing their outcome
    /// to the store (panic, store closed).
    task_tx: tokio::sync::mpsc::UnboundedSender<TaskMsg>,
    task_rx: Option<tokio::sync::mpsc::UnboundedReceiver<TaskMsg>>,
}

/// What an attempt task tells the scheduler directly (not through the store).
enum TaskMsg {
    /// The HTTP exchange ended: release the destination's slot. `success` is the
    /// receiver's answer, for the destination's health.
    HttpDone { dest: Arc<str>, success: bool },
    /// The outcome never reached the store; `slot_held` when the HTTP slot was not
    /// released yet either.
    Lost {
        job: Arc<Job>,
        dest: Arc<str>,
        slot_held: bool,
    },
}

/// Reports an attempt task's job as lost unless disarmed (the outcome was handed to the
/// store). Runs on panic too, so the scheduler's slots never leak.
struct AttemptGuard {
    job: Option<Arc<Job>>,
    dest: Arc<str>,
    slot_held: bool,
    tx: tokio::sync::mpsc::UnboundedSender<TaskMsg>,
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

    fn disarm(&mut self) {
        self.job = None;
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

impl Scheduler {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        config: EngineConfig,
        sender: Arc<Sender>,
        stats: Arc<EngineStats>,
    ) -> Scheduler {
        let (task_tx, task_rx) = tokio::sync::mpsc::unbounded_channel();
        Scheduler {
            store,
            config,
            sender,
            stats,
            timers: BTreeSet::new(),
            jobs: HashMap::new(),
            dests: HashMap::new(),
            ready_dests: VecDeque::new(),
            in_flight: 0,
            watermark: (Millis::MIN, i64::MIN),
            caught_up: false,
            load_pending: false,
            next_load_at: Instant::now(),
            apps: HashMap::new(),
            endpoints: HashMap::new(),
            parking: 0,
            recording: 0,
            record_failures: 0,
            task_tx,
            task_rx: Some(task_rx),
        }
    }

    pub(crate) async fn run(
        mut self,
        mut events: EventReceiver,
        shutdown: impl Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut tasks = self.task_rx.take().expect("run is called once");
        loop {
            let now = now_ms();
            self.promote_due(now);
            self.dispatch();
            self.keep_memory_bounded(now).await;
            self.maybe_load(now).await;
            self.stats
                .in_memory
                .store(self.jobs.len() as u64, Ordering::Relaxed);
            self.stats
                .in_flight
                .store(self.in_flight as u64, Ordering::Relaxed);

            let far = Instant::now() + Duration::from_secs(3600);
            let mut wake = self
                .timers
                .first()
                .map(|&(t, _)| Instant::now() + Duration::from_millis((t - now).max(0) as u64))
                .unwrap_or(far);
            if !self.load_pending {
                wake = wake.min(
                    self.next_load_at
                        .max(Instant::now() + Duration::from_millis(1)),
                );
            }
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                ev = events.recv() => {
                    let Some(ev) = ev else { break };
                    self.handle(ev);
                    for _ in 0..EVENT_BATCH {
                        match events.try_recv() {
                            Ok(ev) => self.handle(ev),
                            Err(_) => break,
                        }
                    }
                }
                Some(msg) = tasks.recv() => {
                    self.task_msg(msg);
                    while let Ok(msg) = tasks.try_recv() {
                        self.task_msg(msg);
                    }
                }
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
        // Let attempts in flight finish and be recorded, for a bounded time; anything cut
        // short is attempted again after the restart.
        let deadline = Instant::now() + self.config.shutdown_grace;
        while self.in_flight > 0 || self.recording > 0 {
            tokio::select! {
                ev = tokio::time::timeout_at(deadline, events.recv()) => match ev {
                    Ok(Some(ev)) => self.handle(ev),
                    _ => break,
                },
                Some(msg) = tasks.recv() => self.task_msg(msg),
            }
        }
    }

    // --- the window ----------------------------------------------------------------------

    async fn maybe_load(&mut self, now: Millis) {
        if self.load_pending || Instant::now() < self.next_load_at {
            return;
        }
        let window = self.config.window.as_millis() as Millis;
        let horizon = now + window;
        let room = self.config.max_in_memory.saturating_sub(self.jobs.len());
        let behind = !self.caught_up || self.watermark.0 < now + window / 2;
        if !behind {
            self.next_load_at = Instant::now() + self.config.window / 4;
            return;
        }
        if room < self.config.max_in_memory / 4 {
            // Memory is too full to be worth a load; look again soon (parking and
            // completions free room).
            self.next_load_at = Instant::now() + Duration::from_millis(100);
            return;
        }
        let request = LoadRequest {
            after: self.watermark,
            horizon,
            limit: room.min(self.config.load_page),
        };
        if self.store.request_load(request).await.is_ok() {
            self.load_pending = true;
        } else {
            self.next_load_at = Instant::now() + Duration::from_secs(1);
        }
    }

    fn on_loaded(
        &mut self,
        request: LoadRequest,
        jobs: Vec<Arc<Job>>,
        exhausted: bool,
        last_key: Option<(Millis, i64)>,
    ) {
        self.load_pending = false;
        self.stats.loads.fetch_add(1, Ordering::Relaxed);
        // An eviction or rewind while the load ran may have pulled the watermark back
        // below where the load started: then the loaded range is not contiguous with
        // memory, so keep only what lies within the current watermark and let the next
        // load continue from there.
        let contiguous = self.watermark >= request.after;
        for job in jobs {
            self.admit(job, contiguous);
        }
        if contiguous {
            if exhausted {
                self.watermark = self.watermark.max((request.horizon, i64::MAX));
                self.caught_up = true;
                self.next_load_at = Instant::now() + self.config.window / 4;
            } else {
                if let Some(last) = last_key {
                    self.watermark = self.watermark.max(last);
                }
                self.caught_up = false;
                self.next_load_at = Instant::now();
            }
        } else {
            self.caught_up = false;
            self.next_load_at = Instant::now();
        }
    }

    /// Keeps memory bounded. First drops the latest waiting jobs and pulls the watermark
    /// back before them (the store still has them; a later load brings them back). If ready
    /// jobs alone exceed the bound (destinations that cannot keep up), parks the tail of the
    /// longest ready queues.
    async fn keep_memory_bounded(&mut self, now: Millis) {
        let max = self.config.max_in_memory;
        if self.jobs.len() - self.parking <= max || self.load_pending {
            return;
        }
        let target = max * 3 / 4;
        let mut evict = Vec::new();
        let mut count = self.jobs.len() - self.parking;
        for &key in self.timers.iter().rev() {
            if count <= target {
                break;
            }
            if self.jobs.get(&key.1).is_some_and(|s| !s.pinned) {
                evict.push(key);
                count -= 1;
            }
        }
        for key in evict {
            self.timers.remove(&key);
            self.jobs.remove(&key.1);
            self.watermark = self.watermark.min((key.0, key.1 - 1));
            self.caught_up = false;
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
                    if slot.state == State::Ready && !slot.pinned {
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
        // Past the watermark, so they leave memory; loads bring them back in time.
        let until = (now + self.config.window.as_millis() as Millis)
            .max(self.watermark.0.saturating_add(1));
        tracing::warn!(
            count = parked.len(),
            "destinations cannot keep up: parking part of their backlog in the store"
        );
        self.parking += parked.len();
        self.stats
            .parked
            .fetch_add(parked.len() as u64, Ordering::Relaxed);
        if self.store.postpone(parked.clone(), until).await.is_err() {
            self.unpark(&parked);
        }
    }

    /// Returns parking jobs to their ready queues.
    fn unpark(&mut self, jobs: &[Arc<Job>]) {
        for job in jobs {
            if let Some(slot) = self.jobs.get_mut(&job.seq) {
                if slot.state == State::Parking {
                    slot.state = State::Waiting;
                    self.parking -= 1;
                    self.timers.insert(slot.job.key());
                }
            }
        }
    }

    /// Takes a job into memory if it lies within the window. `from_load` jobs are within it
    /// by construction.
    fn admit(&mut self, job: Arc<Job>, from_load: bool) {
        if let Some(ep) = &job.endpoint {
            self.endpoints
                .entry(ep.id.clone())
                .or_insert_with(|| ep.clone());
        }
        self.apps
            .entry(job.app.id.clone())
            .or_insert_with(|| job.app.clone());
        match self.jobs.get_mut(&job.seq) {
            Some(slot) => match slot.state {
                State::Waiting => {
                    self.timers.remove(&slot.job.key());
                    self.timers.insert(job.key());
                    slot.job = job;
                }
                // Already due, being attempted or parked: nothing to add.
                State::Ready | State::InFlight | State::InFlightCanceled | State::Parking => {}
            },
            None => {
                if !from_load && job.key() > self.watermark {
                    return;
                }
                self.timers.insert(job.key());
                self.jobs.insert(
                    job.seq,
                    Slot {
                        job,
                        state: State::Waiting,
                        pinned: false,
                    },
                );
            }
        }
    }

    // --- events --------------------------------------------------------------------------

    fn handle(&mut self, ev: StoreEvent) {
        match ev {
            StoreEvent::Scheduled(jobs) => {
                for job in jobs {
                    self.admit(job, false);
                }
            }
            StoreEvent::AttemptRecorded {
                job,
                status,
                applied,
            } => {
                self.record_failures = 0;
                self.recording = self.recording.saturating_sub(1);
                let canceled = matches!(
                    self.jobs.get(&job.seq).map(|s| s.state),
                    Some(State::InFlightCanceled)
                );
                self.jobs.remove(&job.seq);
                match status {
                    DeliveryStatus::Succeeded => {
                        self.stats.succeeded.fetch_add(1, Ordering::Relaxed);
                    }
                    DeliveryStatus::Failed => {
                        self.stats.failed.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
                // (When not applied but still pending, the store follows up with a
                // Scheduled event carrying the current state.)
                if applied && status == DeliveryStatus::Pending && !canceled {
                    self.admit(job, false);
                }
            }
            StoreEvent::AttemptNotRecorded { job } => {
                self.recording = self.recording.saturating_sub(1);
                self.attempt_lost(job);
            }
            StoreEvent::Loaded {
                request,
                jobs,
                exhausted,
                last_key,
            } => self.on_loaded(request, jobs, exhausted, last_key),
            StoreEvent::LoadFailed { .. } => {
                self.load_pending = false;
                self.next_load_at = Instant::now() + Duration::from_secs(1);
            }
            StoreEvent::Rewind { from } => {
                self.watermark = self.watermark.min((from, i64::MIN));
                self.caught_up = false;
                self.next_load_at = Instant::now();
            }
            StoreEvent::Postponed { jobs, requested } => {
                // Confirmed ones leave (or stay, if still within the window) with their new
                // time; the rest changed meanwhile and are dropped or were unchanged.
                let moved: std::collections::HashSet<i64> = jobs.iter().map(|j| j.seq).collect();
                for seq in requested {
                    if let Some(slot) = self.jobs.get(&seq) {
                        if slot.state == State::Parking {
                            self.parking -= 1;
                            if moved.contains(&seq) {
                                self.jobs.remove(&seq);
                            } else if let Some(slot) = self.jobs.get_mut(&seq) {
                                // Not moved: still due as it was.
                                slot.state = State::Waiting;
                                self.timers.insert(slot.job.key());
                            }
                        }
                    }
                }
                for job in jobs {
                    if !self.jobs.contains_key(&job.seq) {
                        self.admit(job, false);
                    }
                }
            }
            StoreEvent::Canceled(seqs) => {
                for seq in seqs {
                    if let Some(slot) = self.jobs.get_mut(&seq) {
                        match slot.state {
                            State::InFlight => slot.state = State::InFlightCanceled,
                            State::InFlightCanceled => {}
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
            }
            StoreEvent::AppChanged(app) => {
                self.apps.insert(app.id.clone(), app);
            }
            StoreEvent::EndpointChanged(ep) => {
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

    /// An attempt whose outcome did not reach the store (storage failure, or the task
    /// died): release its slots and try it again after a backoff, kept in memory whatever
    /// the watermark because the store does not know about it.
    fn attempt_lost(&mut self, job: Arc<Job>) {
        let canceled = matches!(
            self.jobs.get(&job.seq).map(|s| s.state),
            Some(State::InFlightCanceled)
        );
        self.jobs.remove(&job.seq);
        if canceled {
            return;
        }
        self.record_failures = self.record_failures.saturating_add(1);
        let backoff = RECORD_RETRY
            .saturating_mul(1 << self.record_failures.min(20))
            .min(RECORD_RETRY_MAX);
        let mut retry = (*job).clone();
        retry.next_at = now_ms() + backoff;
        let retry = Arc::new(retry);
        self.timers.insert(retry.key());
        self.jobs.insert(
            retry.seq,
            Slot {
                job: retry,
                state: State::Waiting,
                pinned: true,
            },
        );
    }

    fn task_msg(&mut self, msg: TaskMsg) {
        match msg {
            TaskMsg::HttpDone { dest, success } => {
                self.recording += 1;
                self.release_slot(dest, Some(success));
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
        }
    }

    /// Releases an attempt's HTTP slots. `success` is `None` when the endpoint's answer is
    /// not known (the attempt was lost), which leaves its health as it was.
    fn release_slot(&mut self, key: Arc<str>, success: Option<bool>) {
        self.in_flight = self.in_flight.saturating_sub(1);
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

    // --- dispatch ------------------------------------------------------------------------

    fn dest_key(&self, job: &Job) -> Arc<str> {
        match &job.endpoint {
            Some(ep) => Arc::from(ep.id.as_str()),
            None => Arc::from(origin_of(&job.url)),
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
                    _ => continue, // stale entry (canceled)
                }
            }
            if dest.can_send() {
                dest.queued = true;
                self.ready_dests.push_back(dkey.clone());
            }
            if let Some(job) = started {
                self.in_flight += 1;
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
        let store = self.store.clone();
        let sender = self.sender.clone();
        let stats = self.stats.clone();
        let mut guard = AttemptGuard {
            job: Some(job.clone()),
            dest,
            slot_held: true,
            tx: self.task_tx.clone(),
        };
        tokio::spawn(async move {
            let url = endpoint
                .as_ref()
                .map(|e| e.url.as_str())
                .unwrap_or(&job.url);
            let (retry, ack) = effective_rules(&app, endpoint.as_deref());
            let result = sender.attempt(&job, &app, url, ack).await;
            stats.attempts.fetch_add(1, Ordering::Relaxed);
            guard.http_done(result.verdict == herald_protocols::Verdict::Acked);
            let outcome: Outcome = {
                let mut rng = rand::thread_rng();
                next_outcome(&result.verdict, result.attempt.n, retry, now_ms(), &mut rng)
            };
            tracing::debug!(delivery = %job.id, n = result.attempt.n, status = ?result.attempt.status_code,
                error_class = ?result.attempt.error_class, ?outcome, "attempt");
            let report = AttemptReport {
                job,
                attempt: result.attempt,
                outcome,
            };
            match store.record_attempt(report).await {
                // From here the store reports the outcome (or its failure) as an event.
                Ok(()) => guard.disarm(),
                Err(e) => tracing::error!(error = %e, "cannot queue an attempt outcome"),
            }
        });
    }
}

/// `scheme://host:port` of a URL: the destination key of ad-hoc deliveries.
fn origin_of(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => u.origin().ascii_serialization(),
        Err(_) => url.to_string(),
    }
}
