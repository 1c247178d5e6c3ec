//! The wechatpay-v3 profile: the published AES-GCM vector C-3, round trips through encode and
//! verify, the receiver's checks in order (probe, headers, window, serial, signature,
//! decryption), and credentials.
use std::sync::OnceLock;

use herald_protocols::keys;
use herald_protocols::receive::{Amount, IncomingRequest, ReceiveError, Refusal};
use herald_protocols::wechatpay_v3::{self as v3, Credentials};
use herald_protocols::{AckRule, EncodedRequest, OutgoingNotification, ProfileError, RetryPolicy};
use serde_json::{json, Value};

/// The published vectors, kept in the repository as test data (a copy of the project's
/// `vectors/given.json`). A missing file fails the tests that read it.
const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/given.json");

/// Somebody else's RSA public key (Alipay vector A-1's).
const OTHER_PUBLIC_KEY: &str = "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAqObrdC7hrgAVM98tK0nv3hSQRGGKT4lBsQjHiGjeYZjOPIPHR5knm2jnnz/YGIXIofVHkA/tAlBAd5DrY7YpvI4tP5EONLtZKC2ghBMx7McI2wRD0xiqzxOQr1FuhZGJ8/AUokBzJrzY+aGX2xcOrxFYRlFilvVLTXg4LWjR1tdPkO6+i7wQZAIVMClPkwVRZEbaERRHlKqTzv2gGv5rDU8gRoe1LeaN+6BlbTqHWkQcNCUNrA8C6l17XAXGKDsm/9TFWwO8EPHHHCaQdjtV5/FdcWIt+L8SR1ss7EXTjYDFtxcKVv9rEoY1lX8T4mX+GbXfZHraG5NCF1+XioL5JwIDAQAB";

const MCHID: &str = "1900000109";
const APPID: &str = "wxd678efh567hg6787";
/// 2023-11-15 06:13:20 in China.
const TS: i64 = 1_700_000_000;

/// One generated platform key for the whole file (RSA generation is slow in debug builds).
fn creds() -> &'static Credentials {
    static CREDS: OnceLock<Credentials> = OnceLock::new();
    CREDS.get_or_init(|| {
        v3::create_credentials(&json!({ "mchid": MCHID, "appid": APPID }))
            .unwrap()
            .0
    })
}

fn own_keys() -> v3::ReceiverKeys {
    v3::receiver_keys_from(creds()).unwrap()
}

fn transaction() -> String {
    json!({
        "out_trade_no": "order-1",
        "transaction_id": "4200000001202611230000000001",
        "trade_type": "JSAPI",
        "trade_state": "SUCCESS",
        "trade_state_desc": "支付成功",
        "success_time": "2023-11-15T06:13:05+08:00",
        "payer": {"openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"},
        "amount": {"total": 100, "payer_total": 100, "currency": "CNY", "payer_currency": "CNY"}
    })
    .to_string()
}

fn encode(payload: &str, event_type: &str) -> EncodedRequest {
    v3::encode(
        creds(),
        &OutgoingNotification {
            notify_id: "EV-2018022511223320873",
            event_type,
            payload: payload.as_bytes(),
            timestamp: herald_protocols::UnixSeconds::new(TS),
            created_at: herald_protocols::UnixSeconds::new(TS - 10),
        },
    )
    .unwrap()
}

struct Req {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    now: i64,
}

impl Req {
    fn from(r: &EncodedRequest) -> Req {
        let mut headers = vec![("Content-Type".to_string(), r.content_type.clone())];
        headers.extend(r.headers.iter().cloned());
        Req {
            headers,
            body: r.body.clone(),
            now: TS,
        }
    }

    fn set(mut self, name: &str, value: &str) -> Req {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    fn without(mut self, name: &str) -> Req {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        self
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap()
    }

    fn incoming(&self) -> IncomingRequest<'_> {
        IncomingRequest {
            method: "POST",
            headers: &self.headers,
            query: "",
            body: &self.body,
            now: self.now,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Vector C-3

#[test]
fn c3_decrypts_to_message_and_encrypting_message_gives_the_ciphertext() {
    let text = std::fs::read_to_string(VECTORS)
        .unwrap_or_else(|e| panic!("cannot read the published vectors at {VECTORS}: {e}"));
    let all: Value = serde_json::from_str(&text).unwrap();
    let v = all["wechatpay-v3"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"].as_str().unwrap().starts_with("C-3"))
        .expect("vector C-3");
    let s = |k: &str| v[k].as_str().unwrap();
    let plain = v3::decrypt_resource(
        s("api_v3_key").as_bytes(),
        s("nonce"),
        s("associated_data"),
        s("ciphertext"),
    )
    .unwrap();
    assert_eq!(plain, s("plaintext").as_bytes());
    let sealed = v3::encrypt_resource(
        s("api_v3_key").as_bytes(),
        s("nonce"),
        s("associated_data"),
        s("plaintext").as_bytes(),
    )
    .unwrap();
    assert_eq!(sealed, s("ciphertext"));

    // Any change to the key, nonce, associated data or ciphertext fails to authenticate.
    let wrong_key = s("api_v3_key").replace('a', "b");
    let mut flipped = s("ciphertext").to_string();
    flipped.replace_range(0..1, "v");
    for (key, nonce, aad, ct) in [
        (
            wrong_key.as_str(),
            s("nonce"),
            s("associated_data"),
            s("ciphertext"),
        ),
        (
            s("api_v3_key"),
            "uluk4a9R25RX",
            s("associated_data"),
            s("ciphertext"),
        ),
        (s("api_v3_key"), s("nonce"), "transaction", s("ciphertext")),
        (
            s("api_v3_key"),
            s("nonce"),
            s("associated_data"),
            flipped.as_str(),
        ),
    ] {
        assert!(matches!(
            v3::decrypt_resource(key.as_bytes(), nonce, aad, ct),
            Err(ReceiveError::Decrypt(_))
        ));
    }
}

#[test]
fn resource_crypto_refuses_bad_lengths_and_input() {
    let key = [b'k'; 32];
    for (k, nonce, ct) in [
        (
            &key[..31],
            "uluk4a9R25RW",
            "ulwSiIajGClcvcOYvOQ7+l+0PAbzzwI=",
        ),
        (&key[..], "short", "ulwSiIajGClcvcOYvOQ7+l+0PAbzzwI="),
        (&key[..], "uluk4a9R25RW", "not base64!"),
        (&key[..], "uluk4a9R25RW", "AAAA"),
    ] {
        assert!(matches!(
            v3::decrypt_resource(k, nonce, "", ct),
            Err(ReceiveError::Decrypt(_))
        ));
    }
    assert!(v3::encrypt_resource(&key[..31], "uluk4a9R25RW", "", b"x").is_err());
    assert!(v3::encrypt_resource(&key, "short", "", b"x").is_err());
}

// ---------------------------------------------------------------------------------------
// Round trips

#[test]
fn encoded_transactions_have_wechats_shape_and_verify() {
    let r = encode(&transaction(), "payment.succeeded");
    assert_eq!(r.content_type, "application/json");
    let names: Vec<&str> = r.headers.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        [
            "Wechatpay-Timestamp",
            "Wechatpay-Nonce",
            "Wechatpay-Signature",
            "Wechatpay-Serial",
            "Wechatpay-Signature-Type"
        ]
    );
    let req = Req::from(&r);
    assert_eq!(req.header("Wechatpay-Timestamp"), "1700000000");
    assert_eq!(req.header("Wechatpay-Nonce").len(), 32);
    assert_eq!(req.header("Wechatpay-Serial"), creds().serial);
    assert_eq!(
        req.header("Wechatpay-Signature-Type"),
        "WECHATPAY2-SHA256-RSA2048"
    );

    let text = String::from_utf8(r.body.clone()).unwrap();
    assert!(
        text.starts_with(r#"{"id":"EV-2018022511223320873","create_time":"2023-11-15T06:13:10+08:00","resource_type":"encrypt-resource","event_type":"TRANSACTION.SUCCESS","summary":"支付成功","resource":{"original_type":"transaction","algorithm":"AEAD_AES_256_GCM","ciphertext":""#),
        "{text}"
    );
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["resource"]["associated_data"], "transaction");
    assert_eq!(body["resource"]["nonce"].as_str().unwrap().len(), 12);

    let n = v3::verify(&own_keys(), &req.incoming()).unwrap();
    assert_eq!(n.profile, "wechatpay-v3");
    assert_eq!(n.notify_id, "EV-2018022511223320873");
    assert_eq!(n.event_type.as_deref(), Some("TRANSACTION.SUCCESS"));
    assert_eq!(n.app_id.as_deref(), Some(APPID));
    assert_eq!(n.merchant_id.as_deref(), Some(MCHID));
    assert_eq!(n.out_trade_no.as_deref(), Some("order-1"));
    assert_eq!(
        n.transaction_id.as_deref(),
        Some("4200000001202611230000000001")
    );
    assert_eq!(n.status.as_deref(), Some("SUCCESS"));
    assert_eq!(
        n.amount,
        Some(Amount {
            minor: 100,
            currency: "CNY".into()
        })
    );
    assert_eq!(n.fields["id"], json!("EV-2018022511223320873"));
    assert_eq!(n.fields["summary"], json!("支付成功"));
    assert_eq!(
        n.fields["resource"]["payer"]["openid"],
        json!("oUpF8uMuAJO_M2pxb1Q9zNjWeS6o")
    );
    assert_eq!(n.fields["resource"]["appid"], json!(APPID));
    assert!(n.fields["resource"].get("ciphertext").is_none());

    // Each attempt uses fresh nonces.
    let again = encode(&transaction(), "payment.succeeded");
    assert_ne!(again.body, r.body);
    assert_ne!(again.headers[1], r.headers[1]);
}

#[test]
fn refund_summaries_match_their_event() {
    // WeChat Pay's summary per refund event: 退款成功 / 退款异常 / 退款关闭.
    for (event, status, summary) in [
        ("REFUND.SUCCESS", "SUCCESS", "退款成功"),
        ("REFUND.ABNORMAL", "ABNORMAL", "退款异常"),
        ("REFUND.CLOSED", "CLOSED", "退款关闭"),
    ] {
        let payload = json!({
            "mchid": "1900000999", "out_trade_no": "order-1", "out_refund_no": "refund-1",
            "transaction_id": "4200000001202611230000000001",
            "refund_id": "50000000382019052709732678859", "refund_status": status,
            "amount": {"total": 100, "refund": 40, "payer_total": 100, "payer_refund": 40}
        })
        .to_string();
        let body: Value = serde_json::from_slice(&encode(&payload, event).body).unwrap();
        assert_eq!(
            (body["event_type"].as_str(), body["summary"].as_str()),
            (Some(event), Some(summary))
        );
        assert_eq!(body["resource"]["original_type"], "refund");
    }
}

#[test]
fn refunds_use_the_refund_resource_and_amount() {
    let payload = json!({
        "mchid": "1900000999",
        "out_trade_no": "order-1",
        "transaction_id": "4200000001202611230000000001",
        "out_refund_no": "refund-1",
        "refund_id": "50000000382019052709732678859",
        "refund_status": "SUCCESS",
        "success_time": "2023-11-15T06:13:05+08:00",
        "amount": {"total": 100, "refund": 40, "payer_total": 100, "payer_refund": 40}
    })
    .to_string();
    let r = encode(&payload, "REFUND.SUCCESS");
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body["event_type"], "REFUND.SUCCESS");
    assert_eq!(body["summary"], "退款成功");
    assert_eq!(body["resource"]["original_type"], "refund");
    assert_eq!(body["resource"]["associated_data"], "refund");
    let n = v3::verify(&own_keys(), &Req::from(&r).incoming()).unwrap();
    assert_eq!(n.status.as_deref(), Some("SUCCESS"));
    assert_eq!(
        n.merchant_id.as_deref(),
        Some("1900000999"),
        "the payload's mchid wins"
    );
    assert_eq!(
        n.amount,
        Some(Amount {
            minor: 40,
            currency: "CNY".into()
        })
    );
}

#[test]
fn amounts_are_integer_fen_with_their_currency() {
    let keys = own_keys();
    let amount_of = |amount: Value| {
        let payload = json!({ "trade_state": "SUCCESS", "amount": amount }).to_string();
        v3::verify(
            &keys,
            &Req::from(&encode(&payload, "TRANSACTION.SUCCESS")).incoming(),
        )
    };
    assert_eq!(
        amount_of(json!({"total": 1})).unwrap().amount,
        Some(Amount {
            minor: 1,
            currency: "CNY".into()
        })
    );
    assert_eq!(
        amount_of(json!({"total": 12345, "currency": "USD"}))
            .unwrap()
            .amount,
        Some(Amount {
            minor: 12345,
            currency: "USD".into()
        })
    );
    assert_eq!(amount_of(json!({"payer_total": 5})).unwrap().amount, None);
    assert_eq!(
        amount_of(json!({"total": 1.5})).unwrap_err(),
        ReceiveError::BadAmount("1.5".into())
    );
    assert_eq!(
        amount_of(json!({"total": "100"})).unwrap_err(),
        ReceiveError::BadAmount("\"100\"".into())
    );
}

#[test]
fn event_types_that_are_not_wechat_style_become_transaction_success() {
    for (given, sent) in [
        ("payment.succeeded", "TRANSACTION.SUCCESS"),
        ("refund.succeeded", "TRANSACTION.SUCCESS"),
        ("TRANSACTION", "TRANSACTION.SUCCESS"),
        ("REFUND.ABNORMAL", "REFUND.ABNORMAL"),
        ("TRANSACTION.CLOSED", "TRANSACTION.CLOSED"),
    ] {
        let body: Value = serde_json::from_slice(&encode("{}", given).body).unwrap();
        assert_eq!(body["event_type"], sent, "{given}");
    }
}

#[test]
fn encode_refuses_payloads_that_are_not_objects() {
    for payload in ["[]", "1", "nope"] {
        let err = v3::encode(
            creds(),
            &OutgoingNotification {
                notify_id: "x",
                event_type: "TRANSACTION.SUCCESS",
                payload: payload.as_bytes(),
                timestamp: herald_protocols::UnixSeconds::new(TS),
                created_at: herald_protocols::UnixSeconds::new(TS),
            },
        )
        .unwrap_err();
        assert!(matches!(err, ProfileError::Encode(_)), "{payload}");
    }
}

// ---------------------------------------------------------------------------------------
// The receiver's checks

#[test]
fn a_changed_body_byte_or_header_fails() {
    let r = encode(&transaction(), "TRANSACTION.SUCCESS");
    let keys = own_keys();
    for i in 0..r.body.len() {
        let mut req = Req::from(&r);
        req.body[i] = if req.body[i] == b'X' { b'Y' } else { b'X' };
        assert!(v3::verify(&keys, &req.incoming()).is_err(), "byte {i}");
    }
    let nonce = Req::from(&r).header("Wechatpay-Nonce").to_string();
    let sig = Req::from(&r).header("Wechatpay-Signature").to_string();
    let flipped_sig = format!(
        "{}{}",
        if sig.starts_with('A') { "B" } else { "A" },
        &sig[1..]
    );
    for req in [
        Req::from(&r).set("Wechatpay-Timestamp", "1700000001"),
        Req::from(&r).set("Wechatpay-Nonce", &format!("{}x", &nonce[1..])),
        Req::from(&r).set("Wechatpay-Signature", &flipped_sig),
    ] {
        assert!(
            matches!(
                v3::verify(&keys, &req.incoming()),
                Err(ReceiveError::BadSignature(_))
            ),
            "{:?}",
            v3::verify(&keys, &req.incoming())
        );
    }
}

#[test]
fn a_wrong_platform_key_fails() {
    let req = Req::from(&encode(&transaction(), "TRANSACTION.SUCCESS"));
    let serial = creds().serial.clone();
    for key in [
        OTHER_PUBLIC_KEY.to_string(),
        format!("{serial}={OTHER_PUBLIC_KEY}"),
    ] {
        let keys = v3::receiver_keys(&[key], Some(&creds().api_v3_key)).unwrap();
        assert!(matches!(
            v3::verify(&keys, &req.incoming()),
            Err(ReceiveError::BadSignature(_))
        ));
    }
}

#[test]
fn timestamps_five_minutes_or_more_away_fail() {
    let r = encode(&transaction(), "TRANSACTION.SUCCESS");
    let keys = own_keys();
    for (now, ok) in [
        (TS + 299, true),
        (TS - 299, true),
        (TS + 300, false),
        (TS - 300, false),
        (TS + 301, false),
        (TS + 86_400, false),
    ] {
        let mut req = Req::from(&r);
        req.now = now;
        let got = v3::verify(&keys, &req.incoming());
        if ok {
            assert!(got.is_ok(), "{now}: {got:?}");
        } else {
            assert_eq!(
                got,
                Err(ReceiveError::TimestampOutOfWindow { timestamp: TS, now })
            );
        }
    }
}

#[test]
fn probe_requests_are_rejected_first_even_when_otherwise_valid() {
    let r = encode(&transaction(), "TRANSACTION.SUCCESS");
    let keys = own_keys();
    let sig = Req::from(&r).header("Wechatpay-Signature").to_string();
    let probes = [
        Req::from(&r).set("Wechatpay-Signature", &format!("WECHATPAY/SIGNTEST/{sig}")),
        Req::from(&r).set("wechatpay-signature", "WECHATPAY/SIGNTEST/abc"),
        Req::from(&r)
            .set("Wechatpay-Signature", "WECHATPAY/SIGNTEST/abc")
            .without("Wechatpay-Timestamp")
            .without("Content-Type"),
    ];
    for mut req in probes {
        assert_eq!(
            v3::verify(&keys, &req.incoming()),
            Err(ReceiveError::ProbeRequest)
        );
        req.now = TS + 10_000;
        assert_eq!(
            v3::verify(&keys, &req.incoming()),
            Err(ReceiveError::ProbeRequest)
        );
    }
}

#[test]
fn serials_select_the_platform_key() {
    let r = encode(&transaction(), "TRANSACTION.SUCCESS");
    let public = keys::public_base64(&keys::parse_public_key(&creds().private_key).unwrap());
    let api = Some(creds().api_v3_key.as_str());
    let serial = &creds().serial;
    let req = Req::from(&r);

    // Unknown serial.
    let ks = v3::receiver_keys(&[format!("OLDSERIAL={public}")], api).unwrap();
    assert_eq!(
        v3::verify(&ks, &req.incoming()),
        Err(ReceiveError::UnknownKey(format!(
            "Wechatpay-Serial {serial:?}"
        )))
    );
    // The header naming another serial than the one the key is filed under.
    let other = Req::from(&r).set(
        "Wechatpay-Serial",
        "PUB_KEY_ID_0114232134912410000000000000",
    );
    assert!(matches!(
        v3::verify(&own_keys(), &other.incoming()),
        Err(ReceiveError::UnknownKey(_))
    ));
    // Two keys, each under its serial (as during a rotation); lower-case serials match too.
    let ks = v3::receiver_keys(
        &[
            format!("OLDSERIAL={OTHER_PUBLIC_KEY}"),
            format!("{}={public}", serial.to_ascii_lowercase()),
        ],
        api,
    )
    .unwrap();
    assert!(v3::verify(&ks, &req.incoming()).is_ok());
    // A key without a serial matches any serial.
    let ks = v3::receiver_keys(std::slice::from_ref(&public), api).unwrap();
    assert!(v3::verify(&ks, &req.incoming()).is_ok());
    assert!(v3::verify(&ks, &other.incoming()).is_ok());
    // Key files, with or without a serial.
    let path = std::env::temp_dir().join(format!("herald-v3-{}.pem", std::process::id()));
    std::fs::write(
        &path,
        keys::public_pem(&keys::parse_public_key(&public).unwrap()),
    )
    .unwrap();
    let p = path.to_str().unwrap().to_string();
    for k in [p.clone(), format!("{serial}={p}")] {
        let ks = v3::receiver_keys(&[k], api).unwrap();
        assert!(v3::verify(&ks, &req.incoming()).is_ok());
    }
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn decryption_needs_the_right_api_v3_key() {
    let req = Req::from(&encode(&transaction(), "TRANSACTION.SUCCESS"));
    let public = keys::public_pem(&keys::parse_public_key(&creds().private_key).unwrap());
    let ks = v3::receiver_keys(std::slice::from_ref(&public), None).unwrap();
    assert_eq!(
        v3::verify(&ks, &req.incoming()),
        Err(ReceiveError::Decrypt("no APIv3 key".into()))
    );
    let ks = v3::receiver_keys(
        std::slice::from_ref(&public),
        Some("0123456789abcdef0123456789abcdef"),
    )
    .unwrap();
    assert!(matches!(
        v3::verify(&ks, &req.incoming()),
        Err(ReceiveError::Decrypt(m)) if m.contains("wrong APIv3 key")
    ));
    let err =
        v3::receiver_keys(std::slice::from_ref(&public), Some("tooshort-secretvalue")).unwrap_err();
    assert!(matches!(err, ReceiveError::Decrypt(_)));
    assert!(!err.to_string().contains("secretvalue"));
    // The receiver's Debug never shows the APIv3 key.
    let debug = format!("{:?}", own_keys());
    assert!(
        !debug.contains(&creds().api_v3_key) && debug.contains("<redacted>"),
        "{debug}"
    );
}

#[test]
fn missing_or_malformed_headers_are_typed_errors() {
    let r = encode(&transaction(), "TRANSACTION.SUCCESS");
    let keys = own_keys();
    for name in [
        "Wechatpay-Timestamp",
        "Wechatpay-Nonce",
        "Wechatpay-Signature",
        "Wechatpay-Serial",
    ] {
        assert_eq!(
            v3::verify(&keys, &Req::from(&r).without(name).incoming()),
            Err(ReceiveError::Missing(name.into()))
        );
    }
    for ts in ["abc", "-1700000000", "1700000000.5", "99999999999999999999"] {
        assert!(
            matches!(
                v3::verify(
                    &keys,
                    &Req::from(&r).set("Wechatpay-Timestamp", ts).incoming()
                ),
                Err(ReceiveError::MalformedBody(_))
            ),
            "{ts}"
        );
    }
    assert!(matches!(
        v3::verify(
            &keys,
            &Req::from(&r)
                .set("Wechatpay-Signature-Type", "WECHATPAY2-SM2-WITH-SM3")
                .incoming()
        ),
        Err(ReceiveError::BadSignature(_))
    ));
    assert_eq!(
        v3::verify(
            &keys,
            &Req::from(&r).set("Content-Type", "text/xml").incoming()
        ),
        Err(ReceiveError::UnsupportedContentType("text/xml".into()))
    );
    // Without the optional Signature-Type header, and with a charset, it still verifies.
    let req = Req::from(&r)
        .without("Wechatpay-Signature-Type")
        .set("content-type", "application/json; charset=utf-8");
    assert!(v3::verify(&keys, &req.incoming()).is_ok());
}

#[test]
fn explain_shows_the_signed_message() {
    let r = encode(&transaction(), "TRANSACTION.SUCCESS");
    let req = Req::from(&r);
    let expected = format!(
        "{}\n{}\n{}\n",
        req.header("Wechatpay-Timestamp"),
        req.header("Wechatpay-Nonce"),
        String::from_utf8(r.body.clone()).unwrap()
    );
    assert_eq!(v3::explain(&req.incoming()).unwrap(), expected);
    assert!(keys::verify_sha256(
        &keys::parse_public_key(&creds().private_key).unwrap(),
        expected.as_bytes(),
        req.header("Wechatpay-Signature")
    ));
}

#[test]
fn replies_and_defaults_are_wechats() {
    let ack = v3::ack_reply();
    assert_eq!((ack.status, ack.body.len()), (204, 0));
    let fail = v3::failure_reply("amount \"mismatch\"");
    assert_eq!((fail.status, fail.content_type), (500, "application/json"));
    let body: Value = serde_json::from_slice(&fail.body).unwrap();
    assert_eq!(
        body,
        json!({"code": "FAIL", "message": "amount \"mismatch\""})
    );
    assert_eq!(v3::default_ack(), AckRule::Http2xx);
    assert_eq!(
        v3::default_retry(),
        RetryPolicy::named("wechatpay-v3").unwrap()
    );
}

// ---------------------------------------------------------------------------------------
// Credentials and ids

#[test]
fn generated_credentials_show_the_api_v3_key_once() {
    let (c, once) = v3::create_credentials(&json!(null)).unwrap();
    // A WeChat Pay public-key id, as new merchants get.
    let id = c.serial.strip_prefix("PUB_KEY_ID_").unwrap();
    assert_eq!(id.len(), 34);
    assert!(id.bytes().all(|b| b.is_ascii_digit()));
    assert_eq!(c.api_v3_key.len(), 32);
    assert!(c.api_v3_key.bytes().all(|b| b.is_ascii_alphanumeric()));
    assert!(c.mchid.bytes().all(|b| b.is_ascii_digit()) && c.mchid.len() == 10);
    assert!(c.appid.starts_with("wx") && c.appid.len() == 18);
    let mut fields: Vec<&str> = once
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort();
    assert_eq!(
        fields,
        [
            "api_v3_key",
            "appid",
            "mchid",
            "public_key",
            "public_key_pem",
            "serial"
        ]
    );
    assert_eq!(once["api_v3_key"], json!(c.api_v3_key));
    let public = v3::public_view(&c);
    let mut without_key = once.clone();
    without_key.as_object_mut().unwrap().remove("api_v3_key");
    assert_eq!(public, without_key);

    let secret_line = c.private_key.lines().nth(3).unwrap().to_string();
    for shown in [once.to_string(), public.to_string()] {
        assert!(!shown.contains(&secret_line));
    }
    assert!(!public.to_string().contains(&c.api_v3_key));
    let debug = format!("{c:?} {c:#?}");
    assert!(
        !debug.contains(&secret_line) && !debug.contains(&c.api_v3_key),
        "{debug}"
    );

    let back: Credentials = serde_json::from_value(serde_json::to_value(&c).unwrap()).unwrap();
    assert_eq!(back, c);
}

#[test]
fn given_material_is_validated() {
    let (c, _) = v3::create_credentials(&json!({
        "mchid": MCHID,
        "appid": APPID,
        "private_key": creds().private_key,
        "serial": "PUB_KEY_ID_0114232134912410000000000000",
        "api_v3_key": "a7cde1ZJB1kG2e7VfTs3jQzaWizur8Gb",
    }))
    .unwrap();
    assert_eq!(c.serial, "PUB_KEY_ID_0114232134912410000000000000");
    assert_eq!(c.api_v3_key, "a7cde1ZJB1kG2e7VfTs3jQzaWizur8Gb");
    assert_eq!(c.private_key, creds().private_key);

    for options in [
        json!([]),
        json!({"api_v3_key": "tooshort-secretvalue"}),
        json!({"api_v3_key": "a7cde1ZJB1kG2e7VfTs3jQzaWizur8G "}),
        json!({"api_v3_key": "a7cde1ZJB1kG2e7VfTs3jQzaWizur8Gbsecretvalue"}),
        json!({"serial": "has space"}),
        json!({"private_key": "secretvalue"}),
        json!({"mch_id": MCHID}),
    ] {
        let err = v3::create_credentials(&options).unwrap_err();
        assert!(matches!(err, ProfileError::BadCredentials(_)), "{options}");
        assert!(!err.to_string().contains("secretvalue"), "{err}");
    }
}

#[test]
fn rotation_changes_key_and_serial_and_receivers_select_by_serial() {
    let (rotated, view) = v3::rotate(creds(), TS + 3600, TS).unwrap();
    assert_ne!(rotated.serial, creds().serial);
    assert_ne!(rotated.private_key, creds().private_key);
    assert_eq!(rotated.api_v3_key, creds().api_v3_key);
    assert_eq!(
        (rotated.mchid.as_str(), rotated.appid.as_str()),
        (MCHID, APPID)
    );
    assert_eq!(view, v3::public_view(&rotated));
    assert!(view.get("api_v3_key").is_none());

    let r = v3::encode(
        &rotated,
        &OutgoingNotification {
            notify_id: "n",
            event_type: "TRANSACTION.SUCCESS",
            payload: b"{}",
            timestamp: herald_protocols::UnixSeconds::new(TS),
            created_at: herald_protocols::UnixSeconds::new(TS),
        },
    )
    .unwrap();
    let req = Req::from(&r);
    assert!(matches!(
        v3::verify(&own_keys(), &req.incoming()),
        Err(ReceiveError::UnknownKey(_))
    ));
    let old = format!("{}={}", creds().serial, creds().private_key);
    let new = format!(
        "{}={}",
        rotated.serial,
        view["public_key_pem"].as_str().unwrap()
    );
    let both = v3::receiver_keys(&[old, new], Some(&creds().api_v3_key)).unwrap();
    assert!(v3::verify(&both, &req.incoming()).is_ok());
    let old_req = Req::from(&encode("{}", "TRANSACTION.SUCCESS"));
    assert!(v3::verify(&both, &old_req.incoming()).is_ok());
}

#[test]
fn notify_ids_are_random_uuids() {
    let a = v3::new_notify_id();
    assert_ne!(a, v3::new_notify_id());
    let parts: Vec<usize> = a.split('-').map(str::len).collect();
    assert_eq!(parts, [8, 4, 4, 4, 12], "{a}");
    assert_eq!(&a[14..15], "4");
    assert!("89ab".contains(&a[19..20]), "{a}");
}

/// `req` with its body replaced and signed again with the platform key (the same timestamp
/// and nonce), as WeChat would sign that body.
fn resigned(r: &EncodedRequest, body: &str) -> Req {
    let req = Req::from(r);
    let message = format!(
        "{}\n{}\n{body}\n",
        req.header("Wechatpay-Timestamp"),
        req.header("Wechatpay-Nonce")
    );
    let sig = keys::sign_sha256_cached(&creds().private_key, message.as_bytes()).unwrap();
    let mut req = req.set("Wechatpay-Signature", &sig);
    req.body = body.as_bytes().to_vec();
    req
}

#[test]
fn a_signed_notification_whose_resource_type_is_not_encrypt_resource_is_refused() {
    // WeChat's notify shape (支付成功结果通知): resource_type is always "encrypt-resource".
    let r = encode(&transaction(), "TRANSACTION.SUCCESS");
    let body = String::from_utf8(r.body.clone()).unwrap();
    assert!(
        body.contains(r#""resource_type":"encrypt-resource""#),
        "{body}"
    );
    assert!(v3::verify(&own_keys(), &resigned(&r, &body).incoming()).is_ok());
    let other = body.replace(r#""encrypt-resource""#, r#""plain-resource""#);
    let err = v3::verify(&own_keys(), &resigned(&r, &other).incoming()).unwrap_err();
    assert!(
        matches!(&err, ReceiveError::MalformedBody(m) if m.contains("plain-resource")),
        "{err}"
    );
    let none = body.replace(r#""resource_type":"encrypt-resource","#, "");
    assert_ne!(none, body);
    assert_eq!(
        v3::verify(&own_keys(), &resigned(&r, &none).incoming()),
        Err(ReceiveError::Missing("resource_type".into()))
    );
}

#[test]
fn serials_match_whatever_their_case_and_leading_zeros() {
    // WeChat's Wechatpay-Serial keeps leading zeros that BigInteger.toString(16) drops
    // (wechatpay-apiv3/wechatpay-go#46), and is upper-case hex while configured serials are
    // often lower-case.
    let r = encode(&transaction(), "TRANSACTION.SUCCESS");
    let public = keys::public_base64(&keys::parse_public_key(&creds().private_key).unwrap());
    let api = Some(creds().api_v3_key.as_str());
    let serial = creds().serial.trim_start_matches('0').to_string();
    for (configured, header) in [
        (serial.to_ascii_lowercase(), format!("00{serial}")),
        (format!("000{serial}"), serial.clone()),
        (
            format!("0{}", serial.to_ascii_lowercase()),
            format!("00{serial}"),
        ),
    ] {
        let ks = v3::receiver_keys(&[format!("{configured}={public}")], api).unwrap();
        let req = Req::from(&r).set("Wechatpay-Serial", &header);
        assert!(
            v3::verify(&ks, &req.incoming()).is_ok(),
            "{configured} vs {header}"
        );
    }
    // A different serial still selects nothing.
    let ks = v3::receiver_keys(&[format!("1{serial}={public}")], api).unwrap();
    let req = Req::from(&r).set("Wechatpay-Serial", &serial);
    assert!(matches!(
        v3::verify(&ks, &req.incoming()),
        Err(ReceiveError::UnknownKey(_))
    ));
}

#[test]
fn verify_detailed_says_a_signed_notification_that_does_not_decrypt_had_a_valid_signature() {
    let req = Req::from(&encode(&transaction(), "TRANSACTION.SUCCESS"));
    let public = keys::public_pem(&keys::parse_public_key(&creds().private_key).unwrap());
    let ks = v3::receiver_keys(
        std::slice::from_ref(&public),
        Some("0123456789abcdef0123456789abcdef"),
    )
    .unwrap();
    assert!(matches!(
        v3::verify_detailed(&ks, &req.incoming()),
        Err(Refusal {
            signature_valid: true,
            error: ReceiveError::Decrypt(_)
        })
    ));
    let mut stale = Req::from(&encode(&transaction(), "TRANSACTION.SUCCESS"));
    stale.now = TS + 3_600;
    assert!(matches!(
        v3::verify_detailed(&own_keys(), &stale.incoming()),
        Err(Refusal {
            signature_valid: false,
            error: ReceiveError::TimestampOutOfWindow { .. }
        })
    ));
}
