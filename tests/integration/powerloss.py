"""Power cuts for integration tests: servers started with the preloaded
library tests/powerloss/libpowerloss.so keep, for every file of their data
dir, its content as of its last fsync; power_cut() kills a server and puts
those files back, so that whatever was written but not yet durable is lost
as it would be when the machine loses power (a plain SIGKILL keeps it all
in the page cache)."""
import os
import shutil
import signal
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
LIB = os.path.join(ROOT, "tests", "powerloss", "libpowerloss.so")


def usable():
    """None, or why power cuts cannot be used in this build."""
    if "address" in os.environ.get("PYAZDB_SANITIZER", ""):
        return "AddressSanitizer must be the first preloaded library"
    if not os.path.exists(LIB):
        return f"{LIB} missing (make tests/powerloss/libpowerloss.so)"
    return None


def env_for(data_dir, shadow_dir, sync_delay_ms=0):
    """The environment that makes a process keep durable copies of the
    files under data_dir in shadow_dir."""
    os.makedirs(data_dir, exist_ok=True)
    os.makedirs(shadow_dir, exist_ok=True)
    env = {"LD_PRELOAD": LIB, "PZ_POWERLOSS_ROOT": data_dir,
           "PZ_POWERLOSS_SHADOW": shadow_dir}
    if sync_delay_ms:
        env["PZ_POWERLOSS_SYNC_DELAY_MS"] = str(sync_delay_ms)
    return env


def restore(data_dir, shadow_dir):
    """Put every watched file back to its durable state; returns how many
    files changed (a file durably absent is removed)."""
    root = os.path.realpath(data_dir)
    changed = 0
    for name in sorted(os.listdir(shadow_dir)):
        marker = os.path.join(shadow_dir, name)
        if name.endswith(".tmp"):
            os.remove(marker)
            continue
        base, _, kind = name.rpartition(".")
        path = os.path.join(root, base.replace("@", "/"))
        if kind == "absent":
            if os.path.exists(path):
                os.remove(path)
                changed += 1
        elif kind == "data":
            with open(marker, "rb") as f:
                want = f.read()
            try:
                with open(path, "rb") as f:
                    have = f.read()
            except FileNotFoundError:
                have = None
            if have != want:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb") as f:
                    f.write(want)
                changed += 1
        os.remove(marker)
    return changed


def prepare(server, sync_delay_ms=0):
    """Make a (not yet started) conftest Server run with power cuts; its
    fsyncs take sync_delay_ms longer, until set_sync_delay() says
    otherwise."""
    data = server.conf["raft-data"]
    server.pl_shadow = os.path.join(server.dir, "powerloss-shadow")
    server.pl_delay_file = os.path.join(server.dir, "powerloss-delay-ms")
    server.env.update(env_for(data, server.pl_shadow, sync_delay_ms))
    server.env["PZ_POWERLOSS_SYNC_DELAY_FILE"] = server.pl_delay_file
    set_sync_delay(server, sync_delay_ms)


def set_sync_delay(server, ms):
    """From now on each fsync of server's files takes ms longer."""
    tmp = server.pl_delay_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(ms))
    os.replace(tmp, server.pl_delay_file)


def descendants(pid):
    """The pids of pid's children, theirs, and so on (from /proc)."""
    parent = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            # after the command name in parentheses: state, ppid
            parent[int(name)] = int(stat.rpartition(")")[2].split()[1])
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        todo += kids
    return out


def gone(pid):
    """pid has ended (no such process, or a zombie that runs no more)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] in ("Z", "X")
    except OSError:
        return True


def power_cut(*servers):
    """Cut the power of these servers at once: SIGKILL every one and every
    process it forked (a snapshot writer: it would otherwise go on
    writing, or renaming, for a moment after the cut), then lose what none
    of them had made durable. Returns the number of files that changed."""
    kids = [k for s in servers for k in descendants(s.proc.pid)]
    for s in servers:
        s.signal(signal.SIGKILL)
    for k in kids:
        try:
            os.kill(k, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for s in servers:
        s.proc.wait()
    deadline = time.time() + 10
    while not all(gone(k) for k in kids):
        assert time.time() < deadline, f"processes {kids} outlive the cut"
        time.sleep(0.005)
    return sum(restore(s.conf["raft-data"], s.pl_shadow) for s in servers)


def clear(shadow_dir):
    shutil.rmtree(shadow_dir, ignore_errors=True)
    os.makedirs(shadow_dir)
