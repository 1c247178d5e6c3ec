//! The engine's claim-based queue on PostgreSQL (see `herald_store::queue` for the rules).
//!
//! - **Claims** are one `UPDATE ... WHERE seq IN (SELECT ... FOR UPDATE SKIP LOCKED)`
//!   statement that takes due, unheld deliveries that head their order key and whose
//!   endpoint no other live node holds. Claims from all nodes are serialized by a
//!   transaction-scoped advisory lock taken in the statement before (so the claim's
//!   snapshot sees every earlier claim): without it, two nodes could both see an endpoint
//!   as unheld and split it between them. A lock-free peek first skips the lock when there
//!   is nothing to claim, the usual answer for nodes that do not hold a busy endpoint.
//! - **Outcomes** are one statement conditional on the delivery being pending, with the
//!   attempt count the engine saw, and held by the reporting node; the attempt row is
//!   inserted only when the outcome applies. A final outcome of an ordered delivery claims
//!   its successor in the same transaction (under the claim lock). A group commit's
//!   outcomes are one statement ([`complete_many`]) with the same conditions.
//! - **Leases** are rows of `nodes`; [`rescue`] forgets expired nodes and releases what
//!   they held in one statement.
use std::collections::HashSet;
use std::sync::Arc;

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

use herald_store::model::*;
use herald_store::queue::*;
use herald_store::EventType;
use herald_store::{Result, StoreError};

use crate::rows::col;
use crate::{backend, Inner};

/// Any constant: the advisory lock that serializes claims across nodes.
const CLAIM_LOCK: i64 = 0x6865_7261_6c64_0003;

/// What makes a delivery `d` claimable by node `$1` at horizon `$2` and time `$3`: due,
/// unheld, first of its order key, of an endpoint no other live node holds, and not held
/// back by its endpoint's health (breaker open and cooling down, or disabled). The
/// endpoints other nodes hold are one uncorrelated set, computed once per statement: a
/// correlated `NOT EXISTS` here cost, for every candidate, a walk over every row the
/// claiming node itself held of that endpoint (quadratic in a backlog; claims of three
/// nodes stalled for seconds). The set reads only the rows of the other live nodes (a
/// handful of `nodes` rows first, then `deliveries_held_by_node` for each): reading every
/// held row and dropping the claimer's own cost a lone node, holding thousands in a
/// backlog, a walk over all of them in every claim and every peek.
const CLAIMABLE: &str = "d.status = 'pending' AND d.locked_by IS NULL AND d.next_at <= $2
          AND (d.order_key IS NULL OR NOT EXISTS (
               SELECT 1 FROM deliveries p
               WHERE p.order_key = d.order_key AND p.status = 'pending' AND p.seq < d.seq))
          AND (d.endpoint_id IS NULL OR d.endpoint_id NOT IN (
               SELECT h.endpoint_id FROM nodes o CROSS JOIN LATERAL (
                   SELECT h.endpoint_id FROM deliveries h
                   WHERE h.locked_by = o.id AND h.endpoint_id IS NOT NULL
                     AND h.status = 'pending'
                   OFFSET 0) h
               WHERE o.id <> $1 AND o.lease_until >= $3))
          AND (d.endpoint_id IS NULL OR d.endpoint_id NOT IN (
               SELECT b.id FROM endpoints b
               WHERE b.health_state <> 'closed'
                 AND (b.health_state = 'disabled' OR b.breaker_open_until > $3)))";

/// Whether anything is claimable, read without the claim lock: a node that finds nothing
/// (say, every due delivery belongs to an endpoint another node holds, however long that
/// backlog) does not hold up the other nodes' claims while it looks.
const PEEK: &str = "SELECT EXISTS (SELECT 1 FROM deliveries d WHERE {claimable})";

/// The claim statement. `$1` node, `$2` horizon, `$3` now, `$4` limit; `{extra}` narrows
/// the candidates (the successor claim adds `AND d.order_key = $5`).
const CLAIM: &str = "
    WITH picked AS (
        SELECT d.seq FROM deliveries d
        WHERE {claimable}
          AND EXISTS (SELECT 1 FROM nodes WHERE id = $1)
          {extra}
        ORDER BY d.next_at, d.seq
        LIMIT $4
        FOR UPDATE OF d SKIP LOCKED),
    claimed AS (
        UPDATE deliveries d SET locked_by = $1 FROM picked WHERE d.seq = picked.seq
        RETURNING d.seq, d.id, d.notify_id, d.notification_seq, d.app_id, d.endpoint_id,
                  d.url, d.attempts, d.next_at, d.order_key)
    SELECT c.seq, c.id, c.notify_id, n.id, c.app_id, c.endpoint_id, c.url, n.event_type,
           n.payload, c.attempts, c.next_at, c.order_key, n.created_at
    FROM claimed c JOIN notifications n ON n.seq = c.notification_seq
    ORDER BY c.next_at, c.seq";

/// An attempt's outcome, conditional on the claim (see the module doc). Answers whether it
/// applied and the status the delivery had before this statement.
const COMPLETE: &str = "
    WITH u AS (
        UPDATE deliveries
        SET status = $4, attempts = $5, next_at = $6, updated_at = $7,
            locked_by = CASE WHEN $8 THEN locked_by END
        WHERE seq = $1 AND status = 'pending' AND attempts = $2 AND locked_by = $3
        RETURNING seq),
    a AS (
        INSERT INTO attempts (delivery_seq, n, at, duration_ms, status_code, response,
                              error_class, error)
        SELECT seq, $5, $9, $10, $11, $12, $13, $14 FROM u
        ON CONFLICT DO NOTHING)
    SELECT (SELECT count(*) FROM u), (SELECT status FROM deliveries WHERE seq = $1)";

/// [`COMPLETE`] for a batch of outcomes (none of which frees a successor), in one
/// statement: `$1..$14` are arrays, one element per outcome, in the order of `COMPLETE`'s
/// parameters. Answers, per outcome, its delivery, whether it applied and the status the
/// delivery had before the statement (the final `SELECT` reads the snapshot the updates do
/// not change).
const COMPLETE_MANY: &str = "
    WITH j AS (
        SELECT * FROM unnest($1::bigint[], $2::int[], $3::text[], $4::text[], $5::int[],
                             $6::bigint[], $7::bigint[], $8::bool[], $9::bigint[], $10::int[],
                             $11::int[], $12::text[], $13::text[], $14::text[])
            AS j(seq, seen, node, status, n, next_at, updated_at, keep, at, duration_ms,
                 status_code, response, error_class, error)),
    u AS (
        UPDATE deliveries d
        SET status = j.status, attempts = j.n, next_at = j.next_at, updated_at = j.updated_at,
            locked_by = CASE WHEN j.keep THEN d.locked_by END
        FROM j
        WHERE d.seq = j.seq AND d.status = 'pending' AND d.attempts = j.seen
          AND d.locked_by = j.node
        RETURNING d.seq),
    a AS (
        INSERT INTO attempts (delivery_seq, n, at, duration_ms, status_code, response,
                              error_class, error)
        SELECT j.seq, j.n, j.at, j.duration_ms, j.status_code, j.response, j.error_class,
               j.error
        FROM j JOIN u ON u.seq = j.seq
        ON CONFLICT DO NOTHING)
    SELECT j.seq, u.seq IS NOT NULL, d.status
    FROM j LEFT JOIN u ON u.seq = j.seq LEFT JOIN deliveries d ON d.seq = j.seq";

fn i32_of(v: u32, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|e| StoreError::backend(format!("{what} out of range: {v}"), e))
}

fn limit_of(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// PostgreSQL text cannot hold NUL characters; a receiver's lossy-decoded body may.
fn text(s: &Option<String>) -> Option<String> {
    s.as_ref().map(|s| s.replace('\0', "\u{fffd}"))
}

pub(crate) async fn register_node(inner: &Inner, p: LeaseParams) -> Result<()> {
    let client = inner.client().await?;
    client
        .execute(
            "INSERT INTO nodes (id, lease_until) VALUES ($1, $2)
             ON CONFLICT (id) DO UPDATE
             SET lease_until = GREATEST(nodes.lease_until, excluded.lease_until)",
            &[&&*p.node, &(p.now + p.lease)],
        )
        .await
        .map_err(backend)?;
    // No claims at birth here: tell the node to look for work now.
    inner.subscribers.send_to(&p.node, Hint::Work);
    Ok(())
}

pub(crate) async fn renew_lease(inner: &Inner, p: LeaseParams) -> Result<Lease> {
    let client = inner.client().await?;
    let n = client
        .execute(
            "UPDATE nodes SET lease_until = GREATEST(lease_until, $2) WHERE id = $1",
            &[&&*p.node, &(p.now + p.lease)],
        )
        .await
        .map_err(backend)?;
    Ok(if n == 1 { Lease::Held } else { Lease::Lost })
}

pub(crate) async fn rescue(inner: &Inner, now: Millis) -> Result<u64> {
    let client = inner.client().await?;
    // Held by a forgotten node (its row is gone) counts as dead too: nobody renews it.
    let row = client
        .query_one(
            "WITH dead AS (DELETE FROM nodes WHERE lease_until < $1 RETURNING id),
             released AS (
                 UPDATE deliveries SET locked_by = NULL
                 WHERE locked_by IS NOT NULL
                   AND (locked_by IN (SELECT id FROM dead)
                        OR NOT EXISTS (SELECT 1 FROM nodes n WHERE n.id = deliveries.locked_by))
                 RETURNING seq)
             SELECT count(*) FROM released",
            &[&now],
        )
        .await
        .map_err(backend)?;
    let n: i64 = col(&row, 0)?;
    if n > 0 {
        tracing::info!(
            deliveries = n,
            "released the work of nodes whose lease expired"
        );
    }
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Claims with [`CLAIM`] inside `tx`, after taking the claim lock. The two statements are
/// pipelined, the lock first (`biased`: polled, so sent, in order); the server runs them in
/// order, so the claim's snapshot is taken once the lock is granted. `order_key` narrows
/// the claim to one key.
#[allow(clippy::too_many_arguments)]
async fn claim_in(
    inner: &Inner,
    generation: u64,
    tx: &deadpool_postgres::Transaction<'_>,
    node: &str,
    now: Millis,
    horizon: Millis,
    limit: usize,
    order_key: Option<&str>,
) -> Result<Vec<Arc<ClaimedDelivery>>> {
    let sql = CLAIM.replace("{claimable}", CLAIMABLE).replace(
        "{extra}",
        if order_key.is_some() {
            "AND d.order_key = $5"
        } else {
            ""
        },
    );
    let lock = tx
        .prepare_cached("SELECT pg_advisory_xact_lock($1)")
        .await
        .map_err(backend)?;
    let stmt = tx.prepare_cached(&sql).await.map_err(backend)?;
    let limit = limit_of(limit);
    let lock_fut = async { tx.execute(&lock, &[&CLAIM_LOCK]).await.map_err(backend) };
    let rows = match order_key {
        None => {
            let claim = async {
                tx.query(&stmt, &[&node, &horizon, &now, &limit])
                    .await
                    .map_err(backend)
            };
            tokio::try_join!(biased; lock_fut, claim)?.1
        }
        Some(key) => {
            let claim = async {
                tx.query(&stmt, &[&node, &horizon, &now, &limit, &key])
                    .await
                    .map_err(backend)
            };
            tokio::try_join!(biased; lock_fut, claim)?.1
        }
    };
    jobs_from_rows(inner, generation, tx, &rows, now).await
}

/// Builds jobs from claimed rows, resolving apps and endpoints (cached). A delivery whose
/// app or endpoint is gone can never be sent: it is canceled instead.
async fn jobs_from_rows(
    inner: &Inner,
    generation: u64,
    c: &impl GenericClient,
    rows: &[Row],
    now: Millis,
) -> Result<Vec<Arc<ClaimedDelivery>>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let mut app_ids = Vec::new();
    let mut endpoint_ids = Vec::new();
    for row in rows {
        app_ids.push(col::<&str>(row, 4)?);
        if let Some(e) = col::<Option<&str>>(row, 5)? {
            endpoint_ids.push(e);
        }
    }
    let (apps, endpoints) = inner
        .contexts
        .resolve(c, &app_ids, &endpoint_ids, generation)
        .await?;
    let mut jobs = Vec::with_capacity(rows.len());
    let mut orphans = Vec::new();
    for row in rows {
        let seq: i64 = col(row, 0)?;
        let app_id: &str = col(row, 4)?;
        let endpoint_id: Option<&str> = col(row, 5)?;
        let Some(app) = apps.get(app_id) else {
            orphans.push(seq);
            continue;
        };
        let endpoint = match endpoint_id {
            Some(id) => match endpoints.get(id) {
                Some(e) => Some(e.clone()),
                None => {
                    orphans.push(seq);
                    continue;
                }
            },
            None => None,
        };
        let attempts: i32 = col(row, 9)?;
        let payload: &str = col(row, 8)?;
        jobs.push(Arc::new(ClaimedDelivery {
            seq,
            id: col(row, 1)?,
            notify_id: col(row, 2)?,
            notification_id: col(row, 3)?,
            app: app.clone(),
            endpoint,
            url: col(row, 6)?,
            event_type: EventType::from_stored(col(row, 7)?),
            payload: Arc::from(payload),
            created_at: col(row, 12)?,
            attempts: u32::try_from(attempts).unwrap_or(0),
            next_at: col(row, 10)?,
            order_key: col(row, 11)?,
        }));
    }
    if !orphans.is_empty() {
        tracing::warn!(
            count = orphans.len(),
            "canceling pending deliveries whose app or endpoint is gone"
        );
        c.execute(
            "UPDATE deliveries
             SET status = 'canceled', next_at = NULL, locked_by = NULL, updated_at = $2
             WHERE seq = ANY($1) AND status = 'pending'",
            &[&orphans, &now],
        )
        .await
        .map_err(backend)?;
    }
    Ok(jobs)
}

pub(crate) async fn claim(inner: &Inner, p: ClaimParams) -> Result<Vec<Arc<ClaimedDelivery>>> {
    if p.limit == 0 {
        return Ok(Vec::new());
    }
    let generation = inner.contexts.generation();
    let mut client = inner.client().await?;
    // Most claims on a busy fleet find nothing for this node: find that out without the
    // lock. (Whatever the peek saw may be gone by the claim; the claim decides.)
    let peek = client
        .prepare_cached(&PEEK.replace("{claimable}", CLAIMABLE))
        .await
        .map_err(backend)?;
    let node: &str = &p.node;
    let any: bool = col(
        &client
            .query_one(&peek, &[&node, &p.horizon, &p.now])
            .await
            .map_err(backend)?,
        0,
    )?;
    if !any {
        return Ok(Vec::new());
    }
    let tx = client.transaction().await.map_err(backend)?;
    let jobs = claim_in(
        inner, generation, &tx, &p.node, p.now, p.horizon, p.limit, None,
    )
    .await?;
    tx.commit().await.map_err(backend)?;
    inner.contexts.refresh(&client, jobs, generation).await
}

/// True when this outcome ends an ordered delivery, so that completing it also claims the
/// successor (under the claim lock, so never inside a group commit).
pub(crate) fn frees_successor(p: &CompleteParams) -> bool {
    p.report.job.order_key.is_some() && !matches!(p.report.outcome, AttemptOutcome::Retry { .. })
}

/// Records an outcome alone, in its own transaction (ordered deliveries, and outcomes whose
/// group commit failed).
pub(crate) async fn complete(inner: &Inner, p: CompleteParams) -> Result<Completed> {
    let generation = inner.contexts.generation();
    let mut client = inner.client().await?;
    let tx = client.transaction().await.map_err(backend)?;
    let mut done = complete_in(inner, generation, &tx, &p).await?;
    tx.commit().await.map_err(backend)?;
    if let Some(next) = done.successor.take() {
        done.successor = inner
            .contexts
            .refresh(&client, vec![next], generation)
            .await?
            .pop();
    }
    Ok(done)
}

/// Records an outcome inside `tx` (see [`COMPLETE`]); when it ends an ordered delivery,
/// also claims the successor for the node. `generation` is the context cache's, read
/// before `tx` began (see `Contexts::resolve`).
pub(crate) async fn complete_in(
    inner: &Inner,
    generation: u64,
    tx: &deadpool_postgres::Transaction<'_>,
    p: &CompleteParams,
) -> Result<Completed> {
    let job = &p.report.job;
    let a = &p.report.attempt;
    let (status, next_at) = p.report.outcome.status_and_next_at();
    let keep = p.keeps();
    let seen = i32_of(job.attempts, "attempts")?;
    let n = i32_of(a.n, "attempt number")?;
    let duration = i32::try_from(a.duration_ms).unwrap_or(i32::MAX);
    let code = a.status_code.map(i32::from);
    let (response, error) = (text(&a.response), text(&a.error));
    let node: &str = &p.node;
    let status_str = status.as_str();
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 14] = [
        &job.seq,
        &seen,
        &node,
        &status_str,
        &n,
        &next_at,
        &a.at,
        &keep,
        &a.at,
        &duration,
        &code,
        &response,
        &a.error_class,
        &error,
    ];
    let stmt = tx.prepare_cached(COMPLETE).await.map_err(backend)?;
    let row = tx.query_one(&stmt, &params).await.map_err(backend)?;
    let applied = col::<i64>(&row, 0)? == 1;
    if !applied {
        return Ok(applied_or_not(p, false, col(&row, 1)?));
    }
    let successor = match (&job.order_key, status.is_final()) {
        (Some(key), true) => claim_in(inner, generation, tx, node, p.now, p.horizon, 1, Some(key))
            .await?
            .pop(),
        _ => None,
    };
    Ok(Completed {
        successor,
        ..applied_or_not(p, true, None)
    })
}

/// Records a batch of outcomes inside `tx` with [`COMPLETE_MANY`]: one statement however
/// many there are. Each outcome's delivery must appear once, and none may free a successor
/// ([`frees_successor`]); the answers are in the order of `ps`.
pub(crate) async fn complete_many(
    tx: &deadpool_postgres::Transaction<'_>,
    ps: &[&CompleteParams],
) -> Result<Vec<Completed>> {
    let len = ps.len();
    let (mut seqs, mut seen, mut nodes, mut statuses, mut ns) = (
        Vec::with_capacity(len),
        Vec::with_capacity(len),
        Vec::with_capacity(len),
        Vec::with_capacity(len),
        Vec::with_capacity(len),
    );
    let (mut next_ats, mut updated, mut keeps, mut ats, mut durations) = (
        Vec::with_capacity(len),
        Vec::with_capacity(len),
        Vec::with_capacity(len),
        Vec::with_capacity(len),
        Vec::with_capacity(len),
    );
    let (mut codes, mut responses, mut classes, mut errors) = (
        Vec::with_capacity(len),
        Vec::with_capacity(len),
        Vec::with_capacity(len),
        Vec::with_capacity(len),
    );
    // In delivery order, as every batch locks its rows: two nodes' batches then wait for
    // each other instead of deadlocking.
    let mut sorted: Vec<&CompleteParams> = ps.to_vec();
    sorted.sort_unstable_by_key(|p| p.report.job.seq);
    for p in sorted {
        let job = &p.report.job;
        let a = &p.report.attempt;
        let (status, next_at) = p.report.outcome.status_and_next_at();
        seqs.push(job.seq);
        seen.push(i32_of(job.attempts, "attempts")?);
        nodes.push(&*p.node);
        statuses.push(status.as_str());
        ns.push(i32_of(a.n, "attempt number")?);
        next_ats.push(next_at);
        updated.push(a.at);
        keeps.push(p.keeps());
        ats.push(a.at);
        durations.push(i32::try_from(a.duration_ms).unwrap_or(i32::MAX));
        codes.push(a.status_code.map(i32::from));
        responses.push(text(&a.response));
        classes.push(a.error_class.as_deref());
        errors.push(text(&a.error));
    }
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 14] = [
        &seqs, &seen, &nodes, &statuses, &ns, &next_ats, &updated, &keeps, &ats, &durations,
        &codes, &responses, &classes, &errors,
    ];
    let stmt = tx.prepare_cached(COMPLETE_MANY).await.map_err(backend)?;
    let rows = tx.query(&stmt, &params).await.map_err(backend)?;
    let mut answers: std::collections::HashMap<i64, (bool, Option<String>)> =
        std::collections::HashMap::with_capacity(rows.len());
    for row in &rows {
        answers.insert(col(row, 0)?, (col(row, 1)?, col(row, 2)?));
    }
    ps.iter()
        .map(|p| {
            let (applied, before) = answers.remove(&p.report.job.seq).ok_or_else(|| {
                StoreError::backend_msg("internal error: an outcome of the batch got no answer")
            })?;
            Ok(applied_or_not(p, applied, before))
        })
        .collect()
}

/// What [`complete_in`] answers for an outcome that freed no successor: applied, or the
/// status the delivery had (`before`) when it was stale.
fn applied_or_not(p: &CompleteParams, applied: bool, before: Option<String>) -> Completed {
    if !applied {
        return Completed {
            applied: false,
            status: before.as_deref().and_then(DeliveryStatus::parse),
            held: None,
            successor: None,
        };
    }
    let job = &p.report.job;
    let (status, next_at) = p.report.outcome.status_and_next_at();
    let held = p.keeps().then(|| {
        let mut j = (**job).clone();
        j.attempts = p.report.attempt.n;
        if let Some(t) = next_at {
            j.next_at = t;
        }
        Arc::new(j)
    });
    Completed {
        applied: true,
        status: Some(status),
        held,
        successor: None,
    }
}

pub(crate) async fn release(inner: &Inner, p: ReleaseParams) -> Result<Vec<i64>> {
    if p.jobs.is_empty() {
        return Ok(Vec::new());
    }
    let seqs: Vec<i64> = p.jobs.iter().map(|(s, _)| *s).collect();
    let attempts = p
        .jobs
        .iter()
        .map(|(_, a)| i32_of(*a, "attempts"))
        .collect::<Result<Vec<i32>>>()?;
    let client = inner.client().await?;
    let stmt = client
        .prepare_cached(
            "WITH r AS (
                 UPDATE deliveries d SET locked_by = NULL, next_at = COALESCE($3, d.next_at)
                 FROM unnest($2::bigint[], $4::int[]) AS j(seq, attempts)
                 WHERE d.seq = j.seq AND d.attempts = j.attempts AND d.locked_by = $1
                   AND d.status = 'pending'
                 RETURNING d.seq)
             SELECT seq FROM r",
        )
        .await
        .map_err(backend)?;
    let node: &str = &p.node;
    let rows = client
        .query(&stmt, &[&node, &seqs, &p.next_at, &attempts])
        .await
        .map_err(backend)?;
    let released: HashSet<i64> = rows
        .iter()
        .map(|r| col::<i64>(r, 0))
        .collect::<Result<_>>()?;
    // Unheld work again: any node may claim it (parked work once it is due by its horizon).
    if !released.is_empty() {
        inner.work.signal();
    }
    Ok(seqs.into_iter().filter(|s| released.contains(s)).collect())
}

/// The pending deliveries `node` holds, due by `horizon` (see `Queue::held`).
pub(crate) async fn held(inner: &Inner, p: HeldParams) -> Result<Vec<Arc<ClaimedDelivery>>> {
    let generation = inner.contexts.generation();
    let client = inner.client().await?;
    let stmt = client
        .prepare_cached(
            "SELECT d.seq, d.id, d.notify_id, n.id, d.app_id, d.endpoint_id, d.url, n.event_type,
                    n.payload, d.attempts, d.next_at, d.order_key, n.created_at
             FROM deliveries d JOIN notifications n ON n.seq = d.notification_seq
             WHERE d.locked_by = $1 AND d.status = 'pending' AND d.next_at <= $2
             ORDER BY d.next_at, d.seq",
        )
        .await
        .map_err(backend)?;
    let rows = client
        .query(&stmt, &[&&*p.node, &p.horizon])
        .await
        .map_err(backend)?;
    let jobs = jobs_from_rows(inner, generation, &client, &rows, p.now).await?;
    inner.contexts.refresh(&client, jobs, generation).await
}
