//! Raw forwards of the inbound gateway (a source whose destination format is `raw`): the
//! notification's payload is an envelope of the provider's original headers and body, and
//! the attempt sends those (byte for byte) with Herald's Standard Webhooks signature over
//! the original body added, instead of the payload itself. Only notifications of this event
//! type, to a `standard-webhooks` app, are unpacked; the API refuses the event type from
//! producers.
use base64::Engine as _;
use serde::Deserialize;

/// The event type of a raw forward.
pub const RAW_EVENT_TYPE: &str = "herald.source.raw";

/// A raw forward's payload: `{"headers": [[name, value], ...], "body": base64}`.
#[derive(Deserialize)]
struct Envelope {
    headers: Vec<(String, String)>,
    body: String,
}

/// The provider's request to send again.
#[derive(Debug, PartialEq, Eq)]
pub struct RawRequest {
    /// The original `Content-Type`, when there was one.
    pub content_type: Option<String>,
    /// The other original headers, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Why a payload is not a raw forward; the parser's error is the source.
#[derive(Debug, thiserror::Error)]
pub enum RawError {
    #[error("not a raw forward envelope")]
    Envelope(#[source] serde_json::Error),
    #[error("the raw forward's body is not base64")]
    Body(#[source] base64::DecodeError),
}

/// Unpacks a raw forward's payload.
pub fn unpack(payload: &str) -> Result<RawRequest, RawError> {
    let env: Envelope = serde_json::from_str(payload).map_err(RawError::Envelope)?;
    let body = base64::engine::general_purpose::STANDARD
        .decode(env.body.as_bytes())
        .map_err(RawError::Body)?;
    let mut content_type = None;
    let mut headers = Vec::with_capacity(env.headers.len());
    for (k, v) in env.headers {
        if k.eq_ignore_ascii_case("content-type") {
            content_type.get_or_insert(v);
        } else {
            headers.push((k, v));
        }
    }
    Ok(RawRequest {
        content_type,
        headers,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_envelope_unpacks_into_the_original_headers_and_body() {
        let payload = r#"{"headers": [["Content-Type", "text/xml"], ["Wechatpay-Serial", "S1"]],
                          "body": "PHhtbD48L3htbD4="}"#;
        let r = unpack(payload).unwrap();
        assert_eq!(r.content_type.as_deref(), Some("text/xml"));
        assert_eq!(r.headers, vec![("Wechatpay-Serial".into(), "S1".into())]);
        assert_eq!(r.body, b"<xml></xml>");
        assert!(unpack(r#"{"amount": 1}"#).is_err());
        assert!(unpack(r#"{"headers": [], "body": "***"}"#).is_err());
    }

    #[test]
    fn a_bad_envelope_keeps_the_parsers_error_as_its_source() {
        use std::error::Error as _;
        let err = unpack(r#"{"amount": 1}"#).unwrap_err();
        assert!(matches!(err, RawError::Envelope(_)), "{err:?}");
        assert!(err
            .source()
            .and_then(|s| s.downcast_ref::<serde_json::Error>())
            .is_some());
        let err = unpack(r#"{"headers": [], "body": "***"}"#).unwrap_err();
        assert!(matches!(err, RawError::Body(_)), "{err:?}");
        assert!(err
            .source()
            .and_then(|s| s.downcast_ref::<base64::DecodeError>())
            .is_some());
    }
}
