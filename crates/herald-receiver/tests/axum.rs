//! The axum integration: a notify route built from the [`RawRequest`] extractor and the
//! [`Handled`] response, served on a random port and hit with raw HTTP/1.1, so the bytes
//! on the wire are checked, not a framework's view of them.
#![cfg(feature = "axum")]
mod common;

use axum::extract::State;
use axum::routing::post;
use axum::Router;
use common::*;
use herald_inbox::OrderState;
use herald_protocols::Profile;
use herald_receiver::{Handled, Inbox, RawRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn notify(State(inbox): State<Inbox>, req: RawRequest) -> Handled {
    inbox.receive(&req, |_, _| Ok(())).await
}

async fn serve(inbox: Inbox) -> std::net::SocketAddr {
    let app = Router::new()
        .route("/notify", post(notify))
        .with_state(inbox);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// Sends `req` as raw HTTP/1.1 and returns the raw response (the server closes after it).
async fn send(addr: std::net::SocketAddr, req: &RawRequest, query: &str) -> String {
    let mut head = format!("POST /notify{query} HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n");
    for (k, v) in &req.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", req.body.len()));
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(head.as_bytes()).await.expect("write");
    stream.write_all(&req.body).await.expect("write body");
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await.expect("read");
    String::from_utf8(out).expect("utf-8 response")
}

#[tokio::test]
async fn a_notify_route_acks_with_the_providers_exact_reply_and_refuses_tampering() {
    let (sender, event_type, payload) = (
        Sender::new(Profile::Stripe, serde_json::Value::Null),
        "payment_intent.succeeded",
        serde_json::json!({"id": "pi_1", "amount": 100, "currency": "cny", "metadata": {"out_trade_no": "A1"}}),
    );
    let store = sqlite().await;
    let inbox = Inbox::new(sender.receiver(), store);
    new_order(&inbox, "A1", 100).await;
    let addr = serve(inbox.clone()).await;

    let req = sender.request("evt_1", event_type, &payload);
    let response = send(addr, &req, "?x=1").await;
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(
        response.contains("content-type: application/json\r\n"),
        "{response}"
    );
    assert!(
        response.ends_with("\r\n\r\n{\"received\": true}"),
        "{response}"
    );
    let o = inbox.order("A1").await.expect("read").expect("order");
    assert_eq!(o.state, OrderState::Paid);

    let mut tampered = sender.request("evt_2", event_type, &payload);
    tampered.body = tampered.body.slice(..tampered.body.len() - 1);
    let response = send(addr, &tampered, "").await;
    assert!(
        response.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{response}"
    );
    assert!(
        response.contains("{\"error\":\"bad signature"),
        "{response}"
    );
}

#[tokio::test]
async fn the_extractor_keeps_method_headers_query_and_exact_body_bytes() {
    use axum::extract::FromRequest;
    let body = b"a=1&b=%E4%BD%A0 \xff".to_vec();
    let http = axum::http::Request::builder()
        .method("POST")
        .uri("/notify?sign=x%2By")
        .header(
            "Content-Type",
            "application/x-www-form-urlencoded; charset=GBK",
        )
        .header("X-Extra", "one")
        .body(axum::body::Body::from(body.clone()))
        .expect("request");
    let raw = RawRequest::from_request(http, &()).await.expect("extract");
    assert_eq!(raw.method, "POST");
    assert_eq!(raw.query, "sign=x%2By");
    assert_eq!(&raw.body[..], &body[..]);
    assert!(raw
        .headers
        .contains(&("x-extra".to_string(), "one".to_string())));

    let huge = axum::http::Request::builder()
        .method("POST")
        .uri("/notify")
        .body(axum::body::Body::from(vec![b'x'; 1024 * 1024 + 1]))
        .expect("request");
    let refused = RawRequest::from_request(huge, &())
        .await
        .expect_err("too large");
    assert_eq!(refused.status(), axum::http::StatusCode::PAYLOAD_TOO_LARGE);
}
