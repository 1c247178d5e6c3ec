//! The inbound gateway's sources: a source is created with its internal app and destination
//! endpoint in one transaction; deleting one marks it deleted (its ingest URL stops
//! accepting), then deletes its endpoint, canceling pending forwards (in that order, so a
//! crash in between leaves forwards running for a source that accepts nothing more, never a
//! live source without a destination).
use std::sync::Arc;

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use ulid::Ulid;

use herald_store::model::*;
use herald_store::{Result, Sealer, StoreError};

use crate::rows::col;
use crate::{admin, backend, Inner};

const SOURCE_COLS: &str = "id, name, profile, keys, expect_app_id, expect_merchant_id, \
     format, app_id, endpoint_id, created_at";

fn source_from_row(r: &Row, sealer: &Sealer) -> Result<Source> {
    let id: String = col(r, 0)?;
    let stored: String = col(r, 3)?;
    let format: String = col(r, 6)?;
    Ok(Source {
        keys: sealer.open_source_keys(&id, &stored)?,
        name: col(r, 1)?,
        profile: col(r, 2)?,
        expect_app_id: col(r, 4)?,
        expect_merchant_id: col(r, 5)?,
        format: SourceFormat::parse(&format).ok_or_else(|| {
            StoreError::backend_msg(format!("bad source format {format:?} in the database"))
        })?,
        app_id: col(r, 7)?,
        endpoint_id: col(r, 8)?,
        created_at: col(r, 9)?,
        id,
    })
}

pub(crate) async fn create(inner: &Inner, new: NewSource) -> Result<Source> {
    let sealer = &inner.contexts.sealer;
    let app = admin::app_row(new.app);
    let ep = admin::endpoint_row(NewEndpoint {
        app_id: app.id.clone(),
        ..new.destination
    });
    let source = Source {
        id: format!("src_{}", Ulid::new()),
        name: new.name,
        profile: new.profile,
        keys: new.keys,
        expect_app_id: new.expect_app_id,
        expect_merchant_id: new.expect_merchant_id,
        format: new.format,
        app_id: app.id.clone(),
        endpoint_id: ep.id.clone(),
        created_at: ep.created_at,
    };
    let generation = inner.contexts.generation();
    let mut client = inner.client().await?;
    let tx = client.transaction().await.map_err(backend)?;
    admin::insert_app(
        &tx,
        sealer,
        &app,
        Some(herald_store::ops_outbox::INTERNAL_SOURCE),
    )
    .await?;
    admin::insert_endpoint(&tx, &ep).await?;
    tx.execute(
        "INSERT INTO sources (id, name, profile, keys, expect_app_id, expect_merchant_id,
                              format, app_id, endpoint_id, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        &[
            &source.id,
            &source.name,
            &source.profile,
            &sealer.seal_source_keys(&source.id, &source.keys)?,
            &source.expect_app_id,
            &source.expect_merchant_id,
            &source.format.as_str(),
            &source.app_id,
            &source.endpoint_id,
            &source.created_at,
        ],
    )
    .await
    .map_err(backend)?;
    tx.commit().await.map_err(backend)?;
    inner
        .contexts
        .put_app_since(Arc::new(AppCtx::from_app(&app)), generation);
    Ok(source)
}

pub(crate) async fn get(
    c: &impl GenericClient,
    sealer: &Sealer,
    id: &str,
) -> Result<Option<Source>> {
    let sql = format!("SELECT {SOURCE_COLS} FROM sources WHERE id = $1 AND NOT deleted");
    let row = c.query_opt(&sql, &[&id]).await.map_err(backend)?;
    row.as_ref().map(|r| source_from_row(r, sealer)).transpose()
}

pub(crate) async fn list(
    c: &impl GenericClient,
    sealer: &Sealer,
    page: &ListSources,
) -> Result<Page<Source>> {
    let (after_at, after_id) = match &page.cursor {
        Some(c) => {
            let (at, id) = c.split_once(':').ok_or(StoreError::BadCursor)?;
            (
                at.parse::<i64>().map_err(|_| StoreError::BadCursor)?,
                id.to_string(),
            )
        }
        None => (i64::MIN, String::new()),
    };
    let limit = page.limit.clamp(1, MAX_PAGE) as usize;
    let sql = format!(
        "SELECT {SOURCE_COLS} FROM sources
         WHERE NOT deleted AND (created_at > $1 OR (created_at = $1 AND id > $2))
         ORDER BY created_at, id LIMIT $3"
    );
    let rows = c
        .query(&sql, &[&after_at, &after_id, &(limit as i64 + 1)])
        .await
        .map_err(backend)?;
    let mut items = rows
        .iter()
        .map(|r| source_from_row(r, sealer))
        .collect::<Result<Vec<_>>>()?;
    let more = items.len() > limit;
    items.truncate(limit);
    Ok(Page {
        next_cursor: if more {
            items.last().map(|s| format!("{}:{}", s.created_at, s.id))
        } else {
            None
        },
        items,
    })
}

pub(crate) async fn delete(inner: &Inner, id: &str, now: UnixMillis) -> Result<bool> {
    let row = inner
        .client()
        .await?
        .query_opt(
            "UPDATE sources SET deleted = TRUE WHERE id = $1 AND NOT deleted
             RETURNING app_id, endpoint_id",
            &[&id],
        )
        .await
        .map_err(backend)?;
    let Some(row) = row else { return Ok(false) };
    let (app_id, endpoint_id): (String, String) = (col(&row, 0)?, col(&row, 1)?);
    admin::delete_endpoint(inner, &app_id, &endpoint_id, now).await?;
    Ok(true)
}
