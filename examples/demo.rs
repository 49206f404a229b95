//! The whole flow on one machine with no account anywhere: the mock upstream (an MCP server
//! with its own OAuth authorization server and consent page) and a gateway with a route to
//! it, both on loopback.
//!
//! ```text
//! cargo run --release --example demo              # the UI on http://localhost:8000/
//! cargo run --release --example demo -- --port 0  # any free port
//! ```
//!
//! Open the UI, sign in (the mock's consent page asks; approve), then point an MCP client at
//! the endpoint it prints. Tokens live in a temporary directory and go when the demo stops
//! (Ctrl-C).

#[allow(dead_code)]
#[path = "../tests/support/mock_upstream.rs"]
mod mock_upstream;

use std::net::SocketAddr;
use std::process::ExitCode;

use mcp_u2m_gateway::{Config, Gateway};
use mock_upstream::{MockOptions, MockUpstream};

const USAGE: &str = "\
Usage: cargo run --release --example demo -- [--port N]

Starts the mock MCP upstream and a gateway in front of it, on 127.0.0.1.

Options:
  --port N   the gateway's port [default: 8000; 0 picks a free one]
  --help     print this help";

#[tokio::main]
async fn main() -> ExitCode {
    let port = match parse_port(std::env::args().skip(1)) {
        Ok(Some(port)) => port,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("error: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(port).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn parse_port(mut args: impl Iterator<Item = String>) -> Result<Option<u16>, String> {
    let mut port = 8000;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--help" | "-h" => return Ok(None),
            "--port" => {
                let value = args.next().ok_or("--port needs a number")?;
                port = value
                    .parse()
                    .map_err(|_| format!("--port: `{value}` is not a port"))?;
            }
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(Some(port))
}

async fn run(port: u16) -> Result<(), String> {
    let upstream = MockUpstream::start_at(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        MockOptions {
            consent_page: true,
            ..MockOptions::default()
        },
    )
    .await
    .map_err(|error| format!("cannot start the mock upstream: {error}"))?;

    let dir = tempfile::tempdir().map_err(|error| format!("cannot make a temp dir: {error}"))?;
    let config_path = dir.path().join("gateway.toml");
    let config = format!(
        r#"[server]
listen = "127.0.0.1:{port}"

[store]
dir = "{store}"

[[routes]]
name = "mock"
prefix = "/mock"
upstream = "{upstream}"

[routes.auth]
kind = "oauth"
"#,
        store = dir.path().join("auth").display(),
        upstream = upstream.base_url(),
    );
    std::fs::write(&config_path, config).map_err(|error| format!("writing the config: {error}"))?;
    let config = Config::load(Some(&config_path)).map_err(|error| error.to_string())?;
    let gateway = Gateway::bind(config).map_err(|error| format!("{error}"))?;
    let addr = gateway.local_addr();
    let running = gateway.spawn();

    print_welcome(addr, upstream.base_url());
    let stopped = tokio::signal::ctrl_c().await;
    running.stop();
    upstream.shutdown().await;
    stopped.map_err(|error| format!("cannot wait for Ctrl-C: {error}"))
}

fn print_welcome(addr: SocketAddr, upstream: &str) {
    let base = format!("http://localhost:{}", addr.port());
    println!("mcp-u2m-gateway demo");
    println!();
    println!("  mock MCP server (with its own OAuth server):  {upstream}");
    println!("  gateway listening on                         http://{addr}");
    println!();
    println!("1. Open the gateway's page and sign in to the route 'mock':");
    println!();
    println!("     {base}/");
    println!();
    println!("2. Point an MCP client at the route; it needs no credentials. Claude Desktop:");
    println!();
    println!("     {{ \"mcpServers\": {{ \"mock\": {{ \"url\": \"{base}/mock/mcp\" }} }} }}");
    println!();
    println!("   or a stdio-only client:  npx mcp-remote {base}/mock/mcp");
    println!();
    println!("3. Call the tool `echo`, and watch {base}/metrics count it.");
    println!();
    println!("Ctrl-C stops both; the demo's tokens are deleted with it.");
}
