//! The writer's sources (the inbound gateway): a source is created with its internal app and
//! destination endpoint inside one operation's savepoint, so all three commit or none does;
//! deleting one marks it deleted and deletes its endpoint (canceling pending forwards) in
//! one operation too.
use rusqlite::params;
use ulid::Ulid;

use super::Writer;
use crate::rows;
use crate::schema::backend;
use herald_store::model::*;
use herald_store::queue::Hint;
use herald_store::Result;

impl Writer {
    pub(super) fn create_source(&mut self, new: NewSource) -> Result<Source> {
        let app = self.create_app(new.app)?;
        self.conn
            .execute(
                "UPDATE apps SET internal = ?2 WHERE id = ?1",
                params![app.id, herald_store::ops_outbox::INTERNAL_SOURCE],
            )
            .map_err(backend)?;
        let mut destination = new.destination;
        destination.app_id = app.id.clone();
        let now = destination.now;
        let endpoint = self.create_endpoint(destination)?;
        let source = Source {
            id: format!("src_{}", Ulid::new()),
            name: new.name,
            profile: new.profile,
            keys: new.keys,
            expect_app_id: new.expect_app_id,
            expect_merchant_id: new.expect_merchant_id,
            format: new.format,
            app_id: app.id,
            endpoint_id: endpoint.id,
            created_at: now,
        };
        let keys = self.sealer.seal_source_keys(&source.id, &source.keys)?;
        self.conn
            .execute(
                "INSERT INTO sources (id, name, profile, keys, expect_app_id, expect_merchant_id,
                                      format, app_id, endpoint_id, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    source.id,
                    source.name,
                    source.profile,
                    keys,
                    source.expect_app_id,
                    source.expect_merchant_id,
                    source.format.as_str(),
                    source.app_id,
                    source.endpoint_id,
                    source.created_at
                ],
            )
            .map_err(backend)?;
        Ok(source)
    }

    pub(super) fn delete_source(
        &mut self,
        id: &str,
        now: UnixMillis,
        hints: &mut Vec<Hint>,
    ) -> Result<bool> {
        let Some(source) = rows::get_source(&self.conn, &self.sealer, id)? else {
            return Ok(false);
        };
        self.conn
            .execute("UPDATE sources SET deleted = 1 WHERE id = ?1", params![id])
            .map_err(backend)?;
        self.delete_endpoint(&source.app_id, &source.endpoint_id, now, hints)?;
        Ok(true)
    }
}
