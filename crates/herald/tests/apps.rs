//! Apps administration and API keys through the real server: listing, changing and deleting
//! apps (deletion cancels what is pending), keys shown once and scoped to one app, the 403
//! and 401 rules, and 405 with `Allow` and the JSON error body.
mod common;

use common::{Receiver, Reply, TestServer, TOKEN};
use serde_json::{json, Value};

#[tokio::test]
async fn apps_list_in_pages_change_and_keep_their_credentials() {
    let server = TestServer::start().await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(server.app(json!({})).await);
    }
    ids.sort();
    let (status, first) = server.call("GET", "/v1/apps?limit=2", None).await;
    assert_eq!(status, 200, "{first}");
    let cursor = first["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_string();
    let (_, second) = server
        .call("GET", &format!("/v1/apps?limit=2&cursor={cursor}"), None)
        .await;
    assert_eq!(second["next_cursor"], Value::Null);
    let listed: Vec<&str> = first["data"]
        .as_array()
        .unwrap()
        .iter()
        .chain(second["data"].as_array().unwrap())
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ids);
    assert!(
        first["data"][0]["credentials"].get("secret").is_none(),
        "a list never shows secrets: {first}"
    );
    let (status, v) = server.call("GET", "/v1/apps?limit=101", None).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (422, Some("invalid"))
    );

    let app = &ids[0];
    let (status, v) = server
        .call(
            "PATCH",
            &format!("/v1/apps/{app}"),
            Some(json!({"name": "renamed", "retry": [1, 60], "ack": "2xx"})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["name"], "renamed");
    let (_, got) = server.call("GET", &format!("/v1/apps/{app}"), None).await;
    assert_eq!(got["name"], "renamed");
    assert_eq!(got["ack"], "2xx");
    assert!(got["retry"].is_object() || got["retry"].is_array(), "{got}");
    let (status, v) = server
        .call(
            "PATCH",
            &format!("/v1/apps/{app}"),
            Some(json!({"retry": null})),
        )
        .await;
    assert_eq!((status, &v["retry"]), (200, &Value::Null), "{v}");
    assert_eq!(v["name"], "renamed", "absent fields stay");

    // Bad changes are refused and change nothing.
    for body in [
        json!({"name": ""}),
        json!({"profile": "alipay"}),
        json!({"retry": "no-such-policy"}),
        json!({"ack": 5}),
    ] {
        let (status, v) = server
            .call("PATCH", &format!("/v1/apps/{app}"), Some(body.clone()))
            .await;
        assert_eq!(
            (status, v["error"]["code"].as_str()),
            (422, Some("invalid")),
            "{body}"
        );
    }
    let (_, after) = server.call("GET", &format!("/v1/apps/{app}"), None).await;
    assert_eq!(after["name"], "renamed");
    assert_eq!(after["ack"], "2xx");
    let (status, _) = server
        .call("PATCH", "/v1/apps/app_missing", Some(json!({"name": "x"})))
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn deleting_an_app_cancels_its_pending_deliveries_and_shows_afterwards() {
    let server = TestServer::start().await;
    let receiver = Receiver::start(|_, _| Reply::Status(500, "no")).await;
    let app = server.app(json!({"retry": [3600]})).await;
    let other = server.app(json!({})).await;
    server
        .endpoint(&app, json!({"url": receiver.url("/hook")}))
        .await;
    let n = server
        .notify(&app, json!({"event_type": "e", "payload": {"a": 1}}))
        .await;
    let id = n["id"].as_str().unwrap().to_string();
    // The first attempt fails; the next is an hour away: pending.
    let pending = server
        .wait_for(&id, |v| v["deliveries"][0]["attempt_count"] == 1)
        .await;
    assert_eq!(pending["status"], "pending");
    let (_, key) = server
        .call("POST", &format!("/v1/apps/{app}/keys"), None)
        .await;
    let key = key["key"].as_str().unwrap().to_string();

    let (status, v) = server
        .call("DELETE", &format!("/v1/apps/{app}"), None)
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["canceled_deliveries"], 1);
    let after = server.notification(&id).await;
    assert_eq!(after["status"], "canceled");
    assert_eq!(after["deliveries"][0]["next_attempt_at"], Value::Null);
    let (status, _) = server.call("GET", &format!("/v1/apps/{app}"), None).await;
    assert_eq!(status, 404);
    let (_, list) = server.call("GET", "/v1/apps", None).await;
    let listed: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, vec![other.as_str()]);
    let (status, v) = server
        .call(
            "POST",
            &format!("/v1/apps/{app}/notifications"),
            Some(json!({"event_type": "e", "payload": {}})),
        )
        .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let delivery = after["deliveries"][0]["id"].as_str().unwrap();
    let (status, _) = server
        .call("POST", &format!("/v1/deliveries/{delivery}/retry"), None)
        .await;
    assert_eq!(status, 409, "a deleted app's delivery is not retried");
    let (status, _) = server
        .call_raw(
            "GET",
            &format!("/v1/notifications/{id}"),
            None,
            Some(&key),
            &[],
        )
        .await;
    assert_eq!(status, 401, "the deleted app's keys are revoked");
    let (status, _) = server
        .call("DELETE", &format!("/v1/apps/{app}"), None)
        .await;
    assert_eq!(status, 404);
    // Nothing more reaches the receiver.
    let before = receiver.count();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(receiver.count(), before);
}

#[tokio::test]
async fn an_api_key_is_shown_once_stored_hashed_and_revocable() {
    let server = TestServer::start().await;
    let app = server.app(json!({})).await;
    let (status, created) = server
        .call("POST", &format!("/v1/apps/{app}/keys"), None)
        .await;
    assert_eq!(status, 201, "{created}");
    let key = created["key"].as_str().unwrap().to_string();
    assert!(key.starts_with("hk_") && key.len() > 40, "{key}");
    assert!(key.starts_with(created["prefix"].as_str().unwrap()));
    assert_eq!(created["last_used_at"], Value::Null);

    let (status, list) = server
        .call("GET", &format!("/v1/apps/{app}/keys"), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert!(
        !list.to_string().contains(&key),
        "listing never shows the key"
    );

    // Used: last_used_at is recorded.
    let (status, _) = server
        .call_raw(
            "GET",
            &format!("/v1/apps/{app}/notifications"),
            None,
            Some(&key),
            &[],
        )
        .await;
    assert_eq!(status, 200);
    let (_, list) = server
        .call("GET", &format!("/v1/apps/{app}/keys"), None)
        .await;
    assert!(list["data"][0]["last_used_at"].is_string(), "{list}");

    // The database holds its SHA-256, never the key.
    let (db, dir) = server.stop().await;
    let raw = std::fs::read(&db).unwrap();
    let wal = std::fs::read(db.with_extension("db-wal")).unwrap_or_default();
    let hash: String = {
        use sha2::Digest;
        sha2::Sha256::digest(key.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let contains =
        |hay: &[u8], needle: &str| hay.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(
        !contains(&raw, &key) && !contains(&wal, &key),
        "the key is not stored"
    );
    assert!(
        contains(&raw, &hash) || contains(&wal, &hash),
        "its hash is"
    );

    let server = TestServer::start_on(db, common::engine_config(true)).await;
    let key_id = created["id"].as_str().unwrap();
    let (status, _) = server
        .call("DELETE", &format!("/v1/apps/{app}/keys/{key_id}"), None)
        .await;
    assert_eq!(status, 204);
    let (status, v) = server
        .call_raw(
            "GET",
            &format!("/v1/apps/{app}/notifications"),
            None,
            Some(&key),
            &[],
        )
        .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let (status, _) = server
        .call("DELETE", &format!("/v1/apps/{app}/keys/{key_id}"), None)
        .await;
    assert_eq!(status, 404);
    drop(dir);
}

#[tokio::test]
async fn an_app_key_sends_and_reads_its_own_app_only() {
    let server = TestServer::start().await;
    let receiver = Receiver::start(Receiver::ok()).await;
    let app = server.app(json!({})).await;
    let other = server.app(json!({})).await;
    server
        .endpoint(&app, json!({"url": receiver.url("/hook")}))
        .await;
    let (_, k) = server
        .call("POST", &format!("/v1/apps/{app}/keys"), None)
        .await;
    let key = k["key"].as_str().unwrap().to_string();
    let other_n = server
        .notify(&other, json!({"event_type": "e", "payload": {}}))
        .await;
    let other_id = other_n["id"].as_str().unwrap().to_string();
    let call = |method: &'static str, path: String, body: Option<Value>| {
        let key = key.clone();
        let server = &server;
        async move {
            server
                .call_raw(
                    method,
                    &path,
                    body.map(|b| b.to_string().into_bytes()),
                    Some(&key),
                    &[],
                )
                .await
        }
    };

    // Its own app: send, list, read the notification, its delivery and attempts.
    let (status, sent) = call(
        "POST",
        format!("/v1/apps/{app}/notifications"),
        Some(json!({"event_type": "trade.success", "payload": {"a": 1}})),
    )
    .await;
    assert_eq!(status, 202, "{sent}");
    let id = sent["id"].as_str().unwrap();
    let delivery = sent["deliveries"][0]["id"].as_str().unwrap();
    for path in [
        format!("/v1/apps/{app}/notifications"),
        format!("/v1/notifications/{id}"),
        format!("/v1/deliveries/{delivery}"),
        format!("/v1/deliveries/{delivery}/attempts"),
    ] {
        let (status, v) = call("GET", path.clone(), None).await;
        assert_eq!(status, 200, "{path}: {v}");
    }
    receiver.wait_count(1).await;

    // Another app's, and every administration route: 403 with the JSON error.
    let other_delivery = other_n["deliveries"]
        .as_array()
        .and_then(|d| d.first())
        .map(|d| d["id"].as_str().unwrap().to_string());
    let mut forbidden = vec![
        (
            "POST",
            format!("/v1/apps/{other}/notifications"),
            Some(json!({"event_type": "e", "payload": {}})),
        ),
        ("GET", format!("/v1/apps/{other}/notifications"), None),
        ("GET", format!("/v1/notifications/{other_id}"), None),
        ("GET", "/v1/apps".to_string(), None),
        ("POST", "/v1/apps".to_string(), Some(json!({"name": "x"}))),
        ("GET", format!("/v1/apps/{app}"), None),
        (
            "PATCH",
            format!("/v1/apps/{app}"),
            Some(json!({"name": "x"})),
        ),
        ("DELETE", format!("/v1/apps/{app}"), None),
        ("POST", format!("/v1/apps/{app}/keys"), None),
        ("GET", format!("/v1/apps/{app}/keys"), None),
        ("GET", format!("/v1/apps/{app}/endpoints"), None),
        (
            "POST",
            format!("/v1/apps/{app}/endpoints"),
            Some(json!({"url": "http://127.0.0.1:1/x"})),
        ),
        ("POST", format!("/v1/apps/{app}/secret/rotate"), None),
        (
            "POST",
            format!("/v1/apps/{app}/recover"),
            Some(json!({"since": "2026-01-01T00:00:00Z"})),
        ),
        ("POST", format!("/v1/deliveries/{delivery}/retry"), None),
    ];
    if let Some(d) = other_delivery {
        forbidden.push(("GET", format!("/v1/deliveries/{d}"), None));
    }
    for (method, path, body) in forbidden {
        let (status, v) = call(method, path.clone(), body).await;
        assert_eq!(status, 403, "{method} {path}: {v}");
        assert_eq!(v["error"]["code"], "forbidden", "{method} {path}");
        assert!(v["error"]["message"].is_string());
    }
    // Nothing was changed by the refused calls.
    let (_, apps) = server.call("GET", "/v1/apps", None).await;
    assert_eq!(apps["data"].as_array().unwrap().len(), 2);
    let (_, got) = server.call("GET", &format!("/v1/apps/{app}"), None).await;
    assert_eq!(got["name"], "shop");
    // The admin token still administers, and an unknown hk_ key is 401.
    let (status, _) = server
        .call("GET", &format!("/v1/apps/{app}/keys"), None)
        .await;
    assert_eq!(status, 200);
    let (status, _) = server
        .call_raw("GET", "/v1/apps", None, Some("hk_not-a-real-key"), &[])
        .await;
    assert_eq!(status, 401);
    let _ = TOKEN;
}

#[tokio::test]
async fn a_wrong_method_is_405_with_allow_and_the_json_error() {
    let server = TestServer::start().await;
    let app = server.app(json!({})).await;
    for (method, path, allowed) in [
        ("PUT", "/v1/apps".to_string(), vec!["GET", "POST"]),
        (
            "POST",
            format!("/v1/apps/{app}"),
            vec!["DELETE", "GET", "PATCH"],
        ),
        ("DELETE", "/v1/notifications/ntf_x".to_string(), vec!["GET"]),
        (
            "GET",
            "/v1/deliveries/dlv_x/retry".to_string(),
            vec!["POST"],
        ),
        ("POST", "/healthz".to_string(), vec!["GET"]),
    ] {
        for token in [Some(TOKEN), None] {
            let (status, headers, v) = server.call_full(method, &path, None, token, &[]).await;
            assert_eq!(status, 405, "{method} {path}");
            assert_eq!(
                v["error"]["code"], "method_not_allowed",
                "{method} {path}: {v}"
            );
            assert!(v["error"]["message"].as_str().unwrap().contains(method));
            let allow = headers
                .get("allow")
                .and_then(|h| h.to_str().ok())
                .unwrap_or_default();
            let mut got: Vec<&str> = allow
                .split(',')
                .map(str::trim)
                .filter(|m| *m != "HEAD")
                .collect();
            got.sort();
            assert_eq!(got, allowed, "{method} {path}");
            assert!(headers
                .get("content-type")
                .and_then(|h| h.to_str().ok())
                .is_some_and(|c| c.starts_with("application/json")));
        }
    }
    // An unknown path stays 404.
    let (status, v) = server.call("PUT", "/v1/nothing-here", None).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
}
