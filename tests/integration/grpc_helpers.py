"""Helpers for the gRPC tests: Python stubs generated at test time, a grpcio
client with generic unary calls, curl with HTTP/2 prior knowledge, and a raw
HTTP/2 connection for sending malformed or partial frames.

python3-grpcio in Debian has no grpc_tools, so the message classes come
from `protoc --python_out` and calls are made with channel.unary_unary.
The grpc-proto files are copied flat into a temporary directory first: a
generated `grpc/` package would hide grpcio's own `grpc` module.
"""
import importlib
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

import grpc

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
GRPC_PROTO = "/usr/share/grpc-proto/grpc"
CLI = os.path.join(ROOT, "src", "pyazdb-cli")

_stubs = None


class Stubs:
    pass


def stubs(tmpdir):
    """Generate and import the message classes once per test session."""
    global _stubs
    if _stubs is not None:
        return _stubs
    src = os.path.join(tmpdir, "protos")
    out = os.path.join(tmpdir, "py")
    os.makedirs(src, exist_ok=True)
    os.makedirs(out, exist_ok=True)
    for name in ("kv.proto", "cluster.proto"):
        shutil.copy(os.path.join(ROOT, "proto", name), src)
    shutil.copy(os.path.join(GRPC_PROTO, "health/v1/health.proto"),
                os.path.join(src, "health.proto"))
    shutil.copy(os.path.join(GRPC_PROTO, "reflection/v1/reflection.proto"),
                os.path.join(src, "reflection_v1.proto"))
    subprocess.run(["protoc", "--proto_path=" + src, "--python_out=" + out,
                    "kv.proto", "cluster.proto", "health.proto",
                    "reflection_v1.proto"], check=True)
    sys.path.insert(0, out)
    s = Stubs()
    s.kv = importlib.import_module("kv_pb2")
    s.cluster = importlib.import_module("cluster_pb2")
    s.health = importlib.import_module("health_pb2")
    s.refl = importlib.import_module("reflection_v1_pb2")
    _stubs = s
    return s


_etcd_pb = None


def etcd_stubs(tmpdir):
    """The message classes of etcd's API (proto/etcd_rpc.proto, which
    imports etcd_mvcc.proto), generated and imported once per session."""
    global _etcd_pb
    if _etcd_pb is None:
        src = os.path.join(ROOT, "proto")
        out = os.path.join(tmpdir, "etcd_py")
        os.makedirs(out, exist_ok=True)
        subprocess.run(["protoc", "--proto_path=" + src,
                        "--python_out=" + out, "etcd_mvcc.proto",
                        "etcd_rpc.proto"], check=True)
        sys.path.insert(0, out)
        _etcd_pb = importlib.import_module("etcd_rpc_pb2")
    return _etcd_pb


def etcd_call(port, epb, svc, method, req, resp=None, metadata=None,
              timeout=10):
    """One unary call to etcdserverpb.svc/method on 127.0.0.1:port, on a
    channel of its own; resp names the answer's message (by default
    method + "Response", as etcd names them but for Compact)."""
    resp = resp or {"Compact": "CompactionResponse"}.get(method,
                                                          method + "Response")
    ch = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        f = ch.unary_unary(f"/etcdserverpb.{svc}/{method}",
                           request_serializer=type(req).SerializeToString,
                           response_deserializer=getattr(epb, resp).FromString)
        return f(req, metadata=metadata, timeout=timeout)
    finally:
        ch.close()


def identity(b):
    return b


class Client:
    """grpcio channel to one node with the methods we serve."""

    def __init__(self, port, stubs_, credentials=None, **channel_kw):
        self.s = stubs_
        if credentials is not None:  # gRPC over TLS
            self.ch = grpc.secure_channel(f"127.0.0.1:{port}", credentials,
                                          **channel_kw)
        else:
            self.ch = grpc.insecure_channel(f"127.0.0.1:{port}", **channel_kw)
        kv, cl, h = stubs_.kv, stubs_.cluster, stubs_.health
        self.Get = self.unary("/kv.KVService/Get", kv.GetRequest,
                              kv.GetResponse)
        self.Set = self.unary("/kv.KVService/Set", kv.SetRequest,
                              kv.SetResponse)
        self.Delete = self.unary("/kv.KVService/Delete", kv.DeleteRequest,
                                 kv.DeleteResponse)
        self.Status = self.unary("/pyazdb.Cluster/Status", cl.StatusRequest,
                                 cl.StatusResponse)
        self.Check = self.unary("/grpc.health.v1.Health/Check",
                                h.HealthCheckRequest, h.HealthCheckResponse)
        self.Watch = self.ch.unary_stream(
            "/grpc.health.v1.Health/Watch",
            request_serializer=h.HealthCheckRequest.SerializeToString,
            response_deserializer=h.HealthCheckResponse.FromString)

    def unary(self, path, req, resp):
        return self.ch.unary_unary(path,
                                   request_serializer=req.SerializeToString,
                                   response_deserializer=resp.FromString)

    def raw(self, path):
        """A unary call that sends and returns raw bytes."""
        return self.ch.unary_unary(path, request_serializer=identity,
                                   response_deserializer=identity)

    def reflection(self, version="v1"):
        r = self.s.refl
        return self.ch.stream_stream(
            f"/grpc.reflection.{version}.ServerReflection/"
            "ServerReflectionInfo",
            request_serializer=r.ServerReflectionRequest.SerializeToString,
            response_deserializer=r.ServerReflectionResponse.FromString)

    def close(self):
        self.ch.close()


def rpc_error(fn, *a, **kw):
    """Call fn, expect grpc.RpcError; return (code, details)."""
    try:
        fn(*a, **kw)
    except grpc.RpcError as e:
        return e.code(), e.details()
    raise AssertionError("call succeeded, an error was expected")


def frame(msg, compressed=False):
    return struct.pack(">BI", 1 if compressed else 0, len(msg)) + msg


def curl_grpc(port, path, body, headers=(), method=None, timeout=10):
    """POST body over h2c prior knowledge with curl. Returns (status,
    headers and trailers as a dict, response body bytes)."""
    hdr = ["-H", "content-type: application/grpc", "-H", "te: trailers"]
    for h in headers:
        if h.lower().startswith("content-type:"):
            hdr[1] = h
        else:
            hdr += ["-H", h]
    # The body comes from a file, not a pipe: curl then sends it right
    # after the headers (with a pipe it may still be reading it when an
    # early Trailers-Only answer arrives, and then waits forever).
    with tempfile.NamedTemporaryFile(prefix="grpc-body-") as fh:
        fh.write(body)
        fh.flush()
        cmd = ["curl", "-s", "--http2-prior-knowledge", "--max-time",
               str(timeout), "-D", "/dev/stderr", "-o", "-",
               "--data-binary", "@" + fh.name] + hdr
        if method:
            cmd += ["-X", method]
        cmd.append(f"http://127.0.0.1:{port}{path}")
        p = subprocess.run(cmd, capture_output=True, timeout=timeout + 5)
    assert p.returncode == 0, (p.returncode, p.stderr)
    status = None
    fields = {}
    for line in p.stderr.decode(errors="replace").splitlines():
        if line.startswith("HTTP/2 "):
            status = int(line.split()[1])
        elif ":" in line:
            k, v = line.split(":", 1)
            fields[k.strip().lower()] = v.strip()
    return status, fields, p.stdout


def nghttp_grpc(port, path, body, headers=(), timeout=10):
    """The same call with nghttp, which sends HEADERS and DATA in one write
    (no race with an answer given on the headers alone). Returns (status,
    headers and trailers as a dict)."""
    with tempfile.NamedTemporaryFile(prefix="grpc-body-") as fh:
        fh.write(body)
        fh.flush()
        cmd = ["nghttp", "-v", "-n", "-d", fh.name, "-H",
               "content-type: application/grpc", "-H", "te: trailers"]
        for h in headers:
            cmd += ["-H", h]
        cmd.append(f"http://127.0.0.1:{port}{path}")
        p = subprocess.run(cmd, capture_output=True, timeout=timeout)
    fields = {}
    for line in p.stdout.decode(errors="replace").splitlines():
        line = line.strip()
        if "recv (stream_id=" in line and ") " in line:
            k, v = line.split(") ", 1)[1].split(": ", 1)
            fields[k.strip()] = v.strip()
    return int(fields.get(":status", "0")), fields


# --- raw HTTP/2 ---------------------------------------------------------------

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE = (
    0, 1, 3, 4, 6, 7, 8)
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1


def h2_frame(ftype, flags, stream, payload):
    return (struct.pack(">I", len(payload))[1:] + bytes([ftype, flags])
            + struct.pack(">I", stream & 0x7FFFFFFF) + payload)


def split_frames(buf):
    """The whole frames at the start of buf, past a client's connection
    preface if it opens buf: ([(type, flags, stream, payload)...], the
    bytes left over)."""
    if PREFACE.startswith(buf[:len(PREFACE)]):
        if len(buf) < len(PREFACE):
            return [], buf
        buf = buf[len(PREFACE):]
    frames = []
    while len(buf) >= 9:
        n = int.from_bytes(buf[:3], "big")
        if len(buf) < 9 + n:
            break
        frames.append((buf[3], buf[4],
                       int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF,
                       buf[9:9 + n]))
        buf = buf[9 + n:]
    return frames, buf


def hpack_int(v, prefix_bits, first=0):
    limit = (1 << prefix_bits) - 1
    if v < limit:
        return bytes([first | v])
    out = [first | limit]
    v -= limit
    while v >= 128:
        out.append((v & 127) | 128)
        v >>= 7
    out.append(v)
    return bytes(out)


def hpack_block(headers):
    """Literal header fields without indexing, plain (no Huffman)."""
    b = b""
    for k, v in headers:
        k = k.encode() if isinstance(k, str) else k
        v = v.encode() if isinstance(v, str) else v
        b += b"\x00" + hpack_int(len(k), 7) + k + hpack_int(len(v), 7) + v
    return b


def grpc_headers(path, port, extra=()):
    return [(":method", "POST"), (":scheme", "http"), (":path", path),
            (":authority", f"127.0.0.1:{port}"),
            ("content-type", "application/grpc"), ("te", "trailers")] + list(
                extra)


class RawH2:
    """A hand-driven HTTP/2 client connection (no library)."""

    def __init__(self, port, preface=True, timeout=5):
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port),
                                             timeout=timeout)
        self.buf = b""
        if preface:
            self.send(PREFACE + h2_frame(SETTINGS, 0, 0, b""))

    def send(self, data):
        self.sock.sendall(data)

    def headers(self, stream, headers, end_stream=False):
        self.send(h2_frame(HEADERS, END_HEADERS
                           | (END_STREAM if end_stream else 0), stream,
                           hpack_block(headers)))

    def data(self, stream, payload, end_stream=False):
        self.send(h2_frame(DATA, END_STREAM if end_stream else 0, stream,
                           payload))

    def rst(self, stream, code=8):
        self.send(h2_frame(RST_STREAM, 0, stream, struct.pack(">I", code)))

    def read_frames(self, until=None, timeout=5):
        """Read frames until until(frames) is true, the peer closes or the
        timeout. Returns (frames, closed); a frame is (type, flags, stream,
        payload). SETTINGS from the server are acknowledged."""
        frames = []
        end = time.time() + timeout
        closed = False
        while time.time() < end:
            got, self.buf = split_frames(self.buf)
            for f in got:
                frames.append(f)
                if f[0] == SETTINGS and not f[1] & ACK:
                    try:
                        self.send(h2_frame(SETTINGS, ACK, 0, b""))
                    except OSError:
                        pass
            if until and until(frames):
                return frames, closed
            self.sock.settimeout(max(0.01, end - time.time()))
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                break
            except OSError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            self.buf += chunk
        return frames, closed

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class Listener:
    """A test server on a free 127.0.0.1 port: each accepted connection
    is served by self.serve(conn) on a thread of its own; close() ends
    the listener and every connection."""

    def __init__(self):
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.port = self.lsock.getsockname()[1]
        self.socks = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            self.socks.append(c)
            threading.Thread(target=self.serve, args=(c,), daemon=True).start()

    def serve(self, c):
        raise NotImplementedError

    def close(self):
        self.lsock.close()
        for s in self.socks:
            s.close()


def wait_for(pred, timeout=5, step=0.02):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(step)
    return pred()
