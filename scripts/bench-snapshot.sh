#!/bin/sh
# bench-snapshot.sh - snapshot file write and load times for a large table.
#
#   scripts/bench-snapshot.sh [keys] [dir]   (default 1000000 keys, /tmp)
#
# Runs the unit test snapshot/bench_1m, which builds a table of `keys`
# entries (16-byte keys, 100-byte values), writes it with the forked writer
# while the parent keeps applying sets, writes it again with the synchronous
# writer, then loads it into a fresh table and verifies it without loading.
# Prints fork() time, time until the child is done, file size, load and
# verify times. Figures only: nothing is asserted beyond success. The files
# go to a temporary directory under `dir` (pick one on the disk you care
# about) and are removed afterwards.
set -eu
cd "$(dirname "$0")/.."
KEYS=${1:-1000000}
DIR=${2:-/tmp}
make -s tests/unit/test-unit
PYAZDB_SNAPSHOT_BENCH=$KEYS PYAZDB_SNAPSHOT_BENCH_DIR=$DIR \
    tests/unit/test-unit snapshot/bench_1m
