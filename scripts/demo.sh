#!/usr/bin/env bash
# The kind demo: a kind cluster `ksit-demo` with the prometheus-operator and a Prometheus, the
# ksit.io CRDs, the injection webhook with its certificate, and a stand-in KSIT manager with
# sample IntegrationTargets and Integrations in a namespace labelled for injection. Waits for
# the injected pod, then prints Prometheus's answer for ksit_cluster_status.
#
#   scripts/demo.sh up      (make demo)        create or update the demo
#   scripts/demo.sh down    (make demo-down)   delete the kind cluster
#
# DEMO_DRY_RUN=1 prints every step instead of running it (no prerequisite is then required).
# Needs: docker (with a running engine) or podman, kind, kubectl, and to build the images
# cargo (with the musl target and musl-gcc, see scripts/image.sh) and go.
# Pinned: kind node kindest/node:v1.34.0, the prometheus-operator bundle of
# tests/controlplane/crds/go.mod (v0.85.0, verified by go.sum), Prometheus v3.5.1.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

CLUSTER=ksit-demo
NODE_IMAGE=${KIND_NODE_IMAGE:-kindest/node:v1.34.0}
CONTEXT=kind-$CLUSTER
WORK=$ROOT/target/demo
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
IMAGE=ghcr.io/kubestellar/ksit-exporter:$VERSION
WEBHOOK_IMAGE=ghcr.io/kubestellar/ksit-exporter-webhook:$VERSION
MANAGER_IMAGE=localhost/ksit-manager:demo
# The webhook as manifests/webhook deploys it: its namespace, Service, TLS Secret and
# MutatingWebhookConfiguration. Its certificate is made here (a demo CA, openssl).
WEBHOOK_NAMESPACE=${WEBHOOK_NAMESPACE:-ksit-exporter-system}
WEBHOOK_SERVICE=${WEBHOOK_SERVICE:-ksit-exporter-webhook}
WEBHOOK_SECRET=${WEBHOOK_SECRET:-ksit-exporter-webhook-tls}
WEBHOOK_CONFIG=${WEBHOOK_CONFIG:-ksit-exporter}
DRY_RUN=${DEMO_DRY_RUN:-0}

log() { printf '[demo] %s\n' "$*" >&2; }
die() {
	log "ERROR: $*"
	exit 1
}
# Step headers go to stdout, with the commands of a dry run, so the sequence reads in order.
step() { printf '\n# == %s\n' "$*"; }

# run COMMAND...: run it, or under DEMO_DRY_RUN=1 print it (shell-quoted, ready to paste).
run() {
	if [[ $DRY_RUN == 1 ]]; then
		printf '+'
		printf ' %q' "$@"
		printf '\n'
	else
		"$@"
	fi
}

kc() { run kubectl --context "$CONTEXT" "$@"; }

# wait_established SECONDS CRD...: until each CRD's Established condition is True. Not
# `kubectl wait --for condition=Established`: it fails outright on a CRD whose status has no
# conditions yet, as a CRD just applied may not.
wait_established() {
	local timeout=$1 crd status deadline
	shift
	if [[ $DRY_RUN == 1 ]]; then
		printf '+ (poll until Established, %ss) %s\n' "$timeout" "$*"
		return
	fi
	deadline=$((SECONDS + timeout))
	for crd in "$@"; do
		until status=$(kubectl --context "$CONTEXT" get "crd/$crd" \
			-o jsonpath='{.status.conditions[?(@.type=="Established")].status}' 2>/dev/null) &&
			[[ $status == True ]]; do
			((SECONDS < deadline)) || die "CRD $crd not Established after ${timeout}s"
			sleep 1
		done
	done
}

# kc_generate ARGS...: `kubectl ARGS --dry-run=client -o yaml | kubectl apply -f -`, which
# creates or updates (a plain `kubectl create` fails when the demo is run again).
kc_generate() {
	if [[ $DRY_RUN == 1 ]]; then
		printf '+ kubectl --context %q' "$CONTEXT"
		printf ' %q' "$@"
		printf ' --dry-run=client -o yaml | kubectl --context %q apply -f -\n' "$CONTEXT"
	else
		kubectl --context "$CONTEXT" "$@" --dry-run=client -o yaml | kubectl --context "$CONTEXT" apply -f -
	fi
}

# write FILE TEXT: write TEXT to FILE, or print that it would.
write() {
	if [[ $DRY_RUN == 1 ]]; then
		printf '+ cat > %q <<EOF\n%sEOF\n' "$1" "$2"
	else
		printf '%s' "$2" >"$1"
	fi
}

engine=""
check_prerequisites() {
	local missing=() tool
	if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
		engine=docker
	elif command -v podman >/dev/null; then
		engine=podman
		# kind drives podman through this switch.
		export KIND_EXPERIMENTAL_PROVIDER=podman
	elif command -v docker >/dev/null; then
		missing+=("a running Docker engine (the docker CLI is installed but 'docker info' fails)")
	else
		missing+=("docker or podman")
	fi
	for tool in kind kubectl cargo go openssl; do
		command -v "$tool" >/dev/null || missing+=("$tool")
	done
	[[ -d manifests/webhook ]] || missing+=("manifests/webhook in this checkout")
	if ((${#missing[@]})); then
		local what
		what=$(printf '%s, ' "${missing[@]}")
		if [[ $DRY_RUN == 1 ]]; then
			log "dry run; a real run would stop here: missing ${what%, }"
			engine=${engine:-docker}
			return
		fi
		die "missing ${what%, }. See README \"Quickstart\"; 'make demo-local' needs no container engine."
	fi
	log "using $engine, $(kind version), kubectl $(kubectl version --client -o json | sed -n 's/.*"gitVersion": "\(.*\)".*/\1/p' | head -n1)"
}

# The pinned prometheus-operator bundle, from the Go module cache (downloaded and verified
# against tests/controlplane/crds/go.sum): the same release whose CRDs the tests validate against.
operator_bundle() {
	local dir version
	version=$(awk '$1 == "github.com/prometheus-operator/prometheus-operator" { print $2 }' tests/controlplane/crds/go.mod)
	if [[ $DRY_RUN == 1 ]] && ! command -v go >/dev/null; then
		echo "\$(go env GOMODCACHE)/github.com/prometheus-operator/prometheus-operator@$version/bundle.yaml"
		return
	fi
	dir=$(cd tests/controlplane/crds && GOTOOLCHAIN=local GOFLAGS=-mod=mod go mod download -json \
		"github.com/prometheus-operator/prometheus-operator@$version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
	[[ -f $dir/bundle.yaml ]] || die "no bundle.yaml in the prometheus-operator module ($version)"
	echo "$dir/bundle.yaml"
}

webhook_certificate() {
	local dns=$WEBHOOK_SERVICE.$WEBHOOK_NAMESPACE.svc
	run mkdir -p "$WORK/pki"
	run openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
		-subj /CN=ksit-demo-ca -keyout "$WORK/pki/ca.key" -out "$WORK/pki/ca.crt" \
		-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign
	run openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=$dns" \
		-keyout "$WORK/pki/tls.key" -out "$WORK/pki/tls.csr"
	write "$WORK/pki/tls.ext" "subjectAltName=DNS:$dns,DNS:$WEBHOOK_SERVICE.$WEBHOOK_NAMESPACE
extendedKeyUsage=serverAuth
"
	run openssl x509 -req -in "$WORK/pki/tls.csr" -CA "$WORK/pki/ca.crt" -CAkey "$WORK/pki/ca.key" \
		-CAcreateserial -days 30 -out "$WORK/pki/tls.crt" -extfile "$WORK/pki/tls.ext"
}

# wait_until WHAT SECONDS SHOWN COMMAND...: poll COMMAND every 5 s; a dry run prints SHOWN,
# the same check as a shell line.
wait_until() {
	local what=$1 limit=$2 deadline=$((SECONDS + $2))
	if [[ $DRY_RUN == 1 ]]; then
		printf '+ until %s; do sleep 5; done   # %s, at most %ss\n' "$3" "$what" "$limit"
		return
	fi
	shift 3
	until "$@" >/dev/null 2>&1; do
		((SECONDS < deadline)) || die "timed out waiting for $what"
		sleep 5
	done
}

PROM_API=/api/v1/namespaces/monitoring/services/prometheus-operated:9090/proxy/api/v1/query

# Prometheus's answer to a query, through the API server's service proxy (no port-forward).
prom_query() {
	kubectl --context "$CONTEXT" get --raw \
		"$PROM_API?query=$1"
}

has_series() { prom_query ksit_cluster_status | grep -q '"__name__":"ksit_cluster_status"'; }

pod_injected() {
	kubectl --context "$CONTEXT" -n ksit-system get pods -l control-plane=controller-manager \
		-o jsonpath='{.items[*].spec.initContainers[*].name} {.items[*].spec.containers[*].name}' |
		grep -qw ksit-exporter
}

cmd_up() {
	step "prerequisites"
	check_prerequisites
	[[ $DRY_RUN == 1 ]] && log "DEMO_DRY_RUN=1: printing the steps, running none"

	step "kind cluster $CLUSTER ($NODE_IMAGE)"
	if [[ $DRY_RUN != 1 ]] && kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
		log "cluster $CLUSTER exists; reusing it"
	else
		run kind create cluster --name "$CLUSTER" --image "$NODE_IMAGE" --wait 120s
	fi

	step "images: $IMAGE, $WEBHOOK_IMAGE and the stand-in manager, built with $engine and loaded into the nodes"
	run env IMAGE="$IMAGE" WEBHOOK_IMAGE="$WEBHOOK_IMAGE" IMAGE_BUILDER="$engine" scripts/image.sh build
	run env IMAGE="$IMAGE" WEBHOOK_IMAGE="$WEBHOOK_IMAGE" IMAGE_BUILDER="$engine" scripts/image.sh save \
		"$WORK/ksit-exporter.tar" "$WORK/ksit-exporter-webhook.tar"
	run kind load image-archive "$WORK/ksit-exporter.tar" --name "$CLUSTER"
	run kind load image-archive "$WORK/ksit-exporter-webhook.tar" --name "$CLUSTER"
	run mkdir -p "$WORK/manager"
	run env -C tests/ksit-manager CGO_ENABLED=0 GOTOOLCHAIN=local go build -trimpath -ldflags=-s -o "$WORK/manager/manager" .
	run "$engine" build -f docker/ksit-manager.Dockerfile -t "$MANAGER_IMAGE" "$WORK/manager"
	run "$engine" save -o "$WORK/ksit-manager.tar" "$MANAGER_IMAGE"
	run kind load image-archive "$WORK/ksit-manager.tar" --name "$CLUSTER"

	step "prometheus-operator (pinned bundle) and a Prometheus"
	# Server-side: the operator's CRDs exceed the annotation size client-side apply needs.
	kc apply --server-side --force-conflicts -f "$(operator_bundle)"
	wait_established 120 prometheuses.monitoring.coreos.com servicemonitors.monitoring.coreos.com \
		podmonitors.monitoring.coreos.com prometheusrules.monitoring.coreos.com
	kc -n default rollout status deployment/prometheus-operator --timeout=180s
	kc apply -k manifests/demo/prometheus

	step "ksit.io CRDs"
	kc apply -k manifests/crds
	wait_established 60 integrations.ksit.io integrationtargets.ksit.io

	step "injection webhook in $WEBHOOK_NAMESPACE, with a certificate for $WEBHOOK_SERVICE.$WEBHOOK_NAMESPACE.svc"
	webhook_certificate
	kc_generate create namespace "$WEBHOOK_NAMESPACE"
	kc_generate -n "$WEBHOOK_NAMESPACE" create secret tls "$WEBHOOK_SECRET" --cert "$WORK/pki/tls.crt" --key "$WORK/pki/tls.key"
	kc apply -k manifests/webhook
	# The API server trusts the webhook through the demo CA.
	if [[ $DRY_RUN == 1 ]]; then
		# shellcheck disable=SC2016 # the $(base64 ...) is for the reader to run, not expanded here
		printf '+ kubectl --context %s patch mutatingwebhookconfiguration %s --type json -p "[{\\"op\\": \\"replace\\", \\"path\\": \\"/webhooks/0/clientConfig/caBundle\\", \\"value\\": \\"$(base64 -w0 %s)\\"}]"\n' \
			"$CONTEXT" "$WEBHOOK_CONFIG" "$WORK/pki/ca.crt"
	else
		kc patch mutatingwebhookconfiguration "$WEBHOOK_CONFIG" --type json \
			-p "[{\"op\": \"replace\", \"path\": \"/webhooks/0/clientConfig/caBundle\", \"value\": \"$(base64 -w0 "$WORK/pki/ca.crt")\"}]"
	fi
	kc -n "$WEBHOOK_NAMESPACE" rollout status deployment --timeout=180s

	step "stand-in KSIT manager and samples in ksit-system (labelled ksit.io/inject=enabled)"
	kc apply -k manifests/demo
	# A pod created before the webhook answered would have no sidecar: recreate it.
	if [[ $DRY_RUN != 1 ]] && ! pod_injected; then
		kc -n ksit-system rollout restart deployment/ksit-controller-manager
	fi
	kc -n ksit-system rollout status deployment/ksit-controller-manager --timeout=180s
	wait_until "the sidecar in the manager's pod" 60 \
		"kubectl --context $CONTEXT -n ksit-system get pods -l control-plane=controller-manager -o jsonpath='{..name}' | grep -qw ksit-exporter" \
		pod_injected
	kc apply -k manifests/monitoring

	step "Prometheus scrapes the sidecar"
	kc -n monitoring wait --for condition=Available --timeout=300s prometheus/ksit
	# The ServiceMonitor scrapes every 30 s; the first scrape follows discovery.
	wait_until "ksit_cluster_status in Prometheus" 240 \
		"kubectl --context $CONTEXT get --raw '$PROM_API?query=ksit_cluster_status' | grep -q '\"__name__\":\"ksit_cluster_status\"'" \
		has_series
	if [[ $DRY_RUN == 1 ]]; then
		printf "+ kubectl --context %s get --raw '%s?query=ksit_cluster_status'\n" "$CONTEXT" "$PROM_API"
	else
		log "Prometheus answers ksit_cluster_status:"
		prom_query ksit_cluster_status
		echo
	fi
	cat <<EOF

The demo is up. Prometheus:
  kubectl --context $CONTEXT -n monitoring port-forward svc/prometheus-operated 9090
  then http://127.0.0.1:9090/graph?g0.expr=ksit_cluster_status
The sidecar:  kubectl --context $CONTEXT -n ksit-system get pods -o wide; kubectl --context $CONTEXT -n ksit-system logs deploy/ksit-controller-manager -c ksit-exporter
Remove it:    make demo-down
EOF
}

cmd_down() {
	run kind delete cluster --name "$CLUSTER"
}

case ${1:-} in
up) cmd_up ;;
down) cmd_down ;;
*)
	echo "usage: $0 up|down   (DEMO_DRY_RUN=1 prints the steps)" >&2
	exit 2
	;;
esac
