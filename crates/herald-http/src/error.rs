//! API errors: one enum, mapped to HTTP status and the `{"error": {"code", "message"}}` body
//! in one place. Caller mistakes are 4xx with a message; a database that cannot take the
//! request (disk full, read-only, unreachable) is 503, so the client retries and nothing is
//! acknowledged that was not stored; unexpected failures are 500. Causes are logged, never
//! shown.
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use herald_store::StoreError;
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error(
        "missing or invalid credentials (send Authorization: Bearer <admin token or API key>)"
    )]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("the method {0} is not allowed here (see the Allow header)")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Conflict(String),
    #[error("the request body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the request body did not arrive in time")]
    BodyTimeout,
    #[error("{0}")]
    Invalid(String),
    #[error("the database is unavailable; nothing was stored, try again later")]
    Unavailable(String),
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// An unexpected failure caused by `e`: the cause logged is `e` and its whole
    /// [`source`](std::error::Error::source) chain on one line (the response says only
    /// "internal error").
    pub fn internal(e: &(dyn std::error::Error + 'static)) -> ApiError {
        let mut cause = e.to_string();
        let mut next = e.source();
        while let Some(s) = next {
            cause.push_str(": ");
            cause.push_str(&s.to_string());
            next = s.source();
        }
        ApiError::Internal(cause)
    }

    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        self.status_and_code().0
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::BodyTimeout => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            ApiError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

/// The error body every error response has (for the OpenAPI document).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// `bad_request`, `unauthorized`, `forbidden`, `not_found`, `method_not_allowed`,
    /// `conflict`, `payload_too_large`, `request_timeout`, `invalid`, `unavailable` or
    /// `internal`.
    pub code: String,
    pub message: String,
}

/// Gives a `405 Method Not Allowed` from the router (which has the `Allow` header and an
/// empty body) the JSON error body every other error has, keeping its headers.
pub async fn method_not_allowed_as_json(
    method: axum::http::Method,
    response: Response,
) -> Response {
    if response.status() != StatusCode::METHOD_NOT_ALLOWED
        || response
            .headers()
            .contains_key(axum::http::header::CONTENT_TYPE)
    {
        return response;
    }
    let (mut parts, _) = response.into_parts();
    let json = ApiError::MethodNotAllowed(method.to_string()).into_response();
    let (json_parts, body) = json.into_parts();
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    parts.headers.extend(json_parts.headers);
    Response::from_parts(parts, body)
}

/// A refused field (event type, notify URL, idempotency key...) is a 422 with its message.
impl From<herald_store::FieldError> for ApiError {
    fn from(e: herald_store::FieldError) -> ApiError {
        ApiError::Invalid(e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => ApiError::NotFound(what),
            StoreError::Conflict(m) => ApiError::Conflict(m),
            StoreError::BadCursor => ApiError::Invalid("invalid cursor".into()),
            e @ StoreError::Backend { .. } => ApiError::Unavailable(e.to_string()),
            StoreError::Closed => ApiError::Unavailable("the store is shut down".into()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        match &self {
            ApiError::Internal(cause) => tracing::error!(%cause, "request failed"),
            ApiError::Unavailable(cause) => {
                tracing::warn!(%cause, "the database refused a request")
            }
            _ => {}
        }
        let body = json!({"error": {"code": code, "message": self.to_string()}});
        (status, axum::Json(body)).into_response()
    }
}
