"""TLS on the HTTP and gRPC ports, client certificates, and the reload of
certificates, with real clients: curl, Python's ssl and grpcio, and
`openssl s_client`. The certificates are made in a fixture by the openssl
command line (scripts/make-certs.sh, and openssl under faketime for an
expired one)."""
import fcntl
import http.client
import json
import os
import select
import shutil
import signal
import socket
import ssl
import subprocess
import termios
import time

import grpc
import pytest

import grpc_helpers as gh
from conftest import ROOT, SERVER
from test_hostile_clients import ENV as HOSTILE_ENV
from test_hostile_clients import read_answers_kept_open, rss_mb

MAKE_CERTS = os.path.join(ROOT, "scripts", "make-certs.sh")


def run(*cmd, **kw):
    return subprocess.run(list(cmd), capture_output=True, text=True,
                          errors="replace", timeout=30, **kw)


def make(d, *args, env=None):
    r = run(MAKE_CERTS, d, *args, env=env)
    assert r.returncode == 0, r.stderr


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA with a node certificate for 127.0.0.1/localhost, a client
    certificate, an expired client certificate, a second node certificate
    (for the reload), and a CA of its own with a client and a node
    certificate signed by it."""
    d = str(tmp_path_factory.mktemp("pki"))
    make(d, "ca")
    make(d, "node", "node1", "127.0.0.1", "localhost")
    make(d, "node", "node1b", "127.0.0.1", "localhost")
    make(d, "client", "alice")
    if shutil.which("faketime") is None:
        pytest.skip("faketime is needed for an expired certificate")
    env = dict(os.environ, DAYS="1")
    r = run("faketime", "2020-01-01 00:00:00", MAKE_CERTS, d, "client",
            "old", env=env)
    assert r.returncode == 0, r.stderr
    other = os.path.join(d, "other")
    make(other, "ca")
    make(other, "client", "mallory")
    make(other, "node", "node1", "127.0.0.1", "localhost")
    p = {k: os.path.join(d, k) for k in ("ca.crt", "node1.crt", "node1.key",
                                          "node1b.crt", "node1b.key",
                                          "alice.crt", "alice.key", "old.crt",
                                          "old.key")}
    p["dir"] = d
    p["other-ca.crt"] = os.path.join(other, "ca.crt")
    p["mallory.crt"] = os.path.join(other, "mallory.crt")
    p["mallory.key"] = os.path.join(other, "mallory.key")
    p["other-node.crt"] = os.path.join(other, "node1.crt")
    p["other-node.key"] = os.path.join(other, "node1.key")
    return p


def tls_conf(pki, auth="none", cert="node1"):
    c = {"tls-cert-file": pki[cert + ".crt"],
         "tls-key-file": pki[cert + ".key"]}
    if auth != "none":
        c["tls-ca-file"] = pki["ca.crt"]
        c["tls-client-auth"] = auth
    return c


def client_ctx(pki, cert=None):
    ctx = ssl.create_default_context(cafile=pki["ca.crt"])
    if cert:
        ctx.load_cert_chain(pki[cert + ".crt"], pki[cert + ".key"])
    return ctx


def start(servers, pki, auth="none", conf=None, client="alice"):
    c = tls_conf(pki, auth)
    c.update(conf or {})
    s = servers(conf=c, start=False)
    s.ssl_context = client_ctx(pki, client if auth != "none" else None)
    return s.start()


def curl(port, path, *opts, data=None):
    cmd = ["curl", "-sS", "--max-time", "10", "-o", "-", "-w",
           "\n%{http_code}", *opts]
    if data is not None:
        cmd += ["-X", "POST", "-H", "content-type: application/json",
                "--data-binary", data]
    r = run(*cmd, f"https://127.0.0.1:{port}{path}")
    return r


def body_code(r):
    body, _, code = r.stdout.rpartition("\n")
    return body, int(code)


def test_https_with_curl(servers, pki):
    s = start(servers, pki)
    ca = ["--cacert", pki["ca.crt"]]
    r = curl(s.http_port, "/set", *ca, data='{"key":"k1","value":"v1"}')
    assert r.returncode == 0, r.stderr
    assert body_code(r)[1] == 204
    r = curl(s.http_port, "/get?key=k1", *ca)
    assert body_code(r) == ("v1", 200), r.stdout
    # The name in the certificate: localhost works as well as 127.0.0.1.
    r = run("curl", "-sS", "--max-time", "10", *ca,
            f"https://localhost:{s.http_port}/health")
    assert r.returncode == 0, r.stderr
    # Without the CA, curl does not trust the server.
    r = curl(s.http_port, "/get?key=k1")
    assert r.returncode == 60, (r.returncode, r.stderr)
    # A CA that did not sign it: the same.
    r = curl(s.http_port, "/get?key=k1", "--cacert", pki["other-ca.crt"])
    assert r.returncode == 60, (r.returncode, r.stderr)
    # Plain HTTP on the HTTPS port gets no HTTP answer.
    r = run("curl", "-sS", "--max-time", "5",
            f"http://127.0.0.1:{s.http_port}/health")
    assert r.returncode != 0
    # The node goes on serving.
    assert s.request("GET", "/get?key=k1")[0] == 200


def test_large_values_and_keepalive(servers, pki):
    """Values that span many TLS records, many requests on one
    connection."""
    s = start(servers, pki)
    big = "x" * (900 * 1024)
    c = http.client.HTTPSConnection("127.0.0.1", s.http_port, timeout=10,
                                    context=client_ctx(pki))
    try:
        c.request("POST", "/set", body=json.dumps({"key": "big",
                                                   "value": big}),
                  headers={"content-type": "application/json"})
        r = c.getresponse()
        r.read()
        assert r.status == 204
        for i in range(50):
            c.request("POST", "/set", body=json.dumps({"key": f"k{i}",
                                                       "value": str(i)}),
                      headers={"content-type": "application/json"})
            r = c.getresponse()
            r.read()
            assert r.status == 204
        c.request("GET", "/get?key=big")
        r = c.getresponse()
        got = r.read().decode()
        assert r.status == 200
        assert got == big
    finally:
        c.close()


def test_answers_sent_leave_no_buffers_on_open_connections(servers, pki):
    """60 clients each read a 900 kB range over TLS and keep their
    connection open. The plaintext queue and the ciphertext buffer each
    kept the size of the largest answer for as long as the connection
    stayed open, counted nowhere: +110 MB here. Emptied ones over 64 KiB
    now go."""
    c = tls_conf(pki)
    c["max-clients"] = "100"
    # a sanitizer build's quarantine would hold what is freed (RSS)
    s = servers(conf=c, start=False, env=HOSTILE_ENV)
    s.ssl_context = client_ctx(pki)
    s.start()
    for i in range(2):
        c = http.client.HTTPSConnection("127.0.0.1", s.http_port, timeout=10,
                                        context=client_ctx(pki))
        c.request("POST", "/set", body=json.dumps({"key": f"big/{i}",
                                                   "value": "v" * 460800}),
                  headers={"content-type": "application/json"})
        assert c.getresponse().status == 204
        c.close()
    rss0 = rss_mb(s)
    conns, lens = read_answers_kept_open(s.http_port, 60,
                                         "/range?prefix=big/",
                                         ctx=client_ctx(pki))
    try:
        time.sleep(0.5)
        grown = rss_mb(s) - rss0
        print(f"60 TLS connections kept open after a 900 kB answer each: "
              f"RSS +{grown:.0f} MB")
        assert min(lens) > 2 * 460800, min(lens)
        assert grown < 25, grown
    finally:
        for c in conns:
            c.close()


def test_client_auth_require_curl(servers, pki):
    s = start(servers, pki, auth="require")
    ca = ["--cacert", pki["ca.crt"]]
    mine = ["--cert", pki["alice.crt"], "--key", pki["alice.key"]]
    r = curl(s.http_port, "/set", *ca, *mine, data='{"key":"a","value":"1"}')
    assert r.returncode == 0, r.stderr
    assert body_code(r)[1] == 204
    # No client certificate: refused in the handshake.
    r = curl(s.http_port, "/get?key=a", *ca)
    assert r.returncode != 0 and body_code(r)[0] == ""
    # One from another CA, and an expired one: refused too.
    r = curl(s.http_port, "/get?key=a", *ca, "--cert", pki["mallory.crt"],
             "--key", pki["mallory.key"])
    assert r.returncode != 0
    r = curl(s.http_port, "/get?key=a", *ca, "--cert", pki["old.crt"],
             "--key", pki["old.key"])
    assert r.returncode != 0
    assert gh.wait_for(lambda: "certificate has expired" in s.read_log())
    log = s.read_log()
    # Each failure is logged with the peer's address, never a key.
    assert "http: TLS with 127.0.0.1:" in log
    assert "PRIVATE KEY" not in log
    r = curl(s.http_port, "/get?key=a", *ca, *mine)
    assert body_code(r)[1] == 200


def test_client_auth_optional(servers, pki):
    s = start(servers, pki, auth="optional")
    ca = ["--cacert", pki["ca.crt"]]
    r = curl(s.http_port, "/health", *ca)
    assert r.returncode == 0 and body_code(r)[1] == 200
    r = curl(s.http_port, "/health", *ca, "--cert", pki["alice.crt"],
             "--key", pki["alice.key"])
    assert r.returncode == 0 and body_code(r)[1] == 200
    r = curl(s.http_port, "/health", *ca, "--cert", pki["mallory.crt"],
             "--key", pki["mallory.key"])
    assert r.returncode != 0


def grpc_creds(pki, ca="ca.crt", cert=None):
    with open(pki[ca], "rb") as f:
        root = f.read()
    key = chain = None
    if cert:
        with open(pki[cert + ".key"], "rb") as f:
            key = f.read()
        with open(pki[cert + ".crt"], "rb") as f:
            chain = f.read()
    return grpc.ssl_channel_credentials(root_certificates=root,
                                        private_key=key,
                                        certificate_chain=chain)


def test_grpc_over_tls(servers, pki, tmp_path):
    s = start(servers, pki)
    st = gh.stubs(str(tmp_path))
    c = gh.Client(s.grpc_port, st, credentials=grpc_creds(pki))
    try:
        c.Set(st.kv.SetRequest(key="g1", value="v1"), timeout=10)
        assert c.Get(st.kv.GetRequest(key="g1"), timeout=10).value == "v1"
    finally:
        c.close()
    # A CA that did not sign the server's certificate.
    c = gh.Client(s.grpc_port, st, credentials=grpc_creds(pki,
                                                          "other-ca.crt"))
    try:
        code, _ = gh.rpc_error(c.Get, st.kv.GetRequest(key="g1"), timeout=5)
        assert code == grpc.StatusCode.UNAVAILABLE
    finally:
        c.close()
    # Plain h2c on the TLS port does not get through either.
    c = gh.Client(s.grpc_port, st)
    try:
        code, _ = gh.rpc_error(c.Get, st.kv.GetRequest(key="g1"), timeout=5)
        assert code == grpc.StatusCode.UNAVAILABLE
    finally:
        c.close()


def test_grpc_client_cert_required(servers, pki, tmp_path):
    s = start(servers, pki, auth="require")
    st = gh.stubs(str(tmp_path))
    c = gh.Client(s.grpc_port, st, credentials=grpc_creds(pki))
    try:
        code, _ = gh.rpc_error(c.Get, st.kv.GetRequest(key="x"), timeout=5)
        assert code == grpc.StatusCode.UNAVAILABLE
    finally:
        c.close()
    c = gh.Client(s.grpc_port, st,
                  credentials=grpc_creds(pki, cert="mallory"))
    try:
        code, _ = gh.rpc_error(c.Get, st.kv.GetRequest(key="x"), timeout=5)
        assert code == grpc.StatusCode.UNAVAILABLE
    finally:
        c.close()
    c = gh.Client(s.grpc_port, st, credentials=grpc_creds(pki, cert="alice"))
    try:
        c.Set(st.kv.SetRequest(key="x", value="y"), timeout=10)
        assert c.Get(st.kv.GetRequest(key="x"), timeout=10).value == "y"
    finally:
        c.close()


def s_client(port, *opts, stdin=""):
    return run("openssl", "s_client", "-connect", f"127.0.0.1:{port}",
               *opts, input=stdin)


def test_s_client_alpn_versions_resumption(servers, pki, tmp_path):
    s = start(servers, pki)
    r = s_client(s.grpc_port, "-alpn", "h2", "-CAfile", pki["ca.crt"],
                 "-verify_ip", "127.0.0.1")
    assert "ALPN protocol: h2" in r.stdout, r.stdout + r.stderr
    assert "Verify return code: 0 (ok)" in r.stdout
    r = s_client(s.http_port, "-alpn", "h2,http/1.1")
    assert "ALPN protocol: http/1.1" in r.stdout, r.stdout
    # TLS 1.2 is the least accepted: 1.1 and 1.0 are refused.
    r = s_client(s.http_port, "-tls1_2")
    assert "Protocol  : TLSv1.2" in r.stdout, r.stdout + r.stderr
    for old in ("-tls1_1", "-tls1"):
        r = s_client(s.http_port, old, "-cipher", "DEFAULT@SECLEVEL=0")
        assert r.returncode != 0
        assert "Cipher is (NONE)" in r.stdout or "alert" in r.stderr, \
            r.stdout + r.stderr
    # Session resumption (TLS 1.2 session cache).
    sess = str(tmp_path / "sess")
    r = s_client(s.http_port, "-tls1_2", "-sess_out", sess)
    assert r.returncode == 0
    r = s_client(s.http_port, "-tls1_2", "-sess_in", sess)
    assert "Reused, TLSv1.2" in r.stdout, r.stdout


def test_handshake_deadline(servers, pki):
    """A client that starts a handshake and stalls is closed after
    client-header-timeout, and the node is unharmed."""
    s = start(servers, pki, conf={"client-header-timeout": "300ms"})
    with socket.create_connection(("127.0.0.1", s.http_port),
                                  timeout=10) as sk:
        sk.sendall(b"\x16\x03\x01\x00\x80")  # a record header, no body
        t0 = time.time()
        assert sk.recv(100) == b""
        assert time.time() - t0 < 5
    assert "no handshake within" in s.read_log()
    assert s.request("GET", "/health")[0] == 200


class RawTLS:
    """TLS over a socket the test drives: handshake done, then requests, or
    raw bytes on the socket."""

    def __init__(self, port, ctx):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.i, self.o = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.t = ctx.wrap_bio(self.i, self.o, server_hostname="127.0.0.1")
        while True:
            try:
                self.t.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.flush()
                self.i.write(self.s.recv(65536))
        self.flush()

    def flush(self):
        d = self.o.read()
        if d:
            self.s.sendall(d)

    def request(self, r):
        self.t.write(r)
        self.flush()
        out = b""
        while b"\r\n\r\n" not in out:
            self.i.write(self.s.recv(65536))
            try:
                out += self.t.read(65536)
            except ssl.SSLWantReadError:
                pass
        return out


def test_trickled_records_do_not_hold_client_slots(servers, pki):
    """Clients that trickled a TLS record that never completes, a byte at a
    time, counted as active: at max-clients every new client was refused
    for as long as they went on. Only plaintext is activity now, so they
    are evicted first, as idle clients are."""
    s = start(servers, pki, conf={"max-clients": "4",
                                  "client-header-timeout": "2s"})
    ctx = client_ctx(pki)
    held = [RawTLS(s.http_port, ctx) for _ in range(4)]
    for h in held:
        assert h.request(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
                         ).startswith(b"HTTP/1.1 200")
    rec = b"\x17\x03\x03\x40\x00" + b"\x00" * 100  # announces 16 KiB
    served = 0
    for k in range(12):
        for h in held:
            try:
                h.s.sendall(rec[k:k + 1])
            except OSError:
                pass
        time.sleep(0.5)
        if k >= 3:  # the trickle has gone on for over a second
            try:
                served += s.request("GET", "/health", timeout=3)[0] == 200
            except OSError:
                pass
    assert served >= 6, served
    for h in held:
        h.s.close()


def test_pings_over_tls_are_no_progress_either(servers, pki):
    """As test_hostile_clients.py's PING test, over TLS: there each PING
    answer is some 40 bytes on the wire for 17 of HTTP/2, and the record's
    own bytes counted as the client reading."""
    from test_hostile_clients import PING_CONF, pings_without_a_window
    s = start(servers, pki, conf=PING_CONF)
    ctx = client_ctx(pki)
    ctx.set_alpn_protocols(["h2"])
    r = gh.RawH2(s.grpc_port, preface=False)
    r.sock = ctx.wrap_socket(r.sock, server_hostname="127.0.0.1")
    took = pings_without_a_window(s, r)
    assert took < 10, f"still open after {took:.1f} s of PINGs"
    assert "bytes of output not read for" in s.read_log()


def server_cert_serial(port, pki):
    ctx = client_ctx(pki)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sk:
        with ctx.wrap_socket(sk, server_hostname="127.0.0.1") as t:
            return t.getpeercert()["serialNumber"]


def test_reload_certificates(servers, pki):
    d = os.path.dirname(pki["ca.crt"])
    live_crt = os.path.join(d, "live.crt")
    live_key = os.path.join(d, "live.key")
    shutil.copy(pki["node1.crt"], live_crt)
    shutil.copy(pki["node1.key"], live_key)
    s = servers(conf={"tls-cert-file": live_crt, "tls-key-file": live_key},
                start=False)
    s.ssl_context = client_ctx(pki)
    s.start()
    first = server_cert_serial(s.http_port, pki)
    # A connection opened before the reload.
    keep = http.client.HTTPSConnection("127.0.0.1", s.http_port, timeout=10,
                                       context=client_ctx(pki))
    keep.request("GET", "/health")
    assert keep.getresponse().read() is not None
    shutil.copy(pki["node1b.crt"], live_crt)
    shutil.copy(pki["node1b.key"], live_key)
    s.signal(signal.SIGHUP)
    assert gh.wait_for(
        lambda: server_cert_serial(s.http_port, pki) != first)
    second = server_cert_serial(s.http_port, pki)
    # The old connection goes on with its session.
    keep.request("GET", "/health")
    assert keep.getresponse().status == 200
    keep.close()
    # A bad new key (another key than the certificate's): refused with a
    # log line, the material in force stays.
    shutil.copy(pki["node1.key"], live_key)
    s.signal(signal.SIGHUP)
    assert gh.wait_for(
        lambda: "the certificates in force stay" in s.read_log())
    assert "the key is not the certificate's (key values mismatch)" \
        in s.read_log()
    assert server_cert_serial(s.http_port, pki) == second
    # An unreadable file: the same, with the cause, not the name of
    # OpenSSL's library ("PEM lib").
    with open(live_crt, "w") as f:
        f.write("not a certificate\n")
    s.signal(signal.SIGHUP)
    assert gh.wait_for(lambda: "no PEM data in the file (no start line); "
                       "the certificates in force stay" in s.read_log())
    assert "PEM lib" not in s.read_log()
    assert server_cert_serial(s.http_port, pki) == second
    assert s.request("GET", "/health")[0] == 200


def test_reload_long_certificate_path(servers, pki, tmp_path):
    """A reloaded path longer than 511 bytes is taken whole, not cut."""
    deep = os.path.join(str(tmp_path), *(["d" * 100] * 6))
    os.makedirs(deep)
    crt, key = os.path.join(deep, "node.crt"), os.path.join(deep, "node.key")
    assert len(crt) > 600
    shutil.copy(pki["node1b.crt"], crt)
    shutil.copy(pki["node1b.key"], key)
    s = servers(conf=tls_conf(pki), start=False)
    s.ssl_context = client_ctx(pki)
    s.start()
    first = server_cert_serial(s.http_port, pki)
    s.conf["tls-cert-file"], s.conf["tls-key-file"] = crt, key
    s.write_conf()
    s.signal(signal.SIGHUP)
    assert gh.wait_for(lambda: "reloaded:" in s.read_log())
    assert gh.wait_for(
        lambda: server_cert_serial(s.http_port, pki) != first)
    assert "the certificates in force stay" not in s.read_log()
    assert s.request("GET", "/health")[0] == 200


def test_reload_summary_counts_tls_failures(servers, pki, tmp_path):
    """TLS files that do not load on a reload are counted as failed, not
    applied (nor "nothing changed"), and a refused path is not taken into
    the running configuration: the next reload tries it again."""
    crt, key = str(tmp_path / "live.crt"), str(tmp_path / "live.key")
    shutil.copy(pki["node1.crt"], crt)
    shutil.copy(pki["node1.key"], key)
    s = servers(conf={"tls-cert-file": crt, "tls-key-file": key,
                      "log-level": "info"}, start=False)
    s.ssl_context = client_ctx(pki)
    s.start()
    serial = server_cert_serial(s.http_port, pki)

    def hup(update=None):
        start = len(s.read_log())
        if update:
            s.conf.update(update)
            s.write_conf()
        s.signal(signal.SIGHUP)
        assert gh.wait_for(lambda: "reloaded:" in s.read_log()[start:])
        return s.read_log()[start:]

    failed = ("0 changes applied, 1 failed (old TLS material kept), 0 need "
              "a restart")
    # a new path to a file that is not there, twice
    missing = str(tmp_path / "new.crt")
    for _ in range(2):
        new = hup({"tls-cert-file": missing})
        assert "the certificates in force stay" in new
        assert f"reloaded: {failed}" in new, new
    # the same names, the contents broken
    s.conf["tls-cert-file"] = crt
    s.write_conf()
    with open(crt, "w") as f:
        f.write("not a certificate\n")
    new = hup({"log-level": "debug"})
    assert ("reloaded: 1 change applied, 1 failed (old TLS material kept), "
            "0 need a restart") in new, new
    assert server_cert_serial(s.http_port, pki) == serial
    # the file appears at the new path: now it is a change, applied
    shutil.copy(pki["node1.crt"], missing)
    new = hup({"tls-cert-file": missing})
    assert "reloaded: 1 change applied, 0 need a restart" in new, new
    assert "the certificates in force stay" not in new
    assert s.request("GET", "/health")[0] == 200


def test_bad_files_refused_at_start(servers, pki, tmp_path):
    bad = tmp_path / "bad.pem"
    bad.write_text("garbage\n")
    s = servers(conf={"tls-cert-file": str(bad),
                      "tls-key-file": pki["node1.key"]}, start=False)
    s.start(wait=False)
    assert s.wait_exit() == 1
    assert ("TLS on http: cannot load " + str(bad) +
            ": no PEM data in the file (no start line)") in s.read_log()
    # a file not there: the system's reason, not OpenSSL's "system lib"
    gone = str(tmp_path / "gone.key")
    s3 = servers(name="node3", conf={"tls-cert-file": pki["node1.crt"],
                                     "tls-key-file": gone}, start=False)
    s3.start(wait=False)
    assert s3.wait_exit() == 1
    assert "cannot load " + gone + ": No such file or directory" \
        in s3.read_log()
    s2 = servers(name="node2", conf={"tls-cert-file": pki["node1.crt"]},
                 start=False)
    s2.start(wait=False)
    assert s2.wait_exit() == 1
    assert "must be set together" in s2.read_log()


def start_on_a_terminal(s):
    """Start s with a terminal of its own (a pty as its controlling
    terminal, as a server started by hand has), where OpenSSL asks for an
    encrypted key's passphrase unless told not to. Returns the pty's
    master side, which nothing ever types into."""
    master, slave = os.openpty()

    def own_terminal():
        os.setsid()
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)

    s.log = open(s.log_path, "ab")
    s.proc = subprocess.Popen([SERVER, s.conf_path] + s.args, stdin=slave,
                              stdout=s.log, stderr=s.log, env=s.env,
                              preexec_fn=own_terminal)
    s.proc.pz_signals = set()
    s.proc.pz_waited = False
    s.procs.append(s.proc)
    os.close(slave)
    return master


def test_encrypted_key_refused_without_asking(servers, pki, tmp_path):
    """A passphrase-protected key is refused at once, on SIGHUP and at
    start, also by a server with a terminal: OpenSSL would ask for the
    passphrase there and wait, holding the whole loop."""
    enc = str(tmp_path / "enc.key")
    r = subprocess.run(["openssl", "pkey", "-in", pki["node1.key"],
                        "-aes256", "-passout", "pass:secret", "-out", enc],
                       capture_output=True)
    assert r.returncode == 0, r.stderr
    live = str(tmp_path / "live.key")
    shutil.copy(pki["node1.key"], live)
    s = servers(conf=dict(tls_conf(pki), **{"tls-key-file": live}),
                start=False)
    s.ssl_context = client_ctx(pki)
    master = start_on_a_terminal(s)
    try:
        s.wait_ready()
        shutil.copy(enc, live)
        s.signal(signal.SIGHUP)
        assert gh.wait_for(lambda: "cannot load " + live + ": the key is "
                           "encrypted: give it without a passphrase"
                           in s.read_log()), s.read_log()
        assert s.request("GET", "/health", timeout=3)[0] == 200
        assert s.stop() == 0
    finally:
        os.close(master)
    master = start_on_a_terminal(s)
    try:
        assert s.wait_exit(10) == 1
    finally:
        os.close(master)
    assert s.read_log().count("the key is encrypted") >= 2


@pytest.fixture(scope="module")
def peer_pki(tmp_path_factory):
    """Node certificates naming node1..node3 from one cluster CA, and one
    for node3 from another CA; from the cluster CA too, certificates that
    name no member: mandi's made as a node's (DNS:mandi, client and server
    use) and a server-only one (DNS:web)."""
    d = str(tmp_path_factory.mktemp("peer-pki"))
    make(d, "ca")
    for n in ("node1", "node2", "node3"):
        make(d, "node", n, "127.0.0.1")
    make(d, "node", "mandi", "127.0.0.1")
    make(d, "server", "web", "127.0.0.1")
    make(d, "client", "alice")
    other = os.path.join(d, "other")
    make(other, "ca")
    make(other, "node", "node3", "127.0.0.1")
    return d


def peer_conf(d, cert):
    return {"peer-tls-cert-file": os.path.join(d, cert + ".crt"),
            "peer-tls-key-file": os.path.join(d, cert + ".key"),
            "peer-tls-ca-file": os.path.join(d, "ca.crt")}


def peer_cluster(servers, d, certs):
    from test_cluster import make_cluster
    nodes = make_cluster(servers, start=False)
    for s, cert in zip(nodes, certs):
        s.conf.update(peer_conf(d, cert))
        s.write_conf()
    for s in nodes:
        s.start(wait=False)
    return nodes


def test_peer_mutual_tls_cluster(servers, peer_pki):
    from test_cluster import leader_of, put, wait_value
    nodes = peer_cluster(servers, peer_pki, ["node1", "node2", "node3"])
    for s in nodes:
        s.wait_ready()
    leader = leader_of(nodes)
    assert put(leader, "pk", "pv")[0] == 204
    for s in nodes:
        wait_value(s, "pk", "pv")
    st = leader.status()
    assert st["role"] == "leader"
    for s in nodes:
        log = s.read_log()
        assert "connected to peer" in log
        assert "TLS with" not in log  # no handshake failed


def test_peer_tls_node_ids_that_look_like_ips(servers, tmp_path):
    """Node ids that read as IP addresses (not the nodes' addresses) are
    node names like any other: make-certs.sh puts DNS:ID in the
    certificate, and both the acceptor and the dialer look for exactly
    that, so the cluster elects a leader and replicates over peer TLS."""
    from test_cluster import leader_of, put, wait_value
    d = str(tmp_path / "pki")
    ids = ["10.0.0.5", "10.0.0.6", "127.0.0.9"]
    make(d, "ca")
    for i in ids:
        make(d, "node", i, "127.0.0.1")
        text = run("openssl", "x509", "-in", os.path.join(d, i + ".crt"),
                   "-noout", "-ext", "subjectAltName").stdout
        assert "DNS:" + i in text and "IP Address:" + i not in text, text
    nodes = [servers(i, start=False) for i in ids]
    spec = ",".join(f"{s.name}=127.0.0.1:{s.raft_port}" for s in nodes)
    for s in nodes:
        s.conf["initial-cluster"] = spec
        s.conf["raft-bootstrap"] = "no"
        s.conf.update(peer_conf(d, s.name))
        s.write_conf()
    for s in nodes:
        s.start(wait=False)
    leader = leader_of(nodes, timeout=20)
    assert put(leader, "ipk", "ipv")[0] == 204
    for s in nodes:
        wait_value(s, "ipk", "ipv")
    for s in nodes:
        log = s.read_log()
        assert "connected to peer" in log
        assert "does not name" not in log


def test_peer_certificate_must_name_the_member(servers, peer_pki):
    """node3 shows node2's certificate (the right CA, the wrong name): the
    others refuse it, and it refuses them; node1 and node2 go on."""
    from test_cluster import leader_of, put, wait_value
    nodes = peer_cluster(servers, peer_pki, ["node1", "node2", "node2"])
    n1, n2, n3 = nodes
    n1.wait_ready()
    n2.wait_ready()
    leader = leader_of([n1, n2])
    assert put(leader, "k", "v")[0] == 204
    wait_value(n1, "k", "v")
    wait_value(n2, "k", "v")
    assert gh.wait_for(lambda: "does not name the node it claims"
                       in n1.read_log() + n2.read_log(), timeout=10)
    # Dialing node3, node1 and node2 see a certificate for node2 answer,
    # and tell it nothing.
    import raft_wire as rw
    assert gh.wait_for(lambda: "its TLS certificate does not name node %d: "
                       "not sending it our handshake" % rw.node_id("node3")
                       in n1.read_log() + n2.read_log(), timeout=10)
    # And node3 is told it was refused.
    assert gh.wait_for(lambda: "refused us" in n3.read_log(), timeout=10)
    # node3 never got the data.
    st, _, body = n3.request("GET", "/get?key=k&consistency=stale")
    assert st == 404, (st, body)


def tls_answer_removed(port, cert, key, stop, hits):
    """Squats a Raft port with TLS and a certificate of the cluster's CA
    that names another member, answering every handshake with a REMOVED
    refusal."""
    import raft_wire as rw
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", port))
    ls.listen(16)
    ls.settimeout(0.2)
    f = rw.pb().Frame()
    f.handshake_reply.status = rw.REMOVED
    f.handshake_reply.version = 1
    f.handshake_reply.conf_index = (1 << 64) - 1
    f.handshake_reply.conf_term = (1 << 64) - 1
    reply = rw.frame(f)
    while not stop.is_set():
        try:
            c, _ = ls.accept()
        except socket.timeout:
            continue
        try:
            c.settimeout(2)
            t = ctx.wrap_socket(c, server_side=True)
            hdr = t.recv(4)
            if len(hdr) == 4:
                hits.append(1)
                t.sendall(reply)
            t.close()
        except OSError:
            pass
        c.close()
    ls.close()


def test_peer_refusal_needs_the_dialed_members_certificate(servers,
                                                           peer_pki):
    """Whoever holds a dead member's address and a certificate of the
    cluster's CA naming another node cannot make the nodes that dial it
    act on a REMOVED refusal: they send it no handshake to refuse."""
    import threading
    import raft_wire as rw
    from test_cluster import leader_of, put
    nodes = peer_cluster(servers, peer_pki, ["node1", "node2", "node3"])
    for s in nodes:
        s.wait_ready()
    leader = leader_of(nodes)
    dead = next(s for s in nodes if s is not leader)
    other = next(s for s in nodes if s is not leader and s is not dead)
    dead.kill()
    stop, hits = threading.Event(), []
    th = threading.Thread(target=tls_answer_removed, daemon=True, args=(
        dead.raft_port, os.path.join(peer_pki, other.name + ".crt"),
        os.path.join(peer_pki, other.name + ".key"), stop, hits))
    th.start()
    try:
        assert gh.wait_for(lambda: "its TLS certificate does not name node "
                           "%d: not sending it our handshake"
                           % rw.node_id(dead.name) in leader.read_log(),
                           timeout=15), leader.read_log()[-3000:]
    finally:
        stop.set()
        th.join(5)
    assert not hits
    for s in (leader, other):
        assert "says this node was removed" not in s.read_log()
        assert s.proc.poll() is None
    assert put(leader_of([leader, other]), "still", "here")[0] == 204


def test_peer_certificate_from_another_ca(servers, peer_pki):
    from test_cluster import leader_of
    nodes = peer_cluster(servers, peer_pki, ["node1", "node2", "node3"])
    n3 = nodes[2]
    n3.conf.update(peer_conf(os.path.join(peer_pki, "other"), "node3"))
    n3.conf["peer-tls-ca-file"] = os.path.join(peer_pki, "ca.crt")
    n3.write_conf()
    n3.stop()
    n3.start(wait=False)
    leader_of(nodes[:2])
    assert gh.wait_for(lambda: "raft: TLS with" in nodes[0].read_log()
                       + nodes[1].read_log(), timeout=10)
    st, _, _ = n3.request("GET", "/get?key=k&consistency=stale")
    assert st == 404


def tls_peer(port, d, cert):
    """A raft_wire.Peer over TLS with certificate `cert` of peer_pki."""
    import raft_wire as rw
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(os.path.join(d, "ca.crt"))
    ctx.check_hostname = False
    ctx.load_cert_chain(os.path.join(d, cert + ".crt"),
                        os.path.join(d, cert + ".key"))
    p = rw.Peer.__new__(rw.Peer)
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    p.sock = ctx.wrap_socket(raw)
    p.sock.settimeout(5)
    p.crc = False
    p.damage = None
    return p


def test_peer_certificate_alone_opens_nothing(servers, peer_pki):
    """A certificate of the cluster's CA that names no member (mandi's,
    with DNS:mandi) and no cluster token gets no Raft link, so what it
    would send (an APPEND of a higher term writing a key the client tokens
    refuse) never reaches Raft; presenting the token, such a dialer gets
    in as a member the node has not heard of yet, as without TLS (a node
    whose log is behind must hear from members added since). A
    server-only certificate cannot dial at all."""
    import raft_wire as rw
    d = peer_pki
    tokens = os.path.join(d, "tokens")
    with open(tokens, "w") as f:
        f.write("admin rw admin-token-0123456789\n")
    conf = peer_conf(d, "node1")
    conf["client-token-file"] = tokens
    conf["cluster-token"] = "peer-secret-0123456789"
    s = servers("node1", conf=conf)
    vid, cid = rw.identity(s)
    auth = {"Authorization": "Bearer admin-token-0123456789"}
    st0 = s.status()
    assert st0["role"] == "leader"
    p = tls_peer(s.raft_port, d, "mandi")
    mid = rw.node_id("mandi")
    r = p.handshake(node_id=mid, cluster_id=cid, name="mandi",
                    frame_crc=True)
    assert r is not None and r.status == rw.BAD_TOKEN, r
    assert r.node_id == 0 and r.name == ""
    # Whatever it sends now goes nowhere: the link is closed.
    T, L = st0["term"], st0["last_index"]
    cmd = bytes([0x11, 6]) + b"secret" + bytes([3]) + b"bad"
    try:
        p.message(type=rw.APPEND, to=vid, term=T + 1, index=L, log_term=T,
                  commit=L + 1, entries=[{"term": T + 1, "index": L + 1,
                                          "type": rw.NORMAL, "data": cmd}],
                  **{"from": mid})
    except OSError:
        pass
    assert p.closed_by_peer()
    p.close()
    time.sleep(0.5)
    st1 = s.status()
    assert (st1["role"], st1["term"]) == ("leader", T), st1
    assert s.request("GET", "/get?key=secret", headers=auth)[0] == 404
    assert "accepted node" not in s.read_log()
    # A server-only certificate is refused in the TLS handshake: no reply.
    q = tls_peer(s.raft_port, d, "web")
    try:
        r = q.handshake(node_id=rw.node_id("web"), cluster_id=cid, name="web")
    except OSError:
        r = None
    q.close()
    assert r is None, r
    assert gh.wait_for(lambda: "unsuitable certificate purpose"
                       in s.read_log(), timeout=5), s.read_log()[-3000:]
    # Presenting the token, such a dialer is let in as a member the node
    # has not heard of yet, as without TLS.
    p = tls_peer(s.raft_port, d, "mandi")
    r = p.handshake(node_id=mid, cluster_id=cid, name="mandi",
                    token="peer-secret-0123456789")
    assert r is not None and r.status == rw.OK, r
    p.close()
    assert gh.wait_for(lambda: "(not in our configuration: a member we have "
                       "not heard of yet?)" in s.read_log(), timeout=5)


def tls_squat(port, cert, key, ca, stop, got):
    """Listens at a member's Raft address with a certificate of the
    cluster's CA that does not name it, requiring the dialer's certificate
    as a node would; records what each dialer sends after the TLS
    handshake (its cluster token would be in it)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", port))
    ls.listen(16)
    ls.settimeout(0.2)
    while not stop.is_set():
        try:
            c, _ = ls.accept()
        except socket.timeout:
            continue
        try:
            c.settimeout(3)
            t = ctx.wrap_socket(c, server_side=True)
            data = b""
            while True:
                chunk = t.recv(4096)
                if not chunk:
                    break
                data += chunk
            got.append(data)
            t.close()
        except (OSError, ssl.SSLError):
            got.append(None)  # TLS failed or timed out
        c.close()
    ls.close()


def test_peer_handshake_only_to_the_dialed_member(servers, peer_pki):
    """With peer TLS and a cluster token, a node dialing a member whose
    address someone else holds, with a certificate of the cluster's CA
    that names another host, sends it nothing after the TLS handshake:
    not the transport handshake, not the token in it."""
    import threading
    import raft_wire as rw
    from test_cluster import make_cluster
    d = peer_pki
    n1, n2 = make_cluster(servers, n=2, start=False)
    for s in (n1, n2):
        s.conf.update(peer_conf(d, s.name))
        s.conf["cluster-token"] = "the-cluster-secret-0123456789"
        s.write_conf()
    stop, got = threading.Event(), []
    th = threading.Thread(target=tls_squat, daemon=True, args=(
        n2.raft_port, os.path.join(d, "web.crt"), os.path.join(d, "web.key"),
        os.path.join(d, "ca.crt"), stop, got))
    th.start()
    try:
        n1.start(wait=False)
        n1.wait_ready()
        assert gh.wait_for(lambda: len(got) >= 2, timeout=20), got
    finally:
        stop.set()
        th.join(5)
    # Dropped as soon as its TLS handshake was done: not a byte of data.
    assert all(not g for g in got), got
    assert gh.wait_for(lambda: "its TLS certificate does not name node %d: "
                       "not sending it our handshake" % rw.node_id(n2.name)
                       in n1.read_log(), timeout=5), n1.read_log()[-3000:]
    assert "TLS with" not in n1.read_log()  # the TLS handshake itself passed


def test_peer_tls_cluster_grows_without_a_token(servers, mandi, peer_pki):
    """Peer TLS and no cluster token (on loopback, where a node may run
    without one): nodes join through mandi, the cluster replicates, and
    it fails over to a leader among the nodes that joined."""
    from test_cluster import leader_of, put, wait_value
    from test_join import start_joining, wait_voters
    d = peer_pki
    first = servers("node1", conf=dict(peer_conf(d, "node1"),
                                       **{"mandi-addr": mandi.url}))
    nodes = [first] + [start_joining(servers, mandi, n, peer_conf(d, n))
                       for n in ("node2", "node3")]
    wait_voters(first, [s.name for s in nodes])
    leader = leader_of(nodes)
    assert put(leader, "grown", "yes")[0] == 204
    for s in nodes:
        wait_value(s, "grown", "yes")
    leader.stop()
    rest = [s for s in nodes if s is not leader]
    new = leader_of(rest, timeout=15)
    assert put(new, "after", "failover")[0] == 204
    for s in rest:
        wait_value(s, "after", "failover")
    for s in nodes:
        assert "TLS with" not in s.read_log()


def test_peer_tls_does_not_replace_the_token(tmp_path, peer_pki):
    """A raft-addr others can reach needs a cluster token, peer mTLS or
    not: the token is what lets in a node the configuration does not name
    yet, and a certificate of the peer CA alone must not."""
    from conftest import SERVER
    base = [SERVER, "--test-config", "/dev/null", "--raft-addr",
            "10.1.2.3:12000", "--raft-data", str(tmp_path / "d")]
    r = run(*base)
    assert r.returncode != 0
    assert "'cluster-token' is not set" in r.stderr + r.stdout
    conf = peer_conf(peer_pki, "node1")
    extra = [a for k, v in conf.items() for a in ("--" + k, v)]
    r = run(*base, *extra)
    assert r.returncode != 0
    assert "'cluster-token' is not set" in r.stderr + r.stdout
    r = run(*base, *extra, "--cluster-token", "peer-secret-0123456789")
    assert r.returncode == 0, r.stderr + r.stdout
    r = run(*base, *extra[:2], "--cluster-token", "peer-secret-0123456789")
    assert r.returncode != 0
    assert "must be set together" in r.stderr + r.stdout


def test_secure_cluster_forwards_over_tls(servers, peer_pki, tmp_path):
    """TLS everywhere, client certificates required: a follower forwards
    HTTP writes and gRPC calls to the leader over TLS, showing its own
    certificate."""
    from test_cluster import make_cluster, leader_of, wait_value
    d = peer_pki
    nodes = make_cluster(servers, start=False)
    ctx = ssl.create_default_context(cafile=os.path.join(d, "ca.crt"))
    ctx.load_cert_chain(os.path.join(d, "alice.crt"),
                        os.path.join(d, "alice.key"))
    for s in nodes:
        s.conf.update(peer_conf(d, s.name))
        s.conf.update({"tls-cert-file": os.path.join(d, s.name + ".crt"),
                       "tls-key-file": os.path.join(d, s.name + ".key"),
                       "tls-ca-file": os.path.join(d, "ca.crt"),
                       "tls-client-auth": "require"})
        s.write_conf()
        s.ssl_context = ctx
    for s in nodes:
        s.start(wait=False)
    for s in nodes:
        s.wait_ready()
    leader = leader_of(nodes)
    follower = next(s for s in nodes if s is not leader)
    r = run("curl", "-sS", "--max-time", "10", "-o", "-", "-w", "%{http_code}",
            "--cacert", os.path.join(d, "ca.crt"),
            "--cert", os.path.join(d, "alice.crt"),
            "--key", os.path.join(d, "alice.key"),
            "-X", "POST", "--data-binary", '{"key":"fk","value":"fv"}',
            f"https://127.0.0.1:{follower.http_port}/set")
    assert r.stdout == "204", r.stdout + r.stderr
    for s in nodes:
        wait_value(s, "fk", "fv")
    st = gh.stubs(str(tmp_path))
    with open(os.path.join(d, "ca.crt"), "rb") as f:
        root = f.read()
    with open(os.path.join(d, "alice.key"), "rb") as f:
        key = f.read()
    with open(os.path.join(d, "alice.crt"), "rb") as f:
        crt = f.read()
    creds = grpc.ssl_channel_credentials(root, key, crt)
    c = gh.Client(follower.grpc_port, st, credentials=creds)
    try:
        c.Set(st.kv.SetRequest(key="gk", value="gv"), timeout=10)
    finally:
        c.close()
    for s in nodes:
        wait_value(s, "gk", "gv")


def test_cli_over_tls(servers, pki):
    s = start(servers, pki, auth="require")
    cli = os.path.join(ROOT, "src", "pyazdb-cli")
    g = ["--addr", f"127.0.0.1:{s.grpc_port}", "--timeout", "5"]
    tls = ["--cacert", pki["ca.crt"], "--cert", pki["alice.crt"],
           "--key", pki["alice.key"]]
    r = run(cli, *g, *tls, "set", "ck", "cv")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "Set 'ck' = 'cv'"
    r = run(cli, *g, *tls, "get", "ck")
    assert (r.returncode, r.stdout.strip()) == (0, "cv"), r.stderr
    # HTTPS commands.
    h = ["--http", f"127.0.0.1:{s.http_port}", "--timeout", "5"]
    r = run(cli, *h, *tls, "list", "c")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ck\tcv"
    # No client certificate, the wrong CA, plain text: each fails (the
    # CLI retries until its --timeout: 1 s is enough to see it fail)
    f = ["--addr", f"127.0.0.1:{s.grpc_port}", "--timeout", "1"]
    r = run(cli, *f, "--cacert", pki["ca.crt"], "get", "ck")
    assert r.returncode == 1 and r.stdout == ""
    r = run(cli, *f, "--cacert", pki["other-ca.crt"], "--cert",
            pki["alice.crt"], "--key", pki["alice.key"], "get", "ck")
    assert r.returncode == 1 and r.stdout == ""
    r = run(cli, *f, "get", "ck")
    assert r.returncode == 1 and r.stdout == ""
    r = run(cli, *g, "--cert", pki["alice.crt"], "get", "ck")
    assert r.returncode == 1 and "--cert and --key" in r.stderr
    r = run(cli, *g, "--cacert", "/nonexistent.pem", "get", "ck")
    assert r.returncode == 1 and "/nonexistent.pem" in r.stderr


def test_reload_under_load_fails_no_request(servers, pki):
    """Clients keep making new TLS connections and requests while the
    certificates are reloaded again and again: none fails."""
    import threading
    d = os.path.dirname(pki["ca.crt"])
    crt = os.path.join(d, "load.crt")
    key = os.path.join(d, "load.key")
    shutil.copy(pki["node1.crt"], crt)
    shutil.copy(pki["node1.key"], key)
    s = servers(name="loaded", conf={"tls-cert-file": crt,
                                     "tls-key-file": key}, start=False)
    s.ssl_context = client_ctx(pki)
    s.start()
    stop = threading.Event()
    errors, done = [], [0]

    def client(n):
        i = 0
        while not stop.is_set():
            try:
                body = json.dumps({"key": f"r{n}-{i}", "value": "x"})
                st, _, _ = s.request("POST", "/set", body=body, timeout=10)
                if st != 204:
                    errors.append(st)
                done[0] += 1
            except Exception as e:  # noqa: BLE001 - any failure counts
                errors.append(repr(e))
            i += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    try:
        for k in range(6):
            # Requests on both sides of every reload.
            target = done[0] + 5
            assert gh.wait_for(lambda: done[0] >= target or errors,
                               timeout=20)
            src = "node1b" if k % 2 == 0 else "node1"
            shutil.copy(pki[src + ".crt"], crt + ".new")
            shutil.copy(pki[src + ".key"], key + ".new")
            os.replace(key + ".new", key)
            os.replace(crt + ".new", crt)
            before = s.read_log().count("TLS on http: certificates read")
            s.signal(signal.SIGHUP)
            assert gh.wait_for(lambda: s.read_log().count(
                "TLS on http: certificates read") > before, timeout=10)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    assert done[0] >= 30


# Run inside a network namespace of its own (unshare -n), where 192.0.2.1
# is an address of the (namespace's) machine other than loopback.
PROTECTED_PROBE = r'''
import json, os, socket, subprocess, sys, time, urllib.request
server, d, extra = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
subprocess.run(["ip", "addr", "add", "192.0.2.1/32", "dev", "lo"],
               check=True)
log = open(os.path.join(d, "server.log"), "wb")
p = subprocess.Popen([server, "--node-id", "pm", "--raft-bootstrap", "yes",
                      "--raft-data", os.path.join(d, "data"),
                      "--http-addr", "0.0.0.0:18080",
                      "--grpc-addr", "0.0.0.0:19090",
                      "--raft-addr", "127.0.0.1:12000",
                      "--mandi-addr", "none"] + extra,
                     stdout=log, stderr=log)
out = {}
try:
    for _ in range(200):
        try:
            urllib.request.urlopen("http://127.0.0.1:18080/health",
                                   timeout=1)
            break
        except OSError:
            time.sleep(0.05)
    def http(host):
        s = socket.create_connection((host, 18080), timeout=5)
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n"
                  b"Connection: close\r\n\r\n")
        data = b""
        while True:
            b = s.recv(4096)
            if not b:
                break
            data += b
        s.close()
        return data.decode(errors="replace")
    out["loopback"] = http("127.0.0.1")
    out["other"] = http("192.0.2.1")
    s = socket.create_connection(("192.0.2.1", 19090), timeout=5)
    s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00"
              b"\x00\x00\x00")
    data = b""
    s.settimeout(1)  # a served client's connection stays open
    while True:
        try:
            b = s.recv(4096)
        except socket.timeout:
            break
        if not b:
            break
        data += b
    out["grpc"] = data.hex()
finally:
    p.terminate()
    p.wait(10)
print(json.dumps(out))
'''


def protected_probe(tmp_path, extra):
    from conftest import SERVER
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs unshare and ip")
    r = run("unshare", "-n", "/usr/bin/python3", "-c", PROTECTED_PROBE,
            SERVER, str(tmp_path), json.dumps(extra))
    if r.returncode != 0 and "Operation not permitted" in r.stderr:
        pytest.skip("cannot make a network namespace here")
    assert r.returncode == 0, r.stderr
    with open(tmp_path / "server.log", errors="replace") as f:
        log = f.read()
    for mark in ("AddressSanitizer", "runtime error:", "LeakSanitizer"):
        assert mark not in log, log
    return json.loads(r.stdout), log


def test_protected_mode(tmp_path):
    out, log = protected_probe(tmp_path, [])
    assert out["loopback"].startswith("HTTP/1.1 200"), out
    assert out["other"].startswith("HTTP/1.1 403"), out
    assert "protected mode" in out["other"]
    assert "protected-mode no" in out["other"]
    g = bytes.fromhex(out["grpc"])
    # SETTINGS, then GOAWAY (type 7) with INADEQUATE_SECURITY (0xc) and
    # the line as debug data.
    assert g[3] == 4 and g[9 + 3] == 7, g
    assert int.from_bytes(g[9 + 9 + 4:9 + 9 + 8], "big") == 0xc
    assert b"protected-mode no" in g
    assert "refusing 192.0.2.1:" in log
    assert "protected mode: HTTP and gRPC serve clients on loopback" in log


def test_protected_mode_off(tmp_path):
    out, _ = protected_probe(tmp_path, ["--protected-mode", "no"])
    assert out["other"].startswith("HTTP/1.1 200"), out
    # An HTTP/2 server preface (SETTINGS), no GOAWAY.
    g = bytes.fromhex(out["grpc"])
    assert g[3] == 4 and b"protected" not in g


def read_until(p, want, got=b""):
    """Lines of p's stdout added to got until want is in it."""
    while want not in got:
        line = p.stdout.readline()
        assert line, p.stderr.read()
        got += line
    return got


def test_watch_stream_over_https(servers, pki):
    """A long-lived Server-Sent Events stream over TLS: every change
    arrives while the stream stays open."""
    s = start(servers, pki)
    p = subprocess.Popen(["curl", "-sS", "-N", "--max-time", "20",
                          "--cacert", pki["ca.crt"],
                          f"https://127.0.0.1:{s.http_port}/watch?key=w"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        got = b""
        for i in range(3):
            # The stream must be open before the write: wait for
            # "created" first.
            want = b"event: created" if i == 0 else f"v{i - 1}".encode()
            got = read_until(p, want, got)
            body = json.dumps({"key": "w", "value": f"v{i}"})
            assert s.request("POST", "/set", body=body)[0] == 204
        read_until(p, b"v2", got)
    finally:
        p.kill()
        p.wait()


def test_cli_watch_over_https(servers, pki):
    """pyazdb-cli watch follows the event stream over HTTPS, with a client
    certificate, and refuses a node its CA does not vouch for."""
    s = start(servers, pki, auth="require")
    cli = os.path.join(ROOT, "src", "pyazdb-cli")
    h = ["--http", f"127.0.0.1:{s.http_port}"]
    tls = ["--cacert", pki["ca.crt"], "--cert", pki["alice.crt"],
           "--key", pki["alice.key"]]
    p = subprocess.Popen([cli, *h, *tls, "watch", "--prefix", "tw/"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # Writes until the first is seen: the stream may start after it.
        got = b""
        deadline = time.monotonic() + 20
        i = 0
        while b"PUT tw/a = " not in got:
            assert time.monotonic() < deadline, got
            body = json.dumps({"key": "tw/a", "value": f"v{i}"})
            assert s.request("POST", "/set", body=body)[0] == 204
            i += 1
            r, _, _ = select.select([p.stdout], [], [], 0.5)
            if r:
                line = p.stdout.readline()
                assert line, p.stderr.read()
                got += line
        body = json.dumps({"key": "tw/b", "value": "last"})
        assert s.request("POST", "/set", body=body)[0] == 204
        read_until(p, b"PUT tw/b = last", got)
    finally:
        p.kill()
        p.wait()
    # The wrong CA: the handshake fails and the CLI says so (it keeps
    # retrying, as it does for any node it cannot reach).
    p = subprocess.Popen([cli, *h, "--cacert", pki["other-ca.crt"], "--cert",
                          pki["alice.crt"], "--key", pki["alice.key"],
                          "watch", "tw/a"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = p.stderr.readline()
        assert b"TLS" in line and b"certificate" in line, line
    finally:
        p.kill()
        p.wait()
    assert p.stdout.read() == b""


def test_cli_snapshot_save_over_https(servers, pki, tmp_path):
    """pyazdb-cli snapshot save downloads and verifies a backup over
    HTTPS; without the CA's trust it refuses and leaves no file."""
    s = start(servers, pki, auth="require",
              conf={"cluster-token": "snaptoken"})
    assert s.request("POST", "/set",
                     body=json.dumps({"key": "sk", "value": "sv"}))[0] == 204
    cli = os.path.join(ROOT, "src", "pyazdb-cli")
    h = ["--http", f"127.0.0.1:{s.http_port}", "--timeout", "10",
         "--token", "snaptoken"]
    cert = ["--cert", pki["alice.crt"], "--key", pki["alice.key"]]
    out = str(tmp_path / "b.snap")
    r = run(cli, *h, "--cacert", pki["ca.crt"], *cert, "snapshot", "save",
            out)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Saved snapshot at index ") and \
        "(1 keys" in r.stdout, r.stdout
    assert os.path.getsize(out) > 0 and not os.path.exists(out + ".part")
    bad = str(tmp_path / "bad.snap")
    r = run(cli, *h, "--cacert", pki["other-ca.crt"], *cert, "snapshot",
            "save", bad)
    assert r.returncode == 1 and "TLS" in r.stderr, r.stderr
    assert not os.path.exists(bad) and not os.path.exists(bad + ".part")
    # Plain text to the HTTPS port: a clear failure too.
    r = run(cli, *h, "snapshot", "save", bad)
    assert r.returncode == 1 and not os.path.exists(bad), r.stderr


# --- mandi over HTTPS -----------------------------------------------------------

def https_mandi(mandis, pki, conf=None):
    m = mandis(start=False)
    m.url = f"https://127.0.0.1:{m.port}"
    m.conf.update({"mandi-addr": m.url, "tls-cert-file": pki["node1.crt"],
                   "tls-key-file": pki["node1.key"]})
    m.conf.update(conf or {})
    m.write_conf()
    m.ssl_context = client_ctx(pki)
    return m.start()


def test_mandi_https_cluster(servers, mandis, pki):
    """Mandi serves HTTPS; three nodes find it, bootstrap and join through
    it, verifying its certificate with mandi-ca-file."""
    from test_cluster import leader_of, put, wait_value
    from test_join import grow
    m = https_mandi(mandis, pki, {"cluster-token": "mandi-secret"})
    r = curl(m.port, "/leader", "--cacert", pki["ca.crt"])
    assert r.returncode == 0 and r.stdout.endswith("\n404"), r.stdout
    # plain HTTP gets no answer from it, and an unknown CA is refused
    r = run("curl", "-sS", "--max-time", "5", f"http://127.0.0.1:{m.port}/")
    assert r.returncode != 0
    r = curl(m.port, "/leader", "--cacert", pki["other-ca.crt"])
    assert r.returncode != 0
    nodes = grow(servers, m, conf={"mandi-ca-file": pki["ca.crt"],
                                   "cluster-token": "mandi-secret"})
    leader = leader_of(nodes)
    r = curl(m.port, "/leader", "--cacert", pki["ca.crt"])
    body, _, code = r.stdout.rpartition("\n")
    assert code == "200" and json.loads(body)["id"] == leader.name
    assert put(nodes[2], "via", "https-mandi")[0] == 204
    for s in nodes:
        wait_value(s, "via", "https-mandi")


def test_mandi_https_wrong_ca(servers, mandis, pki):
    """A node that does not trust mandi's certificate never talks to it."""
    m = https_mandi(mandis, pki)
    s = servers("node1", conf={"mandi-addr": m.url,
                               "mandi-ca-file": pki["other-ca.crt"]})
    assert gh.wait_for(lambda: "mandi at 127.0.0.1" in s.read_log()
                       and "certificate" in s.read_log(), timeout=15), \
        s.read_log()
    st, _, _ = m.request("GET", "/leader")
    assert st == 404


def test_protected_mode_with_tokens(tmp_path):
    """A token file counts as client authentication: the node serves other
    addresses, and a data request from there still needs a token."""
    path = tmp_path / "tokens"
    path.write_text("app rw app-token-0123456789\n")
    out, log = protected_probe(tmp_path, ["--client-token-file", str(path)])
    assert out["other"].startswith("HTTP/1.1 200"), out
    assert "protected mode: HTTP and gRPC serve clients on loopback" \
        not in log


def test_cli_through_https_mandi(servers, mandis, pki):
    """pyazdb-cli finds the leader through an https mandi (--cacert trusts
    it and the node), then talks gRPC over TLS to the node."""
    m = https_mandi(mandis, pki)
    c = tls_conf(pki)
    c.update({"tls-ca-file": pki["ca.crt"], "mandi-addr": m.url})
    s = servers(conf=c, start=False)
    s.ssl_context = client_ctx(pki)
    s.start()
    assert gh.wait_for(lambda: m.request("GET", "/leader")[0] == 200,
                       timeout=15)
    r = run(gh.CLI, "--mandi", m.url, "--cacert", pki["ca.crt"], "set", "k",
            "via-mandi")
    assert r.returncode == 0, r.stderr
    r = run(gh.CLI, "--mandi", m.url, "--cacert", pki["ca.crt"], "get", "k")
    assert r.returncode == 0 and r.stdout.strip() == "via-mandi", r.stderr
    # a mandi whose certificate the CLI does not trust
    r = run(gh.CLI, "--mandi", m.url, "--cacert", pki["other-ca.crt"],
            "--timeout", "2", "get", "k")
    assert r.returncode != 0 and "leader discovery" in r.stderr, r.stderr
