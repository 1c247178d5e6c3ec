//! The published test vectors in `tests/data/given.json` (test data in the repository; a
//! missing file fails these tests).
use herald_protocols::standard_webhooks::{sign, verify, SigningSecret, VerifyError, VerifyKey};
use serde_json::Value;

/// The published vectors, kept in the repository as test data (a copy of the project's
/// `vectors/given.json`). A missing file fails the tests that read it.
const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/given.json");

fn standard_webhooks_vectors() -> Vec<Value> {
    let text = std::fs::read_to_string(VECTORS)
        .unwrap_or_else(|e| panic!("cannot read the published vectors at {VECTORS}: {e}"));
    let all: Value = serde_json::from_str(&text).unwrap();
    let list = all["standard-webhooks"].as_array().unwrap().clone();
    assert!(
        !list.is_empty(),
        "no standard-webhooks vectors in {VECTORS}"
    );
    list
}

struct Vector<'a> {
    name: &'a str,
    secret: &'a str,
    id: &'a str,
    timestamp: i64,
    payload: &'a str,
    signature: &'a str,
    valid: bool,
}

fn fields(v: &Value) -> Vector<'_> {
    Vector {
        name: v["name"].as_str().unwrap(),
        secret: v["secret"].as_str().unwrap(),
        id: v["id"].as_str().unwrap(),
        timestamp: v["timestamp"].as_i64().unwrap(),
        payload: v["payload"].as_str().unwrap(),
        signature: v["signature"].as_str().unwrap(),
        valid: v["valid"].as_bool().unwrap(),
    }
}

fn verify_vector(v: &Vector<'_>) -> Result<(), VerifyError> {
    let key = VerifyKey::parse(v.secret).unwrap();
    verify(
        v.id,
        &v.timestamp.to_string(),
        v.signature,
        v.payload.as_bytes(),
        &[key],
        v.timestamp,
    )
}

#[test]
fn valid_standard_webhooks_vector_verifies_at_its_timestamp() {
    let list = standard_webhooks_vectors();
    let mut checked = 0;
    for v in list.iter().map(fields).filter(|v| v.valid) {
        assert_eq!(verify_vector(&v), Ok(()), "{}", v.name);
        checked += 1;
    }
    assert!(checked > 0, "no valid vector");
}

#[test]
fn altered_signature_vector_is_rejected() {
    let list = standard_webhooks_vectors();
    let mut checked = 0;
    for v in list.iter().map(fields).filter(|v| !v.valid) {
        assert_eq!(
            verify_vector(&v),
            Err(VerifyError::NoMatchingSignature),
            "{}",
            v.name
        );
        checked += 1;
    }
    assert!(checked > 0, "no invalid vector");
}

#[test]
fn signing_the_valid_vector_reproduces_its_signature() {
    let list = standard_webhooks_vectors();
    for v in list.iter().map(fields).filter(|v| v.valid) {
        let secret = SigningSecret::parse(v.secret).unwrap();
        let header = sign(v.id, v.timestamp, v.payload.as_bytes(), &[secret]);
        assert_eq!(header, v.signature, "{}", v.name);
    }
}

#[test]
fn valid_vector_is_rejected_outside_the_five_minute_window() {
    let list = standard_webhooks_vectors();
    for v in list.iter().map(fields).filter(|v| v.valid) {
        let key = VerifyKey::parse(v.secret).unwrap();
        let got = verify(
            v.id,
            &v.timestamp.to_string(),
            v.signature,
            v.payload.as_bytes(),
            &[key],
            v.timestamp + 301,
        );
        assert!(
            matches!(got, Err(VerifyError::TimestampOutOfWindow { .. })),
            "{}: {got:?}",
            v.name
        );
    }
}
