//! axum integration (feature `axum`, on by default): [`RawRequest`] is an extractor that
//! keeps the body's exact bytes, and [`Handled`] is a response carrying the reply as is.
//!
//! ```no_run
//! # use herald_receiver::{Inbox, RawRequest};
//! async fn notify(
//!     axum::extract::State(inbox): axum::extract::State<Inbox>,
//!     req: RawRequest,
//! ) -> herald_receiver::Handled {
//!     inbox.receive(&req, |_effects, _transition| Ok(())).await
//! }
//! # let _ = axum::Router::<Inbox>::new().route("/notify", axum::routing::post(notify));
//! ```
use axum::body::Body;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::{Handled, RawRequest};

/// The largest notification body accepted.
pub const BODY_LIMIT: usize = 1024 * 1024;

fn too_large() -> Response {
    (
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the notification body is over {BODY_LIMIT} bytes or could not be read"),
    )
        .into_response()
}

impl<S: Send + Sync> FromRequest<S> for RawRequest {
    type Rejection = Response;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let (parts, body) = req.into_parts();
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > BODY_LIMIT) {
            return Err(too_large());
        }
        let body = axum::body::to_bytes(body, BODY_LIMIT)
            .await
            .map_err(|_| too_large())?;
        Ok(RawRequest {
            method: parts.method.as_str().to_string(),
            headers: parts
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            query: parts.uri.query().unwrap_or("").to_string(),
            body,
        })
    }
}

impl IntoResponse for Handled {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = Response::new(Body::from(self.reply.body));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(self.reply.content_type),
        );
        response
    }
}
