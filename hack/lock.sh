#!/usr/bin/env bash
# Writes constraints.txt: every distribution the runtime and operator images install (pyproject.toml's
# `runtime` and `operator` extras, transitive ones included, and setuptools, the build backend), pinned
# `name==version`, resolved together for CPython 3.11 on Linux x86_64, the images' Python (Debian
# bookworm's python3). Both Dockerfiles, the image wheelhouse (hack/build-images.sh) and the dev venv
# (hack/venv.sh) install with `-c constraints.txt`.
#   lock.sh                      keep every pin that still satisfies pyproject.toml; resolve only what is new
#   lock.sh -P NAME [-P NAME]    also move NAME to its newest release the other pins allow
#   lock.sh --upgrade            move everything to the newest releases that resolve together
# (`make lock ARGS="-P numpy"` runs the same.)
#
# Why pip-compile (pip-tools): it reads pyproject.toml's extras and build requirements itself, uses pip's
# own resolver and configuration (index, proxies, certificates: whatever `pip install` here uses), writes
# a constraints-safe file (--strip-extras) saying why each package is there, and keeps the existing pins
# unless asked to move them, so re-running it after a change of pyproject.toml changes only what must
# change. `pip install --dry-run --report` resolves too, but always to the newest releases.
# Moving everything at once can backtrack for a long time (pip tries boto3 release after boto3 release)
# when the newest releases conflict, as kubernetes 37.0.2 (python-dateutil>=3) and botocore
# (python-dateutil<3) did when this file was written: then move packages one by one with -P.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
PIP_TOOLS_VERSION=7.6.2
PIP_VERSION=26.0.1

py=$(command -v python3.11 || command -v python3) || die "python3.11 is missing"
"$py" -c 'import platform, sys; assert sys.version_info[:2] == (3, 11) and sys.platform == "linux" and platform.machine() == "x86_64"' \
  || die "pip-compile resolves for the Python it runs on: CPython 3.11 on Linux x86_64 is needed (the images')"

# pip-tools in a venv of its own, kept in the cache: the project's venv stays as it is.
tools=$KILN_CACHE/pip-tools-$PIP_TOOLS_VERSION
if [ ! -x "$tools/bin/pip-compile" ]; then
  log "installing pip-tools $PIP_TOOLS_VERSION into $tools..."
  rm -rf "$tools"
  "$py" -m venv "$tools"
  "$tools/bin/pip" install -q "pip==$PIP_VERSION" "pip-tools==$PIP_TOOLS_VERSION"
fi

log "resolving the runtime and operator extras together..."
cd "$KILN_ROOT"
CUSTOM_COMPILE_COMMAND="make lock" "$tools/bin/pip-compile" --quiet \
  --extra runtime --extra operator --build-deps-for wheel --allow-unsafe --strip-extras \
  --no-emit-index-url --no-emit-find-links --no-emit-trusted-host \
  --output-file constraints.txt "$@" pyproject.toml
log "constraints.txt: $(grep -cE '^[A-Za-z0-9]' constraints.txt) distributions pinned"
