#!/usr/bin/env bash
# Starts the artifact store the cluster's pods use: moto's S3 API server, a real S3 protocol
# implementation, as a host process. With the node it listens on the pod bridge's host address (pods
# reach it there; nothing beyond the machine can), otherwise on loopback. Prints the endpoint URL.
# State lives in the process's memory: restarting the store forgets every object.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
port=${KILN_S3_PORT:-9000}
if ip -4 addr show "$BRIDGE" 2>/dev/null | grep -q "inet $BRIDGE_IP/"; then host=$BRIDGE_IP; else host=127.0.0.1; fi
endpoint="http://$host:$port"
python=$(bash "$KILN_ROOT/hack/venv.sh")/bin/python
if ! pid_of s3 >/dev/null || ! args_same s3 -m moto.server -H "$host" -p "$port"; then
  stop_daemon s3 5
  start_daemon s3 "$python" -m moto.server -H "$host" -p "$port"
  wait_for "the S3 server on $endpoint" 30 s3 curl -sf "$endpoint/moto-api/"
  log "S3 API server (moto) on $endpoint"
fi
echo "$endpoint"
