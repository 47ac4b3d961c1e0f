#!/bin/sh
# bench-etcd.sh - PyazDB against etcd on the same machine, in the same run.
#
#   scripts/bench-etcd.sh [seconds]      (default 10 s per run)
#
# Starts a 3-node etcd cluster (Debian's etcd-server) and a 3-node PyazDB
# cluster, both on free 127.0.0.1 ports with their data in a temporary
# directory and fsync on (both defaults), and drives each leader over gRPC
# with h2load and the same prebuilt request bodies:
#   write: PyazDB /kv.KVService/Set  vs etcd /etcdserverpb.KV/Put
#          (key "bench", value 100 x "v"; same wire bytes for both)
#   read:  PyazDB /kv.KVService/Get  vs etcd /etcdserverpb.KV/Range
#          (key "bench"; both linearizable, their defaults)
# and the same bodies on PyazDB's etcd API (/etcdserverpb.KV/Put and
# Range on PyazDB: the very requests etcd gets, path included),
# at 1x1, 16x1, 64x1 and 16x16 (connections x streams per connection). The
# systems are loaded one after the other (both clusters stay up; the idle
# one only sends its heartbeats); each run ends
# with one request checked for grpc-status 0. Prints req/s for each and the
# ratios PyazDB / etcd (kv.KVService, then etcd API).
set -eu
cd "$(dirname "$0")/.."
DUR=${1:-10}
scripts/install-deps.sh bench
make -s all

. scripts/bench-lib.sh
tmp=$(mktemp -d)
etcd_pids=""
cleanup() {
    bench_stop
    for p in $etcd_pids; do kill "$p" 2>/dev/null || true; done
    for p in $etcd_pids; do wait "$p" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

# Framed bodies: flag 0, 4-byte big-endian length, then the message.
# kv.SetRequest and etcdserverpb.PutRequest both have key = 1, value = 2;
# kv.GetRequest and etcdserverpb.RangeRequest both have key = 1.
{ printf '\000\000\000\000\155\012\005bench\022\144'
  head -c 100 /dev/zero | tr '\0' v; } >"$tmp/write.bin"
printf '\000\000\000\000\007\012\005bench' >"$tmp/read.bin"

grpc_status() { # url body
    curl -s --http2-prior-knowledge -o /dev/null -D - \
        -H 'content-type: application/grpc' -H 'te: trailers' \
        --data-binary "@$2" "$1" | tr -d '\r' |
        awk -F': ' '$1=="grpc-status" {print $2}'
}

h2run() { # url body conns streams -> prints req/s
    threads=1
    [ "$3" -gt 1 ] && threads=2
    h2load -D "$DUR" -t "$threads" -c "$3" -m "$4" -d "$2" \
        -H 'content-type: application/grpc' -H 'te: trailers' \
        "$1" >"$tmp/h2load.out" 2>&1
    bad=$(awk '/^requests:/ {print $10 + $12 + $14}' "$tmp/h2load.out")
    st=$(grpc_status "$1" "$2")
    if [ "$st" != "0" ] || [ "${bad:-1}" != "0" ]; then
        echo "bench-etcd: $1 failed (grpc-status '$st', h2load errors '$bad')" >&2
        cat "$tmp/h2load.out" >&2
        exit 1
    fi
    awk '/^finished in/ {print $4}' "$tmp/h2load.out"
}

# --- etcd: 3 members on 127.0.0.1 ---
spec=""
for i in 1 2 3; do
    c=$(bench_free_port); p=$(bench_free_port)
    while [ "$c" = "$p" ]; do p=$(bench_free_port); done
    eval "EC$i=$c EP$i=$p"
    spec="${spec:+$spec,}e$i=http://127.0.0.1:$p"
done
for i in 1 2 3; do
    eval "c=\$EC$i p=\$EP$i"
    etcd --name "e$i" --data-dir "$tmp/etcd$i" \
        --listen-client-urls "http://127.0.0.1:$c" \
        --advertise-client-urls "http://127.0.0.1:$c" \
        --listen-peer-urls "http://127.0.0.1:$p" \
        --initial-advertise-peer-urls "http://127.0.0.1:$p" \
        --initial-cluster "$spec" --initial-cluster-state new \
        --initial-cluster-token bench --log-level error \
        2>"$tmp/etcd$i.log" &
    etcd_pids="$etcd_pids $!"
done
ETCD=""
n=0
while [ -z "$ETCD" ]; do
    n=$((n + 1)); [ $n -gt 200 ] && { cat "$tmp"/etcd*.log; exit 1; }
    sleep 0.1
    for i in 1 2 3; do
        eval "c=\$EC$i"
        # the gRPC gateway: {"header":{"member_id":..},"leader":..}
        if curl -sf -X POST -d '{}' \
            "http://127.0.0.1:$c/v3/maintenance/status" 2>/dev/null |
            /usr/bin/python3 -c 'import json,sys
s = json.load(sys.stdin)
sys.exit(0 if s["header"]["member_id"] == s["leader"] else 1)'; then
            ETCD=$c
        fi
    done
done

# --- PyazDB: 3 nodes on 127.0.0.1 ---
bench_start_cluster
PZ=$LEADER_GRPC

echo "== 3-node clusters on 127.0.0.1, gRPC, h2load ${DUR}s per run (connections x streams)"
echo "   etcd $(etcd --version | awk '/^etcd Version/ {print $3}') leader :$ETCD, pyazdb $(src/pyazdb-server --version | awk '{print $2}') leader :$PZ"
for op in write read; do
    if [ $op = write ]; then
        pz="http://127.0.0.1:$PZ/kv.KVService/Set"
        pe="http://127.0.0.1:$PZ/etcdserverpb.KV/Put"
        et="http://127.0.0.1:$ETCD/etcdserverpb.KV/Put"
    else
        pz="http://127.0.0.1:$PZ/kv.KVService/Get"
        pe="http://127.0.0.1:$PZ/etcdserverpb.KV/Range"
        et="http://127.0.0.1:$ETCD/etcdserverpb.KV/Range"
    fi
    for cs in "1 1" "16 1" "64 1" "16 16"; do
        set -- $cs
        a=$(h2run "$pz" "$tmp/$op.bin" "$1" "$2")
        c=$(h2run "$pe" "$tmp/$op.bin" "$1" "$2")
        b=$(h2run "$et" "$tmp/$op.bin" "$1" "$2")
        printf '%-5s %3dx%-3d pyazdb %9s  pyazdb-etcd-api %9s  etcd %9s req/s  %s %s\n' \
            "$op" "$1" "$2" "$a" "$c" "$b" \
            "$(awk -v a="$a" -v b="$b" 'BEGIN {printf "%.2fx", a / b}')" \
            "$(awk -v a="$c" -v b="$b" 'BEGIN {printf "%.2fx", a / b}')"
    done
done
