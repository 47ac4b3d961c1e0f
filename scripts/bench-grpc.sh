#!/bin/sh
# bench-grpc.sh - gRPC API throughput of a 3-node cluster under h2load.
#
#   scripts/bench-grpc.sh [seconds]      (default 10 s per run)
#
# Starts a 3-node cluster on free loopback ports (fsync on, as always), then
# runs h2load for a fixed time against the leader's /kv.KVService/Set and
# /kv.KVService/Get with prebuilt framed
# request bodies, at 1x1, 16x1, 64x1 and 16x16 (connections x concurrent
# streams per connection). The bodies:
#   Set: SetRequest{key: "bench", value: 100 x "v"} (the same key every time)
#   Get: GetRequest{key: "bench"}                    (found)
# h2load only sees HTTP statuses, and gRPC errors travel with :status 200,
# so after every run the same body is sent once with curl and its
# grpc-status must be 0. Everything listens on 127.0.0.1 and stops with the
# script.
set -eu
cd "$(dirname "$0")/.."
DUR=${1:-10}
scripts/install-deps.sh test
make -s all

. scripts/bench-lib.sh
tmp=$(mktemp -d)
trap 'bench_stop; rm -rf "$tmp"' EXIT INT TERM
bench_start_cluster
GRPC_PORT=$LEADER_GRPC

# Framed bodies: flag 0, 4-byte big-endian length, then the message.
#   SetRequest: 0a 05 "bench" 12 64 <100 x 'v'>  (109 bytes)
#   GetRequest: 0a 05 "bench"                    (7 bytes)
{ printf '\000\000\000\000\155\012\005bench\022\144'
  head -c 100 /dev/zero | tr '\0' v; } >"$tmp/set.bin"
printf '\000\000\000\000\007\012\005bench' >"$tmp/get.bin"
URL="http://127.0.0.1:$GRPC_PORT/kv.KVService"

check_status() { # method body
    st=$(curl -s --http2-prior-knowledge -o /dev/null -D - \
        -H 'content-type: application/grpc' -H 'te: trailers' \
        --data-binary "@$2" "$URL/$1" | tr -d '\r' |
        awk -F': ' '$1=="grpc-status" {print $2}')
    if [ "$st" != "0" ]; then
        echo "bench-grpc: $1 answered grpc-status '$st', not 0" >&2
        exit 1
    fi
}

run() { # method body conns streams
    threads=1
    [ "$3" -gt 1 ] && threads=2
    h2load -D "$DUR" -t "$threads" -c "$3" -m "$4" -d "$2" \
        -H 'content-type: application/grpc' -H 'te: trailers' \
        "$URL/$1" >"$tmp/h2load.out" 2>&1
    rps=$(awk '/^finished in/ {print $4}' "$tmp/h2load.out")
    ok=$(awk '/^requests:/ {print $8}' "$tmp/h2load.out")
    bad=$(awk '/^requests:/ {print $10 + $12 + $14}' "$tmp/h2load.out")
    mean=$(awk '/^time for request:/ {print $6}' "$tmp/h2load.out")
    max=$(awk '/^time for request:/ {print $5}' "$tmp/h2load.out")
    check_status "$1" "$2"
    printf '%-4s %3dx%-3d %10s req/s  mean %-8s max %-8s ok %s%s\n' \
        "$1" "$3" "$4" "$rps" "$mean" "$max" "$ok" \
        "$( [ "${bad:-0}" != 0 ] && echo " failed/errored/timeout $bad")"
}

check_status Set "$tmp/set.bin"
check_status Get "$tmp/get.bin"
echo "== pyazdb gRPC, 3-node cluster, leader :$GRPC_PORT, h2load ${DUR}s per run (connections x streams)"
for m in Set Get; do
    body="$tmp/$(echo "$m" | tr SG sg).bin"
    run "$m" "$body" 1 1
    run "$m" "$body" 16 1
    run "$m" "$body" 64 1
    run "$m" "$body" 16 16
done
