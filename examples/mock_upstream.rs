//! Runs the mock MCP upstream from the integration tests as a standalone server, so a first
//! run of the gateway needs no real OAuth-protected MCP server.
//!
//! ```text
//! cargo run --example mock_upstream -- --help
//! cargo run --example mock_upstream -- --port 9000 --token dev-token --base-path /v1
//! ```
//!
//! It listens on 127.0.0.1 only and runs until Ctrl-C. It prints the URLs it serves: the MCP
//! endpoints, and the OAuth 2.1 authorization server on the same origin that a gateway route
//! with `kind = "oauth"` signs in through (the sign-in is approved without a page). A route with
//! `kind = "bearer"` can send the static token instead.

#[allow(dead_code)]
#[path = "../tests/support/mock_upstream.rs"]
mod mock_upstream;

use std::net::SocketAddr;
use std::process::ExitCode;

use mock_upstream::{MockOptions, MockUpstream};

const USAGE: &str = "\
Usage: cargo run --example mock_upstream -- [OPTIONS]

A mock MCP server (Streamable HTTP and legacy SSE) that demands a bearer token:
either the static --token, or an access token from its own OAuth 2.1
authorization server on the same origin (metadata discovery, dynamic client
registration, authorization code with PKCE S256, rotating refresh tokens;
every sign-in is approved at once, without a page).

Options:
  --port N           port on 127.0.0.1 [default: 9000; 0 picks a free one]
  --token T          static bearer token, always accepted [default: dev-token]
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
    let origin = format!("http://{}", mock.addr());
    let base_path = base.strip_prefix(&origin).unwrap_or_default();
    println!("mock MCP upstream listening on {origin}");
    println!("  Streamable HTTP:  {base}/mcp");
    println!("  legacy SSE:       {base}/sse");
    println!("  static token:     {token}  (always accepted, besides issued tokens)");
    println!();
    println!("OAuth 2.1 authorization server (sign-ins approved at once):");
    println!("  resource metadata: {origin}/.well-known/oauth-protected-resource{base_path}/mcp");
    println!("  server metadata:   {origin}/.well-known/oauth-authorization-server");
    println!("  authorize:         {origin}/authorize");
    println!("  token:             {origin}/token");
    println!("  registration:      {origin}/register");
    println!();
    println!("A gateway route signing in through it:");
    println!();
    println!("  [[routes]]");
    println!("  name = \"mock-oauth\"");
    println!("  prefix = \"/mock-oauth\"");
    println!("  upstream = \"{base}\"");
    println!("  [routes.auth]");
    println!("  kind = \"oauth\"");
    println!();
    println!("A gateway route using the static token (export MOCK_UPSTREAM_TOKEN={token} first):");
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
