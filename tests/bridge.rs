//! The transport bridge over HTTP: a legacy SSE client in front of an upstream that speaks
//! only Streamable HTTP. The handshake, answers and progress arrive on the client's stream
//! in order, concurrent calls each get their own answer, a session belongs to the client
//! that opened it, leaving ends the upstream session, and a client that stops reading loses
//! its session instead of growing the gateway's memory.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::gateway::{TestGateway, single_route, start};
use support::mock_upstream::{MockOptions, MockUpstream};
use tokio::sync::mpsc;

const TOKEN: &str = "test-token";

async fn streamable_only() -> MockUpstream {
    MockUpstream::start(MockOptions {
        legacy: false,
        ..Default::default()
    })
    .await
}

/// A legacy client's event stream: the events as they arrive, `(event, data)`.
struct Stream {
    events: mpsc::UnboundedReceiver<(String, String)>,
    endpoint: String,
    task: tokio::task::JoinHandle<()>,
}

async fn open(base: &str, path: &str, key: Option<&str>) -> Stream {
    let mut request = reqwest::Client::new()
        .get(format!("{base}{path}"))
        .header("accept", "text/event-stream");
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let mut response = request.send().await.expect("open stream");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let (sender, mut events) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut buffer = String::new();
        while let Ok(Some(chunk)) = response.chunk().await {
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                let mut event = String::new();
                let mut data = Vec::new();
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("event: ") {
                        event = value.to_owned();
                    } else if let Some(value) = line.strip_prefix("data: ") {
                        data.push(value);
                    }
                }
                if !data.is_empty() && sender.send((event, data.join("\n"))).is_err() {
                    return;
                }
            }
        }
    });
    let (event, endpoint) = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .expect("an endpoint event in time")
        .expect("an endpoint event");
    assert_eq!(event, "endpoint");
    Stream {
        events,
        endpoint,
        task,
    }
}

impl Stream {
    /// The next JSON-RPC message on the stream.
    async fn next(&mut self) -> Value {
        let (event, data) = tokio::time::timeout(Duration::from_secs(10), self.events.recv())
            .await
            .expect("a message in time")
            .expect("the stream is open");
        assert_eq!(event, "message");
        serde_json::from_str(&data).expect("a JSON message")
    }

    /// Messages until the one answering `id`, inclusive.
    async fn until_answer(&mut self, id: u64) -> Vec<Value> {
        let mut seen = Vec::new();
        loop {
            let message = self.next().await;
            let done = message["id"] == id;
            seen.push(message);
            if done {
                return seen;
            }
        }
    }
}

async fn post(base: &str, endpoint: &str, message: &Value, key: Option<&str>) -> u16 {
    let mut request = reqwest::Client::new()
        .post(format!("{base}{endpoint}"))
        .json(message);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    request.send().await.expect("post").status().as_u16()
}

async fn handshake(base: &str, stream: &mut Stream, key: Option<&str>) -> Value {
    let status = post(base, &stream.endpoint, &support::initialize_request(), key).await;
    assert_eq!(status, 202);
    let answer = stream.next().await;
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    assert_eq!(post(base, &stream.endpoint, &initialized, key).await, 202);
    answer
}

fn call(id: u64, tool: &str, arguments: Value) -> Value {
    json!({
        "jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": tool, "arguments": arguments, "_meta": {"progressToken": id}},
    })
}

async fn metric(gateway: &TestGateway, series: &str) -> i64 {
    let text = reqwest::get(format!("{}/metrics", gateway.url()))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse::<f64>().ok())
        .map_or(0, |value| value as i64)
}

async fn eventually(within: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_legacy_client_talks_to_a_streamable_only_upstream_through_the_bridge() {
    let upstream = streamable_only().await;
    let gateway = single_route("/up", upstream.base_url(), TOKEN, "");
    let base = gateway.url();
    let mut stream = open(&base, "/up/sse", None).await;
    assert!(
        stream.endpoint.starts_with("/up/message?sessionId="),
        "{}",
        stream.endpoint
    );

    let answer = handshake(&base, &mut stream, None).await;
    assert_eq!(answer["id"], 1);
    assert_eq!(answer["result"]["serverInfo"]["name"], "mock-upstream");
    // After initialize, every request carries the upstream's session and protocol version.
    let listening = async || {
        let requests = upstream.state().requests();
        requests
            .into_iter()
            .find(|r| r.method == "GET" && r.path_without_query() == "/mcp")
    };
    assert!(
        eventually(Duration::from_secs(5), async || listening().await.is_some()).await,
        "the bridge listens on the upstream's GET stream"
    );
    let listener = listening().await.expect("GET");
    let session = listener
        .header("mcp-session-id")
        .expect("session id")
        .to_owned();
    assert_eq!(listener.header("mcp-protocol-version"), Some("2025-11-25"));
    assert_eq!(listener.header("authorization"), Some("Bearer test-token"));

    // Progress first, then the answer, as the upstream sent them.
    let slow = call(7, "slow_stream", json!({"steps": 3, "interval_ms": 20}));
    assert_eq!(post(&base, &stream.endpoint, &slow, None).await, 202);
    let seen = stream.until_answer(7).await;
    let progress: Vec<&Value> = seen
        .iter()
        .filter(|m| m["method"] == "notifications/progress")
        .collect();
    assert_eq!(progress.len(), 3, "{seen:?}");
    assert_eq!(seen.last().expect("answer")["id"], 7);
    let posted = upstream.state().requests();
    let sent = posted
        .iter()
        .rev()
        .find(|r| r.method == "POST")
        .expect("the call went upstream");
    assert_eq!(sent.header("mcp-session-id"), Some(session.as_str()));

    // Ten calls at once: each answer reaches the client, with its own id and text.
    let calls = (100..110).map(|id| {
        let (base, endpoint) = (base.clone(), stream.endpoint.clone());
        async move {
            let text = format!("call {id}");
            post(
                &base,
                &endpoint,
                &call(id, "echo", json!({"text": text})),
                None,
            )
            .await
        }
    });
    let statuses = futures::future::join_all(calls).await;
    assert!(statuses.iter().all(|status| *status == 202), "{statuses:?}");
    let mut answered = std::collections::BTreeMap::new();
    while answered.len() < 10 {
        let message = stream.next().await;
        let id = message["id"].as_u64().expect("an answer");
        let text = message["result"]["content"][0]["text"].clone();
        answered.insert(id, text);
    }
    for (id, text) in answered {
        assert_eq!(text, format!("call {id}"));
    }
    let calls = r#"mcp_gateway_requests_total{method="POST",route="up",rpc_method="tools/call",status="2xx"}"#;
    assert_eq!(
        metric(&gateway, calls).await,
        11,
        "bridged calls are counted by method"
    );

    // The client leaves: the upstream session is deleted and nothing stays open.
    assert_eq!(metric(&gateway, "mcp_gateway_bridge_sessions").await, 1);
    stream.task.abort();
    drop(stream);
    let state = upstream.state();
    assert!(
        eventually(Duration::from_secs(5), async || state.live_sessions() == 0).await,
        "the upstream session was deleted"
    );
    assert!(
        eventually(Duration::from_secs(5), async || state.open_streams() == 0).await,
        "the upstream GET stream was closed"
    );
    assert_eq!(metric(&gateway, "mcp_gateway_bridge_sessions").await, 0);
    let open = r#"mcp_gateway_open_sse_streams{route="up"}"#;
    assert_eq!(metric(&gateway, open).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bridge_session_answers_only_the_client_that_opened_it() {
    let upstream = streamable_only().await;
    let alice = "key-for-alice";
    let bob = "key-for-bob";
    let hash = |key: &str| {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(key.as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("\"sha256:{hex}\"")
    };
    let keys = format!("api_keys = [{}, {}]", hash(alice), hash(bob));
    let gateway = single_route("/up", upstream.base_url(), TOKEN, &keys);
    let base = gateway.url();
    let mut stream = open(&base, "/up/sse", Some(alice)).await;
    handshake(&base, &mut stream, Some(alice)).await;

    let ping = json!({"jsonrpc": "2.0", "id": 5, "method": "ping"});
    assert_eq!(post(&base, &stream.endpoint, &ping, Some(bob)).await, 404);
    assert_eq!(post(&base, &stream.endpoint, &ping, None).await, 401);
    assert_eq!(post(&base, &stream.endpoint, &ping, Some(alice)).await, 202);
    let answer = stream.next().await;
    assert_eq!(answer["id"], 5);
    assert!(answer.get("result").is_some(), "{answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stops_reading_loses_its_session_not_the_gateways_memory() {
    let upstream = streamable_only().await;
    let gateway = single_route("/up", upstream.base_url(), TOKEN, "");
    let base = gateway.url();
    // Opened, then never read again: the answers pile up in the socket, then the queue.
    let response = reqwest::Client::new()
        .get(format!("{base}/up/sse"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("open");
    let mut response = response;
    let first = response.chunk().await.expect("read").expect("endpoint");
    let text = String::from_utf8_lossy(&first).into_owned();
    let endpoint = text
        .lines()
        .find_map(|line| line.strip_prefix("data: "))
        .expect("endpoint")
        .to_owned();

    let initialize = support::initialize_request();
    assert_eq!(post(&base, &endpoint, &initialize, None).await, 202);
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    assert_eq!(post(&base, &endpoint, &initialized, None).await, 202);

    let big = "x".repeat(64 * 1024);
    let mut posted = 0;
    for id in 10..1010u64 {
        let status = post(
            &base,
            &endpoint,
            &call(id, "echo", json!({"text": big})),
            None,
        )
        .await;
        if status == 404 {
            break;
        }
        assert_eq!(status, 202);
        posted += 1;
    }
    assert!(posted > 256, "it held a full queue first ({posted} posted)");
    let ended = eventually(Duration::from_secs(20), async || {
        metric(&gateway, "mcp_gateway_bridge_sessions").await == 0
    })
    .await;
    assert!(ended, "the session ended while its client did not read");
    let ping = json!({"jsonrpc": "2.0", "id": 5, "method": "ping"});
    assert_eq!(
        post(&base, &endpoint, &ping, None).await,
        404,
        "the session is gone"
    );
    drop(response);
    let state = upstream.state();
    assert!(eventually(Duration::from_secs(5), async || state.live_sessions() == 0).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn transport_streamable_bridges_even_when_the_upstream_has_a_legacy_endpoint() {
    let upstream = MockUpstream::start(MockOptions::default()).await;
    let gateway = start(
        &format!(
            r#"
[server]
listen = "127.0.0.1:0"
[[routes]]
name = "up"
prefix = "/up"
upstream = "{}"
transport = "streamable"
auth = {{ kind = "bearer", token_file = "{{dir}}/upstream-token" }}
"#,
            upstream.base_url()
        ),
        &[("upstream-token", TOKEN)],
    );
    let mut stream = open(&gateway.url(), "/up/sse", None).await;
    let answer = handshake(&gateway.url(), &mut stream, None).await;
    assert_eq!(answer["result"]["serverInfo"]["name"], "mock-upstream");
    let requests = upstream.state().requests();
    assert!(
        requests.iter().all(|r| r.path_without_query() != "/sse"),
        "the upstream's legacy endpoint was never asked"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tool_filter_applies_through_the_bridge() {
    let upstream = streamable_only().await;
    let gateway = start(
        &format!(
            r#"
[server]
listen = "127.0.0.1:0"
[[routes]]
name = "up"
prefix = "/up"
upstream = "{}"
auth = {{ kind = "bearer", token_file = "{{dir}}/upstream-token" }}
[[routes.plugins]]
kind = "tool_filter"
deny = ["echo"]
"#,
            upstream.base_url()
        ),
        &[("upstream-token", TOKEN)],
    );
    let base = gateway.url();
    let mut stream = open(&base, "/up/sse", None).await;
    handshake(&base, &mut stream, None).await;
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    assert_eq!(post(&base, &stream.endpoint, &list, None).await, 202);
    let tools = stream.next().await;
    let names: Vec<&str> = tools["result"]["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|tool| tool["name"].as_str())
        .collect();
    assert!(
        !names.contains(&"echo") && names.contains(&"slow_stream"),
        "{names:?}"
    );

    let blocked = call(3, "echo", json!({"text": "no"}));
    assert_eq!(post(&base, &stream.endpoint, &blocked, None).await, 202);
    let answer = stream.next().await;
    assert_eq!(answer["id"], 3);
    assert_eq!(answer["error"]["code"], -32602, "{answer}");
    assert_eq!(upstream.state().tool_calls("echo"), 0);
}

// --- Streamable HTTP clients in front of a legacy-only upstream (`transport = "sse"`) ---

fn legacy_route(upstream: &MockUpstream, server_extra: &str) -> TestGateway {
    start(
        &format!(
            r#"
[server]
listen = "127.0.0.1:0"
{server_extra}
[[routes]]
name = "up"
prefix = "/up"
upstream = "{}"
transport = "sse"
auth = {{ kind = "bearer", token_file = "{{dir}}/upstream-token" }}
"#,
            upstream.base_url()
        ),
        &[("upstream-token", TOKEN)],
    )
}

/// A Streamable HTTP `POST` to the gateway: status, session id, and the messages of the
/// answer (one JSON body, or the events of an event stream).
async fn streamable(
    base: &str,
    session: Option<&str>,
    message: &Value,
    accept: &str,
    key: Option<&str>,
) -> (u16, Option<String>, Vec<Value>) {
    let mut request = reqwest::Client::new()
        .post(format!("{base}/up/mcp"))
        .header("accept", accept)
        .json(message);
    if let Some(session) = session {
        request = request.header("mcp-session-id", session);
    }
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.expect("post");
    let status = response.status().as_u16();
    let id = response
        .headers()
        .get("mcp-session-id")
        .map(|v| v.to_str().expect("ascii").to_owned());
    let is_stream = response.headers().get("content-type").is_some_and(|v| {
        v.to_str()
            .unwrap_or_default()
            .starts_with("text/event-stream")
    });
    let text = response.text().await.expect("body");
    let messages = if is_stream {
        text.split("\n\n")
            .filter_map(|event| {
                let data: Vec<&str> = event
                    .lines()
                    .filter_map(|line| line.strip_prefix("data: "))
                    .collect();
                serde_json::from_str(&data.join("\n")).ok()
            })
            .collect()
    } else {
        serde_json::from_str(&text).into_iter().collect()
    };
    (status, id, messages)
}

const BOTH: &str = "application/json, text/event-stream";

#[tokio::test(flavor = "multi_thread")]
async fn a_streamable_client_talks_to_a_legacy_only_upstream_through_the_bridge() {
    let upstream = MockUpstream::start(MockOptions::default()).await;
    let gateway = legacy_route(&upstream, "");
    let base = gateway.url();

    let (status, id, answer) =
        streamable(&base, None, &support::initialize_request(), BOTH, None).await;
    assert_eq!(status, 200, "{answer:?}");
    let id = id.expect("a session id");
    assert_eq!(answer[0]["result"]["serverInfo"]["name"], "mock-upstream");
    assert_eq!(
        upstream.state().open_streams(),
        1,
        "one upstream stream per session"
    );
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let (status, _, _) = streamable(&base, Some(&id), &initialized, BOTH, None).await;
    assert_eq!(status, 202);

    // Progress first, then the answer, on the request's own event stream.
    let slow = call(7, "slow_stream", json!({"steps": 3, "interval_ms": 20}));
    let (status, _, messages) = streamable(&base, Some(&id), &slow, BOTH, None).await;
    assert_eq!(status, 200);
    assert_eq!(messages.len(), 4, "{messages:?}");
    assert!(
        messages[..3]
            .iter()
            .all(|m| m["method"] == "notifications/progress")
    );
    assert_eq!(messages[3]["id"], 7);

    // A client that takes JSON only gets the answer alone.
    let echo = call(8, "echo", json!({"text": "json"}));
    let (_, _, messages) = streamable(&base, Some(&id), &echo, "application/json", None).await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0]["result"]["content"][0]["text"], "json");

    // Ten calls at once, each answered with its own response.
    let calls = (100..110).map(|n| {
        let (base, id) = (base.clone(), id.clone());
        async move {
            let message = call(n, "echo", json!({"text": format!("call {n}")}));
            let (_, _, answer) = streamable(&base, Some(&id), &message, BOTH, None).await;
            (n, answer)
        }
    });
    for (n, answer) in futures::future::join_all(calls).await {
        let last = answer.last().expect("an answer");
        assert_eq!(last["id"], n);
        assert_eq!(last["result"]["content"][0]["text"], format!("call {n}"));
    }
    let calls = r#"mcp_gateway_requests_total{method="POST",route="up",rpc_method="tools/call",status="2xx"}"#;
    assert_eq!(
        metric(&gateway, calls).await,
        12,
        "bridged calls are counted by method"
    );

    // DELETE ends the session and the upstream stream.
    let deleted = reqwest::Client::new()
        .delete(format!("{base}/up/mcp"))
        .header("mcp-session-id", &id)
        .send()
        .await
        .expect("delete");
    assert_eq!(deleted.status(), 200);
    let state = upstream.state();
    assert!(eventually(Duration::from_secs(5), async || state.open_streams() == 0).await);
    let ping = json!({"jsonrpc": "2.0", "id": 9, "method": "ping"});
    let (status, _, _) = streamable(&base, Some(&id), &ping, BOTH, None).await;
    assert_eq!(status, 404, "the session is gone");
    assert_eq!(metric(&gateway, "mcp_gateway_bridge_sessions").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_the_legacy_upstream_never_answers_gets_an_error_after_the_read_timeout() {
    let upstream = MockUpstream::start(MockOptions::default()).await;
    let gateway = legacy_route(&upstream, "read_timeout_secs = 1");
    let base = gateway.url();
    let (_, id, _) = streamable(&base, None, &support::initialize_request(), BOTH, None).await;
    let id = id.expect("session");
    let endless = call(
        3,
        "slow_stream",
        json!({"steps": 1000, "interval_ms": 1000}),
    );
    let started = Instant::now();
    let (status, _, messages) =
        streamable(&base, Some(&id), &endless, "application/json", None).await;
    assert_eq!(status, 200);
    assert!(started.elapsed() < Duration::from_secs(5));
    let answer = &messages[0];
    assert_eq!(answer["id"], 3);
    assert_eq!(answer["error"]["code"], -32001, "{answer}");
    let text = answer["error"]["message"].as_str().expect("message");
    assert!(text.contains("server.read_timeout_secs"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bridged_streamable_session_answers_only_its_own_client() {
    let upstream = MockUpstream::start(MockOptions::default()).await;
    let hash = |key: &str| {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(key.as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("\"sha256:{hex}\"")
    };
    let keys = format!("api_keys = [{}, {}]", hash("alice"), hash("bob"));
    let gateway = legacy_route(&upstream, &keys);
    let base = gateway.url();
    let initialize = support::initialize_request();
    let (status, id, _) = streamable(&base, None, &initialize, BOTH, Some("alice")).await;
    assert_eq!(status, 200);
    let id = id.expect("session");
    let ping = json!({"jsonrpc": "2.0", "id": 4, "method": "ping"});
    let (status, _, _) = streamable(&base, Some(&id), &ping, BOTH, Some("bob")).await;
    assert_eq!(status, 404);
    let (status, _, answer) = streamable(&base, Some(&id), &ping, BOTH, Some("alice")).await;
    assert_eq!(status, 200);
    assert_eq!(answer.last().expect("pong")["id"], 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_auto_route_learns_that_its_upstream_has_only_the_legacy_transport() {
    let upstream = MockUpstream::start(MockOptions {
        streamable: false,
        ..Default::default()
    })
    .await;
    let gateway = single_route("/up", upstream.base_url(), TOKEN, "");
    let base = gateway.url();
    let initialize = support::initialize_request();
    // The first attempt gets the upstream's own 404, which tells a client to fall back.
    let (status, _, _) = streamable(&base, None, &initialize, BOTH, None).await;
    assert_eq!(status, 404);
    let (status, id, answer) = streamable(&base, None, &initialize, BOTH, None).await;
    assert_eq!(status, 200, "{answer:?}");
    assert!(id.is_some());
    assert_eq!(answer[0]["result"]["serverInfo"]["name"], "mock-upstream");
    // Legacy clients still pass straight through.
    let stream = open(&base, "/up/sse", None).await;
    assert!(stream.endpoint.starts_with("/up/message?sessionId="));
    assert_eq!(metric(&gateway, "mcp_gateway_bridge_sessions").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancellation_reaches_the_upstream_through_both_bridges_while_its_call_runs() {
    let cancel = |id: u64| {
        json!({
            "jsonrpc": "2.0", "method": "notifications/cancelled",
            "params": {"requestId": id, "reason": "the person gave up"},
        })
    };

    // A legacy client, bridged to a Streamable-HTTP-only upstream.
    let upstream = streamable_only().await;
    let gateway = single_route("/up", upstream.base_url(), TOKEN, "");
    let base = gateway.url();
    let mut stream = open(&base, "/up/sse", None).await;
    handshake(&base, &mut stream, None).await;
    let long = call(21, "slow_stream", json!({"steps": 50, "interval_ms": 100}));
    assert_eq!(post(&base, &stream.endpoint, &long, None).await, 202);
    let first = stream.next().await;
    assert_eq!(
        first["method"], "notifications/progress",
        "the call is under way"
    );
    assert_eq!(post(&base, &stream.endpoint, &cancel(21), None).await, 202);
    let state = upstream.state();
    let arrived = eventually(Duration::from_secs(2), async || {
        !state.notifications("notifications/cancelled").is_empty()
    })
    .await;
    assert!(
        arrived,
        "the cancellation did not wait for the call it cancels"
    );
    assert_eq!(
        state.notifications("notifications/cancelled")[0]["params"]["requestId"],
        21
    );

    // A Streamable HTTP client, bridged to a legacy-only upstream.
    let upstream = MockUpstream::start(MockOptions {
        streamable: false,
        ..Default::default()
    })
    .await;
    let gateway = legacy_route(&upstream, "");
    let base = gateway.url();
    let (_, id, _) = streamable(&base, None, &support::initialize_request(), BOTH, None).await;
    let id = id.expect("session");
    let call_base = base.clone();
    let session = id.clone();
    let running = tokio::spawn(async move {
        let long = call(22, "slow_stream", json!({"steps": 50, "interval_ms": 100}));
        streamable(&call_base, Some(&session), &long, BOTH, None).await
    });
    let state = upstream.state();
    assert!(
        eventually(Duration::from_secs(2), async || state
            .tool_calls("slow_stream")
            == 1)
        .await
    );
    let (status, _, _) = streamable(&base, Some(&id), &cancel(22), BOTH, None).await;
    assert_eq!(status, 202);
    assert_eq!(
        state.notifications("notifications/cancelled")[0]["params"]["requestId"],
        22
    );
    running.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn what_the_upstream_starts_reaches_the_client_and_a_forgotten_session_ends_its_stream() {
    // Legacy client, Streamable-HTTP-only upstream: its GET stream's messages arrive.
    let upstream = streamable_only().await;
    let gateway = single_route("/up", upstream.base_url(), TOKEN, "");
    let base = gateway.url();
    let mut stream = open(&base, "/up/sse", None).await;
    handshake(&base, &mut stream, None).await;
    let state = upstream.state();
    assert!(eventually(Duration::from_secs(5), async || state.open_streams() == 1).await);
    let changed = json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"});
    state.send_to_every_client(&changed);
    assert_eq!(stream.next().await, changed);

    // The upstream forgets the session: the next message the bridge sends gets 404, which
    // ends the client's stream. Under load that may be the handshake's own
    // `notifications/initialized`, still on its way upstream; then the ping finds the
    // session over already and gets 404 itself.
    state.forget_sessions();
    let ping = json!({"jsonrpc": "2.0", "id": 30, "method": "ping"});
    let posted = post(&base, &stream.endpoint, &ping, None).await;
    assert!(matches!(posted, 202 | 404), "{posted}");
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while stream.events.recv().await.is_some() {}
    })
    .await;
    assert!(ended.is_ok(), "the client's stream ends");
    assert!(
        eventually(Duration::from_secs(5), async || metric(
            &gateway,
            "mcp_gateway_bridge_sessions"
        )
        .await
            == 0)
        .await
    );

    // Streamable HTTP client, legacy-only upstream: messages wait for its GET stream.
    let upstream = MockUpstream::start(MockOptions {
        streamable: false,
        ..Default::default()
    })
    .await;
    let gateway = legacy_route(&upstream, "");
    let base = gateway.url();
    let (_, id, _) = streamable(&base, None, &support::initialize_request(), BOTH, None).await;
    let id = id.expect("session");
    let early = json!({"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": "early"}});
    upstream.state().send_to_every_client(&early);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut listening = reqwest::Client::new()
        .get(format!("{base}/up/mcp"))
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &id)
        .send()
        .await
        .expect("GET stream");
    assert_eq!(listening.status(), 200);
    let late = json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"});
    upstream.state().send_to_every_client(&late);
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !(text.contains("early") && text.contains("list_changed")) && Instant::now() < deadline {
        let chunk = tokio::time::timeout(Duration::from_secs(5), listening.chunk())
            .await
            .expect("a chunk in time")
            .expect("read")
            .expect("the stream is open");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let early_at = text.find("early").expect("the waiting message came first");
    let late_at = text.find("list_changed").expect("then the live one");
    assert!(early_at < late_at, "{text}");
}
