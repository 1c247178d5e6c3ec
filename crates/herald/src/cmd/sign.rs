//! `herald sign`: print the exact signed request Herald would send for a payload, with any
//! profile: to compare against what a receiver expects, or to replay by hand.
//!
//! The output is the capture format of [`super::capture`] (method line, headers with a
//! `Content-Length`, empty line, body), so `herald verify --request -` reads it back. Without
//! `--key` the generated signing key (the private key, or the shared secret) is written to a
//! file (`--key-out`, owner-only permissions) whose path is printed on standard error, before
//! the request is printed: `herald sign ... | herald verify --key THAT_FILE --request -`
//! round-trips.
use anyhow::Context as _;
use clap::Args;
use herald_protocols::{Credentials, OutgoingNotification, Profile};
use serde_json::{Map, Value};

#[derive(Args, Debug)]
pub struct SignArgs {
    /// Wire profile: standard-webhooks, alipay, wechatpay-v2, wechatpay-v3, stripe,
    /// wechatpay-legacy, dialect (see --dialect).
    #[arg(long)]
    pub profile: String,
    /// The signing key (a whsec_/whsk_ secret, an RSA private key as PEM, base64 or file
    /// path, a WeChat API key, the wechatpay-legacy partner key, a dialect's key). Omitted:
    /// one is generated, written to --key-out, and the other generated credentials are shown
    /// on standard error.
    #[arg(long, value_name = "KEY")]
    pub key: Option<String>,
    /// Where a generated signing key is written (replaced if present; readable by the owner
    /// only). Default: herald-sign-<profile>.key in the current directory.
    #[arg(long, value_name = "FILE", conflicts_with = "key")]
    pub key_out: Option<std::path::PathBuf>,
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

pub fn run(args: SignArgs) -> anyhow::Result<()> {
    let profile: Profile = args.profile.parse()?;
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
) -> anyhow::Result<(herald_protocols::Credentials, Value)> {
    let mut options = Map::new();
    if let Some(k) = key {
        options.insert(
            profile.secret_field().to_string(),
            Value::String(super::verify::key_arg(k).context("--key")?),
        );
    }
    for kv in set {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--set {kv:?} must look like name=value"))?;
        options.insert(k.trim().to_string(), Value::String(v.to_string()));
    }
    if dialect.is_some() || !fields.is_empty() {
        if profile != Profile::Dialect {
            anyhow::bail!(
                "--dialect and --field apply to the dialect profile only, not {}",
                profile.name()
            );
        }
        if let Some(d) = dialect {
            let d = super::verify::load_dialect(d)?;
            options.insert("dialect".into(), serde_json::to_value(d)?);
        }
        let mut given = Map::new();
        for kv in fields {
            let (k, v) = kv
                .split_once('=')
                .with_context(|| format!("--field {kv:?} must look like name=value"))?;
            given.insert(k.trim().to_string(), Value::String(v.to_string()));
        }
        options.insert("fields".into(), Value::Object(given));
    }
    profile
        .create_credentials(&Value::Object(options))
        .context("credentials")
}

fn sign_with(
    args: SignArgs,
    profile: Profile,
    credentials: herald_protocols::Credentials,
    view: Value,
) -> anyhow::Result<()> {
    let mut payload = Vec::new();
    std::io::Read::read_to_end(&mut std::io::stdin(), &mut payload)
        .context("cannot read the payload")?;
    let parsed: Value =
        serde_json::from_slice(&payload).context("the payload is not valid JSON")?;
    if !parsed.is_object() {
        anyhow::bail!("the payload must be a JSON object");
    }
    let headers = args
        .headers
        .iter()
        .map(|h| super::verify::parse_header(h))
        .collect::<Result<Vec<_>, _>>()?;
    let now = args
        .now
        .unwrap_or_else(|| herald_engine::now_ms().to_seconds().get());
    let notify_id = args
        .notify_id
        .clone()
        .unwrap_or_else(|| profile.new_notify_id());
    let encoded = profile.encode(
        &credentials,
        &OutgoingNotification {
            notify_id: &notify_id,
            event_type: &args.event_type,
            payload: &payload,
            timestamp: herald_protocols::UnixSeconds::new(now),
            created_at: herald_protocols::UnixSeconds::new(now),
        },
    )?;
    if args.key.is_none() {
        let path = args
            .key_out
            .clone()
            .unwrap_or_else(|| format!("herald-sign-{}.key", profile.name()).into());
        write_key(&path, &signing_key(&credentials, &view))?;
        eprintln!(
            "generated signing key written to {} (pass it back with --key to sign again, or to verify)",
            path.display()
        );
        eprintln!(
            "generated credentials (pass them back with --set to sign again):\n{}",
            serde_json::to_string_pretty(&view).unwrap_or_default()
        );
    }
    // The request line: the method, and the query on the target when the profile signs one
    // (send it on the notify URL as ?QUERY).
    let mut all = Vec::new();
    if !encoded.content_type.is_empty() {
        all.push(("Content-Type".to_string(), encoded.content_type.to_string()));
    }
    all.extend(encoded.headers.iter().cloned());
    all.extend(headers);
    let mut out = Vec::new();
    if encoded.query.is_empty() {
        out.extend_from_slice(format!("{}\n", encoded.method).as_bytes());
    } else {
        out.extend_from_slice(format!("{} /?{}\n", encoded.method, encoded.query).as_bytes());
    }
    for (k, v) in &all {
        out.extend_from_slice(format!("{k}: {v}\n").as_bytes());
    }
    out.extend_from_slice(format!("Content-Length: {}\n\n", encoded.body.len()).as_bytes());
    out.extend_from_slice(&encoded.body);
    out.push(b'\n');
    std::io::Write::write_all(&mut std::io::stdout(), &out).context("cannot write the request")?;
    Ok(())
}

/// The generated material that signs: the RSA private key (PKCS#8 PEM) for alipay and
/// wechatpay-v3 (and an RSA dialect), the shared secret (whsec_, API key, partner key, a
/// dialect's key) for the others.
fn signing_key(credentials: &Credentials, view: &Value) -> String {
    match credentials {
        Credentials::Alipay(c) => c.private_key.clone(),
        Credentials::WechatPayV3(c) => c.private_key.clone(),
        Credentials::StandardWebhooks(_) => view["secret"].as_str().unwrap_or_default().into(),
        Credentials::Stripe(_) => view["secret"].as_str().unwrap_or_default().into(),
        Credentials::WechatPayV2(c) => c.api_key.clone(),
        Credentials::WechatPayLegacy(c) => c.partner_key.clone(),
        Credentials::Dialect(c) => c.key.clone(),
    }
}

/// Writes `key` to `path`, readable and writable by its owner only.
fn write_key(path: &std::path::Path, key: &str) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options
        .open(path)
        .with_context(|| format!("--key-out {}: cannot create it", path.display()))?;
    std::io::Write::write_all(&mut f, format!("{}\n", key.trim()).as_bytes())
        .with_context(|| format!("--key-out {}: cannot write it", path.display()))
}
