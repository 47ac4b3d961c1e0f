"""The gRPC API of one node against real clients: python3-grpcio (stubs
generated at test time), curl --http2-prior-knowledge, nghttp, h2load, and
hand-made HTTP/2 frames for the malformed cases. Every status of the
mapping that one node can produce is driven on purpose; the node-error
cases (no leader, replication failure, shutdown) are unit-tested against a
fake node in tests/unit/test_grpc.c."""
import os
import shutil
import struct
import subprocess
import time

import grpc
import pytest
from google.protobuf import descriptor_pb2

import grpc_helpers as gh
from grpc_helpers import (Client, RawH2, curl_grpc, frame, grpc_headers,
                          rpc_error)

OK = grpc.StatusCode.OK
INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT


def need(tool):
    """Fails (never skips) when a client tool is missing."""
    assert shutil.which(tool), (f"{tool} not found: scripts/install-deps.sh "
                                "test installs nghttp2-client")


@pytest.fixture
def node(servers):
    return servers()


@pytest.fixture
def client(node, pb):
    c = Client(node.grpc_port, pb)
    yield c
    c.close()


def get_http(node, key):
    st, _, body = node.request("GET", "/get?key=" + key)
    return st, body


# --- the API ------------------------------------------------------------------


def test_set_get_delete(client, pb):
    kv = pb.kv
    assert client.Set(kv.SetRequest(key="k1", value="v1"),
                      timeout=5).success is True
    r = client.Get(kv.GetRequest(key="k1"), timeout=5)
    assert r.found is True and r.value == "v1"
    assert client.Delete(kv.DeleteRequest(key="k1"), timeout=5).success
    r = client.Get(kv.GetRequest(key="k1"), timeout=5)
    assert r.found is False and r.value == ""
    # Delete of a missing key succeeds too
    assert client.Delete(kv.DeleteRequest(key="k1"), timeout=5).success
    # overwrite, empty value
    client.Set(kv.SetRequest(key="k2", value="a"))
    client.Set(kv.SetRequest(key="k2", value=""))
    r = client.Get(kv.GetRequest(key="k2"))
    assert r.found is True and r.value == ""
    # stale reads are served too (one node: same answer)
    client.Set(kv.SetRequest(key="k3", value="x"))
    r = client.Get(kv.GetRequest(key="k3", stale=True))
    assert r.found and r.value == "x"


def test_unicode_and_nul_bytes(client, pb):
    kv = pb.kv
    key, val = "clé\u00a0日本", "välue\x00with nul\x00"
    client.Set(kv.SetRequest(key=key, value=val))
    r = client.Get(kv.GetRequest(key=key))
    assert r.found and r.value == val
    # a key with a NUL is its own key, not cut at the NUL
    client.Set(kv.SetRequest(key="a\x00b", value="1"))
    assert client.Get(kv.GetRequest(key="a")).found is False
    assert client.Get(kv.GetRequest(key="a\x00b")).value == "1"


def test_http_and_grpc_share_state(node, client, pb):
    kv = pb.kv
    client.Set(kv.SetRequest(key="shared", value="from-grpc"))
    assert get_http(node, "shared") == (200, b"from-grpc")
    st, _, _ = node.request("POST", "/set",
                            '{"key":"other","value":"from-http"}')
    assert st == 204
    r = client.Get(kv.GetRequest(key="other"))
    assert r.found and r.value == "from-http"


def test_large_value(client, pb):
    kv = pb.kv
    val = "".join(chr(ord("a") + i % 26) for i in range(900 * 1024))
    client.Set(kv.SetRequest(key="big", value=val), timeout=10)
    r = client.Get(kv.GetRequest(key="big"), timeout=10)
    assert r.found and r.value == val


def test_largest_request_fits_the_first_windows(node):
    # The windows the node opens up front (SETTINGS_INITIAL_WINDOW_SIZE for
    # each stream, a WINDOW_UPDATE for the connection) hold a whole request
    # carrying the largest value: a client sends it without waiting for a
    # WINDOW_UPDATE, a round trip per write of a large value otherwise.
    r = RawH2(node.grpc_port)
    try:
        frames, _ = r.read_frames(
            until=lambda fs: any(f[0] == gh.WINDOW_UPDATE and f[2] == 0
                                 for f in fs))
        stream_win, conn_win = 65535, 65535
        for ftype, flags, sid, payload in frames:
            if ftype == gh.SETTINGS and not flags & gh.ACK:
                for i in range(0, len(payload), 6):
                    ident, val = struct.unpack(">HI", payload[i:i + 6])
                    if ident == 4:  # SETTINGS_INITIAL_WINDOW_SIZE
                        stream_win = val
            if ftype == gh.WINDOW_UPDATE and sid == 0:
                conn_win += struct.unpack(">I", payload)[0] & 0x7FFFFFFF
        value = b"w" * (1 << 20)  # max-value-size, the default
        body = frame(b"\x0a\x03big\x12\x80\x80\x40" + value)
        assert min(stream_win, conn_win) >= len(body), (stream_win, conn_win)
        r.headers(1, grpc_headers("/kv.KVService/Set", node.grpc_port))
        for off in range(0, len(body), 16384):  # SETTINGS_MAX_FRAME_SIZE
            chunk = body[off:off + 16384]
            r.data(1, chunk, end_stream=off + 16384 >= len(body))
        frames, closed = r.read_frames(
            until=lambda fs: any(f[2] == 1 and f[0] == gh.HEADERS
                                 and f[1] & gh.END_STREAM for f in fs),
            timeout=10)
        assert not closed
        assert not any(f[0] in (gh.GOAWAY, gh.RST_STREAM) for f in frames)
        assert any(f[2] == 1 and f[0] == gh.HEADERS and f[1] & gh.END_STREAM
                   for f in frames)
    finally:
        r.close()
    assert get_http(node, "big") == (200, value)


def test_status_rpc(client, pb, node):
    client.Set(pb.kv.SetRequest(key="s", value="1"))
    r = client.Status(pb.cluster.StatusRequest(), timeout=5)
    assert r.id == "node1"
    assert r.role == "leader" and r.leader == "node1"
    assert r.term >= 1
    assert r.applied_index >= 1 and r.commit_index >= r.applied_index
    assert r.last_index >= r.commit_index
    assert r.keys == 1
    assert r.version
    # the leader names its own gRPC address (clients redirect to it)
    assert r.leader_grpc_addr == f"127.0.0.1:{node.grpc_port}"


def test_health(client, pb):
    h = pb.health
    SERVING = h.HealthCheckResponse.SERVING
    assert client.Check(h.HealthCheckRequest(), timeout=5).status == SERVING
    for svc in ("kv.KVService", "pyazdb.Cluster", "grpc.health.v1.Health"):
        assert client.Check(h.HealthCheckRequest(service=svc)).status \
            == SERVING
    code, details = rpc_error(client.Check,
                              h.HealthCheckRequest(service="nope.Nope"))
    assert code == grpc.StatusCode.NOT_FOUND and "nope.Nope" in details
    # Watch sends the current state and keeps the stream open
    stream = client.Watch(h.HealthCheckRequest(), timeout=5)
    first = next(stream)
    assert first.status == SERVING
    stream.cancel()
    stream = client.Watch(h.HealthCheckRequest(service="nope.Nope"),
                          timeout=5)
    assert next(stream).status == h.HealthCheckResponse.SERVICE_UNKNOWN
    stream.cancel()
    # a watch that outlives its deadline ends with DEADLINE_EXCEEDED
    stream = client.Watch(h.HealthCheckRequest(), timeout=2)
    assert next(stream).status == SERVING
    with pytest.raises(grpc.RpcError) as e:
        next(stream)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def reflect(client, pb, requests, version="v1"):
    return list(client.reflection(version)(iter(requests), timeout=5))


def test_reflection_python(client, pb):
    R = pb.refl.ServerReflectionRequest
    for version in ("v1", "v1alpha"):
        out = reflect(client, pb, [
            R(host="h", list_services=""),
            R(file_containing_symbol="kv.KVService"),
            R(file_containing_symbol="kv.KVService.Get"),
            R(file_by_filename="cluster.proto"),
            R(file_containing_symbol="no.Such"),
            R(all_extension_numbers_of_type="kv.GetRequest"),
        ], version)
        assert len(out) == 6
        names = [s.name for s in out[0].list_services_response.service]
        assert names == ["etcdserverpb.Auth", "etcdserverpb.Cluster",
                         "etcdserverpb.KV", "etcdserverpb.Lease",
                         "etcdserverpb.Maintenance", "etcdserverpb.Watch",
                         "grpc.health.v1.Health",
                         "grpc.reflection.v1.ServerReflection",
                         "grpc.reflection.v1alpha.ServerReflection",
                         "kv.KVService", "pyazdb.Cluster"]
        assert out[0].valid_host == "h"
        assert out[0].original_request.list_services == ""
        fd = descriptor_pb2.FileDescriptorProto.FromString(
            out[1].file_descriptor_response.file_descriptor_proto[0])
        assert fd.name == "kv.proto" and fd.package == "kv"
        svc = fd.service[0]
        assert svc.name == "KVService"
        assert [m.name for m in svc.method] == ["Get", "Set", "Delete"]
        assert svc.method[0].input_type == ".kv.GetRequest"
        fd2 = descriptor_pb2.FileDescriptorProto.FromString(
            out[2].file_descriptor_response.file_descriptor_proto[0])
        assert fd2.name == "kv.proto"
        fd3 = descriptor_pb2.FileDescriptorProto.FromString(
            out[3].file_descriptor_response.file_descriptor_proto[0])
        assert fd3.package == "pyazdb" and fd3.service[0].name == "Cluster"
        assert out[4].error_response.error_code == 5  # NOT_FOUND
        assert "no.Such" in out[4].error_response.error_message
        assert out[5].all_extension_numbers_response.base_type_name \
            == "kv.GetRequest"
    # a request that is not a reflection message ends the stream
    code, _ = rpc_error(lambda: list(
        client.ch.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=gh.identity,
            response_deserializer=gh.identity)(iter([b"\x0a\x09x"]),
                                               timeout=5)))
    assert code == INVALID_ARGUMENT


# --- the error mapping, case by case ----------------------------------------------


def test_empty_key_is_invalid_argument(client, pb):
    kv = pb.kv
    for call, req in ((client.Get, kv.GetRequest(key="")),
                      (client.Set, kv.SetRequest(key="", value="v")),
                      (client.Delete, kv.DeleteRequest(key=""))):
        code, details = rpc_error(call, req, timeout=5)
        assert code == INVALID_ARGUMENT and details == "key is required"


def test_size_limits(servers, pb):
    node = servers(conf={"max-key-size": "1kb", "max-value-size": "4kb",
                         "grpc-max-message": "8kb"})
    c = Client(node.grpc_port, pb)
    kv = pb.kv
    try:
        c.Set(kv.SetRequest(key="k" * 1024, value="v" * 4096))  # at limits
        assert c.Get(kv.GetRequest(key="k" * 1024)).found
        code, details = rpc_error(c.Set, kv.SetRequest(key="k" * 1025,
                                                       value="v"))
        assert code == INVALID_ARGUMENT and "key too large" in details
        code, details = rpc_error(c.Get, kv.GetRequest(key="k" * 1025))
        assert code == INVALID_ARGUMENT and "key too large" in details
        code, details = rpc_error(c.Set, kv.SetRequest(key="k",
                                                       value="v" * 4097))
        assert code == INVALID_ARGUMENT and "value too large" in details
        # a message over grpc-max-message is refused before it is read
        code, details = rpc_error(c.Set, kv.SetRequest(key="k",
                                                       value="v" * 20000))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "grpc-max-message" in details
        # the connection is still fine afterwards
        assert c.Get(kv.GetRequest(key="k" * 1024)).found
    finally:
        c.close()
    # a huge length prefix with a tiny body: refused at once, nothing kept
    st, f, _ = curl_grpc(node.grpc_port, "/kv.KVService/Set",
                         struct.pack(">BI", 0, 1 << 31) + b"\x0a\x01k")
    assert st == 200 and f["grpc-status"] == "8"


def test_unknown_service_and_method(client):
    for path in ("/kv.KVService/Nope", "/no.Such/Get", "/kv.KVService",
                 "/"):
        code, details = rpc_error(client.raw(path), b"", timeout=5)
        assert code == grpc.StatusCode.UNIMPLEMENTED, path
        assert "unknown method" in details


def test_body_not_a_message(client):
    # field 1 with a length past the end; a group wire type; plain text
    for body in (b"\x0a\x05ab", b"\x0b\x0c", b"hello, not protobuf"):
        for path in ("/kv.KVService/Get", "/kv.KVService/Set",
                     "/kv.KVService/Delete"):
            code, details = rpc_error(client.raw(path), body, timeout=5)
            assert code == INVALID_ARGUMENT, (path, body)
            assert "not a valid kv." in details


def test_compressed_message_is_unimplemented(node, pb):
    c = Client(node.grpc_port, pb, compression=grpc.Compression.Gzip)
    try:
        code, details = rpc_error(c.Set, pb.kv.SetRequest(key="z",
                                                          value="x" * 100))
        assert code == grpc.StatusCode.UNIMPLEMENTED
        assert "compressed" in details
    finally:
        c.close()
    # the flag byte alone decides, whatever grpc-encoding says
    st, f, _ = curl_grpc(node.grpc_port, "/kv.KVService/Get",
                         frame(b"\x0a\x01k", compressed=True))
    assert st == 200 and f["grpc-status"] == "12"


def test_wrong_content_type_is_415(node):
    for ct in ("application/json", "text/plain", "application/grpcx"):
        st, f, body = curl_grpc(node.grpc_port, "/kv.KVService/Get",
                                frame(b"\x0a\x01k"),
                                headers=["content-type: " + ct])
        assert st == 415, ct
        assert "grpc-status" not in f
        assert b"content-type" in body
    # the accepted forms
    for ct in ("application/grpc+proto", "application/grpc; charset=x"):
        st, f, _ = curl_grpc(node.grpc_port, "/kv.KVService/Get",
                             frame(b"\x0a\x01k"),
                             headers=["content-type: " + ct])
        assert st == 200 and f["grpc-status"] == "0", ct
        assert f["content-type"] == "application/grpc"


def test_method_other_than_post_is_405(node):
    st, _, _ = curl_grpc(node.grpc_port, "/kv.KVService/Get",
                         frame(b"\x0a\x01k"), method="PUT")
    assert st == 405


def test_te_trailers_not_required(node):
    p = subprocess.run(
        ["curl", "-s", "--http2-prior-knowledge", "-D", "/dev/stderr",
         "-o", "/dev/null", "-H", "content-type: application/grpc",
         "--data-binary", "@-", f"http://127.0.0.1:{node.grpc_port}"
         "/kv.KVService/Get"], input=frame(b"\x0a\x01k"),
        capture_output=True, timeout=10)
    assert b"grpc-status: 0" in p.stderr


def test_deadline_already_expired(node):
    # grpc-timeout of 0: past due when the request is complete (nghttp, so
    # that the request is complete before the deadline timer can run)
    need("nghttp")
    for t in ("0m", "0S", "0n"):
        st, f = gh.nghttp_grpc(node.grpc_port, "/kv.KVService/Set",
                               frame(b"\x0a\x01k\x12\x01v"),
                               headers=["grpc-timeout: " + t])
        assert st == 200 and f["grpc-status"] == "4", (t, f)
        assert f["grpc-message"].startswith("deadline exceeded")
    assert get_http(node, "k")[0] == 404  # not applied
    # a generous timeout is fine
    st, f, _ = curl_grpc(node.grpc_port, "/kv.KVService/Set",
                         frame(b"\x0a\x01k\x12\x01v"),
                         headers=["grpc-timeout: 5S"])
    assert f["grpc-status"] == "0"


def test_malformed_timeout_is_internal(node):
    for t in ("5", "5x", "123456789S", "-1S"):
        st, f, _ = curl_grpc(node.grpc_port, "/kv.KVService/Get",
                             frame(b"\x0a\x01k"),
                             headers=["grpc-timeout: " + t])
        assert st == 200 and f["grpc-status"] == "13", t
        assert "grpc-timeout" in f["grpc-message"]


def test_framing_errors(node):
    cases = [
        (b"", "missing request message"),
        (struct.pack(">BI", 0, 9) + b"abc", "truncated"),
        (b"\x00\x00", "truncated"),
        (frame(b"\x0a\x01k") + frame(b"\x0a\x01k"), "more than one"),
    ]
    for body, msg in cases:
        st, f, out = curl_grpc(node.grpc_port, "/kv.KVService/Get", body)
        assert st == 200 and f["grpc-status"] == "3", body
        assert msg in f["grpc-message"].replace("%20", " "), f
        assert out == b""


def test_trailers_only_and_normal_shapes(node):
    # success: HEADERS, one message, trailers with grpc-status 0
    st, f, body = curl_grpc(node.grpc_port, "/kv.KVService/Set",
                            frame(b"\x0a\x01k\x12\x02vv"))
    assert st == 200 and f["grpc-status"] == "0"
    assert body == frame(b"\x08\x01")
    st, f, body = curl_grpc(node.grpc_port, "/kv.KVService/Get",
                            frame(b"\x0a\x01k"))
    assert body == frame(b"\x0a\x02vv\x10\x01")
    # error: one HEADERS frame, no body
    st, f, body = curl_grpc(node.grpc_port, "/kv.KVService/Get",
                            frame(b""))
    assert st == 200 and f["grpc-status"] == "3" and body == b""
    assert f["grpc-message"] == "key is required"


def test_nghttp_client(node):
    need("nghttp")
    body = os.path.join(node.dir, "set.bin")
    with open(body, "wb") as fh:
        fh.write(frame(b"\x0a\x02nk\x12\x02nv"))
    p = subprocess.run(["nghttp", "-v", "-d", body, "-H",
                        "content-type: application/grpc", "-H",
                        "te: trailers",
                        f"http://127.0.0.1:{node.grpc_port}/kv.KVService/Set"],
                       capture_output=True, timeout=10)
    out = p.stdout.decode(errors="replace")
    assert p.returncode == 0, out
    assert "grpc-status: 0" in out
    # the server's SETTINGS come first, and the trailers after the DATA
    assert out.index("recv SETTINGS") < out.index("recv (stream_id=")
    assert out.rindex("recv DATA") < out.index("grpc-status: 0")
    assert get_http(node, "nk") == (200, b"nv")


def test_h2load_short_load(node):
    need("h2load")
    body = os.path.join(node.dir, "set.bin")
    with open(body, "wb") as fh:
        fh.write(frame(b"\x0a\x03hlk\x12\x05value"))
    p = subprocess.run(["h2load", "-n", "2000", "-c", "4", "-m", "16",
                        "-d", body, "-H", "content-type: application/grpc",
                        f"http://127.0.0.1:{node.grpc_port}/kv.KVService/Set"],
                       capture_output=True, timeout=60)
    out = p.stdout.decode(errors="replace")
    assert p.returncode == 0, out
    assert "2000 succeeded, 0 failed, 0 errored" in out, out
    assert "status codes: 2000 2xx" in out, out
    assert get_http(node, "hlk") == (200, b"value")


# --- robustness -------------------------------------------------------------------


def still_serving(node, pb):
    c = Client(node.grpc_port, pb)
    try:
        c.Set(pb.kv.SetRequest(key="alive", value="yes"), timeout=5)
        return c.Get(pb.kv.GetRequest(key="alive"), timeout=5).value == "yes"
    finally:
        c.close()


def test_hundreds_of_streams_on_one_connection(client, pb):
    kv = pb.kv
    futs = [client.Set.future(kv.SetRequest(key=f"m{i}", value=str(i)),
                              timeout=30) for i in range(600)]
    assert all(f.result().success for f in futs)
    futs = [client.Get.future(kv.GetRequest(key=f"m{i}"), timeout=30)
            for i in range(600)]
    assert [f.result().value for f in futs] == [str(i) for i in range(600)]


def test_many_connections(node, pb):
    conns = []
    req = frame(b"\x0a\x01c")
    try:
        for i in range(200):
            r = RawH2(node.grpc_port)
            r.headers(1, grpc_headers("/kv.KVService/Get", node.grpc_port))
            r.data(1, req, end_stream=True)
            conns.append(r)
        done = 0
        for r in conns:
            frames, _ = r.read_frames(
                until=lambda fs: any(f[0] == gh.HEADERS and f[1] & gh.END_STREAM
                                     for f in fs))
            done += any(f[0] == gh.HEADERS and f[1] & gh.END_STREAM
                        for f in frames)
        assert done == 200
    finally:
        for r in conns:
            r.close()
    assert still_serving(node, pb)


def test_server_settings_come_first(node):
    r = RawH2(node.grpc_port, preface=False)
    try:
        r.send(gh.PREFACE + gh.h2_frame(gh.SETTINGS, 0, 0, b""))
        frames, _ = r.read_frames(until=lambda fs: len(fs) >= 1)
        assert frames and frames[0][0] == gh.SETTINGS
    finally:
        r.close()


def test_reset_mid_request_leaves_other_streams_alone(node, pb):
    r = RawH2(node.grpc_port)
    try:
        hdr = grpc_headers("/kv.KVService/Set", node.grpc_port)
        # stream 1: half a message, then RST_STREAM(CANCEL)
        r.headers(1, hdr)
        r.data(1, struct.pack(">BI", 0, 100) + b"\x0a\x03abc")
        # stream 3: complete, interleaved
        r.headers(3, hdr)
        r.rst(1)
        r.data(3, frame(b"\x0a\x02rk\x12\x02rv"), end_stream=True)
        frames, closed = r.read_frames(
            until=lambda fs: any(f[2] == 3 and f[1] & gh.END_STREAM
                                 for f in fs))
        assert not closed
        assert any(f[2] == 3 and f[0] == gh.HEADERS and f[1] & gh.END_STREAM
                   for f in frames)
        assert not any(f[2] == 1 and f[0] in (gh.HEADERS, gh.DATA)
                       for f in frames)
        # a reset after a complete request (the node answers later)
        r.headers(5, grpc_headers("/kv.KVService/Get", node.grpc_port))
        r.data(5, frame(b"\x0a\x02rk"), end_stream=True)
        r.rst(5)
        r.headers(7, grpc_headers("/kv.KVService/Get", node.grpc_port))
        r.data(7, frame(b"\x0a\x02rk"), end_stream=True)
        frames, closed = r.read_frames(
            until=lambda fs: any(f[2] == 7 and f[1] & gh.END_STREAM
                                 for f in fs))
        assert any(f[2] == 7 and f[1] & gh.END_STREAM for f in frames)
    finally:
        r.close()
    assert get_http(node, "rk") == (200, b"rv")
    assert still_serving(node, pb)


def test_frames_for_a_closed_stream_are_ignored(node, pb):
    # A stream is forgotten once it closes: DATA, HEADERS, RST_STREAM,
    # WINDOW_UPDATE or PRIORITY for it later are dropped, and the
    # connection's next call is answered.
    hdr = grpc_headers("/kv.KVService/Set", node.grpc_port)
    late = [
        lambda r: r.data(1, frame(b"\x0a\x01x"), end_stream=True),
        lambda r: r.headers(1, hdr, end_stream=True),
        lambda r: r.rst(1),
        lambda r: r.send(gh.h2_frame(gh.WINDOW_UPDATE, 0, 1,
                                     struct.pack(">I", 100))),
        lambda r: r.send(gh.h2_frame(2, 0, 1,  # PRIORITY
                                     struct.pack(">IB", 0, 10))),
    ]
    for i, send_late in enumerate(late):
        r = RawH2(node.grpc_port)
        try:
            r.headers(1, hdr)
            r.data(1, frame(b"\x0a\x02ck\x12\x02c%d" % i), end_stream=True)
            frames, closed = r.read_frames(
                until=lambda fs: any(f[2] == 1 and f[0] == gh.HEADERS
                                     and f[1] & gh.END_STREAM for f in fs))
            assert not closed
            send_late(r)
            r.headers(3, hdr)
            r.data(3, frame(b"\x0a\x02ck\x12\x02d%d" % i), end_stream=True)
            frames, closed = r.read_frames(
                until=lambda fs: any(f[2] == 3 and f[0] == gh.HEADERS
                                     and f[1] & gh.END_STREAM for f in fs)
                or any(f[0] == gh.GOAWAY for f in fs))
            assert not any(f[0] == gh.GOAWAY for f in frames), i
            assert not any(f[0] == gh.RST_STREAM and f[2] == 3
                           for f in frames), i
            assert any(f[2] == 3 and f[0] == gh.HEADERS
                       and f[1] & gh.END_STREAM for f in frames), i
        finally:
            r.close()
        assert get_http(node, "ck") == (200, b"d%d" % i)
    assert still_serving(node, pb)


def test_client_vanishes_mid_response(node, client, pb):
    val = "x" * (512 * 1024)
    client.Set(pb.kv.SetRequest(key="v", value=val), timeout=10)
    for _ in range(5):
        r = RawH2(node.grpc_port)
        for sid in range(1, 80, 2):
            r.headers(sid, grpc_headers("/kv.KVService/Get", node.grpc_port))
            r.data(sid, frame(b"\x0a\x01v"), end_stream=True)
        r.read_frames(until=lambda fs: any(f[0] == gh.DATA for f in fs))
        r.close()  # with most of the responses unsent
    # grpcio clients that cancel while the response is on its way
    futs = [client.Get.future(pb.kv.GetRequest(key="v"), timeout=10)
            for _ in range(20)]
    for f in futs:
        f.cancel()
    assert still_serving(node, pb)


def test_truncated_frames_and_garbage(node, pb):
    hdr_block = gh.hpack_block(grpc_headers("/kv.KVService/Get",
                                            node.grpc_port))
    full = gh.h2_frame(gh.HEADERS, gh.END_HEADERS, 1, hdr_block)
    sends = [
        gh.PREFACE[:10],                                # half a preface
        gh.PREFACE + b"\x00\x00",                       # half a frame header
        gh.PREFACE + gh.h2_frame(gh.SETTINGS, 0, 0, b"") + full[:15],
        gh.PREFACE + gh.h2_frame(gh.SETTINGS, 0, 0, b"") + full
        + gh.h2_frame(gh.DATA, 0, 1, frame(b"\x0a\x01k"))[:12],
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",            # HTTP/1.1
        os.urandom(4096),                               # noise
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(200),
        # a frame larger than SETTINGS_MAX_FRAME_SIZE
        gh.PREFACE + gh.h2_frame(gh.SETTINGS, 0, 0, b"")
        + b"\xff\xff\xff\x00\x00\x00\x00\x00\x01",
        # DATA on stream 0, HEADERS on an even stream
        gh.PREFACE + gh.h2_frame(gh.SETTINGS, 0, 0, b"")
        + gh.h2_frame(gh.DATA, 0, 0, b"xx"),
        gh.PREFACE + gh.h2_frame(gh.SETTINGS, 0, 0, b"")
        + gh.h2_frame(gh.HEADERS, gh.END_HEADERS, 2, hdr_block),
        # an HPACK block that does not decode
        gh.PREFACE + gh.h2_frame(gh.SETTINGS, 0, 0, b"")
        + gh.h2_frame(gh.HEADERS, gh.END_HEADERS, 1, b"\xff\xff\xff\xff"),
    ]
    for data in sends:
        r = RawH2(node.grpc_port, preface=False)
        r.send(data)
        if data.startswith(gh.PREFACE):
            r.read_frames(timeout=0.3)
        else:
            # garbage before the preface: the server hangs up
            _, closed = r.read_frames(timeout=5)
            assert closed, data[:20]
        r.close()
    assert still_serving(node, pb)


def test_client_that_does_not_read(servers, pb):
    """Output that is not drained must not grow without bound: calls are
    held, the connection stops being read, others are served."""
    # A small ASan quarantine, or freed memory counts as growth.
    node = servers(env={"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:"
                        "quarantine_size_mb=4"})
    client = Client(node.grpc_port, pb)
    val = "y" * (256 * 1024)
    client.Set(pb.kv.SetRequest(key="w", value=val), timeout=10)

    def rss_kb():
        with open(f"/proc/{node.proc.pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    before = rss_kb()
    hogs = []
    for _ in range(3):
        r = RawH2(node.grpc_port)
        # 500 requests of 256 KiB answers each (125 MiB) never read
        batch = b""
        for sid in range(1, 1000, 2):
            batch += gh.h2_frame(gh.HEADERS, gh.END_HEADERS, sid,
                                 gh.hpack_block(grpc_headers(
                                     "/kv.KVService/Get", node.grpc_port)))
            batch += gh.h2_frame(gh.DATA, gh.END_STREAM, sid,
                                 frame(b"\x0a\x01w"))
        r.sock.setblocking(False)
        try:
            r.sock.send(batch)
        except BlockingIOError:
            pass
        hogs.append(r)
    time.sleep(1)
    t0 = time.time()
    for i in range(20):
        assert client.Get(pb.kv.GetRequest(key="w"), timeout=5).value == val
    assert time.time() - t0 < 5
    grown_mb = (rss_kb() - before) / 1024
    assert grown_mb < 120, f"server grew by {grown_mb:.0f} MiB"
    for r in hogs:
        r.close()
    assert still_serving(node, pb)
    client.close()


def test_graceful_shutdown_with_open_connection(servers, pb):
    node = servers()
    c = Client(node.grpc_port, pb)
    c.Set(pb.kv.SetRequest(key="a", value="b"))
    stream = c.Watch(pb.health.HealthCheckRequest(), timeout=20)
    next(stream)
    t0 = time.time()
    assert node.stop() == 0
    assert time.time() - t0 < 4
    with pytest.raises(grpc.RpcError) as e:
        next(stream)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    c.close()
