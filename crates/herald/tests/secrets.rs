//! Secrets at rest end to end: the real server on an SQLite file with a secret key, the
//! file's bytes, a receiver that verifies signatures, a restart without the key, and key
//! rotation with the real `herald rekey`.
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use common::{Receiver, TestServer, SECRET};
use herald_protocols::standard_webhooks::{self as sw, VerifyKey};
use herald_store::Sealer;
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_herald");

fn key(byte: u8) -> String {
    base64::engine::general_purpose::STANDARD.encode([byte; 32])
}

/// The keyring of these keys (none: no sealing).
fn sealer(keys: &[String]) -> Sealer {
    if keys.is_empty() {
        return Sealer::none();
    }
    Sealer::parse(&keys.join(",")).expect("keyring")
}

/// The part of the test secret that any plaintext copy of it would contain.
fn secret_core() -> &'static str {
    SECRET.trim_start_matches("whsec_")
}

fn verify(r: &common::Received) -> Result<(), sw::VerifyError> {
    let now = herald_engine::now_ms().to_seconds().get();
    sw::verify(
        &r.header("webhook-id"),
        &r.header("webhook-timestamp"),
        &r.header("webhook-signature"),
        &r.body,
        &[VerifyKey::parse(SECRET).unwrap()],
        now,
    )
}

/// Every byte Herald keeps of an SQLite database: the file, its WAL and shared memory.
fn database_bytes(db: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for suffix in ["", "-wal", "-shm"] {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        if let Ok(bytes) = std::fs::read(PathBuf::from(name)) {
            all.extend(bytes);
        }
    }
    all
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

fn raw_credentials(db: &Path, app: &str) -> String {
    let conn = rusqlite::Connection::open(db).expect("open the file");
    conn.query_row("SELECT credentials FROM apps WHERE id = ?1", [app], |r| {
        r.get(0)
    })
    .expect("the app's row")
}

async fn start(db: &Path, keys: &[String]) -> TestServer {
    match TestServer::try_start_sealed(db.to_path_buf(), sealer(keys)).await {
        Ok(s) => s,
        Err(e) => panic!("server starts: {e}"),
    }
}

/// Delivers one notification of `app` to a fresh receiver and checks its signature.
async fn delivered_and_verified(server: &TestServer, app: &str) {
    let rx = Receiver::start(Receiver::ok()).await;
    let v = server
        .notify(
            app,
            json!({"event_type": "trade.success", "payload": {"n": 1}, "notify_url": rx.url("/hook")}),
        )
        .await;
    server
        .wait_status(v["id"].as_str().unwrap(), "succeeded")
        .await;
    let got = rx.received();
    assert_eq!(got.len(), 1);
    verify(&got[0]).expect("the receiver verifies the signature with the app's secret");
}

#[tokio::test]
async fn credentials_are_sealed_in_the_file_and_deliveries_still_verify() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("herald.db");
    let k1 = key(1);
    let server = start(&db, std::slice::from_ref(&k1)).await;
    let app = server.app(json!({})).await;
    delivered_and_verified(&server, &app).await;
    server.stop().await;

    let bytes = database_bytes(&db);
    assert!(!bytes.is_empty());
    assert!(
        !contains(&bytes, secret_core()),
        "the app's secret is in the database file"
    );
    let raw = raw_credentials(&db, &app);
    let key_id = sealer(&[k1]).current_key_id().unwrap().to_string();
    assert!(raw.starts_with(&format!("enc:v1:{key_id}:")), "{raw}");
}

#[tokio::test]
async fn a_sealed_database_started_without_its_key_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("herald.db");
    let k1 = key(1);
    let server = start(&db, std::slice::from_ref(&k1)).await;
    let app = server.app(json!({})).await;
    server.stop().await;
    let key_id = sealer(&[k1]).current_key_id().unwrap().to_string();

    // In process: the start fails, naming the app and the key, never the secret.
    for keys in [vec![], vec![key(2)]] {
        let err = match TestServer::try_start_sealed(db.clone(), sealer(&keys)).await {
            Ok(_) => panic!("a server started without the key its credentials need"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains(&app) && err.contains(&key_id) && err.contains("HERALD_SECRET_KEY"),
            "{err}"
        );
        assert!(!err.contains(secret_core()), "{err}");
    }

    // The real binary: exits at once with the same explanation.
    let out = Command::new(BIN)
        .args([
            "serve",
            "--db",
            &format!("sqlite://{}", db.display()),
            "--listen",
            "127.0.0.1:0",
            "--admin-token",
            common::TOKEN,
        ])
        .env_remove("HERALD_SECRET_KEY")
        .env_remove("HERALD_SECRET_KEY_FILE")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run herald serve");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&key_id) && stderr.contains("not configured"),
        "{stderr}"
    );
    assert!(!stderr.contains(secret_core()), "{stderr}");
}

#[tokio::test]
async fn rekey_moves_every_app_to_the_new_key_so_the_old_one_can_go() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("herald.db");
    let (k1, k2) = (key(1), key(2));
    // One app from before keys were configured, one sealed under the first key.
    let server = start(&db, &[]).await;
    let plain = server.app(json!({})).await;
    server.stop().await;
    assert!(raw_credentials(&db, &plain).contains(secret_core()));
    let server = start(&db, std::slice::from_ref(&k1)).await;
    let old = server.app(json!({})).await;
    server.stop().await;

    let key_file = dir.path().join("herald.key");
    std::fs::write(&key_file, format!("# new key first\n{k2}\n{k1}\n")).unwrap();
    let rekey = |file: &Path| {
        Command::new(BIN)
            .args([
                "rekey",
                "--db",
                &format!("sqlite://{}", db.display()),
                "--secret-key-file",
                &file.display().to_string(),
            ])
            .env_remove("HERALD_SECRET_KEY")
            .env("RUST_LOG", "warn")
            .output()
            .expect("run herald rekey")
    };
    let out = rekey(&key_file);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("2 re-sealed"), "{stdout}");
    let k2_id = sealer(std::slice::from_ref(&k2))
        .current_key_id()
        .unwrap()
        .to_string();
    for app in [&plain, &old] {
        let raw = raw_credentials(&db, app);
        assert!(raw.starts_with(&format!("enc:v1:{k2_id}:")), "{raw}");
    }
    assert!(
        !contains(&database_bytes(&db), secret_core()),
        "the plaintext that rekey replaced is left in the file"
    );

    // The old key dropped: everything still opens and signs.
    let server = start(&db, std::slice::from_ref(&k2)).await;
    delivered_and_verified(&server, &plain).await;
    delivered_and_verified(&server, &old).await;
    server.stop().await;

    // Only the old key: nothing opens any more, and rekey writes nothing.
    std::fs::write(&key_file, format!("{k1}\n")).unwrap();
    let out = rekey(&key_file);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("nothing was re-sealed") && stderr.contains(&k2_id),
        "{stderr}"
    );
    let raw = raw_credentials(&db, &old);
    assert!(raw.starts_with(&format!("enc:v1:{k2_id}:")), "{raw}");
}
