//! `herald demo`, callable from tests: Herald with the payment sandbox on a fresh embedded
//! database, one merchant app of the chosen profile, and the demo's merchant, the example
//! shop ([`shop`]), receiving that app's notifications through the inbox. Everything runs
//! in this process on loopback (private targets allowed, so the engine may call the shop).
//! The shop also runs on its own (`herald-shop`) against any sender, and is the Rust example
//! of a merchant on `herald-receiver`. The `herald demo` command only parses arguments and
//! prints what [`start`] returns.
use anyhow::Context as _;
pub mod shop;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use herald_engine::{EngineConfig, TargetPolicy};
use herald_inbox::SqliteInbox;
use herald_protocols::profile::Credentials;
use herald_protocols::Profile;
use herald_receiver::{Inbox, Receiver, TradeQuery};
use herald_server::sandbox::SandboxOptions;
use herald_server::server::{self, Database, Running, ServerOptions};
use herald_store::NewApp;
use herald_store_sqlite::Durability;
use rand::RngCore;

use crate::shop::{Platform, ShopConfig};

/// What to start.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Where the databases go (a fresh directory).
    pub dir: PathBuf,
    /// Address both servers bind; `0.0.0.0` lets a phone on the same network scan the QR.
    pub host: IpAddr,
    /// Herald's port (API, sandbox, checkout pages); 0 picks a free one.
    pub herald_port: u16,
    /// The shop's port; 0 picks a free one.
    pub shop_port: u16,
    /// The merchant app's wire profile.
    pub profile: Profile,
    /// The sandbox's unpaid timeout.
    pub unpaid_timeout: Duration,
    /// How long the shop waits for a notification before asking the trade query.
    pub query_after: Duration,
}

/// A started demo.
pub struct Demo {
    pub herald: Running,
    /// Herald's base URL as browsers reach it.
    pub herald_url: String,
    /// The shop's base URL.
    pub shop_url: String,
    pub admin_token: String,
    /// The merchant app the shop's payments belong to.
    pub app_id: String,
    shop_task: tokio::task::JoinHandle<()>,
}

impl Demo {
    /// The dashboard's URL with a one-time sign-in (single use, valid for ten minutes): what
    /// the demo prints for the browser it is shown in.
    pub async fn dashboard_login_url(&self) -> Option<String> {
        self.herald
            .dashboard
            .one_time_login_path()
            .await
            .map(|path| format!("{}{path}", self.herald_url))
    }

    pub async fn shutdown(self) {
        self.shop_task.abort();
        self.herald.shutdown().await;
    }
}

/// The currency a provider's merchants usually charge in.
fn currency_for(profile: Profile) -> &'static str {
    match profile {
        Profile::Alipay
        | Profile::WechatPayV2
        | Profile::WechatPayV3
        | Profile::WechatPayLegacy
        | Profile::Dialect => "CNY",
        Profile::Stripe | Profile::StandardWebhooks => "USD",
    }
}

/// The ids the shop insists on: notifications for another app or merchant are forgeries.
/// The shop's trade query against the sandbox's provider API, for the profiles that have one.
/// Alipay and WeChat Pay v3 requests are signed with the merchant's own key pair, which a
/// Herald app does not hold: the demo merchant gets a fresh one (the sandbox does not check
/// those signatures, and says so in a reply header).
fn trade_query(herald_url: &str, creds: &Credentials) -> anyhow::Result<Option<TradeQuery>> {
    let merchant_key =
        || herald_protocols::keys::private_pem_pkcs8(&herald_protocols::keys::generate_rsa_2048());
    let query = match creds {
        Credentials::Alipay(c) => Some(TradeQuery::alipay(
            &format!("{herald_url}/gateway.do"),
            &c.app_id,
            &merchant_key()?,
        )),
        Credentials::WechatPayV2(c) => Some(TradeQuery::wechatpay_v2(
            herald_url,
            &c.appid,
            &c.mch_id,
            &c.api_key,
            c.sign_type,
        )),
        Credentials::WechatPayV3(c) => Some(TradeQuery::wechatpay_v3(
            herald_url,
            &c.mchid,
            "DEMO0MERCHANT0SERIAL",
            &merchant_key()?,
        )),
        // No trade query the sandbox answers with a signature for these.
        Credentials::Stripe(_)
        | Credentials::StandardWebhooks(_)
        | Credentials::WechatPayLegacy(_)
        | Credentials::Dialect(_) => None,
    };
    query.transpose().context("the demo merchant's trade query")
}

fn expected_ids(creds: &Credentials) -> (Option<String>, Option<String>) {
    match creds {
        Credentials::Alipay(c) => (Some(c.app_id.clone()), c.seller_id.clone()),
        Credentials::WechatPayV2(c) => (Some(c.appid.clone()), Some(c.mch_id.clone())),
        Credentials::WechatPayV3(c) => (Some(c.appid.clone()), Some(c.mchid.clone())),
        Credentials::WechatPayLegacy(c) => (Some(c.appid.clone()), Some(c.partner.clone())),
        Credentials::Dialect(c) => (
            None,
            c.dialect
                .fields
                .merchant_id
                .as_ref()
                .and_then(|f| c.fields.get(f).cloned()),
        ),
        Credentials::Stripe(_) | Credentials::StandardWebhooks(_) => (None, None),
    }
}

/// The address this process itself uses to reach a listener.
fn loopback(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::new(IpAddr::from([127, 0, 0, 1]), addr.port())
    } else {
        addr
    }
}

/// Starts Herald with the sandbox, creates the merchant app, and opens the shop.
pub async fn start(opts: DemoOptions) -> anyhow::Result<Demo> {
    std::fs::create_dir_all(&opts.dir)
        .with_context(|| format!("cannot create {}", opts.dir.display()))?;
    let mut raw = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut raw);
    let admin_token = format!(
        "hrd_demo_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    );

    // Bind the shop first so Herald's sandbox and the app know its URL.
    let shop_listener = tokio::net::TcpListener::bind(SocketAddr::new(opts.host, opts.shop_port))
        .await
        .with_context(|| format!("cannot listen on {}:{}", opts.host, opts.shop_port))?;
    let shop_addr = shop_listener.local_addr()?;
    let shop_url = herald_server::sandbox::default_public_url(shop_addr);

    let herald_listen = SocketAddr::new(opts.host, opts.herald_port);
    let herald = server::start(
        ServerOptions {
            database: Database::Sqlite(opts.dir.join("herald.db")),
            listen: herald_listen,
            admin_token: Some(admin_token.clone()),
            engine: EngineConfig {
                target_policy: Arc::new(TargetPolicy {
                    allow_private: true,
                    allow: vec![],
                }),
                shutdown_grace: Duration::from_millis(500),
                ..EngineConfig::default()
            },
            durability: Durability::Full,
            sealer: Default::default(),
            retention: None,
            sandbox: Some(SandboxOptions {
                public_url: None,
                unpaid_timeout: opts.unpaid_timeout,
                ..SandboxOptions::default()
            }),
            http: Default::default(),
        },
        std::future::pending(),
    )
    .await?;
    let herald_url = herald_server::sandbox::default_public_url(herald.addr);

    let now_ms = herald_server::clock::now_ms();
    let (credentials, _) = opts.profile.create_credentials(&serde_json::Value::Null)?;
    let app = herald
        .store
        .create_app(NewApp {
            name: "Herald demo shop".into(),
            profile: opts.profile,
            retry: None,
            ack: None,
            credentials,
            now: now_ms,
        })
        .await
        .context("cannot create the demo app")?;
    let keys = opts
        .profile
        .receiver_keys_from(&app.credentials, now_ms.to_seconds().get())?;
    let mut receiver = Receiver::new(opts.profile, keys);
    let (app_id, merchant_id) = expected_ids(&app.credentials);
    if let Some(id) = app_id {
        receiver = receiver.expect_app_id(id);
    }
    if let Some(id) = merchant_id {
        receiver = receiver.expect_merchant_id(id);
    }
    let shop_db = opts.dir.join("shop.db");
    let inbox_store = SqliteInbox::open(&shop_db).context("shop database")?;
    let shop = shop::router(ShopConfig {
        inbox: Inbox::new(receiver, Arc::new(inbox_store)),
        database: shop_db,
        public_url: shop_url.clone(),
        currency: currency_for(opts.profile).into(),
        platform: Some(Platform {
            base_url: format!("http://{}", loopback(herald.addr)),
            admin_token: admin_token.clone(),
            app_id: app.id.clone(),
        }),
        query: trade_query(
            &format!("http://{}", loopback(herald.addr)),
            &app.credentials,
        )?,
        query_after: opts.query_after,
    })?;
    let shop_task = tokio::spawn(async move {
        if let Err(e) = axum::serve(shop_listener, shop).await {
            tracing::error!(error = %e, "the shop stopped");
        }
    });
    Ok(Demo {
        herald,
        herald_url,
        shop_url,
        admin_token,
        app_id: app.id,
        shop_task,
    })
}
