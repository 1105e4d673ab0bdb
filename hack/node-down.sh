#!/usr/bin/env bash
# Stops the node and leaves nothing behind. Pods are removed first, through the API while the kubelet
# still runs (so it unmounts their volumes and containerd tears down their network), because kubelet
# and containerd leave mounts and network namespaces behind otherwise. Then a sweep removes whatever
# survived: container processes (by the kubepods cgroups), our containerd's shims, mounts under our
# directories, cgroups, iptables rules, the bridge; and the kernel settings the kubelet changed are
# restored. Safe to run when nothing is up.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
here=$KILN_ROOT/hack
CTRD=$KILN_STATE/containerd
CTRD_SOCK=$CTRD/containerd.sock
[ "$(id -u)" = 0 ] || { pid_of kubelet >/dev/null && die "stopping the node needs root"; exit 0; }

# 1. Pods away, through the kubelet. The node is cordoned first so that controllers' replacement
#    pods stay Pending instead of landing on the node again (node-up.sh uncordons it).
if pid_of kubelet >/dev/null && curl_api /readyz >/dev/null 2>&1; then
  kubectl_ cordon "$NODE_NAME" >/dev/null 2>&1 || true
  if [ -n "$(kubectl_ get pods -A --field-selector "spec.nodeName=$NODE_NAME" -o name 2>/dev/null)" ]; then
    log "removing every pod from $NODE_NAME"
    kubectl_ delete pods -A --field-selector "spec.nodeName=$NODE_NAME" --grace-period=2 --wait=false >/dev/null \
      || log "deleting the pods through the API failed: sweeping"
    deadline=$(( $(date +%s) + 60 ))
    # Done when the API has no pod left on the node, or when containerd runs no container any more
    # (the kubelet has then stopped every sandbox and torn its network down; the API may lag).
    # Whatever is still there after a minute is left to the sweep below.
    while [ -n "$(kubectl_ get pods -A --field-selector "spec.nodeName=$NODE_NAME" -o name 2>/dev/null)" ] \
        && [ -n "$(ctr --address "$CTRD_SOCK" -n k8s.io tasks ls -q 2>/dev/null)" ]; do
      [ "$(date +%s)" -ge "$deadline" ] && { log "some pods are still there after 60 s: sweeping"; break; }
      sleep 1
    done
  fi
fi

# 2. The node's processes: the kubelet first (so that nothing restarts containers), then kube-proxy.
stop_daemon kubelet 20
stop_daemon kube-proxy 10

# 3. Containers the kubelet did not remove: stop their tasks and sandboxes through containerd.
if pid_of containerd >/dev/null; then
  for id in $(ctr --address "$CTRD_SOCK" -n k8s.io tasks ls -q 2>/dev/null); do
    timeout 10 ctr --address "$CTRD_SOCK" -n k8s.io tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
    timeout 10 ctr --address "$CTRD_SOCK" -n k8s.io tasks delete -f "$id" >/dev/null 2>&1 || true
  done
fi
stop_daemon containerd 20

# 4. The sweep. Any process still in the pods' cgroups is a container process: kill it.
for d in /sys/fs/cgroup/*/kubepods; do
  [ -d "$d" ] || continue
  pids=$(find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u)
  [ -n "$pids" ] && { log "killing leftover container processes: $(echo $pids)"; kill -KILL $pids 2>/dev/null || true; }
done
# Shims of our containerd (matched by our socket path in their arguments, never by name alone).
for p in /proc/[0-9]*; do
  cmd=$(tr '\0' ' ' <"$p/cmdline" 2>/dev/null) || continue
  if [[ $cmd == *"-address $CTRD_SOCK"* ]]; then
    log "killing leftover shim ${p#/proc/}"; kill -KILL "${p#/proc/}" 2>/dev/null || true
  fi
done
sleep 0.2
# Mounts under our directories (overlay rootfs, shm, netns, volumes), deepest first.
mapfile -t mounts < <(awk '{print $5}' /proc/self/mountinfo | grep -E "^($KILN_STATE|$KILN_CACHE/containerd)/" | sort -r)
for m in "${mounts[@]}"; do
  umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "could not unmount $m"
done
[ ${#mounts[@]} -gt 0 ] && log "unmounted ${#mounts[@]} leftover mounts"
# The files the pods' network namespaces were mounted on (the namespaces are gone with the mounts).
rm -rf "$CTRD/state/io.containerd.grpc.v1.cri/netns"
# The pods' cgroups, leaves first (rmdir of an empty cgroup is how cgroup v1 removes it).
for d in /sys/fs/cgroup/*/kubepods; do
  [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
done
for d in /sys/fs/cgroup/*/kubepods; do [ -d "$d" ] && log "cgroup $d could not be removed"; done

bash "$here/net-down.sh"

# 5. The kernel settings the kubelet changed, back to the machine's values.
if [ -f "$KILN_STATE/sysctl.saved" ]; then
  while read -r name value; do
    [ "$(cat "/proc/sys/$name")" = "$value" ] || echo "$value" >"/proc/sys/$name" 2>/dev/null || true
  done <"$KILN_STATE/sysctl.saved"
  rm -f "$KILN_STATE/sysctl.saved"
fi
log "node stopped"
