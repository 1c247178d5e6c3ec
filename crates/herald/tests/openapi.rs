//! The OpenAPI document against the router: the same paths and methods (walked from the
//! route table the router is built from, methods read from the router's own 405 `Allow`
//! header), every schema reference resolving, and the docs page rendering all of it.
mod common;

use std::collections::BTreeSet;

use common::TestServer;
use herald_server::api::Access;
use serde_json::Value;

const METHODS: [&str; 8] = [
    "get", "post", "put", "patch", "delete", "head", "options", "trace",
];

/// A concrete path for a route pattern: each `{param}` becomes `x`.
fn concrete(pattern: &str) -> String {
    let mut out = String::new();
    let mut in_param = false;
    for c in pattern.chars() {
        match c {
            '{' => in_param = true,
            '}' => {
                in_param = false;
                out.push('x');
            }
            c if !in_param => out.push(c),
            _ => {}
        }
    }
    out
}

#[tokio::test]
async fn the_openapi_document_and_the_router_have_the_same_routes_and_methods() {
    let server = TestServer::start().await;
    let (status, doc) = server
        .call_raw("GET", "/openapi.json", None, None, &[])
        .await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");

    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for m in METHODS {
            if item.get(m).is_some() {
                documented.insert((path.clone(), m.to_string()));
            }
        }
    }

    // The router's routes: each path of the table it is built from, with the methods its
    // 405 answer to a method no route has (TRACE) allows.
    let mut routed = BTreeSet::new();
    for (path, _, _) in herald_server::api::routes() {
        let (status, headers, _) = server
            .call_full("TRACE", &concrete(path), None, None, &[])
            .await;
        assert_eq!(status, 405, "{path}");
        let allow = headers
            .get("allow")
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default()
            .to_string();
        for m in allow.split(',').map(str::trim).filter(|m| !m.is_empty()) {
            // axum answers HEAD for every GET route; OpenAPI documents the GET.
            if m != "HEAD" {
                routed.insert((path.to_string(), m.to_ascii_lowercase()));
            }
        }
    }
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(
        undocumented.is_empty() && unrouted.is_empty(),
        "routes without #[utoipa::path] in ApiDoc: {undocumented:?}; documented but not routed: {unrouted:?}"
    );
    assert!(routed.len() >= 24, "every route of this build: {routed:?}");

    // The credentials each operation declares are the ones its route accepts.
    for (path, access, _) in herald_server::api::routes() {
        for m in METHODS {
            let Some(op) = doc["paths"][path].get(m) else {
                continue;
            };
            let declared: Vec<String> = match op.get("security").and_then(Value::as_array) {
                Some(list) => list
                    .iter()
                    .filter_map(Value::as_object)
                    .flat_map(|o| o.keys().cloned())
                    .collect(),
                None => vec!["bearer".into()], // the document's default
            };
            let want: Vec<String> = match access {
                Access::Public => vec![],
                Access::App => vec!["bearer".into(), "api_key".into()],
                Access::Admin => vec!["bearer".into()],
            };
            assert_eq!(declared, want, "{m} {path} ({access:?})");
        }
    }
}

fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("$ref", Value::String(r)) => out.push(r.clone()),
                    _ => refs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

#[tokio::test]
async fn every_schema_reference_resolves_and_every_operation_says_its_responses() {
    let doc = herald_server::api::openapi::json();
    let mut found = Vec::new();
    refs(doc, &mut found);
    assert!(!found.is_empty());
    for r in found {
        let name = r
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("unexpected $ref {r}"));
        assert!(
            doc["components"]["schemas"].get(name).is_some(),
            "{r} does not resolve"
        );
    }
    for (path, item) in doc["paths"].as_object().unwrap() {
        for m in METHODS {
            if let Some(op) = item.get(m) {
                assert!(
                    op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                    "{m} {path} has no responses"
                );
            }
        }
    }
    // The credentials the API accepts are declared.
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!(schemes["api_key"]["scheme"], "bearer");
}

#[tokio::test]
async fn the_docs_page_shows_every_operation_and_schema_and_loads_nothing_else() {
    let server = TestServer::start().await;
    let resp = server
        .client
        .get(format!("{}/docs", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("text/html"), "{ct}");
    let page = resp.text().await.unwrap();
    let doc = herald_server::api::openapi::json();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let shown = path.replace('{', "&#123;");
        assert!(
            page.contains(&format!("<code>{path}</code>")) || page.contains(&shown),
            "{path} missing"
        );
        for m in METHODS {
            if item.get(m).is_some() {
                assert!(page.contains(&m.to_uppercase()), "{m}");
            }
        }
    }
    for name in doc["components"]["schemas"].as_object().unwrap().keys() {
        assert!(page.contains(&format!("id=\"schema-{name}\"")), "{name}");
    }
    assert!(!page.contains("<script"), "no script");
    for attr in ["src=\"http", "href=\"http", "@import", "url("] {
        assert!(
            !page.contains(attr),
            "nothing loaded from elsewhere: {attr}"
        );
    }
}
