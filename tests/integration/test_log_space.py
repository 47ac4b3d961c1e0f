"""The log database gives its space back after compaction, and a restart
reads only the end of the log: from the snapshot's index minus
raft-trailing-entries (fewer when those hold more than
raft-trailing-bytes), even when the node stopped before the store had
dropped the prefix below the snapshot."""
import os
import re
import sqlite3
import time

from conftest import log_rows, wait_for
from test_cluster import put, get
from test_metrics import parse, scrape, value as metric

def db_bytes(node):
    data = node.conf["raft-data"]
    return sum(os.path.getsize(os.path.join(data, f))
               for f in ("raft.db", "raft.db-wal")
               if os.path.exists(os.path.join(data, f)))


def stored_entries(db):
    """Rows of raft.db's log, every table of it (log, log1 ... log7)."""
    c = sqlite3.connect(db)
    n = len(c.execute(log_rows("idx")).fetchall())
    c.close()
    return n


def loaded_entries(node):
    """Log entries loaded by the last start (its log line)."""
    found = re.findall(r"recovered term \d+, (\d+) log entries",
                       node.read_log())
    assert found, node.read_log()
    return int(found[-1])


def stop_before_log_truncate(s, late):
    """Starts s again, writes the keys of late, asks for a snapshot: the
    node exits (99) right before the store drops the log below it, so the
    whole log stays."""
    s.stop()
    s.env["PYAZDB_FAILPOINT"] = "before-log-truncate"
    s.start()
    for k, v in late.items():
        assert put(s, k, v)[0] == 204
    try:
        s.request("POST", "/admin/snapshot", timeout=5)
    except OSError:
        pass
    assert s.wait_exit(10) == 99, s.read_log()
    del s.env["PYAZDB_FAILPOINT"]


def test_raft_db_shrinks_after_compaction(servers):
    s = servers(conf={"raft-snapshot-entries": "1000000",
                      "raft-trailing-entries": "100"})
    value = "v" * 8000
    for i in range(3000):  # about 24 MB of log, ten keys of state
        assert put(s, f"k{i % 10}", value + str(i))[0] == 204
    peak = db_bytes(s)
    assert peak > 20_000_000, peak
    st, _, body = s.request("POST", "/admin/snapshot")
    assert st == 200, body
    # what stays: the 100 trailing entries (0.8 MB), up to a segment
    # below them the store leaves for a later compaction (16 entries in
    # tests, 0.13 MB), and the free pages kept for the log to grow into,
    # four times its pages (3.7 MB): no vacuum step gives back more than
    # the pages beyond those
    bound = 4_500_000 + 5 * 16 * 8000
    deadline = time.time() + 30
    while time.time() < deadline and db_bytes(s) > bound:
        time.sleep(0.2)
    size = db_bytes(s)
    assert size < bound, f"raft.db and WAL still {size} bytes (peak {peak})"
    # every step was timed, once: the writes behind it waited that long
    m = parse(scrape(s))
    steps = metric(m, "pyazdb_storage_compaction_steps_total")
    assert steps >= 2, steps
    assert metric(m, "pyazdb_storage_compaction_step_duration_seconds_count") \
        == steps
    took = metric(m, "pyazdb_storage_compaction_step_duration_seconds_sum")
    assert 0 < took < 30, took
    # and the state is whole, across a restart
    s.stop()
    s.start()
    assert get(s, "k9")[2] == (value + "2999").encode()


def test_database_of_an_older_build_is_converted(servers):
    """A raft.db without auto_vacuum (as older builds made it) is converted
    at open, then shrinks like a new one."""
    s = servers(conf={"raft-snapshot-entries": "1000000",
                      "raft-trailing-entries": "100"})
    for i in range(500):
        assert put(s, f"k{i % 10}", "x" * 8000)[0] == 204
    s.stop()
    db = os.path.join(s.conf["raft-data"], "raft.db")
    c = sqlite3.connect(db)
    c.execute("PRAGMA auto_vacuum = NONE")
    c.execute("VACUUM")
    assert c.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    c.close()
    s.start()
    s.stop()
    c = sqlite3.connect(db)
    assert c.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
    c.close()


def test_log_of_an_older_build_is_cut_into_segments(servers):
    """A raft.db of a build before log segments (schema version 2: the
    whole log in one table) is converted at start: its entries moved into
    the tables of their segments, and the node goes on with them."""
    s = servers(conf={"raft-snapshot-entries": "1000000"})
    for i in range(100):
        assert put(s, f"k{i}", str(i))[0] == 204
    s.stop()
    db = os.path.join(s.conf["raft-data"], "raft.db")
    c = sqlite3.connect(db)
    before = c.execute(log_rows("idx, term, data")).fetchall()
    for k in range(1, 8):  # what a version 2 build wrote
        c.execute(f"INSERT INTO log SELECT * FROM log{k}")
        c.execute(f"DROP TABLE log{k}")
    c.execute("DELETE FROM meta WHERE key = 'log_segment'")
    c.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    c.commit()
    assert c.execute("SELECT count(*) FROM log").fetchone()[0] == len(before)
    c.close()
    s.start()
    for i in (0, 50, 99):
        assert get(s, f"k{i}")[2] == str(i).encode()
    assert put(s, "after", "1")[0] == 204
    s.stop()
    c = sqlite3.connect(db)
    meta = dict(c.execute("SELECT key, value FROM meta").fetchall())
    after = c.execute(log_rows("idx, term, data")).fetchall()
    in_log = c.execute("SELECT count(*) FROM log").fetchone()[0]
    c.close()
    assert meta["schema_version"] == "3" and meta["log_segment"] == "16"
    # the same entries, then the new term's empty one and the put
    assert after[:len(before)] == before and len(after) == len(before) + 2
    assert in_log < len(before)  # moved out of the one table


def test_restart_loads_only_the_end_of_the_log(servers):
    trailing = 50
    s = servers(conf={"raft-snapshot-entries": "1000000",
                      "raft-trailing-entries": str(trailing)})
    for i in range(2000):
        assert put(s, f"k{i}", str(i))[0] == 204
    stop_before_log_truncate(s, {f"late{i}": str(i) for i in range(5)})
    db = os.path.join(s.conf["raft-data"], "raft.db")
    stored = stored_entries(db)
    assert stored > 2000  # nothing was dropped
    s.start()
    status = s.status()
    after = status["last_index"] - status["snapshot_index"]
    n = loaded_entries(s)
    assert n <= trailing + after + 1, (n, status)
    for i in (0, 1999):
        assert get(s, f"k{i}")[2] == str(i).encode()
    assert get(s, "late4")[2] == b"4"
    # the interrupted compaction resumes (one step: a moment; the node
    # holds the database exclusively, so look once it has stopped)
    time.sleep(2)
    s.stop()
    # (and up to a segment, 16 entries in tests, left for a later one)
    stored = stored_entries(db)
    assert stored <= trailing + after + 16 + 10, stored
    # a normal restart loads as little
    s.start()
    assert loaded_entries(s) <= trailing + after + 10
    assert get(s, "k1000")[2] == b"1000"


def test_compaction_empties_whole_segments(servers):
    """raft.db keeps its log in eight tables, a segment of entries each in
    turn (16 under the tests' PYAZDB_TEST_LOG_SEGMENT): a compaction drops
    the segments it covers by emptying their tables, leaves the one its
    goal ends in, and deletes rows one by one only in tables that also
    hold a later segment (here a log of more than seven segments)."""
    s = servers(conf={"raft-snapshot-entries": "1000000",
                      "raft-trailing-entries": "10"})

    def counters():
        m = parse(scrape(s))
        return (metric(m, "pyazdb_storage_compaction_segments_total"),
                metric(m, "pyazdb_storage_compaction_rows_deleted_total"))

    def snapshot_and_compact(done):
        assert s.request("POST", "/admin/snapshot")[0] == 200
        wait_for(lambda: done(*counters()), "compaction", timeout=15)
        return counters()

    assert counters() == (0, 0)
    for i in range(90):
        assert put(s, f"k{i}", str(i))[0] == 204
    # entries 1..~92, goal ~82: segments 0 to 4 (1..79) go whole
    segs, rows = snapshot_and_compact(lambda segs, rows: segs >= 5)
    assert (segs, rows) == (5, 0)
    status = s.status()
    first = status["snapshot_index"] - 10  # the core's first entry
    for i in range(90, 290):
        assert put(s, f"k{i}", str(i))[0] == 204
    # the log now spans 14 segments: two tables hold entries past the goal
    segs, rows = snapshot_and_compact(lambda segs, rows: rows > 0)
    assert segs > 5 and rows > 0, (segs, rows)
    status = s.status()
    after = status["last_index"] - status["snapshot_index"]
    s.stop()
    db = os.path.join(s.conf["raft-data"], "raft.db")
    stored = stored_entries(db)
    assert first > 16 and stored <= 10 + after + 16, (stored, status)
    s.start()
    for i in (0, 89, 289):
        assert get(s, f"k{i}")[2] == str(i).encode()


def test_restart_honours_the_trailing_bytes(servers):
    """Large entries: the byte bound, not the entry count, limits what a
    restart reads below the snapshot."""
    s = servers(conf={"raft-snapshot-entries": "1000000",
                      "raft-trailing-entries": "10000",
                      "raft-trailing-bytes": "256kb"})
    value = "v" * 40000
    for i in range(60):  # some 2.4 MB of log, each entry over 40 KB
        assert put(s, f"k{i % 10}", value + str(i))[0] == 204
    stop_before_log_truncate(s, {"late": "1"})
    s.start()
    status = s.status()
    after = status["last_index"] - status["snapshot_index"]
    # 256 KiB hold at most 6 entries of 40 KB, besides the small ones
    # after them (the second start's no-op, "late") and the boundary
    # entry; the entry bound alone would read all 60 and more
    n = loaded_entries(s)
    assert n <= 256 * 1024 // 40000 + 3 + after, (n, status)
    assert get(s, "k9")[2] == (value + "59").encode()
    assert get(s, "late")[2] == b"1"
