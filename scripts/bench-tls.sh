#!/bin/sh
# bench-tls.sh - the cost of TLS on one pyazdb-server node: two nodes run
# side by side on 127.0.0.1, one plain, one with tls-cert-file (certificates
# from scripts/make-certs.sh), measured in the same run:
#
#   scripts/bench-tls.sh [seconds] [idle-connections]   (default 10, 2000)
#
# 1. memory per idle connection: the node's RSS before and after opening
#    that many connections that completed a request (TLS: a handshake too)
#    and stay open, divided by their number (before any load);
# 2. wrk (which speaks https) drives GET of an existing key and POST /set
#    of distinct keys at 1 and 64 kept-alive connections on each node; the
#    TLS/plain ratio of each;
#    h2load does the same for gRPC Get and Set (framed bodies, one stream
#    per connection), h2c against gRPC over TLS (ALPN h2);
# 3. full handshakes per second: `openssl s_time -new` (one client process,
#    so it measures client and server together).
set -eu
cd "$(dirname "$0")/.."
DUR=${1:-10}
IDLE=${2:-2000}
scripts/install-deps.sh bench
make -s all

tmp=$(mktemp -d)
cleanup() {
    for p in ${plain_pid:-} ${tls_pid:-}; do
        kill "$p" 2>/dev/null && wait "$p" 2>/dev/null
    done
    rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

free_port() {
    /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

scripts/make-certs.sh "$tmp/pki" ca
scripts/make-certs.sh "$tmp/pki" node bench 127.0.0.1

start() { # name extra-args...; sets PORT, GPORT and PID
    name=$1
    shift
    PORT=$(free_port)
    GPORT=$(free_port)
    src/pyazdb-server pyazdb.conf --node-id "$name" \
        --raft-data "$tmp/$name" --http-addr "127.0.0.1:$PORT" \
        --grpc-addr "127.0.0.1:$GPORT" \
        --raft-addr "127.0.0.1:$(free_port)" --log-level warning \
        --max-clients 100000 --client-idle-timeout 0 "$@" \
        2>"$tmp/$name.log" &
    PID=$!
}
start plain
plain_port=$PORT plain_gport=$GPORT plain_pid=$PID
start tls --tls-cert-file "$tmp/pki/bench.crt" \
    --tls-key-file "$tmp/pki/bench.key"
tls_port=$PORT tls_gport=$GPORT tls_pid=$PID
CURL_TLS="--cacert $tmp/pki/ca.crt"
for u in "http://127.0.0.1:$plain_port" "https://127.0.0.1:$tls_port"; do
    i=0
    # shellcheck disable=SC2086
    until curl -sf $CURL_TLS "$u/health" >/dev/null; do
        i=$((i + 1)); [ $i -gt 100 ] && { cat "$tmp"/*.log; exit 1; }
        sleep 0.1
    done
    VALUE=$(head -c 100 /dev/zero | tr '\0' v)
    # shellcheck disable=SC2086
    curl -sf $CURL_TLS -X POST -d "{\"key\":\"bench\",\"value\":\"$VALUE\"}" \
        "$u/set"
done

echo "== memory per idle connection ($IDLE connections) =="
idle_mem() { # port tls(0/1) pid
    /usr/bin/python3 - "$1" "$2" "$3" "$IDLE" "$tmp/pki/ca.crt" <<'PY'
import socket, ssl, sys, time
port, tls, pid, n, ca = int(sys.argv[1]), sys.argv[2] == "1", sys.argv[3], int(sys.argv[4]), sys.argv[5]
def rss():
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
ctx = ssl.create_default_context(cafile=ca) if tls else None
before = rss()
conns = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    if tls:
        s = ctx.wrap_socket(s, server_hostname="127.0.0.1")
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    s.recv(4096)
    conns.append(s)
time.sleep(0.5)
after = rss()
print(f"{(after - before) * 1024 / n:.0f} bytes per connection "
      f"(RSS {before} kB -> {after} kB)")
PY
}
ulimit -n 65536 2>/dev/null || true
printf 'plain: '; idle_mem "$plain_port" 0 "$plain_pid"
printf 'tls:   '; idle_mem "$tls_port" 1 "$tls_pid"

cat > "$tmp/set.lua" <<LUA
local n = 0
request = function()
  n = n + 1
  local body = '{"key":"k' .. n .. '-' .. math.random(1e9) .. '","value":"$VALUE"}'
  return wrk.format("POST", "/set", {["Content-Type"]="application/json"}, body)
end
LUA

rps() { # url conns [script]
    if [ -n "${3:-}" ]; then
        out=$(wrk -t 1 -c "$2" -d "${DUR}s" -s "$3" "$1")
    else
        out=$(wrk -t 1 -c "$2" -d "${DUR}s" "$1")
    fi
    echo "$out" | awk '/Requests\/sec/ {printf "%d", $2}'
}

echo "== HTTP throughput, requests/s ($DUR s per run) =="
printf '%-12s %6s %10s %10s %7s\n' what conns plain tls ratio
for c in 1 64; do
    for what in get set; do
        if [ $what = get ]; then path="/get?key=bench" s=""; else path="" s="$tmp/set.lua"; fi
        p=$(rps "http://127.0.0.1:$plain_port$path" $c $s)
        t=$(rps "https://127.0.0.1:$tls_port$path" $c $s)
        printf '%-12s %6d %10d %10d %6.0f%%\n' "$what" "$c" "$p" "$t" \
            "$(echo "$t $p" | awk '{print 100 * $1 / $2}')"
    done
done

# SetRequest{key: "bench", value: 100 x "v"}, GetRequest{key: "bench"}.
{ printf '\000\000\000\000\155\012\005bench\022\144'
  head -c 100 /dev/zero | tr '\0' v; } >"$tmp/set.bin"
printf '\000\000\000\000\007\012\005bench' >"$tmp/get.bin"
grps() { # base-url method body conns
    h2load -D "$DUR" -t 1 -c "$4" -m 1 -d "$3" \
        -H 'content-type: application/grpc' -H 'te: trailers' \
        "$1/kv.KVService/$2" 2>&1 | awk '/^finished in/ {printf "%d", $4}'
}
echo "== gRPC throughput, calls/s ($DUR s per run) =="
printf '%-12s %6s %10s %10s %7s\n' what conns plain tls ratio
for c in 1 64; do
    for m in Get Set; do
        p=$(grps "http://127.0.0.1:$plain_gport" $m "$tmp/$(echo $m | tr GS gs).bin" $c)
        t=$(grps "https://127.0.0.1:$tls_gport" $m "$tmp/$(echo $m | tr GS gs).bin" $c)
        printf '%-12s %6d %10d %10d %6.0f%%\n' "$m" "$c" "$p" "$t" \
            "$(echo "$t $p" | awk '{print $2 ? 100 * $1 / $2 : 0}')"
    done
done

echo "== TLS handshakes ($DUR s, openssl s_time -new, TLS 1.3) =="
openssl s_time -connect "127.0.0.1:$tls_port" -new -time "$DUR" 2>/dev/null |
    grep -E 'connections in|connections/user' || true

