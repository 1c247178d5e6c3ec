//! `herald send`: deliver one signed notification in the foreground, with the engine's own
//! attempt code, and show every attempt until it is acknowledged or the schedule is spent.
//! Any wire profile signs (`--profile`), and its acknowledgement is what counts unless `--ack`
//! says otherwise.
use anyhow::Context as _;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use herald_engine::attempt::{build_client, next_outcome, HttpAttempter};
use herald_engine::{now_ms, EngineConfig, TargetPolicy};
use herald_protocols::standard_webhooks::{Keys, SigningSecret};
use herald_protocols::{AckRule, Credentials, Profile, RetryPolicy};
use herald_store::{AppCtx, AttemptOutcome, ClaimedDelivery, EventType};

#[derive(Args, Debug)]
pub struct SendArgs {
    /// Where to POST the notification: an http:// or https:// URL.
    #[arg(long)]
    pub url: String,
    /// Wire profile: standard-webhooks, alipay, wechatpay-v2, wechatpay-v3, stripe,
    /// wechatpay-legacy, dialect.
    #[arg(long, default_value = "standard-webhooks")]
    pub profile: String,
    /// The signing key: a whsec_ (HMAC) or whsk_ (ed25519) secret for standard-webhooks and
    /// stripe, the RSA private key for alipay and wechatpay-v3 (PEM, base64 or a file), the
    /// API key for wechatpay-v2, the partner key for wechatpay-legacy, a dialect's key.
    #[arg(
        long,
        visible_alias = "key",
        env = "HERALD_SECRET",
        hide_env_values = true
    )]
    pub secret: String,
    /// Another credentials field, as name=value (e.g. app_id=2021..., mch_id=...,
    /// serial=..., api_v3_key=...; what is not given is generated). Repeatable.
    #[arg(long = "set", value_name = "NAME=VALUE")]
    pub set: Vec<String>,
    /// dialect: a preset name (epay) or a TOML/JSON dialect file. Default: epay.
    #[arg(long, value_name = "PRESET|FILE")]
    pub dialect: Option<String>,
    /// A dialect's fixed field, as name=value (e.g. pid=1001). Repeatable.
    #[arg(long = "field", value_name = "NAME=VALUE")]
    pub fields: Vec<String>,
    /// The JSON payload: literal JSON, @FILE, or - for standard input.
    #[arg(long, value_name = "JSON")]
    pub json: String,
    /// Event type: Stripe's `type`, WeChat Pay v3's `event_type`; standard-webhooks sends
    /// the payload as given.
    /// Not blank, at most 256 characters, no control characters.
    #[arg(long, default_value = "test.event")]
    pub event_type: EventType,
    /// Retry schedule: a policy name (standard, alipay, wechatpay-v2, wechatpay-v3, stripe),
    /// `none`, or delays such as 1,5,30s,2m (plain numbers are seconds).
    #[arg(long, default_value = "1,5,30")]
    pub retry: String,
    /// What counts as an acknowledgement: 2xx, body:<text>, or wechat-xml. Default: the
    /// profile's (alipay: the body `success`; wechatpay-v2: XML return_code SUCCESS; a dialect its own ack text;
    /// others 2xx).
    #[arg(long)]
    pub ack: Option<String>,
    /// The webhook-id to send (default: a fresh msg_ id, the same on every attempt).
    #[arg(long)]
    pub notify_id: Option<String>,
    /// Seconds one attempt may take.
    #[arg(long, default_value_t = 15)]
    pub timeout: u64,
    /// Refuse loopback and private addresses, as `herald serve` does by default.
    #[arg(long)]
    pub block_private_targets: bool,
}

/// Parses the `--retry` forms shared by the CLI.
pub fn parse_retry_arg(s: &str) -> anyhow::Result<RetryPolicy> {
    let s = s.trim();
    if s == "none" {
        return Ok(RetryPolicy {
            name: Some("none".into()),
            delays_ms: vec![],
            jitter: 0.0,
        });
    }
    if let Some(p) = RetryPolicy::named(s) {
        return Ok(p);
    }
    let items: Vec<serde_json::Value> = s
        .split(',')
        .map(|part| {
            let part = part.trim();
            match part.parse::<f64>() {
                Ok(n) => serde_json::json!(n),
                Err(_) => serde_json::Value::String(part.to_string()),
            }
        })
        .collect();
    Ok(RetryPolicy::from_json(&serde_json::Value::Array(items))?)
}

/// Checks `--url`: an absolute http(s) URL. `127.0.0.1:9000/hook` (no scheme) would otherwise
/// parse as a URL with the scheme `127.0.0.1`, or not at all.
pub fn check_url(url: &str) -> anyhow::Result<()> {
    let hint = || format!("--url {url:?} needs a scheme, e.g. http://{url}");
    if !url.contains("://") {
        anyhow::bail!(hint());
    }
    let parsed = url::Url::parse(url).with_context(|| format!("--url {url:?} is not a URL"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        anyhow::bail!("--url {url:?}: only http:// and https:// URLs can be sent to");
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        anyhow::bail!("--url {url:?} has no host");
    }
    Ok(())
}

/// Credentials for `profile` from `--secret` (the profile's signing field) and `--set`.
fn credentials(profile: Profile, secret: &str, set: &[String]) -> anyhow::Result<Credentials> {
    let mut options = serde_json::Map::new();
    let secret = super::verify::key_arg(secret.trim()).context("--secret")?;
    if profile == Profile::StandardWebhooks {
        SigningSecret::parse_for_signing(&secret).context("--secret")?;
        return Ok(Credentials::StandardWebhooks(Keys::single(secret)));
    }
    options.insert(
        profile.secret_field().to_string(),
        serde_json::Value::String(secret),
    );
    for kv in set {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--set {kv:?} must look like name=value"))?;
        options.insert(
            k.trim().to_string(),
            serde_json::Value::String(v.to_string()),
        );
    }
    profile
        .create_credentials(&serde_json::Value::Object(options))
        .map(|(c, _)| c)
        .context("--secret/--set")
}

pub async fn run(args: SendArgs) -> anyhow::Result<bool> {
    check_url(&args.url)?;
    let profile: Profile = args.profile.parse().context("--profile")?;
    if profile == Profile::StandardWebhooks && !args.set.is_empty() {
        anyhow::bail!("--set: standard-webhooks takes no credentials but --secret");
    }
    let credentials = if matches!(profile, Profile::Dialect | Profile::WechatPayLegacy)
        || args.dialect.is_some()
        || !args.fields.is_empty()
    {
        super::sign::build_credentials(
            profile,
            Some(args.secret.trim()),
            &args.set,
            args.dialect.as_deref(),
            &args.fields,
        )?
        .0
    } else {
        credentials(profile, &args.secret, &args.set)?
    };
    let payload = super::read_arg_text(&args.json)?;
    let value: serde_json::Value =
        serde_json::from_str(&payload).context("--json is not valid JSON")?;
    if !value.is_object() {
        anyhow::bail!("--json must be a JSON object");
    }
    let retry = parse_retry_arg(&args.retry).context("--retry")?;
    let ack: AckRule = match &args.ack {
        Some(a) => a.parse().context("--ack")?,
        None => profile.default_ack_for(&credentials),
    };
    // What the profile cannot encode is refused before anything is sent.
    let method = profile
        .encode(
            &credentials,
            &herald_protocols::OutgoingNotification {
                notify_id: &profile.new_notify_id(),
                event_type: &args.event_type,
                payload: payload.as_bytes(),
                timestamp: now_ms().to_seconds(),
                created_at: now_ms().to_seconds(),
            },
        )
        .with_context(|| format!("--json cannot be sent as {}", profile.name()))?
        .method;
    let app = Arc::new(AppCtx {
        id: "cli".into(),
        profile,
        credentials,
        retry: retry.clone(),
        ack: ack.clone(),
    });
    let config = EngineConfig {
        request_timeout: Duration::from_secs(args.timeout.max(1)),
        target_policy: Arc::new(TargetPolicy {
            allow_private: !args.block_private_targets,
            allow: vec![],
        }),
        ..EngineConfig::default()
    };
    let sender = HttpAttempter {
        client: build_client(&config).context("cannot build the HTTP client")?,
        policy: config.target_policy.clone(),
        read_cap: config.response_read_cap,
        store_cap: config.response_store_cap,
        clock: config.clock.clone(),
        request_timeout: config.request_timeout,
        urls: Default::default(),
    };
    let mut job = ClaimedDelivery {
        seq: 0,
        id: "cli".into(),
        notify_id: args
            .notify_id
            .clone()
            .unwrap_or_else(|| profile.new_notify_id()),
        notification_id: "cli".into(),
        app: app.clone(),
        endpoint: None,
        url: args.url.clone(),
        event_type: args.event_type.clone(),
        payload: Arc::from(payload.as_str()),
        created_at: now_ms(),
        attempts: 0,
        next_at: now_ms(),
        order_key: None,
    };
    println!(
        "{method} {}  {} notify id {}  ({} attempts at most, ack {})",
        job.url,
        profile.name(),
        job.notify_id,
        retry.max_attempts(),
        ack
    );
    loop {
        let result = sender.send(&job, &app, &job.url, &ack, None).await;
        let a = &result.attempt;
        let status = a
            .status_code
            .map(|s| format!("HTTP {s}"))
            .unwrap_or_else(|| "no response".into());
        let verdict = match (&a.error_class, &a.error) {
            (None, _) => "acknowledged".to_string(),
            (Some(class), Some(msg)) => format!("{class}: {msg}"),
            (Some(class), None) => class.clone(),
        };
        println!("attempt {}  {status}  {} ms  {verdict}", a.n, a.duration_ms);
        if let (Some(body), Some(_)) = (&a.response, &a.error_class) {
            let shown: String = body.chars().take(200).collect();
            println!("  response: {shown:?}");
        }
        let outcome = {
            let mut rng = rand::thread_rng();
            next_outcome(&result.verdict, a.n, &retry, now_ms(), &mut rng)
        };
        match outcome {
            AttemptOutcome::Succeeded => {
                println!("delivered: acknowledged on attempt {}", a.n);
                return Ok(true);
            }
            AttemptOutcome::Failed => {
                println!("failed: not acknowledged after {} attempts", a.n);
                return Ok(false);
            }
            AttemptOutcome::Retry { next_at } => {
                let wait = next_at.saturating_sub(now_ms());
                println!(
                    "  next attempt in {:.1} s",
                    wait.as_millis() as f64 / 1000.0
                );
                tokio::time::sleep(wait).await;
                job.attempts = a.n;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_argument_accepts_names_lists_and_none() {
        assert_eq!(
            parse_retry_arg("alipay").unwrap(),
            RetryPolicy::named("alipay").unwrap()
        );
        assert_eq!(
            parse_retry_arg("1,5,30s").unwrap().delays_ms,
            vec![1000, 5000, 30_000]
        );
        assert_eq!(
            parse_retry_arg("0.1, 2m").unwrap().delays_ms,
            vec![100, 120_000]
        );
        assert!(parse_retry_arg("none").unwrap().delays_ms.is_empty());
        assert!(parse_retry_arg("soon").is_err());
    }
}
