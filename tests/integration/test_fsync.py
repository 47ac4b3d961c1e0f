"""A failed fsync is fail-stop: the node exits non-zero with a clear message
and never trusts its page cache again; restarted, it recovers from what is
on disk and the cluster keeps every acknowledged write.

The EIO is real: the node runs under strace, which makes its fdatasync
calls (SQLite's commit of the WAL) fail with EIO from the Nth on. The
in-process fault hook (PYAZDB_TEST_STORE_FAIL_AT) is covered by
test_storage.py."""
import os
import shutil
import subprocess
import threading
import time

from conftest import SERVER
from test_cluster import make_cluster, leader_of, put, get, wait_value


def strace_argv(s, when):
    strace = shutil.which("strace")
    assert strace, "strace not found: scripts/install-deps.sh test installs it"
    return [strace, "-f", "-qq", "-o", "/dev/null", "-e", "trace=fdatasync",
            "-e", f"inject=fdatasync:error=EIO:when={when}+",
            SERVER, s.conf_path] + s.args


def test_strace_can_inject_eio(tmp_path):
    """The tool works here: a command's fdatasync fails with EIO."""
    f = tmp_path / "x"
    r = subprocess.run(
        ["strace", "-qq", "-o", "/dev/null", "-e", "trace=fdatasync",
         "-e", "inject=fdatasync:error=EIO", "python3", "-c",
         f"import os; fd = os.open('{f}', os.O_CREAT | os.O_WRONLY); "
         "os.fdatasync(fd)"], capture_output=True, text=True)
    assert r.returncode != 0 and "Input/output error" in r.stderr, r


def test_failed_fsync_stops_the_node_and_nothing_acknowledged_is_lost(
        servers):
    nodes = make_cluster(servers)
    first = leader_of(nodes)
    assert put(first, "before", "1")[0] == 204
    # the victim: restarted under strace, every fdatasync from its 6th on
    # fails (the first few are its start: opening raft.db)
    victim = next(s for s in nodes if s is not first)
    victim.stop()
    victim.env["ASAN_OPTIONS"] = "detect_leaks=0"  # LSan cannot run traced
    victim.start(argv=strace_argv(victim, 6), wait=False)

    acked = []
    stop = threading.Event()
    others = [s for s in nodes if s is not victim]

    def writer():
        i = 0
        while not stop.is_set():
            for s in others:
                try:
                    st, _, _ = put(s, f"w{i}", str(i), timeout=5)
                except OSError:
                    continue
                if st == 204:
                    acked.append(i)
                    break
            i += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        rc = victim.wait_exit(30)
    finally:
        stop.set()
        t.join()
    assert rc != 0
    log = victim.read_log()
    assert "writing the Raft log failed" in log, log[-3000:]
    assert "disk I/O error" in log and "fsync failed" in log, log[-3000:]
    assert "page cache cannot be trusted" in log and "stopping" in log
    assert len(acked) > 0
    # restarted without the fault: it recovers from its disk and catches up
    del victim.env["ASAN_OPTIONS"]
    victim.env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
    victim.start()
    leader = leader_of(nodes)
    assert put(leader, "after", "1")[0] == 204
    for s in nodes:
        wait_value(s, "after", "1", timeout=15)
    for i in acked:
        st, _, body = get(leader, f"w{i}")
        assert st == 200 and body == str(i).encode(), (i, st, body)
        st, _, body = get(victim, f"w{i}", stale=True)
        assert st == 200 and body == str(i).encode(), (i, st, body)
    assert get(victim, "before")[2] == b"1"


def test_a_new_data_dir_is_made_durable_in_its_parent(servers):
    """The first start creates raft-data (and its missing parents) and
    fsyncs the directory that holds each one it created, before raft.db
    goes in: without that a power cut soon after could lose the new
    directory's entry, raft.db with it, on XFS or btrfs. A failed fsync
    there stops the start. Here the nth fsync fails (EIO, injected), n =
    1, 2, 3: those of the parents of a, a/b and a/b/data, in that
    order."""
    strace = shutil.which("strace")
    assert strace, "strace not found: scripts/install-deps.sh test installs it"
    for n, made in ((1, "a"), (2, "a/b"), (3, "a/b/data")):
        s = servers(f"n{n}", start=False)
        s.conf["raft-data"] = os.path.join(s.dir, "a", "b", "data")
        s.write_conf()
        s.env["ASAN_OPTIONS"] = "detect_leaks=0"  # LSan cannot run traced
        s.start(argv=[strace, "-f", "-qq", "-o", "/dev/null",
                      "-e", "trace=fsync",
                      "-e", f"inject=fsync:error=EIO:when={n}",
                      SERVER, s.conf_path], wait=False)
        assert s.wait_exit(30) == 1, s.read_log()
        log = s.read_log()
        assert (f"{os.path.join(s.dir, made)}: cannot sync the directory "
                "that holds it: Input/output error") in log, log
        assert not os.path.exists(os.path.join(s.dir, "a/b/data/raft.db"))
