//! The HTTP API's contract: auth, errors with their shape and status, CRUD, listing.
mod common;

use common::{Receiver, TestServer, TOKEN};
use serde_json::{json, Value};

#[tokio::test]
async fn every_v1_route_requires_the_admin_token() {
    let server = TestServer::start().await;
    for token in [None, Some("wrong")] {
        let (status, v) = server
            .call_raw(
                "POST",
                "/v1/apps",
                Some(b"{\"name\":\"x\"}".to_vec()),
                token,
                &[],
            )
            .await;
        assert_eq!(status, 401);
        assert_eq!(v["error"]["code"], "unauthorized");
        let (status, _) = server
            .call_raw("GET", "/v1/notifications/ntf_x", None, token, &[])
            .await;
        assert_eq!(status, 401);
    }
    let (status, v) = server.call_raw("GET", "/healthz", None, None, &[]).await;
    assert_eq!((status, v["status"].as_str()), (200, Some("ok")));
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let server = TestServer::start().await;
    let app = server.app(json!({})).await;
    let cases: Vec<(&str, String, Vec<u8>, u16, &str)> = vec![
        (
            "POST",
            "/v1/apps".into(),
            b"{\"name\":".to_vec(),
            400,
            "bad_request",
        ),
        ("POST", "/v1/apps".into(), b"".to_vec(), 400, "bad_request"),
        (
            "POST",
            "/v1/apps".into(),
            b"{\"name\": 5}".to_vec(),
            422,
            "invalid",
        ),
        (
            "POST",
            "/v1/apps".into(),
            b"{\"name\": \"\"}".to_vec(),
            422,
            "invalid",
        ),
        (
            "POST",
            "/v1/apps".into(),
            b"{\"name\": \"x\", \"profile\": \"paypal\"}".to_vec(),
            422,
            "invalid",
        ),
        (
            "POST",
            "/v1/apps".into(),
            b"{\"name\": \"x\", \"ack\": \"3xx\"}".to_vec(),
            422,
            "invalid",
        ),
        (
            "POST",
            "/v1/apps".into(),
            b"{\"name\": \"x\", \"credentials\": {\"secret\": \"nope\"}}".to_vec(),
            422,
            "invalid",
        ),
        (
            "POST",
            "/v1/apps".into(),
            b"{\"name\": \"x\", \"surprise\": 1}".to_vec(),
            422,
            "invalid",
        ),
        (
            "POST",
            format!("/v1/apps/{app}/endpoints"),
            b"{\"url\": \"ftp://x\"}".to_vec(),
            422,
            "invalid",
        ),
        (
            "POST",
            format!("/v1/apps/{app}/endpoints"),
            b"{\"url\": \"not a url\"}".to_vec(),
            422,
            "invalid",
        ),
        (
            "POST",
            format!("/v1/apps/{app}/endpoints"),
            b"{\"url\": \"https://x.example\", \"max_in_flight\": 0}".to_vec(),
            422,
            "invalid",
        ),
        (
            "POST",
            format!("/v1/apps/{app}/endpoints"),
            b"{\"url\": \"https://x.example\", \"retry\": [-1]}".to_vec(),
            422,
            "invalid",
        ),
        (
            "POST",
            "/v1/apps/app_missing/endpoints".into(),
            b"{\"url\": \"https://x.example\"}".to_vec(),
            404,
            "not_found",
        ),
        (
            "POST",
            format!("/v1/apps/{app}/notifications"),
            b"{\"event_type\": \"e\", \"payload\": [1]}".to_vec(),
            422,
            "invalid",
        ),
        (
            "POST",
            format!("/v1/apps/{app}/notifications"),
            b"{\"event_type\": \"e\"}".to_vec(),
            422,
            "invalid",
        ),
        (
            "POST",
            format!("/v1/apps/{app}/notifications"),
            b"{\"event_type\": \"e\", \"payload\": {}, \"notify_url\": \"x\"}".to_vec(),
            422,
            "invalid",
        ),
        (
            "POST",
            "/v1/apps/app_missing/notifications".into(),
            b"{\"event_type\": \"e\", \"payload\": {}}".to_vec(),
            404,
            "not_found",
        ),
        (
            "GET",
            "/v1/notifications/ntf_missing".into(),
            vec![],
            404,
            "not_found",
        ),
        (
            "GET",
            "/v1/apps/app_missing".into(),
            vec![],
            404,
            "not_found",
        ),
        (
            "POST",
            "/v1/deliveries/dlv_missing/retry".into(),
            vec![],
            404,
            "not_found",
        ),
        (
            "POST",
            format!("/v1/apps/{app}/recover"),
            b"{\"since\": \"yesterday\"}".to_vec(),
            422,
            "invalid",
        ),
        (
            "GET",
            format!("/v1/apps/{app}/notifications?status=lost"),
            vec![],
            422,
            "invalid",
        ),
        (
            "GET",
            format!("/v1/apps/{app}/notifications?limit=0"),
            vec![],
            422,
            "invalid",
        ),
        (
            "GET",
            format!("/v1/apps/{app}/notifications?cursor=zzz"),
            vec![],
            422,
            "invalid",
        ),
        ("GET", "/v2/whatever".into(), vec![], 404, "not_found"),
    ];
    for (method, path, body, want_status, want_code) in cases {
        let body = if body.is_empty() && method == "GET" {
            None
        } else {
            Some(body)
        };
        let (status, v) = server
            .call_raw(method, &path, body.clone(), Some(TOKEN), &[])
            .await;
        assert_eq!(
            status,
            want_status,
            "{method} {path} {:?}: {v}",
            body.map(|b| String::from_utf8_lossy(&b).into_owned())
        );
        assert_eq!(v["error"]["code"], want_code, "{method} {path}: {v}");
        assert!(
            !v["error"]["message"].as_str().unwrap_or("").is_empty(),
            "{v}"
        );
    }
    // Nothing was created by any of them.
    let (_, eps) = server
        .call("GET", &format!("/v1/apps/{app}/endpoints"), None)
        .await;
    assert_eq!(eps["data"].as_array().unwrap().len(), 0);
    let (_, list) = server
        .call("GET", &format!("/v1/apps/{app}/notifications"), None)
        .await;
    assert_eq!(list["data"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn a_bad_event_type_notify_url_or_idempotency_key_gets_its_422_and_stores_nothing() {
    let server = TestServer::start().await;
    let app = server.app(json!({})).await;
    let path = format!("/v1/apps/{app}/notifications");
    let long_url = format!("https://merchant.example/{}", "a".repeat(2048));
    // (body, Idempotency-Key header, the message the error starts with)
    let cases: Vec<(Value, Option<&str>, &str)> = vec![
        (
            json!({"event_type": "", "payload": {}}),
            None,
            "event_type must not be empty",
        ),
        (
            json!({"event_type": "  ", "payload": {}}),
            None,
            "event_type must not be empty",
        ),
        (
            json!({"event_type": "e".repeat(257), "payload": {}}),
            None,
            "event_type is longer than 256 characters",
        ),
        (
            json!({"event_type": "trade.success\n", "payload": {}}),
            None,
            "event_type must not contain control characters",
        ),
        (
            json!({"event_type": 5, "payload": {}}),
            None,
            "invalid type: integer",
        ),
        (
            json!({"event_type": "herald.source.raw", "payload": {}}),
            None,
            "event_type \"herald.source.raw\" is reserved",
        ),
        (
            json!({"event_type": "e", "payload": {}, "notify_url": "merchant.example/notify"}),
            None,
            "notify_url is not a valid URL: relative URL without a base",
        ),
        (
            json!({"event_type": "e", "payload": {}, "notify_url": "ftp://merchant.example/n"}),
            None,
            "notify_url must be an http or https URL",
        ),
        (
            json!({"event_type": "e", "payload": {}, "notify_url": long_url}),
            None,
            "notify_url is longer than 2048 characters",
        ),
        (
            json!({"event_type": "e", "payload": {}, "idempotency_key": ""}),
            None,
            "idempotency_key must not be empty",
        ),
        (
            json!({"event_type": "e", "payload": {}, "idempotency_key": "k".repeat(257)}),
            None,
            "idempotency_key is longer than 256 characters",
        ),
        (
            json!({"event_type": "e", "payload": {}}),
            Some("   "),
            "idempotency_key must not be empty",
        ),
        (
            json!({"event_type": "e", "payload": {}, "idempotency_key": "a"}),
            Some("b"),
            "idempotency_key in the body and the Idempotency-Key header differ",
        ),
    ];
    for (body, header, want) in cases {
        let headers: Vec<(&str, &str)> =
            header.map(|h| ("idempotency-key", h)).into_iter().collect();
        let (status, v) = server
            .call_raw(
                "POST",
                &path,
                Some(body.to_string().into_bytes()),
                Some(TOKEN),
                &headers,
            )
            .await;
        assert_eq!(status, 422, "{body}: {v}");
        assert_eq!(v["error"]["code"], "invalid", "{body}: {v}");
        let message = v["error"]["message"].as_str().unwrap_or("");
        assert!(
            message.starts_with(want),
            "{body}: want {want:?}, got {message:?}"
        );
    }
    let (_, list) = server.call("GET", &path, None).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 0, "{list}");

    // The same fields, valid, are stored as sent (the header's key included).
    let (status, v) = server
        .call_raw(
            "POST",
            &path,
            Some(
                json!({"event_type": "支付.成功", "payload": {}, "notify_url": "https://merchant.example/n?x=1"})
                    .to_string()
                    .into_bytes(),
            ),
            Some(TOKEN),
            &[("idempotency-key", "order-1:paid")],
        )
        .await;
    assert_eq!(status, 202, "{v}");
    let n = server.notification(v["id"].as_str().unwrap()).await;
    assert_eq!(n["event_type"], "支付.成功");
    assert_eq!(n["notify_url"], "https://merchant.example/n?x=1");
    assert_eq!(n["idempotency_key"], "order-1:paid");
}

#[tokio::test]
async fn a_bad_order_key_or_endpoint_url_gets_its_422_and_stores_nothing() {
    let server = TestServer::start().await;
    let app = server.app(json!({})).await;
    let long_url = format!("https://merchant.example/{}", "a".repeat(2048));
    let expect_422 = |status: u16, v: &Value, what: &str, want: &str| {
        assert_eq!(status, 422, "{what}: {v}");
        assert_eq!(v["error"]["code"], "invalid", "{what}: {v}");
        let message = v["error"]["message"].as_str().unwrap_or("");
        assert!(
            message.starts_with(want),
            "{what}: want {want:?}, got {message:?}"
        );
    };

    // order_key on a notification.
    let notifications = format!("/v1/apps/{app}/notifications");
    let cases: Vec<(Value, &str)> = vec![
        (json!(""), "order_key must not be empty"),
        (json!("   "), "order_key must not be empty"),
        (
            json!("o".repeat(257)),
            "order_key is longer than 256 characters",
        ),
        (
            json!("order-1\n"),
            "order_key must not contain control characters",
        ),
        (json!(42), "invalid type: integer"),
    ];
    for (key, want) in cases {
        let body = json!({"event_type": "e", "payload": {}, "order_key": key});
        let (status, v) = server
            .call("POST", &notifications, Some(body.clone()))
            .await;
        expect_422(status, &v, &body.to_string(), want);
    }
    let (_, list) = server.call("GET", &notifications, None).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 0, "{list}");

    // url on a new endpoint.
    let endpoints = format!("/v1/apps/{app}/endpoints");
    let cases: Vec<(Value, &str)> = vec![
        (
            json!("merchant.example/hook"),
            "url is not a valid URL: relative URL without a base",
        ),
        (
            json!(""),
            "url is not a valid URL: relative URL without a base",
        ),
        (
            json!("ftp://merchant.example/hook"),
            "url must be an http or https URL",
        ),
        (json!(long_url), "url is longer than 2048 characters"),
        (json!(7), "invalid type: integer"),
    ];
    for (url, want) in &cases {
        let body = json!({ "url": url });
        let (status, v) = server.call("POST", &endpoints, Some(body.clone())).await;
        expect_422(status, &v, &body.to_string(), want);
    }
    let (_, list) = server.call("GET", &endpoints, None).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 0, "{list}");

    // url in an endpoint's PATCH: refused the same way, the endpoint unchanged.
    let ep = server
        .endpoint(&app, json!({"url": "https://merchant.example/hook"}))
        .await;
    let ep_path = format!("/v1/apps/{app}/endpoints/{ep}");
    for (url, want) in &cases[..4] {
        let body = json!({ "url": url });
        let (status, v) = server.call("PATCH", &ep_path, Some(body.clone())).await;
        expect_422(status, &v, &body.to_string(), want);
    }
    let (status, v) = server.call("GET", &ep_path, None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["url"], "https://merchant.example/hook");

    // Valid, both are stored as sent.
    let (status, v) = server
        .call(
            "PATCH",
            &ep_path,
            Some(json!({"url": "https://merchant.example/hook?v=2"})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["url"], "https://merchant.example/hook?v=2");
    let (status, v) = server
        .call(
            "POST",
            &notifications,
            Some(json!({"event_type": "e", "payload": {}, "order_key": "订单 42"})),
        )
        .await;
    assert_eq!(status, 202, "{v}");
    let n = server.notification(v["id"].as_str().unwrap()).await;
    assert_eq!(n["order_key"], "订单 42");
}

#[tokio::test]
async fn bodies_over_one_mebibyte_get_413() {
    let server = TestServer::start().await;
    let app = server.app(json!({})).await;
    let big = format!(
        "{{\"event_type\": \"e\", \"payload\": {{\"x\": \"{}\"}}}}",
        "a".repeat(1024 * 1024 + 10)
    );
    let (status, v) = server
        .call_raw(
            "POST",
            &format!("/v1/apps/{app}/notifications"),
            Some(big.into_bytes()),
            Some(TOKEN),
            &[],
        )
        .await;
    assert_eq!(status, 413, "{v}");
    assert_eq!(v["error"]["code"], "payload_too_large");
}

#[tokio::test]
async fn endpoints_can_be_read_patched_and_deleted() {
    let server = TestServer::start().await;
    let app = server.app(json!({})).await;
    let ep = server
        .endpoint(
            &app,
            json!({"url": "https://merchant.example/hook", "retry": "alipay"}),
        )
        .await;
    let path = format!("/v1/apps/{app}/endpoints/{ep}");
    let (status, v) = server.call("GET", &path, None).await;
    assert_eq!(status, 200);
    assert_eq!(v["max_in_flight"], 8);
    assert_eq!(v["retry"]["name"], "alipay");
    let (status, v) = server
        .call("PATCH", &path, Some(json!({"url": "https://merchant.example/v2", "retry": null, "ordered": true, "ack": "body:success"})))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["url"], "https://merchant.example/v2");
    assert_eq!(v["retry"], serde_json::Value::Null);
    assert_eq!(v["ordered"], true);
    assert_eq!(v["ack"], "body:success");
    let (status, v) = server
        .call("PATCH", &path, Some(json!({"colour": "red"})))
        .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (422, Some("invalid"))
    );
    let (status, _) = server.call("DELETE", &path, None).await;
    assert_eq!(status, 204);
    let (status, _) = server.call("GET", &path, None).await;
    assert_eq!(status, 404);
    let (status, _) = server.call("DELETE", &path, None).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn app_creation_returns_the_secret_once_and_named_policies() {
    let server = TestServer::start().await;
    let (status, v) = server
        .call(
            "POST",
            "/v1/apps",
            Some(json!({"name": "p", "retry": "wechatpay-v3", "ack": "2xx"})),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    assert!(v["credentials"]["secret"]
        .as_str()
        .unwrap()
        .starts_with("whsec_"));
    assert_eq!(v["profile"], "standard-webhooks");
    assert_eq!(v["retry"]["name"], "wechatpay-v3");
    assert_eq!(v["retry"]["delays_ms"].as_array().unwrap().len(), 15);
    let (_, got) = server
        .call(
            "GET",
            &format!("/v1/apps/{}", v["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert!(got["credentials"].get("secret").is_none(), "{got}");
}

#[tokio::test]
async fn notifications_list_filters_by_status_and_pages_with_a_cursor() {
    let server = TestServer::start().await;
    let rx = Receiver::start(Receiver::ok()).await;
    let app = server.app(json!({})).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let n = server
            .notify(
                &app,
                json!({"event_type": "e", "payload": {"i": i}, "notify_url": rx.url("/")}),
            )
            .await;
        ids.push(n["id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        server.wait_status(id, "succeeded").await;
    }
    // One without deliveries that can succeed: its receiver refuses everything.
    let (_, page1) = server
        .call(
            "GET",
            &format!("/v1/apps/{app}/notifications?limit=2"),
            None,
        )
        .await;
    let data = page1["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(data[0]["id"], ids[2].as_str());
    // Summaries: no payload, deliveries with their count of attempts but not the attempts.
    assert!(data[0].get("payload").is_none(), "{}", data[0]);
    assert_eq!(data[0]["status"], "succeeded");
    assert_eq!(data[0]["deliveries"][0]["status"], "succeeded");
    assert_eq!(data[0]["deliveries"][0]["attempt_count"], 1);
    assert!(data[0]["deliveries"][0].get("attempts").is_none());
    let cursor = page1["next_cursor"].as_str().unwrap();
    let (_, page2) = server
        .call(
            "GET",
            &format!("/v1/apps/{app}/notifications?limit=2&cursor={cursor}"),
            None,
        )
        .await;
    assert_eq!(page2["data"].as_array().unwrap().len(), 1);
    assert_eq!(page2["next_cursor"], serde_json::Value::Null);
    let (_, ok) = server
        .call(
            "GET",
            &format!("/v1/apps/{app}/notifications?status=succeeded"),
            None,
        )
        .await;
    assert_eq!(ok["data"].as_array().unwrap().len(), 3);
    let (_, pending) = server
        .call(
            "GET",
            &format!("/v1/apps/{app}/notifications?status=pending"),
            None,
        )
        .await;
    assert_eq!(pending["data"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn payment_profile_apps_show_secrets_once_and_public_material_after() {
    let server = TestServer::start().await;
    for (profile, once_fields, secret_fields) in [
        (
            "alipay",
            vec!["app_id", "public_key", "public_key_pem"],
            vec!["private_key"],
        ),
        (
            "wechatpay-v2",
            vec!["appid", "mch_id", "api_key"],
            vec!["api_key"],
        ),
        (
            "wechatpay-v3",
            vec!["mchid", "serial", "public_key_pem", "api_v3_key"],
            vec!["api_v3_key", "private_key"],
        ),
        ("stripe", vec!["secret"], vec!["secret"]),
    ] {
        let (status, v) = server
            .call(
                "POST",
                "/v1/apps",
                Some(json!({"name": profile, "profile": profile})),
            )
            .await;
        assert_eq!(status, 201, "{profile}: {v}");
        assert_eq!(v["profile"], profile);
        for f in &once_fields {
            assert!(
                v["credentials"].get(*f).is_some(),
                "{profile}: creation shows {f}: {v}"
            );
        }
        assert!(
            v["credentials"].get("private_key").is_none(),
            "{profile}: a private key is never returned"
        );
        let (_, got) = server
            .call(
                "GET",
                &format!("/v1/apps/{}", v["id"].as_str().unwrap()),
                None,
            )
            .await;
        for f in &secret_fields {
            assert!(
                got["credentials"].get(*f).is_none(),
                "{profile}: GET hides {f}: {got}"
            );
        }
        let body = got.to_string();
        assert!(!body.contains("PRIVATE KEY"), "{profile}: {body}");
    }
    let (status, v) = server
        .call("POST", "/v1/apps", Some(json!({"name": "x", "profile": "alipay", "credentials": {"private_key": "not a key"}})))
        .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (422, Some("invalid")),
        "{v}"
    );
    assert!(
        !v.to_string().contains("not a key"),
        "the given secret is not echoed: {v}"
    );
}
