//! A receiver process killed with `kill -9` in the middle of processing a notification
//! loses nothing and applies nothing: the provider's redelivery is then processed exactly
//! once. The child is this test binary re-run on `crash_child`, which processes the
//! notification, tells the parent it is inside the transaction, and hangs there.
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use herald_inbox::{InboxStore, OrderState, PgInbox, SqlValue, SqliteInbox};
use herald_receiver::Outcome;

const CHILD_ENV: &str = "HERALD_CRASH_CHILD";

/// The one notification both processes receive.
fn notification() -> herald_receiver::RawRequest {
    sw().request("msg_crash", "", &sw_body("payment.succeeded", "A1", 100))
}

async fn open(backend: &str, target: &str) -> Arc<dyn InboxStore> {
    match backend {
        "sqlite" => Arc::new(SqliteInbox::open(Path::new(target)).expect("open")),
        _ => Arc::new(PgInbox::connect(target).await.expect("connect")),
    }
}

/// Not a test on its own: the child process's body, run only when the crash tests start it
/// (`HERALD_CRASH_CHILD=backend|target|signal-file`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut parts = spec.splitn(3, '|');
    let (backend, target, signal) = (
        parts.next().unwrap_or_default().to_string(),
        parts.next().unwrap_or_default().to_string(),
        PathBuf::from(parts.next().unwrap_or_default()),
    );
    let inbox = sw_inbox(open(&backend, &target).await);
    let _ = inbox
        .receive(&notification(), move |effects, t| {
            effects.execute(
                if backend == "sqlite" {
                    "INSERT INTO merchant_log (out_trade_no, state) VALUES (?1, 'child')"
                } else {
                    "INSERT INTO merchant_log (out_trade_no, state) VALUES ($1, 'child')"
                },
                vec![SqlValue::Text(t.out_trade_no.clone())],
            );
            if backend == "sqlite" {
                // Inside the write transaction, holding the database lock.
                std::fs::write(&signal, "in handler").expect("signal");
                loop {
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
            // PostgreSQL: the insert above runs, then the last statement hangs inside the
            // transaction; the parent watches for it in pg_stat_activity. The server checks
            // the client's socket while it sleeps, so it notices the kill at once (by default
            // it would only notice when the sleep ends).
            effects.execute("SET LOCAL client_connection_check_interval = 50", vec![]);
            effects.execute("SELECT pg_sleep(600)", vec![]);
            Ok(())
        })
        .await;
    panic!("the child was meant to be killed before finishing");
}

fn spawn_child(spec: &str) -> Child {
    Command::new(std::env::current_exe().expect("current exe"))
        .args(["--exact", "crash_child", "--test-threads", "1"])
        .env(CHILD_ENV, spec)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the child")
}

async fn wait_until<F, Fut>(what: &str, child: &mut Child, mut ready: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready().await {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the child exited ({status}) before {what}");
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// After the kill: the order is untouched, the redelivery applies once, the next is a
/// duplicate, and the merchant's row exists once (the child's uncommitted one is gone).
async fn redelivery_applies_once(store: Arc<dyn InboxStore>) {
    let o = store.order("A1").await.expect("read").expect("order");
    assert_eq!(
        o.state,
        OrderState::Unpaid,
        "the killed transaction left nothing"
    );
    assert_eq!(log_rows(&*store).await, 0);
    let inbox = sw_inbox(store.clone());
    let calls = calls();
    let redelivered = inbox.receive(&notification(), handler(&calls)).await;
    assert_eq!(
        redelivered.result,
        Ok(Outcome::Applied {
            from: OrderState::Unpaid,
            to: OrderState::Paid
        })
    );
    let again = inbox.receive(&notification(), handler(&calls)).await;
    assert_eq!(again.result, Ok(Outcome::Duplicate));
    assert_eq!(count(&calls), 1);
    assert_eq!(log_rows(&*store).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_receiver_killed_inside_the_handler_loses_nothing_and_the_redelivery_applies_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("inbox.db");
    let signal = dir.path().join("in-handler");
    {
        let store = open("sqlite", db.to_str().expect("utf-8 path")).await;
        merchant_table(&*store).await;
        new_order(&sw_inbox(store), "A1", 100).await;
    }
    let mut child = spawn_child(&format!("sqlite|{}|{}", db.display(), signal.display()));
    wait_until("the child is in the handler", &mut child, || {
        let signal = signal.clone();
        async move { signal.exists() }
    })
    .await;
    child.kill().expect("kill -9");
    child.wait().expect("reap");
    redelivery_applies_once(open("sqlite", db.to_str().expect("utf-8 path")).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_receiver_killed_mid_transaction_loses_nothing_and_the_redelivery_applies_once() {
    let url = herald_pgtest::database();
    let store = open("postgres", &url).await;
    merchant_table(&*store).await;
    new_order(&sw_inbox(store.clone()), "A1", 100).await;
    let mut child = spawn_child(&format!("postgres|{url}|-"));
    let probe = store.clone();
    wait_until("the child hangs inside its transaction", &mut child, || {
        let probe = probe.clone();
        async move {
            let sleeping = probe
                .query_value(
                    "SELECT count(*) FROM pg_stat_activity
                     WHERE query = 'SELECT pg_sleep(600)' AND state = 'active'",
                    vec![],
                )
                .await
                .expect("pg_stat_activity");
            sleeping == Some(SqlValue::Int(1))
        }
    })
    .await;
    child.kill().expect("kill -9");
    child.wait().expect("reap");
    // The server notices the dead client and rolls its transaction back (releasing the
    // row lock); the redelivery waits for that lock if it has to.
    redelivery_applies_once(store).await;
}
