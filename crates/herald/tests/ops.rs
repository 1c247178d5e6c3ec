//! Operations end to end: endpoint health (a 410 disables the endpoint, and the app's ops
//! URL gets a signed notification), `/metrics`, request ids, logs (`--log-format json`, no
//! colour off a terminal, no secrets) and retention (`herald purge`).
mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Receiver, Reply, TestServer, SECRET};
use herald_protocols::standard_webhooks::{self as sw, VerifyKey};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_herald");
const OPS_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

fn verify(r: &common::Received, key: &str) -> Result<(), sw::VerifyError> {
    sw::verify(
        &r.header("webhook-id"),
        &r.header("webhook-timestamp"),
        &r.header("webhook-signature"),
        &r.body,
        &[VerifyKey::parse(key).unwrap()],
        herald_engine::now_ms().to_seconds().get(),
    )
}

async fn wait_until(what: &str, mut pred: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !pred() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_410_disables_the_endpoint_and_a_signed_ops_notification_arrives() {
    let server = TestServer::start().await;
    let gone = Receiver::start(|_, _| Reply::Status(410, "gone")).await;
    let ops = Receiver::start(Receiver::ok()).await;
    let app = server.app(json!({})).await;
    let (status, v) = server
        .call(
            "PUT",
            &format!("/v1/apps/{app}/ops"),
            Some(json!({"url": ops.url("/ops"), "secret": OPS_SECRET})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["secret"], OPS_SECRET);
    let (status, v) = server
        .call("GET", &format!("/v1/apps/{app}/ops"), None)
        .await;
    assert_eq!(
        (status, v["url"].as_str()),
        (200, Some(ops.url("/ops").as_str()))
    );
    assert!(
        v.get("secret").is_none(),
        "the secret is shown only when set"
    );

    let ep = server
        .endpoint(&app, json!({"url": gone.url("/hook"), "retry": [1, 1, 1]}))
        .await;
    let (_, ep_json) = server
        .call("GET", &format!("/v1/apps/{app}/endpoints/{ep}"), None)
        .await;
    assert_eq!(ep_json["health"]["state"], "closed");
    let n = server
        .notify(
            &app,
            json!({"event_type": "trade.success", "payload": {"n": 1}}),
        )
        .await;

    let got = ops.wait_count(1).await;
    let note = &got[0];
    verify(note, OPS_SECRET).expect("the ops notification is signed with the ops secret");
    assert!(
        verify(note, SECRET).is_err(),
        "not with the app's own secret"
    );
    let body = note.json();
    assert_eq!(body["type"], "endpoint.disabled");
    assert_eq!(body["data"]["endpoint_id"], ep.as_str());
    assert_eq!(body["data"]["app_id"], app.as_str());
    assert_eq!(body["data"]["health"]["state"], "disabled");
    assert_eq!(
        body["data"]["health"]["disabled_reason"],
        "the endpoint answered 410 Gone"
    );

    let (_, ep_json) = server
        .call("GET", &format!("/v1/apps/{app}/endpoints/{ep}"), None)
        .await;
    assert_eq!(ep_json["enabled"], false);
    assert_eq!(ep_json["health"]["state"], "disabled");
    assert_eq!(ep_json["health"]["consecutive_failures"], 1);
    assert!(ep_json["health"]["last_failure_at"].is_string());
    // The delivery is kept, not lost, and not sent again (its retry was due after 1 s).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(gone.count(), 1);
    let v = server.notification(n["id"].as_str().unwrap()).await;
    assert_eq!(v["deliveries"][0]["status"], "pending");
    assert_eq!(ops.count(), 1, "one transition, one notification");

    // Enabling it again resets its health and the waiting delivery goes out.
    gone.set_script(|_, _| Reply::Status(204, ""));
    let (status, ep_json) = server
        .call(
            "PATCH",
            &format!("/v1/apps/{app}/endpoints/{ep}"),
            Some(json!({"enabled": true})),
        )
        .await;
    assert_eq!(status, 200, "{ep_json}");
    assert_eq!(ep_json["health"]["state"], "closed");
    server
        .wait_for(n["id"].as_str().unwrap(), |v| {
            v["deliveries"][0]["status"] == "succeeded"
        })
        .await;
    server.stop().await;
}

#[tokio::test]
async fn ops_settings_refuse_bad_input_and_unknown_apps() {
    let server = TestServer::start().await;
    let app = server.app(json!({})).await;
    let (status, v) = server
        .call(
            "PUT",
            &format!("/v1/apps/{app}/ops"),
            Some(json!({"url": "ftp://x"})),
        )
        .await;
    assert_eq!(status, 422, "{v}");
    let (status, v) = server
        .call(
            "PUT",
            &format!("/v1/apps/{app}/ops"),
            Some(json!({"url": "http://127.0.0.1:9/x", "secret": "not-a-secret"})),
        )
        .await;
    assert_eq!(status, 422, "{v}");
    let (status, _) = server
        .call("GET", &format!("/v1/apps/{app}/ops"), None)
        .await;
    assert_eq!(status, 404, "nothing was set");
    let (status, _) = server
        .call(
            "PUT",
            "/v1/apps/app_missing/ops",
            Some(json!({"url": "http://127.0.0.1:9/x"})),
        )
        .await;
    assert_eq!(status, 404);
    // A generated secret is a whsec_ one; deleting stops the notifications.
    let (status, v) = server
        .call(
            "PUT",
            &format!("/v1/apps/{app}/ops"),
            Some(json!({"url": "http://127.0.0.1:9/x"})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert!(v["secret"].as_str().unwrap().starts_with("whsec_"));
    let (status, _) = server
        .call("DELETE", &format!("/v1/apps/{app}/ops"), None)
        .await;
    assert_eq!(status, 204);
    let (status, _) = server
        .call("GET", &format!("/v1/apps/{app}/ops"), None)
        .await;
    assert_eq!(status, 404);
    server.stop().await;
}

/// `/metrics` as a map from series (name with labels) to value.
async fn scrape(server: &TestServer) -> (String, std::collections::HashMap<String, f64>) {
    let resp = reqwest::get(format!("{}/metrics", server.base))
        .await
        .expect("scrape");
    assert_eq!(resp.status(), 200, "no token needed");
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = resp.text().await.unwrap();
    let mut series = std::collections::HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (k, v) = line.rsplit_once(' ').expect("name value");
        series.insert(k.to_string(), v.parse::<f64>().expect("a number"));
    }
    (text, series)
}

#[tokio::test]
async fn metrics_count_deliveries_attempts_and_api_routes_by_template() {
    let server = TestServer::start().await;
    let rx = Receiver::start(|n, _| {
        // The first attempt fails, the rest succeed.
        if n == 0 {
            Reply::Status(500, "")
        } else {
            Reply::Status(204, "")
        }
    })
    .await;
    let app = server.app(json!({})).await;
    server
        .endpoint(&app, json!({"url": rx.url("/hook"), "retry": [1]}))
        .await;
    let (_, before) = scrape(&server).await;
    let get =
        |m: &std::collections::HashMap<String, f64>, k: &str| m.get(k).copied().unwrap_or(0.0);
    let mut ids = Vec::new();
    for i in 0..3 {
        let n = server
            .notify(&app, json!({"event_type": "e", "payload": {"i": i}}))
            .await;
        ids.push(n["id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        server.wait_status(id, "succeeded").await;
    }
    let (text, after) = scrape(&server).await;
    let sw = "profile=\"standard-webhooks\"";
    assert_eq!(
        get(
            &after,
            &format!("herald_deliveries_total{{{sw},outcome=\"succeeded\"}}")
        ) - get(
            &before,
            &format!("herald_deliveries_total{{{sw},outcome=\"succeeded\"}}")
        ),
        3.0,
        "{text}"
    );
    assert_eq!(
        get(
            &after,
            &format!("herald_attempts_total{{{sw},result=\"succeeded\"}}")
        ),
        3.0
    );
    assert_eq!(
        get(
            &after,
            &format!("herald_attempts_total{{{sw},result=\"retry\"}}")
        ),
        1.0
    );
    assert_eq!(get(&after, "herald_attempt_duration_seconds_count"), 4.0);
    assert_eq!(
        get(
            &after,
            "herald_attempt_duration_seconds_bucket{le=\"+Inf\"}"
        ),
        4.0
    );
    assert_eq!(
        get(
            &after,
            "herald_store_commit_duration_seconds_count{op=\"complete\"}"
        ),
        4.0
    );
    assert_eq!(get(&after, "herald_deliveries_pending"), 0.0);
    assert_eq!(get(&after, "herald_attempts_in_flight"), 0.0);
    assert_eq!(
        get(&after, "herald_endpoints{breaker_state=\"closed\"}"),
        1.0
    );
    assert_eq!(get(&after, "herald_endpoints{breaker_state=\"open\"}"), 0.0);
    // API requests by route template: the app's id is not in any label.
    assert_eq!(
        get(
            &after,
            "herald_http_requests_total{method=\"POST\",route=\"/v1/apps/{app_id}/notifications\",status=\"202\"}"
        ),
        3.0,
        "{text}"
    );
    assert!(
        get(
            &after,
            "herald_http_requests_total{method=\"GET\",route=\"/v1/notifications/{id}\",status=\"200\"}"
        ) >= 3.0
    );
    assert!(
        !text.contains(&app),
        "raw paths and ids stay out of the labels"
    );
    // An unknown path is one series, whatever the path.
    server.call("GET", "/v1/nothing/here/1", None).await;
    server.call("GET", "/v1/nothing/here/2", None).await;
    let (_, after) = scrape(&server).await;
    assert_eq!(
        get(
            &after,
            "herald_http_requests_total{method=\"GET\",route=\"unmatched\",status=\"404\"}"
        ),
        2.0
    );
    server.stop().await;
}

#[tokio::test]
async fn request_ids_are_kept_or_generated_and_returned() {
    let server = TestServer::start().await;
    let (_, headers, _) = server
        .call_full(
            "GET",
            "/v1/apps/app_x",
            None,
            Some(common::TOKEN),
            &[("x-request-id", "abc-123")],
        )
        .await;
    assert_eq!(headers["x-request-id"], "abc-123");
    let (_, headers, _) = server
        .call_full("GET", "/v1/apps/app_x", None, Some(common::TOKEN), &[])
        .await;
    let id = headers["x-request-id"].to_str().unwrap().to_string();
    assert!(id.starts_with("req_") && id.len() == 30, "{id}");
    // One that cannot be echoed safely (too long) is replaced.
    let long = "x".repeat(200);
    let (_, headers, _) = server
        .call_full("GET", "/healthz", None, None, &[("x-request-id", &long)])
        .await;
    assert!(headers["x-request-id"]
        .to_str()
        .unwrap()
        .starts_with("req_"));
    server.stop().await;
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `herald serve` with `args` and `RUST_LOG`, lets `work` talk to it, stops it and
/// returns everything it wrote to standard error.
async fn serve_and_capture_logs<F, Fut>(
    dir: &std::path::Path,
    args: &[&str],
    rust_log: &str,
    work: F,
) -> String
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let port = free_port();
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--db",
            &format!("sqlite://{}", dir.join("herald.db").display()),
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--allow-private-targets",
            "--admin-token",
            common::TOKEN,
        ])
        .args(args)
        .env("RUST_LOG", rust_log)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn herald");
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stderr = child.stderr.take().unwrap();
    let collected = tokio::spawn(async move {
        let mut all = String::new();
        let _ = stderr.read_to_string(&mut all).await;
        all
    });
    let line = tokio::time::timeout(Duration::from_secs(20), stdout.next_line())
        .await
        .expect("started in time")
        .expect("stdout")
        .unwrap_or_default();
    assert!(line.starts_with("Herald is listening"), "{line}");
    tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });
    work(format!("http://127.0.0.1:{port}")).await;
    // SIGTERM: a graceful stop, so everything logged is flushed.
    let pid = child.id().expect("pid");
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(sent.success(), "kill -TERM {pid}");
    let _ = tokio::time::timeout(Duration::from_secs(20), child.wait()).await;
    tokio::time::timeout(Duration::from_secs(20), collected)
        .await
        .expect("stderr closed")
        .expect("reader")
}

#[tokio::test]
async fn purge_removes_old_finished_notifications_and_prints_what_it_removed() {
    let server = TestServer::start().await;
    let ok = Receiver::start(Receiver::ok()).await;
    let failing = Receiver::start(|_, _| Reply::Status(500, "")).await;
    let app = server.app(json!({})).await;
    let done = server
        .notify(
            &app,
            json!({"event_type": "e", "payload": {}, "notify_url": ok.url("/a")}),
        )
        .await;
    let pending = server
        .notify(
            &app,
            json!({"event_type": "e", "payload": {}, "notify_url": failing.url("/b")}),
        )
        .await;
    let done_id = done["id"].as_str().unwrap().to_string();
    let pending_id = pending["id"].as_str().unwrap().to_string();
    server.wait_status(&done_id, "succeeded").await;
    wait_until("the failing attempt", || failing.count() >= 1).await;
    let (db, dir) = server.stop().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // Bad input: a clear error, nothing removed.
    let out = Command::new(BIN)
        .args([
            "purge",
            "--db",
            &format!("sqlite://{}", db.display()),
            "--older-than",
            "30 days",
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--older-than"));

    let out = Command::new(BIN)
        .args([
            "purge",
            "--db",
            &format!("sqlite://{}", db.display()),
            "--older-than",
            "1s",
        ])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with(
            "Purged 1 notifications, 1 deliveries and 1 attempts that finished before "
        ),
        "{stdout}"
    );

    let server = TestServer::start_on(db, common::engine_config(true)).await;
    let (status, v) = server
        .call("GET", &format!("/v1/notifications/{done_id}"), None)
        .await;
    assert_eq!(status, 404, "{v}");
    let v = server.notification(&pending_id).await;
    assert_eq!(v["deliveries"][0]["status"], "pending");
    server.stop().await;
    drop(dir);
}

async fn post(base: &str, path: &str, body: Value, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .header("authorization", format!("Bearer {}", common::TOKEN))
        .header("content-type", "application/json")
        .body(body.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn log_format_json_writes_one_json_object_per_line_with_the_request_id() {
    let dir = tempfile::tempdir().unwrap();
    let logs = serve_and_capture_logs(
        dir.path(),
        &["--log-format", "json"],
        "info,herald=debug",
        |base| async move {
            let (status, _) = post(
                &base,
                "/v1/apps",
                json!({"name": "x"}),
                &[("x-request-id", "log-test-7")],
            )
            .await;
            assert_eq!(status, 201);
        },
    )
    .await;
    let lines: Vec<&str> = logs.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 3, "{logs}");
    let mut with_id = 0;
    for line in &lines {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
        if v["span"]["request_id"] == "log-test-7" {
            with_id += 1;
            assert_eq!(v["span"]["route"], "/v1/apps");
        }
    }
    assert!(with_id >= 1, "a line of the request carries its id: {logs}");
}

#[tokio::test]
async fn text_logs_have_no_colour_codes_when_stderr_is_not_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let logs = serve_and_capture_logs(dir.path(), &[], "info,herald=debug", |base| async move {
        let (status, _) = post(&base, "/v1/apps", json!({"name": "x"}), &[]).await;
        assert_eq!(status, 201);
    })
    .await;
    assert!(
        logs.contains(" INFO ") && logs.contains(" DEBUG "),
        "{logs}"
    );
    assert!(
        !logs.contains('\u{1b}'),
        "escape codes in piped logs: {logs:?}"
    );
}

#[tokio::test]
async fn secrets_and_signatures_never_reach_the_logs_even_at_trace_level() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start(Receiver::ok()).await;
    let ops = Receiver::start(Receiver::ok()).await;
    let hook = rx.url("/hook");
    let ops_url = ops.url("/ops");
    let rx_in = rx.clone();
    let logs = serve_and_capture_logs(dir.path(), &[], "trace", |base| async move {
        let (status, app) = post(
            &base,
            "/v1/apps",
            json!({"name": "x", "credentials": {"secret": SECRET}}),
            &[],
        )
        .await;
        assert_eq!(status, 201, "{app}");
        let app = app["id"].as_str().unwrap().to_string();
        let (status, _) = post(
            &base,
            &format!("/v1/apps/{app}/endpoints"),
            json!({"url": hook}),
            &[],
        )
        .await;
        assert_eq!(status, 201);
        let resp = reqwest::Client::new()
            .put(format!("{base}/v1/apps/{app}/ops"))
            .header("authorization", format!("Bearer {}", common::TOKEN))
            .header("content-type", "application/json")
            .body(json!({"url": ops_url, "secret": OPS_SECRET}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let (status, _) = post(
            &base,
            &format!("/v1/apps/{app}/notifications"),
            json!({"event_type": "e", "payload": {"x": 1}}),
            &[],
        )
        .await;
        assert_eq!(status, 202);
        rx_in.wait_count(1).await;
    })
    .await;
    let got = rx.received();
    let signature = got[0].header("webhook-signature");
    assert!(signature.starts_with("v1,"), "{signature}");
    let sig_b64 = signature.trim_start_matches("v1,");
    assert!(logs.len() > 1000, "trace logging ran: {} bytes", logs.len());
    for secret in [
        SECRET,
        SECRET.trim_start_matches("whsec_"),
        OPS_SECRET.trim_start_matches("whsec_"),
        sig_b64,
        common::TOKEN,
    ] {
        assert!(!logs.contains(secret), "{secret:?} appears in the logs");
    }
}
