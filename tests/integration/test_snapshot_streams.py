"""Snapshots sent to clients: at most snapshot-max-streams at once (etcd
Maintenance.Snapshot and GET /admin/snapshot together), and an etcd
stream whose client reads nothing is cancelled after
snapshot-stall-timeout."""
import socket
import struct
import time

import grpc
import pytest

import grpc_helpers as gh


def stalled_snapshots(port, n):
    """n Snapshot calls on one HTTP/2 connection that never takes a byte
    (initial window 0)."""
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(gh.PREFACE + gh.h2_frame(gh.SETTINGS, 0, 0,
                                       struct.pack(">HI", 4, 0)))
    for i in range(n):
        hb = gh.hpack_block(gh.grpc_headers(
            "/etcdserverpb.Maintenance/Snapshot", port))
        sid = 1 + 2 * i
        s.sendall(gh.h2_frame(gh.HEADERS, gh.END_HEADERS, sid, hb) +
                  gh.h2_frame(gh.DATA, gh.END_STREAM, sid, gh.frame(b"")))
    return s


def snapshot_call(port):
    """One etcd Snapshot call read to its end: bytes received."""
    ch = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        f = ch.unary_stream("/etcdserverpb.Maintenance/Snapshot",
                            request_serializer=lambda x: x,
                            response_deserializer=lambda x: x)
        return sum(len(m) for m in f(b"", timeout=10))
    finally:
        ch.close()


def test_snapshot_streams_capped_and_stalls_cancelled(servers):
    s = servers(conf={"snapshot-max-streams": "2",
                      "snapshot-stall-timeout": "2s"})
    for i in range(20):
        assert s.request("POST", "/set",
                         f'{{"key":"k{i}","value":"v"}}')[0] == 204
    sk = stalled_snapshots(s.grpc_port, 3)
    try:
        assert gh.wait_for(lambda: s.read_log().count(
            "streaming snapshot at index") >= 2)
        # the third on that connection, and any other, is refused
        with pytest.raises(grpc.RpcError) as e:
            snapshot_call(s.grpc_port)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "snapshot-max-streams" in e.value.details()
        st, _, body = s.request("GET", "/admin/snapshot")
        assert st == 503 and b"snapshot-max-streams" in body, body
        # the stalled ones are cancelled: slots free again
        t0 = time.time()
        assert gh.wait_for(lambda: s.read_log().count(
            "took nothing for") >= 2, timeout=15)
        assert time.time() - t0 < 10
        assert snapshot_call(s.grpc_port) > 0
        st, _, body = s.request("GET", "/admin/snapshot")
        assert st == 200 and len(body) > 0
    finally:
        sk.close()
    assert s.request("GET", "/health")[0] == 200
