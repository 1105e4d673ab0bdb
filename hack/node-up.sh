#!/usr/bin/env bash
# Starts the node: the pod network (net-up.sh), the project's own containerd (own config, socket and
# state under $KILN_STATE; nothing under /etc is used or edited), the kubelet, kube-proxy, then the
# addons (CoreDNS, metrics-server). Components already running with the same arguments are left alone.
#   node-up.sh --components   prints the names of the node's processes (for cluster-up's fast path)
#   node-up.sh --check        succeeds when the node is Ready and the addons are available
set -euo pipefail
. "$(dirname "$0")/lib.sh"
here=$KILN_ROOT/hack
CTRD=$KILN_STATE/containerd
CTRD_SOCK=$CTRD/containerd.sock
KUBELET_DIR=$KILN_STATE/kubelet

case ${1:-} in
  --components) echo "containerd kubelet kube-proxy"; exit 0 ;;
  --check)
    ready=$(kubectl_ get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) || exit 1
    avail=$(kubectl_ -n kube-system get deploy coredns metrics-server -o jsonpath='{.items[*].status.availableReplicas}' 2>/dev/null) || exit 1
    [ "$ready" = True ] && [ "$(wc -w <<<"$avail")" = 2 ] && ! grep -qw 0 <<<"$avail"
    exit $? ;;
esac

require_root "the node (kubelet, containerd, pod network)"
[ -d /sys/fs/cgroup ] && [ -n "$(ls /sys/fs/cgroup 2>/dev/null)" ] || die "no cgroup filesystem at /sys/fs/cgroup: the kubelet cannot run pods on this machine"
for cmd in containerd runc iptables conntrack; do
  command -v "$cmd" >/dev/null || die "$cmd is missing: run hack/install-deps.sh"
done
[ -x /usr/lib/cni/bridge ] || die "the CNI plugins are missing (/usr/lib/cni/bridge): run hack/install-deps.sh"
kubelet=$(find_bin kubelet) || die "kubelet v$K8S_VERSION is missing: run hack/build-k8s.sh"
kube_proxy=$(find_bin kube-proxy) || die "kube-proxy v$K8S_VERSION is missing: run hack/build-k8s.sh"

# run NAME BIN ARGS...: as in control-plane-up.sh, start unless running with the same arguments.
run() {
  local name=$1 bin=$2; shift 2
  if pid_of "$name" >/dev/null; then
    if args_same "$name" "$@"; then log "$name: already running"; return 0; fi
    log "$name: its arguments changed, restarting it"
    stop_daemon "$name" 30
  fi
  start_daemon "$name" "$bin" "$@"
  log "$name: started (pid $(cat "$PIDS/$name.pid"), log $LOGS/$name.log)"
}

bash "$here/net-up.sh"

# The kubelet rewrites a few kernel settings (vm.overcommit_memory, kernel.panic, ...) when it starts;
# remember the machine's values once so that node-down.sh puts them back.
sysctls="vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops kernel/keys/root_maxkeys kernel/keys/root_maxbytes"
if [ ! -f "$KILN_STATE/sysctl.saved" ]; then
  for s in $sysctls; do echo "$s $(cat "/proc/sys/$s")"; done >"$KILN_STATE/sysctl.saved"
fi

# --- containerd -------------------------------------------------------------------------------------
mkdir -p "$CTRD" "$KILN_CACHE/containerd" "$KILN_STATE/cni/net.d" "$KILN_STATE/cni/ipam"
# Images live in the cache (they survive cluster-purge: a pause or runtime image is slow to rebuild);
# the runtime state (sockets, netns, tasks) lives in the state dir.
write_if_changed "$CTRD/config.toml" <<EOF
version = 2
root = "$KILN_CACHE/containerd"
state = "$CTRD/state"
[grpc]
  address = "$CTRD_SOCK"
[plugins."io.containerd.internal.v1.opt"]
  path = "$CTRD/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "docker.io/kiln/pause:dev"
  # Root here lacks CAP_SYS_RESOURCE: without this every sandbox fails on /proc/self/oom_score_adj.
  restrict_oom_score_adj = true
  # Pod network namespaces under our state dir rather than /var/run/netns.
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$KILN_STATE/cni/net.d"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
EOF
# The pod network: pods on the bridge, addresses from the node's /24, and one route only, to the
# service range: no default route, so a connect to any outside address fails at once. isGateway is
# off because the plugin would then enable IPv4 forwarding machine-wide; net-up.sh already gave the
# bridge its address and enabled forwarding on it alone.
write_if_changed "$KILN_STATE/cni/net.d/10-kiln.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "kiln",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": false,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$KILN_STATE/cni/ipam",
        "ranges": [[{"subnet": "$NODE_POD_CIDR", "gateway": "$BRIDGE_IP"}]],
        "routes": [{"dst": "$SERVICE_CIDR"}]
      }
    }
  ]
}
EOF
# No registry is reachable, and none may be tried: a missing image must fail on this machine, not
# send a request (or a DNS lookup) outside. An HTTP(S) proxy on a closed loopback port does that for
# every registry at once: containerd's pulls go to it and are refused at once.
(
  export HTTPS_PROXY=http://127.0.0.1:9 HTTP_PROXY=http://127.0.0.1:9 https_proxy=http://127.0.0.1:9 \
    http_proxy=http://127.0.0.1:9 NO_PROXY= no_proxy=
  run containerd "$(command -v containerd)" --config "$CTRD/config.toml" --log-level=warn
)
wait_for "containerd's socket" 30 containerd ctr --address "$CTRD_SOCK" version
log "containerd: ready ($CTRD_SOCK)"

# The sandbox image must be there before the first pod (no registry is reachable).
bash "$here/build-images.sh" pause

# --- kubelet ----------------------------------------------------------------------------------------
mkdir -p "$KUBELET_DIR" "$KILN_STATE/pod-logs"
write_if_changed "$KILN_STATE/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This machine has cgroup v1 only.
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$CTRD_SOCK
address: $BRIDGE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $PKI/kubelet.crt
tlsPrivateKeyFile: $PKI/kubelet.key
clusterDomain: $CLUSTER_DOMAIN
clusterDNS: [$DNS_SVC_IP]
# Pods inherit no resolver of the machine: names resolve through CoreDNS (cluster names only).
resolvConf: ""
podLogsDir: $KILN_STATE/pod-logs
# Images cannot be pulled again here, so the kubelet must never garbage-collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
# A development machine shared with builds: evict only when really short.
evictionHard: {memory.available: 200Mi, nodefs.available: 2%, imagefs.available: 2%}
failSwapOn: false
serializeImagePulls: false
EOF
run kubelet "$kubelet" \
  --config="$KILN_STATE/kubelet.yaml" --kubeconfig="$PKI/kubelet.kubeconfig" \
  --root-dir="$KUBELET_DIR" --hostname-override="$NODE_NAME" --node-ip="$BRIDGE_IP"
wait_for "the kubelet's /healthz" 60 kubelet curl -sf --max-time 2 http://127.0.0.1:10248/healthz
wait_for "node $NODE_NAME to register" 60 kubelet kubectl_ get node "$NODE_NAME"
# node-down.sh cordons the node to drain it; a new start takes pods again.
kubectl_ uncordon "$NODE_NAME" >/dev/null
log "kubelet: node $NODE_NAME registered"

# --- kube-proxy -------------------------------------------------------------------------------------
write_if_changed "$KILN_STATE/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection: {kubeconfig: $PKI/kube-proxy.kubeconfig}
hostnameOverride: $NODE_NAME
clusterCIDR: $POD_CIDR
detectLocalMode: ClusterCIDR
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# NodePorts only on the bridge's address, never on the machine's outside interface.
nodePortAddresses: ["$BRIDGE_IP/32"]
iptables: {localhostNodePorts: false}
# Leave the machine's conntrack settings alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
run kube-proxy "$kube_proxy" --config="$KILN_STATE/kube-proxy.yaml"
wait_for "kube-proxy's /healthz" 60 kube-proxy curl -sf --max-time 2 http://127.0.0.1:10256/healthz
log "kube-proxy: serving ClusterIPs"

wait_for "node $NODE_NAME to be Ready" 90 kubelet sh -c \
  "'$(find_bin kubectl)' --kubeconfig '$KUBECONFIG_ADMIN' get node $NODE_NAME -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True"
log "node $NODE_NAME: Ready"

bash "$here/addons-up.sh"
