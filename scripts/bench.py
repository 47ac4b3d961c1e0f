#!/usr/bin/python3
"""bench.py - PyazDB side by side with etcd and Redis on this machine, in
one run, written up as a report (`make bench`).

    scripts/bench.py [--quick | --full] [--out DIR] [--noisy] [--reps N]
                     [--scale | --scale-only] [--scale-keys N]

    --quick   3 s per run, curve to 256 connections (about eight minutes)
    --full    10 s per run, curve to 1,024 connections, Redis memory,
              etcdctl check perf on both systems
    --reps    runs per system of each matrix load and of the HTTP writes
              against Redis (default 3), the systems alternated
    --noisy   also repeat the write matrix with a noisy neighbour
              (stress-ng at nice 19: a CPU, a memory-bandwidth and a disk
              worker) running during each system's runs
    --scale   also the scale section (scripts/bench_scale.py; on by
              default in --full): 10k idle connections, 1 KiB to 1 MiB
              values, throughput against the number of keys, and at the
              largest count (10M in full mode) snapshot, restart,
              InstallSnapshot and RSS against redis-server
    --scale-only   only the scale section
    --scale-keys N the largest key count of the scale section
    --out     report directory (default bench-report/): report.md, the
              raw figures (results.json) and PNG plots (gnuplot)

What it measures, each PyazDB figure next to its reference from the same
run (the machine is shared and noisy: compare ratios, not absolutes). Each
load of the matrix, and the HTTP writes against Redis, runs the two systems
in turn, N times each (PyazDB, etcd, PyazDB, etcd, ...), so that a drift of
the machine over the minutes falls on both; a figure is the median run's
by requests/s (its CPU and commit check with it), with the range of
requests/s over the runs beside it; p50 and p99 are those of all the
requests of all its runs together.

- the disk's fsync floor: 128 bytes written in place + fdatasync, in the
  directory that holds the clusters' data, for as long as a run, by one
  writer and by three at once (what each node of a 3-node cluster on
  this one disk pays, as all three write for every replicated write),
  and a loopback round trip;
- 3-node PyazDB and 3-node etcd (Debian's etcd-server) on 127.0.0.1, fsync
  on, loaded one after the other over gRPC by h2load with the same request
  bytes: writes (Set / Put), linearizable reads (Get / Range), serializable
  reads (Get stale / Range serializable), at 1x1, 16x1, 64x1 and 16x16
  (connections x streams): requests/s, p50 and p99 latency (from h2load's
  per-request log), the CPU time of all three server processes per
  request, and how long their threads waited for a CPU per request (the
  kernel's run-queue wait, /proc/PID/task/TID/schedstat: a hand-off to a
  thread, or a wake-up of another node, that finds the cores busy); every
  write run checks that the leader's commit index grew by
  at least the number of acknowledged writes (each is one Raft entry);
- writes against the number of connections (1 to 256 or 1,024, one
  stream each; one run per point): throughput and p99 for both systems,
  plotted;
- small transactions: etcd's KV/Txn with one compare and one put, the
  same bytes to both systems (PyazDB serves etcd's API), at 16x1, 64x1
  and 16x16, with the same figures and commit check as the writes;
- HTTP writes (wrk, distinct keys, 64 connections) against a single
  redis-server with appendfsync always (redis-benchmark SET, 50 clients,
  as many requests as it serves in about the time of a wrk run at the
  rate of its run before, a first short run giving the first rate), the
  two in turn, median of N each;
- memory per key of the table (tests/bench/kv_mem.c), and, in full mode,
  of redis-server holding the same 1M keys;
- in full mode, etcd's own benchmark, `etcdctl check perf --auto-compact
  --auto-defrag` (60 s of puts from 50 clients through every endpoint,
  then compaction and defragmentation of each member), against each
  system in turn: its verdicts and throughput.

Everything listens on 127.0.0.1 only, every load is bounded in time, and
every process started here is stopped by its PID at the end.
"""
import argparse
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_scale  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
CLK_TCK = os.sysconf("SC_CLK_TCK")
procs = []  # every process started here


def log(*a):
    print(*a, flush=True)


def free_port(taken):
    while True:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        p = s.getsockname()[1]
        s.close()
        if p not in taken:
            taken.add(p)
            return p


def start(args, logf, **kw):
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                         stderr=open(logf, "wb"), **kw)
    procs.append(p)
    return p


def stop_all():
    for p in procs:
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGCONT)
                p.terminate()
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 15
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def http_json(url, body=None, timeout=5):
    req = urllib.request.Request(url, data=body, method="POST" if body else "GET")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def wait_for(pred, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            v = pred()
            if v:
                return v
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.1)
    raise SystemExit(f"bench: {what} not ready within {timeout} s")


def cpu_ticks(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total


def runq_ns(pids):
    """{thread id: nanoseconds it spent runnable but waiting for a CPU}
    for every thread of pids (the second field of
    /proc/PID/task/TID/schedstat)."""
    waits = {}
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    waits[tid] = int(f.read().split()[1])
            except (OSError, ValueError, IndexError):
                pass
    return waits


def runq_us_per(before, after, done):
    """The run-queue wait between two runq_ns readings, in us per request:
    the threads alive at the second (a thread started in between counts
    from 0; one that ended took its share with it). None when the kernel
    keeps no such count (every thread reads 0)."""
    if not any(after.values()):
        return None
    ns = sum(w - before.get(tid, 0) for tid, w in after.items())
    return ns / 1e3 / max(1, done)


# --- the systems ------------------------------------------------------------

class Pyazdb:
    name = "pyazdb"

    def __init__(self, tmp, taken, server=None, name=None):
        """server: another build's pyazdb-server (bench-builds.py), run
        under name."""
        if name:
            self.name = name
            tmp = os.path.join(tmp, name)
            os.makedirs(tmp, exist_ok=True)
        server = server or os.path.join(ROOT, "src/pyazdb-server")
        self.nodes = []
        spec = []
        for i in range(1, 4):
            n = {"raft": free_port(taken), "http": free_port(taken),
                 "grpc": free_port(taken), "name": f"node{i}"}
            self.nodes.append(n)
            spec.append(f"node{i}=127.0.0.1:{n['raft']}")
        for n in self.nodes:
            n["proc"] = start(
                [server,
                 "--node-id", n["name"], "--raft-data", f"{tmp}/{n['name']}",
                 "--raft-addr", f"127.0.0.1:{n['raft']}",
                 "--http-addr", f"127.0.0.1:{n['http']}",
                 "--grpc-addr", f"127.0.0.1:{n['grpc']}",
                 "--initial-cluster", ",".join(spec), "--mandi-addr", "none",
                 "--log-level", "warning"], f"{tmp}/{n['name']}.log")
        self.leader = wait_for(self._leader, 30, "PyazDB leader")
        self.pids = [n["proc"].pid for n in self.nodes]

    def _leader(self):
        for n in self.nodes:
            if http_json(f"http://127.0.0.1:{n['http']}/status")["role"] == "leader":
                return n
        return None

    def grpc_url(self, op):
        return f"http://127.0.0.1:{self.leader['grpc']}/kv.KVService/" + \
            {"write": "Set", "read": "Get", "sread": "Get"}[op]

    def commit_index(self):
        return http_json(
            f"http://127.0.0.1:{self.leader['http']}/status")["commit_index"]


class Etcd:
    name = "etcd"

    def __init__(self, tmp, taken):
        self.members = []
        spec = []
        for i in range(1, 4):
            m = {"client": free_port(taken), "peer": free_port(taken),
                 "name": f"e{i}"}
            self.members.append(m)
            spec.append(f"e{i}=http://127.0.0.1:{m['peer']}")
        for m in self.members:
            m["proc"] = start(
                ["etcd", "--name", m["name"], "--data-dir", f"{tmp}/{m['name']}",
                 "--listen-client-urls", f"http://127.0.0.1:{m['client']}",
                 "--advertise-client-urls", f"http://127.0.0.1:{m['client']}",
                 "--listen-peer-urls", f"http://127.0.0.1:{m['peer']}",
                 "--initial-advertise-peer-urls",
                 f"http://127.0.0.1:{m['peer']}",
                 "--initial-cluster", ",".join(spec),
                 "--initial-cluster-state", "new",
                 "--initial-cluster-token", "bench", "--log-level", "error"],
                f"{tmp}/{m['name']}.log")
        self.leader = wait_for(self._leader, 30, "etcd leader")
        self.pids = [m["proc"].pid for m in self.members]

    def _status(self, m):
        return http_json(f"http://127.0.0.1:{m['client']}/v3/maintenance/status",
                         b"{}")

    def _leader(self):
        for m in self.members:
            s = self._status(m)
            if s["header"]["member_id"] == s["leader"]:
                return m
        return None

    def grpc_url(self, op):
        return f"http://127.0.0.1:{self.leader['client']}/etcdserverpb.KV/" + \
            {"write": "Put", "read": "Range", "sread": "Range"}[op]

    def commit_index(self):
        return int(self._status(self.leader)["raftIndex"])


# Framed gRPC bodies: flag 0, 4-byte big-endian length, then the message.
# kv.SetRequest and etcdserverpb.PutRequest: key = 1, value = 2 (same
# bytes); GetRequest and RangeRequest: key = 1 (same bytes); a stale Get
# is field 2 = true, a serializable Range field 7 = true.
def framed(msg):
    return b"\0" + len(msg).to_bytes(4, "big") + msg


BODIES = {
    ("write", "pyazdb"): framed(b"\x0a\x05bench\x12\x64" + b"v" * 100),
    ("read", "pyazdb"): framed(b"\x0a\x05bench"),
    ("sread", "pyazdb"): framed(b"\x0a\x05bench\x10\x01"),
    ("read", "etcd"): framed(b"\x0a\x05bench"),
    ("sread", "etcd"): framed(b"\x0a\x05bench\x38\x01"),
}
BODIES[("write", "etcd")] = BODIES[("write", "pyazdb")]


def h2load(tmp, url, body, conns, streams, dur):
    bodyf = f"{tmp}/body.bin"
    with open(bodyf, "wb") as f:
        f.write(body)
    logf = f"{tmp}/h2load.log"
    if os.path.exists(logf):
        os.unlink(logf)
    threads = 1 if conns == 1 else 2
    r = subprocess.run(
        ["h2load", "-D", str(dur), "-t", str(threads), "-c", str(conns),
         "-m", str(streams), "-d", bodyf, "--log-file", logf,
         "-H", "content-type: application/grpc", "-H", "te: trailers", url],
        capture_output=True, text=True, timeout=dur + 120)
    out = r.stdout
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, "
                  r"(\d+) succeeded, (\d+) failed, (\d+) errored, "
                  r"(\d+) timeout", out)
    if r.returncode != 0 or not m or int(m.group(5)) or int(m.group(6)) or \
            int(m.group(7)):
        raise SystemExit(f"bench: h2load on {url} failed:\n{out}\n{r.stderr}")
    lat = []
    with open(logf) as f:
        for line in f:
            parts = line.split("\t")
            if len(parts) >= 3 and parts[1] == "200":
                lat.append(int(parts[2]))
    rps = float(re.search(r"finished in [^,]+, ([\d.]+) req/s", out).group(1))
    lat.sort()
    return {"rps": rps, "done": int(m.group(4)), "p50_ms": pct(lat, 0.50),
            "p99_ms": pct(lat, 0.99), "lat_us": lat}


def pct(lat, p):
    """The p quantile of sorted latencies in us, in ms."""
    return lat[min(len(lat) - 1, int(p * len(lat)))] / 1000.0 if lat else 0.0


def grpc_ok(url, body):
    """One request with curl: grpc-status must be 0."""
    r = subprocess.run(
        ["curl", "-s", "--http2-prior-knowledge", "-o", "/dev/null", "-D", "-",
         "-H", "content-type: application/grpc", "-H", "te: trailers",
         "--data-binary", "@-", url], input=body, capture_output=True,
        timeout=10)
    return re.search(rb"grpc-status: 0", r.stdout) is not None


def run_load(tmp, sysm, op, conns, streams, dur):
    url = sysm.grpc_url(op)
    body = BODIES[(op, sysm.name)]
    c0 = sysm.commit_index() if op == "write" else 0
    t0, q0 = cpu_ticks(sysm.pids), runq_ns(sysm.pids)
    res = h2load(tmp, url, body, conns, streams, dur)
    t1, q1 = cpu_ticks(sysm.pids), runq_ns(sysm.pids)
    if not grpc_ok(url, body):
        raise SystemExit(f"bench: {url}: last request not grpc-status 0")
    res["cpu_us"] = (t1 - t0) / CLK_TCK * 1e6 / max(1, res["done"])
    res["runq_us"] = runq_us_per(q0, q1, res["done"])
    # A leader that changed during the run: the next runs go to the new
    # one (the old one would forward them), and the run says so.
    now = wait_for(sysm._leader, 30, f"{sysm.name} leader")
    if now is not sysm.leader:
        log(f"   note: {sysm.name}'s leader changed during this run")
        res["leader_changed"] = True
        sysm.leader = now
    if op == "write":
        grew = sysm.commit_index() - c0
        if grew < res["done"]:
            raise SystemExit(f"bench: {sysm.name} acknowledged {res['done']} "
                             f"writes but its commit index grew by {grew}")
        res["commit_growth"] = grew
    return res


def median_run(runs):
    """The run with the median requests/s (the lower of the two middle
    ones for an even count), its CPU, run-queue wait and commit check with
    it, and the requests/s of every run. Its p50 and p99 are those of
    every request of all the runs together: one run's tail is a few dozen
    requests, and which run came out as the median by rate used to decide
    the cell."""
    by = sorted(runs, key=lambda r: r["rps"])
    m = dict(by[(len(by) - 1) // 2])
    m["runs_rps"] = [r["rps"] for r in runs]
    m["runs_p99_ms"] = [r["p99_ms"] for r in runs]
    lat = sorted(x for r in runs for x in r.pop("lat_us"))
    m["p50_ms"], m["p99_ms"] = pct(lat, 0.50), pct(lat, 0.99)
    del m["lat_us"]
    return m


def alternate(systems, reps, once):
    """once(s) for each system in turn, reps rounds (a, b, a, b, ...):
    {system name: its median run}."""
    runs = {s.name: [] for s in systems}
    for _ in range(reps):
        for s in systems:
            runs[s.name].append(once(s))
    return {name: median_run(rs) for name, rs in runs.items()}


def spread(r):
    """The range of requests/s over the runs, for the log and the report."""
    rs = r.get("runs_rps") or [r["rps"]]
    return f"{min(rs):,.0f}-{max(rs):,.0f}"


def log_row(key, row):
    a_, b_ = row["pyazdb"], row["etcd"]
    log(f"   {key:<16} pyazdb {a_['rps']:>9,.0f}/s ({spread(a_)}) p99 "
        f"{a_['p99_ms']:6.2f} ms   etcd {b_['rps']:>9,.0f}/s ({spread(b_)}) "
        f"p99 {b_['p99_ms']:6.2f} ms   {ratio(a_['rps'], b_['rps'])}")


# etcdserverpb.TxnRequest, the same bytes to both systems: compare (1)
# version("bench") > 0 (result 1 = GREATER, target VERSION = 0, key 3),
# success (2) a RequestOp with request_put (2) of the write rows' PutRequest.
TXN_CMP = b"\x08\x01\x1a\x05bench"
TXN_PUT = b"\x12" + bytes([len(BODIES[("write", "etcd")]) - 5]) + \
    BODIES[("write", "etcd")][5:]
TXN_BODY = framed(b"\x0a" + bytes([len(TXN_CMP)]) + TXN_CMP + b"\x12" +
                  bytes([len(TXN_PUT)]) + TXN_PUT)


def txn_rows(tmp, systems, loads, dur, reps, matrix):
    """The txn rows of the matrix: every Txn succeeds (the key exists) and
    is one Raft entry, so the commit index must grow by as many."""
    for c, m in loads:
        key = f"txn@{c}x{m}"

        def once(s):
            url = s.grpc_url("write").rsplit("/", 2)[0] + "/etcdserverpb.KV/Txn"
            c0, t0 = s.commit_index(), cpu_ticks(s.pids)
            q0 = runq_ns(s.pids)
            r = h2load(tmp, url, TXN_BODY, c, m, dur)
            t1, q1 = cpu_ticks(s.pids), runq_ns(s.pids)
            if not grpc_ok(url, TXN_BODY):
                raise SystemExit(f"bench: {url}: last Txn not grpc-status 0")
            r["cpu_us"] = (t1 - t0) / CLK_TCK * 1e6 / max(1, r["done"])
            r["runq_us"] = runq_us_per(q0, q1, r["done"])
            r["commit_growth"] = s.commit_index() - c0
            if r["commit_growth"] < r["done"]:
                raise SystemExit(f"bench: {s.name} acknowledged {r['done']} "
                                 f"txns but its commit index grew by "
                                 f"{r['commit_growth']}")
            return r
        matrix[key] = alternate(systems, reps, once)
        log_row(key, matrix[key])


# --- the pieces -------------------------------------------------------------

def fsync_records(path, secs, slots=8192):
    """128-byte records written in turn into a file allocated beforehand
    (as a log reuses its space: a ring of `slots`), each followed by
    fdatasync, for secs seconds (a run's length, so that the disk's
    occasional stalls fall into it as into a run): each one's latency in
    microseconds."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    rec = b"x" * 128
    lat = []
    try:
        os.write(fd, b"\0" * (128 * slots))
        os.fsync(fd)
        end = time.perf_counter() + secs
        i = 0
        while time.perf_counter() < end:
            t = time.perf_counter()
            os.pwrite(fd, rec, 128 * (i % slots))
            os.fdatasync(fd)
            lat.append((time.perf_counter() - t) * 1e6)
            i += 1
    finally:
        os.close(fd)
        os.unlink(path)
    return lat


def fsync_floor(d, secs, writers=1):
    """fsync_records by `writers` processes at once, each on its own file
    in d: with 1, the least a durable write can cost on this disk; with 3,
    what each node of a 3-node cluster on this one disk pays when all
    three write at once, as they do for every replicated write."""
    if writers == 1:
        lat = fsync_records(os.path.join(d, "fsync-floor"), secs)
    else:
        pids = []
        for w in range(writers):
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    lat = fsync_records(os.path.join(d, f"fsync-floor{w}"),
                                        secs)
                    with open(os.path.join(d, f"fsync-floor{w}.lat"), "w") as f:
                        json.dump(lat, f)
                    code = 0
                finally:
                    os._exit(code)
            pids.append(pid)
        lat = []
        for w, pid in enumerate(pids):
            _, status = os.waitpid(pid, 0)
            out = os.path.join(d, f"fsync-floor{w}.lat")
            if status != 0 or not os.path.exists(out):
                raise SystemExit(f"bench: fsync floor writer {w} failed")
            with open(out) as f:
                lat += json.load(f)
            os.unlink(out)
    lat.sort()
    return {"p50_us": statistics.median(lat),
            "p99_us": lat[min(len(lat) - 1, int(0.99 * len(lat)))],
            "writers": writers}


def loopback_rtt(n=2000):
    srv = socket.create_server(("127.0.0.1", 0))
    c = socket.create_connection(srv.getsockname())
    s, _ = srv.accept()
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    lat = []
    for _ in range(n):
        t = time.perf_counter()
        c.sendall(b"p")
        s.recv(1)
        s.sendall(b"q")
        c.recv(1)
        lat.append((time.perf_counter() - t) * 1e6)
    for x in (srv, c, s):
        x.close()
    return statistics.median(lat)


class Noise:
    """A reproducible noisy neighbour at the lowest CPU priority
    (stress-ng): one CPU worker (matrix products), one memory-bandwidth
    worker (STREAM) and one disk worker writing and reading 16 MB files in
    the directory that holds the clusters' data."""

    def __init__(self, tmp, dur):
        self.dir = os.path.join(tmp, "noise")
        self.dur = dur

    def __enter__(self):
        os.makedirs(self.dir, exist_ok=True)
        self.p = subprocess.Popen(
            ["nice", "-n", "19", "stress-ng", "--cpu", "1", "--cpu-method",
             "matrixprod", "--stream", "1", "--hdd", "1", "--hdd-bytes", "16M",
             "--temp-path", self.dir, "--timeout", f"{self.dur + 60}s",
             "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)  # its workers running before the load starts
        return self

    def __exit__(self, *a):
        self.p.terminate()  # stress-ng stops its own workers
        try:
            self.p.wait(15)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def http_vs_redis(tmp, pz, taken, dur, reps):
    """wrk's POST /set on PyazDB's leader and redis-benchmark's SET on a
    redis-server with appendfsync always, in turn, reps times each; each
    redis-benchmark run is as many requests as Redis served in dur
    seconds at its last run's rate (a first short run, not counted, gives
    the first rate)."""
    def wrk_run(i):
        nonlocal snaps
        now = wait_for(pz._leader, 30, "PyazDB leader")
        if now is not pz.leader:
            log("   note: PyazDB's leader changed before this run")
            pz.leader = now
        base = f"http://127.0.0.1:{pz.leader['http']}"
        lua = f"{tmp}/set.lua"
        with open(lua, "w") as f:  # keys distinct across runs too
            f.write('local threads = 0\n'
                    'function setup(thread) threads = threads + 1; '
                    'thread:set("id", threads) end\n'
                    'local n = 0\n'
                    'request = function()\n n = n + 1\n'
                    f' local body = \'{{"key":"h{i}-\' .. id .. \'-\' .. n .. '
                    '\'","value":"' + "v" * 100 + '"}\'\n'
                    ' return wrk.format("POST", "/set", '
                    '{["Content-Type"]="application/json"}, body)\nend\n')
        snap0 = http_json(f"{base}/status")["snapshot_index"]
        r = subprocess.run(["wrk", "-t2", "-c64", f"-d{dur}s", "--latency",
                            "-s", lua, base], capture_output=True, text=True,
                           timeout=dur + 60)
        m = re.search(r"Requests/sec:\s+([\d.]+)", r.stdout)
        if r.returncode != 0 or not m or "Non-2xx" in r.stdout:
            raise SystemExit("bench: wrk failed or got errors:\n" + r.stdout +
                             r.stderr)
        # distinct keys grow the table: the snapshots the run went through
        if http_json(f"{base}/status")["snapshot_index"] != snap0:
            snaps += 1
        return float(m.group(1))

    port = free_port(taken)
    rd = start(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "yes", "--appendfsync", "always",
                "--dir", tmp, "--daemonize", "no"], f"{tmp}/redis.log")
    wait_for(lambda: subprocess.run(["redis-cli", "-p", str(port), "ping"],
                                    capture_output=True).returncode == 0,
             10, "redis-server")

    def redis_run(n):
        t0 = time.monotonic()
        out = subprocess.run(["redis-benchmark", "-p", str(port), "-h",
                              "127.0.0.1", "-q", "-d", "100", "-r", "1000000",
                              "-c", "50", "-n", str(n), "-t", "set"],
                             capture_output=True, text=True,
                             timeout=dur * 10 + 60)
        found = re.findall(r"([\d.]+) requests per second",
                           out.stdout.replace("\r", "\n"))
        if out.returncode != 0 or not found:
            raise SystemExit("bench: redis-benchmark failed:\n" + out.stdout +
                             out.stderr)
        return float(found[-1]), time.monotonic() - t0

    cal, _ = redis_run(20000)
    snaps = 0  # PyazDB runs the leader took a snapshot in
    pz_rps, rd_rps, rd_secs, rd_n = [], [], [], []
    for i in range(reps):
        pz_rps.append(wrk_run(i))
        # as many requests as the last run's rate serves in dur seconds
        n = max(20000, int((rd_rps[-1] if rd_rps else cal) * dur))
        r, secs = redis_run(n)
        rd_rps.append(r)
        rd_secs.append(secs)
        rd_n.append(n)
    rd.terminate()
    rd.wait()
    return {"pyazdb_http_set_64": statistics.median(pz_rps),
            "redis_set_50_fsync_always": statistics.median(rd_rps),
            "pyazdb_runs": pz_rps, "redis_runs": rd_rps,
            "redis_requests": rd_n, "redis_secs": rd_secs,
            "wrk_secs": dur, "pyazdb_runs_with_snapshot": snaps}


def check_perf(sysm):
    """etcdctl check perf against one cluster through all its endpoints:
    its verdict lines (PASS/FAIL: ...) and whether its own cleanup left
    no key behind."""
    eps = ",".join(f"127.0.0.1:{n['grpc' if sysm.name == 'pyazdb' else 'client']}"
                   for n in (sysm.nodes if sysm.name == "pyazdb"
                             else sysm.members))
    env = dict(os.environ, ETCDCTL_API="3")
    r = subprocess.run(["etcdctl", f"--endpoints={eps}", "check", "perf",
                        "--auto-compact", "--auto-defrag"],
                       capture_output=True, text=True, env=env, timeout=300)
    out = r.stdout.replace("\r", "\n")
    verdicts = re.findall(r"^(?:PASS|FAIL): .*$", out, re.M)
    if not verdicts or "Compacted with revision" not in out:
        raise SystemExit(f"bench: etcdctl check perf against {sysm.name} "
                         "failed:\n" + out[-2000:] + r.stderr[-2000:])
    left = subprocess.run(["etcdctl", f"--endpoints={eps}", "get",
                           "/etcdctl-check-perf/", "--prefix", "--keys-only"],
                          capture_output=True, text=True, env=env,
                          timeout=30).stdout.strip()
    return {"verdicts": verdicts, "defragmented": out.count("Defragmented"),
            "keys_left": len(left.split()) if left else 0}


def kv_mem():
    r = subprocess.run(["make", "-s", "bench-kv-mem"], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    m = re.search(r"bytes_per_key=([\d.]+)", r.stdout)
    return {"pyazdb_bytes_per_key": float(m.group(1)) if m else None,
            "output": r.stdout.strip()}


def redis_mem(tmp, taken, n=1000000):
    port = free_port(taken)
    rd = start(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--daemonize", "no"],
               f"{tmp}/redis-mem.log")
    wait_for(lambda: subprocess.run(["redis-cli", "-p", str(port), "ping"],
                                    capture_output=True).returncode == 0,
             10, "redis-server")

    def rss():
        info = subprocess.run(["redis-cli", "-p", str(port), "info", "memory"],
                              capture_output=True, text=True).stdout
        return int(re.search(r"used_memory_rss:(\d+)", info).group(1))
    before = rss()
    val = "v" * 100
    cmds = "".join(f"*3\r\n$3\r\nSET\r\n$16\r\n{'k%015d' % i}\r\n$100\r\n{val}\r\n"
                   for i in range(n))
    subprocess.run(["redis-cli", "-p", str(port), "--pipe"], input=cmds,
                   text=True, capture_output=True, timeout=300, check=True)
    after = rss()
    rd.terminate()
    rd.wait()
    return (after - before) / n


# --- report -----------------------------------------------------------------

def ratio(a, b):
    return f"{a / b:.2f}x" if b else "n/a"


def us(v):
    """A figure in us for the report, n/a when it was not measured."""
    return "n/a" if v is None else f"{v:.0f}"


def plots(out, curve):
    if not shutil.which("gnuplot"):
        return False
    for sysname in ("pyazdb", "etcd"):
        with open(f"{out}/curve-{sysname}.dat", "w") as f:
            for c, r in sorted(curve[sysname].items()):
                f.write(f"{c} {r['rps']} {r['p99_ms']}\n")
    script = f"""
set terminal pngcairo size 900,500
set logscale x 2
set xlabel "connections (1 stream each)"
set key top left
set grid
set output "{out}/writes-throughput.png"
set ylabel "writes/s"
plot "{out}/curve-pyazdb.dat" using 1:2 with linespoints title "PyazDB", \\
     "{out}/curve-etcd.dat" using 1:2 with linespoints title "etcd"
set output "{out}/writes-p99.png"
set ylabel "p99 latency (ms)"
plot "{out}/curve-pyazdb.dat" using 1:3 with linespoints title "PyazDB", \\
     "{out}/curve-etcd.dat" using 1:3 with linespoints title "etcd"
"""
    r = subprocess.run(["gnuplot"], input=script, text=True,
                       capture_output=True)
    if r.returncode != 0:
        log("bench: gnuplot failed:", r.stderr)
        return False
    return True


def report(out, res, mode):
    L = []
    L.append(f"# PyazDB benchmark report ({mode} mode)\n")
    L.append(f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on "
             f"{res['machine']}. 3-node clusters on 127.0.0.1, fsync on. "
             f"etcd {res['etcd_version']}, PyazDB {res['pyazdb_version']}, "
             f"{res['dur']} s per run. Ratios are PyazDB / etcd from the "
             f"same run. Each load of the matrix ran {res['reps']} times per "
             "system, the systems in turn; a row shows each system's median "
             "run by requests/s (its CPU), the range of requests/s over the "
             "runs in brackets, and p50 and p99 over every request of all "
             "the runs. Run-queue wait: the time the servers' threads "
             "spent ready to run but waiting for a CPU in the median run, "
             "per request, summed over every thread of the three "
             "processes (the kernel's schedstat), so it can exceed a "
             "request's latency.\n")
    f = res["floor"]
    f3 = res.get("floor3")
    L.append(f"Disk fsync floor (128 B written in place + fdatasync): p50 "
             f"{f['p50_us']:.0f} us, p99 {f['p99_us']:.0f} us"
             + (f"; three writers at once, one per node of a cluster on "
                f"this disk: p50 {f3['p50_us']:.0f} us, p99 "
                f"{f3['p99_us']:.0f} us" if f3 else "")
             + f"; loopback TCP round trip p50 {res['rtt_us']:.0f} us.\n")
    for tag, title in (("", "quiet"), ("noisy-", "noisy neighbour")):
        if not any(k.startswith(tag + "write") for k in res["matrix"]):
            continue
        L.append(f"\n## gRPC matrix ({title})\n")
        L.append("| op | load | PyazDB req/s | etcd req/s | ratio | PyazDB "
                 "p50 / p99 ms | etcd p50 / p99 ms | CPU us/req PyazDB / "
                 "etcd | run-queue wait us/req PyazDB / etcd |")
        L.append("|---|---|---|---|---|---|---|---|---|")
        for key, r in res["matrix"].items():
            if not key.startswith(tag) or (not tag and key.startswith("noisy-")):
                continue
            op, load = key[len(tag):].split("@")
            a, b = r["pyazdb"], r["etcd"]
            L.append(f"| {op} | {load} | {a['rps']:,.0f} ({spread(a)}) | "
                     f"{b['rps']:,.0f} ({spread(b)}) | "
                     f"{ratio(a['rps'], b['rps'])} | {a['p50_ms']:.2f} / "
                     f"{a['p99_ms']:.2f} | {b['p50_ms']:.2f} / "
                     f"{b['p99_ms']:.2f} | {a['cpu_us']:.0f} / "
                     f"{b['cpu_us']:.0f} | {us(a.get('runq_us'))} / "
                     f"{us(b.get('runq_us'))} |")
    w = res["matrix"].get("write@1x1")
    if w:
        floor_ms = (f["p50_us"] + res["rtt_us"]) / 1000
        L.append(f"\n1x1 write p50 {w['pyazdb']['p50_ms']:.2f} ms against "
                 f"the fsync floor plus one loopback round trip "
                 f"({floor_ms:.2f} ms): {w['pyazdb']['p50_ms'] / floor_ms:.2f}x"
                 + (f" (against the three-writer floor plus one round trip, "
                    f"{(f3['p50_us'] + res['rtt_us']) / 1000:.2f} ms: "
                    f"{w['pyazdb']['p50_ms'] * 1000 / (f3['p50_us'] + res['rtt_us']):.2f}x)"
                    if f3 else "")
                 + "; p99 / p50 at 1x1: "
                 f"{w['pyazdb']['p99_ms'] / w['pyazdb']['p50_ms']:.2f}"
                 + (f" (the three-writer floor's own: "
                    f"{f3['p99_us'] / f3['p50_us']:.2f})" if f3 else "")
                 + ".\n")
    L.append("\n## Writes against connections\n")
    L.append("One run per point.\n")
    L.append("| connections | PyazDB req/s | etcd req/s | ratio | PyazDB p99 ms "
             "| etcd p99 ms |")
    L.append("|---|---|---|---|---|---|")
    for c in sorted(res["curve"]["pyazdb"]):
        a, b = res["curve"]["pyazdb"][c], res["curve"]["etcd"][c]
        L.append(f"| {c} | {a['rps']:,.0f} | {b['rps']:,.0f} | "
                 f"{ratio(a['rps'], b['rps'])} | {a['p99_ms']:.2f} | "
                 f"{b['p99_ms']:.2f} |")
    if res.get("plots"):
        L.append("\n![writes/s](writes-throughput.png)\n")
        L.append("![p99](writes-p99.png)\n")
    h = res["http"]
    L.append("\n## HTTP writes against Redis\n")
    rng = lambda v: f"{min(v):,.0f}-{max(v):,.0f}"
    L.append(f"{len(h['pyazdb_runs'])} runs of each, in turn. PyazDB POST "
             f"/set, 64 connections, 3 nodes, {h['wrk_secs']} s per run: "
             f"median {h['pyazdb_http_set_64']:,.0f}/s "
             f"({rng(h['pyazdb_runs'])}); redis-server appendfsync always, "
             f"SET from 50 clients, {rng(h['redis_requests'])} requests "
             f"per run ({min(h['redis_secs']):.1f}-{max(h['redis_secs']):.1f}"
             f" s): median {h['redis_set_50_fsync_always']:,.0f}/s "
             f"({rng(h['redis_runs'])}); ratio of the medians "
             f"{ratio(h['pyazdb_http_set_64'], h['redis_set_50_fsync_always'])}.\n")
    if "pyazdb_runs_with_snapshot" in h:
        L.append(f"The keys are distinct, so PyazDB's table grows: "
                 f"{h['pyazdb_runs_with_snapshot']} of its "
                 f"{len(h['pyazdb_runs'])} runs went through a snapshot "
                 f"and its log compaction (every raft-snapshot-entries "
                 f"writes; `scripts/bench-snapshot-dip.sh` measures what "
                 f"one costs).\n")
    if res.get("check_perf"):
        L.append("\n## etcdctl check perf\n")
        L.append("etcd's own benchmark with `--auto-compact --auto-defrag`, "
                 "through every endpoint of each cluster in turn.\n")
        L.append("| system | verdicts | members defragmented | keys left |")
        L.append("|---|---|---|---|")
        for name, c in res["check_perf"].items():
            L.append(f"| {name} | {'; '.join(c['verdicts'])} | "
                     f"{c['defragmented']} | {c['keys_left']} |")
    m = res["mem"]
    L.append("\n## Memory per key\n")
    L.append(f"PyazDB table, 1M keys of 16 B with 100 B values: "
             f"{m['pyazdb_bytes_per_key']} bytes per key"
             + (f"; redis-server with the same data: "
                f"{m['redis_bytes_per_key']:.1f} bytes per key "
                f"({ratio(m['pyazdb_bytes_per_key'], m['redis_bytes_per_key'])})"
                if m.get("redis_bytes_per_key") else "") + ".\n")
    if res.get("scale"):
        L += bench_scale.report_lines(res["scale"], ratio)
    with open(f"{out}/report.md", "w") as fh:
        fh.write("\n".join(L) + "\n")
    with open(f"{out}/results.json", "w") as fh:
        json.dump(res, fh, indent=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true")
    g.add_argument("--full", action="store_true")
    ap.add_argument("--noisy", action="store_true")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench-report"))
    s_ = ap.add_mutually_exclusive_group()
    s_.add_argument("--scale", action="store_true")
    s_.add_argument("--scale-only", action="store_true")
    ap.add_argument("--scale-keys", type=int)
    a = ap.parse_args()
    if a.scale_only:
        return scale_only(a)
    mode = "full" if a.full else "quick"
    dur = 10 if a.full else 3
    reps = max(1, a.reps)
    loads = [(1, 1), (16, 1), (64, 1), (16, 16)]
    curve_conns = [1, 4, 16, 64, 256, 1024] if a.full else [1, 16, 64, 256]
    for tool in ("h2load", "etcd", "wrk", "redis-server", "redis-benchmark",
                 "curl", "stress-ng"):
        if not shutil.which(tool):
            raise SystemExit(f"bench: {tool} missing: scripts/install-deps.sh bench")
    os.makedirs(a.out, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="pz-bench-")
    taken = set()
    res = {"mode": mode, "dur": dur, "reps": reps, "matrix": {},
           "curve": {"pyazdb": {},
                                                             "etcd": {}}}
    try:
        with open("/proc/cpuinfo") as f:
            model = re.search(r"model name\s*: (.*)", f.read())
        res["machine"] = f"{os.cpu_count()} CPUs ({model.group(1) if model else '?'})"
        res["etcd_version"] = re.search(
            r"etcd Version: (\S+)",
            subprocess.run(["etcd", "--version"], capture_output=True,
                           text=True).stdout).group(1)
        res["pyazdb_version"] = subprocess.run(
            [os.path.join(ROOT, "src/pyazdb-server"), "--version"],
            capture_output=True, text=True).stdout.split()[1]
        log(f"== fsync floor and loopback round trip (in {tmp})")
        res["floor"] = fsync_floor(tmp, dur)
        res["floor3"] = fsync_floor(tmp, dur, 3)
        res["rtt_us"] = loopback_rtt()
        log(f"   fsync p50 {res['floor']['p50_us']:.0f} us (three writers "
            f"at once: {res['floor3']['p50_us']:.0f} us), "
            f"rtt p50 {res['rtt_us']:.0f} us")
        # 1,024 connections and their servers' ends (inherited)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < 4096 and (hard == resource.RLIM_INFINITY or hard >= 4096):
            resource.setrlimit(resource.RLIMIT_NOFILE, (4096, hard))
        log("== starting 3-node etcd and 3-node PyazDB")
        systems = [Pyazdb(tmp, taken), Etcd(tmp, taken)]
        for s in systems:  # the key the reads read
            run_load(tmp, s, "write", 1, 1, 1)
        passes = [("", None)]
        if a.noisy:
            passes.append(("noisy-", lambda: Noise(tmp, dur)))
        for tag, noise in passes:
            for op in (("write",) if tag else ("write", "read", "sread")):
                for c, m in loads:
                    key = f"{tag}{op}@{c}x{m}"

                    def once(s, op=op, c=c, m=m, noise=noise):
                        if noise:
                            with noise():
                                return run_load(tmp, s, op, c, m, dur)
                        return run_load(tmp, s, op, c, m, dur)
                    res["matrix"][key] = alternate(systems, reps, once)
                    log_row(key, res["matrix"][key])
        txn_rows(tmp, systems, loads[1:], dur, reps, res["matrix"])
        log("== writes against connections")
        for c in curve_conns:
            for s in systems:
                r = run_load(tmp, s, "write", c, 1, dur)
                r.pop("lat_us")
                res["curve"][s.name][c] = r
            log(f"   {c:>5} conns: pyazdb {res['curve']['pyazdb'][c]['rps']:>9,.0f}/s"
                f"   etcd {res['curve']['etcd'][c]['rps']:>9,.0f}/s")
        if a.full:
            log("== etcdctl check perf")
            res["check_perf"] = {s.name: check_perf(s) for s in systems}
            log(f"   {res['check_perf']}")
        log("== HTTP writes against redis-server (appendfsync always)")
        res["http"] = http_vs_redis(tmp, systems[0], taken, dur, reps)
        log(f"   {res['http']}")
        stop_all()
        procs.clear()
        log("== memory per key")
        res["mem"] = kv_mem()
        if a.full:
            res["mem"]["redis_bytes_per_key"] = redis_mem(tmp, taken)
        res["plots"] = plots(a.out, res["curve"])
        if a.full or a.scale:
            res["scale"] = bench_scale.run(sys.modules[__name__], tmp, taken,
                                           mode, a.scale_keys)
            res["scale"]["plot"] = bench_scale.plot(a.out, res["scale"])
        report(a.out, res, mode)
        log(f"== report: {a.out}/report.md")
        with open(f"{a.out}/report.md") as fh:
            print(fh.read())
    finally:
        stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


def scale_only(a):
    """The scale section alone, in its own report."""
    mode = "full" if a.full else "quick"
    os.makedirs(a.out, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="pz-bench-")
    try:
        res = {"mode": mode, "scale": bench_scale.run(
            sys.modules[__name__], tmp, set(), mode, a.scale_keys)}
        res["scale"]["plot"] = bench_scale.plot(a.out, res["scale"])
        L = [f"# PyazDB scale report ({mode} mode)\n",
             f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
             "3-node clusters on 127.0.0.1, fsync on.\n"]
        L += bench_scale.report_lines(res["scale"], ratio)
        with open(f"{a.out}/report.md", "w") as fh:
            fh.write("\n".join(L) + "\n")
        with open(f"{a.out}/results.json", "w") as fh:
            json.dump(res, fh, indent=1)
        log(f"== report: {a.out}/report.md")
        print("\n".join(L))
    finally:
        stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
