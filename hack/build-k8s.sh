#!/usr/bin/env bash
# Builds the pinned Kubernetes binaries (and etcd) into the cache outside the repo; reuses what is there.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
KILN_CACHE=${KILN_CACHE:-$HOME/.cache/kiln}
K8S_VERSION=1.37.2
ETCD_VERSION=3.6.16
bin=$KILN_CACHE/k8s-v$K8S_VERSION/bin
mkdir -p "$bin"
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=v$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=${K8S_VERSION#1.} -X $pkg.gitTreeState=clean"
done
ldflags="${ldflags/gitMinor=37.2/gitMinor=37}"
cmds=${*:-kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy}
cd "$here/k8s"
for c in $cmds; do
  if [ -x "$bin/$c" ]; then echo "[build] $c: cached"; continue; fi
  echo "[build] $c: building (the first build takes minutes)..."
  start=$SECONDS
  CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$bin/$c.tmp" "k8s.io/kubernetes/cmd/$c"
  mv "$bin/$c.tmp" "$bin/$c"
  echo "[build] $c: done in $((SECONDS - start)) s"
done
