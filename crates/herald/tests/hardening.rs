//! Hardening (issue 12): Herald keeps working when clients, tenants and receivers misbehave.
//! Slow and idle clients against the real binary under a low descriptor limit, the
//! descriptor limit raised at start, refusals at accept (unencodable payloads, targets the
//! policy always refuses, a reused idempotency key with another body), the database's file
//! modes, passwords masked in responses, the cap on secrets signing side by side, the admin
//! token rules, and graceful shutdown under load. Everything runs on loopback and is bounded
//! in time.
mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{engine_config, Receiver, Reply, TestServer, SECRET, TOKEN};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_herald");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The real binary, optionally under `prlimit --nofile=SOFT:HARD`, with its standard error
/// collected.
struct Proc {
    child: Child,
    base: String,
    port: u16,
    stderr: Arc<Mutex<Vec<String>>>,
}

struct Spawn<'a> {
    db: &'a Path,
    nofile: Option<(u64, u64)>,
    env: Vec<(&'a str, String)>,
    args: Vec<String>,
}

impl<'a> Spawn<'a> {
    fn new(db: &'a Path) -> Self {
        Spawn {
            db,
            nofile: None,
            env: Vec::new(),
            args: vec!["--admin-token".into(), TOKEN.into()],
        }
    }

    fn command(&self, port: u16) -> Command {
        let mut cmd = match self.nofile {
            Some((soft, hard)) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={soft}:{hard}")).arg("--").arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        cmd.args([
            "serve",
            "--db",
            &format!("sqlite://{}", self.db.display()),
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--allow-private-targets",
        ])
        .args(&self.args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    async fn start(&self) -> Proc {
        self.start_on(free_port()).await
    }

    async fn start_on(&self, port: u16) -> Proc {
        let mut child = self.command(port).spawn().expect("spawn herald");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                sink.lock().unwrap().push(line);
            }
        });
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .ok()
            .and_then(|l| l.ok().flatten());
        assert!(
            first
                .as_deref()
                .is_some_and(|l| l.starts_with("Herald is listening")),
            "did not start: {first:?}; stderr: {:?}",
            logs.lock().unwrap()
        );
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Proc {
            child,
            base: format!("http://127.0.0.1:{port}"),
            port,
            stderr: logs,
        }
    }
}

impl Proc {
    fn logs(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }
}

async fn call_at(base: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut req = client
        .request(method.parse().unwrap(), format!("{base}{path}"))
        .header("authorization", format!("Bearer {TOKEN}"));
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

/// Opens `n` connections that each send the start of a request head and then one more
/// header byte every second, never finishing it.
fn slow_clients(port: u16, n: usize) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n)
        .map(|_| {
            tokio::spawn(async move {
                let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await else {
                    return;
                };
                if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                    .await
                    .is_err()
                {
                    return;
                }
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if s.write_all(b"a").await.is_err() {
                        // Closed by the server: keep our end open (as an attacker would).
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        return;
                    }
                }
            })
        })
        .collect()
}

/// One `/healthz` on a fresh connection: its latency, or what went wrong.
async fn healthz(base: &str) -> Result<Duration, String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(8))
        .build()
        .unwrap();
    let started = Instant::now();
    match client.get(format!("{base}/healthz")).send().await {
        Ok(r) if r.status() == 200 => Ok(started.elapsed()),
        Ok(r) => Err(format!("status {}", r.status())),
        Err(e) => Err(format!("{e:?} after {:?}", started.elapsed())),
    }
}

/// Reads until EOF or error; the time it took, or `None` when the connection stayed open
/// past `bound`.
async fn time_to_close(s: &mut TcpStream, bound: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at((started + bound).into(), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => continue,
            Err(_) => return None,
        }
    }
}

// --- 1. Connections ----------------------------------------------------------------------

/// What a slow-client flood did: `/healthz` probes made during it, and the attempts of a
/// delivery whose retry fell due during it.
struct FloodRun {
    probes: Vec<Result<Duration, String>>,
    attempts: Value,
}

/// Starts the binary under `prlimit --nofile=SOFT:HARD`, makes a delivery's first attempt
/// fail (503, connection closed, so the retry 4 s later needs a new descriptor), opens
/// `clients` slow clients, probes `/healthz` three times, waits for the retry, then reads
/// the delivery once the flood is gone.
async fn slow_client_flood(nofile: (u64, u64), clients: usize) -> FloodRun {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("herald.db");
    let mut spawn = Spawn::new(&db);
    spawn.nofile = Some(nofile);
    // Short timeouts, unless the measurement asks for the defaults (10 s and 20 s).
    if std::env::var_os("HERALD_FLOOD_DEFAULT_TIMEOUTS").is_none() {
        spawn.env = vec![
            ("HERALD_HEADER_READ_TIMEOUT", "2".into()),
            ("HERALD_IDLE_TIMEOUT", "2".into()),
        ];
    }
    let p = spawn.start().await;
    let rx = Receiver::start(|n, _| {
        if n == 0 {
            Reply::StatusWithHeader(503, "", "connection", "close")
        } else {
            Reply::Status(204, "")
        }
    })
    .await;
    let (s, app) = call_at(
        &p.base,
        "POST",
        "/v1/apps",
        Some(json!({"name": "flood", "credentials": {"secret": SECRET}})),
    )
    .await;
    assert_eq!(s, 201, "{app}");
    let app = app["id"].as_str().unwrap().to_string();
    let (s, v) = call_at(
        &p.base,
        "POST",
        &format!("/v1/apps/{app}/endpoints"),
        Some(json!({"url": rx.url("/hook"), "retry": [4, 4, 4]})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let (s, n) = call_at(
        &p.base,
        "POST",
        &format!("/v1/apps/{app}/notifications"),
        Some(json!({"event_type": "e", "payload": {"x": 1}})),
    )
    .await;
    assert_eq!(s, 202, "{n}");
    let id = n["id"].as_str().unwrap().to_string();
    rx.wait_count(1).await;

    let flood = slow_clients(p.port, clients);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut probes = Vec::new();
    for _ in 0..3 {
        probes.push(healthz(&p.base).await);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The retry is due 4 s after the first attempt; give it until 10 s.
    let deadline = Instant::now() + Duration::from_secs(8);
    while rx.count() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for t in &flood {
        t.abort();
    }
    drop(flood);
    // Read the delivery once the API answers again.
    let deadline = Instant::now() + Duration::from_secs(20);
    let detail = loop {
        if let Ok(Ok(r)) = tokio::time::timeout(
            Duration::from_secs(3),
            reqwest::Client::new()
                .get(format!("{}/v1/notifications/{id}", p.base))
                .header("authorization", format!("Bearer {TOKEN}"))
                .send(),
        )
        .await
        {
            if let Ok(v) = r.json::<Value>().await {
                break v;
            }
        }
        assert!(Instant::now() < deadline, "the API never came back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    FloodRun {
        probes,
        attempts: detail["deliveries"][0]["attempts"].clone(),
    }
}

/// 300 slow clients against a server whose hard descriptor limit is 256: `/healthz` keeps
/// answering, and a delivery to a healthy receiver due during the flood succeeds instead of
/// failing with "Too many open files".
#[tokio::test]
async fn slow_clients_under_a_low_descriptor_limit_neither_starve_healthz_nor_spend_a_delivery() {
    let FloodRun { probes, attempts } = slow_client_flood((256, 256), 300).await;
    eprintln!("healthz under 300 slow clients (hard limit 256): {probes:?}");
    eprintln!("attempts: {attempts:#}");
    let spent_locally: Vec<&Value> = attempts
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| {
            a["error"]
                .as_str()
                .is_some_and(|e| e.contains("Too many open files"))
        })
        .collect();
    assert!(
        spent_locally.is_empty(),
        "attempts were spent on Herald's own descriptor exhaustion: {spent_locally:?}"
    );
    for probe in &probes {
        let latency = probe.as_ref().expect("/healthz failed under the flood");
        assert!(*latency < Duration::from_secs(2), "{probes:?}");
    }
    assert_eq!(
        attempts[1]["status_code"], 204,
        "the retry during the flood was not delivered: {attempts:#}"
    );
}

/// The figures for the report, at full scale: `HERALD_FLOOD=CLIENTS:SOFT:HARD`
/// (default 2000:1024:1024; set `HERALD_FLOOD_DEFAULT_TIMEOUTS=1` for the default
/// timeouts). Prints, asserts nothing.
#[tokio::test]
#[ignore = "a measurement; run with --ignored --nocapture"]
async fn measure_slow_client_flood() {
    let spec = std::env::var("HERALD_FLOOD").unwrap_or_else(|_| "2000:1024:1024".into());
    let n: Vec<u64> = spec.split(':').filter_map(|x| x.parse().ok()).collect();
    let (clients, soft, hard) = (n[0] as usize, n[1], n[2]);
    let run = slow_client_flood((soft, hard), clients).await;
    eprintln!("{clients} slow clients, nofile {soft}:{hard}");
    eprintln!("  /healthz: {:?}", run.probes);
    for a in run.attempts.as_array().unwrap() {
        eprintln!(
            "  attempt {}: status {} class {} {}",
            a["n"], a["status_code"], a["error_class"], a["error"]
        );
    }
}

/// At start the soft descriptor limit is raised to the hard one, and the log says so.
#[tokio::test]
async fn the_descriptor_limit_is_raised_to_the_hard_limit_at_start_and_logged() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("herald.db");
    let mut spawn = Spawn::new(&db);
    spawn.nofile = Some((128, 2048));
    let p = spawn.start().await;
    let pid = p.child.id().unwrap();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .to_string();
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields[3], "2048", "soft limit not raised: {line}");
    // Standard error is collected asynchronously: give the line a moment to arrive.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let logs = p.logs();
        if logs
            .iter()
            .any(|l| l.contains("descriptor") && l.contains("2048"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "not logged: {logs:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A client that sends its request head a byte at a time is disconnected once the
/// header-read timeout passes.
#[tokio::test]
async fn a_client_dripping_its_request_head_is_disconnected_after_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("herald.db");
    let mut spawn = Spawn::new(&db);
    spawn.env = vec![
        ("HERALD_HEADER_READ_TIMEOUT", "1".into()),
        ("HERALD_IDLE_TIMEOUT", "30".into()),
    ];
    let p = spawn.start().await;
    let mut s = TcpStream::connect(("127.0.0.1", p.port)).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let started = Instant::now();
    // Drip a byte every 200 ms for up to 6 s; the server must close well before.
    let (mut r, mut w) = s.into_split();
    let drip = tokio::spawn(async move {
        for _ in 0..30 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if w.write_all(b"a").await.is_err() {
                return;
            }
        }
    });
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(Duration::from_secs(6), async {
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await;
    drip.abort();
    let closed = closed.expect("the dripping client was still connected after 6 s");
    eprintln!("dripping client closed after {closed:?}");
    assert!(closed < Duration::from_secs(3), "{closed:?}");
}

/// A client that sends a request's head and then drips its body gets 408 once the
/// body-read timeout passes, and the connection closes.
#[tokio::test]
async fn a_client_dripping_its_request_body_gets_408_after_the_body_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("herald.db");
    let mut spawn = Spawn::new(&db);
    spawn.env = vec![("HERALD_BODY_READ_TIMEOUT", "1".into())];
    let p = spawn.start().await;
    let s = TcpStream::connect(("127.0.0.1", p.port)).await.unwrap();
    let (mut r, mut w) = s.into_split();
    w.write_all(
        format!(
            "POST /v1/apps HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
             Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let started = Instant::now();
    let drip = tokio::spawn(async move {
        for _ in 0..30 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if w.write_all(b" ").await.is_err() {
                return;
            }
        }
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(6), async {
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    drip.abort();
    let text = String::from_utf8_lossy(&got).to_string();
    let closed = closed.unwrap_or_else(|_| panic!("still connected after 6 s; got {text:?}"));
    eprintln!("dripping body answered and closed after {closed:?}: {text:?}");
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(closed < Duration::from_secs(3), "{closed:?}");
}

/// A keep-alive connection with no request for the idle timeout is closed, even though
/// the header-read timeout is longer.
#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("herald.db");
    let mut spawn = Spawn::new(&db);
    spawn.env = vec![
        ("HERALD_HEADER_READ_TIMEOUT", "30".into()),
        ("HERALD_IDLE_TIMEOUT", "1".into()),
    ];
    let p = spawn.start().await;
    let mut s = TcpStream::connect(("127.0.0.1", p.port)).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    let closed = time_to_close(&mut s, Duration::from_secs(6))
        .await
        .expect("the idle keep-alive connection was still open after 6 s");
    eprintln!("idle keep-alive connection closed after {closed:?}");
    assert!(closed < Duration::from_secs(3), "{closed:?}");
}

// --- 4. Refusals at the door -------------------------------------------------------------

#[tokio::test]
async fn payloads_the_apps_profile_cannot_encode_are_refused_with_422() {
    let server = TestServer::start().await;
    let rx = Receiver::start(Receiver::ok()).await;
    let wechat = {
        let (s, v) = server
            .call(
                "POST",
                "/v1/apps",
                Some(json!({"name": "wx", "profile": "wechatpay-v2"})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        v["id"].as_str().unwrap().to_string()
    };
    let alipay = {
        let (s, v) = server
            .call(
                "POST",
                "/v1/apps",
                Some(json!({"name": "ali", "profile": "alipay"})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        v["id"].as_str().unwrap().to_string()
    };
    let url = rx.url("/notify");
    // A WeChat field name that is not an XML name.
    let (s, v) = server
        .call(
            "POST",
            &format!("/v1/apps/{wechat}/notifications"),
            Some(json!({"event_type": "e", "notify_url": url,
                        "payload": {"out_trade_no": "1", "bad name": "x"}})),
        )
        .await;
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["error"]["code"], "invalid", "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("bad name"),
        "{v}"
    );
    // Nesting past what the encoder parses (an object value is re-serialised as JSON).
    let deep = format!(
        r#"{{"event_type": "e", "notify_url": "{url}", "payload": {{"out_trade_no": "1", "extra": {}1{}}}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    let (s, v) = server
        .call_raw(
            "POST",
            &format!("/v1/apps/{alipay}/notifications"),
            Some(deep.into_bytes()),
            Some(TOKEN),
            &[],
        )
        .await;
    assert_eq!(s, 422, "{v}");
    // What the profile can encode is still accepted.
    let (s, v) = server
        .call(
            "POST",
            &format!("/v1/apps/{wechat}/notifications"),
            Some(json!({"event_type": "e", "notify_url": url,
                        "payload": {"out_trade_no": "1", "total_fee": 1}})),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    // Nothing was stored for the refused ones.
    let (s, v) = server
        .call("GET", &format!("/v1/apps/{alipay}/notifications"), None)
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["data"].as_array().unwrap().len(), 0, "{v}");
}

#[tokio::test]
async fn targets_the_policy_always_refuses_get_422_unless_private_targets_are_allowed() {
    let strict = TestServer::start_with(engine_config(false)).await;
    let app = strict.app(json!({})).await;
    for url in [
        "http://127.0.0.1:9000/hook",
        "http://localhost:9000/hook",
        "http://api.localhost/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.10/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]:9000/hook",
        "http://[fd00::1]/hook",
        "http://0.0.0.0/hook",
        "http://[::ffff:127.0.0.1]/",
    ] {
        let (s, v) = strict
            .call(
                "POST",
                &format!("/v1/apps/{app}/endpoints"),
                Some(json!({"url": url})),
            )
            .await;
        assert_eq!(s, 422, "endpoint {url}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("--allow-private-targets"),
            "{v}"
        );
        let (s, v) = strict
            .call(
                "POST",
                &format!("/v1/apps/{app}/notifications"),
                Some(json!({"event_type": "e", "payload": {}, "notify_url": url})),
            )
            .await;
        assert_eq!(s, 422, "notify_url {url}: {v}");
    }
    // PATCH is checked too.
    let ep = strict
        .endpoint(&app, json!({"url": "https://hooks.example.com/x"}))
        .await;
    let (s, v) = strict
        .call(
            "PATCH",
            &format!("/v1/apps/{app}/endpoints/{ep}"),
            Some(json!({"url": "http://127.0.0.1/"})),
        )
        .await;
    assert_eq!(s, 422, "{v}");
    // Public addresses and names (resolved later, by the engine) are accepted.
    for url in [
        "https://93.184.216.34/hook",
        "https://hooks.example.com/hook",
    ] {
        let (s, v) = strict
            .call(
                "POST",
                &format!("/v1/apps/{app}/notifications"),
                Some(json!({"event_type": "e", "payload": {}, "notify_url": url})),
            )
            .await;
        assert_eq!(s, 202, "{url}: {v}");
    }
    // With private targets allowed, loopback is fine.
    let open = TestServer::start().await;
    let app = open.app(json!({})).await;
    open.endpoint(&app, json!({"url": "http://127.0.0.1:9000/hook"}))
        .await;
    open.endpoint(&app, json!({"url": "http://localhost:9000/hook"}))
        .await;
}

// --- 5. Idempotency ----------------------------------------------------------------------

#[tokio::test]
async fn a_reused_idempotency_key_with_another_body_is_409_and_the_first_is_untouched() {
    let server = TestServer::start().await;
    let rx = Receiver::start(Receiver::ok()).await;
    let app = server.app(json!({})).await;
    let path = format!("/v1/apps/{app}/notifications");
    let first = json!({"event_type": "trade.success", "payload": {"amount": 880},
                       "notify_url": rx.url("/n"), "order_key": "o-1"});
    let key = [("idempotency-key", "order-1001")];
    let (s, h, v1) = server
        .call_full(
            "POST",
            &path,
            Some(first.to_string().into_bytes()),
            Some(TOKEN),
            &key,
        )
        .await;
    assert_eq!(s, 202, "{v1}");
    assert!(h.get("idempotent-replayed").is_none());
    for other in [
        json!({"event_type": "trade.success", "payload": {"amount": 881},
               "notify_url": rx.url("/n"), "order_key": "o-1"}),
        json!({"event_type": "trade.closed", "payload": {"amount": 880},
               "notify_url": rx.url("/n"), "order_key": "o-1"}),
        json!({"event_type": "trade.success", "payload": {"amount": 880},
               "notify_url": rx.url("/other"), "order_key": "o-1"}),
        json!({"event_type": "trade.success", "payload": {"amount": 880},
               "notify_url": rx.url("/n"), "order_key": "o-2"}),
        json!({"event_type": "trade.success", "payload": {"amount": 880},
               "notify_url": rx.url("/n")}),
    ] {
        let (s, v) = server
            .call_raw(
                "POST",
                &path,
                Some(other.to_string().into_bytes()),
                Some(TOKEN),
                &key,
            )
            .await;
        assert_eq!(s, 409, "{other}: {v}");
        assert_eq!(v["error"]["code"], "conflict");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("Idempotency-Key"),
            "{v}"
        );
    }
    // The same body replays the first notification.
    let (s, h, v2) = server
        .call_full(
            "POST",
            &path,
            Some(first.to_string().into_bytes()),
            Some(TOKEN),
            &key,
        )
        .await;
    assert_eq!(s, 202, "{v2}");
    assert_eq!(h.get("idempotent-replayed").unwrap(), "true");
    assert_eq!(v2["id"], v1["id"]);
    // And the first is untouched.
    let n = server.notification(v1["id"].as_str().unwrap()).await;
    assert_eq!(n["payload"], json!({"amount": 880}));
    assert_eq!(n["event_type"], "trade.success");
    assert_eq!(n["order_key"], "o-1");
    let (_, list) = server.call("GET", &path, None).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
}

// --- 6. Secrets at rest and in responses -------------------------------------------------

#[tokio::test]
async fn the_database_files_are_readable_by_their_owner_only() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("herald.db");
    let p = Spawn::new(&db).start().await;
    let (s, _) = call_at(&p.base, "POST", "/v1/apps", Some(json!({"name": "m"}))).await;
    assert_eq!(s, 201);
    for suffix in ["", "-wal", "-shm"] {
        let path = format!("{}{suffix}", db.display());
        let mode = std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{path} has mode {mode:o}");
    }
    drop(p);
    // An existing database left readable by others is tightened at the next start.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("old.db");
    std::fs::write(&db, b"").unwrap();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let _p = Spawn::new(&db).start().await;
    let mode = std::fs::metadata(&db).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "existing database left at {mode:o}");
}

#[tokio::test]
async fn passwords_in_urls_are_masked_in_every_response() {
    let server = TestServer::start().await;
    let rx = Receiver::start(Receiver::ok()).await;
    let app = server.app(json!({})).await;
    let secret_url = format!("http://hook-user:s3cr3t-pw@{}/hook", rx.addr);
    let notify_url = format!("http://n-user:n0t1fy-pw@{}/notify", rx.addr);
    let mut bodies = Vec::new();
    let (s, ep) = server
        .call(
            "POST",
            &format!("/v1/apps/{app}/endpoints"),
            Some(json!({"url": secret_url})),
        )
        .await;
    assert_eq!(s, 201, "{ep}");
    assert_eq!(
        ep["url"],
        format!("http://hook-user:****@{}/hook", rx.addr),
        "{ep}"
    );
    let ep_id = ep["id"].as_str().unwrap().to_string();
    bodies.push(ep);
    bodies.push(
        server
            .call("GET", &format!("/v1/apps/{app}/endpoints/{ep_id}"), None)
            .await
            .1,
    );
    bodies.push(
        server
            .call("GET", &format!("/v1/apps/{app}/endpoints"), None)
            .await
            .1,
    );
    bodies.push(
        server
            .call(
                "PATCH",
                &format!("/v1/apps/{app}/endpoints/{ep_id}"),
                Some(json!({"url": secret_url, "max_in_flight": 2})),
            )
            .await
            .1,
    );
    let accepted = server
        .notify(&app, json!({"event_type": "e", "payload": {"x": 1}}))
        .await;
    let id = accepted["id"].as_str().unwrap().to_string();
    bodies.push(accepted);
    let accepted = server
        .notify(
            &app,
            json!({"event_type": "e", "payload": {"x": 2}, "notify_url": notify_url}),
        )
        .await;
    let id2 = accepted["id"].as_str().unwrap().to_string();
    bodies.push(accepted);
    bodies.push(server.wait_status(&id, "succeeded").await);
    bodies.push(server.wait_status(&id2, "succeeded").await);
    let detail = server.notification(&id).await;
    let dlv = detail["deliveries"][0]["id"].as_str().unwrap().to_string();
    bodies.push(
        server
            .call("GET", &format!("/v1/deliveries/{dlv}"), None)
            .await
            .1,
    );
    bodies.push(
        server
            .call("POST", &format!("/v1/deliveries/{dlv}/retry"), None)
            .await
            .1,
    );
    bodies.push(
        server
            .call("GET", &format!("/v1/apps/{app}/notifications"), None)
            .await
            .1,
    );
    for body in &bodies {
        let text = body.to_string();
        assert!(
            !text.contains("s3cr3t-pw") && !text.contains("n0t1fy-pw"),
            "a password leaked: {text}"
        );
    }
    assert!(bodies
        .iter()
        .any(|b| b.to_string().contains("n-user:****@")));
    // The receiver still got the real credentials (Basic auth from the URL).
    assert!(rx.count() >= 2);
}

#[tokio::test]
async fn at_most_ten_secrets_sign_side_by_side_and_rotation_drops_the_oldest() {
    let server = TestServer::start().await;
    let rx = Receiver::start(Receiver::ok()).await;
    let app = server.app(json!({})).await;
    server.endpoint(&app, json!({"url": rx.url("/")})).await;
    for _ in 0..25 {
        let (s, v) = server
            .call(
                "POST",
                &format!("/v1/apps/{app}/secret/rotate"),
                Some(json!({"grace_period": 86400})),
            )
            .await;
        assert_eq!(s, 200, "{v}");
    }
    let (_, v) = server.call("GET", &format!("/v1/apps/{app}"), None).await;
    assert_eq!(v["credentials"]["rotating_keys"], 9, "{v}");
    let n = server
        .notify(&app, json!({"event_type": "e", "payload": {}}))
        .await;
    server
        .wait_status(n["id"].as_str().unwrap(), "succeeded")
        .await;
    let got = rx.wait_count(1).await;
    let sig = got[0].header("webhook-signature");
    assert_eq!(sig.split(' ').count(), 10, "{sig}");
}

// --- 7. The admin token ------------------------------------------------------------------

#[tokio::test]
async fn an_empty_admin_token_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("herald.db");
    let empty_file = dir.path().join("empty-token");
    std::fs::write(&empty_file, "\n").unwrap();
    type Case<'a> = (Vec<String>, Vec<(&'a str, &'a str)>);
    let cases: Vec<Case> = vec![
        (vec!["--admin-token".into(), "".into()], vec![]),
        (vec!["--admin-token".into(), "   ".into()], vec![]),
        (vec![], vec![("HERALD_ADMIN_TOKEN", "")]),
        (
            vec![
                "--admin-token-file".into(),
                empty_file.display().to_string(),
            ],
            vec![],
        ),
    ];
    for (args, env) in cases {
        let mut cmd = std::process::Command::new(BIN);
        cmd.args([
            "serve",
            "--db",
            &format!("sqlite://{}", db.display()),
            "--listen",
            "127.0.0.1:0",
        ])
        .args(&args)
        .env_remove("HERALD_ADMIN_TOKEN");
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("started with an empty admin token: {args:?} {env:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!status.success(), "{args:?} {env:?}");
        assert!(
            stderr.contains("admin token") && stderr.contains("empty"),
            "{args:?} {env:?}: {stderr}"
        );
    }
}

#[tokio::test]
async fn the_admin_token_can_come_from_a_file_kept_out_of_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("herald.db");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let mut spawn = Spawn::new(&db);
    spawn.args = vec![
        "--admin-token-file".into(),
        token_file.display().to_string(),
    ];
    let p = spawn.start().await;
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", p.child.id().unwrap())).unwrap();
    assert!(
        !String::from_utf8_lossy(&cmdline).contains(TOKEN),
        "the token is visible in ps"
    );
    let (s, v) = call_at(&p.base, "POST", "/v1/apps", Some(json!({"name": "f"}))).await;
    assert_eq!(s, 201, "{v}");
    let logs = p.logs().join("\n");
    assert!(!logs.contains(TOKEN), "the token was logged: {logs}");
    // A missing file is a clear start error, not a generated token.
    let out = std::process::Command::new(BIN)
        .args([
            "serve",
            "--db",
            &format!("sqlite://{}", db.display()),
            "--listen",
            "127.0.0.1:0",
            "--admin-token-file",
        ])
        .arg(dir.path().join("missing"))
        .env_remove("HERALD_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--admin-token-file"), "{stderr}");
}

#[tokio::test]
async fn the_bearer_scheme_is_matched_case_insensitively() {
    let server = TestServer::start().await;
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let (s, v) = server
            .call_raw(
                "POST",
                "/v1/apps",
                Some(json!({"name": "x"}).to_string().into_bytes()),
                None,
                &[("authorization", &format!("{scheme} {TOKEN}"))],
            )
            .await;
        assert_eq!(s, 201, "{scheme}: {v}");
    }
    for bad in [
        format!("Basic {TOKEN}"),
        format!("Bearer{TOKEN}"),
        "Bearer ".to_string(),
        TOKEN.to_string(),
    ] {
        let (s, _) = server
            .call_raw("GET", "/v1/apps/x", None, None, &[("authorization", &bad)])
            .await;
        assert_eq!(s, 401, "{bad}");
    }
}

// --- 8. Graceful shutdown ----------------------------------------------------------------

/// SIGTERM while producers are sending: the binary drains and exits within seconds, and
/// after a restart every notification that got a 202 exists and is delivered at least once.
#[tokio::test]
async fn sigterm_under_load_drains_quickly_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("herald.db");
    let rx = Receiver::start(|_, _| Reply::Status(204, "")).await;
    let spawn = Spawn::new(&db);
    let mut p = spawn.start().await;
    let port = p.port;
    let (_, app) = call_at(
        &p.base,
        "POST",
        "/v1/apps",
        Some(json!({"name": "term", "credentials": {"secret": SECRET}})),
    )
    .await;
    let app = app["id"].as_str().unwrap().to_string();
    let (s, _) = call_at(
        &p.base,
        "POST",
        &format!("/v1/apps/{app}/endpoints"),
        Some(json!({"url": rx.url("/"), "retry": [0.2, 0.5, 1]})),
    )
    .await;
    assert_eq!(s, 201);
    // Eight producers send as fast as they can until the server stops answering.
    let accepted = Arc::new(Mutex::new(Vec::<(String, i64)>::new()));
    let mut producers = Vec::new();
    for w in 0..8i64 {
        let base = p.base.clone();
        let app = app.clone();
        let accepted = accepted.clone();
        producers.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            for i in 0.. {
                let seq = w * 1_000_000 + i;
                let resp = client
                    .post(format!("{base}/v1/apps/{app}/notifications"))
                    .header("authorization", format!("Bearer {TOKEN}"))
                    .header("content-type", "application/json")
                    .body(json!({"event_type": "e", "payload": {"seq": seq}}).to_string())
                    .send()
                    .await;
                let Ok(resp) = resp else { return };
                if resp.status() != 202 {
                    continue;
                }
                let Ok(v) = resp.json::<Value>().await else {
                    return;
                };
                if let Some(id) = v["id"].as_str() {
                    accepted.lock().unwrap().push((id.to_string(), seq));
                }
            }
        }));
    }
    // Let load build, then SIGTERM.
    let deadline = Instant::now() + Duration::from_secs(20);
    while accepted.lock().unwrap().len() < 200 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = p.child.id().unwrap();
    let term_at = Instant::now();
    let st = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let status = tokio::time::timeout(Duration::from_secs(10), p.child.wait())
        .await
        .expect("herald did not exit within 10 s of SIGTERM")
        .unwrap();
    let drained_in = term_at.elapsed();
    for t in producers {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    assert!(status.success(), "exit status {status}");
    eprintln!(
        "SIGTERM with {} accepted: exited in {drained_in:?}",
        accepted.lock().unwrap().len()
    );
    assert!(drained_in < Duration::from_secs(6), "{drained_in:?}");

    // Restart on the same database: every 202 is there and gets delivered.
    let p = spawn.start_on(port).await;
    let accepted = accepted.lock().unwrap().clone();
    assert!(accepted.len() >= 200);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let delivered: std::collections::HashSet<i64> = rx
            .received()
            .iter()
            .filter_map(|r| r.json()["seq"].as_i64())
            .collect();
        let missing: Vec<&(String, i64)> = accepted
            .iter()
            .filter(|(_, seq)| !delivered.contains(seq))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} accepted notifications never delivered, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (id, _) in accepted.iter().step_by(17) {
        let (s, v) = call_at(&p.base, "GET", &format!("/v1/notifications/{id}"), None).await;
        assert_eq!(s, 200, "an acknowledged notification was lost: {id}");
        assert_eq!(v["status"], "succeeded", "{v}");
    }
}
