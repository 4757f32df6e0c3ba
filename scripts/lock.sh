#!/usr/bin/env bash
# Writes the lock files under deploy/requirements/ from pyproject.toml, for `make lock`:
#
#   dev.txt      runtime + the export, bench and dev extras: `make install`, hence CI
#   runtime.txt  runtime dependencies only: `make install-runtime`, hence `make demo`
#   gpu.txt      runtime + the gpu extra: deploy/Dockerfile
#   build.txt    pip, setuptools and wheel: installed first, then the project with
#                --no-build-isolation, so nothing is resolved on the day of an install
#
# Every lock is universal (any OS, Python >= 3.11; markers select what a platform installs) and
# carries sha256 hashes (installed with --require-hashes). dev.txt is resolved first and the
# others within it, so a package shared by two locks has one version in both.
#
# Existing pins are kept while pyproject.toml still admits them; UPGRADE=1 moves every pin to the
# newest release that fits. Environment: UV (the uv binary, default `uv`), PYTHON (3.11+, default
# python3), UPGRADE.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$SCRIPT_DIR/.."

UV=${UV:-uv}
OUT=deploy/requirements
mkdir -p "$OUT"
KEEP=$(mktemp -d)
trap 'rm -rf "$KEEP"' EXIT

flags=(--universal --python-version 3.11 --generate-hashes --quiet
  --custom-compile-command "make lock")
[[ ${UPGRADE:-} == 1 ]] && flags+=(--upgrade)

# One lock: $1 file name, $2 what installs it; the rest goes to `uv pip compile`.
lock() {
  local name=$1 purpose=$2
  shift 2
  [[ -f $OUT/$name ]] && cp -p "$OUT/$name" "$KEEP/$name"
  "$UV" pip compile "${flags[@]}" "$@" -o "$OUT/$name"
  local body
  body=$(cat "$OUT/$name")
  {
    echo "# $purpose."
    echo "# Exact versions with hashes, generated from pyproject.toml by \`make lock\` (scripts/lock.sh)."
    echo "# Do not edit: change pyproject.toml and run \`make lock\` again; \`make lock UPGRADE=1\`"
    echo "# moves every pin to the newest release that fits. tests/unit/test_lock.py fails when this"
    echo "# file is stale against pyproject.toml."
    printf '%s\n' "$body"
  } >"$OUT/$name"
  # An unchanged lock keeps its time stamp, so the Makefile's install stamps stay valid.
  if [[ -f $KEEP/$name ]] && cmp -s "$KEEP/$name" "$OUT/$name"; then
    touch -r "$KEEP/$name" "$OUT/$name"
  fi
}

lock dev.txt "Installed by \`make install\` and CI (runtime + export, bench, dev extras)" \
  pyproject.toml --extra export --extra bench --extra dev
lock runtime.txt "Installed by \`make install-runtime\` and \`make demo\` (runtime only)" \
  pyproject.toml -c "$OUT/dev.txt"
lock gpu.txt "Installed by deploy/Dockerfile (runtime + the gpu extra)" \
  pyproject.toml --extra gpu -c "$OUT/dev.txt"
# The build backend named in [build-system] and pip itself, read from pyproject.toml.
"${PYTHON:-python3}" -c '
import tomllib
print("\n".join(["pip", *tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]]))
' | lock build.txt "Installed first by every install (pip, the [build-system] backend)" \
  - -c "$OUT/dev.txt"
