#!/usr/bin/env bash
# The demo without a container engine: the test control plane (etcd + kube-apiserver on
# loopback), the stand-in KSIT manager and the ksit-exporter beside it as local processes, a
# Prometheus with the page's scrape config, and the sample IntegrationTargets: cluster1's
# kubeconfig reaches the control plane, and --flap-interval (a stand-in deviation) reports it
# failing every other few seconds; cluster2's names a closed port and stays failing. Prints the
# URLs and stays up until Ctrl-C; then stops everything it started (the control plane too,
# unless it was already running).
#
# Needs what `make test` needs (cargo, go, curl, openssl, python3), and npm: the Prometheus it
# starts is built with its web UI (scripts/controlplane.sh build-ui, a few minutes the first
# time, cached after). Variables:
#   KSIT_DEMO_EXPORTER_PORT (8080), KSIT_DEMO_PROMETHEUS_PORT (9090): preferred ports; a free
#     one is used when taken.
#   KSIT_DEMO_FLAP (10s): how often the manager toggles a target whose cluster answers between
#     ready and ConnectionFailed.
#   PROMETHEUS: a Prometheus binary to use instead of the one built with its web UI (then npm is
#     not needed), e.g. a release build.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
CP=$ROOT/target/controlplane
DEMO=$ROOT/target/demo-local
NAMESPACE=ksit-demo
# A TEST-NET-1 address (documentation only, never routed): Endpoints reject 127.0.0.1, so the
# ksit-monitor Endpoints carry this and one relabel rule rewrites the address to loopback.
ENDPOINT_IP=192.0.2.1

log() { printf '[demo-local] %s\n' "$*" >&2; }
die() {
	log "ERROR: $*"
	exit 1
}

pids=()
started_controlplane=false
cleanup() {
	trap - EXIT INT TERM
	log "stopping"
	local pid
	for pid in "${pids[@]}"; do
		kill -TERM "$pid" 2>/dev/null || true
	done
	for pid in "${pids[@]}"; do
		wait "$pid" 2>/dev/null || true
	done
	if $started_controlplane; then
		scripts/controlplane.sh down
	elif [[ -f $CP/env ]]; then
		kubectl delete namespace "$NAMESPACE" --wait=false --ignore-not-found >/dev/null 2>&1 || true
	fi
	log "nothing left running"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# port PREFERRED: PREFERRED when nothing listens on it on loopback, else a free one.
port() {
	local p=$1
	while (: <"/dev/tcp/127.0.0.1/$p") 2>/dev/null; do
		p=$((20000 + RANDOM % 40000))
	done
	echo "$p"
}

# wait_http NAME URL PID: until URL answers 2xx, or fail with the process's log.
wait_http() {
	local i
	for i in $(seq 300); do
		curl -sf --max-time 2 -o /dev/null "$2" && return 0
		kill -0 "$3" 2>/dev/null || die "$1 exited; log: $DEMO/$1.log"
		((i % 50)) || log "waiting for $1 ($2)"
		sleep 0.2
	done
	die "$1 did not answer on $2; log: $DEMO/$1.log"
}

# start NAME COMMAND...: in the background, logging to DEMO/NAME.log.
start() {
	local name=$1
	shift
	"$@" >"$DEMO/$name.log" 2>&1 </dev/null &
	pids+=($!)
	last_pid=$!
}

if [[ -z ${PROMETHEUS:-} ]]; then
	scripts/controlplane.sh build-ui
fi
if ! scripts/controlplane.sh status 2>/dev/null; then
	started_controlplane=true
	scripts/controlplane.sh up
fi
# shellcheck source=/dev/null
source "$CP/env"
export PATH=$KSIT_CONTROLPLANE_BIN:$PATH
prometheus_bin=${PROMETHEUS:-$KSIT_CONTROLPLANE_BIN/prometheus-ui}

log "building the exporter"
cargo build --quiet
rm -rf "$DEMO"
mkdir -p "$DEMO"

exporter_port=$(port "${KSIT_DEMO_EXPORTER_PORT:-8080}")
prometheus_port=$(port "${KSIT_DEMO_PROMETHEUS_PORT:-9090}")
metrics_port=$(port 8082)
health_port=$(port 8081)

kubectl create namespace "$NAMESPACE" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl apply -n "$NAMESPACE" -k manifests/samples >/dev/null
# The kubeconfig Secrets the sample targets name, which the manager tests as upstream's does (a
# GET /version): cluster1's is this control plane's own (it answers), cluster2's a closed port.
closed_kubeconfig='apiVersion: v1
kind: Config
clusters: [{name: closed, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: nobody, user: {}}]
contexts: [{name: closed, context: {cluster: closed, user: nobody}}]
current-context: closed'
kubectl -n "$NAMESPACE" create secret generic cluster1-kubeconfig --from-file=kubeconfig="$KUBECONFIG" \
	--dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl -n "$NAMESPACE" create secret generic cluster2-kubeconfig --from-literal=kubeconfig="$closed_kubeconfig" \
	--dry-run=client -o yaml | kubectl apply -f - >/dev/null
# The ksit-monitor Service the page's scrape config keeps, with its (documentation) endpoint.
kubectl apply -n "$NAMESPACE" -f - >/dev/null <<EOF
apiVersion: v1
kind: Service
metadata:
  name: ksit-monitor
  labels: { app: ksit }
spec:
  ports: [{ name: metrics, port: 8080, targetPort: $exporter_port, protocol: TCP }]
---
apiVersion: v1
kind: Endpoints
metadata:
  name: ksit-monitor
  labels: { app: ksit }
subsets:
  - addresses: [{ ip: "$ENDPOINT_IP" }]
    ports: [{ name: metrics, port: $exporter_port, protocol: TCP }]
EOF

start ksit-manager "$KSIT_CONTROLPLANE_BIN/ksit-manager" --kubeconfig="$KUBECONFIG" \
	--namespaces="$NAMESPACE" --leader-elect --leader-election-namespace="$NAMESPACE" \
	--flap-interval="${KSIT_DEMO_FLAP:-10s}" \
	--metrics-bind-address="127.0.0.1:$metrics_port" --health-probe-bind-address="127.0.0.1:$health_port"
wait_http ksit-manager "http://127.0.0.1:$health_port/readyz" "$last_pid"

start ksit-exporter env KSIT_LISTEN_ADDR="127.0.0.1:$exporter_port" KSIT_KUBERNETES=true \
	KSIT_WATCH_NAMESPACES="$NAMESPACE" KSIT_PROCESS_MATCH='^ksit-manager$' \
	KSIT_HEALTH_URLS="http://127.0.0.1:$health_port/healthz,http://127.0.0.1:$health_port/readyz" \
	KSIT_UPSTREAM_METRICS_URL="http://127.0.0.1:$metrics_port/metrics" \
	"$ROOT/target/debug/ksit-exporter"
wait_http ksit-exporter "http://127.0.0.1:$exporter_port/readyz" "$last_pid"

# The shipped scrape config, pointed at the control plane from outside the cluster (api_server,
# tls_config, this namespace only), plus the one relabel rule that swaps the documentation
# address for loopback. Everything else is the page's config as shipped.
pki=$CP/pki
awk -v api="$KSIT_CONTROLPLANE_SERVER" -v pki="$pki" -v ns="$NAMESPACE" -v ip="$ENDPOINT_IP" '
	/^#/ { next }
	{ print }
	/- role: endpoints/ {
		pad = $0; sub(/-.*/, "  ", pad)
		print pad "api_server: " api
		print pad "tls_config: { ca_file: " pki "/ca.crt, cert_file: " pki "/admin.crt, key_file: " pki "/admin.key }"
		print pad "namespaces: { names: [" ns "] }"
	}
	END {
		print "      - source_labels: [__address__]"
		print "        regex: \"" ip ":(.*)\""
		print "        target_label: __address__"
		print "        replacement: 127.0.0.1:$1"
	}' manifests/monitoring/common/prometheus-scrape-config.yaml >"$DEMO/prometheus.yml"
printf 'global: { scrape_interval: 5s }\n' >>"$DEMO/prometheus.yml"
promtool check config "$DEMO/prometheus.yml" >/dev/null || die "promtool rejects $DEMO/prometheus.yml"

start prometheus "$prometheus_bin" --config.file="$DEMO/prometheus.yml" \
	--storage.tsdb.path="$DEMO/tsdb" --web.listen-address="127.0.0.1:$prometheus_port"
wait_http prometheus "http://127.0.0.1:$prometheus_port/-/ready" "$last_pid"

prom=http://127.0.0.1:$prometheus_port
cat <<EOF

  ksit-exporter status     http://127.0.0.1:$exporter_port/
  ksit-exporter /metrics   http://127.0.0.1:$exporter_port/metrics
  Prometheus graph         $prom/query?g0.expr=ksit_cluster_status&g0.tab=graph&g0.range_input=5m
  Prometheus API           $prom/api/v1/query?query=ksit_cluster_status
  kubectl                  KUBECONFIG=$KUBECONFIG kubectl -n $NAMESPACE get integrationtargets,integrations
  logs                     $DEMO/*.log

  The manager flips cluster1 between ready and not every ${KSIT_DEMO_FLAP:-10s}; cluster2 stays failing.
  Ctrl-C stops everything.

EOF

# Show what Prometheus answers, as the state changes.
while :; do
	answer=$(curl -sf --max-time 2 "$prom/api/v1/query?query=ksit_cluster_status" |
		python3 -c 'import json, sys
r = json.load(sys.stdin)["data"]["result"]
print(" ".join(sorted("%s=%s" % (s["metric"]["target"], s["value"][1]) for s in r)) or "(no series yet)")' 2>/dev/null) ||
		answer="(Prometheus not answering)"
	log "ksit_cluster_status: $answer"
	for pid in "${pids[@]}"; do
		kill -0 "$pid" 2>/dev/null || die "a demo process ($pid) exited; logs in $DEMO"
	done
	sleep 5
done
