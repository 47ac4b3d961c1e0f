"""Leases with a TTL over HTTP (http.client, curl) and the CLI: grant,
keys attached, keep-alives, expiry decided by the leader, revoke, limits,
a lease kept alive across a leader failover and left to expire after it,
and a lease that survives a restart through a snapshot."""
import json
import subprocess
import threading
import time

from conftest import wait_for
from test_cluster import leader_of, make_cluster
from test_coord import cli, post, rev_of


def grant(s, ttl, **kw):
    st, _, body = post(s, "/lease/grant", dict(ttl=ttl, **kw))
    assert st == 200, (st, body)
    r = json.loads(body)
    assert r["ttl"] == ttl and 1 <= r["id"] < 2**53
    return r["id"]


def present(s, key, stale=False):
    q = "&consistency=stale" if stale else ""
    st, _, _ = s.request("GET", f"/get?key={key}{q}", timeout=3)
    assert st in (200, 404)
    return st == 200


def wait_gone(s, keys, timeout, stale=False):
    """Poll until every key is gone; returns when that was seen."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if not any(present(s, k, stale) for k in keys):
                return time.time()
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{keys} still present after {timeout}s")


class KeepAlive:
    """Keep-alives for lease id every `every` seconds, sent in turn to the
    given nodes (any of them: followers forward), errors ignored (a node
    down, no leader yet) until stop()."""

    def __init__(self, nodes, lid, every=0.3):
        self.nodes, self.lid, self.every = nodes, lid, every
        self.done = threading.Event()
        self.ok = 0
        self.last_ok = None
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        i = 0
        while not self.done.is_set():
            s = self.nodes[i % len(self.nodes)]
            i += 1
            if s.proc.poll() is None:
                try:
                    st, _, body = post(s, "/lease/keepalive", {"id": self.lid},
                                       timeout=2)
                    if st == 200:
                        self.ok += 1
                        self.last_ok = time.time()
                except OSError:
                    pass
            self.done.wait(self.every)

    def stop(self):
        self.done.set()
        self.t.join(10)
        return self.last_ok


def test_keepalive_keeps_keys_then_expiry_deletes_them(server):
    lid = grant(server, 2)
    for k in ("svc/a", "svc/b"):
        assert post(server, "/set", {"key": k, "value": "up", "lease": lid})[0] \
            == 204
    post(server, "/set", {"key": "plain", "value": "x"})
    st, h, body = server.request("GET", f"/lease?id={lid}&keys=true")
    assert st == 200 and rev_of(h) == 3
    r = json.loads(body)
    assert r["id"] == lid and r["ttl"] == 2 and r["count"] == 2
    assert 0 < r["remaining_ms"] <= 2000
    assert sorted(k["key"] for k in r["keys"]) == ["svc/a", "svc/b"]
    r = json.loads(server.request("GET", "/range?prefix=svc/")[2])
    assert [kv["lease"] for kv in r["kvs"]] == [lid, lid]
    ka = KeepAlive([server], lid, every=0.3)
    time.sleep(4.5)  # more than twice the TTL
    assert present(server, "svc/a") and present(server, "svc/b")
    assert ka.ok >= 5
    last = ka.stop()
    gone = wait_gone(server, ["svc/a", "svc/b"], timeout=6)
    # never before the TTL since the last keep-alive the leader answered
    assert gone - last >= 2 - 0.2, gone - last
    assert present(server, "plain")
    # both keys went at one revision; the lease is gone
    assert server.status()["revision"] == 4
    st, h, _ = server.request("GET", f"/lease?id={lid}")
    assert st == 404 and rev_of(h) == 4
    st, _, body = server.request("GET", "/leases")
    assert st == 200 and json.loads(body)["leases"] == []
    st, _, body = server.request("GET", "/metrics")
    m = body.decode()
    assert "pyazdb_lease_expiries_total 1" in m
    assert "pyazdb_lease_grants_total 1" in m and "pyazdb_leases 0" in m


def test_revoke_unknown_lease_and_bad_requests(server):
    lid = grant(server, 60, id=42)
    assert lid == 42
    for i in range(3):
        post(server, "/set", {"key": f"k{i}", "value": "v", "lease": lid})
    # a transaction put may name the lease too
    st, _, body = post(server, "/txn", {"success": [
        {"put": {"key": "t", "value": "v", "lease": lid}}]})
    assert st == 200, body
    rev = server.status()["revision"]
    st, h, body = post(server, "/lease/revoke", {"id": lid})
    assert st == 200, body
    r = json.loads(body)
    assert r == {"id": lid, "revision": rev + 1, "deleted": 4}
    assert rev_of(h) == rev + 1
    assert not any(present(server, k) for k in ("k0", "k1", "k2", "t"))
    assert post(server, "/lease/revoke", {"id": lid})[0] == 404
    assert post(server, "/lease/keepalive", {"id": lid})[0] == 404
    # a put naming an unknown lease: 404, nothing changes
    rev = server.status()["revision"]
    st, _, body = post(server, "/set", {"key": "x", "value": "1", "lease": 7})
    assert (st, body) == (404, b"Lease not found\n")
    st, _, body = post(server, "/set", {"key": "x", "value": "1", "lease": 7,
                                        "prev_revision": 0})
    assert st == 404, body
    st, _, body = post(server, "/txn", {"success": [
        {"put": {"key": "x", "value": "1"}},
        {"put": {"key": "y", "value": "1", "lease": 7}}]})
    assert st == 404, body
    assert not present(server, "x") and server.status()["revision"] == rev
    # the same id again: 409
    grant(server, 5, id=43)
    st, _, body = post(server, "/lease/grant", {"ttl": 5, "id": 43})
    assert st == 409, body
    # bad input: 400 with a reason
    for path, obj in [("/lease/grant", {"ttl": 0}),
                      ("/lease/grant", {"ttl": -1}),
                      ("/lease/grant", {"ttl": "5"}),
                      ("/lease/grant", {"ttl": 1.5}),
                      ("/lease/grant", {}),
                      ("/lease/grant", {"ttl": 5, "id": 0}),
                      ("/lease/grant", {"ttl": 5, "id": 2**53}),
                      ("/lease/keepalive", {}),
                      ("/lease/revoke", {"id": "x"}),
                      ("/set", {"key": "a", "value": "b", "lease": -1}),
                      ("/set", {"key": "a", "value": "b", "lease": 2**53})]:
        st, _, body = post(server, path, obj)
        assert st == 400 and body.endswith(b"\n") and len(body) > 5, \
            (path, obj, st, body)
    for q in ("/lease", "/lease?id=", "/lease?id=0", "/lease?id=x",
              "/lease?id=1&keys=maybe"):
        assert server.request("GET", q)[0] == 400, q
    assert server.request("GET", "/lease/grant")[0] == 405
    assert server.request("POST", "/leases")[0] == 405
    # curl, as a user would
    out = subprocess.run(
        ["curl", "-s", "-X", "POST", "-d", '{"ttl":30}',
         f"http://127.0.0.1:{server.http_port}/lease/grant"],
        capture_output=True, timeout=10)
    r = json.loads(out.stdout)
    assert r["ttl"] == 30
    out = subprocess.run(
        ["curl", "-s", "-i", f"http://127.0.0.1:{server.http_port}/leases"],
        capture_output=True, timeout=10).stdout.decode()
    assert "X-Pyazdb-Revision:" in out and f'"id":{r["id"]}' in out


def test_lease_limits(servers):
    s = servers(conf={"lease-max-count": "3", "lease-max-ttl": "60s"})
    ids = [grant(s, 60) for _ in range(3)]
    st, _, body = post(s, "/lease/grant", {"ttl": 10})
    assert st == 429, body
    assert post(s, "/lease/revoke", {"id": ids[0]})[0] == 200
    grant(s, 10)
    post(s, "/lease/revoke", {"id": ids[1]})
    st, _, body = post(s, "/lease/grant", {"ttl": 61})
    assert st == 400 and b"lease-max-ttl" in body


def test_lease_survives_restart_via_snapshot(servers):
    s = servers()
    lid = grant(s, 3600)
    short = grant(s, 1)
    post(s, "/set", {"key": "cfg", "value": "v", "lease": lid})
    for i in range(20):
        post(s, "/set", {"key": f"n{i}", "value": "x"})
    st, _, body = s.request("POST", "/admin/snapshot")
    assert st in (200, 204), body
    s.stop()
    s.start()
    leader_of([s])
    st, _, body = s.request("GET", f"/lease?id={lid}&keys=true")
    assert st == 200, body
    r = json.loads(body)
    assert r["ttl"] == 3600 and [k["key"] for k in r["keys"]] == ["cfg"]
    # the restarted leader gave the short lease its TTL again, then it
    # expired
    deadline = time.time() + 10
    while s.request("GET", f"/lease?id={short}")[0] == 200:
        assert time.time() < deadline, "short lease never expired"
        time.sleep(0.1)
    # revoking the restored lease deletes its key
    st, _, body = post(s, "/lease/revoke", {"id": lid})
    assert st == 200 and json.loads(body)["deleted"] == 1
    assert not present(s, "cfg") and present(s, "n3")


def test_lease_across_leader_failover(servers):
    nodes = make_cluster(servers)
    leader = leader_of(nodes)
    follower = next(n for n in nodes if n is not leader)
    ttl = 3
    lid = grant(follower, ttl)  # forwarded to the leader
    st, _, body = post(follower, "/set", {"key": "svc/x", "value": "up",
                                          "lease": lid})
    assert st == 204, body
    ka = KeepAlive(nodes, lid, every=0.3)
    wait_for(lambda: ka.ok >= 2, "keep-alives answered before the kill")
    leader.kill()
    survivors = [n for n in nodes if n is not leader]
    leader2 = leader_of(nodes, timeout=15, exclude=(leader,))
    # keep-alives go on against the new leader: the key outlives the TTL
    t_end = time.time() + 2.5 * ttl
    while time.time() < t_end:
        assert present(leader2, "svc/x"), "key expired during keep-alives"
        time.sleep(0.2)
    ok_after = ka.ok
    # keep-alives are answered by the new leader
    wait_for(lambda: ka.ok > ok_after, "a keep-alive answered after that")
    last = ka.stop()
    gone = wait_gone(leader2, ["svc/x"], timeout=ttl + 10)
    assert gone - last >= ttl - 0.2, gone - last
    for n in survivors:
        wait_gone(n, ["svc/x"], timeout=5, stale=True)
    st, _, body = leader2.request("GET", f"/lease?id={lid}")
    assert st == 404, body


def test_lease_expires_after_failover_without_keepalives(servers):
    """A leader change gives every lease its full TTL again, and the new
    leader then expires leases nobody keeps alive."""
    nodes = make_cluster(servers)
    leader = leader_of(nodes)
    lid = grant(leader, 2)
    post(leader, "/set", {"key": "eph", "value": "1", "lease": lid})
    leader.kill()
    leader2 = leader_of(nodes, timeout=15, exclude=(leader,))
    elected = time.time()
    gone = wait_gone(leader2, ["eph"], timeout=15)
    assert gone - elected >= 2 - 0.3  # never before the full TTL
    st, _, body = leader2.request("GET", "/metrics")
    assert "pyazdb_lease_expiries_total 1" in body.decode()


def test_cli_lease_commands(server):
    rc, out, err = cli(server, "lease", "grant", "30")
    assert rc == 0 and out.startswith("Granted lease "), err
    lid = int(out.split()[2])
    assert out == f"Granted lease {lid} with TTL 30s\n"
    rc, out, err = cli(server, "set", "--lease", str(lid), "app/k", "v")
    assert (rc, out) == (0, f"Set 'app/k' = 'v' (lease {lid})\n"), err
    rc, out, err = cli(server, "set", "--lease", "99", "app/z", "v")
    assert rc == 1 and "lease 99 not found" in err and out == ""
    rc, out, err = cli(server, "lease", "keepalive", str(lid))
    assert (rc, out) == (0, f"Lease {lid} kept alive, TTL 30s\n"), err
    rc, out, err = cli(server, "lease", "ttl", str(lid), "--keys")
    assert rc == 0 and out.startswith(f"Lease {lid}: TTL 30s, ") and \
        out.endswith(" 1 keys\napp/k\n"), out
    rc, out, _ = cli(server, "lease", "list")
    assert rc == 0 and out.startswith(f"{lid}\tttl=30\tremaining=") and \
        out.endswith("\tkeys=1\n")
    rc, out, _ = cli(server, "-o", "json", "lease", "ttl", str(lid))
    assert rc == 0 and json.loads(out)["id"] == lid
    rc, out, err = cli(server, "lease", "revoke", str(lid))
    assert (rc, out) == (0, f"Revoked lease {lid} (1 keys deleted)\n"), err
    assert not present(server, "app/k")
    rc, out, err = cli(server, "lease", "ttl", str(lid))
    assert rc == 1 and "not found" in err
    for bad in (["lease"], ["lease", "grant"], ["lease", "grant", "0"],
                ["lease", "grant", "x"], ["lease", "revoke", "0"],
                ["lease", "frob"], ["set", "--lease", "x", "k", "v"]):
        rc, _, err = cli(server, *bad)
        assert rc == 1 and err, bad


def test_cli_keepalive_follow(server):
    from grpc_helpers import CLI
    lid = grant(server, 1)
    post(server, "/set", {"key": "hb", "value": "1", "lease": lid})
    p = subprocess.Popen([CLI, "--http", f"127.0.0.1:{server.http_port}",
                          "lease", "keepalive", str(lid), "--follow"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        time.sleep(3)  # three TTLs
        assert present(server, "hb")
    finally:
        p.terminate()
        out, _ = p.communicate(timeout=10)
    assert out.decode().count(f"Lease {lid} kept alive") >= 5
    wait_gone(server, ["hb"], timeout=5)


def test_leases_reach_a_lagging_node_by_install_snapshot(servers):
    """A follower that missed grants, attaches and a revoke catches up
    through InstallSnapshot (leases are in snapshots): every node then
    holds the same leases, keys and digest, and the lagging node, made
    leader, serves and expires them."""
    from test_snapshot import SNAP, settled, wait_snapshot_index, write_many
    nodes = make_cluster(servers, conf=SNAP)
    leader = leader_of(nodes)
    lagging = next(s for s in nodes if s is not leader)
    lagging.stop()
    keep = grant(leader, 3600)
    gone = grant(leader, 3600)
    short = grant(leader, 3)
    for k, lid in (("a", keep), ("b", gone), ("c", short)):
        assert post(leader, "/set", {"key": k, "value": "v",
                                     "lease": lid})[0] == 204
    assert len(write_many(leader, [f"k{i}" for i in range(1500)])) == 1500
    assert post(leader, "/lease/revoke", {"id": gone})[0] == 200
    live = [s for s in nodes if s is not lagging]
    wait_snapshot_index(live, 1000)
    lagging.start()
    sts = settled(nodes)
    assert len({st["digest"] for st in sts}) == 1
    assert "installed snapshot" in lagging.read_log()
    assert present(lagging, "a", stale=True)
    assert not present(lagging, "b", stale=True)
    # hand leadership to the lagging node: it knows the leases
    st, _, body = leader.request(
        "POST", f"/cluster/transfer?to={lagging.name}")
    assert st == 204, body
    assert leader_of(nodes) is lagging
    st, _, body = lagging.request("GET", f"/lease?id={keep}&keys=true")
    assert st == 200 and [k["key"] for k in json.loads(body)["keys"]] == ["a"]
    wait_gone(lagging, ["c"], timeout=15)
    assert present(lagging, "a")
    settled(nodes)


def test_watchers_see_an_expiry_as_one_revision_of_deletes(servers):
    """Keys of an expired lease are deleted through Raft at one revision,
    so a watcher on any node gets them as one event of deletes, in order
    with the writes around it."""
    from test_watch import SSE
    nodes = make_cluster(servers, n=3)
    leader = leader_of(nodes)
    follower = next(s for s in nodes if s is not leader)
    lid = grant(leader, 1)
    for k in ("svc/a", "svc/b", "svc/c"):
        assert post(leader, "/set", {"key": k, "value": "up",
                                     "lease": lid})[0] == 204
    start = leader.status()["revision"]
    w = SSE(follower.http_port, f"prefix=svc/&start_revision={start}"
            "&prev_kv=true")
    assert w.status == 200
    wait_gone(leader, ["svc/a", "svc/b", "svc/c"], timeout=8)
    assert post(leader, "/set", {"key": "svc/after", "value": "x"})[0] == 204
    evs = w.revisions(3, timeout=10)
    w.close()
    rev_c, rev_exp, rev_after = (e["revision"] for e in evs)
    assert rev_c == start and rev_after == rev_exp + 1
    assert sorted((e["type"], e["kv"]["key"], e["prev_kv"]["lease"])
                  for e in evs[1]["events"]) == \
        [("delete", k, lid) for k in ("svc/a", "svc/b", "svc/c")]
    assert all(e["kv"]["mod_revision"] == rev_exp for e in evs[1]["events"])
    assert evs[2]["events"][0]["kv"]["key"] == "svc/after"
