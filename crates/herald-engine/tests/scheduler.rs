//! The scheduler on its own: a small in-memory queue with the store's claim rules, a
//! scripted attempter instead of HTTP, and Tokio's paused clock, so each case states a timing
//! rule exactly (when an attempt happens, not roughly) without sleeping for real.
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use herald_engine::attempt::{AttemptResult, Attempter};
use herald_engine::{Clock, Engine, EngineConfig, TokioClock};
use herald_protocols::standard_webhooks::{KeyEntry, Keys};
use herald_protocols::{AckRule, Credentials, Profile, RetryPolicy, Verdict};
use herald_store::*;
use tokio::sync::mpsc;

const T0: UnixMillis = UnixMillis::new(1_700_000_000_000);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

// --- a queue with the store's rules, in memory ------------------------------------------

#[derive(Clone)]
struct Row {
    job: Arc<ClaimedDelivery>,
    status: DeliveryStatus,
    attempts: u32,
    next_at: UnixMillis,
    locked_by: Option<NodeId>,
}

#[derive(Default)]
struct QueueState {
    rows: BTreeMap<i64, Row>,
    nodes: HashMap<NodeId, UnixMillis>,
    /// Every claim's parameters, in order.
    claims: Vec<ClaimParams>,
    /// Claims running right now, and the most that ever ran at once.
    claims_running: usize,
    max_claims_running: usize,
    hints: Vec<mpsc::UnboundedSender<Hint>>,
    /// Endpoints with their health, as the store keeps them.
    endpoints: HashMap<String, Endpoint>,
    /// The app's ops target.
    ops: Option<OpsTarget>,
    /// The nodes that asked to leave, in order.
    left: Vec<NodeId>,
}

#[derive(Default)]
struct FakeQueue {
    state: Mutex<QueueState>,
    /// How long a claim takes to answer.
    claim_delay: Mutex<Duration>,
    /// Claims that commit and then answer with an error (a lost answer), counted down.
    lose_claim_answers: Mutex<u32>,
}

impl FakeQueue {
    fn state(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().expect("queue state")
    }

    fn add(&self, job: ClaimedDelivery) {
        let row = Row {
            status: DeliveryStatus::Pending,
            attempts: job.attempts,
            next_at: job.next_at,
            locked_by: None,
            job: Arc::new(job),
        };
        let mut st = self.state();
        st.rows.insert(row.job.seq, row);
        for h in &st.hints {
            let _ = h.send(Hint::Work);
        }
    }

    fn status(&self, seq: i64) -> DeliveryStatus {
        self.state().rows[&seq].status
    }

    /// Forgets a node as a rescue by another node would, releasing what it held.
    fn expire(&self, node: &NodeId) {
        let mut st = self.state();
        st.nodes.remove(node);
        for row in st.rows.values_mut() {
            if row.locked_by.as_ref() == Some(node) {
                row.locked_by = None;
            }
        }
    }

    fn holder(&self, seq: i64) -> Option<NodeId> {
        self.state().rows[&seq].locked_by.clone()
    }

    fn add_endpoint(&self, ep: Endpoint) {
        self.state().endpoints.insert(ep.id.clone(), ep);
    }

    fn endpoint(&self, id: &str) -> Endpoint {
        self.state().endpoints[id].clone()
    }

    fn claimable(st: &QueueState, row: &Row, now: UnixMillis, horizon: UnixMillis) -> bool {
        row.status == DeliveryStatus::Pending
            && row.locked_by.is_none()
            && row.next_at <= horizon
            && row.job.endpoint.as_ref().is_none_or(|e| {
                st.endpoints
                    .get(&e.id)
                    .is_none_or(|ep| !ep.health.blocks(now))
            })
            && row.job.order_key.as_ref().is_none_or(|k| {
                !st.rows.values().any(|p| {
                    p.job.order_key.as_ref() == Some(k)
                        && p.status == DeliveryStatus::Pending
                        && p.job.seq < row.job.seq
                })
            })
    }

    fn job_of(row: &Row) -> Arc<ClaimedDelivery> {
        let mut j = (*row.job).clone();
        j.attempts = row.attempts;
        j.next_at = row.next_at;
        Arc::new(j)
    }
}

#[async_trait]
impl Queue for FakeQueue {
    async fn register_node(&self, p: LeaseParams, _claim_new: bool) -> Result<()> {
        self.state().nodes.insert(p.node, p.now + p.lease);
        Ok(())
    }

    async fn renew_lease(&self, p: LeaseParams) -> Result<Lease> {
        let mut st = self.state();
        match st.nodes.get_mut(&p.node) {
            Some(until) => {
                *until = p.now + p.lease;
                Ok(Lease::Held)
            }
            None => Ok(Lease::Lost),
        }
    }

    async fn leave(&self, node: NodeId) -> Result<bool> {
        let mut st = self.state();
        st.left.push(node.clone());
        if st
            .rows
            .values()
            .any(|r| r.locked_by.as_ref() == Some(&node))
        {
            return Ok(false);
        }
        Ok(st.nodes.remove(&node).is_some())
    }

    async fn rescue(&self, now: UnixMillis) -> Result<u64> {
        let mut st = self.state();
        st.nodes.retain(|_, until| *until >= now);
        let live: Vec<NodeId> = st.nodes.keys().cloned().collect();
        let mut n = 0;
        for row in st.rows.values_mut() {
            if row.locked_by.as_ref().is_some_and(|h| !live.contains(h)) {
                row.locked_by = None;
                n += 1;
            }
        }
        Ok(n)
    }

    async fn claim(&self, p: ClaimParams) -> Result<Vec<Arc<ClaimedDelivery>>> {
        {
            let mut st = self.state();
            st.claims_running += 1;
            st.max_claims_running = st.max_claims_running.max(st.claims_running);
        }
        let delay = *self.claim_delay.lock().expect("delay");
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let mut st = self.state();
        st.claims_running -= 1;
        st.claims.push(p.clone());
        if !st.nodes.contains_key(&p.node) {
            return Ok(Vec::new()); // a forgotten node claims nothing
        }
        let seqs: Vec<i64> = st
            .rows
            .values()
            .filter(|r| FakeQueue::claimable(&st, r, p.now, p.horizon))
            .map(|r| r.job.seq)
            .take(p.limit)
            .collect();
        let mut jobs = Vec::new();
        for seq in seqs {
            if let Some(row) = st.rows.get_mut(&seq) {
                row.locked_by = Some(p.node.clone());
                jobs.push(FakeQueue::job_of(row));
            }
        }
        jobs.sort_by_key(|j| j.key());
        let mut lose = self.lose_claim_answers.lock().expect("lose");
        if *lose > 0 && !jobs.is_empty() {
            *lose -= 1;
            return Err(StoreError::backend_msg("connection closed"));
        }
        Ok(jobs)
    }

    async fn complete(&self, p: CompleteParams) -> Result<Completed> {
        let mut st = self.state();
        let job = &p.report.job;
        let Some(row) = st.rows.get_mut(&job.seq) else {
            return Ok(Completed {
                applied: false,
                status: None,
                held: None,
                successor: None,
            });
        };
        if row.status != DeliveryStatus::Pending
            || row.attempts != job.attempts
            || row.locked_by.as_ref() != Some(&p.node)
        {
            return Ok(Completed {
                applied: false,
                status: Some(row.status),
                held: None,
                successor: None,
            });
        }
        row.attempts = p.report.attempt.n;
        let (status, next_at) = p.report.outcome.status_and_next_at();
        row.status = status;
        if let Some(t) = next_at {
            row.next_at = t;
        }
        let held = if p.keeps() {
            Some(FakeQueue::job_of(row))
        } else {
            row.locked_by = None;
            None
        };
        let mut successor = None;
        if status != DeliveryStatus::Pending {
            if let Some(k) = job.order_key.clone() {
                let next = st
                    .rows
                    .values()
                    .find(|r| {
                        r.job.order_key.as_ref() == Some(&k) && r.status == DeliveryStatus::Pending
                    })
                    .map(|r| r.job.seq);
                if let Some(seq) = next {
                    let row = st.rows.get_mut(&seq).expect("row");
                    if row.locked_by.is_none() && row.next_at <= p.horizon {
                        row.locked_by = Some(p.node.clone());
                        successor = Some(FakeQueue::job_of(row));
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

    async fn release(&self, p: ReleaseParams) -> Result<Vec<i64>> {
        let mut st = self.state();
        let mut out = Vec::new();
        for (seq, attempts) in p.jobs {
            if let Some(row) = st.rows.get_mut(&seq) {
                if row.locked_by.as_ref() == Some(&p.node)
                    && row.attempts == attempts
                    && row.status == DeliveryStatus::Pending
                {
                    row.locked_by = None;
                    if let Some(t) = p.next_at {
                        row.next_at = t;
                    }
                    out.push(seq);
                }
            }
        }
        Ok(out)
    }

    async fn held(&self, p: HeldParams) -> Result<Vec<Arc<ClaimedDelivery>>> {
        let st = self.state();
        Ok(st
            .rows
            .values()
            .filter(|r| {
                r.locked_by.as_ref() == Some(&p.node)
                    && r.status == DeliveryStatus::Pending
                    && r.next_at <= p.horizon
            })
            .map(FakeQueue::job_of)
            .collect())
    }

    fn hints(&self, _node: NodeId) -> HintReceiver {
        let (tx, rx) = mpsc::unbounded_channel();
        self.state().hints.push(tx);
        rx
    }

    async fn record_health(&self, r: HealthReport) -> Result<Option<HealthRecorded>> {
        let mut st = self.state();
        let ops = st.ops.clone();
        let Some(ep) = st.endpoints.get_mut(&r.endpoint_id) else {
            return Ok(None);
        };
        let transition = r.apply(&mut ep.health);
        if transition == Some(HealthTransition::Disabled) {
            ep.enabled = false;
        }
        let ep = ep.clone();
        if transition.is_some() {
            let ctx = Arc::new(EndpointCtx::from_endpoint(&ep));
            for h in &st.hints {
                let _ = h.send(Hint::EndpointChanged(ctx.clone()));
            }
        }
        // The outbox, as the drivers keep it: the transition's ops notification is stored
        // with it, as an ordinary delivery of the ops target's app, and claimed like any.
        let mut ops_notification = None;
        if let (Some(target), Some(event_type)) = (ops, transition.and_then(|t| t.event_type())) {
            let seq = 1_000_000 + st.rows.len() as i64;
            let id = format!("ops_{seq}");
            let app = AppCtx {
                id: "app_ops".into(),
                profile: Profile::StandardWebhooks,
                credentials: target.credentials,
                retry: RetryPolicy::standard(),
                ack: AckRule::Http2xx,
            };
            let job = ClaimedDelivery {
                seq,
                id: id.clone(),
                notify_id: format!("msg_{seq}"),
                notification_id: id.clone(),
                app: Arc::new(app),
                endpoint: None,
                url: target.url,
                event_type: herald_store::EventType::internal(event_type),
                payload: Arc::from(herald_store::ops_body(event_type, &ep, r.now)),
                created_at: r.now,
                attempts: 0,
                next_at: r.now,
                order_key: Some(ep.id.clone()),
            };
            st.rows.insert(
                seq,
                Row {
                    status: DeliveryStatus::Pending,
                    attempts: 0,
                    next_at: r.now,
                    locked_by: None,
                    job: Arc::new(job),
                },
            );
            for h in &st.hints {
                let _ = h.send(Hint::Work);
            }
            ops_notification = Some(id);
        }
        Ok(Some(HealthRecorded {
            endpoint: ep,
            transition,
            ops_notification,
        }))
    }
}

// --- a scripted receiver ------------------------------------------------------------------

type Script = Box<dyn Fn(&ClaimedDelivery) -> (Verdict, Duration) + Send + Sync>;

/// A scripted verdict that stands for "Herald ran out of descriptors" (error class `local`).
const LOCAL: Verdict = Verdict::RetryNotBefore(Duration::from_millis(424_242));
/// A scripted verdict that stands for a `410 Gone` answer.
const GONE: Verdict = Verdict::RetryNotBefore(Duration::from_millis(410_410));

struct FakeReceiver {
    clock: TokioClock,
    /// (seq, attempt number, time) of every attempt, in order.
    log: Mutex<Vec<(i64, u32, UnixMillis)>>,
    script: Mutex<Script>,
    /// Operational notifications received: (event type, URL, JSON body, time); always acked.
    ops: Mutex<Vec<(String, String, serde_json::Value, UnixMillis)>>,
}

impl FakeReceiver {
    fn new(clock: TokioClock, script: Script) -> Arc<FakeReceiver> {
        Arc::new(FakeReceiver {
            clock,
            log: Mutex::new(Vec::new()),
            script: Mutex::new(script),
            ops: Mutex::new(Vec::new()),
        })
    }

    fn ops_events(&self) -> Vec<String> {
        self.ops
            .lock()
            .expect("ops")
            .iter()
            .map(|o| o.0.clone())
            .collect()
    }

    /// Attempts made in `[from, to)` (times relative to `T0`, in ms).
    fn attempts_between(&self, from: u64, to: u64) -> usize {
        self.attempts()
            .iter()
            .filter(|a| (T0 + ms(from)..T0 + ms(to)).contains(&a.2))
            .count()
    }

    fn attempts(&self) -> Vec<(i64, u32, UnixMillis)> {
        self.log.lock().expect("log").clone()
    }

    fn attempts_of(&self, seq: i64) -> Vec<UnixMillis> {
        self.attempts()
            .into_iter()
            .filter(|a| a.0 == seq)
            .map(|a| a.2)
            .collect()
    }
}

#[async_trait]
impl Attempter for FakeReceiver {
    async fn attempt(
        &self,
        job: &ClaimedDelivery,
        _app: &AppCtx,
        _ep: Option<&EndpointCtx>,
    ) -> AttemptResult {
        let at = self.clock.now();
        if job.id.starts_with("ops_") {
            let body = serde_json::from_str(&job.payload).expect("ops body is JSON");
            self.ops.lock().expect("ops").push((
                job.event_type.to_string(),
                job.url.clone(),
                body,
                at,
            ));
            return AttemptResult {
                attempt: Attempt {
                    n: 1,
                    at,
                    duration_ms: 1,
                    status_code: Some(204),
                    response: None,
                    error_class: None,
                    error: None,
                },
                verdict: Verdict::Acked,
            };
        }
        let (verdict, takes) = (self.script.lock().expect("script"))(job);
        self.log
            .lock()
            .expect("log")
            .push((job.seq, job.attempts + 1, at));
        tokio::time::sleep(takes).await;
        let local = verdict == LOCAL;
        let gone = verdict == GONE;
        let verdict = if gone { Verdict::Retry } else { verdict };
        AttemptResult {
            attempt: Attempt {
                n: job.attempts + 1,
                at,
                duration_ms: takes.as_millis() as u32,
                status_code: (!local).then_some(if verdict == Verdict::Acked {
                    204
                } else if gone {
                    410
                } else {
                    503
                }),
                response: None,
                error_class: local.then(|| "local".to_string()),
                error: local.then(|| "Too many open files (os error 24)".to_string()),
            },
            verdict: if local { Verdict::Retry } else { verdict },
        }
    }
}

// --- fixtures -----------------------------------------------------------------------------

fn app(retry_secs: &[u64]) -> Arc<AppCtx> {
    Arc::new(AppCtx {
        id: "app_1".into(),
        profile: Profile::StandardWebhooks,
        credentials: Credentials::StandardWebhooks(Keys {
            keys: vec![KeyEntry {
                secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
                expires_at: None,
            }],
        }),
        retry: RetryPolicy {
            name: None,
            delays_ms: retry_secs.iter().map(|s| s * 1000).collect(),
            jitter: 0.0,
        },
        ack: Profile::StandardWebhooks.default_ack(),
    })
}

fn job(
    seq: i64,
    app: &Arc<AppCtx>,
    next_at: UnixMillis,
    order_key: Option<&str>,
) -> ClaimedDelivery {
    ClaimedDelivery {
        seq,
        id: format!("dlv_{seq}"),
        notify_id: format!("msg_{seq}"),
        notification_id: format!("ntf_{seq}"),
        app: app.clone(),
        endpoint: None,
        url: "http://receiver.test/hook".parse().unwrap(),
        event_type: "e".parse().unwrap(),
        payload: Arc::from("{}"),
        created_at: T0,
        attempts: 0,
        next_at,
        order_key: order_key.map(str::to_string),
    }
}

fn endpoint(id: &str, max_in_flight: u32) -> Endpoint {
    Endpoint {
        id: id.into(),
        app_id: "app_1".into(),
        url: "http://receiver.test/hook".parse().unwrap(),
        event_types: None,
        retry: None,
        ack: None,
        max_in_flight,
        ordered: false,
        enabled: true,
        timeout_ms: None,
        created_at: T0,
        updated_at: T0,
        health: EndpointHealth::default(),
    }
}

fn ep_job(seq: i64, app: &Arc<AppCtx>, next_at: UnixMillis, ep: &Endpoint) -> ClaimedDelivery {
    ClaimedDelivery {
        endpoint: Some(Arc::new(EndpointCtx::from_endpoint(ep))),
        ..job(seq, app, next_at, None)
    }
}

fn ops_target() -> OpsTarget {
    OpsTarget {
        url: "http://ops.test/hook".into(),
        credentials: Credentials::StandardWebhooks(Keys {
            keys: vec![KeyEntry {
                secret: "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD".into(),
                expires_at: None,
            }],
        }),
        retry: None,
    }
}

struct Harness {
    queue: Arc<FakeQueue>,
    receiver: Arc<FakeReceiver>,
    engine: Engine,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Harness {
    fn start(script: Script, tune: impl FnOnce(&mut EngineConfig)) -> Harness {
        Harness::start_on(Arc::new(FakeQueue::default()), script, tune)
    }

    fn start_on(
        queue: Arc<FakeQueue>,
        script: Script,
        tune: impl FnOnce(&mut EngineConfig),
    ) -> Harness {
        let clock = TokioClock::starting_at(T0);
        let receiver = FakeReceiver::new(clock, script);
        let mut config = EngineConfig {
            clock: Arc::new(clock),
            ..EngineConfig::default()
        };
        tune(&mut config);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let engine = Engine::with_attempter(queue.clone(), config, receiver.clone(), async move {
            let _ = rx.await;
        });
        Harness {
            queue,
            receiver,
            engine,
            stop: Some(tx),
        }
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = self.engine.task.await;
    }
}

fn acks() -> Script {
    Box::new(|_| (Verdict::Acked, Duration::from_millis(5)))
}

/// Lets the engine run for `d` of paused time.
async fn run_for(d: Duration) {
    tokio::time::sleep(d).await;
}

// --- cases --------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_delivery_is_attempted_when_it_is_due_not_before() {
    let a = app(&[10]);
    let h = Harness::start(acks(), |_| {});
    h.queue.add(job(1, &a, T0 + ms(10_000), None));
    run_for(Duration::from_secs(20)).await;
    let at = h.receiver.attempts_of(1);
    assert_eq!(at.len(), 1);
    assert!(
        (T0 + ms(10_000)..T0 + ms(10_050)).contains(&at[0]),
        "attempted at +{} ms",
        at[0].ms_since(T0)
    );
    assert_eq!(h.queue.status(1), DeliveryStatus::Succeeded);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn work_beyond_the_window_is_claimed_only_once_it_comes_within_it() {
    let a = app(&[10]);
    let h = Harness::start(acks(), |c| c.window = Duration::from_secs(60));
    h.queue.add(job(1, &a, T0 + ms(300_000), None));
    run_for(Duration::from_secs(100)).await;
    assert!(h.queue.holder(1).is_none(), "not claimed 200 s ahead");
    assert!(h
        .queue
        .state()
        .claims
        .iter()
        .all(|c| c.horizon <= c.now + ms(60_000)));
    run_for(Duration::from_secs(210)).await;
    let at = h.receiver.attempts_of(1);
    assert_eq!(at.len(), 1);
    assert!(at[0] >= T0 + ms(300_000));
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_failed_attempt_is_retried_on_the_schedule() {
    let a = app(&[5, 30]);
    let h = Harness::start(
        Box::new(|_| (Verdict::Retry, Duration::from_millis(1))),
        |_| {},
    );
    h.queue.add(job(1, &a, T0, None));
    run_for(Duration::from_secs(60)).await;
    let at = h.receiver.attempts_of(1);
    assert_eq!(at.len(), 3, "{at:?}");
    let gaps: Vec<i64> = at.windows(2).map(|w| w[1].ms_since(w[0])).collect();
    assert!((5_000..5_100).contains(&gaps[0]), "{gaps:?}");
    assert!((30_000..30_100).contains(&gaps[1]), "{gaps:?}");
    assert_eq!(h.queue.status(1), DeliveryStatus::Failed);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn retry_after_postpones_the_next_attempt_past_the_schedule() {
    let a = app(&[1, 1]);
    let h = Harness::start(
        Box::new(|j| {
            if j.attempts == 0 {
                (
                    Verdict::RetryNotBefore(Duration::from_secs(40)),
                    Duration::from_millis(1),
                )
            } else {
                (Verdict::Acked, Duration::from_millis(1))
            }
        }),
        |_| {},
    );
    h.queue.add(job(1, &a, T0, None));
    run_for(Duration::from_secs(90)).await;
    let at = h.receiver.attempts_of(1);
    assert_eq!(at.len(), 2);
    assert!(
        at[1].ms_since(at[0]) >= 40_000,
        "{} ms apart",
        at[1].ms_since(at[0])
    );
    assert_eq!(h.queue.status(1), DeliveryStatus::Succeeded);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_order_key_is_delivered_one_at_a_time_in_creation_order() {
    let a = app(&[2]);
    // The first attempt of each fails, so each delivery takes two attempts 2 s apart.
    let h = Harness::start(
        Box::new(|j| {
            if j.attempts == 0 {
                (Verdict::Retry, Duration::from_millis(10))
            } else {
                (Verdict::Acked, Duration::from_millis(10))
            }
        }),
        |_| {},
    );
    for seq in 1..=3 {
        h.queue.add(job(seq, &a, T0, Some("trade:1")));
    }
    run_for(Duration::from_secs(30)).await;
    let log = h.receiver.attempts();
    let order: Vec<i64> = log.iter().map(|a| a.0).collect();
    assert_eq!(order, vec![1, 1, 2, 2, 3, 3], "{log:?}");
    for seq in 1..=3 {
        assert_eq!(h.queue.status(seq), DeliveryStatus::Succeeded);
    }
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_hint_claims_new_work_before_the_claim_interval() {
    let a = app(&[10]);
    let h = Harness::start(acks(), |c| c.claim_interval = Duration::from_secs(30));
    run_for(Duration::from_secs(1)).await;
    h.queue.add(job(1, &a, T0 + ms(1_000), None)); // sends Hint::Work
    run_for(Duration::from_millis(200)).await;
    let at = h.receiver.attempts_of(1);
    assert_eq!(at.len(), 1, "attempted within 200 ms of the hint, not 30 s");
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn without_hints_the_claim_timer_still_finds_work() {
    let a = app(&[10]);
    let queue = Arc::new(FakeQueue::default());
    let h = Harness::start_on(queue.clone(), acks(), |c| {
        c.claim_interval = Duration::from_secs(2)
    });
    run_for(Duration::from_millis(100)).await;
    // Added behind the engine's back: no hint reaches it.
    queue.state().hints.clear();
    queue.add(job(1, &a, T0, None));
    run_for(Duration::from_secs(3)).await;
    assert_eq!(h.receiver.attempts_of(1).len(), 1);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_late_claim_answer_is_used_and_claims_never_overlap() {
    let a = app(&[10]);
    let queue = Arc::new(FakeQueue::default());
    *queue.claim_delay.lock().unwrap() = Duration::from_secs(5);
    for seq in 1..=3 {
        queue.add(job(seq, &a, T0, None));
    }
    let h = Harness::start_on(queue.clone(), acks(), |c| {
        c.claim_interval = Duration::from_millis(500)
    });
    // More work and hints arrive while the first claim is still out.
    run_for(Duration::from_secs(1)).await;
    queue.add(job(4, &a, T0, None));
    run_for(Duration::from_secs(20)).await;
    for seq in 1..=4 {
        assert_eq!(h.receiver.attempts_of(seq).len(), 1, "delivery {seq}");
    }
    assert_eq!(queue.state().max_claims_running, 1);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_lost_lease_drops_held_work_and_the_new_node_takes_it_again() {
    let a = app(&[10]);
    let queue = Arc::new(FakeQueue::default());
    let h = Harness::start_on(queue.clone(), acks(), |c| {
        c.lease = Duration::from_secs(30);
        c.window = Duration::from_secs(60);
    });
    queue.add(job(1, &a, T0 + ms(50_000), None));
    run_for(Duration::from_secs(2)).await;
    let first = queue.holder(1).expect("claimed ahead of time");
    // Another node rescued this node's work (as after a long pause).
    queue.expire(&first);
    run_for(Duration::from_secs(60)).await;
    let at = h.receiver.attempts_of(1);
    assert_eq!(at.len(), 1, "attempted once, by the new node");
    assert_eq!(queue.status(1), DeliveryStatus::Succeeded);
    let nodes: Vec<NodeId> = queue.state().nodes.keys().cloned().collect();
    assert!(
        !nodes.contains(&first),
        "the old node id is gone: {nodes:?}"
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_stuck_destination_keeps_memory_bounded_and_its_in_flight_limit() {
    let a = app(&[1]);
    let h = Harness::start(
        Box::new(|_| (Verdict::Retry, Duration::from_secs(3600))),
        |c| {
            c.max_in_memory = 100;
            c.claim_batch = 100;
            c.default_max_in_flight = 2;
        },
    );
    for seq in 1..=400 {
        h.queue.add(job(seq, &a, T0, None));
    }
    run_for(Duration::from_secs(5)).await;
    let in_memory = h
        .engine
        .stats
        .in_memory
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(in_memory <= 100, "{in_memory} in memory");
    assert_eq!(h.receiver.attempts().len(), 2, "the in-flight limit holds");
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_gives_back_what_the_node_holds() {
    let a = app(&[10]);
    let h = Harness::start(acks(), |c| c.window = Duration::from_secs(60));
    h.queue.add(job(1, &a, T0 + ms(30_000), None));
    run_for(Duration::from_secs(2)).await;
    assert!(h.queue.holder(1).is_some());
    let queue = h.queue.clone();
    h.stop().await;
    assert!(queue.holder(1).is_none(), "released for the next node");
}

#[tokio::test(start_paused = true)]
async fn a_stopping_node_leaves_once_it_has_given_back_its_work() {
    let a = app(&[10]);
    let h = Harness::start(acks(), |c| c.window = Duration::from_secs(60));
    h.queue.add(job(1, &a, T0 + ms(30_000), None));
    run_for(Duration::from_secs(2)).await;
    let node = h.queue.holder(1).expect("held before the stop");
    assert!(h.queue.state().nodes.contains_key(&node));
    let queue = h.queue.clone();
    h.stop().await;
    let st = queue.state();
    assert_eq!(st.left, vec![node.clone()], "the node asked to leave once");
    assert!(
        !st.nodes.contains_key(&node),
        "released first, so it held nothing and was forgotten at once"
    );
}

#[tokio::test(start_paused = true)]
async fn an_attempt_that_fails_for_lack_of_local_resources_is_not_spent() {
    // A schedule of one attempt: spending it on Herald's own failure would fail the delivery.
    let a = app(&[]);
    let h = Harness::start(
        Box::new(|_| {
            static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            if CALLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 2 {
                (LOCAL, Duration::from_millis(1))
            } else {
                (Verdict::Acked, Duration::from_millis(1))
            }
        }),
        |_| {},
    );
    h.queue.add(job(1, &a, T0, None));
    run_for(Duration::from_secs(30)).await;
    assert_eq!(
        h.receiver.attempts_of(1).len(),
        3,
        "two local failures, then the real attempt"
    );
    assert_eq!(h.queue.status(1), DeliveryStatus::Succeeded);
    assert_eq!(
        h.queue.state().rows[&1].attempts,
        1,
        "only the real attempt counts"
    );
    assert_eq!(
        h.engine
            .stats
            .local_failures
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn one_apps_hanging_destinations_cannot_take_every_global_slot() {
    // App 1: ten destinations that never answer, each allowed 256 attempts at once (2,560
    // together, past the global limit of 2,048). App 2: one healthy destination.
    let hog = app(&[3600]);
    let mut other = (*app(&[10])).clone();
    other.id = "app_2".into();
    let other = Arc::new(other);
    let h = Harness::start(
        Box::new(|j| {
            if j.app.id == "app_1" {
                (Verdict::Retry, Duration::from_secs(3600))
            } else {
                (Verdict::Acked, Duration::from_millis(3))
            }
        }),
        |c| {
            c.default_max_in_flight = 256;
            c.claim_batch = 5_000;
        },
    );
    let mut seq = 0;
    for host in 0..10 {
        for _ in 0..300 {
            seq += 1;
            let mut j = job(seq, &hog, T0, None);
            j.url = format!("http://hanging-{host}.test/hook");
            h.queue.add(j);
        }
    }
    run_for(Duration::from_secs(1)).await;
    let mut healthy = job(100_000, &other, T0 + ms(1_000), None);
    healthy.url = "http://healthy.test/hook".into();
    h.queue.add(healthy);
    run_for(Duration::from_millis(500)).await;
    let at = h.receiver.attempts_of(100_000);
    assert_eq!(at.len(), 1, "the healthy app's delivery was attempted");
    assert!(
        at[0].ms_since(T0 + ms(1_000)) < 50,
        "within {} ms of being due",
        at[0].ms_since(T0 + ms(1_000))
    );
    assert_eq!(h.queue.status(100_000), DeliveryStatus::Succeeded);
    let hogging = h
        .receiver
        .attempts()
        .iter()
        .filter(|a| a.0 < 100_000)
        .count();
    assert_eq!(hogging, 1_024, "the hanging app holds its share, no more");
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn work_claimed_but_whose_answer_was_lost_is_taken_back_and_sent() {
    let a = app(&[10]);
    let queue = Arc::new(FakeQueue::default());
    *queue.lose_claim_answers.lock().unwrap() = 1;
    queue.add(job(1, &a, T0, None));
    let h = Harness::start_on(queue.clone(), acks(), |_| {});
    run_for(Duration::from_secs(5)).await;
    assert!(queue.holder(1).is_none() || queue.status(1) == DeliveryStatus::Succeeded);
    assert_eq!(
        h.receiver.attempts_of(1).len(),
        1,
        "sent once it was taken back"
    );
    assert_eq!(queue.status(1), DeliveryStatus::Succeeded);
    h.stop().await;
}

// --- endpoint health ----------------------------------------------------------------------

/// Opens after 3 failures for 60 s, then 120 s; disabled after 10 minutes of failing.
fn breaker(c: &mut EngineConfig) {
    c.breaker = BreakerPolicy {
        failure_threshold: 3,
        cooldown: ms(60_000),
        cooldown_max: ms(120_000),
        disable_after: ms(600_000),
    };
}

#[tokio::test(start_paused = true)]
async fn the_breaker_opens_after_consecutive_failures_and_one_probe_after_the_cooldown_closes_it() {
    let a = app(&[1; 30]);
    let queue = Arc::new(FakeQueue::default());
    let ep = endpoint("ep_1", 1);
    queue.add_endpoint(ep.clone());
    queue.state().ops = Some(ops_target());
    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = healthy.clone();
    let h = Harness::start_on(
        queue,
        Box::new(move |_| {
            if flag.load(std::sync::atomic::Ordering::SeqCst) {
                (Verdict::Acked, Duration::from_millis(5))
            } else {
                (Verdict::Retry, Duration::from_millis(5))
            }
        }),
        breaker,
    );
    for seq in 1..=3 {
        h.queue.add(ep_job(seq, &a, T0, &ep));
    }
    run_for(Duration::from_secs(59)).await;
    // Three failures open the breaker; nothing more is sent while it cools down, although
    // each delivery's retry (1 s) came due long ago.
    assert_eq!(
        h.receiver.attempts_between(0, 59_000),
        3,
        "{:?}",
        h.receiver.attempts()
    );
    let health = h.queue.endpoint("ep_1").health;
    assert_eq!(health.state, BreakerState::Open);
    assert_eq!(health.consecutive_failures, 3);
    let until = health.open_until.expect("open until");
    assert!(
        (T0 + ms(60_000)..T0 + ms(60_100)).contains(&until),
        "{until}"
    );
    for seq in 1..=3 {
        assert_eq!(h.queue.status(seq), DeliveryStatus::Pending);
        assert_eq!(
            h.queue.holder(seq),
            None,
            "held back in the store, not in memory"
        );
    }
    assert_eq!(h.receiver.ops_events(), vec!["endpoint.breaker_opened"]);

    // After the cool-down: exactly one probe. It fails, so the breaker opens for 120 s.
    run_for(Duration::from_secs(60)).await;
    assert_eq!(h.receiver.attempts_between(59_000, 119_000), 1);
    let health = h.queue.endpoint("ep_1").health;
    assert_eq!(health.state, BreakerState::Open);
    assert_eq!(health.times_opened, 2);
    let probe_at = h.receiver.attempts().last().expect("probe").2;
    assert!(probe_at >= until, "probe at +{} ms", probe_at.ms_since(T0));

    // The receiver recovers; the next probe (after 120 s) succeeds and closes the breaker,
    // and the rest follow at once.
    healthy.store(true, std::sync::atomic::Ordering::SeqCst);
    run_for(Duration::from_secs(100)).await;
    let next_probe = h
        .receiver
        .attempts()
        .iter()
        .map(|a| a.2)
        .find(|t| *t > probe_at)
        .expect("a second probe");
    assert!(
        next_probe >= probe_at + ms(120_000),
        "second probe {} ms after the first",
        next_probe.ms_since(probe_at)
    );
    for seq in 1..=3 {
        assert_eq!(h.queue.status(seq), DeliveryStatus::Succeeded);
    }
    let health = h.queue.endpoint("ep_1").health;
    assert_eq!(health.state, BreakerState::Closed);
    assert_eq!(health.consecutive_failures, 0);
    assert_eq!(
        h.receiver.ops_events(),
        vec!["endpoint.breaker_opened", "endpoint.recovered"]
    );
    let ops = h.receiver.ops.lock().expect("ops")[1].clone();
    assert_eq!(ops.1, "http://ops.test/hook");
    assert_eq!(ops.2["type"], "endpoint.recovered");
    assert_eq!(ops.2["data"]["endpoint_id"], "ep_1");
    assert_eq!(ops.2["data"]["health"]["state"], "closed");
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_410_disables_the_endpoint_at_once_and_nothing_more_is_sent() {
    let a = app(&[1; 30]);
    let queue = Arc::new(FakeQueue::default());
    let ep = endpoint("ep_1", 1);
    queue.add_endpoint(ep.clone());
    queue.state().ops = Some(ops_target());
    let h = Harness::start_on(
        queue,
        Box::new(|_| (GONE, Duration::from_millis(5))),
        breaker,
    );
    for seq in 1..=3 {
        h.queue.add(ep_job(seq, &a, T0, &ep));
    }
    run_for(Duration::from_secs(3600)).await;
    assert_eq!(
        h.receiver.attempts().len(),
        1,
        "{:?}",
        h.receiver.attempts()
    );
    let got = h.queue.endpoint("ep_1");
    assert!(!got.enabled);
    assert_eq!(got.health.state, BreakerState::Disabled);
    assert_eq!(
        got.health.disabled_reason.as_deref(),
        Some("the endpoint answered 410 Gone")
    );
    for seq in 1..=3 {
        assert_eq!(
            h.queue.status(seq),
            DeliveryStatus::Pending,
            "kept, not lost"
        );
    }
    assert_eq!(h.receiver.ops_events(), vec!["endpoint.disabled"]);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_endpoint_failing_for_longer_than_the_disable_period_is_disabled() {
    let a = app(&[1; 300]);
    let queue = Arc::new(FakeQueue::default());
    let ep = endpoint("ep_1", 1);
    queue.add_endpoint(ep.clone());
    queue.state().ops = Some(ops_target());
    let h = Harness::start_on(
        queue,
        Box::new(|_| (Verdict::Retry, Duration::from_millis(5))),
        breaker,
    );
    h.queue.add(ep_job(1, &a, T0, &ep));
    run_for(Duration::from_secs(3 * 3600)).await;
    let got = h.queue.endpoint("ep_1");
    assert_eq!(got.health.state, BreakerState::Disabled);
    let disabled_at = got.health.changed_at.expect("changed at");
    // The first failure was at T0; probes every 60 s, then every 120 s, and the first
    // failed probe at or after 10 minutes disables it.
    assert!(
        (T0 + ms(600_000)..T0 + ms(600_000) + ms(121_000)).contains(&disabled_at),
        "disabled at +{} ms",
        disabled_at.ms_since(T0)
    );
    assert_eq!(
        h.receiver.attempts_between(
            disabled_at.saturating_sub(T0).as_millis() as u64 + 1,
            3 * 3_600_000
        ),
        0
    );
    // One attempt, then one probe per cool-down: far fewer than the schedule's 1 s retries.
    assert!(
        h.receiver.attempts().len() < 12,
        "{}",
        h.receiver.attempts().len()
    );
    let events = h.receiver.ops_events();
    assert_eq!(
        events.first().map(String::as_str),
        Some("endpoint.breaker_opened")
    );
    assert_eq!(events.last().map(String::as_str), Some("endpoint.disabled"));
    assert!(!events.iter().any(|e| e == "endpoint.recovered"));
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn successes_of_a_healthy_endpoint_are_recorded_once_per_interval() {
    let a = app(&[1]);
    let queue = Arc::new(FakeQueue::default());
    let ep = endpoint("ep_1", 8);
    queue.add_endpoint(ep.clone());
    let h = Harness::start_on(queue, acks(), |c| {
        c.success_record_interval = Duration::from_secs(60)
    });
    for seq in 1..=50 {
        h.queue.add(ep_job(seq, &a, T0, &ep));
    }
    run_for(Duration::from_secs(10)).await;
    assert_eq!(
        h.engine
            .stats
            .succeeded
            .load(std::sync::atomic::Ordering::Relaxed),
        50
    );
    assert_eq!(
        h.engine
            .stats
            .health_reports
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert!(h.queue.endpoint("ep_1").health.last_success_at.is_some());
    h.stop().await;
}

/// A store that claimed deliveries for the node without handing them over (a write that
/// claims at birth lost its answer) says `Hint::Reread`: the engine reads back what it
/// holds at once, not at its next claim, and sends it.
#[tokio::test(start_paused = true)]
async fn a_reread_hint_takes_back_what_the_store_holds_for_the_node_at_once() {
    let a = app(&[10]);
    let queue = Arc::new(FakeQueue::default());
    let h = Harness::start_on(queue.clone(), acks(), |c| {
        c.claim_interval = Duration::from_secs(30)
    });
    run_for(Duration::from_secs(1)).await;
    {
        let mut st = queue.state();
        let node = st.nodes.keys().next().cloned().expect("the engine's node");
        let job = Arc::new(job(1, &a, T0, None));
        st.rows.insert(
            1,
            Row {
                status: DeliveryStatus::Pending,
                attempts: 0,
                next_at: T0,
                locked_by: Some(node),
                job,
            },
        );
    }
    run_for(Duration::from_secs(2)).await;
    assert!(
        h.receiver.attempts_of(1).is_empty(),
        "held, so no claim takes it"
    );
    for hint in &queue.state().hints {
        let _ = hint.send(Hint::Reread);
    }
    run_for(Duration::from_millis(200)).await;
    assert_eq!(h.receiver.attempts_of(1).len(), 1);
    assert_eq!(queue.status(1), DeliveryStatus::Succeeded);
    h.stop().await;
}
