//! `herald listen`: a local receiver for development. It verifies requests of any profile
//! against the given keys, prints each decoded notification, optionally forwards it to the
//! developer's app (`--forward URL`), and answers with the profile's exact acknowledgement
//! (or its failure reply, with the reason, when verification or the forward fails, so the
//! provider sends it again). With `--dump DIR` it first saves each raw request as one file
//! (the format of [`super::capture`]), for `herald verify --request FILE --explain` later.
use anyhow::Context as _;
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
    /// Wire profile: standard-webhooks, alipay, wechatpay-v2, wechatpay-v3, stripe,
    /// wechatpay-legacy, dialect (see --dialect).
    #[arg(long, default_value = "standard-webhooks")]
    pub profile: String,
    /// Verification key: whsec_/whpk_ (standard-webhooks, stripe), the platform public key
    /// (alipay, wechatpay-v3: PEM, bare base64 or a file; SERIAL=key for v3), or the API key
    /// (wechatpay-v2), the partner key and appkey=APPKEY (wechatpay-legacy), the dialect's
    /// key. Repeatable or comma-separated: any one matching is enough.
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
    /// dialect: a preset name (epay) or a TOML/JSON dialect file; its ack text is the answer.
    /// Default: epay.
    #[arg(long, value_name = "PRESET|FILE")]
    pub dialect: Option<String>,
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
    /// Save each request as it arrived (request line, headers, body byte for byte) into this
    /// directory, one `<unix ms>-<n>.http` file per request, before verifying it; read one
    /// back with `herald verify --request FILE [--explain]`. Created when missing.
    #[arg(long, value_name = "DIR")]
    pub dump: Option<std::path::PathBuf>,
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
    pub fn new(url: &str, raw: bool) -> anyhow::Result<Self> {
        let url = url::Url::parse(url).with_context(|| format!("--forward {url:?}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            anyhow::bail!("--forward {url}: only http and https URLs can be forwarded to");
        }
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(std::time::Duration::from_secs(5))
            .timeout(std::time::Duration::from_secs(15))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Forward { url, raw, client })
    }

    /// Sends one verified notification on; `Ok(status)` when the app answered 2xx.
    async fn send(
        &self,
        n: &VerifiedNotification,
        req: &IncomingRequest<'_>,
    ) -> anyhow::Result<u16> {
        let mut url = self.url.clone();
        let builder = if self.raw {
            if !req.query.is_empty() {
                url.set_query(Some(req.query));
            }
            let method = reqwest::Method::from_bytes(req.method.as_bytes())
                .ok()
                .with_context(|| format!("method {:?} cannot be forwarded", req.method))?;
            let mut b = self.client.request(method, url);
            for (k, v) in req.headers {
                if !HOP_HEADERS.iter().any(|h| k.eq_ignore_ascii_case(h)) {
                    b = b.header(k.as_str(), v.as_str());
                }
            }
            b.body(req.body.to_vec())
        } else {
            let json = serde_json::to_vec(n)?;
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
            .with_context(|| format!("forward to {} failed", self.url))?;
        let status = resp.status().as_u16();
        if resp.status().is_success() {
            Ok(status)
        } else {
            Err(anyhow::anyhow!("forward to {} answered {status}", self.url))
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

/// What the receiver does with each request; `out` gets one printable report per request.
#[derive(Clone)]
pub struct Receiver {
    pub profile: Profile,
    pub keys: Arc<ReceiverKeys>,
    /// Overrides the profile's acknowledgement.
    pub status: Option<StatusCode>,
    /// Forward verified notifications here and ack only when the app took them.
    pub forward: Option<Forward>,
    /// Save each raw request into this directory first (`--dump`).
    pub dump: Option<std::path::PathBuf>,
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
    if let Some(dir) = &r.dump {
        let target = uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or_else(|| uri.path());
        match super::capture::save(dir, method.as_str(), target, &headers, &body) {
            Ok(path) => (r.out)(format!("saved {}", path.display())),
            // Verification and the reply go on: a full disk must not make the provider
            // believe the notification was refused.
            Err(e) => (r.out)(format!("not saved: {e:#}")),
        }
    }
    let now = herald_engine::now_ms().to_seconds().get();
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
                        let reason = format!("{e:#}");
                        (r.out)(format!("not acknowledged: {reason}"));
                        return reply(r.profile.failure_reply_for(&r.keys, &reason));
                    }
                }
            }
            match r.status {
                Some(s) => s.into_response(),
                None => reply(r.profile.ack_reply_for(&r.keys)),
            }
        }
        Err(e) => {
            (r.out)(format!("invalid {method} {}: {e}", uri.path()));
            reply(r.profile.failure_reply_for(&r.keys, &e.to_string()))
        }
    }
}

pub async fn run(args: ListenArgs) -> anyhow::Result<()> {
    let profile: Profile = args.profile.parse()?;
    let keys: Vec<String> = args
        .keys
        .iter()
        .map(|k| super::verify::key_arg(k.trim()))
        .collect::<Result<_, _>>()
        .context("--key")?;
    let decrypt = args
        .decrypt_key
        .as_deref()
        .map(super::verify::key_arg)
        .transpose()
        .context("--decrypt-key")?;
    if let Some(dir) = &args.dump {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("--dump {}: cannot create it", dir.display()))?;
    }
    let receiver_keys = profile
        .receiver_keys(&keys, decrypt.as_deref())
        .context("--key")?;
    let receiver_keys =
        super::verify::with_sign_type(profile, receiver_keys, args.sign_type.as_deref())?;
    let receiver_keys =
        super::verify::with_dialect(profile, receiver_keys, &keys, args.dialect.as_deref())?;
    let status = args
        .status
        .map(|s| {
            StatusCode::from_u16(s)
                .ok()
                .with_context(|| format!("--status {s} is not an HTTP status"))
        })
        .transpose()?;
    let forward = args
        .forward
        .as_deref()
        .map(|u| Forward::new(u, args.forward_raw))
        .transpose()?;
    let addr = SocketAddr::new(args.host, args.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    println!(
        "Listening on http://{addr}  (verifying {} with {} key(s), answering {})",
        profile.name(),
        keys.len(),
        status
            .map(|s| s.to_string())
            .unwrap_or_else(|| "the profile's acknowledgement".into())
    );
    if let Some(dir) = &args.dump {
        println!(
            "Saving each request into {} (read one back with herald verify --request FILE)",
            dir.display()
        );
    }
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
        dump: args.dump.clone(),
        out: Arc::new(|line| println!("{line}")),
    };
    axum::serve(listener, router(receiver))
        .with_graceful_shutdown(super::serve::shutdown_signal())
        .await
        .context("the receiver stopped")
}
