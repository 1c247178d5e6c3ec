//! `herald sign`: print the exact signed request Herald would send for a payload, with any
//! profile: to compare against what a receiver expects, or to replay by hand.
use clap::Args;
use herald_protocols::{OutgoingNotification, Profile};
use serde_json::{Map, Value};

#[derive(Args, Debug)]
pub struct SignArgs {
    /// Wire profile: standard-webhooks, alipay, wechatpay-v2, wechatpay-v3, stripe,
    /// wechatpay-legacy, dialect (see --dialect).
    #[arg(long)]
    pub profile: String,
    /// The signing key (a whsec_/whsk_ secret, an RSA private key as PEM, base64 or file
    /// path, a WeChat API key, the wechatpay-legacy partner key, a dialect's key). Omitted:
    /// generated and shown.
    #[arg(long, value_name = "KEY")]
    pub key: Option<String>,
    /// Another credentials field, as name=value (e.g. app_id=2021..., mchid=..., serial=...,
    /// api_v3_key=..., app_key=... for wechatpay-legacy). Repeatable.
    #[arg(long = "set", value_name = "NAME=VALUE")]
    pub set: Vec<String>,
    /// dialect: a preset name (epay) or a TOML/JSON dialect file. Default: epay.
    #[arg(long, value_name = "PRESET|FILE")]
    pub dialect: Option<String>,
    /// A dialect's fixed field, as name=value (e.g. pid=1001). Repeatable.
    #[arg(long = "field", value_name = "NAME=VALUE")]
    pub fields: Vec<String>,
    /// An extra header to include, as 'Name: value'. Repeatable.
    #[arg(long = "header", short = 'H', value_name = "'NAME: VALUE'")]
    pub headers: Vec<String>,
    /// Event type of the notification.
    #[arg(long, default_value = "payment.succeeded")]
    pub event_type: String,
    /// The notify id (default: a fresh one in the profile's format).
    #[arg(long)]
    pub notify_id: Option<String>,
    /// Unix seconds to sign at (default: now).
    #[arg(long, value_name = "UNIX")]
    pub now: Option<i64>,
}

pub fn run(args: SignArgs) -> Result<(), String> {
    let profile: Profile = args
        .profile
        .parse()
        .map_err(|e: herald_protocols::ProfileError| e.to_string())?;
    let (credentials, view) = build_credentials(
        profile,
        args.key.as_deref(),
        &args.set,
        args.dialect.as_deref(),
        &args.fields,
    )?;
    sign_with(args, profile, credentials, view)
}

/// Credentials from the CLI's `--key` (the profile's secret field), `--set name=value`,
/// `--dialect` and `--field name=value` (dialect only); what is not given is generated.
/// Returns them and their once-shown view.
pub fn build_credentials(
    profile: Profile,
    key: Option<&str>,
    set: &[String],
    dialect: Option<&str>,
    fields: &[String],
) -> Result<(herald_protocols::Credentials, Value), String> {
    let mut options = Map::new();
    if let Some(k) = key {
        options.insert(
            profile.secret_field().to_string(),
            Value::String(super::verify::key_arg(k)),
        );
    }
    for kv in set {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| format!("--set {kv:?} must look like name=value"))?;
        options.insert(k.trim().to_string(), Value::String(v.to_string()));
    }
    if dialect.is_some() || !fields.is_empty() {
        if profile != Profile::Dialect {
            return Err(format!(
                "--dialect and --field apply to the dialect profile only, not {}",
                profile.name()
            ));
        }
        if let Some(d) = dialect {
            let d = super::verify::load_dialect(d)?;
            options.insert(
                "dialect".into(),
                serde_json::to_value(d).map_err(|e| e.to_string())?,
            );
        }
        let mut given = Map::new();
        for kv in fields {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("--field {kv:?} must look like name=value"))?;
            given.insert(k.trim().to_string(), Value::String(v.to_string()));
        }
        options.insert("fields".into(), Value::Object(given));
    }
    profile
        .create_credentials(&Value::Object(options))
        .map_err(|e| format!("credentials: {e}"))
}

fn sign_with(
    args: SignArgs,
    profile: Profile,
    credentials: herald_protocols::Credentials,
    view: Value,
) -> Result<(), String> {
    let mut payload = Vec::new();
    std::io::Read::read_to_end(&mut std::io::stdin(), &mut payload)
        .map_err(|e| format!("cannot read the payload: {e}"))?;
    let parsed: Value = serde_json::from_slice(&payload)
        .map_err(|e| format!("the payload is not valid JSON: {e}"))?;
    if !parsed.is_object() {
        return Err("the payload must be a JSON object".into());
    }
    let headers = args
        .headers
        .iter()
        .map(|h| super::verify::parse_header(h))
        .collect::<Result<Vec<_>, _>>()?;
    let now = args.now.unwrap_or_else(|| herald_engine::now_ms() / 1000);
    let notify_id = args
        .notify_id
        .clone()
        .unwrap_or_else(|| profile.new_notify_id());
    let encoded = profile
        .encode(
            &credentials,
            &OutgoingNotification {
                notify_id: &notify_id,
                event_type: &args.event_type,
                payload: &payload,
                timestamp: now,
                created_at: now,
            },
        )
        .map_err(|e| e.to_string())?;
    if args.key.is_none() {
        eprintln!(
            "generated credentials (pass them back with --key/--set to sign again):\n{}",
            serde_json::to_string_pretty(&view).unwrap_or_default()
        );
    }
    // The request line: the method, and the query when the profile signs one (send it on
    // the notify URL as ?QUERY).
    if encoded.query.is_empty() {
        println!("{}", encoded.method);
    } else {
        println!("{} ?{}", encoded.method, encoded.query);
    }
    if !encoded.content_type.is_empty() {
        println!("Content-Type: {}", encoded.content_type);
    }
    for (k, v) in encoded.headers.iter().chain(headers.iter()) {
        println!("{k}: {v}");
    }
    println!();
    println!("{}", String::from_utf8_lossy(&encoded.body));
    Ok(())
}
