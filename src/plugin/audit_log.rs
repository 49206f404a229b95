//! `audit_log`: one JSON line per JSON-RPC request of the route, to a file or stdout.
//!
//! ```toml
//! [[routes.plugins]]
//! kind = "audit_log"
//! output = "/var/log/mcp-gateway/audit.jsonl"   # or "stdout"
//! include_arguments = false                     # tool arguments; off by default
//! ```
//!
//! A line names the time, the route, the client (a digest, never a key or an identity),
//! the JSON-RPC method, the tool a `tools/call` names, the HTTP status and the duration.
//! Arguments are written only when `include_arguments` is on; results never are. Lines go
//! through a bounded queue to a thread of their own, so a slow disk never holds a request;
//! when the queue is full, lines are dropped and counted in a warning.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};

use serde::Deserialize;
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{Configured, EnvLookup, Finished, Plugin, PluginError};

/// Lines waiting for the writer; past this, new ones are dropped.
const QUEUE: usize = 4096;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Settings {
    output: String,
    #[serde(default)]
    include_arguments: bool,
}

#[derive(Debug, Clone)]
pub(crate) enum Output {
    Stdout,
    File(PathBuf),
}

#[derive(Debug)]
pub(crate) struct Checked {
    output: Output,
    include_arguments: bool,
}

#[derive(Debug)]
pub(crate) struct AuditLog {
    lines: SyncSender<String>,
    include_arguments: bool,
    dropped: AtomicU64,
}

impl Configured for AuditLog {
    const KIND: &'static str = "audit_log";
    type Settings = Settings;
    type Checked = Checked;

    fn check(settings: Settings, _env: EnvLookup<'_>) -> Result<Checked, String> {
        let output = match settings.output.as_str() {
            "" => return Err("output: give a file path or \"stdout\"".into()),
            "stdout" | "-" => Output::Stdout,
            path => Output::File(PathBuf::from(path)),
        };
        Ok(Checked {
            output,
            include_arguments: settings.include_arguments,
        })
    }

    fn build(settings: &Checked, route: &str) -> Result<Self, PluginError> {
        let mut sink: Box<dyn Write + Send> = match &settings.output {
            Output::Stdout => Box::new(std::io::stdout()),
            Output::File(path) => Box::new(open(path)?),
        };
        let (lines, queue) = std::sync::mpsc::sync_channel::<String>(QUEUE);
        let name = format!("audit-{route}");
        let writer = move || {
            while let Ok(line) = queue.recv() {
                let written = writeln!(sink, "{line}").and_then(|()| sink.flush());
                if let Err(error) = written {
                    tracing::error!(%error, "cannot write the audit log");
                }
            }
        };
        std::thread::Builder::new()
            .name(name)
            .spawn(writer)
            .map_err(|source| PluginError::Thread { source })?;
        Ok(AuditLog {
            lines,
            include_arguments: settings.include_arguments,
            dropped: AtomicU64::new(0),
        })
    }
}

/// The audit file, appended to, readable by the owner only when the gateway creates it.
fn open(path: &PathBuf) -> Result<std::fs::File, PluginError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| PluginError::Open {
            path: path.clone(),
            source,
        })
}

impl Plugin for AuditLog {
    fn wants_request_body(&self) -> bool {
        true
    }

    fn logging(&self, finished: &Finished<'_>) {
        let at = OffsetDateTime::now_utc()
            .format(&Rfc3339)
            .unwrap_or_default();
        for call in finished.calls {
            let mut line = json!({
                "time": at,
                "route": finished.route,
                "client": finished.client.hash(),
                "method": call.method,
                "tool": call.tool,
                "status": finished.status,
                "duration_ms": finished.elapsed.as_millis() as u64,
            });
            if self.include_arguments {
                line["arguments"] = call.arguments.clone().unwrap_or_default();
            }
            self.send(line.to_string());
        }
    }
}

impl AuditLog {
    fn send(&self, line: String) {
        match self.lines.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if dropped.is_power_of_two() {
                    tracing::warn!(dropped, "the audit log cannot keep up; lines were dropped");
                }
            }
            Err(TrySendError::Disconnected(_)) => {
                tracing::error!("the audit log writer stopped; lines are lost");
            }
        }
    }
}
