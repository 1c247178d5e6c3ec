//! Acknowledgement rules (what response counts as "received, stop sending") and the one
//! function that classifies an HTTP outcome into ack / retry / retry-not-before.
//!
//! Owns the string form of [`AckRule`] (`2xx`, `body:<text>`, `wechat-xml`, also its serde
//! form), the per-rule body checks (including the WeChat Pay XML ack, parsed with a real XML
//! parser rather than substring matching) and the parsing of `Retry-After`.
use std::time::{Duration, SystemTime};

use quick_xml::events::Event;
use quick_xml::Reader;

/// What the receiver must answer for a delivery to count as acknowledged. Every rule also
/// requires a 2xx status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AckRule {
    /// `2xx`: any 2xx status.
    Http2xx,
    /// `body:<text>`: 2xx and the body, trimmed of surrounding whitespace, equals `text`.
    Body(String),
    /// `wechat-xml`: 2xx and an XML body whose `return_code` is `SUCCESS`.
    WechatXml,
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("unknown ack rule {0:?}; expected \"2xx\", \"body:<text>\" or \"wechat-xml\"")]
pub struct AckRuleError(pub String);

impl std::str::FromStr for AckRule {
    type Err = AckRuleError;

    /// `2xx`, `wechat-xml`, or `body:<text>` where `text` is non-empty and has no surrounding
    /// whitespace (the body is trimmed before comparing, so such a text could never match).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "2xx" => Ok(AckRule::Http2xx),
            "wechat-xml" => Ok(AckRule::WechatXml),
            _ => match s.strip_prefix("body:") {
                Some(text) if !text.is_empty() && text.trim_matches(is_ascii_ws_char) == text => {
                    Ok(AckRule::Body(text.to_string()))
                }
                _ => Err(AckRuleError(s.to_string())),
            },
        }
    }
}

impl std::fmt::Display for AckRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AckRule::Http2xx => f.write_str("2xx"),
            AckRule::Body(text) => write!(f, "body:{text}"),
            AckRule::WechatXml => f.write_str("wechat-xml"),
        }
    }
}

impl serde::Serialize for AckRule {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for AckRule {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

fn is_ascii_ws_char(c: char) -> bool {
    c.is_ascii_whitespace()
}

fn is_2xx(status: u16) -> bool {
    (200..=299).contains(&status)
}

impl AckRule {
    /// True when `status` and `body` acknowledge the delivery under this rule.
    ///
    /// - `2xx`: any status in 200..=299.
    /// - `body:<text>`: 2xx, and the body with ASCII whitespace trimmed from both ends is
    ///   byte-for-byte `text` (case matters: `SUCCESS` does not ack `body:success`).
    /// - `wechat-xml`: 2xx, and the body is one well-formed `<xml>` element whose
    ///   `return_code` child holds `SUCCESS` (plain text or CDATA, trimmed).
    pub fn is_ack(&self, status: u16, body: &[u8]) -> bool {
        if !is_2xx(status) {
            return false;
        }
        match self {
            AckRule::Http2xx => true,
            AckRule::Body(text) => body.trim_ascii() == text.as_bytes(),
            AckRule::WechatXml => wechat_return_code(body).as_deref() == Some("SUCCESS"),
        }
    }
}

/// The trimmed text of `/xml/return_code`, or `None` when the body is not a single
/// well-formed `<xml>` document with exactly one plain-text `return_code` child.
fn wechat_return_code(body: &[u8]) -> Option<String> {
    let mut reader = Reader::from_reader(body);
    let mut depth = 0usize;
    let mut seen_root = false;
    let mut in_return_code = false;
    let mut return_code: Option<String> = None;
    loop {
        let event = reader.read_event().ok()?;
        match event {
            Event::Eof => break,
            Event::Decl(_) | Event::Comment(_) | Event::PI(_) | Event::DocType(_) => {}
            Event::Start(e) => {
                match depth {
                    0 if !seen_root && e.name().as_ref() == b"xml" => seen_root = true,
                    0 => return None,
                    1 if e.name().as_ref() == b"return_code" => {
                        if return_code.is_some() {
                            return None; // ambiguous: two return_code elements
                        }
                        in_return_code = true;
                        return_code = Some(String::new());
                    }
                    _ if in_return_code => return None, // markup inside return_code
                    _ => {}
                }
                depth += 1;
            }
            Event::Empty(e) => match depth {
                0 => return None, // `<xml/>` or another root: no return_code
                1 if e.name().as_ref() == b"return_code" => return None,
                _ if in_return_code => return None,
                _ => {}
            },
            Event::End(_) => {
                depth = depth.checked_sub(1)?;
                if depth == 1 {
                    in_return_code = false;
                }
            }
            Event::Text(t) => {
                let text = t.xml10_content().ok()?;
                if depth == 0 {
                    if !text.trim().is_empty() {
                        return None; // text outside the root element
                    }
                } else if in_return_code {
                    return_code.as_mut()?.push_str(&text);
                }
            }
            Event::CData(c) => {
                if depth == 0 {
                    return None;
                }
                if in_return_code {
                    let text = c.xml10_content().ok()?;
                    return_code.as_mut()?.push_str(&text);
                }
            }
            Event::GeneralRef(r) => {
                if depth == 0 {
                    return None;
                }
                if in_return_code {
                    let resolved = match r.resolve_char_ref().ok()? {
                        Some(c) => c.to_string(),
                        None => {
                            let name = r.decode().ok()?;
                            quick_xml::escape::resolve_predefined_entity(&name)?.to_string()
                        }
                    };
                    return_code.as_mut()?.push_str(&resolved);
                }
            }
        }
    }
    if !seen_root || depth != 0 {
        return None;
    }
    return_code.map(|s| s.trim().to_string())
}

/// What to do after an HTTP response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The receiver acknowledged: the delivery succeeded.
    Acked,
    /// Not acknowledged: retry on the schedule.
    Retry,
    /// Not acknowledged, and the receiver asked (429/503 with `Retry-After`) not to be called
    /// again before this long from now.
    RetryNotBefore(Duration),
}

/// The longest wait a `Retry-After` header can impose: 24 hours.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Classifies one HTTP response. `retry_after` is the raw `Retry-After` header, honoured
/// only with 429 and 503 (delta-seconds or an HTTP date, relative to `now`).
///
/// A `Retry-After` that does not parse is ignored (plain [`Verdict::Retry`]); one that
/// parses is clamped to `0..=24 h` (see [`parse_retry_after`]).
pub fn classify(
    ack: &AckRule,
    status: u16,
    body: &[u8],
    retry_after: Option<&str>,
    now: SystemTime,
) -> Verdict {
    if ack.is_ack(status, body) {
        return Verdict::Acked;
    }
    if status == 429 || status == 503 {
        if let Some(wait) = retry_after.and_then(|v| parse_retry_after(v, now)) {
            return Verdict::RetryNotBefore(wait);
        }
    }
    Verdict::Retry
}

/// Parses a `Retry-After` value: delta-seconds (`120`) or an HTTP date
/// (`Wed, 21 Oct 2015 07:28:00 GMT`, or the obsolete RFC 850 / asctime forms), as a wait
/// from `now`. A date in the past gives zero; anything longer than [`MAX_RETRY_AFTER`] is
/// capped to it (also a delta-seconds too large for 64 bits). `None` when neither form parses.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim_matches(is_ascii_ws_char);
    if value.is_empty() {
        return None;
    }
    let wait = if value.bytes().all(|b| b.is_ascii_digit()) {
        // All digits: only overflow can fail, and an overflowing wait is "very long".
        value
            .parse::<u64>()
            .map_or(MAX_RETRY_AFTER, Duration::from_secs)
    } else {
        let at = httpdate::parse_http_date(value).ok()?;
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    const WECHAT_OK: &str = "<xml><return_code><![CDATA[SUCCESS]]></return_code><return_msg><![CDATA[OK]]></return_msg></xml>";

    fn rule(s: &str) -> AckRule {
        s.parse().unwrap()
    }

    #[test]
    fn rules_round_trip_through_their_string_form() {
        for (s, r) in [
            ("2xx", AckRule::Http2xx),
            ("body:success", AckRule::Body("success".into())),
            ("body:a b:c", AckRule::Body("a b:c".into())),
            ("wechat-xml", AckRule::WechatXml),
        ] {
            assert_eq!(rule(s), r);
            assert_eq!(r.to_string(), s);
        }
    }

    #[test]
    fn unknown_or_empty_rules_are_rejected() {
        for s in [
            "",
            "2XX",
            "200",
            "body:",
            "body",
            "body: success",
            "body:success\n",
            "Body:ok",
            "wechat",
        ] {
            assert_eq!(
                s.parse::<AckRule>(),
                Err(AckRuleError(s.to_string())),
                "{s:?}"
            );
        }
        let msg = "nope".parse::<AckRule>().unwrap_err().to_string();
        assert!(msg.contains("\"2xx\"") && msg.contains("\"nope\""), "{msg}");
    }

    #[test]
    fn serde_form_is_the_string_form() {
        let v = serde_json::to_value(AckRule::Body("success".into())).unwrap();
        assert_eq!(v, serde_json::json!("body:success"));
        let r: AckRule = serde_json::from_value(serde_json::json!("wechat-xml")).unwrap();
        assert_eq!(r, AckRule::WechatXml);
        let r: AckRule = serde_json::from_str("\"2xx\"").unwrap();
        assert_eq!(r, AckRule::Http2xx);
        let err = serde_json::from_value::<AckRule>(serde_json::json!("3xx")).unwrap_err();
        assert!(err.to_string().contains("unknown ack rule"), "{err}");
        assert!(serde_json::from_value::<AckRule>(serde_json::json!(2)).is_err());
    }

    #[test]
    fn any_2xx_acks_the_http2xx_rule_and_nothing_else_does() {
        let r = AckRule::Http2xx;
        for s in [200, 201, 204, 299] {
            assert!(r.is_ack(s, b""), "{s}");
        }
        for s in [100, 199, 300, 301, 304, 400, 404, 410, 429, 500, 503] {
            assert!(!r.is_ack(s, b""), "{s}");
        }
    }

    #[test]
    fn body_rule_acks_exact_text_with_surrounding_whitespace_trimmed() {
        let r = rule("body:success");
        assert!(r.is_ack(200, b"success"));
        assert!(r.is_ack(200, b"  success\r\n"));
        assert!(r.is_ack(204, b"\tsuccess "));
        for body in [
            &b"SUCCESS"[..],
            b"success!",
            b"suc cess",
            b"",
            b"<html><body>success</body></html>",
            b"\"success\"",
            b"fail",
        ] {
            assert!(!r.is_ack(200, body), "{:?}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn body_rule_requires_2xx() {
        let r = rule("body:success");
        assert!(!r.is_ack(302, b"success"));
        assert!(!r.is_ack(500, b"success"));
    }

    #[test]
    fn wechat_xml_with_cdata_success_is_an_ack() {
        assert!(AckRule::WechatXml.is_ack(200, WECHAT_OK.as_bytes()));
    }

    #[test]
    fn wechat_xml_accepts_plain_text_whitespace_declaration_and_entities() {
        for body in [
            "<xml><return_code>SUCCESS</return_code></xml>",
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<xml>\n  <return_code> SUCCESS </return_code>\n</xml>\n",
            "<xml><return_msg>OK</return_msg><return_code><![CDATA[ SUCCESS\n]]></return_code></xml>",
            "<xml><return_code>SUC&#67;ESS</return_code></xml>",
            "<!-- reply --><xml><return_code>SUCCESS</return_code><!-- ok --></xml>",
        ] {
            assert!(AckRule::WechatXml.is_ack(200, body.as_bytes()), "{body}");
        }
    }

    #[test]
    fn wechat_xml_rejects_plain_success_json_html_and_fail() {
        for body in [
            "success",
            "SUCCESS",
            "{\"return_code\":\"SUCCESS\"}",
            "<html><body><return_code>SUCCESS</return_code></body></html>",
            "<xml><return_code><![CDATA[FAIL]]></return_code><return_msg>bad sign</return_msg></xml>",
            "<xml><return_code>success</return_code></xml>",
            "<xml><return_msg>SUCCESS</return_msg></xml>",
            "<xml/>",
            "<xml><return_code/></xml>",
            "<xml><return_code></return_code></xml>",
            "<xml><a><return_code>SUCCESS</return_code></a></xml>",
            "<xml><return_code>SUCCESS</return_code>",
            "<xml><return_code>SUCCESS</return_cod></xml>",
            "<xml><return_code>SUCCESS</return_code></xml><xml></xml>",
            "<xml><return_code>SUCCESS</return_code></xml>trailing",
            "<xml><return_code>SUCCESS</return_code><return_code>FAIL</return_code></xml>",
            "<xml><return_code><b>SUCCESS</b></return_code></xml>",
            "<xml><return_code>SUCCESS&unknown;</return_code></xml>",
            "",
            "\u{0}\u{1}",
        ] {
            assert!(!AckRule::WechatXml.is_ack(200, body.as_bytes()), "{body}");
        }
        assert!(!AckRule::WechatXml.is_ack(200, &[0xff, 0xfe, 0x3c]));
    }

    #[test]
    fn wechat_xml_requires_2xx() {
        assert!(!AckRule::WechatXml.is_ack(500, WECHAT_OK.as_bytes()));
    }

    fn now() -> SystemTime {
        httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap()
    }

    #[test]
    fn an_ack_is_acked_whatever_retry_after_says() {
        let v = classify(&AckRule::Http2xx, 200, b"", Some("60"), now());
        assert_eq!(v, Verdict::Acked);
    }

    #[test]
    fn a_non_ack_without_retry_after_is_retried_on_schedule() {
        for status in [200, 404, 429, 500, 503] {
            let v = classify(&rule("body:success"), status, b"nope", None, now());
            assert_eq!(v, Verdict::Retry, "{status}");
        }
    }

    #[test]
    fn retry_after_seconds_is_honoured_on_429_and_503() {
        for status in [429, 503] {
            let v = classify(&AckRule::Http2xx, status, b"", Some("120"), now());
            assert_eq!(v, Verdict::RetryNotBefore(Duration::from_secs(120)));
        }
        let v = classify(&AckRule::Http2xx, 429, b"", Some(" 0 "), now());
        assert_eq!(v, Verdict::RetryNotBefore(Duration::ZERO));
    }

    #[test]
    fn retry_after_is_ignored_on_other_statuses() {
        for status in [200, 301, 400, 500, 502, 504] {
            let v = classify(&rule("body:ok"), status, b"no", Some("120"), now());
            assert_eq!(v, Verdict::Retry, "{status}");
        }
    }

    #[test]
    fn retry_after_http_date_is_relative_to_now() {
        let v = classify(
            &AckRule::Http2xx,
            503,
            b"",
            Some("Wed, 21 Oct 2015 07:30:30 GMT"),
            now(),
        );
        assert_eq!(v, Verdict::RetryNotBefore(Duration::from_secs(150)));
    }

    #[test]
    fn retry_after_in_the_past_means_no_extra_wait() {
        let v = classify(
            &AckRule::Http2xx,
            503,
            b"",
            Some("Wed, 21 Oct 2015 07:00:00 GMT"),
            now(),
        );
        assert_eq!(v, Verdict::RetryNotBefore(Duration::ZERO));
    }

    #[test]
    fn retry_after_is_capped_at_a_day() {
        for value in [
            "86401",
            "999999999999",
            "99999999999999999999999999",
            "Fri, 21 Oct 2016 07:28:00 GMT",
        ] {
            let v = classify(&AckRule::Http2xx, 429, b"", Some(value), now());
            assert_eq!(v, Verdict::RetryNotBefore(MAX_RETRY_AFTER), "{value}");
        }
    }

    #[test]
    fn unparsable_retry_after_falls_back_to_the_schedule() {
        for value in [
            "",
            "soon",
            "-5",
            "1.5",
            "120s",
            "Wed, 99 Oct 2015 07:28:00 GMT",
        ] {
            let v = classify(&AckRule::Http2xx, 429, b"", Some(value), now());
            assert_eq!(v, Verdict::Retry, "{value:?}");
        }
    }
}
