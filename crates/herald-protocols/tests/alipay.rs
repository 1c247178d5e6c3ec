//! The alipay profile: the published vector A-1, round trips through encode and verify, GBK and
//! legacy `RSA` signatures, return_url redirects, the receiver's errors, and credentials.
use std::sync::OnceLock;

use herald_protocols::alipay::{self, Credentials};
use herald_protocols::keys;
use herald_protocols::receive::{Amount, IncomingRequest, ReceiveError};
use herald_protocols::{AckRule, OutgoingNotification, ProfileError, RetryPolicy};
use serde_json::{json, Value};

/// The published vectors, kept in the repository as test data (a copy of the project's
/// `vectors/given.json`). A missing file fails the tests that read it.
const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/given.json");

/// A-1's public key, also used below as "somebody else's key".
const A1_PUBLIC_KEY: &str = "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAqObrdC7hrgAVM98tK0nv3hSQRGGKT4lBsQjHiGjeYZjOPIPHR5knm2jnnz/YGIXIofVHkA/tAlBAd5DrY7YpvI4tP5EONLtZKC2ghBMx7McI2wRD0xiqzxOQr1FuhZGJ8/AUokBzJrzY+aGX2xcOrxFYRlFilvVLTXg4LWjR1tdPkO6+i7wQZAIVMClPkwVRZEbaERRHlKqTzv2gGv5rDU8gRoe1LeaN+6BlbTqHWkQcNCUNrA8C6l17XAXGKDsm/9TFWwO8EPHHHCaQdjtV5/FdcWIt+L8SR1ss7EXTjYDFtxcKVv9rEoY1lX8T4mX+GbXfZHraG5NCF1+XioL5JwIDAQAB";

const SELLER: &str = "2088531891668739";
/// 2023-11-15 06:13:20 in China.
const TS: i64 = 1_700_000_000;

fn a1() -> Value {
    let text = std::fs::read_to_string(VECTORS)
        .unwrap_or_else(|e| panic!("cannot read the published vectors at {VECTORS}: {e}"));
    let all: Value = serde_json::from_str(&text).unwrap();
    let list = all["alipay"].as_array().unwrap();
    list.iter()
        .find(|v| v["name"].as_str().unwrap().starts_with("A-1"))
        .expect("vector A-1")
        .clone()
}

fn vector_params(v: &Value) -> Vec<(String, String)> {
    v["params"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect()
}

/// One generated key pair for the whole file (RSA generation is slow in debug builds).
fn creds() -> &'static Credentials {
    static CREDS: OnceLock<Credentials> = OnceLock::new();
    CREDS.get_or_init(|| {
        alipay::create_credentials(&json!({ "seller_id": SELLER }))
            .unwrap()
            .0
    })
}

fn private_key() -> rsa::RsaPrivateKey {
    keys::parse_private_key(&creds().private_key).unwrap()
}

struct Req {
    method: &'static str,
    headers: Vec<(String, String)>,
    query: String,
    body: Vec<u8>,
}

impl Req {
    fn post(content_type: &str, body: impl Into<Vec<u8>>) -> Req {
        Req {
            method: "POST",
            headers: vec![("Content-Type".into(), content_type.into())],
            query: String::new(),
            body: body.into(),
        }
    }

    fn form(body: impl Into<Vec<u8>>) -> Req {
        Req::post("application/x-www-form-urlencoded; charset=utf-8", body)
    }

    fn get(query: &str) -> Req {
        Req {
            method: "GET",
            headers: Vec::new(),
            query: query.into(),
            body: Vec::new(),
        }
    }

    fn incoming(&self) -> IncomingRequest<'_> {
        IncomingRequest {
            method: self.method,
            headers: &self.headers,
            query: &self.query,
            body: &self.body,
            now: TS,
        }
    }
}

fn form_body(params: &[(String, String)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        s.append_pair(k, v);
    }
    s.finish()
}

fn gbk_form_body(params: &[(String, String)]) -> Vec<u8> {
    let gbk: &dyn Fn(&str) -> std::borrow::Cow<'_, [u8]> = &|s: &str| encoding_rs::GBK.encode(s).0;
    let mut s = form_urlencoded::Serializer::new(String::new());
    s.encoding_override(Some(gbk));
    for (k, v) in params {
        s.append_pair(k, v);
    }
    s.finish().into_bytes()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn notification<'a>(payload: &'a [u8], id: &'a str) -> OutgoingNotification<'a> {
    OutgoingNotification {
        notify_id: id,
        event_type: "payment.succeeded",
        payload,
        timestamp: herald_protocols::UnixSeconds::new(TS),
        created_at: herald_protocols::UnixSeconds::new(TS - 10),
    }
}

fn own_keys() -> alipay::ReceiverKeys {
    alipay::receiver_keys_from(creds()).unwrap()
}

fn field<'a>(params: &'a [(String, String)], k: &str) -> &'a str {
    params
        .iter()
        .find(|(key, _)| key == k)
        .map(|(_, v)| v.as_str())
        .unwrap()
}

fn decoded(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body).into_owned().collect()
}

// ---------------------------------------------------------------------------------------
// Vector A-1

#[test]
fn a1_string_to_sign_matches_the_vector() {
    let v = a1();
    let params = vector_params(&v);
    assert_eq!(
        alipay::string_to_sign(&params),
        v["string_to_sign"].as_str().unwrap()
    );
    // The gateway variant keeps sign_type.
    let gateway = alipay::string_to_sign_keep_sign_type(&params);
    assert!(gateway.contains("&sign_type=RSA2&"), "{gateway}");
    assert!(!gateway.contains("sign=Qf"));
}

#[test]
fn a1_signature_verifies_from_params_and_from_the_form_body() {
    let v = a1();
    let public_b64 = v["public_key_spki_base64"].as_str().unwrap();
    let public = keys::parse_public_key(public_b64).unwrap();
    let params = vector_params(&v);
    assert!(keys::verify_sha256(
        &public,
        alipay::string_to_sign(&params).as_bytes(),
        field(&params, "sign")
    ));

    let receiver = alipay::receiver_keys(&[public_b64.to_string()]).unwrap();
    let req = Req::form(v["form_body"].as_str().unwrap());
    let n = alipay::verify(&receiver, &req.incoming()).unwrap();
    assert_eq!(n.profile, "alipay");
    assert_eq!(n.notify_id, "2019081500222155624068450559358070");
    assert_eq!(n.app_id.as_deref(), Some("2019073166072302"));
    assert_eq!(n.merchant_id.as_deref(), Some("2088531891668739"));
    assert_eq!(n.out_trade_no.as_deref(), Some("20190815155618536-564-57"));
    assert_eq!(
        n.transaction_id.as_deref(),
        Some("2019081522001468450512505578")
    );
    assert_eq!(
        n.amount,
        Some(Amount {
            minor: 10,
            currency: "CNY".into()
        })
    );
    assert_eq!(n.status.as_deref(), Some("TRADE_SUCCESS"));
    assert_eq!(n.event_type.as_deref(), Some("trade_status_sync"));
    assert_eq!(n.fields.len(), params.len());
    assert_eq!(n.fields["subject"], json!("语雀空间 500人规模"));
    assert_eq!(
        n.fields["fund_bill_list"],
        json!("[{\"amount\":\"0.10\",\"fundChannel\":\"ALIPAYACCOUNT\"}]")
    );

    // The same key as a PEM, a file, or next to another key.
    let pem = keys::public_pem(&public);
    let path = std::env::temp_dir().join(format!("herald-alipay-a1-{}.pem", std::process::id()));
    std::fs::write(&path, &pem).unwrap();
    for ks in [
        vec![pem.clone()],
        vec![path.to_str().unwrap().to_string()],
        vec![keys::public_base64(&private_key().to_public_key()), pem],
    ] {
        let receiver = alipay::receiver_keys(&ks).unwrap();
        assert!(alipay::verify(&receiver, &req.incoming()).is_ok());
    }
    std::fs::remove_file(&path).unwrap();

    // explain gives the vector's string to sign.
    assert_eq!(
        alipay::explain(&req.incoming()).unwrap(),
        v["string_to_sign"].as_str().unwrap()
    );
}

#[test]
fn a1_fails_when_any_field_or_any_byte_of_the_body_changes() {
    let v = a1();
    let receiver =
        alipay::receiver_keys(&[v["public_key_spki_base64"].as_str().unwrap().into()]).unwrap();
    let params = vector_params(&v);
    for (i, (k, _)) in params.iter().enumerate() {
        if k == "sign" || k == "sign_type" {
            continue;
        }
        let mut changed = params.clone();
        changed[i].1.push('1');
        let req = Req::form(form_body(&changed));
        assert!(
            matches!(
                alipay::verify(&receiver, &req.incoming()),
                Err(ReceiveError::BadSignature(_))
            ),
            "{k}"
        );
    }
    let body = v["form_body"].as_str().unwrap().as_bytes();
    for i in 0..body.len() {
        let mut changed = body.to_vec();
        changed[i] = if changed[i] == b'X' { b'Y' } else { b'X' };
        let req = Req::form(changed);
        assert!(
            alipay::verify(&receiver, &req.incoming()).is_err(),
            "byte {i}"
        );
    }
}

#[test]
fn a1_fails_under_a_wrong_key() {
    let v = a1();
    let req = Req::form(v["form_body"].as_str().unwrap());
    assert!(matches!(
        alipay::verify(&own_keys(), &req.incoming()),
        Err(ReceiveError::BadSignature(_))
    ));
}

// ---------------------------------------------------------------------------------------
// Round trips

#[test]
fn encoded_notifications_verify_and_carry_the_common_fields() {
    let payload = json!({
        "out_trade_no": "order-1",
        "trade_no": "2026112322001468450512505578",
        "trade_status": "TRADE_SUCCESS",
        "total_amount": "88.50",
        "subject": "测试商品 & more=1",
        "fund_bill_list": [{"amount": "88.50", "fundChannel": "ALIPAYACCOUNT"}],
        "is_test": true,
        "gmt_refund": null,
        "empty": ""
    })
    .to_string();
    // Numbers keep their JSON text (0.10 stays "0.10").
    let payload = payload.replacen('{', r#"{"point_amount": 0.10, "#, 1);
    let r = alipay::encode(creds(), &notification(payload.as_bytes(), "N1")).unwrap();
    assert_eq!(
        r.content_type,
        "application/x-www-form-urlencoded; charset=utf-8"
    );
    assert!(r.headers.is_empty());
    let sent = decoded(&r.body);
    for (k, v) in [
        ("notify_id", "N1"),
        ("notify_time", "2023-11-15 06:13:20"),
        ("notify_type", "trade_status_sync"),
        ("app_id", creds().app_id.as_str()),
        ("seller_id", SELLER),
        ("charset", "utf-8"),
        ("version", "1.0"),
        ("sign_type", "RSA2"),
        (
            "fund_bill_list",
            "[{\"amount\":\"88.50\",\"fundChannel\":\"ALIPAYACCOUNT\"}]",
        ),
        ("point_amount", "0.10"),
        ("is_test", "true"),
        ("empty", ""),
    ] {
        assert_eq!(field(&sent, k), v, "{k}");
    }
    assert!(!sent.iter().any(|(k, _)| k == "gmt_refund"));

    let req = Req::post(&r.content_type, r.body.clone());
    let n = alipay::verify(&own_keys(), &req.incoming()).unwrap();
    assert_eq!(n.notify_id, "N1");
    assert_eq!(n.app_id.as_deref(), Some(creds().app_id.as_str()));
    assert_eq!(n.merchant_id.as_deref(), Some(SELLER));
    assert_eq!(n.out_trade_no.as_deref(), Some("order-1"));
    assert_eq!(
        n.amount,
        Some(Amount {
            minor: 8850,
            currency: "CNY".into()
        })
    );
    assert_eq!(n.fields["subject"], json!("测试商品 & more=1"));

    // The public key as the view shows it verifies too, in both forms.
    let view = alipay::public_view(creds());
    for k in ["public_key", "public_key_pem"] {
        let receiver = alipay::receiver_keys(&[view[k].as_str().unwrap().into()]).unwrap();
        assert!(alipay::verify(&receiver, &req.incoming()).is_ok(), "{k}");
    }
    // Somebody else's key does not.
    let other = alipay::receiver_keys(&[A1_PUBLIC_KEY.into()]).unwrap();
    assert!(matches!(
        alipay::verify(&other, &req.incoming()),
        Err(ReceiveError::BadSignature(_))
    ));
}

#[test]
fn one_changed_byte_of_an_encoded_body_fails() {
    let payload = br#"{"out_trade_no":"o","trade_no":"t","total_amount":"1.00"}"#;
    let r = alipay::encode(creds(), &notification(payload, "N2")).unwrap();
    let keys = own_keys();
    assert!(alipay::verify(&keys, &Req::form(r.body.clone()).incoming()).is_ok());
    for i in 0..r.body.len() {
        let mut changed = r.body.clone();
        changed[i] = if changed[i] == b'X' { b'Y' } else { b'X' };
        assert!(
            alipay::verify(&keys, &Req::form(changed).incoming()).is_err(),
            "byte {i}"
        );
    }
}

#[test]
fn the_payload_wins_for_business_and_common_fields_but_never_for_the_signature() {
    let payload = json!({
        "notify_id": "from-payload",
        "app_id": "2021009999999999",
        "notify_time": "2020-01-01 00:00:00",
        "notify_type": "trade_status_sync_custom",
        "seller_id": "2088000000000001",
        "version": "1.1",
        "total_amount": "0.01",
        "sign_type": "RSA",
        "sign": "forged"
    })
    .to_string();
    let r = alipay::encode(creds(), &notification(payload.as_bytes(), "N3")).unwrap();
    let sent = decoded(&r.body);
    assert_eq!(field(&sent, "notify_id"), "from-payload");
    assert_eq!(field(&sent, "app_id"), "2021009999999999");
    assert_eq!(field(&sent, "notify_time"), "2020-01-01 00:00:00");
    assert_eq!(field(&sent, "notify_type"), "trade_status_sync_custom");
    assert_eq!(field(&sent, "seller_id"), "2088000000000001");
    assert_eq!(field(&sent, "version"), "1.1");
    assert_eq!(field(&sent, "sign_type"), "RSA2");
    assert_ne!(field(&sent, "sign"), "forged");
    assert_eq!(sent.iter().filter(|(k, _)| k == "sign").count(), 1);
    let n = alipay::verify(&own_keys(), &Req::form(r.body).incoming()).unwrap();
    assert_eq!(n.notify_id, "from-payload");
    assert_eq!(n.amount.unwrap().minor, 1);
}

#[test]
fn encode_refuses_payloads_that_are_not_objects_and_unknown_charsets() {
    for payload in [&b"[1]"[..], b"\"x\"", b"not json", b"{\"\":\"x\"}"] {
        let err = alipay::encode(creds(), &notification(payload, "N")).unwrap_err();
        assert!(matches!(err, ProfileError::Encode(_)), "{err}");
    }
    let err = alipay::encode(creds(), &notification(br#"{"charset":"big5"}"#, "N")).unwrap_err();
    assert!(err.to_string().contains("big5"), "{err}");
    // Characters GBK cannot represent are refused rather than mangled.
    let err = alipay::encode(
        creds(),
        &notification(r#"{"charset":"gbk","subject":"😀"}"#.as_bytes(), "N"),
    )
    .unwrap_err();
    assert!(matches!(err, ProfileError::Encode(_)), "{err}");
}

#[test]
fn a_gbk_payload_is_sent_and_signed_in_gbk() {
    let payload = r#"{"charset":"gbk","subject":"语雀空间","total_amount":"0.10"}"#;
    let r = alipay::encode(creds(), &notification(payload.as_bytes(), "N4")).unwrap();
    assert_eq!(
        r.content_type,
        "application/x-www-form-urlencoded; charset=gbk"
    );
    // 语 is D3 EF in GBK.
    assert!(String::from_utf8(r.body.clone())
        .unwrap()
        .contains("subject=%D3%EF"));
    let n = alipay::verify(&own_keys(), &Req::post(&r.content_type, r.body).incoming()).unwrap();
    assert_eq!(n.fields["subject"], json!("语雀空间"));
}

// ---------------------------------------------------------------------------------------
// Charsets and sign types

fn gbk_params() -> Vec<(String, String)> {
    pairs(&[
        ("notify_id", "2026112300222155624068450559358070"),
        ("notify_type", "trade_status_sync"),
        ("notify_time", "2026-11-23 20:15:00"),
        ("app_id", "2021000000000001"),
        ("charset", "gbk"),
        ("version", "1.0"),
        ("subject", "语雀空间 500人规模"),
        ("out_trade_no", "order-gbk"),
        ("trade_no", "2026112322001468450512505578"),
        ("trade_status", "TRADE_FINISHED"),
        ("total_amount", "1.50"),
    ])
}

#[test]
fn gbk_forms_verify_over_gbk_bytes_and_the_same_signature_fails_as_utf8() {
    let mut params = gbk_params();
    let text = alipay::string_to_sign(&params);
    let (gbk_bytes, _, unmappable) = encoding_rs::GBK.encode(&text);
    assert!(!unmappable);
    assert_ne!(&gbk_bytes[..], text.as_bytes());
    let sign = keys::sign_sha256(&private_key(), &gbk_bytes).unwrap();
    params.push(("sign_type".into(), "RSA2".into()));
    params.push(("sign".into(), sign));
    let keys = own_keys();

    let body = gbk_form_body(&params);
    for ct in [
        "application/x-www-form-urlencoded; charset=GBK",
        "application/x-www-form-urlencoded",
        "application/x-www-form-urlencoded; charset=gb2312",
    ] {
        let req = Req::post(ct, body.clone());
        let n = alipay::verify(&keys, &req.incoming()).unwrap();
        assert_eq!(n.fields["subject"], json!("语雀空间 500人规模"), "{ct}");
        assert_eq!(n.amount.as_ref().unwrap().minor, 150);
        assert_eq!(n.status.as_deref(), Some("TRADE_FINISHED"));
        assert_eq!(alipay::explain(&req.incoming()).unwrap(), text);
    }

    // The same parameters and signature sent as UTF-8: the signed bytes differ.
    let req = Req::form(form_body(&params));
    assert!(matches!(
        alipay::verify(&keys, &req.incoming()),
        Err(ReceiveError::BadSignature(_))
    ));
    // GBK bytes declared as UTF-8 do not even decode.
    let req = Req::form(body);
    assert!(matches!(
        alipay::verify(&keys, &req.incoming()),
        Err(ReceiveError::MalformedBody(_))
    ));
}

#[test]
fn legacy_rsa_sha1_verifies_and_a_missing_sign_type_means_rsa2() {
    use rsa::signature::{SignatureEncoding, Signer};
    let params = pairs(&[
        ("notify_id", "1"),
        ("charset", "utf-8"),
        ("total_amount", "0.10"),
        ("out_trade_no", "o"),
    ]);
    let text = alipay::string_to_sign(&params);
    let sha1_sig =
        rsa::pkcs1v15::SigningKey::<sha1::Sha1>::new(private_key()).sign(text.as_bytes());
    let sha1_b64 = base64_std(&sha1_sig.to_bytes());
    let sha256_b64 = keys::sign_sha256(&private_key(), text.as_bytes()).unwrap();
    let keys = own_keys();
    let with = |sign_type: Option<&str>, sign: &str| {
        let mut p = params.clone();
        if let Some(t) = sign_type {
            p.push(("sign_type".into(), t.into()));
        }
        p.push(("sign".into(), sign.into()));
        alipay::verify(&keys, &Req::form(form_body(&p)).incoming())
    };
    assert!(with(Some("RSA"), &sha1_b64).is_ok());
    assert!(with(Some("RSA2"), &sha1_b64).is_err());
    assert!(with(None, &sha1_b64).is_err());
    assert!(with(Some("RSA"), &sha256_b64).is_err());
    assert!(with(Some("RSA2"), &sha256_b64).is_ok());
    assert!(with(None, &sha256_b64).is_ok());
    assert!(matches!(
        with(Some("MD5"), &sha256_b64),
        Err(ReceiveError::BadSignature(m)) if m.contains("MD5")
    ));
}

fn base64_std(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[test]
fn amounts_are_parsed_into_fen_without_floats() {
    let keys = own_keys();
    for (total, fen) in [
        ("0.10", Some(10)),
        ("88", Some(8800)),
        ("1.5", Some(150)),
        ("0.01", Some(1)),
    ] {
        let payload = json!({ "total_amount": total }).to_string();
        let r = alipay::encode(creds(), &notification(payload.as_bytes(), "N")).unwrap();
        let n = alipay::verify(&keys, &Req::form(r.body).incoming()).unwrap();
        assert_eq!(n.amount.map(|a| a.minor), fen, "{total}");
    }
    let r = alipay::encode(creds(), &notification(br#"{"total_amount":"1.234"}"#, "N")).unwrap();
    assert_eq!(
        alipay::verify(&keys, &Req::form(r.body).incoming()),
        Err(ReceiveError::BadAmount("1.234".into()))
    );
    let r = alipay::encode(creds(), &notification(b"{}", "N")).unwrap();
    let n = alipay::verify(&keys, &Req::form(r.body).incoming()).unwrap();
    assert_eq!(n.amount, None);
}

// ---------------------------------------------------------------------------------------
// return_url, query responses, replies

#[test]
fn return_url_redirects_verify_as_get_queries() {
    let mut params = pairs(&[
        ("charset", "utf-8"),
        ("out_trade_no", "order-7"),
        ("method", "alipay.trade.page.pay.return"),
        ("total_amount", "12.00"),
        ("trade_no", "2026112322001468450512500007"),
        ("app_id", creds().app_id.as_str()),
        ("seller_id", SELLER),
        ("timestamp", "2026-11-23 20:15:07"),
        ("version", "1.0"),
        ("sign_type", "RSA"),
    ]);
    alipay::sign_params(creds(), &mut params).unwrap();
    assert_eq!(field(&params, "sign_type"), "RSA2");
    assert_eq!(params.iter().filter(|(k, _)| k == "sign_type").count(), 1);
    let req = Req::get(&form_body(&params));
    let n = alipay::verify(&own_keys(), &req.incoming()).unwrap();
    assert_eq!(n.notify_id, "2026112322001468450512500007");
    assert_eq!(
        n.event_type.as_deref(),
        Some("alipay.trade.page.pay.return")
    );
    assert_eq!(n.amount.unwrap().minor, 1200);
    assert_eq!(n.status, None);

    let mut tampered = params.clone();
    tampered[3].1 = "0.01".into();
    let req = Req::get(&form_body(&tampered));
    assert!(alipay::verify(&own_keys(), &req.incoming()).is_err());
}

#[test]
fn query_responses_are_signed_over_the_raw_json_text() {
    let text = r#"{"code":"10000","msg":"Success","out_trade_no":"o","total_amount":"88.88","trade_status":"TRADE_SUCCESS"}"#;
    let sig = alipay::sign_query_response(creds(), text).unwrap();
    let keys = own_keys();
    assert!(alipay::verify_query_response(&keys, text, &sig));
    assert!(!alipay::verify_query_response(
        &keys,
        &text.replace("88.88", "88.89"),
        &sig
    ));
    let reformatted = text.replace(",", ", ");
    assert!(!alipay::verify_query_response(&keys, &reformatted, &sig));
}

#[test]
fn replies_and_defaults_are_alipays() {
    let ack = alipay::ack_reply();
    assert_eq!((ack.status, ack.content_type), (200, "text/plain"));
    assert_eq!(ack.body, b"success");
    let fail = alipay::failure_reply("amount mismatch");
    assert_eq!((fail.status, fail.content_type), (200, "text/plain"));
    assert_eq!(fail.body, b"fail");
    assert_eq!(alipay::default_ack(), AckRule::Body("success".into()));
    assert_eq!(
        alipay::default_retry(),
        RetryPolicy::named("alipay").unwrap()
    );
}

// ---------------------------------------------------------------------------------------
// Receiver errors

#[test]
fn receiver_errors_are_typed() {
    let keys = own_keys();
    let signed = alipay::encode(creds(), &notification(br#"{"total_amount":"1"}"#, "N")).unwrap();
    let body = String::from_utf8(signed.body).unwrap();

    let cases: Vec<(Req, ReceiveError)> = vec![
        (
            Req::post("application/json", body.clone()),
            ReceiveError::UnsupportedContentType("application/json".into()),
        ),
        (
            Req {
                headers: Vec::new(),
                ..Req::form(body.clone())
            },
            ReceiveError::UnsupportedContentType(String::new()),
        ),
        (
            Req::post(
                "application/x-www-form-urlencoded; charset=latin1",
                body.clone(),
            ),
            ReceiveError::Charset("latin1".into()),
        ),
        (
            Req::post(
                "application/x-www-form-urlencoded",
                body.replace("charset=utf-8", "charset=big5"),
            ),
            ReceiveError::Charset("big5".into()),
        ),
        (
            Req::form("notify_id=1&total_amount=1.00&sign_type=RSA2"),
            ReceiveError::Missing("sign".into()),
        ),
        (
            Req::form("notify_id=1&sign="),
            ReceiveError::Missing("sign".into()),
        ),
        (
            Req {
                method: "PUT",
                ..Req::form(body.clone())
            },
            ReceiveError::MalformedBody(
                "method \"PUT\" is neither POST (notification) nor GET (return_url)".into(),
            ),
        ),
        (
            Req::form(format!("{body}&notify_id=again")),
            ReceiveError::MalformedBody("parameter \"notify_id\" appears more than once".into()),
        ),
        (
            Req::form(format!("{body}&flag")),
            ReceiveError::MalformedBody(
                "a parameter has no '=' (expected key=value pairs joined by '&')".into(),
            ),
        ),
        (
            Req::form(format!("{body}&subject=%FF")),
            ReceiveError::MalformedBody("a parameter is not valid utf-8".into()),
        ),
    ];
    for (req, expected) in cases {
        assert_eq!(alipay::verify(&keys, &req.incoming()), Err(expected));
    }
    assert!(matches!(
        alipay::verify(
            &keys,
            &Req::form(body.replace("sign=", "sign=AAAA")).incoming()
        ),
        Err(ReceiveError::BadSignature(_))
    ));
}

#[test]
fn receiver_keys_must_be_readable_public_keys() {
    assert_eq!(
        alipay::receiver_keys(&[]).unwrap_err(),
        ReceiveError::Missing("Alipay public key".into())
    );
    let err = alipay::receiver_keys(&[A1_PUBLIC_KEY.into(), "MIIBnotakey".into()]).unwrap_err();
    assert!(
        matches!(&err, ReceiveError::UnknownKey(m) if m.starts_with("public key 2:")),
        "{err}"
    );
    assert!(!err.to_string().contains("MIIBnotakey"));
    // A private key where a public one is expected: its public half is used.
    let receiver = alipay::receiver_keys(&[creds().private_key.clone()]).unwrap();
    assert_eq!(receiver.public_keys, own_keys().public_keys);
    assert!(!format!("{receiver:?}").contains("MII"));
}

// ---------------------------------------------------------------------------------------
// Credentials and ids

#[test]
fn generated_credentials_show_the_public_key_once_and_never_the_private_key() {
    let c = creds();
    assert_eq!(c.app_id.len(), 16);
    assert!(c.app_id.starts_with("2021") && c.app_id.bytes().all(|b| b.is_ascii_digit()));
    assert!(c.private_key.starts_with("-----BEGIN PRIVATE KEY-----"));
    let view = alipay::public_view(c);
    let map = view.as_object().unwrap();
    let mut fields: Vec<&str> = map.keys().map(String::as_str).collect();
    fields.sort();
    assert_eq!(
        fields,
        ["app_id", "public_key", "public_key_pem", "seller_id"]
    );
    assert_eq!(view["seller_id"], json!(SELLER));
    let public = private_key().to_public_key();
    assert_eq!(view["public_key"], json!(keys::public_base64(&public)));
    assert_eq!(view["public_key_pem"], json!(keys::public_pem(&public)));
    let secret_body: String = c.private_key.lines().nth(3).unwrap().to_string();
    assert!(!view.to_string().contains(&secret_body));
    let debug = format!("{c:?} {c:#?}");
    assert!(
        !debug.contains(&secret_body) && debug.contains("<redacted>"),
        "{debug}"
    );

    let back: Credentials = serde_json::from_value(serde_json::to_value(c).unwrap()).unwrap();
    assert_eq!(&back, c);
}

#[test]
fn given_material_is_validated_and_normalised() {
    use rsa::pkcs1::EncodeRsaPrivateKey;
    let pkcs1 = private_key()
        .to_pkcs1_pem(rsa::pkcs8::LineEnding::CRLF)
        .unwrap()
        .to_string();
    let (c, view) = alipay::create_credentials(&json!({
        "app_id": "2021004100000001",
        "private_key": pkcs1,
    }))
    .unwrap();
    assert_eq!(c.app_id, "2021004100000001");
    assert_eq!(c.private_key, creds().private_key, "stored as PKCS#8 PEM");
    assert_eq!(c.seller_id, None);
    assert_eq!(view, alipay::public_view(&c));
    assert!(view.get("seller_id").is_none());

    let secret_line = creds().private_key.lines().nth(2).unwrap().to_string();
    for options in [
        json!("x"),
        json!({"appid": "1"}),
        json!({"private_key": 5}),
        json!({"private_key": format!("-----BEGIN PRIVATE KEY-----\n{secret_line}\n-----END PRIVATE KEY-----")}),
        json!({"private_key": A1_PUBLIC_KEY}),
        json!({"app_id": ""}),
        json!({"app_id": "has space"}),
        json!({"seller_id": 2088}),
    ] {
        let err = alipay::create_credentials(&options).unwrap_err();
        assert!(matches!(err, ProfileError::BadCredentials(_)), "{options}");
        assert!(!err.to_string().contains(&secret_line[..30]), "{err}");
    }
}

#[test]
fn rotation_replaces_the_key_at_once() {
    let (rotated, view) = alipay::rotate(creds(), TS + 3600, TS).unwrap();
    assert_eq!(rotated.app_id, creds().app_id);
    assert_eq!(rotated.seller_id, creds().seller_id);
    assert_ne!(rotated.private_key, creds().private_key);
    assert_eq!(view, alipay::public_view(&rotated));
    let r = alipay::encode(&rotated, &notification(b"{}", "N")).unwrap();
    let req = Req::form(r.body);
    assert!(alipay::verify(
        &alipay::receiver_keys_from(&rotated).unwrap(),
        &req.incoming()
    )
    .is_ok());
    assert!(alipay::verify(&own_keys(), &req.incoming()).is_err());
}

#[test]
fn notify_ids_are_34_digits_with_a_date_prefix_and_unique() {
    let a = alipay::new_notify_id();
    let b = alipay::new_notify_id();
    assert_ne!(a, b);
    assert_eq!(a.len(), 34);
    assert!(a.bytes().all(|b| b.is_ascii_digit()), "{a}");
    assert!(a.starts_with("20"), "{a}");
}
