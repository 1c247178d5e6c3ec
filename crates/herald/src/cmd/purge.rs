//! `herald purge`: retention on demand. Deletes finished notifications (every delivery
//! succeeded, failed or canceled) that finished before `--older-than` ago, with their
//! deliveries, payloads and attempts, in short batches (see `herald_server::retention`), and prints
//! what it removed. Pending work is never touched. `herald serve` does the same in the
//! background (`--retention`).
use anyhow::Context as _;
use clap::Args;
use herald_store::Sealer;
use herald_store_sqlite::Durability;

use herald_server::config::parse_long_duration;
use herald_server::server::Database;

/// Delete finished notifications older than a period, then say how many.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    herald purge --db sqlite://herald.db --older-than 30d\n  \
    herald purge --db 'postgres://herald@db.internal:5432/herald' --older-than 7d\n\n\
    On SQLite the database belongs to one process: stop `herald serve` first (or let its\n\
    --retention do it). On PostgreSQL it may run beside the nodes.")]
pub struct PurgeArgs {
    /// Database URL: sqlite://PATH or postgres://USER@HOST:PORT/DB.
    #[arg(long, env = "HERALD_DB", value_name = "URL")]
    pub db: String,

    /// Purge what finished longer ago than this: 90s, 15m, 12h, 30d.
    #[arg(long, value_name = "DURATION")]
    pub older_than: String,
}

pub async fn run(args: PurgeArgs) -> anyhow::Result<()> {
    let database: Database = args
        .db
        .parse()
        .map_err(anyhow::Error::msg)
        .context("invalid --db")?;
    let age = parse_long_duration(&args.older_than).with_context(|| {
        format!(
            "invalid --older-than {:?}: expected a positive number with a unit, e.g. 90s, 15m, 12h, 30d",
            args.older_than
        )
    })?;
    if let Database::Sqlite(path) = &database {
        if !path.exists() {
            anyhow::bail!("no database at {}", path.display());
        }
    }
    // Purging reads no credentials: no keyring is needed.
    let store = database
        .open(Durability::Full, Sealer::none())
        .await
        .with_context(|| format!("opening {}", args.db))?;
    let before = herald_server::clock::now_ms() - age;
    let result = herald_server::retention::purge_before(store.as_ref(), before, |_| {}, None).await;
    store.close().await;
    let p = result.context("purging")?;
    println!(
        "Purged {} notifications, {} deliveries and {} attempts that finished before {}.",
        p.notifications,
        p.deliveries,
        p.attempts,
        herald_http::fields::rfc3339(before)
    );
    Ok(())
}
