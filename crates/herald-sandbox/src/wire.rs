//! What the sandbox says, per wire profile, with each provider's own field names: the
//! notification payloads (paid, closed, refunded), the signed return_url parameters, the
//! trade-query response, provider-shaped ids, and the amount change of the tampering drill.
//! The profile's `encode` (herald-protocols) turns a payload into the signed wire request.
use herald_protocols::receive::format_minor;
use herald_protocols::{alipay, wechatpay_v2, Credentials, Profile, ProfileError};
use herald_store::UnixMillis;
use rand::Rng;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::model::{Buyer, Payment, Refund, RefundStatus, TradeState};
use super::money;

/// A notification to enqueue: the event type and the payload the profile encodes.
pub struct Outgoing {
    pub event_type: String,
    pub payload: Value,
}

const CHINA_OFFSET_SECS: i32 = 8 * 3600;

fn china(ms: UnixMillis) -> time::OffsetDateTime {
    let offset =
        time::UtcOffset::from_whole_seconds(CHINA_OFFSET_SECS).unwrap_or(time::UtcOffset::UTC);
    time::OffsetDateTime::from_unix_timestamp(ms.to_seconds().get())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        .to_offset(offset)
}

/// `yyyy-MM-dd HH:mm:ss` in China time (Alipay's `gmt_*`, `timestamp`).
pub fn alipay_time(ms: UnixMillis) -> String {
    china(ms)
        .format(time::macros::format_description!(
            "[year]-[month]-[day] [hour]:[minute]:[second]"
        ))
        .unwrap_or_default()
}

/// `yyyy-MM-dd HH:mm:ss.SSS` in China time (Alipay's `gmt_refund`, which carries
/// milliseconds: `2019-08-15 15:56:22.123`).
pub fn alipay_time_ms(ms: UnixMillis) -> String {
    format!("{}.{:03}", alipay_time(ms), ms.get().rem_euclid(1000))
}

/// `yyyyMMddHHmmss` in China time (WeChat Pay v2's `time_end`).
fn wechat_compact_time(ms: UnixMillis) -> String {
    china(ms)
        .format(time::macros::format_description!(
            "[year][month][day][hour][minute][second]"
        ))
        .unwrap_or_default()
}

/// RFC 3339 in China time (WeChat Pay v3's `success_time`).
fn wechat_rfc3339(ms: UnixMillis) -> String {
    china(ms)
        .format(time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second]+08:00"
        ))
        .unwrap_or_default()
}

fn china_date(ms: UnixMillis) -> String {
    china(ms)
        .format(time::macros::format_description!("[year][month][day]"))
        .unwrap_or_default()
}

fn digits(n: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..n)
        .map(|_| char::from(b'0' + rng.gen_range(0..10u8)))
        .collect()
}

fn alphanumeric(n: usize) -> String {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    (0..n)
        .map(|_| char::from(CHARS[rng.gen_range(0..CHARS.len())]))
        .collect()
}

/// The provider's transaction id for a new trade.
pub fn new_trade_no(profile: Profile, now: UnixMillis) -> String {
    match profile {
        // 2013112011001004330000121536: date, channel, then digits (28 in all).
        Profile::Alipay => format!("{}22001{}", china_date(now), digits(15)),
        Profile::WechatPayV2 | Profile::WechatPayV3 => {
            format!("4200001{}{}", china_date(now), digits(13))
        }
        // 1220730901201409023179351860: the partner id, the date, 10 digits (28 in all).
        Profile::WechatPayLegacy => format!("1200000000{}{}", china_date(now), digits(10)),
        // 20160806151343349021: the time to the second, then digits (20 in all).
        Profile::Dialect => format!("{}{}", wechat_compact_time(now), digits(6)),
        Profile::Stripe => format!("pi_{}", alphanumeric(24)),
        Profile::StandardWebhooks => format!("txn_{}", ulid::Ulid::new()),
    }
}

/// The provider's id for a refund.
pub fn new_refund_id(profile: Profile, now: UnixMillis) -> String {
    match profile {
        Profile::WechatPayV2 | Profile::WechatPayV3 => {
            format!("5030001{}{}", china_date(now), digits(13))
        }
        Profile::Stripe => format!("re_{}", alphanumeric(24)),
        _ => format!("rfd_{}", ulid::Ulid::new()),
    }
}

/// The app's Alipay `seller_id`: the configured one, else `2088` + 12 digits derived from
/// the app id (SHA-256), so it is stable per app without being stored anywhere.
pub fn seller_id(app_id: &str, c: &Credentials) -> Option<String> {
    match c {
        Credentials::Alipay(a) => Some(
            a.seller_id
                .clone()
                .unwrap_or_else(|| derived_seller_id(app_id)),
        ),
        _ => None,
    }
}

/// `2088` + 12 decimal digits from SHA-256 of the app id.
pub fn derived_seller_id(app_id: &str) -> String {
    let digest = Sha256::digest(format!("herald-sandbox-seller:{app_id}").as_bytes());
    let mut n = [0u8; 8];
    n.copy_from_slice(&digest[..8]);
    format!("2088{:012}", u64::from_be_bytes(n) % 1_000_000_000_000)
}

/// A buyer for a payment being paid: an Alipay `2088...` user id and masked logon id, and a
/// WeChat `openid` (28 characters, `o` + 27 URL-safe characters, as WeChat's look).
pub fn new_buyer() -> Buyer {
    const OPENID_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = rand::thread_rng();
    let openid: String = std::iter::once('o')
        .chain((0..27).map(|_| char::from(OPENID_CHARS[rng.gen_range(0..OPENID_CHARS.len())])))
        .collect();
    Buyer {
        buyer_id: format!("2088{}", digits(12)),
        buyer_logon_id: format!("1{}****{}", digits(2), digits(4)),
        openid,
    }
}

/// Stripe's charge id for a payment intent (`pi_X` -> `ch_X`).
fn charge_id(trade_no: &str) -> String {
    format!("ch_{}", trade_no.trim_start_matches("pi_"))
}

fn alipay_ids(p: &Payment, c: &Credentials) -> (Option<String>, Option<String>) {
    match c {
        Credentials::Alipay(a) => (
            Some(a.app_id.clone()),
            p.seller_id.clone().or_else(|| seller_id(&p.app_id, c)),
        ),
        _ => (None, None),
    }
}

fn wechat_ids(c: &Credentials) -> (Option<String>, Option<String>) {
    match c {
        Credentials::WechatPayV2(w) => (Some(w.appid.clone()), Some(w.mch_id.clone())),
        Credentials::WechatPayV3(w) => (Some(w.appid.clone()), Some(w.mchid.clone())),
        _ => (None, None),
    }
}

fn insert_opt(map: &mut Map<String, Value>, k: &str, v: Option<String>) {
    if let Some(v) = v {
        map.insert(k.into(), Value::String(v));
    }
}

/// The fields every Alipay trade notification carries, as real `trade_status_sync`
/// notifies do: ids (`app_id`, `auth_app_id`, `seller_id`), the trade, and once paid the
/// buyer (`buyer_id`, `buyer_logon_id`) and the amounts (`receipt_amount`,
/// `buyer_pay_amount`, `invoice_amount`, `point_amount`, `fund_bill_list` as compact JSON
/// text).
fn alipay_base(p: &Payment, c: &Credentials, status: &str) -> Map<String, Value> {
    let total = money::format(p.amount, &p.currency);
    let (app_id, seller_id) = alipay_ids(p, c);
    let mut m = Map::new();
    insert_opt(&mut m, "app_id", app_id.clone());
    insert_opt(&mut m, "auth_app_id", app_id);
    insert_opt(&mut m, "seller_id", seller_id);
    m.insert("out_trade_no".into(), json!(p.out_trade_no));
    m.insert("trade_no".into(), json!(p.trade_no));
    m.insert("trade_status".into(), json!(status));
    m.insert("total_amount".into(), json!(total));
    m.insert("subject".into(), json!(p.subject));
    m.insert("gmt_create".into(), json!(alipay_time(p.created_at)));
    if let Some(paid) = p.paid_at {
        if let Some(b) = &p.buyer {
            m.insert("buyer_id".into(), json!(b.buyer_id));
            m.insert("buyer_logon_id".into(), json!(b.buyer_logon_id));
        }
        m.insert("receipt_amount".into(), json!(total));
        m.insert("buyer_pay_amount".into(), json!(total));
        m.insert("invoice_amount".into(), json!(total));
        m.insert("point_amount".into(), json!("0.00"));
        m.insert("fund_bill_list".into(), json!(fund_bill_list(&total)));
        m.insert("gmt_payment".into(), json!(alipay_time(paid)));
    }
    m
}

/// `[{"amount":"88.00","fundChannel":"ALIPAYACCOUNT"}]`: how the buyer paid, as the compact
/// JSON text Alipay sends in a form field.
fn fund_bill_list(total: &str) -> String {
    json!([{"amount": total, "fundChannel": "ALIPAYACCOUNT"}]).to_string()
}

fn standard(p: &Payment, kind: &str, status: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("type".into(), json!(kind));
    m.insert("app_id".into(), json!(p.app_id));
    m.insert("payment_id".into(), json!(p.id));
    m.insert("out_trade_no".into(), json!(p.out_trade_no));
    m.insert("transaction_id".into(), json!(p.trade_no));
    m.insert("amount".into(), json!(p.amount));
    m.insert("currency".into(), json!(p.currency));
    m.insert("status".into(), json!(status));
    m
}

fn stripe_intent(p: &Payment, status: &str) -> Value {
    let received = if p.paid_at.is_some() { p.amount } else { 0 };
    let mut v = json!({
        "id": p.trade_no,
        "object": "payment_intent",
        "amount": p.amount,
        "amount_received": received,
        "currency": p.currency.to_ascii_lowercase(),
        "status": status,
        "created": p.created_at.to_seconds().get(),
        "description": p.subject,
        "livemode": false,
        "metadata": {"out_trade_no": p.out_trade_no, "payment_id": p.id},
    });
    if p.paid_at.is_some() {
        v["latest_charge"] = json!(charge_id(&p.trade_no));
    }
    v
}

/// The notification of a successful payment (every profile sends one).
pub fn paid(p: &Payment, c: &Credentials) -> Outgoing {
    let paid_at = p.paid_at.unwrap_or(p.created_at);
    match p.profile {
        Profile::Alipay => Outgoing {
            event_type: "trade.success".into(),
            payload: Value::Object(alipay_base(p, c, "TRADE_SUCCESS")),
        },
        Profile::WechatPayV2 => {
            let (appid, mch_id) = wechat_ids(c);
            let mut m = Map::new();
            m.insert("return_code".into(), json!("SUCCESS"));
            m.insert("result_code".into(), json!("SUCCESS"));
            insert_opt(&mut m, "appid", appid);
            insert_opt(&mut m, "mch_id", mch_id);
            m.insert("out_trade_no".into(), json!(p.out_trade_no));
            m.insert("transaction_id".into(), json!(p.trade_no));
            m.insert("total_fee".into(), json!(p.amount));
            m.insert("cash_fee".into(), json!(p.amount));
            m.insert("fee_type".into(), json!(p.currency));
            m.insert("trade_type".into(), json!("NATIVE"));
            m.insert("bank_type".into(), json!("OTHERS"));
            m.insert("is_subscribe".into(), json!("N"));
            if let Some(b) = &p.buyer {
                m.insert("openid".into(), json!(b.openid));
            }
            m.insert("time_end".into(), json!(wechat_compact_time(paid_at)));
            m.insert("nonce_str".into(), json!(wechatpay_v2::generate_nonce()));
            Outgoing {
                event_type: "trade.success".into(),
                payload: Value::Object(m),
            }
        }
        Profile::WechatPayV3 => Outgoing {
            event_type: "TRANSACTION.SUCCESS".into(),
            payload: v3_transaction(p, c, "SUCCESS", Some(paid_at)),
        },
        Profile::Stripe => Outgoing {
            event_type: "payment_intent.succeeded".into(),
            payload: stripe_intent(p, "succeeded"),
        },
        Profile::WechatPayLegacy => {
            // The query fields of the seed-era notification; the profile adds the rest
            // (partner, notify_id, sign_type, trade_state=0...) and the buyer's XML.
            let mut m = Map::new();
            m.insert("out_trade_no".into(), json!(p.out_trade_no));
            m.insert("transaction_id".into(), json!(p.trade_no));
            m.insert("total_fee".into(), json!(p.amount));
            m.insert("product_fee".into(), json!(p.amount));
            m.insert("bank_type".into(), json!("WX"));
            m.insert("time_end".into(), json!(wechat_compact_time(paid_at)));
            if let Some(b) = &p.buyer {
                m.insert("openid".into(), json!(b.openid));
            }
            Outgoing {
                event_type: "trade.success".into(),
                payload: Value::Object(m),
            }
        }
        Profile::Dialect => Outgoing {
            event_type: "trade.success".into(),
            payload: dialect_payload(p, c),
        },
        Profile::StandardWebhooks => Outgoing {
            event_type: "payment.succeeded".into(),
            payload: Value::Object(standard(p, "payment.succeeded", "succeeded")),
        },
    }
}

/// WeChat Pay v3's transaction (the decrypted `TRANSACTION.SUCCESS` resource and the query
/// answer): state and its description, and once paid the bank, the payer's openid and
/// `success_time`.
fn v3_transaction(p: &Payment, c: &Credentials, state: &str, paid_at: Option<UnixMillis>) -> Value {
    let (appid, mchid) = wechat_ids(c);
    let payer_total = if paid_at.is_some() { p.amount } else { 0 };
    let desc = wechat_trade_state_desc(state);
    let mut v = json!({
        "appid": appid,
        "mchid": mchid,
        "out_trade_no": p.out_trade_no,
        "transaction_id": p.trade_no,
        "trade_type": "NATIVE",
        "trade_state": state,
        "trade_state_desc": desc,
        "attach": "",
        "amount": {"total": p.amount, "payer_total": payer_total, "currency": p.currency, "payer_currency": p.currency},
    });
    if let Some(t) = paid_at {
        v["bank_type"] = json!("OTHERS");
        v["success_time"] = json!(wechat_rfc3339(t));
        if let Some(b) = &p.buyer {
            v["payer"] = json!({"openid": b.openid});
        }
    }
    v
}

/// The notification of the end of the refund window (`TRADE_FINISHED`); only Alipay sends
/// one.
pub fn finished(p: &Payment, c: &Credentials) -> Option<Outgoing> {
    match p.profile {
        Profile::Alipay => {
            let mut m = alipay_base(p, c, "TRADE_FINISHED");
            if p.refunded() > 0 {
                m.insert(
                    "refund_fee".into(),
                    json!(money::format(p.refunded(), &p.currency)),
                );
            }
            m.insert(
                "gmt_close".into(),
                json!(alipay_time(p.finished_at.unwrap_or(p.created_at))),
            );
            Some(Outgoing {
                event_type: "trade.finished".into(),
                payload: Value::Object(m),
            })
        }
        _ => None,
    }
}

/// The notification of a trade closed unpaid; `None` where the provider sends none
/// (WeChat Pay notifies only successes).
pub fn closed(p: &Payment, c: &Credentials) -> Option<Outgoing> {
    match p.profile {
        Profile::Alipay => {
            let mut m = alipay_base(p, c, "TRADE_CLOSED");
            m.insert(
                "gmt_close".into(),
                json!(alipay_time(p.closed_at.unwrap_or(p.created_at))),
            );
            Some(Outgoing {
                event_type: "trade.closed".into(),
                payload: Value::Object(m),
            })
        }
        // WeChat Pay and the aggregators notify successes only.
        Profile::WechatPayV2
        | Profile::WechatPayV3
        | Profile::WechatPayLegacy
        | Profile::Dialect => None,
        Profile::Stripe => {
            let mut v = stripe_intent(p, "canceled");
            v["cancellation_reason"] = json!("abandoned");
            Some(Outgoing {
                event_type: "payment_intent.canceled".into(),
                payload: v,
            })
        }
        Profile::StandardWebhooks => Some(Outgoing {
            event_type: "payment.closed".into(),
            payload: Value::Object(standard(p, "payment.closed", "closed")),
        }),
    }
}

/// The notification of a refund. WeChat Pay v2's is its refund notification: the payload's
/// fields become the encrypted `req_info` when the profile encodes a `refund...` event.
pub fn refunded(p: &Payment, c: &Credentials, r: &Refund) -> Option<Outgoing> {
    let full = r.refunded_total >= p.amount;
    match p.profile {
        Profile::Alipay => {
            let status = if full {
                "TRADE_CLOSED"
            } else {
                "TRADE_SUCCESS"
            };
            let mut m = alipay_base(p, c, status);
            m.insert(
                "refund_fee".into(),
                json!(money::format(r.refunded_total, &p.currency)),
            );
            m.insert("out_biz_no".into(), json!(r.out_refund_no));
            m.insert("gmt_refund".into(), json!(alipay_time_ms(r.at)));
            if full {
                m.insert("gmt_close".into(), json!(alipay_time(r.at)));
            }
            Some(Outgoing {
                event_type: "trade.refund".into(),
                payload: Value::Object(m),
            })
        }
        Profile::WechatPayV2 => Some(Outgoing {
            event_type: "refund.succeeded".into(),
            payload: json!({
                "transaction_id": p.trade_no,
                "out_trade_no": p.out_trade_no,
                "refund_id": r.refund_id,
                "out_refund_no": r.out_refund_no,
                "total_fee": p.amount,
                "settlement_total_fee": p.amount,
                "refund_fee": r.amount,
                "settlement_refund_fee": r.amount,
                "refund_status": "SUCCESS",
                "success_time": alipay_time(r.at),
                "refund_recv_accout": "支付用户零钱",
                "refund_account": "REFUND_SOURCE_RECHARGE_FUNDS",
                "refund_request_source": "API",
            }),
        }),
        Profile::WechatPayV3 => {
            let (_, mchid) = wechat_ids(c);
            let mut v = json!({
                "mchid": mchid,
                "out_trade_no": p.out_trade_no,
                "transaction_id": p.trade_no,
                "out_refund_no": r.out_refund_no,
                "refund_id": r.refund_id,
                "refund_status": r.status.as_str(),
                "user_received_account": "支付用户零钱",
                "amount": {"total": p.amount, "refund": r.amount, "payer_total": p.amount, "payer_refund": r.amount},
            });
            if r.status == RefundStatus::Success {
                v["success_time"] = json!(wechat_rfc3339(r.at));
            }
            Some(Outgoing {
                event_type: format!("REFUND.{}", r.status.as_str()),
                payload: v,
            })
        }
        Profile::Stripe => Some(Outgoing {
            event_type: "charge.refunded".into(),
            payload: json!({
                "id": charge_id(&p.trade_no),
                "object": "charge",
                "amount": p.amount,
                "amount_captured": p.amount,
                "amount_refunded": r.refunded_total,
                "currency": p.currency.to_ascii_lowercase(),
                "paid": true,
                "refunded": full,
                "status": "succeeded",
                "payment_intent": p.trade_no,
                "metadata": {"out_trade_no": p.out_trade_no, "payment_id": p.id, "refund_id": r.refund_id},
            }),
        }),
        // The seed-era WeChat Pay and the aggregators send no refund notification.
        Profile::WechatPayLegacy | Profile::Dialect => None,
        Profile::StandardWebhooks => {
            let status = if full {
                "refunded"
            } else {
                "partially_refunded"
            };
            let mut m = standard(p, "refund.succeeded", status);
            m.insert("refund_id".into(), json!(r.refund_id));
            m.insert("out_refund_no".into(), json!(r.out_refund_no));
            m.insert("refund_amount".into(), json!(r.amount));
            m.insert("refunded_total".into(), json!(r.refunded_total));
            Some(Outgoing {
                event_type: "refund.succeeded".into(),
                payload: Value::Object(m),
            })
        }
    }
}

/// The tampering drill: every amount field of the payload raised by 100 minor units
/// (1.00), the way a forged notification would claim more than the order is worth. WeChat
/// Pay v2 has no notify id, so receivers dedupe on `transaction_id` (`refund_id` for
/// refunds): the tampered copy gets a fresh one, or a receiver would take it as a repeat of
/// the real notification and never compare its amount.
pub fn tamper(profile: Profile, c: &Credentials, payload: &mut Value) {
    let bump_minor = |v: &mut Value| {
        if let Some(n) = v.as_i64() {
            *v = json!(n + 100);
        }
    };
    match profile {
        Profile::Alipay => {
            for k in ["total_amount", "receipt_amount", "buyer_pay_amount"] {
                if let Some(Value::String(s)) = payload.get(k) {
                    if let Ok(minor) = money::parse_decimal(k, s, "CNY") {
                        payload[k] = json!(money::format(minor + 100, "CNY"));
                    }
                }
            }
        }
        Profile::WechatPayV2 => {
            for k in ["total_fee", "settlement_total_fee"] {
                if let Some(v) = payload.get_mut(k) {
                    bump_minor(v);
                }
            }
            let now = herald_engine::now_ms();
            if payload.get("refund_id").is_some() {
                payload["refund_id"] = json!(new_refund_id(profile, now));
            } else if payload.get("transaction_id").is_some() {
                payload["transaction_id"] = json!(new_trade_no(profile, now));
            }
        }
        Profile::WechatPayV3 => {
            if let Some(a) = payload.get_mut("amount") {
                for k in ["total", "payer_total"] {
                    if let Some(v) = a.get_mut(k) {
                        bump_minor(v);
                    }
                }
            }
        }
        Profile::Stripe => {
            for k in ["amount", "amount_received", "amount_captured"] {
                if let Some(v) = payload.get_mut(k) {
                    bump_minor(v);
                }
            }
        }
        Profile::StandardWebhooks => {
            if let Some(v) = payload.get_mut("amount") {
                bump_minor(v);
            }
        }
        Profile::WechatPayLegacy => {
            for k in ["total_fee", "product_fee"] {
                if let Some(v) = payload.get_mut(k) {
                    bump_minor(v);
                }
            }
        }
        Profile::Dialect => {
            if let Credentials::Dialect(d) = c {
                let f = &d.dialect.fields;
                if let Some(Value::String(s)) = payload.get(&f.amount) {
                    if let Ok(minor) =
                        herald_protocols::receive::parse_decimal_minor(s, f.amount_decimals)
                    {
                        payload[&f.amount] = json!(format_minor(minor + 100, f.amount_decimals));
                    }
                }
                // A fresh trade number, or the receiver would take the copy as a repeat.
                if payload.get(&f.notify_id).is_some() {
                    payload[&f.notify_id] = json!(new_trade_no(profile, herald_engine::now_ms()));
                }
            }
        }
    }
}

/// A dialect's paid notification in its own field names: the order reference, the amount
/// in its decimals, the paid status value, the trade number as the notify id (and
/// transaction id); for the `epay` preset also `type` (`alipay`) and `name` (the subject),
/// as EPay sends them. The profile adds the app's fixed fields (`pid`) and constants
/// (`sign_type`), then signs.
fn dialect_payload(p: &Payment, c: &Credentials) -> Value {
    let mut m = Map::new();
    if let Credentials::Dialect(d) = c {
        let f = &d.dialect.fields;
        m.insert(f.out_trade_no.clone(), json!(p.out_trade_no));
        m.insert(
            f.amount.clone(),
            json!(format_minor(p.amount, f.amount_decimals)),
        );
        m.insert(f.status.clone(), json!(f.paid_value));
        m.insert(f.notify_id.clone(), json!(p.trade_no));
        if let Some(t) = &f.transaction_id {
            m.insert(t.clone(), json!(p.trade_no));
        }
        if d.dialect.name.as_deref() == Some("epay") {
            m.insert("type".into(), json!("alipay"));
            m.insert("name".into(), json!(p.subject));
        }
    }
    Value::Object(m)
}

/// The query of the return_url redirect after a payment: the return_url's own query
/// parameters (`existing`), then the provider's. Alipay signs its own
/// (`alipay.trade.page.pay.return`, RSA2 with the app's key) and only those: parameters the
/// merchant put on its return_url ride along unsigned, as Alipay passes them, so a merchant
/// must verify Alipay's parameters alone. The other providers do not sign their redirects, so
/// they get `out_trade_no` and `payment_id` only.
pub fn return_params(
    p: &Payment,
    c: &Credentials,
    now: UnixMillis,
    existing: Vec<(String, String)>,
) -> Result<Vec<(String, String)>, ProfileError> {
    match c {
        Credentials::Alipay(a) => {
            let mut ours = vec![
                (
                    "method".to_string(),
                    "alipay.trade.page.pay.return".to_string(),
                ),
                ("timestamp".into(), alipay_time(now)),
                ("app_id".into(), a.app_id.clone()),
                ("auth_app_id".into(), a.app_id.clone()),
                ("out_trade_no".into(), p.out_trade_no.clone()),
                ("trade_no".into(), p.trade_no.clone()),
                ("total_amount".into(), money::format(p.amount, &p.currency)),
                ("charset".into(), "utf-8".into()),
                ("version".into(), "1.0".into()),
            ];
            if let (_, Some(s)) = alipay_ids(p, c) {
                ours.push(("seller_id".into(), s));
            }
            alipay::sign_params(a, &mut ours)?;
            let mut params: Vec<(String, String)> = existing
                .into_iter()
                .filter(|(k, _)| !ours.iter().any(|(o, _)| o == k))
                .collect();
            params.extend(ours);
            Ok(params)
        }
        _ => {
            let mut params = existing;
            params.push(("out_trade_no".into(), p.out_trade_no.clone()));
            params.push(("payment_id".into(), p.id.clone()));
            Ok(params)
        }
    }
}

/// A trade-query response: content type, extra headers and body.
pub struct QueryResponse {
    pub content_type: &'static str,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// WeChat Pay's `trade_state` (v2 and v3): `NOTPAY`, `SUCCESS`, `REFUND` (a refund was
/// made) or `CLOSED`.
fn wechat_trade_state(p: &Payment) -> &'static str {
    match p.state {
        TradeState::WaitBuyerPay => "NOTPAY",
        TradeState::TradeSuccess | TradeState::TradeFinished if p.refunded() > 0 => "REFUND",
        TradeState::TradeSuccess | TradeState::TradeFinished => "SUCCESS",
        TradeState::TradeClosed if p.paid_at.is_some() => "REFUND",
        TradeState::TradeClosed => "CLOSED",
    }
}

/// Alipay's `alipay_trade_query_response` object for a trade, fields as the gateway
/// answers them (amounts `0.00` until paid, the buyer and `fund_bill_list` once paid).
pub fn alipay_query_response(p: &Payment) -> Map<String, Value> {
    let total = money::format(p.amount, &p.currency);
    let paid = |v: &str| {
        if p.paid_at.is_some() {
            v.to_string()
        } else {
            "0.00".to_string()
        }
    };
    let mut m = Map::new();
    m.insert("code".into(), json!("10000"));
    m.insert("msg".into(), json!("Success"));
    if let Some(b) = &p.buyer {
        m.insert("buyer_logon_id".into(), json!(b.buyer_logon_id));
        m.insert("buyer_user_id".into(), json!(b.buyer_id));
    }
    m.insert("buyer_pay_amount".into(), json!(paid(&total)));
    if p.paid_at.is_some() {
        m.insert(
            "fund_bill_list".into(),
            json!([{"amount": total, "fund_channel": "ALIPAYACCOUNT"}]),
        );
    }
    m.insert("invoice_amount".into(), json!(paid(&total)));
    m.insert("out_trade_no".into(), json!(p.out_trade_no));
    m.insert("point_amount".into(), json!("0.00"));
    m.insert("receipt_amount".into(), json!(paid(&total)));
    if let Some(t) = p.paid_at {
        m.insert("send_pay_date".into(), json!(alipay_time(t)));
    }
    m.insert("total_amount".into(), json!(total));
    m.insert("trade_no".into(), json!(p.trade_no));
    m.insert("trade_status".into(), json!(p.state.as_str()));
    if p.refunded() > 0 {
        m.insert(
            "refund_fee".into(),
            json!(money::format(p.refunded(), &p.currency)),
        );
    }
    m
}

/// Alipay's `alipay_trade_refund_response` object for refund `r` of `p`: `refund_fee` is
/// the trade's refunded total, `send_back_fee` this refund, `fund_change` `N` for a repeated
/// request that moved no money.
pub fn alipay_refund_response(p: &Payment, r: &Refund, created: bool) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("code".into(), json!("10000"));
    m.insert("msg".into(), json!("Success"));
    if let Some(b) = &p.buyer {
        m.insert("buyer_logon_id".into(), json!(b.buyer_logon_id));
        m.insert("buyer_user_id".into(), json!(b.buyer_id));
    }
    m.insert("fund_change".into(), json!(if created { "Y" } else { "N" }));
    m.insert("gmt_refund_pay".into(), json!(alipay_time(r.at)));
    m.insert("out_trade_no".into(), json!(p.out_trade_no));
    m.insert(
        "refund_fee".into(),
        json!(money::format(r.refunded_total, &p.currency)),
    );
    m.insert(
        "send_back_fee".into(),
        json!(money::format(r.amount, &p.currency)),
    );
    m.insert("trade_no".into(), json!(p.trade_no));
    m
}

fn wechat_trade_state_desc(state: &str) -> &'static str {
    match state {
        "SUCCESS" => "支付成功",
        "REFUND" => "转入退款",
        "NOTPAY" => "未支付",
        "CLOSED" => "已关闭",
        _ => "",
    }
}

/// WeChat Pay v2's `orderquery` answer fields (without the envelope: `return_code`, ids,
/// nonce and sign are added by the caller).
pub fn v2_order(p: &Payment) -> Vec<(String, String)> {
    let state = wechat_trade_state(p);
    let mut fields: Vec<(String, String)> = vec![
        ("result_code".into(), "SUCCESS".into()),
        ("out_trade_no".into(), p.out_trade_no.clone()),
        ("transaction_id".into(), p.trade_no.clone()),
        ("trade_state".into(), state.into()),
        (
            "trade_state_desc".into(),
            wechat_trade_state_desc(state).into(),
        ),
        ("trade_type".into(), "NATIVE".into()),
        ("total_fee".into(), p.amount.to_string()),
        ("fee_type".into(), p.currency.clone()),
    ];
    if let Some(t) = p.paid_at {
        fields.push(("time_end".into(), wechat_compact_time(t)));
        fields.push(("cash_fee".into(), p.amount.to_string()));
        fields.push(("bank_type".into(), "OTHERS".into()));
        fields.push(("is_subscribe".into(), "N".into()));
        if let Some(b) = &p.buyer {
            fields.push(("openid".into(), b.openid.clone()));
        }
    }
    fields
}

/// WeChat Pay v2's `/secapi/pay/refund` answer fields for refund `r` of `p`.
pub fn v2_refund(p: &Payment, r: &Refund) -> Vec<(String, String)> {
    vec![
        ("result_code".into(), "SUCCESS".into()),
        ("transaction_id".into(), p.trade_no.clone()),
        ("out_trade_no".into(), p.out_trade_no.clone()),
        ("out_refund_no".into(), r.out_refund_no.clone()),
        ("refund_id".into(), r.refund_id.clone()),
        ("refund_fee".into(), r.amount.to_string()),
        ("total_fee".into(), p.amount.to_string()),
        ("cash_fee".into(), p.amount.to_string()),
        ("cash_refund_fee".into(), r.amount.to_string()),
        ("coupon_refund_fee".into(), "0".into()),
        ("coupon_refund_count".into(), "0".into()),
    ]
}

/// WeChat Pay v3's transaction as `GET /v3/pay/transactions/...` answers it.
pub fn v3_order(p: &Payment, c: &Credentials) -> Value {
    v3_transaction(p, c, wechat_trade_state(p), p.paid_at)
}

/// WeChat Pay v3's `POST /v3/refund/domestic/refunds` answer for refund `r` of `p` (the
/// sandbox settles refunds at once: `SUCCESS`).
pub fn v3_refund(p: &Payment, r: &Refund) -> Value {
    let mut v = json!({
        "refund_id": r.refund_id,
        "out_refund_no": r.out_refund_no,
        "transaction_id": p.trade_no,
        "out_trade_no": p.out_trade_no,
        "channel": "ORIGINAL",
        "user_received_account": "支付用户零钱",
        "create_time": wechat_rfc3339(r.at),
        "status": r.status.as_str(),
        "funds_account": "AVAILABLE",
        "amount": {
            "total": p.amount, "refund": r.amount, "from": [],
            "payer_total": p.amount, "payer_refund": r.amount,
            "settlement_refund": r.amount, "settlement_total": p.amount,
            "discount_refund": 0, "currency": p.currency, "refund_fee": 0,
        },
        "promotion_detail": [],
    });
    if r.status == RefundStatus::Success {
        v["success_time"] = json!(wechat_rfc3339(r.at));
    }
    v
}

/// The `Wechatpay-*` headers that sign a v3 API response `body` with the platform key.
pub fn v3_response_headers(
    w: &herald_protocols::wechatpay_v3::Credentials,
    body: &str,
    now: UnixMillis,
) -> Result<Vec<(String, String)>, ProfileError> {
    let timestamp = now.to_seconds().to_string();
    let nonce = alphanumeric(32);
    let message = format!("{timestamp}\n{nonce}\n{body}\n");
    let signature = herald_protocols::keys::sign_sha256_cached(&w.private_key, message.as_bytes())
        .map_err(ProfileError::Sign)?;
    Ok(vec![
        ("Wechatpay-Timestamp".into(), timestamp),
        ("Wechatpay-Nonce".into(), nonce),
        ("Wechatpay-Signature".into(), signature),
        ("Wechatpay-Serial".into(), w.serial.clone()),
        (
            "Wechatpay-Signature-Type".into(),
            "WECHATPAY2-SHA256-RSA2048".into(),
        ),
    ])
}

/// The trade as the provider's query API answers, signed the way that provider signs API
/// responses: Alipay's `alipay_trade_query_response` + `sign` (RSA2 over the response
/// object's raw JSON text), WeChat Pay v2's `orderquery` XML with `sign`, WeChat Pay v3's
/// JSON with `Wechatpay-*` signature headers. Stripe and Standard Webhooks do not sign API
/// responses: their JSON comes unsigned (the admin token authenticates it).
pub fn trade_query(
    p: &Payment,
    c: &Credentials,
    now: UnixMillis,
) -> Result<QueryResponse, ProfileError> {
    match c {
        Credentials::Alipay(a) => {
            let text = Value::Object(alipay_query_response(p)).to_string();
            let sign = alipay::sign_query_response(a, &text)?;
            Ok(QueryResponse {
                content_type: "application/json; charset=utf-8",
                headers: vec![],
                body: format!(
                    "{{\"alipay_trade_query_response\":{text},\"sign\":{}}}",
                    json!(sign)
                ),
            })
        }
        Credentials::WechatPayV2(w) => {
            let mut fields: Vec<(String, String)> = vec![
                ("return_code".into(), "SUCCESS".into()),
                ("return_msg".into(), "OK".into()),
                ("appid".into(), w.appid.clone()),
                ("mch_id".into(), w.mch_id.clone()),
                ("nonce_str".into(), wechatpay_v2::generate_nonce()),
            ];
            fields.extend(v2_order(p));
            if w.sign_type != wechatpay_v2::SignType::Md5 {
                fields.push(("sign_type".into(), w.sign_type.as_str().into()));
            }
            fields.sort();
            let sign = wechatpay_v2::sign(&fields, &w.api_key, w.sign_type);
            fields.push(("sign".into(), sign));
            let mut xml = String::from("<xml>");
            for (k, v) in &fields {
                xml.push_str(&format!("<{k}><![CDATA[{}]]></{k}>", v.replace("]]>", "")));
            }
            xml.push_str("</xml>");
            Ok(QueryResponse {
                content_type: "text/xml; charset=utf-8",
                headers: vec![],
                body: xml,
            })
        }
        Credentials::WechatPayV3(w) => {
            let body = v3_order(p, c).to_string();
            Ok(QueryResponse {
                content_type: "application/json",
                headers: v3_response_headers(w, &body, now)?,
                body,
            })
        }
        Credentials::Stripe(_) => {
            let status = match p.state {
                TradeState::WaitBuyerPay => "requires_payment_method",
                TradeState::TradeSuccess | TradeState::TradeFinished => "succeeded",
                TradeState::TradeClosed if p.paid_at.is_some() => "succeeded",
                TradeState::TradeClosed => "canceled",
            };
            let mut v = stripe_intent(p, status);
            v["amount_refunded"] = json!(p.refunded());
            Ok(QueryResponse {
                content_type: "application/json",
                headers: vec![],
                body: v.to_string(),
            })
        }
        // Neither the seed-era WeChat Pay query nor the aggregators' are played: the sandbox
        // answers unsigned JSON, as for Standard Webhooks.
        Credentials::StandardWebhooks(_)
        | Credentials::WechatPayLegacy(_)
        | Credentials::Dialect(_) => {
            let mut m = standard(p, "payment", p.state.as_str());
            m.remove("type");
            m.insert("refunded_total".into(), json!(p.refunded()));
            Ok(QueryResponse {
                content_type: "application/json",
                headers: vec![],
                body: Value::Object(m).to_string(),
            })
        }
    }
}
