//! The data plane through its real interface: HTTP against an in-process gateway on
//! loopback, in front of the in-process mock MCP upstream.

mod support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use support::gateway::{TestGateway, single_route, start};
use support::mock_upstream::{EndpointStyle, MockOptions, MockUpstream};

const TOKEN: &str = "upstream-token-1";

async fn mock(options: MockOptions) -> MockUpstream {
    MockUpstream::start(MockOptions {
        token: TOKEN.into(),
        ..options
    })
    .await
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

/// Reads an SSE body until `done` says so, returning each event's text as it arrived.
async fn read_events(
    response: reqwest::Response,
    mut done: impl FnMut(&[String]) -> bool,
) -> Vec<(Instant, String)> {
    let mut stream = response.bytes_stream();
    let mut buffer = String::new();
    let mut events: Vec<(Instant, String)> = Vec::new();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("stream stalled")
    {
        buffer.push_str(&String::from_utf8_lossy(&chunk.expect("chunk")));
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            events.push((Instant::now(), event.trim_end().to_owned()));
        }
        let texts: Vec<String> = events.iter().map(|(_, e)| e.clone()).collect();
        if done(&texts) {
            break;
        }
    }
    events
}

/// The JSON of the first `data:` line of an SSE event.
fn event_data(event: &str) -> Option<Value> {
    let data = event.lines().find_map(|line| line.strip_prefix("data:"))?;
    serde_json::from_str(data.trim()).ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn paths_and_queries_are_joined_onto_the_upstream_base() {
    let upstream = mock(MockOptions {
        base_path: "/v1".into(),
        ..Default::default()
    })
    .await;
    let gateway = single_route("/jira", upstream.base_url(), TOKEN, "");
    let echo: Value = client()
        .get(format!(
            "{}/jira/some/path?a=1&b=two%20words",
            gateway.url()
        ))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(echo["path"], "/v1/some/path");
    assert_eq!(echo["query"], "a=1&b=two%20words");

    // The bare prefix reaches the base URL itself, and a lookalike prefix is not the route.
    let echo: Value = client()
        .get(format!("{}/jira", gateway.url()))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(echo["path"], "/v1");
    let status = client()
        .get(format!("{}/jiraffe", gateway.url()))
        .send()
        .await
        .expect("request")
        .status();
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn longest_prefix_wins_and_unknown_paths_name_the_prefixes() {
    let outer = mock(MockOptions {
        base_path: "/outer".into(),
        ..Default::default()
    })
    .await;
    let inner = mock(MockOptions {
        base_path: "/inner".into(),
        ..Default::default()
    })
    .await;
    let gateway = start(
        &format!(
            r#"
[server]
listen = "127.0.0.1:0"
[[routes]]
name = "outer"
prefix = "/a"
upstream = "{}"
auth = {{ kind = "bearer", token_file = "{{dir}}/t" }}
[[routes]]
name = "inner"
prefix = "/a/b"
upstream = "{}"
auth = {{ kind = "bearer", token_file = "{{dir}}/t" }}
"#,
            outer.base_url(),
            inner.base_url()
        ),
        &[("t", TOKEN)],
    );
    let get = |path: &str| {
        let url = format!("{}{path}", gateway.url());
        async move { client().get(url).send().await.expect("request") }
    };
    let echo: Value = get("/a/b/tools").await.json().await.expect("json");
    assert_eq!(echo["path"], "/inner/tools");
    let echo: Value = get("/a/bc").await.json().await.expect("json");
    assert_eq!(echo["path"], "/outer/bc");

    let missing = get("/nowhere").await;
    assert_eq!(missing.status(), 404);
    let body: Value = missing.json().await.expect("json");
    assert_eq!(body["error"], "not_found");
    assert_eq!(body["routes"], json!(["/a/b", "/a"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn client_credentials_never_reach_the_upstream_and_the_route_token_does() {
    let upstream = mock(MockOptions::default()).await;
    // An allow-listed browser client's Origin passes the gateway but not to the upstream.
    let gateway = single_route(
        "/up",
        upstream.base_url(),
        TOKEN,
        "allowed_origins = [\"https://app.example\"]\ntrusted_identity_header = \"X-Who\"",
    );
    let echo: Value = client()
        .post(format!("{}/up/anything", gateway.url()))
        .header("authorization", "Bearer client-secret")
        .header("x-who", "alice@example.com")
        .header("x-forwarded-email", "alice@example.com")
        .header("x-forwarded-access-token", "platform-user-token")
        .header("x-auth-request-user", "alice")
        .header("cookie", "session=client-cookie")
        .header("origin", "https://app.example")
        .header("connection", "x-hop-header")
        .header("x-hop-header", "hop")
        .header("proxy-authorization", "Basic abc")
        .header("mcp-session-id", "session-123")
        .header("mcp-protocol-version", "2025-11-25")
        .header("mcp-method", "tools/call")
        .header("mcp-name", "echo")
        .header("last-event-id", "42")
        .body("{}")
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    let headers = &echo["headers"];
    assert_eq!(headers["authorization"], format!("Bearer {TOKEN}"));
    for gone in [
        "cookie",
        "origin",
        "x-hop-header",
        "proxy-authorization",
        "x-who",
        "x-forwarded-email",
        "x-forwarded-access-token",
        "x-auth-request-user",
    ] {
        assert!(
            headers.get(gone).is_none(),
            "{gone} reached the upstream: {headers}"
        );
    }
    for (name, value) in [
        ("mcp-session-id", "session-123"),
        ("mcp-protocol-version", "2025-11-25"),
        ("mcp-method", "tools/call"),
        ("mcp-name", "echo"),
        ("last-event-id", "42"),
    ] {
        assert_eq!(headers[name], value, "{name}");
    }
    assert_eq!(headers["host"], upstream.addr().to_string());
    assert_eq!(echo["body_len"], 2);

    // A client that asks for a stream gets it uncompressed, whatever it said it accepts.
    let echo: Value = client()
        .get(format!("{}/up/anything", gateway.url()))
        .header("accept", "text/event-stream")
        .header("accept-encoding", "gzip, br")
        .header("authorization", "Bearer client-secret")
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(echo["headers"]["accept-encoding"], "identity");
    assert_eq!(echo["headers"]["authorization"], format!("Bearer {TOKEN}"));
}

/// A minimal Streamable HTTP client: POSTs JSON-RPC and reads a JSON or SSE answer.
struct McpClient {
    http: reqwest::Client,
    url: String,
    session: Option<String>,
}

impl McpClient {
    async fn post(&mut self, message: Value) -> (reqwest::StatusCode, Option<Value>) {
        let mut request = self
            .http
            .post(&self.url)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-11-25")
            .json(&message);
        if let Some(session) = &self.session {
            request = request.header("mcp-session-id", session);
        }
        let response = request.send().await.expect("post");
        if let Some(session) = response.headers().get("mcp-session-id") {
            self.session = Some(session.to_str().expect("ascii").to_owned());
        }
        let status = response.status();
        let is_sse = response
            .headers()
            .get("content-type")
            .is_some_and(|v| v.to_str().unwrap_or("").starts_with("text/event-stream"));
        let body = if is_sse {
            let events = read_events(response, |_| false).await;
            events
                .iter()
                .filter_map(|(_, e)| event_data(e))
                .find(|m| m.get("id").is_some())
        } else {
            response.json().await.ok()
        };
        (status, body)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_streamable_http_session_runs_end_to_end() {
    let upstream = mock(MockOptions::default()).await;
    let gateway = single_route("/up", upstream.base_url(), TOKEN, "");
    let mut mcp = McpClient {
        http: client(),
        url: format!("{}/up/mcp", gateway.url()),
        session: None,
    };

    let (status, init) = mcp.post(support::initialize_request()).await;
    assert_eq!(status, 200);
    assert_eq!(
        init.expect("init")["result"]["serverInfo"]["name"],
        "mock-upstream"
    );
    assert!(
        mcp.session.is_some(),
        "the session id header came back through the gateway"
    );

    let (status, _) = mcp
        .post(json!({"jsonrpc":"2.0","method":"notifications/initialized"}))
        .await;
    assert_eq!(status, 202);

    // The upstream's refusals pass unchanged: no session id is 400, a GET without an event
    // stream in Accept is 405.
    let mut anonymous = McpClient {
        http: client(),
        url: mcp.url.clone(),
        session: None,
    };
    let (status, _) = anonymous
        .post(json!({"jsonrpc":"2.0","id":9,"method":"tools/list"}))
        .await;
    assert_eq!(status, 400);
    let get = client()
        .get(&mcp.url)
        .header("accept", "application/json")
        .send()
        .await
        .expect("get");
    assert_eq!(get.status(), 405);

    let (_, list) = mcp
        .post(json!({"jsonrpc":"2.0","id":2,"method":"tools/list"}))
        .await;
    let names: Vec<String> = list.expect("list")["result"]["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .map(|t| t["name"].as_str().expect("name").to_owned())
        .collect();
    assert!(names.contains(&"echo".to_owned()), "{names:?}");
    let (_, call) = mcp
        .post(json!({"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi there"}}}))
        .await;
    assert_eq!(
        call.expect("call")["result"]["content"][0]["text"],
        "hi there"
    );

    let session = mcp.session.clone().expect("session");
    let delete = client()
        .delete(&mcp.url)
        .header("mcp-session-id", &session)
        .send()
        .await
        .expect("delete");
    assert!(delete.status().is_success());
    let (status, _) = mcp
        .post(json!({"jsonrpc":"2.0","id":4,"method":"tools/list"}))
        .await;
    assert_eq!(
        status, 404,
        "a deleted session's 404 passes through unchanged"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn post_sse_responses_stream_event_by_event() {
    let upstream = mock(MockOptions::default()).await;
    let gateway = single_route("/up", upstream.base_url(), TOKEN, "");
    let mut mcp = McpClient {
        http: client(),
        url: format!("{}/up/mcp", gateway.url()),
        session: None,
    };
    mcp.post(support::initialize_request()).await;

    let response = client()
        .post(&mcp.url)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-session-id", mcp.session.clone().expect("session"))
        .json(&json!({"jsonrpc":"2.0","id":7,"method":"tools/call","params":{
            "name":"slow_stream","arguments":{"steps":4,"interval_ms":300},"_meta":{"progressToken":"p"}}}))
        .send()
        .await
        .expect("post");
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert_eq!(
        response.headers()["cache-control"],
        "no-cache, no-transform"
    );
    let events = read_events(response, |events| {
        events.iter().any(|e| e.contains("\"id\":7"))
    })
    .await;
    let progress: Vec<&Instant> = events
        .iter()
        .filter(|(_, e)| e.contains("notifications/progress"))
        .map(|(at, _)| at)
        .collect();
    assert_eq!(progress.len(), 4, "{events:?}");
    // Each progress event reached the client about when the upstream sent it, not at the end.
    for pair in progress.windows(2) {
        let gap = pair[1].duration_since(*pair[0]);
        assert!(
            gap >= Duration::from_millis(150),
            "events arrived together: {gap:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn event_stream_gets_arrive_one_by_one() {
    let upstream = mock(MockOptions::default()).await;
    let gateway = single_route("/up", upstream.base_url(), TOKEN, "");
    let response = client()
        .get(format!("{}/up/events?n=4&interval_ms=300", gateway.url()))
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-accel-buffering"], "no");
    let events = read_events(response, |_| false).await;
    assert_eq!(events.len(), 4, "{events:?}");
    assert_eq!(events[0].1, "id: 1\nevent: tick\ndata: {\"i\":1}");
    for pair in events.windows(2) {
        let gap = pair[1].0.duration_since(pair[0].0);
        assert!(
            gap >= Duration::from_millis(150),
            "events arrived together: {gap:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_cut_midway_resumes_after_the_last_event_seen() {
    let upstream = mock(MockOptions::default()).await;
    let gateway = single_route("/up", upstream.base_url(), TOKEN, "");
    let url = format!("{}/up/events?n=6&interval_ms=50", gateway.url());
    let first = client()
        .get(&url)
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("get");
    // The platform in front cuts the stream after three events.
    let seen = read_events(first, |events| events.len() == 3).await;
    let last_id = seen[2].1.lines().find_map(|line| line.strip_prefix("id: "));
    assert_eq!(last_id, Some("3"), "{seen:?}");

    let resumed = client()
        .get(&url)
        .header("accept", "text/event-stream")
        .header("last-event-id", "3")
        .send()
        .await
        .expect("resume");
    assert_eq!(resumed.status(), 200);
    let rest: Vec<String> = read_events(resumed, |_| false)
        .await
        .into_iter()
        .map(|(_, event)| event)
        .collect();
    let ids: Vec<&str> = rest
        .iter()
        .filter_map(|event| event.lines().find_map(|line| line.strip_prefix("id: ")))
        .collect();
    assert_eq!(ids, ["4", "5", "6"], "{rest:?}");
}

async fn legacy_roundtrip(
    style: EndpointStyle,
    base_path: &str,
    prefix: &str,
    upstream_suffix: &str,
) {
    let upstream = mock(MockOptions {
        legacy_endpoint: style,
        base_path: base_path.into(),
        ..Default::default()
    })
    .await;
    let upstream_url = format!("{}{upstream_suffix}", upstream.base_url());
    let gateway = single_route(prefix, &upstream_url, TOKEN, "");
    let stream_prefix = prefix.trim_end_matches('/');
    let sse_url = if upstream_suffix.is_empty() {
        format!("{}{stream_prefix}/sse", gateway.url())
    } else {
        format!("{}{stream_prefix}", gateway.url())
    };
    let response = client()
        .get(&sse_url)
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("sse");
    assert_eq!(response.status(), 200);
    let mut stream = response.bytes_stream();
    let mut text = String::new();
    let endpoint = loop {
        let chunk = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("stalled");
        text.push_str(&String::from_utf8_lossy(
            &chunk.expect("stream open").expect("chunk"),
        ));
        if let Some(start) = text.find("event: endpoint\ndata: ") {
            let rest = &text[start + "event: endpoint\ndata: ".len()..];
            if let Some(end) = rest.find('\n') {
                break rest[..end].to_owned();
            }
        }
    };
    assert!(
        endpoint.starts_with(&format!("{stream_prefix}/")),
        "endpoint {endpoint} is not under {prefix}"
    );
    assert!(
        !endpoint.contains("127.0.0.1"),
        "endpoint {endpoint} points at the upstream"
    );

    let post = client()
        .post(format!("{}{endpoint}", gateway.url()))
        .json(&json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{
            "protocolVersion":"2024-11-05","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}))
        .send()
        .await
        .expect("post");
    assert_eq!(post.status(), 202);
    let reply = loop {
        if let Some(event) = text.split("\n\n").find(|e| e.contains("\"id\":1")) {
            break event.to_owned();
        }
        let chunk = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("stalled");
        text.push_str(&String::from_utf8_lossy(
            &chunk.expect("stream open").expect("chunk"),
        ));
    };
    assert!(reply.contains("mock-upstream"), "{reply}");
}

#[tokio::test(flavor = "multi_thread")]
async fn legacy_sse_endpoint_is_rewritten_to_the_gateway() {
    legacy_roundtrip(EndpointStyle::Relative, "/v1", "/atlassian", "").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn legacy_sse_absolute_endpoint_is_rewritten_too() {
    legacy_roundtrip(EndpointStyle::Absolute, "", "/", "").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn legacy_sse_endpoint_outside_the_base_path_still_routes() {
    // The upstream URL is the SSE URL itself and the endpoint lives at the origin's root.
    legacy_roundtrip(EndpointStyle::OriginRoot, "", "/py", "/sse").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_streams_get_keepalive_comments() {
    let upstream = mock(MockOptions::default()).await;
    let gateway = single_route("/up", upstream.base_url(), TOKEN, "sse_keepalive_secs = 1");
    let response = client()
        .get(format!("{}/up/silent", gateway.url()))
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("get");
    let started = Instant::now();
    let events = read_events(response, |events| events.len() >= 2).await;
    assert_eq!(events[0].1, ": keepalive");
    assert_eq!(events[1].1, ": keepalive");
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "keepalives came too fast"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_leaves_closes_the_upstream_stream() {
    let upstream = mock(MockOptions::default()).await;
    let gateway = single_route("/up", upstream.base_url(), TOKEN, "");
    let response = client()
        .get(format!("{}/up/silent", gateway.url()))
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("get");
    wait_until(|| upstream.state().open_streams() == 1).await;
    let metrics = metrics(&gateway).await;
    assert!(
        metrics.contains("mcp_gateway_open_sse_streams{route=\"up\"} 1"),
        "{metrics}"
    );

    drop(response);
    wait_until(|| upstream.state().open_streams() == 0).await;
    let metrics = metrics_until(&gateway, "mcp_gateway_open_sse_streams{route=\"up\"} 0").await;
    assert!(
        metrics.contains("mcp_gateway_open_sse_streams{route=\"up\"} 0"),
        "{metrics}"
    );
}

async fn wait_until(mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "condition not reached in 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn metrics(gateway: &TestGateway) -> String {
    client()
        .get(format!("{}/metrics", gateway.url()))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
}

async fn metrics_until(gateway: &TestGateway, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = metrics(gateway).await;
        if text.contains(needle) || Instant::now() > deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_upstream_gets_502_naming_route_and_cause() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let gateway = single_route("/up", &format!("http://127.0.0.1:{port}/v1"), TOKEN, "");
    for (method, accept) in [("POST", "application/json"), ("GET", "text/event-stream")] {
        let response = client()
            .request(
                method.parse().expect("method"),
                format!("{}/up/mcp", gateway.url()),
            )
            .header("accept", accept)
            .body("{}")
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 502, "{method}");
        let body: Value = response.json().await.expect("json body");
        assert_eq!(body["error"], "upstream_unreachable", "{body}");
        assert_eq!(body["route"], "up");
        assert!(
            body["message"]
                .as_str()
                .expect("message")
                .contains("connection refused"),
            "{body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_upstream_gets_504_not_a_hang() {
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let gateway = single_route(
        "/up",
        &format!("http://{addr}"),
        TOKEN,
        "read_timeout_secs = 1",
    );
    let started = Instant::now();
    let response = client()
        .post(format!("{}/up/mcp", gateway.url()))
        .body("{}")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 504);
    assert!(started.elapsed() < Duration::from_secs(5));
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"], "upstream_timeout");
    hold.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oauth_route_without_sign_in_answers_401_with_a_reason() {
    let gateway = start(
        r#"
[server]
listen = "127.0.0.1:0"
[[routes]]
name = "atlassian"
prefix = "/atlassian"
upstream = "http://127.0.0.1:9/v1"
"#,
        &[],
    );
    let response = client()
        .post(format!("{}/atlassian/mcp", gateway.url()))
        .body("{}")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 401);
    assert!(response.headers().get("www-authenticate").is_none());
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"], "needs_sign_in");
    assert_eq!(body["route"], "atlassian");
}

#[tokio::test(flavor = "multi_thread")]
async fn api_keys_guard_routes_and_never_reach_the_upstream() {
    use sha2::Digest;
    let upstream = mock(MockOptions::default()).await;
    let hash = format!("{:x}", sha2::Sha256::digest(b"client-key-1"));
    let gateway = single_route(
        "/up",
        upstream.base_url(),
        TOKEN,
        &format!("api_keys = [\"sha256:{hash}\"]"),
    );
    let url = format!("{}/up/anything", gateway.url());
    let without = client().get(&url).send().await.expect("request");
    assert_eq!(without.status(), 401);
    let wrong = client()
        .get(&url)
        .bearer_auth("client-key-2")
        .send()
        .await
        .expect("request");
    assert_eq!(wrong.status(), 401);
    let echo: Value = client()
        .get(&url)
        .bearer_auth("client-key-1")
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(echo["headers"]["authorization"], format!("Bearer {TOKEN}"));
    // Health stays open for probes.
    let health = client()
        .get(format!("{}/healthz", gateway.url()))
        .send()
        .await
        .expect("health");
    assert_eq!(health.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn control_paths_win_over_a_root_route() {
    let upstream = mock(MockOptions::default()).await;
    let gateway = single_route("/", upstream.base_url(), TOKEN, "");
    let ready: Value = client()
        .get(format!("{}/readyz", gateway.url()))
        .send()
        .await
        .expect("readyz")
        .json()
        .await
        .expect("json");
    assert_eq!(ready["status"], "ready");
    let index: Value = client()
        .get(format!("{}/", gateway.url()))
        .header("accept", "application/json")
        .send()
        .await
        .expect("index")
        .json()
        .await
        .expect("json");
    assert!(
        index["routes"][0]["streamable_http"]
            .as_str()
            .expect("url")
            .ends_with("/mcp"),
        "{index}"
    );
    let admin = client()
        .get(format!("{}/admin/api/routes", gateway.url()))
        .send()
        .await
        .expect("admin");
    assert_eq!(
        admin.status(),
        200,
        "the gateway's admin API, not the upstream"
    );
    assert!(
        upstream
            .state()
            .requests()
            .iter()
            .all(|r| !r.path.starts_with("/admin"))
    );
    let echo: Value = client()
        .get(format!("{}/sse-not-really", gateway.url()))
        .send()
        .await
        .expect("proxied")
        .json()
        .await
        .expect("json");
    assert_eq!(echo["path"], "/sse-not-really");
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_proxied_requests() {
    let upstream = mock(MockOptions::default()).await;
    let gateway = single_route("/up", upstream.base_url(), TOKEN, "");
    for _ in 0..3 {
        client()
            .post(format!("{}/up/x", gateway.url()))
            .body("{}")
            .send()
            .await
            .expect("request");
    }
    let text = metrics(&gateway).await;
    assert!(
        text.contains(
            "mcp_gateway_requests_total{method=\"POST\",route=\"up\",rpc_method=\"none\",status=\"2xx\"} 3"
        ),
        "{text}"
    );
    assert!(
        text.contains("mcp_gateway_request_duration_seconds_count{route=\"up\"} 3"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_upstreams_oauth_metadata_is_never_shown_to_clients() {
    let upstream = mock(MockOptions::default()).await;
    let gateway = single_route("/up", upstream.base_url(), TOKEN, "");
    for path in [
        "/up/.well-known/oauth-protected-resource",
        "/up/.well-known/oauth-protected-resource/mcp",
        "/up/.well-known/oauth-authorization-server",
        "/up/mcp/.well-known/openid-configuration",
    ] {
        let response = client()
            .get(format!("{}{path}", gateway.url()))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 404, "{path}");
        let body: Value = response.json().await.expect("json");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(message.contains("need no OAuth"), "{path}: {message}");
    }
    assert!(
        upstream
            .state()
            .requests()
            .iter()
            .all(|request| !request.path.contains(".well-known")),
        "a discovery request reached the upstream, with the route's token"
    );
    // Other well-known documents still go to the upstream.
    client()
        .get(format!("{}/up/.well-known/mcp.json", gateway.url()))
        .send()
        .await
        .expect("request");
    assert!(
        upstream
            .state()
            .last_request_to("/.well-known/mcp.json")
            .is_some()
    );
}
