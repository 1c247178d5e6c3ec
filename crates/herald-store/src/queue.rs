//! The engine's side of the store: a claim-based delivery queue ([`Queue`]).
//!
//! The engine owns work by *claiming* it: a claim marks pending deliveries as held by one
//! node, so no other node attempts them while the claim holds. Everything here is shaped so
//! that several engines on one database (PostgreSQL) never send the same delivery twice in
//! normal operation, and a dead node's work is taken over once its lease expires.
//!
//! ## Leases belong to nodes
//!
//! A node registers once ([`Queue::register_node`]) and renews its lease with one write
//! ([`Queue::renew_lease`]) however many deliveries it holds. A delivery is held while its
//! `locked_by` names a node; [`Queue::rescue`] (run by every node) releases the deliveries of
//! nodes whose lease expired and forgets those nodes. A renewal that finds its node forgotten
//! answers [`Lease::Lost`]: the node then drops everything it holds (its late outcomes are
//! stale and change nothing) and registers again under a new id.
//!
//! ## What a claim takes
//!
//! [`Queue::claim`] takes, in `(next_at, seq)` order, pending deliveries that are due by the
//! horizon and held by nobody, with two rules that make guarantees hold across nodes:
//! - **order keys**: only the first pending delivery of an order key is claimable, so its
//!   successor cannot be attempted anywhere before it ends;
//! - **one node per endpoint**: an endpoint's deliveries are claimed only when no other live
//!   node holds any of them, so an endpoint's in-flight limit holds across nodes (exceeded at
//!   most by what a node already held when another took over after its death);
//! - **endpoint health**: deliveries of an endpoint whose breaker is open and cooling down,
//!   or that health disabled, are not claimed (see [`crate::health`]); once the cool-down
//!   is over the one node that claims the endpoint probes it one delivery at a time.
//!
//! ## Outcomes are conditional
//!
//! [`Queue::complete`] applies an attempt's outcome only if the delivery is still pending,
//! with the attempt count the engine saw, and still held by the reporting node: a stale
//! outcome (the lease was lost, the delivery was canceled, retried or taken over) changes
//! nothing and says so ([`Completed::applied`] is false).
//!
//! ## Hints
//!
//! Wake-ups ([`Hint`]) say "work was committed" or "settings changed". They are best effort:
//! a driver may drop them (PostgreSQL's `LISTEN/NOTIFY` is per connection and lossy), and
//! the engine stays correct without them because it also claims on a timer. The SQLite
//! driver, being one process, sends exact hints that carry the new deliveries already claimed
//! for the local node ("claimed at birth"), which saves a claim round trip per notification.
//! The PostgreSQL driver does the same for a node alone on its database, for the endpoints
//! it already holds (see `herald_store_postgres`'s batch insert); on a fleet it sends `Work`.
//!
//! Every parameter struct carries `now`: tests fix the clock, and no driver reads it.
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::health::{HealthRecorded, HealthReport};
use crate::model::*;
use crate::Result;

/// A node's identity in leases (`node_<ulid>`); a node that lost its lease takes a new one.
pub type NodeId = Arc<str>;

/// Registering or renewing a node's lease: it holds until `now + lease`.
#[derive(Clone, Debug)]
pub struct LeaseParams {
    pub node: NodeId,
    pub now: UnixMillis,
    pub lease: Duration,
}

/// The answer to a renewal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lease {
    /// Renewed: the node still holds what it claimed.
    Held,
    /// The node was forgotten (its lease expired and its work was released): everything it
    /// held may be another node's now.
    Lost,
}

/// A claim: up to `limit` unheld, claimable deliveries due at or before `horizon`, for
/// `node`. `now` is the time claims are judged at (whose leases expired).
#[derive(Clone, Debug)]
pub struct ClaimParams {
    pub node: NodeId,
    pub now: UnixMillis,
    pub horizon: UnixMillis,
    pub limit: usize,
}

/// An attempt's outcome, reported by the node that holds the delivery. `horizon` is how far
/// ahead the node keeps work: a delivery that stays pending with its next attempt by then
/// stays held (the node keeps it in memory); a later one is released with its new time. An
/// ordered successor is claimed for the node when it is due by then.
#[derive(Clone, Debug)]
pub struct CompleteParams {
    pub node: NodeId,
    pub report: AttemptReport,
    pub now: UnixMillis,
    pub horizon: UnixMillis,
}

impl CompleteParams {
    /// Whether the node keeps holding the delivery: it stays pending, next due by the
    /// horizon.
    pub fn keeps(&self) -> bool {
        matches!(self.report.outcome, AttemptOutcome::Retry { next_at } if next_at <= self.horizon)
    }
}

/// What [`Queue::complete`] did.
#[derive(Clone, Debug)]
pub struct Completed {
    /// False when the outcome was stale and changed nothing (see the module doc).
    pub applied: bool,
    /// The delivery's status afterwards (`None` when it no longer exists).
    pub status: Option<DeliveryStatus>,
    /// When applied, still pending and still held (due by the horizon): the job with its new
    /// attempt count and time.
    pub held: Option<Arc<ClaimedDelivery>>,
    /// The next delivery of the same order key, claimed for the node, when this one ended
    /// and the successor is due by the horizon.
    pub successor: Option<Arc<ClaimedDelivery>>,
}

/// Giving back held deliveries: each `(seq, attempts)` still held by `node` with that attempt
/// count is released; with `next_at`, moved to that time too (parking a backlog that cannot
/// be sent soon, so memory stays bounded; no attempt is spent).
#[derive(Clone, Debug)]
pub struct ReleaseParams {
    pub node: NodeId,
    pub jobs: Vec<(i64, u32)>,
    pub next_at: Option<UnixMillis>,
    pub now: UnixMillis,
}

/// Asking for what `node` holds, due by `horizon` (see [`Queue::held`]). `now` stamps
/// anything found unsendable (its app or endpoint gone), which is canceled on the way.
#[derive(Clone, Debug)]
pub struct HeldParams {
    pub node: NodeId,
    pub now: UnixMillis,
    pub horizon: UnixMillis,
}

/// A best-effort wake-up for the engines (see the module doc).
#[derive(Clone, Debug)]
pub enum Hint {
    /// New deliveries, already claimed for this node (exact drivers only).
    Claimed(Vec<Arc<ClaimedDelivery>>),
    /// Unheld work was committed (new, retried, recovered, released): claim now.
    Work,
    /// Deliveries may have been claimed for this node without reaching it: a write that
    /// claims at birth failed without saying whether it committed, or claimed deliveries
    /// it could not hand over. Read back what the node holds ([`Queue::held`]).
    Reread,
    /// Deliveries that left this node's hands: canceled, or retried by hand while held.
    /// Drop them from memory; their late outcomes are stale anyway.
    Revoked(Vec<i64>),
    AppChanged(Arc<AppCtx>),
    EndpointChanged(Arc<EndpointCtx>),
}

/// The receiving end of a queue's hints.
pub type HintReceiver = mpsc::UnboundedReceiver<Hint>;

/// The claim-based delivery queue the engine works against. See the module doc.
#[async_trait]
pub trait Queue: Send + Sync + 'static {
    /// Starts a node's lease. With `claim_new`, a driver that can also claims new deliveries
    /// at birth for this node and sends them as [`Hint::Claimed`] (SQLite: every claimable
    /// one; PostgreSQL: while the node is alone, those of endpoints it holds and those
    /// without an endpoint); what it does not claim it announces with [`Hint::Work`].
    async fn register_node(&self, params: LeaseParams, claim_new: bool) -> Result<()>;
    /// Extends the node's lease; [`Lease::Lost`] when the node was forgotten.
    async fn renew_lease(&self, params: LeaseParams) -> Result<Lease>;
    /// A node's graceful exit, once it has released what it held: nothing is claimed for it
    /// at birth any more, and when it holds no pending delivery it is forgotten at once, so
    /// the other nodes stop counting it at their next look (a driver whose claims share the
    /// endpoints among the live nodes would otherwise leave them a lease long with a share
    /// sized for a node that is gone). A node that still holds work keeps its lease, which
    /// ends as usual; then its work is rescued. Returns whether the node was forgotten.
    /// A driver whose claims do not count nodes (SQLite: one process) may keep the lease.
    async fn leave(&self, node: NodeId) -> Result<bool>;
    /// Releases the deliveries of nodes whose lease ended before `now` and forgets those
    /// nodes. Returns how many deliveries were released.
    async fn rescue(&self, now: UnixMillis) -> Result<u64>;
    /// Claims due work (see the module doc for what is claimable), in `(next_at, seq)` order.
    async fn claim(&self, params: ClaimParams) -> Result<Vec<Arc<ClaimedDelivery>>>;
    /// Records an attempt and applies its outcome if the node's claim still holds. When the
    /// delivery ended and has an ordered successor that is now claimable, the successor is
    /// claimed for the node in the same transaction and returned.
    async fn complete(&self, params: CompleteParams) -> Result<Completed>;
    /// Releases held deliveries (optionally moving them later). Returns the seqs released.
    async fn release(&self, params: ReleaseParams) -> Result<Vec<i64>>;
    /// The pending deliveries `node` holds that are due by `horizon`, as jobs: how a node
    /// takes back what it holds in the store but not in memory, after a call whose answer
    /// was lost (the database committed a claim or a kept outcome, then the connection
    /// dropped before the reply).
    async fn held(&self, params: HeldParams) -> Result<Vec<Arc<ClaimedDelivery>>>;
    /// Subscribes to hints for `node`. One subscription per engine.
    fn hints(&self, node: NodeId) -> HintReceiver;
    /// Applies an attempt's outcome to its endpoint's health ([`EndpointHealth::record`](crate::EndpointHealth::record))
    /// atomically, so reports from several nodes all count. When the state changed, sends
    /// [`Hint::EndpointChanged`] (and [`Hint::Work`] when the endpoint became claimable
    /// again) and returns the app's ops target read in the same transaction. Disabling also
    /// clears the endpoint's `enabled`. `None` when the endpoint does not exist.
    async fn record_health(&self, report: HealthReport) -> Result<Option<HealthRecorded>>;
}
