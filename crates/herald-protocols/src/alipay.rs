//! The Alipay open-platform profile: asynchronous trade notifications (`trade_status_sync`)
//! sent as an RSA2-signed `application/x-www-form-urlencoded` POST, the signed return_url
//! browser redirect, and the signed trade-query response.
//!
//! Owns both directions of the wire format: an app's credentials (app id, the platform's RSA
//! signing key, optional seller id) and their views, the string to sign ([`string_to_sign`]),
//! encoding and signing one notification ([`encode`]), and the receiver's side: parsing the
//! form in its charset (UTF-8 or GBK), verifying `RSA2` (SHA256withRSA) or legacy `RSA`
//! (SHA1withRSA, verify only) against any of several public keys, and decoding the result into
//! a [`VerifiedNotification`] ([`verify`]), with the exact replies Alipay expects.
//!
//! Alipay signs one notification with one key, so key rotation here is immediate: the new key
//! signs from the moment [`rotate`] returns, and receivers must be given the new public key
//! (a receiver may hold both while it switches over; [`receiver_keys`] takes several).
//! The private key never appears in `Debug` output, views, or error messages.
use std::collections::BTreeMap;

use encoding_rs::Encoding;
use rand::rngs::OsRng;
use rand::Rng;
use rsa::RsaPublicKey;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use time::macros::format_description;

use crate::keys;
use crate::profile::bad_credentials;
use crate::profile::{EncodedRequest, OutgoingNotification, ProfileError};
use crate::receive::{
    parse_decimal_minor, Amount, IncomingRequest, ReceiveError, Refusal, Reply,
    VerifiedNotification,
};
use crate::{AckRule, RetryPolicy};

/// The profile's name on the wire and in [`VerifiedNotification::profile`].
pub const PROFILE: &str = "alipay";
/// The media type of a notification.
pub const FORM: &str = "application/x-www-form-urlencoded";
/// The sign type Herald signs with (SHA256withRSA).
pub const SIGN_TYPE: &str = "RSA2";
/// China Standard Time, UTC+8 all year (no daylight saving since 1991).
const CHINA_OFFSET_SECS: i32 = 8 * 3600;

/// An Alipay app's signing material, as stored. Its `Debug` redacts the private key.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Credentials {
    /// The open-platform app id (`app_id` on the wire), 16 digits.
    pub app_id: String,
    /// The platform's RSA signing key, PKCS#8 PEM.
    pub private_key: String,
    /// The seller's `2088...` user id (`seller_id` on the wire), when configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seller_id: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("alipay::Credentials")
            .field("app_id", &self.app_id)
            .field("private_key", &"<redacted>")
            .field("seller_id", &self.seller_id)
            .finish()
    }
}

const CREDENTIALS_SHAPE: &str = "credentials for alipay are null (generate everything) or an object with any of app_id, private_key (PEM or base64 DER, PKCS#8 or PKCS#1), seller_id";

/// Checks an id that goes on the wire as is (`app_id`, `seller_id`): 1 to 64 ASCII letters,
/// digits, `_` or `-`.
fn check_id(field: &str, v: &Value) -> Result<Option<String>, ProfileError> {
    match v {
        Value::Null => Ok(None),
        Value::String(s)
            if !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') =>
        {
            Ok(Some(s.clone()))
        }
        _ => Err(bad_credentials(format!(
            "{field} must be a string of 1 to 64 ASCII letters, digits, '_' or '-'"
        ))),
    }
}

fn random_digits(n: usize) -> String {
    (0..n)
        .map(|_| char::from(b'0' + OsRng.gen_range(0..10u8)))
        .collect()
}

/// The view of credentials that may be shown: the app id, the public key (SPKI PEM, and bare
/// base64 as merchants paste it into their Alipay SDK), and the seller id. Never the private key.
fn view(app_id: &str, public: &RsaPublicKey, seller_id: Option<&str>) -> Value {
    let mut v = json!({
        "app_id": app_id,
        "public_key_pem": keys::public_pem(public),
        "public_key": keys::public_base64(public),
    });
    if let (Some(seller_id), Some(map)) = (seller_id, v.as_object_mut()) {
        map.insert("seller_id".into(), Value::String(seller_id.to_string()));
    }
    v
}

/// Credentials for a new app. `options` is `null` / `{}` (generate an RSA-2048 key and a
/// 16-digit `2021...` app id) or an object with any of `app_id`, `private_key` (any form
/// [`keys::parse_private_key`] reads, at least 2048 bits; stored as PKCS#8 PEM) and
/// `seller_id`. Unknown fields are refused. Returns the credentials to store and the view shown
/// once (`app_id`, `public_key_pem`, `public_key`, `seller_id` when set), which holds nothing
/// secret.
pub fn create_credentials(options: &Value) -> Result<(Credentials, Value), ProfileError> {
    let fields = crate::profile::credential_fields(options, CREDENTIALS_SHAPE)?;
    if let Some(k) = fields
        .keys()
        .find(|k| !["app_id", "private_key", "seller_id"].contains(&k.as_str()))
    {
        return Err(bad_credentials(format!(
            "unknown field {k:?}: {CREDENTIALS_SHAPE}"
        )));
    }
    let null = Value::Null;
    let app_id = check_id("app_id", fields.get("app_id").unwrap_or(&null))?
        .unwrap_or_else(|| format!("2021{}", random_digits(12)));
    let seller_id = check_id("seller_id", fields.get("seller_id").unwrap_or(&null))?;
    let (key, private_key) = keys::signing_key_option(fields.get("private_key"))?;
    let shown = view(&app_id, &key.to_public_key(), seller_id.as_deref());
    Ok((
        Credentials {
            app_id,
            private_key,
            seller_id,
        },
        shown,
    ))
}

/// What may be shown about credentials at any time: the same as the once view of
/// [`create_credentials`] (Alipay's credentials have no shared secret). If the stored key cannot
/// be read, the public key fields are left out.
pub fn public_view(c: &Credentials) -> Value {
    match keys::parse_private_key(&c.private_key) {
        Ok(key) => view(&c.app_id, &key.to_public_key(), c.seller_id.as_deref()),
        Err(_) => {
            let mut v = json!({ "app_id": c.app_id });
            if let (Some(s), Some(map)) = (&c.seller_id, v.as_object_mut()) {
                map.insert("seller_id".into(), Value::String(s.clone()));
            }
            v
        }
    }
}

/// A new RSA-2048 key pair for the same app and seller. Alipay carries one signature per
/// notification, so there is no grace period: `grace_until` and `now` are ignored and the new
/// key signs at once. Returns the new credentials and their view.
pub fn rotate(
    c: &Credentials,
    _grace_until: i64,
    _now: i64,
) -> Result<(Credentials, Value), ProfileError> {
    let (key, private_key) = keys::signing_key_option(None)?;
    let shown = view(&c.app_id, &key.to_public_key(), c.seller_id.as_deref());
    Ok((
        Credentials {
            app_id: c.app_id.clone(),
            private_key,
            seller_id: c.seller_id.clone(),
        },
        shown,
    ))
}

/// A fresh notify id in Alipay's shape: the China date (`yyyyMMdd`) then 26 random digits,
/// 34 digits in all (about 86 random bits, so unique without coordination).
pub fn new_notify_id() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0));
    let date = china_time(now, format_description!("[year][month][day]"))
        .unwrap_or_else(|| "19700101".into());
    format!("{date}{}", random_digits(26))
}

/// `ts` (unix seconds) in China time, formatted with a `time` format description.
fn china_time(
    ts: i64,
    format: &[time::format_description::BorrowedFormatItem<'_>],
) -> Option<String> {
    let offset = time::UtcOffset::from_whole_seconds(CHINA_OFFSET_SECS).ok()?;
    let t = time::OffsetDateTime::from_unix_timestamp(ts)
        .ok()?
        .to_offset(offset);
    t.format(format).ok()
}

/// The string to sign of a trade notification or return_url redirect: every parameter except
/// `sign` and `sign_type`, without empty values, sorted by key (byte order), joined as
/// `key=value` with `&`, values as decoded text (no re-encoding).
pub fn string_to_sign(params: &[(String, String)]) -> String {
    join_sorted(params, &["sign", "sign_type"])
}

/// The gateway variant of [`string_to_sign`]: the same, but `sign_type` takes part.
pub fn string_to_sign_keep_sign_type(params: &[(String, String)]) -> String {
    join_sorted(params, &["sign"])
}

fn join_sorted(params: &[(String, String)], excluded: &[&str]) -> String {
    let mut kept: Vec<&(String, String)> = params
        .iter()
        .filter(|(k, v)| !v.is_empty() && !excluded.contains(&k.as_str()))
        .collect();
    kept.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    kept.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// [`string_to_sign`] over raw (percent-decoded, not charset-decoded) bytes: exactly the bytes
/// the sender signed, in the charset of the request.
fn signing_bytes(raw: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut kept: Vec<&(Vec<u8>, Vec<u8>)> = raw
        .iter()
        .filter(|(k, v)| !v.is_empty() && k != b"sign" && k != b"sign_type")
        .collect();
    kept.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = Vec::new();
    for (i, (k, v)) in kept.iter().enumerate() {
        if i > 0 {
            out.push(b'&');
        }
        out.extend_from_slice(k);
        out.push(b'=');
        out.extend_from_slice(v);
    }
    out
}

/// The encoding of a charset name Alipay uses: UTF-8, or GBK / GB2312 (read as GBK) /
/// GB18030.
fn charset_encoding(name: &str) -> Option<&'static Encoding> {
    match name.trim().to_ascii_lowercase().as_str() {
        "utf-8" | "utf8" => Some(encoding_rs::UTF_8),
        "gbk" | "gb2312" => Some(encoding_rs::GBK),
        "gb18030" => Some(encoding_rs::GB18030),
        _ => None,
    }
}

/// Text in `encoding`, refusing characters the charset cannot represent.
fn encode_text(encoding: &'static Encoding, text: &str) -> Option<Vec<u8>> {
    let (bytes, _, unmappable) = encoding.encode(text);
    (!unmappable).then(|| bytes.into_owned())
}

/// One payload value as form text: strings as they are, numbers and booleans as their JSON
/// text, objects and arrays as compact JSON; `None` for null.
fn form_value(raw: &RawValue) -> Result<Option<String>, ProfileError> {
    let text = raw.get();
    let bad = |e: serde_json::Error| ProfileError::Encode(format!("payload value: {e}"));
    match text.as_bytes().first() {
        Some(b'"') => serde_json::from_str::<String>(text).map(Some).map_err(bad),
        Some(b'{') | Some(b'[') => {
            let v: Value = serde_json::from_str(text).map_err(bad)?;
            Ok(Some(v.to_string()))
        }
        Some(b'n') => Ok(None),
        _ => Ok(Some(text.to_string())),
    }
}

/// Encodes and signs one notification attempt.
///
/// The payload must be a JSON object; each member becomes a form field (strings as is, numbers
/// and booleans as their JSON text, objects and arrays as compact JSON, nulls dropped). Herald
/// adds the common fields the payload does not set: `notify_id`, `notify_time` (the attempt's
/// time in China time, `yyyy-MM-dd HH:mm:ss`), `notify_type` (`trade_status_sync`), `app_id`,
/// `seller_id` (when configured), `charset` (`utf-8`) and `version` (`1.0`); `sign_type`
/// (`RSA2`) and `sign` are always Herald's. A payload `charset` of `gbk`, `gb2312` or
/// `gb18030` sends (and signs) the form in that charset.
pub fn encode(
    c: &Credentials,
    n: &OutgoingNotification<'_>,
) -> Result<EncodedRequest, ProfileError> {
    let members: BTreeMap<String, Box<RawValue>> =
        serde_json::from_slice(n.payload).map_err(|e| {
            ProfileError::Encode(format!(
                "the alipay payload must be a JSON object of form fields: {e}"
            ))
        })?;
    let mut fields: BTreeMap<String, String> = BTreeMap::new();
    for (k, raw) in &members {
        if k.is_empty() {
            return Err(ProfileError::Encode(
                "a payload field has an empty name".into(),
            ));
        }
        if k == "sign" || k == "sign_type" {
            continue;
        }
        if let Some(v) = form_value(raw)? {
            fields.insert(k.clone(), v);
        }
    }
    let notify_time = china_time(
        n.timestamp.get(),
        format_description!("[year]-[month]-[day] [hour]:[minute]:[second]"),
    )
    .ok_or_else(|| ProfileError::Encode(format!("timestamp {} is out of range", n.timestamp)))?;
    let mut defaults = vec![
        ("notify_id", n.notify_id.to_string()),
        ("notify_time", notify_time),
        ("notify_type", "trade_status_sync".to_string()),
        ("app_id", c.app_id.clone()),
        ("charset", "utf-8".to_string()),
        ("version", "1.0".to_string()),
    ];
    if let Some(seller_id) = &c.seller_id {
        defaults.push(("seller_id", seller_id.clone()));
    }
    for (k, v) in defaults {
        fields.entry(k.to_string()).or_insert(v);
    }
    let charset = fields
        .get("charset")
        .map(|s| s.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let encoding = charset_encoding(&charset).ok_or_else(|| {
        ProfileError::Encode(format!(
            "charset {charset:?} is not supported; expected utf-8, gbk, gb2312 or gb18030"
        ))
    })?;
    let mut params: Vec<(String, String)> = fields.into_iter().collect();
    let to_sign = encode_text(encoding, &string_to_sign(&params)).ok_or_else(|| {
        ProfileError::Encode(format!(
            "the payload has characters that charset {charset} cannot represent"
        ))
    })?;
    let sign = keys::sign_sha256_cached(&c.private_key, &to_sign).map_err(ProfileError::Sign)?;
    params.push(("sign_type".into(), SIGN_TYPE.into()));
    params.push(("sign".into(), sign));

    let encode_override: &dyn Fn(&str) -> std::borrow::Cow<'_, [u8]> =
        &|s: &str| encoding.encode(s).0;
    let mut form = form_urlencoded::Serializer::new(String::new());
    if encoding != encoding_rs::UTF_8 {
        form.encoding_override(Some(encode_override));
    }
    for (k, v) in &params {
        form.append_pair(k, v);
    }
    let label = if encoding == encoding_rs::UTF_8 {
        "utf-8"
    } else {
        charset.as_str()
    };
    Ok(EncodedRequest {
        method: "POST",
        query: String::new(),
        content_type: format!("{FORM}; charset={label}"),
        headers: Vec::new(),
        body: form.finish().into_bytes(),
    })
}

fn signing_key(c: &Credentials) -> Result<rsa::RsaPrivateKey, ProfileError> {
    keys::parse_private_key(&c.private_key)
        .map_err(|e| ProfileError::BadCredentials(format!("the stored alipay private_key: {e}")))
}

/// Signs a parameter list the way Alipay signs return_url redirects and gateway replies:
/// removes any `sign` / `sign_type`, then appends `sign_type=RSA2` and the `sign` over
/// [`string_to_sign`] of the parameters (as UTF-8).
pub fn sign_params(
    c: &Credentials,
    params: &mut Vec<(String, String)>,
) -> Result<(), ProfileError> {
    params.retain(|(k, _)| k != "sign" && k != "sign_type");
    let sign = keys::sign_sha256_cached(&c.private_key, string_to_sign(params).as_bytes())
        .map_err(ProfileError::Sign)?;
    params.push(("sign_type".into(), SIGN_TYPE.into()));
    params.push(("sign".into(), sign));
    Ok(())
}

/// The `sign` of a trade-query style response: RSA2 over the raw JSON text of its
/// `*_response` object, byte for byte.
pub fn sign_query_response(
    c: &Credentials,
    response_json_text: &str,
) -> Result<String, ProfileError> {
    keys::sign_sha256_cached(&c.private_key, response_json_text.as_bytes())
        .map_err(ProfileError::Sign)
}

/// Whether `sig` (RSA2) over the raw `*_response` JSON text verifies under any receiver key.
pub fn verify_query_response(keys: &ReceiverKeys, response_json_text: &str, sig: &str) -> bool {
    keys.public_keys
        .iter()
        .any(|k| keys::verify_sha256(k, response_json_text.as_bytes(), sig))
}

/// The public keys a receiver accepts Alipay signatures from (several during a key change).
#[derive(Clone)]
pub struct ReceiverKeys {
    pub public_keys: Vec<RsaPublicKey>,
}

impl std::fmt::Debug for ReceiverKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "alipay::ReceiverKeys({} public keys)",
            self.public_keys.len()
        )
    }
}

/// Receiver keys from strings: each a public key in any form [`keys::parse_public_key`] reads,
/// or the path of a file holding one. At least one is required.
pub fn receiver_keys(keys: &[String]) -> Result<ReceiverKeys, ReceiveError> {
    if keys.is_empty() {
        return Err(ReceiveError::Missing("Alipay public key".into()));
    }
    let public_keys = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            keys::parse_public_key(&keys::read_key_arg(k))
                .map_err(|e| ReceiveError::UnknownKey(format!("public key {}: {e}", i + 1)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ReceiverKeys { public_keys })
}

/// Receiver keys that verify what `c` signs.
pub fn receiver_keys_from(c: &Credentials) -> Result<ReceiverKeys, ProfileError> {
    Ok(ReceiverKeys {
        public_keys: vec![signing_key(c)?.to_public_key()],
    })
}

/// Percent-decoded parameters as bytes, before charset decoding.
type RawPairs = Vec<(Vec<u8>, Vec<u8>)>;

/// A request's parameters: raw bytes (for the signature) and decoded text, in order.
struct Params {
    raw: RawPairs,
    text: Vec<(String, String)>,
}

impl Params {
    fn get(&self, key: &str) -> Option<&str> {
        self.text
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }
}

/// Splits `a=1&b=2` into percent-decoded byte pairs (`+` is a space). A part without `=` is
/// refused: Alipay never sends one, and as an empty value it would escape the signature.
fn raw_pairs(data: &[u8]) -> Result<RawPairs, ReceiveError> {
    let decode = |part: &[u8]| -> Vec<u8> {
        let spaced: Vec<u8> = part
            .iter()
            .map(|&b| if b == b'+' { b' ' } else { b })
            .collect();
        percent_encoding::percent_decode(&spaced).collect()
    };
    data.split(|&b| b == b'&')
        .filter(|part| !part.is_empty())
        .map(|part| match part.iter().position(|&b| b == b'=') {
            Some(i) => Ok((decode(&part[..i]), decode(&part[i + 1..]))),
            None => Err(ReceiveError::MalformedBody(
                "a parameter has no '=' (expected key=value pairs joined by '&')".into(),
            )),
        })
        .collect()
}

/// Reads the parameters of a notification (POST form) or return_url redirect (GET query),
/// decoded with the request's charset: the `charset` of `Content-Type`, else the `charset`
/// field, else UTF-8.
fn read_params(req: &IncomingRequest<'_>) -> Result<Params, ReceiveError> {
    let (data, header_charset) = if req.method.eq_ignore_ascii_case("POST") {
        match req.media_type() {
            Some(m) if m == FORM => {}
            other => {
                return Err(ReceiveError::UnsupportedContentType(
                    other.unwrap_or_default(),
                ))
            }
        }
        (req.body, req.charset())
    } else if req.method.eq_ignore_ascii_case("GET") {
        (req.query.as_bytes(), None)
    } else {
        return Err(ReceiveError::MalformedBody(format!(
            "method {:?} is neither POST (notification) nor GET (return_url)",
            req.method
        )));
    };
    let raw = raw_pairs(data)?;
    let charset = header_charset
        .or_else(|| {
            raw.iter()
                .find(|(k, _)| k == b"charset")
                .map(|(_, v)| String::from_utf8_lossy(v).trim().to_ascii_lowercase())
                .filter(|v| !v.is_empty())
        })
        .unwrap_or_else(|| "utf-8".into());
    let encoding =
        charset_encoding(&charset).ok_or_else(|| ReceiveError::Charset(charset.clone()))?;
    let decode = |bytes: &[u8]| {
        encoding
            .decode_without_bom_handling_and_without_replacement(bytes)
            .map(|s| s.into_owned())
            .ok_or_else(|| {
                ReceiveError::MalformedBody(format!("a parameter is not valid {charset}"))
            })
    };
    let mut text: Vec<(String, String)> = Vec::with_capacity(raw.len());
    for (k, v) in &raw {
        let k = decode(k)?;
        if text.iter().any(|(seen, _)| *seen == k) {
            return Err(ReceiveError::MalformedBody(format!(
                "parameter {k:?} appears more than once"
            )));
        }
        text.push((k, decode(v)?));
    }
    Ok(Params { raw, text })
}

/// Verifies an Alipay notification (form POST) or return_url redirect (GET with the
/// parameters in the query) and decodes it.
///
/// The signature must verify over the string to sign in the request's own charset (GBK bytes
/// for `gbk`) under any of `keys`: `sign_type` `RSA2` (or absent) is SHA256withRSA, `RSA` is
/// the legacy SHA1withRSA. The amount is `total_amount` in fen (CNY); the notify id is
/// `notify_id`, or `trade_no` for a return_url redirect, which has none.
pub fn verify(
    keys: &ReceiverKeys,
    req: &IncomingRequest<'_>,
) -> Result<VerifiedNotification, ReceiveError> {
    verify_detailed(keys, req).map_err(|r| r.error)
}

/// [`verify`], saying whether the signature had verified when a request is refused.
pub fn verify_detailed(
    keys: &ReceiverKeys,
    req: &IncomingRequest<'_>,
) -> Result<VerifiedNotification, Refusal> {
    let params = read_params(req).map_err(Refusal::unsigned)?;
    check_signature(keys, &params).map_err(Refusal::unsigned)?;
    decode(&params).map_err(Refusal::signed)
}

/// `sign` under any configured public key, by `sign_type`.
fn check_signature(keys: &ReceiverKeys, params: &Params) -> Result<(), ReceiveError> {
    let sign = params
        .get("sign")
        .ok_or_else(|| ReceiveError::Missing("sign".into()))?;
    let sha1 = match params.get("sign_type") {
        None | Some("RSA2") => false,
        Some("RSA") => true,
        Some(other) => {
            return Err(ReceiveError::BadSignature(format!(
                "unsupported sign_type {other:?}; expected RSA2 or RSA"
            )))
        }
    };
    if keys.public_keys.is_empty() {
        return Err(ReceiveError::UnknownKey(
            "no Alipay public key is configured".into(),
        ));
    }
    let message = signing_bytes(&params.raw);
    let verified = keys.public_keys.iter().any(|k| {
        if sha1 {
            keys::verify_sha1(k, &message, sign)
        } else {
            keys::verify_sha256(k, &message, sign)
        }
    });
    if !verified {
        return Err(ReceiveError::BadSignature(
            "sign does not verify under any configured Alipay public key".into(),
        ));
    }
    Ok(())
}

/// The notification of correctly signed parameters.
fn decode(params: &Params) -> Result<VerifiedNotification, ReceiveError> {
    let get = |k: &str| params.get(k).map(str::to_string);
    let notify_id = get("notify_id")
        .or_else(|| get("trade_no"))
        .ok_or_else(|| ReceiveError::Missing("notify_id".into()))?;
    let amount = match params.get("total_amount") {
        Some(total) => Some(Amount {
            minor: parse_decimal_minor(total, 2)?,
            currency: "CNY".into(),
        }),
        None => None,
    };
    Ok(VerifiedNotification {
        profile: crate::Profile::Alipay,
        notify_id,
        app_id: get("app_id"),
        merchant_id: get("seller_id"),
        out_trade_no: get("out_trade_no"),
        transaction_id: get("trade_no"),
        amount,
        status: get("trade_status"),
        event_type: get("notify_type").or_else(|| get("method")),
        fields: params
            .text
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    })
}

/// The exact string to sign of a request, as decoded text: what the signature must cover.
pub fn explain(req: &IncomingRequest<'_>) -> Result<String, ReceiveError> {
    Ok(string_to_sign(&read_params(req)?.text))
}

/// The acknowledgement Alipay expects: 200 with the body exactly `success`.
pub fn ack_reply() -> Reply {
    Reply {
        status: 200,
        content_type: "text/plain",
        body: b"success".to_vec(),
    }
}

/// A refusal: 200 with `fail` (Alipay resends on anything but `success`; the reason is for
/// the receiver's own log, not the wire).
pub fn failure_reply(_reason: &str) -> Reply {
    Reply {
        status: 200,
        content_type: "text/plain",
        body: b"fail".to_vec(),
    }
}

/// Alipay's schedule: 8 notifications in about 25 hours.
pub fn default_retry() -> RetryPolicy {
    RetryPolicy::named(PROFILE).unwrap_or_else(RetryPolicy::standard)
}

/// A 2xx whose body is `success`.
pub fn default_ack() -> AckRule {
    AckRule::Body("success".into())
}

/// What an Alipay notification means for its order. Payment notifications may carry
/// `refund_fee=0.00` (and `gmt_close`) while `trade_status=TRADE_SUCCESS`: Alipay's own
/// notify sample does. Only a refund fee above zero makes a refund (the cumulative refunded
/// total); otherwise the trade status decides; a negative fee is refused.
pub fn read_order(n: &VerifiedNotification) -> Result<crate::order::OrderReading, ReceiveError> {
    use crate::order::{text, OrderEvent, OrderReading};
    let refund = match text(n.fields.get("refund_fee")) {
        Some(fee) => match crate::receive::parse_decimal_minor(fee, 2)? {
            r if r > 0 => Some(r),
            0 => None,
            _ => return Err(ReceiveError::BadAmount(fee.into())),
        },
        None => None,
    };
    let event = match (n.status.as_deref(), refund) {
        (Some("TRADE_SUCCESS" | "TRADE_FINISHED" | "TRADE_CLOSED"), Some(r)) => {
            OrderEvent::RefundedTotal(r)
        }
        (Some("TRADE_SUCCESS" | "TRADE_FINISHED"), None) => OrderEvent::Paid,
        (Some("TRADE_CLOSED"), None) => OrderEvent::ClosedOrRefunded,
        _ => OrderEvent::NoChange(crate::order::status_name(n)),
    };
    Ok(OrderReading {
        event,
        total: n.amount.clone(),
    })
}

/// Alipay notifications always carry `app_id`; its notify parameters list `seller_id` as
/// optional, so that one is checked only when present (a genuine payment must never be
/// refused for lacking it).
pub fn carried_ids(_n: &VerifiedNotification) -> crate::order::CarriedIds {
    crate::order::CarriedIds {
        app_id: Some("app_id"),
        merchant_id: None,
    }
}

#[cfg(test)]
mod error_tests {
    use super::*;

    #[test]
    fn a_private_key_that_cannot_sign_keeps_the_key_error_as_its_source() {
        let c = Credentials {
            app_id: "2021000000000001".into(),
            private_key: "-----BEGIN PRIVATE KEY-----\nc2VjcmV0c3R1ZmY=\n-----END PRIVATE KEY-----"
                .into(),
            seller_id: None,
        };
        let mut params = vec![("out_trade_no".to_string(), "T1".to_string())];
        let err = sign_params(&c, &mut params).unwrap_err();
        assert!(matches!(err, ProfileError::Sign(_)), "{err:?}");
        let key_err = std::error::Error::source(&err)
            .and_then(|s| s.downcast_ref::<keys::KeyError>())
            .unwrap_or_else(|| panic!("the key's error is kept under {err:?}"));
        assert!(
            matches!(key_err, keys::KeyError::BadPrivateKey(_)),
            "{key_err:?}"
        );
        // Down to the DER parser's own error, and no key text on the way.
        let parser = std::error::Error::source(key_err)
            .and_then(std::error::Error::source)
            .expect("the parser's error");
        assert!(
            parser.downcast_ref::<rsa::pkcs8::Error>().is_some(),
            "{parser:?}"
        );
        assert!(!err.to_string().contains("c2Vj"), "{err}");
    }
}
