"""etcd's v3 API on PyazDB's gRPC port, driven by clients no one here wrote:
Debian's etcdctl 3.4 (etcd-client, ETCDCTL_API=3) and python grpcio with
stubs generated from proto/etcd_rpc.proto, against a 3-node cluster (the
leader and a follower, which relays writes to the leader). When Debian's
etcd 3.4 (etcd-server) is installed, the same etcdctl commands also run
against a real one-member etcd started here, and the deterministic parts
of the outputs must be equal."""
import base64
import json
import os
import shutil
import signal
import subprocess
import time

import grpc
import pytest

from conftest import free_port, wait_for
from grpc_helpers import etcd_call as call, rpc_error
from test_cluster import leader_of, make_cluster

ETCDCTL = shutil.which("etcdctl")
ETCD = shutil.which("etcd")

pytestmark = pytest.mark.skipif(
    ETCDCTL is None, reason="etcdctl missing: scripts/install-deps.sh test "
    "installs etcd-client")


def ctl(port, *args, stdin=None, check=True, timeout=30):
    """etcdctl against one endpoint (a port), or several ("host:port,..."):
    (returncode, stdout, stderr)."""
    env = dict(os.environ, ETCDCTL_API="3")
    eps = port if isinstance(port, str) else f"127.0.0.1:{port}"
    p = subprocess.run([ETCDCTL, f"--endpoints={eps}",
                        "--command-timeout=10s", *args],
                       input=stdin.encode() if stdin is not None else None,
                       capture_output=True, env=env, timeout=timeout)
    out, err = p.stdout.decode(), p.stderr.decode()
    if check:
        assert p.returncode == 0, f"etcdctl {args}: {err}"
    return p.returncode, out, err


def last_json(out):
    """The JSON etcdctl printed (txn -i prints its prompts first)."""
    return json.loads(out[out.index("{"):] if out.lstrip().startswith(
        ("compares", "success", "failure")) else out)


def ctl_json(port, *args, stdin=None):
    return last_json(ctl(port, "-w", "json", *args, stdin=stdin)[1])


def ctl_error(port, *args):
    """The last line etcdctl prints for a failed command."""
    rc, out, err = ctl(port, *args, check=False)
    assert rc != 0, out
    return err.strip().splitlines()[-1]


def unb64(s):
    return base64.b64decode(s).decode()


def kvs_of(r):
    return [(unb64(kv["key"]), unb64(kv.get("value", "")))
            for kv in r.get("kvs", [])]


@pytest.fixture
def cluster(servers):
    nodes = make_cluster(servers)
    leader = leader_of(nodes)
    follower = next(s for s in nodes if s is not leader)
    return nodes, leader, follower


def test_put_get_options(cluster):
    nodes, leader, follower = cluster
    for s, port in ((leader, leader.grpc_port), (follower, follower.grpc_port)):
        assert ctl(port, "put", f"w/{s.name}", "1")[1] == "OK\n"
    p = follower.grpc_port  # writes relayed to the leader, reads local
    for k, v in (("a", "1"), ("a/b", "2"), ("a/c", "3"), ("b", "4")):
        assert ctl(p, "put", k, v)[1] == "OK\n"
    assert ctl(p, "get", "a", "--prefix")[1] == "a\n1\na/b\n2\na/c\n3\n"
    assert ctl(p, "get", "a/", "--prefix", "--keys-only")[1] == \
        "a/b\n\na/c\n\n"
    assert ctl(p, "get", "a/b", "--from-key", "--print-value-only")[1] == \
        "2\n3\n4\n1\n1\n"
    assert ctl(p, "get", "a", "b")[1] == "a\n1\na/b\n2\na/c\n3\n"
    assert ctl(p, "get", "a", "--prefix", "--sort-by", "VALUE", "--order",
               "DESCEND", "--print-value-only")[1] == "3\n2\n1\n"
    r = ctl_json(p, "get", "a", "--prefix", "--limit", "2")
    assert kvs_of(r) == [("a", "1"), ("a/b", "2")]
    assert r["more"] is True and r["count"] == 3
    st = leader.status()
    # etcd's numbers: the store's + 1 (an empty store is at etcd's 1)
    assert r["header"]["revision"] == st["revision"] + 1 == 7
    assert r["header"]["raft_term"] == st["term"]
    kv = r["kvs"][1]
    assert kv["create_revision"] == kv["mod_revision"] == 5
    assert kv["version"] == 1
    # a second put: version and mod_revision move, create_revision stays
    ctl(p, "put", "a/b", "22")
    kv = ctl_json(p, "get", "a/b")["kvs"][0]
    assert (kv["create_revision"], kv["mod_revision"], kv["version"]) == \
        (5, 8, 2)
    # serializable reads on every node see it once applied there
    for s in nodes:
        deadline = time.time() + 10
        while kvs_of(ctl_json(s.grpc_port, "get", "a/b", "--consistency",
                              "s")) != [("a/b", "22")]:
            assert time.time() < deadline
            time.sleep(0.05)
    # the whole key space, as etcdctl writes it ("" --prefix)
    r = ctl_json(p, "get", "", "--prefix", "--keys-only")
    assert [k for k, _ in kvs_of(r)] == ["a", "a/b", "a/c", "b"] + sorted(
        [f"w/{leader.name}", f"w/{follower.name}"])
    assert r["count"] == 6
    # --rev: only the current revision exists
    assert ctl(p, "get", "a", "--rev", "8")[1] == "a\n1\n"
    assert ctl_error(p, "get", "a", "--rev", "3") == \
        "Error: etcdserver: mvcc: required revision has been compacted"
    assert ctl_error(p, "get", "a", "--rev", "100") == \
        "Error: etcdserver: mvcc: required revision is a future revision"
    assert ctl_error(p, "put", "", "x") == \
        "Error: etcdserver: key is not provided"
    # prev-kv on put
    r = ctl_json(p, "put", "b", "5", "--prev-kv")
    assert unb64(r["prev_kv"]["value"]) == "4"


def test_del(cluster):
    nodes, leader, follower = cluster
    p = follower.grpc_port
    for k in ("x/1", "x/2", "x/3", "y"):
        ctl(p, "put", k, k.upper())
    assert ctl(p, "del", "nothing")[1] == "0\n"
    assert ctl(p, "del", "y")[1] == "1\n"
    assert ctl(p, "del", "x/", "--prefix", "--prev-kv")[1] == \
        "3\nx/1\nX/1\nx/2\nX/2\nx/3\nX/3\n"
    assert ctl(leader.grpc_port, "get", "", "--prefix")[1] == ""
    ctl(p, "put", "m", "1")
    ctl(p, "put", "n", "2")
    r = ctl_json(p, "del", "m", "--from-key")
    assert r["deleted"] == 2
    assert r["header"]["revision"] == leader.status()["revision"] + 1


TXN_OK = """value("k") = "v1"
version("k") = "1"
mod("k") > "0"
create("k") < "1000"

put k v2
get k

put k never

"""

TXN_FAIL = """value("k") = "nope"

put k never

put other o
get k
del gone

"""


def test_txn(cluster):
    nodes, leader, follower = cluster
    p = follower.grpc_port
    ctl(p, "put", "k", "v1")
    ctl(p, "put", "gone", "g")
    out = ctl(p, "txn", "-i", stdin=TXN_OK)[1]
    assert out.endswith("SUCCESS\n\nOK\n\nk\nv2\n"), out
    r = ctl_json(p, "txn", "-i", stdin=TXN_FAIL)
    assert "succeeded" not in r  # false: omitted by the JSON printer
    resps = [list(x["Response"].keys())[0] for x in r["responses"]]
    assert resps == ["ResponsePut", "ResponseRange", "ResponseDeleteRange"]
    rng = r["responses"][1]["Response"]["ResponseRange"]
    assert kvs_of(rng) == [("k", "v2")] and rng["count"] == 1
    assert r["responses"][2]["Response"]["ResponseDeleteRange"]["deleted"] \
        == 1
    assert ctl(leader.grpc_port, "get", "other")[1] == "other\no\n"
    # a key that does not exist: create = 0
    out = ctl(p, "txn", "-i", stdin='create("new") = "0"\n\nput new 1\n\n'
              '\n')[1]
    assert out.endswith("SUCCESS\n\nOK\n")
    rc, out, err = ctl(p, "txn", "-i", check=False,
                       stdin='\n\nput d 1\nput d 2\n\n\n')
    assert rc != 0 and err.strip().splitlines()[-1] == \
        "Error: etcdserver: duplicate key given in txn request"


def txn_range_counts(port, pb):
    """The count of each range of a few txns over the ten keys c/0 ... c/9
    (read-only ones, answered by the node that got them, and one that
    writes c/new first, applied through the log), next to the count of the
    same range asked by a plain Range (None for the txn that wrote)."""
    out = []
    r = ctl_json(port, "txn", stdin="\nget c/ --prefix --limit 3\n\n\n")
    rng = r["responses"][0]["Response"]["ResponseRange"]
    assert len(rng["kvs"]) == 3 and rng["more"] is True
    out.append((rng["count"], None))
    r = ctl_json(port, "txn", stdin="\nput c/new n\n"
                 "get c/ --prefix --limit 2 --keys-only\n\n\n")
    rng = r["responses"][1]["Response"]["ResponseRange"]
    assert len(rng["kvs"]) == 2 and rng["more"] is True
    out.append((rng["count"], None))
    ctl(port, "del", "c/new")
    rev = call(port, pb, "KV", "Range", pb.RangeRequest(key=b"c/0")) \
        .kvs[0].mod_revision
    for q in (pb.RangeRequest(key=b"c/", range_end=b"c0", limit=1),
              pb.RangeRequest(key=b"c/", range_end=b"c0", limit=9),
              pb.RangeRequest(key=b"c/", range_end=b"c0", limit=10),
              pb.RangeRequest(key=b"c/", range_end=b"\0", limit=2),
              pb.RangeRequest(key=b"c/", range_end=b"c0", limit=2,
                              sort_order=pb.RangeRequest.DESCEND),
              pb.RangeRequest(key=b"c/", range_end=b"c0", limit=2,
                              sort_target=pb.RangeRequest.MOD),
              pb.RangeRequest(key=b"c/", range_end=b"c0", limit=2,
                              min_mod_revision=rev + 5),
              pb.RangeRequest(key=b"c/", range_end=b"c0", limit=2,
                              count_only=True)):
        t = call(port, pb, "KV", "Txn", pb.TxnRequest(
            success=[pb.RequestOp(request_range=q)]))
        plain = call(port, pb, "KV", "Range", q)
        got = t.responses[0].response_range
        assert [kv.key for kv in got.kvs] == [kv.key for kv in plain.kvs]
        assert got.more == plain.more, q
        out.append((got.count, plain.count))
    return out


# Every key of the range, however small the limit (the plain Range's
# count); keys past c0 with range_end "\0": c/0 ... c/9 and d.
TXN_COUNTS = [(10, None), (11, None), (10, 10), (10, 10), (10, 10), (11, 11),
              (10, 10), (10, 10), (10, 10), (10, 10)]


def test_txn_range_count_is_the_whole_range(cluster, epb):
    # A txn's range with a limit counts every key of its range, as etcd's
    # and as a plain Range: once it counted only the keys its walk visited,
    # at most limit + 1.
    nodes, leader, follower = cluster
    for i in range(10):
        ctl(leader.grpc_port, "put", f"c/{i}", str(i))
    ctl(leader.grpc_port, "put", "d", "x")
    for port in (follower.grpc_port, leader.grpc_port):
        assert txn_range_counts(port, epb) == TXN_COUNTS


def test_txn_range_count_same_as_etcd(etcd, epb):
    for i in range(10):
        ctl(etcd, "put", f"c/{i}", str(i))
    ctl(etcd, "put", "d", "x")
    assert txn_range_counts(etcd, epb) == TXN_COUNTS


def test_cluster_calls(cluster):
    nodes, leader, follower = cluster
    p = follower.grpc_port
    # A founding member's client address is known once this follower has
    # dialed it (the other follower: within a second or so).
    def listed():
        r = ctl_json(p, "member", "list")
        return r if all("clientURLs" in m for m in r["members"]) else None
    r = wait_for(listed, "every member's clientURLs")
    st = leader.status()
    by_name = {m["name"]: m for m in r["members"]}
    assert sorted(by_name) == ["node1", "node2", "node3"]
    for s in nodes:
        m = by_name[s.name]
        assert m["peerURLs"] == [f"http://127.0.0.1:{s.raft_port}"]
        assert m["clientURLs"] == [f"http://127.0.0.1:{s.grpc_port}"]
        assert "isLearner" not in m
    ids = {m["ID"] for m in r["members"]}
    assert len(ids) == 3
    simple = ctl(p, "member", "list")[1]
    assert len(simple.splitlines()) == 3 and "started, node1" in simple
    # endpoint status on every node: one cluster, one leader, real terms
    eps = ",".join(f"127.0.0.1:{s.grpc_port}" for s in nodes)
    out = json.loads(ctl(eps, "endpoint", "status",
                         "-w", "json")[1])
    assert len(out) == 3
    leader_ids = {e["Status"]["leader"] for e in out}
    assert len(leader_ids) == 1 and leader_ids <= ids
    assert len({e["Status"]["header"]["cluster_id"] for e in out}) == 1
    assert {e["Status"]["header"]["member_id"] for e in out} == ids
    for e in out:
        s = e["Status"]
        assert s["version"] == "3.4.0" and s["dbSize"] > 0
        assert s["raftTerm"] == st["term"] and s["raftIndex"] >= 1
    leader_id = leader_ids.pop()
    assert by_name[leader.name]["ID"] == leader_id
    health = ctl(eps, "endpoint", "health")
    assert health[2].count("is healthy") == 3, health
    health = json.loads(ctl(eps, "endpoint", "health", "-w", "json")[1])
    assert sorted(h["endpoint"] for h in health) == sorted(eps.split(","))
    assert all(h["health"] for h in health)
    ctl(p, "put", "h", "1")
    deadline = time.time() + 10
    while True:  # equal once every node applied the put
        hk = json.loads(ctl(eps, "endpoint", "hashkv", "-w", "json")[1])
        hashes = {e["HashKV"].get("hash", 0) for e in hk}
        if len(hashes) == 1:
            break
        assert time.time() < deadline, hk
        time.sleep(0.05)
    assert hashes != {0}
    assert ctl(p, "alarm", "list")[1] == ""
    assert "Finished defragmenting" in ctl(p, "defrag")[1]
    # move-leader: etcdctl asks the endpoints which one leads
    target = follower
    out = ctl(eps, "move-leader",
              f"{by_name[target.name]['ID']:x}")[1]
    assert "Leadership transferred" in out, out
    assert leader_of(nodes).name == target.name
    # removal through a node that is no longer the leader (relayed)
    old = leader
    gone = next(s for s in nodes if s is not target and s is not old)
    out = ctl(old.grpc_port, "member", "remove",
              f"{by_name[gone.name]['ID']:x}")[1]
    assert "removed from cluster" in out
    r = ctl_json(target.grpc_port, "member", "list")
    assert sorted(m["name"] for m in r["members"]) == sorted(
        [target.name, old.name])
    assert "etcdserver: member not found" in ctl_error(
        target.grpc_port, "member", "remove", "abc")
    assert "PyazDB adds members itself" in ctl_error(
        target.grpc_port, "member", "add", "x",
        "--peer-urls=http://127.0.0.1:1")


def test_cluster_token_guards_admin_calls(servers, epb, tmp_path):
    # With a cluster-token, the calls whose HTTP routes need it need it on
    # gRPC too: etcdctl sends it with --user root:TOKEN (Authenticate, then
    # "token" metadata), other clients as "authorization: Bearer TOKEN".
    tok = "etcd-admin-token"
    nodes = make_cluster(servers, conf={"cluster-token": tok})
    leader = leader_of(nodes)
    follower = next(s for s in nodes if s is not leader)
    p = follower.grpc_port
    ids = {m["name"]: m["ID"] for m in ctl_json(p, "member", "list")["members"]}
    ctl(p, "put", "k", "v")  # data calls need no token
    snap = str(tmp_path / "s.db")
    need = "this call needs the cluster-token"
    err = ctl(p, "snapshot", "save", snap, check=False)[2]
    assert need in err and not os.path.exists(snap), err
    gone = next(s for s in nodes if s is not leader and s is not follower)
    for args in (("member", "remove", f"{ids[gone.name]:x}"),
                 ("move-leader", f"{ids[follower.name]:x}")):
        eps = ",".join(f"127.0.0.1:{s.grpc_port}" for s in nodes)
        assert need in ctl_error(eps, *args)
    assert len(ctl_json(p, "member", "list")["members"]) == 3
    assert leader_of(nodes).name == leader.name
    assert "invalid user ID or password" in ctl_error(
        p, "--user", "root:wrong", "get", "k")
    assert "invalid user ID or password" in ctl_error(
        p, "--user", f"admin:{tok}", "get", "k")
    # gRPC metadata: a wrong bearer token, then the right one
    req = epb.MemberPromoteRequest(ID=ids[gone.name])
    with pytest.raises(grpc.RpcError) as e:
        call(p, epb, "Cluster", "MemberPromote", req,
             metadata=[("authorization", "Bearer nope")])
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as e:
        call(p, epb, "Cluster", "MemberPromote", req,
             metadata=[("authorization", f"Bearer {tok}")])
    # past the token check: etcd's answer for a voter
    assert e.value.code() != grpc.StatusCode.UNAUTHENTICATED, \
        e.value.details()
    # etcdctl with the token: snapshot, and a removal relayed by a follower
    out = ctl(p, "--user", f"root:{tok}", "snapshot", "save", snap)[1]
    assert "Snapshot saved" in out and os.path.getsize(snap) > 0
    out = ctl(p, "--user", f"root:{tok}", "member", "remove",
              f"{ids[gone.name]:x}")[1]
    assert "removed from cluster" in out, out
    assert len(ctl_json(p, "member", "list")["members"]) == 2


def test_user_flag_without_cluster_token(cluster):
    # No cluster-token: Authenticate says "not enabled" and etcdctl goes
    # on without a token, as with an etcd whose auth is off.
    nodes, leader, follower = cluster
    assert ctl(follower.grpc_port, "--user", "root:x", "put", "u", "1")[1] \
        == "OK\n"


# --- the same commands against etcd 3.4 -------------------------------------

# Commands whose output (stdout, or the last stderr line on failure) must
# be the same on both; "@REV" is replaced by a revision relative to the
# store's first (1 on both: the etcd API counts as etcd does), "@cur"
# by the current one. A past revision is left out: etcd answers it from
# its history, PyazDB keeps none (test_put_get_options checks its error).
SCRIPT = [
    ["put", "a", "1"], ["put", "a/b", "2"], ["put", "a/c", "3"],
    ["put", "b", "4"], ["put", "a/b", "22"],
    ["get", "a", "--prefix"], ["get", "a", "--from-key"],
    ["get", "", "--prefix", "--limit", "2"],
    ["get", "a", "--prefix", "--sort-by", "VALUE", "--order", "DESCEND"],
    ["get", "a", "--prefix", "--sort-by", "MODIFY"],
    ["get", "a", "--prefix", "--sort-by", "VERSION", "--order", "DESCEND"],
    ["get", "a", "--prefix", "--keys-only"],
    ["get", "a", "--prefix", "--print-value-only"],
    ["get", "a", "z"], ["get", "z", "a"], ["get", "nothing"],
    ["get", "a", "--rev", "@cur"],
    ["get", "a", "--rev", "@100"],
    ["put", "b", "5", "--prev-kv"],
    ["put", "", "x"],
    ["txn", "-i", TXN_FAIL], ["txn", "-i", TXN_OK],
    ["put", "k", "v1"], ["txn", "-i", TXN_OK], ["txn", "-i", TXN_FAIL],
    ["txn", "-i", "\n\nput d 1\nput d 2\n\n\n"],
    ["txn", "-i", 'value("a") > "0"\nversion("a/b") = "2"\n\n'
     "get a --prefix\n\nget b\n\n"],
    ["del", "a/", "--prefix", "--prev-kv"], ["del", "zz"],
    ["del", "b", "--from-key"],
    ["get", "", "--prefix"],
    ["compaction", "@100"],
]

JSON_SCRIPT = [
    ["put", "j1", "1"], ["put", "j2", "2"], ["put", "j1", "11"],
    ["get", "j", "--prefix"], ["get", "j", "--prefix", "--limit", "1"],
    ["get", "j1"], ["put", "j2", "22", "--prev-kv"],
    ["del", "j", "--prefix", "--prev-kv"],
    ["txn", "-i", 'version("j1") = "0"\n\nput j3 3\nget j3\n\nget j1\n\n'],
]


def run_script(port, base, script, json_out=False):
    out = []
    for cmd in script:
        orig = cmd = list(cmd)
        stdin = None
        if cmd[0] == "txn":
            stdin = cmd.pop()
        cur = base_revision(port) if "@cur" in cmd else 0
        cmd = [str(cur) if c == "@cur" else
               str(base + int(c[1:])) if c.startswith("@") else c
               for c in cmd]
        if json_out:
            cmd = ["-w", "json"] + cmd
        rc, o, e = ctl(port, *cmd, stdin=stdin, check=False)
        if json_out and rc == 0:
            o = normalize(last_json(o), base)
        out.append((orig, rc, o if rc == 0 else e.strip().splitlines()[-1]))
    return out


def normalize(r, base):
    """Drop what differs between any two clusters (ids, terms) and make
    revisions relative to the store's first."""
    if isinstance(r, dict):
        o = {}
        for k, v in r.items():
            if k in ("cluster_id", "member_id", "raft_term"):
                continue
            if k in ("revision", "create_revision", "mod_revision"):
                v = v - base
            o[k] = normalize(v, base)
        return o
    if isinstance(r, list):
        return [normalize(x, base) for x in r]
    return r


@pytest.fixture
def etcd(tmp_path):
    if ETCD is None:
        pytest.skip("etcd-server (etcd 3.4) is not installed")
    client, peer = free_port(), free_port()
    log = open(tmp_path / "etcd.log", "wb")
    p = subprocess.Popen(
        [ETCD, "--name", "e1", "--data-dir", str(tmp_path / "etcd"),
         "--listen-client-urls", f"http://127.0.0.1:{client}",
         "--advertise-client-urls", f"http://127.0.0.1:{client}",
         "--listen-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-cluster", f"e1=http://127.0.0.1:{peer}"],
        stdout=log, stderr=log)
    try:
        deadline = time.time() + 20
        while ctl(client, "endpoint", "health", check=False)[0] != 0:
            assert p.poll() is None, (tmp_path / "etcd.log").read_text()
            assert time.time() < deadline, "etcd did not start"
            time.sleep(0.1)
        yield client
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        log.close()


def base_revision(port):
    return ctl_json(port, "get", "anything")["header"].get("revision", 0)


@pytest.mark.parametrize("json_out", [False, True], ids=["simple", "json"])
def test_same_output_as_etcd(cluster, etcd, json_out):
    nodes, leader, follower = cluster
    ours, theirs = follower.grpc_port, etcd
    script = JSON_SCRIPT if json_out else SCRIPT
    # both fresh: the same revision, etcd's empty store's
    assert base_revision(ours) == base_revision(theirs) == 1
    a = run_script(ours, base_revision(ours), script, json_out)
    b = run_script(theirs, base_revision(theirs), script, json_out)
    for x, y in zip(a, b):
        assert x == y


# --- python grpcio: headers and error codes -----------------------------------

def test_grpc_headers_and_errors(cluster, epb):
    nodes, leader, follower = cluster
    pb = epb
    fp, lp = follower.grpc_port, leader.grpc_port
    r = call(fp, pb, "KV", "Put", pb.PutRequest(key=b"h", value=b"1"))
    st = leader.status()
    ml = call(lp, pb, "Cluster", "MemberList", pb.MemberListRequest())
    ids = {m.name: m.ID for m in ml.members}
    # a relayed write is answered by the leader
    assert r.header.member_id == ids[leader.name]
    assert r.header.revision == st["revision"] + 1 == 2  # etcd's numbers
    assert r.header.raft_term == st["term"]
    assert r.header.cluster_id != 0
    g = call(fp, pb, "KV", "Range", pb.RangeRequest(key=b"h"))
    assert g.header.member_id == ids[follower.name]
    assert g.header.cluster_id == r.header.cluster_id
    assert g.header.revision == 2 and g.count == 1
    # filters: mod and create revision bounds
    call(fp, pb, "KV", "Put", pb.PutRequest(key=b"h2", value=b"2"))
    call(fp, pb, "KV", "Put", pb.PutRequest(key=b"h", value=b"3"))
    q = pb.RangeRequest(key=b"h", range_end=b"i", min_mod_revision=4)
    g = call(fp, pb, "KV", "Range", q)
    assert [kv.key for kv in g.kvs] == [b"h"] and g.count == 2
    q = pb.RangeRequest(key=b"h", range_end=b"i", max_create_revision=2)
    assert [kv.key for kv in call(fp, pb, "KV", "Range", q).kvs] == [b"h"]
    q = pb.RangeRequest(key=b"h", range_end=b"i", count_only=True)
    g = call(fp, pb, "KV", "Range", q)
    assert g.count == 2 and len(g.kvs) == 0
    # a negative bound counts, as etcd's: a maximum below 1 keeps nothing
    q = pb.RangeRequest(key=b"h", range_end=b"i", max_mod_revision=-1)
    g = call(fp, pb, "KV", "Range", q)
    assert len(g.kvs) == 0 and g.count == 2
    q = pb.RangeRequest(key=b"h", range_end=b"i", min_mod_revision=-1)
    assert len(call(fp, pb, "KV", "Range", q).kvs) == 2
    q = pb.RangeRequest(key=b"h", range_end=b"i",
                        sort_target=pb.RangeRequest.CREATE,
                        sort_order=pb.RangeRequest.DESCEND, limit=1)
    g = call(fp, pb, "KV", "Range", q)
    assert [kv.key for kv in g.kvs] == [b"h2"] and g.more
    # ignore_value / ignore_lease keep the stored value and lease
    r = call(fp, pb, "KV", "Put", pb.PutRequest(key=b"h", ignore_value=True,
                                                 prev_kv=True))
    assert r.prev_kv.value == b"3"
    g = call(lp, pb, "KV", "Range", pb.RangeRequest(key=b"h"))
    assert g.kvs[0].value == b"3" and g.kvs[0].version == 3
    r = call(lp, pb, "KV", "Put", pb.PutRequest(key=b"h", value=b"4",
                                                 ignore_lease=True))
    assert call(lp, pb, "KV", "Range", pb.RangeRequest(key=b"h")).kvs[0] \
        .value == b"4"

    # a txn's range operations: sort, limit, keys_only, count_only, filters
    rq = pb.RangeRequest(key=b"h", range_end=b"i",
                         sort_target=pb.RangeRequest.VALUE,
                         sort_order=pb.RangeRequest.DESCEND, limit=1,
                         keys_only=True)
    cq = pb.RangeRequest(key=b"h", range_end=b"i", count_only=True)
    fq = pb.RangeRequest(key=b"h", range_end=b"i", min_create_revision=3)
    t = call(fp, pb, "KV", "Txn", pb.TxnRequest(
        compare=[pb.Compare(key=b"h", target=pb.Compare.VALUE,
                            result=pb.Compare.EQUAL, value=b"4")],
        success=[pb.RequestOp(request_range=rq),
                 pb.RequestOp(request_range=cq),
                 pb.RequestOp(request_range=fq)]))
    # a txn that only reads is answered by the node that got it (as etcd)
    assert t.succeeded and t.header.member_id == ids[follower.name]
    r0, r1, r2 = (x.response_range for x in t.responses)
    assert [(kv.key, kv.value) for kv in r0.kvs] == [(b"h", b"")]
    assert r0.more and r0.count == 2
    assert len(r1.kvs) == 0 and r1.count == 2
    assert [kv.key for kv in r2.kvs] == [b"h2"] and r2.count == 2
    # keys_only sorted on values whose order is not the keys' (the store
    # once dropped the values before the sort)
    for k, v in ((b"s/a", b"3"), (b"s/b", b"1"), (b"s/c", b"2")):
        call(lp, pb, "KV", "Put", pb.PutRequest(key=k, value=v))
    for order, limit, want in ((pb.RangeRequest.DESCEND, 0,
                                [b"s/a", b"s/c", b"s/b"]),
                               (pb.RangeRequest.NONE, 1, [b"s/b"])):
        rq = pb.RangeRequest(key=b"s/", range_end=b"s0", keys_only=True,
                             sort_target=pb.RangeRequest.VALUE,
                             sort_order=order, limit=limit)
        t = call(fp, pb, "KV", "Txn", pb.TxnRequest(
            success=[pb.RequestOp(request_range=rq)]))
        got = t.responses[0].response_range
        assert [kv.key for kv in got.kvs] == want, (order, limit)
        assert all(kv.value == b"" for kv in got.kvs)
        plain = call(fp, pb, "KV", "Range", rq)
        assert [kv.key for kv in plain.kvs] == want

    def err(port, svc, method, req):
        code, details = rpc_error(call, port, pb, svc, method, req)
        return code, details

    C = grpc.StatusCode
    assert err(fp, "KV", "Range", pb.RangeRequest()) == \
        (C.INVALID_ARGUMENT, "etcdserver: key is not provided")
    assert err(fp, "KV", "Range", pb.RangeRequest(key=b"h", revision=1)) == \
        (C.OUT_OF_RANGE,
         "etcdserver: mvcc: required revision has been compacted")
    assert err(fp, "KV", "Put", pb.PutRequest(key=b"zz", ignore_value=True)) \
        == (C.INVALID_ARGUMENT, "etcdserver: key not found")
    assert err(fp, "KV", "Put", pb.PutRequest(key=b"h", value=b"x",
                                              ignore_value=True)) == \
        (C.INVALID_ARGUMENT, "etcdserver: value is provided")
    assert err(fp, "KV", "Put", pb.PutRequest(key=b"h", lease=-1)) == \
        (C.NOT_FOUND, "etcdserver: requested lease not found")
    put = pb.RequestOp(request_put=pb.PutRequest(key=b"t", value=b"1"))
    many = pb.TxnRequest(success=[put] * 129)
    assert err(fp, "KV", "Txn", many) == \
        (C.INVALID_ARGUMENT, "etcdserver: too many operations in txn request")
    dup = pb.TxnRequest(success=[put, pb.RequestOp(
        request_delete_range=pb.DeleteRangeRequest(key=b"s", range_end=b"u"))])
    assert err(fp, "KV", "Txn", dup) == \
        (C.INVALID_ARGUMENT, "etcdserver: duplicate key given in txn request")
    nested = pb.TxnRequest(success=[pb.RequestOp(
        request_txn=pb.TxnRequest())])
    code, details = err(fp, "KV", "Txn", nested)
    assert code == C.UNIMPLEMENTED and "nested" in details
    cmp = pb.Compare(key=b"a", range_end=b"b", target=pb.Compare.VERSION)
    code, details = err(fp, "KV", "Txn", pb.TxnRequest(compare=[cmp]))
    assert code == C.UNIMPLEMENTED and "range_end" in details
    assert err(fp, "KV", "Compact", pb.CompactionRequest(revision=999)) == \
        (C.OUT_OF_RANGE,
         "etcdserver: mvcc: required revision is a future revision")
    r = call(fp, pb, "KV", "Compact", pb.CompactionRequest(revision=2))
    assert r.header.revision == leader.status()["revision"] + 1
    # Maintenance and Auth
    s = call(fp, pb, "Maintenance", "Status", pb.StatusRequest())
    assert s.leader == ids[leader.name] and s.header.member_id == \
        ids[follower.name] and not s.errors and not s.isLearner
    assert len(call(fp, pb, "Maintenance", "Alarm",
                    pb.AlarmRequest()).alarms) == 0
    h1 = call(fp, pb, "Maintenance", "HashKV", pb.HashKVRequest())
    h2 = call(lp, pb, "Maintenance", "HashKV", pb.HashKVRequest())
    if h1.header.revision == h2.header.revision:
        assert h1.hash == h2.hash
    a = call(fp, pb, "Auth", "AuthStatus", pb.AuthStatusRequest())
    assert not a.enabled and a.header.cluster_id == r.header.cluster_id
    code, details = err(fp, "Auth", "AuthEnable", pb.AuthEnableRequest())
    assert code == C.UNIMPLEMENTED and "authentication" in details
    assert err(fp, "Cluster", "MemberPromote",
               pb.MemberPromoteRequest(ID=ids[leader.name])) == \
        (C.FAILED_PRECONDITION,
         "etcdserver: can only promote a learner member")
    code, _ = err(fp, "Cluster", "MemberUpdate", pb.MemberUpdateRequest(ID=1))
    assert code == C.UNIMPLEMENTED


def test_no_leader(servers, epb):
    # two of three stopped: the survivor has no leader for writes
    nodes = make_cluster(servers)
    leader = leader_of(nodes)
    alone = next(s for s in nodes if s is not leader)
    for s in nodes:
        if s is not alone:
            s.proc.send_signal(signal.SIGSTOP)
    try:
        # (forwarded to the stopped leader, it waits for the call's
        # deadline: a short one)
        code, details = rpc_error(call, alone.grpc_port, epb, "KV", "Put",
                                  epb.PutRequest(key=b"x", value=b"1"),
                                  timeout=3)
        assert code in (grpc.StatusCode.UNAVAILABLE,
                        grpc.StatusCode.DEADLINE_EXCEEDED), details
        assert details.startswith("etcdserver: ") or \
            code == grpc.StatusCode.DEADLINE_EXCEEDED, details
        # a serializable read still answers from the local copy
        r = call(alone.grpc_port, epb, "KV", "Range",
                 epb.RangeRequest(key=b"x", serializable=True))
        assert r.count == 0
    finally:
        for s in nodes:
            if s is not alone:
                s.proc.send_signal(signal.SIGCONT)


def test_linearizable_read_waits_for_an_election(servers, epb):
    # A Range asked while no leader is known waits for the election, as
    # etcd does, instead of failing at once with "no leader".
    import threading
    nodes = make_cluster(servers)
    leader = leader_of(nodes)
    alone = next(s for s in nodes if s is not leader)
    call(leader.grpc_port, epb, "KV", "Put", epb.PutRequest(key=b"w", value=b"1"))
    others = [s for s in nodes if s is not alone]
    for s in others:
        s.proc.send_signal(signal.SIGSTOP)
    try:
        deadline = time.time() + 20
        while alone.status().get("leader"):
            assert time.time() < deadline, alone.status()
            time.sleep(0.1)
        got = {}

        def read():
            try:
                got["r"] = call(alone.grpc_port, epb, "KV", "Range",
                                epb.RangeRequest(key=b"w"))
            except grpc.RpcError as e:
                got["e"] = (e.code(), e.details())
        t = threading.Thread(target=read)
        t.start()
        time.sleep(0.5)
        # still waiting: neither failed with "no leader" nor answered
        # without a leader
        assert t.is_alive() and not got, got
    finally:
        for s in others:
            s.proc.send_signal(signal.SIGCONT)
    t.join(15)
    assert "r" in got, got
    assert [(kv.key, kv.value) for kv in got["r"].kvs] == [(b"w", b"1")]


def test_snapshot_save(cluster, servers, tmp_path):
    nodes, leader, follower = cluster
    p = follower.grpc_port
    ctl(p, "put", "big", "x" * 100000)
    ctl(p, "put", "small", "s")
    path = str(tmp_path / "snap.db")
    rc, out, err = ctl(p, "snapshot", "save", path)
    assert f"Snapshot saved at {path}" in out, err
    data = open(path, "rb").read()
    # etcd's framing, which etcdctl checked: 512-byte multiple + SHA-256
    import hashlib
    assert (len(data) - 32) % 512 == 0
    assert hashlib.sha256(data[:-32]).digest() == data[-32:]
    # inside: PyazDB's backup, which --restore takes once cut out
    end = data.rindex(b"PYAZEND\n") + 16
    assert data[end:-32] == b"\0" * (len(data) - 32 - end)
    backup = str(tmp_path / "backup.snap")
    open(backup, "wb").write(data[:end])
    # the README's recipe cuts the same bytes
    sh = subprocess.run(["sh", "-c", "end=$(grep -boa PYAZEND snap.db | "
                         "tail -1 | cut -d: -f1); head -c $((end + 16)) "
                         "snap.db"], cwd=str(tmp_path), capture_output=True)
    assert sh.stdout == data[:end]
    r = servers("restored", args=["--restore", backup])
    assert ctl(r.grpc_port, "get", "small")[1] == "small\ns\n"
    assert len(ctl(r.grpc_port, "get", "big", "--print-value-only")[1]) \
        == 100001


def test_leader_killed(cluster):
    # etcdctl through a follower keeps working once a new leader is elected
    nodes, leader, follower = cluster
    p = follower.grpc_port
    ctl(p, "put", "before", "1")
    leader.kill()
    deadline = time.time() + 30
    while True:
        rc, out, err = ctl(p, "put", "after", "2", check=False)
        if rc == 0:
            break
        last = err.strip().splitlines()[-1]
        assert "etcdserver: " in last or "context deadline" in last, last
        assert time.time() < deadline, err
        time.sleep(0.2)
    for s in nodes:
        if s is not leader:
            assert ctl(s.grpc_port, "get", "before", "--print-value-only")[1] \
                == "1\n"
            assert ctl(s.grpc_port, "get", "after", "--print-value-only")[1] \
                == "2\n"


def test_random_ops_same_as_etcd(cluster, etcd, epb):
    # The same seeded random Put, DeleteRange, Range and Txn requests (every
    # option PyazDB supports) against PyazDB (through a follower) and etcd:
    # the answers must be equal, ids and terms aside, revisions relative.
    import random
    from google.protobuf import json_format
    nodes, leader, follower = cluster
    pb = epb
    rnd = random.Random(int(os.environ.get("ETCD_RANDOM_SEED", "1405")))
    keys = [b"a", b"a/1", b"a/2", b"a/3", b"b", b"b/x", b"c", b"\xff"]

    def rkey():
        return rnd.choice(keys)

    def rend(k):
        return rnd.choice([b"", b"", b"\0", k + b"\xff", b"b", b"c", b"a/2"])

    def rrange():
        k = rkey()
        return pb.RangeRequest(
            key=k, range_end=rend(k), limit=rnd.choice([0, 0, 1, 2]),
            sort_order=rnd.randrange(3), sort_target=rnd.randrange(5),
            serializable=False, keys_only=rnd.random() < 0.2,
            count_only=rnd.random() < 0.1,
            min_mod_revision=rnd.choice([0, 0, 3]),
            max_create_revision=rnd.choice([0, 0, 20]))

    def rput():
        return pb.PutRequest(key=rkey(), value=str(rnd.randrange(100))
                             .encode(), prev_kv=rnd.random() < 0.5)

    def rdel():
        k = rkey()
        return pb.DeleteRangeRequest(key=k, range_end=rend(k),
                                     prev_kv=rnd.random() < 0.5)

    def rop(puts):
        c = rnd.randrange(3)
        if c == 0:
            return pb.RequestOp(request_range=rrange())
        if c == 1:
            p = rput()
            if p.key in puts and rnd.random() < 0.8:
                return pb.RequestOp(request_range=rrange())
            puts.add(p.key)  # sometimes twice: both must refuse it
            return pb.RequestOp(request_put=p)
        return pb.RequestOp(request_delete_range=rdel())

    def rcmp():
        t = rnd.randrange(4)  # VERSION, CREATE, MOD, VALUE (no lease)
        c = pb.Compare(key=rkey(), target=t, result=rnd.randrange(4))
        if t == pb.Compare.VALUE:
            c.value = str(rnd.randrange(100)).encode()
        elif t == pb.Compare.VERSION:
            c.version = rnd.randrange(4)
        elif t == pb.Compare.CREATE:
            c.create_revision = rnd.randrange(20)
        else:
            c.mod_revision = rnd.randrange(20)
        return c

    reqs = []
    for _ in range(300):
        c = rnd.randrange(10)
        if c < 4:
            reqs.append(("Put", rput()))
        elif c < 5:
            reqs.append(("DeleteRange", rdel()))
        elif c < 8:
            reqs.append(("Range", rrange()))
        else:
            sp, fp_ = set(), set()
            reqs.append(("Txn", pb.TxnRequest(
                compare=[rcmp() for _ in range(rnd.randrange(3))],
                success=[rop(sp) for _ in range(rnd.randrange(4))],
                failure=[rop(fp_) for _ in range(rnd.randrange(3))])))

    def run(port):
        base = call(port, pb, "KV", "Range",
                    pb.RangeRequest(key=b"x")).header.revision
        out = []
        for method, req in reqs:
            req = shift(req, base)
            try:
                r = call(port, pb, "KV", method, req)
                d = json_format.MessageToDict(r)
                out.append(normalize_pb(d, base))
            except grpc.RpcError as e:
                out.append((e.code(), e.details()))
        return out

    def shift(req, base):
        """Revisions in requests are relative to the store's first."""
        req = type(req).FromString(req.SerializeToString())
        rngs = [req] if isinstance(req, pb.RangeRequest) else []
        cmps = []
        if isinstance(req, pb.TxnRequest):
            cmps = list(req.compare)
            rngs = [o.request_range for o in list(req.success) +
                    list(req.failure) if o.HasField("request_range")]
        for r in rngs:
            for f in ("min_mod_revision", "max_create_revision"):
                if getattr(r, f):
                    setattr(r, f, getattr(r, f) + base)
        for c in cmps:
            for f in ("create_revision", "mod_revision"):
                if c.HasField(f) and getattr(c, f):
                    setattr(c, f, getattr(c, f) + base)
        return req

    ours, theirs = run(follower.grpc_port), run(etcd)
    for (method, req), a, b in zip(reqs, ours, theirs):
        assert a == b, (method, req)


def normalize_pb(d, base):
    if isinstance(d, dict):
        o = {}
        for k, v in d.items():
            if k in ("clusterId", "memberId", "raftTerm"):
                continue
            if k in ("revision", "createRevision", "modRevision"):
                v = int(v) - base
            if k == "header" and "revision" not in v:
                v = dict(v, revision="0")  # 0 is left out of the JSON
            o[k] = normalize_pb(v, base)
        return o
    if isinstance(d, list):
        return [normalize_pb(x, base) for x in d]
    return d


def test_ignore_value_put_on_a_leader_still_applying(servers, epb):
    # A leader applies what earlier terms committed after it is elected:
    # meanwhile a key written then is not in its copy yet. A put with
    # ignore_value on it must find it (its read is linearizable), where it
    # once answered `key not found`. Here a lone node restarted after a
    # crash elects itself at once, then replays a long log (many keys
    # loaded, then deleted in steps) up to the last entry, which wrote the
    # key: about a second in which the key looks missing.
    import socket
    from test_chunked_apply import load
    pb = epb
    s = servers(conf={"election-timeout": "300ms",
                      "heartbeat-interval": "50ms"})
    load(s, int(os.environ.get("PYAZDB_CHUNKED_KEYS", "400000")), "big/")
    call(s.grpc_port, pb, "KV", "DeleteRange",
         pb.DeleteRangeRequest(key=b"big/", range_end=b"big0"), timeout=60)
    call(s.grpc_port, pb, "KV", "Put", pb.PutRequest(key=b"k", value=b"v1"))
    s.kill()
    s.start(wait=False)

    def accepts():
        try:
            socket.create_connection(("127.0.0.1", s.grpc_port), 0.2).close()
            return True
        except OSError:
            return False
    wait_for(accepts, "the gRPC port", step=0.002)
    # The node's own copy lacks the key yet: the case under test.
    g = call(s.grpc_port, pb, "KV", "Range",
             pb.RangeRequest(key=b"k", serializable=True), timeout=30)
    assert g.count == 0
    r = call(s.grpc_port, pb, "KV", "Put",
             pb.PutRequest(key=b"k", ignore_value=True, prev_kv=True),
             timeout=30)
    assert r.prev_kv.value == b"v1" and r.prev_kv.version == 1
    g = call(s.grpc_port, pb, "KV", "Range", pb.RangeRequest(key=b"k"))
    assert g.kvs[0].value == b"v1" and g.kvs[0].version == 2
    # A key that is missing still is, after the same read.
    assert rpc_error(call, s.grpc_port, pb, "KV", "Put",
                     pb.PutRequest(key=b"nope", ignore_value=True)) == \
        (grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: key not found")


def test_sorted_limited_ranges_same_as_etcd(server, etcd, epb):
    # A Range sorted (or revision-filtered) and limited keeps only the
    # first `limit` views of its order as the walk goes, instead of all of
    # them sorted: its answer (kvs, count, more) must be etcd's for every
    # target, order, limit and filter, and the first `limit` of the same
    # range unlimited. Many fields are equal (keys written together, values
    # and versions alike): equals come in key order, as in etcd, whose sort
    # keeps the keys' order for at most 12 of them (Go's sort.Sort is an
    # insertion sort there, unstable past it) - so 12 keys here.
    from google.protobuf import json_format
    pb = epb
    R = pb.RangeRequest
    keys = [b"q/%02d" % i for i in range(12)]
    vals = [b"x", b"y", b"x", b"z", b"y", b"x"] * 2

    def load(port):
        base = call(port, pb, "KV", "Range", R(key=b"x")).header.revision
        call(port, pb, "KV", "Put", pb.PutRequest(key=b"p", value=b"a"))
        call(port, pb, "KV", "Txn", pb.TxnRequest(success=[
            pb.RequestOp(request_put=pb.PutRequest(key=k, value=v))
            for k, v in zip(keys[:6], vals[:6])]))
        for k, v in zip(keys[6:], vals[6:]):
            call(port, pb, "KV", "Put", pb.PutRequest(key=k, value=v))
        for k in (keys[3], keys[8], keys[3], keys[10]):
            call(port, pb, "KV", "Put", pb.PutRequest(key=k, value=b"y"))
        call(port, pb, "KV", "Put", pb.PutRequest(key=b"r", value=b"a"))
        return base

    def ask(port, base, req):
        r = call(port, pb, "KV", "Range", req)
        return normalize_pb(json_format.MessageToDict(r), base)

    # (min_mod_revision, max_create_revision), relative to the first one
    filters = [(0, 0), (4, 0), (0, 6), (5, 9)]
    reqs = []
    for target in range(5):
        for order in range(3):
            for limit in (0, 1, 2, 3, 6, 11, 12, 13):
                for fmin, fmax in filters:
                    reqs.append((target, order, limit, fmin, fmax))

    def run(port):
        base = load(port)
        out = []
        for target, order, limit, fmin, fmax in reqs:
            q = R(key=b"q/", range_end=b"q0", sort_target=target,
                  sort_order=order, limit=limit,
                  min_mod_revision=fmin and base + fmin,
                  max_create_revision=fmax and base + fmax)
            got = ask(port, base, q)
            # the same range in a Txn: the same keys, count and more
            t = call(port, pb, "KV", "Txn", pb.TxnRequest(
                success=[pb.RequestOp(request_range=q)]))
            tr = normalize_pb(json_format.MessageToDict(
                t.responses[0].response_range), base)
            for f in ("kvs", "count", "more"):
                assert tr.get(f) == got.get(f), (q, f)
            if order != R.NONE or fmin or fmax or target == R.KEY:
                # not etcd's "limit first, then sort" case: the first
                # `limit` of the whole answer
                q.limit = 0
                whole = ask(port, base, q)
                kvs = whole.get("kvs", [])
                want = kvs[:limit] if limit else kvs
                assert got.get("kvs", []) == want, q
                assert got.get("more", False) == \
                    (0 < limit < len(kvs)), q
                assert got["count"] == whole["count"] == "12", q
            out.append(got)
        return out

    ours, theirs = run(server.grpc_port), run(etcd)
    for req, a, b in zip(reqs, ours, theirs):
        assert a == b, req


def test_txn_sorted_limited_ranges_past_max_message(servers, epb):
    # A Txn's range sorted (or revision-filtered) with a limit is answered
    # as the plain Range of the same request, however large its range.
    # Once every key of such a range was copied out to be sorted after,
    # and past grpc-max-message of keys and values the Txn failed with
    # RESOURCE_EXHAUSTED (`the txn response is larger than
    # grpc-max-message: use a limit`, or with a write in the same Txn, `the
    # write was applied at revision N, but its response is larger than
    # grpc-max-message`) although its answer was one key: etcd's lock and
    # election recipes and STM ask that (the oldest key under a prefix).
    # 240 keys of 1000 bytes here, past a grpc-max-message of 64 kB.
    pb = epb
    R = pb.RangeRequest
    nodes = make_cluster(servers, conf={
        "grpc-max-message": "64kb", "max-key-size": "1kb",
        "max-value-size": "32kb"})
    leader = leader_of(nodes)
    follower = next(s for s in nodes if s is not leader)
    p = leader.grpc_port
    base = call(p, pb, "KV", "Range", R(key=b"x")).header.revision
    n = 240
    for i in range(0, n, 20):  # created out of key order, 20 a revision
        call(p, pb, "KV", "Txn", pb.TxnRequest(success=[
            pb.RequestOp(request_put=pb.PutRequest(
                key=b"s/%03d" % ((j * 7) % n),
                value=(b"%04d" % ((j * 13) % 97)) * 250))
            for j in range(i, i + 20)]))
    for j in range(0, n, 11):  # some again: versions, mod revisions
        call(p, pb, "KV", "Put", pb.PutRequest(
            key=b"s/%03d" % j, value=(b"%04d" % (j % 7)) * 250))
    reqs = []
    for target in range(5):
        for order in (R.ASCEND, R.DESCEND, R.NONE):
            for limit in (1, 3):
                for fmin in (0, base + 8):
                    reqs.append(R(key=b"s/", range_end=b"s0",
                                  sort_target=target, sort_order=order,
                                  limit=limit, min_mod_revision=fmin))
    reqs.append(R(key=b"s/", range_end=b"s0", sort_target=R.VALUE,
                  sort_order=R.DESCEND, limit=2, keys_only=True))
    reqs.append(R(key=b"s/", range_end=b"s0", sort_target=R.CREATE,
                  sort_order=R.DESCEND, limit=2, max_create_revision=base + 5))

    def same(got, want, q):
        assert list(got.kvs) == list(want.kvs), q
        assert (got.count, got.more) == (want.count, want.more), q
        assert len(got.kvs) == q.limit and got.more and got.count == n, q

    def put(v):
        return pb.RequestOp(request_put=pb.PutRequest(key=b"t/x", value=v))
    for node in (leader, follower):
        np = node.grpc_port
        for q in reqs:
            want = call(np, pb, "KV", "Range", q)
            t = call(np, pb, "KV", "Txn", pb.TxnRequest(
                success=[pb.RequestOp(request_range=q)]))
            same(t.responses[0].response_range, want, q)
            # with a write before it, through the log
            t = call(np, pb, "KV", "Txn", pb.TxnRequest(
                success=[put(b"w"), pb.RequestOp(request_range=q)]))
            same(t.responses[1].response_range, want, q)
    # The branch taken says which request an operation is: the same index
    # holds a range sorted one way in success, the other way in failure.
    asc = R(key=b"s/", range_end=b"s0", sort_target=R.CREATE,
            sort_order=R.ASCEND, limit=2)
    desc = R(key=b"s/", range_end=b"s0", sort_target=R.CREATE,
             sort_order=R.DESCEND, limit=2)
    for held, write in ((True, False), (False, False), (True, True),
                        (False, True)):
        cmp = pb.Compare(key=b"t/x", target=pb.Compare.VALUE,
                         result=pb.Compare.EQUAL if held else
                         pb.Compare.NOT_EQUAL, value=b"w")
        ops = [put(b"w")] if write else []
        t = call(follower.grpc_port, pb, "KV", "Txn", pb.TxnRequest(
            compare=[cmp],
            success=ops + [pb.RequestOp(request_range=asc)],
            failure=ops + [pb.RequestOp(request_range=desc)]))
        assert t.succeeded == held
        q = asc if held else desc
        same(t.responses[-1].response_range,
             call(p, pb, "KV", "Range", q), q)
    # Without a limit the answer is still too large, as a Range's.
    q = R(key=b"s/", range_end=b"s0", sort_target=R.CREATE)
    code, msg = rpc_error(call, p, pb, "KV", "Txn", pb.TxnRequest(
        success=[pb.RequestOp(request_range=q)]))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "use a limit" in msg, msg


def test_sorted_limited_range_is_the_head_of_the_whole(server, epb):
    # The same on 600 keys (against the whole answer only: etcd's order of
    # equal fields is not defined past 12 keys): each target and order,
    # limits from 1 to past the keys, with and without a filter.
    pb = epb
    R = pb.RangeRequest
    p = server.grpc_port
    base = call(p, pb, "KV", "Range", R(key=b"x")).header.revision
    for i in range(0, 600, 50):  # 50 keys a revision: equal create revs
        call(p, pb, "KV", "Txn", pb.TxnRequest(success=[
            pb.RequestOp(request_put=pb.PutRequest(
                key=b"w/%03d" % ((j * 7) % 600), value=b"%d" % (j % 13)))
            for j in range(i, i + 50)]))
    for j in range(0, 600, 9):  # some keys again: versions, mod revisions
        call(p, pb, "KV", "Put", pb.PutRequest(key=b"w/%03d" % j,
                                               value=b"%d" % (j % 5)))
    for target in range(5):
        for order in (R.ASCEND, R.DESCEND, R.NONE):
            for fmin in (0, base + 10):
                q = R(key=b"w/", range_end=b"w0", sort_target=target,
                      sort_order=order, min_mod_revision=fmin)
                whole = call(p, pb, "KV", "Range", q)
                kvs = list(whole.kvs)
                if order == R.NONE and not fmin and target != R.KEY:
                    continue  # etcd: the first keys, then sorted
                for limit in (1, 2, 3, 17, len(kvs) - 1, len(kvs),
                              len(kvs) + 1):
                    q.limit = limit
                    r = call(p, pb, "KV", "Range", q)
                    assert list(r.kvs) == kvs[:limit], (q, limit)
                    assert r.more == (limit < len(kvs)), (q, limit)
                    assert r.count == whole.count == 600
