"""A real Prometheus server (Debian's prometheus package) scrapes a 3-node
cluster on loopback every second; its query API then shows a rate of
writes, and after the leader is killed, the leader-changes counter risen
on the survivors. Prometheus runs on a port of its own with its own
storage in the test's directory (never :9090, never a system service's
data) and is stopped by its PID."""
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from conftest import free_port
from test_cluster import leader_of, make_cluster, put

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


def http_get(url, timeout=2):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return None, b""


@pytest.fixture
def prometheus(tmp_path):
    """Start prometheus for targets (a list of host:port) and give its
    base URL."""
    procs = []

    def start(targets):
        port = free_port()
        conf = tmp_path / "prometheus.yml"
        conf.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n"
            "  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: pyazdb\n"
            "    static_configs:\n"
            f"      - targets: {json.dumps(targets)}\n")
        log = open(tmp_path / "prometheus.log", "wb")
        p = subprocess.Popen(
            [PROMETHEUS, f"--config.file={conf}",
             f"--storage.tsdb.path={tmp_path / 'prom-data'}",
             f"--web.listen-address=127.0.0.1:{port}",
             "--log.level=warn"],
            stdout=log, stderr=log, cwd=tmp_path)
        procs.append((p, log))
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            assert p.poll() is None, (tmp_path / "prometheus.log").read_text()
            if http_get(base + "/-/ready")[0] == 200:
                return base
            time.sleep(0.1)
        raise AssertionError("prometheus not ready:\n"
                             + (tmp_path / "prometheus.log").read_text())

    yield start
    for p, log in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        log.close()


def query(base, expr):
    """The instant vector of expr: {instance: value}."""
    st, body = http_get(base + "/api/v1/query?"
                        + urllib.parse.urlencode({"query": expr}))
    if st != 200:
        return {}
    r = json.loads(body)
    assert r["status"] == "success", r
    return {s["metric"].get("instance", ""): float(s["value"][1])
            for s in r["data"]["result"]}


def poll(pred, timeout, what):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"{what}: last {last!r}")


@pytest.mark.skipif(not os.access(PROMETHEUS, os.X_OK),
                    reason="prometheus missing: scripts/install-deps.sh test")
def test_prometheus_scrapes_the_cluster(servers, prometheus):
    t0 = time.monotonic()
    nodes = make_cluster(servers)
    inst = {s.name: f"127.0.0.1:{s.http_port}" for s in nodes}
    base = prometheus(list(inst.values()))
    leader = leader_of(nodes)
    # every node scraped and up
    poll(lambda: (lambda up: len(up) == 3 and all(v == 1 for v in up.values())
                  and up)(query(base, 'up{job="pyazdb"}')), 10, "up")

    # writes: the leader's rate of answered HTTP sets is above zero
    n = [0]

    def writes_seen():
        for _ in range(5):
            n[0] += 1
            st, _, _ = put(leader, f"k{n[0]}", "v")
            assert st == 204
        r = query(base, 'sum by (instance) (rate(pyazdb_requests_total'
                  '{api="http",method="set",code="204"}[10s]))')
        return r.get(inst[leader.name], 0) > 0 and r

    rates = poll(writes_seen, 10, "rate of writes")
    assert all(i in inst.values() for i in rates)

    # leader changes counted by the survivors once the leader is killed
    rest = [s for s in nodes if s is not leader]
    q = "pyazdb_raft_leader_changes_total"
    before = poll(lambda: (lambda r: all(inst[s.name] in r for s in rest)
                           and r)(query(base, q)), 5, "leader changes")
    leader.kill()
    leader_of(rest, exclude=(leader,))

    def risen():
        r = query(base, q)
        return all(r.get(inst[s.name], 0) > before[inst[s.name]]
                   for s in rest) and r

    poll(risen, 10, "leader changes after the kill")
    r = query(base, f"increase({q}[20s])")
    assert all(r.get(inst[s.name], 0) > 0 for s in rest), r
    # the killed node's target is down
    poll(lambda: query(base, 'up{job="pyazdb"}').get(inst[leader.name]) == 0,
         10, "killed leader down")
    assert time.monotonic() - t0 < 40
