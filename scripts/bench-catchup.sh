#!/bin/sh
# bench-catchup.sh - a follower catching up from the leader's log.
#
#   scripts/bench-catchup.sh [seconds]      (default 5)
#
# On a 3-node cluster (no automatic snapshot, so the log covers it), one
# follower is stopped (SIGSTOP) while wrk writes distinct keys to the
# leader for `seconds`, then resumed: it is handed tens of thousands of
# entries at once. Prints how many it was behind, how long it took to
# apply them and the CPU time it used meanwhile, its loop turns over 25,
# 50 and 100 ms (pyazdb_loop_busy_seconds) and the slowest answer it gave
# a client that asked every 20 ms (GET /health?serializable=true).
# BENCH_SERVER names another server binary (another build). Loopback only.
set -eu
cd "$(dirname "$0")/.."
SECS=${1:-5}
scripts/install-deps.sh bench
make -s all
. scripts/bench-lib.sh
tmp=$(mktemp -d)
trap 'bench_stop; [ -n "${BENCH_KEEP:-}" ] || rm -rf "$tmp"' EXIT INT TERM
BENCH_ARGS="--raft-snapshot-entries 1000000000"
bench_start_cluster
for i in 1 2 3; do
    eval "hp=\$HTTP$i"
    [ "$hp" = "$LEADER_HTTP" ] && L=$i
done
F=$(( L % 3 + 1 ))
eval "fhp=\$HTTP$F fpid=\$PID$F"
field() {
    curl -sf -m 30 "http://127.0.0.1:$1/status" |
        /usr/bin/python3 -c "import json,sys; print(json.load(sys.stdin)['$2'])"
}
cat > "$tmp/set.lua" <<'LUA'
local counter = 0
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end
function init(args)
  n = 0
  value = string.rep("v", 100)
end
request = function()
  n = n + 1
  local body = string.format('{"key":"k%d-%012d","value":"%s"}', id, n, value)
  return wrk.format("POST", "/set", nil, body)
end
LUA
before=$(bench_loop_turns "$fhp")
had=$(field "$fhp" applied_index)
kill -STOP "$fpid"
wrk -t2 -c64 -d"${SECS}s" -s "$tmp/set.lua" "http://127.0.0.1:$LEADER_HTTP" \
    >"$tmp/wrk.out" 2>&1
target=$(field "$LEADER_HTTP" applied_index)
behind=$((target - had))
cpu() { awk '{ print $14 + $15 }' "/proc/$1/stat"; } # clock ticks
bench_probe_start "$fhp"
c0=$(cpu "$fpid")
t0=$(date +%s%3N)
kill -CONT "$fpid"
until [ "$(field "$fhp" applied_index 2>/dev/null || echo 0)" -ge "$target" ]; do
    sleep 0.01
done
t1=$(date +%s%3N)
c1=$(cpu "$fpid")
bench_probe_stop
after=$(bench_loop_turns "$fhp")
tick=$(getconf CLK_TCK)
echo "follower node$F: $behind entries behind, applied them in $((t1 - t0)) ms, $(( (c1 - c0) * 1000 / tick )) ms of its CPU"
echo "$before $after" | awk '{ printf "its loop turns over 25 ms: %d, over 50 ms: %d, over 100 ms: %d\n", $4 - $1, $5 - $2, $6 - $3 }'
echo "its answers to a client meanwhile: $(cat "$tmp/probe.out")"
