"""The open-files limit and max-clients: a node fits its client
connections, and the descriptors it needs for itself, in its
RLIMIT_NOFILE.

Past that limit accept() fails with EMFILE and libuv closes the waiting
connections unseen, so the evictions at max-clients that keep slow
clients from locking new ones out never start: a shell's usual soft limit
of 1024 against the default max-clients of 10000 a port let anyone with
a thousand idle connections lock out every client of both ports, and the
node could then neither accept nor dial its peers. The node now raises its
soft limit toward what max-clients needs (up to the hard limit) and, when
that is not enough, lowers max-clients to what fits, with a warning;
below 16 clients a port it refuses to start.
"""
import resource
import socket
import time

from conftest import SERVER
from test_cluster import get, leader_of, make_cluster, put, wait_value
from test_reload import hup

# The node keeps 256 descriptors, plus one per snapshot stream
# (snapshot-max-streams, 2 by default), for itself; mandi keeps 64.
NODE_RESERVE = 258
MANDI_RESERVE = 64

# This process holds more sockets than the usual soft limit of 1024.
_soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if _soft < 8192 and (_hard == resource.RLIM_INFINITY or _hard > _soft):
    resource.setrlimit(resource.RLIMIT_NOFILE,
                       (8192 if _hard == resource.RLIM_INFINITY
                        else min(8192, _hard), _hard))


def start_limited(s, soft, hard, wait=True):
    """Start s with RLIMIT_NOFILE soft:hard (prlimit execs the server: the
    process keeps its pid)."""
    return s.start(wait=wait, argv=["prlimit", f"--nofile={soft}:{hard}",
                                    SERVER, s.conf_path] + s.args)


def nofile(s):
    """The soft and hard open-files limits of s's process."""
    with open(f"/proc/{s.proc.pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return int(soft), int(hard)
    raise AssertionError("no open-files line")


def flood(port, n, timeout=10):
    """n idle connections to port (each connected, nothing sent)."""
    socks = []
    deadline = time.time() + timeout
    for _ in range(n):
        c = socket.socket()
        c.settimeout(max(0.5, deadline - time.time()))
        c.connect(("127.0.0.1", port))
        socks.append(c)
    return socks


def test_max_clients_fits_the_limit_and_floods_do_not_lock_out(servers):
    """Three nodes with a hard limit of 1024 and the default max-clients:
    each lowers it to (1024 - 258) / 2 = 383 per port and says so. Then
    1,400 idle connections to the leader's two ports (more than its
    limit): it still answers /health, takes writes, and accepts a
    restarted follower's link and catches it up."""
    per = (1024 - NODE_RESERVE) // 2
    nodes = make_cluster(servers, 3, start=False)
    for s in nodes:
        start_limited(s, 1024, 1024, wait=False)
    for s in nodes:
        s.wait_ready()
    for s in nodes:
        assert nofile(s) == (1024, 1024)
    lead = leader_of(nodes)
    st, _, body = put(lead, "before", "1")
    assert st == 204, body
    follower = next(s for s in nodes if s is not lead)

    socks = flood(lead.grpc_port, 1000) + flood(lead.http_port, 400)
    try:
        time.sleep(0.3)  # connections younger than 100 ms are not evicted
        # The flood's connections that were let in are evicted by newer
        # ones: a client still gets a slot at once.
        for _ in range(5):
            t0 = time.time()
            st, _, body = lead.request("GET", "/health", timeout=3)
            assert st == 200, body
            assert time.time() - t0 < 2
        st, _, body = put(lead, "during", "2")
        assert st == 204, body
        # The leader accepts a restarted follower's link (and can dial it).
        follower.stop()
        start_limited(follower, 1024, 1024)
        st, _, body = put(lead, "after-restart", "3")
        assert st == 204, body
        wait_value(follower, "after-restart", "3", timeout=15)
        assert len(socks) == 1400
    finally:
        for c in socks:
            c.close()
    assert get(lead, "before")[0] == 200
    for s in nodes:
        assert f"max-clients 10000 lowered to {per}: the open-files " \
            "limit is 1024 (hard limit 1024)" in s.read_log()


def test_soft_limit_is_raised_toward_max_clients(servers):
    """A soft limit of 512 under a higher hard one: raised to what two
    ports of max-clients 1000 and the node's own need, nothing lowered;
    with a max-clients that fits already, left alone."""
    hard = 8192 if _hard == resource.RLIM_INFINITY else min(_hard, 8192)
    need = 2 * 1000 + NODE_RESERVE
    assert hard >= need, f"this machine's hard open-files limit {hard}"
    s = servers("node1", start=False, conf={"max-clients": "1000"})
    start_limited(s, 512, hard)
    assert nofile(s) == (need, hard)
    log = s.read_log()
    assert f"open-files limit raised from 512 to {need}" in log
    assert "lowered" not in log
    assert put(s, "k", "v")[0] == 204

    t = servers("node2", start=False, conf={"max-clients": "100"})
    start_limited(t, 512, hard)
    assert nofile(t) == (512, hard)
    assert "open-files limit raised" not in t.read_log()


def test_reload_fits_max_clients_again(servers):
    """max-clients raised by a reload past what the limit holds is lowered
    again, with the warning; back within it, taken as it is."""
    s = servers("node1", start=False, conf={"max-clients": "300"})
    start_limited(s, 1024, 1024)
    assert "lowered" not in s.read_log()
    new = hup(s, {"max-clients": "5000"})
    per = (1024 - NODE_RESERVE) // 2
    assert f"max-clients 5000 lowered to {per}" in new
    new = hup(s, {"max-clients": "200"})
    assert "lowered" not in new
    # 200 a port, enforced: the 201st HTTP client takes an idle one's
    # place (evicted), so the node still answers.
    socks = flood(s.http_port, 250)
    try:
        time.sleep(0.3)  # connections younger than 100 ms are not evicted
        assert s.request("GET", "/health", timeout=3)[0] == 200
        m = s.metrics()
        assert m['pyazdb_clients_rejected_total{listener="http",'
                 'reason="evicted"}'] >= 1
        assert 150 <= m['pyazdb_clients_connected{listener="http"}'] <= 200
    finally:
        for c in socks:
            c.close()


def test_too_low_a_limit_is_refused_at_start(servers, mandis):
    """A node whose limit leaves fewer than 16 clients a port, and a mandi
    likewise, refuse to start and say what to raise it to."""
    s = servers("node1", start=False)
    start_limited(s, 200, 200, wait=False)
    assert s.wait_exit() == 1
    log = s.read_log()
    assert "the open-files limit (200, hard limit 200) leaves room for 0 " \
        "client connections per port, fewer than 16: raise it" in log
    assert f"to at least {2 * 16 + NODE_RESERVE}" in log

    m = mandis("mandi", start=False)
    start_limited(m, 70, 70, wait=False)
    assert m.wait_exit() == 1
    assert "the open-files limit (70, hard limit 70) leaves room for 6 " \
        f"client connections per port, fewer than 16: raise it (ulimit " \
        f"-n, LimitNOFILE= in a systemd unit) to at least " \
        f"{16 + MANDI_RESERVE}" in m.read_log()

    # Mandi with the usual 1024: max-clients lowered to 960.
    m2 = mandis("mandi2", start=False)
    start_limited(m2, 1024, 1024)
    assert f"max-clients 10000 lowered to {1024 - MANDI_RESERVE}" \
        in m2.read_log()
