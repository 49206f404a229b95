//! Parsing the OAuth callback's query string, under libFuzzer: the properties are
//! `mcp_u2m_gateway::fuzzing::callback_query`'s.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mcp_u2m_gateway::fuzzing::callback_query(data));
