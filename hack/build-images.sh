#!/usr/bin/env bash
# Builds the cluster's images daemonless with buildah and, when the node's containerd runs, imports
# them into its `k8s.io` namespace (no registry is reachable: pods use these local images with
# imagePullPolicy IfNotPresent). The project's two are named as the chart names them by default,
# ghcr.io/kiln-dev/kiln-operator:VERSION and ghcr.io/kiln-dev/kiln-runtime:VERSION, VERSION being
# charts/kiln/Chart.yaml's appVersion; the local cluster's own (pause, coredns, metrics-server, base) are
# docker.io/kiln/NAME:dev. Each is also kept as a docker-archive tar, $KILN_CACHE/images/NAME-HASH.tar,
# which docs/helm.md shows how to push to a registry. Every image is keyed by a hash of its inputs, so a
# warm run only compares hashes. Argo CD (argocd) is built only when named: it is not in `all`.
#   build-images.sh [pause|coredns|metrics-server|base|runtime|operator|argocd|all]...   (default: all)
set -euo pipefail
. "$(dirname "$0")/lib.sh"
IMAGES=$KILN_CACHE/images
CTRD_SOCK=$KILN_STATE/containerd/containerd.sock
BUILDAH=(buildah --root "$KILN_CACHE/buildah/storage" --runroot "$KILN_CACHE/buildah/run" --storage-driver overlay)
mkdir -p "$IMAGES/bin"
command -v buildah >/dev/null || die "buildah is missing: run hack/install-deps.sh"
[ "$(id -u)" = 0 ] || die "building images with buildah needs root here"
# One build at a time: concurrent runs (two test sessions, make images) would share the tars and the
# buildah storage. The lock is released when this script exits.
exec {lock}>"$IMAGES/.lock"
flock -n "$lock" || { log "another image build is running: waiting for it"; flock "$lock"; }

# The project's images: the registry and path the project owns, and the release they are tagged with.
PROJECT_REGISTRY=ghcr.io/kiln-dev
APP_VERSION=$(sed -nE 's/^appVersion:[[:space:]]*"?([^"#[:space:]]+)"?.*$/\1/p' "$KILN_ROOT/charts/kiln/Chart.yaml")
[ -n "$APP_VERSION" ] || die "no appVersion in charts/kiln/Chart.yaml"

# ref_of NAME: the reference NAME's image is tagged and imported with.
ref_of() {
  case $1 in
    runtime|operator) echo "$PROJECT_REGISTRY/kiln-$1:$APP_VERSION" ;;
    *) echo "docker.io/kiln/$1:dev" ;;
  esac
}

# hash_of PATH...: a short hash of the files' names and contents (bytecode and caches left out).
hash_of() {
  (cd "$KILN_ROOT" && find "$@" -type f ! -name '*.pyc' ! -path '*/__pycache__/*' ! -path '*.egg-info/*' -print0 \
    | sort -z | xargs -0 sha256sum) | sha256sum | cut -c1-16
}

# go_binary NAME MODULE_DIR PACKAGE HASH: a static binary (CGO off, so FROM scratch works) for HASH.
go_binary() {
  local name=$1 dir=$2 pkg=$3 hash=$4 out=$IMAGES/bin/$1-$4
  if [ ! -x "$out" ]; then
    log "$name: building the binary from its Go module..." >&2
    (cd "$KILN_ROOT/$dir" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$out.tmp" "$pkg")
    mv "$out.tmp" "$out"
    find "$IMAGES/bin" -name "$name-*" ! -name "$name-$hash" -delete
  fi
  echo "$out"
}

# build NAME HASH CONTEXT DOCKERFILE [BUD ARGS]...: $IMAGES/NAME-HASH.tar (docker-archive), built with
# buildah bud unless that tar already exists. The build has no network. Layers are cached, so a change
# of the code alone rebuilds only the small layers after the dependencies.
build() {
  local name=$1 hash=$2 ctx=$3 file=$4; shift 4
  local tar=$IMAGES/$name-$hash.tar t0=$SECONDS old ref
  # The name in buildah's own storage, the same whatever the release: the previous build is found by it.
  local tag=localhost/kiln-build/$name:latest
  ref=$(ref_of "$name")
  [ -f "$tar" ] && { log "$name: cached ($hash)"; return 0; }
  log "$name: building the image ($hash)..."
  # (kiln/NAME:dev: how builds before the names above were tagged in buildah's storage.)
  old=$("${BUILDAH[@]}" inspect --type image --format '{{.FromImageID}}' "$tag" 2>/dev/null \
        || "${BUILDAH[@]}" inspect --type image --format '{{.FromImageID}}' "kiln/$name:dev" 2>/dev/null || true)
  "${BUILDAH[@]}" bud --pull=never --network=none --layers=true -f "$file" "$@" \
    -t "$tag" "$ctx" >"$IMAGES/$name.build.log" 2>&1 \
    || { tail -n 30 "$IMAGES/$name.build.log" >&2; die "building image $name failed (log: $IMAGES/$name.build.log)"; }
  log "$name: built in $((SECONDS - t0)) s; exporting it as $ref..."
  "${BUILDAH[@]}" push --quiet "$tag" "docker-archive:$tar.tmp:$ref" >/dev/null
  mv "$tar.tmp" "$tar"
  find "$IMAGES" -maxdepth 1 -name "$name-*.tar" ! -name "$name-$hash.tar" -delete
  # The previous build of this image, now untagged: removed so that storage does not grow with every
  # change (its cached dependency layers stay, they belong to the new image too).
  [ -n "$old" ] && "${BUILDAH[@]}" rmi "$old" >/dev/null 2>&1 || true
  log "$name: image ready in $((SECONDS - t0)) s ($(du -m "$tar" | cut -f1) MB)"
}

# import NAME HASH: loads $IMAGES/NAME-HASH.tar into the node's containerd unless that hash is there.
import() {
  local name=$1 hash=$2 ref
  ref=$(ref_of "$1")
  local ctr=(ctr --address "$CTRD_SOCK" -n k8s.io)
  # The current hash, for manifests that roll their pods when the image changes.
  echo "$hash" >"$IMAGES/$name.current"
  [ -S "$CTRD_SOCK" ] && timeout 5 "${ctr[@]}" version >/dev/null 2>&1 \
    || { log "$name: containerd is not running; the image is imported by the next cluster-up"; return 0; }
  if timeout 20 "${ctr[@]}" images ls "name==$ref" 2>/dev/null | grep -q "kiln.dev/hash=$hash"; then
    log "$name: up to date ($hash)"
    return 0
  fi
  # Once more on failure: containerd 1.6 now and then loses a race between an import that reuses the
  # layers of the image it replaces and its own garbage collection ("parent snapshot ... not found").
  timeout 300 "${ctr[@]}" images import "$IMAGES/$name-$hash.tar" >/dev/null \
    || { sleep 2; timeout 300 "${ctr[@]}" images import "$IMAGES/$name-$hash.tar" >/dev/null; } \
    || die "importing $name into containerd failed"
  "${ctr[@]}" images label "$ref" "kiln.dev/hash=$hash" >/dev/null
  log "$name: imported into containerd as $ref"
}

# --- the images -----------------------------------------------------------------------------------

# pause: the pod sandbox image (containerd's sandbox_image), a static Go program FROM scratch.
img_pause() {
  local h bin ctx
  h=$(hash_of hack/images/pause)
  if [ ! -f "$IMAGES/pause-$h.tar" ]; then
    bin=$(go_binary pause hack/images/pause . "$h")
    ctx=$(mktemp -d); cp "$bin" "$ctx/pause"
    build pause "$h" "$ctx" "$KILN_ROOT/hack/images/pause/Dockerfile"
    rm -rf "$ctx"
  fi
  import pause "$h"
}

# addon IMAGE DIR PKG: CoreDNS and metrics-server, static binaries FROM scratch.
img_addon() {
  local name=$1 dir=$2 pkg=$3 h bin ctx
  h=$(hash_of "$dir" hack/images/scratch.Dockerfile)
  if [ ! -f "$IMAGES/$name-$h.tar" ]; then
    bin=$(go_binary "$name" "$dir" "$pkg" "$h")
    ctx=$(mktemp -d); cp "$bin" "$ctx/app"
    build "$name" "$h" "$ctx" "$KILN_ROOT/hack/images/scratch.Dockerfile"
    rm -rf "$ctx"
  fi
  import "$name" "$h"
}

# debian_base [PACKAGES]: a Debian base, debootstrap minbase plus PACKAGES (comma-separated; by
# default python3 and python3-venv, the base of the Python images: the public
# python:3.11-slim-bookworm cannot be pulled here). Stored in buildah's storage as
# localhost/kiln/debian-base:HASH, HASH keyed by the package list; sets BASE_REF.
debian_base() {
  local pkgs=${1:-python3,python3-venv} h mirror dir
  h=$(printf 'bookworm minbase %s v1' "$pkgs" | sha256sum | cut -c1-16)
  BASE_REF=localhost/kiln/debian-base:$h
  "${BUILDAH[@]}" inspect --type image "$BASE_REF" >/dev/null 2>&1 && return 0
  command -v debootstrap >/dev/null || die "debootstrap is missing: run hack/install-deps.sh"
  # The machine's own Debian mirror (the only package archive reachable).
  mirror=$(grep -hoE '^URIs: *\S+' /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v security | head -1 | awk '{print $2}')
  mirror=${mirror:-http://deb.debian.org/debian}
  dir=$KILN_CACHE/debootstrap-$h
  rm -rf "$dir"
  log "debian base: debootstrap bookworm (minbase + ${pkgs//,/ }) from $mirror (about a minute)..."
  timeout 900 debootstrap --variant=minbase --include="$pkgs" bookworm "$dir" "$mirror" \
    >"$IMAGES/debian-base.log" 2>&1 || { tail -n 20 "$IMAGES/debian-base.log" >&2; die "debootstrap failed"; }
  rm -rf "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/*.bin "$dir"/var/cache/apt/archives/*.deb
  local c; c=$("${BUILDAH[@]}" from scratch)
  "${BUILDAH[@]}" copy "$c" "$dir" / >/dev/null
  "${BUILDAH[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 --cmd /bin/bash "$c"
  "${BUILDAH[@]}" commit --quiet --rm "$c" "$BASE_REF" >/dev/null
  rm -rf "$dir"
  log "debian base: $BASE_REF"
}

# base: the Debian base itself as docker.io/kiln/base:dev (python3, a shell, coreutils; user root),
# for tests and ad-hoc pods.
img_base() {
  debian_base
  local h=${BASE_REF##*:}
  if [ ! -f "$IMAGES/base-$h.tar" ]; then
    "${BUILDAH[@]}" push --quiet "$BASE_REF" "docker-archive:$IMAGES/base-$h.tar.tmp:$(ref_of base)" >/dev/null
    mv "$IMAGES/base-$h.tar.tmp" "$IMAGES/base-$h.tar"
  fi
  import base "$h"
}

# The wheelhouse: every wheel the runtime and operator need, downloaded on the host (pip inside a
# build has no index), at the versions constraints.txt pins (`make lock`), keyed by pyproject.toml and
# constraints.txt. The project's own wheel is built per image hash.
wheelhouse() {
  local h py
  h=$( { hash_of pyproject.toml constraints.txt; echo "with setuptools"; } | sha256sum | cut -c1-16)
  WHEELS=$KILN_CACHE/wheelhouse-$h
  [ -f "$WHEELS/.complete" ] && return 0
  py=$(bash "$KILN_ROOT/hack/venv.sh")/bin/python
  "$py" -c 'import sys; assert sys.version_info[:2] == (3, 11)' \
    || die "python3.11 is needed to fetch wheels matching the images' Python (Debian bookworm: 3.11)"
  log "wheelhouse: fetching the runtime and operator dependencies..."
  rm -rf "$WHEELS"; mkdir -p "$WHEELS"
  # setuptools too: the images build the project from source with pip, in an isolated build env.
  timeout 900 "$py" -m pip wheel -q -w "$WHEELS" -c "$KILN_ROOT/constraints.txt" \
    "setuptools>=77" "$KILN_ROOT[runtime,operator]" >"$IMAGES/wheelhouse.log" 2>&1 \
    || { tail -n 20 "$IMAGES/wheelhouse.log" >&2; die "pip wheel failed (log: $IMAGES/wheelhouse.log)"; }
  rm -f "$WHEELS"/kiln-*.whl
  touch "$WHEELS/.complete"
  find "$KILN_CACHE" -maxdepth 1 -name 'wheelhouse-*' ! -name "wheelhouse-$h" -exec rm -rf {} +
}

# py_image NAME DOCKERFILE: an image of the project from its Dockerfile (context: the repository, cut
# down by .dockerignore), on the Debian base, with pip reading only the wheelhouse mounted at /wheels.
py_image() {
  local name=$1 file=$2 h
  debian_base
  wheelhouse
  h=$( { hash_of pyproject.toml constraints.txt README.md .dockerignore serving_image operator "$file"
         echo "$BASE_REF $WHEELS $(ref_of "$name")"; } \
    | sha256sum | cut -c1-16)
  if [ ! -f "$IMAGES/$name-$h.tar" ]; then
    build "$name" "$h" "$KILN_ROOT" "$KILN_ROOT/$file" --build-arg "BASE=$BASE_REF" \
      --build-arg "PIP_ARGS=--no-index --find-links=/wheels" --volume "$WHEELS:/wheels:ro"
  fi
  import "$name" "$h"
}

# argocd: Argo CD, every component (hack/build-argocd.sh: one binary dispatching on argv[0]), laid
# out as Argo CD's own image, on a Debian base with what its components run: git, ssh and gpg for the
# repo-server, tini as PID 1, and redis-server so that the same image runs Argo CD's Redis. Keyed by
# the Argo CD release, the Dockerfile and that base. Not in `all`: cached, it costs half a second, but
# cold it is a 10-minute Go build and a second debootstrap that no other image needs.
ARGOCD_BASE_PKGS=ca-certificates,git,openssh-client,gpg,gpg-agent,tzdata,connect-proxy,tini,redis-server
img_argocd() {
  local bin ver h ctx
  bin=$(bash "$KILN_ROOT/hack/build-argocd.sh")
  ver=${bin%/bin/argocd}; ver=${ver##*/argocd-v}
  debian_base "$ARGOCD_BASE_PKGS"
  h=$( { hash_of hack/images/argocd.Dockerfile; echo "$BASE_REF argocd-v$ver $(ref_of argocd)"; } \
    | sha256sum | cut -c1-16)
  if [ ! -f "$IMAGES/argocd-$h.tar" ]; then
    # The context: the binary and Argo CD's helper scripts that build-argocd.sh keeps beside it.
    ctx=$(mktemp -d); cp "${bin%/argocd}"/* "$ctx/"
    build argocd "$h" "$ctx" "$KILN_ROOT/hack/images/argocd.Dockerfile" --build-arg "BASE=$BASE_REF"
    rm -rf "$ctx"
  fi
  import argocd "$h"
}

targets=${*:-all}
[ "$targets" = all ] && targets="pause coredns metrics-server base runtime operator"
for t in $targets; do
  case $t in
    pause) img_pause ;;
    coredns) img_addon coredns hack/addons/coredns . ;;
    metrics-server) img_addon metrics-server hack/addons/metrics-server sigs.k8s.io/metrics-server/cmd/metrics-server ;;
    base) img_base ;;
    runtime) py_image runtime serving_image/Dockerfile ;;
    operator) py_image operator operator/Dockerfile ;;
    argocd) img_argocd ;;
    *) die "unknown image '$t' (pause, coredns, metrics-server, base, runtime, operator, argocd, all)" ;;
  esac
done
