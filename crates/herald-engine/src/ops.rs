//! Operational notifications: when an endpoint's breaker opens, it recovers, or it is
//! disabled, the app's ops URL (if it set one) receives a Standard Webhooks notification
//! (`endpoint.breaker_opened`, `endpoint.recovered`, `endpoint.disabled`), signed with the
//! app's ops secret by the same encoder and sent by the same attempter, under the same
//! target policy, as any delivery.
//!
//! Exactly one node sends each (the store returns a transition to the one report that
//! caused it). They are best effort, not durable: tried up to [`TRIES`] times over about
//! three minutes, then logged and dropped; a restart in between loses the rest of the tries.
//! The endpoint's health in the API is the durable record.
use std::sync::Arc;
use std::time::Duration;

use herald_protocols::{AckRule, Profile, RetryPolicy, Verdict};
use herald_store::{
    AppCtx, ClaimedDelivery, Endpoint, EndpointHealth, EventType, HealthTransition, Millis,
    OpsTarget,
};
use serde::Serialize;

use crate::attempt::Attempter;
use crate::metrics::EngineMetrics;

/// Tries per ops notification, and the pause before each retry.
pub const TRIES: usize = 5;
const PAUSES: [Duration; TRIES - 1] = [
    Duration::from_secs(1),
    Duration::from_secs(5),
    Duration::from_secs(30),
    Duration::from_secs(120),
];

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
pub fn body(event_type: &str, endpoint: &Endpoint, now: Millis) -> String {
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

fn rfc3339(ms: Millis) -> String {
    let secs = ms.div_euclid(1000);
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

/// Sends the ops notification for `transition` of `endpoint` to `target` in the background.
pub(crate) fn spawn_send(
    attempter: Arc<dyn Attempter>,
    metrics: Arc<EngineMetrics>,
    target: OpsTarget,
    transition: HealthTransition,
    endpoint: Endpoint,
    now: Millis,
) {
    let Some(event_type) = transition.event_type() else {
        return;
    };
    let app = AppCtx {
        id: endpoint.app_id.clone(),
        profile: Profile::StandardWebhooks,
        credentials: target.credentials,
        retry: RetryPolicy::standard(),
        ack: AckRule::Http2xx,
    };
    let id = ulid::Ulid::new();
    let job = ClaimedDelivery {
        seq: 0,
        id: format!("ops_{id}"),
        notify_id: format!("msg_{id}"),
        notification_id: format!("ops_{id}"),
        app: Arc::new(app.clone()),
        endpoint: None,
        url: target.url.clone(),
        event_type: EventType::internal(event_type),
        payload: Arc::from(body(event_type, &endpoint, now)),
        created_at: now,
        attempts: 0,
        next_at: now,
        order_key: None,
    };
    tokio::spawn(async move {
        for try_no in 0..TRIES {
            let result = attempter.attempt(&job, &app, None).await;
            if result.verdict == Verdict::Acked {
                metrics.ops_notifications.inc(&[event_type, "sent"]);
                tracing::info!(event_type, endpoint = %endpoint.id, app = %endpoint.app_id,
                    "ops notification sent");
                return;
            }
            tracing::warn!(event_type, endpoint = %endpoint.id, app = %endpoint.app_id,
                status = ?result.attempt.status_code, error_class = ?result.attempt.error_class,
                try_no = try_no + 1, "ops notification not acknowledged");
            if let Some(pause) = PAUSES.get(try_no) {
                tokio::time::sleep(*pause).await;
            }
        }
        metrics.ops_notifications.inc(&[event_type, "failed"]);
        tracing::error!(event_type, endpoint = %endpoint.id, app = %endpoint.app_id,
            "ops notification dropped after {TRIES} tries");
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn a_password_in_the_endpoint_url_is_masked() {
        assert_eq!(
            mask_password("https://u:secret@h.example/x"),
            "https://u:****@h.example/x"
        );
        assert_eq!(mask_password("https://h.example/x"), "https://h.example/x");
    }
}
