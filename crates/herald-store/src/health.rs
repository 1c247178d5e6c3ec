//! Endpoint health: the circuit breaker and auto-disable rule every driver applies, and the
//! operational side of the store ([`OpsStore`]: apps' ops notification targets, the
//! backlog count for metrics, retention purges). Ops notifications themselves are an
//! outbox committed with the transition that causes them ([`crate::ops_outbox`]).
//!
//! The rule lives here, as plain code, so the SQLite and PostgreSQL drivers (and the
//! engine's test queue) apply it identically: a driver reads an endpoint's
//! [`EndpointHealth`], applies [`EndpointHealth::record`] to it under its write lock and
//! stores the result, so several nodes reporting outcomes for one endpoint never lose one.
//!
//! - **Closed** (healthy): every outcome is recorded; `failure_threshold` consecutive
//!   failures open the breaker.
//! - **Open** until `open_until`: claims skip the endpoint's deliveries (they stay pending,
//!   no attempt spent). Once `open_until` has passed the endpoint is *half-open*: the one
//!   node that claims it (an endpoint is served by one node at a time) sends one delivery at
//!   a time. A success closes the breaker ([`HealthTransition::Recovered`]); a failure opens
//!   it again for a cool-down twice as long (up to `cooldown_max`).
//! - **Disabled**: `410 Gone` at once, or failing continuously (no success in between) for
//!   `disable_after`. The endpoint's `enabled` flag is cleared too (new notifications skip
//!   it) and its pending deliveries are held back until it is enabled again, which resets
//!   its health.
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

use crate::model::Endpoint;
pub use crate::ops_outbox::OpsTarget;
use crate::Result;
use crate::UnixMillis;

/// The breaker's state as stored (`closed`, `open`, `disabled`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BreakerState {
    #[default]
    Closed,
    Open,
    Disabled,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::Disabled => "disabled",
        }
    }

    pub fn parse(s: &str) -> Option<BreakerState> {
        Some(match s {
            "closed" => BreakerState::Closed,
            "open" => BreakerState::Open,
            "disabled" => BreakerState::Disabled,
            _ => return None,
        })
    }
}

/// An endpoint's health as stored with it (and shown by the API as `health`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EndpointHealth {
    pub state: BreakerState,
    /// Failed attempts since the last success.
    pub consecutive_failures: u32,
    /// The first failure of the current run of failures (`None` after a success).
    pub failing_since: Option<UnixMillis>,
    pub last_success_at: Option<UnixMillis>,
    pub last_failure_at: Option<UnixMillis>,
    /// While open: when the breaker lets one probe through.
    pub open_until: Option<UnixMillis>,
    /// How many times the breaker opened in the current run of failures (the cool-down
    /// doubles with each).
    pub times_opened: u32,
    /// Why the endpoint was disabled (`disabled` only).
    pub disabled_reason: Option<String>,
    /// When the state last changed.
    pub changed_at: Option<UnixMillis>,
}

/// What an attempt told about its endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HealthSignal {
    /// Acknowledged.
    Success,
    /// Not acknowledged (error status, bad ack, timeout, refused connection).
    Failure,
    /// `410 Gone`: the receiver says the endpoint no longer exists.
    Gone,
}

/// A change of state worth telling the app's operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthTransition {
    /// Closed -> open (`endpoint.breaker_opened`).
    Opened,
    /// A half-open probe failed: open again for a longer cool-down (not notified).
    Reopened,
    /// A probe succeeded: open -> closed (`endpoint.recovered`).
    Recovered,
    /// `endpoint.disabled`.
    Disabled,
}

impl HealthTransition {
    /// The operational notification's event type; `None` for transitions not notified.
    pub fn event_type(self) -> Option<&'static str> {
        match self {
            HealthTransition::Opened => Some("endpoint.breaker_opened"),
            HealthTransition::Reopened => None,
            HealthTransition::Recovered => Some("endpoint.recovered"),
            HealthTransition::Disabled => Some("endpoint.disabled"),
        }
    }
}

/// The breaker's settings (`herald serve --breaker-*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerPolicy {
    /// Consecutive failures that open the breaker.
    pub failure_threshold: u32,
    /// The first cool-down; each reopening doubles it.
    pub cooldown: Duration,
    pub cooldown_max: Duration,
    /// Failing continuously for this long disables the endpoint.
    pub disable_after: Duration,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        BreakerPolicy {
            failure_threshold: 10,
            cooldown: Duration::from_secs(60),
            cooldown_max: Duration::from_secs(3_600),
            disable_after: Duration::from_secs(5 * 24 * 3_600),
        }
    }
}

impl BreakerPolicy {
    /// The cool-down after the breaker opened for the `n`th time in a run (1-based).
    pub fn cooldown_for(&self, n: u32) -> Duration {
        let shift = n.saturating_sub(1).min(30);
        self.cooldown
            .saturating_mul(1u32 << shift)
            .min(self.cooldown_max.max(self.cooldown))
    }
}

impl EndpointHealth {
    /// True while the endpoint must not be sent to at `now` (open and cooling down, or
    /// disabled). Claims skip such endpoints.
    pub fn blocks(&self, now: UnixMillis) -> bool {
        match self.state {
            BreakerState::Closed => false,
            BreakerState::Open => self.open_until.is_some_and(|t| t > now),
            BreakerState::Disabled => true,
        }
    }

    /// Open with its cool-down over: one delivery at a time probes the endpoint.
    pub fn half_open(&self, now: UnixMillis) -> bool {
        self.state == BreakerState::Open && !self.blocks(now)
    }

    /// Applies an attempt's outcome at `now` and says which transition it caused. Outcomes
    /// reported for a disabled endpoint (attempts that were in flight) change nothing;
    /// failures while open and cooling down (also in flight when it opened) are counted.
    pub fn record(
        &mut self,
        signal: HealthSignal,
        now: UnixMillis,
        policy: &BreakerPolicy,
    ) -> Option<HealthTransition> {
        if self.state == BreakerState::Disabled {
            return None;
        }
        if signal == HealthSignal::Success {
            let was_open = self.state == BreakerState::Open;
            *self = EndpointHealth {
                last_success_at: Some(now),
                last_failure_at: self.last_failure_at,
                changed_at: if was_open { Some(now) } else { self.changed_at },
                ..EndpointHealth::default()
            };
            return was_open.then_some(HealthTransition::Recovered);
        }
        self.last_failure_at = Some(now);
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        let since = *self.failing_since.get_or_insert(now);
        let disable = if signal == HealthSignal::Gone {
            Some("the endpoint answered 410 Gone".to_string())
        } else if now.saturating_sub(since) >= policy.disable_after {
            Some(format!(
                "failing continuously for {} without a success",
                human_duration(now.saturating_sub(since))
            ))
        } else {
            None
        };
        if let Some(reason) = disable {
            self.state = BreakerState::Disabled;
            self.open_until = None;
            self.disabled_reason = Some(reason);
            self.changed_at = Some(now);
            return Some(HealthTransition::Disabled);
        }
        match self.state {
            BreakerState::Closed if self.consecutive_failures >= policy.failure_threshold => {
                self.state = BreakerState::Open;
                self.times_opened = 1;
                self.open_until = Some(now + policy.cooldown_for(1));
                self.changed_at = Some(now);
                Some(HealthTransition::Opened)
            }
            BreakerState::Open if !self.blocks(now) => {
                self.times_opened = self.times_opened.saturating_add(1);
                self.open_until = Some(now + policy.cooldown_for(self.times_opened));
                self.changed_at = Some(now);
                Some(HealthTransition::Reopened)
            }
            _ => None,
        }
    }
}

/// `5d`, `3h`, `10m`, `42s`: the largest whole unit.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 86_400 && s.is_multiple_of(86_400) {
        format!("{}d", s / 86_400)
    } else if s >= 3_600 && s.is_multiple_of(3_600) {
        format!("{}h", s / 3_600)
    } else if s >= 60 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// Attempts' effect on their endpoint's health, to be recorded
/// ([`crate::Queue::record_health`]): their signals in the order they came (an engine sends
/// what came while its previous report was being recorded in one report).
#[derive(Clone, Debug)]
pub struct HealthReport {
    pub endpoint_id: String,
    pub signals: Vec<HealthSignal>,
    pub now: UnixMillis,
    pub policy: BreakerPolicy,
}

impl HealthReport {
    /// Applies the report's signals to `health` in order; the last transition they caused.
    pub fn apply(&self, health: &mut EndpointHealth) -> Option<HealthTransition> {
        let mut last = None;
        for s in &self.signals {
            if let Some(t) = health.record(*s, self.now, &self.policy) {
                last = Some(t);
            }
        }
        last
    }
}

/// What [`crate::Queue::record_health`] did.
#[derive(Clone, Debug)]
pub struct HealthRecorded {
    /// The endpoint with its health afterwards.
    pub endpoint: Endpoint,
    pub transition: Option<HealthTransition>,
    /// The id of the ops notification committed with the transition (see
    /// [`crate::ops_outbox`]): `None` when there was no notified transition, the app has no
    /// ops target, or the endpoint is an ops target's own.
    pub ops_notification: Option<String>,
}

/// One retention batch: notifications created before `before` whose deliveries all ended
/// (succeeded, failed or canceled) before `before` are deleted with their deliveries and
/// attempts, at most `limit` notifications.
#[derive(Clone, Copy, Debug)]
pub struct PurgeParams {
    pub before: UnixMillis,
    pub limit: u32,
}

/// What a purge removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Purged {
    pub notifications: u64,
    pub deliveries: u64,
    pub attempts: u64,
}

impl Purged {
    pub fn add(&mut self, other: Purged) {
        self.notifications += other.notifications;
        self.deliveries += other.deliveries;
        self.attempts += other.attempts;
    }
}

/// Operational reads and writes: apps' ops notification targets, the backlog (metrics) and
/// retention.
#[async_trait]
pub trait OpsStore: Send + Sync + 'static {
    /// Sets (or with `None` clears) the app's ops target, in one transaction: the first set
    /// creates its internal app and endpoint (see [`crate::ops_outbox`]), a later one
    /// changes their URL, secret and retry policy in place (pending ops notifications go to
    /// the new URL), and clearing deletes them, canceling pending ops notifications.
    /// `Ok(false)` when there is no such live app, or it is an internal app.
    async fn set_app_ops(
        &self,
        app_id: &str,
        ops: Option<OpsTarget>,
        now: UnixMillis,
    ) -> Result<bool>;
    /// The app's ops target; `Err(NotFound("app"))` when there is no such live app.
    async fn get_app_ops(&self, app_id: &str) -> Result<Option<OpsTarget>>;
    /// How many deliveries are pending.
    async fn pending_count(&self) -> Result<u64>;
    /// Endpoints (not deleted) per breaker state.
    async fn breaker_counts(&self) -> Result<Vec<(BreakerState, u64)>>;
    /// Deletes one batch of finished work (see [`PurgeParams`]) in one short transaction.
    /// Pending work is never touched. Purged notifications are gone: reads answer `None`.
    async fn purge_finished(&self, params: PurgeParams) -> Result<Purged>;
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: UnixMillis = UnixMillis::new(1_700_000_000_000);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn breaker_opens_after_the_threshold_and_a_probe_success_closes_it() {
        let p = BreakerPolicy {
            failure_threshold: 3,
            ..BreakerPolicy::default()
        };
        let mut h = EndpointHealth::default();
        assert_eq!(h.record(HealthSignal::Failure, T, &p), None);
        assert_eq!(h.record(HealthSignal::Failure, T + ms(1), &p), None);
        assert_eq!(
            h.record(HealthSignal::Failure, T + ms(2), &p),
            Some(HealthTransition::Opened)
        );
        assert!(h.blocks(T + ms(2)));
        assert_eq!(h.open_until, Some(T + ms(2) + ms(60_000)));
        assert!(h.half_open(T + ms(2) + ms(60_000)));
        // The probe fails: open again, twice as long.
        assert_eq!(
            h.record(HealthSignal::Failure, T + ms(70_000), &p),
            Some(HealthTransition::Reopened)
        );
        assert_eq!(h.open_until, Some(T + ms(70_000) + ms(120_000)));
        assert_eq!(
            h.record(HealthSignal::Success, T + ms(200_000), &p),
            Some(HealthTransition::Recovered)
        );
        assert_eq!(h.state, BreakerState::Closed);
        assert_eq!(h.consecutive_failures, 0);
        assert_eq!(h.failing_since, None);
    }

    #[test]
    fn gone_disables_at_once_and_long_failure_disables_later() {
        let p = BreakerPolicy::default();
        let mut h = EndpointHealth::default();
        assert_eq!(
            h.record(HealthSignal::Gone, T, &p),
            Some(HealthTransition::Disabled)
        );
        assert!(h.blocks(T + p.disable_after * 10));
        assert_eq!(h.record(HealthSignal::Success, T + ms(1), &p), None);

        let p = BreakerPolicy {
            failure_threshold: 2,
            ..p
        };
        let mut h = EndpointHealth::default();
        h.record(HealthSignal::Failure, T, &p);
        assert_eq!(
            h.record(HealthSignal::Failure, T + p.disable_after - ms(1), &p),
            Some(HealthTransition::Opened)
        );
        h.open_until = Some(T); // cool-down over
        assert_eq!(
            h.record(HealthSignal::Failure, T + p.disable_after, &p),
            Some(HealthTransition::Disabled)
        );
        assert_eq!(
            h.disabled_reason.as_deref(),
            Some("failing continuously for 5d without a success")
        );
    }

    #[test]
    fn cooldown_doubles_up_to_its_maximum() {
        let p = BreakerPolicy::default();
        assert_eq!(p.cooldown_for(1), ms(60_000));
        assert_eq!(p.cooldown_for(2), ms(120_000));
        assert_eq!(p.cooldown_for(7), ms(3_600_000));
        assert_eq!(p.cooldown_for(1000), ms(3_600_000));
    }
}
