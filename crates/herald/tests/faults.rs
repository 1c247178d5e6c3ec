//! Fault tests on the real binary: `kill -9` at random moments under load, and a database
//! that refuses writes. What they prove is the delivery guarantee: every notification that
//! got a 2xx is delivered, every delivery ends `succeeded`, and a repeat happens only for an
//! attempt that was in flight when a process died. And a graceful stop (`SIGTERM`) takes
//! a node out of the fleet at once, not a lease later.
#[path = "common/fleet.rs"]
mod fleet;

use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet::{FlakyReceiver, Node};
use rand::Rng;
use serde_json::json;

/// Waits until the receiver acknowledged every id, for at most `limit`.
async fn wait_all_received(rx: &FlakyReceiver, ids: &[String], limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let missing = ids.iter().filter(|id| !rx.has(id)).count();
        if missing == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} acknowledged notifications never arrived"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Counts deliveries by status straight from the database file.
fn statuses(db: &std::path::Path) -> Vec<(String, i64)> {
    let conn = rusqlite::Connection::open(db).expect("open the database");
    let mut stmt = conn
        .prepare("SELECT status, count(*) FROM deliveries GROUP BY status ORDER BY status")
        .expect("query");
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("rows");
    rows.map(|r| r.expect("row")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_kill_9_under_load_loses_nothing_acknowledged() {
    const COUNT: usize = 20_000;
    const KILLS: usize = 5;
    let dir = tempfile::tempdir().expect("tempdir");
    let db_path = dir.path().join("herald.db");
    let db = format!("sqlite://{}", db_path.display());
    let rx = FlakyReceiver::start(1.0 / 3.0).await;
    let port = fleet::free_port();
    let mut node = Node::start(&db, port, &[]).await;
    let bases = Arc::new(vec![node.url()]);
    let client = reqwest::Client::new();
    let app = fleet::app_with_endpoint(&client, &bases, &rx.url).await;

    let loader = tokio::spawn(fleet::post_notifications(bases.clone(), app, COUNT, 32));
    let mut in_flight_at_kills = 0;
    for _ in 0..KILLS {
        let pause = rand::thread_rng().gen_range(500..2_000);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        in_flight_at_kills += rx.in_flight(Duration::from_millis(250));
        node.kill9().await;
        node.restart().await;
    }
    let acknowledged = loader.await.expect("the loader finishes");
    assert_eq!(acknowledged.len(), COUNT, "every notification was accepted");
    wait_all_received(&rx, &acknowledged, Duration::from_secs(180)).await;
    // Let the last outcomes commit, then stop for good and read the file.
    tokio::time::sleep(Duration::from_secs(1)).await;
    node.kill9().await;
    let by_status = statuses(&db_path);
    let repeats = rx.repeats();
    eprintln!(
        "kills: {KILLS}; acknowledged: {}; received: {}; repeated: {repeats}; in flight at the kills: {in_flight_at_kills}; deliveries by status: {by_status:?}",
        acknowledged.len(),
        rx.acked_ids()
    );
    assert_eq!(by_status, vec![("succeeded".to_string(), COUNT as i64)]);
    assert_eq!(rx.acked_ids(), COUNT, "no unknown notification arrived");
    assert!(
        repeats <= in_flight_at_kills as u64,
        "{repeats} repeated receptions, but only {in_flight_at_kills} attempts were in flight at the kills"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_on_a_full_disk_answers_503_and_acknowledges_nothing_it_could_not_store() {
    // A 4 MiB filesystem of our own (a tmpfs in a private mount namespace, so no root is
    // needed), holding the database and nothing else.
    let dir = tempfile::tempdir().expect("tempdir");
    let mnt = dir.path().to_str().expect("utf-8 path").to_string();
    let port = fleet::free_port();
    let script = format!(
        "mount -t tmpfs -o size=4m tmpfs '{mnt}' && exec '{bin}' serve --db 'sqlite://{mnt}/herald.db' \
         --listen 127.0.0.1:{port} --admin-token '{token}' --allow-private-targets",
        bin = env!("CARGO_BIN_EXE_herald"),
        token = fleet::TOKEN,
    );
    let _child = tokio::process::Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "sh", "-c", &script])
        .env("RUST_LOG", "error")
        .kill_on_drop(true)
        .spawn()
        .expect("unshare runs");
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(Instant::now() < deadline, "the node never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rx = FlakyReceiver::start(0.0).await;
    let bases = vec![base.clone()];
    let app = fleet::app_with_endpoint(&client, &bases, &rx.url).await;

    // 64 KiB payloads until the disk is full.
    let filler = "x".repeat(64 * 1024);
    let mut accepted = Vec::new();
    let mut refused = 0;
    for i in 0..400 {
        let resp = client
            .post(format!("{base}/v1/apps/{app}/notifications"))
            .bearer_auth(fleet::TOKEN)
            .json(&serde_json::json!({"event_type": "e", "payload": {"i": i, "fill": filler}}))
            .send()
            .await
            .expect("the node answers");
        let status = resp.status().as_u16();
        let body: serde_json::Value = resp.json().await.expect("a JSON body");
        match status {
            202 => accepted.push(
                body["deliveries"][0]["notify_id"]
                    .as_str()
                    .expect("notify id")
                    .to_string(),
            ),
            503 => {
                assert_eq!(body["error"]["code"], "unavailable", "{body}");
                refused += 1;
                if refused >= 5 {
                    break;
                }
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(
        refused >= 5,
        "the disk never filled ({} accepted)",
        accepted.len()
    );
    assert!(!accepted.is_empty());
    // Everything acknowledged is delivered; nothing refused ever is.
    wait_all_received(&rx, &accepted, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    eprintln!(
        "accepted {} before the disk filled, refused {refused}; received {}",
        accepted.len(),
        rx.acked_ids()
    );
    assert_eq!(
        rx.acked_ids(),
        accepted.len(),
        "only acknowledged notifications arrive"
    );
}

// --- PostgreSQL: several nodes on one database ---------------------------------------------

/// A connection to the PostgreSQL server of `url`, on its `postgres` database (for what the
/// tests do to the database itself).
async fn pg_admin(url: &str) -> (tokio_postgres::Client, String) {
    let db = url.rsplit('/').next().expect("a database name").to_string();
    let admin_url = url.replace(&format!("/{db}"), "/postgres");
    let (client, conn) = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls)
        .await
        .expect("admin connection");
    tokio::spawn(conn);
    (client, db)
}

/// `n` nodes on the database at `url` (each with `extra` flags), their base URLs, and an
/// app whose one endpoint is `receiver`.
async fn fleet_with_app(
    url: &str,
    n: usize,
    extra: &[&str],
    receiver: &str,
) -> (Vec<Node>, Arc<Vec<String>>, reqwest::Client, String) {
    let mut nodes = Vec::new();
    for _ in 0..n {
        nodes.push(Node::start(url, fleet::free_port(), extra).await);
    }
    let bases = Arc::new(nodes.iter().map(Node::url).collect::<Vec<_>>());
    let client = reqwest::Client::new();
    let app = fleet::app_with_endpoint(&client, &bases, receiver).await;
    (nodes, bases, client, app)
}

/// The rows of `sql` in the PostgreSQL database at `url`, as (text, bigint) pairs.
async fn pg_pairs(url: &str, sql: &str) -> Vec<(String, i64)> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
        .query(sql, &[])
        .await
        .expect("query")
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
        .collect()
}

/// Counts deliveries by status in the PostgreSQL database at `url`.
async fn pg_statuses(url: &str) -> Vec<(String, i64)> {
    pg_pairs(
        url,
        "SELECT status, count(*) FROM deliveries GROUP BY status ORDER BY status",
    )
    .await
}

/// The nodes' rows: id and lease end (unix ms).
async fn pg_nodes(url: &str) -> Vec<(String, i64)> {
    pg_pairs(url, "SELECT id, lease_until FROM nodes ORDER BY id").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_node_killed_for_good_has_its_work_finished_by_the_others() {
    const COUNT: usize = 6_000;
    let url = herald_pgtest::database();
    let rx = FlakyReceiver::start(1.0 / 3.0).await;
    // A short lease so the test does not wait the default 30 s for the takeover.
    let (mut nodes, bases, _, app) = fleet_with_app(&url, 3, &["--lease", "3"], &rx.url).await;
    let loader = tokio::spawn(fleet::post_notifications(bases.clone(), app, COUNT, 24));
    tokio::time::sleep(Duration::from_millis(
        rand::thread_rng().gen_range(800..1_500),
    ))
    .await;
    let in_flight_at_kill = rx.in_flight(Duration::from_secs(1));
    let killed_at = Instant::now();
    nodes[1].kill9().await; // and never started again
    let acknowledged = loader.await.expect("the loader finishes");
    assert_eq!(acknowledged.len(), COUNT);
    wait_all_received(&rx, &acknowledged, Duration::from_secs(180)).await;
    let finished_after = killed_at.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let by_status = pg_statuses(&url).await;
    let repeats = rx.repeats();
    eprintln!(
        "3 nodes, one killed for good: acknowledged {}; received {}; repeated {repeats}; in flight at the kill {in_flight_at_kill}; all delivered {:.1} s after the kill; deliveries by status {by_status:?}",
        acknowledged.len(),
        rx.acked_ids(),
        finished_after.as_secs_f64()
    );
    for n in nodes.iter_mut() {
        n.kill9().await;
    }
    assert_eq!(by_status, vec![("succeeded".to_string(), COUNT as i64)]);
    assert_eq!(rx.acked_ids(), COUNT);
    assert!(
        repeats <= in_flight_at_kill as u64,
        "{repeats} repeats, {in_flight_at_kill} attempts in flight at the kill"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_node_stopped_with_sigterm_leaves_the_fleet_before_its_lease_ends() {
    const COUNT: usize = 300;
    let url = herald_pgtest::database();
    let rx = FlakyReceiver::start(0.0).await;
    // The default lease (30 s): a node that merely stopped renewing would stay counted.
    let (mut nodes, bases, client, app) = fleet_with_app(&url, 2, &[], &rx.url).await;
    let acknowledged = fleet::post_notifications(bases.clone(), app, COUNT, 8).await;
    wait_all_received(&rx, &acknowledged, Duration::from_secs(60)).await;
    let before = pg_nodes(&url).await;
    assert_eq!(before.len(), 2, "two live nodes: {before:?}");
    let status = nodes[0].terminate().await;
    assert!(status.success(), "a graceful stop exits 0: {status:?}");
    let after = pg_nodes(&url).await;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    assert_eq!(after.len(), 1, "the stopped node left: {after:?}");
    let (gone, lease_until) = before
        .iter()
        .find(|(id, _)| *id != after[0].0)
        .expect("the stopped node's row before the stop");
    assert!(
        now_ms < *lease_until,
        "{gone} was forgotten {} ms before its lease would have ended",
        lease_until - now_ms
    );
    // The node left is the fleet: it delivers a new app's notifications posted to it.
    let survivor = Arc::new(vec![nodes[1].url()]);
    let second = fleet::app_with_endpoint(&client, &survivor, &rx.url).await;
    let more = fleet::post_notifications(survivor, second, COUNT, 8).await;
    wait_all_received(&rx, &more, Duration::from_secs(60)).await;
    nodes[1].kill9().await;
    assert_eq!(rx.acked_ids(), 2 * COUNT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_under_load_nodes_report_unhealthy_then_resume_and_lose_nothing() {
    const COUNT: usize = 4_000;
    let url = herald_pgtest::database();
    let rx = FlakyReceiver::start(1.0 / 3.0).await;
    let (mut nodes, bases, client, app) = fleet_with_app(&url, 2, &[], &rx.url).await;
    let loader = tokio::spawn(fleet::post_notifications(bases.clone(), app, COUNT, 16));
    tokio::time::sleep(Duration::from_millis(800)).await;

    // The database goes away: no new connections, every open one ended.
    let (admin, db) = pg_admin(&url).await;
    admin
        .batch_execute(&format!("ALTER DATABASE {db} ALLOW_CONNECTIONS false"))
        .await
        .expect("refuse connections");
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = $1 AND pid <> pg_backend_pid()",
            &[&db],
        )
        .await
        .expect("end sessions");
    let deadline = Instant::now() + Duration::from_secs(20);
    for base in bases.iter() {
        loop {
            let status = client
                .get(format!("{base}/healthz"))
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0);
            if status == 503 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{base} never reported the outage"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let accepted_during = {
        let resp = client
            .post(format!("{}/v1/apps/{}/notifications", bases[0], "app_any"))
            .bearer_auth(fleet::TOKEN)
            .json(&serde_json::json!({"event_type": "e", "payload": {}}))
            .send()
            .await
            .expect("the node answers");
        resp.status().as_u16()
    };
    assert_eq!(
        accepted_during, 503,
        "nothing is acknowledged during the outage"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    admin
        .batch_execute(&format!("ALTER DATABASE {db} ALLOW_CONNECTIONS true"))
        .await
        .expect("accept connections again");

    let acknowledged = loader.await.expect("the loader finishes");
    assert_eq!(acknowledged.len(), COUNT);
    wait_all_received(&rx, &acknowledged, Duration::from_secs(180)).await;
    for base in bases.iter() {
        let status = client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0);
        assert_eq!(status, 200, "{base} is healthy again");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let by_status = pg_statuses(&url).await;
    eprintln!(
        "outage of 3 s under load: acknowledged {}; received {}; repeated {}; deliveries by status {by_status:?}",
        acknowledged.len(),
        rx.acked_ids(),
        rx.repeats()
    );
    for n in nodes.iter_mut() {
        n.kill9().await;
    }
    assert_eq!(by_status, vec![("succeeded".to_string(), COUNT as i64)]);
    assert_eq!(rx.acked_ids(), COUNT);
}

/// Every node runs the sandbox's unpaid-timeout timer over the same trades, and their timers
/// wake at the same deadlines (each node created a third of the trades). Closing is a
/// compare-and-set on the trade's version, so whichever node gets there first closes a trade
/// and the others find it closed or lose the race: each trade closes once, with one close
/// event and one close notification, delivered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sandbox_unpaid_timeout_closes_each_trade_once_across_three_nodes() {
    const TRADES: usize = 90;
    let url = herald_pgtest::database();
    let rx = fleet::Recorder::start().await;
    let sandbox = ["--sandbox", "--sandbox-unpaid-timeout", "2s"];
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(Node::start(&url, fleet::free_port(), &sandbox).await);
    }
    let bases: Vec<String> = nodes.iter().map(Node::url).collect();
    let client = reqwest::Client::new();
    let (status, app) = fleet::call(
        &client,
        &bases,
        reqwest::Method::POST,
        "/v1/apps",
        Some(json!({"name": "shop", "profile": "standard-webhooks"})),
        None,
    )
    .await;
    assert_eq!(status, 201, "{app}");
    let app_id = app["id"].as_str().expect("app id").to_string();

    // Each node creates every third trade, all within about a second: every node's timer
    // then sleeps until the same first deadline and works through the same due trades.
    let creators: Vec<_> = (0..bases.len())
        .map(|k| {
            let (client, base, app_id, notify) = (
                client.clone(),
                bases[k].clone(),
                app_id.clone(),
                rx.url.clone(),
            );
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in (k..TRADES).step_by(3) {
                    let (status, p) = fleet::call(
                        &client,
                        std::slice::from_ref(&base),
                        reqwest::Method::POST,
                        "/v1/sandbox/payments",
                        Some(json!({"app_id": app_id, "out_trade_no": format!("T-{i}"),
                                "amount": 100 + i, "subject": "gum", "notify_url": notify})),
                        None,
                    )
                    .await;
                    assert_eq!(status, 201, "{p}");
                    ids.push(p["payment_id"].as_str().expect("payment id").to_string());
                }
                ids
            })
        })
        .collect();
    let mut ids = Vec::new();
    for c in creators {
        ids.extend(c.await.expect("a creator"));
    }
    assert_eq!(ids.len(), TRADES);

    let closes = |got: &[fleet::Recorded]| {
        got.iter()
            .filter(|r| r.body["type"] == "payment.closed")
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while closes(rx.received().as_slice()) < TRADES {
        assert!(
            Instant::now() < deadline,
            "{} of {TRADES} close notifications arrived in 60 s",
            closes(rx.received().as_slice())
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Long enough for a node that lost a race to try again (its timer retries after 1 s)
    // and for a second close, if one were committed, to be delivered.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let got = rx.received();
    let mut per_trade: std::collections::HashMap<String, Vec<String>> = Default::default();
    for r in got.iter().filter(|r| r.body["type"] == "payment.closed") {
        let trade = r.body["payment_id"].as_str().unwrap_or("").to_string();
        per_trade
            .entry(trade)
            .or_default()
            .push(r.webhook_id.clone());
    }

    for (i, id) in ids.iter().enumerate() {
        let (status, p) = fleet::call(
            &client,
            std::slice::from_ref(&bases[i % bases.len()]),
            reqwest::Method::GET,
            &format!("/v1/sandbox/payments/{id}"),
            None,
            None,
        )
        .await;
        assert_eq!(status, 200, "{p}");
        assert_eq!(
            (p["status"].as_str(), p["close_reason"].as_str()),
            (Some("TRADE_CLOSED"), Some("expired")),
            "{p:#}"
        );
        let events = p["events"].as_array().expect("events");
        assert_eq!(events.len(), 1, "one event, the close: {p:#}");
        assert_eq!(events[0]["kind"], "closed", "{p:#}");
        // The trade as stored is the one whose close was sent: a close written over another
        // (a lost update) would show a notify id that was never delivered.
        let stored_close = events[0]["notify_id"].as_str().unwrap_or("").to_string();
        assert_eq!(
            per_trade.get(id),
            Some(&vec![stored_close]),
            "trade {id}: the close delivered is the close stored: {p:#}"
        );
    }

    let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    let row = db
        .query_one(
            "SELECT count(*), count(DISTINCT n.payload::jsonb->>'payment_id'),
                    count(*) FILTER (WHERE d.status = 'succeeded')
             FROM notifications n JOIN deliveries d ON d.notification_seq = n.seq
             WHERE n.event_type = 'payment.closed'",
            &[],
        )
        .await
        .expect("count the close notifications");
    let (stored, trades, delivered): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(
        (stored, trades, delivered),
        (TRADES as i64, TRADES as i64, TRADES as i64),
        "close notifications stored, trades they are for, deliveries succeeded"
    );

    for n in nodes.iter_mut() {
        n.kill9().await;
    }
    assert_eq!(per_trade.len(), TRADES, "every trade's close arrived");
    for id in &ids {
        assert_eq!(
            per_trade.get(id).map(Vec::len),
            Some(1),
            "trade {id}: close notifications received {:?}",
            per_trade.get(id)
        );
    }
    assert_eq!(got.len(), TRADES, "nothing but the closes, each once");
}

/// Trades whose node died before their deadline: their creation woke only that node's
/// timer, and the other node's timer had found no deadline at all. The live node reads the
/// deadlines again at least once a lease, so it closes every trade within its unpaid timeout
/// plus the lease length, each once (one close event, one close notification).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sandbox_trades_of_a_dead_node_close_within_timeout_plus_lease_once() {
    const TRADES: usize = 12;
    const TIMEOUT_MS: i64 = 4_000;
    const LEASE_MS: i64 = 3_000;
    // What a timer pass may add after it wakes: reading the due trades and closing them
    // one by one on a shared 2-core test machine.
    const SLACK_MS: i64 = 1_500;
    let url = herald_pgtest::database();
    let rx = fleet::Recorder::start().await;
    let args = [
        "--sandbox",
        "--sandbox-unpaid-timeout",
        "4s",
        "--lease",
        "3",
    ];
    // The survivor starts first: its timer reads an empty table and sleeps.
    let mut survivor = Node::start(&url, fleet::free_port(), &args).await;
    let mut doomed = Node::start(&url, fleet::free_port(), &args).await;
    let client = reqwest::Client::new();
    let doomed_base = vec![doomed.url()];
    let (status, app) = fleet::call(
        &client,
        &doomed_base,
        reqwest::Method::POST,
        "/v1/apps",
        Some(json!({"name": "shop", "profile": "standard-webhooks"})),
        None,
    )
    .await;
    assert_eq!(status, 201, "{app}");
    let app_id = app["id"].as_str().expect("app id").to_string();
    let started = Instant::now();
    let mut ids = Vec::new();
    for i in 0..TRADES {
        let (status, p) = fleet::call(
            &client,
            &doomed_base,
            reqwest::Method::POST,
            "/v1/sandbox/payments",
            Some(json!({"app_id": app_id, "out_trade_no": format!("D-{i}"),
                    "amount": 100 + i, "subject": "gum", "notify_url": rx.url})),
            None,
        )
        .await;
        assert_eq!(status, 201, "{p}");
        ids.push(p["payment_id"].as_str().expect("payment id").to_string());
    }
    doomed.kill9().await;
    assert!(
        started.elapsed() < Duration::from_millis(TIMEOUT_MS as u64),
        "the creating node died before the first deadline"
    );

    let closes = |got: &[fleet::Recorded]| {
        got.iter()
            .filter(|r| r.body["type"] == "payment.closed")
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while closes(rx.received().as_slice()) < TRADES {
        assert!(
            Instant::now() < deadline,
            "{} of {TRADES} close notifications arrived in 30 s",
            closes(rx.received().as_slice())
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Room for a second close to arrive, were one committed.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    let rows = db
        .query(
            "SELECT id, doc::jsonb->>'state', (doc::jsonb->>'expires_at')::bigint,
                    (doc::jsonb->>'closed_at')::bigint, jsonb_array_length(doc::jsonb->'events')
             FROM sandbox_payments ORDER BY id",
            &[],
        )
        .await
        .expect("read the trades");
    survivor.kill9().await;
    assert_eq!(rows.len(), TRADES);
    for row in &rows {
        let (id, state): (String, String) = (row.get(0), row.get(1));
        let (expires_at, closed_at): (i64, Option<i64>) = (row.get(2), row.get(3));
        let events: i32 = row.get(4);
        assert_eq!(state, "TRADE_CLOSED", "trade {id}");
        assert_eq!(events, 1, "trade {id}: one event, the close");
        let late = closed_at.expect("closed at") - expires_at;
        assert!(
            (0..=LEASE_MS + SLACK_MS).contains(&late),
            "trade {id} closed {late} ms after its deadline (lease {LEASE_MS} ms)"
        );
    }
    let got = rx.received();
    let mut per_trade: std::collections::HashMap<String, usize> = Default::default();
    for r in got.iter().filter(|r| r.body["type"] == "payment.closed") {
        *per_trade
            .entry(r.body["payment_id"].as_str().unwrap_or("").to_string())
            .or_default() += 1;
    }
    for id in &ids {
        assert_eq!(
            per_trade.get(id),
            Some(&1),
            "trade {id}: close notifications"
        );
    }
    assert_eq!(got.len(), TRADES, "nothing but the closes, each once");
}
