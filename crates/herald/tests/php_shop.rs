//! The plain-PHP merchant (`examples/php-shop`) against the real server: PHP's built-in
//! server with four workers (so copies really run concurrently), the shop's own SQLite
//! database read back after every scenario. Payments go through the payment sandbox, with
//! its drills (duplicates, a foreign-signed copy, a correctly signed tampered amount, a
//! refund before its payment); `notify-direct.php` takes Alipay's notifications itself,
//! `notify-gateway.php` takes them from a Herald source for every profile a source accepts.
//! PHP is required: `.ci/run` installs Debian's php-cli and php-sqlite3 when missing, and a
//! machine without them fails here rather than skipping.
mod common;

use std::net::TcpStream;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Receiver, Reply, TestServer};
use herald_server::sandbox::SandboxOptions;
use serde_json::{json, Value};

/// `php -S` serving examples/php-shop, killed on drop with its workers: it runs in a
/// process group of its own, and the whole group is killed (killing the server alone left
/// its four workers running, orphaned, still answering on its port).
struct PhpShop {
    child: Child,
    base: String,
    db: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for PhpShop {
    fn drop(&mut self) {
        let group = rustix::process::Pid::from_child(&self.child);
        if rustix::process::kill_process_group(group, rustix::process::Signal::KILL).is_err() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A free loopback port (for a PHP server whose URL must be known before it starts).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl PhpShop {
    fn start(env: &[(&str, &str)]) -> PhpShop {
        Self::start_on(free_port(), env)
    }

    fn start_on(port: u16, env: &[(&str, &str)]) -> PhpShop {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("shop.db");
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/php-shop");
        let child = Command::new("php")
            .arg("-S")
            .arg(format!("127.0.0.1:{port}"))
            .arg("-t")
            .arg(&root)
            .env("SHOP_DB", &db)
            .env("PHP_CLI_SERVER_WORKERS", "4")
            .envs(env.iter().copied())
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run php ({e}): install Debian's php-cli and php-sqlite3 (.ci/run does)"
                )
            });
        let mut shop = PhpShop {
            child,
            base: format!("http://127.0.0.1:{port}"),
            db,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = shop.child.try_wait() {
                panic!("php -S exited ({status}): is php-cli installed and the port free?");
            }
            assert!(Instant::now() < deadline, "php -S did not start listening");
            std::thread::sleep(Duration::from_millis(20));
        }
        shop
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn create_order(&self, out_trade_no: &str, amount: i64) {
        let resp = reqwest::Client::new()
            .post(self.url("/create-order.php"))
            .form(&[
                ("out_trade_no", out_trade_no),
                ("amount", &amount.to_string()),
            ])
            .send()
            .await
            .expect("create order");
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        assert_eq!(status, 201, "create-order.php: {body}");
    }

    fn query(&self, sql: &str, param: &str) -> i64 {
        let conn = rusqlite::Connection::open(&self.db).expect("the shop's database");
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        conn.query_row(sql, [param], |r| r.get(0))
            .expect("query the shop's database")
    }

    fn fulfilments(&self, out_trade_no: &str, action: &str) -> i64 {
        let conn = rusqlite::Connection::open(&self.db).expect("the shop's database");
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        conn.query_row(
            "SELECT COUNT(*) FROM fulfilments WHERE out_trade_no = ?1 AND action = ?2",
            [out_trade_no, action],
            |r| r.get(0),
        )
        .expect("count fulfilments")
    }

    fn status(&self, out_trade_no: &str) -> String {
        let conn = rusqlite::Connection::open(&self.db).expect("the shop's database");
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        conn.query_row(
            "SELECT status FROM orders WHERE out_trade_no = ?1",
            [out_trade_no],
            |r| r.get(0),
        )
        .expect("the order")
    }

    fn refused(&self, like: &str) -> i64 {
        self.query(
            "SELECT COUNT(*) FROM refused WHERE reason LIKE '%' || ?1 || '%'",
            like,
        )
    }

    async fn wait_status(&self, out_trade_no: &str, status: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let now = self.status(out_trade_no);
            if now == status {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "order {out_trade_no} is {now}, not {status}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[test]
fn a_stopped_php_shop_leaves_no_worker_answering_on_its_port() {
    let port = free_port();
    let shop = PhpShop::start_on(port, &[]);
    drop(shop);
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(
            Instant::now() < deadline,
            "a PHP worker still answers on port {port} after its shop was stopped"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn sandbox() -> TestServer {
    TestServer::start_sandbox(SandboxOptions::default()).await
}

/// Creates a sandbox merchant app; returns its id and its once-shown credentials.
async fn merchant(server: &TestServer, profile: &str) -> (String, Value) {
    let (status, v) = server
        .call(
            "POST",
            "/v1/apps",
            Some(json!({"name": "php shop", "profile": profile})),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    (
        v["id"].as_str().unwrap().to_string(),
        v["credentials"].clone(),
    )
}

async fn pay(server: &TestServer, body: Value) -> String {
    let (status, v) = server
        .call("POST", "/v1/sandbox/payments", Some(body))
        .await;
    assert_eq!(status, 201, "{v}");
    let id = v["payment_id"].as_str().unwrap().to_string();
    let resp = server
        .client
        .post(format!("{}/pay/{id}/pay", server.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("")
        .send()
        .await
        .expect("pay");
    // Without a return_url the checkout answers its "paid" page itself.
    assert_eq!(resp.status().as_u16(), 200, "paid");
    id
}

async fn refund(server: &TestServer, payment_id: &str, amount: i64) {
    let (status, v) = server
        .call(
            "POST",
            &format!("/v1/sandbox/payments/{payment_id}/refund"),
            Some(json!({"amount": amount})),
        )
        .await;
    assert_eq!(status, 201, "{v}");
}

/// Every notification the sandbox sent for the payment (real ones and drill copies), once
/// none of their deliveries is pending any more.
async fn settled(server: &TestServer, payment_id: &str) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, p) = server
            .call("GET", &format!("/v1/sandbox/payments/{payment_id}"), None)
            .await;
        let ids: Vec<String> = p["events"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|e| e["notifications"].as_array().cloned().unwrap_or_default())
            .filter_map(|n| n["notification_id"].as_str().map(str::to_string))
            .collect();
        let mut all = Vec::new();
        for id in &ids {
            all.push(server.notification(id).await);
        }
        let pending = all.iter().any(|n| {
            n["deliveries"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|d| d["status"] == "pending")
        });
        let held = p["events"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["held"] == true);
        if !ids.is_empty() && !pending && !held {
            return all;
        }
        assert!(Instant::now() < deadline, "still pending: {p:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The statuses of the notifications' deliveries, sorted.
fn delivery_statuses(ns: &[Value]) -> Vec<String> {
    let mut s: Vec<String> = ns
        .iter()
        .flat_map(|n| n["deliveries"].as_array().cloned().unwrap_or_default())
        .map(|d| d["status"].as_str().unwrap_or("").to_string())
        .collect();
    s.sort();
    s
}

// --- notify-direct.php --------------------------------------------------------------------

/// An Alipay merchant in the sandbox and the PHP shop configured with its app id and
/// public key (the key file lives in the returned directory).
async fn direct_shop(server: &TestServer) -> (PhpShop, String, tempfile::TempDir) {
    let (app_id, creds) = merchant(server, "alipay").await;
    let keys = tempfile::tempdir().expect("tempdir");
    let key = keys.path().join("alipay_public.pem");
    std::fs::write(&key, creds["public_key_pem"].as_str().unwrap()).expect("write the key");
    let shop = PhpShop::start(&[
        ("ALIPAY_APP_ID", creds["app_id"].as_str().unwrap()),
        ("ALIPAY_PUBLIC_KEY_FILE", key.to_str().unwrap()),
    ]);
    (shop, app_id, keys)
}

#[tokio::test]
async fn php_direct_handler_applies_an_alipay_payment_once_through_copies_a_forgery_and_a_tampered_amount(
) {
    let server = sandbox().await;
    let (shop, app_id, _keys) = direct_shop(&server).await;
    shop.create_order("D-1001", 8800).await;
    let payment = pay(
        &server,
        json!({"app_id": app_id, "out_trade_no": "D-1001", "total_amount": "88.00",
               "subject": "tea", "notify_url": shop.url("/notify-direct.php"),
               "drills": {"duplicate": 3, "bad_signature": true, "tampered_amount": true}}),
    )
    .await;
    let sent = settled(&server, &payment).await;
    // The real one and its 3 copies are acknowledged with "success"; the forged and the
    // tampered copies are refused ("fail", one attempt each).
    assert_eq!(
        delivery_statuses(&sent),
        vec![
            "failed",
            "failed",
            "succeeded",
            "succeeded",
            "succeeded",
            "succeeded"
        ]
    );
    assert_eq!(shop.status("D-1001"), "paid");
    assert_eq!(
        shop.fulfilments("D-1001", "ship"),
        1,
        "shipped exactly once"
    );
    assert_eq!(shop.refused("bad signature"), 1);
    assert_eq!(shop.refused("amount 8900 does not match"), 1);

    refund(&server, &payment, 8800).await;
    shop.wait_status("D-1001", "refunded").await;
    settled(&server, &payment).await;
    assert_eq!(shop.fulfilments("D-1001", "refund"), 1);
    assert_eq!(shop.fulfilments("D-1001", "ship"), 1);
}

#[tokio::test]
async fn php_direct_handler_applies_a_refund_that_arrives_before_its_payment() {
    let server = sandbox().await;
    let (shop, app_id, _keys) = direct_shop(&server).await;
    shop.create_order("D-2002", 1990).await;
    let payment = pay(
        &server,
        json!({"app_id": app_id, "out_trade_no": "D-2002", "total_amount": "19.90",
               "subject": "mug", "notify_url": shop.url("/notify-direct.php"),
               "drills": {"out_of_order": true}}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        shop.status("D-2002"),
        "pending",
        "the payment notification is held back"
    );
    refund(&server, &payment, 1990).await;
    let sent = settled(&server, &payment).await;
    assert_eq!(delivery_statuses(&sent), vec!["succeeded", "succeeded"]);
    assert_eq!(shop.status("D-2002"), "refunded");
    assert_eq!(shop.fulfilments("D-2002", "ship"), 1);
    assert_eq!(shop.fulfilments("D-2002", "refund"), 1);
}

#[tokio::test]
async fn php_direct_handler_refuses_a_notification_signed_with_another_merchants_key() {
    let server = sandbox().await;
    let (_, creds) = merchant(&server, "alipay").await;
    let (other_app, _) = merchant(&server, "alipay").await;
    // The shop trusts the first app's key and id; the second app's notifications carry
    // another app_id (and another key).
    let key_dir = tempfile::tempdir().unwrap();
    let key = key_dir.path().join("k.pem");
    std::fs::write(&key, creds["public_key_pem"].as_str().unwrap()).unwrap();
    let shop = PhpShop::start(&[
        ("ALIPAY_APP_ID", creds["app_id"].as_str().unwrap()),
        ("ALIPAY_PUBLIC_KEY_FILE", key.to_str().unwrap()),
    ]);
    shop.create_order("D-3003", 100).await;
    let payment = pay(
        &server,
        json!({"app_id": other_app, "out_trade_no": "D-3003", "total_amount": "1.00",
               "subject": "pen", "notify_url": shop.url("/notify-direct.php")}),
    )
    .await;
    // Refused with "fail": Alipay's schedule would send it again in minutes.
    let deadline = Instant::now() + Duration::from_secs(30);
    while shop.refused("bad signature") == 0 {
        assert!(
            Instant::now() < deadline,
            "the notification never reached the shop"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, p) = server
        .call("GET", &format!("/v1/sandbox/payments/{payment}"), None)
        .await;
    let ntf = p["events"][0]["notifications"][0]["notification_id"]
        .as_str()
        .unwrap()
        .to_string();
    let n = server
        .wait_for(&ntf, |n| n["deliveries"][0]["attempt_count"] == 1)
        .await;
    assert_eq!(
        n["deliveries"][0]["status"], "pending",
        "to be retried: {n:#}"
    );
    assert_eq!(
        n["deliveries"][0]["attempts"][0]["response"], "fail",
        "{n:#}"
    );
    assert_eq!(shop.status("D-3003"), "pending");
    assert_eq!(shop.fulfilments("D-3003", "ship"), 0);
    assert_eq!(shop.refused("bad signature"), 1);
}

#[tokio::test]
async fn php_direct_handler_refuses_a_correctly_signed_notification_for_another_app_id() {
    let server = sandbox().await;
    // Two apps with one key pair: the signature verifies, only the app_id check refuses.
    let key = herald_protocols::keys::generate_rsa_2048();
    let pem = herald_protocols::keys::private_pem_pkcs8(&key).expect("pem");
    let public = herald_protocols::keys::public_pem(&key.to_public_key());
    let mk = |app: &'static str| {
        json!({"name": "shop", "profile": "alipay",
               "credentials": {"app_id": app, "private_key": pem.clone()}})
    };
    let (status, ours) = server
        .call("POST", "/v1/apps", Some(mk("2021000000000001")))
        .await;
    assert_eq!(status, 201, "{ours}");
    let (status, theirs) = server
        .call("POST", "/v1/apps", Some(mk("2021000000000002")))
        .await;
    assert_eq!(status, 201, "{theirs}");
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("k.pem");
    std::fs::write(&key_file, &public).unwrap();
    let shop = PhpShop::start(&[
        ("ALIPAY_APP_ID", "2021000000000001"),
        ("ALIPAY_PUBLIC_KEY_FILE", key_file.to_str().unwrap()),
    ]);
    shop.create_order("D-4004", 100).await;
    pay(
        &server,
        json!({"app_id": theirs["id"], "out_trade_no": "D-4004", "total_amount": "1.00",
               "subject": "pen", "notify_url": shop.url("/notify-direct.php")}),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while shop.refused("foreign app_id") == 0 {
        assert!(
            Instant::now() < deadline,
            "the notification never reached the shop"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        shop.refused("bad signature"),
        0,
        "the signature itself verified"
    );
    assert_eq!(shop.status("D-4004"), "pending");
    assert_eq!(shop.fulfilments("D-4004", "ship"), 0);
}

// --- notify-gateway.php behind a source ----------------------------------------------------

/// What a source of `profile` verifies the sandbox app's notifications with.
fn source_body(profile: &str, creds: &Value, destination: &str) -> Value {
    let s = |k: &str| creds[k].as_str().unwrap_or_default().to_string();
    let (keys, decrypt, app, merchant) = match profile {
        "alipay" => (vec![s("public_key_pem")], None, Some(s("app_id")), None),
        "wechatpay-v2" => (
            vec![s("api_key")],
            None,
            Some(s("appid")),
            Some(s("mch_id")),
        ),
        "wechatpay-v3" => (
            vec![format!("{}={}", s("serial"), s("public_key_pem"))],
            Some(s("api_v3_key")),
            Some(s("appid")),
            Some(s("mchid")),
        ),
        "stripe" | "standard-webhooks" => (vec![s("secret")], None, None, None),
        other => panic!("no keys for {other}"),
    };
    json!({
        "name": format!("{profile} in"),
        "profile": profile,
        "keys": keys,
        "decrypt_key": decrypt,
        "expect_app_id": app,
        "expect_merchant_id": merchant,
        "destination": {"url": destination},
        "retry": [1, 1, 1],
    })
}

async fn create_source(server: &TestServer, body: Value) -> Value {
    let (status, v) = server.call("POST", "/v1/sources", Some(body)).await;
    assert_eq!(status, 201, "{v}");
    v
}

/// The source's received notifications once every forward is final.
async fn forwarded(server: &TestServer, source_id: &str) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, v) = server
            .call(
                "GET",
                &format!("/v1/sources/{source_id}/notifications?limit=100"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{v}");
        let data = v["data"].as_array().cloned().unwrap_or_default();
        let pending = data.iter().any(|n| {
            n["deliveries"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|d| d["status"] == "pending")
        });
        if !pending {
            return data;
        }
        assert!(Instant::now() < deadline, "forwards still pending: {v:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const GATEWAY_PROFILES: [&str; 5] = [
    "alipay",
    "wechatpay-v2",
    "wechatpay-v3",
    "stripe",
    "standard-webhooks",
];

#[tokio::test]
async fn php_gateway_handler_applies_every_profiles_payment_once_through_a_source() {
    let server = sandbox().await;
    for profile in GATEWAY_PROFILES {
        let (app_id, creds) = merchant(&server, profile).await;
        // The source is created first (its secret configures the shop), with the shop's
        // URL known in advance: the port is chosen before PHP starts.
        let port = free_port();
        let src = create_source(
            &server,
            source_body(
                profile,
                &creds,
                &format!("http://127.0.0.1:{port}/notify-gateway.php"),
            ),
        )
        .await;
        let secret = src["secret"].as_str().unwrap().to_string();
        assert!(secret.starts_with("whsec_"), "{src}");
        let shop = PhpShop::start_on(port, &[("HERALD_SOURCE_SECRET", &secret)]);
        let ingest = src["ingest_url"].as_str().unwrap();
        let id = src["id"].as_str().unwrap();

        // A payment with every drill but out_of_order: 2 copies of the real one, a forged
        // copy, a correctly signed copy with the amount raised by 1.00.
        let no = format!("G-{}", profile.replace('-', ""));
        shop.create_order(&no, 880).await;
        let payment = pay(
            &server,
            json!({"app_id": app_id, "out_trade_no": no, "amount": 880, "subject": "cake",
                   "notify_url": ingest,
                   "drills": {"duplicate": 2, "bad_signature": true, "tampered_amount": true}}),
        )
        .await;
        let sent = settled(&server, &payment).await;
        // Herald acknowledged the real one and its copies, refused the forged one
        // (the tampered copy verifies: the gateway acknowledges it too).
        assert_eq!(
            delivery_statuses(&sent),
            vec!["failed", "succeeded", "succeeded", "succeeded", "succeeded"],
            "{profile}"
        );
        let received = forwarded(&server, id).await;
        assert_eq!(
            received.len(),
            2,
            "{profile}: the real one (once) and the tampered one"
        );
        assert!(
            received
                .iter()
                .all(|n| n["deliveries"][0]["status"] == "succeeded"),
            "{profile}: {received:#?}"
        );
        assert_eq!(shop.status(&no), "paid", "{profile}");
        assert_eq!(shop.fulfilments(&no, "ship"), 1, "{profile}");
        assert_eq!(shop.refused("amount 980 does not match"), 1, "{profile}");

        // A refund of it, and a second order whose refund arrives before its payment.
        refund(&server, &payment, 880).await;
        shop.wait_status(&no, "refunded").await;
        let late = format!("{no}-late");
        shop.create_order(&late, 500).await;
        let p2 = pay(
            &server,
            json!({"app_id": app_id, "out_trade_no": late, "amount": 500, "subject": "pie",
                   "notify_url": ingest, "drills": {"out_of_order": true}}),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        refund(&server, &p2, 200).await;
        settled(&server, &p2).await;
        forwarded(&server, id).await;
        assert_eq!(shop.status(&late), "refunded", "{profile}");
        assert_eq!(shop.fulfilments(&late, "ship"), 1, "{profile}");
        assert_eq!(shop.fulfilments(&late, "refund"), 1, "{profile}");
        assert_eq!(shop.fulfilments(&no, "ship"), 1, "{profile}");
        assert_eq!(shop.fulfilments(&no, "refund"), 1, "{profile}");
    }
}

#[tokio::test]
async fn twenty_concurrent_copies_to_a_source_are_acknowledged_twenty_times_and_applied_once_by_the_php_app(
) {
    let server = sandbox().await;
    let (app_id, creds) = merchant(&server, "alipay").await;
    // Capture one real, signed Alipay notification.
    let capture = Receiver::start(|_, _| Reply::Status(200, "success")).await;
    pay(
        &server,
        json!({"app_id": app_id, "out_trade_no": "C-20", "total_amount": "8.80",
               "subject": "coffee", "notify_url": capture.url("/notify")}),
    )
    .await;
    let original = capture.wait_count(1).await.remove(0);

    let port = free_port();
    let src = create_source(
        &server,
        source_body(
            "alipay",
            &creds,
            &format!("http://127.0.0.1:{port}/notify-gateway.php"),
        ),
    )
    .await;
    let shop = PhpShop::start_on(
        port,
        &[("HERALD_SOURCE_SECRET", src["secret"].as_str().unwrap())],
    );
    shop.create_order("C-20", 880).await;

    let ingest = src["ingest_url"].as_str().unwrap().to_string();
    let content_type = original.header("content-type");
    let client = reqwest::Client::new();
    let mut sends = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let req = client
            .post(&ingest)
            .header("content-type", &content_type)
            .body(original.body.clone());
        sends.spawn(async move {
            let resp = req.send().await.expect("post to the source");
            (
                resp.status().as_u16(),
                resp.text().await.unwrap_or_default(),
            )
        });
    }
    let answers = sends.join_all().await;
    assert_eq!(answers.len(), 20);
    for (status, body) in &answers {
        assert_eq!(
            (*status, body.as_str()),
            (200, "success"),
            "Alipay's exact ack"
        );
    }
    let received = forwarded(&server, src["id"].as_str().unwrap()).await;
    assert_eq!(received.len(), 1, "stored once: {received:#?}");
    assert_eq!(received[0]["deliveries"][0]["status"], "succeeded");
    assert_eq!(
        received[0]["deliveries"][0]["attempt_count"], 1,
        "forwarded once"
    );
    assert_eq!(shop.status("C-20"), "paid");
    assert_eq!(shop.fulfilments("C-20", "ship"), 1, "applied once");
}

#[tokio::test]
async fn php_gateway_handler_refuses_a_forward_with_a_bad_or_stale_signature() {
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let shop = PhpShop::start(&[("HERALD_SOURCE_SECRET", secret)]);
    shop.create_order("S-1", 100).await;
    let body = r#"{"kind":"payment","out_trade_no":"S-1","amount":100,"notify_id":"n1"}"#;
    let keys = herald_protocols::standard_webhooks::Keys::single(secret.into());
    let sign = |ts: i64| {
        herald_protocols::standard_webhooks::encode(
            &keys,
            &herald_protocols::OutgoingNotification {
                notify_id: "msg_1",
                event_type: "payment",
                payload: body.as_bytes(),
                timestamp: herald_protocols::UnixSeconds::new(ts),
                created_at: herald_protocols::UnixSeconds::new(ts),
            },
        )
        .expect("sign")
        .headers
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let post = |headers: Vec<(String, String)>, body: String| {
        let mut req = reqwest::Client::new()
            .post(shop.url("/notify-gateway.php"))
            .header("content-type", "application/json");
        for (k, v) in headers {
            req = req.header(k, v);
        }
        async move { req.body(body).send().await.expect("post").status().as_u16() }
    };
    // Another body under the same signature, and a signature from 10 minutes ago.
    let tampered = body.replace("100", "1");
    assert_eq!(post(sign(now), tampered).await, 401);
    assert_eq!(post(sign(now - 600), body.to_string()).await, 401);
    assert_eq!(shop.status("S-1"), "pending");
    assert_eq!(shop.refused("bad webhook signature"), 2);
    // The same request signed now is applied.
    assert_eq!(post(sign(now), body.to_string()).await, 200);
    assert_eq!(shop.status("S-1"), "paid");
    assert_eq!(shop.fulfilments("S-1", "ship"), 1);
}
