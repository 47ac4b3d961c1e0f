"""Bearer tokens for the data API (client-token-file): curl on every kind
of route, grpcio with authorization metadata on kv.KVService and etcd's
services, the reload of the token file, the CLI with --token, and
forwarding through a follower."""
import json
import os
import signal
import subprocess

import grpc
import pytest

import grpc_helpers as gh
from conftest import ROOT

CLI = os.path.join(ROOT, "src", "pyazdb-cli")
from grpc_helpers import rpc_error
from test_cluster import leader_of, make_cluster

ADMIN = "admin-token-0123456789"
APP = "app-token-0123456789"
READER = "reader-token-0123456789"
APPRO = "appro-token-0123456789"
NEW = "new-token-0123456789ab"

TOKENS = f"""# test tokens
admin  rw {ADMIN}
app    rw {APP} app/ shared/
reader ro {READER}
appro  ro {APPRO} app/
"""


def write_tokens(path, text):
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def token_node(servers, name="node1", text=TOKENS):
    s = servers(name, start=False)
    path = os.path.join(s.dir, "tokens")
    write_tokens(path, text)
    s.conf["client-token-file"] = path
    s.write_conf()
    s.token_file = path
    s.start()
    return s


def curl(s, method, path, token=None, body=None, headers=(), stream=False):
    """(status, body, headers text) of one curl request."""
    cmd = ["curl", "-sS", "-D", "-", "-X", method, "--max-time",
           "2" if stream else "10"]
    if token:
        cmd += ["-H", f"Authorization: Bearer {token}"]
    for h in headers:
        cmd += ["-H", h]
    if body is not None:
        cmd += ["--data-binary", json.dumps(body)]
    cmd.append(f"http://127.0.0.1:{s.http_port}{path}")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    head, _, rest = r.stdout.partition("\n\n")  # text mode: \r\n is \n
    assert head.startswith("HTTP/1.1 "), (r.stdout, r.stderr)
    return int(head.split()[1]), rest, head


@pytest.fixture
def node(servers):
    return token_node(servers)


def test_open_routes(node):
    for path in ("/health", "/status", "/metrics", "/cluster"):
        st, body, _ = curl(node, "GET", path)
        assert st == 200, (path, body)


def test_status_digest_only_for_tokens_that_read_every_key(node):
    """The digest sums hashes of every key, value and their metadata:
    beside the revision it would let anyone test a guess at a value
    offline, so /status shows it only to a token that may read every key
    (as etcd's Hash)."""
    assert curl(node, "POST", "/set", ADMIN,
                {"key": "users/alice/pin", "value": "4821"})[0] == 204
    for tok in (None, APP, APPRO, "unknown-token-0123456789"):
        st, body, _ = curl(node, "GET", "/status", tok)
        assert st == 200, body
        st = json.loads(body)
        assert "digest" not in st and st["revision"] >= 1, (tok, st)
    digests = set()
    for tok in (ADMIN, READER):
        st, body, _ = curl(node, "GET", "/status", tok)
        assert st == 200, body
        digests.add(json.loads(body)["digest"])
    assert len(digests) == 1 and len(digests.pop()) == 16


def test_missing_and_unknown_token(node):
    for method, path, body in [("GET", "/get?key=app/x", None),
                               ("POST", "/set", {"key": "k", "value": "v"}),
                               ("GET", "/range?prefix=a", None),
                               ("POST", "/txn", {"success": []}),
                               ("GET", "/watch?key=k", None),
                               ("POST", "/lease/grant", {"ttl": 10}),
                               ("GET", "/leases", None)]:
        for tok in (None, "nope-nope-nope-nope", APP + "x"):
            st, out, head = curl(node, method, path, tok, body)
            assert st == 401, (path, tok, out)
            assert "WWW-Authenticate: Bearer" in head
            assert ("Missing bearer token" if tok is None
                    else "Unknown bearer token") in out
    # another scheme counts as none
    st, out, _ = curl(node, "GET", "/get?key=k",
                      headers=[f"Authorization: Basic {APP}"])
    assert st == 401 and "Missing" in out
    # a token never shows up in the log
    assert APP not in node.read_log()


def test_rights_and_prefixes(node):
    assert curl(node, "POST", "/set", ADMIN, {"key": "other", "value": "o"}
                )[0] == 204
    assert curl(node, "POST", "/set", APP, {"key": "app/a", "value": "1"}
                )[0] == 204
    st, out, _ = curl(node, "POST", "/set", APP, {"key": "other", "value": "x"})
    assert st == 403 and "Token 'app' may not touch this key" in out
    # read-only tokens read, never write
    assert curl(node, "GET", "/get?key=other", READER)[0] == 200
    st, out, _ = curl(node, "POST", "/set", READER, {"key": "r", "value": "x"})
    assert st == 403 and "Token 'reader' is read-only" in out
    st, out, _ = curl(node, "POST", "/delete", APPRO, {"key": "app/a"})
    assert st == 403 and "read-only" in out
    assert curl(node, "GET", "/get?key=app/a", APPRO)[0] == 200
    assert curl(node, "GET", "/get?key=other", APPRO)[0] == 403
    # ranges: inside the prefix, or spanning out of it
    st, out, _ = curl(node, "GET", "/range?prefix=app/", APP)
    assert st == 200 and json.loads(out)["count"] == 1
    assert curl(node, "GET", "/range?prefix=app", APP)[0] == 403
    assert curl(node, "GET", "/range?from=app/", APP)[0] == 403
    assert curl(node, "GET", "/range?from=app/a&to=app/z", APP)[0] == 200
    assert curl(node, "GET", "/range?from=app/a&to=b", APP)[0] == 403
    assert curl(node, "GET", "/range?from=a", READER)[0] == 200
    # every operation of a transaction, compares included
    inside = {"compare": [{"key": "app/a", "target": "version",
                           "result": ">", "value": 0}],
              "success": [{"put": {"key": "app/b", "value": "2"}},
                          {"range": {"prefix": "shared/"}}]}
    assert curl(node, "POST", "/txn", APP, inside)[0] == 200
    for bad in ({"success": [{"put": {"key": "app/c", "value": "3"}},
                             {"get": {"key": "other"}}]},
                {"compare": [{"key": "other", "target": "version",
                              "result": ">", "value": 0}],
                 "success": []},
                {"success": [], "failure": [{"range": {"prefix": "a"}}]},
                {"success": [{"delete_range": {"prefix": "ap"}}]}):
        st, out, _ = curl(node, "POST", "/txn", APP, bad)
        assert st == 403, (bad, out)
    # nothing of a refused transaction was written
    assert curl(node, "GET", "/get?key=app/c", ADMIN)[0] == 404
    # a read-only transaction is a read; one that writes needs rw
    assert curl(node, "POST", "/txn", APPRO,
                {"success": [{"get": {"key": "app/a"}}]})[0] == 200
    assert curl(node, "POST", "/txn", APPRO,
                {"success": [{"put": {"key": "app/a", "value": "x"}}]}
                )[0] == 403
    # conditional writes and prefix deletes are transactions too
    assert curl(node, "POST", "/delete", APP, {"prefix": "o"})[0] == 403
    assert curl(node, "POST", "/delete", APP, {"prefix": "app/"})[0] == 200


def test_watch(node):
    st, out, _ = curl(node, "GET", "/watch?prefix=other", APP)
    assert st == 403 and "range" in out
    assert curl(node, "GET", "/watch?key=other", APP)[0] == 403
    assert curl(node, "GET", "/watch?from=app/&to=b", APP)[0] == 403
    # inside: the stream opens (curl gives up after its --max-time)
    st, _, head = curl(node, "GET", "/watch?prefix=app/", APP, stream=True)
    assert st == 200 and "text/event-stream" in head
    st, _, _ = curl(node, "GET", "/watch?key=other", READER, stream=True)
    assert st == 200


def test_leases(node):
    st, out, _ = curl(node, "POST", "/lease/grant", APP, {"ttl": 30})
    assert st == 200, out
    lid = json.loads(out)["id"]
    assert curl(node, "POST", "/lease/keepalive", APP, {"id": lid})[0] == 200
    assert curl(node, "POST", "/lease/grant", APPRO, {"ttl": 30})[0] == 403
    assert curl(node, "GET", f"/lease?id={lid}", APP)[0] == 200
    # revoking deletes keys anywhere: unrestricted rw only
    st, out, _ = curl(node, "POST", "/lease/revoke", APP, {"id": lid})
    assert st == 403 and "without prefixes" in out
    assert curl(node, "GET", f"/lease?id={lid}&keys=true", APP)[0] == 403
    assert curl(node, "GET", "/leases", APP)[0] == 403
    assert curl(node, "GET", "/leases", ADMIN)[0] == 200
    assert curl(node, "POST", "/lease/revoke", ADMIN, {"id": lid})[0] == 200


def test_admin_routes(servers):
    s = servers("node1", start=False,
                conf={"cluster-token": "cluster-secret-xyz"})
    path = os.path.join(s.dir, "tokens")
    write_tokens(path, TOKENS)
    s.conf["client-token-file"] = path
    s.write_conf()
    s.start()
    assert curl(s, "POST", "/admin/snapshot")[0] == 401
    st, out, _ = curl(s, "POST", "/admin/snapshot", APP)
    assert st == 403 and "rw token without prefixes" in out
    assert curl(s, "POST", "/admin/snapshot", READER)[0] == 403
    assert curl(s, "POST", "/admin/snapshot", ADMIN)[0] == 200
    assert curl(s, "POST", "/admin/snapshot", "cluster-secret-xyz")[0] == 200
    assert curl(s, "DELETE", "/cluster/members/nobody", APP)[0] == 403
    assert curl(s, "DELETE", "/cluster/members/nobody", ADMIN)[0] == 404
    assert curl(s, "POST", "/cluster/transfer?to=nobody")[0] == 401
    # the cluster token is no data token
    assert curl(s, "GET", "/get?key=k", "cluster-secret-xyz")[0] == 401


# --- gRPC --------------------------------------------------------------------

def md(tok):
    return (("authorization", f"Bearer {tok}"),)


def test_grpc_kv(node, tmp_path):
    c = gh.Client(node.grpc_port, gh.stubs(str(tmp_path)))
    kv = c.s.kv
    try:
        code, det = rpc_error(c.Get, kv.GetRequest(key="app/x"))
        assert code == grpc.StatusCode.UNAUTHENTICATED and "Missing" in det
        code, det = rpc_error(c.Get, kv.GetRequest(key="app/x"),
                              metadata=md("wrong-token-wrong-token"))
        assert code == grpc.StatusCode.UNAUTHENTICATED and "Unknown" in det
        assert c.Set(kv.SetRequest(key="app/x", value="1"),
                     metadata=md(APP)).success
        assert c.Get(kv.GetRequest(key="app/x"), metadata=md(APPRO)).value \
            == "1"
        code, det = rpc_error(c.Set, kv.SetRequest(key="app/x", value="2"),
                              metadata=md(APPRO))
        assert code == grpc.StatusCode.PERMISSION_DENIED and "read-only" in det
        code, _ = rpc_error(c.Delete, kv.DeleteRequest(key="other"),
                            metadata=md(APP))
        assert code == grpc.StatusCode.PERMISSION_DENIED
        # health and Status stay open
        assert c.Check(c.s.health.HealthCheckRequest()).status == 1
        c.Status(c.s.cluster.StatusRequest())
    finally:
        c.close()


def ecall(port, epb, svc, method, req, resp, tok=None):
    return gh.etcd_call(port, epb, svc, method, req, resp,
                        metadata=md(tok) if tok else None)


def eerr(*a, **kw):
    try:
        ecall(*a, **kw)
    except grpc.RpcError as e:
        return e.code()
    raise AssertionError("call succeeded, an error was expected")


def test_grpc_etcd(node, epb):
    p = node.grpc_port
    D = grpc.StatusCode.PERMISSION_DENIED
    U = grpc.StatusCode.UNAUTHENTICATED
    put = epb.PutRequest(key=b"app/e", value=b"v")
    assert eerr(p, epb, "KV", "Put", put, "PutResponse") == U
    ecall(p, epb, "KV", "Put", put, "PutResponse", APP)
    assert eerr(p, epb, "KV", "Put", epb.PutRequest(key=b"x", value=b"v"),
                "PutResponse", tok=APP) == D
    assert eerr(p, epb, "KV", "Put", put, "PutResponse", tok=APPRO) == D
    # Range: a key, a prefix inside, a prefix spanning out, everything
    r = ecall(p, epb, "KV", "Range", epb.RangeRequest(key=b"app/e"),
              "RangeResponse", APPRO)
    assert r.kvs[0].value == b"v"
    ecall(p, epb, "KV", "Range",
          epb.RangeRequest(key=b"app/", range_end=b"app0"), "RangeResponse",
          APP)
    assert eerr(p, epb, "KV", "Range",
                epb.RangeRequest(key=b"app", range_end=b"apq"),
                "RangeResponse", tok=APP) == D
    assert eerr(p, epb, "KV", "Range",
                epb.RangeRequest(key=b"\0", range_end=b"\0"),
                "RangeResponse", tok=APP) == D
    ecall(p, epb, "KV", "Range", epb.RangeRequest(key=b"\0", range_end=b"\0"),
          "RangeResponse", READER)
    assert eerr(p, epb, "KV", "DeleteRange",
                epb.DeleteRangeRequest(key=b"a", range_end=b"b"),
                "DeleteRangeResponse", tok=APP) == D
    # Txn: compares and every op of both branches
    ok = epb.TxnRequest(
        compare=[epb.Compare(key=b"app/e", target=epb.Compare.VERSION,
                             result=epb.Compare.GREATER, version=0)],
        success=[epb.RequestOp(request_put=epb.PutRequest(key=b"app/f",
                                                          value=b"1"))])
    assert ecall(p, epb, "KV", "Txn", ok, "TxnResponse", APP).succeeded
    bad = epb.TxnRequest(
        success=[epb.RequestOp(request_put=epb.PutRequest(key=b"app/g",
                                                          value=b"1"))],
        failure=[epb.RequestOp(request_range=epb.RangeRequest(key=b"z"))])
    assert eerr(p, epb, "KV", "Txn", bad, "TxnResponse", tok=APP) == D
    bad_cmp = epb.TxnRequest(compare=[epb.Compare(
        key=b"zz", target=epb.Compare.VERSION, result=epb.Compare.GREATER,
        version=0)])
    assert eerr(p, epb, "KV", "Txn", bad_cmp, "TxnResponse", tok=APP) == D
    # admin calls: an rw token without prefixes
    comp = epb.CompactionRequest(revision=1)
    assert eerr(p, epb, "KV", "Compact", comp, "CompactionResponse",
                tok=APP) == D
    assert eerr(p, epb, "KV", "Compact", comp, "CompactionResponse",
                tok=READER) == D
    ecall(p, epb, "KV", "Compact", comp, "CompactionResponse", ADMIN)
    assert eerr(p, epb, "Cluster", "MemberList", epb.MemberListRequest(),
                "MemberListResponse") == U
    ecall(p, epb, "Cluster", "MemberList", epb.MemberListRequest(),
          "MemberListResponse", APPRO)
    assert eerr(p, epb, "Maintenance", "HashKV", epb.HashKVRequest(),
                "HashKVResponse", tok=APP) == D
    # leases and watches: an rw token without prefixes (a lease may hold
    # any key; a watch is not checked against prefixes), as on the gateway
    grant = epb.LeaseGrantRequest(TTL=30)
    assert eerr(p, epb, "Lease", "LeaseGrant", grant, "LeaseGrantResponse",
                tok=APP) == D
    assert eerr(p, epb, "Lease", "LeaseGrant", grant,
                "LeaseGrantResponse") == U
    lid = ecall(p, epb, "Lease", "LeaseGrant", grant, "LeaseGrantResponse",
                ADMIN).ID
    assert eerr(p, epb, "Lease", "LeaseRevoke", epb.LeaseRevokeRequest(
        ID=lid), "LeaseRevokeResponse", tok=READER) == D

    def stream(svc, method, req, resp, tok):
        ch = grpc.insecure_channel(f"127.0.0.1:{p}")
        try:
            f = ch.stream_stream(
                f"/etcdserverpb.{svc}/{method}",
                request_serializer=type(req).SerializeToString,
                response_deserializer=getattr(epb, resp).FromString)
            it = f(iter([req]), metadata=md(tok), timeout=10)
            try:
                return next(it)
            except grpc.RpcError as e:
                return e.code()
        finally:
            ch.close()
    watch = epb.WatchRequest(create_request=epb.WatchCreateRequest(
        key=b"other/k"))
    assert stream("Watch", "Watch", watch, "WatchResponse", APP) == D
    assert stream("Watch", "Watch", watch, "WatchResponse", ADMIN).created
    ka = epb.LeaseKeepAliveRequest(ID=lid)
    assert stream("Lease", "LeaseKeepAlive", ka, "LeaseKeepAliveResponse",
                  APP) == D
    assert stream("Lease", "LeaseKeepAlive", ka, "LeaseKeepAliveResponse",
                  ADMIN).TTL == 30


def test_etcdctl_user(node):
    """etcdctl --user NAME:TOKEN: Authenticate hands the token back and
    etcdctl sends it as "token" metadata, checked like a bearer token."""
    from test_etcd import ETCDCTL, ctl
    if ETCDCTL is None:
        pytest.skip("etcdctl is not installed")
    p = node.grpc_port
    ctl(p, "--user", f"app:{APP}", "put", "app/ctl", "v")
    _, out, _ = ctl(p, "--user", f"appro:{APPRO}", "get", "app/ctl")
    assert out.split() == ["app/ctl", "v"]
    rc, _, err = ctl(p, "--user", f"app:{APP}", "put", "zz", "v",
                     check=False)
    assert rc != 0 and "outside its prefixes" in err, err
    rc, _, err = ctl(p, "--user", f"appro:{APPRO}", "put", "app/ctl", "w",
                     check=False)
    assert rc != 0 and "read-only" in err, err
    # a name that is not the token's, and no token at all
    rc, _, err = ctl(p, "--user", f"reader:{APP}", "get", "app/ctl",
                     check=False)
    assert rc != 0 and "authentication failed" in err, err
    rc, _, err = ctl(p, "get", "app/ctl", check=False)
    assert rc != 0 and "Missing bearer token" in err, err


# --- reload --------------------------------------------------------------------

def test_reload_tokens(node):
    assert curl(node, "GET", "/get?key=k", NEW)[0] == 401
    # add NEW, revoke APP
    write_tokens(node.token_file, TOKENS.replace(f"app    rw {APP}",
                                                 f"app    rw {NEW}"))
    node.signal(signal.SIGHUP)
    assert gh.wait_for(lambda: curl(node, "GET", "/get?key=app/k", NEW)[0]
                       == 404, timeout=10)
    assert curl(node, "GET", "/get?key=app/k", APP)[0] == 401
    # a bad file: logged with its line, the tokens in force stay
    write_tokens(node.token_file, f"ok rw {APP}\nbad rx {READER}\n")
    node.signal(signal.SIGHUP)
    assert gh.wait_for(lambda: f"{node.token_file}:2: rights must be ro or rw"
                       in node.read_log(), timeout=10)
    assert "the tokens in force stay" in node.read_log()
    assert curl(node, "GET", "/get?key=app/k", NEW)[0] == 404
    assert curl(node, "GET", "/get?key=app/k", APP)[0] == 401
    for t in (APP, READER, NEW):
        assert t not in node.read_log()


def test_bad_file_at_start(servers):
    s = servers("node1", start=False)
    path = os.path.join(s.dir, "tokens")
    write_tokens(path, f"a rw {APP}\nb rw short\n")
    s.conf["client-token-file"] = path
    s.write_conf()
    s.start(wait=False)
    assert s.wait_exit() != 0
    assert f"{path}:2: a token is 16 to 256 characters" in s.read_log()


# --- the CLI -------------------------------------------------------------------

def cli(*args, env=None):
    e = dict(os.environ)
    e.pop("PYAZDB_TOKEN", None)
    e.update(env or {})
    return subprocess.run([CLI, *args], capture_output=True, text=True,
                          timeout=30, env=e)


def test_cli_token(node, tmp_path):
    a = f"127.0.0.1:{node.grpc_port}"
    h = f"127.0.0.1:{node.http_port}"
    r = cli("--addr", a, "set", "app/c", "1")
    assert r.returncode == 1 and "Missing bearer token" in r.stderr
    r = cli("--addr", a, "--token", APP, "set", "app/c", "1")
    assert r.returncode == 0, r.stderr
    tf = tmp_path / "tok"
    tf.write_text(f"  {APPRO}  \n")
    r = cli("--addr", a, "--token-file", str(tf), "get", "app/c")
    assert r.returncode == 0 and r.stdout.strip() == "1", r.stderr
    r = cli("--addr", a, "set", "app/c", "2", env={"PYAZDB_TOKEN": APPRO})
    assert r.returncode == 1 and "read-only" in r.stderr
    # HTTP commands send it too
    r = cli("--http", h, "--token", APP, "list", "app/")
    assert r.returncode == 0 and "app/c" in r.stdout, r.stderr
    r = cli("--http", h, "list", "app/")
    assert r.returncode == 1


# --- forwarding ----------------------------------------------------------------

def test_forwarding_through_follower(servers, tmp_path):
    nodes = make_cluster(servers, start=False)
    path = str(tmp_path / "tokens")
    write_tokens(path, TOKENS)
    for s in nodes:
        s.conf["client-token-file"] = path
        s.write_conf()
        s.start(wait=False)
    for s in nodes:
        s.wait_ready()
    leader = leader_of(nodes)
    f = [s for s in nodes if s is not leader][0]
    assert curl(f, "POST", "/set", APP, {"key": "app/fw", "value": "1"}
                )[0] == 204
    assert curl(leader, "GET", "/get?key=app/fw", APP)[0] == 200
    assert curl(f, "POST", "/set", APP, {"key": "x", "value": "1"})[0] == 403
    assert curl(f, "POST", "/set", None, {"key": "app/x", "value": "1"}
                )[0] == 401
    # the leader trusts no claim of a check done elsewhere
    st, _, _ = curl(leader, "POST", "/set", None, {"key": "app/y",
                                                   "value": "1"},
                    headers=["X-Pyazdb-Forwarded: 1"])
    assert st == 401
    # etcd's leases through the follower's JSON gateway: the token goes
    # along to the leader, with a keep-alive's relayed request too
    st, body, _ = curl(f, "POST", "/v3/lease/grant", ADMIN, {"TTL": "30"})
    assert st == 200, body
    lid = json.loads(body)["ID"]
    st, body, _ = curl(f, "POST", "/v3/lease/keepalive", ADMIN, {"ID": lid})
    assert st == 200 and json.loads(body)["result"]["TTL"] == "30", body
    assert curl(f, "POST", "/v3/lease/keepalive", APP, {"ID": lid})[0] == 403
    # gRPC through the follower, with metadata
    c = gh.Client(f.grpc_port, gh.stubs(str(tmp_path)))
    try:
        kv = c.s.kv
        assert c.Set(kv.SetRequest(key="app/g", value="1"),
                     metadata=md(APP)).success
        code, _ = rpc_error(c.Set, kv.SetRequest(key="app/g", value="1"),
                            metadata=md(APPRO))
        assert code == grpc.StatusCode.PERMISSION_DENIED
    finally:
        c.close()
    assert curl(leader, "GET", "/get?key=app/g", APP)[0] == 200


def test_etcd_json_gateway_with_tokens(node):
    """etcd's JSON gateway (/v3/...) under client tokens: its KV routes
    take the token the gRPC calls take (the gateway passes it on), its
    lease and watch routes an rw token without prefixes."""
    import base64

    def b64(s):
        return base64.b64encode(s.encode()).decode()
    put = {"key": b64("app/g"), "value": b64("1")}
    st, body, head = curl(node, "POST", "/v3/kv/put", body=put)
    assert st == 401 and '"code":16' in body.replace(" ", ""), body
    assert curl(node, "POST", "/v3/kv/put", READER, put)[0] == 403
    assert curl(node, "POST", "/v3/kv/put", APP, put)[0] == 200
    outside = {"key": b64("other/g"), "value": b64("1")}
    assert curl(node, "POST", "/v3/kv/put", APP, outside)[0] == 403
    # a token far longer than any: unknown (the gateway's call carried it
    # whole and passed the gRPC header limit: 500)
    st, body, _ = curl(node, "POST", "/v3/kv/put", "x" * 16000, put)
    assert st == 401 and '"code":16' in body.replace(" ", ""), (st, body)
    st, body, _ = curl(node, "POST", "/v3/kv/range", APPRO,
                       {"key": b64("app/g")})
    assert st == 200 and json.loads(body)["kvs"][0]["value"] == b64("1")
    # leases and watches: an rw token without prefixes
    grant = {"TTL": "30"}
    assert curl(node, "POST", "/v3/lease/grant", body=grant)[0] == 401
    assert curl(node, "POST", "/v3/lease/grant", APP, grant)[0] == 403
    assert curl(node, "POST", "/v3/lease/grant", READER, grant)[0] == 403
    st, body, _ = curl(node, "POST", "/v3/lease/grant", ADMIN, grant)
    assert st == 200 and int(json.loads(body)["ID"]) > 0, body
    w = {"create_request": {"key": b64("app/g")}}
    assert curl(node, "POST", "/v3/watch", APP, w)[0] == 403
    st, body, _ = curl(node, "POST", "/v3/watch", ADMIN, w, stream=True)
    assert st == 200 and '"created":true' in body.replace(" ", ""), body
