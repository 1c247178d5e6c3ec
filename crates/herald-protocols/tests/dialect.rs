//! The configurable `dialect` profile: the EPay (易支付) preset against an EPay notification
//! signed independently, and every configurable axis by round trip.
//!
//! The EPay sample has the fields and values of the EPay notify documentation as quoted in
//! public merchant code (`pid` 1001, `trade_no` 20160806151343349021, `out_trade_no`
//! 20160806151343349, `type` alipay, `name` VIP会员, `money` 1.00, `trade_status`
//! TRADE_SUCCESS, `sign_type` MD5, an empty `param`), sent as a GET the way EPay's
//! `notify_url.php` reads it (`$_GET`). Its sign was computed with Python, independently of
//! Herald, as the EPay SDKs (`getSignVeryfy` / `md5Verify`) do:
//! `hashlib.md5("money=1.00&name=VIP会员&out_trade_no=...&type=alipay" + KEY).hexdigest()`.
use herald_protocols::dialect::{self, Dialect};
use herald_protocols::receive::{IncomingRequest, ReceiveError};
use herald_protocols::{AckRule, Credentials, OutgoingNotification, Profile, ProfileError};
use serde_json::json;

const KEY: &str = "89unJUB8HZ54Hj7x4nUj56HN4nUzUJ8i";
const EPAY_QUERY: &str = "pid=1001&trade_no=20160806151343349021&out_trade_no=20160806151343349&type=alipay&name=VIP%E4%BC%9A%E5%91%98&money=1.00&trade_status=TRADE_SUCCESS&sign_type=MD5&param=&sign=3ec3bda0f65fd24c5320e7ab770b2547";

fn get(query: &str) -> IncomingRequest<'_> {
    IncomingRequest {
        method: "GET",
        headers: &[],
        query,
        body: b"",
        now: 0,
    }
}

fn epay_keys() -> herald_protocols::ReceiverKeys {
    Profile::Dialect.receiver_keys(&[KEY.into()], None).unwrap()
}

#[test]
fn an_epay_notification_signed_independently_verifies_and_decodes_a_paid_order() {
    let n = Profile::Dialect
        .verify(&epay_keys(), &get(EPAY_QUERY))
        .unwrap();
    assert_eq!(n.profile.name(), "dialect");
    assert_eq!(n.notify_id, "20160806151343349021");
    assert_eq!(n.out_trade_no.as_deref(), Some("20160806151343349"));
    assert_eq!(n.transaction_id.as_deref(), Some("20160806151343349021"));
    assert_eq!(n.merchant_id.as_deref(), Some("1001"));
    assert_eq!(
        n.amount.as_ref().map(|a| (a.minor, a.currency.as_str())),
        Some((100, "CNY"))
    );
    assert_eq!(n.status.as_deref(), Some("TRADE_SUCCESS"));
    assert_eq!(n.event_type.as_deref(), Some(dialect::PAID_EVENT));
    assert_eq!(n.fields["name"], "VIP会员");
}

#[test]
fn the_same_epay_fields_posted_as_a_form_verify_too() {
    let headers = vec![(
        "Content-Type".to_string(),
        "application/x-www-form-urlencoded".to_string(),
    )];
    let req = IncomingRequest {
        method: "POST",
        headers: &headers,
        query: "",
        body: EPAY_QUERY.as_bytes(),
        now: 0,
    };
    assert!(Profile::Dialect.verify(&epay_keys(), &req).is_ok());
}

#[test]
fn explain_shows_the_epay_string_to_sign_with_the_key_masked() {
    let s = Profile::Dialect
        .explain(&epay_keys(), &get(EPAY_QUERY))
        .unwrap();
    assert_eq!(
        s,
        "(dialect epay, MD5)\nmoney=1.00&name=VIP会员&out_trade_no=20160806151343349&pid=1001&trade_no=20160806151343349021&trade_status=TRADE_SUCCESS&type=alipay<key>"
    );
}

#[test]
fn a_changed_amount_status_or_key_is_refused() {
    for q in [
        EPAY_QUERY.replace("money=1.00", "money=100.00"),
        EPAY_QUERY.replace("TRADE_SUCCESS", "TRADE_CLOSED"),
        EPAY_QUERY.replace("&sign=3ec3", "&sign=4ec3"),
        EPAY_QUERY.replace("&sign=3ec3bda0f65fd24c5320e7ab770b2547", ""),
    ] {
        let err = Profile::Dialect.verify(&epay_keys(), &get(&q)).unwrap_err();
        assert!(
            matches!(
                err,
                ReceiveError::BadSignature(_) | ReceiveError::Missing(_)
            ),
            "{q}: {err}"
        );
    }
    let other = Profile::Dialect
        .receiver_keys(&["x".repeat(32)], None)
        .unwrap();
    assert!(matches!(
        Profile::Dialect.verify(&other, &get(EPAY_QUERY)),
        Err(ReceiveError::BadSignature(_))
    ));
    // sign_type is excluded from the string, so changing it alone does not break the sign
    // (as in EPay's own SDK); an upper-case sign is accepted too.
    let upper = EPAY_QUERY.replace(
        "3ec3bda0f65fd24c5320e7ab770b2547",
        "3EC3BDA0F65FD24C5320E7AB770B2547",
    );
    assert!(Profile::Dialect.verify(&epay_keys(), &get(&upper)).is_ok());
}

#[test]
fn a_status_other_than_the_paid_value_is_decoded_without_the_paid_event() {
    let (creds, _) = Profile::Dialect
        .create_credentials(&json!({"key": KEY}))
        .unwrap();
    let req = encode(&creds, r#"{"out_trade_no":"A1","money":"2.50","trade_status":"WAIT_BUYER_PAY","type":"wxpay","name":"x"}"#).unwrap();
    let keys = Profile::Dialect.receiver_keys_from(&creds, 0).unwrap();
    let n = Profile::Dialect.verify(&keys, &get(&req.query)).unwrap();
    assert_eq!(n.status.as_deref(), Some("WAIT_BUYER_PAY"));
    assert_eq!(n.event_type, None);
    assert_eq!(n.amount.map(|a| a.minor), Some(250));
}

fn encode(
    creds: &Credentials,
    payload: &str,
) -> Result<herald_protocols::EncodedRequest, ProfileError> {
    Profile::Dialect.encode(
        creds,
        &OutgoingNotification {
            notify_id: "20261127000000123456",
            event_type: "trade.success",
            payload: payload.as_bytes(),
            timestamp: herald_protocols::UnixSeconds::new(1_764_000_000),
            created_at: herald_protocols::UnixSeconds::new(1_764_000_000),
        },
    )
}

#[test]
fn herald_sends_the_epay_preset_as_a_get_with_pid_sign_type_and_a_lower_case_md5() {
    let (creds, view) = Profile::Dialect
        .create_credentials(&json!({"dialect": "epay", "key": KEY, "fields": {"pid": "1001"}}))
        .unwrap();
    assert_eq!(view["key"], KEY);
    assert_eq!(view["dialect"]["name"], "epay");
    assert!(Profile::Dialect.public_view(&creds).get("key").is_none());
    let req = encode(&creds, r#"{"trade_no":"20160806151343349021","out_trade_no":"20160806151343349","type":"alipay","name":"VIP会员","money":"1.00","trade_status":"TRADE_SUCCESS"}"#).unwrap();
    assert_eq!(req.method, "GET");
    assert!(req.body.is_empty());
    // The same fields and key as the independently signed sample: the same sign.
    assert!(
        req.query.contains("sign=3ec3bda0f65fd24c5320e7ab770b2547"),
        "{}",
        req.query
    );
    assert!(
        req.query.contains("pid=1001") && req.query.contains("sign_type=MD5"),
        "{}",
        req.query
    );
    assert_eq!(
        Profile::Dialect.default_ack_for(&creds),
        AckRule::Body("success".into())
    );
}

#[test]
fn every_configurable_axis_round_trips_and_a_changed_byte_fails() {
    let base = json!({
        "name": "test", "key_placement": "append-param", "algorithm": "md5", "hex_case": "upper",
        "signature": {"field": "sign"}, "method": "POST", "ack": "OK",
        "fields": {"out_trade_no": "order_id", "amount": "amount", "amount_decimals": 0,
                   "status": "state", "paid_value": "1", "notify_id": "notify_id"}
    });
    let variants = [
        json!({}),
        json!({"canonical": "json"}),
        json!({"canonical": "json", "key_placement": "hmac", "algorithm": "hmac-sha256", "signature": {"header": "X-Sign"}, "exclude": []}),
        json!({"canonical": "raw", "key_placement": "append", "algorithm": "sha256", "signature": {"header": "X-Signature"}}),
        json!({"canonical": "form", "key_placement": "none", "algorithm": "rsa-sha256", "drop_empty": false}),
        json!({"method": "GET", "hex_case": "lower"}),
    ];
    for v in variants {
        let mut d = base.clone();
        for (k, val) in v.as_object().unwrap() {
            d[k] = val.clone();
        }
        let (creds, _) = Profile::Dialect
            .create_credentials(&json!({"dialect": d}))
            .unwrap_or_else(|e| panic!("{v}: {e}"));
        assert_eq!(
            Profile::Dialect.default_ack_for(&creds),
            AckRule::Body("OK".into())
        );
        let req = encode(
            &creds,
            r#"{"order_id":"A1","amount":100,"state":"1","memo":"","notify_id":"N1"}"#,
        )
        .unwrap();
        let mut headers = req.headers.clone();
        headers.push(("Content-Type".into(), req.content_type.clone()));
        let incoming = IncomingRequest {
            method: req.method,
            headers: &headers,
            query: &req.query,
            body: &req.body,
            now: 0,
        };
        let keys = Profile::Dialect.receiver_keys_from(&creds, 0).unwrap();
        let n = Profile::Dialect
            .verify(&keys, &incoming)
            .unwrap_or_else(|e| panic!("{v}: {e}"));
        assert_eq!(n.out_trade_no.as_deref(), Some("A1"), "{v}");
        assert_eq!(n.amount.as_ref().map(|a| a.minor), Some(100), "{v}");
        assert_eq!(n.event_type.as_deref(), Some("paid"), "{v}");
        assert_eq!(n.notify_id, "N1", "{v}");
        assert_eq!(Profile::Dialect.ack_reply_for(&keys).body, b"OK");
        assert_ne!(Profile::Dialect.failure_reply_for(&keys, "x").body, b"OK");
        // One changed digit in what travels fails.
        let (query, body) = if req.body.is_empty() {
            (req.query.replacen("100", "900", 1), req.body.clone())
        } else {
            (
                req.query.clone(),
                String::from_utf8(req.body.clone())
                    .unwrap()
                    .replacen("100", "900", 1)
                    .into_bytes(),
            )
        };
        let tampered = IncomingRequest {
            query: &query,
            body: &body,
            ..incoming
        };
        assert!(
            Profile::Dialect.verify(&keys, &tampered).is_err(),
            "{v} accepted a change"
        );
        let (other, _) = Profile::Dialect
            .create_credentials(&json!({"dialect": d}))
            .unwrap();
        let other_keys = Profile::Dialect.receiver_keys_from(&other, 0).unwrap();
        assert!(
            Profile::Dialect.verify(&other_keys, &incoming).is_err(),
            "{v} accepted another key"
        );
    }
}

#[test]
fn inconsistent_dialects_are_refused_with_the_reason() {
    let epay = serde_json::to_value(Dialect::epay()).unwrap();
    let with = |k: &str, v: serde_json::Value| {
        let mut d = epay.clone();
        d[k] = v;
        d
    };
    for (d, why) in [
        (with("algorithm", json!("hmac-sha256")), "hmac"),
        (with("key_placement", json!("none")), "rsa-sha256"),
        (with("canonical", json!("raw")), "header"),
        (with("exclude", json!([])), "exclude"),
        (with("canonical", json!("json")), "GET"),
        (with("ack", json!("")), "ack"),
        (with("algorithm", json!("sha512")), "invalid dialect"),
        (with("surprise", json!(1)), "invalid dialect"),
        (json!("paypal"), "unknown dialect preset"),
    ] {
        let err = Profile::Dialect
            .create_credentials(&json!({"dialect": d}))
            .unwrap_err();
        assert!(matches!(err, ProfileError::BadCredentials(_)), "{err}");
        assert!(err.to_string().contains(why), "{why}: {err}");
    }
}

#[test]
fn encode_refuses_a_payload_with_the_signature_or_without_order_and_amount() {
    let (creds, _) = Profile::Dialect.create_credentials(&json!(null)).unwrap();
    for payload in [
        r#"{"out_trade_no":"A1","money":"1.00","sign":"x"}"#,
        r#"{"money":"1.00"}"#,
        r#"{"out_trade_no":"A1"}"#,
        "[]",
    ] {
        assert!(
            matches!(encode(&creds, payload), Err(ProfileError::Encode(_))),
            "{payload}"
        );
    }
}

#[test]
fn keys_never_reach_debug_views_or_errors() {
    let (creds, _) = Profile::Dialect
        .create_credentials(&json!({"key": KEY}))
        .unwrap();
    assert!(!format!("{creds:?}").contains(KEY));
    assert!(!Profile::Dialect
        .public_view(&creds)
        .to_string()
        .contains(KEY));
    assert!(!format!("{:?}", epay_keys()).contains(KEY));
    let err = Profile::Dialect
        .create_credentials(&json!({"key": "with space secretvalue"}))
        .unwrap_err();
    assert!(!err.to_string().contains("secretvalue"), "{err}");
}
