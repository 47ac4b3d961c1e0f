#!/bin/sh
# cluster.sh - a local PyazDB cluster on 127.0.0.1: mandi and N nodes.
#
#   scripts/cluster.sh start [N]   start mandi and N nodes (default 3) in the
#                                  background; node1 bootstraps, the others
#                                  join through mandi. Returns once every
#                                  node answers and has joined, printing
#                                  "cluster: ready ..."
#   scripts/cluster.sh run [N]     the same in the foreground (make run):
#                                  the processes log to the terminal, each
#                                  line tagged with its name; a process that
#                                  dies is reported and the rest go on;
#                                  Ctrl-C stops them all
#   scripts/cluster.sh restart I   stop node I if it runs, start it again
#                                  (same ports, same data) in the background
#   scripts/cluster.sh stop        stop everything start, run and restart
#                                  started (SIGTERM, graceful)
#   scripts/cluster.sh status      what runs, and the cluster's members
#
# Ports: mandi 7000; node i: HTTP 8079+i, gRPC 9089+i, Raft 11999+i (node1:
# 8080, 9090, 12000). State, logs (background) and PID files under ./run/.
# Environment, to run several clusters side by side: RUN_DIR (./run),
# MANDI_PORT (7000), HTTP_PORT, GRPC_PORT, RAFT_PORT (node1's ports: 8080,
# 9090, 12000), WAIT_SECONDS (how long start waits, 30), CLUSTER_BUILD (yes:
# run `make all` first; no: use the binary as it is).
set -eu
cd "$(dirname "$0")/.."
RUN=${RUN_DIR:-run}
BIN=src/pyazdb-server
MANDI_PORT=${MANDI_PORT:-7000}
HTTP_PORT=${HTTP_PORT:-8080}
GRPC_PORT=${GRPC_PORT:-9090}
RAFT_PORT=${RAFT_PORT:-12000}
WAIT_SECONDS=${WAIT_SECONDS:-30}
MANDI=http://127.0.0.1:$MANDI_PORT

say() { echo "cluster: $*" >&2; }

http_port() { echo $((HTTP_PORT + $1 - 1)); }

node_args() { # i
    echo "--node-id node$1 --raft-data $RUN/node$1 \
        --raft-addr 127.0.0.1:$((RAFT_PORT + $1 - 1)) \
        --http-addr 127.0.0.1:$((HTTP_PORT + $1 - 1)) \
        --grpc-addr 127.0.0.1:$((GRPC_PORT + $1 - 1)) --mandi-addr $MANDI"
}

# The PID in $RUN/name.pid if that process runs and is a pyazdb-server
# (not a PID reused since by something else); nothing otherwise.
running_pid() { # name
    f=$RUN/$1.pid
    [ -f "$f" ] || return 0
    p=$(cat "$f" 2>/dev/null || true)
    case $p in '' | *[!0-9]*) return 0 ;; esac
    if kill -0 "$p" 2>/dev/null &&
        tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -q pyazdb-server; then
        echo "$p"
    fi
}

# Until url answers at all (any HTTP status) and pid still runs; gives up
# after WAIT_SECONDS.
wait_http() { # url pid name
    tries=0
    until [ "$(curl -s -o /dev/null -w '%{http_code}' "$1" 2>/dev/null)" != 000 ]; do
        if ! kill -0 "$2" 2>/dev/null; then
            say "$3 exited while starting (see its log)"
            return 1
        fi
        tries=$((tries + 1))
        if [ $tries -gt $((WAIT_SECONDS * 10)) ]; then
            say "$3 does not answer on $1 after $WAIT_SECONDS s"
            return 1
        fi
        sleep 0.1
    done
}

# Until node1's view of the cluster lists n voters, or WAIT_SECONDS pass.
wait_members() { # n
    tries=0
    while :; do
        v=$(curl -s "http://127.0.0.1:$HTTP_PORT/cluster" 2>/dev/null |
            grep -o '"voter": *true' | wc -l)
        [ "$v" -ge "$1" ] && return 0
        tries=$((tries + 1))
        if [ $tries -gt $((WAIT_SECONDS * 5)) ]; then
            say "only $v of $1 nodes are voters after $WAIT_SECONDS s" \
                "(scripts/cluster.sh status)"
            return 1
        fi
        sleep 0.2
    done
}

# Start one process in the background; its PID goes to $RUN/name.pid and
# $pid. In its own session (setsid), so that a Ctrl-C on the terminal
# reaches only this script, which stops everything once, gracefully.
launch() { # name foreground args...
    name=$1 fg=$2
    shift 2
    if [ "$fg" = yes ]; then
        setsid "$BIN" "$@" 2>&1 &
    else
        setsid "$BIN" "$@" >>"$RUN/$name.log" 2>&1 </dev/null &
    fi
    pid=$!
    echo $pid >"$RUN/$name.pid"
}

start_node() { # i foreground
    if [ "$1" = 1 ]; then
        # node1 bootstraps a one-node cluster the first time (pyazdb.conf
        # says raft-bootstrap yes); the others start empty and ask mandi to
        # join.
        # shellcheck disable=SC2046
        launch node1 "$2" pyazdb.conf $(node_args 1)
    else
        # shellcheck disable=SC2046
        launch "node$1" "$2" $(node_args "$1") --raft-bootstrap no
    fi
}

start() { # n foreground
    n=$1 fg=$2
    case $n in '' | *[!0-9]* | 0) say "N must be a number from 1"; exit 2 ;; esac
    mkdir -p "$RUN"
    for f in "$RUN"/*.pid; do
        [ -f "$f" ] || continue
        if [ -n "$(running_pid "$(basename "$f" .pid)")" ]; then
            say "$(basename "$f" .pid) already runs (scripts/cluster.sh stop)"
            exit 1
        fi
        rm -f "$f"
    done
    trap 'say stopping; stop; exit 0' INT TERM
    launch mandi "$fg" --mandi --mandi-addr "$MANDI"
    wait_http "$MANDI/leader" "$pid" mandi || fail
    i=1
    while [ $i -le "$n" ]; do
        start_node $i "$fg"
        # node1 first: the others join the cluster it bootstraps
        if [ $i = 1 ]; then
            wait_http "http://127.0.0.1:$(http_port 1)/health" "$pid" node1 ||
                fail
        fi
        i=$((i + 1))
    done
    i=2
    while [ $i -le "$n" ]; do
        # The PID launch wrote, not running_pid: a node launched a moment
        # ago may not have become pyazdb-server yet (between fork and
        # exec its command line is this script's), which running_pid
        # would take for a process that is gone.
        wait_http "http://127.0.0.1:$(http_port $i)/health" \
            "$(cat "$RUN/node$i.pid")" "node$i" || fail
        i=$((i + 1))
    done
    wait_members "$n" || true
    say "ready: mandi on $MANDI_PORT, $n node(s): HTTP $HTTP_PORT-$((HTTP_PORT + n - 1))," \
        "gRPC $GRPC_PORT-$((GRPC_PORT + n - 1)), Raft $RAFT_PORT-$((RAFT_PORT + n - 1));" \
        "state in $RUN/"
    if [ "$fg" = yes ]; then
        say "Ctrl-C stops them all; scripts/cluster.sh restart I restarts node I"
        watch
    fi
}

# A start that failed: stop what it started.
fail() {
    say "start failed; stopping what was started"
    stop
    exit 1
}

# The foreground: report processes that exit, until a signal stops all.
watch() {
    gone=""
    while :; do
        for f in "$RUN"/*.pid; do
            [ -f "$f" ] || continue
            name=$(basename "$f" .pid)
            if [ -z "$(running_pid "$name")" ]; then
                case " $gone " in *" $name "*) ;; *)
                    say "$name exited; the others go on" \
                        "(scripts/cluster.sh restart ${name#node} starts it again)"
                    gone="$gone $name" ;;
                esac
            else
                # restarted meanwhile: report it again if it exits
                gone=$(echo "$gone" | sed "s/ $name\$//; s/ $name / /")
            fi
        done
        sleep 1
    done
}

restart() { # i
    i=${1:-}
    case $i in '' | *[!0-9]* | 0) say "restart needs a node number"; exit 2 ;; esac
    mkdir -p "$RUN"
    stop_one "node$i"
    start_node "$i" no
    wait_http "http://127.0.0.1:$(http_port "$i")/health" "$pid" "node$i" || {
        say "node$i did not start (see $RUN/node$i.log)"
        exit 1
    }
    say "node$i restarted (pid $pid, log $RUN/node$i.log)"
}

stop_one() { # name: SIGTERM, then SIGKILL after 15 s
    p=$(running_pid "$1")
    if [ -n "$p" ]; then
        kill -TERM "$p" 2>/dev/null || true
        tries=0
        while kill -0 "$p" 2>/dev/null && [ $tries -lt 150 ]; do
            sleep 0.1
            tries=$((tries + 1))
        done
        if kill -0 "$p" 2>/dev/null; then
            say "$1 (pid $p) did not stop in 15 s: killing it"
            kill -KILL "$p" 2>/dev/null || true
        fi
    fi
    rm -f "$RUN/$1.pid"
}

stop() {
    # SIGTERM to all at once, then wait for each
    for f in "$RUN"/*.pid; do
        [ -f "$f" ] || continue
        p=$(running_pid "$(basename "$f" .pid)")
        [ -z "$p" ] || kill -TERM "$p" 2>/dev/null || true
    done
    for f in "$RUN"/*.pid; do
        [ -f "$f" ] || continue
        stop_one "$(basename "$f" .pid)"
    done
}

status() {
    any=""
    for f in "$RUN"/*.pid; do
        [ -f "$f" ] || continue
        name=$(basename "$f" .pid)
        p=$(running_pid "$name")
        if [ -n "$p" ]; then
            echo "$name: running (pid $p)"
            case $name in node*) any=${any:-${name#node}} ;; esac
        else
            echo "$name: not running"
        fi
    done
    if [ -z "$any" ]; then
        echo "no node runs"
        return 0
    fi
    curl -sf "http://127.0.0.1:$(http_port "$any")/cluster" ||
        echo "node$any does not answer"
    echo
}

build() {
    if [ "${CLUSTER_BUILD:-yes}" != no ]; then
        make -s all
    fi
}

cmd=${1:-}
case "$cmd" in
start) build; start "${2:-3}" no ;;
run) build; start "${2:-3}" yes ;;
restart) build; restart "${2:-}" ;;
stop) stop ;;
status) status ;;
*) sed -n '2,25p' "$0" >&2; exit 2 ;;
esac
