#!/usr/bin/env bash
# Builds the pinned Kubernetes binaries from the k8s.io/kubernetes Go module (wrapper module hack/k8s)
# into the cache outside the repo. A binary is not built when a usable one (same release line) is
# already in the cache, in $KUBEBUILDER_ASSETS or on PATH.
#   build-k8s.sh [COMMAND...]   (default: the control plane, kubectl, kubelet and kube-proxy)
set -euo pipefail
. "$(dirname "$0")/lib.sh"
mkdir -p "$K8S_BIN"
# Stamp the real version: without it the binaries (and the node) report v0.0.0-master.
minor=${K8S_VERSION#*.}; minor=${minor%%.*}
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=v$K8S_VERSION -X $pkg.gitMajor=${K8S_VERSION%%.*} -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
done
cmds=${*:-kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy}
cd "$KILN_ROOT/hack/k8s"
for c in $cmds; do
  if found=$(find_bin "$c"); then log "$c: using $found"; continue; fi
  command -v go >/dev/null || die "go is not installed: it is needed to build $c v$K8S_VERSION"
  log "$c v$K8S_VERSION: building (a cold build of the control plane takes 6-15 minutes on 2 cores)..."
  start=$SECONDS
  # go build is silent for minutes: a heartbeat shows it is alive.
  ( while sleep 30; do log "$c: still building ($((SECONDS - start)) s)"; done ) &
  heartbeat=$!
  trap 'kill $heartbeat 2>/dev/null || true' EXIT
  CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$K8S_BIN/$c.tmp" "k8s.io/kubernetes/cmd/$c"
  kill "$heartbeat" 2>/dev/null || true
  mv "$K8S_BIN/$c.tmp" "$K8S_BIN/$c"
  log "$c: built in $((SECONDS - start)) s"
done
