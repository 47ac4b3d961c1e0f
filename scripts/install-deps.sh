#!/bin/sh
# install-deps.sh - install the Debian 12 packages PyazDB needs, if missing.
#   scripts/install-deps.sh build   packages to build the server
#   scripts/install-deps.sh test    build packages plus the test clients
#   scripts/install-deps.sh bench   test packages plus benchmark tools
#   scripts/install-deps.sh fuzz    build packages plus clang and libFuzzer
#   scripts/install-deps.sh chaos   test packages (make test-chaos)
# Runs apt-get as root, through sudo otherwise. Does nothing (and needs no
# network) when everything is already installed.
set -eu

# libssl-dev: TLS (OpenSSL 3, src/tls.c).
build="gcc make pkg-config libc6-dev libuv1-dev libnghttp2-dev libprotobuf-c-dev
protobuf-c-compiler libsqlite3-dev libcjson-dev node-llhttp grpc-proto
libssl-dev"
# make fuzz: clang 14 with compiler-rt (libFuzzer, ASan, UBSan runtimes);
# protoc writes the seed corpora (tests/fuzz/mkseeds.py), when rewritten.
fuzz_only="clang libclang-rt-14-dev"
fuzz="$build $fuzz_only"
# python3-pytest-xdist: make test-integration runs test files side by side.
# systemd: systemd-analyze verifies the units in scripts/systemd (installing
# the package starts nothing in a container without systemd running).
# util-linux: setsid (scripts/cluster.sh), setpriv (a test runs the server
# as another user). faketime: a test moves a node's wall clock. strace: a
# test makes a node's fdatasync fail with EIO (strace --inject); mount
# (util-linux) mounts the small tmpfs of the disk-full tests, as root.
# openssl: the TLS tests make their certificates with the command line
# (scripts/make-certs.sh) and probe with `openssl s_client`.
# prometheus: promtool checks the GET /metrics pages and the alerting
# rules (installing the package starts no server without systemd).
# etcd-client: etcdctl 3.4 drives PyazDB's etcd v3 API in the tests;
# etcd-server: the same commands run against a real etcd 3.4 to compare
# (installing it starts no server without systemd).
# python3-etcd3gw: an etcd client library of etcd's JSON gateway, which
# drives PyazDB's /v3/ gateway in the tests.
# iptables, iproute2: partitions in a network namespace of the test's own
# (the Pre-Vote/CheckQuorum tests, protected mode, the chaos test).
# The reflection and etcd3 tests run Node.js clients that npm installs:
# Debian's nodejs and npm, unless node and npm are there already
# (NodeSource's nodejs bundles npm and conflicts with Debian's npm).
node="nodejs npm"
command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 && node=""
test="$build curl nghttp2-client openssl python3 python3-pytest python3-grpcio
python3-protobuf python3-pytest-timeout python3-pytest-xdist python3-hpack protobuf-compiler procps systemd
util-linux faketime strace prometheus etcd-client etcd-server python3-etcd3gw
iptables iproute2 $fuzz_only $node"
bench="$test wrk redis-server redis-tools gnuplot-nox stress-ng"
chaos="$test"

case "${1:-build}" in
build) want=$build ;;
test) want=$test ;;
bench) want=$bench ;;
fuzz) want=$fuzz ;;
chaos) want=$chaos ;;
*) echo "usage: $0 build|test|bench|fuzz|chaos" >&2; exit 2 ;;
esac

missing=""
for p in $want; do
    st=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
    [ "$st" = "installed" ] || missing="$missing $p"
done
[ -z "$missing" ] && exit 0

echo "install-deps: installing:$missing" >&2
if [ "$(id -u)" = 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
else
    echo "install-deps: need root or sudo to install:$missing" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
# shellcheck disable=SC2086
$SUDO apt-get install -y -q --no-install-recommends $missing
