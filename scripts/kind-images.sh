#!/usr/bin/env bash
# The images the kind cluster runs besides the node image and this project's own, none of which
# can be pulled here: each is one static binary (from scripts/controlplane.sh build and
# build-node; Prometheus from build-ui, with its web UI) in an image built FROM scratch with
# buildah (no engine needed), laid out as the upstream image it stands for (entrypoint, user,
# directories), under upstream's name, so that kubeadm's static pods, kubeadm's CoreDNS,
# prometheus-operator's bundle and the Prometheus it runs find them where they would after a
# pull. Written as docker-archive tarballs (what `kind load image-archive` and `ctr images
# import` read) into the cache, keyed by the binary and the recipe, so a second run costs a
# checksum.
#
#   scripts/kind-images.sh build      build what is missing; print each archive and whether it was cached
#   scripts/kind-images.sh list       NAME<TAB>ARCHIVE, one line per image
#   scripts/kind-images.sh etcd-tag   the etcd image's tag, for kubeadm's etcd.local.imageTag
#
# kube-proxy is not here: it runs iptables and nft, so scripts/kind-node.sh makes its image from
# the node's root filesystem.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${KSIT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ksit-exporter}
OUT=$CACHE/kind-images
BIN=$ROOT/target/controlplane/bin
# Bump when a recipe below changes, to miss the cache.
RECIPE=1

log() { printf '[kind-images] %s\n' "$*" >&2; }
die() {
	log "ERROR: $*"
	exit 1
}

pinned() { awk -v m="$2" '$1 == m && $2 ~ /^v/ { print $2; exit }' "$ROOT/$1/go.mod"; }
K8S=$(pinned tests/controlplane/kubernetes k8s.io/kubernetes)
ETCD=$(pinned tests/controlplane/etcd go.etcd.io/etcd/server/v3)
COREDNS=$(pinned tests/kind/coredns github.com/coredns/coredns)
OPERATOR=$(pinned tests/kind/prometheus-operator github.com/prometheus-operator/prometheus-operator)
PROMETHEUS=$(pinned tests/controlplane/prometheus github.com/prometheus/prometheus |
	sed -E 's/^v0\.3([0-9][0-9])\.([0-9]+)$/\1 \2/' | awk '{ printf "v3.%d.%s", $1, $2 }')
# kubeadm's etcd tags carry a build suffix (3.6.5-0); ours is the module's version, suffix -0.
ETCD_TAG=${ETCD#v}-0

PATH_ENV=PATH=/usr/local/bin:/usr/local/sbin:/usr/bin:/usr/sbin:/bin:/sbin

# The recipes: NAME|BINARY|PATH IN THE IMAGE|USER|WORKDIR|DIRECTORIES OWNED BY USER
recipes() {
	local k=registry.k8s.io
	cat <<EOF
$k/kube-apiserver:$K8S|kube-apiserver|/usr/local/bin/kube-apiserver|0||
$k/kube-controller-manager:$K8S|kube-controller-manager|/usr/local/bin/kube-controller-manager|0||
$k/kube-scheduler:$K8S|kube-scheduler|/usr/local/bin/kube-scheduler|0||
$k/etcd:$ETCD_TAG|etcd|/usr/local/bin/etcd|0||
$k/coredns/coredns:$COREDNS|coredns|/coredns|0||
$k/pause:3.10.1|pause|/pause|65535||
quay.io/prometheus-operator/prometheus-operator:$OPERATOR|operator|/bin/operator|65534||
quay.io/prometheus-operator/prometheus-config-reloader:$OPERATOR|prometheus-config-reloader|/bin/prometheus-config-reloader|65534||
quay.io/prometheus/prometheus:$PROMETHEUS|prometheus-ui|/bin/prometheus|65534|/prometheus|/prometheus /etc/prometheus
localhost/ksit-manager:demo|ksit-manager|/ksit|65532||
EOF
}

archive_of() {
	local name=$1 bin=$2 key
	[[ -e $BIN/$bin ]] || die "missing $BIN/$bin: scripts/controlplane.sh build-node"
	key=$({
		echo "$RECIPE"
		grep -F "$name|" <(recipes)
		sha256sum <"$(readlink -f "$BIN/$bin")"
	} | sha256sum | cut -c1-16)
	echo "$OUT/$(tr '/:' '__' <<<"$name")-$key.tar"
}

build_one() {
	local name=$1 bin=$2 dest=$3 user=$4 workdir=$5 dirs=$6 archive ctr
	archive=$(archive_of "$name" "$bin")
	if [[ -f $archive ]]; then
		log "$name: cached ($archive)"
		return
	fi
	local start=$SECONDS
	mkdir -p "$OUT"
	ctr=$(buildah from --quiet scratch)
	buildah copy --quiet --chmod 0755 "$ctr" "$(readlink -f "$BIN/$bin")" "$dest" >/dev/null
	local dir empty
	empty=$(mktemp -d)
	for dir in $dirs; do
		buildah copy --quiet --chown "$user:$user" "$ctr" "$empty" "$dir" >/dev/null
	done
	rmdir "$empty"
	buildah config --entrypoint "[\"$dest\"]" --user "$user" --env "$PATH_ENV" \
		${workdir:+--workingdir "$workdir"} --label "io.ksit.built-from=$bin" "$ctr"
	buildah commit --quiet --rm "$ctr" "$name" >/dev/null
	buildah push --quiet "$name" "docker-archive:$archive.tmp:$name" >/dev/null
	mv "$archive.tmp" "$archive"
	log "$name: built in $((SECONDS - start))s ($archive)"
}

cmd_build() {
	command -v buildah >/dev/null || die "needs buildah (Debian: apt-get install buildah)"
	local b
	for b in kube-apiserver etcd ksit-manager coredns operator pause; do
		[[ -e $BIN/$b ]] || {
			"$ROOT/scripts/controlplane.sh" build-node
			break
		}
	done
	# Prometheus with its web UI (the demo's graph and Targets pages): build-ui, with npm.
	[[ -e $BIN/prometheus-ui ]] || "$ROOT/scripts/controlplane.sh" build-ui
	local name bin dest user workdir dirs
	while IFS='|' read -r name bin dest user workdir dirs; do
		build_one "$name" "$bin" "$dest" "$user" "$workdir" "$dirs"
	done < <(recipes)
}

cmd_list() {
	local name bin rest
	while IFS='|' read -r name bin rest; do
		printf '%s\t%s\n' "$name" "$(archive_of "$name" "$bin")"
	done < <(recipes)
}

case ${1:-} in
build) cmd_build ;;
list) cmd_list ;;
etcd-tag) echo "$ETCD_TAG" ;;
*)
	echo "usage: $0 build|list|etcd-tag" >&2
	exit 2
	;;
esac
