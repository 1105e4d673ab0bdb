#!/usr/bin/env bash
# Stops the artifact store started by store-up.sh (its objects were in memory: they are gone).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
stop_daemon s3 10
