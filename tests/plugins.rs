//! The built-in plugins through a running gateway: `headers` (values from the environment,
//! removals, response headers), `rate_limit` (per client, 429 with `Retry-After`, as a
//! JSON-RPC error for JSON-RPC requests) and `audit_log` (one line per JSON-RPC request,
//! with no argument, key or token unless arguments are asked for).

mod support;

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use support::gateway::{TestGateway, start};
use support::mock_upstream::{MockOptions, MockUpstream};

const TOKEN: &str = "plugins-upstream-token";

async fn upstream() -> MockUpstream {
    MockUpstream::start(MockOptions {
        token: TOKEN.into(),
        ..Default::default()
    })
    .await
}

/// A route `/up` to the mock with `plugins` (`[[routes.plugins]]` tables) and
/// `server_extra` in `[server]`.
fn config(upstream: &MockUpstream, server_extra: &str, plugins: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
{server_extra}

[[routes]]
name = "up"
prefix = "/up"
upstream = "{}"
auth = {{ kind = "bearer", token_file = "{{dir}}/upstream-token" }}
{plugins}
"#,
        upstream.base_url()
    )
}

fn gateway(upstream: &MockUpstream, server_extra: &str, plugins: &str) -> TestGateway {
    start(
        &config(upstream, server_extra, plugins),
        &[("upstream-token", TOKEN)],
    )
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
}

async fn post(base: &str, key: Option<&str>, body: &Value) -> reqwest::Response {
    let mut request = client()
        .post(format!("{base}/up/mcp"))
        .header("accept", "application/json, text/event-stream")
        .json(body);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    request.send().await.expect("post")
}

/// The gateway binary on `config` with `env` added; returns it and its base URL.
fn serve(config: &Path, env: &[(&str, &str)]) -> (Child, String) {
    let mut child = support::process::gateway_command()
        .envs(env.iter().copied())
        .args(["serve", "--config"])
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn serve");
    let base = support::process::listening_url(&mut child);
    (child, base)
}

#[tokio::test(flavor = "multi_thread")]
async fn headers_set_from_the_environment_remove_and_reach_the_client() {
    let upstream = upstream().await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("upstream-token"), TOKEN).expect("token");
    let plugins = r#"
[[routes.plugins]]
kind = "headers"
request.set = { "X-Api-Key" = { env = "PLUGIN_TEST_API_KEY" }, "X-Team" = "platform" }
request.remove = ["X-Debug"]
response.set = { "X-Robots-Tag" = "noindex" }
response.remove = ["X-Mock"]
"#;
    let text = config(&upstream, "", plugins).replace("{dir}", &dir.path().to_string_lossy());
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, text).expect("config");
    let (mut child, base) = serve(&path, &[("PLUGIN_TEST_API_KEY", "key-from-env-42")]);

    let response = client()
        .post(format!("{base}/up/anything"))
        .header("x-debug", "client-side")
        .body("{}")
        .send()
        .await
        .expect("request");
    assert_eq!(response.headers()["x-robots-tag"], "noindex");
    let _ = child.kill();
    let _ = child.wait();

    let seen = upstream
        .state()
        .last_request_to("/anything")
        .expect("reached the upstream");
    assert_eq!(seen.header("x-api-key"), Some("key-from-env-42"));
    assert_eq!(seen.header("x-team"), Some("platform"));
    assert_eq!(seen.header("x-debug"), None);
    assert_eq!(
        seen.header("authorization"),
        Some(&format!("Bearer {TOKEN}")[..])
    );

    // Without the variable the gateway does not start, and says which one is missing.
    let output = support::process::gateway_command()
        .env_remove("PLUGIN_TEST_API_KEY")
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("check");
    assert_eq!(output.status.code(), Some(1));
    let printed = String::from_utf8_lossy(&output.stderr);
    assert!(
        printed.contains("routes[0].plugins[0]")
            && printed.contains("plugin headers: request.set.X-Api-Key")
            && printed.contains("PLUGIN_TEST_API_KEY is not set"),
        "{printed}"
    );
}

fn key_hash(key: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(key.as_bytes());
    let hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("sha256:{hex}")
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limit_refuses_a_client_past_its_share_as_json_rpc_and_spares_others() {
    let upstream = upstream().await;
    let (alice, bob) = ("alice-plugin-key-0123", "bob-plugin-key-0123");
    let keys = format!(
        "api_keys = [\"{}\", \"{}\"]",
        key_hash(alice),
        key_hash(bob)
    );
    let plugins = "[[routes.plugins]]\nkind = \"rate_limit\"\nrequests_per_minute = 3\n";
    let gateway = gateway(&upstream, &keys, plugins);
    let base = gateway.url();
    let ping = |id: u64| json!({"jsonrpc": "2.0", "id": id, "method": "ping"});

    for id in 1..=3 {
        let response = post(&base, Some(alice), &ping(id)).await;
        assert_ne!(response.status(), 429, "request {id} is within the limit");
    }
    let upstream_saw = upstream.state().requests().len();
    let refused = post(&base, Some(alice), &ping(4)).await;
    assert_eq!(refused.status(), 429);
    let wait: u64 = refused.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=20).contains(&wait), "{wait}");
    let body: Value = refused.json().await.expect("json");
    assert_eq!(body["jsonrpc"], "2.0");
    assert_eq!(body["id"], 4);
    assert_eq!(body["error"]["code"], -32029);
    let message = body["error"]["message"].as_str().expect("message");
    assert!(message.contains("3 requests a minute"), "{message}");
    assert_eq!(
        upstream.state().requests().len(),
        upstream_saw,
        "a refused request never reaches the upstream"
    );

    // Not JSON-RPC: a plain JSON error.
    let stream = client()
        .get(format!("{base}/up/silent"))
        .bearer_auth(alice)
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("get");
    assert_eq!(stream.status(), 429);
    let body: Value = stream.json().await.expect("json");
    assert_eq!(body["error"], "rate_limited");

    // Another client has a bucket of its own.
    assert_ne!(post(&base, Some(bob), &ping(5)).await.status(), 429);
    let metrics = client()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("route=\"up\"") && metrics.contains("limit=\"rate_limited\""),
        "{metrics}"
    );
}

/// The audit file's lines once there are at least `count` of them.
async fn audit_lines(path: &Path, count: usize) -> Vec<Value> {
    for _ in 0..100 {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).expect("a JSON line"))
            .collect();
        if lines.len() >= count {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the audit log has fewer than {count} lines");
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_log_writes_one_line_per_json_rpc_request_without_arguments_or_secrets() {
    let upstream = upstream().await;
    let key = "audit-plugin-key-0123456789";
    for include in [false, true] {
        let plugins = format!(
            "[[routes.plugins]]\nkind = \"audit_log\"\noutput = \"{{dir}}/audit.jsonl\"\n\
             include_arguments = {include}\n"
        );
        let keys = format!("api_keys = [\"{}\"]", key_hash(key));
        let gateway = gateway(&upstream, &keys, &plugins);
        let base = gateway.url();
        let init = post(&base, Some(key), &support::initialize_request()).await;
        assert_eq!(init.status(), 200);
        let session = init.headers()["mcp-session-id"]
            .to_str()
            .expect("ascii")
            .to_owned();
        let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": "echo", "arguments": {"text": "confidential-argument"}}});
        let answer = client()
            .post(format!("{base}/up/mcp"))
            .header("accept", "application/json, text/event-stream")
            .header("mcp-session-id", &session)
            .bearer_auth(key)
            .json(&call)
            .send()
            .await
            .expect("call");
        assert_eq!(answer.status(), 200);
        let _ = answer.text().await;

        let path = gateway.dir.path().join("audit.jsonl");
        let lines = audit_lines(&path, 2).await;
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[0]["method"], "initialize");
        assert_eq!(lines[1]["method"], "tools/call");
        assert_eq!(lines[1]["tool"], "echo");
        for line in &lines {
            assert_eq!(line["route"], "up");
            assert_eq!(line["status"], 200);
            assert!(
                line["duration_ms"].is_u64() && line["time"].is_string(),
                "{line}"
            );
            assert_eq!(line["client"], lines[0]["client"], "one client throughout");
        }
        let text = std::fs::read_to_string(&path).expect("audit file");
        for secret in [key, TOKEN, session.as_str()] {
            assert!(
                !text.contains(secret),
                "the audit log holds a secret: {text}"
            );
        }
        assert_eq!(
            text.contains("confidential-argument"),
            include,
            "arguments only when asked for: {text}"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tool_filter_trims_json_lists_and_answers_filtered_calls_itself() {
    let upstream = MockUpstream::start(MockOptions {
        token: TOKEN.into(),
        json_responses: true,
        ..Default::default()
    })
    .await;
    let plugins = "[[routes.plugins]]\nkind = \"tool_filter\"\nallow = [\"ec*\", \"slow_*\"]\n\
                   deny = [\"slow_*\"]\n";
    let gateway = gateway(&upstream, "", plugins);
    let base = gateway.url();
    let init = post(&base, None, &support::initialize_request()).await;
    let session = init.headers()["mcp-session-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let send = |body: Value| {
        client()
            .post(format!("{base}/up/mcp"))
            .header("accept", "application/json, text/event-stream")
            .header("mcp-session-id", &session)
            .json(&body)
            .send()
    };

    let list = send(json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}))
        .await
        .expect("list");
    assert!(
        list.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("application/json")
    );
    let list: Value = list.json().await.expect("json with a length that fits");
    let names: Vec<&str> = list["result"]["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .map(|tool| tool["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["echo"]);

    let refused: Value = send(json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
        "params": {"name": "admin_echo", "arguments": {"text": "x"}}}))
    .await
    .expect("call")
    .json()
    .await
    .expect("json");
    assert_eq!(refused["id"], 3);
    assert_eq!(refused["error"]["code"], -32602);
    assert_eq!(upstream.state().tool_calls("admin_echo"), 0);

    let echoed: Value = send(json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": "through"}}}))
    .await
    .expect("call")
    .json()
    .await
    .expect("json");
    assert_eq!(echoed["result"]["content"][0]["text"], "through");
    assert_eq!(upstream.state().tool_calls("echo"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn tool_filter_trims_every_page_of_a_paginated_list_and_keeps_its_cursor() {
    let upstream = MockUpstream::start(MockOptions {
        token: TOKEN.into(),
        json_responses: true,
        tools_page_size: Some(1),
        ..Default::default()
    })
    .await;
    let plugins = "[[routes.plugins]]\nkind = \"tool_filter\"\nallow = [\"echo\", \"who*\"]\n";
    let gateway = gateway(&upstream, "", plugins);
    let base = gateway.url();
    let init = post(&base, None, &support::initialize_request()).await;
    let session = init.headers()["mcp-session-id"]
        .to_str()
        .expect("ascii")
        .to_owned();

    // A client walks the pages by their cursors, as the upstream hands them out.
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    for id in 10.. {
        let mut list = json!({"jsonrpc": "2.0", "id": id, "method": "tools/list"});
        if let Some(cursor) = &cursor {
            list["params"] = json!({ "cursor": cursor });
        }
        let page: Value = client()
            .post(format!("{base}/up/mcp"))
            .header("accept", "application/json, text/event-stream")
            .header("mcp-session-id", &session)
            .json(&list)
            .send()
            .await
            .expect("list")
            .json()
            .await
            .expect("json");
        let names: Vec<String> = page["result"]["tools"]
            .as_array()
            .expect("tools")
            .iter()
            .map(|tool| tool["name"].as_str().expect("name").to_owned())
            .collect();
        cursor = page["result"]["nextCursor"].as_str().map(str::to_owned);
        pages.push((names, cursor.clone()));
        if cursor.is_none() || id > 20 {
            break;
        }
    }
    let expected: Vec<(Vec<String>, Option<String>)> = [
        (vec!["echo"], Some("1")),
        (vec![], Some("2")),
        (vec!["whoami"], Some("3")),
        (vec![], None),
    ]
    .into_iter()
    .map(|(names, cursor)| {
        let names = names.into_iter().map(str::to_owned).collect();
        (names, cursor.map(str::to_owned))
    })
    .collect();
    assert_eq!(
        pages, expected,
        "filtered pages, each with the upstream's cursor"
    );
}
