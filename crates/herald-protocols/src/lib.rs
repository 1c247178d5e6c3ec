//! Herald's wire layer: pure code, no I/O.
//!
//! Owns everything that decides what goes on the wire and what a response means:
//! retry schedules ([`retry`]), acknowledgement rules ([`ack`]), the classification of an
//! HTTP outcome ([`ack::classify`]), and one module per wire profile, plugged in through
//! [`profile::Profile`]. The same code signs (sender) and verifies (receiver), so every
//! profile is tested by round trip and by the published vectors.

pub mod ack;
pub mod alipay;
pub mod dialect;
pub mod fuzzing;
pub mod keys;
pub mod order;
pub mod profile;
pub mod receive;
pub mod retry;
pub mod standard_webhooks;
pub mod stripe;
pub mod unix_time;
pub mod wechatpay_legacy;
pub mod wechatpay_v2;
pub mod wechatpay_v3;

pub use ack::{classify, AckRule, Verdict};
pub use profile::{
    Credentials, EncodedRequest, OutgoingNotification, Profile, ProfileError, ReceiverKeys,
};
pub use retry::{RetryPolicy, RetryPolicyError};
pub use unix_time::{UnixMillis, UnixSeconds};
