//! `/v1/sandbox/*` (admin token): create a payment, read it, refund it, set its failure
//! drills, and the provider-style signed trade query.
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use herald_protocols::Profile;
use serde::Deserialize;
use serde_json::{json, Value};

use super::model::{Drills, Payment, RefundStatus, TradeState};
use super::trade::RefundRequest;
use super::{money, qr, wire, Sandbox};
use herald_engine::now_ms;
use herald_http::error::ApiError;
use herald_http::extract::JsonBody;
use herald_http::fields as views;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreatePayment {
    app_id: String,
    out_trade_no: String,
    /// Decimal string in the currency's unit, e.g. "88.00".
    #[serde(default)]
    total_amount: Option<String>,
    /// Minor units, e.g. 8800.
    #[serde(default)]
    amount: Option<i64>,
    #[serde(default)]
    currency: Option<String>,
    subject: String,
    notify_url: String,
    #[serde(default)]
    return_url: Option<String>,
    #[serde(default)]
    drills: Option<Drills>,
}

fn default_currency(profile: Profile) -> &'static str {
    match profile {
        Profile::Alipay
        | Profile::WechatPayV2
        | Profile::WechatPayV3
        | Profile::WechatPayLegacy
        | Profile::Dialect => "CNY",
        Profile::Stripe | Profile::StandardWebhooks => "USD",
    }
}

/// `out_trade_no`: 1 to 64 ASCII letters, digits, `_` or `-` (32 for WeChat Pay).
pub(super) fn check_out_trade_no(profile: Profile, s: &str) -> Result<String, ApiError> {
    let max = match profile {
        Profile::WechatPayV2 | Profile::WechatPayV3 | Profile::WechatPayLegacy => 32,
        _ => 64,
    };
    if s.is_empty()
        || s.len() > max
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(ApiError::Invalid(format!(
            "out_trade_no must be 1 to {max} ASCII letters, digits, '_' or '-' for {}",
            profile.name()
        )));
    }
    Ok(s.to_string())
}

fn check_subject(s: &str) -> Result<String, ApiError> {
    let s = views::bounded_text("subject", s, 256)?;
    if s.chars().any(char::is_control) {
        return Err(ApiError::Invalid(
            "subject must not contain control characters".into(),
        ));
    }
    Ok(s)
}

pub(super) fn check_drills(d: Drills) -> Result<Drills, ApiError> {
    if d.duplicate > Drills::MAX_DUPLICATES {
        return Err(ApiError::Invalid(format!(
            "drills.duplicate is at most {}",
            Drills::MAX_DUPLICATES
        )));
    }
    Ok(d)
}

/// The JSON view of a payment.
pub fn view(sandbox: &Sandbox, p: &Payment) -> Value {
    json!({
        "payment_id": p.id,
        "app_id": p.app_id,
        "profile": p.profile.name(),
        "out_trade_no": p.out_trade_no,
        "trade_no": p.trade_no,
        "subject": p.subject,
        "amount": p.amount,
        "total_amount": money::format(p.amount, &p.currency),
        "currency": p.currency,
        "status": p.state.as_str(),
        "notify_url": p.notify_url,
        "return_url": p.return_url,
        "payment_url": sandbox.payment_url(&p.id),
        "created_at": views::rfc3339(p.created_at),
        "expires_at": (p.state == TradeState::WaitBuyerPay).then(|| views::rfc3339(p.expires_at)),
        "paid_at": p.paid_at.map(views::rfc3339),
        "closed_at": p.closed_at.map(views::rfc3339),
        "close_reason": p.close_reason,
        "finished_at": p.finished_at.map(views::rfc3339),
        "seller_id": p.seller_id.clone(),
        "buyer": p.buyer.as_ref().map(|b| match p.profile {
            Profile::Alipay => json!({"buyer_id": b.buyer_id, "buyer_logon_id": b.buyer_logon_id}),
            Profile::WechatPayV2 | Profile::WechatPayV3 | Profile::WechatPayLegacy => {
                json!({"openid": b.openid})
            }
            Profile::Stripe | Profile::StandardWebhooks | Profile::Dialect => Value::Null,
        }),
        "refunded_amount": p.refunded(),
        "refundable_amount": if p.state == TradeState::TradeSuccess { p.amount - p.refunded() } else { 0 },
        "refunds": p.refunds.iter().map(|r| json!({
            "out_refund_no": r.out_refund_no,
            "refund_id": r.refund_id,
            "amount": r.amount,
            "refunded_total": r.refunded_total,
            "status": r.status.as_str(),
            "at": views::rfc3339(r.at),
        })).collect::<Vec<_>>(),
        "drills": p.drills,
        "events": p.events.iter().map(|e| json!({
            "seq": e.seq,
            "kind": e.kind,
            "at": views::rfc3339(e.at),
            "event_type": e.event_type,
            "notify_id": e.notify_id,
            "held": e.held,
            "note": e.note,
            "notifications": e.notifications.iter().map(|n| json!({
                "role": n.role,
                "notification_id": n.notification_id,
                "delivery_id": n.delivery_id,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

/// Terms two creations must share to be the same payment.
fn same_terms(a: &Payment, b: &Payment) -> bool {
    a.amount == b.amount
        && a.currency == b.currency
        && a.subject == b.subject
        && a.notify_url == b.notify_url
        && a.return_url == b.return_url
}

/// `POST /v1/sandbox/payments`: creates a payment waiting for the buyer (201), or returns
/// the existing one for a repeated `out_trade_no` with identical terms (200); different
/// terms are 409. The response carries `payment_url` (the checkout page) and `qr_code_svg`
/// (a QR code of that URL).
pub async fn create(
    State(sandbox): State<Sandbox>,
    JsonBody(req): JsonBody<CreatePayment>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let app = sandbox.app(&req.app_id).await?;
    let profile = app.profile;
    let out_trade_no = check_out_trade_no(profile, &req.out_trade_no)?;
    let currency = match &req.currency {
        Some(c) => money::parse_currency(c).map_err(ApiError::Invalid)?,
        None => default_currency(profile).to_string(),
    };
    if profile == Profile::Alipay && currency != "CNY" {
        return Err(ApiError::Invalid(
            "alipay trades are in CNY (total_amount is yuan)".into(),
        ));
    }
    let amount = match (&req.total_amount, req.amount) {
        (Some(s), None) => money::parse_decimal("total_amount", s, &currency),
        (None, Some(n)) => money::check_range("amount", n),
        _ => Err(
            "give the amount once: total_amount (a decimal string such as \"88.00\") or amount (minor units such as 8800)"
                .to_string(),
        ),
    }
    .map_err(ApiError::Invalid)?;
    let subject = check_subject(&req.subject)?;
    let notify_url = views::parse_url("notify_url", &req.notify_url)?;
    let return_url = req
        .return_url
        .as_deref()
        .map(|u| views::parse_url("return_url", u))
        .transpose()?;
    let drills = check_drills(req.drills.unwrap_or_default())?;
    let now = now_ms();
    let payment = Payment {
        id: format!("pay_{}", ulid::Ulid::new()),
        app_id: app.id.clone(),
        profile,
        out_trade_no,
        subject,
        amount,
        currency,
        notify_url,
        return_url,
        trade_no: wire::new_trade_no(profile, now),
        seller_id: wire::seller_id(&app.id, &app.credentials),
        state: TradeState::WaitBuyerPay,
        created_at: now,
        expires_at: now + sandbox.inner.unpaid_timeout,
        paid_at: None,
        buyer: None,
        finished_at: None,
        closed_at: None,
        close_reason: None,
        refunds: vec![],
        drills,
        events: vec![],
    };
    let existing = sandbox
        .store()
        .find_sandbox_payment(&app.id, &payment.out_trade_no)
        .await?;
    let (status, stored) = match existing {
        Some(row) => {
            let old = Payment::from_row(&row)
                .map_err(|e| ApiError::Internal(format!("stored sandbox payment: {e}")))?;
            if !same_terms(&old, &payment) {
                return Err(ApiError::Conflict(format!(
                    "out_trade_no {:?} already names a payment of this app with different terms",
                    payment.out_trade_no
                )));
            }
            (StatusCode::OK, old)
        }
        None => {
            sandbox.insert(&payment).await?;
            tracing::info!(payment = %payment.id, app = %app.id, "sandbox payment created");
            (StatusCode::CREATED, payment)
        }
    };
    // The providers' API paths find the app and the trade through this index.
    sandbox.index_payment(&app, &stored).await?;
    let mut body = view(&sandbox, &stored);
    body["qr_code_svg"] = json!(qr::svg(&sandbox.payment_url(&stored.id)));
    Ok((status, Json(body)))
}

/// `GET /v1/sandbox/payments/{payment_id}`: state, amounts, refunds, drills, and each event
/// with the notifications it enqueued.
pub async fn get(
    State(sandbox): State<Sandbox>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (p, _) = sandbox.load(&id).await?;
    Ok(Json(view(&sandbox, &p)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefundBody {
    /// Minor units.
    #[serde(default)]
    amount: Option<i64>,
    /// Decimal string, e.g. "10.00".
    #[serde(default)]
    refund_amount: Option<String>,
    /// The merchant's refund number (Alipay `out_biz_no`, WeChat `out_refund_no`); repeated
    /// with the same amount it returns the earlier refund. Generated when absent.
    #[serde(default)]
    out_refund_no: Option<String>,
    /// How the refund ends: `SUCCESS` (default), or for wechatpay-v3 `ABNORMAL` / `CLOSED`
    /// (notified as `REFUND.ABNORMAL` / `REFUND.CLOSED`; nothing is refunded).
    #[serde(default)]
    status: Option<RefundStatus>,
}

/// `POST /v1/sandbox/payments/{payment_id}/refund` `{"amount"}` or `{"refund_amount"}`:
/// refunds part or all of a paid trade (201) and enqueues the refund notification after the
/// payment's (same order key). More than is left is 422; an unpaid or closed trade is 409.
/// WeChat Pay v2's refund notification carries the refund encrypted in `req_info`.
pub async fn refund(
    State(sandbox): State<Sandbox>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<RefundBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let (p, _) = sandbox.load(&id).await?;
    let amount = match (&req.refund_amount, req.amount) {
        (Some(s), None) => money::parse_decimal("refund_amount", s, &p.currency),
        (None, Some(n)) => money::check_range("amount", n),
        _ => Err(
            "give the refund once: amount (minor units) or refund_amount (a decimal string)"
                .to_string(),
        ),
    }
    .map_err(ApiError::Invalid)?;
    let out_refund_no = req
        .out_refund_no
        .as_deref()
        .map(|s| check_out_trade_no(p.profile, s))
        .transpose()
        .map_err(|_| {
            ApiError::Invalid(
                "out_refund_no must be 1 to 64 ASCII letters, digits, '_' or '-'".into(),
            )
        })?;
    let status = req.status.unwrap_or_default();
    if status != RefundStatus::Success && p.profile != Profile::WechatPayV3 {
        return Err(ApiError::Invalid(format!(
            "status {:?} is for wechatpay-v3 refunds (REFUND.ABNORMAL, REFUND.CLOSED); {} only reports successful refunds",
            status.as_str(),
            p.profile.name()
        )));
    }
    let (p, i, created) = sandbox
        .refund(
            &id,
            RefundRequest {
                amount,
                out_refund_no,
                status,
                notify_url: None,
            },
        )
        .await?;
    let r = &p.refunds[i];
    let event = p
        .events
        .iter()
        .rev()
        .find(|e| e.kind == super::model::EventKind::Refund)
        .filter(|_| created);
    let notification = event
        .and_then(|e| e.notifications.first())
        .map(|n| json!({"notification_id": n.notification_id, "delivery_id": n.delivery_id}));
    let mut body = json!({
        "payment_id": p.id,
        "out_trade_no": p.out_trade_no,
        "out_refund_no": r.out_refund_no,
        "refund_id": r.refund_id,
        "amount": r.amount,
        "refund_amount": money::format(r.amount, &p.currency),
        "refunded_total": r.refunded_total,
        "refund_status": r.status.as_str(),
        "status": p.state.as_str(),
        "notification": notification,
    });
    if let Some(note) = event.and_then(|e| e.note.clone()) {
        body["note"] = json!(note);
    }
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(body)))
}

/// `POST /v1/sandbox/payments/{payment_id}/drills` `{"duplicate": n, "out_of_order": bool,
/// "bad_signature": bool, "tampered_amount": bool, "trade_finished": bool}` (also accepted as `"drills"` at
/// creation) replaces the payment's drills; they apply to the notifications enqueued from
/// then on:
///
/// - `duplicate`: n extra copies of each notification with the same notify id (at most 10).
/// - `out_of_order`: the payment notification is held back until the first refund and then
///   delivered after the refund's (turning the drill off releases it at once).
/// - `bad_signature`: one extra copy of each notification signed with a key the receiver does
///   not trust (Herald signs at send time, so "corrupted" means "signed by someone else").
/// - `tampered_amount`: one extra copy with every amount raised by 1.00, correctly signed
///   with the app's own key under a notify id of its own: the signature verifies, and the
///   merchant's amount check must refuse it.
/// - `trade_finished`: the refund window ends now (`TRADE_FINISHED`, notified by Alipay; the
///   trade can no longer be refunded); set before the payment, right after it.
///
/// The drill copies have one attempt and no order key, so rejecting them never delays
/// the real notifications.
pub async fn drills(
    State(sandbox): State<Sandbox>,
    Path(id): Path<String>,
    JsonBody(d): JsonBody<Drills>,
) -> Result<Json<Value>, ApiError> {
    let d = check_drills(d)?;
    let p = sandbox.set_drills(&id, d).await?;
    Ok(Json(view(&sandbox, &p)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TradeQuery {
    app_id: String,
}

/// `GET /v1/sandbox/trades/{out_trade_no}?app_id=...`: the trade as the provider's query
/// API returns it, signed where that provider signs API responses: alipay
/// `{"alipay_trade_query_response": {...}, "sign": ...}` (RSA2 over the response object's
/// raw text), wechatpay-v2 `orderquery` XML with `sign`, wechatpay-v3 JSON with
/// `Wechatpay-Timestamp/Nonce/Signature/Serial` headers. Stripe and Standard Webhooks do not
/// sign API responses: their JSON is unsigned.
pub async fn trade_query(
    State(sandbox): State<Sandbox>,
    Path(out_trade_no): Path<String>,
    query: Result<Query<TradeQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| {
        ApiError::Invalid(format!("give the app as ?app_id=...: {}", e.body_text()))
    })?;
    let app = sandbox.app(&q.app_id).await?;
    let row = sandbox
        .store()
        .find_sandbox_payment(&app.id, &out_trade_no)
        .await?
        .ok_or(ApiError::NotFound("trade"))?;
    let p = Payment::from_row(&row)
        .map_err(|e| ApiError::Internal(format!("stored sandbox payment: {e}")))?;
    let resp =
        wire::trade_query(&p, &app.credentials, now_ms()).map_err(|e| ApiError::internal(&e))?;
    let mut out = (StatusCode::OK, resp.body).into_response();
    let headers = out.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(resp.content_type),
    );
    for (k, v) in resp.headers {
        if let (Ok(k), Ok(v)) = (HeaderName::try_from(k), HeaderValue::try_from(v)) {
            headers.insert(k, v);
        }
    }
    Ok(out)
}
