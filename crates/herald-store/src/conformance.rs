//! The conformance suite: the behaviours every [`Store`] driver must have, written once.
//!
//! A driver's test file supplies a factory for a fresh, empty store and expands
//! [`conformance_tests!`](crate::conformance_tests), which turns every case below into a
//! `#[tokio::test]`. Cases panic (assert) on a violation.
use std::sync::Arc;
use std::time::Duration;

use herald_protocols::standard_webhooks::{KeyEntry, Keys};
use herald_protocols::{Credentials, Profile, RetryPolicy};

use crate::fields::{EndpointUrl, EventType, IdempotencyKey, NotifyUrl, OrderKey};
use crate::health::*;
use crate::model::*;
use crate::queue::*;
use crate::sessions::*;
use crate::{Store, StoreError};

/// Expands every conformance case into a test, given an async factory expression that
/// yields a fresh store (`impl Store`). Use inside a test module of the driver.
#[macro_export]
macro_rules! conformance_tests {
    ($factory:expr) => {
        $crate::conformance_tests!(@cases $factory;
            app_round_trips,
            endpoint_crud_works_and_missing_app_is_not_found,
            notification_fans_out_to_enabled_matching_endpoints,
            notify_url_goes_to_that_url_alone,
            a_notifications_typed_fields_read_back_equal,
            an_order_key_and_an_endpoint_url_read_back_equal,
            idempotency_key_returns_the_first_notification_and_creates_nothing,
            ordered_endpoint_releases_next_delivery_only_when_previous_ends,
            order_key_serializes_notify_url_deliveries,
            attempt_outcomes_move_delivery_state,
            stale_attempt_outcome_is_not_applied,
            claim_takes_due_work_in_key_order_up_to_the_horizon,
            claim_skips_deliveries_blocked_by_their_order_key,
            a_claimed_delivery_is_not_claimed_by_another_node,
            an_endpoint_is_served_by_one_node_at_a_time,
            a_dead_nodes_work_is_rescued_after_its_lease,
            a_node_that_leaves_while_holding_work_keeps_it_until_its_lease_ends,
            nothing_is_claimed_at_birth_for_a_node_that_left,
            a_retry_far_ahead_releases_the_claim,
            a_node_reads_back_what_it_holds,
            deleting_an_endpoint_cancels_its_pending_deliveries,
            manual_retry_puts_a_failed_delivery_back_to_pending,
            manual_retry_of_a_held_delivery_frees_it_for_any_node,
            recover_requeues_failed_deliveries_since_a_time,
            recover_and_retry_never_overtake_a_pending_later_delivery,
            release_moves_held_jobs_and_skips_changed_ones,
            stale_attempt_row_does_not_overwrite_the_recorded_one,
            notifications_list_pages_and_filters_by_status,
            detail_reads_embed_the_latest_attempts_and_the_rest_are_paged,
            endpoints_list_in_pages_by_creation_time_then_id,
            meta_values_round_trip,
            credentials_change_reaches_claimed_work,
            sandbox_payment_and_its_notifications_commit_together,
            apps_list_in_pages_and_change_and_a_deleted_app_is_gone,
            deleting_an_app_cancels_its_pending_deliveries_also_held_ones,
            api_keys_are_found_by_hash_touched_and_revoked,
            a_meta_value_set_if_absent_keeps_the_first,
            a_source_commits_with_its_app_and_destination_and_reads_back,
            a_source_forwards_each_notify_id_once_ordered_per_trade,
            deleting_a_source_hides_it_and_cancels_its_pending_forwards,
            sources_list_in_pages_by_creation_time_then_id,
            dashboard_lists_apps_in_pages_by_id,
            dashboard_counts_attempts_per_minute_and_finds_endpoints_in_trouble,
            dashboard_search_filters_every_field_and_pages,
            dashboard_lists_sandbox_payments_newest_first,
            health_failures_open_the_breaker_and_claims_wait_for_the_cooldown,
            a_gone_endpoint_is_disabled_and_its_work_waits_until_enabled_again,
            ops_target_round_trips_as_an_internal_app_hidden_from_app_lists,
            a_health_transition_commits_exactly_one_ops_notification_with_it,
            no_ops_notification_without_an_ops_target_or_for_an_ops_endpoints_own_transitions,
            purge_removes_only_old_finished_notifications_in_batches,
            backlog_and_breaker_counts,
            recover_endpoint_requeues_only_that_endpoints_failures_since_a_time,
            sessions_are_found_by_hash_until_they_expire_or_end,
            a_revoked_keys_sessions_are_no_longer_found,
            live_sessions_are_capped_per_principal,
            a_login_link_is_used_once_even_when_raced,
            purging_sessions_removes_only_expired_ones,
        );
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                let store = $factory.await;
                $crate::conformance::$case(&store).await;
            }
        )*
    };
}

const T0: UnixMillis = UnixMillis::new(1_700_000_000_000);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn creds() -> Credentials {
    Credentials::StandardWebhooks(Keys {
        keys: vec![KeyEntry {
            secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
            expires_at: None,
        }],
    })
}

async fn app(store: &impl Store) -> App {
    named_app(store, "shop").await
}

async fn named_app(store: &impl Store, name: &str) -> App {
    store
        .create_app(new_app(name, T0))
        .await
        .expect("create app")
}

/// A Standard Webhooks app named `name`, created at `now`, signing with the suite's key:
/// the app drivers' own tests create too.
pub fn new_app(name: &str, now: UnixMillis) -> NewApp {
    NewApp {
        name: name.into(),
        profile: Profile::StandardWebhooks,
        retry: None,
        ack: None,
        credentials: creds(),
        now,
    }
}

/// An enabled endpoint of app `app_id` at `url` taking every event type, created at the
/// suite's start time: the drivers' own tests create it too.
pub fn new_endpoint(app_id: &str, url: &str) -> NewEndpoint {
    NewEndpoint {
        app_id: app_id.into(),
        url: url.parse().unwrap(),
        event_types: None,
        retry: None,
        ack: None,
        max_in_flight: 8,
        ordered: false,
        enabled: true,
        timeout_ms: None,
        now: T0,
    }
}

fn new_notification(app_id: &str, event_type: &str) -> NewNotification {
    NewNotification {
        app_id: app_id.into(),
        event_type: event_type.parse().unwrap(),
        payload: r#"{"amount": 100}"#.into(),
        notify_url: None,
        idempotency_key: None,
        order_key: None,
        now: T0,
    }
}

/// The lease every case's nodes take (30 s from `T0`).
const LEASE: Duration = Duration::from_secs(30);
/// How far ahead nodes hold work in these cases.
const HORIZON: UnixMillis = UnixMillis::new(T0.get() + 60_000);

/// `node`'s lease of [`LEASE`] from `now`, to register or renew.
fn lease(node: &NodeId, now: UnixMillis) -> LeaseParams {
    LeaseParams {
        node: node.clone(),
        now,
        lease: LEASE,
    }
}

/// Registers a node (without claims at birth, so every driver behaves alike here).
async fn node(store: &impl Store, name: &str) -> NodeId {
    let node: NodeId = Arc::from(name);
    store
        .register_node(lease(&node, T0), false)
        .await
        .expect("register node");
    node
}

/// Stores a notification of app `app_id` sent to its own URL (one delivery, no endpoint).
async fn to_own_url(store: &impl Store, app_id: &str) {
    store
        .create_notification(NewNotification {
            notify_url: Some("https://merchant.example/notify".parse().unwrap()),
            ..new_notification(app_id, "e")
        })
        .await
        .unwrap();
}

async fn claim_at(
    store: &impl Store,
    node: &NodeId,
    now: UnixMillis,
    horizon: UnixMillis,
) -> Vec<Arc<ClaimedDelivery>> {
    store
        .claim(ClaimParams {
            node: node.clone(),
            now,
            horizon,
            limit: 100,
        })
        .await
        .expect("claim")
}

/// Claims everything due by [`HORIZON`] for `node`.
async fn claim(store: &impl Store, node: &NodeId) -> Vec<Arc<ClaimedDelivery>> {
    claim_at(store, node, T0, HORIZON).await
}

fn report(job: &Arc<ClaimedDelivery>, outcome: AttemptOutcome) -> AttemptReport {
    AttemptReport {
        job: job.clone(),
        attempt: Attempt {
            n: job.attempts + 1,
            at: T0 + ms(1000),
            duration_ms: 12,
            status_code: Some(if outcome == AttemptOutcome::Succeeded {
                200
            } else {
                500
            }),
            response: Some("body".into()),
            error_class: if outcome == AttemptOutcome::Succeeded {
                None
            } else {
                Some("http-status".into())
            },
            error: None,
        },
        outcome,
    }
}

async fn complete(
    store: &impl Store,
    node: &NodeId,
    job: &Arc<ClaimedDelivery>,
    outcome: AttemptOutcome,
) -> Completed {
    store
        .complete(CompleteParams {
            node: node.clone(),
            report: report(job, outcome),
            now: T0 + ms(1000),
            horizon: HORIZON,
        })
        .await
        .expect("complete")
}

fn ids(jobs: &[Arc<ClaimedDelivery>]) -> Vec<String> {
    jobs.iter().map(|j| j.id.clone()).collect()
}

pub async fn app_round_trips(store: &impl Store) {
    let created = app(store).await;
    let got = store
        .get_app(&created.id)
        .await
        .unwrap()
        .expect("app exists");
    assert_eq!(got.id, created.id);
    assert_eq!(got.name, "shop");
    assert_eq!(got.profile, Profile::StandardWebhooks);
    assert_eq!(got.credentials, creds());
    assert!(store.get_app("app_missing").await.unwrap().is_none());
}

pub async fn endpoint_crud_works_and_missing_app_is_not_found(store: &impl Store) {
    let a = app(store).await;
    let ep = store
        .create_endpoint(new_endpoint(&a.id, "https://example.com/hook"))
        .await
        .unwrap();
    assert_eq!(
        store.get_endpoint(&a.id, &ep.id).await.unwrap(),
        Some(ep.clone())
    );
    assert_eq!(
        store
            .list_endpoints(
                &a.id,
                ListEndpoints {
                    limit: 10,
                    cursor: None
                }
            )
            .await
            .unwrap()
            .items,
        vec![ep.clone()]
    );

    let patched = store
        .update_endpoint(
            &a.id,
            &ep.id,
            EndpointPatch {
                url: Some("https://example.com/v2".parse().unwrap()),
                max_in_flight: Some(2),
                event_types: Some(Some(vec!["trade.*".into()])),
                ..Default::default()
            },
            T0 + ms(5),
        )
        .await
        .unwrap()
        .expect("endpoint exists");
    assert_eq!(patched.url, "https://example.com/v2");
    assert_eq!(patched.max_in_flight, 2);
    assert_eq!(patched.event_types, Some(vec!["trade.*".to_string()]));
    assert_eq!(patched.updated_at, T0 + ms(5));
    assert_eq!(
        store.get_endpoint(&a.id, &ep.id).await.unwrap(),
        Some(patched)
    );

    // Another app cannot see or change it.
    let b = app(store).await;
    assert!(store.get_endpoint(&b.id, &ep.id).await.unwrap().is_none());
    assert!(!store.delete_endpoint(&b.id, &ep.id, T0).await.unwrap());

    assert!(store.delete_endpoint(&a.id, &ep.id, T0).await.unwrap());
    assert!(store.get_endpoint(&a.id, &ep.id).await.unwrap().is_none());
    assert!(store
        .list_endpoints(
            &a.id,
            ListEndpoints {
                limit: 10,
                cursor: None
            }
        )
        .await
        .unwrap()
        .items
        .is_empty());
    assert!(!store.delete_endpoint(&a.id, &ep.id, T0).await.unwrap());

    let err = store
        .create_endpoint(new_endpoint("app_missing", "https://example.com"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound("app")), "{err:?}");
}

pub async fn notification_fans_out_to_enabled_matching_endpoints(store: &impl Store) {
    let a = app(store).await;
    let n1 = node(store, "node_a").await;
    let all = store
        .create_endpoint(new_endpoint(&a.id, "https://a.example/all"))
        .await
        .unwrap();
    let trade = store
        .create_endpoint(NewEndpoint {
            event_types: Some(vec!["trade.*".into()]),
            ..new_endpoint(&a.id, "https://a.example/trade")
        })
        .await
        .unwrap();
    let _refund = store
        .create_endpoint(NewEndpoint {
            event_types: Some(vec!["refund.success".into()]),
            ..new_endpoint(&a.id, "https://a.example/refund")
        })
        .await
        .unwrap();
    let _disabled = store
        .create_endpoint(NewEndpoint {
            enabled: false,
            ..new_endpoint(&a.id, "https://a.example/off")
        })
        .await
        .unwrap();

    let created = store
        .create_notification(new_notification(&a.id, "trade.success"))
        .await
        .unwrap();
    assert!(!created.replayed);
    let mut urls: Vec<_> = created.deliveries.iter().map(|d| d.url.as_str()).collect();
    urls.sort();
    assert_eq!(
        urls,
        vec!["https://a.example/all", "https://a.example/trade"]
    );
    for d in &created.deliveries {
        assert_eq!(d.status, DeliveryStatus::Pending);
        assert_eq!(d.attempts, 0);
        assert_eq!(d.next_attempt_at, Some(T0));
        assert!(!d.notify_id.is_empty());
    }
    let notify_ids: std::collections::HashSet<_> = created
        .deliveries
        .iter()
        .map(|d| d.notify_id.clone())
        .collect();
    assert_eq!(notify_ids.len(), 2, "each delivery has its own notify id");

    let jobs = claim(store, &n1).await;
    assert_eq!(jobs.len(), 2);
    let mut eps: Vec<_> = jobs
        .iter()
        .map(|j| j.endpoint.as_ref().unwrap().id.clone())
        .collect();
    eps.sort();
    let mut want = vec![all.id.clone(), trade.id.clone()];
    want.sort();
    assert_eq!(eps, want);
    assert_eq!(&*jobs[0].payload, r#"{"amount": 100}"#);
    assert_eq!(jobs[0].notification_id, created.notification.id);
    assert_eq!(jobs[0].app.id, a.id);

    let detail = store
        .get_notification(&created.notification.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(detail.notification, created.notification);
    assert_eq!(detail.deliveries.len(), 2);
}

pub async fn notify_url_goes_to_that_url_alone(store: &impl Store) {
    let a = app(store).await;
    let n1 = node(store, "node_a").await;
    store
        .create_endpoint(new_endpoint(&a.id, "https://a.example/all"))
        .await
        .unwrap();
    let created = store
        .create_notification(NewNotification {
            notify_url: Some("https://merchant.example/notify".parse().unwrap()),
            ..new_notification(&a.id, "trade.success")
        })
        .await
        .unwrap();
    assert_eq!(created.deliveries.len(), 1);
    assert_eq!(created.deliveries[0].url, "https://merchant.example/notify");
    assert_eq!(created.deliveries[0].endpoint_id, None);
    let jobs = claim(store, &n1).await;
    assert_eq!(jobs.len(), 1);
    assert!(jobs[0].endpoint.is_none());
    assert_eq!(jobs[0].url, "https://merchant.example/notify");

    let err = store
        .create_notification(new_notification("app_missing", "x"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound("app")), "{err:?}");
}

pub async fn a_notifications_typed_fields_read_back_equal(store: &impl Store) {
    let a = app(store).await;
    let n1 = node(store, "node_a").await;
    let event_type: EventType = "支付.成功 trade.success".parse().unwrap();
    let notify_url: NotifyUrl = "https://user:pw@merchant.example:8443/notify?x=1&y=%E4%B8%AD"
        .parse()
        .unwrap();
    let key: IdempotencyKey = "order-1:paid \u{1F600}".parse().unwrap();
    let created = store
        .create_notification(NewNotification {
            event_type: event_type.clone(),
            notify_url: Some(notify_url.clone()),
            idempotency_key: Some(key.clone()),
            order_key: Some("order-1".parse().unwrap()),
            ..new_notification(&a.id, "unused")
        })
        .await
        .unwrap();
    let n = &created.notification;
    assert_eq!(n.event_type, event_type);
    assert_eq!(n.notify_url.as_ref(), Some(&notify_url));
    assert_eq!(n.idempotency_key.as_ref(), Some(&key));
    assert_eq!(created.deliveries[0].url, notify_url.as_str());

    let read = store.get_notification(&n.id).await.unwrap().unwrap();
    assert_eq!(read.notification, *n);
    let page = store
        .list_notifications(
            &a.id,
            ListNotifications {
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(page.items.len(), 1);
    let summary = &page.items[0];
    assert_eq!(summary.event_type, event_type);
    assert_eq!(summary.notify_url.as_ref(), Some(&notify_url));
    assert_eq!(summary.idempotency_key.as_ref(), Some(&key));
    let found = store
        .search_notifications(crate::dashboard::SearchNotifications {
            event_type: Some(event_type.clone()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(found.items.len(), 1);
    assert_eq!(found.items[0].idempotency_key.as_ref(), Some(&key));
    let jobs = claim(store, &n1).await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].event_type, event_type);
    assert_eq!(jobs[0].url, notify_url.as_str());

    // The same key again replays the first, typed fields and all.
    let again = store
        .create_notification(NewNotification {
            event_type: event_type.clone(),
            notify_url: Some(notify_url.clone()),
            idempotency_key: Some(key.clone()),
            ..new_notification(&a.id, "unused")
        })
        .await
        .unwrap();
    assert!(again.replayed);
    assert_eq!(again.notification, *n);
}

pub async fn an_order_key_and_an_endpoint_url_read_back_equal(store: &impl Store) {
    let a = app(store).await;
    let n1 = node(store, "node_a").await;
    let url: EndpointUrl = "https://user:pw@hooks.example:8443/in?x=1&y=%E4%B8%AD"
        .parse()
        .unwrap();
    let ep = store
        .create_endpoint(NewEndpoint {
            url: url.clone(),
            ..new_endpoint(&a.id, "https://unused.example/")
        })
        .await
        .unwrap();
    assert_eq!(ep.url, url);
    let read = store.get_endpoint(&a.id, &ep.id).await.unwrap().unwrap();
    assert_eq!(read, ep);
    let listed = store
        .list_endpoints(
            &a.id,
            ListEndpoints {
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(listed.items, vec![ep.clone()]);

    let order_key: OrderKey = "订单-42 / trade 2024".parse().unwrap();
    let created = store
        .create_notification(NewNotification {
            order_key: Some(order_key.clone()),
            ..new_notification(&a.id, "trade.success")
        })
        .await
        .unwrap();
    let n = &created.notification;
    assert_eq!(n.order_key.as_ref(), Some(&order_key));
    assert_eq!(created.deliveries[0].url, url.as_str());
    let read = store.get_notification(&n.id).await.unwrap().unwrap();
    assert_eq!(read.notification, *n);
    let page = store
        .list_notifications(
            &a.id,
            ListNotifications {
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(page.items[0].order_key.as_ref(), Some(&order_key));
    let jobs = claim(store, &n1).await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(
        jobs[0].endpoint.as_ref().map(|e| e.url.clone()),
        Some(url.clone())
    );
    assert_eq!(jobs[0].url, url.as_str());

    // A patched URL reads back as given.
    let moved: EndpointUrl = "http://10.1.2.3:9000/moved".parse().unwrap();
    let patched = store
        .update_endpoint(
            &a.id,
            &ep.id,
            EndpointPatch {
                url: Some(moved.clone()),
                ..Default::default()
            },
            T0 + ms(1),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(patched.url, moved);
    let read = store.get_endpoint(&a.id, &ep.id).await.unwrap().unwrap();
    assert_eq!(read.url, moved);
}

pub async fn idempotency_key_returns_the_first_notification_and_creates_nothing(
    store: &impl Store,
) {
    let a = app(store).await;
    let n1 = node(store, "node_a").await;
    let url = Some("https://merchant.example/notify".parse().unwrap());
    let first = store
        .create_notification(NewNotification {
            notify_url: url.clone(),
            idempotency_key: Some("order-1".parse().unwrap()),
            ..new_notification(&a.id, "trade.success")
        })
        .await
        .unwrap();
    assert_eq!(claim(store, &n1).await.len(), 1);
    let second = store
        .create_notification(NewNotification {
            notify_url: url.clone(),
            idempotency_key: Some("order-1".parse().unwrap()),
            payload: r#"{"different": true}"#.into(),
            ..new_notification(&a.id, "trade.success")
        })
        .await
        .unwrap();
    assert!(second.replayed);
    assert_eq!(second.notification, first.notification);
    assert_eq!(second.deliveries, first.deliveries);
    assert!(
        claim(store, &n1).await.is_empty(),
        "a replay creates no work"
    );

    let page = store
        .list_notifications(
            &a.id,
            ListNotifications {
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(page.items.len(), 1);

    // The key is scoped to the app.
    let b = app(store).await;
    let other = store
        .create_notification(NewNotification {
            notify_url: url,
            idempotency_key: Some("order-1".parse().unwrap()),
            ..new_notification(&b.id, "trade.success")
        })
        .await
        .unwrap();
    assert!(!other.replayed);
    assert_ne!(other.notification.id, first.notification.id);
}

pub async fn ordered_endpoint_releases_next_delivery_only_when_previous_ends(store: &impl Store) {
    let a = app(store).await;
    let n1 = node(store, "node_a").await;
    store
        .create_endpoint(NewEndpoint {
            ordered: true,
            ..new_endpoint(&a.id, "https://a.example/o")
        })
        .await
        .unwrap();
    let first = store
        .create_notification(new_notification(&a.id, "e"))
        .await
        .unwrap();
    let second = store
        .create_notification(new_notification(&a.id, "e"))
        .await
        .unwrap();
    let jobs = claim(store, &n1).await;
    assert_eq!(
        ids(&jobs),
        vec![first.deliveries[0].id.clone()],
        "only the head"
    );

    // A retry does not end the first: the second stays blocked.
    let done = complete(
        store,
        &n1,
        &jobs[0],
        AttemptOutcome::Retry {
            next_at: T0 + ms(5000),
        },
    )
    .await;
    assert!(done.applied);
    assert_eq!(done.status, Some(DeliveryStatus::Pending));
    assert!(done.successor.is_none());
    let held = done.held.expect("still held: due within the horizon");
    assert!(claim(store, &n1).await.is_empty());

    // Success ends it: the second is claimed for the node with the outcome.
    let done = complete(store, &n1, &held, AttemptOutcome::Succeeded).await;
    assert!(done.applied);
    let next = done.successor.expect("the successor");
    assert_eq!(next.id, second.deliveries[0].id);
    assert!(
        claim(store, &n1).await.is_empty(),
        "the successor is held already"
    );
}

pub async fn order_key_serializes_notify_url_deliveries(store: &impl Store) {
    let a = app(store).await;
    let n1 = node(store, "node_a").await;
    let mk = |key: &str| NewNotification {
        notify_url: Some("https://merchant.example/notify".parse().unwrap()),
        order_key: Some(key.parse().unwrap()),
        ..new_notification(&a.id, "trade.success")
    };
    store.create_notification(mk("trade-1")).await.unwrap();
    let first = claim(store, &n1).await;
    assert_eq!(first.len(), 1);
    let blocked = store.create_notification(mk("trade-1")).await.unwrap();
    assert!(claim(store, &n1).await.is_empty());
    // Another key is independent.
    store.create_notification(mk("trade-2")).await.unwrap();
    assert_eq!(claim(store, &n1).await.len(), 1);
    let done = complete(store, &n1, &first[0], AttemptOutcome::Failed).await;
    assert_eq!(
        done.successor.map(|j| j.id.clone()),
        Some(blocked.deliveries[0].id.clone()),
        "a failed predecessor also ends"
    );
}

pub async fn attempt_outcomes_move_delivery_state(store: &impl Store) {
    let a = app(store).await;
    let n1 = node(store, "node_a").await;
    let n = store
        .create_notification(NewNotification {
            notify_url: Some("https://merchant.example/notify".parse().unwrap()),
            ..new_notification(&a.id, "e")
        })
        .await
        .unwrap();
    let job = claim(store, &n1).await.remove(0);
    let done = complete(
        store,
        &n1,
        &job,
        AttemptOutcome::Retry {
            next_at: T0 + ms(50_000),
        },
    )
    .await;
    assert!(done.applied);
    assert_eq!(done.status, Some(DeliveryStatus::Pending));
    let job = done.held.expect("held: due within the horizon");
    assert_eq!(job.attempts, 1);
    assert_eq!(job.next_at, T0 + ms(50_000));
    let d = store
        .get_delivery(&n.deliveries[0].id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.delivery.status, DeliveryStatus::Pending);
    assert_eq!(d.delivery.attempts, 1);
    assert_eq!(d.delivery.next_attempt_at, Some(T0 + ms(50_000)));
    assert_eq!(d.attempts.len(), 1);
    assert_eq!(d.attempts[0].status_code, Some(500));
    assert_eq!(d.attempts[0].error_class.as_deref(), Some("http-status"));

    let done = complete(store, &n1, &job, AttemptOutcome::Succeeded).await;
    assert!(done.applied);
    assert_eq!(done.status, Some(DeliveryStatus::Succeeded));
    assert!(done.held.is_none());
    let d = store
        .get_delivery(&n.deliveries[0].id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.delivery.status, DeliveryStatus::Succeeded);
    assert_eq!(d.delivery.attempts, 2);
    assert_eq!(d.delivery.next_attempt_at, None);
    assert_eq!(
        d.attempts.iter().map(|a| a.n).collect::<Vec<_>>(),
        vec![1, 2]
    );
}

pub async fn stale_attempt_outcome_is_not_applied(store: &impl Store) {
    let a = app(store).await;
    let n1 = node(store, "node_a").await;
    let n = store
        .create_notification(NewNotification {
            notify_url: Some("https://merchant.example/notify".parse().unwrap()),
            ..new_notification(&a.id, "e")
        })
        .await
        .unwrap();
    let job = claim(store, &n1).await.remove(0);
    complete(store, &n1, &job, AttemptOutcome::Succeeded).await;
    // The same (now stale) job reports a failure: nothing changes.
    let done = complete(store, &n1, &job, AttemptOutcome::Failed).await;
    assert!(!done.applied);
    assert_eq!(done.status, Some(DeliveryStatus::Succeeded));
    let d = store
        .get_delivery(&n.deliveries[0].id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.delivery.status, DeliveryStatus::Succeeded);
}

pub async fn claim_takes_due_work_in_key_order_up_to_the_horizon(store: &impl Store) {
    let a = app(store).await;
    let n1 = node(store, "node_a").await;
    let mut created = Vec::new();
    for i in 0..5 {
        let n = store
            .create_notification(NewNotification {
                notify_url: Some("https://merchant.example/notify".parse().unwrap()),
                now: T0 + ms(i),
                ..new_notification(&a.id, "e")
            })
            .await
            .unwrap();
        created.push(n.deliveries[0].id.clone());
    }
    let params = |limit| ClaimParams {
        node: n1.clone(),
        now: T0,
        horizon: T0 + ms(3),
        limit,
    };
    let first = store.claim(params(2)).await.unwrap();
    assert_eq!(ids(&first), created[..2]);
    let rest = store.claim(params(10)).await.unwrap();
    assert_eq!(ids(&rest), created[2..4], "the horizon is inclusive");
    assert!(store.claim(params(10)).await.unwrap().is_empty());
}

pub async fn claim_skips_deliveries_blocked_by_their_order_key(store: &impl Store) {
    let a = app(store).await;
    let n1 = node(store, "node_a").await;
    let mk = || NewNotification {
        notify_url: Some("https://merchant.example/notify".parse().unwrap()),
        order_key: Some("k".parse().unwrap()),
        ..new_notification(&a.id, "e")
    };
    let first = store.create_notification(mk()).await.unwrap();
    store.create_notification(mk()).await.unwrap();
    let jobs = claim(store, &n1).await;
    assert_eq!(ids(&jobs), vec![first.deliveries[0].id.clone()]);
}

pub async fn a_claimed_delivery_is_not_claimed_by_another_node(store: &impl Store) {
    let a = app(store).await;
    let (n1, n2) = (node(store, "node_a").await, node(store, "node_b").await);
    for _ in 0..3 {
        store
            .create_notification(NewNotification {
                notify_url: Some("https://merchant.example/notify".parse().unwrap()),
                ..new_notification(&a.id, "e")
            })
            .await
            .unwrap();
    }
    let mine = store
        .claim(ClaimParams {
            node: n1.clone(),
            now: T0,
            horizon: HORIZON,
            limit: 2,
        })
        .await
        .unwrap();
    assert_eq!(mine.len(), 2);
    let theirs = claim(store, &n2).await;
    assert_eq!(theirs.len(), 1, "only what node_a did not take");
    assert!(!ids(&mine).contains(&theirs[0].id));
    // An outcome from a node that does not hold the delivery changes nothing.
    let done = complete(store, &n2, &mine[0], AttemptOutcome::Succeeded).await;
    assert!(!done.applied);
    assert_eq!(done.status, Some(DeliveryStatus::Pending));
}

pub async fn an_endpoint_is_served_by_one_node_at_a_time(store: &impl Store) {
    let a = app(store).await;
    let (n1, n2) = (node(store, "node_a").await, node(store, "node_b").await);
    let shared = store
        .create_endpoint(new_endpoint(&a.id, "https://a.example/shared"))
        .await
        .unwrap();
    for _ in 0..2 {
        store
            .create_notification(new_notification(&a.id, "e"))
            .await
            .unwrap();
    }
    let mine = store
        .claim(ClaimParams {
            node: n1.clone(),
            now: T0,
            horizon: HORIZON,
            limit: 1,
        })
        .await
        .unwrap();
    assert_eq!(mine.len(), 1);
    assert!(
        claim(store, &n2).await.is_empty(),
        "node_a holds a delivery of the endpoint, so node_b takes none of it"
    );
    // Another endpoint is free for node_b.
    store
        .update_endpoint(
            &a.id,
            &shared.id,
            EndpointPatch {
                enabled: Some(false),
                ..Default::default()
            },
            T0,
        )
        .await
        .unwrap();
    store
        .create_endpoint(new_endpoint(&a.id, "https://a.example/other"))
        .await
        .unwrap();
    store
        .create_notification(new_notification(&a.id, "e"))
        .await
        .unwrap();
    let other = claim(store, &n2).await;
    assert_eq!(other.len(), 1);
    assert_ne!(other[0].endpoint.as_ref().unwrap().id, shared.id);
    // Once node_a's delivery ends, node_b may take the endpoint's remaining one.
    complete(store, &n1, &mine[0], AttemptOutcome::Succeeded).await;
    let next = claim(store, &n2).await;
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].endpoint.as_ref().unwrap().id, shared.id);
}

pub async fn a_dead_nodes_work_is_rescued_after_its_lease(store: &impl Store) {
    let a = app(store).await;
    let (n1, n2) = (node(store, "node_a").await, node(store, "node_b").await);
    to_own_url(store, &a.id).await;
    let held = claim(store, &n1).await;
    assert_eq!(held.len(), 1);
    // node_b stays alive; node_a stops renewing.
    assert_eq!(
        store
            .renew_lease(lease(&n2, T0 + ms(20_000)))
            .await
            .unwrap(),
        Lease::Held
    );
    assert_eq!(
        store.rescue(T0 + LEASE - ms(1)).await.unwrap(),
        0,
        "not yet"
    );
    assert!(claim_at(store, &n2, T0 + LEASE - ms(1), HORIZON)
        .await
        .is_empty());
    assert_eq!(store.rescue(T0 + LEASE + ms(1)).await.unwrap(), 1);
    let taken = claim_at(store, &n2, T0 + LEASE + ms(1), HORIZON).await;
    assert_eq!(ids(&taken), ids(&held));
    assert_eq!(taken[0].attempts, 0);
    // The dead node learns it lost everything, and its late outcome is stale.
    assert_eq!(
        store
            .renew_lease(lease(&n1, T0 + LEASE + ms(2)))
            .await
            .unwrap(),
        Lease::Lost
    );
    let done = complete(store, &n1, &held[0], AttemptOutcome::Succeeded).await;
    assert!(!done.applied);
    to_own_url(store, &a.id).await;
    assert!(
        claim_at(store, &n1, T0 + LEASE + ms(2), HORIZON)
            .await
            .is_empty(),
        "a forgotten node claims nothing until it registers again"
    );
    let done = complete(store, &n2, &taken[0], AttemptOutcome::Succeeded).await;
    assert!(done.applied);
}

pub async fn a_node_that_leaves_while_holding_work_keeps_it_until_its_lease_ends(
    store: &impl Store,
) {
    let a = app(store).await;
    let (n1, n2) = (node(store, "node_a").await, node(store, "node_b").await);
    to_own_url(store, &a.id).await;
    let held = claim(store, &n1).await;
    assert_eq!(held.len(), 1);
    assert!(
        !store.leave(n1.clone()).await.unwrap(),
        "a node holding work is not forgotten by leaving"
    );
    assert!(
        claim_at(store, &n2, T0 + ms(1_000), HORIZON)
            .await
            .is_empty(),
        "what it holds stays its own"
    );
    let renewed = store
        .renew_lease(lease(&n2, T0 + LEASE - ms(1)))
        .await
        .unwrap();
    assert_eq!(renewed, Lease::Held);
    assert_eq!(store.rescue(T0 + LEASE + ms(1)).await.unwrap(), 1);
    let taken = claim_at(store, &n2, T0 + LEASE + ms(1), HORIZON).await;
    assert_eq!(ids(&taken), ids(&held), "rescued once its lease ended");
}

pub async fn nothing_is_claimed_at_birth_for_a_node_that_left(store: &impl Store) {
    let a = app(store).await;
    let n1: NodeId = Arc::from("node_a");
    // With claims at birth where the driver has them (SQLite).
    store.register_node(lease(&n1, T0), true).await.unwrap();
    let n2 = node(store, "node_b").await;
    store.leave(n1.clone()).await.unwrap();
    to_own_url(store, &a.id).await;
    assert_eq!(
        claim(store, &n2).await.len(),
        1,
        "born unheld: a live node claims it at once"
    );
}

pub async fn a_retry_far_ahead_releases_the_claim(store: &impl Store) {
    let a = app(store).await;
    let (n1, n2) = (node(store, "node_a").await, node(store, "node_b").await);
    store
        .create_notification(NewNotification {
            notify_url: Some("https://merchant.example/notify".parse().unwrap()),
            ..new_notification(&a.id, "e")
        })
        .await
        .unwrap();
    let job = claim(store, &n1).await.remove(0);
    let later = HORIZON + ms(3_600_000);
    let done = complete(store, &n1, &job, AttemptOutcome::Retry { next_at: later }).await;
    assert!(done.applied);
    assert!(done.held.is_none(), "beyond the horizon: released");
    assert!(claim(store, &n2).await.is_empty(), "not due yet");
    let again = claim_at(store, &n2, T0, later).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempts, 1);
    assert_eq!(again[0].next_at, later);
}

pub async fn a_node_reads_back_what_it_holds(store: &impl Store) {
    let a = app(store).await;
    let (n1, n2) = (node(store, "node_a").await, node(store, "node_b").await);
    for _ in 0..2 {
        store
            .create_notification(NewNotification {
                notify_url: Some("https://merchant.example/notify".parse().unwrap()),
                ..new_notification(&a.id, "e")
            })
            .await
            .unwrap();
    }
    let jobs = claim(store, &n1).await;
    assert_eq!(jobs.len(), 2);
    complete(store, &n1, &jobs[0], AttemptOutcome::Succeeded).await;
    let held = |node: &NodeId| HeldParams {
        node: node.clone(),
        now: T0,
        horizon: HORIZON,
    };
    let mine = store.held(held(&n1)).await.unwrap();
    assert_eq!(
        ids(&mine),
        vec![jobs[1].id.clone()],
        "what is still held, nothing else"
    );
    assert_eq!(mine[0].attempts, 0);
    assert!(store.held(held(&n2)).await.unwrap().is_empty());
}

pub async fn deleting_an_endpoint_cancels_its_pending_deliveries(store: &impl Store) {
    let a = app(store).await;
    let n1 = node(store, "node_a").await;
    let ep = store
        .create_endpoint(new_endpoint(&a.id, "https://a.example/x"))
        .await
        .unwrap();
    let n = store
        .create_notification(new_notification(&a.id, "e"))
        .await
        .unwrap();
    let jobs = claim(store, &n1).await;
    assert!(store
        .delete_endpoint(&a.id, &ep.id, T0 + ms(1))
        .await
        .unwrap());
    let d = store
        .get_delivery(&n.deliveries[0].id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.delivery.status, DeliveryStatus::Canceled);
    // The holder's late outcome changes nothing.
    let done = complete(store, &n1, &jobs[0], AttemptOutcome::Succeeded).await;
    assert!(!done.applied);
    assert_eq!(done.status, Some(DeliveryStatus::Canceled));
    let err = store
        .retry_delivery(&n.deliveries[0].id, T0 + ms(2))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    // New notifications no longer go there.
    let n2 = store
        .create_notification(new_notification(&a.id, "e"))
        .await
        .unwrap();
    assert!(n2.deliveries.is_empty());
}

pub async fn manual_retry_puts_a_failed_delivery_back_to_pending(store: &impl Store) {
    let a = app(store).await;
    let n1 = node(store, "node_a").await;
    let n = store
        .create_notification(NewNotification {
            notify_url: Some("https://merchant.example/notify".parse().unwrap()),
            ..new_notification(&a.id, "e")
        })
        .await
        .unwrap();
    let job = claim(store, &n1).await.remove(0);
    complete(store, &n1, &job, AttemptOutcome::Failed).await;
    let d = store
        .retry_delivery(&n.deliveries[0].id, T0 + ms(9))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.status, DeliveryStatus::Pending);
    assert_eq!(d.next_attempt_at, Some(T0 + ms(9)));
    let jobs = claim(store, &n1).await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].attempts, 1);
    assert_eq!(jobs[0].next_at, T0 + ms(9));
    assert!(store
        .retry_delivery("dlv_missing", T0)
        .await
        .unwrap()
        .is_none());
}

pub async fn manual_retry_of_a_held_delivery_frees_it_for_any_node(store: &impl Store) {
    let a = app(store).await;
    let (n1, n2) = (node(store, "node_a").await, node(store, "node_b").await);
    let n = store
        .create_notification(NewNotification {
            notify_url: Some("https://merchant.example/notify".parse().unwrap()),
            ..new_notification(&a.id, "e")
        })
        .await
        .unwrap();
    let job = claim(store, &n1).await.remove(0);
    let done = complete(
        store,
        &n1,
        &job,
        AttemptOutcome::Retry {
            next_at: T0 + ms(40_000),
        },
    )
    .await;
    let held = done.held.expect("held");
    store
        .retry_delivery(&n.deliveries[0].id, T0 + ms(2_000))
        .await
        .unwrap();
    let jobs = claim_at(store, &n2, T0 + ms(2_000), T0 + ms(2_000)).await;
    assert_eq!(
        ids(&jobs),
        vec![n.deliveries[0].id.clone()],
        "due now, anyone's"
    );
    let stale = complete(store, &n1, &held, AttemptOutcome::Succeeded).await;
    assert!(!stale.applied, "the former holder's outcome is stale");
}

pub async fn recover_requeues_failed_deliveries_since_a_time(store: &impl Store) {
    let a = app(store).await;
    let n1 = node(store, "node_a").await;
    let mut jobs = Vec::new();
    for t in [T0, T0 + ms(100)] {
        store
            .create_notification(NewNotification {
                notify_url: Some("https://merchant.example/notify".parse().unwrap()),
                now: t,
                ..new_notification(&a.id, "e")
            })
            .await
            .unwrap();
        jobs.push(claim(store, &n1).await.remove(0));
    }
    for j in &jobs {
        complete(store, &n1, j, AttemptOutcome::Failed).await;
    }
    assert_eq!(
        store
            .recover(&a.id, T0 + ms(50), T0 + ms(200))
            .await
            .unwrap(),
        1
    );
    let again = claim_at(store, &n1, T0 + ms(200), T0 + ms(200)).await;
    assert_eq!(ids(&again), vec![jobs[1].id.clone()]);
    assert_eq!(again[0].attempts, 1);
    assert_eq!(
        store
            .recover(&a.id, T0 + ms(50), T0 + ms(200))
            .await
            .unwrap(),
        0
    );
}

pub async fn recover_and_retry_never_overtake_a_pending_later_delivery(store: &impl Store) {
    let a = app(store).await;
    let n1 = node(store, "node_a").await;
    let mk = || NewNotification {
        notify_url: Some("https://merchant.example/notify".parse().unwrap()),
        order_key: Some("trade-9".parse().unwrap()),
        ..new_notification(&a.id, "e")
    };
    let first = store.create_notification(mk()).await.unwrap();
    let job = claim(store, &n1).await.remove(0);
    store.create_notification(mk()).await.unwrap();
    let done = complete(store, &n1, &job, AttemptOutcome::Failed).await;
    assert!(
        done.successor.is_some(),
        "the second is released and now pending"
    );
    let err = store
        .retry_delivery(&first.deliveries[0].id, T0 + ms(5))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert_eq!(store.recover(&a.id, T0, T0 + ms(5)).await.unwrap(), 0);
    let d = store
        .get_delivery(&first.deliveries[0].id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.delivery.status, DeliveryStatus::Failed);
}

pub async fn release_moves_held_jobs_and_skips_changed_ones(store: &impl Store) {
    let a = app(store).await;
    let (n1, n2) = (node(store, "node_a").await, node(store, "node_b").await);
    for _ in 0..2 {
        store
            .create_notification(NewNotification {
                notify_url: Some("https://merchant.example/notify".parse().unwrap()),
                ..new_notification(&a.id, "e")
            })
            .await
            .unwrap();
    }
    let jobs = claim(store, &n1).await;
    assert_eq!(jobs.len(), 2);
    // The second one gets an attempt first: its parked copy is stale.
    complete(
        store,
        &n1,
        &jobs[1],
        AttemptOutcome::Retry {
            next_at: T0 + ms(10),
        },
    )
    .await;
    let released = store
        .release(ReleaseParams {
            node: n1.clone(),
            jobs: jobs.iter().map(|j| (j.seq, j.attempts)).collect(),
            next_at: Some(T0 + ms(99_000)),
            now: T0 + ms(1),
        })
        .await
        .unwrap();
    assert_eq!(released, vec![jobs[0].seq]);
    let d = store.get_delivery(&jobs[0].id).await.unwrap().unwrap();
    assert_eq!(d.delivery.next_attempt_at, Some(T0 + ms(99_000)));
    assert_eq!(d.delivery.attempts, 0);
    let d = store.get_delivery(&jobs[1].id).await.unwrap().unwrap();
    assert_eq!(d.delivery.next_attempt_at, Some(T0 + ms(10)));
    // Released work is anyone's once due.
    let taken = claim_at(store, &n2, T0 + ms(99_000), T0 + ms(99_000)).await;
    assert_eq!(ids(&taken), vec![jobs[0].id.clone()]);
}

pub async fn stale_attempt_row_does_not_overwrite_the_recorded_one(store: &impl Store) {
    let a = app(store).await;
    let n1 = node(store, "node_a").await;
    store
        .create_notification(NewNotification {
            notify_url: Some("https://merchant.example/notify".parse().unwrap()),
            ..new_notification(&a.id, "e")
        })
        .await
        .unwrap();
    let job = claim(store, &n1).await.remove(0);
    complete(store, &n1, &job, AttemptOutcome::Succeeded).await;
    complete(store, &n1, &job, AttemptOutcome::Failed).await;
    let d = store.get_delivery(&job.id).await.unwrap().unwrap();
    assert_eq!(d.attempts.len(), 1);
    assert_eq!(d.attempts[0].status_code, Some(200));
}

pub async fn notifications_list_pages_and_filters_by_status(store: &impl Store) {
    let a = app(store).await;
    let n1 = node(store, "node_a").await;
    let mut created = Vec::new();
    for _ in 0..3 {
        let n = store
            .create_notification(NewNotification {
                notify_url: Some("https://merchant.example/notify".parse().unwrap()),
                ..new_notification(&a.id, "e")
            })
            .await
            .unwrap();
        created.push(n.notification.id.clone());
        let job = claim(store, &n1).await.remove(0);
        if created.len() == 2 {
            complete(store, &n1, &job, AttemptOutcome::Succeeded).await;
        }
    }
    let page1 = store
        .list_notifications(
            &a.id,
            ListNotifications {
                limit: 2,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        page1.items.iter().map(|n| n.id.clone()).collect::<Vec<_>>(),
        vec![created[2].clone(), created[1].clone()],
        "newest first"
    );
    // Summaries: the deliveries' state and attempt counts, no payload, no attempts.
    let second = &page1.items[1];
    assert_eq!(second.event_type, "e");
    assert_eq!(
        second.notify_url.as_deref(),
        Some("https://merchant.example/notify")
    );
    assert_eq!(second.deliveries.len(), 1);
    assert_eq!(second.deliveries[0].status, DeliveryStatus::Succeeded);
    assert_eq!(second.deliveries[0].attempts, 1);
    assert_eq!(second.deliveries[0].notification_id, created[1]);
    assert_eq!(page1.items[0].deliveries[0].status, DeliveryStatus::Pending);
    assert_eq!(page1.items[0].deliveries[0].attempts, 0);
    let page2 = store
        .list_notifications(
            &a.id,
            ListNotifications {
                limit: 2,
                cursor: page1.next_cursor.clone(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(page2.items.len(), 1);
    assert_eq!(page2.items[0].id, created[0]);
    assert!(page2.next_cursor.is_none());

    let ok = store
        .list_notifications(
            &a.id,
            ListNotifications {
                limit: 10,
                status: Some(DeliveryStatus::Succeeded),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(ok.items.len(), 1);
    assert_eq!(ok.items[0].id, created[1]);
    let pending = store
        .list_notifications(
            &a.id,
            ListNotifications {
                limit: 10,
                status: Some(DeliveryStatus::Pending),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(pending.items.len(), 2);
    let bad = store
        .list_notifications(
            &a.id,
            ListNotifications {
                limit: 10,
                cursor: Some("nope".into()),
                ..Default::default()
            },
        )
        .await;
    assert!(matches!(bad, Err(StoreError::BadCursor)));
}

pub async fn detail_reads_embed_the_latest_attempts_and_the_rest_are_paged(store: &impl Store) {
    let a = app(store).await;
    let n1 = node(store, "node_a").await;
    let n = store
        .create_notification(NewNotification {
            notify_url: Some("https://merchant.example/notify".parse().unwrap()),
            ..new_notification(&a.id, "e")
        })
        .await
        .unwrap();
    let total = DETAIL_ATTEMPTS + 5;
    let mut job = claim(store, &n1).await.remove(0);
    for _ in 0..total {
        let done = complete(
            store,
            &n1,
            &job,
            AttemptOutcome::Retry {
                next_at: T0 + ms(2_000),
            },
        )
        .await;
        assert!(done.applied);
        job = done.held.expect("held: due within the horizon");
    }
    let id = &n.deliveries[0].id;
    let d = store.get_delivery(id).await.unwrap().unwrap();
    assert_eq!(d.delivery.attempts, total, "the count says how many in all");
    assert_eq!(
        d.attempts.iter().map(|a| a.n).collect::<Vec<_>>(),
        (6..=total).collect::<Vec<_>>(),
        "the latest ones, in attempt order"
    );
    let detail = store
        .get_notification(&n.notification.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(detail.deliveries[0].attempts, d.attempts);

    let mut seen = Vec::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let page = store
            .list_attempts(id, ListAttempts { limit: 10, cursor })
            .await
            .unwrap()
            .expect("the delivery exists");
        assert!(page.items.len() <= 10);
        seen.extend(page.items.iter().map(|a| a.n));
        pages += 1;
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, (1..=total).collect::<Vec<_>>(), "oldest first, all");
    assert!(store
        .list_attempts("dl_missing", ListAttempts::default())
        .await
        .unwrap()
        .is_none());
    let bad = store
        .list_attempts(
            id,
            ListAttempts {
                limit: 10,
                cursor: Some("nope".into()),
            },
        )
        .await;
    assert!(matches!(bad, Err(StoreError::BadCursor)));
}

pub async fn endpoints_list_in_pages_by_creation_time_then_id(store: &impl Store) {
    let a = app(store).await;
    let mut created = Vec::new();
    for i in 0..5 {
        let ep = store
            .create_endpoint(NewEndpoint {
                // Two share a creation time: the id breaks the tie.
                now: T0 + ms(i / 2),
                ..new_endpoint(&a.id, &format!("https://example.com/{i}"))
            })
            .await
            .unwrap();
        created.push(ep);
    }
    created.sort_by(|x, y| (x.created_at, &x.id).cmp(&(y.created_at, &y.id)));
    assert!(store
        .delete_endpoint(&a.id, &created[1].id, T0)
        .await
        .unwrap());
    created.remove(1);
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = store
            .list_endpoints(&a.id, ListEndpoints { limit: 2, cursor })
            .await
            .unwrap();
        assert!(page.items.len() <= 2);
        seen.extend(page.items);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(
        seen, created,
        "every live endpoint once, by creation time then id"
    );
    let other = app(store).await;
    assert!(store
        .list_endpoints(
            &other.id,
            ListEndpoints {
                limit: 2,
                cursor: None
            }
        )
        .await
        .unwrap()
        .items
        .is_empty());
    let bad = store
        .list_endpoints(
            &a.id,
            ListEndpoints {
                limit: 2,
                cursor: Some("nope".into()),
            },
        )
        .await;
    assert!(matches!(bad, Err(StoreError::BadCursor)));
}

pub async fn meta_values_round_trip(store: &impl Store) {
    store.ping().await.expect("the database answers");
    assert_eq!(store.get_meta("k").await.unwrap(), None);
    store.set_meta("k", "v1").await.unwrap();
    store.set_meta("k", "v2").await.unwrap();
    assert_eq!(store.get_meta("k").await.unwrap().as_deref(), Some("v2"));
}

pub async fn credentials_change_reaches_claimed_work(store: &impl Store) {
    let a = app(store).await;
    let n1 = node(store, "node_a").await;
    let new_creds = Credentials::StandardWebhooks(Keys {
        keys: vec![KeyEntry {
            secret: "whsec_dGVzdHNlY3JldHRlc3RzZWNyZXQ=".into(),
            expires_at: None,
        }],
    });
    let updated = store
        .set_app_credentials(&a.id, new_creds.clone())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(updated.credentials, new_creds);
    store
        .create_notification(NewNotification {
            notify_url: Some("https://merchant.example/notify".parse().unwrap()),
            ..new_notification(&a.id, "e")
        })
        .await
        .unwrap();
    let jobs = claim(store, &n1).await;
    assert_eq!(jobs[0].app.credentials, new_creds);
    assert!(store
        .set_app_credentials("app_missing", new_creds)
        .await
        .unwrap()
        .is_none());
}

/// A sandbox trade change commits with its notifications (given notify ids kept), a stale
/// version or a duplicate trade is a conflict that changes nothing, and deadlines list
/// earliest first.
pub async fn sandbox_payment_and_its_notifications_commit_together(store: &impl Store) {
    let a = app(store).await;
    let row = |id: &str, trade: &str, deadline: Option<UnixMillis>| SandboxPayment {
        id: id.into(),
        app_id: a.id.clone(),
        out_trade_no: trade.into(),
        doc: r#"{"state":"WAIT_BUYER_PAY"}"#.into(),
        version: 0,
        deadline,
    };
    let first = store
        .write_sandbox_payment(SandboxWrite {
            payment: row("pay_1", "T-1", Some(T0 + ms(2_000))),
            expected_version: None,
            notifications: vec![],
        })
        .await
        .expect("insert");
    assert_eq!(first.payment.version, 1);
    store
        .write_sandbox_payment(SandboxWrite {
            payment: row("pay_2", "T-2", Some(T0 + ms(1_000))),
            expected_version: None,
            notifications: vec![],
        })
        .await
        .expect("insert a second");
    let dup = store
        .write_sandbox_payment(SandboxWrite {
            payment: row("pay_3", "T-1", None),
            expected_version: None,
            notifications: vec![],
        })
        .await;
    assert!(matches!(dup, Err(StoreError::Conflict(_))), "{dup:?}");
    let due = store.sandbox_deadlines(10).await.expect("deadlines");
    assert_eq!(
        due.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
        ["pay_2", "pay_1"]
    );

    let mut notification = new_notification(&a.id, "trade.success");
    notification.notify_url = Some("http://127.0.0.1:9/notify".parse().unwrap());
    notification.order_key = Some("T-1".parse().unwrap());
    let mut paid = row("pay_1", "T-1", None);
    paid.doc = r#"{"state":"TRADE_SUCCESS"}"#.into();
    let written = store
        .write_sandbox_payment(SandboxWrite {
            payment: paid.clone(),
            expected_version: Some(1),
            notifications: vec![
                SandboxNotification {
                    new: notification.clone(),
                    notify_id: Some("nid-1".into()),
                },
                SandboxNotification {
                    new: notification.clone(),
                    notify_id: Some("nid-1".into()),
                },
            ],
        })
        .await
        .expect("update with notifications");
    assert_eq!(written.payment.version, 2);
    assert_eq!(written.notifications.len(), 2);
    for n in &written.notifications {
        assert_eq!(n.deliveries[0].notify_id, "nid-1");
    }
    let got = store.get_sandbox_payment("pay_1").await.unwrap().unwrap();
    assert_eq!(got.doc, paid.doc);
    assert_eq!(got.deadline, None);
    assert_eq!(
        store
            .find_sandbox_payment(&a.id, "T-1")
            .await
            .unwrap()
            .map(|p| p.id),
        Some("pay_1".to_string())
    );

    // A stale version, or a notification for a missing app: nothing is written.
    let stale = store
        .write_sandbox_payment(SandboxWrite {
            payment: row("pay_1", "T-1", None),
            expected_version: Some(1),
            notifications: vec![],
        })
        .await;
    assert!(matches!(stale, Err(StoreError::Conflict(_))), "{stale:?}");
    let mut orphan = new_notification("app_missing", "trade.closed");
    orphan.notify_url = Some("http://127.0.0.1:9/notify".parse().unwrap());
    let mut closed = row("pay_1", "T-1", None);
    closed.doc = r#"{"state":"TRADE_CLOSED"}"#.into();
    let failed = store
        .write_sandbox_payment(SandboxWrite {
            payment: closed,
            expected_version: Some(2),
            notifications: vec![SandboxNotification {
                new: orphan,
                notify_id: None,
            }],
        })
        .await;
    assert!(failed.is_err());
    let got = store.get_sandbox_payment("pay_1").await.unwrap().unwrap();
    assert_eq!((got.version, got.doc.as_str()), (2, paid.doc.as_str()));
    assert_eq!(store.sandbox_deadlines(10).await.unwrap().len(), 1);
}

// --- sources (the inbound gateway) ------------------------------------------------------------

const SOURCE_SECRET: &str = "an-api-key-32-characters-long-xx";

fn new_source(name: &str, url: &str, now: UnixMillis) -> NewSource {
    NewSource {
        name: name.into(),
        profile: "wechatpay-v2".into(),
        keys: SourceKeys {
            keys: vec![SOURCE_SECRET.into()],
            decrypt_key: Some("decrypt-key".into()),
            dialect: None,
        },
        expect_app_id: Some("wx1234".into()),
        expect_merchant_id: None,
        format: SourceFormat::StandardWebhooks,
        app: NewApp {
            name: format!("source {name}"),
            profile: Profile::StandardWebhooks,
            retry: None,
            ack: None,
            credentials: creds(),
            now,
        },
        destination: NewEndpoint {
            retry: Some(herald_protocols::RetryPolicy {
                name: None,
                delays_ms: vec![1000, 2000],
                jitter: 0.0,
            }),
            now,
            ..new_endpoint("ignored", url)
        },
    }
}

/// A source, its internal app (with the forwards' secret) and its destination endpoint are
/// created together and read back as written, keys included.
pub async fn a_source_commits_with_its_app_and_destination_and_reads_back(store: &impl Store) {
    let s = store
        .create_source(new_source("alipay in", "http://127.0.0.1:9/notify", T0))
        .await
        .expect("create source");
    assert!(s.id.starts_with("src_"), "{}", s.id);
    assert_eq!(s.profile, "wechatpay-v2");
    assert_eq!(s.keys.keys, vec![SOURCE_SECRET.to_string()]);
    assert_eq!(s.keys.decrypt_key.as_deref(), Some("decrypt-key"));
    assert_eq!(s.created_at, T0);
    let read = store.get_source(&s.id).await.unwrap().expect("the source");
    assert_eq!(read, s);
    let app = store.get_app(&s.app_id).await.unwrap().expect("its app");
    assert_eq!(app.credentials, creds());
    let ep = store
        .get_endpoint(&s.app_id, &s.endpoint_id)
        .await
        .unwrap()
        .expect("its destination");
    assert_eq!(ep.url, "http://127.0.0.1:9/notify");
    assert_eq!(ep.retry.map(|r| r.delays_ms), Some(vec![1000, 2000]));
    assert!(store.get_source("src_missing").await.unwrap().is_none());
}

/// What a source receives is a notification of its app keyed by the provider's notify id
/// and ordered by the trade: a copy creates nothing, and a second notification of one trade
/// waits for the first one's forward.
pub async fn a_source_forwards_each_notify_id_once_ordered_per_trade(store: &impl Store) {
    let s = store
        .create_source(new_source("in", "http://127.0.0.1:9/notify", T0))
        .await
        .unwrap();
    let received = |notify_id: &str| NewNotification {
        idempotency_key: Some(notify_id.parse().unwrap()),
        order_key: Some("T1".parse().unwrap()),
        ..new_notification(&s.app_id, "TRADE_SUCCESS")
    };
    let first = store.create_notification(received("n-1")).await.unwrap();
    assert!(!first.replayed);
    assert_eq!(first.deliveries.len(), 1);
    assert_eq!(first.deliveries[0].url, "http://127.0.0.1:9/notify");
    assert_eq!(
        first.deliveries[0].endpoint_id.as_deref(),
        Some(&*s.endpoint_id)
    );
    let copy = store.create_notification(received("n-1")).await.unwrap();
    assert!(copy.replayed);
    assert_eq!(copy.notification.id, first.notification.id);
    let second = store.create_notification(received("n-2")).await.unwrap();
    assert!(!second.replayed);

    let n = node(store, "a").await;
    let jobs = claim(store, &n).await;
    let ids: Vec<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(
        ids,
        vec![first.deliveries[0].id.as_str()],
        "one per trade at a time"
    );
    let done = complete(store, &n, &jobs[0], AttemptOutcome::Succeeded).await;
    assert_eq!(
        done.successor.map(|j| j.id.clone()),
        Some(second.deliveries[0].id.clone()),
        "the trade's next notification follows the first"
    );
}

/// A deleted source is gone from reads and lists, its pending forwards are canceled, and
/// deleting it again answers false.
pub async fn deleting_a_source_hides_it_and_cancels_its_pending_forwards(store: &impl Store) {
    let s = store
        .create_source(new_source("in", "http://127.0.0.1:9/notify", T0))
        .await
        .unwrap();
    let kept = store
        .create_source(new_source("kept", "http://127.0.0.1:9/other", T0))
        .await
        .unwrap();
    let pending = store
        .create_notification(NewNotification {
            idempotency_key: Some("n-1".parse().unwrap()),
            ..new_notification(&s.app_id, "TRADE_SUCCESS")
        })
        .await
        .unwrap();
    assert!(store.delete_source(&s.id, T0 + ms(1)).await.unwrap());
    assert!(store.get_source(&s.id).await.unwrap().is_none());
    assert!(!store.delete_source(&s.id, T0 + ms(2)).await.unwrap());
    let d = store
        .get_delivery(&pending.deliveries[0].id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.delivery.status, DeliveryStatus::Canceled);
    let page = store
        .list_sources(ListSources {
            limit: 10,
            cursor: None,
        })
        .await
        .unwrap();
    let ids: Vec<&str> = page.items.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, vec![kept.id.as_str()]);
}

/// Sources list by creation time then id, a page at a time; a bad cursor is refused.
pub async fn sources_list_in_pages_by_creation_time_then_id(store: &impl Store) {
    let mut made = Vec::new();
    for i in 0..5 {
        let s = store
            .create_source(new_source(
                &format!("s{i}"),
                "http://127.0.0.1:9/n",
                T0 + ms(i),
            ))
            .await
            .unwrap();
        made.push(s.id);
    }
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = store
            .list_sources(ListSources { limit: 2, cursor })
            .await
            .unwrap();
        assert!(page.items.len() <= 2);
        seen.extend(page.items.into_iter().map(|s| s.id));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen, made);
    let bad = store
        .list_sources(ListSources {
            limit: 2,
            cursor: Some("nonsense".into()),
        })
        .await;
    assert!(matches!(bad, Err(StoreError::BadCursor)), "{bad:?}");
}

// --- secrets at rest ------------------------------------------------------------------------

// --- endpoint health, ops targets, retention -------------------------------------------

/// A breaker that opens after 3 failures for 5 s (then 10 s, ...), and disables after a day.
fn policy() -> BreakerPolicy {
    BreakerPolicy {
        failure_threshold: 3,
        cooldown: Duration::from_secs(5),
        cooldown_max: Duration::from_secs(60),
        disable_after: Duration::from_secs(86_400),
    }
}

async fn health(
    store: &impl Store,
    endpoint_id: &str,
    signal: HealthSignal,
    now: UnixMillis,
) -> HealthRecorded {
    store
        .record_health(HealthReport {
            endpoint_id: endpoint_id.into(),
            signals: vec![signal],
            now,
            policy: policy(),
        })
        .await
        .expect("record health")
        .expect("the endpoint exists")
}

const OPS_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

fn ops_target(url: &str) -> OpsTarget {
    OpsTarget {
        url: url.into(),
        credentials: Credentials::StandardWebhooks(Keys {
            keys: vec![KeyEntry {
                secret: OPS_SECRET.into(),
                expires_at: None,
            }],
        }),
        retry: None,
    }
}

pub async fn health_failures_open_the_breaker_and_claims_wait_for_the_cooldown(store: &impl Store) {
    let a = app(store).await;
    let n1 = node(store, "node_a").await;
    let ep = store
        .create_endpoint(new_endpoint(&a.id, "https://a.example/x"))
        .await
        .unwrap();
    assert_eq!(ep.health, EndpointHealth::default());
    let n = store
        .create_notification(new_notification(&a.id, "e"))
        .await
        .unwrap();
    let t = T0 + ms(1_000);
    assert_eq!(
        health(store, &ep.id, HealthSignal::Failure, t)
            .await
            .transition,
        None
    );
    assert_eq!(
        health(store, &ep.id, HealthSignal::Failure, t + ms(1))
            .await
            .transition,
        None
    );
    let opened = health(store, &ep.id, HealthSignal::Failure, t + ms(2)).await;
    assert_eq!(opened.transition, Some(HealthTransition::Opened));
    assert_eq!(opened.endpoint.health.state, BreakerState::Open);
    assert_eq!(opened.endpoint.health.consecutive_failures, 3);
    assert_eq!(opened.endpoint.health.failing_since, Some(t));
    let until = t + ms(2) + ms(5_000);
    assert_eq!(opened.endpoint.health.open_until, Some(until));
    // Stored, and shown by reads.
    let got = store.get_endpoint(&a.id, &ep.id).await.unwrap().unwrap();
    assert_eq!(got.health, opened.endpoint.health);
    assert!(got.enabled, "an open breaker does not disable the endpoint");

    // While it cools down, nothing of the endpoint is claimed (and the delivery stays
    // pending, no attempt spent).
    assert!(claim_at(store, &n1, until - ms(1), until + ms(60_000))
        .await
        .is_empty());
    let d = store
        .get_delivery(&n.deliveries[0].id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.delivery.status, DeliveryStatus::Pending);
    assert_eq!(d.delivery.attempts, 0);
    // A delivery to another, healthy endpoint is not held back.
    let other = store
        .create_notification(NewNotification {
            notify_url: Some("https://b.example/hook".parse().unwrap()),
            ..new_notification(&a.id, "e")
        })
        .await
        .unwrap();
    let jobs = claim_at(store, &n1, until - ms(1), until + ms(60_000)).await;
    assert_eq!(ids(&jobs), vec![other.deliveries[0].id.clone()]);

    // Cooled down: the endpoint's delivery is claimable again (the probe).
    let jobs = claim_at(store, &n1, until, until + ms(60_000)).await;
    assert_eq!(ids(&jobs), vec![n.deliveries[0].id.clone()]);
    let health_of = jobs[0].endpoint.as_ref().unwrap().health.clone();
    assert!(health_of.half_open(until), "{health_of:?}");

    // The probe fails: open again, for twice as long.
    let reopened = health(store, &ep.id, HealthSignal::Failure, until + ms(10)).await;
    assert_eq!(reopened.transition, Some(HealthTransition::Reopened));
    assert_eq!(
        reopened.endpoint.health.open_until,
        Some(until + ms(10) + ms(10_000))
    );
    // A later probe succeeds: closed, counters reset.
    let closed = health(store, &ep.id, HealthSignal::Success, until + ms(20_000)).await;
    assert_eq!(closed.transition, Some(HealthTransition::Recovered));
    assert_eq!(closed.endpoint.health.state, BreakerState::Closed);
    assert_eq!(closed.endpoint.health.consecutive_failures, 0);
    assert_eq!(
        closed.endpoint.health.last_success_at,
        Some(until + ms(20_000))
    );
    assert_eq!(closed.endpoint.health.last_failure_at, Some(until + ms(10)));
    // A missing endpoint has no health to record.
    let none = store
        .record_health(HealthReport {
            endpoint_id: "ep_missing".into(),
            signals: vec![HealthSignal::Failure],
            now: T0,
            policy: policy(),
        })
        .await
        .unwrap();
    assert!(none.is_none());
}

pub async fn a_gone_endpoint_is_disabled_and_its_work_waits_until_enabled_again(
    store: &impl Store,
) {
    let a = app(store).await;
    let n1 = node(store, "node_a").await;
    let ep = store
        .create_endpoint(new_endpoint(&a.id, "https://a.example/x"))
        .await
        .unwrap();
    let n = store
        .create_notification(new_notification(&a.id, "e"))
        .await
        .unwrap();
    let gone = health(store, &ep.id, HealthSignal::Gone, T0 + ms(1)).await;
    assert_eq!(gone.transition, Some(HealthTransition::Disabled));
    assert_eq!(gone.endpoint.health.state, BreakerState::Disabled);
    assert_eq!(
        gone.endpoint.health.disabled_reason.as_deref(),
        Some("the endpoint answered 410 Gone")
    );
    assert!(!gone.endpoint.enabled);
    let got = store.get_endpoint(&a.id, &ep.id).await.unwrap().unwrap();
    assert!(!got.enabled);
    assert_eq!(got.health.state, BreakerState::Disabled);
    // Its pending delivery is never claimed while disabled, however late.
    assert!(
        claim_at(store, &n1, T0 + ms(86_400_000), T0 + ms(90_000_000))
            .await
            .is_empty()
    );
    // Later outcomes (attempts that were in flight) change nothing.
    let late = health(store, &ep.id, HealthSignal::Success, T0 + ms(2)).await;
    assert_eq!(late.transition, None);
    assert_eq!(late.endpoint.health.state, BreakerState::Disabled);
    // New notifications skip it.
    let n2 = store
        .create_notification(new_notification(&a.id, "e"))
        .await
        .unwrap();
    assert!(n2.deliveries.is_empty());

    // Enabling it again resets its health, and the delivery that waited is claimable.
    let enabled = store
        .update_endpoint(
            &a.id,
            &ep.id,
            EndpointPatch {
                enabled: Some(true),
                ..EndpointPatch::default()
            },
            T0 + ms(3),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(enabled.health.state, BreakerState::Closed);
    assert_eq!(enabled.health.consecutive_failures, 0);
    assert_eq!(enabled.health.changed_at, Some(T0 + ms(3)));
    let jobs = claim_at(store, &n1, T0 + ms(4), HORIZON).await;
    assert_eq!(ids(&jobs), vec![n.deliveries[0].id.clone()]);
}

pub async fn ops_target_round_trips_as_an_internal_app_hidden_from_app_lists(store: &impl Store) {
    let a = app(store).await;
    assert_eq!(store.get_app_ops(&a.id).await.unwrap(), None);
    assert!(store
        .set_app_ops(&a.id, Some(ops_target("https://ops.example/hook")), T0)
        .await
        .unwrap());
    assert_eq!(
        store.get_app_ops(&a.id).await.unwrap(),
        Some(ops_target("https://ops.example/hook"))
    );
    // The internal app holding it is in no app list.
    let listed = store
        .list_apps(ListApps {
            limit: 100,
            cursor: None,
        })
        .await
        .unwrap();
    let listed: Vec<String> = listed.items.into_iter().map(|x| x.id).collect();
    assert_eq!(listed, vec![a.id.clone()]);
    let summaries = store
        .list_app_summaries(crate::dashboard::ListPage {
            limit: 100,
            cursor: None,
        })
        .await
        .unwrap();
    let summaries: Vec<String> = summaries.items.into_iter().map(|x| x.id).collect();
    assert_eq!(summaries, vec![a.id.clone()]);

    // A second set changes URL, secret and retry policy in place.
    let changed = OpsTarget {
        url: "https://ops2.example/hook".into(),
        credentials: creds(),
        retry: RetryPolicy::named("alipay"),
    };
    assert!(store
        .set_app_ops(&a.id, Some(changed.clone()), T0 + ms(1))
        .await
        .unwrap());
    assert_eq!(store.get_app_ops(&a.id).await.unwrap(), Some(changed));
    let listed = store
        .list_apps(ListApps {
            limit: 100,
            cursor: None,
        })
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1, "still one internal app, not two");

    // Missing apps: nothing set, a clear error on read.
    assert!(!store
        .set_app_ops("app_missing", Some(ops_target("https://x.example/")), T0)
        .await
        .unwrap());
    assert!(matches!(
        store.get_app_ops("app_missing").await,
        Err(StoreError::NotFound("app"))
    ));
    // Cleared.
    assert!(store.set_app_ops(&a.id, None, T0 + ms(2)).await.unwrap());
    assert_eq!(store.get_app_ops(&a.id).await.unwrap(), None);
}

/// The ops notifications of the internal app `ops_app` (any status).
async fn ops_notifications(store: &impl Store, ops_app: &str) -> Vec<NotificationSummary> {
    store
        .list_notifications(
            ops_app,
            ListNotifications {
                limit: 100,
                ..ListNotifications::default()
            },
        )
        .await
        .unwrap()
        .items
}

pub async fn a_health_transition_commits_exactly_one_ops_notification_with_it(store: &impl Store) {
    let a = app(store).await;
    let url = "https://ops.example/hook";
    assert!(store
        .set_app_ops(&a.id, Some(ops_target(url)), T0)
        .await
        .unwrap());
    let ep = store
        .create_endpoint(new_endpoint(&a.id, "https://u:pw@a.example/x"))
        .await
        .unwrap();
    let t = T0 + ms(1_000);
    for i in 0..2 {
        let r = health(store, &ep.id, HealthSignal::Failure, t + ms(i)).await;
        assert_eq!((r.transition, r.ops_notification), (None, None));
    }
    let opened = health(store, &ep.id, HealthSignal::Failure, t + ms(2)).await;
    assert_eq!(opened.transition, Some(HealthTransition::Opened));
    let id = opened
        .ops_notification
        .expect("the transition committed its ops notification");
    let n = store.get_notification(&id).await.unwrap().expect("stored");
    let ops_app = n.notification.app_id.clone();
    assert_ne!(ops_app, a.id, "stored on the internal app");
    assert_eq!(n.notification.event_type, "endpoint.breaker_opened");
    assert_eq!(n.notification.order_key.as_deref(), Some(ep.id.as_str()));
    let body: serde_json::Value = serde_json::from_str(&n.notification.payload).unwrap();
    assert_eq!(body["type"], "endpoint.breaker_opened");
    assert_eq!(body["data"]["app_id"], a.id.as_str());
    assert_eq!(body["data"]["endpoint_id"], ep.id.as_str());
    assert_eq!(body["data"]["url"], "https://u:****@a.example/x");
    assert_eq!(body["data"]["health"]["state"], "open");
    assert_eq!(body["data"]["health"]["consecutive_failures"], 3);
    assert_eq!(n.deliveries.len(), 1);
    let d = &n.deliveries[0].delivery;
    assert_eq!(
        (d.url.as_str(), d.status, d.attempts),
        (url, DeliveryStatus::Pending, 0)
    );

    // It is an ordinary delivery: a node claims it, to be signed with the ops secret.
    let n1 = node(store, "node_a").await;
    let jobs = claim_at(store, &n1, t + ms(2), HORIZON).await;
    assert_eq!(ids(&jobs), vec![d.id.clone()]);
    assert_eq!(jobs[0].app.profile, Profile::StandardWebhooks);
    assert_eq!(jobs[0].app.credentials, ops_target(url).credentials);
    assert_eq!(jobs[0].app.retry, RetryPolicy::standard());
    assert_eq!(jobs[0].endpoint.as_ref().map(|e| e.url.as_str()), Some(url));

    // A failed probe reopens the breaker: not notified.
    let until = t + ms(2) + ms(5_000);
    let reopened = health(store, &ep.id, HealthSignal::Failure, until + ms(10)).await;
    assert_eq!(reopened.transition, Some(HealthTransition::Reopened));
    assert_eq!(reopened.ops_notification, None);
    // Recovery is: one more, ordered after the first (same order key).
    let closed = health(store, &ep.id, HealthSignal::Success, until + ms(20_000)).await;
    assert_eq!(closed.transition, Some(HealthTransition::Recovered));
    let id2 = closed.ops_notification.expect("recovery notified");
    let n2 = store.get_notification(&id2).await.unwrap().unwrap();
    assert_eq!(n2.notification.event_type, "endpoint.recovered");
    assert_eq!(n2.notification.app_id, ops_app);
    // A success of a closed breaker changes nothing and notifies nothing.
    let again = health(store, &ep.id, HealthSignal::Success, until + ms(20_001)).await;
    assert_eq!((again.transition, again.ops_notification), (None, None));
    let all = ops_notifications(store, &ops_app).await;
    assert_eq!(all.len(), 2, "one notification per notified transition");
}

pub async fn no_ops_notification_without_an_ops_target_or_for_an_ops_endpoints_own_transitions(
    store: &impl Store,
) {
    // No target: the transition is recorded, nothing is stored.
    let a = app(store).await;
    let ep = store
        .create_endpoint(new_endpoint(&a.id, "https://a.example/x"))
        .await
        .unwrap();
    let gone = health(store, &ep.id, HealthSignal::Gone, T0 + ms(1)).await;
    assert_eq!(gone.transition, Some(HealthTransition::Disabled));
    assert_eq!(gone.ops_notification, None);

    let b = named_app(store, "b").await;
    assert!(store
        .set_app_ops(&b.id, Some(ops_target("https://ops.example/hook")), T0)
        .await
        .unwrap());
    let ep_b = store
        .create_endpoint(new_endpoint(&b.id, "https://b.example/x"))
        .await
        .unwrap();
    let id = health(store, &ep_b.id, HealthSignal::Gone, T0 + ms(2))
        .await
        .ops_notification
        .expect("notified");
    let n = store.get_notification(&id).await.unwrap().unwrap();
    let ops_app = n.notification.app_id.clone();
    let ops_ep = n.deliveries[0]
        .delivery
        .endpoint_id
        .clone()
        .expect("sent to the internal app's endpoint");
    // The ops URL answering 410: its endpoint is disabled, and it reports on nobody.
    let own = health(store, &ops_ep, HealthSignal::Gone, T0 + ms(3)).await;
    assert_eq!(own.transition, Some(HealthTransition::Disabled));
    assert_eq!(own.ops_notification, None);
    assert_eq!(ops_notifications(store, &ops_app).await.len(), 1);
    // An internal app is given no ops target of its own.
    assert!(!store
        .set_app_ops(&ops_app, Some(ops_target("https://x.example/")), T0 + ms(4))
        .await
        .unwrap());
    // Clearing the target cancels what was still pending for it.
    assert!(store.set_app_ops(&b.id, None, T0 + ms(5)).await.unwrap());
    let d = store
        .get_delivery(&n.deliveries[0].delivery.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.delivery.status, DeliveryStatus::Canceled);
    // Without a target now, a transition stores nothing.
    let ep_b2 = store
        .create_endpoint(new_endpoint(&b.id, "https://b2.example/x"))
        .await
        .unwrap();
    let r = health(store, &ep_b2.id, HealthSignal::Gone, T0 + ms(6)).await;
    assert_eq!(
        (r.transition, r.ops_notification),
        (Some(HealthTransition::Disabled), None)
    );
}

pub async fn purge_removes_only_old_finished_notifications_in_batches(store: &impl Store) {
    let a = app(store).await;
    let n1 = node(store, "node_a").await;
    let to = |url: &str, now: UnixMillis| NewNotification {
        notify_url: Some(url.parse().unwrap()),
        now,
        ..new_notification(&a.id, "e")
    };
    // Created at T0: succeeded, failed, still pending, finished late; at T0 + 6 s: finished.
    let done = store
        .create_notification(to("https://a.example/1", T0))
        .await
        .unwrap();
    let failed = store
        .create_notification(to("https://a.example/2", T0))
        .await
        .unwrap();
    let pending = store
        .create_notification(to("https://a.example/3", T0))
        .await
        .unwrap();
    let late = store
        .create_notification(to("https://a.example/4", T0))
        .await
        .unwrap();
    let recent = store
        .create_notification(to("https://a.example/5", T0 + ms(6_000)))
        .await
        .unwrap();
    // And one that went nowhere (the app has no endpoints).
    let nowhere = store
        .create_notification(new_notification(&a.id, "e"))
        .await
        .unwrap();
    assert!(nowhere.deliveries.is_empty());
    let jobs = claim(store, &n1).await;
    assert_eq!(jobs.len(), 5);
    let job = |n: &CreatedNotification| {
        jobs.iter()
            .find(|j| j.id == n.deliveries[0].id)
            .cloned()
            .expect("claimed")
    };
    assert!(
        complete(store, &n1, &job(&done), AttemptOutcome::Succeeded)
            .await
            .applied
    );
    assert!(
        complete(store, &n1, &job(&failed), AttemptOutcome::Failed)
            .await
            .applied
    );
    assert!(
        complete(store, &n1, &job(&recent), AttemptOutcome::Succeeded)
            .await
            .applied
    );
    let mut late_report = report(&job(&late), AttemptOutcome::Succeeded);
    late_report.attempt.at = T0 + ms(9_000);
    let applied = store
        .complete(CompleteParams {
            node: n1.clone(),
            report: late_report,
            now: T0 + ms(9_000),
            horizon: HORIZON,
        })
        .await
        .unwrap();
    assert!(applied.applied);

    // Purge what finished before T0 + 5 s, one notification per batch at first.
    let before = T0 + ms(5_000);
    let first = store
        .purge_finished(PurgeParams { before, limit: 1 })
        .await
        .unwrap();
    assert_eq!(first.notifications, 1);
    let rest = store
        .purge_finished(PurgeParams { before, limit: 100 })
        .await
        .unwrap();
    let mut total = first;
    total.add(rest);
    assert_eq!(
        total,
        Purged {
            notifications: 3,
            deliveries: 2,
            attempts: 2
        }
    );
    for gone in [&done, &failed, &nowhere] {
        assert!(store
            .get_notification(&gone.notification.id)
            .await
            .unwrap()
            .is_none());
    }
    for d in [&done, &failed] {
        assert!(store
            .get_delivery(&d.deliveries[0].id)
            .await
            .unwrap()
            .is_none());
        assert!(store
            .list_attempts(&d.deliveries[0].id, ListAttempts::default())
            .await
            .unwrap()
            .is_none());
    }
    for kept in [&pending, &late, &recent] {
        let got = store
            .get_notification(&kept.notification.id)
            .await
            .unwrap()
            .expect("kept");
        assert_eq!(got.notification.payload, kept.notification.payload);
    }
    let d = store
        .get_delivery(&late.deliveries[0].id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.attempts.len(), 1);
    // Nothing more to purge at that cutoff; the pending one is never purged, however late.
    assert_eq!(
        store
            .purge_finished(PurgeParams { before, limit: 100 })
            .await
            .unwrap(),
        Purged::default()
    );
    let all = store
        .purge_finished(PurgeParams {
            before: T0 + ms(365 * 86_400_000),
            limit: 100,
        })
        .await
        .unwrap();
    assert_eq!(all.notifications, 2);
    let got = store
        .get_notification(&pending.notification.id)
        .await
        .unwrap()
        .expect("pending work is never purged");
    assert_eq!(got.deliveries[0].delivery.status, DeliveryStatus::Pending);
    assert_eq!(store.pending_count().await.unwrap(), 1);
}

pub async fn backlog_and_breaker_counts(store: &impl Store) {
    let a = app(store).await;
    assert_eq!(store.pending_count().await.unwrap(), 0);
    let e1 = store
        .create_endpoint(new_endpoint(&a.id, "https://a.example/1"))
        .await
        .unwrap();
    store
        .create_endpoint(new_endpoint(&a.id, "https://a.example/2"))
        .await
        .unwrap();
    store
        .create_notification(new_notification(&a.id, "e"))
        .await
        .unwrap();
    assert_eq!(store.pending_count().await.unwrap(), 2);
    health(store, &e1.id, HealthSignal::Gone, T0).await;
    let mut counts = store.breaker_counts().await.unwrap();
    counts.sort_by_key(|(s, _)| s.as_str());
    assert_eq!(
        counts,
        vec![(BreakerState::Closed, 1), (BreakerState::Disabled, 1)]
    );
}

/// What the sealing cases need from a driver besides the store: one database reopened with
/// various keyrings, and its `apps.credentials` column as stored.
#[async_trait::async_trait]
pub trait SealingHarness: Send + Sync {
    type Store: Store;
    /// Opens the harness's database (created empty on first use) with this keyring. A case
    /// closes the previous store ([`MetaStore::close`](crate::MetaStore::close)) first.
    async fn open(&self, sealer: Sealer) -> Self::Store;
    /// The app's `apps.credentials` column as stored.
    async fn raw_credentials(&self, app_id: &str) -> String;
    /// Overwrites the app's `apps.credentials` column (while no store is open).
    async fn set_raw_credentials(&self, app_id: &str, raw: &str);
    /// The source's `sources.keys` column as stored.
    async fn raw_source_keys(&self, source_id: &str) -> String;
    /// Overwrites the source's `sources.keys` column (while no store is open).
    async fn set_raw_source_keys(&self, source_id: &str, raw: &str);
}

pub async fn recover_endpoint_requeues_only_that_endpoints_failures_since_a_time(
    store: &impl Store,
) {
    let a = app(store).await;
    let b = named_app(store, "other").await;
    let e1 = store
        .create_endpoint(new_endpoint(&a.id, "https://one.example/hook"))
        .await
        .unwrap();
    let e2 = store
        .create_endpoint(new_endpoint(&a.id, "https://two.example/hook"))
        .await
        .unwrap();
    let eb = store
        .create_endpoint(new_endpoint(&b.id, "https://b.example/hook"))
        .await
        .unwrap();
    let n1 = node(store, "node_a").await;
    let mut made = Vec::new();
    for t in [T0, T0 + ms(100)] {
        let n = store
            .create_notification(NewNotification {
                now: t,
                ..new_notification(&a.id, "e")
            })
            .await
            .unwrap();
        assert_eq!(n.deliveries.len(), 2, "one per endpoint");
        made.extend(n.deliveries);
    }
    let jobs = claim(store, &n1).await;
    assert_eq!(jobs.len(), 4);
    for j in &jobs {
        complete(store, &n1, j, AttemptOutcome::Failed).await;
    }
    let status = |id: String| async move {
        store
            .get_delivery(&id)
            .await
            .unwrap()
            .unwrap()
            .delivery
            .status
    };
    assert_eq!(
        store
            .recover_endpoint(&a.id, &e1.id, T0 + ms(50), T0 + ms(200))
            .await
            .unwrap(),
        Some(1)
    );
    for d in &made {
        let expected =
            if d.endpoint_id.as_deref() == Some(e1.id.as_str()) && d.created_at >= T0 + ms(50) {
                DeliveryStatus::Pending
            } else {
                DeliveryStatus::Failed
            };
        assert_eq!(status(d.id.clone()).await, expected, "{d:?}");
    }
    assert!(made
        .iter()
        .any(|d| d.endpoint_id.as_deref() == Some(e2.id.as_str())));
    let again = claim_at(store, &n1, T0 + ms(200), T0 + ms(200)).await;
    assert_eq!(again.len(), 1);
    assert_eq!(
        again[0].endpoint.as_ref().map(|e| e.id.as_str()),
        Some(e1.id.as_str())
    );
    assert_eq!(
        store
            .recover_endpoint(&a.id, &e1.id, T0 + ms(50), T0 + ms(300))
            .await
            .unwrap(),
        Some(0),
        "nothing failed any more"
    );
    // Another app's endpoint, a made-up one and a deleted one are not found.
    assert_eq!(
        store
            .recover_endpoint(&a.id, &eb.id, T0, T0 + ms(300))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .recover_endpoint(&a.id, "ep_missing", T0, T0 + ms(300))
            .await
            .unwrap(),
        None
    );
    assert!(store
        .delete_endpoint(&a.id, &e2.id, T0 + ms(300))
        .await
        .unwrap());
    assert_eq!(
        store
            .recover_endpoint(&a.id, &e2.id, T0, T0 + ms(300))
            .await
            .unwrap(),
        None
    );
}

fn session(id: &str, principal: SessionPrincipal, now: UnixMillis, max_live: u32) -> NewSession {
    NewSession {
        id_sha256: id.into(),
        principal,
        now,
        expires_at: now + ms(1_000),
        max_live,
    }
}

pub async fn sessions_are_found_by_hash_until_they_expire_or_end(store: &impl Store) {
    assert!(store
        .create_session(session("aa", SessionPrincipal::Admin, T0, 10))
        .await
        .unwrap());
    let found = store.find_session("aa", T0 + ms(1)).await.unwrap();
    assert_eq!(
        found,
        Some(SessionRecord {
            principal: SessionPrincipal::Admin,
            created_at: T0,
            expires_at: T0 + ms(1_000),
        })
    );
    assert_eq!(store.find_session("bb", T0 + ms(1)).await.unwrap(), None);
    assert_eq!(
        store.find_session("aa", T0 + ms(1_000)).await.unwrap(),
        None,
        "expired"
    );
    let err = store
        .create_session(session("aa", SessionPrincipal::Admin, T0, 10))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert!(store.delete_session("aa").await.unwrap());
    assert!(!store.delete_session("aa").await.unwrap());
    assert_eq!(store.find_session("aa", T0 + ms(1)).await.unwrap(), None);
}

pub async fn a_revoked_keys_sessions_are_no_longer_found(store: &impl Store) {
    let a = app(store).await;
    let b = named_app(store, "b").await;
    let key = |app_id: &str, hash: &str| NewApiKey {
        app_id: app_id.into(),
        prefix: "hk_abcd".into(),
        key_sha256: hash.into(),
        now: T0,
    };
    let ka = store.create_api_key(key(&a.id, "k1")).await.unwrap();
    let kb = store.create_api_key(key(&b.id, "k2")).await.unwrap();
    let as_key = |k: &ApiKey| SessionPrincipal::ApiKey {
        app_id: k.app_id.clone(),
        key_id: k.id.clone(),
    };
    for (id, k) in [("sa", &ka), ("sb", &kb)] {
        assert!(store
            .create_session(session(id, as_key(k), T0, 10))
            .await
            .unwrap());
    }
    assert_eq!(
        store
            .find_session("sa", T0)
            .await
            .unwrap()
            .unwrap()
            .principal,
        as_key(&ka)
    );
    assert!(store.delete_api_key(&a.id, &ka.id).await.unwrap());
    assert_eq!(store.find_session("sa", T0).await.unwrap(), None, "revoked");
    assert!(store.find_session("sb", T0).await.unwrap().is_some());
    store.delete_app(&b.id, T0 + ms(1)).await.unwrap();
    assert_eq!(
        store.find_session("sb", T0 + ms(2)).await.unwrap(),
        None,
        "its app is deleted"
    );
    // A session naming a key under another app than the key's is nobody's.
    let kc = store.create_api_key(key(&a.id, "k3")).await.unwrap();
    let forged = SessionPrincipal::ApiKey {
        app_id: b.id.clone(),
        key_id: kc.id.clone(),
    };
    assert!(store
        .create_session(session("sc", forged, T0, 10))
        .await
        .unwrap());
    assert_eq!(store.find_session("sc", T0).await.unwrap(), None);
}

pub async fn live_sessions_are_capped_per_principal(store: &impl Store) {
    let a = app(store).await;
    let k = store
        .create_api_key(NewApiKey {
            app_id: a.id.clone(),
            prefix: "hk_abcd".into(),
            key_sha256: "k1".into(),
            now: T0,
        })
        .await
        .unwrap();
    let key = SessionPrincipal::ApiKey {
        app_id: a.id.clone(),
        key_id: k.id.clone(),
    };
    for id in ["a1", "a2"] {
        assert!(store
            .create_session(session(id, SessionPrincipal::Admin, T0, 2))
            .await
            .unwrap());
    }
    assert!(
        !store
            .create_session(session("a3", SessionPrincipal::Admin, T0 + ms(1), 2))
            .await
            .unwrap(),
        "the admin has two live sessions"
    );
    assert_eq!(store.find_session("a3", T0 + ms(1)).await.unwrap(), None);
    assert!(
        store
            .create_session(session("k1", key, T0 + ms(1), 2))
            .await
            .unwrap(),
        "another principal's count is its own"
    );
    assert!(
        store
            .create_session(session("a4", SessionPrincipal::Admin, T0 + ms(1_000), 2))
            .await
            .unwrap(),
        "expired ones do not count"
    );
    store.delete_session("a4").await.unwrap();
    assert!(store
        .create_session(session("a5", SessionPrincipal::Admin, T0 + ms(1_000), 2))
        .await
        .unwrap());
}

pub async fn a_login_link_is_used_once_even_when_raced(store: &impl Store) {
    assert!(store
        .create_login_link(session("l1", SessionPrincipal::Admin, T0, 10))
        .await
        .unwrap());
    let (x, y) = tokio::join!(
        store.consume_login_link("l1", T0 + ms(1)),
        store.consume_login_link("l1", T0 + ms(1))
    );
    let won: Vec<_> = [x.unwrap(), y.unwrap()].into_iter().flatten().collect();
    assert_eq!(won, vec![SessionPrincipal::Admin], "exactly one use");
    assert_eq!(
        store.consume_login_link("l1", T0 + ms(2)).await.unwrap(),
        None
    );
    assert_eq!(
        store.consume_login_link("nope", T0 + ms(2)).await.unwrap(),
        None
    );
    // An expired link signs no one in, and is gone.
    assert!(store
        .create_login_link(session("l2", SessionPrincipal::Admin, T0, 10))
        .await
        .unwrap());
    assert_eq!(
        store
            .consume_login_link("l2", T0 + ms(1_000))
            .await
            .unwrap(),
        None
    );
    // Links are capped in all.
    for id in ["m1", "m2"] {
        assert!(store
            .create_login_link(session(id, SessionPrincipal::Admin, T0, 2))
            .await
            .unwrap());
    }
    assert!(!store
        .create_login_link(session("m3", SessionPrincipal::Admin, T0, 2))
        .await
        .unwrap());
    assert_eq!(
        store.consume_login_link("m3", T0 + ms(1)).await.unwrap(),
        None
    );
    assert_eq!(
        store.consume_login_link("m1", T0 + ms(1)).await.unwrap(),
        Some(SessionPrincipal::Admin)
    );
}

pub async fn purging_sessions_removes_only_expired_ones(store: &impl Store) {
    for (id, now) in [("old", T0), ("new", T0 + ms(5_000))] {
        assert!(store
            .create_session(session(id, SessionPrincipal::Admin, now, 10))
            .await
            .unwrap());
        assert!(store
            .create_login_link(session(id, SessionPrincipal::Admin, now, 10))
            .await
            .unwrap());
    }
    assert_eq!(store.purge_sessions(T0 + ms(2_000)).await.unwrap(), 2);
    assert_eq!(store.purge_sessions(T0 + ms(2_000)).await.unwrap(), 0);
    assert!(!store.delete_session("old").await.unwrap(), "purged");
    assert!(store
        .find_session("new", T0 + ms(5_001))
        .await
        .unwrap()
        .is_some());
    assert_eq!(
        store
            .consume_login_link("new", T0 + ms(5_001))
            .await
            .unwrap(),
        Some(SessionPrincipal::Admin)
    );
}

/// Expands every sealing case into a test, given an async factory expression that yields a
/// fresh [`SealingHarness`]. Use inside a test module of the driver.
#[macro_export]
macro_rules! sealing_conformance_tests {
    ($factory:expr) => {
        $crate::sealing_conformance_tests!(@cases $factory;
            sealed_credentials_round_trip_and_are_not_stored_in_plaintext,
            plaintext_credentials_are_read_and_sealed_when_rewritten,
            a_key_missing_from_the_keyring_is_a_clear_error,
            altered_or_moved_sealed_credentials_do_not_open,
            resealing_moves_every_app_to_the_first_key,
            source_keys_are_sealed_at_rest_and_bound_to_their_source,
            resealing_and_the_start_check_cover_source_keys,
        );
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                let harness = $factory.await;
                $crate::conformance::$case(&harness).await;
            }
        )*
    };
}

use crate::sealing::Sealer;
use crate::{AdminStore as _, MetaStore as _, SourceStore as _};

const SEAL_KEY_1: [u8; 32] = [0x11; 32];
const SEAL_KEY_2: [u8; 32] = [0x22; 32];
/// The secret in [`creds`], as it would appear in stored JSON.
const SEALED_SECRET: &str = "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn sealed_under(raw: &str, sealer: &Sealer) -> bool {
    let id = sealer.current_key_id().unwrap_or("-");
    raw.starts_with(&format!("enc:v1:{id}:"))
}

/// Credentials written with a key are sealed in the column (the secret is nowhere in it),
/// read back equal by every path (the API's read, a claim's job, after reopening), also
/// after they are replaced.
pub async fn sealed_credentials_round_trip_and_are_not_stored_in_plaintext(
    h: &impl SealingHarness,
) {
    let sealer = Sealer::new(&[SEAL_KEY_1]);
    let store = h.open(sealer.clone()).await;
    let a = app(&store).await;
    assert_eq!(a.credentials, creds());
    let raw = h.raw_credentials(&a.id).await;
    assert!(sealed_under(&raw, &sealer), "{raw}");
    assert!(
        !raw.contains(SEALED_SECRET),
        "the secret is stored in plaintext"
    );
    assert_eq!(
        store.get_app(&a.id).await.unwrap().unwrap().credentials,
        creds()
    );

    let new_creds = Credentials::StandardWebhooks(Keys {
        keys: vec![KeyEntry {
            secret: "whsec_dGVzdHNlY3JldHRlc3RzZWNyZXQ=".into(),
            expires_at: None,
        }],
    });
    let updated = store
        .set_app_credentials(&a.id, new_creds.clone())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(updated.credentials, new_creds);
    let raw = h.raw_credentials(&a.id).await;
    assert!(sealed_under(&raw, &sealer), "{raw}");
    assert!(!raw.contains("dGVzdHNlY3JldHRlc3RzZWNyZXQ"), "{raw}");
    let census = store.check_credentials().await.unwrap();
    assert_eq!((census.current, census.apps()), (1, 1));
    store.close().await;

    // A fresh store (no cache) reads and claims with the opened credentials.
    let store = h.open(sealer).await;
    assert_eq!(
        store.get_app(&a.id).await.unwrap().unwrap().credentials,
        new_creds
    );
    let n1 = node(&store, "node_a").await;
    store
        .create_notification(NewNotification {
            notify_url: Some("https://merchant.example/notify".parse().unwrap()),
            ..new_notification(&a.id, "e")
        })
        .await
        .unwrap();
    let jobs = claim(&store, &n1).await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].app.credentials, new_creds);
    store.close().await;
}

/// A database written without a key keeps working once a key is configured: plaintext is
/// read as is, and sealed the next time the app's credentials are written.
pub async fn plaintext_credentials_are_read_and_sealed_when_rewritten(h: &impl SealingHarness) {
    let store = h.open(Sealer::none()).await;
    let a = app(&store).await;
    let b = app(&store).await;
    assert!(h.raw_credentials(&a.id).await.contains(SEALED_SECRET));
    store.close().await;

    let sealer = Sealer::new(&[SEAL_KEY_1]);
    let store = h.open(sealer.clone()).await;
    assert_eq!(
        store.get_app(&a.id).await.unwrap().unwrap().credentials,
        creds()
    );
    let census = store.check_credentials().await.unwrap();
    assert_eq!((census.plaintext, census.current), (2, 0));
    store.set_app_credentials(&a.id, creds()).await.unwrap();
    let raw = h.raw_credentials(&a.id).await;
    assert!(
        sealed_under(&raw, &sealer) && !raw.contains(SEALED_SECRET),
        "{raw}"
    );
    assert!(h.raw_credentials(&b.id).await.contains(SEALED_SECRET));
    let census = store.check_credentials().await.unwrap();
    assert_eq!((census.plaintext, census.current), (1, 1));
    store.close().await;
}

/// Sealed credentials read without their key fail with an error that names the app and the
/// key id and says how to configure it, never the secret; checking finds them first.
pub async fn a_key_missing_from_the_keyring_is_a_clear_error(h: &impl SealingHarness) {
    let sealer = Sealer::new(&[SEAL_KEY_1]);
    let key_id = sealer.current_key_id().unwrap_or("-").to_string();
    let store = h.open(sealer).await;
    let a = app(&store).await;
    store.close().await;

    for keyring in [Sealer::none(), Sealer::new(&[SEAL_KEY_2])] {
        let store = h.open(keyring).await;
        for err in [
            store.get_app(&a.id).await.unwrap_err(),
            store.check_credentials().await.unwrap_err(),
            store.reseal_credentials().await.unwrap_err(),
        ] {
            let msg = err.to_string();
            assert!(
                msg.contains(&a.id) && msg.contains(&key_id) && msg.contains("HERALD_SECRET_KEY"),
                "{msg}"
            );
            assert!(!msg.contains(SEALED_SECRET), "{msg}");
        }
        store.close().await;
    }
}

/// A sealed value altered in the database, or moved to another app's row, does not open.
pub async fn altered_or_moved_sealed_credentials_do_not_open(h: &impl SealingHarness) {
    let sealer = Sealer::new(&[SEAL_KEY_1]);
    let store = h.open(sealer.clone()).await;
    let a = app(&store).await;
    let b = app(&store).await;
    store.close().await;
    let raw_a = h.raw_credentials(&a.id).await;
    h.set_raw_credentials(&b.id, &raw_a).await;
    let store = h.open(sealer.clone()).await;
    let msg = store.get_app(&b.id).await.unwrap_err().to_string();
    assert!(msg.contains(&b.id) && msg.contains("altered"), "{msg}");
    assert_eq!(
        store.get_app(&a.id).await.unwrap().unwrap().credentials,
        creds()
    );
    store.close().await;

    // One character of the ciphertext changed.
    let mut altered = raw_a.clone().into_bytes();
    let i = altered.len() - 5;
    altered[i] = if altered[i] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered).unwrap_or_default();
    h.set_raw_credentials(&a.id, &altered).await;
    let store = h.open(sealer).await;
    let msg = store.get_app(&a.id).await.unwrap_err().to_string();
    assert!(msg.contains(&a.id) && msg.contains("altered"), "{msg}");
    store.close().await;
}

/// Resealing with a rotated keyring (new key first, old after) rewrites plaintext and
/// old-key values under the new key, so the old key can be dropped.
pub async fn resealing_moves_every_app_to_the_first_key(h: &impl SealingHarness) {
    let store = h.open(Sealer::none()).await;
    let plain = app(&store).await;
    store.close().await;
    let store = h.open(Sealer::new(&[SEAL_KEY_1])).await;
    let old = app(&store).await;
    store.close().await;

    let rotated = Sealer::new(&[SEAL_KEY_2, SEAL_KEY_1]);
    let store = h.open(rotated.clone()).await;
    let census = store.reseal_credentials().await.unwrap();
    assert_eq!(
        (
            census.plaintext,
            census.older,
            census.current,
            census.resealed
        ),
        (1, 1, 0, 2)
    );
    for id in [&plain.id, &old.id] {
        let raw = h.raw_credentials(id).await;
        assert!(
            sealed_under(&raw, &rotated) && !raw.contains(SEALED_SECRET),
            "{raw}"
        );
    }
    let again = store.reseal_credentials().await.unwrap();
    assert_eq!((again.current, again.resealed), (2, 0));
    store.close().await;

    let store = h.open(Sealer::new(&[SEAL_KEY_2])).await;
    for id in [&plain.id, &old.id] {
        assert_eq!(
            store.get_app(id).await.unwrap().unwrap().credentials,
            creds()
        );
    }
    store.close().await;
}

// ---------------------------------------------------------------------------------------
// Apps: list, update, delete; API keys.

pub async fn apps_list_in_pages_and_change_and_a_deleted_app_is_gone(store: &impl Store) {
    let mut made = Vec::new();
    for name in ["a", "b", "c"] {
        made.push(named_app(store, name).await.id);
    }
    made.sort();
    let first = store
        .list_apps(ListApps {
            limit: 2,
            cursor: None,
        })
        .await
        .unwrap();
    let second = store
        .list_apps(ListApps {
            limit: 2,
            cursor: first.next_cursor.clone(),
        })
        .await
        .unwrap();
    assert!(first.next_cursor.is_some());
    assert_eq!(second.next_cursor, None);
    let listed: Vec<String> = first
        .items
        .iter()
        .chain(&second.items)
        .map(|a| a.id.clone())
        .collect();
    assert_eq!(listed, made, "every live app once, by id");
    assert_eq!(first.items[0].credentials, creds(), "credentials open");

    // Rename and change the retry policy; the untouched ack stays.
    let retry = herald_protocols::RetryPolicy::from_json(&serde_json::json!([1, 5])).unwrap();
    let changed = store
        .update_app(
            &made[0],
            AppPatch {
                name: Some("renamed".into()),
                retry: Some(Some(retry.clone())),
                ack: None,
            },
        )
        .await
        .unwrap()
        .expect("live app");
    assert_eq!(changed.name, "renamed");
    let got = store.get_app(&made[0]).await.unwrap().unwrap();
    assert_eq!(got.name, "renamed");
    assert_eq!(got.retry, Some(retry));
    assert_eq!(got.ack, None);
    assert_eq!(got.credentials, creds());
    let cleared = store
        .update_app(
            &made[0],
            AppPatch {
                retry: Some(None),
                ..AppPatch::default()
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cleared.retry, None);
    assert!(store
        .update_app("app_missing", AppPatch::default())
        .await
        .unwrap()
        .is_none());

    // Delete the second: gone for every read and write, the others stay.
    assert_eq!(
        store.delete_app(&made[1], T0 + ms(5)).await.unwrap(),
        Some(0)
    );
    assert!(store.get_app(&made[1]).await.unwrap().is_none());
    assert_eq!(store.delete_app(&made[1], T0 + ms(6)).await.unwrap(), None);
    assert!(store.delete_app("app_missing", T0).await.unwrap().is_none());
    let page = store
        .list_apps(ListApps {
            limit: 10,
            cursor: None,
        })
        .await
        .unwrap();
    let live: Vec<&str> = page.items.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(live, vec![made[0].as_str(), made[2].as_str()]);
    assert!(store
        .update_app(
            &made[1],
            AppPatch {
                name: Some("x".into()),
                ..AppPatch::default()
            }
        )
        .await
        .unwrap()
        .is_none());
    assert!(store
        .set_app_credentials(&made[1], creds())
        .await
        .unwrap()
        .is_none());
    let err = store
        .create_endpoint(new_endpoint(&made[1], "https://a.example/x"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound("app")), "{err:?}");
    let err = store
        .create_notification(NewNotification {
            notify_url: Some("https://merchant.example/notify".parse().unwrap()),
            ..new_notification(&made[1], "e")
        })
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound("app")), "{err:?}");
    let err = store
        .create_notification(NewNotification {
            idempotency_key: Some("k1".parse().unwrap()),
            ..new_notification(&made[1], "e")
        })
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound("app")), "{err:?}");
}

pub async fn deleting_an_app_cancels_its_pending_deliveries_also_held_ones(store: &impl Store) {
    let a = app(store).await;
    let other = named_app(store, "other").await;
    let n1 = node(store, "node_a").await;
    let ep = store
        .create_endpoint(new_endpoint(&a.id, "https://a.example/x"))
        .await
        .unwrap();
    // One delivery that will have failed, then one held by the node, one not yet claimed.
    let failed = store
        .create_notification(NewNotification {
            notify_url: Some("https://merchant.example/failed".parse().unwrap()),
            ..new_notification(&a.id, "e")
        })
        .await
        .unwrap();
    let job = claim(store, &n1).await.remove(0);
    complete(store, &n1, &job, AttemptOutcome::Failed).await;
    let held = store
        .create_notification(new_notification(&a.id, "e"))
        .await
        .unwrap();
    let held_jobs = claim(store, &n1).await;
    assert_eq!(ids(&held_jobs), vec![held.deliveries[0].id.clone()]);
    let later = store
        .create_notification(NewNotification {
            notify_url: Some("https://merchant.example/later".parse().unwrap()),
            now: T0 + ms(50_000),
            ..new_notification(&a.id, "e")
        })
        .await
        .unwrap();
    let bystander = store
        .create_notification(NewNotification {
            notify_url: Some("https://merchant.example/other".parse().unwrap()),
            now: T0 + ms(50_000),
            ..new_notification(&other.id, "e")
        })
        .await
        .unwrap();

    assert_eq!(store.delete_app(&a.id, T0 + ms(10)).await.unwrap(), Some(2));
    for (id, want) in [
        (&failed.deliveries[0].id, DeliveryStatus::Failed),
        (&held.deliveries[0].id, DeliveryStatus::Canceled),
        (&later.deliveries[0].id, DeliveryStatus::Canceled),
        (&bystander.deliveries[0].id, DeliveryStatus::Pending),
    ] {
        let d = store
            .get_delivery(id)
            .await
            .unwrap()
            .expect("still readable");
        assert_eq!(d.delivery.status, want, "{id}");
    }
    // The holder's late outcome does not bring it back.
    let done = complete(
        store,
        &n1,
        &held_jobs[0],
        AttemptOutcome::Retry {
            next_at: T0 + ms(2000),
        },
    )
    .await;
    assert!(!done.applied);
    assert_eq!(done.status, Some(DeliveryStatus::Canceled));
    let d = store
        .get_delivery(&held.deliveries[0].id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.delivery.status, DeliveryStatus::Canceled);
    assert_eq!(d.delivery.next_attempt_at, None);
    // Nothing of the app is claimable again, by hand or by recover; the other app's is.
    let jobs = claim_at(store, &n1, T0 + ms(60_000), T0 + ms(120_000)).await;
    assert_eq!(ids(&jobs), vec![bystander.deliveries[0].id.clone()]);
    for id in [&failed.deliveries[0].id, &held.deliveries[0].id] {
        let err = store.retry_delivery(id, T0 + ms(11)).await.unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    }
    assert_eq!(
        store.recover(&a.id, T0 - ms(1), T0 + ms(12)).await.unwrap(),
        0
    );
    assert!(store.get_endpoint(&a.id, &ep.id).await.unwrap().is_none());
    // Its notifications stay readable, with the canceled deliveries.
    let n = store
        .get_notification(&held.notification.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n.deliveries[0].delivery.status, DeliveryStatus::Canceled);
}

pub async fn api_keys_are_found_by_hash_touched_and_revoked(store: &impl Store) {
    let a = app(store).await;
    let b = named_app(store, "b").await;
    let new_key = |app_id: &str, hash: &str| NewApiKey {
        app_id: app_id.into(),
        prefix: "hk_abcd".into(),
        key_sha256: hash.into(),
        now: T0,
    };
    let k1 = store.create_api_key(new_key(&a.id, "11")).await.unwrap();
    assert!(k1.id.starts_with("key_"));
    assert_eq!(k1.last_used_at, None);
    let k2 = store
        .create_api_key(NewApiKey {
            now: T0 + ms(1),
            ..new_key(&a.id, "22")
        })
        .await
        .unwrap();
    let kb = store.create_api_key(new_key(&b.id, "33")).await.unwrap();
    let err = store
        .create_api_key(new_key(&a.id, "11"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    let err = store
        .create_api_key(new_key("app_missing", "44"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound("app")), "{err:?}");

    let listed = store.list_api_keys(&a.id).await.unwrap();
    assert_eq!(
        listed,
        vec![k1.clone(), k2.clone()],
        "the app's own, oldest first"
    );
    assert_eq!(store.find_api_key("11").await.unwrap(), Some(k1.clone()));
    assert_eq!(store.find_api_key("99").await.unwrap(), None);

    store.touch_api_key(&k1.id, T0 + ms(500)).await.unwrap();
    store.touch_api_key(&k1.id, T0 + ms(100)).await.unwrap();
    let found = store.find_api_key("11").await.unwrap().unwrap();
    assert_eq!(found.last_used_at, Some(T0 + ms(500)), "never moves back");

    assert!(
        !store.delete_api_key(&b.id, &k1.id).await.unwrap(),
        "another app's key"
    );
    assert!(store.delete_api_key(&a.id, &k1.id).await.unwrap());
    assert!(!store.delete_api_key(&a.id, &k1.id).await.unwrap());
    assert_eq!(store.find_api_key("11").await.unwrap(), None, "revoked");
    assert_eq!(store.list_api_keys(&a.id).await.unwrap(), vec![k2.clone()]);

    // Deleting the app revokes its keys; the other app's key still works.
    store.delete_app(&a.id, T0 + ms(9)).await.unwrap();
    assert_eq!(store.find_api_key("22").await.unwrap(), None);
    assert!(store.list_api_keys(&a.id).await.unwrap().is_empty());
    assert_eq!(store.find_api_key("33").await.unwrap(), Some(kb));
    let err = store
        .create_api_key(new_key(&a.id, "55"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound("app")), "{err:?}");
}

pub async fn a_meta_value_set_if_absent_keeps_the_first(store: &impl Store) {
    assert!(store.set_meta_if_absent("k", "first").await.unwrap());
    assert!(!store.set_meta_if_absent("k", "second").await.unwrap());
    assert_eq!(store.get_meta("k").await.unwrap().as_deref(), Some("first"));
    store.set_meta("k", "replaced").await.unwrap();
    assert_eq!(
        store.get_meta("k").await.unwrap().as_deref(),
        Some("replaced")
    );
}

/// A source's keys are sealed in their column (no key text in it), open again after
/// reopening, and a sealed value moved to another source does not open.
pub async fn source_keys_are_sealed_at_rest_and_bound_to_their_source(h: &impl SealingHarness) {
    let sealer = Sealer::new(&[SEAL_KEY_1]);
    let store = h.open(sealer.clone()).await;
    let a = store
        .create_source(new_source("a", "http://127.0.0.1:9/a", T0))
        .await
        .unwrap();
    let b = store
        .create_source(new_source("b", "http://127.0.0.1:9/b", T0))
        .await
        .unwrap();
    store.close().await;
    let raw = h.raw_source_keys(&a.id).await;
    assert!(sealed_under(&raw, &sealer), "{raw}");
    assert!(
        !raw.contains(SOURCE_SECRET),
        "the key is stored in plaintext"
    );
    let store = h.open(sealer.clone()).await;
    assert_eq!(store.get_source(&a.id).await.unwrap().unwrap().keys, a.keys);
    store.close().await;
    h.set_raw_source_keys(&b.id, &raw).await;
    let store = h.open(sealer).await;
    let moved = store.get_source(&b.id).await;
    assert!(moved.is_err(), "a value sealed for another source opened");
    assert!(store.get_source(&a.id).await.unwrap().is_some());
    store.close().await;
}

/// `check_credentials` refuses a keyring that cannot open a source's keys (naming the
/// source), and `reseal_credentials` moves sources' keys to the first key with the apps'.
pub async fn resealing_and_the_start_check_cover_source_keys(h: &impl SealingHarness) {
    let store = h.open(Sealer::new(&[SEAL_KEY_1])).await;
    let s = store
        .create_source(new_source("a", "http://127.0.0.1:9/a", T0))
        .await
        .unwrap();
    store.close().await;
    // The source's app in plaintext: only the source's keys need the old key now.
    let plain = serde_json::to_string(&creds()).unwrap();
    h.set_raw_credentials(&s.app_id, &plain).await;
    let store = h.open(Sealer::new(&[SEAL_KEY_2])).await;
    let refused = store.check_credentials().await;
    assert!(
        matches!(&refused, Err(e) if e.to_string().contains(&s.id)),
        "{refused:?}"
    );
    store.close().await;

    let rotated = Sealer::new(&[SEAL_KEY_2, SEAL_KEY_1]);
    let store = h.open(rotated.clone()).await;
    let census = store.reseal_credentials().await.unwrap();
    assert_eq!(
        census.resealed, 2,
        "the source's app and the source: {census:?}"
    );
    store.close().await;
    assert!(sealed_under(&h.raw_source_keys(&s.id).await, &rotated));

    let store = h.open(Sealer::new(&[SEAL_KEY_2])).await;
    assert_eq!(store.get_source(&s.id).await.unwrap().unwrap().keys, s.keys);
    assert_eq!(store.check_credentials().await.unwrap().current, 2);
    store.close().await;
}
// ---------------------------------------------------------------------------------------
// The operator dashboard's reads (`DashboardStore`).

pub async fn dashboard_lists_apps_in_pages_by_id(store: &impl Store) {
    let mut made = Vec::new();
    for _ in 0..3 {
        made.push(app(store).await.id);
    }
    made.sort();
    let first = store
        .list_app_summaries(crate::dashboard::ListPage {
            limit: 2,
            cursor: None,
        })
        .await
        .expect("list apps");
    assert_eq!(
        first.items.iter().map(|a| a.id.clone()).collect::<Vec<_>>(),
        made[..2]
    );
    assert_eq!(first.items[0].name, "shop");
    assert_eq!(first.items[0].profile, "standard-webhooks");
    let second = store
        .list_app_summaries(crate::dashboard::ListPage {
            limit: 2,
            cursor: first.next_cursor,
        })
        .await
        .expect("second page");
    assert_eq!(
        second
            .items
            .iter()
            .map(|a| a.id.clone())
            .collect::<Vec<_>>(),
        made[2..]
    );
    assert!(second.next_cursor.is_none());
}

/// Records an attempt made at `at` with the given outcome.
async fn attempt_at(
    store: &impl Store,
    node: &NodeId,
    job: &Arc<ClaimedDelivery>,
    at: UnixMillis,
    ok: bool,
) {
    let mut r = report(
        job,
        if ok {
            AttemptOutcome::Succeeded
        } else {
            AttemptOutcome::Failed
        },
    );
    if !ok {
        r.outcome = AttemptOutcome::Retry {
            next_at: at + ms(1),
        };
    }
    r.attempt.at = at;
    let done = store
        .complete(CompleteParams {
            node: node.clone(),
            report: r,
            now: at,
            horizon: at + ms(60_000),
        })
        .await
        .expect("complete");
    assert!(done.applied);
}

pub async fn dashboard_counts_attempts_per_minute_and_finds_endpoints_in_trouble(
    store: &impl Store,
) {
    let a = app(store).await;
    let good = store
        .create_endpoint(new_endpoint(&a.id, "https://good.example/hook"))
        .await
        .unwrap();
    let bad = store
        .create_endpoint(new_endpoint(&a.id, "https://bad.example/hook"))
        .await
        .unwrap();
    let n1 = node(store, "node_a").await;
    store
        .create_notification(new_notification(&a.id, "e"))
        .await
        .unwrap();
    let jobs = claim(store, &n1).await;
    assert_eq!(jobs.len(), 2);
    let job_of = |ep: &Endpoint| {
        jobs.iter()
            .find(|j| j.endpoint.as_ref().map(|e| e.id.as_str()) == Some(ep.id.as_str()))
            .cloned()
            .expect("a job per endpoint")
    };
    let (g, b) = (job_of(&good), job_of(&bad));
    // Minute 0: the good endpoint succeeds, the bad one fails; minute 2: the bad one fails
    // twice more (one delivery's retries), after having succeeded once in minute 1.
    attempt_at(store, &n1, &g, T0 + ms(5_000), true).await;
    attempt_at(store, &n1, &b, T0 + ms(6_000), false).await;
    let b = Arc::new(ClaimedDelivery {
        attempts: 1,
        ..(*b).clone()
    });
    attempt_at(store, &n1, &b, T0 + ms(61_000), false).await;
    let b = Arc::new(ClaimedDelivery {
        attempts: 2,
        ..(*b).clone()
    });
    attempt_at(store, &n1, &b, T0 + ms(125_000), false).await;

    let minute0 = T0.floor_to(ms(60_000));
    let act = store
        .activity(T0, T0 + ms(3_600_000))
        .await
        .expect("activity");
    let got: Vec<(UnixMillis, u64, u64)> = act
        .iter()
        .map(|m| (m.minute, m.succeeded, m.failed))
        .collect();
    let mut want = Vec::new();
    for at in [
        T0 + ms(5_000),
        T0 + ms(6_000),
        T0 + ms(61_000),
        T0 + ms(125_000),
    ] {
        let m = at.floor_to(ms(60_000));
        let ok = at == T0 + ms(5_000);
        match want
            .iter_mut()
            .find(|(mm, _, _): &&mut (UnixMillis, u64, u64)| *mm == m)
        {
            Some(e) => {
                if ok {
                    e.1 += 1
                } else {
                    e.2 += 1
                }
            }
            None => want.push((m, u64::from(ok), u64::from(!ok))),
        }
    }
    assert_eq!(got, want);
    assert!(got
        .iter()
        .all(|(m, _, _)| m.get() % 60_000 == 0 && *m >= minute0));
    // The window's end is exclusive.
    let early = store.activity(T0, T0 + ms(6_000)).await.unwrap();
    assert_eq!(early.iter().map(|m| m.succeeded + m.failed).sum::<u64>(), 1);

    let trouble = store.troubled_endpoints(T0, 10).await.expect("trouble");
    assert_eq!(trouble.len(), 1, "{trouble:?}");
    assert_eq!(trouble[0].endpoint_id.as_deref(), Some(bad.id.as_str()));
    assert_eq!(trouble[0].app_id, a.id);
    assert_eq!(trouble[0].url, "https://bad.example/hook");
    assert_eq!(trouble[0].failures, 3);
    assert_eq!(trouble[0].last_attempt_at, T0 + ms(125_000));
    assert_eq!(trouble[0].last_success_at, None);
    // Outside the window, nothing is in trouble.
    assert!(store
        .troubled_endpoints(T0 + ms(200_000), 10)
        .await
        .unwrap()
        .is_empty());

    let h = store.endpoint_health(&bad.id).await.expect("health");
    assert_eq!(h.consecutive_failures, 3);
    assert_eq!(h.last_success_at, None);
    assert_eq!(h.last_attempt_at, Some(T0 + ms(125_000)));
    assert_eq!(h.pending, 1);
    let h = store.endpoint_health(&good.id).await.expect("health");
    assert_eq!(h.consecutive_failures, 0);
    assert_eq!(h.last_success_at, Some(T0 + ms(5_000)));
    assert_eq!(h.pending, 0);
    assert_eq!(
        store.endpoint_health("ep_missing").await.unwrap(),
        crate::dashboard::EndpointRecent::default()
    );

    let counts = store.queue_counts(T0 + ms(125_000)).await.expect("counts");
    assert_eq!(counts.pending, 1);
    assert_eq!(counts.failed, 0);
    assert_eq!(
        counts.held, 1,
        "the bad endpoint's retry is still held by node_a"
    );
    assert_eq!(counts.due, 0, "its retry is due at T0 + 125 001");
    assert_eq!(store.queue_counts(T0 + ms(130_000)).await.unwrap().due, 1);
}

pub async fn dashboard_search_filters_every_field_and_pages(store: &impl Store) {
    use crate::dashboard::SearchNotifications;
    let a = app(store).await;
    let other = app(store).await;
    let mk =
        |app_id: &str, event: &str, payload: &str, order_key: Option<&str>, now| NewNotification {
            notify_url: Some("https://merchant.example/notify".parse().unwrap()),
            payload: payload.into(),
            order_key: order_key.map(|k| k.parse().unwrap()),
            now,
            ..new_notification(app_id, event)
        };
    let n1 = store
        .create_notification(mk(
            &a.id,
            "trade.success",
            r#"{"out_trade_no": "T-1"}"#,
            None,
            T0,
        ))
        .await
        .unwrap();
    let n2 = store
        .create_notification(mk(
            &a.id,
            "refund.success",
            r#"{"out_trade_no": 1002}"#,
            None,
            T0 + ms(10),
        ))
        .await
        .unwrap();
    let n3 = store
        .create_notification(mk(
            &a.id,
            "trade.success",
            r#"[1, 2]"#,
            Some("K-3"),
            T0 + ms(20),
        ))
        .await
        .unwrap();
    let n4 = store
        .create_notification(mk(
            &other.id,
            "trade.success",
            r#"{"out_trade_no": "T-1"}"#,
            None,
            T0 + ms(30),
        ))
        .await
        .unwrap();
    let ids =
        |p: &Page<NotificationSummary>| p.items.iter().map(|n| n.id.clone()).collect::<Vec<_>>();
    let search = |s: SearchNotifications| async move {
        store
            .search_notifications(SearchNotifications { limit: 10, ..s })
            .await
            .expect("search")
    };
    let all = search(SearchNotifications::default()).await;
    assert_eq!(
        ids(&all),
        [&n4, &n3, &n2, &n1].map(|n| n.notification.id.clone())
    );
    assert_eq!(
        all.items[0].deliveries.len(),
        1,
        "summaries carry their deliveries"
    );
    assert!(all.next_cursor.is_none());
    let by_app = search(SearchNotifications {
        app_id: Some(a.id.clone()),
        event_type: Some("trade.success".parse().unwrap()),
        ..Default::default()
    })
    .await;
    assert_eq!(ids(&by_app), [&n3, &n1].map(|n| n.notification.id.clone()));
    let by_trade = search(SearchNotifications {
        key: Some("T-1".into()),
        ..Default::default()
    })
    .await;
    assert_eq!(
        ids(&by_trade),
        [&n4, &n1].map(|n| n.notification.id.clone())
    );
    let numeric = search(SearchNotifications {
        key: Some("1002".into()),
        ..Default::default()
    })
    .await;
    assert_eq!(ids(&numeric), vec![n2.notification.id.clone()]);
    let by_order_key = search(SearchNotifications {
        key: Some("K-3".into()),
        ..Default::default()
    })
    .await;
    assert_eq!(ids(&by_order_key), vec![n3.notification.id.clone()]);
    let by_notify_id = search(SearchNotifications {
        notify_id: Some(n2.deliveries[0].notify_id.clone()),
        ..Default::default()
    })
    .await;
    assert_eq!(ids(&by_notify_id), vec![n2.notification.id.clone()]);
    let by_time = search(SearchNotifications {
        from: Some(T0 + ms(10)),
        until: Some(T0 + ms(30)),
        ..Default::default()
    })
    .await;
    assert_eq!(ids(&by_time), [&n3, &n2].map(|n| n.notification.id.clone()));
    let nothing = search(SearchNotifications {
        status: Some(DeliveryStatus::Failed),
        ..Default::default()
    })
    .await;
    assert!(nothing.items.is_empty() && nothing.next_cursor.is_none());
    let pending = search(SearchNotifications {
        status: Some(DeliveryStatus::Pending),
        app_id: Some(other.id.clone()),
        ..Default::default()
    })
    .await;
    assert_eq!(ids(&pending), vec![n4.notification.id.clone()]);

    // Pages: two, then the rest, then none.
    let p1 = store
        .search_notifications(SearchNotifications {
            limit: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(&p1), [&n4, &n3].map(|n| n.notification.id.clone()));
    let p2 = store
        .search_notifications(SearchNotifications {
            limit: 2,
            cursor: p1.next_cursor.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(&p2), [&n2, &n1].map(|n| n.notification.id.clone()));
    assert!(p2.next_cursor.is_none());
    let bad = store
        .search_notifications(SearchNotifications {
            limit: 2,
            cursor: Some("not-a-cursor".into()),
            ..Default::default()
        })
        .await;
    assert!(matches!(bad, Err(StoreError::BadCursor)), "{bad:?}");
}

pub async fn dashboard_lists_sandbox_payments_newest_first(store: &impl Store) {
    let a = app(store).await;
    for (id, trade) in [("pay_01A", "T-1"), ("pay_01C", "T-3"), ("pay_01B", "T-2")] {
        store
            .write_sandbox_payment(SandboxWrite {
                payment: SandboxPayment {
                    id: id.into(),
                    app_id: a.id.clone(),
                    out_trade_no: trade.into(),
                    doc: "{}".into(),
                    version: 0,
                    deadline: None,
                },
                expected_version: None,
                notifications: vec![],
            })
            .await
            .expect("insert");
    }
    let page =
        |cursor| store.list_sandbox_payments(crate::dashboard::ListPage { limit: 2, cursor });
    let first = page(None).await.expect("first page");
    assert_eq!(
        first
            .items
            .iter()
            .map(|p| p.id.as_str())
            .collect::<Vec<_>>(),
        ["pay_01C", "pay_01B"]
    );
    let second = page(first.next_cursor).await.expect("second page");
    assert_eq!(
        second
            .items
            .iter()
            .map(|p| p.id.as_str())
            .collect::<Vec<_>>(),
        ["pay_01A"]
    );
    assert_eq!(second.items[0].out_trade_no, "T-1");
    assert!(second.next_cursor.is_none());
}
