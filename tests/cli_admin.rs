//! The operator's commands as processes: `status`, `list`, `auth`, `refresh` and `clear`,
//! against a running gateway (through its admin API) and against the bare token store, with
//! their `--json` shapes and exit codes (0 ok, 1 error, 2 usage, 3 needs sign-in).

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::gateway::{TestGateway, start};
use support::mock_upstream::{MockOptions, MockUpstream};
use support::signin::{browser, location, sign_in, store_files};

const ADMIN_TOKEN: &str = "cli-admin-token-0123456789abcdef";

/// The binary with `args`, then `--config config`, in an environment of its own.
fn cli(config: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mcp-u2m-gateway"));
    command
        .env_remove("MCP_GATEWAY_CONFIG")
        .env_remove("MCP_GATEWAY_ADMIN_TOKEN")
        .env_remove("UPSTREAM_MCP_URL")
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .env("RUST_LOG", "warn")
        .args(args)
        .arg("--config")
        .arg(config);
    command
}

/// Runs the CLI off the async runtime; returns the exit code and output.
async fn run(config: &Path, args: &[&str]) -> (i32, Output) {
    let mut command = cli(config, args);
    let output = tokio::task::spawn_blocking(move || command.output().expect("run the CLI"))
        .await
        .expect("join");
    (output.status.code().unwrap_or(-1), output)
}

fn json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "{error}: {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A copy of the running gateway's config for the CLI, naming the port the gateway got
/// (the gateway itself was started on port 0).
fn cli_config(gateway: &TestGateway, replace: Option<(&str, &str)>) -> PathBuf {
    let theirs = std::fs::read_to_string(gateway.dir.path().join("gateway.toml")).expect("config");
    let port = gateway.running.local_addr().port();
    let mut ours = theirs.replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    if let Some((from, to)) = replace {
        assert!(ours.contains(from), "{ours}");
        ours = ours.replace(from, to);
    }
    let path = gateway.dir.path().join("cli.toml");
    std::fs::write(&path, ours).expect("config");
    path
}

fn config_text(upstream: &MockUpstream, admin: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
[store]
dir = "{{dir}}/store"
{admin}
[[routes]]
name = "up"
prefix = "/up"
upstream = "{}"
"#,
        upstream.base_url()
    )
}

/// A config file for a gateway that is not running; `auth` listens on a port of its own.
fn offline_config(dir: &Path, upstream: &MockUpstream) -> PathBuf {
    let text = config_text(upstream, "").replace("{dir}", &dir.display().to_string());
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// Signs in from the start page at `url` as a browser does: start → the mock authorization
/// server, which approves at once → callback. Returns the callback page's status.
async fn sign_in_at(url: url::Url) -> u16 {
    let start = browser().get(url).send().await.expect("start");
    assert_eq!(start.status(), 302, "the start page redirects");
    let approved = browser()
        .get(location(&start))
        .send()
        .await
        .expect("authorize");
    assert_eq!(approved.status(), 302, "the mock approves at once");
    let page = browser()
        .get(location(&approved))
        .send()
        .await
        .expect("callback");
    page.status().as_u16()
}

/// Runs `auth up`, completes the sign-in at the URL it prints, and returns its result.
async fn auth_by_following_the_printed_url(
    config: &Path,
    complete: impl AsyncFnOnce(url::Url),
) -> (i32, String) {
    let mut child = cli(config, &["auth", "up"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn auth");
    let stdout = child.stdout.take().expect("stdout");
    let (url_tx, url_rx) = tokio::sync::oneshot::channel();
    let reader = std::thread::spawn(move || {
        let mut printed = String::new();
        let mut url_tx = Some(url_tx);
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(url) = line
                .strip_prefix("  http")
                .map(|rest| format!("http{rest}"))
                && let Some(tx) = url_tx.take()
            {
                let _ = tx.send(url);
            }
            printed.push_str(&line);
            printed.push('\n');
        }
        printed
    });
    let url = tokio::time::timeout(Duration::from_secs(20), url_rx)
        .await
        .expect("auth printed a URL in time")
        .expect("a URL");
    complete(url::Url::parse(&url).expect("printed URL")).await;
    let status = tokio::task::spawn_blocking(move || child.wait().expect("auth exits"))
        .await
        .expect("join");
    let printed = reader.join().expect("reader");
    (status.code().unwrap_or(-1), printed)
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_gateway_the_commands_work_on_the_store() {
    let upstream = MockUpstream::start(MockOptions::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = offline_config(dir.path(), &upstream);

    let (code, output) = run(&config, &["status", "--json"]).await;
    assert_eq!(code, 3, "{}", text(&output));
    let status = json(&output);
    assert_eq!(status["source"], "store");
    assert_eq!(status["routes"][0]["sign_in"]["state"], "needs_sign_in");

    // No browser here: auth prints its own sign-in page's URL and serves the page and the
    // callback itself.
    let (code, printed) = auth_by_following_the_printed_url(&config, async |url| {
        assert_eq!(url.path(), "/auth/up/start");
        assert_eq!(sign_in_at(url).await, 200);
    })
    .await;
    assert_eq!(code, 0, "{printed}");
    assert!(printed.contains("Could not open a browser"), "{printed}");
    assert!(printed.contains("Signed in to route 'up'"), "{printed}");

    let (code, output) = run(&config, &["status", "up"]).await;
    assert_eq!(code, 0, "{}", text(&output));
    let details = text(&output);
    assert!(
        details.contains("status:") && details.contains("signed in"),
        "{details}"
    );

    let (code, output) = run(&config, &["refresh", "up", "--json"]).await;
    assert_eq!(code, 0, "{}", text(&output));
    assert_eq!(json(&output)["sign_in"]["last_refresh"]["outcome"], "ok");
    assert_eq!(upstream.oauth().refresh_requests(), 1);

    let (code, output) = run(&config, &["list", "--json"]).await;
    assert_eq!(code, 0, "{}", text(&output));
    let slots = json(&output);
    assert_eq!(slots["slots"][0]["route"], "up");
    assert_eq!(slots["slots"][0]["tokens"], true);
    assert_eq!(slots["slots"][0]["client_registered"], true);
    assert_eq!(slots["slots"][0]["slot"].as_str().map(str::len), Some(16));

    let (code, output) = run(&config, &["clear", "up"]).await;
    assert_eq!(code, 0, "{}", text(&output));
    let files = store_files(dir.path());
    assert!(
        !files.iter().any(|f| f.ends_with("_tokens.json")),
        "{files:?}"
    );
    let (code, _) = run(&config, &["refresh", "up"]).await;
    assert_eq!(code, 3, "a route that needs sign-in cannot be refreshed");
}

#[tokio::test(flavor = "multi_thread")]
async fn with_a_gateway_running_the_commands_use_its_admin_api() {
    let upstream = MockUpstream::start(MockOptions::default()).await;
    let admin = "[admin]\nallow_loopback = false\ntoken_file = \"{dir}/admin-token\"";
    let gateway: TestGateway = start(
        &config_text(&upstream, admin),
        &[("admin-token", ADMIN_TOKEN)],
    );
    let config = cli_config(&gateway, None);
    let port = gateway.running.local_addr().port();

    let (code, output) = run(&config, &["status", "--json"]).await;
    assert_eq!(code, 3, "{}", text(&output));
    assert_eq!(json(&output)["source"], "gateway");

    // The printed URL is the gateway's own sign-in page.
    let base = gateway.url();
    let (code, printed) = auth_by_following_the_printed_url(&config, async |url| {
        assert_eq!(url.path(), "/auth/up/start");
        assert_eq!(sign_in_at(url).await, 200);
    })
    .await;
    assert_eq!(code, 0, "{printed}");
    assert!(printed.contains("Signed in to route 'up'"), "{printed}");

    let (code, output) = run(&config, &["status"]).await;
    assert_eq!(code, 0, "{}", text(&output));
    let table = text(&output);
    assert!(table.starts_with("ROUTE"), "{table}");
    assert!(table.contains("signed in"), "{table}");
    assert!(
        table.contains(&format!("localhost:{port}/up/mcp")),
        "{table}"
    );

    let (code, output) = run(&config, &["refresh", "up"]).await;
    assert_eq!(code, 0, "{}", text(&output));
    assert_eq!(upstream.oauth().refresh_requests(), 1);

    let (code, output) = run(&config, &["clear", "--all"]).await;
    assert_eq!(code, 0, "{}", text(&output));
    assert!(text(&output).contains("route 'up': signed out"));
    let index: Value = browser()
        .get(format!("{base}/admin/api/routes/up"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("status")
        .json()
        .await
        .expect("json");
    assert_eq!(index["sign_in"]["state"], "needs_sign_in");

    // Signing in again through the page works as before.
    assert_eq!(sign_in(&gateway).await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_admin_token_and_bad_usage_have_their_exit_codes() {
    let upstream = MockUpstream::start(MockOptions::default()).await;
    let admin = "[admin]\nallow_loopback = false\ntoken_file = \"{dir}/admin-token\"";
    let gateway = start(
        &config_text(&upstream, admin),
        &[("admin-token", ADMIN_TOKEN)],
    );
    // The CLI's copy of the config takes its token from a variable that holds another one.
    let token_file = format!(
        "token_file = \"{}/admin-token\"",
        gateway.dir.path().display()
    );
    let config = cli_config(
        &gateway,
        Some((&token_file, "token_env = \"CLI_TEST_ADMIN_TOKEN\"")),
    );

    let mut status = cli(&config, &["status"]);
    status.env("CLI_TEST_ADMIN_TOKEN", "not-the-token");
    let output = tokio::task::spawn_blocking(move || status.output().expect("status"))
        .await
        .expect("join");
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        text(&output).contains("refused the admin API"),
        "{}",
        text(&output)
    );

    let (code, output) = run(&config, &["clear"]).await;
    assert_eq!(code, 2, "{}", text(&output));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_commands_follow_the_admin_api_to_its_own_listener() {
    let upstream = MockUpstream::start(MockOptions::default()).await;
    let gateway = start(
        &config_text(&upstream, "[admin]\nlisten = \"127.0.0.1:0\""),
        &[],
    );
    let main = gateway.running.local_addr().port();
    let admin = gateway.running.admin_addr().expect("admin listener").port();
    let theirs = std::fs::read_to_string(gateway.dir.path().join("gateway.toml")).expect("config");
    let ours = theirs
        .replacen("127.0.0.1:0", &format!("127.0.0.1:{main}"), 1)
        .replacen("127.0.0.1:0", &format!("127.0.0.1:{admin}"), 1);
    let config = gateway.dir.path().join("cli.toml");
    std::fs::write(&config, ours).expect("config");

    let (code, output) = run(&config, &["status", "--json"]).await;
    assert_eq!(code, 3, "{}", text(&output));
    assert_eq!(json(&output)["source"], "gateway");
}

#[tokio::test(flavor = "multi_thread")]
async fn on_a_per_user_route_the_commands_count_people_and_act_on_nobody_unnamed() {
    let upstream = MockUpstream::start(MockOptions::default()).await;
    let per_user = config_text(&upstream, "").replace(
        "[store]",
        "trusted_identity_header = \"X-Forwarded-Email\"\nprincipal = \"forwarded\"\n[store]",
    );
    let gateway = start(&format!("{per_user}[routes.auth]\nkind = \"oauth\"\n"), &[]);
    let config = cli_config(&gateway, None);

    let (code, output) = run(&config, &["status"]).await;
    assert_eq!(code, 0, "{}", text(&output));
    assert!(
        text(&output).contains("per-user: 0 of 0 signed in"),
        "{}",
        text(&output)
    );
    let (_, output) = run(&config, &["status", "up", "--json"]).await;
    assert_eq!(json(&output)["per_user"]["known"], 0);

    for command in [&["auth", "up"][..], &["refresh", "up"], &["clear", "up"]] {
        let (code, output) = run(&config, command).await;
        assert_eq!(code, 1, "{command:?}: {}", text(&output));
        assert!(
            text(&output).contains("per person"),
            "{command:?}: {}",
            text(&output)
        );
    }
    assert!(store_files(gateway.dir.path()).is_empty());
}
