//! The operator's dashboard, served by `herald serve` at `/`: server-rendered HTML (inline
//! CSS, no JavaScript, no build step) over the same store calls as the JSON API.
//!
//! - [`auth`]: sign-in with the admin token or an app's API key, sessions kept in the store
//!   (shared by every node), CSRF and Origin checks, one-time login links.
//! - [`pages`]: overview, apps and endpoints with health, notification search, a
//!   notification with every delivery and attempt.
//! - [`actions`]: resend, recover (an app's or one endpoint's), disable/enable, rotate, API
//!   keys; every action is a POST.
//! - [`sent`]: the request an attempt sent, rebuilt from what the store keeps, masked.
//! - [`sandbox`]: the payment sandbox's trades and their buttons (with `--sandbox`).
//! - [`html`]: the one escape function, the layout, the chart.
//!
//! Every page needs a session; without one a GET goes to the sign-in form and a POST is
//! 401. Every POST needs the session's CSRF token and a same-origin `Origin`/`Referer`.
//!
//! A session signed in with an app's API key sees that app only: the overview shows its
//! endpoints, lists hold its rows, and a URL naming another app's app, endpoint,
//! notification or delivery answers 404 as if it did not exist. Its actions are what the
//! key may do through the API: every action here is admin-only in the API's route table
//! (resend, recover, enable/disable, rotate, API keys, the sandbox), so a key's session sees
//! no buttons, and a POST is 403.
mod actions;
pub mod auth;
pub mod html;
mod pages;
mod sandbox;
mod sent;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use herald_engine::EngineStats;

use self::auth::{Principal, Session, Sessions};
use crate::api::error::ApiError;
use crate::api::ApiState;
use crate::sandbox::Sandbox;

/// The largest form body a dashboard POST may carry.
const MAX_FORM: usize = 16 * 1024;

/// What the dashboard's handlers share.
#[derive(Clone)]
pub struct DashState {
    pub api: ApiState,
    pub sessions: Arc<Sessions>,
    pub sandbox: Option<Sandbox>,
    /// This node's engine counters (attempts in flight).
    pub stats: Arc<EngineStats>,
}

/// A handle to the running dashboard: issues one-time login links (`herald demo`).
#[derive(Clone)]
pub struct Dashboard {
    sessions: Arc<Sessions>,
}

impl Dashboard {
    /// A path (`/login/link?t=...`) that signs a browser in as the admin once, within
    /// [`auth::LINK_TTL`], on any node of the database; `None` when it cannot be stored.
    pub async fn one_time_login_path(&self) -> Option<String> {
        match self.sessions.issue_link(&Principal::Admin).await {
            Ok(t) => t.map(|t| format!("/login/link?t={t}")),
            Err(e) => {
                tracing::warn!(error = %e, "cannot store a one-time login link");
                None
            }
        }
    }
}

/// The signed-in session of the request (set by the guard).
#[derive(Clone)]
pub struct Authed {
    pub session: Session,
    pub session_id: String,
}

impl Authed {
    /// The one app an API key's session sees; `None` for the admin (every app).
    pub fn app_scope(&self) -> Option<&str> {
        match &self.session.principal {
            Principal::Admin => None,
            Principal::App { app_id, .. } => Some(app_id),
        }
    }

    pub fn is_admin(&self) -> bool {
        self.session.principal == Principal::Admin
    }

    /// Whether this session may see the app's data at all.
    pub fn sees(&self, app_id: &str) -> bool {
        self.app_scope().is_none_or(|own| own == app_id)
    }

    /// The session's principal must be allowed what an admin-only API route does (403).
    pub fn require_admin(&self) -> Result<(), Fail> {
        self.session.principal.require_admin().map_err(|_| {
            Fail::new(
                StatusCode::FORBIDDEN,
                "Signed in with an app's API key: this needs the admin token, as it does through the API. Nothing was done.",
            )
        })
    }
}

/// A POST's form fields, already checked for the CSRF token (set by the guard).
#[derive(Clone, Default)]
pub struct FormData(pub Vec<(String, String)>);

impl FormData {
    pub fn parse(body: &[u8]) -> FormData {
        FormData(url::form_urlencoded::parse(body).into_owned().collect())
    }

    /// The field's value, trimmed; `None` when absent or blank.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty())
    }
}

/// The dashboard's routes, and the handle that issues login links.
pub fn router(state: DashState) -> (Router, Dashboard) {
    let handle = Dashboard {
        sessions: state.sessions.clone(),
    };
    let guarded = Router::new()
        .route("/", get(pages::overview))
        .route("/apps", get(pages::apps))
        .route("/apps/{app_id}", get(pages::app))
        .route(
            "/apps/{app_id}/endpoints/{endpoint_id}",
            get(pages::endpoint),
        )
        .route("/notifications", get(pages::notifications))
        .route("/notifications/{id}", get(pages::notification))
        .route("/deliveries/{id}", get(pages::delivery))
        .route("/sandbox", get(sandbox::list))
        .route("/sandbox/{payment_id}", get(sandbox::show))
        .route("/logout", post(auth_pages::logout))
        .route("/actions/deliveries/{id}/resend", post(actions::resend))
        .route("/actions/apps/{app_id}/recover", post(actions::recover))
        .route("/actions/apps/{app_id}/rotate", post(actions::rotate))
        .route(
            "/actions/apps/{app_id}/api-keys",
            post(actions::create_api_key),
        )
        .route(
            "/actions/apps/{app_id}/endpoints/{endpoint_id}/enabled",
            post(actions::set_enabled),
        )
        .route(
            "/actions/apps/{app_id}/endpoints/{endpoint_id}/recover",
            post(actions::recover_endpoint),
        )
        .route(
            "/actions/sandbox/{payment_id}/refund",
            post(sandbox::refund),
        )
        .route(
            "/actions/sandbox/{payment_id}/cancel",
            post(sandbox::cancel),
        )
        .route(
            "/actions/sandbox/{payment_id}/drills",
            post(sandbox::drills),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), guard));
    let open = Router::new()
        .route(
            "/login",
            get(auth_pages::login_form).post(auth_pages::login),
        )
        .route("/login/link", get(auth_pages::login_link));
    let router = guarded
        .merge(open)
        .layer(middleware::from_fn(headers))
        .with_state(state);
    (router, handle)
}

/// Headers every dashboard response carries: no caching (pages hold operator data), no
/// framing, no sniffing, and a content security policy that allows inline styles only.
async fn headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    resp
}

/// The session guard: a GET without a session goes to the sign-in form, a POST is 401; a
/// POST must also pass the Origin check (403) and carry the session's CSRF token (403).
async fn guard(State(state): State<DashState>, req: Request, next: Next) -> Response {
    let mut session = None;
    if let Some(id) = auth::session_cookie(req.headers()) {
        match state.sessions.get(&id).await {
            Ok(found) => session = found.map(|s| (id, s)),
            Err(e) => return Fail::from(e).into_response(),
        }
    }
    let Some((session_id, session)) = session else {
        if req.method() == Method::GET {
            return redirect("/login");
        }
        return Fail::new(StatusCode::UNAUTHORIZED, "Sign in first.").into_response();
    };
    let (mut parts, body) = req.into_parts();
    let mut form = FormData::default();
    let body = if parts.method == Method::POST {
        if !auth::same_origin(&parts.headers) {
            return Fail::new(
                StatusCode::FORBIDDEN,
                "This form was posted from another site; nothing was done.",
            )
            .into_response();
        }
        let bytes = match axum::body::to_bytes(body, MAX_FORM).await {
            Ok(b) => b,
            Err(_) => {
                return Fail::new(StatusCode::PAYLOAD_TOO_LARGE, "The form is too large.")
                    .into_response()
            }
        };
        form = FormData::parse(&bytes);
        let presented = form.get("csrf").unwrap_or("");
        if !auth::csrf_matches(&session.csrf, presented) {
            return Fail::new(
                StatusCode::FORBIDDEN,
                "The form's security token is missing or stale; reload the page and try again. Nothing was done.",
            )
            .into_response();
        }
        Body::from(bytes)
    } else {
        body
    };
    parts.extensions.insert(Authed {
        session,
        session_id,
    });
    parts.extensions.insert(form);
    next.run(Request::from_parts(parts, body)).await
}

/// 303 See Other to `to` (a path on this server).
pub fn redirect(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_string())]).into_response()
}

/// An HTML page.
pub fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

/// A failure shown as a page: the status and a message for the operator (already safe to
/// show: causes of internal failures are logged, not shown).
#[derive(Debug)]
pub struct Fail {
    status: StatusCode,
    message: String,
}

impl Fail {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Fail {
        Fail {
            status,
            message: message.into(),
        }
    }
}

impl From<ApiError> for Fail {
    fn from(e: ApiError) -> Fail {
        let status = e.status();
        match &e {
            ApiError::Unavailable(cause) | ApiError::Internal(cause) => {
                tracing::warn!(error = %cause, "dashboard request failed")
            }
            _ => {}
        }
        Fail::new(status, e.to_string())
    }
}

impl From<herald_store::StoreError> for Fail {
    fn from(e: herald_store::StoreError) -> Fail {
        Fail::from(ApiError::from(e))
    }
}

impl IntoResponse for Fail {
    fn into_response(self) -> Response {
        let body = format!(
            "<div class=\"error\">{}</div><p><a href=\"/\">Back to the overview</a></p>",
            html::esc(&self.message)
        );
        html(
            self.status,
            html::page(
                self.status.canonical_reason().unwrap_or("Error"),
                None,
                &body,
            ),
        )
    }
}

/// The sign-in form, sign-in, login links and sign-out.
mod auth_pages {
    use axum::extract::{Query, State};
    use axum::http::{header, StatusCode};
    use axum::response::{IntoResponse, Response};
    use axum::Extension;
    use serde::Deserialize;

    use super::auth::{self, Principal};
    use super::html::{esc, page};
    use super::{html, redirect, Authed, DashState, Fail, FormData, MAX_FORM};

    fn form(message: Option<&str>) -> String {
        let msg = message
            .map(|m| format!("<div class=\"error\">{}</div>", esc(m)))
            .unwrap_or_default();
        page(
            "Sign in",
            None,
            &format!(
                "<div class=\"login\"><h1>Sign in to Herald</h1>{msg}\
                 <form method=\"post\" action=\"/login\"><label>Admin token or API key\
                 <input type=\"password\" name=\"token\" autocomplete=\"current-password\" autofocus></label>\
                 <button type=\"submit\">Sign in</button></form>\
                 <p class=\"muted\">The admin token <code>herald serve</code> printed at first start (or the one given with <code>--admin-token</code>) sees every app; \
                 an app's API key (<code>hk_...</code>) sees that app only.</p></div>"
            ),
        )
    }

    pub async fn login_form() -> Response {
        html(StatusCode::OK, form(None))
    }

    async fn signed_in(principal: &Principal, sessions: &auth::Sessions) -> Response {
        match sessions.start(principal).await {
            Err(e) => Fail::from(e).into_response(),
            Ok(Some(id)) => (
                StatusCode::SEE_OTHER,
                [
                    (header::LOCATION, "/".to_string()),
                    (header::SET_COOKIE, auth::set_cookie(&id)),
                ],
            )
                .into_response(),
            Ok(None) => Fail::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "Too many open sessions for this credential; sign out elsewhere or try again later.",
            )
            .into_response(),
        }
    }

    /// `POST /login` `token=...`: a session for whoever the credential names.
    pub async fn login(State(state): State<DashState>, req: axum::extract::Request) -> Response {
        if !auth::same_origin(req.headers()) {
            return Fail::new(StatusCode::FORBIDDEN, "Cross-site sign-in refused.").into_response();
        }
        let Ok(bytes) = axum::body::to_bytes(req.into_body(), MAX_FORM).await else {
            return Fail::new(StatusCode::PAYLOAD_TOO_LARGE, "The form is too large.")
                .into_response();
        };
        let fields = FormData::parse(&bytes);
        let found = match fields.get("token") {
            Some(t) => auth::authenticate(&state.api, t).await,
            None => Ok(None),
        };
        match found {
            Ok(Some(principal)) => {
                tracing::info!(principal = %auth::label(&principal), "dashboard sign-in");
                signed_in(&principal, &state.sessions).await
            }
            Ok(None) => html(
                StatusCode::UNAUTHORIZED,
                form(Some("That is neither the admin token nor a live API key.")),
            ),
            Err(e) => Fail::from(e).into_response(),
        }
    }

    #[derive(Deserialize)]
    pub struct LinkQuery {
        #[serde(default)]
        t: String,
    }

    /// `GET /login/link?t=...`: a one-time link signs the browser in (once).
    pub async fn login_link(
        State(state): State<DashState>,
        query: Result<Query<LinkQuery>, axum::extract::rejection::QueryRejection>,
    ) -> Response {
        let secret = query.map(|Query(q)| q.t).unwrap_or_default();
        match state.sessions.redeem_link(&secret).await {
            Err(e) => Fail::from(e).into_response(),
            Ok(Some(principal)) => signed_in(&principal, &state.sessions).await,
            Ok(None) => html(
                StatusCode::UNAUTHORIZED,
                form(Some(
                    "That sign-in link was already used or has expired; sign in with the admin token or an API key.",
                )),
            ),
        }
    }

    /// `POST /logout`: ends the session.
    pub async fn logout(
        State(state): State<DashState>,
        Extension(authed): Extension<Authed>,
    ) -> Response {
        if let Err(e) = state.sessions.end(&authed.session_id).await {
            return Fail::from(e).into_response();
        }
        let mut resp = redirect("/login");
        if let Ok(v) = auth::clear_cookie().parse() {
            resp.headers_mut().insert(header::SET_COOKIE, v);
        }
        resp
    }
}
