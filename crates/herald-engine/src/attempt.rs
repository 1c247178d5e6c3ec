//! One HTTP attempt: sign and encode with the app's profile, send with the pooled client,
//! read a capped response, classify it, and decide the delivery's next step.
//!
//! The scheduler makes attempts through the [`Attempter`] trait, so its tests can script
//! receivers without sockets; [`HttpAttempter`] is the real one.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use herald_protocols::{classify, AckRule, OutgoingNotification, RetryPolicy, Verdict};
use herald_store::{AppCtx, Attempt, AttemptOutcome, ClaimedDelivery, EndpointCtx, UnixMillis};
use rand::Rng;
use reqwest::header::{HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};

use crate::ssrf::{BlockedTarget, CheckedResolver, TargetPolicy};
use crate::{Clock, EngineConfig};

/// The engine's HTTP client: one pool of keep-alive connections for every endpoint,
/// connect and total timeouts, redirects not followed, addresses checked by the resolver.
pub fn build_client(config: &EngineConfig) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(config.connect_timeout)
        .timeout(config.request_timeout)
        .redirect(reqwest::redirect::Policy::none())
        // A proxy would resolve the target itself, past the address check.
        .no_proxy()
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(64)
        .tcp_nodelay(true)
        .user_agent(config.user_agent.clone())
        .dns_resolver(Arc::new(CheckedResolver {
            policy: config.target_policy.clone(),
        }))
        .build()
}

/// The error class of an attempt that failed because this machine ran out of local
/// resources (descriptors, socket buffers, memory) before the request reached the receiver.
pub const LOCAL_ERROR_CLASS: &str = "local";

/// What one attempt produced.
#[derive(Debug)]
pub struct AttemptResult {
    pub attempt: Attempt,
    pub verdict: Verdict,
}

impl AttemptResult {
    /// True when the attempt failed on Herald's side for lack of local resources (`EMFILE`,
    /// `ENFILE`, `ENOBUFS`, `ENOMEM`; error class [`LOCAL_ERROR_CLASS`]): it says nothing
    /// about the receiver, so it must not spend one of the delivery's attempts nor count
    /// as the destination's failure. The caller retries it after a short pause, with the
    /// same attempt number.
    pub fn is_local(&self) -> bool {
        self.attempt.error_class.as_deref() == Some(LOCAL_ERROR_CLASS)
    }
}

/// Makes attempt number `job.attempts + 1` of a job: to the endpoint's current URL (or the
/// job's own), judged by the endpoint's or the app's ack rule.
#[async_trait::async_trait]
pub trait Attempter: Send + Sync + 'static {
    async fn attempt(
        &self,
        job: &ClaimedDelivery,
        app: &AppCtx,
        endpoint: Option<&EndpointCtx>,
    ) -> AttemptResult;
}

/// The real attempter: HTTP with the pooled client, under the target policy.
pub struct HttpAttempter {
    pub client: reqwest::Client,
    pub policy: Arc<TargetPolicy>,
    /// Most bytes of a response body read.
    pub read_cap: usize,
    /// Most bytes of a response body stored.
    pub store_cap: usize,
    pub clock: Arc<dyn Clock>,
    /// The configured time limit of one attempt (the client's); a profile whose provider
    /// allows less (WeChat Pay: 5 s) gets its own, shorter one.
    pub request_timeout: Duration,
    /// Endpoint URLs already parsed (`UrlCache::default()` to start empty).
    pub urls: UrlCache,
}

/// Most URLs an [`UrlCache`] keeps; past that it starts again empty, so a stream of
/// one-off URLs cannot grow it without bound.
const URL_CACHE_MAX: usize = 1024;

/// Endpoint URLs as parsed: an endpoint's URL is the same for every attempt, and parsing
/// it again each time was a measurable share of the engine's CPU. Only URLs that parse,
/// with an `http`/`https` scheme, are kept; an invalid URL is parsed (and its error built)
/// at each attempt, as before. The address check of a literal host still runs at each
/// attempt, on the parsed URL.
#[derive(Default)]
pub struct UrlCache {
    parsed: Mutex<HashMap<Box<str>, reqwest::Url>>,
}

impl UrlCache {
    /// `url` parsed, from the cache when it was parsed before; the error text when it is
    /// not an `http`/`https` URL.
    fn get(&self, url: &str) -> Result<reqwest::Url, String> {
        if let Some(u) = self.lock().get(url) {
            return Ok(u.clone());
        }
        let parsed = match reqwest::Url::parse(url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => u,
            Ok(u) => return Err(format!("unsupported URL scheme {:?}", u.scheme())),
            Err(e) => return Err(format!("invalid URL: {e}")),
        };
        let mut map = self.lock();
        if map.len() >= URL_CACHE_MAX {
            map.clear();
        }
        map.insert(url.into(), parsed.clone());
        Ok(parsed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, reqwest::Url>> {
        // The map holds only finished parses: a panic elsewhere cannot leave it half-done.
        self.parsed.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait::async_trait]
impl Attempter for HttpAttempter {
    async fn attempt(
        &self,
        job: &ClaimedDelivery,
        app: &AppCtx,
        endpoint: Option<&EndpointCtx>,
    ) -> AttemptResult {
        let url = endpoint.map(|e| e.url.as_str()).unwrap_or(&job.url);
        let (_, ack) = effective_rules(app, endpoint);
        let timeout = endpoint
            .and_then(|e| e.timeout_ms)
            .map(|ms| Duration::from_millis(ms.into()));
        self.send(job, app, url, ack, timeout).await
    }
}

impl HttpAttempter {
    /// Makes attempt number `job.attempts + 1` of `job` to `url`, within `timeout` (an
    /// endpoint's own limit) or else the profile's limit when shorter than the configured
    /// one.
    pub async fn send(
        &self,
        job: &ClaimedDelivery,
        app: &AppCtx,
        url: &str,
        ack: &AckRule,
        timeout: Option<Duration>,
    ) -> AttemptResult {
        let at = self.clock.now();
        let started = Instant::now();
        let n = job.attempts + 1;
        let fail = |class: &str, error: String, status: Option<u16>, response: Option<String>| {
            AttemptResult {
                attempt: Attempt {
                    n,
                    at,
                    duration_ms: started.elapsed().as_millis().min(u32::MAX as u128) as u32,
                    status_code: status,
                    response,
                    error_class: Some(class.to_string()),
                    error: Some(error),
                },
                verdict: Verdict::Retry,
            }
        };

        let parsed = match self.urls.get(url) {
            Ok(u) => u,
            Err(e) => return fail("request", e, None, None),
        };
        // Literal addresses never reach the resolver: check them here.
        let literal = match parsed.host() {
            Some(url::Host::Ipv4(ip)) => Some(std::net::IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(std::net::IpAddr::V6(ip)),
            _ => None,
        };
        if let Some(ip) = literal {
            if !self.policy.permits(ip) {
                return fail("blocked-target", BlockedTarget(ip).to_string(), None, None);
            }
        }

        // A gateway's raw forward sends the provider's request, signed over its body.
        let raw = if job.event_type == crate::raw::RAW_EVENT_TYPE
            && app.profile == herald_protocols::Profile::StandardWebhooks
        {
            match crate::raw::unpack(&job.payload) {
                Ok(r) => Some(r),
                // The recorded error is one line: the error and its cause.
                Err(e) => {
                    let cause = std::error::Error::source(&e)
                        .map(|s| format!(": {s}"))
                        .unwrap_or_default();
                    return fail("encode", format!("{e}{cause}"), None, None);
                }
            }
        } else {
            None
        };
        let encoded = match app.profile.encode(
            &app.credentials,
            &OutgoingNotification {
                notify_id: &job.notify_id,
                event_type: &job.event_type,
                payload: raw
                    .as_ref()
                    .map_or(job.payload.as_bytes(), |r| r.body.as_slice()),
                timestamp: at.to_seconds(),
                created_at: job.created_at.to_seconds(),
            },
        ) {
            Ok(mut e) => {
                if let Some(r) = raw {
                    if let Some(ct) = r.content_type {
                        e.content_type = ct;
                    }
                    let mut headers = r.headers;
                    headers.append(&mut e.headers);
                    e.headers = headers;
                    e.body = r.body;
                }
                e
            }
            Err(e) => return fail("encode", e.to_string(), None, None),
        };
        // Profiles that carry fields in the URL (wechatpay-legacy, GET dialects) replace its
        // query; a GET has no body and no Content-Type.
        let mut parsed = parsed;
        if !encoded.query.is_empty() {
            parsed.set_query(Some(&encoded.query));
        }
        let method = if encoded.method == "GET" {
            reqwest::Method::GET
        } else {
            reqwest::Method::POST
        };
        let mut req = self.client.request(method, parsed);
        if !encoded.content_type.is_empty() {
            req = req.header(CONTENT_TYPE, encoded.content_type);
        }
        let limit =
            timeout.unwrap_or_else(|| app.profile.attempt_timeout().min(self.request_timeout));
        if limit != self.request_timeout {
            req = req.timeout(limit);
        }
        for (name, value) in &encoded.headers {
            match (
                HeaderName::try_from(name.as_str()),
                HeaderValue::try_from(value.as_str()),
            ) {
                (Ok(n), Ok(v)) => req = req.header(n, v),
                _ => {
                    return fail(
                        "encode",
                        format!("profile produced an invalid header {name:?}"),
                        None,
                        None,
                    )
                }
            }
        }
        let mut resp = match req.body(encoded.body).send().await {
            Ok(r) => r,
            Err(e) => {
                let (class, msg) = classify_error(&e);
                return fail(class, msg, None, None);
            }
        };
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut body = Vec::new();
        let mut read_error = None;
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    let room = self.read_cap.saturating_sub(body.len());
                    body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    if body.len() >= self.read_cap {
                        break; // Capped: the rest is not read (the connection is dropped).
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    read_error = Some(classify_error(&e));
                    break;
                }
            }
        }
        let stored = snippet(&body, self.store_cap);
        if let Some((class, msg)) = read_error {
            return fail(
                class,
                format!("reading the response: {msg}"),
                Some(status),
                stored,
            );
        }
        let verdict = classify(
            ack,
            status,
            &body,
            retry_after.as_deref(),
            UNIX_EPOCH + self.clock.now().saturating_sub(UnixMillis::EPOCH),
        );
        let (error_class, error) = match verdict {
            Verdict::Acked => (None, None),
            _ if (200..300).contains(&status) => (
                Some("bad-ack".to_string()),
                Some(format!("the response is not the acknowledgement {ack}")),
            ),
            _ => (
                Some("http-status".to_string()),
                Some(format!("HTTP status {status}")),
            ),
        };
        AttemptResult {
            attempt: Attempt {
                n,
                at,
                duration_ms: started.elapsed().as_millis().min(u32::MAX as u128) as u32,
                status_code: Some(status),
                response: stored,
                error_class,
                error,
            },
            verdict,
        }
    }
}

/// The next step after an attempt, from its verdict and the retry policy.
pub fn next_outcome(
    verdict: &Verdict,
    attempts_made: u32,
    policy: &RetryPolicy,
    now: UnixMillis,
    rng: &mut impl Rng,
) -> AttemptOutcome {
    let not_before = match verdict {
        Verdict::Acked => return AttemptOutcome::Succeeded,
        Verdict::Retry => Duration::ZERO,
        Verdict::RetryNotBefore(d) => *d,
    };
    match policy.next_delay(attempts_made, rng) {
        Some(delay) => AttemptOutcome::Retry {
            next_at: now + delay.max(not_before),
        },
        None => AttemptOutcome::Failed,
    }
}

/// The retry policy and ack rule in force for a delivery: the endpoint's override, else the
/// app's (which already falls back to the profile's default).
pub fn effective_rules<'a>(
    app: &'a AppCtx,
    endpoint: Option<&'a EndpointCtx>,
) -> (&'a RetryPolicy, &'a AckRule) {
    let retry = endpoint
        .and_then(|e| e.retry.as_ref())
        .unwrap_or(&app.retry);
    let ack = endpoint.and_then(|e| e.ack.as_ref()).unwrap_or(&app.ack);
    (retry, ack)
}

fn snippet(body: &[u8], cap: usize) -> Option<String> {
    if body.is_empty() {
        return None;
    }
    Some(String::from_utf8_lossy(&body[..body.len().min(cap)]).into_owned())
}

/// `errno` values that mean this machine, not the receiver, is out of resources: too many
/// open files (per process, system-wide), no socket buffer space, no memory. ENOBUFS differs
/// between Linux and the BSDs.
const EMFILE: i32 = 24;
const ENFILE: i32 = 23;
const ENOMEM: i32 = 12;
#[cfg(any(target_os = "linux", target_os = "android"))]
const ENOBUFS: i32 = 105;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const ENOBUFS: i32 = 55;

/// True when `e` is an OS error saying local resources ran out.
pub fn is_local_resource_error(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::OutOfMemory
        || matches!(e.raw_os_error(), Some(EMFILE | ENFILE | ENOBUFS | ENOMEM))
}

/// Walks an error chain; true when any link is a local resource error (see
/// [`is_local_resource_error`]).
pub fn chain_has_local_resource_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(e);
    while let Some(s) = source {
        if s.downcast_ref::<std::io::Error>()
            .is_some_and(is_local_resource_error)
        {
            return true;
        }
        source = s.source();
    }
    false
}

/// Maps a transport error to an error class and a message.
fn classify_error(e: &reqwest::Error) -> (&'static str, String) {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut chain = Vec::new();
    while let Some(s) = source {
        if let Some(b) = s.downcast_ref::<BlockedTarget>() {
            return ("blocked-target", b.to_string());
        }
        chain.push(s.to_string());
        source = s.source();
    }
    let text = chain.join(": ");
    if chain_has_local_resource_error(e) {
        return (LOCAL_ERROR_CLASS, text);
    }
    let lower = text.to_ascii_lowercase();
    let class = if e.is_timeout() {
        "timeout"
    } else if lower.contains("certificate") || lower.contains("tls") || lower.contains("handshake")
    {
        "tls"
    } else if e.is_connect() {
        "connect"
    } else {
        "request"
    };
    (class, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(delays: &[u64]) -> RetryPolicy {
        RetryPolicy {
            name: None,
            delays_ms: delays.to_vec(),
            jitter: 0.0,
        }
    }

    #[test]
    fn ack_succeeds_and_schedule_end_fails() {
        let p = policy(&[1000]);
        let mut rng = rand::thread_rng();
        assert_eq!(
            next_outcome(&Verdict::Acked, 1, &p, UnixMillis::new(0), &mut rng),
            AttemptOutcome::Succeeded
        );
        assert_eq!(
            next_outcome(&Verdict::Retry, 1, &p, UnixMillis::new(0), &mut rng),
            AttemptOutcome::Retry {
                next_at: UnixMillis::new(1000)
            }
        );
        assert_eq!(
            next_outcome(&Verdict::Retry, 2, &p, UnixMillis::new(0), &mut rng),
            AttemptOutcome::Failed
        );
    }

    #[test]
    fn retry_after_postpones_beyond_the_schedule() {
        let p = policy(&[1000]);
        let mut rng = rand::thread_rng();
        let v = Verdict::RetryNotBefore(Duration::from_secs(30));
        assert_eq!(
            next_outcome(&v, 1, &p, UnixMillis::new(5), &mut rng),
            AttemptOutcome::Retry {
                next_at: UnixMillis::new(30_005)
            }
        );
        let short = Verdict::RetryNotBefore(Duration::from_millis(10));
        assert_eq!(
            next_outcome(&short, 1, &p, UnixMillis::new(5), &mut rng),
            AttemptOutcome::Retry {
                next_at: UnixMillis::new(1005)
            }
        );
    }

    fn test_app() -> AppCtx {
        AppCtx {
            id: "app_1".into(),
            profile: herald_protocols::Profile::StandardWebhooks,
            credentials: herald_protocols::Credentials::StandardWebhooks(
                herald_protocols::standard_webhooks::Keys::single(
                    "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
                ),
            ),
            retry: RetryPolicy::standard(),
            ack: AckRule::Http2xx,
        }
    }

    fn test_job(app: &AppCtx, url: &str) -> ClaimedDelivery {
        ClaimedDelivery {
            seq: 1,
            id: "dlv_1".into(),
            notify_id: "msg_1".into(),
            notification_id: "ntf_1".into(),
            app: Arc::new(app.clone()),
            endpoint: None,
            url: url.into(),
            event_type: "e".parse().unwrap(),
            payload: Arc::from("{}"),
            created_at: UnixMillis::new(0),
            attempts: 0,
            next_at: UnixMillis::new(0),
            order_key: None,
        }
    }

    /// An error wrapping another, as hyper-util's connect error wraps the socket's.
    #[derive(Debug)]
    struct Wrapped(&'static str, std::io::Error);
    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.1)
        }
    }

    #[test]
    fn running_out_of_local_resources_is_classified_as_heralds_failure() {
        for errno in [EMFILE, ENFILE, ENOBUFS, ENOMEM] {
            let e = Wrapped("tcp open error", std::io::Error::from_raw_os_error(errno));
            assert!(chain_has_local_resource_error(&e), "errno {errno}");
        }
        assert!(chain_has_local_resource_error(&std::io::Error::from(
            std::io::ErrorKind::OutOfMemory
        )));
        // The receiver's failures are not local.
        for kind in [
            std::io::ErrorKind::ConnectionRefused,
            std::io::ErrorKind::ConnectionReset,
            std::io::ErrorKind::TimedOut,
        ] {
            let e = Wrapped("tcp connect error", std::io::Error::from(kind));
            assert!(!chain_has_local_resource_error(&e), "{kind:?}");
        }
    }

    /// A real connect that fails with EMFILE: the attempt is marked local (not spent).
    /// Runs in a child process so the descriptor limit does not disturb other tests.
    #[tokio::test]
    async fn an_attempt_that_cannot_open_a_socket_is_local_and_not_the_receivers_failure() {
        if std::env::var_os("HERALD_ATTEMPT_EMFILE_CHILD").is_none() {
            let exe = std::env::current_exe().unwrap();
            let out = std::process::Command::new("prlimit")
                .arg("--nofile=64:64")
                .arg("--")
                .arg(exe)
                .args([
                    "--exact",
                    "attempt::tests::an_attempt_that_cannot_open_a_socket_is_local_and_not_the_receivers_failure",
                    "--nocapture",
                ])
                .env("HERALD_ATTEMPT_EMFILE_CHILD", "1")
                .output();
            let Ok(out) = out else {
                eprintln!("prlimit is not available; skipped");
                return;
            };
            assert!(
                out.status.success(),
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            return;
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let config = EngineConfig {
            target_policy: Arc::new(TargetPolicy {
                allow_private: true,
                allow: vec![],
            }),
            ..EngineConfig::default()
        };
        let sender = HttpAttempter {
            client: build_client(&config).unwrap(),
            policy: config.target_policy.clone(),
            read_cap: 1024,
            store_cap: 256,
            clock: Arc::new(crate::SystemClock),
            request_timeout: config.request_timeout,
            urls: UrlCache::default(),
        };
        let app = test_app();
        let job = test_job(&app, &url);
        // Use up every descriptor this process may open.
        let mut hog = Vec::new();
        while let Ok(f) = std::fs::File::open("/dev/null") {
            hog.push(f);
        }
        let result = sender.send(&job, &app, &url, &AckRule::Http2xx, None).await;
        drop(hog);
        assert!(result.is_local(), "{:?}", result.attempt);
        assert_eq!(
            result.attempt.error_class.as_deref(),
            Some(LOCAL_ERROR_CLASS)
        );
        // The same attempt with descriptors to spare reaches the receiver (refused only
        // because nobody answers HTTP here, or accepted: either way not local).
        drop(listener);
        let result = sender.send(&job, &app, &url, &AckRule::Http2xx, None).await;
        assert!(!result.is_local(), "{:?}", result.attempt);
    }

    #[test]
    fn snippet_is_capped() {
        assert_eq!(snippet(b"", 4), None);
        assert_eq!(snippet(b"abcdef", 4).as_deref(), Some("abcd"));
    }

    #[test]
    fn url_cache_parses_once_and_keeps_only_http_urls() {
        let cache = UrlCache::default();
        let u = cache.get("http://example.com:8080/hook?a=1").unwrap();
        assert_eq!(u.as_str(), "http://example.com:8080/hook?a=1");
        assert_eq!(cache.lock().len(), 1);
        // The second time comes from the cache, equal to a fresh parse.
        assert_eq!(cache.get("http://example.com:8080/hook?a=1").unwrap(), u);
        assert_eq!(cache.lock().len(), 1);
        // Errors read as before and are not kept.
        assert_eq!(
            cache.get("ftp://example.com/x").unwrap_err(),
            "unsupported URL scheme \"ftp\""
        );
        assert!(cache
            .get("not a url")
            .unwrap_err()
            .starts_with("invalid URL: "));
        assert_eq!(cache.lock().len(), 1);
    }

    #[test]
    fn url_cache_is_bounded() {
        let cache = UrlCache::default();
        for i in 0..URL_CACHE_MAX + 10 {
            cache.get(&format!("https://h{i}.example/")).unwrap();
        }
        assert!(cache.lock().len() <= URL_CACHE_MAX);
        assert!(!cache.lock().is_empty());
    }
}
