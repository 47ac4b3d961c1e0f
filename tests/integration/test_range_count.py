"""Counting the keys of a range does not visit them: GET /range with
count_only, etcd Range with count_only or with a limit (its count is every
key of the range) and a transaction's count_only range answer from the
ordered index's spans in O(log n). A burst of such requests over a large
table used to hold the event loop for all of their walks (a million keys:
~80 ms each), long enough to cost a leader its heartbeats."""
import base64
import json
import struct
import threading
import time

import pytest

import raft_wire as rw

# Bounds on the loop's latency: alone, not beside other test files.
pytestmark = pytest.mark.serial

N = 500000  # keys under k/, loaded from a snapshot file
BURST = 100  # concurrent requests of each kind


def b64(s):
    return base64.b64encode(s.encode()).decode()


def restored_node(servers, tmp_path, conf=None, env=None):
    """A node seeded by --restore with N keys k/000000.. (value "v"),
    between a key "a" and a key "z"."""
    keys = [b"a"] + [b"k/%06d" % i for i in range(N)] + [b"z"]
    members = rw.conf_bytes([(1, True, "")])
    # rw.snapshot_file's format (version 1), joined once: N keys
    parts = [b"PYAZSNAP" + struct.pack(">IQQqQI", 1, 1, 1, 0, len(keys),
                                       len(members)) + members]
    parts += [struct.pack(">II", len(k), 1) + k + b"v" for k in keys]
    parts.append(b"PYAZEND\n")
    body = b"".join(parts)
    path = tmp_path / "seed.snap"
    path.write_bytes(body + struct.pack(">Q", rw.crc64(body)))
    s = servers(start=False, conf=conf, env=env,
                args=["--restore", str(path)])
    s.start(wait=False)
    s.wait_ready(timeout=120)
    return s


def long_turns(node, over):
    """Turns of node's event loop that worked longer than `over` seconds
    (a bucket bound of pyazdb_loop_busy_seconds)."""
    m = node.metrics()
    return (m["pyazdb_loop_busy_seconds_count"]
            - m['pyazdb_loop_busy_seconds_bucket{le="%s"}' % over])


def requests():
    """(method, path, body, the count its answer must give) of each kind."""
    rng = {"key": b64("k/"), "range_end": b64("k0")}
    return [
        ("GET", "/range?prefix=k/&count_only=true", None,
         lambda r: r["count"]),
        ("POST", "/v3/kv/range", json.dumps(dict(rng, count_only=True)),
         lambda r: int(r["count"])),
        ("POST", "/v3/kv/range", json.dumps(dict(rng, limit=10)),
         lambda r: int(r["count"]) if len(r["kvs"]) == 10 and r["more"]
         else None),
        ("POST", "/txn", json.dumps({"success": [
            {"range": {"prefix": "k/", "count_only": True}}]}),
         lambda r: r["results"][0]["count"]),
    ]


def test_counts_are_right(servers, tmp_path):
    s = restored_node(servers, tmp_path,
                      conf={"txn-max-range-keys": "1000000"})
    for method, path, body, count in requests():
        st, _, out = s.request(method, path, body)
        assert st == 200, out
        assert count(json.loads(out)) == N, (path, body, out)

    def http_count(q):
        st, _, out = s.request("GET", "/range?" + q)
        assert st == 200, out
        return json.loads(out)["count"]
    assert http_count("from=k/100000&to=k/100100&count_only=true") == 100
    assert http_count("from=k/100000&to=k/100000&count_only=true") == 0
    assert http_count("from=k/200000&to=k/100000&count_only=true") == 0
    assert http_count(f"from=k/{N - 10:06d}&count_only=true") == 11  # and "z"
    assert http_count("from=a&count_only=true") == N + 2
    assert http_count("prefix=k/1234&count_only=true") == 100
    assert http_count("prefix=k/123456&count_only=true") == 1
    assert http_count("prefix=nothing&count_only=true") == 0
    # etcd: one key, a prefix with a limit (count: all of it), to the end
    st, _, out = s.request("POST", "/v3/kv/range", json.dumps(
        {"key": b64("k/000007"), "count_only": True}))
    assert st == 200 and int(json.loads(out)["count"]) == 1, out
    st, _, out = s.request("POST", "/v3/kv/range", json.dumps(
        {"key": b64("k/1"), "range_end": b64("k/2"), "limit": 3}))
    r = json.loads(out)
    assert int(r["count"]) == 100000 and r["more"] is True, out
    assert [base64.b64decode(kv["key"]) for kv in r["kvs"]] == \
        [b"k/100000", b"k/100001", b"k/100002"]
    st, _, out = s.request("POST", "/v3/kv/range", json.dumps(
        {"key": b64(f"k/{N - 2:06d}"), "range_end": b64("\0"), "limit": 1}))
    r = json.loads(out)
    assert int(r["count"]) == 3 and r["more"] is True, out
    # after writes and deletes, the counts follow
    st, _, out = s.request("POST", "/delete", json.dumps({"prefix": "k/1"}))
    assert st in (200, 204), out
    assert s.request("POST", "/set", json.dumps(
        {"key": "k/x", "value": "1"}))[0] == 204
    assert http_count("prefix=k/&count_only=true") == N - 100000 + 1


def test_count_burst_does_not_hold_the_loop(servers, tmp_path):
    """BURST concurrent requests of each counting kind over N keys, all at
    once: every answer is right, no turn of the event loop works for
    0.1 s, and a /health asked meanwhile is answered within 0.5 s every
    time. (With the walks: five turns over 0.1 s, a /health waiting 1.3 s,
    the keys lying in memory in order as a snapshot load leaves them.)"""
    s = restored_node(servers, tmp_path,
                      conf={"txn-max-range-keys": "1000000",
                            "max-clients": "1000"})
    # warm: every kind once (and the loop's first turns after the load)
    for method, path, body, count in requests():
        st, _, out = s.request(method, path, body)
        assert st == 200 and count(json.loads(out)) == N, out
    time.sleep(0.5)
    before = long_turns(s, "0.1")
    errors, health = [], []
    done = threading.Event()

    def one(method, path, body, count):
        try:
            st, _, out = s.request(method, path, body, timeout=60)
            if st != 200 or count(json.loads(out)) != N:
                errors.append((path, st, out[:200]))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append((path, repr(e)))

    def probe():
        while not done.is_set():
            t0 = time.monotonic()
            st, _, _ = s.request("GET", "/health", timeout=30)
            health.append((time.monotonic() - t0, st))
            time.sleep(0.01)

    prober = threading.Thread(target=probe)
    prober.start()
    threads = [threading.Thread(target=one, args=r)
               for r in requests() for _ in range(BURST)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.monotonic() - t0
    time.sleep(0.2)
    done.set()
    prober.join()
    slowest = max(h[0] for h in health)
    print(f"{len(threads)} counts over {N} keys in {took:.2f} s; "
          f"/health slowest {slowest * 1000:.0f} ms of {len(health)}; "
          f"loop turns over 0.1 s: {long_turns(s, '0.1') - before}")
    assert not errors, errors[:3]
    assert all(st == 200 for _, st in health), health
    assert long_turns(s, "0.1") == before, "a turn of the loop took 0.1 s"
    assert slowest < 0.5, slowest


def test_sorted_limited_range_keeps_only_the_limit(servers, tmp_path):
    """etcd's lock and election recipes ask for the oldest or newest key
    under a prefix: a Range sorted by create or mod revision with limit 1.
    Over N keys it once kept a view of every key (64 bytes each: 32 MiB
    here, the server's peak RSS grew by that) and sorted them all in the
    same turn of the loop (~0.5 s, 2 s with the sanitizers); now only the
    limit + 1 views that come first are kept as the walk goes. Every
    sort target, both orders, and a revision filter, with their answers.
    The same ranges in a Txn (a lock's or an election's, and STM's) once
    copied every key out (up to grpc-max-message of keys and values, and
    failed past it); now only the limit + 1 that come first, the peak RSS
    likewise."""
    s = restored_node(servers, tmp_path,
                      conf={"txn-max-range-keys": "1000000"})

    def put(k, v):
        st, _, out = s.request("POST", "/v3/kv/put", json.dumps(
            {"key": b64(k), "value": b64(v)}))
        assert st == 200, out
        return int(json.loads(out)["header"]["revision"])

    put("k/250000", "w")  # a later mod revision, version 2
    put("k/123456", "a")  # the smallest value
    rev = put("k/x", "v")  # the newest key
    rng = {"key": b64("k/"), "range_end": b64("k0")}
    cases = [  # (sort_target, sort_order, limit, filter, keys wanted)
        ("CREATE", "ASCEND", 1, {}, ["k/000000"]),
        ("CREATE", "DESCEND", 1, {}, ["k/x"]),
        ("MOD", "DESCEND", 2, {}, ["k/x", "k/123456"]),
        ("MOD", "ASCEND", 1, {}, ["k/000000"]),
        ("VERSION", "DESCEND", 1, {}, ["k/123456"]),
        ("VALUE", "ASCEND", 1, {}, ["k/123456"]),
        ("VALUE", "DESCEND", 1, {}, ["k/250000"]),
        ("KEY", "DESCEND", 3, {}, ["k/x", "k/499999", "k/499998"]),
        ("KEY", "ASCEND", 1, {"min_mod_revision": str(rev - 1)},
         ["k/123456"]),
        ("CREATE", "NONE", 1, {"max_create_revision": str(rev - 1)},
         ["k/000000"]),
    ]

    def txn(q):
        """q as the one range of a Txn: its answer, as a Range's."""
        st, _, out = s.request("POST", "/v3/kv/txn", json.dumps(
            {"success": [{"request_range": q}]}))
        assert st == 200, out
        return json.loads(out)["responses"][0]["response_range"]

    for target, order, limit, filt, want in cases:  # warm
        q = dict(rng, sort_target=target, sort_order=order, limit=limit,
                 **filt)
        st, _, out = s.request("POST", "/v3/kv/range", json.dumps(q))
        r = json.loads(out)
        assert st == 200, out
        for r in (r, txn(q)):
            assert [base64.b64decode(kv["key"]).decode()
                    for kv in r["kvs"]] == want, (q, r)
            assert r["more"] is True and int(r["count"]) == N + 1, (q, r)
    time.sleep(0.5)
    before = long_turns(s, "0.25")
    with open(f"/proc/{s.proc.pid}/clear_refs", "w") as fh:
        fh.write("5")  # VmHWM := VmRSS
    rss0 = proc_kb(s, "VmRSS")
    for target, order, limit, filt, want in cases:
        q = dict(rng, sort_target=target, sort_order=order, limit=limit,
                 **filt)
        st, _, out = s.request("POST", "/v3/kv/range", json.dumps(q))
        assert st == 200 and len(json.loads(out)["kvs"]) == limit, out
    grown = (proc_kb(s, "VmHWM") - rss0) / 1024
    turns = long_turns(s, "0.25") - before
    print(f"peak RSS growth {grown:.1f} MiB; loop turns over 0.25 s: {turns}")
    assert grown < 8, f"the server's peak RSS grew by {grown:.1f} MiB"
    assert turns == 0, "a turn of the loop took 0.25 s"
    with open(f"/proc/{s.proc.pid}/clear_refs", "w") as fh:
        fh.write("5")
    rss0 = proc_kb(s, "VmRSS")
    for target, order, limit, filt, want in cases:
        q = dict(rng, sort_target=target, sort_order=order, limit=limit,
                 **filt)
        assert len(txn(q)["kvs"]) == limit
    grown = (proc_kb(s, "VmHWM") - rss0) / 1024
    print(f"Txn: peak RSS growth {grown:.1f} MiB")
    assert grown < 8, f"the server's peak RSS grew by {grown:.1f} MiB"


def test_limited_range_stops_its_walk_at_the_limit(servers, tmp_path):
    """A Range with a limit (unsorted) reads its first limit + 1 keys and
    counts the rest in O(log n): 200 of them over N keys keep the loop
    busy for a few milliseconds each at most. Walking the rest of the range
    for each (some 5 ms for N keys lying in order in memory, more under a
    sanitizer) would take a second or more."""
    s = restored_node(servers, tmp_path)
    q = json.dumps({"key": b64("k/"), "range_end": b64("k0"), "limit": 1})
    st, _, out = s.request("POST", "/v3/kv/range", q)
    assert st == 200 and int(json.loads(out)["count"]) == N, out
    busy0 = s.metrics()["pyazdb_loop_busy_seconds_sum"]
    for _ in range(200):
        st, _, out = s.request("POST", "/v3/kv/range", q)
        assert st == 200, out
    busy = s.metrics()["pyazdb_loop_busy_seconds_sum"] - busy0
    print(f"200 limited ranges: the loop busy {busy:.3f} s")
    assert busy < 0.5, busy


def test_range_with_a_limit_past_its_keys_holds_what_an_unlimited_one_does(
        servers, tmp_path):
    """A Range whose limit is past the keys of its range (10^12) can only
    fail when its keys are more than grpc-max-message holds, as an
    unlimited one fails: it once kept a view of every key first (64 bytes
    each: 32 MiB here), sorted or not, and failed only once the answer was
    built. It now stops as soon as the answer cannot fit, as an unlimited
    range does. A limit past the keys of a small range still answers every
    key."""
    # A small ASan quarantine, or memory freed in a sanitizer build is
    # not used again within the test and looks held.
    s = restored_node(servers, tmp_path, conf={
        "grpc-max-message": "1mb", "max-value-size": "512kb"}, env={
        "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:quarantine_size_mb=4"})
    huge = 10**12
    rng = {"key": b64("k/"), "range_end": b64("k0")}
    cases = [dict(rng, limit=huge),
             dict(rng, limit=huge, sort_target="CREATE",
                  sort_order="DESCEND"),
             dict(rng, limit=huge, sort_target="KEY", sort_order="DESCEND"),
             dict(rng, limit=huge, min_mod_revision="1")]
    for q in cases:  # warm
        st, _, out = s.request("POST", "/v3/kv/range", json.dumps(q))
        assert st == 429 and b"use a limit" in out, (q, st, out)
    with open(f"/proc/{s.proc.pid}/clear_refs", "w") as fh:
        fh.write("5")  # VmHWM := VmRSS
    rss0 = proc_kb(s, "VmRSS")
    for q in cases:
        st, _, out = s.request("POST", "/v3/kv/range", json.dumps(q))
        assert st == 429 and b"use a limit" in out, (q, st, out)
    grown = (proc_kb(s, "VmHWM") - rss0) / 1024
    print(f"peak RSS growth {grown:.1f} MiB")
    assert grown < 8, f"the server's peak RSS grew by {grown:.1f} MiB"
    # 20 keys k/01234x: every one, in the order asked
    small = {"key": b64("k/01234"), "range_end": b64("k/01235")}
    for order, want in (("ASCEND", 0), ("DESCEND", 9)):
        st, _, out = s.request("POST", "/v3/kv/range", json.dumps(dict(
            small, limit=huge, sort_target="KEY", sort_order=order)))
        r = json.loads(out)
        assert st == 200, out
        assert len(r["kvs"]) == 10 and not r.get("more"), r
        assert base64.b64decode(r["kvs"][0]["key"]) == b"k/01234%d" % want


def proc_kb(node, field):
    with open(f"/proc/{node.proc.pid}/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field}")
