"""pyazdb-cli against a real node (--addr) and through a stub mandi (a tiny
HTTP server in this process answering GET /leader), with the output and
exit codes of the original kv-cli (COMPAT.md)."""
import http.server
import json
import os
import re
import socket
import subprocess
import threading
import time
import urllib.parse

import pytest

from grpc_helpers import CLI


def cli(*args, env=None, timeout=20):
    e = dict(os.environ)
    e.pop("MANDI_ADDR", None)
    e.update(env or {})
    p = subprocess.run([CLI] + list(args), capture_output=True, env=e,
                       timeout=timeout)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


@pytest.fixture
def node(servers):
    return servers()


def addr(node):
    return f"127.0.0.1:{node.grpc_port}"


def test_set_get_delete_with_addr(node):
    a = ["--addr", addr(node)]
    assert cli(*a, "set", "greeting", "hello world") == (
        0, "Set 'greeting' = 'hello world'\n", "")
    assert cli(*a, "get", "greeting") == (0, "hello world\n", "")
    assert cli(*a, "delete", "greeting") == (0, "Deleted 'greeting'\n", "")
    assert cli(*a, "get", "greeting") == (
        1, "Key 'greeting' not found\n", "")
    # deleting a missing key is fine
    assert cli(*a, "delete", "greeting")[0] == 0
    # the value written by the CLI is what HTTP sees
    cli(*a, "set", "k", "v=1 é")
    st, _, body = node.request("GET", "/get?key=k")
    assert st == 200 and body.decode() == "v=1 é"
    # option forms
    assert cli("--addr=" + addr(node), "--timeout=2", "get", "k") == (
        0, "v=1 é\n", "")
    assert cli("--timeout", "2", "--addr", addr(node), "get", "k")[0] == 0


def test_status_command(node):
    cli("--addr", addr(node), "set", "a", "1")
    code, out, err = cli("--addr", addr(node), "status")
    assert code == 0, err
    fields = dict(line.split(": ", 1) for line in out.splitlines()
                  if ": " in line)
    assert fields["id"] == "node1"
    assert fields["role"] == "leader"
    assert fields["leader"] == "node1"
    assert int(fields["term"]) >= 1
    assert int(fields["applied_index"]) >= 1
    assert int(fields["keys"]) == 1
    assert fields["addr"] == addr(node)


def test_output_json(node):
    """-o json: get, status and members print one JSON document; the exit
    codes are those of the text output."""
    a = ["--addr", addr(node)]
    assert cli(*a, "set", "k", 'say "hi"\n\té')[0] == 0
    for form in (["-o", "json"], ["--output", "json"], ["--output=json"]):
        code, out, err = cli(*a, *form, "get", "k")
        assert code == 0, err
        assert json.loads(out) == {"key": "k", "found": True,
                                   "value": 'say "hi"\n\té'}
    # after the command too
    code, out, _ = cli(*a, "get", "k", "-o", "json")
    assert code == 0 and json.loads(out)["value"] == 'say "hi"\n\té'
    # missing: found false, exit 1 as in text
    code, out, _ = cli(*a, "-o", "json", "get", "nope")
    assert code == 1
    assert json.loads(out) == {"key": "nope", "found": False}
    # bytes that are not UTF-8 travel as base64
    body = b'{"key":"bin","value":"\xff\\u0000a"}'
    st, _, _ = node.request("POST", "/set", body=body)
    assert st == 204
    code, out, _ = cli(*a, "-o", "json", "get", "bin")
    assert code == 0
    assert json.loads(out) == {"key": "bin", "found": True,
                               "value_b64": "/wBh"}
    p = subprocess.run([CLI, *a, "-o", "json", "get", b"\xfe"],
                       capture_output=True, timeout=20)
    assert p.returncode == 1
    assert json.loads(p.stdout) == {"key_b64": "/g==", "found": False}
    # status: the node's report with numbers as numbers
    code, out, err = cli(*a, "status", "-o", "json")
    assert code == 0, err
    st = json.loads(out)
    assert st["id"] == "node1" and st["role"] == "leader"
    assert st["leader"] == "node1" and st["addr"] == addr(node)
    assert isinstance(st["term"], int) and st["term"] >= 1
    assert st["keys"] == 2 and st["applied_index"] >= 3
    assert [m["id"] for m in st["members"]] == ["node1"]
    assert st["members"][0]["voter"] is True
    # members: an array
    code, out, err = cli("--http", f"127.0.0.1:{node.http_port}",
                         "members", "-o", "json")
    assert code == 0, err
    ms = json.loads(out)
    assert isinstance(ms, list) and len(ms) == 1
    assert ms[0]["id"] == "node1" and ms[0]["leader"] is True
    # text stays the default; bad formats and other commands are refused
    assert cli(*a, "-o", "text", "get", "k") == (0, 'say "hi"\n\té\n', "")
    code, out, err = cli(*a, "-o", "yaml", "get", "k")
    assert code == 1 and "bad output format 'yaml'" in err
    code, out, err = cli(*a, "get", "k", "-o")
    assert code == 1 and "bad output format '-o'" in err
    code, out, err = cli(*a, "-o", "json", "set", "k", "v")
    assert code == 1 and "only get, status, members, lease and watch" in err
    # "--" ends the options: a key named -o
    assert cli(*a, "set", "-o", "dash")[0] == 0
    assert cli(*a, "get", "--", "-o") == (0, "dash\n", "")


def test_rpc_errors_go_to_stderr(node):
    code, out, err = cli("--addr", addr(node), "set", "", "x")
    assert code == 1 and out == ""
    assert err.count("\n") == 1
    assert "INVALID_ARGUMENT" in err and "key is required" in err
    # nothing listens there: bound, never listening: connections are refused, and nobody else
    # can take the port while the CLI retries
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    code, out, err = cli("--addr", f"127.0.0.1:{port}", "--timeout", "1",
                         "get", "k")
    assert code == 1 and out == ""
    assert "UNAVAILABLE" in err and "connection refused" in err
    assert err.count("\n") == 1
    s.close()


def test_usage():
    code, out, err = cli("--help")
    assert code == 0 and out.startswith("Usage: pyazdb-cli")
    for args in ([], ["frobnicate"], ["get"], ["get", "a", "b"],
                 ["set", "k"], ["delete"], ["status", "x"],
                 ["--bogus", "get", "k"], ["--timeout", "0", "get", "k"],
                 ["--timeout", "abc", "get", "k"],
                 ["--mandi", "http://x:1", "--addr", "x:1", "get", "k"],
                 ["--addr"]):
        code, out, err = cli(*args)
        assert code == 1, args
        assert "Usage: pyazdb-cli" in out, args


class Mandi:
    """A stub mandi: GET /leader answers what the test sets."""

    def __init__(self):
        self.status = 200
        self.body = b""
        self.delay = 0
        self.hits = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.hits += 1
                if outer.delay:
                    time.sleep(outer.delay)
                if self.path != "/leader":
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(outer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body)

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                     Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       daemon=True)
        self.thread.start()

    def leader(self, grpc_addr):
        self.status = 200
        self.body = json.dumps({
            "id": "node1", "addr": "127.0.0.1:12000",
            "http_addr": "127.0.0.1:8080", "grpc_addr": grpc_addr,
            "term": 3, "updated_at": "2026-01-03T10:00:00Z"}).encode()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def mandi():
    m = Mandi()
    yield m
    m.close()


def test_through_mandi(node, mandi):
    mandi.leader(addr(node))
    assert cli("--mandi", mandi.url, "set", "m", "1") == (
        0, "Set 'm' = '1'\n", "")
    assert mandi.hits == 1
    # MANDI_ADDR from the environment
    assert cli("get", "m", env={"MANDI_ADDR": mandi.url}) == (0, "1\n", "")
    assert mandi.hits == 2
    # --mandi wins over the environment
    assert cli("--mandi", mandi.url, "get", "m",
               env={"MANDI_ADDR": "http://127.0.0.1:1"}) == (0, "1\n", "")
    # a grpc_addr given as ":port" or "localhost:port"
    mandi.leader(f":{node.grpc_port}")
    assert cli("--mandi", mandi.url, "get", "m")[0] == 0
    mandi.leader(f"localhost:{node.grpc_port}")
    assert cli("--mandi", mandi.url, "status")[0] == 0


def test_mandi_errors(node, mandi):
    mandi.status, mandi.body = 404, b"leader not available\n"
    code, out, err = cli("--mandi", mandi.url, "--timeout", "1", "get", "k")
    assert code == 1 and out == ""
    assert "no leader available" in err and err.count("\n") == 1
    mandi.status, mandi.body = 200, b"{not json"
    code, _, err = cli("--mandi", mandi.url, "get", "k")
    assert code == 1 and "grpc_addr" in err
    mandi.status, mandi.body = 200, b'{"id":"node1","grpc_addr":""}'
    code, _, err = cli("--mandi", mandi.url, "get", "k")
    assert code == 1 and "grpc_addr" in err
    mandi.status, mandi.body = 500, b"oops"
    code, _, err = cli("--mandi", mandi.url, "get", "k")
    assert code == 1 and "HTTP 500" in err
    # leader known but down
    # bound, never listening: connections are refused, and nobody else
    # can take the port while the CLI retries
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    mandi.leader(f"127.0.0.1:{port}")
    code, _, err = cli("--mandi", mandi.url, "--timeout", "1", "get", "k")
    assert code == 1 and "UNAVAILABLE" in err
    # mandi itself down (the default address when nothing is set is
    # 127.0.0.1:7000; use a closed port instead of relying on it)
    code, _, err = cli("--mandi", f"http://127.0.0.1:{port}", "--timeout",
                       "1", "get", "k")
    assert code == 1 and "discovery" in err and "refused" in err
    s.close()
    code, _, err = cli("--mandi", "ftp://127.0.0.1:1", "get", "k")
    assert code == 1 and "mandi address" in err
    # https is spoken (test_tls.py): a closed port is a discovery failure
    code, _, err = cli("--mandi", "https://127.0.0.1:1", "--timeout", "1",
                       "get", "k")
    assert code == 1 and "discovery" in err


def test_timeout_bounds_discovery(mandi):
    mandi.delay = 5
    mandi.leader("127.0.0.1:1")
    t0 = time.time()
    code, _, err = cli("--mandi", mandi.url, "--timeout", "0.5", "get", "k")
    took = time.time() - t0
    assert code == 1 and "timed out" in err
    assert took < 3, took


def test_timeout_bounds_the_call(node):
    # a "server" that accepts and never answers
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(5)
    try:
        t0 = time.time()
        code, _, err = cli("--addr", f"127.0.0.1:{s.getsockname()[1]}",
                           "--timeout", "0.5", "get", "k")
        took = time.time() - t0
        assert code == 1 and "DEADLINE_EXCEEDED" in err
        assert took < 3, took
    finally:
        s.close()


def cli_against_stub(status, body, args):
    """pyazdb-cli --http at a stub node whose every GET answers status
    with body: the CompletedProcess, output as bytes."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        return subprocess.run(
            [CLI, "--http", f"127.0.0.1:{httpd.server_address[1]}"] + args,
            capture_output=True, timeout=20)
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_node_strings_on_stdout_cannot_drive_the_terminal(pb):
    """status and members print what a node reports (its id, role,
    version, members' ids and addresses) on standard output: a control
    byte there is written \\xNN too, so that a node cannot clear the
    screen or retitle the terminal, and a field keeps its line and its
    column. A stub gRPC server answers Status, a stub HTTP server GET
    /cluster."""
    import grpc
    from concurrent import futures
    bad = "\x1b]0;owned\x07\x1b[2J\u009bx\r\t\u00e9"
    esc = "\\x1b]0;owned\\x07\\x1b[2J\\xc2\\x9bx\\x0d\\x09\u00e9"
    resp = pb.cluster.StatusResponse(
        id="n" + bad, role="leader" + bad, leader="l" + bad, term=7,
        version="v" + bad, leader_grpc_addr="g" + bad,
        members=[pb.cluster.Member(id="m" + bad, raft_addr="r" + bad,
                                   grpc_addr="c" + bad, voter=True)])
    handler = grpc.method_handlers_generic_handler("pyazdb.Cluster", {
        "Status": grpc.unary_unary_rpc_method_handler(
            lambda req, ctx: resp,
            request_deserializer=pb.cluster.StatusRequest.FromString,
            response_serializer=pb.cluster.StatusResponse.SerializeToString)})
    gs = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    gs.add_generic_rpc_handlers((handler,))
    port = gs.add_insecure_port("127.0.0.1:0")
    gs.start()
    try:
        code, out, err = cli("--addr", f"127.0.0.1:{port}", "status")
    finally:
        gs.stop(0)
    assert code == 0, err
    lines = out.splitlines()
    for want in (f"id: n{esc}", f"role: leader{esc}", f"leader: l{esc}",
                 f"leader_grpc_addr: g{esc}", f"version: v{esc}",
                 f"member: m{esc} raft=r{esc} grpc=c{esc} voter"):
        assert want in lines, (want, out)
    assert len(lines) == 13, out

    members = json.dumps({"members": [{
        "id": "m" + bad, "raft_addr": "r" + bad, "http_addr": "h" + bad,
        "grpc_addr": "c" + bad, "voter": True, "leader": True}]}).encode()

    p = cli_against_stub(200, members, ["members"])
    assert p.returncode == 0, p.stderr
    lines = p.stdout.decode().splitlines()
    assert len(lines) == 2, out
    assert lines[1].split() == [f"m{esc}", "yes", "yes", f"r{esc}",
                                f"h{esc}", f"c{esc}", "-", "-"], out


def test_server_text_cannot_drive_the_terminal():
    """What a server says reaches the user in our messages (here an HTTP
    error line): an escape sequence, a bell, a C1 CSI or a carriage return
    in it is written \\xNN, never as the byte; printable UTF-8 passes."""
    body = b"\x1b]0;owned\x07\x1b[2Jbad \xc2\x9bx \xc3\xa9\r\n"
    p = cli_against_stub(400, body, ["list", "p"])
    assert p.returncode == 1
    assert p.stderr == ("pyazdb-cli: list failed: HTTP 400: \\x1b]0;owned"
                        "\\x07\\x1b[2Jbad \\xc2\\x9bx \u00e9\\x0d\n"
                        ).encode(), p.stderr


class Stub:
    """A stub HTTP node in this process: every GET is handed to
    answer(handler) (a method of a subclass), which writes the reply; the
    paths asked are kept in order."""

    def __init__(self):
        self.paths = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.paths.append(self.path)
                outer.answer(self)

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                     Handler)
        self.httpd.daemon_threads = True
        self.addr = f"127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever,
                         daemon=True).start()

    def reply(self, h, status, body, headers=()):
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(body)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class PagingProxy(Stub):
    """Forwards GET /range to a real node with limit=2, so that a listing
    takes pages of two keys; before the second page it runs `between`."""

    def __init__(self, node, between=None):
        super().__init__()
        self.node, self.between = node, between

    def answer(self, h):
        if len(self.paths) == 2 and self.between:
            self.between()
        path = re.sub(r"limit=\d+", "limit=2", h.path)
        st, hdrs, body = self.node.request("GET", path)
        self.reply(h, st, body, [("X-Pyazdb-Revision",
                                  hdrs.get("X-Pyazdb-Revision", ""))])


def test_list_notes_a_change_between_pages(node):
    """list compares each page's revision with the first page's: a key
    moved from after a page boundary to before it between two pages is
    missed (a state that never existed), and the listing says so once on
    stderr and goes on, exit 0. Without a change the pages make the whole
    listing and nothing is said."""
    for k in "bdfh":
        st, _, _ = node.request("POST", "/set",
                                json.dumps({"key": "p/" + k, "value": k}))
        assert st == 204
    px = PagingProxy(node)
    try:
        code, out, err = cli("--http", px.addr, "list", "p/")
        assert (code, out, err) == (0, "p/b\tb\np/d\td\np/f\tf\np/h\th\n",
                                    ""), err
        assert len(px.paths) == 2 and "from=p%2Ff" in px.paths[1], px.paths
        rev = node.status()["revision"]

        def move():  # p/h becomes p/a, at one revision
            st, _, body = node.request("POST", "/txn", json.dumps({
                "compare": [], "success": [
                    {"delete": {"key": "p/h"}},
                    {"put": {"key": "p/a", "value": "h"}}]}))
            assert st == 200, body

        px.paths, px.between = [], move
        code, out, err = cli("--http", px.addr, "list", "p/")
        assert code == 0, (out, err)
        assert out == "p/b\tb\np/d\td\np/f\tf\n"
        assert err == ("pyazdb-cli: list: note: the keys changed during the "
                       f"listing (revision {rev}, then {rev + 1}): keys "
                       "written meanwhile may be missing or stale\n")
        # the state now, in one page or several
        px.between = None
        assert cli("--http", px.addr, "list", "p/", "--keys-only") == (
            0, "p/a\np/b\np/d\np/f\n", "")
    finally:
        px.close()


class BadNext(Stub):
    """/range answers whose `next` does not move forward."""

    def __init__(self, pages):
        super().__init__()
        self.pages = pages  # from= (None: the first page) -> answer

    def answer(self, h):
        m = re.search(r"[?&]from=([^&]*)", h.path)
        page = self.pages[urllib.parse.unquote(m.group(1)) if m else None]
        self.reply(h, 200, json.dumps(page).encode())


@pytest.mark.parametrize("case", ["same", "behind", "missing"])
def test_list_refuses_a_next_that_does_not_move(case):
    """A node answering more:true with a next that is not after the keys
    listed (the same key again, one behind) or no next at all would keep
    list going round until --timeout, or end it short without a word:
    the page is refused with one line on stderr and exit 1, at once."""
    kv = lambda k: {"key": k, "value": "v"}
    page1 = {"revision": 5, "kvs": [kv("p/a"), kv("p/b")], "count": 2,
             "more": True, "next": "p/c"}
    pages = {
        "same": {None: dict(page1, next="p/b")},
        "behind": {None: page1,
                   "p/c": {"revision": 5, "kvs": [kv("p/c")], "count": 1,
                           "more": True, "next": "p/a"}},
        "missing": {None: page1,
                    "p/c": {"revision": 5, "kvs": [kv("p/c")], "count": 1,
                            "more": True}},
    }[case]
    stub = BadNext(pages)
    try:
        t0 = time.time()
        code, out, err = cli("--http", stub.addr, "--timeout", "4", "list",
                             "p/")
        took = time.time() - t0
    finally:
        stub.close()
    assert code == 1, (out, err)
    assert err == ("pyazdb-cli: list: bad answer (more keys, but no next "
                   "key after the ones listed)\n")
    assert out == ("" if case == "same" else "p/a\tv\np/b\tv\n")
    assert len(stub.paths) == (1 if case == "same" else 2), stub.paths
    assert took < 2, took


class SSE(Stub):
    """A stub /watch: the n-th stream (from 0) sends streams[n] (SSE text)
    and ends; past the last one it waits, open, until closed."""

    def __init__(self, streams):
        super().__init__()
        self.streams = streams
        self.done = threading.Event()

    def answer(self, h):
        n = len(self.paths) - 1
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.end_headers()
        if n < len(self.streams):
            h.wfile.write(self.streams[n].encode())
            h.close_connection = True
            return
        h.wfile.write(b": hold\n\n")
        h.wfile.flush()
        self.done.wait(20)


def watch_lines(addr, args, until, timeout=10):
    """pyazdb-cli watch ARGS against addr, stopped once until() holds:
    (exit status, stdout, stderr)."""
    p = subprocess.Popen([CLI, "--http", addr, "watch"] + args,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + timeout
        while time.time() < deadline and p.poll() is None and not until():
            time.sleep(0.02)
    finally:
        if p.poll() is None:
            p.kill()
        out, err = p.communicate()
    return p.returncode, out.decode(), err.decode()


@pytest.mark.parametrize("rev", ["4611686018427387904", "18446744073709551615",
                                 "18446744073709551616",
                                 "99999999999999999999999", "+5", " 5"])
def test_watch_refuses_a_revision_out_of_range(rev):
    """--rev takes 1 to 2^62 - 1 (KV_REVISION_MAX, the most a node
    reaches): past it no event would ever come and the revision to resume
    at (the last one + 1) would wrap around; too big for 64 bits, it was
    read as 2^64 - 1. The refusal comes before any connection."""
    stub = SSE([])
    try:
        code, out, err = watch_lines(stub.addr,
                                     ["--prefix", "p/", "--rev", rev],
                                     lambda: bool(stub.paths), timeout=5)
    finally:
        stub.done.set()
        stub.close()
    assert stub.paths == []
    assert code == 1 and out == ""
    assert err.splitlines()[0] == (f"pyazdb-cli: bad --rev '{rev}' (a "
                                   "revision from 1 to 4611686018427387903)")
    # the highest revision is taken
    stub = SSE([])
    try:
        code, out, err = watch_lines(
            stub.addr, ["--prefix", "p/", "--rev", "4611686018427387903"],
            lambda: bool(stub.paths), timeout=5)
    finally:
        stub.done.set()
        stub.close()
    assert stub.paths == [
        "/watch?prefix=p%2F&start_revision=4611686018427387903"], err


def test_watch_resumes_after_the_last_revision_whatever_a_node_sends():
    """An event at a revision no node reaches (2^64 - 1 here) is a bad
    event: not printed, the stream ends, and the watch resumes after the
    last good revision. Taken, it made the last revision known the
    'unknown' mark, and the watch resumed at --rev again, printing what
    it had printed."""
    ev = ('id: {r}\ndata: {{"revision":{r},"events":[{{"type":"put",'
          '"kv":{{"key":"p/a","value":"{r}"}}}}]}}\n\n')
    created = 'event: created\ndata: {"revision":9,"start_revision":5}\n\n'
    stub = SSE([created + ev.format(r=7) + ev.format(r=2**64 - 1),
                created + ev.format(r=7)])
    try:
        code, out, err = watch_lines(
            stub.addr, ["--prefix", "p/", "--rev", "5"],
            lambda: len(stub.paths) >= 3)
    finally:
        stub.done.set()
        stub.close()
    assert out == "[7] PUT p/a = 7\n", err
    assert "bad event from the node" in err
    assert stub.paths[0] == "/watch?prefix=p%2F&start_revision=5"
    assert stub.paths[1] == ("/watch?prefix=p%2F&start_revision=8"
                             "&serializable=true"), stub.paths
