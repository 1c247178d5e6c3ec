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
use crate::{AckRule, RetryPolicy, UnixSeconds};

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

/// Why a profile cannot be named, configured or encode a notification. A failure that comes
/// from a lower error keeps it as its [`source`](std::error::Error::source) (a signing key's
/// parse error); its message is one line without key material.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("unknown profile {0:?}; expected one of: standard-webhooks, alipay, wechatpay-v2, wechatpay-v3, stripe, wechatpay-legacy, dialect")]
    Unknown(String),
    #[error("invalid credentials: {0}")]
    BadCredentials(String),
    #[error("cannot encode the notification: {0}")]
    Encode(String),
    /// The app's RSA private key cannot sign (it does not parse, or is too small).
    #[error("cannot sign the notification: {0}")]
    Sign(#[source] crate::keys::KeyError),
    /// The app's Standard Webhooks signing secrets cannot sign.
    #[error("cannot sign the notification: {0}")]
    SigningSecret(#[source] crate::standard_webhooks::KeyError),
}

/// One notification as the engine hands it to a profile for one attempt.
#[derive(Clone, Copy, Debug)]
pub struct OutgoingNotification<'a> {
    /// The delivery's stable notify id (the same on every attempt).
    pub notify_id: &'a str,
    pub event_type: &'a str,
    /// The producer's JSON payload, byte for byte.
    pub payload: &'a [u8],
    /// This attempt's time.
    pub timestamp: UnixSeconds,
    /// When the notification was created (the same on every attempt).
    pub created_at: UnixSeconds,
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
    Dialect(Box<dialect::Credentials>),
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
    Dialect(Box<dialect::ReceiverKeys>),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(<redacted>)")
    }
}

impl std::fmt::Display for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A profile equals its wire name: `Profile::Alipay == "alipay"`.
impl PartialEq<&str> for Profile {
    fn eq(&self, other: &&str) -> bool {
        self.name() == *other
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

    /// What a verified notification of this profile means for its order (see
    /// [`crate::order`]). An event that moves money (paid, refunded) must claim the order
    /// total, so a receiver can check it against its own order; one that claims none is
    /// refused as missing its amount.
    pub fn read_order(
        self,
        n: &crate::receive::VerifiedNotification,
    ) -> Result<crate::order::OrderReading, crate::receive::ReceiveError> {
        let reading = match self {
            Profile::StandardWebhooks => standard_webhooks::read_order(n)?,
            Profile::Alipay => alipay::read_order(n)?,
            Profile::WechatPayV2 => wechatpay_v2::read_order(n)?,
            Profile::WechatPayV3 => wechatpay_v3::read_order(n)?,
            Profile::Stripe => stripe::read_order(n)?,
            Profile::WechatPayLegacy => wechatpay_legacy::read_order(n)?,
            Profile::Dialect => dialect::read_order(n)?,
        };
        use crate::order::OrderEvent;
        match reading.event {
            OrderEvent::NoChange(_) | OrderEvent::Closed | OrderEvent::ClosedOrRefunded => {}
            _ if reading.total.is_none() => {
                return Err(crate::order::missing("the order total (amount)"))
            }
            _ => {}
        }
        Ok(reading)
    }

    /// The app and merchant id fields this profile's notifications always carry.
    pub fn carried_ids(self, n: &crate::receive::VerifiedNotification) -> crate::order::CarriedIds {
        match self {
            Profile::StandardWebhooks => standard_webhooks::carried_ids(n),
            Profile::Alipay => alipay::carried_ids(n),
            Profile::WechatPayV2 => wechatpay_v2::carried_ids(n),
            Profile::WechatPayV3 => wechatpay_v3::carried_ids(n),
            Profile::Stripe => stripe::carried_ids(n),
            Profile::WechatPayLegacy => wechatpay_legacy::carried_ids(n),
            Profile::Dialect => dialect::carried_ids(n),
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
                (Credentials::Dialect(Box::new(c)), view)
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
                (Credentials::Dialect(Box::new(c)), view)
            }
        })
    }

    /// What may be shown about credentials at any time (public keys and ids, never
    /// secrets), using the system clock.
    pub fn public_view(self, creds: &Credentials) -> serde_json::Value {
        self.public_view_at(creds, crate::UnixSeconds::now().get())
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
            Profile::Dialect => ReceiverKeys::Dialect(Box::new(dialect::receiver_keys(
                dialect::Dialect::epay(),
                keys,
            )?)),
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
            Credentials::Dialect(c) => {
                ReceiverKeys::Dialect(Box::new(dialect::receiver_keys_from(c)?))
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::standard_webhooks::{self as sw, KeyEntry, Keys, SigningSecret, VerifyKey};
    use serde_json::json;

    const P: Profile = Profile::StandardWebhooks;
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn keys(c: &Credentials) -> &Keys {
        match c {
            Credentials::StandardWebhooks(k) => k,
            other => panic!("not standard-webhooks credentials: {other:?}"),
        }
    }

    fn notification<'a>(
        id: &'a str,
        payload: &'a [u8],
        timestamp: i64,
    ) -> OutgoingNotification<'a> {
        OutgoingNotification {
            notify_id: id,
            event_type: "payment.succeeded",
            payload,
            timestamp: UnixSeconds::new(timestamp),
            created_at: UnixSeconds::new(timestamp),
        }
    }

    fn header<'a>(r: &'a EncodedRequest, name: &str) -> &'a str {
        r.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap()
    }

    #[test]
    fn profile_name_round_trips_through_str_and_serde() {
        assert_eq!("standard-webhooks".parse::<Profile>().unwrap(), P);
        assert_eq!(P.name(), "standard-webhooks");
        assert_eq!(serde_json::to_value(P).unwrap(), json!("standard-webhooks"));
        assert!(matches!(
            "stripe2".parse::<Profile>(),
            Err(ProfileError::Unknown(_))
        ));
    }

    #[test]
    fn wechat_pay_attempts_time_out_after_5_seconds_and_others_after_15() {
        use std::time::Duration;
        for p in Profile::ALL {
            let want = match p {
                Profile::WechatPayV2 | Profile::WechatPayV3 | Profile::WechatPayLegacy => {
                    Duration::from_secs(5)
                }
                _ => Duration::from_secs(15),
            };
            assert_eq!(p.attempt_timeout(), want, "{}", p.name());
        }
    }

    #[test]
    fn standard_webhooks_defaults_are_the_standard_schedule_and_any_2xx() {
        assert_eq!(P.default_retry(), RetryPolicy::named("standard").unwrap());
        assert_eq!(P.default_ack(), AckRule::Http2xx);
    }

    #[test]
    fn notify_ids_are_msg_prefixed_ulids_and_unique() {
        let a = P.new_notify_id();
        let b = P.new_notify_id();
        assert_ne!(a, b);
        let ulid = a.strip_prefix("msg_").unwrap();
        assert!(ulid::Ulid::from_string(ulid).is_ok(), "{a}");
    }

    #[test]
    fn null_or_empty_options_generate_an_hmac_secret_shown_once() {
        for options in [json!(null), json!({}), json!({"key_type": "hmac"})] {
            let (creds, view) = P.create_credentials(&options).unwrap();
            let k = keys(&creds);
            assert_eq!(k.keys.len(), 1);
            assert_eq!(k.keys[0].expires_at, None);
            assert!(k.keys[0].secret.starts_with("whsec_"));
            assert_eq!(view, json!({"secret": k.keys[0].secret}));
        }
    }

    #[test]
    fn a_given_whsec_secret_is_validated_and_used() {
        let (creds, view) = P.create_credentials(&json!({"secret": SECRET})).unwrap();
        assert_eq!(keys(&creds), &Keys::single(SECRET.into()));
        assert_eq!(view, json!({"secret": SECRET}));
    }

    #[test]
    fn ed25519_key_type_generates_a_pair_and_shows_only_the_public_key() {
        let (creds, view) = P
            .create_credentials(&json!({"key_type": "ed25519"}))
            .unwrap();
        let secret = &keys(&creds).keys[0].secret;
        assert!(secret.starts_with("whsk_"));
        let pk = view["public_key"].as_str().unwrap();
        assert_eq!(
            SigningSecret::parse(secret)
                .unwrap()
                .public_key()
                .as_deref(),
            Some(pk)
        );
        assert_eq!(view.as_object().unwrap().len(), 1);
    }

    #[test]
    fn a_given_whsk_secret_is_used_and_its_public_key_shown() {
        let (sk, pk) = sw::generate_ed25519();
        let (creds, view) = P
            .create_credentials(&json!({"secret": sk, "key_type": "ed25519"}))
            .unwrap();
        assert_eq!(keys(&creds).keys[0].secret, sk);
        assert_eq!(view, json!({"public_key": pk}));
    }

    #[test]
    fn bad_credential_options_are_refused_without_echoing_the_secret() {
        let short = "whsec_c2hvcnRzZWNyZXQ="; // 11 bytes
        let (pk_secret, pk) = sw::generate_ed25519();
        let _ = pk_secret;
        for options in [
            json!("whsec_abc"),
            json!([1]),
            json!({"secret": short}),
            json!({"secret": "sk_test_mysecretvalue"}),
            json!({"secret": "whsec_!!mysecretvalue"}),
            json!({"secret": pk}),
            json!({"secret": 5}),
            json!({"key_type": "rsa"}),
            json!({"key_type": "ed25519", "secret": SECRET}),
            json!({"secrett": SECRET}),
        ] {
            let err = P.create_credentials(&options).unwrap_err();
            assert!(matches!(err, ProfileError::BadCredentials(_)), "{options}");
            let msg = err.to_string();
            for leak in ["c2hvcnRz", "mysecretvalue", "MfKQ9r8G", &pk[5..]] {
                assert!(!msg.contains(leak), "{msg}");
            }
        }
        let msg = P
            .create_credentials(&json!({"secret": short}))
            .unwrap_err()
            .to_string();
        assert_eq!(
            msg,
            "invalid credentials: secret: the whsec_ key decodes to 11 bytes; expected 24 to 64"
        );
    }

    #[test]
    fn rotation_puts_a_new_key_of_the_same_type_first_and_keeps_the_old_one_until_grace_ends() {
        let (creds, _) = P.create_credentials(&json!({"secret": SECRET})).unwrap();
        let (rotated, view) = P.rotate(&creds, 2_000, 1_000).unwrap();
        let k = keys(&rotated);
        assert_eq!(k.keys.len(), 2);
        assert!(k.keys[0].secret.starts_with("whsec_"));
        assert_ne!(k.keys[0].secret, SECRET);
        assert_eq!(k.keys[0].expires_at, None);
        assert_eq!(
            k.keys[1],
            KeyEntry {
                secret: SECRET.into(),
                expires_at: Some(2_000)
            }
        );
        assert_eq!(view, json!({"secret": k.keys[0].secret}));

        let (creds, _) = P
            .create_credentials(&json!({"key_type": "ed25519"}))
            .unwrap();
        let (rotated, view) = P.rotate(&creds, 2_000, 1_000).unwrap();
        let k = keys(&rotated);
        assert!(k.keys[0].secret.starts_with("whsk_"));
        assert!(view["public_key"].as_str().unwrap().starts_with("whpk_"));
    }

    #[test]
    fn rotation_drops_old_keys_that_have_expired() {
        let creds = Credentials::StandardWebhooks(Keys {
            keys: vec![
                KeyEntry::current(SECRET.into()),
                KeyEntry {
                    secret: sw::generate_hmac_secret(),
                    expires_at: Some(1_000),
                },
                KeyEntry {
                    secret: sw::generate_hmac_secret(),
                    expires_at: Some(1_500),
                },
            ],
        });
        let (rotated, _) = P.rotate(&creds, 3_000, 1_000).unwrap();
        let expiries: Vec<_> = keys(&rotated).keys.iter().map(|k| k.expires_at).collect();
        assert_eq!(expiries, [None, Some(3_000), Some(1_500)]);

        // A grace period already over retires the old key at once.
        let (rotated, _) = P.rotate(&creds, 1_000, 1_000).unwrap();
        let expiries: Vec<_> = keys(&rotated).keys.iter().map(|k| k.expires_at).collect();
        assert_eq!(expiries, [None, Some(1_500)]);
    }

    #[test]
    fn rotating_broken_or_empty_credentials_is_refused() {
        for k in [Keys { keys: vec![] }, Keys::single("whsec_***".into())] {
            let err = P
                .rotate(&Credentials::StandardWebhooks(k), 10, 0)
                .unwrap_err();
            assert!(matches!(err, ProfileError::BadCredentials(_)), "{err}");
        }
    }

    #[test]
    fn public_view_shows_type_public_key_and_rotating_count_but_no_secret() {
        let (creds, _) = P.create_credentials(&json!(null)).unwrap();
        assert_eq!(
            P.public_view_at(&creds, 0),
            json!({"key_type": "hmac", "rotating_keys": 0})
        );
        let (rotated, _) = P.rotate(&creds, 2_000, 1_000).unwrap();
        assert_eq!(
            P.public_view_at(&rotated, 1_999),
            json!({"key_type": "hmac", "rotating_keys": 1})
        );
        assert_eq!(
            P.public_view_at(&rotated, 2_000),
            json!({"key_type": "hmac", "rotating_keys": 0})
        );

        let (creds, view) = P
            .create_credentials(&json!({"key_type": "ed25519"}))
            .unwrap();
        let shown = P.public_view(&creds);
        assert_eq!(
            shown,
            json!({"key_type": "ed25519", "public_key": view["public_key"], "rotating_keys": 0})
        );
        assert!(!shown
            .to_string()
            .contains(&keys(&creds).keys[0].secret[5..]));
    }

    #[test]
    fn encode_sends_the_payload_unchanged_with_signed_standard_headers() {
        let (creds, _) = P.create_credentials(&json!({"secret": SECRET})).unwrap();
        let payload = br#"{"test": 2432232314}"#;
        let n = notification("msg_p5jXN8AQM9LWM0D4loKWxJek", payload, 1614265330);
        let r = P.encode(&creds, &n).unwrap();
        assert_eq!(r.content_type, "application/json");
        assert_eq!(r.body, payload);
        assert_eq!(header(&r, "webhook-id"), "msg_p5jXN8AQM9LWM0D4loKWxJek");
        assert_eq!(header(&r, "webhook-timestamp"), "1614265330");
        assert_eq!(
            header(&r, "webhook-signature"),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        assert_eq!(r.headers.len(), 3);
    }

    #[test]
    fn encoded_requests_verify_with_the_receiver_side() {
        let (creds, view) = P
            .create_credentials(&json!({"key_type": "ed25519"}))
            .unwrap();
        let key = VerifyKey::parse(view["public_key"].as_str().unwrap()).unwrap();
        let r = P
            .encode(&creds, &notification("msg_1", b"{}", 5_000))
            .unwrap();
        let got = sw::verify(
            header(&r, "webhook-id"),
            header(&r, "webhook-timestamp"),
            header(&r, "webhook-signature"),
            &r.body,
            &[key],
            5_010,
        );
        assert_eq!(got, Ok(()));
    }

    #[test]
    fn during_rotation_encode_signs_with_old_and_new_keys_until_grace_ends() {
        let (creds, _) = P.create_credentials(&json!({"secret": SECRET})).unwrap();
        let (rotated, view) = P.rotate(&creds, 2_000, 1_000).unwrap();
        let old = VerifyKey::parse(SECRET).unwrap();
        let new = VerifyKey::parse(view["secret"].as_str().unwrap()).unwrap();

        let r = P
            .encode(&rotated, &notification("msg_1", b"{}", 1_999))
            .unwrap();
        let sig = header(&r, "webhook-signature");
        assert_eq!(sig.split(' ').count(), 2);
        for key in [&old, &new] {
            let got = sw::verify(
                "msg_1",
                "1999",
                sig,
                b"{}",
                std::slice::from_ref(key),
                1_999,
            );
            assert_eq!(got, Ok(()));
        }

        let r = P
            .encode(&rotated, &notification("msg_1", b"{}", 2_000))
            .unwrap();
        let sig = header(&r, "webhook-signature");
        assert_eq!(sig.split(' ').count(), 1);
        assert_eq!(
            sw::verify("msg_1", "2000", sig, b"{}", &[old], 2_000),
            Err(sw::VerifyError::NoMatchingSignature)
        );
        assert_eq!(
            sw::verify("msg_1", "2000", sig, b"{}", &[new], 2_000),
            Ok(())
        );
    }

    #[test]
    fn encode_refuses_ids_that_are_not_safe_header_values() {
        let (creds, _) = P.create_credentials(&json!(null)).unwrap();
        for id in ["", "msg 1", "msg_1\r\nx: y", "msg.1", "msg_é"] {
            let err = P.encode(&creds, &notification(id, b"{}", 1)).unwrap_err();
            assert!(matches!(err, ProfileError::Encode(_)), "{id:?}");
        }
    }

    #[test]
    fn encode_with_only_expired_keys_is_an_error() {
        let creds = Credentials::StandardWebhooks(Keys {
            keys: vec![KeyEntry {
                secret: SECRET.into(),
                expires_at: Some(10),
            }],
        });
        let err = P
            .encode(&creds, &notification("msg_1", b"{}", 10))
            .unwrap_err();
        assert!(matches!(err, ProfileError::SigningSecret(_)), "{err:?}");
        assert!(err.to_string().contains("no key is valid"), "{err}");
        assert!(
            std::error::Error::source(&err)
                .and_then(|s| s.downcast_ref::<crate::standard_webhooks::KeyError>())
                .is_some(),
            "the key list's error is the source: {err:?}"
        );
    }

    #[test]
    fn credentials_serialize_with_a_profile_tag_and_debug_redacts() {
        let creds = Credentials::StandardWebhooks(Keys::single(SECRET.into()));
        let v = serde_json::to_value(&creds).unwrap();
        assert_eq!(
            v,
            json!({"profile": "standard-webhooks", "keys": [{"secret": SECRET}]})
        );
        let back: Credentials = serde_json::from_value(v).unwrap();
        assert_eq!(back, creds);
        assert!(!format!("{creds:?}").contains("MfKQ"));
    }

    #[test]
    fn every_profile_round_trips_sign_then_verify_and_rejects_a_changed_byte() {
        let payloads: [(Profile, &str, &str); 7] = [
            (
                Profile::StandardWebhooks,
                "payment.succeeded",
                r#"{"out_trade_no":"A1","amount":100,"currency":"cny"}"#,
            ),
            (
                Profile::Alipay,
                "trade.success",
                r#"{"out_trade_no":"A1","trade_no":"T1","total_amount":"1.00","trade_status":"TRADE_SUCCESS"}"#,
            ),
            (
                Profile::WechatPayV2,
                "trade.success",
                r#"{"out_trade_no":"A1","transaction_id":"T1","total_fee":100}"#,
            ),
            (
                Profile::WechatPayV3,
                "TRANSACTION.SUCCESS",
                r#"{"out_trade_no":"A1","transaction_id":"T1","trade_state":"SUCCESS","amount":{"total":100,"currency":"CNY"}}"#,
            ),
            (
                Profile::Stripe,
                "payment_intent.succeeded",
                r#"{"id":"pi_1","amount":100,"currency":"cny","metadata":{"out_trade_no":"A1"}}"#,
            ),
            (
                Profile::WechatPayLegacy,
                "trade.success",
                r#"{"out_trade_no":"A1","total_fee":100}"#,
            ),
            (
                Profile::Dialect,
                "trade.success",
                r#"{"out_trade_no":"A1","trade_no":"T1","money":"1.00","trade_status":"TRADE_SUCCESS","type":"alipay","name":"coffee"}"#,
            ),
        ];
        let now = 1_763_900_000;
        for (profile, event_type, payload) in payloads {
            let (creds, _) = profile
                .create_credentials(&serde_json::Value::Null)
                .unwrap();
            let id = profile.new_notify_id();
            let n = OutgoingNotification {
                notify_id: &id,
                event_type,
                payload: payload.as_bytes(),
                timestamp: UnixSeconds::new(now),
                created_at: UnixSeconds::new(now),
            };
            let req = profile.encode(&creds, &n).unwrap();
            let mut headers = req.headers.clone();
            headers.push(("Content-Type".into(), req.content_type.clone()));
            let keys = profile.receiver_keys_from(&creds, now).unwrap();
            let incoming = IncomingRequest {
                method: req.method,
                headers: &headers,
                query: &req.query,
                body: &req.body,
                now,
            };
            let v = profile
                .verify(&keys, &incoming)
                .unwrap_or_else(|e| panic!("{}: {e}", profile.name()));
            assert_eq!(v.profile, profile.name());
            assert_eq!(v.out_trade_no.as_deref(), Some("A1"), "{}", profile.name());
            assert_eq!(
                v.amount.as_ref().map(|a| a.minor),
                Some(100),
                "{}",
                profile.name()
            );
            assert!(profile.explain(&keys, &incoming).is_ok());
            // The ack reply satisfies the sender's default ack rule.
            let ack = profile.ack_reply_for(&keys);
            assert!(
                profile.default_ack().is_ack(ack.status, &ack.body),
                "{}",
                profile.name()
            );
            let fail = profile.failure_reply_for(&keys, "no");
            assert!(
                !profile.default_ack().is_ack(fail.status, &fail.body),
                "{}",
                profile.name()
            );
            // One changed byte anywhere in the body (the query of a GET) fails.
            let mut body = req.body.clone();
            let mut query = req.query.clone().into_bytes();
            let bytes = if body.is_empty() {
                &mut query
            } else {
                &mut body
            };
            let i = bytes.iter().rposition(|b| b.is_ascii_digit()).unwrap();
            bytes[i] = if bytes[i] == b'1' { b'2' } else { b'1' };
            let query = String::from_utf8(query).unwrap();
            let tampered = IncomingRequest {
                body: &body,
                query: &query,
                ..incoming
            };
            assert!(
                profile.verify(&keys, &tampered).is_err(),
                "{} accepted a changed byte",
                profile.name()
            );
            // Another app's keys fail.
            let (other, _) = profile
                .create_credentials(&serde_json::Value::Null)
                .unwrap();
            let other_keys = profile.receiver_keys_from(&other, now).unwrap();
            assert!(
                profile.verify(&other_keys, &incoming).is_err(),
                "{} accepted a foreign key",
                profile.name()
            );
        }
    }
}
