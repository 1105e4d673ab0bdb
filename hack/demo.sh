#!/usr/bin/env bash
# The README's main job: installs what is missing, starts the local cluster (control plane, node,
# images) and the artifact store, then runs the whole loop (hack/demo.py: the operator installed in the
# cluster by the Helm chart, release kiln in kiln-system) and leaves all of it running, for
# docs/quickstart.md. `bash hack/demo.sh --host-operator` runs the operator on this machine instead.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
[ -x hack/install-deps.sh ] && bash hack/install-deps.sh
venv=$(bash hack/venv.sh)
export PYTHONPATH="$root/operator:$root/serving_image"
bash hack/cluster-up.sh
endpoint=$(bash hack/store-up.sh | tail -n 1)
exec "$venv/bin/python" hack/demo.py --s3-endpoint "$endpoint" "$@"
