#!/usr/bin/env bash
# Stops the local cluster and leaves no process behind: the node first (its pods removed before the
# kubelet and containerd stop, so no mount, netns, bridge, rule or cgroup is left), then the
# controllers, then the apiserver BEFORE etcd (the other order hangs for minutes).
# The state (PKI, etcd data) is kept for a fast warm start; KILN_PURGE=1 deletes it too.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
here=$KILN_ROOT/hack
log "stopping the local cluster (state in $KILN_STATE)"
bash "$here/store-down.sh"  # the artifact store of the demo and the end-to-end tests, when it runs
[ -f "$here/node-down.sh" ] && bash "$here/node-down.sh"
stop_daemon kube-scheduler 15
stop_daemon kube-controller-manager 15
stop_daemon kube-apiserver 30
stop_daemon etcd 30
if [ "${KILN_PURGE:-0}" = 1 ]; then
  rm -rf "$KILN_STATE"
  log "state deleted"
fi
log "cluster is down"
