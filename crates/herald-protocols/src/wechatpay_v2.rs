//! The WeChat Pay API v2 ("legacy XML") notification profile: `<xml>` bodies of flat
//! CDATA fields, signed with the merchant's 32-character API key by `MD5` (the default) or
//! `HMAC-SHA256` over the sorted `k=v&...&key=<API key>` string.
//!
//! Owns both directions of the wire format: the merchant's credentials ([`Credentials`],
//! [`create_credentials`], [`rotate`], [`public_view`]), the string to sign and the sign
//! ([`string_to_sign`], [`sign`]), encoding one attempt ([`encode`]), parsing a body
//! ([`parse_xml`]: no DTDs, no custom entities, so XXE is impossible), verifying and decoding
//! a request ([`verify`], [`explain`]) and the XML replies a receiver sends back
//! ([`ack_reply`], [`failure_reply`]).
//!
//! Choices worth knowing:
//! - WeChat v2 has no notify id on the wire. Herald's notify id ([`new_notify_id`],
//!   `wx2_<ulid>`) stays internal; a receiver dedupes on `transaction_id`.
//! - [`encode`] sends no `sign_type` field, with `MD5` or `HMAC-SHA256` alike, as WeChat's
//!   own payment notifications do (real HMAC-SHA256 notifies carry a 64-hex sign and no
//!   `sign_type`). Receivers do not rely on the field: [`verify`] uses the merchant's
//!   configured sign type, else the sign's length (32 hex MD5, 64 HMAC-SHA256).
//! - A refund event (an event type starting with `refund`, any case) is sent as WeChat's
//!   refund notification: the payload's fields become the encrypted `req_info`
//!   ([`refund_notify::encode`]).
//! - Each attempt carries a fresh `nonce_str`, so the body differs between attempts.
//! - Field values take part in the signature exactly as sent (not trimmed): an empty value
//!   is left out, anything else is signed byte for byte. Some SDKs trim values before
//!   signing; producers should not send values with surrounding whitespace.
//! - Refund notifications are not signed: their `req_info` is encrypted with a key derived
//!   from the API key. [`refund_notify`] encodes and decrypts them; [`verify`] takes both kinds.
//! - Key rotation has no grace period: WeChat v2 has one API key per merchant, and the old
//!   key stops signing the moment a new one is set ([`rotate`] ignores `grace_until`).
//!
//! The API key never leaves this module in readable form except in the once-only view of
//! [`create_credentials`] / [`rotate`]: every `Debug` redacts it, no error quotes it, and
//! [`explain`] writes `<API key>` in its place. The digests are RustCrypto's (`md-5`,
//! `hmac` + `sha2`); signs are compared in constant time.
pub mod refund_notify;

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use quick_xml::events::Event;
use quick_xml::Reader;
use rand::distributions::Alphanumeric;
use rand::rngs::OsRng;
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;
use subtle::{Choice, ConstantTimeEq};

use crate::ack::AckRule;
use crate::profile::bad_credentials;
use crate::profile::{EncodedRequest, OutgoingNotification, ProfileError};
use crate::receive::{
    parse_decimal_minor, Amount, IncomingRequest, ReceiveError, Refusal, Reply,
    VerifiedNotification,
};
use crate::retry::RetryPolicy;

/// The profile's name (in [`VerifiedNotification::profile`] and retry policy names).
pub const PROFILE: &str = "wechatpay-v2";
/// The `Content-Type` of an encoded notification.
pub const CONTENT_TYPE: &str = "text/xml; charset=utf-8";
/// The length of a WeChat Pay API key (ASCII letters and digits).
pub const API_KEY_LEN: usize = 32;
/// The length of the `nonce_str` Herald generates (WeChat allows up to 32).
pub const NONCE_LEN: usize = 32;
/// The currency when `fee_type` is absent.
pub const DEFAULT_FEE_TYPE: &str = "CNY";

/// The placeholder [`explain`] shows instead of the API key.
const KEY_PLACEHOLDER: &str = "<API key>";

type HmacSha256 = Hmac<Sha256>;

/// How the sign is computed (the `sign_type` field; `MD5` when absent).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SignType {
    /// MD5 of the string to sign, upper-case hex. WeChat's default.
    #[default]
    #[serde(rename = "MD5")]
    Md5,
    /// HMAC-SHA256 keyed with the API key over the string to sign, upper-case hex.
    #[serde(rename = "HMAC-SHA256")]
    HmacSha256,
}

impl SignType {
    /// `"MD5"` or `"HMAC-SHA256"`, as on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            SignType::Md5 => "MD5",
            SignType::HmacSha256 => "HMAC-SHA256",
        }
    }

    /// The wire name, exactly (`"MD5"` or `"HMAC-SHA256"`); anything else is `None`.
    pub fn parse(s: &str) -> Option<SignType> {
        match s {
            "MD5" => Some(SignType::Md5),
            "HMAC-SHA256" => Some(SignType::HmacSha256),
            _ => None,
        }
    }
}

/// A merchant's WeChat Pay v2 material. Serialized into the store as JSON; `api_key` is a
/// shared secret, so `Debug` redacts it.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Credentials {
    /// The merchant's app id (`wx` + 16 hex digits when generated).
    pub appid: String,
    /// The merchant id (10 digits when generated).
    pub mch_id: String,
    /// The 32-character API key (ASCII letters and digits).
    pub api_key: String,
    /// How notifications are signed.
    #[serde(default)]
    pub sign_type: SignType,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("appid", &self.appid)
            .field("mch_id", &self.mch_id)
            .field("api_key", &format_args!("<redacted>"))
            .field("sign_type", &self.sign_type)
            .finish()
    }
}

// ---------------------------------------------------------------------------------------
// Signing

/// The string the sign covers: every field with a non-empty value except `sign`, sorted by
/// name (byte order), joined `k=v` with `&`, then `&key=<api_key>`. Unknown fields take part
/// like any other.
pub fn string_to_sign(fields: &[(String, String)], api_key: &str) -> String {
    let mut kept: Vec<&(String, String)> = fields
        .iter()
        .filter(|(k, v)| k != "sign" && !v.is_empty())
        .collect();
    kept.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut s = String::new();
    for (k, v) in kept {
        s.push_str(k);
        s.push('=');
        s.push_str(v);
        s.push('&');
    }
    s.push_str("key=");
    s.push_str(api_key);
    s
}

/// The sign of `fields` under `api_key`: MD5 or HMAC-SHA256 (keyed with the API key) of
/// [`string_to_sign`], upper-case hex.
pub fn sign(fields: &[(String, String)], api_key: &str, sign_type: SignType) -> String {
    let content = string_to_sign(fields, api_key);
    match sign_type {
        SignType::Md5 => upper_hex(&Md5::digest(content.as_bytes())),
        // HMAC takes keys of any length, so the error arm cannot happen; an empty sign
        // never verifies (see `verify`).
        SignType::HmacSha256 => match HmacSha256::new_from_slice(api_key.as_bytes()) {
            Ok(mut mac) => {
                mac.update(content.as_bytes());
                upper_hex(&mac.finalize().into_bytes())
            }
            Err(_) => String::new(),
        },
    }
}

fn upper_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(s, "{b:02X}");
    }
    s
}

// ---------------------------------------------------------------------------------------
// Credentials

const CREDENTIALS_SHAPE: &str = "credentials for wechatpay-v2 are null (generate everything) or an object with any of \"appid\", \"mch_id\", \"api_key\" (32 ASCII letters and digits) and \"sign_type\" (\"MD5\" or \"HMAC-SHA256\"); what is not given is generated";

fn random_alphanumeric(len: usize) -> String {
    OsRng
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// A new API key: 32 random ASCII letters and digits from the OS.
pub fn generate_api_key() -> String {
    random_alphanumeric(API_KEY_LEN)
}

/// A fresh `nonce_str`: 32 random ASCII letters and digits.
pub fn generate_nonce() -> String {
    random_alphanumeric(NONCE_LEN)
}

fn generate_appid() -> String {
    let mut s = String::from("wx");
    for _ in 0..16 {
        let _ = write!(s, "{:x}", OsRng.gen_range(0u8..16));
    }
    s
}

fn generate_mch_id() -> String {
    format!("1{:09}", OsRng.gen_range(0u32..1_000_000_000))
}

/// An `appid` or `mch_id`: 1 to 32 ASCII letters, digits, `_` or `-` (WeChat's `String(32)`).
fn check_id(field: &str, v: &str) -> Result<(), ProfileError> {
    if v.is_empty()
        || v.len() > 32
        || !v
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(bad_credentials(format!(
            "{field} must be 1 to 32 ASCII letters, digits, '_' or '-'"
        )));
    }
    Ok(())
}

/// An API key: exactly 32 ASCII letters and digits. The message gives the length, never
/// the content.
fn check_api_key(v: &str) -> Result<(), String> {
    if v.len() != API_KEY_LEN || !v.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(format!(
            "api_key must be exactly {API_KEY_LEN} ASCII letters and digits (got {} characters)",
            v.chars().count()
        ));
    }
    Ok(())
}

/// The view of `c` returned once, at creation or rotation: everything, API key included.
fn once_view(c: &Credentials) -> Value {
    serde_json::json!({
        "appid": c.appid,
        "mch_id": c.mch_id,
        "api_key": c.api_key,
        "sign_type": c.sign_type.as_str(),
    })
}

/// Credentials for a new app. `options` is `null`, `{}`, or an object with any of
/// `appid`, `mch_id`, `api_key` and `sign_type` (strings); what is absent is generated
/// (`wx` + 16 hex digits, `1` + 9 digits, 32 random letters and digits, `MD5`). Returns the
/// credentials and the view shown once: all four fields, the API key included (it is a
/// shared secret the merchant must configure). Unknown fields or invalid values are
/// [`ProfileError::BadCredentials`], whose message never quotes a value.
pub fn create_credentials(options: &Value) -> Result<(Credentials, Value), ProfileError> {
    let fields = crate::profile::credential_fields(options, CREDENTIALS_SHAPE)?;
    if fields
        .keys()
        .any(|k| !matches!(k.as_str(), "appid" | "mch_id" | "api_key" | "sign_type"))
    {
        return Err(bad_credentials(format!(
            "unknown field in credentials: {CREDENTIALS_SHAPE}"
        )));
    }
    let given = |name: &str| -> Result<Option<&str>, ProfileError> {
        match fields.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(bad_credentials(format!("{name} must be a string"))),
        }
    };
    let appid = match given("appid")? {
        Some(v) => {
            check_id("appid", v.trim())?;
            v.trim().to_string()
        }
        None => generate_appid(),
    };
    let mch_id = match given("mch_id")? {
        Some(v) => {
            check_id("mch_id", v.trim())?;
            v.trim().to_string()
        }
        None => generate_mch_id(),
    };
    let api_key = match given("api_key")? {
        Some(v) => {
            check_api_key(v.trim()).map_err(bad_credentials)?;
            v.trim().to_string()
        }
        None => generate_api_key(),
    };
    let sign_type = match given("sign_type")? {
        Some(v) => SignType::parse(v.trim())
            .ok_or_else(|| bad_credentials("sign_type must be \"MD5\" or \"HMAC-SHA256\""))?,
        None => SignType::Md5,
    };
    let creds = Credentials {
        appid,
        mch_id,
        api_key,
        sign_type,
    };
    let view = once_view(&creds);
    Ok((creds, view))
}

/// What may be shown at any time: `{"appid", "mch_id", "sign_type"}`, never the API key.
pub fn public_view(c: &Credentials) -> Value {
    serde_json::json!({
        "appid": c.appid,
        "mch_id": c.mch_id,
        "sign_type": c.sign_type.as_str(),
    })
}

/// A new API key in place of the current one, effective at once: WeChat v2 knows one API key
/// per merchant, so there is no grace period and `grace_until` / `now` are not used (the old
/// key stops signing immediately; the merchant must switch their receiver at the same time,
/// or configure both keys in it via [`receiver_keys`] for the switch-over). `appid`,
/// `mch_id` and `sign_type` are kept. Returns the credentials and the once-only view
/// (the same shape as [`create_credentials`]'s).
pub fn rotate(
    c: &Credentials,
    grace_until: i64,
    now: i64,
) -> Result<(Credentials, Value), ProfileError> {
    let _ = (grace_until, now);
    check_id("appid", &c.appid)?;
    check_id("mch_id", &c.mch_id)?;
    let rotated = Credentials {
        api_key: generate_api_key(),
        ..c.clone()
    };
    let view = once_view(&rotated);
    Ok((rotated, view))
}

/// A fresh notify id, `wx2_<ulid>`. Internal to Herald: WeChat v2 has no notify id on the
/// wire.
pub fn new_notify_id() -> String {
    format!("wx2_{}", ulid::Ulid::new())
}

/// WeChat's v2 resend schedule (the `wechatpay-v2` policy).
pub fn default_retry() -> RetryPolicy {
    // The name is one of RetryPolicy::NAMES (a test checks it), so the fallback is unused.
    RetryPolicy::named(PROFILE).unwrap_or_else(RetryPolicy::standard)
}

/// A 2xx whose XML body has `return_code` `SUCCESS`; a plain `success` is not an ack.
pub fn default_ack() -> AckRule {
    AckRule::WechatXml
}

// ---------------------------------------------------------------------------------------
// Encoding

/// A field name Herald writes as an element: an ASCII letter or `_`, then ASCII letters,
/// digits and `_` (every WeChat field name has this shape).
fn is_field_name(k: &str) -> bool {
    let mut bytes = k.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Whether `c` may appear in an XML 1.0 document.
fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..='\u{10FFFF}')
}

/// A payload value as field text: strings as they are, numbers and booleans as their JSON
/// text, objects and arrays as compact JSON; `null` is dropped.
fn field_text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Array(_) | Value::Object(_) => Some(v.to_string()),
    }
}

/// Writes `v` as element content: CDATA sections, with `]]>` split across two sections and
/// `\r` written as `&#13;` (inside CDATA a parser would turn it into `\n`, changing the
/// signed value).
fn push_text(out: &mut String, v: &str) {
    for (i, part) in v.split('\r').enumerate() {
        if i > 0 {
            out.push_str("&#13;");
        }
        out.push_str("<![CDATA[");
        let mut rest = part;
        while let Some(at) = rest.find("]]>") {
            out.push_str(&rest[..at + 2]);
            out.push_str("]]><![CDATA[");
            rest = &rest[at + 2..];
        }
        out.push_str(rest);
        out.push_str("]]>");
    }
}

/// `<xml><k><![CDATA[v]]></k>...</xml>` in the order given. Names must already be checked.
fn to_xml(fields: &[(String, String)]) -> String {
    let mut out = String::from("<xml>");
    for (k, v) in fields {
        let _ = write!(out, "<{k}>");
        push_text(&mut out, v);
        let _ = write!(out, "</{k}>");
    }
    out.push_str("</xml>");
    out
}

/// Whether an event type names a refund (`refund`, `refund.succeeded`, `REFUND.SUCCESS`...):
/// such notifications are WeChat's encrypted refund notifications.
pub fn is_refund_event(event_type: &str) -> bool {
    event_type
        .get(..6)
        .is_some_and(|p| p.eq_ignore_ascii_case("refund"))
}

/// The refund a refund event's payload describes: `transaction_id`, `out_trade_no`,
/// `refund_id`, `out_refund_no`, `total_fee`, `refund_fee` and `refund_status` are required
/// (fees whole fen, as numbers or digit strings); `settlement_total_fee`,
/// `settlement_refund_fee`, `success_time`, `refund_recv_accout`, `refund_account` and
/// `refund_request_source` are optional; other members ride along in `req_info`.
pub fn refund_info_from_payload(
    object: &serde_json::Map<String, Value>,
) -> Result<refund_notify::RefundInfo, ProfileError> {
    let bad = |m: String| ProfileError::Encode(m);
    let text = |k: &str| -> Option<String> {
        match object.get(k) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        }
    };
    let required = |k: &str| text(k).ok_or_else(|| bad(format!("a refund notification needs {k}")));
    let fen = |k: &str| -> Result<Option<i64>, ProfileError> {
        match text(k) {
            None => Ok(None),
            Some(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s
                .parse()
                .map(Some)
                .map_err(|_| bad(format!("{k} is out of range"))),
            Some(_) => Err(bad(format!("{k} must be a whole number of fen"))),
        }
    };
    let required_fen =
        |k: &str| fen(k)?.ok_or_else(|| bad(format!("a refund notification needs {k}")));
    const TYPED: [&str; 13] = [
        "transaction_id",
        "out_trade_no",
        "refund_id",
        "out_refund_no",
        "total_fee",
        "settlement_total_fee",
        "refund_fee",
        "settlement_refund_fee",
        "refund_status",
        "success_time",
        "refund_recv_accout",
        "refund_account",
        "refund_request_source",
    ];
    let mut extra = Vec::new();
    for (k, v) in object {
        if TYPED.contains(&k.as_str()) {
            continue;
        }
        if let Some(t) = field_text(v) {
            extra.push((k.clone(), t));
        }
    }
    Ok(refund_notify::RefundInfo {
        transaction_id: required("transaction_id")?,
        out_trade_no: required("out_trade_no")?,
        refund_id: required("refund_id")?,
        out_refund_no: required("out_refund_no")?,
        total_fee: required_fen("total_fee")?,
        settlement_total_fee: fen("settlement_total_fee")?,
        refund_fee: required_fen("refund_fee")?,
        settlement_refund_fee: fen("settlement_refund_fee")?,
        refund_status: required("refund_status")?,
        success_time: text("success_time"),
        refund_recv_accout: text("refund_recv_accout"),
        refund_account: text("refund_account"),
        refund_request_source: text("refund_request_source"),
        extra,
    })
}

/// Encodes one attempt. The payload must be a JSON object; each member becomes a field
/// (see the module doc for how values are written). Herald adds, when absent:
/// `return_code` and `result_code` (`SUCCESS`), `appid` and `mch_id` (from the credentials)
/// and a fresh `nonce_str`; then `sign` (in the credentials' sign type; no `sign_type` field
/// is added), last. Fields are written sorted by name. A refund event type (`refund...`)
/// encodes the payload as a refund notification instead ([`refund_info_from_payload`],
/// [`refund_notify::encode`]).
///
/// Refused ([`ProfileError::Encode`]): a payload that is not a JSON object, a field name that
/// is not `[A-Za-z_][A-Za-z0-9_]*`, a `sign` field (Herald signs), a `sign_type` other than
/// the credentials', a payload with neither `transaction_id` nor `out_trade_no` (receivers
/// dedupe on them), a `total_fee` that is not a whole number of fen, and characters XML
/// cannot carry.
pub fn encode(
    c: &Credentials,
    n: &OutgoingNotification<'_>,
) -> Result<EncodedRequest, ProfileError> {
    let encode_err = ProfileError::Encode;
    check_api_key(&c.api_key)
        .map_err(|m| encode_err(format!("the stored credentials are invalid: {m}")))?;
    let object: serde_json::Map<String, Value> = serde_json::from_slice(n.payload)
        .map_err(|e| encode_err(format!("the payload must be a JSON object: {e}")))?;
    if is_refund_event(n.event_type) {
        return refund_notify::encode(c, &refund_info_from_payload(&object)?);
    }

    let mut fields: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in &object {
        if !is_field_name(k) {
            return Err(encode_err(format!(
                "field name {k:?} is not a WeChat field name ([A-Za-z_][A-Za-z0-9_]*)"
            )));
        }
        if k == "sign" {
            return Err(encode_err(
                "the payload must not carry `sign`: Herald signs".into(),
            ));
        }
        let Some(text) = field_text(v) else { continue };
        if let Some(bad) = text.chars().find(|c| !is_xml_char(*c)) {
            return Err(encode_err(format!(
                "field {k} contains U+{:04X}, which XML cannot carry",
                u32::from(bad)
            )));
        }
        fields.insert(k.clone(), text);
    }
    if let Some(st) = fields.get("sign_type") {
        if SignType::parse(st) != Some(c.sign_type) {
            return Err(encode_err(format!(
                "the payload's sign_type differs from the credentials' ({})",
                c.sign_type.as_str()
            )));
        }
    }
    if !["transaction_id", "out_trade_no"]
        .iter()
        .any(|k| fields.get(*k).is_some_and(|v| !v.is_empty()))
    {
        return Err(encode_err(
            "the payload needs a transaction_id or an out_trade_no: WeChat v2 has no notify id, so receivers dedupe on them".into(),
        ));
    }
    if let Some(fee) = fields.get("total_fee") {
        if fee.is_empty() || !fee.bytes().all(|b| b.is_ascii_digit()) {
            return Err(encode_err(
                "total_fee must be a whole, non-negative number of fen".into(),
            ));
        }
    }
    let defaults = [
        ("return_code", "SUCCESS".to_string()),
        ("result_code", "SUCCESS".to_string()),
        ("appid", c.appid.clone()),
        ("mch_id", c.mch_id.clone()),
        ("nonce_str", generate_nonce()),
    ];
    for (k, v) in defaults {
        fields.entry(k.to_string()).or_insert(v);
    }
    let mut pairs: Vec<(String, String)> = fields.into_iter().collect();
    let signature = sign(&pairs, &c.api_key, c.sign_type);
    pairs.push(("sign".to_string(), signature));
    Ok(EncodedRequest {
        content_type: CONTENT_TYPE.to_string(),
        headers: Vec::new(),
        body: to_xml(&pairs).into_bytes(),
    })
}

// ---------------------------------------------------------------------------------------
// Receiving

fn malformed(msg: impl Into<String>) -> ReceiveError {
    ReceiveError::MalformedBody(msg.into())
}

/// Where the parser is in the document.
enum State {
    BeforeRoot,
    InRoot,
    InField { name: String, value: String },
    AfterRoot,
}

fn utf8_name(raw: &[u8]) -> Result<String, ReceiveError> {
    std::str::from_utf8(raw)
        .map(str::to_string)
        .map_err(|_| malformed("an element name is not UTF-8"))
}

/// Parses a WeChat v2 body into its fields, in document order: one `<xml>` root whose
/// children are flat elements holding text, CDATA, character references or the five
/// predefined entities (attributes are ignored; `<k/>` is an empty value). Values are not
/// trimmed. Refused as [`ReceiveError::MalformedBody`]: a `DOCTYPE` (so no DTD and no custom
/// entity can exist: XXE and entity expansion are impossible), any other entity, processing
/// instructions, another root, nested elements, text between fields, duplicate fields, and
/// anything not well-formed or not UTF-8.
pub fn parse_xml(body: &[u8]) -> Result<Vec<(String, String)>, ReceiveError> {
    parse_flat_xml(body, "xml")
}

/// [`parse_xml`] with another root element name (the decrypted refund `<root>`).
fn parse_flat_xml(body: &[u8], root: &str) -> Result<Vec<(String, String)>, ReceiveError> {
    let mut reader = Reader::from_reader(body);
    let mut state = State::BeforeRoot;
    let mut fields: Vec<(String, String)> = Vec::new();
    let has = |fields: &[(String, String)], name: &str| fields.iter().any(|(k, _)| k == name);
    loop {
        let event = reader
            .read_event()
            .map_err(|e| malformed(format!("not well-formed XML: {e}")))?;
        match event {
            Event::Eof => break,
            Event::DocType(_) => {
                return Err(malformed("a DOCTYPE is not allowed (no DTDs, no entities)"))
            }
            Event::PI(_) => return Err(malformed("processing instructions are not allowed")),
            Event::Decl(_) => {
                if !matches!(state, State::BeforeRoot) {
                    return Err(malformed("an XML declaration after the start"));
                }
            }
            Event::Comment(_) => {}
            Event::Start(e) => {
                let name = utf8_name(e.name().as_ref())?;
                state = match state {
                    State::BeforeRoot if name == root => State::InRoot,
                    State::BeforeRoot => {
                        return Err(malformed(format!(
                            "the root element must be <{root}>, not <{name}>"
                        )))
                    }
                    State::InRoot => {
                        if has(&fields, &name) {
                            return Err(malformed(format!("duplicate field {name}")));
                        }
                        State::InField {
                            name,
                            value: String::new(),
                        }
                    }
                    State::InField { name: outer, .. } => {
                        return Err(malformed(format!(
                            "field {outer} contains the element <{name}>: fields are flat"
                        )))
                    }
                    State::AfterRoot => {
                        return Err(malformed(format!(
                            "content after the </{root}> root element"
                        )))
                    }
                };
            }
            Event::Empty(e) => {
                let name = utf8_name(e.name().as_ref())?;
                match &state {
                    State::BeforeRoot if name == root => state = State::AfterRoot,
                    State::BeforeRoot => {
                        return Err(malformed(format!(
                            "the root element must be <{root}>, not <{name}>"
                        )))
                    }
                    State::InRoot => {
                        if has(&fields, &name) {
                            return Err(malformed(format!("duplicate field {name}")));
                        }
                        fields.push((name, String::new()));
                    }
                    State::InField { name: outer, .. } => {
                        return Err(malformed(format!(
                            "field {outer} contains the element <{name}/>: fields are flat"
                        )))
                    }
                    State::AfterRoot => {
                        return Err(malformed(format!(
                            "content after the </{root}> root element"
                        )))
                    }
                }
            }
            Event::End(_) => {
                // The reader checks that end names match their start.
                state = match state {
                    State::InField { name, value } => {
                        fields.push((name, value));
                        State::InRoot
                    }
                    State::InRoot => State::AfterRoot,
                    State::BeforeRoot | State::AfterRoot => {
                        return Err(malformed("an end tag without its start"))
                    }
                };
            }
            Event::Text(t) => {
                let text = t
                    .xml10_content()
                    .map_err(|_| malformed("the body is not UTF-8"))?;
                match &mut state {
                    State::InField { value, .. } => value.push_str(&text),
                    _ if text
                        .bytes()
                        .all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r')) => {}
                    _ => return Err(malformed("text outside the fields")),
                }
            }
            Event::CData(c) => {
                let text = c
                    .xml10_content()
                    .map_err(|_| malformed("the body is not UTF-8"))?;
                match &mut state {
                    State::InField { value, .. } => value.push_str(&text),
                    _ => return Err(malformed("CDATA outside the fields")),
                }
            }
            Event::GeneralRef(r) => {
                let resolved = match r.resolve_char_ref() {
                    Ok(Some(c)) => c,
                    Ok(None) => {
                        let name = r.decode().map_err(|_| malformed("the body is not UTF-8"))?;
                        match name.as_ref() {
                            "lt" => '<',
                            "gt" => '>',
                            "amp" => '&',
                            "apos" => '\'',
                            "quot" => '"',
                            _ => {
                                return Err(malformed(
                                    "only the five predefined XML entities and character references are allowed",
                                ))
                            }
                        }
                    }
                    Err(_) => return Err(malformed("an invalid character reference")),
                };
                match &mut state {
                    State::InField { value, .. } => value.push(resolved),
                    _ => return Err(malformed("a reference outside the fields")),
                }
            }
        }
    }
    match state {
        State::AfterRoot => Ok(fields),
        State::BeforeRoot => Err(malformed(format!("no <{root}> root element"))),
        State::InRoot | State::InField { .. } => {
            Err(malformed(format!("the body ends before </{root}>")))
        }
    }
}

/// The API keys a receiver verifies with, and the merchant's sign type when it is known.
/// `Debug` shows only how many keys there are.
#[derive(Clone)]
pub struct ReceiverKeys {
    api_keys: Vec<String>,
    /// The merchant's configured sign type; `None` = read it from the sign's length.
    sign_type: Option<SignType>,
}

impl ReceiverKeys {
    /// The merchant's sign type (WeChat's account setting): every payment notification is
    /// verified with it, whatever its `sign_type` field says or lacks.
    pub fn with_sign_type(mut self, sign_type: SignType) -> Self {
        self.sign_type = Some(sign_type);
        self
    }

    /// The configured sign type, if any.
    pub fn sign_type(&self) -> Option<SignType> {
        self.sign_type
    }

    /// How many keys are configured.
    pub fn len(&self) -> usize {
        self.api_keys.len()
    }

    /// Always false for keys built by [`receiver_keys`] or [`receiver_keys_from`].
    pub fn is_empty(&self) -> bool {
        self.api_keys.is_empty()
    }
}

impl std::fmt::Debug for ReceiverKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ReceiverKeys(<{} redacted API keys>, sign type {})",
            self.api_keys.len(),
            self.sign_type
                .map_or("from the sign's length", SignType::as_str)
        )
    }
}

/// The receiver's API keys (usually one; two while switching keys, since WeChat v2 has no
/// grace period). Each is trimmed and must be non-empty printable ASCII without spaces
/// (WeChat's are 32 letters and digits; others are accepted for verifying). An empty list, or a key that
/// is not usable, is [`ReceiveError::UnknownKey`] (keys are named by position, never quoted).
pub fn receiver_keys(keys: &[String]) -> Result<ReceiverKeys, ReceiveError> {
    if keys.is_empty() {
        return Err(ReceiveError::UnknownKey("no API key given".into()));
    }
    let mut api_keys = Vec::with_capacity(keys.len());
    for (i, k) in keys.iter().enumerate() {
        let k = k.trim();
        if k.is_empty() || !k.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ReceiveError::UnknownKey(format!(
                "API key #{} is empty or not printable ASCII",
                i + 1
            )));
        }
        api_keys.push(k.to_string());
    }
    Ok(ReceiverKeys {
        api_keys,
        sign_type: None,
    })
}

/// The receiver's keys from stored credentials: their one API key and their sign type.
pub fn receiver_keys_from(c: &Credentials) -> ReceiverKeys {
    ReceiverKeys {
        api_keys: vec![c.api_key.clone()],
        sign_type: Some(c.sign_type),
    }
}

/// Which algorithm verifies a payment notification: the merchant's configured type when
/// there is one, otherwise the sign's length (32 hex digits MD5, 64 HMAC-SHA256). WeChat's
/// HMAC-SHA256 notifications usually carry no `sign_type` field, so the field alone cannot
/// decide. A `sign_type` field that names another algorithm than the one chosen is refused.
fn choose_sign_type(
    configured: Option<SignType>,
    field_value: Option<&str>,
    received: &str,
) -> Result<SignType, ReceiveError> {
    let named = match field_value {
        None => None,
        Some(s) => Some(SignType::parse(s).ok_or_else(|| {
            ReceiveError::BadSignature("unsupported sign_type; expected MD5 or HMAC-SHA256".into())
        })?),
    };
    let chosen = match configured {
        Some(t) => {
            let length_says = match received.len() {
                32 => Some(SignType::Md5),
                64 => Some(SignType::HmacSha256),
                _ => None,
            };
            if let Some(other) = length_says.filter(|l| *l != t) {
                return Err(ReceiveError::BadSignature(format!(
                    "the sign has {} characters, an {} sign, but the merchant is configured for {}",
                    received.len(),
                    other.as_str(),
                    t.as_str()
                )));
            }
            t
        }
        None => match received.len() {
            32 => SignType::Md5,
            64 => SignType::HmacSha256,
            n => {
                return Err(ReceiveError::BadSignature(format!(
                    "the sign has {n} characters: neither MD5 (32 hex digits) nor HMAC-SHA256 (64)"
                )))
            }
        },
    };
    match named {
        Some(n) if n != chosen => Err(ReceiveError::BadSignature(format!(
            "the notification's sign_type is {} but {} ({})",
            n.as_str(),
            chosen.as_str(),
            if configured.is_some() {
                "the merchant's configured sign type"
            } else {
                "read from the sign's length"
            }
        ))),
        _ => Ok(chosen),
    }
}

/// Refuses a `Content-Type` that is not XML (or plain text), and a charset other than UTF-8.
/// An absent `Content-Type` is accepted.
fn check_content_type(req: &IncomingRequest<'_>) -> Result<(), ReceiveError> {
    if let Some(media) = req.media_type() {
        if !matches!(
            media.as_str(),
            "" | "text/xml" | "application/xml" | "text/plain"
        ) {
            return Err(ReceiveError::UnsupportedContentType(media));
        }
    }
    if let Some(charset) = req.charset() {
        if charset != "utf-8" && charset != "utf8" {
            return Err(ReceiveError::Charset(charset));
        }
    }
    Ok(())
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

/// `total_fee` as fen: digits only (no sign, point or spaces).
fn parse_fen(s: &str) -> Result<i64, ReceiveError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ReceiveError::BadAmount(s.to_string()));
    }
    parse_decimal_minor(s, 0)
}

/// Verifies and decodes one notification. A refund notification (`req_info` and no `sign`)
/// is taken by [`refund_notify::verify`]: it is verified by decrypting `req_info`. A payment
/// notification is checked in this order: content type, XML ([`parse_xml`]),
/// `sign` (its algorithm the merchant's configured sign type, else read from the sign's
/// length: 32 hex digits MD5, 64 HMAC-SHA256; compared in constant time,
/// case-insensitively, against every configured key), `return_code` = `SUCCESS`, then the
/// amount (`total_fee`, whole fen, in `fee_type`, `CNY` by default).
///
/// The result: `notify_id` = `transaction_id` (or `out_trade_no` when absent), `app_id` =
/// `appid`, `merchant_id` = `mch_id`, `status` = `trade_state` when present, else
/// `result_code`, and every element in `fields` as a JSON string. A message without `sign`
/// whose `return_code` is not `SUCCESS` is refused with its `return_msg`.
pub fn verify(
    keys: &ReceiverKeys,
    req: &IncomingRequest<'_>,
) -> Result<VerifiedNotification, ReceiveError> {
    verify_detailed(keys, req).map_err(|r| r.error)
}

/// [`verify`], saying whether the sign had verified when a request is refused: a correctly
/// signed payment body without `return_code` `SUCCESS` or without ids is a
/// [`Refusal::signed`]. A refund notification that does not decrypt is unsigned.
pub fn verify_detailed(
    keys: &ReceiverKeys,
    req: &IncomingRequest<'_>,
) -> Result<VerifiedNotification, Refusal> {
    check_content_type(req).map_err(Refusal::unsigned)?;
    let fields = parse_xml(req.body).map_err(Refusal::unsigned)?;
    if refund_notify::is_refund_notify(&fields) {
        return refund_notify::verify(keys, &fields).map_err(Refusal::unsigned);
    }
    check_sign(keys, &fields).map_err(Refusal::unsigned)?;
    decode(&fields).map_err(Refusal::signed)
}

/// The `sign` of a payment notification under any configured key.
fn check_sign(keys: &ReceiverKeys, fields: &[(String, String)]) -> Result<(), ReceiveError> {
    let return_code = field(fields, "return_code");
    let Some(received) = field(fields, "sign") else {
        return Err(match return_code {
            Some(code) if code != "SUCCESS" => malformed(format!(
                "return_code is {code:?}, not SUCCESS, and the message is unsigned (return_msg: {:?})",
                field(fields, "return_msg").unwrap_or("")
            )),
            _ => ReceiveError::Missing("sign".into()),
        });
    };
    let sign_type = choose_sign_type(keys.sign_type, field(fields, "sign_type"), received)?;
    let received = received.to_ascii_uppercase();
    // Check every key, so the time taken does not depend on which one matched.
    let matched = keys.api_keys.iter().fold(Choice::from(0), |acc, key| {
        let expected = sign(fields, key, sign_type);
        if expected.is_empty() {
            acc
        } else {
            acc | expected.as_bytes().ct_eq(received.as_bytes())
        }
    });
    if !bool::from(matched) {
        return Err(ReceiveError::BadSignature(format!(
            "the {} sign does not match the configured API key{}",
            sign_type.as_str(),
            if keys.api_keys.len() > 1 { "s" } else { "" }
        )));
    }
    Ok(())
}

/// The notification of correctly signed payment fields.
fn decode(fields: &[(String, String)]) -> Result<VerifiedNotification, ReceiveError> {
    match field(fields, "return_code") {
        None => return Err(ReceiveError::Missing("return_code".into())),
        Some("SUCCESS") => {}
        Some(code) => {
            return Err(malformed(format!(
                "return_code is {code:?}, not SUCCESS (return_msg: {:?})",
                field(fields, "return_msg").unwrap_or("")
            )))
        }
    }

    let transaction_id = field(fields, "transaction_id").map(str::to_string);
    let out_trade_no = field(fields, "out_trade_no").map(str::to_string);
    let notify_id = transaction_id
        .clone()
        .or_else(|| out_trade_no.clone())
        .ok_or_else(|| ReceiveError::Missing("transaction_id (and out_trade_no)".into()))?;
    let amount = match field(fields, "total_fee") {
        None => None,
        Some(fee) => Some(Amount {
            minor: parse_fen(fee)?,
            currency: field(fields, "fee_type")
                .unwrap_or(DEFAULT_FEE_TYPE)
                .to_ascii_uppercase(),
        }),
    };
    let status = field(fields, "trade_state")
        .or_else(|| field(fields, "result_code"))
        .map(str::to_string);
    Ok(VerifiedNotification {
        profile: crate::Profile::WechatPayV2,
        notify_id,
        app_id: field(fields, "appid").map(str::to_string),
        merchant_id: field(fields, "mch_id").map(str::to_string),
        out_trade_no,
        transaction_id,
        amount,
        status,
        event_type: None,
        fields: fields
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    })
}

/// The string the request's sign covers, with `<API key>` in place of the key (the key is
/// never shown): for debugging a sign that does not match. Needs only a parseable body;
/// `keys` is not used.
///
/// A refund notification has no sign: its explanation says how `req_info` is checked.
pub fn explain(keys: &ReceiverKeys, req: &IncomingRequest<'_>) -> Result<String, ReceiveError> {
    let _ = keys;
    let fields = parse_xml(req.body)?;
    if refund_notify::is_refund_notify(&fields) {
        return Ok(
            "(none: a refund notification is not signed; req_info is AES-256-ECB with PKCS#7 \
             under the lowercase hex MD5 of <API key>, and decrypting it is the check)"
                .to_string(),
        );
    }
    Ok(string_to_sign(&fields, KEY_PLACEHOLDER))
}

fn reply(return_code: &str, return_msg: &str) -> Reply {
    let msg: String = return_msg
        .chars()
        .map(|c| if is_xml_char(c) { c } else { '\u{FFFD}' })
        .collect();
    let mut body = String::from("<xml><return_code>");
    push_text(&mut body, return_code);
    body.push_str("</return_code><return_msg>");
    push_text(&mut body, &msg);
    body.push_str("</return_msg></xml>");
    Reply {
        status: 200,
        content_type: "text/xml",
        body: body.into_bytes(),
    }
}

/// The acknowledgement WeChat expects: 200 with
/// `<xml><return_code><![CDATA[SUCCESS]]></return_code><return_msg><![CDATA[OK]]></return_msg></xml>`.
pub fn ack_reply() -> Reply {
    reply("SUCCESS", "OK")
}

/// "Send again": 200 with the same XML, `FAIL` and `reason` as `return_msg` (in CDATA,
/// `]]>` split safely, characters XML cannot carry replaced by U+FFFD).
pub fn failure_reply(reason: &str) -> Reply {
    reply("FAIL", reason)
}

/// What a WeChat Pay v2 notification means for its order. A refund notification (its
/// decrypted `req_info` present) is one refund of `amount` against the order total
/// `req_info.total_fee`, counted once (its notify id is the `refund_id`); a payment
/// notification pays when `return_code`, `result_code` and the status are all `SUCCESS`.
pub fn read_order(n: &VerifiedNotification) -> Result<crate::order::OrderReading, ReceiveError> {
    use crate::order::{missing, text, OrderEvent, OrderReading};
    if let Some(info) = n.fields.get("req_info").filter(|v| v.is_object()) {
        let refund_status = text(info.get("refund_status"));
        if refund_status != Some("SUCCESS") {
            return Ok(OrderReading::no_change(format!(
                "refund {}",
                refund_status.unwrap_or("(none)")
            )));
        }
        let refund = n
            .amount
            .as_ref()
            .ok_or_else(|| missing("req_info.refund_fee"))?;
        let order_total = text(info.get("total_fee"))
            .ok_or_else(|| missing("req_info.total_fee"))
            .and_then(|t| crate::receive::parse_decimal_minor(t, 0))?;
        return Ok(OrderReading {
            event: OrderEvent::Refund(refund.minor),
            total: Some(crate::receive::Amount {
                minor: order_total,
                currency: refund.currency.clone(),
            }),
        });
    }
    let ok = text(n.fields.get("result_code")) == Some("SUCCESS")
        && text(n.fields.get("return_code")) == Some("SUCCESS")
        && n.status.as_deref() == Some("SUCCESS");
    let event = if ok {
        OrderEvent::Paid
    } else {
        OrderEvent::NoChange(crate::order::status_name(n))
    };
    Ok(OrderReading {
        event,
        total: n.amount.clone(),
    })
}

/// WeChat Pay v2 payments and refunds always carry `appid` and `mch_id`.
pub fn carried_ids(_n: &VerifiedNotification) -> crate::order::CarriedIds {
    crate::order::CarriedIds {
        app_id: Some("appid"),
        merchant_id: Some("mch_id"),
    }
}
