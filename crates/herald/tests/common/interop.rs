//! The providers' own Python SDKs as a test oracle, shared by test files that check what
//! Herald sends (the same venv and verify.py as tests/interop.rs).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use base64::Engine as _;
use serde_json::{json, Value};

pub fn interop_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

/// The venv's python, created and filled once.
pub fn python() -> &'static PathBuf {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/interop-venv");
        let py = venv.join("bin/python");
        let ready = py.exists()
            && Command::new(&py)
                .args([
                    "-c",
                    "import alipay, wechatpy, wechatpayv3, stripe, standardwebhooks",
                ])
                .status()
                .is_ok_and(|s| s.success());
        if !ready {
            let status = Command::new("python3")
                .args(["-m", "venv"])
                .arg(&venv)
                .status()
                .expect("python3 is needed for the interop tests");
            assert!(status.success(), "python3 -m venv failed");
            let status = Command::new(&py)
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "-r",
                ])
                .arg(interop_dir().join("requirements.txt"))
                .status()
                .expect("pip runs");
            assert!(status.success(), "installing the provider SDKs failed");
        }
        py
    })
}

/// Runs the SDK checker; returns (accepted, its output).
pub fn sdk_check(
    profile: &str,
    headers: &BTreeMap<String, String>,
    body: &[u8],
    keys: &Value,
) -> (bool, String) {
    let input = json!({
        "profile": profile,
        "headers": headers,
        "body_b64": base64::engine::general_purpose::STANDARD.encode(body),
        "keys": keys,
    });
    let mut child = Command::new(python())
        .arg(interop_dir().join("verify.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run verify.py");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    match out.status.code() {
        Some(0) => (true, text),
        Some(1) => (false, text),
        _ => panic!("verify.py failed to run: {text}"),
    }
}

/// Calls the sandbox at `base` with the provider's SDK (`client.py`): `op` is `query` or
/// `refund`, `args` the SDK method's keyword arguments. Returns `{"ok": true, "result"}` when
/// the SDK returned (its response checks passed), `{"ok": false, "error"}` when it raised.
pub fn sdk_call(profile: &str, base: &str, keys: &Value, op: &str, args: Value) -> Value {
    let input = json!({"profile": profile, "base": base, "keys": keys, "op": op, "args": args});
    let mut child = Command::new(python())
        .arg(interop_dir().join("client.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run client.py");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "client.py failed to run: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "client.py printed no JSON ({e}): {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}
