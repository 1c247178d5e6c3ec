//! The `herald` binary itself: crash safety under `kill -9`, the admin token printed once,
//! `send`, `listen` and `--help`.
mod common;

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Receiver, Reply};
use herald_protocols::standard_webhooks::{self as sw, SigningSecret};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_herald");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Proc {
    child: Child,
    base: String,
    stdout_lines: Vec<String>,
}

async fn serve(db: &std::path::Path, port: u16, extra: &[&str]) -> Proc {
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--db",
            &format!("sqlite://{}", db.display()),
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--allow-private-targets",
        ])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn herald");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut stdout_lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    // The first line says it listens; a generated token follows on the next lines.
    while let Ok(Ok(Some(line))) = tokio::time::timeout_at(deadline.into(), lines.next_line()).await
    {
        let done = line.starts_with("Use it as")
            || (line.starts_with("Herald is listening") && extra.contains(&"--admin-token"));
        stdout_lines.push(line);
        if done {
            break;
        }
        if stdout_lines.len() == 1 {
            // Without a generated token there is no second line: give it a moment.
            if let Ok(Ok(Some(next))) =
                tokio::time::timeout(Duration::from_millis(500), lines.next_line()).await
            {
                let done = next.starts_with("Use it as");
                stdout_lines.push(next);
                if done {
                    break;
                }
            } else {
                break;
            }
        }
    }
    assert!(
        stdout_lines
            .first()
            .is_some_and(|l| l.starts_with("Herald is listening")),
        "{stdout_lines:?}"
    );
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Proc {
        child,
        base: format!("http://127.0.0.1:{port}"),
        stdout_lines,
    }
}

async fn call(
    base: &str,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let client = reqwest::Client::new();
    let mut req = client
        .request(method.parse().unwrap(), format!("{base}{path}"))
        .header("authorization", format!("Bearer {token}"));
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let v = serde_json::from_slice::<Value>(&resp.bytes().await.unwrap_or_default())
        .unwrap_or(Value::Null);
    (status, v)
}

#[tokio::test]
async fn acknowledged_notifications_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("herald.db");
    let port = free_port();
    let token = "kill-test-token";
    let rx = Receiver::start(|_, _| Reply::Hang).await;
    let mut p = serve(&db, port, &["--admin-token", token]).await;
    let (_, app) = call(
        &p.base,
        token,
        "POST",
        "/v1/apps",
        Some(json!({"name": "crash"})),
    )
    .await;
    let app = app["id"].as_str().unwrap().to_string();
    let (s, _) = call(
        &p.base,
        token,
        "POST",
        &format!("/v1/apps/{app}/endpoints"),
        Some(json!({"url": rx.url("/"), "retry": [3600]})),
    )
    .await;
    assert_eq!(s, 201);
    // Concurrent producers; every 202 is a promise.
    let mut tasks = Vec::new();
    for i in 0..40 {
        let base = p.base.clone();
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            call(
                &base,
                token,
                "POST",
                &format!("/v1/apps/{app}/notifications"),
                Some(json!({"event_type": "e", "payload": {"i": i}})),
            )
            .await
        }));
    }
    let mut accepted = Vec::new();
    for t in tasks {
        let (status, v) = t.await.unwrap();
        assert_eq!(status, 202);
        accepted.push(v["id"].as_str().unwrap().to_string());
    }
    rx.wait_count(8).await;
    p.child.start_kill().unwrap(); // SIGKILL
    p.child.wait().await.unwrap();

    rx.set_script(|_, _| Reply::Status(204, ""));
    let p = serve(&db, port, &["--admin-token", token]).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    for id in &accepted {
        loop {
            let (status, v) = call(
                &p.base,
                token,
                "GET",
                &format!("/v1/notifications/{id}"),
                None,
            )
            .await;
            assert_eq!(status, 200, "an acknowledged notification was lost: {id}");
            if v["status"] == "succeeded" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "not delivered after restart: {v}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let delivered: std::collections::HashSet<i64> = rx
        .received()
        .iter()
        .filter_map(|r| r.json()["i"].as_i64())
        .collect();
    assert_eq!(delivered.len(), 40);
}

#[tokio::test]
async fn generated_admin_token_is_printed_once_and_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("herald.db");
    let port = free_port();
    let mut first = serve(&db, port, &[]).await;
    let line = first
        .stdout_lines
        .iter()
        .find(|l| l.contains("Admin token"))
        .cloned()
        .expect("token printed");
    let token = line.rsplit(' ').next().unwrap().to_string();
    assert!(token.starts_with("hrd_"), "{line}");
    let (status, _) = call(
        &first.base,
        &token,
        "POST",
        "/v1/apps",
        Some(json!({"name": "a"})),
    )
    .await;
    assert_eq!(status, 201);
    first.child.start_kill().unwrap();
    first.child.wait().await.unwrap();

    let second = serve(&db, port, &[]).await;
    assert!(
        !second.stdout_lines.iter().any(|l| l.contains("hrd_")),
        "printed again: {:?}",
        second.stdout_lines
    );
    let (status, _) = call(
        &second.base,
        &token,
        "POST",
        "/v1/apps",
        Some(json!({"name": "b"})),
    )
    .await;
    assert_eq!(status, 201);
    let (status, _) = call(
        &second.base,
        "hrd_wrong",
        "POST",
        "/v1/apps",
        Some(json!({"name": "c"})),
    )
    .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn send_shows_each_attempt_and_exits_zero_once_acknowledged() {
    let rx = Receiver::start(|n, _| {
        if n == 0 {
            Reply::Status(500, "not yet")
        } else {
            Reply::Status(204, "")
        }
    })
    .await;
    let out = Command::new(BIN)
        .args([
            "send",
            "--url",
            &rx.url("/hook"),
            "--secret",
            common::SECRET,
            "--json",
            "{\"order\": 42}",
            "--retry",
            "0.1",
        ])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("attempt 1  HTTP 500"), "{stdout}");
    assert!(stdout.contains("attempt 2  HTTP 204"), "{stdout}");
    assert!(stdout.contains("acknowledged on attempt 2"), "{stdout}");
    let got = rx.received();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].header("webhook-id"), got[1].header("webhook-id"));
    assert_eq!(&got[1].body[..], b"{\"order\": 42}");
}

#[tokio::test]
async fn send_exits_one_when_never_acknowledged_and_two_on_bad_input() {
    let rx = Receiver::start(|_, _| Reply::Status(500, "")).await;
    let out = Command::new(BIN)
        .args([
            "send",
            "--url",
            &rx.url("/"),
            "--secret",
            common::SECRET,
            "--json",
            "{}",
            "--retry",
            "none",
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("failed: not acknowledged after 1 attempts")
    );

    for (args, needle) in [
        (vec!["--secret", "nope", "--json", "{}"], "--secret"),
        (vec!["--secret", common::SECRET, "--json", "{"], "--json"),
        (
            vec![
                "--secret",
                common::SECRET,
                "--json",
                "{}",
                "--retry",
                "later",
            ],
            "--retry",
        ),
    ] {
        let out = Command::new(BIN)
            .args(["send", "--url", &rx.url("/")])
            .args(&args)
            .output()
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    assert_eq!(rx.count(), 1, "bad input sent nothing");
}

#[tokio::test]
async fn listen_verifies_acks_and_rejects_tampered_requests() {
    let lines = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = lines.clone();
    let addr = start_listen(None, Arc::new(move |l| sink.lock().unwrap().push(l))).await;
    let now = herald_engine::now_ms().to_seconds().get();
    let body = br#"{"a":1}"#;
    let sig = sw::sign(
        "msg_1",
        now,
        body,
        &[SigningSecret::parse(common::SECRET).unwrap()],
    );
    let client = reqwest::Client::new();
    let send = |body: &'static [u8]| {
        client
            .post(format!("http://{addr}/hook"))
            .header("webhook-id", "msg_1")
            .header("webhook-timestamp", now.to_string())
            .header("webhook-signature", sig.clone())
            .body(body)
            .send()
    };
    assert_eq!(send(body).await.unwrap().status().as_u16(), 204);
    let tampered = send(br#"{"a":2}"#).await.unwrap();
    assert_eq!(tampered.status().as_u16(), 400);
    let lines = lines.lock().unwrap();
    assert!(lines[0].starts_with("verified POST /hook"), "{lines:?}");
    assert!(
        lines[1].contains("invalid") && lines[1].contains("no signature"),
        "{lines:?}"
    );
}

/// A developer's app for `listen --forward`: records what reaches it and answers `status`.
async fn forward_target(
    status: u16,
) -> (
    std::net::SocketAddr,
    Arc<std::sync::Mutex<Vec<(axum::http::HeaderMap, Vec<u8>)>>>,
) {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let rec = seen.clone();
    let app = axum::Router::new().fallback(
        move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let rec = rec.clone();
            async move {
                rec.lock().unwrap().push((headers, body.to_vec()));
                axum::http::StatusCode::from_u16(status).unwrap()
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, seen)
}

/// `herald listen` for standard-webhooks with the test secret, on a free port.
async fn start_listen(
    forward: Option<herald::cmd::listen::Forward>,
    out: Arc<dyn Fn(String) + Send + Sync>,
) -> std::net::SocketAddr {
    let profile = herald_protocols::Profile::StandardWebhooks;
    let receiver = herald::cmd::listen::Receiver {
        profile,
        keys: Arc::new(
            profile
                .receiver_keys(&[common::SECRET.to_string()], None)
                .unwrap(),
        ),
        status: None,
        forward,
        dump: None,
        out,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, herald::cmd::listen::router(receiver)).await });
    addr
}

async fn forwarding_listener(forward_to: String, raw: bool) -> std::net::SocketAddr {
    let forward = herald::cmd::listen::Forward::new(&forward_to, raw).unwrap();
    start_listen(Some(forward), Arc::new(|_| {})).await
}

async fn post_signed(addr: std::net::SocketAddr, body: &'static [u8]) -> reqwest::Response {
    let now = herald_engine::now_ms().to_seconds().get();
    let sig = sw::sign(
        "msg_fw",
        now,
        body,
        &[SigningSecret::parse(common::SECRET).unwrap()],
    );
    reqwest::Client::new()
        .post(format!("http://{addr}/notify"))
        .header("content-type", "application/json")
        .header("webhook-id", "msg_fw")
        .header("webhook-timestamp", now.to_string())
        .header("webhook-signature", sig)
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn listen_forward_sends_the_decoded_notification_and_acks_only_after_the_app_took_it() {
    let (app, seen) = forward_target(200).await;
    let listen = forwarding_listener(format!("http://{app}/hooks"), false).await;
    let resp = post_signed(
        listen,
        br#"{"out_trade_no":"o-1","amount":100,"currency":"usd"}"#,
    )
    .await;
    assert_eq!(resp.status().as_u16(), 204, "acked after the forward");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    let (headers, body) = &seen[0];
    assert_eq!(headers["x-herald-notify-id"], "msg_fw");
    assert_eq!(headers["x-herald-profile"], "standard-webhooks");
    let json: serde_json::Value = serde_json::from_slice(body).unwrap();
    assert_eq!(json["notify_id"], "msg_fw");
    assert_eq!(json["out_trade_no"], "o-1");
    assert_eq!(json["amount"]["minor"], 100);
    assert_eq!(json["amount"]["currency"], "USD");
}

#[tokio::test]
async fn listen_forward_refuses_the_provider_when_the_app_fails_or_is_down() {
    let (app, seen) = forward_target(500).await;
    let listen = forwarding_listener(format!("http://{app}/hooks"), false).await;
    let resp = post_signed(listen, br#"{"a":1}"#).await;
    assert_eq!(resp.status().as_u16(), 400, "the provider must send again");
    assert_eq!(seen.lock().unwrap().len(), 1);

    // Nothing listens on this port: connection refused is a failure reply too.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = closed.local_addr().unwrap();
    drop(closed);
    let listen = forwarding_listener(format!("http://{dead}/hooks"), false).await;
    let resp = post_signed(listen, br#"{"a":1}"#).await;
    assert_eq!(resp.status().as_u16(), 400);
    let text = resp.text().await.unwrap();
    assert!(text.contains("forward"), "{text}");
}

#[tokio::test]
async fn listen_forward_raw_passes_the_original_signed_request_through() {
    let (app, seen) = forward_target(204).await;
    let listen = forwarding_listener(format!("http://{app}/hooks"), true).await;
    let body: &'static [u8] = br#"{"b":2}"#;
    let resp = post_signed(listen, body).await;
    assert_eq!(resp.status().as_u16(), 204);
    let seen = seen.lock().unwrap();
    let (headers, got) = &seen[0];
    assert_eq!(got.as_slice(), body, "byte for byte");
    assert_eq!(headers["webhook-id"], "msg_fw");
    assert!(headers.contains_key("webhook-signature"));
    assert_eq!(headers["content-type"], "application/json");
}

#[tokio::test]
async fn help_teaches_each_command() {
    for (cmd, needles) in [
        (
            "serve",
            vec![
                "--db",
                "--allow-private-targets",
                "HERALD_ADMIN_TOKEN",
                "--config",
                "--retention",
                "--breaker-failures",
                "--disable-after",
                "--log-format",
            ],
        ),
        ("purge", vec!["--db", "--older-than"]),
        (
            "send",
            vec![
                "--url",
                "--secret",
                "--retry",
                "--ack",
                "--profile",
                "--set",
            ],
        ),
        (
            "listen",
            vec!["--port", "--secret", "--status", "--forward", "--dump"],
        ),
        ("verify", vec!["--request", "--explain", "--key"]),
        ("sign", vec!["--key-out", "--profile", "--set"]),
        ("demo", vec!["--query-after-secs", "--host"]),
    ] {
        let out = Command::new(BIN)
            .args([cmd, "--help"])
            .output()
            .await
            .unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        for n in needles {
            assert!(text.contains(n), "herald {cmd} --help lacks {n}:\n{text}");
        }
    }
}

/// Runs `herald` with `stdin` and returns (exit code, stdout, stderr).
async fn herald_with_input(args: &[&str], stdin: &[u8]) -> (i32, String, String) {
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

/// Splits `herald sign` output into headers and body.
fn signed_request(out: &str) -> (Vec<String>, String) {
    let (head, body) = out
        .split_once("\n\n")
        .expect("a blank line before the body");
    let headers = head.lines().skip(1).map(str::to_string).collect();
    (headers, body.strip_suffix('\n').unwrap_or(body).to_string())
}

#[tokio::test]
async fn sign_then_verify_round_trips_for_every_profile_and_a_changed_byte_fails() {
    let cases: [(&str, &str, &str); 5] = [
        (
            "standard-webhooks",
            r#"{"out_trade_no":"C1","amount":100,"currency":"cny"}"#,
            "secret",
        ),
        (
            "alipay",
            r#"{"out_trade_no":"C1","trade_no":"T1","total_amount":"1.00","trade_status":"TRADE_SUCCESS"}"#,
            "public_key",
        ),
        (
            "wechatpay-v2",
            r#"{"out_trade_no":"C1","transaction_id":"T1","total_fee":100}"#,
            "api_key",
        ),
        (
            "wechatpay-v3",
            r#"{"out_trade_no":"C1","transaction_id":"T1","trade_state":"SUCCESS","amount":{"total":100,"currency":"CNY"}}"#,
            "public_key",
        ),
        (
            "stripe",
            r#"{"id":"pi_1","amount":100,"currency":"cny","metadata":{"out_trade_no":"C1"}}"#,
            "secret",
        ),
    ];
    for (profile, payload, key_field) in cases {
        let (code, out, err) = herald_with_input(
            &[
                "sign",
                "--profile",
                profile,
                "--event-type",
                "TRANSACTION.SUCCESS",
                "--key-out",
                &std::env::temp_dir()
                    .join(format!(
                        "herald-cli-test-{}-{profile}.key",
                        std::process::id()
                    ))
                    .display()
                    .to_string(),
            ],
            payload.as_bytes(),
        )
        .await;
        assert_eq!(code, 0, "{profile}: {err}");
        let view: Value = serde_json::from_str(&err[err.find('{').expect("a JSON view")..])
            .expect("generated credentials on stderr");
        let mut key = view[key_field].as_str().unwrap().to_string();
        if profile == "wechatpay-v3" {
            key = format!("{}={key}", view["serial"].as_str().unwrap());
        }
        let (headers, body) = signed_request(&out);
        let mut args: Vec<String> = vec![
            "verify".into(),
            "--profile".into(),
            profile.into(),
            "--key".into(),
            key.clone(),
        ];
        for h in &headers {
            args.push("--header".into());
            args.push(h.clone());
        }
        if profile == "wechatpay-v3" {
            args.push("--decrypt-key".into());
            args.push(view["api_v3_key"].as_str().unwrap().into());
        }
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, out, err) = herald_with_input(&argv, body.as_bytes()).await;
        assert_eq!(code, 0, "{profile}: {out}{err}");
        let decoded: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(decoded["out_trade_no"], "C1", "{profile}: {out}");
        assert_eq!(decoded["amount"]["minor"], 100, "{profile}: {out}");

        let tampered = body.replacen("100", "900", 1).replacen("1.00", "9.00", 1);
        let tampered = if tampered == body {
            format!("{body} ")
        } else {
            tampered
        };
        let (code, out, _) = herald_with_input(&argv, tampered.as_bytes()).await;
        assert_eq!(code, 1, "{profile} accepted a changed body: {out}");
        assert!(out.starts_with("invalid: "), "{out}");
    }
}

#[tokio::test]
async fn verify_explain_shows_the_alipay_string_to_sign_of_the_published_vector() {
    // The published vectors, test data in the repository: a missing file fails the test.
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../herald-protocols/tests/data/given.json"
    );
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read the published vectors at {path}: {e}"));
    let given: Value = serde_json::from_str(&text).unwrap();
    let v = &given["alipay"][0];
    let key = v["public_key_spki_base64"].as_str().unwrap();
    let form = v["form_body"].as_str().unwrap();
    let (code, out, err) = herald_with_input(
        &[
            "verify",
            "--profile",
            "alipay",
            "--key",
            key,
            "--content-type",
            "application/x-www-form-urlencoded; charset=utf-8",
            "--explain",
        ],
        form.as_bytes(),
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(v["string_to_sign"].as_str().unwrap()), "{out}");
    assert!(
        out.contains("\"notify_id\": \"2019081500222155624068450559358070\""),
        "{out}"
    );
    assert!(out.contains("\"minor\": 10"), "{out}");
}

#[tokio::test]
async fn verify_rejects_a_wechat_probe_and_reports_usage_errors() {
    let payload = r#"{"out_trade_no":"P1","transaction_id":"T1","trade_state":"SUCCESS","amount":{"total":1,"currency":"CNY"}}"#;
    let (code, out, err) = herald_with_input(
        &[
            "sign",
            "--profile",
            "wechatpay-v3",
            "--event-type",
            "TRANSACTION.SUCCESS",
            "--key-out",
            &std::env::temp_dir()
                .join(format!("herald-cli-test-{}-probe.key", std::process::id()))
                .display()
                .to_string(),
        ],
        payload.as_bytes(),
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let view: Value = serde_json::from_str(&err[err.find('{').unwrap()..]).unwrap();
    let key = format!(
        "{}={}",
        view["serial"].as_str().unwrap(),
        view["public_key"].as_str().unwrap()
    );
    let (headers, body) = signed_request(&out);
    let mut args: Vec<String> = vec![
        "verify".into(),
        "--profile".into(),
        "wechatpay-v3".into(),
        "--key".into(),
        key,
    ];
    args.push("--decrypt-key".into());
    args.push(view["api_v3_key"].as_str().unwrap().into());
    for h in &headers {
        args.push("--header".into());
        if h.to_ascii_lowercase().starts_with("wechatpay-signature:") {
            args.push("Wechatpay-Signature: WECHATPAY/SIGNTEST/abc".into());
        } else {
            args.push(h.clone());
        }
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, _) = herald_with_input(&argv, body.as_bytes()).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("probe"), "{out}");

    let (code, out, _) = herald_with_input(
        &[
            "verify",
            "--profile",
            "wechatpay-v3",
            "--key",
            "nonsense",
            "--decrypt-key",
            "x",
        ],
        b"{}",
    )
    .await;
    assert_eq!(code, 2, "a bad key is a usage error: {out}");
    let (code, _, err) =
        herald_with_input(&["verify", "--profile", "paypal", "--key", "k"], b"").await;
    assert_eq!(code, 2);
    assert!(err.contains("unknown profile"), "{err}");
}

// ---------------------------------------------------------------------------------------
// verify / listen on real WeChat Pay v2 refund notifications and incomplete signed bodies

/// A real refund notification's `req_info` and its merchant key, quoted by several WeChat
/// SDKs' tests (silenceper/wechat `pay/notify/refund_test.go`, data source
/// studygolang.com/articles/11811; go-pay/gopay `TestDecryptRefundNotifyReqInfo`), in the
/// outer XML WeChat sends (binarywang/WxJava `WxPayRefundNotifyResultTest`).
const REAL_WX_KEY: &str = "ziR0QKsTUfMOuochC9RfCdmfHECorQAP";
const REAL_REFUND_NOTIFY: &str = "<xml><return_code>SUCCESS</return_code><appid><![CDATA[wx2421b1c4370ec43b]]></appid><mch_id><![CDATA[10000100]]></mch_id><nonce_str><![CDATA[1ee38e38b04990449808688cf3a763b7]]></nonce_str><req_info><![CDATA[YYwp8C48th0wnQzTqeI+41pflB26v+smFj9z6h9RPBgxTyZyxc+4YNEz7QEgZNWj/6rIb2MfyWMZmCc41CfjKSssoSZPXxOhUayb6KvNSZ1p6frOX1PDWzhyruXK7ouNND+gDsG4yZ0XXzsL4/pYNwLLba/71QrnkJ/BHcByk4EXnglju5DLup9pJQSnTxjomI9Rxu57m9jg5lLQFxMWXyeASZJNvof0ulnHlWJswS4OxKOkmW7VEyKyLGV6npoOm03Qsx2wkRxLsSa9gPpg4hdaReeUqh1FMbm7aWjyrVYT/MEZWg98p4GomEIYvz34XfDncTezX4bf/ZiSLXt79aE1/YTZrYfymXeCrGjlbe0rg/T2ezJHAC870u2vsVbY1/KcE2A443N+DEnAziXlBQ1AeWq3Rqk/O6/TMM0lomzgctAOiAMg+bh5+Gu1ubA9O3E+vehULydD5qx2o6i3+qA9ORbH415NyRrQdeFq5vmCiRikp5xYptWiGZA0tkoaLKMPQ4ndE5gWHqiBbGPfULZWokI+QjjhhBmwgbd6J0VqpRorwOuzC/BHdkP72DCdNcm7IDUpggnzBIy0+seWIkcHEryKjge3YDHpJeQCqrAH0CgxXHDt1xtbQbST1VqFyuhPhUjDXMXrknrGPN/oE1t0rLRq+78cI+k8xe5E6seeUXQsEe8r3358mpcDYSmXWSXVZxK6er9EF98APqHwcndyEJD2YyCh/mMVhERuX+7kjlRXSiNUWa/Cv/XAKFQuvUYA5ea2eYWtPRHa4DpyuF1SNsaqVKfgqKXZrJHfAgslVpSVqUpX4zkKszHF4kwMZO3M7J1P94Mxa7Tm9mTOJePOoHPXeEB+m9rX6pSfoi3mJDQ5inJ+Vc4gOkg/Wd/lqiy6TTyP/dHDN6/v+AuJx5AXBo/2NDD3fWhHjkqEKIuARr2ClZt9ZRQO4HkXdZo7CN06sGCHk48Tg8PmxnxKcMZm7Aoquv5yMIM2gWSWIRJhwJ8cUpafIHc+GesDlbF6Zbt+/KXkafJAQq2RklEN+WvZ/zFz113EPgWPjp16TwBoziq96MMekvWKY/vdhjol8VFtGH9F61Oy1Xwf6DJtPw==]]></req_info></xml>";

#[tokio::test]
async fn verify_decrypts_and_shows_a_real_wechat_v2_refund_notification() {
    let args = [
        "verify",
        "--profile",
        "wechatpay-v2",
        "--key",
        REAL_WX_KEY,
        "--content-type",
        "text/xml",
    ];
    let (code, out, err) = herald_with_input(&args, REAL_REFUND_NOTIFY.as_bytes()).await;
    assert_eq!(code, 0, "{out}{err}");
    let n: Value = serde_json::from_str(&out).expect("the decoded notification as JSON");
    assert_eq!(n["notify_id"], "50000404922017112502468056157");
    assert_eq!(n["out_trade_no"], "4893e76d8c8b434cb64e9cd536338e33");
    assert_eq!(n["amount"]["minor"], 6);
    assert_eq!(n["status"], "SUCCESS");
    assert_eq!(
        n["fields"]["req_info"]["refund_recv_accout"],
        "支付用户零钱"
    );
    assert_eq!(
        n["fields"]["req_info"]["success_time"],
        "2017-11-25 15:36:17"
    );
    // Another merchant's key: the req_info does not decrypt.
    let mut wrong = args;
    wrong[4] = "0123456789abcdef0123456789abcdef";
    let (code, out, _) = herald_with_input(&wrong, REAL_REFUND_NOTIFY.as_bytes()).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with("invalid: "), "{out}");
}

#[tokio::test]
async fn listen_decrypts_a_wechat_v2_refund_notification_and_acks_it() {
    let lines = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = lines.clone();
    let profile = herald_protocols::Profile::WechatPayV2;
    let receiver = herald::cmd::listen::Receiver {
        profile,
        keys: Arc::new(
            profile
                .receiver_keys(&[REAL_WX_KEY.to_string()], None)
                .unwrap(),
        ),
        status: None,
        forward: None,
        dump: None,
        out: Arc::new(move |l| sink.lock().unwrap().push(l)),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, herald::cmd::listen::router(receiver)).await });
    let resp = reqwest::Client::new()
        .post(format!("http://{addr}/wx/refund"))
        .header("content-type", "text/xml")
        .body(REAL_REFUND_NOTIFY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let body = resp.text().await.unwrap();
    assert!(
        body.contains("<return_code><![CDATA[SUCCESS]]></return_code>"),
        "{body}"
    );
    let lines = lines.lock().unwrap();
    assert!(
        lines[0].starts_with("verified POST /wx/refund  notify id 50000404922017112502468056157")
            && lines[0].contains("refund notification")
            && lines[0].contains("\"refund_fee\": \"6\""),
        "{lines:?}"
    );
}

#[tokio::test]
async fn verify_reports_a_signed_but_incomplete_body_as_a_valid_signature_with_a_note() {
    // A Stripe event (Stripe's event shape) without `type`, correctly signed.
    let secret = "whsec_test0123456789abcdefghijklmnopqrstu";
    let now = herald_engine::now_ms().to_seconds().get();
    let event = r#"{"id":"evt_1NG8Du2eZvKYlo2CUI79vXWy","object":"event","api_version":"2024-06-20","created":1686089970,"data":{"object":{"id":"pi_1","object":"payment_intent","amount":100,"currency":"cny"}},"livemode":false,"pending_webhooks":1}"#;
    let header = herald_protocols::stripe::signature_header(now, event.as_bytes(), &[secret]);
    let stripe_args = [
        "verify",
        "--profile",
        "stripe",
        "--key",
        secret,
        "-H",
        &format!("Stripe-Signature: {header}"),
    ];
    let (code, out, err) = herald_with_input(&stripe_args, event.as_bytes()).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("valid signature\n"), "{out}");
    assert!(
        out.contains("a receiver would still refuse it: missing type"),
        "{out}"
    );
    // A changed byte is still a bad signature.
    let changed = event.replace("\"amount\":100", "\"amount\":900");
    let (code, out, _) = herald_with_input(&stripe_args, changed.as_bytes()).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with("invalid: bad signature"), "{out}");

    // A WeChat Pay v2 body without return_code, correctly signed (MD5).
    let key = "192006250b4c09247ec02edce69f6a2d";
    let fields: Vec<(String, String)> = [
        ("appid", "wxd930ea5d5a258f4f"),
        ("mch_id", "10000100"),
        ("nonce_str", "ibuaiVcKdpRxkhJA"),
        ("out_trade_no", "C1"),
        ("total_fee", "1"),
        ("transaction_id", "4200000001"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let sign = herald_protocols::wechatpay_v2::sign(
        &fields,
        key,
        herald_protocols::wechatpay_v2::SignType::Md5,
    );
    let mut xml = String::from("<xml>");
    for (k, v) in &fields {
        xml.push_str(&format!("<{k}><![CDATA[{v}]]></{k}>"));
    }
    xml.push_str(&format!("<sign>{sign}</sign></xml>"));
    let wx_args = ["verify", "--profile", "wechatpay-v2", "--key", key];
    let (code, out, err) = herald_with_input(&wx_args, xml.as_bytes()).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("valid signature\n"), "{out}");
    assert!(
        out.contains("a receiver would still refuse it: missing return_code"),
        "{out}"
    );
    let (code, out, _) = herald_with_input(&wx_args, xml.replace("C1", "C2").as_bytes()).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with("invalid: bad signature"), "{out}");
    // --sign-type names the merchant's algorithm: this MD5 sign is refused for HMAC.
    let (code, out, _) = herald_with_input(
        &[
            "verify",
            "--profile",
            "wechatpay-v2",
            "--key",
            key,
            "--sign-type",
            "HMAC-SHA256",
        ],
        xml.as_bytes(),
    )
    .await;
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with("invalid: bad signature"), "{out}");
}

/// The payloads each profile encodes into a complete notification (the shapes the providers'
/// notifications carry), all for order C1 of 1.00.
const PROFILE_PAYLOADS: [(&str, &str); 5] = [
    (
        "standard-webhooks",
        r#"{"out_trade_no":"C1","amount":100,"currency":"cny"}"#,
    ),
    (
        "alipay",
        r#"{"out_trade_no":"C1","trade_no":"T1","total_amount":"1.00","trade_status":"TRADE_SUCCESS"}"#,
    ),
    (
        "wechatpay-v2",
        r#"{"out_trade_no":"C1","transaction_id":"T1","total_fee":100}"#,
    ),
    (
        "wechatpay-v3",
        r#"{"out_trade_no":"C1","transaction_id":"T1","trade_state":"SUCCESS","amount":{"total":100,"currency":"CNY"}}"#,
    ),
    (
        "stripe",
        r#"{"id":"pi_1","amount":100,"currency":"cny","metadata":{"out_trade_no":"C1"}}"#,
    ),
];

/// A profile's generated credentials as `herald send` takes them: the signing key and the
/// `--set` fields that must match the receiver's keys.
fn send_credentials(creds: &herald_protocols::Credentials) -> (String, Vec<String>) {
    use herald_protocols::Credentials as C;
    match creds {
        C::StandardWebhooks(k) => (k.keys[0].secret.clone(), vec![]),
        C::Stripe(c) => (c.secrets[0].secret.clone(), vec![]),
        C::Alipay(c) => (c.private_key.clone(), vec![format!("app_id={}", c.app_id)]),
        C::WechatPayV2(c) => (
            c.api_key.clone(),
            vec![format!("appid={}", c.appid), format!("mch_id={}", c.mch_id)],
        ),
        C::WechatPayV3(c) => (
            c.private_key.clone(),
            vec![
                format!("mchid={}", c.mchid),
                format!("appid={}", c.appid),
                format!("serial={}", c.serial),
                format!("api_v3_key={}", c.api_v3_key),
            ],
        ),
        C::WechatPayLegacy(c) => (
            c.partner_key.clone(),
            vec![
                format!("appid={}", c.appid),
                format!("partner={}", c.partner),
                format!("app_key={}", c.app_key),
            ],
        ),
        C::Dialect(c) => (c.key.clone(), vec![]),
    }
}

/// `herald listen`'s receiver for `profile` on a free port, with the keys that verify `creds`.
async fn listen_for(
    profile: herald_protocols::Profile,
    creds: &herald_protocols::Credentials,
    lines: Arc<std::sync::Mutex<Vec<String>>>,
) -> std::net::SocketAddr {
    let receiver = herald::cmd::listen::Receiver {
        profile,
        keys: Arc::new(
            profile
                .receiver_keys_from(creds, herald_engine::now_ms().to_seconds().get())
                .unwrap(),
        ),
        status: None,
        forward: None,
        dump: None,
        out: Arc::new(move |l| lines.lock().unwrap().push(l)),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, herald::cmd::listen::router(receiver)).await });
    addr
}

#[tokio::test]
async fn send_profile_signs_each_profile_and_is_acknowledged_by_a_listener_of_that_profile() {
    let dir = tempfile::tempdir().unwrap();
    for (name, payload) in PROFILE_PAYLOADS {
        let profile: herald_protocols::Profile = name.parse().unwrap();
        let (creds, _) = profile.create_credentials(&Value::Null).unwrap();
        let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
        let addr = listen_for(profile, &creds, lines.clone()).await;
        let (key, sets) = send_credentials(&creds);
        // RSA keys go through a file, as a merchant keeps them.
        let key_file = dir.path().join(format!("{name}.key"));
        std::fs::write(&key_file, &key).unwrap();
        let mut args: Vec<String> = vec![
            "send".into(),
            "--profile".into(),
            name.into(),
            "--url".into(),
            format!("http://{addr}/notify"),
            "--key".into(),
            key_file.display().to_string(),
            "--json".into(),
            payload.into(),
            "--event-type".into(),
            "TRANSACTION.SUCCESS".into(),
            "--retry".into(),
            "none".into(),
        ];
        for s in sets {
            args.push("--set".into());
            args.push(s);
        }
        let out = Command::new(BIN).args(&args).output().await.unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{name}: {stdout}\n{}\n{:?}",
            String::from_utf8_lossy(&out.stderr),
            lines.lock().unwrap()
        );
        assert!(
            stdout.contains("acknowledged on attempt 1"),
            "{name}: {stdout}"
        );
        let lines = lines.lock().unwrap();
        assert!(
            lines[0].starts_with("verified POST /notify"),
            "{name}: {lines:?}"
        );
        assert!(
            lines[0].contains("\"out_trade_no\": \"C1\""),
            "{name}: {lines:?}"
        );
    }
}

#[tokio::test]
async fn send_profile_expects_the_profiles_ack_not_any_2xx() {
    // A receiver answering 200 "ok": enough for standard-webhooks, not for Alipay (whose ack
    // is the body `success`) nor WeChat Pay v2 (XML return_code SUCCESS).
    let rx = Receiver::start(|_, _| Reply::Status(200, "ok")).await;
    let (code, out, err) = herald_with_input(
        &[
            "send",
            "--url",
            &rx.url("/"),
            "--secret",
            common::SECRET,
            "--json",
            "{}",
            "--retry",
            "none",
        ],
        b"",
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let dir = tempfile::tempdir().unwrap();
    for (name, payload) in &PROFILE_PAYLOADS[1..3] {
        let profile: herald_protocols::Profile = name.parse().unwrap();
        let (creds, _) = profile.create_credentials(&Value::Null).unwrap();
        let (key, _) = send_credentials(&creds);
        let key_file = dir.path().join(format!("{name}.key"));
        std::fs::write(&key_file, key).unwrap();
        let key = key_file.display().to_string();
        let (code, out, err) = herald_with_input(
            &[
                "send",
                "--profile",
                name,
                "--url",
                &rx.url("/"),
                "--key",
                &key,
                "--json",
                payload,
                "--retry",
                "none",
            ],
            b"",
        )
        .await;
        assert_eq!(code, 1, "{name}: {out}{err}");
        assert!(
            out.contains("failed: not acknowledged after 1 attempts"),
            "{name}: {out}"
        );
    }
    assert_eq!(rx.count(), 3);
}

#[tokio::test]
async fn send_refuses_a_url_without_an_http_scheme_and_sends_nothing() {
    let rx = Receiver::start(|_, _| Reply::Status(204, "")).await;
    let bare = rx.url("/hook").replacen("http://", "", 1);
    for url in [bare.as_str(), "localhost:9000/hook", "ftp://127.0.0.1/hook"] {
        let (code, out, err) = herald_with_input(
            &[
                "send",
                "--url",
                url,
                "--secret",
                common::SECRET,
                "--json",
                "{}",
            ],
            b"",
        )
        .await;
        assert_eq!(code, 2, "{url}: {out}{err}");
        assert!(err.contains("--url"), "{url}: {err}");
        assert!(
            err.contains("needs a scheme") || err.contains("only http:// and https://"),
            "{url}: {err}"
        );
    }
    let (_, _, err) = herald_with_input(
        &[
            "send",
            "--url",
            &bare,
            "--secret",
            common::SECRET,
            "--json",
            "{}",
        ],
        b"",
    )
    .await;
    assert!(err.contains(&format!("e.g. http://{bare}")), "{err}");
    assert_eq!(rx.count(), 0);
}

/// A command's error keeps its cause: the line names what was being done (the flag and the
/// file), then why, down to the operating system's own words, and the exit status is 2.
#[tokio::test]
async fn a_command_error_names_the_file_and_ends_with_the_os_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("gone").join("alipay_public_key.pem");
    let os_error = std::fs::metadata(&missing).unwrap_err().to_string();
    let missing = missing.display().to_string();
    let a_directory = dir.path().join("keys.pem");
    std::fs::create_dir(&a_directory).unwrap();
    let a_directory = a_directory.display().to_string();
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (
            vec!["verify", "--profile", "alipay", "--key", &missing],
            vec![
                "--key: ",
                "the key file",
                &missing,
                "does not exist",
                &os_error,
            ],
        ),
        (
            vec!["verify", "--profile", "alipay", "--key", &a_directory],
            vec![
                "--key: ",
                &a_directory,
                "cannot be read",
                "not a regular file",
            ],
        ),
        (
            // The request is read before the key is looked at.
            vec![
                "verify",
                "--profile",
                "alipay",
                "--key",
                "not-read",
                "--request",
                &missing,
            ],
            vec!["--request ", &missing, &os_error],
        ),
    ];
    for (args, expected) in cases {
        let (code, out, err) = herald_with_input(&args, b"{}").await;
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        let line = err
            .lines()
            .find(|l| l.starts_with("error: "))
            .unwrap_or_else(|| panic!("{args:?}: no error line in {err}"));
        let mut from = 0;
        for part in expected {
            let at = line[from..].find(part).unwrap_or_else(|| {
                panic!("{args:?}: {part:?} missing, or out of order, in {line}")
            });
            from += at + part.len();
        }
        assert_eq!(
            from,
            line.len(),
            "{args:?}: the cause ends the line: {line}"
        );
    }
}

#[tokio::test]
async fn a_key_naming_a_missing_file_is_reported_as_a_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("alipay_public_key.pem");
    let missing = missing.display().to_string();
    let relative = "./no-such-key.pem";
    let cases: Vec<Vec<&str>> = vec![
        vec!["verify", "--profile", "alipay", "--key", &missing],
        vec!["verify", "--profile", "alipay", "--key", relative],
        vec![
            "verify",
            "--profile",
            "wechatpay-v3",
            "--key",
            "PUB_KEY_ID_1=./gone.pem",
        ],
        vec!["sign", "--profile", "alipay", "--key", &missing],
        vec![
            "send",
            "--profile",
            "alipay",
            "--url",
            "http://127.0.0.1:9/",
            "--key",
            &missing,
            "--json",
            "{}",
        ],
        vec![
            "listen",
            "--profile",
            "alipay",
            "--port",
            "0",
            "--key",
            relative,
        ],
    ];
    for args in cases {
        let (code, out, err) = herald_with_input(&args, b"{}").await;
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert!(err.contains("does not exist"), "{args:?}: {err}");
        assert!(!err.contains("neither PEM"), "{args:?}: {err}");
    }
}

#[tokio::test]
async fn sign_without_a_key_writes_it_to_a_file_that_verify_takes_in_a_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let api_v3_key = "0123456789abcdefghijABCDEFGHIJ01";
    for (name, payload) in PROFILE_PAYLOADS {
        let extra = if name == "wechatpay-v3" {
            (
                format!("--set api_v3_key={api_v3_key}"),
                format!("--decrypt-key {api_v3_key}"),
            )
        } else {
            (String::new(), String::new())
        };
        // The pipe as a user types it, in a fresh directory: the default key file name.
        let script = format!(
            "echo '{payload}' | {BIN} sign --profile {name} --event-type TRANSACTION.SUCCESS {} \
             2>sign.err | {BIN} verify --profile {name} --key herald-sign-{name}.key {} --request -",
            extra.0, extra.1
        );
        let out = Command::new("bash")
            .args(["-c", &script])
            .current_dir(dir.path())
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let sign_err = std::fs::read_to_string(dir.path().join("sign.err")).unwrap();
        assert!(
            out.status.success(),
            "{name}: {stdout}{}\n{sign_err}",
            String::from_utf8_lossy(&out.stderr)
        );
        let key_path = format!("herald-sign-{name}.key");
        assert!(
            sign_err.contains(&format!("generated signing key written to {key_path}")),
            "{name}: {sign_err}"
        );
        let key = dir.path().join(&key_path);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&key).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{name}: the key file is private");
        }
        let decoded: Value = serde_json::from_str(&stdout).expect("the decoded notification");
        assert_eq!(decoded["out_trade_no"], "C1", "{name}: {stdout}");
        assert_eq!(decoded["amount"]["minor"], 100, "{name}: {stdout}");
        std::fs::remove_file(&key).unwrap();
    }
}

#[tokio::test]
async fn listen_dump_saves_each_request_and_verify_request_explains_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("captured");
    let profile = herald_protocols::Profile::Alipay;
    let (creds, view) = profile.create_credentials(&Value::Null).unwrap();
    let public = dir.path().join("alipay_public_key.pem");
    std::fs::write(&public, view["public_key_pem"].as_str().unwrap()).unwrap();
    let port = free_port();
    let mut child = Command::new(BIN)
        .args([
            "listen",
            "--profile",
            "alipay",
            "--port",
            &port.to_string(),
            "--key",
        ])
        .arg(&public)
        .arg("--dump")
        .arg(&dump)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(first.starts_with("Listening on"), "{first}");
    let now = herald_engine::now_ms().to_seconds().get();
    let encoded = profile
        .encode(
            &creds,
            &herald_protocols::OutgoingNotification {
                notify_id: "n-1",
                event_type: "trade.success",
                payload: PROFILE_PAYLOADS[1].1.as_bytes(),
                timestamp: herald_protocols::UnixSeconds::new(now),
                created_at: herald_protocols::UnixSeconds::new(now),
            },
        )
        .unwrap();
    let client = reqwest::Client::new();
    for _ in 0..2 {
        let mut req = client
            .post(format!("http://127.0.0.1:{port}/notify?from=test"))
            .header("content-type", encoded.content_type.as_str())
            .body(encoded.body.clone());
        for (k, v) in &encoded.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.text().await.unwrap(), "success");
    }
    let mut files: Vec<_> = std::fs::read_dir(&dump)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 2, "one file per request: {files:?}");
    let saved = std::fs::read(&files[0]).unwrap();
    let text = String::from_utf8_lossy(&saved);
    assert!(
        text.starts_with("POST /notify?from=test HTTP/1.1\n"),
        "{text}"
    );
    assert!(saved.ends_with(&encoded.body), "the body byte for byte");

    let file = files[0].display().to_string();
    let key = public.display().to_string();
    let (code, out, err) = herald_with_input(
        &[
            "verify",
            "--profile",
            "alipay",
            "--key",
            &key,
            "--request",
            &file,
            "--explain",
        ],
        b"",
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("string to sign:\n"), "{out}");
    assert!(out.contains("out_trade_no=C1"), "{out}");
    assert!(out.contains("\"notify_id\": \"n-1\""), "{out}");

    // One changed byte in the saved body: the signature no longer matches.
    let tampered = dir.path().join("tampered.http");
    std::fs::write(
        &tampered,
        text.replace("total_amount=1.00", "total_amount=9.00"),
    )
    .unwrap();
    let (code, out, _) = herald_with_input(
        &["verify", "--profile", "alipay", "--key", &key, "--request"],
        b"",
    )
    .await;
    assert_eq!(code, 2, "--request needs a file: {out}");
    let tampered = tampered.display().to_string();
    let (code, out, _) = herald_with_input(
        &[
            "verify",
            "--profile",
            "alipay",
            "--key",
            &key,
            "--request",
            &tampered,
        ],
        b"",
    )
    .await;
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with("invalid: "), "{out}");
    let _ = child.kill().await;
}
