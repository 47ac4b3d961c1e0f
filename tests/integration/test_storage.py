"""Durability edges: a damaged database is refused at start, a failed log
write stops the node (fail-stop), identity mismatches are refused."""
import json
import os
import signal
import sqlite3
import time

import pytest

from conftest import log_rows
from test_cluster import make_cluster, leader_of, put, get


def test_corrupt_database_is_refused(servers):
    s = servers()
    assert put(s, "k", "v")[0] == 204
    s.stop()
    db = os.path.join(s.dir, "data", "raft.db")
    with open(db, "r+b") as f:
        f.seek(0)
        f.write(b"this is not a SQLite database at all!!")
    s.start(wait=False)
    assert s.wait_exit(10) != 0
    log = s.read_log()
    assert "raft.db" in log and ("not a database" in log or "corrupt" in log
                                 or "malformed" in log or "header" in log), log


def test_node_name_mismatch_is_refused(servers):
    s = servers()
    assert put(s, "k", "v")[0] == 204
    s.stop()
    s.conf["node-id"] = "someone-else"
    s.write_conf()
    s.start(wait=False)
    assert s.wait_exit(10) != 0
    assert "belongs to node 'node1'" in s.read_log()


def stopped_initial_cluster(servers, conf=None, keys=5):
    """A one-node cluster formed from initial-cluster (which a start that
    takes its data dir for a new one forms again), with keys k0... = v,
    stopped: (server, raft.db path)."""
    s = servers(start=False, conf=conf)
    s.conf["raft-bootstrap"] = "no"
    s.conf["initial-cluster"] = f"node1=127.0.0.1:{s.raft_port}"
    s.write_conf()
    s.start()
    for i in range(keys):
        assert put(s, f"k{i}", "v")[0] == 204
    return s, os.path.join(s.dir, "data", "raft.db")


def sql(db, *statements):
    """Runs statements on db; the rows of the last."""
    with sqlite3.connect(db) as c:
        for st in statements:
            rows = c.execute(st).fetchall()
    c.close()
    return rows


@pytest.mark.parametrize("where,term", [("log", 0), ("log", 1),
                                        ("snapshot", 0)])
def test_lowered_hard_state_term_is_refused(servers, where, term):
    """A stored term below the log's (0: as if nothing were stored) is
    refused with what does not fit, not taken for a new node's: that
    formed the cluster again and dropped every acknowledged write."""
    conf = {"raft-snapshot-entries": "100", "raft-trailing-entries": "0"} \
        if where == "snapshot" else None
    s, db = stopped_initial_cluster(servers, conf,
                                    150 if where == "snapshot" else 5)
    if where == "snapshot":
        assert s.request("POST", "/admin/snapshot")[0] == 200
    s.stop()
    before = sql(db, log_rows("idx, term"))
    snap = int(sql(db, "SELECT value FROM meta "
                       "WHERE key = 'snapshot_index'")[0][0])
    assert (snap > 0) == (where == "snapshot"), snap
    sql(db, f"UPDATE hard_state SET term = {term}")
    s.start(wait=False)
    assert s.wait_exit(10) != 0
    log = s.read_log()
    assert f"{db}: hard state (term {term}, vote " in log, log
    assert "does not fit the log" in log, log
    assert log.count("forming cluster from initial-cluster") == 1, log
    assert sql(db, log_rows("idx, term")) == before


@pytest.mark.parametrize("change", ["name emptied, other node-id",
                                    "name emptied", "node id changed"])
def test_data_dir_of_another_node_is_refused(servers, change):
    """A data dir with state whose meta does not name this node (an
    emptied name, another node id) is refused: with its name emptied a
    node of another node-id took its log and vote and dialed itself."""
    s = servers()
    assert put(s, "k", "v")[0] == 204
    s.stop()
    db = os.path.join(s.dir, "data", "raft.db")
    node_id = int(sql(db, "SELECT value FROM meta "
                          "WHERE key = 'node_id'")[0][0])
    if change.startswith("name emptied"):
        sql(db, "UPDATE meta SET value = '' WHERE key = 'node_name'")
    else:
        sql(db, "UPDATE meta SET value = '12345' WHERE key = 'node_id'")
    if change == "name emptied, other node-id":
        s.conf["node-id"] = "node2"
        s.write_conf()
    s.start(wait=False)
    assert s.wait_exit(10) != 0
    log = s.read_log()
    if change == "name emptied, other node-id":
        want = (f"{db} belongs to node 'node1' (node id {node_id}), but "
                f"node-id is 'node2': refusing to start")
    elif change == "name emptied":
        want = (f"{db} holds Raft state but its node identity is damaged "
                f"(node name '', node id {node_id}; node-id 'node1' has id "
                f"{node_id}): refusing to start")
    else:
        want = (f"{db} holds Raft state but its node identity is damaged "
                f"(node name 'node1', node id 12345; node-id 'node1' has "
                f"id {node_id})")
    assert want in log, log


def test_snapshots_without_raft_db_are_refused(servers):
    """A raft.db removed beside the snapshots of the state it held is not
    taken for a new node's (which bootstrapped a new cluster next to them)."""
    s, data, snaps = stopped_with_snapshots(servers, "r",
                                            lambda i: f"value-{i}")
    for f in ("raft.db", "raft.db-wal", "raft.db-shm"):
        if os.path.exists(os.path.join(data, f)):
            os.unlink(os.path.join(data, f))
    s.start(wait=False)
    assert s.wait_exit(10) != 0
    log = s.read_log()
    assert (f"{data}/raft.db holds no Raft state, but {data} holds "
            f"{len(snaps)} snapshot file") in log, log
    assert "raft.db was removed or replaced; refusing to start as a new " \
        "node" in log, log
    assert "bootstrapping" not in log.split("stopped")[-1], log
    assert sorted(f for f in os.listdir(data) if f.endswith(".snap")) == \
        sorted(snaps)


def test_failed_log_write_stops_the_node(servers):
    s = servers()
    assert put(s, "before", "1")[0] == 204
    s.stop()
    # the 60th SQLite step after opening (past the load, inside the writes)
    # fails: the node must stop, never acknowledge that write, and restart
    # cleanly without the fault
    s.env["PYAZDB_TEST_STORE_FAIL_AT"] = "60"
    s.start(wait=False)
    deadline = time.time() + 10
    acked = []
    while time.time() < deadline and s.proc.poll() is None:
        try:
            st, _, _ = put(s, f"k{len(acked)}", "v", timeout=2)
            if st == 204:
                acked.append(f"k{len(acked)}")
        except OSError:
            pass
        time.sleep(0.05)
    assert s.wait_exit(10) != 0
    log = s.read_log()
    assert "injected I/O error" in log and "stopping" in log, log
    assert len(acked) > 0
    del s.env["PYAZDB_TEST_STORE_FAIL_AT"]
    s.start()
    assert get(s, "before")[2] == b"1"
    for k in acked:  # anything acknowledged before the failure survived
        assert get(s, k)[2] == b"v"


def test_failed_checkpoints_are_reported_and_lose_nothing(servers):
    """A WAL checkpoint that fails (the store's test hook: every one does)
    loses no write: the WAL keeps them and grows, the failures are counted
    in /metrics, the log warns once (at most once a minute), and a node
    killed then restarted without the fault recovers every write from the
    WAL."""
    s = servers(start=False)
    s.env["PYAZDB_TEST_CHECKPOINT_FAIL"] = "1"
    s.start()
    big = "y" * 48000
    for i in range(120):  # some 1,500 pages: past 1,000 without a restart
        st, _, body = put(s, f"big{i}", big)
        assert st == 204, body
    wal = os.path.join(s.dir, "data", "raft.db-wal")
    assert os.path.getsize(wal) > 1200 * (4096 + 24)
    deadline = time.time() + 10
    while time.time() < deadline and \
            "cannot checkpoint" not in s.read_log():
        time.sleep(0.1)
    log = s.read_log()
    assert log.count("cannot checkpoint the Raft log's WAL into raft.db: "
                     "disk I/O error") == 1, log
    st, _, body = s.request("GET", "/metrics")
    text = body.decode()
    failed = [float(ln.split()[1]) for ln in text.splitlines()
              if ln.startswith("pyazdb_storage_checkpoint_failures_total ")]
    done = [float(ln.split()[1]) for ln in text.splitlines()
            if ln.startswith("pyazdb_storage_checkpoint_duration_seconds_"
                             "count ")]
    assert failed and failed[0] >= 20 and done == [0], (failed, done)
    s.kill()  # no checkpoint at exit either
    assert os.path.getsize(wal) > 1200 * (4096 + 24)
    del s.env["PYAZDB_TEST_CHECKPOINT_FAIL"]
    s.start()
    for i in (0, 59, 119):
        assert get(s, f"big{i}")[2] == big.encode()


def test_node_of_another_cluster_is_refused(servers):
    nodes = make_cluster(servers)
    leader_of(nodes)
    # a one-node cluster of its own, told to talk to node1's Raft port as
    # if it were a member: the handshake refuses it, nothing breaks
    stranger = servers("node9", start=False)
    stranger.conf["initial-cluster"] = (
        f"node9=127.0.0.1:{stranger.raft_port},"
        f"node1=127.0.0.1:{nodes[0].raft_port}")
    stranger.conf["raft-bootstrap"] = "no"
    stranger.write_conf()
    stranger.start(wait=False)
    deadline = time.time() + 10
    while time.time() < deadline:
        if "cluster id mismatch" in nodes[0].read_log() and \
                "refused us" in stranger.read_log():
            break
        time.sleep(0.1)
    assert "cluster id mismatch" in nodes[0].read_log()
    assert "refused us" in stranger.read_log()
    leader = leader_of(nodes)
    assert put(leader, "still", "fine")[0] == 204


def test_truncated_database_tail_is_refused(servers):
    s = servers()
    for i in range(300):
        assert put(s, f"k{i}", "x" * 200)[0] == 204
    s.stop()
    data = os.path.join(s.dir, "data")
    db = os.path.join(data, "raft.db")
    assert not os.path.exists(db + "-wal") or \
        os.path.getsize(db + "-wal") == 0  # a clean stop checkpoints
    size = os.path.getsize(db)
    assert size > 16 * 4096
    os.truncate(db, size - 4096)
    s.start(wait=False)
    assert s.wait_exit(10) != 0
    log = s.read_log()
    assert db in log, log
    assert ("malformed" in log or "quick_check" in log or "truncated" in log
            or "corrupt" in log), log


def stopped_with_snapshots(servers, prefix, value):
    """A node with 150 keys (prefix + i = value(i)) whose log only its
    snapshots cover, stopped: (server, data dir, snapshot file names)."""
    s = servers(conf={"raft-snapshot-entries": "100",
                      "raft-trailing-entries": "0"})
    for i in range(150):
        assert put(s, f"{prefix}{i}", value(i))[0] == 204
    st, _, body = s.request("POST", "/admin/snapshot")
    assert st == 200, body
    s.stop()
    data = os.path.join(s.dir, "data")
    snaps = [f for f in os.listdir(data) if f.endswith(".snap")]
    assert snaps
    return s, data, snaps


def test_flipped_byte_in_a_snapshot_is_refused(servers):
    """One byte of a value flipped in the only snapshot that covers the
    log: only the file's CRC can see it; the node names the file and
    refuses to start rather than serve a wrong value."""
    s, data, snaps = stopped_with_snapshots(servers, "e",
                                            lambda i: f"SNAPVALUE-{i:04d}")
    hit = 0
    for f in snaps:
        path = os.path.join(data, f)
        with open(path, "r+b") as fh:
            buf = fh.read()
            at = buf.find(b"SNAPVALUE-0042")
            if at >= 0:
                fh.seek(at + 12)
                fh.write(bytes([buf[at + 12] ^ 0x04]))
                hit += 1
    assert hit == len(snaps)
    s.start(wait=False)
    assert s.wait_exit(10) != 0
    log = s.read_log()
    assert "checksum mismatch" in log, log
    assert any(f"damaged snapshot {os.path.join(data, f)}" in log
               for f in snaps), log
    assert "no valid snapshot" in log, log


def test_truncated_snapshot_tail_is_refused(servers):
    s, data, snaps = stopped_with_snapshots(servers, "t",
                                            lambda i: f"value-{i}")
    for f in snaps:
        path = os.path.join(data, f)
        os.truncate(path, os.path.getsize(path) - 7)
    s.start(wait=False)
    assert s.wait_exit(10) != 0
    log = s.read_log()
    assert "truncated" in log and "offset" in log, log
    assert any(f"damaged snapshot {os.path.join(data, f)}" in log
               for f in snaps), log
    assert "no valid snapshot" in log, log


def test_fifo_named_like_a_snapshot_is_skipped(servers):
    """A FIFO named like a snapshot whose point the log holds (an open
    for reading would wait for a writer forever, the start with it) is
    reported as not a regular file and passed over."""
    s = servers()
    for i in range(10):
        assert put(s, f"k{i}", "v")[0] == 204
    term = s.status()["term"]
    s.stop()
    data = os.path.join(s.dir, "data")
    fifos = [os.path.join(data, f"snap-5-{t}.snap")
             for t in sorted({1, 2, term})]
    for f in fifos:
        os.mkfifo(f)
    s.start(wait=False)
    s.wait_ready(timeout=15)
    log = s.read_log()
    assert any(f"{f}: not a regular file" in log for f in fifos), log
    assert get(s, "k9")[2] == b"v"
    assert s.stop() == 0


def test_fifo_config_and_token_files_are_refused(servers, tmp_path):
    """A FIFO given as client-token-file stops the start with a clear
    error; one put in place of the config file before SIGHUP fails the
    reload, and the node goes on serving (neither waits for a writer)."""
    fifo = str(tmp_path / "tokens.fifo")
    os.mkfifo(fifo)
    s = servers("tok", start=False, conf={"client-token-file": fifo})
    s.start(wait=False)
    assert s.wait_exit(10) != 0
    log = s.read_log()
    assert f"{fifo}: cannot open: not a regular file" in log, log

    s = servers("hup")
    assert put(s, "k", "v")[0] == 204
    os.unlink(s.conf_path)
    os.mkfifo(s.conf_path)
    s.signal(signal.SIGHUP)
    deadline = time.time() + 10
    while "reload failed" not in s.read_log() and time.time() < deadline:
        time.sleep(0.05)
    log = s.read_log()
    assert "reload failed" in log and "not a regular file" in log, log
    assert get(s, "k", timeout=3)[2] == b"v"
    assert s.stop() == 0


@pytest.mark.parametrize("term", [2**62, 2**62 + 1])
def test_term_without_room_is_refused_at_start(servers, term):
    """A stored term past 2^62 - 1 (what a forged term left a lone node in
    an older version: it could never be elected again) stops the start,
    naming the way back. A node that reaches 2^62 - 1 says it will not be
    elected again, and still starts at that term (its cluster may have a
    leader there to follow)."""
    s, db = stopped_initial_cluster(servers)
    s.stop()
    sql(db, f"UPDATE hard_state SET term = {term}")
    s.start(wait=False)
    assert s.wait_exit(10) != 0
    log = s.read_log()
    assert (f"{db} holds term {term}, past the highest (2^62 - 1): "
            "this node could never be elected again") in log, log
    assert 'restore the cluster from a backup (README, "Backup and ' \
        'restore")' in log, log
    # One below: it starts, is elected once more (2^62 - 1), and says it
    # will never be again.
    sql(db, f"UPDATE hard_state SET term = {2**62 - 2}")
    s.start()
    assert put(s, "k", "after")[0] == 204
    assert s.status()["term"] == 2**62 - 1
    want = (f"term {2**62 - 1} is the highest (2^62 - 1): this node can "
            "never be elected again; restore the cluster from a backup")
    deadline = time.time() + 5
    while want not in s.read_log() and time.time() < deadline:
        time.sleep(0.1)
    assert want in s.read_log()
    # restarted at 2^62 - 1: it starts (alone, it can lead no more)
    assert s.stop() == 0
    s.start(wait=False)
    deadline = time.time() + 5
    while s.read_log().count(want) < 2 and time.time() < deadline:
        assert s.proc.poll() is None, s.read_log()
        time.sleep(0.1)
    assert s.read_log().count(want) >= 2 and s.proc.poll() is None
