//! The Standard Webhooks profile (<https://www.standardwebhooks.com>): HMAC-SHA256 `v1` with
//! `whsec_` secrets, ed25519 `v1a` with `whsk_`/`whpk_` keys, several signatures during key
//! rotation, and a 5-minute timestamp window when verifying.
//!
//! Owns both directions of the wire format: key parsing and generation ([`SigningSecret`],
//! [`VerifyKey`], [`generate_hmac_secret`], [`generate_ed25519`]), the signed content
//! ([`signed_content`]), signing ([`sign`]) and verifying ([`verify`]), and an app's stored
//! key set with its rotation grace periods ([`Keys`]).
//!
//! Secrets never leave this module in readable form except where the caller asked for them
//! (the generators): every `Debug` here redacts, and no error message quotes key material.
//! The crypto is the RustCrypto / dalek crates'; HMAC tags are compared in constant time.
use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use hmac::{Hmac, Mac};
use rand::rngs::OsRng;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::profile::bad_credentials;
use crate::profile::{EncodedRequest, OutgoingNotification, ProfileError};

/// Prefix of an HMAC secret (`whsec_` + base64 of the key bytes).
pub const HMAC_SECRET_PREFIX: &str = "whsec_";
/// Prefix of an ed25519 secret key (`whsk_` + base64 of the 32-byte seed, or of the 64-byte
/// seed-and-public-key pair).
pub const SECRET_KEY_PREFIX: &str = "whsk_";
/// Prefix of an ed25519 public key (`whpk_` + base64 of its 32 bytes).
pub const PUBLIC_KEY_PREFIX: &str = "whpk_";

/// Header carrying the delivery's stable id.
pub const HEADER_ID: &str = "webhook-id";
/// Header carrying the attempt's unix time in seconds.
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
/// Header carrying the space-separated signatures.
pub const HEADER_SIGNATURE: &str = "webhook-signature";

/// How far (in seconds, either way) a timestamp may be from now and still verify.
pub const TOLERANCE_SECS: i64 = 300;

/// The spec's bounds on an HMAC secret's length, in bytes (192 to 512 bits). Enforced when
/// Herald accepts a secret to sign with ([`SigningSecret::parse_for_signing`]); parsing for
/// verification accepts any non-empty secret, so Herald can verify senders that chose less.
pub const HMAC_SECRET_MIN_BYTES: usize = 24;
/// See [`HMAC_SECRET_MIN_BYTES`].
pub const HMAC_SECRET_MAX_BYTES: usize = 64;

type HmacSha256 = Hmac<Sha256>;

/// Standard base64 that accepts input with or without `=` padding (consoles and `.env` files
/// are not consistent about it). Encoding always uses [`STANDARD`], padded.
const LENIENT_B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a key string was refused. Messages name the kind of key, never its content.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error(
        "unrecognised key: expected a whsec_ secret, a whsk_ secret key or a whpk_ public key"
    )]
    UnknownPrefix,
    #[error("the {prefix} key is not valid base64")]
    BadBase64 { prefix: &'static str },
    #[error("the {prefix} key decodes to {got} bytes; expected {expected}")]
    BadLength {
        prefix: &'static str,
        expected: &'static str,
        got: usize,
    },
    #[error(
        "the whsk_ key pair is inconsistent: its public half does not belong to its secret half"
    )]
    BadKeyPair,
    #[error("the whpk_ key is not a valid ed25519 public key")]
    BadPublicKey,
    #[error("a whpk_ public key can only verify; signing needs a whsec_ or whsk_ secret")]
    PublicKeyCannotSign,
    #[error("no key is valid at this time: every key has expired")]
    NoValidKey,
}

/// Why a request did not verify.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// A required header is absent or empty (its name).
    #[error("missing {0} header")]
    MissingHeader(&'static str),
    #[error("webhook-timestamp is not a whole number of unix seconds")]
    BadTimestamp,
    #[error("webhook-timestamp {timestamp} is {} now ({now}); at most {tolerance_secs} s either way is accepted", skew(*timestamp, *now))]
    TimestampOutOfWindow {
        timestamp: i64,
        now: i64,
        tolerance_secs: i64,
    },
    #[error("no verification key is configured")]
    NoKeys,
    #[error("no signature in webhook-signature matches the configured keys")]
    NoMatchingSignature,
}

fn skew(timestamp: i64, now: i64) -> String {
    let diff = i128::from(timestamp) - i128::from(now);
    if diff < 0 {
        format!("{} s before", -diff)
    } else {
        format!("{diff} s after")
    }
}

/// An HMAC-SHA256 key, ready to use. Its `Debug` redacts it.
#[derive(Clone)]
pub struct HmacSecret {
    /// The keyed MAC state; cloned for each message.
    mac: HmacSha256,
}

impl HmacSecret {
    fn from_bytes(bytes: &[u8]) -> Result<HmacSecret, KeyError> {
        if bytes.is_empty() {
            return Err(KeyError::BadLength {
                prefix: HMAC_SECRET_PREFIX,
                expected: "at least 1",
                got: 0,
            });
        }
        // HMAC takes keys of any length, so this cannot fail; map it anyway rather than panic.
        let mac = HmacSha256::new_from_slice(bytes).map_err(|_| KeyError::BadLength {
            prefix: HMAC_SECRET_PREFIX,
            expected: "at least 1",
            got: bytes.len(),
        })?;
        Ok(HmacSecret { mac })
    }

    fn tag(&self, content: &[u8]) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(content);
        mac.finalize().into_bytes().into()
    }
}

impl std::fmt::Debug for HmacSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HmacSecret(<redacted>)")
    }
}

/// An ed25519 signing key. Its `Debug` shows only the public key.
#[derive(Clone)]
pub struct Ed25519Secret {
    key: SigningKey,
}

impl Ed25519Secret {
    /// The `whpk_` form of the public key.
    pub fn public_key(&self) -> String {
        encode_public_key(&self.key.verifying_key())
    }
}

impl std::fmt::Debug for Ed25519Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Ed25519Secret(<redacted>, public_key: {})",
            self.public_key()
        )
    }
}

/// An ed25519 public key (verifies `v1a` signatures).
#[derive(Clone, PartialEq, Eq)]
pub struct Ed25519PublicKey {
    key: VerifyingKey,
}

impl Ed25519PublicKey {
    /// The `whpk_` form of the key.
    pub fn encoded(&self) -> String {
        encode_public_key(&self.key)
    }
}

impl std::fmt::Debug for Ed25519PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ed25519PublicKey({})", self.encoded())
    }
}

fn encode_public_key(key: &VerifyingKey) -> String {
    format!("{PUBLIC_KEY_PREFIX}{}", STANDARD.encode(key.as_bytes()))
}

/// Material that signs: an HMAC secret (`v1`) or an ed25519 secret key (`v1a`).
#[derive(Clone, Debug)]
pub enum SigningSecret {
    Hmac(HmacSecret),
    Ed25519(Ed25519Secret),
}

impl SigningSecret {
    /// Parses `whsec_<base64>` (any non-empty length) or `whsk_<base64>` (a 32-byte seed or
    /// a 64-byte seed-and-public-key pair). Surrounding whitespace is ignored. A `whpk_`
    /// public key is refused with [`KeyError::PublicKeyCannotSign`].
    pub fn parse(s: &str) -> Result<SigningSecret, KeyError> {
        let s = s.trim();
        if let Some(b64) = s.strip_prefix(HMAC_SECRET_PREFIX) {
            let bytes = decode(HMAC_SECRET_PREFIX, b64)?;
            Ok(SigningSecret::Hmac(HmacSecret::from_bytes(&bytes)?))
        } else if let Some(b64) = s.strip_prefix(SECRET_KEY_PREFIX) {
            Ok(SigningSecret::Ed25519(parse_ed25519_secret(b64)?))
        } else if s.starts_with(PUBLIC_KEY_PREFIX) {
            Err(KeyError::PublicKeyCannotSign)
        } else {
            Err(KeyError::UnknownPrefix)
        }
    }

    /// Like [`SigningSecret::parse`], and also holds an HMAC secret to the spec's length of
    /// 24 to 64 bytes: for secrets Herald will sign with.
    pub fn parse_for_signing(s: &str) -> Result<SigningSecret, KeyError> {
        let secret = SigningSecret::parse(s)?;
        if let Some(b64) = s.trim().strip_prefix(HMAC_SECRET_PREFIX) {
            let len = decode(HMAC_SECRET_PREFIX, b64)?.len();
            if !(HMAC_SECRET_MIN_BYTES..=HMAC_SECRET_MAX_BYTES).contains(&len) {
                return Err(KeyError::BadLength {
                    prefix: HMAC_SECRET_PREFIX,
                    expected: "24 to 64",
                    got: len,
                });
            }
        }
        Ok(secret)
    }

    /// `"hmac"` or `"ed25519"`.
    pub fn key_type(&self) -> &'static str {
        match self {
            SigningSecret::Hmac(_) => "hmac",
            SigningSecret::Ed25519(_) => "ed25519",
        }
    }

    /// The `whpk_` public key of an ed25519 secret; `None` for HMAC (it has no public half).
    pub fn public_key(&self) -> Option<String> {
        match self {
            SigningSecret::Hmac(_) => None,
            SigningSecret::Ed25519(k) => Some(k.public_key()),
        }
    }

    /// The key that verifies this secret's signatures.
    pub fn verify_key(&self) -> VerifyKey {
        match self {
            SigningSecret::Hmac(h) => VerifyKey::Hmac(h.clone()),
            SigningSecret::Ed25519(k) => VerifyKey::Ed25519(Ed25519PublicKey {
                key: k.key.verifying_key(),
            }),
        }
    }

    /// One `v1,<base64>` or `v1a,<base64>` signature over `content`.
    fn signature(&self, content: &[u8]) -> String {
        match self {
            SigningSecret::Hmac(h) => format!("v1,{}", STANDARD.encode(h.tag(content))),
            SigningSecret::Ed25519(k) => {
                format!("v1a,{}", STANDARD.encode(k.key.sign(content).to_bytes()))
            }
        }
    }
}

/// Material that verifies: an HMAC secret (`v1`) or an ed25519 public key (`v1a`).
#[derive(Clone, Debug)]
pub enum VerifyKey {
    Hmac(HmacSecret),
    Ed25519(Ed25519PublicKey),
}

impl VerifyKey {
    /// Parses `whsec_...`, `whpk_...` (32 bytes), or `whsk_...` (its public key is derived).
    /// Surrounding whitespace is ignored.
    pub fn parse(s: &str) -> Result<VerifyKey, KeyError> {
        let s = s.trim();
        if let Some(b64) = s.strip_prefix(PUBLIC_KEY_PREFIX) {
            let bytes = decode(PUBLIC_KEY_PREFIX, b64)?;
            let bytes: [u8; 32] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| KeyError::BadLength {
                    prefix: PUBLIC_KEY_PREFIX,
                    expected: "32",
                    got: bytes.len(),
                })?;
            let key = VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError::BadPublicKey)?;
            Ok(VerifyKey::Ed25519(Ed25519PublicKey { key }))
        } else {
            SigningSecret::parse(s).map(|secret| secret.verify_key())
        }
    }

    /// `"hmac"` or `"ed25519"`.
    pub fn key_type(&self) -> &'static str {
        match self {
            VerifyKey::Hmac(_) => "hmac",
            VerifyKey::Ed25519(_) => "ed25519",
        }
    }
}

fn decode(prefix: &'static str, b64: &str) -> Result<Vec<u8>, KeyError> {
    LENIENT_B64
        .decode(b64)
        .map_err(|_| KeyError::BadBase64 { prefix })
}

fn parse_ed25519_secret(b64: &str) -> Result<Ed25519Secret, KeyError> {
    let bytes = decode(SECRET_KEY_PREFIX, b64)?;
    let key = match bytes.len() {
        32 => {
            let mut seed = [0u8; 32];
            seed.copy_from_slice(&bytes);
            SigningKey::from_bytes(&seed)
        }
        64 => {
            let mut pair = [0u8; 64];
            pair.copy_from_slice(&bytes);
            SigningKey::from_keypair_bytes(&pair).map_err(|_| KeyError::BadKeyPair)?
        }
        got => {
            return Err(KeyError::BadLength {
                prefix: SECRET_KEY_PREFIX,
                expected: "32 (seed) or 64 (seed and public key)",
                got,
            })
        }
    };
    Ok(Ed25519Secret { key })
}

/// A new HMAC secret: `whsec_` + base64 of 32 random bytes from the OS.
///
/// Like every OS-randomness consumer in Rust, this panics only if the OS random source itself
/// fails (no input can cause it).
pub fn generate_hmac_secret() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    format!("{HMAC_SECRET_PREFIX}{}", STANDARD.encode(bytes))
}

/// A new ed25519 key pair: (`whsk_` + base64 of the 32-byte seed, `whpk_` + base64 of the
/// public key).
pub fn generate_ed25519() -> (String, String) {
    let mut seed = [0u8; 32];
    OsRng.fill_bytes(&mut seed);
    let key = SigningKey::from_bytes(&seed);
    let secret = format!("{SECRET_KEY_PREFIX}{}", STANDARD.encode(seed));
    (secret, encode_public_key(&key.verifying_key()))
}

/// The bytes that are signed: `"{msg_id}.{timestamp}.{body}"`.
pub fn signed_content(msg_id: &str, timestamp: i64, body: &[u8]) -> Vec<u8> {
    let head = format!("{msg_id}.{timestamp}.");
    let mut content = Vec::with_capacity(head.len() + body.len());
    content.extend_from_slice(head.as_bytes());
    content.extend_from_slice(body);
    content
}

/// The `webhook-signature` header value: one signature per secret, space-separated, in the
/// order given (the current key first). Empty when `secrets` is.
pub fn sign(msg_id: &str, timestamp: i64, body: &[u8], secrets: &[SigningSecret]) -> String {
    let content = signed_content(msg_id, timestamp, body);
    secrets
        .iter()
        .map(|s| s.signature(&content))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Verifies one request: `msg_id`, `timestamp` and `signature_header` are the raw values of
/// the `webhook-id`, `webhook-timestamp` and `webhook-signature` headers (pass `""` for an
/// absent header), `body` the raw request body, `now` the receiver's unix time.
///
/// The timestamp must be a whole number of seconds (digits only) at most
/// [`TOLERANCE_SECS`] from `now`. The request verifies when any `v1` signature matches any
/// HMAC key (constant-time compare) or any `v1a` signature verifies under any ed25519 key;
/// entries of other versions, or that do not decode, are ignored.
pub fn verify(
    msg_id: &str,
    timestamp: &str,
    signature_header: &str,
    body: &[u8],
    keys: &[VerifyKey],
    now: i64,
) -> Result<(), VerifyError> {
    if msg_id.is_empty() {
        return Err(VerifyError::MissingHeader(HEADER_ID));
    }
    let timestamp = timestamp.trim();
    if timestamp.is_empty() {
        return Err(VerifyError::MissingHeader(HEADER_TIMESTAMP));
    }
    if signature_header.trim().is_empty() {
        return Err(VerifyError::MissingHeader(HEADER_SIGNATURE));
    }
    if !timestamp.bytes().all(|b| b.is_ascii_digit()) {
        return Err(VerifyError::BadTimestamp);
    }
    let ts: i64 = timestamp.parse().map_err(|_| VerifyError::BadTimestamp)?;
    if (i128::from(now) - i128::from(ts)).abs() > i128::from(TOLERANCE_SECS) {
        return Err(VerifyError::TimestampOutOfWindow {
            timestamp: ts,
            now,
            tolerance_secs: TOLERANCE_SECS,
        });
    }
    if keys.is_empty() {
        return Err(VerifyError::NoKeys);
    }

    let content = signed_content(msg_id, ts, body);
    let hmac_tags: Vec<[u8; 32]> = keys
        .iter()
        .filter_map(|k| match k {
            VerifyKey::Hmac(h) => Some(h.tag(&content)),
            VerifyKey::Ed25519(_) => None,
        })
        .collect();
    for entry in signature_header.split_ascii_whitespace() {
        let Some((version, encoded)) = entry.split_once(',') else {
            continue;
        };
        match version {
            "v1" if !hmac_tags.is_empty() => {
                let Ok(sig) = LENIENT_B64.decode(encoded) else {
                    continue;
                };
                // Check every key, so the time taken does not depend on which one matched.
                let matched = hmac_tags.iter().fold(subtle::Choice::from(0), |acc, tag| {
                    acc | tag[..].ct_eq(&sig)
                });
                if bool::from(matched) {
                    return Ok(());
                }
            }
            "v1a" => {
                let Some(sig) = LENIENT_B64
                    .decode(encoded)
                    .ok()
                    .and_then(|b| Signature::from_slice(&b).ok())
                else {
                    continue;
                };
                let verified = keys.iter().any(|k| match k {
                    VerifyKey::Ed25519(pk) => pk.key.verify_strict(&content, &sig).is_ok(),
                    VerifyKey::Hmac(_) => false,
                });
                if verified {
                    return Ok(());
                }
            }
            _ => {}
        }
    }
    Err(VerifyError::NoMatchingSignature)
}

/// An app's keys: the current one first, then old ones still in their grace period.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keys {
    pub keys: Vec<KeyEntry>,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyEntry {
    /// `whsec_...` (HMAC) or `whsk_...` (ed25519 secret key).
    pub secret: String,
    /// Unix seconds after which this key no longer signs; `None` for the current key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
}

impl KeyEntry {
    /// A current key (no expiry).
    pub fn current(secret: String) -> KeyEntry {
        KeyEntry {
            secret,
            expires_at: None,
        }
    }

    /// Whether this key still signs at `now`: it has no expiry, or `now < expires_at`.
    pub fn is_valid_at(&self, now: i64) -> bool {
        match self.expires_at {
            None => true,
            Some(expires_at) => now < expires_at,
        }
    }

    /// `"hmac"`, `"ed25519"`, or `None` when the secret has neither prefix. Reads only the
    /// prefix; use [`SigningSecret::parse`] to validate the whole key.
    pub fn key_type(&self) -> Option<&'static str> {
        if self.secret.trim_start().starts_with(HMAC_SECRET_PREFIX) {
            Some("hmac")
        } else if self.secret.trim_start().starts_with(SECRET_KEY_PREFIX) {
            Some("ed25519")
        } else {
            None
        }
    }
}

impl Keys {
    /// One current key.
    pub fn single(secret: String) -> Keys {
        Keys {
            keys: vec![KeyEntry::current(secret)],
        }
    }

    /// The keys that sign at `now`, current first: every entry with no expiry or
    /// `now < expires_at`. Fails if any of them does not parse, or if none is left
    /// ([`KeyError::NoValidKey`]).
    pub fn signing_secrets(&self, now: i64) -> Result<Vec<SigningSecret>, KeyError> {
        let secrets = self
            .keys
            .iter()
            .filter(|k| k.is_valid_at(now))
            .map(|k| SigningSecret::parse(&k.secret))
            .collect::<Result<Vec<_>, _>>()?;
        if secrets.is_empty() {
            return Err(KeyError::NoValidKey);
        }
        Ok(secrets)
    }

    /// The keys that verify at `now` (the public halves of [`Keys::signing_secrets`]).
    pub fn verify_keys(&self, now: i64) -> Result<Vec<VerifyKey>, KeyError> {
        Ok(self
            .signing_secrets(now)?
            .iter()
            .map(SigningSecret::verify_key)
            .collect())
    }
}

// ---------------------------------------------------------------------------------------
// The profile's side: what `crate::Profile` calls for standard-webhooks.

const CREDENTIALS_SHAPE: &str = "credentials for standard-webhooks are null (generate an HMAC secret), {\"key_type\": \"hmac\" | \"ed25519\"} (generate one), or {\"secret\": \"whsec_...\" | \"whsk_...\"} (use it)";

/// A fresh key of `key_type` and its once-only view.
fn generate_key(key_type: &str) -> (String, serde_json::Value) {
    if key_type == "ed25519" {
        let (secret, public_key) = generate_ed25519();
        (secret, serde_json::json!({ "public_key": public_key }))
    } else {
        let secret = generate_hmac_secret();
        let view = serde_json::json!({ "secret": secret });
        (secret, view)
    }
}

/// Keys for a new app from the API's `credentials` value (see
/// [`crate::Profile::create_credentials`]). Error messages never quote the given secret.
pub fn create_keys(options: &serde_json::Value) -> Result<(Keys, serde_json::Value), ProfileError> {
    use serde_json::Value;
    let fields = crate::profile::credential_fields(options, CREDENTIALS_SHAPE)?;
    if fields.keys().any(|k| k != "secret" && k != "key_type") {
        return Err(bad_credentials(format!(
            "unknown field in credentials: {CREDENTIALS_SHAPE}"
        )));
    }
    let key_type = match fields.get("key_type") {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) if t == "hmac" || t == "ed25519" => Some(t.as_str()),
        Some(_) => return Err(bad_credentials("key_type must be \"hmac\" or \"ed25519\"")),
    };
    match fields.get("secret") {
        None | Some(Value::Null) => {
            let (secret, view) = generate_key(key_type.unwrap_or("hmac"));
            Ok((Keys::single(secret), view))
        }
        Some(Value::String(given)) => {
            let parsed = SigningSecret::parse_for_signing(given)
                .map_err(|e| bad_credentials(format!("secret: {e}")))?;
            if let Some(wanted) = key_type {
                if wanted != parsed.key_type() {
                    return Err(bad_credentials(format!(
                        "key_type is {wanted:?} but the secret is an {} key",
                        parsed.key_type()
                    )));
                }
            }
            let secret = given.trim().to_string();
            let view = match parsed.public_key() {
                Some(public_key) => serde_json::json!({ "public_key": public_key }),
                None => serde_json::json!({ "secret": secret }),
            };
            Ok((Keys::single(secret), view))
        }
        Some(_) => Err(bad_credentials(
            "secret must be a string such as \"whsec_...\" or \"whsk_...\"",
        )),
    }
}

/// A new current key of the same type as the current one, the current one kept until
/// `grace_until`, and old keys expired at `now` dropped (see [`crate::Profile::rotate`]).
/// An old key stored without an expiry (only the current key should lack one) also gets
/// `grace_until`; a `grace_until <= now` retires the previous key at once.
pub fn rotate_keys(
    current: &Keys,
    grace_until: i64,
    now: i64,
) -> Result<(Keys, serde_json::Value), ProfileError> {
    let first = current
        .keys
        .first()
        .ok_or_else(|| bad_credentials("there is no current key to rotate"))?;
    let key_type = SigningSecret::parse(&first.secret)
        .map_err(|e| bad_credentials(format!("current key: {e}")))?
        .key_type();
    let (secret, view) = generate_key(key_type);
    let mut keys = vec![KeyEntry::current(secret)];
    for (i, old) in current.keys.iter().enumerate() {
        let expires_at = match (i, old.expires_at) {
            (0, _) | (_, None) => grace_until,
            (_, Some(t)) => t,
        };
        if now < expires_at {
            keys.push(KeyEntry {
                secret: old.secret.clone(),
                expires_at: Some(expires_at),
            });
        }
    }
    Ok((Keys { keys }, view))
}

/// What may be shown about `keys` at any time: `{"key_type": "hmac"}` or
/// `{"key_type": "ed25519", "public_key": "whpk_..."}`, plus `"rotating_keys"`, the number
/// of old keys still signing at `now`. A current key that does not parse shows its kind by
/// prefix (`"unknown"` without one) and no public key.
pub fn public_view(keys: &Keys, now: i64) -> serde_json::Value {
    let mut view = serde_json::Map::new();
    let current = keys.keys.first();
    let parsed = current.and_then(|k| SigningSecret::parse(&k.secret).ok());
    let key_type = match (&parsed, current) {
        (Some(s), _) => s.key_type(),
        (None, Some(k)) => k.key_type().unwrap_or("unknown"),
        (None, None) => "none",
    };
    view.insert("key_type".into(), key_type.into());
    if let Some(public_key) = parsed.and_then(|s| s.public_key()) {
        view.insert("public_key".into(), public_key.into());
    }
    let rotating = keys
        .keys
        .iter()
        .skip(1)
        .filter(|k| k.is_valid_at(now))
        .count();
    view.insert("rotating_keys".into(), rotating.into());
    serde_json::Value::Object(view)
}

/// A `webhook-id` must be a plain header value without `.` (the spec: a `.` in the id would
/// make the signed content ambiguous).
fn check_msg_id(id: &str) -> Result<(), ProfileError> {
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_graphic() && b != b'.') {
        return Err(ProfileError::Encode(
            "the notify id must be non-empty printable ASCII without spaces or '.'".into(),
        ));
    }
    Ok(())
}

/// Encodes one attempt: the payload unchanged, `webhook-id`, `webhook-timestamp`, and
/// `webhook-signature` from every key still valid at `n.timestamp` (current first).
pub fn encode(keys: &Keys, n: &OutgoingNotification<'_>) -> Result<EncodedRequest, ProfileError> {
    check_msg_id(n.notify_id)?;
    let secrets = keys
        .signing_secrets(n.timestamp.get())
        .map_err(ProfileError::SigningSecret)?;
    let signature = sign(n.notify_id, n.timestamp.get(), n.payload, &secrets);
    Ok(EncodedRequest {
        method: "POST",
        query: String::new(),
        content_type: "application/json".to_string(),
        headers: vec![
            (HEADER_ID.to_string(), n.notify_id.to_string()),
            (HEADER_TIMESTAMP.to_string(), n.timestamp.to_string()),
            (HEADER_SIGNATURE.to_string(), signature),
        ],
        body: n.payload.to_vec(),
    })
}

/// Stands in for a secret in `Debug` output: shows its kind, never its content.
struct Redacted(Option<&'static str>);

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some("hmac") => f.write_str("whsec_<redacted>"),
            Some(_) => f.write_str("whsk_<redacted>"),
            None => f.write_str("<redacted>"),
        }
    }
}

impl std::fmt::Debug for KeyEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyEntry")
            .field("secret", &Redacted(self.key_type()))
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys").field("keys", &self.keys).finish()
    }
}

// --- the receiving side ---------------------------------------------------------------

/// Verification keys from the CLI's `--key` values (`whsec_`, `whpk_` or `whsk_`).
pub fn receiver_keys(keys: &[String]) -> Result<Vec<VerifyKey>, crate::receive::ReceiveError> {
    if keys.is_empty() {
        return Err(crate::receive::ReceiveError::UnknownKey(
            "no key given".into(),
        ));
    }
    keys.iter()
        .map(|k| {
            VerifyKey::parse(k.trim())
                .map_err(|e| crate::receive::ReceiveError::UnknownKey(e.to_string()))
        })
        .collect()
}

/// The verification keys matching an app's signing keys (current and rotating ones).
pub fn receiver_keys_from(keys: &Keys, now: i64) -> Vec<VerifyKey> {
    keys.verify_keys(now).unwrap_or_default()
}

/// Verifies a Standard Webhooks request and decodes it: the notify id is `webhook-id`, and
/// the JSON body's top-level fields are kept (an `out_trade_no`, `amount` + `currency`,
/// `status` or `type` in the body are picked up when present).
pub fn verify_request(
    keys: &[VerifyKey],
    req: &crate::receive::IncomingRequest<'_>,
) -> Result<crate::receive::VerifiedNotification, crate::receive::ReceiveError> {
    verify_request_detailed(keys, req).map_err(|r| r.error)
}

/// [`verify_request`], saying whether the signature had verified when a request is refused
/// (decoding a signed body cannot fail, so every refusal is unsigned).
pub fn verify_request_detailed(
    keys: &[VerifyKey],
    req: &crate::receive::IncomingRequest<'_>,
) -> Result<crate::receive::VerifiedNotification, crate::receive::Refusal> {
    use crate::receive::{Amount, ReceiveError, Refusal};
    let id = req.header(HEADER_ID).unwrap_or("");
    let ts = req.header(HEADER_TIMESTAMP).unwrap_or("");
    let sig = req.header(HEADER_SIGNATURE).unwrap_or("");
    verify(id, ts, sig, req.body, keys, req.now)
        .map_err(|e| match e {
            VerifyError::MissingHeader(h) => ReceiveError::Missing(format!("{h} header")),
            VerifyError::TimestampOutOfWindow { timestamp, now, .. } => {
                ReceiveError::TimestampOutOfWindow { timestamp, now }
            }
            VerifyError::BadTimestamp => {
                ReceiveError::MalformedBody("webhook-timestamp is not unix seconds".into())
            }
            VerifyError::NoKeys => ReceiveError::UnknownKey("no key configured".into()),
            VerifyError::NoMatchingSignature => ReceiveError::BadSignature(e.to_string()),
        })
        .map_err(Refusal::unsigned)?;
    let fields: std::collections::BTreeMap<String, serde_json::Value> =
        match serde_json::from_slice(req.body) {
            Ok(serde_json::Value::Object(map)) => map.into_iter().collect(),
            _ => std::collections::BTreeMap::new(),
        };
    let text = |k: &str| fields.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let amount = match (
        fields.get("amount").and_then(|v| v.as_i64()),
        text("currency"),
    ) {
        (Some(minor), Some(currency)) => Some(Amount {
            minor,
            currency: currency.to_ascii_uppercase(),
        }),
        _ => None,
    };
    Ok(crate::receive::VerifiedNotification {
        profile: crate::Profile::StandardWebhooks,
        notify_id: id.to_string(),
        app_id: text("app_id"),
        merchant_id: text("merchant_id"),
        out_trade_no: text("out_trade_no"),
        transaction_id: text("transaction_id"),
        amount,
        status: text("status"),
        event_type: text("type").or_else(|| text("event_type")),
        fields,
    })
}

/// The exact bytes that were signed: `{webhook-id}.{webhook-timestamp}.{body}`.
pub fn explain(req: &crate::receive::IncomingRequest<'_>) -> String {
    let id = req.header(HEADER_ID).unwrap_or("");
    let ts = req.header(HEADER_TIMESTAMP).unwrap_or("");
    format!("{id}.{ts}.{}", String::from_utf8_lossy(req.body))
}

/// Any 2xx acknowledges; Herald's receiver answers 204.
pub fn ack_reply() -> crate::receive::Reply {
    crate::receive::Reply {
        status: 204,
        content_type: "text/plain",
        body: Vec::new(),
    }
}

/// A non-2xx makes the sender retry.
pub fn failure_reply(reason: &str) -> crate::receive::Reply {
    crate::receive::Reply {
        status: 400,
        content_type: "application/json",
        body: serde_json::json!({ "error": reason })
            .to_string()
            .into_bytes(),
    }
}

/// What a Standard Webhooks payment notification means for its order, by Herald's event
/// names: `payment.succeeded` pays, `payment.closed` closes, `refund.succeeded` is one refund
/// of `refund_amount`; any other event type moves nothing.
pub fn read_order(
    n: &crate::receive::VerifiedNotification,
) -> Result<crate::order::OrderReading, crate::receive::ReceiveError> {
    use crate::order::{int_field, status_name, OrderEvent, OrderReading};
    let event = match n.event_type.as_deref() {
        Some("payment.succeeded") => OrderEvent::Paid,
        Some("payment.closed") => OrderEvent::Closed,
        Some("refund.succeeded") => {
            OrderEvent::Refund(int_field(n.fields.get("refund_amount"), "refund_amount")?)
        }
        _ => OrderEvent::NoChange(status_name(n)),
    };
    Ok(OrderReading {
        event,
        total: n.amount.clone(),
    })
}

/// Standard Webhooks carries no provider app or merchant id.
pub fn carried_ids(_n: &crate::receive::VerifiedNotification) -> crate::order::CarriedIds {
    crate::order::CarriedIds::default()
}

#[cfg(test)]
mod tests {
    use super::*;

    // The spec's example (also in shared/vectors/given.json).
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1614265330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn hmac_pair() -> (SigningSecret, VerifyKey) {
        let s = generate_hmac_secret();
        (
            SigningSecret::parse(&s).unwrap(),
            VerifyKey::parse(&s).unwrap(),
        )
    }

    fn ed_pair() -> (SigningSecret, VerifyKey) {
        let (sk, pk) = generate_ed25519();
        (
            SigningSecret::parse(&sk).unwrap(),
            VerifyKey::parse(&pk).unwrap(),
        )
    }

    fn ts_str(ts: i64) -> String {
        ts.to_string()
    }

    #[test]
    fn spec_example_signs_to_the_published_signature() {
        let secret = SigningSecret::parse(SECRET).unwrap();
        assert_eq!(sign(ID, TS, BODY, &[secret]), SIG);
    }

    #[test]
    fn spec_example_verifies_at_its_timestamp() {
        let key = VerifyKey::parse(SECRET).unwrap();
        assert_eq!(verify(ID, &ts_str(TS), SIG, BODY, &[key], TS), Ok(()));
    }

    #[test]
    fn signed_content_is_id_dot_timestamp_dot_body() {
        assert_eq!(
            signed_content(ID, TS, BODY),
            br#"msg_p5jXN8AQM9LWM0D4loKWxJek.1614265330.{"test": 2432232314}"#
        );
    }

    #[test]
    fn hmac_round_trip_verifies() {
        let (s, v) = hmac_pair();
        let header = sign("msg_1", 1000, b"{}", &[s]);
        assert!(header.starts_with("v1,"));
        assert_eq!(verify("msg_1", "1000", &header, b"{}", &[v], 1000), Ok(()));
    }

    #[test]
    fn ed25519_round_trip_verifies() {
        let (s, v) = ed_pair();
        let header = sign("msg_1", 1000, b"{}", &[s]);
        assert!(header.starts_with("v1a,"));
        assert_eq!(verify("msg_1", "1000", &header, b"{}", &[v], 1000), Ok(()));
    }

    #[test]
    fn any_changed_input_fails_verification() {
        for (s, v) in [hmac_pair(), ed_pair()] {
            let header = sign("msg_1", 1000, b"{\"a\":1}", &[s]);
            let keys = [v];
            let fail = |id: &str, ts: &str, body: &[u8]| {
                assert_eq!(
                    verify(id, ts, &header, body, &keys, 1000),
                    Err(VerifyError::NoMatchingSignature),
                    "{id} {ts} {body:?}"
                );
            };
            fail("msg_1", "1000", b"{\"a\":2}");
            fail("msg_1", "1000", b"{\"a\":1} ");
            fail("msg_2", "1000", b"{\"a\":1}");
            fail("msg_1", "1001", b"{\"a\":1}");
        }
    }

    #[test]
    fn a_wrong_key_fails_verification() {
        let (s, _) = hmac_pair();
        let (_, other_hmac) = hmac_pair();
        let (_, other_ed) = ed_pair();
        let header = sign("msg_1", 1000, b"{}", &[s]);
        assert_eq!(
            verify(
                "msg_1",
                "1000",
                &header,
                b"{}",
                &[other_hmac, other_ed],
                1000
            ),
            Err(VerifyError::NoMatchingSignature)
        );
        let (s, _) = ed_pair();
        let (_, other_ed) = ed_pair();
        let header = sign("msg_1", 1000, b"{}", &[s]);
        assert_eq!(
            verify("msg_1", "1000", &header, b"{}", &[other_ed], 1000),
            Err(VerifyError::NoMatchingSignature)
        );
    }

    #[test]
    fn timestamps_up_to_300_seconds_away_verify_and_301_do_not() {
        let (s, v) = hmac_pair();
        let keys = [v];
        let header = sign("msg_1", 10_000, b"{}", &[s]);
        for now in [9_700, 10_300] {
            assert_eq!(verify("msg_1", "10000", &header, b"{}", &keys, now), Ok(()));
        }
        for now in [9_699, 10_301] {
            assert_eq!(
                verify("msg_1", "10000", &header, b"{}", &keys, now),
                Err(VerifyError::TimestampOutOfWindow {
                    timestamp: 10_000,
                    now,
                    tolerance_secs: 300
                })
            );
        }
    }

    #[test]
    fn out_of_window_message_says_how_far_and_which_way() {
        let e = VerifyError::TimestampOutOfWindow {
            timestamp: 1000,
            now: 1301,
            tolerance_secs: 300,
        };
        assert_eq!(
            e.to_string(),
            "webhook-timestamp 1000 is 301 s before now (1301); at most 300 s either way is accepted"
        );
        let e = VerifyError::TimestampOutOfWindow {
            timestamp: 2000,
            now: 1000,
            tolerance_secs: 300,
        };
        assert!(e.to_string().contains("1000 s after now"));
    }

    #[test]
    fn rotation_header_verifies_with_either_key() {
        let (new_s, new_v) = hmac_pair();
        let (old_s, old_v) = ed_pair();
        let header = sign("msg_1", 1000, b"{}", &[new_s, old_s]);
        let parts: Vec<_> = header.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert!(parts[0].starts_with("v1,") && parts[1].starts_with("v1a,"));
        for key in [new_v, old_v] {
            assert_eq!(
                verify("msg_1", "1000", &header, b"{}", &[key], 1000),
                Ok(())
            );
        }
    }

    #[test]
    fn unknown_versions_and_garbage_entries_are_ignored() {
        let key = VerifyKey::parse(SECRET).unwrap();
        let ts = ts_str(TS);
        let header = format!("v2,xxx v1,not*base64 nocomma v1a,AAAA {SIG}");
        assert_eq!(
            verify(ID, &ts, &header, BODY, std::slice::from_ref(&key), TS),
            Ok(())
        );
        assert_eq!(
            verify(ID, &ts, "v2,xxx", BODY, &[key], TS),
            Err(VerifyError::NoMatchingSignature)
        );
    }

    #[test]
    fn a_v1_signature_does_not_verify_against_an_ed25519_key_or_the_reverse() {
        let secret = SigningSecret::parse(SECRET).unwrap();
        let (ed_s, ed_v) = ed_pair();
        let hmac_header = sign(ID, TS, BODY, std::slice::from_ref(&secret));
        assert_eq!(
            verify(ID, &ts_str(TS), &hmac_header, BODY, &[ed_v], TS),
            Err(VerifyError::NoMatchingSignature)
        );
        // Relabel an ed25519 signature as v1: it must not match the HMAC key.
        let ed_header = sign(ID, TS, BODY, &[ed_s]).replacen("v1a,", "v1,", 1);
        assert_eq!(
            verify(
                ID,
                &ts_str(TS),
                &ed_header,
                BODY,
                &[secret.verify_key()],
                TS
            ),
            Err(VerifyError::NoMatchingSignature)
        );
    }

    #[test]
    fn missing_headers_are_named() {
        let key = [VerifyKey::parse(SECRET).unwrap()];
        let ts = ts_str(TS);
        assert_eq!(
            verify("", &ts, SIG, BODY, &key, TS),
            Err(VerifyError::MissingHeader("webhook-id"))
        );
        assert_eq!(
            verify(ID, " ", SIG, BODY, &key, TS),
            Err(VerifyError::MissingHeader("webhook-timestamp"))
        );
        assert_eq!(
            verify(ID, &ts, "", BODY, &key, TS),
            Err(VerifyError::MissingHeader("webhook-signature"))
        );
        assert_eq!(
            VerifyError::MissingHeader("webhook-id").to_string(),
            "missing webhook-id header"
        );
    }

    #[test]
    fn non_numeric_timestamps_are_rejected() {
        let key = [VerifyKey::parse(SECRET).unwrap()];
        for ts in [
            "abc",
            "1614265330.5",
            "-1614265330",
            "+1614265330",
            "1e9",
            "99999999999999999999",
        ] {
            assert_eq!(
                verify(ID, ts, SIG, BODY, &key, TS),
                Err(VerifyError::BadTimestamp),
                "{ts}"
            );
        }
    }

    #[test]
    fn verifying_without_keys_is_an_error() {
        assert_eq!(
            verify(ID, &ts_str(TS), SIG, BODY, &[], TS),
            Err(VerifyError::NoKeys)
        );
    }

    #[test]
    fn secrets_parse_with_or_without_padding_and_whitespace() {
        let padded = "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
        let unpadded = "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        let a = sign("m", 1, b"", &[SigningSecret::parse(padded).unwrap()]);
        let b = sign("m", 1, b"", &[SigningSecret::parse(unpadded).unwrap()]);
        let c = sign(
            "m",
            1,
            b"",
            &[SigningSecret::parse(&format!(" {padded}\n")).unwrap()],
        );
        assert_eq!(a, b);
        assert_eq!(a, c);
    }

    #[test]
    fn bad_keys_are_rejected_with_messages_that_do_not_quote_them() {
        let cases = [
            ("sk_live_abcdef", KeyError::UnknownPrefix),
            (
                "whsec_",
                KeyError::BadLength {
                    prefix: "whsec_",
                    expected: "at least 1",
                    got: 0,
                },
            ),
            (
                "whsec_!!!!secretstuff",
                KeyError::BadBase64 { prefix: "whsec_" },
            ),
            (
                "whsk_c2VjcmV0c3R1ZmY=",
                KeyError::BadLength {
                    prefix: "whsk_",
                    expected: "32 (seed) or 64 (seed and public key)",
                    got: 11,
                },
            ),
            ("whpk_c2VjcmV0c3R1ZmY=", KeyError::PublicKeyCannotSign),
        ];
        for (input, expected) in cases {
            let err = SigningSecret::parse(input).unwrap_err();
            assert_eq!(err, expected, "{input}");
            let msg = err.to_string();
            assert!(
                !msg.contains("secretstuff") && !msg.contains("c2Vj"),
                "{msg}"
            );
        }
        assert_eq!(
            VerifyKey::parse("whpk_c2VjcmV0c3R1ZmY=").unwrap_err(),
            KeyError::BadLength {
                prefix: "whpk_",
                expected: "32",
                got: 11
            }
        );
    }

    #[test]
    fn signing_secrets_must_be_24_to_64_bytes() {
        let b64 = |n: usize| format!("whsec_{}", STANDARD.encode(vec![7u8; n]));
        assert!(SigningSecret::parse_for_signing(&b64(24)).is_ok());
        assert!(SigningSecret::parse_for_signing(&b64(64)).is_ok());
        for n in [16, 23, 65] {
            assert_eq!(
                SigningSecret::parse_for_signing(&b64(n)).unwrap_err(),
                KeyError::BadLength {
                    prefix: "whsec_",
                    expected: "24 to 64",
                    got: n
                }
            );
            assert!(
                SigningSecret::parse(&b64(n)).is_ok(),
                "verification accepts {n}"
            );
        }
    }

    #[test]
    fn generated_hmac_secrets_are_32_random_bytes() {
        let a = generate_hmac_secret();
        let b = generate_hmac_secret();
        assert_ne!(a, b);
        let bytes = STANDARD.decode(a.strip_prefix("whsec_").unwrap()).unwrap();
        assert_eq!(bytes.len(), 32);
        assert!(SigningSecret::parse_for_signing(&a).is_ok());
    }

    #[test]
    fn generated_ed25519_pair_matches() {
        let (sk, pk) = generate_ed25519();
        assert!(sk.starts_with("whsk_") && pk.starts_with("whpk_"));
        let secret = SigningSecret::parse(&sk).unwrap();
        assert_eq!(secret.public_key(), Some(pk.clone()));
        assert_eq!(secret.key_type(), "ed25519");
        match VerifyKey::parse(&sk).unwrap() {
            VerifyKey::Ed25519(k) => assert_eq!(k.encoded(), pk),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_64_byte_whsk_keypair_is_accepted_and_a_mismatched_one_refused() {
        let (sk, pk) = generate_ed25519();
        let seed = STANDARD.decode(sk.strip_prefix("whsk_").unwrap()).unwrap();
        let public = STANDARD.decode(pk.strip_prefix("whpk_").unwrap()).unwrap();
        let pair = [seed.clone(), public].concat();
        let parsed = SigningSecret::parse(&format!("whsk_{}", STANDARD.encode(&pair))).unwrap();
        assert_eq!(parsed.public_key(), Some(pk));
        let (_, other_pk) = generate_ed25519();
        let other = STANDARD
            .decode(other_pk.strip_prefix("whpk_").unwrap())
            .unwrap();
        let bad = [seed, other].concat();
        assert_eq!(
            SigningSecret::parse(&format!("whsk_{}", STANDARD.encode(&bad))).unwrap_err(),
            KeyError::BadKeyPair
        );
    }

    #[test]
    fn hmac_secrets_have_no_public_key() {
        let s = SigningSecret::parse(SECRET).unwrap();
        assert_eq!(s.public_key(), None);
        assert_eq!(s.key_type(), "hmac");
    }

    #[test]
    fn debug_output_never_shows_secrets() {
        let (sk, pk) = generate_ed25519();
        let keys = Keys {
            keys: vec![
                KeyEntry::current(SECRET.to_string()),
                KeyEntry {
                    secret: sk.clone(),
                    expires_at: Some(5),
                },
                KeyEntry {
                    secret: "garbage-secret".into(),
                    expires_at: Some(5),
                },
            ],
        };
        let hmac_body = SECRET.strip_prefix("whsec_").unwrap();
        let sk_body = sk.strip_prefix("whsk_").unwrap();
        let outputs = [
            format!("{keys:?}"),
            format!("{keys:#?}"),
            format!("{:?}", SigningSecret::parse(SECRET).unwrap()),
            format!("{:?}", SigningSecret::parse(&sk).unwrap()),
            format!("{:?}", VerifyKey::parse(SECRET).unwrap()),
            format!("{:?}", VerifyKey::parse(&sk).unwrap()),
        ];
        for out in &outputs {
            assert!(!out.contains(hmac_body), "{out}");
            assert!(!out.contains(sk_body), "{out}");
            assert!(!out.contains("garbage-secret"), "{out}");
        }
        assert!(outputs[0].contains("whsec_<redacted>"));
        assert!(outputs[0].contains("whsk_<redacted>"));
        assert!(outputs[0].contains("expires_at: Some(5)"));
        assert!(outputs[3].contains(&pk), "public keys may be shown");
    }

    #[test]
    fn keys_sign_with_the_current_key_and_unexpired_old_ones() {
        let (old_sk, _) = generate_ed25519();
        let keys = Keys {
            keys: vec![
                KeyEntry::current(SECRET.to_string()),
                KeyEntry {
                    secret: old_sk,
                    expires_at: Some(2000),
                },
                KeyEntry {
                    secret: generate_hmac_secret(),
                    expires_at: Some(1000),
                },
            ],
        };
        let at = |now| {
            keys.signing_secrets(now)
                .unwrap()
                .iter()
                .map(SigningSecret::key_type)
                .collect::<Vec<_>>()
        };
        assert_eq!(at(999), ["hmac", "ed25519", "hmac"]);
        assert_eq!(at(1000), ["hmac", "ed25519"]);
        assert_eq!(at(2000), ["hmac"]);
        assert_eq!(keys.verify_keys(1500).unwrap().len(), 2);
    }

    #[test]
    fn keys_with_nothing_valid_or_a_broken_secret_cannot_sign() {
        let expired = Keys {
            keys: vec![KeyEntry {
                secret: SECRET.into(),
                expires_at: Some(10),
            }],
        };
        assert_eq!(
            expired.signing_secrets(10).unwrap_err(),
            KeyError::NoValidKey
        );
        assert_eq!(
            Keys { keys: vec![] }.signing_secrets(0).unwrap_err(),
            KeyError::NoValidKey
        );
        let broken = Keys::single("whsec_***".into());
        assert_eq!(
            broken.signing_secrets(0).unwrap_err(),
            KeyError::BadBase64 { prefix: "whsec_" }
        );
    }

    #[test]
    fn keys_serde_shape_is_stable() {
        let keys = Keys {
            keys: vec![
                KeyEntry::current("whsec_a".into()),
                KeyEntry {
                    secret: "whsk_b".into(),
                    expires_at: Some(7),
                },
            ],
        };
        let v = serde_json::to_value(&keys).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"keys": [{"secret": "whsec_a"}, {"secret": "whsk_b", "expires_at": 7}]})
        );
        let back: Keys = serde_json::from_value(v).unwrap();
        assert_eq!(back, keys);
    }
}
