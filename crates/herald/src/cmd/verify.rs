//! `herald verify`: check a captured request offline with any profile's keys, print the
//! decoded notification, and (`--explain`) show the exact string that was signed: the
//! fastest way to debug a signature mismatch.
use std::io::Read;

use clap::Args;
use herald_protocols::receive::IncomingRequest;
use herald_protocols::Profile;

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Wire profile: standard-webhooks, alipay, wechatpay-v2, wechatpay-v3, stripe.
    #[arg(long)]
    pub profile: String,
    /// Verification key: a secret (whsec_..., a WeChat API key), a public key (PEM, bare
    /// base64 DER, certificate), or a path to a file holding one. Repeatable (any may match).
    /// For wechatpay-v3 a key may be given as SERIAL=key.
    #[arg(long = "key", required = true, value_name = "KEY")]
    pub keys: Vec<String>,
    /// wechatpay-v3: the 32-character APIv3 key that decrypts the resource.
    #[arg(long, value_name = "KEY")]
    pub decrypt_key: Option<String>,
    /// A request header, as 'Name: value'. Repeatable.
    #[arg(long = "header", short = 'H', value_name = "'NAME: VALUE'")]
    pub headers: Vec<String>,
    /// The request's Content-Type (the same as --header 'Content-Type: ...').
    #[arg(long, value_name = "TYPE")]
    pub content_type: Option<String>,
    /// HTTP method: POST for notifications, GET for return_url redirects.
    #[arg(long, default_value = "POST")]
    pub method: String,
    /// The query string of a GET redirect (without '?').
    #[arg(long, default_value = "")]
    pub query: String,
    /// Unix seconds to use as "now" for timestamp windows (to re-check an old capture).
    #[arg(long, value_name = "UNIX")]
    pub now: Option<i64>,
    /// Print the exact string that was signed before the result.
    #[arg(long)]
    pub explain: bool,
}

/// Reads `--key` style arguments: a file's contents when the value names a file.
pub fn key_arg(value: &str) -> String {
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
            .unwrap_or_else(|_| rest.to_string())
    } else {
        rest.to_string()
    };
    match prefix {
        Some(serial) => format!("{serial}={text}"),
        None => text,
    }
}

pub fn parse_header(h: &str) -> Result<(String, String), String> {
    let (name, value) = h
        .split_once(':')
        .ok_or_else(|| format!("--header {h:?} must look like 'Name: value'"))?;
    let name = name.trim();
    if name.is_empty() {
        return Err(format!("--header {h:?} has no name"));
    }
    Ok((name.to_string(), value.trim().to_string()))
}

/// Returns Ok(true) when valid, Ok(false) when invalid (already reported), Err on bad usage.
pub fn run(args: VerifyArgs) -> Result<bool, String> {
    let profile: Profile = args
        .profile
        .parse()
        .map_err(|e: herald_protocols::ProfileError| e.to_string())?;
    let keys: Vec<String> = args.keys.iter().map(|k| key_arg(k)).collect();
    let decrypt = args.decrypt_key.as_deref().map(key_arg);
    let receiver_keys = profile
        .receiver_keys(&keys, decrypt.as_deref())
        .map_err(|e| format!("--key: {e}"))?;
    let mut headers = args
        .headers
        .iter()
        .map(|h| parse_header(h))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(ct) = &args.content_type {
        headers.push(("Content-Type".to_string(), ct.clone()));
    }
    let mut body = Vec::new();
    std::io::stdin()
        .read_to_end(&mut body)
        .map_err(|e| format!("cannot read the body from standard input: {e}"))?;
    let now = args.now.unwrap_or_else(|| herald_engine::now_ms() / 1000);
    let req = IncomingRequest {
        method: &args.method,
        headers: &headers,
        query: &args.query,
        body: &body,
        now,
    };
    if args.explain {
        match profile.explain(&receiver_keys, &req) {
            Ok(s) => println!("string to sign:\n{s}\n"),
            Err(e) => println!("string to sign: unavailable ({e})\n"),
        }
    }
    match profile.verify(&receiver_keys, &req) {
        Ok(n) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&n).map_err(|e| e.to_string())?
            );
            Ok(true)
        }
        Err(e) => {
            println!("invalid: {e}");
            Ok(false)
        }
    }
}
