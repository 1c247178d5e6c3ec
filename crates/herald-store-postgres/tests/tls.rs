//! `sslmode=require` over rustls against a real server: this process's throwaway cluster
//! is switched to TLS with a certificate from a CA made here (its own test binary, so no
//! other test shares the cluster whose settings it changes).
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use herald_store::{MetaStore, StoreError};
use herald_store_postgres::PgStore;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl (installed with PostgreSQL's ssl-cert)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`<name>.pem`, `<name>.key`) in `dir`.
fn ca(dir: &Path, name: &str) -> PathBuf {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
        ],
    );
    dir.join(format!("{name}.pem"))
}

async fn admin(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("admin connection");
    tokio::spawn(conn);
    client
}

#[tokio::test]
async fn sslmode_require_connects_over_verified_tls_only() {
    let url = herald_pgtest::database();
    let dir = std::env::temp_dir().join(format!("herald-pg-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let ca_pem = ca(&dir, "ca");
    let other_ca = ca(&dir, "other");
    openssl(
        &dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(dir.join("ext"), "subjectAltName=IP:127.0.0.1\n").expect("ext");
    openssl(
        &dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext",
            "-out",
            "server.pem",
        ],
    );
    // The server runs as `postgres` when the tests run as root, and wants its key private.
    let _ = Command::new("chown")
        .args(["postgres", "server.key", "server.pem"])
        .current_dir(&dir)
        .status();
    let _ = Command::new("chmod")
        .args(["600", "server.key"])
        .current_dir(&dir)
        .status();

    let db = admin(&url).await;
    for (k, v) in [
        ("ssl_cert_file", dir.join("server.pem")),
        ("ssl_key_file", dir.join("server.key")),
    ] {
        db.batch_execute(&format!("ALTER SYSTEM SET {k} = '{}'", v.display()))
            .await
            .expect("set");
    }
    db.batch_execute("ALTER SYSTEM SET ssl = on")
        .await
        .expect("ssl on");
    db.batch_execute("SELECT pg_reload_conf()")
        .await
        .expect("reload");
    let mut on = false;
    for _ in 0..100 {
        let row = admin(&url)
            .await
            .query_one("SHOW ssl", &[])
            .await
            .expect("show");
        if row.get::<_, String>(0) == "on" {
            on = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(on, "the server turned TLS on");

    let tls_url = format!("{url}?sslmode=require&sslrootcert={}", ca_pem.display());
    let store = PgStore::connect(&tls_url).await.expect("connect over TLS");
    store.ping().await.expect("ping over TLS");
    store.set_meta("k", "v").await.expect("write over TLS");
    let name = url.rsplit('/').next().unwrap_or_default();
    let row = db
        .query_one(
            "SELECT count(*), bool_and(s.ssl) FROM pg_stat_ssl s
             JOIN pg_stat_activity a USING (pid)
             WHERE a.datname = $1 AND a.application_name IN ('herald', 'herald-hints')",
            &[&name],
        )
        .await
        .expect("pg_stat_ssl");
    let (count, all_tls): (i64, Option<bool>) = (row.get(0), row.get(1));
    assert!(
        count >= 2,
        "the pool's and the listener's connections: {count}"
    );
    assert_eq!(
        all_tls,
        Some(true),
        "every connection of the store is encrypted"
    );

    // A server whose certificate does not chain to the configured CA is refused.
    let wrong = format!("{url}?sslmode=require&sslrootcert={}", other_ca.display());
    let err = PgStore::connect(&wrong)
        .await
        .err()
        .expect("untrusted certificate");
    assert!(matches!(err, StoreError::Backend { .. }), "{err:?}");
    // Without sslrootcert the public roots are used, which do not include this CA either.
    let public = format!("{url}?sslmode=require");
    assert!(PgStore::connect(&public).await.is_err());
    let _ = std::fs::remove_dir_all(&dir);
}
