//! `herald verify`: check a captured request offline with any profile's keys, print the
//! decoded notification, and (`--explain`) show the exact string that was signed: the
//! fastest way to debug a signature mismatch.
//!
//! It answers the signature question first: a correctly signed body that a receiver would
//! still refuse (a Stripe event without `type`, a WeChat body without `return_code`, a v3
//! resource the APIv3 key does not decrypt) is reported as a valid signature (exit 0) with a
//! note saying why a receiver refuses it; only a bad signature (or timestamp) exits 1.
//! WeChat Pay v2 refund notifications are unsigned: decrypting `req_info` with the API key
//! is their check, and the decrypted refund is shown under `fields.req_info`.
use anyhow::Context as _;
use std::io::Read;

use clap::Args;
use herald_protocols::dialect::Dialect;
use herald_protocols::profile::ReceiverKeys;
use herald_protocols::receive::{IncomingRequest, Refusal};
use herald_protocols::wechatpay_v2::SignType;
use herald_protocols::Profile;

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Wire profile: standard-webhooks, alipay, wechatpay-v2, wechatpay-v3, stripe,
    /// wechatpay-legacy (2014 Tenpay-era WeChat Pay), dialect (an aggregator's variant; see
    /// --dialect).
    #[arg(long)]
    pub profile: String,
    /// Verification key: a secret (whsec_..., a WeChat API key, a dialect's key), a public
    /// key (PEM, bare base64 DER, certificate), or a path to a file holding one. Repeatable
    /// (any may match). For wechatpay-v3 a key may be given as SERIAL=key; wechatpay-legacy
    /// needs the partner key and appkey=APPKEY.
    #[arg(long = "key", required = true, value_name = "KEY")]
    pub keys: Vec<String>,
    /// wechatpay-v3: the 32-character APIv3 key that decrypts the resource.
    #[arg(long, value_name = "KEY")]
    pub decrypt_key: Option<String>,
    /// wechatpay-v2: the merchant's sign type (MD5 or HMAC-SHA256). Without it the sign's
    /// length decides (32 hex digits MD5, 64 HMAC-SHA256).
    #[arg(long, value_name = "TYPE")]
    pub sign_type: Option<String>,
    /// dialect: a preset name (epay) or a TOML/JSON file describing the dialect (canonical,
    /// exclude, drop_empty, key_placement, algorithm, hex_case, signature, fields, ack...).
    /// Default: epay.
    #[arg(long, value_name = "PRESET|FILE")]
    pub dialect: Option<String>,
    /// A request header, as 'Name: value'. Repeatable.
    #[arg(long = "header", short = 'H', value_name = "'NAME: VALUE'")]
    pub headers: Vec<String>,
    /// The request's Content-Type (the same as --header 'Content-Type: ...').
    #[arg(long, value_name = "TYPE")]
    pub content_type: Option<String>,
    /// HTTP method: POST for notifications, GET for return_url redirects.
    #[arg(long, default_value = "POST")]
    pub method: String,
    /// The query string (without '?'): of a GET redirect or GET dialect notification, or the
    /// signed query of a wechatpay-legacy notification.
    #[arg(long, default_value = "")]
    pub query: String,
    /// Unix seconds to use as "now" for timestamp windows (to re-check an old capture).
    #[arg(long, value_name = "UNIX")]
    pub now: Option<i64>,
    /// Print the exact string that was signed before the result.
    #[arg(long)]
    pub explain: bool,
    /// Read the whole request (method, target, headers, body) from FILE, `-` for standard
    /// input: a file `herald listen --dump DIR` saved, or what `herald sign` prints. --header
    /// and --content-type add to its headers; --method and --query are taken from it.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["method", "query"])]
    pub request: Option<String>,
}

/// Reads `--key` style arguments: a file's contents when the value names a file. A value that
/// can only be a path (it starts with `/`, `./`, `../` or `~/`, or ends in a file extension
/// such as `.pem`: base64 and PEM keys never contain a `.`) but names no file is refused with
/// "no such file", not parsed as a key.
pub fn key_arg(value: &str) -> anyhow::Result<String> {
    let (prefix, rest) = match value.split_once('=') {
        // SERIAL=key: keep the serial, read the key part.
        Some((serial, key))
            if !serial.is_empty()
                && serial
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && !key.is_empty()
                && !value.starts_with("whsec_") =>
        {
            (Some(serial), key)
        }
        _ => (None, value),
    };
    let path = std::path::Path::new(rest);
    let text = if rest.len() < 4096 && path.is_file() {
        std::fs::read_to_string(path)
            .map(|s| s.trim().to_string())
            .with_context(|| format!("cannot read the key file {rest}"))?
    } else if looks_like_path(rest) {
        // Ask the file system why, so the error carries its cause (no such file, no
        // permission, a directory).
        let cause = match std::fs::metadata(path) {
            Err(e) => anyhow::Error::new(e),
            Ok(_) => anyhow::anyhow!("not a regular file"),
        };
        let missing = cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::NotFound);
        let what = if missing {
            "does not exist"
        } else {
            "cannot be read"
        };
        return Err(cause.context(format!(
            "the key file {rest} {what} (give a path to an existing file, or the key itself)"
        )));
    } else {
        rest.to_string()
    };
    Ok(match prefix {
        Some(serial) => format!("{serial}={text}"),
        None => text,
    })
}

/// True when `v` can only be meant as a file path: keys are PEM (`-----BEGIN`), base64
/// (`A-Z a-z 0-9 + / =`), `whsec_`/`whsk_`/`whpk_` strings or WeChat API keys, none of which
/// starts like a relative or home path or ends in a short file extension.
fn looks_like_path(v: &str) -> bool {
    if v.contains("-----") || v.chars().any(char::is_whitespace) {
        return false;
    }
    let prefixed = ["./", "../", "~/", ".\\"].iter().any(|p| v.starts_with(p))
        || (v.starts_with('/') && v.len() < 512);
    let extension = v.rsplit_once('.').is_some_and(|(stem, ext)| {
        !stem.is_empty()
            && (1..=5).contains(&ext.len())
            && ext.bytes().all(|b| b.is_ascii_alphanumeric())
            && ext.bytes().any(|b| b.is_ascii_alphabetic())
    });
    prefixed || extension
}

/// Applies `--sign-type` to wechatpay-v2 receiver keys; refused for other profiles.
pub fn with_sign_type(
    profile: Profile,
    keys: ReceiverKeys,
    sign_type: Option<&str>,
) -> anyhow::Result<ReceiverKeys> {
    let Some(name) = sign_type else {
        return Ok(keys);
    };
    let parsed = SignType::parse(name.trim())
        .with_context(|| format!("--sign-type {name:?}: expected MD5 or HMAC-SHA256"))?;
    match keys {
        ReceiverKeys::WechatPayV2(k) => Ok(ReceiverKeys::WechatPayV2(k.with_sign_type(parsed))),
        _ => Err(anyhow::anyhow!(
            "--sign-type applies to wechatpay-v2 only, not {}",
            profile.name()
        )),
    }
}

/// A dialect from `--dialect`: a preset name, or a TOML or JSON file.
pub fn load_dialect(value: &str) -> anyhow::Result<Dialect> {
    if let Some(d) = Dialect::preset(value) {
        return Ok(d);
    }
    let path = std::path::Path::new(value);
    if !path.is_file() {
        anyhow::bail!(
            "--dialect {value:?}: neither a preset ({}) nor a file",
            herald_protocols::dialect::PRESETS.join(", ")
        );
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("--dialect: cannot read {value}"))?;
    let d: Dialect = if text.trim_start().starts_with('{') {
        serde_json::from_str(&text).with_context(|| format!("--dialect {value}"))?
    } else {
        toml::from_str(&text).with_context(|| format!("--dialect {value}"))?
    };
    d.check()
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("--dialect {value}"))?;
    Ok(d)
}

/// Applies `--dialect` to dialect receiver keys (rebuilt with the keys for that dialect);
/// refused for other profiles.
pub fn with_dialect(
    profile: Profile,
    keys: ReceiverKeys,
    raw_keys: &[String],
    dialect: Option<&str>,
) -> anyhow::Result<ReceiverKeys> {
    let Some(value) = dialect else {
        return Ok(keys);
    };
    if profile != Profile::Dialect {
        anyhow::bail!(
            "--dialect applies to the dialect profile only, not {}",
            profile.name()
        );
    }
    let d = load_dialect(value)?;
    herald_protocols::dialect::receiver_keys(d, raw_keys)
        .map(|k| ReceiverKeys::Dialect(Box::new(k)))
        .context("--key")
}

pub fn parse_header(h: &str) -> anyhow::Result<(String, String)> {
    let (name, value) = h
        .split_once(':')
        .with_context(|| format!("--header {h:?} must look like 'Name: value'"))?;
    let name = name.trim();
    if name.is_empty() {
        anyhow::bail!("--header {h:?} has no name");
    }
    Ok((name.to_string(), value.trim().to_string()))
}

/// Returns Ok(true) when valid, Ok(false) when invalid (already reported), Err on bad usage.
pub fn run(args: VerifyArgs) -> anyhow::Result<bool> {
    let profile: Profile = args.profile.parse()?;
    // The request first: `herald sign | herald verify --key FILE` reads a key file that
    // `sign` writes before it prints anything.
    let mut input = Vec::new();
    let captured = match args.request.as_deref() {
        Some("-") | None => {
            std::io::stdin()
                .read_to_end(&mut input)
                .context("cannot read standard input")?;
            match args.request {
                Some(_) => Some(super::capture::parse(&input).context("--request -")?),
                None => None,
            }
        }
        Some(path) => {
            let bytes = std::fs::read(path).with_context(|| format!("--request {path}"))?;
            Some(super::capture::parse(&bytes).with_context(|| format!("--request {path}"))?)
        }
    };
    let keys: Vec<String> = args
        .keys
        .iter()
        .map(|k| key_arg(k))
        .collect::<Result<_, _>>()
        .context("--key")?;
    let decrypt = args
        .decrypt_key
        .as_deref()
        .map(key_arg)
        .transpose()
        .context("--decrypt-key")?;
    let receiver_keys = profile
        .receiver_keys(&keys, decrypt.as_deref())
        .context("--key")?;
    let receiver_keys = with_sign_type(profile, receiver_keys, args.sign_type.as_deref())?;
    let receiver_keys = with_dialect(profile, receiver_keys, &keys, args.dialect.as_deref())?;
    let extra = args
        .headers
        .iter()
        .map(|h| parse_header(h))
        .collect::<Result<Vec<_>, _>>()?;
    let (method, query, mut headers, body) = match captured {
        Some(c) => (c.method, c.query, c.headers, c.body),
        None => (args.method.clone(), args.query.clone(), Vec::new(), input),
    };
    headers.extend(extra);
    if let Some(ct) = &args.content_type {
        headers.push(("Content-Type".to_string(), ct.clone()));
    }
    let now = args
        .now
        .unwrap_or_else(|| herald_engine::now_ms().to_seconds().get());
    let req = IncomingRequest {
        method: &method,
        headers: &headers,
        query: &query,
        body: &body,
        now,
    };
    if args.explain {
        match profile.explain(&receiver_keys, &req) {
            Ok(s) => println!("string to sign:\n{s}\n"),
            Err(e) => println!("string to sign: unavailable ({e})\n"),
        }
    }
    match profile.verify_detailed(&receiver_keys, &req) {
        Ok(n) => {
            println!("{}", serde_json::to_string_pretty(&n)?);
            Ok(true)
        }
        Err(Refusal {
            error,
            signature_valid: true,
        }) => {
            println!("valid signature");
            println!(
                "note: not a complete {} notification; a receiver would still refuse it: {error}",
                profile.name()
            );
            Ok(true)
        }
        Err(Refusal { error, .. }) => {
            println!("invalid: {error}");
            Ok(false)
        }
    }
}
