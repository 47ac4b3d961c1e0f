"""Fixtures that start real pyazdb-server processes on 127.0.0.1.

Every server gets free ports and a config file written into a temporary
directory; its stderr goes to a log file that is printed when a test fails
and scanned for sanitizer reports when the server stops. Traffic stays on
the loopback interface.

A server that ends in a way the test did not cause fails the test at
teardown: killed by a signal the test did not send (SIGSEGV, SIGABRT...),
or a non-zero exit status the test did not wait for with wait_exit().
Exit status 0 (a graceful stop, a removed node) is always fine.
"""
import collections
import os
import random
import signal
import socket
import subprocess
import time
import http.client

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SERVER = os.path.join(ROOT, "src", "pyazdb-server")
SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
                   "runtime error:", "SUMMARY: UndefinedBehaviorSanitizer",
                   "assertion failed")


_handed_out = set()
_handed_order = collections.deque()  # the same ports, oldest first


def hand_out(ports):
    """Remember ports as handed out. Only the latest half of this worker's
    range is remembered: a long run in a narrow range (many workers) would
    otherwise run out, and a port handed out that long ago is either
    closed or still bound, which free_port sees."""
    for p in ports:
        _handed_out.add(p)
        _handed_order.append(p)
    span = listen_span()
    keep = (span[1] - span[0] + 1) // 2 if span else 10000
    while len(_handed_order) > keep:
        _handed_out.discard(_handed_order.popleft())


def _worker():
    """(index, count) of this pytest-xdist worker; (0, 1) when the tests
    run in one process."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "")
    try:
        count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
        index = int(name[2:]) if name.startswith("gw") else 0
    except ValueError:
        return 0, 1
    return (index, count) if 0 <= index < count else (0, 1)


def listen_span():
    """Ports for listeners: below the kernel's ephemeral range, which the
    local ends of outgoing connections (clients, peers, etcd) draw from,
    so that none of them can take a port between its choice here and the
    server's bind; when tests run in several workers (make
    test-integration), a slice of its own for each, so that two workers
    never choose the same port before either binds it."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    if low <= 12000:
        return None  # an unusual range: let the kernel choose
    index, count = _worker()
    width = (low - 10000) // count
    return 10000 + index * width, 10000 + (index + 1) * width - 1


_rng = random.Random(os.getpid() ^ int(time.time() * 1e6))


def free_port(host="127.0.0.1"):
    """A port nobody listens on now, and never handed out before in this
    run (the kernel may offer the same ephemeral port twice in a row)."""
    span = listen_span()
    while True:
        with socket.socket() as s:
            try:
                s.bind((host, _rng.randint(*span) if span else 0))
            except OSError:
                continue  # in use: try another
            port = s.getsockname()[1]
        if port not in _handed_out:
            hand_out([port])
            return port


def log_rows(cols):
    """SQL for the rows of raft.db's log, which lives in eight tables (one
    per segment of entries, in turn): cols of every row, by index."""
    return " UNION ALL ".join(
        f"SELECT {cols} FROM {t}"
        for t in ["log"] + [f"log{k}" for k in range(1, 8)]) + " ORDER BY 1"


def wait_for(pred, what="condition", timeout=15, step=0.02):
    """Poll pred() until it returns something true, and return that; fail
    after `timeout` seconds naming `what` and pred's last answer."""
    deadline = time.time() + timeout
    while True:
        last = pred()
        if last:
            return last
        if time.time() >= deadline:
            raise AssertionError(f"timed out waiting for {what} "
                                 f"(last: {last!r})")
        time.sleep(step)


class Server:
    """One pyazdb-server process."""

    def __init__(self, tmp, name="node1", args=(), conf=None, env=None):
        self.name = name
        self.dir = os.path.join(tmp, name)
        os.makedirs(self.dir, exist_ok=True)
        self.http_port = free_port()
        self.grpc_port = free_port()
        self.raft_port = free_port()
        self.conf_path = os.path.join(self.dir, "pyazdb.conf")
        self.conf = {
            "node-id": name,
            "http-addr": f"127.0.0.1:{self.http_port}",
            "grpc-addr": f"127.0.0.1:{self.grpc_port}",
            "raft-addr": f"127.0.0.1:{self.raft_port}",
            "raft-data": os.path.join(self.dir, "data"),
            "raft-bootstrap": "yes",
            "log-level": "debug",
            # not the default 127.0.0.1:7000, which may be a developer's
            # `make run` cluster: tests that use mandi give its address
            "mandi-addr": "none",
            # tests that use mandi wait less for registration and joins
            # than with the default 2s
            "mandi-interval": "200ms",
        }
        self.conf.update(conf or {})
        self.write_conf()
        self.args = list(args)
        self.env = dict(os.environ)
        for var in ("NODE_ID", "RAFT_ADDR", "RAFT_DATA", "RAFT_LEADER",
                    "GRPC_ADDR", "HTTP_ADDR", "MANDI_ADDR"):
            self.env.pop(var, None)
        self.env.update(env or {})
        self.env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
        # raft.db cuts its log into segments of 16 entries, not 32768, so
        # that the short logs of tests cross many: compaction empties
        # whole tables, and deletes rows one by one where a table holds
        # later entries too, as a long-running node's does
        self.env.setdefault("PYAZDB_TEST_LOG_SEGMENT", "16")
        self.log_path = os.path.join(self.dir, "server.log")
        self.proc = None
        self.procs = []  # every process started, oldest first
        self.ssl_context = None  # set for a server whose HTTP is HTTPS

    def write_conf(self):
        with open(self.conf_path, "w") as f:
            for k, v in self.conf.items():
                f.write(f'{k} "{v}"\n')

    def status(self, timeout=5):
        import json
        st, _, body = self.request("GET", "/status", timeout=timeout)
        assert st == 200, body
        return json.loads(body)

    def start(self, wait=True, argv=None, cwd=None):
        """Start the server (argv: another command line for it)."""
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(argv or [SERVER, self.conf_path] +
                                     self.args, stdout=self.log,
                                     stderr=self.log, env=self.env, cwd=cwd)
        self.proc.pz_signals = set()  # signals the test sent it
        self.proc.pz_waited = False   # its exit status seen by wait_exit()
        self.procs.append(self.proc)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout=10, grace=2):
        """Wait until the process is alive (GET /health?serializable=true),
        then up to `grace` seconds more for it to be healthy (GET /health:
        a leader known and heard from), which a node bootstrapping alone
        is a few milliseconds later; a node whose cluster is not there yet
        stays unhealthy, and that is no error here."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited with {self.proc.returncode}:\n"
                    + self.read_log())
            try:
                st, _, _ = self.request("GET", "/health?serializable=true",
                                        timeout=1)
                if st == 200:
                    break
            except OSError:
                pass
            time.sleep(0.05)
        else:
            raise AssertionError(f"{self.name} not ready:\n"
                                 + self.read_log())
        healthy_by = time.time() + grace
        while time.time() < healthy_by:
            try:
                if self.request("GET", "/health", timeout=1)[0] == 200:
                    return
            except OSError:
                return
            time.sleep(0.02)

    def request(self, method, path, body=None, headers=None, timeout=10):
        if self.ssl_context is not None:
            c = http.client.HTTPSConnection("127.0.0.1", self.http_port,
                                            timeout=timeout,
                                            context=self.ssl_context)
        else:
            c = http.client.HTTPConnection("127.0.0.1", self.http_port,
                                           timeout=timeout)
        try:
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            return r.status, dict(r.getheaders()), r.read()
        finally:
            c.close()

    def metrics(self):
        """GET /metrics as {sample: value}, a sample as the page writes
        it: a name, with its labels if it has any
        ('pyazdb_clients_connected{listener="http"}')."""
        st, _, body = self.request("GET", "/metrics")
        assert st == 200, body
        out = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                sample, _, value = line.rpartition(" ")
                out[sample] = float(value)
        return out

    def metric(self, name):
        """One sample of GET /metrics: a name with its labels as the page
        writes them, or a bare name (a family's first series)."""
        for sample, value in self.metrics().items():
            if sample == name or sample.startswith(name + "{"):
                return value
        raise KeyError(name)

    def read_log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def stop(self, sig=signal.SIGTERM, timeout=15):
        """Stop the server; returns its exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        if sig in (signal.SIGTERM, signal.SIGINT):
            # In case it is paused; before the signal, never after: a
            # SIGCONT discards a pending SIGSTOP, and LeakSanitizer stops
            # the exiting process with one (ptrace attach), so a SIGCONT
            # landing then leaves its tracer waiting forever.
            self.proc.send_signal(signal.SIGCONT)
        self.signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.proc.wait()
            raise AssertionError(f"{self.name} did not stop:\n"
                                 + self.read_log())
        return self.proc.returncode

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.signal(signal.SIGKILL)
            self.proc.wait()

    def signal(self, sig):
        """Send sig to the running process, noting that the test sent it
        (a death by a signal the test sent is not a crash)."""
        self.proc.pz_signals.add(sig)
        self.proc.send_signal(sig)

    def wait_exit(self, timeout=10):
        """Wait for the process to exit by itself and return its status,
        which the test then judges: a non-zero status seen here is not an
        unexpected exit. A death by a signal the test did not send fails
        here, so `!= 0` never accepts a crash."""
        rc = self.proc.wait(timeout)
        why = self.exit_problem()
        if rc < 0 and why:
            raise AssertionError(why + ":\n" + self.read_log())
        self.proc.pz_waited = True
        return rc

    def exit_problem(self, proc=None):
        """Why proc (the current process by default) ended in a way the
        test neither caused nor waited for; None if it did not, or runs."""
        p = proc or self.proc
        if p is None or p.poll() is None or p.returncode == 0:
            return None
        rc = p.returncode
        if rc < 0:
            if -rc in p.pz_signals:
                return None
            try:
                name = signal.Signals(-rc).name
            except ValueError:
                name = f"signal {-rc}"
            return f"{self.name} (pid {p.pid}) was killed by {name}"
        if p.pz_waited:
            return None
        return (f"{self.name} (pid {p.pid}) exited with status {rc}, "
                "which the test did not wait for (wait_exit)")

    def sanitizer_reports(self):
        log = self.read_log()
        return [m for m in SANITIZER_MARKS if m in log]


class Mandi(Server):
    """One pyazdb-server process in mandi mode, on its own free port.
    request() talks to it; restart() starts it again on the same port."""

    def __init__(self, tmp, name="mandi", args=(), conf=None, env=None):
        self.name = name
        self.dir = os.path.join(tmp, name)
        os.makedirs(self.dir, exist_ok=True)
        self.port = free_port()
        self.http_port = self.port  # what Server.request() talks to
        self.url = f"http://127.0.0.1:{self.port}"
        self.conf_path = os.path.join(self.dir, "mandi.conf")
        self.conf = {
            "mode": "mandi",
            "mandi-addr": self.url,
            "log-level": "debug",
        }
        self.conf.update(conf or {})
        self.write_conf()
        self.args = list(args)
        self.env = dict(os.environ)
        for var in ("NODE_ID", "RAFT_ADDR", "RAFT_DATA", "RAFT_LEADER",
                    "GRPC_ADDR", "HTTP_ADDR", "MANDI_ADDR"):
            self.env.pop(var, None)
        self.env.update(env or {})
        self.env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
        self.log_path = os.path.join(self.dir, "mandi.log")
        self.proc = None
        self.procs = []  # every process started, oldest first
        self.ssl_context = None  # set for a server whose HTTP is HTTPS

    def wait_ready(self, timeout=10):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited with {self.proc.returncode}:\n"
                    + self.read_log())
            try:
                st, _, _ = self.request("GET", "/leader", timeout=1)
                if st in (200, 404):
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"{self.name} not ready:\n" + self.read_log())

    def restart(self):
        rc = self.stop()
        self.start()
        return rc


def _factory(cls, tmp_path, request, default_name):
    """Yields make(name=..., start=True, **kw) -> cls instance; stops every
    process at the end, fails the test on a sanitizer report, a process
    that does not stop or one that ended unexpectedly (exit_problem), and
    prints the logs of a failed test."""
    started = []

    def make(name=default_name, start=True, **kw):
        s = cls(str(tmp_path), name, **kw)
        started.append(s)
        if start:
            s.start()
        return s

    yield make
    problems = []
    for s in started:
        try:
            s.stop()
        except AssertionError as e:
            problems.append(str(e))
        for p in s.procs:
            why = s.exit_problem(p)
            if why:
                problems.append(why + ", log:\n" + s.read_log()[-6000:])
        reports = s.sanitizer_reports()
        if reports:
            problems.append(f"{s.name}: sanitizer report {reports}:\n"
                            + s.read_log())
    print_logs(request, started)
    if problems:
        pytest.fail("\n".join(problems))


@pytest.fixture
def servers(tmp_path, request):
    """Factory: servers(name=..., conf={...}) -> started Server. All are
    stopped at the end; the test fails on a sanitizer report, and logs are
    printed when it failed."""
    yield from _factory(Server, tmp_path, request, "node1")


@pytest.fixture(scope="module")
def module_servers(tmp_path_factory, request):
    """As servers, for servers that every test of a module shares (a
    cluster its tests only use keys, leases and watches of their own on),
    stopped and checked after the module's last test; check_shared()
    checks them after each test."""
    yield from _factory(Server, tmp_path_factory.mktemp("shared"), request,
                        "node1")


def print_logs(request, nodes):
    """The logs of nodes, if the test of `request` failed."""
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        for s in nodes:
            print(f"----- log of {s.name} -----\n{s.read_log()}")


def check_shared(request, nodes):
    """After a test on servers it shares with others (module_servers): their
    logs if it failed, and it fails if one of them stopped or reported a
    sanitizer error meanwhile."""
    print_logs(request, nodes)
    for s in nodes:
        assert s.proc.poll() is None, \
            f"{s.name} exited ({s.proc.returncode}):\n" + s.read_log()[-6000:]
        reports = s.sanitizer_reports()
        assert not reports, f"{s.name}: sanitizer report {reports}:\n" \
            + s.read_log()


@pytest.fixture
def mandis(tmp_path, request):
    """Factory: mandis(conf={...}) -> started Mandi, as servers()."""
    yield from _factory(Mandi, tmp_path, request, "mandi")


@pytest.fixture
def mandi(mandis):
    return mandis()


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


@pytest.fixture
def server(servers):
    return servers()


@pytest.fixture(scope="session")
def pb(tmp_path_factory):
    """Message classes for kv.proto, cluster.proto, health and reflection
    (grpc_helpers.stubs)."""
    import grpc_helpers
    return grpc_helpers.stubs(str(tmp_path_factory.mktemp("stubs")))


@pytest.fixture(scope="session")
def epb(tmp_path_factory):
    """etcd's message classes (grpc_helpers.etcd_stubs)."""
    import grpc_helpers
    return grpc_helpers.etcd_stubs(str(tmp_path_factory.mktemp("etcdstubs")))
