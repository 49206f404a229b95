//! Loading gateway.toml, under libFuzzer: the properties are
//! `mcp_u2m_gateway::fuzzing::config`'s.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mcp_u2m_gateway::fuzzing::config(data));
