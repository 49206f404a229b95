//! Sniffing the JSON-RPC method of a request body, under libFuzzer: the properties are
//! `mcp_u2m_gateway::fuzzing::jsonrpc_sniff`'s.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mcp_u2m_gateway::fuzzing::jsonrpc_sniff(data));
