//! The official Rust MCP SDK, `rmcp`, as a client nobody here wrote, driven through the
//! gateway over Streamable HTTP: straight through to the mock upstream, and through the
//! bridge to a legacy-only upstream behind a `transport = "sse"` route. The client opens a
//! session, reads the server's name, lists and calls tools, receives a call's progress
//! notifications in its own handler, cancels a call in flight and leaves, which must end its
//! session upstream too.
//!
//! The same session, short of the cancel, goes to real servers nobody here wrote either,
//! each in both its modes: the reference `server-everything` (behind the bearer check of
//! `tests/interop/bearer_proxy.py`, since it has none) and the Python SDK server of
//! `tests/interop/python_server.py`; straight through to Streamable HTTP, through the bridge
//! to legacy SSE.
//!
//! rmcp has no legacy HTTP+SSE client transport any more (it was removed in 0.11), so the
//! gateway's `/sse` endpoints are left to the other SDKs' interoperability tests.

mod support;

use std::future::Future;
use std::time::{Duration, Instant};

use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientRequest, ContentBlock, JsonObject,
    ProgressNotificationParam, Request, ServerResult,
};
use rmcp::service::{NotificationContext, PeerRequestOptions, RequestHandle, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::{Value, json};
use support::gateway::{TestGateway, single_route, start};
use support::interop::{BEARER_TOKEN, PythonServer, server_everything_behind_bearer_check};
use support::mock_upstream::{MockOptions, MockUpstream};
use tokio::sync::mpsc;

/// The mock upstream's token.
const TOKEN: &str = "test-token";

/// How long any one step may take before the test fails instead of hanging.
const STEP: Duration = Duration::from_secs(5);

const CANCEL_REASON: &str = "the test stops waiting";

/// A mock upstream serving both transports, behind a plain route at `/up`.
async fn passthrough() -> (MockUpstream, TestGateway) {
    let upstream = MockUpstream::start(MockOptions::default()).await;
    let gateway = single_route("/up", upstream.base_url(), TOKEN, "");
    (upstream, gateway)
}

/// A legacy-only mock upstream behind a `transport = "sse"` route at `/up`, so that the
/// gateway bridges Streamable HTTP clients to it.
async fn bridged_to_legacy() -> (MockUpstream, TestGateway) {
    let upstream = MockUpstream::start(MockOptions {
        streamable: false,
        ..Default::default()
    })
    .await;
    let gateway = route_to(upstream.base_url(), "sse", TOKEN);
    (upstream, gateway)
}

/// A gateway with one bearer route at `/up` to `upstream`, whose `transport` is
/// `route_transport` and which sends `token` upstream.
fn route_to(upstream: &str, route_transport: &str, token: &str) -> TestGateway {
    start(
        &format!(
            r#"
[server]
listen = "127.0.0.1:0"

[[routes]]
name = "up"
prefix = "/up"
upstream = "{upstream}"
transport = "{route_transport}"
auth = {{ kind = "bearer", token_file = "{{dir}}/upstream-token" }}
"#
        ),
        &[("upstream-token", token)],
    )
}

/// An rmcp client handler that passes on every progress notification it receives.
#[derive(Debug)]
struct ProgressForwarder {
    progress: mpsc::UnboundedSender<ProgressNotificationParam>,
}

impl ClientHandler for ProgressForwarder {
    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        // The receiver is gone only once the test has finished with the client.
        let _ = self.progress.send(params);
    }
}

/// A connected rmcp client and the progress notifications its handler has received.
struct Client {
    service: RunningService<RoleClient, ProgressForwarder>,
    progress: mpsc::UnboundedReceiver<ProgressNotificationParam>,
}

/// Connects rmcp's Streamable HTTP client to `{gateway}/up/mcp`, `initialize` included.
async fn connect(gateway: &TestGateway) -> Client {
    let (sender, progress) = mpsc::unbounded_channel();
    let transport = StreamableHttpClientTransport::from_uri(format!("{}/up/mcp", gateway.url()));
    let handler = ProgressForwarder { progress: sender };
    let service = within("initialize", handler.serve(transport))
        .await
        .expect("rmcp initializes a session through the gateway");
    Client { service, progress }
}

/// Fails the test if `future` takes longer than [`STEP`].
async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {STEP:?}"))
}

/// Polls `condition` until it holds; fails the test after [`STEP`].
async fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + STEP;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {STEP:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn arguments(value: Value) -> JsonObject {
    match value {
        Value::Object(map) => map,
        other => panic!("tool arguments must be an object, not {other}"),
    }
}

/// Sends a `tools/call` whose handle knows the request's id and progress token.
async fn start_call(client: &Client, tool: &'static str, args: Value) -> RequestHandle<RoleClient> {
    let params = CallToolRequestParams::new(tool).with_arguments(arguments(args));
    let request = ClientRequest::CallToolRequest(Request::new(params));
    within(
        "sending tools/call",
        client
            .service
            .send_cancellable_request(request, PeerRequestOptions::no_options()),
    )
    .await
    .expect("rmcp sends tools/call")
}

/// Waits for the answer to a `tools/call`.
async fn tool_result(handle: RequestHandle<RoleClient>) -> CallToolResult {
    match within("tools/call", handle.await_response()).await {
        Ok(ServerResult::CallToolResult(result)) => result,
        other => panic!("expected a tools/call result, got {other:?}"),
    }
}

fn first_text(result: &CallToolResult) -> &str {
    let text = result.content.first().and_then(ContentBlock::as_text);
    text.map_or("", |text| text.text.as_str())
}

async fn next_progress(client: &mut Client) -> ProgressNotificationParam {
    within("a progress notification", client.progress.recv())
        .await
        .expect("the client's handler is alive")
}

/// What the test knows of a server: its name, its `echo` tool, and a tool that reports
/// progress three times before it answers.
#[derive(Debug, Clone, Copy)]
struct ServerProfile {
    name: &'static str,
    /// The argument `echo` takes its text in.
    echo_arg: &'static str,
    /// What `echo` puts before the text it was given.
    echo_prefix: &'static str,
    slow_tool: &'static str,
    /// The slow tool's arguments (JSON) for three steps, and its answer to them.
    slow_args: &'static str,
    slow_result: &'static str,
}

const MOCK: ServerProfile = ServerProfile {
    name: "mock-upstream",
    echo_arg: "text",
    echo_prefix: "",
    slow_tool: "slow_stream",
    slow_args: r#"{"steps": 3, "interval_ms": 50}"#,
    slow_result: "done after 3 steps",
};

const SERVER_EVERYTHING: ServerProfile = ServerProfile {
    name: "mcp-servers/everything",
    echo_arg: "message",
    echo_prefix: "Echo: ",
    slow_tool: "trigger-long-running-operation",
    slow_args: r#"{"duration": 0.3, "steps": 3}"#,
    slow_result: "Long running operation completed. Duration: 0.3 seconds, Steps: 3.",
};

const PYTHON_SDK_SERVER: ServerProfile = ServerProfile {
    name: "python-sdk-server",
    echo_arg: "text",
    echo_prefix: "",
    slow_tool: "count",
    slow_args: r#"{"steps": 3}"#,
    slow_result: "counted 3",
};

/// What rmcp sees of the session with `server`: its name, its tools, an `echo` call, and a
/// call of its slow tool whose three progress notifications reach the client's handler.
async fn check_session(client: &mut Client, server: ServerProfile) {
    let info = client
        .service
        .peer_info()
        .expect("server info after initialize");
    let name = info.server_info.as_ref().map(|info| info.name.as_str());
    assert_eq!(name, Some(server.name));

    let tools = within("tools/list", client.service.list_all_tools())
        .await
        .expect("rmcp lists tools");
    let names: Vec<&str> = tools.iter().map(|tool| tool.name.as_ref()).collect();
    assert!(names.contains(&"echo"), "{names:?}");
    assert!(names.contains(&server.slow_tool), "{names:?}");

    let echo_args = json!({server.echo_arg: "hello from rmcp"});
    let result = tool_result(start_call(client, "echo", echo_args).await).await;
    let echoed = format!("{}hello from rmcp", server.echo_prefix);
    assert_eq!(first_text(&result), echoed);
    // A server may leave `isError` out of a success.
    assert_ne!(result.is_error, Some(true), "{result:?}");

    // rmcp puts a progress token on every request; the server reports progress against it.
    let slow_args = serde_json::from_str(server.slow_args).expect("JSON arguments");
    let slow = start_call(client, server.slow_tool, slow_args).await;
    let token = slow.progress_token.clone();
    let result = tool_result(slow).await;
    assert_eq!(first_text(&result), server.slow_result);
    let mut steps = Vec::new();
    for _ in 0..3 {
        let progress = next_progress(client).await;
        assert_eq!(progress.progress_token, token);
        assert_eq!(progress.total, Some(3.0));
        steps.push(progress.progress);
    }
    // The handler runs in a task of its own per notification, so order is not promised.
    steps.sort_by(f64::total_cmp);
    assert_eq!(steps, [1.0, 2.0, 3.0]);
    assert!(client.progress.try_recv().is_err(), "only three steps");
}

/// Every request the upstream saw carried the route's token: the client sent none.
fn assert_upstream_saw_route_token(upstream: &MockUpstream) {
    let requests = upstream.state().requests();
    assert!(!requests.is_empty());
    for request in requests {
        let authorization = request.header("authorization");
        assert_eq!(authorization, Some("Bearer test-token"), "{request:?}");
    }
}

/// `POST`s the upstream has seen to `path` (query string ignored).
fn posts_to(upstream: &MockUpstream, path: &str) -> usize {
    let requests = upstream.state().requests();
    let posts = requests
        .iter()
        .filter(|request| request.method == "POST" && request.path_without_query() == path);
    posts.count()
}

/// Cancels a long `slow_stream` call once its first progress arrives. rmcp then posts
/// `notifications/cancelled`, which must reach the upstream with the call's id and the
/// reason; the call is not repeated and the session goes on answering.
async fn check_cancel(client: &mut Client, upstream: &MockUpstream) {
    let slow = start_call(
        client,
        "slow_stream",
        json!({"steps": 50, "interval_ms": 100}),
    )
    .await;
    let first = next_progress(client).await;
    assert_eq!(first.progress_token, slow.progress_token);
    assert_eq!(upstream.state().tool_calls("slow_stream"), 1);

    let id = json!(slow.id);
    within("cancelling", slow.cancel(Some(CANCEL_REASON.into())))
        .await
        .expect("rmcp sends notifications/cancelled");
    let state = upstream.state();
    wait_until("notifications/cancelled reaching the upstream", || {
        !state.notifications("notifications/cancelled").is_empty()
    })
    .await;
    let cancelled = state.notifications("notifications/cancelled");
    assert_eq!(cancelled.len(), 1, "{cancelled:?}");
    assert_eq!(cancelled[0]["params"]["requestId"], id, "{cancelled:?}");
    assert_eq!(cancelled[0]["params"]["reason"], CANCEL_REASON);
    assert_eq!(
        upstream.state().tool_calls("slow_stream"),
        1,
        "not called again"
    );

    let echo = start_call(client, "echo", json!({"text": "after the cancel"})).await;
    assert_eq!(first_text(&tool_result(echo).await), "after the cancel");
}

/// Closes the client, which ends its session.
async fn close(client: Client) {
    let Client { mut service, .. } = client;
    within("closing the client", service.close())
        .await
        .expect("rmcp closes cleanly");
}

/// Closes the client; the upstream's streams close with its session.
async fn leave(client: Client, upstream: &MockUpstream) {
    close(client).await;
    let closed = upstream.state().wait_for_open_streams(0, STEP).await;
    assert!(
        closed,
        "{} upstream streams still open",
        upstream.state().open_streams()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rmcp_client_works_through_streamable_http_passthrough() {
    let (upstream, gateway) = passthrough().await;
    let mut client = connect(&gateway).await;
    check_session(&mut client, MOCK).await;
    assert_eq!(upstream.state().tool_calls("echo"), 1);
    assert_eq!(upstream.state().live_sessions(), 1);

    leave(client, &upstream).await;
    // rmcp's DELETE went through to the upstream.
    wait_until("the upstream session ending", || {
        upstream.state().live_sessions() == 0
    })
    .await;
    assert_upstream_saw_route_token(&upstream);
}

#[tokio::test(flavor = "multi_thread")]
async fn rmcp_client_works_through_bridge_to_legacy_upstream() {
    let (upstream, gateway) = bridged_to_legacy().await;
    let mut client = connect(&gateway).await;
    check_session(&mut client, MOCK).await;
    assert_eq!(upstream.state().tool_calls("echo"), 1);
    // One legacy stream carries the session; `initialize`, `notifications/initialized`,
    // `tools/list` and the two calls were each posted to the endpoint it announced.
    assert_eq!(upstream.state().open_streams(), 1);
    assert_eq!(posts_to(&upstream, "/message"), 5);

    leave(client, &upstream).await;
    assert_upstream_saw_route_token(&upstream);
}

#[tokio::test(flavor = "multi_thread")]
async fn rmcp_cancel_reaches_upstream_through_passthrough() {
    let (upstream, gateway) = passthrough().await;
    let mut client = connect(&gateway).await;
    check_cancel(&mut client, &upstream).await;
    leave(client, &upstream).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rmcp_cancel_reaches_legacy_upstream_through_bridge() {
    let (upstream, gateway) = bridged_to_legacy().await;
    let mut client = connect(&gateway).await;
    check_cancel(&mut client, &upstream).await;
    leave(client, &upstream).await;
}

/// rmcp's session with server-everything in `mode`, behind the bearer check and a route
/// whose `transport` is `route_transport`.
async fn check_server_everything(mode: &str, route_transport: &str) {
    let (_everything, _check, upstream) = server_everything_behind_bearer_check(mode).await;
    let gateway = route_to(&upstream, route_transport, BEARER_TOKEN);
    let mut client = connect(&gateway).await;
    check_session(&mut client, SERVER_EVERYTHING).await;
    close(client).await;
}

/// rmcp's session with the Python SDK server over `server` (`streamable` or `sse`), behind
/// a route held to that transport.
async fn check_python_server(server: &str) {
    let upstream = PythonServer::start(server);
    let gateway = route_to(&upstream.url, server, BEARER_TOKEN);
    let mut client = connect(&gateway).await;
    check_session(&mut client, PYTHON_SDK_SERVER).await;
    close(client).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rmcp_client_reaches_server_everything_through_streamable_http_passthrough() {
    check_server_everything("streamableHttp", "auto").await;
}

/// server-everything's legacy SSE mode, reached through the bridge.
#[tokio::test(flavor = "multi_thread")]
async fn rmcp_client_reaches_server_everything_legacy_through_the_bridge() {
    check_server_everything("sse", "sse").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rmcp_client_reaches_python_sdk_server_through_streamable_http_passthrough() {
    check_python_server("streamable").await;
}

/// The Python SDK server's legacy SSE, reached through the bridge.
#[tokio::test(flavor = "multi_thread")]
async fn rmcp_client_reaches_python_sdk_legacy_server_through_the_bridge() {
    check_python_server("sse").await;
}
