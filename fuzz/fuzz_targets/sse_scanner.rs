//! The legacy SSE stream scanner and its endpoint rewrite, under libFuzzer: the properties are
//! `mcp_u2m_gateway::fuzzing::sse_scanner`'s.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mcp_u2m_gateway::fuzzing::sse_scanner(data));
