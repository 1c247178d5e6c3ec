//! The `herald` command line: argument parsing and logging set-up; each command's work is
//! in `herald::cmd`.
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use herald::cmd;
use herald_server::config::ServeArgs;

/// mimalloc: Herald allocates per request and per delivery from several threads at once;
/// glibc malloc's arena locks cost about half the throughput in `herald bench`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Herald delivers payment notifications and webhooks durably, signed, and retried on the
/// provider's schedule until the receiver acknowledges them.
#[derive(Parser, Debug)]
#[command(name = "herald", version)]
#[command(after_help = "Examples:\n  \
    herald demo\n  \
    herald serve --db sqlite://herald.db --allow-private-targets\n  \
    herald token reset --db sqlite://herald.db\n  \
    herald listen --port 9000 --secret whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n  \
    herald send --url http://127.0.0.1:9000/hook --secret whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw --json '{\"order\": 42}'\n  \
    herald verify --profile alipay --key alipay_public.pem --content-type application/x-www-form-urlencoded --explain < notify.txt\n  \
    herald verify --profile alipay --key alipay_public.pem --request captured/1764280000000-0000.http --explain\n\n\
    Logs go to standard error; set RUST_LOG (e.g. RUST_LOG=debug) for more.")]
struct Cli {
    /// Log format on standard error: `text` (coloured only when standard error is a
    /// terminal) or `json` (one JSON object per line, with span fields such as the API's
    /// request_id). RUST_LOG sets the level (default info).
    #[arg(long, global = true, env = "HERALD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the delivery service: the HTTP API, the delivery engine and the operator dashboard
    /// (open / in a browser) on one database.
    Serve(Box<ServeArgs>),
    /// Try the whole payment flow locally: the sandbox platform and the example shop (open
    /// the shop URL it prints in your browser).
    Demo(cmd::demo::DemoArgs),
    /// Deliver one notification signed in any profile now, showing each attempt (exit 1 if
    /// never acknowledged).
    Send(cmd::send::SendArgs),
    /// Run a local receiver that verifies, prints and acknowledges notifications (--dump
    /// saves each raw request).
    Listen(cmd::listen::ListenArgs),
    /// Verify a captured request (the body on standard input, or the whole request with
    /// --request FILE); exit 1 and say why if invalid.
    Verify(cmd::verify::VerifyArgs),
    /// Print the signed request Herald would send for a payload (on standard input); a
    /// generated key is written to a file.
    Sign(cmd::sign::SignArgs),
    /// Measure delivery, ingest, latency, isolation, backlog and signing cost against
    /// baselines measured in the same run (see `herald bench --help`).
    Bench(cmd::bench::BenchArgs),
    /// Bring a database's schema up to this build's (SQLite or PostgreSQL), then exit.
    Migrate(cmd::migrate::MigrateArgs),
    /// Re-seal every app's credentials under the first secret key (key rotation), then exit.
    Rekey(cmd::rekey::RekeyArgs),
    /// Manage the admin token: `herald token reset --db URL` makes a new one and prints it.
    Token(cmd::token::TokenArgs),
    /// Delete finished notifications older than a period (retention on demand), then exit.
    Purge(cmd::purge::PurgeArgs),
}

fn main() -> ExitCode {
    // `serve --help` shows defaults read from the components themselves.
    let command = Cli::command().mut_subcommand("serve", herald_server::config::with_default_help);
    let cli = match Cli::from_arg_matches(&command.get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    match cli.log_format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => cmd::serve::run(*args).await.map(|_| true),
            Command::Demo(args) => cmd::demo::run(args).await.map(|_| true),
            Command::Send(args) => cmd::send::run(args).await,
            Command::Listen(args) => cmd::listen::run(args).await.map(|_| true),
            Command::Verify(args) => cmd::verify::run(args),
            Command::Sign(args) => cmd::sign::run(args).map(|_| true),
            Command::Bench(args) => cmd::bench::run(args).await,
            Command::Migrate(args) => cmd::migrate::run(args).await.map(|_| true),
            Command::Rekey(args) => cmd::rekey::run(args).await.map(|_| true),
            Command::Token(args) => cmd::token::run(args).await.map(|_| true),
            Command::Purge(args) => cmd::purge::run(args).await.map(|_| true),
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            // The whole chain: what was being done, then each cause down to the OS's.
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
