//! `herald rekey`: re-seal every app's credentials (and every source's keys) under the first
//! key of the keyring, so older keys can be dropped (see the README's "Secrets at rest").
//! Plaintext credentials (written before a key was configured) are sealed too. Nothing is
//! written when one app's credentials do not open with the keyring given.
use anyhow::Context as _;
use clap::Args;
use herald_store_sqlite::Durability;

use herald_server::config::SecretKeyArgs;
use herald_server::server::Database;

/// Re-seal every app's credentials and source's keys under the first secret key, then exit.
#[derive(Args, Debug)]
#[command(after_help = "Rotation:\n  \
    1. put a new key (head -c 32 /dev/urandom | base64) first in the key file, the old one\n     \
    after it, and restart Herald (every node);\n  \
    2. herald rekey --db sqlite://herald.db --secret-key-file /etc/herald/secret.key\n  \
    3. drop the old key from the file and restart.\n\
    An SQLite database is owned by one process: stop `herald serve` while rekey runs.")]
pub struct RekeyArgs {
    /// Database URL: sqlite://PATH or postgres://USER@HOST:PORT/DB (add ?sslmode=require
    /// for TLS).
    #[arg(long, env = "HERALD_DB", value_name = "URL")]
    pub db: String,

    #[command(flatten)]
    pub secret_key: SecretKeyArgs,
}

pub async fn run(args: RekeyArgs) -> anyhow::Result<()> {
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
    let sealer = args.secret_key.sealer()?;
    let Some(key_id) = sealer.current_key_id().map(str::to_string) else {
        anyhow::bail!(
            "no secret key is configured: give --secret-key-file or HERALD_SECRET_KEY (the first key seals)"
        );
    };
    let store = database
        .open(Durability::Full, sealer)
        .await
        .with_context(|| format!("opening {}", args.db))?;
    let result = store.reseal_credentials().await;
    store.close().await;
    let census = result.context("nothing was re-sealed")?;
    println!(
        "{} app(s) and source(s): {} re-sealed under key {key_id} ({} were in plaintext, {} under an older key); {} already were.",
        census.apps(),
        census.resealed,
        census.plaintext,
        census.older,
        census.current
    );
    Ok(())
}
