#!/usr/bin/env bash
# The README's test command: installs what the tests need, then runs every test against the real
# local cluster. The cluster is started by the tests' session fixture (and stopped again if it was
# not running before); a cluster that cannot start fails the run.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
[ -x hack/install-deps.sh ] && bash hack/install-deps.sh
venv=$(bash hack/venv.sh)
# This checkout's code first, also in the subprocesses the tests start (see hack/venv.sh).
export PYTHONPATH="$root/operator:$root/serving_image${PYTHONPATH:+:$PYTHONPATH}"
exec "$venv/bin/python" -m pytest tests -p no:cacheprovider "$@"
