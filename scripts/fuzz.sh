#!/usr/bin/env bash
# Fuzzes the parsers of untrusted input (fuzz/fuzz_targets/: the SSE scanner and endpoint
# rewrite, gateway.toml, the JSON-RPC method sniffer, the OAuth callback's query) for
# SECONDS seconds each (default 60), with cargo-fuzz and libFuzzer.
#
# Installs cargo-fuzz into ~/.cargo/bin when it is missing, builds every target in one
# `cargo fuzz build` so the dependencies compile once, then runs each target starting from
# its checked-in seeds in fuzz/corpus/<target>/. What the fuzzer adds goes to the ignored
# fuzz/target/corpus/<target>/, never to the seeds, so the work tree stays clean. Exits 1
# when any target crashes, naming the input that did it (under fuzz/artifacts/); a crash
# worth keeping goes into fuzz/corpus/<target>/, where `cargo test --test fuzz_corpus`
# replays it. Each target's full libFuzzer log is in fuzz/target/logs/<target>.log.
#
# Usage: scripts/fuzz.sh [SECONDS]
#
# Environment:
#   FUZZ_SANITIZER  address (default) or none; see below
set -euo pipefail

cd "$(dirname "$0")/.."

seconds="${1:-60}"
targets=(sse_scanner config jsonrpc_sniff callback_query)
cargo_fuzz_version=0.13.2
logs=fuzz/target/logs
sanitizer="${FUZZ_SANITIZER:-address}"

# cargo-fuzz passes nightly-only `-Z` flags to rustc (`-Zsanitizer=address`); only the
# stable toolchain is at hand, and RUSTC_BOOTSTRAP=1 lets it take them. AddressSanitizer is
# the default because it builds this way, in about ten minutes from scratch on two cores
# against seven without it, and it checks the unsafe code of the dependencies the targets
# drive (bytes, url, serde_json, toml); the gateway's own code forbids unsafe. Its price is
# speed: four to seven times fewer executions per second. FUZZ_SANITIZER=none trades the
# memory checks for those executions, and needs no `-Z` flag at all.
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz $cargo_fuzz_version" >&2
    cargo install cargo-fuzz --locked --version "$cargo_fuzz_version"
fi

echo "fuzz: building ${targets[*]}" >&2
build_start=$SECONDS
cargo fuzz build --sanitizer "$sanitizer"
echo "fuzz: built in $((SECONDS - build_start)) s" >&2

# The targets run straight from the build, so that nothing recompiles between them.
bin="fuzz/target/$(rustc -vV | sed -n 's/^host: //p')/release"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_odr_violation=0}"
mkdir -p "$logs"
failed=()
for target in "${targets[@]}"; do
    work="fuzz/target/corpus/$target"
    artifacts="fuzz/artifacts/$target/"
    mkdir -p "$work" "$artifacts"
    echo "fuzz: $target for $seconds s" >&2

    # The first corpus directory is the one libFuzzer writes to; the seeds are only read.
    if "$bin/$target" -max_total_time="$seconds" -timeout=10 -artifact_prefix="$artifacts" \
        "$work" "fuzz/corpus/$target" >"$logs/$target.log" 2>&1; then
        grep -E '^Done [0-9]+ runs|DONE' "$logs/$target.log" >&2 || true
        continue
    fi

    failed+=("$target")
    # The panic message and libFuzzer's verdict; the stack trace stays in the log.
    grep -E -A3 'panicked at|^==[0-9]+==ERROR|^SUMMARY' "$logs/$target.log" | head -n 30 >&2 ||
        tail -n 30 "$logs/$target.log" >&2
    crash=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$logs/$target.log" | tail -n 1)
    echo "fuzz: $target FAILED; input: ${crash:-none written, see $logs/$target.log}" >&2
    if [[ -n $crash ]]; then
        echo "fuzz: reproduce with: $bin/$target $crash" >&2
    fi
done

if ((${#failed[@]} > 0)); then
    echo "fuzz: failing targets: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz: no crashes in ${targets[*]}" >&2
