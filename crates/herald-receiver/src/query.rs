//! The trade query fallback: ask the payment platform what became of an order when its
//! notification has not arrived (a lost notify, a buyer back from the cashier before it, a
//! trade WeChat Pay closed without telling anyone), and apply the answer through the same
//! inbox as a notification, so it takes effect at most once.
//!
//! Owns the provider side of the query: building and signing the request of each platform's
//! query API (Alipay `alipay.trade.query` on the gateway, RSA2 with the merchant's key; WeChat
//! Pay v2 `POST /pay/orderquery`, signed with the API key; WeChat Pay v3
//! `GET /v3/pay/transactions/out-trade-no/{no}?mchid=`, `WECHATPAY2-SHA256-RSA2048`
//! authorization with the merchant's key), checking the answer's signature with the same
//! platform keys that verify notifications (Alipay's `sign` over the response object's raw
//! JSON, the v2 XML `sign`, v3's `Wechatpay-Signature` headers), and reading it into a
//! [`TradeAnswer`]. An answer that says paid or closed becomes a [`VerifiedNotification`] in
//! the profile's own shape, so the inbox's state machine reads it exactly like the
//! notification: a payment the query applied makes the late notification a stale no-op, and
//! a query after the notification changes nothing.
//!
//! Stripe and Standard Webhooks have no trade query here: their senders retry for days.
use std::time::Duration;

use herald_protocols::receive::{parse_decimal_minor, Amount, VerifiedNotification};
use herald_protocols::wechatpay_v2::{self, SignType};
use herald_protocols::{keys, Profile, ReceiverKeys};
use serde_json::{json, Value};

use crate::{Inbox, Outcome, Rejection};

/// Why a query gave no answer. Messages never contain key material.
#[derive(Clone, Debug, thiserror::Error)]
pub enum QueryError {
    /// The query could not be configured (a bad key or URL).
    #[error("trade query configuration: {0}")]
    Config(String),
    /// The platform could not be reached or answered with a transport error; the HTTP
    /// client's error is the source (shared, so the error stays `Clone`).
    #[error("the trade query could not reach the platform")]
    Transport(#[source] std::sync::Arc<reqwest::Error>),
    /// The answer's signature did not verify with the platform keys: it is not used.
    #[error("the trade query answer is not signed by the platform: {0}")]
    BadSignature(String),
    /// The platform answered, but not with a trade (an error code, a malformed body).
    #[error("the platform refused the trade query: {0}")]
    Refused(String),
    /// The inbox's receiver speaks another profile than this query.
    #[error("the inbox receives {inbox} notifications, the query speaks {query}")]
    ProfileMismatch { inbox: String, query: String },
}

/// What the platform says about a trade.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TradeState {
    /// Paid (Alipay `TRADE_SUCCESS` / `TRADE_FINISHED`, WeChat `SUCCESS`).
    Paid,
    /// Waiting for the buyer (Alipay `WAIT_BUYER_PAY`, WeChat `NOTPAY` / `USERPAYING`).
    NotPaid,
    /// Closed without payment (Alipay `TRADE_CLOSED` without refund, WeChat `CLOSED` /
    /// `REVOKED` / `PAYERROR`).
    Closed,
    /// Paid, then refunded (Alipay `TRADE_CLOSED` with `refund_fee`, WeChat `REFUND`).
    Refunded,
    /// The platform has no such trade (Alipay `ACQ.TRADE_NOT_EXIST`, WeChat
    /// `ORDERNOTEXIST` / `ORDER_NOT_EXIST`): the buyer never reached the cashier.
    NotFound,
}

/// A verified answer of the trade query.
#[derive(Clone, Debug, PartialEq)]
pub struct TradeAnswer {
    pub state: TradeState,
    /// The platform's own status text (`TRADE_SUCCESS`, `NOTPAY`, ...).
    pub status: String,
    pub transaction_id: Option<String>,
    /// The trade's total.
    pub amount: Option<Amount>,
    /// The answer as a notification of the profile, for the inbox; `None` when it moves no
    /// order (not paid, not found, or a WeChat refund whose amount the order query omits).
    pub notification: Option<VerifiedNotification>,
}

/// What [`Inbox::reconcile`] did.
#[derive(Clone, Debug, PartialEq)]
pub struct Reconciled {
    pub answer: TradeAnswer,
    /// What the inbox did with it; `None` when the answer moves nothing.
    pub outcome: Option<Outcome>,
}

#[derive(Clone)]
enum Platform {
    Alipay {
        gateway_url: url::Url,
        app_id: String,
        /// The merchant's application private key (PEM), which signs requests.
        private_key: String,
    },
    WechatPayV2 {
        url: url::Url,
        appid: String,
        mch_id: String,
        api_key: String,
        sign_type: SignType,
    },
    WechatPayV3 {
        base_url: url::Url,
        mchid: String,
        /// The serial of the merchant's API certificate, named in the authorization.
        serial: String,
        private_key: String,
    },
}

/// A platform's trade query API, ready to ask about an order. Cheap to clone.
#[derive(Clone)]
pub struct TradeQuery {
    platform: Platform,
    http: reqwest::Client,
}

impl std::fmt::Debug for TradeQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TradeQuery")
            .field("profile", &self.profile().name())
            .finish_non_exhaustive()
    }
}

fn parse_url(what: &str, s: &str) -> Result<url::Url, QueryError> {
    let u = url::Url::parse(s).map_err(|e| QueryError::Config(format!("{what} {s:?}: {e}")))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(QueryError::Config(format!("{what} {s:?} is not http(s)")));
    }
    Ok(u)
}

fn client() -> Result<reqwest::Client, QueryError> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(15))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| QueryError::Config(format!("HTTP client: {e}")))
}

fn transport(e: reqwest::Error) -> QueryError {
    QueryError::Transport(std::sync::Arc::new(e))
}

fn now_secs() -> i64 {
    herald_protocols::UnixSeconds::now().get()
}

/// Alipay's request timestamp: China time, `yyyy-MM-dd HH:mm:ss`.
fn alipay_timestamp(now: i64) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    time::UtcOffset::from_whole_seconds(8 * 3600)
        .ok()
        .and_then(|offset| {
            time::OffsetDateTime::from_unix_timestamp(now)
                .ok()
                .map(|t| t.to_offset(offset))
        })
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_default()
}

impl TradeQuery {
    /// Alipay's `alipay.trade.query` at `gateway_url` (`https://openapi.alipay.com/gateway.do`,
    /// or the sandbox's `/gateway.do`), as app `app_id`, signing with the merchant's
    /// application private key (PEM or base64 DER).
    pub fn alipay(
        gateway_url: &str,
        app_id: &str,
        merchant_private_key: &str,
    ) -> Result<Self, QueryError> {
        keys::parse_signing_key(merchant_private_key)
            .map_err(|e| QueryError::Config(format!("merchant private key: {e}")))?;
        Ok(TradeQuery {
            platform: Platform::Alipay {
                gateway_url: parse_url("gateway URL", gateway_url)?,
                app_id: app_id.to_string(),
                private_key: merchant_private_key.to_string(),
            },
            http: client()?,
        })
    }

    /// WeChat Pay v2's `orderquery` at `base_url` (`https://api.mch.weixin.qq.com`, or the
    /// sandbox's base URL) as merchant `mch_id` of app `appid`, signing with the API key.
    pub fn wechatpay_v2(
        base_url: &str,
        appid: &str,
        mch_id: &str,
        api_key: &str,
        sign_type: SignType,
    ) -> Result<Self, QueryError> {
        let base = parse_url("base URL", base_url)?;
        let url = base
            .join("pay/orderquery")
            .map_err(|e| QueryError::Config(format!("base URL: {e}")))?;
        Ok(TradeQuery {
            platform: Platform::WechatPayV2 {
                url,
                appid: appid.to_string(),
                mch_id: mch_id.to_string(),
                api_key: api_key.to_string(),
                sign_type,
            },
            http: client()?,
        })
    }

    /// WeChat Pay v3's `GET /v3/pay/transactions/out-trade-no/{no}` at `base_url`
    /// (`https://api.mch.weixin.qq.com`, or the sandbox's) as merchant `mchid`, signing with
    /// the merchant's API private key whose certificate serial is `merchant_serial`.
    pub fn wechatpay_v3(
        base_url: &str,
        mchid: &str,
        merchant_serial: &str,
        merchant_private_key: &str,
    ) -> Result<Self, QueryError> {
        keys::parse_signing_key(merchant_private_key)
            .map_err(|e| QueryError::Config(format!("merchant private key: {e}")))?;
        Ok(TradeQuery {
            platform: Platform::WechatPayV3 {
                base_url: parse_url("base URL", base_url)?,
                mchid: mchid.to_string(),
                serial: merchant_serial.to_string(),
                private_key: merchant_private_key.to_string(),
            },
            http: client()?,
        })
    }

    /// The profile whose platform this queries.
    pub fn profile(&self) -> Profile {
        match self.platform {
            Platform::Alipay { .. } => Profile::Alipay,
            Platform::WechatPayV2 { .. } => Profile::WechatPayV2,
            Platform::WechatPayV3 { .. } => Profile::WechatPayV3,
        }
    }

    /// Asks the platform about `out_trade_no` and checks the answer's signature with
    /// `platform_keys` (the keys that verify the platform's notifications; for WeChat Pay v2
    /// the API key given here).
    pub async fn query(
        &self,
        platform_keys: &ReceiverKeys,
        out_trade_no: &str,
    ) -> Result<TradeAnswer, QueryError> {
        if out_trade_no.is_empty() || out_trade_no.contains("]]>") || out_trade_no.contains('<') {
            return Err(QueryError::Config(format!(
                "{out_trade_no:?} is not an out_trade_no a platform accepts"
            )));
        }
        match &self.platform {
            Platform::Alipay {
                gateway_url,
                app_id,
                private_key,
            } => {
                let ReceiverKeys::Alipay(keys) = platform_keys else {
                    return Err(mismatch(platform_keys, Profile::Alipay));
                };
                self.alipay_query(gateway_url, app_id, private_key, keys, out_trade_no)
                    .await
            }
            Platform::WechatPayV2 {
                url,
                appid,
                mch_id,
                api_key,
                sign_type,
            } => {
                self.v2_query(url, appid, mch_id, api_key, *sign_type, out_trade_no)
                    .await
            }
            Platform::WechatPayV3 {
                base_url,
                mchid,
                serial,
                private_key,
            } => {
                let ReceiverKeys::WechatPayV3(keys) = platform_keys else {
                    return Err(mismatch(platform_keys, Profile::WechatPayV3));
                };
                self.v3_query(base_url, mchid, serial, private_key, keys, out_trade_no)
                    .await
            }
        }
    }

    async fn alipay_query(
        &self,
        gateway_url: &url::Url,
        app_id: &str,
        private_key: &str,
        keys: &herald_protocols::alipay::ReceiverKeys,
        out_trade_no: &str,
    ) -> Result<TradeAnswer, QueryError> {
        let mut params: Vec<(String, String)> = vec![
            ("app_id".into(), app_id.into()),
            ("method".into(), "alipay.trade.query".into()),
            ("format".into(), "JSON".into()),
            ("charset".into(), "utf-8".into()),
            ("sign_type".into(), "RSA2".into()),
            ("timestamp".into(), alipay_timestamp(now_secs())),
            ("version".into(), "1.0".into()),
            (
                "biz_content".into(),
                json!({ "out_trade_no": out_trade_no }).to_string(),
            ),
        ];
        let to_sign = herald_protocols::alipay::string_to_sign_keep_sign_type(&params);
        let sign = keys::sign_sha256_cached(private_key, to_sign.as_bytes())
            .map_err(|e| QueryError::Config(format!("merchant private key: {e}")))?;
        params.push(("sign".into(), sign));
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&params)
            .finish();
        let resp = self
            .http
            .post(gateway_url.clone())
            .header(
                "content-type",
                "application/x-www-form-urlencoded;charset=utf-8",
            )
            .body(body)
            .send()
            .await
            .map_err(transport)?;
        let text = resp.text().await.map_err(transport)?;
        #[derive(serde::Deserialize)]
        struct Envelope<'a> {
            #[serde(borrow)]
            alipay_trade_query_response: Option<&'a serde_json::value::RawValue>,
            #[serde(borrow)]
            error_response: Option<&'a serde_json::value::RawValue>,
            sign: Option<String>,
        }
        let env: Envelope<'_> = serde_json::from_str(&text)
            .map_err(|e| QueryError::Refused(format!("the answer is not Alipay's JSON: {e}")))?;
        let Some(raw) = env.alipay_trade_query_response else {
            return Err(QueryError::Refused(format!(
                "no alipay_trade_query_response ({})",
                env.error_response.map(|r| r.get()).unwrap_or("empty")
            )));
        };
        let sign = env.sign.as_deref().unwrap_or_default();
        if sign.is_empty()
            || !herald_protocols::alipay::verify_query_response(keys, raw.get(), sign)
        {
            return Err(QueryError::BadSignature(
                "alipay_trade_query_response".into(),
            ));
        }
        let r: Value = serde_json::from_str(raw.get())
            .map_err(|e| QueryError::Refused(format!("alipay_trade_query_response: {e}")))?;
        let field = |k: &str| r.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
        if field("code") != Some("10000") {
            if field("sub_code") == Some("ACQ.TRADE_NOT_EXIST") {
                return Ok(not_found("ACQ.TRADE_NOT_EXIST"));
            }
            return Err(QueryError::Refused(format!(
                "{} {}: {} {}",
                field("code").unwrap_or("?"),
                field("msg").unwrap_or(""),
                field("sub_code").unwrap_or(""),
                field("sub_msg").unwrap_or("")
            )));
        }
        check_order(field("out_trade_no"), out_trade_no)?;
        let status = field("trade_status").unwrap_or("").to_string();
        let refunded = field("refund_fee")
            .and_then(|f| parse_decimal_minor(f, 2).ok())
            .is_some_and(|r| r > 0);
        let state = match status.as_str() {
            "TRADE_SUCCESS" | "TRADE_FINISHED" if refunded => TradeState::Refunded,
            "TRADE_SUCCESS" | "TRADE_FINISHED" => TradeState::Paid,
            "TRADE_CLOSED" if refunded => TradeState::Refunded,
            "TRADE_CLOSED" => TradeState::Closed,
            "WAIT_BUYER_PAY" => TradeState::NotPaid,
            other => return Err(QueryError::Refused(format!("trade_status {other:?}"))),
        };
        let amount = field("total_amount")
            .map(|t| parse_decimal_minor(t, 2))
            .transpose()
            .map_err(|e| QueryError::Refused(e.to_string()))?
            .map(|minor| Amount {
                minor,
                currency: "CNY".into(),
            });
        let transaction_id = field("trade_no").map(str::to_string);
        let moves = !matches!(state, TradeState::NotPaid | TradeState::NotFound);
        let notification = moves.then(|| {
            let fields = r
                .as_object()
                .map(|m| m.clone().into_iter().collect())
                .unwrap_or_default();
            VerifiedNotification {
                profile: Profile::Alipay,
                notify_id: query_notify_id(transaction_id.as_deref(), out_trade_no, &status),
                app_id: Some(app_id.to_string()),
                merchant_id: None,
                out_trade_no: Some(out_trade_no.to_string()),
                transaction_id: transaction_id.clone(),
                amount: amount.clone(),
                status: Some(status.clone()),
                event_type: None,
                fields,
            }
        });
        Ok(TradeAnswer {
            state,
            status,
            transaction_id,
            amount,
            notification,
        })
    }

    async fn v2_query(
        &self,
        url: &url::Url,
        appid: &str,
        mch_id: &str,
        api_key: &str,
        sign_type: SignType,
        out_trade_no: &str,
    ) -> Result<TradeAnswer, QueryError> {
        let mut fields: Vec<(String, String)> = vec![
            ("appid".into(), appid.into()),
            ("mch_id".into(), mch_id.into()),
            ("out_trade_no".into(), out_trade_no.into()),
            ("nonce_str".into(), wechatpay_v2::generate_nonce()),
        ];
        if sign_type == SignType::HmacSha256 {
            fields.push(("sign_type".into(), "HMAC-SHA256".into()));
        }
        let sign = wechatpay_v2::sign(&fields, api_key, sign_type);
        fields.push(("sign".into(), sign));
        let mut xml = String::from("<xml>");
        for (k, v) in &fields {
            xml.push_str(&format!("<{k}><![CDATA[{v}]]></{k}>"));
        }
        xml.push_str("</xml>");
        let resp = self
            .http
            .post(url.clone())
            .header("content-type", "text/xml; charset=utf-8")
            .body(xml)
            .send()
            .await
            .map_err(transport)?;
        let body = resp.bytes().await.map_err(transport)?;
        let answer = wechatpay_v2::parse_xml(&body)
            .map_err(|e| QueryError::Refused(format!("the answer is not WeChat Pay XML: {e}")))?;
        let get = |k: &str| {
            answer
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
                .filter(|v| !v.is_empty())
        };
        if get("return_code") != Some("SUCCESS") {
            // Communication failures are unsigned by design: nothing to apply.
            return Err(QueryError::Refused(format!(
                "return_code {}: {}",
                get("return_code").unwrap_or("(none)"),
                get("return_msg").unwrap_or("")
            )));
        }
        let given = get("sign").unwrap_or_default();
        let expected = wechatpay_v2::sign(&answer, api_key, sign_type);
        if given.is_empty() || !given.eq_ignore_ascii_case(&expected) {
            return Err(QueryError::BadSignature("orderquery sign".into()));
        }
        if get("appid") != Some(appid) || get("mch_id") != Some(mch_id) {
            return Err(QueryError::Refused(
                "the answer is for another appid or mch_id".into(),
            ));
        }
        if get("result_code") != Some("SUCCESS") {
            if get("err_code") == Some("ORDERNOTEXIST") {
                return Ok(not_found("ORDERNOTEXIST"));
            }
            return Err(QueryError::Refused(format!(
                "{}: {}",
                get("err_code").unwrap_or("FAIL"),
                get("err_code_des").unwrap_or("")
            )));
        }
        check_order(get("out_trade_no"), out_trade_no)?;
        let status = get("trade_state").unwrap_or("").to_string();
        let state = match status.as_str() {
            "SUCCESS" => TradeState::Paid,
            "REFUND" => TradeState::Refunded,
            "NOTPAY" | "USERPAYING" => TradeState::NotPaid,
            "CLOSED" | "REVOKED" | "PAYERROR" => TradeState::Closed,
            other => return Err(QueryError::Refused(format!("trade_state {other:?}"))),
        };
        let amount = get("total_fee")
            .map(|t| parse_decimal_minor(t, 0))
            .transpose()
            .map_err(|e| QueryError::Refused(e.to_string()))?
            .map(|minor| Amount {
                minor,
                currency: get("fee_type").unwrap_or("CNY").to_string(),
            });
        let transaction_id = get("transaction_id").map(str::to_string);
        // orderquery does not say how much was refunded: a refund is left to its notification.
        let moves = matches!(state, TradeState::Paid | TradeState::Closed);
        let notification = moves.then(|| VerifiedNotification {
            profile: Profile::WechatPayV2,
            notify_id: query_notify_id(transaction_id.as_deref(), out_trade_no, &status),
            app_id: Some(appid.to_string()),
            merchant_id: Some(mch_id.to_string()),
            out_trade_no: Some(out_trade_no.to_string()),
            transaction_id: transaction_id.clone(),
            amount: amount.clone(),
            status: Some(status.clone()),
            event_type: None,
            fields: answer
                .iter()
                .filter(|(k, _)| k != "sign")
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect(),
        });
        Ok(TradeAnswer {
            state,
            status,
            transaction_id,
            amount,
            notification,
        })
    }

    async fn v3_query(
        &self,
        base_url: &url::Url,
        mchid: &str,
        serial: &str,
        private_key: &str,
        keys: &herald_protocols::wechatpay_v3::ReceiverKeys,
        out_trade_no: &str,
    ) -> Result<TradeAnswer, QueryError> {
        let mut url = base_url
            .join("v3/pay/transactions/out-trade-no/")
            .map_err(|e| QueryError::Config(format!("base URL: {e}")))?;
        url.path_segments_mut()
            .map_err(|_| QueryError::Config("base URL cannot take a path".into()))?
            .pop_if_empty()
            .push(out_trade_no);
        url.query_pairs_mut().append_pair("mchid", mchid);
        let path_and_query = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_string(),
        };
        let timestamp = now_secs().to_string();
        let nonce = wechatpay_v2::generate_nonce();
        let message = format!("GET\n{path_and_query}\n{timestamp}\n{nonce}\n\n");
        let signature = keys::sign_sha256_cached(private_key, message.as_bytes())
            .map_err(|e| QueryError::Config(format!("merchant private key: {e}")))?;
        let authorization = format!(
            "WECHATPAY2-SHA256-RSA2048 mchid=\"{mchid}\",nonce_str=\"{nonce}\",signature=\"{signature}\",timestamp=\"{timestamp}\",serial_no=\"{serial}\""
        );
        let resp = self
            .http
            .get(url)
            .header("authorization", authorization)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(transport)?;
        let status_code = resp.status();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
                .unwrap_or_default()
        };
        let (ts, nonce, sig, serial_header) = (
            header("wechatpay-timestamp"),
            header("wechatpay-nonce"),
            header("wechatpay-signature"),
            header("wechatpay-serial"),
        );
        let body = resp.text().await.map_err(transport)?;
        let signed = format!("{ts}\n{nonce}\n{body}\n");
        let verified = !sig.is_empty()
            && keys.platform_keys.iter().any(|(s, key)| {
                s.as_deref().is_none_or(|s| s == serial_header)
                    && keys::verify_sha256(key, signed.as_bytes(), &sig)
            });
        if !verified {
            return Err(QueryError::BadSignature(format!(
                "Wechatpay-Signature of a {status_code} answer"
            )));
        }
        let v: Value = serde_json::from_str(&body)
            .map_err(|e| QueryError::Refused(format!("the answer is not JSON: {e}")))?;
        let text = |k: &str| v.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
        if !status_code.is_success() {
            if text("code") == Some("ORDER_NOT_EXIST") {
                return Ok(not_found("ORDER_NOT_EXIST"));
            }
            return Err(QueryError::Refused(format!(
                "{status_code} {}: {}",
                text("code").unwrap_or("?"),
                text("message").unwrap_or("")
            )));
        }
        check_order(text("out_trade_no"), out_trade_no)?;
        if text("mchid").is_some_and(|m| m != mchid) {
            return Err(QueryError::Refused(
                "the answer is for another mchid".into(),
            ));
        }
        let status = text("trade_state").unwrap_or("").to_string();
        let state = match status.as_str() {
            "SUCCESS" => TradeState::Paid,
            "REFUND" => TradeState::Refunded,
            "NOTPAY" | "USERPAYING" => TradeState::NotPaid,
            "CLOSED" | "REVOKED" | "PAYERROR" => TradeState::Closed,
            other => return Err(QueryError::Refused(format!("trade_state {other:?}"))),
        };
        let amount = v.get("amount").and_then(|a| {
            Some(Amount {
                minor: a.get("total")?.as_i64()?,
                currency: a
                    .get("currency")
                    .and_then(Value::as_str)
                    .unwrap_or("CNY")
                    .to_string(),
            })
        });
        let transaction_id = text("transaction_id").map(str::to_string);
        // The transaction answer does not say how much was refunded: left to the refund
        // notification. CLOSED reads as the v3 notification's `trade_state` would.
        let moves = matches!(state, TradeState::Paid | TradeState::Closed);
        let notification = moves.then(|| {
            let mut fields = std::collections::BTreeMap::new();
            fields.insert("resource".to_string(), v.clone());
            VerifiedNotification {
                profile: Profile::WechatPayV3,
                notify_id: query_notify_id(transaction_id.as_deref(), out_trade_no, &status),
                app_id: text("appid").map(str::to_string),
                merchant_id: Some(mchid.to_string()),
                out_trade_no: Some(out_trade_no.to_string()),
                transaction_id: transaction_id.clone(),
                amount: amount.clone(),
                status: Some(status.clone()),
                event_type: (state == TradeState::Paid).then(|| "TRANSACTION.SUCCESS".to_string()),
                fields,
            }
        });
        Ok(TradeAnswer {
            state,
            status,
            transaction_id,
            amount,
            notification,
        })
    }
}

fn mismatch(keys: &ReceiverKeys, query: Profile) -> QueryError {
    let inbox = match keys {
        ReceiverKeys::StandardWebhooks(_) => "standard-webhooks",
        ReceiverKeys::Alipay(_) => "alipay",
        ReceiverKeys::WechatPayV2(_) => "wechatpay-v2",
        ReceiverKeys::WechatPayV3(_) => "wechatpay-v3",
        ReceiverKeys::Stripe(_) => "stripe",
        ReceiverKeys::WechatPayLegacy(_) => "wechatpay-legacy",
        ReceiverKeys::Dialect(_) => "dialect",
    };
    QueryError::ProfileMismatch {
        inbox: inbox.into(),
        query: query.name().into(),
    }
}

fn not_found(code: &str) -> TradeAnswer {
    TradeAnswer {
        state: TradeState::NotFound,
        status: code.to_string(),
        transaction_id: None,
        amount: None,
        notification: None,
    }
}

/// The answer must be about the order asked for.
fn check_order(got: Option<&str>, asked: &str) -> Result<(), QueryError> {
    match got {
        Some(g) if g == asked => Ok(()),
        other => Err(QueryError::Refused(format!(
            "the answer is about order {:?}, not {asked:?}",
            other.unwrap_or("(none)")
        ))),
    }
}

/// The dedupe key of a query answer: the same answer applied twice is a duplicate.
fn query_notify_id(transaction_id: Option<&str>, out_trade_no: &str, status: &str) -> String {
    format!("query:{}:{status}", transaction_id.unwrap_or(out_trade_no))
}

impl Inbox {
    /// The query fallback: asks the platform about `out_trade_no` and, when the verified
    /// answer says paid or closed, applies it through [`Inbox::process`] exactly as the
    /// notification would be (same checks of the amount against the order, same forward-only
    /// state machine, `handler` only for a forward step). The notification arriving later
    /// finds the order already moved and changes nothing; a repeated query is a duplicate.
    pub async fn reconcile<H>(
        &self,
        query: &TradeQuery,
        out_trade_no: &str,
        handler: H,
    ) -> Result<Reconciled, ReconcileError>
    where
        H: FnOnce(&mut crate::Effects, &crate::Transition) -> Result<(), String> + Send + 'static,
    {
        let receiver = self.receiver();
        if receiver.profile() != query.profile() {
            return Err(ReconcileError::Query(QueryError::ProfileMismatch {
                inbox: receiver.profile().name().into(),
                query: query.profile().name().into(),
            }));
        }
        let answer = query
            .query(receiver.keys(), out_trade_no)
            .await
            .map_err(ReconcileError::Query)?;
        let outcome = match answer.notification.clone() {
            Some(n) => Some(
                self.process(n, handler)
                    .await
                    .map_err(ReconcileError::Rejected)?,
            ),
            None => None,
        };
        tracing::info!(
            profile = query.profile().name(),
            out_trade_no,
            status = %answer.status,
            outcome = ?outcome,
            "trade query answered"
        );
        Ok(Reconciled { answer, outcome })
    }
}

/// Why [`Inbox::reconcile`] changed nothing.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ReconcileError {
    /// No usable answer from the platform.
    #[error(transparent)]
    Query(QueryError),
    /// The answer was refused by the inbox (unknown order, amount mismatch, storage...).
    #[error("{0}")]
    Rejected(Rejection),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_platform_that_cannot_be_reached_is_a_transport_error_whose_cause_is_the_connection_error(
    ) {
        // A loopback port that was just freed: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free loopback port");
        let query = TradeQuery::wechatpay_v2(
            &format!("http://127.0.0.1:{port}/"),
            "wx_app",
            "1900000109",
            "an-api-key-of-32-characters-0000",
            SignType::Md5,
        )
        .expect("a valid configuration");
        let keys = ReceiverKeys::StandardWebhooks(Vec::new());
        let err = query
            .query(&keys, "T20261128")
            .await
            .expect_err("nothing listens on the port");
        assert!(matches!(err, QueryError::Transport(_)), "{err:?}");
        let mut causes = Vec::new();
        let mut source = std::error::Error::source(&err);
        while let Some(e) = source {
            causes.push(e);
            source = e.source();
        }
        assert!(
            causes
                .first()
                .is_some_and(|e| e.is::<std::sync::Arc<reqwest::Error>>()),
            "the first cause is the HTTP client's error: {causes:?}"
        );
        assert!(
            causes.iter().any(|e| e
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)),
            "the chain reaches the refused connection: {causes:?}"
        );
    }
}
