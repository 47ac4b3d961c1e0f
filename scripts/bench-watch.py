#!/usr/bin/env python3
"""Watch benchmark: N watchers of one prefix on one node while writes go
in at a fixed rate; reports the events delivered against those expected,
the delivery delay (p50, p99, max: from the writer's send time, carried
in the value, to a sampled watcher reading it) and the node's RSS.

    scripts/bench-watch.py [--watchers 10000] [--rate 1000] [--seconds 10]
                           [--procs 2] [--sample 200] [--addr HOST:PORT]

Without --addr it starts a one-node server (src/pyazdb-server) in a
temporary directory, with max-clients and max-watchers raised to fit,
and stops it at the end. Watchers are asyncio connections spread over
--procs client processes; every watcher counts the revisions it gets,
--sample of them also parse the events for the delay. Writes go over 16
kept-alive connections, paced to --rate. All traffic is on 127.0.0.1.
"""
import argparse
import asyncio
import http.client
import json
import multiprocessing as mp
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
SERVER = os.path.join(ROOT, "src", "pyazdb-server")
PREFIX = "bench/"
VALUE_RE = re.compile(rb'"value":"([0-9.]+)"')


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kb(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1])
    return out


async def one_watcher(host, port, sampled, st):
    r, w = await asyncio.open_connection(host, port, limit=1 << 22)
    w.write(f"GET /watch?prefix={PREFIX}&serializable=true HTTP/1.1\r\n"
            "Host: bench\r\n\r\n".encode())
    head = await r.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        st["refused"] += 1
        w.close()
        return
    st["ready"] += 1
    tail = b""
    pending = b""
    while True:
        d = await r.read(1 << 16)
        if not d:
            break
        buf = tail + d
        st["revs"] += buf.count(b"\nid: ") - tail.count(b"\nid: ")
        tail = buf[-5:]
        if sampled:
            now = time.time()
            pending += d
            cut = pending.rfind(b"\n\n")
            if cut >= 0:
                for m in VALUE_RE.finditer(pending, 0, cut):
                    st["delays"].append(now - float(m.group(1)))
                pending = pending[cut + 2:]
    st["closed"] += 1


def client_proc(host, port, n, nsample, ready_q, done_ev, out_q):
    raise_nofile()
    st = {"revs": 0, "ready": 0, "refused": 0, "closed": 0, "delays": []}

    async def main():
        tasks = []
        for i in range(n):
            tasks.append(asyncio.create_task(
                one_watcher(host, port, i < nsample, st)))
            if i % 200 == 199:
                await asyncio.sleep(0.01)  # do not flood the accept queue
        while st["ready"] + st["refused"] < n:
            await asyncio.sleep(0.05)
        ready_q.put((st["ready"], st["refused"]))
        last, still = -1, 0
        while True:
            await asyncio.sleep(0.2)
            if done_ev.is_set():
                # writes are over: wait until nothing more arrives
                if st["revs"] == last:
                    still += 1
                    if still >= 10:
                        break
                else:
                    still = 0
                last = st["revs"]
        out_q.put({"revs": st["revs"], "delays": st["delays"],
                   "ready": st["ready"], "closed": st["closed"]})
        for t in tasks:
            t.cancel()

    asyncio.run(main())


def writer(host, port, rate, seconds, counter, lock):
    """16 connections, each writing its share of the rate."""
    conns = 16
    per = rate / conns
    stop_at = time.time() + seconds

    def run(k):
        c = http.client.HTTPConnection(host, port, timeout=10)
        i = 0
        start = time.time()
        while True:
            due = start + i / per
            now = time.time()
            if due > stop_at:
                break
            if due > now:
                time.sleep(due - now)
            body = json.dumps({"key": f"{PREFIX}{k}-{i}",
                               "value": f"{time.time():.6f}"})
            try:
                c.request("POST", "/set", body,
                          {"Content-Type": "application/json"})
                resp = c.getresponse()
                resp.read()
                if resp.status == 204:
                    with lock:
                        counter[0] += 1
                else:
                    with lock:
                        counter[1] += 1
            except OSError:
                with lock:
                    counter[1] += 1
                c = http.client.HTTPConnection(host, port, timeout=10)
            i += 1

    ts = [threading.Thread(target=run, args=(k,)) for k in range(conns)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def start_server(tmp, n):
    port = free_port()
    conf = os.path.join(tmp, "bench.conf")
    with open(conf, "w") as f:
        f.write(f"node-id bench\nhttp-addr 127.0.0.1:{port}\n"
                f"grpc-addr 127.0.0.1:{free_port()}\n"
                f"raft-addr 127.0.0.1:{free_port()}\n"
                f"raft-data {tmp}/data\nraft-bootstrap yes\n"
                f"mandi-addr none\nlog-level warning\n"
                f"max-clients {n + 200}\nmax-watchers {n + 10}\n")
    log = open(os.path.join(tmp, "server.log"), "wb")
    p = subprocess.Popen([SERVER, conf], stdout=log, stderr=log)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            c.request("GET", "/health")
            if c.getresponse().status == 200:
                return p, port
        except OSError:
            pass
        time.sleep(0.05)
    p.kill()
    sys.exit("server did not start; see " + log.name)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--watchers", type=int, default=10000)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--sample", type=int, default=200)
    ap.add_argument("--addr", help="HOST:PORT of a running node")
    a = ap.parse_args()
    hard = raise_nofile()
    per_proc = (a.watchers + a.procs - 1) // a.procs
    if per_proc + 100 > hard:
        sys.exit(f"open files limit {hard} is too low for {per_proc} "
                 "watchers per process: raise it or use more --procs")
    tmp = None
    proc = None
    if a.addr:
        host, port = a.addr.rsplit(":", 1)
        port = int(port)
    else:
        tmp = tempfile.mkdtemp(prefix="bench-watch-")
        proc, port = start_server(tmp, a.watchers)
        host = "127.0.0.1"
    ready_q, out_q = mp.Queue(), mp.Queue()
    done_ev = mp.Event()
    procs = []
    left = a.watchers
    for i in range(a.procs):
        n = min(per_proc, left)
        left -= n
        s = a.sample // a.procs
        p = mp.Process(target=client_proc,
                       args=(host, port, n, s, ready_q, done_ev, out_q))
        p.start()
        procs.append(p)
    t0 = time.time()
    ready = refused = 0
    for _ in procs:
        r, f = ready_q.get(timeout=300)
        ready += r
        refused += f
    print(f"watchers: {ready} streaming, {refused} refused, "
          f"connected in {time.time() - t0:.1f}s")
    counter, lock = [0, 0], threading.Lock()
    cpu0 = cpu_s(proc.pid) if proc else 0
    t1 = time.time()
    writer(host, port, a.rate, a.seconds, counter, lock)
    took = time.time() - t1
    done_ev.set()
    results = [out_q.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    delivered = sum(r["revs"] for r in results)
    closed = sum(r["closed"] for r in results)
    delays = sorted(d for r in results for d in r["delays"])
    expected = counter[0] * ready
    print(f"writes: {counter[0]} ok, {counter[1]} failed in {took:.1f}s "
          f"({counter[0] / took:.0f}/s)")
    print(f"events: {delivered} delivered of {expected} expected "
          f"({100.0 * delivered / expected if expected else 0:.2f}%); "
          f"{closed} streams ended by the node (slow watchers cancelled)")
    if delays:
        p50 = delays[len(delays) // 2]
        p99 = delays[min(len(delays) - 1, int(len(delays) * 0.99))]
        print(f"delivery delay (send -> watcher read, {len(delays)} "
              f"samples): p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
              f"max {delays[-1] * 1000:.1f} ms, mean "
              f"{statistics.mean(delays) * 1000:.1f} ms")
    if proc:
        print(f"server CPU during writes and delivery: "
              f"{cpu_s(proc.pid) - cpu0:.1f} s")
        r = rss_kb(proc.pid)
        print(f"server RSS: {r.get('VmRSS', 0) / 1024:.1f} MiB now, "
              f"peak {r.get('VmHWM', 0) / 1024:.1f} MiB")
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
