//! Two more real MCP clients that nobody here wrote, driven through a running gateway to
//! the mock upstream and to real servers nobody here wrote either: the reference
//! `server-everything` in its Streamable HTTP and legacy SSE modes (behind
//! `tests/interop/bearer_proxy.py`, since it checks no token itself), and a server built
//! with the Python SDK (`tests/interop/python_server.py`, with a bearer check of its own) in
//! both its modes. Each pair of client and server transport runs: proxied when the upstream
//! speaks the client's transport, through the gateway's bridge when it does not.
//!
//! The official TypeScript SDK client (`tests/interop/ts_client.mjs`) lists and calls tools,
//! counts a call's progress, and cancels a call under way; the mock must see the
//! cancellation. `mcp-remote`, the stdio bridge that desktop clients run, is fed JSON-RPC
//! lines on its stdin, lists the tools and calls `echo`, and must not start a sign-in of its
//! own; to the mock it also passes on a call's progress notifications and a cancellation the
//! desktop client sends, which the mock must see.
//!
//! Both run under the Node 22 that `scripts/interop-node.sh` installs with them (the README's
//! test command runs it). Each child gets an empty environment but for a `PATH` holding only
//! that Node and a temporary `HOME`, so that no proxy setting sends loopback traffic
//! elsewhere, nothing is written to the real home and no browser can be found; it is killed
//! when the test ends, however it ends.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::gateway::TestGateway;
use support::interop::{
    BEARER_TOKEN, PythonServer, mcp_remote, node, repo_file, server_everything_behind_bearer_check,
    typescript_sdk,
};
use support::mock_upstream::{MockOptions, MockUpstream};
use support::process::Running;

/// The route's token for every upstream: the mock's, and the one the Python servers check.
const TOKEN: &str = BEARER_TOKEN;
const ECHO_TEXT: &str = "hello through the gateway";

/// How long a client may take for its whole session before the test gives up on it.
const CLIENT_DEADLINE: Duration = Duration::from_secs(40);

/// How long `mcp-remote` may take to answer one request.
const ANSWER_DEADLINE: Duration = Duration::from_secs(20);

/// What the test knows of a real server: its name, and its `echo` tool's argument and
/// answer.
#[derive(Debug, Clone, Copy)]
struct ServerProfile {
    name: &'static str,
    echo_arg: &'static str,
    /// What `echo` puts before the text it was given.
    echo_prefix: &'static str,
}

const SERVER_EVERYTHING: ServerProfile = ServerProfile {
    name: "mcp-servers/everything",
    echo_arg: "message",
    echo_prefix: "Echo: ",
};

const PYTHON_SDK_SERVER: ServerProfile = ServerProfile {
    name: "python-sdk-server",
    echo_arg: "text",
    echo_prefix: "",
};

/// Node 22 with nothing inherited from the test's environment; `home` is its `HOME`.
fn node_command(home: &Path) -> Command {
    let node = node();
    let mut command = Command::new(&node);
    command.env_clear().env("HOME", home);
    if let Some(bin) = node.parent() {
        command.env("PATH", bin);
    }
    command
}

/// A pipe read to its end on a thread of its own, so that a full pipe never blocks the child.
fn drain(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    })
}

/// Waits for `process` to exit by itself; `None` once `deadline` passes.
fn wait_until(process: &mut Running, deadline: Instant) -> Option<ExitStatus> {
    loop {
        if let Some(status) = process.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// --- The TypeScript SDK client ---

/// Runs `ts_client.mjs` over `transport` at `url` and returns its summary line.
fn run_ts_client(transport: &str, url: &str, extra: &[&str]) -> Value {
    let home = tempfile::tempdir().expect("a temporary HOME");
    let mut command = node_command(home.path());
    command
        .arg(repo_file("tests/interop/ts_client.mjs"))
        .arg("--sdk")
        .arg(typescript_sdk())
        .args([
            "--transport",
            transport,
            "--url",
            url,
            "--expect-tool",
            "echo",
        ])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("start the TypeScript MCP client");
    let stdout = drain(child.stdout.take().expect("a piped stdout"));
    let stderr = drain(child.stderr.take().expect("a piped stderr"));
    let mut process = Running::new(child);

    let status = wait_until(&mut process, Instant::now() + CLIENT_DEADLINE);
    drop(process);
    let (stdout, stderr) = (
        stdout.join().expect("stdout reader"),
        stderr.join().expect("stderr reader"),
    );
    let status = status.unwrap_or_else(|| {
        panic!("the TypeScript client over {transport} did not finish: {stderr}")
    });
    assert!(
        status.success(),
        "the TypeScript client over {transport} failed ({status}): {stderr}"
    );
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|error| panic!("one JSON line ({error}): {stdout}"))
}

/// All three progress notifications of the slow call reached the client. The SDK runs the
/// progress callback a microtask after a notification but settles the call at once on its
/// response, so one that arrives in the same read as the response (over legacy SSE, the
/// last one nearly always, whether or not a gateway is in between) never reaches it.
fn assert_progress(summary: &Value) {
    assert_eq!(summary["progress"], 3, "{summary}");
    let callbacks = summary["progress_callbacks"].as_u64().unwrap_or_default();
    assert!((2..=3).contains(&callbacks), "{summary}");
}

/// The call under way was cancelled after its first progress notification: the SDK rejected
/// it with the client's reason and sent `notifications/cancelled` for it, which the gateway
/// accepted.
fn assert_cancelled(summary: &Value) {
    let cancel = &summary["cancel"];
    assert_eq!(
        cancel["rejected"], true,
        "the call was not cancelled: {summary}"
    );
    let message = cancel["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("cancelled by the interop client"),
        "{summary}"
    );
    assert_eq!(
        cancel["after_progress"], true,
        "no progress came first: {summary}"
    );
    assert_eq!(
        cancel["notified"], true,
        "notifications/cancelled was not accepted: {summary}"
    );
    assert!(
        summary["sent"]
            .as_array()
            .is_some_and(|sent| sent.contains(&json!("notifications/cancelled"))),
        "{summary}"
    );
}

/// A gateway with one bearer route `prefix` → `upstream` whose `transport` is
/// `route_transport`: `auto` proxies each client on its own transport unless the upstream
/// lacks it, `sse` bridges Streamable HTTP clients to the upstream's legacy transport.
fn gateway_to(prefix: &str, upstream: &str, route_transport: &str) -> TestGateway {
    support::gateway::start(
        &format!(
            r#"
[server]
listen = "127.0.0.1:0"

[[routes]]
name = "up"
prefix = "{prefix}"
upstream = "{upstream}"
transport = "{route_transport}"
auth = {{ kind = "bearer", token_file = "{{dir}}/upstream-token" }}
"#
        ),
        &[("upstream-token", TOKEN)],
    )
}

/// How the gateway reaches the mock upstream.
#[derive(Debug, Clone, Copy)]
struct MockRoute {
    /// Whether the mock serves the legacy transport as well as Streamable HTTP.
    legacy: bool,
    /// The route's `transport`.
    transport: &'static str,
}

/// Each client on its own transport, proxied.
const PROXIED: MockRoute = MockRoute {
    legacy: true,
    transport: "auto",
};

/// A mock without a legacy endpoint: legacy clients are bridged to Streamable HTTP.
const STREAMABLE_ONLY: MockRoute = MockRoute {
    legacy: false,
    transport: "auto",
};

/// A route held to the legacy transport: Streamable HTTP clients are bridged to it.
const LEGACY_ONLY: MockRoute = MockRoute {
    legacy: true,
    transport: "sse",
};

/// A mock upstream behind a one-route gateway at `/mock`.
async fn mock_behind_gateway(route: MockRoute) -> (MockUpstream, TestGateway) {
    let upstream = MockUpstream::start(MockOptions {
        token: TOKEN.into(),
        base_path: "/v1".into(),
        legacy: route.legacy,
        ..Default::default()
    })
    .await;
    let gateway = gateway_to("/mock", upstream.base_url(), route.transport);
    (upstream, gateway)
}

/// Every request the mock saw carried the gateway's token, none the client's.
fn assert_all_carry_gateway_token(upstream: &MockUpstream) {
    let requests = upstream.state().requests();
    assert!(!requests.is_empty(), "the mock saw no request");
    let expected = format!("Bearer {TOKEN}");
    for request in requests {
        assert_eq!(
            request.header("authorization"),
            Some(expected.as_str()),
            "{} {}",
            request.method,
            request.path
        );
    }
}

/// `POST`s the mock received at `path`, whatever their query string.
fn posts_to(upstream: &MockUpstream, path: &str) -> usize {
    upstream
        .state()
        .requests()
        .iter()
        .filter(|request| request.method == "POST" && request.path_without_query() == path)
        .count()
}

/// Polls `done` until it holds or five seconds pass; the caller's assertions then say what
/// was missing. The bridge sends a message upstream after it has answered the client, so
/// the last may still be on its way when the client is done.
async fn eventually(mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The TypeScript client to the mock at `path` over `transport`. The mock must have received
/// one `POST` at `message_path` for every message the client sent, the client's
/// `notifications/cancelled` for the cancelled call's id, and two calls of the slow tool.
/// Returns the gateway, for the caller to read its metrics.
async fn check_mock(
    transport: &str,
    path: &str,
    route: MockRoute,
    message_path: &str,
) -> TestGateway {
    let (upstream, gateway) = mock_behind_gateway(route).await;
    let url = format!("{}{path}", gateway.url());
    let transport_owned = transport.to_owned();
    let summary = tokio::task::spawn_blocking(move || run_ts_client(&transport_owned, &url, &[]))
        .await
        .expect("client thread");

    assert_eq!(summary["transport"], transport);
    assert_eq!(summary["server_name"], "mock-upstream", "{summary}");
    assert_eq!(summary["echo"], ECHO_TEXT);
    assert_progress(&summary);
    assert_eq!(summary["slow_result"], "done after 3 steps");
    assert_cancelled(&summary);
    assert_eq!(summary["echo_after_cancel"], ECHO_TEXT);

    let sent = summary["sent"].as_array().map_or(0, Vec::len);
    let state = upstream.state();
    let cancelled = || state.notifications("notifications/cancelled");
    eventually(|| posts_to(&upstream, message_path) >= sent && !cancelled().is_empty()).await;
    assert_eq!(
        posts_to(&upstream, message_path),
        sent,
        "posts at {message_path} for {summary}"
    );
    let notices = cancelled();
    assert_eq!(notices.len(), 1, "{notices:?}");
    let params = &notices[0]["params"];
    assert_eq!(
        params["requestId"], summary["cancel"]["request_id"],
        "{notices:?}"
    );
    assert_eq!(params["reason"], "cancelled by the interop client");
    assert_eq!(state.tool_calls("slow_stream"), 2);
    assert_eq!(state.tool_calls("echo"), 2);
    assert_all_carry_gateway_token(&upstream);
    gateway
}

/// The gateway's metrics count one `notifications/cancelled` it proxied, answered with a
/// 2xx status by the upstream.
async fn assert_cancellation_proxied(gateway: &TestGateway) {
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("an HTTP client");
    let metrics = client
        .get(format!("{}/metrics", gateway.url()))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    let counted = "mcp_gateway_requests_total{method=\"POST\",route=\"up\",\
                   rpc_method=\"notifications/cancelled\",status=\"2xx\"} 1";
    assert!(metrics.contains(counted), "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn ts_sdk_client_lists_calls_and_cancels_over_streamable_http() {
    let gateway = check_mock("streamable", "/mock/mcp", PROXIED, "/v1/mcp").await;
    assert_cancellation_proxied(&gateway).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ts_sdk_client_lists_calls_and_cancels_over_legacy_sse() {
    let gateway = check_mock("sse", "/mock/sse", PROXIED, "/v1/message").await;
    assert_cancellation_proxied(&gateway).await;
}

/// The SDK's legacy SSE client in front of a mock that speaks only Streamable HTTP: every
/// message, the cancellation notice too, goes upstream as a Streamable HTTP `POST`.
#[tokio::test(flavor = "multi_thread")]
async fn ts_sdk_legacy_client_lists_calls_and_cancels_through_the_bridge() {
    check_mock("sse", "/mock/sse", STREAMABLE_ONLY, "/v1/mcp").await;
}

/// The SDK's Streamable HTTP client in front of a route held to the legacy transport: every
/// message, the cancellation notice too, goes upstream as a legacy `POST`.
#[tokio::test(flavor = "multi_thread")]
async fn ts_sdk_client_lists_calls_and_cancels_through_the_bridge_to_legacy() {
    check_mock("streamable", "/mock/mcp", LEGACY_ONLY, "/v1/message").await;
}

/// The reference `server-everything` in `mode`, behind the bearer check (it has none of its
/// own) and a bearer route whose `transport` is `route_transport`; the SDK client goes
/// through the gateway at `path` over `transport`.
async fn check_server_everything(mode: &str, route_transport: &str, transport: &str, path: &str) {
    let (_everything, _check, upstream) = server_everything_behind_bearer_check(mode).await;
    let gateway = gateway_to("/everything", &upstream, route_transport);
    let url = format!("{}{path}", gateway.url());
    let transport_owned = transport.to_owned();
    let summary = tokio::task::spawn_blocking(move || {
        run_ts_client(
            &transport_owned,
            &url,
            &[
                "--echo-arg",
                "message",
                "--slow-tool",
                "trigger-long-running-operation",
                "--slow-args",
                r#"{"duration": 0.3, "steps": 3}"#,
                "--cancel-args",
                r#"{"duration": 10, "steps": 50}"#,
            ],
        )
    })
    .await
    .expect("client thread");

    assert_eq!(summary["server_name"], SERVER_EVERYTHING.name, "{summary}");
    let echoed = format!("{}{ECHO_TEXT}", SERVER_EVERYTHING.echo_prefix);
    assert_eq!(summary["echo"], echoed.as_str(), "{summary}");
    assert_progress(&summary);
    let done = summary["slow_result"].as_str().expect("result");
    assert!(done.contains("Steps: 3"), "{summary}");
    let tools = summary["tools"].as_array().expect("tools");
    assert!(tools.len() > 5, "the reference server's tools: {summary}");
    assert_cancelled(&summary);
    assert_eq!(summary["echo_after_cancel"], echoed.as_str(), "{summary}");
}

#[tokio::test(flavor = "multi_thread")]
async fn ts_sdk_client_reaches_server_everything_over_streamable_http() {
    check_server_everything("streamableHttp", "auto", "streamable", "/everything/mcp").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ts_sdk_client_reaches_server_everything_over_legacy_sse() {
    check_server_everything("sse", "auto", "sse", "/everything/sse").await;
}

/// The SDK's legacy SSE client, bridged to server-everything's Streamable HTTP mode, which
/// has no legacy endpoint at all.
#[tokio::test(flavor = "multi_thread")]
async fn ts_sdk_legacy_client_reaches_server_everything_streamable_through_the_bridge() {
    check_server_everything("streamableHttp", "auto", "sse", "/everything/sse").await;
}

/// The SDK's Streamable HTTP client, bridged to server-everything's legacy SSE mode by a
/// route held to that transport.
#[tokio::test(flavor = "multi_thread")]
async fn ts_sdk_client_reaches_server_everything_legacy_through_the_bridge() {
    check_server_everything("sse", "sse", "streamable", "/everything/mcp").await;
}

/// The Python SDK server over `server` (`streamable` or `sse`, behind its own bearer check)
/// behind a route at `/py` held to that transport, so that a client on the other one is
/// bridged.
fn python_server_behind_gateway(server: &str) -> (PythonServer, TestGateway) {
    let upstream = PythonServer::start(server);
    let route_transport = if server == "sse" { "sse" } else { "streamable" };
    let gateway = gateway_to("/py", &upstream.url, route_transport);
    (upstream, gateway)
}

/// The TypeScript client over `transport` to the Python SDK server over `server`, at `path`
/// on the gateway: its two tools, an echo, the progress of `count` and a cancelled `count`.
async fn check_python_server(server: &str, transport: &str, path: &str) {
    let (_server, gateway) = python_server_behind_gateway(server);
    let url = format!("{}{path}", gateway.url());
    let transport_owned = transport.to_owned();
    let summary = tokio::task::spawn_blocking(move || {
        run_ts_client(
            &transport_owned,
            &url,
            &[
                "--slow-tool",
                "count",
                "--slow-args",
                r#"{"steps": 3}"#,
                // Ten seconds of counting: still under way when it is cancelled.
                "--cancel-args",
                r#"{"steps": 500}"#,
            ],
        )
    })
    .await
    .expect("client thread");

    assert_eq!(summary["transport"], transport);
    assert_eq!(summary["server_name"], PYTHON_SDK_SERVER.name, "{summary}");
    assert_eq!(summary["tools"], json!(["count", "echo"]), "{summary}");
    assert_eq!(summary["echo"], ECHO_TEXT, "{summary}");
    assert_progress(&summary);
    assert_eq!(summary["slow_result"], "counted 3", "{summary}");
    assert_cancelled(&summary);
    assert_eq!(summary["echo_after_cancel"], ECHO_TEXT, "{summary}");
}

#[tokio::test(flavor = "multi_thread")]
async fn ts_sdk_client_and_python_sdk_server_over_streamable_http() {
    check_python_server("streamable", "streamable", "/py/mcp").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ts_sdk_client_and_python_sdk_server_over_legacy_sse() {
    check_python_server("sse", "sse", "/py/sse").await;
}

/// The SDK's legacy SSE client, bridged to the Python SDK server's Streamable HTTP.
#[tokio::test(flavor = "multi_thread")]
async fn ts_sdk_legacy_client_to_python_sdk_streamable_server_through_the_bridge() {
    check_python_server("streamable", "sse", "/py/sse").await;
}

/// The SDK's Streamable HTTP client, bridged to the Python SDK server's legacy SSE.
#[tokio::test(flavor = "multi_thread")]
async fn ts_sdk_client_to_python_sdk_legacy_server_through_the_bridge() {
    check_python_server("sse", "streamable", "/py/mcp").await;
}

// --- mcp-remote ---

/// `mcp-remote` started at a gateway URL, spoken to as the stdio MCP server it is to a
/// desktop client: one JSON-RPC message per line on its stdin and its stdout.
struct McpRemote {
    stdin: Option<ChildStdin>,
    /// Each line of its stdout, parsed; a line that is not JSON arrives as a string.
    lines: Receiver<Value>,
    stderr: Arc<Mutex<String>>,
    stderr_reader: Option<JoinHandle<()>>,
    /// Killed and reaped when dropped, also when a test fails half-way.
    process: Option<Running>,
    home: tempfile::TempDir,
}

impl McpRemote {
    /// `mcp-remote URL --transport STRATEGY`, with a temporary `HOME` for its state.
    fn start(url: &str, strategy: &str) -> Self {
        let home = tempfile::tempdir().expect("a temporary HOME");
        let mut child = node_command(home.path())
            .arg(mcp_remote())
            .args([url, "--transport", strategy, "--allow-http"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start mcp-remote");
        let stdin = child.stdin.take();
        let lines = read_lines(child.stdout.take().expect("a piped stdout"));
        let stderr = Arc::new(Mutex::new(String::new()));
        let stderr_reader = collect(child.stderr.take().expect("a piped stderr"), &stderr);
        McpRemote {
            stdin,
            lines,
            stderr,
            stderr_reader: Some(stderr_reader),
            process: Some(Running::new(child)),
            home,
        }
    }

    fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn send(&mut self, message: &Value) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        writeln!(stdin, "{message}")
            .and_then(|()| stdin.flush())
            .expect("write to mcp-remote");
    }

    /// Sends `request` and returns the message answering its id; others are skipped.
    fn request(&mut self, request: Value) -> Value {
        self.request_seeing(request).0
    }

    /// Sends `request` and returns the message answering its id, with every message that
    /// came before it.
    fn request_seeing(&mut self, request: Value) -> (Value, Vec<Value>) {
        self.send(&request);
        self.next_until(|message| message["id"] == request["id"], &request)
    }

    /// The first message for which `wanted` holds, with the messages skipped before it; a
    /// panic naming `awaited` if none comes within `ANSWER_DEADLINE`.
    fn next_until(
        &mut self,
        wanted: impl Fn(&Value) -> bool,
        awaited: &Value,
    ) -> (Value, Vec<Value>) {
        let deadline = Instant::now() + ANSWER_DEADLINE;
        let mut skipped = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(message) if wanted(&message) => return (message, skipped),
                Ok(message) => skipped.push(message),
                Err(RecvTimeoutError::Timeout) => panic!(
                    "nothing came for {awaited} but {skipped:?}; mcp-remote said: {}",
                    self.stderr()
                ),
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "mcp-remote ended while awaiting {awaited}, after {skipped:?}: {}",
                    self.stderr()
                ),
            }
        }
    }

    /// Closes stdin, which tells `mcp-remote` to shut down, and waits for it to exit; one
    /// that does not exit in time is killed.
    fn finish(mut self) -> Finished {
        drop(self.stdin.take());
        let mut exited = false;
        if let Some(mut process) = self.process.take() {
            let deadline = Instant::now() + Duration::from_secs(5);
            exited = wait_until(&mut process, deadline).is_some();
            // Dropping the guard kills what is left and reaps it, which closes its stderr.
            drop(process);
        }
        if let Some(reader) = self.stderr_reader.take() {
            let _ = reader.join();
        }
        Finished {
            exited,
            stderr: self.stderr(),
            files_left: self.files_left(),
        }
    }

    /// The files under `mcp-remote`'s `HOME`.
    fn files_left(&self) -> Vec<String> {
        let mut files = Vec::new();
        let mut dirs = vec![self.home.path().to_path_buf()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir)
                .expect("read the temporary HOME")
                .flatten()
            {
                let path = entry.path();
                if path.is_dir() {
                    dirs.push(path);
                } else {
                    files.push(path.display().to_string());
                }
            }
        }
        files
    }
}

/// The lines of `stdout` as they come, each parsed as JSON.
fn read_lines(stdout: impl Read + Send + 'static) -> Receiver<Value> {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let message = serde_json::from_str(&line).unwrap_or(Value::String(line));
            if sender.send(message).is_err() {
                break;
            }
        }
    });
    receiver
}

/// Appends each line of `stderr` to `into` as it comes, so that a test can show it mid-way.
fn collect(stderr: impl Read + Send + 'static, into: &Arc<Mutex<String>>) -> JoinHandle<()> {
    let into = Arc::clone(into);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut text = into.lock().unwrap_or_else(PoisonError::into_inner);
            text.push_str(&line);
            text.push('\n');
        }
    })
}

/// How `mcp-remote` ended.
#[derive(Debug)]
struct Finished {
    /// Whether it exited by itself once its stdin closed.
    exited: bool,
    stderr: String,
    /// Files left under its `HOME`: client registrations, tokens, locks.
    files_left: Vec<String>,
}

/// What a desktop client got through `mcp-remote`: the answers to its requests.
#[derive(Debug)]
struct RemoteSession {
    initialize: Value,
    tools: Value,
    echo: Value,
    finished: Finished,
}

/// A desktop client's first session through `mcp-remote` at `url`: the handshake, the tool
/// list and one call of `echo` with `ECHO_TEXT` as its argument `echo_arg`.
fn run_remote_session(url: &str, strategy: &str, echo_arg: &str) -> RemoteSession {
    let (remote, session) = start_remote_session(url, strategy, echo_arg);
    session(remote.finish())
}

/// The first steps of `run_remote_session`, leaving `mcp-remote` running for more; the
/// session is complete once given how `mcp-remote` finished.
fn start_remote_session(
    url: &str,
    strategy: &str,
    echo_arg: &str,
) -> (McpRemote, impl FnOnce(Finished) -> RemoteSession) {
    let mut remote = McpRemote::start(url, strategy);
    let initialize = remote.request(support::initialize_request());
    remote.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
    let tools = remote.request(json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}));
    let echo = remote.request(tool_call(3, "echo", json!({echo_arg: ECHO_TEXT}), None));
    let session = move |finished| RemoteSession {
        initialize,
        tools,
        echo,
        finished,
    };
    (remote, session)
}

/// A `tools/call` request, asking for progress notifications when `progress_token` is set.
fn tool_call(id: u64, tool: &str, arguments: Value, progress_token: Option<&str>) -> Value {
    let mut params = json!({"name": tool, "arguments": arguments});
    if let Some(token) = progress_token {
        params["_meta"] = json!({"progressToken": token});
    }
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params})
}

/// Whether `message` is a `notifications/progress` for `token`.
fn is_progress_for(message: &Value, token: &str) -> bool {
    message["method"] == "notifications/progress" && message["params"]["progressToken"] == token
}

/// The `progress` values of the `notifications/progress` for `token` among `messages`.
fn progress_for(messages: &[Value], token: &str) -> Vec<Value> {
    messages
        .iter()
        .filter(|message| is_progress_for(message, token))
        .map(|message| message["params"]["progress"].clone())
        .collect()
}

/// The JSON-RPC id of the `slow_stream` call the desktop client cancels.
const CANCELLED_CALL_ID: u64 = 5;
const CANCEL_REASON: &str = "cancelled by the desktop client";

/// What the desktop client saw of the mock's `slow_stream` through `mcp-remote`.
#[derive(Debug)]
struct SlowCalls {
    /// The answer to a call of three steps.
    result: Value,
    /// The `progress` values of that call's notifications that came before its answer.
    progress: Vec<Value>,
    /// The answer to an `echo` after the second call was cancelled.
    echo_after_cancel: Value,
}

/// Calls `slow_stream` for three quick steps, asking for progress; then starts a long call
/// (`CANCELLED_CALL_ID`) and sends `notifications/cancelled` for it once its first progress
/// notification has arrived; then calls `echo` again.
fn progress_and_cancel(remote: &mut McpRemote) -> SlowCalls {
    let quick = json!({"steps": 3, "interval_ms": 50});
    let call = tool_call(4, "slow_stream", quick, Some("quick"));
    let (result, before) = remote.request_seeing(call);

    // Long enough to be under way when it is cancelled.
    let long = json!({"steps": 100, "interval_ms": 100});
    let call = tool_call(CANCELLED_CALL_ID, "slow_stream", long, Some("long"));
    remote.send(&call);
    let (first, _) = remote.next_until(
        |message| message["id"] == call["id"] || is_progress_for(message, "long"),
        &call,
    );
    assert_eq!(
        first["method"], "notifications/progress",
        "the long call ended before its first progress: {first}"
    );
    remote.send(&json!({
        "jsonrpc": "2.0",
        "method": "notifications/cancelled",
        "params": {"requestId": CANCELLED_CALL_ID, "reason": CANCEL_REASON},
    }));

    let echo = tool_call(6, "echo", json!({"text": ECHO_TEXT}), None);
    SlowCalls {
        result,
        progress: progress_for(&before, "quick"),
        echo_after_cancel: remote.request(echo),
    }
}

/// `mcp-remote` shut down once its stdin closed, and never started a sign-in, which the
/// gateway does not need from it: no authorization URL, no callback server, nothing stored.
fn assert_left_without_sign_in(finished: &Finished) {
    let stderr = &finished.stderr;
    assert!(finished.exited, "mcp-remote did not shut down: {stderr}");
    assert!(!stderr.contains("Please authorize"), "{stderr}");
    assert!(!stderr.contains("running the sign-in"), "{stderr}");
    assert_eq!(finished.files_left, Vec::<String>::new(), "{stderr}");
}

/// `mcp-remote` forced onto one transport (`strategy`) to the mock at `path` on the gateway;
/// the mock must see the messages at `message_path` and none at `other_path`, which the
/// other transport would use. The desktop client also gets a call's progress before its
/// answer, and cancels a second call, which the mock must learn of.
async fn check_mcp_remote(
    path: &str,
    strategy: &str,
    route: MockRoute,
    message_path: &str,
    other_path: &str,
) {
    let (upstream, gateway) = mock_behind_gateway(route).await;
    let url = format!("{}{path}", gateway.url());
    let strategy_owned = strategy.to_owned();
    let (session, slow) = tokio::task::spawn_blocking(move || {
        let (mut remote, session) = start_remote_session(&url, &strategy_owned, "text");
        let slow = progress_and_cancel(&mut remote);
        (session(remote.finish()), slow)
    })
    .await
    .expect("mcp-remote thread");
    let stderr = &session.finished.stderr;

    assert_eq!(
        session.initialize["result"]["serverInfo"]["name"], "mock-upstream",
        "{}: {stderr}",
        session.initialize
    );
    let tools = session.tools["result"]["tools"].as_array().expect("tools");
    assert!(
        tools.iter().any(|tool| tool["name"] == "echo"),
        "{}",
        session.tools
    );
    assert_eq!(
        session.echo["result"]["content"][0]["text"], ECHO_TEXT,
        "{}",
        session.echo
    );
    assert_progress_and_cancellation(&upstream, &slow).await;
    assert_eq!(upstream.state().tool_calls("echo"), 2);
    // The desktop client's eight messages at least; mcp-remote may add a handshake of its own.
    assert!(posts_to(&upstream, message_path) >= 8, "{stderr}");
    assert_eq!(posts_to(&upstream, other_path), 0, "{stderr}");
    assert_all_carry_gateway_token(&upstream);
    assert_left_without_sign_in(&session.finished);

    // Nor did anything reach the upstream's authorization server (which the mock serves
    // outside `/v1`).
    assert!(upstream.state().oauth().registered_clients().is_empty());
    assert_eq!(upstream.state().oauth().token_requests(), 0);
    for request in upstream.state().requests() {
        assert!(
            request.path.starts_with("/v1/"),
            "{} {}",
            request.method,
            request.path
        );
    }
}

/// The three progress notifications of the quick call reached the desktop client, in order
/// and before its answer; the cancellation of the long one reached the mock, under the id
/// the desktop client gave the call, and the session went on.
async fn assert_progress_and_cancellation(upstream: &MockUpstream, slow: &SlowCalls) {
    assert_eq!(slow.progress, [json!(1), json!(2), json!(3)], "{slow:?}");
    assert_eq!(
        slow.result["result"]["content"][0]["text"], "done after 3 steps",
        "{slow:?}"
    );
    assert_eq!(
        slow.echo_after_cancel["result"]["content"][0]["text"], ECHO_TEXT,
        "{slow:?}"
    );

    let state = upstream.state();
    let cancelled = || state.notifications("notifications/cancelled");
    eventually(|| !cancelled().is_empty()).await;
    let notices = cancelled();
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert_eq!(
        notices[0]["params"],
        json!({"requestId": CANCELLED_CALL_ID, "reason": CANCEL_REASON}),
        "{notices:?}"
    );
    assert_eq!(state.tool_calls("slow_stream"), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn mcp_remote_lists_calls_and_cancels_over_streamable_http() {
    check_mcp_remote("/mock/mcp", "http-only", PROXIED, "/v1/mcp", "/v1/message").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mcp_remote_lists_calls_and_cancels_over_legacy_sse() {
    check_mcp_remote("/mock/sse", "sse-only", PROXIED, "/v1/message", "/v1/mcp").await;
}

/// `mcp-remote` on the legacy transport in front of a mock that speaks only Streamable HTTP.
#[tokio::test(flavor = "multi_thread")]
async fn mcp_remote_lists_calls_and_cancels_over_legacy_sse_through_the_bridge() {
    check_mcp_remote(
        "/mock/sse",
        "sse-only",
        STREAMABLE_ONLY,
        "/v1/mcp",
        "/v1/message",
    )
    .await;
}

/// `mcp-remote` on Streamable HTTP in front of a route held to the legacy transport.
#[tokio::test(flavor = "multi_thread")]
async fn mcp_remote_lists_calls_and_cancels_over_streamable_http_through_the_bridge_to_legacy() {
    check_mcp_remote(
        "/mock/mcp",
        "http-only",
        LEGACY_ONLY,
        "/v1/message",
        "/v1/mcp",
    )
    .await;
}

/// `mcp-remote` forced onto one transport (`strategy`) to `server` at `path` on the
/// gateway: the server's name and tools, and its echo.
async fn check_mcp_remote_to(
    gateway: &TestGateway,
    path: &str,
    strategy: &str,
    server: ServerProfile,
) {
    let url = format!("{}{path}", gateway.url());
    let strategy_owned = strategy.to_owned();
    let session = tokio::task::spawn_blocking(move || {
        run_remote_session(&url, &strategy_owned, server.echo_arg)
    })
    .await
    .expect("mcp-remote thread");
    let stderr = &session.finished.stderr;

    assert_eq!(
        session.initialize["result"]["serverInfo"]["name"], server.name,
        "{}: {stderr}",
        session.initialize
    );
    let tools = session.tools["result"]["tools"].as_array().expect("tools");
    assert!(
        tools.iter().any(|tool| tool["name"] == "echo"),
        "{}",
        session.tools
    );
    let echoed = format!("{}{ECHO_TEXT}", server.echo_prefix);
    assert_eq!(
        session.echo["result"]["content"][0]["text"],
        echoed.as_str(),
        "{}",
        session.echo
    );
    assert_left_without_sign_in(&session.finished);
}

/// `mcp-remote` on `strategy` to server-everything in `mode`, behind the bearer check and a
/// route whose `transport` is `route_transport`.
async fn check_mcp_remote_to_everything(
    mode: &str,
    route_transport: &str,
    strategy: &str,
    path: &str,
) {
    let (_everything, _check, upstream) = server_everything_behind_bearer_check(mode).await;
    let gateway = gateway_to("/everything", &upstream, route_transport);
    check_mcp_remote_to(&gateway, path, strategy, SERVER_EVERYTHING).await;
}

/// `mcp-remote` on `strategy` to the Python SDK server over `server`.
async fn check_mcp_remote_to_python(server: &str, strategy: &str, path: &str) {
    let (_server, gateway) = python_server_behind_gateway(server);
    check_mcp_remote_to(&gateway, path, strategy, PYTHON_SDK_SERVER).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mcp_remote_reaches_server_everything_over_streamable_http() {
    check_mcp_remote_to_everything("streamableHttp", "auto", "http-only", "/everything/mcp").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mcp_remote_reaches_server_everything_over_legacy_sse() {
    check_mcp_remote_to_everything("sse", "auto", "sse-only", "/everything/sse").await;
}

/// `mcp-remote` on the legacy transport, bridged to server-everything's Streamable HTTP
/// mode, which has no legacy endpoint at all.
#[tokio::test(flavor = "multi_thread")]
async fn mcp_remote_legacy_reaches_server_everything_streamable_through_the_bridge() {
    check_mcp_remote_to_everything("streamableHttp", "auto", "sse-only", "/everything/sse").await;
}

/// `mcp-remote` on Streamable HTTP, bridged to server-everything's legacy SSE mode by a
/// route held to that transport.
#[tokio::test(flavor = "multi_thread")]
async fn mcp_remote_reaches_server_everything_legacy_through_the_bridge() {
    check_mcp_remote_to_everything("sse", "sse", "http-only", "/everything/mcp").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mcp_remote_reaches_python_sdk_server_over_streamable_http() {
    check_mcp_remote_to_python("streamable", "http-only", "/py/mcp").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mcp_remote_reaches_python_sdk_server_over_legacy_sse() {
    check_mcp_remote_to_python("sse", "sse-only", "/py/sse").await;
}

/// `mcp-remote` on the legacy transport, bridged to the Python SDK server's Streamable HTTP.
#[tokio::test(flavor = "multi_thread")]
async fn mcp_remote_legacy_reaches_python_sdk_streamable_server_through_the_bridge() {
    check_mcp_remote_to_python("streamable", "sse-only", "/py/sse").await;
}

/// `mcp-remote` on Streamable HTTP, bridged to the Python SDK server's legacy SSE.
#[tokio::test(flavor = "multi_thread")]
async fn mcp_remote_reaches_python_sdk_legacy_server_through_the_bridge() {
    check_mcp_remote_to_python("sse", "http-only", "/py/mcp").await;
}
