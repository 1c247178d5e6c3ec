//! The engine's claim-based queue on PostgreSQL (see `herald_store::queue` for the rules).
//!
//! - **Who may claim an endpoint.** One live node at a time holds an endpoint's
//!   deliveries (so ordering and in-flight limits hold across nodes). Each endpoint has a
//!   row in `endpoint_holders` naming the node that claimed from it last; every claim of
//!   an endpoint's deliveries holds that row locked (`FOR UPDATE SKIP LOCKED`) and, in a
//!   statement taken after the lock (so its snapshot sees every earlier claim of the
//!   endpoint), checks that the named node is this one, or is dead, or holds no pending
//!   delivery of the endpoint any more (one probe of `deliveries_held_by_node`), then
//!   names itself. An endpoint's deliveries become held only under that row lock, so two
//!   nodes never hold the same endpoint's; they contend only for the same endpoint's row,
//!   and a claimer skips a row another claim holds instead of waiting for its commit
//!   (there is no lock every claim takes: claims of different endpoints commit, and flush,
//!   side by side).
//! - **Spreading endpoints (fair share).** With `w` endpoints that have work and `n` live
//!   nodes, a node claims from at most `ceil(w / n)` endpoints: those it claimed last
//!   first, then free ones (in an order of its own, so nodes starting together reach for
//!   different ones). A node above its share (it started alone, or a node joined) stops
//!   taking more of the extra endpoints; once it has finished what it holds of one, the
//!   endpoint is free and an idle node takes it. One endpoint cannot be spread (its
//!   in-flight limit and order belong to one holder), so with one busy endpoint the other
//!   nodes only look.
//! - **Looking is cheap.** A claim first looks without a transaction ([`PEEK`]): a skip
//!   scan lists the endpoints with unheld pending work (one index probe per endpoint, not
//!   a walk over its backlog), a holder-row lookup and one probe tell who holds each, and
//!   only endpoints nobody else holds are probed for due work. A node holding nothing on a
//!   fleet with one busy endpoint thus reads a few index pages per look, and stops there;
//!   once its claims keep finding nothing, its `work` hints come every 100 ms instead of
//!   every 10 ms (`hints::work_gap`), so it looks ten times a second.
//!   Deliveries without an endpoint (a notification's own URL) have no holder: any node
//!   may claim them, one at a time by their row locks.
//! - **Outcomes** are one statement conditional on the delivery being pending, with the
//!   attempt count the engine saw, and held by the reporting node; the attempt row is
//!   inserted only when the outcome applies. A final outcome of an ordered delivery claims
//!   its successor in the same transaction (under its endpoint's holder row; skipped when
//!   another claim holds that row, and a later claim takes the successor then). A group
//!   commit's outcomes are one statement ([`complete_many`]) with the same conditions.
//! - **Claims at birth.** A node alone on the database (its last peek counted no other
//!   live node) gets the new deliveries of the endpoints whose holder rows name it, and
//!   those without an endpoint, claimed by the group commit's insert itself, under a
//!   `FOR KEY SHARE SKIP LOCKED` lock of those holder rows (see `admin::Birth`): a claim of
//!   such an endpoint skips it until the insert commits, then sees its deliveries held, so
//!   the one-holder rule stands. Deliveries with an order key, of an endpoint held back by
//!   its health, or whose holder row a claim holds are left for claims. A node's own claims
//!   wait for those inserts on the rows that name the node ([`LOCK_OWN_ENDPOINTS`]) rather
//!   than skip them, so what an insert left is claimed at once.
//! - **Leases** are rows of `nodes`; [`rescue`] forgets expired nodes, releases what they
//!   held and clears the holder rows naming them, in one statement. Deleting an endpoint
//!   (or its app) deletes its holder row.
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

use herald_store::model::*;
use herald_store::queue::*;
use herald_store::EventType;
use herald_store::{Result, StoreError};

use crate::rows::col;
use crate::{backend, Inner};

/// A due, unheld delivery `d` at horizon `$2` that heads its order key.
const DUE_HEAD: &str = "d.status = 'pending' AND d.locked_by IS NULL AND d.next_at <= $2
          AND (d.order_key IS NULL OR NOT EXISTS (
               SELECT 1 FROM deliveries p
               WHERE p.order_key = d.order_key AND p.status = 'pending' AND p.seq < d.seq))";

/// Endpoint `{e}` is held back by its health at `$3` (breaker open and cooling down, or
/// disabled): one primary-key lookup.
const HELD_BACK: &str = "EXISTS (SELECT 1 FROM endpoints b
          WHERE b.id = {e} AND b.health_state <> 'closed'
            AND (b.health_state = 'disabled' OR b.breaker_open_until > $3))";

/// Whether `h.node_id` (the holder row of endpoint `{e}`), another live node than `$1`,
/// holds a pending delivery of it at `$3`: a `nodes` lookup and one probe of
/// `deliveries_held_by_node` (`locked_by`, `endpoint_id`). The status test is written as in
/// [`COMPLETE_MANY`], for the same reason.
const HELD_BY_OTHER: &str = "h.node_id <> $1
          AND EXISTS (SELECT 1 FROM nodes o WHERE o.id = h.node_id AND o.lease_until >= $3)
          AND EXISTS (SELECT 1 FROM deliveries x
                      WHERE x.endpoint_id = {e} AND x.locked_by = h.node_id
                        AND (x.status = 'pending') IS TRUE OFFSET 0)";

/// The lock-free look for work of node `$1` at horizon `$2`, time `$3`: one row per
/// endpoint with unheld pending work (found by a skip scan of
/// `deliveries_due_by_endpoint`, one probe per endpoint, however long its backlog), with
/// its state for this node (`other`: another live node holds it; `mine`: this node claimed
/// it last; `free`), whether it has its holder row yet, and the number of live nodes;
/// endpoints of another node are not probed for due work. A last row, always there, has a
/// NULL endpoint, the number of live nodes (so a node learns of the others also when it
/// finds nothing to claim: `Inner::live_nodes` decides claims at birth), and `free` when
/// due work without an endpoint waits (`none` otherwise).
/// Endpoints held back by their health are left out.
///
/// Its two probes of `deliveries` per endpoint end in `OFFSET 0`, which keeps PostgreSQL
/// from turning them into hashed subplans: it estimates the endpoint list at 100 rows
/// (a recursive query) against a handful in fact, and would then read every due or held
/// delivery once per peek to build the hash (seen with `auto_explain`: a sequential scan
/// of 95,000 rows, 40 ms a peek, against about 0.5 ms probing).
const PEEK: &str = "
    WITH RECURSIVE pend(e) AS (
        (SELECT endpoint_id FROM deliveries
         WHERE status = 'pending' AND locked_by IS NULL AND endpoint_id IS NOT NULL
         ORDER BY endpoint_id LIMIT 1)
        UNION ALL
        SELECT (SELECT q.endpoint_id FROM deliveries q
                WHERE q.status = 'pending' AND q.locked_by IS NULL AND q.endpoint_id > pend.e
                ORDER BY q.endpoint_id LIMIT 1)
        FROM pend WHERE pend.e IS NOT NULL),
    st AS MATERIALIZED (
        SELECT pend.e, h.endpoint_id IS NOT NULL AS has_row,
               CASE WHEN h.node_id = $1 THEN 'mine'
                    WHEN {held_by_other_pend} THEN 'other'
                    ELSE 'free' END AS state
        FROM pend LEFT JOIN endpoint_holders h ON h.endpoint_id = pend.e
        WHERE pend.e IS NOT NULL AND NOT {held_back_pend})
    SELECT st.e, st.state, st.has_row,
           (SELECT count(*) FROM nodes WHERE lease_until >= $3)
    FROM st
    WHERE st.state = 'other'
       OR EXISTS (SELECT 1 FROM deliveries d WHERE d.endpoint_id = st.e AND {due_head}
                  OFFSET 0)
    UNION ALL
    SELECT NULL,
           CASE WHEN EXISTS (SELECT 1 FROM deliveries d WHERE d.endpoint_id IS NULL AND {due_head})
                THEN 'free' ELSE 'none' END,
           TRUE, (SELECT count(*) FROM nodes WHERE lease_until >= $3)";

/// Takes the holder rows of the endpoints `$1` that no other claim has taken: the only
/// lock a claim waits for nothing on, and the only one two nodes contend for (and then
/// only for the same endpoint).
const LOCK_ENDPOINTS: &str = "SELECT endpoint_id FROM endpoint_holders
    WHERE endpoint_id = ANY($1) ORDER BY endpoint_id FOR UPDATE SKIP LOCKED";

/// Locks, first and waiting for them, the holder rows among `$1` that name node `$2`: only
/// this node's own inserts lock those (`FOR KEY SHARE` while they claim new deliveries at
/// birth, about a millisecond), and a claim that skipped them would leave what those
/// inserts did not claim for its next look, a claim interval later. [`LOCK_ENDPOINTS`]
/// then takes the others (and returns these, already this transaction's).
const LOCK_OWN_ENDPOINTS: &str = "SELECT endpoint_id FROM endpoint_holders
    WHERE endpoint_id = ANY($1) AND node_id = $2 ORDER BY endpoint_id FOR UPDATE";

/// How the rest of a claim's transaction is planned: [`CLAIM`] (and [`LOCK_ENDPOINTS`]) and
/// the peek before them (see [`look`]), each on its generic plan and without bitmap scans.
///
/// Generic plans: left to itself, PostgreSQL planned the claim anew on every run (a plan for
/// the actual endpoint array always looks cheaper than the generic one): about 1 ms of the
/// database's time a claim, measured with `pg_stat_statements` in the e2e bench, as much as
/// running it. The generic plan walks the same indexes (`deliveries_due_by_endpoint` per
/// endpoint, one probe of `deliveries_held_by_node`); the small tables (endpoints, holder
/// rows, nodes) are read however their statistics make cheapest.
///
/// No bitmap scans: the probe "does another live node hold a pending delivery of this
/// endpoint" ([`HELD_BY_OTHER`]) reads `deliveries_held_by_node`, whose entries for the
/// versions that finished deliveries left behind stay until a vacuum. The planner, which
/// counts live rows only, took a bitmap scan for it; a bitmap scan reads the heap page of
/// every such entry on every call and marks none dead. A plain index scan marks each one
/// dead the first time it finds its version dead, and later probes step over it without
/// the heap (`a_repeated_peek_steps_over_what_another_nodes_finished_deliveries_left`).
/// On a database that had served three earlier bench phases, the three-node, 6-endpoint
/// phase's peek went from 1.7-2.6 ms and 2,256-3,077 buffers a call (in four runs of five)
/// to 0.14-0.19 ms and 82-190 (docs/performance.md). Set for these transactions only: for
/// every statement (tried in an earlier round) it made other statements slower.
///
/// A claim whose peek ran in the same transaction sends this again with the lock: utility
/// statements in the same round trip, cheaper than a flag through [`claim_in`] (0.01 s of
/// a bench phase for about 1,200 of them). A successor's claim runs inside its outcome's
/// transaction, which may be a group commit's: the statements that batch sends after it
/// run under these settings too (they look their rows up by key; so it was for the generic
/// plans before bitmap scans were turned off here).
const CLAIM_PLANS: &str =
    "SET LOCAL plan_cache_mode = force_generic_plan; SET LOCAL enable_bitmapscan = off";

/// The claim statement, run after [`LOCK_ENDPOINTS`] in the same transaction so that its
/// snapshot sees every earlier claim of those endpoints. `$1` node, `$2` horizon, `$3` now,
/// `$4` limit, `$5` the endpoints whose holder rows this transaction locked, `$6` whether
/// to claim deliveries without an endpoint; `{extra}` narrows the candidates (the successor
/// claim adds `AND d.order_key = $7`). An endpoint another live node holds, or held back
/// by its health, is dropped; each endpoint's due work is read on its own (a walk of
/// `deliveries_due_by_endpoint` that stops at the limit), and the holder rows of the
/// endpoints claimed from are set to this node.
const CLAIM: &str = "
    WITH ok AS (
        SELECT u.e FROM unnest($5::text[]) AS u(e)
        WHERE NOT EXISTS (SELECT 1 FROM endpoint_holders h
                          WHERE h.endpoint_id = u.e AND {held_by_other_u})
          AND NOT {held_back_u}),
    cand AS (
        SELECT c.seq, c.next_at FROM ok CROSS JOIN LATERAL (
            SELECT d.seq, d.next_at FROM deliveries d
            WHERE d.endpoint_id = ok.e AND {due_head} {extra}
            ORDER BY d.next_at, d.seq LIMIT $4
            FOR UPDATE OF d SKIP LOCKED) c
        UNION ALL
        SELECT n.seq, n.next_at FROM (
            SELECT d.seq, d.next_at FROM deliveries d
            WHERE $6 AND d.endpoint_id IS NULL AND {due_head} {extra}
            ORDER BY d.next_at, d.seq LIMIT $4
            FOR UPDATE OF d SKIP LOCKED) n),
    picked AS (
        SELECT cand.seq FROM cand
        WHERE EXISTS (SELECT 1 FROM nodes WHERE id = $1)
        ORDER BY cand.next_at, cand.seq
        LIMIT $4),
    claimed AS (
        UPDATE deliveries d SET locked_by = $1 FROM picked WHERE d.seq = picked.seq
        RETURNING d.seq, d.id, d.notify_id, d.notification_seq, d.app_id, d.endpoint_id,
                  d.url, d.attempts, d.next_at, d.order_key),
    own AS (
        UPDATE endpoint_holders h SET node_id = $1
        WHERE h.endpoint_id IN (SELECT endpoint_id FROM claimed)
          AND h.node_id IS DISTINCT FROM $1)
    SELECT c.seq, c.id, c.notify_id, n.id, c.app_id, c.endpoint_id, c.url, n.event_type,
           n.payload, c.attempts, c.next_at, c.order_key, n.created_at
    FROM claimed c JOIN notifications n ON n.seq = c.notification_seq
    ORDER BY c.next_at, c.seq";

fn peek_sql() -> String {
    PEEK.replace(
        "{held_by_other_pend}",
        &HELD_BY_OTHER.replace("{e}", "pend.e"),
    )
    .replace("{held_back_pend}", &HELD_BACK.replace("{e}", "pend.e"))
    .replace("{due_head}", DUE_HEAD)
}

fn claim_sql(by_key: bool) -> String {
    CLAIM
        .replace("{held_by_other_u}", &HELD_BY_OTHER.replace("{e}", "u.e"))
        .replace("{held_back_u}", &HELD_BACK.replace("{e}", "u.e"))
        .replace("{due_head}", DUE_HEAD)
        .replace("{extra}", if by_key { "AND d.order_key = $7" } else { "" })
}

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
/// not change). Whether an outcome applied is an `IN` over the updated rows, which
/// PostgreSQL hashes; a join there became a nested loop over both lists (the planner
/// takes `unnest` for 10 rows), 65,000 comparisons for a batch of 256.
///
/// Its status test is `(d.status = 'pending') IS TRUE`: a form no partial index can serve,
/// for a statement that finds its rows by key and only checks the status. The
/// partial indexes on pending deliveries (`deliveries_by_endpoint`, `deliveries_due`, ...)
/// keep an entry for every version a claim or an outcome left behind until a vacuum runs,
/// and bitmap scans never mark those entries dead; the planner, which counts only live
/// rows, would take one of them for a cheap way to the few pending rows and then read
/// tens of thousands of dead entries per statement (measured: an outcome batch read 42,000
/// to update 13 rows). `IS TRUE` keeps the test's meaning (status is never NULL) and hides
/// it from the proof that lets a partial index be used.
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
        WHERE d.seq = j.seq AND (d.status = 'pending') IS TRUE AND d.attempts = j.seen
          AND d.locked_by = j.node
        RETURNING d.seq),
    a AS (
        INSERT INTO attempts (delivery_seq, n, at, duration_ms, status_code, response,
                              error_class, error)
        SELECT j.seq, j.n, j.at, j.duration_ms, j.status_code, j.response, j.error_class,
               j.error
        FROM j JOIN u ON u.seq = j.seq
        ON CONFLICT DO NOTHING)
    SELECT j.seq, j.seq IN (SELECT seq FROM u), d.status
    FROM j LEFT JOIN deliveries d ON d.seq = j.seq";

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

pub(crate) async fn register_node(inner: &Inner, p: LeaseParams, claim_new: bool) -> Result<()> {
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
    if claim_new {
        inner.set_birth_node(p.node.clone());
    }
    // Tell the node to look for work now (what was stored before it came).
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

/// Forgets node `$1` if it holds no delivery (a final outcome, a release and a cancel all
/// clear `locked_by`): one probe of `deliveries_held_by_node`. Holder rows that still name
/// it are free to claims from then on (they test the holder's lease), as after a rescue.
const LEAVE: &str = "DELETE FROM nodes WHERE id = $1
    AND NOT EXISTS (SELECT 1 FROM deliveries WHERE locked_by = $1)";

pub(crate) async fn leave(inner: &Inner, node: &str) -> Result<bool> {
    inner.forget_birth_node(node);
    let client = inner.client().await?;
    let n = client.execute(LEAVE, &[&node]).await.map_err(backend)?;
    Ok(n == 1)
}

/// Forgets the nodes whose lease ended before `$1`, releases what they held and clears the
/// holder rows that name them (claims already treat those as free; a cleared row says so
/// without the `nodes` lookup), and releases what any node without a row holds (a forgotten
/// node: nobody renews it). The holder rows of a node without a row are left: only a node
/// this statement found dead is known to hold nothing once it commits. The holders are found
/// by a skip scan of `deliveries_held_by_node`, one index probe per holding node, and only
/// the deliveries of dead ones are read, so a rescue that finds every holder alive (nearly
/// every rescue) reads no delivery. Each probe is a plain index scan: it steps over the
/// entries finished deliveries left behind, marking them dead as it goes, and the next
/// rescue skips them. (It used to test each held delivery in a bitmap scan of that index,
/// which reads every such entry until a vacuum and marks none: measured at 680 ms a rescue
/// in the e2e bench's PostgreSQL runs.)
const RESCUE: &str = "
    WITH RECURSIVE holders(node) AS (
        (SELECT locked_by FROM deliveries WHERE locked_by IS NOT NULL
         ORDER BY locked_by LIMIT 1)
        UNION ALL
        SELECT (SELECT d.locked_by FROM deliveries d
                WHERE d.locked_by IS NOT NULL AND d.locked_by > holders.node
                ORDER BY d.locked_by LIMIT 1)
        FROM holders WHERE holders.node IS NOT NULL),
    dead AS (DELETE FROM nodes WHERE lease_until < $1 RETURNING id),
    gone AS (
        SELECT h.node FROM holders h
        WHERE h.node IS NOT NULL
          AND (h.node IN (SELECT id FROM dead)
               OR NOT EXISTS (SELECT 1 FROM nodes n WHERE n.id = h.node))),
    released AS (
        UPDATE deliveries SET locked_by = NULL
        WHERE locked_by IN (SELECT node FROM gone)
        RETURNING seq),
    unheld AS (
        UPDATE endpoint_holders SET node_id = NULL WHERE node_id IN (SELECT id FROM dead))
    SELECT count(*) FROM released";

pub(crate) async fn rescue(inner: &Inner, now: UnixMillis) -> Result<u64> {
    let client = inner.client().await?;
    let stmt = client.prepare_cached(RESCUE).await.map_err(backend)?;
    let row = client.query_one(&stmt, &[&now]).await.map_err(backend)?;
    let n: i64 = col(&row, 0)?;
    if n > 0 {
        tracing::info!(
            deliveries = n,
            "released the work of nodes whose lease expired"
        );
    }
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Claims with [`CLAIM`] inside `tx`: first takes the holder rows of `endpoints` that no
/// other claim holds ([`LOCK_ENDPOINTS`], skipping those), then claims from the endpoints
/// it took (and from deliveries without an endpoint when `endpointless`). The claim is a
/// statement of its own, after the lock's answer, so its snapshot sees every claim that
/// held those rows before. `order_key` narrows the claim to one key.
#[allow(clippy::too_many_arguments)]
async fn claim_in(
    inner: &Inner,
    generation: u64,
    tx: &deadpool_postgres::Transaction<'_>,
    node: &str,
    now: UnixMillis,
    horizon: UnixMillis,
    limit: usize,
    endpoints: &[&str],
    endpointless: bool,
    order_key: Option<&str>,
) -> Result<Vec<Arc<ClaimedDelivery>>> {
    // Sent ahead of the lock, in the same round trip (see [`CLAIM_PLANS`]).
    let settings = async { tx.batch_execute(CLAIM_PLANS).await.map_err(backend) };
    let locked: Vec<String> = if endpoints.is_empty() {
        settings.await?;
        Vec::new()
    } else {
        // A successor's claim (inside an outcome's transaction) waits for nothing.
        let own = async {
            if order_key.is_some() {
                return Ok(Vec::new());
            }
            let own = tx
                .prepare_cached(LOCK_OWN_ENDPOINTS)
                .await
                .map_err(backend)?;
            tx.query(&own, &[&endpoints, &node]).await.map_err(backend)
        };
        let lock = tx.prepare_cached(LOCK_ENDPOINTS).await.map_err(backend)?;
        let lock = async { tx.query(&lock, &[&endpoints]).await.map_err(backend) };
        let ((), own, rows) = tokio::try_join!(settings, own, lock)?;
        let mut locked = own
            .iter()
            .chain(&rows)
            .map(|r| col::<String>(r, 0))
            .collect::<Result<Vec<_>>>()?;
        locked.sort_unstable();
        locked.dedup();
        locked
    };
    if locked.is_empty() && !endpointless {
        return Ok(Vec::new());
    }
    let stmt = tx
        .prepare_cached(&claim_sql(order_key.is_some()))
        .await
        .map_err(backend)?;
    let limit = limit_of(limit);
    let rows = match order_key {
        None => tx
            .query(
                &stmt,
                &[&node, &horizon, &now, &limit, &locked, &endpointless],
            )
            .await
            .map_err(backend)?,
        Some(key) => tx
            .query(
                &stmt,
                &[&node, &horizon, &now, &limit, &locked, &endpointless, &key],
            )
            .await
            .map_err(backend)?,
    };
    jobs_from_rows(inner, generation, tx, &rows, now).await
}

/// What [`PEEK`] found for a node: the endpoints it may claim from now, in the order to
/// try them, and whether due work without an endpoint waits.
#[derive(Debug, Default, PartialEq)]
struct Plan {
    endpoints: Vec<String>,
    /// Of `endpoints`, those without their holder row yet.
    unrowed: Vec<String>,
    endpointless: bool,
}

/// The fair-share rule (see the module doc): of `w` endpoints with work (the rows of
/// [`PEEK`]) over `live` nodes, a node claims from at most `ceil(w / live)`; the ones it
/// claimed last first (so an endpoint stays put), then free ones in an order of its own
/// (a hash of node and endpoint, so nodes starting together reach for different ones).
fn plan(node: &str, rows: &[PeekRow]) -> Plan {
    use std::hash::{Hash, Hasher};
    let mut out = Plan::default();
    let mut live = 1;
    let mut work = 0usize;
    let mut mine = Vec::new();
    let mut free = Vec::new();
    for (e, state, has_row, n) in rows {
        let Some(e) = e else {
            out.endpointless |= state == "free";
            continue;
        };
        live = live.max(*n);
        work += 1;
        match state.as_str() {
            "mine" => mine.push((e.clone(), *has_row)),
            "free" => free.push((e.clone(), *has_row)),
            _ => {}
        }
    }
    let live = usize::try_from(live).unwrap_or(1).max(1);
    let share = work.div_ceil(live);
    let key = |e: &str| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (node, e).hash(&mut h);
        h.finish()
    };
    free.sort_by_cached_key(|(e, _)| key(e));
    for (e, has_row) in mine.into_iter().chain(free).take(share) {
        if !has_row {
            out.unrowed.push(e.clone());
        }
        out.endpoints.push(e);
    }
    out.endpoints.sort_unstable();
    out.unrowed.sort_unstable();
    out
}

/// Builds jobs from claimed rows, resolving apps and endpoints (cached). A delivery whose
/// app or endpoint is gone can never be sent: it is canceled instead.
async fn jobs_from_rows(
    inner: &Inner,
    generation: u64,
    c: &impl GenericClient,
    rows: &[Row],
    now: UnixMillis,
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

/// One row of [`PEEK`]: endpoint (NULL in the last row), state, whether it has its holder
/// row, live nodes.
type PeekRow = (Option<String>, String, bool, i64);

/// Runs [`PEEK`] (prepared as `peek`) in `tx` on its generic plan, sent with
/// [`CLAIM_PLANS`] in one round trip. Left to itself, PostgreSQL planned the peek anew on
/// every run, as it did the claim: 0.15 s of planning for 0.05 s of running in the e2e
/// bench's one-node phase (`pg_stat_statements`). Its generic plan probes the same indexes
/// (`the_peek_probes_each_endpoint_instead_of_hashing_the_whole_table`).
async fn look(
    tx: &deadpool_postgres::Transaction<'_>,
    peek: &tokio_postgres::Statement,
    node: &str,
    horizon: UnixMillis,
    now: UnixMillis,
) -> Result<Vec<PeekRow>> {
    let settings = async { tx.batch_execute(CLAIM_PLANS).await.map_err(backend) };
    let rows = async {
        tx.query(peek, &[&node, &horizon, &now])
            .await
            .map_err(backend)
    };
    let ((), rows) = tokio::try_join!(settings, rows)?;
    rows.iter()
        .map(|r| Ok((col(r, 0)?, col(r, 1)?, col(r, 2)?, col(r, 3)?)))
        .collect()
}

pub(crate) async fn claim(inner: &Inner, p: ClaimParams) -> Result<Vec<Arc<ClaimedDelivery>>> {
    if p.limit == 0 {
        return Ok(Vec::new());
    }
    let generation = inner.contexts.generation();
    let mut client = inner.client().await?;
    // Most claims on a busy fleet find nothing for this node: find that out without a lock,
    // in the transaction the claim then runs in. (Whatever the peek saw may be gone by the
    // claim; the claim decides.)
    let peek = client.prepare_cached(&peek_sql()).await.map_err(backend)?;
    let node: &str = &p.node;
    let tx = client.transaction().await.map_err(backend)?;
    let rows = look(&tx, &peek, node, p.horizon, p.now).await?;
    // The batcher's share of the database's commits follows the fleet's size.
    if let Some(live) = rows.iter().map(|r| r.3).max() {
        let live = u32::try_from(live).unwrap_or(u32::MAX).max(1);
        inner.live_nodes.store(live, Ordering::Relaxed);
    }
    let plan = plan(node, &rows);
    if plan.endpoints.is_empty() && !plan.endpointless {
        tx.commit().await.map_err(backend)?;
        inner.idle_claims.fetch_add(1, Ordering::Relaxed);
        return Ok(Vec::new());
    }
    let tx = if plan.unrowed.is_empty() {
        tx
    } else {
        tx.commit().await.map_err(backend)?;
        // A new endpoint's holder row, made once, in a statement of its own (sorted: two
        // nodes adding the same rows wait for each other instead of deadlocking), and not
        // for an endpoint deleted since the peek (its deletion deleted its row).
        let add = client
            .prepare_cached(
                "INSERT INTO endpoint_holders (endpoint_id)
                 SELECT e.id FROM endpoints e WHERE e.id = ANY($1::text[]) AND NOT e.deleted
                 ORDER BY e.id
                 ON CONFLICT (endpoint_id) DO NOTHING",
            )
            .await
            .map_err(backend)?;
        client
            .execute(&add, &[&plan.unrowed])
            .await
            .map_err(backend)?;
        client.transaction().await.map_err(backend)?
    };
    let endpoints: Vec<&str> = plan.endpoints.iter().map(String::as_str).collect();
    let jobs = claim_in(
        inner,
        generation,
        &tx,
        &p.node,
        p.now,
        p.horizon,
        p.limit,
        &endpoints,
        plan.endpointless,
        None,
    )
    .await?;
    tx.commit().await.map_err(backend)?;
    if jobs.is_empty() {
        inner.idle_claims.fetch_add(1, Ordering::Relaxed);
    } else {
        inner.idle_claims.store(0, Ordering::Relaxed);
    }
    inner.contexts.refresh(&client, jobs, generation).await
}

/// True when this outcome ends an ordered delivery, so that completing it also claims the
/// successor (under its endpoint's holder row, so never inside a group commit).
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
        (Some(key), true) => {
            let endpoint = job.endpoint.as_ref().map(|e| e.id.as_str());
            claim_in(
                inner,
                generation,
                tx,
                node,
                p.now,
                p.horizon,
                1,
                endpoint.as_slice(),
                endpoint.is_none(),
                Some(key),
            )
            .await?
            .pop()
        }
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
    tx: &impl GenericClient,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn row(
        e: Option<&str>,
        state: &str,
        has_row: bool,
        live: i64,
    ) -> (Option<String>, String, bool, i64) {
        (e.map(String::from), state.to_string(), has_row, live)
    }

    #[test]
    fn a_plan_keeps_its_own_endpoints_and_takes_free_ones_up_to_its_fair_share() {
        let rows = [
            row(Some("ep_a"), "mine", true, 2),
            row(Some("ep_b"), "free", true, 2),
            row(Some("ep_c"), "free", false, 2),
            row(Some("ep_d"), "other", true, 2),
        ];
        // Four endpoints with work over two live nodes: two each.
        let p = plan("n1", &rows);
        assert_eq!(p.endpoints.len(), 2, "{p:?}");
        assert!(p.endpoints.contains(&"ep_a".to_string()), "its own first");
        assert!(
            !p.endpoints.contains(&"ep_d".to_string()),
            "never another's"
        );
        assert_eq!(
            p.unrowed,
            p.endpoints
                .iter()
                .filter(|e| *e == "ep_c")
                .cloned()
                .collect::<Vec<_>>()
        );
        assert!(!p.endpointless);
    }

    #[test]
    fn a_plan_above_its_share_keeps_only_its_share_of_its_own_endpoints() {
        let rows = [
            row(Some("ep_a"), "mine", true, 3),
            row(Some("ep_b"), "mine", true, 3),
            row(Some("ep_c"), "mine", true, 3),
        ];
        assert_eq!(plan("n1", &rows).endpoints, vec!["ep_a".to_string()]);
    }

    #[test]
    fn a_plan_with_every_endpoint_held_elsewhere_claims_only_work_without_an_endpoint() {
        let rows = [
            row(Some("ep_a"), "other", true, 3),
            row(None, "free", true, 0),
        ];
        let p = plan("n1", &rows);
        assert!(p.endpoints.is_empty());
        assert!(p.endpointless);
        assert_eq!(plan("n1", &rows[..1]), Plan::default());
        let none = [
            row(Some("ep_a"), "other", true, 3),
            row(None, "none", true, 3),
        ];
        assert_eq!(plan("n1", &none), Plan::default());
    }

    #[test]
    fn nodes_starting_together_reach_for_free_endpoints_in_different_orders() {
        let rows: Vec<_> = (0..8)
            .map(|i| row(Some(&format!("ep_{i}")), "free", true, 8))
            .collect();
        let picks: HashSet<Vec<String>> = (0..8)
            .map(|n| plan(&format!("node_{n}"), &rows).endpoints)
            .collect();
        assert!(picks.iter().all(|p| p.len() == 1));
        assert!(picks.len() > 1, "eight nodes all picked {picks:?}");
    }

    #[tokio::test]
    async fn a_claim_runs_on_the_generic_plan_and_leaves_the_session_as_it_was() {
        let store = crate::testing::store().await;
        let inner = &store.inner;
        let mut client = inner.client().await.expect("client");
        for _ in 0..3 {
            let tx = client.transaction().await.expect("begin");
            let jobs = claim_in(
                inner,
                inner.contexts.generation(),
                &tx,
                "node_test",
                UnixMillis::new(1_000),
                UnixMillis::new(1_000),
                10,
                &["ep_none"],
                true,
                None,
            )
            .await
            .expect("claim");
            assert!(jobs.is_empty());
            tx.commit().await.expect("commit");
        }
        three_generic_runs_then_as_it_was(&client, "%WITH ok AS%", "claim").await;
    }

    #[tokio::test]
    async fn the_peek_runs_on_the_generic_plan_and_leaves_the_session_as_it_was() {
        let store = crate::testing::store().await;
        let mut client = store.inner.client().await.expect("client");
        let peek = client.prepare_cached(&peek_sql()).await.expect("prepare");
        for i in 0..3 {
            let tx = client.transaction().await.expect("begin");
            let now = UnixMillis::new(1_000 + i);
            let rows = look(&tx, &peek, "node_test", now, now).await.expect("peek");
            assert_eq!(rows.len(), 1, "only the last row: {rows:?}");
            assert_eq!((rows[0].0.as_deref(), rows[0].1.as_str()), (None, "none"));
            tx.commit().await.expect("commit");
        }
        three_generic_runs_then_as_it_was(&client, "%WITH RECURSIVE pend%", "peek").await;
    }

    /// A database just migrated: the outcome batch's generic plan (which PostgreSQL keeps
    /// once it takes it, however the table grows) finds each delivery by its key. With
    /// sequential scans allowed it read the whole table instead (measured on the e2e bench:
    /// 433 pages and 4 ms to update 32 deliveries).
    #[tokio::test]
    async fn an_outcome_batchs_generic_plan_finds_deliveries_by_key_on_a_young_table() {
        let store = crate::testing::store().await;
        let c = store.inner.client().await.expect("client");
        c.batch_execute(&format!(
            "PREPARE outcomes AS {COMPLETE_MANY}; SET plan_cache_mode = force_generic_plan"
        ))
        .await
        .expect("prepare");
        let nulls = vec!["NULL"; 14].join(", ");
        let plan = crate::testing::lines(
            &c,
            &format!("EXPLAIN (COSTS OFF) EXECUTE outcomes({nulls})"),
        )
        .await;
        c.batch_execute("DEALLOCATE outcomes; RESET plan_cache_mode")
            .await
            .expect("clean up");
        let plan = plan.join("\n");
        assert!(!plan.contains("Seq Scan on deliveries"), "{plan}");
        assert!(
            plan.contains("using deliveries_pkey on deliveries"),
            "{plan}"
        );
    }

    /// The statement `LIKE pattern` (a `what`) ran three times, each on its generic plan,
    /// and [`CLAIM_PLANS`] ended with each transaction.
    async fn three_generic_runs_then_as_it_was(
        client: &deadpool_postgres::Object,
        pattern: &str,
        what: &str,
    ) {
        let (runs, mode) = crate::testing::plans(client, pattern).await;
        assert_eq!(runs, (3, 0), "each {what} ran the generic plan");
        assert_eq!(mode, "auto", "SET LOCAL ended with the {what}");
        assert_eq!(
            crate::testing::show(client, "enable_bitmapscan").await,
            "on"
        );
    }

    /// The shared buffers one peek of node `node` at `now` touches, run as [`look`] runs it
    /// (in a transaction, after [`CLAIM_PLANS`]), read from `EXPLAIN (ANALYZE, BUFFERS)`;
    /// and its rows as (endpoint, state).
    async fn peek_buffers(
        client: &mut deadpool_postgres::Object,
        node: &str,
        now: i64,
    ) -> (u64, Vec<(Option<String>, String)>) {
        let tx = client.transaction().await.expect("begin");
        tx.batch_execute(CLAIM_PLANS).await.expect("settings");
        let plan = crate::testing::lines(
            &tx,
            &format!("EXPLAIN (ANALYZE, BUFFERS) EXECUTE peek('{node}', {now}, {now})"),
        )
        .await;
        let rows = tx
            .query(&format!("EXECUTE peek('{node}', {now}, {now})"), &[])
            .await
            .expect("peek")
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        tx.commit().await.expect("commit");
        // The first `Buffers:` line is the top node's, which counts every node under it.
        let line = plan
            .iter()
            .find(|l| l.trim_start().starts_with("Buffers:"))
            .unwrap_or_else(|| panic!("no buffers in\n{}", plan.join("\n")));
        let count = |what: &str| -> u64 {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(what))
                .map_or(0, |n| n.parse().expect("a count"))
        };
        (count("hit=") + count("read="), rows)
    }

    #[tokio::test]
    async fn a_repeated_peek_steps_over_what_another_nodes_finished_deliveries_left() {
        let store = crate::testing::store().await;
        let mut client = store.inner.client().await.expect("client");
        client
            .batch_execute(&format!(
                "PREPARE peek(text, bigint, bigint) AS {}",
                peek_sql()
            ))
            .await
            .expect("prepare");
        // The peek's generic plan is made on its first run, here on a young table of 600
        // deliveries, 60 of them held: its probe of another node's held work is then a
        // bitmap scan unless bitmap scans are off.
        for sql in [
            "INSERT INTO nodes (id, lease_until) VALUES ('node_a', 9000000000000),
                                                       ('node_b', 9000000000000)",
            "INSERT INTO endpoint_holders (endpoint_id, node_id) VALUES ('ep_1', 'node_b')",
            "INSERT INTO deliveries (id, notification_seq, app_id, endpoint_id, url, notify_id,
                                     status, attempts, next_at, created_at, updated_at,
                                     locked_by)
             SELECT 'dlv_y' || i, 100000 + i, 'app_1', 'ep_' || (i % 6), 'http://127.0.0.1:9/',
                    'msg_y' || i, CASE WHEN i % 10 = 0 THEN 'pending' ELSE 'succeeded' END, 0,
                    CASE WHEN i % 10 = 0 THEN i END, i, i,
                    CASE WHEN i % 10 = 0 THEN 'node_' || (i % 3) END
             FROM generate_series(1, 600) AS i",
            "ANALYZE deliveries",
        ] {
            client.batch_execute(sql).await.expect("a young table");
        }
        peek_buffers(&mut client, "node_a", 1_000).await;
        // Then node_b held and finished 20,000 deliveries of ep_1: each left a version
        // behind, and an entry for it in `deliveries_held_by_node`, until a vacuum. It
        // still holds one; one more waits unheld.
        for sql in [
            "INSERT INTO deliveries (id, notification_seq, app_id, endpoint_id, url, notify_id,
                                     status, attempts, next_at, created_at, updated_at,
                                     locked_by)
             SELECT 'dlv_' || i, i, 'app_1', 'ep_1', 'http://127.0.0.1:9/', 'msg_' || i,
                    'pending', 0, i, i, i, 'node_b'
             FROM generate_series(1, 20000) AS i",
            "UPDATE deliveries SET status = 'succeeded', attempts = 1, next_at = NULL,
                                   locked_by = NULL
             WHERE locked_by = 'node_b'",
            "INSERT INTO deliveries (id, notification_seq, app_id, endpoint_id, url, notify_id,
                                     status, attempts, next_at, created_at, updated_at,
                                     locked_by)
             VALUES ('dlv_held', 20001, 'app_1', 'ep_1', 'http://127.0.0.1:9/', 'msg_held',
                     'pending', 0, 1, 1, 1, 'node_b'),
                    ('dlv_waits', 20002, 'app_1', 'ep_1', 'http://127.0.0.1:9/', 'msg_waits',
                     'pending', 0, 1, 1, 1, NULL)",
        ] {
            client.batch_execute(sql).await.expect("setup");
        }
        let other = (Some("ep_1".to_string()), "other".to_string());
        let (first, rows) = peek_buffers(&mut client, "node_a", 1_000).await;
        assert_eq!(rows.first(), Some(&other), "{rows:?}");
        // A bitmap scan reads the heap page of each of the 20,000 entries on every peek
        // (about 400 pages each time); an index scan marks them dead once their versions
        // are dead to every transaction (other tests' transactions in this cluster can
        // delay that a little), and later peeks step over them.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let mut reads = Vec::new();
        loop {
            let (again, rows) = peek_buffers(&mut client, "node_a", 1_000).await;
            assert_eq!(rows.first(), Some(&other), "{rows:?}");
            reads.push(again);
            if again * 10 < first {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the first peek read {first} buffers, the {} after it over 20 s at least {}",
                reads.len(),
                reads.iter().min().unwrap_or(&0)
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// The plan PostgreSQL makes for `sql` (prepared with `types`, run with `args`) under
    /// `mode`, on a database whose statistics say `deliveries` is large and mostly done.
    async fn plan_on_a_large_table(sql: &str, types: &str, args: &str, mode: &str) -> String {
        let url = herald_pgtest::database();
        let store = crate::PgStore::connect(&url).await.expect("store");
        let client = store.inner.client().await.expect("client");
        client
            .batch_execute(
                "INSERT INTO deliveries (id, notification_seq, app_id, endpoint_id, url,
                                         notify_id, status, attempts, next_at, created_at,
                                         updated_at)
                 SELECT 'dlv_' || i, i, 'app_1', 'ep_' || (i % 7), 'http://127.0.0.1:9/',
                        'msg_' || i, CASE WHEN i % 50 = 0 THEN 'pending' ELSE 'succeeded' END,
                        1, CASE WHEN i % 50 = 0 THEN i END, i, i
                 FROM generate_series(1, 100000) AS i;
                 UPDATE deliveries SET locked_by = 'node_b' WHERE seq % 100 = 0;
                 ANALYZE deliveries;",
            )
            .await
            .expect("a large table");
        client
            .batch_execute(&format!(
                "SET plan_cache_mode = {mode}; PREPARE s({types}) AS {sql}"
            ))
            .await
            .expect("prepare");
        client
            .query(&format!("EXPLAIN (COSTS OFF) EXECUTE s({args})"), &[])
            .await
            .expect("explain")
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[tokio::test]
    async fn the_peek_probes_each_endpoint_instead_of_hashing_the_whole_table() {
        for mode in ["force_generic_plan", "force_custom_plan"] {
            let plan = plan_on_a_large_table(
                &peek_sql(),
                "text, bigint, bigint",
                "'node_a', 100000, 100000",
                mode,
            )
            .await;
            assert!(!plan.contains("hashed SubPlan"), "{mode}:\n{plan}");
            assert!(!plan.contains("Seq Scan on deliveries"), "{mode}:\n{plan}");
        }
    }
}
