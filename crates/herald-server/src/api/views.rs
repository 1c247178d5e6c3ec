//! JSON views of domain objects (typed, so the OpenAPI document describes exactly what is
//! sent), and validation of the inputs shared by several handlers (URLs, retry policies, ack
//! rules). Parsing happens here, at the edge; the store trusts what it gets.
use herald_engine::TargetPolicy;
use herald_protocols::{AckRule, RetryPolicy};
use herald_store::{
    ApiKey, App, Attempt, Delivery, DeliveryDetail, DeliveryStatus, Endpoint, EndpointUrl,
    NotificationDetail, NotificationSummary, NotifyUrl,
};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::error::ApiError;
pub use herald_http::fields::{bounded_text, parse_rfc3339, rfc3339};
use herald_store::fields::check_url;

/// A delivery target the target policy can accept: [`parse_url`], then a literal address
/// the policy refuses (loopback, private, link-local, metadata, ...) or a `localhost` name is
/// refused here, unless private targets are allowed. Other names resolve at delivery time,
/// where the engine checks the addresses they resolve to.
pub fn parse_target(
    policy: &TargetPolicy,
    field: &'static str,
    s: &str,
) -> Result<EndpointUrl, ApiError> {
    let url = check_url(field, s)?;
    permit_target(policy, field, &url)?;
    Ok(EndpointUrl::parse_field(field, s.to_string())?)
}

/// A [`NotifyUrl`] (already parsed as the body was read) the target policy permits; the
/// policy's rule as in [`parse_target`].
pub fn permit_notify_url(policy: &TargetPolicy, url: &NotifyUrl) -> Result<(), ApiError> {
    let parsed = url::Url::parse(url.as_str())
        .map_err(|e| ApiError::Invalid(format!("{} is not a valid URL: {e}", NotifyUrl::FIELD)))?;
    permit_target(policy, NotifyUrl::FIELD, &parsed)
}

/// An [`EndpointUrl`] (already parsed) the target policy permits, returned as it is; the
/// policy's rule as in [`parse_target`].
pub fn permit_endpoint_url(
    policy: &TargetPolicy,
    url: EndpointUrl,
) -> Result<EndpointUrl, ApiError> {
    let parsed = url::Url::parse(url.as_str()).map_err(|e| {
        ApiError::Invalid(format!("{} is not a valid URL: {e}", EndpointUrl::FIELD))
    })?;
    permit_target(policy, EndpointUrl::FIELD, &parsed)?;
    Ok(url)
}

fn permit_target(policy: &TargetPolicy, field: &str, url: &url::Url) -> Result<(), ApiError> {
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
            Ok(())
        }
        _ => Ok(()),
    }
}

/// A URL as shown in responses: a password in it is replaced by `****`. A URL without an
/// `@` has no user information, so no password, and is not parsed (every notification's
/// answer shows each delivery's URL: the parse was about 3% of the API's time in the e2e
/// bench).
pub fn masked_url(s: &str) -> String {
    if !s.contains('@') {
        return s.to_string();
    }
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
    if !url.contains('@') {
        return text.to_string();
    }
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

/// An app. `credentials` is the public part of the app's credentials (its public key, app
/// id ...), or, in the response that created or rotated them, the secrets shown once.
#[derive(Serialize, ToSchema)]
pub struct AppView {
    pub id: String,
    pub name: String,
    /// `standard-webhooks`, `alipay`, `wechatpay-v2`, `wechatpay-v3` or `stripe`.
    pub profile: String,
    /// The app's retry policy, when it overrides the profile's.
    pub retry: Option<Value>,
    /// The app's ack rule, when it overrides the profile's.
    pub ack: Option<String>,
    pub credentials: Value,
    pub created_at: String,
}

pub fn app(app: &App, credentials: Value) -> AppView {
    AppView {
        id: app.id.clone(),
        name: app.name.clone(),
        profile: app.profile.name().to_string(),
        retry: app
            .retry
            .as_ref()
            .and_then(|r| serde_json::to_value(r).ok()),
        ack: app.ack.as_ref().map(|a| a.to_string()),
        credentials,
        created_at: rfc3339(app.created_at),
    }
}

#[derive(Serialize, ToSchema)]
pub struct EndpointView {
    pub id: String,
    pub app_id: String,
    /// A password in it is shown as `****`.
    pub url: String,
    pub event_types: Option<Vec<String>>,
    pub retry: Option<Value>,
    pub ack: Option<String>,
    pub max_in_flight: u32,
    pub ordered: bool,
    pub enabled: bool,
    pub timeout_ms: Option<u32>,
    pub created_at: String,
    pub updated_at: String,
    /// The endpoint's health: its breaker (`closed`, `open` until `open_until`, or
    /// `disabled` with a reason), its current run of failures, its last success and failure.
    pub health: Value,
}

pub fn endpoint(e: &Endpoint) -> EndpointView {
    EndpointView {
        id: e.id.clone(),
        app_id: e.app_id.clone(),
        url: masked_url(&e.url),
        event_types: e.event_types.clone(),
        retry: e.retry.as_ref().and_then(|r| serde_json::to_value(r).ok()),
        ack: e.ack.as_ref().map(|a| a.to_string()),
        max_in_flight: e.max_in_flight,
        ordered: e.ordered,
        enabled: e.enabled,
        timeout_ms: e.timeout_ms,
        created_at: rfc3339(e.created_at),
        updated_at: rfc3339(e.updated_at),
        health: health(&e.health),
    }
}

/// An endpoint's health: its breaker (`closed`, `open` until `open_until`, or `disabled`
/// with a reason), its current run of failures and its last success and failure.
pub fn health(h: &herald_store::EndpointHealth) -> Value {
    let at = |t: Option<herald_store::UnixMillis>| t.map(rfc3339);
    serde_json::json!({
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

/// A delivery as an accepted notification lists it.
#[derive(Serialize, ToSchema)]
pub struct DeliverySummaryView {
    pub id: String,
    /// Stable across attempts: the receiver's dedupe key.
    pub notify_id: String,
    pub url: String,
    #[schema(value_type = String, example = "pending")]
    pub status: DeliveryStatus,
}

pub fn delivery_summary(d: &Delivery) -> DeliverySummaryView {
    DeliverySummaryView {
        id: d.id.clone(),
        notify_id: d.notify_id.clone(),
        url: masked_url(&d.url),
        status: d.status,
    }
}

/// A delivery as a notification list shows it: its state and attempt count, no attempts.
#[derive(Serialize, ToSchema)]
pub struct DeliveryBriefView {
    pub id: String,
    pub notify_id: String,
    pub endpoint_id: Option<String>,
    pub url: String,
    #[schema(value_type = String, example = "failed")]
    pub status: DeliveryStatus,
    pub attempt_count: u32,
    pub next_attempt_at: Option<String>,
}

pub fn delivery_brief(d: &Delivery) -> DeliveryBriefView {
    DeliveryBriefView {
        id: d.id.clone(),
        notify_id: d.notify_id.clone(),
        endpoint_id: d.endpoint_id.clone(),
        url: masked_url(&d.url),
        status: d.status,
        attempt_count: d.attempts,
        next_attempt_at: d.next_attempt_at.map(rfc3339),
    }
}

/// One HTTP try of a delivery.
#[derive(Serialize, ToSchema)]
pub struct AttemptView {
    /// 1 for the first attempt.
    pub n: u32,
    pub at: String,
    pub duration_ms: u32,
    pub status_code: Option<u16>,
    /// The first 4 KiB of the response body.
    pub response: Option<String>,
    /// `connect`, `timeout`, `tls`, `bad-ack`, `http-status`, `blocked-target`, `request`,
    /// `body`, or null when acknowledged.
    pub error_class: Option<String>,
    pub error: Option<String>,
}

pub fn attempt(a: &Attempt, url: &str) -> AttemptView {
    let mask = |t: &Option<String>| t.as_deref().map(|t| mask_password_in(t, url));
    AttemptView {
        n: a.n,
        at: rfc3339(a.at),
        duration_ms: a.duration_ms,
        status_code: a.status_code,
        response: a.response.clone(),
        error_class: a.error_class.clone(),
        error: mask(&a.error),
    }
}

/// A delivery with its latest attempts.
#[derive(Serialize, ToSchema)]
pub struct DeliveryView {
    pub id: String,
    pub notification_id: String,
    pub notify_id: String,
    pub endpoint_id: Option<String>,
    pub url: String,
    #[schema(value_type = String, example = "succeeded")]
    pub status: DeliveryStatus,
    pub attempt_count: u32,
    pub next_attempt_at: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    /// The latest 20 at most, oldest of them first; `attempt_count` says how many there are
    /// in all, and `/v1/deliveries/{id}/attempts` pages through every one.
    pub attempts: Vec<AttemptView>,
    pub attempts_truncated: bool,
}

pub fn delivery(d: &DeliveryDetail) -> DeliveryView {
    let x = &d.delivery;
    DeliveryView {
        id: x.id.clone(),
        notification_id: x.notification_id.clone(),
        notify_id: x.notify_id.clone(),
        endpoint_id: x.endpoint_id.clone(),
        url: masked_url(&x.url),
        status: x.status,
        attempt_count: x.attempts,
        next_attempt_at: x.next_attempt_at.map(rfc3339),
        created_at: rfc3339(x.created_at),
        updated_at: rfc3339(x.updated_at),
        attempts: d.attempts.iter().map(|a| attempt(a, &x.url)).collect(),
        attempts_truncated: (d.attempts.len() as u64) < u64::from(x.attempts),
    }
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

/// A notification with its payload and its deliveries.
#[derive(Serialize, ToSchema)]
pub struct NotificationView {
    pub id: String,
    pub app_id: String,
    pub event_type: String,
    /// The producer's JSON object, as sent.
    pub payload: Value,
    pub notify_url: Option<String>,
    pub idempotency_key: Option<String>,
    pub order_key: Option<String>,
    pub created_at: String,
    #[schema(value_type = String, example = "pending")]
    pub status: DeliveryStatus,
    pub deliveries: Vec<DeliveryView>,
}

pub fn notification(n: &NotificationDetail) -> NotificationView {
    let x = &n.notification;
    let payload: Value =
        serde_json::from_str(&x.payload).unwrap_or(Value::String(x.payload.clone()));
    NotificationView {
        id: x.id.clone(),
        app_id: x.app_id.clone(),
        event_type: x.event_type.to_string(),
        payload,
        notify_url: x.notify_url.as_deref().map(masked_url),
        idempotency_key: x.idempotency_key.as_deref().map(str::to_string),
        order_key: x.order_key.as_deref().map(str::to_string),
        created_at: rfc3339(x.created_at),
        status: overall_status(
            &n.deliveries
                .iter()
                .map(|d| d.delivery.status)
                .collect::<Vec<_>>(),
        ),
        deliveries: n.deliveries.iter().map(delivery).collect(),
    }
}

/// A notification as a list shows it: no payload, deliveries without attempts.
#[derive(Serialize, ToSchema)]
pub struct NotificationSummaryView {
    pub id: String,
    pub app_id: String,
    pub event_type: String,
    pub notify_url: Option<String>,
    pub idempotency_key: Option<String>,
    pub order_key: Option<String>,
    pub created_at: String,
    #[schema(value_type = String, example = "failed")]
    pub status: DeliveryStatus,
    pub deliveries: Vec<DeliveryBriefView>,
}

pub fn notification_summary(n: &NotificationSummary) -> NotificationSummaryView {
    NotificationSummaryView {
        id: n.id.clone(),
        app_id: n.app_id.clone(),
        event_type: n.event_type.to_string(),
        notify_url: n.notify_url.as_deref().map(masked_url),
        idempotency_key: n.idempotency_key.as_deref().map(str::to_string),
        order_key: n.order_key.as_deref().map(str::to_string),
        created_at: rfc3339(n.created_at),
        status: overall_status(&n.deliveries.iter().map(|d| d.status).collect::<Vec<_>>()),
        deliveries: n.deliveries.iter().map(delivery_brief).collect(),
    }
}

/// An accepted notification (`202`): committed, with the deliveries it made.
#[derive(Serialize, ToSchema)]
pub struct AcceptedView {
    pub id: String,
    pub event_type: String,
    pub created_at: String,
    pub deliveries: Vec<DeliverySummaryView>,
}

/// An app's API key as listed: never the key itself.
#[derive(Serialize, ToSchema)]
pub struct ApiKeyView {
    pub id: String,
    pub app_id: String,
    /// The key's first characters (`hk_...`), to tell keys apart.
    pub prefix: String,
    pub created_at: String,
    /// To about a minute; null if never used.
    pub last_used_at: Option<String>,
}

pub fn api_key(k: &ApiKey) -> ApiKeyView {
    ApiKeyView {
        id: k.id.clone(),
        app_id: k.app_id.clone(),
        prefix: k.prefix.clone(),
        created_at: rfc3339(k.created_at),
        last_used_at: k.last_used_at.map(rfc3339),
    }
}

/// A new API key: the only response that shows `key`.
#[derive(Serialize, ToSchema)]
pub struct CreatedApiKeyView {
    #[serde(flatten)]
    pub api_key: ApiKeyView,
    /// The key (`hk_...`), shown once: only its SHA-256 is stored.
    pub key: String,
}

/// One page of a list; pass `next_cursor` back as `cursor` for the next page (null on the
/// last).
#[derive(Serialize, ToSchema)]
pub struct Page<T> {
    pub data: Vec<T>,
    pub next_cursor: Option<String>,
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
            masked_url("https://hooks.example.com/x?to=ops@example.com"),
            "https://hooks.example.com/x?to=ops@example.com"
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
