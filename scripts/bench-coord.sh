#!/bin/sh
# bench-coord.sh - the coordination features on a 3-node cluster on
# 127.0.0.1 (fsync on, as always), each figure next to its plain
# counterpart measured in the same run:
#
#   scripts/bench-coord.sh [seconds] [keys]   (default 10 s per run, 1M keys)
#
# 1. writes at 64 connections (wrk, distinct keys): plain POST /set, a
#    compare-and-set that creates (`prev_revision: 0`), and a /txn with one
#    comparison and one put; the ratios to plain /set;
# 2. contended compare-and-set: 16 clients increment one counter by
#    read-then-CAS for the run's length; successes/s, 412s, and a check
#    that the counter equals the number of successes;
# 3. the table filled with `keys` 16-byte keys with 100-byte values (in
#    /txn batches of 128 puts) under 100 prefixes, then the leader's RSS,
#    and the latency of a scan of one prefix (keys/100 keys: 10,000 of 1M)
#    with values, keys only and count only, linearizable (wrk, 1 conn).
set -eu
cd "$(dirname "$0")/.."
DUR=${1:-10}
KEYS=${2:-1000000}
scripts/install-deps.sh bench
make -s all

. scripts/bench-lib.sh
tmp=$(mktemp -d)
trap 'bench_stop; rm -rf "$tmp"' EXIT INT TERM
bench_start_cluster
LEADER=$LEADER_HTTP
BASE="http://127.0.0.1:$LEADER"
for i in 1 2 3; do
    eval "[ \"\$HTTP$i\" = \"$LEADER\" ] && LEADER_PID=\$PID$i" || true
done
VALUE=$(head -c 100 /dev/zero | tr '\0' v)

# wrk scripts: each thread numbers its own keys under its own tag (wrk's
# threads do not seed math.random apart), the run under a tag of its own.
RUN=$$
write_lua() { # file body-template path tag (KEY stands for the key)
    cat >"$1" <<LUA
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("id", "$RUN-$4-" .. threads)
end
local n = 0
request = function()
  n = n + 1
  local key = 'k' .. id .. '-' .. n
  local body = string.gsub('$2', 'KEY', key)
  return wrk.format("POST", "$3", {["Content-Type"]="application/json"}, body)
end
LUA
}
write_lua "$tmp/set.lua" "{\"key\":\"KEY\",\"value\":\"$VALUE\"}" /set s
write_lua "$tmp/cas.lua" \
    "{\"key\":\"KEY\",\"value\":\"$VALUE\",\"prev_revision\":0}" /set c
write_lua "$tmp/txn.lua" \
    "{\"compare\":[{\"key\":\"KEY\",\"target\":\"create_revision\",\"result\":\"=\",\"value\":0}],\"success\":[{\"put\":{\"key\":\"KEY\",\"value\":\"$VALUE\"}}]}" /txn t

wrk_run() { # label conns script path
    t=$(( $2 < 2 ? 1 : 2 ))
    if [ -n "$3" ]; then
        wrk -t$t -c"$2" -d"${DUR}s" --latency -s "$3" "$BASE$4" >"$tmp/wrk.out"
    else
        wrk -t$t -c"$2" -d"${DUR}s" --latency "$BASE$4" >"$tmp/wrk.out"
    fi
    rps=$(awk '/Requests\/sec/ {print $2}' "$tmp/wrk.out")
    p50=$(awk '$1=="50%" {print $2}' "$tmp/wrk.out")
    p99=$(awk '$1=="99%" {print $2}' "$tmp/wrk.out")
    non2xx=$(awk '/Non-2xx/ {print $NF}' "$tmp/wrk.out")
    printf '%-26s %3s conns: %9s req/s  p50 %-9s p99 %-9s%s\n' \
        "$1" "$2" "$rps" "$p50" "$p99" "${non2xx:+  non-2xx $non2xx}"
    eval "RPS_$5=$rps"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }

echo "== 3-node cluster on 127.0.0.1, leader :$LEADER, ${DUR}s per run"
wrk_run "SET (plain)" 64 "$tmp/set.lua" /set set
wrk_run "SET prev_revision=0 (CAS)" 64 "$tmp/cas.lua" /set cas
wrk_run "TXN compare+put" 64 "$tmp/txn.lua" /txn txn
echo "ratio CAS / plain set: $(ratio "$RPS_cas" "$RPS_set")"
echo "ratio TXN / plain set: $(ratio "$RPS_txn" "$RPS_set")"

echo "== contended CAS: 16 clients incrementing one counter, ${DUR}s"
/usr/bin/python3 - "$LEADER" "$DUR" <<'PY'
import http.client, json, sys, threading, time
port, dur = int(sys.argv[1]), float(sys.argv[2])
def call(c, method, path, body=None):
    c.request(method, path, body=body)
    r = c.getresponse()
    return r.status, r.read()
c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
st, _ = call(c, "POST", "/set", json.dumps({"key": "counter", "value": "0"}))
assert st == 204, st
ok, conflict, lock = [0], [0], threading.Lock()
end = time.monotonic() + dur
def worker():
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    while time.monotonic() < end:
        st, body = call(c, "GET", "/range?prefix=counter&limit=1")
        kv = json.loads(body)["kvs"][0]
        nxt = str(int(kv["value"]) + 1)
        st, _ = call(c, "POST", "/set", json.dumps(
            {"key": "counter", "value": nxt, "prev_revision": kv["mod_revision"]}))
        with lock:
            if st == 204: ok[0] += 1
            elif st == 412: conflict[0] += 1
            else: raise SystemExit("unexpected status %d" % st)
ts = [threading.Thread(target=worker) for _ in range(16)]
t0 = time.monotonic()
for t in ts: t.start()
for t in ts: t.join()
el = time.monotonic() - t0
st, body = call(c, "GET", "/get?key=counter")
final = int(body)
print("increments %d (%.0f/s), 412 conflicts %d (%.0f/s), counter %d: %s" % (
    ok[0], ok[0] / el, conflict[0], conflict[0] / el, final,
    "ok" if final == ok[0] else "MISMATCH"))
if final != ok[0]:
    sys.exit(1)
PY

echo "== $KEYS keys (16-byte keys, 100-byte values) under 100 prefixes"
rss() { awk '/VmRSS/ {printf "%.0f MB", $2 / 1024}' "/proc/$LEADER_PID/status"; }
echo "leader RSS before: $(rss)"
/usr/bin/python3 - "$LEADER" "$KEYS" <<'PY'
import http.client, json, sys, threading, time
port, n = int(sys.argv[1]), int(sys.argv[2])
val = "v" * 100
per = n // 100
def key(i):  # 16 bytes: pNNN/ and 11 digits
    return "p%03d/%011d" % (i % 100, i // 100)
def loader(part, parts):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    i = part * 128
    while i < n:
        ops = [{"put": {"key": key(j), "value": val}} for j in range(i, min(i + 128, n))]
        c.request("POST", "/txn", body=json.dumps({"success": ops}))
        r = c.getresponse(); r.read()
        if r.status != 200:
            raise SystemExit("load: status %d" % r.status)
        i += 128 * parts
t0 = time.monotonic()
ts = [threading.Thread(target=loader, args=(p, 4)) for p in range(4)]
for t in ts: t.start()
for t in ts: t.join()
print("loaded %d keys in %.1f s" % (n, time.monotonic() - t0))
PY
curl -sf "$BASE/range?prefix=p042/&count_only=true" | /usr/bin/python3 -c \
    'import json,sys; print("keys under p042/:", json.load(sys.stdin)["count"])'
echo "leader RSS after:  $(rss)"
SCAN=$((KEYS / 100)); [ $SCAN -gt 10000 ] && SCAN=10000
wrk_run "scan p042/ ($SCAN keys)" 1 "" "/range?prefix=p042/&limit=$SCAN" scan
wrk_run "scan p042/ keys_only" 1 "" "/range?prefix=p042/&limit=$SCAN&keys_only=true" scank
wrk_run "scan p042/ count_only" 1 "" "/range?prefix=p042/&count_only=true" scanc
wrk_run "GET one key (reference)" 1 "" "/get?key=p042/00000000042" get
