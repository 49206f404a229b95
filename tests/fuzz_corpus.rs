//! Replays the fuzz targets' checked-in seed corpus through their property checks, so that
//! `cargo test` holds every seed (and every crash ever added as a regression seed) to the
//! same properties the fuzzer does, without cargo-fuzz or libFuzzer. A few hand-made inputs
//! per target aim at the property directly.

use std::fs;
use std::path::PathBuf;

use mcp_u2m_gateway::fuzzing;

/// The seeds need not be many, but an empty or missing directory must not pass.
const MIN_SEEDS: usize = 5;

/// Runs `check` on every file in `fuzz/corpus/<target>/`.
fn replay(target: &str, check: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let entries = fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut seeds = 0;
    for entry in entries {
        let path = entry.expect("corpus entry").path();
        let data = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        check(&data);
        seeds += 1;
    }
    assert!(
        seeds >= MIN_SEEDS,
        "{} holds {seeds} seeds, fewer than {MIN_SEEDS}",
        dir.display()
    );
}

/// An SSE fuzz input: `stream` fed in chunks of `lengths`, then the rest.
fn chunked(lengths: &[u8], stream: &[u8]) -> Vec<u8> {
    let count = u8::try_from(lengths.len()).expect("at most 255 chunk lengths");
    let mut data = vec![count];
    data.extend_from_slice(lengths);
    data.extend_from_slice(stream);
    data
}

#[test]
fn sse_scanner_corpus_holds_its_properties() {
    replay("sse_scanner", fuzzing::sse_scanner);
}

#[test]
fn sse_scanner_output_is_the_same_wherever_an_endpoint_event_is_split() {
    let stream =
        b"\xEF\xBB\xBFevent: endpoint\r\ndata: /v1/message?sessionId=abc\r\n\r\n: ping\r\n\r\n";
    let len = u8::try_from(stream.len()).expect("a short stream");
    for first in 0..=len {
        fuzzing::sse_scanner(&chunked(&[first], stream));
        fuzzing::sse_scanner(&chunked(&[first, 1, 0, 2], stream));
    }
}

#[test]
fn config_corpus_holds_its_properties() {
    replay("config", fuzzing::config);
}

#[test]
fn config_check_accepts_the_shipped_file_and_bytes_that_are_not_text() {
    let shipped = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("gateway.toml");
    fuzzing::config(&fs::read(shipped).expect("gateway.toml is readable"));
    fuzzing::config(b"[[routes]]\nname = \"\xff\xfe\"\nprefix = \"/\xc3\"\n");
}

#[test]
fn jsonrpc_sniff_corpus_holds_its_properties() {
    replay("jsonrpc_sniff", fuzzing::jsonrpc_sniff);
}

#[test]
fn jsonrpc_sniff_agrees_on_bodies_built_from_any_bytes() {
    fuzzing::jsonrpc_sniff(b"");
    for seed in 0..=u8::MAX {
        let data: Vec<u8> = (0..64u8)
            .map(|i| seed.wrapping_mul(31).wrapping_add(i.wrapping_mul(seed | 1)))
            .collect();
        fuzzing::jsonrpc_sniff(&data);
    }
}

#[test]
fn callback_query_corpus_holds_its_properties() {
    replay("callback_query", fuzzing::callback_query);
}

#[test]
fn callback_query_check_runs_on_long_codes_and_broken_escapes() {
    fuzzing::callback_query(b"code=a-long-authorization-code&state=s&iss=https%3A%2F%2Fa");
    fuzzing::callback_query(b"state=%F0%9F&code=%E2%82&code=\xff\xfe-not-utf8");
}
