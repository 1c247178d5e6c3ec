//! SQL for the payment sandbox's `sandbox_payments` table: reads on any connection, the
//! insert / compare-and-set update inside the writer's transaction.
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::schema::backend;
use herald_store::model::SandboxPayment;
use herald_store::{Result, StoreError};

pub(crate) const SELECT: &str =
    "SELECT id, app_id, out_trade_no, doc, version, deadline FROM sandbox_payments";

pub(crate) fn from_row(r: &Row) -> rusqlite::Result<SandboxPayment> {
    Ok(SandboxPayment {
        id: r.get(0)?,
        app_id: r.get(1)?,
        out_trade_no: r.get(2)?,
        doc: r.get(3)?,
        version: r.get(4)?,
        deadline: r.get(5)?,
    })
}

pub(crate) fn get(conn: &Connection, id: &str) -> Result<Option<SandboxPayment>> {
    conn.prepare_cached(&format!("{SELECT} WHERE id = ?1"))
        .and_then(|mut s| s.query_row([id], from_row).optional())
        .map_err(backend)
}

pub(crate) fn find(
    conn: &Connection,
    app_id: &str,
    out_trade_no: &str,
) -> Result<Option<SandboxPayment>> {
    conn.prepare_cached(&format!("{SELECT} WHERE app_id = ?1 AND out_trade_no = ?2"))
        .and_then(|mut s| s.query_row([app_id, out_trade_no], from_row).optional())
        .map_err(backend)
}

pub(crate) fn deadlines(conn: &Connection, limit: u32) -> Result<Vec<SandboxPayment>> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "{SELECT} WHERE deadline IS NOT NULL ORDER BY deadline, id LIMIT ?1"
        ))
        .map_err(backend)?;
    let rows = stmt.query_map([limit], from_row).map_err(backend)?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(backend)
}

/// Inserts (`expected` is `None`) or compare-and-sets (`expected` is the version read) the
/// row; returns it as stored, with its new version.
pub(crate) fn put(
    conn: &Connection,
    p: &SandboxPayment,
    expected: Option<i64>,
) -> Result<SandboxPayment> {
    let version = match expected {
        None => {
            if find(conn, &p.app_id, &p.out_trade_no)?.is_some() {
                return Err(StoreError::Conflict(format!(
                    "the app already has a sandbox payment with out_trade_no {:?}",
                    p.out_trade_no
                )));
            }
            conn.prepare_cached(
                "INSERT INTO sandbox_payments (id, app_id, out_trade_no, doc, version, deadline)
                 VALUES (?1, ?2, ?3, ?4, 1, ?5)",
            )
            .and_then(|mut s| s.execute(params![p.id, p.app_id, p.out_trade_no, p.doc, p.deadline]))
            .map_err(|e| match e.sqlite_error_code() {
                Some(rusqlite::ErrorCode::ConstraintViolation) => {
                    StoreError::Conflict(format!("sandbox payment {} already exists", p.id))
                }
                _ => backend(e),
            })?;
            1
        }
        Some(v) => {
            let n = conn
                .prepare_cached(
                    "UPDATE sandbox_payments SET doc = ?2, deadline = ?3, version = version + 1
                     WHERE id = ?1 AND version = ?4",
                )
                .and_then(|mut s| s.execute(params![p.id, p.doc, p.deadline, v]))
                .map_err(backend)?;
            if n == 0 {
                return Err(match get(conn, &p.id)? {
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
