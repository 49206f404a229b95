//! Zero-downtime upgrade against the binary: `mcp-u2m-gateway upgrade` starts a new process
//! that takes the listening sockets over; the old one stops accepting, lets its streams run
//! for `server.drain_secs`, ends them cleanly and exits. Clients under load see no failure,
//! and systemd is told the new main pid.

mod support;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::mock_upstream::{MockOptions, MockUpstream};
use support::process::{Running, gateway_command, listening_url};

/// A port free right now: an upgrade hands sockets over by address, so the gateway
/// cannot listen on port 0 here.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn write_config(dir: &Path, upstream: &MockUpstream, port: u16) -> PathBuf {
    std::fs::write(dir.join("token"), "test-token").expect("token");
    let text = format!(
        r#"[server]
listen = "127.0.0.1:{port}"
sse_keepalive_secs = 1
drain_secs = 2
control_requests_per_minute = 0
[store]
dir = "store"

[[routes]]
name = "up"
prefix = "/up"
upstream = "{}"
[routes.auth]
kind = "bearer"
token_file = "token"
"#,
        upstream.base_url()
    );
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).expect("config");
    path
}

/// The id of the process answering at `base`, asked on a new connection.
async fn pid_at(base: &str) -> Option<u64> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let body: Value = client
        .get(format!("{base}/admin/api/process"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    body["pid"].as_u64()
}

/// Stops a process this test did not spawn itself (the new gateway is the upgrade
/// command's child) when dropped.
struct Pid(u64);

impl Drop for Pid {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .arg(self.0.to_string())
            .status();
    }
}

/// An open legacy SSE stream, read in the background: whether and how it ended.
struct Stream {
    ended: Arc<AtomicBool>,
    clean: Arc<AtomicBool>,
}

async fn open_stream(base: &str) -> Stream {
    let mut response = reqwest::Client::new()
        .get(format!("{base}/up/sse"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("stream");
    assert_eq!(response.status(), 200);
    let ended = Arc::new(AtomicBool::new(false));
    let clean = Arc::new(AtomicBool::new(false));
    tokio::spawn({
        let (ended, clean) = (Arc::clone(&ended), Arc::clone(&clean));
        async move {
            let end = loop {
                match response.chunk().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => break true,
                    Err(_) => break false,
                }
            };
            clean.store(end, Ordering::SeqCst);
            ended.store(true, Ordering::SeqCst);
        }
    });
    Stream { ended, clean }
}

async fn wait_until(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while !done() {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

/// The `MAINPID=` values systemd would have been told, in order.
fn main_pids(socket: &UnixDatagram) -> Vec<u64> {
    let mut pids = Vec::new();
    let mut buffer = [0u8; 256];
    while let Ok(size) = socket.recv(&mut buffer) {
        let message = String::from_utf8_lossy(&buffer[..size]).into_owned();
        assert!(message.contains("READY=1"), "{message}");
        pids.extend(
            message
                .lines()
                .find_map(|line| line.strip_prefix("MAINPID=")?.parse::<u64>().ok()),
        );
    }
    pids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upgrade_under_load_moves_new_connections_and_drains_old_streams() {
    let upstream = MockUpstream::start(MockOptions::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let config = write_config(dir.path(), &upstream, port);
    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).expect("notify socket");
    notify
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");

    let mut child = gateway_command()
        .args(["serve", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &notify_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn serve");
    let base = listening_url(&mut child);
    let mut old = Running::new(child);
    let old_pid = u64::from(old.id());
    assert_eq!(pid_at(&base).await, Some(old_pid));

    let streams: Vec<Stream> = futures::future::join_all((0..5).map(|_| open_stream(&base))).await;

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (base, stop) = (base.clone(), Arc::clone(&stop));
            let (ok, failed) = (Arc::clone(&ok), Arc::clone(&failed));
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                while !stop.load(Ordering::Relaxed) {
                    let sent = client
                        .post(format!("{base}/up/mcp"))
                        .header("accept", "application/json, text/event-stream")
                        .json(&support::initialize_request())
                        .send()
                        .await;
                    match sent {
                        Ok(response) if response.status() == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(response) => failed.lock().push(response.status().to_string()),
                        Err(error) => failed.lock().push(format!("{error:?}")),
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The command's output goes to files: the new process keeps them open.
    let out = std::fs::File::create(dir.path().join("upgrade.out")).expect("out");
    let err = std::fs::File::create(dir.path().join("upgrade.err")).expect("err");
    let mut upgrade = gateway_command()
        .args(["upgrade", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &notify_path)
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("spawn upgrade");
    let status = tokio::task::spawn_blocking(move || upgrade.wait())
        .await
        .expect("wait")
        .expect("upgrade status");
    let printed = std::fs::read_to_string(dir.path().join("upgrade.out")).expect("out");
    let logged = std::fs::read_to_string(dir.path().join("upgrade.err")).expect("err");
    assert!(status.success(), "{printed}\n{logged}");
    let upgraded = Instant::now();
    let new_pid: u64 = printed
        .lines()
        .find(|line| line.starts_with("upgraded:"))
        .and_then(|line| line.split("-> ").nth(1))
        .and_then(|rest| rest.split(';').next())
        .and_then(|pid| pid.trim().parse().ok())
        .unwrap_or_else(|| panic!("the new pid in {printed:?}"));
    let _new = Pid(new_pid);
    assert_ne!(new_pid, old_pid);

    // New connections land on the new process at once.
    for _ in 0..5 {
        assert_eq!(pid_at(&base).await, Some(new_pid));
    }

    // The old streams are ended cleanly within the drain bound (2 s) and a little, and the
    // old process exits on its own.
    let all_ended = wait_until(Duration::from_secs(5), || {
        streams
            .iter()
            .all(|stream| stream.ended.load(Ordering::SeqCst))
    })
    .await;
    assert!(
        all_ended,
        "old streams still open {:?} after the upgrade",
        upgraded.elapsed()
    );
    assert!(
        streams
            .iter()
            .all(|stream| stream.clean.load(Ordering::SeqCst)),
        "every old stream ended its response"
    );
    let exited = wait_until(Duration::from_secs(5), || old.try_wait().is_some()).await;
    assert!(exited, "the old process exits after its drain");
    assert_eq!(old.try_wait().and_then(|status| status.code()), Some(0));

    // Clients reconnect to the new process.
    let again = open_stream(&base).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.expect("load");
    }
    let ok = ok.load(Ordering::Relaxed);
    let failed = failed.lock().clone();
    assert!(
        failed.is_empty(),
        "requests failed across the upgrade ({ok} succeeded): {failed:#?}"
    );
    assert!(ok > 20, "the load ran ({ok} requests)");
    assert!(!again.ended.load(Ordering::SeqCst));

    assert_eq!(
        main_pids(&notify),
        vec![old_pid, new_pid],
        "what systemd was told"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigquit_with_no_new_process_waiting_keeps_the_gateway_serving() {
    let upstream = MockUpstream::start(MockOptions::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &upstream, free_port());
    let mut child = gateway_command()
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn serve");
    let base = listening_url(&mut child);
    let mut gateway = Running::new(child);
    let status = std::process::Command::new("kill")
        .args(["-QUIT", &gateway.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    // The hand-over gives up after five seconds of nobody listening.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert!(gateway.try_wait().is_none(), "still running");
    assert_eq!(pid_at(&base).await, Some(u64::from(gateway.id())));
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_upgrade_with_nothing_to_take_over_says_what_to_do() {
    let upstream = MockUpstream::start(MockOptions::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &upstream, free_port());
    let output = tokio::task::spawn_blocking(move || {
        gateway_command()
            .args(["serve", "--upgrade", "--config"])
            .arg(&config)
            .output()
            .expect("run")
    })
    .await
    .expect("serve --upgrade");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no running gateway handed its sockets over") && stderr.contains("SIGQUIT"),
        "{stderr}"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &upstream, 0);
    let output = gateway_command()
        .args(["serve", "--upgrade", "--config"])
        .arg(&config)
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("server.listen needs a fixed port"),
        "{stderr}"
    );
}
