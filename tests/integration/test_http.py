"""The HTTP API of one node, driven by Python's http.client, raw sockets
and curl, against a real pyazdb-server on 127.0.0.1."""
import json
import os
import socket
import subprocess
import time
import http.client

import pytest


def set_key(s, key, value):
    return s.request("POST", "/set", json.dumps({"key": key, "value": value}),
                     {"Content-Type": "application/json"})


def raw(server, data, timeout=5):
    """Send raw bytes, return everything read until the server closes the
    connection; fails if it has not closed it within the timeout (every
    caller expects the close: Connection: close, 400, 413, 431, 503)."""
    with socket.create_connection(("127.0.0.1", server.http_port),
                                  timeout=timeout) as s:
        s.sendall(data)
        out = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    return out
                out += chunk
        except socket.timeout:
            raise AssertionError(f"the server did not close the connection "
                                 f"within {timeout} s; it sent {out[:300]!r}")


def test_set_get_delete(server):
    st, _, body = set_key(server, "greeting", "hello")
    assert st == 204 and body == b""
    st, h, body = server.request("GET", "/get?key=greeting")
    assert st == 200 and body == b"hello"
    assert h["Content-Type"] == "text/plain"
    st, _, _ = server.request("POST", "/delete", json.dumps({"key": "greeting"}))
    assert st == 204
    st, _, body = server.request("GET", "/get?key=greeting")
    assert st == 404 and body == b"Key not found\n"
    # deleting a missing key is fine, in both forms
    assert server.request("POST", "/delete", '{"key":"greeting"}')[0] == 204
    assert server.request("DELETE", "/delete?key=greeting")[0] == 204


def test_delete_query_form(server):
    assert set_key(server, "a/b c", "1")[0:3:2] == (204, b"")
    assert server.request("GET", "/get?key=a%2Fb+c")[0:3:2] == (200, b"1")
    st, _, _ = server.request("DELETE", "/delete?key=a%2Fb%20c")
    assert st == 204
    assert server.request("GET", "/get?key=a%2Fb+c")[0:3:2] == \
        (404, b"Key not found\n")


def test_overwrite_and_empty_value(server):
    assert set_key(server, "k", "v1")[0] == 204
    assert server.request("GET", "/get?key=k")[0:3:2] == (200, b"v1")
    assert set_key(server, "k", "")[0] == 204
    st, _, body = server.request("GET", "/get?key=k")
    assert st == 200 and body == b""


def test_binary_safe_values(server):
    value = "nul\u0000inside \u00e9\U0001F600"
    assert set_key(server, "bin", value)[0] == 204
    st, _, body = server.request("GET", "/get?key=bin")
    assert body == value.encode()
    # a key with a NUL byte through percent-encoding and a JSON escape
    assert server.request("POST", "/set",
                          '{"key":"x\\u0000y","value":"z"}')[0] == 204
    assert server.request("GET", "/get?key=x%00y")[2] == b"z"


def test_errors_match_the_original(server):
    assert server.request("GET", "/get")[0:3:2] == (400, b"Missing key parameter\n")
    assert server.request("GET", "/get?key=")[2] == b"Missing key parameter\n"
    st, _, body = server.request("POST", "/set", "{not json")
    assert (st, body) == (400, b"Invalid JSON\n")
    st, _, body = server.request("POST", "/set", '{"key":"k","value":5}')
    assert (st, body) == (400, b"Invalid JSON\n")
    st, _, body = server.request("POST", "/set", '{"value":"v"}')
    assert (st, body) == (400, b"Missing key field\n")
    st, _, body = server.request("POST", "/set", '{"key":"k","value":"v","x":[1,{"y":null}]}')
    assert st == 204  # unknown fields are ignored
    st, h, body = server.request("PUT", "/set", "{}")
    assert st == 405 and h["Allow"] == "POST"
    assert body == b"Method not allowed\n"
    st, h, _ = server.request("GET", "/delete?key=k")
    assert st == 405 and h["Allow"] == "POST, DELETE"
    assert server.request("GET", "/nothing/here")[0:3:2] == \
        (404, b"Not found\n")


def test_health_and_status(server):
    st, h, body = server.request("GET", "/health")
    assert st == 200 and h["Content-Type"] == "application/json"
    assert json.loads(body)["health"] == "ok"
    for i in range(5):
        set_key(server, f"s{i}", "v")
    st, h, body = server.request("GET", "/status")
    assert st == 200 and h["Content-Type"] == "application/json"
    s = json.loads(body)
    assert s["id"] == "node1"
    assert s["keys"] == 5
    assert s["role"] == "leader"
    assert s["version"]
    assert s["uptime_seconds"] >= 0


def test_keep_alive_and_pipelining(server):
    reqs = (b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
            b'POST /set HTTP/1.1\r\nContent-Length: 23\r\n\r\n{"key":"p","value":"q"}'
            b"GET /get?key=p HTTP/1.1\r\n\r\n"
            b"GET /get?key=p HTTP/1.1\r\nConnection: close\r\n\r\n")
    out = raw(server, reqs)
    assert out.count(b"HTTP/1.1 200 OK") == 3
    assert out.count(b"HTTP/1.1 204 No Content") == 1
    # replies come in request order
    assert out.index(b'"health":"ok"') < out.index(b"204") \
        < out.index(b"\r\n\r\nq")
    assert out.endswith(b"q")


def read_to_close(s):
    out = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return out
        out += chunk


def test_input_while_a_write_waits(server):
    """A write is answered after its fsync; a request that arrives
    meanwhile waits its turn, and a client that half-closes its side
    after sending still gets every answer."""
    body = b'{"key":"hold","value":"1"}'
    post = b"POST /set HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body), body)
    with socket.create_connection(("127.0.0.1", server.http_port),
                                  timeout=5) as s:
        s.sendall(post)
        time.sleep(0.002)  # the set is held by now, before its answer
        s.sendall(b"GET /get?key=hold HTTP/1.1\r\n\r\n")
        s.shutdown(socket.SHUT_WR)
        out = read_to_close(s)
    assert out.startswith(b"HTTP/1.1 204 No Content\r\n")
    assert out.count(b"HTTP/1.1 200 OK") == 1 and out.endswith(b"\r\n\r\n1")
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", server.http_port),
                                      timeout=5) as s:
            s.sendall(post)
            s.shutdown(socket.SHUT_WR)
            assert read_to_close(s).startswith(b"HTTP/1.1 204 No Content\r\n")


def test_pipelining_one_byte_at_a_time(server):
    reqs = b"".join(b"GET /get?key=nope HTTP/1.1\r\n\r\n" for _ in range(3))
    reqs += b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=5) as s:
        for b in reqs:
            s.send(bytes([b]))
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    assert out.count(b"404 Not Found") == 3
    assert out.endswith(b'"linearizable":true}\n')


def test_malformed_request_gets_400_and_close(server):
    out = raw(server, b"THIS IS NOT HTTP\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400 Bad Request")
    assert b"Connection: close" in out
    # the server carries on
    assert server.request("GET", "/health")[0] == 200


def test_content_length_and_chunked_is_400(server):
    out = raw(server, b"POST /set HTTP/1.1\r\nContent-Length: 2\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\n{}")
    assert out.startswith(b"HTTP/1.1 400")


def test_oversized_body_is_413(servers):
    s = servers(conf={"http-max-body": "16kb", "max-value-size": "8kb",
                      "max-key-size": "1kb", "grpc-max-message": "16kb"})
    # announced too large: refused before the body is sent
    out = raw(s, b"POST /set HTTP/1.1\r\nContent-Length: 100000\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 413")
    # chunked, too large as it arrives
    body = b"4000\r\n" + b"x" * 0x4000 + b"\r\n"
    out = raw(s, b"POST /set HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + body * 2)
    assert out.startswith(b"HTTP/1.1 413")
    # a value over max-value-size inside an acceptable body
    st, _, b = set_key(s, "k", "v" * 9000)
    assert (st, b) == (413, b"Value too large\n")
    st, _, b = set_key(s, "k" * 2000, "v")
    assert (st, b) == (413, b"Key too large\n")
    assert s.request("GET", "/health")[0] == 200


def test_too_many_headers_is_431(servers):
    s = servers(conf={"http-max-headers": "10"})
    hdrs = b"".join(b"X-%d: v\r\n" % i for i in range(20))
    out = raw(s, b"GET /health HTTP/1.1\r\n" + hdrs + b"\r\n")
    assert out.startswith(b"HTTP/1.1 431")
    big = b"X-Big: " + b"a" * 20000 + b"\r\n"
    out = raw(s, b"GET /health HTTP/1.1\r\n" + big + b"\r\n")
    assert out.startswith(b"HTTP/1.1 431")


def test_idle_client_is_disconnected(servers):
    s = servers(conf={"client-idle-timeout": "1s"})
    with socket.create_connection(("127.0.0.1", s.http_port), timeout=10) as c:
        c.sendall(b"GET /hea")  # a slow client that never finishes
        t0 = time.time()
        assert c.recv(100) == b""  # closed by the server
        assert time.time() - t0 < 5


def test_max_clients(servers):
    s = servers(conf={"max-clients": "2"})
    # A connection the client closed still counts until the server has
    # seen the close: retry until two are served (the readiness probe's
    # may linger for a moment).
    deadline = time.time() + 5
    while True:
        a = http.client.HTTPConnection("127.0.0.1", s.http_port, timeout=5)
        b = http.client.HTTPConnection("127.0.0.1", s.http_port, timeout=5)
        got = []
        for c in (a, b):  # both accepted and served, kept open
            c.request("GET", "/health")
            r = c.getresponse()
            got.append((r.status, b'"health":"ok"' in r.read()))
        if got == [(200, True)] * 2:
            break
        a.close()
        b.close()
        assert time.time() < deadline, got
        time.sleep(0.05)
    out = raw(s, b"GET /health HTTP/1.1\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 503") and b"Too many clients" in out
    a.close()
    b.close()
    deadline = time.time() + 5
    while s.request("GET", "/health")[0] != 200:  # once the closes are seen
        assert time.time() < deadline
        time.sleep(0.05)


def test_curl_set_get_delete(server):
    base = f"http://127.0.0.1:{server.http_port}"
    def curl(*args):
        return subprocess.run(["curl", "-sS", "-w", "%{http_code}", *args],
                              capture_output=True, timeout=10, check=True).stdout
    assert curl("-X", "POST", "-d", '{"key":"c","value":"curl"}', base + "/set") == b"204"
    assert curl(base + "/get?key=c") == b"curl200"
    # curl --http2 offers an h2c upgrade: answered in HTTP/1.1
    assert curl("--http2", base + "/get?key=c") == b"curl200"
    assert curl("-X", "DELETE", base + "/delete?key=c") == b"204"
    assert curl(base + "/get?key=c") == b"Key not found\n404"


def test_many_clients_and_reconnects(server):
    conns = [http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=5)
             for _ in range(50)]
    for i, c in enumerate(conns):
        c.request("POST", "/set", json.dumps({"key": f"m{i}", "value": str(i)}))
    for c in conns:
        r = c.getresponse()
        assert r.status == 204 and r.read() == b""
    for i, c in enumerate(conns):
        c.request("GET", f"/get?key=m{i}")
        r = c.getresponse()
        assert r.read() == str(i).encode()
        c.close()
    st, _, body = server.request("GET", "/status")
    assert json.loads(body)["keys"] == 50


def test_graceful_shutdown_exit_code(server):
    assert set_key(server, "x", "y")[0] == 204
    assert server.stop() == 0
    log = server.read_log()
    assert "shutting down" in log and "stopped" in log


def test_client_vanishing_mid_request(server):
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", server.http_port)) as c:
            c.sendall(b"POST /set HTTP/1.1\r\nContent-Length: 1000\r\n\r\n{\"key\"")
    assert server.request("GET", "/health")[0] == 200
