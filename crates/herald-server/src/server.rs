//! `herald serve`'s core: open the store, resolve the admin token, start the engine and
//! the HTTP API, and stop both when the shutdown future completes. Integration tests call
//! [`start`] directly with a random port and a fresh database.
//!
//! The first start never loses the admin token: the port is bound before anything else, and
//! a token made at this start is stored (as a hash) only as the last step that can fail,
//! right before [`start`] returns it to be printed; a start that fails stores none.
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine as _;
use herald_engine::{Engine, EngineConfig, EngineStats};
use herald_store::{MetaStore, Sealer, Store};
use herald_store_postgres::PgStore;
use herald_store_sqlite::{Durability, SqliteStore};
use rand::RngCore;
use tokio::sync::watch;

use crate::api::{self, ApiState};
use crate::dashboard::{self, DashState, Dashboard};
use crate::http::{self, HttpLimits};
use crate::metrics::{self, MetricsState, ServerMetrics};
use crate::retention;
use crate::sandbox::{self, Sandbox, SandboxOptions};

const ADMIN_TOKEN_KEY: &str = "admin_token_sha256";

/// Where the data lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Database {
    /// One file, one process (the default).
    Sqlite(PathBuf),
    /// A PostgreSQL database that several nodes share (`postgres://user@host:port/db`).
    Postgres(String),
}

impl Database {
    /// Opens the store: runs the migrations not applied yet, then returns it. Apps'
    /// credentials are sealed with `sealer` as they are written, opened with it as read.
    pub async fn open(
        &self,
        durability: Durability,
        sealer: Sealer,
    ) -> Result<Arc<dyn Store>, herald_store::StoreError> {
        Ok(match self {
            Database::Sqlite(path) => Arc::new(SqliteStore::open_sealed(path, durability, sealer)?),
            Database::Postgres(url) => Arc::new(PgStore::connect_sealed(url, sealer).await?),
        })
    }

    /// Runs the migrations not applied yet, and nothing else (`herald migrate`).
    pub async fn migrate(&self) -> Result<(), herald_store::StoreError> {
        match self {
            Database::Sqlite(path) => {
                let store = SqliteStore::open(path, Durability::Full)?;
                store.close().await;
                Ok(())
            }
            Database::Postgres(url) => herald_store_postgres::migrate(url).await,
        }
    }
}

impl std::str::FromStr for Database {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s
            .strip_prefix("sqlite://")
            .or_else(|| s.strip_prefix("sqlite:"))
        {
            if path.is_empty() {
                return Err("sqlite:// needs a file path, e.g. sqlite://herald.db".into());
            }
            return Ok(Database::Sqlite(PathBuf::from(path)));
        }
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            return Ok(Database::Postgres(s.to_string()));
        }
        Err(format!(
            "unsupported database URL {s:?}; expected sqlite://PATH or postgres://USER@HOST:PORT/DB"
        ))
    }
}

#[derive(Clone, Debug)]
pub struct ServerOptions {
    pub database: Database,
    pub listen: SocketAddr,
    /// The admin token; when `None`, the one stored at first start is used, or a new one is
    /// generated, stored (as a hash) and returned once in [`Running::generated_token`].
    pub admin_token: Option<String>,
    pub engine: EngineConfig,
    pub durability: Durability,
    /// Mounts the payment sandbox (`/v1/sandbox/*`, `/pay/*`) when set.
    pub sandbox: Option<SandboxOptions>,
    /// The API's connection cap and timeouts.
    pub http: HttpLimits,
    /// The keyring apps' credentials are sealed with at rest; without keys, they are stored
    /// in plaintext.
    pub sealer: Sealer,
    /// Finished notifications older than this are purged in the background (see
    /// [`crate::retention`]); `None` keeps everything.
    pub retention: Option<std::time::Duration>,
}

/// A started server.
pub struct Running {
    pub addr: SocketAddr,
    /// Set only when this start generated the admin token: print it once, it is not kept.
    pub generated_token: Option<String>,
    pub stats: Arc<EngineStats>,
    pub store: Arc<dyn Store>,
    /// The payment sandbox's public base URL, when it is mounted.
    pub sandbox_url: Option<String>,
    /// The operator dashboard (at `/`): issues one-time login links.
    pub dashboard: Dashboard,
    task: tokio::task::JoinHandle<()>,
    stop: watch::Sender<bool>,
}

impl Running {
    /// Stops accepting requests, lets attempts in flight finish (bounded), and waits.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }

    /// Waits until the server stops by itself (its shutdown future completed).
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot open the database: {0}")]
    Store(#[from] herald_store::StoreError),
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error("cannot start the engine: {0}")]
    Engine(#[from] herald_engine::EngineError),
    #[error("the stored admin token hash is corrupt; start with --admin-token to replace it")]
    BadStoredToken,
    #[error("the admin token is empty; give a non-empty --admin-token (or --admin-token-file), or none to use the stored one")]
    EmptyToken,
    #[error("cannot restrict the database file {0} to its owner: {1}")]
    Permissions(PathBuf, std::io::Error),
    #[error("cannot start: {0}")]
    Credentials(herald_store::StoreError),
}

/// Starts the server; it runs until `shutdown` completes or [`Running::shutdown`] is called.
pub async fn start(
    opts: ServerOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Running, ServerError> {
    if opts
        .admin_token
        .as_deref()
        .is_some_and(|t| t.trim().is_empty())
    {
        return Err(ServerError::EmptyToken);
    }
    // The port first: a port in use fails the start before anything is stored.
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|e| ServerError::Bind(opts.listen, e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| ServerError::Bind(opts.listen, e))?;
    if let Database::Sqlite(path) = &opts.database {
        owner_only_database(path)?;
    }
    let store = opts
        .database
        .open(opts.durability, opts.sealer.clone())
        .await?;
    check_credentials(store.as_ref(), &opts.sealer).await?;
    let (mut token_hash, mut generated_token) =
        resolve_admin_token(store.as_ref(), opts.admin_token.as_deref()).await?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    // Either the caller's shutdown future or an explicit stop ends everything.
    let stop_on_shutdown = stop_tx.clone();
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_on_shutdown.send(true);
    });

    let engine = Engine::start(store.clone(), opts.engine.clone(), stopped)?;
    // The last step that can fail: store the token made at this start, unless another node
    // on the same database stored one first (then that one holds, and nothing is printed).
    if generated_token.is_some() {
        let stored = store
            .set_meta_if_absent(ADMIN_TOKEN_KEY, &hex_encode(&token_hash))
            .await;
        match stored {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!("another node stored the admin token first; it is used here");
                generated_token = None;
                token_hash = stored_token(store.as_ref())
                    .await?
                    .ok_or(ServerError::BadStoredToken)?;
            }
            Err(e) => {
                let _ = stop_tx.send(true);
                return Err(ServerError::Store(e));
            }
        }
    }
    let nofile = match http::raise_descriptor_limit() {
        Ok((soft, hard)) => {
            tracing::info!(
                soft,
                hard,
                "open-file (descriptor) limit: {soft} (hard limit {hard})"
            );
            Some(soft)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-file (descriptor) limit");
            None
        }
    };
    let max_connections = opts.http.connection_cap(nofile);
    tracing::info!(
        max_connections,
        header_read_timeout_s = opts.http.header_read_timeout.as_secs_f64(),
        idle_timeout_s = opts.http.idle_timeout.as_secs_f64(),
        "API connection limits"
    );
    let api_state = ApiState {
        store: store.clone(),
        admin_token_sha256: token_hash,
        target_policy: opts.engine.target_policy.clone(),
        apps: Default::default(),
        default_max_in_flight: opts.engine.default_max_in_flight,
    };
    let mut app = api::router(api_state.clone());
    let mut sandbox_url = None;
    let mut mounted = None;
    if let Some(sandbox_opts) = &opts.sandbox {
        // Another node's trades do not wake this node's timer: it reads the deadlines again
        // at least once a lease, so a dead node's trades close about when its work is
        // taken over.
        let sandbox_opts = SandboxOptions {
            recheck: sandbox_opts.recheck.min(opts.engine.lease),
            ..sandbox_opts.clone()
        };
        let sb = Sandbox::start(store.clone(), &sandbox_opts, addr, stop_rx.clone());
        tracing::info!(public_url = %sb.public_url(), "the payment sandbox is mounted");
        sandbox_url = Some(sb.public_url().to_string());
        mounted = Some(sb.clone());
        let routes = sandbox::router(sb);
        let admin = routes
            .admin
            .route_layer(axum::middleware::from_fn_with_state(
                api_state.clone(),
                api::require_admin,
            ));
        app = app.nest("/v1/sandbox", admin).merge(routes.public);
        // The sandbox's wrong methods answer like the API's: 405, `Allow`, the JSON error.
        app = app.layer(axum::middleware::map_response(
            api::error::method_not_allowed_as_json,
        ));
    }
    let (dash, dashboard) = dashboard::router(DashState {
        sessions: Arc::new(dashboard::auth::Sessions::new(api_state.store.clone())),
        api: api_state,
        sandbox: mounted,
        stats: engine.stats.clone(),
    });
    app = app.merge(dash);
    let server_metrics = Arc::new(ServerMetrics::default());
    let metrics_route = axum::Router::new()
        .route("/metrics", axum::routing::get(metrics::render))
        .with_state(MetricsState {
            server: server_metrics.clone(),
            engine: engine.stats.clone(),
            store: store.clone(),
        });
    let app = app
        .merge(metrics_route)
        .layer(axum::middleware::from_fn_with_state(
            server_metrics.clone(),
            metrics::observe,
        ));
    if let Some(retention) = opts.retention {
        tracing::info!(
            retention_days = retention.as_secs_f64() / 86_400.0,
            "finished notifications are purged after the retention period"
        );
        retention::spawn(store.clone(), retention, server_metrics, stop_rx.clone());
    }
    let serve = http::serve(listener, app, opts.http.clone(), max_connections, stop_rx);
    let stats = engine.stats.clone();
    let closing = store.clone();
    let task = tokio::spawn(async move {
        serve.await;
        let _ = engine.task.await;
        closing.close().await;
    });
    tracing::info!(%addr, "Herald is listening");
    Ok(Running {
        addr,
        generated_token,
        stats,
        store,
        sandbox_url,
        dashboard,
        task,
        stop: stop_tx,
    })
}

/// Refuses to start when an app's credentials do not open with the configured keyring (a
/// key missing, or none configured for a sealed database), rather than failing each of its
/// deliveries; and says how the credentials are held.
async fn check_credentials(store: &dyn Store, sealer: &Sealer) -> Result<(), ServerError> {
    let census = store
        .check_credentials()
        .await
        .map_err(ServerError::Credentials)?;
    match sealer.current_key_id() {
        Some(key_id) => {
            tracing::info!(
                key_id,
                keys = sealer.key_ids().count(),
                sealed_current = census.current,
                sealed_older = census.older,
                plaintext = census.plaintext,
                "credentials are sealed at rest"
            );
            if census.older + census.plaintext > 0 {
                tracing::info!(
                    "{} app(s) and source(s) are not sealed under key {key_id} yet: they are as their credentials are next written, or all at once with `herald rekey`",
                    census.older + census.plaintext
                );
            }
        }
        None if census.plaintext > 0 => tracing::warn!(
            apps = census.plaintext,
            "credentials are stored unencrypted; configure --secret-key-file or HERALD_SECRET_KEY to seal them at rest"
        ),
        None => {}
    }
    Ok(())
}

/// Makes the database readable by its owner only: a new file is created with mode 0600
/// before SQLite opens it (SQLite gives its `-wal` and `-shm` files the database file's
/// mode), and an existing one (with its `-wal`/`-shm`) is narrowed to 0600.
fn owner_only_database(path: &std::path::Path) -> Result<(), ServerError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let err = |p: &std::path::Path, e| ServerError::Permissions(p.to_path_buf(), e);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            // Let SQLite report a missing directory and the like in its own words.
            Err(_) => return Ok(()),
        }
        for suffix in ["", "-wal", "-shm"] {
            let mut name = path.as_os_str().to_owned();
            name.push(suffix);
            let file = std::path::PathBuf::from(name);
            match std::fs::metadata(&file) {
                Ok(m) if m.permissions().mode() & 0o077 != 0 => {
                    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                        .map_err(|e| err(&file, e))?;
                    tracing::info!(file = %file.display(), "database file narrowed to mode 0600 (owner only)");
                }
                _ => {}
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// The admin token's hash: the given token's, or the stored one, or a new token's (returned
/// too, and not stored yet: [`start`] stores it last).
async fn resolve_admin_token(
    store: &dyn Store,
    given: Option<&str>,
) -> Result<([u8; 32], Option<String>), ServerError> {
    if let Some(token) = given {
        return Ok((api::hash_token(token), None));
    }
    if let Some(hash) = stored_token(store).await? {
        return Ok((hash, None));
    }
    let token = new_admin_token();
    Ok((api::hash_token(&token), Some(token)))
}

async fn stored_token(store: &dyn Store) -> Result<Option<[u8; 32]>, ServerError> {
    let Some(stored) = store.get_meta(ADMIN_TOKEN_KEY).await? else {
        return Ok(None);
    };
    let bytes = hex_decode(&stored).ok_or(ServerError::BadStoredToken)?;
    let hash: [u8; 32] = bytes.try_into().map_err(|_| ServerError::BadStoredToken)?;
    Ok(Some(hash))
}

/// A new admin token: `hrd_` and 32 random bytes (base64url).
fn new_admin_token() -> String {
    let mut raw = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut raw);
    format!(
        "hrd_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    )
}

/// `herald token reset`: makes a new admin token, stores its hash in place of the old one,
/// and returns it (to be printed once). Running servers keep the token they started with
/// until they restart.
pub async fn reset_admin_token(store: &dyn Store) -> Result<String, herald_store::StoreError> {
    let token = new_admin_token();
    store
        .set_meta(ADMIN_TOKEN_KEY, &hex_encode(&api::hash_token(&token)))
        .await?;
    Ok(token)
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_parse_with_clear_errors() {
        assert_eq!(
            "sqlite://herald.db".parse::<Database>(),
            Ok(Database::Sqlite("herald.db".into()))
        );
        assert_eq!(
            "sqlite:/tmp/x.db".parse::<Database>(),
            Ok(Database::Sqlite("/tmp/x.db".into()))
        );
        assert!("sqlite://"
            .parse::<Database>()
            .unwrap_err()
            .contains("file path"));
        assert_eq!(
            "postgres://herald@db:5432/herald".parse::<Database>(),
            Ok(Database::Postgres(
                "postgres://herald@db:5432/herald".into()
            ))
        );
        assert!("mysql://x"
            .parse::<Database>()
            .unwrap_err()
            .contains("unsupported"));
    }

    #[test]
    fn hex_round_trips() {
        let h = api::hash_token("t");
        assert_eq!(hex_decode(&hex_encode(&h)).unwrap(), h.to_vec());
        assert_eq!(hex_decode("zz"), None);
        assert_eq!(hex_decode("abc"), None);
    }
}
