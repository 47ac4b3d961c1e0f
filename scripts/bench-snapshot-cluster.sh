#!/bin/sh
# bench-snapshot-cluster.sh - snapshots with a large table on a 3-node cluster.
#
#   scripts/bench-snapshot-cluster.sh [keys]      (default 1000000)
#
# Loads `keys` keys (16-byte keys, 100-byte values) through the leader with
# wrk, then measures: the time to take a snapshot (POST /admin/snapshot)
# and the p99 latency of requests served meanwhile; the snapshot file and
# the SQLite database sizes against the raw data size; the restart time of
# a follower (start to /health, then to caught up); the time for a new
# node joining through mandi to catch up by InstallSnapshot, and the longest
# its loop kept a client waiting meanwhile (GET /health?serializable=true
# every 20 ms: the file's check and load must not hold the loop). Loopback
# only.
set -eu
cd "$(dirname "$0")/.."
KEYS=${1:-1000000}
scripts/install-deps.sh bench
make -s all
. scripts/bench-lib.sh
tmp=$(mktemp -d)
trap 'bench_stop; [ -n "${BENCH_KEEP:-}" ] || rm -rf "$tmp"' EXIT INT TERM
# a mandi, so that a new node can join later
MP=$(bench_free_port)
BENCH_MANDI="http://127.0.0.1:$MP"
src/pyazdb-server --mandi --mandi-addr "$BENCH_MANDI" --log-level warning \
    2>"$tmp/mandi.log" &
bench_pids="$bench_pids $!"
BENCH_LOG_LEVEL=info
# Only the snapshot under test: no automatic ones during the measurement.
BENCH_ARGS="--raft-snapshot-entries 1000000000"
bench_start_cluster
BASE="http://127.0.0.1:$LEADER_HTTP"
now_ms() { date +%s%3N; }
status() { curl -sf "http://127.0.0.1:$1/status"; }
field() { /usr/bin/python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }

echo "== loading $KEYS keys (16-byte keys, 100-byte values)"
cat > "$tmp/load.lua" <<LUA
local counter = 0
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end
function init(args)
  n = 0
  step = 2
  limit = $KEYS
  value = string.rep("v", 100)
end
request = function()
  local k = n * step + id
  n = n + 1
  if k >= limit then
    wrk.thread:stop()
  end
  local body = string.format('{"key":"%016d","value":"%s"}', k, value)
  return wrk.format("POST", "/set", nil, body)
end
LUA
t0=$(now_ms)
wrk -t2 -c64 -d900s -s "$tmp/load.lua" "$BASE" >"$tmp/load.out" 2>&1 &
wrkpid=$!
keys=0
while [ "$keys" -lt "$KEYS" ]; do
    sleep 0.5
    keys=$(status "$LEADER_HTTP" | field keys)
done
kill "$wrkpid" 2>/dev/null || true
wait "$wrkpid" 2>/dev/null || true
t1=$(now_ms)
echo "loaded: $keys keys in $(( (t1 - t0) / 1000 )) s"

echo "== snapshot of the leader while serving reads and writes"
cat > "$tmp/mix.lua" <<LUA
local n = 0
request = function()
  n = n + 1
  if n % 2 == 0 then
    return wrk.format("GET", string.format("/get?key=%016d", n % $KEYS))
  end
  return wrk.format("POST", "/set", nil,
    string.format('{"key":"%016d","value":"%s"}', n % $KEYS, string.rep("w", 100)))
end
LUA
wrk -t2 -c16 -d6s --latency -s "$tmp/mix.lua" "$BASE" >"$tmp/during.out" 2>&1 &
wrkpid=$!
sleep 1
t0=$(now_ms)
curl -sf -X POST "$BASE/admin/snapshot" >"$tmp/snap.json"
t1=$(now_ms)
wait $wrkpid || true
echo "snapshot taken in $((t1 - t0)) ms: $(cat "$tmp/snap.json")"
awk '/Requests\/sec/ {print "requests/s meanwhile: " $2} $1=="50%" {print "p50: " $2} $1=="99%" {print "p99: " $2}' "$tmp/during.out"
wrk -t2 -c16 -d5s --latency -s "$tmp/mix.lua" "$BASE" >"$tmp/quiet.out" 2>&1 || true
awk '$1=="99%" {print "p99 without a snapshot (reference): " $2}' "$tmp/quiet.out"

for i in 1 2 3; do
    eval "hp=\$HTTP$i"
    [ "$hp" = "$LEADER_HTTP" ] && L=$i
done
snap=$(ls -1 "$tmp/node$L"/*.snap | tail -1)
raw=$((KEYS * 116))
snapsz=$(stat -c %s "$snap")
dbsz=$(du -cb "$tmp/node$L"/raft.db* | tail -1 | cut -f1)
echo "raw data $raw bytes; snapshot file $snapsz bytes ($(awk -v a="$snapsz" -v b="$raw" 'BEGIN{printf "%.2f", a/b}')x); raft.db $dbsz bytes; data dir $(du -sb "$tmp/node$L" | cut -f1) bytes"

F=$(( L % 3 + 1 ))
# the followers snapshot too, so that a restart loads a snapshot
for i in 1 2 3; do
    eval "hp=\$HTTP$i"
    [ "$i" = "$L" ] || curl -sf -X POST "http://127.0.0.1:$hp/admin/snapshot" >/dev/null
done
eval "fhp=\$HTTP$F frp=\$RAFT$F fgp=\$GRPC$F"
eval "fpid=\$PID$F"
echo "== restart of follower node$F"
kill -9 "$fpid"; sleep 0.5
spec=$(echo "node1=127.0.0.1:$RAFT1,node2=127.0.0.1:$RAFT2,node3=127.0.0.1:$RAFT3")
restart() {
    src/pyazdb-server --node-id "node$F" --raft-data "$tmp/node$F" \
        --raft-addr "127.0.0.1:$frp" --http-addr "127.0.0.1:$fhp" \
        --grpc-addr "127.0.0.1:$fgp" --initial-cluster "$spec" \
        --log-level info 2>>"$tmp/node$F.log" &
    bench_pids="$bench_pids $!"
}
caught_up() {
    la=$(status "$LEADER_HTTP" | field applied_index)
    until [ "$(status "$fhp" 2>/dev/null | field applied_index 2>/dev/null || echo 0)" -ge "$la" ]; do
        sleep 0.05
    done
}
t0=$(now_ms); restart
until curl -sf "http://127.0.0.1:$fhp/health" >/dev/null 2>&1; do sleep 0.02; done
t1=$(now_ms); caught_up; t2=$(now_ms)
echo "restart: serving after $((t1 - t0)) ms, caught up after $((t2 - t0)) ms"

echo "== a new node joins through mandi and catches up by InstallSnapshot"
np=$(bench_free_port); nh=$(bench_free_port); ng=$(bench_free_port)
t0=$(now_ms)
src/pyazdb-server --node-id node4 --raft-data "$tmp/node4" \
    --raft-addr "127.0.0.1:$np" --http-addr "127.0.0.1:$nh" \
    --grpc-addr "127.0.0.1:$ng" --mandi-addr "$BENCH_MANDI" \
    --log-level info 2>>"$tmp/node4.log" &
bench_pids="$bench_pids $!"
fhp=$nh
until curl -sf "http://127.0.0.1:$fhp/health" >/dev/null 2>&1; do sleep 0.02; done
# The new node's answers while it catches up: the slowest is how long its
# loop was held (a snapshot loaded on the loop held it as long as the load).
bench_probe_start "$nh"
caught_up; t1=$(now_ms)
bench_probe_stop
echo "new node caught up in $((t1 - t0)) ms, join polling included ($(grep -c 'installed snapshot' "$tmp/node4.log") snapshot installed)"
echo "its answers to a client meanwhile: $(cat "$tmp/probe.out")"
# Its loop's own view (since its start). A slow answer with no long turn
# waited for a CPU.
bench_loop_turns "$nh" |
    awk '{ printf "its loop turns over 25 ms: %d, over 50 ms: %d, over 100 ms: %d\n", $1, $2, $3 }'
