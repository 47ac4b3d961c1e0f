"""Out of space: a node whose disk fills up (a tmpfs this test mounts, of a
few MiB) raises the NOSPACE alarm, refuses writes with 507 / gRPC
RESOURCE_EXHAUSTED, keeps serving reads, never loses or damages its log,
and goes on by itself once there is room again; quota-backend-bytes raises
the same alarm before the disk is full, and deletes stay possible.

Mounting needs root (CI runs as root): without it these tests fail, they
never skip."""
import errno
import json
import os
import socket
import sqlite3
import subprocess
import time

import grpc
import pytest

from conftest import wait_for
from grpc_helpers import Client, rpc_error
from test_cluster import make_cluster, leader_of, put, get, wait_value


@pytest.fixture
def tmpfs(tmp_path):
    """make(name, size): a fresh tmpfs of that size, unmounted at the end
    (request it before `servers`, so the servers stop first)."""
    mounts = []

    def make(name, size="8m"):
        d = os.path.join(str(tmp_path), "fs-" + name)
        os.makedirs(d)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o",
                            f"size={size},mode=0700", "tmpfs", d],
                           capture_output=True, text=True)
        assert r.returncode == 0, (
            f"cannot mount a tmpfs on {d} (uid {os.getuid()}; these tests "
            f"need root): {r.stderr.strip()}")
        mounts.append(d)
        return d

    yield make
    for d in reversed(mounts):
        subprocess.run(["umount", d], capture_output=True)
        if os.path.ismount(d):
            subprocess.run(["umount", "-l", d], capture_output=True)


def fill(d):
    """Fill the file system of d to the last byte with d/filler."""
    path = os.path.join(d, "filler")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for chunk in (1 << 20, 1 << 12, 1):
            buf = b"\0" * chunk
            while True:
                try:
                    os.write(fd, buf)
                except OSError as e:
                    assert e.errno == errno.ENOSPC, e
                    break
    finally:
        os.close(fd)
    return path


def status(s):
    return s.status(timeout=5)


def put_until_507(s, prefix, size=65536, timeout=30):
    """Write big values until the node answers 507 (the first ones may still
    fit, or wait and time out: they were proposed before the alarm)."""
    deadline = time.time() + timeout
    i = 0
    while time.time() < deadline:
        st, _, body = put(s, f"{prefix}{i}", "x" * size, timeout=10)
        i += 1
        if st == 507:
            return body
        assert st in (204, 503), (st, body)
    raise AssertionError(f"{s.name} never answered 507")


def test_full_disk_alarm_refuses_writes_serves_reads_and_recovers(tmpfs,
                                                                    servers,
                                                                    pb):
    fs = tmpfs("n1", "8m")
    s = servers(conf={"raft-data": os.path.join(fs, "data"),
                      "request-timeout": "1s"})
    for i in range(20):
        assert put(s, f"k{i}", f"v{i}")[0] == 204
    assert status(s)["alarms"] == []
    filler = fill(fs)
    body = put_until_507(s, "big")
    assert body.strip().lower() == b"no space left on device", body
    st = status(s)
    assert st["alarms"] == ["NOSPACE"], st
    assert "full" in st["alarm_reason"] or "space" in st["alarm_reason"], st
    assert "no space left on device" in s.read_log()
    # the process is alive, refuses every write, still serves stale reads
    assert s.proc.poll() is None
    st_, _, body = put(s, "k0", "again")
    assert st_ == 507 and b"no space" in body, (st_, body)
    assert s.request("POST", "/delete", json.dumps({"key": "k1"}))[0] == 507
    assert get(s, "k3", stale=True)[2] == b"v3"
    c = Client(s.grpc_port, pb)
    try:
        code, details = rpc_error(c.Set, pb.kv.SetRequest(key=b"g",
                                                           value=b"1"),
                                  timeout=10)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, details)
        assert details == "no space left on device", details
    finally:
        c.close()
    h = s.request("GET", "/health")
    assert h[0] == 503 and b"no space left on device" in h[2], h
    # room again: the owed batch is written, the alarm clears by itself
    os.unlink(filler)
    wait_for(lambda: status(s)["alarms"] == [], "the alarm to clear")
    assert "room again" in s.read_log()
    assert put(s, "after", "1")[0] == 204
    assert get(s, "after")[2] == b"1"
    assert get(s, "k19")[2] == b"v19"
    # nothing of the log was damaged: a restart finds everything
    s.stop()
    s.start()
    assert get(s, "after")[2] == b"1"
    assert get(s, "k0")[2] == b"v0"


def test_restart_into_a_full_disk(tmpfs, servers):
    fs = tmpfs("n1", "8m")
    s = servers(conf={"raft-data": os.path.join(fs, "data"),
                      "request-timeout": "1s"})
    for i in range(5):
        assert put(s, f"k{i}", f"v{i}")[0] == 204
    s.stop()
    # as a version that did not record its read-lease promise left it: the
    # node must record it before it promises, and cannot
    db = sqlite3.connect(os.path.join(fs, "data", "raft.db"))
    with db:
        db.execute("DELETE FROM meta WHERE key = 'lease_promise_ns'")
    db.close()
    filler = fill(fs)
    # it starts, serves reads and refuses writes, rather than stopping
    # (the stored commit index may trail the last write by one: a new term
    # commits the rest once its first entry can be written)
    s.start()
    assert get(s, "k3", stale=True)[2] == b"v3"
    put_until_507(s, "big")
    assert status(s)["alarms"] == ["NOSPACE"]
    assert ("cannot record this node's read-lease promise" in s.read_log())
    os.unlink(filler)
    wait_for(lambda: status(s)["alarms"] == [], "the alarm to clear")
    assert put(s, "after", "1")[0] == 204
    assert get(s, "k4")[2] == b"v4"
    wait_for(lambda: "recorded this node's read-lease promise" in s.read_log(),
             "the promise to be recorded")


def wal_frames(path):
    """Frames the WAL file has room for (its page size from its header)."""
    if not os.path.exists(path) or os.path.getsize(path) < 32:
        return 0
    with open(path, "rb") as f:
        page = int.from_bytes(f.read(32)[8:12], "big")
    return (os.path.getsize(path) - 32) // (page + 24)


def test_checkpoint_on_a_full_disk_fails_then_works_again(tmpfs, servers):
    """Once checkpointed, the WAL is written over from its start, so on a
    full disk writes still fit in it while the checkpoint, which must grow
    raft.db, fails: the node warns, goes on, and raises NOSPACE only once
    the WAL must grow. With room again the checkpoint succeeds, the node
    says so, and nothing was lost."""
    fs = tmpfs("n1", "24m")
    s = servers(conf={"raft-data": os.path.join(fs, "data"),
                      "request-timeout": "3s"})
    wal = os.path.join(fs, "data", "raft.db-wal")
    big = "y" * 48000  # 12 pages
    n = 0
    while wal_frames(wal) < 900:
        assert put(s, f"a{n}", big)[0] == 204
        n += 1
        assert n < 200, wal_frames(wal)
    # one write of some 230 pages crosses the checkpoint's 1,000 frames:
    # the WAL written over from its start then has room past 1,000 for
    # a few more writes of 12 pages (with the tree's pages, up to 17)
    last = "z" * 950000
    assert put(s, "a-last", last)[0] == 204
    wait_for(lambda: s.metric(
        "pyazdb_storage_checkpoint_duration_seconds_count") >= 1,
        "the first checkpoint")
    assert wal_frames(wal) >= 1000 + 3 * 17, wal_frames(wal)
    assert s.metric("pyazdb_storage_checkpoint_failures_total") == 0
    filler = fill(fs)
    body = put_until_507(s, "b", size=48000)
    assert body.strip().lower() == b"no space left on device", body
    wait_for(lambda: "cannot checkpoint the Raft log's WAL into raft.db: "
             "database or disk is full" in s.read_log(),
             "the checkpoint's warning")
    failed = s.metric("pyazdb_storage_checkpoint_failures_total")
    assert failed >= 1
    assert "checkpoints into raft.db again" not in s.read_log()
    os.unlink(filler)
    wait_for(lambda: status(s)["alarms"] == [], "the alarm to clear")
    assert put(s, "after", "1")[0] == 204
    wait_for(lambda: "the Raft log's WAL checkpoints into raft.db again "
             f"({int(s.metric('pyazdb_storage_checkpoint_failures_total'))}"
             " failed in all)" in s.read_log(), "the recovery's line")
    assert s.read_log().count("cannot checkpoint") == 1
    s.stop()
    s.start()
    assert get(s, "a0")[2] == big.encode()
    assert get(s, "a-last")[2] == last.encode()
    assert get(s, "b0")[2] == b"x" * 48000
    assert get(s, "after")[2] == b"1"


def tmpfs_cluster(tmpfs, servers):
    """A 3-node cluster, each node's data on a tmpfs of its own (8 MiB):
    (mounts by node name, nodes)."""
    mounts = {n: tmpfs(n, "8m") for n in ("node1", "node2", "node3")}
    nodes = make_cluster(servers, start=False)
    for s in nodes:
        s.conf["raft-data"] = os.path.join(mounts[s.name], "data")
        s.conf["request-timeout"] = "2s"
        s.write_conf()
        s.start(wait=False)
    for s in nodes:
        s.wait_ready()
    return mounts, nodes


def test_follower_out_of_space_leader_goes_on(tmpfs, servers):
    mounts, nodes = tmpfs_cluster(tmpfs, servers)
    leader = leader_of(nodes)
    f = next(s for s in nodes if s is not leader)
    assert put(leader, "a", "1")[0] == 204
    filler = fill(mounts[f.name])
    # the leader commits with the other follower; the full one raises its
    # alarm as soon as it fails to store what it receives
    for i in range(40):
        assert put(leader, f"big{i}", "y" * 65536)[0] == 204
        if status(f)["alarms"]:
            break
    wait_for(lambda: status(f)["alarms"] == ["NOSPACE"], "the alarm")
    assert put(leader, "b", "2")[0] == 204
    # writes sent to the full node are refused there
    assert put(f, "c", "3")[0] == 507
    # the leader shows that member lagging: its match index stays behind
    # and it has stopped answering
    def lagging():
        st = status(leader)
        m = next(m for m in st["members"] if m["name"] == f.name)
        return (m["match_index"] < st["last_index"] and
                m["last_contact_ms"] > 1000) and m
    wait_for(lagging, "the leader to show the member lagging")

    # and why: the leader asked the silent member for its /status
    def reported():
        st = status(leader)
        m = next(m for m in st["members"] if m["name"] == f.name)
        return m.get("alarms") == ["NOSPACE"] and m
    m = wait_for(reported, "the leader to report the member out of space")
    assert "full" in m["alarm_reason"], m
    assert all(x.get("alarms") == [] for x in status(leader)["members"]
               if x["name"] != f.name)
    assert f"member {f.name} is out of space" in leader.read_log()
    assert leader.proc.poll() is None and f.proc.poll() is None
    os.unlink(filler)
    wait_for(lambda: status(f)["alarms"] == [], "the alarm to clear")
    assert put(leader, "d", "4")[0] == 204
    wait_value(f, "d", "4", timeout=15)
    wait_value(f, "b", "2")

    def caught_up():
        st = status(leader)
        m = next(m for m in st["members"] if m["name"] == f.name)
        return m["match_index"] == st["last_index"]
    wait_for(caught_up, "the member to catch up")
    wait_for(lambda: all(x.get("alarms") == []
                         for x in status(leader)["members"]),
             "the leader to see the member well again")


def test_leader_out_of_space_hands_leadership_on(tmpfs, servers):
    mounts, nodes = tmpfs_cluster(tmpfs, servers)
    old = leader_of(nodes)
    assert put(old, "a", "1")[0] == 204
    filler = fill(mounts[old.name])
    put_until_507(old, "big", timeout=30)
    # another node leads and takes writes; the full one forwards nothing
    # and refuses writes itself
    new = leader_of(nodes, timeout=15, exclude=(old,))
    assert new is not old
    assert put(new, "b", "2")[0] == 204
    assert status(old)["alarms"] == ["NOSPACE"]
    assert put(old, "c", "3")[0] == 507
    assert "handing leadership" in old.read_log()
    os.unlink(filler)
    wait_for(lambda: status(old)["alarms"] == [], "the alarm to clear")
    wait_value(old, "b", "2", timeout=15)
    leader = leader_of(nodes)
    assert put(leader, "e", "5")[0] == 204
    for s in nodes:
        wait_value(s, "e", "5")
        wait_value(s, "a", "1")


def test_quota_alarm_allows_deletes(servers, pb):
    s = servers(conf={"quota-backend-bytes": "4kb"})
    n = 0
    while True:
        st, _, body = put(s, f"k{n:02d}", "v" * 500)
        if st == 507:
            break
        assert st == 204, (st, body)
        n += 1
        assert n < 20
    assert body.strip() == b"no space left on device"
    # 6 x (503 + 96 per key) bytes fit in 4096, the 7th does not
    assert n == 6
    st = status(s)
    assert st["alarms"] == ["NOSPACE"]
    assert "quota-backend-bytes" in st["alarm_reason"]
    # while raised: no set, even a small one; deletes, and reads, go on
    assert put(s, "tiny", "1")[0] == 507
    c = Client(s.grpc_port, pb)
    try:
        code, details = rpc_error(c.Set, pb.kv.SetRequest(key=b"g",
                                                           value=b"1"),
                                  timeout=10)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, details)
        assert details == "no space left on device"
        c.Delete(pb.kv.DeleteRequest(key=b"k00"), timeout=10)
    finally:
        c.close()
    assert get(s, "k00")[0] == 404
    assert get(s, "k01")[2] == b"v" * 500
    # under 90% of the quota (3686 bytes) it clears by itself
    for i in (1, 2):
        assert s.request("POST", "/delete",
                         json.dumps({"key": f"k{i:02d}"}))[0] == 204
    wait_for(lambda: status(s)["alarms"] == [], "the quota alarm to clear")
    assert put(s, "tiny", "1")[0] == 204


# What quota-backend-bytes counts per key beside its key and value
# (KV_KEY_OVERHEAD in src/kv.h; README "Out of space").
KEY_OVERHEAD = 96


def burst_sets(s, n, prefix, size):
    """n /set requests of a size-byte value, one per connection, all sent
    before any answer is read: {status line: count}."""
    socks = [socket.create_connection(("127.0.0.1", s.http_port), timeout=30)
             for _ in range(n)]
    try:
        for i, c in enumerate(socks):
            body = json.dumps({"key": f"{prefix}{i:03d}",
                               "value": "v" * size}).encode()
            c.sendall(b"POST /set HTTP/1.1\r\nHost: x\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(body) + body)
        codes = {}
        for c in socks:
            line = c.recv(100).split(b"\r\n")[0]
            codes[line] = codes.get(line, 0) + 1
        return codes
    finally:
        for c in socks:
            c.close()


def test_quota_counts_writes_not_applied_yet(servers):
    """Sets sent at once, before any of them applies, pass the quota by
    no more than one: the writes accepted and not applied count. (It
    counted only the applied data: all 40 of 20 KB passed 128 KiB.)"""
    quota, size, n = 128 * 1024, 20000, 40
    s = servers(conf={"quota-backend-bytes": str(quota)})
    one = len("b000") + size + KEY_OVERHEAD
    for round_ in range(2):
        codes = burst_sets(s, n, "b", size)
        ok = codes.get(b"HTTP/1.1 204 No Content", 0)
        assert ok + codes.get(b"HTTP/1.1 507 Insufficient Storage", 0) == n, \
            codes
        keys = status(s)["keys"]
        assert keys == ok, (keys, codes)
        # 6 x 20100 fit in 131072, the 7th would not
        assert ok * one <= quota + one, (round_, codes)
        assert ok >= quota // one - 1, (round_, codes)
        assert status(s)["alarms"] == ["NOSPACE"]
        # deleting gives all the room back: nothing stays counted
        st, _, body = s.request("POST", "/delete",
                                json.dumps({"prefix": "b"}))
        assert st == 200 and json.loads(body)["deleted"] == ok, body
        wait_for(lambda: status(s)["alarms"] == [], "the quota alarm to clear")
    assert put(s, "after", "x" * size)[0] == 204


def test_quota_counts_a_cost_per_key(servers):
    """Empty values under a quota: each key counts KEY_OVERHEAD besides
    its name, so a small quota holds quota / KEY_OVERHEAD of them, not
    20 times as many. (It counted only key and value bytes: about 20,000
    keys of 3 bytes passed 64 KiB.)"""
    quota = 64 * 1024
    s = servers(conf={"quota-backend-bytes": str(quota)})
    i = 0
    while True:
        ops = [{"put": {"key": "%x" % (i * 64 + j), "value": ""}}
               for j in range(64)]
        st, _, body = s.request("POST", "/txn",
                                json.dumps({"success": ops}))
        if st == 507:
            break
        assert st == 200, body
        i += 1
        assert i < 1000
    keys = status(s)["keys"]
    assert keys == i * 64
    assert keys <= quota // KEY_OVERHEAD, keys
    assert keys >= quota // (KEY_OVERHEAD + 4) - 64, keys
    assert status(s)["alarms"] == ["NOSPACE"]
    assert "96 per key" in status(s)["alarm_reason"]
