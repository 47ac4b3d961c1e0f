"""Mandi, the discovery service (pyazdb-server --mandi), against a real
process on 127.0.0.1: every endpoint and error of COMPAT.md's table, the
exact JSON shapes, expiry, stale terms, the cluster token, limits,
keep-alive and pipelining, restart and graceful shutdown; and attacks
from a client without the token: absurd terms, forged log lines, log
floods."""
import datetime
import json
import re
import signal
import socket
import time

import pytest

LEADER = {"id": "node1", "addr": "127.0.0.1:12000",
          "http_addr": "127.0.0.1:8080", "grpc_addr": "127.0.0.1:9090",
          "term": 3}


def put_leader(m, info, headers=None):
    return m.request("PUT", "/leader", json.dumps(info), headers)


def post_join(m, req, headers=None):
    return m.request("POST", "/join-requests", json.dumps(req), headers)


def get_json(m, path):
    st, h, body = m.request("GET", path)
    assert st == 200, (st, body)
    assert h["Content-Type"] == "application/json"
    assert body.endswith(b"\n")
    return json.loads(body)


def rfc3339(s):
    """Parses an RFC 3339 UTC timestamp; fails the test if it is not one."""
    assert s.endswith("Z"), s
    assert len(s) >= 20 and s[10] == "T", s
    return datetime.datetime.fromisoformat(s[:-1] + "+00:00")


def near_now(ts, slack=10):
    now = datetime.datetime.now(datetime.timezone.utc)
    return abs((rfc3339(ts) - now).total_seconds()) < slack


def raw(m, data, timeout=5):
    """Sends raw bytes; returns everything read until mandi closes the
    connection, and fails if it has not closed it within the timeout
    (every caller expects the close)."""
    with socket.create_connection(("127.0.0.1", m.port),
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
            raise AssertionError(f"mandi did not close the connection "
                                 f"within {timeout} s; it sent {out[:300]!r}")


# --- /leader -------------------------------------------------------------

def test_leader_unknown_then_put_then_get(mandi):
    st, h, body = mandi.request("GET", "/leader")
    assert st == 404 and body == b"leader not available\n"
    assert h["Content-Type"].startswith("text/plain")
    st, _, body = put_leader(mandi, LEADER)
    assert st == 204 and body == b""
    st, h, body = mandi.request("GET", "/leader")
    assert st == 200
    got = json.loads(body)
    # Exactly COMPAT's LeaderInfo, in its order, updated_at set by mandi.
    assert list(got) == ["id", "addr", "http_addr", "grpc_addr", "term",
                         "updated_at"]
    assert {k: got[k] for k in LEADER} == LEADER
    assert near_now(got["updated_at"])
    assert body.startswith(b'{"id":"node1","addr":"127.0.0.1:12000",'
                           b'"http_addr":"127.0.0.1:8080",'
                           b'"grpc_addr":"127.0.0.1:9090","term":3,'
                           b'"updated_at":"')


def test_updated_at_is_mandis_clock(mandi):
    info = dict(LEADER, updated_at="1999-01-01T00:00:00Z")
    assert put_leader(mandi, info)[0] == 204
    first = get_json(mandi, "/leader")["updated_at"]
    assert near_now(first)
    time.sleep(0.02)
    assert put_leader(mandi, LEADER)[0] == 204
    second = get_json(mandi, "/leader")["updated_at"]
    assert rfc3339(second) > rfc3339(first)


@pytest.mark.parametrize("term", [0, 2**53 + 1, 2**63 + 12345, 2**64 - 1])
def test_term_is_exact(mandi, term):
    assert put_leader(mandi, dict(LEADER, term=term))[0] == 204
    st, _, body = mandi.request("GET", "/leader")
    assert st == 200 and f'"term":{term},'.encode() in body
    assert json.loads(body)["term"] == term


@pytest.mark.parametrize("body,reason", [
    ("", "invalid JSON"),
    ("{", "invalid JSON"),
    ("not json", "invalid JSON"),
    ('{"id":"a"} x', "invalid JSON"),
    ("[]", "invalid JSON"),
    ('{"addr":"127.0.0.1:1","term":1}', "missing id"),
    ('{"id":"","term":1}', "missing id"),
    ('{"id":null,"term":1}', "missing id"),
    ('{"id":7,"term":1}', "'id' must be a string"),
    ('{"id":"a","addr":["x"]}', "'addr' must be a string"),
    ('{"id":"a","term":-1}', "'term' must be an unsigned integer"),
    ('{"id":"a","term":1.5}', "'term' must be an unsigned integer"),
    ('{"id":"a","term":1e3}', "'term' must be an unsigned integer"),
    ('{"id":"a","term":"3"}', "'term' must be an unsigned integer"),
    ('{"id":"a","term":18446744073709551616}',
     "'term' must be an unsigned integer"),
    ('{"id":"%s","term":1}' % ("x" * 256), "id too long"),
    ('{"id":"a","addr":"%s"}' % ("x" * 301), "addr too long"),
    ('{"id":"a\\u0000b"}', "'id' holds a NUL character"),
    ('{"id":"a\\nb"}', "'id' holds a control character"),
    ('{"id":"a\\u001b[2J"}', "'id' holds a control character"),
    ('{"id":"a\\u2028b"}', "'id' holds a control character"),
    ('{"id":"a","addr":"127.0.0.1"}', "'addr' must be host:port"),
    ('{"id":"a","addr":"h:1","grpc_addr":"h:99999"}',
     "'grpc_addr' must be host:port"),
    ('{"id":"a","addr":"h:1","http_addr":"a b:1"}',
     "'http_addr' must be host:port"),
])
def test_put_leader_bad_body(mandi, body, reason):
    st, _, got = mandi.request("PUT", "/leader", body)
    assert st == 400 and got == (reason + "\n").encode()
    assert mandi.request("GET", "/leader")[0] == 404


def test_put_leader_lenient_parts(mandi):
    # Unknown fields are ignored, null counts as absent, a missing term is
    # 0, escapes decode, a repeated member counts last.
    body = ('{"id":"n\\u00e9","addr":null,"extra":{"a":[1,2]},'
            '"\\u0074erm":4,"term":5}')
    assert mandi.request("PUT", "/leader", body)[0] == 204
    got = get_json(mandi, "/leader")
    assert got["id"] == "n\u00e9" and got["addr"] == "" and got["term"] == 5
    assert mandi.request("PUT", "/leader", '{"id":"z","term":9}')[0] == 204
    assert put_leader(mandi, {"id": "y"})[0] == 409  # term 0 < 9


def test_stale_term_is_refused(mandi):
    assert put_leader(mandi, dict(LEADER, term=5))[0] == 204
    st, _, body = put_leader(mandi, dict(LEADER, id="node2", term=4))
    assert st == 409 and body == b"stale term\n"
    assert get_json(mandi, "/leader")["id"] == "node1"
    # The same term refreshes (or replaces), a higher one replaces.
    assert put_leader(mandi, dict(LEADER, id="node2", term=5))[0] == 204
    assert get_json(mandi, "/leader")["id"] == "node2"
    assert put_leader(mandi, dict(LEADER, id="node3", term=6))[0] == 204
    got = get_json(mandi, "/leader")
    assert (got["id"], got["term"]) == ("node3", 6)
    assert "refused leader node2 at term 4: node1 holds term 5" \
        in mandi.read_log()


# The term rule: absurd terms cannot lock the real leader out.

ABSURD = 2**64 - 1


def test_absurd_term_is_refused(mandi):
    assert put_leader(mandi, LEADER)[0] == 204  # the real leader, term 3
    st, _, body = put_leader(mandi, dict(LEADER, id="evil", term=ABSURD))
    assert st == 400 and body.startswith(b"implausible term (at most ")
    assert body.endswith(b" now)\n") and body.count(b"\n") == 1
    got = get_json(mandi, "/leader")
    assert (got["id"], got["term"]) == ("node1", 3)
    # Not too far ahead still replaces; the real leader carries on.
    assert put_leader(mandi, dict(LEADER, term=4))[0] == 204
    assert put_leader(mandi, dict(LEADER, id="evil", term=2**40))[0] == 400
    assert put_leader(mandi, dict(LEADER, term=4))[0] == 204
    log = mandi.read_log()
    assert re.search(r"refused leader evil from 127\.0\.0\.1:\d+ at term "
                     r"18446744073709551615: implausible, the highest recent "
                     r"term is 3", log)


def test_absurd_term_is_refused_after_expiry(mandis):
    # The highest term is remembered when the leader entry expires.
    m = mandis(conf={"mandi-leader-ttl": "100ms",
                     "mandi-sweep-interval": "50ms"})
    assert put_leader(m, LEADER)[0] == 204
    deadline = time.time() + 5
    while m.request("GET", "/leader")[0] != 404:
        assert time.time() < deadline
        time.sleep(0.05)
    assert put_leader(m, dict(LEADER, id="evil", term=ABSURD))[0] == 400
    assert put_leader(m, LEADER)[0] == 204
    assert get_json(m, "/leader")["id"] == "node1"


def test_absurd_term_first_cannot_lock_the_leader_out(mandi):
    # A fresh mandi knows no term: the attacker gets in first, but the
    # real leader's next PUT replaces it instead of getting 409.
    assert put_leader(mandi, dict(LEADER, id="evil", term=ABSURD))[0] == 204
    st, _, body = put_leader(mandi, LEADER)
    assert st == 204, body
    got = get_json(mandi, "/leader")
    assert (got["id"], got["term"]) == ("node1", 3)
    assert "leader node1 at term 3 from 127.0.0.1:" in mandi.read_log()
    # A deposed leader close behind is still refused.
    assert put_leader(mandi, dict(LEADER, id="node0", term=2))[0] == 409


def test_real_leader_is_never_refused(mandi):
    # Terms that grow through many elections, within the allowance.
    term = 3
    for _ in range(5):
        term += 1000
        assert put_leader(mandi, dict(LEADER, term=term))[0] == 204
    # The allowance grows with time: 1 s without a PUT allows 1000 more.
    time.sleep(1.0)
    term += 1900
    assert put_leader(mandi, dict(LEADER, term=term))[0] == 204
    # After a restart mandi takes the real leader's term, however high.
    assert mandi.restart() == 0
    assert put_leader(mandi, dict(LEADER, term=10**15))[0] == 204
    assert get_json(mandi, "/leader")["term"] == 10**15


def test_leader_expires(mandis):
    # A long sweep interval: expiry must hold between sweeps too.
    # A TTL long enough that the "still there" checks hold on a loaded
    # machine (each has 0.8 s to spare); sleeps only overshoot, which the
    # "gone" checks do not mind.
    m = mandis(conf={"mandi-leader-ttl": "2s",
                     "mandi-sweep-interval": "1m"})
    assert put_leader(m, dict(LEADER, term=7))[0] == 204
    assert m.request("GET", "/leader")[0] == 200
    time.sleep(1.2)
    assert put_leader(m, dict(LEADER, term=7))[0] == 204  # refresh
    time.sleep(1.2)
    assert m.request("GET", "/leader")[0] == 200  # 2.4 s after the first
    time.sleep(1.6)
    st, _, body = m.request("GET", "/leader")
    assert st == 404 and body == b"leader not available\n"
    # An expired leader's term no longer blocks a lower one.
    assert put_leader(m, dict(LEADER, id="node2", term=1))[0] == 204
    assert get_json(m, "/leader")["id"] == "node2"


def test_sweep_drops_expired_leader(mandis):
    m = mandis(conf={"mandi-leader-ttl": "100ms",
                     "mandi-sweep-interval": "50ms"})
    assert put_leader(m, LEADER)[0] == 204
    deadline = time.time() + 5
    while "expired" not in m.read_log() and time.time() < deadline:
        time.sleep(0.05)
    assert "leader node1 (term 3) expired" in m.read_log()


# --- /join-requests ------------------------------------------------------

def test_join_requests(mandi):
    st, h, body = mandi.request("GET", "/join-requests")
    assert st == 200 and body == b"[]\n"
    assert h["Content-Type"] == "application/json"
    st, _, body = post_join(mandi, {"id": "node2", "addr": "127.0.0.1:12001"})
    assert st == 204 and body == b""
    got = get_json(mandi, "/join-requests")
    assert len(got) == 1
    j = got[0]
    assert list(j) == ["id", "addr", "http_addr", "grpc_addr", "started_at"]
    assert (j["id"], j["addr"], j["http_addr"], j["grpc_addr"]) == \
        ("node2", "127.0.0.1:12001", "", "")
    assert near_now(j["started_at"])
    # The optional addresses are stored and returned.
    assert post_join(mandi, {"id": "node3", "addr": "127.0.0.1:12002",
                             "http_addr": "127.0.0.1:8082",
                             "grpc_addr": "127.0.0.1:9092",
                             "unknown": True})[0] == 204
    got = get_json(mandi, "/join-requests")
    assert [x["id"] for x in got] == ["node2", "node3"]
    assert got[1]["http_addr"] == "127.0.0.1:8082"
    assert got[1]["grpc_addr"] == "127.0.0.1:9092"


def test_repeat_join_replaces(mandi):
    assert post_join(mandi, {"id": "node2", "addr": "a:1"})[0] == 204
    first = get_json(mandi, "/join-requests")[0]["started_at"]
    assert post_join(mandi, {"id": "node3", "addr": "b:1"})[0] == 204
    time.sleep(0.02)
    assert post_join(mandi, {"id": "node2", "addr": "a:2"})[0] == 204
    got = get_json(mandi, "/join-requests")
    assert [(x["id"], x["addr"]) for x in got] == [("node3", "b:1"),
                                                  ("node2", "a:2")]
    assert rfc3339(got[1]["started_at"]) > rfc3339(first)


def test_delete_join(mandi):
    for i in (2, 3):
        assert post_join(mandi, {"id": f"node{i}", "addr": f"h:{i}"})[0] == 204
    st, _, body = mandi.request("DELETE", "/join-requests?id=node2")
    assert st == 204 and body == b""
    assert [x["id"] for x in get_json(mandi, "/join-requests")] == ["node3"]
    # Absent: 204 too.
    assert mandi.request("DELETE", "/join-requests?id=node2")[0] == 204
    assert mandi.request("DELETE", "/join-requests?id=nobody")[0] == 204
    # Percent-encoded ids.
    assert post_join(mandi, {"id": "a b/c", "addr": "h:1"})[0] == 204
    assert mandi.request("DELETE", "/join-requests?x=1&id=a%20b%2Fc")[0] == 204
    assert [x["id"] for x in get_json(mandi, "/join-requests")] == ["node3"]


@pytest.mark.parametrize("target", ["/join-requests", "/join-requests?id=",
                                    "/join-requests?other=1"])
def test_delete_join_missing_id(mandi, target):
    st, _, body = mandi.request("DELETE", target)
    assert st == 400 and body == b"missing id\n"


@pytest.mark.parametrize("body,reason", [
    ("nope", "invalid JSON"),
    ('{"addr":"h:1"}', "missing id"),
    ('{"id":"x","addr":1}', "'addr' must be a string"),
    ('{"id":"x","http_addr":"%s"}' % ("h" * 301), "http_addr too long"),
    ('{"id":"x"}', "missing addr"),
    ('{"id":"x","addr":""}', "missing addr"),
    ('{"id":"x","addr":"nowhere"}', "'addr' must be host:port"),
    ('{"id":"x\\r\\nFAKE","addr":"h:1"}', "'id' holds a control character"),
    ('{"id":"x\xff","addr":"h:1"}', "'id' is not valid UTF-8"),
])
def test_post_join_bad_body(mandi, body, reason):
    st, _, got = mandi.request("POST", "/join-requests", body)
    assert st == 400 and got == (reason + "\n").encode()
    assert get_json(mandi, "/join-requests") == []


def test_join_requests_expire(mandis):
    m = mandis(conf={"mandi-join-ttl": "2s",
                     "mandi-sweep-interval": "1m"})
    assert post_join(m, {"id": "node2", "addr": "a:1"})[0] == 204
    time.sleep(1.2)
    assert post_join(m, {"id": "node3", "addr": "b:1"})[0] == 204
    time.sleep(1.2)
    assert [x["id"] for x in get_json(m, "/join-requests")] == ["node3"]
    time.sleep(1.2)
    assert m.request("GET", "/join-requests")[2] == b"[]\n"


def test_join_request_limit(mandis):
    m = mandis(conf={"mandi-max-join-requests": "2"})
    assert post_join(m, {"id": "a", "addr": "h:1"})[0] == 204
    assert post_join(m, {"id": "b", "addr": "h:2"})[0] == 204
    st, _, body = post_join(m, {"id": "c", "addr": "h:3"})
    assert st == 503 and body == b"too many join requests\n"
    assert post_join(m, {"id": "a", "addr": "h:9"})[0] == 204  # a repeat
    assert m.request("DELETE", "/join-requests?id=b")[0] == 204
    assert post_join(m, {"id": "c", "addr": "h:3"})[0] == 204
    assert [x["id"] for x in get_json(m, "/join-requests")] == ["a", "c"]


# --- hostile input: forged log lines, log floods ------------------------

FORGED = "x\nFAKE LOG LINE"


def forged_lines(log):
    return [line for line in log.splitlines() if line.startswith("FAKE")]


def test_forged_log_lines_are_refused(mandi):
    attempts = [
        ("PUT", "/leader", dict(LEADER, id=FORGED),
         "'id' holds a control character"),
        ("PUT", "/leader", dict(LEADER, addr="h:1\nFAKE LOG LINE"),
         "'addr' holds a control character"),
        ("PUT", "/leader", dict(LEADER, grpc_addr="h:1\r\nFAKE LOG LINE"),
         "'grpc_addr' holds a control character"),
        ("PUT", "/leader", dict(LEADER, id="\x1b]0;owned\x07"),
         "'id' holds a control character"),
        ("POST", "/join-requests", {"id": FORGED, "addr": "h:1"},
         "'id' holds a control character"),
        ("POST", "/join-requests", {"id": "n", "addr": "h:1\nFAKE LOG LINE"},
         "'addr' holds a control character"),
        ("POST", "/join-requests",
         {"id": "n", "addr": "h:1", "http_addr": "h:2\nFAKE LOG LINE"},
         "'http_addr' holds a control character"),
    ]
    answers = [mandi.request(method, path, json.dumps(body))
               for method, path, body, _ in attempts]
    answers.append(mandi.request("DELETE",
                                 "/join-requests?id=x%0AFAKE%20LOG%20LINE"))
    # Nothing forged a line or reached the terminal...
    log = mandi.read_log()
    assert forged_lines(log) == []
    assert "\x1b" not in log
    # ... because each was refused, and nothing was stored.
    reasons = [a[3] for a in attempts] + ["'id' holds a control character"]
    for (st, _, got), reason in zip(answers, reasons):
        assert (st, got) == (400, (reason + "\n").encode())
    assert mandi.request("GET", "/leader")[0] == 404
    assert get_json(mandi, "/join-requests") == []
    assert re.search(r"refused PUT /leader from 127\.0\.0\.1:\d+: 'id' holds "
                     r"a control character", log)


def test_accepted_text_is_logged_escaped(mandi):
    # Printable but unusual ids are accepted, and logged escaped.
    odd = 'a"b\\c \u00e9'
    assert put_leader(mandi, dict(LEADER, id=odd))[0] == 204
    assert get_json(mandi, "/leader")["id"] == odd
    assert post_join(mandi, {"id": odd, "addr": "[::1]:12001"})[0] == 204
    log = mandi.read_log()
    assert 'leader is a\\"b\\\\c \\xc3\\xa9 (term 3)' in log
    assert 'join request from a\\"b\\\\c \\xc3\\xa9 at [::1]:12001' in log
    assert all(32 <= ord(ch) < 127 for ch in log.replace("\n", ""))


def test_log_flood_is_limited(mandis):
    m = mandis(conf={"mandi-sweep-interval": "100ms"})
    bad = json.dumps(dict(LEADER, id=FORGED)).encode()
    one = (b"PUT /leader HTTP/1.1\r\nHost: m\r\nContent-Length: %d\r\n\r\n"
           % len(bad)) + bad
    n = 300
    out = raw(m, one * n + b"GET /leader HTTP/1.1\r\nHost: m\r\n"
              b"Connection: close\r\n\r\n")
    assert out.count(b"HTTP/1.1 400 ") == n

    def counts():
        log = m.read_log()
        dropped = re.findall(r"(\d+) log lines about requests dropped", log)
        return log.count("refused PUT /leader"), sum(map(int, dropped))

    # Every refusal is either logged or counted in a "dropped" line, which
    # the sweep writes once the flood is over.
    deadline = time.time() + 5
    while sum(counts()) < n and time.time() < deadline:
        time.sleep(0.05)
    logged, dropped = counts()
    assert logged + dropped == n, (logged, dropped)
    assert 0 < logged < 100 and dropped > 0, (logged, dropped)
    assert forged_lines(m.read_log()) == []


# --- methods, paths ------------------------------------------------------

@pytest.mark.parametrize("method,path,allow", [
    ("POST", "/leader", "GET, PUT"),
    ("DELETE", "/leader", "GET, PUT"),
    ("PATCH", "/leader", "GET, PUT"),
    ("HEAD", "/leader", "GET, PUT"),
    ("PUT", "/join-requests", "GET, POST, DELETE"),
    ("PATCH", "/join-requests", "GET, POST, DELETE"),
    ("OPTIONS", "/join-requests", "GET, POST, DELETE"),
])
def test_other_methods_405(mandi, method, path, allow):
    st, h, body = mandi.request(method, path, "{}")
    assert st == 405 and h["Allow"] == allow
    if method != "HEAD":
        assert body == b"method not allowed\n"


@pytest.mark.parametrize("path", ["/", "/leader/", "/leaders", "/health",
                                  "/join-requests/node2", "/get?key=a"])
def test_other_paths_404(mandi, path):
    st, _, body = mandi.request("GET", path)
    assert st == 404 and body == b"404 page not found\n"


def test_query_string_on_leader_is_ignored(mandi):
    assert put_leader(mandi, LEADER)[0] == 204
    assert mandi.request("GET", "/leader?x=1")[0] == 200


# --- the cluster token ---------------------------------------------------

def test_token_guards_writes(mandis):
    m = mandis(conf={"cluster-token": "s3cret-Token"})
    good = {"Authorization": "Bearer s3cret-Token"}
    writes = [
        lambda h: put_leader(m, LEADER, h),
        lambda h: post_join(m, {"id": "node2", "addr": "h:1"}, h),
        lambda h: m.request("DELETE", "/join-requests?id=node2", None, h),
    ]
    bad_headers = [None, {"Authorization": "Bearer wrong"},
                   {"Authorization": "Bearer s3cret-Toke"},
                   {"Authorization": "Bearer s3cret-Token2"},
                   {"Authorization": "Basic s3cret-Token"},
                   {"Authorization": "s3cret-Token"},
                   {"Authorization": "Bearer"}]
    for w in writes:
        for h in bad_headers:
            st, hd, body = w(h)
            assert st == 401 and body == b"unauthorized\n", (h, st, body)
            assert hd["WWW-Authenticate"].startswith("Bearer")
    # Refused writes changed nothing; GETs are open.
    assert m.request("GET", "/leader")[0] == 404
    assert m.request("GET", "/join-requests")[2] == b"[]\n"
    assert put_leader(m, LEADER, good)[0] == 204
    assert post_join(m, {"id": "node2", "addr": "h:1"},
                     {"Authorization": "bearer  s3cret-Token "})[0] == 204
    assert get_json(m, "/leader")["id"] == "node1"
    assert [x["id"] for x in get_json(m, "/join-requests")] == ["node2"]
    assert m.request("DELETE", "/join-requests?id=node2", None,
                     good)[0] == 204
    assert get_json(m, "/join-requests") == []
    # 405 and 404 come before authentication.
    assert m.request("PATCH", "/leader")[0] == 405
    assert m.request("PUT", "/nowhere")[0] == 404
    assert "cluster-token is not set" not in m.read_log()


def test_open_cluster_is_logged(mandi):
    assert "cluster-token is not set" in mandi.read_log()


def test_bad_token_is_a_config_error(mandis):
    m = mandis(start=False, conf={"cluster-token": "has space"})
    m.start(wait=False)
    assert m.wait_exit(10) == 1
    assert "cluster-token" in m.read_log()


# --- HTTP behaviour ------------------------------------------------------

def test_keep_alive_and_pipelining(mandi):
    body = json.dumps(LEADER)
    reqs = (b"GET /leader HTTP/1.1\r\nHost: m\r\n\r\n"
            + (f"PUT /leader HTTP/1.1\r\nHost: m\r\nContent-Length: "
               f"{len(body)}\r\n\r\n{body}").encode()
            + b"GET /leader HTTP/1.1\r\nHost: m\r\n\r\n"
            + b"GET /join-requests HTTP/1.1\r\nHost: m\r\n"
              b"Connection: close\r\n\r\n")
    out = raw(mandi, reqs)
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", out)
    assert statuses == [b"404", b"204", b"200", b"200"]
    assert out.endswith(b"[]\n")
    assert out.count(b"Connection: close") == 1


def test_head_reply_has_no_body(mandi):
    out = raw(mandi, b"HEAD /leader HTTP/1.1\r\nHost: m\r\n\r\n"
              b"GET /leader HTTP/1.1\r\nHost: m\r\nConnection: close\r\n"
              b"\r\n")
    head, rest = out.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 405 ") and b"Content-Length: 19" in head
    assert rest.startswith(b"HTTP/1.1 404 ")
    assert rest.endswith(b"\r\n\r\nleader not available\n")


def test_one_connection_many_requests(mandi):
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", mandi.port, timeout=5)
    for term in range(1, 50):
        c.request("PUT", "/leader", json.dumps(dict(LEADER, term=term)))
        r = c.getresponse()
        assert r.status == 204 and r.read() == b""
        c.request("GET", "/leader")
        r = c.getresponse()
        assert r.status == 200 and json.loads(r.read())["term"] == term
    c.close()


def test_body_too_large(mandi):
    # Bodies are capped at 64 KiB: refused on the announced length, before
    # the body is sent (sending it would race mandi's close with a reset).
    out = raw(mandi, b"PUT /leader HTTP/1.1\r\nHost: m\r\n"
              b"Content-Length: 65537\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 413 ")
    body = json.dumps(dict(LEADER, addr="")).encode()
    body = body[:-1] + b" " * (65536 - len(body)) + b"}"
    assert len(body) == 65536
    assert mandi.request("PUT", "/leader", body)[0] == 204


def test_malformed_request_closes(mandi):
    out = raw(mandi, b"NONSENSE\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400 ")
    assert mandi.request("GET", "/leader")[0] == 404


def test_idle_connection_is_closed(mandis):
    m = mandis(conf={"client-idle-timeout": "1s"})
    with socket.create_connection(("127.0.0.1", m.port), timeout=5) as s:
        t0 = time.time()
        assert s.recv(1) == b""  # closed by mandi
        assert 0.5 < time.time() - t0 < 4


def open_served(m, n, timeout=5):
    """n connections that mandi serves (a connection closed just before
    may still count for a moment: retry until none is refused)."""
    deadline = time.time() + timeout
    while True:
        socks = [socket.create_connection(("127.0.0.1", m.port), timeout=5)
                 for _ in range(n)]
        answers = []
        for s in socks:
            s.sendall(b"GET /leader HTTP/1.1\r\nHost: m\r\n\r\n")
            answers.append(s.recv(4096))
        if all(a.startswith(b"HTTP/1.1 404 ") for a in answers):
            return socks
        for s in socks:
            s.close()
        assert time.time() < deadline, answers
        time.sleep(0.05)


def test_max_clients(mandis):
    m = mandis(conf={"max-clients": "2"})
    socks = open_served(m, 2)
    try:
        # Refused at once (before it sends anything, so no reset races
        # the answer).
        with socket.create_connection(("127.0.0.1", m.port), timeout=5) as s:
            out = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                out += chunk
        assert out.startswith(b"HTTP/1.1 503 ") and b"too many clients" in out
    finally:
        for s in socks:
            s.close()
    for s in open_served(m, 2):  # served again once those are gone
        s.close()


# --- lifecycle -----------------------------------------------------------

def test_restart_loses_state(mandi):
    assert put_leader(mandi, dict(LEADER, term=9))[0] == 204
    assert post_join(mandi, {"id": "node2", "addr": "h:1"})[0] == 204
    assert mandi.restart() == 0
    assert mandi.request("GET", "/leader")[0] == 404
    assert mandi.request("GET", "/join-requests")[2] == b"[]\n"
    # Soft state: the leader's next PUT makes it known again, at any term.
    assert put_leader(mandi, dict(LEADER, term=2))[0] == 204
    assert get_json(mandi, "/leader")["term"] == 2


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_graceful_shutdown(mandi, sig):
    # An idle kept-alive connection does not hold the shutdown up.
    s = socket.create_connection(("127.0.0.1", mandi.port), timeout=5)
    s.sendall(b"GET /leader HTTP/1.1\r\nHost: m\r\n\r\n")
    assert s.recv(4096).startswith(b"HTTP/1.1 404 ")
    t0 = time.time()
    assert mandi.stop(sig) == 0
    assert time.time() - t0 < 3
    assert s.recv(1) == b""
    s.close()
    log = mandi.read_log()
    assert "shutting down" in log and log.rstrip().endswith("stopped")


def test_port_in_use_fails(mandis):
    a = mandis()
    b = mandis(name="mandi2", start=False)
    b.conf["mandi-addr"] = a.url
    b.write_conf()
    b.start(wait=False)
    assert b.wait_exit(10) == 1
    assert "address already in use" in b.read_log()


def _status_line(s, timeout=5):
    s.settimeout(timeout)
    out = b""
    try:
        while b"\r\n" not in out:
            chunk = s.recv(4096)
            if not chunk:
                break
            out += chunk
    except (socket.timeout, ConnectionResetError):
        pass
    return out.split(b"\r\n", 1)[0]


def test_slow_and_silent_clients_are_bounded(mandis):
    """Mandi answers anyone who can reach it, so a node's client limits
    hold there too: headers trickled a byte at a time get 408 after
    client-header-timeout, a body after client-body-timeout, and with
    every slot taken by silent connections a new client still gets its
    answer (the oldest silent one is evicted); partial bodies over
    max-partial-input are refused with 503."""
    m = mandis(conf={"client-header-timeout": "1s",
                     "client-body-timeout": "1s", "max-clients": "4",
                     "max-partial-input": "64kb"})
    with socket.create_connection(("127.0.0.1", m.port)) as s:
        s.sendall(b"GET /leader HTTP/1.1\r\n")
        t0 = time.time()
        for _ in range(30):
            try:
                s.sendall(b"X")
            except OSError:
                break
            time.sleep(0.1)
            s.settimeout(0.01)
            try:
                if s.recv(1, socket.MSG_PEEK):
                    break
            except socket.timeout:
                pass
        assert _status_line(s).startswith(b"HTTP/1.1 408"), time.time() - t0
        assert time.time() - t0 < 3.0
    with socket.create_connection(("127.0.0.1", m.port)) as s:
        s.sendall(b"POST /join-requests HTTP/1.1\r\nContent-Length: 10\r\n"
                  b"\r\n{")
        assert _status_line(s).startswith(b"HTTP/1.1 408")
    silent = [socket.create_connection(("127.0.0.1", m.port))
              for _ in range(4)]
    try:
        time.sleep(0.3)
        st, _, _ = m.request("GET", "/leader")
        assert st == 404  # served: no leader known yet
    finally:
        for s in silent:
            s.close()
    # Two bodies of 40 kB still arriving: the second passes 64 kB.
    a = socket.create_connection(("127.0.0.1", m.port))
    b = socket.create_connection(("127.0.0.1", m.port))
    try:
        head = b"POST /join-requests HTTP/1.1\r\nContent-Length: 45000\r\n\r\n"
        a.sendall(head + b"x" * 40000)
        time.sleep(0.2)
        b.sendall(head + b"x" * 40000)
        assert _status_line(b).startswith(b"HTTP/1.1 503")
    finally:
        a.close()
        b.close()
    assert m.request("GET", "/leader")[0] == 404
