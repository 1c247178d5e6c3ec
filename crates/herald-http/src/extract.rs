//! Request extractors with Herald's error shape: a JSON body (400 when it is not JSON, 422
//! when it is JSON of the wrong shape, 413 past the size limit, 408 when it arrives too
//! slowly).
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::MAX_BODY;

/// A JSON request body.
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|r| {
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::TooLarge(MAX_BODY)
            } else if timed_out(&r) {
                ApiError::BodyTimeout
            } else {
                ApiError::BadRequest(format!("cannot read the request body: {r}"))
            }
        })?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// True when reading the body failed because it took too long (the accept loop's body timeout, [`crate::BodyTimeout`]).
fn timed_out(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(e);
    while let Some(s) = source {
        if s.is::<crate::BodyTimeout>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// Parses a JSON body; syntax errors are 400, shape errors 422.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::BadRequest(
            "the request body is empty; send a JSON object".into(),
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::Invalid(e.to_string()),
        _ => ApiError::BadRequest(format!("the request body is not valid JSON: {e}")),
    })
}
