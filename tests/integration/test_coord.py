"""Revisions, ranges, compare-and-set and transactions over HTTP (curl,
http.client, the CLI), on one node and on a cluster."""
import base64
import json
import subprocess
import threading
import time

from test_cluster import leader_of, make_cluster
from test_snapshot import settled


def post(s, path, obj, timeout=10):
    st, h, body = s.request("POST", path, json.dumps(obj),
                            {"Content-Type": "application/json"},
                            timeout=timeout)
    return st, h, body


def jget(s, path):
    st, h, body = s.request("GET", path)
    assert st == 200, (st, body)
    return h, json.loads(body)


def rev_of(h):
    return int(h["X-Pyazdb-Revision"])


def test_revisions_and_metadata(server):
    # a plain /set answers exactly as before: 204, no new header
    st, h, body = post(server, "/set", {"key": "a", "value": "1"})
    assert st == 204 and body == b"" and "X-Pyazdb-Revision" not in h
    assert server.status()["revision"] == 1
    post(server, "/set", {"key": "b", "value": "2"})
    st, h, _ = post(server, "/set", {"key": "a", "value": "3"})
    assert server.status()["revision"] == 3
    st, h, body = server.request("GET", "/get?key=a")
    assert (st, body, rev_of(h)) == (200, b"3", 3)
    # a delete of an absent key changes nothing: same revision
    st, h, _ = server.request("DELETE", "/delete?key=nope")
    assert st == 204
    h, r = jget(server, "/range?prefix=a")
    assert r["revision"] == 3 and rev_of(h) == 3
    assert r["kvs"] == [{"key": "a", "value": "3", "create_revision": 1,
                         "mod_revision": 3, "version": 2, "lease": 0}]
    assert server.status()["revision"] == 3


def test_range_pagination_and_options(server):
    keys = [f"svc/{i:03d}" for i in range(25)]
    for k in keys:
        assert post(server, "/set", {"key": k, "value": "v" + k})[0] == 204
    post(server, "/set", {"key": "svc0", "value": "outside"})
    post(server, "/set", {"key": "sv", "value": "outside"})
    got, start = [], None
    pages = 0
    while True:
        q = "/range?prefix=svc/&limit=10"
        if start is not None:
            q += "&from=" + start
        _, r = jget(server, q)
        pages += 1
        got += [kv["key"] for kv in r["kvs"]]
        if not r["more"]:
            break
        start = r["next"]
    assert got == keys and pages == 3
    _, r = jget(server, "/range?prefix=svc/&count_only=true")
    assert r["count"] == 25 and "kvs" not in r
    _, r = jget(server, "/range?prefix=svc/&keys_only=true&limit=2")
    assert [set(kv) for kv in r["kvs"]] == [
        {"key", "create_revision", "mod_revision", "version", "lease"}] * 2
    _, r = jget(server, "/range?from=svc/010&to=svc/013")
    assert [kv["key"] for kv in r["kvs"]] == ["svc/010", "svc/011", "svc/012"]
    _, r = jget(server, "/range?from=svc/024&consistency=stale")
    assert [kv["key"] for kv in r["kvs"]] == ["svc/024", "svc0"]
    for bad in ("/range", "/range?prefix=a&to=b", "/range?prefix=a&limit=0",
                "/range?prefix=a&limit=x", "/range?prefix=a&limit=10001",
                "/range?prefix=a&keys_only=maybe",
                "/range?prefix=a&from=b", "/range?prefix=%zz",
                "/range?prefix=a&consistency=weird"):
        st, _, body = server.request("GET", bad)
        assert st == 400 and body.endswith(b"\n") and body.count(b"\n") == 1, \
            (bad, st, body)
    assert server.request("POST", "/range?prefix=a")[0] == 405


def test_binary_keys(server):
    key = b"bin\xff\x00k"
    st, _, _ = post(server, "/txn", {"success": [{"put": {
        "key_b64": base64.b64encode(key).decode(), "value": "x"}}]})
    assert st == 200
    _, r = jget(server, "/range?prefix=bin%FF")
    assert r["kvs"][0]["key_b64"] == base64.b64encode(key).decode()
    assert r["kvs"][0]["value"] == "x"
    st, _, body = server.request("GET", "/get?key=bin%FF%00k")
    assert (st, body) == (200, b"x")
    st, _, body = post(server, "/txn", {"success": [{"put": {
        "key_b64": "***", "value": "x"}}]})
    assert st == 400 and b"base64" in body


def test_cas_set_and_delete(server):
    # prev_revision 0: create only if absent
    st, h, _ = post(server, "/set", {"key": "lock", "value": "me",
                                     "prev_revision": 0})
    assert st == 204
    created = rev_of(h)
    st, h, body = post(server, "/set", {"key": "lock", "value": "you",
                                        "prev_revision": 0})
    assert st == 412 and rev_of(h) == created
    r = json.loads(body)
    assert r["error"] == "Precondition failed" and r["revision"] == created
    assert r["current"]["value"] == "me"
    assert r["current"]["mod_revision"] == created
    st, h, _ = post(server, "/set", {"key": "lock", "value": "you",
                                     "prev_revision": created})
    assert st == 204 and rev_of(h) == created + 1
    st, _, body = post(server, "/set", {"key": "lock", "value": "x",
                                        "prev_value": "me"})
    assert st == 412 and json.loads(body)["current"]["value"] == "you"
    st, _, body = post(server, "/delete", {"key": "lock", "prev_value": "me"})
    assert st == 412
    st, _, _ = post(server, "/delete", {"key": "lock", "prev_value": "you"})
    assert st == 204
    st, _, body = post(server, "/delete", {"key": "lock", "prev_revision": 5})
    assert st == 412 and json.loads(body)["current"] is None
    assert server.request("GET", "/get?key=lock")[0] == 404
    for bad in ({"key": "k", "value": "v", "prev_revision": -1},
                {"key": "k", "value": "v", "prev_revision": "1"},
                {"key": "k", "value": "v", "prev_value": 3},
                {"key": "k", "prefix": "k"}):
        path = "/delete" if "prefix" in bad else "/set"
        st, _, body = post(server, path, bad)
        assert st == 400 and body.count(b"\n") == 1, (bad, body)


def test_delete_prefix(server):
    for k in ("job/1", "job/2", "job/3", "jobs", "jo"):
        post(server, "/set", {"key": k, "value": "x"})
    st, h, body = post(server, "/delete", {"prefix": "job/"})
    r = json.loads(body)
    assert st == 200 and r["deleted"] == 3 and r["revision"] == rev_of(h)
    _, r = jget(server, "/range?prefix=jo")
    assert [kv["key"] for kv in r["kvs"]] == ["jo", "jobs"]
    st, _, body = post(server, "/delete", {"prefix": "job/"})
    assert json.loads(body)["deleted"] == 0


def test_txn_both_branches(server):
    post(server, "/set", {"key": "cfg", "value": "v1"})
    txn = {"compare": [{"key": "cfg", "target": "value", "result": "=",
                        "value": "v1"},
                       {"key": "cfg", "target": "version", "result": ">",
                        "value": 0}],
           "success": [{"put": {"key": "cfg", "value": "v2"}},
                       {"get": {"key": "cfg"}},
                       {"range": {"prefix": "c"}}],
           "failure": [{"get": {"key": "cfg"}}]}
    st, h, body = post(server, "/txn", txn)
    r = json.loads(body)
    assert st == 200 and r["succeeded"] is True and r["revision"] == rev_of(h)
    assert [x["op"] for x in r["results"]] == ["put", "get", "range"]
    assert r["results"][0]["prev_kvs"][0]["value"] == "v1"
    assert r["results"][1]["kvs"][0]["value"] == "v2"
    assert r["results"][1]["kvs"][0]["mod_revision"] == r["revision"]
    st, h, body = post(server, "/txn", txn)  # value is v2 now
    r = json.loads(body)
    assert st == 200 and r["succeeded"] is False
    assert [x["op"] for x in r["results"]] == ["get"]
    assert r["results"][0]["kvs"][0]["value"] == "v2"
    # a transaction that changes nothing keeps the revision
    assert r["revision"] == server.status()["revision"]
    for bad in ("{", "[]", '{"compare": {}}', '{"success": [{"nop": {}}]}',
                '{"success": [{"put": {"value": "x"}}]}',
                '{"compare": [{"key": "a", "target": "size", "result": "="}]}',
                '{"compare": [{"key": "a", "target": "version", '
                '"result": "~", "value": 1}]}',
                '{"compare": [{"key": "a", "target": "version", '
                '"result": "=", "value": "1"}]}',
                '{"success": [{"range": {"prefix": "a", "limit": 0}}]}',
                json.dumps({"success": [{"get": {"key": "a"}}] * 129})):
        st, _, body = server.request("POST", "/txn", bad)
        assert st == 400 and body.count(b"\n") == 1, (bad, body)


def cas_increment(node, key, stats):
    while True:
        st, _, body = node.request("GET", f"/range?prefix={key}")
        kvs = json.loads(body)["kvs"]
        cur = int(kvs[0]["value"]) if kvs else 0
        rev = kvs[0]["mod_revision"] if kvs else 0
        st, _, _ = post(node, "/set", {"key": key, "value": str(cur + 1),
                                       "prev_revision": rev})
        if st == 204:
            stats["ok"] += 1
            return
        assert st == 412, st
        stats["conflicts"] += 1


def test_cas_race_counts_every_success(server):
    stats = {"ok": 0, "conflicts": 0}
    lock = threading.Lock()

    def worker():
        local = {"ok": 0, "conflicts": 0}
        for _ in range(10):
            cas_increment(server, "counter", local)
        with lock:
            stats["ok"] += local["ok"]
            stats["conflicts"] += local["conflicts"]

    ts = [threading.Thread(target=worker) for _ in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert stats["ok"] == 80
    st, _, body = server.request("GET", "/get?key=counter")
    assert (st, body) == (200, b"80")
    print(f"CAS race: 80 increments, {stats['conflicts']} conflicts")


def test_curl_range_and_412(server):
    post(server, "/set", {"key": "x", "value": "1"})
    out = subprocess.run(
        ["curl", "-s", "-i", "-X", "POST", "-d",
         '{"key":"x","value":"2","prev_revision":99}',
         f"http://127.0.0.1:{server.http_port}/set"],
        capture_output=True, timeout=10, check=True).stdout
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 412 Precondition Failed")
    assert b"X-Pyazdb-Revision: 1" in head
    assert json.loads(body)["current"]["value"] == "1"
    out = subprocess.run(
        ["curl", "-s", "-f",
         f"http://127.0.0.1:{server.http_port}/range?prefix=x"],
        capture_output=True, timeout=10, check=True).stdout
    assert json.loads(out)["kvs"][0]["key"] == "x"


def test_replicated_revisions_and_restart(servers):
    nodes = make_cluster(servers)
    leader = leader_of(nodes)
    follower = next(s for s in nodes if s is not leader)
    for i in range(20):
        assert post(follower, "/set", {"key": f"k{i}", "value": str(i)})[0] \
            == 204
    st, _, _ = post(follower, "/set", {"key": "k0", "value": "x",
                                       "prev_revision": 1})
    assert st == 204  # forwarded to the leader, applied there
    post(leader, "/delete", {"prefix": "k1"})
    sts = settled(nodes)
    assert len({st["revision"] for st in sts}) == 1
    rev = sts[0]["revision"]
    assert rev == 22
    views = [jget(s, "/range?from=&consistency=stale")[1]["kvs"]
             if False else jget(s, "/range?prefix=k&consistency=stale")[1]
             for s in nodes]
    assert all(v["kvs"] == views[0]["kvs"] for v in views)
    # a snapshot and a restart keep revisions and metadata
    st, _, body = leader.request("POST", "/admin/snapshot")
    assert st == 200, body
    leader.stop()
    leader.start()
    sts = settled(nodes)
    assert {st["revision"] for st in sts} == {rev}
    assert jget(leader, "/range?prefix=k")[1]["kvs"] == views[0]["kvs"]


# --- pyazdb-cli ---------------------------------------------------------------

def cli(server, *args, stdin=None):
    from grpc_helpers import CLI
    p = subprocess.run([CLI, "--http", f"127.0.0.1:{server.http_port}",
                        *args], capture_output=True, input=stdin,
                       timeout=20)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


def test_cli_list_cas_prefix_and_txn(server, tmp_path):
    for i in range(5):
        post(server, "/set", {"key": f"app/{i}", "value": f"v{i}"})
    post(server, "/set", {"key": "other", "value": "x"})
    rc, out, _ = cli(server, "list", "app/")
    assert rc == 0
    assert out == "".join(f"app/{i}\tv{i}\n" for i in range(5))
    rc, out, _ = cli(server, "list", "app/", "--keys-only", "--limit", "2")
    assert (rc, out) == (0, "app/0\napp/1\n")
    # set --if-revision: 0 = create only
    rc, out, err = cli(server, "set", "--if-revision", "0", "lock", "a")
    assert (rc, out) == (0, "Set 'lock' = 'a'\n"), err
    rev = server.status()["revision"]
    rc, out, err = cli(server, "set", "--if-revision", "0", "lock", "b")
    assert rc == 2 and out == "" and \
        f"was modified at revision {rev}" in err, err
    rc, out, err = cli(server, "set", "--if-revision", str(rev), "lock", "b")
    assert rc == 0, err
    rc, out, err = cli(server, "delete", "--prefix", "app/")
    assert (rc, out) == (0, "Deleted 5 keys with prefix 'app/'\n"), err
    rc, out, _ = cli(server, "list", "app/")
    assert (rc, out) == (0, "")
    txn = {"compare": [{"key": "lock", "target": "value", "result": "=",
                        "value": "b"}],
           "success": [{"put": {"key": "owner", "value": "me"}}],
           "failure": [{"get": {"key": "lock"}}]}
    f = tmp_path / "t.json"
    f.write_text(json.dumps(txn))
    rc, out, err = cli(server, "txn", str(f))
    assert rc == 0 and json.loads(out)["succeeded"] is True, err
    txn["compare"][0]["value"] = "zzz"
    rc, out, err = cli(server, "txn", "-", stdin=json.dumps(txn).encode())
    r = json.loads(out)
    assert rc == 2 and r["succeeded"] is False
    assert r["results"][0]["kvs"][0]["value"] == "b"
    rc, out, err = cli(server, "txn", "-", stdin=b"{not json")
    assert rc == 1 and "HTTP 400" in err
    rc, _, err = cli(server, "set", "--if-revision", "x", "k", "v")
    assert rc == 1 and "bad revision" in err


def test_quota_alarm_takes_prefix_deletes_not_puts(servers):
    s = servers(conf={"quota-backend-bytes": "4kb"})
    n = 0
    while post(s, "/set", {"key": f"q/{n:02d}", "value": "v" * 500})[0] \
            == 204:
        n += 1
        assert n < 20
    # raised: a transaction that puts is refused, even behind a condition
    st, _, body = post(s, "/txn", {"success": [{"put": {"key": "t",
                                                        "value": "1"}}]})
    assert (st, body) == (507, b"no space left on device\n")
    st, _, _ = post(s, "/set", {"key": "t", "value": "1",
                                "prev_revision": 0})
    assert st == 507
    # one that only reads or deletes goes through
    st, _, body = post(s, "/txn", {"success": [{"get": {"key": "q/00"}}]})
    assert st == 200 and json.loads(body)["succeeded"] is True
    st, _, body = post(s, "/delete", {"prefix": "q/"})
    assert st == 200 and json.loads(body)["deleted"] == n
