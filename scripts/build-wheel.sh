#!/usr/bin/env bash
# Build the gateway as a Python wheel that carries the binary, for platforms that install
# Python packages but run no binaries of their own build (Databricks Apps: Ubuntu 22.04,
# glibc 2.35, x86_64, and no file over 10 MB in an upload).
#
# The binary is linked by zig against glibc 2.28 (manylinux_2_28), stripped, and packed by
# maturin's `bin` bindings; the wheel lands in target/wheels/. Then the wheel is checked:
# its platform tag, its size, the newest glibc symbol the binary needs, and that the binary
# installed from it by pip runs `--version`. Any failed check exits non-zero.
#
# maturin and zig come from PyPI (pinned below) into target/wheel-venv; the build uses its
# own target directory, target/wheel-build, so it never disturbs the usual one.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

MATURIN_VERSION="1.16.0"
ZIGLANG_VERSION="0.17.1"
PLATFORM="manylinux_2_28"
MAX_BYTES=$((10 * 1000 * 1000))
MAX_GLIBC="2.28"

log() {
    echo "build-wheel: $*" >&2
}

die() {
    log "$*"
    exit 1
}

if ! command -v objdump >/dev/null 2>&1; then
    if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        log "installing binutils (objdump) with apt-get"
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq binutils >/dev/null
    else
        die "objdump is missing: install binutils"
    fi
fi

venv="target/wheel-venv"
if [[ ! -x "$venv/bin/maturin" ]] || ! "$venv/bin/maturin" --version | grep -qF "$MATURIN_VERSION"; then
    log "installing maturin $MATURIN_VERSION and zig $ZIGLANG_VERSION into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "maturin==$MATURIN_VERSION" "ziglang==$ZIGLANG_VERSION"
fi

rm -f target/wheels/mcp_u2m_gateway-*.whl
log "building (release, linked for $PLATFORM)"
PATH="$repo_root/$venv/bin:$PATH" CARGO_TARGET_DIR=target/wheel-build \
    maturin build --release --zig --compatibility "$PLATFORM" \
    --target x86_64-unknown-linux-gnu --out target/wheels >&2

wheel="$(ls target/wheels/mcp_u2m_gateway-*.whl)"
name="$(basename "$wheel")"
log "checking $name"

[[ "$name" == *"-py3-none-${PLATFORM}_x86_64.whl" ]] ||
    die "$name: expected the platform tag py3-none-${PLATFORM}_x86_64"

size="$(stat -c %s "$wheel")"
((size <= MAX_BYTES)) || die "$name is $size bytes, over the $MAX_BYTES an upload may hold"

check="$(mktemp -d)"
trap 'rm -rf "$check"' EXIT
python3 -m venv "$check/venv"
"$check/venv/bin/pip" install --quiet --no-index "$wheel"
binary="$check/venv/bin/mcp-u2m-gateway"
[[ -x "$binary" ]] || die "the wheel installed no mcp-u2m-gateway executable"

newest="$(objdump -T "$binary" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -1)"
[[ "$(printf '%s\n%s\n' "$newest" "$MAX_GLIBC" | sort -V | tail -1)" == "$MAX_GLIBC" ]] ||
    die "the binary needs glibc $newest, newer than $MAX_GLIBC"

version="$("$binary" --version)"
expected="mcp-u2m-gateway $(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)"
[[ "$version" == "$expected" ]] || die "the installed binary says '$version', not '$expected'"

log "ok: $name, $size bytes, glibc <= $newest, '$version'"
echo "$wheel"
