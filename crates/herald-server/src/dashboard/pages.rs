//! The dashboard's pages (GET): overview, apps, one app with its endpoints' health, one
//! endpoint, notification search, a notification with every delivery and attempt, and a delivery's
//! attempts in pages. Each page's store reads are bounded (see `herald_store::dashboard`).
use std::fmt::Write as _;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;
use herald_store::dashboard::{AppSummary, ListPage, SearchNotifications, COUNT_CAP};
use herald_store::{
    Attempt, Delivery, DeliveryStatus, EventType, ListAttempts, ListEndpoints, Notification,
    UnixMillis,
};
use serde::Deserialize;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::html::{
    action, badge, chart, datetime_local, esc, page, parse_datetime, time, url_part, Nav,
};
use super::{html, sent, Authed, DashState, Fail};
use crate::api::{MAX_ENDPOINTS_PER_APP, MAX_PAGE_LIMIT};
use crate::clock::now_ms;

/// Rows per page of the dashboard's lists.
const PAGE: u32 = 50;

pub(super) fn nav<'a>(state: &DashState, authed: &'a Authed, current: &'a str) -> Nav<'a> {
    Nav {
        current,
        csrf: &authed.session.csrf,
        sandbox: state.sandbox.is_some() && authed.is_admin(),
    }
}

/// The answer to a URL naming something this session may not see: the same 404 as for
/// something that does not exist, so an API key's session learns nothing of other apps.
fn unseen(what: &str) -> Fail {
    Fail::new(StatusCode::NOT_FOUND, format!("No such {what}."))
}

fn count(n: u64) -> String {
    if n >= COUNT_CAP {
        format!("{COUNT_CAP}+")
    } else {
        n.to_string()
    }
}

/// The messages an action's redirect may ask a page to show (`?done=...`): a fixed set, so
/// nothing from the URL is ever shown as is.
fn flash(done: Option<&str>) -> String {
    let msg = match done {
        Some("resent") => "The delivery is due again now; the engine sends it within moments.",
        Some("recovered") => "Failed deliveries were put back to pending.",
        Some("recovered-endpoint") => "The endpoint's failed deliveries were put back to pending.",
        Some("enabled") => "The endpoint is enabled.",
        Some("disabled") => "The endpoint is disabled: new notifications skip it.",
        Some("refunded") => "Refunded; the refund notification is queued.",
        Some("canceled") => "The trade is closed.",
        Some("drills") => "Drills saved; they apply to the notifications enqueued from now on.",
        _ => return String::new(),
    };
    format!("<div class=\"flash\">{msg}</div>")
}

#[derive(Deserialize, Default)]
pub struct Done {
    #[serde(default)]
    done: Option<String>,
    #[serde(default)]
    cursor: Option<String>,
}

fn query<T: Default>(
    q: Result<Query<T>, axum::extract::rejection::QueryRejection>,
) -> Result<T, Fail> {
    q.map(|Query(v)| v)
        .map_err(|e| Fail::new(StatusCode::UNPROCESSABLE_ENTITY, e.body_text()))
}

/// `GET /`: the last hour at a glance.
pub async fn overview(
    State(state): State<DashState>,
    Extension(authed): Extension<Authed>,
) -> Result<Response, Fail> {
    if let Some(app_id) = authed.app_scope() {
        return app_overview(&state, &authed, app_id).await;
    }
    let store = &state.api.store;
    let now = now_ms();
    let start = now.floor_to(Duration::from_secs(60)) - Duration::from_secs(59 * 60);
    let minutes = store
        .activity(start, now + Duration::from_millis(1))
        .await?;
    let counts = store.queue_counts(now).await?;
    let trouble = store
        .troubled_endpoints(now - Duration::from_secs(3_600), 20)
        .await?;
    let (ok, bad) = minutes
        .iter()
        .fold((0, 0), |(o, b), m| (o + m.succeeded, b + m.failed));
    let in_flight = state.stats.in_flight.load(Ordering::Relaxed);
    let mut b = String::from("<h1>Overview</h1><div class=\"cards\">");
    for (n, label) in [
        (count(counts.pending), "Backlog (pending)"),
        (count(counts.due), "Due now"),
        (in_flight.to_string(), "In flight (this node)"),
        (count(counts.held), "Held by nodes"),
        (count(counts.failed), "Failed (retries spent)"),
        (ok.to_string(), "Acknowledged, last hour"),
        (bad.to_string(), "Failed attempts, last hour"),
    ] {
        let _ = write!(
            b,
            "<div class=\"card\"><div class=\"n\">{}</div><div class=\"l\">{label}</div></div>",
            esc(&n)
        );
    }
    let _ = write!(
        b,
        "</div><div class=\"panel\"><h2 style=\"margin-top:0\">Attempts per minute, last hour\
         <span class=\"legend muted\"><span style=\"background:#16a34a\"></span>acknowledged\
         <span style=\"background:#dc2626\"></span>failed</span></h2>{}</div>",
        chart(start, &minutes)
    );
    b.push_str("<div class=\"panel\"><h2 style=\"margin-top:0\">Endpoints in trouble</h2>");
    if trouble.is_empty() {
        b.push_str("<p class=\"muted\">None: every destination's latest attempt in the last hour was acknowledged.</p>");
    } else {
        b.push_str("<table><tr><th>App</th><th>Destination</th><th>Failed attempts (1 h)</th><th>Last attempt</th><th>Last success (1 h)</th><th></th></tr>");
        for t in &trouble {
            let dest = match &t.endpoint_id {
                Some(ep) => format!(
                    "{} <span class=\"muted mono\">{}</span>",
                    esc(&t.url),
                    esc(ep)
                ),
                None => format!("{} <span class=\"muted\">(notify_url)</span>", esc(&t.url)),
            };
            let _ = write!(
                b,
                "<tr><td><a href=\"/apps/{}\">{}</a></td><td>{dest}</td><td>{}</td><td>{}</td><td>{}</td>\
                 <td><a href=\"/notifications?app={}&amp;status=failed\">failed notifications</a></td></tr>",
                url_part(&t.app_id),
                esc(&t.app_id),
                t.failures,
                time(Some(t.last_attempt_at)),
                time(t.last_success_at),
                url_part(&t.app_id),
            );
        }
        b.push_str("</table>");
    }
    b.push_str("</div>");
    Ok(html(
        StatusCode::OK,
        page("Overview", Some(nav(&state, &authed, "/")), &b),
    ))
}

/// `GET /` for an API key's session: its app's endpoints at a glance (the queue-wide figures
/// and the attempts chart cover every app, so they are the admin's).
async fn app_overview(state: &DashState, authed: &Authed, app_id: &str) -> Result<Response, Fail> {
    let store = &state.api.store;
    let app = store.get_app(app_id).await?.ok_or_else(|| unseen("app"))?;
    let endpoints = store
        .list_endpoints(
            app_id,
            ListEndpoints {
                limit: MAX_ENDPOINTS_PER_APP,
                cursor: None,
            },
        )
        .await?;
    let mut rows = String::new();
    let (mut pending, mut failing, mut blocked) = (0u64, 0u64, 0u64);
    for ep in &endpoints.items {
        let h = store.endpoint_health(&ep.id).await?;
        pending = pending.saturating_add(h.pending);
        if h.consecutive_failures > 0 {
            failing += 1;
        }
        if ep.health.state != herald_store::BreakerState::Closed || !ep.enabled {
            blocked += 1;
        }
        let _ = write!(
            rows,
            "<tr><td>{}<br><a class=\"muted mono\" href=\"/apps/{}/endpoints/{}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&ep.url),
            url_part(app_id),
            url_part(&ep.id),
            esc(&ep.id),
            badge(if ep.enabled { "enabled" } else { "disabled" }),
            time(h.last_success_at),
            if h.consecutive_failures > 0 {
                format!("<span class=\"badge bad\">{}</span>", h.consecutive_failures)
            } else {
                "0".into()
            },
            count(h.pending),
            breaker(&ep.health),
        );
    }
    let mut b = format!(
        "<h1>{} <span class=\"muted mono\" style=\"font-size:14px\">{}</span></h1>\
         <p class=\"muted\">Signed in with this app's API key: you see this app only.</p><div class=\"cards\">",
        esc(&app.name),
        esc(&app.id)
    );
    for (n, label) in [
        (count(pending), "Pending (its endpoints)"),
        (failing.to_string(), "Endpoints failing"),
        (
            blocked.to_string(),
            "Endpoints held back (breaker or disabled)",
        ),
        (endpoints.items.len().to_string(), "Endpoints"),
    ] {
        let _ = write!(
            b,
            "<div class=\"card\"><div class=\"n\">{}</div><div class=\"l\">{label}</div></div>",
            esc(&n)
        );
    }
    let _ = write!(
        b,
        "</div><div class=\"panel\"><h2 style=\"margin-top:0\">Endpoints</h2><p>\
         <a href=\"/notifications?status=failed\">failed notifications</a> · \
         <a href=\"/notifications?status=pending\">pending notifications</a></p>"
    );
    if endpoints.items.is_empty() {
        b.push_str("<p class=\"muted\">No endpoints: this app's notifications go to each one's <code>notify_url</code>.</p>");
    } else {
        let _ = write!(
            b,
            "<table><tr><th>Endpoint</th><th>State</th><th>Last success</th><th>Failures in a row</th>\
             <th>Pending</th><th>Breaker</th></tr>{rows}</table>"
        );
    }
    b.push_str("</div>");
    Ok(html(
        StatusCode::OK,
        page("Overview", Some(nav(state, authed, "/")), &b),
    ))
}

/// `GET /apps/{app_id}/endpoints/{endpoint_id}`: one endpoint, its settings and health, and
/// (for the admin) its buttons: enable/disable and recover its failures since a time.
pub async fn endpoint(
    State(state): State<DashState>,
    Extension(authed): Extension<Authed>,
    Path((app_id, endpoint_id)): Path<(String, String)>,
    q: Result<Query<Done>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Fail> {
    let q = query(q)?;
    if !authed.sees(&app_id) {
        return Err(unseen("endpoint"));
    }
    let store = &state.api.store;
    let ep = store
        .get_endpoint(&app_id, &endpoint_id)
        .await?
        .ok_or_else(|| unseen("endpoint"))?;
    let h = store.endpoint_health(&ep.id).await?;
    let mut b = format!(
        "<h1>Endpoint <span class=\"mono\" style=\"font-size:15px\">{}</span> {}</h1>{}\
         <p>Of app <a class=\"mono\" href=\"/apps/{}\">{}</a> · \
         <a href=\"/notifications?app={}&amp;status=failed\">the app's failed notifications</a></p>\
         <div class=\"panel\"><table><tr><th>URL</th><th>Events</th><th>In flight at most</th><th>Ordered</th><th>Timeout</th></tr>\
         <tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr></table>\
         <table><tr><th>Last success</th><th>Last attempt</th><th>Failures in a row</th><th>Pending</th><th>Breaker</th></tr>\
         <tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr></table></div>",
        esc(&ep.id),
        badge(if ep.enabled { "enabled" } else { "disabled" }),
        flash(q.done.as_deref()),
        url_part(&app_id),
        esc(&app_id),
        url_part(&app_id),
        esc(&ep.url),
        esc(&ep
            .event_types
            .as_ref()
            .map(|t| t.join(", "))
            .unwrap_or_else(|| "all".into())),
        ep.max_in_flight,
        if ep.ordered { "yes" } else { "no" },
        ep.timeout_ms
            .map(|t| format!("{t} ms"))
            .unwrap_or_else(|| "default".into()),
        time(h.last_success_at),
        time(h.last_attempt_at),
        h.consecutive_failures,
        count(h.pending),
        breaker(&ep.health),
    );
    if authed.is_admin() {
        let csrf = &authed.session.csrf;
        let base = format!(
            "/actions/apps/{}/endpoints/{}",
            url_part(&app_id),
            url_part(&ep.id)
        );
        let since = datetime_local(now_ms() - Duration::from_secs(24 * 3_600));
        let (label, set) = if ep.enabled {
            ("Disable", "false")
        } else {
            ("Enable", "true")
        };
        let _ = write!(
            b,
            "<div class=\"panel\"><h2 style=\"margin-top:0\">Actions</h2><p>{}</p><p>{}</p></div>",
            action(
                &format!("{base}/recover"),
                csrf,
                "Recover this endpoint's failures",
                "",
                &format!(
                    "Put every failed delivery to this endpoint created since \
                     <input type=\"datetime-local\" name=\"since\" value=\"{}\"> (UTC) back to pending: ",
                    esc(&since)
                ),
            ),
            action(
                &format!("{base}/enabled"),
                csrf,
                label,
                if ep.enabled { "secondary" } else { "" },
                &format!("<input type=\"hidden\" name=\"enabled\" value=\"{set}\">"),
            ),
        );
    }
    Ok(html(
        StatusCode::OK,
        page("Endpoint", Some(nav(&state, &authed, "/apps")), &b),
    ))
}

/// `GET /apps`: every app, a page at a time.
pub async fn apps(
    State(state): State<DashState>,
    Extension(authed): Extension<Authed>,
    q: Result<Query<Done>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Fail> {
    let q = query(q)?;
    let page_ = match authed.app_scope() {
        // An API key's session lists its own app alone.
        Some(own) => herald_store::Page {
            items: state
                .api
                .store
                .get_app(own)
                .await?
                .map(|a| AppSummary {
                    id: a.id,
                    name: a.name,
                    profile: a.profile.name().to_string(),
                    created_at: a.created_at,
                })
                .into_iter()
                .collect(),
            next_cursor: None,
        },
        None => {
            state
                .api
                .store
                .list_app_summaries(ListPage {
                    limit: PAGE,
                    cursor: q.cursor,
                })
                .await?
        }
    };
    let mut b = String::from("<h1>Apps</h1><div class=\"panel\">");
    if page_.items.is_empty() {
        b.push_str("<p class=\"muted\">No apps yet: create one with <code>POST /v1/apps</code> (see the README).</p>");
    } else {
        b.push_str("<table><tr><th>App</th><th>Name</th><th>Profile</th><th>Created</th></tr>");
        for a in &page_.items {
            let _ = write!(
                b,
                "<tr><td class=\"mono\"><a href=\"/apps/{}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td></tr>",
                url_part(&a.id),
                esc(&a.id),
                esc(&a.name),
                esc(&a.profile),
                time(Some(a.created_at))
            );
        }
        b.push_str("</table>");
    }
    if let Some(c) = &page_.next_cursor {
        let _ = write!(
            b,
            "<p><a href=\"/apps?cursor={}\">Next page →</a></p>",
            url_part(c)
        );
    }
    b.push_str("</div>");
    Ok(html(
        StatusCode::OK,
        page("Apps", Some(nav(&state, &authed, "/apps")), &b),
    ))
}

/// `GET /apps/{id}`: the app, its endpoints with their health, and its actions.
pub async fn app(
    State(state): State<DashState>,
    Extension(authed): Extension<Authed>,
    Path(app_id): Path<String>,
    q: Result<Query<Done>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Fail> {
    let q = query(q)?;
    if !authed.sees(&app_id) {
        return Err(unseen("app"));
    }
    let store = &state.api.store;
    let app = store.get_app(&app_id).await?.ok_or_else(|| unseen("app"))?;
    let endpoints = store
        .list_endpoints(
            &app_id,
            ListEndpoints {
                limit: MAX_ENDPOINTS_PER_APP,
                cursor: None,
            },
        )
        .await?;
    let csrf = &authed.session.csrf;
    let mut b = format!(
        "<h1>{} <span class=\"muted mono\" style=\"font-size:14px\">{}</span></h1>{}",
        esc(&app.name),
        esc(&app.id),
        flash(q.done.as_deref())
    );
    let _ = write!(
        b,
        "<div class=\"panel\"><table><tr><th>Profile</th><th>Created</th><th>Notifications</th></tr>\
         <tr><td>{}</td><td>{}</td><td><a href=\"/notifications?app={}\">all</a> · \
         <a href=\"/notifications?app={}&amp;status=failed\">failed</a> · \
         <a href=\"/notifications?app={}&amp;status=pending\">pending</a></td></tr></table></div>",
        esc(app.profile.name()),
        time(Some(app.created_at)),
        url_part(&app.id),
        url_part(&app.id),
        url_part(&app.id),
    );
    b.push_str("<div class=\"panel\"><h2 style=\"margin-top:0\">Endpoints</h2>");
    if endpoints.items.is_empty() {
        b.push_str("<p class=\"muted\">No endpoints: this app's notifications go to each one's <code>notify_url</code>.</p>");
    } else {
        b.push_str(
            "<table><tr><th>Endpoint</th><th>State</th><th>Last success</th><th>Last attempt</th>\
             <th>Failures in a row</th><th>Pending</th><th>Breaker</th><th></th></tr>",
        );
        for ep in &endpoints.items {
            let h = store.endpoint_health(&ep.id).await?;
            let (label, set) = if ep.enabled {
                ("Disable", "false")
            } else {
                ("Enable", "true")
            };
            let button = if authed.is_admin() {
                action(
                    &format!(
                        "/actions/apps/{}/endpoints/{}/enabled",
                        url_part(&app.id),
                        url_part(&ep.id)
                    ),
                    csrf,
                    label,
                    if ep.enabled { "secondary" } else { "" },
                    &format!("<input type=\"hidden\" name=\"enabled\" value=\"{set}\">"),
                )
            } else {
                String::new()
            };
            let failures = if h.consecutive_failures > 0 {
                format!(
                    "<span class=\"badge bad\">{}</span>",
                    h.consecutive_failures
                )
            } else {
                "0".into()
            };
            let _ = write!(
                b,
                "<tr><td>{}<br><a class=\"muted mono\" href=\"/apps/{}/endpoints/{}\">{}</a>{}</td><td>{}</td><td>{}</td><td>{}</td>\
                 <td>{failures}</td><td>{}</td><td>{}</td><td>{button}</td></tr>",
                esc(&ep.url),
                url_part(&app.id),
                url_part(&ep.id),
                esc(&ep.id),
                ep.event_types
                    .as_ref()
                    .map(|t| format!("<br><span class=\"muted\">events: {}</span>", esc(&t.join(", "))))
                    .unwrap_or_default(),
                badge(if ep.enabled { "enabled" } else { "disabled" }),
                time(h.last_success_at),
                time(h.last_attempt_at),
                count(h.pending),
                breaker(&ep.health),
            );
        }
        b.push_str("</table><p class=\"muted\">Health is read from the attempts of each endpoint's latest 50 deliveries.</p>");
    }
    b.push_str("</div>");
    if !authed.is_admin() {
        return Ok(html(
            StatusCode::OK,
            page(&app.name, Some(nav(&state, &authed, "/apps")), &b),
        ));
    }
    let since = datetime_local(now_ms() - Duration::from_secs(24 * 3_600));
    let _ = write!(
        b,
        "<div class=\"panel\"><h2 style=\"margin-top:0\">Actions</h2>\
         <p>{}</p><p>{}</p><p>{}</p></div>",
        action(
            &format!("/actions/apps/{}/recover", url_part(&app.id)),
            csrf,
            "Recover failed deliveries",
            "",
            &format!(
                "Put every failed delivery of this app created since \
                 <input type=\"datetime-local\" name=\"since\" value=\"{}\"> (UTC) back to pending: ",
                esc(&since)
            ),
        ),
        action(
            &format!("/actions/apps/{}/rotate", url_part(&app.id)),
            csrf,
            "Rotate the signing secret",
            "danger",
            "A new secret or key signs from now on; the old one keeps signing alongside for a day where the profile allows. ",
        ),
        action(
            &format!("/actions/apps/{}/api-keys", url_part(&app.id)),
            csrf,
            "Create an API key",
            "secondary",
            "An API key for this app's producers: ",
        ),
    );
    Ok(html(
        StatusCode::OK,
        page(&app.name, Some(nav(&state, &authed, "/apps")), &b),
    ))
}

#[derive(Deserialize, Default)]
pub struct SearchQuery {
    #[serde(default)]
    app: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    event_type: Option<String>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    notify_id: Option<String>,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    until: Option<String>,
    #[serde(default)]
    cursor: Option<String>,
}

fn given(s: &Option<String>) -> Option<String> {
    s.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.chars().take(256).collect())
}

/// `GET /notifications`: search by status, app, event type, order key / `out_trade_no`,
/// notify id and time range, newest first, in pages.
pub async fn notifications(
    State(state): State<DashState>,
    Extension(authed): Extension<Authed>,
    q: Result<Query<SearchQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Fail> {
    let q = query(q)?;
    let mut problems = Vec::new();
    let status = given(&q.status).and_then(|s| {
        DeliveryStatus::parse(&s).or_else(|| {
            problems.push(format!(
                "status {s:?} is not pending, succeeded, failed or canceled"
            ));
            None
        })
    });
    let mut time_of = |field: &str, v: &Option<String>| -> Option<UnixMillis> {
        let v = given(v)?;
        parse_datetime(&v).or_else(|| {
            problems.push(format!(
                "{field} {v:?} is not a date and time (YYYY-MM-DDTHH:MM, UTC)"
            ));
            None
        })
    };
    let from = time_of("from", &q.from);
    let until = time_of("until", &q.until);
    let event_type = given(&q.event_type).and_then(|s| {
        s.parse::<EventType>()
            .map_err(|e| problems.push(e.to_string()))
            .ok()
    });
    // An API key's session searches its own app, whatever the form says.
    let search = SearchNotifications {
        app_id: match authed.app_scope() {
            Some(own) => Some(own.to_string()),
            None => given(&q.app),
        },
        status,
        event_type,
        key: given(&q.key),
        notify_id: given(&q.notify_id),
        from,
        until,
        limit: PAGE,
        cursor: given(&q.cursor),
    };
    let field = |name: &str, label: &str, v: &Option<String>, kind: &str| {
        format!(
            "<label>{label}<input type=\"{kind}\" name=\"{name}\" value=\"{}\"></label>",
            esc(&given(v).unwrap_or_default())
        )
    };
    let mut b = String::from("<h1>Notifications</h1><div class=\"panel\"><form class=\"filters\" method=\"get\" action=\"/notifications\">");
    b.push_str("<label>Status<select name=\"status\"><option value=\"\">any</option>");
    for s in ["pending", "succeeded", "failed", "canceled"] {
        let sel = if q.status.as_deref() == Some(s) {
            " selected"
        } else {
            ""
        };
        let _ = write!(b, "<option{sel}>{s}</option>");
    }
    b.push_str("</select></label>");
    if authed.app_scope().is_none() {
        b.push_str(&field("app", "App id", &q.app, "text"));
    }
    b.push_str(&field("event_type", "Event type", &q.event_type, "text"));
    b.push_str(&field("key", "Order key / out_trade_no", &q.key, "text"));
    b.push_str(&field("notify_id", "Notify id", &q.notify_id, "text"));
    b.push_str(&field("from", "From (UTC)", &q.from, "datetime-local"));
    b.push_str(&field("until", "Until (UTC)", &q.until, "datetime-local"));
    b.push_str("<button type=\"submit\">Search</button></form></div>");
    if !problems.is_empty() {
        for p in &problems {
            let _ = write!(b, "<div class=\"error\">{}</div>", esc(p));
        }
        return Ok(html(
            StatusCode::UNPROCESSABLE_ENTITY,
            page(
                "Notifications",
                Some(nav(&state, &authed, "/notifications")),
                &b,
            ),
        ));
    }
    let found = match state.api.store.search_notifications(search).await {
        Ok(p) => p,
        Err(herald_store::StoreError::BadCursor) => {
            return Err(Fail::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "That page cursor is not valid.",
            ))
        }
        Err(e) => return Err(e.into()),
    };
    b.push_str("<div class=\"panel\">");
    if found.items.is_empty() {
        b.push_str("<p class=\"muted\">No notifications match in this stretch.</p>");
    } else {
        b.push_str("<table><tr><th>Created</th><th>Notification</th><th>App</th><th>Event type</th><th>Order key</th><th>Deliveries</th></tr>");
        for n in &found.items {
            let deliveries: Vec<String> = n
                .deliveries
                .iter()
                .map(|d| badge(d.status.as_str()))
                .collect();
            let _ = write!(
                b,
                "<tr><td>{}</td><td class=\"mono\"><a href=\"/notifications/{}\">{}</a></td>\
                 <td class=\"mono\"><a href=\"/apps/{}\">{}</a></td><td>{}</td><td class=\"mono\">{}</td><td>{}</td></tr>",
                time(Some(n.created_at)),
                url_part(&n.id),
                esc(&n.id),
                url_part(&n.app_id),
                esc(&n.app_id),
                esc(&n.event_type),
                esc(n.order_key.as_deref().unwrap_or("")),
                deliveries.join(" ")
            );
        }
        b.push_str("</table>");
    }
    if let Some(c) = &found.next_cursor {
        let mut params: Vec<(String, String)> = [
            ("app", &q.app),
            ("status", &q.status),
            ("event_type", &q.event_type),
            ("key", &q.key),
            ("notify_id", &q.notify_id),
            ("from", &q.from),
            ("until", &q.until),
        ]
        .into_iter()
        .filter_map(|(k, v)| given(v).map(|v| (k.to_string(), v)))
        .collect();
        params.push(("cursor".into(), c.clone()));
        let qs: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params)
            .finish();
        let _ = write!(
            b,
            "<p><a href=\"/notifications?{}\">Older →</a> <span class=\"muted\">(each page examines at most {} notifications)</span></p>",
            esc(&qs),
            herald_store::dashboard::SEARCH_SCAN
        );
    }
    b.push_str("</div>");
    Ok(html(
        StatusCode::OK,
        page(
            "Notifications",
            Some(nav(&state, &authed, "/notifications")),
            &b,
        ),
    ))
}

/// One attempt: time, duration, outcome, the response, and the request as sent.
fn attempt_html(
    b: &mut String,
    latest: bool,
    all_requests: bool,
    a: &Attempt,
    n: &Notification,
    d: &Delivery,
    app: Option<&herald_store::App>,
) {
    let ok = a.error_class.is_none();
    let _ = write!(
        b,
        "<div class=\"attempt {}\"><strong>#{}</strong> {} · {} ms · {} {}{}",
        if ok { "ok" } else { "bad" },
        a.n,
        time(Some(a.at)),
        a.duration_ms,
        a.status_code
            .map(|s| format!("HTTP {s}"))
            .unwrap_or_else(|| "no response".into()),
        if ok {
            badge("acknowledged")
        } else {
            badge("failed")
        },
        a.error_class
            .as_ref()
            .map(|c| format!(" <span class=\"mono\">{}</span>", esc(c)))
            .unwrap_or_default(),
    );
    if let Some(e) = &a.error {
        let _ = write!(b, "<div class=\"muted\">{}</div>", esc(e));
    }
    if let Some(r) = &a.response {
        let _ = write!(
            b,
            "<details><summary>Response body</summary><pre>{}</pre></details>",
            esc(r)
        );
    }
    // Rebuilding signs (RSA for some profiles): done for the latest attempt of each delivery
    // on the notification page, and for every attempt on the delivery's own page.
    if !latest && !all_requests {
        let _ = write!(
            b,
            "<div class=\"muted\">Request as sent: on <a href=\"/deliveries/{}\">the delivery's page</a>.</div></div>",
            url_part(&d.id)
        );
        return;
    }
    match app.map(|app| sent::rebuild(app.profile, &app.credentials, n, d, a.at)) {
        Some(Ok(req)) => {
            let headers: String = req
                .headers
                .iter()
                .map(|(k, v)| format!("{}: {}\n", esc(k), esc(v)))
                .collect();
            let _ = write!(
                b,
                "<details{}><summary>Request as sent</summary><pre>POST {}\n{headers}\n{}</pre>\
                 <div class=\"muted\">Rebuilt from the stored notification with this attempt's time; signatures masked. \
                 Random nonces (WeChat Pay v3) differ from the bytes on the wire.</div></details>",
                if latest { " open" } else { "" },
                esc(&req.url),
                esc(&req.body)
            );
        }
        Some(Err(e)) => {
            let _ = write!(b, "<div class=\"muted\">{}</div>", esc(&e));
        }
        None => {}
    }
    b.push_str("</div>");
}

/// `GET /notifications/{id}`: the notification, every delivery with its latest attempts
/// (earlier ones on the delivery's page), the next attempt time, and resend buttons.
pub async fn notification(
    State(state): State<DashState>,
    Extension(authed): Extension<Authed>,
    Path(id): Path<String>,
    q: Result<Query<Done>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Fail> {
    let q = query(q)?;
    let store = &state.api.store;
    let detail = store
        .get_notification(&id)
        .await?
        .filter(|d| authed.sees(&d.notification.app_id))
        .ok_or_else(|| unseen("notification"))?;
    let n = &detail.notification;
    let app = store.get_app(&n.app_id).await?;
    let csrf = &authed.session.csrf;
    let payload = serde_json::from_str::<serde_json::Value>(&n.payload)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| n.payload.clone());
    let mut b = format!(
        "<h1>Notification <span class=\"mono\" style=\"font-size:15px\">{}</span></h1>{}\
         <div class=\"panel\"><table>\
         <tr><th>App</th><th>Event type</th><th>Created</th><th>Order key</th><th>Idempotency key</th><th>notify_url</th></tr>\
         <tr><td class=\"mono\"><a href=\"/apps/{}\">{}</a></td><td>{}</td><td>{}</td><td class=\"mono\">{}</td><td class=\"mono\">{}</td><td>{}</td></tr></table>\
         <details open><summary>Payload</summary><pre>{}</pre></details></div>",
        esc(&n.id),
        flash(q.done.as_deref()),
        url_part(&n.app_id),
        esc(&n.app_id),
        esc(&n.event_type),
        time(Some(n.created_at)),
        esc(n.order_key.as_deref().unwrap_or("—")),
        esc(n.idempotency_key.as_deref().unwrap_or("—")),
        esc(n.notify_url.as_deref().unwrap_or("—")),
        esc(&payload),
    );
    for dd in &detail.deliveries {
        let d = &dd.delivery;
        let resend = if d.status == DeliveryStatus::Canceled || !authed.is_admin() {
            String::new()
        } else {
            action(
                &format!("/actions/deliveries/{}/resend", url_part(&d.id)),
                csrf,
                "Resend",
                "",
                "",
            )
        };
        let _ = write!(
            b,
            "<div class=\"panel delivery\" id=\"{}\"><h2 style=\"margin-top:0\">Delivery <span class=\"mono\">{}</span> {} {resend}</h2>\
             <table><tr><th>URL</th><th>Notify id</th><th>Attempts</th><th>Next attempt</th><th>Updated</th></tr>\
             <tr><td>{}</td><td class=\"mono\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr></table>",
            esc(&d.id),
            esc(&d.id),
            badge(d.status.as_str()),
            esc(&d.url),
            esc(&d.notify_id),
            d.attempts,
            time(d.next_attempt_at),
            time(Some(d.updated_at)),
        );
        if dd.attempts.len() < d.attempts as usize {
            let _ = write!(
                b,
                "<p class=\"muted\">The latest {} of {} attempts; <a href=\"/deliveries/{}\">every attempt</a>.</p>",
                dd.attempts.len(),
                d.attempts,
                url_part(&d.id)
            );
        }
        for (i, a) in dd.attempts.iter().rev().enumerate() {
            attempt_html(&mut b, i == 0, false, a, n, d, app.as_ref());
        }
        if dd.attempts.is_empty() {
            b.push_str("<p class=\"muted\">No attempt yet.</p>");
        }
        b.push_str("</div>");
    }
    Ok(html(
        StatusCode::OK,
        page(
            "Notification",
            Some(nav(&state, &authed, "/notifications")),
            &b,
        ),
    ))
}

/// `GET /deliveries/{id}`: every attempt of a delivery, oldest first, in pages.
pub async fn delivery(
    State(state): State<DashState>,
    Extension(authed): Extension<Authed>,
    Path(id): Path<String>,
    q: Result<Query<Done>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Fail> {
    let q = query(q)?;
    let store = &state.api.store;
    let dd = store
        .get_delivery(&id)
        .await?
        .filter(|dd| authed.sees(&dd.delivery.app_id))
        .ok_or_else(|| unseen("delivery"))?;
    let d = &dd.delivery;
    let detail = store
        .get_notification(&d.notification_id)
        .await?
        .ok_or_else(|| Fail::new(StatusCode::NOT_FOUND, "No such notification."))?;
    let app = store.get_app(&d.app_id).await?;
    let page_ = match store
        .list_attempts(
            &id,
            ListAttempts {
                limit: MAX_PAGE_LIMIT,
                cursor: q.cursor.clone(),
            },
        )
        .await
    {
        Ok(p) => p.ok_or_else(|| Fail::new(StatusCode::NOT_FOUND, "No such delivery."))?,
        Err(herald_store::StoreError::BadCursor) => {
            return Err(Fail::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "That page cursor is not valid.",
            ))
        }
        Err(e) => return Err(e.into()),
    };
    let mut b = format!(
        "<h1>Delivery <span class=\"mono\" style=\"font-size:15px\">{}</span> {}</h1>\
         <p>Of notification <a class=\"mono\" href=\"/notifications/{}\">{}</a> to {} · {} attempts · next {}</p><div class=\"panel\">",
        esc(&d.id),
        badge(d.status.as_str()),
        url_part(&d.notification_id),
        esc(&d.notification_id),
        esc(&d.url),
        d.attempts,
        time(d.next_attempt_at),
    );
    for a in &page_.items {
        attempt_html(
            &mut b,
            false,
            true,
            a,
            &detail.notification,
            d,
            app.as_ref(),
        );
    }
    if let Some(c) = &page_.next_cursor {
        let _ = write!(
            b,
            "<p><a href=\"/deliveries/{}?cursor={}\">Later attempts →</a></p>",
            url_part(&d.id),
            url_part(c)
        );
    }
    b.push_str("</div>");
    Ok(html(
        StatusCode::OK,
        page("Delivery", Some(nav(&state, &authed, "/notifications")), &b),
    ))
}

/// An endpoint's breaker as the engine keeps it: closed, open until a time (then one probe),
/// or disabled with the reason.
fn breaker(h: &herald_store::EndpointHealth) -> String {
    match h.state {
        herald_store::BreakerState::Closed => badge("closed"),
        herald_store::BreakerState::Open => {
            format!("{} until {}", badge("open"), time(h.open_until))
        }
        herald_store::BreakerState::Disabled => format!(
            "{}<br><span class=\"muted\">{}</span>",
            badge("disabled"),
            esc(h.disabled_reason.as_deref().unwrap_or(""))
        ),
    }
}
