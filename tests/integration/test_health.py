"""GET /health and gRPC Health mean "this node can serve linearizable
requests now": a leader is known and, on the leader, a majority of the
voters was heard from within the election timeout (on a follower: the
leader was). GET /health?serializable=true is liveness only. One rule in
the node (node_health) answers both protocols; these tests take quorum
away from real nodes with SIGSTOP and give it back with SIGCONT."""
import json
import signal
import time

from grpc_helpers import Client
from test_cluster import leader_of, make_cluster

ELECTION_MS = 1000  # the default election-timeout


def health(s, query=""):
    st, _, body = s.request("GET", "/health" + query, timeout=5)
    return st, body.decode()


def wait_health(s, want, timeout=10, query=""):
    """Poll /health until it answers `want`; return (seconds, body)."""
    t0 = time.time()
    st, body = None, None
    while time.time() - t0 < timeout:
        st, body = health(s, query)
        if st == want:
            return time.time() - t0, body
        time.sleep(0.02)
    raise AssertionError(f"{s.name}: /health{query} stayed {st} {body!r}")


def serving(c, pb):
    return c.Check(pb.health.HealthCheckRequest(), timeout=5).status


def test_single_node_is_healthy_and_says_why(servers):
    s = servers()
    st, body = wait_health(s, 200)[0], health(s)[1]
    doc = json.loads(body)
    assert doc == {"health": "ok", "role": "leader", "leader": "node1",
                   "term": doc["term"], "linearizable": True}
    st, body = health(s, "?serializable=true")
    assert st == 200 and json.loads(body)["linearizable"] is True
    assert health(s, "?serializable=false")[0] == 200
    st, body = health(s, "?serializable=maybe")
    assert (st, body) == (400, "serializable must be true or false\n")
    st, _, _ = s.request("POST", "/health")
    assert st == 405


def test_leader_without_quorum_turns_unhealthy_and_back(servers, pb):
    nodes = make_cluster(servers)
    leader = leader_of(nodes)
    followers = [s for s in nodes if s is not leader]
    h = pb.health.HealthCheckResponse
    clients = {s.name: Client(s.grpc_port, pb) for s in nodes}
    try:
        for s in nodes:
            _, body = wait_health(s, 200)
            doc = json.loads(body)
            assert doc["leader"] == leader.name and doc["linearizable"]
            assert serving(clients[s.name], pb) == h.SERVING
        for s in followers:
            s.proc.send_signal(signal.SIGSTOP)
        try:
            took, body = wait_health(leader, 503, timeout=10)
            # the leader's own check (no voter heard within the election
            # timeout), or CheckQuorum's step-down a little later
            assert 0.8 <= took * 1000 / ELECTION_MS < 2.5, took
            assert body.startswith("Not serving linearizable requests: ")
            assert body.endswith("\n") and body.count("\n") == 1
            assert ("leader without a quorum: heard from 1 of 3 voters"
                    in body or "no leader known" in body), body
            # gRPC Health agrees, the same rule
            assert serving(clients[leader.name], pb) == h.NOT_SERVING
            # liveness stays 200 and says it is not linearizable
            st, body = health(leader, "?serializable=true")
            doc = json.loads(body)
            assert st == 200 and doc["health"] == "ok"
            assert doc["linearizable"] is False and doc["reason"]
        finally:
            for s in followers:
                s.proc.send_signal(signal.SIGCONT)
        leader_of(nodes, timeout=20)
        for s in nodes:
            wait_health(s, 200, timeout=20)
            assert serving(clients[s.name], pb) == h.SERVING
    finally:
        for c in clients.values():
            c.close()


def test_follower_without_leader_turns_unhealthy_and_back(servers, pb):
    # The follower left alone: 503 once it has not heard from the leader
    # for an election timeout; a Watch on it sees the same changes.
    nodes = make_cluster(servers)
    leader = leader_of(nodes)
    lone = next(s for s in nodes if s is not leader)
    others = [s for s in nodes if s is not lone]
    h = pb.health.HealthCheckResponse
    c = Client(lone.grpc_port, pb)
    try:
        wait_health(lone, 200)
        stream = c.Watch(pb.health.HealthCheckRequest(), timeout=60)
        assert next(stream).status == h.SERVING
        for s in others:
            s.proc.send_signal(signal.SIGSTOP)
        try:
            took, body = wait_health(lone, 503, timeout=10)
            assert 0.8 <= took * 1000 / ELECTION_MS < 2.5, took
            assert ("no word from the leader" in body
                    or "no leader known" in body), body
            assert next(stream).status == h.NOT_SERVING
            assert serving(c, pb) == h.NOT_SERVING
            assert health(lone, "?serializable=true")[0] == 200
        finally:
            for s in others:
                s.proc.send_signal(signal.SIGCONT)
        wait_health(lone, 200, timeout=20)
        assert next(stream).status == h.SERVING
        assert serving(c, pb) == h.SERVING
        stream.cancel()
    finally:
        c.close()


def test_a_node_that_never_had_a_leader(servers, pb):
    # One member of a 3-node cluster started alone: alive (serializable
    # 200) but not healthy, in both protocols.
    nodes = [servers(f"node{i + 1}", start=False) for i in range(3)]
    spec = ",".join(f"{s.name}=127.0.0.1:{s.raft_port}" for s in nodes)
    s = nodes[0]
    s.conf["initial-cluster"] = spec
    s.conf["raft-bootstrap"] = "no"
    s.write_conf()
    s.start()  # waits for /health?serializable=true
    st, body = health(s)
    assert st == 503 and "no leader known" in body, body
    doc = json.loads(health(s, "?serializable=true")[1])
    assert doc["linearizable"] is False and doc["leader"] == ""
    c = Client(s.grpc_port, pb)
    try:
        assert serving(c, pb) == pb.health.HealthCheckResponse.NOT_SERVING
    finally:
        c.close()
