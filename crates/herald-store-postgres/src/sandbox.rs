//! SQL for the payment sandbox's `sandbox_payments` table: reads on any connection, and the
//! write that inserts or compare-and-sets a trade together with the notifications it
//! enqueues, in one transaction.
use deadpool_postgres::GenericClient;
use tokio_postgres::error::SqlState;
use tokio_postgres::Row;

use herald_store::model::*;
use herald_store::{Result, StoreError};

use crate::admin::{existing_by_key, insert_notification};
use crate::rows::col;
use crate::{backend, violated, Inner};

pub(crate) const SELECT: &str =
    "SELECT id, app_id, out_trade_no, doc, version, deadline FROM sandbox_payments";

pub(crate) fn from_row(r: &Row) -> Result<SandboxPayment> {
    Ok(SandboxPayment {
        id: col(r, 0)?,
        app_id: col(r, 1)?,
        out_trade_no: col(r, 2)?,
        doc: col(r, 3)?,
        version: col(r, 4)?,
        deadline: col(r, 5)?,
    })
}

pub(crate) async fn get(c: &impl GenericClient, id: &str) -> Result<Option<SandboxPayment>> {
    let stmt = c
        .prepare_cached(&format!("{SELECT} WHERE id = $1"))
        .await
        .map_err(backend)?;
    let row = c.query_opt(&stmt, &[&id]).await.map_err(backend)?;
    row.as_ref().map(from_row).transpose()
}

pub(crate) async fn find(
    c: &impl GenericClient,
    app_id: &str,
    out_trade_no: &str,
) -> Result<Option<SandboxPayment>> {
    let stmt = c
        .prepare_cached(&format!("{SELECT} WHERE app_id = $1 AND out_trade_no = $2"))
        .await
        .map_err(backend)?;
    let row = c
        .query_opt(&stmt, &[&app_id, &out_trade_no])
        .await
        .map_err(backend)?;
    row.as_ref().map(from_row).transpose()
}

pub(crate) async fn deadlines(c: &impl GenericClient, limit: u32) -> Result<Vec<SandboxPayment>> {
    let stmt = c
        .prepare_cached(&format!(
            "{SELECT} WHERE deadline IS NOT NULL ORDER BY deadline, id LIMIT $1"
        ))
        .await
        .map_err(backend)?;
    let rows = c
        .query(&stmt, &[&i64::from(limit)])
        .await
        .map_err(backend)?;
    rows.iter().map(from_row).collect()
}

/// Inserts (`expected` is `None`) or compare-and-sets (`expected` is the version read) the
/// row; returns it as stored, with its new version.
async fn put(
    c: &impl GenericClient,
    p: &SandboxPayment,
    expected: Option<i64>,
) -> Result<SandboxPayment> {
    let version = match expected {
        None => {
            c.execute(
                "INSERT INTO sandbox_payments (id, app_id, out_trade_no, doc, version, deadline)
                 VALUES ($1, $2, $3, $4, 1, $5)",
                &[&p.id, &p.app_id, &p.out_trade_no, &p.doc, &p.deadline],
            )
            .await
            .map_err(|e| {
                if let Some(constraint) = violated(&e, &SqlState::UNIQUE_VIOLATION) {
                    if constraint == "sandbox_payments_by_trade" {
                        return StoreError::Conflict(format!(
                            "the app already has a sandbox payment with out_trade_no {:?}",
                            p.out_trade_no
                        ));
                    }
                    return StoreError::Conflict(format!(
                        "sandbox payment {} already exists",
                        p.id
                    ));
                }
                if violated(&e, &SqlState::FOREIGN_KEY_VIOLATION).is_some() {
                    return StoreError::NotFound("app");
                }
                backend(e)
            })?;
            1
        }
        Some(v) => {
            let n = c
                .execute(
                    "UPDATE sandbox_payments SET doc = $2, deadline = $3, version = version + 1
                     WHERE id = $1 AND version = $4",
                    &[&p.id, &p.doc, &p.deadline, &v],
                )
                .await
                .map_err(backend)?;
            if n == 0 {
                return Err(match get(c, &p.id).await? {
                    Some(_) => StoreError::Conflict(format!(
                        "sandbox payment {} changed concurrently; read it again",
                        p.id
                    )),
                    None => StoreError::NotFound("sandbox payment"),
                });
            }
            v + 1
        }
    };
    Ok(SandboxPayment {
        version,
        ..p.clone()
    })
}

/// The trade change and its notifications, all or nothing.
pub(crate) async fn write(inner: &Inner, write: SandboxWrite) -> Result<SandboxWritten> {
    let mut client = inner.client().await?;
    let tx = client.transaction().await.map_err(backend)?;
    let payment = put(&tx, &write.payment, write.expected_version).await?;
    let mut notifications = Vec::with_capacity(write.notifications.len());
    for n in write.notifications {
        let (app_id, key) = (n.new.app_id.clone(), n.new.idempotency_key.clone());
        let created = match insert_notification(&tx, n.new, n.notify_id).await? {
            Some(created) => created,
            // Another transaction committed the same idempotency key meanwhile.
            None => existing_by_key(&tx, &app_id, key.as_deref().unwrap_or_default()).await?,
        };
        notifications.push(created);
    }
    tx.commit().await.map_err(backend)?;
    if notifications
        .iter()
        .any(|n| !n.replayed && !n.deliveries.is_empty())
    {
        inner.work.signal();
    }
    Ok(SandboxWritten {
        payment,
        notifications,
    })
}
