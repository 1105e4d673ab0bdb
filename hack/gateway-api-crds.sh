#!/usr/bin/env bash
# Installs the Gateway API's standard-channel CRDs (HTTPRoute, Gateway, ...) into the local cluster, so
# an InferenceService with spec.gateway gets its canary share from HTTPRoute weights.
#
# The CRDs come from the Go module sigs.k8s.io/gateway-api at a pinned release, through the Go module
# proxy (the one package source reachable here; the release's module carries config/crd/standard/).
# They are copied once to ~/.cache/kiln/gateway-api-v<version>/ and applied server-side, so running
# this again changes nothing.
#
# Not part of cluster-up on purpose: without these CRDs the canary's share is the replica ratio, and
# that path must stay the one the other tests see. tests/integration/test_gateway_route.py calls this.
# Uses $KUBECONFIG when set, else the local cluster's admin kubeconfig.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

# The newest stable release on the proxy when pinned (`go list -m sigs.k8s.io/gateway-api@latest`).
GATEWAY_API_VERSION=${KILN_GATEWAY_API_VERSION:-1.7.0}
MODULE=sigs.k8s.io/gateway-api@v$GATEWAY_API_VERSION
dest=$KILN_CACHE/gateway-api-v$GATEWAY_API_VERSION/standard

fetch() {
  command -v go >/dev/null || die "go is not installed: it fetches $MODULE from the Go module proxy"
  log "fetching $MODULE from the Go module proxy"
  local json dir zip tmp
  # Run outside any module. The exit code is ignored: a release needing a newer Go than the local one
  # reports an "Error" and leaves no extracted Dir, but its zip (checksum-verified) is still there.
  json=$(cd / && GOFLAGS= GO111MODULE=on go mod download -json "$MODULE" || true)
  dir=$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p' <<<"$json")
  zip=$(sed -n 's/^[[:space:]]*"Zip": "\(.*\)",\{0,1\}$/\1/p' <<<"$json")
  tmp=$(mktemp -d "$KILN_CACHE/gateway-api.XXXXXX")
  if [ -n "$dir" ] && [ -d "$dir/config/crd/standard" ]; then
    cp "$dir"/config/crd/standard/gateway.networking.k8s.io_*.yaml "$tmp/"
  elif [ -n "$zip" ] && [ -f "$zip" ]; then
    unzip -q -j "$zip" "$MODULE/config/crd/standard/gateway.networking.k8s.io_*.yaml" -d "$tmp"
  else
    rm -rf "$tmp"
    die "go mod download $MODULE gave neither a directory nor a zip: $json"
  fi
  # The directory also holds a ValidatingAdmissionPolicy guarding upgrades of these CRDs: only the CRDs
  # are needed here, and a cluster-wide admission policy would outlive the test that wanted a route.
  rm -f "$tmp"/*_vap_*.yaml
  ls "$tmp"/*httproutes.yaml >/dev/null 2>&1 || { rm -rf "$tmp"; die "$MODULE has no standard HTTPRoute CRD"; }
  # Whole or nothing: a half-copied cache would be taken for a complete one next time.
  mkdir -p "$(dirname "$dest")"
  rm -rf "$dest"
  mv "$tmp" "$dest"
  chmod 755 "$dest" && chmod 644 "$dest"/*.yaml
}

ls "$dest"/*httproutes.yaml >/dev/null 2>&1 || fetch
log "CRDs of $MODULE (standard channel) in $dest"

kc=${KUBECONFIG:-$KUBECONFIG_ADMIN}
kubectl_bin=$(find_bin kubectl) || die "no kubectl v$K8S_VERSION found: run make build"
k() { "$kubectl_bin" --kubeconfig "$kc" --request-timeout=30s "$@"; }
k apply --server-side --force-conflicts --field-manager=kiln-hack -f "$dest" >/dev/null
# gateway.networking.k8s.io_<plural>.yaml holds the CRD <plural>.gateway.networking.k8s.io.
crds=()
for f in "$dest"/gateway.networking.k8s.io_*.yaml; do
  plural=${f##*/gateway.networking.k8s.io_}
  crds+=("crd/${plural%.yaml}.gateway.networking.k8s.io")
done
k wait --for=condition=Established --timeout=60s "${crds[@]}" >/dev/null
log "established: ${crds[*]#crd/}"
