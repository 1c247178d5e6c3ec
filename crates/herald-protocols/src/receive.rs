//! The receiving side's shared vocabulary: a raw incoming request, the verified and decoded
//! notification every profile produces from it, amounts in minor units, the typed reasons a
//! request is refused, and the exact replies a receiver sends back.
use std::collections::BTreeMap;

use serde::Serialize;

/// A request as it reached the receiver: nothing parsed yet.
#[derive(Clone, Copy, Debug)]
pub struct IncomingRequest<'a> {
    /// `POST` for notifications, `GET` for return_url redirects.
    pub method: &'a str,
    /// Header names in any case; the first value of a repeated header is used.
    pub headers: &'a [(String, String)],
    /// The request's query string (without `?`), for GET redirects; empty otherwise.
    pub query: &'a str,
    /// The raw body bytes, exactly as received (never re-serialised before verifying).
    pub body: &'a [u8],
    /// The receiver's clock, unix seconds (for timestamp windows).
    pub now: i64,
}

impl IncomingRequest<'_> {
    /// The first value of a header, matched case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The media type of `Content-Type`, lower-cased, without parameters.
    pub fn media_type(&self) -> Option<String> {
        self.header("content-type").map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
    }

    /// The `charset` parameter of `Content-Type`, lower-cased.
    pub fn charset(&self) -> Option<String> {
        self.header("content-type")?
            .split(';')
            .skip(1)
            .find_map(|p| {
                let (k, v) = p.split_once('=')?;
                k.trim()
                    .eq_ignore_ascii_case("charset")
                    .then(|| v.trim().trim_matches('"').to_ascii_lowercase())
            })
    }
}

/// An amount in minor units (fen, cents) with its ISO 4217 currency. Never a float.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Amount {
    pub minor: i64,
    pub currency: String,
}

/// A notification whose signature verified, decoded into what a merchant checks.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VerifiedNotification {
    /// The profile that verified it (serialised as its name: `alipay`, ...).
    pub profile: crate::Profile,
    /// The dedupe key: Alipay `notify_id`, WeChat v3 `id`, Stripe event `id`, webhook-id;
    /// for WeChat v2, which has none, `transaction_id`.
    pub notify_id: String,
    /// The provider's app id (`app_id` / `appid`), when the wire carries one.
    pub app_id: Option<String>,
    /// The merchant/seller id (`seller_id` / `mch_id` / `mchid`), when present.
    pub merchant_id: Option<String>,
    /// The merchant's order reference (`out_trade_no`), when present.
    pub out_trade_no: Option<String>,
    /// The provider's transaction id (`trade_no` / `transaction_id`), when present.
    pub transaction_id: Option<String>,
    /// The paid (or refunded) amount, when present.
    pub amount: Option<Amount>,
    /// The provider's status (`TRADE_SUCCESS`, `SUCCESS`, `REFUND`, an event type...).
    pub status: Option<String>,
    /// The event type when the wire names one (WeChat v3 `event_type`, Stripe `type`).
    pub event_type: Option<String>,
    /// Every field as received (form fields, XML elements, or the JSON body; for WeChat v3
    /// the decrypted resource under `resource`).
    pub fields: BTreeMap<String, serde_json::Value>,
}

/// Why a request was refused. Messages never contain key material.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReceiveError {
    #[error("bad signature: {0}")]
    BadSignature(String),
    #[error("unknown key: {0}")]
    UnknownKey(String),
    #[error("timestamp {timestamp} is outside the accepted window around {now}")]
    TimestampOutOfWindow { timestamp: i64, now: i64 },
    #[error("probe request (signature starts with WECHATPAY/SIGNTEST/): rejected on purpose")]
    ProbeRequest,
    #[error("missing {0}")]
    Missing(String),
    #[error("malformed body: {0}")]
    MalformedBody(String),
    #[error("unsupported content type {0:?}")]
    UnsupportedContentType(String),
    #[error("unsupported charset {0:?}")]
    Charset(String),
    #[error("cannot decrypt the resource: {0}")]
    Decrypt(String),
    #[error("invalid amount {0:?}")]
    BadAmount(String),
}

/// A refused request, and whether its signature had verified before it was refused (from
/// each profile's `verify_detailed` and [`crate::Profile::verify_detailed`]). A request whose
/// signature (or timestamp window, or, for WeChat Pay v2 refunds, decryption) fails has
/// `signature_valid` false; one correctly signed but not a notification a receiver takes (a
/// Stripe event without `type`, a WeChat body without `return_code`, a WeChat v3 resource
/// that does not decrypt) has it true. Debugging tools answer the signature question first
/// with it; a receiver refuses both.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// Why the request was refused.
    pub error: ReceiveError,
    /// Whether the signature had verified.
    pub signature_valid: bool,
}

impl Refusal {
    /// Refused before or at the signature: not correctly signed.
    pub fn unsigned(error: ReceiveError) -> Refusal {
        Refusal {
            error,
            signature_valid: false,
        }
    }

    /// Refused after the signature verified.
    pub fn signed(error: ReceiveError) -> Refusal {
        Refusal {
            error,
            signature_valid: true,
        }
    }
}

/// An HTTP reply a receiver sends back to the provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

/// Parses a decimal major-unit string (`"0.10"`, `"88"`, `"1.5"`) into minor units with at
/// most `decimals` digits after the point. No floats anywhere.
pub fn parse_decimal_minor(s: &str, decimals: u32) -> Result<i64, ReceiveError> {
    let bad = || ReceiveError::BadAmount(s.to_string());
    let t = s.trim();
    let (neg, t) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t),
    };
    let (int, frac) = match t.split_once('.') {
        Some((i, f)) => (i, f),
        None => (t, ""),
    };
    if int.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || frac.len() > decimals as usize
        || (t.contains('.') && frac.is_empty())
    {
        return Err(bad());
    }
    let scale = 10i64.checked_pow(decimals).ok_or_else(bad)?;
    let int: i64 = int.parse().map_err(|_| bad())?;
    let mut frac_val: i64 = if frac.is_empty() {
        0
    } else {
        frac.parse().map_err(|_| bad())?
    };
    for _ in frac.len()..decimals as usize {
        frac_val *= 10;
    }
    let v = int
        .checked_mul(scale)
        .and_then(|v| v.checked_add(frac_val))
        .ok_or_else(bad)?;
    Ok(if neg { -v } else { v })
}

/// Formats minor units as a decimal major-unit string with `decimals` digits (`10` -> `"0.10"`).
pub fn format_minor(minor: i64, decimals: u32) -> String {
    let scale = 10i64.pow(decimals);
    let sign = if minor < 0 { "-" } else { "" };
    let a = minor.unsigned_abs();
    if decimals == 0 {
        return format!("{sign}{a}");
    }
    format!(
        "{sign}{}.{:0width$}",
        a / scale as u64,
        a % scale as u64,
        width = decimals as usize
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_amounts_parse_into_minor_units_without_floats() {
        assert_eq!(parse_decimal_minor("0.10", 2), Ok(10));
        assert_eq!(parse_decimal_minor("88", 2), Ok(8800));
        assert_eq!(parse_decimal_minor("1.5", 2), Ok(150));
        assert_eq!(parse_decimal_minor("0.01", 2), Ok(1));
        assert_eq!(parse_decimal_minor("-3.20", 2), Ok(-320));
        assert_eq!(parse_decimal_minor("92233720368547758.07", 2), Ok(i64::MAX));
        for bad in [
            "",
            "1.234",
            "1.",
            ".5",
            "1,00",
            "abc",
            "1e3",
            " 1 .0",
            "92233720368547758.08",
        ] {
            assert!(parse_decimal_minor(bad, 2).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn minor_units_format_back() {
        assert_eq!(format_minor(10, 2), "0.10");
        assert_eq!(format_minor(8800, 2), "88.00");
        assert_eq!(format_minor(-5, 2), "-0.05");
        assert_eq!(format_minor(7, 0), "7");
    }

    #[test]
    fn content_type_parts_are_read_case_insensitively() {
        let headers = vec![(
            "Content-Type".to_string(),
            "application/x-www-form-urlencoded; Charset=GBK".to_string(),
        )];
        let r = IncomingRequest {
            method: "POST",
            headers: &headers,
            query: "",
            body: b"",
            now: 0,
        };
        assert_eq!(
            r.media_type().as_deref(),
            Some("application/x-www-form-urlencoded")
        );
        assert_eq!(r.charset().as_deref(), Some("gbk"));
        assert_eq!(r.header("content-type").map(|_| ()), Some(()));
    }
}
