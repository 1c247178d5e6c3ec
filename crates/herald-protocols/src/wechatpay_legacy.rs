//! The seed-era WeChat Pay notification (2014, Tenpay based): profile `wechatpay-legacy`.
//!
//! Owns both directions of that wire: the merchant's four values ([`Credentials`]: `appid`,
//! the Tenpay `partner` id, the partner key and the app key, the "paySignKey"), encoding one
//! attempt ([`encode`]), verifying and decoding a request ([`verify`], [`explain`]) and the
//! plain-text replies ([`ack_reply`], [`failure_reply`]).
//!
//! The wire, as WeChat's 2014 JSAPI/Native payment notifications were sent to `notify_url`
//! (and as the demos of the time, `WxPayHelper` and Tenpay's `ResponseHandler`, read them):
//! - The payment result is in the URL query: `bank_type`, `discount`, `fee_type` (`1` =
//!   CNY), `input_charset`, `notify_id`, `out_trade_no`, `partner`, `product_fee`, `sign`,
//!   `sign_type=MD5`, `time_end`, `total_fee` (fen), `trade_mode`, `trade_state` (`0` =
//!   paid), `transaction_id`, `transport_fee`, and `attach` / `bank_billno` when present.
//!   `sign` = upper-case hex MD5 of the non-empty parameters except `sign`, sorted by name,
//!   joined `k=v&...`, then `&key=<partner key>` (Tenpay's `isTenpaySign`, which compares
//!   case-insensitively; so does [`verify`]). The values are signed as received bytes, after
//!   percent-decoding, in the `input_charset` (GBK when absent, Tenpay's default).
//! - The POST body is the buyer's XML: `OpenId`, `AppId`, `IsSubscribe`, `TimeStamp`,
//!   `NonceStr`, `AppSignature`, `SignMethod=sha1`. `AppSignature` = lower-case hex SHA-1 of
//!   every other element, names lower-cased, plus `appkey=<app key>`, sorted by name and
//!   joined `k=v&...` (WxPayHelper's `get_biz_sign`; no values dropped).
//! - The acknowledgement is the body `success` (anything else makes WeChat send again).
//!
//! [`verify`] checks both signatures; a request whose query and XML disagree on nothing
//! but carry a valid MD5 sign and an invalid AppSignature (or the other way round) is refused.
//! Secrets never leave this module readable: `Debug` redacts them, errors never quote them,
//! [`explain`] writes `<partner key>` and `<app key>` in their place. RustCrypto's `md-5`
//! and `sha1`; signs are compared in constant time.
use std::collections::BTreeMap;
use std::fmt::Write as _;

use rand::rngs::OsRng;
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha1::Sha1;
use subtle::{Choice, ConstantTimeEq};

use crate::ack::AckRule;
use crate::profile::{bad_credentials, EncodedRequest, OutgoingNotification, ProfileError};
use crate::receive::{
    parse_decimal_minor, Amount, IncomingRequest, ReceiveError, Refusal, Reply,
    VerifiedNotification,
};
use crate::retry::RetryPolicy;
use crate::wechatpay_v2::{field_text, is_xml_char, parse_xml, push_text};

/// The profile's name.
pub const PROFILE: &str = "wechatpay-legacy";
/// The `Content-Type` of the XML body.
pub const CONTENT_TYPE: &str = "text/xml";
/// The length of a generated partner key (Tenpay's are 32 letters and digits).
pub const PARTNER_KEY_LEN: usize = 32;
/// The length of a generated app key (the paySignKey WeChat issued was 128 characters).
pub const APP_KEY_LEN: usize = 128;

const PARTNER_KEY_PLACEHOLDER: &str = "<partner key>";
const APP_KEY_PLACEHOLDER: &str = "<app key>";

/// The XML elements of the body, in the order WeChat wrote them (`AppSignature` and
/// `SignMethod` last).
const XML_FIELDS: [&str; 5] = ["OpenId", "AppId", "IsSubscribe", "TimeStamp", "NonceStr"];

/// A merchant's seed-era WeChat Pay material. Serialized into the store as JSON; both keys
/// are shared secrets, so `Debug` redacts them.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Credentials {
    /// The official account's app id (`wx` + 16 hex digits when generated).
    pub appid: String,
    /// The Tenpay partner id (10 digits, `120...` when generated).
    pub partner: String,
    /// The partner key: signs the query (MD5).
    pub partner_key: String,
    /// The app key ("paySignKey"): signs the XML (`AppSignature`, SHA-1).
    pub app_key: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("appid", &self.appid)
            .field("partner", &self.partner)
            .field("partner_key", &format_args!("<redacted>"))
            .field("app_key", &format_args!("<redacted>"))
            .finish()
    }
}

// ---------------------------------------------------------------------------------------
// Signing

/// The query's string to sign, as bytes: non-empty parameters except `sign`, sorted by name
/// (byte order), `k=v` joined with `&`, then `&key=<partner key>`.
pub fn query_string_to_sign(params: &[(Vec<u8>, Vec<u8>)], partner_key: &[u8]) -> Vec<u8> {
    let mut sorted: Vec<&(Vec<u8>, Vec<u8>)> = params
        .iter()
        .filter(|(k, v)| k.as_slice() != b"sign" && !v.is_empty())
        .collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = Vec::new();
    for (k, v) in sorted {
        out.extend_from_slice(k);
        out.push(b'=');
        out.extend_from_slice(v);
        out.push(b'&');
    }
    out.extend_from_slice(b"key=");
    out.extend_from_slice(partner_key);
    out
}

/// The query `sign`: upper-case hex MD5 of [`query_string_to_sign`].
pub fn query_sign(params: &[(Vec<u8>, Vec<u8>)], partner_key: &str) -> String {
    use md5::Digest;
    let digest = md5::Md5::digest(query_string_to_sign(params, partner_key.as_bytes()));
    hex(&digest, true)
}

/// The XML's string to sign: every element except `AppSignature` and `SignMethod`, names
/// lower-cased, plus `appkey`, sorted, `k=v` joined with `&` (values as they are, none
/// dropped).
pub fn app_string_to_sign(fields: &[(String, String)], app_key: &str) -> String {
    let mut lowered: BTreeMap<String, &str> = fields
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str()))
        .filter(|(k, _)| k != "appsignature" && k != "signmethod")
        .collect();
    lowered.insert("appkey".into(), app_key);
    let mut out = String::new();
    for (i, (k, v)) in lowered.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        let _ = write!(out, "{k}={v}");
    }
    out
}

/// `AppSignature`: lower-case hex SHA-1 of [`app_string_to_sign`].
pub fn app_signature(fields: &[(String, String)], app_key: &str) -> String {
    use sha1::Digest;
    hex(
        &Sha1::digest(app_string_to_sign(fields, app_key).as_bytes()),
        false,
    )
}

fn hex(bytes: &[u8], upper: bool) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = if upper {
            write!(s, "{b:02X}")
        } else {
            write!(s, "{b:02x}")
        };
    }
    s
}

// ---------------------------------------------------------------------------------------
// Credentials

const CREDENTIALS_SHAPE: &str = "credentials for wechatpay-legacy are null (generate everything) or an object with any of \"appid\", \"partner\" (10 digits), \"partner_key\" and \"app_key\" (printable ASCII, no spaces); what is not given is generated";

fn random_alphanumeric(len: usize) -> String {
    OsRng
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

fn check_key(field: &str, v: &str) -> Result<(), ProfileError> {
    if v.is_empty() || v.len() > 256 || !v.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad_credentials(format!(
            "{field} must be 1 to 256 printable ASCII characters without spaces (got {} characters)",
            v.chars().count()
        )));
    }
    Ok(())
}

fn check_appid(v: &str) -> Result<(), ProfileError> {
    if v.is_empty()
        || v.len() > 32
        || !v
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(bad_credentials(
            "appid must be 1 to 32 ASCII letters, digits, '_' or '-'",
        ));
    }
    Ok(())
}

fn check_partner(v: &str) -> Result<(), ProfileError> {
    if v.is_empty() || v.len() > 32 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad_credentials("partner must be 1 to 32 digits"));
    }
    Ok(())
}

fn once_view(c: &Credentials) -> Value {
    serde_json::json!({
        "appid": c.appid,
        "partner": c.partner,
        "partner_key": c.partner_key,
        "app_key": c.app_key,
    })
}

/// Credentials for a new app: `null`, `{}` or an object with any of `appid`, `partner`,
/// `partner_key` and `app_key`; what is absent is generated. The view shown once has all
/// four (both keys are shared secrets the merchant configures).
pub fn create_credentials(options: &Value) -> Result<(Credentials, Value), ProfileError> {
    let fields = crate::profile::credential_fields(options, CREDENTIALS_SHAPE)?;
    if fields
        .keys()
        .any(|k| !matches!(k.as_str(), "appid" | "partner" | "partner_key" | "app_key"))
    {
        return Err(bad_credentials(format!(
            "unknown field in credentials: {CREDENTIALS_SHAPE}"
        )));
    }
    let given = |name: &str| -> Result<Option<String>, ProfileError> {
        match fields.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.trim().to_string())),
            Some(_) => Err(bad_credentials(format!("{name} must be a string"))),
        }
    };
    let appid = match given("appid")? {
        Some(v) => {
            check_appid(&v)?;
            v
        }
        None => {
            let mut s = String::from("wx");
            for _ in 0..16 {
                let _ = write!(s, "{:x}", OsRng.gen_range(0u8..16));
            }
            s
        }
    };
    let partner = match given("partner")? {
        Some(v) => {
            check_partner(&v)?;
            v
        }
        None => format!("120{:07}", OsRng.gen_range(0u32..10_000_000)),
    };
    let partner_key = match given("partner_key")? {
        Some(v) => {
            check_key("partner_key", &v)?;
            v
        }
        None => random_alphanumeric(PARTNER_KEY_LEN),
    };
    let app_key = match given("app_key")? {
        Some(v) => {
            check_key("app_key", &v)?;
            v
        }
        None => random_alphanumeric(APP_KEY_LEN),
    };
    let creds = Credentials {
        appid,
        partner,
        partner_key,
        app_key,
    };
    let view = once_view(&creds);
    Ok((creds, view))
}

/// What may be shown at any time: `{"appid", "partner"}`, never a key.
pub fn public_view(c: &Credentials) -> Value {
    serde_json::json!({"appid": c.appid, "partner": c.partner})
}

/// New partner and app keys, effective at once (one key pair per merchant: no grace period,
/// `grace_until` is not used). Returns the credentials and the once-only view.
pub fn rotate(c: &Credentials) -> Result<(Credentials, Value), ProfileError> {
    check_appid(&c.appid)?;
    check_partner(&c.partner)?;
    let rotated = Credentials {
        partner_key: random_alphanumeric(PARTNER_KEY_LEN),
        app_key: random_alphanumeric(APP_KEY_LEN),
        ..c.clone()
    };
    let view = once_view(&rotated);
    Ok((rotated, view))
}

/// A fresh notify id: 96 characters of `[A-Za-z0-9_-]`, the shape of the `notify_id`s
/// WeChat sent (`qZ6Aae9b0UKIxhbQrM8tRZ1E...`). It is on the wire, so receivers dedupe on it.
pub fn new_notify_id() -> String {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";
    (0..96)
        .map(|_| char::from(CHARS[OsRng.gen_range(0..CHARS.len())]))
        .collect()
}

/// WeChat's resend schedule (the `wechatpay-v2` policy: the same notifier).
pub fn default_retry() -> RetryPolicy {
    RetryPolicy::named("wechatpay-v2").unwrap_or_else(RetryPolicy::standard)
}

/// A 2xx whose body is `success`.
pub fn default_ack() -> AckRule {
    AckRule::Body("success".into())
}

// ---------------------------------------------------------------------------------------
// Encoding

/// `yyyyMMddHHmmss` in China time.
fn china_time(unix: i64, fmt: &[time::format_description::FormatItem<'_>]) -> String {
    let offset = time::UtcOffset::from_whole_seconds(8 * 3600).unwrap_or(time::UtcOffset::UTC);
    time::OffsetDateTime::from_unix_timestamp(unix)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        .to_offset(offset)
        .format(fmt)
        .unwrap_or_default()
}

fn is_param_name(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 64
        && k.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Encodes one attempt: a POST whose query carries the payment result and whose body is the
/// buyer's XML, both signed.
///
/// The payload is a JSON object. `out_trade_no` and `total_fee` (whole fen) are required;
/// `openid` and `is_subscribe` go into the XML (`OpenId`, `IsSubscribe`; generated / `1`
/// when absent); every other field (lower-case names) goes into the query. Herald fills in
/// what is absent: `bank_type=WX`, `discount=0`, `fee_type=1`, `input_charset=UTF-8`,
/// `notify_id` (the delivery's), `partner`, `product_fee=total_fee`, `sign_type=MD5`,
/// `time_end` (the attempt's time, China time), `trade_mode=1`, `trade_state=0`,
/// `transaction_id` (partner + date + 10 digits) and `transport_fee=0`; then `sign`. The
/// XML gets `AppId`, `TimeStamp` (the attempt's), a fresh `NonceStr`, `AppSignature` and
/// `SignMethod=sha1`. The values are sent as UTF-8 (`input_charset` other than UTF-8 is
/// refused).
pub fn encode(
    c: &Credentials,
    n: &OutgoingNotification<'_>,
) -> Result<EncodedRequest, ProfileError> {
    let err = ProfileError::Encode;
    check_key("partner_key", &c.partner_key)
        .and_then(|_| check_key("app_key", &c.app_key))
        .map_err(|e| err(format!("the stored credentials are invalid: {e}")))?;
    let object: serde_json::Map<String, Value> = serde_json::from_slice(n.payload)
        .map_err(|e| err(format!("the payload must be a JSON object: {e}")))?;
    let mut query: BTreeMap<String, String> = BTreeMap::new();
    let mut openid = None;
    let mut is_subscribe = None;
    for (k, v) in &object {
        let Some(text) = field_text(v) else { continue };
        match k.as_str() {
            "openid" => openid = Some(text),
            "is_subscribe" => is_subscribe = Some(text),
            "sign" => return Err(err("the payload must not carry `sign`: Herald signs".into())),
            _ if !is_param_name(k) => {
                return Err(err(format!(
                    "field name {k:?} is not a Tenpay parameter name ([a-z0-9_], up to 64)"
                )))
            }
            _ => {
                query.insert(k.clone(), text);
            }
        }
    }
    let fee = query
        .get("total_fee")
        .ok_or_else(|| err("the payload needs total_fee (fen)".into()))?;
    if fee.is_empty() || !fee.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err(
            "total_fee must be a whole, non-negative number of fen".into()
        ));
    }
    let fee = fee.clone();
    if query.get("out_trade_no").is_none_or(|v| v.is_empty()) {
        return Err(err("the payload needs out_trade_no".into()));
    }
    if let Some(cs) = query.get("input_charset") {
        if !cs.eq_ignore_ascii_case("UTF-8") {
            return Err(err(
                "input_charset must be UTF-8: Herald sends the values as UTF-8".into(),
            ));
        }
    }
    if query.get("sign_type").is_some_and(|v| v != "MD5") {
        return Err(err("sign_type must be MD5".into()));
    }
    let date = china_time(
        n.timestamp.get(),
        time::macros::format_description!("[year][month][day]"),
    );
    let defaults = [
        ("bank_type", "WX".to_string()),
        ("discount", "0".to_string()),
        ("fee_type", "1".to_string()),
        ("input_charset", "UTF-8".to_string()),
        ("notify_id", n.notify_id.to_string()),
        ("partner", c.partner.clone()),
        ("product_fee", fee),
        ("sign_type", "MD5".to_string()),
        (
            "time_end",
            china_time(
                n.timestamp.get(),
                time::macros::format_description!("[year][month][day][hour][minute][second]"),
            ),
        ),
        ("trade_mode", "1".to_string()),
        ("trade_state", "0".to_string()),
        (
            "transaction_id",
            format!(
                "{}{date}{:010}",
                c.partner,
                OsRng.gen_range(0u64..10_000_000_000)
            ),
        ),
        ("transport_fee", "0".to_string()),
    ];
    for (k, v) in defaults {
        query.entry(k.to_string()).or_insert(v);
    }
    let pairs: Vec<(Vec<u8>, Vec<u8>)> = query
        .iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect();
    let sign = query_sign(&pairs, &c.partner_key);
    let mut form = form_urlencoded::Serializer::new(String::new());
    for (k, v) in &query {
        form.append_pair(k, v);
    }
    form.append_pair("sign", &sign);

    let xml_values = [
        openid.unwrap_or_else(|| format!("o{}", random_alphanumeric(27))),
        c.appid.clone(),
        is_subscribe.unwrap_or_else(|| "1".into()),
        n.timestamp.to_string(),
        random_alphanumeric(16),
    ];
    if let Some(bad) = xml_values
        .iter()
        .flat_map(|v| v.chars())
        .find(|ch| !is_xml_char(*ch))
    {
        return Err(err(format!(
            "openid / is_subscribe contain U+{:04X}, which XML cannot carry",
            u32::from(bad)
        )));
    }
    let xml_fields: Vec<(String, String)> = XML_FIELDS
        .iter()
        .map(|k| k.to_string())
        .zip(xml_values)
        .collect();
    let app_sig = app_signature(&xml_fields, &c.app_key);
    let mut body = String::from("<xml>");
    for (k, v) in &xml_fields {
        let _ = write!(body, "<{k}>");
        if matches!(k.as_str(), "IsSubscribe" | "TimeStamp")
            && v.bytes().all(|b| b.is_ascii_digit())
        {
            body.push_str(v);
        } else {
            push_text(&mut body, v);
        }
        let _ = write!(body, "</{k}>");
    }
    let _ = write!(
        body,
        "<AppSignature><![CDATA[{app_sig}]]></AppSignature><SignMethod><![CDATA[sha1]]></SignMethod></xml>"
    );
    Ok(EncodedRequest {
        method: "POST",
        query: form.finish(),
        content_type: CONTENT_TYPE.to_string(),
        headers: Vec::new(),
        body: body.into_bytes(),
    })
}

// ---------------------------------------------------------------------------------------
// Receiving

/// The partner keys (query MD5) and app keys (XML SHA-1) a receiver verifies with. `Debug`
/// shows only how many there are.
#[derive(Clone)]
pub struct ReceiverKeys {
    partner_keys: Vec<String>,
    app_keys: Vec<String>,
}

impl std::fmt::Debug for ReceiverKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ReceiverKeys(<{} redacted partner keys>, <{} redacted app keys>)",
            self.partner_keys.len(),
            self.app_keys.len()
        )
    }
}

/// Receiver keys from CLI-style strings: `appkey=KEY` is an app key; `partnerkey=KEY` or a
/// bare `KEY` a partner key. At least one of each is needed (both signatures are checked).
pub fn receiver_keys(keys: &[String]) -> Result<ReceiverKeys, ReceiveError> {
    let mut partner_keys = Vec::new();
    let mut app_keys = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        let k = k.trim();
        let (list, key) = if let Some(rest) = k.strip_prefix("appkey=") {
            (&mut app_keys, rest.trim())
        } else if let Some(rest) = k.strip_prefix("partnerkey=") {
            (&mut partner_keys, rest.trim())
        } else {
            (&mut partner_keys, k)
        };
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ReceiveError::UnknownKey(format!(
                "key #{} is empty or not printable ASCII",
                i + 1
            )));
        }
        list.push(key.to_string());
    }
    if partner_keys.is_empty() || app_keys.is_empty() {
        return Err(ReceiveError::UnknownKey(
            "wechatpay-legacy needs the partner key (PARTNERKEY or partnerkey=PARTNERKEY) and the app key (appkey=APPKEY)".into(),
        ));
    }
    Ok(ReceiverKeys {
        partner_keys,
        app_keys,
    })
}

/// The receiver's keys from stored credentials.
pub fn receiver_keys_from(c: &Credentials) -> ReceiverKeys {
    ReceiverKeys {
        partner_keys: vec![c.partner_key.clone()],
        app_keys: vec![c.app_key.clone()],
    }
}

type RawPairs = Vec<(Vec<u8>, Vec<u8>)>;

/// `a=1&b=2` into percent-decoded byte pairs (`+` is a space).
fn raw_pairs(data: &[u8]) -> Result<RawPairs, ReceiveError> {
    let decode = |part: &[u8]| -> Vec<u8> {
        let spaced: Vec<u8> = part
            .iter()
            .map(|&b| if b == b'+' { b' ' } else { b })
            .collect();
        percent_encoding::percent_decode(&spaced).collect()
    };
    let mut out: RawPairs = Vec::new();
    for part in data.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
        let Some(i) = part.iter().position(|&b| b == b'=') else {
            return Err(ReceiveError::MalformedBody(
                "a query parameter has no '='".into(),
            ));
        };
        let k = decode(&part[..i]);
        if out.iter().any(|(seen, _)| *seen == k) {
            return Err(ReceiveError::MalformedBody(format!(
                "query parameter {:?} appears more than once",
                String::from_utf8_lossy(&k)
            )));
        }
        out.push((k, decode(&part[i + 1..])));
    }
    Ok(out)
}

/// The query parameters: raw bytes (what the MD5 covers) and text in their `input_charset`.
struct Query {
    raw: RawPairs,
    text: Vec<(String, String)>,
}

impl Query {
    fn get(&self, key: &str) -> Option<&str> {
        self.text
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }
}

fn read_query(req: &IncomingRequest<'_>) -> Result<Query, ReceiveError> {
    if req.query.is_empty() {
        return Err(ReceiveError::Missing(
            "the query parameters (the seed-era notification carries the payment result in the URL)".into(),
        ));
    }
    let raw = raw_pairs(req.query.as_bytes())?;
    let charset = raw
        .iter()
        .find(|(k, _)| k == b"input_charset")
        .map(|(_, v)| String::from_utf8_lossy(v).trim().to_ascii_lowercase())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "gbk".into());
    let encoding = match charset.as_str() {
        "utf-8" | "utf8" => encoding_rs::UTF_8,
        "gbk" | "gb2312" => encoding_rs::GBK,
        _ => return Err(ReceiveError::Charset(charset)),
    };
    let mut text = Vec::with_capacity(raw.len());
    for (k, v) in &raw {
        let dec = |b: &[u8]| {
            encoding
                .decode_without_bom_handling_and_without_replacement(b)
                .map(|s| s.into_owned())
                .ok_or_else(|| {
                    ReceiveError::MalformedBody(format!("a query parameter is not valid {charset}"))
                })
        };
        text.push((dec(k)?, dec(v)?));
    }
    Ok(Query { raw, text })
}

fn check_content_type(req: &IncomingRequest<'_>) -> Result<(), ReceiveError> {
    if let Some(media) = req.media_type() {
        if !matches!(
            media.as_str(),
            "" | "text/xml" | "application/xml" | "text/plain"
        ) {
            return Err(ReceiveError::UnsupportedContentType(media));
        }
    }
    Ok(())
}

fn xml_field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn check_signatures(
    keys: &ReceiverKeys,
    query: &Query,
    xml: &[(String, String)],
) -> Result<(), ReceiveError> {
    let received = query
        .get("sign")
        .ok_or_else(|| ReceiveError::Missing("sign (query)".into()))?
        .to_ascii_uppercase();
    if let Some(t) = query.get("sign_type") {
        if !t.eq_ignore_ascii_case("MD5") {
            return Err(ReceiveError::BadSignature(format!(
                "unsupported sign_type {t:?}; the seed-era notification is signed with MD5"
            )));
        }
    }
    let matched = keys.partner_keys.iter().fold(Choice::from(0), |acc, key| {
        acc | query_sign(&query.raw, key)
            .as_bytes()
            .ct_eq(received.as_bytes())
    });
    if !bool::from(matched) {
        return Err(ReceiveError::BadSignature(
            "the query's MD5 sign does not match the partner key".into(),
        ));
    }
    let app_sig = xml_field(xml, "AppSignature")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ReceiveError::Missing("AppSignature (XML body)".into()))?
        .to_ascii_lowercase();
    if let Some(m) = xml_field(xml, "SignMethod") {
        if !m.trim().eq_ignore_ascii_case("sha1") {
            return Err(ReceiveError::BadSignature(format!(
                "unsupported SignMethod {:?}; expected sha1",
                m.trim()
            )));
        }
    }
    let matched = keys.app_keys.iter().fold(Choice::from(0), |acc, key| {
        acc | app_signature(xml, key).as_bytes().ct_eq(app_sig.as_bytes())
    });
    if !bool::from(matched) {
        return Err(ReceiveError::BadSignature(
            "the XML AppSignature (SHA-1) does not match the app key".into(),
        ));
    }
    Ok(())
}

/// Verifies and decodes one notification: the content type, the query (parameters, charset,
/// the MD5 `sign` under any partner key), the XML body ([`parse_xml`]: no DTDs or entities)
/// and its `AppSignature` under any app key. Then decodes: `notify_id` (else
/// `transaction_id`), `out_trade_no`, `transaction_id`, the amount (`total_fee` fen; CNY for
/// `fee_type` 1 or absent), `status` = `trade_state` (`0` is paid), `app_id` = `AppId`,
/// `merchant_id` = `partner`, and every query parameter and XML element in `fields`.
pub fn verify(
    keys: &ReceiverKeys,
    req: &IncomingRequest<'_>,
) -> Result<VerifiedNotification, ReceiveError> {
    verify_detailed(keys, req).map_err(|r| r.error)
}

/// [`verify`], saying whether both signatures had verified when a request is refused.
pub fn verify_detailed(
    keys: &ReceiverKeys,
    req: &IncomingRequest<'_>,
) -> Result<VerifiedNotification, Refusal> {
    check_content_type(req).map_err(Refusal::unsigned)?;
    let query = read_query(req).map_err(Refusal::unsigned)?;
    let xml = parse_xml(req.body).map_err(Refusal::unsigned)?;
    check_signatures(keys, &query, &xml).map_err(Refusal::unsigned)?;
    decode(&query, &xml).map_err(Refusal::signed)
}

fn decode(query: &Query, xml: &[(String, String)]) -> Result<VerifiedNotification, ReceiveError> {
    let transaction_id = query.get("transaction_id").map(str::to_string);
    let out_trade_no = query.get("out_trade_no").map(str::to_string);
    let notify_id = query
        .get("notify_id")
        .map(str::to_string)
        .or_else(|| transaction_id.clone())
        .ok_or_else(|| ReceiveError::Missing("notify_id (and transaction_id)".into()))?;
    let amount = match query.get("total_fee") {
        None => None,
        Some(fee) => {
            if !fee.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ReceiveError::BadAmount(fee.to_string()));
            }
            let currency = match query.get("fee_type") {
                None | Some("1") => "CNY".to_string(),
                Some(other) => {
                    return Err(ReceiveError::MalformedBody(format!(
                        "fee_type {other:?} is not a currency the seed-era wire defines (1 = CNY)"
                    )))
                }
            };
            Some(Amount {
                minor: parse_decimal_minor(fee, 0)?,
                currency,
            })
        }
    };
    let mut fields: BTreeMap<String, Value> = query
        .text
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    for (k, v) in xml {
        fields.insert(k.clone(), Value::String(v.clone()));
    }
    Ok(VerifiedNotification {
        profile: crate::Profile::WechatPayLegacy,
        notify_id,
        app_id: xml_field(xml, "AppId")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string),
        merchant_id: query.get("partner").map(str::to_string),
        out_trade_no,
        transaction_id,
        amount,
        status: query.get("trade_state").map(str::to_string),
        event_type: None,
        fields,
    })
}

/// Both strings the request's signatures cover, keys masked: the query's (MD5, partner key)
/// and the XML's (SHA-1, app key).
pub fn explain(req: &IncomingRequest<'_>) -> Result<String, ReceiveError> {
    let query = read_query(req)?;
    let xml = parse_xml(req.body)?;
    let q = query_string_to_sign(&query.raw, PARTNER_KEY_PLACEHOLDER.as_bytes());
    Ok(format!(
        "query sign (MD5, upper-case hex):\n{}\n\nXML AppSignature (SHA-1, lower-case hex):\n{}",
        String::from_utf8_lossy(&q),
        app_string_to_sign(&xml, APP_KEY_PLACEHOLDER)
    ))
}

/// The acknowledgement: 200 with the body exactly `success`.
pub fn ack_reply() -> Reply {
    Reply {
        status: 200,
        content_type: "text/plain",
        body: b"success".to_vec(),
    }
}

/// "Send again": 200 with `fail` (anything but `success` makes WeChat resend).
pub fn failure_reply(_reason: &str) -> Reply {
    Reply {
        status: 200,
        content_type: "text/plain",
        body: b"fail".to_vec(),
    }
}

/// What a seed-era notification means for its order: `trade_state` `0` is paid (claiming
/// `total_fee`); anything else moves nothing.
pub fn read_order(n: &VerifiedNotification) -> Result<crate::order::OrderReading, ReceiveError> {
    use crate::order::{OrderEvent, OrderReading};
    if n.status.as_deref() == Some("0") {
        Ok(OrderReading {
            event: OrderEvent::Paid,
            total: n.amount.clone(),
        })
    } else {
        Ok(OrderReading::no_change(format!(
            "trade_state {}",
            n.status.as_deref().unwrap_or("(none)")
        )))
    }
}

/// The ids the seed-era wire always carries: `AppId` (XML) and `partner` (query).
pub fn carried_ids(_n: &VerifiedNotification) -> crate::order::CarriedIds {
    crate::order::CarriedIds {
        app_id: Some("AppId"),
        merchant_id: Some("partner"),
    }
}
