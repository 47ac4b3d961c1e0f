"""Server reflection with a real third-party client: the npm packages
grpc-js-reflection-client and @grpc/grpc-js (pure JavaScript), installed
on first use by npm_modules.py into the git-ignored node_modules/ at the top
of the tree; without Node.js and npm, or when npm cannot install the
packages, the test fails saying why: it never passes, nor skips, without
running."""
import json
import os
import subprocess

import pytest

from npm_modules import node_modules  # noqa: F401 (fixture)

SCRIPT = os.path.join(os.path.dirname(__file__), "reflection_client.js")


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_with_grpc_js(servers, node_modules, version):
    node = servers()
    env = dict(os.environ, NODE_PATH=node_modules)
    p = subprocess.run(["node", SCRIPT, f"127.0.0.1:{node.grpc_port}",
                        version], capture_output=True, env=env, timeout=60)
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    out = json.loads(p.stdout)
    assert out["services"] == ["etcdserverpb.Auth", "etcdserverpb.Cluster",
                               "etcdserverpb.KV", "etcdserverpb.Lease",
                               "etcdserverpb.Maintenance",
                               "etcdserverpb.Watch",
                               "grpc.health.v1.Health",
                               "grpc.reflection.v1.ServerReflection",
                               "grpc.reflection.v1alpha.ServerReflection",
                               "kv.KVService", "pyazdb.Cluster"]
    assert out["methods"] == ["Get", "Set", "Delete"]
    assert out["cluster_methods"] == ["Status"]
    # calls built from the reflected descriptor
    assert out["set"] == {"success": True}
    assert out["get"] == {"value": "yes", "found": True}
    assert out["missing"] == {"value": "", "found": False}
    assert out["empty_key"] == {"code": 3, "details": "key is required"}
    assert "kv.NoSuchThing" in out["unknown_symbol"]
    st, _, body = node.request("GET", "/get?key=reflected")
    assert st == 200 and body == b"yes"
