#!/usr/bin/env bash
# Installs what the tests need beyond the build: headless Chromium and its WebDriver
# (Debian's chromium and chromium-driver), which drive the web UI in tests/browser.rs.
# Does nothing when both are there. Node and the Python SDK have scripts of their own
# (interop-node.sh, interop-venv.sh), since they install into target/ without root.
set -euo pipefail

if [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]]; then
    exit 0
fi
if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "install-test-deps: installing chromium and chromium-driver with apt-get" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
else
    echo "install-test-deps: the browser test needs /usr/bin/chromium and /usr/bin/chromedriver:" >&2
    echo "  sudo apt-get install chromium chromium-driver" >&2
    exit 1
fi
