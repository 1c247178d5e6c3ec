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
/// Delay before a job whose outcome could not be recorded is tried again.
const RECORD_RETRY: Millis = 5_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// In the timer set.
    Waiting,
    /// In its destination's ready queue.
    Ready,
    InFlight,
    /// Canceled while in flight: drop it when its outcome arrives.
    InFlightCanceled,
}

struct Slot {
    job: Arc<Job>,
    state: State,
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
}

impl Scheduler {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        config: EngineConfig,
        sender: Arc<Sender>,
        stats: Arc<EngineStats>,
    ) -> Scheduler {
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
        }
    }

    pub(crate) async fn run(
        mut self,
        mut events: EventReceiver,
        shutdown: impl Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        loop {
            let now = now_ms();
            self.promote_due(now);
            self.dispatch();
            self.maybe_load(now).await;
            self.stats
                .in_memory
                .store(self.jobs.len() as u64, Ordering::Relaxed);
            self.stats
                .in_flight
                .store(self.in_flight as u64, Ordering::Relaxed);

            let wake = self
                .timers
                .first()
                .map(|&(t, _)| Instant::now() + Duration::from_millis((t - now).max(0) as u64))
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            let wake = wake.min(
                self.next_load_at
                    .max(Instant::now() + Duration::from_millis(1)),
            );
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
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
        // Let attempts in flight finish and be recorded, for a bounded time; anything cut
        // short is attempted again after the restart.
        let deadline = Instant::now() + self.config.shutdown_grace;
        while self.in_flight > 0 {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(ev)) => self.handle(ev),
                _ => break,
            }
        }
    }

    // --- the window ----------------------------------------------------------------------

    async fn maybe_load(&mut self, now: Millis) {
        if self.load_pending || Instant::now() < self.next_load_at {
            return;
        }
        let horizon = now + self.config.window.as_millis() as Millis;
        let room = self.config.max_in_memory.saturating_sub(self.jobs.len());
        let behind = !self.caught_up
            || self.watermark.0 < now + (self.config.window.as_millis() as Millis) / 2;
        if !behind || room < self.config.max_in_memory / 4 {
            // Either far enough ahead, or memory is too full to be worth a load.
            self.next_load_at = Instant::now() + self.config.window / 4;
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

    fn on_loaded(&mut self, request: LoadRequest, jobs: Vec<Arc<Job>>, exhausted: bool) {
        self.load_pending = false;
        let last = jobs.last().map(|j| j.key());
        for job in jobs {
            self.admit(job, true);
        }
        if exhausted {
            self.watermark = self.watermark.max((request.horizon, i64::MAX));
            self.caught_up = true;
            self.next_load_at = Instant::now() + self.config.window / 4;
        } else {
            if let Some(last) = last {
                self.watermark = self.watermark.max(last);
            }
            self.caught_up = false;
            self.next_load_at = Instant::now();
        }
        self.evict_over_capacity();
    }

    /// Keeps memory bounded: drops the latest waiting jobs and pulls the watermark back
    /// before them (the store still has them; a later load brings them back).
    fn evict_over_capacity(&mut self) {
        if self.jobs.len() <= self.config.max_in_memory {
            return;
        }
        let target = self.config.max_in_memory * 3 / 4;
        while self.jobs.len() > target {
            let Some(&key) = self.timers.last() else {
                break;
            };
            self.timers.remove(&key);
            self.jobs.remove(&key.1);
            self.watermark = (key.0, key.1 - 1);
            self.caught_up = false;
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
                // Already due or being attempted: nothing to add.
                State::Ready | State::InFlight | State::InFlightCanceled => {}
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
                self.evict_over_capacity();
            }
            StoreEvent::AttemptRecorded {
                job,
                status,
                applied,
            } => {
                self.finish_attempt(&job, status == DeliveryStatus::Succeeded);
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
                if applied && status == DeliveryStatus::Pending && !canceled {
                    self.admit(job, false);
                }
            }
            StoreEvent::AttemptNotRecorded { job } => {
                self.finish_attempt(&job, false);
                self.jobs.remove(&job.seq);
                let mut retry = (*job).clone();
                retry.next_at = now_ms() + RECORD_RETRY;
                // Keep it in memory regardless of the watermark: the store may not know.
                let retry = Arc::new(retry);
                self.timers.insert(retry.key());
                self.jobs.insert(
                    retry.seq,
                    Slot {
                        job: retry,
                        state: State::Waiting,
                    },
                );
            }
            StoreEvent::Loaded {
                request,
                jobs,
                exhausted,
            } => self.on_loaded(request, jobs, exhausted),
            StoreEvent::LoadFailed { .. } => {
                self.load_pending = false;
                self.next_load_at = Instant::now() + Duration::from_secs(1);
            }
            StoreEvent::Canceled(seqs) => {
                for seq in seqs {
                    if let Some(slot) = self.jobs.get_mut(&seq) {
                        match slot.state {
                            State::InFlight => slot.state = State::InFlightCanceled,
                            State::InFlightCanceled => {}
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
                self.endpoints.insert(ep.id.clone(), ep);
            }
        }
    }

    fn finish_attempt(&mut self, job: &Job, success: bool) {
        self.in_flight = self.in_flight.saturating_sub(1);
        let key = self.dest_key(job);
        if let Some(dest) = self.dests.get_mut(&key) {
            dest.in_flight = dest.in_flight.saturating_sub(1);
            if success {
                dest.consecutive_failures = 0;
            } else {
                dest.consecutive_failures = dest.consecutive_failures.saturating_add(1);
            }
            if dest.can_send() && !dest.queued {
                dest.queued = true;
                self.ready_dests.push_back(key);
            } else if dest.ready.is_empty() && dest.in_flight == 0 && dest.consecutive_failures == 0
            {
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
                self.spawn_attempt(job);
            } else if dest.ready.is_empty() && dest.in_flight == 0 && dest.consecutive_failures == 0
            {
                self.dests.remove(&dkey);
            }
        }
    }

    fn spawn_attempt(&self, job: Arc<Job>) {
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
        tokio::spawn(async move {
            let url = endpoint
                .as_ref()
                .map(|e| e.url.as_str())
                .unwrap_or(&job.url);
            let (retry, ack) = effective_rules(&app, endpoint.as_deref());
            let result = sender.attempt(&job, &app, url, ack).await;
            stats.attempts.fetch_add(1, Ordering::Relaxed);
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
            if let Err(e) = store.record_attempt(report).await {
                tracing::error!(error = %e, "cannot queue an attempt outcome; it will be retried after a restart");
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
