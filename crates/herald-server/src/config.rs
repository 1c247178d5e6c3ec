//! `herald serve` configuration in layers, highest first: command-line flags, `HERALD_*`
//! environment variables (clap reads both), a TOML file (`--config`), then defaults.
//!
//! Each setting is declared once, as a field of [`ServeArgs`]: the same struct is clap's
//! (flag, environment variable, help) and serde's (the file's key is the field's name), the
//! layers are merged generically ([`ServeArgs::layered`]), and defaults are the engine's, the
//! accept loop's and the sandbox's own (`EngineConfig::default()` and friends), shown in
//! `--help` by [`with_default_help`] rather than written into help text. Every setting is
//! validated in [`ServeArgs::resolve`], so the server starts only with a sane one.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use herald_engine::{EngineConfig, TargetPolicy};
use herald_store::Sealer;
use herald_store_sqlite::Durability;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::http::HttpLimits;
use crate::sandbox::SandboxOptions;
use crate::server::{Database, ServerOptions};

pub const DEFAULT_DB: &str = "sqlite://herald.db";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// Every `serve` setting, declared once: as a flag, an environment variable and a key of
/// the `--config` TOML file. `None` (or an empty list) means "not set at this layer".
#[derive(Args, Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeArgs {
    /// Database URL: sqlite://PATH (created if missing; one process), or
    /// postgres://USER@HOST:PORT/DB (several nodes share it; add ?sslmode=require for TLS).
    #[arg(long, env = "HERALD_DB", value_name = "URL")]
    pub db: Option<String>,

    /// Address for the HTTP API.
    #[arg(long, env = "HERALD_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,

    /// Admin token every /v1 request must present as `Authorization: Bearer <token>`
    /// (must not be empty). Without it, the token generated (and printed once) at first
    /// start is used. Prefer --admin-token-file: arguments are visible in `ps`.
    #[arg(
        long,
        env = "HERALD_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true,
        conflicts_with = "admin_token_file"
    )]
    pub admin_token: Option<String>,

    /// Read the admin token from this file (surrounding whitespace ignored; must not be
    /// empty), keeping it out of the process list.
    #[arg(long, env = "HERALD_ADMIN_TOKEN_FILE", value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// Seal apps' credentials (signing secrets, private keys, API keys) in the database
    /// with these keys: base64 of 32 bytes each (head -c 32 /dev/urandom | base64), several
    /// comma-separated; the first seals, all open (rotation: put the new key first, run
    /// `herald rekey`, then drop the old). Prefer the environment or --secret-key-file:
    /// arguments are visible in `ps`.
    #[arg(
        long = "secret-key",
        env = "HERALD_SECRET_KEY",
        value_name = "KEYS",
        hide_env_values = true,
        conflicts_with = "secret_key_file"
    )]
    pub secret_key: Option<String>,

    /// Read the sealing keys from this file: one per line (or comma-separated), the first
    /// seals, all open; blank lines and lines starting with # are skipped. Keep it readable
    /// by Herald's user only.
    #[arg(long, env = "HERALD_SECRET_KEY_FILE", value_name = "FILE")]
    pub secret_key_file: Option<PathBuf>,

    /// Allow deliveries to loopback, private and link-local addresses (development and
    /// tests). By default only public addresses are delivered to.
    #[arg(long, env = "HERALD_ALLOW_PRIVATE_TARGETS", num_args = 0..=1, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new(), value_name = "BOOL")]
    pub allow_private_targets: Option<bool>,

    /// A non-public range to allow anyway (CIDR, repeatable or comma-separated),
    /// e.g. 10.0.0.0/8.
    #[arg(
        long = "allow-target",
        env = "HERALD_ALLOW_TARGETS",
        value_delimiter = ',',
        value_name = "CIDR"
    )]
    pub allow_targets: Vec<String>,

    /// Attempts in flight across all endpoints.
    #[arg(long, env = "HERALD_CONCURRENCY", value_name = "N")]
    pub concurrency: Option<usize>,

    /// Most attempts one app may have in flight, so one tenant whose endpoints hang cannot
    /// take every slot. [default: half of --concurrency]
    #[arg(long, env = "HERALD_APP_MAX_IN_FLIGHT", value_name = "N")]
    pub app_max_in_flight: Option<usize>,

    /// In-flight limit of an endpoint created without `max_in_flight`, and of an ad-hoc
    /// notify_url destination.
    #[arg(long, env = "HERALD_DEFAULT_MAX_IN_FLIGHT", value_name = "N")]
    pub default_max_in_flight: Option<u32>,

    /// Seconds to wait for a destination's TCP (and TLS) connection.
    #[arg(long, env = "HERALD_CONNECT_TIMEOUT", value_name = "SECONDS")]
    pub connect_timeout: Option<u64>,

    /// Seconds an attempt may take in all, response included.
    #[arg(long, env = "HERALD_REQUEST_TIMEOUT", value_name = "SECONDS")]
    pub request_timeout: Option<u64>,

    /// Seconds ahead of now the engine claims due work and keeps it in memory (later work
    /// stays in the database until it comes near).
    #[arg(long, env = "HERALD_WINDOW", value_name = "SECONDS")]
    pub window: Option<u64>,

    /// Most deliveries the engine keeps in memory at once (its memory bound; the rest waits
    /// in the database).
    #[arg(long, env = "HERALD_MAX_IN_MEMORY", value_name = "N")]
    pub max_in_memory: Option<usize>,

    /// Seconds a node's claims hold without renewal (renewed every third of it). When a node
    /// dies, the others take over its work within about 1.5 times this. Only matters with
    /// several nodes on PostgreSQL: an SQLite database has one process, whose restart frees
    /// its work at once.
    #[arg(long, env = "HERALD_LEASE", value_name = "SECONDS")]
    pub lease: Option<u64>,

    /// Also run the payment sandbox: a local payment platform for testing a shop's notify
    /// handler end to end. Create payments with POST /v1/sandbox/payments (admin token) for
    /// an app of any profile; buyers pay or cancel on the checkout page /pay/{id} (public,
    /// with a QR code for phones); Herald then delivers the provider's signed notification to
    /// notify_url and redirects to return_url. Refunds, unpaid timeouts, a signed trade query
    /// and failure drills (duplicates, out of order, bad signature, tampered amount) are
    /// under /v1/sandbox. Not for production: anyone who can reach /pay can "pay".
    #[arg(long, env = "HERALD_SANDBOX", num_args = 0..=1, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new(), value_name = "BOOL")]
    pub sandbox: Option<bool>,

    /// How long an unpaid sandbox payment stays open before it closes by itself
    /// (TRADE_CLOSED, with the close notification where the provider sends one): a number
    /// with a unit, e.g. 90s, 15m, 2h.
    #[arg(long, env = "HERALD_SANDBOX_UNPAID_TIMEOUT", value_name = "DURATION")]
    pub sandbox_unpaid_timeout: Option<String>,

    /// The base URL buyers reach this server at, used in payment_url and the QR code, e.g.
    /// http://192.168.1.20:8080 or https://pay.example.test. [default: http://{--listen},
    /// with this machine's LAN address in place of 0.0.0.0 so a phone can scan it]
    #[arg(long, env = "HERALD_SANDBOX_PUBLIC_URL", value_name = "URL")]
    pub sandbox_public_url: Option<String>,

    /// Seconds a client may take to send a request's head, from its first byte.
    #[arg(long, env = "HERALD_HEADER_READ_TIMEOUT", value_name = "SECONDS")]
    pub header_read_timeout: Option<u64>,

    /// Seconds an API connection may wait for a request (a new or keep-alive connection)
    /// before it is closed.
    #[arg(long, env = "HERALD_IDLE_TIMEOUT", value_name = "SECONDS")]
    pub idle_timeout: Option<u64>,

    /// Seconds a client may take to send a request's body, from the end of its head.
    #[arg(long, env = "HERALD_BODY_READ_TIMEOUT", value_name = "SECONDS")]
    pub body_read_timeout: Option<u64>,

    /// API connections open at once; past it, the connection waiting longest for a
    /// request is closed to make room, and new ones wait in the listen backlog.
    /// [default: a quarter of the open-file limit, at most 1024]
    #[arg(long, env = "HERALD_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,

    /// Purge finished notifications (every delivery succeeded, failed or canceled) with
    /// their deliveries, payloads and attempts this long after they finished, in small
    /// background batches; `off` keeps everything. A purged notification answers 404.
    /// `herald purge` does it on demand.
    #[arg(long, env = "HERALD_RETENTION", value_name = "DURATION")]
    pub retention: Option<String>,

    /// Consecutive failed attempts that open an endpoint's circuit breaker (its deliveries
    /// then wait for a cool-down, and one probe tests it).
    #[arg(long, env = "HERALD_BREAKER_FAILURES", value_name = "N")]
    pub breaker_failures: Option<u32>,

    /// The breaker's first cool-down; each failed probe doubles it, up to
    /// --breaker-cooldown-max.
    #[arg(long, env = "HERALD_BREAKER_COOLDOWN", value_name = "DURATION")]
    pub breaker_cooldown: Option<String>,

    /// The longest cool-down.
    #[arg(long, env = "HERALD_BREAKER_COOLDOWN_MAX", value_name = "DURATION")]
    pub breaker_cooldown_max: Option<String>,

    /// An endpoint failing continuously (no success in between) for this long is disabled;
    /// a `410 Gone` answer disables it at once. Enabling it again (PATCH enabled=true)
    /// resumes its waiting deliveries.
    #[arg(long, env = "HERALD_DISABLE_AFTER", value_name = "DURATION")]
    pub disable_after: Option<String>,

    /// TOML file with any of the settings above, keyed by the flag's name with `_` for `-`
    /// (`db = "sqlite://herald.db"`, `request_timeout = 10`, `allow_targets = [...]`);
    /// flags and environment variables override it.
    #[arg(long, env = "HERALD_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
}

/// The defaults `serve --help` shows, by argument id, read from the components' own
/// defaults so the help cannot drift from what the server does.
pub fn serve_defaults() -> Vec<(&'static str, String)> {
    let engine = EngineConfig::default();
    let http = HttpLimits::default();
    let sandbox = SandboxOptions::default();
    let secs = |d: Duration| d.as_secs().to_string();
    vec![
        ("db", DEFAULT_DB.to_string()),
        ("listen", DEFAULT_LISTEN.to_string()),
        ("allow_private_targets", "false".to_string()),
        ("concurrency", engine.global_concurrency.to_string()),
        (
            "default_max_in_flight",
            engine.default_max_in_flight.to_string(),
        ),
        ("connect_timeout", secs(engine.connect_timeout)),
        ("request_timeout", secs(engine.request_timeout)),
        ("window", secs(engine.window)),
        ("max_in_memory", engine.max_in_memory.to_string()),
        ("lease", secs(engine.lease)),
        ("sandbox", "false".to_string()),
        (
            "sandbox_unpaid_timeout",
            format!("{}s", sandbox.unpaid_timeout.as_secs()),
        ),
        ("header_read_timeout", secs(http.header_read_timeout)),
        ("idle_timeout", secs(http.idle_timeout)),
        ("body_read_timeout", secs(http.body_read_timeout)),
        (
            "retention",
            format!("{}d", DEFAULT_RETENTION.as_secs() / 86_400),
        ),
        (
            "breaker_failures",
            engine.breaker.failure_threshold.to_string(),
        ),
        (
            "breaker_cooldown",
            format!("{}s", engine.breaker.cooldown.as_secs()),
        ),
        (
            "breaker_cooldown_max",
            format!("{}s", engine.breaker.cooldown_max.as_secs()),
        ),
        (
            "disable_after",
            format!("{}d", engine.breaker.disable_after.as_secs() / 86_400),
        ),
    ]
}

/// Appends `[default: ...]` from [`serve_defaults`] to the help of `serve`'s arguments.
pub fn with_default_help(mut cmd: clap::Command) -> clap::Command {
    for (id, default) in serve_defaults() {
        cmd = cmd.mut_arg(id, |a| {
            let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
            a.help(format!("{help} [default: {default}]"))
        });
    }
    cmd
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("invalid config file {0}: {1}")]
    Parse(PathBuf, String),
    #[error("invalid --db: {0}")]
    Db(String),
    #[error("invalid --listen {0:?}: expected HOST:PORT such as 127.0.0.1:8080")]
    Listen(String),
    #[error("invalid --allow-target {0:?}: expected a CIDR range such as 10.0.0.0/8")]
    Cidr(String),
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    #[error("{0} must be between {1} and {2}")]
    Range(&'static str, u64, u64),
    #[error("cannot merge the settings: {0}")]
    Merge(String),
    #[error("invalid --sandbox-unpaid-timeout {0:?}: expected a positive number with a unit, e.g. 90s, 15m, 2h")]
    Timeout(String),
    #[error("invalid --sandbox-public-url {0:?}: expected an http(s) URL such as http://192.168.1.20:8080")]
    PublicUrl(String),
    #[error(
        "the admin token is empty ({0}); give a non-empty token, or none to use the stored one"
    )]
    EmptyToken(&'static str),
    #[error("give either --admin-token or --admin-token-file, not both")]
    TwoTokens,
    #[error("cannot read --admin-token-file {0}: {1}")]
    TokenFile(PathBuf, std::io::Error),
    #[error("{0} must be between 1 and {MAX_CONNECTION_TIMEOUT} seconds")]
    ConnectionTimeout(&'static str),
    #[error("give either HERALD_SECRET_KEY (--secret-key) or --secret-key-file, not both")]
    TwoSecretKeys,
    #[error("cannot read --secret-key-file {0}: {1}")]
    SecretKeyFile(PathBuf, std::io::Error),
    #[error("invalid {0}: {1}")]
    SecretKey(String, herald_store::sealing::KeyError),
    #[error("invalid --{0} {1:?}: expected a positive number with a unit, e.g. 90s, 15m, 2h, 30d")]
    Duration(&'static str, String),
    #[error("--breaker-cooldown-max must not be shorter than --breaker-cooldown")]
    CooldownMax,
}

/// `90s`, `15m`, `2h`, `30d` (or bare seconds) to a non-zero duration of at most ten years
/// (retention and breaker settings).
pub fn parse_long_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86_400)?,
        _ => return None,
    };
    (1..=3650 * 86_400)
        .contains(&secs)
        .then(|| Duration::from_secs(secs))
}

fn duration_setting(name: &'static str, v: &str) -> Result<Duration, ConfigError> {
    parse_long_duration(v).ok_or_else(|| ConfigError::Duration(name, v.to_string()))
}

/// The default retention of finished notifications.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 86_400);

/// The key credentials are sealed with at rest (see `herald_store::sealing`), for `serve`
/// and `rekey`.
#[derive(Args, Debug, Clone, Default)]
pub struct SecretKeyArgs {
    /// Seal apps' credentials (signing secrets, private keys, API keys) and sources' keys in
    /// the database with these keys: base64 of 32 bytes each (head -c 32 /dev/urandom | base64), several
    /// comma-separated; the first seals, all open (rotation: put the new key first, run
    /// `herald rekey`, then drop the old). Prefer the environment or --secret-key-file:
    /// arguments are visible in `ps`.
    #[arg(
        long = "secret-key",
        env = "HERALD_SECRET_KEY",
        value_name = "KEYS",
        hide_env_values = true,
        conflicts_with = "secret_key_file"
    )]
    pub secret_key: Option<String>,

    /// Read the sealing keys from this file: one per line (or comma-separated), the first
    /// seals, all open; blank lines and lines starting with # are skipped. Keep it readable
    /// by Herald's user only.
    #[arg(long, env = "HERALD_SECRET_KEY_FILE", value_name = "FILE")]
    pub secret_key_file: Option<PathBuf>,
}

impl SecretKeyArgs {
    /// The keyring these arguments configure; [`Sealer::none`] when they give none.
    pub fn sealer(&self) -> Result<Sealer, ConfigError> {
        // clap treats an empty environment variable as unset: an empty HERALD_SECRET_KEY
        // must not silently leave credentials in plaintext.
        let empty_env = std::env::var_os("HERALD_SECRET_KEY").is_some_and(|v| v.is_empty());
        match (&self.secret_key, &self.secret_key_file) {
            (Some(_), Some(_)) => Err(ConfigError::TwoSecretKeys),
            (Some(keys), None) => Sealer::parse(keys)
                .map_err(|e| ConfigError::SecretKey("HERALD_SECRET_KEY (--secret-key)".into(), e)),
            (None, Some(path)) => read_key_file(path),
            (None, None) if empty_env => Err(ConfigError::SecretKey(
                "HERALD_SECRET_KEY".into(),
                herald_store::sealing::KeyError::Empty,
            )),
            (None, None) => Ok(Sealer::none()),
        }
    }
}

/// Reads a key file (warning when others may read it).
fn read_key_file(path: &std::path::Path) -> Result<Sealer, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::SecretKeyFile(path.to_path_buf(), e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(m) = std::fs::metadata(path) {
            if m.permissions().mode() & 0o077 != 0 {
                tracing::warn!(file = %path.display(), "the secret key file is readable by others than its owner; chmod 600 it");
            }
        }
    }
    Sealer::parse(&text)
        .map_err(|e| ConfigError::SecretKey(format!("--secret-key-file {}", path.display()), e))
}

/// The longest header-read, idle or connect timeout accepted: these are seconds, not
/// minutes.
pub const MAX_CONNECTION_TIMEOUT: u64 = 300;

/// The longest claim window accepted, seconds (an hour: work further ahead stays in the
/// database, where it costs no memory).
pub const MAX_WINDOW: u64 = 3600;

/// The smallest in-memory bound accepted: below it the engine would claim in slivers.
pub const MIN_IN_MEMORY: usize = 100;

/// Reads an admin token file: the token is its content without surrounding whitespace.
fn read_token_file(path: &std::path::Path) -> Result<String, ConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| ConfigError::TokenFile(path.to_path_buf(), e))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(ConfigError::EmptyToken("--admin-token-file"));
    }
    Ok(token.to_string())
}

fn connection_timeout(name: &'static str, secs: u64) -> Result<Duration, ConfigError> {
    if !(1..=MAX_CONNECTION_TIMEOUT).contains(&secs) {
        return Err(ConfigError::ConnectionTimeout(name));
    }
    Ok(Duration::from_secs(secs))
}

/// `90s`, `15m`, `2h`, `1d` (or bare seconds) to a non-zero duration of at most 30 days.
fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86_400)?,
        _ => return None,
    };
    (1..=30 * 86_400)
        .contains(&secs)
        .then(|| Duration::from_secs(secs))
}

impl ServeArgs {
    /// This layer over `below`: every setting this layer leaves unset (`None`, or an empty
    /// list) is taken from `below`. Generic over the fields (through their serde form), so a
    /// new setting needs no merge code.
    pub fn layered(self, below: ServeArgs) -> Result<ServeArgs, ConfigError> {
        let config = self.config.clone();
        let to_map = |a: &ServeArgs| match serde_json::to_value(a) {
            Ok(serde_json::Value::Object(m)) => Ok(m),
            other => Err(ConfigError::Merge(format!("{other:?}"))),
        };
        let mut merged = to_map(&below)?;
        for (key, value) in to_map(&self)? {
            let unset = value.is_null() || value.as_array().is_some_and(Vec::is_empty);
            if !unset {
                merged.insert(key, value);
            }
        }
        let mut out: ServeArgs = serde_json::from_value(serde_json::Value::Object(merged))
            .map_err(|e| ConfigError::Merge(e.to_string()))?;
        out.config = config;
        Ok(out)
    }

    /// Merges flags/env with the file and defaults into validated server options.
    pub fn resolve(self) -> Result<ServerOptions, ConfigError> {
        let file = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| ConfigError::Read(path.clone(), e))?;
                toml::from_str::<ServeArgs>(&text)
                    .map_err(|e| ConfigError::Parse(path.clone(), e.to_string()))?
            }
            None => ServeArgs::default(),
        };
        // clap treats an empty environment variable as unset: an empty HERALD_ADMIN_TOKEN
        // must not silently fall back to the stored (or the file's) token.
        if self.admin_token.is_none()
            && self.admin_token_file.is_none()
            && std::env::var_os("HERALD_ADMIN_TOKEN").is_some_and(|v| v.is_empty())
        {
            return Err(ConfigError::EmptyToken("HERALD_ADMIN_TOKEN"));
        }
        let mut file = file;
        // A secret given by a flag or the environment replaces the file's, in either of its
        // two forms (a value or a file); two forms in one layer are refused below.
        if self.admin_token.is_some() || self.admin_token_file.is_some() {
            (file.admin_token, file.admin_token_file) = (None, None);
        }
        if self.secret_key.is_some() || self.secret_key_file.is_some() {
            (file.secret_key, file.secret_key_file) = (None, None);
        }
        self.layered(file)?.resolve_layered()
    }

    fn resolve_layered(self) -> Result<ServerOptions, ConfigError> {
        let db = self.db.unwrap_or_else(|| DEFAULT_DB.to_string());
        let database: Database = db.parse().map_err(ConfigError::Db)?;
        let listen = self.listen.unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        let listen: SocketAddr = listen
            .parse()
            .map_err(|_| ConfigError::Listen(listen.clone()))?;
        let allow = self
            .allow_targets
            .iter()
            .map(|c| {
                c.trim()
                    .parse::<IpNet>()
                    .map_err(|_| ConfigError::Cidr(c.clone()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut engine = EngineConfig {
            target_policy: Arc::new(TargetPolicy {
                allow_private: self.allow_private_targets.unwrap_or(false),
                allow,
            }),
            ..EngineConfig::default()
        };
        if let Some(n) = self.concurrency {
            if n == 0 {
                return Err(ConfigError::Zero("concurrency"));
            }
            engine.global_concurrency = n;
            // An app's share follows: half the slots, so another tenant always finds room.
            engine.app_max_in_flight = (n / 2).max(1);
        }
        if let Some(n) = self.app_max_in_flight {
            if n == 0 {
                return Err(ConfigError::Zero("app_max_in_flight"));
            }
            engine.app_max_in_flight = n;
        }
        if let Some(n) = self.default_max_in_flight {
            if !(1..=crate::api::MAX_IN_FLIGHT_LIMIT).contains(&n) {
                return Err(ConfigError::Range(
                    "default_max_in_flight",
                    1,
                    u64::from(crate::api::MAX_IN_FLIGHT_LIMIT),
                ));
            }
            engine.default_max_in_flight = n;
        }
        if let Some(s) = self.connect_timeout {
            if !(1..=MAX_CONNECTION_TIMEOUT).contains(&s) {
                return Err(ConfigError::Range(
                    "connect_timeout",
                    1,
                    MAX_CONNECTION_TIMEOUT,
                ));
            }
            engine.connect_timeout = Duration::from_secs(s);
        }
        if let Some(s) = self.window {
            if !(1..=MAX_WINDOW).contains(&s) {
                return Err(ConfigError::Range("window", 1, MAX_WINDOW));
            }
            engine.window = Duration::from_secs(s);
        }
        if let Some(n) = self.max_in_memory {
            if n < MIN_IN_MEMORY {
                return Err(ConfigError::Range(
                    "max_in_memory",
                    MIN_IN_MEMORY as u64,
                    u64::MAX,
                ));
            }
            engine.max_in_memory = n;
            // A claim never takes more than fits.
            engine.claim_batch = engine.claim_batch.min(n);
        }
        if let Some(s) = self.request_timeout {
            if s == 0 {
                return Err(ConfigError::Zero("request_timeout"));
            }
            engine.request_timeout = Duration::from_secs(s);
        }
        if let Some(s) = self.lease {
            if s == 0 {
                return Err(ConfigError::Zero("lease"));
            }
            engine.lease = Duration::from_secs(s);
        }
        let sandbox = if self.sandbox.unwrap_or(false) {
            let mut opts = SandboxOptions::default();
            if let Some(t) = self.sandbox_unpaid_timeout {
                opts.unpaid_timeout = parse_duration(&t).ok_or(ConfigError::Timeout(t))?;
            }
            if let Some(u) = self.sandbox_public_url {
                match url::Url::parse(&u) {
                    Ok(parsed)
                        if matches!(parsed.scheme(), "http" | "https")
                            && parsed.host().is_some() => {}
                    _ => return Err(ConfigError::PublicUrl(u)),
                }
                opts.public_url = Some(u);
            }
            Some(opts)
        } else {
            None
        };
        let mut http = HttpLimits::default();
        if let Some(s) = self.header_read_timeout {
            http.header_read_timeout = connection_timeout("header_read_timeout", s)?;
        }
        if let Some(s) = self.idle_timeout {
            http.idle_timeout = connection_timeout("idle_timeout", s)?;
        }
        if let Some(s) = self.body_read_timeout {
            http.body_read_timeout = connection_timeout("body_read_timeout", s)?;
        }
        if let Some(n) = self.max_connections {
            if n == 0 {
                return Err(ConfigError::Zero("max_connections"));
            }
            http.max_connections = Some(n);
        }
        let admin_token = match (self.admin_token, self.admin_token_file) {
            (Some(_), Some(_)) => return Err(ConfigError::TwoTokens),
            (Some(t), None) => Some(t),
            (None, Some(path)) => Some(read_token_file(&path)?),
            (None, None) => None,
        };
        if admin_token.as_deref().is_some_and(|t| t.trim().is_empty()) {
            return Err(ConfigError::EmptyToken("--admin-token"));
        }
        let sealer = SecretKeyArgs {
            secret_key: self.secret_key,
            secret_key_file: self.secret_key_file,
        }
        .sealer()?;
        let retention = match self.retention {
            None => Some(DEFAULT_RETENTION),
            Some(v) if v.trim() == "off" => None,
            Some(v) => Some(duration_setting("retention", &v)?),
        };
        if let Some(n) = self.breaker_failures {
            if n == 0 {
                return Err(ConfigError::Zero("breaker_failures"));
            }
            engine.breaker.failure_threshold = n;
        }
        if let Some(v) = self.breaker_cooldown {
            engine.breaker.cooldown = duration_setting("breaker-cooldown", &v)?;
        }
        if let Some(v) = self.breaker_cooldown_max {
            engine.breaker.cooldown_max = duration_setting("breaker-cooldown-max", &v)?;
        }
        if engine.breaker.cooldown_max < engine.breaker.cooldown {
            return Err(ConfigError::CooldownMax);
        }
        if let Some(v) = self.disable_after {
            engine.breaker.disable_after = duration_setting("disable-after", &v)?;
        }
        Ok(ServerOptions {
            database,
            listen,
            admin_token,
            engine,
            durability: Durability::Full,
            sandbox,
            http,
            sealer,
            retention,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let o = ServeArgs::default().resolve().unwrap();
        assert_eq!(o.database, Database::Sqlite("herald.db".into()));
        assert_eq!(o.listen, DEFAULT_LISTEN.parse().unwrap());
        assert!(!o.engine.target_policy.allow_private);
        assert_eq!(o.admin_token, None);
        assert_eq!(o.retention, Some(DEFAULT_RETENTION));
        assert_eq!(o.engine.breaker, herald_store::BreakerPolicy::default());
    }

    #[test]
    fn retention_and_breaker_settings_parse_with_clear_errors() {
        let o = ServeArgs {
            retention: Some("90d".into()),
            breaker_failures: Some(5),
            breaker_cooldown: Some("30s".into()),
            breaker_cooldown_max: Some("2h".into()),
            disable_after: Some("1d".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(o.retention, Some(Duration::from_secs(90 * 86_400)));
        assert_eq!(o.engine.breaker.failure_threshold, 5);
        assert_eq!(o.engine.breaker.cooldown, Duration::from_secs(30));
        assert_eq!(o.engine.breaker.cooldown_max, Duration::from_secs(7_200));
        assert_eq!(o.engine.breaker.disable_after, Duration::from_secs(86_400));
        let off = ServeArgs {
            retention: Some("off".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(off.retention, None);
        let bad = ServeArgs {
            retention: Some("30 days".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(bad.to_string().contains("--retention"), "{bad}");
        let bad = ServeArgs {
            breaker_cooldown: Some("10m".into()),
            breaker_cooldown_max: Some("1m".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(matches!(bad, ConfigError::CooldownMax), "{bad}");
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("herald.toml");
        std::fs::write(
            &path,
            "db = \"sqlite://file.db\"\nlisten = \"127.0.0.1:9999\"\nallow_private_targets = true\nallow_targets = [\"10.0.0.0/8\"]\nconcurrency = 7\n",
        )
        .unwrap();
        let o = ServeArgs {
            config: Some(path.clone()),
            listen: Some("127.0.0.1:1234".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(o.database, Database::Sqlite("file.db".into()));
        assert_eq!(o.listen, "127.0.0.1:1234".parse().unwrap());
        assert!(o.engine.target_policy.allow_private);
        assert_eq!(o.engine.target_policy.allow.len(), 1);
        assert_eq!(o.engine.global_concurrency, 7);
    }

    #[test]
    fn bad_settings_are_refused_with_the_setting_named() {
        let e = ServeArgs {
            listen: Some("nope".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(e.to_string().contains("--listen"), "{e}");
        let e = ServeArgs {
            allow_targets: vec!["10.0.0.0/99".into()],
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(e.to_string().contains("--allow-target"), "{e}");
        let e = ServeArgs {
            concurrency: Some(0),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(e.to_string().contains("concurrency"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "unknown_key = 1\n").unwrap();
        let e = ServeArgs {
            config: Some(path),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(e.to_string().contains("unknown"), "{e}");
    }

    #[test]
    fn admin_token_rules_empty_refused_file_read_and_trimmed() {
        for t in ["", "  ", "\n"] {
            let e = ServeArgs {
                admin_token: Some(t.into()),
                ..Default::default()
            }
            .resolve()
            .unwrap_err();
            assert!(e.to_string().contains("empty"), "{e}");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "  s3cret-token\n").unwrap();
        let o = ServeArgs {
            admin_token_file: Some(path.clone()),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(o.admin_token.as_deref(), Some("s3cret-token"));
        std::fs::write(&path, "\n").unwrap();
        let e = ServeArgs {
            admin_token_file: Some(path.clone()),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
        let e = ServeArgs {
            admin_token_file: Some(dir.path().join("missing")),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(e.to_string().contains("--admin-token-file"), "{e}");
    }

    #[test]
    fn connection_limits_default_and_are_checked() {
        let o = ServeArgs::default().resolve().unwrap();
        assert_eq!(o.http, HttpLimits::default());
        let o = ServeArgs {
            header_read_timeout: Some(3),
            idle_timeout: Some(7),
            max_connections: Some(100),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(o.http.header_read_timeout, Duration::from_secs(3));
        assert_eq!(o.http.idle_timeout, Duration::from_secs(7));
        assert_eq!(o.http.max_connections, Some(100));
        for (h, i, m) in [
            (Some(0), None, None),
            (None, Some(301), None),
            (None, None, Some(0)),
        ] {
            assert!(ServeArgs {
                header_read_timeout: h,
                idle_timeout: i,
                max_connections: m,
                ..Default::default()
            }
            .resolve()
            .is_err());
        }
    }

    #[test]
    fn sandbox_is_off_by_default_and_its_settings_are_checked() {
        assert!(ServeArgs::default().resolve().unwrap().sandbox.is_none());
        let o = ServeArgs {
            sandbox: Some(true),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        let s = o.sandbox.expect("sandbox on");
        assert_eq!(s.unpaid_timeout, Duration::from_secs(15 * 60));
        assert_eq!(s.public_url, None);
        let o = ServeArgs {
            sandbox: Some(true),
            sandbox_unpaid_timeout: Some("90s".into()),
            sandbox_public_url: Some("http://192.168.1.20:8080".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        let s = o.sandbox.unwrap();
        assert_eq!(s.unpaid_timeout, Duration::from_secs(90));
        assert_eq!(s.public_url.as_deref(), Some("http://192.168.1.20:8080"));
        for bad in ["0s", "15", "15 m", "-1m", "1y", "31d"] {
            let e = ServeArgs {
                sandbox: Some(true),
                sandbox_unpaid_timeout: Some(bad.into()),
                ..Default::default()
            }
            .resolve();
            if bad == "15" {
                assert!(e.is_ok(), "bare seconds are accepted");
                continue;
            }
            let e = e.unwrap_err();
            assert!(
                e.to_string().contains("--sandbox-unpaid-timeout"),
                "{bad}: {e}"
            );
        }
        let e = ServeArgs {
            sandbox: Some(true),
            sandbox_public_url: Some("ftp://x".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(e.to_string().contains("--sandbox-public-url"), "{e}");
    }

    #[test]
    fn secret_keys_come_from_the_environment_flag_or_a_file_never_echoed() {
        use base64::Engine as _;
        let b64 = |b: u8| base64::engine::general_purpose::STANDARD.encode([b; 32]);
        assert!(!ServeArgs::default().resolve().unwrap().sealer.is_enabled());
        let with = |key: Option<String>, file: Option<PathBuf>| ServeArgs {
            secret_key: key,
            secret_key_file: file,
            ..Default::default()
        };
        let o = with(Some(format!("{},{}", b64(2), b64(1))), None)
            .resolve()
            .unwrap();
        assert_eq!(o.sealer.key_ids().count(), 2);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("herald.key");
        std::fs::write(&path, format!("# newest first\n{}\n{}\n", b64(2), b64(1))).unwrap();
        let from_file = with(None, Some(path.clone())).resolve().unwrap().sealer;
        assert_eq!(from_file.current_key_id(), o.sealer.current_key_id());
        // The config file's secret_key_file applies when no flag gives keys.
        let toml = dir.path().join("herald.toml");
        std::fs::write(
            &toml,
            format!("secret_key_file = {:?}\n", path.display().to_string()),
        )
        .unwrap();
        let o = ServeArgs {
            config: Some(toml),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(o.sealer.current_key_id(), from_file.current_key_id());

        let both = with(Some(b64(1)), Some(path.clone()))
            .resolve()
            .unwrap_err();
        assert!(matches!(both, ConfigError::TwoSecretKeys), "{both}");
        let short = base64::engine::general_purpose::STANDARD.encode([9u8; 16]);
        let e = with(Some(format!("{},{short}", b64(1))), None)
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(e.contains("secret key 2") && !e.contains(&short), "{e}");
        std::fs::write(&path, "\n").unwrap();
        let e = with(None, Some(path)).resolve().unwrap_err().to_string();
        assert!(
            e.contains("--secret-key-file") && e.contains("empty"),
            "{e}"
        );
        let e = with(None, Some(dir.path().join("missing")))
            .resolve()
            .unwrap_err();
        assert!(matches!(e, ConfigError::SecretKeyFile(..)), "{e}");
    }

    #[test]
    fn engine_settings_are_exposed_validated_and_layered_over_the_file() {
        let o = ServeArgs::default().resolve().unwrap();
        let engine = EngineConfig::default();
        assert_eq!(o.engine.window, engine.window);
        assert_eq!(o.engine.max_in_memory, engine.max_in_memory);
        assert_eq!(o.engine.default_max_in_flight, engine.default_max_in_flight);
        assert_eq!(o.engine.connect_timeout, engine.connect_timeout);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("herald.toml");
        std::fs::write(
            &path,
            "window = 30\nmax_in_memory = 5000\ndefault_max_in_flight = 4\nconnect_timeout = 2\napp_max_in_flight = 9\n",
        )
        .unwrap();
        let o = ServeArgs {
            config: Some(path),
            window: Some(10),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(o.engine.window, Duration::from_secs(10), "the flag wins");
        assert_eq!(o.engine.max_in_memory, 5000);
        assert!(o.engine.claim_batch <= 5000);
        assert_eq!(o.engine.default_max_in_flight, 4);
        assert_eq!(o.engine.connect_timeout, Duration::from_secs(2));
        assert_eq!(o.engine.app_max_in_flight, 9);
        for (args, named) in [
            (
                ServeArgs {
                    window: Some(0),
                    ..Default::default()
                },
                "window",
            ),
            (
                ServeArgs {
                    window: Some(MAX_WINDOW + 1),
                    ..Default::default()
                },
                "window",
            ),
            (
                ServeArgs {
                    max_in_memory: Some(10),
                    ..Default::default()
                },
                "max_in_memory",
            ),
            (
                ServeArgs {
                    default_max_in_flight: Some(0),
                    ..Default::default()
                },
                "default_max_in_flight",
            ),
            (
                ServeArgs {
                    default_max_in_flight: Some(257),
                    ..Default::default()
                },
                "default_max_in_flight",
            ),
            (
                ServeArgs {
                    connect_timeout: Some(0),
                    ..Default::default()
                },
                "connect_timeout",
            ),
            (
                ServeArgs {
                    app_max_in_flight: Some(0),
                    ..Default::default()
                },
                "app_max_in_flight",
            ),
        ] {
            let e = args.resolve().unwrap_err().to_string();
            assert!(e.contains(named), "{named}: {e}");
        }
    }

    #[test]
    fn every_setting_is_a_file_key_and_a_flag_from_one_declaration() {
        use clap::CommandFactory as _;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            serve: ServeArgs,
        }
        let cmd = Cli::command();
        // Every field but --config is a key the file accepts (its serde name is the arg id).
        let keys = match serde_json::to_value(ServeArgs::default()).unwrap() {
            serde_json::Value::Object(m) => m,
            _ => unreachable!(),
        };
        let ids: Vec<String> = cmd
            .get_arguments()
            .map(|a| a.get_id().to_string())
            .filter(|id| id != "config" && id != "help")
            .collect();
        assert_eq!(keys.len(), ids.len(), "{ids:?}");
        for id in &ids {
            assert!(keys.contains_key(id), "{id} is not a file key");
        }
    }

    #[test]
    fn serve_help_shows_the_components_own_defaults() {
        use clap::CommandFactory as _;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            serve: ServeArgs,
        }
        let mut cmd = with_default_help(Cli::command());
        let help = cmd.render_long_help().to_string();
        let engine = EngineConfig::default();
        for expected in [
            format!("[default: {}]", engine.global_concurrency),
            format!("[default: {}]", engine.max_in_memory),
            format!("[default: {}]", engine.request_timeout.as_secs()),
            format!("[default: {}]", DEFAULT_DB),
        ] {
            assert!(help.contains(&expected), "{expected} missing from:\n{help}");
        }
    }
}
