//! RSA key handling shared by the RSA-signed profiles ([`crate::alipay`] and
//! [`crate::wechatpay_v3`]).
//!
//! Owns reading RSA keys in every form a merchant pastes them (PEM `PUBLIC KEY` / `RSA PUBLIC
//! KEY` / `CERTIFICATE` / `PRIVATE KEY` / `RSA PRIVATE KEY`, or the bare base64 DER the Alipay
//! console shows), generating and exporting key pairs, and SHA256withRSA / SHA1withRSA
//! (PKCS#1 v1.5) signatures in standard base64.
//!
//! The PEM armour is read leniently (CRLF, indentation, literal `\n` from `.env` files, lines of
//! any length), then the DER inside is handed to the RustCrypto parsers; nothing here does
//! crypto itself. Errors name the form that was expected, never the key's content.
use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use rand::rngs::OsRng;
use rsa::pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey};
use rsa::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding,
};
use rsa::traits::PublicKeyParts;
use rsa::{Pkcs1v15Sign, RsaPrivateKey, RsaPublicKey};
use sha2::Digest;
use x509_cert::der::Decode;

/// The size of generated keys, and the smallest key Herald accepts to sign with.
pub const RSA_BITS: usize = 2048;

/// Standard base64 accepting input with or without `=` padding.
const LENIENT_B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a key was refused. Messages describe the expected form, never the key material.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("the key is empty")]
    Empty,
    #[error("the PEM armour is malformed (expected -----BEGIN ...----- base64 -----END ...-----)")]
    BadPem,
    #[error("a PEM {0:?} block is not an RSA key in a supported form (expected PUBLIC KEY, RSA PUBLIC KEY, CERTIFICATE, PRIVATE KEY or RSA PRIVATE KEY)")]
    UnsupportedPem(String),
    #[error("encrypted private keys are not supported; export the key without a passphrase")]
    Encrypted,
    #[error("the key is neither PEM nor valid base64")]
    BadBase64,
    /// The source is the DER parser's error for the form tried first (or the only form the
    /// PEM label allows).
    #[error("not a valid RSA public key (tried SPKI, PKCS#1, X.509 certificate, and a private key to derive one from)")]
    BadPublicKey(#[source] DerError),
    /// The source is the DER parser's error for the form tried first (PKCS#8), or the only
    /// form the PEM label allows.
    #[error("not a valid RSA private key (tried PKCS#8 and PKCS#1)")]
    BadPrivateKey(#[source] DerError),
    #[error("the certificate cannot be read, or does not carry an RSA public key")]
    BadCertificate(#[source] DerError),
    #[error("the RSA key has {bits} bits; at least {min} are required")]
    TooSmall { bits: usize, min: usize },
    #[error("cannot export the key")]
    Export,
    #[error("RSA signing failed")]
    Sign,
}

/// Why DER bytes are not a key of the form tried: the RustCrypto parser's own error, which
/// names a position, a tag or a length, never the bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DerError {
    #[error("as PKCS#8")]
    Pkcs8(#[source] rsa::pkcs8::Error),
    #[error("as PKCS#1")]
    Pkcs1(#[source] rsa::pkcs1::Error),
    #[error("as SPKI")]
    Spki(#[source] rsa::pkcs8::spki::Error),
    #[error("as an X.509 certificate")]
    Certificate(#[source] x509_cert::der::Error),
}

/// One PEM block: its label and the DER bytes it armours.
struct Pem {
    label: String,
    der: Vec<u8>,
}

/// Reads the first PEM block of `s`, or `Ok(None)` when `s` has no `-----BEGIN` line.
fn read_pem(s: &str) -> Result<Option<Pem>, KeyError> {
    let Some(start) = s.find("-----BEGIN ") else {
        return Ok(None);
    };
    let rest = &s[start + "-----BEGIN ".len()..];
    let label_end = rest.find("-----").ok_or(KeyError::BadPem)?;
    let label = rest[..label_end].trim().to_string();
    let rest = &rest[label_end + "-----".len()..];
    let end_marker = format!("-----END {label}-----");
    let body_end = rest.find(&end_marker).ok_or(KeyError::BadPem)?;
    let body = &rest[..body_end];
    if label.contains("ENCRYPTED") || body.contains("Proc-Type:") || body.contains("DEK-Info:") {
        return Err(KeyError::Encrypted);
    }
    let der = decode_base64_text(body).map_err(|_| KeyError::BadPem)?;
    Ok(Some(Pem { label, der }))
}

/// Decodes base64 text that may contain whitespace or literal `\n` / `\r` escapes.
fn decode_base64_text(s: &str) -> Result<Vec<u8>, KeyError> {
    let cleaned: String = s
        .replace("\\n", "")
        .replace("\\r", "")
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    if cleaned.is_empty() {
        return Err(KeyError::Empty);
    }
    LENIENT_B64
        .decode(cleaned.as_bytes())
        .map_err(|_| KeyError::BadBase64)
}

fn public_from_certificate_der(der: &[u8]) -> Result<RsaPublicKey, KeyError> {
    let bad = |e| KeyError::BadCertificate(DerError::Certificate(e));
    let cert = x509_cert::Certificate::from_der(der).map_err(bad)?;
    let spki = x509_cert::der::Encode::to_der(&cert.tbs_certificate.subject_public_key_info)
        .map_err(bad)?;
    RsaPublicKey::from_public_key_der(&spki)
        .map_err(|e| KeyError::BadCertificate(DerError::Spki(e)))
}

/// A private key from PKCS#8 or PKCS#1 DER; the PKCS#8 parser's error when neither reads.
fn private_from_der(der: &[u8]) -> Result<RsaPrivateKey, DerError> {
    RsaPrivateKey::from_pkcs8_der(der)
        .or_else(|e| RsaPrivateKey::from_pkcs1_der(der).map_err(|_| DerError::Pkcs8(e)))
}

/// Parses an RSA public key: PEM `PUBLIC KEY` (SPKI), `RSA PUBLIC KEY` (PKCS#1), `CERTIFICATE`
/// (X.509: its SubjectPublicKeyInfo), or bare base64 DER of SPKI, PKCS#1 or a certificate
/// (whitespace and line breaks allowed). A private key in any form [`parse_private_key`]
/// accepts is taken too: its public half is used.
pub fn parse_public_key(s: &str) -> Result<RsaPublicKey, KeyError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(KeyError::Empty);
    }
    if let Some(pem) = read_pem(s)? {
        return match pem.label.as_str() {
            "PUBLIC KEY" => RsaPublicKey::from_public_key_der(&pem.der)
                .map_err(|e| KeyError::BadPublicKey(DerError::Spki(e))),
            "RSA PUBLIC KEY" => RsaPublicKey::from_pkcs1_der(&pem.der)
                .map_err(|e| KeyError::BadPublicKey(DerError::Pkcs1(e))),
            "CERTIFICATE" | "X509 CERTIFICATE" | "TRUSTED CERTIFICATE" => {
                public_from_certificate_der(&pem.der)
            }
            "PRIVATE KEY" | "RSA PRIVATE KEY" => private_from_der(&pem.der)
                .map(|k| k.to_public_key())
                .map_err(KeyError::BadPrivateKey),
            other => Err(KeyError::UnsupportedPem(other.to_string())),
        };
    }
    let der = decode_base64_text(s)?;
    RsaPublicKey::from_public_key_der(&der).or_else(|spki| {
        RsaPublicKey::from_pkcs1_der(&der)
            .ok()
            .or_else(|| public_from_certificate_der(&der).ok())
            .or_else(|| private_from_der(&der).ok().map(|k| k.to_public_key()))
            .ok_or(KeyError::BadPublicKey(DerError::Spki(spki)))
    })
}

/// Parses an RSA private key: PEM `PRIVATE KEY` (PKCS#8), `RSA PRIVATE KEY` (PKCS#1), or bare
/// base64 DER of either. Encrypted keys are refused ([`KeyError::Encrypted`]).
pub fn parse_private_key(s: &str) -> Result<RsaPrivateKey, KeyError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(KeyError::Empty);
    }
    let der = match read_pem(s)? {
        Some(pem) => match pem.label.as_str() {
            "PRIVATE KEY" => {
                return RsaPrivateKey::from_pkcs8_der(&pem.der)
                    .map_err(|e| KeyError::BadPrivateKey(DerError::Pkcs8(e)))
            }
            "RSA PRIVATE KEY" => {
                return RsaPrivateKey::from_pkcs1_der(&pem.der)
                    .map_err(|e| KeyError::BadPrivateKey(DerError::Pkcs1(e)))
            }
            other => return Err(KeyError::UnsupportedPem(other.to_string())),
        },
        None => decode_base64_text(s)?,
    };
    private_from_der(&der).map_err(KeyError::BadPrivateKey)
}

/// Like [`parse_private_key`], and the key must have at least [`RSA_BITS`] bits: for keys
/// Herald will sign with.
pub fn parse_signing_key(s: &str) -> Result<RsaPrivateKey, KeyError> {
    let key = parse_private_key(s)?;
    let bits = key.size() * 8;
    if bits < RSA_BITS {
        return Err(KeyError::TooSmall {
            bits,
            min: RSA_BITS,
        });
    }
    Ok(key)
}

/// The serial number of the X.509 certificate in `s` (PEM or bare base64 DER), as upper-case hex
/// without leading zero bytes (the form `openssl x509 -serial` and WeChat Pay's
/// `Wechatpay-Serial` use). `None` when `s` is not a certificate.
pub fn certificate_serial(s: &str) -> Option<String> {
    let s = s.trim();
    let der = match read_pem(s).ok()? {
        Some(pem) if pem.label.contains("CERTIFICATE") => pem.der,
        Some(_) => return None,
        None => decode_base64_text(s).ok()?,
    };
    let cert = x509_cert::Certificate::from_der(&der).ok()?;
    let bytes = cert.tbs_certificate.serial_number.as_bytes();
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    let hex: String = bytes[first..].iter().map(|b| format!("{b:02X}")).collect();
    Some(if hex.is_empty() { "00".into() } else { hex })
}

/// For a CLI `--key` argument: the contents of the file `s` names, if it names one, else `s`.
pub fn read_key_arg(s: &str) -> String {
    let path = std::path::Path::new(s.trim());
    if !s.trim().is_empty() && !s.contains('\n') && path.is_file() {
        if let Ok(text) = std::fs::read_to_string(path) {
            return text;
        }
    }
    s.to_string()
}

/// A new RSA-2048 key from the OS random source. Slow in debug builds (about a second).
///
/// Panics only if the OS random source fails (no input can cause it).
pub fn generate_rsa_2048() -> RsaPrivateKey {
    loop {
        // Generation only fails for nonsensical parameters; retrying keeps this panic-free.
        if let Ok(key) = RsaPrivateKey::new(&mut OsRng, RSA_BITS) {
            return key;
        }
    }
}

/// The SPKI PEM (`-----BEGIN PUBLIC KEY-----`) of a public key, LF line endings.
pub fn public_pem(key: &RsaPublicKey) -> String {
    // Encoding a valid in-memory key cannot fail; fall back to an empty string over panicking.
    key.to_public_key_pem(LineEnding::LF).unwrap_or_default()
}

/// The bare base64 of a public key's SPKI DER, on one line (what the Alipay console shows).
pub fn public_base64(key: &RsaPublicKey) -> String {
    key.to_public_key_der()
        .map(|der| STANDARD.encode(der.as_bytes()))
        .unwrap_or_default()
}

/// The PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`) of a private key, LF line endings.
pub fn private_pem_pkcs8(key: &RsaPrivateKey) -> Result<String, KeyError> {
    key.to_pkcs8_pem(LineEnding::LF)
        .map(|pem| pem.to_string())
        .map_err(|_| KeyError::Export)
}

/// SHA256withRSA (PKCS#1 v1.5) over `msg`, standard base64 (Alipay `RSA2`, WeChat Pay v3).
/// Uses RSA blinding.
pub fn sign_sha256(key: &RsaPrivateKey, msg: &[u8]) -> Result<String, KeyError> {
    let digest = sha2::Sha256::digest(msg);
    key.sign_with_rng(&mut OsRng, Pkcs1v15Sign::new::<sha2::Sha256>(), &digest)
        .map(|sig| STANDARD.encode(sig))
        .map_err(|_| KeyError::Sign)
}

/// SHA256withRSA (PKCS#1 v1.5) with a stored private key (any format
/// [`parse_private_key`] reads), base64. Signs through `ring` (constant-time, several times
/// faster than the pure-Rust bignum) and caches the parsed key: Herald signs every attempt
/// with the same few keys. PKCS#1 v1.5 signatures are deterministic, so the bytes are the
/// same as [`sign_sha256`]'s.
pub fn sign_sha256_cached(private_key: &str, msg: &[u8]) -> Result<String, KeyError> {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};
    /// Parsed keys by their stored text. Bounded: cleared when full (keys are re-parsed).
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<ring::rsa::KeyPair>>>> = OnceLock::new();
    const MAX_KEYS: usize = 1024;
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let cached = cache.lock().ok().and_then(|c| c.get(private_key).cloned());
    let pair = match cached {
        Some(p) => p,
        None => {
            let key = parse_private_key(private_key)?;
            let der = key.to_pkcs8_der().map_err(|_| KeyError::Export)?;
            let pair = match ring::rsa::KeyPair::from_pkcs8(der.as_bytes()) {
                Ok(p) => Arc::new(p),
                // Keys ring refuses (unusual sizes or exponents) still sign, more slowly.
                Err(_) => return sign_sha256(&key, msg),
            };
            if let Ok(mut c) = cache.lock() {
                if c.len() >= MAX_KEYS {
                    c.clear();
                }
                c.insert(private_key.to_string(), pair.clone());
            }
            pair
        }
    };
    let mut sig = vec![0u8; pair.public().modulus_len()];
    pair.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        msg,
        &mut sig,
    )
    .map_err(|_| KeyError::Sign)?;
    Ok(STANDARD.encode(sig))
}

/// Decodes a base64 signature as it arrives: padding optional, line breaks ignored, and a
/// space taken for the `+` that a form decoder turned into one.
fn decode_signature(sig_b64: &str) -> Option<Vec<u8>> {
    let cleaned: String = sig_b64
        .trim()
        .chars()
        .filter(|c| *c != '\r' && *c != '\n')
        .map(|c| if c == ' ' { '+' } else { c })
        .collect();
    LENIENT_B64.decode(cleaned.as_bytes()).ok()
}

/// Whether `sig_b64` is a valid SHA256withRSA (PKCS#1 v1.5) signature of `msg` under `key`.
pub fn verify_sha256(key: &RsaPublicKey, msg: &[u8], sig_b64: &str) -> bool {
    let Some(sig) = decode_signature(sig_b64) else {
        return false;
    };
    let digest = sha2::Sha256::digest(msg);
    key.verify(Pkcs1v15Sign::new::<sha2::Sha256>(), &digest, &sig)
        .is_ok()
}

/// Whether `sig_b64` is a valid SHA1withRSA (PKCS#1 v1.5) signature of `msg` under `key`
/// (Alipay's legacy `RSA` sign type; Herald never signs with SHA-1).
pub fn verify_sha1(key: &RsaPublicKey, msg: &[u8], sig_b64: &str) -> bool {
    let Some(sig) = decode_signature(sig_b64) else {
        return false;
    };
    let digest = sha1::Sha1::digest(msg);
    key.verify(Pkcs1v15Sign::new::<sha1::Sha1>(), &digest, &sig)
        .is_ok()
}

/// The `private_key` field of a credentials object: absent or null generates an RSA-2048
/// key, a string is parsed (any accepted format, at least 2048 bits). Returns the key and
/// its normalised PKCS#8 PEM for storage. Errors name the field, never the key.
pub fn signing_key_option(
    value: Option<&serde_json::Value>,
) -> Result<(RsaPrivateKey, String), crate::ProfileError> {
    use crate::ProfileError::BadCredentials;
    let key = match value {
        None | Some(serde_json::Value::Null) => generate_rsa_2048(),
        Some(serde_json::Value::String(s)) => {
            parse_signing_key(s).map_err(|e| BadCredentials(format!("private_key: {e}")))?
        }
        Some(_) => return Err(BadCredentials("private_key must be a string".into())),
    };
    let pem = private_pem_pkcs8(&key).map_err(|e| BadCredentials(format!("private_key: {e}")))?;
    Ok((key, pem))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::pkcs1::{EncodeRsaPrivateKey, EncodeRsaPublicKey};
    use rsa::signature::{SignatureEncoding, Signer};

    /// A throwaway key made with `openssl req -x509 -newkey rsa:2048 -nodes`, with the
    /// self-signed certificate below (serial 5157F09E...).
    const TEST_KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIIEugIBADANBgkqhkiG9w0BAQEFAASCBKQwggSgAgEAAoIBAQC6YsuIAgOmgWw6
xfgPpz1Qic74C56/c/KhllDi/u5wn51XF8evwab0XFzi3DIs+W1M1j2fv+hlJOzn
7zYjaG4O05naVVEGpUJY6Qe/flpbS7hOFrXQ7YUUoTFShMbBZBYpEMEMh1iTXklk
OIJfBAJlglXlsmY56Q9CAJ54JhDk+luaHQmwQoVovBq9oFerbsgP8B+ZTKTHCWaa
i6akCsdMaZCW+XQXKuut9IfiUNZ+2ynJaWJZK/hioEgRxnChIGcXKWWNOV7DM75i
AwFPbA0Kbx5DozB3RaoqkAurd/8kiad1wQSkLW5MKDy3AyZw1DAA1J4JOrODRHhj
VKC7CmKXAgMBAAECgf9v0r7st70EkXMMLRcm2K+fOZqKNvoqKRTo3Wk1sANG68JA
FbLbP7ywx6IKHIZbGDNYZhnBVZwjzOCy0fTMGv5J/jWhpXbrv/S87rVOlxdZC/Hw
XCQWQPZFjSpbwHwKLfaSCcyxfWsm/0er5PWYrtrBOqtOXjolVdFo6t7iwn93mp8v
KdNoX0oXGV8LBTrZkuDtikS1GJf1uReaekaeDY5JzoMlQaLx9i+vTiNVPOu43AIA
9n13AvUmIODT80v7Q+W/Q81LFWqzstf8luvPqpJSiU8L9c7IHCKO6+IfvS4WzXI1
dmd/kd8LcfpLYx74DF9tRtaiGVErNnwf4TmMNY0CgYEA6JGk1zrs8J6jtqU1r8sr
WxgGl2NkpCbLkKaeEhSKTrGsxWO4k54QPqgf0Gwqc+OTrbuccq2wICw1pVT3op6H
ml8iDHnKpH4Go5kcRHJ4qMdaUE4gDZ6vaqqe0g9D5SUUxoax8D6y/udoJJ4DEeD1
T8vuqbhXSDIOULOKPPRBunMCgYEAzSoC5pPqRtEs6TMdJp1jxiM7aCElZfpmqRaC
utBCvUg8Bw5dMkNgdgCxesXoI/EuU7/QgdwLZC4+CtTh/e32Q7hwprX7OBbrpVkJ
SZExyaaHSiVmcAX0QZFs0Ic9q9LJOAqPr8YeOQhmM/UWRJuPDyUKyYJQX0eKONpK
ml7L+k0CgYBmViA47R7xynyzlAMJtdcAIJRV7VCNwtx0bDzGK++oLRqfSQAhRL5V
M9m79ry/ffavzgxLkg4cOhfpBnhpQGTfEtmCr9zxgNsfBfKgU9awPfiJubb1B0yd
HTMBr+HqZOS9buvBkXVmISF8a2NibKDFWjFM0Wbmx8/wxvAfXkPF7QKBgHgWFwyP
l5lL5lW5LV7k0PmwtZ0FibZfEqf2HR7rt6TDGx+mMLay6UsorLmIDZC8IrmylIDu
I1zIFFiSspTHLFYHJyjta9Yw1E08CEufSN0XNCkaKxN26LlYPbDw+BASmOTMib4A
4L/RQsE2u4n844ehzuaT+CdM4ILWgsRIqGwhAoGAYXb/7uSnqsZydvS44kyyaf00
PO4xl7zdwNvcQ/gfRDBhqfCAF4qbhuA/qK9/TfS6z6mgcpvylZfhxmaUpDq4zzU0
ySJJ44cLOr94te5mt9Bjrwom2jJfH1/5Po6gkVcslvGb13AnNXvJ/VnMEiKYYGel
ZE8IcN+6LLMz4sGzT2w=
-----END PRIVATE KEY-----
";

    const TEST_CERT_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIDOTCCAiGgAwIBAgIUUVfwnv3Alt4V6+gaRwV6cjLxuOEwDQYJKoZIhvcNAQEL
BQAwKzEpMCcGA1UEAwwgaGVyYWxkIHRlc3QgcGxhdGZvcm0gY2VydGlmaWNhdGUw
IBcNMjYxMTIzMTI0OTMxWhgPMjEyNjEwMzAxMjQ5MzFaMCsxKTAnBgNVBAMMIGhl
cmFsZCB0ZXN0IHBsYXRmb3JtIGNlcnRpZmljYXRlMIIBIjANBgkqhkiG9w0BAQEF
AAOCAQ8AMIIBCgKCAQEAumLLiAIDpoFsOsX4D6c9UInO+Auev3PyoZZQ4v7ucJ+d
VxfHr8Gm9Fxc4twyLPltTNY9n7/oZSTs5+82I2huDtOZ2lVRBqVCWOkHv35aW0u4
Tha10O2FFKExUoTGwWQWKRDBDIdYk15JZDiCXwQCZYJV5bJmOekPQgCeeCYQ5Ppb
mh0JsEKFaLwavaBXq27ID/AfmUykxwlmmoumpArHTGmQlvl0FyrrrfSH4lDWftsp
yWliWSv4YqBIEcZwoSBnFylljTlewzO+YgMBT2wNCm8eQ6Mwd0WqKpALq3f/JImn
dcEEpC1uTCg8twMmcNQwANSeCTqzg0R4Y1SguwpilwIDAQABo1MwUTAdBgNVHQ4E
FgQUEMk3VfYBy42ig6yIo9mrk3enuWQwHwYDVR0jBBgwFoAUEMk3VfYBy42ig6yI
o9mrk3enuWQwDwYDVR0TAQH/BAUwAwEB/zANBgkqhkiG9w0BAQsFAAOCAQEAbxYa
/nCtKxFE8AF+gi+Q6lzC7AovoFwc4oCbLilamf7HYa85vMk/tTexWfpW0GeXLg3P
YiAQBdAtKfSDDNckXJvWQNR2k5x+ZBZ9GhS5b6mV4Vp3y8XuURQCqmXwNMidNJWu
DNPbPrrt9lXB74xKY4ysa++9/zjr9ImA5X1kNsuWWlemMTycDp2J/G8gRLSk6fZ+
PPmsXY+dm3UgwtLM6dJXUcmC116qPDKdmuNc95kkFrCx8WgPo1wQOFmgKw2ws98D
xPAdrE3psPENC1c0kkVl8ZkSvheyMPqHg7OhhPBy7f9KHqgOAjLtyBNmYZvCQjkd
nnwm60/EonnpkKYHIA==
-----END CERTIFICATE-----
";

    const TEST_CERT_SERIAL: &str = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1";

    fn key() -> RsaPrivateKey {
        parse_private_key(TEST_KEY_PEM).unwrap()
    }

    fn body(pem: &str) -> String {
        pem.lines().filter(|l| !l.starts_with("-----")).collect()
    }

    #[test]
    fn public_keys_parse_in_every_form() {
        let private = key();
        let public = private.to_public_key();
        let spki_pem = public_pem(&public);
        let pkcs1_pem = public.to_pkcs1_pem(LineEnding::LF).unwrap();
        let spki_b64 = public_base64(&public);
        let pkcs1_b64 = STANDARD.encode(public.to_pkcs1_der().unwrap().as_bytes());
        let wrapped_b64 = spki_b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join("\n");
        let crlf_pem = spki_pem.replace('\n', "\r\n");
        let one_line_pem = spki_pem.trim_end().replace('\n', "\\n");
        let pkcs8_private = private_pem_pkcs8(&private).unwrap();
        let pkcs1_private = private.to_pkcs1_pem(LineEnding::LF).unwrap().to_string();
        let forms = [
            spki_pem.clone(),
            pkcs1_pem,
            format!("  {spki_b64}  \n"),
            wrapped_b64,
            pkcs1_b64,
            crlf_pem,
            one_line_pem,
            TEST_CERT_PEM.to_string(),
            body(TEST_CERT_PEM),
            pkcs8_private.clone(),
            pkcs1_private.clone(),
            body(&pkcs8_private),
            body(&pkcs1_private),
        ];
        for (i, form) in forms.iter().enumerate() {
            assert_eq!(parse_public_key(form).as_ref(), Ok(&public), "form {i}");
        }
        assert_eq!(spki_pem.lines().next(), Some("-----BEGIN PUBLIC KEY-----"));
        assert!(!spki_b64.contains('\n'));
    }

    #[test]
    fn private_keys_parse_in_every_form() {
        let private = key();
        let pkcs8 = private_pem_pkcs8(&private).unwrap();
        assert!(pkcs8.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let pkcs1 = private.to_pkcs1_pem(LineEnding::CRLF).unwrap().to_string();
        for form in [
            pkcs8.clone(),
            pkcs1.clone(),
            body(&pkcs8),
            body(&pkcs1),
            pkcs8.replace('\n', "\\n"),
        ] {
            assert_eq!(parse_private_key(&form).unwrap(), private);
        }
        assert_eq!(parse_signing_key(&pkcs8).unwrap(), private);
    }

    #[test]
    fn certificate_public_key_and_serial_match_the_embedded_private_key() {
        let public = parse_public_key(TEST_CERT_PEM).unwrap();
        assert_eq!(public, key().to_public_key());
        assert_eq!(public.size(), 256);
        assert_eq!(
            certificate_serial(TEST_CERT_PEM).as_deref(),
            Some(TEST_CERT_SERIAL)
        );
        assert_eq!(
            certificate_serial(&body(TEST_CERT_PEM)).as_deref(),
            Some(TEST_CERT_SERIAL)
        );
        assert_eq!(certificate_serial(&public_pem(&public)), None);
        assert_eq!(certificate_serial("garbage"), None);
    }

    /// An error and its sources, as a report would print them.
    fn chain(e: &(dyn std::error::Error + 'static)) -> String {
        let mut out = e.to_string();
        let mut next = e.source();
        while let Some(s) = next {
            out.push_str(": ");
            out.push_str(&s.to_string());
            next = s.source();
        }
        out
    }

    fn assert_same_kind(got: &KeyError, want: &KeyError, case: usize) {
        assert_eq!(
            (std::mem::discriminant(got), got.to_string()),
            (std::mem::discriminant(want), want.to_string()),
            "case {case}: {got:?}"
        );
    }

    #[test]
    fn a_key_that_does_not_parse_keeps_the_der_parsers_error_as_its_source() {
        // Valid base64 (not PEM) that is no DER key: the PKCS#8 and SPKI parsers' errors.
        let err = parse_private_key("c2VjcmV0c3R1ZmY=").unwrap_err();
        let source = std::error::Error::source(&err).expect("a source");
        assert!(
            matches!(source.downcast_ref::<DerError>(), Some(DerError::Pkcs8(_))),
            "{source:?}"
        );
        let parser = std::error::Error::source(source).expect("the parser's error");
        assert!(
            parser.downcast_ref::<rsa::pkcs8::Error>().is_some(),
            "{parser:?}"
        );
        let err = parse_public_key("c2VjcmV0c3R1ZmY=").unwrap_err();
        let source = std::error::Error::source(&err).expect("a source");
        let parser = std::error::Error::source(source).expect("the parser's error");
        assert!(
            parser.downcast_ref::<rsa::pkcs8::spki::Error>().is_some(),
            "{parser:?}"
        );
        // A PEM `RSA PUBLIC KEY` whose body is no PKCS#1 key: PKCS#1's parser's error.
        let pem = "-----BEGIN RSA PUBLIC KEY-----\nc2VjcmV0c3R1ZmY=\n-----END RSA PUBLIC KEY-----";
        let err = parse_public_key(pem).unwrap_err();
        let source = std::error::Error::source(&err).expect("a source");
        let parser = std::error::Error::source(source).expect("the parser's error");
        assert!(
            parser.downcast_ref::<rsa::pkcs1::Error>().is_some(),
            "{parser:?}"
        );
    }

    #[test]
    fn bad_keys_are_refused_with_messages_that_do_not_quote_them() {
        let private = private_pem_pkcs8(&key()).unwrap();
        let b = body(&private);
        let secret_part = &b[100..140];
        let truncated = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            &b[..400]
        );
        // Compared by kind and message: the parser's error under it is the parser's business.
        let der = DerError::Pkcs8(rsa::pkcs8::Error::KeyMalformed);
        let cases: Vec<(String, KeyError, KeyError)> = vec![
            ("".into(), KeyError::Empty, KeyError::Empty),
            ("  \n".into(), KeyError::Empty, KeyError::Empty),
            (
                format!("not a key {secret_part}!"),
                KeyError::BadBase64,
                KeyError::BadBase64,
            ),
            (
                "c2VjcmV0c3R1ZmY=".into(),
                KeyError::BadPublicKey(der),
                KeyError::BadPrivateKey(der),
            ),
            (
                truncated.clone(),
                KeyError::BadPrivateKey(der),
                KeyError::BadPrivateKey(der),
            ),
            (
                format!("-----BEGIN PRIVATE KEY-----\n{secret_part}"),
                KeyError::BadPem,
                KeyError::BadPem,
            ),
            (
                format!("-----BEGIN ENCRYPTED PRIVATE KEY-----\n{b}\n-----END ENCRYPTED PRIVATE KEY-----"),
                KeyError::Encrypted,
                KeyError::Encrypted,
            ),
            (
                format!("-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\n{b}\n-----END RSA PRIVATE KEY-----"),
                KeyError::Encrypted,
                KeyError::Encrypted,
            ),
            (
                format!("-----BEGIN EC PRIVATE KEY-----\n{b}\n-----END EC PRIVATE KEY-----"),
                KeyError::UnsupportedPem("EC PRIVATE KEY".into()),
                KeyError::UnsupportedPem("EC PRIVATE KEY".into()),
            ),
            (
                public_pem(&key().to_public_key()),
                KeyError::BadPublicKey(der), // unused: a public key is a fine public key
                KeyError::UnsupportedPem("PUBLIC KEY".into()),
            ),
        ];
        for (i, (input, public_err, private_err)) in cases.iter().enumerate() {
            if !input.contains("BEGIN PUBLIC KEY") {
                let err = parse_public_key(input).unwrap_err();
                assert_same_kind(&err, public_err, i);
                assert!(!chain(&err).contains(secret_part), "{err}");
            }
            let err = parse_private_key(input).unwrap_err();
            assert_same_kind(&err, private_err, i);
            let msg = chain(&err);
            assert!(!msg.contains(secret_part) && !msg.contains("c2Vj"), "{msg}");
            assert!(!format!("{err:?}").contains(secret_part));
        }
    }

    #[test]
    fn signatures_verify_and_a_changed_byte_or_key_fails() {
        let private = key();
        let public = private.to_public_key();
        let sig = sign_sha256(&private, b"a=1&b=2").unwrap();
        assert!(verify_sha256(&public, b"a=1&b=2", &sig));
        // ring's cached signer produces the very same bytes, from every stored form.
        let pem = private_pem_pkcs8(&private).unwrap();
        assert_eq!(sign_sha256_cached(&pem, b"a=1&b=2").unwrap(), sig);
        assert_eq!(
            sign_sha256_cached(&pem, b"a=1&b=2").unwrap(),
            sig,
            "from the cache"
        );
        assert!(matches!(
            sign_sha256_cached("not a key", b"x"),
            Err(KeyError::BadPem | KeyError::BadBase64 | KeyError::BadPrivateKey(_))
        ));
        assert!(!verify_sha256(&public, b"a=1&b=3", &sig));
        assert!(!verify_sha256(&public, b"a=1&b=2", "not base64!"));
        assert!(!verify_sha1(&public, b"a=1&b=2", &sig));
        // Signatures mangled in transit (line breaks, `+` turned into a space) still verify.
        let mangled = format!("{}\n{}", &sig[..20], &sig[20..]).replace('+', " ");
        assert!(verify_sha256(&public, b"a=1&b=2", &mangled));
        // The same signature as RustCrypto's typed signer (deterministic PKCS#1 v1.5).
        let typed =
            rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(private.clone()).sign(b"a=1&b=2");
        assert_eq!(STANDARD.encode(typed.to_bytes()), sig);
        let sha1_sig = rsa::pkcs1v15::SigningKey::<sha1::Sha1>::new(private).sign(b"x");
        let sha1_b64 = STANDARD.encode(sha1_sig.to_bytes());
        assert!(verify_sha1(&public, b"x", &sha1_b64));
        assert!(!verify_sha256(&public, b"x", &sha1_b64));
    }

    #[test]
    fn small_keys_cannot_sign() {
        let small = RsaPrivateKey::new(&mut OsRng, 1024).unwrap();
        let pem = private_pem_pkcs8(&small).unwrap();
        assert!(parse_private_key(&pem).is_ok());
        assert_eq!(
            parse_signing_key(&pem).unwrap_err(),
            KeyError::TooSmall {
                bits: 1024,
                min: 2048
            }
        );
    }

    #[test]
    fn generated_keys_are_2048_bits() {
        let k = generate_rsa_2048();
        assert_eq!(k.size() * 8, 2048);
        assert!(parse_signing_key(&private_pem_pkcs8(&k).unwrap()).is_ok());
    }

    #[test]
    fn key_args_name_files_or_are_the_key() {
        let path = std::env::temp_dir().join(format!(
            "herald-keys-test-{}-{}.pem",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::write(&path, TEST_CERT_PEM).unwrap();
        let arg = path.to_str().unwrap();
        assert_eq!(read_key_arg(arg), TEST_CERT_PEM);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(read_key_arg(arg), arg);
        assert_eq!(read_key_arg("MIIBIjAN"), "MIIBIjAN");
    }
}
