//! `herald listen`: a local receiver for development. It verifies requests of any profile
//! against the given keys, prints each decoded notification, optionally forwards it to the
//! developer's app (`--forward URL`), and answers with the profile's exact acknowledgement
//! (or its failure reply, with the reason, when verification or the forward fails, so the
//! provider sends it again).
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use clap::Args;
use herald_protocols::profile::ReceiverKeys;
use herald_protocols::receive::{IncomingRequest, Reply, VerifiedNotification};
use herald_protocols::Profile;

#[derive(Args, Debug)]
pub struct ListenArgs {
    /// Port to listen on.
    #[arg(long, default_value_t = 9000)]
    pub port: u16,
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Wire profile: standard-webhooks, alipay, wechatpay-v2, wechatpay-v3, stripe.
    #[arg(long, default_value = "standard-webhooks")]
    pub profile: String,
    /// Verification key: whsec_/whpk_ (standard-webhooks, stripe), the platform public key
    /// (alipay, wechatpay-v3: PEM, bare base64 or a file; SERIAL=key for v3), or the API key
    /// (wechatpay-v2). Repeatable or comma-separated: any one matching is enough.
    #[arg(
        long = "key",
        visible_alias = "secret",
        env = "HERALD_SECRET",
        value_delimiter = ',',
        required = true,
        hide_env_values = true
    )]
    pub keys: Vec<String>,
    /// wechatpay-v3: the APIv3 key that decrypts the resource.
    #[arg(long, value_name = "KEY")]
    pub decrypt_key: Option<String>,
    /// wechatpay-v2: the merchant's sign type (MD5 or HMAC-SHA256). Without it the sign's
    /// length decides (32 hex digits MD5, 64 HMAC-SHA256). Refund notifications are checked
    /// by decrypting their req_info with the API key.
    #[arg(long, value_name = "TYPE")]
    pub sign_type: Option<String>,
    /// Answer verified requests with this status instead of the profile's acknowledgement
    /// (use a non-2xx one to watch the sender retry).
    #[arg(long)]
    pub status: Option<u16>,
    /// Forward each verified notification to this URL (your app) and acknowledge the
    /// provider only when it answers 2xx; otherwise the provider gets the failure reply and
    /// sends again. The forward is a POST of the decoded notification as JSON (headers
    /// `X-Herald-Profile`, `X-Herald-Notify-Id`), or with `--forward-raw` the original request.
    #[arg(long, value_name = "URL")]
    pub forward: Option<String>,
    /// With --forward: send the provider's original request (same body, content type,
    /// signature headers and query) instead of the decoded JSON, for apps that verify
    /// themselves (e.g. with herald-receiver).
    #[arg(long, requires = "forward")]
    pub forward_raw: bool,
}

/// Where verified notifications go next.
#[derive(Clone, Debug)]
pub struct Forward {
    pub url: url::Url,
    /// Send the original request instead of the decoded JSON.
    pub raw: bool,
    pub client: reqwest::Client,
}

impl Forward {
    pub fn new(url: &str, raw: bool) -> Result<Self, String> {
        let url = url::Url::parse(url).map_err(|e| format!("--forward {url:?}: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "--forward {url}: only http and https URLs can be forwarded to"
            ));
        }
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(std::time::Duration::from_secs(5))
            .timeout(std::time::Duration::from_secs(15))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Forward { url, raw, client })
    }

    /// Sends one verified notification on; `Ok(status)` when the app answered 2xx.
    async fn send(
        &self,
        n: &VerifiedNotification,
        req: &IncomingRequest<'_>,
    ) -> Result<u16, String> {
        let mut url = self.url.clone();
        let builder = if self.raw {
            if !req.query.is_empty() {
                url.set_query(Some(req.query));
            }
            let method = reqwest::Method::from_bytes(req.method.as_bytes())
                .map_err(|_| format!("method {:?} cannot be forwarded", req.method))?;
            let mut b = self.client.request(method, url);
            for (k, v) in req.headers {
                if !HOP_HEADERS.iter().any(|h| k.eq_ignore_ascii_case(h)) {
                    b = b.header(k.as_str(), v.as_str());
                }
            }
            b.body(req.body.to_vec())
        } else {
            let json = serde_json::to_vec(n).map_err(|e| e.to_string())?;
            self.client
                .post(url)
                .header("content-type", "application/json")
                .body(json)
        };
        let resp = builder
            .header("x-herald-profile", n.profile.name())
            .header("x-herald-notify-id", n.notify_id.as_str())
            .send()
            .await
            .map_err(|e| format!("forward to {} failed: {}", self.url, error_chain(&e)))?;
        let status = resp.status().as_u16();
        if resp.status().is_success() {
            Ok(status)
        } else {
            Err(format!("forward to {} answered {status}", self.url))
        }
    }
}

/// Headers that describe one hop, not the request: never copied onto the forward.
const HOP_HEADERS: [&str; 6] = [
    "host",
    "content-length",
    "connection",
    "transfer-encoding",
    "keep-alive",
    "upgrade",
];

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// What the receiver does with each request; `out` gets one printable report per request.
#[derive(Clone)]
pub struct Receiver {
    pub profile: Profile,
    pub keys: Arc<ReceiverKeys>,
    /// Overrides the profile's acknowledgement.
    pub status: Option<StatusCode>,
    /// Forward verified notifications here and ack only when the app took them.
    pub forward: Option<Forward>,
    pub out: Arc<dyn Fn(String) + Send + Sync>,
}

pub fn router(receiver: Receiver) -> Router {
    Router::new().fallback(handle).with_state(receiver)
}

fn reply(r: Reply) -> Response {
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::OK);
    (status, [("content-type", r.content_type)], r.body).into_response()
}

async fn handle(
    State(r): State<Receiver>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let now = herald_engine::now_ms() / 1000;
    let req = IncomingRequest {
        method: method.as_str(),
        headers: &headers,
        query: uri.query().unwrap_or(""),
        body: &body,
        now,
    };
    match r.profile.verify(&r.keys, &req) {
        Ok(n) => {
            let shown = serde_json::to_string_pretty(&n).unwrap_or_default();
            // WeChat Pay v2 refunds are unsigned: decrypting req_info was their check.
            let kind = if n.fields.get("req_info").is_some_and(|v| v.is_object()) {
                "  (refund notification: req_info decrypted with the API key)"
            } else {
                ""
            };
            (r.out)(format!(
                "verified {method} {}  notify id {}{kind}\n{shown}",
                uri.path(),
                n.notify_id
            ));
            if let Some(fw) = &r.forward {
                match fw.send(&n, &req).await {
                    Ok(status) => (r.out)(format!("forwarded to {} -> {status}", fw.url)),
                    Err(e) => {
                        (r.out)(format!("not acknowledged: {e}"));
                        return reply(r.profile.failure_reply(&e));
                    }
                }
            }
            match r.status {
                Some(s) => s.into_response(),
                None => reply(r.profile.ack_reply()),
            }
        }
        Err(e) => {
            (r.out)(format!("invalid {method} {}: {e}", uri.path()));
            reply(r.profile.failure_reply(&e.to_string()))
        }
    }
}

pub async fn run(args: ListenArgs) -> Result<(), String> {
    let profile: Profile = args
        .profile
        .parse()
        .map_err(|e: herald_protocols::ProfileError| e.to_string())?;
    let keys: Vec<String> = args
        .keys
        .iter()
        .map(|k| super::verify::key_arg(k.trim()))
        .collect();
    let decrypt = args.decrypt_key.as_deref().map(super::verify::key_arg);
    let receiver_keys = profile
        .receiver_keys(&keys, decrypt.as_deref())
        .map_err(|e| format!("--key: {e}"))?;
    let receiver_keys =
        super::verify::with_sign_type(profile, receiver_keys, args.sign_type.as_deref())?;
    let status = args
        .status
        .map(|s| StatusCode::from_u16(s).map_err(|_| format!("--status {s} is not an HTTP status")))
        .transpose()?;
    let forward = args
        .forward
        .as_deref()
        .map(|u| Forward::new(u, args.forward_raw))
        .transpose()?;
    let addr = SocketAddr::new(args.host, args.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    println!(
        "Listening on http://{addr}  (verifying {} with {} key(s), answering {})",
        profile.name(),
        keys.len(),
        status
            .map(|s| s.to_string())
            .unwrap_or_else(|| "the profile's acknowledgement".into())
    );
    if let Some(fw) = &forward {
        println!(
            "Forwarding verified notifications to {} ({}); the provider is acknowledged only when it answers 2xx",
            fw.url,
            if fw.raw { "the original request" } else { "decoded JSON" }
        );
    }
    let receiver = Receiver {
        profile,
        keys: Arc::new(receiver_keys),
        status,
        forward,
        out: Arc::new(|line| println!("{line}")),
    };
    axum::serve(listener, router(receiver))
        .with_graceful_shutdown(super::serve::shutdown_signal())
        .await
        .map_err(|e| e.to_string())
}
