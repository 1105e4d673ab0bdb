#!/usr/bin/env bash
# Builds etcd (pinned in hack/etcd/go.mod) into the cache outside the repo; reuses a usable etcd already
# there, in $KUBEBUILDER_ASSETS or on PATH.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
if found=$(find_bin etcd); then log "etcd: using $found"; exit 0; fi
command -v go >/dev/null || die "go is not installed: it is needed to build etcd $ETCD_VERSION"
mkdir -p "$ETCD_BIN"
log "etcd $ETCD_VERSION: building from its Go module (about 30 s on 2 cores)..."
cd "$KILN_ROOT/hack/etcd"
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$ETCD_BIN/etcd.tmp" go.etcd.io/etcd/server/v3
mv "$ETCD_BIN/etcd.tmp" "$ETCD_BIN/etcd"
log "etcd: built $ETCD_BIN/etcd"
