//! The writer's apps and endpoints, and the caches of their settings that jobs are built
//! from. A change is announced to the engines as a hint after the commit.
use std::sync::Arc;

use herald_protocols::Credentials;
use rusqlite::params;
use ulid::Ulid;

use super::Writer;
use crate::rows::{self, opt_json};
use crate::schema::backend;
use herald_store::health::EndpointHealth;
use herald_store::model::*;
use herald_store::queue::Hint;
use herald_store::{Result, SealCensus, StoreError};

impl Writer {
    // --- caches -------------------------------------------------------------------------

    pub(super) fn app_ctx(&mut self, id: &str) -> Result<Option<Arc<AppCtx>>> {
        if let Some(ctx) = self.apps.get(id) {
            return Ok(Some(ctx.clone()));
        }
        let Some(app) = rows::get_app(&self.conn, &self.sealer, id)? else {
            return Ok(None);
        };
        let ctx = Arc::new(AppCtx::from_app(&app));
        self.apps.insert(id.to_string(), ctx.clone());
        Ok(Some(ctx))
    }

    pub(super) fn endpoint_ctx(&mut self, id: &str) -> Result<Option<Arc<EndpointCtx>>> {
        if let Some(ctx) = self.endpoints.get(id) {
            return Ok(Some(ctx.clone()));
        }
        let Some(ep) = rows::get_endpoint_by_id(&self.conn, id)? else {
            return Ok(None);
        };
        let ctx = Arc::new(EndpointCtx::from_endpoint(&ep));
        self.endpoints.insert(id.to_string(), ctx.clone());
        Ok(Some(ctx))
    }

    pub(super) fn app_endpoints(&mut self, app_id: &str) -> Result<Vec<Arc<EndpointCtx>>> {
        if !self.endpoint_lists.contains_key(app_id) {
            let list = rows::list_endpoints(&self.conn, app_id)?;
            let ids = list.iter().map(|e| e.id.clone()).collect();
            for e in list {
                self.endpoints
                    .insert(e.id.clone(), Arc::new(EndpointCtx::from_endpoint(&e)));
            }
            self.endpoint_lists.insert(app_id.to_string(), ids);
        }
        let ids = self.endpoint_lists.get(app_id).cloned().unwrap_or_default();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(ctx) = self.endpoint_ctx(&id)? {
                out.push(ctx);
            }
        }
        Ok(out)
    }

    pub(super) fn cache_endpoint(&mut self, ep: &Endpoint) -> Arc<EndpointCtx> {
        let ctx = Arc::new(EndpointCtx::from_endpoint(ep));
        self.endpoints.insert(ep.id.clone(), ctx.clone());
        if let Some(list) = self.endpoint_lists.get_mut(&ep.app_id) {
            if !list.contains(&ep.id) {
                list.push(ep.id.clone());
            }
        }
        ctx
    }

    // --- apps and endpoints --------------------------------------------------------------

    pub(super) fn create_app(&mut self, new: NewApp) -> Result<App> {
        let app = App {
            id: format!("app_{}", Ulid::new()),
            name: new.name,
            profile: new.profile,
            retry: new.retry,
            ack: new.ack,
            credentials: new.credentials,
            created_at: new.now,
        };
        let credentials = self.sealer.seal_credentials(&app.id, &app.credentials)?;
        self.conn
            .prepare_cached(
                "INSERT INTO apps (id, name, profile, retry, ack, credentials, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    app.id,
                    app.name,
                    app.profile.name(),
                    opt_json(&app.retry).ok().flatten(),
                    opt_json(&app.ack).ok().flatten(),
                    credentials,
                    app.created_at
                ])
            })
            .map_err(backend)?;
        self.apps
            .insert(app.id.clone(), Arc::new(AppCtx::from_app(&app)));
        self.endpoint_lists.insert(app.id.clone(), Vec::new());
        Ok(app)
    }

    pub(super) fn set_credentials(
        &mut self,
        id: &str,
        creds: Credentials,
        hints: &mut Vec<Hint>,
    ) -> Result<Option<App>> {
        let sealed = self.sealer.seal_credentials(id, &creds)?;
        let n = self.overwriting_credentials(|conn| {
            conn.execute(
                "UPDATE apps SET credentials = ?2 WHERE id = ?1 AND deleted_at IS NULL",
                params![id, sealed],
            )
        })?;
        if n == 0 {
            return Ok(None);
        }
        let app =
            rows::get_app(&self.conn, &self.sealer, id)?.ok_or(StoreError::NotFound("app"))?;
        let ctx = Arc::new(AppCtx::from_app(&app));
        self.apps.insert(id.to_string(), ctx.clone());
        hints.push(Hint::AppChanged(ctx));
        Ok(Some(app))
    }

    pub(super) fn update_app(
        &mut self,
        id: &str,
        patch: AppPatch,
        hints: &mut Vec<Hint>,
    ) -> Result<Option<App>> {
        let Some(mut app) = rows::get_app(&self.conn, &self.sealer, id)? else {
            return Ok(None);
        };
        patch.apply(&mut app);
        self.conn
            .execute(
                "UPDATE apps SET name = ?2, retry = ?3, ack = ?4 WHERE id = ?1",
                params![id, app.name, opt_json(&app.retry)?, opt_json(&app.ack)?],
            )
            .map_err(backend)?;
        let ctx = Arc::new(AppCtx::from_app(&app));
        self.apps.insert(id.to_string(), ctx.clone());
        hints.push(Hint::AppChanged(ctx));
        Ok(Some(app))
    }

    /// Marks the app deleted, deletes its endpoints and keys, and cancels its pending
    /// deliveries (see `AdminStore::delete_app`).
    pub(super) fn delete_app(
        &mut self,
        id: &str,
        now: UnixMillis,
        hints: &mut Vec<Hint>,
    ) -> Result<Option<u64>> {
        let marked = self
            .conn
            .execute(
                "UPDATE apps SET deleted_at = ?2 WHERE id = ?1 AND deleted_at IS NULL",
                params![id, now],
            )
            .map_err(backend)?;
        if marked == 0 {
            return Ok(None);
        }
        // Its ops target's internal app goes with it (pending ops notifications canceled).
        let ops_app: Option<String> = self
            .conn
            .query_row("SELECT ops_app_id FROM apps WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .map_err(backend)?;
        if let Some(ops_app) = ops_app {
            self.delete_app(&ops_app, now, hints)?;
        }
        let endpoints = rows::list_endpoints(&self.conn, id)?;
        self.conn
            .execute(
                "UPDATE endpoints SET deleted = 1, updated_at = ?2 WHERE app_id = ?1 AND deleted = 0",
                params![id, now],
            )
            .map_err(backend)?;
        self.conn
            .execute("DELETE FROM api_keys WHERE app_id = ?1", [id])
            .map_err(backend)?;
        let canceled = {
            let mut stmt = self
                .conn
                .prepare_cached(
                    "UPDATE deliveries SET status = 'canceled', next_at = NULL, locked_by = NULL, updated_at = ?2
                     WHERE app_id = ?1 AND status = 'pending' RETURNING seq",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map(params![id, now], |r| r.get::<_, i64>(0))
                .map_err(backend)?;
            rows.collect::<rusqlite::Result<Vec<i64>>>()
                .map_err(backend)?
        };
        self.apps.remove(id);
        self.endpoint_lists.remove(id);
        for ep in &endpoints {
            self.endpoints.remove(&ep.id);
            let mut ctx = EndpointCtx::from_endpoint(ep);
            ctx.deleted = true;
            hints.push(Hint::EndpointChanged(Arc::new(ctx)));
        }
        let n = canceled.len() as u64;
        if !canceled.is_empty() {
            hints.push(Hint::Revoked(canceled));
        }
        Ok(Some(n))
    }

    // --- API keys ------------------------------------------------------------------------

    pub(super) fn create_api_key(&mut self, new: NewApiKey) -> Result<ApiKey> {
        if self.app_ctx(&new.app_id)?.is_none() {
            return Err(StoreError::NotFound("app"));
        }
        let key = ApiKey {
            id: format!("key_{}", Ulid::new()),
            app_id: new.app_id,
            prefix: new.prefix,
            created_at: new.now,
            last_used_at: None,
        };
        self.conn
            .execute(
                "INSERT INTO api_keys (id, app_id, prefix, key_sha256, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    key.id,
                    key.app_id,
                    key.prefix,
                    new.key_sha256,
                    key.created_at
                ],
            )
            .map_err(|e| match e {
                rusqlite::Error::SqliteFailure(f, _)
                    if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    StoreError::Conflict("this API key is already stored".into())
                }
                other => backend(other),
            })?;
        Ok(key)
    }

    pub(super) fn delete_api_key(&mut self, app_id: &str, id: &str) -> Result<bool> {
        let n = self
            .conn
            .execute(
                "DELETE FROM api_keys WHERE app_id = ?1 AND id = ?2",
                [app_id, id],
            )
            .map_err(backend)?;
        Ok(n > 0)
    }

    pub(super) fn touch_api_key(&mut self, id: &str, now: UnixMillis) -> Result<()> {
        self.conn
            .prepare_cached(
                "UPDATE api_keys SET last_used_at = ?2
                 WHERE id = ?1 AND (last_used_at IS NULL OR last_used_at < ?2)",
            )
            .and_then(|mut s| s.execute(params![id, now]))
            .map_err(backend)?;
        Ok(())
    }

    /// Rewrites every app's credentials not sealed under the sealing key (see
    /// `AdminStore::reseal_credentials`). The caches hold opened credentials, which do not
    /// change.
    pub(super) fn reseal_credentials(&mut self) -> Result<SealCensus> {
        let mut census = SealCensus::default();
        let mut rewrites = Vec::new();
        for (id, stored) in rows::stored_credentials(&self.conn)? {
            if let Some(sealed) = self.sealer.reseal(&id, &stored, &mut census)? {
                rewrites.push((id, sealed));
            }
        }
        let mut source_rewrites = Vec::new();
        for (id, stored) in rows::stored_source_keys(&self.conn)? {
            if let Some(sealed) = self.sealer.reseal(&id, &stored, &mut census)? {
                source_rewrites.push((id, sealed));
            }
        }
        self.overwriting_credentials(|conn| {
            for (id, sealed) in &rewrites {
                conn.execute(
                    "UPDATE apps SET credentials = ?2 WHERE id = ?1",
                    params![id, sealed],
                )?;
            }
            for (id, sealed) in &source_rewrites {
                conn.execute(
                    "UPDATE sources SET keys = ?2 WHERE id = ?1",
                    params![id, sealed],
                )?;
            }
            Ok(())
        })?;
        census.resealed = (rewrites.len() + source_rewrites.len()) as u64;
        Ok(census)
    }

    /// Runs `f` with SQLite's `secure_delete` on, so the credentials it replaces (plaintext,
    /// or sealed under a key being retired) are zeroed in the file rather than left in free
    /// space.
    fn overwriting_credentials<T>(
        &self,
        f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T>,
    ) -> Result<T> {
        self.conn
            .pragma_update(None, "secure_delete", true)
            .map_err(backend)?;
        let out = f(&self.conn);
        let off = self.conn.pragma_update(None, "secure_delete", false);
        let out = out.map_err(backend)?;
        off.map_err(backend)?;
        Ok(out)
    }

    pub(super) fn create_endpoint(&mut self, new: NewEndpoint) -> Result<Endpoint> {
        if self.app_ctx(&new.app_id)?.is_none() {
            return Err(StoreError::NotFound("app"));
        }
        let ep = Endpoint {
            id: format!("ep_{}", Ulid::new()),
            app_id: new.app_id,
            url: new.url,
            event_types: new.event_types,
            retry: new.retry,
            ack: new.ack,
            max_in_flight: new.max_in_flight,
            ordered: new.ordered,
            enabled: new.enabled,
            timeout_ms: new.timeout_ms,
            created_at: new.now,
            updated_at: new.now,
            health: EndpointHealth::default(),
        };
        self.write_endpoint(&ep, true)?;
        // Make sure the app's list is complete before adding to it.
        self.app_endpoints(&ep.app_id)?;
        self.cache_endpoint(&ep);
        Ok(ep)
    }

    pub(super) fn write_endpoint(&self, ep: &Endpoint, insert: bool) -> Result<()> {
        let sql = if insert {
            "INSERT INTO endpoints (id, app_id, url, event_types, retry, ack, max_in_flight, ordered, enabled, created_at, updated_at, timeout_ms,
                health_state, health_failures, health_failing_since, health_last_success_at, health_last_failure_at,
                breaker_open_until, breaker_opened, disabled_reason, health_changed_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21)"
        } else {
            "UPDATE endpoints SET url = ?3, event_types = ?4, retry = ?5, ack = ?6, max_in_flight = ?7,
                ordered = ?8, enabled = ?9, updated_at = ?11, timeout_ms = ?12,
                health_state = ?13, health_failures = ?14, health_failing_since = ?15,
                health_last_success_at = ?16, health_last_failure_at = ?17, breaker_open_until = ?18,
                breaker_opened = ?19, disabled_reason = ?20, health_changed_at = ?21
             WHERE id = ?1 AND app_id = ?2"
        };
        let h = &ep.health;
        self.conn
            .prepare_cached(sql)
            .and_then(|mut s| {
                s.execute(params![
                    ep.id,
                    ep.app_id,
                    ep.url.as_str(),
                    opt_json(&ep.event_types).ok().flatten(),
                    opt_json(&ep.retry).ok().flatten(),
                    opt_json(&ep.ack).ok().flatten(),
                    ep.max_in_flight,
                    ep.ordered,
                    ep.enabled,
                    ep.created_at,
                    ep.updated_at,
                    ep.timeout_ms,
                    h.state.as_str(),
                    h.consecutive_failures,
                    h.failing_since,
                    h.last_success_at,
                    h.last_failure_at,
                    h.open_until,
                    h.times_opened,
                    h.disabled_reason,
                    h.changed_at
                ])
            })
            .map(|_| ())
            .map_err(backend)
    }

    pub(super) fn update_endpoint(
        &mut self,
        app_id: &str,
        id: &str,
        patch: EndpointPatch,
        now: UnixMillis,
        hints: &mut Vec<Hint>,
    ) -> Result<Option<Endpoint>> {
        let Some(mut ep) = rows::get_endpoint(&self.conn, app_id, id)? else {
            return Ok(None);
        };
        let was_blocked = ep.health.blocks(now);
        patch.apply(&mut ep, now);
        self.write_endpoint(&ep, false)?;
        let ctx = self.cache_endpoint(&ep);
        hints.push(Hint::EndpointChanged(ctx));
        if was_blocked && !ep.health.blocks(now) {
            hints.push(Hint::Work);
        }
        Ok(Some(ep))
    }

    pub(super) fn delete_endpoint(
        &mut self,
        app_id: &str,
        id: &str,
        now: UnixMillis,
        hints: &mut Vec<Hint>,
    ) -> Result<bool> {
        let Some(ep) = rows::get_endpoint(&self.conn, app_id, id)? else {
            return Ok(false);
        };
        self.conn
            .execute(
                "UPDATE endpoints SET deleted = 1, updated_at = ?2 WHERE id = ?1",
                params![id, now],
            )
            .map_err(backend)?;
        let canceled = {
            let mut stmt = self
                .conn
                .prepare_cached(
                    "UPDATE deliveries SET status = 'canceled', next_at = NULL, locked_by = NULL, updated_at = ?2
                     WHERE endpoint_id = ?1 AND status = 'pending' RETURNING seq",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map(params![id, now], |r| r.get::<_, i64>(0))
                .map_err(backend)?;
            rows.collect::<rusqlite::Result<Vec<i64>>>()
                .map_err(backend)?
        };
        self.endpoints.remove(id);
        if let Some(list) = self.endpoint_lists.get_mut(app_id) {
            list.retain(|e| e != id);
        }
        let mut ctx = EndpointCtx::from_endpoint(&ep);
        ctx.deleted = true;
        hints.push(Hint::EndpointChanged(Arc::new(ctx)));
        if !canceled.is_empty() {
            hints.push(Hint::Revoked(canceled));
        }
        Ok(true)
    }
}
