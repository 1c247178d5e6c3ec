//! `herald verify` / `sign` for the seed-era WeChat Pay (`wechatpay-legacy`) and aggregator
//! dialects (`dialect`, `--dialect epay` or a TOML file): real captures verify and explain,
//! and what `sign` prints verifies with `verify` while a changed byte does not.
use std::process::Stdio;

use serde_json::Value;
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_herald");

/// The EPay notification of the protocols tests (the EPay docs' sample values), signed with
/// this key by Python's hashlib, independently of Herald.
const EPAY_KEY: &str = "89unJUB8HZ54Hj7x4nUj56HN4nUzUJ8i";
const EPAY_QUERY: &str = "pid=1001&trade_no=20160806151343349021&out_trade_no=20160806151343349&type=alipay&name=VIP%E4%BC%9A%E5%91%98&money=1.00&trade_status=TRADE_SUCCESS&sign_type=MD5&param=&sign=3ec3bda0f65fd24c5320e7ab770b2547";
/// The 2014 WeChat query and XML of the protocols tests, signed with these test keys by
/// Python's hashlib.
const PARTNER_KEY: &str = "8934e7d15453e97507ef794cf7b0519d";
const APP_KEY: &str = "L8LrMqqeGRxST5reouB0K66CaYAWpqhAVsq7ggKkxHCOastWksvuX1uvmvQclxaHoYd3ElNBrNO2DHnnzgfVG9Qs473M3DTOZug5er46FhuGofumV8H2FVR9qkjSlC5K";
const LEGACY_QUERY: &str = "bank_billno=201409028971856&bank_type=3006&discount=0&fee_type=1&input_charset=UTF-8&notify_id=qZ6Aae9b0UKIxhbQrM8tRZ1EVUJzAu14yvcTu_URSbzAnBkJD-nu218tG8sISJCSccacsSPOey1NQhopDUdzhNqb-s0Zpe2i&out_trade_no=1409647907&partner=1220730901&product_fee=1&sign_type=MD5&time_end=20140902165147&total_fee=1&trade_mode=1&trade_state=0&transaction_id=1220730901201409023179351860&transport_fee=0&sign=AE72B3D4C3234FF185E42843869B5F0B";
const LEGACY_XML: &str = "<xml><OpenId><![CDATA[o1Ux1uHZkxsST2_8Fiy_dJfziqbQ]]></OpenId><AppId><![CDATA[wxa22b9cfd8fdec01a]]></AppId><IsSubscribe>1</IsSubscribe><TimeStamp>1407418465</TimeStamp><NonceStr><![CDATA[3ZMKJpeLwA8IpMrQ]]></NonceStr><AppSignature><![CDATA[d59e6b7825a4d3e6c0bc36d84b1e57fb349fdb61]]></AppSignature><SignMethod><![CDATA[sha1]]></SignMethod></xml>";

async fn herald(args: &[&str], stdin: &[u8]) -> (i32, String, String) {
    use tokio::io::AsyncWriteExt;
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).await.unwrap();
    drop(input);
    let out = child.wait_with_output().await.unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn verify_explain_shows_the_epay_string_to_sign_and_decodes_the_paid_order() {
    let (code, out, err) = herald(
        &[
            "verify",
            "--profile",
            "dialect",
            "--dialect",
            "epay",
            "--key",
            EPAY_KEY,
            "--method",
            "GET",
            "--query",
            EPAY_QUERY,
            "--explain",
        ],
        b"",
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("string to sign:\n(dialect epay, MD5)\nmoney=1.00&name=VIP会员&out_trade_no=20160806151343349&pid=1001&trade_no=20160806151343349021&trade_status=TRADE_SUCCESS&type=alipay<key>\n"), "{out}");
    assert!(!out.contains(EPAY_KEY));
    let json: Value = serde_json::from_str(&out[out.find("\n{").unwrap()..]).unwrap();
    assert_eq!(json["amount"]["minor"], 100);
    assert_eq!(json["event_type"], "paid");

    let bad = EPAY_QUERY.replace("money=1.00", "money=9.00");
    let (code, out, _) = herald(
        &[
            "verify",
            "--profile",
            "dialect",
            "--key",
            EPAY_KEY,
            "--method",
            "GET",
            "--query",
            &bad,
        ],
        b"",
    )
    .await;
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with("invalid: bad signature"), "{out}");
}

#[tokio::test]
async fn verify_explain_shows_both_seed_era_wechat_strings_and_checks_both_signatures() {
    let appkey = format!("appkey={APP_KEY}");
    let args = [
        "verify",
        "--profile",
        "wechatpay-legacy",
        "--key",
        PARTNER_KEY,
        "--key",
        &appkey,
        "--content-type",
        "text/xml",
        "--query",
        LEGACY_QUERY,
        "--explain",
    ];
    let (code, out, err) = herald(&args, LEGACY_XML.as_bytes()).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("&transport_fee=0&key=<partner key>"), "{out}");
    assert!(
        out.contains("appid=wxa22b9cfd8fdec01a&appkey=<app key>&issubscribe=1"),
        "{out}"
    );
    assert!(!out.contains(PARTNER_KEY) && !out.contains(APP_KEY));
    assert!(out.contains("\"notify_id\": \"qZ6Aae9b0UKIx"), "{out}");

    let tampered = LEGACY_XML.replace("<IsSubscribe>1", "<IsSubscribe>0");
    let (code, out, _) = herald(&args, tampered.as_bytes()).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("invalid: bad signature: the XML AppSignature"),
        "{out}"
    );

    // Without the app key the command explains what it needs.
    let (code, _, err) = herald(
        &[
            "verify",
            "--profile",
            "wechatpay-legacy",
            "--key",
            PARTNER_KEY,
            "--query",
            LEGACY_QUERY,
        ],
        LEGACY_XML.as_bytes(),
    )
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("appkey="), "{err}");
}

/// Splits `herald sign` output into the request line, header lines and the body.
fn signed(out: &str) -> (String, Vec<String>, String) {
    let (head, body) = out
        .split_once("\n\n")
        .expect("a blank line before the body");
    let mut lines = head.lines();
    let first = lines.next().unwrap().to_string();
    (
        first,
        lines.map(str::to_string).collect(),
        body.strip_suffix('\n').unwrap_or(body).to_string(),
    )
}

#[tokio::test]
async fn sign_then_verify_round_trips_for_legacy_epay_and_a_toml_dialect_and_a_changed_byte_fails()
{
    let dir = tempfile::tempdir().unwrap();
    let toml_path = dir.path().join("acme.toml");
    std::fs::write(
        &toml_path,
        r#"name = "acme"
canonical = "json"
key_placement = "hmac"
algorithm = "hmac-sha256"
hex_case = "upper"
signature = { header = "X-Acme-Sign" }
method = "POST"
exclude = []
ack = "OK"

[fields]
out_trade_no = "order"
amount = "cents"
amount_decimals = 0
status = "state"
paid_value = "PAID"
notify_id = "event_id"
"#,
    )
    .unwrap();
    let toml = toml_path.to_str().unwrap();
    let cases: [(&str, Vec<&str>, &str); 3] = [
        (
            "wechatpay-legacy",
            vec![],
            r#"{"out_trade_no":"C1","total_fee":100}"#,
        ),
        (
            "dialect",
            vec!["--dialect", "epay", "--field", "pid=1001"],
            r#"{"out_trade_no":"C1","trade_no":"T1","money":"1.00","trade_status":"TRADE_SUCCESS","type":"alipay","name":"x"}"#,
        ),
        (
            "dialect",
            vec!["--dialect", toml],
            r#"{"order":"C1","cents":100,"state":"PAID","event_id":"E1"}"#,
        ),
    ];
    for (i, (profile, extra, payload)) in cases.into_iter().enumerate() {
        // The generated signing key goes to a file of its own (the credentials to stderr).
        let key_out = dir.path().join(format!("signing-{i}.key"));
        let key_out = key_out.to_str().unwrap().to_string();
        let mut args = vec!["sign", "--profile", profile, "--key-out", &key_out];
        args.extend(extra.iter().copied());
        let (code, out, err) = herald(&args, payload.as_bytes()).await;
        assert_eq!(code, 0, "{profile}: {err}");
        let json_at = err.find('{').expect("generated credentials on stderr");
        let view: Value = serde_json::from_str(&err[json_at..]).expect("generated credentials");
        let (first, headers, body) = signed(&out);
        // The request line: `METHOD`, or `METHOD /?QUERY` when the profile signs a query.
        let (method, query) = match first.split_once(' ') {
            Some((m, target)) => (
                m.to_string(),
                target
                    .split_once('?')
                    .map(|(_, q)| q.to_string())
                    .unwrap_or_default(),
            ),
            None => (first.clone(), String::new()),
        };
        let mut vargs: Vec<String> = vec![
            "verify".into(),
            "--profile".into(),
            profile.into(),
            "--method".into(),
            method.clone(),
            "--query".into(),
            query.clone(),
        ];
        if profile == "wechatpay-legacy" {
            vargs.extend([
                "--key".into(),
                view["partner_key"].as_str().unwrap().into(),
                "--key".into(),
                format!("appkey={}", view["app_key"].as_str().unwrap()),
            ]);
        } else {
            vargs.extend(["--key".into(), view["key"].as_str().unwrap().into()]);
            vargs.extend(extra.iter().take(2).map(|s| s.to_string()));
        }
        for h in &headers {
            vargs.extend(["--header".into(), h.clone()]);
        }
        let argv: Vec<&str> = vargs.iter().map(String::as_str).collect();
        let (code, out, err) = herald(&argv, body.as_bytes()).await;
        assert_eq!(code, 0, "{profile} {extra:?}: {out}{err}");
        let decoded: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(decoded["out_trade_no"], "C1", "{out}");
        assert_eq!(decoded["amount"]["minor"], 100, "{out}");

        // One changed amount, wherever it travels, fails.
        let (query, body) = if body.is_empty() {
            (query.replacen("1.00", "9.00", 1), body)
        } else if query.contains("total_fee=100") {
            (query.replacen("total_fee=100", "total_fee=900", 1), body)
        } else {
            (query, body.replacen("100", "900", 1))
        };
        let qi = argv.iter().position(|a| *a == "--query").unwrap() + 1;
        let mut argv = argv.clone();
        argv[qi] = &query;
        let (code, out, _) = herald(&argv, body.as_bytes()).await;
        assert_eq!(code, 1, "{profile} {extra:?} accepted a change: {out}");
        assert!(out.starts_with("invalid: "), "{out}");
    }
}

#[tokio::test]
async fn dialect_flags_are_refused_with_a_clear_error_for_other_profiles_or_bad_files() {
    let (code, _, err) = herald(
        &[
            "verify",
            "--profile",
            "standard-webhooks",
            "--key",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "--dialect",
            "epay",
        ],
        b"",
    )
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--dialect applies to the dialect profile only"),
        "{err}"
    );
    let (code, _, err) = herald(
        &[
            "verify",
            "--profile",
            "dialect",
            "--key",
            "x",
            "--dialect",
            "paypal",
        ],
        b"",
    )
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("neither a preset (epay) nor a file"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "algorithm = \"hmac-sha256\"\nkey_placement = \"append\"\n",
    )
    .unwrap();
    let (code, _, err) = herald(
        &[
            "verify",
            "--profile",
            "dialect",
            "--key",
            "x",
            "--dialect",
            bad.to_str().unwrap(),
        ],
        b"",
    )
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--dialect"), "{err}");
}

/// `herald listen`'s receiver in this process, for `profile` with `keys` (and a dialect).
async fn listen(
    profile: herald_protocols::Profile,
    keys: &[String],
    dialect: Option<&str>,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    use std::sync::{Arc, Mutex};
    let rk = profile.receiver_keys(keys, None).unwrap();
    let rk = herald::cmd::verify::with_dialect(profile, rk, keys, dialect).unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let out = lines.clone();
    let receiver = herald::cmd::listen::Receiver {
        profile,
        keys: Arc::new(rk),
        status: None,
        forward: None,
        dump: None,
        out: Arc::new(move |l| out.lock().unwrap().push(l)),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, herald::cmd::listen::router(receiver)).await });
    (addr, lines)
}

#[tokio::test]
async fn send_delivers_an_epay_get_and_a_seed_era_wechat_post_that_listen_verifies_and_acks() {
    use herald_protocols::Profile;
    let (addr, lines) = listen(Profile::Dialect, &[EPAY_KEY.to_string()], Some("epay")).await;
    let url = format!("http://{addr}/notify");
    let (code, out, err) = herald(
        &["send", "--profile", "dialect", "--dialect", "epay", "--field", "pid=1001", "--secret", EPAY_KEY,
          "--url", &url, "--retry", "none", "--json",
          r#"{"out_trade_no":"S1","trade_no":"20261127000000000001","money":"8.80","trade_status":"TRADE_SUCCESS","type":"alipay","name":"tea"}"#],
        b"",
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("ack body:success") && out.contains("acknowledged on attempt 1"),
        "{out}"
    );
    let got = lines.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].starts_with("verified GET /notify  notify id 20261127000000000001"),
        "{}",
        got[0]
    );
    assert!(got[0].contains("\"minor\": 880"), "{}", got[0]);

    let appkey = format!("appkey={APP_KEY}");
    let (addr, lines) = listen(
        Profile::WechatPayLegacy,
        &[PARTNER_KEY.to_string(), appkey],
        None,
    )
    .await;
    let url = format!("http://{addr}/notify");
    let set = format!("app_key={APP_KEY}");
    let (code, out, err) = herald(
        &[
            "send",
            "--profile",
            "wechatpay-legacy",
            "--secret",
            PARTNER_KEY,
            "--set",
            &set,
            "--url",
            &url,
            "--retry",
            "none",
            "--json",
            r#"{"out_trade_no":"S2","total_fee":880}"#,
        ],
        b"",
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let got = lines.lock().unwrap().clone();
    assert!(
        got.len() == 1 && got[0].starts_with("verified POST /notify"),
        "{got:?}"
    );
    assert!(got[0].contains("\"out_trade_no\": \"S2\""), "{}", got[0]);

    // The wrong key: refused with "fail", which is not the ack, so send reports failure.
    let (code, out, _) = herald(
        &[
            "send",
            "--profile",
            "dialect",
            "--secret",
            "wrongkeywrongkeywrongkeywrongkey",
            "--url",
            &format!(
                "http://{}/notify",
                listen(Profile::Dialect, &[EPAY_KEY.to_string()], None)
                    .await
                    .0
            ),
            "--retry",
            "none",
            "--json",
            r#"{"out_trade_no":"S3","money":"1.00","trade_status":"TRADE_SUCCESS"}"#,
        ],
        b"",
    )
    .await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("bad-ack"), "{out}");
}
