//! The example shop, end to end over HTTP: an order is created through the shop, then a
//! payment notification signed by each profile is sent to its notify_url many times at once.
//! The order turns paid exactly once (one fulfilment row), every copy gets the provider's
//! exact acknowledgement, and the return page shows the database's state, not the redirect's.
use std::net::SocketAddr;
use std::sync::Arc;

use herald_demo::shop::ShopConfig;
use herald_inbox::SqliteInbox;
use herald_protocols::profile::{Credentials, OutgoingNotification};
use herald_protocols::Profile;
use herald_receiver::{Inbox, Receiver};
use serde_json::{json, Value};

struct Shop {
    addr: SocketAddr,
    db: std::path::PathBuf,
    http: reqwest::Client,
    creds: Credentials,
    profile: Profile,
    _dir: tempfile::TempDir,
}

fn currency(profile: Profile) -> &'static str {
    match profile {
        Profile::Stripe | Profile::StandardWebhooks => "USD",
        _ => "CNY",
    }
}

async fn open_shop(profile: Profile) -> Shop {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shop.db");
    let (creds, _) = profile.create_credentials(&Value::Null).unwrap();
    let now = now_secs();
    let keys = profile.receiver_keys_from(&creds, now).unwrap();
    let inbox = Inbox::new(
        Receiver::new(profile, keys),
        Arc::new(SqliteInbox::open(&db).unwrap()),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = herald_demo::shop::router(ShopConfig {
        inbox,
        database: db.clone(),
        public_url: format!("http://{addr}"),
        currency: currency(profile).into(),
        platform: None,
        query: None,
        query_after: herald_demo::shop::DEFAULT_QUERY_AFTER,
    })
    .unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    Shop {
        addr,
        db,
        http: reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        creds,
        profile,
        _dir: dir,
    }
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

impl Shop {
    /// Buys a product through the shop's form; returns the new order's out_trade_no.
    async fn buy(&self, product: &str) -> String {
        let resp = self
            .http
            .post(format!("http://{}/orders", self.addr))
            .form(&[("product", product)])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 303);
        let location = resp.headers()["location"].to_str().unwrap().to_string();
        location
            .strip_prefix("/orders/")
            .expect("redirected to the order page")
            .to_string()
    }

    async fn order(&self, out_trade_no: &str) -> Value {
        self.http
            .get(format!("http://{}/api/orders/{out_trade_no}", self.addr))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// The provider's payment notification for `out_trade_no` paying `minor`.
    fn payment(
        &self,
        notify_id: &str,
        out_trade_no: &str,
        minor: i64,
    ) -> (Vec<(String, String)>, Vec<u8>) {
        let cur = currency(self.profile);
        let (event_type, payload) = match self.profile {
            Profile::Alipay => (
                "trade_status_sync",
                json!({"out_trade_no": out_trade_no, "trade_no": "2026112300001", "trade_status": "TRADE_SUCCESS",
                       "total_amount": herald_protocols::receive::format_minor(minor, 2)}),
            ),
            Profile::WechatPayV2 => (
                "payment",
                json!({"out_trade_no": out_trade_no, "transaction_id": notify_id, "total_fee": minor, "fee_type": cur}),
            ),
            Profile::WechatPayV3 => (
                "TRANSACTION.SUCCESS",
                json!({"out_trade_no": out_trade_no, "transaction_id": "4200000001", "trade_state": "SUCCESS",
                       "amount": {"total": minor, "payer_total": minor, "currency": cur, "payer_currency": cur}}),
            ),
            Profile::Stripe => (
                "payment_intent.succeeded",
                json!({"id": "pi_1", "object": "payment_intent", "amount": minor, "currency": cur.to_lowercase(),
                       "status": "succeeded", "metadata": {"out_trade_no": out_trade_no}}),
            ),
            Profile::StandardWebhooks => (
                "payment.succeeded",
                json!({"type": "payment.succeeded", "out_trade_no": out_trade_no, "transaction_id": "tx_1",
                       "amount": minor, "currency": cur, "status": "paid"}),
            ),
            Profile::WechatPayLegacy => (
                "payment",
                json!({"out_trade_no": out_trade_no, "transaction_id": notify_id, "total_fee": minor}),
            ),
            Profile::Dialect => (
                "payment",
                json!({"out_trade_no": out_trade_no, "trade_no": notify_id, "trade_status": "TRADE_SUCCESS",
                       "money": herald_protocols::receive::format_minor(minor, 2)}),
            ),
        };
        let payload = payload.to_string();
        let now = now_secs();
        let req = self
            .profile
            .encode(
                &self.creds,
                &OutgoingNotification {
                    notify_id,
                    event_type,
                    payload: payload.as_bytes(),
                    timestamp: herald_protocols::UnixSeconds::new(now),
                    created_at: herald_protocols::UnixSeconds::new(now),
                },
            )
            .unwrap();
        let mut headers = vec![("content-type".to_string(), req.content_type.clone())];
        headers.extend(req.headers);
        (headers, req.body)
    }

    async fn notify(&self, headers: &[(String, String)], body: &[u8]) -> (u16, Vec<u8>) {
        let mut req = self
            .http
            .post(format!("http://{}/notify", self.addr))
            .body(body.to_vec());
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.bytes().await.unwrap().to_vec())
    }

    fn fulfilments(&self, out_trade_no: &str) -> i64 {
        let conn = rusqlite::Connection::open(&self.db).unwrap();
        conn.query_row(
            "SELECT count(*) FROM shop_fulfilments WHERE out_trade_no = ?1",
            [out_trade_no],
            |r| r.get(0),
        )
        .unwrap()
    }
}

async fn each_profile_is_taken_once(profile: Profile) {
    let shop = open_shop(profile).await;
    let out_trade_no = shop.buy("mug").await;
    assert_eq!(shop.order(&out_trade_no).await["state"], "unpaid");

    // The return page says "processing" whatever the redirect claims.
    let page = shop
        .http
        .get(format!(
            "http://{}/orders/{out_trade_no}/return?trade_status=TRADE_SUCCESS&total_amount=19.90",
            shop.addr
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("data-state=\"unpaid\"") && page.contains("processing"));

    let (headers, body) = shop.payment("ntf-shop-1", &out_trade_no, 1990);
    let ack = profile.ack_reply();
    let copies = (0..40).map(|_| {
        let (shop, headers, body) = (&shop, headers.clone(), body.clone());
        async move { shop.notify(&headers, &body).await }
    });
    let replies = futures_util::future::join_all(copies).await;
    for (status, reply) in &replies {
        assert_eq!(
            *status,
            ack.status,
            "{profile:?}: {}",
            String::from_utf8_lossy(reply)
        );
        assert_eq!(reply, &ack.body, "{profile:?}: the exact acknowledgement");
    }
    assert_eq!(shop.order(&out_trade_no).await["state"], "paid");
    assert_eq!(
        shop.fulfilments(&out_trade_no),
        1,
        "{profile:?}: shipped once"
    );

    // A forged copy for a different amount changes nothing and gets the failure reply.
    let other = shop.buy("book").await;
    let (headers, body) = shop.payment("ntf-shop-2", &other, 1);
    let (status, reply) = shop.notify(&headers, &body).await;
    let fail = profile.failure_reply("x");
    assert_eq!(status, fail.status, "{profile:?}");
    assert_ne!(reply, ack.body);
    assert_eq!(shop.order(&other).await["state"], "unpaid");
    assert_eq!(shop.fulfilments(&other), 0);

    let page = shop
        .http
        .get(format!("http://{}/orders/{out_trade_no}", shop.addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("data-state=\"paid\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shop_takes_an_alipay_notification_once_under_concurrent_copies() {
    each_profile_is_taken_once(Profile::Alipay).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shop_takes_a_wechatpay_v2_notification_once_under_concurrent_copies() {
    each_profile_is_taken_once(Profile::WechatPayV2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shop_takes_a_wechatpay_v3_notification_once_under_concurrent_copies() {
    each_profile_is_taken_once(Profile::WechatPayV3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shop_takes_a_stripe_notification_once_under_concurrent_copies() {
    each_profile_is_taken_once(Profile::Stripe).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shop_takes_a_standard_webhooks_notification_once_under_concurrent_copies() {
    each_profile_is_taken_once(Profile::StandardWebhooks).await;
}

#[tokio::test]
async fn buying_an_unknown_product_is_refused_and_creates_no_order() {
    let shop = open_shop(Profile::Alipay).await;
    let resp = shop
        .http
        .post(format!("http://{}/orders", shop.addr))
        .form(&[("product", "<script>")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 422);
    let home = shop
        .http
        .get(format!("http://{}/", shop.addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!home.contains("Recent orders"), "no order was created");
}
