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
  k8s_cmds="kube-apiserver kube-controller-manager kube-scheduler kubectl"
  [ "$KILN_NODE" = 0 ] || { require_root "the node"; bash "$here/install-deps.sh"; k8s_cmds+=" kubelet kube-proxy"; }
  missing=()
  for c in $k8s_cmds; do find_bin "$c" >/dev/null || missing+=("$c"); done
  [ ${#missing[@]} -eq 0 ] || bash "$here/build-k8s.sh" "${missing[@]}"
  find_bin etcd >/dev/null || bash "$here/build-etcd.sh"
  bash "$here/pki.sh"
  log "PKI ready in $PKI"
  # The network first: with a node the apiserver listens beyond loopback, and net-up.sh's rules
  # confine its port to loopback and the bridge before it starts.
  [ "$KILN_NODE" = 0 ] || bash "$here/net-up.sh"
  bash "$here/control-plane-up.sh"
  [ "$KILN_NODE" = 0 ] || bash "$here/node-up.sh"
fi
# The project's images (a base for tests, the runtime, the operator), also on the fast path: they are
# keyed by content hash, so this takes a second unless their sources changed.
[ "$KILN_NODE" = 0 ] || bash "$here/build-images.sh" base runtime operator
log "cluster is up. To use it:"
echo "export KUBECONFIG=$KUBECONFIG_ADMIN"
