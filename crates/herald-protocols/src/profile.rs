//! The plug-in point for wire profiles. A profile is one module (`standard_webhooks`,
//! `alipay`, `wechatpay_v2`, `wechatpay_v3`, `stripe`, `wechatpay_legacy`, `dialect`) plus
//! one variant in each enum here;
//! the engine, API and CLI only talk to [`Profile`], [`Credentials`] and [`ReceiverKeys`].
//!
//! Owns the dispatch from a profile to its module, in both directions: default retry
//! schedule and ack rule, notify id format, credential creation / rotation / public view,
//! encoding one attempt (sender), and verifying / decoding / replying (receiver). The wire
//! details live in the profile's module.
use serde::{Deserialize, Serialize};

use crate::receive::{IncomingRequest, ReceiveError, Refusal, Reply, VerifiedNotification};
use crate::{
    alipay, dialect, standard_webhooks, stripe, wechatpay_legacy, wechatpay_v2, wechatpay_v3,
};
use crate::{AckRule, RetryPolicy};

/// A credentials error with its message (which must never quote a secret).
pub(crate) fn bad_credentials(msg: impl Into<String>) -> ProfileError {
    ProfileError::BadCredentials(msg.into())
}

/// The `credentials` object of an app-creation request: `null` (generate everything) reads as
/// an empty object; anything but an object is refused with `shape`, the profile's description
/// of what it accepts.
pub(crate) fn credential_fields(
    options: &serde_json::Value,
    shape: &str,
) -> Result<serde_json::Map<String, serde_json::Value>, ProfileError> {
    match options {
        serde_json::Value::Null => Ok(serde_json::Map::new()),
        serde_json::Value::Object(map) => Ok(map.clone()),
        _ => Err(ProfileError::BadCredentials(shape.to_string())),
    }
}

/// The time limit of one attempt for profiles whose provider sets none shorter.
pub const DEFAULT_ATTEMPT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);
/// WeChat Pay's: a merchant that has not answered in 5 seconds has failed the notification.
pub const WECHATPAY_ATTEMPT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The wire profiles Herald speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Profile {
    #[serde(rename = "standard-webhooks")]
    StandardWebhooks,
    #[serde(rename = "alipay")]
    Alipay,
    #[serde(rename = "wechatpay-v2")]
    WechatPayV2,
    #[serde(rename = "wechatpay-v3")]
    WechatPayV3,
    #[serde(rename = "stripe")]
    Stripe,
    #[serde(rename = "wechatpay-legacy")]
    WechatPayLegacy,
    #[serde(rename = "dialect")]
    Dialect,
}

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("unknown profile {0:?}; expected one of: standard-webhooks, alipay, wechatpay-v2, wechatpay-v3, stripe, wechatpay-legacy, dialect")]
    Unknown(String),
    #[error("invalid credentials: {0}")]
    BadCredentials(String),
    #[error("cannot encode the notification: {0}")]
    Encode(String),
}

/// One notification as the engine hands it to a profile for one attempt.
#[derive(Clone, Copy, Debug)]
pub struct OutgoingNotification<'a> {
    /// The delivery's stable notify id (the same on every attempt).
    pub notify_id: &'a str,
    pub event_type: &'a str,
    /// The producer's JSON payload, byte for byte.
    pub payload: &'a [u8],
    /// This attempt's time, unix seconds.
    pub timestamp: i64,
    /// When the notification was created, unix seconds (the same on every attempt).
    pub created_at: i64,
}

/// The method, query, bytes and headers of one signed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedRequest {
    /// `POST` for most profiles; `GET` for dialects that send their fields in the query.
    pub method: &'static str,
    /// A query string (without `?`) to set on the notify URL, replacing any it has; empty for
    /// most profiles (wechatpay-legacy carries the payment result here, GET dialects
    /// everything).
    pub query: String,
    /// Empty when the request has no body (a GET).
    pub content_type: String,
    /// Extra headers (signature, ids, timestamps). Never logged: they may carry secrets' output.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// An app's signing material, per profile. Serialized into the store as JSON; contains
/// secrets, so it is never logged and never returned by the API after creation.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "profile")]
pub enum Credentials {
    #[serde(rename = "standard-webhooks")]
    StandardWebhooks(standard_webhooks::Keys),
    #[serde(rename = "alipay")]
    Alipay(alipay::Credentials),
    #[serde(rename = "wechatpay-v2")]
    WechatPayV2(wechatpay_v2::Credentials),
    #[serde(rename = "wechatpay-v3")]
    WechatPayV3(wechatpay_v3::Credentials),
    #[serde(rename = "stripe")]
    Stripe(stripe::Credentials),
    #[serde(rename = "wechatpay-legacy")]
    WechatPayLegacy(wechatpay_legacy::Credentials),
    #[serde(rename = "dialect")]
    Dialect(dialect::Credentials),
}

/// What a receiver verifies with, per profile.
#[derive(Debug)]
pub enum ReceiverKeys {
    StandardWebhooks(Vec<standard_webhooks::VerifyKey>),
    Alipay(alipay::ReceiverKeys),
    WechatPayV2(wechatpay_v2::ReceiverKeys),
    WechatPayV3(wechatpay_v3::ReceiverKeys),
    Stripe(stripe::ReceiverKeys),
    WechatPayLegacy(wechatpay_legacy::ReceiverKeys),
    Dialect(dialect::ReceiverKeys),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(<redacted>)")
    }
}

impl std::str::FromStr for Profile {
    type Err = ProfileError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Profile::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| ProfileError::Unknown(s.to_string()))
    }
}

impl Profile {
    pub const ALL: [Profile; 7] = [
        Profile::StandardWebhooks,
        Profile::Alipay,
        Profile::WechatPayV2,
        Profile::WechatPayV3,
        Profile::Stripe,
        Profile::WechatPayLegacy,
        Profile::Dialect,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Profile::StandardWebhooks => "standard-webhooks",
            Profile::Alipay => "alipay",
            Profile::WechatPayV2 => "wechatpay-v2",
            Profile::WechatPayV3 => "wechatpay-v3",
            Profile::Stripe => "stripe",
            Profile::WechatPayLegacy => "wechatpay-legacy",
            Profile::Dialect => "dialect",
        }
    }

    pub fn default_retry(self) -> RetryPolicy {
        match self {
            Profile::StandardWebhooks => RetryPolicy::standard(),
            Profile::Alipay => alipay::default_retry(),
            Profile::WechatPayV2 => wechatpay_v2::default_retry(),
            Profile::WechatPayV3 => wechatpay_v3::default_retry(),
            Profile::Stripe => stripe::default_retry(),
            Profile::WechatPayLegacy => wechatpay_legacy::default_retry(),
            Profile::Dialect => dialect::default_retry(),
        }
    }

    /// How long the provider gives the merchant to answer one notification, and so the
    /// default time limit of one attempt: WeChat Pay (v2 and v3) waits 5 seconds, the others
    /// [`DEFAULT_ATTEMPT_TIMEOUT`] (15 s).
    pub fn attempt_timeout(self) -> std::time::Duration {
        match self {
            Profile::WechatPayV2 | Profile::WechatPayV3 | Profile::WechatPayLegacy => {
                WECHATPAY_ATTEMPT_TIMEOUT
            }
            Profile::StandardWebhooks | Profile::Alipay | Profile::Stripe | Profile::Dialect => {
                DEFAULT_ATTEMPT_TIMEOUT
            }
        }
    }

    pub fn default_ack(self) -> AckRule {
        match self {
            Profile::StandardWebhooks => AckRule::Http2xx,
            Profile::Alipay => alipay::default_ack(),
            Profile::WechatPayV2 => wechatpay_v2::default_ack(),
            Profile::WechatPayV3 => wechatpay_v3::default_ack(),
            Profile::Stripe => stripe::default_ack(),
            Profile::WechatPayLegacy => wechatpay_legacy::default_ack(),
            // The epay preset's; an app's own dialect may say otherwise: see
            // [`Profile::default_ack_for`].
            Profile::Dialect => AckRule::Body("success".into()),
        }
    }

    /// The ack rule of an app with these credentials: [`Profile::default_ack`], except for a
    /// dialect, whose ack text is part of its configuration.
    pub fn default_ack_for(self, creds: &Credentials) -> AckRule {
        match creds {
            Credentials::Dialect(c) => dialect::ack_rule(&c.dialect),
            _ => self.default_ack(),
        }
    }

    /// A fresh, globally unique notify id in the provider's format (`msg_<ulid>` for
    /// standard-webhooks, a numeric id for Alipay, `evt_...` for Stripe...).
    pub fn new_notify_id(self) -> String {
        match self {
            Profile::StandardWebhooks => format!("msg_{}", ulid::Ulid::new()),
            Profile::Alipay => alipay::new_notify_id(),
            Profile::WechatPayV2 => wechatpay_v2::new_notify_id(),
            Profile::WechatPayV3 => wechatpay_v3::new_notify_id(),
            Profile::Stripe => stripe::new_notify_id(),
            Profile::WechatPayLegacy => wechatpay_legacy::new_notify_id(),
            Profile::Dialect => dialect::new_notify_id(),
        }
    }

    /// The credentials field a bare `--key` fills (CLI `sign`).
    pub fn secret_field(self) -> &'static str {
        match self {
            Profile::StandardWebhooks | Profile::Stripe => "secret",
            Profile::Alipay | Profile::WechatPayV3 => "private_key",
            Profile::WechatPayV2 => "api_key",
            Profile::WechatPayLegacy => "partner_key",
            Profile::Dialect => "key",
        }
    }

    /// Credentials for a new app. `options` is the API's `credentials` object: null
    /// (generate everything) or given material (e.g. `{"secret": "whsec_..."}`,
    /// `{"app_id": ..., "private_key": ...}`). Returns the credentials to store and the view
    /// returned once to the caller (never a private key; shared secrets only here).
    pub fn create_credentials(
        self,
        options: &serde_json::Value,
    ) -> Result<(Credentials, serde_json::Value), ProfileError> {
        Ok(match self {
            Profile::StandardWebhooks => {
                let (keys, view) = standard_webhooks::create_keys(options)?;
                (Credentials::StandardWebhooks(keys), view)
            }
            Profile::Alipay => {
                let (c, view) = alipay::create_credentials(options)?;
                (Credentials::Alipay(c), view)
            }
            Profile::WechatPayV2 => {
                let (c, view) = wechatpay_v2::create_credentials(options)?;
                (Credentials::WechatPayV2(c), view)
            }
            Profile::WechatPayV3 => {
                let (c, view) = wechatpay_v3::create_credentials(options)?;
                (Credentials::WechatPayV3(c), view)
            }
            Profile::Stripe => {
                let (c, view) = stripe::create_credentials(options)?;
                (Credentials::Stripe(c), view)
            }
            Profile::WechatPayLegacy => {
                let (c, view) = wechatpay_legacy::create_credentials(options)?;
                (Credentials::WechatPayLegacy(c), view)
            }
            Profile::Dialect => {
                let (c, view) = dialect::create_credentials(options)?;
                (Credentials::Dialect(c), view)
            }
        })
    }

    /// New signing material; where the profile allows several signatures, the old material
    /// keeps signing until `grace_until` (unix seconds). Returns the new credentials and the
    /// once-only view of the new material.
    pub fn rotate(
        self,
        current: &Credentials,
        grace_until: i64,
        now: i64,
    ) -> Result<(Credentials, serde_json::Value), ProfileError> {
        Ok(match current {
            Credentials::StandardWebhooks(k) => {
                let (keys, view) = standard_webhooks::rotate_keys(k, grace_until, now)?;
                (Credentials::StandardWebhooks(keys), view)
            }
            Credentials::Alipay(c) => {
                let (c, view) = alipay::rotate(c, grace_until, now)?;
                (Credentials::Alipay(c), view)
            }
            Credentials::WechatPayV2(c) => {
                let (c, view) = wechatpay_v2::rotate(c, grace_until, now)?;
                (Credentials::WechatPayV2(c), view)
            }
            Credentials::WechatPayV3(c) => {
                let (c, view) = wechatpay_v3::rotate(c, grace_until, now)?;
                (Credentials::WechatPayV3(c), view)
            }
            Credentials::Stripe(c) => {
                let (c, view) = stripe::rotate(c, grace_until, now)?;
                (Credentials::Stripe(c), view)
            }
            Credentials::WechatPayLegacy(c) => {
                let (c, view) = wechatpay_legacy::rotate(c)?;
                (Credentials::WechatPayLegacy(c), view)
            }
            Credentials::Dialect(c) => {
                let (c, view) = dialect::rotate(c)?;
                (Credentials::Dialect(c), view)
            }
        })
    }

    /// What may be shown about credentials at any time (public keys and ids, never
    /// secrets), using the system clock.
    pub fn public_view(self, creds: &Credentials) -> serde_json::Value {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        self.public_view_at(creds, now)
    }

    /// [`Profile::public_view`] at a given time (rotating keys still valid at `now`).
    pub fn public_view_at(self, creds: &Credentials, now: i64) -> serde_json::Value {
        match creds {
            Credentials::StandardWebhooks(keys) => standard_webhooks::public_view(keys, now),
            Credentials::Alipay(c) => alipay::public_view(c),
            Credentials::WechatPayV2(c) => wechatpay_v2::public_view(c),
            Credentials::WechatPayV3(c) => wechatpay_v3::public_view(c),
            Credentials::Stripe(c) => stripe::public_view(c),
            Credentials::WechatPayLegacy(c) => wechatpay_legacy::public_view(c),
            Credentials::Dialect(c) => dialect::public_view(c),
        }
    }

    /// Encodes and signs one attempt of a notification.
    pub fn encode(
        self,
        creds: &Credentials,
        n: &OutgoingNotification<'_>,
    ) -> Result<EncodedRequest, ProfileError> {
        match (self, creds) {
            (Profile::StandardWebhooks, Credentials::StandardWebhooks(keys)) => {
                standard_webhooks::encode(keys, n)
            }
            (Profile::Alipay, Credentials::Alipay(c)) => alipay::encode(c, n),
            (Profile::WechatPayV2, Credentials::WechatPayV2(c)) => wechatpay_v2::encode(c, n),
            (Profile::WechatPayV3, Credentials::WechatPayV3(c)) => wechatpay_v3::encode(c, n),
            (Profile::Stripe, Credentials::Stripe(c)) => stripe::encode(c, n),
            (Profile::WechatPayLegacy, Credentials::WechatPayLegacy(c)) => {
                wechatpay_legacy::encode(c, n)
            }
            (Profile::Dialect, Credentials::Dialect(c)) => dialect::encode(c, n),
            _ => Err(ProfileError::BadCredentials(format!(
                "the app's credentials are not {} credentials",
                self.name()
            ))),
        }
    }

    // --- the receiving side ----------------------------------------------------------

    /// Receiver keys from CLI-style strings (secrets, public keys, file contents) and, for
    /// wechatpay-v3, the APIv3 key that decrypts the resource. For wechatpay-legacy the
    /// partner key is `KEY` (or `partnerkey=KEY`) and the app key `appkey=KEY`; for `dialect`
    /// these are keys of the `epay` preset (another dialect: [`dialect::receiver_keys`]).
    pub fn receiver_keys(
        self,
        keys: &[String],
        decrypt_key: Option<&str>,
    ) -> Result<ReceiverKeys, ReceiveError> {
        Ok(match self {
            Profile::StandardWebhooks => {
                ReceiverKeys::StandardWebhooks(standard_webhooks::receiver_keys(keys)?)
            }
            Profile::Alipay => ReceiverKeys::Alipay(alipay::receiver_keys(keys)?),
            Profile::WechatPayV2 => ReceiverKeys::WechatPayV2(wechatpay_v2::receiver_keys(keys)?),
            Profile::WechatPayV3 => {
                ReceiverKeys::WechatPayV3(wechatpay_v3::receiver_keys(keys, decrypt_key)?)
            }
            Profile::Stripe => ReceiverKeys::Stripe(stripe::receiver_keys(keys)?),
            Profile::WechatPayLegacy => {
                ReceiverKeys::WechatPayLegacy(wechatpay_legacy::receiver_keys(keys)?)
            }
            Profile::Dialect => {
                ReceiverKeys::Dialect(dialect::receiver_keys(dialect::Dialect::epay(), keys)?)
            }
        })
    }

    /// The receiver keys that verify what `creds` sign (for tests, the sandbox, the demo).
    pub fn receiver_keys_from(
        self,
        creds: &Credentials,
        now: i64,
    ) -> Result<ReceiverKeys, ProfileError> {
        Ok(match creds {
            Credentials::StandardWebhooks(k) => {
                ReceiverKeys::StandardWebhooks(standard_webhooks::receiver_keys_from(k, now))
            }
            Credentials::Alipay(c) => ReceiverKeys::Alipay(alipay::receiver_keys_from(c)?),
            Credentials::WechatPayV2(c) => {
                ReceiverKeys::WechatPayV2(wechatpay_v2::receiver_keys_from(c))
            }
            Credentials::WechatPayV3(c) => {
                ReceiverKeys::WechatPayV3(wechatpay_v3::receiver_keys_from(c)?)
            }
            Credentials::Stripe(c) => ReceiverKeys::Stripe(stripe::receiver_keys_from(c)),
            Credentials::WechatPayLegacy(c) => {
                ReceiverKeys::WechatPayLegacy(wechatpay_legacy::receiver_keys_from(c))
            }
            Credentials::Dialect(c) => ReceiverKeys::Dialect(dialect::receiver_keys_from(c)?),
        })
    }

    /// Verifies a raw request and decodes it into a typed notification.
    pub fn verify(
        self,
        keys: &ReceiverKeys,
        req: &IncomingRequest<'_>,
    ) -> Result<VerifiedNotification, ReceiveError> {
        self.verify_detailed(keys, req).map_err(|r| r.error)
    }

    /// [`Profile::verify`], saying whether the signature had verified when a request is
    /// refused (see [`Refusal`]): what `herald verify` answers first.
    pub fn verify_detailed(
        self,
        keys: &ReceiverKeys,
        req: &IncomingRequest<'_>,
    ) -> Result<VerifiedNotification, Refusal> {
        match (self, keys) {
            (Profile::StandardWebhooks, ReceiverKeys::StandardWebhooks(k)) => {
                standard_webhooks::verify_request_detailed(k, req)
            }
            (Profile::Alipay, ReceiverKeys::Alipay(k)) => alipay::verify_detailed(k, req),
            (Profile::WechatPayV2, ReceiverKeys::WechatPayV2(k)) => {
                wechatpay_v2::verify_detailed(k, req)
            }
            (Profile::WechatPayV3, ReceiverKeys::WechatPayV3(k)) => {
                wechatpay_v3::verify_detailed(k, req)
            }
            (Profile::Stripe, ReceiverKeys::Stripe(k)) => stripe::verify_detailed(k, req),
            (Profile::WechatPayLegacy, ReceiverKeys::WechatPayLegacy(k)) => {
                wechatpay_legacy::verify_detailed(k, req)
            }
            (Profile::Dialect, ReceiverKeys::Dialect(k)) => dialect::verify_detailed(k, req),
            _ => Err(Refusal::unsigned(ReceiveError::UnknownKey(format!(
                "the keys are not {} keys",
                self.name()
            )))),
        }
    }

    /// The exact string the request's signature covers (secrets masked).
    pub fn explain(
        self,
        keys: &ReceiverKeys,
        req: &IncomingRequest<'_>,
    ) -> Result<String, ReceiveError> {
        match (self, keys) {
            (Profile::StandardWebhooks, _) => Ok(standard_webhooks::explain(req)),
            (Profile::Alipay, _) => alipay::explain(req),
            (Profile::WechatPayV2, ReceiverKeys::WechatPayV2(k)) => wechatpay_v2::explain(k, req),
            (Profile::WechatPayV3, _) => wechatpay_v3::explain(req),
            (Profile::Stripe, ReceiverKeys::Stripe(k)) => stripe::explain(k, req),
            (Profile::WechatPayLegacy, _) => wechatpay_legacy::explain(req),
            (Profile::Dialect, ReceiverKeys::Dialect(k)) => dialect::explain(k, req),
            _ => Err(ReceiveError::UnknownKey(format!(
                "the keys are not {} keys",
                self.name()
            ))),
        }
    }

    /// [`Profile::ack_reply`] for a receiver holding `keys`: a dialect's configured ack text.
    pub fn ack_reply_for(self, keys: &ReceiverKeys) -> Reply {
        match (self, keys) {
            (Profile::Dialect, ReceiverKeys::Dialect(k)) => dialect::ack_reply(k.dialect()),
            _ => self.ack_reply(),
        }
    }

    /// [`Profile::failure_reply`] for a receiver holding `keys` (never a dialect's ack text).
    pub fn failure_reply_for(self, keys: &ReceiverKeys, reason: &str) -> Reply {
        match (self, keys) {
            (Profile::Dialect, ReceiverKeys::Dialect(k)) => {
                dialect::failure_reply(k.dialect(), reason)
            }
            _ => self.failure_reply(reason),
        }
    }

    /// The reply that acknowledges a notification, exactly as the provider expects it (for a
    /// dialect, the `epay` preset's `success`: see [`Profile::ack_reply_for`]).
    pub fn ack_reply(self) -> Reply {
        match self {
            Profile::StandardWebhooks => standard_webhooks::ack_reply(),
            Profile::Alipay => alipay::ack_reply(),
            Profile::WechatPayV2 => wechatpay_v2::ack_reply(),
            Profile::WechatPayV3 => wechatpay_v3::ack_reply(),
            Profile::Stripe => stripe::ack_reply(),
            Profile::WechatPayLegacy => wechatpay_legacy::ack_reply(),
            Profile::Dialect => dialect::ack_reply(&dialect::Dialect::epay()),
        }
    }

    /// The reply that makes the provider send again (and says why, where the wire allows).
    pub fn failure_reply(self, reason: &str) -> Reply {
        match self {
            Profile::StandardWebhooks => standard_webhooks::failure_reply(reason),
            Profile::Alipay => alipay::failure_reply(reason),
            Profile::WechatPayV2 => wechatpay_v2::failure_reply(reason),
            Profile::WechatPayV3 => wechatpay_v3::failure_reply(reason),
            Profile::Stripe => stripe::failure_reply(reason),
            Profile::WechatPayLegacy => wechatpay_legacy::failure_reply(reason),
            Profile::Dialect => dialect::failure_reply(&dialect::Dialect::epay(), reason),
        }
    }
}
