#!/usr/bin/env bash
# The container images: a static ksit-exporter in images built FROM scratch (docker/Dockerfile).
# Two images from one crate: the sidecar's (`serve` and `check-config` only, built without the
# admission feature and with abort on panic: 5.8 MiB idle against 7.3 for one binary with every
# command) and the webhook's (every command: `webhook`, `inject`, and `serve` too).
#
#   scripts/image.sh build        static binaries, then both images, with Docker where a Docker
#                                 engine answers, else Podman, else buildah (IMAGE_BUILDER overrides)
#   scripts/image.sh check        run the binaries from the images with buildah (chroot isolation,
#                                 no engine needed): --version, the sidecar serving /metrics on
#                                 loopback as uid 65532, the webhook image's commands
#   scripts/image.sh save FILE [WEBHOOK_FILE]
#                                 write the sidecar image (and the webhook image) as docker-archive
#                                 tarballs (for `kind load`)
#   scripts/image.sh size         print both images' sizes (uncompressed)
#
# IMAGE (default ghcr.io/kubestellar/ksit-exporter:<Cargo.toml version>) names the sidecar image,
# WEBHOOK_IMAGE (default ghcr.io/kubestellar/ksit-exporter-webhook:<version>) the webhook's.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
IMAGE=${IMAGE:-ghcr.io/kubestellar/ksit-exporter:$VERSION}
WEBHOOK_IMAGE=${WEBHOOK_IMAGE:-ghcr.io/kubestellar/ksit-exporter-webhook:$VERSION}
# The image profiles (Cargo.toml): size-optimised, fat LTO; ~5 min each for a cold build on 2 cores.
PROFILE=${CARGO_PROFILE:-image}
WEBHOOK_PROFILE=${CARGO_WEBHOOK_PROFILE:-image-webhook}

log() { printf '[image] %s\n' "$*" >&2; }
die() {
	log "ERROR: $*"
	exit 1
}

# The builder: docker only where its engine answers (the CLI alone is not enough), podman,
# else buildah, which needs no daemon.
builder() {
	if [[ -n ${IMAGE_BUILDER:-} ]]; then
		echo "$IMAGE_BUILDER"
	elif command -v docker >/dev/null && docker info >/dev/null 2>&1; then
		echo docker
	elif command -v podman >/dev/null; then
		echo podman
	elif command -v buildah >/dev/null; then
		echo buildah
	else
		die "no image builder: install Docker (with a running engine), Podman or buildah (Debian: apt-get install buildah)"
	fi
}

# Prints the path of a statically linked binary built with profile $1 and cargo's arguments $2...
# musl is the first choice; where its Rust target or musl-gcc (ring compiles C) is missing, glibc
# with a static C runtime.
build_binary() {
	local profile=$1 target
	shift
	if rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl ||
		rustup target add x86_64-unknown-linux-musl >&2; then
		command -v musl-gcc >/dev/null ||
			die "musl-gcc not found (ring compiles C for musl): apt-get install musl-tools"
		target=x86_64-unknown-linux-musl
		log "building the $profile profile for $target $*"
		cargo build --locked --profile "$profile" --target "$target" "$@" >&2
	else
		target=x86_64-unknown-linux-gnu
		log "musl target unavailable; building for $target with a static C runtime"
		RUSTFLAGS="-C target-feature=+crt-static" cargo build --locked --profile "$profile" --target "$target" "$@" >&2
	fi
	echo "$ROOT/target/$target/$profile/ksit-exporter"
}

# build_image IMAGE BINARY TITLE: the image from docker/Dockerfile with BINARY as /ksit-exporter.
build_image() {
	local image=$1 bin=$2 title=$3 tool revision created context
	context=$ROOT/target/image/context-${title##* }
	rm -rf "$context"
	mkdir -p "$context"
	install -m 0555 "$bin" "$context/ksit-exporter"
	revision=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
	# The commit's time, not the clock's, so rebuilding one commit gives the same labels.
	created=$(git log -1 --format=%cI 2>/dev/null || echo 1970-01-01T00:00:00Z)
	tool=$(builder)
	log "building $image with $tool"
	local args=(-f docker/Dockerfile -t "$image" --build-arg "TITLE=$title"
		--build-arg "VERSION=$VERSION" --build-arg "REVISION=$revision" --build-arg "CREATED=$created")
	case $tool in
	docker | podman) "$tool" build "${args[@]}" "$context" ;;
	buildah) buildah build --isolation chroot "${args[@]}" "$context" ;;
	*) die "IMAGE_BUILDER=$tool: expected docker, podman or buildah" ;;
	esac
	log "built $image: $(image_size "$image") (binary $(stat -c %s "$context/ksit-exporter") bytes, $(gzip -9c "$context/ksit-exporter" | wc -c) gzipped)"
}

cmd_build() {
	build_image "$IMAGE" "$(build_binary "$PROFILE" --no-default-features)" "ksit-exporter sidecar"
	build_image "$WEBHOOK_IMAGE" "$(build_binary "$WEBHOOK_PROFILE")" "ksit-exporter webhook"
}

image_size() {
	case $(builder) in
	docker | podman) echo "$("$(builder)" image inspect --format '{{.Size}}' "$1") bytes" ;;
	buildah) buildah images --noheading --format '{{.Size}}' "$1" ;;
	esac
}

cmd_size() {
	echo "$IMAGE $(image_size "$IMAGE")"
	echo "$WEBHOOK_IMAGE $(image_size "$WEBHOOK_IMAGE")"
}

save_image() {
	local image=$1 file=$2
	mkdir -p "$(dirname "$file")"
	rm -f "$file"
	case $(builder) in
	docker) docker save -o "$file" "$image" ;;
	podman) podman save --format docker-archive -o "$file" "$image" ;;
	buildah) buildah push "$image" "docker-archive:$file:$image" ;;
	esac
	log "saved $image to $file"
}

cmd_save() {
	save_image "$IMAGE" "${1:?usage: $0 save FILE [WEBHOOK_FILE]}"
	[[ -z ${2:-} ]] || save_image "$WEBHOOK_IMAGE" "$2"
}

# Process ids below $1, children first.
descendants() {
	local child
	for child in $(ps -o pid= --ppid "$1"); do
		descendants "$child"
		echo "$child"
	done
}

# Set by cmd_check, read by stop_check when the script exits.
ctr="" pid=""

# Removes the working container and what the check started (the exporter under buildah run).
stop_check() {
	local p
	if [[ -n $pid ]]; then
		for p in $(descendants "$pid") "$pid"; do kill -TERM "$p" 2>/dev/null || true; done
		wait "$pid" 2>/dev/null || true
	fi
	[[ -z $ctr ]] || buildah rm "$ctr" >/dev/null 2>&1 || true
}

cmd_check() {
	command -v buildah >/dev/null || die "buildah not found: apt-get install buildah"
	local version port exporter="" body uid p
	trap stop_check EXIT
	ctr=$(buildah from --pull-never "$IMAGE")

	version=$(buildah run --isolation chroot "$ctr" -- /ksit-exporter --version)
	local expected
	expected="ksit-exporter $VERSION ($(git rev-parse --short HEAD 2>/dev/null || echo unknown))"
	[[ $version == "$expected" ]] || die "--version printed '$version', expected '$expected'"
	log "--version in the image: $version"

	port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
	# chroot isolation keeps the host's network, so the exporter's loopback is this machine's.
	buildah run --isolation chroot --env "KSIT_LISTEN_ADDR=127.0.0.1:$port" --env KSIT_KUBERNETES=false \
		"$ctr" -- /ksit-exporter >"$ROOT/target/image/check.log" 2>&1 &
	pid=$!
	for _ in $(seq 100); do
		body=$(curl -sf --max-time 2 "http://127.0.0.1:$port/metrics" 2>/dev/null) && break
		kill -0 "$pid" 2>/dev/null || die "the exporter in the image exited: $(cat "$ROOT/target/image/check.log")"
		sleep 0.1
	done
	[[ -n ${body:-} ]] || die "no /metrics from the image on 127.0.0.1:$port; log: $(cat "$ROOT/target/image/check.log")"
	grep -q "^ksit_exporter_build_info{.*version=\"$VERSION\".*} 1$" <<<"$body" ||
		die "/metrics lacks ksit_exporter_build_info for $VERSION"
	# The listening process is the exporter: it must run as the image's user, not root.
	for p in $(descendants "$pid"); do
		[[ $(readlink "/proc/$p/exe" 2>/dev/null) == */ksit-exporter ]] && exporter=$p
	done
	[[ -n $exporter ]] || die "cannot find the exporter process under buildah run ($pid)"
	uid=$(awk '/^Uid:/ { print $2 }' "/proc/$exporter/status")
	[[ $uid == 65532 ]] || die "the exporter runs as uid $uid, expected 65532"
	log "serving /metrics on 127.0.0.1:$port from the image as uid $uid"
	if buildah run --isolation chroot "$ctr" -- /ksit-exporter webhook --help >/dev/null 2>&1; then
		die "the sidecar image's binary has a webhook command: it was built with the admission feature"
	fi
	check_webhook_image "$expected"
}

# The webhook image: its version, and the commands the sidecar's binary lacks.
check_webhook_image() {
	local expected=$1 version wctr
	wctr=$(buildah from --pull-never "$WEBHOOK_IMAGE")
	version=$(buildah run --isolation chroot "$wctr" -- /ksit-exporter --version)
	[[ $version == "$expected" ]] || { buildah rm "$wctr" >/dev/null; die "$WEBHOOK_IMAGE: --version printed '$version', expected '$expected'"; }
	local command
	for command in webhook inject; do
		buildah run --isolation chroot "$wctr" -- /ksit-exporter "$command" --help >/dev/null ||
			{ buildah rm "$wctr" >/dev/null; die "$WEBHOOK_IMAGE: $command --help failed"; }
	done
	buildah rm "$wctr" >/dev/null
	log "$WEBHOOK_IMAGE: $version, with the webhook and inject commands"
}

case ${1:-} in
build) cmd_build ;;
check) cmd_check ;;
save) cmd_save "${2:-}" "${3:-}" ;;
size) cmd_size ;;
*)
	echo "usage: $0 build|check|save FILE [WEBHOOK_FILE]|size" >&2
	exit 2
	;;
esac
