//! The seed-era (2014, Tenpay based) WeChat Pay notification: real shapes, a sign computed
//! independently, and the round trip through Herald's own encoder.
//!
//! The query is the one a 2014 merchant logged from WeChat (WXDev's `WXPay.php` comment:
//! `bank_billno`, `bank_type=3006`, the 96-character `notify_id`, ...) with the redacted
//! `partner` and `out_trade_no` filled in; the XML body is a production capture from a 2014
//! .NET merchant (`OpenId`, `AppId`, `IsSubscribe`, `TimeStamp`, `NonceStr`, `AppSignature`,
//! `SignMethod`). Their keys were never published, so the signatures below use test keys and
//! were computed with Python's hashlib, independently of Herald:
//! `hashlib.md5("bank_billno=...&transport_fee=0&key=" + PARTNER_KEY).hexdigest().upper()` and
//! `hashlib.sha1("appid=...&appkey=" + APP_KEY + "&issubscribe=1&...").hexdigest()`.
use herald_protocols::receive::{IncomingRequest, ReceiveError};
use herald_protocols::wechatpay_legacy as legacy;
use herald_protocols::{AckRule, OutgoingNotification, Profile, ProfileError};
use serde_json::json;

const PARTNER_KEY: &str = "8934e7d15453e97507ef794cf7b0519d";
const APP_KEY: &str = "L8LrMqqeGRxST5reouB0K66CaYAWpqhAVsq7ggKkxHCOastWksvuX1uvmvQclxaHoYd3ElNBrNO2DHnnzgfVG9Qs473M3DTOZug5er46FhuGofumV8H2FVR9qkjSlC5K";
const QUERY: &str = "bank_billno=201409028971856&bank_type=3006&discount=0&fee_type=1&input_charset=UTF-8&notify_id=qZ6Aae9b0UKIxhbQrM8tRZ1EVUJzAu14yvcTu_URSbzAnBkJD-nu218tG8sISJCSccacsSPOey1NQhopDUdzhNqb-s0Zpe2i&out_trade_no=1409647907&partner=1220730901&product_fee=1&sign_type=MD5&time_end=20140902165147&total_fee=1&trade_mode=1&trade_state=0&transaction_id=1220730901201409023179351860&transport_fee=0&sign=AE72B3D4C3234FF185E42843869B5F0B";
const XML: &str = "<xml><OpenId><![CDATA[o1Ux1uHZkxsST2_8Fiy_dJfziqbQ]]></OpenId><AppId><![CDATA[wxa22b9cfd8fdec01a]]></AppId><IsSubscribe>1</IsSubscribe><TimeStamp>1407418465</TimeStamp><NonceStr><![CDATA[3ZMKJpeLwA8IpMrQ]]></NonceStr><AppSignature><![CDATA[d59e6b7825a4d3e6c0bc36d84b1e57fb349fdb61]]></AppSignature><SignMethod><![CDATA[sha1]]></SignMethod></xml>";

fn keys() -> herald_protocols::ReceiverKeys {
    Profile::WechatPayLegacy
        .receiver_keys(&[PARTNER_KEY.into(), format!("appkey={APP_KEY}")], None)
        .unwrap()
}

fn request<'a>(
    headers: &'a [(String, String)],
    query: &'a str,
    body: &'a [u8],
) -> IncomingRequest<'a> {
    IncomingRequest {
        method: "POST",
        headers,
        query,
        body,
        now: 1_409_647_907,
    }
}

fn xml_headers() -> Vec<(String, String)> {
    vec![("Content-Type".into(), "text/xml".into())]
}

#[test]
fn a_2014_notification_verifies_both_signatures_and_decodes_a_paid_order() {
    let h = xml_headers();
    let n = Profile::WechatPayLegacy
        .verify(&keys(), &request(&h, QUERY, XML.as_bytes()))
        .unwrap();
    assert_eq!(n.profile.name(), "wechatpay-legacy");
    assert_eq!(n.notify_id, "qZ6Aae9b0UKIxhbQrM8tRZ1EVUJzAu14yvcTu_URSbzAnBkJD-nu218tG8sISJCSccacsSPOey1NQhopDUdzhNqb-s0Zpe2i");
    assert_eq!(n.out_trade_no.as_deref(), Some("1409647907"));
    assert_eq!(
        n.transaction_id.as_deref(),
        Some("1220730901201409023179351860")
    );
    assert_eq!(
        n.amount.as_ref().map(|a| (a.minor, a.currency.as_str())),
        Some((1, "CNY"))
    );
    assert_eq!(n.status.as_deref(), Some("0"));
    assert_eq!(n.app_id.as_deref(), Some("wxa22b9cfd8fdec01a"));
    assert_eq!(n.merchant_id.as_deref(), Some("1220730901"));
    assert_eq!(n.fields["OpenId"], "o1Ux1uHZkxsST2_8Fiy_dJfziqbQ");
    assert_eq!(n.fields["bank_type"], "3006");
}

#[test]
fn explain_shows_both_strings_to_sign_with_the_keys_masked() {
    let h = xml_headers();
    let s = Profile::WechatPayLegacy
        .explain(&keys(), &request(&h, QUERY, XML.as_bytes()))
        .unwrap();
    assert!(s.contains("bank_billno=201409028971856&bank_type=3006&discount=0&fee_type=1&input_charset=UTF-8&notify_id="), "{s}");
    assert!(s.contains("&trade_state=0&transaction_id=1220730901201409023179351860&transport_fee=0&key=<partner key>"), "{s}");
    assert!(s.contains("appid=wxa22b9cfd8fdec01a&appkey=<app key>&issubscribe=1&noncestr=3ZMKJpeLwA8IpMrQ&openid=o1Ux1uHZkxsST2_8Fiy_dJfziqbQ&timestamp=1407418465"), "{s}");
    assert!(!s.contains(PARTNER_KEY) && !s.contains(APP_KEY));
}

#[test]
fn a_changed_query_value_or_xml_value_or_wrong_key_is_a_bad_signature() {
    let h = xml_headers();
    let cases = [
        (
            QUERY.replace("total_fee=1&", "total_fee=100&"),
            XML.to_string(),
        ),
        (
            QUERY.replace("trade_state=0", "trade_state=1"),
            XML.to_string(),
        ),
        (QUERY.to_string(), XML.replace("o1Ux1uHZ", "o1Ux1uHA")),
        (
            QUERY.to_string(),
            XML.replace("<IsSubscribe>1", "<IsSubscribe>0"),
        ),
    ];
    for (q, x) in &cases {
        let err = Profile::WechatPayLegacy
            .verify(&keys(), &request(&h, q, x.as_bytes()))
            .unwrap_err();
        assert!(matches!(err, ReceiveError::BadSignature(_)), "{err}");
    }
    let wrong = Profile::WechatPayLegacy
        .receiver_keys(&["0".repeat(32), format!("appkey={APP_KEY}")], None)
        .unwrap();
    let err = Profile::WechatPayLegacy
        .verify(&wrong, &request(&h, QUERY, XML.as_bytes()))
        .unwrap_err();
    assert!(err.to_string().contains("partner key"), "{err}");
}

#[test]
fn the_query_sign_is_compared_case_insensitively_like_tenpay() {
    let h = xml_headers();
    let lower = QUERY.replace(
        "AE72B3D4C3234FF185E42843869B5F0B",
        "ae72b3d4c3234ff185e42843869b5f0b",
    );
    assert!(Profile::WechatPayLegacy
        .verify(&keys(), &request(&h, &lower, XML.as_bytes()))
        .is_ok());
}

#[test]
fn a_missing_query_or_body_or_app_key_is_refused_with_a_clear_error() {
    let h = xml_headers();
    let err = Profile::WechatPayLegacy
        .verify(&keys(), &request(&h, "", XML.as_bytes()))
        .unwrap_err();
    assert!(matches!(err, ReceiveError::Missing(_)), "{err}");
    let err = Profile::WechatPayLegacy
        .verify(&keys(), &request(&h, QUERY, b""))
        .unwrap_err();
    assert!(matches!(err, ReceiveError::MalformedBody(_)), "{err}");
    let doctype = format!("<!DOCTYPE x [<!ENTITY a \"b\">]>{XML}");
    assert!(Profile::WechatPayLegacy
        .verify(&keys(), &request(&h, QUERY, doctype.as_bytes()))
        .is_err());
    let err = Profile::WechatPayLegacy
        .receiver_keys(&[PARTNER_KEY.into()], None)
        .unwrap_err();
    assert!(err.to_string().contains("appkey="), "{err}");
    assert!(!err.to_string().contains(PARTNER_KEY));
}

#[test]
fn herald_encodes_a_query_and_xml_that_the_receiver_verifies_as_paid() {
    let (creds, view) = Profile::WechatPayLegacy
        .create_credentials(&json!({"partner_key": PARTNER_KEY, "app_key": APP_KEY, "partner": "1220730901", "appid": "wxa22b9cfd8fdec01a"}))
        .unwrap();
    assert_eq!(view["partner_key"], PARTNER_KEY);
    let public = Profile::WechatPayLegacy.public_view(&creds);
    assert_eq!(
        public,
        json!({"appid": "wxa22b9cfd8fdec01a", "partner": "1220730901"})
    );
    let id = Profile::WechatPayLegacy.new_notify_id();
    assert_eq!(id.len(), 96);
    let payload =
        br#"{"out_trade_no":"A1","total_fee":880,"openid":"oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"}"#;
    let req = Profile::WechatPayLegacy
        .encode(
            &creds,
            &OutgoingNotification {
                notify_id: &id,
                event_type: "trade.success",
                payload,
                timestamp: herald_protocols::UnixSeconds::new(1_409_647_907),
                created_at: herald_protocols::UnixSeconds::new(1_409_647_907),
            },
        )
        .unwrap();
    assert_eq!(req.method, "POST");
    for field in [
        "bank_type=WX",
        "fee_type=1",
        "input_charset=UTF-8",
        "partner=1220730901",
        "product_fee=880",
        "sign_type=MD5",
        "time_end=20140902165147",
        "total_fee=880",
        "trade_mode=1",
        "trade_state=0",
        "transport_fee=0",
    ] {
        assert!(
            req.query.split('&').any(|p| p == field),
            "{field} in {}",
            req.query
        );
    }
    let body = String::from_utf8(req.body.clone()).unwrap();
    assert!(body.starts_with("<xml><OpenId><![CDATA[oUpF8uMuAJO_M2pxb1Q9zNjWeS6o]]></OpenId><AppId><![CDATA[wxa22b9cfd8fdec01a]]></AppId><IsSubscribe>1</IsSubscribe><TimeStamp>1409647907</TimeStamp>"), "{body}");
    assert!(
        body.ends_with("<SignMethod><![CDATA[sha1]]></SignMethod></xml>"),
        "{body}"
    );
    let headers = vec![("Content-Type".to_string(), req.content_type.clone())];
    let n = Profile::WechatPayLegacy
        .verify(&keys(), &request(&headers, &req.query, &req.body))
        .unwrap();
    assert_eq!(n.notify_id, id);
    assert_eq!(n.amount.map(|a| a.minor), Some(880));
    assert_eq!(n.status.as_deref(), Some("0"));
    assert!(legacy::default_ack().is_ack(200, b"success"));
    assert_eq!(
        Profile::WechatPayLegacy.default_ack(),
        AckRule::Body("success".into())
    );
    let ack = Profile::WechatPayLegacy.ack_reply();
    assert_eq!(ack.body, b"success");
    let fail = Profile::WechatPayLegacy.failure_reply("no");
    assert!(!Profile::WechatPayLegacy
        .default_ack()
        .is_ack(fail.status, &fail.body));
}

#[test]
fn encode_refuses_payloads_without_an_order_or_a_whole_fen_amount() {
    let (creds, _) = Profile::WechatPayLegacy
        .create_credentials(&json!(null))
        .unwrap();
    for payload in [
        r#"{"total_fee":1}"#,
        r#"{"out_trade_no":"A1"}"#,
        r#"{"out_trade_no":"A1","total_fee":"1.00"}"#,
        r#"{"out_trade_no":"A1","total_fee":1,"sign":"x"}"#,
        r#"{"out_trade_no":"A1","total_fee":1,"Bad Name":"x"}"#,
        r#"{"out_trade_no":"A1","total_fee":1,"input_charset":"GBK"}"#,
        r#"[1]"#,
    ] {
        let err = Profile::WechatPayLegacy
            .encode(
                &creds,
                &OutgoingNotification {
                    notify_id: "n1",
                    event_type: "trade.success",
                    payload: payload.as_bytes(),
                    timestamp: herald_protocols::UnixSeconds::new(1),
                    created_at: herald_protocols::UnixSeconds::new(1),
                },
            )
            .unwrap_err();
        assert!(matches!(err, ProfileError::Encode(_)), "{payload}: {err}");
    }
}

#[test]
fn credentials_never_show_keys_in_debug_or_errors() {
    let (creds, _) = Profile::WechatPayLegacy
        .create_credentials(&json!({"partner_key": PARTNER_KEY, "app_key": APP_KEY}))
        .unwrap();
    let dbg = format!("{creds:?}");
    assert!(
        !dbg.contains(PARTNER_KEY) && !dbg.contains(&APP_KEY[..20]),
        "{dbg}"
    );
    let err = Profile::WechatPayLegacy
        .create_credentials(&json!({"partner_key": "has space secretvalue"}))
        .unwrap_err();
    assert!(!err.to_string().contains("secretvalue"), "{err}");
    let keys = format!("{:?}", keys());
    assert!(!keys.contains(PARTNER_KEY), "{keys}");
}
