#!/usr/bin/env bash
# Prepare the Python virtualenv that the interoperability tests use to run the
# official MCP SDK client (tests/interop/python_client.py).
#
# The venv lives at ${INTEROP_VENV:-target/interop-venv}; a relative path is
# taken from the repository root. Running the script again is cheap: the venv
# is rebuilt only when tests/interop/requirements.txt changes or the venv no
# longer works. Progress goes to stderr; the last line on stdout is the path of
# the venv's python, for the caller to capture.
#
# Environment:
#   INTEROP_VENV  where the venv goes (default target/interop-venv)
#   PYTHON        interpreter to build it from (default python3; needs >= 3.10)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
requirements="$repo_root/tests/interop/requirements.txt"
python="${PYTHON:-python3}"

venv="${INTEROP_VENV:-target/interop-venv}"
case "$venv" in
    /*) ;;
    *) venv="$repo_root/$venv" ;;
esac
venv_python="$venv/bin/python"
stamp="$venv/.interop-requirements.sha256"

log() {
    echo "interop-venv: $*" >&2
}

die() {
    log "$*"
    exit 1
}

# The venv is deleted before a rebuild, so only ever delete something that is
# plainly a venv (or an empty leftover), never a directory someone pointed us at
# by mistake.
remove_venv() {
    if [[ ! -e "$venv" ]]; then
        return
    fi
    if [[ -f "$venv/pyvenv.cfg" ]] || [[ -z "$(ls -A "$venv")" ]]; then
        rm -rf "$venv"
    else
        die "$venv exists and is not a virtualenv; refusing to replace it"
    fi
}

# A stamp records what was installed; it is only written after pip succeeds,
# so an interrupted install is redone next time.
venv_is_current() {
    [[ -f "$stamp" ]] &&
        [[ "$(cat "$stamp")" == "$want_hash" ]] &&
        "$venv_python" -c 'import mcp.client.session' >/dev/null 2>&1
}

try_stdlib_venv() {
    remove_venv
    "$python" -m venv "$venv" >&2 && [[ -x "$venv_python" ]]
}

try_virtualenv() {
    remove_venv
    "$python" -m virtualenv --quiet "$venv" >&2 && [[ -x "$venv_python" ]]
}

# Debian ships venv's ensurepip in a separate package; as root we can add it.
install_debian_venv_package() {
    [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null 2>&1 || return 1
    local minor
    minor="$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
    log "python venv module unusable; installing python3-venv with apt-get"
    apt-get update -qq >&2 || return 1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >&2 || return 1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "python${minor}-venv" >&2 || true
}

# Without root, fetch virtualenv into the user site. Debian marks its Python as
# externally managed, which refuses even --user installs unless told otherwise.
install_user_virtualenv() {
    log "installing virtualenv into the user site"
    "$python" -m pip install --quiet --user virtualenv >&2 ||
        "$python" -m pip install --quiet --user --break-system-packages virtualenv >&2
}

create_venv() {
    log "creating $venv with $("$python" --version 2>&1)"
    if try_stdlib_venv; then
        return
    fi
    if "$python" -c 'import virtualenv' >/dev/null 2>&1 && try_virtualenv; then
        return
    fi
    if install_debian_venv_package && try_stdlib_venv; then
        return
    fi
    if install_user_virtualenv && try_virtualenv; then
        return
    fi
    die "could not create a virtualenv with $python; install python3-venv or virtualenv"
}

command -v "$python" >/dev/null 2>&1 || die "$python not found; set PYTHON to a Python >= 3.10"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
    die "$python is older than 3.10, which the mcp SDK requires"
[[ -f "$requirements" ]] || die "missing $requirements"

# Test binaries may call this concurrently; serialize them on a lock beside the venv.
mkdir -p "$(dirname "$venv")"
if command -v flock >/dev/null 2>&1; then
    exec {lock_fd}>"$venv.lock"
    flock "$lock_fd"
fi

want_hash="$({ cat "$requirements"; "$python" --version 2>&1; } | sha256sum | cut -d' ' -f1)"

if venv_is_current; then
    log "up to date at $venv"
else
    create_venv
    log "installing tests/interop/requirements.txt"
    "$venv_python" -m pip install --quiet --disable-pip-version-check -r "$requirements" >&2
    echo "$want_hash" >"$stamp"
fi

echo "$venv_python"
