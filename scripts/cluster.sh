#!/bin/sh
# cluster.sh - a local PyazDB cluster on 127.0.0.1: mandi and N nodes.
#
#   scripts/cluster.sh start [N]   start mandi and N nodes (default 3) in the
#                                  background; node1 bootstraps, the others
#                                  join through mandi
#   scripts/cluster.sh run [N]     the same in the foreground: every line is
#                                  tagged with its process; Ctrl-C stops all
#   scripts/cluster.sh stop        stop them all (SIGTERM, graceful)
#   scripts/cluster.sh status      what runs, and the cluster as node1 sees it
#
# Ports: mandi 7000; node i: HTTP 8079+i, gRPC 9089+i, Raft 11999+i (node1:
# 8080, 9090, 12000). State and logs under ./run/ (RUN_DIR to change).
set -eu
cd "$(dirname "$0")/.."
RUN=${RUN_DIR:-run}
BIN=src/pyazdb-server
MANDI=http://127.0.0.1:7000

node_args() { # i
    echo "--node-id node$1 --raft-data $RUN/node$1 \
        --raft-addr 127.0.0.1:$((11999 + $1)) \
        --http-addr 127.0.0.1:$((8079 + $1)) \
        --grpc-addr 127.0.0.1:$((9089 + $1)) --mandi-addr $MANDI"
}

wait_http() { # url: until it answers at all (any HTTP status)
    i=0
    until [ "$(curl -s -o /dev/null -w '%{http_code}' "$1" 2>/dev/null)" != 000 ]; do
        i=$((i + 1))
        if [ $i -gt 150 ]; then echo "cluster: $1 does not answer" >&2; return 1; fi
        sleep 0.1
    done
}

start() { # n foreground
    n=$1
    mkdir -p "$RUN"
    if [ "$2" = yes ]; then
        trap 'stop; exit 0' INT TERM
    fi
    launch() { # name args...
        name=$1; shift
        if [ "$fg" = yes ]; then
            "$BIN" "$@" 2>&1 &
        else
            "$BIN" "$@" >>"$RUN/$name.log" 2>&1 &
        fi
        echo $! >"$RUN/$name.pid"
    }
    fg=$2
    launch mandi --mandi --mandi-addr "$MANDI"
    wait_http "$MANDI/leader"
    # node1 bootstraps a one-node cluster the first time (pyazdb.conf says
    # raft-bootstrap yes); the others start empty and ask mandi to join.
    # shellcheck disable=SC2046
    launch node1 pyazdb.conf $(node_args 1)
    wait_http "http://127.0.0.1:8080/health"
    i=2
    while [ $i -le "$n" ]; do
        # shellcheck disable=SC2046
        launch "node$i" $(node_args $i) --raft-bootstrap no
        i=$((i + 1))
    done
    i=2
    while [ $i -le "$n" ]; do
        wait_http "http://127.0.0.1:$((8079 + i))/health"
        i=$((i + 1))
    done
    echo "cluster: mandi on 7000, $n nodes (HTTP 8080-$((8079 + n)), gRPC 9090-$((9089 + n)))" >&2
    if [ "$fg" = yes ]; then
        wait
    fi
}

stop() {
    for f in "$RUN"/*.pid; do
        [ -f "$f" ] || continue
        pid=$(cat "$f")
        kill "$pid" 2>/dev/null || true
    done
    for f in "$RUN"/*.pid; do
        [ -f "$f" ] || continue
        pid=$(cat "$f")
        i=0
        while kill -0 "$pid" 2>/dev/null && [ $i -lt 100 ]; do
            sleep 0.1; i=$((i + 1))
        done
        rm -f "$f"
    done
}

status() {
    for f in "$RUN"/*.pid; do
        [ -f "$f" ] || continue
        name=$(basename "$f" .pid)
        if kill -0 "$(cat "$f")" 2>/dev/null; then
            echo "$name: running (pid $(cat "$f"))"
        else
            echo "$name: not running"
        fi
    done
    curl -sf http://127.0.0.1:8080/cluster || echo "node1 does not answer"
}

cmd=${1:-}
case "$cmd" in
start) make -s all; start "${2:-3}" no ;;
run) make -s all; start "${2:-3}" yes ;;
stop) stop ;;
status) status ;;
*) sed -n '2,13p' "$0" >&2; exit 2 ;;
esac
