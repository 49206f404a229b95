//! The command line as a process: `check` on good and broken configurations, the
//! single-upstream environment, refusals at start-up, and a graceful stop on SIGTERM.

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;
use support::mock_upstream::{MockOptions, MockUpstream};

fn gateway() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mcp-u2m-gateway"));
    command
        .env_remove("MCP_GATEWAY_CONFIG")
        .env_remove("UPSTREAM_MCP_URL")
        .env_remove("DATABRICKS_APP_PORT")
        .env_remove("PORT")
        .env_remove("OAUTH_CALLBACK_PORT")
        .env_remove("MCP_GATEWAY_PRINCIPAL")
        .env("RUST_LOG", "info");
    command
}

fn check(dir: &Path, toml: &str) -> Output {
    let path = dir.join("gateway.toml");
    std::fs::write(&path, toml).expect("write config");
    gateway()
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .expect("run check")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn check_prints_the_routes_of_the_shipped_config() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("gateway.toml");
    let output = gateway()
        .arg("check")
        .arg("--config")
        .arg(shipped)
        .output()
        .expect("run");
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(stdout.contains("/atlassian"), "{stdout}");
    assert!(stdout.contains("https://mcp.atlassian.com/v1"), "{stdout}");
    assert!(stdout.contains("127.0.0.1:8000"), "{stdout}");
}

#[test]
fn the_mock_example_config_is_valid() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/mock.toml");
    let output = gateway()
        .arg("check")
        .arg("--config")
        .arg(example)
        .env("MOCK_UPSTREAM_TOKEN", "dev-token")
        .output()
        .expect("run");
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    assert!(stdout.contains("http://127.0.0.1:9000/"), "{stdout}");
    assert!(stdout.contains("route 'mock', auth oauth"), "{stdout}");
}

#[test]
fn check_names_the_key_path_and_line_of_an_unknown_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = check(
        dir.path(),
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[[routes]]\nname = \"a\"\nprefix = \"/a\"\nupstream = \"http://127.0.0.1:1\"\nauth = { kind = \"none\", tokn_env = \"X\" }\n",
    );
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("tokn_env"), "{stderr}");
    assert!(stderr.contains("gateway.toml:8:"), "{stderr}");
}

#[test]
fn check_reports_every_broken_rule_with_its_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = check(
        dir.path(),
        r#"
[[routes]]
name = "jira"
prefix = "/admin"
upstream = "ftp://example.com"
auth = { kind = "none" }

[[routes]]
name = "jira"
prefix = "/a//b"
upstream = "http://example.com"
auth = { kind = "none" }
"#,
    );
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    for needle in [
        "routes[0].prefix",
        "/admin",
        "routes[0].upstream",
        "routes[1].name",
        "routes[1].prefix",
    ] {
        assert!(stderr.contains(needle), "missing {needle}: {stderr}");
    }
}

#[test]
fn check_without_any_configuration_says_what_to_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = gateway()
        .arg("check")
        .current_dir(dir.path())
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("UPSTREAM_MCP_URL"), "{stderr}");
    assert!(stderr.contains("gateway.toml"), "{stderr}");
}

#[test]
fn upstream_mcp_url_alone_makes_a_single_route_app() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = gateway()
        .arg("check")
        .current_dir(dir.path())
        .env("UPSTREAM_MCP_URL", "https://mcp.atlassian.com/v1")
        .env("PORT", "9123")
        .output()
        .expect("run");
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(stdout.contains("127.0.0.1:9123"), "{stdout}");
    assert!(stdout.contains("route 'default'"), "{stdout}");
    assert!(stdout.contains("https://mcp.atlassian.com/v1"), "{stdout}");

    let databricks = gateway()
        .arg("check")
        .current_dir(dir.path())
        .env("UPSTREAM_MCP_URL", "https://mcp.atlassian.com/v1")
        .env("DATABRICKS_APP_PORT", "8080")
        .env("PORT", "9123")
        .output()
        .expect("run");
    assert!(
        text(&databricks.stdout).contains("0.0.0.0:8080"),
        "{}",
        text(&databricks.stdout)
    );
    assert!(!text(&databricks.stdout).contains("per-user"));

    // One sign-in per workspace user, where the platform names them; nowhere else.
    let per_user = |databricks: bool| {
        let mut command = gateway();
        command
            .arg("check")
            .current_dir(dir.path())
            .env("UPSTREAM_MCP_URL", "https://mcp.atlassian.com/v1")
            .env("MCP_GATEWAY_PRINCIPAL", "forwarded");
        if databricks {
            command.env("DATABRICKS_APP_PORT", "8080");
        }
        command.output().expect("run")
    };
    let output = per_user(true);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(
        text(&output.stdout).contains("auth oauth, per-user"),
        "{}",
        text(&output.stdout)
    );
    let output = per_user(false);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stderr).contains("MCP_GATEWAY_PRINCIPAL: principal = \"forwarded\" needs"),
        "{}",
        text(&output.stderr)
    );
}

#[test]
fn binding_beyond_loopback_without_a_way_to_know_callers_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = \"0.0.0.0:0\"\n[[routes]]\nname = \"a\"\nprefix = \"/a\"\nupstream = \"http://127.0.0.1:1\"\n",
    )
    .expect("write");
    let output = gateway()
        .arg("serve")
        .arg("--config")
        .arg(&path)
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("api_keys"), "{stderr}");
    assert!(stderr.contains("allow_anonymous"), "{stderr}");
}

#[test]
fn usage_errors_exit_with_2() {
    let output = gateway().arg("frobnicate").output().expect("run");
    assert_eq!(output.status.code(), Some(2));
}

/// A `serve` process, killed if the test fails before it exits.
struct Serving(Child);

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `serve` and waits for its "listening on" line; returns the process and base URL.
fn serve(config: &Path) -> (Serving, String) {
    let mut child = gateway()
        .arg("serve")
        .arg("--config")
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn serve");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let url = loop {
        let line = lines
            .next()
            .expect("serve printed its address")
            .expect("line");
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest.trim().to_owned();
        }
    };
    // Keep reading, as a terminal would, so the gateway's later output has somewhere to go.
    std::thread::spawn(move || lines.for_each(drop));
    (Serving(child), url)
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_a_request_in_flight_finish_then_exits() {
    let upstream = MockUpstream::start(MockOptions {
        token: "t".into(),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("token"), "t").expect("token");
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[[routes]]\nname = \"up\"\nprefix = \"/up\"\nupstream = \"{}\"\nauth = {{ kind = \"bearer\", token_file = \"token\" }}\n",
            upstream.base_url()
        ),
    )
    .expect("config");
    let (mut serving, url) = serve(&config);
    let client = reqwest::Client::new();
    let health = client
        .get(format!("{url}/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);

    // Open a session and start a tool call that takes about a second.
    let init = client
        .post(format!("{url}/up/mcp"))
        .header("accept", "application/json, text/event-stream")
        .json(&support::initialize_request())
        .send()
        .await
        .expect("initialize");
    let session = init.headers()["mcp-session-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let call = client
        .post(format!("{url}/up/mcp"))
        .header("accept", "application/json, text/event-stream")
        .header("mcp-session-id", session)
        .json(&json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{
            "name":"slow_stream","arguments":{"steps":5,"interval_ms":200},"_meta":{"progressToken":"p"}}}))
        .send()
        .await
        .expect("call");
    let mut body = call.bytes_stream();
    let first = body.next().await.expect("first event").expect("bytes");
    assert!(String::from_utf8_lossy(&first).contains("progress"));

    let pid = serving.0.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let mut rest = String::new();
    while let Some(chunk) = body.next().await {
        rest.push_str(&String::from_utf8_lossy(
            &chunk.expect("the stream finishes cleanly"),
        ));
    }
    assert!(rest.contains("done after 5 steps"), "{rest}");

    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = serving.0.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "gateway did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
}

/// The first line `serve --log-format FORMAT` logs for a gateway with an OAuth route.
fn first_log_line(format: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        "[server]\nlisten = \"127.0.0.1:0\"\n[store]\ndir = \"store\"\n[[routes]]\nname = \"up\"\n\
         prefix = \"/up\"\nupstream = \"http://127.0.0.1:9/\"\n",
    )
    .expect("config");
    let mut child = gateway()
        .args(["serve", "--log-format", format, "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn serve");
    let stderr = child.stderr.take().expect("stderr");
    let line = BufReader::new(stderr)
        .lines()
        .next()
        .expect("a log line")
        .expect("utf-8");
    let _ = child.kill();
    let _ = child.wait();
    line
}

#[test]
fn log_lines_are_text_or_json_as_asked() {
    let json_line: serde_json::Value =
        serde_json::from_str(&first_log_line("json")).expect("a JSON log line");
    assert_eq!(json_line["fields"]["message"], "token store");
    assert_eq!(json_line["level"], "INFO");
    let text_line = first_log_line("text");
    assert!(serde_json::from_str::<serde_json::Value>(&text_line).is_err());
    assert!(text_line.contains("token store"), "{text_line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn each_proxied_request_logs_one_line_in_a_span_with_its_outcome() {
    let upstream = MockUpstream::start(MockOptions {
        token: "t".into(),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("token"), "t").expect("token");
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[[routes]]\nname = \"up\"\nprefix = \"/up\"\n\
             upstream = \"{}\"\nauth = {{ kind = \"bearer\", token_file = \"token\" }}\n",
            upstream.base_url()
        ),
    )
    .expect("config");
    let mut child = gateway()
        .env("RUST_LOG", "warn,mcp_u2m_gateway=debug")
        .args(["serve", "--log-format", "json", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn serve");
    let stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let url = stdout
        .lines()
        .map_while(Result::ok)
        .find_map(|line| line.split("listening on ").nth(1).map(str::to_owned))
        .expect("address");
    let status = reqwest::Client::new()
        .post(format!("{url}/up/mcp"))
        .header("accept", "application/json")
        .json(&support::initialize_request())
        .send()
        .await
        .expect("post")
        .status();
    assert_eq!(status, 200);

    let stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let line = tokio::task::spawn_blocking(move || {
        stderr
            .lines()
            .map_while(Result::ok)
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(&line).ok())
            .find(|line| line["fields"]["message"] == "request")
    })
    .await
    .expect("join")
    .expect("a request line");
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(line["level"], "DEBUG");
    assert_eq!(line["fields"]["route"], "up");
    assert_eq!(line["fields"]["status"], 200);
    let span = &line["span"];
    assert_eq!(span["name"], "request");
    assert_eq!(span["route"], "up");
    assert_eq!(span["method"], "POST");
    assert_eq!(span["rpc_method"], "initialize");
    assert_eq!(span["status"], 200);
    assert!(span["elapsed_ms"].is_u64(), "{line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn keygen_prints_a_key_whose_hash_line_lets_that_key_in() {
    let output = gateway().arg("keygen").output().expect("keygen");
    assert!(output.status.success());
    let printed = text(&output.stdout);
    let key = printed
        .lines()
        .map(str::trim)
        .find(|line| line.starts_with("mgw_"))
        .expect("a key")
        .to_owned();
    assert!(key.len() >= 40, "{key}");
    let line = printed
        .lines()
        .map(str::trim)
        .find(|line| line.starts_with("api_keys = "))
        .expect("the config line")
        .to_owned();
    assert!(!line.contains(&key), "the config line holds only the hash");

    let upstream = MockUpstream::start(MockOptions {
        token: "t".into(),
        ..Default::default()
    })
    .await;
    let gateway = support::gateway::start(
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n{line}\n[[routes]]\nname = \"up\"\n\
             prefix = \"/up\"\nupstream = \"{}\"\n\
             auth = {{ kind = \"bearer\", token_file = \"{{dir}}/token\" }}\n",
            upstream.base_url()
        ),
        &[("token", "t")],
    );
    let init = support::initialize_request();
    let post = |key: &str| {
        reqwest::Client::new()
            .post(format!("{}/up/mcp", gateway.url()))
            .header("accept", "application/json")
            .bearer_auth(key)
            .json(&init)
            .send()
    };
    assert_eq!(post(&key).await.expect("post").status(), 200);
    assert_eq!(post("mgw_not-the-key").await.expect("post").status(), 401);
    let seen = upstream.state().requests();
    assert!(
        seen.iter()
            .all(|r| r.header("authorization") == Some("Bearer t"))
    );
}
