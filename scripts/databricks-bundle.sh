#!/usr/bin/env bash
# Fill deploy/databricks/build/ with what a Databricks App uploads: app.yaml (and
# gateway.toml, when deploy/databricks/ has one), the wheel
# that carries the binary (scripts/build-wheel.sh builds and checks it), and a
# requirements.txt that installs that wheel. Then, from deploy/databricks/:
#
#   databricks bundle deploy && databricks bundle run mcp_gateway
#
# or, without a bundle: databricks sync deploy/databricks/build <workspace path> and
# databricks apps deploy <app> --source-code-path <workspace path>.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

wheel="$(scripts/build-wheel.sh | tail -1)"
build="deploy/databricks/build"
rm -rf "$build"
mkdir -p "$build"
cp deploy/databricks/app.yaml "$build/"
# A config file of the operator's own, for instance for a Lakebase token store.
if [[ -f deploy/databricks/gateway.toml ]]; then
    cp deploy/databricks/gateway.toml "$build/"
fi
cp "$wheel" "$build/"
echo "./$(basename "$wheel")" >"$build/requirements.txt"

largest="$(find "$build" -type f -printf '%s bytes: %p\n' | sort -n | tail -1)"
echo "databricks-bundle: $build is ready; its largest file is $largest" >&2
echo "$build"
