//! Signing in through the gateway and living with the tokens: the whole OAuth round trip over
//! HTTP against the mock authorization server, refreshes under load, rotation, and the
//! answers clients get when a route needs sign-in.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::gateway::{TestGateway, start};
use support::mock_upstream::{MockOptions, MockUpstream};
use support::signin::{
    approved_callback, browser, initialize, location, oauth_gateway, query, sign_in, start_sign_in,
    store_files,
};

#[tokio::test(flavor = "multi_thread")]
async fn sign_in_through_the_gateway_then_clients_use_the_new_token() {
    let upstream = MockUpstream::start(MockOptions::default()).await;
    let gateway = oauth_gateway(&upstream, "");

    let start = start_sign_in(&gateway.url(), "up").await;
    assert_eq!(start.status(), 302);
    let params = query(&location(&start));
    assert_eq!(params["response_type"], "code");
    assert_eq!(params["code_challenge_method"], "S256");
    assert_eq!(
        params["redirect_uri"],
        format!(
            "{}/oauth/callback",
            gateway.url().replace("127.0.0.1", "localhost")
        )
    );
    assert_eq!(params["resource"], format!("{}/mcp", upstream.base_url()));
    assert!(
        params["scope"].split(' ').any(|s| s == "offline_access"),
        "{params:?}"
    );
    assert!(params.contains_key("state") && params.contains_key("client_id"));

    let (status, page) = sign_in(&gateway).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("Signed in to up"), "{page}");

    let (status, body) = initialize(&gateway).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"]["serverInfo"]["name"], "mock-upstream");
    let issued = upstream.state().oauth().issued_access_tokens();
    let seen = upstream
        .state()
        .last_request_to("/mcp")
        .expect("upstream saw the call");
    let auth = seen.header("authorization").expect("authorization");
    assert!(
        issued.iter().any(|token| auth == format!("Bearer {token}")),
        "{auth}"
    );

    // Tokens and registration live in the Python proxy's layout, readable by no one else.
    let files = store_files(gateway.dir.path());
    assert!(
        files.iter().any(|f| f.ends_with("_tokens.json")),
        "{files:?}"
    );
    assert!(
        files.iter().any(|f| f.ends_with("_client_info.json")),
        "{files:?}"
    );
    use std::os::unix::fs::PermissionsExt;
    for file in files.iter().filter(|f| f.ends_with(".json")) {
        let mode = std::fs::metadata(gateway.dir.path().join("store").join(file))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_state_works_once_and_a_forged_one_never() {
    let upstream = MockUpstream::start(MockOptions::default()).await;
    let gateway = oauth_gateway(&upstream, "");
    let callback = approved_callback(&gateway.url()).await;

    let first = browser()
        .get(callback.clone())
        .send()
        .await
        .expect("callback");
    assert_eq!(first.status(), 200);
    let replay = browser()
        .get(callback.clone())
        .send()
        .await
        .expect("replay");
    assert_eq!(replay.status(), 400);
    assert!(replay.text().await.expect("page").contains("already used"));

    let mut forged = callback.clone();
    forged.set_query(Some("code=abc&state=not-a-state"));
    let forged = browser().get(forged).send().await.expect("forged");
    assert_eq!(forged.status(), 400);
    assert_eq!(
        upstream.state().oauth().token_requests(),
        1,
        "only the real callback reached the token endpoint"
    );
}

/// A client with no cookies: another browser than the one that started a sign-in.
fn other_browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_callback_in_another_browser_is_refused_and_stores_nothing() {
    let upstream = MockUpstream::start(MockOptions::default()).await;
    let gateway = oauth_gateway(&upstream, "");
    let callback = approved_callback(&gateway.url()).await;

    // Someone who started a sign-in sends its callback link to a victim (login CSRF).
    let elsewhere = other_browser()
        .get(callback.clone())
        .send()
        .await
        .expect("callback");
    assert_eq!(elsewhere.status(), 400);
    let page = elsewhere.text().await.expect("page");
    assert!(page.contains("started in another browser"), "{page}");
    assert_eq!(upstream.state().oauth().token_requests(), 0);
    assert_eq!(initialize(&gateway).await.1["error"]["code"], -32001);

    // The link is spent: not even the browser that started it can finish with it.
    let late = browser().get(callback).send().await.expect("callback");
    assert_eq!(late.status(), 400);
    assert!(late.text().await.expect("page").contains("already used"));
    assert_eq!(upstream.state().oauth().token_requests(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_start_page_moves_the_browser_to_the_public_url_and_sets_the_binding_cookie() {
    let upstream = MockUpstream::start(MockOptions::default()).await;
    let gateway = oauth_gateway(&upstream, "");
    let port = gateway.running.local_addr().port();

    // Under 127.0.0.1 the cookie would not reach the callback at localhost.
    let moved = other_browser()
        .get(format!("{}/auth/up/start", gateway.url()))
        .send()
        .await
        .expect("start");
    assert_eq!(moved.status(), 302);
    assert_eq!(
        location(&moved).as_str(),
        format!("http://localhost:{port}/auth/up/start?canonical=1")
    );
    assert!(moved.headers().get("set-cookie").is_none());

    let started = start_sign_in(&gateway.url(), "up").await;
    assert_eq!(location(&started).path(), "/authorize");
    let cookie = started.headers()["set-cookie"].to_str().expect("ascii");
    assert!(cookie.starts_with("mcp_gateway_sign_in_"), "{cookie}");
    for attribute in [
        "Path=/oauth/callback",
        "Max-Age=600",
        "HttpOnly",
        "SameSite=Lax",
    ] {
        assert!(cookie.contains(attribute), "{attribute} in {cookie}");
    }
    assert!(!cookie.contains("Secure"), "an http gateway: {cookie}");

    // A proxy in front that rewrites Host gets one move, never a loop.
    let marked = other_browser()
        .get(format!("{}/auth/up/start?canonical=1", gateway.url()))
        .send()
        .await
        .expect("start");
    assert_eq!(location(&marked).path(), "/authorize");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_callback_with_a_token_or_a_repeated_parameter_is_refused() {
    let upstream = MockUpstream::start(MockOptions::default()).await;
    let gateway = oauth_gateway(&upstream, "");
    let callback = approved_callback(&gateway.url()).await;
    let real = callback.query().expect("query").to_owned();

    let in_url = "in its URL, but the gateway asks only for an authorization code";
    let repeats = "repeats the parameter";
    for (extra, names, says) in [
        ("access_token=at-injected", "access_token", in_url),
        ("id_token=x", "id_token", in_url),
        ("code=second-code", "code", repeats),
        ("state=second-state", "state", repeats),
        ("iss=a&iss=b", "iss", repeats),
    ] {
        let mut tampered = callback.clone();
        tampered.set_query(Some(&format!("{real}&{extra}")));
        let refused = browser().get(tampered).send().await.expect("callback");
        assert_eq!(refused.status(), 400, "{extra}");
        let page = refused.text().await.expect("page");
        let named = format!("&#39;{names}&#39;");
        assert!(
            page.contains(says) && page.contains(&named),
            "{extra}: {page}"
        );
    }
    assert_eq!(upstream.state().oauth().token_requests(), 0);

    // Parameters the gateway does not read are ignored, as RFC 6749 requires.
    let mut extended = callback.clone();
    extended.set_query(Some(&format!("{real}&session_state=abc&scope=mcp")));
    let page = browser().get(extended).send().await.expect("callback");
    assert_eq!(page.status(), 200);
    assert_eq!(upstream.state().oauth().token_requests(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sign_in_finished_too_late_is_refused_and_stores_nothing() {
    let upstream = MockUpstream::start(MockOptions::default()).await;
    let gateway = start(
        &format!(
            r#"
[server]
listen = "127.0.0.1:0"
sign_in_timeout_secs = 1
[store]
dir = "{{dir}}/store"
[[routes]]
name = "up"
prefix = "/up"
upstream = "{}"
"#,
            upstream.base_url()
        ),
        &[],
    );
    let start = start_sign_in(&gateway.url(), "up").await;
    let approved = browser()
        .get(location(&start))
        .send()
        .await
        .expect("authorize");
    tokio::time::sleep(Duration::from_millis(1200)).await;

    let late = browser()
        .get(location(&approved))
        .send()
        .await
        .expect("callback");
    assert_eq!(late.status(), 400);
    let page = late.text().await.expect("page");
    assert!(
        page.contains("expired (it must finish within 1 s"),
        "{page}"
    );
    assert_eq!(upstream.state().oauth().token_requests(), 0);
    let files = store_files(gateway.dir.path());
    assert!(
        !files.iter().any(|f| f.ends_with("_tokens.json")),
        "{files:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_authorization_shows_why_and_stores_nothing() {
    let upstream = MockUpstream::start(MockOptions {
        deny_authorization: true,
        ..Default::default()
    })
    .await;
    let gateway = oauth_gateway(&upstream, "");
    let (status, page) = sign_in(&gateway).await;
    assert_eq!(status, 400);
    assert!(page.contains("access_denied"), "{page}");
    assert!(!page.contains("code="), "{page}");
    let files = store_files(gateway.dir.path());
    assert!(
        !files.iter().any(|f| f.ends_with("_tokens.json")),
        "{files:?}"
    );
    let (status, _) = initialize(&gateway).await;
    assert_eq!(status, 200, "a JSON-RPC request gets a JSON-RPC answer");
}

#[tokio::test(flavor = "multi_thread")]
async fn before_sign_in_clients_are_told_where_to_sign_in() {
    let upstream = MockUpstream::start(MockOptions::default()).await;
    let gateway = oauth_gateway(&upstream, "");
    let sign_in_url = format!(
        "{}/auth/up/start",
        gateway.url().replace("127.0.0.1", "localhost")
    );

    let call: Value = browser()
        .post(format!("{}/up/mcp", gateway.url()))
        .json(&json!({"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"echo","arguments":{"text":"x"}}}))
        .send()
        .await
        .expect("call")
        .json()
        .await
        .expect("json");
    assert_eq!(call["id"], 5);
    assert_eq!(call["result"]["isError"], true);
    let text = call["result"]["content"][0]["text"].as_str().expect("text");
    assert!(text.contains(&sign_in_url), "{text}");

    let (status, list) = initialize(&gateway).await;
    assert_eq!(status, 200);
    assert_eq!(list["error"]["code"], -32001);
    assert!(
        list["error"]["message"]
            .as_str()
            .expect("message")
            .contains(&sign_in_url)
    );

    let stream = browser()
        .get(format!("{}/up/sse", gateway.url()))
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("sse");
    assert_eq!(stream.status(), 401);
    assert!(stream.headers().get("www-authenticate").is_none());
    let body: Value = stream.json().await.expect("json");
    assert_eq!(body["error"], "needs_sign_in");
    assert_eq!(body["sign_in_url"], sign_in_url);
    assert_eq!(
        upstream.state().total_requests(),
        0,
        "nothing reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_requests_at_expiry_cause_one_refresh() {
    let upstream = MockUpstream::start(MockOptions {
        access_token_ttl: Duration::from_secs(2),
        ..Default::default()
    })
    .await;
    let gateway = oauth_gateway(&upstream, "");
    assert_eq!(sign_in(&gateway).await.0, 200);
    let signed_in = Instant::now();
    // The refresher starts its refresh at 80% of the 2 s lifetime and the slow token
    // endpoint keeps it in flight past expiry; the tokens it brings live an hour.
    let oauth = upstream.oauth();
    oauth.set_token_delay(Some(Duration::from_millis(1200)));
    oauth.set_access_token_ttl(Duration::from_secs(3600));

    // Just past expiry, with the refresher's own refresh still in flight at the mock.
    tokio::time::sleep(Duration::from_millis(2100).saturating_sub(signed_in.elapsed())).await;
    let url = format!("{}/up/anything", gateway.url());
    let client = reqwest::Client::new();
    let requests = (0..1000).map(|_| {
        let client = client.clone();
        let url = url.clone();
        tokio::spawn(async move { client.get(url).send().await.map(|r| r.status().as_u16()) })
    });
    let statuses = futures::future::join_all(requests).await;
    let failed: Vec<_> = statuses
        .iter()
        .filter(|s| !matches!(s, Ok(Ok(200))))
        .collect();
    assert!(
        failed.is_empty(),
        "{} failed, e.g. {:?}",
        failed.len(),
        failed.first()
    );
    assert_eq!(
        oauth.refresh_requests(),
        1,
        "one token request for all of them"
    );
    assert!(!oauth.refresh_token_reuse_detected());
}

#[tokio::test(flavor = "multi_thread")]
async fn rotation_never_reuses_a_refresh_token_even_across_two_gateways() {
    let upstream = MockUpstream::start(MockOptions {
        access_token_ttl: Duration::from_secs(1),
        ..Default::default()
    })
    .await;
    let first = oauth_gateway(&upstream, "");
    assert_eq!(sign_in(&first).await.0, 200);
    let second = second_replica(&first, &upstream);
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(6);
    while Instant::now() < deadline {
        for gateway in [&first, &second] {
            let status = client
                .get(format!("{}/up/anything", gateway.url()))
                .send()
                .await
                .expect("request")
                .status();
            let oauth = upstream.oauth();
            assert_eq!(
                status,
                200,
                "{}: reuse {}, refreshes {}",
                gateway.url(),
                oauth.refresh_token_reuse_detected(),
                oauth.refresh_requests()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let oauth = upstream.oauth();
    assert!(
        oauth.refresh_requests() >= 4,
        "refreshed {} times",
        oauth.refresh_requests()
    );
    assert!(!oauth.refresh_token_reuse_detected());
}

/// A second gateway on `first`'s store directory, as a second replica would be: behind the
/// same public URL, so with the same redirect URI.
fn second_replica(first: &TestGateway, upstream: &MockUpstream) -> TestGateway {
    let store = first.dir.path().join("store");
    let public_url = first.url().replace("127.0.0.1", "localhost");
    start(
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\npublic_url = \"{public_url}\"\n[store]\ndir = \"{}\"\n[[routes]]\nname = \"up\"\nprefix = \"/up\"\nupstream = \"{}\"\n",
            store.display(),
            upstream.base_url()
        ),
        &[],
    )
}

async fn status_at(gateway: &TestGateway) -> u16 {
    reqwest::get(format!("{}/up/anything", gateway.url()))
        .await
        .expect("request")
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sign_in_or_sign_out_on_one_replica_reaches_the_others() {
    let upstream = MockUpstream::start(MockOptions::default()).await;
    let first = oauth_gateway(&upstream, "");
    let second = second_replica(&first, &upstream);
    // The second replica has seen that nobody signed in.
    assert_eq!(status_at(&second).await, 401);

    assert_eq!(sign_in(&first).await.0, 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut status = status_at(&second).await;
    while status != 200 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        status = status_at(&second).await;
    }
    assert_eq!(status, 200, "the second replica never saw the sign-in");
    assert_eq!(
        upstream.oauth().refresh_requests(),
        0,
        "it took the stored tokens"
    );

    // Signed out on the first: the second finds out at its next refresh, and spends no
    // refresh token on a slot that was emptied.
    let cleared = reqwest::Client::new()
        .post(format!("{}/admin/api/routes/up/clear", first.url()))
        .send()
        .await
        .expect("clear");
    assert_eq!(cleared.status(), 200);
    let refreshed = reqwest::Client::new()
        .post(format!("{}/admin/api/routes/up/refresh", second.url()))
        .send()
        .await
        .expect("refresh");
    assert_eq!(refreshed.status(), 409);
    assert_eq!(upstream.oauth().refresh_requests(), 0);
    assert_eq!(status_at(&second).await, 401);
    assert!(
        !store_files(first.dir.path())
            .iter()
            .any(|f| f.ends_with("_tokens.json"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_refresh_token_means_sign_in_again() {
    let upstream = MockUpstream::start(MockOptions {
        access_token_ttl: Duration::from_secs(1),
        ..Default::default()
    })
    .await;
    let gateway = oauth_gateway(&upstream, "");
    assert_eq!(sign_in(&gateway).await.0, 200);
    upstream.state().oauth().revoke_refresh_tokens();
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let call: Value = browser()
        .post(format!("{}/up/mcp", gateway.url()))
        .json(&json!({"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"echo","arguments":{"text":"x"}}}))
        .send()
        .await
        .expect("call")
        .json()
        .await
        .expect("json");
    assert_eq!(call["result"]["isError"], true, "{call}");
    let text = call["result"]["content"][0]["text"].as_str().expect("text");
    assert!(
        text.contains("invalid_grant") && text.contains("/auth/up/start"),
        "{text}"
    );

    // Signing in again brings the route back.
    assert_eq!(sign_in(&gateway).await.0, 200);
    assert_eq!(initialize(&gateway).await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forgotten_client_is_registered_again() {
    let upstream = MockUpstream::start(MockOptions {
        access_token_ttl: Duration::from_secs(1),
        ..Default::default()
    })
    .await;
    let gateway = oauth_gateway(&upstream, "");
    assert_eq!(sign_in(&gateway).await.0, 200);
    upstream.state().oauth().revoke_all_clients();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(sign_in(&gateway).await.0, 200);
    assert_eq!(upstream.state().oauth().registered_clients().len(), 2);
    assert_eq!(initialize(&gateway).await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn preregistered_confidential_clients_authenticate_both_ways() {
    for method in ["client_secret_basic", "client_secret_post"] {
        let upstream = MockUpstream::start(MockOptions {
            preregistered: vec![support::mock_upstream::PreregisteredClient {
                client_id: "gw-client".into(),
                client_secret: Some("gw-secret".into()),
                auth_method: method.into(),
            }],
            ..Default::default()
        })
        .await;
        let gateway = start(
            &format!(
                r#"
[server]
listen = "127.0.0.1:0"
[store]
dir = "{{dir}}/store"
[[routes]]
name = "up"
prefix = "/up"
upstream = "{}"
[routes.auth]
client_id = "gw-client"
client_secret_file = "{{dir}}/secret"
token_endpoint_auth_method = "{method}"
"#,
                upstream.base_url()
            ),
            &[("secret", "gw-secret\n")],
        );
        let (status, page) = sign_in(&gateway).await;
        assert_eq!(status, 200, "{method}: {page}");
        assert!(
            upstream.state().oauth().registered_clients().is_empty(),
            "{method}: no dynamic registration"
        );
        assert_eq!(initialize(&gateway).await.0, 200, "{method}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn servers_without_metadata_use_the_2025_03_26_defaults() {
    use support::mock_upstream::{AsMetadataMode, PrmMode};
    let upstream = MockUpstream::start(MockOptions {
        prm: PrmMode::None,
        as_metadata: AsMetadataMode::None,
        ..Default::default()
    })
    .await;
    let gateway = oauth_gateway(&upstream, "allow_plain_pkce = false");
    let (status, page) = sign_in(&gateway).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(initialize(&gateway).await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_issuer_mismatch_is_refused_unless_the_route_allows_it() {
    let options = || MockOptions {
        issuer_override: Some("https://issuer.example".into()),
        ..Default::default()
    };
    let upstream = MockUpstream::start(options()).await;
    let strict = oauth_gateway(&upstream, "");
    let refused = start_sign_in(&strict.url(), "up").await;
    assert_eq!(refused.status(), 502);
    assert!(
        refused
            .text()
            .await
            .expect("page")
            .contains("allow_issuer_mismatch")
    );

    let lenient = oauth_gateway(&upstream, "allow_issuer_mismatch = true");
    assert_eq!(sign_in(&lenient).await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn routes_that_reject_resource_can_turn_it_off() {
    let upstream = MockUpstream::start(MockOptions {
        reject_resource: true,
        ..Default::default()
    })
    .await;
    let gateway = oauth_gateway(&upstream, "send_resource = false");
    let start = start_sign_in(&gateway.url(), "up").await;
    assert!(!query(&location(&start)).contains_key("resource"));
    assert_eq!(sign_in(&gateway).await.0, 200);
}

/// POSTs a `tools/call` of `echo` in session `session`; returns the status and JSON answer.
async fn echo_call(gateway: &TestGateway, session: &str, text: &str) -> (u16, Value) {
    let response = browser()
        .post(format!("{}/up/mcp", gateway.url()))
        .header("accept", "application/json")
        .header("mcp-session-id", session)
        .json(&json!({"jsonrpc":"2.0","id":3,"method":"tools/call",
            "params":{"name":"echo","arguments":{"text": text}}}))
        .send()
        .await
        .expect("call");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn session_id(gateway: &TestGateway) -> String {
    let response = browser()
        .post(format!("{}/up/mcp", gateway.url()))
        .header("accept", "application/json")
        .json(&support::initialize_request())
        .send()
        .await
        .expect("initialize");
    response.headers()["mcp-session-id"]
        .to_str()
        .expect("ascii")
        .to_owned()
}

/// POSTs the same `tools/call` as [`echo_call`], its body sent in 16 KiB chunks
/// (`Transfer-Encoding: chunked`, no length known up front).
async fn chunked_echo_call(gateway: &TestGateway, session: &str, text: &str) -> (u16, Value) {
    let body = serde_json::to_vec(&json!({"jsonrpc":"2.0","id":3,"method":"tools/call",
        "params":{"name":"echo","arguments":{"text": text}}}))
    .expect("json");
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        body.chunks(16 * 1024).map(|c| Ok(c.to_vec())).collect();
    let response = browser()
        .post(format!("{}/up/mcp", gateway.url()))
        .header("accept", "application/json")
        .header("content-type", "application/json")
        .header("mcp-session-id", session)
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .expect("call");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_token_is_refreshed_and_the_request_retried_with_its_body() {
    let upstream = MockUpstream::start(MockOptions::default()).await;
    let gateway = oauth_gateway(&upstream, "");
    assert_eq!(sign_in(&gateway).await.0, 200);
    let session = session_id(&gateway).await;
    let oauth = upstream.oauth();

    // Small and large bodies, with a length and chunked, all arrive whole on the resend.
    let small = "x".repeat(20_000);
    let large = "z".repeat(600_000);
    oauth.expire_access_tokens();
    let (status, answer) = echo_call(&gateway, &session, &small).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["result"]["content"][0]["text"], small.as_str());
    assert_eq!(oauth.refresh_requests(), 1);
    oauth.expire_access_tokens();
    let (status, answer) = echo_call(&gateway, &session, &large).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["result"]["content"][0]["text"], large.as_str());
    assert_eq!(oauth.refresh_requests(), 2);
    oauth.expire_access_tokens();
    let (status, answer) = chunked_echo_call(&gateway, &session, &large).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["result"]["content"][0]["text"], large.as_str());
    assert_eq!(oauth.refresh_requests(), 3);

    // The listening stream takes the same path.
    oauth.expire_access_tokens();
    let stream = browser()
        .get(format!("{}/up/mcp", gateway.url()))
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &session)
        .send()
        .await
        .expect("get");
    assert_eq!(stream.status(), 200);
    assert_eq!(oauth.refresh_requests(), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_token_that_cannot_be_refreshed_asks_for_sign_in() {
    let upstream = MockUpstream::start(MockOptions::default()).await;
    let gateway = oauth_gateway(&upstream, "");
    assert_eq!(sign_in(&gateway).await.0, 200);
    let session = session_id(&gateway).await;
    let oauth = upstream.oauth();
    oauth.expire_access_tokens();
    oauth.revoke_refresh_tokens();

    let (status, answer) = echo_call(&gateway, &session, "hello").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["id"], 3);
    assert_eq!(answer["result"]["isError"], true, "{answer}");
    let text = answer["result"]["content"][0]["text"]
        .as_str()
        .expect("text");
    assert!(text.contains("/auth/up/start"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_token_on_a_body_too_large_to_resend_is_refreshed_for_the_next_try() {
    let upstream = MockUpstream::start(MockOptions::default()).await;
    let gateway = oauth_gateway(&upstream, "");
    assert_eq!(sign_in(&gateway).await.0, 200);
    let session = session_id(&gateway).await;
    let oauth = upstream.oauth();
    oauth.expire_access_tokens();

    // Over the 1 MiB the gateway keeps for a resend.
    let text = "y".repeat(1_100_000);
    let (status, answer) = echo_call(&gateway, &session, &text).await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["error"], "token_refreshed");
    assert_eq!(oauth.refresh_requests(), 1);
    let (status, answer) = echo_call(&gateway, &session, &text).await;
    assert_eq!(status, 200);
    assert_eq!(answer["result"]["content"][0]["text"], text.as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn insufficient_scope_is_explained_and_the_next_sign_in_asks_for_it() {
    let upstream = MockUpstream::start(MockOptions::default()).await;
    let gateway = oauth_gateway(&upstream, "");
    assert_eq!(sign_in(&gateway).await.0, 200);
    let session = session_id(&gateway).await;
    let admin_call = |session: String| {
        let url = format!("{}/up/mcp", gateway.url());
        async move {
            browser()
                .post(url)
                .header("accept", "application/json")
                .header("mcp-session-id", session)
                .json(&json!({"jsonrpc":"2.0","id":4,"method":"tools/call",
                    "params":{"name":"admin_echo","arguments":{"text":"hi"}}}))
                .send()
                .await
                .expect("call")
                .json::<Value>()
                .await
                .expect("json")
        }
    };
    let answer = admin_call(session.clone()).await;
    assert_eq!(answer["result"]["isError"], true, "{answer}");
    let text = answer["result"]["content"][0]["text"]
        .as_str()
        .expect("text");
    assert!(
        text.contains("mcp:admin") && text.contains("/auth/up/start"),
        "{text}"
    );
    // Other calls keep working with the tokens the route has.
    assert_eq!(echo_call(&gateway, &session, "still fine").await.0, 200);

    let start = start_sign_in(&gateway.url(), "up").await;
    let scope = query(&location(&start))["scope"].clone();
    assert!(scope.split(' ').any(|s| s == "mcp:admin"), "{scope}");
    assert!(scope.split(' ').any(|s| s == "mcp:read"), "{scope}");
    assert_eq!(sign_in(&gateway).await.0, 200);
    let session = session_id(&gateway).await;
    let answer = admin_call(session).await;
    assert_eq!(
        answer["result"]["content"][0]["text"], "admin: hi",
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_metadata_document_replaces_registration_where_supported() {
    let upstream = MockUpstream::start(MockOptions {
        client_metadata_documents: true,
        ..Default::default()
    })
    .await;
    // The document is served by the gateway itself, at a path under its public URL.
    let gateway = start(
        &format!(
            r#"
[server]
listen = "127.0.0.1:0"
[store]
dir = "{{dir}}/store"
[[routes]]
name = "up"
prefix = "/up"
upstream = "{}"
[routes.auth]
client_metadata_url = "/oauth/client-metadata.json"
"#,
            upstream.base_url()
        ),
        &[],
    );
    let public_url = gateway.url().replace("127.0.0.1", "localhost");
    let document_url = format!("{public_url}/oauth/client-metadata.json");
    let document: Value = reqwest::get(&document_url)
        .await
        .expect("document")
        .json()
        .await
        .expect("json");
    assert_eq!(document["client_id"], document_url);
    assert_eq!(
        document["redirect_uris"][0],
        format!("{public_url}/oauth/callback")
    );

    let (status, page) = sign_in(&gateway).await;
    assert_eq!(status, 200, "{page}");
    let oauth = upstream.oauth();
    assert_eq!(
        oauth.fetched_metadata_documents(),
        vec![document_url.clone()]
    );
    assert!(
        oauth.registered_clients().is_empty(),
        "no dynamic registration"
    );
    assert_eq!(initialize(&gateway).await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_callback_naming_another_authorization_server_is_refused() {
    // A mix-up: the callback says another authorization server issued the code.
    let upstream = MockUpstream::start(MockOptions {
        iss_in_responses: true,
        iss_override: Some("https://other-as.example".into()),
        ..Default::default()
    })
    .await;
    let gateway = oauth_gateway(&upstream, "");
    let (status, page) = sign_in(&gateway).await;
    assert_eq!(status, 400, "{page}");
    assert!(page.contains("mix-up"), "{page}");
    assert_eq!(upstream.oauth().token_requests(), 0);
    let files = store_files(gateway.dir.path());
    assert!(
        !files.iter().any(|f| f.ends_with("_tokens.json")),
        "{files:?}"
    );

    // A server that promises iss and leaves it out is refused too.
    let upstream = MockUpstream::start(MockOptions {
        iss_promised_not_sent: true,
        ..Default::default()
    })
    .await;
    let gateway = oauth_gateway(&upstream, "");
    let (status, page) = sign_in(&gateway).await;
    assert_eq!(status, 400, "{page}");
    assert!(
        page.contains("does not name its authorization server"),
        "{page}"
    );
    assert_eq!(upstream.oauth().token_requests(), 0);

    // The issuer the sign-in went to passes.
    let upstream = MockUpstream::start(MockOptions {
        iss_in_responses: true,
        ..Default::default()
    })
    .await;
    let gateway = oauth_gateway(&upstream, "");
    let (status, page) = sign_in(&gateway).await;
    assert_eq!(status, 200, "{page}");
}
