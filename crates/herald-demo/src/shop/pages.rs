//! The shop's HTML: the product page, the order / return page and plain messages. Every
//! interpolated value is escaped; no external assets.
use herald_inbox::{OrderRecord, OrderState};
use herald_protocols::receive::format_minor;

use super::Product;

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:46rem;margin:2rem auto;padding:0 1rem;color:#1d2330}\
h1{font-size:1.6rem}.card{border:1px solid #d8dce5;border-radius:10px;padding:1rem 1.2rem;margin:.8rem 0}\
.price{font-weight:600}button{font-size:1rem;padding:.45rem 1.1rem;border-radius:6px;border:0;background:#1f6feb;color:#fff;cursor:pointer}\
a.button{display:inline-block;padding:.45rem 1.1rem;border-radius:6px;background:#1f6feb;color:#fff;text-decoration:none}.state{display:inline-block;padding:.15rem .6rem;border-radius:99px;font-weight:600}\
.unpaid{background:#fff4d6}.paid{background:#d9f7e1}.refunded,.partially_refunded{background:#e6ecff}.closed{background:#eee}\
table{border-collapse:collapse;width:100%}td,th{text-align:left;padding:.3rem;border-bottom:1px solid #eee}small{color:#667}";

pub use herald_http::html::escape;

fn page(title: &str, head_extra: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{}</title>{head_extra}<style>{STYLE}</style></head><body>{body}</body></html>",
        escape(title)
    )
}

fn money(minor: i64, currency: &str) -> String {
    format!("{} {}", format_minor(minor, 2), escape(currency))
}

pub fn home(catalog: &[Product], currency: &str, recent: &[OrderRecord], can_pay: bool) -> String {
    let mut body = String::from("<h1>Herald example shop</h1>");
    if !can_pay {
        body.push_str(
            "<p><small>No payment platform is configured: orders wait for a notification \
             from any sender speaking this shop's profile.</small></p>",
        );
    }
    for p in catalog {
        body.push_str(&format!(
            "<div class=\"card\"><h2>{}</h2><p>{}</p><p class=\"price\">{}</p>\
             <form method=\"post\" action=\"/orders\"><input type=\"hidden\" name=\"product\" value=\"{}\">\
             <button id=\"buy-{}\" type=\"submit\">Buy</button></form></div>",
            escape(p.name),
            escape(p.description),
            money(p.price_minor, currency),
            escape(p.id),
            escape(p.id),
        ));
    }
    if !recent.is_empty() {
        body.push_str("<h2>Recent orders</h2><table><tr><th>Order</th><th>Item</th><th>Amount</th><th>State</th></tr>");
        for o in recent {
            body.push_str(&format!(
                "<tr><td><a href=\"/orders/{0}\">{0}</a></td><td>{1}</td><td>{2}</td><td>{3}</td></tr>",
                escape(&o.out_trade_no),
                escape(&o.subject),
                money(o.amount_minor, &o.currency),
                state_badge(o.state, false),
            ));
        }
        body.push_str("</table>");
    }
    page("Herald example shop", "", &body)
}

fn state_badge(state: OrderState, returned: bool) -> String {
    let label = match state {
        OrderState::Unpaid if returned => "processing",
        OrderState::Unpaid => "awaiting payment",
        OrderState::Paid => "paid",
        OrderState::PartiallyRefunded => "partially refunded",
        OrderState::Refunded => "refunded",
        OrderState::Closed => "closed",
    };
    format!(
        "<span id=\"state\" class=\"state {}\" data-state=\"{}\">{label}</span>",
        state.as_str(),
        state.as_str()
    )
}

/// The order page and `return_url`: the state is the database's. An unpaid order says
/// "awaiting payment" (with a link to its checkout page, when there is one) until the buyer
/// comes back from paying, then "processing" until the notification (or the trade query)
/// settles it; while unpaid the page reloads itself every two seconds.
pub fn order(o: &OrderRecord, returned: bool, payment_url: Option<&str>) -> String {
    let waiting = o.state == OrderState::Unpaid;
    let refresh = if waiting {
        "<meta http-equiv=\"refresh\" content=\"2\">"
    } else {
        ""
    };
    let explain = match o.state {
        OrderState::Unpaid if returned => {
            "Waiting for the payment platform's notification. If you have paid, this page \
             turns to paid as soon as the notify arrives (or the shop's query to the platform \
             confirms it); the redirect that brought you here is not proof of payment."
        }
        OrderState::Unpaid => "This order has not been paid yet.",
        OrderState::Paid => "The payment was confirmed by the payment platform. It ships soon.",
        OrderState::PartiallyRefunded => "Part of this payment was refunded.",
        OrderState::Refunded => "This payment was refunded in full.",
        OrderState::Closed => "This order was closed without payment.",
    };
    let pay = match (o.state, payment_url) {
        (OrderState::Unpaid, Some(url)) => format!(
            "<p><a id=\"pay-link\" class=\"button\" href=\"{}\">{}</a></p>",
            escape(url),
            if returned {
                "Back to the payment page"
            } else {
                "Pay now"
            }
        ),
        _ => String::new(),
    };
    let refunded = if o.refunded_minor > 0 {
        format!("<p>Refunded: {}</p>", money(o.refunded_minor, &o.currency))
    } else {
        String::new()
    };
    let body = format!(
        "<h1>Order {}</h1><div class=\"card\"><p>{}</p><p class=\"price\">{}</p>\
         <p>State: {}</p>{refunded}<p><small>{}</small></p>{pay}</div><p><a href=\"/\">Back to the shop</a></p>",
        escape(&o.out_trade_no),
        escape(&o.subject),
        money(o.amount_minor, &o.currency),
        state_badge(o.state, returned),
        escape(explain),
    );
    page(&format!("Order {}", o.out_trade_no), refresh, &body)
}

pub fn message(title: &str, text: &str) -> String {
    page(
        title,
        "",
        &format!(
            "<h1>{}</h1><p>{}</p><p><a href=\"/\">Back to the shop</a></p>",
            escape(title),
            escape(text)
        ),
    )
}
