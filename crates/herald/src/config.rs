//! `herald serve` configuration in three layers, highest first: command-line flags,
//! `HERALD_*` environment variables (clap reads both), then a TOML file (`--config`), then
//! defaults. Every setting is validated here, so the server starts only with a sane one.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use herald_engine::{EngineConfig, TargetPolicy};
use herald_store::sqlite::Durability;
use ipnet::IpNet;
use serde::Deserialize;

use crate::server::{Database, ServerOptions};

pub const DEFAULT_DB: &str = "sqlite://herald.db";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

#[derive(Args, Debug, Clone, Default)]
pub struct ServeArgs {
    /// Database URL: sqlite://PATH (created if missing). [default: sqlite://herald.db]
    #[arg(long, env = "HERALD_DB", value_name = "URL")]
    pub db: Option<String>,

    /// Address for the HTTP API. [default: 127.0.0.1:8080]
    #[arg(long, env = "HERALD_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,

    /// Admin token every /v1 request must present as `Authorization: Bearer <token>`.
    /// Without it, the token generated (and printed once) at first start is used.
    #[arg(
        long,
        env = "HERALD_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,

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

    /// Attempts in flight across all endpoints. [default: 2048]
    #[arg(long, env = "HERALD_CONCURRENCY", value_name = "N")]
    pub concurrency: Option<usize>,

    /// Seconds an attempt may take in all, response included. [default: 15]
    #[arg(long, env = "HERALD_REQUEST_TIMEOUT", value_name = "SECONDS")]
    pub request_timeout: Option<u64>,

    /// TOML file with any of the settings above (keys: db, listen, admin_token,
    /// allow_private_targets, allow_targets, concurrency, request_timeout).
    #[arg(long, env = "HERALD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// The TOML file's shape.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub db: Option<String>,
    pub listen: Option<String>,
    pub admin_token: Option<String>,
    pub allow_private_targets: Option<bool>,
    #[serde(default)]
    pub allow_targets: Vec<String>,
    pub concurrency: Option<usize>,
    pub request_timeout: Option<u64>,
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
}

impl ServeArgs {
    /// Merges flags/env with the file and defaults into validated server options.
    pub fn resolve(self) -> Result<ServerOptions, ConfigError> {
        let file = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| ConfigError::Read(path.clone(), e))?;
                toml::from_str::<FileConfig>(&text)
                    .map_err(|e| ConfigError::Parse(path.clone(), e.to_string()))?
            }
            None => FileConfig::default(),
        };
        let db = self
            .db
            .or(file.db)
            .unwrap_or_else(|| DEFAULT_DB.to_string());
        let database: Database = db.parse().map_err(ConfigError::Db)?;
        let listen = self
            .listen
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        let listen: SocketAddr = listen
            .parse()
            .map_err(|_| ConfigError::Listen(listen.clone()))?;
        let allow_targets = if self.allow_targets.is_empty() {
            file.allow_targets
        } else {
            self.allow_targets
        };
        let allow = allow_targets
            .iter()
            .map(|c| {
                c.trim()
                    .parse::<IpNet>()
                    .map_err(|_| ConfigError::Cidr(c.clone()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut engine = EngineConfig {
            target_policy: Arc::new(TargetPolicy {
                allow_private: self
                    .allow_private_targets
                    .or(file.allow_private_targets)
                    .unwrap_or(false),
                allow,
            }),
            ..EngineConfig::default()
        };
        if let Some(n) = self.concurrency.or(file.concurrency) {
            if n == 0 {
                return Err(ConfigError::Zero("concurrency"));
            }
            engine.global_concurrency = n;
        }
        if let Some(s) = self.request_timeout.or(file.request_timeout) {
            if s == 0 {
                return Err(ConfigError::Zero("request_timeout"));
            }
            engine.request_timeout = Duration::from_secs(s);
        }
        Ok(ServerOptions {
            database,
            listen,
            admin_token: self.admin_token.or(file.admin_token),
            engine,
            durability: Durability::Full,
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
}
