//! Hot reload against the binary: `SIGHUP`, `POST /admin/api/reload` and the `reload`
//! command re-read gateway.toml while clients keep working. Unchanged routes lose no request
//! and no stream, a signed-in route stays signed in, refreshers follow the OAuth routes, and
//! a file that does not load changes nothing.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::Value;
use support::mock_upstream::{MockOptions, MockUpstream};
use support::process::{Running, gateway_command, listening_url};
use support::signin::{approved_callback, browser};

/// One version of the file the test reloads: which optional routes it has, where the
/// route `moving` points, or a broken file.
#[derive(Debug, Clone, Copy)]
struct Version {
    extra: bool,
    other_oauth: bool,
    moving_to_second: bool,
    broken: Option<Broken>,
}

#[derive(Debug, Clone, Copy)]
enum Broken {
    UnknownKey,
    BadUpstream,
}

struct Upstreams {
    first: MockUpstream,
    second: MockUpstream,
}

fn write_config(dir: &Path, upstreams: &Upstreams, version: Version) -> PathBuf {
    let first = upstreams.first.base_url();
    let second = upstreams.second.base_url();
    let mut text = format!(
        r#"[server]
listen = "127.0.0.1:0"
sse_keepalive_secs = 1
max_streams_per_client = 500
control_requests_per_minute = 0
[store]
dir = "store"

[[routes]]
name = "up"
prefix = "/up"
upstream = "{first}"

[[routes]]
name = "moving"
prefix = "/moving"
upstream = "{moving}"
[routes.auth]
kind = "bearer"
token_file = "token"
"#,
        moving = if version.moving_to_second {
            second
        } else {
            first
        },
    );
    if version.extra {
        text.push_str(&format!(
            "\n[[routes]]\nname = \"extra\"\nprefix = \"/extra\"\nupstream = \"{first}\"\n\
             [routes.auth]\nkind = \"bearer\"\ntoken_file = \"token\"\n"
        ));
    }
    if version.other_oauth {
        text.push_str(&format!(
            "\n[[routes]]\nname = \"other\"\nprefix = \"/other\"\nupstream = \"{second}\"\n"
        ));
    }
    match version.broken {
        Some(Broken::UnknownKey) => text.push_str("\n[[routes]]\nname = \"x\"\nprefx = \"/x\"\n"),
        Some(Broken::BadUpstream) => text.push_str(
            "\n[[routes]]\nname = \"x\"\nprefix = \"/x\"\nupstream = \"ftp://example\"\n",
        ),
        None => {}
    }
    std::fs::write(dir.join("token"), "test-token").expect("token file");
    let path = dir.join("gateway.toml");
    // Written whole and renamed, as an editor or a config manager does.
    let partial = dir.join("gateway.toml.partial");
    std::fs::write(&partial, text).expect("config");
    std::fs::rename(&partial, &path).expect("config in place");
    path
}

fn serve(config: &Path) -> (Running, String) {
    let mut child: Child = gateway_command()
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn serve");
    let base = listening_url(&mut child);
    (Running::new(child), base)
}

/// A metric's value from `/metrics`, 0 when the series does not exist.
async fn metric(base: &str, series: &str) -> i64 {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse::<f64>().ok())
        .map_or(0, |value| value as i64)
}

async fn wait_for_metric(base: &str, series: &str, expected: i64) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let value = metric(base, series).await;
        if value == expected || Instant::now() > deadline {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn route_names(base: &str) -> Vec<String> {
    let body: Value = reqwest::get(format!("{base}/admin/api/routes"))
        .await
        .expect("routes")
        .json()
        .await
        .expect("routes json");
    let mut names: Vec<String> = body["routes"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|route| route["name"].as_str().expect("a name").to_owned())
        .collect();
    names.sort();
    names
}

fn expected_names(version: Version) -> Vec<String> {
    let mut names = vec!["moving", "up"];
    if version.extra {
        names.push("extra");
    }
    if version.other_oauth {
        names.push("other");
    }
    names.sort();
    names.into_iter().map(str::to_owned).collect()
}

async fn initialize(base: &str, prefix: &str) -> u16 {
    browser()
        .post(format!("{base}{prefix}/mcp"))
        .header("accept", "application/json, text/event-stream")
        .json(&support::initialize_request())
        .send()
        .await
        .map_or(0, |response| response.status().as_u16())
}

async fn admin_reload(base: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{base}/admin/api/reload"))
        .send()
        .await
        .expect("reload");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// `mcp-u2m-gateway reload` with a copy of `config` that names the port the gateway got
/// (it was started on port 0): exit status and stderr.
async fn cli_reload(config: &Path, base: &str) -> (Option<i32>, String) {
    let port = url::Url::parse(base).expect("base").port().expect("a port");
    let text = std::fs::read_to_string(config).expect("config");
    let ours = text.replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    let config = config.with_file_name("cli.toml");
    std::fs::write(&config, ours).expect("the command's config");
    tokio::task::spawn_blocking(move || {
        let output = gateway_command()
            .args(["reload", "--config"])
            .arg(&config)
            .output()
            .expect("run reload");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    })
    .await
    .expect("reload command")
}

fn sighup(gateway: &Running) {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &gateway.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

/// A legacy SSE stream read in the background: when its last bytes came and whether it
/// ended.
struct OpenStream {
    last_bytes: Arc<Mutex<Instant>>,
    ended: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

async fn open_stream(base: &str, prefix: &str) -> OpenStream {
    let mut response = reqwest::Client::new()
        .get(format!("{base}{prefix}/sse"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("open stream");
    assert_eq!(response.status(), 200, "{prefix}/sse");
    let last_bytes = Arc::new(Mutex::new(Instant::now()));
    let ended = Arc::new(AtomicBool::new(false));
    let task = tokio::spawn({
        let last_bytes = Arc::clone(&last_bytes);
        let ended = Arc::clone(&ended);
        async move {
            while let Ok(Some(_)) = response.chunk().await {
                *last_bytes.lock() = Instant::now();
            }
            ended.store(true, Ordering::SeqCst);
        }
    });
    OpenStream {
        last_bytes,
        ended,
        task,
    }
}

impl OpenStream {
    /// Whether the stream is still open and brought bytes (a keepalive) after `since`.
    fn alive_since(&self, since: Instant) -> bool {
        !self.ended.load(Ordering::SeqCst) && *self.last_bytes.lock() > since
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_reloads_under_load_drop_no_request_and_no_stream_of_an_unchanged_route() {
    let upstreams = Upstreams {
        first: MockUpstream::start(MockOptions::default()).await,
        second: MockUpstream::start(MockOptions::default()).await,
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let start = Version {
        extra: false,
        other_oauth: false,
        moving_to_second: false,
        broken: None,
    };
    let config = write_config(dir.path(), &upstreams, start);
    let (gateway, base) = serve(&config);

    // `up` is an OAuth route with a person signed in; its tokens must survive every reload.
    let signed_in = browser()
        .get(approved_callback(&base).await)
        .send()
        .await
        .expect("callback");
    assert_eq!(signed_in.status(), 200);
    let token_requests = upstreams.first.oauth().token_requests();

    let mut streams = Vec::new();
    for _ in 0..100 {
        streams.push(open_stream(&base, "/up").await);
    }
    let open = r#"mcp_gateway_open_sse_streams{route="up"}"#;
    assert_eq!(wait_for_metric(&base, open, 100).await, 100);

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (base, stop) = (base.clone(), Arc::clone(&stop));
            let (ok, failed) = (Arc::clone(&ok), Arc::clone(&failed));
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match initialize(&base, "/up").await {
                        200 => ok.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();

    let mut reloads_ok = 0;
    let mut reloads_invalid = 0;
    let mut in_force = start;
    for round in 0..20 {
        let version = Version {
            extra: round % 2 == 0,
            other_oauth: round % 4 < 2,
            moving_to_second: round % 3 != 0,
            broken: match round % 10 {
                4 => Some(Broken::UnknownKey),
                9 => Some(Broken::BadUpstream),
                _ => None,
            },
        };
        write_config(dir.path(), &upstreams, version);
        let valid = version.broken.is_none();
        match round % 3 {
            0 => {
                sighup(&gateway);
                let series = if valid {
                    reloads_ok += 1;
                    (
                        r#"mcp_gateway_config_reloads_total{outcome="ok"}"#,
                        reloads_ok,
                    )
                } else {
                    reloads_invalid += 1;
                    (
                        r#"mcp_gateway_config_reloads_total{outcome="invalid"}"#,
                        reloads_invalid,
                    )
                };
                assert_eq!(wait_for_metric(&base, series.0, series.1).await, series.1);
            }
            1 => {
                let (status, body) = admin_reload(&base).await;
                if valid {
                    reloads_ok += 1;
                    assert_eq!(status, 200, "{body}");
                } else {
                    reloads_invalid += 1;
                    assert_eq!(status, 422, "{body}");
                    assert_eq!(body["error"], "invalid_config");
                    let message = body["message"].as_str().expect("a message");
                    assert!(message.contains("gateway.toml:"), "{message}");
                }
            }
            _ => {
                let (code, stderr) = cli_reload(&config, &base).await;
                if valid {
                    reloads_ok += 1;
                    assert_eq!(code, Some(0), "{stderr}");
                } else {
                    // The command reads the file too, and says what is wrong with it.
                    assert_eq!(code, Some(1), "{stderr}");
                    assert!(stderr.contains("cli.toml:"), "{stderr}");
                }
            }
        }
        if valid {
            in_force = version;
        }
        assert_eq!(
            route_names(&base).await,
            expected_names(in_force),
            "round {round}"
        );
        let extra = initialize(&base, "/extra").await;
        assert_eq!(
            extra,
            if in_force.extra { 200 } else { 404 },
            "round {round}"
        );
        let second_before = upstreams.second.state().total_requests();
        assert_eq!(initialize(&base, "/moving").await, 200, "round {round}");
        let reached_second = upstreams.second.state().total_requests() > second_before;
        assert_eq!(reached_second, in_force.moving_to_second, "round {round}");
    }
    let reloads_done = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.expect("load task");
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(
        failed, 0,
        "requests to the unchanged route failed ({ok} succeeded)"
    );
    assert!(ok > 20, "the load generator ran ({ok} requests)");
    assert_eq!(
        upstreams.first.oauth().token_requests(),
        token_requests,
        "no reload asked the authorization server for tokens"
    );

    // Every stream saw a keepalive after the last reload (they come each second).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let alive = streams
        .iter()
        .filter(|stream| stream.alive_since(reloads_done))
        .count();
    assert_eq!(alive, 100, "streams of the unchanged route still open");
    assert_eq!(metric(&base, open).await, 100);

    // One refresher per OAuth route in force: `up`, and `other` when it is there.
    let refreshers = 1 + i64::from(in_force.other_oauth);
    assert_eq!(
        wait_for_metric(&base, "mcp_gateway_token_refreshers", refreshers).await,
        refreshers
    );
    let status: Value = reqwest::get(format!("{base}/admin/api/routes/up"))
        .await
        .expect("status")
        .json()
        .await
        .expect("status json");
    assert_eq!(status["sign_in"]["state"], "signed_in", "{status}");

    for stream in streams {
        stream.task.abort();
    }
    assert_eq!(wait_for_metric(&base, open, 0).await, 0);
    drop(gateway);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_on_a_removed_route_lives_on_while_new_requests_get_404() {
    let upstreams = Upstreams {
        first: MockUpstream::start(MockOptions::default()).await,
        second: MockUpstream::start(MockOptions::default()).await,
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let with_extra = Version {
        extra: true,
        other_oauth: false,
        moving_to_second: false,
        broken: None,
    };
    let config = write_config(dir.path(), &upstreams, with_extra);
    let (_gateway, base) = serve(&config);
    let stream = open_stream(&base, "/extra").await;

    write_config(
        dir.path(),
        &upstreams,
        Version {
            extra: false,
            ..with_extra
        },
    );
    let (status, body) = admin_reload(&base).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["removed"], serde_json::json!(["extra"]));
    assert_eq!(body["unchanged"], serde_json::json!(["up", "moving"]));
    let reloaded = Instant::now();

    assert_eq!(initialize(&base, "/extra").await, 404);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        stream.alive_since(reloaded),
        "the stream keeps the route it started on"
    );
    let open = r#"mcp_gateway_open_sse_streams{route="extra"}"#;
    assert_eq!(metric(&base, open).await, 1);
    stream.task.abort();
    assert_eq!(wait_for_metric(&base, open, 0).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_file_changes_nothing_and_settings_outside_routes_wait_for_a_restart() {
    let upstreams = Upstreams {
        first: MockUpstream::start(MockOptions::default()).await,
        second: MockUpstream::start(MockOptions::default()).await,
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let version = Version {
        extra: true,
        other_oauth: false,
        moving_to_second: false,
        broken: None,
    };
    let config = write_config(dir.path(), &upstreams, version);
    let (_gateway, base) = serve(&config);

    write_config(
        dir.path(),
        &upstreams,
        Version {
            extra: false,
            broken: Some(Broken::BadUpstream),
            ..version
        },
    );
    let (status, body) = admin_reload(&base).await;
    assert_eq!(status, 422, "{body}");
    let message = body["message"].as_str().expect("a message");
    assert!(
        message.contains("routes[2].upstream") && message.contains("ftp"),
        "the error names the key and the value: {message}"
    );
    assert_eq!(
        initialize(&base, "/extra").await,
        200,
        "the old routes stay"
    );

    // A half-written file (cut mid-table) is refused the same way.
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(
        &config,
        &text[..text.find("[[routes]]").expect("routes") + 5],
    )
    .expect("half a file");
    let (status, body) = admin_reload(&base).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        initialize(&base, "/extra").await,
        200,
        "the old routes still stay"
    );

    let text =
        std::fs::read_to_string(write_config(dir.path(), &upstreams, version)).expect("config");
    let slower = text.replace("sse_keepalive_secs = 1", "sse_keepalive_secs = 5");
    std::fs::write(&config, slower).expect("config");
    let (status, body) = admin_reload(&base).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["restart_needed"], serde_json::json!(["server"]));
    assert_eq!(body["changed"], serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_configured_from_the_environment_has_no_file_to_reload() {
    let upstream = MockUpstream::start(MockOptions::default()).await;
    let home = tempfile::tempdir().expect("home");
    let mut child = gateway_command()
        .arg("serve")
        .env("UPSTREAM_MCP_URL", upstream.mcp_url())
        .env("PORT", "0")
        .env("HOME", home.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn serve");
    let base = listening_url(&mut child);
    let _gateway = Running::new(child);
    let (status, body) = admin_reload(&base).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("UPSTREAM_MCP_URL") && m.contains("restart")),
        "{body}"
    );
}
