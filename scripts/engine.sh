#!/usr/bin/env bash
# A Docker engine this project starts and stops itself, for the kind demo and the kind suite.
#
#   scripts/engine.sh up       use the engine that answers, or start dockerd (installing Debian's
#                              docker.io where it is missing) with its own data root, socket, pid
#                              file and log under the cache directory
#   scripts/engine.sh down     stop the dockerd that `up` started, by its pid (an engine it found
#                              running is left alone)
#   scripts/engine.sh status   exit 0 if the engine answers
#   scripts/engine.sh env      print the `export DOCKER_HOST=...` line for the engine `up` chose
#
# The engine started here touches nothing of the host's network: no iptables rules (--iptables=false,
# so the FORWARD policy stays as it was and the network-namespace suites are unaffected), no
# default bridge (kind makes its own network), and published ports on 127.0.0.1 only (kind's
# default for the API server). On a machine whose capability bounding set lacks capabilities that
# a privileged container asks for (kind's nodes are privileged), runc runs behind
# scripts/oci-runtime-clamp, which asks only for what the machine can grant.
#
# KSIT_CACHE_DIR (default ~/.cache/ksit-exporter) holds the data root: images built or loaded
# once stay there between runs.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${KSIT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ksit-exporter}
DIR=$CACHE/engine
SOCKET=$DIR/docker.sock
PID_FILE=$DIR/dockerd.pid
LOG_FILE=$DIR/dockerd.log

log() { printf '[engine] %s\n' "$*" >&2; }
die() {
	log "ERROR: $*"
	exit 1
}

answers() { DOCKER_HOST=$1 docker info >/dev/null 2>&1; }

# The engine to use: ours if it runs, else one the user already has, else none.
chosen() {
	if [[ -S $SOCKET ]] && answers "unix://$SOCKET"; then
		echo "unix://$SOCKET"
	elif command -v docker >/dev/null && answers "${DOCKER_HOST:-unix:///var/run/docker.sock}"; then
		echo "${DOCKER_HOST:-unix:///var/run/docker.sock}"
	fi
}

our_pid() {
	local pid
	[[ -f $PID_FILE ]] || return 1
	pid=$(<"$PID_FILE")
	[[ -n $pid && -r /proc/$pid/cmdline ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "--pidfile $PID_FILE" &&
		echo "$pid"
}

install_engine() {
	command -v dockerd >/dev/null && command -v iptables >/dev/null && return
	[[ $(id -u) == 0 ]] || die "dockerd is not installed; as root: apt-get install docker.io"
	log "installing Debian's docker.io"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io iptables >/dev/null
}

# Capabilities a privileged container asks for that this machine cannot grant; empty on most.
missing_caps() {
	local bnd
	bnd=$(awk '/^CapBnd:/ { print $2 }' /proc/self/status)
	# 41 capabilities (CAP_CHOWN .. CAP_CHECKPOINT_RESTORE) is what Docker grants a privileged container.
	python3 -c "import sys; m=int(sys.argv[1],16); print(' '.join(str(i) for i in range(41) if not m>>i&1))" "$bnd"
}

cmd_up() {
	local engine
	engine=$(chosen)
	if [[ -n $engine ]]; then
		log "engine answers at $engine"
		return
	fi
	install_engine
	[[ $(id -u) == 0 ]] || die "starting dockerd needs root (or start your own engine and set DOCKER_HOST)"
	mkdir -p "$DIR/data" "$DIR/exec" /lib/modules # kind mounts /lib/modules read-only into its nodes
	local runtime=() missing
	missing=$(missing_caps)
	if [[ -n $missing ]]; then
		log "this machine's capability bounding set lacks capabilities numbered $missing: runc runs behind scripts/oci-runtime-clamp"
		runtime=(--add-runtime "ksit-clamp=$ROOT/scripts/oci-runtime-clamp" --default-runtime ksit-clamp)
	fi
	local cgroup_driver=cgroupfs
	[[ -d /run/systemd/system ]] && cgroup_driver=systemd
	log "starting dockerd (data root $DIR/data, log $LOG_FILE)"
	# setsid: the daemon outlives this script and the make that ran it; `down` stops it by pid.
	setsid dockerd --host "unix://$SOCKET" --pidfile "$PID_FILE" --data-root "$DIR/data" \
		--exec-root "$DIR/exec" --exec-opt "native.cgroupdriver=$cgroup_driver" \
		--storage-driver overlay2 --iptables=false --ip6tables=false --bridge=none \
		"${runtime[@]}" >"$LOG_FILE" 2>&1 </dev/null &
	local deadline=$((SECONDS + 60))
	until answers "unix://$SOCKET"; do
		kill -0 $! 2>/dev/null || die "dockerd exited; its log: $LOG_FILE ($(tail -n 3 "$LOG_FILE" | tr '\n' ' '))"
		((SECONDS < deadline)) || die "dockerd did not answer within 60 s; its log: $LOG_FILE"
		sleep 1
	done
	log "dockerd $(DOCKER_HOST=unix://$SOCKET docker version --format '{{.Server.Version}}') up (pid $(<"$PID_FILE")); export DOCKER_HOST=unix://$SOCKET"
}

cmd_down() {
	local pid
	if ! pid=$(our_pid); then
		log "no dockerd started by this script is running"
		return
	fi
	kill -TERM "$pid"
	local deadline=$((SECONDS + 30))
	while kill -0 "$pid" 2>/dev/null; do
		if ((SECONDS >= deadline)); then
			log "dockerd ($pid) still running after 30 s: SIGKILL"
			kill -KILL "$pid" 2>/dev/null || true
			break
		fi
		sleep 1
	done
	rm -f "$PID_FILE"
	log "stopped dockerd ($pid)"
}

case ${1:-} in
up) cmd_up ;;
down) cmd_down ;;
status) [[ -n $(chosen) ]] ;;
env)
	engine=$(chosen)
	[[ -n $engine ]] || die "no engine answers: scripts/engine.sh up"
	echo "export DOCKER_HOST=$engine"
	;;
*)
	echo "usage: $0 up|down|status|env" >&2
	exit 2
	;;
esac
