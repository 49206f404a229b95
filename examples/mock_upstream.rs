//! Runs the mock MCP upstream from the integration tests as a standalone server, so a first
//! run of the gateway needs no real OAuth-protected MCP server.
//!
//! ```text
//! cargo run --example mock_upstream -- --help
//! cargo run --example mock_upstream -- --port 9000 --token dev-token --base-path /v1
//! ```
//!
//! It listens on 127.0.0.1 only, prints the URLs it serves and the bearer token a gateway
//! route must send, and runs until Ctrl-C.

#[allow(dead_code)]
#[path = "../tests/support/mock_upstream.rs"]
mod mock_upstream;

use std::net::SocketAddr;
use std::process::ExitCode;

use mock_upstream::{MockOptions, MockUpstream};

const USAGE: &str = "\
Usage: cargo run --example mock_upstream -- [OPTIONS]

A mock MCP server (Streamable HTTP and legacy SSE) that demands a bearer token.

Options:
  --port N           port on 127.0.0.1 [default: 9000; 0 picks a free one]
  --token T          bearer token clients must send [default: dev-token]
  --base-path PATH   prefix of every route, such as /v1 [default: none]
  --help             print this help";

/// What the command line asked for.
struct Args {
    port: u16,
    options: MockOptions,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("error: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };

    let token = args.options.token.clone();
    let addr = SocketAddr::from(([127, 0, 0, 1], args.port));
    let mock = match MockUpstream::start_at(addr, args.options).await {
        Ok(mock) => mock,
        Err(error) => {
            eprintln!("error: cannot listen on {addr}: {error}");
            return ExitCode::FAILURE;
        }
    };
    print_banner(&mock, &token);

    if let Err(error) = tokio::signal::ctrl_c().await {
        eprintln!("error: cannot wait for Ctrl-C: {error}");
    }
    mock.shutdown().await;
    ExitCode::SUCCESS
}

/// `Ok(None)` means `--help` was asked for.
fn parse_args(mut raw: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut args = Args {
        port: 9000,
        options: MockOptions {
            token: "dev-token".to_owned(),
            ..MockOptions::default()
        },
    };
    while let Some(flag) = raw.next() {
        if flag == "--help" || flag == "-h" {
            return Ok(None);
        }
        match flag.as_str() {
            "--port" => {
                let value = value_of(&flag, &mut raw)?;
                args.port = value.parse().map_err(|_| format!("bad port: {value}"))?;
            }
            "--token" => args.options.token = value_of(&flag, &mut raw)?,
            "--base-path" => args.options.base_path = value_of(&flag, &mut raw)?,
            other => return Err(format!("unknown option: {other}")),
        }
    }
    Ok(Some(args))
}

fn value_of(flag: &str, raw: &mut impl Iterator<Item = String>) -> Result<String, String> {
    raw.next().ok_or_else(|| format!("{flag} needs a value"))
}

fn print_banner(mock: &MockUpstream, token: &str) {
    let base = mock.base_url();
    println!("mock MCP upstream listening on http://{}", mock.addr());
    println!("  Streamable HTTP:  {base}/mcp");
    println!("  legacy SSE:       {base}/sse");
    println!("  bearer token:     {token}");
    println!();
    println!("A gateway route for it (export MOCK_UPSTREAM_TOKEN={token} first):");
    println!();
    println!("  [[routes]]");
    println!("  name = \"mock\"");
    println!("  prefix = \"/mock\"");
    println!("  upstream = \"{base}\"");
    println!("  [routes.auth]");
    println!("  kind = \"bearer\"");
    println!("  token_env = \"MOCK_UPSTREAM_TOKEN\"");
    println!();
    println!("Press Ctrl-C to stop.");
}
