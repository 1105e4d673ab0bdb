#!/usr/bin/env bash
# Starts the local cluster's Prometheus (built from its Go module by build-prometheus.sh: Debian's
# package lacks Kubernetes discovery), our own process with our own config and data under
# $KILN_STATE/prometheus. It discovers pods through the apiserver (kubernetes_sd, role pod) with a
# read-only identity of its own, scrapes the serving pods' `http` and `monitor` ports over the
# bridge, and evaluates the chart's alert rules.
# Idempotent: running with the same config and rules it does nothing; a changed one is restarted.
# Listens on 127.0.0.1:$KILN_PROMETHEUS_PORT (9090) only: the operator and the tests run on the host.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

PROM_PORT=${KILN_PROMETHEUS_PORT:-9090}
LISTEN=127.0.0.1:$PROM_PORT
DIR=$KILN_STATE/prometheus
RULES_SRC=$KILN_ROOT/charts/kiln/alerts/kiln-rules.yaml

prom_bin=$(bash "$KILN_ROOT/hack/build-prometheus.sh") || die "could not build prometheus (hack/build-prometheus.sh)"
prom=$prom_bin/prometheus
promtool=$prom_bin/promtool
[ -f "$PKI/ca.key" ] || die "no PKI in $PKI: start the cluster first (hack/cluster-up.sh)"
curl_api /readyz >/dev/null || die "the apiserver does not answer on 127.0.0.1:$APISERVER_PORT: start the cluster first"
mkdir -p "$DIR/data"
chmod 700 "$DIR"

# A client certificate of our own, signed by the cluster CA: CN kiln-prometheus, no group, so the
# ClusterRole in hack/prometheus/rbac.yaml is all it may do (read pods).
if [ ! -f "$DIR/prometheus.crt" ]; then
  (
    umask 077
    cd "$DIR"
    openssl ecparam -name prime256v1 -genkey -noout -out prometheus.key
    openssl req -new -key prometheus.key -subj "/CN=kiln-prometheus" -out prometheus.csr 2>/dev/null
    openssl x509 -req -in prometheus.csr -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -days 3650 -sha256 \
      -set_serial "0x$(openssl rand -hex 16)" -out prometheus.crt 2>/dev/null \
      -extfile <(printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature" "extendedKeyUsage=clientAuth")
    rm -f prometheus.csr
  )
  log "issued the kiln-prometheus client certificate"
fi
kubectl_ apply --server-side --force-conflicts --field-manager=kiln-hack -f "$KILN_ROOT/hack/prometheus/rbac.yaml" >/dev/null

# Only addresses of the pod range (a /16) and loopback may be scraped: see the config's guard.
[[ $POD_CIDR == */16 ]] || die "POD_CIDR $POD_CIDR is not a /16: update the address guard in prometheus-up.sh"
# Dots as [.] so that the regex needs no escaping through sed and YAML.
pod_prefix=$(cut -d. -f1,2 <<<"$POD_CIDR" | sed 's/[.]/[.]/g')
address_re="(${pod_prefix}[.][0-9]+[.][0-9]+|127[.][0-9]+[.][0-9]+[.][0-9]+):[0-9]+"

# The rules are copied beside the config so that a changed rule file counts as a changed config.
mkdir -p "$DIR/rules"
cp "$RULES_SRC" "$DIR/rules/kiln-rules.yaml.new"
sed -e "s|@APISERVER_PORT@|$APISERVER_PORT|g" -e "s|@PKI@|$PKI|g" -e "s|@DIR@|$DIR|g" \
    -e "s|@LISTEN@|$LISTEN|g" -e "s|@RULES@|$DIR/rules/kiln-rules.yaml|g" -e "s#@ADDRESS_RE@#$address_re#g" \
    "$KILN_ROOT/hack/prometheus/prometheus.yml" >"$DIR/prometheus.yml.new"
"$promtool" check rules "$DIR/rules/kiln-rules.yaml.new" >/dev/null || die "invalid rules in $RULES_SRC"

args=(--config.file="$DIR/prometheus.yml" --storage.tsdb.path="$DIR/data"
      --storage.tsdb.retention.time=2d --web.listen-address="$LISTEN" --log.level=warn)
if pid_of prometheus >/dev/null && args_same prometheus "${args[@]}" \
   && cmp -s "$DIR/prometheus.yml" "$DIR/prometheus.yml.new" && cmp -s "$DIR/rules/kiln-rules.yaml" "$DIR/rules/kiln-rules.yaml.new"; then
  rm -f "$DIR/prometheus.yml.new" "$DIR/rules/kiln-rules.yaml.new"
  log "prometheus: already running at http://$LISTEN"
  exit 0
fi
if pid_of prometheus >/dev/null; then
  log "prometheus: its config, rules or arguments changed, restarting it"
  stop_daemon prometheus 30
fi
mv "$DIR/prometheus.yml.new" "$DIR/prometheus.yml"
mv "$DIR/rules/kiln-rules.yaml.new" "$DIR/rules/kiln-rules.yaml"
"$promtool" check config "$DIR/prometheus.yml" >"$DIR/check.log" 2>&1 \
  || { cat "$DIR/check.log" >&2; die "invalid generated config $DIR/prometheus.yml"; }
port_free_or_ours "$PROM_PORT" prometheus
start_daemon prometheus "$prom" "${args[@]}"
wait_for "prometheus to be ready on $LISTEN" 60 prometheus curl -sf --max-time 2 "http://$LISTEN/-/ready"
log "prometheus: ready at http://$LISTEN (pid $(cat "$PIDS/prometheus.pid"), log $LOGS/prometheus.log)"
