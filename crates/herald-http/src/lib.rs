//! Herald's HTTP edge, shared by the API (`herald`) and the payment sandbox
//! (`herald-sandbox`): one error shape for every JSON answer ([`error`]), the JSON body
//! extractor ([`extract`]), parsing of the fields several handlers take ([`fields`]), and the
//! one HTML escape every server-rendered page uses ([`html`]). Nothing here knows a route.
pub mod error;
pub mod extract;
pub mod fields;
pub mod html;

/// The largest request body any route accepts, bytes.
pub const MAX_BODY: usize = 1024 * 1024;

/// The error a request body ends with when it does not arrive before its deadline (the
/// accept loop's body timeout); the extractor answers 408 for it.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
pub struct BodyTimeout;
