#!/usr/bin/env bash
# Installs helm 3 (pinned) from its Go module into the cache outside the repo and prints its path.
# Reuses a helm already built there, or $KILN_HELM when set. A cold build takes about a minute.
set -euo pipefail
HELM_VERSION=v3.22.0
# helm's own Makefile stamps the Kubernetes version its client-go speaks (1.37 for v3.22.0); without it
# `helm template` and `helm lint` would assume an old cluster (Capabilities.KubeVersion v1.20).
HELM_K8S_MAJOR=1
HELM_K8S_MINOR=37
KILN_CACHE=${KILN_CACHE:-$HOME/.cache/kiln}
bin=$KILN_CACHE/tools/bin
helm=$bin/helm

if [ -n "${KILN_HELM:-}" ]; then echo "$KILN_HELM"; exit 0; fi
if [ -x "$helm" ] && "$helm" version --template '{{.Version}}' 2>/dev/null | grep -qx "$HELM_VERSION"; then
  echo "$helm"; exit 0
fi
command -v go >/dev/null || { echo "[build-helm] ERROR: go is not installed: it is needed to build helm" >&2; exit 1; }
echo "[build-helm] building helm $HELM_VERSION from its Go module into $bin (about a minute)..." >&2
mkdir -p "$bin"
ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
for pkg in pkg/lint/rules pkg/chartutil; do
  ldflags+=" -X helm.sh/helm/v3/$pkg.k8sVersionMajor=$HELM_K8S_MAJOR -X helm.sh/helm/v3/$pkg.k8sVersionMinor=$HELM_K8S_MINOR"
done
# Built under a temporary name and moved into place, so a build killed half-way leaves no broken helm.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
GOBIN=$tmp CGO_ENABLED=0 go install -trimpath -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >&2
mv "$tmp/helm" "$helm"
echo "[build-helm] built $("$helm" version --short)" >&2
echo "$helm"
