"""scripts/cluster.sh (and so `make run`) as a user drives it: start,
ready, writes with curl, a node killed, `restart N`, `stop`; and the
foreground `run` that survives a killed node and stops everything on a
signal. Each test gets its own run directory and free port ranges
(RUN_DIR, MANDI_PORT, HTTP_PORT, GRPC_PORT, RAFT_PORT), so it collides
neither with a developer's `make run` nor with other tests."""
import os
import random
import signal
import socket
import subprocess
import time

import pytest

from conftest import (ROOT, SANITIZER_MARKS, _handed_out, hand_out,
                      listen_span)

SCRIPT = os.path.join(ROOT, "scripts", "cluster.sh")


def free_range(n):
    """n consecutive free ports, below the ephemeral range (in this
    worker's slice of it)."""
    low, high = listen_span() or (20000, 32000)
    while True:
        base = random.randrange(low, high + 1 - n)
        ports = range(base, base + n)
        if any(p in _handed_out for p in ports):
            continue
        ok = True
        for p in ports:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            hand_out(ports)
            return base


class Cluster:
    def __init__(self, tmp_path, n):
        self.run_dir = str(tmp_path / "run")
        self.env = dict(os.environ)
        for var in ("NODE_ID", "RAFT_ADDR", "RAFT_DATA", "RAFT_LEADER",
                    "GRPC_ADDR", "HTTP_ADDR", "MANDI_ADDR"):
            self.env.pop(var, None)
        self.mandi_port = free_range(1)
        self.http = free_range(n)
        self.env.update({
            "RUN_DIR": self.run_dir,
            "MANDI_PORT": str(self.mandi_port),
            "HTTP_PORT": str(self.http),
            "GRPC_PORT": str(free_range(n)),
            "RAFT_PORT": str(free_range(n)),
            # the binary as built: `make all` here could rebuild it with
            # other flags than the test run's (a sanitizer build)
            "CLUSTER_BUILD": "no",
        })

    def sh(self, *args, timeout=90):
        return subprocess.run([SCRIPT, *args], env=self.env, cwd=ROOT,
                              capture_output=True, text=True,
                              timeout=timeout)

    def pid(self, name):
        with open(os.path.join(self.run_dir, f"{name}.pid")) as f:
            return int(f.read())

    def curl(self, node, *args):
        r = subprocess.run(["curl", "-s", "-w", "\n%{http_code}",
                            *args[:-1],
                            f"http://127.0.0.1:{self.http + node - 1}"
                            + args[-1]],
                           capture_output=True, text=True, timeout=30)
        body, _, code = r.stdout.rpartition("\n")
        return int(code), body

    def logs(self):
        """The processes' logs: run/*.log, and the foreground run's."""
        out = []
        paths = [os.path.join(self.run_dir, f)
                 for f in sorted(os.listdir(self.run_dir))
                 if f.endswith(".log")]
        if os.path.exists(self.run_dir + "-fg.log"):
            paths.append(self.run_dir + "-fg.log")
        for p in paths:
            with open(p, errors="replace") as fh:
                out.append(f"----- {os.path.basename(p)} -----\n{fh.read()}")
        return "\n".join(out)


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie of ours counts as gone
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def wait_gone(pids, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline and any(alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if alive(p)]


@pytest.fixture
def cluster(tmp_path, request):
    made = []

    def make(n):
        c = Cluster(tmp_path, n)
        made.append(c)
        return c

    yield make
    problems = []
    for c in made:
        # whatever the test left: the script stops what its PID files name
        c.sh("stop")
        if not os.path.isdir(c.run_dir):
            continue
        logs = c.logs()
        failed = getattr(request.node, "rep_call", None)
        if failed is not None and failed.failed:
            print(logs)
        reports = [m for m in SANITIZER_MARKS if m in logs]
        if reports:
            problems.append(f"sanitizer report {reports}:\n{logs}")
    if problems:
        pytest.fail("\n".join(problems))


def test_start_write_kill_restart_stop(cluster):
    c = cluster(3)
    r = c.sh("start", "3")
    assert r.returncode == 0, r.stderr + c.logs()
    assert "cluster: ready: mandi on" in r.stderr
    assert "3 node(s)" in r.stderr
    pids = {n: c.pid(n) for n in ("mandi", "node1", "node2", "node3")}
    assert all(alive(p) for p in pids.values())

    # ready means joined: every node is a voter, a write through a
    # follower and a read on another work at once
    code, body = c.curl(1, "/cluster")
    assert code == 200 and body.count('"voter":true') == 3, body
    assert c.curl(2, "-X", "POST", "-d", '{"key":"k","value":"v1"}',
                  "/set")[0] == 204
    assert c.curl(3, "/get?key=k") == (200, "v1")

    st = c.sh("status")
    assert st.returncode == 0
    for n, p in pids.items():
        assert f"{n}: running (pid {p})" in st.stdout

    # node2 killed: the others go on, status says so
    os.kill(pids["node2"], signal.SIGKILL)
    assert not wait_gone([pids["node2"]])
    st = c.sh("status")
    assert "node2: not running" in st.stdout
    assert c.curl(1, "-X", "POST", "-d", '{"key":"k","value":"v2"}',
                  "/set")[0] == 204

    # restart 2: back with its data, tracked under a new PID
    r = c.sh("restart", "2")
    assert r.returncode == 0, r.stderr + c.logs()
    assert "node2 restarted" in r.stderr
    new2 = c.pid("node2")
    assert new2 != pids["node2"] and alive(new2)
    deadline = time.time() + 20
    while c.curl(2, "/get?key=k") != (200, "v2"):
        assert time.time() < deadline, c.logs()
        time.sleep(0.2)
    # restart of a running node: stops it first
    r = c.sh("restart", "3")
    assert r.returncode == 0, r.stderr
    assert not alive(pids["node3"])
    new3 = c.pid("node3")

    # start again while it runs: refused, nothing touched
    r = c.sh("start", "3")
    assert r.returncode == 1 and "already runs" in r.stderr

    r = c.sh("stop")
    assert r.returncode == 0
    everyone = [pids["mandi"], pids["node1"], new2, new3]
    assert not wait_gone(everyone), everyone
    assert not [f for f in os.listdir(c.run_dir) if f.endswith(".pid")]
    # stopped gracefully: each node logged it
    assert c.logs().count(" I stopped") >= 4
    assert "no node runs" in c.sh("status").stdout


def test_run_survives_a_killed_node(cluster):
    c = cluster(2)
    out = c.run_dir + "-fg.log"
    os.makedirs(c.run_dir, exist_ok=True)
    with open(out, "w") as f:
        # SIGINT as a terminal gives it: a shell cannot trap a signal that
        # was ignored when it started (as it is for a test suite started
        # in the background), so the default is restored first.
        script = subprocess.Popen(
            [SCRIPT, "run", "2"], env=c.env, cwd=ROOT, stdout=f,
            stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    def log():
        with open(out, errors="replace") as fh:
            return fh.read()

    def wait_for(text, timeout=60):
        deadline = time.time() + timeout
        while text not in log():
            assert script.poll() is None, log()
            assert time.time() < deadline, log()
            time.sleep(0.1)

    try:
        wait_for("cluster: ready:")
        # the processes log to the terminal, each line tagged
        assert " node1 I " in log() and " mandi I " in log()
        pids = {n: c.pid(n) for n in ("mandi", "node1", "node2")}
        os.kill(pids["node1"], signal.SIGKILL)
        wait_for("cluster: node1 exited; the others go on")
        time.sleep(2)
        assert script.poll() is None, log()
        assert alive(pids["mandi"]) and alive(pids["node2"])

        r = c.sh("restart", "1")
        assert r.returncode == 0, r.stderr + c.logs()
        new1 = c.pid("node1")
        assert c.curl(1, "/status")[0] == 200

        # Ctrl-C (SIGINT to the script) stops everything, the restarted
        # node included
        script.send_signal(signal.SIGINT)
        assert script.wait(60) == 0, log()
        assert "cluster: stopping" in log()
        assert not wait_gone([pids["mandi"], pids["node2"], new1])
    finally:
        if script.poll() is None:
            script.kill()
            script.wait()
