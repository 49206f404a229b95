#!/usr/bin/env bash
# Installs what the tests need beyond the build, from Debian's packages:
# - headless Chromium and its WebDriver (chromium, chromium-driver), which drive the web UI
#   in tests/browser.rs;
# - the PostgreSQL server (postgresql), whose binaries tests/postgres_store.rs runs to start
#   throw-away databases of its own (it never uses the cluster the package may set up).
# Installs only what is missing, so running it again does nothing. Node and the Python SDK
# have scripts of their own (interop-node.sh, interop-venv.sh), since they install into
# target/ without root.
set -euo pipefail

missing=()
if [[ ! -x /usr/bin/chromium || ! -x /usr/bin/chromedriver ]]; then
    missing+=(chromium chromium-driver)
fi
if ! compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null; then
    missing+=(postgresql)
fi
if [[ ${#missing[@]} -eq 0 ]]; then
    exit 0
fi
if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "install-test-deps: installing ${missing[*]} with apt-get" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
    echo "install-test-deps: the tests need ${missing[*]}:" >&2
    echo "  sudo apt-get install ${missing[*]}" >&2
    exit 1
fi
