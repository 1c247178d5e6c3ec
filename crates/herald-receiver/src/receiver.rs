//! Verification of one raw request for one merchant: the profile's signature and timestamp
//! checks (through `herald-protocols`), then the merchant's own ids.
use std::sync::Arc;

use herald_protocols::receive::{IncomingRequest, ReceiveError, VerifiedNotification};
use herald_protocols::{Profile, ReceiverKeys};

use crate::{RawRequest, Rejection};

/// A profile, the keys that verify it, and the ids the merchant expects.
pub struct Receiver {
    profile: Profile,
    keys: ReceiverKeys,
    app_id: Option<String>,
    merchant_id: Option<String>,
    clock: Arc<dyn Fn() -> i64 + Send + Sync>,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("profile", &self.profile)
            .field("keys", &self.keys)
            .field("app_id", &self.app_id)
            .field("merchant_id", &self.merchant_id)
            .finish_non_exhaustive()
    }
}

fn system_now() -> i64 {
    herald_protocols::UnixSeconds::now().get()
}

impl Receiver {
    /// A receiver for `profile` verifying with `keys`, on the system clock, accepting any
    /// app and merchant id until told otherwise.
    pub fn new(profile: Profile, keys: ReceiverKeys) -> Self {
        Receiver {
            profile,
            keys,
            app_id: None,
            merchant_id: None,
            clock: Arc::new(system_now),
        }
    }

    /// The notification's app id (`app_id` / `appid`) must equal `id`; otherwise it is
    /// [`Rejection::ForeignApp`]. A notification of a wire that always carries it (Alipay,
    /// WeChat Pay v2, WeChat Pay v3 transactions) is refused when it lacks it; other wires
    /// (Stripe, Standard Webhooks, v3 refunds) are checked only when they carry one.
    pub fn expect_app_id(mut self, id: impl Into<String>) -> Self {
        self.app_id = Some(id.into());
        self
    }

    /// The notification's merchant id (`seller_id` / `mch_id` / `mchid` / Stripe `account`)
    /// must equal `id`; otherwise [`Rejection::ForeignMerchant`]. Alipay and WeChat Pay (v2,
    /// v3) notifications always carry it and are refused without it; Stripe and Standard
    /// Webhooks are checked only when they carry one.
    pub fn expect_merchant_id(mut self, id: impl Into<String>) -> Self {
        self.merchant_id = Some(id.into());
        self
    }

    /// The clock timestamps are checked against, unix seconds (for tests).
    pub fn with_clock(mut self, now: impl Fn() -> i64 + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(now);
        self
    }

    /// The profile this receiver speaks.
    pub fn profile(&self) -> Profile {
        self.profile
    }

    /// The platform keys notifications (and trade query answers) are verified with.
    pub fn keys(&self) -> &ReceiverKeys {
        &self.keys
    }

    /// The reply that acknowledges a notification (a dialect's configured ack text).
    pub fn ack_reply(&self) -> herald_protocols::receive::Reply {
        self.profile.ack_reply_for(&self.keys)
    }

    /// The reply that makes the provider send again.
    pub fn failure_reply(&self, reason: &str) -> herald_protocols::receive::Reply {
        self.profile.failure_reply_for(&self.keys, reason)
    }

    /// Verifies the signature and timestamp, decodes, and checks the app and merchant ids.
    /// Failures are logged at `warn` (without secrets).
    pub fn verify(&self, req: &RawRequest) -> Result<VerifiedNotification, Rejection> {
        let incoming = IncomingRequest {
            method: &req.method,
            headers: &req.headers,
            query: &req.query,
            body: &req.body,
            now: (self.clock)(),
        };
        let n = self.profile.verify(&self.keys, &incoming).map_err(|e| {
            tracing::warn!(profile = self.profile.name(), error = %e, "notification refused: it does not verify");
            Rejection::Invalid(e)
        })?;
        let foreign = |expected: &Option<String>, got: &Option<String>| match (expected, got) {
            (Some(want), Some(got)) if want != got => Some(got.clone()),
            _ => None,
        };
        // A wire that always carries the id cannot lack it when genuine: refuse, rather
        // than wave the notification through unchecked.
        let (app_field, merchant_field) = carried_ids(&n);
        for (expected, got, field) in [
            (&self.app_id, &n.app_id, app_field),
            (&self.merchant_id, &n.merchant_id, merchant_field),
        ] {
            if let (Some(_), None, Some(field)) = (expected, got, field) {
                tracing::warn!(profile = %n.profile, notify_id = %n.notify_id, field,
                    "notification refused: it lacks the id this receiver expects");
                return Err(Rejection::Invalid(ReceiveError::Missing(format!(
                    "{field}: {} notifications always carry it and this receiver expects one",
                    n.profile
                ))));
            }
        }
        if let Some(got) = foreign(&self.app_id, &n.app_id) {
            tracing::warn!(profile = %n.profile, notify_id = %n.notify_id, app_id = %got,
                "notification refused: signed for another app (misrouted, or a possible forgery)");
            return Err(Rejection::ForeignApp { got });
        }
        if let Some(got) = foreign(&self.merchant_id, &n.merchant_id) {
            tracing::warn!(profile = %n.profile, notify_id = %n.notify_id, merchant_id = %got,
                "notification refused: signed for another merchant (misrouted, or a possible forgery)");
            return Err(Rejection::ForeignMerchant { got });
        }
        Ok(n)
    }
}

/// The app-id and merchant-id fields the notification's wire always carries, by name (the
/// profile says which: [`herald_protocols::Profile::carried_ids`]).
fn carried_ids(n: &VerifiedNotification) -> (Option<&'static str>, Option<&'static str>) {
    let ids = n.profile.carried_ids(n);
    (ids.app_id, ids.merchant_id)
}
