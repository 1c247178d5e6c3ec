//! Shared test helpers: signing notifications as a provider would, fresh inboxes on either
//! backend, and a merchant handler that counts its calls and writes one row per call.
#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use herald_inbox::{InboxStore, NewOrder, OrderRecord, PgInbox, SqlValue, SqliteInbox, Statement};
use herald_protocols::{Credentials, OutgoingNotification, Profile, ReceiverKeys};
use herald_receiver::{Effects, Inbox, RawRequest, Receiver, Transition};
use serde_json::{json, Value};

/// The receiver's clock in every test (unix seconds).
pub const NOW: i64 = 1_763_900_000;
/// A fixed Standard Webhooks secret, so a parent and a child process sign the same bytes.
pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// The app id standard-webhooks payloads carry and the test receivers expect.
pub const APP: &str = "app_shop";

/// A provider: a profile and its signing credentials.
pub struct Sender {
    pub profile: Profile,
    pub creds: Credentials,
    /// What the credentials show (app and merchant ids, public keys).
    pub view: Value,
}

impl Sender {
    pub fn new(profile: Profile, options: Value) -> Self {
        let (creds, _) = profile
            .create_credentials(&options)
            .unwrap_or_else(|e| panic!("{}: {e}", profile.name()));
        let view = profile.public_view_at(&creds, NOW);
        Sender {
            profile,
            creds,
            view,
        }
    }

    pub fn keys(&self) -> ReceiverKeys {
        self.profile
            .receiver_keys_from(&self.creds, NOW)
            .expect("receiver keys")
    }

    /// The app id this sender's notifications carry, if the profile has one.
    pub fn app_id(&self) -> Option<String> {
        ["app_id", "appid"]
            .iter()
            .find_map(|k| self.view[*k].as_str().map(str::to_string))
    }

    /// The merchant id this sender's notifications carry, if the profile has one.
    pub fn merchant_id(&self) -> Option<String> {
        ["seller_id", "mch_id", "mchid", "partner"]
            .iter()
            .find_map(|k| self.view[*k].as_str().map(str::to_string))
    }

    /// A signed request, exactly as the provider would POST it, signed at `timestamp`.
    pub fn request_at(
        &self,
        notify_id: &str,
        event_type: &str,
        payload: &Value,
        timestamp: i64,
    ) -> RawRequest {
        let payload = payload.to_string();
        let n = OutgoingNotification {
            notify_id,
            event_type,
            payload: payload.as_bytes(),
            timestamp: herald_protocols::UnixSeconds::new(timestamp),
            created_at: herald_protocols::UnixSeconds::new(timestamp),
        };
        let enc = self
            .profile
            .encode(&self.creds, &n)
            .unwrap_or_else(|e| panic!("{}: {e}", self.profile.name()));
        let mut headers = enc.headers;
        if !enc.content_type.is_empty() {
            headers.push(("Content-Type".into(), enc.content_type));
        }
        RawRequest {
            method: enc.method.into(),
            headers,
            query: enc.query,
            body: enc.body.into(),
        }
    }

    pub fn request(&self, notify_id: &str, event_type: &str, payload: &Value) -> RawRequest {
        self.request_at(notify_id, event_type, payload, NOW)
    }

    /// A receiver for this sender, on the test clock, expecting its ids.
    pub fn receiver(&self) -> Receiver {
        let mut r = Receiver::new(self.profile, self.keys()).with_clock(|| NOW);
        if let Some(app) = self.app_id() {
            r = r.expect_app_id(app);
        }
        if let Some(m) = self.merchant_id() {
            r = r.expect_merchant_id(m);
        }
        r
    }
}

/// A Standard Webhooks sender with the fixed [`SECRET`].
pub fn sw() -> Sender {
    Sender::new(Profile::StandardWebhooks, json!({ "secret": SECRET }))
}

/// A Standard Webhooks body: `type`, the order, the amount, this app.
pub fn sw_body(kind: &str, out_trade_no: &str, amount: i64) -> Value {
    json!({
        "type": kind,
        "app_id": APP,
        "out_trade_no": out_trade_no,
        "transaction_id": format!("T-{out_trade_no}"),
        "amount": amount,
        "currency": "CNY",
    })
}

/// An inbox over `store` receiving Standard Webhooks from [`sw`], expecting [`APP`].
pub fn sw_inbox(store: Arc<dyn InboxStore>) -> Inbox {
    let s = sw();
    Inbox::new(
        Receiver::new(s.profile, s.keys())
            .with_clock(|| NOW)
            .expect_app_id(APP),
        store,
    )
}

pub async fn sqlite() -> Arc<dyn InboxStore> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.keep().join("inbox.db");
    let store: Arc<dyn InboxStore> = Arc::new(SqliteInbox::open(&path).expect("open"));
    merchant_table(&*store).await;
    store
}

pub async fn postgres() -> Arc<dyn InboxStore> {
    let store: Arc<dyn InboxStore> = Arc::new(
        PgInbox::connect(&herald_pgtest::database())
            .await
            .expect("connect"),
    );
    merchant_table(&*store).await;
    store
}

/// The merchant's own table, where the test handler writes one row per call.
pub async fn merchant_table(store: &dyn InboxStore) {
    store
        .execute(vec![Statement::new(
            "CREATE TABLE merchant_log (out_trade_no TEXT NOT NULL, state TEXT NOT NULL)",
            vec![],
        )])
        .await
        .expect("merchant table");
}

pub async fn log_rows(store: &dyn InboxStore) -> i64 {
    match store
        .query_value("SELECT count(*) FROM merchant_log", vec![])
        .await
        .expect("count")
    {
        Some(SqlValue::Int(n)) => n,
        other => panic!("count(*) gave {other:?}"),
    }
}

pub async fn new_order(inbox: &Inbox, out_trade_no: &str, amount: i64) -> OrderRecord {
    inbox
        .create_order(NewOrder {
            out_trade_no: out_trade_no.into(),
            amount_minor: amount,
            currency: "CNY".into(),
            subject: "a pot of tea".into(),
        })
        .await
        .expect("create order")
}

/// A merchant handler: counts its calls and inserts one `merchant_log` row.
pub fn handler(
    calls: &Arc<AtomicUsize>,
) -> impl FnOnce(&mut Effects, &Transition) -> Result<(), String> + Send + 'static {
    let calls = calls.clone();
    move |effects, t| {
        calls.fetch_add(1, Ordering::SeqCst);
        let d = effects.dialect();
        effects.execute(
            format!(
                "INSERT INTO merchant_log (out_trade_no, state) VALUES ({}, {})",
                d.placeholder(1),
                d.placeholder(2)
            ),
            vec![
                SqlValue::Text(t.out_trade_no.clone()),
                SqlValue::Text(t.to.as_str().into()),
            ],
        );
        Ok(())
    }
}

pub fn calls() -> Arc<AtomicUsize> {
    Arc::new(AtomicUsize::new(0))
}

pub fn count(calls: &Arc<AtomicUsize>) -> usize {
    calls.load(Ordering::SeqCst)
}
