"""Transactions that only read are not logged, and the range walks of a
transaction are bounded by txn-max-range-keys (HTTP /txn and etcd Txn)."""
import json

import grpc
import pytest

from test_cluster import leader_of, make_cluster
from grpc_helpers import etcd_call as call


def txn(s, body):
    st, _, out = s.request("POST", "/txn", json.dumps(body))
    return st, out


def load(s, n, prefix="k", value="v"):
    for b in range(0, n, 128):
        ops = [{"put": {"key": f"{prefix}{i:06d}", "value": value}}
               for i in range(b, min(n, b + 128))]
        st, out = txn(s, {"success": ops})
        assert st == 200, out


def test_read_only_txn_skips_the_log(servers):
    nodes = make_cluster(servers)
    leader = leader_of(nodes)
    follower = next(s for s in nodes if s is not leader)
    load(leader, 10)
    before = leader.status()["last_index"]
    for s in (leader, follower):
        st, out = txn(s, {"compare": [{"key": "k000001", "target": "version",
                                       "result": "=", "value": 1}],
                          "success": [{"range": {"prefix": "k", "limit": 3}},
                                      {"get": {"key": "k000009"}}],
                          "failure": [{"get": {"key": "nope"}}]})
        assert st == 200, out
        r = json.loads(out)
        assert r["succeeded"] is True
        rg = r["results"][0]
        assert [kv["key"] for kv in rg["kvs"]] == \
            ["k000000", "k000001", "k000002"] and rg["more"] is True
        assert r["results"][1]["kvs"][0]["key"] == "k000009"
        assert r["revision"] == 1  # one txn of 10 puts
    # nothing was proposed for them; a write is
    assert leader.status()["last_index"] == before
    st, out = txn(leader, {"success": [{"put": {"key": "w", "value": "1"}}]})
    assert st == 200
    assert leader.status()["last_index"] == before + 1


def test_range_budget_http(servers):
    s = servers(conf={"txn-max-range-keys": "50"})
    load(s, 100)
    rev = json.loads(txn(s, {"success": [{"get": {"key": "x"}}]})[1])[
        "revision"]
    over = b"The transaction's ranges would read more than " \
        b"txn-max-range-keys keys: nothing was done"
    # count_only walks every key of the range: 100 > 50
    st, out = txn(s, {"success": [{"range": {"prefix": "k",
                                             "count_only": True}}]})
    assert st == 413 and over in out, out
    # limit 1 visits 2
    st, out = txn(s, {"success": [{"range": {"prefix": "k", "limit": 1}}]
                      * 25})
    assert st == 200, out
    assert all(len(r["kvs"]) == 1 for r in json.loads(out)["results"])
    # 26 of them: 52 > 50
    st, out = txn(s, {"success": [{"range": {"prefix": "k", "limit": 1}}]
                      * 26})
    assert st == 413 and over in out, out
    # a write with a range over budget does nothing
    st, out = txn(s, {"success": [{"put": {"key": "new", "value": "1"}},
                                  {"range": {"prefix": "k"}}]})
    assert st == 413 and over in out, out
    st, out = txn(s, {"success": [{"get": {"key": "new"}}]})
    r = json.loads(out)
    assert r["results"][0]["kvs"] == [] and r["revision"] == rev


def test_etcd_txn_limit_and_budget(servers, epb):
    pb = epb
    s = servers(conf={"grpc-max-message": "64kb", "max-key-size": "1kb",
                      "max-value-size": "16kb",
                      "txn-max-range-keys": "300"})
    p = s.grpc_port
    for i in range(0, 200, 40):  # 200 keys of 1 KB: past 64 KB in all
        call(p, pb, "KV", "Txn", pb.TxnRequest(success=[
            pb.RequestOp(request_put=pb.PutRequest(
                key=b"p%04d" % j, value=b"x" * 1024))
            for j in range(i, i + 40)]))
    rng = pb.RangeRequest(key=b"p", range_end=b"q", limit=1)
    r = call(p, pb, "KV", "Txn",
             pb.TxnRequest(success=[pb.RequestOp(request_range=rng)]))
    rr = r.responses[0].response_range
    assert [kv.key for kv in rr.kvs] == [b"p0000"] and rr.more
    assert r.header.revision == 6  # five txns: etcd's 6
    # past grpc-max-message: a read-only txn says nothing about a write
    big = pb.RangeRequest(key=b"p", range_end=b"q")
    with pytest.raises(grpc.RpcError) as e:
        call(p, pb, "KV", "Txn", pb.TxnRequest(
            success=[pb.RequestOp(request_range=big)]))
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "applied" not in e.value.details(), e.value.details()
    assert "larger than grpc-max-message" in e.value.details()
    # count_only twice: 400 keys > 300, with a put: nothing done
    cnt = pb.RangeRequest(key=b"p", range_end=b"q", count_only=True)
    with pytest.raises(grpc.RpcError) as e:
        call(p, pb, "KV", "Txn", pb.TxnRequest(success=[
            pb.RequestOp(request_put=pb.PutRequest(key=b"z", value=b"1")),
            pb.RequestOp(request_range=cnt), pb.RequestOp(request_range=cnt)]))
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "txn-max-range-keys" in e.value.details()
    r = call(p, pb, "KV", "Range", pb.RangeRequest(key=b"z"))
    assert r.count == 0 and r.header.revision == 6
    # once: 200 keys, fine
    r = call(p, pb, "KV", "Txn",
             pb.TxnRequest(success=[pb.RequestOp(request_range=cnt)]))
    assert r.responses[0].response_range.count == 200


def test_etcd_read_only_txns_give_their_budget_back(servers, epb):
    """A read-only Txn's results count against max-pending-output while
    they are copied (grpc_stream_reserve), and are given back before its
    answer, which counts itself until it is written: counted twice, an
    answer of 600 KB could not be sent with max-pending-output 1mb. A
    hundred of them one after the other on one connection, each far past
    what the connection alone may hold (conn-high-water) and together past
    max-pending-output many times over, are all answered, on the leader
    and on a follower (which reads after a ReadIndex round)."""
    pb = epb
    conf = {"conn-high-water": "64kb", "conn-hard-limit": "512kb",
            "max-pending-output": "1mb", "max-value-size": "100kb"}
    nodes = make_cluster(servers, conf=conf)
    leader = leader_of(nodes)
    follower = next(s for s in nodes if s is not leader)
    call(leader.grpc_port, pb, "KV", "Txn", pb.TxnRequest(success=[
        pb.RequestOp(request_put=pb.PutRequest(key=b"b%d" % i,
                                               value=b"v" * 75000))
        for i in range(4)]))
    rng = pb.RangeRequest(key=b"b", range_end=b"c")
    req = pb.TxnRequest(success=[pb.RequestOp(request_range=rng),
                                 pb.RequestOp(request_range=rng)])
    for s in (leader, follower):
        ch = grpc.insecure_channel(f"127.0.0.1:{s.grpc_port}")
        try:
            f = ch.unary_unary(
                "/etcdserverpb.KV/Txn",
                request_serializer=pb.TxnRequest.SerializeToString,
                response_deserializer=pb.TxnResponse.FromString)
            for i in range(100):  # 100 x 600 KB: 60 MB through 1 MB
                r = f(req, timeout=10)
                assert [len(x.response_range.kvs) for x in r.responses] == \
                    [4, 4], i
        finally:
            ch.close()
        assert "past max-pending-output" not in s.read_log()
