"""etcd's LeaseKeepAlive on a follower across a leader change: each request
the follower relays to the leader and that gets no answer from it (the node
it went to is not the leader any more, or is gone) goes again, to the next
leader, as etcd 3.4's follower renews again until its request timeout; the
client's stream does not end. With no leader to be reached, the request
fails after request-timeout (etcd's "etcdserver: request timed out"), not
sooner. Real 3-node clusters, grpcio with etcd's stubs."""
import queue
import threading
import time

import grpc

from conftest import wait_for
from test_cluster import leader_of, make_cluster
from grpc_helpers import etcd_call as unary

TTL = 30


class KeepAlives:
    """One LeaseKeepAlive stream: requests put by the test, answers (and
    the call's end) read in the background with the time each came."""

    def __init__(self, port, pb):
        self.pb = pb
        self.ch = grpc.insecure_channel(f"127.0.0.1:{port}")
        f = self.ch.stream_stream(
            "/etcdserverpb.Lease/LeaseKeepAlive",
            request_serializer=pb.LeaseKeepAliveRequest.SerializeToString,
            response_deserializer=pb.LeaseKeepAliveResponse.FromString)
        self.reqs = queue.Queue()
        self.sent = []     # (time, lease id)
        self.answers = []  # (time, LeaseKeepAliveResponse)
        self.end = None    # (time, code, details) once the call ended
        self.it = f(iter(self.reqs.get, None), timeout=60)
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()

    def _read(self):
        try:
            for r in self.it:
                self.answers.append((time.monotonic(), r))
            self.end = (time.monotonic(), grpc.StatusCode.OK, "")
        except grpc.RpcError as e:
            self.end = (time.monotonic(), e.code(), e.details())

    def send(self, lid):
        self.sent.append((time.monotonic(), lid))
        self.reqs.put(self.pb.LeaseKeepAliveRequest(ID=lid))

    def close(self, timeout=15):
        """End the client's side; wait for the call to end."""
        self.reqs.put(None)
        self.t.join(timeout)
        self.ch.close()


def grant(port, pb):
    return unary(port, pb, "Lease", "LeaseGrant",
                 pb.LeaseGrantRequest(TTL=TTL), "LeaseGrantResponse").ID


def keep_alive_through(nodes, pb, change, streams=1):
    """Keep-alives every 100 ms on streams on a follower, each alternating
    two leases, for 1 s; then change() moves the leadership while they go
    every ms (so that relays are on their way when it does); then every
    100 ms again until a new leader has answered some. Every request must
    be answered, in order, with the lease's TTL, and each stream must end
    OK when the client ends it."""
    leader = leader_of(nodes)
    f = next(s for s in nodes if s is not leader)
    leases = [grant(f.grpc_port, pb), grant(f.grpc_port, pb)]
    kas = [KeepAlives(f.grpc_port, pb) for _ in range(streams)]
    n = 0

    def send_all():
        nonlocal n
        for ka in kas:
            ka.send(leases[n % 2])
        n += 1

    def answered():
        return all(len(ka.answers) == n or ka.end for ka in kas)

    def ended():
        return [ka.end for ka in kas if ka.end]

    try:
        for _ in range(10):
            send_all()
            time.sleep(0.1)
        wait_for(answered, "the first answers", timeout=5)
        assert ended() == []
        dense = threading.Event()

        def flood():
            while not dense.is_set():
                send_all()
                time.sleep(0.001)
        t = threading.Thread(target=flood)
        t.start()
        try:
            time.sleep(0.05)
            new = change(leader)
            time.sleep(0.3)
        finally:
            dense.set()
            t.join()
        changed = time.monotonic()
        now = None
        while not ended() and (now is None or time.monotonic() < now + 1):
            send_all()
            time.sleep(0.1)
            if now is None and new() is not None:
                now = time.monotonic()
            assert time.monotonic() < changed + 15, "no new leader"
        wait_for(answered, "every answer", timeout=10)
        for ka in kas:
            assert ka.end is None, f"a stream ended: {ka.end}, " \
                f"{len(ka.answers)} answers of {n} requests"
            got = [(r.ID, r.TTL) for _, r in ka.answers]
            assert got == [(leases[i % 2], TTL) for i in range(n)], got
            # some answers came after the change, from the new leader
            assert sum(1 for t, _ in ka.answers if t > now) >= 3
    finally:
        for ka in kas:
            ka.close()
    for ka in kas:
        assert ka.end is not None and ka.end[1] == grpc.StatusCode.OK, ka.end
    return f


def test_keepalive_stream_survives_leadership_transfers(servers, epb):
    # The leadership moves from the leader to the other follower, back,
    # and there again: a relay on its way to the node that just stepped
    # down comes back refused, and goes again to the new leader.
    nodes = make_cluster(servers)

    def transfers(leader):
        f = next(s for s in nodes if s is not leader)
        other = next(s for s in nodes if s is not leader and s is not f)
        frm = leader
        for to in (other, leader, other):
            st, _, body = frm.request("POST",
                                      f"/cluster/transfer?to={to.name}")
            assert st == 204, body
            wait_for(lambda: leader_of(nodes) is to, "the transfer")
            frm = to

        def new():
            try:
                return other if leader_of(nodes, timeout=0.05) is other \
                    else None
            except AssertionError:
                return None
        return new

    keep_alive_through(nodes, epb, transfers, streams=4)


def test_keepalive_stream_survives_the_leader_killed(servers, epb):
    nodes = make_cluster(servers)

    def kill(leader):
        leader.kill()

        def new():
            try:
                return leader_of(nodes, timeout=0.05, exclude=(leader,))
            except AssertionError:
                return None
        return new

    f = keep_alive_through(nodes, epb, kill)
    assert "trying again" in f.read_log()


def test_keepalive_with_no_leader_fails_after_request_timeout(servers, epb):
    # The follower keeps taking the dead leader for the leader for its
    # election timeout (4 s and more); each relay fails at once
    # (connection refused) and goes again until request-timeout (1 s)
    # after the request came, then the request fails with etcd's timeout.
    conf = {"request-timeout": "1s", "election-timeout": "4s"}
    nodes = make_cluster(servers, conf=conf)
    leader = leader_of(nodes, timeout=15)
    f = next(s for s in nodes if s is not leader)
    pb = epb
    lid = grant(f.grpc_port, pb)
    ka = KeepAlives(f.grpc_port, pb)
    try:
        ka.send(lid)
        wait_for(lambda: ka.answers or ka.end, "the first answer", timeout=5)
        assert [(r.ID, r.TTL) for _, r in ka.answers] == [(lid, TTL)], ka.end
        for s in nodes:
            if s is not f:
                s.kill()
        ka.send(lid)
        sent = ka.sent[-1][0]
        wait_for(lambda: ka.end is not None, "the request to fail", timeout=5)
        took = ka.end[0] - sent
        assert ka.end[1:] == (grpc.StatusCode.UNAVAILABLE,
                              "etcdserver: request timed out"), ka.end
        assert 0.95 <= took < 2.0, took
        assert len(ka.answers) == 1
    finally:
        ka.close()
    # a stream its client cancels while its request waits to go again:
    # the pending pause goes with it
    ka = KeepAlives(f.grpc_port, pb)
    ka.send(lid)
    time.sleep(0.3)
    assert ka.end is None
    ka.it.cancel()
    ka.close()
    assert ka.end[1] == grpc.StatusCode.CANCELLED, ka.end
    # the node carries on: it answers, and a new stream's request fails
    # the same way, after request-timeout again
    assert f.status()["role"] == "follower"
    ka = KeepAlives(f.grpc_port, pb)
    try:
        ka.send(lid)
        wait_for(lambda: ka.end is not None, "the request to fail", timeout=5)
        took = ka.end[0] - ka.sent[0][0]
        assert ka.end[1:] == (grpc.StatusCode.UNAVAILABLE,
                              "etcdserver: request timed out"), ka.end
        assert 0.95 <= took < 2.0, took
    finally:
        ka.close()
    assert f.proc.poll() is None
