#!/usr/bin/env bash
# Starts etcd, kube-apiserver, kube-controller-manager and kube-scheduler. etcd and the controllers
# listen on loopback only; the apiserver listens on loopback, or (with a node) also on the pod bridge's
# host address so that pods reach it. A component already running with the same arguments is left
# alone; one running with other arguments (e.g. after switching KILN_NODE) is restarted.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

etcd=$(find_bin etcd) || die "etcd $ETCD_VERSION is missing: run hack/build-etcd.sh (or make build)"
for c in kube-apiserver kube-controller-manager kube-scheduler; do
  find_bin "$c" >/dev/null || die "$c v$K8S_VERSION is missing: run hack/build-k8s.sh (or make build)"
done
[ -f "$PKI/ca.crt" ] || die "no PKI in $PKI: run hack/pki.sh first"

# run NAME PORT BIN ARGS...: starts NAME unless it already runs with exactly these arguments.
run() {
  local name=$1 port=$2 bin=$3; shift 3
  if pid_of "$name" >/dev/null; then
    if args_same "$name" "$@"; then log "$name: already running"; return 0; fi
    log "$name: its arguments changed, restarting it"
    stop_daemon "$name" 30
  fi
  port_free_or_ours "$port" "$name"
  start_daemon "$name" "$bin" "$@"
  log "$name: started (pid $(cat "$PIDS/$name.pid"), log $LOGS/$name.log)"
}

mkdir -p "$KILN_STATE/etcd"
chmod 700 "$KILN_STATE/etcd"
run etcd "$ETCD_PORT" "$etcd" \
  --name=kiln --data-dir="$KILN_STATE/etcd" \
  --listen-client-urls="http://127.0.0.1:$ETCD_PORT" --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster="kiln=http://127.0.0.1:$ETCD_PEER_PORT" --log-level=warn
wait_for "etcd to be healthy" 30 etcd curl -sf --max-time 2 "http://127.0.0.1:$ETCD_PORT/health"
log "etcd: healthy"

# With a node, pods reach the apiserver at the bridge's host address (the `kubernetes` Service's
# endpoint), so it listens on all addresses; node-up.sh adds an INPUT rule that drops its port on
# every interface but loopback and the bridge. Without a node it listens on loopback only.
if [ "$KILN_NODE" = 0 ]; then bind=127.0.0.1; else bind=0.0.0.0; fi
apiserver_args=(
  --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
  --bind-address="$bind" --secure-port="$APISERVER_PORT" --advertise-address="$BRIDGE_IP" \
  --service-cluster-ip-range="$SERVICE_CIDR" \
  --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
  --client-ca-file="$PKI/ca.crt" \
  --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
  --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
  --kubelet-certificate-authority="$PKI/ca.crt" \
  --kubelet-preferred-address-types=InternalIP \
  --service-account-issuer="https://kubernetes.default.svc.$CLUSTER_DOMAIN" \
  --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
  --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction --allow-privileged=true \
  --requestheader-client-ca-file="$PKI/front-proxy-ca.crt" \
  --requestheader-allowed-names=front-proxy-client \
  --requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
  --requestheader-extra-headers-prefix=X-Remote-Extra- \
  --proxy-client-cert-file="$PKI/front-proxy-client.crt" --proxy-client-key-file="$PKI/front-proxy-client.key" \
  --enable-aggregator-routing=true \
  --profiling=false
)
# A restart of the apiserver with open watches from the controllers waits for them for a long time:
# stop the controllers first (they are started again below).
if pid_of kube-apiserver >/dev/null && ! args_same kube-apiserver "${apiserver_args[@]}"; then
  stop_daemon kube-scheduler 15
  stop_daemon kube-controller-manager 15
fi
run kube-apiserver "$APISERVER_PORT" "$(find_bin kube-apiserver)" "${apiserver_args[@]}"
wait_for "kube-apiserver /readyz" 90 kube-apiserver curl_api /readyz
log "kube-apiserver: ready on https://127.0.0.1:$APISERVER_PORT"

run kube-controller-manager "$KCM_PORT" "$(find_bin kube-controller-manager)" \
  --kubeconfig="$PKI/controller-manager.kubeconfig" \
  --authentication-kubeconfig="$PKI/controller-manager.kubeconfig" \
  --authorization-kubeconfig="$PKI/controller-manager.kubeconfig" \
  --bind-address=127.0.0.1 --secure-port="$KCM_PORT" --leader-elect=false \
  --root-ca-file="$PKI/ca.crt" --service-account-private-key-file="$PKI/sa.key" \
  --use-service-account-credentials=true \
  --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
  --allocate-node-cidrs=true --cluster-cidr="$POD_CIDR" --node-cidr-mask-size=24 \
  --service-cluster-ip-range="$SERVICE_CIDR" \
  --horizontal-pod-autoscaler-sync-period=5s \
  --profiling=false
run kube-scheduler "$SCHED_PORT" "$(find_bin kube-scheduler)" \
  --kubeconfig="$PKI/scheduler.kubeconfig" \
  --authentication-kubeconfig="$PKI/scheduler.kubeconfig" \
  --authorization-kubeconfig="$PKI/scheduler.kubeconfig" \
  --bind-address=127.0.0.1 --secure-port="$SCHED_PORT" --leader-elect=false --profiling=false
wait_for "kube-controller-manager /healthz" 60 kube-controller-manager \
  curl -skf --max-time 2 "https://127.0.0.1:$KCM_PORT/healthz"
wait_for "kube-scheduler /healthz" 60 kube-scheduler \
  curl -skf --max-time 2 "https://127.0.0.1:$SCHED_PORT/healthz"
log "kube-controller-manager, kube-scheduler: healthy"
