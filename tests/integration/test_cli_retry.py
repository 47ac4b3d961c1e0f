"""pyazdb-cli's retries: several addresses tried in turn (--addr a,b,
--addr repeated, --endpoints, --http a,b), calls retried with backoff on
a failed connection, UNAVAILABLE or an attempt's deadline, all within
--timeout, ending with one clear line when nothing answered; --version."""
import signal
import socket
import subprocess
import threading
import time

from grpc_helpers import CLI
from test_cli import Mandi, cli
from test_cluster import leader_of, make_cluster


_held = []


def dead_addr():
    """An address where connections are refused: a port bound and never
    listened on, held for the whole run so that no other process (tests
    run in parallel on this machine) can take it while the CLI retries."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    _held.append(s)
    return f"127.0.0.1:{s.getsockname()[1]}"


def grpc_addr(s):
    return f"127.0.0.1:{s.grpc_port}"


def timed(*args, timeout=30):
    t0 = time.time()
    r = cli(*args, timeout=timeout)
    return r, time.time() - t0


def test_version():
    p = subprocess.run([CLI, "--version"], capture_output=True, timeout=10)
    assert p.returncode == 0
    assert p.stdout.decode().startswith("pyazdb-cli ")
    assert p.stdout.decode().count("\n") == 1 and p.stderr == b""


def test_dead_address_first(servers):
    node = servers()
    dead, live = dead_addr(), grpc_addr(node)
    assert cli("--addr", f"{dead},{live}", "set", "k", "v") == (
        0, "Set 'k' = 'v'\n", "")
    assert cli("--addr", dead, "--addr", live, "get", "k") == (0, "v\n", "")
    assert cli("--endpoints", f"{dead},{dead_addr()},{live}", "delete",
               "k") == (0, "Deleted 'k'\n", "")
    code, out, _ = cli("--endpoints=" + f"{dead},{live}", "status")
    assert code == 0 and "role: leader" in out
    # an answer is final: a missing key is not retried elsewhere
    assert cli("--addr", f"{live},{dead}", "get", "k") == (
        1, "Key 'k' not found\n", "")
    # the HTTP commands take lists too
    http_live = f"127.0.0.1:{node.http_port}"
    code, out, err = cli("--http", f"{dead_addr()},{http_live}", "members")
    assert code == 0 and "node1" in out, err
    # a list with an empty piece is a usage error
    code, out, err = cli("--addr", f"{live},", "get", "k")
    assert code == 1 and "Usage" in out and "address list" in err


def test_all_dead_ends_within_timeout():
    (code, out, err), took = timed("--addr", f"{dead_addr()},{dead_addr()}",
                                   "--timeout", "1.5", "get", "k")
    assert code == 1 and out == ""
    assert err.count("\n") == 1, err
    assert err.startswith("pyazdb-cli: get failed: UNAVAILABLE: cannot "
                          "connect to "), err
    assert "connection refused" in err and "attempts in" in err, err
    # retried (with backoff) until --timeout, not beyond
    assert 1.4 <= took < 3, took
    (code, _, err), took = timed("--http", dead_addr(), "--timeout", "1",
                                 "members")
    assert code == 1 and "members failed after" in err, err
    assert 0.9 <= took < 3, took


def test_retries_until_the_node_starts(servers):
    # Nothing listens yet when the CLI starts; the node comes up a second
    # later and the write goes through, within --timeout.
    node = servers(start=False)
    t = threading.Timer(1.0, node.start, kwargs={"wait": False})
    t.start()
    try:
        (code, out, err), took = timed("--addr", grpc_addr(node),
                                       "--timeout", "10", "set", "late", "1")
    finally:
        t.join()
    assert (code, out) == (0, "Set 'late' = '1'\n"), err
    assert 1.0 <= took < 10, took
    node.wait_ready()


def test_mandi_without_leader_is_asked_again(servers):
    node = servers()
    mandi = Mandi()
    try:
        mandi.status, mandi.body = 404, b"leader not available\n"
        threading.Timer(0.7, mandi.leader, args=(grpc_addr(node),)).start()
        (code, out, err), took = timed("--mandi", mandi.url, "--timeout", "5",
                                       "set", "m", "1")
        assert (code, out) == (0, "Set 'm' = '1'\n"), err
        assert mandi.hits >= 2
    finally:
        mandi.close()


def test_stopped_leader_in_the_list(servers):
    # The leader is stopped (it accepts connections, never answers): the
    # CLI gives up on it after its share of --timeout and reaches the
    # others, which elect a new leader meanwhile.
    nodes = make_cluster(servers)
    leader = leader_of(nodes)
    others = [s for s in nodes if s is not leader]
    addrs = ",".join(grpc_addr(s) for s in [leader] + others)
    assert cli("--addr", addrs, "set", "before", "1")[0] == 0
    leader.proc.send_signal(signal.SIGSTOP)
    try:
        (code, out, err), took = timed("--addr", addrs, "--timeout", "8",
                                       "set", "k", "v")
        assert (code, out) == (0, "Set 'k' = 'v'\n"), err
        assert took < 8, took
        (code, out, err), took = timed("--addr", addrs, "--timeout", "8",
                                       "get", "before")
        assert (code, out) == (0, "1\n"), err
        code, out, err = cli("--addr", addrs, "--timeout", "8", "members")
        assert code == 1 and "--http" in err  # members is HTTP: usage
        http = ",".join(f"127.0.0.1:{s.http_port}" for s in [leader] + others)
        code, out, err = cli("--http", http, "--timeout", "8", "members")
        assert code == 0 and "node1" in out, err
        # with the stopped node alone, the call ends at --timeout
        (code, out, err), took = timed("--addr", grpc_addr(leader),
                                       "--timeout", "1", "get", "k")
        assert code == 1 and out == "" and err.count("\n") == 1
        assert "DEADLINE_EXCEEDED" in err, err
        assert took < 3, took
    finally:
        leader.proc.send_signal(signal.SIGCONT)
    leader_of(nodes, timeout=20)
    assert cli("--addr", grpc_addr(leader), "get", "k") == (0, "v\n", "")


def test_members_learned_from_a_node_that_cannot_serve(servers, tmp_path):
    # The only address given is a node that answers UNAVAILABLE (a stub
    # here, as a node without a quorum would); its Status names the
    # members, with a gRPC address that has no host (":port", as the
    # default grpc-addr): the CLI tries them and gets the answer.
    from concurrent import futures

    import grpc
    import grpc_helpers as gh
    pb = gh.stubs(str(tmp_path / "stubs"))
    node = servers()
    assert cli("--addr", grpc_addr(node), "set", "k", "v")[0] == 0
    calls = []

    def get(req, ctx):
        calls.append("get")
        ctx.abort(grpc.StatusCode.UNAVAILABLE, "no leader known")

    def status(req, ctx):
        calls.append("status")
        return pb.cluster.StatusResponse(
            id="stub", role="candidate", members=[
                pb.cluster.Member(id="stub", grpc_addr=""),
                pb.cluster.Member(id="node1", grpc_addr=f":{node.grpc_port}",
                                  voter=True)])

    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    srv.add_generic_rpc_handlers((
        grpc.method_handlers_generic_handler("kv.KVService", {
            "Get": grpc.unary_unary_rpc_method_handler(
                get, request_deserializer=pb.kv.GetRequest.FromString,
                response_serializer=pb.kv.GetResponse.SerializeToString)}),
        grpc.method_handlers_generic_handler("pyazdb.Cluster", {
            "Status": grpc.unary_unary_rpc_method_handler(
                status,
                request_deserializer=pb.cluster.StatusRequest.FromString,
                response_serializer=(
                    pb.cluster.StatusResponse.SerializeToString))}),
    ))
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    try:
        (code, out, err), took = timed("--addr", f"127.0.0.1:{port}",
                                       "--timeout", "5", "get", "k")
        assert (code, out) == (0, "v\n"), err
        assert calls == ["get", "status"]
        assert took < 3, took
        # learned once: with no member that answers, the stub's error
        # comes back when the time is up
        node.stop()
        calls.clear()
        (code, out, err), took = timed("--addr", f"127.0.0.1:{port}",
                                       "--timeout", "1", "get", "k")
        assert code == 1 and out == ""
        assert "get failed: " in err and err.count("\n") == 1, err
        assert calls.count("status") == 1
    finally:
        srv.stop(0)
