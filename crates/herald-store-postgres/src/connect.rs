//! Connecting: the database URL, TLS, and the connection pool.
//!
//! Owns how a `postgres://user@host:port/db?sslmode=...` URL becomes connections, so every
//! connection of the driver (the pool's and the hint listener's) is made the same way.
//!
//! TLS is rustls (no OpenSSL): `sslmode=require` (or `verify-ca` / `verify-full`) makes
//! every connection encrypted and *verified*: the server's certificate must chain to the
//! CA in `sslrootcert=/path/ca.pem` when given, else to the public web PKI roots, and must
//! name the host. This is stricter than libpq's `require`, which encrypts without
//! verifying; an unverified TLS connection protects against nothing active. `disable`,
//! `allow` and `prefer` (libpq's default) connect without TLS.
//!
//! The pool is `deadpool-postgres`: a maintained pool over tokio-postgres that checks a
//! connection before lending it again and drops it when it broke, bounded in size, with
//! timeouts so a caller never waits forever on an unreachable database.
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, QueueMode, RecyclingMethod, Runtime};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio_postgres::config::SslMode;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, Config, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

use herald_store::{Result, StoreError};

use crate::describe;

/// Connections the pool keeps open at most (the hint listener has one more of its own).
pub(crate) const POOL_SIZE: usize = 16;
/// Settings of every connection's session (see [`Target::parse`]).
///
/// `enable_seqscan=off`: every statement of the queue and the write path finds its rows by
/// an index (a delivery by its key, due work by the due index, ...). On a young table (a
/// database just migrated, before autovacuum has analyzed it) PostgreSQL prices a whole-table
/// scan of a few pages as cheaper, and a prepared statement's *generic* plan made then keeps
/// that scan as the table grows, until the table is analyzed: measured on the e2e bench, an
/// outcome batch read every delivery of the table (433 pages, 4 ms) to update 32 of them.
/// Off, the planner takes a scan of the whole table only where no index serves. The
/// dashboard's reports, which aggregate over many rows, turn it back on for their own
/// transaction (`dashboard::report`).
pub(crate) const SESSION_OPTIONS: &str = "-c jit=off -c enable_seqscan=off";
/// How long a pooled connection may sit unused before [`close_idle`] closes it.
pub(crate) const IDLE_CLOSE: Duration = Duration::from_secs(300);
/// How long connecting (TCP, TLS, authentication) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a caller waits for a pooled connection before the store reports a failure.
const WAIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Closes the pooled connections that nobody took for `idle` or longer (the hint listener
/// calls it on each of its checks with [`IDLE_CLOSE`]): the pool lends the connection
/// returned last first, so one opened for a burst is not used again until the next burst,
/// and is a backend process the database keeps for nothing meanwhile.
pub(crate) fn close_idle(pool: &Pool, idle: Duration) -> usize {
    pool.retain(|_, used| used.last_used() < idle).removed.len()
}

/// A connection made by [`Target::connect`]; polling it drives its client.
pub(crate) type Connection =
    tokio_postgres::Connection<Socket, <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream>;

/// Everything needed to open a connection, parsed once from the URL.
#[derive(Clone)]
pub(crate) struct Target {
    pub(crate) config: Config,
    tls: MakeRustlsConnect,
}

impl Target {
    /// Parses the URL (`postgres://user[:password]@host[:port]/db[?params]`, or libpq's
    /// `key=value` form). `sslmode` and `sslrootcert` are handled here (see the module doc);
    /// the other parameters are tokio-postgres's.
    pub(crate) fn parse(url: &str) -> Result<Target> {
        let invalid = |why: String| StoreError::backend_msg(format!("bad PostgreSQL URL: {why}"));
        let (base, query) = match url.split_once('?') {
            Some((b, q)) => (b, q),
            None => (url, ""),
        };
        let mut ssl_mode = SslMode::Disable;
        let mut root_cert: Option<String> = None;
        let mut rest = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "sslmode" => {
                    ssl_mode = match v {
                        "disable" | "allow" | "prefer" => SslMode::Disable,
                        "require" | "verify-ca" | "verify-full" => SslMode::Require,
                        other => return Err(invalid(format!("unknown sslmode {other:?}"))),
                    }
                }
                "sslrootcert" => root_cert = Some(percent_decode(v)),
                _ => rest.push(pair),
            }
        }
        let url = if rest.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", rest.join("&"))
        };
        let mut config: Config = url
            .parse()
            .map_err(|e| StoreError::backend(format!("bad PostgreSQL URL: {e}"), e))?;
        config.ssl_mode(ssl_mode);
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        // Notice a peer that vanished (a dead server, a cut network) within a minute
        // instead of the kernel's two hours.
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(15));
        config.keepalives_interval(Duration::from_secs(5));
        config.keepalives_retries(3);
        // Herald's statements are short and run thousands of times a second; a plan whose
        // estimate crosses `jit_above_cost` (the rescue's can) would be compiled by LLVM on
        // every run, for tens of milliseconds. Options given in the URL come later and win.
        let options = match config.get_options() {
            Some(given) => format!("{SESSION_OPTIONS} {given}"),
            None => SESSION_OPTIONS.to_string(),
        };
        config.options(&options);
        let tls = tls_connector(root_cert.as_deref())?;
        Ok(Target { config, tls })
    }

    /// A pool of connections to the target.
    pub(crate) fn pool(&self) -> Result<Pool> {
        let mut config = self.config.clone();
        if config.get_application_name().is_none() {
            config.application_name("herald");
        }
        let manager = Manager::from_config(
            config,
            self.tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        Pool::builder(manager)
            .max_size(POOL_SIZE)
            // The connection returned last is lent first, so a node keeps working on the few
            // it needs at once, whose statements are prepared and planned, and a connection
            // opened for a burst stays idle after it. Lent in turn (first in, first out),
            // every connection the pool had opened ran every statement, each a backend
            // process that prepared and planned them anew: over the e2e bench's PostgreSQL
            // phases, 1.32 s of planning against 0.56 s (`pg_stat_statements`).
            .queue_mode(QueueMode::Lifo)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(WAIT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| StoreError::backend(format!("cannot build the connection pool: {e}"), e))
    }

    /// One connection outside the pool (the hint listener's, the migration's). The
    /// returned connection must be polled (spawned) for the client to work.
    pub(crate) async fn connect(&self) -> Result<(Client, Connection)> {
        self.connect_as("herald").await
    }

    /// [`Target::connect`] with its own `application_name`.
    pub(crate) async fn connect_as(&self, name: &str) -> Result<(Client, Connection)> {
        let mut config = self.config.clone();
        config.application_name(name);
        config
            .connect(self.tls.clone())
            .await
            .map_err(|e| StoreError::backend(format!("cannot connect: {}", describe(&e)), e))
    }
}

/// The rustls connector: roots from `root_cert` (a PEM file of CA certificates) when
/// given, else the web PKI roots.
fn tls_connector(root_cert: Option<&str>) -> Result<MakeRustlsConnect> {
    let mut roots = rustls::RootCertStore::empty();
    match root_cert {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path).map_err(|e| {
                StoreError::backend(format!("cannot read sslrootcert {path}: {e}"), e)
            })?;
            for cert in certs {
                let cert = cert.map_err(|e| {
                    StoreError::backend(format!("bad certificate in sslrootcert {path}: {e}"), e)
                })?;
                roots.add(cert).map_err(|e| {
                    StoreError::backend(
                        format!("unusable certificate in sslrootcert {path}: {e}"),
                        e,
                    )
                })?;
            }
            if roots.is_empty() {
                return Err(StoreError::backend_msg(format!(
                    "sslrootcert {path} holds no certificate"
                )));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::backend(format!("TLS set-up failed: {e}"), e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// Decodes `%XX` escapes of a URL query value (paths may be escaped).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
            if let Ok(b) = u8::from_str_radix(hex, 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn backend_pid(c: &impl deadpool_postgres::GenericClient) -> i32 {
        c.query_one("SELECT pg_backend_pid()", &[])
            .await
            .expect("pid")
            .get(0)
    }

    #[tokio::test]
    async fn the_pool_lends_the_connection_returned_last() {
        let store = crate::testing::store().await;
        let first = store.inner.client().await.expect("client");
        let second = store.inner.client().await.expect("client");
        let (p1, p2) = (backend_pid(&first).await, backend_pid(&second).await);
        assert_ne!(p1, p2, "two connections lent at once");
        drop(first);
        drop(second);
        let next = store.inner.client().await.expect("client");
        assert_eq!(backend_pid(&next).await, p2, "the one returned last");
    }

    #[tokio::test]
    async fn connections_idle_past_the_bound_are_closed_and_the_others_kept() {
        let store = crate::testing::store().await;
        let first = store.inner.client().await.expect("client");
        let second = store.inner.client().await.expect("client");
        assert_ne!(backend_pid(&first).await, backend_pid(&second).await);
        drop(first);
        drop(second);
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Taken again: the one returned last.
        let again = store.inner.client().await.expect("client");
        let kept = backend_pid(&again).await;
        drop(again);
        let pool = &store.inner.pool;
        assert_eq!(
            close_idle(pool, IDLE_CLOSE),
            0,
            "none idle for {IDLE_CLOSE:?}"
        );
        assert_eq!(close_idle(pool, Duration::from_millis(200)), 1);
        assert_eq!(pool.status().size, 1, "{:?}", pool.status());
        let next = store.inner.client().await.expect("client");
        assert_eq!(backend_pid(&next).await, kept);
    }

    #[tokio::test]
    async fn a_pooled_session_plans_without_sequential_scans_and_a_report_with_them() {
        let store = crate::testing::store().await;
        let c = store.inner.client().await.expect("client");
        assert_eq!(crate::testing::show(&c, "enable_seqscan").await, "off");
        assert_eq!(crate::testing::show(&c, "jit").await, "off");
        let pid = backend_pid(&c).await;
        drop(c);
        let inside = crate::dashboard::report(&store.inner, |tx| {
            Box::pin(async move {
                let pid = backend_pid(tx).await;
                Ok((pid, crate::testing::show(tx, "enable_seqscan").await))
            })
        })
        .await
        .expect("report");
        assert_eq!(inside, (pid, "on".to_string()), "on the same connection");
        // SET LOCAL ended with the report's transaction.
        let c = store.inner.client().await.expect("client");
        assert_eq!(backend_pid(&c).await, pid);
        assert_eq!(crate::testing::show(&c, "enable_seqscan").await, "off");
    }

    #[test]
    fn sslmode_and_sslrootcert_are_ours_the_rest_is_tokio_postgres() {
        let t = Target::parse("postgres://herald@127.0.0.1:5432/db?sslmode=disable&user=x")
            .expect("parse");
        assert_eq!(t.config.get_ssl_mode(), SslMode::Disable);
        assert_eq!(t.config.get_user(), Some("x"));
        let t =
            Target::parse("postgres://herald@db.example:5432/db?sslmode=require").expect("parse");
        assert_eq!(t.config.get_ssl_mode(), SslMode::Require);
        let t = Target::parse("postgres://herald@db.example/db").expect("parse");
        assert_eq!(t.config.get_ssl_mode(), SslMode::Disable);
        assert!(Target::parse("postgres://h@x/db?sslmode=bogus").is_err());
        assert_eq!(t.config.get_options(), Some(SESSION_OPTIONS));
        let t = Target::parse("postgres://h@x/db?options=-c%20work_mem%3D8MB").expect("parse");
        assert_eq!(
            t.config.get_options(),
            Some(format!("{SESSION_OPTIONS} -c work_mem=8MB").as_str()),
            "the URL's options come after ours, so they win"
        );
        let err =
            Target::parse("postgres://h@x/db?sslmode=require&sslrootcert=/nonexistent%2Fca.pem")
                .err()
                .expect("missing file");
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }

    #[tokio::test]
    async fn every_pooled_connection_runs_without_jit_unless_the_url_says_otherwise() {
        let url = herald_pgtest::database();
        let show = |url: String| async move {
            let pool = Target::parse(&url).expect("parse").pool().expect("pool");
            let client = pool.get().await.expect("connection");
            let row = client.query_one("SHOW jit", &[]).await.expect("show");
            row.get::<_, String>(0)
        };
        assert_eq!(show(url.clone()).await, "off");
        assert_eq!(show(format!("{url}?options=-c%20jit%3Don")).await, "on");
    }
}
