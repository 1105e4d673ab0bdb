# Sourced by the cluster scripts: one place for paths, pinned versions, network ranges, logging with
# timings and the process helpers (start by pid file, stop by pid file, wait with a timeout).
# shellcheck shell=bash

KILN_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KILN_CACHE=${KILN_CACHE:-$HOME/.cache/kiln}
KILN_STATE=${KILN_STATE:-$KILN_CACHE/state}
# KILN_NODE=0 brings up the control plane only (no kubelet, containerd, network, DNS or metrics).
KILN_NODE=${KILN_NODE:-1}

K8S_VERSION=1.37.2
ETCD_VERSION=3.6.16
K8S_BIN=$KILN_CACHE/k8s-v$K8S_VERSION/bin
ETCD_BIN=$KILN_CACHE/etcd-v$ETCD_VERSION/bin

PKI=$KILN_STATE/pki
LOGS=$KILN_STATE/logs
PIDS=$KILN_STATE/pids
KUBECONFIG_ADMIN=$KILN_STATE/kubeconfig

# Ports on loopback. Overridable so that two clusters (or another engineer's etcd) can coexist.
APISERVER_PORT=${KILN_APISERVER_PORT:-6443}
ETCD_PORT=${KILN_ETCD_PORT:-2379}
ETCD_PEER_PORT=${KILN_ETCD_PEER_PORT:-2380}
KCM_PORT=${KILN_KCM_PORT:-10257}
SCHED_PORT=${KILN_SCHED_PORT:-10259}

# Kind's default ranges. The bridge's host side is the node IP and the apiserver's advertised address.
NODE_NAME=kiln-node
BRIDGE=kiln0
BRIDGE_IP=10.244.0.1
NODE_POD_CIDR=10.244.0.0/24
POD_CIDR=10.244.0.0/16
SERVICE_CIDR=10.96.0.0/16
KUBERNETES_SVC_IP=10.96.0.1
DNS_SVC_IP=10.96.0.10
CLUSTER_DOMAIN=cluster.local

# --- logging -------------------------------------------------------------------------------------
_kiln_t0=$(date +%s%N)
_kiln_tag=${_kiln_tag:-$(basename "$0" .sh)}

# log MSG: a progress line with the seconds since the script started.
log() {
  local now; now=$(date +%s%N)
  printf '[%s %6.1fs] %s\n' "$_kiln_tag" "$(( (now - _kiln_t0) / 1000000 ))e-3" "$*"
}

# A command failing under `set -e` never ends a script silently: say where and what.
set -E
trap '_rc=$?; [ "$BASH_SUBSHELL" = 0 ] && printf "[%s] ERROR: unexpected failure (exit %s) at %s:%s: %s\n" "$_kiln_tag" "$_rc" "${BASH_SOURCE[0]##*/}" "$LINENO" "$BASH_COMMAND" >&2' ERR

# die MSG: a loud, final error on stderr.
die() {
  printf '[%s] ERROR: %s\n' "$_kiln_tag" "$*" >&2
  exit 1
}

# --- binaries ------------------------------------------------------------------------------------

# _version_ok NAME PATH: does PATH run and report the pinned release (same minor for Kubernetes,
# same 3.6 line for etcd)? A foreign stub (e.g. a v1.32 kubectl dispatcher) is rejected here.
_version_ok() {
  local name=$1 path=$2 out
  [ -x "$path" ] || return 1
  case $name in
    etcd) out=$(timeout 5 "$path" --version 2>/dev/null) || return 1
          grep -q "etcd Version: ${ETCD_VERSION%.*}\." <<<"$out" ;;
    kubectl) out=$(timeout 5 "$path" version --client 2>/dev/null) || return 1
          grep -q "Client Version: v${K8S_VERSION%.*}\." <<<"$out" ;;
    *) out=$(timeout 5 "$path" --version 2>/dev/null) || return 1
          grep -q "Kubernetes v${K8S_VERSION%.*}\." <<<"$out" ;;
  esac
}

# find_bin NAME: prints the path of a usable binary: our cache first (built at the pin), then
# $KUBEBUILDER_ASSETS, then PATH. Returns 1 when none has the right version.
find_bin() {
  local name=$1 dir cand
  if [ "$name" = etcd ]; then dir=$ETCD_BIN; else dir=$K8S_BIN; fi
  for cand in "$dir/$name" ${KUBEBUILDER_ASSETS:+"$KUBEBUILDER_ASSETS/$name"} "$(command -v "$name" 2>/dev/null || true)"; do
    [ -n "$cand" ] || continue
    # Our own cache is trusted without running the binary (it is built at the pin).
    if [ "$cand" = "$dir/$name" ] && [ -x "$cand" ]; then echo "$cand"; return 0; fi
    if _version_ok "$name" "$cand"; then echo "$cand"; return 0; fi
  done
  return 1
}

# --- processes -----------------------------------------------------------------------------------

# pid_of NAME: the recorded pid of a component we started, if that process still runs our binary.
pid_of() {
  local f=$PIDS/$1.pid pid exe
  [ -f "$f" ] || return 1
  pid=$(cat "$f")
  [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 1
  # Guard against pid reuse: the process must still be the binary recorded beside the pid.
  exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
  [ "${exe% (deleted)}" = "$(cat "$PIDS/$1.exe" 2>/dev/null)" ] || return 1
  echo "$pid"
}

# args_same NAME ARGS...: was the running component started with exactly these arguments?
args_same() {
  local name=$1; shift
  [ "$(printf '%s\n' "$@" | sha256sum)" = "$(cat "$PIDS/$name.args" 2>/dev/null)" ]
}

# start_daemon NAME BINARY ARGS...: starts BINARY detached (its own session, so that the caller's
# process group being killed does not take the cluster down), logs to $LOGS/NAME.log, records the pid.
start_daemon() {
  local name=$1 bin=$2 pid setsid_exe i; shift 2
  mkdir -p "$LOGS" "$PIDS"
  printf '\n==== %s start %s\n' "$name" "$(date -Is)" >>"$LOGS/$name.log"
  setsid "$bin" "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
  pid=$!
  # setsid execs the binary in the same process; until it has (a moment, longer on a busy machine),
  # /proc/PID/exe is setsid's own, and pid_of would take the component for dead.
  setsid_exe=$(readlink -f "$(command -v setsid)")
  for ((i = 0; i < 100; i++)); do
    [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$setsid_exe" ] || break
    sleep 0.05
  done
  echo "$pid" >"$PIDS/$name.pid"
  readlink -f "$bin" >"$PIDS/$name.exe"
  printf '%s\n' "$@" | sha256sum >"$PIDS/$name.args"
}

# stop_daemon NAME [TIMEOUT]: SIGTERM, wait up to TIMEOUT seconds (default 15), then SIGKILL.
stop_daemon() {
  local name=$1 timeout=${2:-15} pid i
  if pid=$(pid_of "$name"); then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < timeout * 10; i++)); do
      [ -d "/proc/$pid" ] || break
      sleep 0.1
    done
    if [ -d "/proc/$pid" ]; then
      log "$name did not stop in ${timeout}s: killing it"
      kill -KILL "$pid" 2>/dev/null || true
      for ((i = 0; i < 50; i++)); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
    fi
    log "$name stopped (pid $pid)"
  fi
  rm -f "$PIDS/$name.pid" "$PIDS/$name.exe" "$PIDS/$name.args"
}

# wait_for DESC TIMEOUT LOGNAME CMD...: polls CMD until it succeeds; after TIMEOUT seconds, or as soon
# as the component LOGNAME has died, fails naming what did not come up and shows the end of its log.
wait_for() {
  local desc=$1 timeout=$2 name=$3; shift 3
  local deadline=$(( $(date +%s) + timeout ))
  until "$@" >/dev/null 2>&1; do
    if [ -n "$name" ] && ! pid_of "$name" >/dev/null; then
      tail -n 25 "$LOGS/$name.log" >&2 2>/dev/null || true
      die "$name exited before $desc (log: $LOGS/$name.log)"
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      [ -n "$name" ] && tail -n 25 "$LOGS/$name.log" >&2 2>/dev/null
      die "timed out after ${timeout}s waiting for $desc${name:+ (log: $LOGS/$name.log)}"
    fi
    sleep 0.2
  done
}

# port_free_or_ours PORT NAME: dies when PORT on loopback is held by a process that is not ours.
port_free_or_ours() {
  local port=$1 name=$2 holder ours
  holder=$(ss -Hltnp "sport = :$port" 2>/dev/null | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2) || true
  [ -z "$holder" ] && return 0
  ours=$(pid_of "$name" 2>/dev/null || true)
  [ "$holder" = "$ours" ] && return 0
  die "port $port (for $name) is already taken by pid $holder: $(tr '\0' ' ' </proc/"$holder"/cmdline 2>/dev/null | cut -c1-120). Stop it, or set KILN_*_PORT."
}

# write_if_changed PATH: writes stdin to PATH only when the content differs (kube-proxy exits when its
# configuration file is rewritten, even with the same content).
write_if_changed() {
  local tmp; tmp=$(mktemp "$1.XXXX")
  cat >"$tmp"
  if cmp -s "$tmp" "$1"; then rm -f "$tmp"; else mv "$tmp" "$1"; fi
}

# kubectl_ ARGS...: our kubectl against our cluster, with a request timeout so that nothing hangs.
kubectl_() {
  "$(find_bin kubectl)" --kubeconfig "$KUBECONFIG_ADMIN" --request-timeout=30s "$@"
}

# curl_api PATH: a GET on the apiserver with the admin client certificate.
curl_api() {
  curl -sf --max-time 5 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
    "https://127.0.0.1:$APISERVER_PORT$1"
}

require_root() {
  [ "$(id -u)" = 0 ] || die "$1 needs root (it creates a bridge, iptables rules, cgroups and mounts); run it as root or with KILN_NODE=0 for the control plane only"
}
