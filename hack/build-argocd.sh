#!/usr/bin/env bash
# Builds Argo CD's all-in-one `argocd` binary at the release pinned in hack/argocd/go.mod (wrapper
# module) into the cache outside the repo, $KILN_CACHE/argocd-vVERSION/bin/argocd. Nothing is built
# when that binary is already there. One binary is all of Argo CD: it runs the component named by its
# argv[0] (argocd-application-controller, argocd-repo-server, argocd-server, ...), the CLI otherwise;
# hack/build-images.sh puts it in an image with those names as symlinks, beside the helper scripts of
# Argo CD's own image (entrypoint.sh, gpg-wrapper.sh, git-verify-wrapper.sh), copied here from the module.
#   build-argocd.sh     (prints the binary's path on stdout, its progress on stderr, like build-helm.sh)
set -euo pipefail
. "$(dirname "$0")/lib.sh"
exec 3>&1 1>&2
MOD_DIR=$KILN_ROOT/hack/argocd
# The pin: the version required of github.com/argoproj/argo-cd/v3 (comment lines left out).
ARGOCD_VERSION=$(awk '!/^[[:space:]]*\/\// { for (i = 1; i < NF; i++) if ($i == "github.com/argoproj/argo-cd/v3") { sub(/^v/, "", $(i + 1)); print $(i + 1); exit } }' "$MOD_DIR/go.mod")
[ -n "$ARGOCD_VERSION" ] || die "no github.com/argoproj/argo-cd/v3 requirement in $MOD_DIR/go.mod"
ARGOCD_BIN=$KILN_CACHE/argocd-v$ARGOCD_VERSION/bin
SCRIPTS="entrypoint.sh hack/gpg-wrapper.sh hack/git-verify-wrapper.sh"
if [ -x "$ARGOCD_BIN/argocd" ] && [ -f "$ARGOCD_BIN/entrypoint.sh" ]; then
  log "argocd v$ARGOCD_VERSION: using $ARGOCD_BIN/argocd"
  echo "$ARGOCD_BIN/argocd" >&3
  exit 0
fi
command -v go >/dev/null || die "go is not installed: it is needed to build argocd v$ARGOCD_VERSION"
# Argo CD 3.6 needs Go 1.27 (`go 1.27.0` in its go.mod) and the machine's Go is older, with
# GOTOOLCHAIN=local in its go.env, so the go command would refuse the module: naming the toolchain
# makes it fetch that one release from the module proxy (once, into the module cache) and run it.
export GOTOOLCHAIN=${KILN_ARGOCD_GOTOOLCHAIN:-go1.27.3}
# A build cache of its own: nothing could be shared with the default one anyway (another Go release
# and other dependency versions than the Kubernetes build), and it can be dropped in one rm.
export GOCACHE=$KILN_CACHE/go-build-argocd
export CGO_ENABLED=0
mkdir -p "$ARGOCD_BIN" "$GOCACHE"
cd "$MOD_DIR"

start=$SECONDS
# go mod download and go build are silent for minutes: a heartbeat shows they are alive. (Without
# fd 3, the caller's stdout: its `sleep` would keep a caller's $(...) waiting after this script ends.)
( while sleep 30; do log "argocd: still building ($((SECONDS - start)) s)"; done ) 3>&- &
heartbeat=$!
trap 'kill $heartbeat 2>/dev/null || true' EXIT

log "argocd v$ARGOCD_VERSION: downloading $GOTOOLCHAIN and about 300 modules (2 GB; nothing when in the module cache)..."
go mod download
log "argocd: modules ready in $((SECONDS - start)) s"

if [ ! -x "$ARGOCD_BIN/argocd" ]; then
  # The version stamp of Argo CD's Makefile (its LDFLAGS: -X github.com/argoproj/argo-cd/v3/common.*),
  # so that `argocd version` and every component's startup line report the release, not
  # v99.99.99+unknown. The module proxy serves the tagged release's files, verified by go.sum, hence
  # gitTag and a clean tree; the date is the release commit's time as the proxy records it (reproducible,
  # unlike the Makefile's `date`). The proxy does not say which git commit the tag names, so gitCommit
  # says so: it is only shown by `argocd version` and in the startup log, and with a commit set Argo CD
  # reports gitTag as its version (without one: v3.6.1+unknown).
  build_date=$(go list -m -f '{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}' github.com/argoproj/argo-cd/v3)
  kubectl_version=$(go list -m -f '{{with .Replace}}{{.Version}}{{else}}{{.Version}}{{end}}' k8s.io/client-go)
  pkg=github.com/argoproj/argo-cd/v3/common
  ldflags="-s -w -X $pkg.version=$ARGOCD_VERSION -X $pkg.buildDate=$build_date -X $pkg.gitCommit=unknown"
  ldflags+=" -X $pkg.gitTag=v$ARGOCD_VERSION -X $pkg.gitTreeState=clean -X $pkg.kubectlVersion=$kubectl_version"
  log "argocd v$ARGOCD_VERSION: compiling with $(go env GOVERSION) (a cold build takes about 5 minutes on 2 cores)..."
  t0=$SECONDS
  go build -trimpath -ldflags "$ldflags" -o "$ARGOCD_BIN/argocd.tmp" github.com/argoproj/argo-cd/v3/cmd
  mv "$ARGOCD_BIN/argocd.tmp" "$ARGOCD_BIN/argocd"
  log "argocd: compiled in $((SECONDS - t0)) s ($(du -m "$ARGOCD_BIN/argocd" | cut -f1) MB)"
fi
# Copied last: their presence marks a complete build.
src=$(go list -m -f '{{.Dir}}' github.com/argoproj/argo-cd/v3)
for f in $SCRIPTS; do install -m 0755 "$src/$f" "$ARGOCD_BIN/"; done
kill "$heartbeat" 2>/dev/null || true
log "argocd v$ARGOCD_VERSION: ready in $((SECONDS - start)) s: $ARGOCD_BIN/argocd"
echo "$ARGOCD_BIN/argocd" >&3
