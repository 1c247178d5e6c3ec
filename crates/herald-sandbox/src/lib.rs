//! The payment sandbox of `herald serve --sandbox`: a local payment platform on Herald's own
//! engine, for merchants to test their notify handlers end to end without a real provider.
//!
//! A producer (the merchant's test suite, or a person) creates a payment for a Herald app
//! (`POST /v1/sandbox/payments`); the buyer opens the checkout page (`/pay/{id}`, with a QR
//! code of its own URL for a phone) and pays or cancels; the sandbox then enqueues the
//! provider's notification to `notify_url` through the engine, signed with the app's
//! credentials in the app's wire profile, and redirects the browser to `return_url`.
//! Refunds, unpaid timeouts, a signed trade query and failure drills complete the picture,
//! and the providers' own trade-query and refund APIs ([`gateway`]) answer a merchant's SDK.
//!
//! Owns: the options ([`SandboxOptions`]), the routes ([`router`]), trade transitions and
//! their notifications ([`trade`]), per-profile payloads ([`wire`]), drills ([`drills`]), the
//! providers' API paths ([`gateway`]), the checkout page ([`page`]), QR codes ([`qr`]) and
//! the unpaid-timeout timer ([`timer`]).
//! Trades live in herald-store (`sandbox_payments`); a trade change and the notifications it
//! enqueues commit in one transaction, so a crash loses or doubles neither.
mod api;
mod drills;
mod gateway;
mod model;
mod money;
mod page;
mod qr;
mod timer;
mod trade;
mod wire;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use herald_store::Store;
use tokio::sync::{watch, Mutex, Notify};

use herald_http::MAX_BODY;

/// How long an unpaid payment stays open by default.
pub const DEFAULT_UNPAID_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// How long the unpaid-timeout timer sleeps at most by default (see
/// [`SandboxOptions::recheck`]): the engine's default lease.
pub const DEFAULT_RECHECK: Duration = Duration::from_secs(30);

/// `herald serve --sandbox` settings; `ServerOptions::sandbox` is `Some` to mount it.
#[derive(Clone, Debug)]
pub struct SandboxOptions {
    /// The base of the absolute URLs the sandbox hands out (`payment_url`, the QR code),
    /// e.g. `http://192.168.1.20:8080`. `None`: `http://{listen address}`, with a LAN address
    /// in place of 0.0.0.0 / :: so that a phone on the same network can open it.
    pub public_url: Option<String>,
    /// An unpaid payment closes (`TRADE_CLOSED`) this long after its creation.
    pub unpaid_timeout: Duration,
    /// The longest the unpaid-timeout timer sleeps before it reads the deadlines again.
    /// Creating a payment wakes only the timer of the node that created it: on a database
    /// shared by several nodes this bound is how a live node learns of the trades of a node
    /// that died, so `herald serve` sets it to the lease length (a dead node's trades close
    /// within their timeout plus one lease, like its deliveries are taken over).
    pub recheck: Duration,
}

impl Default for SandboxOptions {
    fn default() -> Self {
        SandboxOptions {
            public_url: None,
            unpaid_timeout: DEFAULT_UNPAID_TIMEOUT,
            recheck: DEFAULT_RECHECK,
        }
    }
}

/// The sandbox's shared state.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    public_url: String,
    unpaid_timeout: Duration,
    /// The timer's longest sleep (see [`SandboxOptions::recheck`]).
    recheck: Duration,
    /// Serializes trade changes (the sandbox is not a hot path; the store's version check
    /// guards against anything else).
    lock: Mutex<()>,
    /// Wakes the timer when a payment with a deadline is created.
    wake: Notify,
}

impl Sandbox {
    /// The sandbox on `store`, serving URLs under its public base for a server bound to
    /// `addr`; starts the unpaid-timeout timer, which ends when `stop` turns true.
    pub fn start(
        store: Arc<dyn Store>,
        opts: &SandboxOptions,
        addr: SocketAddr,
        stop: watch::Receiver<bool>,
    ) -> Sandbox {
        let public_url = opts
            .public_url
            .clone()
            .map(|u| u.trim_end_matches('/').to_string())
            .unwrap_or_else(|| default_public_url(addr));
        let sandbox = Sandbox {
            inner: Arc::new(Inner {
                store,
                public_url,
                unpaid_timeout: opts.unpaid_timeout,
                recheck: opts.recheck,
                lock: Mutex::new(()),
                wake: Notify::new(),
            }),
        };
        tokio::spawn(timer::run(sandbox.clone(), stop));
        sandbox
    }

    pub fn public_url(&self) -> &str {
        &self.inner.public_url
    }

    fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    fn payment_url(&self, id: &str) -> String {
        format!("{}/pay/{id}", self.inner.public_url)
    }
}

/// `http://{addr}`; for an unspecified address (0.0.0.0, ::), the machine's LAN address
/// (the source address of a route to a public address; no packet is sent), else loopback.
/// Browsers use it to reach a listener; `herald demo` uses it for the shop as well.
/// What the operator dashboard does to trades: the sandbox API's own operations, by
/// payment id, for the dashboard's pages and buttons.
impl Sandbox {
    /// The trade as `GET /v1/sandbox/payments/{id}` shows it.
    pub async fn dashboard_view(
        &self,
        id: &str,
    ) -> Result<serde_json::Value, herald_http::error::ApiError> {
        let (p, _) = self.load(id).await?;
        Ok(api::view(self, &p))
    }

    /// Refunds `refund_amount` (a decimal string in the trade's currency), successfully.
    pub async fn dashboard_refund(
        &self,
        id: &str,
        refund_amount: &str,
    ) -> Result<(), herald_http::error::ApiError> {
        let (p, _) = self.load(id).await?;
        let amount = money::parse_decimal("refund_amount", refund_amount, &p.currency)
            .map_err(herald_http::error::ApiError::Invalid)?;
        self.refund(
            id,
            trade::RefundRequest {
                amount,
                out_refund_no: None,
                status: Default::default(),
                notify_url: None,
            },
        )
        .await
        .map(|_| ())
    }

    /// Closes an unpaid trade as the buyer's cancel button does.
    pub async fn dashboard_cancel(&self, id: &str) -> Result<(), herald_http::error::ApiError> {
        self.close(id, "canceled").await.map(|_| ())
    }

    /// Replaces the trade's drills (`{"duplicate", "out_of_order", ...}` as the API takes).
    pub async fn dashboard_drills(
        &self,
        id: &str,
        drills: serde_json::Value,
    ) -> Result<(), herald_http::error::ApiError> {
        let d: model::Drills = serde_json::from_value(drills)
            .map_err(|e| herald_http::error::ApiError::Invalid(format!("drills: {e}")))?;
        let d = api::check_drills(d)?;
        self.set_drills(id, d).await.map(|_| ())
    }
}

/// A stored trade document's amount in its currency's decimal form (`8.80`), for lists
/// that read the documents directly; empty when the document lacks it.
pub fn format_amount(doc: &serde_json::Value) -> String {
    match (doc["amount"].as_i64(), doc["currency"].as_str()) {
        (Some(minor), Some(currency)) => money::format(minor, currency),
        _ => String::new(),
    }
}

pub fn default_public_url(addr: SocketAddr) -> String {
    let ip = if addr.ip().is_unspecified() {
        lan_address().unwrap_or(IpAddr::from([127, 0, 0, 1]))
    } else {
        addr.ip()
    };
    format!("http://{}", SocketAddr::new(ip, addr.port()))
}

fn lan_address() -> Option<IpAddr> {
    let socket = UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

/// The sandbox's routes, in two parts: [`Routes::admin`], the producer's API, which the
/// server mounts at `/v1/sandbox` behind its admin token; and [`Routes::public`]: the
/// checkout pages (`/pay/{id}`) and the providers' API paths (`/gateway.do`, `/pay/orderquery`,
/// `/secapi/pay/refund`, `/v3/pay/transactions/...`, `/v3/refund/domestic/refunds`), which
/// authenticate as the providers do.
pub fn router(sandbox: Sandbox) -> Routes {
    let v1 = Router::new()
        .route("/payments", post(api::create))
        .route("/payments/{payment_id}", get(api::get))
        .route("/payments/{payment_id}/refund", post(api::refund))
        .route("/payments/{payment_id}/drills", post(api::drills))
        .route("/trades/{out_trade_no}", get(api::trade_query));
    let public = Router::new()
        .route("/pay/{payment_id}", get(page::show))
        .route("/pay/{payment_id}/pay", post(page::pay))
        .route("/pay/{payment_id}/cancel", post(page::cancel))
        .route("/pay/{payment_id}/status", get(page::status))
        .route("/pay/{payment_id}/return", get(page::paid_return))
        .route(
            "/gateway.do",
            get(gateway::alipay_gateway).post(gateway::alipay_gateway),
        )
        .route("/pay/orderquery", post(gateway::wechat_v2_orderquery))
        .route("/secapi/pay/refund", post(gateway::wechat_v2_refund))
        .route(
            "/v3/pay/transactions/out-trade-no/{out_trade_no}",
            get(gateway::wechat_v3_query_by_out_trade_no),
        )
        .route(
            "/v3/pay/transactions/id/{transaction_id}",
            get(gateway::wechat_v3_query_by_id),
        )
        .route(
            "/v3/refund/domestic/refunds",
            post(gateway::wechat_v3_refund),
        )
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(sandbox.clone());
    Routes {
        admin: v1
            .layer(DefaultBodyLimit::max(MAX_BODY))
            .with_state(sandbox),
        public,
    }
}

/// The sandbox's routes (see [`router`]).
pub struct Routes {
    /// The producer's API (`/payments`, `/trades/...`), relative to where it is mounted;
    /// the mounting server puts its own authentication in front.
    pub admin: Router,
    /// Checkout pages and provider API paths, at the root; they authenticate as providers do.
    pub public: Router,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_url_uses_the_listen_address_or_a_lan_one_for_any() {
        assert_eq!(
            default_public_url("127.0.0.1:8080".parse().unwrap()),
            "http://127.0.0.1:8080"
        );
        let any = default_public_url("0.0.0.0:8080".parse().unwrap());
        assert!(
            any.starts_with("http://") && any.ends_with(":8080"),
            "{any}"
        );
        assert!(!any.contains("0.0.0.0"), "{any}");
    }
}
