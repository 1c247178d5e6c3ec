//! The request an attempt sent, as the notification page shows it. The store keeps what
//! the producer sent (payload, event type, notify id, creation time) and each attempt's time,
//! not the signed bytes; the profiles' encoding is deterministic given those, so the request
//! is rebuilt by encoding again with the attempt's timestamp and the app's current
//! credentials. Signatures are masked before anything is shown, so what the credentials
//! produce never reaches the page. Two things can differ from the bytes on the wire, and the
//! page says so: random nonces (WeChat Pay v3's signature nonce and resource encryption), and
//! anything derived from credentials rotated since the attempt.
use herald_protocols::{Credentials, OutgoingNotification, Profile};
use herald_store::{Delivery, Notification, UnixMillis};

/// What replaces a masked value.
pub const MASK: &str = "•••• masked";

/// An attempt's request, rebuilt and masked.
pub struct SentRequest {
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// Rebuilds the request of the attempt made at `at`, or says why it cannot.
pub fn rebuild(
    profile: Profile,
    credentials: &Credentials,
    n: &Notification,
    d: &Delivery,
    at: UnixMillis,
) -> Result<SentRequest, String> {
    let encoded = profile
        .encode(
            credentials,
            &OutgoingNotification {
                notify_id: &d.notify_id,
                event_type: &n.event_type,
                payload: n.payload.as_bytes(),
                timestamp: at.to_seconds(),
                created_at: n.created_at.to_seconds(),
            },
        )
        .map_err(|e| format!("cannot rebuild the request: {e}"))?;
    let mut headers = vec![("Content-Type".to_string(), encoded.content_type.clone())];
    headers.extend(encoded.headers.into_iter().map(|(name, value)| {
        let value = if secret_name(&name) {
            MASK.to_string()
        } else {
            value
        };
        (name, value)
    }));
    let body = String::from_utf8_lossy(&encoded.body);
    Ok(SentRequest {
        url: d.url.clone(),
        headers,
        body: mask_body(&encoded.content_type, &body),
    })
}

/// Header or field names whose values are signatures or secrets.
fn secret_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.contains("signature")
        || n == "sign"
        || n.ends_with("-sign")
        || n.contains("authorization")
        || n.contains("secret")
        || n.contains("token")
}

/// Masks signature fields in a body: form fields, XML elements and JSON keys named like
/// [`secret_name`].
pub fn mask_body(content_type: &str, body: &str) -> String {
    let ct = content_type.to_ascii_lowercase();
    if ct.contains("x-www-form-urlencoded") {
        let pairs: Vec<(String, String)> = url::form_urlencoded::parse(body.as_bytes())
            .into_owned()
            .collect();
        return pairs
            .into_iter()
            .map(|(k, v)| {
                let v = if secret_name(&k) { MASK.to_string() } else { v };
                format!("{k}={v}")
            })
            .collect::<Vec<_>>()
            .join("&\n");
    }
    if ct.contains("xml") {
        return mask_xml(body);
    }
    if ct.contains("json") {
        if let Ok(mut v) = serde_json::from_str::<serde_json::Value>(body) {
            mask_json(&mut v);
            return serde_json::to_string_pretty(&v).unwrap_or_else(|_| body.to_string());
        }
    }
    body.to_string()
}

fn mask_json(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, val) in map.iter_mut() {
                if secret_name(k) {
                    *val = serde_json::Value::String(MASK.into());
                } else {
                    mask_json(val);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(mask_json),
        _ => {}
    }
}

/// Replaces the content of `<sign>`-like elements (flat XML, as WeChat Pay v2 sends).
fn mask_xml(body: &str) -> String {
    let mut out = String::with_capacity(body.len());
    let mut rest = body;
    while let Some(open) = rest.find('<') {
        let Some(close) = rest[open..].find('>') else {
            break;
        };
        let tag = &rest[open + 1..open + close];
        out.push_str(&rest[..open + close + 1]);
        rest = &rest[open + close + 1..];
        if !tag.starts_with('/') && !tag.ends_with('/') && secret_name(tag.trim()) {
            let end = format!("</{}>", tag.trim());
            if let Some(e) = rest.find(&end) {
                out.push_str(MASK);
                rest = &rest[e..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_masked_in_forms_xml_and_json() {
        let form = mask_body(
            "application/x-www-form-urlencoded;charset=utf-8",
            "notify_id=n1&sign=SECRETSIG&sign_type=RSA2",
        );
        assert!(form.contains("notify_id=n1") && form.contains("sign_type=RSA2"));
        assert!(!form.contains("SECRETSIG"), "{form}");
        let xml = mask_body(
            "text/xml",
            "<xml><return_code><![CDATA[SUCCESS]]></return_code><sign><![CDATA[ABC123]]></sign></xml>",
        );
        assert!(!xml.contains("ABC123") && xml.contains("SUCCESS"), "{xml}");
        let json = mask_body("application/json", r#"{"a":{"signature":"S"},"b":1}"#);
        assert!(
            !json.contains("\"S\"") && json.contains("\"b\": 1"),
            "{json}"
        );
    }

    #[test]
    fn a_standard_webhooks_request_is_rebuilt_with_its_signature_masked() {
        use herald_protocols::standard_webhooks::Keys;
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let creds = Credentials::StandardWebhooks(Keys::single(secret.into()));
        let n = Notification {
            id: "ntf_1".into(),
            app_id: "app_1".into(),
            event_type: "invoice.paid".parse().unwrap(),
            payload: r#"{"amount": 100}"#.into(),
            notify_url: None,
            idempotency_key: None,
            order_key: None,
            created_at: UnixMillis::new(1_700_000_000_000),
        };
        let d = Delivery {
            id: "dlv_1".into(),
            notification_id: "ntf_1".into(),
            app_id: "app_1".into(),
            endpoint_id: None,
            url: "http://127.0.0.1:9/hook".into(),
            notify_id: "msg_1".into(),
            status: herald_store::DeliveryStatus::Failed,
            attempts: 1,
            next_attempt_at: None,
            created_at: UnixMillis::new(1_700_000_000_000),
            updated_at: UnixMillis::new(1_700_000_000_000),
        };
        let sent = rebuild(
            Profile::StandardWebhooks,
            &creds,
            &n,
            &d,
            UnixMillis::new(1_700_000_005_000),
        )
        .unwrap();
        let get = |name: &str| {
            sent.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        assert_eq!(get("webhook-id").as_deref(), Some("msg_1"));
        assert_eq!(get("webhook-timestamp").as_deref(), Some("1700000005"));
        assert_eq!(get("webhook-signature").as_deref(), Some(MASK));
        assert!(sent.body.contains("\"amount\": 100"), "{}", sent.body);
        let all = format!("{:?}{}", sent.headers, sent.body);
        assert!(!all.contains("v1,") && !all.contains(secret));
    }
}
