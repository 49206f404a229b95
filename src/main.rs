//! The `mcp-u2m-gateway` binary: parse the command line, hand over to the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    mcp_u2m_gateway::cli::Cli::parse().run()
}
