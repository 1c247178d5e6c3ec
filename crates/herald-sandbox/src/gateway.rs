//! The providers' own API, as the sandbox answers it: the trade query and the refund request
//! at the paths and in the shapes of Alipay (`/gateway.do`, `alipay.trade.query` /
//! `alipay.trade.refund`), WeChat Pay v2 (`/pay/orderquery`, `/secapi/pay/refund`) and WeChat
//! Pay v3 (`GET /v3/pay/transactions/out-trade-no/{no}`, `.../id/{id}`,
//! `POST /v3/refund/domestic/refunds`), so that a merchant's code using the provider's SDK
//! works against the sandbox by changing only its base URL.
//!
//! Owns: finding the Herald app behind a provider id (an index the sandbox writes into the
//! store's key-value metadata when a payment is created, since apps are not searchable by
//! their provider ids), parsing each provider's request, the merchant-signature check where
//! the app holds what it takes (the WeChat Pay v2 API key), and each provider's answers and
//! errors, signed as the provider signs them. Alipay and WeChat Pay v3 requests are signed
//! with the merchant's own private key, whose public half a Herald app does not hold: those
//! signatures are not checked, and every such reply says so in the
//! `Herald-Sandbox-Request-Signature` header.
//!
//! These routes are public (an SDK cannot send Herald's admin token): they are as exposed as
//! the checkout pages, and reach only trades of apps that have sandbox payments.
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use herald_protocols::{alipay, wechatpay_v2, Credentials, Profile};
use herald_store::App;
use serde_json::{json, Map, Value};

use super::model::{Payment, RefundStatus, TradeState};
use super::trade::RefundRequest;
use super::{money, wire, Sandbox};
use herald_engine::now_ms;
use herald_http::error::ApiError;
use herald_http::fields as views;

/// The reply header that says the merchant's request signature was not checked, and why.
pub const UNVERIFIED_HEADER: &str = "herald-sandbox-request-signature";

fn app_key(profile: Profile, provider_id: &str) -> String {
    format!("sandbox_provider_app:{}:{provider_id}", profile.name())
}

fn trade_no_key(app_id: &str, trade_no: &str) -> String {
    format!("sandbox_trade_no:{app_id}:{trade_no}")
}

/// The provider id an app is found by: Alipay `app_id`, WeChat Pay `mch_id` / `mchid`.
fn provider_id(c: &Credentials) -> Option<&str> {
    match c {
        Credentials::Alipay(a) => Some(&a.app_id),
        Credentials::WechatPayV2(w) => Some(&w.mch_id),
        Credentials::WechatPayV3(w) => Some(&w.mchid),
        _ => None,
    }
}

impl Sandbox {
    /// Records how the provider API finds `p`: its app by provider id, its trade by the
    /// provider's transaction id.
    pub(super) async fn index_payment(&self, app: &App, p: &Payment) -> Result<(), ApiError> {
        let Some(id) = provider_id(&app.credentials) else {
            return Ok(());
        };
        let key = app_key(app.profile, id);
        if self.store().get_meta(&key).await?.as_deref() != Some(app.id.as_str()) {
            self.store().set_meta(&key, &app.id).await?;
        }
        self.store()
            .set_meta(&trade_no_key(&app.id, &p.trade_no), &p.out_trade_no)
            .await?;
        Ok(())
    }

    /// The app of `profile` known by `provider_id`, if a sandbox payment was created for it.
    async fn provider_app(&self, profile: Profile, id: &str) -> Result<Option<App>, ApiError> {
        let Some(app_id) = self.store().get_meta(&app_key(profile, id)).await? else {
            return Ok(None);
        };
        let app = self.store().get_app(&app_id).await?;
        Ok(app.filter(|a| provider_id(&a.credentials) == Some(id)))
    }

    /// The app's trade by the merchant's order number, else by the provider's id.
    async fn find_trade(
        &self,
        app: &App,
        out_trade_no: Option<&str>,
        trade_no: Option<&str>,
    ) -> Result<Option<Payment>, ApiError> {
        let out_trade_no = match (out_trade_no.filter(|s| !s.is_empty()), trade_no) {
            (Some(o), _) => o.to_string(),
            (None, Some(t)) if !t.is_empty() => {
                match self.store().get_meta(&trade_no_key(&app.id, t)).await? {
                    Some(o) => o,
                    None => return Ok(None),
                }
            }
            _ => return Ok(None),
        };
        let Some(row) = self
            .store()
            .find_sandbox_payment(&app.id, &out_trade_no)
            .await?
        else {
            return Ok(None);
        };
        let p = Payment::from_row(&row)
            .map_err(|e| ApiError::Internal(format!("stored sandbox payment: {e}")))?;
        // A trade_no lookup must name this trade.
        if trade_no.is_some_and(|t| !t.is_empty() && t != p.trade_no) {
            return Ok(None);
        }
        Ok(Some(p))
    }
}

fn respond(
    status: StatusCode,
    content_type: &'static str,
    headers: Vec<(String, String)>,
    body: String,
) -> Response {
    let mut out = (status, body).into_response();
    let h = out.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    for (k, v) in headers {
        if let (Ok(k), Ok(v)) = (HeaderName::try_from(k), HeaderValue::try_from(v)) {
            h.insert(k, v);
        }
    }
    out
}

fn unverified(why: &str) -> (String, String) {
    (
        UNVERIFIED_HEADER.to_string(),
        format!("not-verified; {why}"),
    )
}

// ---------------------------------------------------------------------------------------
// Alipay: /gateway.do

const ALIPAY_JSON: &str = "application/json; charset=utf-8";

/// `{"<method>_response": {...}, "sign": "..."}`, the signature over the object's exact text.
fn alipay_signed(a: &alipay::Credentials, key: &str, obj: Map<String, Value>) -> Response {
    let text = Value::Object(obj).to_string();
    match alipay::sign_query_response(a, &text) {
        Ok(sign) => respond(
            StatusCode::OK,
            ALIPAY_JSON,
            vec![unverified(
                "Alipay requests are signed with the merchant's private key, whose public key a Herald app does not hold",
            )],
            format!("{{{}:{text},\"sign\":{}}}", json!(key), json!(sign)),
        ),
        Err(e) => ApiError::Internal(e.to_string()).into_response(),
    }
}

/// A gateway-level error nobody can sign for (no such app): `{"error_response": {...}}`.
fn alipay_error_unsigned(code: &str, msg: &str, sub_code: &str, sub_msg: &str) -> Response {
    respond(
        StatusCode::OK,
        ALIPAY_JSON,
        vec![],
        json!({"error_response": {"code": code, "msg": msg, "sub_code": sub_code, "sub_msg": sub_msg}})
            .to_string(),
    )
}

fn alipay_business_error(sub_code: &str, sub_msg: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("code".into(), json!("40004"));
    m.insert("msg".into(), json!("Business Failed"));
    m.insert("sub_code".into(), json!(sub_code));
    m.insert("sub_msg".into(), json!(sub_msg));
    m
}

/// Every parameter of a gateway request: the query string's, then a form body's (SDKs put
/// the system parameters in the URL and `biz_content` in the body, or all in the URL).
fn alipay_params(query: Option<&str>, headers: &HeaderMap, body: &[u8]) -> Vec<(String, String)> {
    let mut params: Vec<(String, String)> =
        url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if is_form {
        params.extend(url::form_urlencoded::parse(body).into_owned());
    }
    params
}

/// `GET|POST /gateway.do`: `alipay.trade.query` and `alipay.trade.refund`.
pub async fn alipay_gateway(
    State(sandbox): State<Sandbox>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let params = alipay_params(query.as_deref(), &headers, &body);
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let Some(app_id) = get("app_id").filter(|s| !s.is_empty()) else {
        return alipay_error_unsigned(
            "40001",
            "Missing Required Arguments",
            "isv.missing-app-id",
            "缺少AppID参数",
        );
    };
    let app = match sandbox.provider_app(Profile::Alipay, app_id).await {
        Ok(Some(app)) => app,
        Ok(None) => {
            return alipay_error_unsigned(
                "40002",
                "Invalid Arguments",
                "isv.invalid-app-id",
                "无效的AppID参数 (the sandbox knows an app_id once a sandbox payment was created for its app)",
            )
        }
        Err(e) => return e.into_response(),
    };
    let Credentials::Alipay(a) = &app.credentials else {
        return ApiError::Internal("an alipay app without alipay credentials".into())
            .into_response();
    };
    let method = get("method").unwrap_or("");
    let key = format!("{}_response", method.replace('.', "_"));
    let biz: Map<String, Value> = match get("biz_content").map(serde_json::from_str) {
        Some(Ok(Value::Object(m))) => m,
        _ => {
            let mut m = Map::new();
            m.insert("code".into(), json!("40002"));
            m.insert("msg".into(), json!("Invalid Arguments"));
            m.insert("sub_code".into(), json!("isv.invalid-parameter"));
            m.insert("sub_msg".into(), json!("biz_content must be a JSON object"));
            return alipay_signed(a, &key, m);
        }
    };
    let text = |k: &str| biz.get(k).and_then(Value::as_str).map(str::to_string);
    let out_trade_no = text("out_trade_no");
    let trade_no = text("trade_no");
    let trade = match sandbox
        .find_trade(&app, out_trade_no.as_deref(), trade_no.as_deref())
        .await
    {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    match method {
        "alipay.trade.query" => {
            let obj = match &trade {
                Some(p) => wire::alipay_query_response(p),
                None => {
                    let mut m = alipay_business_error("ACQ.TRADE_NOT_EXIST", "交易不存在");
                    for k in [
                        "buyer_pay_amount",
                        "invoice_amount",
                        "point_amount",
                        "receipt_amount",
                    ] {
                        m.insert(k.into(), json!("0.00"));
                    }
                    if let Some(o) = &out_trade_no {
                        m.insert("out_trade_no".into(), json!(o));
                    }
                    m
                }
            };
            alipay_signed(a, &key, obj)
        }
        "alipay.trade.refund" => {
            let Some(p) = trade else {
                return alipay_signed(
                    a,
                    &key,
                    alipay_business_error("ACQ.TRADE_NOT_EXIST", "交易不存在"),
                );
            };
            alipay_signed(a, &key, alipay_refund(&sandbox, p, &biz).await)
        }
        other => {
            let mut m = Map::new();
            m.insert("code".into(), json!("40004"));
            m.insert("msg".into(), json!("Business Failed"));
            m.insert("sub_code".into(), json!("isv.invalid-method"));
            m.insert(
                "sub_msg".into(),
                json!(format!(
                    "不存在的方法名: the sandbox answers alipay.trade.query and alipay.trade.refund, not {other:?}"
                )),
            );
            alipay_signed(a, "error_response", m)
        }
    }
}

/// Why a paid trade cannot be refunded now, as Alipay says it; `None` when it can.
fn alipay_refund_refusal(p: &Payment) -> Option<(&'static str, &'static str)> {
    match p.state {
        TradeState::TradeSuccess => None,
        TradeState::WaitBuyerPay => Some(("ACQ.TRADE_STATUS_ERROR", "交易状态不合法")),
        TradeState::TradeFinished => Some(("ACQ.TRADE_HAS_FINISHED", "交易已完结")),
        TradeState::TradeClosed => Some(("ACQ.TRADE_HAS_CLOSE", "交易已经关闭")),
    }
}

async fn alipay_refund(
    sandbox: &Sandbox,
    p: Payment,
    biz: &Map<String, Value>,
) -> Map<String, Value> {
    let amount = match biz.get("refund_amount") {
        Some(Value::String(s)) => money::parse_decimal("refund_amount", s, &p.currency),
        Some(Value::Number(n)) => {
            money::parse_decimal("refund_amount", &n.to_string(), &p.currency)
        }
        _ => Err("refund_amount is required".to_string()),
    };
    let amount = match amount {
        Ok(a) => a,
        Err(e) => return alipay_business_error("ACQ.INVALID_PARAMETER", &format!("参数无效: {e}")),
    };
    // Alipay's partial refunds are told apart by out_request_no; without one the trade_no
    // stands for the (single) refund.
    let out_request_no = biz
        .get("out_request_no")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or(&p.trade_no)
        .to_string();
    let repeat = p.refunds.iter().find(|r| r.out_refund_no == out_request_no);
    if let Some(r) = repeat {
        if r.amount != amount {
            return alipay_business_error("ACQ.REFUND_AMT_NOT_EQUAL_TOTAL", "退款金额超限");
        }
    } else {
        if let Some((code, msg)) = alipay_refund_refusal(&p) {
            return alipay_business_error(code, msg);
        }
        if amount > p.amount - p.refunded() {
            return alipay_business_error("ACQ.REFUND_AMT_NOT_EQUAL_TOTAL", "退款金额超限");
        }
    }
    if super::api::check_out_trade_no(p.profile, &out_request_no).is_err() {
        return alipay_business_error("ACQ.INVALID_PARAMETER", "参数无效: out_request_no");
    }
    match sandbox
        .refund(
            &p.id,
            RefundRequest {
                amount,
                out_refund_no: Some(out_request_no),
                status: RefundStatus::Success,
                notify_url: None,
            },
        )
        .await
    {
        Ok((p, i, created)) => wire::alipay_refund_response(&p, &p.refunds[i], created),
        Err(e) => {
            alipay_business_error("ACQ.SYSTEM_ERROR", &format!("系统错误: {}", api_message(e)))
        }
    }
}

fn api_message(e: ApiError) -> String {
    match e {
        ApiError::Invalid(m) | ApiError::Conflict(m) | ApiError::Internal(m) => m,
        other => format!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// WeChat Pay v2: /pay/orderquery, /secapi/pay/refund

fn xml_reply(fields: &[(String, String)]) -> Response {
    let mut xml = String::from("<xml>");
    for (k, v) in fields {
        xml.push_str(&format!("<{k}><![CDATA[{}]]></{k}>", v.replace("]]>", "")));
    }
    xml.push_str("</xml>");
    respond(StatusCode::OK, wechatpay_v2::CONTENT_TYPE, vec![], xml)
}

/// A communication-level failure (`return_code` FAIL), unsigned as WeChat's are.
fn v2_fail(msg: &str) -> Response {
    xml_reply(&[
        ("return_code".into(), "FAIL".into()),
        ("return_msg".into(), msg.into()),
    ])
}

/// The request's sign type: its `sign_type` field, else the sign's length (64 hex
/// characters are HMAC-SHA256), else MD5.
fn v2_sign_type(fields: &[(String, String)]) -> Option<wechatpay_v2::SignType> {
    let get = |k: &str| fields.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    match get("sign_type").filter(|s| !s.is_empty()) {
        Some(t) => wechatpay_v2::SignType::parse(t),
        None if get("sign").is_some_and(|s| s.len() == 64) => {
            Some(wechatpay_v2::SignType::HmacSha256)
        }
        None => Some(wechatpay_v2::SignType::Md5),
    }
}

/// A verified v2 request: the app, its credentials, the fields and the sign type to answer
/// with; or the reply that refuses it.
async fn v2_request(
    sandbox: &Sandbox,
    body: &[u8],
) -> Result<
    (
        wechatpay_v2::Credentials,
        App,
        Vec<(String, String)>,
        wechatpay_v2::SignType,
    ),
    Response,
> {
    let fields = wechatpay_v2::parse_xml(body).map_err(|_| v2_fail("XML格式错误"))?;
    let get = |k: &str| fields.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let mch_id = get("mch_id").ok_or_else(|| v2_fail("缺少参数 mch_id"))?;
    let app = sandbox
        .provider_app(Profile::WechatPayV2, &mch_id)
        .await
        .map_err(IntoResponse::into_response)?
        .ok_or_else(|| {
            v2_fail("mch_id参数错误: the sandbox knows a mch_id once a sandbox payment was created for its app")
        })?;
    let Credentials::WechatPayV2(w) = app.credentials.clone() else {
        return Err(
            ApiError::Internal("a wechatpay-v2 app without its credentials".into()).into_response(),
        );
    };
    if get("appid").as_deref() != Some(w.appid.as_str()) {
        return Err(v2_fail("appid和mch_id不匹配"));
    }
    let sign_type = v2_sign_type(&fields).ok_or_else(|| v2_fail("sign_type参数错误"))?;
    let given = get("sign").unwrap_or_default();
    let expected = wechatpay_v2::sign(&fields, &w.api_key, sign_type);
    if given.is_empty() || !given.eq_ignore_ascii_case(&expected) {
        return Err(v2_fail("签名错误"));
    }
    Ok((w, app, fields, sign_type))
}

/// Signs and sends a v2 business answer: `return_code` SUCCESS, the ids, a nonce, `fields`,
/// and `sign` in the request's sign type.
fn v2_signed(
    w: &wechatpay_v2::Credentials,
    sign_type: wechatpay_v2::SignType,
    fields: Vec<(String, String)>,
) -> Response {
    let mut all: Vec<(String, String)> = vec![
        ("return_code".into(), "SUCCESS".into()),
        ("return_msg".into(), "OK".into()),
        ("appid".into(), w.appid.clone()),
        ("mch_id".into(), w.mch_id.clone()),
        ("nonce_str".into(), wechatpay_v2::generate_nonce()),
    ];
    all.extend(fields);
    all.sort();
    let sign = wechatpay_v2::sign(&all, &w.api_key, sign_type);
    all.push(("sign".into(), sign));
    xml_reply(&all)
}

fn v2_business_error(code: &str, des: &str) -> Vec<(String, String)> {
    vec![
        ("result_code".into(), "FAIL".into()),
        ("err_code".into(), code.into()),
        ("err_code_des".into(), des.into()),
    ]
}

/// `POST /pay/orderquery`.
pub async fn wechat_v2_orderquery(State(sandbox): State<Sandbox>, body: Bytes) -> Response {
    let (w, app, fields, sign_type) = match v2_request(&sandbox, &body).await {
        Ok(x) => x,
        Err(reply) => return reply,
    };
    let get = |k: &str| fields.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let trade = match sandbox
        .find_trade(&app, get("out_trade_no"), get("transaction_id"))
        .await
    {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let answer = match trade {
        Some(p) => wire::v2_order(&p),
        None => v2_business_error("ORDERNOTEXIST", "order not exist"),
    };
    v2_signed(&w, sign_type, answer)
}

/// `POST /secapi/pay/refund` (WeChat requires the merchant's client certificate there; the
/// sandbox, on plain HTTP, does not).
pub async fn wechat_v2_refund(State(sandbox): State<Sandbox>, body: Bytes) -> Response {
    let (w, app, fields, sign_type) = match v2_request(&sandbox, &body).await {
        Ok(x) => x,
        Err(reply) => return reply,
    };
    let get = |k: &str| fields.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let trade = match sandbox
        .find_trade(&app, get("out_trade_no"), get("transaction_id"))
        .await
    {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let Some(p) = trade else {
        return v2_signed(
            &w,
            sign_type,
            v2_business_error("ORDERNOTEXIST", "订单不存在"),
        );
    };
    let fen = |k: &str| get(k).and_then(|v| v.parse::<i64>().ok());
    let (Some(total_fee), Some(refund_fee), Some(out_refund_no)) =
        (fen("total_fee"), fen("refund_fee"), get("out_refund_no"))
    else {
        return v2_signed(
            &w,
            sign_type,
            v2_business_error(
                "PARAM_ERROR",
                "total_fee, refund_fee and out_refund_no are required",
            ),
        );
    };
    if total_fee != p.amount {
        return v2_signed(
            &w,
            sign_type,
            v2_business_error(
                "INVALID_REQUEST",
                "订单金额或退款金额与之前请求不一致，请核实后再试",
            ),
        );
    }
    let notify_url = match get("notify_url").filter(|u| !u.is_empty()) {
        Some(u) => match views::parse_url("notify_url", u) {
            Ok(u) => Some(u),
            Err(_) => {
                return v2_signed(
                    &w,
                    sign_type,
                    v2_business_error("PARAM_ERROR", "notify_url参数错误"),
                )
            }
        },
        None => None,
    };
    let answer = wechat_refund(&sandbox, &p, refund_fee, out_refund_no, notify_url).await;
    match answer {
        Ok((p, i)) => v2_signed(&w, sign_type, wire::v2_refund(&p, &p.refunds[i])),
        Err((code, des)) => v2_signed(&w, sign_type, v2_business_error(code, &des)),
    }
}

/// A WeChat refund (v2 or v3) after WeChat's checks; the error is (code, description).
async fn wechat_refund(
    sandbox: &Sandbox,
    p: &Payment,
    amount: i64,
    out_refund_no: &str,
    notify_url: Option<String>,
) -> Result<(Payment, usize), (&'static str, String)> {
    let repeat = p.refunds.iter().any(|r| r.out_refund_no == out_refund_no);
    if !repeat {
        match p.state {
            TradeState::TradeSuccess => {}
            TradeState::TradeFinished => {
                return Err(("TRADE_OVERDUE", "订单已经超过退款期限".into()))
            }
            TradeState::WaitBuyerPay => return Err(("INVALID_REQUEST", "订单未支付".into())),
            TradeState::TradeClosed if p.paid_at.is_some() => {
                return Err(("INVALID_REQUEST", "订单已全额退款".into()))
            }
            TradeState::TradeClosed => return Err(("INVALID_REQUEST", "订单已关闭".into())),
        }
        if amount < 1 || amount > p.amount - p.refunded() {
            return Err(("INVALID_REQUEST", "申请退款金额超过订单可退金额".into()));
        }
    }
    if super::api::check_out_trade_no(p.profile, out_refund_no).is_err() {
        return Err(("PARAM_ERROR", "out_refund_no参数错误".into()));
    }
    sandbox
        .refund(
            &p.id,
            RefundRequest {
                amount,
                out_refund_no: Some(out_refund_no.to_string()),
                status: RefundStatus::Success,
                notify_url,
            },
        )
        .await
        .map(|(p, i, _)| (p, i))
        .map_err(|e| match e {
            ApiError::Conflict(m) => ("INVALID_REQUEST", m),
            other => ("SYSTEMERROR", api_message(other)),
        })
}

// ---------------------------------------------------------------------------------------
// WeChat Pay v3

const V3_UNVERIFIED: &str = "WeChat Pay v3 requests are signed with the merchant's private key, whose certificate a Herald app does not hold";

/// A v3 answer signed with the platform key (`Wechatpay-*` headers), as WeChat Pay signs
/// its responses, errors included.
fn v3_signed(app: &App, status: StatusCode, body: Value) -> Response {
    let Credentials::WechatPayV3(w) = &app.credentials else {
        return ApiError::Internal("a wechatpay-v3 app without its credentials".into())
            .into_response();
    };
    let body = body.to_string();
    match wire::v3_response_headers(w, &body, now_ms()) {
        Ok(mut headers) => {
            headers.push(unverified(V3_UNVERIFIED));
            respond(status, "application/json", headers, body)
        }
        Err(e) => ApiError::internal(&e).into_response(),
    }
}

/// An error nobody can sign for (no such merchant).
fn v3_error_unsigned(status: StatusCode, code: &str, message: &str) -> Response {
    respond(
        status,
        "application/json",
        vec![],
        json!({"code": code, "message": message}).to_string(),
    )
}

fn v3_error(app: &App, status: StatusCode, code: &str, message: &str) -> Response {
    v3_signed(app, status, json!({"code": code, "message": message}))
}

/// The `mchid` of a v3 `Authorization: WECHATPAY2-SHA256-RSA2048 mchid="...",...` header.
fn authorization_mchid(headers: &HeaderMap) -> Option<String> {
    let auth = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let rest = auth.strip_prefix("WECHATPAY2-SHA256-RSA2048")?;
    rest.split(',').find_map(|part| {
        let (k, v) = part.trim().split_once('=')?;
        (k.trim() == "mchid").then(|| v.trim().trim_matches('"').to_string())
    })
}

async fn v3_app(sandbox: &Sandbox, mchid: Option<String>) -> Result<App, Response> {
    let Some(mchid) = mchid.filter(|m| !m.is_empty()) else {
        return Err(v3_error_unsigned(
            StatusCode::BAD_REQUEST,
            "PARAM_ERROR",
            "缺少mchid: give it as ?mchid= or in the Authorization header",
        ));
    };
    match sandbox.provider_app(Profile::WechatPayV3, &mchid).await {
        Ok(Some(app)) => Ok(app),
        Ok(None) => Err(v3_error_unsigned(
            StatusCode::BAD_REQUEST,
            "MCH_NOT_EXISTS",
            "商户号不存在: the sandbox knows a mchid once a sandbox payment was created for its app",
        )),
        Err(e) => Err(e.into_response()),
    }
}

fn query_mchid(query: Option<&str>) -> Option<String> {
    url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .find(|(k, _)| k == "mchid")
        .map(|(_, v)| v.into_owned())
}

async fn v3_query(
    sandbox: Sandbox,
    app: App,
    out_trade_no: Option<&str>,
    id: Option<&str>,
) -> Response {
    match sandbox.find_trade(&app, out_trade_no, id).await {
        Ok(Some(p)) => v3_signed(&app, StatusCode::OK, wire::v3_order(&p, &app.credentials)),
        Ok(None) => v3_error(&app, StatusCode::NOT_FOUND, "ORDER_NOT_EXIST", "订单不存在"),
        Err(e) => e.into_response(),
    }
}

/// `GET /v3/pay/transactions/out-trade-no/{out_trade_no}?mchid=...`.
pub async fn wechat_v3_query_by_out_trade_no(
    State(sandbox): State<Sandbox>,
    Path(out_trade_no): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let mchid = query_mchid(query.as_deref()).or_else(|| authorization_mchid(&headers));
    match v3_app(&sandbox, mchid).await {
        Ok(app) => v3_query(sandbox, app, Some(&out_trade_no), None).await,
        Err(reply) => reply,
    }
}

/// `GET /v3/pay/transactions/id/{transaction_id}?mchid=...`.
pub async fn wechat_v3_query_by_id(
    State(sandbox): State<Sandbox>,
    Path(transaction_id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let mchid = query_mchid(query.as_deref()).or_else(|| authorization_mchid(&headers));
    match v3_app(&sandbox, mchid).await {
        Ok(app) => v3_query(sandbox, app, None, Some(&transaction_id)).await,
        Err(reply) => reply,
    }
}

/// `POST /v3/refund/domestic/refunds`: the merchant comes from the `Authorization` header.
pub async fn wechat_v3_refund(
    State(sandbox): State<Sandbox>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let app = match v3_app(&sandbox, authorization_mchid(&headers)).await {
        Ok(app) => app,
        Err(reply) => return reply,
    };
    let bad = |m: &str| v3_error(&app, StatusCode::BAD_REQUEST, "PARAM_ERROR", m);
    let req: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        _ => return bad("请求体不是JSON对象"),
    };
    let text = |k: &str| req.get(k).and_then(Value::as_str);
    let Some(out_refund_no) = text("out_refund_no") else {
        return bad("缺少参数 out_refund_no");
    };
    let (Some(refund), Some(total)) = (
        req["amount"]["refund"].as_i64(),
        req["amount"]["total"].as_i64(),
    ) else {
        return bad("缺少参数 amount.refund / amount.total");
    };
    let p = match sandbox
        .find_trade(&app, text("out_trade_no"), text("transaction_id"))
        .await
    {
        Ok(Some(p)) => p,
        Ok(None) => {
            return v3_error(
                &app,
                StatusCode::NOT_FOUND,
                "RESOURCE_NOT_EXISTS",
                "订单不存在",
            )
        }
        Err(e) => return e.into_response(),
    };
    if total != p.amount {
        return v3_error(
            &app,
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
            "订单金额与原订单金额不一致",
        );
    }
    let notify_url = match text("notify_url").filter(|u| !u.is_empty()) {
        Some(u) => match views::parse_url("notify_url", u) {
            Ok(u) => Some(u),
            Err(_) => return bad("notify_url参数错误"),
        },
        None => None,
    };
    match wechat_refund(&sandbox, &p, refund, out_refund_no, notify_url).await {
        Ok((p, i)) => v3_signed(&app, StatusCode::OK, wire::v3_refund(&p, &p.refunds[i])),
        Err((code, message)) => {
            let status = if code == "SYSTEMERROR" {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                StatusCode::BAD_REQUEST
            };
            v3_error(&app, status, code, &message)
        }
    }
}
