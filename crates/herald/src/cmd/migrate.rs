//! `herald migrate`: bring a database's schema up to this build's, and nothing else. Every
//! node runs the migrations at start anyway (under an advisory lock on PostgreSQL, so nodes
//! starting together apply each once); this is for deploying the schema before the nodes,
//! or checking that a database is reachable and current.
use anyhow::Context as _;
use clap::Args;

use herald_server::server::Database;

/// Apply the migrations this build has and the database lacks, then exit.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    herald migrate --db sqlite://herald.db\n  \
    herald migrate --db 'postgres://herald@db.internal:5432/herald?sslmode=require'")]
pub struct MigrateArgs {
    /// Database URL: sqlite://PATH or postgres://USER@HOST:PORT/DB (add ?sslmode=require
    /// for TLS).
    #[arg(long, env = "HERALD_DB", value_name = "URL")]
    pub db: String,
}

pub async fn run(args: MigrateArgs) -> anyhow::Result<()> {
    let database: Database = args
        .db
        .parse()
        .map_err(anyhow::Error::msg)
        .context("invalid --db")?;
    database
        .migrate()
        .await
        .with_context(|| format!("migrating {}", args.db))?;
    println!("The database is at this build's schema.");
    Ok(())
}
