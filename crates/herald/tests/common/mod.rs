//! Test harness: the real server on a random port with a fresh database, real HTTP
//! receivers whose behaviour each test scripts, and a small API client.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use herald_engine::{EngineConfig, TargetPolicy};
use herald_server::server::{self, Database, Running, ServerOptions};
use herald_store_sqlite::Durability;
use serde_json::{json, Value};

pub const TOKEN: &str = "test-admin-token";
pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

pub struct TestServer {
    pub running: Option<Running>,
    pub base: String,
    pub db: PathBuf,
    pub client: reqwest::Client,
    _dir: Option<tempfile::TempDir>,
}

pub fn engine_config(allow_private: bool) -> EngineConfig {
    EngineConfig {
        target_policy: Arc::new(TargetPolicy {
            allow_private,
            allow: vec![],
        }),
        shutdown_grace: Duration::from_millis(200),
        ..EngineConfig::default()
    }
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(engine_config(true)).await
    }

    pub async fn start_with(engine: EngineConfig) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("herald.db");
        let mut s = Self::start_on(db, engine).await;
        s._dir = Some(dir);
        s
    }

    pub async fn start_on(db: PathBuf, engine: EngineConfig) -> TestServer {
        Self::launch(db, engine, None, reqwest::Client::new()).await
    }

    /// A server with the payment sandbox mounted, on a fresh database; its client does not
    /// follow redirects (checkout forms answer 303 to the return_url).
    pub async fn start_sandbox(sandbox: herald_server::sandbox::SandboxOptions) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        let db = dir.path().join("herald.db");
        let mut s = Self::launch(db, engine_config(true), Some(sandbox), client).await;
        s._dir = Some(dir);
        s
    }

    /// A server on `db` whose apps' credentials are sealed with `sealer`; the start's error
    /// as is.
    pub async fn try_start_sealed(
        db: PathBuf,
        sealer: herald_store::Sealer,
    ) -> Result<TestServer, server::ServerError> {
        Self::try_launch(
            db,
            engine_config(true),
            None,
            reqwest::Client::new(),
            sealer,
        )
        .await
    }

    async fn launch(
        db: PathBuf,
        engine: EngineConfig,
        sandbox: Option<herald_server::sandbox::SandboxOptions>,
        client: reqwest::Client,
    ) -> TestServer {
        match Self::try_launch(db, engine, sandbox, client, Default::default()).await {
            Ok(s) => s,
            Err(e) => panic!("server starts: {e}"),
        }
    }

    async fn try_launch(
        db: PathBuf,
        engine: EngineConfig,
        sandbox: Option<herald_server::sandbox::SandboxOptions>,
        client: reqwest::Client,
        sealer: herald_store::Sealer,
    ) -> Result<TestServer, server::ServerError> {
        let running = server::start(
            ServerOptions {
                database: Database::Sqlite(db.clone()),
                listen: "127.0.0.1:0".parse().unwrap(),
                admin_token: Some(TOKEN.into()),
                engine,
                durability: Durability::Normal,
                sandbox,
                http: Default::default(),
                sealer,
                retention: None,
            },
            std::future::pending(),
        )
        .await?;
        Ok(TestServer {
            base: format!("http://{}", running.addr),
            running: Some(running),
            db,
            client,
            _dir: None,
        })
    }

    /// A server on the PostgreSQL database at `url` (several may share one, as nodes do).
    pub async fn start_postgres(url: &str) -> TestServer {
        let running = server::start(
            ServerOptions {
                database: Database::Postgres(url.to_string()),
                listen: "127.0.0.1:0".parse().unwrap(),
                admin_token: Some(TOKEN.into()),
                engine: engine_config(true),
                durability: Durability::Normal,
                sandbox: None,
                http: Default::default(),
                sealer: Default::default(),
                retention: None,
            },
            std::future::pending(),
        )
        .await
        .unwrap_or_else(|e| panic!("server starts on PostgreSQL: {e}"));
        TestServer {
            base: format!("http://{}", running.addr),
            running: Some(running),
            db: PathBuf::new(),
            client: reqwest::Client::new(),
            _dir: None,
        }
    }

    /// Stops the server and returns its (kept) database directory.
    pub async fn stop(mut self) -> (PathBuf, Option<tempfile::TempDir>) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
        (self.db.clone(), self._dir.take())
    }

    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call_raw(
            method,
            path,
            body.map(|b| b.to_string().into_bytes()),
            Some(TOKEN),
            &[],
        )
        .await
    }

    pub async fn call_raw(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        token: Option<&str>,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let (status, _, v) = self.call_full(method, path, body, token, headers).await;
        (status, v)
    }

    pub async fn call_full(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        token: Option<&str>,
        headers: &[(&str, &str)],
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut req = self
            .client
            .request(method.parse().unwrap(), format!("{}{}", self.base, path))
            .header("content-type", "application/json");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.expect("body");
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        (status, headers, v)
    }

    /// Creates an app with the well-known test secret and returns its id.
    pub async fn app(&self, extra: Value) -> String {
        let mut body = json!({"name": "shop", "credentials": {"secret": SECRET}});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                b.insert(k.clone(), v.clone());
            }
        }
        let (status, v) = self.call("POST", "/v1/apps", Some(body)).await;
        assert_eq!(status, 201, "{v}");
        v["id"].as_str().unwrap().to_string()
    }

    pub async fn endpoint(&self, app: &str, body: Value) -> String {
        let (status, v) = self
            .call("POST", &format!("/v1/apps/{app}/endpoints"), Some(body))
            .await;
        assert_eq!(status, 201, "{v}");
        v["id"].as_str().unwrap().to_string()
    }

    pub async fn notify(&self, app: &str, body: Value) -> Value {
        let (status, v) = self
            .call("POST", &format!("/v1/apps/{app}/notifications"), Some(body))
            .await;
        assert_eq!(status, 202, "{v}");
        v
    }

    pub async fn notification(&self, id: &str) -> Value {
        let (status, v) = self
            .call("GET", &format!("/v1/notifications/{id}"), None)
            .await;
        assert_eq!(status, 200, "{v}");
        v
    }

    /// Polls a notification until `pred` holds (or panics after 20 s with the last state).
    pub async fn wait_for(&self, id: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let v = self.notification(id).await;
            if pred(&v) {
                return v;
            }
            if Instant::now() > deadline {
                panic!("condition not reached; last state: {v:#}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn wait_status(&self, id: &str, status: &str) -> Value {
        self.wait_for(id, |v| v["status"] == status).await
    }
}

/// One request a receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// What a receiver answers to its n-th request (0-based).
#[derive(Clone)]
pub enum Reply {
    Status(u16, &'static str),
    StatusWithHeader(u16, &'static str, &'static str, &'static str),
    Hang,
}

type Script = Arc<dyn Fn(usize, &Received) -> Reply + Send + Sync>;

#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    pub got: Arc<Mutex<Vec<Received>>>,
    script: Arc<Mutex<Script>>,
    pub in_flight: Arc<Mutex<(usize, usize)>>, // (current, max)
}

impl Receiver {
    pub async fn start(
        script: impl Fn(usize, &Received) -> Reply + Send + Sync + 'static,
    ) -> Receiver {
        Self::start_on("127.0.0.1:0".parse().unwrap(), script).await
    }

    pub async fn start_on(
        addr: SocketAddr,
        script: impl Fn(usize, &Received) -> Reply + Send + Sync + 'static,
    ) -> Receiver {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind receiver");
        let r = Receiver {
            addr: listener.local_addr().unwrap(),
            got: Arc::new(Mutex::new(Vec::new())),
            script: Arc::new(Mutex::new(Arc::new(script))),
            in_flight: Arc::new(Mutex::new((0, 0))),
        };
        let app = axum::Router::new().fallback(handle).with_state(r.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        r
    }

    pub fn ok() -> impl Fn(usize, &Received) -> Reply + Send + Sync + 'static {
        |_, _| Reply::Status(204, "")
    }

    pub fn set_script(&self, script: impl Fn(usize, &Received) -> Reply + Send + Sync + 'static) {
        *self.script.lock().unwrap() = Arc::new(script);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.got.lock().unwrap().len()
    }

    /// Waits until at least `n` requests arrived (panics after 20 s).
    pub async fn wait_count(&self, n: usize) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            if Instant::now() > deadline {
                panic!("receiver got {} requests, expected {n}", got.len());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn handle(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> Response {
    let rec = Received {
        headers,
        body,
        at: Instant::now(),
    };
    let n = {
        let mut got = r.got.lock().unwrap();
        got.push(rec.clone());
        got.len() - 1
    };
    {
        let mut f = r.in_flight.lock().unwrap();
        f.0 += 1;
        f.1 = f.1.max(f.0);
    }
    let script = r.script.lock().unwrap().clone();
    let reply = script(n, &rec);
    let resp = match reply {
        Reply::Status(s, body) => (StatusCode::from_u16(s).unwrap(), body).into_response(),
        Reply::StatusWithHeader(s, body, k, v) => {
            (StatusCode::from_u16(s).unwrap(), [(k, v)], body).into_response()
        }
        Reply::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            StatusCode::OK.into_response()
        }
    };
    r.in_flight.lock().unwrap().0 -= 1;
    resp
}
