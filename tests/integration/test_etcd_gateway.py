"""etcd 3.4's v3 JSON gateway on PyazDB's HTTP port (POST /v3/...), driven
by a client no one here wrote, Debian's python3-etcd3gw, against a 3-node
cluster (a follower as well as the leader), and by raw HTTP requests whose
JSON answers are compared with a real etcd 3.4's own gateway (Debian's
etcd-server, started here) where they are deterministic."""
import base64
import http.client
import json
import socket
import threading
import time

import pytest

from conftest import check_shared, wait_for
from test_cluster import leader_of, make_cluster
from test_etcd import etcd  # noqa: F401 (a fixture: a real etcd 3.4)
from test_tls import body_code, pki  # noqa: F401 (pki: a fixture)
from test_tls import curl as tls_curl
from test_tls import start as tls_start

try:
    import etcd3gw
    from etcd3gw.client import Etcd3Client
except ImportError:  # pragma: no cover
    etcd3gw = None



def b64(s):
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()


def unb64(s):
    return base64.b64decode(s).decode()


def post(port, path, body, timeout=10):
    """POST body (a dict, or raw bytes/str) to 127.0.0.1:port:
    (status, content-type, text)."""
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("POST", path, body=body,
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        return r.status, r.getheader("Content-Type"), r.read().decode()
    finally:
        c.close()


def call(port, path, body):
    st, _, text = post(port, path, body)
    assert st == 200, (path, body, st, text)
    return json.loads(text)


def gw(port):
    assert etcd3gw is not None, \
        "python3-etcd3gw missing: scripts/install-deps.sh test installs it"
    return Etcd3Client(host="127.0.0.1", port=port, api_path="/v3/",
                       timeout=10)


@pytest.fixture(scope="module")
def shared_nodes(module_servers):
    """One 3-node cluster for the tests below that take `cluster`: each
    uses keys, leases and watches of its own and stops no node."""
    return make_cluster(module_servers)


@pytest.fixture
def cluster(shared_nodes, request):
    """(nodes, leader, follower) of the shared cluster, as of this test."""
    leader = leader_of(shared_nodes)
    follower = next(s for s in shared_nodes if s is not leader)
    yield shared_nodes, leader, follower
    check_shared(request, shared_nodes)


# --- etcd3gw ------------------------------------------------------------------

def test_etcd3gw_kv_and_txn(cluster):
    nodes, leader, follower = cluster
    for node in (follower, leader):
        c = gw(node.http_port)
        p = f"gw-{node.name}/"
        assert c.put(p + "a", "1") is True
        assert c.put(p + "b", "2") is True
        assert c.put(p + "c", "3") is True
        assert c.get(p + "a") == [b"1"]
        assert c.get(p + "missing") == []
        got = c.get_prefix(p)
        assert [(v, m["key"]) for v, m in got] == [
            (b"1", (p + "a").encode()), (b"2", (p + "b").encode()),
            (b"3", (p + "c").encode())]
        # create: only when the key does not exist (a txn on version 0)
        assert c.create(p + "new", "x") is True
        assert c.create(p + "new", "y") is False
        assert c.get(p + "new") == [b"x"]
        # replace: compare the value, then put
        assert c.replace(p + "a", "1", "10") is True
        assert c.replace(p + "a", "1", "11") is False
        assert c.get(p + "a") == [b"10"]
        # a raw transaction with both branches
        txn = {"compare": [{"key": b64(p + "b"), "result": "EQUAL",
                            "target": "VALUE", "value": b64("2")}],
               "success": [{"request_put": {"key": b64(p + "b"),
                                            "value": b64("20")}},
                           {"request_range": {"key": b64(p + "b")}}],
               "failure": [{"request_delete_range": {"key": b64(p + "b")}}]}
        r = c.transaction(txn)
        assert r["succeeded"] is True
        assert unb64(r["responses"][1]["response_range"]["kvs"][0]
                     ["value"]) == "20"
        r = c.transaction(txn)  # the value is 20 now: failure branch
        assert "succeeded" not in r
        assert r["responses"][0]["response_delete_range"]["deleted"] == "1"
        assert c.get(p + "b") == []
        assert c.delete(p + "c") is True
        assert c.delete(p + "c") is False
        assert c.delete_prefix(p) is True  # a, new
        assert c.delete_prefix(p) is False
        assert c.get_prefix(p) == []
    # writes through either node are seen by the other
    gw(follower.http_port).put("shared", "v")
    assert gw(leader.http_port).get("shared") == [b"v"]


def test_etcd3gw_lease(cluster):
    nodes, leader, follower = cluster
    c = gw(follower.http_port)  # grants and revokes go to the leader
    lease = c.lease(ttl=60)
    assert lease.id > 0
    assert c.put("leased/a", "1", lease=lease) is True
    assert c.put("leased/b", "2", lease=lease) is True
    assert sorted(lease.keys()) == [b"leased/a", b"leased/b"]
    assert 55 <= lease.ttl() <= 60
    assert lease.refresh() == 60
    ids = [int(x["ID"]) for x in call(leader.http_port, "/v3/lease/leases",
                                      {})["leases"]]
    assert lease.id in ids
    assert lease.revoke() is True
    assert c.get("leased/a") == [] and c.get("leased/b") == []
    assert lease.ttl() == -1
    assert lease.refresh() == -1  # gone: no TTL in the answer
    with pytest.raises(etcd3gw.exceptions.Etcd3Exception):
        lease.revoke()  # 404 lease not found
    # a short lease expires and takes its key along
    short = c.lease(ttl=1)
    c.put("leased/short", "x", lease=short)
    deadline = time.time() + 15
    while c.get("leased/short") and time.time() < deadline:
        time.sleep(0.2)
    assert c.get("leased/short") == []


def test_etcd3gw_watch(cluster):
    nodes, leader, follower = cluster
    c = gw(follower.http_port)
    events, cancel = c.watch("w/key")
    events_p, cancel_p = c.watch_prefix("wp/")
    # the watches start after their created responses: write until seen
    w = gw(leader.http_port)
    w.put("w/key", "one")
    w.put("w/other", "ignored")
    w.put("wp/a", "A")
    w.delete("w/key")
    w.put("wp/b", "B")
    e1 = next(events)
    assert e1["kv"]["key"] == b"w/key" and e1["kv"]["value"] == b"one"
    assert "type" not in e1  # PUT is the default, left out
    e2 = next(events)
    assert e2["type"] == "DELETE" and e2["kv"]["key"] == b"w/key"
    got = [next(events_p) for _ in range(2)]
    assert [(e["kv"]["key"], e["kv"]["value"]) for e in got] == [
        (b"wp/a", b"A"), (b"wp/b", b"B")]
    cancel()
    cancel_p()
    wait_for(lambda: watchers(follower) == 0, "the cancelled watches to end")
    # watch_once on a key written once its watcher is registered (the
    # gateway registers it before it answers; watch_once waits for events)
    got = []
    t = threading.Thread(target=lambda: got.append(
        c.watch_once("w/once", timeout=30)))
    t.start()
    wait_for(lambda: watchers(follower) == 1 or not t.is_alive(),
             "watch_once's watcher")
    w.put("w/once", "1")
    t.join()
    assert got and got[0]["kv"]["value"] == b"1"


def test_etcd3gw_status_and_members(cluster):
    nodes, leader, follower = cluster
    c = gw(follower.http_port)
    st = c.status()
    assert st["version"].startswith("3.4")
    assert int(st["leader"]) == int(call(leader.http_port,
                                         "/v3/maintenance/status",
                                         {})["header"]["member_id"])
    members = c.members()
    assert sorted(m["name"] for m in members) == sorted(
        s.name for s in nodes)
    for m in members:
        assert int(m["ID"]) > 0 and m["peerURLs"] and m["clientURLs"]
    assert call(follower.http_port, "/v3/auth/status", {})["header"]


# --- raw JSON: conversions and errors ----------------------------------------

def err_of(port, path, body, status=400, code=3):
    st, ctype, text = post(port, path, body)
    assert st == status, (body, st, text)
    assert ctype == "application/json"
    e = json.loads(text)
    assert set(e) == {"error", "message", "code"}, e
    assert e["code"] == code and e["error"] == e["message"], e
    return e["message"]


def test_json_validation(server):
    port = server.http_port
    R = "/v3/kv/range"
    assert "not valid JSON" in err_of(port, R, '{"key":')
    assert "not valid JSON" in err_of(port, R, '{"key":"YQ=="} x')
    assert "not a JSON object" in err_of(port, R, "[]")
    assert "key: not valid base64" in err_of(port, R, '{"key":"YQ"}')
    assert "key: not valid base64" in err_of(port, R, '{"key":"Y!=="}')
    assert "key: not a base64 string" in err_of(port, R, '{"key":5}')
    assert "limit: not an integer" in err_of(
        port, R, '{"key":"YQ==","limit":1.5}')
    assert "limit: not an integer" in err_of(
        port, R, '{"key":"YQ==","limit":"1e3"}')
    assert "limit: integer out of range" in err_of(
        port, R, '{"key":"YQ==","limit":9223372036854775808}')
    assert "limit: integer out of range" in err_of(
        port, R, '{"key":"YQ==","limit":"99999999999999999999999"}')
    assert "serializable: not true or false" in err_of(
        port, R, '{"key":"YQ==","serializable":1}')
    assert "sort_order: unknown value" in err_of(
        port, R, '{"key":"YQ==","sort_order":"UP"}')
    assert "compare[0]: null" in err_of(port, "/v3/kv/txn",
                                        '{"compare":[null]}')
    assert "success[1].request_put: not an object" in err_of(
        port, "/v3/kv/txn",
        '{"success":[{"request_range":{"key":"YQ=="}},{"request_put":5}]}')
    assert "compare: not an array" in err_of(port, "/v3/kv/txn",
                                             '{"compare":{}}')
    assert "ID: not an integer" in err_of(port, "/v3/lease/grant",
                                          '{"TTL":5,"ID":"x"}')
    # a keep-alive stream with a bad request in it is refused whole (etcd
    # answers the ones before and drops the rest)
    assert "ID: not an integer" in err_of(port, "/v3/lease/keepalive",
                                          '{"ID":1}{"ID":"x"}')
    assert "not a sequence of JSON objects" in err_of(
        port, "/v3/lease/keepalive", '{"ID":1}{"ID":')
    assert "not a sequence of JSON objects" in err_of(
        port, "/v3/lease/keepalive", '{"ID":1} 5')
    assert "etcdserver: key is not provided" == err_of(port, R, "")
    assert "etcdserver: key is not provided" == err_of(port, R, "null")
    # unknown members are ignored, and both name spellings work
    r = call(port, "/v3/kv/put", {"key": b64("k"), "value": b64("v"),
                                  "no_such_field": [1, {"x": None}]})
    assert int(r["header"]["revision"]) >= 1
    r = call(port, R, {"key": b64("k"), "keysOnly": True, "key_": 1})
    assert r["kvs"] == [{"key": b64("k"), "create_revision": r["kvs"][0][
        "create_revision"], "mod_revision": r["kvs"][0]["mod_revision"],
        "version": "1"}]
    # 64-bit numbers as strings or numbers, exactly
    r = call(port, R, {"key": b64("k"), "limit": "9223372036854775807"})
    assert r["count"] == "1"
    # routes and methods
    st, _, text = post(port, "/v3/kv/nothing", "{}")
    assert st == 404
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", R)
    r = c.getresponse()
    assert r.status == 405 and r.getheader("Allow") == "POST"
    r.read()
    c.close()
    # bodies over http-max-body are refused as the HTTP API refuses them
    st, _, _ = post(port, "/v3/kv/put",
                    '{"key":"YQ==","value":"' + "A" * (5 << 20) + '"}')
    assert st == 413
    # the server carries on
    assert call(port, R, {"key": b64("k")})["count"] == "1"


class RawWatch:
    """POST /v3/watch on a raw socket, read chunk by chunk."""

    def __init__(self, port, create):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=10)
        body = json.dumps({"create_request": create})
        self.s.sendall((f"POST /v3/watch HTTP/1.1\r\nHost: x\r\n"
                        f"Content-Length: {len(body)}\r\n\r\n{body}")
                       .encode())
        self.f = self.s.makefile("rb")
        self.head = []
        while True:
            line = self.f.readline()
            if line in (b"\r\n", b""):
                break
            self.head.append(line.decode().strip().lower())

    def chunk(self):
        """The next chunk: one JSON line, {"result": ...}; None at the
        last chunk."""
        size = int(self.f.readline().strip(), 16)
        data = self.f.read(size)
        assert self.f.read(2) == b"\r\n"
        if size == 0:
            return None
        assert data.endswith(b"\n") and data.count(b"\n") == 1, data
        return json.loads(data)["result"]

    def close(self):
        self.f.close()
        self.s.close()


def watchers(server):
    return server.metric("pyazdb_watchers")


def test_watch_key_over_max_key_size(servers):
    # as on the gRPC Watch: created and canceled, no watcher made
    server = servers(conf={"max-key-size": "1kb"})
    for create in ({"key": b64("k" * 1025)},
                   {"key": b64("a"), "range_end": b64("z" * 1025)}):
        w = RawWatch(server.http_port, create)
        assert w.head[0].startswith("http/1.1 200")
        r = w.chunk()
        assert r["created"] is True and r["canceled"] is True
        assert r["watch_id"] == "-1"
        assert r["cancel_reason"] == "etcdserver: request is too large"
        assert w.chunk() is None
        w.close()
    assert watchers(server) == 0


def test_watch_negative_start_revision(servers):
    # as on the gRPC Watch: created and canceled with the reason, no
    # compact_revision, no watcher made
    server = servers()
    for s in ("-1", "-7"):
        w = RawWatch(server.http_port, {"key": b64("a"), "start_revision": s})
        assert w.head[0].startswith("http/1.1 200")
        r = w.chunk()
        assert r["created"] is True and r["canceled"] is True
        assert r["watch_id"] == "-1" and "compact_revision" not in r
        assert r["cancel_reason"] == \
            "etcdserver: start_revision must not be negative (0: the next revision)"
        assert w.chunk() is None
        w.close()
    assert watchers(server) == 0


def test_watch_stream_raw(servers):
    """The stream as bytes: chunked, one JSON line per chunk, created
    first; filters and prev_kv; closing the connection cancels the
    watcher; a start revision the history dropped is canceled."""
    server = servers(conf={"watch-history-events": "4"})
    port = server.http_port
    w = RawWatch(port, {"key": b64("wr/"), "range_end": b64("wr0"),
                        "prev_kv": True, "filters": ["NODELETE"]})
    assert w.head[0].startswith("http/1.1 200")
    assert "transfer-encoding: chunked" in w.head
    assert "content-type: application/json" in w.head
    created = w.chunk()
    assert created["created"] is True and "events" not in created
    base = int(created["header"].get("revision", 0))
    assert watchers(server) == 1
    call(port, "/v3/kv/put", {"key": b64("wr/a"), "value": b64("1")})
    call(port, "/v3/kv/put", {"key": b64("wr/a"), "value": b64("2")})
    call(port, "/v3/kv/put", {"key": b64("other"), "value": b64("x")})
    call(port, "/v3/kv/deleterange", {"key": b64("wr/a")})  # filtered
    call(port, "/v3/kv/put", {"key": b64("wr/b"), "value": b64("3")})
    r1, r2, r3 = w.chunk(), w.chunk(), w.chunk()
    assert int(r1["header"]["revision"]) == base + 1
    assert r1["events"] == [{"kv": {
        "key": b64("wr/a"), "create_revision": str(base + 1),
        "mod_revision": str(base + 1), "version": "1", "value": b64("1")}}]
    assert r2["events"][0]["prev_kv"]["value"] == b64("1")
    assert int(r3["header"]["revision"]) == base + 5
    assert r3["events"][0]["kv"]["key"] == b64("wr/b")
    w.close()
    deadline = time.time() + 10
    while watchers(server) != 0:
        assert time.time() < deadline, "the watcher outlived its connection"
        time.sleep(0.05)
    # a past revision still in the history: replayed
    w = RawWatch(port, {"key": b64("wr/b"), "start_revision": str(base + 5)})
    assert w.chunk()["created"] is True
    assert w.chunk()["events"][0]["kv"]["value"] == b64("3")
    w.close()
    # one the history (4 events) no longer holds: created, then canceled
    w = RawWatch(port, {"key": b64("wr/a"), "start_revision": "1"})
    assert w.chunk()["created"] is True
    c = w.chunk()
    assert c["canceled"] is True and int(c["compact_revision"]) > 1
    assert "compacted" in c["cancel_reason"]
    assert w.chunk() is None  # the last chunk: the stream ended
    w.close()
    # the first request must create
    assert "create_request" in err_of(port, "/v3/watch",
                                      {"cancel_request": {"watch_id": 1}})
    # an empty key is "\0": with range_end "\0", every key
    w = RawWatch(port, {"range_end": b64("\0")})
    assert w.chunk()["created"] is True
    call(port, "/v3/kv/put", {"key": b64("any"), "value": b64("1")})
    assert w.chunk()["events"][0]["kv"]["key"] == b64("any")
    w.close()


# --- the same answers as etcd 3.4's gateway -----------------------------------

# (path, body): answers that do not depend on ids, times or sizes.
SCRIPT = [
    ("/v3/kv/put", {"key": b64("cmp/a"), "value": b64("1")}),
    ("/v3/kv/put", {"key": b64("cmp/b"), "value": b64("2"),
                    "prev_kv": True}),
    ("/v3/kv/put", {"key": b64("cmp/b"), "value": b64("22"),
                    "prev_kv": True}),
    ("/v3/kv/range", {"key": b64("cmp/a")}),
    ("/v3/kv/range", {"key": b64("cmp/"), "range_end": b64("cmp0")}),
    ("/v3/kv/range", {"key": b64("cmp/"), "range_end": b64("cmp0"),
                      "sort_order": "DESCEND", "sort_target": "VALUE",
                      "limit": 1}),
    ("/v3/kv/range", {"key": b64("cmp/"), "range_end": b64("cmp0"),
                      "count_only": True}),
    ("/v3/kv/range", {"key": b64("cmp/"), "range_end": b64("cmp0"),
                      "keys_only": True, "sortOrder": 2}),
    ("/v3/kv/range", {"key": b64("nothing")}),
    ("/v3/kv/txn", {"compare": [{"key": b64("cmp/a"), "result": "EQUAL",
                                 "target": "VALUE", "value": b64("1")}],
                    "success": [{"request_put": {"key": b64("cmp/c"),
                                                 "value": b64("3")}},
                                {"request_range": {"key": b64("cmp/c")}}],
                    "failure": [{"request_range": {"key": b64("cmp/a")}}]}),
    ("/v3/kv/txn", {"compare": [{"key": b64("cmp/a"), "target": "VERSION",
                                 "result": "GREATER", "version": "5"}],
                    "success": [{"request_put": {"key": b64("cmp/d"),
                                                 "value": b64("4")}}],
                    "failure": [{"request_delete_range": {
                        "key": b64("cmp/c"), "prev_kv": True}}]}),
    ("/v3/kv/deleterange", {"key": b64("cmp/"), "range_end": b64("cmp0"),
                            "prev_kv": True}),
    ("/v3/kv/deleterange", {"key": b64("cmp/")}),
    ("/v3/kv/range", {"key": ""}),
    ("/v3/kv/put", {"key": b64("cmp/x"), "value": b64("v"),
                    "lease": "12345"}),
    ("/v3/kv/range", {"key": b64("cmp/x")}),
    ("/v3/kv/range", {"key": b64("cmp/"), "revision": "100000"}),
    ("/v3/kv/txn", {"compare": [{"key": b64("k"), "target": "MOD"}],
                    "success": [{"request_put": {"key": b64("k")}},
                                {"request_put": {"key": b64("k")}}]}),
    ("/v3/lease/grant", {"TTL": 100, "ID": 777}),
    ("/v3/lease/grant", {"TTL": "100", "ID": "777"}),
    ("/v3/kv/put", {"key": b64("cmp/l"), "value": b64("v"), "lease": 777}),
    ("/v3/lease/revoke", {"ID": 777}),
    ("/v3/kv/lease/revoke", {"ID": 777}),
    ("/v3/lease/timetolive", {"ID": 777}),
    ("/v3/kv/lease/timetolive", {"ID": "778", "keys": True}),
    ("/v3/lease/keepalive", {"ID": 778}),
    ("/v3/lease/grant", {"TTL": 100, "ID": 779}),
    ("/v3/lease/keepalive", '{"ID":779}\n{"ID":"778"} {"ID":779}'),
    ("/v3/lease/keepalive", ""),
    ("/v3/lease/revoke", {"ID": 779}),
    ("/v3beta/kv/put", {"key": b64("cmp/beta"), "value": b64("b")}),
    ("/v3beta/kv/range", {"key": b64("cmp/beta")}),
    ("/v3/kv/range", {"key": b64("cmp/l")}),
]

REVS = ("revision", "create_revision", "mod_revision")


def normalize(v, base, name=None):
    if isinstance(v, dict):
        out = {}
        for k, x in v.items():
            if k in ("cluster_id", "member_id", "raft_term"):
                out[k] = "*"
            elif k in REVS and isinstance(x, str):
                out[k] = int(x) - base
            else:
                out[k] = normalize(x, base, k)
        return out
    if isinstance(v, list):
        return [normalize(x, base) for x in v]
    return v


def run_script(port):
    base = int(call(port, "/v3/kv/range",
                    {"key": b64("x")})["header"].get("revision", 0))
    out = []
    for path, body in SCRIPT:
        st, ctype, text = post(port, path, body)
        if path.endswith("/keepalive") and st == 200:
            # a stream: one result line per request
            got = [json.loads(x) for x in text.splitlines()]
        else:
            got = json.loads(text)
        out.append((path, st, normalize(got, base)))
    return out


def test_same_answers_as_etcd(cluster, etcd):
    nodes, leader, follower = cluster
    ours = run_script(follower.http_port)
    theirs = run_script(etcd)
    for a, b in zip(ours, theirs):
        assert a == b


def test_clients_that_leave(cluster):
    """Clients that send a request and leave before the answer (a call in
    flight on the loopback gRPC connection, a lease request forwarded to
    the leader, a watch waiting for its ReadIndex) cost nothing after: the
    node carries on and holds no watcher."""
    nodes, leader, follower = cluster
    port = follower.http_port
    lease = json.dumps({"TTL": 30}).encode()
    reqs = [("/v3/kv/txn", json.dumps({"success": [{"request_put": {
                "key": b64(f"gone/{i}"), "value": b64("v")}}]}).encode())
            for i in range(20)]
    reqs += [("/v3/lease/grant", lease)] * 5
    reqs += [("/v3/watch", json.dumps({"create_request": {
        "key": b64("gone/")}}).encode())] * 10
    reqs += [("/v3/kv/range", b'{"key":"Z29uZS8=","range_end":"Z29uZTA="}')]
    accepted = 'pyazdb_clients_accepted_total{listener="http"}'
    connected = 'pyazdb_clients_connected{listener="http"}'
    m = follower.metrics()  # a scrape is a connection of its own
    accepted0, connected0 = m[accepted], m[connected]
    for path, body in reqs:
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: "
                  f"{len(body)}\r\n\r\n".encode() + body)
        s.close()
    # a request cut in its body, and one with a body longer than sent
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"POST /v3/kv/put HTTP/1.1\r\nHost: x\r\nContent-Length: 50"
              b"\r\n\r\n{\"key\":")
    s.close()
    # the node has taken every one of those connections and seen it close
    scrapes = []

    def all_closed():
        m = follower.metrics()
        scrapes.append(m)
        return (m[accepted] >= accepted0 + len(reqs) + 1 + len(scrapes)
                and m[connected] <= connected0)
    wait_for(all_closed, "the node to see every client leave")
    # a linearizable read after them: a ReadIndex round that ends after
    # those the watches were waiting for
    r = call(port, "/v3/kv/range", {"key": b64("gone/"),
                                    "range_end": b64("gone0")})
    assert int(r.get("count", "0")) <= 20
    wait_for(lambda: watchers(follower) == 0,
             "the watchers of clients that left to go")
    c = gw(port)
    assert c.put("after", "ok") is True and c.get("after") == [b"ok"]
    for n in nodes:
        assert n.proc.poll() is None


@pytest.mark.parametrize("auth", ["none", "require"])
def test_gateway_over_tls(servers, pki, auth):
    """With TLS on both client ports (and client certificates required),
    the gateway's loopback calls to the gRPC port go over TLS too,
    verifying the node's certificate against tls-ca-file as a forward to
    the leader does."""
    s = tls_start(servers, pki, auth=auth,
                  conf={"tls-ca-file": pki["ca.crt"]})
    opts = ["--cacert", pki["ca.crt"]]
    if auth != "none":
        opts += ["--cert", pki["alice.crt"], "--key", pki["alice.key"]]
    r = tls_curl(s.http_port, "/v3/kv/put", *opts,
                 data='{"key":"dGxz","value":"b2s="}')
    body, code = body_code(r)
    assert code == 200, (r.stderr, body)
    r = tls_curl(s.http_port, "/v3/kv/range", *opts, data='{"key":"dGxz"}')
    body, code = body_code(r)
    assert code == 200 and json.loads(body)["kvs"][0]["value"] == "b2s="


def test_etcd3gw_lock(cluster):
    """etcd3gw's lock: a lease, a create-if-absent transaction carrying
    it, a compare-and-delete release."""
    nodes, leader, follower = cluster
    a, b = gw(follower.http_port), gw(leader.http_port)
    la = a.lock("job", ttl=30)
    lb = b.lock("job", ttl=30)
    assert la.acquire() is True
    assert la.is_acquired() is True
    assert lb.acquire() is False  # held by a
    assert lb.is_acquired() is False
    assert la.refresh() == 30
    assert la.release() is True
    assert lb.acquire() is True and lb.is_acquired() is True
    assert lb.release() is True


def test_watch_of_a_client_that_does_not_read(servers):
    """A watcher whose client reads nothing falls behind; past
    watch-max-buffer with nothing read for 2 s it is cancelled and its
    stream ends, holding no memory: the writes and the other watchers go
    on."""
    server = servers(conf={"watch-max-buffer": "64kb"})
    port = server.http_port
    slow = RawWatch(port, {"key": b64("s/"), "range_end": b64("s0")})
    assert slow.chunk()["created"] is True
    fast = RawWatch(port, {"key": b64("s/0")})
    assert fast.chunk()["created"] is True
    value = b64("x" * 60000)
    txn = {"success": [{"request_put": {"key": b64(f"s/{k}"),
                                        "value": value}}
                       for k in range(1, 5)]}  # ~0.3 MB a revision
    deadline = time.time() + 60
    while server.metric("pyazdb_watch_cancelled_slow_total") < 1:
        assert time.time() < deadline, "the slow watcher was not cancelled"
        call(port, "/v3/kv/txn", txn)
        # ~5 MB/s: the 64 MB history outlasts the 2 s the client is
        # given to read
        time.sleep(0.05)
    deadline = time.time() + 10
    while watchers(server) != 1:
        assert time.time() < deadline
        time.sleep(0.05)
    # the slow stream ends with a canceled line after what it had queued
    last = None
    while True:
        r = slow.chunk()
        if r is None:
            break
        last = r
    assert last["canceled"] is True
    assert "watch-max-buffer" in last["cancel_reason"]
    slow.close()
    # the fast one still gets its key's events
    call(port, "/v3/kv/put", {"key": b64("s/0"), "value": b64("last")})
    while True:
        r = fast.chunk()
        if r["events"][-1]["kv"]["value"] == b64("last"):
            break
    fast.close()


# --- the same error for the same request over gRPC and over the gateway -------

def grpc_answer(port, epb, svc, method, fields):
    """(code, message) of etcdserverpb.svc/method over gRPC; code 0 on
    success, with the answer as message."""
    import grpc
    req = getattr(epb, method + "Request")(**fields)
    resp = getattr(epb, method + "Response")
    ch = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        f = ch.unary_unary(f"/etcdserverpb.{svc}/{method}",
                           request_serializer=type(req).SerializeToString,
                           response_deserializer=resp.FromString)
        return 0, f(req, timeout=10)
    except grpc.RpcError as e:
        return e.code().value[0], e.details()
    finally:
        ch.close()


def gw_answer(port, path, fields):
    st, _, text = post(port, path, fields)
    e = json.loads(text)
    if st == 200:
        return 0, e
    assert e["error"] == e["message"], e
    return e["code"], e["message"]


def watch_first(port, epb, create):
    """The first WatchResponse of a Watch call with one create_request:
    (created, canceled, watch_id, cancel_reason)."""
    import grpc
    ch = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        f = ch.stream_stream("/etcdserverpb.Watch/Watch",
                             request_serializer=epb.WatchRequest
                             .SerializeToString,
                             response_deserializer=epb.WatchResponse
                             .FromString)
        it = f(iter([epb.WatchRequest(
            create_request=epb.WatchCreateRequest(**create))]), timeout=10)
        r = next(it)
        it.cancel()
        return r.created, r.canceled, r.watch_id, r.cancel_reason
    finally:
        ch.close()


def watch_first_gw(port, create):
    w = RawWatch(port, {k: b64(v) if isinstance(v, bytes) else v
                        for k, v in create.items()})
    try:
        r = w.chunk()
    finally:
        w.close()
    return (r.get("created", False), r.get("canceled", False),
            int(r.get("watch_id", 0)), r.get("cancel_reason", ""))


# (gRPC method, request, gateway path); a grant of ID 424242 is made first,
# so that granting it again finds it
ERROR_CASES = [
    ("LeaseGrant", {"TTL": 9000000001}, "/v3/lease/grant"),
    ("LeaseGrant", {"TTL": 30, "ID": 424242}, "/v3/lease/grant"),
    ("LeaseRevoke", {"ID": 0}, "/v3/lease/revoke"),
    ("LeaseRevoke", {"ID": 99999999}, "/v3/kv/lease/revoke"),
    ("LeaseTimeToLive", {"ID": 99999999}, "/v3/lease/timetolive"),
    ("Range", {"key": b""}, "/v3/kv/range"),
]


def answers(port, epb, grpc_port=None):
    """Each ERROR_CASES request over gRPC and over the gateway."""
    grpc_port = grpc_port or port
    svc = {"Range": "KV"}
    out = []
    for method, fields, path in ERROR_CASES:
        body = {k: b64(v) if isinstance(v, bytes) else v
                for k, v in fields.items()}
        g = grpc_answer(grpc_port, epb, svc.get(method, "Lease"), method,
                        fields)
        h = gw_answer(port, path, body)
        if g[0] == 0:  # an answer: compare what does not vary
            g = (0, getattr(g[1], "TTL", None))
            h = (0, int(h[1]["TTL"]) if "TTL" in h[1] else None)
        out.append((method, fields, g, h))
    return out


def test_same_errors_over_grpc_and_gateway(cluster, epb, etcd):
    """The gateway answers a request as the gRPC call does: the same code
    and message (the gateway's own lease code had drifted: a TTL of 0
    refused, other wordings), and both as etcd 3.4 does."""
    nodes, leader, follower = cluster
    for port, gport in ((follower.http_port, follower.grpc_port),
                        (etcd, etcd)):
        assert grpc_answer(gport, epb, "Lease", "LeaseGrant",
                           {"TTL": 30, "ID": 424242})[0] == 0
    ours = answers(follower.http_port, epb, follower.grpc_port)
    theirs = answers(etcd, epb)
    for (m, f, g, h), (_, _, eg, eh) in zip(ours, theirs):
        assert g == h, (m, f, "gRPC", g, "gateway", h)
        assert g == eg and h == eh, (m, f, "ours", g, "etcd", eg)
    # a TTL of 0 is raised to the minimum, not refused
    for port, gport in ((follower.http_port, follower.grpc_port),):
        g = grpc_answer(gport, epb, "Lease", "LeaseGrant", {"TTL": 0})
        h = gw_answer(port, "/v3/lease/grant", {"TTL": 0})
        assert g[0] == 0 and h[0] == 0, (g, h)
        assert g[1].TTL >= 1 and int(h[1]["TTL"]) == g[1].TTL
    # ours only (PyazDB's lease ids): the same refusal both ways
    g = grpc_answer(follower.grpc_port, epb, "Lease", "LeaseGrant",
                    {"TTL": 30, "ID": -5})
    h = gw_answer(follower.http_port, "/v3/lease/grant",
                  {"TTL": 30, "ID": -5})
    assert g[0] == 3 and g == h, (g, h)
    # a watch of an empty range: refused in its created response
    for create in ({"key": b"b", "range_end": b"a"},):
        a = watch_first(follower.grpc_port, epb, create)
        b = watch_first_gw(follower.http_port, create)
        c = watch_first(etcd, epb, create)
        d = watch_first_gw(etcd, create)
        assert a == b == c == d, (a, b, c, d)
        assert a[1] is True and a[2] == -1
