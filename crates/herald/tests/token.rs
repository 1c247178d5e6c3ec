//! The admin token's first start and `herald token reset`: a start that fails (port in use)
//! stores no token, so the next start makes and prints one that works; a reset prints a new
//! token that replaces the old one, on SQLite and on PostgreSQL.
mod common;

use std::path::Path;

use herald_server::server::{self, Database, Running, ServerOptions};
use herald_store_sqlite::Durability;

const BIN: &str = env!("CARGO_BIN_EXE_herald");

fn options(database: Database, listen: &str) -> ServerOptions {
    ServerOptions {
        database,
        listen: listen.parse().unwrap(),
        admin_token: None,
        engine: common::engine_config(true),
        durability: Durability::Normal,
        sandbox: None,
        http: Default::default(),
        sealer: Default::default(),
        retention: None,
    }
}

async fn start(database: &Database) -> Running {
    server::start(
        options(database.clone(), "127.0.0.1:0"),
        std::future::pending(),
    )
    .await
    .expect("server starts")
}

/// The status of `GET /v1/apps` with `token`.
async fn status_with(running: &Running, token: &str) -> u16 {
    reqwest::Client::new()
        .get(format!("http://{}/v1/apps", running.addr))
        .bearer_auth(token)
        .send()
        .await
        .expect("request")
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_start_on_a_port_in_use_stores_no_token_and_the_next_start_prints_one_that_works() {
    let dir = tempfile::tempdir().unwrap();
    let database = Database::Sqlite(dir.path().join("herald.db"));
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let err = server::start(options(database.clone(), &addr), std::future::pending())
        .await
        .err()
        .expect("the port is in use");
    assert!(matches!(err, server::ServerError::Bind(..)), "{err}");
    drop(busy);

    let running = start(&database).await;
    let token = running
        .generated_token
        .clone()
        .expect("no token was stored by the failed start, so this one makes it");
    assert_eq!(status_with(&running, &token).await, 200);
    assert_eq!(status_with(&running, "hrd_wrong").await, 401);
    running.shutdown().await;

    // Stored: the next start uses it and prints nothing.
    let running = start(&database).await;
    assert!(running.generated_token.is_none());
    assert_eq!(status_with(&running, &token).await, 200);
    running.shutdown().await;
}

/// Runs `herald token reset --db URL` and returns the token it printed.
fn reset(db_url: &str) -> String {
    let out = std::process::Command::new(BIN)
        .args(["token", "reset", "--db", db_url])
        .env("RUST_LOG", "warn")
        .output()
        .expect("run herald");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with("New admin token"))
        .unwrap_or_else(|| panic!("no token printed: {stdout}"));
    let token = line.rsplit(' ').next().unwrap().to_string();
    assert!(token.starts_with("hrd_") && token.len() > 40, "{token}");
    token
}

async fn reset_replaces_the_token(database: Database, url: &str) {
    let running = start(&database).await;
    let old = running.generated_token.clone().expect("first start");
    running.shutdown().await;

    let new = tokio::task::spawn_blocking({
        let url = url.to_string();
        move || reset(&url)
    })
    .await
    .unwrap();
    assert_ne!(new, old);

    let running = start(&database).await;
    assert!(
        running.generated_token.is_none(),
        "the reset token is stored"
    );
    assert_eq!(status_with(&running, &new).await, 200);
    assert_eq!(
        status_with(&running, &old).await,
        401,
        "the old token is replaced"
    );
    running.shutdown().await;
}

#[tokio::test]
async fn token_reset_prints_a_new_token_that_replaces_the_old_one_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.db");
    let url = format!("sqlite://{}", path.display());
    reset_replaces_the_token(Database::Sqlite(path), &url).await;
}

#[tokio::test]
async fn token_reset_prints_a_new_token_that_replaces_the_old_one_on_postgres() {
    let url = herald_pgtest::database();
    reset_replaces_the_token(Database::Postgres(url.clone()), &url).await;
}

#[test]
fn token_reset_refuses_a_missing_sqlite_file_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path: &Path = &dir.path().join("missing.db");
    let out = std::process::Command::new(BIN)
        .args([
            "token",
            "reset",
            "--db",
            &format!("sqlite://{}", path.display()),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
    assert!(!path.exists());
}
