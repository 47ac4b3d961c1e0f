"""A follower's forwarding to the leader (fwd.c) survives losing the
leader: a request that never reached it is sent again, to the leader
known then (or run here if this node won the election), and a read lost
with its kept-alive connection is sent again; the client sees an answer,
not 502 Leader unreachable."""
import json
import os
import socket
import signal
import threading
import time

from conftest import wait_for
from test_cluster import leader_of, make_cluster, put


def cluster_view(s, timeout=15):
    st, _, body = s.request("GET", "/cluster", timeout=timeout)
    return st, body


def test_forwarded_read_and_write_survive_a_leader_restart(servers):
    nodes = make_cluster(servers)
    leader = leader_of(nodes)
    f = next(s for s in nodes if s is not leader)
    # the follower's kept-alive connection to the leader is open
    st, body = cluster_view(f)
    assert st == 200 and json.loads(body)["leader"] == leader.name
    assert put(f, "before", "1")[0] == 204
    leader.kill()
    # at once: the follower still takes the dead node for the leader for
    # up to an election timeout; its forwards cannot connect and go again
    # to whoever leads next
    results = {}

    def write():
        results["set"] = put(f, "during", "2", timeout=20)[0]

    t = threading.Thread(target=write)
    t.start()
    t0 = time.time()
    st, body = cluster_view(f, timeout=20)
    took = time.time() - t0
    t.join()
    assert st == 200, body
    assert results["set"] == 204
    new = json.loads(body)["leader"]
    assert new and new != leader.name, body
    assert took < 10, took
    # the old leader comes back (a restart): the connection the follower
    # holds to the new leader, or the old one, still works
    leader.start()
    now = leader_of(nodes, timeout=20)
    for s in nodes:
        if s is now:
            continue
        st, body = cluster_view(s)
        assert st == 200 and json.loads(body)["leader"] == now.name, body
    st, _, body = f.request("GET", "/get?key=during")
    assert (st, body) == (200, b"2")


def test_read_lost_with_its_connection_is_sent_again(servers):
    # The leader is stopped while a forwarded read and a forwarded write
    # wait on the follower's kept-alive connection, then killed: both are
    # lost with the connection. The read is sent again (to the next
    # leader) and succeeds; the write is not (it may have been applied)
    # and the client is told.
    nodes = make_cluster(servers)
    leader = leader_of(nodes)
    f = next(s for s in nodes if s is not leader)
    assert cluster_view(f)[0] == 200
    assert put(f, "k", "v")[0] == 204
    results = {}

    def read():
        results["read"] = cluster_view(f, timeout=30)

    def write():
        results["write"] = put(f, "w", "x", timeout=30)

    leader.proc.send_signal(signal.SIGSTOP)
    threads = [threading.Thread(target=read), threading.Thread(target=write)]
    try:
        for t in threads:
            t.start()
        time.sleep(0.3)  # both written to the stopped leader
    finally:
        leader.kill()
    for t in threads:
        t.join()
    st, body = results["read"]
    assert st == 200, body
    assert json.loads(body)["leader"] not in ("", leader.name), body
    st, _, body = results["write"]
    assert (st, body) == (502, b"Leader unreachable\n")
    log = f.read_log()
    assert "trying again" in log


def test_grpc_write_through_a_follower_survives_the_leader_dying(servers,
                                                                 tmp_path):
    # gRPC forwarding: a Set that cannot reach the dead leader is sent
    # again to the next one (it never reached the first); the client sees
    # OK, not UNAVAILABLE "cannot connect".
    import grpc_helpers as gh
    pb = gh.stubs(str(tmp_path / "stubs"))
    nodes = make_cluster(servers)
    leader = leader_of(nodes)
    f = next(s for s in nodes if s is not leader)
    c = gh.Client(f.grpc_port, pb)
    try:
        assert c.Set(pb.kv.SetRequest(key="a", value="1"), timeout=10).success
        leader.kill()
        t0 = time.time()
        assert c.Set(pb.kv.SetRequest(key="b", value="2"),
                     timeout=20).success
        assert time.time() - t0 < 10
        assert c.Get(pb.kv.GetRequest(key="b"), timeout=10).value == "2"
    finally:
        c.close()
    assert "trying again" in f.read_log()


def connections_to(pid, port):
    """Established TCP connections of process pid to 127.0.0.1:port (its
    socket descriptors matched against /proc/net/tcp)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    n = 0
    with open(f"/proc/{pid}/net/tcp") as f:
        next(f)
        for line in f:
            col = line.split()
            rem_ip, rem_port = col[2].split(":")
            if (rem_ip == "0100007F" and int(rem_port, 16) == port and
                    col[3] == "01" and col[9] in inodes):
                n += 1
    return n


def test_concurrent_writes_through_a_follower_are_not_serialised(servers):
    """The leader answers one connection's requests one at a time: writes
    that a follower forwards at once go on several connections, not one
    behind the other on a single one (which held HTTP writes through a
    follower to one commit at a time)."""
    nodes = make_cluster(servers)
    leader = leader_of(nodes)
    f = next(s for s in nodes if s is not leader)
    errors = []

    def writer(t):
        for i in range(20):
            st = put(f, f"c{t}-{i}", "v")[0]
            if st != 204:
                errors.append(st)

    for _ in range(5):
        threads = [threading.Thread(target=writer, args=(t,))
                   for t in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        if connections_to(f.proc.pid, leader.http_port) >= 2:
            break
    n = connections_to(f.proc.pid, leader.http_port)
    assert 2 <= n <= 32, n
    # every write landed, in the leader's table
    for t in range(16):
        st, _, body = leader.request("GET", f"/get?key=c{t}-19")
        assert (st, body) == (200, b"v")


def test_input_while_a_forward_is_held_does_not_free_it(servers):
    """A client that sent more while its forwarded write was held, with the
    partial-input budget full, was refused with 503 at once: that freed
    the request being forwarded, whose next retry read the freed memory
    (a crash under the sanitizers; another client's bytes sent to the
    leader otherwise), and the client got a second answer later. The extra
    input is now kept until the held request is answered."""
    small = {"max-partial-input": "1mb", "http-max-body": "1mb",
             "grpc-max-message": "1mb", "max-value-size": "512kb",
             "election-timeout": "3000ms", "heartbeat-interval": "300ms",
             # the forward retries until a new leader: one election may
             # take two timeouts and more
             "request-timeout": "20s"}
    nodes = make_cluster(servers, conf=small)
    leader = leader_of(nodes, timeout=20)
    f = next(s for s in nodes if s is not leader)
    assert put(f, "before", "1")[0] == 204
    leader.kill()  # the forward retries until another node leads
    body = b'{"key":"held","value":"v1"}'
    a = socket.create_connection(("127.0.0.1", f.http_port))
    a.sendall(b"POST /set HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
              % len(body) + body)
    time.sleep(0.2)
    # ten clients each hold 99 kB of a 100 kB body: the budget is full
    fill = []
    for _ in range(10):
        s = socket.create_connection(("127.0.0.1", f.http_port))
        s.sendall(b"POST /set HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Length: 100000\r\n\r\n" + b"x" * 99000)
        fill.append(s)
    time.sleep(0.3)
    assert f.status()["partial_input"] > 900000
    a.sendall(b"y" * 65536)  # more input on the held connection
    a.settimeout(30)
    got = b""
    while b"\r\n\r\n" not in got:
        chunk = a.recv(4096)
        assert chunk, got
        got += chunk
    # one answer: the write's, once a new leader took it
    assert got.startswith(b"HTTP/1.1 204"), got
    for s in fill:
        s.close()
    a.close()
    rest = [s for s in nodes if s is not leader]
    new = leader_of(rest, timeout=20, exclude=(leader,))
    st, _, out = new.request("GET", "/get?key=held")
    assert st == 200 and b"v1" in out, (st, out)
    assert f.proc.poll() is None


def test_relayed_calls_wait_for_a_leader_after_a_restart(servers, tmp_path):
    """A node that knows no leader (the cluster restarting: it is up alone,
    a candidate) holds every call it would relay to the leader, whatever
    the protocol, until one is elected and it can reach it, within
    request-timeout; the calls then succeed. None fails at once with `not
    the leader and no leader known` (etcd Put with ignore_value, which
    reads the key on the leader, did), `etcdserver: no leader` (a
    LeaseKeepAlive) or a leader's address not known yet (right after the
    election, before the node has dialled its new leader)."""
    import grpc
    import grpc_helpers as gh
    pb = gh.stubs(str(tmp_path / "stubs"))
    epb = gh.etcd_stubs(str(tmp_path / "etcd_stubs"))
    nodes = make_cluster(servers)
    leader = leader_of(nodes)
    assert put(leader, "ign", "old")[0] == 204
    lease = gh.etcd_call(leader.grpc_port, epb, "Lease", "LeaseGrant",
                         epb.LeaseGrantRequest(TTL=600)).ID
    for s in nodes:
        s.stop()
    # The node asked comes back first, alone, and is not the one the
    # others elect (a longer election timeout): what it gets is relayed.
    a, others = nodes[0], nodes[1:]
    a.conf["election-timeout"] = "10s"
    a.conf["request-timeout"] = "20s"
    a.write_conf()
    a.start(wait=False)
    a.wait_ready()

    def unary(svc, method, req, resp):
        return lambda: gh.etcd_call(a.grpc_port, epb, svc, method, req,
                                    resp, timeout=30)

    def grpc_set():
        c = gh.Client(a.grpc_port, pb)
        try:
            return c.Set(pb.kv.SetRequest(key="g", value="1"), timeout=30)
        finally:
            c.close()

    def keepalive():
        ch = grpc.insecure_channel(f"127.0.0.1:{a.grpc_port}")
        try:
            f = ch.stream_stream(
                "/etcdserverpb.Lease/LeaseKeepAlive",
                request_serializer=epb.LeaseKeepAliveRequest.SerializeToString,
                response_deserializer=epb.LeaseKeepAliveResponse.FromString)
            return next(f(iter([epb.LeaseKeepAliveRequest(ID=lease)]),
                          timeout=30))
        finally:
            ch.close()

    def http(method, path, body):
        def go():
            st, _, out = a.request(method, path, json.dumps(body), timeout=30)
            assert st in (200, 204), (st, out)
            return out
        return go

    calls = {
        "http set": http("POST", "/set", {"key": "h", "value": "1"}),
        "http lease grant": http("POST", "/lease/grant", {"ttl": 60}),
        "grpc Set": grpc_set,
        "etcd Put": unary("KV", "Put", epb.PutRequest(key=b"e", value=b"1"),
                          None),
        "etcd Put ignore_value": unary(
            "KV", "Put", epb.PutRequest(key=b"ign", ignore_value=True,
                                        prev_kv=True), None),
        "etcd Txn": unary("KV", "Txn", epb.TxnRequest(success=[epb.RequestOp(
            request_put=epb.PutRequest(key=b"t", value=b"1"))]), None),
        "etcd LeaseGrant": unary("Lease", "LeaseGrant",
                                 epb.LeaseGrantRequest(TTL=60), None),
        "etcd LeaseTimeToLive": unary(
            "Lease", "LeaseTimeToLive", epb.LeaseTimeToLiveRequest(ID=lease),
            None),
        "etcd LeaseKeepAlive": keepalive,
    }
    results = {}

    def run(name, fn):
        try:
            results[name] = ("ok", fn())
        except grpc.RpcError as e:
            results[name] = ("error", e.code(), e.details(),
                             time.time() - t0)
        except AssertionError as e:
            results[name] = ("error", str(e), time.time() - t0)

    t0 = time.time()
    threads = [threading.Thread(target=run, args=item)
               for item in calls.items()]
    for t in threads:
        t.start()
    time.sleep(1.0)  # every call is in, none has an answer yet
    assert results == {}, results
    for s in others:
        s.start(wait=False)
    for t in threads:
        t.join()
    failed = {k: v for k, v in results.items() if v[0] != "ok"}
    assert failed == {}, failed
    new = leader_of(nodes)
    assert new is not a
    assert results["etcd Put ignore_value"][1].prev_kv.value == b"old"
    assert results["etcd LeaseKeepAlive"][1].TTL == 600
    assert results["etcd LeaseTimeToLive"][1].TTL > 0
    assert a.status()["leader"] == new.name
    st, _, body = a.request("GET", "/get?key=h")
    assert (st, body) == (200, b"1")


def test_calls_wait_for_the_address_of_a_known_leader(servers, tmp_path):
    """A founding member knows the others by their Raft addresses only and
    learns their client addresses from the handshake of a link it dials.
    A node that hears from a leader it cannot dial (here: a peer speaking
    for node2, which is down, in the term after a restart) knows who
    leads, not where to forward: every call waits for the address
    (bounded by request-timeout), as for an election, and only then fails
    with the reason, instead of at once."""
    import grpc
    import grpc_helpers as gh
    import raft_wire as rw
    pb = gh.stubs(str(tmp_path / "stubs"))
    epb = gh.etcd_stubs(str(tmp_path / "etcd_stubs"))
    nodes = make_cluster(servers)
    leader = leader_of(nodes)
    lease = gh.etcd_call(leader.grpc_port, epb, "Lease", "LeaseGrant",
                         epb.LeaseGrantRequest(TTL=600)).ID
    for s in nodes:
        s.stop()
    a, b = nodes[0], nodes[1]
    a.conf["election-timeout"] = "10s"  # follows node2 all along
    a.conf["request-timeout"] = "3s"
    a.write_conf()
    a.start()
    aid, cid = rw.identity(a)
    bid = rw.node_id(b.name)
    term = a.status()["term"] + 1
    p = rw.Peer(a.raft_port)
    r = p.handshake(node_id=bid, cluster_id=cid, name=b.name)
    assert r is not None and r.status == rw.OK, r
    p.message(type=rw.HEARTBEAT, term=term, to=aid, **{"from": bid})
    wait_for(lambda: a.status()["leader"] == b.name, "node1 following node2")
    results = {}
    nothing = (f"the leader's ({b.name}) gRPC address is not known yet")

    def run(name, fn):
        t0 = time.time()
        try:
            out = fn()
        except grpc.RpcError as e:
            out = (e.code(), e.details())
        results[name] = (out, time.time() - t0)

    def http(path, body):
        def go():
            st, _, out = a.request("POST", path, json.dumps(body), timeout=30)
            return st, out
        return go

    def grpc_set():
        cl = gh.Client(a.grpc_port, pb)
        try:
            return cl.Set(pb.kv.SetRequest(key="g", value="1"), timeout=30)
        finally:
            cl.close()

    def keepalive():
        ch = grpc.insecure_channel(f"127.0.0.1:{a.grpc_port}")
        try:
            f = ch.stream_stream(
                "/etcdserverpb.Lease/LeaseKeepAlive",
                request_serializer=epb.LeaseKeepAliveRequest.SerializeToString,
                response_deserializer=epb.LeaseKeepAliveResponse.FromString)
            return next(f(iter([epb.LeaseKeepAliveRequest(ID=lease)]),
                          timeout=30))
        finally:
            ch.close()

    calls = {
        "http set": http("/set", {"key": "h", "value": "1"}),
        "http lease grant": http("/lease/grant", {"ttl": 60}),
        "grpc Set": grpc_set,
        "etcd Put": lambda: gh.etcd_call(
            a.grpc_port, epb, "KV", "Put",
            epb.PutRequest(key=b"e", value=b"1"), timeout=30),
        "etcd LeaseKeepAlive": keepalive,
    }
    threads = [threading.Thread(target=run, args=item)
               for item in calls.items()]
    for t in threads:
        t.start()
    deadline = time.time() + 6
    while time.time() < deadline and any(t.is_alive() for t in threads):
        # node2 "leads" all along: node1 never learns its addresses
        p.message(type=rw.HEARTBEAT, term=term, to=aid, **{"from": bid})
        time.sleep(0.2)
    for t in threads:
        t.join(timeout=1)
    want = {
        "http set": (503, b"Leader address not known yet\n"),
        "http lease grant": (503, b"Leader address not known yet\n"),
        "grpc Set": (grpc.StatusCode.UNAVAILABLE, nothing),
        "etcd Put": (grpc.StatusCode.UNAVAILABLE, "etcdserver: no leader"),
        "etcd LeaseKeepAlive": (grpc.StatusCode.UNAVAILABLE,
                                "etcdserver: no leader"),
    }
    assert {k: v[0] for k, v in results.items()} == want
    # each after request-timeout (3 s), none at once
    took = {k: v[1] for k, v in results.items()}
    assert all(2.5 < t < 5 for t in took.values()), took
    assert a.status()["leader"] == b.name
    p.close()


def test_calls_refused_by_a_node_that_lost_the_election_go_to_the_winner(
        servers, tmp_path):
    """The leader restarts and loses the next election (a longer election
    timeout). A follower that still takes it for the leader forwards writes
    to it; it waits for the election and then refuses them (`Not the
    leader`, gRPC `not the leader`): nothing was proposed, so the follower
    waits for the winner and forwards them again, within request-timeout.
    Before, the refusal came back to the client (503, UNAVAILABLE)."""
    import grpc
    import grpc_helpers as gh
    epb = gh.etcd_stubs(str(tmp_path / "etcd_stubs"))
    conf = {"election-timeout": "1s", "heartbeat-interval": "100ms",
            "request-timeout": "15s"}
    nodes = make_cluster(servers, conf=conf)
    old = leader_of(nodes)
    f = next(s for s in nodes if s is not old)
    assert put(f, "before", "1")[0] == 204  # f's links to the leader
    gh.etcd_call(f.grpc_port, epb, "KV", "Put",
                 epb.PutRequest(key=b"before", value=b"1"))
    old.kill()
    old.conf["election-timeout"] = "30s"  # it cannot win the next one
    old.conf["heartbeat-interval"] = "1s"
    old.write_conf()
    old.start(wait=False)
    results = {}

    def http_set():
        st, _, body = put(f, "h", "1", timeout=30)
        results["http"] = (st, body)

    def etcd_put():
        try:
            gh.etcd_call(f.grpc_port, epb, "KV", "Put",
                         epb.PutRequest(key=b"e", value=b"1"), timeout=30)
            results["etcd"] = "ok"
        except grpc.RpcError as e:
            results["etcd"] = (e.code(), e.details())

    threads = [threading.Thread(target=http_set),
               threading.Thread(target=etcd_put)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    new = leader_of(nodes, timeout=20)
    assert new is not old
    assert results == {"http": (204, b""), "etcd": "ok"}, results
    # the old leader did refuse them: the follower forwarded them again
    log = old.read_log()
    assert "Not the leader" in log or "not the leader" in log, log[-3000:]
    st, _, body = new.request("GET", "/get?key=h")
    assert (st, body) == (200, b"1")


def test_calls_refused_by_a_node_that_knows_no_leader_go_to_the_next(
        servers, tmp_path):
    """The leader loses its quorum (both other nodes stopped) and steps
    down, knowing no leader; one follower comes back still taking it for
    the leader (a long election timeout) and forwards writes to it. The
    old leader waits for a leader for its request-timeout (1 s), then
    refuses them (`Not leader and no leader known`, gRPC `no leader
    known`, etcd `etcdserver: no leader`): nothing was proposed, so the
    follower forwards them again until a leader is elected, within its
    own request-timeout. Before, the refusal came back to the client."""
    import grpc
    import grpc_helpers as gh
    pb = gh.stubs(str(tmp_path / "stubs"))
    epb = gh.etcd_stubs(str(tmp_path / "etcd_stubs"))
    nodes = make_cluster(servers, conf={
        "election-timeout": "1s", "heartbeat-interval": "100ms",
        "request-timeout": "1s"}, start=False)
    a = nodes[0]
    a.conf["election-timeout"] = "20s"  # follows the old leader all along
    a.conf["request-timeout"] = "15s"
    a.write_conf()
    for s in nodes:
        s.start(wait=False)
    for s in nodes:
        s.wait_ready()
    old = leader_of(nodes)
    assert old is not a
    other = next(s for s in nodes if s not in (a, old))
    assert put(a, "before", "1")[0] == 204  # a's links to the leader
    c = gh.Client(a.grpc_port, pb)
    try:
        assert c.Set(pb.kv.SetRequest(key="before", value="1"),
                     timeout=10).success
        gh.etcd_call(a.grpc_port, epb, "KV", "Put",
                     epb.PutRequest(key=b"before", value=b"1"))
        a.signal(signal.SIGSTOP)
        other.signal(signal.SIGSTOP)
        try:
            # no heartbeat answered for an election timeout: it steps down
            wait_for(lambda: old.status()["leader"] == "",
                     "the old leader stepping down")
        finally:
            a.signal(signal.SIGCONT)
        results = {}

        def http_set():
            st, _, body = put(a, "h", "1", timeout=30)
            results["http"] = (st, body)

        def grpc_set():
            try:
                results["grpc"] = c.Set(pb.kv.SetRequest(key="g", value="1"),
                                        timeout=30).success
            except grpc.RpcError as e:
                results["grpc"] = (e.code(), e.details())

        def etcd_put():
            try:
                gh.etcd_call(a.grpc_port, epb, "KV", "Put",
                             epb.PutRequest(key=b"e", value=b"1"), timeout=30)
                results["etcd"] = "ok"
            except grpc.RpcError as e:
                results["etcd"] = (e.code(), e.details())

        threads = [threading.Thread(target=fn)
                   for fn in (http_set, grpc_set, etcd_put)]
        for t in threads:
            t.start()
        time.sleep(2.5)  # each refused at least once by now
        assert a.status()["leader"] == old.name
        other.signal(signal.SIGCONT)
        for t in threads:
            t.join()
    finally:
        other.signal(signal.SIGCONT)
        c.close()
    assert results == {"http": (204, b""), "grpc": True, "etcd": "ok"}, \
        results
    assert "trying again" in a.read_log()
    new = leader_of(nodes, timeout=20)
    for key in ("h", "g", "e"):
        st, _, body = new.request("GET", f"/get?key={key}")
        assert (st, body) == (200, b"1"), key
