//! The Stripe-style event profile: a JSON event body and a
//! `Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>...]` header, where each hex is
//! HMAC-SHA256 over `"{t}.{raw body}"` keyed with one endpoint secret, and a 300-second
//! tolerance when verifying.
//!
//! Owns both directions of the wire format: the endpoint secrets with their rotation grace
//! periods ([`Credentials`], [`create_credentials`], [`rotate`], [`public_view`]), the signed
//! payload and signatures ([`signed_payload`], [`signature`], [`signature_header`]), encoding
//! one attempt as a Stripe event ([`encode`]), verifying and decoding a request ([`verify`],
//! [`explain`]) and the receiver's replies ([`ack_reply`], [`failure_reply`]).
//!
//! The HMAC key is the whole secret string's UTF-8 bytes, `whsec_` prefix included, exactly
//! as Stripe's official SDKs use it (stripe-python's `WebhookSignature._compute_signature`
//! is `hmac.new(secret.encode("utf-8"), payload, sha256)`); unlike Standard Webhooks, the
//! text after the prefix is not base64-decoded.
//!
//! The event body is stable across attempts (it uses the notification's `created_at`, never
//! the attempt time); only the header's `t=` and signatures change.
//!
//! Secrets never leave this module in readable form except in the once-only view of
//! [`create_credentials`] / [`rotate`]: every `Debug` redacts, no error message quotes key
//! material. The HMAC is RustCrypto's; signatures are compared in constant time.
use std::collections::BTreeMap;
use std::fmt::Write as _;

use hmac::{Hmac, Mac};
use rand::distributions::Alphanumeric;
use rand::rngs::OsRng;
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use sha2::Sha256;
use subtle::{Choice, ConstantTimeEq};

use crate::ack::AckRule;
use crate::profile::bad_credentials;
use crate::profile::{EncodedRequest, OutgoingNotification, ProfileError};
use crate::receive::{Amount, IncomingRequest, ReceiveError, Refusal, Reply, VerifiedNotification};
use crate::retry::RetryPolicy;

/// The profile's name (in [`VerifiedNotification::profile`] and retry policy names).
pub const PROFILE: &str = "stripe";
/// The signature header.
pub const HEADER_SIGNATURE: &str = "Stripe-Signature";
/// The prefix of an endpoint secret.
pub const SECRET_PREFIX: &str = "whsec_";
/// How many random characters follow the prefix in a generated secret.
pub const GENERATED_SECRET_LEN: usize = 32;
/// How old (in seconds) `t=` may be and still verify: the official libraries' default
/// tolerance. As in them, a `t=` ahead of the receiver's clock is not refused.
pub const TOLERANCE_SECS: i64 = 300;
/// The `api_version` written into encoded events of an app that sets none: the version
/// Stripe's API reference calls current (docs.stripe.com/api/versioning).
pub const API_VERSION: &str = "2026-01-28.clover";
/// The `Content-Type` of an encoded event.
pub const CONTENT_TYPE: &str = "application/json; charset=utf-8";

/// The accepted length of a given secret after `whsec_`.
const GIVEN_SECRET_LEN: std::ops::RangeInclusive<usize> = 16..=256;

type HmacSha256 = Hmac<Sha256>;

/// An endpoint's secrets: the current one first, then old ones still in their grace period.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Credentials {
    pub secrets: Vec<SecretEntry>,
    /// The events' `api_version` (an endpoint's version at Stripe); [`API_VERSION`] when
    /// `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
}

/// One endpoint secret.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SecretEntry {
    /// `whsec_...`; the whole string is the HMAC key.
    pub secret: String,
    /// Unix seconds from which this secret no longer signs; `None` for the current one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
}

impl SecretEntry {
    /// A current secret (no expiry).
    pub fn current(secret: String) -> SecretEntry {
        SecretEntry {
            secret,
            expires_at: None,
        }
    }

    /// Whether this secret still signs at `now`: no expiry, or `now < expires_at`.
    pub fn is_valid_at(&self, now: i64) -> bool {
        self.expires_at.is_none_or(|t| now < t)
    }
}

impl Credentials {
    /// One current secret.
    pub fn single(secret: String) -> Credentials {
        Credentials {
            secrets: vec![SecretEntry::current(secret)],
            api_version: None,
        }
    }

    /// The `api_version` its events carry.
    pub fn api_version(&self) -> &str {
        self.api_version.as_deref().unwrap_or(API_VERSION)
    }

    /// The secrets that sign at `now`, current first.
    pub fn signing_secrets(&self, now: i64) -> Vec<&str> {
        self.secrets
            .iter()
            .filter(|s| s.is_valid_at(now))
            .map(|s| s.secret.as_str())
            .collect()
    }
}

impl std::fmt::Debug for SecretEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretEntry")
            .field("secret", &format_args!("whsec_<redacted>"))
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("secrets", &self.secrets)
            .field("api_version", &self.api_version)
            .finish()
    }
}

// ---------------------------------------------------------------------------------------
// Signing

/// The bytes that are signed: `"{timestamp}.{body}"`.
pub fn signed_payload(timestamp: i64, body: &[u8]) -> Vec<u8> {
    let head = format!("{timestamp}.");
    let mut content = Vec::with_capacity(head.len() + body.len());
    content.extend_from_slice(head.as_bytes());
    content.extend_from_slice(body);
    content
}

fn hmac_hex(secret: &str, content: &[u8]) -> Option<String> {
    // HMAC takes keys of any length; `None` cannot happen but is handled as "no match".
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).ok()?;
    mac.update(content);
    let tag = mac.finalize().into_bytes();
    let mut hex = String::with_capacity(tag.len() * 2);
    for b in tag {
        // Writing to a String cannot fail.
        let _ = write!(hex, "{b:02x}");
    }
    Some(hex)
}

/// One `v1` value: HMAC-SHA256 keyed with `secret`'s UTF-8 bytes (prefix included) over
/// [`signed_payload`], lower-case hex.
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    hmac_hex(secret, &signed_payload(timestamp, body)).unwrap_or_default()
}

/// The `Stripe-Signature` value: `t=<timestamp>` and one `v1=` per secret, in order.
pub fn signature_header(timestamp: i64, body: &[u8], secrets: &[&str]) -> String {
    let mut header = format!("t={timestamp}");
    for secret in secrets {
        header.push_str(",v1=");
        header.push_str(&signature(secret, timestamp, body));
    }
    header
}

// ---------------------------------------------------------------------------------------
// Credentials

const CREDENTIALS_SHAPE: &str = "credentials for stripe are null (generate a whsec_ secret) or an object with any of \"secret\" (\"whsec_...\", generated when absent) and \"api_version\" (such as \"2026-01-28.clover\", the events' version)";

/// A Stripe API version: `YYYY-MM-DD`, optionally `.name` (lower-case letters), such as
/// `2024-06-20` or `2026-01-28.clover`.
fn check_api_version(v: &str) -> Result<(), String> {
    let (date, name) = v.split_once('.').unwrap_or((v, "x"));
    let b = date.as_bytes();
    let date_ok = b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
    if date_ok
        && !name.is_empty()
        && name.len() <= 32
        && name.bytes().all(|c| c.is_ascii_lowercase())
    {
        Ok(())
    } else {
        Err("api_version must look like \"2026-01-28.clover\" or \"2024-06-20\"".into())
    }
}

/// A new endpoint secret: `whsec_` + 32 random ASCII letters and digits from the OS.
pub fn generate_secret() -> String {
    let body: String = OsRng
        .sample_iter(&Alphanumeric)
        .take(GENERATED_SECRET_LEN)
        .map(char::from)
        .collect();
    format!("{SECRET_PREFIX}{body}")
}

/// A secret Herald accepts to sign with: `whsec_` + 16 to 256 ASCII letters, digits or
/// `+ / = _ -`. Messages never quote it.
fn check_secret(secret: &str) -> Result<(), String> {
    let Some(rest) = secret.strip_prefix(SECRET_PREFIX) else {
        return Err("secret must start with whsec_".into());
    };
    if !GIVEN_SECRET_LEN.contains(&rest.len()) {
        return Err(format!(
            "secret must have {} to {} characters after whsec_ (got {})",
            GIVEN_SECRET_LEN.start(),
            GIVEN_SECRET_LEN.end(),
            rest.chars().count()
        ));
    }
    if !rest
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'_' | b'-'))
    {
        return Err("secret may hold only ASCII letters, digits and + / = _ - after whsec_".into());
    }
    Ok(())
}

/// Credentials for a new endpoint. `options` is `null`, `{}` (generate a secret) or
/// `{"secret": "whsec_..."}` (use it, after checking its shape). Returns the credentials and
/// the view shown once, `{"secret": "whsec_..."}`. Anything else is
/// [`ProfileError::BadCredentials`], whose message never quotes the secret.
pub fn create_credentials(options: &Value) -> Result<(Credentials, Value), ProfileError> {
    let fields = crate::profile::credential_fields(options, CREDENTIALS_SHAPE)?;
    if fields.keys().any(|k| k != "secret" && k != "api_version") {
        return Err(bad_credentials(format!(
            "unknown field in credentials: {CREDENTIALS_SHAPE}"
        )));
    }
    let secret = match fields.get("secret") {
        None | Some(Value::Null) => generate_secret(),
        Some(Value::String(given)) => {
            let given = given.trim();
            check_secret(given).map_err(bad_credentials)?;
            given.to_string()
        }
        Some(_) => return Err(bad_credentials("secret must be a string \"whsec_...\"")),
    };
    let api_version = match fields.get("api_version") {
        None | Some(Value::Null) => None,
        Some(Value::String(v)) => {
            check_api_version(v).map_err(bad_credentials)?;
            Some(v.clone())
        }
        Some(_) => return Err(bad_credentials("api_version must be a string")),
    };
    let c = Credentials {
        secrets: vec![SecretEntry::current(secret.clone())],
        api_version,
    };
    let view = serde_json::json!({ "secret": secret, "api_version": c.api_version() });
    Ok((c, view))
}

/// What may be shown at any time: the secrets' expiries, current first, never their text:
/// `{"secrets": [{"expires_at": null}, {"expires_at": 1700000000}]}`.
pub fn public_view(c: &Credentials) -> Value {
    let secrets: Vec<Value> = c
        .secrets
        .iter()
        .map(|s| serde_json::json!({ "expires_at": s.expires_at }))
        .collect();
    serde_json::json!({ "secrets": secrets, "api_version": c.api_version() })
}

/// A new current secret; the current one keeps signing (and verifying) until `grace_until`,
/// older ones until their own expiry, and those already expired at `now` are dropped (a
/// `grace_until <= now` retires the current one at once). While old secrets are valid,
/// [`encode`] sends one `v1` per secret. Returns the credentials and the once-only view
/// `{"secret": "whsec_..."}` of the new secret.
pub fn rotate(
    c: &Credentials,
    grace_until: i64,
    now: i64,
) -> Result<(Credentials, Value), ProfileError> {
    if c.secrets.is_empty() {
        return Err(bad_credentials("there is no current secret to rotate"));
    }
    let secret = generate_secret();
    let view = serde_json::json!({ "secret": secret });
    let mut secrets = vec![SecretEntry::current(secret)];
    for (i, old) in c.secrets.iter().enumerate() {
        let expires_at = match (i, old.expires_at) {
            (0, _) | (_, None) => grace_until,
            (_, Some(t)) => t,
        };
        if now < expires_at {
            secrets.push(SecretEntry {
                secret: old.secret.clone(),
                expires_at: Some(expires_at),
            });
        }
    }
    Ok((
        Credentials {
            secrets,
            api_version: c.api_version.clone(),
        },
        view,
    ))
}

/// A fresh event id, `evt_<ulid>`.
pub fn new_notify_id() -> String {
    format!("evt_{}", ulid::Ulid::new())
}

/// Herald's rendering of Stripe's "exponential backoff for up to 3 days" (the `stripe`
/// policy).
pub fn default_retry() -> RetryPolicy {
    // The name is one of RetryPolicy::NAMES (a test checks it), so the fallback is unused.
    RetryPolicy::named(PROFILE).unwrap_or_else(RetryPolicy::standard)
}

/// Any 2xx.
pub fn default_ack() -> AckRule {
    AckRule::Http2xx
}

// ---------------------------------------------------------------------------------------
// Encoding

#[derive(Serialize)]
struct EventBody<'a> {
    id: &'a str,
    object: &'static str,
    api_version: &'a str,
    created: i64,
    #[serde(rename = "type")]
    event_type: &'a str,
    livemode: bool,
    pending_webhooks: u32,
    request: EventRequest,
    data: EventData<'a>,
}

/// The API request that caused the event: `{"id": null, "idempotency_key": null}` for
/// events no API request of the merchant's caused (a buyer paying, a timeout), which is
/// all that Herald knows of.
#[derive(Serialize)]
struct EventRequest {
    id: Option<String>,
    idempotency_key: Option<String>,
}

#[derive(Serialize)]
struct EventData<'a> {
    /// The producer's payload, embedded as its own text (never re-serialised).
    object: &'a RawValue,
}

/// Encodes one attempt: the body is the event
/// `{"id": notify_id, "object": "event", "api_version": <the app's, default API_VERSION>,
/// "created": created_at, "type": event_type, "livemode": false, "pending_webhooks": 1,
/// "request": {"id": null, "idempotency_key": null}, "data": {"object": payload}}`
/// with the payload (a JSON object) embedded byte for byte (surrounding whitespace aside),
/// and `Stripe-Signature: t=<n.timestamp>,v1=...` with one `v1` per secret valid at
/// `n.timestamp`, current first.
///
/// Refused ([`ProfileError::Encode`]): an empty notify id or event type, a payload that is not
/// a JSON object, and credentials with no secret valid at `n.timestamp`.
pub fn encode(
    c: &Credentials,
    n: &OutgoingNotification<'_>,
) -> Result<EncodedRequest, ProfileError> {
    if n.notify_id.is_empty() {
        return Err(ProfileError::Encode("the notify id is empty".into()));
    }
    if n.event_type.is_empty() {
        return Err(ProfileError::Encode("the event type is empty".into()));
    }
    let text = std::str::from_utf8(n.payload)
        .map_err(|_| ProfileError::Encode("the payload is not UTF-8".into()))?;
    let raw: &RawValue = serde_json::from_str(text)
        .map_err(|e| ProfileError::Encode(format!("the payload is not JSON: {e}")))?;
    if !raw.get().starts_with('{') {
        return Err(ProfileError::Encode(
            "the payload must be a JSON object (it becomes data.object)".into(),
        ));
    }
    let secrets = c.signing_secrets(n.timestamp.get());
    if secrets.is_empty() {
        return Err(ProfileError::Encode(
            "no secret is valid at this time: every secret has expired".into(),
        ));
    }
    if secrets.iter().any(|s| s.is_empty()) {
        return Err(ProfileError::Encode("a stored secret is empty".into()));
    }
    let event = EventBody {
        id: n.notify_id,
        object: "event",
        api_version: c.api_version(),
        created: n.created_at.get(),
        event_type: n.event_type,
        livemode: false,
        pending_webhooks: 1,
        request: EventRequest {
            id: None,
            idempotency_key: None,
        },
        data: EventData { object: raw },
    };
    let body = serde_json::to_vec(&event)
        .map_err(|e| ProfileError::Encode(format!("cannot serialise the event: {e}")))?;
    let header = signature_header(n.timestamp.get(), &body, &secrets);
    Ok(EncodedRequest {
        method: "POST",
        query: String::new(),
        content_type: CONTENT_TYPE.to_string(),
        headers: vec![(HEADER_SIGNATURE.to_string(), header)],
        body,
    })
}

// ---------------------------------------------------------------------------------------
// Receiving

/// The secrets a receiver verifies with. `Debug` shows only how many there are.
#[derive(Clone)]
pub struct ReceiverKeys {
    secrets: Vec<SecretEntry>,
}

impl ReceiverKeys {
    /// How many secrets are configured.
    pub fn len(&self) -> usize {
        self.secrets.len()
    }

    /// Always false for keys built by [`receiver_keys`]; may be true from
    /// [`receiver_keys_from`] with empty credentials.
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }
}

impl std::fmt::Debug for ReceiverKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReceiverKeys(<{} redacted secrets>)", self.secrets.len())
    }
}

/// The receiver's endpoint secrets (several while rotating). Each is trimmed and must be
/// `whsec_` followed by printable ASCII. An empty list, or a value
/// that is not a `whsec_` secret, is [`ReceiveError::UnknownKey`] (secrets are named by
/// position, never quoted).
pub fn receiver_keys(keys: &[String]) -> Result<ReceiverKeys, ReceiveError> {
    if keys.is_empty() {
        return Err(ReceiveError::UnknownKey("no whsec_ secret given".into()));
    }
    let mut secrets = Vec::with_capacity(keys.len());
    for (i, k) in keys.iter().enumerate() {
        let k = k.trim();
        let ok = k
            .strip_prefix(SECRET_PREFIX)
            .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_graphic()));
        if !ok {
            return Err(ReceiveError::UnknownKey(format!(
                "secret #{} is not a whsec_ secret",
                i + 1
            )));
        }
        secrets.push(SecretEntry::current(k.to_string()));
    }
    Ok(ReceiverKeys { secrets })
}

/// The receiver's secrets from stored credentials, with their expiries: a secret verifies a
/// request whose `t=` is before its expiry.
pub fn receiver_keys_from(c: &Credentials) -> ReceiverKeys {
    ReceiverKeys {
        secrets: c.secrets.clone(),
    }
}

/// The parsed `Stripe-Signature` header.
struct SignatureHeader<'a> {
    timestamp: i64,
    v1: Vec<&'a str>,
}

/// `t=` exactly once (digits), any number of `v1=`; other schemes (`v0=`...) and items
/// without `=` are ignored.
fn parse_header<'r>(req: &'r IncomingRequest<'_>) -> Result<SignatureHeader<'r>, ReceiveError> {
    let header = req
        .header(HEADER_SIGNATURE)
        .filter(|h| !h.trim().is_empty())
        .ok_or_else(|| ReceiveError::Missing(format!("{HEADER_SIGNATURE} header")))?;
    let mut timestamp = None;
    let mut v1 = Vec::new();
    for item in header.split(',') {
        let Some((scheme, value)) = item.trim().split_once('=') else {
            continue;
        };
        match scheme {
            "t" => {
                if timestamp.is_some() {
                    return Err(ReceiveError::BadSignature(format!(
                        "{HEADER_SIGNATURE} has more than one t="
                    )));
                }
                if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(ReceiveError::BadSignature(
                        "t= is not a whole number of unix seconds".into(),
                    ));
                }
                let t: i64 = value.parse().map_err(|_| {
                    ReceiveError::BadSignature("t= is not a whole number of unix seconds".into())
                })?;
                timestamp = Some(t);
            }
            "v1" => v1.push(value),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or_else(|| {
        ReceiveError::Missing(format!("t= (timestamp) in the {HEADER_SIGNATURE} header"))
    })?;
    if v1.is_empty() {
        return Err(ReceiveError::BadSignature(format!(
            "no v1 signature in the {HEADER_SIGNATURE} header"
        )));
    }
    Ok(SignatureHeader { timestamp, v1 })
}

/// Refuses a `Content-Type` other than JSON, and a charset other than UTF-8. An absent
/// `Content-Type` is accepted.
fn check_content_type(req: &IncomingRequest<'_>) -> Result<(), ReceiveError> {
    if let Some(media) = req.media_type() {
        if media != "application/json" && !media.is_empty() {
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

fn non_empty_str(v: Option<&Value>) -> Option<&str> {
    v.and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// Verifies and decodes one event, in this order (the official libraries' order): content
/// type, the `Stripe-Signature` header (`t=` once, `v1=` at least once), any `v1` equal to
/// the HMAC of any secret valid at `t` (constant-time, case-insensitive hex; else
/// [`ReceiveError::BadSignature`]), `t` no more than [`TOLERANCE_SECS`] before `req.now`
/// (else [`ReceiveError::TimestampOutOfWindow`]; a `t` ahead of `req.now` is clock skew and
/// is accepted, as stripe-node and stripe-python accept it), then the JSON event.
///
/// The result: `notify_id` = event `id`, `event_type` and `status` = `type`, `amount` =
/// `data.object.amount` (integer minor units) in `data.object.currency` upper-cased,
/// `out_trade_no` = `data.object.metadata.out_trade_no`, else
/// `data.object.client_reference_id`, `transaction_id` = `data.object.id`, `merchant_id` =
/// the Connect `account` when present, `app_id` none, `fields` = the event's top-level
/// members.
pub fn verify(
    keys: &ReceiverKeys,
    req: &IncomingRequest<'_>,
) -> Result<VerifiedNotification, ReceiveError> {
    verify_detailed(keys, req).map_err(|r| r.error)
}

/// [`verify`], saying whether the signature (and timestamp) had verified when a request is
/// refused: a correctly signed body that is not an event is a [`Refusal::signed`].
pub fn verify_detailed(
    keys: &ReceiverKeys,
    req: &IncomingRequest<'_>,
) -> Result<VerifiedNotification, Refusal> {
    check_signature(keys, req).map_err(Refusal::unsigned)?;
    decode(req.body).map_err(Refusal::signed)
}

/// Content type, header, signature, then the timestamp's age.
fn check_signature(keys: &ReceiverKeys, req: &IncomingRequest<'_>) -> Result<(), ReceiveError> {
    check_content_type(req)?;
    let header = parse_header(req)?;
    let t = header.timestamp;
    let content = signed_payload(t, req.body);
    let expected: Vec<String> = keys
        .secrets
        .iter()
        .filter(|s| s.is_valid_at(t))
        .filter_map(|s| hmac_hex(&s.secret, &content))
        .collect();
    // Compare every entry against every secret, so the time taken does not depend on
    // which one matched.
    let mut matched = Choice::from(0);
    for sig in &header.v1 {
        let sig = sig.to_ascii_lowercase();
        for tag in &expected {
            matched |= tag.as_bytes().ct_eq(sig.as_bytes());
        }
    }
    if !bool::from(matched) {
        return Err(ReceiveError::BadSignature(format!(
            "no v1 signature matches the configured secret{}",
            if keys.secrets.len() > 1 { "s" } else { "" }
        )));
    }
    // As stripe-node (`timestampAge > tolerance`) and stripe-python
    // (`timestamp < time.time() - tolerance`): after the signature, only a timestamp older
    // than the tolerance is refused; one ahead of this clock (skew) is accepted.
    if i128::from(req.now) - i128::from(t) > i128::from(TOLERANCE_SECS) {
        return Err(ReceiveError::TimestampOutOfWindow {
            timestamp: t,
            now: req.now,
        });
    }
    Ok(())
}

/// The event of a correctly signed body.
fn decode(body: &[u8]) -> Result<VerifiedNotification, ReceiveError> {
    let event: serde_json::Map<String, Value> = serde_json::from_slice(body)
        .map_err(|e| ReceiveError::MalformedBody(format!("the body is not a JSON object: {e}")))?;
    let id = non_empty_str(event.get("id"))
        .ok_or_else(|| ReceiveError::Missing("id".into()))?
        .to_string();
    let event_type = non_empty_str(event.get("type"))
        .ok_or_else(|| ReceiveError::Missing("type".into()))?
        .to_string();
    let object = event
        .get("data")
        .and_then(|d| d.get("object"))
        .and_then(Value::as_object)
        .ok_or_else(|| ReceiveError::Missing("data.object".into()))?;
    let amount = match object.get("amount") {
        None | Some(Value::Null) => None,
        Some(v) => {
            let minor = v
                .as_i64()
                .ok_or_else(|| ReceiveError::BadAmount(v.to_string()))?;
            let currency = non_empty_str(object.get("currency"))
                .ok_or_else(|| {
                    ReceiveError::Missing("data.object.currency (the amount has none)".into())
                })?
                .to_ascii_uppercase();
            Some(Amount { minor, currency })
        }
    };
    let out_trade_no = non_empty_str(object.get("metadata").and_then(|m| m.get("out_trade_no")))
        .or_else(|| non_empty_str(object.get("client_reference_id")))
        .map(str::to_string);
    let transaction_id = non_empty_str(object.get("id")).map(str::to_string);
    let merchant_id = non_empty_str(event.get("account")).map(str::to_string);
    let fields: BTreeMap<String, Value> = event.into_iter().collect();
    Ok(VerifiedNotification {
        profile: crate::Profile::Stripe,
        notify_id: id,
        app_id: None,
        merchant_id,
        out_trade_no,
        transaction_id,
        amount,
        status: Some(event_type.clone()),
        event_type: Some(event_type),
        fields,
    })
}

/// The exact string the signatures cover, `"{t}.{raw body}"` (the body shown as UTF-8,
/// invalid bytes replaced): for debugging a signature that does not match. Needs only the
/// header's `t=`; `keys` is not used.
pub fn explain(keys: &ReceiverKeys, req: &IncomingRequest<'_>) -> Result<String, ReceiveError> {
    let _ = keys;
    let header = parse_header(req)?;
    Ok(String::from_utf8_lossy(&signed_payload(header.timestamp, req.body)).into_owned())
}

/// 200 with `{"received": true}`.
pub fn ack_reply() -> Reply {
    Reply {
        status: 200,
        content_type: "application/json",
        body: br#"{"received": true}"#.to_vec(),
    }
}

/// 400 with `{"error": reason}` (JSON-escaped): Stripe sends again.
pub fn failure_reply(reason: &str) -> Reply {
    Reply {
        status: 400,
        content_type: "application/json",
        body: serde_json::json!({ "error": reason })
            .to_string()
            .into_bytes(),
    }
}

/// What a Stripe event means for its order: `payment_intent.succeeded`/`charge.succeeded`
/// pay; `checkout.session.completed` pays unless its `payment_status` is unpaid (its total
/// is `amount_total`); `charge.refunded` reports the cumulative `amount_refunded`;
/// `payment_intent.canceled` closes; anything else moves nothing.
pub fn read_order(n: &VerifiedNotification) -> Result<crate::order::OrderReading, ReceiveError> {
    use crate::order::{int_field, missing, status_name, text, OrderEvent, OrderReading};
    let object = n.fields.get("data").and_then(|d| d.get("object"));
    let event_type = n.event_type.as_deref().unwrap_or("");
    let total = n.amount.clone();
    Ok(match event_type {
        "payment_intent.succeeded" | "charge.succeeded" => OrderReading {
            event: OrderEvent::Paid,
            total,
        },
        "checkout.session.completed" => {
            let paid =
                text(object.and_then(|o| o.get("payment_status"))).is_none_or(|s| s == "paid");
            if !paid {
                return Ok(OrderReading::no_change(format!(
                    "{event_type} (payment_status unpaid)"
                )));
            }
            let minor = int_field(
                object.and_then(|o| o.get("amount_total")),
                "data.object.amount_total",
            )?;
            let currency = text(object.and_then(|o| o.get("currency")))
                .ok_or_else(|| missing("data.object.currency"))?;
            OrderReading {
                event: OrderEvent::Paid,
                total: Some(crate::receive::Amount {
                    minor,
                    currency: currency.to_ascii_uppercase(),
                }),
            }
        }
        "charge.refunded" => OrderReading {
            event: OrderEvent::RefundedTotal(int_field(
                object.and_then(|o| o.get("amount_refunded")),
                "data.object.amount_refunded",
            )?),
            total,
        },
        "payment_intent.canceled" => OrderReading {
            event: OrderEvent::Closed,
            total,
        },
        _ => OrderReading::no_change(status_name(n)),
    })
}

/// Stripe's `account` (Connect only) is optional: nothing is always carried.
pub fn carried_ids(_n: &VerifiedNotification) -> crate::order::CarriedIds {
    crate::order::CarriedIds::default()
}
