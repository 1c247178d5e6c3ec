//! A throwaway PostgreSQL cluster for tests, so `cargo test` needs no running service.
//!
//! Owns finding the server binaries, starting one cluster per test process (on first use),
//! handing out a fresh database per call, and making sure the server dies with the test
//! process, however that process ends.
//!
//! How the server is tied to the test process: a small `sh` script (run as the `postgres`
//! system user when the test runs as root, since PostgreSQL refuses root) runs `initdb`,
//! starts `postgres` in the background, then blocks reading its standard input, a pipe whose
//! only writer is this process (close-on-exec, so no other child inherits it). When this
//! process exits for any reason, panic, abort or `kill -9` included, the kernel closes the
//! pipe, the script reads end-of-file, stops the server and deletes the cluster's directory.
//!
//! ```no_run
//! let url = herald_pgtest::database(); // postgres://herald@127.0.0.1:PORT/herald_test_N
//! ```
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a cluster may take to accept connections before the attempt is given up.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Start attempts (a fresh port each) before giving up.
const ATTEMPTS: usize = 3;

/// Runs inside the wrapper shell: `$1` cluster dir, `$2` bin dir, `$3` port.
const SCRIPT: &str = r#"
dir="$1"; bin="$2"; port="$3"
mkdir -m 700 "$dir" || exit 1
if "$bin/initdb" -D "$dir/data" -U herald -A trust -E UTF8 --no-sync >"$dir/initdb.log" 2>&1; then
  "$bin/postgres" -D "$dir/data" -p "$port" -k "$dir" -c listen_addresses=127.0.0.1 \
    -c fsync=on -c shared_buffers=16MB -c max_connections=300 \
    -c logging_collector=off >"$dir/postgres.log" 2>&1 </dev/null &
  pid=$!
  echo started >"$dir/status"
else
  echo initdb-failed >"$dir/status"
fi
cat >/dev/null
if [ -n "${pid:-}" ]; then kill -QUIT "$pid" 2>/dev/null; wait "$pid"; fi
rm -rf "$dir"
"#;

/// Why no database could be handed out. `Clone` because the first start's failure is kept
/// and answered to every later caller of the process.
#[derive(Clone, Debug)]
pub enum PgTestError {
    /// No `initdb`/`postgres` binaries on this machine.
    NoServerBinaries,
    /// An operating-system call failed: `what` says which, the I/O error is the source.
    Io {
        what: String,
        source: Arc<std::io::Error>,
    },
    /// A child process (`initdb`, `postgres`, `psql`, the wrapper) reported a failure; the
    /// message carries what it printed, as there is no Rust error below it.
    Failed(String),
    /// Every start attempt failed; the last attempt's error is the source.
    DidNotStart(Box<PgTestError>),
}

impl std::fmt::Display for PgTestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PgTestError::NoServerBinaries => f.write_str(
                "no PostgreSQL server binaries found (looked at `pg_config --bindir` and \
                 /usr/lib/postgresql/*/bin); install them, e.g. `apt-get install postgresql`",
            ),
            PgTestError::Io { what, .. } => f.write_str(what),
            PgTestError::Failed(why) => f.write_str(why),
            PgTestError::DidNotStart(_) => f.write_str("PostgreSQL did not start"),
        }
    }
}

impl std::error::Error for PgTestError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            // The I/O error itself (not its shared handle), so callers can downcast to it.
            PgTestError::Io { source, .. } => Some(&**source),
            PgTestError::DidNotStart(last) => Some(&**last),
            PgTestError::NoServerBinaries | PgTestError::Failed(_) => None,
        }
    }
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> PgTestError {
    move |e| PgTestError::Io {
        what,
        source: Arc::new(e),
    }
}

/// A running cluster. Its fields live until the process exits: dropping `_keepalive` would
/// stop the server.
struct Cluster {
    port: u16,
    psql: PathBuf,
    _keepalive: Mutex<(Child, ChildStdin)>,
}

static CLUSTER: OnceLock<Result<Cluster, PgTestError>> = OnceLock::new();
static NEXT_DB: AtomicU64 = AtomicU64::new(1);

/// The URL of a new, empty database on this process's cluster (started on first call).
///
/// Panics with an explanation when PostgreSQL is not installed or will not start: tests
/// that need it cannot run without it.
pub fn database() -> String {
    try_database().unwrap_or_else(|e| {
        let mut why = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(inner) = source {
            why.push_str(": ");
            why.push_str(&inner.to_string());
            source = inner.source();
        }
        panic!("herald-pgtest: {why}")
    })
}

/// [`database`], returning the reason instead of panicking.
pub fn try_database() -> Result<String, PgTestError> {
    let cluster = CLUSTER.get_or_init(start).as_ref().map_err(Clone::clone)?;
    let name = format!(
        "herald_test_{}_{}",
        std::process::id(),
        NEXT_DB.fetch_add(1, Ordering::Relaxed)
    );
    let out = Command::new(&cluster.psql)
        .args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-U",
            "herald",
        ])
        .args(["-p", &cluster.port.to_string(), "-d", "postgres"])
        .args(["-c", &format!("CREATE DATABASE {name}")])
        .stdin(Stdio::null())
        .output()
        .map_err(io(format!("cannot run {}", cluster.psql.display())))?;
    if !out.status.success() {
        return Err(PgTestError::Failed(format!(
            "CREATE DATABASE {name} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(format!(
        "postgres://herald@127.0.0.1:{}/{name}",
        cluster.port
    ))
}

/// The directory holding `initdb`, `postgres` and `psql`: `pg_config --bindir`, else the
/// newest `/usr/lib/postgresql/*/bin`.
pub fn bin_dir() -> Result<PathBuf, PgTestError> {
    let has_server = |d: &Path| d.join("initdb").is_file() && d.join("postgres").is_file();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_server(&dir) {
            return Ok(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((v, e.path().join("bin")))
        })
        .filter(|(_, d)| has_server(d))
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, d)| d)
        .ok_or(PgTestError::NoServerBinaries)
}

fn start() -> Result<Cluster, PgTestError> {
    let bin = bin_dir()?;
    let psql = bin.join("psql");
    let mut last = PgTestError::Failed("no start attempt was made".into());
    for _ in 0..ATTEMPTS {
        match start_once(&bin) {
            Ok((port, keepalive)) => {
                return Ok(Cluster {
                    port,
                    psql,
                    _keepalive: Mutex::new(keepalive),
                })
            }
            Err(e) => last = e,
        }
    }
    Err(PgTestError::DidNotStart(Box::new(last)))
}

fn start_once(bin: &Path) -> Result<(u16, (Child, ChildStdin)), PgTestError> {
    let port = free_port()?;
    let dir = std::env::temp_dir().join(format!(
        "herald-pgtest-{}-{}-{port}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    let as_root = is_root();
    let mut cmd = if as_root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", "sh"]);
        c
    } else {
        Command::new("sh")
    };
    cmd.args(["-c", SCRIPT, "herald-pgtest"])
        .arg(&dir)
        .arg(bin)
        .arg(port.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().map_err(io(format!(
        "cannot start the cluster wrapper (sh{})",
        if as_root {
            " via runuser -u postgres"
        } else {
            ""
        }
    )))?;
    let stdin = child
        .stdin
        .take()
        .ok_or_else(|| PgTestError::Failed("the wrapper has no stdin pipe".into()))?;
    let give_up = |mut child: Child, stdin: ChildStdin, why: String| {
        drop(stdin); // the wrapper stops the server and removes the directory
        let _ = child.wait();
        Err(PgTestError::Failed(why))
    };
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(PgTestError::Failed(format!(
                "the cluster wrapper exited early ({status}); is there a `postgres` system user?"
            )));
        }
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        if status.trim() == "initdb-failed" {
            let log = std::fs::read_to_string(dir.join("initdb.log")).unwrap_or_default();
            return give_up(child, stdin, format!("initdb failed: {}", log.trim()));
        }
        // postmaster.pid's 8th line reads "ready" once connections are accepted.
        let pidfile = std::fs::read_to_string(dir.join("data/postmaster.pid")).unwrap_or_default();
        if pidfile.lines().nth(7).map(str::trim) == Some("ready") {
            let mut stdin = stdin;
            let _ = stdin.flush();
            return Ok((port, (child, stdin)));
        }
        let log = std::fs::read_to_string(dir.join("postgres.log")).unwrap_or_default();
        if log.contains("FATAL") || log.contains("PANIC") {
            return give_up(child, stdin, format!("postgres failed: {}", log.trim()));
        }
        if Instant::now() > deadline {
            return give_up(
                child,
                stdin,
                format!(
                    "postgres was not ready after {START_TIMEOUT:?}: {}",
                    log.trim()
                ),
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A loopback port nobody listens on right now.
fn free_port() -> Result<u16, PgTestError> {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(io("cannot find a free loopback port".into()))
}

fn is_root() -> bool {
    // The effective uid, read without libc: /proc/self/status "Uid: real effective ...".
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_start_keeps_the_operating_systems_error_as_its_cause() {
        let refused = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let e = PgTestError::DidNotStart(Box::new(io(
            "cannot start the cluster wrapper (sh)".into()
        )(refused)));
        assert_eq!(e.to_string(), "PostgreSQL did not start");
        let wrapper = std::error::Error::source(&e).expect("the attempt's error");
        assert_eq!(wrapper.to_string(), "cannot start the cluster wrapper (sh)");
        let os = wrapper.source().expect("the I/O error");
        assert_eq!(
            os.downcast_ref::<std::io::Error>().map(|e| e.kind()),
            Some(std::io::ErrorKind::PermissionDenied)
        );
    }

    fn port_of(url: &str) -> u16 {
        url.split(':')
            .nth(2)
            .and_then(|p| p.split('/').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {url}"))
    }

    #[test]
    fn each_call_gets_a_new_database_on_one_running_cluster_with_fsync_on() {
        let a = database();
        let b = database();
        assert_ne!(a, b);
        assert_eq!(port_of(&a), port_of(&b));
        let cluster = CLUSTER
            .get()
            .and_then(|c| c.as_ref().ok())
            .expect("started");
        let out = Command::new(&cluster.psql)
            .args(["-X", "-At", "-h", "127.0.0.1", "-U", "herald", "-p"])
            .arg(cluster.port.to_string())
            .args(["-d", a.rsplit('/').next().unwrap_or(""), "-c", "SHOW fsync"])
            .output()
            .expect("psql");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "on");
    }

    /// Not a test on its own: the body of the child process that
    /// `the_server_dies_when_the_test_process_is_killed` starts and kills. It writes its
    /// database URL to the file named by `HERALD_PGTEST_CHILD`, then waits to be killed.
    #[test]
    fn child_process_that_starts_a_cluster_and_waits() {
        let Some(out) = std::env::var_os("HERALD_PGTEST_CHILD") else {
            return;
        };
        std::fs::write(out, database()).expect("write the URL");
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    #[test]
    fn the_server_dies_when_the_test_process_is_killed() {
        let exe = std::env::current_exe().expect("current exe");
        let signal =
            std::env::temp_dir().join(format!("herald-pgtest-child-{}", std::process::id()));
        let _ = std::fs::remove_file(&signal);
        let mut child = Command::new(exe)
            .args([
                "--exact",
                "tests::child_process_that_starts_a_cluster_and_waits",
            ])
            .args(["--test-threads", "1"])
            .env("HERALD_PGTEST_CHILD", &signal)
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn child");
        let deadline = Instant::now() + START_TIMEOUT;
        let url = loop {
            match std::fs::read_to_string(&signal) {
                Ok(url) if url.starts_with("postgres://") => break url,
                _ => {
                    assert!(
                        Instant::now() < deadline,
                        "the child never reported its database"
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        };
        let _ = std::fs::remove_file(&signal);
        let port = port_of(&url);
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
        child.kill().expect("kill -9");
        child.wait().expect("reap");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            assert!(
                Instant::now() < deadline,
                "postgres on {port} outlived its test process"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
