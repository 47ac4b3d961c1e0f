"""etcd's v3 API on PyazDB's gRPC port, driven by clients no one here wrote:
Debian's etcdctl 3.4 (etcd-client, ETCDCTL_API=3) and python grpcio with
stubs generated from proto/etcd_rpc.proto, against a 3-node cluster (the
leader and a follower, which relays writes to the leader). When Debian's
etcd 3.4 (etcd-server) is installed, the same etcdctl commands also run
against a real one-member etcd and the deterministic parts of the outputs
are compared."""
import json
import os
import shutil
import subprocess
import time

import grpc
import pytest

import grpc_helpers as gh
from conftest import free_port
from test_cluster import leader_of, make_cluster

ETCDCTL = shutil.which("etcdctl")
ETCD = shutil.which("etcd")
ROOT = gh.ROOT

pytestmark = pytest.mark.skipif(
    ETCDCTL is None, reason="etcdctl missing: scripts/install-deps.sh test "
    "installs etcd-client")


def ctl(port, *args, stdin=None, check=True, timeout=30):
    env = dict(os.environ, ETCDCTL_API="3")
    p = subprocess.run([ETCDCTL, f"--endpoints=127.0.0.1:{port}",
                        "--command-timeout=10s", *args],
                       input=stdin.encode() if stdin is not None else None,
                       capture_output=True, env=env, timeout=timeout)
    out, err = p.stdout.decode(), p.stderr.decode()
    if check:
        assert p.returncode == 0, f"etcdctl {args}: {err}"
    return p.returncode, out, err


def ctl_json(port, *args):
    return json.loads(ctl(port, "-w", "json", *args)[1])


def b64(s):
    import base64
    return base64.b64encode(s.encode()).decode()


def unb64(s):
    import base64
    return base64.b64decode(s).decode()


@pytest.fixture
def cluster(servers):
    nodes = make_cluster(servers)
    leader = leader_of(nodes)
    follower = next(s for s in nodes if s is not leader)
    return nodes, leader, follower


def test_put_get(cluster):
    nodes, leader, follower = cluster
    for s in (leader, follower):
        p = s.grpc_port
        assert ctl(p, "put", f"k-{s.name}", "v1")[1] == "OK\n"
    p = follower.grpc_port
    r = ctl_json(p, "get", f"k-{leader.name}")
    print(r)
    assert [unb64(kv["key"]) for kv in r["kvs"]] == [f"k-{leader.name}"]
