#!/usr/bin/env python3
"""Chaos test: real pyazdb-server processes under faults, clients recording
every call, and a linearizability check of the whole history.

    tests/chaos/chaos.py [--nodes 3] [--time 30] [--seed N] [--runs 1]
                         [--nemesis kill,pause,partition,transfer,member]
                         [--clients 8] [--keys 4] [--out DIR]

Each node listens on its own 127.0.0.x and dials its peers from it
(raft-bind-source), so a partition is a set of iptables rules by address
pair. The rules must not touch the machine: partitions run only inside a
network namespace of our own (`make test-chaos` starts this script under
`unshare -n`); elsewhere the partition nemesis is left out, and said so.

Clients (threads) send get, set, compare-and-set (a set with
`prev_value`, the value the client last read, or `prev_revision` 0 when
it read nothing; 412 means the key held something else) and delete over
HTTP to random nodes, each set with a value never written before, and
record invoke and return times and the answer; half the time (phases of
2 s) all of them send to one node, so that the others hear from no client
(a follower then writes its log on its loop). A timeout, a reset or a 5xx
is an unknown outcome: the write may or may not have happened. The nemesis, one fault at a time:
kill -9 a node and restart it, pause it (SIGSTOP, SIGCONT), cut it or a
minority off, transfer the leadership, or remove a member, wipe it and
let it join again through mandi (the README's recipe). At the end every
fault is
healed and every key is read on every node; the history, final reads
included (so a lost acknowledged write fails the check), must be
linearizable (linearizable.py). Exit 0 when every run passed.
"""
import argparse
import http.client
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

from linearizable import check

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SERVER = os.environ.get("PYAZDB_SERVER",
                        os.path.join(ROOT, "src", "pyazdb-server"))
SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
                   "runtime error:", "AddressSanitizer:")


def in_own_netns():
    """True when this process is in a network namespace with no interface
    but loopback (the one `unshare -n` made): only there may iptables
    rules be changed."""
    try:
        with open("/proc/self/net/dev") as f:
            names = [line.split(":")[0].strip() for line in f
                     if ":" in line]
    except OSError:
        return False
    return names == ["lo"]


class Node:
    def __init__(self, i, base, port, tmp):
        self.port = port
        self.i = i
        self.name = f"node{i + 1}"
        self.ip = f"127.0.0.{base + i}"
        self.raft = f"{self.ip}:{port}"
        self.http = f"{self.ip}:{port + 1}"
        self.dir = os.path.join(tmp, self.name)
        os.makedirs(self.dir, exist_ok=True)
        self.proc = None
        self.paused = False
        self.log_path = os.path.join(self.dir, "server.log")

    def write_conf(self, cluster, mandi):
        self.cluster, self.mandi = cluster, mandi
        conf = {
            "node-id": self.name,
            "raft-addr": self.raft,
            "http-addr": self.http,
            "grpc-addr": f"{self.ip}:{self.port + 2}",
            "raft-data": os.path.join(self.dir, "data"),
            "raft-bind-source": "yes",
            "initial-cluster": cluster,
            "mandi-addr": mandi,
            "request-timeout": "2s",
            "raft-snapshot-entries": "500",
            "raft-trailing-entries": "100",
            "log-level": "info",
        }
        if not cluster:  # joining through mandi
            del conf["initial-cluster"]
            conf["raft-bootstrap"] = "no"
        with open(os.path.join(self.dir, "pyazdb.conf"), "w") as f:
            for k, v in conf.items():
                f.write(f'{k} "{v}"\n')

    def wipe_to_join(self):
        """Empty data dir, configured to join through mandi."""
        shutil.rmtree(os.path.join(self.dir, "data"), ignore_errors=True)
        self.write_conf("", self.mandi)

    def start(self):
        log = open(self.log_path, "ab")
        env = dict(os.environ)
        env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
        # raft.db's log in segments of 32 entries (not 32768): with a
        # snapshot every 500 entries, compaction empties tables and, where
        # a table holds a later segment too, deletes rows one by one, all
        # through the kills, pauses and partitions
        env.setdefault("PYAZDB_TEST_LOG_SEGMENT", "32")
        self.proc = subprocess.Popen(
            [SERVER, os.path.join(self.dir, "pyazdb.conf")],
            stdout=log, stderr=log, env=env)
        log.close()
        self.paused = False

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def kill(self):
        if self.alive():
            if self.paused:
                self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()
        self.paused = False

    def pause(self):
        if self.alive() and not self.paused:
            self.proc.send_signal(signal.SIGSTOP)
            self.paused = True

    def resume(self):
        if self.alive() and self.paused:
            self.proc.send_signal(signal.SIGCONT)
            self.paused = False

    def stop(self):
        self.resume()
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return f"{self.name} did not stop on SIGTERM"
        return None

    def read_log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""


def request(addr, method, path, body=None, timeout=3.0):
    host, port = addr.rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body else {}
        c.request(method, path, body, headers)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


class Recorder:
    def __init__(self):
        self.lock = threading.Lock()
        self.ops = []
        self.counts = {"ok": 0, "fail": 0, "unknown": 0}

    def add(self, op):
        with self.lock:
            self.ops.append(op)
            if op["ok"]:
                self.counts["ok"] += 1
            elif op["ret"] is None:
                self.counts["unknown"] += 1
            else:
                self.counts["fail"] += 1


STALE = ""  # "&consistency=stale" with --stale-reads


def do_op(rec, addr, kind, key, value=None, timeout=3.0, expect=None):
    """Performs one operation and records it. Returns the op. A "cas" sets
    key to value only if it holds expect (None: only if it is absent)."""
    op = {"key": key, "kind": kind, "value": value, "node": addr,
          "call": time.monotonic(), "ret": None, "ok": None}
    try:
        if kind == "cas":
            op["expect"] = expect
            req = {"key": key, "value": value}
            if expect is None:
                req["prev_revision"] = 0
            else:
                req["prev_value"] = expect
            st, body = request(addr, "POST", "/set", json.dumps(req),
                               timeout)
            done = time.monotonic()
            if st == 204:
                op.update(ret=done, ok=True, succeeded=True)
            elif st == 412:
                op.update(ret=done, ok=True, succeeded=False)
            elif 400 <= st < 500:
                op.update(ret=done, ok=False, error=f"{st} {body!r}")
            else:
                op["error"] = f"{st} {body!r}"  # unknown: may have happened
        elif kind == "write":
            st, body = request(addr, "POST", "/set",
                               json.dumps({"key": key, "value": value}),
                               timeout)
            done = time.monotonic()
            if st == 204:
                op.update(ret=done, ok=True)
            elif 400 <= st < 500:
                op.update(ret=done, ok=False, error=f"{st} {body!r}")
            else:
                op["error"] = f"{st} {body!r}"  # unknown: may have happened
        elif kind == "delete":
            st, body = request(addr, "DELETE",
                               "/delete?key=" + urllib.parse.quote(key),
                               None, timeout)
            done = time.monotonic()
            if st == 204:
                op.update(ret=done, ok=True)
            elif 400 <= st < 500:
                op.update(ret=done, ok=False, error=f"{st} {body!r}")
            else:
                op["error"] = f"{st} {body!r}"
        else:
            st, body = request(addr, "GET",
                               "/get?key=" + urllib.parse.quote(key) + STALE,
                               None, timeout)
            done = time.monotonic()
            if st == 200:
                op.update(ret=done, ok=True, value=body.decode())
            elif st == 404 and body.startswith(b"Key not found"):
                op.update(ret=done, ok=True, value=None)
            else:
                op["error"] = f"{st} {body!r}"
    except (OSError, http.client.HTTPException) as e:
        op["error"] = repr(e)
    rec.add(op)
    return op


class Partitions:
    """iptables rules that drop traffic between address pairs (in our own
    network namespace only)."""

    def __init__(self, enabled):
        self.enabled = enabled
        self.rules = []

    def cut(self, side_a, side_b):
        for a in side_a:
            for b in side_b:
                for src, dst in ((a.ip, b.ip), (b.ip, a.ip)):
                    rule = ["OUTPUT", "-s", src, "-d", dst, "-j", "DROP"]
                    subprocess.run(["iptables", "-A"] + rule, check=True)
                    self.rules.append(rule)

    def heal(self):
        while self.rules:
            rule = self.rules.pop()
            subprocess.run(["iptables", "-D"] + rule, check=True)


def wait_leader(nodes, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        for n in nodes:
            if not n.alive():
                continue
            try:
                st, body = request(n.http, "GET", "/status", timeout=1)
                if st == 200 and json.loads(body).get("role") == "leader":
                    return n
            except (OSError, ValueError, http.client.HTTPException):
                pass
        time.sleep(0.1)
    return None


def voters(nodes):
    """The voters' names as a live node sees them, or None."""
    for n in nodes:
        if not n.alive() or n.paused:
            continue
        try:
            st, body = request(n.http, "GET", "/cluster", timeout=2)
            if st == 200:
                return {m["id"] for m in json.loads(body)["members"]
                        if m["voter"]}
        except (OSError, ValueError, KeyError, http.client.HTTPException):
            pass
    return None


def readd(n, nodes, stop, events, problems):
    """Remove n, wipe it and let it join again (the README's recipe);
    returns when it votes again, or gives up quietly after 40 s."""
    names = {x.name for x in nodes}
    via = [x for x in nodes if x is not n and x.alive()]
    if not via or voters(nodes) != names:
        return
    events.append(f"remove and re-add {n.name}")
    try:
        st, body = request(via[0].http, "DELETE",
                           f"/cluster/members/{n.name}", timeout=10)
    except (OSError, http.client.HTTPException):
        st, body = None, b""
    if st != 204:
        return  # another change in flight, no leader: nothing removed
    try:
        rc = n.proc.wait(15)
    except subprocess.TimeoutExpired:
        rc = None
    if rc not in (0, None):
        problems.append(f"{n.name} exited {rc} when removed")
    n.kill()
    n.wipe_to_join()
    n.start()
    deadline = time.time() + 40
    while time.time() < deadline and not stop.is_set():
        if voters(nodes) == names:
            return
        time.sleep(0.5)


def nemesis(rnd, nodes, kinds, parts, stop, events, problems):
    while not stop.is_set():
        if stop.wait(rnd.uniform(0.5, 2.0)):
            break
        kind = rnd.choice(kinds)
        hold = rnd.uniform(1.0, 4.0)
        if kind == "kill":
            n = rnd.choice(nodes)
            events.append(f"kill {n.name}")
            n.kill()
            stop.wait(hold)
            n.start()
        elif kind == "pause":
            n = rnd.choice(nodes)
            events.append(f"pause {n.name} {hold:.1f}s")
            n.pause()
            stop.wait(hold)
            n.resume()
        elif kind == "partition":
            k = rnd.randint(1, (len(nodes) - 1) // 2)
            minority = rnd.sample(nodes, k)
            rest = [n for n in nodes if n not in minority]
            events.append("partition " + ",".join(n.name for n in minority))
            parts.cut(minority, rest)
            stop.wait(hold)
            parts.heal()
        elif kind == "member":
            readd(rnd.choice(nodes), nodes, stop, events, problems)
        elif kind == "transfer":
            lead = wait_leader(nodes, timeout=2)
            others = [n for n in nodes if n is not lead and n.alive()]
            if lead and others:
                to = rnd.choice(others)
                events.append(f"transfer {lead.name} -> {to.name}")
                try:
                    request(lead.http, "POST",
                            f"/cluster/transfer?to={to.name}", timeout=3)
                except (OSError, http.client.HTTPException):
                    pass


def focuser(rnd, nodes, focus, stop):
    """Every 2 s, a phase: the node all clients send to, or None (any
    node)."""
    while not stop.wait(2):
        focus["node"] = rnd.choice(nodes) if rnd.random() < 0.5 else None
        focus["phase"] += 1


def client(rnd, nodes, keys, rec, stop, counter, focus):
    last = {}  # key -> the value this client last read (a cas expects it)

    def fresh():
        with counter["lock"]:
            counter["n"] += 1
            return f"v{counter['n']}"

    left = -1  # the phase whose node failed this client
    while not stop.is_set():
        phase, n = focus["phase"], focus["node"]
        focused = n is not None and left != phase
        if not focused:
            n = rnd.choice(nodes)
        key = rnd.choice(keys)
        x = rnd.random()
        if x < 0.3:
            op = do_op(rec, n.http, "write", key, fresh())
        elif x < 0.45:
            op = do_op(rec, n.http, "cas", key, fresh(), expect=last.get(key))
        elif x < 0.9:
            op = do_op(rec, n.http, "read", key)
            if op["ok"]:
                last[key] = op["value"]
        else:
            op = do_op(rec, n.http, "delete", key)
        if focused and op["ok"] is not True:
            # a failure or no answer: go elsewhere for the rest of the
            # phase, as a client with a random node would
            left = phase


def run_once(args, seed, tmp):
    rnd = random.Random(seed)
    kinds = args.nemesis.split(",") if args.nemesis else []
    parts = Partitions("partition" in kinds)
    base = 10 + 10 * (seed % 20)
    port = 20000 + 100 * (seed % 400)
    nodes = [Node(i, base, port + 10 * i, tmp) for i in range(args.nodes)]
    cluster = ",".join(f"{n.name}={n.raft}" for n in nodes)
    # mandi, for nodes that join again after a removal
    mandi_url = f"http://127.0.0.{base + 9}:{port + 90}"
    mandi_log = open(os.path.join(tmp, "mandi.log"), "ab")
    mandi = subprocess.Popen([SERVER, "--mandi", "--mandi-addr", mandi_url],
                             stdout=mandi_log, stderr=mandi_log)
    mandi_log.close()
    for n in nodes:
        n.write_conf(cluster, mandi_url)
        n.start()
    rec = Recorder()
    events = []
    problems = []
    try:
        if wait_leader(nodes) is None:
            return False, "no leader at start", rec, events
        keys = [f"s{seed}-k{i}" for i in range(args.keys)]
        stop = threading.Event()
        counter = {"n": 0, "lock": threading.Lock()}
        focus = {"node": None, "phase": 0}
        threads = [threading.Thread(
            target=client,
            args=(random.Random(rnd.random()), nodes, keys, rec, stop,
                  counter, focus)) for _ in range(args.clients)]
        threads.append(threading.Thread(
            target=focuser, args=(random.Random(rnd.random()), nodes, focus,
                                  stop)))
        if kinds:
            threads.append(threading.Thread(
                target=nemesis,
                args=(random.Random(rnd.random()), nodes, kinds, parts, stop,
                      events, problems)))
        for t in threads:
            t.start()
        time.sleep(args.time)
        stop.set()
        for t in threads:
            t.join(30)
        # heal everything, then read every key on every node
        parts.heal()
        for n in nodes:
            n.resume()
            if not n.alive():
                rc = n.proc.returncode
                if rc not in (-signal.SIGKILL,):
                    problems.append(f"{n.name} exited by itself ({rc})")
                n.start()
        if wait_leader(nodes) is None:
            problems.append("no leader after healing")
        for key in keys:
            for n in nodes:
                deadline = time.time() + 30
                while True:
                    op = do_op(rec, n.http, "read", key)
                    if op["ok"] or time.time() > deadline:
                        break
                    time.sleep(0.2)
                if not op["ok"]:
                    problems.append(f"final read of {key} on {n.name} "
                                    f"failed: {op.get('error')}")
    finally:
        parts.heal()
        mandi.terminate()
        mandi.wait()
        for n in nodes:
            why = n.stop()
            if why:
                problems.append(why)
            log = n.read_log()
            for m in SANITIZER_MARKS:
                if m in log:
                    problems.append(f"{n.name}: sanitizer report ({m})")
                    break
    ok, why = check(rec.ops)
    if ok is not True:
        problems.append(f"history {'not linearizable' if ok is False else 'not checked'}: {why}")
    return not problems, "; ".join(problems), rec, events


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--time", type=float, default=30)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--nemesis",
                    default="kill,pause,partition,transfer,member")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--keys", type=int, default=4)
    ap.add_argument("--out", default=None,
                    help="keep data, logs and histories here")
    ap.add_argument("--stale-reads", action="store_true",
                    help="read with consistency=stale (not linearizable: "
                         "the check must fail; a test of the test)")
    args = ap.parse_args()
    global STALE
    if args.stale_reads:
        STALE = "&consistency=stale"
    if not os.access(SERVER, os.X_OK):
        sys.exit(f"chaos: {SERVER} is not built (make)")
    kinds = [k for k in args.nemesis.split(",") if k]
    for k in kinds:
        if k not in ("kill", "pause", "partition", "transfer", "member"):
            sys.exit(f"chaos: unknown nemesis {k!r}")
    if "partition" in kinds and not (in_own_netns() and
                                     shutil.which("iptables")):
        print("chaos: WARNING: not in a network namespace of our own (or "
              "no iptables): the partition nemesis is left out",
              flush=True)
        kinds.remove("partition")
    args.nemesis = ",".join(kinds)
    if in_own_netns():
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    seed0 = args.seed if args.seed is not None else random.randrange(1 << 30)
    failed = 0
    total = {"ok": 0, "fail": 0, "unknown": 0}
    for k in range(args.runs):
        seed = seed0 + k
        tmp = tempfile.mkdtemp(prefix=f"pz-chaos-{seed}-", dir=args.out)
        t0 = time.time()
        ok, why, rec, events = run_once(args, seed, tmp)
        for c in total:
            total[c] += rec.counts[c]
        print(f"chaos: seed {seed}: faults: {'; '.join(events) or 'none'}",
              flush=True)
        print(f"chaos: seed {seed}: {args.nodes} nodes, {args.nemesis or 'no faults'}: "
              f"{len(rec.ops)} operations ({rec.counts['ok']} ok, "
              f"{rec.counts['unknown']} unknown, {rec.counts['fail']} failed), "
              f"{len(events)} faults, {time.time() - t0:.0f} s: "
              f"{'ok' if ok else 'FAILED: ' + why}", flush=True)
        if ok and args.out is None:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with open(os.path.join(tmp, "history.json"), "w") as f:
                json.dump({"seed": seed, "events": events, "ops": rec.ops},
                          f)
            print(f"chaos: history, logs and data in {tmp}", flush=True)
        failed += not ok
    print(f"chaos: {args.runs - failed} of {args.runs} runs passed; "
          f"{total['ok']} ok, {total['unknown']} unknown, "
          f"{total['fail']} failed operations", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
