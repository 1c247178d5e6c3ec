//! The operator dashboard's pages and actions over real HTTP: sign-in and sessions, the
//! session guard (GET to the sign-in form, POST 401), CSRF and Origin refusals that change
//! nothing, each page's content, each action's effect on the store, escaping of hostile
//! strings, one-time login links, and the sandbox's pages and buttons.
mod common;

use common::{Receiver, Reply, TestServer, SECRET, TOKEN};
use herald_store::DeliveryStatus;
use serde_json::{json, Value};

/// A browser-like client of one server: no redirects followed, the session cookie kept by
/// hand, the CSRF token read from the pages.
struct Operator {
    base: String,
    http: reqwest::Client,
    cookie: Option<String>,
}

struct Page {
    status: u16,
    location: Option<String>,
    set_cookie: Option<String>,
    body: String,
}

impl Operator {
    fn new(server: &TestServer) -> Operator {
        Operator {
            base: server.base.clone(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            cookie: None,
        }
    }

    async fn signed_in(server: &TestServer) -> Operator {
        Operator::signed_in_with(server, TOKEN).await
    }

    /// Signed in through the form with `credential` (the admin token or an API key).
    async fn signed_in_with(server: &TestServer, credential: &str) -> Operator {
        let mut op = Operator::new(server);
        let p = op
            .post("/login", &[("token", credential)], Some(&server.base))
            .await;
        assert_eq!(p.status, 303, "{}", p.body);
        op.cookie = p
            .set_cookie
            .as_deref()
            .and_then(|c| c.split(';').next())
            .map(str::to_string);
        assert!(op.cookie.is_some());
        op
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Page {
        let req = match &self.cookie {
            Some(c) => req.header("cookie", c),
            None => req,
        };
        let resp = req.send().await.expect("request");
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let (location, set_cookie) = (header("location"), header("set-cookie"));
        Page {
            status: resp.status().as_u16(),
            location,
            set_cookie,
            body: resp.text().await.unwrap_or_default(),
        }
    }

    async fn get(&self, path: &str) -> Page {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    /// POSTs a form; `origin` is sent as the `Origin` header when given.
    async fn post(&self, path: &str, fields: &[(&str, &str)], origin: Option<&str>) -> Page {
        let body: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        self.send(req).await
    }

    /// The CSRF token the signed-in pages carry.
    async fn csrf(&self) -> String {
        let page = self.get("/").await;
        assert_eq!(page.status, 200, "{}", page.body);
        let at = page
            .body
            .find("name=\"csrf\" value=\"")
            .expect("a csrf field")
            + 19;
        page.body[at..].split('"').next().unwrap().to_string()
    }

    /// POSTs an action the way the page's form does: same origin, with the CSRF token.
    async fn act(&self, path: &str, fields: &[(&str, &str)]) -> Page {
        let csrf = self.csrf().await;
        let mut all = vec![("csrf", csrf.as_str())];
        all.extend_from_slice(fields);
        self.post(path, &all, Some(&self.base)).await
    }
}

/// An app whose endpoint answers 500 until told otherwise, with one notification that has
/// failed (two attempts); returns (app, endpoint, notification id, delivery id, receiver).
async fn failed_delivery(server: &TestServer) -> (String, String, String, String, Receiver) {
    let rx = Receiver::start(|_, _| Reply::Status(500, "down for maintenance")).await;
    let app = server.app(json!({"retry": [0.05]})).await;
    let ep = server.endpoint(&app, json!({"url": rx.url("/hook")})).await;
    let n = server
        .notify(
            &app,
            json!({"event_type": "invoice.paid", "order_key": "ORDER-7",
                   "payload": {"out_trade_no": "T-7001", "amount": 880}}),
        )
        .await;
    let id = n["id"].as_str().unwrap().to_string();
    let v = server.wait_status(&id, "failed").await;
    let delivery = v["deliveries"][0]["id"].as_str().unwrap().to_string();
    (app, ep, id, delivery, rx)
}

async fn delivery_status(server: &TestServer, id: &str) -> DeliveryStatus {
    let store = &server.running.as_ref().unwrap().store;
    store
        .get_delivery(id)
        .await
        .unwrap()
        .unwrap()
        .delivery
        .status
}

#[tokio::test]
async fn without_a_session_pages_go_to_sign_in_and_actions_are_refused() {
    let server = TestServer::start().await;
    let (app, ep, n, d, _rx) = failed_delivery(&server).await;
    let anon = Operator::new(&server);
    for path in [
        "/".to_string(),
        "/apps".into(),
        format!("/apps/{app}"),
        "/notifications".into(),
        format!("/notifications/{n}"),
        format!("/deliveries/{d}"),
        "/sandbox".into(),
    ] {
        let p = anon.get(&path).await;
        assert_eq!(p.status, 303, "{path}");
        assert_eq!(p.location.as_deref(), Some("/login"), "{path}");
    }
    for path in [
        format!("/actions/deliveries/{d}/resend"),
        format!("/actions/apps/{app}/recover"),
        format!("/actions/apps/{app}/rotate"),
        format!("/actions/apps/{app}/endpoints/{ep}/enabled"),
        "/logout".into(),
    ] {
        let p = anon
            .post(
                &path,
                &[
                    ("csrf", "x"),
                    ("since", "2020-01-01T00:00"),
                    ("enabled", "false"),
                ],
                Some(&server.base),
            )
            .await;
        assert_eq!(p.status, 401, "{path}");
    }
    assert_eq!(delivery_status(&server, &d).await, DeliveryStatus::Failed);
    let (_, v) = server
        .call("GET", &format!("/v1/apps/{app}/endpoints/{ep}"), None)
        .await;
    assert_eq!(v["enabled"], true);
    // A made-up cookie is no session either.
    let mut forged = Operator::new(&server);
    forged.cookie = Some("herald_session=forged".into());
    assert_eq!(forged.get("/").await.status, 303);
}

#[tokio::test]
async fn signing_in_with_the_admin_token_sets_a_strict_httponly_session_cookie_until_sign_out() {
    let server = TestServer::start().await;
    let anon = Operator::new(&server);
    let form = anon.get("/login").await;
    assert_eq!(form.status, 200);
    assert!(form.body.contains("name=\"token\""));
    let wrong = anon
        .post("/login", &[("token", "not-the-token")], Some(&server.base))
        .await;
    assert_eq!(wrong.status, 401);
    assert!(wrong
        .body
        .contains("neither the admin token nor a live API key"));
    assert!(wrong.set_cookie.is_none());
    let cross = anon
        .post("/login", &[("token", TOKEN)], Some("http://evil.example"))
        .await;
    assert_eq!(cross.status, 403);
    assert!(cross.set_cookie.is_none());

    let ok = anon
        .post("/login", &[("token", TOKEN)], Some(&server.base))
        .await;
    assert_eq!(ok.status, 303);
    assert_eq!(ok.location.as_deref(), Some("/"));
    let cookie = ok.set_cookie.unwrap();
    assert!(cookie.starts_with("herald_session="), "{cookie}");
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=28800"] {
        assert!(cookie.contains(attr), "{attr} missing from {cookie}");
    }
    assert!(
        !cookie.contains(TOKEN),
        "the cookie holds a session id, not the token"
    );

    let mut op = Operator::new(&server);
    op.cookie = cookie.split(';').next().map(str::to_string);
    let home = op.get("/").await;
    assert_eq!(home.status, 200);
    assert!(home.body.contains("Overview"));
    let csrf = op.csrf().await;
    // Signing out needs the token too; then the session is gone.
    assert_eq!(
        op.post("/logout", &[], Some(&server.base)).await.status,
        403
    );
    let out = op
        .post("/logout", &[("csrf", &csrf)], Some(&server.base))
        .await;
    assert_eq!(out.status, 303);
    assert!(out.set_cookie.unwrap().contains("Max-Age=0"));
    assert_eq!(op.get("/").await.status, 303);
}

#[tokio::test]
async fn every_page_shows_what_the_store_holds() {
    let server = TestServer::start().await;
    let (app, ep, n, d, _rx) = failed_delivery(&server).await;
    let op = Operator::signed_in(&server).await;

    let home = op.get("/").await;
    assert_eq!(home.status, 200);
    assert!(home.body.contains("<svg"), "the chart");
    assert!(
        home.body.contains("0 acknowledged, 2 failed"),
        "both failed attempts are in this minute's bar"
    );
    assert!(home.body.contains("Endpoints in trouble"));
    assert!(
        home.body.contains(&ep),
        "the failing endpoint is listed as in trouble"
    );
    assert!(home.body.contains("Failed (retries spent)"));

    let apps = op.get("/apps").await;
    assert!(apps.status == 200 && apps.body.contains(&app));

    let page = op.get(&format!("/apps/{app}")).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("/hook"));
    assert!(
        page.body.contains("<span class=\"badge bad\">2</span>"),
        "two failures in a row"
    );
    assert!(
        page.body.contains("Breaker")
            && page.body.contains("<span class=\"badge ok\">closed</span>"),
        "two failures leave the breaker closed"
    );

    let found = op
        .get(&format!("/notifications?status=failed&app={app}"))
        .await;
    assert_eq!(found.status, 200);
    assert!(found.body.contains(&n));
    for q in ["key=T-7001", "key=ORDER-7", "event_type=invoice.paid"] {
        let p = op.get(&format!("/notifications?{q}")).await;
        assert!(p.body.contains(&n), "{q}");
    }
    let none = op.get("/notifications?status=succeeded").await;
    assert!(!none.body.contains(&n));
    let bad = op.get("/notifications?status=lost&from=yesterday").await;
    assert_eq!(bad.status, 422);
    assert!(bad
        .body
        .contains("not pending, succeeded, failed or canceled"));
    assert!(bad.body.contains("is not a date and time"));

    let detail = op.get(&format!("/notifications/{n}")).await;
    assert_eq!(detail.status, 200);
    let b = &detail.body;
    assert!(b.contains(&d));
    assert!(b.contains("HTTP 500") && b.contains("http-status"));
    assert!(b.contains("down for maintenance"), "the response body");
    assert!(b.contains("Request as sent"));
    assert!(
        b.contains("webhook-signature: •••• masked"),
        "the signature is masked"
    );
    assert!(!b.contains("v1,"), "no signature value reaches the page");
    assert!(!b.contains(SECRET));
    assert!(
        b.contains("&quot;out_trade_no&quot;: &quot;T-7001&quot;"),
        "the payload"
    );
    assert!(b.contains("Resend"));

    let attempts = op.get(&format!("/deliveries/{d}")).await;
    assert_eq!(attempts.status, 200);
    assert_eq!(attempts.body.matches("class=\"attempt bad\"").count(), 2);
    assert_eq!(
        attempts.body.matches("Request as sent").count(),
        2,
        "the delivery's page rebuilds every attempt's request"
    );
    assert!(
        b.contains(&format!("href=\"/deliveries/{d}\"")),
        "older attempts point to the delivery's page for their request"
    );

    assert_eq!(op.get("/notifications/ntf_missing").await.status, 404);
    assert_eq!(op.get("/apps/app_missing").await.status, 404);
    assert_eq!(op.get("/sandbox").await.status, 404, "no sandbox mounted");
}

#[tokio::test]
async fn an_action_without_the_csrf_token_or_from_another_origin_changes_nothing() {
    let server = TestServer::start().await;
    let (_app, _ep, _n, d, _rx) = failed_delivery(&server).await;
    let op = Operator::signed_in(&server).await;
    let path = format!("/actions/deliveries/{d}/resend");
    let csrf = op.csrf().await;
    let none = op.post(&path, &[], Some(&server.base)).await;
    assert_eq!(none.status, 403);
    assert!(none.body.contains("security token"));
    let wrong = op
        .post(&path, &[("csrf", "guess")], Some(&server.base))
        .await;
    assert_eq!(wrong.status, 403);
    let cross = op
        .post(&path, &[("csrf", &csrf)], Some("http://evil.example"))
        .await;
    assert_eq!(cross.status, 403);
    assert!(cross.body.contains("another site"));
    assert_eq!(delivery_status(&server, &d).await, DeliveryStatus::Failed);
    // Another session's token is no good either.
    let other = Operator::signed_in(&server).await;
    let other_csrf = other.csrf().await;
    assert_ne!(other_csrf, csrf);
    assert_eq!(
        op.post(&path, &[("csrf", &other_csrf)], Some(&server.base))
            .await
            .status,
        403
    );
    assert_eq!(delivery_status(&server, &d).await, DeliveryStatus::Failed);
}

#[tokio::test]
async fn resend_delivers_again_once_the_receiver_is_fixed() {
    let server = TestServer::start().await;
    let (_app, _ep, n, d, rx) = failed_delivery(&server).await;
    rx.set_script(Receiver::ok());
    let op = Operator::signed_in(&server).await;
    let p = op
        .act(&format!("/actions/deliveries/{d}/resend"), &[])
        .await;
    assert_eq!(p.status, 303);
    assert_eq!(
        p.location.as_deref(),
        Some(format!("/notifications/{n}?done=resent#{d}").as_str())
    );
    server.wait_status(&n, "succeeded").await;
    let page = op.get(&format!("/notifications/{n}?done=resent")).await;
    assert!(page.body.contains("due again now"));
    assert!(page.body.contains("class=\"attempt ok\""));
    assert_eq!(rx.count(), 3);
    let missing = op.act("/actions/deliveries/dlv_missing/resend", &[]).await;
    assert_eq!(missing.status, 404);
}

#[tokio::test]
async fn recover_disable_enable_rotate_and_create_an_api_key_act_on_the_store() {
    let server = TestServer::start().await;
    let (app, ep, n, d, rx) = failed_delivery(&server).await;
    let op = Operator::signed_in(&server).await;
    let store = server.running.as_ref().unwrap().store.clone();

    // Recover: a bad time is refused and changes nothing; a good one requeues.
    let bad = op
        .act(
            &format!("/actions/apps/{app}/recover"),
            &[("since", "soon")],
        )
        .await;
    assert_eq!(bad.status, 422);
    assert_eq!(delivery_status(&server, &d).await, DeliveryStatus::Failed);
    rx.set_script(Receiver::ok());
    let p = op
        .act(
            &format!("/actions/apps/{app}/recover"),
            &[("since", "2000-01-01T00:00")],
        )
        .await;
    assert_eq!(p.status, 303);
    assert_eq!(p.location.unwrap(), format!("/apps/{app}?done=recovered"));
    server.wait_status(&n, "succeeded").await;

    // Disable, then enable.
    let path = format!("/actions/apps/{app}/endpoints/{ep}/enabled");
    assert_eq!(op.act(&path, &[("enabled", "maybe")]).await.status, 422);
    assert_eq!(op.act(&path, &[("enabled", "false")]).await.status, 303);
    let (_, v) = server
        .call("GET", &format!("/v1/apps/{app}/endpoints/{ep}"), None)
        .await;
    assert_eq!(v["enabled"], false);
    let page = op.get(&format!("/apps/{app}?done=disabled")).await;
    assert!(page.body.contains("The endpoint is disabled"));
    assert!(page.body.contains(">Enable<"));
    assert_eq!(op.act(&path, &[("enabled", "true")]).await.status, 303);
    let (_, v) = server
        .call("GET", &format!("/v1/apps/{app}/endpoints/{ep}"), None)
        .await;
    assert_eq!(v["enabled"], true);

    // Rotate: new credentials in the store, the new secret shown once on the answer.
    let before = store.get_app(&app).await.unwrap().unwrap().credentials;
    let rotated = op.act(&format!("/actions/apps/{app}/rotate"), &[]).await;
    assert_eq!(rotated.status, 200, "{}", rotated.body);
    assert!(rotated.body.contains("Secret rotated"));
    let after = store.get_app(&app).await.unwrap().unwrap().credentials;
    assert_ne!(before, after);
    assert!(
        rotated.body.contains("whsec_"),
        "the new secret is shown once"
    );

    // An API key: shown once on the answer, stored as its hash only.
    let keys = op.act(&format!("/actions/apps/{app}/api-keys"), &[]).await;
    assert_eq!(keys.status, 201, "{}", keys.body);
    let start = keys.body.find("hk_").expect("the key is shown");
    let key: String = keys.body[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .collect();
    let stored = store.list_api_keys(&app).await.unwrap();
    assert_eq!(stored.len(), 1, "one key created");
    let hash = herald_server::api::hash_token(&key);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    let found = store.find_api_key(&hex).await.unwrap();
    assert_eq!(
        found.map(|k| k.id),
        Some(stored[0].id.clone()),
        "stored by its hash"
    );
}

#[tokio::test]
async fn hostile_strings_are_escaped_on_every_page() {
    let server = TestServer::start().await;
    let evil = "<script>alert('x')</script>\"'&";
    let (status, v) = server
        .call(
            "POST",
            "/v1/apps",
            Some(json!({"name": evil, "credentials": {"secret": SECRET}, "retry": [0.05]})),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let app = v["id"].as_str().unwrap().to_string();
    let rx = Receiver::start(|_, _| Reply::Status(500, "<img src=x onerror=alert(1)>")).await;
    server
        .endpoint(&app, json!({"url": rx.url("/hook"), "event_types": [evil]}))
        .await;
    let n = server
        .notify(
            &app,
            json!({"event_type": evil, "order_key": evil, "idempotency_key": evil,
                   "payload": {"note": "</pre><script>alert(1)</script>", "out_trade_no": evil}}),
        )
        .await;
    let id = n["id"].as_str().unwrap().to_string();
    server.wait_status(&id, "failed").await;
    let op = Operator::signed_in(&server).await;
    let search = format!(
        "/notifications?event_type={}&key={}",
        url::form_urlencoded::byte_serialize(evil.as_bytes()).collect::<String>(),
        url::form_urlencoded::byte_serialize(evil.as_bytes()).collect::<String>()
    );
    for path in [
        "/".to_string(),
        "/apps".into(),
        format!("/apps/{app}"),
        search,
        format!("/notifications/{id}"),
    ] {
        let p = op.get(&path).await;
        assert_eq!(p.status, 200, "{path}: {}", p.body);
        assert!(
            !p.body.contains("<script>alert"),
            "{path} shows a raw script tag"
        );
        assert!(!p.body.contains("<img src=x"), "{path} shows a raw img tag");
        assert!(!p.body.contains("</pre><script>"), "{path}");
    }
    let detail = op.get(&format!("/notifications/{id}")).await;
    assert!(detail
        .body
        .contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&quot;&#39;&amp;"));
    assert!(detail.body.contains("&lt;img src=x onerror=alert(1)&gt;"));
    let listed = op.get(&format!("/notifications?app={app}")).await;
    assert!(
        listed.body.contains(&id),
        "the search form echoes its values escaped and still finds it"
    );
}

#[tokio::test]
async fn a_one_time_login_link_signs_a_browser_in_once() {
    let server = TestServer::start().await;
    let path = server
        .running
        .as_ref()
        .unwrap()
        .dashboard
        .one_time_login_path()
        .await
        .unwrap();
    assert!(path.starts_with("/login/link?t="));
    let anon = Operator::new(&server);
    let first = anon.get(&path).await;
    assert_eq!(first.status, 303);
    let cookie = first.set_cookie.expect("a session cookie");
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
    let mut op = Operator::new(&server);
    op.cookie = cookie.split(';').next().map(str::to_string);
    assert_eq!(op.get("/").await.status, 200);
    let again = anon.get(&path).await;
    assert_eq!(again.status, 401);
    assert!(again.set_cookie.is_none());
    assert!(again.body.contains("already used or has expired"));
    assert_eq!(anon.get("/login/link?t=made-up").await.status, 401);
}

#[tokio::test]
async fn sandbox_pages_list_trades_and_their_buttons_refund_cancel_and_set_drills() {
    let server = TestServer::start_sandbox(herald_server::sandbox::SandboxOptions::default()).await;
    let (status, v) = server
        .call(
            "POST",
            "/v1/apps",
            Some(json!({"name": "Tea <&> Co", "profile": "alipay"})),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let app = v["id"].as_str().unwrap().to_string();
    let pay = |trade: &str| {
        json!({"app_id": app, "out_trade_no": trade, "total_amount": "5.00",
               "subject": "tea", "notify_url": "http://127.0.0.1:9/notify"})
    };
    let (s1, unpaid) = server
        .call("POST", "/v1/sandbox/payments", Some(pay("T-unpaid")))
        .await;
    assert_eq!(s1, 201, "{unpaid}");
    let (s2, paid) = server
        .call("POST", "/v1/sandbox/payments", Some(pay("T-paid")))
        .await;
    assert_eq!(s2, 201, "{paid}");
    let unpaid_id = unpaid["payment_id"].as_str().unwrap().to_string();
    let paid_id = paid["payment_id"].as_str().unwrap().to_string();
    let (st, _) = server
        .call_raw("POST", &format!("/pay/{paid_id}/pay"), None, None, &[])
        .await;
    assert!(st == 200 || st == 303, "{st}");

    let op = Operator::signed_in(&server).await;
    let list = op.get("/sandbox").await;
    assert_eq!(list.status, 200);
    assert!(list.body.contains("T-unpaid") && list.body.contains("T-paid"));
    assert!(list.body.contains("5.00"));

    let p = op
        .act(&format!("/actions/sandbox/{unpaid_id}/cancel"), &[])
        .await;
    assert_eq!(p.status, 303);
    let (_, v) = server
        .call("GET", &format!("/v1/sandbox/payments/{unpaid_id}"), None)
        .await;
    assert_eq!(v["status"], "TRADE_CLOSED");

    let none = op
        .act(&format!("/actions/sandbox/{paid_id}/refund"), &[])
        .await;
    assert_eq!(none.status, 422);
    let too_much = op
        .act(
            &format!("/actions/sandbox/{paid_id}/refund"),
            &[("refund_amount", "50.00")],
        )
        .await;
    assert_eq!(too_much.status, 422, "{}", too_much.body);
    let p = op
        .act(
            &format!("/actions/sandbox/{paid_id}/refund"),
            &[("refund_amount", "1.50")],
        )
        .await;
    assert_eq!(p.status, 303, "{}", p.body);
    let (_, v) = server
        .call("GET", &format!("/v1/sandbox/payments/{paid_id}"), None)
        .await;
    assert_eq!(v["refunded_amount"], 150);

    let p = op
        .act(
            &format!("/actions/sandbox/{paid_id}/drills"),
            &[("duplicate", "2"), ("bad_signature", "true")],
        )
        .await;
    assert_eq!(p.status, 303);
    let (_, v): (u16, Value) = server
        .call("GET", &format!("/v1/sandbox/payments/{paid_id}"), None)
        .await;
    assert_eq!(v["drills"]["duplicate"], 2);
    assert_eq!(v["drills"]["bad_signature"], true);
    let bad = op
        .act(
            &format!("/actions/sandbox/{paid_id}/drills"),
            &[("duplicate", "99")],
        )
        .await;
    assert_eq!(bad.status, 422);

    let page = op.get(&format!("/sandbox/{paid_id}?done=refunded")).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Refunded;"));
    assert!(page
        .body
        .contains("name=\"bad_signature\" value=\"true\" checked"));
    assert!(
        page.body.contains("/notifications/ntf_"),
        "events link their notifications"
    );
    assert!(!page.body.contains("Tea <&> Co"));
}

/// A new API key of `app`, through the API.
async fn api_key(server: &TestServer, app: &str) -> (String, String) {
    let (status, v) = server
        .call("POST", &format!("/v1/apps/{app}/keys"), None)
        .await;
    assert_eq!(status, 201, "{v}");
    (
        v["key"].as_str().unwrap().to_string(),
        v["id"].as_str().unwrap().to_string(),
    )
}

/// Two apps, each with an endpoint and a failed notification; the first app's key signs in.
struct TwoApps {
    mine: (String, String, String, String),
    theirs: (String, String, String, String),
    key: String,
    key_id: String,
    _rx: (Receiver, Receiver),
}

async fn two_apps(server: &TestServer) -> TwoApps {
    let (a, ea, na, da, rxa) = failed_delivery(server).await;
    let (b, eb, nb, db, rxb) = failed_delivery(server).await;
    let (key, key_id) = api_key(server, &a).await;
    TwoApps {
        mine: (a, ea, na, da),
        theirs: (b, eb, nb, db),
        key,
        key_id,
        _rx: (rxa, rxb),
    }
}

#[tokio::test]
async fn an_api_key_signs_in_and_every_page_shows_its_app_only() {
    let server = TestServer::start().await;
    let t = two_apps(&server).await;
    let (a, ea, na, da) = &t.mine;
    let (b, eb, nb, db) = &t.theirs;
    let op = Operator::signed_in_with(&server, &t.key).await;
    let must_hold = |page: &Page, path: &str, have: &[&String], lack: &[&String]| {
        assert_eq!(page.status, 200, "{path}: {}", page.body);
        for h in have {
            assert!(page.body.contains(h.as_str()), "{path} shows {h}");
        }
        for l in lack {
            assert!(!page.body.contains(l.as_str()), "{path} hides {l}");
        }
    };
    let overview = op.get("/").await;
    must_hold(&overview, "/", &[a, ea], &[b, eb]);
    assert!(overview.body.contains("Endpoints failing"));
    must_hold(&op.get("/apps").await, "/apps", &[a], &[b]);
    must_hold(&op.get(&format!("/apps/{a}")).await, "/apps/a", &[ea], &[b]);
    must_hold(
        &op.get(&format!("/apps/{a}/endpoints/{ea}")).await,
        "endpoint page",
        &[ea],
        &[b],
    );
    must_hold(&op.get("/notifications").await, "search", &[na], &[nb]);
    must_hold(
        &op.get(&format!("/notifications?app={b}")).await,
        "search naming the other app",
        &[na],
        &[nb],
    );
    must_hold(
        &op.get(&format!("/notifications/{na}")).await,
        "notification",
        &[da],
        &[],
    );
    must_hold(
        &op.get(&format!("/deliveries/{da}")).await,
        "delivery",
        &[na],
        &[],
    );
    // The other app's things answer as if they did not exist.
    for path in [
        format!("/apps/{b}"),
        format!("/apps/{b}/endpoints/{eb}"),
        format!("/apps/{a}/endpoints/{eb}"),
        format!("/notifications/{nb}"),
        format!("/deliveries/{db}"),
    ] {
        let p = op.get(&path).await;
        assert_eq!(p.status, 404, "{path}");
        assert!(!p.body.contains(b.as_str()) || path.contains(b.as_str()));
    }
    let missing = op.get("/notifications/ntf_made_up").await;
    assert_eq!(missing.status, 404);
    // No admin buttons anywhere: the only form posting to /actions is none.
    for path in [
        format!("/apps/{a}"),
        format!("/apps/{a}/endpoints/{ea}"),
        format!("/notifications/{na}"),
        "/".into(),
    ] {
        let p = op.get(&path).await;
        assert!(!p.body.contains("/actions/"), "{path} has no action forms");
    }
    // The admin sees both apps and the buttons.
    let admin = Operator::signed_in(&server).await;
    must_hold(&admin.get("/apps").await, "admin /apps", &[a, b], &[]);
    assert!(admin
        .get(&format!("/notifications/{nb}"))
        .await
        .body
        .contains("/resend"));
}

#[tokio::test]
async fn an_api_key_session_is_refused_every_admin_only_action_with_403_and_changes_nothing() {
    let server = TestServer::start_sandbox(herald_server::sandbox::SandboxOptions::default()).await;
    let t = two_apps(&server).await;
    let (a, ea, _, da) = &t.mine;
    let op = Operator::signed_in_with(&server, &t.key).await;
    for path in [
        format!("/actions/deliveries/{da}/resend"),
        format!("/actions/apps/{a}/recover"),
        format!("/actions/apps/{a}/endpoints/{ea}/recover"),
        format!("/actions/apps/{a}/endpoints/{ea}/enabled"),
        format!("/actions/apps/{a}/rotate"),
        format!("/actions/apps/{a}/api-keys"),
        "/actions/sandbox/pay_x/cancel".into(),
    ] {
        let p = op
            .act(
                &path,
                &[("since", "2020-01-01T00:00"), ("enabled", "false")],
            )
            .await;
        assert_eq!(p.status, 403, "{path}: {}", p.body);
    }
    for path in ["/sandbox", "/sandbox/pay_x"] {
        assert_eq!(op.get(path).await.status, 403, "{path}");
    }
    assert!(!op.get("/").await.body.contains("href=\"/sandbox\""));
    assert_eq!(delivery_status(&server, da).await, DeliveryStatus::Failed);
    let (_, v) = server
        .call("GET", &format!("/v1/apps/{a}/endpoints/{ea}"), None)
        .await;
    assert_eq!(v["enabled"], true);
    let (_, keys) = server
        .call("GET", &format!("/v1/apps/{a}/keys"), None)
        .await;
    assert_eq!(keys["data"].as_array().map(Vec::len), Some(1), "{keys}");
}

#[tokio::test]
async fn revoking_an_api_key_ends_its_sessions_at_their_next_request() {
    let server = TestServer::start().await;
    let t = two_apps(&server).await;
    let op = Operator::signed_in_with(&server, &t.key).await;
    assert_eq!(op.get("/").await.status, 200);
    let (status, _) = server
        .call(
            "DELETE",
            &format!("/v1/apps/{}/keys/{}", t.mine.0, t.key_id),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let after = op.get("/").await;
    assert_eq!(after.status, 303);
    assert_eq!(after.location.as_deref(), Some("/login"));
    let post = op
        .post("/logout", &[("csrf", "x")], Some(&server.base))
        .await;
    assert_eq!(post.status, 401);
    // The revoked key no longer signs in; a made-up key never did.
    for bad in [t.key.as_str(), "hk_made_up"] {
        let p = Operator::new(&server)
            .post("/login", &[("token", bad)], Some(&server.base))
            .await;
        assert_eq!(p.status, 401, "{bad}");
        assert!(p.set_cookie.is_none());
    }
}

#[tokio::test]
async fn a_session_survives_a_restart_of_the_server() {
    let server = TestServer::start().await;
    let op = Operator::signed_in(&server).await;
    let cookie = op.cookie.clone();
    let (db, dir) = server.stop().await;
    let server = TestServer::start_on(db, common::engine_config(true)).await;
    let mut again = Operator::new(&server);
    again.cookie = cookie;
    assert_eq!(again.get("/").await.status, 200, "still signed in");
    let out = again.act("/logout", &[]).await;
    assert_eq!(out.status, 303);
    assert_eq!(again.get("/").await.status, 303, "signed out");
    drop(dir);
}

#[tokio::test]
async fn recovering_an_endpoint_puts_only_its_failures_back_to_pending() {
    let server = TestServer::start().await;
    let (app, ep, _, d, rx) = failed_delivery(&server).await;
    // A second endpoint of the same app whose delivery also failed.
    let ep2 = server
        .endpoint(&app, json!({"url": rx.url("/other")}))
        .await;
    let n2 = server
        .notify(
            &app,
            json!({"event_type": "invoice.paid", "payload": {"k": 1}}),
        )
        .await;
    let id2 = n2["id"].as_str().unwrap().to_string();
    let v = server
        .wait_for(&id2, |v| {
            v["deliveries"]
                .as_array()
                .is_some_and(|ds| ds.iter().all(|d| d["status"] == "failed"))
        })
        .await;
    let other: Vec<String> = v["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["endpoint_id"] == ep2.as_str())
        .map(|x| x["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(other.len(), 1);
    let op = Operator::signed_in(&server).await;
    let page = op.get(&format!("/apps/{app}/endpoints/{ep}")).await;
    assert_eq!(page.status, 200);
    assert!(page
        .body
        .contains(&format!("/actions/apps/{app}/endpoints/{ep}/recover")));
    // A bad time changes nothing; another app's path is 404.
    let bad = op
        .act(
            &format!("/actions/apps/{app}/endpoints/{ep}/recover"),
            &[("since", "yesterday")],
        )
        .await;
    assert_eq!(bad.status, 422);
    assert_eq!(delivery_status(&server, &d).await, DeliveryStatus::Failed);
    let missing = op
        .act(
            &format!("/actions/apps/{app}/endpoints/ep_made_up/recover"),
            &[("since", "2020-01-01T00:00")],
        )
        .await;
    assert_eq!(missing.status, 404);
    rx.set_script(Receiver::ok());
    let done = op
        .act(
            &format!("/actions/apps/{app}/endpoints/{ep}/recover"),
            &[("since", "2020-01-01T00:00")],
        )
        .await;
    assert_eq!(done.status, 303, "{}", done.body);
    assert_eq!(
        done.location.as_deref(),
        Some(format!("/apps/{app}/endpoints/{ep}?done=recovered-endpoint").as_str())
    );
    let n1 = server
        .running
        .as_ref()
        .unwrap()
        .store
        .get_delivery(&d)
        .await
        .unwrap()
        .unwrap()
        .delivery
        .notification_id;
    server.wait_status(&n1, "succeeded").await;
    assert_eq!(
        delivery_status(&server, &other[0]).await,
        DeliveryStatus::Failed
    );
}

#[tokio::test]
async fn the_api_recovers_one_endpoints_failures_since_a_time() {
    let server = TestServer::start().await;
    let (app, ep, n, d, rx) = failed_delivery(&server).await;
    let path = format!("/v1/apps/{app}/endpoints/{ep}/recover");
    let (status, v) = server
        .call("POST", &path, Some(json!({"since": "not a time"})))
        .await;
    assert_eq!(status, 422, "{v}");
    let (status, v) = server
        .call(
            "POST",
            &format!("/v1/apps/{app}/endpoints/ep_made_up/recover"),
            Some(json!({"since": "2020-01-01T00:00:00Z"})),
        )
        .await;
    assert_eq!(status, 404, "{v}");
    // An app's key may not (the app's recover is the admin's too).
    let (key, _) = api_key(&server, &app).await;
    let resp = server
        .client
        .post(format!("{}{path}", server.base))
        .bearer_auth(&key)
        .json(&json!({"since": "2020-01-01T00:00:00Z"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    assert_eq!(delivery_status(&server, &d).await, DeliveryStatus::Failed);
    // A time after the delivery was created finds nothing.
    let (status, v) = server
        .call(
            "POST",
            &path,
            Some(json!({"since": "2999-01-01T00:00:00Z"})),
        )
        .await;
    assert_eq!((status, v["requeued"].as_u64()), (202, Some(0)));
    rx.set_script(Receiver::ok());
    let (status, v) = server
        .call(
            "POST",
            &path,
            Some(json!({"since": "2020-01-01T00:00:00Z"})),
        )
        .await;
    assert_eq!((status, v["requeued"].as_u64()), (202, Some(1)), "{v}");
    server.wait_status(&n, "succeeded").await;
}

#[tokio::test]
async fn two_nodes_on_one_postgres_database_share_sessions_and_login_links() {
    let url = herald_pgtest::database();
    let one = TestServer::start_postgres(&url).await;
    let two = TestServer::start_postgres(&url).await;
    // Signed in on one node, the cookie works on the other; signing out there ends it on both.
    let on_one = Operator::signed_in(&one).await;
    let mut on_two = Operator::new(&two);
    on_two.cookie = on_one.cookie.clone();
    assert_eq!(on_two.get("/").await.status, 200);
    let csrf = on_two.csrf().await;
    assert_eq!(csrf, on_one.csrf().await, "the same session's CSRF token");
    // An API key's session too, and it sees its app only on either node.
    let app = one.app(json!({})).await;
    let other = one.app(json!({})).await;
    let (key, _) = api_key(&one, &app).await;
    let keyed = Operator::signed_in_with(&two, &key).await;
    let mut keyed_on_one = Operator::new(&one);
    keyed_on_one.cookie = keyed.cookie.clone();
    assert_eq!(keyed_on_one.get(&format!("/apps/{app}")).await.status, 200);
    assert_eq!(
        keyed_on_one.get(&format!("/apps/{other}")).await.status,
        404
    );
    // A one-time link issued by one node works once, on whichever node it is used first.
    let path = one
        .running
        .as_ref()
        .unwrap()
        .dashboard
        .one_time_login_path()
        .await
        .unwrap();
    let first = Operator::new(&two).get(&path).await;
    assert_eq!(first.status, 303);
    assert!(first.set_cookie.is_some());
    let again = Operator::new(&one).get(&path).await;
    assert_eq!(again.status, 401, "already used on the other node");
    let out = on_two.act("/logout", &[]).await;
    assert_eq!(out.status, 303);
    assert_eq!(on_one.get("/").await.status, 303, "signed out on both");
}
