//! The buyer's side (public, no token): the checkout page with the merchant, subject, amount
//! and a QR code of the page's own URL, and the Pay / Cancel forms it posts. Paying
//! redirects to `return_url` with the provider's synchronous parameters (signed for
//! Alipay). Self-contained HTML: inline CSS, inline SVG, no scripts, every value escaped.
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};

use super::model::{Payment, TradeState};
use super::{money, qr, wire, Sandbox};
use herald_engine::now_ms;
use herald_http::error::ApiError;

pub use herald_http::html::escape;

const STYLE: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;background:#f4f5f7;margin:0;color:#1f2328}\
main{max-width:420px;margin:40px auto;background:#fff;border-radius:12px;box-shadow:0 2px 12px rgba(0,0,0,.08);padding:28px}\
h1{font-size:15px;font-weight:600;color:#57606a;margin:0 0 4px}.subject{font-size:18px;margin:0 0 16px}\
.amount{font-size:34px;font-weight:700;margin:0 0 18px}.qr{text-align:center}.qr svg{width:200px;height:200px}\
.hint{font-size:13px;color:#57606a;text-align:center;margin:6px 0 18px}.row{display:flex;gap:12px}\
form{flex:1}button{width:100%;padding:12px;border-radius:8px;border:0;font-size:16px;cursor:pointer}\
#pay{background:#1677ff;color:#fff}#cancel{background:#eaeef2;color:#1f2328}\
.state{padding:12px;border-radius:8px;text-align:center;font-weight:600}.paid{background:#dafbe1;color:#116329}\
.closed{background:#ffebe9;color:#a40e26}.meta{font-size:12px;color:#57606a;margin-top:18px;word-break:break-all}";

fn symbol(currency: &str) -> &'static str {
    match currency {
        "CNY" => "¥",
        "USD" => "$",
        "EUR" => "€",
        "GBP" => "£",
        "JPY" => "¥",
        _ => "",
    }
}

fn render(sandbox: &Sandbox, p: &Payment, merchant: &str, message: Option<&str>) -> String {
    let amount = format!(
        "{}{} {}",
        symbol(&p.currency),
        money::format(p.amount, &p.currency),
        p.currency
    );
    let url = sandbox.payment_url(&p.id);
    let id = escape(&p.id);
    let body = match p.state {
        TradeState::WaitBuyerPay => format!(
            "<div class=\"qr\">{}</div><p class=\"hint\">Scan to pay on your phone, or pay here.</p>\
             <div class=\"row\"><form method=\"post\" action=\"/pay/{id}/pay\"><button id=\"pay\" type=\"submit\">Pay {}</button></form>\
             <form method=\"post\" action=\"/pay/{id}/cancel\"><button id=\"cancel\" type=\"submit\">Cancel</button></form></div>",
            qr::svg(&url),
            escape(&amount)
        ),
        TradeState::TradeSuccess => {
            "<p class=\"state paid\" id=\"status\">Paid (TRADE_SUCCESS)</p>".to_string()
        }
        TradeState::TradeFinished => {
            "<p class=\"state paid\" id=\"status\">Paid (TRADE_FINISHED)</p>".to_string()
        }
        TradeState::TradeClosed if p.paid_at.is_some() => {
            "<p class=\"state closed\" id=\"status\">Refunded (TRADE_CLOSED)</p>".to_string()
        }
        TradeState::TradeClosed => {
            "<p class=\"state closed\" id=\"status\">Closed (TRADE_CLOSED)</p>".to_string()
        }
    };
    let message = message
        .map(|m| format!("<p class=\"hint\">{}</p>", escape(m)))
        .unwrap_or_default();
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>Pay {amount_t} to {merchant_t} - Herald sandbox</title><style>{STYLE}</style></head>\
         <body><main><h1>{merchant_t}</h1><p class=\"subject\">{subject}</p>\
         <p class=\"amount\" id=\"amount\">{amount_t}</p>{message}{body}\
         <p class=\"meta\">Herald payment sandbox ({profile}) · order {order} · {id}</p></main></body></html>",
        amount_t = escape(&amount),
        merchant_t = escape(merchant),
        subject = escape(&p.subject),
        profile = escape(p.profile.name()),
        order = escape(&p.out_trade_no),
    )
}

fn page_error(status: StatusCode, message: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Herald sandbox</title>\
         <style>{STYLE}</style></head><body><main><p class=\"state closed\">{}</p></main></body></html>",
        escape(message)
    );
    (status, Html(html)).into_response()
}

fn from_error(e: ApiError) -> Response {
    match e {
        ApiError::NotFound(_) => page_error(StatusCode::NOT_FOUND, "No such payment."),
        ApiError::Conflict(m) => page_error(StatusCode::CONFLICT, &m),
        other => other.into_response(),
    }
}

async fn page(sandbox: &Sandbox, id: &str, status: StatusCode, message: Option<&str>) -> Response {
    let (p, _) = match sandbox.load(id).await {
        Ok(x) => x,
        Err(e) => return from_error(e),
    };
    let merchant = match sandbox.store().get_app(&p.app_id).await {
        Ok(Some(app)) => app.name,
        _ => "Merchant".to_string(),
    };
    (status, Html(render(sandbox, &p, &merchant, message))).into_response()
}

/// `GET /pay/{payment_id}`: the checkout page, or the trade's state once paid or closed.
pub async fn show(State(sandbox): State<Sandbox>, Path(id): Path<String>) -> Response {
    page(&sandbox, &id, StatusCode::OK, None).await
}

/// `POST /pay/{payment_id}/pay`: pays (once; paying again sends nothing) and answers 303 to
/// `return_url` with the synchronous parameters, or shows the paid page.
pub async fn pay(State(sandbox): State<Sandbox>, Path(id): Path<String>) -> Response {
    let (p, _) = match sandbox.pay(&id).await {
        Ok(x) => x,
        Err(e) => return from_error(e),
    };
    let Some(return_url) = &p.return_url else {
        return page(&sandbox, &id, StatusCode::OK, Some("Payment received.")).await;
    };
    let app = match sandbox.app(&p.app_id).await {
        Ok(a) => a,
        Err(e) => return from_error(e),
    };
    let mut url = match url::Url::parse(return_url) {
        Ok(u) => u,
        Err(e) => return ApiError::Internal(format!("stored return_url: {e}")).into_response(),
    };
    let existing: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    let params = match wire::return_params(&p, &app.credentials, now_ms(), existing) {
        Ok(params) => params,
        Err(e) => return ApiError::Internal(e).into_response(),
    };
    url.set_query(None);
    url.query_pairs_mut().extend_pairs(params);
    (StatusCode::SEE_OTHER, [(header::LOCATION, url.to_string())]).into_response()
}

/// `POST /pay/{payment_id}/cancel`: the buyer gives up; the trade closes (TRADE_CLOSED) and
/// the close notification goes out where the provider sends one.
pub async fn cancel(State(sandbox): State<Sandbox>, Path(id): Path<String>) -> Response {
    match sandbox.close(&id, "canceled").await {
        Ok(_) => page(&sandbox, &id, StatusCode::OK, Some("Payment canceled.")).await,
        Err(e) => from_error(e),
    }
}

#[cfg(test)]
mod tests {}
