//! Per-user mode through a running gateway: behind a proxy that names each caller in
//! `X-Forwarded-Email`, every person signs in for themselves, their requests carry their own
//! upstream token, and nobody can use, see, refresh or clear anyone else's sign-in or
//! sessions.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use support::gateway::{TestGateway, start};
use support::mock_upstream::{MockOptions, MockUpstream};
use support::signin::location;

const IDENTITY: &str = "x-forwarded-email";
const ALICE: &str = "alice@example.com";
const BOB: &str = "bob@example.com";

/// A gateway whose OAuth routes are per-user: `up` passes Streamable HTTP through, `br`
/// bridges legacy clients to the upstream's Streamable HTTP endpoint.
fn per_user_gateway(upstream: &MockUpstream, server_extra: &str) -> TestGateway {
    start(
        &format!(
            r#"
[server]
listen = "127.0.0.1:0"
trusted_identity_header = "X-Forwarded-Email"
principal = "forwarded"
{server_extra}
[store]
dir = "{{dir}}/store"
[[routes]]
name = "up"
prefix = "/up"
upstream = "{upstream}"
[routes.auth]
kind = "oauth"
[[routes]]
name = "br"
prefix = "/br"
upstream = "{upstream}"
transport = "streamable"
[routes.auth]
kind = "oauth"
"#,
            upstream = upstream.base_url()
        ),
        &[],
    )
}

/// A browser of `who`, as the proxy in front delivers it: every request names them.
fn person(who: Option<&str>) -> reqwest::Client {
    support::signin::person(IDENTITY, who)
}

/// Starts `browser`'s sign-in to `route` and lets the mock approve it: the callback URL.
async fn approved_callback(browser: &reqwest::Client, base: &str, route: &str) -> url::Url {
    let mut start = browser
        .get(format!("{base}/auth/{route}/start"))
        .send()
        .await
        .expect("start");
    if start.status() == 302 && location(&start).path().starts_with("/auth/") {
        // Moved to the public URL first, where the binding cookie belongs.
        start = browser.get(location(&start)).send().await.expect("start");
    }
    assert_eq!(
        start.status(),
        302,
        "{}",
        start.text().await.unwrap_or_default()
    );
    let approved = browser
        .get(location(&start))
        .send()
        .await
        .expect("authorize");
    assert_eq!(approved.status(), 302, "the mock approves at once");
    location(&approved)
}

/// Signs `browser` in to `route`: the callback page's status.
async fn sign_in(browser: &reqwest::Client, base: &str, route: &str) -> u16 {
    let callback = approved_callback(browser, base, route).await;
    let page = browser.get(callback).send().await.expect("callback");
    page.status().as_u16()
}

async fn rpc(
    browser: &reqwest::Client,
    base: &str,
    session: Option<&str>,
    body: &Value,
) -> reqwest::Response {
    let mut request = browser
        .post(format!("{base}/up/mcp"))
        .header("accept", "application/json, text/event-stream")
        .json(body);
    if let Some(session) = session {
        request = request.header("mcp-session-id", session);
    }
    request.send().await.expect("rpc")
}

/// A request's JSON answer.
async fn rpc_json(browser: &reqwest::Client, base: &str, body: &Value) -> Value {
    rpc(browser, base, None, body)
        .await
        .json()
        .await
        .expect("a JSON answer")
}

/// The bearer token the upstream saw on its last MCP request.
fn last_upstream_token(upstream: &MockUpstream) -> String {
    upstream
        .state()
        .last_request_to("/mcp")
        .and_then(|request| request.header("authorization").map(str::to_owned))
        .expect("the upstream saw a request")
}

/// The store file holding `who`'s tokens for the upstream, named as the Python proxy
/// would, with the principal hashed in.
fn token_file(gateway: &TestGateway, upstream: &MockUpstream, who: &str) -> std::path::PathBuf {
    let digest = Sha256::digest(format!("{}\n{who}", upstream.base_url()).as_bytes());
    let hash: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    gateway
        .dir
        .path()
        .join("store")
        .join(format!("{hash}_tokens.json"))
}

async fn admin(base: &str, method: reqwest::Method, path: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .request(method, format!("{base}/admin/api/{path}"))
        .send()
        .await
        .expect("admin");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn each_person_signs_in_for_themselves_and_the_upstream_sees_their_own_token() {
    let upstream = MockUpstream::start(MockOptions::default()).await;
    let gateway = per_user_gateway(&upstream, "");
    let base = gateway.url();
    let (alice, bob) = (person(Some(ALICE)), person(Some(BOB)));
    let initialize = support::initialize_request();

    // Nobody named: no one's token to use.
    let anonymous = rpc(&person(None), &base, None, &initialize).await;
    assert_eq!(anonymous.status(), 401);
    let body: Value = anonymous.json().await.expect("json");
    let message = body["message"].as_str().expect("message");
    assert!(message.contains("x-forwarded-email"), "{message}");

    assert_eq!(sign_in(&alice, &base, "up").await, 200);
    let answer = rpc_json(&alice, &base, &initialize).await;
    assert_eq!(
        answer["result"]["serverInfo"]["name"], "mock-upstream",
        "{answer}"
    );
    let alices_token = last_upstream_token(&upstream);

    // Bob has not signed in, and Alice's sign-in does nothing for him.
    let before = upstream.state().total_requests();
    let answer = rpc_json(&bob, &base, &initialize).await;
    assert_eq!(answer["error"]["code"], -32001, "{answer}");
    assert_eq!(
        upstream.state().total_requests(),
        before,
        "nothing went upstream for Bob"
    );

    assert_eq!(sign_in(&bob, &base, "up").await, 200);
    let answer = rpc_json(&bob, &base, &initialize).await;
    assert_eq!(answer["result"]["serverInfo"]["name"], "mock-upstream");
    let bobs_token = last_upstream_token(&upstream);
    assert_ne!(alices_token, bobs_token);
    rpc(&alice, &base, None, &initialize).await;
    assert_eq!(last_upstream_token(&upstream), alices_token);

    // Each has a slot of their own in the store, and a gateway started later finds both.
    for who in [ALICE, BOB] {
        assert!(token_file(&gateway, &upstream, who).is_file(), "{who}");
    }
    drop(gateway.running);
    let again = start(
        &std::fs::read_to_string(gateway.dir.path().join("gateway.toml")).expect("config"),
        &[],
    );
    let answer = rpc_json(&bob, &again.url(), &initialize).await;
    assert_eq!(
        answer["result"]["serverInfo"]["name"], "mock-upstream",
        "{answer}"
    );
    assert_eq!(last_upstream_token(&upstream), bobs_token);
}

/// The gateway's page as `browser` sees it, as HTML.
async fn page_of(browser: &reqwest::Client, base: &str) -> String {
    let page = browser.get(format!("{base}/")).send().await.expect("page");
    page.text().await.expect("html")
}

/// The gateway's page as `browser` sees it, as JSON.
async fn routes_seen_by(browser: &reqwest::Client, base: &str) -> Value {
    let index: Value = browser
        .get(format!("{base}/"))
        .header("accept", "application/json")
        .send()
        .await
        .expect("index")
        .json()
        .await
        .expect("json");
    index["routes"][0].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn nobody_sees_refreshes_or_clears_anyone_elses_sign_in() {
    let upstream = MockUpstream::start(MockOptions::default()).await;
    let gateway = per_user_gateway(&upstream, "");
    let base = gateway.url();
    let (alice, bob) = (person(Some(ALICE)), person(Some(BOB)));
    assert_eq!(sign_in(&alice, &base, "up").await, 200);

    // Bob's page shows Bob: not signed in, whatever Alice did.
    let seen = routes_seen_by(&bob, &base).await;
    assert_eq!(seen["sign_in"]["state"], "needs_sign_in", "{seen}");
    assert_eq!(seen["per_user"]["you"], BOB);
    assert_eq!(
        routes_seen_by(&alice, &base).await["sign_in"]["state"],
        "signed_in"
    );
    assert!(
        !page_of(&bob, &base).await.contains(ALICE),
        "Bob's page names Alice"
    );

    // Bob's refresh and sign-out act on Bob's slot alone (the forms' CSRF token is the
    // gateway's, from any page that has forms).
    let html = page_of(&alice, &base).await;
    let marker = "name=\"csrf\" value=\"";
    let at = html.find(marker).expect("csrf") + marker.len();
    let csrf = &html[at..at + html[at..].find('"').expect("end")];
    let refresh = bob
        .post(format!("{base}/auth/up/refresh"))
        .form(&[("csrf", csrf)])
        .send()
        .await
        .expect("refresh");
    assert_eq!(refresh.status(), 502, "Bob has nothing to refresh");
    let clear = bob
        .post(format!("{base}/auth/up/clear"))
        .form(&[("csrf", csrf)])
        .send()
        .await
        .expect("clear");
    assert_eq!(clear.status(), 303);
    assert_eq!(upstream.oauth().refresh_requests(), 0);
    assert!(token_file(&gateway, &upstream, ALICE).is_file());
    let answer = rpc_json(&alice, &base, &support::initialize_request()).await;
    assert_eq!(answer["result"]["serverInfo"]["name"], "mock-upstream");

    // The operator names the person; without a name nothing happens.
    let (status, body) = admin(&base, reqwest::Method::POST, "routes/up/refresh").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "principal_required");
    let (status, body) = admin(&base, reqwest::Method::GET, "routes/up").await;
    assert_eq!(status, 200);
    assert_eq!(body["per_user"]["signed_in"], 1, "{body}");
    assert!(body.get("sign_in").is_none(), "{body}");
    let path = format!("routes/up/refresh?principal={ALICE}");
    let (status, body) = admin(&base, reqwest::Method::POST, &path).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sign_in"]["last_refresh"]["outcome"], "ok");
    assert_eq!(upstream.oauth().refresh_requests(), 1);
    let path = format!("routes/up/clear?principal={ALICE}");
    assert_eq!(admin(&base, reqwest::Method::POST, &path).await.0, 200);
    assert!(!token_file(&gateway, &upstream, ALICE).exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sign_in_finished_by_someone_else_is_refused_and_stores_nothing() {
    let upstream = MockUpstream::start(MockOptions::default()).await;
    let gateway = per_user_gateway(&upstream, "");
    let base = gateway.url();
    // One browser, so the binding cookie matches: only the person differs.
    let alice = person(Some(ALICE));
    let callback = approved_callback(&alice, &base, "up").await;
    let page = alice
        .get(callback)
        .header(IDENTITY, BOB)
        .send()
        .await
        .expect("callback");
    assert_eq!(page.status(), 400);
    let text = page.text().await.expect("page");
    assert!(text.contains("started by someone else"), "{text}");
    assert_eq!(
        upstream.oauth().token_requests(),
        0,
        "the code was never exchanged"
    );
    for who in [ALICE, BOB] {
        assert!(!token_file(&gateway, &upstream, who).exists(), "{who}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_belong_to_the_person_who_opened_them() {
    let upstream = MockUpstream::start(MockOptions::default()).await;
    let gateway = per_user_gateway(&upstream, "");
    let base = gateway.url();
    let (alice, bob) = (person(Some(ALICE)), person(Some(BOB)));
    for who in [&alice, &bob] {
        assert_eq!(sign_in(who, &base, "up").await, 200);
        assert_eq!(sign_in(who, &base, "br").await, 200);
    }

    // Streamable HTTP: the session id the upstream gave Alice is hers.
    let opened = rpc(&alice, &base, None, &support::initialize_request()).await;
    let session = opened.headers()["mcp-session-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    let before = upstream.state().total_requests();
    let stolen = rpc(&bob, &base, Some(&session), &list).await;
    assert_eq!(stolen.status(), 404);
    assert_eq!(
        upstream.state().total_requests(),
        before,
        "nothing went upstream"
    );
    let own = rpc(&alice, &base, Some(&session), &list).await;
    assert_eq!(own.status(), 200);
    let tools: Value = own.json().await.expect("json");
    assert!(tools["result"]["tools"].is_array(), "{tools}");

    // The bridge: Alice's legacy session takes posts from Alice only.
    let mut stream = alice
        .get(format!("{base}/br/sse"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("sse");
    assert_eq!(stream.status(), 200);
    let mut text = String::new();
    while !text.contains("\n\n") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), stream.chunk())
            .await
            .expect("the endpoint event in time")
            .expect("read")
            .expect("more");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let endpoint = text
        .lines()
        .find_map(|line| line.strip_prefix("data: "))
        .expect("endpoint")
        .trim()
        .to_owned();
    let endpoint = match endpoint.starts_with('/') {
        true => format!("{base}{endpoint}"),
        false => endpoint,
    };
    let post = |browser: &reqwest::Client| {
        browser
            .post(&endpoint)
            .json(&support::initialize_request())
            .send()
    };
    assert_eq!(post(&bob).await.expect("post").status(), 404);
    assert_eq!(post(&alice).await.expect("post").status(), 202);
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_belong_to_their_person_on_a_route_whose_plugins_read_messages_too() {
    let upstream = MockUpstream::start(MockOptions::default()).await;
    let gateway = start(
        &format!(
            r#"
[server]
listen = "127.0.0.1:0"
trusted_identity_header = "X-Forwarded-Email"
principal = "forwarded"
[store]
dir = "{{dir}}/store"
[[routes]]
name = "up"
prefix = "/up"
upstream = "{}"
[routes.auth]
kind = "oauth"
[[routes.plugins]]
kind = "tool_filter"
deny = ["admin_*"]
"#,
            upstream.base_url()
        ),
        &[],
    );
    let base = gateway.url();
    let (alice, bob) = (person(Some(ALICE)), person(Some(BOB)));
    for who in [&alice, &bob] {
        assert_eq!(sign_in(who, &base, "up").await, 200);
    }
    let opened = rpc(&alice, &base, None, &support::initialize_request()).await;
    assert_eq!(opened.status(), 200);
    let session = opened.headers()["mcp-session-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    assert_eq!(rpc(&bob, &base, Some(&session), &list).await.status(), 404);
    let own: Value = rpc(&alice, &base, Some(&session), &list)
        .await
        .json()
        .await
        .expect("json");
    let names: Vec<&str> = own["result"]["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|tool| tool["name"].as_str())
        .collect();
    assert!(
        names.contains(&"echo") && !names.contains(&"admin_echo"),
        "{names:?}"
    );
}

async fn refresher_tasks(base: &str) -> f64 {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    text.lines()
        .find_map(|line| line.strip_prefix("mcp_gateway_token_refreshers "))
        .and_then(|value| value.trim().parse().ok())
        .expect("the refresher gauge")
}

/// The access token stored for `who`.
fn stored_access_token(gateway: &TestGateway, upstream: &MockUpstream, who: &str) -> String {
    let text = std::fs::read_to_string(token_file(gateway, upstream, who)).expect("token file");
    let tokens: Value = serde_json::from_str(&text).expect("json");
    tokens["access_token"].as_str().expect("token").to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn only_people_who_use_the_gateway_get_their_tokens_refreshed_ahead_of_expiry() {
    let upstream = MockUpstream::start(MockOptions {
        access_token_ttl: Duration::from_secs(3),
        ..Default::default()
    })
    .await;
    let gateway = per_user_gateway(&upstream, "per_user_refresh_window_secs = 1");
    let base = gateway.url();
    let (alice, bob) = (person(Some(ALICE)), person(Some(BOB)));
    assert_eq!(sign_in(&alice, &base, "up").await, 200);
    assert_eq!(sign_in(&bob, &base, "up").await, 200);
    let bobs_first = stored_access_token(&gateway, &upstream, BOB);
    let alices_first = stored_access_token(&gateway, &upstream, ALICE);

    // Alice keeps working through two lifetimes of her token; Bob walked away.
    let initialize = support::initialize_request();
    for _ in 0..20 {
        let answer = rpc(&alice, &base, None, &initialize).await;
        assert_eq!(answer.status(), 200);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_ne!(
        stored_access_token(&gateway, &upstream, ALICE),
        alices_first
    );
    assert_eq!(
        stored_access_token(&gateway, &upstream, BOB),
        bobs_first,
        "an idle person's token was refreshed"
    );
    // One scheduler for the route's people, and one for the other route.
    assert_eq!(refresher_tasks(&base).await, 2.0);

    // Back after his token expired: refreshed on his first request, which succeeds.
    let answer = rpc_json(&bob, &base, &initialize).await;
    assert_eq!(
        answer["result"]["serverInfo"]["name"], "mock-upstream",
        "{answer}"
    );
    assert_ne!(stored_access_token(&gateway, &upstream, BOB), bobs_first);
    assert!(!upstream.oauth().refresh_token_reuse_detected());
}
