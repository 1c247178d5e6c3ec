//! Operational notifications as an outbox: what every driver commits, in the same
//! transaction as the endpoint-health transition that causes it, so a crash can neither
//! lose one nor make two.
//!
//! An app's ops target (`PUT /v1/apps/{app}/ops`) is stored as an *internal app* of its own
//! (marked `internal = 'ops'`, hidden from app lists) with one Standard Webhooks endpoint,
//! the ops URL, as a source's destination is. The internal app's credentials are the ops
//! secret and its retry policy the target's (the Standard Webhooks schedule by default).
//! When [`crate::Queue::record_health`] records a transition that has an event type
//! ([`HealthTransition::event_type`]) for an endpoint whose app has an ops target, it
//! stores [`ops_notification`] on the internal app in the same transaction; from then on it
//! is an ordinary notification, delivered by the engine with retries, leases and takeover
//! by another node. The internal app's own endpoint never produces ops notifications (it
//! has no ops target, and drivers never give an internal app one), so a failing ops URL
//! cannot notify about itself.
//!
//! This module holds the parts every driver shares: the body, and the shape of the
//! internal app, its endpoint and each notification.
use herald_protocols::{Credentials, Profile, RetryPolicy};
use serde::Serialize;

use crate::fields::{EndpointUrl, OrderKey};
use crate::health::{EndpointHealth, HealthTransition};
use crate::model::{Endpoint, NewApp, NewEndpoint, NewNotification};
use crate::UnixMillis;

/// The event types ops notifications carry.
pub const OPS_EVENT_TYPES: [&str; 3] = [
    "endpoint.breaker_opened",
    "endpoint.recovered",
    "endpoint.disabled",
];

/// The `apps.internal` mark of an app holding an ops target.
pub const INTERNAL_OPS: &str = "ops";
/// The `apps.internal` mark of a source's app (the inbound gateway).
pub const INTERNAL_SOURCE: &str = "source";

/// Where an app's operational notifications go, the Standard Webhooks secret(s) they are
/// signed with (sealed at rest like an app's credentials), and their retry policy (`None`:
/// the Standard Webhooks schedule).
#[derive(Clone, Debug, PartialEq)]
pub struct OpsTarget {
    pub url: String,
    pub credentials: Credentials,
    pub retry: Option<RetryPolicy>,
}

/// The internal app holding `owner_app_id`'s ops target.
pub fn ops_app(owner_app_id: &str, target: &OpsTarget, now: UnixMillis) -> NewApp {
    NewApp {
        name: format!("ops notifications of {owner_app_id}"),
        profile: Profile::StandardWebhooks,
        retry: target.retry.clone(),
        ack: None,
        credentials: target.credentials.clone(),
        now,
    }
}

/// The internal app's one endpoint: the ops URL, one attempt at a time per endpoint it
/// reports on (see [`ops_notification`]'s order key). The URL is the app's stored ops
/// target, checked by the API when it was set.
pub fn ops_endpoint(ops_app_id: &str, url: &str, now: UnixMillis) -> NewEndpoint {
    NewEndpoint {
        app_id: ops_app_id.to_string(),
        url: EndpointUrl::from_stored(url.to_string()),
        event_types: None,
        retry: None,
        ack: None,
        max_in_flight: 4,
        ordered: false,
        enabled: true,
        timeout_ms: None,
        now,
    }
}

/// The notification, on the internal app `ops_app_id`, telling that `endpoint` (with its
/// health afterwards) went through `transition` at `now`; `None` for transitions that are
/// not notified. Its order key is the endpoint's id, so one endpoint's notifications arrive
/// in the order they happened (opened before recovered).
pub fn ops_notification(
    ops_app_id: &str,
    transition: HealthTransition,
    endpoint: &Endpoint,
    now: UnixMillis,
) -> Option<NewNotification> {
    let event_type = transition.event_type()?;
    Some(NewNotification {
        app_id: ops_app_id.to_string(),
        event_type: crate::EventType::internal(event_type),
        payload: ops_body(event_type, endpoint, now),
        notify_url: None,
        idempotency_key: None,
        order_key: Some(OrderKey::from_stored(endpoint.id.clone())),
        now,
    })
}

#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    timestamp: String,
    data: Data<'a>,
}

#[derive(Serialize)]
struct Data<'a> {
    app_id: &'a str,
    endpoint_id: &'a str,
    url: String,
    health: &'a EndpointHealth,
}

/// The JSON body of an ops notification (the Standard Webhooks `type`/`timestamp`/`data`
/// shape). A password in the endpoint URL is masked.
pub fn ops_body(event_type: &str, endpoint: &Endpoint, now: UnixMillis) -> String {
    let body = Body {
        kind: event_type,
        timestamp: rfc3339(now),
        data: Data {
            app_id: &endpoint.app_id,
            endpoint_id: &endpoint.id,
            url: mask_password(&endpoint.url),
            health: &endpoint.health,
        },
    };
    serde_json::to_string(&body).unwrap_or_else(|_| "{}".into())
}

fn mask_password(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("****"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

fn rfc3339(ms: UnixMillis) -> String {
    let secs = ms.to_seconds().get();
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(UnixMillis::new(0)), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UnixMillis::new(1_700_000_000_000)),
            "2023-11-14T22:13:20Z"
        );
        assert_eq!(
            rfc3339(UnixMillis::new(951_782_400_000)),
            "2000-02-29T00:00:00Z"
        );
    }

    #[test]
    fn a_password_in_the_endpoint_url_is_masked() {
        assert_eq!(
            mask_password("https://u:secret@h.example/x"),
            "https://u:****@h.example/x"
        );
        assert_eq!(mask_password("https://h.example/x"), "https://h.example/x");
    }

    #[test]
    fn only_notified_transitions_make_a_notification_ordered_per_endpoint() {
        let ep = Endpoint {
            id: "ep_1".into(),
            app_id: "app_1".into(),
            url: "https://u:pw@h.example/x".parse().unwrap(),
            event_types: None,
            retry: None,
            ack: None,
            max_in_flight: 8,
            ordered: false,
            enabled: true,
            timeout_ms: None,
            created_at: UnixMillis::new(0),
            updated_at: UnixMillis::new(0),
            health: EndpointHealth::default(),
        };
        assert!(ops_notification(
            "app_ops",
            HealthTransition::Reopened,
            &ep,
            UnixMillis::new(0)
        )
        .is_none());
        let n =
            ops_notification("app_ops", HealthTransition::Opened, &ep, UnixMillis::new(0)).unwrap();
        assert_eq!(n.app_id, "app_ops");
        assert_eq!(n.event_type, "endpoint.breaker_opened");
        assert_eq!(n.order_key.as_deref(), Some("ep_1"));
        let body: serde_json::Value = serde_json::from_str(&n.payload).unwrap();
        assert_eq!(body["type"], "endpoint.breaker_opened");
        assert_eq!(body["timestamp"], "1970-01-01T00:00:00Z");
        assert_eq!(body["data"]["endpoint_id"], "ep_1");
        assert_eq!(body["data"]["app_id"], "app_1");
        assert_eq!(body["data"]["url"], "https://u:****@h.example/x");
        assert_eq!(body["data"]["health"]["state"], "closed");
    }
}
