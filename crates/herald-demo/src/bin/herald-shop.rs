//! `herald-shop`: runs the example shop on its own, against any platform speaking one of
//! Herald's profiles (`herald demo` runs it wired to the sandbox for you).
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use herald_demo::shop::{Platform, ShopConfig};
use herald_inbox::SqliteInbox;
use herald_protocols::Profile;
use herald_receiver::{Inbox, Receiver};

/// The example shop: products, orders, checkout, return page and a notify_url handler that
/// takes each payment notification exactly once.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// The shop's SQLite file (orders, the inbox, fulfilments).
    #[arg(long, default_value = "shop.db")]
    db: PathBuf,
    /// Wire profile of the payment platform: standard-webhooks, alipay, wechatpay-v2,
    /// wechatpay-v3, stripe.
    #[arg(long, default_value = "alipay")]
    profile: String,
    /// Verification key (the platform public key, API key or whsec_ secret), or a file
    /// holding one (a path, or `@FILE`). Repeatable.
    #[arg(
        long = "key",
        required = true,
        env = "SHOP_VERIFY_KEY",
        hide_env_values = true
    )]
    keys: Vec<String>,
    /// wechatpay-v3: the APIv3 key that decrypts the resource (or a file holding it).
    #[arg(long, env = "SHOP_DECRYPT_KEY", hide_env_values = true)]
    decrypt_key: Option<String>,
    /// Refuse notifications whose app id differs (alipay app_id, WeChat appid).
    #[arg(long)]
    expect_app_id: Option<String>,
    /// Refuse notifications whose merchant id differs (alipay seller_id, WeChat mch_id).
    #[arg(long)]
    expect_merchant_id: Option<String>,
    /// Currency of the catalog's prices.
    #[arg(long, default_value = "CNY")]
    currency: String,
    /// The URL the platform and browsers use to reach this shop.
    #[arg(long)]
    public_url: Option<String>,
    /// Base URL of `herald serve --sandbox` to check out through.
    #[arg(long, requires_all = ["platform_token", "platform_app"])]
    platform: Option<String>,
    /// Herald's admin token, for the sandbox API.
    #[arg(long, env = "HERALD_ADMIN_TOKEN", hide_env_values = true)]
    platform_token: Option<String>,
    /// The Herald app (merchant account) the payments belong to.
    #[arg(long)]
    platform_app: Option<String>,
}

/// A key given as text, as `@FILE`, or as the path of a file holding it.
fn read_key(v: &str) -> Result<String, String> {
    match v.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .map(|s| s.trim().to_string())
            .map_err(|e| format!("cannot read {path}: {e}")),
        None => Ok(herald_protocols::keys::read_key_arg(v)),
    }
}

async fn run(args: Args) -> Result<(), String> {
    let profile: Profile = args.profile.parse().map_err(|e| format!("{e}"))?;
    let keys = args
        .keys
        .iter()
        .map(|k| read_key(k))
        .collect::<Result<Vec<_>, _>>()?;
    let decrypt = args.decrypt_key.as_deref().map(read_key).transpose()?;
    let keys = profile
        .receiver_keys(&keys, decrypt.as_deref())
        .map_err(|e| format!("--key: {e}"))?;
    let mut receiver = Receiver::new(profile, keys);
    if let Some(id) = args.expect_app_id {
        receiver = receiver.expect_app_id(id);
    }
    if let Some(id) = args.expect_merchant_id {
        receiver = receiver.expect_merchant_id(id);
    }
    let store = SqliteInbox::open(&args.db).map_err(|e| format!("--db: {e}"))?;
    let inbox = Inbox::new(receiver, Arc::new(store));
    let platform = match (args.platform, args.platform_token, args.platform_app) {
        (Some(base_url), Some(admin_token), Some(app_id)) => Some(Platform {
            base_url,
            admin_token,
            app_id,
        }),
        _ => None,
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let public_url = args.public_url.unwrap_or_else(|| format!("http://{addr}"));
    let router = herald_demo::shop::router(ShopConfig {
        inbox,
        database: args.db,
        public_url: public_url.clone(),
        currency: args.currency,
        platform,
        // The trade query needs the merchant's own request keys: see herald_receiver::TradeQuery
        // (`herald demo` wires one to the sandbox).
        query: None,
        query_after: herald_demo::shop::DEFAULT_QUERY_AFTER,
    })
    .map_err(|e| e.to_string())?;
    println!("Shop open at {public_url}  (notify_url {public_url}/notify)");
    axum::serve(listener, router)
        .await
        .map_err(|e| e.to_string())
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    if let Err(e) = run(Args::parse()).await {
        eprintln!("herald-shop: {e}");
        std::process::exit(2);
    }
}
