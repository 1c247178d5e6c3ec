//! Entry points for fuzzing every decoder: each takes arbitrary bytes and must never panic,
//! whatever they are. The cargo-fuzz targets in `fuzz/` call these, and so does the test
//! suite's smoke run (`tests/fuzz_smoke.rs`) over random and mutated inputs.
#![doc(hidden)]

use std::sync::OnceLock;

use crate::receive::IncomingRequest;
use crate::{Profile, ReceiverKeys};

/// A sender's credentials and the matching receiver keys, per profile, made once.
fn fixtures() -> &'static Vec<(Profile, crate::Credentials, ReceiverKeys)> {
    static F: OnceLock<Vec<(Profile, crate::Credentials, ReceiverKeys)>> = OnceLock::new();
    F.get_or_init(|| {
        Profile::ALL
            .iter()
            .filter_map(|&p| {
                let (c, _) = p.create_credentials(&serde_json::Value::Null).ok()?;
                let k = p.receiver_keys_from(&c, 0).ok()?;
                Some((p, c, k))
            })
            .collect()
    })
}

/// Splits fuzz input into header lines and a body at the first blank line, so the fuzzer can
/// reach both the header checks and the body parsers.
fn split(data: &[u8]) -> (Vec<(String, String)>, &[u8], &str) {
    let cut = data.windows(2).position(|w| w == b"\n\n");
    let (head, body) = match cut {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (&[][..], data),
    };
    let head = String::from_utf8_lossy(head);
    let mut query = "";
    let headers = head
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    if let Ok(text) = std::str::from_utf8(body) {
        if text.len() < 512 {
            query = text;
        }
    }
    (headers, body, query)
}

/// Feeds `data` to one profile's verifier (profile chosen by the first byte), as a POST and
/// as a GET.
pub fn verify_any(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let f = fixtures();
    if f.is_empty() {
        return;
    }
    let (profile, _, keys) = &f[selector as usize % f.len()];
    let (headers, body, query) = split(rest);
    for method in ["POST", "GET"] {
        let req = IncomingRequest {
            method,
            headers: &headers,
            query,
            body,
            now: 1_763_900_000,
        };
        let _ = profile.verify(keys, &req);
        let _ = profile.explain(keys, &req);
    }
}

/// Parses `data` as every configuration-ish input: retry policies, ack rules, Retry-After,
/// credentials options, and the response classification.
pub fn parse_any(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = crate::RetryPolicy::from_json(&v);
        for p in Profile::ALL {
            if !matches!(p, Profile::Alipay | Profile::WechatPayV3) {
                // RSA profiles generate a key for missing fields: too slow per input.
                let _ = p.create_credentials(&v);
            }
        }
    }
    let _ = text.parse::<crate::AckRule>();
    let _ = crate::ack::parse_retry_after(&text, std::time::SystemTime::UNIX_EPOCH);
    for rule in [
        crate::AckRule::Http2xx,
        crate::AckRule::Body("success".into()),
        crate::AckRule::WechatXml,
    ] {
        let _ = crate::classify(
            &rule,
            200,
            data,
            Some(&text),
            std::time::SystemTime::UNIX_EPOCH,
        );
    }
    let _ = crate::receive::parse_decimal_minor(&text, 2);
}

/// A valid signed request of each profile, for mutation-based fuzzing: (profile index,
/// header lines + blank line + body), in the layout [`verify_any`] reads.
pub fn seeds() -> Vec<Vec<u8>> {
    let now = 1_763_900_000;
    let payloads = [
        r#"{"out_trade_no":"A1","amount":100,"currency":"cny"}"#,
        r#"{"out_trade_no":"A1","trade_no":"T1","total_amount":"1.00","trade_status":"TRADE_SUCCESS","subject":"测试"}"#,
        r#"{"out_trade_no":"A1","transaction_id":"T1","total_fee":100}"#,
        r#"{"out_trade_no":"A1","transaction_id":"T1","trade_state":"SUCCESS","amount":{"total":100,"currency":"CNY"}}"#,
        r#"{"id":"pi_1","amount":100,"currency":"cny"}"#,
        r#"{"out_trade_no":"A1","total_fee":100}"#,
        r#"{"out_trade_no":"A1","trade_no":"T1","money":"1.00","trade_status":"TRADE_SUCCESS"}"#,
    ];
    fixtures()
        .iter()
        .enumerate()
        .filter_map(|(i, (p, c, _))| {
            let payload = payloads.get(Profile::ALL.iter().position(|x| x == p)?)?;
            let id = p.new_notify_id();
            let n = crate::OutgoingNotification {
                notify_id: &id,
                event_type: "TRANSACTION.SUCCESS",
                payload: payload.as_bytes(),
                timestamp: crate::UnixSeconds::new(now),
                created_at: crate::UnixSeconds::new(now),
            };
            let req = p.encode(c, &n).ok()?;
            let mut out = vec![i as u8];
            out.extend_from_slice(format!("Content-Type: {}\n", req.content_type).as_bytes());
            for (k, v) in &req.headers {
                out.extend_from_slice(format!("{k}: {v}\n").as_bytes());
            }
            out.extend_from_slice(b"\n");
            out.extend_from_slice(&req.body);
            Some(out)
        })
        .collect()
}
