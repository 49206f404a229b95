//! Helpers shared by the integration tests; each test binary uses only some of them.
#![allow(dead_code)]

pub mod gateway;
pub mod interop;
pub mod mock_upstream;
pub mod postgres;
pub mod process;
pub mod signin;
pub mod workspace_oauth;

/// A complete MCP `initialize` request (id 1), as a client opening a session sends it.
pub fn initialize_request() -> serde_json::Value {
    serde_json::json!({
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": { "name": "t", "version": "1" },
        },
    })
}
