#!/usr/bin/env bash
# Runs Argo CD in the local cluster, as pods, in namespace argocd: the application-controller, the
# repo-server and Redis of Argo CD's own core install (hack/argocd-manifests.py says what is changed and
# why), from the image hack/build-images.sh builds out of the Argo CD Go module (hack/build-argocd.sh;
# a cold build takes minutes, then it is cached). Needs the node (hack/cluster-up.sh). Idempotent: a
# second run applies nothing new and returns once every component is ready.
#   argocd-up.sh
set -euo pipefail
. "$(dirname "$0")/lib.sh"
curl_api /readyz >/dev/null || die "the local cluster is not running: make cluster-up"
[ "$KILN_NODE" = 1 ] || die "Argo CD runs as pods: it needs the node (KILN_NODE=1)"

bash "$KILN_ROOT/hack/build-images.sh" argocd
hash=$(cat "$KILN_CACHE/images/argocd.current")
# The install manifest of the very release the image was built from, out of the module cache
# (build-argocd.sh downloaded the module; Go 1.27 reads its go.mod, see that script).
core=$(cd "$KILN_ROOT/hack/argocd" && GOTOOLCHAIN=${KILN_ARGOCD_GOTOOLCHAIN:-go1.27.3} \
       go list -m -f '{{.Dir}}' github.com/argoproj/argo-cd/v3)/manifests/core-install.yaml
[ -f "$core" ] || die "no Argo CD install manifest at $core"
python=$(bash "$KILN_ROOT/hack/venv.sh")/bin/python

kubectl_ get namespace argocd >/dev/null 2>&1 || kubectl_ create namespace argocd >/dev/null
apply() { kubectl_ apply --server-side --force-conflicts --field-manager=kiln-hack -f - >/dev/null; }
"$python" "$KILN_ROOT/hack/argocd-manifests.py" install "$core" "docker.io/kiln/argocd:dev" "$hash" | apply
# (kubectl wait refuses a CRD that has no conditions yet, as one just created: poll instead.)
wait_for "Argo CD's CRDs to be served" 60 "" \
  kubectl_ wait --for condition=established --timeout=5s crd/applications.argoproj.io crd/appprojects.argoproj.io
"$python" "$KILN_ROOT/hack/argocd-manifests.py" project | apply
for w in deployment/argocd-redis deployment/argocd-repo-server statefulset/argocd-application-controller; do
  kubectl_ -n argocd rollout status "$w" --timeout=300s >/dev/null \
    || { kubectl_ -n argocd get pods >&2; die "Argo CD's $w did not become ready"; }
done
log "argocd: application-controller, repo-server and redis ready in namespace argocd"
