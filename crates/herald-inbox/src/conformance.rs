//! The inbox conformance suite: what every [`InboxStore`] driver must do, written once and
//! run unchanged against each (see [`inbox_conformance_tests!`](crate::inbox_conformance_tests)).
//! Each case takes a fresh, empty inbox.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::{
    Decision, InboxError, InboxStore, NewOrder, OrderState, ProcessOutcome, SqlValue, Statement,
};

/// Generates one `#[tokio::test]` per conformance case; `$factory` is an expression
/// (awaited) giving a fresh `Arc<dyn InboxStore>`.
#[macro_export]
macro_rules! inbox_conformance_tests {
    ($factory:expr) => {
        $crate::inbox_conformance_tests!(@cases $factory;
            orders_are_created_unpaid_read_back_and_listed_newest_first,
            a_second_order_with_the_same_reference_is_a_conflict,
            invalid_orders_are_refused,
            apply_moves_the_order_runs_statements_and_records_the_notify_id,
            a_recorded_notify_id_is_a_duplicate_and_decide_is_not_called,
            ignore_records_the_notify_id_and_leaves_the_order_alone,
            reject_rolls_back_and_records_nothing,
            a_failing_merchant_statement_rolls_back_the_order_change,
            an_unknown_order_is_reported_without_calling_decide,
            concurrent_copies_of_one_notification_apply_exactly_once,
            merchant_queries_read_integers_text_and_null,
        );
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let store: ::std::sync::Arc<dyn $crate::InboxStore> = $factory.await;
                $crate::conformance::$case(store).await;
            }
        )*
    };
}

fn order(no: &str, amount: i64) -> NewOrder {
    NewOrder {
        out_trade_no: no.into(),
        amount_minor: amount,
        currency: "cny".into(),
        subject: "a cup of tea".into(),
    }
}

/// Creates the merchant's own table the cases write to.
async fn merchant_table(store: &dyn InboxStore) {
    store
        .execute(vec![Statement::new(
            "CREATE TABLE merchant_log (out_trade_no TEXT NOT NULL, note TEXT)",
            vec![],
        )])
        .await
        .expect("create the merchant table");
}

fn log_insert(store: &dyn InboxStore, no: &str, note: &str) -> Statement {
    let d = store.dialect();
    Statement::new(
        format!(
            "INSERT INTO merchant_log (out_trade_no, note) VALUES ({}, {})",
            d.placeholder(1),
            d.placeholder(2)
        ),
        vec![SqlValue::Text(no.into()), SqlValue::Text(note.into())],
    )
}

async fn log_rows(store: &dyn InboxStore) -> i64 {
    match store
        .query_value("SELECT count(*) FROM merchant_log", vec![])
        .await
        .expect("count")
    {
        Some(SqlValue::Int(n)) => n,
        other => panic!("count(*) returned {other:?}"),
    }
}

fn pay(to: OrderState, statements: Vec<Statement>) -> super::Decide {
    Box::new(move |_| Decision::Apply {
        state: to,
        refunded_minor: 0,
        transaction_id: Some("T1".into()),
        statements,
    })
}

pub async fn orders_are_created_unpaid_read_back_and_listed_newest_first(
    store: Arc<dyn InboxStore>,
) {
    let a = store.create_order(order("A1", 100)).await.expect("create");
    assert_eq!(a.state, OrderState::Unpaid);
    assert_eq!(a.refunded_minor, 0);
    assert_eq!(a.transaction_id, None);
    assert_eq!(a.currency, "CNY", "currencies are stored upper-case");
    assert!(a.created_at.get() > 1_600_000_000_000, "unix milliseconds");
    assert_eq!(store.order("A1").await.expect("read"), Some(a.clone()));
    assert_eq!(store.order("nope").await.expect("read"), None);
    for no in ["A2", "A3"] {
        store.create_order(order(no, 5)).await.expect("create");
    }
    let listed: Vec<String> = store
        .list_orders(10)
        .await
        .expect("list")
        .into_iter()
        .map(|o| o.out_trade_no)
        .collect();
    assert_eq!(listed, ["A3", "A2", "A1"]);
    assert_eq!(store.list_orders(2).await.expect("list").len(), 2);
}

pub async fn a_second_order_with_the_same_reference_is_a_conflict(store: Arc<dyn InboxStore>) {
    store.create_order(order("A1", 100)).await.expect("create");
    let err = store.create_order(order("A1", 999)).await.unwrap_err();
    assert!(matches!(err, InboxError::Conflict(_)), "{err}");
    assert_eq!(
        store
            .order("A1")
            .await
            .expect("read")
            .map(|o| o.amount_minor),
        Some(100)
    );
}

pub async fn invalid_orders_are_refused(store: Arc<dyn InboxStore>) {
    for bad in [
        order("", 1),
        order("A1", -1),
        NewOrder {
            currency: "yuan".into(),
            ..order("A1", 1)
        },
    ] {
        let err = store.create_order(bad.clone()).await.unwrap_err();
        assert!(matches!(err, InboxError::Invalid(_)), "{bad:?}: {err}");
    }
    assert!(store.list_orders(10).await.expect("list").is_empty());
}

pub async fn apply_moves_the_order_runs_statements_and_records_the_notify_id(
    store: Arc<dyn InboxStore>,
) {
    merchant_table(&*store).await;
    store.create_order(order("A1", 100)).await.expect("create");
    let st = log_insert(&*store, "A1", "paid");
    let out = store
        .process("n1", "A1", pay(OrderState::Paid, vec![st]))
        .await
        .expect("process");
    assert_eq!(
        out,
        ProcessOutcome::Applied {
            from: OrderState::Unpaid,
            to: OrderState::Paid
        }
    );
    let o = store.order("A1").await.expect("read").expect("order");
    assert_eq!(o.state, OrderState::Paid);
    assert_eq!(o.transaction_id.as_deref(), Some("T1"));
    assert!(o.updated_at >= o.created_at);
    assert_eq!(log_rows(&*store).await, 1);
}

pub async fn a_recorded_notify_id_is_a_duplicate_and_decide_is_not_called(
    store: Arc<dyn InboxStore>,
) {
    store.create_order(order("A1", 100)).await.expect("create");
    store
        .process("n1", "A1", pay(OrderState::Paid, vec![]))
        .await
        .expect("process");
    let called = Arc::new(AtomicUsize::new(0));
    let c = called.clone();
    let out = store
        .process(
            "n1",
            "A1",
            Box::new(move |_| {
                c.fetch_add(1, Ordering::SeqCst);
                Decision::Apply {
                    state: OrderState::Refunded,
                    refunded_minor: 100,
                    transaction_id: None,
                    statements: vec![],
                }
            }),
        )
        .await
        .expect("process");
    assert_eq!(out, ProcessOutcome::Duplicate);
    assert_eq!(called.load(Ordering::SeqCst), 0);
    let o = store.order("A1").await.expect("read").expect("order");
    assert_eq!(o.state, OrderState::Paid);
}

pub async fn ignore_records_the_notify_id_and_leaves_the_order_alone(store: Arc<dyn InboxStore>) {
    let before = store.create_order(order("A1", 100)).await.expect("create");
    let out = store
        .process(
            "n1",
            "A1",
            Box::new(|o| {
                assert_eq!(o.out_trade_no, "A1", "decide sees the locked row");
                Decision::Ignore {
                    reason: "stale".into(),
                }
            }),
        )
        .await
        .expect("process");
    assert_eq!(
        out,
        ProcessOutcome::Ignored {
            state: OrderState::Unpaid,
            reason: "stale".into()
        }
    );
    assert_eq!(store.order("A1").await.expect("read"), Some(before));
    let again = store
        .process("n1", "A1", pay(OrderState::Paid, vec![]))
        .await
        .expect("process");
    assert_eq!(again, ProcessOutcome::Duplicate);
}

pub async fn reject_rolls_back_and_records_nothing(store: Arc<dyn InboxStore>) {
    merchant_table(&*store).await;
    let before = store.create_order(order("A1", 100)).await.expect("create");
    let out = store
        .process(
            "n1",
            "A1",
            Box::new(|_| Decision::Reject {
                reason: "handler failed".into(),
            }),
        )
        .await
        .expect("process");
    assert_eq!(
        out,
        ProcessOutcome::Rejected {
            reason: "handler failed".into()
        }
    );
    assert_eq!(store.order("A1").await.expect("read"), Some(before));
    // Not recorded: the redelivery is decided afresh.
    let st = log_insert(&*store, "A1", "paid");
    let out = store
        .process("n1", "A1", pay(OrderState::Paid, vec![st]))
        .await
        .expect("process");
    assert!(matches!(out, ProcessOutcome::Applied { .. }), "{out:?}");
    assert_eq!(log_rows(&*store).await, 1);
}

pub async fn a_failing_merchant_statement_rolls_back_the_order_change(store: Arc<dyn InboxStore>) {
    merchant_table(&*store).await;
    let before = store.create_order(order("A1", 100)).await.expect("create");
    let good = log_insert(&*store, "A1", "first");
    let bad = Statement::new("INSERT INTO no_such_table VALUES (1)", vec![]);
    let err = store
        .process("n1", "A1", pay(OrderState::Paid, vec![good, bad]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, InboxError::Statement { ref message, .. } if message.contains("no_such_table")),
        "{err}"
    );
    assert_eq!(store.order("A1").await.expect("read"), Some(before));
    assert_eq!(log_rows(&*store).await, 0);
    let out = store
        .process("n1", "A1", pay(OrderState::Paid, vec![]))
        .await
        .expect("process");
    assert!(matches!(out, ProcessOutcome::Applied { .. }), "{out:?}");
}

pub async fn an_unknown_order_is_reported_without_calling_decide(store: Arc<dyn InboxStore>) {
    let out = store
        .process(
            "n1",
            "missing",
            Box::new(|_| panic!("decide must not be called for an unknown order")),
        )
        .await
        .expect("process");
    assert_eq!(out, ProcessOutcome::UnknownOrder);
    // Nothing recorded: once the order exists, the same notification applies.
    store
        .create_order(order("missing", 1))
        .await
        .expect("create");
    let out = store
        .process("n1", "missing", pay(OrderState::Paid, vec![]))
        .await
        .expect("process");
    assert!(matches!(out, ProcessOutcome::Applied { .. }), "{out:?}");
}

pub async fn concurrent_copies_of_one_notification_apply_exactly_once(store: Arc<dyn InboxStore>) {
    merchant_table(&*store).await;
    store.create_order(order("A1", 100)).await.expect("create");
    let decided = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let store = store.clone();
            let decided = decided.clone();
            let st = log_insert(&*store, "A1", "paid");
            tokio::spawn(async move {
                store
                    .process(
                        "n1",
                        "A1",
                        Box::new(move |o| {
                            decided.fetch_add(1, Ordering::SeqCst);
                            if o.state == OrderState::Unpaid {
                                Decision::Apply {
                                    state: OrderState::Paid,
                                    refunded_minor: 0,
                                    transaction_id: None,
                                    statements: vec![st],
                                }
                            } else {
                                Decision::Ignore {
                                    reason: "already paid".into(),
                                }
                            }
                        }),
                    )
                    .await
            })
        })
        .collect();
    let mut applied = 0;
    for t in tasks {
        match t.await.expect("task").expect("process") {
            ProcessOutcome::Applied { .. } => applied += 1,
            ProcessOutcome::Duplicate => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(applied, 1);
    assert_eq!(decided.load(Ordering::SeqCst), 1, "decide ran once");
    assert_eq!(log_rows(&*store).await, 1);
}

pub async fn merchant_queries_read_integers_text_and_null(store: Arc<dyn InboxStore>) {
    merchant_table(&*store).await;
    let d = store.dialect();
    let changed = store
        .execute(vec![
            log_insert(&*store, "A1", "x"),
            Statement::new(
                format!(
                    "INSERT INTO merchant_log (out_trade_no, note) VALUES ({}, {})",
                    d.placeholder(1),
                    d.placeholder(2)
                ),
                vec![SqlValue::Text("A2".into()), SqlValue::Null],
            ),
        ])
        .await
        .expect("execute");
    assert_eq!(changed, 2);
    let one = |sql: &str, params: Vec<SqlValue>| {
        let store = store.clone();
        let sql = sql.to_string();
        async move { store.query_value(&sql, params).await.expect("query") }
    };
    let p1 = d.placeholder(1);
    assert_eq!(
        one(
            &format!("SELECT note FROM merchant_log WHERE out_trade_no = {p1}"),
            vec![SqlValue::Text("A1".into())]
        )
        .await,
        Some(SqlValue::Text("x".into()))
    );
    assert_eq!(
        one(
            &format!("SELECT note FROM merchant_log WHERE out_trade_no = {p1}"),
            vec![SqlValue::Text("A2".into())]
        )
        .await,
        Some(SqlValue::Null)
    );
    assert_eq!(
        one(
            &format!("SELECT note FROM merchant_log WHERE out_trade_no = {p1}"),
            vec![SqlValue::Text("none".into())]
        )
        .await,
        None
    );
    assert_eq!(
        one("SELECT count(*) FROM merchant_log", vec![]).await,
        Some(SqlValue::Int(2))
    );
    let err = store
        .query_value("SELECT * FROM no_such_table", vec![])
        .await
        .unwrap_err();
    assert!(matches!(err, InboxError::Statement { .. }), "{err}");
}
