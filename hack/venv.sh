#!/usr/bin/env bash
# Creates (or refreshes) the project's virtualenv in the cache outside the repo and prints its path.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
KILN_CACHE=${KILN_CACHE:-$HOME/.cache/kiln}
venv=$KILN_CACHE/venv
stamp=$venv/.kiln-stamp
# The venv is shared by every clone on the machine (CI clones into a fresh directory) and its editable
# install points at one of them, so callers put their own checkout first with PYTHONPATH (hack/test.sh,
# the Makefile, pytest's pythonpath); the stamp therefore covers the dependencies only.
# constraints.txt (`make lock`) pins what the venv shares with the images (the runtime and operator extras
# and their dependencies), so the tests run the versions the images ship; the test tools float.
want=$(cat "$root/pyproject.toml" "$root/constraints.txt" | sha256sum | cut -c1-16)
if [ ! -x "$venv/bin/python" ]; then
  py=$(command -v python3.11 || command -v python3)
  "$py" -m venv "$venv" >&2
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[venv] installing the project and its dependencies into $venv" >&2
  "$venv/bin/pip" install -q --upgrade pip >&2
  "$venv/bin/pip" install -q -c "$root/constraints.txt" -e "$root[dev]" >&2
  echo "$want" > "$stamp"
fi
echo "$venv"
