//! Configurable aggregator dialects: profile `dialect`.
//!
//! Many payment aggregators (the PHP "EPay"/易支付 family and its forks) sign notifications
//! with their own variant of "sort the fields, append the key, hash". Rather than one module
//! per aggregator, this profile is parameterised by a [`Dialect`]: the canonical form
//! (sorted form pairs, the JSON body's top-level fields, or the raw body), which fields are
//! excluded and whether empty ones are dropped, where the key goes (appended raw, appended as
//! `&key=`, as the HMAC key, or nowhere for RSA), the algorithm (MD5, SHA-256, HMAC-SHA256,
//! SHA256withRSA), the hex case, where the signature travels (a field or a header), the field
//! names of the order reference, amount, status and notify id, the paid status value, and the
//! acknowledgement text. [`Dialect::preset`] names the known ones (`epay`).
//!
//! Owns both directions for any dialect: the merchant's credentials (the dialect, the key,
//! fixed fields such as EPay's `pid`), the string to sign ([`string_to_sign`]), encoding one
//! attempt ([`encode`]: a GET with the fields in the query, or a POST form / JSON / raw
//! body), verifying and decoding a request ([`verify`], [`explain`]) and the plain replies.
//!
//! The dialect is part of the app's stored credentials (no separate store field): the
//! delivery side reads it there, a receiver gets it from its configuration (`--dialect epay`
//! or a TOML/JSON file deserialised into [`Dialect`]). Keys never leave the module readable:
//! `Debug` redacts them, errors never quote them, [`explain`] writes `<key>` in their place.
//! Digests are RustCrypto's (`md-5`, `sha2`, `hmac`); RSA goes through [`crate::keys`];
//! hex signatures are compared in constant time and case-insensitively.
use std::collections::BTreeMap;
use std::fmt::Write as _;

use hmac::{Hmac, Mac};
use rand::rngs::OsRng;
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::ack::AckRule;
use crate::keys;
use crate::profile::{bad_credentials, EncodedRequest, OutgoingNotification, ProfileError};
use crate::receive::{
    parse_decimal_minor, Amount, IncomingRequest, ReceiveError, Refusal, Reply,
    VerifiedNotification,
};
use crate::retry::RetryPolicy;

/// The profile's name.
pub const PROFILE: &str = "dialect";
/// The [`VerifiedNotification::event_type`] of a notification whose status is the dialect's
/// paid value (the receiver's state machine reads it; the raw status is in `status`).
pub const PAID_EVENT: &str = "paid";
/// The names [`Dialect::preset`] knows.
pub const PRESETS: [&str; 1] = ["epay"];
/// The length of a generated shared key.
pub const KEY_LEN: usize = 32;

const KEY_PLACEHOLDER: &str = "<key>";
const FORM: &str = "application/x-www-form-urlencoded";

/// What the signature covers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Canonical {
    /// The form (or query) pairs, sorted by name, `k=v` joined with `&`.
    #[default]
    Form,
    /// The JSON body's top-level fields, sorted by name, `k=v` joined with `&` (strings as
    /// they are, other values as compact JSON).
    Json,
    /// The raw body bytes (the signature must then be in a header).
    Raw,
}

/// Where the key goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyPlacement {
    /// Appended to the string directly (`...&v=1KEY`): EPay.
    Append,
    /// Appended as `&key=KEY` (Tenpay / WeChat style).
    AppendParam,
    /// The HMAC key (with `hmac-sha256`).
    Hmac,
    /// Not in the string (with `rsa-sha256`: the key signs).
    None,
}

/// The signature algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    Md5,
    Sha256,
    HmacSha256,
    /// SHA256withRSA (Alipay's "RSA2"), base64.
    RsaSha256,
}

/// The case of a hex signature when sending (receiving accepts either).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HexCase {
    #[default]
    Lower,
    Upper,
}

/// Where the signature travels.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignaturePlacement {
    /// A field of the form / query / JSON body.
    Field(String),
    /// A request header.
    Header(String),
}

/// How a notification is sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Method {
    /// The fields in the URL query (EPay's asynchronous notification).
    #[default]
    #[serde(rename = "GET")]
    Get,
    /// The fields in the body (a form, or JSON / raw per the canonical form).
    #[serde(rename = "POST")]
    Post,
}

/// The field names a receiver reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldNames {
    /// The merchant's order reference.
    pub out_trade_no: String,
    /// The amount.
    pub amount: String,
    /// Digits after the point in the amount (`2` for yuan like `1.00`, `0` for fen).
    #[serde(default = "two")]
    pub amount_decimals: u32,
    /// The currency of the amount.
    #[serde(default = "cny")]
    pub currency: String,
    /// The status field.
    pub status: String,
    /// The status value that means paid.
    pub paid_value: String,
    /// The dedupe key (the aggregator's trade number when it has no notify id).
    pub notify_id: String,
    /// The aggregator's transaction id, when it has one.
    #[serde(default)]
    pub transaction_id: Option<String>,
    /// The merchant id field (EPay's `pid`), when there is one.
    #[serde(default)]
    pub merchant_id: Option<String>,
}

fn two() -> u32 {
    2
}
fn cny() -> String {
    "CNY".into()
}
fn yes() -> bool {
    true
}
fn default_exclude() -> Vec<String> {
    vec!["sign".into(), "sign_type".into()]
}

/// One aggregator's signing variant. Deserialises from JSON or TOML (unknown keys refused);
/// [`Dialect::check`] refuses inconsistent combinations.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dialect {
    /// A name for logs and views (a preset's name).
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub canonical: Canonical,
    /// Fields left out of the string to sign (`sign`, `sign_type` by default).
    #[serde(default = "default_exclude")]
    pub exclude: Vec<String>,
    /// Whether fields with an empty value are left out.
    #[serde(default = "yes")]
    pub drop_empty: bool,
    pub key_placement: KeyPlacement,
    pub algorithm: Algorithm,
    #[serde(default)]
    pub hex_case: HexCase,
    pub signature: SignaturePlacement,
    /// How Herald sends it (GET query by default).
    #[serde(default)]
    pub method: Method,
    pub fields: FieldNames,
    /// Fields sent with every notification when the payload lacks them (EPay:
    /// `sign_type=MD5`).
    #[serde(default)]
    pub constants: BTreeMap<String, String>,
    /// The acknowledgement body (a 2xx with exactly this text, surrounding whitespace aside).
    pub ack: String,
}

impl Dialect {
    /// A named preset: `epay` (pid, trade_no, out_trade_no, type, name, money,
    /// trade_status=TRADE_SUCCESS, sign = lower-case MD5 of the sorted non-empty pairs
    /// except sign and sign_type with the key appended directly, sign_type=MD5, sent as a
    /// GET, acknowledged with `success`).
    pub fn preset(name: &str) -> Option<Dialect> {
        match name.trim().to_ascii_lowercase().as_str() {
            "epay" => Some(Dialect::epay()),
            _ => None,
        }
    }

    /// The `epay` preset (see [`Dialect::preset`]).
    pub fn epay() -> Dialect {
        Dialect {
            name: Some("epay".into()),
            canonical: Canonical::Form,
            exclude: default_exclude(),
            drop_empty: true,
            key_placement: KeyPlacement::Append,
            algorithm: Algorithm::Md5,
            hex_case: HexCase::Lower,
            signature: SignaturePlacement::Field("sign".into()),
            method: Method::Get,
            fields: FieldNames {
                out_trade_no: "out_trade_no".into(),
                amount: "money".into(),
                amount_decimals: 2,
                currency: "CNY".into(),
                status: "trade_status".into(),
                paid_value: "TRADE_SUCCESS".into(),
                notify_id: "trade_no".into(),
                transaction_id: Some("trade_no".into()),
                merchant_id: Some("pid".into()),
            },
            constants: BTreeMap::from([("sign_type".to_string(), "MD5".to_string())]),
            ack: "success".into(),
        }
    }

    /// A preset by name, or a dialect given as a JSON object (what an app's `credentials.dialect`
    /// holds), checked.
    pub fn from_value(v: &Value) -> Result<Dialect, String> {
        let d = match v {
            Value::String(name) => Dialect::preset(name).ok_or_else(|| {
                format!(
                    "unknown dialect preset {name:?}; expected one of: {}, or a dialect object",
                    PRESETS.join(", ")
                )
            })?,
            Value::Object(_) => serde_json::from_value::<Dialect>(v.clone())
                .map_err(|e| format!("invalid dialect: {e}"))?,
            _ => return Err("dialect must be a preset name or an object".into()),
        };
        d.check()?;
        Ok(d)
    }

    /// Refuses combinations that cannot work: HMAC without the HMAC key placement (and the
    /// other way round), RSA with a key in the string, a raw canonical form with the
    /// signature in a field, a signature field that is not excluded from the string it
    /// signs, a GET of a JSON or raw body, empty names, an ack that is empty or not one line.
    pub fn check(&self) -> Result<(), String> {
        use Algorithm::*;
        use KeyPlacement as K;
        match (self.algorithm, self.key_placement) {
            (HmacSha256, K::Hmac) | (RsaSha256, K::None) => {}
            (Md5 | Sha256, K::Append | K::AppendParam) => {}
            (HmacSha256, _) => return Err("hmac-sha256 needs key_placement = \"hmac\"".into()),
            (RsaSha256, _) => return Err("rsa-sha256 needs key_placement = \"none\"".into()),
            (_, K::Hmac) => return Err("key_placement \"hmac\" needs hmac-sha256".into()),
            (_, K::None) => return Err("key_placement \"none\" needs rsa-sha256".into()),
        }
        match &self.signature {
            SignaturePlacement::Field(f) => {
                if self.canonical == Canonical::Raw {
                    return Err(
                        "a raw canonical form needs the signature in a header, not a field".into(),
                    );
                }
                if !self.exclude.iter().any(|e| e == f) {
                    return Err(format!(
                        "the signature field {f:?} must be in exclude (a signature cannot cover itself)"
                    ));
                }
            }
            SignaturePlacement::Header(h) => {
                if h.is_empty()
                    || !h
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                {
                    return Err(format!("signature header {h:?} is not a header name"));
                }
            }
        }
        if self.method == Method::Get && self.canonical != Canonical::Form {
            return Err(
                "method GET sends the fields in the query: it needs canonical = \"form\"".into(),
            );
        }
        let f = &self.fields;
        for (what, v) in [
            ("fields.out_trade_no", &f.out_trade_no),
            ("fields.amount", &f.amount),
            ("fields.status", &f.status),
            ("fields.paid_value", &f.paid_value),
            ("fields.notify_id", &f.notify_id),
            ("fields.currency", &f.currency),
        ] {
            if v.trim().is_empty() {
                return Err(format!("{what} must not be empty"));
            }
        }
        if f.amount_decimals > 4 {
            return Err("fields.amount_decimals must be 0 to 4".into());
        }
        if self.ack.trim().is_empty() || self.ack.contains(['\r', '\n']) {
            return Err("ack must be one non-empty line".into());
        }
        Ok(())
    }

    /// The name shown in logs and views.
    pub fn label(&self) -> &str {
        self.name.as_deref().unwrap_or("custom")
    }

    fn is_rsa(&self) -> bool {
        self.algorithm == Algorithm::RsaSha256
    }
}

// ---------------------------------------------------------------------------------------
// Signing

/// The value of a JSON field in the string to sign: strings as they are, other values as
/// compact JSON, `null` as empty.
fn json_text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The bytes the signature covers for these pairs (form / JSON canonical forms) or this
/// body (raw), with `key` placed as the dialect says (nothing for HMAC and RSA).
pub fn string_to_sign(
    d: &Dialect,
    pairs: &[(String, String)],
    raw_body: &[u8],
    key: &str,
) -> Vec<u8> {
    let mut out: Vec<u8> = match d.canonical {
        Canonical::Raw => raw_body.to_vec(),
        Canonical::Form | Canonical::Json => {
            let mut kept: Vec<&(String, String)> = pairs
                .iter()
                .filter(|(k, v)| !(d.exclude.contains(k) || d.drop_empty && v.is_empty()))
                .collect();
            kept.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            let mut s = String::new();
            for (i, (k, v)) in kept.iter().enumerate() {
                if i > 0 {
                    s.push('&');
                }
                let _ = write!(s, "{k}={v}");
            }
            s.into_bytes()
        }
    };
    match d.key_placement {
        KeyPlacement::Append => out.extend_from_slice(key.as_bytes()),
        KeyPlacement::AppendParam => {
            out.extend_from_slice(b"&key=");
            out.extend_from_slice(key.as_bytes());
        }
        KeyPlacement::Hmac | KeyPlacement::None => {}
    }
    out
}

fn hex(bytes: &[u8], case: HexCase) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = match case {
            HexCase::Lower => write!(s, "{b:02x}"),
            HexCase::Upper => write!(s, "{b:02X}"),
        };
    }
    s
}

/// The hex signature of `msg` for the shared-key algorithms (MD5, SHA-256, HMAC-SHA256).
fn hex_signature(d: &Dialect, msg: &[u8], key: &str) -> Option<String> {
    use sha2::Digest;
    Some(match d.algorithm {
        Algorithm::Md5 => hex(&md5::Md5::digest(msg), d.hex_case),
        Algorithm::Sha256 => hex(&Sha256::digest(msg), d.hex_case),
        Algorithm::HmacSha256 => {
            let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).ok()?;
            mac.update(msg);
            hex(&mac.finalize().into_bytes(), d.hex_case)
        }
        Algorithm::RsaSha256 => return None,
    })
}

// ---------------------------------------------------------------------------------------
// Credentials

/// A merchant's dialect material. Serialized into the store as JSON; `key` is a shared
/// secret (or an RSA private key), so `Debug` redacts it.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Credentials {
    pub dialect: Dialect,
    /// The shared key, or the RSA private key (PKCS#8 PEM) for `rsa-sha256`.
    pub key: String,
    /// Fields sent with every notification (EPay's `pid`).
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("dialect", &self.dialect.label())
            .field("key", &format_args!("<redacted>"))
            .field("fields", &self.fields)
            .finish()
    }
}

const CREDENTIALS_SHAPE: &str = "credentials for dialect are null (the epay preset, everything generated) or an object with any of \"dialect\" (a preset name such as \"epay\", or a dialect object), \"key\" (the shared key, or for rsa-sha256 the RSA private key) and \"fields\" (an object of strings sent with every notification, e.g. {\"pid\": \"1001\"})";

fn random_key() -> String {
    OsRng
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(KEY_LEN)
        .map(char::from)
        .collect()
}

fn check_shared_key(v: &str) -> Result<(), ProfileError> {
    if v.is_empty() || v.len() > 256 || !v.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad_credentials(format!(
            "key must be 1 to 256 printable ASCII characters without spaces (got {} characters)",
            v.chars().count()
        )));
    }
    Ok(())
}

fn views(c: &Credentials, with_secret: bool) -> Result<Value, ProfileError> {
    let mut view = serde_json::json!({
        "dialect": c.dialect,
        "fields": c.fields,
    });
    if c.dialect.is_rsa() {
        let private = keys::parse_private_key(&c.key)
            .map_err(|_| bad_credentials("key is not a usable RSA private key"))?;
        view["public_key"] = Value::String(keys::public_base64(&private.to_public_key()));
    } else if with_secret {
        view["key"] = Value::String(c.key.clone());
    }
    Ok(view)
}

/// Credentials for a new app: `null` (the `epay` preset, a generated key and `pid`) or an
/// object with any of `dialect`, `key` and `fields`. When the dialect names a merchant id
/// field that `fields` lacks, a 4-digit one is generated (EPay's `pid` looks like `1001`).
/// The view shown once has the dialect, the fields and the key (for RSA, the public key).
pub fn create_credentials(options: &Value) -> Result<(Credentials, Value), ProfileError> {
    let given = crate::profile::credential_fields(options, CREDENTIALS_SHAPE)?;
    if given
        .keys()
        .any(|k| !matches!(k.as_str(), "dialect" | "key" | "fields"))
    {
        return Err(bad_credentials(format!(
            "unknown field in credentials: {CREDENTIALS_SHAPE}"
        )));
    }
    let dialect = match given.get("dialect") {
        None | Some(Value::Null) => Dialect::epay(),
        Some(v) => Dialect::from_value(v).map_err(bad_credentials)?,
    };
    let mut fields = BTreeMap::new();
    match given.get("fields") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (k, v) in m {
                let Value::String(s) = v else {
                    return Err(bad_credentials(format!("fields.{k} must be a string")));
                };
                if k.is_empty() || k.contains(['&', '=']) {
                    return Err(bad_credentials(format!(
                        "fields: {k:?} is not a field name"
                    )));
                }
                fields.insert(k.clone(), s.clone());
            }
        }
        Some(_) => return Err(bad_credentials("fields must be an object of strings")),
    }
    if let Some(mid) = &dialect.fields.merchant_id {
        fields
            .entry(mid.clone())
            .or_insert_with(|| format!("{}", OsRng.gen_range(1000u32..10_000)));
    }
    let key = match (given.get("key"), dialect.is_rsa()) {
        (None | Some(Value::Null), false) => random_key(),
        (None | Some(Value::Null), true) => keys::private_pem_pkcs8(&keys::generate_rsa_2048())
            .map_err(|_| bad_credentials("cannot encode the generated RSA key"))?,
        (Some(Value::String(s)), false) => {
            check_shared_key(s.trim())?;
            s.trim().to_string()
        }
        (Some(Value::String(s)), true) => {
            let k = keys::parse_private_key(s)
                .map_err(|_| bad_credentials("key is not a usable RSA private key"))?;
            keys::private_pem_pkcs8(&k)
                .map_err(|_| bad_credentials("key is not a usable RSA private key"))?
        }
        (Some(_), _) => return Err(bad_credentials("key must be a string")),
    };
    let creds = Credentials {
        dialect,
        key,
        fields,
    };
    let view = views(&creds, true)?;
    Ok((creds, view))
}

/// What may be shown at any time: the dialect, the fields, and for RSA the public key.
pub fn public_view(c: &Credentials) -> Value {
    views(c, false)
        .unwrap_or_else(|_| serde_json::json!({"dialect": c.dialect, "fields": c.fields}))
}

/// A new key, effective at once (aggregators know one key per merchant: no grace period).
pub fn rotate(c: &Credentials) -> Result<(Credentials, Value), ProfileError> {
    let key = if c.dialect.is_rsa() {
        keys::private_pem_pkcs8(&keys::generate_rsa_2048())
            .map_err(|_| bad_credentials("cannot encode the generated RSA key"))?
    } else {
        random_key()
    };
    let rotated = Credentials { key, ..c.clone() };
    let view = views(&rotated, true)?;
    Ok((rotated, view))
}

/// A fresh notify id: 20 digits, the shape of an aggregator trade number
/// (`yyyyMMddHHmmss` in UTC+8 then 6 random digits).
pub fn new_notify_id() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let offset = time::UtcOffset::from_whole_seconds(8 * 3600).unwrap_or(time::UtcOffset::UTC);
    let stamp = time::OffsetDateTime::from_unix_timestamp(now)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        .to_offset(offset)
        .format(time::macros::format_description!(
            "[year][month][day][hour][minute][second]"
        ))
        .unwrap_or_default();
    format!("{stamp}{:06}", OsRng.gen_range(0u32..1_000_000))
}

/// The `standard` schedule (aggregators resend a handful of times over hours).
pub fn default_retry() -> RetryPolicy {
    RetryPolicy::standard()
}

/// A 2xx whose body is the dialect's ack text.
pub fn ack_rule(d: &Dialect) -> AckRule {
    AckRule::Body(d.ack.trim().to_string())
}

// ---------------------------------------------------------------------------------------
// Encoding

/// Encodes one attempt. The payload is a JSON object whose fields become the dialect's
/// fields; the credentials' `fields` (EPay's `pid`) and the dialect's `constants`
/// (`sign_type=MD5`) are added when the payload lacks them, and the notify id field when
/// absent gets the delivery's notify id (not for the raw canonical form, whose payload is
/// sent byte for byte and must carry all three). The payload must carry the order reference
/// and the amount fields and must not carry the signature field. Sent as the dialect says: a GET with
/// the sorted fields and the signature in the query, or a POST form, a JSON object, or (raw)
/// the payload bytes unchanged with the signature in a header.
pub fn encode(
    c: &Credentials,
    n: &OutgoingNotification<'_>,
) -> Result<EncodedRequest, ProfileError> {
    let err = ProfileError::Encode;
    let d = &c.dialect;
    d.check()
        .map_err(|e| err(format!("the stored dialect is invalid: {e}")))?;
    let object: serde_json::Map<String, Value> = serde_json::from_slice(n.payload)
        .map_err(|e| err(format!("the payload must be a JSON object: {e}")))?;
    let mut values: BTreeMap<String, Value> = object.into_iter().collect();
    if let SignaturePlacement::Field(f) = &d.signature {
        if values.contains_key(f) {
            return Err(err(format!(
                "the payload must not carry the signature field `{f}`: Herald signs"
            )));
        }
    }
    if d.canonical != Canonical::Raw {
        for (k, v) in c.fields.iter().chain(d.constants.iter()) {
            values
                .entry(k.clone())
                .or_insert_with(|| Value::String(v.clone()));
        }
        values
            .entry(d.fields.notify_id.clone())
            .or_insert_with(|| Value::String(n.notify_id.to_string()));
    }
    // A raw body is sent byte for byte: it must carry the notify id itself.
    for required in [
        &d.fields.out_trade_no,
        &d.fields.amount,
        &d.fields.notify_id,
    ] {
        if values.get(required).is_none_or(|v| json_text(v).is_empty()) {
            return Err(err(format!("the payload needs `{required}`")));
        }
    }
    if d.canonical == Canonical::Form {
        if let Some(k) = values.keys().find(|k| k.is_empty()) {
            return Err(err(format!("field name {k:?} cannot be sent in a form")));
        }
    }
    let pairs: Vec<(String, String)> = values
        .iter()
        .map(|(k, v)| (k.clone(), json_text(v)))
        .collect();
    let raw = n.payload;
    let msg = string_to_sign(d, &pairs, raw, &c.key);
    let signature = if d.is_rsa() {
        keys::sign_sha256_cached(&c.key, &msg)
            .map_err(|_| err("the stored RSA key cannot sign".into()))?
    } else {
        hex_signature(d, &msg, &c.key).ok_or_else(|| err("the key cannot be used".into()))?
    };
    let mut headers = Vec::new();
    match &d.signature {
        SignaturePlacement::Field(f) => {
            values.insert(f.clone(), Value::String(signature));
        }
        SignaturePlacement::Header(h) => headers.push((h.clone(), signature)),
    }
    let form = || {
        let mut s = form_urlencoded::Serializer::new(String::new());
        for (k, v) in &values {
            s.append_pair(k, &json_text(v));
        }
        s.finish()
    };
    Ok(match (d.method, d.canonical) {
        (Method::Get, _) => EncodedRequest {
            method: "GET",
            query: form(),
            content_type: String::new(),
            headers,
            body: Vec::new(),
        },
        (Method::Post, Canonical::Form) => EncodedRequest {
            method: "POST",
            query: String::new(),
            content_type: format!("{FORM}; charset=utf-8"),
            headers,
            body: form().into_bytes(),
        },
        (Method::Post, Canonical::Json) => EncodedRequest {
            method: "POST",
            query: String::new(),
            content_type: "application/json".into(),
            headers,
            body: serde_json::to_vec(&values).map_err(|e| err(e.to_string()))?,
        },
        (Method::Post, Canonical::Raw) => EncodedRequest {
            method: "POST",
            query: String::new(),
            content_type: "application/json".into(),
            headers,
            body: raw.to_vec(),
        },
    })
}

// ---------------------------------------------------------------------------------------
// Receiving

/// What a receiver verifies with: the dialect and its keys (shared keys, or RSA public
/// keys). `Debug` shows the dialect's name and how many keys there are.
#[derive(Clone)]
pub struct ReceiverKeys {
    dialect: Dialect,
    shared: Vec<String>,
    public: Vec<rsa::RsaPublicKey>,
}

impl ReceiverKeys {
    /// The dialect these keys verify.
    pub fn dialect(&self) -> &Dialect {
        &self.dialect
    }
}

impl std::fmt::Debug for ReceiverKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ReceiverKeys(dialect {}, <{} redacted keys>)",
            self.dialect.label(),
            self.shared.len() + self.public.len()
        )
    }
}

/// Receiver keys for `dialect` from CLI-style strings: shared keys, or for `rsa-sha256`
/// public keys (PEM, bare base64 DER, a certificate). Any may match.
pub fn receiver_keys(
    dialect: Dialect,
    keys_given: &[String],
) -> Result<ReceiverKeys, ReceiveError> {
    dialect
        .check()
        .map_err(|e| ReceiveError::UnknownKey(format!("the dialect is not usable: {e}")))?;
    if keys_given.is_empty() {
        return Err(ReceiveError::UnknownKey("no key given".into()));
    }
    let mut shared = Vec::new();
    let mut public = Vec::new();
    for (i, k) in keys_given.iter().enumerate() {
        if dialect.is_rsa() {
            public.push(keys::parse_public_key(k).map_err(|_| {
                ReceiveError::UnknownKey(format!("key #{} is not an RSA public key", i + 1))
            })?);
        } else {
            let k = k.trim();
            if k.is_empty() || !k.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ReceiveError::UnknownKey(format!(
                    "key #{} is empty or not printable ASCII",
                    i + 1
                )));
            }
            shared.push(k.to_string());
        }
    }
    Ok(ReceiverKeys {
        dialect,
        shared,
        public,
    })
}

/// The receiver's keys from stored credentials.
pub fn receiver_keys_from(c: &Credentials) -> Result<ReceiverKeys, ProfileError> {
    if c.dialect.is_rsa() {
        let private = keys::parse_private_key(&c.key)
            .map_err(|_| bad_credentials("key is not a usable RSA private key"))?;
        Ok(ReceiverKeys {
            dialect: c.dialect.clone(),
            shared: Vec::new(),
            public: vec![private.to_public_key()],
        })
    } else {
        Ok(ReceiverKeys {
            dialect: c.dialect.clone(),
            shared: vec![c.key.clone()],
            public: Vec::new(),
        })
    }
}

/// A request's fields: text pairs in arrival order (form / query / JSON top level).
struct Fields {
    pairs: Vec<(String, String)>,
    json: BTreeMap<String, Value>,
}

impl Fields {
    fn get(&self, k: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }
}

fn form_pairs(data: &[u8]) -> Result<Vec<(String, String)>, ReceiveError> {
    let mut out: Vec<(String, String)> = Vec::new();
    for part in data.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
        if !part.contains(&b'=') {
            return Err(ReceiveError::MalformedBody(
                "a parameter has no '=' (expected key=value pairs joined by '&')".into(),
            ));
        }
        for (k, v) in form_urlencoded::parse(part) {
            if out.iter().any(|(seen, _)| *seen == k) {
                return Err(ReceiveError::MalformedBody(format!(
                    "parameter {k:?} appears more than once"
                )));
            }
            out.push((k.into_owned(), v.into_owned()));
        }
    }
    Ok(out)
}

/// Reads the fields: a GET's query; a POST's form body (or its query when the body is
/// empty), or its JSON object; for the raw canonical form, the JSON object when the body
/// is one (for decoding only: the signature covers the bytes).
fn read_fields(d: &Dialect, req: &IncomingRequest<'_>) -> Result<Fields, ReceiveError> {
    let is_get = req.method.eq_ignore_ascii_case("GET");
    if !is_get && !req.method.eq_ignore_ascii_case("POST") {
        return Err(ReceiveError::MalformedBody(format!(
            "method {:?} is neither GET nor POST",
            req.method
        )));
    }
    match d.canonical {
        Canonical::Form => {
            let data: &[u8] = if is_get || req.body.is_empty() {
                req.query.as_bytes()
            } else {
                match req.media_type().as_deref() {
                    None | Some("") | Some(FORM) => req.body,
                    Some(other) => return Err(ReceiveError::UnsupportedContentType(other.into())),
                }
            };
            if std::str::from_utf8(data).is_err() {
                return Err(ReceiveError::Charset("the parameters are not UTF-8".into()));
            }
            let pairs = form_pairs(data)?;
            if let Some((k, _)) = pairs
                .iter()
                .find(|(k, v)| k.contains('\u{FFFD}') || v.contains('\u{FFFD}'))
            {
                return Err(ReceiveError::MalformedBody(format!(
                    "parameter {k:?} is not valid UTF-8 once percent-decoded"
                )));
            }
            let json = pairs
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            Ok(Fields { pairs, json })
        }
        Canonical::Json | Canonical::Raw => {
            if is_get {
                return Err(ReceiveError::MalformedBody(
                    "this dialect's notifications are POSTed bodies, not GET queries".into(),
                ));
            }
            let object: serde_json::Map<String, Value> =
                serde_json::from_slice(req.body).map_err(|e| {
                    ReceiveError::MalformedBody(format!("the body is not a JSON object: {e}"))
                })?;
            let pairs = object
                .iter()
                .map(|(k, v)| (k.clone(), json_text(v)))
                .collect();
            Ok(Fields {
                pairs,
                json: object.into_iter().collect(),
            })
        }
    }
}

fn received_signature<'a>(
    d: &Dialect,
    req: &'a IncomingRequest<'_>,
    fields: &'a Fields,
) -> Result<&'a str, ReceiveError> {
    match &d.signature {
        SignaturePlacement::Field(f) => fields
            .get(f)
            .ok_or_else(|| ReceiveError::Missing(format!("{f} (the signature field)"))),
        SignaturePlacement::Header(h) => req
            .header(h)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ReceiveError::Missing(format!("the {h} header (the signature)"))),
    }
}

fn check_signature(
    keys: &ReceiverKeys,
    req: &IncomingRequest<'_>,
    fields: &Fields,
) -> Result<(), ReceiveError> {
    let d = &keys.dialect;
    let received = received_signature(d, req, fields)?;
    if d.is_rsa() {
        let msg = string_to_sign(d, &fields.pairs, req.body, "");
        if keys
            .public
            .iter()
            .any(|k| keys::verify_sha256(k, &msg, received))
        {
            return Ok(());
        }
        return Err(ReceiveError::BadSignature(format!(
            "the {} SHA256withRSA signature does not verify with the configured public key",
            d.label()
        )));
    }
    let received = received.to_ascii_lowercase();
    let lower = Dialect {
        hex_case: HexCase::Lower,
        ..d.clone()
    };
    let mut matched = subtle::Choice::from(0);
    for key in &keys.shared {
        let msg = string_to_sign(d, &fields.pairs, req.body, key);
        if let Some(expected) = hex_signature(&lower, &msg, key) {
            matched |= expected.as_bytes().ct_eq(received.as_bytes());
        }
    }
    if !bool::from(matched) {
        return Err(ReceiveError::BadSignature(format!(
            "the {} signature does not match the configured key{}",
            d.label(),
            if keys.shared.len() > 1 { "s" } else { "" }
        )));
    }
    Ok(())
}

fn decode(d: &Dialect, fields: Fields) -> Result<VerifiedNotification, ReceiveError> {
    let f = &d.fields;
    let notify_id = fields
        .get(&f.notify_id)
        .ok_or_else(|| ReceiveError::Missing(format!("{} (the notify id)", f.notify_id)))?
        .to_string();
    let amount = match fields.get(&f.amount) {
        None => None,
        Some(a) => Some(Amount {
            minor: parse_decimal_minor(a, f.amount_decimals)?,
            currency: f.currency.to_ascii_uppercase(),
        }),
    };
    let status = fields.get(&f.status).map(str::to_string);
    let opt = |name: &Option<String>| {
        name.as_deref()
            .and_then(|n| fields.get(n))
            .map(str::to_string)
    };
    Ok(VerifiedNotification {
        profile: crate::Profile::Dialect,
        notify_id,
        app_id: None,
        merchant_id: opt(&f.merchant_id),
        out_trade_no: fields.get(&f.out_trade_no).map(str::to_string),
        transaction_id: opt(&f.transaction_id),
        amount,
        event_type: (status.as_deref() == Some(f.paid_value.as_str()))
            .then(|| PAID_EVENT.to_string()),
        status,
        fields: fields.json,
    })
}

/// Verifies and decodes one notification with the dialect of `keys`: reads the fields
/// (GET query, POST form or JSON), checks the signature (hex compared case-insensitively
/// in constant time against every key; RSA with every public key), then decodes the
/// configured fields: `notify_id`, `out_trade_no`, `transaction_id`, `merchant_id`, the
/// amount (decimal with `amount_decimals` digits, in `currency`) and `status`; a status equal
/// to `paid_value` gives `event_type` [`PAID_EVENT`].
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
    let fields = read_fields(&keys.dialect, req).map_err(Refusal::unsigned)?;
    check_signature(keys, req, &fields).map_err(Refusal::unsigned)?;
    decode(&keys.dialect, fields).map_err(Refusal::signed)
}

/// The exact string the signature covers, with `<key>` in place of an appended key (for
/// HMAC and RSA the key is not in the string), preceded by a line naming the dialect.
pub fn explain(keys: &ReceiverKeys, req: &IncomingRequest<'_>) -> Result<String, ReceiveError> {
    let d = &keys.dialect;
    let fields = read_fields(d, req)?;
    let s = string_to_sign(d, &fields.pairs, req.body, KEY_PLACEHOLDER);
    let how = match d.algorithm {
        Algorithm::Md5 => "MD5",
        Algorithm::Sha256 => "SHA-256",
        Algorithm::HmacSha256 => "HMAC-SHA256 keyed with <key>",
        Algorithm::RsaSha256 => "SHA256withRSA",
    };
    Ok(format!(
        "(dialect {}, {how})\n{}",
        d.label(),
        String::from_utf8_lossy(&s)
    ))
}

/// The acknowledgement: 200 with the dialect's ack text.
pub fn ack_reply(d: &Dialect) -> Reply {
    Reply {
        status: 200,
        content_type: "text/plain",
        body: d.ack.trim().as_bytes().to_vec(),
    }
}

/// "Send again": 200 with `fail` (anything but the ack text makes the aggregator resend;
/// `error` for a dialect whose ack text is `fail`).
pub fn failure_reply(d: &Dialect, _reason: &str) -> Reply {
    let body: &[u8] = if d.ack.trim() == "fail" {
        b"error"
    } else {
        b"fail"
    };
    Reply {
        status: 200,
        content_type: "text/plain",
        body: body.to_vec(),
    }
}

/// What a dialect notification means for its order: the dialect decided at decoding (a
/// status equal to its paid value gives [`PAID_EVENT`]), claiming the decoded amount;
/// anything else moves nothing.
pub fn read_order(n: &VerifiedNotification) -> Result<crate::order::OrderReading, ReceiveError> {
    use crate::order::{OrderEvent, OrderReading};
    if n.event_type.as_deref() == Some(PAID_EVENT) {
        Ok(OrderReading {
            event: OrderEvent::Paid,
            total: n.amount.clone(),
        })
    } else {
        Ok(OrderReading::no_change(
            n.status.clone().unwrap_or_else(|| "(none)".into()),
        ))
    }
}

/// A dialect's ids are optional (its merchant id field is checked only when present).
pub fn carried_ids(_n: &VerifiedNotification) -> crate::order::CarriedIds {
    crate::order::CarriedIds::default()
}
