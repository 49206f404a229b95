//! The token store's permissions, as the real process leaves them: the gateway binary runs
//! under `umask 000` (every file it creates would be world-writable by default), a person
//! signs in, and the store directory is 0700 and every file in it 0600. A store directory
//! others can write to stops the gateway at start-up with the command that fixes it.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use support::mock_upstream::{MockOptions, MockUpstream};
use support::signin::{approved_callback, browser};

fn write_config(dir: &Path, upstream: &MockUpstream) -> std::path::PathBuf {
    let config = dir.join("gateway.toml");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[store]\ndir = \"store\"\n[[routes]]\n\
         name = \"up\"\nprefix = \"/up\"\nupstream = \"{}\"\n",
        upstream.base_url()
    );
    std::fs::write(&config, text).expect("config");
    config
}

/// `mcp-u2m-gateway serve` on `config`, started by a shell whose umask is 000.
fn serve_under_umask_000(config: &Path) -> Child {
    Command::new("sh")
        .args(["-c", "umask 000 && exec \"$@\"", "sh"])
        .arg(env!("CARGO_BIN_EXE_mcp-u2m-gateway"))
        .env_remove("MCP_GATEWAY_CONFIG")
        .args(["serve", "--config"])
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn serve")
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test(flavor = "multi_thread")]
async fn under_umask_000_the_store_is_0700_and_its_files_0600() {
    let upstream = MockUpstream::start(MockOptions::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &upstream);
    let mut child = serve_under_umask_000(&config);
    let base = support::process::listening_url(&mut child);

    let done = browser()
        .get(approved_callback(&base).await)
        .send()
        .await
        .expect("callback");
    assert_eq!(done.status(), 200);
    let _ = child.kill();
    let _ = child.wait();

    let store = dir.path().join("store");
    assert_eq!(mode(&store), 0o700, "the store directory");
    let mut files = Vec::new();
    let mut dirs = vec![store];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read store") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                assert_eq!(mode(&path), 0o700, "{}", path.display());
                dirs.push(path);
            } else {
                files.push(path);
            }
        }
    }
    assert!(
        files
            .iter()
            .any(|file| file.to_string_lossy().contains("tokens")),
        "the sign-in stored tokens: {files:?}"
    );
    for file in &files {
        assert_eq!(mode(file), 0o600, "{}", file.display());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_directory_others_can_write_to_stops_the_gateway_with_the_fix() {
    let upstream = MockUpstream::start(MockOptions::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &upstream);
    let store = dir.path().join("store");
    std::fs::create_dir(&store).expect("store");
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o777)).expect("chmod");

    let mut child = serve_under_umask_000(&config);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the gateway started on a world-writable store directory");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(!status.success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("stderr");
    assert!(
        stderr.contains(&format!("chmod 700 {}", store.display())),
        "{stderr}"
    );
    assert_eq!(
        mode(&store),
        0o777,
        "the gateway changes nothing it refuses"
    );
}
