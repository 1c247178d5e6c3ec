//! Secrets at rest: apps' credentials (signing secrets, private keys, API keys) sealed with
//! AES-256-GCM under a key the operator configures, before a driver writes them.
//!
//! A [`Sealer`] holds a keyring: the first key seals, every key opens (that is how a key is
//! rotated: put the new key first, keep the old one after it until everything is re-sealed,
//! see [`crate::AdminStore::reseal_credentials`]). A key's id is derived from the key itself
//! (the first 4 bytes of a SHA-256 of it, in hex), so a value names the key it needs without
//! the operator naming keys.
//!
//! A sealed value is text: `enc:v1:<key id>:<base64(nonce || ciphertext and tag)>`, with a
//! random 96-bit nonce per value and the app's id as associated data (a value copied into
//! another app's row does not open). Anything not starting with `enc:` is plaintext JSON, as
//! written before a key was configured: it is read unchanged and sealed the next time it is
//! written. A sealer without keys writes plaintext and opens only plaintext.
//!
//! Errors name the app and the key id, never a key or a secret.
use std::borrow::Cow;
use std::sync::Arc;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use herald_protocols::Credentials;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::StoreError;

/// What every sealed value starts with; anything else is plaintext.
pub const SEALED_PREFIX: &str = "enc:";
/// The current format's prefix.
const V1: &str = "enc:v1:";
/// A key is 32 bytes (AES-256).
pub const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;
/// The GCM tag appended to every ciphertext.
const TAG_LEN: usize = 16;

/// One key of the keyring.
struct SealKey {
    id: String,
    cipher: Aes256Gcm,
}

/// A keyring that seals and opens credentials (see the module doc). Cheap to clone; its
/// `Debug` shows key ids only.
#[derive(Clone, Default)]
pub struct Sealer {
    /// The sealing key first; empty when no key is configured.
    keys: Arc<[SealKey]>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("key_ids", &self.key_ids().collect::<Vec<_>>())
            .finish()
    }
}

/// A keyring that cannot be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("the secret key list is empty")]
    Empty,
    /// The (1-based) position of the bad key, never its text.
    #[error("secret key {0} of the list is not the base64 of 32 bytes (make one with: head -c 32 /dev/urandom | base64)")]
    Malformed(usize),
}

/// A stored value that cannot be opened (or a value that cannot be sealed). Says why and
/// with which key id, never what the value holds.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("they are sealed under secret key {key_id}, which is not configured ({configured}); configure it with --secret-key-file or HERALD_SECRET_KEY")]
    UnknownKey { key_id: String, configured: String },
    #[error("they do not open under secret key {key_id}: the stored value was altered, or copied from another app")]
    Forged { key_id: String },
    #[error("the stored value is not a sealed value Herald can read ({0})")]
    Malformed(&'static str),
    #[error("they are not valid credentials JSON ({0})")]
    Json(String),
    #[error("they cannot be sealed (too long for AES-GCM)")]
    TooLong,
}

/// A failure to read or write an app's credentials, naming the app.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the credentials of app {app_id} cannot be read: {source}")]
pub struct CredentialsError {
    pub app_id: String,
    pub source: SealError,
}

impl From<CredentialsError> for StoreError {
    fn from(e: CredentialsError) -> StoreError {
        StoreError::backend(e.to_string(), e)
    }
}

/// How a stored value is held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stored<'a> {
    Plaintext,
    Sealed { key_id: &'a str },
}

/// How every app's credentials are stored (see [`crate::AdminStore::check_credentials`]);
/// sources' keys are counted with them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SealCensus {
    /// Apps whose credentials are plaintext JSON.
    pub plaintext: u64,
    /// Apps sealed under the sealing (first) key.
    pub current: u64,
    /// Apps sealed under another key of the keyring.
    pub older: u64,
    /// Apps rewritten under the sealing key by this call (`reseal_credentials` only).
    pub resealed: u64,
}

impl SealCensus {
    pub fn apps(&self) -> u64 {
        self.plaintext + self.current + self.older
    }
}

/// A key id: the first 4 bytes of SHA-256("herald secret key id\0" || key), in hex.
fn key_id(key: &[u8; KEY_LEN]) -> String {
    let mut h = Sha256::new();
    h.update(b"herald secret key id\0");
    h.update(key);
    h.finalize()[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The associated data binding a sealed value to its app.
fn aad(app_id: &str) -> Vec<u8> {
    format!("herald apps.credentials {app_id}").into_bytes()
}

fn redacted_json_error(e: &serde_json::Error) -> String {
    // serde's own message may quote the value (a secret): keep its category and position.
    format!(
        "{:?} error at line {} column {}",
        e.classify(),
        e.line(),
        e.column()
    )
}

impl Sealer {
    /// A sealer without keys: writes plaintext, opens plaintext only.
    pub fn none() -> Sealer {
        Sealer::default()
    }

    /// A keyring of these keys, the first sealing. Repeated keys are kept once.
    pub fn new(keys: &[[u8; KEY_LEN]]) -> Sealer {
        let mut out: Vec<SealKey> = Vec::with_capacity(keys.len());
        for key in keys {
            let id = key_id(key);
            if out.iter().any(|k| k.id == id) {
                continue;
            }
            out.push(SealKey {
                id,
                cipher: Aes256Gcm::new(key.into()),
            });
        }
        Sealer { keys: out.into() }
    }

    /// Parses a keyring: base64 keys of 32 bytes, separated by commas or newlines (blank
    /// lines and lines starting with `#` are skipped). The first seals, all open.
    pub fn parse(text: &str) -> Result<Sealer, KeyError> {
        let mut keys = Vec::new();
        let entries = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.starts_with('#'))
            .flat_map(|l| l.split(','))
            .map(str::trim)
            .filter(|k| !k.is_empty());
        for (n, entry) in entries.enumerate() {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(entry)
                .map_err(|_| KeyError::Malformed(n + 1))?;
            let key: [u8; KEY_LEN] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| KeyError::Malformed(n + 1))?;
            keys.push(key);
        }
        if keys.is_empty() {
            return Err(KeyError::Empty);
        }
        Ok(Sealer::new(&keys))
    }

    /// Whether a key is configured (values are sealed when written).
    pub fn is_enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The id of the sealing key.
    pub fn current_key_id(&self) -> Option<&str> {
        self.keys.first().map(|k| k.id.as_str())
    }

    /// The ids of every key, the sealing one first.
    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|k| k.id.as_str())
    }

    /// How `stored` is held, without opening it.
    pub fn classify(stored: &str) -> Stored<'_> {
        match stored.strip_prefix(V1) {
            Some(rest) => Stored::Sealed {
                key_id: rest.split(':').next().unwrap_or(""),
            },
            None if stored.starts_with(SEALED_PREFIX) => Stored::Sealed { key_id: "" },
            None => Stored::Plaintext,
        }
    }

    /// Seals `plaintext` for `app_id` under the sealing key; without keys, returns it as is.
    pub fn seal<'a>(&self, app_id: &str, plaintext: &'a str) -> Result<Cow<'a, str>, SealError> {
        let Some(key) = self.keys.first() else {
            return Ok(Cow::Borrowed(plaintext));
        };
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let aad = aad(app_id);
        // Encryption fails only past GCM's length limit (64 GiB).
        let sealed = key
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: &aad,
                },
            )
            .map_err(|_| SealError::TooLong)?;
        let mut blob = Vec::with_capacity(NONCE_LEN + sealed.len());
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&sealed);
        Ok(Cow::Owned(format!(
            "{V1}{}:{}",
            key.id,
            base64::engine::general_purpose::STANDARD.encode(blob)
        )))
    }

    /// Opens a stored value of `app_id`: plaintext as is, a sealed value with its key.
    pub fn open<'a>(&self, app_id: &str, stored: &'a str) -> Result<Cow<'a, str>, SealError> {
        if !stored.starts_with(SEALED_PREFIX) {
            return Ok(Cow::Borrowed(stored));
        }
        let rest = stored
            .strip_prefix(V1)
            .ok_or(SealError::Malformed("unknown version"))?;
        let (key_id, body) = rest
            .split_once(':')
            .ok_or(SealError::Malformed("no key id"))?;
        let key =
            self.keys
                .iter()
                .find(|k| k.id == key_id)
                .ok_or_else(|| SealError::UnknownKey {
                    key_id: key_id.to_string(),
                    configured: if self.keys.is_empty() {
                        "no secret key is configured".into()
                    } else {
                        format!(
                            "the configured keys are {}",
                            self.key_ids().collect::<Vec<_>>().join(", ")
                        )
                    },
                })?;
        let blob = base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|_| SealError::Malformed("not base64"))?;
        if blob.len() < NONCE_LEN + TAG_LEN {
            return Err(SealError::Malformed("too short"));
        }
        let (nonce, sealed) = blob.split_at(NONCE_LEN);
        let aad = aad(app_id);
        let plain = key
            .cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: &aad,
                },
            )
            .map_err(|_| SealError::Forged {
                key_id: key.id.clone(),
            })?;
        String::from_utf8(plain)
            .map(Cow::Owned)
            .map_err(|_| SealError::Malformed("not UTF-8 inside"))
    }

    /// The credentials of `app_id` as the `apps.credentials` column stores them.
    pub fn seal_credentials(
        &self,
        app_id: &str,
        credentials: &Credentials,
    ) -> Result<String, StoreError> {
        // serde_json's error is not kept as the source: its message may quote a secret.
        let json = serde_json::to_string(credentials).map_err(|e| {
            StoreError::backend_msg(format!(
                "cannot encode the credentials of app {app_id}: {}",
                redacted_json_error(&e)
            ))
        })?;
        self.seal(app_id, &json)
            .map(Cow::into_owned)
            .map_err(|source| CredentialsError {
                app_id: app_id.to_string(),
                source,
            })
            .map_err(StoreError::from)
    }

    /// The credentials of `app_id` from the `apps.credentials` column.
    pub fn open_credentials(
        &self,
        app_id: &str,
        stored: &str,
    ) -> Result<Credentials, CredentialsError> {
        let fail = |source| CredentialsError {
            app_id: app_id.to_string(),
            source,
        };
        let json = self.open(app_id, stored).map_err(fail)?;
        serde_json::from_str(&json).map_err(|e| fail(SealError::Json(redacted_json_error(&e))))
    }

    /// A source's verification keys as the `sources.keys` column stores them: JSON, sealed
    /// like credentials and bound to the source's id (`src_...`, never an app's id).
    pub fn seal_source_keys(
        &self,
        source_id: &str,
        keys: &crate::model::SourceKeys,
    ) -> Result<String, StoreError> {
        // serde_json's error is not kept as the source: its message may quote a key.
        let json = serde_json::to_string(keys).map_err(|e| {
            StoreError::backend_msg(format!(
                "cannot encode the keys of source {source_id}: {}",
                redacted_json_error(&e)
            ))
        })?;
        self.seal(source_id, &json)
            .map(Cow::into_owned)
            .map_err(|e| StoreError::backend(format!("the keys of source {source_id}: {e}"), e))
    }

    /// A source's verification keys from the `sources.keys` column.
    pub fn open_source_keys(
        &self,
        source_id: &str,
        stored: &str,
    ) -> Result<crate::model::SourceKeys, StoreError> {
        let fail = |e: SealError| {
            StoreError::backend(
                format!("the keys of source {source_id} cannot be read: {e}"),
                e,
            )
        };
        let json = self.open(source_id, stored).map_err(fail)?;
        serde_json::from_str(&json).map_err(|e| fail(SealError::Json(redacted_json_error(&e))))
    }

    /// Opens `stored` and counts it into `census`: the plaintext, and whether it should be
    /// rewritten (it is not sealed under the sealing key, and there is one).
    fn tally<'a>(
        &self,
        app_id: &str,
        stored: &'a str,
        census: &mut SealCensus,
    ) -> Result<(Cow<'a, str>, bool), CredentialsError> {
        let plain = self
            .open(app_id, stored)
            .map_err(|source| CredentialsError {
                app_id: app_id.to_string(),
                source,
            })?;
        let current = match Sealer::classify(stored) {
            Stored::Plaintext => {
                census.plaintext += 1;
                false
            }
            Stored::Sealed { key_id } if Some(key_id) == self.current_key_id() => {
                census.current += 1;
                true
            }
            Stored::Sealed { .. } => {
                census.older += 1;
                false
            }
        };
        Ok((plain, !current && self.is_enabled()))
    }

    /// Opens `stored` (failing as [`Sealer::open_credentials`] would) and counts it into
    /// `census`.
    pub fn check(
        &self,
        app_id: &str,
        stored: &str,
        census: &mut SealCensus,
    ) -> Result<(), CredentialsError> {
        self.tally(app_id, stored, census).map(|_| ())
    }

    /// [`Sealer::check`], and the new value when `stored` is not sealed under the sealing
    /// key (nothing to rewrite without keys).
    pub fn reseal(
        &self,
        app_id: &str,
        stored: &str,
        census: &mut SealCensus,
    ) -> Result<Option<String>, CredentialsError> {
        let (plain, rewrite) = self.tally(app_id, stored, census)?;
        if !rewrite {
            return Ok(None);
        }
        self.seal(app_id, &plain)
            .map(|s| Some(s.into_owned()))
            .map_err(|source| CredentialsError {
                app_id: app_id.to_string(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: [u8; 32] = [1; 32];
    const K2: [u8; 32] = [2; 32];
    const SECRET: &str = r#"{"secret":"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}"#;

    #[test]
    fn sealed_value_round_trips_and_hides_the_plaintext() {
        let s = Sealer::new(&[K1]);
        let sealed = s.seal("app_1", SECRET).unwrap();
        assert!(
            sealed.starts_with(&format!("enc:v1:{}:", key_id(&K1))),
            "{sealed}"
        );
        assert!(!sealed.contains("whsec_"));
        assert_eq!(s.open("app_1", &sealed).unwrap(), SECRET);
        // A fresh nonce each time.
        assert_ne!(s.seal("app_1", SECRET).unwrap(), sealed);
    }

    #[test]
    fn a_key_not_in_the_keyring_is_a_clear_error() {
        let sealed = Sealer::new(&[K1])
            .seal("app_1", SECRET)
            .unwrap()
            .into_owned();
        let id = key_id(&K1);
        let err = Sealer::new(&[K2]).open("app_1", &sealed).unwrap_err();
        assert!(matches!(&err, SealError::UnknownKey { key_id, .. } if *key_id == id));
        let msg = err.to_string();
        assert!(
            msg.contains(&id) && msg.contains("HERALD_SECRET_KEY"),
            "{msg}"
        );
        assert!(msg.contains(&key_id(&K2)), "{msg}");
        let msg = Sealer::none()
            .open("app_1", &sealed)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("no secret key is configured"), "{msg}");
        let msg = Sealer::new(&[K2])
            .open_credentials("app_1", &sealed)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("app_1") && !msg.contains("whsec"), "{msg}");
    }

    #[test]
    fn tampering_and_another_apps_value_are_detected() {
        let s = Sealer::new(&[K1]);
        let sealed = s.seal("app_1", SECRET).unwrap().into_owned();
        let (head, body) = sealed.rsplit_once(':').unwrap();
        let mut blob = base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap();
        let last = blob.len() - 1;
        blob[last] ^= 1;
        let tampered = format!(
            "{head}:{}",
            base64::engine::general_purpose::STANDARD.encode(&blob)
        );
        assert!(matches!(
            s.open("app_1", &tampered),
            Err(SealError::Forged { .. })
        ));
        assert!(matches!(
            s.open("app_2", &sealed),
            Err(SealError::Forged { .. })
        ));
        assert!(matches!(
            s.open("app_1", "enc:v1:zz"),
            Err(SealError::Malformed(_))
        ));
        assert!(matches!(
            s.open("app_1", "enc:v9:x:y"),
            Err(SealError::Malformed(_))
        ));
        assert!(matches!(
            s.open("app_1", &format!("enc:v1:{}:AAAA", key_id(&K1))),
            Err(SealError::Malformed(_))
        ));
    }

    #[test]
    fn plaintext_passes_through_and_no_key_writes_plaintext() {
        assert_eq!(Sealer::new(&[K1]).open("app_1", SECRET).unwrap(), SECRET);
        assert_eq!(Sealer::none().seal("app_1", SECRET).unwrap(), SECRET);
        assert_eq!(Sealer::none().open("app_1", SECRET).unwrap(), SECRET);
    }

    #[test]
    fn rotation_opens_with_older_keys_and_reseals_under_the_first() {
        let old = Sealer::new(&[K1])
            .seal("app_1", SECRET)
            .unwrap()
            .into_owned();
        let ring = Sealer::new(&[K2, K1]);
        assert_eq!(ring.open("app_1", &old).unwrap(), SECRET);
        let mut census = SealCensus::default();
        let new = ring.reseal("app_1", &old, &mut census).unwrap().unwrap();
        assert!(new.starts_with(&format!("enc:v1:{}:", key_id(&K2))));
        assert_eq!(ring.reseal("app_1", &new, &mut census).unwrap(), None);
        let plain = ring.reseal("app_1", SECRET, &mut census).unwrap().unwrap();
        assert_eq!(
            census,
            SealCensus {
                plaintext: 1,
                current: 1,
                older: 1,
                resealed: 0
            }
        );
        assert_eq!(Sealer::new(&[K2]).open("app_1", &plain).unwrap(), SECRET);
    }

    #[test]
    fn keyrings_parse_from_lists_and_never_echo_a_key() {
        let b64 = |k: &[u8; 32]| base64::engine::general_purpose::STANDARD.encode(k);
        let s = Sealer::parse(&format!("{}, {}\n", b64(&K2), b64(&K1))).unwrap();
        assert_eq!(
            s.key_ids().collect::<Vec<_>>(),
            vec![key_id(&K2), key_id(&K1)]
        );
        let s = Sealer::parse(&format!("# new\n{}\n\n{}\n", b64(&K2), b64(&K1))).unwrap();
        assert_eq!(s.current_key_id(), Some(key_id(&K2).as_str()));
        assert_eq!(Sealer::parse(" \n# none\n").unwrap_err(), KeyError::Empty);
        let short = base64::engine::general_purpose::STANDARD.encode([7u8; 16]);
        let err = Sealer::parse(&format!("{},{short}", b64(&K1))).unwrap_err();
        assert_eq!(err, KeyError::Malformed(2));
        assert!(!err.to_string().contains(&short));
        assert!(!format!("{s:?}").contains(&b64(&K2)));
    }
}
