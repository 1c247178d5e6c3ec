//! The seam's vocabulary for what producers and operators send: a notification's
//! [`EventType`], its [`NotifyUrl`], its [`IdempotencyKey`] and its [`OrderKey`], and an
//! endpoint's [`EndpointUrl`], each a validated string. (Times are typed too:
//! [`UnixMillis`](crate::UnixMillis) and [`UnixSeconds`](crate::UnixSeconds), from
//! `herald-protocols`.)
//!
//! The rules live here, once: the API parses a request into these types as it deserializes it
//! (`#[serde(try_from = "String")]`, or [`FromStr`] for a header), and everything further in
//! (the store, the engine, the dashboard) takes the types, so nothing checks a field twice and
//! nothing unchecked reaches the store. Each type wraps the `String` it was given (no copy).
//!
//! A value read back from the database goes through `from_stored`, which never fails: rows
//! written before a rule got stricter still read.
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The most characters of an event type or an idempotency key.
pub const MAX_KEY_CHARS: usize = 256;
/// The most bytes of a delivery URL.
pub const MAX_URL_BYTES: usize = 2048;

/// Why a field was refused. The message names the field, as the API shows it (422).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    #[error("{0} must not be empty")]
    Empty(&'static str),
    #[error("{0} is longer than {1} characters")]
    TooLong(&'static str, usize),
    #[error("{0} must not contain control characters")]
    Control(&'static str),
    #[error("{0} is not a valid URL: {1}")]
    NotAUrl(&'static str, url::ParseError),
    #[error("{0} must be an http or https URL")]
    NotHttp(&'static str),
    #[error("{0} has no host")]
    NoHost(&'static str),
}

/// Checks bounded text: not blank, at most `max` characters.
pub fn check_text(field: &'static str, s: &str, max: usize) -> Result<(), FieldError> {
    if s.trim().is_empty() {
        return Err(FieldError::Empty(field));
    }
    if s.chars().count() > max {
        return Err(FieldError::TooLong(field, max));
    }
    Ok(())
}

/// Checks a key: [`check_text`], and no control characters (a NUL is not even storable in
/// PostgreSQL's `text`; a newline or an escape garbles logs and the dashboard).
pub fn check_key(field: &'static str, s: &str, max: usize) -> Result<(), FieldError> {
    check_text(field, s, max)?;
    if s.chars().any(char::is_control) {
        return Err(FieldError::Control(field));
    }
    Ok(())
}

/// Checks a delivery target: at most [`MAX_URL_BYTES`], an absolute `http` or `https` URL
/// with a host. Credentials in it are allowed (the engine sends them as Basic auth; the API
/// masks the password when it shows the URL). Returns the parsed URL.
pub fn check_url(field: &'static str, s: &str) -> Result<url::Url, FieldError> {
    if s.len() > MAX_URL_BYTES {
        return Err(FieldError::TooLong(field, MAX_URL_BYTES));
    }
    let url = url::Url::parse(s).map_err(|e| FieldError::NotAUrl(field, e))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(FieldError::NotHttp(field));
    }
    if url.host().is_none() {
        return Err(FieldError::NoHost(field));
    }
    Ok(url)
}

/// The shared surface of a validated string: parse, `from_stored`, `as_str`, `Display`,
/// `Deref<Target = str>`, comparison with `str`, and serde through `String`.
macro_rules! checked_string {
    ($(#[$doc:meta])* $name:ident, $field:literal, $check:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The field name its errors carry.
            pub const FIELD: &'static str = $field;

            /// Validates `s`, keeping the `String` as it is.
            pub fn parse(s: String) -> Result<$name, FieldError> {
                let check: fn(&str) -> Result<(), FieldError> = $check;
                check(&s)?;
                Ok($name(s))
            }

            /// A value read back from the store (or made by Herald itself): taken as it is,
            /// never refused, so rows written under an older rule still read.
            pub fn from_stored(s: String) -> $name {
                $name(s)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl FromStr for $name {
            type Err = FieldError;
            fn from_str(s: &str) -> Result<$name, FieldError> {
                $name::parse(s.to_string())
            }
        }

        impl TryFrom<String> for $name {
            type Error = FieldError;
            fn try_from(s: String) -> Result<$name, FieldError> {
                $name::parse(s)
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}

checked_string!(
    /// A notification's event type (`trade.success`, `refund.closed`...): not blank, at most
    /// [`MAX_KEY_CHARS`] characters, no control characters ([`check_key`]). Endpoints' filters match it (see
    /// [`event_type_matches`](crate::event_type_matches)).
    EventType,
    "event_type",
    |s| check_key(EventType::FIELD, s, MAX_KEY_CHARS)
);

checked_string!(
    /// A producer's idempotency key (the body's `idempotency_key` or the `Idempotency-Key`
    /// header; a source's provider notify id): not blank, at most [`MAX_KEY_CHARS`]
    /// characters, no control characters ([`check_key`]). One key per app stores one
    /// notification.
    IdempotencyKey,
    "idempotency_key",
    |s| check_key(IdempotencyKey::FIELD, s, MAX_KEY_CHARS)
);

checked_string!(
    /// Where a notification goes instead of the app's endpoints (the payment-API style): an
    /// absolute `http`/`https` URL with a host, at most [`MAX_URL_BYTES`] (see
    /// [`check_url`]). Kept byte for byte as the producer wrote it: it is what gets called.
    /// Whether the target policy permits its address is the server's check, not the type's.
    NotifyUrl,
    "notify_url",
    |s| check_url(NotifyUrl::FIELD, s).map(|_| ())
);

checked_string!(
    /// What serializes a notification's deliveries (the producer's `order_key`: an order
    /// number, say): not blank, at most [`MAX_KEY_CHARS`] characters, no control characters
    /// ([`check_key`]). Deliveries to one endpoint (or to one app's `notify_url`s) that share
    /// it are attempted one at a time, in creation order.
    OrderKey,
    "order_key",
    |s| check_key(OrderKey::FIELD, s, MAX_KEY_CHARS)
);

checked_string!(
    /// An endpoint's URL (`url` in the API): the same rule as a [`NotifyUrl`] ([`check_url`]),
    /// but its own type, so its errors name the field the endpoint API knows (`url`) and an
    /// endpoint's subscription cannot be passed where a notification's one-off target is
    /// expected, or the other way round. Kept byte for byte; the target policy is the
    /// server's check.
    EndpointUrl,
    "url",
    |s| check_url(EndpointUrl::FIELD, s).map(|_| ())
);

impl EndpointUrl {
    /// Validates `s` as [`EndpointUrl::parse`] does, with errors naming `field` (a source's
    /// `destination.url`, an ops target's `url`).
    pub fn parse_field(field: &'static str, s: String) -> Result<EndpointUrl, FieldError> {
        check_url(field, &s)?;
        Ok(EndpointUrl(s))
    }
}

impl EventType {
    /// One of Herald's own event types (ops notifications, the gateway's raw forwards).
    /// Panics in debug builds if `s` breaks the rule.
    pub fn internal(s: &'static str) -> EventType {
        debug_assert!(check_key(EventType::FIELD, s, MAX_KEY_CHARS).is_ok());
        EventType(s.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_type_accepts_dotted_names_and_the_longest_allowed() {
        for ok in ["trade.success", "e", "支付.成功", &"x".repeat(256)] {
            assert_eq!(ok.parse::<EventType>().unwrap().as_str(), ok);
        }
    }

    #[test]
    fn event_type_refuses_blank_too_long_and_control_characters_with_the_api_messages() {
        for blank in ["", "   ", "\t\n"] {
            assert_eq!(
                blank.parse::<EventType>().unwrap_err().to_string(),
                "event_type must not be empty"
            );
        }
        assert_eq!(
            "x".repeat(257)
                .parse::<EventType>()
                .unwrap_err()
                .to_string(),
            "event_type is longer than 256 characters"
        );
        // Characters, not bytes: 256 three-byte characters pass.
        assert!("支".repeat(256).parse::<EventType>().is_ok());
        for control in ["bad\0type", "trade.success\n", "a\u{1b}[31m"] {
            assert_eq!(
                control.parse::<EventType>().unwrap_err().to_string(),
                "event_type must not contain control characters"
            );
        }
    }

    #[test]
    fn idempotency_key_refuses_blank_too_long_and_control_characters_with_the_api_messages() {
        assert_eq!(
            "order-1:paid".parse::<IdempotencyKey>().unwrap(),
            "order-1:paid"
        );
        assert_eq!(
            " ".parse::<IdempotencyKey>().unwrap_err().to_string(),
            "idempotency_key must not be empty"
        );
        assert_eq!(
            "k".repeat(257)
                .parse::<IdempotencyKey>()
                .unwrap_err()
                .to_string(),
            "idempotency_key is longer than 256 characters"
        );
        assert_eq!(
            "k\r\n1".parse::<IdempotencyKey>().unwrap_err().to_string(),
            "idempotency_key must not contain control characters"
        );
    }

    #[test]
    fn notify_url_accepts_http_and_https_with_a_host_kept_byte_for_byte() {
        for ok in [
            "https://merchant.example/notify",
            "http://127.0.0.1:8080/pay/notify?x=1",
            "https://user:pw@hooks.example.com/x",
            "HTTPS://Merchant.Example/Notify",
        ] {
            assert_eq!(ok.parse::<NotifyUrl>().unwrap().as_str(), ok);
        }
    }

    #[test]
    fn notify_url_refuses_each_invalid_shape_with_its_message() {
        let err = |s: &str| s.parse::<NotifyUrl>().unwrap_err().to_string();
        assert_eq!(
            err("merchant.example/notify"),
            "notify_url is not a valid URL: relative URL without a base"
        );
        assert_eq!(
            err(""),
            "notify_url is not a valid URL: relative URL without a base"
        );
        assert_eq!(
            err("ftp://merchant.example/notify"),
            "notify_url must be an http or https URL"
        );
        assert_eq!(
            err("mailto:ops@merchant.example"),
            "notify_url must be an http or https URL"
        );
        assert_eq!(
            err(&format!("https://merchant.example/{}", "a".repeat(2048))),
            "notify_url is longer than 2048 characters"
        );
        assert!(err("http://").starts_with("notify_url is not a valid URL: "));
    }

    #[test]
    fn order_key_accepts_order_numbers_and_refuses_each_invalid_shape_with_its_message() {
        for ok in ["order-1", "2024061222001", "订单 42", &"o".repeat(256)] {
            assert_eq!(ok.parse::<OrderKey>().unwrap().as_str(), ok);
        }
        let err = |s: &str| s.parse::<OrderKey>().unwrap_err().to_string();
        assert_eq!(err(""), "order_key must not be empty");
        assert_eq!(err(" \t"), "order_key must not be empty");
        assert_eq!(
            err(&"o".repeat(257)),
            "order_key is longer than 256 characters"
        );
        assert_eq!(
            err("order\0-1"),
            "order_key must not contain control characters"
        );
        assert_eq!(serde_json::from_str::<OrderKey>(r#""o-1""#).unwrap(), "o-1");
        assert!(serde_json::from_str::<OrderKey>(r#""""#)
            .unwrap_err()
            .to_string()
            .starts_with("order_key must not be empty"));
    }

    #[test]
    fn endpoint_url_accepts_what_notify_url_does_and_names_the_url_field_when_refusing() {
        for ok in [
            "https://merchant.example/hooks",
            "http://10.0.0.5:9000/h?x=1",
            "https://user:pw@hooks.example.com/x",
        ] {
            assert_eq!(ok.parse::<EndpointUrl>().unwrap().as_str(), ok);
        }
        let err = |s: &str| s.parse::<EndpointUrl>().unwrap_err().to_string();
        assert_eq!(
            err("merchant.example/hooks"),
            "url is not a valid URL: relative URL without a base"
        );
        assert_eq!(
            err("ftp://merchant.example/h"),
            "url must be an http or https URL"
        );
        assert_eq!(
            err(&format!("https://merchant.example/{}", "a".repeat(2048))),
            "url is longer than 2048 characters"
        );
        assert!(err("http://").starts_with("url is not a valid URL: "));
        assert_eq!(
            EndpointUrl::from_stored("not a url".into()).as_str(),
            "not a url"
        );
    }

    #[test]
    fn json_input_is_validated_on_deserialize_and_round_trips() {
        #[derive(Deserialize, Serialize, PartialEq, Debug)]
        struct Body {
            event_type: EventType,
            notify_url: Option<NotifyUrl>,
            idempotency_key: Option<IdempotencyKey>,
        }
        let text = r#"{"event_type":"trade.success","notify_url":"https://m.example/n","idempotency_key":"k-1"}"#;
        let body: Body = serde_json::from_str(text).unwrap();
        assert_eq!(body.event_type, "trade.success");
        assert_eq!(serde_json::to_string(&body).unwrap(), text);

        let bad = r#"{"event_type":" ","notify_url":null,"idempotency_key":null}"#;
        let e = serde_json::from_str::<Body>(bad).unwrap_err();
        assert!(e.is_data());
        assert!(
            e.to_string().starts_with("event_type must not be empty"),
            "{e}"
        );
        let bad = r#"{"event_type":"e","notify_url":"ftp://x/","idempotency_key":null}"#;
        let e = serde_json::from_str::<Body>(bad).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("notify_url must be an http or https URL"),
            "{e}"
        );
        let bad = r#"{"event_type":"e","notify_url":null,"idempotency_key":""}"#;
        let e = serde_json::from_str::<Body>(bad).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("idempotency_key must not be empty"),
            "{e}"
        );
    }

    #[test]
    fn stored_values_read_back_even_when_they_break_todays_rule() {
        assert_eq!(EventType::from_stored(String::new()).as_str(), "");
        assert_eq!(
            NotifyUrl::from_stored("not a url".into()).as_str(),
            "not a url"
        );
        assert_eq!(IdempotencyKey::from_stored("k".repeat(300)).len(), 300);
    }

    #[test]
    fn parsing_keeps_the_given_string_without_copying() {
        let s = String::from("trade.success");
        let ptr = s.as_ptr();
        let t = EventType::parse(s).unwrap();
        assert_eq!(t.as_str().as_ptr(), ptr);
        let back = String::from(t);
        assert_eq!(back.as_ptr(), ptr);
    }
}
