# PyazDB build. `make` builds src/pyazdb-server and src/pyazdb-cli.
#   make SANITIZER=address|undefined|address,undefined   sanitizer build
#                                      (clean rebuild)
#   make noopt                         -O0 build
#   make test / test-unit / test-integration / lint
#   make test-mutants                  mutation checks (slow; scripts/mutants.py)
#   make bench-kv-mem                  RSS per key of the key-value table
#   make bench-snapshot-load           time to load a snapshot of 1M keys
#   make bench [BENCH=full] [BENCH_ARGS=--noisy]   PyazDB beside etcd and
#                                      Redis: report in bench-report/
#   make run                           mandi and 3 nodes on 127.0.0.1, state in
#                                      ./run/, until Ctrl-C (scripts/cluster.sh)
#   make install PREFIX=/usr/local     install the binaries
#   make deps                          install missing Debian packages
#   make fuzz / fuzz-build / fuzz-regress   libFuzzer targets (tests/fuzz)
# A change of CFLAGS, SANITIZER or OPT forces a clean rebuild (.make-settings).

PREFIX ?= /usr/local
OPT ?= -O2
CC ?= cc
PYTHON ?= /usr/bin/python3

PKGS = libuv libnghttp2 libprotobuf-c sqlite3 libcjson openssl
WARN = -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
       -Wno-missing-field-initializers -Werror
PZ_CFLAGS = -std=gnu11 -g $(OPT) $(WARN) -MMD -MP -D_GNU_SOURCE \
            -Isrc -Isrc/gen -I/usr/share/include/llhttp \
            $(shell pkg-config --cflags $(PKGS) 2>/dev/null) $(CFLAGS)
PZ_LDFLAGS = $(LDFLAGS)
PZ_LIBS = deps/llhttp/libllhttp.a \
          $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lm -lpthread

ifeq ($(SANITIZER),address)
PZ_CFLAGS += -fsanitize=address -fno-omit-frame-pointer
PZ_LDFLAGS += -fsanitize=address
else ifeq ($(SANITIZER),undefined)
PZ_CFLAGS += -fsanitize=undefined -fno-sanitize-recover=all \
             -fno-omit-frame-pointer
PZ_LDFLAGS += -fsanitize=undefined
else ifeq ($(SANITIZER),address,undefined)
# Both in one build: what CI runs, one pass of the suite instead of two.
PZ_CFLAGS += -fsanitize=address,undefined -fno-sanitize-recover=undefined \
             -fno-omit-frame-pointer
PZ_LDFLAGS += -fsanitize=address,undefined
else ifneq ($(SANITIZER),)
$(error SANITIZER must be address, undefined or address,undefined)
endif

PROTOS = $(basename $(notdir $(wildcard proto/*.proto)))
# gRPC's own services (health, reflection) from Debian's grpc-proto, never
# copied into the repository. Reflection v1alpha has the same wire format as
# v1, so only v1 gets C code; both go into the descriptor set.
GRPC_PROTO_DIR ?= /usr/share/grpc-proto
GRPC_PROTOS = grpc/health/v1/health grpc/reflection/v1/reflection
GRPC_DESC_PROTOS = $(GRPC_PROTOS) grpc/reflection/v1alpha/reflection
GEN_C = $(PROTOS:%=src/gen/%.pb-c.c) $(GRPC_PROTOS:%=src/gen/%.pb-c.c)
GEN_H = $(PROTOS:%=src/gen/%.pb-c.h) $(GRPC_PROTOS:%=src/gen/%.pb-c.h)
GEN_O = $(GEN_C:.c=.o) src/gen/descriptors.o

# Modules shared by the server, the CLI and the unit tests.
CORE_SRC = src/pz.c src/config.c src/kv.c src/log.c src/json.c src/metrics.c \
           src/mandi_codec.c src/http_parse.c src/raft.c src/raft_conf.c \
           src/raft_codec.c src/grpc_frame.c src/grpc_pb.c src/grpc_reflect.c \
           src/watch.c src/lease.c src/etcd_map.c src/sha256.c \
           src/tokens.c src/pbjson.c
# I/O modules shared by the server and the CLI.
NET_SRC = src/conn.c src/tls.c src/httpc.c src/grpc_client.c src/stats.c
# I/O modules of the server.
SERVER_SRC = src/main.c src/server.c src/httpd.c src/http.c src/node.c \
             src/node_reqs.c src/node_members.c src/node_snapshot.c \
             src/node_metrics.c src/http_watch.c src/node_lease.c \
             src/node_io_uv.c src/node_nospace.c src/node_status.c \
             src/fwd.c src/store.c src/transport.c src/grpc.c src/mandi.c \
             src/etcd_kv.c src/etcd_cluster.c src/etcd_watch.c \
             src/etcd_lease.c src/etcd_gateway.c \
             src/mandi_client.c src/snapshot.c src/failpoint.c \
             src/reload.c src/sdnotify.c src/tls_setup.c src/auth.c \
             src/turns.c
CLI_SRC = src/cli.c src/cli_conn.c src/cli_snapshot.c src/cli_watch.c

CORE_SRC := $(wildcard $(CORE_SRC))
NET_SRC := $(wildcard $(NET_SRC))
SERVER_SRC := $(wildcard $(SERVER_SRC))
CLI_SRC := $(wildcard $(CLI_SRC))

CORE_O = $(CORE_SRC:.c=.o) $(GEN_O)
NET_O = $(NET_SRC:.c=.o)
SERVER_O = $(SERVER_SRC:.c=.o)
CLI_O = $(CLI_SRC:.c=.o)

UNIT_SRC = $(sort $(wildcard tests/unit/test_*.c))
UNIT_O = $(UNIT_SRC:.c=.o) tests/unit/runner.o

SERVER = src/pyazdb-server
CLI = src/pyazdb-cli
UNIT = tests/unit/test-unit
SIM = tests/unit/raft-sim
KV_MEM = tests/bench/kv-mem
SNAP_LOAD = tests/bench/snap-load

BINS = $(SERVER) $(if $(CLI_SRC),$(CLI))

all: $(BINS)

# --- settings stamp: rebuild everything when flags change -----------------
# Not when only fuzz targets are asked for: they build with clang in
# tests/fuzz/build and must leave this build (and its stamp) alone.
FUZZ_GOALS = fuzz fuzz-build fuzz-regress fuzz-clean deps-fuzz
ONLY_FUZZ := $(if $(MAKECMDGOALS),$(if $(filter-out $(FUZZ_GOALS),\
                                                   $(MAKECMDGOALS)),,yes))
SETTINGS = $(CC) $(PZ_CFLAGS) $(PZ_LDFLAGS) $(SANITIZER)
OBJ_GLOBS = src/*.o src/gen/*.o $(GEN_O) tests/unit/*.o deps/llhttp
ifeq ($(ONLY_FUZZ),)
ifneq ($(shell cat .make-settings 2>/dev/null),$(SETTINGS))
$(shell rm -rf $(OBJ_GLOBS) $(SERVER) $(CLI) $(UNIT); \
        echo '$(SETTINGS)' > .make-settings)
endif
endif

deps/llhttp/libllhttp.a:
	$(MAKE) -C deps CC='$(CC)' DEPS_CFLAGS='-g $(OPT) $(filter -fsanitize%,$(PZ_CFLAGS))'

src/gen/%.pb-c.c src/gen/%.pb-c.h: proto/%.proto
	@mkdir -p src/gen
	protoc-c --proto_path=proto --c_out=src/gen $<

src/gen/grpc/%.pb-c.c src/gen/grpc/%.pb-c.h: $(GRPC_PROTO_DIR)/grpc/%.proto
	@mkdir -p src/gen
	protoc-c --proto_path=$(GRPC_PROTO_DIR) --c_out=src/gen $<

# The FileDescriptorSet served by gRPC server reflection, embedded as a C
# array (grpc_reflect.h declares it): the client-facing protos only (not
# the Raft peer protocol).
API_PROTOS = kv cluster etcd_mvcc etcd_rpc
src/gen/descriptors.pb: $(API_PROTOS:%=proto/%.proto) \
		$(GRPC_DESC_PROTOS:%=$(GRPC_PROTO_DIR)/%.proto)
	@mkdir -p src/gen
	protoc-c --proto_path=proto --proto_path=$(GRPC_PROTO_DIR) \
	    --include_imports --descriptor_set_out=$@ \
	    $(API_PROTOS:%=%.proto) $(GRPC_DESC_PROTOS:%=%.proto)

src/gen/descriptors.c: src/gen/descriptors.pb
	@{ echo '/* Generated from $< by the Makefile. */'; \
	   echo '#include <stddef.h>'; \
	   echo 'extern const unsigned char grpc_descriptor_set[];'; \
	   echo 'extern const size_t grpc_descriptor_set_len;'; \
	   echo 'const unsigned char grpc_descriptor_set[] = {'; \
	   od -An -v -tx1 $< | sed -e 's/ \([0-9a-f][0-9a-f]\)/0x\1,/g'; \
	   echo '};'; \
	   echo 'const size_t grpc_descriptor_set_len = sizeof grpc_descriptor_set;'; \
	 } > $@.tmp && mv $@.tmp $@

src/gen/%.pb-c.o: src/gen/%.pb-c.c
	$(CC) $(filter-out -Wmissing-prototypes -Wshadow,$(PZ_CFLAGS)) -c $< -o $@

ALL_O = $(CORE_O) $(NET_O) $(SERVER_O) $(CLI_O) $(UNIT_O)
$(ALL_O): | $(GEN_H)

# pyazdb_build_info's commit label: rewritten only when HEAD moves, so
# only stats.o is rebuilt then ("unknown" outside a git checkout).
src/gen/commit.h: FORCE
	@mkdir -p src/gen; \
	 c=$$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown); \
	 n="#define PZ_COMMIT \"$$c\""; \
	 [ "$$(cat $@ 2>/dev/null)" = "$$n" ] || echo "$$n" > $@
src/stats.o: src/gen/commit.h
FORCE:

%.o: %.c
	$(CC) $(PZ_CFLAGS) -c $< -o $@

$(SERVER): $(CORE_O) $(NET_O) $(SERVER_O) deps/llhttp/libllhttp.a
	$(CC) $(PZ_LDFLAGS) -o $@ $(CORE_O) $(NET_O) $(SERVER_O) $(PZ_LIBS)

# The CLI checks the snapshots it downloads with the server's reader.
CLI_LINK_O = $(CORE_O) $(NET_O) $(CLI_O) src/snapshot.o src/failpoint.o
$(CLI): $(CLI_LINK_O) deps/llhttp/libllhttp.a
	$(CC) $(PZ_LDFLAGS) -o $@ $(CLI_LINK_O) $(PZ_LIBS)

tests/unit/suites.h: $(UNIT_SRC) Makefile
	@{ for f in $(UNIT_SRC); do n=$$(basename $$f .c); n=$${n#test_}; \
	     echo "extern const struct test_suite suite_$$n;"; done; \
	   echo "static const struct test_suite *const all_suites[] = {"; \
	   for f in $(UNIT_SRC); do n=$$(basename $$f .c); n=$${n#test_}; \
	     echo "    &suite_$$n,"; done; \
	   echo "    NULL};"; } > $@.tmp && mv $@.tmp $@

tests/unit/runner.o: tests/unit/suites.h

# Unit tests link every module but main(), so I/O modules can be tested
# on a real loop in the same process (e.g. grpc_client against grpc).
UNIT_LINK_O = $(CORE_O) $(NET_O) $(filter-out src/main.o,$(SERVER_O)) \
              $(UNIT_O)
$(UNIT): $(UNIT_LINK_O) deps/llhttp/libllhttp.a
	$(CC) $(PZ_LDFLAGS) -o $@ $(UNIT_LINK_O) $(PZ_LIBS)

# The Raft simulation as a standalone binary (the same file is also a unit
# suite with a few seeds). SIM_SEEDS=n sets the number of seeds.
$(SIM): tests/unit/test_raft_sim.c $(CORE_O) deps/llhttp/libllhttp.a
	$(CC) $(PZ_CFLAGS) -DRAFT_SIM_MAIN $(PZ_LDFLAGS) -o $@ $< $(CORE_O) \
	    $(PZ_LIBS)

# The node driver under the deterministic simulation, standalone
# (NODE_SIM_SEEDS=n seeds, NODE_SIM_SEED=n one seed; also a unit suite).
NODE_SIM = tests/unit/node-sim
NODE_SIM_LINK_O = $(CORE_O) $(NET_O) $(filter-out src/main.o,$(SERVER_O))
$(NODE_SIM): tests/unit/test_node_sim.c $(NODE_SIM_LINK_O) \
             deps/llhttp/libllhttp.a
	$(CC) $(PZ_CFLAGS) -DNODE_SIM_MAIN $(PZ_LDFLAGS) -o $@ $< \
	    $(NODE_SIM_LINK_O) $(PZ_LIBS)

# --- convenience targets -------------------------------------------------------
deps:
	@scripts/install-deps.sh build

deps-test:
	@scripts/install-deps.sh test

noopt:
	$(MAKE) OPT=-O0

valgrind:
	$(MAKE) OPT=-O0 SANITIZER=

test: deps-test
	$(MAKE) lint
	$(MAKE) all $(UNIT)
	$(MAKE) test-unit
	$(MAKE) test-sim
	$(MAKE) test-integration

test-unit: $(UNIT)
	$(UNIT) $(TESTS)

# Under a sanitizer the Raft simulation runs 3,000 other seeds (10,001 on)
# rather than the plain build's 10,000 from 1: a sanitizer build is five
# times slower, and CI runs both, so each run covers seeds the other does
# not. SIM_FIRST and SIM_SEEDS still choose.
test-sim: $(SIM) $(NODE_SIM)
	$(if $(SANITIZER),SIM_FIRST=$${SIM_FIRST:-10001} \
	    SIM_SEEDS=$${SIM_SEEDS:-3000}) $(SIM)
	$(NODE_SIM)

# Memory of the key-value table: RSS per key for 1M 16-byte keys with
# 100-byte values (KV_MEM_KEYS=n for another count). Not part of `test`.
$(KV_MEM): tests/bench/kv_mem.c $(CORE_O) deps/llhttp/libllhttp.a
	$(CC) $(PZ_CFLAGS) $(PZ_LDFLAGS) -o $@ $< $(CORE_O) $(PZ_LIBS)

bench-kv-mem: $(KV_MEM)
	$(KV_MEM) $(KV_MEM_KEYS)

# The snapshot loader alone (what a restart spends most of its time on):
# writes SNAP_LOAD_KEYS (1M) keys into a temporary directory, loads them
# three times. Not part of `test`.
$(SNAP_LOAD): tests/bench/snap_load.c $(CORE_O) src/snapshot.o \
              src/failpoint.o deps/llhttp/libllhttp.a
	$(CC) $(PZ_CFLAGS) $(PZ_LDFLAGS) -o $@ $< $(CORE_O) src/snapshot.o \
	    src/failpoint.o $(PZ_LIBS)

bench-snapshot-load: $(SNAP_LOAD)
	@d=$$(mktemp -d); trap 'rm -rf "$$d"' EXIT; \
	 f=$$($(SNAP_LOAD) make "$$d" $${SNAP_LOAD_KEYS:-1000000}) && \
	 $(SNAP_LOAD) load "$$f" 3 && $(SNAP_LOAD) load "$$f" 1 thread

# The side-by-side benchmark (scripts/bench.py): quick by default.
BENCH ?= quick
bench:
	scripts/install-deps.sh bench
	$(MAKE) all
	/usr/bin/python3 scripts/bench.py --$(BENCH) $(BENCH_ARGS)

test-sim-long: $(SIM) $(NODE_SIM)
	SIM_SEEDS=$${SIM_SEEDS:-100000} $(SIM)
	NODE_SIM_SEEDS=$${NODE_SIM_SEEDS:-2000} $(NODE_SIM)

# Mutation checks (scripts/mutants.py): plants each listed bug in a scratch
# copy of the tree, builds it and runs the tests that should catch it.
# Minutes, not part of `make test`; MUTANTS=a,b selects.
test-mutants:
	$(PYTHON) scripts/mutants.py

# The power-cut library the integration tests preload into servers
# (tests/powerloss/powerloss.c): no sanitizer, it loads into any build.
POWERLOSS = tests/powerloss/libpowerloss.so
$(POWERLOSS): tests/powerloss/powerloss.c
	$(CC) -std=gnu11 -g -O2 $(WARN) -Wno-missing-prototypes -fPIC -shared \
	    -o $@ $< -ldl -lpthread

# --durations: the slowest tests, to keep CI's time in check. The files
# run TEST_WORKERS at once (pytest-xdist; each file whole in one worker,
# its tests in order): most of the suite's time is spent waiting on
# servers (elections, timeouts, fsync), not computing. Then the tests
# marked serial (bounds on the loop's latency too tight to share the
# CPUs) run alone. TEST_WORKERS=0 runs everything in one process; the
# default is two per CPU, at most 8. A selection (PYTEST_ARGS) may leave
# one of the two runs empty, not both.
TEST_WORKERS ?= $(shell n=$$(( $$(nproc) * 2 )); echo $$(( n > 8 ? 8 : n )))
PYTEST = PYAZDB_SANITIZER='$(SANITIZER)' $(PYTHON) -m pytest -q \
         -p no:cacheprovider --durations=15
test-integration: $(BINS) $(POWERLOSS)
ifeq ($(TEST_WORKERS),0)
	$(PYTEST) tests/integration $(PYTEST_ARGS)
else
	$(PYTEST) -n $(TEST_WORKERS) --dist loadfile -m 'not serial' \
	    tests/integration $(PYTEST_ARGS); a=$$?; \
	$(PYTEST) -m serial tests/integration $(PYTEST_ARGS); b=$$?; \
	[ $$a -eq 0 -o $$a -eq 5 ] && [ $$b -eq 0 -o $$b -eq 5 ] && \
	    [ $$a -eq 0 -o $$b -eq 0 ]
endif

# The chaos test (tests/chaos/chaos.py): the checker's own tests, then
# CHAOS_RUNS runs of CHAOS_TIME seconds on 3 and on 5 nodes under every
# nemesis, in a network namespace of its own when the machine allows one
# (partitions need it). CHAOS_SEED fixes the first seed.
CHAOS_TIME ?= 20
CHAOS_RUNS ?= 1
CHAOS_ARGS = --time $(CHAOS_TIME) --runs $(CHAOS_RUNS) \
             $(if $(CHAOS_SEED),--seed $(CHAOS_SEED))
CHAOS_NETNS = $(shell unshare -n true 2>/dev/null && echo unshare -n)

deps-chaos:
	@scripts/install-deps.sh chaos

test-chaos: deps-chaos $(BINS)
	$(PYTHON) -m pytest -q -p no:cacheprovider tests/chaos
	$(CHAOS_NETNS) $(PYTHON) tests/chaos/chaos.py --nodes 3 $(CHAOS_ARGS)
	$(CHAOS_NETNS) $(PYTHON) tests/chaos/chaos.py --nodes 5 $(CHAOS_ARGS)

# --- fuzzing: libFuzzer harnesses (tests/fuzz), clang + ASan + UBSan ------
# Their own build directory (tests/fuzz/build), objects and settings stamp.
# make fuzz: replay the saved inputs, then fuzz each target FUZZ_TIME
# seconds (default 60); FUZZ_TARGETS="config snapshot" narrows it.
FUZZ_MAKE = $(MAKE) -C tests/fuzz $(if $(FUZZ_TARGETS),FUZZ_TARGETS='$(FUZZ_TARGETS)')

deps-fuzz:
	@scripts/install-deps.sh fuzz

fuzz-build: deps-fuzz
	+$(FUZZ_MAKE) build

fuzz-regress: fuzz-build
	+$(FUZZ_MAKE) regress

fuzz: fuzz-regress
	+$(FUZZ_MAKE) run

fuzz-clean:
	+$(MAKE) -C tests/fuzz clean

# Foreground until Ctrl-C; `scripts/cluster.sh restart|status|stop` from
# another terminal. The script does not build again (CLUSTER_BUILD=no): a
# `make run SANITIZER=...` keeps its build.
run: deps
	$(MAKE) all
	CLUSTER_BUILD=no scripts/cluster.sh run 3

# Pure modules include no libuv and no I/O module; the consensus and state
# machine cores also call no clock, random source or file function (time
# is ticks, randomness a seeded PRNG: docs/DESIGN.md); the mutation list
# (scripts/mutants.py) still matches the source it edits.
lint:
	@bad=$$(grep -lE '#include (<uv\.h>|"($(IO_HDRS))\.h")' $(PURE_SRC)); \
	if [ -n "$$bad" ]; then echo "lint: pure modules include I/O:" $$bad; \
	    exit 1; fi; \
	bad=$$(grep -nE '\b($(IMPURE_CALLS))\(' $(CORE_PURE)); \
	if [ -n "$$bad" ]; then echo "lint: clock, random or file calls in a"\
	    "pure core:"; echo "$$bad"; exit 1; fi; \
	$(PYTHON) scripts/mutants.py --check >/dev/null || exit 1; \
	echo "lint: ok"
PURE_SRC = src/pz.c src/kv.c src/config.c src/json.c src/mandi_codec.c \
           src/metrics.c src/metrics.h \
           src/http_parse.c src/raft.c src/raft_conf.c src/raft_codec.c \
           src/grpc_frame.c src/grpc_pb.c src/grpc_reflect.c src/kv.h \
           src/etcd_map.c src/etcd_map.h src/sha256.c src/sha256.h \
           src/raft.h src/raft_codec.h src/config.h src/http_parse.h \
           src/grpc_frame.h src/grpc_pb.h src/grpc_reflect.h src/json.h \
           src/mandi_codec.h src/watch.c src/watch.h src/lease.c src/lease.h \
           src/pbjson.c src/pbjson.h src/tokens.c src/tokens.h
CORE_PURE = src/raft.c src/raft_conf.c src/raft_codec.c src/kv.c src/lease.c \
            src/watch.c
IO_HDRS = conn|node|node_internal|node_metrics|stats|transport|store
IO_HDRS := $(IO_HDRS)|server|snapshot|fwd|grpc
IO_HDRS := $(IO_HDRS)|http|httpd|httpc|mandi|mandi_client|grpc_client|log|failpoint
IMPURE_CALLS = rand|srand|random|time|clock_gettime|gettimeofday|getrandom
IMPURE_CALLS := $(IMPURE_CALLS)|fopen|open|read|write|uv_now|uv_hrtime

install: all
	install -d $(DESTDIR)$(PREFIX)/bin
	install -m 755 $(BINS) $(DESTDIR)$(PREFIX)/bin/

clean-objs:
	rm -rf $(OBJ_GLOBS) src/*.d src/gen/*.d tests/unit/*.d

clean: clean-objs
	rm -rf src/gen $(SERVER) $(CLI) $(UNIT) $(SIM) $(NODE_SIM) $(POWERLOSS) $(KV_MEM) $(SNAP_LOAD) \
	    tests/unit/suites.h .make-settings tests/fuzz/build

.PHONY: all deps deps-test noopt valgrind test test-unit test-sim bench-kv-mem \
        bench-snapshot-load bench \
        test-sim-long test-mutants test-integration deps-chaos test-chaos \
        deps-fuzz fuzz fuzz-build fuzz-regress fuzz-clean \
        run lint install clean clean-objs FORCE

-include $(ALL_O:.o=.d)
