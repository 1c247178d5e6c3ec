//! The inbox: a verified notification takes effect at most once. Owns the glue between the
//! receiver, the state machine and the store: `process` reads the notification, then, while
//! the store holds the order locked, checks the amount, computes the step, runs the
//! merchant's handler only for a forward step, and commits the change, the handler's
//! statements and the notify id together (or nothing at all).
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

use herald_inbox::{
    Decide, Decision, Dialect, InboxError, InboxStore, NewOrder, OrderRecord, OrderState,
    ProcessOutcome, SqlValue, Statement,
};
use herald_protocols::receive::VerifiedNotification;

use crate::state::{self, Step};
use crate::{Handled, Outcome, RawRequest, Receiver, Rejection};

/// An order moving forward, as the merchant's handler sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    pub out_trade_no: String,
    pub from: OrderState,
    pub to: OrderState,
    /// The refunded total after this change, minor units.
    pub refunded_minor: i64,
    pub notification: VerifiedNotification,
}

/// The merchant's effects of a transition: statements run in the inbox's transaction, so
/// they commit exactly when the order change does.
#[derive(Debug)]
pub struct Effects {
    dialect: Dialect,
    statements: Vec<Statement>,
}

impl Effects {
    /// Queues one statement (placeholders in the store's dialect: `?1` on SQLite, `$1` on
    /// PostgreSQL). A failing statement rolls the whole notification back.
    pub fn execute(&mut self, sql: impl Into<String>, params: Vec<SqlValue>) {
        self.statements.push(Statement::new(sql, params));
    }

    /// The SQL dialect the statements run in.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }
}

/// A receiver and the store its orders live in. Cheap to clone.
#[derive(Clone)]
pub struct Inbox {
    inner: Arc<Inner>,
}

struct Inner {
    receiver: Receiver,
    store: Arc<dyn InboxStore>,
}

impl std::fmt::Debug for Inbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbox")
            .field("receiver", &self.inner.receiver)
            .finish_non_exhaustive()
    }
}

impl Inbox {
    /// An inbox verifying with `receiver` and keeping orders in `store`.
    pub fn new(receiver: Receiver, store: Arc<dyn InboxStore>) -> Self {
        Inbox {
            inner: Arc::new(Inner { receiver, store }),
        }
    }

    /// The receiver that verifies requests.
    pub fn receiver(&self) -> &Receiver {
        &self.inner.receiver
    }

    /// The store holding the orders.
    pub fn store(&self) -> &Arc<dyn InboxStore> {
        &self.inner.store
    }

    /// Creates an unpaid order (before sending the customer to pay).
    pub async fn create_order(&self, new: NewOrder) -> Result<OrderRecord, InboxError> {
        self.inner.store.create_order(new).await
    }

    /// The order with this reference, if any.
    pub async fn order(&self, out_trade_no: &str) -> Result<Option<OrderRecord>, InboxError> {
        self.inner.store.order(out_trade_no).await
    }

    /// verify + process + reply: the whole notify_url handler. `handler` runs only when the
    /// order moves forward, while the order is locked; its `Err` (or panic) rejects the
    /// notification so the provider sends it again. Keep it short and non-blocking: other
    /// copies for the order wait for it, and on PostgreSQL it runs on the async runtime.
    pub async fn receive<H>(&self, req: &RawRequest, handler: H) -> Handled
    where
        H: FnOnce(&mut Effects, &Transition) -> Result<(), String> + Send + 'static,
    {
        let result = match self.inner.receiver.verify(req) {
            Ok(n) => self.process(n, handler).await,
            Err(rejection) => Err(rejection),
        };
        let receiver = &self.inner.receiver;
        let reply = match &result {
            Ok(_) => receiver.ack_reply(),
            Err(rejection) => receiver.failure_reply(&rejection.reply_reason()),
        };
        Handled { result, reply }
    }

    /// Processes an already verified notification: at most one state change per notify id,
    /// only forward, with the handler's statements in the same transaction.
    pub async fn process<H>(
        &self,
        n: VerifiedNotification,
        handler: H,
    ) -> Result<Outcome, Rejection>
    where
        H: FnOnce(&mut Effects, &Transition) -> Result<(), String> + Send + 'static,
    {
        let Some(out_trade_no) = n.out_trade_no.clone() else {
            let reason = format!(
                "the {} notification names no order (status {})",
                n.profile,
                n.status.as_deref().unwrap_or("none")
            );
            tracing::warn!(profile = %n.profile, notify_id = %n.notify_id, reason, "verified notification acknowledged without an order to move");
            return Ok(Outcome::Unrelated { reason });
        };
        let reading = state::read(&n).inspect_err(|e| {
            tracing::warn!(profile = %n.profile, notify_id = %n.notify_id, out_trade_no, error = %e, "notification refused");
        })?;
        let notify_id = n.notify_id.clone();
        let profile = n.profile;
        let dialect = self.inner.store.dialect();
        // Why `decide` rejected, carried out of the closure (the store only sees a reason).
        let why: Arc<Mutex<Option<Rejection>>> = Arc::new(Mutex::new(None));
        let why_in = why.clone();
        let reject = move |r: Rejection| {
            let reason = r.to_string();
            if let Ok(mut slot) = why_in.lock() {
                *slot = Some(r);
            }
            Decision::Reject { reason }
        };
        let decide: Decide = Box::new(move |order: &OrderRecord| {
            let (to, refunded_minor) = match state::step(order, &reading) {
                Err(r) => return reject(r),
                Ok(Step::Stale(reason)) => return Decision::Ignore { reason },
                Ok(Step::Forward { to, refunded_minor }) => (to, refunded_minor),
            };
            let transaction_id = order
                .transaction_id
                .clone()
                .or_else(|| n.transaction_id.clone());
            let transition = Transition {
                out_trade_no: order.out_trade_no.clone(),
                from: order.state,
                to,
                refunded_minor,
                notification: n,
            };
            let mut effects = Effects {
                dialect,
                statements: Vec::new(),
            };
            match catch_unwind(AssertUnwindSafe(|| handler(&mut effects, &transition))) {
                Ok(Ok(())) => Decision::Apply {
                    state: to,
                    refunded_minor,
                    transaction_id,
                    statements: effects.statements,
                },
                Ok(Err(msg)) => reject(Rejection::Handler(msg)),
                Err(_) => reject(Rejection::Handler("the handler panicked".into())),
            }
        });
        let outcome = self
            .inner
            .store
            .process(&notify_id, &out_trade_no, decide)
            .await;
        let taken = || why.lock().ok().and_then(|mut slot| slot.take());
        let result = match outcome {
            Ok(ProcessOutcome::Applied { from, to }) => Ok(Outcome::Applied { from, to }),
            Ok(ProcessOutcome::Ignored { state, reason }) => Ok(Outcome::Stale { state, reason }),
            Ok(ProcessOutcome::Duplicate) => Ok(Outcome::Duplicate),
            Ok(ProcessOutcome::Rejected { reason }) => {
                Err(taken().unwrap_or(Rejection::Handler(reason)))
            }
            Ok(ProcessOutcome::UnknownOrder) => Err(Rejection::UnknownOrder(out_trade_no.clone())),
            Err(InboxError::Statement { message, .. }) => Err(Rejection::Handler(message)),
            Err(e) => Err(Rejection::Store(e.to_string())),
        };
        log(profile.name(), &notify_id, &out_trade_no, &result);
        result
    }
}

fn log(profile: &str, notify_id: &str, out_trade_no: &str, result: &Result<Outcome, Rejection>) {
    match result {
        Ok(Outcome::Applied { from, to }) => {
            tracing::info!(profile, notify_id, out_trade_no, %from, %to, "order moved")
        }
        Ok(Outcome::Duplicate) => {
            tracing::debug!(
                profile,
                notify_id,
                out_trade_no,
                "duplicate notification acknowledged"
            )
        }
        Ok(Outcome::Stale { state, reason }) => {
            tracing::info!(profile, notify_id, out_trade_no, %state, reason, "stale notification acknowledged")
        }
        // Logged where it is decided, before any order is looked up.
        Ok(Outcome::Unrelated { .. }) => {}
        Err(Rejection::AmountMismatch { expected, got }) => tracing::warn!(
            profile,
            notify_id,
            out_trade_no,
            expected_minor = expected.minor,
            expected_currency = %expected.currency,
            got_minor = got.minor,
            got_currency = %got.currency,
            "notification refused: amount mismatch, possible forgery"
        ),
        Err(e @ Rejection::Store(_)) => {
            tracing::error!(profile, notify_id, out_trade_no, error = %e, "notification not processed")
        }
        Err(e) => {
            tracing::warn!(profile, notify_id, out_trade_no, error = %e, "notification refused")
        }
    }
}
