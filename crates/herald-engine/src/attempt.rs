//! One HTTP attempt: sign and encode with the app's profile, send with the pooled client,
//! read a capped response, classify it, and decide the delivery's next step.
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use herald_protocols::{classify, AckRule, OutgoingNotification, RetryPolicy, Verdict};
use herald_store::{AppCtx, Attempt, EndpointCtx, Job, Millis, Outcome};
use rand::Rng;
use reqwest::header::{HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};

use crate::ssrf::{BlockedTarget, CheckedResolver, TargetPolicy};
use crate::{now_ms, EngineConfig};

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

/// What one attempt produced.
#[derive(Debug)]
pub struct AttemptResult {
    pub attempt: Attempt,
    pub verdict: Verdict,
}

/// Everything an attempt needs besides the job.
pub struct Sender {
    pub client: reqwest::Client,
    pub policy: Arc<TargetPolicy>,
    /// Most bytes of a response body read.
    pub read_cap: usize,
    /// Most bytes of a response body stored.
    pub store_cap: usize,
    /// The configured time limit of one attempt (the client's); a profile whose provider
    /// allows less (WeChat Pay: 5 s) gets its own, shorter one.
    pub request_timeout: Duration,
}

impl Sender {
    /// Makes attempt number `job.attempts + 1` of `job` to `url`.
    pub async fn attempt(
        &self,
        job: &Job,
        app: &AppCtx,
        url: &str,
        ack: &AckRule,
    ) -> AttemptResult {
        let at = now_ms();
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

        let parsed = match reqwest::Url::parse(url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => u,
            Ok(u) => {
                return fail(
                    "request",
                    format!("unsupported URL scheme {:?}", u.scheme()),
                    None,
                    None,
                )
            }
            Err(e) => return fail("request", format!("invalid URL: {e}"), None, None),
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

        let encoded = match app.profile.encode(
            &app.credentials,
            &OutgoingNotification {
                notify_id: &job.notify_id,
                event_type: &job.event_type,
                payload: job.payload.as_bytes(),
                timestamp: at.div_euclid(1000),
                created_at: job.created_at.div_euclid(1000),
            },
        ) {
            Ok(e) => e,
            Err(e) => return fail("encode", e.to_string(), None, None),
        };
        let mut req = self
            .client
            .post(parsed)
            .header(CONTENT_TYPE, encoded.content_type);
        let profile_timeout = app.profile.attempt_timeout();
        if profile_timeout < self.request_timeout {
            req = req.timeout(profile_timeout);
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
            SystemTime::now(),
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
    now: Millis,
    rng: &mut impl Rng,
) -> Outcome {
    let not_before = match verdict {
        Verdict::Acked => return Outcome::Succeeded,
        Verdict::Retry => Duration::ZERO,
        Verdict::RetryNotBefore(d) => *d,
    };
    match policy.next_delay(attempts_made, rng) {
        Some(delay) => Outcome::Retry {
            next_at: now + delay.max(not_before).as_millis() as Millis,
        },
        None => Outcome::Failed,
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
            next_outcome(&Verdict::Acked, 1, &p, 0, &mut rng),
            Outcome::Succeeded
        );
        assert_eq!(
            next_outcome(&Verdict::Retry, 1, &p, 0, &mut rng),
            Outcome::Retry { next_at: 1000 }
        );
        assert_eq!(
            next_outcome(&Verdict::Retry, 2, &p, 0, &mut rng),
            Outcome::Failed
        );
    }

    #[test]
    fn retry_after_postpones_beyond_the_schedule() {
        let p = policy(&[1000]);
        let mut rng = rand::thread_rng();
        let v = Verdict::RetryNotBefore(Duration::from_secs(30));
        assert_eq!(
            next_outcome(&v, 1, &p, 5, &mut rng),
            Outcome::Retry { next_at: 30_005 }
        );
        let short = Verdict::RetryNotBefore(Duration::from_millis(10));
        assert_eq!(
            next_outcome(&short, 1, &p, 5, &mut rng),
            Outcome::Retry { next_at: 1005 }
        );
    }

    #[test]
    fn snippet_is_capped() {
        assert_eq!(snippet(b"", 4), None);
        assert_eq!(snippet(b"abcdef", 4).as_deref(), Some("abcd"));
    }
}
