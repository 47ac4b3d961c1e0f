"""The etcd v3 API driven by a third-party etcd client library: the npm
package etcd3 (pure JavaScript over @grpc/grpc-js), installed on first use
by npm_modules.py into the git-ignored node_modules/ at the top of the
tree. etcd3_client.js runs put/get, prefix reads, deletes, a txn with both
branches, leases (keepalive, revoke, expiry), watchers, the library's
election and its lock against a 3-node cluster, given all three endpoints and then a
follower alone. Without Node.js and npm, or when npm cannot install the
package, the test fails saying why: it never passes, nor skips, without
running."""
import json
import os
import subprocess

import pytest

from npm_modules import node_modules  # noqa: F401 (fixture)
from test_cluster import wait_value
from test_etcd import cluster  # noqa: F401 (fixture: nodes, leader, follower)

SCRIPT = os.path.join(os.path.dirname(__file__), "etcd3_client.js")


def run_client(node_modules, ports, prefix):
    env = dict(os.environ, NODE_PATH=node_modules)
    eps = ",".join(f"127.0.0.1:{p}" for p in ports)
    try:
        p = subprocess.run(["node", SCRIPT, eps, prefix], capture_output=True,
                           env=env, timeout=150)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"etcd3_client.js ran over 150 s: {e.stdout!r}")
    err = p.stderr.decode(errors="replace")[-3000:]
    assert p.returncode == 0, f"exit {p.returncode}: {p.stdout!r} {err}"
    return json.loads(p.stdout)


@pytest.mark.parametrize("endpoints", ["all", "follower"])
def test_etcd3_npm_client(cluster, node_modules, endpoints):
    nodes, leader, follower = cluster
    ports = ([s.grpc_port for s in nodes] if endpoints == "all"
             else [follower.grpc_port])
    out = run_client(node_modules, ports, f"{endpoints}/")
    assert "fatal" not in out and "timeout" not in out, out

    # the library's election, its first campaign the store's first write:
    # elected at once, the second waits until the first resigns, and the
    # observer sees the change
    el = out["election"]
    assert el.get("first_led") == "one" and el["second_waited"], el
    assert el["after_resign"] == "two" and "two" in el["observed"], el
    assert el["left"] is None, el
    assert out["put_get"] == {"value": "v1", "missing": None}
    P = f"{endpoints}/"
    assert out["prefix"] == {
        "all": {P + "p/a": "1", P + "p/b": "2", P + "p/c/d": "3"},
        "keys": [P + "p/a", P + "p/b", P + "p/c/d"],
        "count": 3}
    assert out["delete"] == {"one_deleted": "1", "rest_deleted": "2",
                             "left": [], "q": "4"}
    # first run: the compare holds, then branch; second: else branch, whose
    # range sees the first run's write
    assert out["txn"] == {"first_succeeded": True, "second_succeeded": False,
                          "t": "1", "won": "yes", "lost": "yes",
                          "else_get": ["1"]}
    lease = out["lease"]
    assert lease == {"id_ok": True, "keepalive_ttl": 30,
                     "keepalive_id_matches": True, "key_leases_match": True,
                     "before": [P + "l/a", P + "l/b"], "after": [],
                     "revoked": True}
    # a put naming the revoked lease: etcd's error, which the library maps
    # to its own class; nothing written
    err = out["lease_error"]
    assert err.get("class") == "EtcdLeaseInvalidError", err
    assert err["is_lease_invalid"] and err["key"] is None, err
    assert "requested lease not found" in err["message"], err
    # a 2 s lease outlives 4 s on the library's keepalives, then expires
    # once they stop
    exp = out["lease_expiry"]
    assert exp.get("keepalives") and exp["held_ms_over_ttl"], exp
    assert exp["alive_while_kept"] == "alive" and exp["expired"] is True, exp
    assert exp["expired_within_s"] <= 5, exp
    # each watcher sees its own events, in revision order, and ends on cancel
    assert out["watch"] == {
        "key": [["put", "w", "1"], ["put", "w", "3"], ["delete", "w"]],
        "prefix": [["put", "wp/a", "2"], ["put", "wp/b", "4"],
                   ["delete", "wp/a"], ["delete", "wp/b"]],
        "ended": {"key": True, "prefix": True}}
    # two clients contend for the library's lock (a lease and a txn on
    # create revision 0): the second fails while the first holds it and
    # acquires only after the release; the lock key goes with its lease
    lock = out["lock"]
    assert lock.get("log") == ["1 acquired", "1 releasing", "2 acquired"], lock
    assert lock["failed_tries_while_held"], lock
    assert lock["failed_with"] == "EtcdLockFailedError", lock
    assert lock["lock_key_left"] == 0, lock

    # what the library wrote is what PyazDB's own API reads, on every node
    for s in nodes:
        wait_value(s, f"{P}t", "1")
