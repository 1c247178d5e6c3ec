//! Herald's example shop: what a merchant's server looks like when Herald receives its
//! payment notifications.
//!
//! It owns a tiny catalog, order creation (each order gets an `out_trade_no`), checkout
//! through a payment platform (Herald's sandbox, or any profile-speaking sender), the
//! `return_url` page and the `notify_url` handler. The rules it shows:
//!
//! - the order's state comes from the database only: the return page never trusts the
//!   redirect's parameters. An order the buyer has not come back from payment for says
//!   "awaiting payment" with a link to the checkout page; once the buyer is back it says
//!   "processing" until the notification has arrived;
//! - when the notification is late ([`ShopConfig::query_after`] after the buyer came back, or
//!   after the order was created), or never comes (WeChat Pay closes unpaid trades without a
//!   notification), the order page asks the platform's trade query
//!   ([`herald_receiver::TradeQuery`]) and applies the answer through the same inbox, so it
//!   takes effect once: the late notification then changes nothing;
//! - the notify handler is a few lines on top of [`herald_receiver::Inbox`], which verifies
//!   the signature, checks app / merchant ids and the amount against the order, takes each
//!   notification exactly once under duplicates and concurrency, moves the order forward
//!   only, and answers with the provider's exact acknowledgement.
mod pages;

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use herald_inbox::{NewOrder, OrderRecord, SqlValue};
use herald_receiver::{Effects, Handled, Inbox, RawRequest, TradeQuery, Transition};
use serde::Deserialize;

/// One thing the shop sells.
#[derive(Clone, Debug)]
pub struct Product {
    pub id: &'static str,
    pub name: &'static str,
    pub description: &'static str,
    /// Price in minor units of the shop's currency.
    pub price_minor: i64,
}

/// The shop's catalog.
pub const CATALOG: [Product; 3] = [
    Product {
        id: "mug",
        name: "Herald mug",
        description: "Holds coffee while you wait for the notify.",
        price_minor: 1990,
    },
    Product {
        id: "stickers",
        name: "Sticker pack",
        description: "Six stickers: success, SUCCESS, 204, and friends.",
        price_minor: 1,
    },
    Product {
        id: "book",
        name: "Exactly Once, Eventually",
        description: "A short book on idempotent notify handlers.",
        price_minor: 8800,
    },
];

/// The payment platform the shop checks out through: Herald's sandbox API.
#[derive(Clone, Debug)]
pub struct Platform {
    /// Base URL of `herald serve --sandbox`, e.g. `http://127.0.0.1:8080`.
    pub base_url: String,
    /// Herald's admin token (the sandbox API sits behind it).
    pub admin_token: String,
    /// The Herald app (merchant account) whose profile signs the notifications.
    pub app_id: String,
}

/// Everything the shop needs.
#[derive(Clone)]
pub struct ShopConfig {
    /// Verifies and takes notifications; its store also holds the orders.
    pub inbox: Inbox,
    /// The shop's own SQLite file (the same file the inbox uses), for its fulfilment table.
    pub database: std::path::PathBuf,
    /// Where the platform and browsers reach the shop, e.g. `http://127.0.0.1:3000`.
    pub public_url: String,
    /// ISO 4217 currency of the catalog's prices.
    pub currency: String,
    /// Checkout goes here; without one, orders wait for a notification from any sender.
    pub platform: Option<Platform>,
    /// The platform's trade query, asked about an unpaid order whose notification is late.
    /// `None`: the shop waits for notifications only.
    pub query: Option<TradeQuery>,
    /// How long after the buyer came back from paying (or, if they never did, after the
    /// order was created) the shop asks the trade query, and then at most once per this
    /// interval per order.
    pub query_after: std::time::Duration,
}

/// The default [`ShopConfig::query_after`]: a notification usually arrives within seconds.
pub const DEFAULT_QUERY_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Clone)]
struct Shop {
    config: Arc<ShopConfig>,
    http: reqwest::Client,
    /// The shop's own tables (checkouts); the inbox keeps its own connections.
    db: Arc<std::sync::Mutex<rusqlite::Connection>>,
}

/// What the shop knows of an order's checkout, beside the inbox's order.
#[derive(Clone, Debug, Default)]
struct Checkout {
    payment_url: Option<String>,
    returned_at: Option<i64>,
    queried_at: Option<i64>,
}

/// Now in Unix ms, as the shop's own `returned_at`/`queried_at` columns keep it.
fn now_ms() -> i64 {
    herald_inbox::UnixMillis::now().get()
}

impl Shop {
    /// Runs `f` on the shop's connection off the async threads.
    async fn with_db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, String> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let conn = db
                .lock()
                .map_err(|_| "the shop database lock is poisoned".to_string())?;
            f(&conn).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())?
    }

    async fn checkout(&self, out_trade_no: &str) -> Result<Checkout, String> {
        let no = out_trade_no.to_string();
        self.with_db(move |c| {
            let mut st = c.prepare_cached(
                "SELECT payment_url, returned_at, queried_at FROM shop_checkouts WHERE out_trade_no = ?1",
            )?;
            let mut rows = st.query([&no])?;
            Ok(match rows.next()? {
                Some(r) => Checkout {
                    payment_url: r.get(0)?,
                    returned_at: r.get(1)?,
                    queried_at: r.get(2)?,
                },
                None => Checkout::default(),
            })
        })
        .await
    }

    /// Records one fact about a checkout (`column` is one of this file's literals).
    async fn note(
        &self,
        out_trade_no: &str,
        column: &'static str,
        value: rusqlite::types::Value,
        only_first: bool,
    ) -> Result<(), String> {
        let no = out_trade_no.to_string();
        self.with_db(move |c| {
            let keep = if only_first {
                format!("COALESCE(shop_checkouts.{column}, excluded.{column})")
            } else {
                format!("excluded.{column}")
            };
            c.execute(
                &format!(
                    "INSERT INTO shop_checkouts (out_trade_no, {column}) VALUES (?1, ?2)
                     ON CONFLICT (out_trade_no) DO UPDATE SET {column} = {keep}"
                ),
                rusqlite::params![no, value],
            )?;
            Ok(())
        })
        .await
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ShopError {
    #[error("cannot prepare the shop's database: {0}")]
    Database(String),
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

/// Builds the shop's router. Creates the shop's own table (fulfilments) when missing.
pub fn router(config: ShopConfig) -> Result<Router, ShopError> {
    let conn = rusqlite::Connection::open(&config.database)
        .map_err(|e| ShopError::Database(e.to_string()))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(|e| ShopError::Database(e.to_string()))?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS shop_fulfilments (
             out_trade_no TEXT NOT NULL,
             action TEXT NOT NULL,
             notify_id TEXT NOT NULL,
             UNIQUE (out_trade_no, action)
         );
         CREATE TABLE IF NOT EXISTS shop_checkouts (
             out_trade_no TEXT PRIMARY KEY,
             payment_url TEXT,
             returned_at INTEGER,
             queried_at INTEGER
         );",
    )
    .map_err(|e| ShopError::Database(e.to_string()))?;
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(|e| ShopError::Client(e.to_string()))?;
    let shop = Shop {
        config: Arc::new(config),
        http,
        db: Arc::new(std::sync::Mutex::new(conn)),
    };
    Ok(Router::new()
        .route("/", get(home))
        .route("/orders", post(create_order))
        .route("/orders/{out_trade_no}", get(order_page))
        .route("/orders/{out_trade_no}/return", get(return_page))
        .route("/api/orders/{out_trade_no}", get(order_json))
        .route("/notify", post(notify))
        .with_state(shop))
}

/// The notify_url handler: verify, check, take once, fulfil, acknowledge.
async fn notify(State(shop): State<Shop>, req: RawRequest) -> Handled {
    shop.config.inbox.receive(&req, fulfil).await
}

/// The shop's side effect, run inside the inbox's transaction while the order is locked,
/// only when the notification moves the order forward.
fn fulfil(fx: &mut Effects, t: &Transition) -> Result<(), String> {
    let action = match t.to.as_str() {
        "paid" => "ship",
        "refunded" => "restock",
        _ => return Ok(()),
    };
    fx.execute(
        "INSERT INTO shop_fulfilments (out_trade_no, action, notify_id) VALUES (?1, ?2, ?3)",
        vec![
            SqlValue::Text(t.out_trade_no.clone()),
            SqlValue::Text(action.into()),
            SqlValue::Text(t.notification.notify_id.clone()),
        ],
    );
    Ok(())
}

async fn home(State(shop): State<Shop>) -> Html<String> {
    let recent = shop
        .config
        .inbox
        .store()
        .list_orders(10)
        .await
        .unwrap_or_default();
    Html(pages::home(
        &CATALOG,
        &shop.config.currency,
        &recent,
        shop.config.platform.is_some(),
    ))
}

#[derive(Deserialize)]
struct BuyForm {
    product: String,
}

async fn create_order(State(shop): State<Shop>, Form(form): Form<BuyForm>) -> Response {
    let Some(product) = CATALOG.iter().find(|p| p.id == form.product) else {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            Html(pages::message(
                "Unknown product",
                "That product is not for sale.",
            )),
        )
            .into_response();
    };
    let out_trade_no = format!("shop-{}", ulid::Ulid::new().to_string().to_lowercase());
    let order = NewOrder {
        out_trade_no: out_trade_no.clone(),
        amount_minor: product.price_minor,
        currency: shop.config.currency.clone(),
        subject: product.name.to_string(),
    };
    if let Err(e) = shop.config.inbox.create_order(order).await {
        tracing::error!(error = %e, "cannot create the order");
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Html(pages::message("Sorry", "The order could not be created.")),
        )
            .into_response();
    }
    let Some(platform) = &shop.config.platform else {
        return Redirect::to(&format!("/orders/{out_trade_no}")).into_response();
    };
    match start_payment(&shop, platform, &out_trade_no, product).await {
        Ok(payment_url) => {
            let url = rusqlite::types::Value::Text(payment_url.clone());
            if let Err(e) = shop.note(&out_trade_no, "payment_url", url, false).await {
                tracing::warn!(error = %e, out_trade_no, "cannot record the checkout URL");
            }
            Redirect::to(&payment_url).into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, out_trade_no, "the payment platform refused the payment");
            (
                StatusCode::BAD_GATEWAY,
                Html(pages::message(
                    "Payment platform unavailable",
                    &format!(
                        "The order {out_trade_no} was created but the payment could not start: {e}"
                    ),
                )),
            )
                .into_response()
        }
    }
}

/// Creates the payment at the platform; returns the checkout page's URL.
async fn start_payment(
    shop: &Shop,
    platform: &Platform,
    out_trade_no: &str,
    product: &Product,
) -> Result<String, String> {
    let public = shop.config.public_url.trim_end_matches('/');
    let body = serde_json::json!({
        "app_id": platform.app_id,
        "out_trade_no": out_trade_no,
        "amount": product.price_minor,
        "currency": shop.config.currency,
        "subject": product.name,
        "notify_url": format!("{public}/notify"),
        "return_url": format!("{public}/orders/{out_trade_no}/return"),
    });
    let resp = shop
        .http
        .post(format!(
            "{}/v1/sandbox/payments",
            platform.base_url.trim_end_matches('/')
        ))
        .bearer_auth(&platform.admin_token)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
    let json: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{status}: the platform's answer is not JSON: {e}"))?;
    if !status.is_success() {
        return Err(format!(
            "{status}: {}",
            json["error"]["message"].as_str().unwrap_or("no message")
        ));
    }
    json["payment_url"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| "the platform's answer has no payment_url".to_string())
}

/// The `return_url`: the buyer is back from the platform's checkout page (paid, or not: the
/// redirect's parameters are not trusted). Records when they first came back, then shows
/// the order page.
async fn return_page(State(shop): State<Shop>, Path(out_trade_no): Path<String>) -> Response {
    if let Ok(Some(_)) = shop.config.inbox.order(&out_trade_no).await {
        let at = rusqlite::types::Value::Integer(now_ms());
        if let Err(e) = shop.note(&out_trade_no, "returned_at", at, true).await {
            tracing::warn!(error = %e, out_trade_no, "cannot record the buyer's return");
        }
    }
    order_page(State(shop), Path(out_trade_no)).await
}

/// Asks the platform's trade query about an unpaid order whose notification is late, and
/// applies the answer through the inbox. Failures are logged: the page shows the database.
async fn query_if_late(shop: &Shop, order: &OrderRecord, checkout: &Checkout) {
    let Some(query) = &shop.config.query else {
        return;
    };
    let after = i64::try_from(shop.config.query_after.as_millis()).unwrap_or(i64::MAX);
    let now = now_ms();
    let since = checkout.returned_at.unwrap_or(order.created_at.get());
    let due = now.saturating_sub(since) >= after
        && checkout
            .queried_at
            .is_none_or(|q| now.saturating_sub(q) >= after);
    if !due {
        return;
    }
    let at = rusqlite::types::Value::Integer(now);
    if let Err(e) = shop
        .note(&order.out_trade_no, "queried_at", at, false)
        .await
    {
        tracing::warn!(error = %e, "cannot record the trade query");
    }
    match shop
        .config
        .inbox
        .reconcile(query, &order.out_trade_no, fulfil)
        .await
    {
        Ok(r) => tracing::info!(
            out_trade_no = %order.out_trade_no,
            status = %r.answer.status,
            outcome = ?r.outcome,
            "late notification: the trade query answered"
        ),
        Err(e) => tracing::warn!(
            out_trade_no = %order.out_trade_no,
            error = %format!("{:#}", anyhow::Error::new(e)),
            "late notification: the trade query gave nothing to apply"
        ),
    }
}

/// The order page, also the `return_url`: the state shown is the database's, whatever the
/// redirect's query says.
async fn order_page(State(shop): State<Shop>, Path(out_trade_no): Path<String>) -> Response {
    let order = match shop.config.inbox.order(&out_trade_no).await {
        Ok(Some(order)) => order,
        Ok(None) => {
            return (
                StatusCode::NOT_FOUND,
                Html(pages::message(
                    "No such order",
                    "This order does not exist.",
                )),
            )
                .into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot read the order");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    let checkout = shop.checkout(&out_trade_no).await.unwrap_or_else(|e| {
        tracing::warn!(error = %e, out_trade_no, "cannot read the checkout");
        Checkout::default()
    });
    let order = if order.state == herald_inbox::OrderState::Unpaid {
        query_if_late(&shop, &order, &checkout).await;
        match shop.config.inbox.order(&out_trade_no).await {
            Ok(Some(o)) => o,
            _ => order,
        }
    } else {
        order
    };
    Html(pages::order(
        &order,
        checkout.returned_at.is_some(),
        checkout.payment_url.as_deref(),
    ))
    .into_response()
}

/// The order as JSON (for scripts and tests).
async fn order_json(State(shop): State<Shop>, Path(out_trade_no): Path<String>) -> Response {
    match shop.config.inbox.order(&out_trade_no).await {
        Ok(Some(order)) => Json(order_view(&order)).into_response(),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"error": {"code": "not_found", "message": "no such order"}})),
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot read the order");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

fn order_view(order: &OrderRecord) -> serde_json::Value {
    serde_json::json!({
        "out_trade_no": order.out_trade_no,
        "subject": order.subject,
        "amount_minor": order.amount_minor,
        "currency": order.currency,
        "state": order.state.as_str(),
        "refunded_minor": order.refunded_minor,
        "transaction_id": order.transaction_id,
    })
}
