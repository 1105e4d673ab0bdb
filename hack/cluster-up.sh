#!/usr/bin/env bash
# Brings the local cluster up: builds what is missing, makes the PKI, starts the control plane and
# (unless KILN_NODE=0) the node. Idempotent: a second run while everything is up changes nothing.
# Prints `export KUBECONFIG=...` at the end; the kubeconfig is $KILN_STATE/kubeconfig.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
here=$KILN_ROOT/hack

mode="control plane and node"; [ "$KILN_NODE" = 0 ] && mode="control plane only (KILN_NODE=0)"
log "bringing up the local cluster: $mode; state in $KILN_STATE"

# Fast path: everything we would start is already running and healthy.
up_names="etcd kube-apiserver kube-controller-manager kube-scheduler"
[ "$KILN_NODE" = 0 ] || up_names+=" $(bash "$here/node-up.sh" --components)"
all_up=1
for n in $up_names; do pid_of "$n" >/dev/null || { all_up=0; break; }; done
if [ "$all_up" = 1 ] && curl_api /readyz >/dev/null 2>&1 && { [ "$KILN_NODE" = 0 ] || bash "$here/node-up.sh" --check; }; then
  log "already up: nothing to do"
else
  # Build only what is missing (a cold build takes minutes and prints its progress).
  need_build=0
  for c in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
    find_bin "$c" >/dev/null || need_build=1
  done
  [ "$need_build" = 1 ] && bash "$here/build-k8s.sh" kube-apiserver kube-controller-manager kube-scheduler kubectl
  find_bin etcd >/dev/null || bash "$here/build-etcd.sh"
  bash "$here/pki.sh"
  log "PKI ready in $PKI"
  bash "$here/control-plane-up.sh"
  [ "$KILN_NODE" = 0 ] || bash "$here/node-up.sh"
fi
log "cluster is up. To use it:"
echo "export KUBECONFIG=$KUBECONFIG_ADMIN"
