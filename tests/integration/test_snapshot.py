"""Snapshots and log compaction: the original program lost every key
written before a snapshot on restart; here nothing is lost, lagging nodes
catch up by InstallSnapshot, and a crash at any failure point leaves a
consistent state."""
import json
import os
import random
import signal
import sqlite3
import threading
import time

import pytest

from conftest import log_rows
from test_cluster import make_cluster, leader_of, put, get, wait_value

SNAP = {"raft-snapshot-entries": "500", "raft-trailing-entries": "100"}


def write_many(node, keys, threads=8):
    """Write key=value for every key through node, from several threads.
    Returns the acknowledged keys."""
    acked = set()
    lock = threading.Lock()
    chunks = [keys[i::threads] for i in range(threads)]

    def run(chunk):
        import http.client
        c = http.client.HTTPConnection("127.0.0.1", node.http_port, timeout=10)
        for k in chunk:
            c.request("POST", "/set", json.dumps({"key": k, "value": "v-" + k}))
            r = c.getresponse()
            r.read()
            if r.status == 204:
                with lock:
                    acked.add(k)
        c.close()
    ts = [threading.Thread(target=run, args=(ch,)) for ch in chunks]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    return acked


def read_barrier(node, deadline):
    """A linearizable read on node: once it answers, the node has applied
    everything the leader had committed, including what a restart left
    past the persisted commit index (applied when the new term's no-op
    commits). 200 and 404 both count; 503 (no leader yet) is retried."""
    while time.time() < deadline:
        try:
            if get(node, "barrier", timeout=3)[0] in (200, 404):
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{node.name}: no linearizable read succeeded")


def settled(nodes, timeout=30):
    """Wait until every node applied the same index; return the statuses."""
    deadline = time.time() + timeout
    for s in nodes:
        read_barrier(s, deadline)
    sts = None
    while time.time() < deadline:
        sts = [s.status() for s in nodes]
        if len({st["applied_index"] for st in sts}) == 1 and \
                len({st["digest"] for st in sts}) == 1:
            return sts
        time.sleep(0.2)
    raise AssertionError(f"nodes never agreed: {sts}")


def wait_snapshot_index(nodes, above, timeout=15):
    """Snapshots are written by a forked child and recorded on a later
    tick; followers apply on later heartbeats: poll."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = [s.status()["snapshot_index"] for s in nodes]
        if min(got) > above:
            return
        time.sleep(0.1)
    raise AssertionError(f"snapshot_index {got}, expected > {above}")


def test_restart_after_snapshots_keeps_every_key(servers):
    nodes = make_cluster(servers, conf=SNAP)
    leader = leader_of(nodes)
    keys = [f"key{i:05d}" for i in range(20000)]
    acked = write_many(leader, keys)
    assert len(acked) == len(keys)
    sts = settled(nodes)
    assert all(st["snapshot_index"] > 0 for st in sts)
    digest = sts[0]["digest"]
    for s in nodes:
        s.kill()
    for s in nodes:
        s.start(wait=False)
    for s in nodes:
        s.wait_ready()
    leader_of(nodes)
    sts = settled(nodes)
    for st in sts:
        assert st["keys"] == 20000
        assert st["digest"] == digest
    for s in nodes:
        for k in random.Random(1).sample(keys, 200):
            assert get(s, k, stale=True)[2] == ("v-" + k).encode()
    # the log stays bounded: a few snapshots' worth, not 20000 entries
    # (a snapshot counts its entries once they hold an eighth of its size)
    nodes[0].stop()
    db = sqlite3.connect(
        "file:" + os.path.join(nodes[0].dir, "data", "raft.db") + "?mode=ro",
        uri=True)
    try:
        rows = len(db.execute(log_rows("idx")).fetchall())
    finally:
        db.close()
    assert 0 < rows < 5000, rows


def test_lagging_node_catches_up_by_install_snapshot(servers):
    nodes = make_cluster(servers, conf=SNAP)
    leader = leader_of(nodes)
    lagging = next(s for s in nodes if s is not leader)
    assert put(leader, "early", "1")[0] == 204
    wait_value(lagging, "early", "1")
    lagging.stop()
    acked = write_many(leader, [f"k{i}" for i in range(3000)])
    assert len(acked) == 3000
    live = [s for s in nodes if s is not lagging]
    wait_snapshot_index(live, 1000)
    lagging.start()
    sts = settled(nodes)
    assert sts[0]["keys"] == 3001
    log = lagging.read_log()
    assert "installed snapshot" in log
    assert get(lagging, "k2999")[2] == b"v-k2999"


def lag_behind_a_snapshot(servers):
    """A cluster whose follower `lagging` (stopped) can only catch up by
    InstallSnapshot: (nodes, leader, lagging)."""
    nodes = make_cluster(servers, conf=SNAP)
    leader = leader_of(nodes)
    lagging = next(s for s in nodes if s is not leader)
    lagging.stop()
    assert len(write_many(leader, [f"k{i}" for i in range(3000)])) == 3000
    wait_snapshot_index([s for s in nodes if s is not lagging], 1000)
    return nodes, leader, lagging


@pytest.mark.serial  # requests wait at most 0.5 s
def test_received_snapshot_loads_while_the_node_serves(servers):
    """A received snapshot is checked and loaded off the loop. Its load
    held for 3 s (a failpoint standing in for a large table), the
    follower must answer its clients all along; the leader's
    INSTALL_SNAPSHOT, which comes while the table loads, must be held and
    installed as soon as the load ends; and the leader must not send the
    file again meanwhile (the follower's refusals of its probes would
    make it start over at every heartbeat), nor once it is loaded."""
    nodes, leader, lagging = lag_behind_a_snapshot(servers)
    lagging.env["PYAZDB_FAILPOINT"] = "install-loading:sleep=3000"
    seen = len(leader.read_log())
    lagging.start()
    deadline = time.time() + 20
    while "checking and loading it" not in lagging.read_log():
        assert time.time() < deadline, lagging.read_log()
        time.sleep(0.02)
    loading_since = time.time()
    answered, slowest = 0, 0.0
    while "received snapshot at index" not in lagging.read_log():
        assert time.time() - loading_since < 15, lagging.read_log()
        t0 = time.time()
        st, _, _ = lagging.request("GET", "/health?serializable=true",
                                   timeout=5)
        slowest = max(slowest, time.time() - t0)
        assert st == 200
        answered += 1
        time.sleep(0.05)
    loaded = time.time()
    assert loaded - loading_since > 2.5, "the load was not held"
    assert answered >= 20, answered
    assert slowest < 0.5, f"a request waited {slowest:.2f} s for the loop"
    while "installed snapshot" not in lagging.read_log():
        assert time.time() - loaded < 2, (
            "the INSTALL_SNAPSHOT that came during the load was not held:\n"
            + lagging.read_log())
        time.sleep(0.02)
    sts = settled(nodes)
    assert sts[0]["keys"] == 3000
    assert get(lagging, "k2999")[2] == b"v-k2999"
    # The file went once (a send cut short by the restarted link may
    # start it twice): not at every heartbeat while the follower loaded
    # it, and not again once loaded for its message.
    sends = [line for line in leader.read_log()[seen:].splitlines()
             if " sending snapshot at index " in line]
    assert 1 <= len(sends) <= 3, sends
    loaded_at = next(line for line in lagging.read_log().splitlines()
                     if " received snapshot at index " in line)[:24]
    assert all(line[:24] < loaded_at for line in sends), (loaded_at, sends)


def test_held_install_is_not_taken_from_a_quiet_leader(servers):
    """The INSTALL_SNAPSHOT held while its file loads is as old as the
    load: once the leader went quiet meanwhile, handing it to the core
    would count as fresh word from a live leader (its election timer
    reset, votes refused for another timeout). It must not be taken; once
    the leader is back, the install goes through."""
    nodes, leader, lagging = lag_behind_a_snapshot(servers)
    other = next(s for s in nodes if s not in (leader, lagging))
    lagging.env["PYAZDB_FAILPOINT"] = "install-loading:sleep=3000"
    lagging.start()
    deadline = time.time() + 20
    while "checking and loading it" not in lagging.read_log():
        assert time.time() < deadline, lagging.read_log()
        time.sleep(0.02)
    time.sleep(0.5)  # the INSTALL_SNAPSHOT follows the file at once
    # No heartbeat and no election while the load ends.
    leader.signal(signal.SIGSTOP)
    other.signal(signal.SIGSTOP)
    try:
        while "received snapshot at index" not in lagging.read_log():
            assert time.time() < deadline, lagging.read_log()
            time.sleep(0.02)
        time.sleep(0.5)
        log = lagging.read_log()
        assert "its install message is not taken" in log, log
        assert "installed snapshot" not in log, log
    finally:
        leader.signal(signal.SIGCONT)
        other.signal(signal.SIGCONT)
    sts = settled(nodes)
    assert sts[0]["keys"] == 3000
    assert "installed snapshot" in lagging.read_log()


def test_admin_snapshot_and_status(servers):
    s = servers(conf={"cluster-token": "tok"})
    for i in range(50):
        assert put(s, f"a{i}", "x")[0] == 204
    st, _, body = s.request("POST", "/admin/snapshot")
    assert st == 401
    st, _, body = s.request("POST", "/admin/snapshot",
                            headers={"Authorization": "Bearer tok"})
    assert st == 200, body
    r = json.loads(body)
    assert r["snapshot_index"] >= 50 and r["snapshot_size"] > 50 * 10
    status = s.status()
    assert status["snapshot_index"] == r["snapshot_index"]
    s.stop()
    s.start()
    # a linearizable read first: after a restart the entries past the
    # persisted commit index are applied once the new term's no-op commits,
    # and /status reports the applied state without waiting for that
    assert get(s, "a49")[2] == b"x"
    assert s.status()["keys"] == 50
    assert "loaded snapshot" in s.read_log()


def log_entries(server):
    st, _, text = server.request("GET", "/metrics")
    assert st == 200
    for line in text.decode().splitlines():
        if line.startswith("pyazdb_raft_log_entries "):
            return float(line.split()[1])
    raise AssertionError("no pyazdb_raft_log_entries in /metrics")


def test_large_entries_bound_the_log_by_bytes(servers):
    """Entries of 100 KB: a snapshot comes after raft-snapshot-bytes of
    them (long before raft-snapshot-entries), and no more than
    raft-trailing-bytes of them stay behind it, so the log held in memory
    stays small however large the values."""
    s = servers(conf={"raft-snapshot-bytes": "1mb",
                      "raft-trailing-bytes": "250kb"})
    value = "x" * 100_000
    for i in range(40):  # 4 MB of entries, 40 of them
        assert put(s, f"big{i}", value)[0] == 204
    deadline = time.time() + 30
    while s.status()["snapshot_index"] == 0 and time.time() < deadline:
        time.sleep(0.1)
    assert s.status()["snapshot_index"] > 0  # by bytes: 65536 entries by count
    st, _, body = s.request("POST", "/admin/snapshot")
    assert st == 200, body
    # behind the snapshot, at most 250 KB of entries: two of 100 KB (and
    # maybe empty ones), not the raft-trailing-entries (10240) default
    assert log_entries(s) <= 4
    s.stop()
    s.start()
    assert get(s, "big39")[2] == value.encode()
    assert s.status()["keys"] == 40
    assert log_entries(s) <= 4


@pytest.mark.parametrize("point", ["snapshot-before-rename",
                                   "snapshot-after-rename",
                                   "before-log-truncate",
                                   "after-log-truncate"])
def test_crash_at_failure_point(servers, point):
    s = servers(conf={"raft-snapshot-entries": "200",
                      "raft-trailing-entries": "50"})
    s.stop()
    s.env["PYAZDB_FAILPOINT"] = point
    s.start()
    acked = []
    for i in range(2000):
        try:
            st, _, _ = put(s, f"f{i}", str(i), timeout=3)
        except OSError:
            break
        if st != 204:
            break
        acked.append(i)
    assert s.wait_exit(10) == 99, s.read_log()
    assert f"failpoint {point}" in s.read_log() or point in s.read_log()
    del s.env["PYAZDB_FAILPOINT"]
    s.start()
    for i in acked[::37] + acked[-3:]:
        assert get(s, f"f{i}")[2] == str(i).encode(), i
    assert s.status()["keys"] >= len(acked)


def test_crash_mid_install_then_recovery(servers):
    nodes = make_cluster(servers, conf=SNAP)
    leader = leader_of(nodes)
    lagging = next(s for s in nodes if s is not leader)
    lagging.stop()
    assert len(write_many(leader, [f"m{i}" for i in range(1500)])) == 1500
    lagging.env["PYAZDB_FAILPOINT"] = "install-mid"
    lagging.start(wait=False)  # it may die before it answers /health
    assert lagging.wait_exit(20) == 99
    del lagging.env["PYAZDB_FAILPOINT"]
    lagging.start()
    sts = settled(nodes)
    assert sts[0]["keys"] == 1500


def test_damaged_snapshot_falls_back_or_refuses(servers):
    # plenty of trailing entries: an older snapshot plus the log suffices
    s = servers(conf={"raft-snapshot-entries": "100",
                      "raft-trailing-entries": "1000"})
    for i in range(350):
        assert put(s, f"d{i}", str(i))[0] == 204
    time.sleep(0.5)
    s.stop()
    data = os.path.join(s.dir, "data")
    snaps = sorted(f for f in os.listdir(data) if f.endswith(".snap"))
    assert len(snaps) >= 2
    newest = max(snaps, key=lambda f: int(f.split("-")[1]))
    with open(os.path.join(data, newest), "r+b") as f:
        f.seek(200)
        f.write(b"\xff" * 16)
    s.start()
    assert "damaged snapshot" in s.read_log()
    assert get(s, "d349")[2] == b"349"  # read barrier, see above
    assert s.status()["keys"] == 350


def test_damaged_snapshot_without_fallback_refuses_to_start(servers):
    s = servers(conf={"raft-snapshot-entries": "100",
                      "raft-trailing-entries": "0"})
    for i in range(250):
        assert put(s, f"e{i}", str(i))[0] == 204
    time.sleep(0.5)
    s.stop()
    data = os.path.join(s.dir, "data")
    for f in os.listdir(data):
        if f.endswith(".snap"):
            with open(os.path.join(data, f), "r+b") as fh:
                fh.seek(100)
                fh.write(b"\x00" * 32)
    s.start(wait=False)
    assert s.wait_exit(10) != 0
    assert "no valid snapshot" in s.read_log()


def test_new_node_joins_a_compacted_cluster_by_snapshot(servers, mandi):
    from test_join import grow, start_joining, wait_voters
    conf = dict(SNAP)
    nodes = grow(servers, mandi, n=2, conf=conf)
    leader = leader_of(nodes)
    assert len(write_many(leader, [f"j{i}" for i in range(2000)])) == 2000
    wait_snapshot_index([leader], 1000)
    new = start_joining(servers, mandi, "node3", conf)
    wait_voters(leader, ["node1", "node2", "node3"])
    sts = settled(nodes + [new])
    assert sts[0]["keys"] == 2000
    assert "installed snapshot" in new.read_log()


def test_small_writes_do_not_rewrite_a_large_table(servers):
    """A snapshot is taken after raft-snapshot-entries entries only once
    they carry an eighth of the last snapshot's size: a large table is not
    rewritten for a trickle of small writes; enough bytes then do take
    one."""
    s = servers(conf={"raft-snapshot-entries": "50"})
    acked = write_many(s, [f"k{i:05d}-" + "v" * 2000 for i in range(1500)])
    assert len(acked) == 1500
    st, _, body = s.request("POST", "/admin/snapshot")
    assert st == 200, body
    snap = json.loads(body)
    assert snap["snapshot_size"] > 3 * 1024 * 1024
    for i in range(120):  # 120 entries of well under 100 bytes
        assert put(s, f"small{i}", "s")[0] == 204
    time.sleep(1.0)  # a snapshot would have started at the last apply
    assert s.status()["snapshot_index"] == snap["snapshot_index"]
    assert log_entries(s) >= 120
    # the table is about 6 MB (keys and values of 2 KB): 1 MB of new
    # entries is past an eighth of it
    for i in range(500):
        assert put(s, f"more{i}", "m" * 2000)[0] == 204
    wait_snapshot_index([s], snap["snapshot_index"] + 120)
