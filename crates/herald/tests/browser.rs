//! Herald in a real browser: headless Chromium, driven over WebDriver (chromedriver).
//!
//! - The demo: opens the shop, buys, pays on the sandbox's checkout page, follows the
//!   redirect back and sees the order turn paid once the notification has arrived. Then it
//!   buys again and the payment is made elsewhere (as a phone that scanned the QR code
//!   would, by another client): the checkout page notices by polling and moves the browser
//!   on to the shop by itself. The checkout page's screenshot is kept in
//!   `target/test-artifacts/checkout.png`.
//! - The dashboard: an operator signs in, finds a failed delivery from the overview, resends
//!   it once the receiver is fixed and sees it succeed; then signs in with another app's
//!   API key and sees that app only. Screenshots:
//!   `target/test-artifacts/dashboard-overview.png` and
//!   `target/test-artifacts/dashboard-notification.png`.
//!
//! Chromium comes from Debian's `chromium` and `chromium-driver` packages: `.ci/run`
//! installs them, and this test installs them itself (as root, with apt-get) when missing.
mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use base64::Engine as _;
use herald_demo::DemoOptions;
use herald_protocols::Profile;
use serde_json::{json, Value};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The W3C WebDriver key under which an element reference is returned.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Runs `apt-get ARGS` quietly; true when it succeeded.
fn apt_get(args: &[&str]) -> bool {
    std::process::Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs Debian's chromium + chromium-driver when they are missing.
fn ensure_chromium() {
    let present = || Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists();
    if present() {
        return;
    }
    let install = [
        "install",
        "-y",
        "--no-install-recommends",
        "chromium",
        "chromium-driver",
    ];
    // The package lists may be missing on a fresh machine: update once, then try again.
    if !apt_get(&install) && apt_get(&["update"]) {
        apt_get(&install);
    }
    assert!(
        present(),
        "the browser test needs Debian's chromium and chromium-driver \
         (apt-get install chromium chromium-driver); installing them failed"
    );
}

/// A chromedriver process and one browser session; both end on drop.
struct Browser {
    driver: std::process::Child,
    base: String,
    session: String,
    http: reqwest::Client,
    _profile_dir: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Browser {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let driver = std::process::Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = http.get(format!("{base}/status")).send().await;
            if let Ok(r) = ready {
                let v: Value = r.json().await.unwrap_or(Value::Null);
                if v["value"]["ready"] == true {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile_dir = tempfile::tempdir().unwrap();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--window-size=1024,900",
                    format!("--user-data-dir={}", profile_dir.path().display()),
                ]
            }
        }}});
        let resp: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = resp["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no browser session: {resp}"))
            .to_string();
        Browser {
            driver,
            base,
            session,
            http,
            _profile_dir: profile_dir,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut req = self.http.request(method, url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let v: Value = req.send().await.unwrap().json().await.unwrap();
        v["value"].clone()
    }

    async fn goto(&self, url: &str) {
        let v = self
            .call(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
        assert!(v.is_null(), "navigation to {url} failed: {v}");
    }

    /// Waits (up to 20 s) until the current URL satisfies `want`: a click that navigates
    /// may return before the new page has loaded.
    async fn wait_url(&self, what: &str, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let url = self.url().await;
            if want(&url) {
                return url;
            }
            assert!(Instant::now() < deadline, "never reached {what}; at {url}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn url(&self) -> String {
        self.call(reqwest::Method::GET, "/url", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The element matching `css`, if present now.
    async fn find(&self, css: &str) -> Option<String> {
        let v = self
            .call(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v[ELEMENT_KEY].as_str().map(str::to_string)
    }

    async fn click(&self, css: &str) {
        let el = self
            .find(css)
            .await
            .unwrap_or_else(|| panic!("no element matches {css}"));
        let v = self
            .call(
                reqwest::Method::POST,
                &format!("/element/{el}/click"),
                Some(json!({})),
            )
            .await;
        assert!(v.is_null(), "click on {css} failed: {v}");
    }

    /// Types `text` into the element matching `css`.
    async fn type_into(&self, css: &str, text: &str) {
        let el = self
            .find(css)
            .await
            .unwrap_or_else(|| panic!("no element matches {css}"));
        let v = self
            .call(
                reqwest::Method::POST,
                &format!("/element/{el}/value"),
                Some(json!({ "text": text })),
            )
            .await;
        assert!(v.is_null(), "typing into {css} failed: {v}");
    }

    async fn resize(&self, width: u32, height: u32) {
        let _ = self
            .call(
                reqwest::Method::POST,
                "/window/rect",
                Some(json!({"width": width, "height": height})),
            )
            .await;
    }

    async fn attribute(&self, css: &str, name: &str) -> Option<String> {
        let el = self.find(css).await?;
        self.call(
            reqwest::Method::GET,
            &format!("/element/{el}/attribute/{name}"),
            None,
        )
        .await
        .as_str()
        .map(str::to_string)
    }

    async fn page_text(&self) -> String {
        let el = self.find("body").await.unwrap_or_default();
        self.call(reqwest::Method::GET, &format!("/element/{el}/text"), None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    async fn screenshot(&self, to: &Path) {
        let b64 = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().expect("a base64 screenshot"))
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::write(to, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        // Killing chromedriver leaves the browser it started when the session was not ended
        // (a failed assertion): end every process using this session's profile directory.
        let _ = std::process::Command::new("pkill")
            .arg("-f")
            .arg(format!(
                "--user-data-dir={}",
                self._profile_dir.path().display()
            ))
            .status();
    }
}

fn artifacts_dir() -> PathBuf {
    // tests run with the crate's directory as cwd; artifacts go to the workspace target/.
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    target.join("test-artifacts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shopper_pays_in_chromium_and_the_order_turns_paid_when_the_notify_arrives() {
    ensure_chromium();
    let dir = tempfile::tempdir().unwrap();
    let demo = herald_demo::start(DemoOptions {
        dir: dir.path().to_path_buf(),
        host: "127.0.0.1".parse().unwrap(),
        herald_port: 0,
        shop_port: 0,
        profile: Profile::Alipay,
        unpaid_timeout: Duration::from_secs(900),
        query_after: Duration::from_secs(10),
    })
    .await
    .expect("the demo starts");
    let browser = Browser::start().await;

    browser.goto(&format!("{}/", demo.shop_url)).await;
    assert!(browser.page_text().await.contains("Herald mug"));
    browser.click("#buy-mug").await;

    // The sandbox's checkout page.
    let pay_prefix = format!("{}/pay/", demo.herald_url);
    browser
        .wait_url("the checkout page", |u| u.starts_with(&pay_prefix))
        .await;
    let text = browser.page_text().await;
    assert!(text.contains("19.90"), "the amount is shown: {text}");
    assert!(text.contains("Herald mug"), "the subject is shown: {text}");
    assert!(browser.find("svg").await.is_some(), "a QR code");
    browser
        .screenshot(&artifacts_dir().join("checkout.png"))
        .await;

    browser.click("#pay").await;
    let return_prefix = format!("{}/orders/shop-", demo.shop_url);
    browser
        .wait_url("the shop's return_url", |u| {
            u.starts_with(&return_prefix) && u.contains("/return")
        })
        .await;

    // The return page shows the database's state; it reloads until the notify has arrived.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let state = browser.attribute("#state", "data-state").await;
        if state.as_deref() == Some("paid") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the order never turned paid (last state {state:?})"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // A second order, paid on "the phone": another client posts the same Pay form, and the
    // checkout page open in the browser moves on to the shop by itself.
    browser.goto(&format!("{}/", demo.shop_url)).await;
    browser.click("#buy-mug").await;
    let checkout = browser
        .wait_url("the second checkout page", |u| u.starts_with(&pay_prefix))
        .await;
    let text = browser.page_text().await;
    assert!(text.contains("Pay before"), "the expiry is shown: {text}");
    assert!(
        text.contains("only this machine can open"),
        "the QR hint says 127.0.0.1 is this machine only: {text}"
    );
    let phone = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let paid = phone
        .post(format!("{}/pay", checkout.trim_end_matches('/')))
        .send()
        .await
        .unwrap();
    assert_eq!(paid.status().as_u16(), 303, "the phone paid");
    browser
        .wait_url("the checkout page to move on to the shop", |u| {
            u.starts_with(&return_prefix) && u.contains("/return")
        })
        .await;

    let _ = browser.call(reqwest::Method::DELETE, "", None).await;
    drop(browser);
    demo.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_signs_in_finds_a_failed_delivery_and_resends_it_once_the_receiver_is_fixed() {
    use common::{Receiver, Reply, TestServer, TOKEN};
    ensure_chromium();
    let server = TestServer::start().await;
    let rx = Receiver::start(|_, _| Reply::Status(503, "maintenance until 10:00")).await;
    let app = server
        .app(json!({"name": "Coffee shop", "retry": [0.05]}))
        .await;
    server
        .endpoint(&app, json!({"url": rx.url("/payments/notify")}))
        .await;
    let n = server
        .notify(
            &app,
            json!({"event_type": "payment.succeeded", "order_key": "ORDER-1001",
                   "payload": {"out_trade_no": "T-1001", "amount": 1990, "currency": "CNY"}}),
        )
        .await;
    let id = n["id"].as_str().unwrap().to_string();
    server.wait_status(&id, "failed").await;

    let browser = Browser::start().await;
    browser.resize(1280, 1000).await;
    browser.goto(&format!("{}/", server.base)).await;
    browser
        .wait_url("the sign-in form", |u| u.ends_with("/login"))
        .await;
    browser.type_into("input[name=token]", TOKEN).await;
    browser.click("form[action='/login'] button").await;
    let home = format!("{}/", server.base);
    browser.wait_url("the overview", |u| u == home).await;
    let text = browser.page_text().await;
    assert!(text.contains("Endpoints in trouble"), "{text}");
    assert!(
        text.contains("/payments/notify"),
        "the failing endpoint: {text}"
    );
    browser
        .screenshot(&artifacts_dir().join("dashboard-overview.png"))
        .await;

    // From the endpoint in trouble to its failed notifications, then to the notification.
    browser.click("a[href*='status=failed']").await;
    browser
        .wait_url("the failed notifications", |u| {
            u.contains("/notifications?")
        })
        .await;
    browser.click("a[href^='/notifications/']").await;
    let page = format!("{}/notifications/{id}", server.base);
    browser
        .wait_url("the notification", |u| u.starts_with(&page))
        .await;
    let text = browser.page_text().await;
    assert!(text.contains("HTTP 503"), "{text}");
    assert!(text.contains("failed"), "{text}");

    // The receiver is fixed; resend from the page and watch it succeed.
    rx.set_script(Receiver::ok());
    browser.click("form[action$='/resend'] button").await;
    browser
        .wait_url("the page after resending", |u| u.contains("done=resent"))
        .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if browser.find(".delivery .badge.ok").await.is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the delivery never showed as succeeded: {}",
            browser.page_text().await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        browser.goto(&page).await;
    }
    let text = browser.page_text().await;
    assert!(text.contains("succeeded"), "{text}");
    assert!(
        text.contains("HTTP 204"),
        "the acknowledged attempt: {text}"
    );
    assert_eq!(rx.count(), 3, "two failed attempts, then the resend");
    browser.resize(1280, 1500).await;
    browser
        .screenshot(&artifacts_dir().join("dashboard-notification.png"))
        .await;

    // Signed out, then in again with another app's API key: that app only.
    let tea = server.app(json!({"name": "Tea house"})).await;
    let (status, key) = server
        .call("POST", &format!("/v1/apps/{tea}/keys"), None)
        .await;
    assert_eq!(status, 201, "{key}");
    browser.click("form[action='/logout'] button").await;
    browser
        .wait_url("the sign-in form", |u| u.ends_with("/login"))
        .await;
    browser
        .type_into("input[name=token]", key["key"].as_str().unwrap())
        .await;
    browser.click("form[action='/login'] button").await;
    browser.wait_url("the app's overview", |u| u == home).await;
    let text = browser.page_text().await;
    assert!(
        text.contains("Tea house") && text.contains("you see this app only"),
        "{text}"
    );
    assert!(!text.contains("Coffee shop"), "{text}");
    browser.goto(&page).await;
    let text = browser.page_text().await;
    assert!(text.contains("No such notification"), "{text}");
    assert!(!text.contains("ORDER-1001"), "{text}");
    let _ = browser.call(reqwest::Method::DELETE, "", None).await;
    drop(browser);
    server.stop().await;
}
