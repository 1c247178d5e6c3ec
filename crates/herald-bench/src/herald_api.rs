//! Herald as a user runs it, for the scenarios that go through the HTTP API: the full
//! server (`server::start`: API and engine) on a fresh durable database, an app created
//! through the API with one endpoint subscribed, and the request every producer sends.
use anyhow::Context as _;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::fixture::{self, EVENT_TYPE, PAYLOAD};
use super::Plan;
use herald_server::server::{self, Database, Running, ServerOptions};

/// The admin token the bench's servers are started with.
pub const TOKEN: &str = "herald-bench-token";

/// A running Herald with one app whose one endpoint points at a sink.
pub struct Herald {
    pub running: Running,
    pub base: String,
    pub app_id: String,
    _dir: tempfile::TempDir,
}

impl Herald {
    /// Starts Herald on a fresh durable database and subscribes `endpoint_url` to a new
    /// standard-webhooks app, with room for `concurrency` attempts in flight. With
    /// `deliver` false the endpoint is disabled: notifications are accepted and stored, and
    /// nothing is sent.
    pub async fn start(
        plan: &Plan,
        client: &reqwest::Client,
        endpoint_url: &str,
        deliver: bool,
    ) -> anyhow::Result<Herald> {
        let dir = fixture::temp_dir(plan)?;
        let database = Database::Sqlite(dir.path().join("herald.db"));
        Herald::launch(plan, client, database, endpoint_url, deliver, None, dir).await
    }

    /// Starts a node on `database`: with `app_id`, one more node serving that app (on a
    /// shared PostgreSQL database); without, a new app with its endpoint.
    pub async fn start_on(
        plan: &Plan,
        client: &reqwest::Client,
        database: Database,
        endpoint_url: &str,
        app_id: Option<String>,
    ) -> anyhow::Result<Herald> {
        let dir = fixture::temp_dir(plan)?;
        Herald::launch(plan, client, database, endpoint_url, true, app_id, dir).await
    }

    async fn launch(
        plan: &Plan,
        client: &reqwest::Client,
        database: Database,
        endpoint_url: &str,
        deliver: bool,
        app_id: Option<String>,
        dir: tempfile::TempDir,
    ) -> anyhow::Result<Herald> {
        let running = server::start(
            ServerOptions {
                database,
                listen: ([127, 0, 0, 1], 0).into(),
                admin_token: Some(TOKEN.into()),
                engine: fixture::engine_config(plan.concurrency, Duration::from_secs(15)),
                sandbox: None,
                durability: herald_store_sqlite::Durability::Full,
                http: Default::default(),
                sealer: Default::default(),
                retention: None,
            },
            std::future::pending(),
        )
        .await
        .context("cannot start Herald")?;
        let base = format!("http://{}", running.addr);
        if let Some(app_id) = app_id {
            return Ok(Herald {
                running,
                base,
                app_id,
                _dir: dir,
            });
        }
        let app = call(
            client,
            &format!("{base}/v1/apps"),
            json!({"name": "bench", "profile": "standard-webhooks"}),
        )
        .await?;
        let app_id = app["id"]
            .as_str()
            .with_context(|| format!("creating the app answered {app}"))?
            .to_string();
        call(
            client,
            &format!("{base}/v1/apps/{app_id}/endpoints"),
            json!({"url": endpoint_url, "max_in_flight": plan.concurrency, "enabled": deliver}),
        )
        .await?;
        Ok(Herald {
            running,
            base,
            app_id,
            _dir: dir,
        })
    }

    /// Where notifications of the app are posted.
    pub fn notifications_url(&self) -> String {
        format!("{}/v1/apps/{}/notifications", self.base, self.app_id)
    }

    /// Creates one more app through this node, its one endpoint at `endpoint_url` with the
    /// same room as the first; returns the app's id.
    pub async fn add_app(
        &self,
        plan: &Plan,
        client: &reqwest::Client,
        endpoint_url: &str,
    ) -> anyhow::Result<String> {
        let app = call(
            client,
            &format!("{}/v1/apps", self.base),
            json!({"name": "bench", "profile": "standard-webhooks"}),
        )
        .await?;
        let app_id = app["id"]
            .as_str()
            .with_context(|| format!("creating the app answered {app}"))?
            .to_string();
        call(
            client,
            &format!("{}/v1/apps/{app_id}/endpoints", self.base),
            json!({"url": endpoint_url, "max_in_flight": plan.concurrency, "enabled": true}),
        )
        .await?;
        Ok(app_id)
    }

    /// Where notifications of `app_id` are posted on this node.
    pub fn notifications_url_of(&self, app_id: &str) -> String {
        format!("{}/v1/apps/{app_id}/notifications", self.base)
    }

    pub async fn stop(self) {
        self.running.shutdown().await;
    }
}

/// The body of every notification posted through the API (it goes to the app's endpoints).
pub fn notification_body() -> Arc<str> {
    format!(r#"{{"event_type":"{EVENT_TYPE}","payload":{PAYLOAD}}}"#).into()
}

/// The body of a notification sent to its own `notify_url` instead of the app's endpoints.
pub fn notification_body_to(notify_url: &str) -> Arc<str> {
    let url = serde_json::Value::from(notify_url);
    format!(r#"{{"event_type":"{EVENT_TYPE}","payload":{PAYLOAD},"notify_url":{url}}}"#).into()
}

/// A POST of `body` to `url` as a producer sends it (admin token, JSON).
pub fn post(client: &reqwest::Client, url: &str, body: &Arc<str>) -> reqwest::RequestBuilder {
    client
        .post(url)
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(body.to_string())
}

async fn call(client: &reqwest::Client, url: &str, body: Value) -> anyhow::Result<Value> {
    let resp = client
        .post(url)
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = resp.status();
    let bytes = resp
        .bytes()
        .await
        .with_context(|| format!("POST {url}: reading the answer"))?;
    let v: Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("POST {url}: the answer is not JSON"))?;
    if !status.is_success() {
        anyhow::bail!("POST {url} answered {status}: {v}");
    }
    Ok(v)
}
