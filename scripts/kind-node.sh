#!/usr/bin/env bash
# The kind node image, built here without a registry, the way `kind build node-image` assembles
# one (which cannot run offline: it fetches etcd, CoreDNS, pause, kindnetd and local-path images):
#
#   1. a Debian bookworm root filesystem from Debian's packages (debootstrap; bookworm's systemd
#      252 boots on cgroup v1, trixie's 257 refuses), the packages of kind's images/base/Dockerfile
#      that a single-node cluster uses;
#   2. kind's own images/base/files (from the sigs.k8s.io/kind module pinned in tests/kind/kind),
#      with the Dockerfile's steps: services enabled, containerd's base runtime spec;
#   3. the binaries scripts/controlplane.sh build-node makes: containerd, runc, crictl, the CNI
#      plugins, kubelet, kubeadm and kubectl (the control plane's Kubernetes release);
#   4. the images kubeadm runs, imported into the node's containerd (`ctr -n k8s.io images
#      import`, as kind does) so that nothing is pulled: kube-apiserver, kube-controller-manager,
#      kube-scheduler, etcd, CoreDNS and pause from scripts/kind-images.sh, kube-proxy made here
#      (it runs iptables/nft, so it is the node's root filesystem plus the binary);
#   5. committed as NODE_IMAGE.
# kindnetd is not served by any registry reached here: the node carries a static bridge CNI
# configuration instead, and clusters are created with disableDefaultCNI (scripts/demo.sh).
#
#   scripts/kind-node.sh build     build NODE_IMAGE unless the engine has it for these inputs
#   scripts/kind-node.sh image     print NODE_IMAGE
#
# Needs a running engine (scripts/engine.sh up; DOCKER_HOST from `scripts/engine.sh env`), root
# (debootstrap), and what build-node needs. Cached: the root filesystem under the cache directory,
# the images in the engine's data root (there too), each keyed by its inputs.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${KSIT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ksit-exporter}
WORK=$CACHE/kind-node
BIN=$ROOT/target/controlplane/bin
K8S_VERSION=$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ { print $2; exit }' "$ROOT/tests/controlplane/kubernetes/go.mod")
NODE_IMAGE=${KSIT_NODE_IMAGE:-localhost/ksit-kind-node:$K8S_VERSION}
# Bump when a step below changes, to miss the cache.
RECIPE=1
SUITE=bookworm
# kind's base image packages, less the storage ones (NFS, iSCSI, e2fsprogs, fuse-overlayfs) that a
# single-node demo without volumes never uses.
PACKAGES=systemd,systemd-sysv,dbus,conntrack,iptables,nftables,iproute2,ethtool,util-linux,mount,kmod,libseccomp2,pigz,bash,ca-certificates,curl,jq,procps
PAUSE_IMAGE=registry.k8s.io/pause:3.10.1

log() { printf '[kind-node] %s\n' "$*" >&2; }
die() {
	log "ERROR: $*"
	exit 1
}

# The Debian mirror this machine's apt already uses (the only one it may reach).
mirror() {
	local uri
	uri=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
	[[ -n $uri ]] || uri=$(awk '$1 == "deb" { print ($2 ~ /^\[/ ? $3 : $2); exit }' /etc/apt/sources.list 2>/dev/null || true)
	[[ -n $uri ]] || die "no Debian mirror in /etc/apt/sources.list(.d)"
	echo "$uri"
}

kind_module() {
	(cd "$ROOT/tests/kind/kind" && GOTOOLCHAIN=local go mod download -json sigs.k8s.io/kind) |
		sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p'
}

# rootfs: the bookworm tarball, cached by suite, packages and recipe.
rootfs() {
	local key tar tmp
	key=$(printf '%s\n' "$SUITE" "$PACKAGES" "$RECIPE" | sha256sum | cut -c1-16)
	tar=$WORK/rootfs-$SUITE-$key.tar
	if [[ -f $tar ]]; then
		log "root filesystem: cached ($tar)"
	else
		command -v debootstrap >/dev/null || {
			log "installing Debian's debootstrap"
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
		}
		local start=$SECONDS
		mkdir -p "$WORK"
		tmp=$(mktemp -d "$WORK/.rootfs.XXXXXX")
		log "root filesystem: debootstrap $SUITE ($(mirror)) ..."
		debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$tmp/root" "$(mirror)" >"$tmp/debootstrap.log" 2>&1 ||
			die "debootstrap failed; its log: $tmp/debootstrap.log"
		# apt's lists and caches are no use in the node (nothing is installed there later).
		rm -rf "$tmp/root/var/lib/apt/lists/"* "$tmp/root/var/cache/apt/"*
		tar -C "$tmp/root" --numeric-owner -cf "$tar.tmp" .
		mv "$tar.tmp" "$tar"
		rm -rf "$tmp"
		log "root filesystem: built in $((SECONDS - start))s"
	fi
	echo "$tar"
}

need_bin() {
	local b
	for b in "$@"; do
		[[ -x $BIN/$b ]] || die "missing $BIN/$b: scripts/controlplane.sh build-node"
	done
}

# assemble ROOTFS_TAR DIR: the node's files in DIR (steps 2 and 3).
assemble() {
	local tar=$1 dir=$2 kind files
	kind=$(kind_module)
	files=$kind/images/base/files
	[[ -d $files ]] || die "no images/base/files in the kind module ($kind)"
	mkdir -p "$dir"
	tar -C "$dir" --numeric-owner -xf "$tar"
	# Dockerfile: COPY files/..., scripts 0755, the rest 0644.
	install -d -m 0755 "$dir/kind/bin" "$dir/etc/containerd" "$dir/etc/systemd/system/kubelet.service.d" \
		"$dir/etc/kubernetes/manifests" "$dir/opt/cni/bin" "$dir/etc/cni/net.d" "$dir/LICENSES"
	install -m 0755 "$files"/usr/local/bin/* "$dir/usr/local/bin/"
	install -m 0644 "$files"/kind/README.txt "$dir/kind/"
	install -m 0755 "$files"/kind/bin/* "$dir/kind/bin/"
	install -m 0644 "$files"/LICENSES/* "$dir/LICENSES/"
	install -m 0644 "$files"/etc/crictl.yaml "$dir/etc/"
	install -m 0644 "$files"/etc/containerd/* "$dir/etc/containerd/"
	install -m 0644 "$files"/etc/default/* "$dir/etc/default/"
	install -m 0644 "$files"/etc/sysctl.d/* "$dir/etc/sysctl.d/"
	install -m 0644 "$files"/etc/systemd/system/*.service "$files"/etc/systemd/system/*.slice "$dir/etc/systemd/system/"
	install -m 0644 "$files"/etc/systemd/system/kubelet.service.d/* "$dir/etc/systemd/system/kubelet.service.d/"
	# Dockerfile: the units a container must not start, journald without kmsg.
	find "$dir/lib/systemd/system/sysinit.target.wants/" -name systemd-tmpfiles-setup.service -delete
	rm -f "$dir"/lib/systemd/system/multi-user.target.wants/* "$dir"/etc/systemd/system/*.wants/* \
		"$dir"/lib/systemd/system/local-fs.target.wants/* "$dir"/lib/systemd/system/sockets.target.wants/*udev* \
		"$dir"/lib/systemd/system/sockets.target.wants/*initctl* "$dir"/lib/systemd/system/basic.target.wants/*
	echo "ReadKMsg=no" >>"$dir/etc/systemd/journald.conf"
	ln -sfn /usr/lib/systemd/systemd "$dir/sbin/init"
	chroot "$dir" systemctl enable kubelet.service containerd.service undo-mount-hacks.service >/dev/null 2>&1 ||
		die "systemctl enable failed in the node's root filesystem"
	chroot "$dir" systemctl mask systemd-binfmt.service >/dev/null 2>&1
	# The binaries, where kind's Dockerfile and node-image builder put them.
	need_bin containerd ctr containerd-shim-runc-v2 runc crictl bridge loopback host-local portmap kubelet kubeadm kubectl
	install -m 0755 "$BIN"/{containerd,ctr,containerd-shim-runc-v2,crictl} "$dir/usr/local/bin/"
	install -m 0755 "$BIN/runc" "$dir/usr/local/sbin/runc"
	install -m 0755 "$BIN"/{bridge,loopback,host-local,portmap} "$dir/opt/cni/bin/"
	install -m 0755 "$BIN"/{kubelet,kubeadm,kubectl} "$dir/usr/bin/"
	# containerd's base runtime spec, as the Dockerfile makes it: product files mounted, no rlimits.
	"$BIN/ctr" oci spec |
		jq '.hooks.createContainer[.hooks.createContainer | length] |= . + {"path": "/kind/bin/mount-product-files.sh"}' |
		jq 'del(.process.rlimits)' >"$dir/etc/containerd/cri-base.json"
	# The sandbox image is the one imported below (kind's node-image builder reads it from here).
	sed -i "s|sandbox_image = .*|sandbox_image = \"$PAUSE_IMAGE\"|" "$dir/etc/containerd/config.toml"
	printf '%s' "$K8S_VERSION" >"$dir/kind/version"
	# Without CAP_SYS_RESOURCE no process may lower its oom_score_adj, and runc fails every pod
	# whose spec asks it to (static pods ask for -998). containerd's restrict_oom_score_adj (meant
	# for rootless nodes) clamps to what the process may set. Decided when the node boots, so one
	# image serves both kinds of machine.
	install -d -m 0755 "$dir/etc/systemd/system/containerd.service.d"
	cat >"$dir/usr/local/bin/ksit-containerd-config" <<'SCRIPT'
#!/bin/sh
# CAP_SYS_RESOURCE is bit 24 of the bounding set.
bnd=$(awk '/^CapBnd:/ { print $2 }' /proc/self/status)
if [ $((0x$bnd >> 24 & 1)) -eq 0 ]; then
	sed -i 's/restrict_oom_score_adj = false/restrict_oom_score_adj = true/' /etc/containerd/config.toml
fi
SCRIPT
	chmod 0755 "$dir/usr/local/bin/ksit-containerd-config"
	printf '[Service]\nExecStartPre=/usr/local/bin/ksit-containerd-config\n' >"$dir/etc/systemd/system/containerd.service.d/10-ksit.conf"
	# In place of kindnetd: a bridge on the node, pods from the cluster's podSubnet (10.244.0.0/16
	# in scripts/demo.sh's cluster), masquerade for traffic leaving the pod range.
	cat >"$dir/etc/cni/net.d/10-ksit-bridge.conflist" <<'EOF'
{
  "cniVersion": "1.0.0",
  "name": "ksit-bridge",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{ "subnet": "10.244.0.0/24" }]],
        "routes": [{ "dst": "0.0.0.0/0" }]
      }
    },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
EOF
}

# kube-proxy runs iptables or nft, so its image is the node's root filesystem with the binary.
kube_proxy_archive() {
	local tar=$1 out=$2 dir=$3
	need_bin kube-proxy
	mkdir -p "$dir"
	tar -C "$dir" --numeric-owner -xf "$tar"
	install -m 0755 "$BIN/kube-proxy" "$dir/usr/local/bin/kube-proxy"
	local image=registry.k8s.io/kube-proxy:$K8S_VERSION
	tar -C "$dir" --numeric-owner -c . | docker import - "$image" >/dev/null
	docker save -o "$out" "$image"
}

cmd_build() {
	docker info >/dev/null 2>&1 || die "no engine answers (scripts/engine.sh up; eval \"\$(scripts/engine.sh env)\")"
	[[ -x $BIN/kubelet && -x $BIN/crictl ]] || "$ROOT/scripts/controlplane.sh" build-node
	"$ROOT/scripts/kind-images.sh" build >&2
	local tar archives=() name archive
	tar=$(rootfs)
	while IFS=$'\t' read -r name archive; do
		case $name in
		registry.k8s.io/*) archives+=("$archive") ;;
		esac
	done < <("$ROOT/scripts/kind-images.sh" list)
	((${#archives[@]} >= 6)) || die "scripts/kind-images.sh list gave ${#archives[@]} control-plane images, expected 6"
	local key
	key=$({
		echo "$RECIPE $K8S_VERSION $PAUSE_IMAGE"
		sha256sum "$tar" "${archives[@]}" "$0" | cut -d' ' -f1
		sha256sum "$BIN"/{containerd,ctr,containerd-shim-runc-v2,runc,crictl,bridge,loopback,host-local,portmap,kubelet,kubeadm,kubectl,kube-proxy} | cut -d' ' -f1
		find "$(kind_module)/images/base/files" -type f -print0 | sort -z | xargs -0 sha256sum | cut -d' ' -f1
	} | sha256sum | cut -c1-16)
	if [[ $(docker image inspect -f '{{index .Config.Labels "io.ksit.node-key"}}' "$NODE_IMAGE" 2>/dev/null) == "$key" ]]; then
		log "$NODE_IMAGE: cached (key $key)"
		return
	fi
	local start=$SECONDS tmp
	tmp=$(mktemp -d "$WORK/.node.XXXXXX")
	# shellcheck disable=SC2064 # the path is fixed now
	trap "rm -rf '$tmp'" EXIT
	assemble "$tar" "$tmp/root"
	kube_proxy_archive "$tar" "$tmp/kube-proxy.tar" "$tmp/kube-proxy"
	archives+=("$tmp/kube-proxy.tar")
	log "assembled in $((SECONDS - start))s; importing into the engine"
	local base=localhost/ksit-kind-node-base:$key
	tar -C "$tmp/root" --numeric-owner -c . | docker import --change 'ENV container=docker' - "$base" >/dev/null
	rm -rf "$tmp/root" "$tmp/kube-proxy"
	# Step 4, as kind's node-image builder does it: containerd in a container of the image, the
	# archives imported (pinned, not unpacked), the container committed.
	local id
	id=$(docker run -d --privileged --entrypoint sleep "$base" infinity)
	# shellcheck disable=SC2064
	trap "docker rm -f -v '$id' >/dev/null 2>&1; rm -rf '$tmp'" EXIT
	docker exec "$id" bash -c 'nohup containerd >/var/log/containerd-build.log 2>&1 &'
	docker exec "$id" bash -c 'for i in $(seq 30); do [[ -S /run/containerd/containerd.sock ]] && ctr version >/dev/null 2>&1 && exit 0; sleep 1; done; cat /var/log/containerd-build.log; exit 1' ||
		die "containerd did not start in the build container"
	for archive in "${archives[@]}"; do
		docker exec -i "$id" ctr --namespace=k8s.io images import --label=io.cri-containerd.pinned=pinned \
			--all-platforms --no-unpack --digests - <"$archive" >/dev/null ||
			die "ctr images import failed for $archive"
	done
	log "images in the node: $(docker exec "$id" ctr --namespace=k8s.io images list -q | grep -v '^sha256:' | tr '\n' ' ')"
	docker exec "$id" pkill containerd
	sleep 2
	docker commit "$id" "$base-imported" >/dev/null
	# import and commit take no STOPSIGNAL: a build step adds it (systemd stops on SIGRTMIN+3).
	printf 'FROM %s\nSTOPSIGNAL SIGRTMIN+3\nLABEL io.ksit.node-key=%s\nENTRYPOINT [ "/usr/local/bin/entrypoint", "/sbin/init" ]\n' \
		"$base-imported" "$key" | docker build -q -t "$NODE_IMAGE" - >/dev/null
	docker rm -f -v "$id" >/dev/null
	docker rmi -f "$base" "$base-imported" >/dev/null 2>&1 || true
	log "$NODE_IMAGE: built in $((SECONDS - start))s ($(docker image inspect -f '{{.Size}}' "$NODE_IMAGE") bytes)"
}

case ${1:-} in
build) cmd_build ;;
image) echo "$NODE_IMAGE" ;;
*)
	echo "usage: $0 build|image" >&2
	exit 2
	;;
esac
