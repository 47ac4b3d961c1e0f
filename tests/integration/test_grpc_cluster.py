"""gRPC on a real 3-node cluster: followers forward writes to the leader over
one persistent connection, serve linearizable reads, report the cluster in
Status and Health, and follow the leader when it changes."""
import signal
import subprocess
import time

import grpc

from grpc_helpers import CLI, Client, rpc_error
from test_cluster import leader_of, make_cluster


def wait_status(c, pb, pred, timeout=10):
    deadline = time.time() + timeout
    st = None
    while time.time() < deadline:
        st = c.Status(pb.cluster.StatusRequest(), timeout=2)
        if pred(st):
            return st
        time.sleep(0.05)
    raise AssertionError(f"status never matched: {st}")


def test_follower_forwards_and_reads(servers, pb):
    nodes = make_cluster(servers)
    leader = leader_of(nodes)
    followers = [s for s in nodes if s is not leader]
    kv = pb.kv
    clients = {s.name: Client(s.grpc_port, pb) for s in nodes}
    try:
        lc = clients[leader.name]
        fc = clients[followers[0].name]
        # the follower learns the leader's gRPC address
        st = wait_status(fc, pb, lambda st: st.leader_grpc_addr != "")
        assert st.role == "follower" and st.leader == leader.name
        assert st.leader_grpc_addr.endswith(f":{leader.grpc_port}")
        assert len(st.members) == 3
        assert sorted(m.id for m in st.members) == ["node1", "node2",
                                                    "node3"]
        assert all(m.voter for m in st.members)
        # writes through either follower, read back everywhere
        for i, f in enumerate(followers):
            c = clients[f.name]
            assert c.Set(kv.SetRequest(key=f"f{i}", value=f"v{i}"),
                         timeout=10).success
        for c in clients.values():
            for i in range(len(followers)):
                r = c.Get(kv.GetRequest(key=f"f{i}"), timeout=10)
                assert r.found and r.value == f"v{i}"
        assert fc.Delete(kv.DeleteRequest(key="f0"), timeout=10).success
        assert not lc.Get(kv.GetRequest(key="f0"), timeout=10).found
        # errors from the leader come back unchanged; local checks stay local
        code, details = rpc_error(fc.Set, kv.SetRequest(key="", value="x"))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        # many concurrent forwarded writes over the one connection
        futs = [fc.Set.future(kv.SetRequest(key=f"c{i}", value=str(i)),
                              timeout=20) for i in range(300)]
        assert all(f.result().success for f in futs)
        r = lc.Get(kv.GetRequest(key="c299"), timeout=10)
        assert r.found and r.value == "299"
        # health on every node
        h = pb.health
        for c in clients.values():
            assert c.Check(h.HealthCheckRequest(), timeout=5).status \
                == h.HealthCheckResponse.SERVING
        # the CLI against a follower
        p = subprocess.run([CLI, "--addr", f"127.0.0.1:{followers[1].grpc_port}",
                            "set", "cli", "via-follower"],
                           capture_output=True, timeout=20)
        assert p.returncode == 0, p.stderr
        assert lc.Get(kv.GetRequest(key="cli"), timeout=10).value \
            == "via-follower"
    finally:
        for c in clients.values():
            c.close()


def test_forwarding_follows_a_new_leader(servers, pb):
    nodes = make_cluster(servers)
    leader = leader_of(nodes)
    followers = [s for s in nodes if s is not leader]
    kv = pb.kv
    fc = Client(followers[0].grpc_port, pb)
    try:
        wait_status(fc, pb, lambda st: st.leader_grpc_addr != "")
        # a SetResponse is truthy even when empty: check the field
        assert fc.Set(kv.SetRequest(key="before", value="1"),
                      timeout=10).success
        leader.kill()
        new = leader_of(nodes, exclude=(leader,), timeout=20)
        wait_status(fc, pb, lambda st: st.leader == new.name
                         and st.leader_grpc_addr != "" or st.role == "leader")
        # writes through the same follower reach the new leader (retry while
        # the cluster settles)
        deadline = time.time() + 20
        while True:
            try:
                assert fc.Set(kv.SetRequest(key="after", value="2"),
                              timeout=5).success
                break
            except grpc.RpcError as e:
                assert e.code() in (grpc.StatusCode.UNAVAILABLE,
                                    grpc.StatusCode.DEADLINE_EXCEEDED,
                                    grpc.StatusCode.INTERNAL), e
                assert time.time() < deadline, e
                time.sleep(0.2)
        nc = Client(new.grpc_port, pb)
        try:
            assert nc.Get(kv.GetRequest(key="after"), timeout=10).value == "2"
            assert nc.Get(kv.GetRequest(key="before"), timeout=10).value \
                == "1"
        finally:
            nc.close()
    finally:
        fc.close()


def test_health_watch_follows_the_leader(servers, pb):
    # Watch on a follower: SERVING while there is a leader, NOT_SERVING
    # once the follower knows there is none (the other two are stopped),
    # SERVING again when a leader is back; one stream throughout.
    nodes = make_cluster(servers)
    leader = leader_of(nodes)
    watcher = next(s for s in nodes if s is not leader)
    others = [s for s in nodes if s is not watcher]
    h = pb.health
    c = Client(watcher.grpc_port, pb)
    try:
        stream = c.Watch(h.HealthCheckRequest(), timeout=60)
        assert next(stream).status == h.HealthCheckResponse.SERVING
        for s in others:
            s.proc.send_signal(signal.SIGSTOP)
        try:
            # the follower forgets the leader when its election timer
            # fires and it stands for election (pre-vote)
            assert next(stream).status == h.HealthCheckResponse.NOT_SERVING
        finally:
            for s in others:
                s.proc.send_signal(signal.SIGCONT)
        assert next(stream).status == h.HealthCheckResponse.SERVING
        leader_of(nodes, timeout=20)
        stream.cancel()
    finally:
        c.close()
