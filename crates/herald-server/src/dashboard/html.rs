//! The dashboard's HTML toolkit: the one escape function every page goes through
//! ([`esc`]), the page layout with its inline stylesheet, times, and the overview's chart as
//! inline SVG. Nothing here reads the store.
use std::fmt::Write as _;

use herald_store::dashboard::MinuteActivity;
use herald_store::UnixMillis;

/// Escapes text for HTML element content and quoted attribute values: the workspace's one
/// HTML escape (`herald-http`, shared with the sandbox's checkout page and the example
/// shop). Every value a page shows that did not come from this module goes through it.
pub use herald_http::html::escape as esc;

/// Percent-encodes a value for a URL query or path segment.
pub fn url_part(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// `2026-11-27 21:40:05 UTC`, or `—` for none.
pub fn time(ms: Option<UnixMillis>) -> String {
    let Some(ms) = ms else { return "—".into() };
    match time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms.get()) * 1_000_000) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => ms.to_string(),
    }
}

/// `2026-11-27T21:40` (the value of an `<input type="datetime-local">`, UTC).
pub fn datetime_local(ms: UnixMillis) -> String {
    match time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms.get()) * 1_000_000) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute()
        ),
        Err(_) => String::new(),
    }
}

/// Parses `YYYY-MM-DDTHH:MM[:SS]` (UTC, as the form's datetime inputs send) or RFC 3339.
pub fn parse_datetime(s: &str) -> Option<UnixMillis> {
    let s = s.trim();
    if let Ok(t) = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
        return Some(UnixMillis::new(
            (t.unix_timestamp_nanos() / 1_000_000) as i64,
        ));
    }
    let (date, clock) = s.split_once('T').or_else(|| s.split_once(' '))?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, mo, da) = (d.next()??, d.next()??, d.next()??);
    let mut c = clock.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (h, mi) = (c.next()??, c.next()??);
    let sec = c.next().flatten().unwrap_or(0);
    let month = time::Month::try_from(u8::try_from(mo).ok()?).ok()?;
    let date =
        time::Date::from_calendar_date(i32::try_from(y).ok()?, month, u8::try_from(da).ok()?)
            .ok()?;
    let t = date
        .with_hms(
            u8::try_from(h).ok()?,
            u8::try_from(mi).ok()?,
            u8::try_from(sec).ok()?,
        )
        .ok()?
        .assume_utc();
    Some(UnixMillis::new(
        (t.unix_timestamp_nanos() / 1_000_000) as i64,
    ))
}

/// A status word as a coloured badge.
pub fn badge(status: &str) -> String {
    let class = match status {
        "succeeded" | "acknowledged" | "enabled" | "ok" | "closed" | "TRADE_SUCCESS"
        | "TRADE_FINISHED" => "ok",
        "failed" | "disabled" | "trouble" | "open" | "TRADE_CLOSED" => "bad",
        "pending" | "WAIT_BUYER_PAY" => "warn",
        _ => "mute",
    };
    format!("<span class=\"badge {class}\">{}</span>", esc(status))
}

const STYLE: &str = r#"
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2933;background:#f4f6f8}
header{background:#1f2a37;color:#fff;display:flex;align-items:center;gap:24px;padding:0 24px;height:48px}
header .brand{font-weight:700;letter-spacing:.02em}
header nav a{color:#cbd5e1;text-decoration:none;margin-right:16px}
header nav a.on,header nav a:hover{color:#fff}
header form{margin-left:auto}
header button{background:transparent;border:1px solid #64748b;color:#e2e8f0;padding:3px 10px;border-radius:4px;cursor:pointer}
main{max-width:1180px;margin:0 auto;padding:20px 24px 48px}
h1{font-size:20px;margin:4px 0 16px}
h2{font-size:15px;margin:24px 0 8px;color:#334155}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(136px,1fr));gap:12px;margin-bottom:16px}
.card{background:#fff;border:1px solid #e2e8f0;border-radius:6px;padding:12px 14px}
.card .n{font-size:24px;font-weight:600}
.card .l{color:#64748b;font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.panel{background:#fff;border:1px solid #e2e8f0;border-radius:6px;padding:14px;margin-bottom:16px;overflow-x:auto}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:6px 8px;border-bottom:1px solid #edf2f7;vertical-align:top}
th{font-size:12px;color:#64748b;font-weight:600;text-transform:uppercase;letter-spacing:.03em}
td.mono,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12.5px}
pre{background:#0f172a;color:#e2e8f0;padding:10px;border-radius:4px;white-space:pre-wrap;word-break:break-all;font-size:12px;margin:4px 0;max-height:320px;overflow:auto}
a{color:#1d4ed8}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600}
.badge.ok{background:#dcfce7;color:#166534}.badge.bad{background:#fee2e2;color:#991b1b}
.badge.warn{background:#fef3c7;color:#92400e}.badge.mute{background:#e2e8f0;color:#334155}
form.inline{display:inline}
button,.btn{background:#1d4ed8;color:#fff;border:0;border-radius:4px;padding:5px 12px;cursor:pointer;font-size:13px}
button.secondary{background:#475569}button.danger{background:#b91c1c}
input,select{border:1px solid #cbd5e1;border-radius:4px;padding:4px 6px;font-size:13px}
.filters{display:flex;flex-wrap:wrap;gap:8px;align-items:end}
.filters label{display:flex;flex-direction:column;font-size:12px;color:#475569;gap:2px}
.flash{background:#ecfdf5;border:1px solid #a7f3d0;color:#065f46;padding:8px 12px;border-radius:4px;margin-bottom:12px}
.error{background:#fef2f2;border:1px solid #fecaca;color:#991b1b;padding:8px 12px;border-radius:4px;margin-bottom:12px}
.muted{color:#64748b}
.attempt{border-left:3px solid #e2e8f0;padding:4px 10px;margin:8px 0}
.attempt.ok{border-color:#16a34a}.attempt.bad{border-color:#dc2626}
details summary{cursor:pointer;color:#334155}
.login{max-width:380px;margin:80px auto;background:#fff;border:1px solid #e2e8f0;border-radius:8px;padding:24px}
.login input{width:100%;margin:8px 0 14px;padding:8px}
.legend span{display:inline-block;width:10px;height:10px;margin:0 4px 0 12px;border-radius:2px}
"#;

/// The navigation entries: (path, label).
const NAV: &[(&str, &str)] = &[
    ("/", "Overview"),
    ("/apps", "Apps"),
    ("/notifications", "Notifications"),
];

/// A whole page: header with navigation and the logout form (when signed in), then `body`.
/// `title` is plain text (escaped here); `body` is HTML built with [`esc`].
pub fn page(title: &str, nav: Option<Nav<'_>>, body: &str) -> String {
    let mut h = String::with_capacity(body.len() + 4096);
    let _ = write!(
        h,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{} · Herald</title><style>{STYLE}</style></head><body><header>\
         <span class=\"brand\">Herald</span>",
        esc(title)
    );
    if let Some(nav) = nav {
        h.push_str("<nav>");
        for (path, label) in NAV
            .iter()
            .copied()
            .chain(nav.sandbox.then_some(("/sandbox", "Sandbox")))
        {
            let on = if nav.current == path {
                " class=\"on\""
            } else {
                ""
            };
            let _ = write!(h, "<a href=\"{path}\"{on}>{label}</a>");
        }
        let _ = write!(
            h,
            "</nav><form method=\"post\" action=\"/logout\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <button type=\"submit\">Sign out</button></form>",
            esc(nav.csrf)
        );
    }
    let _ = write!(h, "</header><main>{body}</main></body></html>");
    h
}

/// What the header needs for a signed-in page.
#[derive(Clone, Copy)]
pub struct Nav<'a> {
    pub current: &'a str,
    pub csrf: &'a str,
    pub sandbox: bool,
}

/// A POST form with the CSRF token and one button; `fields` is extra HTML (escaped by the
/// caller).
pub fn action(path: &str, csrf: &str, label: &str, class: &str, fields: &str) -> String {
    format!(
        "<form class=\"inline\" method=\"post\" action=\"{}\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">{fields}\
         <button type=\"submit\" class=\"{class}\">{}</button></form>",
        esc(path),
        esc(csrf),
        esc(label)
    )
}

/// The last hour's attempts per minute as a stacked bar chart (inline SVG): acknowledged in
/// green, failed in red, one bar per minute from `start` (60 bars).
pub fn chart(start: UnixMillis, minutes: &[MinuteActivity]) -> String {
    const W: f64 = 1080.0;
    const H: f64 = 160.0;
    const BARS: usize = 60;
    let mut per = [(0u64, 0u64); BARS];
    for m in minutes {
        let i = m.minute.ms_since(start).div_euclid(60_000);
        if let Ok(i) = usize::try_from(i) {
            if i < BARS {
                per[i] = (m.succeeded, m.failed);
            }
        }
    }
    let max = per.iter().map(|(s, f)| s + f).max().unwrap_or(0).max(1);
    let slot = W / BARS as f64;
    let mut svg = format!(
        "<svg viewBox=\"0 0 {W} {}\" width=\"100%\" role=\"img\" aria-label=\"attempts per minute\">",
        H + 20.0
    );
    let _ = write!(
        svg,
        "<line x1=\"0\" y1=\"{H}\" x2=\"{W}\" y2=\"{H}\" stroke=\"#cbd5e1\"/>\
         <text x=\"2\" y=\"12\" font-size=\"11\" fill=\"#64748b\">{max}/min</text>"
    );
    for (i, (ok, bad)) in per.iter().enumerate() {
        let x = i as f64 * slot + 1.0;
        let hok = *ok as f64 / max as f64 * (H - 16.0);
        let hbad = *bad as f64 / max as f64 * (H - 16.0);
        let minute = start + std::time::Duration::from_secs(60 * i as u64);
        let _ = write!(
            svg,
            "<g><title>{}: {ok} acknowledged, {bad} failed</title>\
             <rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{hok:.1}\" fill=\"#16a34a\"/>\
             <rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{hbad:.1}\" fill=\"#dc2626\"/></g>",
            esc(&time(Some(minute))),
            H - hok,
            slot - 2.0,
            H - hok - hbad,
            slot - 2.0,
        );
    }
    for (i, label) in [(0usize, "-60 min"), (30, "-30 min"), (59, "now")] {
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{}\" font-size=\"11\" fill=\"#64748b\">{label}</text>",
            (i as f64 * slot).min(W - 30.0),
            H + 14.0
        );
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn esc_covers_markup_and_both_quotes() {
        assert_eq!(
            esc("<script>alert('x')</script>&\"y\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;y&quot;"
        );
    }

    #[test]
    fn datetime_inputs_parse_as_utc_and_round_trip() {
        let ms = parse_datetime("2026-11-27T21:40").unwrap();
        assert_eq!(datetime_local(ms), "2026-11-27T21:40");
        assert_eq!(parse_datetime("2026-11-27T21:40:00Z"), Some(ms));
        assert_eq!(parse_datetime("2026-13-27T21:40"), None);
        assert_eq!(parse_datetime("yesterday"), None);
    }

    #[test]
    fn chart_places_each_minute_in_its_bar() {
        let start = UnixMillis::new(1_700_000_040_000); // a whole minute
        let svg = chart(
            start,
            &[MinuteActivity {
                minute: start + std::time::Duration::from_secs(120),
                succeeded: 3,
                failed: 1,
            }],
        );
        assert!(svg.contains("3 acknowledged, 1 failed"));
        assert_eq!(svg.matches("<g>").count(), 60);
        assert!(svg.contains("4/min"));
    }
}
