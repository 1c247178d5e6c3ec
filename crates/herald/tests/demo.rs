//! `herald demo` end to end, for every profile, without a browser: the shop creates the
//! order and the sandbox payment, the buyer pays, and the sandbox's failure drills send
//! duplicate copies plus copies with a bad signature and a tampered amount. The shop ships
//! once, the duplicates are acknowledged, the forgeries are refused (their deliveries fail),
//! and a full refund turns the order refunded. The CLI prints the URLs to open.
use std::time::{Duration, Instant};

use herald_demo::{Demo, DemoOptions};
use herald_protocols::Profile;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn start(profile: Profile, dir: &std::path::Path) -> Demo {
    start_with(
        profile,
        dir,
        Duration::from_secs(900),
        Duration::from_secs(10),
    )
    .await
}

async fn start_with(
    profile: Profile,
    dir: &std::path::Path,
    unpaid_timeout: Duration,
    query_after: Duration,
) -> Demo {
    herald_demo::start(DemoOptions {
        dir: dir.to_path_buf(),
        host: "127.0.0.1".parse().unwrap(),
        herald_port: 0,
        shop_port: 0,
        profile,
        unpaid_timeout,
        query_after,
    })
    .await
    .expect("the demo starts")
}

async fn get_json(http: &reqwest::Client, url: String, token: Option<&str>) -> Value {
    let mut req = http.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap().json().await.unwrap()
}

/// Polls until `check` holds for the JSON at `url`, or fails after 20 s.
async fn wait_for(
    http: &reqwest::Client,
    url: String,
    token: Option<&str>,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = get_json(http, url.clone(), token).await;
        if check(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn fulfilments(dir: &std::path::Path, out_trade_no: &str) -> Vec<String> {
    let conn = rusqlite::Connection::open(dir.join("shop.db")).unwrap();
    let mut stmt = conn
        .prepare("SELECT action FROM shop_fulfilments WHERE out_trade_no = ?1 ORDER BY action")
        .unwrap();
    stmt.query_map([out_trade_no], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

async fn demo_takes_each_notification_once(profile: Profile) {
    let dir = tempfile::tempdir().unwrap();
    let demo = start(profile, dir.path()).await;
    let http = client();
    let token = Some(demo.admin_token.as_str());

    // The shop creates the order and the payment, then sends the buyer to checkout.
    let resp = http
        .post(format!("{}/orders", demo.shop_url))
        .form(&[("product", "mug")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 303);
    let checkout = resp.headers()["location"].to_str().unwrap().to_string();
    let payment_id = checkout.rsplit('/').next().unwrap().to_string();
    let api = format!("{}/v1/sandbox/payments/{payment_id}", demo.herald_url);
    let payment = get_json(&http, api.clone(), token).await;
    let out_trade_no = payment["out_trade_no"].as_str().unwrap().to_string();
    let order_url = format!("{}/api/orders/{out_trade_no}", demo.shop_url);
    assert_eq!(
        get_json(&http, order_url.clone(), None).await["state"],
        "unpaid"
    );

    // Drills: duplicates of every notification, a copy with a bad signature, one with a
    // tampered amount.
    let drills = http
        .post(format!("{api}/drills"))
        .bearer_auth(&demo.admin_token)
        .json(&json!({"duplicate": 3, "bad_signature": true, "tampered_amount": true}))
        .send()
        .await
        .unwrap();
    assert!(
        drills.status().is_success(),
        "{}",
        drills.text().await.unwrap()
    );

    let paid = http.post(format!("{checkout}/pay")).send().await.unwrap();
    assert_eq!(paid.status().as_u16(), 303);
    let back = paid.headers()["location"].to_str().unwrap().to_string();
    assert!(back.starts_with(&format!("{}/orders/{out_trade_no}/return", demo.shop_url)));

    wait_for(
        &http,
        order_url.clone(),
        None,
        "the order to be paid",
        |o| o["state"] == "paid",
    )
    .await;

    // Every delivery ends: the real copies acknowledged, the forgeries refused.
    let payment = get_json(&http, api.clone(), token).await;
    let mut roles = Vec::new();
    for n in payment["events"][0]["notifications"].as_array().unwrap() {
        let role = n["role"].as_str().unwrap().to_string();
        let want = match role.as_str() {
            "notification" | "duplicate" => "succeeded",
            _ => "failed",
        };
        let url = format!(
            "{}/v1/deliveries/{}",
            demo.herald_url,
            n["delivery_id"].as_str().unwrap()
        );
        wait_for(&http, url, token, &format!("the {role} delivery"), |d| {
            d["status"] == want
        })
        .await;
        roles.push(role);
    }
    roles.sort();
    assert_eq!(
        roles,
        [
            "bad_signature",
            "duplicate",
            "duplicate",
            "duplicate",
            "notification",
            "tampered_amount"
        ]
    );
    assert_eq!(
        fulfilments(dir.path(), &out_trade_no),
        ["ship"],
        "{profile:?}"
    );

    // A full refund: the order ends refunded (WeChat Pay v2 refunds carry no notification).
    let refund = http
        .post(format!("{api}/refund"))
        .bearer_auth(&demo.admin_token)
        .json(&json!({"amount": 1990}))
        .send()
        .await
        .unwrap();
    assert!(
        refund.status().is_success(),
        "{}",
        refund.text().await.unwrap()
    );
    if profile != Profile::WechatPayV2 {
        wait_for(
            &http,
            order_url.clone(),
            None,
            "the order to be refunded",
            |o| o["state"] == "refunded",
        )
        .await;
        assert_eq!(fulfilments(dir.path(), &out_trade_no), ["restock", "ship"]);
    }
    demo.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_alipay_payment_is_taken_once_through_duplicates_and_forgeries() {
    demo_takes_each_notification_once(Profile::Alipay).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_wechatpay_v2_payment_is_taken_once_through_duplicates_and_forgeries() {
    demo_takes_each_notification_once(Profile::WechatPayV2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_wechatpay_v3_payment_is_taken_once_through_duplicates_and_forgeries() {
    demo_takes_each_notification_once(Profile::WechatPayV3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_stripe_payment_is_taken_once_through_duplicates_and_forgeries() {
    demo_takes_each_notification_once(Profile::Stripe).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_standard_webhooks_payment_is_taken_once_through_duplicates_and_forgeries() {
    demo_takes_each_notification_once(Profile::StandardWebhooks).await;
}

#[tokio::test]
async fn herald_demo_command_prints_the_urls_to_open_and_serves_the_shop() {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["demo", "--port", "0", "--shop-port", "0"])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut shop = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while shop.is_none() {
        let line = tokio::time::timeout_at(deadline.into(), lines.next_line())
            .await
            .expect("the demo prints its URLs")
            .unwrap()
            .expect("the demo keeps running");
        if let Some(url) = line.trim().strip_prefix("Shop:") {
            shop = Some(url.trim().trim_end_matches('/').to_string());
        }
    }
    let shop = shop.unwrap();
    let home = client()
        .get(format!("{shop}/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(home.contains("Herald mug"), "{home}");
    child.kill().await.unwrap();
}

/// Buys a mug in the demo shop; returns (checkout URL, out_trade_no).
async fn buy(http: &reqwest::Client, demo: &Demo) -> (String, String) {
    let resp = http
        .post(format!("{}/orders", demo.shop_url))
        .form(&[("product", "mug")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 303);
    let checkout = resp.headers()["location"].to_str().unwrap().to_string();
    let payment_id = checkout.rsplit('/').next().unwrap();
    let api = format!("{}/v1/sandbox/payments/{payment_id}", demo.herald_url);
    let payment = get_json(http, api, Some(&demo.admin_token)).await;
    (
        checkout,
        payment["out_trade_no"].as_str().unwrap().to_string(),
    )
}

async fn page(http: &reqwest::Client, url: String) -> String {
    http.get(url).send().await.unwrap().text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shop_says_awaiting_payment_with_a_pay_link_until_the_buyer_returns_then_processing() {
    let dir = tempfile::tempdir().unwrap();
    let demo = start(Profile::StandardWebhooks, dir.path()).await;
    let http = client();
    let (checkout, no) = buy(&http, &demo).await;
    let html = page(&http, format!("{}/orders/{no}", demo.shop_url)).await;
    assert!(html.contains(">awaiting payment<"), "{html}");
    assert!(!html.contains("processing"), "{html}");
    assert!(
        html.contains(&format!(
            "id=\"pay-link\" class=\"button\" href=\"{checkout}\""
        )),
        "a link back to the checkout page: {html}"
    );
    // The buyer comes back (the return_url) before any notification: processing.
    let html = page(&http, format!("{}/orders/{no}/return", demo.shop_url)).await;
    assert!(html.contains(">processing<"), "{html}");
    let html = page(&http, format!("{}/orders/{no}", demo.shop_url)).await;
    assert!(
        html.contains(">processing<"),
        "the return is remembered: {html}"
    );
    demo.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shop_closes_an_order_wechat_pay_closed_silently_by_asking_the_trade_query() {
    let dir = tempfile::tempdir().unwrap();
    let demo = start_with(
        Profile::WechatPayV3,
        dir.path(),
        Duration::from_millis(300),
        Duration::from_millis(500),
    )
    .await;
    let http = client();
    let (_, no) = buy(&http, &demo).await;
    // No notification ever comes for a closed WeChat trade; the order page asks the query
    // once the wait is over, and the order closes.
    let order_url = format!("{}/orders/{no}", demo.shop_url);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let html = page(&http, order_url.clone()).await;
        if html.contains("data-state=\"closed\"") {
            break;
        }
        assert!(Instant::now() < deadline, "never closed: {html}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        get_json(&http, format!("{}/api/orders/{no}", demo.shop_url), None).await["state"],
        "closed"
    );
    demo.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shop_applies_a_payment_from_the_trade_query_when_the_notification_is_late() {
    let dir = tempfile::tempdir().unwrap();
    let demo = start_with(
        Profile::Alipay,
        dir.path(),
        Duration::from_secs(900),
        Duration::from_millis(300),
    )
    .await;
    let http = client();
    let (checkout, no) = buy(&http, &demo).await;
    let payment_id = checkout.rsplit('/').next().unwrap().to_string();
    let api = format!("{}/v1/sandbox/payments/{payment_id}", demo.herald_url);
    // The out-of-order drill holds the payment notification back until a refund: for the
    // shop, a notification that is late.
    let drills = http
        .post(format!("{api}/drills"))
        .bearer_auth(&demo.admin_token)
        .json(&json!({"out_of_order": true}))
        .send()
        .await
        .unwrap();
    let drill_status = drills.status();
    let drill_body = drills.text().await.unwrap();
    assert!(drill_status.is_success(), "{drill_body}");
    let paid = http.post(format!("{checkout}/pay")).send().await.unwrap();
    assert_eq!(paid.status().as_u16(), 303);
    let back = paid.headers()["location"].to_str().unwrap().to_string();
    let html = page(&http, back.clone()).await;
    assert!(html.contains(">processing<"), "{html}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let html = page(&http, format!("{}/orders/{no}", demo.shop_url)).await;
        if html.contains("data-state=\"paid\"") {
            break;
        }
        assert!(Instant::now() < deadline, "never paid: {html}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(fulfilments(dir.path(), &no), ["ship"]);
    demo.shutdown().await;
}
