#!/usr/bin/env bash
# Creates the cluster's PKI in $KILN_STATE/pki with openssl, once: a cluster CA, the aggregation
# layer's separate front-proxy CA, the service-account key pair and one certificate per component.
# Existing files are kept, so a warm start does no crypto and issued credentials stay valid.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
command -v openssl >/dev/null || die "openssl is missing (apt-get install openssl)"
mkdir -p "$PKI"
chmod 700 "$PKI"
cd "$PKI"
umask 077

# new_ca NAME CN: a self-signed CA (10 years; this is a throw-away development cluster).
new_ca() {
  [ -f "$1.crt" ] && return 0
  openssl ecparam -name prime256v1 -genkey -noout -out "$1.key"
  openssl req -x509 -new -key "$1.key" -subj "/CN=$2" -days 3650 -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
    -out "$1.crt" 2>/dev/null
}

# issue NAME CA SUBJECT USAGE [SANS]: a leaf certificate signed by CA; USAGE is serverAuth, clientAuth
# or both; SANS is an openssl subjectAltName list (DNS:...,IP:...).
issue() {
  local name=$1 ca=$2 subj=$3 usage=$4 sans=${5:-} ext
  [ -f "$name.crt" ] && return 0
  ext="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=$usage"
  [ -n "$sans" ] && ext+=$'\n'"subjectAltName=$sans"
  openssl ecparam -name prime256v1 -genkey -noout -out "$name.key"
  openssl req -new -key "$name.key" -subj "$subj" -out "$name.csr" 2>/dev/null
  openssl x509 -req -in "$name.csr" -CA "$ca.crt" -CAkey "$ca.key" -set_serial "0x$(openssl rand -hex 16)" \
    -days 3650 -sha256 -extfile <(printf '%s\n' "$ext") -out "$name.crt" 2>/dev/null
  rm -f "$name.csr"
}

new_ca ca kiln-ca
# The aggregation layer needs its own CA: the apiserver trusts requests that carry a client cert of
# this CA to assert a user in headers, so it must not be the CA that signs every client.
new_ca front-proxy-ca kiln-front-proxy-ca

apiserver_sans="DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.$CLUSTER_DOMAIN,DNS:localhost,IP:127.0.0.1,IP:$KUBERNETES_SVC_IP,IP:$BRIDGE_IP"
issue apiserver ca "/CN=kube-apiserver" serverAuth "$apiserver_sans"
issue apiserver-kubelet-client ca "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
issue front-proxy-client front-proxy-ca "/CN=front-proxy-client" clientAuth
issue admin ca "/O=system:masters/CN=kiln-admin" clientAuth
issue controller-manager ca "/CN=system:kube-controller-manager" clientAuth
issue scheduler ca "/CN=system:kube-scheduler" clientAuth
issue kube-proxy ca "/CN=system:kube-proxy" clientAuth
issue kubelet-client ca "/O=system:nodes/CN=system:node:$NODE_NAME" clientAuth
issue kubelet ca "/CN=$NODE_NAME" serverAuth "DNS:$NODE_NAME,IP:$BRIDGE_IP"
issue metrics-server ca "/CN=metrics-server" serverAuth "DNS:metrics-server.kube-system.svc,DNS:metrics-server.kube-system.svc.$CLUSTER_DOMAIN"

if [ ! -f sa.key ]; then
  openssl genrsa -out sa.key 2048 2>/dev/null
  openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
fi

# kubeconfig FILE USER: a kubeconfig for USER's client certificate, certificates embedded.
kubeconfig() {
  local file=$1 user=$2 server=${3:-https://127.0.0.1:$APISERVER_PORT}
  cat >"$file" <<YAML
apiVersion: v1
kind: Config
clusters:
- name: kiln
  cluster:
    server: $server
    certificate-authority-data: $(base64 -w0 ca.crt)
users:
- name: $user
  user:
    client-certificate-data: $(base64 -w0 "$user.crt")
    client-key-data: $(base64 -w0 "$user.key")
contexts:
- name: kiln
  context: {cluster: kiln, user: $user}
current-context: kiln
YAML
}
kubeconfig controller-manager.kubeconfig controller-manager
kubeconfig scheduler.kubeconfig scheduler
kubeconfig kube-proxy.kubeconfig kube-proxy
kubeconfig kubelet.kubeconfig kubelet-client
kubeconfig "$KUBECONFIG_ADMIN" admin
# Readable by the user who runs kubectl; the state dir itself is private to root.
chmod 600 "$KUBECONFIG_ADMIN"
