//! The API's OpenAPI 3.1 document, generated from the code by `utoipa` (each handler's
//! `#[utoipa::path]`, each view's `ToSchema`), served at `GET /openapi.json`, and a docs page
//! at `GET /docs` rendered from it on the server: plain HTML and CSS, no script, nothing
//! fetched from elsewhere.
//!
//! The document lists every route of [`super::routes`]; the drift test
//! (`tests/openapi.rs`) walks the router's routes and methods and the document's paths and
//! operations and fails when they differ. A new route needs `#[utoipa::path]` on each
//! handler and the handler named in [`ApiDoc`]'s `paths(...)`.
use std::fmt::Write as _;
use std::sync::LazyLock;

use axum::http::header::CONTENT_TYPE;
use axum::response::{Html, IntoResponse, Response};
use serde_json::Value;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{apps, endpoints, error, notifications, ops, sources, views};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Herald",
        description = "Durable payment notifications and webhooks: apps (tenants), their endpoints and API keys, notifications and their deliveries. Send `Authorization: Bearer <admin token>`; an app's API key (`hk_...`) may send and read that app's notifications and deliveries only."
    ),
    paths(
        super::healthz,
        document,
        docs_page,
        apps::create,
        apps::list,
        apps::get,
        apps::update,
        apps::delete,
        apps::rotate,
        apps::create_key,
        apps::list_keys,
        apps::delete_key,
        endpoints::create,
        endpoints::list,
        endpoints::get,
        endpoints::update,
        endpoints::delete,
        notifications::create,
        notifications::list,
        notifications::recover,
        notifications::recover_endpoint,
        notifications::get,
        notifications::get_delivery,
        notifications::list_attempts,
        notifications::retry,
        sources::create,
        sources::list,
        sources::get,
        sources::delete,
        sources::received,
        sources::ingest,
        ops::set,
        ops::get,
        ops::delete,
    ),
    components(schemas(error::ErrorBody, views::AppView, views::EndpointView)),
    modifiers(&Security),
    security(("bearer" = [])),
    tags(
        (name = "apps", description = "Tenants: each has a wire profile and credentials"),
        (name = "api keys", description = "Keys scoped to one app: send and read its notifications"),
        (name = "endpoints", description = "An app's subscribed URLs"),
        (name = "notifications", description = "What producers send; committed before the 202"),
        (name = "deliveries", description = "One notification to one URL, with its attempts"),
        (name = "sources", description = "The inbound gateway: verify a provider's notifications, dedupe them, forward them to the merchant's app"),
        (name = "health", description = "Liveness for load balancers"),
        (name = "docs", description = "This document"),
    )
)]
pub struct ApiDoc;

/// The two bearer credentials (see `api::auth`).
struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The admin token: every route"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("hk_...")
                    .description(Some(
                        "An app's API key: that app's notifications and deliveries only",
                    ))
                    .build(),
            ),
        );
    }
}

/// The document as JSON, built once.
pub fn json() -> &'static Value {
    static DOC: LazyLock<Value> =
        LazyLock::new(|| serde_json::to_value(ApiDoc::openapi()).unwrap_or(Value::Null));
    &DOC
}

/// The OpenAPI 3.1 document of this API.
#[utoipa::path(get, path = "/openapi.json", tag = "docs", security(),
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json")))]
pub async fn document() -> Response {
    static BODY: LazyLock<String> = LazyLock::new(|| json().to_string());
    ([(CONTENT_TYPE, "application/json")], BODY.as_str()).into_response()
}

/// A readable page of the same document: every operation and schema.
#[utoipa::path(get, path = "/docs", tag = "docs", security(),
    responses((status = 200, description = "The API reference as HTML", content_type = "text/html")))]
pub async fn docs_page() -> Html<&'static str> {
    static PAGE: LazyLock<String> = LazyLock::new(|| render(json()));
    Html(PAGE.as_str())
}

const METHODS: [&str; 8] = [
    "get", "post", "put", "patch", "delete", "head", "options", "trace",
];

/// Renders the docs page from the document (see the module doc).
pub fn render(doc: &Value) -> String {
    let mut out = String::with_capacity(64 * 1024);
    let title = doc["info"]["title"].as_str().unwrap_or("API");
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{t} API reference</title><style>{STYLE}</style></head><body>\
         <h1>{t} API reference</h1><p>{d}</p>\
         <p>OpenAPI {v}: <a href=\"/openapi.json\">/openapi.json</a></p>",
        t = esc(title),
        d = prose(doc["info"]["description"].as_str().unwrap_or("")),
        v = esc(doc["openapi"].as_str().unwrap_or("")),
    );
    out.push_str("<h2>Operations</h2><nav><ul>");
    let paths = doc["paths"].as_object().cloned().unwrap_or_default();
    for (path, item) in &paths {
        for m in METHODS {
            if item.get(m).is_some() {
                let _ = write!(
                    out,
                    "<li><a href=\"#{id}\"><span class=\"m {m}\">{M}</span> <code>{p}</code></a></li>",
                    id = anchor(m, path),
                    M = m.to_uppercase(),
                    p = esc(path),
                );
            }
        }
    }
    out.push_str("</ul></nav>");
    for (path, item) in &paths {
        for m in METHODS {
            if let Some(op) = item.get(m) {
                operation(&mut out, m, path, op);
            }
        }
    }
    out.push_str("<h2>Schemas</h2>");
    if let Some(schemas) = doc["components"]["schemas"].as_object() {
        for (name, schema) in schemas {
            let _ = write!(
                out,
                "<section class=\"schema\" id=\"schema-{n}\"><h3>{n}</h3>",
                n = esc(name)
            );
            schema_fields(&mut out, schema);
            out.push_str("</section>");
        }
    }
    out.push_str("</body></html>");
    out
}

fn operation(out: &mut String, method: &str, path: &str, op: &Value) {
    let _ = write!(
        out,
        "<section class=\"op\" id=\"{id}\"><h3><span class=\"m {method}\">{M}</span> <code>{p}</code></h3>",
        id = anchor(method, path),
        M = method.to_uppercase(),
        p = esc(path),
    );
    for key in ["summary", "description"] {
        if let Some(text) = op[key].as_str() {
            let _ = write!(out, "<p>{}</p>", prose(text));
        }
    }
    let auth = match op.get("security").and_then(Value::as_array) {
        Some(list)
            if list
                .iter()
                .all(|s| s.as_object().is_some_and(|o| o.is_empty())) =>
        {
            "none"
        }
        Some(list) if list.iter().any(|s| s.get("api_key").is_some()) => {
            "the admin token, or the app's API key"
        }
        _ => "the admin token",
    };
    let _ = write!(out, "<p class=\"auth\">Credential: {auth}</p>");
    if let Some(params) = op["parameters"].as_array().filter(|p| !p.is_empty()) {
        out.push_str(
            "<table><tr><th>parameter</th><th>in</th><th>required</th><th>description</th></tr>",
        );
        for p in params {
            let _ = write!(
                out,
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(p["name"].as_str().unwrap_or("")),
                esc(p["in"].as_str().unwrap_or("")),
                if p["required"].as_bool().unwrap_or(false) {
                    "yes"
                } else {
                    "no"
                },
                prose(p["description"].as_str().unwrap_or("")),
            );
        }
        out.push_str("</table>");
    }
    if let Some(body) = op.get("requestBody") {
        let schema = first_schema(body);
        let _ = write!(out, "<p>Request body: {}</p>", schema_ref(&schema));
    }
    out.push_str("<ul class=\"responses\">");
    if let Some(responses) = op["responses"].as_object() {
        for (status, r) in responses {
            let schema = first_schema(r);
            let _ = write!(
                out,
                "<li><b>{}</b> {} {}</li>",
                esc(status),
                prose(r["description"].as_str().unwrap_or("")),
                if schema.is_null() {
                    String::new()
                } else {
                    format!("&rarr; {}", schema_ref(&schema))
                },
            );
        }
    }
    out.push_str("</ul></section>");
}

/// The schema of a request body or response's first content type.
fn first_schema(v: &Value) -> Value {
    v["content"]
        .as_object()
        .and_then(|c| c.values().next())
        .map(|c| c["schema"].clone())
        .unwrap_or(Value::Null)
}

/// A schema as a link to its component, or compact JSON when it is inline.
fn schema_ref(schema: &Value) -> String {
    match schema["$ref"].as_str() {
        Some(r) => {
            let name = r.rsplit('/').next().unwrap_or(r);
            format!(
                "<a href=\"#schema-{n}\"><code>{n}</code></a>",
                n = esc(name)
            )
        }
        None => format!("<code>{}</code>", esc(&schema.to_string())),
    }
}

fn schema_fields(out: &mut String, schema: &Value) {
    if let Some(text) = schema["description"].as_str() {
        let _ = write!(out, "<p>{}</p>", prose(text));
    }
    let Some(props) = schema["properties"].as_object() else {
        let _ = write!(out, "<pre>{}</pre>", esc(&pretty(schema)));
        return;
    };
    let required: Vec<&str> = schema["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    out.push_str(
        "<table><tr><th>field</th><th>type</th><th>required</th><th>description</th></tr>",
    );
    for (name, p) in props {
        let ty = match (&p["type"], p["$ref"].as_str()) {
            (_, Some(_)) => schema_ref(p),
            (Value::String(t), _) if t == "array" => {
                format!("array of {}", schema_ref(&p["items"]))
            }
            (Value::String(t), _) => format!("<code>{}</code>", esc(t)),
            (Value::Array(ts), _) => format!(
                "<code>{}</code>",
                esc(&ts
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(" | "))
            ),
            _ => schema_ref(p),
        };
        let _ = write!(
            out,
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(name),
            ty,
            if required.contains(&name.as_str()) {
                "yes"
            } else {
                "no"
            },
            prose(p["description"].as_str().unwrap_or("")),
        );
    }
    out.push_str("</table>");
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

fn anchor(method: &str, path: &str) -> String {
    let mut id = format!("op-{method}");
    for c in path.chars() {
        id.push(if c.is_ascii_alphanumeric() { c } else { '-' });
    }
    id
}

/// Escaped text with its `code` spans (between backticks, as in the doc comments) shown as
/// code.
fn prose(s: &str) -> String {
    let paired = s.matches('`').count().is_multiple_of(2);
    if !paired {
        return esc(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for (i, part) in s.split('`').enumerate() {
        if i % 2 == 1 {
            let _ = write!(out, "<code>{}</code>", esc(part));
        } else {
            out.push_str(&esc(part));
        }
    }
    out
}

/// HTML-escapes text for element content and double-quoted attributes.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#1d2430}\
code{font:13px ui-monospace,monospace}pre{background:#f4f5f7;padding:.5rem;overflow:auto}\
nav ul{columns:2;list-style:none;padding:0}section{border-top:1px solid #dde1e6;padding:.5rem 0}\
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #dde1e6;padding:.2rem .5rem;text-align:left;vertical-align:top}\
.m{display:inline-block;min-width:4.2rem;font:bold 12px ui-monospace,monospace;color:#fff;background:#5a6472;padding:.1rem .3rem;border-radius:3px;text-align:center}\
.get{background:#2f6f9f}.post{background:#2f8f5b}.patch{background:#9a6b1f}.delete{background:#a83a3a}.auth{color:#5a6472}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_is_openapi_3_1_and_the_page_escapes_what_it_shows() {
        let doc = json();
        assert_eq!(doc["openapi"], "3.1.0");
        assert!(doc["components"]["securitySchemes"]["api_key"].is_object());
        let page = render(&serde_json::json!({
            "openapi": "3.1.0",
            "info": {"title": "<x>", "description": "a & b"},
            "paths": {"/v1/x/{id}": {"get": {"responses": {"200": {"description": "<ok>"}}}}},
        }));
        assert!(page.contains("&lt;x&gt; API reference"));
        assert!(page.contains("a &amp; b"));
        assert!(page.contains("&lt;ok&gt;"));
        assert!(!page.contains("<script"));
        assert_eq!(prose("a `b<c>` d"), "a <code>b&lt;c&gt;</code> d");
        assert_eq!(prose("odd ` tick"), "odd ` tick");
    }
}
