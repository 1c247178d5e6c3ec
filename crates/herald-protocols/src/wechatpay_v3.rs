//! The WeChat Pay API v3 profile: JSON notifications whose `resource` is encrypted with
//! AES-256-GCM under the merchant's APIv3 key and whose raw body is signed with the platform's
//! RSA key (`Wechatpay-*` headers, `WECHATPAY2-SHA256-RSA2048`).
//!
//! Owns both directions of the wire format: an app's credentials (merchant and app ids, the
//! platform's signing key and its serial, the APIv3 key) and their views, resource encryption
//! ([`encrypt_resource`] / [`decrypt_resource`]), encoding and signing one notification
//! ([`encode`]), and the receiver's side ([`verify`]): probe rejection, the 5-minute window,
//! key selection by `Wechatpay-Serial`, the signature over the raw body, decryption, and the
//! decoded [`VerifiedNotification`], with the replies WeChat Pay expects.
//!
//! Rotation replaces the platform key and its serial at once; receivers may hold the old and
//! new platform keys together, each under its serial, and pick by `Wechatpay-Serial`. The APIv3
//! key is a shared secret: it is shown once at creation and never again; the private key never
//! leaves the credentials. Neither appears in `Debug` output or error messages.
use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rand::distributions::Alphanumeric;
use rand::rngs::OsRng;
use rand::Rng;
use rsa::RsaPublicKey;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use time::macros::format_description;

use crate::keys;
use crate::profile::bad_credentials;
use crate::profile::{EncodedRequest, OutgoingNotification, ProfileError};
use crate::receive::{Amount, IncomingRequest, ReceiveError, Refusal, Reply, VerifiedNotification};
use crate::{AckRule, RetryPolicy};

/// The profile's name on the wire and in [`VerifiedNotification::profile`].
pub const PROFILE: &str = "wechatpay-v3";
pub const HEADER_TIMESTAMP: &str = "Wechatpay-Timestamp";
pub const HEADER_NONCE: &str = "Wechatpay-Nonce";
pub const HEADER_SIGNATURE: &str = "Wechatpay-Signature";
pub const HEADER_SERIAL: &str = "Wechatpay-Serial";
pub const HEADER_SIGNATURE_TYPE: &str = "Wechatpay-Signature-Type";
/// The only signature type of API v3.
pub const SIGNATURE_TYPE: &str = "WECHATPAY2-SHA256-RSA2048";
/// WeChat Pay's deliberate probes carry a signature starting with this; they must fail.
pub const PROBE_PREFIX: &str = "WECHATPAY/SIGNTEST/";
/// The resource's only algorithm.
pub const ALGORITHM: &str = "AEAD_AES_256_GCM";
/// The notification's `resource_type`: the only kind WeChat Pay sends, and the only one
/// a receiver takes.
pub const RESOURCE_TYPE: &str = "encrypt-resource";
/// A timestamp this many seconds or more away from now is refused.
pub const TOLERANCE_SECS: i64 = 300;
/// The APIv3 key's length in bytes (32 ASCII characters).
pub const API_V3_KEY_LEN: usize = 32;
/// The resource nonce's length in bytes (12 ASCII characters).
pub const NONCE_LEN: usize = 12;
/// The GCM tag's length, appended to the ciphertext.
const TAG_LEN: usize = 16;

/// A WeChat Pay v3 app's material, as stored. Its `Debug` redacts the private key and the
/// APIv3 key.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Credentials {
    /// The merchant id (`mchid`).
    pub mchid: String,
    /// The app id (`appid`).
    pub appid: String,
    /// The platform's RSA signing key (it signs notifications), PKCS#8 PEM.
    pub private_key: String,
    /// The platform certificate serial or `PUB_KEY_ID_...` id sent as `Wechatpay-Serial`
    /// (a WeChat Pay public-key id, `PUB_KEY_ID_` + 34 digits, when generated).
    pub serial: String,
    /// The 32-character APIv3 key that encrypts the resource (a shared secret).
    pub api_v3_key: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("wechatpay_v3::Credentials")
            .field("mchid", &self.mchid)
            .field("appid", &self.appid)
            .field("private_key", &"<redacted>")
            .field("serial", &self.serial)
            .field("api_v3_key", &"<redacted>")
            .finish()
    }
}

const CREDENTIALS_SHAPE: &str = "credentials for wechatpay-v3 are null (generate everything) or an object with any of mchid, appid, private_key (PEM or base64 DER, PKCS#8 or PKCS#1), serial, api_v3_key (32 ASCII characters)";

fn random_alphanumeric(n: usize) -> String {
    (0..n)
        .map(|_| char::from(OsRng.sample(Alphanumeric)))
        .collect()
}

/// A WeChat Pay public-key id as the merchant platform shows them since 2024
/// (`PUB_KEY_ID_0117288133772025100200181886000802`): `PUB_KEY_ID_01` and 32 digits. New
/// merchants get one of these, not a platform certificate serial.
fn new_public_key_id() -> String {
    format!("PUB_KEY_ID_01{}", random_digits(32))
}

fn random_hex_upper(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    OsRng.fill(buf.as_mut_slice());
    buf.iter().map(|b| format!("{b:02X}")).collect()
}

/// Checks an id sent as is (`mchid`, `appid`, `serial`): 1 to 64 ASCII letters, digits, `_`
/// or `-`.
fn check_id(field: &str, v: Option<&Value>) -> Result<Option<String>, ProfileError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s))
            if !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') =>
        {
            Ok(Some(s.clone()))
        }
        Some(_) => Err(bad_credentials(format!(
            "{field} must be a string of 1 to 64 ASCII letters, digits, '_' or '-'"
        ))),
    }
}

/// The view that may be shown at any time: ids, serial and the platform public key.
fn view(c: &Credentials, public: Option<&RsaPublicKey>) -> Value {
    let mut v = json!({
        "mchid": c.mchid,
        "appid": c.appid,
        "serial": c.serial,
    });
    if let (Some(public), Some(map)) = (public, v.as_object_mut()) {
        map.insert("public_key_pem".into(), keys::public_pem(public).into());
        map.insert("public_key".into(), keys::public_base64(public).into());
    }
    v
}

/// Credentials for a new app. `options` is `null` / `{}` or an object with any of `mchid`,
/// `appid`, `private_key` (any form [`keys::parse_private_key`] reads, at least 2048 bits;
/// stored as PKCS#8 PEM), `serial` and `api_v3_key` (exactly 32 ASCII characters, no spaces);
/// whatever is missing is generated (an RSA-2048 key, a `PUB_KEY_ID_...` public-key id as the
/// serial, a 32-character
/// alphanumeric APIv3 key, a `19...` mchid, a `wx...` appid). Unknown fields are refused.
///
/// The once view is `{mchid, appid, serial, public_key_pem, public_key, api_v3_key}`: the APIv3
/// key is a shared secret the receiver needs to decrypt, shown here and never again.
pub fn create_credentials(options: &Value) -> Result<(Credentials, Value), ProfileError> {
    let fields = crate::profile::credential_fields(options, CREDENTIALS_SHAPE)?;
    const KNOWN: [&str; 5] = ["mchid", "appid", "private_key", "serial", "api_v3_key"];
    if let Some(k) = fields.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(bad_credentials(format!(
            "unknown field {k:?}: {CREDENTIALS_SHAPE}"
        )));
    }
    let mchid = check_id("mchid", fields.get("mchid"))?
        .unwrap_or_else(|| format!("19{}", random_digits(8)));
    let appid = check_id("appid", fields.get("appid"))?
        .unwrap_or_else(|| format!("wx{}", random_hex_upper(8).to_ascii_lowercase()));
    let serial = check_id("serial", fields.get("serial"))?.unwrap_or_else(new_public_key_id);
    let api_v3_key = match fields.get("api_v3_key") {
        None | Some(Value::Null) => random_alphanumeric(API_V3_KEY_LEN),
        Some(Value::String(s)) if is_valid_api_v3_key(s) => s.clone(),
        Some(_) => {
            return Err(bad_credentials(
                "api_v3_key must be exactly 32 printable ASCII characters without spaces",
            ))
        }
    };
    let (key, private_key) = keys::signing_key_option(fields.get("private_key"))?;
    let c = Credentials {
        mchid,
        appid,
        private_key,
        serial,
        api_v3_key,
    };
    let mut shown = view(&c, Some(&key.to_public_key()));
    if let Some(map) = shown.as_object_mut() {
        map.insert("api_v3_key".into(), c.api_v3_key.clone().into());
    }
    Ok((c, shown))
}

fn is_valid_api_v3_key(s: &str) -> bool {
    s.len() == API_V3_KEY_LEN && s.bytes().all(|b| b.is_ascii_graphic())
}

fn random_digits(n: usize) -> String {
    (0..n)
        .map(|_| char::from(b'0' + OsRng.gen_range(0..10u8)))
        .collect()
}

/// What may be shown at any time: `{mchid, appid, serial, public_key_pem, public_key}`, never
/// the APIv3 key. If the stored key cannot be read, the public key fields are left out.
pub fn public_view(c: &Credentials) -> Value {
    let public = keys::parse_private_key(&c.private_key)
        .ok()
        .map(|k| k.to_public_key());
    view(c, public.as_ref())
}

/// A new platform key pair with a new serial; ids and the APIv3 key stay. The new key signs at
/// once (one `Wechatpay-Serial` per notification, so no grace period: `grace_until` and `now`
/// are ignored); receivers select between old and new keys by serial. Returns the new
/// credentials and their public view (the APIv3 key did not change and is not shown again).
pub fn rotate(
    c: &Credentials,
    _grace_until: i64,
    _now: i64,
) -> Result<(Credentials, Value), ProfileError> {
    let (key, private_key) = keys::signing_key_option(None)?;
    // A public-key id is replaced by a public-key id, a certificate serial by a serial.
    let serial = if c.serial.starts_with("PUB_KEY_ID_") {
        new_public_key_id()
    } else {
        random_hex_upper(20)
    };
    let rotated = Credentials {
        private_key,
        serial,
        ..c.clone()
    };
    let shown = view(&rotated, Some(&key.to_public_key()));
    Ok((rotated, shown))
}

/// A fresh notification id: a random (version 4) UUID, as WeChat Pay's ids are.
pub fn new_notify_id() -> String {
    let mut b = [0u8; 16];
    OsRng.fill(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

fn cipher(api_v3_key: &[u8]) -> Option<Aes256Gcm> {
    if api_v3_key.len() != API_V3_KEY_LEN {
        return None;
    }
    Aes256Gcm::new_from_slice(api_v3_key).ok()
}

/// Encrypts a resource: AES-256-GCM with the APIv3 key's bytes, the 12-byte ASCII `nonce` and
/// `associated_data` as AAD; returns base64 of the ciphertext with the 16-byte tag appended.
pub fn encrypt_resource(
    api_v3_key: &[u8],
    nonce: &str,
    associated_data: &str,
    plaintext: &[u8],
) -> Result<String, ProfileError> {
    let cipher = cipher(api_v3_key).ok_or_else(|| {
        ProfileError::BadCredentials("the APIv3 key must be exactly 32 bytes".into())
    })?;
    if nonce.len() != NONCE_LEN {
        return Err(ProfileError::Encode(format!(
            "the resource nonce must be {NONCE_LEN} bytes"
        )));
    }
    let sealed = cipher
        .encrypt(
            Nonce::from_slice(nonce.as_bytes()),
            Payload {
                msg: plaintext,
                aad: associated_data.as_bytes(),
            },
        )
        .map_err(|_| ProfileError::Encode("AES-GCM encryption failed".into()))?;
    Ok(STANDARD.encode(sealed))
}

/// Decrypts a resource (see [`encrypt_resource`]). Fails with [`ReceiveError::Decrypt`] for a
/// key that is not 32 bytes, a nonce that is not 12, bad base64, or a tag that does not
/// authenticate (wrong key, or an altered ciphertext, nonce or associated data).
pub fn decrypt_resource(
    api_v3_key: &[u8],
    nonce: &str,
    associated_data: &str,
    ciphertext_b64: &str,
) -> Result<Vec<u8>, ReceiveError> {
    let cipher = cipher(api_v3_key)
        .ok_or_else(|| ReceiveError::Decrypt("the APIv3 key must be exactly 32 bytes".into()))?;
    if nonce.len() != NONCE_LEN {
        return Err(ReceiveError::Decrypt(format!(
            "the nonce must be {NONCE_LEN} bytes, not {}",
            nonce.len()
        )));
    }
    let sealed = STANDARD
        .decode(ciphertext_b64.trim())
        .map_err(|_| ReceiveError::Decrypt("the ciphertext is not base64".into()))?;
    if sealed.len() < TAG_LEN {
        return Err(ReceiveError::Decrypt(
            "the ciphertext is shorter than its 16-byte tag".into(),
        ));
    }
    cipher
        .decrypt(
            Nonce::from_slice(nonce.as_bytes()),
            Payload {
                msg: &sealed,
                aad: associated_data.as_bytes(),
            },
        )
        .map_err(|_| {
            ReceiveError::Decrypt(
                "authentication failed: wrong APIv3 key, or the resource was altered".into(),
            )
        })
}

/// Whether `s` looks like a WeChat Pay event type: upper-case dotted words such as
/// `TRANSACTION.SUCCESS` or `REFUND.ABNORMAL`.
fn is_wechat_event_type(s: &str) -> bool {
    s.as_bytes().first().is_some_and(u8::is_ascii_uppercase)
        && s.contains('.')
        && s.split('.').all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        })
}

/// `ts` (unix seconds) as RFC 3339 in China time, e.g. `2026-11-23T20:15:00+08:00`.
fn china_rfc3339(ts: i64) -> Option<String> {
    let offset = time::UtcOffset::from_whole_seconds(8 * 3600).ok()?;
    let t = time::OffsetDateTime::from_unix_timestamp(ts)
        .ok()?
        .to_offset(offset);
    t.format(format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second][offset_hour sign:mandatory]:[offset_minute]"
    ))
    .ok()
}

#[derive(Serialize)]
struct Resource<'a> {
    original_type: &'a str,
    algorithm: &'a str,
    ciphertext: String,
    associated_data: &'a str,
    nonce: String,
}

/// The notification body, fields in WeChat Pay's order.
#[derive(Serialize)]
struct Body<'a> {
    id: &'a str,
    create_time: String,
    resource_type: &'a str,
    event_type: &'a str,
    summary: &'a str,
    resource: Resource<'a>,
}

/// The signed message: `"{timestamp}\n{nonce}\n{body}\n"`.
fn message(timestamp: &str, nonce: &str, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(timestamp.len() + nonce.len() + body.len() + 3);
    m.extend_from_slice(timestamp.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(nonce.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(body);
    m.push(b'\n');
    m
}

/// Encodes, encrypts and signs one notification attempt.
///
/// The payload is the plaintext resource, a JSON object (the transaction, or the refund for
/// `REFUND.*` events); Herald fills `appid` and `mchid` when it lacks them. The event type is
/// `n.event_type` when it is a WeChat-style upper-case dotted name, else
/// `TRANSACTION.SUCCESS`. The body is compact JSON `{id, create_time (created_at in +08:00),
/// resource_type, event_type, summary, resource}`; the headers carry the attempt's timestamp, a
/// fresh nonce, the SHA256withRSA signature over `"{ts}\n{nonce}\n{body}\n"`, the serial and the
/// signature type.
pub fn encode(
    c: &Credentials,
    n: &OutgoingNotification<'_>,
) -> Result<EncodedRequest, ProfileError> {
    let mut resource: Map<String, Value> = serde_json::from_slice(n.payload).map_err(|e| {
        ProfileError::Encode(format!(
            "the wechatpay-v3 payload must be a JSON object (the decrypted resource): {e}"
        ))
    })?;
    resource
        .entry("appid")
        .or_insert_with(|| Value::String(c.appid.clone()));
    resource
        .entry("mchid")
        .or_insert_with(|| Value::String(c.mchid.clone()));
    let plaintext = serde_json::to_vec(&resource)
        .map_err(|e| ProfileError::Encode(format!("cannot serialise the resource: {e}")))?;

    let event_type = if is_wechat_event_type(n.event_type) {
        n.event_type
    } else {
        "TRANSACTION.SUCCESS"
    };
    // The summary WeChat Pay writes for each event.
    let (original_type, summary) = match event_type {
        "REFUND.ABNORMAL" => ("refund", "退款异常"),
        "REFUND.CLOSED" => ("refund", "退款关闭"),
        t if t.starts_with("REFUND.") => ("refund", "退款成功"),
        _ => ("transaction", "支付成功"),
    };
    let nonce = random_alphanumeric(NONCE_LEN);
    let ciphertext = encrypt_resource(c.api_v3_key.as_bytes(), &nonce, original_type, &plaintext)?;
    let create_time = china_rfc3339(n.created_at.get()).ok_or_else(|| {
        ProfileError::Encode(format!("created_at {} is out of range", n.created_at))
    })?;
    let body = serde_json::to_vec(&Body {
        id: n.notify_id,
        create_time,
        resource_type: RESOURCE_TYPE,
        event_type,
        summary,
        resource: Resource {
            original_type,
            algorithm: ALGORITHM,
            ciphertext,
            associated_data: original_type,
            nonce,
        },
    })
    .map_err(|e| ProfileError::Encode(format!("cannot serialise the body: {e}")))?;

    let timestamp = n.timestamp.to_string();
    let header_nonce = random_alphanumeric(32);
    let signature =
        keys::sign_sha256_cached(&c.private_key, &message(&timestamp, &header_nonce, &body))
            .map_err(ProfileError::Sign)?;
    Ok(EncodedRequest {
        method: "POST",
        query: String::new(),
        content_type: "application/json".into(),
        headers: vec![
            (HEADER_TIMESTAMP.into(), timestamp),
            (HEADER_NONCE.into(), header_nonce),
            (HEADER_SIGNATURE.into(), signature),
            (HEADER_SERIAL.into(), c.serial.clone()),
            (HEADER_SIGNATURE_TYPE.into(), SIGNATURE_TYPE.into()),
        ],
        body,
    })
}

fn signing_key(c: &Credentials) -> Result<rsa::RsaPrivateKey, ProfileError> {
    keys::parse_private_key(&c.private_key).map_err(|e| {
        ProfileError::BadCredentials(format!("the stored wechatpay-v3 private_key: {e}"))
    })
}

/// What a receiver verifies and decrypts with: the platform public keys (each under its serial
/// when known) and the APIv3 key. Its `Debug` shows serials, never the APIv3 key.
#[derive(Clone)]
pub struct ReceiverKeys {
    pub platform_keys: Vec<(Option<String>, RsaPublicKey)>,
    pub api_v3_key: Option<[u8; API_V3_KEY_LEN]>,
}

impl std::fmt::Debug for ReceiverKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let serials: Vec<&str> = self
            .platform_keys
            .iter()
            .map(|(s, _)| s.as_deref().unwrap_or("<any>"))
            .collect();
        f.debug_struct("wechatpay_v3::ReceiverKeys")
            .field("platform_key_serials", &serials)
            .field(
                "api_v3_key",
                &self.api_v3_key.map(|_| "<redacted>").unwrap_or("<none>"),
            )
            .finish()
    }
}

/// Splits `SERIAL=keydata` into its parts; `None` when `s` is key data alone (PEM, base64 —
/// whose `=` is only padding at the end — or a path).
fn split_serial(s: &str) -> Option<(&str, &str)> {
    let (serial, rest) = s.trim().split_once('=')?;
    let is_serial = !serial.is_empty()
        && serial.len() <= 64
        && serial
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        && !rest.trim().is_empty()
        && !rest.trim().bytes().all(|b| b == b'=');
    is_serial.then_some((serial, rest.trim()))
}

/// Receiver keys from strings and an optional APIv3 key.
///
/// Each key string is `SERIAL=keydata` or `keydata` alone, where keydata is a platform public
/// key or certificate in any form [`keys::parse_public_key`] reads, or a file path holding one.
/// A certificate without `SERIAL=` is filed under its own serial number; other keys without a
/// serial match any `Wechatpay-Serial`. `decrypt_key` (the APIv3 key, or a file holding it)
/// must be 32 bytes.
pub fn receiver_keys(
    keys: &[String],
    decrypt_key: Option<&str>,
) -> Result<ReceiverKeys, ReceiveError> {
    if keys.is_empty() {
        return Err(ReceiveError::Missing(
            "WeChat Pay platform public key".into(),
        ));
    }
    let mut platform_keys = Vec::with_capacity(keys.len());
    for (i, k) in keys.iter().enumerate() {
        let whole = keys::read_key_arg(k);
        let (serial, data) = if whole != *k {
            (None, whole)
        } else {
            match split_serial(k) {
                Some((serial, data)) => (Some(serial.to_string()), keys::read_key_arg(data)),
                None => (None, whole),
            }
        };
        let public = keys::parse_public_key(&data)
            .map_err(|e| ReceiveError::UnknownKey(format!("platform public key {}: {e}", i + 1)))?;
        let serial = serial.or_else(|| keys::certificate_serial(&data));
        platform_keys.push((serial, public));
    }
    let api_v3_key = match decrypt_key {
        None => None,
        Some(arg) => {
            let read = keys::read_key_arg(arg);
            let text = if read != arg {
                read.trim().to_string()
            } else {
                read
            };
            let bytes: [u8; API_V3_KEY_LEN] = text.as_bytes().try_into().map_err(|_| {
                ReceiveError::Decrypt(format!(
                    "the APIv3 key must be exactly {API_V3_KEY_LEN} bytes, not {}",
                    text.len()
                ))
            })?;
            Some(bytes)
        }
    };
    Ok(ReceiverKeys {
        platform_keys,
        api_v3_key,
    })
}

/// Receiver keys that verify and decrypt what `c` sends.
pub fn receiver_keys_from(c: &Credentials) -> Result<ReceiverKeys, ProfileError> {
    let public = signing_key(c)?.to_public_key();
    let api_v3_key: [u8; API_V3_KEY_LEN] = c.api_v3_key.as_bytes().try_into().map_err(|_| {
        ProfileError::BadCredentials("the stored api_v3_key is not 32 bytes".into())
    })?;
    Ok(ReceiverKeys {
        platform_keys: vec![(Some(c.serial.clone()), public)],
        api_v3_key: Some(api_v3_key),
    })
}

fn required_header<'a>(req: &IncomingRequest<'a>, name: &str) -> Result<&'a str, ReceiveError> {
    // `IncomingRequest::header` borrows from `req.headers`, which lives for `'a`.
    req.headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ReceiveError::Missing(name.to_string()))
}

fn str_field(obj: &Map<String, Value>, key: &str) -> Option<String> {
    obj.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// Whether two certificate serials (or public-key ids) name the same key: compared
/// case-insensitively and without leading zeros, since tools print serials both ways (a
/// `BigInteger.toString(16)` drops the zeros WeChat's `Wechatpay-Serial` keeps, see
/// wechatpay-apiv3/wechatpay-go#46; the header is upper-case hex, configured serials are
/// often lower-case).
fn same_serial(configured: &str, header: &str) -> bool {
    let norm = |s: &str| {
        let s = s.trim();
        let t = s.trim_start_matches('0');
        if t.is_empty() && !s.is_empty() {
            "0".to_string()
        } else {
            t.to_ascii_uppercase()
        }
    };
    norm(configured) == norm(header)
}

/// Verifies a WeChat Pay v3 notification, decrypts its resource and decodes it.
///
/// In order: a signature starting with `WECHATPAY/SIGNTEST/` is a probe and is refused
/// ([`ReceiveError::ProbeRequest`]) before anything else; the request must be a JSON POST with
/// the `Wechatpay-*` headers; the timestamp must be less than 5 minutes from `req.now`; when
/// any key has a serial, `Wechatpay-Serial` must name one (compared case-insensitively and
/// without leading zeros; keys without a serial always take part); the signature must
/// verify over `"{ts}\n{nonce}\n{raw body}\n"`; `resource_type` must be
/// `encrypt-resource`; then the resource is decrypted with the APIv3 key. The amount is `amount.total` (`amount.refund` for refunds)
/// in fen with `amount.currency` (CNY when absent); `fields` is the outer JSON with `resource`
/// replaced by the decrypted object.
pub fn verify(
    keys: &ReceiverKeys,
    req: &IncomingRequest<'_>,
) -> Result<VerifiedNotification, ReceiveError> {
    verify_detailed(keys, req).map_err(|r| r.error)
}

/// [`verify`], saying whether the signature had verified when a request is refused: a
/// correctly signed body whose resource is not a WeChat resource, or does not decrypt with
/// the APIv3 key, is a [`Refusal::signed`].
pub fn verify_detailed(
    keys: &ReceiverKeys,
    req: &IncomingRequest<'_>,
) -> Result<VerifiedNotification, Refusal> {
    check_signature(keys, req).map_err(Refusal::unsigned)?;
    decode(keys, req.body).map_err(Refusal::signed)
}

/// Probe, method, content type, headers, timestamp window, serial, signature.
fn check_signature(keys: &ReceiverKeys, req: &IncomingRequest<'_>) -> Result<(), ReceiveError> {
    if req
        .header(HEADER_SIGNATURE)
        .is_some_and(|s| s.trim_start().starts_with(PROBE_PREFIX))
    {
        return Err(ReceiveError::ProbeRequest);
    }
    if !req.method.eq_ignore_ascii_case("POST") {
        return Err(ReceiveError::MalformedBody(format!(
            "method {:?}: notifications are POSTed",
            req.method
        )));
    }
    match req.media_type() {
        Some(m) if m == "application/json" => {}
        other => {
            return Err(ReceiveError::UnsupportedContentType(
                other.unwrap_or_default(),
            ))
        }
    }
    let timestamp = required_header(req, HEADER_TIMESTAMP)?;
    let nonce = required_header(req, HEADER_NONCE)?;
    let signature = required_header(req, HEADER_SIGNATURE)?;
    let serial = required_header(req, HEADER_SERIAL)?;
    if let Some(t) = req.header(HEADER_SIGNATURE_TYPE) {
        if !t.trim().is_empty() && t.trim() != SIGNATURE_TYPE {
            return Err(ReceiveError::BadSignature(format!(
                "unsupported {HEADER_SIGNATURE_TYPE} {t:?}; expected {SIGNATURE_TYPE}"
            )));
        }
    }
    if !timestamp.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ReceiveError::MalformedBody(format!(
            "{HEADER_TIMESTAMP} is not a whole number of unix seconds"
        )));
    }
    let ts: i64 = timestamp
        .parse()
        .map_err(|_| ReceiveError::MalformedBody(format!("{HEADER_TIMESTAMP} is out of range")))?;
    if (i128::from(req.now) - i128::from(ts)).abs() >= i128::from(TOLERANCE_SECS) {
        return Err(ReceiveError::TimestampOutOfWindow {
            timestamp: ts,
            now: req.now,
        });
    }
    let any_serials = keys.platform_keys.iter().any(|(s, _)| s.is_some());
    let candidates: Vec<&RsaPublicKey> = keys
        .platform_keys
        .iter()
        .filter(|(s, _)| s.as_deref().is_none_or(|s| same_serial(s, serial)))
        .map(|(_, k)| k)
        .collect();
    if candidates.is_empty() {
        return Err(if any_serials {
            ReceiveError::UnknownKey(format!("{HEADER_SERIAL} {serial:?}"))
        } else {
            ReceiveError::UnknownKey("no platform public key is configured".into())
        });
    }
    let signed = message(timestamp, nonce, req.body);
    if !candidates
        .iter()
        .any(|k| keys::verify_sha256(k, &signed, signature))
    {
        return Err(ReceiveError::BadSignature(format!(
            "{HEADER_SIGNATURE} does not verify under the platform key for serial {serial:?}"
        )));
    }
    Ok(())
}

/// The notification of a correctly signed body: its resource checked and decrypted.
fn decode(keys: &ReceiverKeys, body: &[u8]) -> Result<VerifiedNotification, ReceiveError> {
    let outer: Map<String, Value> = serde_json::from_slice(body)
        .map_err(|e| ReceiveError::MalformedBody(format!("the body is not a JSON object: {e}")))?;
    match outer.get("resource_type").and_then(Value::as_str) {
        Some(RESOURCE_TYPE) => {}
        Some(other) => {
            return Err(ReceiveError::MalformedBody(format!(
                "resource_type is {other:?}, not {RESOURCE_TYPE:?}"
            )))
        }
        None => return Err(ReceiveError::Missing("resource_type".into())),
    }
    let resource = outer
        .get("resource")
        .and_then(Value::as_object)
        .ok_or_else(|| ReceiveError::Missing("resource".into()))?;
    let resource_str = |k: &str| {
        resource
            .get(k)
            .and_then(Value::as_str)
            .ok_or_else(|| ReceiveError::Missing(format!("resource.{k}")))
    };
    let algorithm = resource_str("algorithm")?;
    if algorithm != ALGORITHM {
        return Err(ReceiveError::Decrypt(format!(
            "unsupported algorithm {algorithm:?}; expected {ALGORITHM}"
        )));
    }
    let api_v3_key = keys
        .api_v3_key
        .as_ref()
        .ok_or_else(|| ReceiveError::Decrypt("no APIv3 key".into()))?;
    let associated_data = resource
        .get("associated_data")
        .and_then(Value::as_str)
        .unwrap_or("");
    let plaintext = decrypt_resource(
        api_v3_key,
        resource_str("nonce")?,
        associated_data,
        resource_str("ciphertext")?,
    )?;
    let decrypted: Map<String, Value> = serde_json::from_slice(&plaintext).map_err(|e| {
        ReceiveError::MalformedBody(format!("the decrypted resource is not a JSON object: {e}"))
    })?;

    let notify_id = str_field(&outer, "id").ok_or_else(|| ReceiveError::Missing("id".into()))?;
    let event_type = str_field(&outer, "event_type");
    let refund = event_type
        .as_deref()
        .is_some_and(|t| t.starts_with("REFUND."))
        || resource.get("original_type").and_then(Value::as_str) == Some("refund");
    let amount = match decrypted.get("amount").and_then(Value::as_object) {
        None => None,
        Some(a) => {
            let field = if refund { "refund" } else { "total" };
            let minor = match a.get(field) {
                None => None,
                Some(v) => Some(
                    v.as_i64()
                        .ok_or_else(|| ReceiveError::BadAmount(v.to_string()))?,
                ),
            };
            minor.map(|minor| Amount {
                minor,
                currency: str_field(a, "currency").unwrap_or_else(|| "CNY".into()),
            })
        }
    };
    let status =
        str_field(&decrypted, "trade_state").or_else(|| str_field(&decrypted, "refund_status"));
    let app_id = str_field(&decrypted, "appid").or_else(|| str_field(&decrypted, "sp_appid"));
    let merchant_id = str_field(&decrypted, "mchid").or_else(|| str_field(&decrypted, "sp_mchid"));
    let out_trade_no = str_field(&decrypted, "out_trade_no");
    let transaction_id = str_field(&decrypted, "transaction_id");
    let mut fields: std::collections::BTreeMap<String, Value> = outer.into_iter().collect();
    fields.insert("resource".into(), Value::Object(decrypted));
    Ok(VerifiedNotification {
        profile: crate::Profile::WechatPayV3,
        notify_id,
        app_id,
        merchant_id,
        out_trade_no,
        transaction_id,
        amount,
        status,
        event_type,
        fields,
    })
}

/// The exact message the signature must cover: `"{ts}\n{nonce}\n{body}\n"`.
pub fn explain(req: &IncomingRequest<'_>) -> Result<String, ReceiveError> {
    let timestamp = required_header(req, HEADER_TIMESTAMP)?;
    let nonce = required_header(req, HEADER_NONCE)?;
    String::from_utf8(message(timestamp, nonce, req.body))
        .map_err(|_| ReceiveError::MalformedBody("the body is not UTF-8".into()))
}

/// The acknowledgement: 204 with no body.
pub fn ack_reply() -> Reply {
    Reply {
        status: 204,
        content_type: "text/plain",
        body: Vec::new(),
    }
}

/// A refusal: 500 with `{"code":"FAIL","message":reason}`.
pub fn failure_reply(reason: &str) -> Reply {
    Reply {
        status: 500,
        content_type: "application/json",
        body: json!({"code": "FAIL", "message": reason})
            .to_string()
            .into_bytes(),
    }
}

/// WeChat Pay v3's schedule: 15 retries over about 24 hours.
pub fn default_retry() -> RetryPolicy {
    RetryPolicy::named(PROFILE).unwrap_or_else(RetryPolicy::standard)
}

/// Any 2xx (WeChat Pay takes 200 or 204).
pub fn default_ack() -> AckRule {
    AckRule::Http2xx
}

fn is_refund_event(n: &VerifiedNotification) -> bool {
    n.event_type
        .as_deref()
        .is_some_and(|t| t.starts_with("REFUND."))
}

/// What a WeChat Pay v3 notification means for its order, from its decrypted `resource`:
/// a `REFUND.*` event is one refund (the decoded amount) against `amount.total`; a
/// transaction pays on `trade_state=SUCCESS` and closes on `CLOSED`.
pub fn read_order(n: &VerifiedNotification) -> Result<crate::order::OrderReading, ReceiveError> {
    use crate::order::{int_field, missing, status_name, text, OrderEvent, OrderReading};
    let resource = n.fields.get("resource");
    let field = |k: &str| text(resource.and_then(|r| r.get(k)));
    if is_refund_event(n) {
        if field("refund_status") != Some("SUCCESS") {
            return Ok(OrderReading::no_change(status_name(n)));
        }
        let refund = n
            .amount
            .as_ref()
            .ok_or_else(|| missing("resource.amount.refund"))?;
        let order_total = int_field(
            resource
                .and_then(|r| r.get("amount"))
                .and_then(|a| a.get("total")),
            "resource.amount.total",
        )?;
        return Ok(OrderReading {
            event: OrderEvent::Refund(refund.minor),
            total: Some(crate::receive::Amount {
                minor: order_total,
                currency: refund.currency.clone(),
            }),
        });
    }
    let event = match field("trade_state") {
        Some("SUCCESS") => OrderEvent::Paid,
        Some("CLOSED") => OrderEvent::Closed,
        _ => OrderEvent::NoChange(status_name(n)),
    };
    Ok(OrderReading {
        event,
        total: n.amount.clone(),
    })
}

/// WeChat Pay v3 resources always carry `mchid`, and transactions `appid` (refund
/// resources have none).
pub fn carried_ids(n: &VerifiedNotification) -> crate::order::CarriedIds {
    crate::order::CarriedIds {
        app_id: (!is_refund_event(n)).then_some("resource.appid"),
        merchant_id: Some("resource.mchid"),
    }
}
