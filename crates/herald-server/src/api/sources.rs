//! The inbound gateway: `/v1/sources` (admin) and `/in/{source_id}` (the providers').
//!
//! A source puts Herald in front of a merchant's notify handler. The provider posts to the
//! source's ingest URL; Herald verifies the request with the source's profile and keys
//! (the profile registry's, as `herald listen` does), refuses a bad signature or a foreign
//! app/merchant id with the provider's own failure reply, stores the notification (a
//! notification of the source's internal app, idempotency key = the provider's notify id,
//! order key = `out_trade_no`) and only after that commit answers the provider's exact
//! acknowledgement. The engine then forwards it to the source's destination (the internal
//! app's one endpoint) signed with the source's `whsec_` secret, retried on the source's
//! schedule and one at a time per `out_trade_no`. A copy with a notify id already stored is
//! acknowledged and creates nothing, so it is never forwarded twice.
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use herald_protocols::receive::{IncomingRequest, Reply, VerifiedNotification};
use herald_protocols::standard_webhooks::{self as sw, Keys};
use herald_protocols::{Credentials, Profile};
use herald_store::{
    EventType, IdempotencyKey, ListSources, NewApp, NewEndpoint, NewNotification, NewSource,
    OrderKey, Source, SourceFormat, SourceKeys, StoreError,
};
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::{ApiError, ErrorBody};
use super::extract::JsonBody;
use super::{page_limit, views, ApiState};
use crate::clock::now_ms;
use herald_engine::raw::RAW_EVENT_TYPE;

/// Most verification keys a source holds (rotation overlap).
const MAX_KEYS: usize = 10;
/// Longest provider notify id or `out_trade_no` stored as a key.
const MAX_KEY_LEN: usize = 256;

/// A source: how to verify what the provider posts, and where to forward it.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSource {
    name: String,
    profile: String,
    #[serde(default)]
    keys: Vec<String>,
    #[serde(default)]
    decrypt_key: Option<String>,
    /// For the `dialect` profile: a preset name (`epay`) or the dialect itself as an object
    /// (the fields of a `herald verify --dialect` file); default `epay`.
    #[serde(default)]
    dialect: Option<Value>,
    #[serde(default)]
    expect_app_id: Option<String>,
    #[serde(default)]
    expect_merchant_id: Option<String>,
    destination: Destination,
    /// The forwards' schedule (a policy name or delays in seconds); default the profile's.
    #[serde(default)]
    retry: Option<Value>,
}

/// Where a source forwards: a URL in the merchant's app, and the forwarding format
/// (`standard-webhooks`, the default, or `raw`).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Destination {
    url: String,
    #[serde(default)]
    format: Option<String>,
}

/// The keys a source verifies with: the profile's, and for the `dialect` profile the
/// source's own dialect (a preset name or its JSON form) when it has one.
fn source_receiver_keys(
    profile: Profile,
    keys: &[String],
    decrypt_key: Option<&str>,
    dialect: Option<&Value>,
) -> Result<herald_protocols::ReceiverKeys, String> {
    let Some(dialect) = dialect.filter(|_| profile == Profile::Dialect) else {
        return profile
            .receiver_keys(keys, decrypt_key)
            .map_err(|e| format!("keys: {e}"));
    };
    let d = match dialect {
        Value::String(name) => {
            herald_protocols::dialect::Dialect::preset(name).ok_or_else(|| {
                format!(
                    "dialect: no preset named {name:?} (presets: {})",
                    herald_protocols::dialect::PRESETS.join(", ")
                )
            })?
        }
        other => {
            let d: herald_protocols::dialect::Dialect =
                serde_json::from_value(other.clone()).map_err(|e| format!("dialect: {e}"))?;
            d.check().map_err(|e| format!("dialect: {e}"))?;
            d
        }
    };
    herald_protocols::dialect::receiver_keys(d, keys)
        .map(|k| herald_protocols::ReceiverKeys::Dialect(Box::new(k)))
        .map_err(|e| format!("keys: {e}"))
}

fn optional_id(field: &str, v: Option<&str>) -> Result<Option<String>, ApiError> {
    v.map(|s| views::bounded_text(field, s, MAX_KEY_LEN))
        .transpose()
}

#[utoipa::path(post, path = "/v1/sources", tag = "sources",
    request_body = CreateSource,
    responses(
        (status = 201, description = "Created: `id`, `ingest_url` and the forwards' `whsec_` secret, shown in this response only"),
        (status = 422, description = "Invalid (the keys are checked; a key is never quoted)", body = ErrorBody),
    ))]
pub async fn create(
    State(state): State<ApiState>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<CreateSource>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let name = views::bounded_text("name", &req.name, 256)?;
    let profile: Profile = req
        .profile
        .parse()
        .map_err(|e: herald_protocols::ProfileError| ApiError::Invalid(e.to_string()))?;
    if req.keys.is_empty() {
        return Err(ApiError::Invalid(format!(
            "keys is empty: give what verifies {} notifications (see herald listen --key)",
            profile.name()
        )));
    }
    if req.keys.len() > MAX_KEYS {
        return Err(ApiError::Invalid(format!(
            "keys has more than {MAX_KEYS} entries"
        )));
    }
    let keys: Vec<String> = req.keys.iter().map(|k| k.trim().to_string()).collect();
    let decrypt_key = req.decrypt_key.as_deref().map(|k| k.trim().to_string());
    // The profiles' key loaders also take a file name (for the CLI's --key): the API never
    // lets a request make the server read one of its files.
    let names_a_file = |k: &str| {
        let path = |s: &str| !s.is_empty() && std::path::Path::new(s.trim()).exists();
        path(k) || k.split_once('=').is_some_and(|(_, rest)| path(rest))
    };
    if keys.iter().any(|k| names_a_file(k)) || decrypt_key.as_deref().is_some_and(names_a_file) {
        return Err(ApiError::Invalid(
            "keys must hold the keys themselves (PEM, base64, secrets), not file names".into(),
        ));
    }
    if req.dialect.is_some() && profile != Profile::Dialect {
        return Err(ApiError::Invalid(format!(
            "dialect applies to the dialect profile only, not {}",
            profile.name()
        )));
    }
    // Refused now rather than at the first notification; the message never quotes a key.
    source_receiver_keys(profile, &keys, decrypt_key.as_deref(), req.dialect.as_ref())
        .map_err(|e| ApiError::Invalid(e.to_string()))?;
    let format = match req.destination.format.as_deref() {
        None => SourceFormat::StandardWebhooks,
        Some(f) => SourceFormat::parse(f).ok_or_else(|| {
            ApiError::Invalid(format!(
                "destination.format must be standard-webhooks or raw, not {f:?}"
            ))
        })?,
    };
    let url = views::parse_target(
        &state.target_policy,
        "destination.url",
        &req.destination.url,
    )?;
    let retry = match &req.retry {
        Some(v) => views::parse_retry(v)?,
        None => profile.default_retry(),
    };
    let secret = sw::generate_hmac_secret();
    let now = now_ms();
    let source = state
        .store
        .create_source(NewSource {
            name: name.clone(),
            profile: profile.name().to_string(),
            keys: SourceKeys {
                keys,
                decrypt_key,
                dialect: req.dialect.clone(),
            },
            expect_app_id: optional_id("expect_app_id", req.expect_app_id.as_deref())?,
            expect_merchant_id: optional_id(
                "expect_merchant_id",
                req.expect_merchant_id.as_deref(),
            )?,
            format,
            app: NewApp {
                name: format!("source: {name}"),
                profile: Profile::StandardWebhooks,
                retry: None,
                ack: None,
                credentials: Credentials::StandardWebhooks(Keys::single(secret.clone())),
                now,
            },
            destination: NewEndpoint {
                app_id: String::new(),
                url,
                event_types: None,
                retry: Some(retry),
                ack: None,
                max_in_flight: state.default_max_in_flight,
                ordered: false,
                enabled: true,
                timeout_ms: None,
                now,
            },
        })
        .await?;
    tracing::info!(source = %source.id, profile = %source.profile, "source created");
    let mut body = view(&state, &source, &headers).await?;
    body["secret"] = json!(secret);
    Ok((StatusCode::CREATED, Json(body)))
}

/// `scheme://host` of this request, for the ingest URL a source hands out.
fn base_url(headers: &HeaderMap) -> String {
    let host = headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("127.0.0.1:8080");
    let https = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"));
    format!("{}://{host}", if https { "https" } else { "http" })
}

async fn view(state: &ApiState, s: &Source, headers: &HeaderMap) -> Result<Value, ApiError> {
    let ep = state.store.get_endpoint(&s.app_id, &s.endpoint_id).await?;
    Ok(json!({
        "id": s.id,
        "name": s.name,
        "profile": s.profile,
        "ingest_url": format!("{}/in/{}", base_url(headers), s.id),
        "expect_app_id": s.expect_app_id,
        "expect_merchant_id": s.expect_merchant_id,
        "keys": s.keys.keys.len(),
        "destination": {
            "url": ep.as_ref().map(|e| views::masked_url(&e.url)),
            "format": s.format.as_str(),
            "endpoint_id": s.endpoint_id,
        },
        "retry": ep.as_ref().and_then(|e| e.retry.as_ref()).map(|r| {
            r.delays_ms.iter().map(|d| d / 1000).collect::<Vec<_>>()
        }),
        "app_id": s.app_id,
        "created_at": views::rfc3339(s.created_at),
    }))
}

#[utoipa::path(get, path = "/v1/sources/{id}", tag = "sources",
    params(("id" = String, Path)),
    responses(
        (status = 200, description = "The source (no keys, no secret)"),
        (status = 404, description = "No such source", body = ErrorBody),
    ))]
pub async fn get(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let s = state
        .store
        .get_source(&id)
        .await?
        .ok_or(ApiError::NotFound("source"))?;
    Ok(Json(view(&state, &s, &headers).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Paging {
    #[serde(default)]
    limit: Option<u32>,
    #[serde(default)]
    cursor: Option<String>,
}

#[utoipa::path(get, path = "/v1/sources", tag = "sources",
    params(
        ("limit" = Option<u32>, Query, description = "1 to 100"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
    ),
    responses((status = 200, description = "Live sources, by creation time")))]
pub async fn list(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Query(q): Query<Paging>,
) -> Result<Json<Value>, ApiError> {
    let page = state
        .store
        .list_sources(ListSources {
            limit: page_limit(q.limit, 50)?,
            cursor: q.cursor,
        })
        .await?;
    let mut data = Vec::with_capacity(page.items.len());
    for s in &page.items {
        data.push(view(&state, s, &headers).await?);
    }
    Ok(Json(json!({"data": data, "next_cursor": page.next_cursor})))
}

#[utoipa::path(delete, path = "/v1/sources/{id}", tag = "sources",
    params(("id" = String, Path)),
    responses(
        (status = 204, description = "Deleted; pending forwards are canceled"),
        (status = 404, description = "No such source", body = ErrorBody),
    ))]
pub async fn delete(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if state.store.delete_source(&id, now_ms()).await? {
        tracing::info!(source = %id, "source deleted");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("source"))
    }
}

/// What the source received, newest first, each with its forward's status (the source's
/// app's notifications; `GET /v1/notifications/{id}` and `/v1/deliveries/{id}/attempts`
/// show the rest).
#[utoipa::path(get, path = "/v1/sources/{id}/notifications", tag = "sources",
    params(
        ("id" = String, Path),
        ("status" = Option<String>, Query, description = "Only forwards in this status"),
        ("limit" = Option<u32>, Query, description = "1 to 100"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "What the source received, with each forward's status and attempt count"),
        (status = 404, description = "No such source", body = ErrorBody),
    ))]
pub async fn received(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Query(q): Query<super::notifications::ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let s = state
        .store
        .get_source(&id)
        .await?
        .ok_or(ApiError::NotFound("source"))?;
    let page = state
        .store
        .list_notifications(&s.app_id, q.params()?)
        .await?;
    let data: Vec<Value> = page
        .items
        .iter()
        .map(|n| {
            let mut v =
                serde_json::to_value(views::notification_summary(n)).unwrap_or_else(|_| json!({}));
            v["notify_id"] = json!(n.idempotency_key);
            v["out_trade_no"] = json!(n.order_key);
            v
        })
        .collect();
    Ok(Json(json!({"data": data, "next_cursor": page.next_cursor})))
}

// --- ingest ------------------------------------------------------------------------------

fn reply(r: Reply) -> Response {
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST);
    (status, [("content-type", r.content_type)], r.body).into_response()
}

/// What the notification means for the merchant's order, the same for every profile:
/// `refund` (Alipay `refund_fee`, WeChat Pay v2 `req_info`, an event type naming a refund),
/// `closed` (Alipay `TRADE_CLOSED` without a refund, Stripe `payment_intent.canceled`,
/// `payment.closed`), `payment` (Alipay `TRADE_SUCCESS` / `TRADE_FINISHED`, WeChat Pay
/// `SUCCESS` / `TRANSACTION.SUCCESS`, Stripe `payment_intent.succeeded`,
/// `payment.succeeded`), else `other` (the provider's `status` says more).
fn kind(n: &VerifiedNotification) -> &'static str {
    let event = n.event_type.as_deref().unwrap_or("").to_ascii_lowercase();
    let status = n.status.as_deref().unwrap_or("");
    let refund_fields = ["refund_fee", "req_info", "refund_id", "out_refund_no"]
        .iter()
        .any(|f| n.fields.contains_key(*f));
    if refund_fields || event.contains("refund") {
        "refund"
    } else if status == "TRADE_CLOSED"
        || matches!(event.as_str(), "payment_intent.canceled" | "payment.closed")
    {
        "closed"
    } else if matches!(status, "TRADE_SUCCESS" | "TRADE_FINISHED" | "SUCCESS")
        || matches!(
            event.as_str(),
            "transaction.success" | "payment_intent.succeeded" | "payment.succeeded"
        )
    {
        "payment"
    } else {
        "other"
    }
}

/// The standard-webhooks forward: the decoded notification.
fn decoded(n: &VerifiedNotification) -> Value {
    json!({
        "profile": n.profile,
        "kind": kind(n),
        "notify_id": n.notify_id,
        "app_id": n.app_id,
        "merchant_id": n.merchant_id,
        "out_trade_no": n.out_trade_no,
        "transaction_id": n.transaction_id,
        "amount": n.amount.as_ref().map(|a| a.minor),
        "currency": n.amount.as_ref().map(|a| a.currency.clone()),
        "status": n.status,
        "fields": n.fields,
    })
}

/// Headers never copied onto a raw forward: they describe the hop, or Herald sets them.
const NOT_FORWARDED: [&str; 8] = [
    "host",
    "content-length",
    "connection",
    "transfer-encoding",
    "keep-alive",
    "upgrade",
    "expect",
    "te",
];

/// The raw forward's envelope: the provider's headers and body as received.
fn raw_envelope(headers: &[(String, String)], body: &[u8]) -> Value {
    let kept: Vec<[&str; 2]> = headers
        .iter()
        .filter(|(k, _)| {
            !NOT_FORWARDED.iter().any(|h| k.eq_ignore_ascii_case(h))
                && !k.to_ascii_lowercase().starts_with("webhook-")
        })
        .map(|(k, v)| [k.as_str(), v.as_str()])
        .collect();
    json!({
        "headers": kept,
        "body": base64::engine::general_purpose::STANDARD.encode(body),
    })
}

/// `POST /in/{source_id}`: a provider's notification.
#[utoipa::path(method(get, post), path = "/in/{source_id}", tag = "sources", security(),
    params(("source_id" = String, Path)),
    request_body(content = String, description = "The provider's notification, exactly as it sends it (form, XML or JSON)"),
    responses(
        (status = 200, description = "Verified and stored (or a copy of one already stored): the provider's exact acknowledgement"),
        (status = 400, description = "Refused (bad signature, foreign merchant): the provider's failure reply; nothing stored"),
        (status = 404, description = "No such source"),
        (status = 503, description = "Not stored; the provider will retry"),
    ))]
pub async fn ingest(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let source = match state.store.get_source(&id).await {
        Ok(Some(s)) => s,
        Ok(None) => return ApiError::NotFound("source").into_response(),
        Err(e) => return ApiError::from(e).into_response(),
    };
    let Ok(profile) = source.profile.parse::<Profile>() else {
        tracing::error!(source = %id, profile = %source.profile, "the source's profile is not known to this build");
        return ApiError::Internal("unknown profile".into()).into_response();
    };
    let keys = match source_receiver_keys(
        profile,
        &source.keys.keys,
        source.keys.decrypt_key.as_deref(),
        source.keys.dialect.as_ref(),
    ) {
        Ok(k) => k,
        Err(e) => {
            tracing::error!(source = %id, error = %e, "the source's keys do not load");
            return reply(profile.failure_reply("the gateway cannot verify right now"));
        }
    };
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let req = IncomingRequest {
        method: method.as_str(),
        headers: &headers,
        query: uri.query().unwrap_or(""),
        body: &body,
        now: now_ms().to_seconds().get(),
    };
    let n = match profile.verify(&keys, &req) {
        Ok(n) => n,
        Err(e) => {
            tracing::info!(source = %id, reason = %e, "refused a notification");
            return reply(profile.failure_reply_for(&keys, &e.to_string()));
        }
    };
    let foreign = |what: &str, want: &Option<String>, got: &Option<String>| {
        want.as_ref().filter(|w| got.as_ref() != Some(*w)).map(|_| {
            format!(
                "{what} {:?} is not this merchant's",
                got.as_deref().unwrap_or("")
            )
        })
    };
    if let Some(why) = foreign("app id", &source.expect_app_id, &n.app_id)
        .or_else(|| foreign("merchant id", &source.expect_merchant_id, &n.merchant_id))
    {
        tracing::info!(source = %id, reason = %why, "refused a notification");
        return reply(profile.failure_reply_for(&keys, &why));
    }
    let Ok(notify_id) = n.notify_id.parse::<IdempotencyKey>() else {
        return reply(profile.failure_reply_for(
            &keys,
            "the notify id is empty, too long or has control characters",
        ));
    };
    let order_key = n.out_trade_no.clone().and_then(|k| OrderKey::parse(k).ok());
    let (event_type, payload) = match source.format {
        SourceFormat::StandardWebhooks => (EventType::internal(kind(&n)), decoded(&n)),
        SourceFormat::Raw => (
            EventType::internal(RAW_EVENT_TYPE),
            raw_envelope(&headers, &body),
        ),
    };
    let new = NewNotification {
        app_id: source.app_id.clone(),
        event_type,
        payload: payload.to_string(),
        notify_url: None,
        idempotency_key: Some(notify_id),
        order_key,
        now: now_ms(),
    };
    match state.store.create_notification(new).await {
        Ok(created) => {
            tracing::info!(
                source = %id,
                notify_id = %n.notify_id,
                notification = %created.notification.id,
                copy = created.replayed,
                "received"
            );
            reply(profile.ack_reply_for(&keys))
        }
        // The notify id is stored already, with other bytes (a later copy: a new
        // notify_time, another signature): the first one is what gets forwarded.
        Err(StoreError::Conflict(_)) => {
            tracing::info!(source = %id, notify_id = %n.notify_id, copy = true, "received");
            reply(profile.ack_reply_for(&keys))
        }
        Err(e) => {
            tracing::error!(source = %id, error = %e, "cannot store a verified notification");
            reply(
                profile.failure_reply_for(&keys, "the gateway cannot store it now; send it again"),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn n(status: Option<&str>, event: Option<&str>, fields: &[&str]) -> VerifiedNotification {
        VerifiedNotification {
            profile: Profile::Alipay,
            notify_id: "n".into(),
            app_id: None,
            merchant_id: None,
            out_trade_no: Some("T1".into()),
            transaction_id: None,
            amount: None,
            status: status.map(str::to_string),
            event_type: event.map(str::to_string),
            fields: fields
                .iter()
                .map(|f| (f.to_string(), Value::String("x".into())))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    #[test]
    fn every_profiles_notifications_get_one_kind_vocabulary() {
        let cases = [
            // Alipay: the status, and refund_fee for refunds (also with TRADE_SUCCESS).
            (
                n(Some("TRADE_SUCCESS"), Some("trade_status_sync"), &[]),
                "payment",
            ),
            (
                n(Some("TRADE_FINISHED"), Some("trade_status_sync"), &[]),
                "payment",
            ),
            (
                n(
                    Some("TRADE_SUCCESS"),
                    Some("trade_status_sync"),
                    &["refund_fee"],
                ),
                "refund",
            ),
            (
                n(
                    Some("TRADE_CLOSED"),
                    Some("trade_status_sync"),
                    &["refund_fee"],
                ),
                "refund",
            ),
            (
                n(Some("TRADE_CLOSED"), Some("trade_status_sync"), &[]),
                "closed",
            ),
            (
                n(Some("WAIT_BUYER_PAY"), Some("trade_status_sync"), &[]),
                "other",
            ),
            // WeChat Pay v2 (payments: result_code; refunds: the decrypted req_info) and v3.
            (n(Some("SUCCESS"), None, &[]), "payment"),
            (n(Some("FAIL"), None, &[]), "other"),
            (n(Some("SUCCESS"), None, &["req_info"]), "refund"),
            (
                n(Some("SUCCESS"), Some("TRANSACTION.SUCCESS"), &[]),
                "payment",
            ),
            (n(Some("SUCCESS"), Some("REFUND.SUCCESS"), &[]), "refund"),
            // Stripe and Standard Webhooks event types.
            (n(None, Some("payment_intent.succeeded"), &[]), "payment"),
            (n(None, Some("charge.refunded"), &[]), "refund"),
            (n(None, Some("payment_intent.canceled"), &[]), "closed"),
            (n(None, Some("payment.succeeded"), &[]), "payment"),
            (n(None, Some("refund.succeeded"), &[]), "refund"),
            (n(None, Some("payment.closed"), &[]), "closed"),
            (n(None, Some("customer.created"), &[]), "other"),
        ];
        for (notification, want) in cases {
            assert_eq!(kind(&notification), want, "{notification:?}");
        }
    }

    #[test]
    fn a_raw_envelope_keeps_the_providers_headers_but_not_the_hops_or_webhook_headers() {
        let headers = vec![
            ("content-type".to_string(), "text/xml".to_string()),
            ("host".to_string(), "herald".to_string()),
            ("content-length".to_string(), "9".to_string()),
            ("wechatpay-serial".to_string(), "S1".to_string()),
            ("webhook-signature".to_string(), "v1,forged".to_string()),
        ];
        let env = raw_envelope(&headers, b"<xml></xml>");
        assert_eq!(
            env["headers"],
            json!([["content-type", "text/xml"], ["wechatpay-serial", "S1"]])
        );
        let r = herald_engine::raw::unpack(&env.to_string()).unwrap();
        assert_eq!(r.body, b"<xml></xml>");
        assert_eq!(r.content_type.as_deref(), Some("text/xml"));
    }
}
