#!/usr/bin/env bash
# The kind demo: a kind cluster `ksit-demo` on a node image built here (scripts/kind-node.sh; no
# registry is reached), prometheus-operator and a Prometheus as kube-prometheus-stack installs
# them (namespace monitoring, ServiceMonitors selected by `release: prometheus`), the stand-in
# KSIT manager as upstream's Helm chart lays it out (manifests/demo), and this project's Helm
# chart: the injection webhook, the sidecar's RBAC and Service, and a ServiceMonitor. The
# manager's namespace enforces Pod Security `restricted` and is labelled for injection; the
# manager's pod is created through the webhook, scheduled, and started by the kubelet with the
# native sidecar. Ends when Prometheus answers ksit_cluster_status from that sidecar.
#
#   scripts/demo.sh up      (make demo)        create or update the demo
#   scripts/demo.sh down    (make demo-down)   delete the cluster; stop the engine if up started it
#
# DEMO_DRY_RUN=1 prints every step instead of running it (no prerequisite is then required).
# KIND_NODE_IMAGE=kindest/node:v1.34.x uses a node image from a registry instead of building one.
# KUBECONFIG is where kind writes the context kind-ksit-demo (default ~/.kube/config).
# Needs: root or a running Docker engine (scripts/engine.sh starts Debian's dockerd where none
# answers), go, cargo (with the musl target, see scripts/image.sh), openssl, python3, npm (the
# web UI of the demo's Prometheus, scripts/controlplane.sh build-ui), and for
# the node image debootstrap (installed where missing).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

CLUSTER=ksit-demo
CONTEXT=kind-$CLUSTER
WORK=$ROOT/target/demo
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
IMAGE=ghcr.io/kubestellar/ksit-exporter:$VERSION
WEBHOOK_IMAGE=ghcr.io/kubestellar/ksit-exporter-webhook:$VERSION
RELEASE=ksit-exporter
WEBHOOK_NAMESPACE=ksit-exporter-system
DRY_RUN=${DEMO_DRY_RUN:-0}
# The tools scripts/controlplane.sh builds: kind v0.33.0, and kubectl and helm of the test
# control plane's Kubernetes release. KIND, KUBECTL and HELM name others.
BIN=$ROOT/target/controlplane/bin
KIND=${KIND:-$BIN/kind}
KUBECTL=${KUBECTL:-$BIN/kubectl}
HELM=${HELM:-$BIN/helm}

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

kc() { run "$KUBECTL" --context "$CONTEXT" "$@"; }
kube() { "$KUBECTL" --context "$CONTEXT" "$@"; }

# write FILE TEXT: write TEXT to FILE, or print that it would.
write() {
	if [[ $DRY_RUN == 1 ]]; then
		printf '+ cat > %q <<EOF\n%sEOF\n' "$1" "$2"
	else
		printf '%s' "$2" >"$1"
	fi
}

# wait_until WHAT SECONDS COMMAND...: poll COMMAND every 2 s (a dry run prints it).
wait_until() {
	local what=$1 limit=$2 deadline=$((SECONDS + $2))
	shift 2
	if [[ $DRY_RUN == 1 ]]; then
		printf '+ until %s; do sleep 2; done   # %s, at most %ss\n' "$*" "$what" "$limit"
		return
	fi
	until "$@" >/dev/null 2>&1; do
		((SECONDS < deadline)) || die "timed out after ${limit}s waiting for $what"
		sleep 2
	done
}

check_prerequisites() {
	local missing=() tool
	for tool in cargo go openssl python3 npm; do
		command -v "$tool" >/dev/null || missing+=("$tool")
	done
	if ((${#missing[@]})); then
		local what
		what=$(printf '%s, ' "${missing[@]}")
		[[ $DRY_RUN == 1 ]] && {
			log "dry run; a real run would stop here: missing ${what%, }"
			return
		}
		die "missing ${what%, }. See README \"Quickstart\"; 'make demo-local' needs no container engine."
	fi
}

# The engine: one that answers (DOCKER_HOST or the default socket), else the dockerd that
# scripts/engine.sh starts, remembered so that `down` stops it again.
start_engine() {
	if [[ $DRY_RUN == 1 ]]; then
		run scripts/engine.sh up
		# shellcheck disable=SC2016 # printed for the reader
		printf '+ eval "$(scripts/engine.sh env)"\n'
		return
	fi
	mkdir -p "$WORK"
	if ! scripts/engine.sh status; then
		scripts/engine.sh up
		touch "$WORK/engine-started"
	fi
	eval "$(scripts/engine.sh env)"
	export DOCKER_HOST
}

# The cluster: the API server on 127.0.0.1 only, etcd without fsync and a longer control-plane
# timeout for a loaded 2-core machine (kubeadm v1beta3 patches: kind uses that API below
# Kubernetes 1.36). On the node image built here (ETCD_TAG set): no kindnetd (no registry
# reached here serves it; the node carries a bridge CNI configuration) and the tag of the etcd
# image built here. A pulled kindest/node keeps kind's defaults for both.
kind_config() {
	local etcd_tag=${1:-}
	cat <<EOF
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
networking:
  apiServerAddress: 127.0.0.1
  disableDefaultCNI: $([[ -n $etcd_tag ]] && echo true || echo false)
  podSubnet: 10.244.0.0/16
  serviceSubnet: 10.96.0.0/16
nodes:
  - role: control-plane
kubeadmConfigPatches:
  - |
    kind: ClusterConfiguration
    apiServer:
      timeoutForControlPlane: 10m0s
    etcd:
      local:
$([[ -n $etcd_tag ]] && printf '        imageTag: "%s"\n' "$etcd_tag")
        extraArgs:
          unsafe-no-fsync: "true"
EOF
}

# CoreDNS answers for the cluster only: without its `forward` block no lookup leaves the machine.
coredns_local_only() {
	if [[ $DRY_RUN == 1 ]]; then
		printf '+ (the coredns ConfigMap without its forward block; coredns restarted)\n'
		return
	fi
	local corefile
	corefile=$(kube -n kube-system get configmap coredns -o jsonpath='{.data.Corefile}')
	grep -q 'forward \. ' <<<"$corefile" || return 0
	corefile=$(sed '/forward \. /,/}/d' <<<"$corefile")
	kube -n kube-system create configmap coredns --from-literal=Corefile="$corefile" \
		--dry-run=client -o yaml | kube apply -f - >/dev/null
	kube -n kube-system rollout restart deployment/coredns >/dev/null
}

# The pinned prometheus-operator bundle, from the Go module cache (downloaded and verified
# against tests/controlplane/crds/go.sum): the release whose CRDs the tests validate against.
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

# The images every pod of the demo runs, none of which can be pulled: ours (scripts/image.sh),
# and the stand-in manager, prometheus-operator, its config reloader and Prometheus
# (scripts/kind-images.sh).
load_images() {
	run mkdir -p "$WORK"
	run env IMAGE="$IMAGE" WEBHOOK_IMAGE="$WEBHOOK_IMAGE" IMAGE_BUILDER=buildah scripts/image.sh build
	run env IMAGE="$IMAGE" WEBHOOK_IMAGE="$WEBHOOK_IMAGE" IMAGE_BUILDER=buildah scripts/image.sh save \
		"$WORK/ksit-exporter.tar" "$WORK/ksit-exporter-webhook.tar"
	local archives=("$WORK/ksit-exporter.tar" "$WORK/ksit-exporter-webhook.tar") name archive
	if [[ $DRY_RUN == 1 ]]; then
		run scripts/kind-images.sh build
		printf '+ (the archives scripts/kind-images.sh list names outside registry.k8s.io)\n'
	else
		scripts/kind-images.sh build >&2
		while IFS=$'\t' read -r name archive; do
			[[ $name == registry.k8s.io/* ]] || archives+=("$archive")
		done < <(scripts/kind-images.sh list)
	fi
	for archive in "${archives[@]}"; do
		run "$KIND" load image-archive "$archive" --name "$CLUSTER"
	done
}

PROM_API=/api/v1/namespaces/monitoring/services/prometheus-operated:9090/proxy/api/v1/query

# Prometheus's answer to a query, through the API server's service proxy (no port-forward).
prom_query() { kube get --raw "$PROM_API?query=$1"; }
has_series() { prom_query ksit_cluster_status | grep -q '"__name__":"ksit_cluster_status"'; }

pod_injected() {
	kube -n ksit-system get pods -l control-plane=controller-manager \
		-o jsonpath='{.items[*].spec.initContainers[*].name} {.items[*].spec.containers[*].name}' |
		grep -qw ksit-exporter
}

cmd_up() {
	step "prerequisites, the tools (kind, kubectl, helm) and the engine"
	check_prerequisites
	[[ $DRY_RUN == 1 ]] && log "DEMO_DRY_RUN=1: printing the steps, running none"
	run scripts/controlplane.sh build-node
	start_engine

	local node_image=${KIND_NODE_IMAGE:-} etcd_tag=""
	if [[ -z $node_image ]]; then
		step "the node image, built here (scripts/kind-node.sh)"
		run scripts/kind-node.sh build
		node_image=$(scripts/kind-node.sh image)
		etcd_tag=$(scripts/kind-images.sh etcd-tag)
	fi

	step "kind cluster $CLUSTER ($node_image)"
	if [[ $DRY_RUN != 1 ]] && "$KIND" get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
		log "cluster $CLUSTER exists; reusing it"
	else
		run mkdir -p "$WORK"
		write "$WORK/kind.yaml" "$(kind_config "$etcd_tag")
"
		# --retain: when kubeadm stalls, the node stays for `docker exec ... journalctl -u kubelet`.
		run "$KIND" create cluster --name "$CLUSTER" --image "$node_image" --config "$WORK/kind.yaml" \
			--retain --wait 300s
	fi
	# Offline, nothing may leave the machine; a pulled node image keeps CoreDNS as kubeadm made it.
	[[ -n ${KIND_NODE_IMAGE:-} ]] || coredns_local_only

	step "images, built here and loaded into the node"
	load_images

	step "prometheus-operator and a Prometheus in monitoring, as kube-prometheus-stack installs them"
	run mkdir -p "$WORK/operator"
	run cp "$(operator_bundle)" "$WORK/operator/bundle.yaml"
	# The bundle says namespace default; kustomize moves the operator and its binding's subject.
	write "$WORK/operator/kustomization.yaml" "apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: monitoring
resources:
  - bundle.yaml
"
	kc apply -f manifests/demo/prometheus/namespace.yaml
	# Server-side: the operator's CRDs exceed the annotation size client-side apply needs.
	kc apply --server-side --force-conflicts -k "$WORK/operator"
	kc -n monitoring rollout status deployment/prometheus-operator --timeout=300s
	kc apply -k manifests/demo/prometheus

	step "ksit.io CRDs, and the stand-in KSIT manager as upstream's Helm chart lays it out"
	kc apply -k manifests/crds
	kc wait --for condition=Established --timeout=60s crd/integrations.ksit.io crd/integrationtargets.ksit.io
	kc apply -k manifests/demo

	step "this project's chart: webhook, sidecar RBAC and Service, ServiceMonitor (release: prometheus)"
	# The webhook's namespace enforces Pod Security restricted too.
	if [[ $DRY_RUN == 1 ]] || ! kube get namespace "$WEBHOOK_NAMESPACE" >/dev/null 2>&1; then
		kc create namespace "$WEBHOOK_NAMESPACE"
	fi
	kc label --overwrite namespace "$WEBHOOK_NAMESPACE" pod-security.kubernetes.io/enforce=restricted \
		pod-security.kubernetes.io/enforce-version=latest
	run "$HELM" --kube-context "$CONTEXT" upgrade --install "$RELEASE" charts/ksit-exporter \
		--namespace "$WEBHOOK_NAMESPACE" --create-namespace --wait --timeout 300s \
		--set webhook.image.repository="${WEBHOOK_IMAGE%:*}" --set webhook.image.tag="$VERSION" \
		--set sidecar.image.repository="${IMAGE%:*}" --set sidecar.image.tag="$VERSION" \
		--set webhook.replicas=1 --set webhook.podDisruptionBudget.enabled=false \
		--set monitoring.serviceMonitor.enabled=true \
		--set monitoring.serviceMonitor.additionalLabels.release=prometheus

	step "the manager's pod, recreated through the webhook"
	# A pod created before the webhook answered has no sidecar: recreate it.
	if [[ $DRY_RUN == 1 ]] || ! pod_injected; then
		kc -n ksit-system rollout restart deployment/ksit-controller-manager
	fi
	kc -n ksit-system rollout status deployment/ksit-controller-manager --timeout=300s
	wait_until "the sidecar in the manager's pod" 120 pod_injected

	step "Prometheus scrapes the sidecar"
	kc -n monitoring wait --for condition=Available --timeout=300s prometheus/ksit
	wait_until "ksit_cluster_status in Prometheus" 300 has_series
	if [[ $DRY_RUN == 1 ]]; then
		printf "+ kubectl --context %s get --raw '%s?query=ksit_cluster_status'\n" "$CONTEXT" "$PROM_API"
	else
		log "Prometheus answers ksit_cluster_status:"
		prom_query ksit_cluster_status
		echo
	fi
	cat <<EOF

The demo is up (context $CONTEXT). On this machine, through 127.0.0.1:
  Prometheus:   $KUBECTL --context $CONTEXT -n monitoring port-forward svc/prometheus-operated 9090
                then http://127.0.0.1:9090/graph?g0.expr=ksit_cluster_status (Targets: /targets)
  The sidecar:  $KUBECTL --context $CONTEXT -n ksit-system port-forward deploy/ksit-controller-manager 8080
                then http://127.0.0.1:8080/ (status page) and http://127.0.0.1:8080/metrics
  Its log:      $KUBECTL --context $CONTEXT -n ksit-system logs deploy/ksit-controller-manager -c ksit-exporter
Remove it:      make demo-down
EOF
}

cmd_down() {
	if [[ $DRY_RUN != 1 ]] && scripts/engine.sh status; then
		eval "$(scripts/engine.sh env)"
		export DOCKER_HOST
		[[ -x $KIND ]] || die "no kind at $KIND: scripts/controlplane.sh build-node"
		"$KIND" delete cluster --name "$CLUSTER"
	else
		run "$KIND" delete cluster --name "$CLUSTER"
	fi
	if [[ -f $WORK/engine-started ]]; then
		# kind's network outlives its clusters, and its bridge the engine: remove it with them.
		[[ $DRY_RUN == 1 ]] || docker network rm kind >/dev/null 2>&1 || true
		run scripts/engine.sh down
		run rm -f "$WORK/engine-started"
	fi
}

case ${1:-} in
up) cmd_up ;;
down) cmd_down ;;
*)
	echo "usage: $0 up|down   (DEMO_DRY_RUN=1 prints the steps)" >&2
	exit 2
	;;
esac
