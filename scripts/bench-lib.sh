# bench-lib.sh - shared by the benchmark scripts (sourced, not run).
# Starts a 3-node cluster on 127.0.0.1 from a static initial-cluster, with
# free ports and data under $tmp, and sets LEADER_HTTP / LEADER_GRPC to the
# leader's ports, PIDi to node i's process. The caller sets `tmp` and a
# trap that calls bench_stop. BENCH_SERVER names another server binary
# (another build, to compare), src/pyazdb-server by default.

bench_free_port() {
    /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

bench_pids=""

bench_stop() {
    for p in $bench_pids; do kill "$p" 2>/dev/null || true; done
    for p in $bench_pids; do wait "$p" 2>/dev/null || true; done
    bench_pids=""
}

bench_start_cluster() {
    spec=""
    ports=""
    for i in 1 2 3; do
        r=$(bench_free_port); h=$(bench_free_port); g=$(bench_free_port)
        # the kernel may offer a port twice: retry until all differ
        while echo " $ports " | grep -q " \($r\|$h\|$g\) " ||
              [ "$r" = "$h" ] || [ "$h" = "$g" ] || [ "$r" = "$g" ]; do
            r=$(bench_free_port); h=$(bench_free_port); g=$(bench_free_port)
        done
        ports="$ports $r $h $g"
        eval "RAFT$i=$r HTTP$i=$h GRPC$i=$g"
        spec="${spec:+$spec,}node$i=127.0.0.1:$r"
    done
    for i in 1 2 3; do
        eval "rp=\$RAFT$i hp=\$HTTP$i gp=\$GRPC$i"
        "${BENCH_SERVER:-src/pyazdb-server}" --node-id "node$i" \
            --raft-data "$tmp/node$i" \
            --raft-addr "127.0.0.1:$rp" --http-addr "127.0.0.1:$hp" \
            --grpc-addr "127.0.0.1:$gp" --initial-cluster "$spec" \
            --mandi-addr "${BENCH_MANDI:-none}" ${BENCH_ARGS:-} \
            --log-level "${BENCH_LOG_LEVEL:-warning}" 2>"$tmp/node$i.log" &
        bench_pids="$bench_pids $!"
        eval "PID$i=$!"
    done
    LEADER_HTTP=""
    n=0
    while [ -z "$LEADER_HTTP" ]; do
        n=$((n + 1)); [ $n -gt 200 ] && { cat "$tmp"/node*.log; exit 1; }
        sleep 0.1
        for i in 1 2 3; do
            eval "hp=\$HTTP$i gp=\$GRPC$i"
            if curl -sf "http://127.0.0.1:$hp/status" 2>/dev/null |
                grep -q '"role":"leader"'; then
                LEADER_HTTP=$hp
                LEADER_GRPC=$gp
            fi
        done
    done
}

# A client of node HTTP port $1 that asks GET /health?serializable=true
# every 20 ms until bench_probe_stop, then writes to $tmp/probe.out how
# many it sent, the slowest answer and how many took over 200 ms: a slow
# one is a long loop turn, or a wait for a CPU (bench_loop_turns tells
# which).
bench_probe_start() {
    rm -f "$tmp/probe.stop"
    /usr/bin/python3 - "$1" "$tmp/probe.stop" >"$tmp/probe.out" <<'PY' &
import http.client, os, sys, time
port, stop = int(sys.argv[1]), sys.argv[2]
worst, n, slow = 0.0, 0, 0
while not os.path.exists(stop):
    t = time.monotonic()
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        c.request("GET", "/health?serializable=true")
        c.getresponse().read()
        c.close()
    except OSError:
        pass
    d = time.monotonic() - t
    worst, n, slow = max(worst, d), n + 1, slow + (d > 0.2)
    time.sleep(0.02)
print(f"{n} requests, slowest {worst * 1000:.0f} ms, {slow} over 200 ms")
PY
    bench_probe=$!
}

bench_probe_stop() {
    touch "$tmp/probe.stop"
    wait "$bench_probe" || true
}

# The loop turns of node HTTP port $1 since its start that worked over 25,
# 50 and 100 ms (pyazdb_loop_busy_seconds), on one line.
bench_loop_turns() {
    curl -sf -m 30 "http://127.0.0.1:$1/metrics" | awk '
        /^pyazdb_loop_busy_seconds_bucket/ {
            match($0, /le="[^"]*"/); le = substr($0, RSTART + 4, RLENGTH - 5)
            if (le == "0.025") a = $2
            if (le == "0.05") b = $2
            if (le == "0.1") c = $2
            if (le == "+Inf") n = $2
        }
        END { print n - a, n - b, n - c }'
}
