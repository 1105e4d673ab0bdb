#!/usr/bin/env bash
# Removes what net-up.sh and kube-proxy added: our mangle chains, kube-proxy's KUBE-* chains and
# the pod bridge. Safe to run when nothing is there.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
[ "$(id -u)" = 0 ] || exit 0
if command -v iptables >/dev/null; then
  for pair in mangle:KILN-FORWARD:FORWARD mangle:KILN-INPUT:INPUT; do
    IFS=: read -r table chain parent <<<"$pair"
    while iptables -w 5 -t "$table" -D "$parent" -j "$chain" 2>/dev/null; do :; done
    iptables -w 5 -t "$table" -F "$chain" 2>/dev/null || true
    iptables -w 5 -t "$table" -X "$chain" 2>/dev/null || true
  done
  # kube-proxy's and the kubelet's chains (KUBE-*), in IPv4 and IPv6, in every table: first the jumps to
  # them from the built-in chains, then their rules, then the chains. No one else names chains KUBE-*.
  for ipt in iptables ip6tables; do
    command -v "$ipt" >/dev/null || continue
    for table in filter nat mangle raw; do
      rules=$("$ipt" -w 5 -t "$table" -S 2>/dev/null) || continue
      grep -E '^-A [A-Z]+ .*-j KUBE-' <<<"$rules" | grep -vE '^-A KUBE-' | while read -r rule; do
        eval "\"\$ipt\" -w 5 -t \"\$table\" -D ${rule#-A }" 2>/dev/null || true
      done || true
      for chain in $(grep -oE '^-N KUBE-[A-Za-z0-9-]+' <<<"$rules" | cut -c4-); do
        "$ipt" -w 5 -t "$table" -F "$chain" 2>/dev/null || true
      done
      for chain in $(grep -oE '^-N KUBE-[A-Za-z0-9-]+' <<<"$rules" | cut -c4-); do
        "$ipt" -w 5 -t "$table" -X "$chain" 2>/dev/null || true
      done
    done
  done
fi
if ip link show "$BRIDGE" >/dev/null 2>&1; then
  ip link delete "$BRIDGE"
  log "bridge $BRIDGE deleted"
fi
