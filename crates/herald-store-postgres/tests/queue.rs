//! What only several nodes on one PostgreSQL database show: two `PgStore`s (two nodes) on
//! one fresh database of this process's throwaway cluster, claiming, completing, rescuing
//! and hinting against each other.
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use herald_protocols::Credentials;
use herald_store::model::*;
use herald_store::queue::*;
use herald_store::{AdminStore, EventType, MetaStore, Queue};
use herald_store_postgres::PgStore;

const T0: UnixMillis = UnixMillis::new(1_700_000_000_000);
const LEASE: std::time::Duration = std::time::Duration::from_secs(30);

fn ms(n: u64) -> std::time::Duration {
    std::time::Duration::from_millis(n)
}

/// Two stores (as two nodes would have) on one fresh database, and its URL.
async fn two_stores() -> (PgStore, PgStore, String) {
    let url = herald_pgtest::database();
    let a = PgStore::connect(&url).await.expect("connect a");
    let b = PgStore::connect(&url).await.expect("connect b");
    (a, b, url)
}

async fn app(store: &PgStore) -> App {
    store
        .create_app(herald_store::conformance::new_app("shop", T0))
        .await
        .expect("create app")
}

async fn endpoint(store: &PgStore, app_id: &str, ordered: bool) -> Endpoint {
    store
        .create_endpoint(NewEndpoint {
            app_id: app_id.into(),
            url: "https://a.example/hook".parse().unwrap(),
            event_types: None,
            retry: None,
            ack: None,
            max_in_flight: 8,
            ordered,
            enabled: true,
            timeout_ms: Some(2_500),
            now: T0,
        })
        .await
        .expect("create endpoint")
}

fn notification(app_id: &str, notify_url: Option<&str>) -> NewNotification {
    NewNotification {
        app_id: app_id.into(),
        event_type: "trade.success".parse().unwrap(),
        payload: r#"{"amount": 100}"#.into(),
        notify_url: notify_url.map(|u| u.parse().unwrap()),
        idempotency_key: None,
        order_key: None,
        now: T0,
    }
}

async fn node(store: &PgStore, name: &str, now: UnixMillis) -> NodeId {
    let node: NodeId = Arc::from(name);
    store
        .register_node(
            LeaseParams {
                node: node.clone(),
                now,
                lease: LEASE,
            },
            true,
        )
        .await
        .expect("register");
    node
}

/// Renews `node`'s lease at `now` on `store`.
async fn renew(store: &PgStore, node: &NodeId, now: UnixMillis) -> Lease {
    store
        .renew_lease(LeaseParams {
            node: node.clone(),
            now,
            lease: LEASE,
        })
        .await
        .expect("renew")
}

/// A plain connection to the database at `url`, for what the store does not show.
async fn raw_client(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
}

async fn claim(
    store: &PgStore,
    node: &NodeId,
    now: UnixMillis,
    limit: usize,
) -> Vec<Arc<ClaimedDelivery>> {
    store
        .claim(ClaimParams {
            node: node.clone(),
            now,
            horizon: now + ms(60_000),
            limit,
        })
        .await
        .expect("claim")
}

async fn complete(
    store: &PgStore,
    node: &NodeId,
    job: &Arc<ClaimedDelivery>,
    outcome: AttemptOutcome,
    now: UnixMillis,
) -> Completed {
    store
        .complete(CompleteParams {
            node: node.clone(),
            report: AttemptReport {
                job: job.clone(),
                attempt: Attempt {
                    n: job.attempts + 1,
                    at: now,
                    duration_ms: 5,
                    status_code: Some(if outcome == AttemptOutcome::Succeeded {
                        200
                    } else {
                        500
                    }),
                    // NUL cannot be stored in PostgreSQL text: the driver replaces it.
                    response: Some("ok\0".into()),
                    error_class: None,
                    error: None,
                },
                outcome,
            },
            now,
            horizon: now + ms(60_000),
        })
        .await
        .expect("complete")
}

async fn next_hint(hints: &mut HintReceiver, want: impl Fn(&Hint) -> bool) -> Hint {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let hint = tokio::time::timeout_at(deadline, hints.recv())
            .await
            .expect("the hint within 20 s")
            .expect("hints open");
        if want(&hint) {
            return hint;
        }
        eprintln!("skipped {hint:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_never_claim_the_same_delivery_under_concurrency() {
    let (a, b, _) = two_stores().await;
    let (a, b) = (Arc::new(a), Arc::new(b));
    let ap = app(&a).await;
    // Fan-out deliveries to three endpoints and notify_url deliveries, 300 in all.
    for _ in 0..3 {
        endpoint(&a, &ap.id, false).await;
    }
    let mut all = HashSet::new();
    for i in 0..75 {
        let url = format!("https://merchant.example/{i}");
        for n in [
            a.create_notification(notification(&ap.id, None))
                .await
                .unwrap(),
            b.create_notification(notification(&ap.id, Some(&url)))
                .await
                .unwrap(),
        ] {
            all.extend(n.deliveries.into_iter().map(|d| d.id));
        }
    }
    assert_eq!(all.len(), 300);
    let mut tasks = Vec::new();
    for (i, store) in [a.clone(), b.clone(), a.clone(), b.clone()]
        .into_iter()
        .enumerate()
    {
        tasks.push(tokio::spawn(async move {
            // Two engines per store, each its own node.
            let me = node(&store, &format!("node_{i}"), T0).await;
            let mut mine = Vec::new();
            let mut idle = 0;
            while idle < 3 {
                let jobs = claim(&store, &me, T0, 7).await;
                if jobs.is_empty() {
                    idle += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                idle = 0;
                for job in jobs {
                    let done =
                        complete(&store, &me, &job, AttemptOutcome::Succeeded, T0 + ms(1)).await;
                    assert!(
                        done.applied,
                        "{} was claimed by {me}, so its outcome applies",
                        job.id
                    );
                    mine.push(job.id.clone());
                }
            }
            mine
        }));
    }
    let mut seen = HashSet::new();
    for t in tasks {
        for id in t.await.expect("claimer") {
            assert!(seen.insert(id.clone()), "{id} was claimed twice");
        }
    }
    assert_eq!(seen, all, "every delivery was claimed exactly once");
    let d = a
        .get_delivery(seen.iter().next().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.delivery.status, DeliveryStatus::Succeeded);
    assert_eq!(d.attempts.len(), 1);
    assert_eq!(d.attempts[0].response.as_deref(), Some("ok\u{fffd}"));
}

#[tokio::test]
async fn only_one_live_node_at_a_time_holds_an_endpoint() {
    let (a, b, _) = two_stores().await;
    let ap = app(&a).await;
    let e1 = endpoint(&a, &ap.id, false).await;
    for _ in 0..4 {
        a.create_notification(notification(&ap.id, None))
            .await
            .unwrap();
    }
    let na = node(&a, "node_a", T0).await;
    let nb = node(&b, "node_b", T0).await;
    let held = claim(&a, &na, T0, 2).await;
    assert_eq!(held.len(), 2);
    assert_eq!(held[0].endpoint.as_ref().unwrap().id, e1.id);
    assert_eq!(held[0].endpoint.as_ref().unwrap().timeout_ms, Some(2_500));
    // b may not take the endpoint's other deliveries while a holds some.
    assert!(claim(&b, &nb, T0, 10).await.is_empty());
    // a may take more of it.
    let third = claim(&a, &na, T0, 1).await;
    assert_eq!(third.len(), 1);
    for job in &held {
        complete(&a, &na, job, AttemptOutcome::Succeeded, T0 + ms(1)).await;
    }
    assert!(claim(&b, &nb, T0, 10).await.is_empty(), "a still holds one");
    // a parks the one it holds (no attempt spent): then b may take the endpoint.
    let released = a
        .release(ReleaseParams {
            node: na.clone(),
            jobs: vec![(third[0].seq, third[0].attempts), (held[0].seq, 0)],
            next_at: Some(T0 + ms(500)),
            now: T0,
        })
        .await
        .unwrap();
    assert_eq!(
        released,
        vec![third[0].seq],
        "the ended one is not a's any more"
    );
    let d = a.get_delivery(&third[0].id).await.unwrap().unwrap();
    assert_eq!(d.delivery.next_attempt_at, Some(T0 + ms(500)));
    assert_eq!(d.delivery.attempts, 0, "parking spends no attempt");
    let taken = claim(&b, &nb, T0, 10).await;
    assert_eq!(
        taken.len(),
        2,
        "the fourth (due) and the parked third (due by the horizon)"
    );
    assert!(
        claim(&a, &na, T0, 10).await.is_empty(),
        "now b holds the endpoint"
    );
}

/// The endpoints (distinct) of some claimed deliveries.
fn endpoints_of(jobs: &[Arc<ClaimedDelivery>]) -> Vec<String> {
    let mut ids: Vec<String> = jobs
        .iter()
        .map(|j| j.endpoint.as_ref().expect("an endpoint").id.clone())
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

#[tokio::test]
async fn two_live_nodes_each_claim_their_share_of_the_endpoints() {
    let (a, b, _) = two_stores().await;
    let ap = app(&a).await;
    let e1 = endpoint(&a, &ap.id, false).await;
    let e2 = endpoint(&a, &ap.id, false).await;
    for _ in 0..3 {
        a.create_notification(notification(&ap.id, None))
            .await
            .unwrap();
    }
    let na = node(&a, "node_a", T0).await;
    let nb = node(&b, "node_b", T0).await;
    // Two endpoints with work over two live nodes: one each, however much a may take.
    let first = claim(&a, &na, T0, 10).await;
    assert_eq!(first.len(), 3, "all of one endpoint's deliveries");
    let mine = endpoints_of(&first);
    assert_eq!(mine.len(), 1, "a claims from its share only: {mine:?}");
    let second = claim(&b, &nb, T0, 10).await;
    assert_eq!(second.len(), 3);
    let theirs = endpoints_of(&second);
    assert_eq!(theirs.len(), 1);
    assert_ne!(mine, theirs, "b takes the other endpoint");
    let mut both = [mine[0].clone(), theirs[0].clone()];
    both.sort();
    let mut want = [e1.id.clone(), e2.id.clone()];
    want.sort();
    assert_eq!(both, want);
    // Neither takes the other's endpoint: a new notification's deliveries go to their
    // endpoint's holder.
    a.create_notification(notification(&ap.id, None))
        .await
        .unwrap();
    let more_a = claim(&a, &na, T0, 10).await;
    let more_b = claim(&b, &nb, T0, 10).await;
    assert_eq!(endpoints_of(&more_a), mine);
    assert_eq!(endpoints_of(&more_b), theirs);
    assert!(claim(&a, &na, T0, 10).await.is_empty());
    assert!(claim(&b, &nb, T0, 10).await.is_empty());
}

/// An app with two endpoints and three notifications (three deliveries each), then nodes
/// `node_a` on `a` and `node_b` on `b`.
async fn two_endpoints_with_work(a: &PgStore, b: &PgStore) -> (NodeId, NodeId) {
    let ap = app(a).await;
    endpoint(a, &ap.id, false).await;
    endpoint(a, &ap.id, false).await;
    for _ in 0..3 {
        a.create_notification(notification(&ap.id, None))
            .await
            .unwrap();
    }
    (node(a, "node_a", T0).await, node(b, "node_b", T0).await)
}

#[tokio::test]
async fn a_node_that_left_holding_nothing_no_longer_shrinks_the_others_share() {
    let (a, b, url) = two_stores().await;
    let (na, nb) = two_endpoints_with_work(&a, &b).await;
    // a took its share and gave it back (a stopping engine's release): it holds nothing.
    let mine = claim(&a, &na, T0, 10).await;
    assert_eq!(
        endpoints_of(&mine).len(),
        1,
        "a's share while both are live"
    );
    let jobs = mine.iter().map(|j| (j.seq, j.attempts)).collect();
    let released = a
        .release(ReleaseParams {
            node: na.clone(),
            jobs,
            next_at: None,
            now: T0,
        })
        .await
        .unwrap();
    assert_eq!(released.len(), 3);
    assert!(
        a.leave(na.clone()).await.unwrap(),
        "a held nothing: forgotten"
    );
    let live: i64 = raw_client(&url)
        .await
        .query_one("SELECT count(*) FROM nodes", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(live, 1, "only b is left in the nodes table");
    // Well within a's lease, b alone is the fleet: both endpoints are its share.
    let all = claim(&b, &nb, T0 + ms(1_000), 10).await;
    assert_eq!(all.len(), 6);
    assert_eq!(endpoints_of(&all).len(), 2, "b takes both endpoints");
    assert_eq!(
        renew(&a, &na, T0 + ms(1_000)).await,
        Lease::Lost,
        "a left: a late renewal finds no lease"
    );
}

#[tokio::test]
async fn a_node_that_leaves_while_holding_work_keeps_its_lease_and_its_share() {
    let (a, b, _) = two_stores().await;
    let (na, nb) = two_endpoints_with_work(&a, &b).await;
    let mine = claim(&a, &na, T0, 10).await;
    assert_eq!(mine.len(), 3);
    assert!(!a.leave(na.clone()).await.unwrap(), "a still holds work");
    // b still counts a as live and claims only its own share, never a's deliveries.
    let theirs = claim(&b, &nb, T0 + ms(1_000), 10).await;
    assert_eq!(theirs.len(), 3);
    assert_ne!(endpoints_of(&theirs), endpoints_of(&mine));
    assert_eq!(renew(&a, &na, T0 + ms(1_000)).await, Lease::Held);
}

#[tokio::test]
async fn a_node_above_its_share_hands_an_endpoint_over_once_it_finished_its_part() {
    let (a, b, _) = two_stores().await;
    let ap = app(&a).await;
    endpoint(&a, &ap.id, false).await;
    endpoint(&a, &ap.id, false).await;
    for _ in 0..4 {
        a.create_notification(notification(&ap.id, None))
            .await
            .unwrap();
    }
    // Alone, a's share is both endpoints: the first notification's two deliveries.
    let na = node(&a, "node_a", T0).await;
    let first = claim(&a, &na, T0, 2).await;
    assert_eq!(endpoints_of(&first).len(), 2, "alone, a claims from both");
    // b joins: a's share is one endpoint now, so it takes more of one only; b cannot take
    // the other while a still holds a delivery of it.
    let nb = node(&b, "node_b", T0).await;
    let kept = claim(&a, &na, T0, 10).await;
    assert_eq!(kept.len(), 3, "the rest of one endpoint");
    let kept_endpoint = endpoints_of(&kept);
    assert_eq!(kept_endpoint.len(), 1);
    assert!(claim(&b, &nb, T0, 10).await.is_empty(), "a holds both");
    // a finishes what it held of the other endpoint: b takes that endpoint over.
    let other = first
        .iter()
        .find(|j| j.endpoint.as_ref().unwrap().id != kept_endpoint[0])
        .expect("a held one of the other endpoint");
    complete(&a, &na, other, AttemptOutcome::Succeeded, T0 + ms(1)).await;
    let taken = claim(&b, &nb, T0, 10).await;
    assert_eq!(taken.len(), 3, "the rest of the other endpoint");
    assert_eq!(
        endpoints_of(&taken),
        vec![other.endpoint.as_ref().unwrap().id.clone()]
    );
    assert!(
        claim(&a, &na, T0, 10).await.is_empty(),
        "nothing left for a"
    );
}

#[tokio::test]
async fn rescue_releases_what_a_forgotten_node_holds_and_leaves_live_holders_alone() {
    let (a, b, url) = two_stores().await;
    let ap = app(&a).await;
    endpoint(&a, &ap.id, false).await;
    endpoint(&a, &ap.id, false).await;
    a.create_notification(notification(&ap.id, None))
        .await
        .unwrap();
    let na = node(&a, "node_a", T0).await;
    let nb = node(&b, "node_b", T0).await;
    // Two endpoints with work, two nodes: each takes its share, one endpoint.
    let held_a = claim(&a, &na, T0, 10).await;
    let held_b = claim(&b, &nb, T0, 10).await;
    assert_eq!((held_a.len(), held_b.len()), (1, 1));
    let live = held_a[0].endpoint.as_ref().unwrap().id.clone();
    let other = held_b[0].endpoint.as_ref().unwrap().id.clone();
    // Forget b entirely (its row is gone, as after an operator's cleanup): nobody renews
    // b, so what it holds must come free at once, lease or not.
    let client = raw_client(&url).await;
    client
        .execute("DELETE FROM nodes WHERE id = 'node_b'", &[])
        .await
        .unwrap();
    assert_eq!(a.rescue(T0 + ms(1_000)).await.unwrap(), 1);
    let rows = client
        .query(
            "SELECT endpoint_id, locked_by FROM deliveries ORDER BY endpoint_id",
            &[],
        )
        .await
        .unwrap();
    let holders: Vec<(String, Option<String>)> =
        rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let mut expected = vec![(live, Some("node_a".to_string())), (other, None)];
    expected.sort();
    assert_eq!(holders, expected, "a keeps its own; b's is released");
    assert_eq!(
        a.rescue(T0 + ms(2_000)).await.unwrap(),
        0,
        "nothing more to release while a lives"
    );
}

/// The holder rows (`endpoint_holders`) that name `endpoints`, as `(endpoint, node)`;
/// endpoints without a row are left out.
async fn holder_rows(url: &str, endpoints: &[&str]) -> Vec<(String, Option<String>)> {
    raw_client(url)
        .await
        .query(
            "SELECT endpoint_id, node_id FROM endpoint_holders
             WHERE endpoint_id = ANY($1) ORDER BY endpoint_id",
            &[&endpoints],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test]
async fn rescue_clears_the_holder_rows_of_the_nodes_it_finds_dead() {
    let (a, b, url) = two_stores().await;
    let ap = app(&a).await;
    let ep = endpoint(&a, &ap.id, false).await;
    a.create_notification(notification(&ap.id, None))
        .await
        .unwrap();
    let na = node(&a, "node_a", T0).await;
    let nb = node(&b, "node_b", T0).await;
    assert_eq!(claim(&a, &na, T0, 10).await.len(), 1);
    assert_eq!(
        holder_rows(&url, &[&ep.id]).await,
        vec![(ep.id.clone(), Some("node_a".to_string()))]
    );
    // b lives on; a's lease (T0 + 30 s) runs out.
    renew(&b, &nb, T0 + ms(20_000)).await;
    assert_eq!(b.rescue(T0 + ms(31_000)).await.unwrap(), 1);
    assert_eq!(
        holder_rows(&url, &[&ep.id]).await,
        vec![(ep.id.clone(), None)],
        "the dead node's row names nobody"
    );
    assert_eq!(claim(&b, &nb, T0 + ms(31_000), 10).await.len(), 1);
    assert_eq!(
        holder_rows(&url, &[&ep.id]).await,
        vec![(ep.id.clone(), Some("node_b".to_string()))]
    );
}

#[tokio::test]
async fn deleting_an_endpoint_or_its_app_deletes_the_endpoints_holder_rows() {
    let (a, _b, url) = two_stores().await;
    let ap = app(&a).await;
    let one = endpoint(&a, &ap.id, false).await;
    let two = endpoint(&a, &ap.id, false).await;
    a.create_notification(notification(&ap.id, None))
        .await
        .unwrap();
    let na = node(&a, "node_a", T0).await;
    assert_eq!(claim(&a, &na, T0, 10).await.len(), 2);
    assert_eq!(holder_rows(&url, &[&one.id, &two.id]).await.len(), 2);
    assert!(a.delete_endpoint(&ap.id, &one.id, T0).await.unwrap());
    assert_eq!(
        holder_rows(&url, &[&one.id, &two.id]).await,
        vec![(two.id.clone(), Some("node_a".to_string()))],
        "the deleted endpoint's row is gone, the other's kept"
    );
    assert!(a.delete_app(&ap.id, T0).await.unwrap().is_some());
    assert!(holder_rows(&url, &[&one.id, &two.id]).await.is_empty());
}

#[tokio::test]
async fn a_dead_nodes_work_is_rescued_and_its_late_outcomes_change_nothing() {
    let (a, b, _) = two_stores().await;
    let ap = app(&a).await;
    endpoint(&a, &ap.id, false).await;
    let n = a
        .create_notification(notification(&ap.id, None))
        .await
        .unwrap();
    let na = node(&a, "node_a", T0).await;
    let nb = node(&b, "node_b", T0).await;
    let held = claim(&a, &na, T0, 10).await;
    assert_eq!(held.len(), 1);
    // Before a's lease ends, nothing is rescued and b gets nothing.
    renew(&b, &nb, T0 + ms(20_000)).await;
    assert_eq!(b.rescue(T0 + ms(20_000)).await.unwrap(), 0);
    assert!(claim(&b, &nb, T0 + ms(20_000), 10).await.is_empty());
    // a's lease (T0 + 30 s) ran out: b rescues and takes over.
    assert_eq!(b.rescue(T0 + ms(31_000)).await.unwrap(), 1);
    let taken = claim(&b, &nb, T0 + ms(31_000), 10).await;
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].id, n.deliveries[0].id);
    let lost = renew(&a, &na, T0 + ms(32_000)).await;
    assert_eq!(lost, Lease::Lost);
    // a's late outcome is stale: nothing changes, no attempt is recorded.
    let late = complete(&a, &na, &held[0], AttemptOutcome::Failed, T0 + ms(33_000)).await;
    assert!(!late.applied);
    assert_eq!(late.status, Some(DeliveryStatus::Pending));
    let d = a.get_delivery(&n.deliveries[0].id).await.unwrap().unwrap();
    assert_eq!(d.delivery.status, DeliveryStatus::Pending);
    assert!(d.attempts.is_empty());
    // b's outcome applies; a retry within the horizon stays held by b.
    let done = complete(
        &b,
        &nb,
        &taken[0],
        AttemptOutcome::Retry {
            next_at: T0 + ms(40_000),
        },
        T0 + ms(34_000),
    )
    .await;
    assert!(done.applied);
    let again = done.held.expect("still held by b");
    assert_eq!((again.attempts, again.next_at), (1, T0 + ms(40_000)));
    assert!(claim(
        &a,
        &node(&a, "node_a2", T0 + ms(35_000)).await,
        T0 + ms(41_000),
        10
    )
    .await
    .is_empty());
    // An outcome with an old attempt count is stale too.
    assert!(
        !complete(
            &b,
            &nb,
            &taken[0],
            AttemptOutcome::Succeeded,
            T0 + ms(41_000)
        )
        .await
        .applied
    );
    assert!(
        complete(&b, &nb, &again, AttemptOutcome::Succeeded, T0 + ms(41_000))
            .await
            .applied
    );
}

#[tokio::test]
async fn an_ordered_successor_is_claimed_with_the_outcome_that_frees_it() {
    let (a, b, _) = two_stores().await;
    let ap = app(&a).await;
    endpoint(&a, &ap.id, true).await;
    let n1 = a
        .create_notification(notification(&ap.id, None))
        .await
        .unwrap();
    let n2 = b
        .create_notification(notification(&ap.id, None))
        .await
        .unwrap();
    let na = node(&a, "node_a", T0).await;
    let nb = node(&b, "node_b", T0).await;
    let first = claim(&a, &na, T0, 10).await;
    assert_eq!(first.len(), 1, "only the head of the order");
    assert_eq!(first[0].id, n1.deliveries[0].id);
    assert!(claim(&b, &nb, T0, 10).await.is_empty());
    let retried = complete(
        &a,
        &na,
        &first[0],
        AttemptOutcome::Retry {
            next_at: T0 + ms(5_000),
        },
        T0 + ms(1),
    )
    .await;
    assert!(retried.successor.is_none(), "a retry does not end it");
    let done = complete(
        &a,
        &na,
        &retried.held.unwrap(),
        AttemptOutcome::Succeeded,
        T0 + ms(6_000),
    )
    .await;
    let next = done.successor.expect("the successor, claimed for a");
    assert_eq!(next.id, n2.deliveries[0].id);
    assert!(
        claim(&b, &nb, T0 + ms(6_000), 10).await.is_empty(),
        "a holds it"
    );
}

#[tokio::test]
async fn hints_reach_the_other_node() {
    let (a, b, _) = two_stores().await;
    let nb = node(&b, "node_b", T0).await;
    let mut hints = b.hints(nb.clone());
    let ap = app(&a).await;
    let ep = endpoint(&a, &ap.id, false).await;
    let n = a
        .create_notification(notification(&ap.id, None))
        .await
        .unwrap();
    next_hint(&mut hints, |h| matches!(h, Hint::Work)).await;
    let jobs = claim(&b, &nb, T0, 10).await;
    assert_eq!(jobs[0].id, n.deliveries[0].id);
    assert_eq!(jobs[0].endpoint.as_ref().unwrap().max_in_flight, 8);

    a.update_endpoint(
        &ap.id,
        &ep.id,
        EndpointPatch {
            max_in_flight: Some(3),
            ..Default::default()
        },
        T0 + ms(1),
    )
    .await
    .unwrap();
    let Hint::EndpointChanged(ctx) =
        next_hint(&mut hints, |h| matches!(h, Hint::EndpointChanged(_))).await
    else {
        unreachable!()
    };
    assert_eq!((ctx.max_in_flight, ctx.deleted), (3, false));

    let mut creds = ap.credentials.clone();
    if let Credentials::StandardWebhooks(k) = &mut creds {
        k.keys[0].secret = "whsec_dGVzdHNlY3JldHRlc3RzZWNyZXQ=".into();
    }
    a.set_app_credentials(&ap.id, creds.clone()).await.unwrap();
    let Hint::AppChanged(app_ctx) =
        next_hint(&mut hints, |h| matches!(h, Hint::AppChanged(_))).await
    else {
        unreachable!()
    };
    assert_eq!(app_ctx.credentials, creds);

    // A manual retry of a held delivery revokes it from its holder.
    a.retry_delivery(&jobs[0].id, T0 + ms(2)).await.unwrap();
    let Hint::Revoked(seqs) = next_hint(&mut hints, |h| matches!(h, Hint::Revoked(_))).await else {
        unreachable!()
    };
    assert_eq!(seqs, vec![jobs[0].seq]);
    let stale = complete(&b, &nb, &jobs[0], AttemptOutcome::Succeeded, T0 + ms(3)).await;
    assert!(!stale.applied, "no longer held by b");

    // Deleting the endpoint cancels what b holds, and says so.
    let again = claim(&b, &nb, T0 + ms(2), 10).await;
    assert_eq!(again.len(), 1);
    assert!(a.delete_endpoint(&ap.id, &ep.id, T0 + ms(4)).await.unwrap());
    let (mut revoked, mut deleted) = (None, None);
    while revoked.is_none() || deleted.is_none() {
        match next_hint(&mut hints, |h| {
            matches!(h, Hint::Revoked(_) | Hint::EndpointChanged(_))
        })
        .await
        {
            Hint::Revoked(seqs) => revoked = Some(seqs),
            Hint::EndpointChanged(e) if e.deleted => deleted = Some(e),
            _ => {}
        }
    }
    assert_eq!(revoked, Some(vec![again[0].seq]));
    assert_eq!(deleted.map(|e| e.id.clone()), Some(ep.id.clone()));
}

/// Ends the sessions on `url`'s database that match `which` (SQL on `pg_stat_activity`).
async fn terminate(url: &str, which: &str) {
    let db = url.rsplit('/').next().unwrap_or_default();
    let admin_url = url.replace(&format!("/{db}"), "/postgres");
    let (client, conn) = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls)
        .await
        .expect("admin connection");
    tokio::spawn(conn);
    client
        .execute(
            &format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE datname = '{db}' AND pid <> pg_backend_pid() AND {which}"
            ),
            &[],
        )
        .await
        .expect("terminate");
}

#[tokio::test]
async fn the_hint_listener_reconnects_after_losing_its_connection() {
    let (a, b, url) = two_stores().await;
    let nb = node(&b, "node_b", T0).await;
    let mut hints = b.hints(nb.clone());
    let ap = app(&a).await;
    let ep = endpoint(&a, &ap.id, false).await;
    a.create_notification(notification(&ap.id, None))
        .await
        .unwrap();
    assert_eq!(claim(&b, &nb, T0, 10).await.len(), 1);
    while hints.try_recv().is_ok() {}
    terminate(&url, "application_name = 'herald-hints'").await;
    // After reconnecting it says "work" (anything may have been missed) and announces the
    // settings of what its node holds (they may have changed meanwhile)...
    next_hint(&mut hints, |h| matches!(h, Hint::Work)).await;
    next_hint(
        &mut hints,
        |h| matches!(h, Hint::AppChanged(c) if c.id == ap.id),
    )
    .await;
    next_hint(
        &mut hints,
        |h| matches!(h, Hint::EndpointChanged(e) if e.id == ep.id && !e.deleted),
    )
    .await;
    // ...and hears new hints again.
    a.set_app_credentials(&ap.id, ap.credentials.clone())
        .await
        .unwrap();
    next_hint(
        &mut hints,
        |h| matches!(h, Hint::AppChanged(c) if c.id == ap.id),
    )
    .await;
}

#[tokio::test]
async fn ping_fails_while_the_database_refuses_connections_and_recovers() {
    let url = herald_pgtest::database();
    let store = PgStore::connect(&url).await.expect("connect");
    store.ping().await.expect("healthy");
    let ap = app(&store).await;
    let me = node(&store, "node_a", T0).await;
    let mut hints = store.hints(me.clone());
    let db = url.rsplit('/').next().unwrap().to_string();
    let admin_url = url.replace(&format!("/{db}"), "/postgres");
    let (admin, conn) = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls)
        .await
        .expect("admin connection");
    tokio::spawn(conn);
    admin
        .batch_execute(&format!("ALTER DATABASE {db} ALLOW_CONNECTIONS false"))
        .await
        .unwrap();
    terminate(&url, "TRUE").await;
    let err = store.ping().await.expect_err("unreachable");
    assert!(
        matches!(err, herald_store::StoreError::Backend { .. }),
        "{err:?}"
    );
    let err = store.get_app("app_x").await.expect_err("no connection");
    assert!(
        matches!(err, herald_store::StoreError::Backend { .. }),
        "{err:?}"
    );
    let err = store
        .create_notification(notification(&ap.id, Some("https://m.example/n")))
        .await
        .expect_err("nothing is acknowledged that was not stored");
    assert!(
        matches!(err, herald_store::StoreError::Backend { .. }),
        "{err:?}"
    );
    admin
        .batch_execute(&format!("ALTER DATABASE {db} ALLOW_CONNECTIONS true"))
        .await
        .unwrap();
    store.ping().await.expect("healthy again");
    // Writes, claims and hints work again (the listener reconnected by itself).
    next_hint(&mut hints, |h| matches!(h, Hint::Work)).await;
    let created = store
        .create_notification(notification(&ap.id, Some("https://m.example/n")))
        .await
        .expect("stored after the outage");
    // Alone on its database, the node gets the new delivery claimed at birth.
    let Hint::Claimed(jobs) = next_hint(&mut hints, |h| matches!(h, Hint::Claimed(_))).await else {
        unreachable!("the filter takes only claimed jobs")
    };
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].id, created.deliveries[0].id);
    assert!(claim(&store, &me, T0, 10).await.is_empty(), "held already");
}

#[tokio::test]
async fn concurrent_idempotent_creates_store_one_notification() {
    let (a, b, _) = two_stores().await;
    let ap = app(&a).await;
    let mk = || NewNotification {
        idempotency_key: Some("order-1".parse().unwrap()),
        ..notification(&ap.id, Some("https://merchant.example/n"))
    };
    let (x, y) = tokio::join!(a.create_notification(mk()), b.create_notification(mk()));
    let (x, y) = (x.unwrap(), y.unwrap());
    assert_eq!(x.notification.id, y.notification.id);
    assert!(x.replayed != y.replayed || (x.replayed && y.replayed));
    assert_eq!(x.deliveries, y.deliveries);
}

#[tokio::test]
async fn migrate_alone_is_idempotent_and_connect_rejects_bad_urls() {
    let url = herald_pgtest::database();
    let (r1, r2) = tokio::join!(
        herald_store_postgres::migrate(&url),
        herald_store_postgres::migrate(&url)
    );
    r1.unwrap();
    r2.unwrap();
    PgStore::connect(&url).await.expect("connect after migrate");
    assert!(PgStore::connect("postgres://h@127.0.0.1:1/db?sslmode=nope")
        .await
        .is_err());
    let err = PgStore::connect("postgres://herald@127.0.0.1:1/db")
        .await
        .err()
        .expect("refused");
    assert!(
        matches!(err, herald_store::StoreError::Backend { .. }),
        "{err:?}"
    );
}

/// 32 concurrent producers: every notification lands once with its deliveries (and the
/// rate is printed, for a feel of the write path: `--nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_all_land() {
    let (a, _b, _) = two_stores().await;
    let a = Arc::new(a);
    let ap = app(&a).await;
    endpoint(&a, &ap.id, false).await;
    endpoint(&a, &ap.id, false).await;
    const PRODUCERS: usize = 32;
    const EACH: usize = 40;
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..PRODUCERS {
        let (a, app_id) = (a.clone(), ap.id.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..EACH {
                let n = a
                    .create_notification(notification(&app_id, None))
                    .await
                    .unwrap();
                assert_eq!(n.deliveries.len(), 2);
            }
        }));
    }
    for t in tasks {
        t.await.expect("producer");
    }
    let took = started.elapsed();
    eprintln!(
        "{} notifications ({} deliveries) in {took:?}: {:.0}/s",
        PRODUCERS * EACH,
        PRODUCERS * EACH * 2,
        (PRODUCERS * EACH) as f64 / took.as_secs_f64()
    );
    let me = node(&a, "node_a", T0).await;
    let mut claimed = 0;
    loop {
        let jobs = claim(&a, &me, T0, 500).await;
        if jobs.is_empty() {
            break;
        }
        claimed += jobs.len();
    }
    assert_eq!(claimed, PRODUCERS * EACH * 2);
}

/// A group commit reads each app (its profile and endpoints) once for all of that app's
/// notifications in the batch: with several apps in flight at once, every notification fans
/// out to its own app's endpoints, one for an unknown app is refused without failing the
/// others, and a key used twice in one batch stores one notification.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_of_several_apps_fans_each_notification_out_to_its_own_apps_endpoints() {
    let (a, _b, _) = two_stores().await;
    let a = Arc::new(a);
    let one = app(&a).await;
    let two = app(&a).await;
    let one_endpoints: HashSet<String> = [
        endpoint(&a, &one.id, false).await.id,
        endpoint(&a, &one.id, false).await.id,
    ]
    .into();
    let two_endpoint = endpoint(&a, &two.id, false).await.id;
    let mut tasks = Vec::new();
    for i in 0..90 {
        let a = a.clone();
        let app_id = match i % 3 {
            0 => one.id.clone(),
            1 => two.id.clone(),
            _ => "app_missing".to_string(),
        };
        tasks.push(tokio::spawn(async move {
            let mut n = notification(&app_id, None);
            if i < 6 {
                n.idempotency_key = Some(format!("key-{}", i % 3).parse().unwrap());
            }
            (i, a.create_notification(n).await)
        }));
    }
    let mut keyed: std::collections::HashMap<usize, Vec<String>> = Default::default();
    for t in tasks {
        let (i, r) = t.await.expect("task");
        match i % 3 {
            0 => {
                let n = r.expect("app one's notification");
                let to: HashSet<String> = n
                    .deliveries
                    .iter()
                    .filter_map(|d| d.endpoint_id.clone())
                    .collect();
                assert_eq!(to, one_endpoints, "notification {i}");
                assert_eq!(n.deliveries.len(), 2);
                if i < 6 {
                    keyed.entry(0).or_default().push(n.notification.id);
                }
            }
            1 => {
                let n = r.expect("app two's notification");
                assert_eq!(n.deliveries.len(), 1, "notification {i}");
                assert_eq!(n.deliveries[0].endpoint_id.as_deref(), Some(&*two_endpoint));
                if i < 6 {
                    keyed.entry(1).or_default().push(n.notification.id);
                }
            }
            _ => assert!(
                matches!(r, Err(herald_store::StoreError::NotFound("app"))),
                "{r:?}"
            ),
        }
    }
    for (k, ids) in &keyed {
        assert_eq!(ids.len(), 2);
        assert_eq!(ids[0], ids[1], "key-{k} names one notification");
    }
    for (ap, want) in [(&one.id, 29), (&two.id, 29)] {
        let page = a
            .list_notifications(
                ap,
                ListNotifications {
                    limit: 100,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(
            page.items.len(),
            want,
            "{ap}: 30 posted, two of them with one key"
        );
    }
}

/// Writes are group-committed: one that fails a statement (PostgreSQL text cannot hold
/// NUL) must not take the others of its batch down with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_write_does_not_fail_the_others_of_its_batch() {
    let (a, _b, _) = two_stores().await;
    let a = Arc::new(a);
    let ap = app(&a).await;
    let mut tasks = Vec::new();
    for i in 0..40 {
        let (a, app_id) = (a.clone(), ap.id.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = notification(&app_id, Some("https://merchant.example/n"));
            if i == 17 {
                // Not what the API lets through (control characters): only the
                // database refuses it, inside the batch.
                n.event_type = EventType::from_stored("bad\0type".into());
            }
            a.create_notification(n).await
        }));
    }
    let mut ok = 0;
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await.expect("task") {
            Ok(n) => {
                assert_ne!(i, 17);
                assert_eq!(n.deliveries.len(), 1);
                ok += 1;
            }
            Err(e) => {
                assert_eq!(i, 17, "{e}");
                assert!(
                    matches!(e, herald_store::StoreError::Backend { .. }),
                    "{e:?}"
                );
            }
        }
    }
    assert_eq!(ok, 39);
    let page = a
        .list_notifications(
            &ap.id,
            ListNotifications {
                limit: 100,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        page.items.len(),
        39,
        "everything acknowledged was stored, nothing else"
    );
}

/// Four nodes on two stores work a mixed load (ordered endpoints, order keys, retries)
/// concurrently: at no moment do two nodes hold deliveries of one endpoint, or two
/// deliveries of one order key run at once; in the end every delivery succeeded once.
///
/// The check keeps a registry that is a subset of what the database holds (an entry is
/// added after the claim returns and removed before the outcome is reported), so two
/// entries that clash in it clashed in the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_working_concurrently_keep_endpoints_and_order_keys_exclusive() {
    use std::collections::HashMap;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Registry {
        endpoint: HashMap<String, (String, usize)>,
        order_keys: HashSet<String>,
    }

    let (a, b, _) = two_stores().await;
    let (a, b) = (Arc::new(a), Arc::new(b));
    let ap = app(&a).await;
    for ordered in [true, false, true, false] {
        endpoint(&a, &ap.id, ordered).await;
    }
    let mut total = 0;
    for i in 0..60 {
        let store = if i % 2 == 0 { &a } else { &b };
        let fan = store
            .create_notification(notification(&ap.id, None))
            .await
            .unwrap();
        let keyed = store
            .create_notification(NewNotification {
                order_key: Some(format!("trade-{}", i % 7).parse().unwrap()),
                ..notification(&ap.id, Some("https://merchant.example/n"))
            })
            .await
            .unwrap();
        total += fan.deliveries.len() + keyed.deliveries.len();
    }
    let registry = Arc::new(Mutex::new(Registry::default()));
    let add = |reg: &Mutex<Registry>, node: &str, job: &ClaimedDelivery| {
        let mut r = reg.lock().unwrap();
        if let Some(e) = &job.endpoint {
            let entry = r
                .endpoint
                .entry(e.id.clone())
                .or_insert((node.to_string(), 0));
            assert!(
                entry.0 == node || entry.1 == 0,
                "{node} holds a delivery of {} while {} does",
                e.id,
                entry.0
            );
            *entry = (node.to_string(), entry.1 + 1);
        }
        if let Some(k) = &job.order_key {
            assert!(
                r.order_keys.insert(k.clone()),
                "two deliveries of {k} at once"
            );
        }
    };
    let remove = |reg: &Mutex<Registry>, job: &ClaimedDelivery| {
        let mut r = reg.lock().unwrap();
        if let Some(e) = &job.endpoint {
            if let Some(entry) = r.endpoint.get_mut(&e.id) {
                entry.1 -= 1;
            }
        }
        if let Some(k) = &job.order_key {
            r.order_keys.remove(k);
        }
    };
    let mut tasks = Vec::new();
    for (i, store) in [a.clone(), b.clone(), a.clone(), b.clone()]
        .into_iter()
        .enumerate()
    {
        let registry = registry.clone();
        tasks.push(tokio::spawn(async move {
            let me = node(&store, &format!("node_{i}"), T0).await;
            let mut succeeded = Vec::new();
            let mut idle = 0;
            while idle < 5 {
                let mut work: Vec<Arc<ClaimedDelivery>> = claim(&store, &me, T0, 3).await;
                if work.is_empty() {
                    idle += 1;
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    continue;
                }
                idle = 0;
                for job in &work {
                    add(&registry, &me, job);
                }
                while let Some(job) = work.pop() {
                    tokio::task::yield_now().await;
                    remove(&registry, &job);
                    // Every third first attempt fails and is retried at once.
                    let outcome = if job.attempts == 0 && job.seq % 3 == 0 {
                        AttemptOutcome::Retry { next_at: T0 }
                    } else {
                        AttemptOutcome::Succeeded
                    };
                    let done = complete(&store, &me, &job, outcome, T0).await;
                    assert!(done.applied, "{me} held {}", job.id);
                    if outcome == AttemptOutcome::Succeeded {
                        succeeded.push(job.id.clone());
                    }
                    for next in done.held.into_iter().chain(done.successor) {
                        add(&registry, &me, &next);
                        work.push(next);
                    }
                }
            }
            succeeded
        }));
    }
    let mut seen = HashSet::new();
    for t in tasks {
        for id in t.await.expect("node") {
            assert!(seen.insert(id.clone()), "{id} succeeded twice");
        }
    }
    assert_eq!(seen.len(), total, "every delivery succeeded once");
}

/// `/healthz` asks `ping`: a pool whose every connection waits on a lock must not make a
/// reachable database look unhealthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ping_answers_while_every_pooled_connection_is_busy() {
    let url = herald_pgtest::database();
    let store = Arc::new(PgStore::connect(&url).await.expect("connect"));
    let ap = app(&store).await;
    let ep = endpoint(&store, &ap.id, false).await;
    let (mut locker, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    let tx = locker.transaction().await.unwrap();
    tx.execute(
        "SELECT 1 FROM endpoints WHERE id = $1 FOR UPDATE",
        &[&ep.id],
    )
    .await
    .unwrap();
    let mut blocked = Vec::new();
    for i in 0..40u32 {
        let (store, app_id, id) = (store.clone(), ap.id.clone(), ep.id.clone());
        blocked.push(tokio::spawn(async move {
            let patch = EndpointPatch {
                max_in_flight: Some(i + 1),
                ..Default::default()
            };
            store.update_endpoint(&app_id, &id, patch, T0 + ms(1)).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    store.ping().await.expect("healthy while the pool is busy");
    tx.rollback().await.unwrap();
    for t in blocked {
        t.await
            .expect("task")
            .expect("the update ran once the lock was gone");
    }
}

/// One node drains a backlog the way an engine does, many outcomes in flight at once
/// (they are group-committed): every delivery ends succeeded with one attempt. The rate is
/// printed for a feel of the queue path (`--nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_node_drains_a_backlog_with_outcomes_in_flight_together() {
    let (a, _b, _) = two_stores().await;
    let a = Arc::new(a);
    let ap = app(&a).await;
    const N: usize = 2000;
    let creates = (0..N).map(|i| {
        let (a, app_id) = (a.clone(), ap.id.clone());
        async move {
            let url = format!("https://merchant.example/{}", i % 50);
            a.create_notification(notification(&app_id, Some(&url)))
                .await
                .unwrap()
        }
    });
    futures_util::future::join_all(creates).await;
    let me = node(&a, "node_a", T0).await;
    let started = std::time::Instant::now();
    let mut done = 0;
    loop {
        let jobs = claim(&a, &me, T0, 200).await;
        if jobs.is_empty() {
            break;
        }
        let outcomes = jobs
            .iter()
            .map(|job| complete(&a, &me, job, AttemptOutcome::Succeeded, T0 + ms(1)));
        for c in futures_util::future::join_all(outcomes).await {
            assert!(c.applied);
            done += 1;
        }
    }
    let took = started.elapsed();
    eprintln!(
        "{done} deliveries claimed and completed in {took:?}: {:.0}/s",
        done as f64 / took.as_secs_f64()
    );
    assert_eq!(done, N);
    let page = a
        .list_notifications(
            &ap.id,
            ListNotifications {
                limit: 1000,
                status: Some(DeliveryStatus::Succeeded),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(page.items.len(), 1000);
    assert!(page.items.iter().all(|n| n.deliveries[0].attempts == 1));
}

/// `close` commits what was queued, then every call fails with `Closed`; whatever was
/// acknowledged is in the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn close_commits_what_was_queued_and_refuses_the_rest() {
    let (a, b, _) = two_stores().await;
    let a = Arc::new(a);
    let ap = app(&a).await;
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (a, app_id) = (a.clone(), ap.id.clone());
        tasks.push(tokio::spawn(async move {
            a.create_notification(notification(&app_id, Some("https://m.example/n")))
                .await
        }));
    }
    tokio::task::yield_now().await;
    a.close().await;
    let mut acknowledged = HashSet::new();
    for t in tasks {
        match t.await.expect("task") {
            Ok(n) => {
                acknowledged.insert(n.notification.id);
            }
            Err(e) => assert!(matches!(e, herald_store::StoreError::Closed), "{e:?}"),
        }
    }
    for err in [
        a.get_app(&ap.id).await.err(),
        a.ping().await.err(),
        a.create_notification(notification(&ap.id, None))
            .await
            .err(),
    ] {
        assert!(
            matches!(err, Some(herald_store::StoreError::Closed)),
            "{err:?}"
        );
    }
    let stored: HashSet<String> = b
        .list_notifications(
            &ap.id,
            ListNotifications {
                limit: 1000,
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|n| n.id)
        .collect();
    assert_eq!(stored, acknowledged);
}

/// Outcomes that arrive together are recorded by one statement of their group commit, each
/// under its own conditions: successes and failures end their deliveries, a retry within
/// the horizon stays held with its new attempt count, an outcome for an attempt count the
/// store no longer has is stale (changes nothing, answers the current status), and one from
/// a node that does not hold the delivery is stale too. Each applied outcome wrote its
/// attempt row; the stale ones wrote none.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn outcomes_recorded_together_each_apply_only_under_their_claim() {
    let (a, _b, url) = two_stores().await;
    let a = Arc::new(a);
    let ap = app(&a).await;
    const EACH: usize = 12;
    for _ in 0..5 * EACH {
        a.create_notification(notification(&ap.id, Some("https://m.example/notify")))
            .await
            .expect("create");
    }
    let me = node(&a, "node_a", T0).await;
    let stranger = node(&a, "node_x", T0).await;
    let jobs = claim(&a, &me, T0, 5 * EACH).await;
    assert_eq!(jobs.len(), 5 * EACH);
    let retry_at = T0 + ms(30_000);
    let calls = jobs.iter().enumerate().map(|(i, job)| {
        let (a, me, stranger) = (a.clone(), me.clone(), stranger.clone());
        let job = job.clone();
        async move {
            match i % 5 {
                0 => complete(&a, &me, &job, AttemptOutcome::Succeeded, T0 + ms(1)).await,
                1 => complete(&a, &me, &job, AttemptOutcome::Failed, T0 + ms(1)).await,
                2 => {
                    let outcome = AttemptOutcome::Retry { next_at: retry_at };
                    complete(&a, &me, &job, outcome, T0 + ms(1)).await
                }
                3 => {
                    // As if this node had already recorded an attempt it since forgot.
                    let mut stale = (*job).clone();
                    stale.attempts = 3;
                    complete(
                        &a,
                        &me,
                        &Arc::new(stale),
                        AttemptOutcome::Succeeded,
                        T0 + ms(1),
                    )
                    .await
                }
                _ => complete(&a, &stranger, &job, AttemptOutcome::Succeeded, T0 + ms(1)).await,
            }
        }
    });
    let answers = futures_util::future::join_all(calls).await;
    for (i, (job, c)) in jobs.iter().zip(&answers).enumerate() {
        match i % 5 {
            0 => assert!(
                c.applied && c.status == Some(DeliveryStatus::Succeeded) && c.held.is_none(),
                "{i}: {c:?}"
            ),
            1 => assert!(
                c.applied && c.status == Some(DeliveryStatus::Failed) && c.held.is_none(),
                "{i}: {c:?}"
            ),
            2 => {
                assert!(
                    c.applied && c.status == Some(DeliveryStatus::Pending),
                    "{i}: {c:?}"
                );
                let held = c
                    .held
                    .as_ref()
                    .expect("a retry within the horizon stays held");
                assert_eq!(
                    (held.seq, held.attempts, held.next_at),
                    (job.seq, 1, retry_at)
                );
            }
            _ => assert!(
                !c.applied && c.status == Some(DeliveryStatus::Pending) && c.held.is_none(),
                "{i}: {c:?}"
            ),
        }
    }

    let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    for (i, job) in jobs.iter().enumerate() {
        let row = db
            .query_one(
                "SELECT d.status, d.attempts, d.next_at, d.locked_by,
                        (SELECT count(*) FROM attempts WHERE delivery_seq = d.seq)
                 FROM deliveries d WHERE d.seq = $1",
                &[&job.seq],
            )
            .await
            .expect("read the delivery");
        let got: (String, i32, Option<UnixMillis>, Option<String>, i64) =
            (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        let want = match i % 5 {
            0 => ("succeeded".to_string(), 1, None, None, 1),
            1 => ("failed".to_string(), 1, None, None, 1),
            2 => (
                "pending".to_string(),
                1,
                Some(retry_at),
                Some("node_a".into()),
                1,
            ),
            _ => ("pending".to_string(), 0, Some(T0), Some("node_a".into()), 0),
        };
        assert_eq!(got, want, "delivery {i}");
    }
}

// --- claims at birth ------------------------------------------------------------------

/// Stores `n` notifications of `app_id` at once from as many tasks, so that the group
/// commit takes most of them in batches of several (its one-statement insert).
async fn create_at_once(store: &Arc<PgStore>, app_id: &str, notify_url: Option<&str>, n: usize) {
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (store, new) = (store.clone(), notification(app_id, notify_url));
        tasks.push(tokio::spawn(async move {
            store.create_notification(new).await.expect("create")
        }));
    }
    for t in tasks {
        t.await.expect("producer");
    }
}

/// The jobs of every `Hint::Claimed` waiting in `hints` (nothing else is waited for).
fn claimed_hints(hints: &mut HintReceiver) -> Vec<Arc<ClaimedDelivery>> {
    let mut jobs = Vec::new();
    while let Ok(hint) = hints.try_recv() {
        if let Hint::Claimed(j) = hint {
            jobs.extend(j);
        }
    }
    jobs
}

/// `(seq, locked_by)` of every pending delivery, by seq.
async fn pending_holders(url: &str) -> Vec<(i64, Option<String>)> {
    raw_client(url)
        .await
        .query(
            "SELECT seq, locked_by FROM deliveries WHERE status = 'pending' ORDER BY seq",
            &[],
        )
        .await
        .expect("deliveries")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// A node alone on a fresh database (store `a`; store `b` is there for a second node)
/// holding an endpoint of an app: its first delivery was claimed, so the endpoint's holder
/// row names it (and that delivery stays held).
struct Holding {
    a: Arc<PgStore>,
    b: PgStore,
    url: String,
    app: App,
    ep: Endpoint,
    me: NodeId,
    hints: HintReceiver,
}

async fn holding_an_endpoint(ordered: bool) -> Holding {
    let (a, b, url) = two_stores().await;
    let a = Arc::new(a);
    let app = app(&a).await;
    let ep = endpoint(&a, &app.id, ordered).await;
    let me = node(&a, "node_a", T0).await;
    let mut hints = a.hints(me.clone());
    a.create_notification(notification(&app.id, None))
        .await
        .expect("first");
    assert_eq!(claim(&a, &me, T0, 10).await.len(), 1);
    let _ = claimed_hints(&mut hints);
    Holding {
        a,
        b,
        url,
        app,
        ep,
        me,
        hints,
    }
}

/// A node alone on its database that holds an endpoint (its holder row names it) gets the
/// endpoint's new deliveries claimed at birth by the group commit's insert: they are held by
/// it in the database, reach it as `Hint::Claimed` with what an attempt needs, and no claim
/// returns them again. Every delivery is either claimed at birth or left for claims.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lone_node_holding_the_endpoint_gets_new_deliveries_claimed_at_birth() {
    let Holding {
        a,
        url,
        app: ap,
        ep,
        me,
        mut hints,
        ..
    } = holding_an_endpoint(false).await;
    assert_eq!(
        holder_rows(&url, &[&ep.id]).await[0].1.as_deref(),
        Some("node_a")
    );
    let first: Vec<i64> = pending_holders(&url).await.iter().map(|r| r.0).collect();

    create_at_once(&a, &ap.id, None, 40).await;
    let born = claimed_hints(&mut hints);
    assert!(!born.is_empty(), "some deliveries were claimed at birth");
    let held_by_me = |rows: Vec<(i64, Option<String>)>| -> HashSet<i64> {
        rows.into_iter()
            .filter(|(_, by)| by.as_deref() == Some("node_a"))
            .map(|(seq, _)| seq)
            .collect()
    };
    let held = held_by_me(pending_holders(&url).await);
    for job in &born {
        assert!(
            held.contains(&job.seq),
            "job {} is held in the database",
            job.seq
        );
        assert_eq!(
            job.endpoint.as_ref().map(|e| e.id.as_str()),
            Some(ep.id.as_str())
        );
        assert_eq!(job.app.id, ap.id);
        assert_eq!(&*job.payload, r#"{"amount": 100}"#);
        assert_eq!(job.attempts, 0);
        assert_eq!(job.next_at, T0);
        assert!(job.notification_id.starts_with("ntf_"));
    }
    let mut rest = Vec::new();
    loop {
        let jobs = claim(&a, &me, T0, 500).await;
        if jobs.is_empty() {
            break;
        }
        rest.extend(jobs);
    }
    let born_seqs: HashSet<i64> = born.iter().map(|j| j.seq).collect();
    assert!(
        rest.iter().all(|j| !born_seqs.contains(&j.seq)),
        "claimed twice"
    );
    assert_eq!(born.len() + rest.len(), 40);
    let held = held_by_me(pending_holders(&url).await);
    assert_eq!(
        held.len(),
        40 + 1,
        "{} born, {} claimed",
        born.len(),
        rest.len()
    );
    assert!(held.contains(&first[0]));
}

/// A delivery to a notification's own URL has no endpoint, so no holder row: a lone node
/// gets it claimed at birth as soon as it is registered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lone_node_gets_deliveries_to_a_notify_url_claimed_at_birth() {
    let (a, _b, url) = two_stores().await;
    let a = Arc::new(a);
    let ap = app(&a).await;
    let me = node(&a, "node_a", T0).await;
    let mut hints = a.hints(me.clone());
    create_at_once(&a, &ap.id, Some("https://m.example/notify"), 40).await;
    let born = claimed_hints(&mut hints);
    assert!(!born.is_empty(), "some deliveries were claimed at birth");
    assert!(born
        .iter()
        .all(|j| j.endpoint.is_none() && j.url == "https://m.example/notify"));
    let held = pending_holders(&url)
        .await
        .into_iter()
        .filter(|(_, by)| by.is_some())
        .count();
    assert_eq!(held, born.len());
}

/// Nothing is claimed at birth for a node whose last peek counted another live node (the
/// endpoints move between nodes by the claims' fair share), for a node that left, for a
/// node registered without `claim_new`, or while a claim holds the endpoint's holder row.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nothing_is_claimed_at_birth_on_a_fleet_after_leaving_or_while_a_claim_holds_the_row() {
    let Holding {
        a,
        b,
        url,
        app: ap,
        ep,
        me,
        mut hints,
    } = holding_an_endpoint(false).await;
    let unheld = |rows: Vec<(i64, Option<String>)>| rows.iter().filter(|r| r.1.is_none()).count();

    // A claim holds the endpoint's holder row: the insert does not wait for it, and claims
    // nothing at birth.
    let mut locker = raw_client(&url).await;
    let tx = locker.transaction().await.expect("begin");
    tx.execute(
        "SELECT 1 FROM endpoint_holders WHERE endpoint_id = $1 FOR UPDATE",
        &[&ep.id],
    )
    .await
    .expect("lock the holder row");
    let _ = claimed_hints(&mut hints);
    create_at_once(&a, &ap.id, None, 20).await;
    assert!(
        claimed_hints(&mut hints).is_empty(),
        "claimed while the row was locked"
    );
    assert_eq!(unheld(pending_holders(&url).await), 20);
    tx.rollback().await.expect("rollback");
    assert_eq!(claim(&a, &me, T0, 500).await.len(), 20);

    // Another live node, counted by this node's last peek.
    let other = node(&b, "node_b", T0).await;
    assert!(claim(&a, &me, T0, 10).await.is_empty());
    create_at_once(&a, &ap.id, None, 20).await;
    assert!(claimed_hints(&mut hints).is_empty(), "claimed on a fleet");
    assert_eq!(unheld(pending_holders(&url).await), 20);
    assert_eq!(claim(&a, &me, T0, 500).await.len(), 20);
    assert!(b.leave(other).await.expect("b leaves"));
    assert!(claim(&a, &me, T0, 10).await.is_empty()); // counts one live node again

    // Registered without `claim_new` (store b's node), and a node that left (store a's).
    let plain = NodeId::from("node_plain");
    b.register_node(
        LeaseParams {
            node: plain.clone(),
            now: T0,
            lease: LEASE,
        },
        false,
    )
    .await
    .expect("register without claim_new");
    let b = Arc::new(b);
    create_at_once(&b, &ap.id, Some("https://m.example/notify"), 10).await;
    a.leave(me.clone()).await.expect("a leaves");
    create_at_once(&a, &ap.id, None, 20).await;
    assert!(
        claimed_hints(&mut hints).is_empty(),
        "claimed for a node that left"
    );
    assert_eq!(unheld(pending_holders(&url).await), 30);
}

/// A delivery with an order key (an ordered endpoint's) waits for its predecessors, so it
/// is never claimed at birth; claims take the head of its key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_ordered_endpoints_deliveries_are_not_claimed_at_birth() {
    let Holding {
        a,
        url,
        app: ap,
        mut hints,
        ..
    } = holding_an_endpoint(true).await;
    create_at_once(&a, &ap.id, None, 20).await;
    assert!(claimed_hints(&mut hints).is_empty());
    let rows = pending_holders(&url).await;
    assert_eq!(rows.iter().filter(|r| r.1.is_none()).count(), 20);
}

/// A node's claim waits for a lock on a holder row that names the node (only its own
/// inserts, claiming at birth, take one) instead of skipping the endpoint until its next
/// look; then it takes what those inserts left unclaimed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_claim_waits_for_its_own_inserts_lock_on_the_holder_row() {
    let Holding {
        a,
        url,
        app: ap,
        ep,
        me,
        ..
    } = holding_an_endpoint(false).await;
    // Stored while a claim holds the row: left unclaimed.
    let mut locker = raw_client(&url).await;
    let tx = locker.transaction().await.expect("begin");
    tx.execute(
        "SELECT 1 FROM endpoint_holders WHERE endpoint_id = $1 FOR UPDATE",
        &[&ep.id],
    )
    .await
    .expect("lock");
    a.create_notification(notification(&ap.id, None))
        .await
        .expect("second");
    tx.rollback().await.expect("rollback");
    // An insert of this node's holds the row now.
    let tx = locker.transaction().await.expect("begin");
    tx.execute(
        "SELECT 1 FROM endpoint_holders WHERE endpoint_id = $1 FOR KEY SHARE",
        &[&ep.id],
    )
    .await
    .expect("share");
    let claiming = tokio::spawn({
        let (a, me) = (a.clone(), me.clone());
        async move { claim(&a, &me, T0, 10).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!claiming.is_finished(), "the claim waits for the row");
    tx.commit().await.expect("commit");
    let jobs = claiming.await.expect("claim");
    assert_eq!(jobs.len(), 1, "the claim took what was left");
}
