"""etcd v3 Watch and Lease on PyazDB's gRPC port, driven by Debian's etcdctl
3.4 (ETCDCTL_API=3) and by python grpcio with stubs generated from
proto/etcd_rpc.proto, against a 3-node cluster. Where etcd 3.4
(etcd-server) is installed, the deterministic etcdctl outputs are compared
with a real one-member etcd started here."""
import base64
import json
import queue
import re
import subprocess
import threading
import time
import os

import grpc
import pytest

from grpc_helpers import etcd_call as unary, rpc_error
from conftest import wait_for
from test_cluster import leader_of
from test_etcd import (ETCDCTL, base_revision, cluster, ctl, ctl_error,
                       ctl_json, etcd)  # noqa: F401 (fixtures)

pytestmark = pytest.mark.skipif(
    ETCDCTL is None, reason="etcdctl missing: scripts/install-deps.sh test "
    "installs etcd-client")


class Bg:
    """etcdctl running in the background, its output read line by line."""

    def __init__(self, eps, *args):
        env = dict(os.environ, ETCDCTL_API="3")
        eps = eps if isinstance(eps, str) else f"127.0.0.1:{eps}"
        self.p = subprocess.Popen([ETCDCTL, f"--endpoints={eps}", *args],
                                  stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, env=env)
        self.lines = []
        self.q = queue.Queue()
        self.err = []
        threading.Thread(target=self._read, args=(self.p.stdout, self.q),
                         daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    @staticmethod
    def _read(f, q):
        for line in iter(f.readline, b""):
            q.put(line.decode().rstrip("\n"))

    def _read_err(self):
        for line in iter(self.p.stderr.readline, b""):
            self.err.append(line.decode())

    def wait_for(self, pred, timeout=20):
        deadline = time.time() + timeout
        while not pred(self.lines):
            left = deadline - time.time()
            assert left > 0, f"waited for output; have {self.lines} " \
                f"{''.join(self.err)[-2000:]}"
            try:
                self.lines.append(self.q.get(timeout=min(left, 0.5)))
            except queue.Empty:
                pass
        return self.lines

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
        try:
            self.p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()


def ends_with(text):
    return lambda lines: len(lines) > 0 and lines[-1] == text


# --- etcdctl watch --------------------------------------------------------------

WATCHES = [
    ["w"],
    ["p/", "--prefix"],
    ["w", "--prev-kv"],
    ["a", "c"],  # the range [a, c)
]
WRITES = [
    ["put", "w", "1"], ["put", "p/x", "2"], ["put", "w", "3"],
    ["put", "p/y", "4"], ["del", "w"], ["del", "p/", "--prefix"],
    ["put", "a", "5"], ["put", "b", "6"], ["put", "c", "7"],
    ["put", "w", "end"], ["put", "p/z", "end"], ["put", "b", "end"],
]


def watch_script(port):
    """Watches from the next revision on, then the writes: what each
    watcher printed."""
    start = base_revision(port) + 1
    bgs = [Bg(port, "watch", "--rev", str(start), *w) for w in WATCHES]
    try:
        for w in WRITES:
            ctl(port, *w)
        return [b.wait_for(ends_with("end")) for b in bgs]
    finally:
        for b in bgs:
            b.stop()


def test_etcdctl_watch(cluster):
    nodes, leader, follower = cluster
    out = watch_script(follower.grpc_port)
    assert out[0] == ["PUT", "w", "1", "PUT", "w", "3", "DELETE", "w", "",
                      "PUT", "w", "end"]
    assert out[1] == ["PUT", "p/x", "2", "PUT", "p/y", "4", "DELETE", "p/x",
                      "", "DELETE", "p/y", "", "PUT", "p/z", "end"]
    # --prev-kv: the previous key and value before each event's
    assert out[2] == ["PUT", "w", "1", "PUT", "w", "1", "w", "3",
                      "DELETE", "w", "3", "w", "", "PUT", "w", "end"]
    assert out[3] == ["PUT", "a", "5", "PUT", "b", "6", "PUT", "b", "end"]


def test_etcdctl_watch_same_as_etcd(cluster, etcd):
    nodes, leader, follower = cluster
    assert watch_script(leader.grpc_port) == watch_script(etcd)


def test_etcdctl_watch_survives_leader_kill(cluster):
    # etcdctl with every endpoint; the node serving its watch may be the
    # leader, which dies: etcdctl resumes on another node after the last
    # revision it saw, and no event is lost or repeated.
    nodes, leader, follower = cluster
    eps = ",".join(f"127.0.0.1:{s.grpc_port}"
                   for s in [leader] + [s for s in nodes if s is not leader])
    start = base_revision(follower.grpc_port) + 1
    bg = Bg(eps, "watch", "--prefix", "k/", "--rev", str(start))
    try:
        for i in range(5):
            ctl(follower.grpc_port, "put", f"k/{i}", str(i))
        bg.wait_for(lambda ls: len(ls) >= 15)
        leader.kill()
        leader_of(nodes, timeout=30, exclude=(leader,))
        deadline = time.time() + 30
        i = 5
        while i < 10:
            rc, out, err = ctl(follower.grpc_port, "put", f"k/{i}", str(i),
                               check=False)
            if rc == 0:
                i += 1
            else:
                assert time.time() < deadline, err
                time.sleep(0.2)
        lines = bg.wait_for(lambda ls: len(ls) >= 30, timeout=30)
        want = []
        for i in range(10):
            want += ["PUT", f"k/{i}", str(i)]
        assert lines == want
    finally:
        bg.stop()


# --- etcdctl lease ---------------------------------------------------------------

GRANTED = re.compile(r"^lease ([0-9a-f]{16}) granted with TTL\((\d+)s\)$")


def grant(port, ttl):
    out = ctl(port, "lease", "grant", str(ttl))[1].strip()
    m = GRANTED.match(out)
    assert m, out
    return m.group(1)


def test_etcdctl_lease(cluster):
    nodes, leader, follower = cluster
    fp, lp = follower.grpc_port, leader.grpc_port
    lid = grant(fp, 60)
    assert GRANTED.match(ctl(fp, "lease", "grant", "60")[1].strip())
    ctl(fp, "put", "--lease=" + lid, "l/a", "1")
    ctl(lp, "put", "--lease=" + lid, "l/b", "2")
    # the key's lease shows in a range
    r = ctl_json(fp, "get", "l/a")
    assert r["kvs"][0]["lease"] == int(lid, 16)
    out = ctl(fp, "lease", "timetolive", lid, "--keys")[1].strip()
    m = re.match(r"^lease (\w+) granted with TTL\(60s\), remaining\((\d+)s\),"
                 r" attached keys\(\[(.*)\]\)$", out)
    assert m and m.group(1) == lid, out
    assert 55 <= int(m.group(2)) <= 60
    assert sorted(m.group(3).split(" ")) == ["l/a", "l/b"]
    out = ctl(lp, "lease", "list")[1].split()
    assert out[:3] == ["found", "2", "leases"] and lid in out
    assert ctl(fp, "lease", "keep-alive", "--once", lid)[1].strip() == \
        f"lease {lid} keepalived with TTL(60)"
    # revoke: the keys go, a watcher sees them deleted
    start = base_revision(fp) + 1
    w = Bg(fp, "watch", "--prefix", "l/", "--rev", str(start))
    try:
        assert ctl(fp, "lease", "revoke", lid)[1].strip() == \
            f"lease {lid} revoked"
        lines = w.wait_for(lambda ls: len(ls) >= 6)
        assert sorted([lines[1], lines[4]]) == ["l/a", "l/b"]
        assert lines[0] == lines[3] == "DELETE"
    finally:
        w.stop()
    assert ctl(lp, "get", "l/", "--prefix")[1] == ""
    assert ctl(fp, "lease", "timetolive", lid)[1].strip() == \
        f"lease {lid} already expired"
    assert ctl_error(fp, "lease", "revoke", lid) == \
        "Error: failed to revoke lease (etcdserver: requested lease not found)"
    assert ctl_error(fp, "put", "--lease=" + lid, "l/c", "3") == \
        "Error: etcdserver: requested lease not found"
    assert ctl_error(fp, "lease", "keep-alive", "--once", lid) == \
        "Error: etcdserver: requested lease not found"


def test_etcdctl_lease_keepalive_and_expiry(cluster):
    # keep-alive holds a 2-second lease for several TTLs; once it stops,
    # the leader revokes the lease and the key goes.
    nodes, leader, follower = cluster
    fp = follower.grpc_port
    lid = grant(fp, 2)
    ctl(fp, "put", "--lease=" + lid, "ka", "v")
    ka = Bg(fp, "lease", "keep-alive", lid)
    try:
        line = f"lease {lid} keepalived with TTL(2)"
        t0 = time.time()
        ka.wait_for(lambda ls: ls.count(line) >= 6, timeout=30)
        assert time.time() - t0 >= 1.5
        assert ctl(fp, "get", "ka", "--print-value-only")[1] == "v\n"
    finally:
        ka.stop()
    deadline = time.time() + 15
    while ctl(fp, "get", "ka")[1] != "":
        assert time.time() < deadline, "the lease did not expire"
        time.sleep(0.2)
    assert ctl(fp, "lease", "timetolive", lid)[1].strip() == \
        f"lease {lid} already expired"


LEASE_SCRIPT = [
    ["lease", "grant", "100"], ["lease", "timetolive", "@L"],
    ["lease", "timetolive", "@L", "--keys"],
    ["put", "--lease=@L", "x", "1"], ["lease", "timetolive", "@L", "--keys"],
    ["lease", "keep-alive", "--once", "@L"], ["lease", "list"],
    ["lease", "revoke", "@L"], ["get", "x"], ["lease", "revoke", "@L"],
    ["lease", "timetolive", "@L"], ["lease", "keep-alive", "--once", "@L"],
    ["put", "--lease=@L", "x", "1"], ["lease", "revoke", "1234"],
    ["lease", "timetolive", "1234"],
]


def lease_script(port):
    out = []
    lid = None
    for tmpl in LEASE_SCRIPT:
        cmd = [c.replace("@L", lid or "") for c in tmpl]
        rc, o, e = ctl(port, *cmd, check=False)
        o = o.strip()
        if cmd[:2] == ["lease", "grant"]:
            lid = GRANTED.match(o).group(1)
        if lid:
            o = o.replace(lid, "LID")
        # the remaining time depends on when the command ran
        o = re.sub(r"remaining\((\d+)s\)", "remaining(N)", o)
        out.append((tmpl, rc, o if rc == 0 else
                    e.strip().splitlines()[-1]))
    return out


def test_etcdctl_lease_same_as_etcd(cluster, etcd):
    nodes, leader, follower = cluster
    a = lease_script(follower.grpc_port)
    b = lease_script(etcd)
    for x, y in zip(a, b):
        assert x == y
    assert len(a) == len(b) == len(LEASE_SCRIPT)


# --- etcdctl lock and elect --------------------------------------------------------
# etcd's concurrency recipes (a session lease kept alive, a key under the
# name per contender, a Txn on its create revision, a sorted Range for the
# owner, and a Watch for the deletion of the one before), run by etcdctl
# itself against different members.


def test_etcdctl_lock_excludes_and_hands_over(cluster, tmp_path):
    # Three contenders, one per member, each holding the lock for 0.3 s:
    # their critical sections never overlap, and every one gets its turn.
    nodes, leader, follower = cluster
    log = tmp_path / "held.log"
    script = tmp_path / "hold.sh"
    script.write_text(f"#!/bin/sh\necho \"in $1 $ETCD_LOCK_KEY\" >> {log}\n"
                      f"sleep 0.3\necho \"out $1\" >> {log}\n")
    script.chmod(0o755)
    bgs = [Bg(s.grpc_port, "lock", "L", "--", str(script), s.name)
           for s in nodes]
    try:
        for b in bgs:
            assert b.p.wait(timeout=30) == 0, "".join(b.err)
    finally:
        for b in bgs:
            b.stop()
    lines = log.read_text().splitlines()
    assert len(lines) == 6, lines
    names = []
    for i in range(0, 6, 2):
        held, left = lines[i].split(), lines[i + 1].split()
        assert held[0] == "in" and left == ["out", held[1]], lines
        assert held[2].startswith("L/"), lines  # the contender's own key
        names.append(held[1])
    assert sorted(names) == sorted(s.name for s in nodes), lines
    # every contender's key went with its session
    assert ctl(follower.grpc_port, "get", "L/", "--prefix")[1] == ""


def test_etcdctl_lock_of_a_killed_holder_passes_when_its_lease_expires(
        cluster, tmp_path):
    nodes, leader, follower = cluster
    others = [s for s in nodes if s is not follower]
    holder = Bg(follower.grpc_port, "lock", "--ttl=2", "K")
    waiter = None
    try:
        key = holder.wait_for(lambda ls: len(ls) >= 1)[0]
        assert key.startswith("K/"), key
        waiter = Bg(others[0].grpc_port, "lock", "K")
        time.sleep(1)
        assert waiter.q.empty() and waiter.p.poll() is None, \
            "the lock was taken while held"
        # a holder that dies without letting go: its session lease
        # expires within its TTL (2 s) and the waiter gets the lock
        holder.p.kill()
        killed = time.time()
        got = waiter.wait_for(lambda ls: len(ls) >= 1, timeout=15)[0]
        took = time.time() - killed
        assert got.startswith("K/") and got != key, (got, key)
        assert took < 8, f"the lock passed {took:.1f} s after the kill"
        # the dead holder's key is gone, the new one's is there
        keys = ctl(others[1].grpc_port, "get", "K/", "--prefix",
                   "--keys-only")[1].split()
        assert keys == [got], keys
    finally:
        holder.stop()
        if waiter:
            waiter.stop()


def test_etcdctl_elect_and_observe(cluster):
    nodes, leader, follower = cluster
    a, b, c = nodes
    first = Bg(a.grpc_port, "elect", "E", "first")
    second = observer = None
    try:
        won = first.wait_for(lambda ls: len(ls) >= 2)
        assert won[0].startswith("E/") and won[1] == "first", won
        observer = Bg(b.grpc_port, "elect", "--listen", "E")
        assert observer.wait_for(lambda ls: len(ls) >= 2)[:2] == won
        second = Bg(c.grpc_port, "elect", "E", "second")
        time.sleep(1)
        assert second.q.empty(), "a second leader while the first leads"
        # SIGINT: etcdctl resigns (deletes its key) and exits
        first.p.send_signal(2)
        assert first.p.wait(timeout=10) == 0, "".join(first.err)
        won2 = second.wait_for(lambda ls: len(ls) >= 2)
        assert won2[0].startswith("E/") and won2[0] != won[0], won2
        assert won2[1] == "second", won2
        # the observer sees the new leader's proposal
        assert observer.wait_for(lambda ls: "second" in ls)[-2:] == won2
    finally:
        for x in (first, second, observer):
            if x:
                x.stop()


# --- grpcio: the Watch stream -----------------------------------------------------

def channel(port):
    return grpc.insecure_channel(f"127.0.0.1:{port}")


class WatchStream:
    """One Watch call: send requests, read answers with a timeout."""

    def __init__(self, port, pb, options=()):
        self.pb = pb
        self.ch = grpc.insecure_channel(f"127.0.0.1:{port}", options=options)
        self.reqs = queue.Queue()
        self.resps = queue.Queue()
        f = self.ch.stream_stream("/etcdserverpb.Watch/Watch",
                                  request_serializer=pb.WatchRequest
                                  .SerializeToString,
                                  response_deserializer=pb.WatchResponse
                                  .FromString)
        self.call = f(iter(self.reqs.get, None), timeout=60)
        self.reading = threading.Event()  # cleared: stop reading
        self.reading.set()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        try:
            for r in self.call:
                self.resps.put(r)
                self.reading.wait()
        except grpc.RpcError as e:
            self.resps.put(e)

    def send(self, **kw):
        self.reqs.put(self.pb.WatchRequest(**kw))

    def create(self, **kw):
        self.send(create_request=self.pb.WatchCreateRequest(**kw))

    def next(self, timeout=10):
        r = self.resps.get(timeout=timeout)
        if isinstance(r, Exception):
            raise r
        return r

    def nothing(self, wait=0.5):
        try:
            r = self.resps.get(timeout=wait)
        except queue.Empty:
            return True
        raise AssertionError(f"unexpected answer {r}")

    def close(self):
        self.reqs.put(None)
        self.call.cancel()
        self.ch.close()


def put(port, pb, key, value, lease=0):
    return unary(port, pb, "KV", "Put",
                 pb.PutRequest(key=key, value=value, lease=lease),
                 "PutResponse")


def events(r):
    return [(e.type, e.kv.key, e.kv.value) for e in r.events]


def test_watch_stream(cluster, epb):
    nodes, leader, follower = cluster
    pb = epb
    fp, lp = follower.grpc_port, leader.grpc_port
    ws = WatchStream(fp, pb)
    try:
        # several watches on one stream: ids from 0 up unless chosen
        ws.create(key=b"s/", range_end=b"s0")
        r = ws.next()
        assert r.created and r.watch_id == 0 and not r.canceled
        assert r.header.revision == base_revision(fp)
        ws.create(key=b"s/a", prev_kv=True)
        assert ws.next().watch_id == 1
        ws.create(key=b"s/b", watch_id=42, filters=[pb.WatchCreateRequest.NOPUT])
        assert ws.next().watch_id == 42
        ws.create(key=b"x", watch_id=42)
        r = ws.next()
        assert r.created and r.canceled and r.watch_id == -1
        assert "duplicate watch ID" in r.cancel_reason
        ws.create(key=b"z", range_end=b"a")
        r = ws.next()
        assert r.canceled and r.cancel_reason == "mvcc: watcher range is empty"
        rev = put(lp, pb, b"s/a", b"1").header.revision
        got = {}
        for _ in range(2):
            r = ws.next()
            got[r.watch_id] = r
            assert r.header.revision == rev
        assert events(got[0]) == [(0, b"s/a", b"1")]
        ev = got[1].events[0]
        assert (ev.kv.create_revision, ev.kv.mod_revision, ev.kv.version,
                ev.kv.lease) == (rev, rev, 1, 0)
        assert not ev.HasField("prev_kv")
        put(lp, pb, b"s/a", b"2")
        got = {}
        for _ in range(2):
            r = ws.next()
            got[r.watch_id] = r
        assert got[1].events[0].prev_kv.value == b"1"
        assert not got[0].events[0].HasField("prev_kv")
        # NOPUT: watch 42 sees only the delete of s/b
        put(lp, pb, b"s/b", b"1")
        assert ws.next().watch_id == 0
        unary(lp, pb, "KV", "DeleteRange", pb.DeleteRangeRequest(key=b"s/b"),
              "DeleteRangeResponse")
        got = {}
        for _ in range(2):
            r = ws.next()
            got[r.watch_id] = events(r)
        assert got == {0: [(1, b"s/b", b"")], 42: [(1, b"s/b", b"")]}
        # cancel: answered, then nothing more for it
        ws.send(cancel_request=pb.WatchCancelRequest(watch_id=0))
        r = ws.next()
        assert r.canceled and r.watch_id == 0
        ws.send(cancel_request=pb.WatchCancelRequest(watch_id=99))  # unknown
        put(lp, pb, b"s/c", b"1")
        ws.nothing()
        # progress request: an answer naming no watch, at the revision
        ws.send(progress_request=pb.WatchProgressRequest())
        r = ws.next()
        assert r.watch_id == -1 and not r.events and not r.created
        assert r.header.revision == base_revision(fp)
    finally:
        ws.close()


def test_watch_start_revision_and_compacted(servers, epb):
    # a small history: a start older than it is cancelled as compacted
    from test_cluster import make_cluster
    pb = epb
    nodes = make_cluster(servers, conf={"watch-history-events": "5"})
    leader = leader_of(nodes)
    p = leader.grpc_port
    first = put(p, pb, b"h", b"0").header.revision
    for i in range(1, 10):
        put(p, pb, b"h", str(i).encode())
    ws = WatchStream(p, pb)
    try:
        ws.create(key=b"h", start_revision=first)
        r = ws.next()
        assert r.created and not r.canceled
        r = ws.next()
        assert r.canceled and r.compact_revision > first
        assert r.cancel_reason == \
            "etcdserver: mvcc: required revision has been compacted"
        # from the oldest revision held: every event since, in order
        ws.create(key=b"h", start_revision=r.compact_revision)
        assert ws.next().created
        vals = []
        while len(vals) < 10 - (r.compact_revision - first):
            vals += [e.kv.value for e in ws.next().events]
        assert vals[-1] == b"9"
        # a future start: events once the revision comes
        cur = base_revision(p)
        ws.create(key=b"h2", start_revision=cur + 2)
        assert ws.next().created
        put(p, pb, b"h2", b"a")
        ws.nothing()
        put(p, pb, b"h2", b"b")
        assert events(ws.next()) == [(0, b"h2", b"b")]
    finally:
        ws.close()


NEGATIVE_START = \
    "etcdserver: start_revision must not be negative (0: the next revision)"


def test_watch_negative_start_revision(servers, epb):
    # A negative start names no revision: refused as an empty range is
    # (created and canceled, watch_id -1, the reason, no compact_revision
    # to resume from), not answered as compacted, before and after the
    # history dropped revisions; the stream carries on.
    pb = epb
    node = servers(conf={"watch-history-events": "2"})
    p = node.grpc_port
    ws = WatchStream(p, pb)
    try:
        for n in range(2):
            for s in (-1, -2, -(1 << 63)):
                ws.create(key=b"neg", start_revision=s)
                r = ws.next()
                assert (r.created, r.canceled, r.watch_id,
                        r.compact_revision, r.cancel_reason) == \
                    (True, True, -1, 0, NEGATIVE_START), r
            for i in range(4):
                put(p, pb, b"neg/other", b"%d" % i)
        assert watchers(node) == 0
        ws.create(key=b"neg")
        r = ws.next()
        assert r.created and not r.canceled and r.watch_id == 0
        put(p, pb, b"neg", b"v")
        assert events(ws.next()) == [(0, b"neg", b"v")]
    finally:
        ws.close()


def watchers(server):
    return server.metric("pyazdb_watchers")


def test_watch_fragment_and_progress_notify(servers, epb):
    from test_cluster import make_cluster
    pb = epb
    nodes = make_cluster(servers, n=1, conf={
        "grpc-max-message": "64kb", "max-key-size": "1kb",
        "max-value-size": "32kb", "watch-progress-interval": "300ms"})
    p = nodes[0].grpc_port
    ws = WatchStream(p, pb)
    try:
        for i in range(8):
            put(p, pb, b"f/%d" % i, b"v" * 20000)
        ws.create(key=b"f/", range_end=b"f0", fragment=True, prev_kv=True)
        assert ws.next().created
        ws.create(key=b"idle", progress_notify=True, watch_id=7)
        assert ws.next().created
        # one revision deletes 8 values of 20 kB, which the watch gets as
        # previous values: more than one message of 64 kB
        unary(p, pb, "KV", "DeleteRange", pb.DeleteRangeRequest(
            key=b"f/", range_end=b"f0"), "DeleteRangeResponse")
        got, frags = [], 0
        while len(got) < 8:
            r = ws.next()
            if r.watch_id == 7:
                continue  # a progress notification
            got += [e.kv.key for e in r.events]
            frags += 1
            assert r.fragment == (len(got) < 8)
            # each piece fits grpc-max-message (64 kB), which the
            # client may also enforce
            assert r.ByteSize() <= 64 * 1024, r.ByteSize()
        assert frags > 1 and got == [b"f/%d" % i for i in range(8)]
        # progress_notify: an idle watch gets empty answers
        r = ws.next(timeout=5)
        while r.watch_id != 7:
            r = ws.next(timeout=5)
        assert not r.events and not r.canceled
    finally:
        ws.close()


def progress_answers(ws, wait):
    """Every answer for wait seconds: all progress reports (no events)."""
    got, end = [], time.time() + wait
    while True:
        try:
            r = ws.next(timeout=max(0.01, end - time.time()))
        except queue.Empty:
            return got
        assert not r.events and not r.created and not r.canceled, r
        got.append((r.watch_id, r.header.revision))


def test_progress_never_before_a_future_start(servers, epb):
    # A watch starting 4 revisions ahead: neither its progress_notify
    # reports nor the answer to a progress request on a stream holding
    # such a watch may name a revision below its start - 1 (a client
    # resumes from that revision, and would get revisions it never asked
    # for); both come once the node is there, with no event for them.
    pb = epb
    node = servers(conf={"watch-progress-interval": "300ms"})
    p = node.grpc_port
    cur = put(p, pb, b"other", b"0").header.revision
    start = cur + 4
    ws, ws2 = WatchStream(p, pb), WatchStream(p, pb)
    try:
        ws.create(key=b"pf", start_revision=start, progress_notify=True,
                  watch_id=3)
        assert ws.next().created
        ws2.create(key=b"pf", start_revision=start)
        assert ws2.next().created
        ws2.send(progress_request=pb.WatchProgressRequest())
        assert progress_answers(ws, 1.5) == []  # 5 intervals: none
        assert progress_answers(ws2, 0.1) == []
        for i in range(3):
            put(p, pb, b"other", b"%d" % i)
        assert progress_answers(ws2, 1.5) == [(-1, start - 1)]
        got = progress_answers(ws, 0.5)
        assert got and set(got) == {(3, start - 1)}, got
        put(p, pb, b"pf", b"x")
        for w in (ws, ws2):
            r = w.next()
            while not r.events:
                assert r.header.revision == start - 1
                r = w.next()
            assert (r.header.revision, events(r)) == \
                (start, [(0, b"pf", b"x")])
    finally:
        ws.close()
        ws2.close()


def test_progress_never_before_the_start_on_a_lagging_node(servers, epb):
    # A follower behind the leader (here: stopped while the leader wrote,
    # then alone, so that it cannot catch up) gets a watch starting after
    # the leader's revision, as a client that read it there asks: no
    # progress report at the follower's own revision until it caught up.
    from test_cluster import make_cluster
    pb = epb
    nodes = make_cluster(servers, conf={"watch-progress-interval": "300ms"})
    leader = leader_of(nodes)
    lagging = next(s for s in nodes if s is not leader)
    put(leader.grpc_port, pb, b"lag/0", b"0")
    wait_for(lambda: base_revision(lagging.grpc_port) ==
             base_revision(leader.grpc_port), "the follower caught up",
             step=0.1)
    behind = base_revision(lagging.grpc_port)
    lagging.stop()
    for i in range(1, 4):
        rev = put(leader.grpc_port, pb, b"lag/%d" % i, b"x").header.revision
    others = [s for s in nodes if s is not lagging]
    for s in others:
        s.stop()
    lagging.start()
    assert unary(lagging.grpc_port, pb, "KV", "Range", pb.RangeRequest(
        key=b"lag/", serializable=True),
        "RangeResponse").header.revision == behind < rev
    ws = WatchStream(lagging.grpc_port, pb)
    try:
        ws.create(key=b"lag/", range_end=b"lag0", start_revision=rev + 1,
                  progress_notify=True, watch_id=5)
        assert ws.next().created
        ws.send(progress_request=pb.WatchProgressRequest())
        assert progress_answers(ws, 1.5) == []
        for s in others:
            s.start(wait=False)
        got = progress_answers(ws, 3)
        assert (-1, rev) in got and (5, rev) in got, got
        assert {r for _, r in got} == {rev}, got
    finally:
        ws.close()


def test_watch_large_revision_in_pieces(servers, epb):
    """A revision whose answer passes 1 MiB is written from the history
    in pieces as the client reads, as one WatchResponse all the same:
    every event and previous value, then what follows on the stream in
    order; a cancel sent meanwhile is answered after it."""
    pb = epb
    node = servers()
    p = node.grpc_port
    big = [("grpc.max_receive_message_length", 64 << 20),
           ("grpc.http2.bdp_probe", 0)]  # the window stays small
    ws = WatchStream(p, pb, options=big)
    try:
        values = {b"L/%02d" % i: bytes([65 + i]) * 300000 for i in range(12)}
        for k, v in values.items():
            put(p, pb, k, v)
        ws.create(key=b"L/", range_end=b"L0", prev_kv=True)
        assert ws.next().created
        ws.create(key=b"L/05", watch_id=9)
        assert ws.next().created
        # the client reads nothing for a while: the answer is begun, and
        # the cancel arrives while it waits
        ws.reading.clear()
        r = unary(p, pb, "KV", "DeleteRange", pb.DeleteRangeRequest(
            key=b"L/", range_end=b"L0"), "DeleteRangeResponse")
        rev = r.header.revision
        time.sleep(0.5)
        ws.send(cancel_request=pb.WatchCancelRequest(watch_id=0))
        time.sleep(0.3)
        ws.reading.set()
        answers = [ws.next() for _ in range(3)]
        by_id = {}
        for a in answers:
            by_id.setdefault(a.watch_id, []).append(a)
        got, cancel = by_id[0]  # the revision, then the cancel
        assert got.header.revision == rev and not got.canceled
        assert not got.fragment and len(got.events) == 12
        assert [(e.type, e.kv.key, e.prev_kv.value) for e in got.events] == \
            [(1, k, v) for k, v in values.items()]  # 1: DELETE
        assert cancel.canceled and not cancel.events
        (other,) = by_id[9]
        assert [e.kv.key for e in other.events] == [b"L/05"]
        put(p, pb, b"L/01", b"after")
        ws.nothing()
    finally:
        ws.close()


def test_watch_limits(servers, epb):
    from test_cluster import make_cluster
    pb = epb
    nodes = make_cluster(servers, n=1, conf={"etcd-watch-max-per-stream": "2",
                                             "watch-max-buffer": "1mb"})
    p = nodes[0].grpc_port
    ws = WatchStream(p, pb)
    try:
        for k in (b"a", b"b"):
            ws.create(key=k)
            assert ws.next().created
        ws.create(key=b"c")
        r = ws.next()
        assert r.created and r.canceled and r.watch_id == -1
        assert "etcd-watch-max-per-stream" in r.cancel_reason
    finally:
        ws.close()
    # a client that stops reading: once its stream's flow-control window
    # and the stream's queue are full, its watch falls watch-max-buffer
    # behind in the history, and once it has taken nothing for 2 s it is
    # cancelled with the reason (no BDP probing: the window stays at
    # 64 kB while nothing is read)
    ws = WatchStream(p, pb, options=[("grpc.http2.bdp_probe", 0)])
    try:
        ws.create(key=b"big/", range_end=b"big0")
        ws.reading.clear()
        assert ws.next().created
        ch = channel(p)
        f = ch.unary_unary("/etcdserverpb.KV/Put",
                           request_serializer=pb.PutRequest.SerializeToString,
                           response_deserializer=pb.PutResponse.FromString)
        value = b"x" * 65536
        for i in range(400):  # 26 MB of events, more than any window
            f(pb.PutRequest(key=b"big/%d" % (i % 10), value=value), timeout=10)
        ch.close()
        deadline = time.time() + 30
        while nodes[0].metric("pyazdb_watch_cancelled_slow_total") < 1:
            assert time.time() < deadline, "the watch was not cancelled"
            time.sleep(0.1)
        ws.reading.set()
        n, r = 0, ws.next()
        while not r.canceled:
            n += len(r.events)
            try:
                r = ws.next()
            except queue.Empty:
                raise AssertionError(f"got {n} events and no cancel")
        assert n < 400, "a reader that stopped was never cancelled"
        assert r.watch_id == 0 and r.cancel_reason.startswith(
            "etcdserver: watch is too slow"), r
    finally:
        ws.close()


def test_open_streams_hold_at_most_half_the_connections(servers, epb):
    """A connection holding a Watch stream is never evicted, so such
    connections take at most half of max-clients: with max-clients 8,
    a fifth connection's Watch gets RESOURCE_EXHAUSTED, while more
    watches on a connection that holds one, other calls and the etcd
    gateway's lease keep-alives still work."""
    pb = epb
    node = servers(conf={"max-clients": "8"})
    own = [("grpc.use_local_subchannel_pool", 1)]  # a connection each
    held = [WatchStream(node.grpc_port, pb, options=own) for _ in range(4)]
    try:
        for i, ws in enumerate(held):
            ws.create(key=b"k%d" % i)
            assert ws.next().created
        extra = WatchStream(node.grpc_port, pb, options=own)
        extra.create(key=b"x")
        with pytest.raises(grpc.RpcError) as e:
            extra.next()
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "half of max-clients" in e.value.details()
        extra.close()
        # a second watch on a connection that holds one is served
        held[0].create(key=b"more")
        assert held[0].next().created
        r = unary(node.grpc_port, pb, "KV", "Put",
                  pb.PutRequest(key=b"k0", value=b"v"))
        assert r.header.revision > 0
        assert held[0].next().events[0].kv.key == b"k0"
        # the etcd gateway's keep-alives (one message a call) still work
        from test_etcd_gateway import gw
        lease = gw(node.http_port).lease(ttl=60)
        assert lease.refresh() == 60
        # one closed: room for another
        held.pop().close()
        deadline = time.time() + 10
        while True:
            ws = WatchStream(node.grpc_port, pb, options=own)
            ws.create(key=b"y")
            try:
                assert ws.next().created
                held.append(ws)
                break
            except grpc.RpcError:
                ws.close()
                assert time.time() < deadline, "no room after one closed"
                time.sleep(0.1)
    finally:
        for ws in held:
            ws.close()


def test_watch_bad_request(cluster, epb):
    nodes, leader, follower = cluster
    with channel(follower.grpc_port) as ch:
        f = ch.stream_stream("/etcdserverpb.Watch/Watch",
                             request_serializer=lambda b: b,
                             response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as e:
            list(f(iter([b"\xff\xff\xff"]), timeout=10))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_watch_key_over_max_key_size(servers, epb):
    # a key or range_end over max-key-size is refused like an empty
    # range (created and canceled, id -1), before any watcher is made
    pb = epb
    s = servers(conf={"max-key-size": "1kb"})
    ws = WatchStream(s.grpc_port, pb)
    try:
        for kw in ({"key": b"k" * 1025},
                   {"key": b"a", "range_end": b"z" * 1025},
                   {"key": b"\0" * 1025, "range_end": b"\0"}):
            ws.create(**kw)
            r = ws.next()
            assert (r.created, r.canceled, r.watch_id) == (True, True, -1)
            assert r.cancel_reason == "etcdserver: request is too large"
        assert s.metric("pyazdb_watchers") == 0
        # max-key-size itself is fine, and the stream carries on
        ws.create(key=b"k" * 1024, range_end=b"z" * 1024)
        r = ws.next()
        assert r.created and not r.canceled and r.watch_id == 0
        put(s.grpc_port, pb, b"m", b"1")
        assert events(ws.next()) == [(0, b"m", b"1")]
    finally:
        ws.close()


# --- grpcio: Lease ----------------------------------------------------------------

def keepalive(port, pb, ids, timeout=10):
    with channel(port) as ch:
        f = ch.stream_stream("/etcdserverpb.Lease/LeaseKeepAlive",
                             request_serializer=pb.LeaseKeepAliveRequest
                             .SerializeToString,
                             response_deserializer=pb.LeaseKeepAliveResponse
                             .FromString)
        return list(f(iter([pb.LeaseKeepAliveRequest(ID=i) for i in ids]),
                      timeout=timeout))


def test_lease_calls(cluster, epb):
    nodes, leader, follower = cluster
    pb = epb
    fp, lp = follower.grpc_port, leader.grpc_port
    # a client-chosen id, through a follower
    r = unary(fp, pb, "Lease", "LeaseGrant", pb.LeaseGrantRequest(TTL=30,
              ID=777), "LeaseGrantResponse")
    assert (r.ID, r.TTL, r.error) == (777, 30, "")
    code, det = rpc_error(unary, lp, pb, "Lease", "LeaseGrant",
                          pb.LeaseGrantRequest(TTL=30, ID=777),
                          "LeaseGrantResponse")
    assert (code, det) == (grpc.StatusCode.FAILED_PRECONDITION,
                           "etcdserver: lease already exists")
    code, det = rpc_error(unary, fp, pb, "Lease", "LeaseGrant",
                          pb.LeaseGrantRequest(TTL=10 ** 10),
                          "LeaseGrantResponse")
    assert (code, det) == (grpc.StatusCode.OUT_OF_RANGE,
                           "etcdserver: too large lease TTL")
    # the bounds: lease-max-ttl (30 days) itself, one second past it, and
    # a TTL below 1 raised to 1 (etcd raises it to its minimum)
    month = 30 * 24 * 3600
    code, det = rpc_error(unary, fp, pb, "Lease", "LeaseGrant",
                          pb.LeaseGrantRequest(TTL=month + 1),
                          "LeaseGrantResponse")
    assert (code, det) == (grpc.StatusCode.OUT_OF_RANGE,
                           "etcdserver: too large lease TTL")
    for ttl, want in ((month, month), (0, 1), (-7, 1)):
        r = unary(fp, pb, "Lease", "LeaseGrant", pb.LeaseGrantRequest(TTL=ttl),
                  "LeaseGrantResponse")
        assert r.TTL == want and r.ID > 0, (ttl, r)
        t = unary(lp, pb, "Lease", "LeaseTimeToLive",
                  pb.LeaseTimeToLiveRequest(ID=r.ID), "LeaseTimeToLiveResponse")
        assert t.grantedTTL == want, (ttl, t)
        if ttl == month:
            # the remaining TTL is truncated, as etcd's: 1.2 s later,
            # under month - 1 s are left
            time.sleep(1.2)
            t = unary(lp, pb, "Lease", "LeaseTimeToLive",
                      pb.LeaseTimeToLiveRequest(ID=r.ID),
                      "LeaseTimeToLiveResponse")
            assert month - 10 <= t.TTL <= month - 2, t
        unary(lp, pb, "Lease", "LeaseRevoke", pb.LeaseRevokeRequest(ID=r.ID),
              "LeaseRevokeResponse")
    code, det = rpc_error(unary, fp, pb, "Lease", "LeaseGrant",
                          pb.LeaseGrantRequest(TTL=5, ID=-3),
                          "LeaseGrantResponse")
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    auto = unary(lp, pb, "Lease", "LeaseGrant", pb.LeaseGrantRequest(TTL=30),
                 "LeaseGrantResponse").ID
    assert 0 < auto < 2 ** 53 and auto != 777
    # keys with the lease: Put, a Txn put; Range shows the lease
    put(fp, pb, b"lk/1", b"a", lease=777)
    unary(fp, pb, "KV", "Txn", pb.TxnRequest(success=[pb.RequestOp(
        request_put=pb.PutRequest(key=b"lk/2", value=b"b", lease=777))]),
        "TxnResponse")
    rr = unary(follower.grpc_port, pb, "KV", "Range",
               pb.RangeRequest(key=b"lk/", range_end=b"lk0"), "RangeResponse")
    assert [kv.lease for kv in rr.kvs] == [777, 777]
    # unknown leases: Put and a Txn put refused whole
    for req in (pb.PutRequest(key=b"lk/3", value=b"c", lease=778),
                pb.PutRequest(key=b"lk/3", value=b"c", lease=2 ** 60)):
        code, det = rpc_error(unary, fp, pb, "KV", "Put", req, "PutResponse")
        assert (code, det) == (grpc.StatusCode.NOT_FOUND,
                               "etcdserver: requested lease not found")
    code, det = rpc_error(unary, lp, pb, "KV", "Txn", pb.TxnRequest(success=[
        pb.RequestOp(request_put=pb.PutRequest(key=b"lk/3", value=b"c")),
        pb.RequestOp(request_put=pb.PutRequest(key=b"lk/4", value=b"c",
                                               lease=778))]), "TxnResponse")
    assert (code, det) == (grpc.StatusCode.NOT_FOUND,
                           "etcdserver: requested lease not found")
    assert unary(lp, pb, "KV", "Range", pb.RangeRequest(key=b"lk/3"),
                 "RangeResponse").count == 0
    # TimeToLive with keys, through a follower (the leader's clock)
    t = unary(fp, pb, "Lease", "LeaseTimeToLive",
              pb.LeaseTimeToLiveRequest(ID=777, keys=True),
              "LeaseTimeToLiveResponse")
    assert t.ID == 777 and t.grantedTTL == 30 and 25 <= t.TTL <= 30
    assert sorted(t.keys) == [b"lk/1", b"lk/2"]
    t = unary(fp, pb, "Lease", "LeaseTimeToLive",
              pb.LeaseTimeToLiveRequest(ID=12345), "LeaseTimeToLiveResponse")
    assert (t.ID, t.TTL) == (12345, -1)
    ls = unary(fp, pb, "Lease", "LeaseLeases", pb.LeaseLeasesRequest(),
               "LeaseLeasesResponse")
    assert sorted(x.ID for x in ls.leases) == sorted([777, auto])
    # KeepAlive: one answer per request, in order; unknown: TTL 0
    for port in (fp, lp):
        out = keepalive(port, pb, [777, 12345, auto, 777])
        assert [(x.ID, x.TTL) for x in out] == \
            [(777, 30), (12345, 0), (auto, 30), (777, 0 + 30)]
        assert all(x.header.revision > 0 for x in out)
    # Revoke: keys gone, then NOT_FOUND
    r = unary(fp, pb, "Lease", "LeaseRevoke", pb.LeaseRevokeRequest(ID=777),
              "LeaseRevokeResponse")
    assert r.header.revision == base_revision(lp)
    assert unary(lp, pb, "KV", "Range", pb.RangeRequest(
        key=b"lk/", range_end=b"lk0"), "RangeResponse").count == 0
    code, det = rpc_error(unary, fp, pb, "Lease", "LeaseRevoke",
                          pb.LeaseRevokeRequest(ID=777),
                          "LeaseRevokeResponse")
    assert (code, det) == (grpc.StatusCode.NOT_FOUND,
                           "etcdserver: requested lease not found")
    assert [(x.ID, x.TTL) for x in keepalive(fp, pb, [777])] == [(777, 0)]


def test_lease_keepalive_stream_open(cluster, epb):
    # a keep-alive stream that stays open answers each request as it comes
    nodes, leader, follower = cluster
    pb = epb
    lid = unary(follower.grpc_port, pb, "Lease", "LeaseGrant",
                pb.LeaseGrantRequest(TTL=20), "LeaseGrantResponse").ID
    reqs = queue.Queue()
    with channel(follower.grpc_port) as ch:
        f = ch.stream_stream("/etcdserverpb.Lease/LeaseKeepAlive",
                             request_serializer=pb.LeaseKeepAliveRequest
                             .SerializeToString,
                             response_deserializer=pb.LeaseKeepAliveResponse
                             .FromString)
        it = f(iter(reqs.get, None), timeout=30)
        for _ in range(3):
            reqs.put(pb.LeaseKeepAliveRequest(ID=lid))
            r = next(it)
            assert (r.ID, r.TTL) == (lid, 20)
        reqs.put(None)
        assert list(it) == []  # ends OK once the client's side ended


def test_keepalive_after_expiry_renews_nothing(servers, epb):
    # Keep-alives arriving just after a lease's TTL ran out, some while
    # the leader's expiry revoke is being committed: each answers TTL 0
    # (the lease is gone, as etcd says), or a TTL the lease then keeps;
    # never a TTL followed by the revoke deleting the lease anyway.
    pb = epb
    s = servers()
    p = s.grpc_port
    n = 300
    due = []  # (when to send its keep-alive, lease id)
    for i in range(n):
        lid = unary(p, pb, "Lease", "LeaseGrant", pb.LeaseGrantRequest(TTL=1),
                    "LeaseGrantResponse").ID
        # spread over the leader's 100 ms expiry scans after its deadline
        due.append((time.monotonic() + 1.0 + (i * 37 % 130) / 1000, lid))
    due.sort()
    renewed = {}  # lease id -> when the keep-alive that renewed it went
    reqs = queue.Queue()
    with channel(p) as ch:
        f = ch.stream_stream("/etcdserverpb.Lease/LeaseKeepAlive",
                             request_serializer=pb.LeaseKeepAliveRequest
                             .SerializeToString,
                             response_deserializer=pb.LeaseKeepAliveResponse
                             .FromString)
        it = f(iter(reqs.get, None), timeout=60)
        for when, lid in due:
            time.sleep(max(0, when - time.monotonic()))
            sent = time.monotonic()
            reqs.put(pb.LeaseKeepAliveRequest(ID=lid))
            r = next(it)
            assert r.ID == lid
            if r.TTL > 0:
                renewed[lid] = sent
        reqs.put(None)
        assert list(it) == []
    time.sleep(0.2)  # revokes in flight apply
    now = time.monotonic()
    ls = unary(p, pb, "Lease", "LeaseLeases", pb.LeaseLeasesRequest(),
               "LeaseLeasesResponse")
    alive = {x.ID for x in ls.leases}
    # renewed less than its TTL ago: it must still be there
    lost = [lid for lid, t in renewed.items()
            if now - t < 0.8 and lid not in alive]
    assert lost == [], f"{len(lost)} leases revoked after a keep-alive " \
        f"renewed them ({len(renewed)} renewed of {n})"


# Keys attached to one lease out of order (a prefix of another, a digit
# string, a byte above 0x7f among them): a revoke deletes them at one
# revision, and every watcher sees the deletes in bytewise key order.
REVOKED = [b"ro/z", b"ro/m", b"ro/10", b"ro/a0", b"ro/\xff", b"ro/a",
           b"ro/q", b"ro/2"]


def attach_revoked(port, pb):
    """Grant a lease on port and attach REVOKED to it; returns its id."""
    lid = unary(port, pb, "Lease", "LeaseGrant", pb.LeaseGrantRequest(TTL=60),
                "LeaseGrantResponse").ID
    for k in REVOKED:
        put(port, pb, k, b"L", lease=lid)
    return lid


def revoke_watched(port, lid, watch_ports, pb):
    """Revoke lease lid through port with a watcher on each of watch_ports;
    returns the keys of the DELETE events each saw, in order, and their
    revisions."""
    streams = [WatchStream(p, pb) for p in watch_ports]
    try:
        for ws in streams:
            ws.create(key=b"ro/", range_end=b"ro0")
            assert ws.next().created
        unary(port, pb, "Lease", "LeaseRevoke", pb.LeaseRevokeRequest(ID=lid),
              "LeaseRevokeResponse")
        seen = []
        for ws in streams:
            keys, revs = [], set()
            while len(keys) < len(REVOKED):
                r = ws.next()
                keys += [e.kv.key for e in r.events
                         if e.type == 1]  # DELETE
                revs.add(r.header.revision)
            seen.append((keys, revs))
        return seen
    finally:
        for ws in streams:
            ws.close()


def test_revoke_deletes_in_key_order_on_every_node(cluster, epb):
    # The leader, a follower, and a follower restarted from a snapshot
    # taken after the keys were attached (its lease's list of keys rebuilt
    # by the loader): all three watchers see the deletes of the revoke's
    # one revision in the same order, bytewise key order (etcd's).
    nodes, leader, follower = cluster
    pb = epb
    lp = leader.grpc_port
    lid = attach_revoked(lp, pb)
    rev = base_revision(lp)
    st, _, body = follower.request("POST", "/admin/snapshot")
    assert st == 200, body
    follower.stop()
    follower.start()
    wait_for(lambda: base_revision(follower.grpc_port) == rev,
             "the restarted follower caught up", step=0.2)
    seen = revoke_watched(follower.grpc_port, lid,
                          [s.grpc_port for s in nodes], pb)
    orders = {s.name: keys for s, (keys, _) in zip(nodes, seen)}
    assert orders == {s.name: sorted(REVOKED) for s in nodes}
    assert [revs for _, revs in seen] == [{rev + 1}] * len(nodes)


def test_lease_keys_listed_in_key_order(servers, epb):
    # LeaseTimeToLive with keys (and GET /lease?keys=true) lists a lease's
    # keys in bytewise key order: not the order they were attached in,
    # nor the one a node restarted from a snapshot rebuilt (a leader
    # elected after such a restart answers the same)
    pb = epb
    node = servers()
    p = node.grpc_port

    def listed():
        r = unary(p, pb, "Lease", "LeaseTimeToLive",
                  pb.LeaseTimeToLiveRequest(ID=lid, keys=True),
                  "LeaseTimeToLiveResponse")
        st, _, body = node.request("GET", f"/lease?id={lid}&keys=true")
        assert st == 200, body
        keys = json.loads(body)["keys"]
        assert [base64.b64decode(k["key_b64"]) if "key_b64" in k
                else k["key"].encode() for k in keys] == list(r.keys)
        return list(r.keys)

    lid = attach_revoked(p, pb)
    assert listed() == sorted(REVOKED)
    put(p, pb, b"ro/0", b"L", lease=lid)  # attached after a listing
    assert listed() == sorted(REVOKED + [b"ro/0"])
    st, _, body = node.request("POST", "/admin/snapshot")
    assert st == 200, body
    node.stop()
    node.start()
    wait_for(lambda: node.request("GET", "/health")[0] == 200,
             "the restarted node leads", step=0.1)
    assert listed() == sorted(REVOKED + [b"ro/0"])


def test_revoke_order_same_as_etcd(etcd, epb):
    # etcd itself: the order the cluster test expects is etcd's
    lid = attach_revoked(etcd, epb)
    [(keys, _)] = revoke_watched(etcd, lid, [etcd], epb)
    assert keys == sorted(REVOKED)


def test_shutdown_ends_open_streams(servers, epb):
    # SIGTERM with a Watch and a LeaseKeepAlive stream open: both end with
    # UNAVAILABLE and the node exits cleanly, without waiting for them
    pb = epb
    s = servers()
    p = s.grpc_port
    lid = unary(p, pb, "Lease", "LeaseGrant", pb.LeaseGrantRequest(TTL=30),
                "LeaseGrantResponse").ID
    ws = WatchStream(p, pb)
    reqs = queue.Queue()
    ch = channel(p)
    try:
        ws.create(key=b"k")
        assert ws.next().created
        f = ch.stream_stream("/etcdserverpb.Lease/LeaseKeepAlive",
                             request_serializer=pb.LeaseKeepAliveRequest
                             .SerializeToString,
                             response_deserializer=pb.LeaseKeepAliveResponse
                             .FromString)
        it = f(iter(reqs.get, None), timeout=60)
        reqs.put(pb.LeaseKeepAliveRequest(ID=lid))
        assert next(it).TTL == 30
        t0 = time.time()
        assert s.stop() == 0
        assert time.time() - t0 < 10
        with pytest.raises(grpc.RpcError) as e:
            ws.next()
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.RpcError) as e:
            next(it)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        reqs.put(None)
        ws.close()
        ch.close()
