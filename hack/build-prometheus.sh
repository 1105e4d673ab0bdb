#!/usr/bin/env bash
# Builds prometheus and promtool (pinned) from their Go module into the cache outside the repo and
# prints the bin directory. Why not Debian's package: Debian builds Prometheus without Kubernetes
# service discovery (its config parser rejects `kubernetes_sd_configs`), and that is the very thing
# the local cluster must exercise. Upstream's `remove_all_sd` + `enable_kubernetes_sd` build tags
# keep only the file, http and kubernetes discoverers, which also roughly halves the build.
# Reuses a build already there. A cold build takes a few minutes on 2 cores.
set -euo pipefail
PROM_VERSION=3.16.0
# Prometheus 3.x is published as Go module versions v0.3MM.P for release 3.MM.P.
PROM_MODULE_VERSION=v0.316.0
KILN_CACHE=${KILN_CACHE:-$HOME/.cache/kiln}
bin=$KILN_CACHE/prometheus-v$PROM_VERSION/bin

if [ -x "$bin/prometheus" ] && [ -x "$bin/promtool" ] \
   && "$bin/prometheus" --version 2>/dev/null | grep -q "version $PROM_VERSION "; then
  echo "$bin"; exit 0
fi
command -v go >/dev/null || { echo "[build-prometheus] ERROR: go is not installed: it is needed to build prometheus" >&2; exit 1; }
echo "[build-prometheus] building prometheus $PROM_VERSION (kubernetes, file and http discovery only) into $bin..." >&2
start=$SECONDS
mkdir -p "$bin"
v=github.com/prometheus/common/version
ldflags="-s -w -X $v.Version=$PROM_VERSION -X $v.Branch=release -X $v.BuildUser=kiln -X $v.Revision=$PROM_MODULE_VERSION"
# Built under a temporary directory and moved into place, so a build killed half-way leaves nothing.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
GOBIN=$tmp CGO_ENABLED=0 go install -trimpath -tags remove_all_sd,enable_kubernetes_sd -ldflags "$ldflags" \
  "github.com/prometheus/prometheus/cmd/prometheus@$PROM_MODULE_VERSION" \
  "github.com/prometheus/prometheus/cmd/promtool@$PROM_MODULE_VERSION" >&2
mv "$tmp/prometheus" "$tmp/promtool" "$bin/"
echo "[build-prometheus] built $("$bin/prometheus" --version 2>&1 | head -1) in $((SECONDS - start)) s" >&2
echo "$bin"
