//! The Stripe-style profile: round trips through `encode` and `verify`, tampering, the
//! timestamp window, rotation with several `v1` entries, the event body's stability and its
//! verbatim payload, decoding, and the replies.
use herald_protocols::ack::AckRule;
use herald_protocols::profile::{OutgoingNotification, ProfileError};
use herald_protocols::receive::{
    Amount, IncomingRequest, ReceiveError, Refusal, VerifiedNotification,
};
use herald_protocols::stripe::{
    self as st, ack_reply, create_credentials, encode, explain, failure_reply, public_view,
    receiver_keys, receiver_keys_from, rotate, signature, signature_header, verify, Credentials,
    ReceiverKeys, SecretEntry,
};
use herald_protocols::{EncodedRequest, RetryPolicy};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

const SECRET: &str = "whsec_test0123456789abcdefghijklmnopqrstu";
const T: i64 = 1_700_000_000;

const PAYLOAD: &[u8] = br#"{"id": "pi_3Mtw", "object": "payment_intent",
  "amount": 2000, "currency": "usd", "status": "succeeded",
  "metadata": {"out_trade_no": "order-42"}}"#;

fn notification(payload: &[u8], timestamp: i64) -> OutgoingNotification<'_> {
    OutgoingNotification {
        notify_id: "evt_01J00000000000000000000000",
        event_type: "payment_intent.succeeded",
        payload,
        timestamp: herald_protocols::UnixSeconds::new(timestamp),
        created_at: herald_protocols::UnixSeconds::new(T - 60),
    }
}

fn header(r: &EncodedRequest) -> &str {
    r.headers
        .iter()
        .find(|(k, _)| k == "Stripe-Signature")
        .map(|(_, v)| v.as_str())
        .unwrap()
}

fn keys(secrets: &[&str]) -> ReceiverKeys {
    receiver_keys(&secrets.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
}

fn check(
    keys: &ReceiverKeys,
    sig_header: &str,
    body: &[u8],
    now: i64,
) -> Result<VerifiedNotification, ReceiveError> {
    let headers = vec![
        (
            "Content-Type".to_string(),
            "application/json; charset=utf-8".to_string(),
        ),
        ("stripe-signature".to_string(), sig_header.to_string()),
    ];
    verify(
        keys,
        &IncomingRequest {
            method: "POST",
            headers: &headers,
            query: "",
            body,
            now,
        },
    )
}

#[test]
fn the_signature_is_hmac_sha256_keyed_with_the_whole_secret_string() {
    // As Stripe's SDKs do: hmac.new(secret.encode("utf-8"), f"{t}.{payload}", sha256).
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(b"1700000000.{}");
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(signature(SECRET, T, b"{}"), expected);
    assert_eq!(
        signature_header(T, b"{}", &[SECRET]),
        format!("t=1700000000,v1={expected}")
    );
}

#[test]
fn encode_then_verify_round_trips() {
    let c = Credentials::single(SECRET.into());
    let r = encode(&c, &notification(PAYLOAD, T)).unwrap();
    assert_eq!(r.content_type, "application/json; charset=utf-8");
    assert_eq!(r.headers.len(), 1);
    let h = header(&r);
    assert!(h.starts_with("t=1700000000,v1="), "{h}");
    assert_eq!(h.matches("v1=").count(), 1);

    let got = check(&receiver_keys_from(&c), h, &r.body, T + 5).unwrap();
    assert_eq!(got.profile, "stripe");
    assert_eq!(got.notify_id, "evt_01J00000000000000000000000");
    assert_eq!(got.event_type.as_deref(), Some("payment_intent.succeeded"));
    assert_eq!(got.status.as_deref(), Some("payment_intent.succeeded"));
    assert_eq!(
        got.amount,
        Some(Amount {
            minor: 2000,
            currency: "USD".into()
        })
    );
    assert_eq!(got.out_trade_no.as_deref(), Some("order-42"));
    assert_eq!(got.transaction_id.as_deref(), Some("pi_3Mtw"));
    assert_eq!(got.app_id, None);
    assert_eq!(got.merchant_id, None);
    assert_eq!(got.fields["object"], json!("event"));
    assert_eq!(got.fields["api_version"], json!("2026-01-28.clover"));
    assert_eq!(
        got.fields["request"],
        json!({"id": null, "idempotency_key": null})
    );
    assert_eq!(got.fields["created"], json!(T - 60));
    assert_eq!(got.fields["livemode"], json!(false));
    assert_eq!(got.fields["pending_webhooks"], json!(1));
    assert_eq!(got.fields["data"]["object"]["status"], json!("succeeded"));

    // The same secret given to the receiver as text works too.
    assert!(check(&keys(&[SECRET]), h, &r.body, T).is_ok());
}

#[test]
fn any_changed_byte_fails() {
    let c = Credentials::single(SECRET.into());
    let r = encode(&c, &notification(PAYLOAD, T)).unwrap();
    let k = keys(&[SECRET]);
    for i in 0..r.body.len() {
        let mut body = r.body.clone();
        body[i] ^= 0x01;
        let err = check(&k, header(&r), &body, T).unwrap_err();
        assert!(
            matches!(err, ReceiveError::BadSignature(_)),
            "byte {i}: {err}"
        );
    }
    // A changed signature or timestamp fails as well.
    let h = header(&r);
    let last = h.chars().last().unwrap();
    let flipped = format!(
        "{}{}",
        &h[..h.len() - 1],
        if last == '0' { '1' } else { '0' }
    );
    assert!(matches!(
        check(&k, &flipped, &r.body, T),
        Err(ReceiveError::BadSignature(_))
    ));
    let moved = h.replacen("t=1700000000", "t=1700000001", 1);
    assert!(matches!(
        check(&k, &moved, &r.body, T),
        Err(ReceiveError::BadSignature(_))
    ));
}

#[test]
fn a_wrong_secret_fails_without_quoting_either() {
    let r = encode(
        &Credentials::single(SECRET.into()),
        &notification(PAYLOAD, T),
    )
    .unwrap();
    let other = st::generate_secret();
    let err = check(&keys(&[&other]), header(&r), &r.body, T).unwrap_err();
    assert!(matches!(err, ReceiveError::BadSignature(_)));
    let msg = err.to_string();
    assert!(!msg.contains(SECRET) && !msg.contains(&other), "{msg}");
    // Stripping the prefix gives a different key: the prefix is part of it.
    let bare = SECRET.strip_prefix("whsec_").unwrap();
    let h = signature_header(T, &r.body, &[bare]);
    assert!(check(&keys(&[SECRET]), &h, &r.body, T).is_err());
}

/// The official libraries' rule: stripe-node `src/Webhooks.ts` refuses when
/// `timestampAge > tolerance` (age = now - t, DEFAULT_TOLERANCE 300) and stripe-python
/// `stripe/_webhook.py` when `timestamp < time.time() - tolerance`; both check only after
/// the signature matched, and neither refuses a `t` ahead of the receiver's clock.
#[test]
fn timestamps_more_than_300_seconds_old_fail_and_skewed_future_ones_verify_as_in_stripes_libraries()
{
    let r = encode(
        &Credentials::single(SECRET.into()),
        &notification(PAYLOAD, T),
    )
    .unwrap();
    let k = keys(&[SECRET]);
    assert!(check(&k, header(&r), &r.body, T + 300).is_ok());
    assert_eq!(
        check(&k, header(&r), &r.body, T + 301).unwrap_err(),
        ReceiveError::TimestampOutOfWindow {
            timestamp: T,
            now: T + 301
        }
    );
    // The receiver's clock behind Stripe's: accepted, however far.
    for now in [T - 1, T - 300, T - 301, T - 3_600] {
        assert!(
            check(&k, header(&r), &r.body, now).is_ok(),
            "now = t {}",
            now - T
        );
    }
    // The signature is checked first: an old request with a bad signature is a bad
    // signature.
    let other = keys(&[&st::generate_secret()]);
    assert!(matches!(
        check(&other, header(&r), &r.body, T + 10_000),
        Err(ReceiveError::BadSignature(_))
    ));
}

#[test]
fn during_rotation_both_secrets_sign_and_either_verifies() {
    let c = Credentials::single(SECRET.into());
    let (rotated, view) = rotate(&c, T + 1_000, T).unwrap();
    let new = view["secret"].as_str().unwrap();
    assert!(new.starts_with("whsec_") && new != SECRET);
    assert_eq!(rotated.secrets[0], SecretEntry::current(new.to_string()));
    assert_eq!(
        rotated.secrets[1],
        SecretEntry {
            secret: SECRET.into(),
            expires_at: Some(T + 1_000)
        }
    );

    let r = encode(&rotated, &notification(PAYLOAD, T + 10)).unwrap();
    assert_eq!(header(&r).matches("v1=").count(), 2);
    for secret in [SECRET, new] {
        assert!(
            check(&keys(&[secret]), header(&r), &r.body, T + 10).is_ok(),
            "{}",
            &secret[..6]
        );
    }

    // Once the grace period is over only the new secret signs.
    let r = encode(&rotated, &notification(PAYLOAD, T + 1_000)).unwrap();
    assert_eq!(header(&r).matches("v1=").count(), 1);
    assert!(check(&keys(&[SECRET]), header(&r), &r.body, T + 1_000).is_err());
    assert!(check(&keys(&[new]), header(&r), &r.body, T + 1_000).is_ok());

    // Receivers built from credentials honour the expiry of old secrets.
    let old_only = signature_header(T + 1_000, &r.body, &[SECRET]);
    assert!(check(&receiver_keys_from(&rotated), &old_only, &r.body, T + 1_000).is_err());
    let old_in_grace = signature_header(T + 999, &r.body, &[SECRET]);
    assert!(check(
        &receiver_keys_from(&rotated),
        &old_in_grace,
        &r.body,
        T + 999
    )
    .is_ok());
}

#[test]
fn rotation_drops_expired_secrets_and_refuses_empty_credentials() {
    let c = Credentials {
        secrets: vec![
            SecretEntry::current(SECRET.into()),
            SecretEntry {
                secret: st::generate_secret(),
                expires_at: Some(1_000),
            },
            SecretEntry {
                secret: st::generate_secret(),
                expires_at: Some(1_500),
            },
        ],
        api_version: None,
    };
    let (r, _) = rotate(&c, 3_000, 1_000).unwrap();
    let expiries: Vec<_> = r.secrets.iter().map(|s| s.expires_at).collect();
    assert_eq!(expiries, [None, Some(3_000), Some(1_500)]);
    let (r, _) = rotate(&c, 1_000, 1_000).unwrap();
    let expiries: Vec<_> = r.secrets.iter().map(|s| s.expires_at).collect();
    assert_eq!(expiries, [None, Some(1_500)]);
    assert!(matches!(
        rotate(
            &Credentials {
                secrets: vec![],
                api_version: None
            },
            10,
            0
        ),
        Err(ProfileError::BadCredentials(_))
    ));
}

#[test]
fn unknown_schemes_and_odd_items_in_the_header_are_ignored() {
    let r = encode(
        &Credentials::single(SECRET.into()),
        &notification(PAYLOAD, T),
    )
    .unwrap();
    let k = keys(&[SECRET]);
    let v1 = header(&r).split(",v1=").nth(1).unwrap().to_string();
    let h = format!("t={T},v0=6ffbb59b2300aae63f272406069a9788598b792a944a07aba816edb039989a39,v1=deadbeef,v1={v1},scheme=x,junk");
    assert!(check(&k, &h, &r.body, T).is_ok());
    let h = format!("v0=abc, t={T}, v1={}", v1.to_ascii_uppercase());
    assert!(check(&k, &h, &r.body, T).is_ok());
    // A v0 entry alone does not verify.
    let v0_only = format!("t={T},v0={v1}");
    assert!(matches!(
        check(&k, &v0_only, &r.body, T),
        Err(ReceiveError::BadSignature(_))
    ));
}

#[test]
fn malformed_signature_headers_are_refused() {
    let r = encode(
        &Credentials::single(SECRET.into()),
        &notification(PAYLOAD, T),
    )
    .unwrap();
    let k = keys(&[SECRET]);
    let v1 = header(&r).split(",v1=").nth(1).unwrap().to_string();
    assert!(matches!(
        check(&k, "", &r.body, T),
        Err(ReceiveError::Missing(_))
    ));
    assert!(matches!(
        check(&k, &format!("v1={v1}"), &r.body, T),
        Err(ReceiveError::Missing(_))
    ));
    for h in [
        format!("t={T},t={T},v1={v1}"),
        format!("t=abc,v1={v1}"),
        format!("t=-{T},v1={v1}"),
        format!("t={T}"),
    ] {
        assert!(
            matches!(
                check(&k, &h, &r.body, T),
                Err(ReceiveError::BadSignature(_))
            ),
            "{h}"
        );
    }
    let headers: Vec<(String, String)> = vec![];
    let err = verify(
        &k,
        &IncomingRequest {
            method: "POST",
            headers: &headers,
            query: "",
            body: &r.body,
            now: T,
        },
    )
    .unwrap_err();
    assert_eq!(err, ReceiveError::Missing("Stripe-Signature header".into()));
}

#[test]
fn the_body_is_stable_across_attempts_and_only_the_header_changes() {
    let c = Credentials::single(SECRET.into());
    let a = encode(&c, &notification(PAYLOAD, T)).unwrap();
    let b = encode(&c, &notification(PAYLOAD, T + 3_600)).unwrap();
    assert_eq!(a.body, b.body);
    assert_ne!(header(&a), header(&b));
    assert!(header(&b).starts_with("t=1700003600,"));
    let event: Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(event["created"], json!(T - 60));
}

#[test]
fn the_payload_is_embedded_byte_for_byte() {
    let c = Credentials::single(SECRET.into());
    // Odd spacing, key order and a big number that a re-serialisation would change.
    let payload = br#"{ "z":1,  "a" : [1 , 2],"big": 12345678901234567890123, "f": 1.50 }"#;
    let r = encode(&c, &notification(payload, T)).unwrap();
    let body = std::str::from_utf8(&r.body).unwrap();
    assert_eq!(
        body,
        format!(
            r#"{{"id":"evt_01J00000000000000000000000","object":"event","api_version":"2026-01-28.clover","created":{},"type":"payment_intent.succeeded","livemode":false,"pending_webhooks":1,"request":{{"id":null,"idempotency_key":null}},"data":{{"object":{}}}}}"#,
            T - 60,
            std::str::from_utf8(payload).unwrap()
        )
    );
    assert!(check(&keys(&[SECRET]), header(&r), &r.body, T).is_ok());

    // Whitespace around the payload is not part of the JSON value and is not kept.
    let r = encode(&c, &notification(b" \n{\"a\": 1} \n", T)).unwrap();
    assert!(r.body.ends_with(br#""data":{"object":{"a": 1}}}"#));
}

#[test]
fn encode_refuses_what_it_cannot_send() {
    let c = Credentials::single(SECRET.into());
    for payload in [&b"[1]"[..], b"\"text\"", b"not json", b"{", b"\xff"] {
        assert!(
            matches!(
                encode(&c, &notification(payload, T)),
                Err(ProfileError::Encode(_))
            ),
            "{}",
            String::from_utf8_lossy(payload)
        );
    }
    let mut n = notification(PAYLOAD, T);
    n.notify_id = "";
    assert!(matches!(encode(&c, &n), Err(ProfileError::Encode(_))));
    let expired = Credentials {
        secrets: vec![SecretEntry {
            secret: SECRET.into(),
            expires_at: Some(T),
        }],
        api_version: None,
    };
    let err = encode(&expired, &notification(PAYLOAD, T)).unwrap_err();
    assert!(err.to_string().contains("no secret is valid"), "{err}");
}

#[test]
fn amounts_and_references_are_decoded_from_data_object() {
    let k = keys(&[SECRET]);
    let event = |object: Value| {
        let body = json!({"id": "evt_1", "type": "charge.succeeded", "account": "acct_9",
            "data": {"object": object}})
        .to_string();
        let h = signature_header(T, body.as_bytes(), &[SECRET]);
        check(&k, &h, body.as_bytes(), T)
    };
    let got = event(json!({"id": "ch_1", "amount": 500, "currency": "jpy",
        "client_reference_id": "cart-7"}))
    .unwrap();
    assert_eq!(
        got.amount,
        Some(Amount {
            minor: 500,
            currency: "JPY".into()
        })
    );
    assert_eq!(got.out_trade_no.as_deref(), Some("cart-7"));
    assert_eq!(got.merchant_id.as_deref(), Some("acct_9"));

    let got = event(json!({"id": "cus_1", "email": "a@b.c"})).unwrap();
    assert_eq!(got.amount, None);
    assert_eq!(got.out_trade_no, None);

    for bad in [json!(10.5), json!("10"), json!(1e30)] {
        assert!(
            matches!(
                event(json!({"amount": bad, "currency": "usd"})),
                Err(ReceiveError::BadAmount(_))
            ),
            "{bad}"
        );
    }
    assert!(matches!(
        event(json!({"amount": 10})),
        Err(ReceiveError::Missing(_))
    ));
}

#[test]
fn verified_bodies_that_are_not_events_are_refused() {
    let k = keys(&[SECRET]);
    for body in [
        "[]",
        "not json",
        r#"{"type": "x", "data": {"object": {}}}"#,
        r#"{"id": "evt_1", "data": {"object": {}}}"#,
        r#"{"id": "evt_1", "type": "x"}"#,
        r#"{"id": "evt_1", "type": "x", "data": {"object": []}}"#,
    ] {
        let h = signature_header(T, body.as_bytes(), &[SECRET]);
        let err = check(&k, &h, body.as_bytes(), T).unwrap_err();
        assert!(
            matches!(
                err,
                ReceiveError::MalformedBody(_) | ReceiveError::Missing(_)
            ),
            "{body}: {err}"
        );
    }
}

#[test]
fn non_json_content_types_are_refused() {
    let k = keys(&[SECRET]);
    let body = br#"{"id": "evt_1", "type": "x", "data": {"object": {}}}"#;
    let h = signature_header(T, body, &[SECRET]);
    let headers = vec![
        ("content-type".to_string(), "text/xml".to_string()),
        ("Stripe-Signature".to_string(), h),
    ];
    let err = verify(
        &k,
        &IncomingRequest {
            method: "POST",
            headers: &headers,
            query: "",
            body,
            now: T,
        },
    )
    .unwrap_err();
    assert_eq!(err, ReceiveError::UnsupportedContentType("text/xml".into()));
}

#[test]
fn explain_shows_the_signed_string() {
    let body = br#"{"id":"evt_1"}"#;
    let headers = vec![(
        "Stripe-Signature".to_string(),
        signature_header(T, body, &[SECRET]),
    )];
    let s = explain(
        &keys(&[SECRET]),
        &IncomingRequest {
            method: "POST",
            headers: &headers,
            query: "",
            body,
            now: T,
        },
    )
    .unwrap();
    assert_eq!(s, r#"1700000000.{"id":"evt_1"}"#);
}

#[test]
fn replies_are_json_and_the_ack_is_any_2xx() {
    let ack = ack_reply();
    assert_eq!(
        (ack.status, ack.content_type, ack.body.as_slice()),
        (200, "application/json", &br#"{"received": true}"#[..])
    );
    assert!(st::default_ack().is_ack(ack.status, &ack.body));
    assert_eq!(st::default_ack(), AckRule::Http2xx);
    let fail = failure_reply("amount \"mismatch\"");
    assert_eq!(fail.status, 400);
    assert_eq!(
        serde_json::from_slice::<Value>(&fail.body).unwrap(),
        json!({"error": "amount \"mismatch\""})
    );
    assert!(!st::default_ack().is_ack(fail.status, &fail.body));
}

#[test]
fn credentials_are_generated_or_validated_and_never_echoed() {
    for options in [json!(null), json!({})] {
        let (c, view) = create_credentials(&options).unwrap();
        let secret = &c.secrets[0].secret;
        assert_eq!(secret.len(), 6 + 32);
        assert!(secret[6..].bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_eq!(
            view,
            json!({"secret": secret, "api_version": "2026-01-28.clover"})
        );
        assert_eq!(c.secrets[0].expires_at, None);
    }
    let (c, view) = create_credentials(&json!({"secret": SECRET})).unwrap();
    assert_eq!(c, Credentials::single(SECRET.into()));
    assert_eq!(
        view,
        json!({"secret": SECRET, "api_version": "2026-01-28.clover"})
    );

    for options in [
        json!("whsec_x"),
        json!({"secret": "sk_live_mysecretvalue0123456789"}),
        json!({"secret": "whsec_mysecret"}),
        json!({"secret": "whsec_mysecretvalue0123456789 !"}),
        json!({"secret": 7}),
        json!({"secrett": "whsec_mysecretvalue0123456789"}),
        json!({"secret": "whsec_mysecretvalue0123456789", "api_version": "clover"}),
        json!({"secret": "whsec_mysecretvalue0123456789", "api_version": "2026-1-28"}),
        json!({"secret": "whsec_mysecretvalue0123456789", "api_version": 2026}),
    ] {
        let err = create_credentials(&options).unwrap_err();
        assert!(matches!(err, ProfileError::BadCredentials(_)), "{options}");
        assert!(!err.to_string().contains("mysecret"), "{err}");
    }
}

#[test]
fn events_carry_the_apps_api_version_and_a_request() {
    let (c, view) =
        create_credentials(&json!({"secret": SECRET, "api_version": "2024-06-20"})).unwrap();
    assert_eq!(view["api_version"], "2024-06-20");
    let r = encode(&c, &notification(PAYLOAD, T)).unwrap();
    let event: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(event["api_version"], "2024-06-20");
    assert_eq!(
        event["request"],
        json!({"id": null, "idempotency_key": null})
    );
    // Rotation keeps the version; old stored credentials (no field) read as the default.
    let (rotated, _) = rotate(&c, T, T).unwrap();
    assert_eq!(rotated.api_version(), "2024-06-20");
    let old: Credentials =
        serde_json::from_value(json!({"secrets": [{"secret": SECRET}]})).unwrap();
    assert_eq!(old.api_version(), "2026-01-28.clover");
}

#[test]
fn public_view_debug_and_serde_keep_secrets_where_they_belong() {
    let (c, _) = rotate(&Credentials::single(SECRET.into()), T + 10, T).unwrap();
    let view = public_view(&c);
    assert_eq!(
        view,
        json!({"secrets": [{"expires_at": null}, {"expires_at": T + 10}], "api_version": "2026-01-28.clover"})
    );
    for out in [
        view.to_string(),
        format!("{c:?}"),
        format!("{c:#?}"),
        format!("{:?}", receiver_keys_from(&c)),
    ] {
        assert!(!out.contains(&SECRET[6..]), "{out}");
        assert!(!out.contains(&c.secrets[0].secret[6..]), "{out}");
    }
    let v = serde_json::to_value(&c).unwrap();
    assert_eq!(
        v["secrets"][1],
        json!({"secret": SECRET, "expires_at": T + 10})
    );
    assert_eq!(serde_json::from_value::<Credentials>(v).unwrap(), c);
}

#[test]
fn receiver_keys_must_be_whsec_secrets() {
    assert!(matches!(
        receiver_keys(&[]),
        Err(ReceiveError::UnknownKey(_))
    ));
    for bad in ["sk_live_mysecret", "whsec_", "whsec_my secret"] {
        let err = receiver_keys(&[bad.to_string()]).unwrap_err();
        assert!(matches!(err, ReceiveError::UnknownKey(_)), "{bad}");
        assert!(!err.to_string().contains("mysecret"), "{err}");
    }
    assert_eq!(keys(&[&format!(" {SECRET}\n")]).len(), 1);
}

#[test]
fn defaults_are_the_stripe_schedule_and_evt_ids() {
    assert_eq!(st::default_retry(), RetryPolicy::named("stripe").unwrap());
    let a = st::new_notify_id();
    assert_ne!(a, st::new_notify_id());
    let ulid = a.strip_prefix("evt_").unwrap();
    assert_eq!(ulid.len(), 26, "{a}");
}

#[test]
fn verify_detailed_says_a_signed_event_without_type_had_a_valid_signature() {
    // Stripe's event shape without `type`: signed correctly, so the signature question is
    // answered yes; a receiver still refuses it (missing type).
    let body = br#"{"id":"evt_1NG8Du2eZvKYlo2CUI79vXWy","object":"event","api_version":"2024-06-20","created":1686089970,"data":{"object":{"id":"pi_1","object":"payment_intent","amount":100,"currency":"cny"}}}"#;
    let header = herald_protocols::stripe::signature_header(T, body, &[SECRET]);
    let headers = vec![
        ("Content-Type".to_string(), "application/json".to_string()),
        ("Stripe-Signature".to_string(), header),
    ];
    let req = |body: &'static [u8]| IncomingRequest {
        method: "POST",
        headers: &headers,
        query: "",
        body,
        now: T,
    };
    let k = keys(&[SECRET]);
    assert_eq!(
        herald_protocols::stripe::verify_detailed(&k, &req(body)),
        Err(Refusal::signed(ReceiveError::Missing("type".into())))
    );
    assert_eq!(
        verify(&k, &req(body)),
        Err(ReceiveError::Missing("type".into()))
    );
    let other = keys(&[&st::generate_secret()]);
    assert!(matches!(
        herald_protocols::stripe::verify_detailed(&other, &req(body)),
        Err(Refusal {
            signature_valid: false,
            error: ReceiveError::BadSignature(_)
        })
    ));
}
