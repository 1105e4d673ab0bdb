#!/usr/bin/env bash
# Installs the node's Debian packages (containerd, runc, CNI plugins, iptables, conntrack, buildah,
# debootstrap) and the tools the scripts use (h2load from nghttp2-client: benchmarks/serving.py's gRPC
# load). Quick and quiet when everything is already present.
# Installing a package does not start it: Debian's containerd service is not used (the cluster runs its
# own containerd with its own config, socket and state), and no file under /etc is edited.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
# package:command pairs; a package is installed when its command is missing.
want="containerd:containerd runc:runc containernetworking-plugins:/usr/lib/cni/bridge iptables:iptables
conntrack:conntrack buildah:buildah debootstrap:debootstrap openssl:openssl curl:curl iproute2:ip
kmod:modprobe nghttp2-client:h2load"
missing=()
for pair in $want; do
  pkg=${pair%%:*} cmd=${pair#*:}
  if [[ $cmd == /* ]]; then [ -e "$cmd" ] || missing+=("$pkg"); else command -v "$cmd" >/dev/null || missing+=("$pkg"); fi
done
if [ ${#missing[@]} -eq 0 ]; then log "all node packages present"; exit 0; fi
[ "$(id -u)" = 0 ] || die "missing packages (${missing[*]}) and not root: install them with apt-get as root"
log "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Keep apt from starting services on install (no init system runs them here anyway).
timeout 300 apt-get update -qq || die "apt-get update failed (no access to Debian's package archive?)"
timeout 600 apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
  || die "apt-get install ${missing[*]} failed"
log "installed: ${missing[*]}"
