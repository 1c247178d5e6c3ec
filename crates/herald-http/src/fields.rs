//! Parsing and formatting of the fields several handlers share (times, URLs, bounded text),
//! at the edge: what passes here is what the store is given.
use herald_store::fields::check_url;
use herald_store::UnixMillis;

use crate::error::ApiError;

pub fn rfc3339(ms: UnixMillis) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms.get()) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

pub fn parse_rfc3339(s: &str) -> Result<UnixMillis, ApiError> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map(|t| UnixMillis::new((t.unix_timestamp_nanos() / 1_000_000) as i64))
        .map_err(|e| ApiError::Invalid(format!("{s:?} is not an RFC 3339 time: {e}")))
}

/// A delivery target: an absolute http(s) URL with a host, at most 2048 bytes (the rule
/// [`NotifyUrl`](herald_store::NotifyUrl) parses with, [`check_url`]).
pub fn parse_url(field: &'static str, s: &str) -> Result<String, ApiError> {
    check_url(field, s)?;
    Ok(s.to_string())
}

pub fn bounded_text(field: &str, s: &str, max: usize) -> Result<String, ApiError> {
    if s.trim().is_empty() {
        return Err(ApiError::Invalid(format!("{field} must not be empty")));
    }
    if s.chars().count() > max {
        return Err(ApiError::Invalid(format!(
            "{field} is longer than {max} characters"
        )));
    }
    Ok(s.to_string())
}
