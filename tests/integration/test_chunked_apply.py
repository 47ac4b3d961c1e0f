"""An entry whose apply deletes very many keys (a prefix delete, a lease
revoke) is applied in steps across loop turns: heartbeats, /health and
/status go on meanwhile, no election happens, and no read sees part of
it."""
import json
import os
import threading
import time

import pytest

from test_cluster import leader_of, make_cluster
from conftest import wait_for

# Bounds on the loop's latency: alone, not beside other test files.
pytestmark = pytest.mark.serial

# Enough keys that applying the delete in one go holds a node's loop
# well past the election timeout below (about 1.5 us a key: 0.6 s), and
# more under a sanitizer, which slows the apply more than the rest.
KEYS = int(os.environ.get("PYAZDB_CHUNKED_KEYS", "400000"))
CONF = {"election-timeout": "300ms", "heartbeat-interval": "50ms"}


def load(s, n, prefix, lease=0):
    """n keys prefix%07d through /txn batches of 128 puts."""
    for b in range(0, n, 128):
        ops = []
        for i in range(b, min(n, b + 128)):
            put = {"key": f"{prefix}{i:07d}", "value": "v" * 100}
            if lease:
                put["lease"] = lease
            ops.append({"put": put})
        st, _, out = s.request("POST", "/txn", json.dumps({"success": ops}),
                               timeout=30)
        assert st == 200, out


class Watcher:
    """Polls every node until stopped: /health (its latency), /status
    (term, keys) and two stale reads, the first and the last key of the
    range being deleted, in that order. The keys go in key order, so a
    node that answers the first missing and then the last present showed
    part of an entry."""

    def __init__(self, nodes, first, last, n):
        self.nodes, self.first, self.last, self.n = nodes, first, last, n
        self.stop = threading.Event()
        self.max_health = 0.0
        self.terms = set()
        self.keys = set()
        self.partial = []
        self.errors = []
        self.polls = 0
        self.uncounted = {s.name: set() for s in nodes}
        self.threads = [threading.Thread(target=self.run, args=(s,))
                        for s in nodes]
        self.threads += [threading.Thread(target=self.scrape, args=(s,))
                         for s in nodes]

    def get(self, s, key):
        st, _, _ = s.request(
            "GET", f"/get?key={key}&consistency=stale", timeout=10)
        return st

    def run(self, s):
        while not self.stop.is_set():
            try:
                t = time.monotonic()
                st, _, body = s.request("GET", "/health", timeout=10)
                took = time.monotonic() - t
                self.max_health = max(self.max_health, took)
                if st != 200:
                    self.errors.append((s.name, "health", st, body))
                sts = s.status(timeout=10)
                self.terms.add(sts["term"])
                self.keys.add(sts["keys"])
                a = self.get(s, self.first)
                b = self.get(s, self.last)
                if a == 404 and b == 200:
                    self.partial.append(s.name)
                self.polls += 1
            except OSError as e:
                self.errors.append((s.name, repr(e)))
            time.sleep(0.005)

    def scrape(self, s):
        """One scrape is made in one loop turn: the applied index less the
        entries counted as applied stays the same throughout."""
        while not self.stop.is_set():
            try:
                st, _, body = s.request("GET", "/metrics", timeout=10)
                m = dict(ln.rsplit(" ", 1) for ln in body.decode().split("\n")
                         if ln.startswith("pyazdb_raft_applied_"))
                self.uncounted[s.name].add(
                    int(float(m["pyazdb_raft_applied_index"])) -
                    int(float(m["pyazdb_raft_applied_entries_total"])))
            except OSError as e:
                self.errors.append((s.name, repr(e)))
            time.sleep(0.005)

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join()


def settle(nodes, want_keys):
    """Every node applied the same index and holds want_keys keys; their
    digests agree. Returns the statuses."""
    def same():
        sts = [s.status() for s in nodes]
        return (len({st["applied_index"] for st in sts}) == 1 and
                all(st["keys"] == want_keys for st in sts)) and sts
    sts = wait_for(same, "every node applied the same", timeout=60)
    assert len({st["digest"] for st in sts}) == 1, sts
    return sts


def check_calm(w, term, n):
    assert w.polls > 10
    assert not w.errors, w.errors[:5]
    assert w.terms == {term}, f"terms seen {w.terms}: an election happened"
    # The loop was never held near the election timeout (300 ms).
    assert w.max_health < 0.15, f"/health took {w.max_health:.3f} s"
    # /status counts whole entries only: before or after.
    assert w.keys <= {n, 0}, sorted(w.keys)[:10]
    assert not w.partial, f"part of an entry was read on {w.partial}"
    # pyazdb_raft_applied_entries_total counts an entry once it is wholly
    # applied, as the applied index moves.
    for name, diffs in w.uncounted.items():
        assert len(diffs) == 1, (name, sorted(diffs))


def test_huge_prefix_delete_keeps_the_cluster_calm(servers):
    nodes = make_cluster(servers, conf=CONF)
    leader = leader_of(nodes)
    load(leader, KEYS, "k/")
    term = settle(nodes, KEYS)[0]["term"]
    with Watcher(nodes, "k/0000000", f"k/{KEYS - 1:07d}", KEYS) as w:
        time.sleep(0.3)
        st, _, out = leader.request("POST", "/delete",
                                    json.dumps({"prefix": "k/"}), timeout=60)
        assert st == 200, out
        assert json.loads(out)["deleted"] == KEYS
        settle(nodes, 0)
        time.sleep(0.3)
    check_calm(w, term, KEYS)
    assert leader_of(nodes) is leader


def test_revoke_of_a_lease_with_many_keys_keeps_the_cluster_calm(servers):
    n = KEYS // 2
    nodes = make_cluster(servers, conf=CONF)
    leader = leader_of(nodes)
    st, _, out = leader.request("POST", "/lease/grant",
                                json.dumps({"ttl": 3600}))
    assert st == 200, out
    lease = json.loads(out)["id"]
    load(leader, n, "l/", lease=lease)
    term = settle(nodes, n)[0]["term"]
    with Watcher(nodes, "l/0000000", f"l/{n - 1:07d}", n) as w:
        time.sleep(0.3)
        st, _, out = leader.request("POST", "/lease/revoke",
                                    json.dumps({"id": lease}), timeout=60)
        assert st == 200, out
        assert json.loads(out)["deleted"] == n
        settle(nodes, 0)
        time.sleep(0.3)
    check_calm(w, term, n)
    st, _, _ = leader.request("GET", f"/lease?id={lease}")
    assert st == 404
