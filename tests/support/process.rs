//! The gateway binary as a process, for the tests that need the real thing: its own
//! environment, umask, log level and exit status.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command};

/// A started gateway process, killed and reaped when dropped (also when a test fails).
#[derive(Debug)]
pub struct Running(Child);

impl Running {
    pub fn new(child: Child) -> Self {
        Self(child)
    }

    pub fn id(&self) -> u32 {
        self.0.id()
    }

    /// The exit status, once the process has ended by itself.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.0.try_wait().ok().flatten()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `mcp-u2m-gateway` with no inherited config path, ready for arguments.
pub fn gateway_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mcp-u2m-gateway"));
    command.env_remove("MCP_GATEWAY_CONFIG");
    command
}

/// Reads a started `serve`'s stdout up to its banner; returns its base URL. The child must
/// have been spawned with a piped stdout.
pub fn listening_url(child: &mut Child) -> String {
    let stdout = BufReader::new(child.stdout.take().expect("a piped stdout"));
    stdout
        .lines()
        .map_while(Result::ok)
        .find_map(|line| line.split("listening on ").nth(1).map(str::to_owned))
        .expect("the banner names the address")
}
