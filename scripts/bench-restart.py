#!/usr/bin/python3
"""bench-restart.py - a follower's restart at N keys, two builds side by side.

    scripts/bench-restart.py [--keys N] [--rounds R] [--base SERVER]
                             [--server SERVER] [--snapshot FILE]

Starts 3-node PyazDB with a mandi on 127.0.0.1 (bench_scale's cluster),
loads N keys (default 10M; 16-byte keys, 100-byte values, transactions of
128 puts through the v3 JSON gateway), takes a snapshot on every node, then
kills a follower and starts it again R times (default 2) with each build in
turn, this tree's src/pyazdb-server (or --server) and, with --base,
another build's server (the data directory is the same: both must read
its format). Each restart: seconds until /health answers 200, until the
follower applied the leader's index, the CPU seconds the process used
until then and its RSS. Nothing is asserted; files go under $TMPDIR and
are removed at the end.

--snapshot FILE skips the cluster and the load: one node is seeded from
FILE (a snapshot or backup, e.g. written by `tests/bench/snap-load make`)
with `--restore`, then killed and started again with each build in turn:
the restart of a node that has nothing to catch up.
"""
import argparse
import os
import shutil
import signal
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402
import bench_scale as bs  # noqa: E402


def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / bench.CLK_TCK


def restart(pz, f, server, tmp, i):
    f["proc"].kill()
    f["proc"].wait()
    os.environ["BENCH_SERVER"] = server
    t0 = time.monotonic()
    f["proc"] = bench.start(pz.argv(f), f"{tmp}/{f['name']}.restart{i}.log")
    bench.wait_for(lambda: bs.serving(f), 600, "restarted follower")
    serving = time.monotonic() - t0
    bench.wait_for(lambda: bs.caught_up(f, pz.leader), 600,
                   "restarted follower caught up")
    return (serving, time.monotonic() - t0, cpu_s(f["proc"].pid),
            bs.rss_kib(f["proc"].pid) / 1024)


def one_node(a, builds, tmp, taken):
    """--snapshot: a node restored from the file, restarted in turn."""
    fp = bench.free_port
    n = {"name": "n1", "http": fp(taken)}
    conf = f"{tmp}/n1.conf"
    with open(conf, "w") as f:
        f.write(f"node-id n1\nraft-data {tmp}/data\n"
                f"raft-addr 127.0.0.1:{fp(taken)}\n"
                f"http-addr 127.0.0.1:{n['http']}\n"
                f"grpc-addr 127.0.0.1:{fp(taken)}\nlog-level info\n")
    n["proc"] = bench.start([builds[-1][1], "--restore",
                             os.path.abspath(a.snapshot), conf],
                            f"{tmp}/restore.log")
    bench.wait_for(lambda: bs.serving(n), 900, "restored node")
    res = {name: [] for name, _ in builds}
    for i in range(a.rounds):
        for name, server in builds:
            n["proc"].kill()
            n["proc"].wait()
            t0 = time.monotonic()
            n["proc"] = bench.start([server, conf], f"{tmp}/run{i}-{name}.log")
            bench.wait_for(lambda: bs.serving(n), 900, "restarted node")
            r = (time.monotonic() - t0, cpu_s(n["proc"].pid),
                 bs.rss_kib(n["proc"].pid) / 1024)
            res[name].append(r)
            bench.log(f"{name}: serving after {r[0]:.2f} s, {r[1]:.2f} CPU s, "
                      f"RSS {r[2]:.0f} MB")
    for name, rs in res.items():
        bench.log(f"{name}: best serving {min(r[0] for r in rs):.2f} s, CPU "
                  f"{min(r[1] for r in rs):.2f} s")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=10_000_000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--base", help="another build's pyazdb-server")
    ap.add_argument("--server", help="the server under test",
                    default=os.path.join(bench.ROOT, "src/pyazdb-server"))
    ap.add_argument("--snapshot", help="restart one node seeded from it")
    a = ap.parse_args()
    builds = [("this", os.path.abspath(a.server))]
    if a.base:
        builds.insert(0, ("base", os.path.abspath(a.base)))
    tmp = tempfile.mkdtemp(prefix="pz-bench-restart-")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # to clean up
    taken = set()
    try:
        if a.snapshot:
            one_node(a, builds, tmp, taken)
            return
        os.environ["BENCH_SERVER"] = builds[-1][1]
        pz = bs.Cluster(bench, tmp, taken, bench.ROOT, 1000)
        t0 = time.monotonic()
        bs.load(pz.leader["http"], 0, a.keys)
        bench.log(f"loaded {a.keys:,} keys in {time.monotonic() - t0:.0f} s")
        for n in pz.nodes:
            bench.http_json(f"http://127.0.0.1:{n['http']}/admin/snapshot",
                            b"{}", timeout=900)
        f = next(x for x in pz.nodes if x is not pz.leader)
        res = {name: [] for name, _ in builds}
        for i in range(a.rounds):
            for name, server in builds:
                r = restart(pz, f, server, tmp, f"{i}-{name}")
                res[name].append(r)
                bench.log(f"{name}: serving after {r[0]:.2f} s, caught up "
                          f"after {r[1]:.2f} s, {r[2]:.2f} CPU s, RSS "
                          f"{r[3]:.0f} MB")
        for name, rs in res.items():
            bench.log(f"{name}: best serving {min(r[0] for r in rs):.2f} s, "
                      f"caught up {min(r[1] for r in rs):.2f} s, CPU "
                      f"{min(r[2] for r in rs):.2f} s")
    finally:
        bench.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
