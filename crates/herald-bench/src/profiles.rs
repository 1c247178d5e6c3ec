//! Per profile: what signing one attempt costs. For each wire profile, `Profile::encode`
//! (the body, headers and signature of one attempt: HMAC for standard-webhooks and stripe,
//! RSA2 for alipay, RSA + AES-256-GCM for wechatpay-v3, MD5 for wechatpay-v2) runs in a
//! time-bounded loop on one thread, with generated credentials; notifications per second on
//! one core, against standard-webhooks.
use anyhow::Context as _;
use std::time::{Duration, Instant};

use herald_protocols::{OutgoingNotification, Profile};

use super::fixture::{EVENT_TYPE, PAYLOAD};
use super::report::Figure;
use super::Plan;

pub async fn run(plan: &Plan) -> anyhow::Result<Vec<Figure>> {
    let window = plan.sizes.profile_window;
    let mut rates = Vec::new();
    for profile in Profile::ALL {
        eprintln!(
            "bench profiles: {} for {:.1}s",
            profile.name(),
            window.as_secs_f64()
        );
        // One thread, off the runtime's workers: this loop never yields.
        let rate = tokio::task::spawn_blocking(move || encode_rate(profile, window))
            .await
            .with_context(|| format!("profiles: the {} loop died", profile.name()))??;
        rates.push((profile, rate));
    }
    let base = rates
        .iter()
        .find(|(p, _)| *p == Profile::StandardWebhooks)
        .map(|(_, r)| *r)
        .context("profiles: standard-webhooks was not measured")?;
    Ok(rates
        .into_iter()
        .map(|(p, rate)| {
            Figure::new(p.name(), rate, "notifications/s/core").against(
                "standard-webhooks",
                base,
                "notifications/s/core",
            )
        })
        .collect())
}

/// The bench notification in the `epay` dialect's field names.
const DIALECT_PAYLOAD: &str = r#"{"out_trade_no":"20261123000001","trade_no":"4200002026112300001","money":"88.00","trade_status":"TRADE_SUCCESS","type":"alipay","name":"coffee"}"#;

/// Encodes the bench notification with `profile` for `window`; encodes per second.
fn encode_rate(profile: Profile, window: Duration) -> anyhow::Result<f64> {
    let (creds, _) = profile
        .create_credentials(&serde_json::Value::Null)
        .with_context(|| format!("profiles: {} credentials", profile.name()))?;
    let notify_id = profile.new_notify_id();
    let now = herald_engine::now_ms().to_seconds().get();
    // A dialect (the epay preset) names its amount `money`: the same order in its fields.
    let payload = if profile == Profile::Dialect {
        DIALECT_PAYLOAD
    } else {
        PAYLOAD
    };
    let n = OutgoingNotification {
        notify_id: &notify_id,
        event_type: EVENT_TYPE,
        payload: payload.as_bytes(),
        timestamp: herald_protocols::UnixSeconds::new(now),
        created_at: herald_protocols::UnixSeconds::new(now),
    };
    // Fail on the first encode, not after a loop of errors.
    profile
        .encode(&creds, &n)
        .with_context(|| format!("profiles: {}", profile.name()))?;
    let started = Instant::now();
    let mut count = 0u64;
    loop {
        // Check the clock every few encodes: cheap next to even the fastest signature.
        for _ in 0..8 {
            let encoded = profile.encode(&creds, &n);
            std::hint::black_box(&encoded);
            count += 1;
        }
        let elapsed = started.elapsed();
        if elapsed >= window {
            return Ok(count as f64 / elapsed.as_secs_f64());
        }
    }
}
