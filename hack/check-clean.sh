#!/usr/bin/env bash
# Lists whatever the local cluster left on the machine: processes, mounts, network namespaces, links,
# routes, iptables rules, cgroups. Prints nothing and exits 0 when the machine is clean; used by the
# cluster-down test and handy after a crash.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
CTRD_SOCK=$KILN_STATE/containerd/containerd.sock
left=()

for p in /proc/[0-9]*; do
  pid=${p#/proc/}
  exe=$(readlink "$p/exe" 2>/dev/null) || continue
  cmd=$(tr '\0' ' ' <"$p/cmdline" 2>/dev/null) || continue
  cg=$(cat "$p/cgroup" 2>/dev/null) || continue
  case $exe in "$K8S_BIN"/*|"$ETCD_BIN"/*) left+=("process $pid: $cmd"); continue ;; esac
  [[ $cmd == *"$KILN_STATE/containerd/config.toml"* || $cmd == *"-address $CTRD_SOCK"* ]] && { left+=("process $pid: $cmd"); continue; }
  [[ $cg == */kubepods* ]] && left+=("container process $pid: $cmd")
done
while read -r m; do left+=("mount $m"); done < <(awk '{print $5}' /proc/self/mountinfo | grep -E "^($KILN_STATE|$KILN_CACHE/containerd)/" || true)
while read -r ns; do left+=("network namespace $ns"); done < <(find "$KILN_STATE/containerd/state/io.containerd.grpc.v1.cri/netns" -mindepth 1 2>/dev/null || true)
ip link show "$BRIDGE" >/dev/null 2>&1 && left+=("link $BRIDGE")
while read -r l; do left+=("link $l"); done < <(ip -o link show master "$BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' || true)
while read -r r; do left+=("route $r"); done < <(ip route 2>/dev/null | grep -E "$BRIDGE|^(10\.244|10\.96)\." || true)
for ipt in iptables-save ip6tables-save; do
  command -v "$ipt" >/dev/null || continue
  while read -r r; do left+=("$ipt: $r"); done < <("$ipt" 2>/dev/null | grep -E 'KUBE-|KILN-|CNI-' | grep -E '^[:-]' || true)
done
for d in /sys/fs/cgroup/*/kubepods; do [ -d "$d" ] && left+=("cgroup $d"); done
if [ ${#left[@]} -gt 0 ]; then printf 'left behind: %s\n' "${left[@]}"; exit 1; fi
