//! WeChat Pay v2 refund notifications (`req_info`, AES-256-ECB): a real notification's
//! `req_info` decrypts to WeChat's documented fields, Herald's encoder reproduces it byte for
//! byte, and `verify` takes a refund notification by decrypting it (and refuses one that does
//! not decrypt with the configured key).
//!
//! Sources for the real shapes:
//! - `REAL_REQ_INFO` / `REAL_KEY`: a real refund notification's `req_info` and its merchant
//!   key, quoted in the tests of several WeChat SDKs (silenceper/wechat
//!   `pay/notify/refund_test.go`, whose data source is studygolang.com/articles/11811, and
//!   go-pay/gopay `TestDecryptRefundNotifyReqInfo`). Its plaintext was checked independently
//!   with Python's `cryptography` (AES-256-ECB, key = lowercase hex MD5 of the API key).
//! - The outer XML (`return_code`, `appid`, `mch_id`, `nonce_str`, `req_info`, no `sign`) and
//!   the second decrypted `<root>`: binarywang/WxJava `WxPayRefundNotifyResultTest`.
//! - Field list and the decryption steps: WeChat Pay "退款结果通知"
//!   (pay.weixin.qq.com/wiki/doc/api/jsapi.php?chapter=9_16).
use herald_protocols::receive::{Amount, IncomingRequest, ReceiveError};
use herald_protocols::wechatpay_v2::refund_notify::{
    self, decrypt_req_info, encrypt_req_info, is_refund_notify, RefundInfo,
};
use herald_protocols::wechatpay_v2::{parse_xml, receiver_keys, verify, Credentials, SignType};
use serde_json::json;

const REAL_KEY: &str = "ziR0QKsTUfMOuochC9RfCdmfHECorQAP";
const REAL_REQ_INFO: &str = "YYwp8C48th0wnQzTqeI+41pflB26v+smFj9z6h9RPBgxTyZyxc+4YNEz7QEgZNWj/6rIb2MfyWMZmCc41CfjKSssoSZPXxOhUayb6KvNSZ1p6frOX1PDWzhyruXK7ouNND+gDsG4yZ0XXzsL4/pYNwLLba/71QrnkJ/BHcByk4EXnglju5DLup9pJQSnTxjomI9Rxu57m9jg5lLQFxMWXyeASZJNvof0ulnHlWJswS4OxKOkmW7VEyKyLGV6npoOm03Qsx2wkRxLsSa9gPpg4hdaReeUqh1FMbm7aWjyrVYT/MEZWg98p4GomEIYvz34XfDncTezX4bf/ZiSLXt79aE1/YTZrYfymXeCrGjlbe0rg/T2ezJHAC870u2vsVbY1/KcE2A443N+DEnAziXlBQ1AeWq3Rqk/O6/TMM0lomzgctAOiAMg+bh5+Gu1ubA9O3E+vehULydD5qx2o6i3+qA9ORbH415NyRrQdeFq5vmCiRikp5xYptWiGZA0tkoaLKMPQ4ndE5gWHqiBbGPfULZWokI+QjjhhBmwgbd6J0VqpRorwOuzC/BHdkP72DCdNcm7IDUpggnzBIy0+seWIkcHEryKjge3YDHpJeQCqrAH0CgxXHDt1xtbQbST1VqFyuhPhUjDXMXrknrGPN/oE1t0rLRq+78cI+k8xe5E6seeUXQsEe8r3358mpcDYSmXWSXVZxK6er9EF98APqHwcndyEJD2YyCh/mMVhERuX+7kjlRXSiNUWa/Cv/XAKFQuvUYA5ea2eYWtPRHa4DpyuF1SNsaqVKfgqKXZrJHfAgslVpSVqUpX4zkKszHF4kwMZO3M7J1P94Mxa7Tm9mTOJePOoHPXeEB+m9rX6pSfoi3mJDQ5inJ+Vc4gOkg/Wd/lqiy6TTyP/dHDN6/v+AuJx5AXBo/2NDD3fWhHjkqEKIuARr2ClZt9ZRQO4HkXdZo7CN06sGCHk48Tg8PmxnxKcMZm7Aoquv5yMIM2gWSWIRJhwJ8cUpafIHc+GesDlbF6Zbt+/KXkafJAQq2RklEN+WvZ/zFz113EPgWPjp16TwBoziq96MMekvWKY/vdhjol8VFtGH9F61Oy1Xwf6DJtPw==";

/// The plaintext of `REAL_REQ_INFO`, field by field.
fn real_info() -> RefundInfo {
    RefundInfo {
        transaction_id: "4200000015201711256947025404".into(),
        out_trade_no: "4893e76d8c8b434cb64e9cd536338e33".into(),
        refund_id: "50000404922017112502468056157".into(),
        out_refund_no: "50fd012ed1b311e7af7800163e32c503".into(),
        total_fee: 6,
        settlement_total_fee: Some(6),
        refund_fee: 6,
        settlement_refund_fee: Some(6),
        refund_status: "SUCCESS".into(),
        success_time: Some("2017-11-25 15:36:17".into()),
        refund_recv_accout: Some("支付用户零钱".into()),
        refund_account: Some("REFUND_SOURCE_RECHARGE_FUNDS".into()),
        refund_request_source: Some("API".into()),
        extra: vec![],
    }
}

/// WxJava's decrypted sample: a partial refund of 15 fen out of 100.
fn wxjava_info() -> RefundInfo {
    RefundInfo {
        transaction_id: "4001312001201707262674894706".into(),
        out_trade_no: "201707260201501501005710775".into(),
        refund_id: "50000203702017072601461713166".into(),
        out_refund_no: "R4001312001201707262674894706_4".into(),
        total_fee: 100,
        settlement_total_fee: Some(100),
        refund_fee: 15,
        settlement_refund_fee: Some(15),
        refund_status: "SUCCESS".into(),
        success_time: Some("2017-07-26 02:45:49".into()),
        refund_recv_accout: Some("用户零钱".into()),
        refund_account: Some("REFUND_SOURCE_UNSETTLED_FUNDS".into()),
        refund_request_source: Some("API".into()),
        extra: vec![],
    }
}

fn creds(api_key: &str) -> Credentials {
    Credentials {
        appid: "wx2421b1c4370ec43b".into(),
        mch_id: "10000100".into(),
        api_key: api_key.into(),
        sign_type: SignType::Md5,
    }
}

fn verify_with(
    keys: &[&str],
    body: &[u8],
) -> Result<herald_protocols::receive::VerifiedNotification, ReceiveError> {
    let keys = receiver_keys(&keys.iter().map(|k| k.to_string()).collect::<Vec<_>>())
        .expect("receiver keys");
    let headers = vec![("Content-Type".to_string(), "text/xml".to_string())];
    verify(
        &keys,
        &IncomingRequest {
            method: "POST",
            headers: &headers,
            query: "",
            body,
            now: 1_511_595_377,
        },
    )
}

/// The outer XML as WeChat sends it (WxJava's sample, with a real `req_info`).
fn outer(req_info: &str) -> Vec<u8> {
    format!(
        "<xml><return_code>SUCCESS</return_code><appid><![CDATA[wx2421b1c4370ec43b]]></appid>\
         <mch_id><![CDATA[10000100]]></mch_id><nonce_str><![CDATA[1ee38e38b04990449808688cf3a763b7]]></nonce_str>\
         <req_info><![CDATA[{req_info}]]></req_info></xml>"
    )
    .into_bytes()
}

#[test]
fn a_real_req_info_decrypts_to_wechats_documented_refund_fields() {
    let info = decrypt_req_info(REAL_KEY, REAL_REQ_INFO).expect("decrypts");
    assert_eq!(info, real_info());
}

#[test]
fn the_encoder_reproduces_a_real_req_info_byte_for_byte() {
    // ECB is deterministic: the same plaintext layout (`<root>`, one CDATA element per line,
    // sorted by name) under the same key gives WeChat's exact ciphertext.
    assert_eq!(
        encrypt_req_info(REAL_KEY, &real_info()).expect("encrypts"),
        REAL_REQ_INFO
    );
}

#[test]
fn encrypted_refunds_round_trip_with_unknown_fields_kept() {
    let mut info = wxjava_info();
    info.extra = vec![("cash_refund_fee".into(), "15".into())];
    let text = encrypt_req_info(REAL_KEY, &info).expect("encrypts");
    assert_eq!(decrypt_req_info(REAL_KEY, &text), Ok(info));
}

#[test]
fn a_wrong_key_or_a_changed_req_info_does_not_decrypt() {
    let err = decrypt_req_info("0123456789abcdef0123456789abcdef", REAL_REQ_INFO).unwrap_err();
    assert!(
        matches!(
            err,
            ReceiveError::Decrypt(_) | ReceiveError::MalformedBody(_)
        ),
        "{err}"
    );
    assert!(!err.to_string().contains("0123456789abcdef"), "{err}");
    // The last block changed: the padding no longer checks out.
    let mut changed = REAL_REQ_INFO.to_string();
    changed.replace_range(changed.len() - 6..changed.len() - 2, "AAAA");
    assert!(decrypt_req_info(REAL_KEY, &changed).is_err());
    for bad in ["", "not base64!", "AAAA"] {
        assert!(
            matches!(
                decrypt_req_info(REAL_KEY, bad),
                Err(ReceiveError::Decrypt(_))
            ),
            "{bad:?}"
        );
    }
}

#[test]
fn a_req_info_missing_a_required_field_is_refused_by_name() {
    let mut info = wxjava_info();
    info.refund_id = String::new();
    assert!(
        encrypt_req_info(REAL_KEY, &info).is_err(),
        "the encoder refuses it"
    );
    let xml = "<root>\n<out_refund_no><![CDATA[R1]]></out_refund_no>\n\
               <out_trade_no><![CDATA[A1]]></out_trade_no>\n<refund_fee><![CDATA[15]]></refund_fee>\n\
               <refund_status><![CDATA[SUCCESS]]></refund_status>\n<total_fee><![CDATA[100]]></total_fee>\n\
               <transaction_id><![CDATA[T1]]></transaction_id>\n</root>";
    assert_eq!(
        RefundInfo::from_xml(xml.as_bytes()),
        Err(ReceiveError::Missing("req_info refund_id".into()))
    );
    let with_id = xml.replace(
        "<refund_status>",
        "<refund_id><![CDATA[5000]]></refund_id>\n<refund_status>",
    );
    assert!(RefundInfo::from_xml(with_id.as_bytes()).is_ok());
    let bad_fee = with_id.replace("[15]", "[1.5]");
    assert!(matches!(
        RefundInfo::from_xml(bad_fee.as_bytes()),
        Err(ReceiveError::BadAmount(_))
    ));
}

#[test]
fn verify_takes_a_real_refund_notification_by_decrypting_it() {
    let body = outer(REAL_REQ_INFO);
    let fields = parse_xml(&body).expect("parses");
    assert!(is_refund_notify(&fields));
    let n = verify_with(&[REAL_KEY], &body).expect("verified by decryption");
    assert_eq!(n.profile, "wechatpay-v2");
    assert_eq!(
        n.notify_id, "50000404922017112502468056157",
        "dedupe on refund_id"
    );
    assert_eq!(n.app_id.as_deref(), Some("wx2421b1c4370ec43b"));
    assert_eq!(n.merchant_id.as_deref(), Some("10000100"));
    assert_eq!(
        n.out_trade_no.as_deref(),
        Some("4893e76d8c8b434cb64e9cd536338e33")
    );
    assert_eq!(
        n.transaction_id.as_deref(),
        Some("4200000015201711256947025404")
    );
    assert_eq!(
        n.amount,
        Some(Amount {
            minor: 6,
            currency: "CNY".into()
        })
    );
    assert_eq!(n.status.as_deref(), Some("SUCCESS"));
    assert_eq!(n.fields["req_info"]["refund_fee"], json!("6"));
    assert_eq!(n.fields["req_info"]["total_fee"], json!("6"));
    assert_eq!(
        n.fields["nonce_str"],
        json!("1ee38e38b04990449808688cf3a763b7")
    );
}

#[test]
fn verify_refuses_a_refund_notification_for_another_key_and_tries_every_configured_key() {
    let body = outer(REAL_REQ_INFO);
    let other = "0123456789abcdef0123456789ABCDEF";
    let err = verify_with(&[other], &body).unwrap_err();
    assert!(
        matches!(
            err,
            ReceiveError::Decrypt(_) | ReceiveError::MalformedBody(_)
        ),
        "{err}"
    );
    // During a key switch both keys are configured; either order works.
    assert!(verify_with(&[other, REAL_KEY], &body).is_ok());
    assert!(verify_with(&[REAL_KEY, other], &body).is_ok());
}

#[test]
fn a_failed_refund_notification_is_refused_with_its_return_msg() {
    let body = b"<xml><return_code>FAIL</return_code><return_msg>system error</return_msg>\
                 <req_info>AAAA</req_info></xml>";
    let err = verify_with(&[REAL_KEY], body).unwrap_err();
    assert!(
        matches!(&err, ReceiveError::MalformedBody(m) if m.contains("system error")),
        "{err}"
    );
}

#[test]
fn encode_sends_what_wechat_sends_and_verify_takes_it_back() {
    let c = creds(REAL_KEY);
    let enc = refund_notify::encode(&c, &wxjava_info()).expect("encodes");
    assert_eq!(enc.content_type, "text/xml; charset=utf-8");
    assert!(enc.headers.is_empty());
    let fields = parse_xml(&enc.body).expect("parses");
    let names: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        ["return_code", "appid", "mch_id", "nonce_str", "req_info"]
    );
    assert!(
        !names.contains(&"sign"),
        "WeChat does not sign refund notifications"
    );
    let n = verify_with(&[REAL_KEY], &enc.body).expect("verifies");
    assert_eq!(n.notify_id, "50000203702017072601461713166");
    assert_eq!(n.amount.map(|a| a.minor), Some(15));
    assert_eq!(n.fields["req_info"]["total_fee"], json!("100"));
    assert_eq!(
        n.fields["req_info"]["refund_recv_accout"],
        json!("用户零钱")
    );
    // A fresh nonce on every attempt.
    let again = refund_notify::encode(&c, &wxjava_info()).expect("encodes");
    assert_ne!(enc.body, again.body);
}

#[test]
fn explain_says_a_refund_notification_is_checked_by_decryption_not_a_sign() {
    let keys = receiver_keys(&[REAL_KEY.to_string()]).expect("keys");
    let body = outer(REAL_REQ_INFO);
    let headers = vec![("Content-Type".to_string(), "text/xml".to_string())];
    let req = IncomingRequest {
        method: "POST",
        headers: &headers,
        query: "",
        body: &body,
        now: 0,
    };
    let s = herald_protocols::wechatpay_v2::explain(&keys, &req).expect("explains");
    assert!(
        s.contains("not signed") && s.contains("MD5 of <API key>"),
        "{s}"
    );
    assert!(!s.contains(REAL_KEY), "{s}");
}
