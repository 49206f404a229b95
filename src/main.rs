//! The `mcp-u2m-gateway` binary: parse the command line, hand over to the library.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc rather than the system allocator: the proxy allocates and frees small buffers
/// on every request, where glibc's malloc costs about a tenth of the gateway's CPU time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    mcp_u2m_gateway::cli::Cli::parse().run()
}
