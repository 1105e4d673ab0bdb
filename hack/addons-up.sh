#!/usr/bin/env bash
# Deploys the cluster addons: CoreDNS (cluster names only) and metrics-server (behind the aggregation
# layer), from local images, and waits until both serve.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
here=$KILN_ROOT/hack
IMAGES=$KILN_CACHE/images

bash "$here/build-images.sh" coredns metrics-server

# render FILE: the manifest with its @PLACEHOLDERS@ filled in.
render() {
  sed -e "s|@CLUSTER_DOMAIN@|$CLUSTER_DOMAIN|g" -e "s|@DNS_SVC_IP@|$DNS_SVC_IP|g" \
      -e "s|@CA_BUNDLE@|$(base64 -w0 "$PKI/ca.crt")|g" \
      -e "s|@TLS_CRT@|$(base64 -w0 "$PKI/metrics-server.crt")|g" \
      -e "s|@TLS_KEY@|$(base64 -w0 "$PKI/metrics-server.key")|g" \
      -e "s|@IMAGE_HASH@|$(cat "$IMAGES/$2.current")|g" "$1"
}
render "$here/manifests/coredns.yaml" coredns | kubectl_ apply --server-side --force-conflicts --field-manager=kiln-hack -f - >/dev/null
render "$here/manifests/metrics-server.yaml" metrics-server | kubectl_ apply --server-side --force-conflicts --field-manager=kiln-hack -f - >/dev/null
log "addons applied: coredns, metrics-server"
kubectl_ -n kube-system rollout status deploy/coredns --timeout=120s >/dev/null \
  || { kubectl_ -n kube-system describe pods -l k8s-app=kube-dns | tail -n 25 >&2; die "CoreDNS did not become available"; }
log "coredns: available at $DNS_SVC_IP"
kubectl_ -n kube-system rollout status deploy/metrics-server --timeout=120s >/dev/null \
  || { kubectl_ -n kube-system describe pods -l k8s-app=metrics-server | tail -n 25 >&2; die "metrics-server did not become available"; }
wait_for "the metrics.k8s.io APIService to be Available" 60 "" sh -c \
  "'$(find_bin kubectl)' --kubeconfig '$KUBECONFIG_ADMIN' get apiservice v1beta1.metrics.k8s.io -o jsonpath='{.status.conditions[?(@.type==\"Available\")].status}' | grep -qx True"
log "metrics-server: available (kubectl top works once it has scraped, within ~15 s)"
