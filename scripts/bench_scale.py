"""bench_scale.py - the scale section of scripts/bench.py (`--scale`, run
by `make bench BENCH=full`, alone with `BENCH_ARGS=--scale-only`).

Everything side by side in one run, on 127.0.0.1, bounded in keys and time:

- idle client connections: C connections (10,000 in full mode, from
  several 127.0.0.x source addresses) each send one HTTP/1.1 request
  (GET /health), read its answer and stay open; the server's RSS growth
  per connection, PyazDB's node against an etcd member;
- large values: gRPC writes (PyazDB Set, etcd Put, the same request
  bytes) of 1 KiB, 64 KiB and 1 MiB values for D seconds each: MB/s;
- key count: keys loaded (16-byte keys, 100-byte values, transactions of
  128 puts through the v3 JSON gateway both systems serve) to N1 then N2
  (1M and 10M in full mode; etcd stops at ETCD_KEYS_MAX, 2M); at each,
  random-key writes and linearizable reads (wrk, same script for both):
  requests/s and p99; the load rate;
- at N2 keys, PyazDB only: a snapshot (time, size), the RSS of each node
  against redis-server holding the same keys (redis-cli --pipe), a
  follower restarted (time until it serves, until it caught up) and a new
  node joining through mandi, caught up by InstallSnapshot (time, MB/s).

etcd is stopped before PyazDB's largest load, so the two big tables are
never in memory at once, and its data deleted; PyazDB's loads wait until
the disk is quiet again (settle_disk). Results go into res["scale"];
report_lines() writes the Markdown; plot() the key-count PNG.
"""
import base64
import http.client
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import threading
import time

SIZES = {"quick": {"keys": [100_000, 1_000_000], "conns": 2_000, "dur": 3},
         "full": {"keys": [1_000_000, 10_000_000], "conns": 10_000,
                  "dur": 8}}
# etcd's members hold about 1.2 KB of RSS per key (its index and bbolt's
# mmap): three of them at 10M keys would need some 35 GB, so etcd's curve
# stops here (PyazDB's goes on to the largest count)
ETCD_KEYS_MAX = 2_000_000
VALUE = b"v" * 100
BATCH = 128          # puts per transaction (etcd's max-txn-ops default)
LOADERS = 4          # loader threads, one connection each


def kdamond_cpu_s():
    """CPU seconds used so far by DAMON's kernel threads (kdamond.N), or
    None when the kernel runs none. DAMON's physical-address monitoring
    clears the accessed bit of a sample of pages every sampling interval;
    where page tables are shadowed by the hypervisor that is slow, and with
    gigabytes of tables the sampling passes hold a CPU for tens of ms."""
    total, seen = 0, False
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/comm") as f:
                if not f.read().startswith("kdamond"):
                    continue
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        seen = True
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK") if seen else None


def settle_disk(d, limit_s=40, window_s=2.5, quiet_ms=15):
    """Wait, at most limit_s, until the disk is quiet again after a large
    deletion: a window of window_s of back-to-back 128-byte writes and
    fdatasyncs in d with none over quiet_ms. On a file system mounted with
    online discard (this machine's is) deleting gigabytes makes every
    fsync stall for 25 to 140 ms about every 2 s for some 12 s afterwards,
    which would land in the next system's runs. Returns (seconds waited,
    whether the disk was quiet by then)."""
    path = os.path.join(d, "settle-probe")
    t0 = time.monotonic()
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.write(fd, b"\0" * (128 * 1024))
        os.fsync(fd)
        quiet = False
        while not quiet and time.monotonic() - t0 + window_s <= limit_s:
            w0, worst, i = time.monotonic(), 0.0, 0
            while time.monotonic() - w0 < window_s:
                t = time.monotonic()
                os.pwrite(fd, b"x" * 128, 128 * (i % 1024))
                os.fdatasync(fd)
                worst = max(worst, time.monotonic() - t)
                i += 1
            quiet = worst * 1e3 < quiet_ms
    finally:
        os.close(fd)
        os.unlink(path)
    return time.monotonic() - t0, quiet


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def key(i):
    return b"k%015d" % i


# --- loading -------------------------------------------------------------

def _load_range(port, lo, hi, step, errs, retries):
    """Transactions of BATCH puts for keys lo, lo+step*BATCH.. below hi."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    val = base64.b64encode(VALUE).decode()
    try:
        for s in range(lo, hi, step):
            ops = ",".join(
                '{"request_put":{"key":"%s","value":"%s"}}'
                % (base64.b64encode(key(k)).decode(), val)
                for k in range(s, min(s + BATCH, hi)))
            for attempt in range(5):  # puts: a timed-out one may be redone
                c.request("POST", "/v3/kv/txn",
                          body='{"success":[%s]}' % ops,
                          headers={"Content-Type": "application/json"})
                r = c.getresponse()
                body = r.read()
                if r.status != 503:
                    break
                retries.append(s)
                time.sleep(1)
            if r.status != 200 or b'"succeeded":true' not in body:
                errs.append(f"txn at key {s}: {r.status} {body[:200]!r}")
                return
    except OSError as e:
        errs.append(f"txn: {e}")
    finally:
        c.close()


def load(port, lo, hi):
    """Keys lo..hi-1 through port's /v3/kv/txn; returns keys/s."""
    errs, retries = [], []
    t0 = time.monotonic()
    th = [threading.Thread(target=_load_range,
                           args=(port, lo + i * BATCH, hi, LOADERS * BATCH,
                                 errs, retries)) for i in range(LOADERS)]
    for t in th:
        t.start()
    for t in th:
        t.join()
    if errs:
        raise SystemExit("bench: load failed: " + errs[0])
    if retries:
        print(f"bench: {len(retries)} transactions answered 503, redone",
              flush=True)
    return (hi - lo) / (time.monotonic() - t0)


def count_keys(sysm, port):
    """Keys held: PyazDB's /status, etcd's count of all keys."""
    if sysm.name == "pyazdb":
        return status(sysm.leader)["keys"]
    r = gw(port, "/v3/kv/range", {"key": "AA==", "range_end": "AA==",
                                  "count_only": True})
    return int(r.get("count", 0))


def gw(port, path, obj):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        c.request("POST", path, body=json.dumps(obj),
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        return json.loads(r.read())
    finally:
        c.close()


# --- random-key load at a key count ----------------------------------------

WRK_LUA = """
local nkeys = %d
local val = "%s"
local b64c = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'
local function b64(s)
  return ((s:gsub('.', function(x)
    local r, b = '', x:byte()
    for i = 8, 1, -1 do r = r .. (b %% 2 ^ i - b %% 2 ^ (i - 1) > 0 and '1' or '0') end
    return r
  end) .. '0000'):gsub('%%d%%d%%d?%%d?%%d?%%d?', function(x)
    if #x < 6 then return '' end
    local c = 0
    for i = 1, 6 do c = c + (x:sub(i, i) == '1' and 2 ^ (6 - i) or 0) end
    return b64c:sub(c + 1, c + 1)
  end) .. ({ '', '==', '=' })[#s %% 3 + 1])
end
function init(args) math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16)) end
request = function()
  local k = b64(string.format("k%%015d", math.random(0, nkeys - 1)))
  %s
end
"""
WRITE = ('return wrk.format("POST", "/v3/kv/put", nil, '
         "'{\"key\":\"' .. k .. '\",\"value\":\"' .. val .. '\"}')")
READ = ('return wrk.format("POST", "/v3/kv/range", nil, '
        "'{\"key\":\"' .. k .. '\"}')")


def wrk_at(tmp, port, nkeys, op, dur):
    lua = f"{tmp}/scale-{op}.lua"
    with open(lua, "w") as f:
        f.write(WRK_LUA % (nkeys, base64.b64encode(VALUE).decode(),
                           WRITE if op == "write" else READ))
    r = subprocess.run(["wrk", "-t2", "-c32", f"-d{dur}s", "--latency", "-s",
                        lua, f"http://127.0.0.1:{port}"], capture_output=True,
                       text=True, timeout=dur + 120)
    if "Non-2xx" in r.stdout or "Socket errors" in r.stdout or \
            r.returncode != 0:
        raise SystemExit(f"bench: wrk {op} on {port} failed:\n{r.stdout}"
                         f"\n{r.stderr}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", r.stdout).group(1))
    m = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", r.stdout)
    p99 = float(m.group(1)) * {"us": 1e-3, "ms": 1, "s": 1e3}[m.group(2)]
    return {"rps": rps, "p99_ms": p99}


# --- large values ------------------------------------------------------------

def varint(n):
    out = b""
    while True:
        b = n & 0x7f
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def put_body(vsize):
    """kv.SetRequest / etcdserverpb.PutRequest: key = 1, value = 2."""
    msg = b"\x0a\x05large\x12" + varint(vsize) + b"x" * vsize
    return b"\0" + len(msg).to_bytes(4, "big") + msg


def values(b, tmp, sysm, vsize, dur):
    conns = 4 if vsize >= 65536 else 16
    r = b.h2load(tmp, sysm.grpc_url("write"), put_body(vsize), conns, 1, dur)
    r.pop("lat_us")
    r["mb_s"] = r["rps"] * vsize / 1e6
    return r


# --- idle connections ----------------------------------------------------------

CONN_CLIENT = r"""
import resource, socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
socks = []
req = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
for i in range(n):  # the request at once: a silent connection is closed
    s = socket.socket()  # after client-header-timeout
    s.bind(("127.0.0.%d" % (2 + i // 5000), 0))
    s.connect(("127.0.0.1", port))
    s.sendall(req)
    socks.append(s)
served = 0
for s in socks:  # every connection is served once, then stays idle
    s.settimeout(30)
    if s.recv(4096).startswith(b"HTTP/1.1 200"):
        served += 1
print(served, flush=True)
sys.stdin.read()  # hold the connections until told
"""


def idle_conns(tmp, pid, port, n):
    path = f"{tmp}/conn-client.py"
    with open(path, "w") as f:
        f.write(CONN_CLIENT)
    before = rss_kib(pid)
    p = subprocess.Popen([sys.executable, path, str(port), str(n)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True)
    try:
        served = int(p.stdout.readline() or 0)
        time.sleep(1)
        after = rss_kib(pid)
    finally:
        p.stdin.close()
        p.wait(timeout=60)
    if served != n:
        raise SystemExit(f"bench: {served} of {n} connections served on {port}")
    return {"conns": n, "rss_before_kib": before, "rss_after_kib": after,
            "bytes_per_conn": (after - before) * 1024 / n}


# --- redis with the same keys ----------------------------------------------------

def redis_rss(b, tmp, taken, n):
    port = b.free_port(taken)
    rd = b.start(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                  "--save", "", "--appendonly", "no", "--daemonize", "no"],
                 f"{tmp}/redis-scale.log")
    b.wait_for(lambda: subprocess.run(["redis-cli", "-p", str(port), "ping"],
                                      capture_output=True).returncode == 0,
               10, "redis-server")
    p = subprocess.Popen(["redis-cli", "-p", str(port), "--pipe"],
                         stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    head = b"*3\r\n$3\r\nSET\r\n$16\r\n"
    tail = b"\r\n$100\r\n" + VALUE + b"\r\n"
    for s in range(0, n, 100_000):
        p.stdin.write(b"".join(head + key(i) + tail
                               for i in range(s, min(s + 100_000, n))))
    p.stdin.close()
    if p.wait(timeout=900) != 0:
        raise SystemExit("bench: redis-cli --pipe failed")
    out = subprocess.run(["redis-cli", "-p", str(port), "dbsize"],
                         capture_output=True, text=True).stdout
    if int(out.strip()) != n:
        raise SystemExit(f"bench: redis holds {out.strip()} keys, not {n}")
    rss = rss_kib(rd.pid)
    rd.terminate()
    rd.wait()
    return rss


# --- the PyazDB-only steps at N2 keys ---------------------------------------------

def curl(*args):
    """curl's output; "" if it did not answer within 2 s (a node loading a
    snapshot accepts connections before its loop turns again)."""
    try:
        return subprocess.run(["curl", "-s", "--max-time", "2", *args],
                              capture_output=True, text=True,
                              timeout=10).stdout
    except subprocess.TimeoutExpired:
        return ""


def status(n):
    return json.loads(curl("-f", f"http://127.0.0.1:{n['http']}/status"))


def caught_up(node, leader):
    target = status(leader)["applied_index"]
    return status(node)["applied_index"] >= target


def serving(node):
    return curl("-o", "/dev/null", "-w", "%{http_code}",
                f"http://127.0.0.1:{node['http']}/health") == "200"


def snapshot_restart_install(b, tmp, taken, pz, n):
    res = {}
    L = pz.leader
    t0 = time.monotonic()
    r = b.http_json(f"http://127.0.0.1:{L['http']}/admin/snapshot", b"{}",
                    timeout=900)
    res["snapshot_s"] = time.monotonic() - t0
    res["snapshot_bytes"] = r["snapshot_size"]
    res["raw_bytes"] = n * (16 + len(VALUE))
    for node in pz.nodes:  # the follower restarted below loads its own
        if node is not L:
            b.http_json(f"http://127.0.0.1:{node['http']}/admin/snapshot",
                        b"{}", timeout=900)
    res["rss_kib"] = {x["name"]: rss_kib(x["proc"].pid) for x in pz.nodes}
    f = next(x for x in pz.nodes if x is not L)
    f["proc"].kill()
    f["proc"].wait()
    t0 = time.monotonic()
    f["proc"] = b.start(pz.argv(f), f"{tmp}/{f['name']}.restart.log")
    b.wait_for(lambda: serving(f), 600, "restarted follower")
    res["restart_serving_s"] = time.monotonic() - t0
    b.wait_for(lambda: caught_up(f, L), 600, "restarted follower caught up")
    res["restart_caught_up_s"] = time.monotonic() - t0
    res["rss_restarted_kib"] = rss_kib(f["proc"].pid)
    new = pz.node_spec(4, taken)
    t0 = time.monotonic()
    new["proc"] = b.start(pz.argv(new, join=True), f"{tmp}/node4.log")
    pz.nodes.append(new)
    seen = {}

    def joined():
        # the transfer: from the first chunk to the snapshot installed
        with open(f"{tmp}/node4.log", errors="replace") as fh:
            text = fh.read()
        for what in ("receiving snapshot", "installed snapshot"):
            if what in text and what not in seen:
                seen[what] = time.monotonic()
        return len(seen) == 2 and serving(new) and caught_up(new, L)
    b.wait_for(joined, 900, "new node caught up")
    res["join_s"] = time.monotonic() - t0
    res["install_s"] = seen["installed snapshot"] - seen["receiving snapshot"]
    res["install_mb_s"] = res["snapshot_bytes"] / 1e6 / max(res["install_s"],
                                                            0.1)
    res["rss_new_kib"] = rss_kib(new["proc"].pid)
    return res


class Cluster:
    """3-node PyazDB with a mandi, so that a 4th node can join."""

    def __init__(self, b, tmp, taken, root, max_clients):
        self.b, self.tmp, self.root = b, tmp, root
        self.max_clients = max_clients
        self.mandi = b.free_port(taken)
        b.start([os.environ.get("BENCH_SERVER", f"{root}/src/pyazdb-server"),
                 "--mandi", "--mandi-addr",
                 f"http://127.0.0.1:{self.mandi}", "--log-level", "warning"],
                f"{tmp}/mandi.log")
        self.nodes = [self.node_spec(i, taken) for i in range(1, 4)]
        self.spec = ",".join(f"{n['name']}=127.0.0.1:{n['raft']}"
                             for n in self.nodes)
        for n in self.nodes:
            n["proc"] = b.start(self.argv(n), f"{tmp}/{n['name']}.log")
        self.leader = b.wait_for(self._leader, 60, "PyazDB leader")
        self.pids = [n["proc"].pid for n in self.nodes]
        self.name = "pyazdb"

    def node_spec(self, i, taken):
        fp = self.b.free_port
        return {"raft": fp(taken), "http": fp(taken), "grpc": fp(taken),
                "name": f"node{i}"}

    def argv(self, n, join=False):
        # BENCH_SERVER: another build's server, to compare
        a = [os.environ.get("BENCH_SERVER", f"{self.root}/src/pyazdb-server"),
             "--node-id", n["name"],
             "--raft-data", f"{self.tmp}/pz-{n['name']}",
             "--raft-addr", f"127.0.0.1:{n['raft']}",
             "--http-addr", f"127.0.0.1:{n['http']}",
             "--grpc-addr", f"127.0.0.1:{n['grpc']}",
             "--mandi-addr", f"http://127.0.0.1:{self.mandi}",
             "--max-clients", str(self.max_clients),
             # only the snapshot under test, none during the loads (by
             # count), and a short log behind it: a new node needs it
             "--raft-snapshot-entries", "1000000000",
             "--raft-trailing-entries", "1000",
             "--log-level", "info"]
        return a if join else a + ["--initial-cluster", self.spec]

    def _leader(self):
        for n in self.nodes:
            if status(n)["role"] == "leader":
                return n
        return None

    def grpc_url(self, op):
        return f"http://127.0.0.1:{self.leader['grpc']}/kv.KVService/Set"


# --- the section -------------------------------------------------------------------

def run(b, tmp, taken, mode, keys=None):
    """The scale section; b is the bench module (its process helpers)."""
    cfg = dict(SIZES[mode])
    if keys:
        cfg["keys"] = [max(1000, keys // 10), keys]
    root = b.ROOT
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = cfg["conns"] + 1000
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            raise SystemExit(f"bench: RLIMIT_NOFILE hard limit {hard} < {need}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    res = {"keys": cfg["keys"], "dur": cfg["dur"], "values": {}, "curve": {}}
    b.log("== scale: 3-node PyazDB (and mandi) and 3-node etcd")
    pz = Cluster(b, tmp, taken, root, cfg["conns"] + 100)
    et = b.Etcd(tmp, taken)
    systems = [pz, et]
    port = {"pyazdb": pz.leader["http"], "etcd": et.leader["client"]}
    b.log(f"== scale: {cfg['conns']} idle client connections")
    res["conns"] = {
        "pyazdb": idle_conns(tmp, pz.leader["proc"].pid, pz.leader["http"],
                             cfg["conns"]),
        "etcd": idle_conns(tmp, et.leader["proc"].pid, et.leader["client"],
                           cfg["conns"])}
    for s in systems:
        b.log(f"   {s.name}: {res['conns'][s.name]['bytes_per_conn']:,.0f} "
              "bytes RSS per connection")
    b.log("== scale: large values (gRPC Set / Put)")
    for vsize in (1024, 65536, 1 << 20):
        res["values"][vsize] = {s.name: values(b, tmp, s, vsize, cfg["dur"])
                                for s in systems}
        v = res["values"][vsize]
        b.log(f"   {vsize:>8} B: pyazdb {v['pyazdb']['mb_s']:8.1f} MB/s   "
              f"etcd {v['etcd']['mb_s']:8.1f} MB/s")
    # etcd first, then stopped: the big tables are never both in memory
    for s in (et, pz):
        have = 0
        counts = cfg["keys"]
        if s is et:
            counts = sorted({min(n, ETCD_KEYS_MAX) for n in counts})
        for n in counts:
            b.log(f"== scale: {s.name}: loading to {n:,} keys")
            rate = load(port[s.name], have, n)
            have = n
            held = count_keys(s, port[s.name])
            if held < n:
                raise SystemExit(f"bench: {s.name} holds {held} keys, not {n}")
            k0, t0 = kdamond_cpu_s(), time.monotonic()
            r = {"load_keys_s": rate,
                 "write": wrk_at(tmp, port[s.name], n, "write", cfg["dur"])}
            k1 = kdamond_cpu_s()
            if k0 is not None and k1 is not None:
                r["kdamond_cpu"] = (k1 - k0) / (time.monotonic() - t0)
            r["read"] = wrk_at(tmp, port[s.name], n, "read", cfg["dur"])
            res["curve"].setdefault(str(n), {})[s.name] = r
            b.log(f"   {n:>10,} keys: loaded at {rate:,.0f} keys/s; writes "
                  f"{r['write']['rps']:,.0f}/s p99 {r['write']['p99_ms']:.2f} "
                  f"ms; reads {r['read']['rps']:,.0f}/s p99 "
                  f"{r['read']['p99_ms']:.2f} ms")
        if s is et:
            res["etcd_rss_kib"] = rss_kib(et.leader["proc"].pid)
            res["etcd_keys"] = have
            for m in et.members:
                m["proc"].terminate()
                m["proc"].wait()
                shutil.rmtree(f"{tmp}/{m['name']}", ignore_errors=True)
            res["settle_s"], res["settled"] = settle_disk(tmp)
            b.log(f"   etcd's data deleted; the disk "
                  f"{'settled' if res['settled'] else 'was still not quiet'}"
                  f" after {res['settle_s']:.1f} s")
    n = cfg["keys"][-1]
    b.log(f"== scale: PyazDB at {n:,} keys: snapshot, restart, InstallSnapshot")
    res["big"] = snapshot_restart_install(b, tmp, taken, pz, n)
    for x in pz.nodes:
        x["proc"].terminate()
        x["proc"].wait()
        shutil.rmtree(f"{tmp}/pz-{x['name']}", ignore_errors=True)
    b.log(f"== scale: redis-server with the same {n:,} keys")
    res["big"]["redis_rss_kib"] = redis_rss(b, tmp, taken, n)
    g = res["big"]
    b.log(f"   snapshot {g['snapshot_bytes'] / 1e6:,.0f} MB in "
          f"{g['snapshot_s']:.1f} s; restart serving after "
          f"{g['restart_serving_s']:.1f} s; InstallSnapshot "
          f"{g['install_s']:.1f} s ({g['install_mb_s']:.0f} MB/s); RSS "
          f"leader {g['rss_kib'][pz.leader['name']] / 1024:,.0f} MiB, redis "
          f"{g['redis_rss_kib'] / 1024:,.0f} MiB")
    res["leader"] = pz.leader["name"]
    return res


# --- report ---------------------------------------------------------------------------

def plot(out, sc):
    if not shutil.which("gnuplot"):
        return False
    with open(f"{out}/scale-keys.dat", "w") as f:
        for n in sorted(sc["curve"], key=int):
            row = sc["curve"][n]
            # a system may lack a count (etcd stops at 2M): NaN, skipped
            f.write(f"{n} " + " ".join(
                f"{row[s][op]['rps']} {row[s][op]['p99_ms']}" if s in row
                else "NaN NaN"
                for s in ("pyazdb", "etcd") for op in ("write", "read"))
                + "\n")
    d = f"{out}/scale-keys.dat"
    script = f"""
set terminal pngcairo size 900,500
set datafile missing "NaN"
set logscale x 10
set xlabel "keys held"
set ylabel "requests/s"
set key outside
set grid
set output "{out}/scale-keys.png"
plot "{d}" using 1:2 with linespoints title "PyazDB writes", \\
     "{d}" using 1:4 with linespoints title "PyazDB reads", \\
     "{d}" using 1:6 with linespoints title "etcd writes", \\
     "{d}" using 1:8 with linespoints title "etcd reads"
"""
    r = subprocess.run(["gnuplot"], input=script, text=True,
                       capture_output=True)
    return r.returncode == 0


def report_lines(sc, ratio):
    L = ["\n## Scale\n"]
    c = sc["conns"]
    a, e = c["pyazdb"], c["etcd"]
    L.append(f"{a['conns']:,} client connections, each served one "
             "`GET /health` and then idle: RSS growth per connection, "
             f"PyazDB node {a['bytes_per_conn']:,.0f} B ("
             f"{a['rss_before_kib'] / 1024:.0f} -> "
             f"{a['rss_after_kib'] / 1024:.0f} MiB), etcd member "
             f"{e['bytes_per_conn']:,.0f} B ({e['rss_before_kib'] / 1024:.0f} "
             f"-> {e['rss_after_kib'] / 1024:.0f} MiB).\n")
    L.append("| value size | PyazDB MB/s | etcd MB/s | ratio | PyazDB p99 ms "
             "| etcd p99 ms |")
    L.append("|---|---|---|---|---|---|")
    for vs, r in sorted(sc["values"].items(), key=lambda x: int(x[0])):
        p, q = r["pyazdb"], r["etcd"]
        L.append(f"| {int(vs) // 1024} KiB | {p['mb_s']:,.1f} | "
                 f"{q['mb_s']:,.1f} | {ratio(p['mb_s'], q['mb_s'])} | "
                 f"{p['p99_ms']:.1f} | {q['p99_ms']:.1f} |")
    L.append("\nAgainst the number of keys held (random keys, wrk, 32 "
             "connections, through the v3 JSON gateway of each; load: "
             "transactions of 128 puts, 4 connections; etcd first, then "
             "its data deleted and, before PyazDB's, "
             f"{sc.get('settle_s', 0):.1f} s "
             + ("until the disk's fsyncs were quiet again"
                if sc.get("settled", True) else
                "of waiting, the disk's fsyncs still not quiet")
             + "):\n")
    L.append("| keys | system | load keys/s | writes/s | write p99 ms | "
             "reads/s | read p99 ms |")
    L.append("|---|---|---|---|---|---|---|")
    for n in sorted(sc["curve"], key=int):
        for s in ("pyazdb", "etcd"):
            r = sc["curve"][n].get(s)
            if r:
                L.append(f"| {int(n):,} | {s} | {r['load_keys_s']:,.0f} | "
                         f"{r['write']['rps']:,.0f} | "
                         f"{r['write']['p99_ms']:.2f} | "
                         f"{r['read']['rps']:,.0f} | "
                         f"{r['read']['p99_ms']:.2f} |")
    kd = [(int(n), s, sc["curve"][n][s]["kdamond_cpu"])
          for n in sorted(sc["curve"], key=int) for s in ("pyazdb", "etcd")
          if "kdamond_cpu" in sc["curve"][n].get(s, {})]
    if kd:
        L.append("\nThe kernel of this machine runs DAMON (kdamond), whose "
                 "sampling of physical memory holds a CPU for a while every "
                 "sampling interval, longer the more memory is mapped; during "
                 "the write runs it used " + ", ".join(
                     f"{100 * c:.1f}% of a CPU ({s}, {n:,} keys)"
                     for n, s, c in kd) + ".")
    if sc.get("plot"):
        L.append("\n![keys](scale-keys.png)\n")
    g = sc["big"]
    n = sc["keys"][-1]
    lr = g["rss_kib"][sc["leader"]]
    L.append(f"\nPyazDB at {n:,} keys: snapshot {g['snapshot_bytes'] / 1e6:,.0f}"
             f" MB ({g['snapshot_bytes'] / g['raw_bytes']:.2f}x the raw "
             f"data) written in {g['snapshot_s']:.1f} s; a follower "
             f"restarted serves after {g['restart_serving_s']:.1f} s, caught "
             f"up after {g['restart_caught_up_s']:.1f} s; a new node "
             f"joining through mandi caught up after {g['join_s']:.1f} s, "
             f"of which the InstallSnapshot (first chunk received to "
             f"installed, 0.1 s polling) {g['install_s']:.1f} s "
             f"({g['install_mb_s']:.0f} MB/s of snapshot). RSS: leader "
             f"{lr / 1024:,.0f} MiB, restarted follower "
             f"{g['rss_restarted_kib'] / 1024:,.0f} MiB, new node "
             f"{g['rss_new_kib'] / 1024:,.0f} MiB; redis-server with the "
             f"same keys {g['redis_rss_kib'] / 1024:,.0f} MiB "
             f"(leader / redis {ratio(lr, g['redis_rss_kib'])}, restarted "
             f"follower / redis {ratio(g['rss_restarted_kib'], g['redis_rss_kib'])}"
             f"); etcd leader at {sc['etcd_keys']:,} keys "
             f"{sc.get('etcd_rss_kib', 0) / 1024:,.0f} MiB.\n")
    return L
