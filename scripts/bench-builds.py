#!/usr/bin/env python3
"""Two builds of PyazDB side by side: what a change did, apart from the
machine's drift.

    scripts/bench-builds.py OTHER [--reps 5] [--op write]
                            [--loads 1x1,16x1,64x1,16x16]

OTHER is another built checkout (for instance `git worktree add
../base HEAD~1 && make -C ../base`): its src/pyazdb-server runs as
"base", this tree's as "this", each as a 3-node cluster on 127.0.0.1
with fsync on. For each load (connections x streams) the gRPC matrix of
`make bench` runs 3 s per run, REPS runs per build, the builds in turn
(this, base, this, base, ...), so that a slower minute of the shared
machine falls on both; the same request bytes, the same commit-index
check of every write run. One line per load: each build's median run by
requests/s with the range over its runs, p50 and p99 over every request
of its runs, server CPU and run-queue wait per request, and the ratio
this / base of the medians. Everything stops with the script.
"""
import argparse
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench as B  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("other", help="another built checkout")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--op", choices=("write", "read", "sread"),
                    default="write")
    ap.add_argument("--loads", default="1x1,16x1,64x1,16x16")
    a = ap.parse_args()
    base_bin = os.path.join(os.path.abspath(a.other), "src/pyazdb-server")
    if not os.access(base_bin, os.X_OK):
        raise SystemExit(f"bench-builds: {base_bin} is not built (make -C "
                         f"{a.other})")
    if not shutil.which("h2load"):
        raise SystemExit("bench-builds: h2load missing: "
                         "scripts/install-deps.sh bench")
    loads = []
    for x in a.loads.split(","):
        c, _, m = x.partition("x")
        if not (c.isdigit() and m.isdigit() and int(c) > 0 and int(m) > 0):
            raise SystemExit(f"bench-builds: bad load {x!r} (CONNSxSTREAMS)")
        loads.append((int(c), int(m)))
    tmp = tempfile.mkdtemp(prefix="pz-builds-")
    taken = set()
    try:
        systems = [B.Pyazdb(tmp, taken, name="this"),
                   B.Pyazdb(tmp, taken, server=base_bin, name="base")]
        for s in systems:
            for op in ("write", "read", "sread"):
                B.BODIES[(op, s.name)] = B.BODIES[(op, "pyazdb")]
            B.run_load(tmp, s, "write", 1, 1, 1)  # the key the reads read
        B.log(f"== {a.op}s, this tree against {a.other}, {a.reps} runs "
              f"each, in turn")
        for c, m in loads:
            row = B.alternate(systems, max(1, a.reps),
                              lambda s: B.run_load(tmp, s, a.op, c, m, 3))
            t, b = row["this"], row["base"]
            B.log(f"   {c}x{m}: " + "   ".join(
                f"{n} {r['rps']:,.0f}/s ({B.spread(r)}) p50 "
                f"{r['p50_ms']:.2f} p99 {r['p99_ms']:.2f} ms cpu "
                f"{r['cpu_us']:.0f} us runq {r['runq_us']:.0f} us"
                for n, r in (("this", t), ("base", b))) +
                f"   {B.ratio(t['rps'], b['rps'])}")
    finally:
        B.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
