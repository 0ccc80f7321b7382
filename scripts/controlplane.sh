#!/usr/bin/env bash
# The test control plane: etcd, kube-apiserver and kube-controller-manager on 127.0.0.1, with
# RBAC, the ksit.io, prometheus-operator and open-cluster-management CRDs installed. There is no
# scheduler and no kubelet: tests bind pods and write their status themselves.
#
#   scripts/controlplane.sh build    build (or reuse cached) binaries, link them into target/controlplane/bin
#   scripts/controlplane.sh up       build if needed, start, install CRDs; does nothing if already up
#   scripts/controlplane.sh down     stop everything it (and the tests) started, by PID; remove data
#   scripts/controlplane.sh status   exit 0 if the API server is ready
#   scripts/controlplane.sh build-bench   also kube-state-metrics, for `make bench-compare` only
#   scripts/controlplane.sh build-ui      also prometheus-ui, a Prometheus with its web UI, for
#                                         `make demo-local` and `make test-browser` (needs npm)
#   scripts/controlplane.sh build-node    also what a real node runs, for the kind suite: kubelet,
#                                         kubeadm, kube-scheduler, kube-proxy (same module and
#                                         release as the API server), containerd, runc, CNI
#                                         plugins, pause, kind, crictl, CoreDNS and
#                                         prometheus-operator (tests/kind/*)
#
# KSIT_CONTROLPLANE_DIR=DIR runs up, down and status on another control plane, its state in DIR
# (default target/controlplane); tests/fleet_e2e.rs starts its second hosting cluster this way.
#
# Needs bash, go, openssl, curl, coreutils. kubectl is built here too (same module as
# kube-apiserver), so its version always matches the server's.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CP_DIR=${KSIT_CONTROLPLANE_DIR:-$ROOT/target/controlplane}
BIN_DIR=$CP_DIR/bin
PKI_DIR=$CP_DIR/pki
RUN_DIR=$CP_DIR/run        # PID files; the Rust tests add one per ksit-manager they start
ENV_FILE=$CP_DIR/env
KUBECONFIG_FILE=$CP_DIR/kubeconfig
# Outside the clone: CI starts from a fresh clone, so a cache under target/ would never be warm.
CACHE_DIR=${KSIT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ksit-exporter}/controlplane
GO=${GO:-go}

# Build with the installed Go only (no toolchain download), statically.
export GOTOOLCHAIN=local CGO_ENABLED=0

log() { printf '[controlplane] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# --- build ------------------------------------------------------------------------------

# Version of a module as pinned in a go.mod (first "<module> vX" requirement).
pinned() { awk -v m="$2" '$1 == m && $2 ~ /^v/ { print $2; exit }' "$1/go.mod"; }

# build_component NAME MODDIR LDFLAGS PACKAGE... : build the packages into the cache,
# keyed by the Go version, the flags and every input file of the module, unless that key
# is cached already; then link the binaries into BIN_DIR.
build_component() {
	local name=$1 moddir=$2 ldflags=$3
	shift 3
	local key
	key=$({
		"$GO" env GOVERSION
		printf '%s\n' "$ldflags" "$@"
		# Relative paths: a clone elsewhere (CI's fresh checkout) must hit the same key.
		cd "$moddir" && find . -type f \( -name '*.go' -o -name go.mod -o -name go.sum \) -print0 | sort -z | xargs -0 sha256sum
	} | sha256sum | cut -c1-16)
	local dest=$CACHE_DIR/$name-$key
	if [[ -f $dest/.complete ]]; then
		log "$name: cached ($dest)"
	else
		log "$name: building $* ..."
		local start=$SECONDS tmp
		mkdir -p "$CACHE_DIR"
		tmp=$(mktemp -d "$CACHE_DIR/.$name.XXXXXX")
		(cd "$moddir" && nice -n 10 "$GO" build -trimpath -ldflags "$ldflags" -o "$tmp/" "$@") ||
			{ rm -rf "$tmp"; die "$name: go build failed"; }
		# etcd's main package is the module root go.etcd.io/etcd/server/v3, which go names "server".
		[[ -f $tmp/server ]] && mv "$tmp/server" "$tmp/etcd"
		touch "$tmp/.complete"
		rm -rf "$dest"
		mv "$tmp" "$dest"
		log "$name: built in $((SECONDS - start))s"
	fi
	mkdir -p "$BIN_DIR"
	local bin
	for bin in "$dest"/*; do
		ln -sfn "$bin" "$BIN_DIR/$(basename "$bin")"
	done
}

# module_dir MODDIR MODULE: where the Go module cache holds the pinned version of MODULE
# (downloading it, verified against MODDIR's go.sum, if needed).
module_dir() {
	local version
	version=$(pinned "$1" "$2")
	(cd "$1" && "$GO" mod download -json "$2@$version") | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p'
}

# Copy the third-party CRDs out of the Go module cache; their versions are pinned in
# tests/controlplane/crds. They are not committed: they come from upstream releases.
extract_crds() {
	local moddir=$ROOT/tests/controlplane/crds out=$CP_DIR/crds po ocm
	po=$(module_dir "$moddir" github.com/prometheus-operator/prometheus-operator)
	ocm=$(module_dir "$moddir" open-cluster-management.io/api)
	[[ -d $po && -d $ocm ]] || die "go mod download failed for the CRD modules"
	rm -rf "$out"
	mkdir -p "$out"
	# All of them, not only ServiceMonitor/PodMonitor/PrometheusRule: the demo manifests
	# also declare a Prometheus, and a dry run needs its CRD.
	install -m 0644 "$po"/example/prometheus-operator-crd/monitoring.coreos.com_*.yaml "$out/"
	install -m 0644 "$ocm/cluster/v1/0000_00_clusters.open-cluster-management.io_managedclusters.crd.yaml" "$out/"
}

# The OpenMetrics parser the tests use (tests/controlplane/openmetrics/requirements.txt), from
# PyPI into the cache, verified by its hash, linked as bin/prometheus_client.whl.
fetch_wheel() {
	local req=$ROOT/tests/controlplane/openmetrics/requirements.txt dest=$CACHE_DIR/python version whl
	version=$(sed -n 's/^prometheus_client==\([^ ]*\) .*/\1/p' "$req")
	whl=prometheus_client-$version-py3-none-any.whl
	if [[ ! -f $dest/$whl ]]; then
		python3 -m pip --version >/dev/null 2>&1 || die "fetching $whl needs pip: apt-get install python3-pip"
		python3 -m pip download --quiet --no-deps --only-binary=:all: --require-hashes -r "$req" -d "$dest" ||
			die "pip download of $whl failed"
	fi
	mkdir -p "$BIN_DIR"
	ln -sfn "$dest/$whl" "$BIN_DIR/prometheus_client.whl"
}

# The link flags of both Prometheus builds: module v0.3MM.P is Prometheus v3.MM.P.
prometheus_ldflags() {
	local prom
	prom=$(pinned "$ROOT/tests/controlplane/prometheus" github.com/prometheus/prometheus |
		sed -E 's/^v0\.3([0-9][0-9])\.([0-9]+)$/\1 \2/' | awk '{ printf "3.%d.%s", $1, $2 }')
	echo "-s -w -X github.com/prometheus/common/version.Version=$prom"
}

# helm's version, and the Kubernetes version it assumes offline (`helm template`, lint's
# deprecation checks), set as helm's Makefile does: from the pinned helm and client-go v0.N.
helm_ldflags() {
	local moddir=$ROOT/tests/controlplane/helm minor
	minor=$(pinned "$moddir" k8s.io/client-go | cut -d. -f2)
	echo "-s -w -X helm.sh/helm/v3/internal/version.version=$(pinned "$moddir" helm.sh/helm/v3)" \
		"-X helm.sh/helm/v3/internal/version.metadata= -X helm.sh/helm/v3/internal/version.gitTreeState=clean" \
		"-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor" \
		"-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$minor"
}

cmd_build() {
	command -v "$GO" >/dev/null || die "go not found (need Go >= 1.26 for etcd v3.6)"
	local start=$SECONDS cp=$ROOT/tests/controlplane
	local k8s v=k8s.io/component-base/version
	k8s=$(pinned "$cp/kubernetes" k8s.io/kubernetes)
	# Without these, kube-apiserver reports version v0.0.0-master and kubectl warns about skew.
	build_component kubernetes "$cp/kubernetes" \
		"-s -w -X $v.gitVersion=$k8s -X $v.gitMajor=1 -X $v.gitMinor=$(cut -d. -f2 <<<"$k8s") -X $v.gitTreeState=clean" \
		k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kubectl
	build_component etcd "$cp/etcd" "-s -w" go.etcd.io/etcd/server/v3
	build_component prometheus "$cp/prometheus" "$(prometheus_ldflags)" \
		github.com/prometheus/prometheus/cmd/prometheus github.com/prometheus/prometheus/cmd/promtool
	build_component ksit-manager "$ROOT/tests/ksit-manager" "-s -w" .
	# Thanos receive, query and rule: the central store of tests/fleet_e2e.rs. With its release
	# build's tags: Thanos converts Prometheus's labels in place, assuming the slice layout;
	# without slicelabels, Receive panics on the first remote write.
	build_component thanos "$cp/thanos" \
		"-s -w -X github.com/prometheus/common/version.Version=$(pinned "$cp/thanos" github.com/thanos-io/thanos | tr -d v)" \
		-tags=netgo,slicelabels github.com/thanos-io/thanos/cmd/thanos
	build_component helm "$cp/helm" "$(helm_ldflags)" helm.sh/helm/v3/cmd/helm
	extract_crds
	fetch_wheel
	log "build: done in $((SECONDS - start))s; binaries in $BIN_DIR"
}

# kube-state-metrics, the peer `make bench-compare` measures against; not in cmd_build, so CI
# (which never benchmarks) does not spend minutes building it.
cmd_build_bench() {
	cmd_build
	local moddir=$ROOT/tests/controlplane/kube-state-metrics ksm
	ksm=$(pinned "$moddir" k8s.io/kube-state-metrics/v2)
	build_component kube-state-metrics "$moddir" "-s -w -X github.com/prometheus/common/version.Version=$ksm" \
		k8s.io/kube-state-metrics/v2
}

# What a real node runs (scripts/kind.sh builds the node image from these). Not in cmd_build:
# only the kind suite and `make demo` need them.
cmd_build_node() {
	cmd_build
	local cp=$ROOT/tests/controlplane kind=$ROOT/tests/kind k8s v=k8s.io/component-base/version
	k8s=$(pinned "$cp/kubernetes" k8s.io/kubernetes)
	# The same flags as the control plane's build, so Go's build cache shares every package.
	build_component kubernetes-node "$cp/kubernetes" \
		"-s -w -X $v.gitVersion=$k8s -X $v.gitMajor=1 -X $v.gitMinor=$(cut -d. -f2 <<<"$k8s") -X $v.gitTreeState=clean" \
		k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kubeadm \
		k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kube-proxy
	local ctrd=github.com/containerd/containerd/v2
	build_component containerd "$kind/containerd" \
		"-s -w -X $ctrd/version.Version=$(pinned "$kind/containerd" $ctrd)" \
		-tags=no_aufs,no_zfs,no_btrfs,no_devmapper \
		$ctrd/cmd/containerd $ctrd/cmd/ctr $ctrd/cmd/containerd-shim-runc-v2
	# runc needs cgo and libseccomp: the restricted Pod Security level asks for RuntimeDefault.
	pkg-config --exists libseccomp 2>/dev/null || die "runc needs libseccomp's headers: apt-get install libseccomp-dev pkg-config"
	CGO_ENABLED=1 build_component runc "$kind/runc" \
		"-s -w -X main.version=$(pinned "$kind/runc" github.com/opencontainers/runc | tr -d v)" \
		-tags=seccomp,urfave_cli_no_docs github.com/opencontainers/runc
	local cni=github.com/containernetworking/plugins/plugins
	build_component cni "$kind/cni" "-s -w" \
		$cni/main/bridge $cni/main/loopback $cni/ipam/host-local $cni/meta/portmap
	build_component kind "$kind/kind" "-s -w" sigs.k8s.io/kind
	# crictl: `kind load` asks the node's CRI with it which images are there.
	build_component crictl "$kind/cri-tools" \
		"-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$(pinned "$kind/cri-tools" sigs.k8s.io/cri-tools)" \
		sigs.k8s.io/cri-tools/cmd/crictl
	build_pause "$cp/kubernetes"
	# What the cluster runs beside kubeadm's control plane (scripts/kind-images.sh makes their
	# images): CoreDNS at kubeadm's default tag, prometheus-operator and its config reloader.
	build_component coredns "$kind/coredns" "-s -w" github.com/coredns/coredns
	local po=github.com/prometheus-operator/prometheus-operator pov
	pov=$(pinned "$kind/prometheus-operator" $po)
	build_component prometheus-operator "$kind/prometheus-operator" \
		"-s -w -X github.com/prometheus/common/version.Version=${pov#v} -X github.com/prometheus/common/version.Branch=release" \
		$po/cmd/operator $po/cmd/prometheus-config-reloader
	log "build-node: done; binaries in $BIN_DIR"
}

# pause, the sandbox every pod's containers join, from the C file the kubernetes module ships
# (registry.k8s.io/pause is built from the same file); static, so its image is FROM scratch.
build_pause() {
	local src dest key
	src=$(module_dir "$1" k8s.io/kubernetes)/build/pause/linux/pause.c
	[[ -f $src ]] || die "no build/pause/linux/pause.c in the kubernetes module"
	key=$({ cc --version | head -n1; sha256sum "$src"; } | sha256sum | cut -c1-16)
	dest=$CACHE_DIR/pause-$key
	if [[ ! -f $dest/.complete ]]; then
		mkdir -p "$dest"
		cc -Os -Wall -Werror -static -DVERSION=v3.10.1 -o "$dest/pause" "$src" || die "pause: cc failed"
		strip "$dest/pause"
		touch "$dest/.complete"
		log "pause: built"
	fi
	ln -sfn "$dest/pause" "$BIN_DIR/pause"
}

# prometheus-ui: the same Prometheus with its web UI embedded. The module ships the UI's
# sources (web/ui, an npm workspace pinned by its package-lock.json), not the built assets, so
# the plain build above serves the API only. This one copies the module to a writable directory
# in the cache (the Go module cache is read-only), installs the workspace with `npm ci` from the
# registry, builds the mantine UI (the only one Prometheus 3 serves unless --enable-feature=old-ui),
# gzips it into web/ui/static and writes embed.go as the module's scripts/compress_assets.sh does,
# then builds with the `builtinassets` tag. It is built against tests/controlplane/prometheus's
# go.mod (the module replaced by the copy), so its dependencies are the API-only build's.
# Not in cmd_build: it costs minutes and hundreds of MB that most tests do not need.
UI_RECIPE=1 # bump when the steps below change, to miss the cache
cmd_build_ui() {
	cmd_build
	command -v npm >/dev/null || die "npm not found: the Prometheus web UI is built with npm (apt-get install npm)"
	local moddir=$ROOT/tests/controlplane/prometheus src key
	src=$(module_dir "$moddir" github.com/prometheus/prometheus)
	[[ -d $src/web/ui/mantine-ui ]] || die "no web/ui/mantine-ui in $src"
	key=$({
		"$GO" env GOVERSION
		node --version
		npm --version
		echo "$UI_RECIPE" "$(prometheus_ldflags)"
		cd "$moddir" && sha256sum go.mod go.sum
	} | sha256sum | cut -c1-16)
	local dest=$CACHE_DIR/prometheus-ui-$key
	if [[ -f $dest/.complete ]]; then
		log "prometheus-ui: cached ($dest)"
	else
		log "prometheus-ui: npm ci, UI build and go build (several minutes) ..."
		local start=$SECONDS tmp
		mkdir -p "$CACHE_DIR"
		tmp=$(mktemp -d "$CACHE_DIR/.prometheus-ui.XXXXXX")
		build_ui_in "$tmp" "$src" "$moddir" || { rm -rf "$tmp"; die "prometheus-ui: build failed (work dir removed)"; }
		touch "$tmp/out/.complete"
		rm -rf "$dest"
		mv "$tmp/out" "$dest"
		rm -rf "$tmp"
		log "prometheus-ui: built in $((SECONDS - start))s"
	fi
	mkdir -p "$BIN_DIR"
	ln -sfn "$dest/prometheus-ui" "$BIN_DIR/prometheus-ui"
}

# build_ui_in WORK SRC MODDIR: the steps of cmd_build_ui, in WORK; the binary lands in WORK/out.
build_ui_in() {
	local work=$1 src=$2 moddir=$3 ui
	# set -e does not hold here (the caller tests the status): every step checks its own.
	cp -a "$src" "$work/src" && chmod -R u+w "$work/src" || return 1
	ui=$work/src/web/ui
	# The workspace without react-app (the old UI, outside the workspace): the lezer and
	# codemirror modules the mantine UI imports, then the UI itself.
	(cd "$ui" && nice -n 10 npm ci --no-audit --no-fund --loglevel=error) || return 1
	local m
	for m in @prometheus-io/lezer-promql @prometheus-io/codemirror-promql @prometheus-io/mantine-ui; do
		(cd "$ui" && nice -n 10 npm run --silent build -w "$m") >"$work/npm-build.log" 2>&1 ||
			{ tail -n 30 "$work/npm-build.log" >&2; return 1; }
	done
	mkdir -p "$ui/static" && mv "$ui/mantine-ui/dist" "$ui/static/mantine-ui" || return 1
	# As scripts/compress_assets.sh: only the gzipped copies are embedded; prometheus/common's
	# assets package serves them decompressed to clients that do not accept gzip.
	(cd "$ui" && find static -type f ! -name '*.gz' -exec gzip -fkn {} + &&
		{ cat embed.go.tmpl
		  find static -type f -name '*.gz' -print0 | sort -z | xargs -0 echo //go:embed
		  echo 'var EmbedFS embed.FS'; } >embed.go) || return 1
	du -sm "$ui/node_modules" "$ui/static" | sed 's/^/[controlplane] prometheus-ui: MB /' >&2
	# tests/controlplane/prometheus's go.mod and go.sum with the module replaced by the copy.
	mkdir -p "$work/mod" "$work/out" && cp "$moddir/go.mod" "$moddir/go.sum" "$work/mod/" || return 1
	(cd "$work/mod" && "$GO" mod edit -replace "github.com/prometheus/prometheus=$work/src") || return 1
	(cd "$work/mod" && nice -n 10 "$GO" build -trimpath -tags builtinassets -ldflags "$(prometheus_ldflags)" \
		-o "$work/out/prometheus-ui" github.com/prometheus/prometheus/cmd/prometheus) || return 1
}

# --- status -------------------------------------------------------------------------------

# pid_alive NAME: the PID in RUN_DIR/NAME.pid is running one of our binaries.
# Checking the command line keeps a recycled PID from being mistaken for ours.
pid_alive() {
	local pidfile=$RUN_DIR/$1.pid pid
	[[ -f $pidfile ]] || return 1
	pid=$(<"$pidfile")
	[[ -r /proc/$pid/cmdline ]] || return 1
	local cmdline
	cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline")
	[[ $cmdline == *"$CP_DIR"* || $cmdline == *"$CACHE_DIR"* ]]
}

api_ready() {
	[[ -f $ENV_FILE ]] || return 1
	local url
	url=$(sed -n "s/^export KSIT_CONTROLPLANE_SERVER='\(.*\)'$/\1/p" "$ENV_FILE")
	curl -sf --max-time 3 --cacert "$PKI_DIR/ca.crt" --cert "$PKI_DIR/admin.crt" --key "$PKI_DIR/admin.key" \
		"$url/readyz" >/dev/null
}

cmd_status() {
	if pid_alive etcd && pid_alive kube-apiserver && pid_alive kube-controller-manager && api_ready; then
		log "up: $(sed -n "s/^export KSIT_CONTROLPLANE_SERVER='\(.*\)'$/\1/p" "$ENV_FILE") (KUBECONFIG=$KUBECONFIG_FILE)"
		return 0
	fi
	log "down"
	return 1
}

# --- up -----------------------------------------------------------------------------------

# A loopback port nothing listens on. The kernel may still hand it out before we bind it;
# the caller retries startup in that case.
free_port() {
	local port
	while :; do
		port=$((20000 + RANDOM % 40000))
		(: <"/dev/tcp/127.0.0.1/$port") 2>/dev/null || { echo "$port"; return; }
	done
}

# sign NAME SUBJECT EXTENSION... : a key and a certificate signed by the test CA.
sign() {
	local name=$1 subj=$2
	shift 2
	[[ -f $PKI_DIR/$name.crt ]] && return
	openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "$subj" \
		-keyout "$PKI_DIR/$name.key" -out "$PKI_DIR/$name.csr" 2>/dev/null
	openssl x509 -req -in "$PKI_DIR/$name.csr" -CA "$PKI_DIR/ca.crt" -CAkey "$PKI_DIR/ca.key" -CAcreateserial \
		-days 3650 -out "$PKI_DIR/$name.crt" -extfile <(printf '%s\n' "$@") 2>/dev/null
	rm -f "$PKI_DIR/$name.csr"
}

# Kept across restarts (only etcd's data is removed), so a restart reuses the CA.
make_pki() {
	mkdir -p "$PKI_DIR"
	if [[ ! -f $PKI_DIR/ca.crt ]]; then
		openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -x509 -days 3650 -subj "/CN=ksit-test-ca" -keyout "$PKI_DIR/ca.key" -out "$PKI_DIR/ca.crt" \
			-addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
	fi
	sign apiserver "/CN=kube-apiserver" "extendedKeyUsage=serverAuth" \
		"subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,IP:10.0.0.1"
	# O=system:masters is bound to cluster-admin by the RBAC bootstrap policy.
	sign admin "/O=system:masters/CN=ksit-test-admin" "extendedKeyUsage=clientAuth"
	if [[ ! -f $PKI_DIR/sa.key ]]; then
		openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:prime256v1 -out "$PKI_DIR/sa.key" 2>/dev/null
		openssl pkey -in "$PKI_DIR/sa.key" -pubout -out "$PKI_DIR/sa.pub" 2>/dev/null
	fi
}

# start NAME ARGS... : run BIN_DIR/NAME detached, logging to CP_DIR/NAME.log.
start() {
	local name=$1
	shift
	# Resolve the link so the PID check in pid_alive sees the cached binary's path.
	setsid "$(readlink -f "$BIN_DIR/$name")" "$@" >"$CP_DIR/$name.log" 2>&1 </dev/null &
	echo $! >"$RUN_DIR/$name.pid"
}

# running PID: the process exists and has not exited. Not `kill -0`: that also finds an
# exited process nobody has reaped (a zombie), as ours stay where PID 1 does not reap.
running() {
	local stat state
	# cat, not $(<...): under set -e a missing file there exits the whole script.
	stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
	state=${stat##*) }
	[[ $state != Z* ]]
}

# wait_for NAME SECONDS COMMAND... : poll COMMAND until it succeeds or NAME exits.
wait_for() {
	local name=$1 deadline=$((SECONDS + $2)) pid
	shift 2
	pid=$(cat "$RUN_DIR/$name.pid")
	until "$@" >/dev/null 2>&1; do
		# Not pid_alive: until the forked shell has exec'd the binary, its command line is
		# this script's, which pid_alive would take for a recycled PID.
		running "$pid" || { tail -n 20 "$CP_DIR/$name.log" >&2; log "$name exited"; return 1; }
		((SECONDS < deadline)) || { tail -n 20 "$CP_DIR/$name.log" >&2; log "$name: not ready after timeout"; return 1; }
		sleep 0.2
	done
}

start_etcd() {
	local client peer
	client=$(free_port) peer=$(free_port)
	rm -rf "$CP_DIR/etcd-data"
	# Test data need not survive a crash: skip fsync, which dominates etcd latency on CI disks.
	start etcd --name ksit-test --data-dir "$CP_DIR/etcd-data" \
		--listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
		--listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
		--initial-cluster "ksit-test=http://127.0.0.1:$peer" --unsafe-no-fsync
	ETCD_URL=http://127.0.0.1:$client
	wait_for etcd 30 curl -sf --max-time 2 "$ETCD_URL/health"
}

start_apiserver() {
	API_PORT=$(free_port)
	# Flags follow envtest's: service-account issuer and keys are mandatory; no controller
	# creates default ServiceAccounts, so that admission plugin would reject pods; with no
	# default route the advertise address must be given, and loopback addresses may not
	# be written to Endpoints, so the kubernetes Service endpoints are not reconciled.
	start kube-apiserver \
		--etcd-servers="$ETCD_URL" \
		--bind-address=127.0.0.1 --secure-port="$API_PORT" \
		--advertise-address=127.0.0.1 --endpoint-reconciler-type=none \
		--tls-cert-file="$PKI_DIR/apiserver.crt" --tls-private-key-file="$PKI_DIR/apiserver.key" \
		--client-ca-file="$PKI_DIR/ca.crt" \
		--authorization-mode=RBAC \
		--service-account-issuer=https://kubernetes.default.svc \
		--service-account-key-file="$PKI_DIR/sa.pub" --service-account-signing-key-file="$PKI_DIR/sa.key" \
		--service-cluster-ip-range=10.0.0.0/24 \
		--disable-admission-plugins=ServiceAccount \
		--allow-privileged=true --profiling=false
	SERVER_URL=https://127.0.0.1:$API_PORT
	wait_for kube-apiserver 90 curl -sf --max-time 2 --cacert "$PKI_DIR/ca.crt" \
		--cert "$PKI_DIR/admin.crt" --key "$PKI_DIR/admin.key" "$SERVER_URL/readyz"
}

# Only the controllers that turn a Deployment into Pods and a Service into Endpoints and
# EndpointSlices, and the garbage collector that removes what a deleted owner leaves behind.
# The serving port answers /healthz only, which is all `up` asks of it.
start_controller_manager() {
	local port
	port=$(free_port)
	start kube-controller-manager \
		--kubeconfig="$KUBECONFIG_FILE" \
		--controllers=deployment-controller,replicaset-controller,endpoints-controller,endpointslice-controller,garbage-collector-controller \
		--leader-elect=false \
		--bind-address=127.0.0.1 --secure-port="$port" --cert-dir="$CP_DIR/kube-controller-manager-certs" \
		--profiling=false
	wait_for kube-controller-manager 60 curl -sfk --max-time 2 "https://127.0.0.1:$port/healthz"
}

write_kubeconfig() {
	local tmp=$KUBECONFIG_FILE.tmp
	cat >"$tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: ksit-test
  cluster:
    server: $SERVER_URL
    certificate-authority-data: $(base64 -w0 "$PKI_DIR/ca.crt")
users:
- name: ksit-test-admin
  user:
    client-certificate-data: $(base64 -w0 "$PKI_DIR/admin.crt")
    client-key-data: $(base64 -w0 "$PKI_DIR/admin.key")
contexts:
- name: ksit-test
  context:
    cluster: ksit-test
    user: ksit-test-admin
current-context: ksit-test
EOF
	chmod 0600 "$tmp"
	mv "$tmp" "$KUBECONFIG_FILE"
}

write_env() {
	cat >"$ENV_FILE" <<EOF
# Written by scripts/controlplane.sh up; source it to talk to the test control plane.
export KUBECONFIG='$KUBECONFIG_FILE'
export KSIT_TEST_KUBECONFIG='$KUBECONFIG_FILE'
export KSIT_CONTROLPLANE_SERVER='$SERVER_URL'
export KSIT_CONTROLPLANE_BIN='$BIN_DIR'
export KSIT_CONTROLPLANE_ETCD='$ETCD_URL'
EOF
}

# One line per CRD: its name, "=", and the status of its Established condition (empty while
# it has none). Not `kubectl wait --for condition=Established`: that fails outright, with
# ".status.conditions accessor error: <nil>", on a CRD the API server has not given
# conditions yet, which is what a CRD just applied looks like.
crd_conditions() {
	"$BIN_DIR/kubectl" --kubeconfig "$KUBECONFIG_FILE" get crd -o go-template='{{range .items}}{{.metadata.name}}={{with .status}}{{range .conditions}}{{if eq .type "Established"}}{{.status}}{{end}}{{end}}{{end}}{{"\n"}}{{end}}'
}

# wait_established SECONDS: until every CRD is Established, or fail naming those that are not.
wait_established() {
	local deadline=$((SECONDS + $1)) lines pending
	while :; do
		if lines=$(crd_conditions 2>/dev/null); then
			pending=$(grep -v '=True$' <<<"$lines" || true)
			[[ -n $lines && -z $pending ]] && return 0
		else
			# Its error shows when the wait gives up.
			pending="(kubectl get crd failed)"
		fi
		if ((SECONDS >= deadline)); then
			crd_conditions >/dev/null || true
			die "CRDs not Established after $1s: $(paste -sd' ' <<<"$pending")"
		fi
		sleep 0.2
	done
}

install_crds() {
	local kubectl=("$BIN_DIR/kubectl" --kubeconfig "$KUBECONFIG_FILE")
	# Server-side apply: the prometheus-operator CRDs are close to the annotation size limit
	# that client-side apply needs.
	"${kubectl[@]}" apply --server-side --force-conflicts -f "$CP_DIR/crds/" >/dev/null
	"${kubectl[@]}" apply --server-side --force-conflicts -k "$ROOT/manifests/crds/" >/dev/null
	wait_established 60
	log "CRDs established: $(crd_conditions | sed 's/=True$//' | paste -sd' ')"
}

cmd_up() {
	local start=$SECONDS
	# Even when already up: a changed input (say the stand-in manager's source) must not
	# leave a stale binary in BIN_DIR for the tests. Cached, this takes well under a second.
	cmd_build
	if cmd_status 2>/dev/null; then
		log "already up"
		return 0
	fi
	# Whatever is left of an earlier, broken start goes first.
	cmd_down
	mkdir -p "$RUN_DIR"
	make_pki
	local attempt
	for attempt in 1 2 3; do
		# A port taken between free_port and bind makes a start fail; try fresh ports.
		if start_etcd && start_apiserver; then
			break
		fi
		log "start attempt $attempt failed; see $CP_DIR/*.log"
		cmd_down
		mkdir -p "$RUN_DIR"
		((attempt < 3)) || die "control plane did not start"
	done
	write_kubeconfig
	for attempt in 1 2 3; do
		start_controller_manager && break
		log "kube-controller-manager start attempt $attempt failed; see $CP_DIR/kube-controller-manager.log"
		stop_pid kube-controller-manager
		((attempt < 3)) || die "kube-controller-manager did not start"
	done
	write_env
	install_crds
	log "up in $((SECONDS - start))s: $SERVER_URL; env in $ENV_FILE"
}

# --- down -----------------------------------------------------------------------------------

stop_pid() {
	local name=$1 pid
	pid_alive "$name" || { rm -f "$RUN_DIR/$name.pid"; return 0; }
	pid=$(<"$RUN_DIR/$name.pid")
	kill -TERM "$pid" 2>/dev/null || true
	for _ in $(seq 50); do
		running "$pid" || break
		sleep 0.2
	done
	kill -KILL "$pid" 2>/dev/null || true
	rm -f "$RUN_DIR/$name.pid"
	log "stopped $name ($pid)"
}

cmd_down() {
	local f
	# Managers left by tests that did not get to clean up (e.g. a killed test binary),
	# then the controller-manager and the API server before the etcd it writes to.
	for f in "$RUN_DIR"/ksit-manager-*.pid; do
		[[ -e $f ]] && stop_pid "$(basename "$f" .pid)"
	done
	stop_pid kube-controller-manager
	stop_pid kube-apiserver
	stop_pid etcd
	rm -rf "$CP_DIR/etcd-data" "$ENV_FILE" "$KUBECONFIG_FILE"
}

case ${1:-} in
build) cmd_build ;;
build-bench) cmd_build_bench ;;
build-ui) cmd_build_ui ;;
build-node) cmd_build_node ;;
up) cmd_up ;;
down) cmd_down ;;
status) cmd_status ;;
*)
	echo "usage: $0 build|build-bench|build-ui|build-node|up|down|status" >&2
	exit 2
	;;
esac
