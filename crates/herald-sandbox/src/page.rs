//! The buyer's side (public, no token): the checkout page with the merchant, subject, amount,
//! when the payment expires, and a QR code of the page's own URL, and the Pay / Cancel forms
//! it posts. Paying redirects to `return_url` with the provider's synchronous parameters
//! (signed for Alipay); Cancel closes the trade and returns the buyer to `return_url` without
//! them, as a cashier's "back to the merchant" link does.
//!
//! Like a provider's cashier, the page notices a payment made elsewhere (the phone that
//! scanned the QR code): a small inline script polls `GET /pay/{id}/status` and, once the
//! trade is paid, moves on to `GET /pay/{id}/return` (the same redirect Pay answers); it also
//! counts down to the expiry. Without scripts the page still works: the expiry is printed and
//! Pay / Cancel are plain forms. Self-contained HTML: inline CSS, inline SVG, every value
//! escaped. The QR hint tells the truth about its address: a page served on a loopback
//! address is reachable from this machine only.
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};

use super::model::{Payment, TradeState};
use super::{money, qr, wire, Sandbox};
use herald_engine::now_ms;
use herald_http::error::ApiError;
use herald_store::UnixMillis;

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

/// True when `url`'s host is a loopback address or `localhost`: a phone cannot open it.
pub fn is_loopback_url(url: &str) -> bool {
    let Ok(u) = url::Url::parse(url) else {
        return false;
    };
    match u.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// What the QR hint says: where the code leads, and whether a phone can follow it.
pub fn qr_hint(url: &str) -> String {
    if is_loopback_url(url) {
        let host = url::Url::parse(url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_string))
            .unwrap_or_default();
        format!(
            "This QR code points at {host}, which only this machine can open: a phone cannot \
             pay with it. Pay here, or start `herald demo --host 0.0.0.0` (or `herald serve \
             --sandbox-public-url` with an address your phone reaches) to pay from a phone."
        )
    } else {
        "Scan to pay on your phone, or pay here.".to_string()
    }
}

/// The polling and countdown script: asks `/pay/{id}/status` every 2 seconds and moves on
/// to what it names once the trade is no longer waiting for the buyer.
const SCRIPT: &str = "(function(){var m=document.querySelector('main');var id=m.dataset.payment;\
var exp=+m.dataset.expiresMs;var c=document.getElementById('countdown');\
function tick(){if(!c)return;var s=Math.max(0,Math.round((exp-Date.now())/1000));\
c.textContent=s>0?('(expires in '+Math.floor(s/60)+':'+('0'+s%60).slice(-2)+')'):'(expired)';}\
function poll(){fetch('/pay/'+encodeURIComponent(id)+'/status',{cache:'no-store'}).then(function(r){return r.json();})\
.then(function(j){if(j.next){location.href=j.next;}}).catch(function(){});}\
tick();setInterval(tick,1000);setInterval(poll,2000);})();";

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
            "<div class=\"qr\">{}</div><p class=\"hint\" id=\"qr-hint\">{}</p>\
             <p class=\"hint\" id=\"expiry\">Pay before {} UTC <span id=\"countdown\"></span></p>\
             <div class=\"row\"><form method=\"post\" action=\"/pay/{id}/pay\"><button id=\"pay\" type=\"submit\">Pay {}</button></form>\
             <form method=\"post\" action=\"/pay/{id}/cancel\"><button id=\"cancel\" type=\"submit\">Cancel</button></form></div>",
            qr::svg(&url),
            escape(&qr_hint(&url)),
            escape(&expiry_text(p.expires_at)),
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
         <body><main data-payment=\"{id}\" data-expires-ms=\"{expires}\"><h1>{merchant_t}</h1><p class=\"subject\">{subject}</p>\
         <p class=\"amount\" id=\"amount\">{amount_t}</p>{message}{body}\
         <p class=\"meta\">Herald payment sandbox ({profile}) · order {order} · {id}</p></main>{script}</body></html>",
        expires = p.expires_at,
        script = if p.state == TradeState::WaitBuyerPay {
            format!("<script>{SCRIPT}</script>")
        } else {
            String::new()
        },
        amount_t = escape(&amount),
        merchant_t = escape(merchant),
        subject = escape(&p.subject),
        profile = escape(p.profile.name()),
        order = escape(&p.out_trade_no),
    )
}

/// The expiry as `YYYY-MM-DD HH:MM:SS` (UTC).
fn expiry_text(ms: UnixMillis) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    time::OffsetDateTime::from_unix_timestamp(ms.to_seconds().get())
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_default()
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

/// `GET /pay/{payment_id}/status`: what the checkout page polls. `state` is the trade's
/// (`WAIT_BUYER_PAY`, `TRADE_SUCCESS`, ...); `next` is where the page goes now: the return
/// redirect once paid, the page itself once closed, `null` while waiting.
pub async fn status(State(sandbox): State<Sandbox>, Path(id): Path<String>) -> Response {
    let (p, _) = match sandbox.load(&id).await {
        Ok(x) => x,
        Err(ApiError::NotFound(_)) => return (
            StatusCode::NOT_FOUND,
            [(header::CACHE_CONTROL, "no-store")],
            axum::Json(
                serde_json::json!({"error": {"code": "not_found", "message": "no such payment"}}),
            ),
        )
            .into_response(),
        Err(e) => return e.into_response(),
    };
    let next = match p.state {
        TradeState::WaitBuyerPay => None,
        TradeState::TradeSuccess | TradeState::TradeFinished if p.return_url.is_some() => {
            Some(format!("/pay/{}/return", p.id))
        }
        _ => Some(format!("/pay/{}", p.id)),
    };
    (
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(serde_json::json!({
            "state": p.state.as_str(),
            "expires_at_ms": p.expires_at,
            "next": next,
        })),
    )
        .into_response()
}

/// The 303 to `return_url` with the synchronous parameters of a paid trade.
async fn return_redirect(sandbox: &Sandbox, p: &Payment, return_url: &str) -> Response {
    let app = match sandbox.app(&p.app_id).await {
        Ok(a) => a,
        Err(e) => return from_error(e),
    };
    let mut url = match url::Url::parse(return_url) {
        Ok(u) => u,
        Err(e) => return ApiError::Internal(format!("stored return_url: {e}")).into_response(),
    };
    let existing: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    let params = match wire::return_params(p, &app.credentials, now_ms(), existing) {
        Ok(params) => params,
        Err(e) => return ApiError::internal(&e).into_response(),
    };
    url.set_query(None);
    url.query_pairs_mut().extend_pairs(params);
    (StatusCode::SEE_OTHER, [(header::LOCATION, url.to_string())]).into_response()
}

/// `POST /pay/{payment_id}/pay`: pays (once; paying again sends nothing) and answers 303 to
/// `return_url` with the synchronous parameters, or shows the paid page.
pub async fn pay(State(sandbox): State<Sandbox>, Path(id): Path<String>) -> Response {
    let (p, _) = match sandbox.pay(&id).await {
        Ok(x) => x,
        Err(e) => return from_error(e),
    };
    match &p.return_url {
        Some(return_url) => return_redirect(&sandbox, &p, return_url).await,
        None => page(&sandbox, &id, StatusCode::OK, Some("Payment received.")).await,
    }
}

/// `GET /pay/{payment_id}/return`: where the polling page goes once the trade was paid
/// elsewhere: the same 303 to `return_url` that Pay answers. A trade not paid (or without a
/// `return_url`) shows the checkout page instead.
pub async fn paid_return(State(sandbox): State<Sandbox>, Path(id): Path<String>) -> Response {
    let (p, _) = match sandbox.load(&id).await {
        Ok(x) => x,
        Err(e) => return from_error(e),
    };
    match (&p.return_url, p.state) {
        (Some(return_url), TradeState::TradeSuccess | TradeState::TradeFinished) => {
            return_redirect(&sandbox, &p, return_url).await
        }
        _ => page(&sandbox, &id, StatusCode::OK, None).await,
    }
}

/// `POST /pay/{payment_id}/cancel`: the buyer gives up; the trade closes (TRADE_CLOSED), the
/// close notification goes out where the provider sends one, and the buyer goes back to the
/// shop's `return_url` (as given, without payment parameters: nothing was paid). Without a
/// `return_url` the page says the payment was canceled.
pub async fn cancel(State(sandbox): State<Sandbox>, Path(id): Path<String>) -> Response {
    let p = match sandbox.close(&id, "canceled").await {
        Ok(p) => p,
        Err(e) => return from_error(e),
    };
    match p.return_url.as_deref().map(url::Url::parse) {
        Some(Ok(url)) => {
            (StatusCode::SEE_OTHER, [(header::LOCATION, url.to_string())]).into_response()
        }
        _ => page(&sandbox, &id, StatusCode::OK, Some("Payment canceled.")).await,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_qr_hint_says_a_loopback_address_is_reachable_from_this_machine_only() {
        for url in [
            "http://127.0.0.1:8080/pay/pay_1",
            "http://localhost:8080/pay/pay_1",
            "http://[::1]:8080/pay/pay_1",
        ] {
            let hint = super::qr_hint(url);
            assert!(hint.contains("only this machine can open"), "{url}: {hint}");
            assert!(hint.contains("--host 0.0.0.0"), "{url}: {hint}");
        }
        let hint = super::qr_hint("http://192.168.1.20:8080/pay/pay_1");
        assert_eq!(hint, "Scan to pay on your phone, or pay here.");
    }
}
