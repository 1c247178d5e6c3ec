//! WeChat Pay v2 refund notifications (退款结果通知): both directions of the encrypted
//! `req_info`, so the sandbox can send them and a receiver can take them.
//!
//! A refund notification is not signed. Its outer `<xml>` carries `return_code`, `appid`,
//! `mch_id`, `nonce_str` and `req_info`; `req_info` is base64 of AES-256-ECB with PKCS#7
//! padding, keyed with the lowercase hex MD5 of the merchant's API key (the 32 ASCII hex
//! characters are the 32 key bytes). The plaintext is a flat `<root>` document holding
//! `transaction_id`, `out_trade_no`, `refund_id`, `out_refund_no`, `total_fee`,
//! `settlement_total_fee`, `refund_fee`, `settlement_refund_fee`, `refund_status` (`SUCCESS`,
//! `CHANGE`, `REFUNDCLOSE`), `success_time`, `refund_recv_accout` (sic), `refund_account` and
//! `refund_request_source`. Fees are whole fen. Shape from WeChat Pay's "退款结果通知" page
//! (`pay.weixin.qq.com/wiki/doc/api/jsapi.php?chapter=9_16`) and a real notification quoted
//! by several SDKs' tests (see `tests/wechatpay_v2.rs`).
//!
//! The public API:
//! - [`RefundInfo`]: the decrypted `<root>`, typed, with unknown fields kept in order
//!   ([`RefundInfo::to_xml`], [`RefundInfo::from_xml`]).
//! - [`encrypt_req_info`] / [`decrypt_req_info`]: `RefundInfo` <-> the `req_info` text.
//! - [`encode`]: the whole request a sender POSTs (outer XML with a fresh `nonce_str`).
//! - [`is_refund_notify`]: whether a parsed body is a refund notification (it has `req_info`
//!   and no `sign`); [`verify`] takes one: "verified" means it decrypted with one of the
//!   receiver's API keys into a well-formed `<root>`. The receiver still checks `appid` /
//!   `mch_id` and the amounts against its order.
//!
//! Why decryption is the check: WeChat signs nothing here, so only the API-key holder can
//! produce a `req_info` that decrypts (PKCS#7 padding and XML both valid). ECB is not
//! authenticated, so a receiver must also dedupe on `refund_id` and check the amounts against
//! the order, as `herald-receiver` does. The block cipher is RustCrypto's (`aes` + `ecb`);
//! no error quotes a key.
use aes::Aes256;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ecb::cipher::block_padding::Pkcs7;
use ecb::cipher::{BlockDecryptMut, BlockEncryptMut, KeyInit};
use md5::{Digest, Md5};
use serde_json::Value;

use super::{
    check_api_key, field, generate_nonce, is_field_name, is_xml_char, malformed, parse_fen,
    parse_flat_xml, push_text, to_xml, Credentials, ReceiverKeys, CONTENT_TYPE, DEFAULT_FEE_TYPE,
};
use crate::profile::{EncodedRequest, ProfileError};
use crate::receive::{Amount, ReceiveError, VerifiedNotification};

/// The outer field that carries the encrypted refund.
pub const REQ_INFO: &str = "req_info";
/// `refund_status` of a refund that reached the buyer.
pub const STATUS_SUCCESS: &str = "SUCCESS";
/// `refund_status` of a refund that failed (退款异常).
pub const STATUS_CHANGE: &str = "CHANGE";
/// `refund_status` of a refund that was closed.
pub const STATUS_CLOSED: &str = "REFUNDCLOSE";

/// The typed fields, in the order [`RefundInfo::to_xml`] writes them (WeChat writes them
/// sorted by name).
const TYPED: [&str; 13] = [
    "out_refund_no",
    "out_trade_no",
    "refund_account",
    "refund_fee",
    "refund_id",
    "refund_recv_accout",
    "refund_request_source",
    "refund_status",
    "settlement_refund_fee",
    "settlement_total_fee",
    "success_time",
    "total_fee",
    "transaction_id",
];

/// The decrypted `req_info` of one refund notification. Fees are whole fen.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RefundInfo {
    /// WeChat's payment id (微信订单号).
    pub transaction_id: String,
    /// The merchant's order reference.
    pub out_trade_no: String,
    /// WeChat's refund id: a receiver's dedupe key.
    pub refund_id: String,
    /// The merchant's refund reference.
    pub out_refund_no: String,
    /// The order total.
    pub total_fee: i64,
    /// The order total less non-settlement coupons, when it differs or is sent.
    pub settlement_total_fee: Option<i64>,
    /// This refund's amount.
    pub refund_fee: i64,
    /// This refund less non-settlement coupons (WeChat always sends it).
    pub settlement_refund_fee: Option<i64>,
    /// [`STATUS_SUCCESS`], [`STATUS_CHANGE`] or [`STATUS_CLOSED`].
    pub refund_status: String,
    /// When the money reached the buyer (`yyyy-MM-dd HH:mm:ss`), for successful refunds.
    pub success_time: Option<String>,
    /// Where the money went, e.g. `支付用户零钱` (WeChat spells the field `accout`).
    pub refund_recv_accout: Option<String>,
    /// `REFUND_SOURCE_RECHARGE_FUNDS` or `REFUND_SOURCE_UNSETTLED_FUNDS`.
    pub refund_account: Option<String>,
    /// `API` or `VENDOR_PLATFORM`.
    pub refund_request_source: Option<String>,
    /// Any other field, in document order (written after the typed ones).
    pub extra: Vec<(String, String)>,
}

impl RefundInfo {
    /// Every field as text, sorted as WeChat writes them, then `extra`; absent options are
    /// left out.
    pub fn to_fields(&self) -> Vec<(String, String)> {
        let mut out = Vec::with_capacity(TYPED.len() + self.extra.len());
        for name in TYPED {
            let value = match name {
                "out_refund_no" => Some(self.out_refund_no.clone()),
                "out_trade_no" => Some(self.out_trade_no.clone()),
                "refund_account" => self.refund_account.clone(),
                "refund_fee" => Some(self.refund_fee.to_string()),
                "refund_id" => Some(self.refund_id.clone()),
                "refund_recv_accout" => self.refund_recv_accout.clone(),
                "refund_request_source" => self.refund_request_source.clone(),
                "refund_status" => Some(self.refund_status.clone()),
                "settlement_refund_fee" => self.settlement_refund_fee.map(|v| v.to_string()),
                "settlement_total_fee" => self.settlement_total_fee.map(|v| v.to_string()),
                "success_time" => self.success_time.clone(),
                "total_fee" => Some(self.total_fee.to_string()),
                "transaction_id" => Some(self.transaction_id.clone()),
                _ => None,
            };
            if let Some(v) = value {
                out.push((name.to_string(), v));
            }
        }
        out.extend(self.extra.iter().cloned());
        out
    }

    /// The plaintext WeChat encrypts: `<root>` and one CDATA element per line.
    ///
    /// Refused ([`ProfileError::Encode`]): an empty id or status, a negative fee, an `extra`
    /// name that is not a field name or repeats a typed field, characters XML cannot carry.
    pub fn to_xml(&self) -> Result<String, ProfileError> {
        let err = |m: String| ProfileError::Encode(format!("refund notification: {m}"));
        for (name, v) in [
            ("transaction_id", &self.transaction_id),
            ("out_trade_no", &self.out_trade_no),
            ("refund_id", &self.refund_id),
            ("out_refund_no", &self.out_refund_no),
            ("refund_status", &self.refund_status),
        ] {
            if v.is_empty() {
                return Err(err(format!("{name} must not be empty")));
            }
        }
        let fees = [
            ("total_fee", Some(self.total_fee)),
            ("refund_fee", Some(self.refund_fee)),
            ("settlement_total_fee", self.settlement_total_fee),
            ("settlement_refund_fee", self.settlement_refund_fee),
        ];
        for (name, fee) in fees {
            if fee.is_some_and(|f| f < 0) {
                return Err(err(format!("{name} must not be negative")));
            }
        }
        for (k, _) in &self.extra {
            if !is_field_name(k) || TYPED.contains(&k.as_str()) || k == REQ_INFO {
                return Err(err(format!(
                    "extra field {k:?} is not a field name or repeats a typed field"
                )));
            }
        }
        let fields = self.to_fields();
        let mut out = String::from("<root>\n");
        for (k, v) in &fields {
            if let Some(bad) = v.chars().find(|c| !is_xml_char(*c)) {
                return Err(err(format!(
                    "field {k} contains U+{:04X}, which XML cannot carry",
                    u32::from(bad)
                )));
            }
            out.push('<');
            out.push_str(k);
            out.push('>');
            push_text(&mut out, v);
            out.push_str("</");
            out.push_str(k);
            out.push_str(">\n");
        }
        out.push_str("</root>");
        Ok(out)
    }

    /// Reads a decrypted `<root>` (flat elements, parsed as strictly as a notification body:
    /// no DTDs, no entities). `transaction_id`, `out_trade_no`, `refund_id`,
    /// `out_refund_no`, `total_fee`, `refund_fee` and `refund_status` are required; fees
    /// are whole fen. Errors are [`ReceiveError::MalformedBody`], [`ReceiveError::Missing`]
    /// or [`ReceiveError::BadAmount`].
    pub fn from_xml(xml: &[u8]) -> Result<RefundInfo, ReceiveError> {
        let fields = parse_flat_xml(xml, "root")?;
        let required = |name: &str| {
            field(&fields, name)
                .map(str::to_string)
                .ok_or_else(|| ReceiveError::Missing(format!("req_info {name}")))
        };
        let optional = |name: &str| field(&fields, name).map(str::to_string);
        let fee = |name: &str| -> Result<Option<i64>, ReceiveError> {
            field(&fields, name).map(parse_fen).transpose()
        };
        let required_fee = |name: &str| {
            fee(name)?.ok_or_else(|| ReceiveError::Missing(format!("req_info {name}")))
        };
        Ok(RefundInfo {
            transaction_id: required("transaction_id")?,
            out_trade_no: required("out_trade_no")?,
            refund_id: required("refund_id")?,
            out_refund_no: required("out_refund_no")?,
            total_fee: required_fee("total_fee")?,
            settlement_total_fee: fee("settlement_total_fee")?,
            refund_fee: required_fee("refund_fee")?,
            settlement_refund_fee: fee("settlement_refund_fee")?,
            refund_status: required("refund_status")?,
            success_time: optional("success_time"),
            refund_recv_accout: optional("refund_recv_accout"),
            refund_account: optional("refund_account"),
            refund_request_source: optional("refund_request_source"),
            extra: fields
                .iter()
                .filter(|(k, _)| !TYPED.contains(&k.as_str()))
                .cloned()
                .collect(),
        })
    }
}

/// The AES-256 key: the lowercase hex MD5 of the API key, as 32 ASCII bytes.
fn aes_key(api_key: &str) -> [u8; 32] {
    let digest = Md5::digest(api_key.as_bytes());
    let mut key = [0u8; 32];
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in digest.iter().enumerate() {
        key[2 * i] = HEX[usize::from(b >> 4)];
        key[2 * i + 1] = HEX[usize::from(b & 0x0f)];
    }
    key
}

/// `info` as WeChat sends it in `req_info`: [`RefundInfo::to_xml`], AES-256-ECB with PKCS#7
/// under the lowercase hex MD5 of `api_key` (32 ASCII bytes), standard base64.
pub fn encrypt_req_info(api_key: &str, info: &RefundInfo) -> Result<String, ProfileError> {
    let xml = info.to_xml()?;
    let cipher = ecb::Encryptor::<Aes256>::new(&aes_key(api_key).into());
    let ciphertext = cipher.encrypt_padded_vec_mut::<Pkcs7>(xml.as_bytes());
    Ok(STANDARD.encode(ciphertext))
}

/// The plaintext bytes of `req_info` under `api_key`: base64, whole 16-byte blocks, valid
/// PKCS#7 padding. A wrong key nearly always fails the padding ([`ReceiveError::Decrypt`]);
/// the rare wrong key that passes it fails [`RefundInfo::from_xml`].
fn decrypt_bytes(api_key: &str, req_info: &str) -> Result<Vec<u8>, ReceiveError> {
    let ciphertext = STANDARD
        .decode(req_info.trim())
        .map_err(|e| ReceiveError::Decrypt(format!("req_info is not base64: {e}")))?;
    if ciphertext.is_empty() || ciphertext.len() % 16 != 0 {
        return Err(ReceiveError::Decrypt(format!(
            "req_info is {} bytes, not whole 16-byte AES blocks",
            ciphertext.len()
        )));
    }
    let cipher = ecb::Decryptor::<Aes256>::new(&aes_key(api_key).into());
    cipher
        .decrypt_padded_vec_mut::<Pkcs7>(&ciphertext)
        .map_err(|_| {
            ReceiveError::Decrypt(
                "req_info does not decrypt with the API key (wrong key, or a corrupted req_info)"
                    .into(),
            )
        })
}

/// Decrypts and reads `req_info` with `api_key`. Errors: [`ReceiveError::Decrypt`] (not
/// base64, not whole blocks, bad padding, not UTF-8) or what [`RefundInfo::from_xml`] refuses.
pub fn decrypt_req_info(api_key: &str, req_info: &str) -> Result<RefundInfo, ReceiveError> {
    let plain = decrypt_bytes(api_key, req_info)?;
    if std::str::from_utf8(&plain).is_err() {
        return Err(ReceiveError::Decrypt(
            "req_info decrypts to bytes that are not UTF-8 (wrong key?)".into(),
        ));
    }
    RefundInfo::from_xml(&plain)
}

/// The request WeChat POSTs for one refund: `<xml>` with `return_code` `SUCCESS`, the
/// credentials' `appid` and `mch_id`, a fresh `nonce_str` and `req_info` (no `sign`, as
/// WeChat sends it), content type [`CONTENT_TYPE`].
pub fn encode(c: &Credentials, info: &RefundInfo) -> Result<EncodedRequest, ProfileError> {
    check_api_key(&c.api_key)
        .map_err(|m| ProfileError::Encode(format!("the stored credentials are invalid: {m}")))?;
    let req_info = encrypt_req_info(&c.api_key, info)?;
    let fields = vec![
        ("return_code".to_string(), "SUCCESS".to_string()),
        ("appid".to_string(), c.appid.clone()),
        ("mch_id".to_string(), c.mch_id.clone()),
        ("nonce_str".to_string(), generate_nonce()),
        (REQ_INFO.to_string(), req_info),
    ];
    Ok(EncodedRequest {
        content_type: CONTENT_TYPE.to_string(),
        headers: Vec::new(),
        body: to_xml(&fields).into_bytes(),
    })
}

/// Whether a parsed v2 body is a refund notification: it carries `req_info` and no `sign`.
pub fn is_refund_notify(fields: &[(String, String)]) -> bool {
    field(fields, REQ_INFO).is_some() && field(fields, "sign").is_none()
}

/// Takes a refund notification (fields from [`super::parse_xml`]): `return_code` must be
/// `SUCCESS`, and `req_info` must decrypt with one of `keys` (tried in order). The result:
/// `notify_id` = `refund_id`, `app_id` = `appid`, `merchant_id` = `mch_id`, `out_trade_no`
/// and `transaction_id` from `req_info`, `amount` = this refund (`refund_fee`, CNY),
/// `status` = `refund_status`, and `fields` = the outer fields with `req_info` replaced by
/// the decrypted fields as a JSON object of strings.
pub fn verify(
    keys: &ReceiverKeys,
    fields: &[(String, String)],
) -> Result<VerifiedNotification, ReceiveError> {
    match field(fields, "return_code") {
        Some("SUCCESS") => {}
        None => return Err(ReceiveError::Missing("return_code".into())),
        Some(code) => {
            return Err(malformed(format!(
                "return_code is {code:?}, not SUCCESS (return_msg: {:?})",
                field(fields, "return_msg").unwrap_or("")
            )))
        }
    }
    let req_info = field(fields, REQ_INFO).ok_or_else(|| ReceiveError::Missing(REQ_INFO.into()))?;
    let mut last = None;
    let mut info = None;
    for key in &keys.api_keys {
        match decrypt_req_info(key, req_info) {
            Ok(i) => {
                info = Some(i);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let Some(info) = info else {
        let e = last.unwrap_or_else(|| ReceiveError::UnknownKey("no API key given".into()));
        return Err(match e {
            // A plaintext that is not a refund <root> means the key was wrong too.
            ReceiveError::MalformedBody(m) if keys.api_keys.len() > 1 => ReceiveError::Decrypt(
                format!("req_info does not decrypt with any configured API key ({m})"),
            ),
            other => other,
        });
    };
    let decrypted: serde_json::Map<String, Value> = info
        .to_fields()
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    let mut out: std::collections::BTreeMap<String, Value> = fields
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    out.insert(REQ_INFO.to_string(), Value::Object(decrypted));
    Ok(VerifiedNotification {
        profile: crate::Profile::WechatPayV2,
        notify_id: info.refund_id.clone(),
        app_id: field(fields, "appid").map(str::to_string),
        merchant_id: field(fields, "mch_id").map(str::to_string),
        out_trade_no: Some(info.out_trade_no.clone()),
        transaction_id: Some(info.transaction_id.clone()),
        amount: Some(Amount {
            minor: info.refund_fee,
            currency: DEFAULT_FEE_TYPE.to_string(),
        }),
        status: Some(info.refund_status.clone()),
        event_type: None,
        fields: out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_aes_key_is_the_lowercase_hex_md5_of_the_api_key_as_ascii() {
        // MD5 of the API key in the real notification quoted in tests/wechatpay_v2.rs,
        // computed independently (Python hashlib).
        let key = aes_key("ziR0QKsTUfMOuochC9RfCdmfHECorQAP");
        assert_eq!(&key, b"a1fdc4d1da9fb443b1091d34bcee9493");
    }
}
