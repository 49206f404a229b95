//! Starting a gateway in-process for a test: a config file in a temporary directory,
//! listening on 127.0.0.1:0, stopped when the returned value is dropped.

use mcp_u2m_gateway::{Config, Gateway, RunningGateway};

/// A running gateway and the directory holding its config and token files.
pub struct TestGateway {
    pub running: RunningGateway,
    pub dir: tempfile::TempDir,
}

impl TestGateway {
    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.running.local_addr())
    }
}

/// Starts a gateway on `toml`, in which `{dir}` stands for a fresh temporary directory;
/// `files` (name, contents) are written there first.
pub fn start(toml: &str, files: &[(&str, &str)]) -> TestGateway {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, contents) in files {
        std::fs::write(dir.path().join(name), contents).expect("write test file");
    }
    let text = toml.replace("{dir}", &dir.path().display().to_string());
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, text).expect("write config");
    let config = Config::load(Some(&path)).expect("valid test config");
    let running = Gateway::bind(config).expect("gateway binds").spawn();
    TestGateway { running, dir }
}

/// A gateway with one bearer route `prefix` → `upstream` that sends `token` upstream;
/// `server_extra` is added to the `[server]` table.
pub fn single_route(prefix: &str, upstream: &str, token: &str, server_extra: &str) -> TestGateway {
    start(
        &format!(
            r#"
[server]
listen = "127.0.0.1:0"
{server_extra}

[[routes]]
name = "up"
prefix = "{prefix}"
upstream = "{upstream}"
auth = {{ kind = "bearer", token_file = "{{dir}}/upstream-token" }}
"#
        ),
        &[("upstream-token", token)],
    )
}
