//! `herald listen`: a local receiver for development. It verifies Standard Webhooks
//! requests against the given keys, prints each one, and acknowledges it (or answers 401
//! with the reason when verification fails).
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use clap::Args;
use herald_protocols::standard_webhooks::{self as sw, VerifyKey};

#[derive(Args, Debug)]
pub struct ListenArgs {
    /// Port to listen on.
    #[arg(long, default_value_t = 9000)]
    pub port: u16,
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Verification key: whsec_ (HMAC), whpk_ (ed25519 public) or whsk_; repeatable, or
    /// comma-separated (any one matching is enough, as during key rotation).
    #[arg(
        long = "secret",
        env = "HERALD_SECRET",
        value_delimiter = ',',
        required = true,
        hide_env_values = true
    )]
    pub secrets: Vec<String>,
    /// Status to answer verified requests with (use a non-2xx one to watch retries).
    #[arg(long, default_value_t = 204)]
    pub status: u16,
}

/// What the receiver does with each request; `out` gets one printable report per request.
#[derive(Clone)]
pub struct Receiver {
    pub keys: Arc<Vec<VerifyKey>>,
    pub status: StatusCode,
    pub out: Arc<dyn Fn(String) + Send + Sync>,
}

pub fn router(receiver: Receiver) -> Router {
    Router::new().fallback(handle).with_state(receiver)
}

async fn handle(
    State(r): State<Receiver>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let id = header(sw::HEADER_ID);
    let now = herald_engine::now_ms() / 1000;
    match sw::verify(
        id,
        header(sw::HEADER_TIMESTAMP),
        header(sw::HEADER_SIGNATURE),
        &body,
        &r.keys,
        now,
    ) {
        Ok(()) => {
            let shown = match serde_json::from_slice::<serde_json::Value>(&body) {
                Ok(v) => serde_json::to_string_pretty(&v).unwrap_or_default(),
                Err(_) => String::from_utf8_lossy(&body).into_owned(),
            };
            (r.out)(format!(
                "verified {method} {uri}  webhook-id {id}  ({} bytes)\n{shown}",
                body.len()
            ));
            r.status.into_response()
        }
        Err(e) => {
            (r.out)(format!("invalid {method} {uri}  webhook-id {id:?}: {e}"));
            let body = serde_json::json!({"error": {"code": "invalid_signature", "message": e.to_string()}});
            (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response()
        }
    }
}

pub async fn run(args: ListenArgs) -> Result<(), String> {
    let keys = args
        .secrets
        .iter()
        .map(|s| VerifyKey::parse(s.trim()).map_err(|e| format!("--secret: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let status = StatusCode::from_u16(args.status)
        .map_err(|_| format!("--status {} is not an HTTP status", args.status))?;
    let addr = SocketAddr::new(args.host, args.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    println!("Listening on http://{addr}  (verifying Standard Webhooks with {} key(s), answering {status})", keys.len());
    let receiver = Receiver {
        keys: Arc::new(keys),
        status,
        out: Arc::new(|line| println!("{line}")),
    };
    axum::serve(listener, router(receiver))
        .with_graceful_shutdown(super::serve::shutdown_signal())
        .await
        .map_err(|e| e.to_string())
}
