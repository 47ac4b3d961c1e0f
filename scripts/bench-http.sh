#!/bin/sh
# bench-http.sh - HTTP API throughput of one pyazdb-server node, with
# redis-server measured in the same run as the event-loop reference.
#
#   scripts/bench-http.sh [seconds]      (default 10 s per run)
#
# wrk drives GET of an existing key and POST /set (distinct keys) at 1 and
# 64 connections; redis-benchmark drives GET and SET at 1 and 64 clients
# against a redis-server started here on a free loopback port. Everything
# listens on 127.0.0.1 only and stops when the script ends.
set -eu
cd "$(dirname "$0")/.."
DUR=${1:-10}
scripts/install-deps.sh bench
make -s all

tmp=$(mktemp -d)
cleanup() {
    [ -n "${pz_pid:-}" ] && kill "$pz_pid" 2>/dev/null && wait "$pz_pid" 2>/dev/null
    [ -n "${redis_pid:-}" ] && kill "$redis_pid" 2>/dev/null && wait "$redis_pid" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

free_port() {
    /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

HTTP_PORT=$(free_port)
REDIS_PORT=$(free_port)
src/pyazdb-server pyazdb.conf --node-id bench --raft-data "$tmp/data" \
    --http-addr "127.0.0.1:$HTTP_PORT" --grpc-addr "127.0.0.1:$(free_port)" \
    --raft-addr "127.0.0.1:$(free_port)" --log-level warning \
    2>"$tmp/server.log" &
pz_pid=$!
i=0
until curl -sf "http://127.0.0.1:$HTTP_PORT/health" >/dev/null; do
    i=$((i + 1)); [ $i -gt 100 ] && { cat "$tmp/server.log"; exit 1; }
    sleep 0.1
done
BASE="http://127.0.0.1:$HTTP_PORT"
VALUE=$(head -c 100 /dev/zero | tr '\0' v)
curl -sf -X POST -d "{\"key\":\"bench\",\"value\":\"$VALUE\"}" "$BASE/set"

cat > "$tmp/set.lua" <<LUA
local n = 0
request = function()
  n = n + 1
  local body = '{"key":"k' .. n .. '-' .. math.random(1e9) .. '","value":"$VALUE"}'
  return wrk.format("POST", "/set", {["Content-Type"]="application/json"}, body)
end
LUA

wrk_rps() { # threads conns script-or-empty url
    if [ -n "$3" ]; then
        wrk -t"$1" -c"$2" -d"${DUR}s" --latency -s "$3" "$4" >"$tmp/wrk.out"
    else
        wrk -t"$1" -c"$2" -d"${DUR}s" --latency "$4" >"$tmp/wrk.out"
    fi
    rps=$(awk '/Requests\/sec/ {print $2}' "$tmp/wrk.out")
    p50=$(awk '$1=="50%" {print $2}' "$tmp/wrk.out")
    p99=$(awk '$1=="99%" {print $2}' "$tmp/wrk.out")
    errs=$(awk '/Non-2xx/ {print $NF}' "$tmp/wrk.out")
    echo "$rps p50=$p50 p99=$p99${errs:+ non2xx=$errs}"
}

echo "== pyazdb HTTP (${DUR}s each)"
r_get1=$(wrk_rps 1 1 "" "$BASE/get?key=bench"); echo "GET  1 conn:   $r_get1"
r_get64=$(wrk_rps 2 64 "" "$BASE/get?key=bench"); echo "GET  64 conns: $r_get64"
r_set1=$(wrk_rps 1 1 "$tmp/set.lua" "$BASE"); echo "SET  1 conn:   $r_set1"
r_set64=$(wrk_rps 2 64 "$tmp/set.lua" "$BASE"); echo "SET  64 conns: $r_set64"
kill "$pz_pid"; wait "$pz_pid" 2>/dev/null || true; pz_pid=

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
    --daemonize no >"$tmp/redis.log" 2>&1 &
redis_pid=$!
i=0
until redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; do
    i=$((i + 1)); [ $i -gt 100 ] && { cat "$tmp/redis.log"; exit 1; }
    sleep 0.1
done
N1=$((DUR * 15000)); N64=$((DUR * 60000))
rb() { redis-benchmark -p "$REDIS_PORT" -h 127.0.0.1 -q -d 100 -r 1000000 "$@" |
       tr '\r' '\n' | awk '/requests per second/ {print $2}' | tail -1; }
echo "== redis-server reference (same run)"
rg1=$(rb -c 1 -n $N1 -t get); echo "GET  1 client:   $rg1"
rg64=$(rb -c 64 -n $N64 -t get); echo "GET  64 clients: $rg64"
rs1=$(rb -c 1 -n $N1 -t set); echo "SET  1 client:   $rs1"
rs64=$(rb -c 64 -n $N64 -t set); echo "SET  64 clients: $rs64"

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
echo "== ratios pyazdb / redis"
echo "GET 1:  $(ratio "${r_get1%% *}" "$rg1")"
echo "GET 64: $(ratio "${r_get64%% *}" "$rg64")"
echo "SET 1:  $(ratio "${r_set1%% *}" "$rs1")"
echo "SET 64: $(ratio "${r_set64%% *}" "$rs64")"
