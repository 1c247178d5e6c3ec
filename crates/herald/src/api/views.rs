//! JSON views of domain objects, and validation of the inputs shared by several handlers
//! (URLs, retry policies, ack rules). Parsing happens here, at the edge; the store trusts
//! what it gets.
use herald_engine::TargetPolicy;
use herald_protocols::{AckRule, RetryPolicy};
use herald_store::{
    App, Attempt, Delivery, DeliveryDetail, DeliveryStatus, Endpoint, Millis, NotificationDetail,
    NotificationSummary,
};
use serde_json::{json, Value};

use super::error::ApiError;

pub fn rfc3339(ms: Millis) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

pub fn parse_rfc3339(s: &str) -> Result<Millis, ApiError> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as Millis)
        .map_err(|e| ApiError::Invalid(format!("{s:?} is not an RFC 3339 time: {e}")))
}

/// A delivery target: an absolute http(s) URL with a host.
pub fn parse_url(field: &str, s: &str) -> Result<String, ApiError> {
    if s.len() > 2048 {
        return Err(ApiError::Invalid(format!(
            "{field} is longer than 2048 characters"
        )));
    }
    let url = url::Url::parse(s)
        .map_err(|e| ApiError::Invalid(format!("{field} is not a valid URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ApiError::Invalid(format!(
            "{field} must be an http or https URL"
        )));
    }
    if url.host().is_none() {
        return Err(ApiError::Invalid(format!("{field} has no host")));
    }
    Ok(s.to_string())
}

/// A delivery target the target policy can accept: [`parse_url`], then a literal address
/// the policy refuses (loopback, private, link-local, metadata, ...) or a `localhost` name is
/// refused here, unless private targets are allowed. Other names resolve at delivery time,
/// where the engine checks the addresses they resolve to.
pub fn parse_target(policy: &TargetPolicy, field: &str, s: &str) -> Result<String, ApiError> {
    let s = parse_url(field, s)?;
    let url = url::Url::parse(&s)
        .map_err(|e| ApiError::Invalid(format!("{field} is not a valid URL: {e}")))?;
    let refused = |what: String| {
        ApiError::Invalid(format!(
            "{field}: refusing to deliver to {what} (start Herald with --allow-private-targets or an allow-list to permit it)"
        ))
    };
    match url.host() {
        Some(url::Host::Ipv4(ip)) if !policy.permits(ip.into()) => {
            Err(refused(format!("non-public address {ip}")))
        }
        Some(url::Host::Ipv6(ip)) if !policy.permits(ip.into()) => {
            Err(refused(format!("non-public address {ip}")))
        }
        Some(url::Host::Domain(name)) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            let loopback = std::net::IpAddr::from(std::net::Ipv4Addr::LOCALHOST);
            if (name == "localhost" || name.ends_with(".localhost")) && !policy.permits(loopback) {
                return Err(refused(format!("{name}, a loopback name")));
            }
            Ok(s)
        }
        _ => Ok(s),
    }
}

/// A URL as shown in responses: a password in it is replaced by `****`.
pub fn masked_url(s: &str) -> String {
    match url::Url::parse(s) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("****"));
            u.to_string()
        }
        _ => s.to_string(),
    }
}

/// `text` with the password of `url` (as written in it) masked, for messages that quote
/// the URL (transport errors do).
fn mask_password_in(text: &str, url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => match u.password() {
            Some(p) if !p.is_empty() => text.replace(&format!(":{p}@"), ":****@"),
            _ => text.to_string(),
        },
        Err(_) => text.to_string(),
    }
}

pub fn parse_retry(v: &Value) -> Result<RetryPolicy, ApiError> {
    RetryPolicy::from_json(v).map_err(|e| ApiError::Invalid(format!("retry: {e}")))
}

pub fn parse_ack(s: &str) -> Result<AckRule, ApiError> {
    s.parse()
        .map_err(|e: herald_protocols::ack::AckRuleError| ApiError::Invalid(format!("ack: {e}")))
}

pub fn bounded_text(field: &str, s: &str, max: usize) -> Result<String, ApiError> {
    if s.trim().is_empty() {
        return Err(ApiError::Invalid(format!("{field} must not be empty")));
    }
    if s.chars().count() > max {
        return Err(ApiError::Invalid(format!(
            "{field} is longer than {max} characters"
        )));
    }
    Ok(s.to_string())
}

pub fn app(app: &App, credentials: Value) -> Value {
    json!({
        "id": app.id,
        "name": app.name,
        "profile": app.profile.name(),
        "retry": app.retry,
        "ack": app.ack.as_ref().map(|a| a.to_string()),
        "credentials": credentials,
        "created_at": rfc3339(app.created_at),
    })
}

pub fn endpoint(e: &Endpoint) -> Value {
    json!({
        "id": e.id,
        "app_id": e.app_id,
        "url": masked_url(&e.url),
        "event_types": e.event_types,
        "retry": e.retry,
        "ack": e.ack.as_ref().map(|a| a.to_string()),
        "max_in_flight": e.max_in_flight,
        "ordered": e.ordered,
        "enabled": e.enabled,
        "timeout_ms": e.timeout_ms,
        "created_at": rfc3339(e.created_at),
        "updated_at": rfc3339(e.updated_at),
        "health": health(&e.health),
    })
}

/// An endpoint's health: its breaker (`closed`, `open` until `open_until`, or `disabled`
/// with a reason), its current run of failures and its last success and failure.
pub fn health(h: &herald_store::EndpointHealth) -> Value {
    let at = |t: Option<Millis>| t.map(rfc3339);
    json!({
        "state": h.state,
        "consecutive_failures": h.consecutive_failures,
        "failing_since": at(h.failing_since),
        "last_success_at": at(h.last_success_at),
        "last_failure_at": at(h.last_failure_at),
        "open_until": at(h.open_until),
        "times_opened": h.times_opened,
        "disabled_reason": h.disabled_reason,
        "changed_at": at(h.changed_at),
    })
}

pub fn delivery_summary(d: &Delivery) -> Value {
    json!({
        "id": d.id,
        "notify_id": d.notify_id,
        "url": masked_url(&d.url),
        "status": d.status,
    })
}

/// A delivery as a notification list shows it: its state and attempt count, no attempts.
pub fn delivery_brief(d: &Delivery) -> Value {
    json!({
        "id": d.id,
        "notify_id": d.notify_id,
        "endpoint_id": d.endpoint_id,
        "url": masked_url(&d.url),
        "status": d.status,
        "attempt_count": d.attempts,
        "next_attempt_at": d.next_attempt_at.map(rfc3339),
    })
}

pub fn attempt(a: &Attempt, url: &str) -> Value {
    let mask = |t: &Option<String>| t.as_deref().map(|t| mask_password_in(t, url));
    json!({
        "n": a.n,
        "at": rfc3339(a.at),
        "duration_ms": a.duration_ms,
        "status_code": a.status_code,
        "response": a.response,
        "error_class": a.error_class,
        "error": mask(&a.error),
    })
}

pub fn delivery(d: &DeliveryDetail) -> Value {
    let x = &d.delivery;
    json!({
        "id": x.id,
        "notification_id": x.notification_id,
        "notify_id": x.notify_id,
        "endpoint_id": x.endpoint_id,
        "url": masked_url(&x.url),
        "status": x.status,
        "attempt_count": x.attempts,
        "next_attempt_at": x.next_attempt_at.map(rfc3339),
        "created_at": rfc3339(x.created_at),
        "updated_at": rfc3339(x.updated_at),
        // The latest `DETAIL_ATTEMPTS` at most; `attempt_count` says how many in all, and
        // `/v1/deliveries/{id}/attempts` pages through every one.
        "attempts": d.attempts.iter().map(|a| attempt(a, &x.url)).collect::<Vec<_>>(),
        "attempts_truncated": (d.attempts.len() as u64) < u64::from(x.attempts),
    })
}

/// A notification's overall status: `pending` while any delivery is pending, `failed` when
/// any failed, `succeeded` when all succeeded (or there were none to make), else `canceled`.
pub fn overall_status(statuses: &[DeliveryStatus]) -> DeliveryStatus {
    let has = |s| statuses.contains(&s);
    if has(DeliveryStatus::Pending) {
        DeliveryStatus::Pending
    } else if has(DeliveryStatus::Failed) {
        DeliveryStatus::Failed
    } else if statuses.iter().all(|s| *s == DeliveryStatus::Succeeded) {
        DeliveryStatus::Succeeded
    } else {
        DeliveryStatus::Canceled
    }
}

pub fn notification(n: &NotificationDetail) -> Value {
    let x = &n.notification;
    let payload: Value =
        serde_json::from_str(&x.payload).unwrap_or(Value::String(x.payload.clone()));
    json!({
        "id": x.id,
        "app_id": x.app_id,
        "event_type": x.event_type,
        "payload": payload,
        "notify_url": x.notify_url.as_deref().map(masked_url),
        "idempotency_key": x.idempotency_key,
        "order_key": x.order_key,
        "created_at": rfc3339(x.created_at),
        "status": overall_status(&n.deliveries.iter().map(|d| d.delivery.status).collect::<Vec<_>>()),
        "deliveries": n.deliveries.iter().map(delivery).collect::<Vec<_>>(),
    })
}

/// A notification as a list shows it: no payload, deliveries without attempts.
pub fn notification_summary(n: &NotificationSummary) -> Value {
    json!({
        "id": n.id,
        "app_id": n.app_id,
        "event_type": n.event_type,
        "notify_url": n.notify_url.as_deref().map(masked_url),
        "idempotency_key": n.idempotency_key,
        "order_key": n.order_key,
        "created_at": rfc3339(n.created_at),
        "status": overall_status(&n.deliveries.iter().map(|d| d.status).collect::<Vec<_>>()),
        "deliveries": n.deliveries.iter().map(delivery_brief).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked_and_the_rest_is_kept() {
        assert_eq!(
            masked_url("https://user:pw@hooks.example.com/x?y=1"),
            "https://user:****@hooks.example.com/x?y=1"
        );
        assert_eq!(
            masked_url("https://hooks.example.com/x"),
            "https://hooks.example.com/x"
        );
        assert_eq!(
            masked_url("https://user@hooks.example.com/x"),
            "https://user@hooks.example.com/x"
        );
        assert_eq!(
            mask_password_in(
                "error sending request for url (https://u:p%40ss@h/x)",
                "https://u:p%40ss@h/x"
            ),
            "error sending request for url (https://u:****@h/x)"
        );
    }

    #[test]
    fn targets_the_policy_refuses_are_refused_unless_allowed() {
        let strict = TargetPolicy::default();
        for u in [
            "http://127.0.0.1/",
            "http://LOCALHOST/",
            "http://localhost./",
            "http://a.localhost/",
            "http://[::1]/",
            "http://169.254.169.254/",
            "http://0x7f.1/",
        ] {
            assert!(parse_target(&strict, "url", u).is_err(), "{u}");
        }
        for u in [
            "https://8.8.8.8/",
            "https://hooks.example.com/",
            "http://localhost.example.com/",
        ] {
            assert!(parse_target(&strict, "url", u).is_ok(), "{u}");
        }
        let open = TargetPolicy {
            allow_private: true,
            allow: vec![],
        };
        assert!(parse_target(&open, "url", "http://localhost:9000/").is_ok());
        let listed = TargetPolicy {
            allow_private: false,
            allow: vec!["10.0.0.0/8".parse().unwrap()],
        };
        assert!(parse_target(&listed, "url", "http://10.1.2.3/").is_ok());
        assert!(parse_target(&listed, "url", "http://192.168.1.1/").is_err());
    }
}
