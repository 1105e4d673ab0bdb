#!/usr/bin/env bash
# Removes what argocd-up.sh installed: namespace argocd with every Application in it, Argo CD's
# cluster-wide RBAC and its CRDs. Applications are deleted first and without cascading (none of them
# carries Argo CD's resources finalizer here), so what they deployed stays until its own namespace goes.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
curl_api /readyz >/dev/null || { log "argocd: the cluster is not running, nothing to remove"; exit 0; }
kubectl_ delete namespace argocd --ignore-not-found --wait=true --timeout=120s >/dev/null
kubectl_ delete clusterrole,clusterrolebinding argocd-application-controller --ignore-not-found >/dev/null
kubectl_ delete crd applications.argoproj.io applicationsets.argoproj.io appprojects.argoproj.io --ignore-not-found >/dev/null
log "argocd: removed"
