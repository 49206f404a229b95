//! A real MCP client that nobody here wrote: the official Python SDK, driven through the
//! gateway over both transports against the mock upstream, and against real servers nobody
//! here wrote either: the reference `server-everything` in its Streamable HTTP and legacy
//! SSE modes (behind `tests/interop/bearer_proxy.py`, since it checks no token itself), and
//! a server built with the Python SDK (`tests/interop/python_server.py`, with a bearer check
//! of its own). Every pair of client and server transports runs, through the bridge where
//! the two differ.
//!
//! In every run the client lists and calls tools, counts a call's progress notifications,
//! and cancels a second call at its first one; the mock must see the cancellation.
//!
//! The client runs from the virtualenv that `scripts/interop-venv.sh` prepares (the README's
//! test command and CI run it first); `INTEROP_PYTHON` may name another interpreter.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::gateway::single_route;
use support::interop::{
    BEARER_TOKEN, PythonServer, python, repo_file, server_everything_behind_bearer_check,
};
use support::mock_upstream::{MockOptions, MockUpstream};

/// The route's token for every upstream: the mock's, and the one the Python servers check.
const TOKEN: &str = BEARER_TOKEN;

fn run_client(transport: &str, url: &str, extra: &[&str]) -> Value {
    let script = repo_file("tests/interop/python_client.py");
    let output = Command::new(python())
        .arg(script)
        .args([
            "--transport",
            transport,
            "--url",
            url,
            "--expect-tool",
            "echo",
        ])
        .args(extra)
        .output()
        .expect("run the Python MCP client");
    assert!(
        output.status.success(),
        "python client over {transport} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("one JSON line")
}

/// The call under way was cancelled after its first progress notification: it never
/// completed, the SDK sent `notifications/cancelled` for its id, and the session went on.
fn assert_cancelled(summary: &Value, echoed: &str) {
    let cancel = &summary["cancel"];
    assert_eq!(
        cancel["cancelled"], true,
        "no notifications/cancelled: {summary}"
    );
    assert_eq!(
        cancel["after_progress"], true,
        "no progress came first: {summary}"
    );
    assert!(cancel["request_id"].is_number(), "{summary}");
    assert_eq!(summary["echo_after_cancel"], echoed, "{summary}");
}

/// The client's cancellation reached the mock: one `notifications/cancelled`, naming the
/// cancelled call's id with the client's reason, within five seconds (the gateway may still
/// be sending it when the client is done). The slow tool was called twice: once to the
/// end, once cancelled.
async fn assert_cancellation_reached(upstream: &MockUpstream, summary: &Value) {
    assert_cancelled(summary, "hello through the gateway");
    let state = upstream.state();
    let cancelled = || state.notifications("notifications/cancelled");
    let deadline = Instant::now() + Duration::from_secs(5);
    while cancelled().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let notices = cancelled();
    assert_eq!(notices.len(), 1, "{notices:?} for {summary}");
    let params = &notices[0]["params"];
    assert_eq!(
        params["requestId"], summary["cancel"]["request_id"],
        "{notices:?} for {summary}"
    );
    assert_eq!(params["reason"], summary["cancel"]["reason"], "{notices:?}");
    assert_eq!(state.tool_calls("slow_stream"), 2, "{summary}");
}

async fn check_transport(transport: &str, path: &str) {
    let upstream = MockUpstream::start(MockOptions {
        token: TOKEN.into(),
        base_path: "/v1".into(),
        ..Default::default()
    })
    .await;
    let gateway = single_route("/mock", upstream.base_url(), TOKEN, "");
    let url = format!("{}{path}", gateway.url());
    let transport_owned = transport.to_owned();
    let summary = tokio::task::spawn_blocking(move || run_client(&transport_owned, &url, &[]))
        .await
        .expect("client thread");
    assert_eq!(summary["transport"], transport);
    assert_eq!(summary["server_name"], "mock-upstream");
    assert_eq!(summary["echo"], "hello through the gateway");
    assert_eq!(summary["progress"], 3, "{summary}");
    assert_eq!(summary["slow_result"], "done after 3 steps");
    assert_cancellation_reached(&upstream, &summary).await;
    // Everything the upstream saw carried the gateway's token, none the client's.
    let requests = upstream.state().requests();
    assert!(!requests.is_empty());
    for request in requests {
        let auth = request
            .headers
            .iter()
            .find(|(name, _)| name == "authorization");
        assert_eq!(
            auth.map(|(_, v)| v.as_str()),
            Some(format!("Bearer {TOKEN}").as_str())
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn python_sdk_client_lists_calls_and_cancels_over_streamable_http() {
    check_transport("streamable", "/mock/mcp").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn python_sdk_client_lists_calls_and_cancels_over_legacy_sse() {
    check_transport("sse", "/mock/sse").await;
}

/// With `tool_filter` on the route, the SDK client lists only the tools left and is refused
/// a filtered one, which never reaches the upstream; progress notifications still stream and
/// a cancellation still goes through.
async fn check_tool_filter(transport: &str, path: &str, legacy: bool, route_transport: &str) {
    let upstream = MockUpstream::start(MockOptions {
        token: TOKEN.into(),
        base_path: "/v1".into(),
        legacy,
        ..Default::default()
    })
    .await;
    let gateway = support::gateway::start(
        &format!(
            r#"
[server]
listen = "127.0.0.1:0"
[[routes]]
name = "mock"
prefix = "/mock"
upstream = "{}"
transport = "{route_transport}"
auth = {{ kind = "bearer", token_file = "{{dir}}/upstream-token" }}
[[routes.plugins]]
kind = "tool_filter"
deny = ["admin_*", "who?mi"]
"#,
            upstream.base_url()
        ),
        &[("upstream-token", TOKEN)],
    );
    let url = format!("{}{path}", gateway.url());
    let transport_owned = transport.to_owned();
    let summary = tokio::task::spawn_blocking(move || {
        run_client(&transport_owned, &url, &["--call-blocked", "admin_echo"])
    })
    .await
    .expect("client thread");
    assert_eq!(summary["tools"], serde_json::json!(["echo", "slow_stream"]));
    assert_eq!(summary["echo"], "hello through the gateway");
    assert_eq!(summary["progress"], 3, "{summary}");
    assert_eq!(summary["blocked"]["code"], -32602, "{summary}");
    let message = summary["blocked"]["message"].as_str().expect("message");
    assert!(
        message.contains("'admin_echo' is not available"),
        "{message}"
    );
    assert_cancellation_reached(&upstream, &summary).await;
    assert_eq!(
        upstream.state().tool_calls("echo"),
        2,
        "allowed calls go through"
    );
    assert_eq!(
        upstream.state().tool_calls("admin_echo"),
        0,
        "the filtered call reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn python_sdk_sees_only_allowed_tools_over_streamable_http() {
    check_tool_filter("streamable", "/mock/mcp", true, "auto").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn python_sdk_sees_only_allowed_tools_over_legacy_sse() {
    check_tool_filter("sse", "/mock/sse", true, "auto").await;
}

/// The Streamable HTTP client in front of a legacy-only upstream: through the bridge.
#[tokio::test(flavor = "multi_thread")]
async fn python_sdk_sees_only_allowed_tools_through_the_bridge_to_a_legacy_upstream() {
    check_tool_filter("streamable", "/mock/mcp", true, "sse").await;
}

/// The legacy client in front of a Streamable-HTTP-only upstream: through the bridge.
#[tokio::test(flavor = "multi_thread")]
async fn python_sdk_sees_only_allowed_tools_through_the_bridge() {
    check_tool_filter("sse", "/mock/sse", false, "auto").await;
}

/// The reference `server-everything` in `mode`, behind a bearer check (it has none of its
/// own) and a bearer route; the SDK client goes through the gateway at `path` over
/// `transport`.
async fn check_server_everything(mode: &str, transport: &str, path: &str) {
    let (_everything, _check, upstream) = server_everything_behind_bearer_check(mode).await;
    // The legacy-only server is reached by Streamable HTTP clients through the bridge.
    let route_transport = match (mode, transport) {
        ("sse", "streamable") => "sse",
        _ => "auto",
    };
    let gateway = support::gateway::start(
        &format!(
            r#"
[server]
listen = "127.0.0.1:0"
[[routes]]
name = "everything"
prefix = "/everything"
upstream = "{upstream}"
transport = "{route_transport}"
auth = {{ kind = "bearer", token_file = "{{dir}}/upstream-token" }}
"#
        ),
        &[("upstream-token", TOKEN)],
    );
    let url = format!("{}{path}", gateway.url());
    let transport_owned = transport.to_owned();
    let summary = tokio::task::spawn_blocking(move || {
        let slow_args = r#"{"duration": 0.3, "steps": 3}"#;
        run_client(
            &transport_owned,
            &url,
            &[
                "--echo-arg",
                "message",
                "--slow-tool",
                "trigger-long-running-operation",
                "--slow-args",
                slow_args,
                "--cancel-args",
                r#"{"duration": 10, "steps": 50}"#,
            ],
        )
    })
    .await
    .expect("client thread");
    assert_eq!(
        summary["echo"], "Echo: hello through the gateway",
        "{summary}"
    );
    assert_eq!(summary["progress"], 3, "{summary}");
    let done = summary["slow_result"].as_str().expect("result");
    assert!(done.contains("Steps: 3"), "{summary}");
    let tools = summary["tools"].as_array().expect("tools");
    assert!(tools.len() > 5, "the reference server's tools: {summary}");
    assert_cancelled(&summary, "Echo: hello through the gateway");
}

#[tokio::test(flavor = "multi_thread")]
async fn python_sdk_client_reaches_server_everything_over_streamable_http() {
    check_server_everything("streamableHttp", "streamable", "/everything/mcp").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn python_sdk_client_reaches_server_everything_over_legacy_sse() {
    check_server_everything("sse", "sse", "/everything/sse").await;
}

/// The SDK's Streamable HTTP client, bridged to server-everything's legacy SSE mode.
#[tokio::test(flavor = "multi_thread")]
async fn python_sdk_streamable_client_reaches_server_everything_sse_through_the_bridge() {
    check_server_everything("sse", "streamable", "/everything/mcp").await;
}

/// The SDK's legacy SSE client, bridged to server-everything's Streamable HTTP mode, which
/// has no legacy endpoint at all.
#[tokio::test(flavor = "multi_thread")]
async fn python_sdk_legacy_client_reaches_server_everything_streamable_through_the_bridge() {
    check_server_everything("streamableHttp", "sse", "/everything/sse").await;
}

/// The Python SDK client over `client` through a route to the Python SDK server over
/// `server`, bridged where the two differ.
async fn check_python_server(server: &str, client: &str) {
    let upstream = PythonServer::start(server);
    let refused = reqwest::Client::new()
        .post(format!("{}/mcp", upstream.url))
        .json(&support::initialize_request())
        .send()
        .await
        .expect("direct request");
    assert_eq!(refused.status(), 401, "the server checks its bearer token");
    let route_transport = if server == "sse" { "sse" } else { "streamable" };
    let gateway = support::gateway::start(
        &format!(
            r#"
[server]
listen = "127.0.0.1:0"
[[routes]]
name = "py"
prefix = "/py"
upstream = "{}"
transport = "{route_transport}"
auth = {{ kind = "bearer", token_file = "{{dir}}/upstream-token" }}
"#,
            upstream.url
        ),
        &[("upstream-token", TOKEN)],
    );
    let path = if client == "sse" {
        "/py/sse"
    } else {
        "/py/mcp"
    };
    let url = format!("{}{path}", gateway.url());
    let client = client.to_owned();
    let summary = tokio::task::spawn_blocking(move || {
        let args = [
            "--echo-arg",
            "text",
            "--slow-tool",
            "count",
            "--slow-args",
            r#"{"steps": 3}"#,
            // Ten seconds of counting: still under way when it is cancelled.
            "--cancel-args",
            r#"{"steps": 500}"#,
        ];
        run_client(&client, &url, &args)
    })
    .await
    .expect("client thread");
    assert_eq!(summary["echo"], "hello through the gateway", "{summary}");
    assert_eq!(summary["progress"], 3, "{summary}");
    assert_eq!(summary["slow_result"], "counted 3", "{summary}");
    assert_cancelled(&summary, "hello through the gateway");
}

#[tokio::test(flavor = "multi_thread")]
async fn python_sdk_client_and_server_over_streamable_http() {
    check_python_server("streamable", "streamable").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn python_sdk_client_and_server_over_legacy_sse() {
    check_python_server("sse", "sse").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn python_sdk_legacy_client_to_streamable_server_through_the_bridge() {
    check_python_server("streamable", "sse").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn python_sdk_streamable_client_to_legacy_server_through_the_bridge() {
    check_python_server("sse", "streamable").await;
}
