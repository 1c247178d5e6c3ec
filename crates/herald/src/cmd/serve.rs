//! `herald serve`: run the delivery service until Ctrl-C or SIGTERM.
use herald_server::config::ServeArgs;
use herald_server::server;

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let opts = args.resolve()?;
    let running = server::start(opts, shutdown_signal()).await?;
    println!("Herald is listening on http://{}", running.addr);
    if let Some(url) = &running.sandbox_url {
        println!("Payment sandbox: create payments with POST /v1/sandbox/payments; checkout pages at {url}/pay/{{payment_id}}");
    }
    if let Some(token) = &running.generated_token {
        println!("Admin token (shown once, only its hash is stored; keep it): {token}");
        println!("Use it as:  Authorization: Bearer {token}");
    }
    running.wait().await;
    println!("Herald stopped.");
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}
