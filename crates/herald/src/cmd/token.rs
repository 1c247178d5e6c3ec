//! `herald token reset`: make a new admin token when the old one is lost (or leaked), store
//! its hash in place of the old one's, and print it once. SQLite and PostgreSQL alike; it
//! needs no secret key (apps' credentials are not read).
use anyhow::Context as _;
use clap::{Args, Subcommand};
use herald_store::Sealer;
use herald_store_sqlite::Durability;

use herald_server::server::{self, Database};

/// Manage the admin token.
#[derive(Args, Debug)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub command: TokenCommand,
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Make a new admin token, print it once, and store only its hash (the old one stops
    /// working once the servers restart).
    #[command(after_help = "Examples:\n  \
        herald token reset --db sqlite://herald.db\n  \
        herald token reset --db 'postgres://herald@db.internal:5432/herald?sslmode=require'\n\n\
        An SQLite database is owned by one process: stop `herald serve` first. Servers read the\n\
        token's hash at start: restart them (every node) to use the new token.")]
    Reset(ResetArgs),
}

#[derive(Args, Debug)]
pub struct ResetArgs {
    /// Database URL: sqlite://PATH or postgres://USER@HOST:PORT/DB (add ?sslmode=require
    /// for TLS).
    #[arg(long, env = "HERALD_DB", value_name = "URL")]
    pub db: String,
}

pub async fn run(args: TokenArgs) -> anyhow::Result<()> {
    match args.command {
        TokenCommand::Reset(args) => reset(args).await,
    }
}

async fn reset(args: ResetArgs) -> anyhow::Result<()> {
    let database: Database = args
        .db
        .parse()
        .map_err(anyhow::Error::msg)
        .context("invalid --db")?;
    if let Database::Sqlite(path) = &database {
        if !path.exists() {
            anyhow::bail!("{} does not exist", path.display());
        }
    }
    let store = database
        .open(Durability::Full, Sealer::none())
        .await
        .with_context(|| format!("opening {}", args.db))?;
    let result = server::reset_admin_token(store.as_ref()).await;
    store.close().await;
    let token = result.context("the token was not changed")?;
    println!("New admin token (shown once, only its hash is stored; keep it): {token}");
    println!("Use it as:  Authorization: Bearer {token}");
    println!("Restart the servers (every node) for it to replace the old one.");
    Ok(())
}
