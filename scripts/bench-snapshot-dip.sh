#!/bin/sh
# bench-snapshot-dip.sh - what a snapshot costs a steady write load: a
# 3-node cluster on 127.0.0.1 (fsync on) takes wrk's POST /set with
# distinct keys at 64 connections while the leader's commit index is read
# every 20 ms; for each snapshot the run went through (every
# raft-snapshot-entries writes), the writes lost around it, in seconds of
# the run's median rate: the fork and the child writing the table, then
# the log compaction behind it. Then each node's compaction steps (their
# count and time, from pyazdb_storage_compaction_step_duration_seconds).
#
#   scripts/bench-snapshot-dip.sh [seconds] [runs]   (default 10 s, 3 runs)
#
# Server directives go through BENCH_ARGS, e.g. to compare with no
# compaction (and so no compaction steps) behind the snapshots:
#   BENCH_ARGS="--raft-trailing-entries 1000000000 --raft-trailing-bytes 1tb"
set -eu
cd "$(dirname "$0")/.."
DUR=${1:-10}
RUNS=${2:-3}
scripts/install-deps.sh bench
make -s all

. scripts/bench-lib.sh
tmp=$(mktemp -d)
trap 'bench_stop; rm -rf "$tmp"' EXIT INT TERM
VALUE=$(head -c 100 /dev/zero | tr '\0' v)
cat > "$tmp/set.lua" <<LUA
local n = 0
local id = 0
function setup(thread) thread:set("id", math.random(1e9)) end
request = function()
  n = n + 1
  local body = '{"key":"k' .. id .. '-' .. n .. '","value":"$VALUE"}'
  return wrk.format("POST", "/set", {["Content-Type"]="application/json"}, body)
end
LUA

echo "== 3-node cluster on 127.0.0.1, POST /set at 64 connections, ${DUR}s per run${BENCH_ARGS:+, server args: $BENCH_ARGS}"
run=1
while [ "$run" -le "$RUNS" ]; do
    bench_pids=""
    rm -rf "$tmp"/node*
    bench_start_cluster
    wrk -t2 -c64 -d"${DUR}s" -s "$tmp/set.lua" \
        "http://127.0.0.1:$LEADER_HTTP/set" >"$tmp/wrk.out" &
    wrk_pid=$!
    /usr/bin/python3 - "$LEADER_HTTP" "$DUR" "$HTTP1" "$HTTP2" "$HTTP3" <<'PY'
import json, re, statistics, sys, time, urllib.request
leader, dur, ports = sys.argv[1], float(sys.argv[2]), sys.argv[3:6]
def status():
    with urllib.request.urlopen(f"http://127.0.0.1:{leader}/status") as r:
        return json.load(r)
pts, t0 = [], time.monotonic()
while time.monotonic() - t0 < dur - 0.3:
    s = status()
    pts.append((time.monotonic() - t0, s["commit_index"], s["snapshot_index"]))
    time.sleep(0.02)
# rates between samples, after the first half second (connections opening)
rates = [((b[1] - a[1]) / (b[0] - a[0]), a[0], b[0])
         for a, b in zip(pts, pts[1:]) if a[0] > 0.5]
med = statistics.median(r[0] for r in rates)
snaps = [b[0] for a, b in zip(pts, pts[1:]) if b[2] != a[2]]
lost = []
for ts in snaps:  # from 0.2 s before the snapshot was done to 1.8 s after
    w = sum((med - r[0]) * (r[2] - r[1]) for r in rates
            if ts - 0.2 <= r[1] < ts + 1.8)
    lost.append(w / med)
print(f"   commit rate median {med:,.0f}/s; {len(snaps)} snapshot"
      f"{'' if len(snaps) == 1 else 's'}; writes "
      f"lost around each, in seconds of that rate: "
      + ", ".join(f"{x:.2f}" for x in lost))
for p in ports:
    with urllib.request.urlopen(f"http://127.0.0.1:{p}/metrics") as r:
        text = r.read().decode()
    def metric(name):
        m = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.M)
        return float(m.group(1)) if m else 0.0
    n = metric("pyazdb_storage_compaction_step_duration_seconds_count")
    s = metric("pyazdb_storage_compaction_step_duration_seconds_sum")
    print(f"   node on :{p}: {n:.0f} compaction steps, {s * 1e3:.0f} ms "
          f"in all" + (f" ({s * 1e3 / n:.1f} ms each)" if n else ""))
PY
    wait "$wrk_pid"
    awk '/Requests\/sec/ {print "   wrk: " $2 " requests/s"}' "$tmp/wrk.out"
    bench_stop
    run=$((run + 1))
done
