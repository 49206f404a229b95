//! The control plane over HTTP: the web UI at `/`, its CSRF-guarded forms, the admin API and
//! its guard, and the security headers on the gateway's own pages.

mod support;

use serde_json::Value;
use support::gateway::{TestGateway, start};
use support::mock_upstream::{MockOptions, MockUpstream};
use support::signin::{browser, initialize, oauth_gateway, sign_in, store_files};

const ADMIN_TOKEN: &str = "admin-token-for-tests-0123456789";

/// A gateway with the OAuth route `up` whose admin API takes only the token, even on loopback.
fn guarded_gateway(upstream: &MockUpstream) -> TestGateway {
    start(
        &format!(
            r#"
[server]
listen = "127.0.0.1:0"
[store]
dir = "{{dir}}/store"
[admin]
allow_loopback = false
token_file = "{{dir}}/admin-token"
[[routes]]
name = "up"
prefix = "/up"
upstream = "{}"
"#,
            upstream.base_url()
        ),
        &[("admin-token", ADMIN_TOKEN)],
    )
}

async fn page(gateway: &TestGateway) -> (reqwest::header::HeaderMap, String) {
    let response = browser()
        .get(format!("{}/", gateway.url()))
        .header("accept", "text/html")
        .send()
        .await
        .expect("index");
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    (headers, response.text().await.expect("html"))
}

fn port(gateway: &TestGateway) -> u16 {
    gateway.running.local_addr().port()
}

/// The CSRF token the page's forms carry.
fn csrf(html: &str) -> String {
    let marker = "name=\"csrf\" value=\"";
    let start = html.find(marker).expect("a form with a CSRF token") + marker.len();
    let end = start + html[start..].find('"').expect("end of value");
    html[start..end].to_owned()
}

fn tokens_stored(gateway: &TestGateway) -> bool {
    store_files(gateway.dir.path())
        .iter()
        .any(|name| name.ends_with("_tokens.json"))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_page_shows_each_route_and_its_sign_in_state() {
    let upstream = MockUpstream::start(MockOptions::default()).await;
    let gateway = oauth_gateway(&upstream, "");

    let (headers, html) = page(&gateway).await;
    assert!(html.contains("needs sign-in"), "{html}");
    assert!(html.contains("href=\"/auth/up/start\""));
    assert!(html.contains(&format!("http://localhost:{}/up/mcp", port(&gateway))));
    assert!(
        !html.contains("name=\"csrf\""),
        "no sign-out before sign-in"
    );
    let csp = headers["content-security-policy"].to_str().expect("csp");
    assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline'; script"));
    assert!(csp.contains("frame-ancestors 'none'"));
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["referrer-policy"], "no-referrer");
    assert_eq!(headers["cache-control"], "no-store");

    assert_eq!(sign_in(&gateway).await.0, 200);
    let (_, html) = page(&gateway).await;
    assert!(html.contains(">signed in<"), "{html}");
    assert!(html.contains("data-expires-at=\""));
    assert!(html.contains("Refresh now") && html.contains("Sign out"));
    for secret in upstream.oauth().issued_secrets() {
        assert!(!html.contains(&secret), "the page shows a credential");
    }

    // The script it loads is served by the gateway itself.
    let script = browser()
        .get(format!("{}/auth/assets/gateway.js", gateway.url()))
        .send()
        .await
        .expect("script");
    assert_eq!(script.status(), 200);
    assert!(script.text().await.expect("js").contains("data-expires-at"));
}

#[tokio::test(flavor = "multi_thread")]
async fn scripts_get_the_same_routes_as_json() {
    let upstream = MockUpstream::start(MockOptions::default()).await;
    let gateway = oauth_gateway(&upstream, "");
    assert_eq!(sign_in(&gateway).await.0, 200);
    let index: Value = browser()
        .get(format!("{}/", gateway.url()))
        .header("accept", "application/json")
        .send()
        .await
        .expect("index")
        .json()
        .await
        .expect("json");
    let route = &index["routes"][0];
    assert_eq!(route["name"], "up");
    assert_eq!(route["sign_in"]["state"], "signed_in");
    assert!(route["sign_in"]["expires_in"].as_i64().expect("expiry") > 0);
    assert_eq!(
        route["streamable_http"],
        format!("http://localhost:{}/up/mcp", port(&gateway))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn forms_without_the_pages_csrf_token_or_from_elsewhere_change_nothing() {
    let upstream = MockUpstream::start(MockOptions::default()).await;
    let gateway = oauth_gateway(&upstream, "");
    assert_eq!(sign_in(&gateway).await.0, 200);
    let (_, html) = page(&gateway).await;
    let token = csrf(&html);
    let clear = format!("{}/auth/up/clear", gateway.url());
    let refresh = format!("{}/auth/up/refresh", gateway.url());

    for url in [&clear, &refresh] {
        let bare = browser().post(url).send().await.expect("post");
        assert_eq!(bare.status(), 403, "{url} without a token");
        let wrong = browser()
            .post(url)
            .form(&[("csrf", "not-the-token")])
            .send()
            .await
            .expect("post");
        assert_eq!(wrong.status(), 403, "{url} with a wrong token");
        let cross = browser()
            .post(url)
            .header("origin", "https://evil.example")
            .form(&[("csrf", token.as_str())])
            .send()
            .await
            .expect("post");
        assert_eq!(cross.status(), 403, "{url} from another origin");
    }
    assert!(tokens_stored(&gateway));
    assert_eq!(upstream.oauth().refresh_requests(), 0);
    assert_eq!(
        initialize(&gateway).await.1["result"]["serverInfo"]["name"],
        "mock-upstream"
    );

    // The page's own forms work.
    let refreshed = browser()
        .post(&refresh)
        .form(&[("csrf", token.as_str())])
        .send()
        .await
        .expect("refresh");
    assert_eq!(refreshed.status(), 303);
    assert_eq!(upstream.oauth().refresh_requests(), 1);
    let (_, html) = page(&gateway).await;
    assert!(html.contains("Last refresh</dt><dd>ok"), "{html}");

    let cleared = browser()
        .post(&clear)
        .form(&[("csrf", token.as_str())])
        .send()
        .await
        .expect("clear");
    assert_eq!(cleared.status(), 303);
    assert!(!tokens_stored(&gateway));
    let (_, answer) = initialize(&gateway).await;
    assert_eq!(answer["error"]["code"], -32001, "{answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_api_needs_its_token_and_acts_on_the_store() {
    let upstream = MockUpstream::start(MockOptions::default()).await;
    let gateway = guarded_gateway(&upstream);
    assert_eq!(sign_in(&gateway).await.0, 200);
    let api = |path: &str| format!("{}/admin/api/{path}", gateway.url());

    for auth in [
        None,
        Some("Bearer wrong-token"),
        Some("Basic YWRtaW46YWRtaW4="),
    ] {
        let mut request = browser().get(api("routes"));
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let refused = request.send().await.expect("get");
        assert_eq!(refused.status(), 401, "{auth:?}");
        let body: Value = refused.json().await.expect("json");
        assert!(
            body["message"]
                .as_str()
                .expect("message")
                .contains("admin token")
        );
    }

    let admin = |request: reqwest::RequestBuilder| {
        request.header("authorization", format!("Bearer {ADMIN_TOKEN}"))
    };
    let routes: Value = admin(browser().get(api("routes")))
        .send()
        .await
        .expect("routes")
        .json()
        .await
        .expect("json");
    assert_eq!(routes["routes"][0]["name"], "up");
    assert_eq!(routes["routes"][0]["sign_in"]["state"], "signed_in");

    let missing = admin(browser().get(api("routes/nope")))
        .send()
        .await
        .expect("get");
    assert_eq!(missing.status(), 404);

    let refreshed = admin(browser().post(api("routes/up/refresh")))
        .send()
        .await
        .expect("refresh");
    assert_eq!(refreshed.status(), 200);
    let status: Value = refreshed.json().await.expect("json");
    assert_eq!(status["sign_in"]["last_refresh"]["outcome"], "ok");
    assert_eq!(upstream.oauth().refresh_requests(), 1);

    let cleared = admin(browser().post(api("routes/up/clear")))
        .send()
        .await
        .expect("clear");
    assert_eq!(cleared.status(), 200);
    let status: Value = cleared.json().await.expect("json");
    assert_eq!(status["sign_in"]["state"], "needs_sign_in");
    let files = store_files(gateway.dir.path());
    assert!(
        !files.iter().any(|f| f.ends_with("_tokens.json")),
        "{files:?}"
    );
    assert!(
        files.iter().any(|f| f.ends_with("_client_info.json")),
        "{files:?}"
    );

    let forgotten = admin(browser().post(api("routes/up/clear?registration=true")))
        .send()
        .await
        .expect("clear");
    assert_eq!(forgotten.status(), 200);
    let files = store_files(gateway.dir.path());
    assert!(
        !files.iter().any(|f| f.ends_with("_client_info.json")),
        "{files:?}"
    );

    let not_signed_in = admin(browser().post(api("routes/up/refresh")))
        .send()
        .await
        .expect("refresh");
    assert_eq!(not_signed_in.status(), 409);
    let body: Value = not_signed_in.json().await.expect("json");
    assert_eq!(body["error"], "needs_sign_in");
    assert!(
        body["sign_in_url"]
            .as_str()
            .expect("url")
            .ends_with("/auth/up/start")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn loopback_callers_may_use_the_admin_api_by_default() {
    let upstream = MockUpstream::start(MockOptions::default()).await;
    let gateway = oauth_gateway(&upstream, "");
    let routes = browser()
        .get(format!("{}/admin/api/routes", gateway.url()))
        .send()
        .await
        .expect("routes");
    assert_eq!(routes.status(), 200);
    let body: Value = routes.json().await.expect("json");
    assert_eq!(body["routes"][0]["sign_in"]["state"], "needs_sign_in");
    assert!(
        upstream
            .state()
            .requests()
            .iter()
            .all(|r| !r.path.starts_with("/admin"))
    );
}

/// The value of the series `series` (name and labels as the exposition writes them).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |value| value.trim().parse().expect("a number"))
}

async fn scrape(gateway: &TestGateway) -> String {
    browser()
        .get(format!("{}/metrics", gateway.url()))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
}

async fn rpc(gateway: &TestGateway, session: &str, body: Value) -> reqwest::Response {
    browser()
        .post(format!("{}/up/mcp", gateway.url()))
        .header("accept", "application/json")
        .header("mcp-session-id", session)
        .json(&body)
        .send()
        .await
        .expect("rpc")
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_requests_by_json_rpc_method_and_carry_no_secret() {
    let upstream = MockUpstream::start(MockOptions::default()).await;
    let gateway = oauth_gateway(&upstream, "");
    assert_eq!(sign_in(&gateway).await.0, 200);
    let init = support::initialize_request();
    let response = rpc(&gateway, "", init).await;
    let session_id = response.headers()["mcp-session-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let before = scrape(&gateway).await;

    let call = serde_json::json!({"jsonrpc":"2.0","id":2,"method":"tools/call",
        "params":{"name":"echo","arguments":{"text":"counted"}}});
    let list = serde_json::json!({"jsonrpc":"2.0","id":3,"method":"tools/list"});
    let custom = serde_json::json!({"jsonrpc":"2.0","id":4,"method":"x-vendor/anything"});
    let mut sent_bytes = 0;
    for body in [&call, &call, &call, &list, &list, &custom] {
        sent_bytes += body.to_string().len();
        assert_eq!(rpc(&gateway, &session_id, body.clone()).await.status(), 200);
    }
    // A request is counted when it is logged, just after its answer went out.
    let counted = "mcp_gateway_request_duration_seconds_count{route=\"up\"}";
    let mut after = scrape(&gateway).await;
    for _ in 0..50 {
        if sample(&after, counted) - sample(&before, counted) >= 6.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        after = scrape(&gateway).await;
    }

    let delta = |series: &str| sample(&after, series) - sample(&before, series);
    let requests = |rpc: &str| {
        format!(
            "mcp_gateway_requests_total{{method=\"POST\",route=\"up\",rpc_method=\"{rpc}\",status=\"2xx\"}}"
        )
    };
    assert_eq!(delta(&requests("tools/call")), 3.0, "{after}");
    assert_eq!(delta(&requests("tools/list")), 2.0, "{after}");
    assert_eq!(delta(&requests("other")), 1.0, "{after}");
    assert!(
        !after.contains("x-vendor"),
        "unknown methods are not labels"
    );
    assert_eq!(
        delta("mcp_gateway_request_duration_seconds_count{route=\"up\"}"),
        6.0
    );
    assert_eq!(
        delta("mcp_gateway_request_duration_seconds_bucket{route=\"up\",le=\"+Inf\"}"),
        6.0
    );
    assert_eq!(
        delta("mcp_gateway_body_bytes_total{direction=\"in\",route=\"up\"}"),
        sent_bytes as f64
    );
    assert!(delta("mcp_gateway_body_bytes_total{direction=\"out\",route=\"up\"}") > 0.0);
    let expiry = sample(&after, "mcp_gateway_token_expiry_seconds{route=\"up\"}");
    assert!(expiry > 0.0 && expiry <= 3600.0, "{expiry}");
    assert_eq!(
        sample(
            &after,
            "mcp_gateway_sign_ins_total{outcome=\"completed\",route=\"up\"}"
        ),
        1.0
    );
    assert!(
        sample(&after, "process_resident_memory_bytes") > 0.0,
        "{after}"
    );

    assert!(!after.contains(&session_id), "a session id is a label");
    for secret in upstream.oauth().issued_secrets() {
        assert!(!after.contains(&secret), "a credential in the metrics");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_lists_each_route_and_a_pending_sign_in_is_no_fault() {
    let upstream = MockUpstream::start(MockOptions::default()).await;
    let gateway = oauth_gateway(&upstream, "");
    let health = browser()
        .get(format!("{}/healthz", gateway.url()))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);
    let ready = browser()
        .get(format!("{}/readyz", gateway.url()))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 200);
    let body: Value = ready.json().await.expect("json");
    assert_eq!(body["status"], "ready");
    assert_eq!(body["routes"][0]["name"], "up");
    assert_eq!(body["routes"][0]["ready"], true);
    assert_eq!(body["routes"][0]["sign_in"], "needs_sign_in");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_admin_listener_takes_the_admin_api_and_metrics_off_the_main_one() {
    let upstream = MockUpstream::start(MockOptions::default()).await;
    let gateway = start(
        &format!(
            r#"
[server]
listen = "127.0.0.1:0"
[store]
dir = "{{dir}}/store"
[admin]
listen = "127.0.0.1:0"
[[routes]]
name = "up"
prefix = "/up"
upstream = "{}"
"#,
            upstream.base_url()
        ),
        &[],
    );
    let admin = format!(
        "http://{}",
        gateway.running.admin_addr().expect("an admin listener")
    );
    let get = |url: String| async move { browser().get(url).send().await.expect("get") };

    // The main listener no longer serves them...
    for path in ["/metrics", "/admin/api/routes"] {
        let response = get(format!("{}{path}", gateway.url())).await;
        assert_eq!(response.status(), 404, "{path} on the main listener");
        let body: Value = response.json().await.expect("json");
        assert!(
            body["message"]
                .as_str()
                .expect("message")
                .contains("admin listener")
        );
    }
    // ...the admin listener does, with health, and nothing else.
    for path in ["/metrics", "/admin/api/routes", "/healthz", "/readyz"] {
        assert_eq!(get(format!("{admin}{path}")).await.status(), 200, "{path}");
    }
    for path in ["/", "/up/mcp", "/auth/up/start"] {
        assert_eq!(get(format!("{admin}{path}")).await.status(), 404, "{path}");
    }
    assert!(
        upstream.state().requests().is_empty(),
        "nothing on the admin listener reaches the upstream"
    );
    // The page and sign-in stay on the main listener.
    let (_, html) = page(&gateway).await;
    assert!(html.contains("needs sign-in"));
    assert_eq!(sign_in(&gateway).await.0, 200);
}
