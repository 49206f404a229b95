#!/usr/bin/env bash
# Installs what building the gateway needs beyond Rust: cmake, which pingora's zlib-ng
# build uses. Does nothing when cmake is already on PATH.
#   As root on Debian/Ubuntu: apt-get install cmake.
#   Otherwise: pip install --user cmake (PyPI ships a cmake binary), then make sure
#   ~/.local/bin is on PATH.
set -euo pipefail

if command -v cmake >/dev/null 2>&1; then
    exit 0
fi

if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "install-deps: installing cmake with apt-get" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake >/dev/null
elif command -v python3 >/dev/null 2>&1; then
    echo "install-deps: installing cmake with pip --user" >&2
    python3 -m pip install --user --quiet cmake ||
        python3 -m pip install --user --quiet --break-system-packages cmake
    if ! command -v cmake >/dev/null 2>&1; then
        echo "install-deps: cmake is in ~/.local/bin: add it to PATH and run again" >&2
        exit 1
    fi
else
    echo "install-deps: cmake is missing: install it with your package manager" >&2
    exit 1
fi
