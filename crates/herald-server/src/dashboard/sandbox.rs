//! The payment sandbox in the dashboard (`herald serve --sandbox`): payments with their
//! trades, refunds and notifications, and buttons to refund, cancel and set each drill. The
//! buttons run the sandbox API's own operations. Without `--sandbox` these pages are 404;
//! like the sandbox API they are the admin's (an API key's session gets 403).
use std::fmt::Write as _;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;
use herald_store::dashboard::ListPage;
use serde::Deserialize;
use serde_json::{json, Value};

use super::html::{action, badge, esc, page, time, url_part};
use super::pages::nav;
use super::{html, redirect, Authed, DashState, Fail, FormData};
use crate::sandbox::Sandbox;

fn sandbox(state: &DashState) -> Result<&Sandbox, Fail> {
    state.sandbox.as_ref().ok_or_else(|| {
        Fail::new(
            StatusCode::NOT_FOUND,
            "The payment sandbox is not mounted (start herald serve with --sandbox).",
        )
    })
}

#[derive(Deserialize, Default)]
pub struct ListQuery {
    #[serde(default)]
    cursor: Option<String>,
    #[serde(default)]
    done: Option<String>,
}

/// A field of the sandbox's trade document, as text.
fn text(v: &Value, key: &str) -> String {
    match &v[key] {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `GET /sandbox`: payments, newest first.
pub async fn list(
    State(state): State<DashState>,
    Extension(authed): Extension<Authed>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Fail> {
    authed.require_admin()?;
    sandbox(&state)?;
    let q = q.map(|Query(q)| q).unwrap_or_default();
    let found = state
        .api
        .store
        .list_sandbox_payments(ListPage {
            limit: 50,
            cursor: q.cursor,
        })
        .await?;
    let mut b = String::from("<h1>Sandbox payments</h1><div class=\"panel\">");
    if found.items.is_empty() {
        b.push_str("<p class=\"muted\">No sandbox payments yet: create one with <code>POST /v1/sandbox/payments</code>, or buy something in the example shop.</p>");
    } else {
        b.push_str("<table><tr><th>Payment</th><th>out_trade_no</th><th>App</th><th>State</th><th>Amount</th><th>Created</th></tr>");
        for p in &found.items {
            // The document is the sandbox's own JSON; a field it lacks shows empty.
            let doc: Value = serde_json::from_str(&p.doc).unwrap_or(Value::Null);
            let _ = write!(
                b,
                "<tr><td class=\"mono\"><a href=\"/sandbox/{}\">{}</a></td><td class=\"mono\">{}</td>\
                 <td class=\"mono\"><a href=\"/apps/{}\">{}</a></td><td>{}</td><td>{} {}</td><td>{}</td></tr>",
                url_part(&p.id),
                esc(&p.id),
                esc(&p.out_trade_no),
                url_part(&p.app_id),
                esc(&p.app_id),
                badge(&text(&doc, "state")),
                esc(&crate::sandbox::format_amount(&doc)),
                esc(&text(&doc, "currency")),
                time(doc["created_at"].as_i64().map(herald_store::UnixMillis::new)),
            );
        }
        b.push_str("</table>");
    }
    if let Some(c) = &found.next_cursor {
        let _ = write!(
            b,
            "<p><a href=\"/sandbox?cursor={}\">Older →</a></p>",
            url_part(c)
        );
    }
    b.push_str("</div>");
    Ok(html(
        StatusCode::OK,
        page("Sandbox", Some(nav(&state, &authed, "/sandbox")), &b),
    ))
}

/// `GET /sandbox/{payment_id}`: the trade, its refunds, its events with their notifications,
/// and its buttons.
pub async fn show(
    State(state): State<DashState>,
    Extension(authed): Extension<Authed>,
    Path(id): Path<String>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Fail> {
    authed.require_admin()?;
    let sb = sandbox(&state)?;
    let q = q.map(|Query(q)| q).unwrap_or_default();
    let v = sb.dashboard_view(&id).await?;
    let csrf = &authed.session.csrf;
    let base = format!("/actions/sandbox/{}", url_part(&id));
    let done = match q.done.as_deref() {
        Some("refunded") => "<div class=\"flash\">Refunded; the refund notification is queued.</div>",
        Some("canceled") => "<div class=\"flash\">The trade is closed.</div>",
        Some("drills") => "<div class=\"flash\">Drills saved; they apply to the notifications enqueued from now on.</div>",
        _ => "",
    };
    let mut b = format!(
        "<h1>Payment <span class=\"mono\" style=\"font-size:15px\">{}</span> {}</h1>{done}<div class=\"panel\"><table>\
         <tr><th>out_trade_no</th><th>Trade no</th><th>App</th><th>Profile</th><th>Amount</th><th>Refunded</th><th>Refundable</th></tr>\
         <tr><td class=\"mono\">{}</td><td class=\"mono\">{}</td><td class=\"mono\"><a href=\"/apps/{}\">{}</a></td><td>{}</td><td>{} {}</td><td>{}</td><td>{}</td></tr></table>\
         <p>Checkout page: <a href=\"{}\">{}</a> · notify_url <span class=\"mono\">{}</span></p></div>",
        esc(&id),
        badge(&text(&v, "status")),
        esc(&text(&v, "out_trade_no")),
        esc(&text(&v, "trade_no")),
        url_part(&text(&v, "app_id")),
        esc(&text(&v, "app_id")),
        esc(&text(&v, "profile")),
        esc(&text(&v, "total_amount")),
        esc(&text(&v, "currency")),
        esc(&text(&v, "refunded_amount")),
        esc(&text(&v, "refundable_amount")),
        esc(&text(&v, "payment_url")),
        esc(&text(&v, "payment_url")),
        esc(&text(&v, "notify_url")),
    );
    let _ = write!(
        b,
        "<div class=\"panel\"><h2 style=\"margin-top:0\">Actions</h2><p>{}</p><p>{}</p>",
        action(
            &format!("{base}/refund"),
            csrf,
            "Refund",
            "",
            "Refund <input name=\"refund_amount\" placeholder=\"e.g. 1.00\" size=\"8\"> (a decimal in the trade's currency) ",
        ),
        action(&format!("{base}/cancel"), csrf, "Cancel (close) the unpaid trade", "secondary", ""),
    );
    let d = &v["drills"];
    let check = |name: &str| if d[name] == true { " checked" } else { "" };
    let _ = write!(
        b,
        "<form method=\"post\" action=\"{}\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <strong>Drills</strong> (for the notifications enqueued from now on): \
         <label>duplicates <input type=\"number\" name=\"duplicate\" min=\"0\" max=\"10\" value=\"{}\" style=\"width:4em\"></label> \
         <label><input type=\"checkbox\" name=\"out_of_order\" value=\"true\"{}> out of order</label> \
         <label><input type=\"checkbox\" name=\"bad_signature\" value=\"true\"{}> bad signature</label> \
         <label><input type=\"checkbox\" name=\"tampered_amount\" value=\"true\"{}> tampered amount</label> \
         <label><input type=\"checkbox\" name=\"trade_finished\" value=\"true\"{}> trade finished</label> \
         <button type=\"submit\">Save drills</button></form></div>",
        esc(&format!("{base}/drills")),
        esc(csrf),
        d["duplicate"].as_u64().unwrap_or(0),
        check("out_of_order"),
        check("bad_signature"),
        check("tampered_amount"),
        check("trade_finished"),
    );
    if let Some(refunds) = v["refunds"].as_array().filter(|r| !r.is_empty()) {
        b.push_str("<div class=\"panel\"><h2 style=\"margin-top:0\">Refunds</h2><table><tr><th>out_refund_no</th><th>Refund id</th><th>Amount (minor units)</th><th>Status</th><th>At</th></tr>");
        for r in refunds {
            let _ = write!(
                b,
                "<tr><td class=\"mono\">{}</td><td class=\"mono\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&text(r, "out_refund_no")),
                esc(&text(r, "refund_id")),
                esc(&text(r, "amount")),
                badge(&text(r, "status")),
                esc(&text(r, "at")),
            );
        }
        b.push_str("</table></div>");
    }
    b.push_str("<div class=\"panel\"><h2 style=\"margin-top:0\">Events and their notifications</h2><table><tr><th>#</th><th>Kind</th><th>At</th><th>Event type</th><th>Notifications</th><th>Note</th></tr>");
    for e in v["events"].as_array().into_iter().flatten() {
        let links: Vec<String> = e["notifications"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|n| {
                let nid = text(n, "notification_id");
                format!(
                    "<a class=\"mono\" href=\"/notifications/{}\">{}</a> <span class=\"muted\">{}</span>",
                    url_part(&nid),
                    esc(&nid),
                    esc(&text(n, "role"))
                )
            })
            .collect();
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&text(e, "seq")),
            esc(&text(e, "kind")),
            esc(&text(e, "at")),
            esc(&text(e, "event_type")),
            links.join("<br>"),
            esc(&text(e, "note")),
        );
    }
    b.push_str("</table></div>");
    Ok(html(
        StatusCode::OK,
        page(
            "Sandbox payment",
            Some(nav(&state, &authed, "/sandbox")),
            &b,
        ),
    ))
}

/// `POST /actions/sandbox/{payment_id}/refund` `refund_amount=1.00`.
pub async fn refund(
    State(state): State<DashState>,
    Extension(authed): Extension<Authed>,
    Extension(form): Extension<FormData>,
    Path(id): Path<String>,
) -> Result<Response, Fail> {
    authed.require_admin()?;
    let amount = form.get("refund_amount").ok_or_else(|| {
        Fail::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Give the amount to refund (e.g. 1.00). Nothing was refunded.",
        )
    })?;
    sandbox(&state)?.dashboard_refund(&id, amount).await?;
    Ok(redirect(&format!(
        "/sandbox/{}?done=refunded",
        url_part(&id)
    )))
}

/// `POST /actions/sandbox/{payment_id}/cancel`: closes an unpaid trade.
pub async fn cancel(
    State(state): State<DashState>,
    Extension(authed): Extension<Authed>,
    Path(id): Path<String>,
) -> Result<Response, Fail> {
    authed.require_admin()?;
    sandbox(&state)?.dashboard_cancel(&id).await?;
    Ok(redirect(&format!(
        "/sandbox/{}?done=canceled",
        url_part(&id)
    )))
}

/// `POST /actions/sandbox/{payment_id}/drills`: replaces the trade's drills.
pub async fn drills(
    State(state): State<DashState>,
    Extension(authed): Extension<Authed>,
    Extension(form): Extension<FormData>,
    Path(id): Path<String>,
) -> Result<Response, Fail> {
    authed.require_admin()?;
    let duplicate: u32 = match form.get("duplicate") {
        None => 0,
        Some(s) => s.parse().map_err(|_| {
            Fail::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "duplicates must be a whole number from 0 to 10. Nothing was changed.",
            )
        })?,
    };
    let flag = |name: &str| form.get(name) == Some("true");
    let drills = json!({
        "duplicate": duplicate,
        "out_of_order": flag("out_of_order"),
        "bad_signature": flag("bad_signature"),
        "tampered_amount": flag("tampered_amount"),
        "trade_finished": flag("trade_finished"),
    });
    sandbox(&state)?.dashboard_drills(&id, drills).await?;
    Ok(redirect(&format!("/sandbox/{}?done=drills", url_part(&id))))
}
