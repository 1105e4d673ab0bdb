#!/usr/bin/env bash
# Creates the pod bridge and the rules that keep every cluster packet on this machine:
# - bridge $BRIDGE with the node's address $BRIDGE_IP/24 (the bridge CNI plugin attaches pods to it),
#   and routes sending the whole pod and service ranges to it;
# - IPv4 forwarding enabled on the bridge only (pod -> ClusterIP -> pod is routed through the host),
#   not machine-wide, so nothing arriving on another interface is ever forwarded;
# - bridged pod traffic passes through iptables (per bridge), so kube-proxy's NAT sees replies;
# - mangle-table chains (kube-proxy never touches mangle, so its own rules cannot come first) that drop
#   anything forwarded between the bridge and any other interface, and the apiserver port and pod
#   addresses on any interface but loopback and the bridge.
# There is no masquerade rule, and pods get no default route (see the CNI config in node-up.sh).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
require_root "the pod network"
command -v iptables >/dev/null || die "iptables is missing: run hack/install-deps.sh"

if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
  ip link add "$BRIDGE" type bridge
  log "bridge $BRIDGE created"
fi
ip link set "$BRIDGE" type bridge nf_call_iptables 1
ip addr replace "$BRIDGE_IP/24" dev "$BRIDGE"
ip link set "$BRIDGE" up
echo 1 >"/proc/sys/net/ipv4/conf/$BRIDGE/forwarding"
# The whole pod and service ranges point at the bridge, so that no cluster address (say a ClusterIP
# without a Service, or a pod address beyond the node's /24) ever follows the default route out.
ip route replace "$POD_CIDR" dev "$BRIDGE" src "$BRIDGE_IP"
ip route replace "$SERVICE_CIDR" dev "$BRIDGE" src "$BRIDGE_IP"

# ensure_chain TABLE CHAIN PARENT: a chain of ours, emptied, jumped to first from PARENT.
ensure_chain() {
  iptables -w 5 -t "$1" -N "$2" 2>/dev/null || iptables -w 5 -t "$1" -F "$2"
  iptables -w 5 -t "$1" -C "$3" -j "$2" 2>/dev/null || iptables -w 5 -t "$1" -I "$3" 1 -j "$2"
}
ensure_chain mangle KILN-FORWARD FORWARD
iptables -w 5 -t mangle -A KILN-FORWARD -i "$BRIDGE" -o "$BRIDGE" -j RETURN
iptables -w 5 -t mangle -A KILN-FORWARD -i "$BRIDGE" -j DROP
iptables -w 5 -t mangle -A KILN-FORWARD -o "$BRIDGE" -j DROP
ensure_chain mangle KILN-INPUT INPUT
iptables -w 5 -t mangle -A KILN-INPUT -i lo -j RETURN
iptables -w 5 -t mangle -A KILN-INPUT -i "$BRIDGE" -j RETURN
iptables -w 5 -t mangle -A KILN-INPUT -p tcp --dport "$APISERVER_PORT" -j DROP
iptables -w 5 -t mangle -A KILN-INPUT -d "$POD_CIDR" -j DROP
iptables -w 5 -t mangle -A KILN-INPUT -d "$SERVICE_CIDR" -j DROP
log "network: bridge $BRIDGE ($BRIDGE_IP), confinement rules in place"
