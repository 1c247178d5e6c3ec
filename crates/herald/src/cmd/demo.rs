//! `herald demo`: the whole notify_url / return_url flow on one machine. Starts Herald with
//! the payment sandbox and the example shop on a fresh embedded database and prints what to
//! open; runs until Ctrl-C.
use anyhow::Context as _;
use std::net::IpAddr;
use std::path::PathBuf;

use clap::Args;
use herald_protocols::Profile;

use herald_demo::DemoOptions;

#[derive(Args, Debug)]
#[command(
    after_help = "Open the shop URL it prints, buy something, pay on the sandbox's \
    checkout page (or scan its QR code with a phone when started with --host 0.0.0.0), and \
    watch the order turn paid when the notification arrives.\n\n\
    Examples:\n  herald demo\n  herald demo --profile wechatpay-v3\n  herald demo --host 0.0.0.0"
)]
pub struct DemoArgs {
    /// The payment platform's wire profile: alipay, wechatpay-v2, wechatpay-v3, stripe,
    /// standard-webhooks.
    #[arg(long, default_value = "alipay")]
    pub profile: String,
    /// Address to bind both servers; 0.0.0.0 lets a phone on your network open the
    /// checkout page from its QR code.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Herald's port (API, sandbox, checkout pages).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// The example shop's port.
    #[arg(long, default_value_t = 3000)]
    pub shop_port: u16,
    /// Keep the databases in this directory (default: a fresh temporary directory, deleted
    /// when the demo stops). Must not hold an earlier demo's data.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Close unpaid payments after this many seconds.
    #[arg(long, default_value_t = 900)]
    pub unpaid_timeout_secs: u64,
    /// Seconds the shop waits for a notification (after the buyer came back from paying, or
    /// after the order was created) before asking the platform's trade query (alipay,
    /// wechatpay-v2, wechatpay-v3).
    #[arg(long, default_value_t = 10)]
    pub query_after_secs: u64,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let profile: Profile = args.profile.parse()?;
    let temp;
    let dir = match args.dir {
        Some(d) => {
            if d.join("herald.db").exists() || d.join("shop.db").exists() {
                anyhow::bail!(
                    "{} already holds a demo's databases; pick an empty directory",
                    d.display()
                );
            }
            d
        }
        None => {
            temp = tempfile::Builder::new()
                .prefix("herald-demo-")
                .tempdir()
                .context("cannot create a temporary directory")?;
            temp.path().to_path_buf()
        }
    };
    let demo = herald_demo::start(DemoOptions {
        dir: dir.clone(),
        host: args.host,
        herald_port: args.port,
        shop_port: args.shop_port,
        profile,
        unpaid_timeout: std::time::Duration::from_secs(args.unpaid_timeout_secs),
        query_after: std::time::Duration::from_secs(args.query_after_secs),
    })
    .await?;
    println!("Herald demo ({} profile) is running.", profile.name());
    println!();
    println!("  Shop:      {}/", demo.shop_url);
    println!("             buy something, pay on the checkout page, watch the order turn paid");
    println!("  Herald:    {}  (API + sandbox)", demo.herald_url);
    println!("  Dashboard: {}/", demo.herald_url);
    if let Some(link) = demo.dashboard_login_url().await {
        println!("             sign in once with {link}  (single use, 10 minutes)");
    }
    println!("  Admin token: {}", demo.admin_token);
    println!("  App:       {}", demo.app_id);
    println!("  Data:      {}", dir.display());
    println!();
    println!(
        "Deliveries:  curl -H 'Authorization: Bearer {}' {}/v1/apps/{}/notifications",
        demo.admin_token, demo.herald_url, demo.app_id
    );
    println!("Stop with Ctrl-C.");
    super::serve::shutdown_signal().await;
    demo.shutdown().await;
    println!("Demo stopped.");
    Ok(())
}
