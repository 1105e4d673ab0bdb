#!/usr/bin/env bash
# Stops the local Prometheus started by prometheus-up.sh (by its pid file; nothing else is touched).
# Its data under $KILN_STATE/prometheus is kept; cluster-down's KILN_PURGE=1 removes it with the rest.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
stop_daemon prometheus 30
