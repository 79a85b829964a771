#!/usr/bin/env bash
# A dockerd for the Docker runtime tests (netns-tests/test_docker.py) and for trying
# `meshnet agent --runtime docker` by hand.
#
#   scripts/dockerd.sh start    start dockerd (idempotent) and import the test image
#   scripts/dockerd.sh stop     stop the dockerd this script started (idempotent)
#   scripts/dockerd.sh restart  stop + start (the agent must survive this)
#   scripts/dockerd.sh status   exit 0 if a dockerd answers on the socket
#   scripts/dockerd.sh owned    exit 0 if that dockerd was started by this script
#   scripts/dockerd.sh image    import the test image meshnet-test/busybox (idempotent)
#
# Needs the apt packages docker.io (dockerd, containerd, runc, docker-init) and
# busybox-static. The daemon serves the default socket /var/run/docker.sock, which is
# what the agent follows; everything else it keeps under $MESHNET_DOCKERD_DIR
# (default /run/meshnet-dockerd): data-root, exec-root (with its own containerd, unless a
# system containerd is running), pidfile, log, an empty daemon.json.
#
# If some other dockerd already answers on /var/run/docker.sock, `start` uses it as it is
# and `stop`/`restart` leave it alone (exit 3 for restart: the caller cannot restart it).
#
# Docker's own networking is off: --bridge=none --iptables=false --ip6tables=false
# --ip-forward=false, so the daemon changes nothing in the root namespace (no docker0, no
# DOCKER chains, no FORWARD DROP policy, no ip_forward sysctl). Containers are started
# with `--network none` and meshnet gives them their only interfaces.
set -euo pipefail

DIR=${MESHNET_DOCKERD_DIR:-/run/meshnet-dockerd}
SOCK=/var/run/docker.sock
IMAGE=meshnet-test/busybox
PIDFILE=$DIR/dockerd.pid

say() { echo "dockerd.sh: $*" >&2; }
docker_cli() { docker -H "unix://$SOCK" "$@"; }
answers() { docker_cli version --format '{{.Server.Version}}' >/dev/null 2>&1; }
our_pid() {
    local pid
    pid=$(cat "$PIDFILE" 2>/dev/null) || return 1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

image() {
    if docker_cli image inspect "$IMAGE" >/dev/null 2>&1; then
        return 0
    fi
    local bb root
    bb=$(command -v busybox) || { say "busybox not found (apt-get install busybox-static)"; exit 1; }
    if ! file -L "$bb" 2>/dev/null | grep -q "statically linked" && ldd "$bb" >/dev/null 2>&1; then
        say "$bb is not statically linked (apt-get install busybox-static)"; exit 1
    fi
    root=$(mktemp -d)
    mkdir -p "$root"/{bin,etc,tmp,proc,sys,dev,root}
    cp "$bb" "$root/bin/busybox"
    for applet in $("$bb" --list); do
        [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
    done
    echo 'root:x:0:0:root:/root:/bin/sh' > "$root/etc/passwd"
    echo 'root:x:0:' > "$root/etc/group"
    tar -C "$root" -c . | docker_cli import --change 'CMD ["sh"]' \
        --change 'ENV PATH=/bin' - "$IMAGE" >/dev/null || { rm -rf "$root"; exit 1; }
    rm -rf "$root"
    say "imported $IMAGE"
}

start() {
    if answers; then
        if our_pid >/dev/null; then
            say "already running (pid $(our_pid))"
        else
            say "a dockerd not started by this script answers on $SOCK; using it"
        fi
        image
        return 0
    fi
    command -v dockerd >/dev/null || { say "dockerd not installed (apt-get install docker.io)"; exit 1; }
    if [ -S "$SOCK" ] && ! our_pid >/dev/null; then
        say "removing the stale socket $SOCK"
        rm -f "$SOCK"
    fi
    mkdir -p "$DIR"
    [ -f "$DIR/daemon.json" ] || echo '{}' > "$DIR/daemon.json"
    setsid dockerd \
        --config-file "$DIR/daemon.json" \
        --data-root "$DIR/data" --exec-root "$DIR/exec" --pidfile "$PIDFILE" \
        --host "unix://$SOCK" \
        --bridge=none --iptables=false --ip6tables=false --ip-forward=false \
        --log-level=warn \
        </dev/null >>"$DIR/dockerd.log" 2>&1 &
    local i
    for i in $(seq 1 300); do
        if answers; then
            say "dockerd up (pid $(cat "$PIDFILE" 2>/dev/null), socket $SOCK, log $DIR/dockerd.log)"
            image
            return 0
        fi
        sleep 0.1
    done
    say "dockerd did not come up in 30 s; last log lines:"
    tail -n 5 "$DIR/dockerd.log" >&2 || true
    stop || true
    exit 1
}

stop() {
    local pid i
    if ! pid=$(our_pid); then
        rm -f "$PIDFILE"
        if answers; then
            say "not stopping the dockerd on $SOCK: this script did not start it"
        fi
        return 0
    fi
    kill -TERM "$pid"
    for i in $(seq 1 400); do  # dockerd gives running containers 15 s to stop
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "dockerd (pid $pid) ignored SIGTERM for 40 s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.5
    fi
    # after a SIGKILL: the supervised containerd and any mounts left under $DIR
    pkill_ours
    { grep -o " $DIR/[^ ]*" /proc/mounts || true; } | sort -r | while read -r m; do
        umount -l "$m" 2>/dev/null || true
    done
    rm -f "$PIDFILE"
    say "dockerd (pid $pid) stopped"
}

pkill_ours() {
    local cpid
    cpid=$(cat "$DIR/exec/containerd/containerd.pid" 2>/dev/null) || return 0
    if [ -n "$cpid" ] && kill -0 "$cpid" 2>/dev/null; then
        kill -TERM "$cpid" 2>/dev/null || true
    fi
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    restart)
        if answers && ! our_pid >/dev/null; then
            say "cannot restart a dockerd this script did not start"; exit 3
        fi
        stop; start ;;
    status) answers ;;
    owned) answers && our_pid >/dev/null ;;
    image) image ;;
    *) echo "usage: $0 start|stop|restart|status|owned|image" >&2; exit 2 ;;
esac
