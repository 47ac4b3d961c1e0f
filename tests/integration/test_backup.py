"""Backup and restore: GET /admin/snapshot streams a fresh snapshot,
`pyazdb-cli snapshot save FILE` downloads and verifies it, and
`pyazdb-server --restore FILE` seeds a new cluster from it that other
nodes then join. A damaged backup, a truncated one and a data directory
that holds state are refused; so is a backup request without the token."""
import json
import os
import re
import shlex
import socket
import struct
import subprocess
import threading
import time

import grpc
import pytest

from conftest import ROOT, wait_for
from grpc_helpers import CLI
from test_cluster import make_cluster, leader_of, put, get
from test_join import start_joining, wait_voters

TOKEN = "backup-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

# --- the snapshot file format (src/snapshot.h), read independently -------

_CRC_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ 0xC96C5795D7870F42 if _c & 1 else _c >> 1
    _CRC_TABLE.append(_c)


def crc64(data):
    """CRC-64/XZ, as snapshot_crc64."""
    crc = 0xFFFFFFFFFFFFFFFF
    t = _CRC_TABLE
    for b in data:
        crc = t[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFFFFFFFFFF


def parse_snapshot(data):
    """Check a snapshot file (format 3) byte by byte; return (index, term,
    {k: v})."""
    assert data[:8] == b"PYAZSNAP"
    version, index, term, _created, nkeys, conf_len = struct.unpack(
        ">IQQqQI", data[8:48])
    assert version == 3
    pos = 48 + conf_len
    (revision, nleases) = struct.unpack(">QI", data[pos:pos + 12])
    pos += 12
    assert nleases == 0
    kv = {}
    last = None
    for _ in range(nkeys):
        klen, vlen, created, modified, ver, lease = struct.unpack(
            ">IIQQQQ", data[pos:pos + 40])
        pos += 40
        assert 1 <= created <= modified <= revision and ver >= 1
        assert lease == 0
        k = data[pos:pos + klen]
        assert last is None or last < k, "records out of key order"
        last = k
        v = data[pos + klen:pos + klen + vlen]
        pos += klen + vlen
        assert k not in kv, f"key {k!r} twice"
        kv[k] = v
    assert data[pos:pos + 8] == b"PYAZEND\n"
    (stored,) = struct.unpack(">Q", data[pos + 8:pos + 16])
    assert pos + 16 == len(data), "bytes after the trailer"
    assert stored == crc64(data[:pos + 8]), "checksum mismatch"
    return index, term, kv


def cli(*args, timeout=60):
    env = dict(os.environ)
    env.pop("MANDI_ADDR", None)
    env.pop("PYAZDB_TOKEN", None)
    p = subprocess.run([CLI] + list(args), capture_output=True, env=env,
                       timeout=timeout)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


def save(node, path, token=TOKEN):
    args = ["--http", f"127.0.0.1:{node.http_port}"]
    if token:
        args += ["--token", token]
    return cli(*args, "snapshot", "save", path)


def cluster_id(node):
    m = re.search(r"cluster ([0-9a-f]{16})\)", node.read_log())
    assert m, node.read_log()
    return m.group(1)


def restore_proc(servers, name, backup, conf=None):
    """A server started with --restore, not waited for."""
    c = {"cluster-token": TOKEN}
    c.update(conf or {})
    s = servers(name, start=False, conf=c, args=["--restore", backup])
    s.start(wait=False)
    return s


# --- tests ----------------------------------------------------------------

def test_backup_needs_the_token(servers, tmp_path):
    s = servers(conf={"cluster-token": TOKEN})
    assert put(s, "k", "v")[0] == 204
    assert s.request("GET", "/admin/snapshot")[0] == 401
    st, _, _ = s.request("GET", "/admin/snapshot",
                         headers={"Authorization": "Bearer wrong"})
    assert st == 401
    st, h, _ = s.request("PUT", "/admin/snapshot")
    assert st == 405 and h["Allow"] == "GET, POST"
    out = str(tmp_path / "b.snap")
    code, _, err = save(s, out, token=None)
    assert code == 1 and "HTTP 401" in err, err
    assert not os.path.exists(out) and not os.path.exists(out + ".part")
    st, h, body = s.request("GET", "/admin/snapshot", headers=AUTH)
    assert st == 200 and h["Content-Type"] == "application/octet-stream"
    index, _, kv = parse_snapshot(body)
    assert kv == {b"k": b"v"} and index >= 2
    # usage errors
    assert cli("--http", "127.0.0.1:1", "snapshot", "load", out)[0] == 1
    assert cli("--http", "127.0.0.1:1", "snapshot", "save")[0] == 1
    code, _, err = cli("--addr", "127.0.0.1:1", "snapshot", "save", out)
    assert code == 1 and "use --http" in err, err
    # nobody listening: a clear error, nothing left behind
    code, _, err = cli("--http", "127.0.0.1:1", "--timeout", "2",
                       "snapshot", "save", out)
    assert code == 1 and "cannot connect" in err, err
    assert not os.path.exists(out) and not os.path.exists(out + ".part")


def test_stream_survives_prune(servers):
    """A client reading slowly keeps its file although newer snapshots
    prune it meanwhile: the body is the snapshot it started with."""
    s = servers(conf={"cluster-token": TOKEN})
    big = "x" * 1000
    for i in range(0, 3000, 125):  # 3 MB, more than the sockets buffer
        st, _, out = s.request("POST", "/txn", json.dumps({"success": [
            {"put": {"key": f"k{j}", "value": big}}
            for j in range(i, i + 125)]}))
        assert st == 200, out
    sock = socket.create_connection(("127.0.0.1", s.http_port), timeout=30)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    sock.sendall(b"GET /admin/snapshot HTTP/1.1\r\nHost: x\r\n"
                 b"Authorization: Bearer " + TOKEN.encode() + b"\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096)
    head, body = data.split(b"\r\n\r\n", 1)
    length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
    assert length > 3000 * 1000
    first = s.status()["snapshot_index"]
    # three newer snapshots: the node keeps two, so ours is pruned
    for round in range(3):
        assert put(s, f"later{round}", "y")[0] == 204
        st, _, _ = s.request("POST", "/admin/snapshot", headers=AUTH)
        assert st == 200
    assert s.status()["snapshot_index"] > first
    names = os.listdir(s.conf["raft-data"])
    assert not any(n.startswith(f"snap-{first}-") for n in names), names
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, f"closed after {len(body)} of {length} bytes"
        body += chunk
    sock.close()
    index, _, kv = parse_snapshot(body)
    assert index == first and len(kv) == 3000
    assert b"later0" not in kv


def test_save_under_load_and_restore_into_a_new_cluster(servers, mandis,
                                                        tmp_path):
    conf = {"cluster-token": TOKEN}
    nodes = make_cluster(servers, conf=conf)
    leader = leader_of(nodes)
    for i in range(300):
        assert put(leader, f"pre{i}", f"v-pre{i}")[0] == 204

    acked = {}
    lock = threading.Lock()
    stop = threading.Event()

    def writer():
        import http.client
        c = http.client.HTTPConnection("127.0.0.1", leader.http_port,
                                       timeout=10)
        for i in range(4000):  # bounded
            if stop.is_set():
                break
            k = f"w{i}"
            c.request("POST", "/set", json.dumps({"key": k, "value": "v-" + k}),
                      headers=AUTH)
            r = c.getresponse()
            r.read()
            if r.status == 204:
                with lock:
                    acked[k] = "v-" + k
        c.close()

    t = threading.Thread(target=writer)
    t.start()
    deadline = time.time() + 30
    while len(acked) < 300 and time.time() < deadline:
        time.sleep(0.05)
    with lock:
        before = dict(acked)
    assert len(before) >= 300
    # from a follower: its snapshot must still hold every acknowledged write
    follower = next(s for s in nodes if s is not leader)
    backup = str(tmp_path / "backup.snap")
    code, out, err = save(follower, backup)
    assert code == 0, err
    assert out.startswith("Saved snapshot at index "), out
    during = len(acked)
    stop.set()
    t.join(60)
    assert len(acked) >= during  # the writer really ran while saving
    assert not os.path.exists(backup + ".part")

    with open(backup, "rb") as f:
        data = f.read()
    index, _, kv = parse_snapshot(data)
    # consistent: only keys that were written, each with its value
    for k, v in kv.items():
        k = k.decode()
        assert k.startswith("pre") or k.startswith("w"), k
        assert v == f"v-{k}".encode(), (k, v)
    expected = {f"pre{i}": f"v-pre{i}" for i in range(300)}
    expected.update(before)
    for k, v in expected.items():
        assert kv.get(k.encode()) == v.encode(), f"acknowledged {k} missing"
    # a prefix of the writer's sequence: w0..wN with no hole
    ws = sorted(int(k[1:]) for k in map(bytes.decode, kv) if k[0] == "w")
    assert ws == list(range(len(ws)))
    old_id = cluster_id(nodes[0])
    for s in nodes:
        s.stop()

    # the new cluster: r1 restored, r2 and r3 join through mandi
    mandi = mandis(conf={"cluster-token": TOKEN})
    r1 = restore_proc(servers, "r1", backup, {"mandi-addr": mandi.url})
    r1.wait_ready()
    assert "restored" in r1.read_log()
    assert cluster_id(r1) != old_id
    joiners = [start_joining(servers, mandi, f"r{i}", conf)
               for i in (2, 3)]
    new = [r1] + joiners
    wait_voters(r1, ["r1", "r2", "r3"], timeout=60)
    new_leader = leader_of(new)
    assert put(new_leader, "after-restore", "yes")[0] == 204
    # every node serves the restored state
    for s in new:
        deadline = time.time() + 30
        while time.time() < deadline:
            st = s.status()
            if st["applied_index"] >= index + 1 and st["keys"] == len(kv) + 1:
                break
            time.sleep(0.2)
        assert st["keys"] == len(kv) + 1, st
    for k, v in expected.items():
        st, _, body = get(new[1], k)
        assert (st, body) == (200, v.encode()), k
    digests = {s.status()["digest"] for s in new}
    assert len(digests) == 1
    # a write that came after the save is not in the new cluster
    missing = [k for k in acked if k.encode() not in kv]
    if missing:
        assert get(new_leader, missing[-1])[0] == 404


def test_restore_refuses_damaged_backups_and_used_dirs(servers, tmp_path):
    src = servers("src", conf={"cluster-token": TOKEN})
    for i in range(100):
        assert put(src, f"k{i}", "v" * 50)[0] == 204
    good = str(tmp_path / "good.snap")
    assert save(src, good)[0] == 0
    data = open(good, "rb").read()

    flipped = str(tmp_path / "flipped.snap")
    bad = bytearray(data)
    bad[len(bad) // 2] ^= 0x01
    open(flipped, "wb").write(bytes(bad))
    truncated = str(tmp_path / "truncated.snap")
    open(truncated, "wb").write(data[:len(data) - 100])

    for name, path, why in (("flip", flipped, "checksum mismatch"),
                            ("trunc", truncated, "truncated")):
        s = restore_proc(servers, name, path)
        assert s.wait_exit(20) == 1
        log = s.read_log()
        assert "not a valid snapshot" in log and why in log, log
        data_dir = s.conf["raft-data"]
        assert not os.path.exists(data_dir) or os.listdir(data_dir) == []

    # a directory that holds state: refused, left as it was
    src.stop()
    before = sorted(os.listdir(src.conf["raft-data"]))
    s = servers("again", start=False, conf=dict(src.conf))
    s.args = ["--restore", good]
    s.start(wait=False)
    assert s.wait_exit(20) == 1
    assert "already holds state" in s.read_log(), s.read_log()
    assert sorted(os.listdir(src.conf["raft-data"])) == before

    # initial-cluster would have the other members bootstrap empty
    s = restore_proc(servers, "ic", good, {
        "initial-cluster": "ic=127.0.0.1:1,other=127.0.0.1:2"})
    assert s.wait_exit(20) == 1
    assert "remove initial-cluster" in s.read_log(), s.read_log()
    # the good file restores, under the name of a new node
    ok = restore_proc(servers, "fresh", good)
    ok.wait_ready()
    assert get(ok, "k99")[2] == b"v" * 50
    assert ok.status()["keys"] == 100


# Every step of a --restore that a crash can stop (each a failure point:
# the process _exits there, leaving the files as a SIGKILL or a power cut
# would): the marked raft.db created, the snapshot half written, written
# but not renamed, renamed; the hard state, the snapshot point written.
RESTORE_STEPS = ["restore-created", "snapshot-mid-write",
                 "snapshot-before-rename", "snapshot-after-rename",
                 "restore-hard-state", "restore-compacted"]
INTERRUPTED = "an interrupted --restore left"


def interrupted_restore(s, backup, point):
    """Run s with --restore, stopped by a crash at the failure point."""
    s.args = ["--restore", backup]
    s.env["PYAZDB_FAILPOINT"] = point
    s.start(wait=False)
    assert s.wait_exit(20) == 99, s.read_log()
    assert f"failpoint {point}" in s.read_log()
    del s.env["PYAZDB_FAILPOINT"]


def refused_plain_start(s):
    """A plain start of s refuses its data dir, naming the way out."""
    s.args = []
    s.start(wait=False)
    assert s.wait_exit(20) == 1, s.read_log()
    last = s.read_log().strip().splitlines()[-1]
    assert (f"{INTERRUPTED} {s.conf['raft-data']}: run --restore again (it "
            "starts over) or empty the directory") in last, last


@pytest.mark.parametrize("point", RESTORE_STEPS)
def test_interrupted_restore_is_refused_then_restored_again(
        servers, tmp_path, point):
    """A --restore stopped at any step leaves a data directory that a
    plain start refuses with the way out, never one it takes for a new
    node's (raft-bootstrap yes would found an empty cluster and serve it,
    the backup silently missing); a second --restore removes what the
    first one wrote (only that: other files stay) and starts over, and
    the node then serves the backup, also after a plain restart."""
    src = servers("src", conf={"cluster-token": TOKEN})
    for i in range(300):
        assert put(src, f"k{i}", f"v{i}" * 20)[0] == 204
    backup = str(tmp_path / "backup.snap")
    assert save(src, backup)[0] == 0
    src.stop()
    s = servers("r1", start=False, conf={"cluster-token": TOKEN})
    data_dir = s.conf["raft-data"]
    os.makedirs(data_dir)
    with open(os.path.join(data_dir, "NOTES"), "w") as f:
        f.write("the operator's\n")
    interrupted_restore(s, backup, point)
    assert "raft.db" in os.listdir(data_dir)
    refused_plain_start(s)
    s.args = ["--restore", backup]
    s.start()
    log = s.read_log()
    assert f"{INTERRUPTED} {data_dir}: starting over" in log, log
    assert get(s, "k299")[2] == b"v299" * 20
    assert s.status()["keys"] == 300
    assert put(s, "after", "yes")[0] == 204
    s.stop()
    assert open(os.path.join(data_dir, "NOTES")).read() == "the operator's\n"
    s.args = []
    s.start()
    assert get(s, "k0")[2] == b"v0" * 20 and get(s, "after")[2] == b"yes"
    assert s.status()["keys"] == 301


def test_restore_interrupted_while_starting_over(servers, tmp_path):
    """A second --restore stopped while it removes what the first one left
    (the snapshot files gone, raft.db not yet) still leaves a directory
    that a plain start refuses; a third one finishes the job."""
    src = servers("src", conf={"cluster-token": TOKEN})
    for i in range(20):
        assert put(src, f"k{i}", f"v{i}")[0] == 204
    backup = str(tmp_path / "backup.snap")
    assert save(src, backup)[0] == 0
    src.stop()
    s = servers("r1", start=False, conf={"cluster-token": TOKEN})
    interrupted_restore(s, backup, "snapshot-after-rename")
    interrupted_restore(s, backup, "restore-clearing")
    assert os.listdir(s.conf["raft-data"]) == ["raft.db"]
    refused_plain_start(s)
    s.args = ["--restore", backup]
    s.start()
    assert get(s, "k19")[2] == b"v19" and s.status()["keys"] == 20


def patched(data, **fields):
    """A snapshot file with header fields (index, term, revision) replaced
    and its CRC-64 made right again: only the bounds can refuse it."""
    b = bytearray(data)
    (conf_len,) = struct.unpack(">I", b[44:48])
    at = {"index": 12, "term": 20, "revision": 48 + conf_len}
    for k, v in fields.items():
        b[at[k]:at[k] + 8] = struct.pack(">Q", v)
    body = bytes(b[:-8])
    return body + struct.pack(">Q", crc64(body))


LIMIT = 2**62  # RAFT_LIMIT; the highest revision is LIMIT - 1


def test_restore_refuses_points_no_log_reaches(servers, tmp_path):
    """A backup whose index or term is at or above 2^62 (which every peer
    refuses: nobody could ever join), whose revision is beyond the highest
    (writes would wrap it, etcd clients see it negative) or whose index or
    term is 0 (the node would refuse its own start) is refused up front,
    with a clear message and nothing written."""
    src = servers("src", conf={"cluster-token": TOKEN})
    for i in range(5):
        assert put(src, f"k{i}", f"v{i}")[0] == 204
    good = str(tmp_path / "good.snap")
    assert save(src, good)[0] == 0
    data = open(good, "rb").read()
    index, term = struct.unpack(">QQ", data[12:28])
    cases = [
        ("revwrap", {"revision": 2**64 - 2}, "revision 18446744073709551614"),
        ("revneg", {"revision": 2**63 + 5}, "above the highest"),
        ("revlim", {"revision": LIMIT}, "above the highest"),
        ("idx", {"index": LIMIT + 1}, "2^62"),
        ("term", {"term": LIMIT}, "2^62"),
        ("idx0", {"index": 0}, f"index 0 term {term}: a backup is taken"),
        ("term0", {"term": 0}, f"index {index} term 0: a backup is taken"),
    ]
    for name, fields, why in cases:
        path = str(tmp_path / f"{name}.snap")
        open(path, "wb").write(patched(data, **fields))
        s = restore_proc(servers, name, path)
        assert s.wait_exit(20) == 1, name
        log = s.read_log()
        assert "not a valid snapshot" in log and why in log, (name, log)
        data_dir = s.conf["raft-data"]
        assert not os.path.exists(data_dir) or os.listdir(data_dir) == []


def test_restored_revision_at_the_maximum_refuses_writes(servers, tmp_path,
                                                         pb):
    """At the highest revision (2^62 - 1) a write is refused, the same on
    every node, rather than wrap the revision; reads go on, and the node's
    own snapshot of that state loads at its next start."""
    src = servers("src", conf={"cluster-token": TOKEN})
    for i in range(5):
        assert put(src, f"k{i}", f"v{i}")[0] == 204
    good = str(tmp_path / "good.snap")
    assert save(src, good)[0] == 0
    top = str(tmp_path / "top.snap")
    open(top, "wb").write(patched(open(good, "rb").read(),
                                  revision=LIMIT - 1))
    s = restore_proc(servers, "top", top)
    s.wait_ready()
    assert s.status()["revision"] == LIMIT - 1
    st, _, body = put(s, "new", "x")
    assert st == 507 and b"revision is at its maximum" in body, (st, body)
    st, _, body = s.request("POST", "/txn", json.dumps({"success": [
        {"put": {"key": "t", "value": "x"}}]}), headers=AUTH)
    assert st == 507, (st, body)
    # PyazDB's own gRPC service says so too, rather than success
    import grpc
    from grpc_helpers import Client, rpc_error
    c = Client(s.grpc_port, pb)
    try:
        md = (("authorization", "Bearer " + TOKEN),)
        for call, req in ((c.Set, pb.kv.SetRequest(key="new", value="x")),
                          (c.Delete, pb.kv.DeleteRequest(key="k1"))):
            code, det = rpc_error(call, req, timeout=5, metadata=md)
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, det)
            assert "revision is at its maximum" in det, det
    finally:
        c.close()
    assert get(s, "k1")[2] == b"v1"
    assert get(s, "k3")[2] == b"v3" and get(s, "new")[0] == 404
    assert s.status()["revision"] == LIMIT - 1
    st, _, body = s.request("POST", "/admin/snapshot", headers=AUTH)
    assert st == 200, body
    s.stop()
    s.args = []
    s.start()
    assert s.status()["revision"] == LIMIT - 1
    assert get(s, "k4")[2] == b"v4"


def test_save_never_writes_through_an_existing_part_file(servers, tmp_path):
    """FILE.part is created, never reused: a link planted there (to
    another file) or a stale one is left alone and the save refused."""
    s = servers(conf={"cluster-token": TOKEN})
    assert put(s, "k", "v")[0] == 204
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious data")
    out = str(tmp_path / "backup.snap")
    for kind in ("symlink", "hardlink", "stale"):
        part = out + ".part"
        if kind == "symlink":
            os.symlink(victim, part)
        elif kind == "hardlink":
            os.link(victim, part)
        else:
            open(part, "wb").write(b"half a download")
        for node in (s, None):  # reachable, and a failing download
            if node:
                code, _, err = save(node, out)
            else:
                code, _, err = cli("--http", "127.0.0.1:1", "--timeout",
                                   "1", "snapshot", "save", out)
            assert code == 1 and "backup.snap.part exists" in err, err
            assert victim.read_bytes() == b"precious data", kind
            assert os.path.lexists(part) and not os.path.exists(out)
        os.unlink(part)
    assert save(s, out)[0] == 0
    assert parse_snapshot(open(out, "rb").read())[2] == {b"k": b"v"}
    assert victim.read_bytes() == b"precious data"


def fake_node(head, drip):
    """A server on a free port answering one request with head, then
    drip(conn) until the client goes: (port, thread, stop event)."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    stop = threading.Event()

    def run():
        ls.settimeout(30)
        try:
            c, _ = ls.accept()
        except OSError:
            return
        with c:
            c.recv(4096)
            try:
                c.sendall(head)
                drip(c, stop)
            except OSError:
                pass
        ls.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return ls.getsockname()[1], t, stop


def test_save_gives_up_on_a_drip_and_on_a_huge_body(tmp_path):
    """--timeout bounds each read; a node that sends a byte now and then
    (less than 64 KiB per --timeout) or announces more than 1 TiB is given
    up on too, with a clear error and no FILE.part left."""
    def slow(c, stop):
        while not stop.is_set():
            c.sendall(b"x")
            time.sleep(0.05)

    out = str(tmp_path / "b.snap")
    port, t, stop = fake_node(b"HTTP/1.1 200 OK\r\nContent-Length: "
                              b"100000000\r\n\r\n", slow)
    t0 = time.time()
    code, _, err = cli("--http", f"127.0.0.1:{port}", "--timeout", "1",
                       "snapshot", "save", out, timeout=30)
    stop.set()
    t.join(10)
    assert code == 1 and "less than 64 KiB within --timeout (1000 ms)" in err
    assert time.time() - t0 < 10
    assert not os.path.exists(out) and not os.path.exists(out + ".part")

    port, t, stop = fake_node(b"HTTP/1.1 200 OK\r\nContent-Length: "
                              + str(2**40 + 1).encode() + b"\r\n\r\n",
                              lambda c, stop: c.sendall(b"x" * 65536))
    code, _, err = cli("--http", f"127.0.0.1:{port}", "--timeout", "5",
                       "snapshot", "save", out, timeout=30)
    stop.set()
    t.join(10)
    assert code == 1 and "larger than 1 TiB" in err, err
    assert not os.path.exists(out) and not os.path.exists(out + ".part")


def test_interrupted_save_leaves_no_part_file(tmp_path):
    """FILE.part is never reused, so a save stopped by Ctrl-C, timeout(1)
    or a hangup removes it as it dies: the next save must not find it."""
    import signal as sg

    def slow(c, stop):
        while not stop.is_set():
            c.sendall(b"x" * 70000)
            time.sleep(0.05)

    out = str(tmp_path / "b.snap")
    for sig in (sg.SIGINT, sg.SIGTERM, sg.SIGHUP):
        port, t, stop = fake_node(b"HTTP/1.1 200 OK\r\nContent-Length: "
                                  b"100000000000\r\n\r\n", slow)
        env = dict(os.environ)
        env.pop("MANDI_ADDR", None)
        p = subprocess.Popen([CLI, "--http", f"127.0.0.1:{port}", "snapshot",
                              "save", out], env=env,
                             stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while not (os.path.exists(out + ".part") and
                   os.path.getsize(out + ".part") > 0):
            assert time.time() < deadline and p.poll() is None
            time.sleep(0.05)
        p.send_signal(sig)
        assert p.wait(10) == -sig
        stop.set()
        t.join(10)
        assert not os.path.exists(out + ".part"), sig
        assert not os.path.exists(out)


def readme_commands(title):
    """The command lines of the ```sh blocks of a README section."""
    text = open(os.path.join(ROOT, "README.md")).read()
    start = text.index(f"## {title}\n")
    end = text.index("\n## ", start + 1)
    lines = []
    for block in re.findall(r"```sh\n(.*?)```", text[start:end], re.S):
        for line in block.splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def test_readme_backup_and_restore_recipes(servers, tmp_path):
    """The README's commands, pasted with this test's addresses."""
    backup_cmd, restore_cmd = readme_commands("Backup and restore")
    assert "snapshot save" in backup_cmd and "--restore" in restore_cmd
    src = servers("src", conf={"cluster-token": TOKEN})
    for i in range(20):
        assert put(src, f"r{i}", str(i))[0] == 204
    env = dict(os.environ, TOKEN=TOKEN)
    env.pop("MANDI_ADDR", None)
    cmd = backup_cmd.replace("src/", ROOT + "/src/").replace(
        "127.0.0.1:8081", f"127.0.0.1:{src.http_port}")
    p = subprocess.run(["bash", "-c", cmd], cwd=tmp_path, env=env,
                       capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(b"Saved snapshot at index ")
    assert os.path.exists(tmp_path / "backup.snap")
    r = servers("r1", start=False, conf={"cluster-token": TOKEN})
    cmd = restore_cmd.replace("src/", ROOT + "/src/").replace(
        "node1.conf", r.conf_path)
    r.start(argv=shlex.split(cmd), cwd=tmp_path)
    assert get(r, "r19")[2] == b"19"
    assert r.status()["keys"] == 20


# --- snapshots taken for backups: shared, spaced, called off ---------------

def forks(node):
    """Snapshots the node started (forked), whatever became of them."""
    return len(re.findall(r"snapshot at index \d+: writing", node.read_log()))


def backup_request(node):
    """A socket that sent GET /admin/snapshot with the token."""
    sock = socket.create_connection(("127.0.0.1", node.http_port), timeout=30)
    sock.sendall(b"GET /admin/snapshot HTTP/1.1\r\nHost: x\r\n"
                 b"Authorization: Bearer " + TOKEN.encode() + b"\r\n\r\n")
    return sock


def test_backup_hangups_take_few_snapshots(servers):
    """Rounds of one small write, a backup request and a hang-up before
    the answer: the first snapshot is taken, the others would start only
    snapshot-backup-interval (5 s) later, and their clients are gone by
    then."""
    s = servers(conf={"cluster-token": TOKEN})
    rounds = 10
    for r in range(rounds):
        assert put(s, "tick", str(r))[0] == 204
        sock = backup_request(s)
        time.sleep(0.2)  # more than a snapshot of one key takes
        sock.close()
    time.sleep(0.5)
    assert forks(s) == 1, s.read_log()
    assert s.request("GET", "/health")[0] == 200


def test_backup_snapshot_called_off_when_its_clients_go(servers):
    """A snapshot started for a backup whose client hangs up before it is
    written is called off: the child killed, its temporary file removed."""
    s = servers(conf={"cluster-token": TOKEN},
                env={"PYAZDB_FAILPOINT": "snapshot-mid-write:stop"})
    assert put(s, "k", "v")[0] == 204
    sock = backup_request(s)
    assert wait_for(lambda: forks(s) == 1, "the snapshot to start")
    data = s.conf["raft-data"]
    assert wait_for(lambda: any(n.endswith(".tmp") for n in os.listdir(data)),
                    "the child to write its temporary file")
    sock.close()
    assert wait_for(lambda: "the backups it was for went away"
                    in s.read_log(), "the snapshot to be called off")
    assert not any(n.endswith(".tmp") for n in os.listdir(data))
    assert s.metric('pyazdb_snapshots_total{result="cancelled"}') == 1
    assert s.request("GET", "/health")[0] == 200
    # the same for an etcd Snapshot call cancelled by its client (its
    # snapshot starts once snapshot-backup-interval, 5 s, has passed)
    ch = grpc.insecure_channel(f"127.0.0.1:{s.grpc_port}")
    try:
        call = ch.unary_stream("/etcdserverpb.Maintenance/Snapshot",
                               request_serializer=lambda x: x,
                               response_deserializer=lambda x: x)(
            b"", timeout=30, metadata=[("authorization", f"Bearer {TOKEN}")])
        assert wait_for(lambda: forks(s) == 2, "the second snapshot",
                        timeout=10)
        assert wait_for(lambda: any(n.endswith(".tmp")
                                    for n in os.listdir(data)),
                        "its temporary file")
        call.cancel()
        assert wait_for(lambda: s.read_log().count(
            "the backups it was for went away") == 2, "the second call-off")
    finally:
        ch.close()
    assert not any(n.endswith(".tmp") for n in os.listdir(data))
    assert s.metric('pyazdb_snapshots_total{result="cancelled"}') == 2


def test_concurrent_backups_share_one_snapshot(servers):
    """Backups asked for, each after a write of its own, while the next
    snapshot for backups may not start yet (snapshot-backup-interval, 5 s)
    wait for it together: one snapshot serves them all, and each holds
    every write acknowledged before it was asked for."""
    s = servers(conf={"cluster-token": TOKEN, "snapshot-max-streams": "8",
                      "request-timeout": "10s"})
    assert put(s, "first", "0")[0] == 204
    st, _, body = s.request("GET", "/admin/snapshot", headers=AUTH)
    assert st == 200 and parse_snapshot(body)[2] == {b"first": b"0"}
    assert forks(s) == 1
    acked = []  # keys acknowledged, in order
    lock = threading.Lock()
    out = {}

    def client(i):
        time.sleep(0.15 * i)  # one after the other, each after a write
        assert put(s, f"k{i}", str(i))[0] == 204
        with lock:
            acked.append(f"k{i}".encode())
            before = list(acked)
        t0 = time.time()
        st, _, body = s.request("GET", "/admin/snapshot", headers=AUTH,
                                timeout=20)
        out[i] = (st, body, before, time.time() - t0)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    indexes = set()
    for i, (st, body, before, _) in out.items():
        assert st == 200, body
        index, _, kv = parse_snapshot(body)
        indexes.add(index)
        for k in before:
            assert k in kv, (i, k, sorted(kv))
    assert len(indexes) == 1, indexes
    assert forks(s) == 2, s.read_log()
    # they waited for snapshot-backup-interval (5 s), not for longer
    assert max(d for _, _, _, d in out.values()) < 8


def test_backup_refused_when_the_interval_outlasts_the_timeout(servers):
    """A backup that needs a new snapshot the interval does not allow
    within request-timeout is refused at once with the reason, over HTTP
    and over etcd's gRPC; one that the last snapshot covers is served.
    snapshot-backup-interval 0s takes them back to back."""
    s = servers(conf={"request-timeout": "1s"})  # the interval: 5 s
    assert put(s, "a", "1")[0] == 204
    st, _, body = s.request("GET", "/admin/snapshot")
    assert st == 200 and parse_snapshot(body)[2] == {b"a": b"1"}
    st, _, body = s.request("GET", "/admin/snapshot")
    assert st == 200 and parse_snapshot(body)[2] == {b"a": b"1"}
    assert put(s, "b", "2")[0] == 204
    t0 = time.time()
    st, _, body = s.request("GET", "/admin/snapshot")
    assert st == 503, body
    assert re.fullmatch(rb"A snapshot for backups was started less than "
                        rb"snapshot-backup-interval ago; retry in \d+ s\n?",
                        body), body
    assert time.time() - t0 < 1
    ch = grpc.insecure_channel(f"127.0.0.1:{s.grpc_port}")
    try:
        f = ch.unary_stream("/etcdserverpb.Maintenance/Snapshot",
                            request_serializer=lambda x: x,
                            response_deserializer=lambda x: x)
        with pytest.raises(grpc.RpcError) as e:
            list(f(b"", timeout=10))
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "snapshot-backup-interval" in e.value.details()
    finally:
        ch.close()
    assert forks(s) == 1
    s.stop()
    s.conf["snapshot-backup-interval"] = "0s"
    s.write_conf()
    s.start()
    for k in ("c", "d"):
        assert put(s, k, "3")[0] == 204
        st, _, body = s.request("GET", "/admin/snapshot")
        assert st == 200 and k.encode() in parse_snapshot(body)[2]
    assert forks(s) == 3
