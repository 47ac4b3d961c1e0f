"""Server reflection with a real third-party client: the npm packages
grpc-js-reflection-client and @grpc/grpc-js (pure JavaScript), installed by
this test into a git-ignored folder (node_modules/ at the top of the tree)
on first use. If Node.js, npm or the packages cannot be had, the test is
skipped with the reason; it never passes without running."""
import json
import os
import shutil
import subprocess

import pytest

from grpc_helpers import ROOT

PACKAGES = ["grpc-js-reflection-client@1", "@grpc/grpc-js@1"]
MODULES = os.path.join(ROOT, "node_modules")
SCRIPT = os.path.join(os.path.dirname(__file__), "reflection_client.js")


def have_packages():
    return all(os.path.isdir(os.path.join(MODULES, p)) for p in
               ("grpc-js-reflection-client", "@grpc/grpc-js"))


@pytest.fixture(scope="module")
def node_modules():
    if not shutil.which("node") or not shutil.which("npm"):
        pytest.skip("Node.js or npm is not installed")
    if not have_packages():
        p = subprocess.run(["npm", "install", "--prefix", ROOT, "--no-save",
                            "--no-package-lock", "--no-audit", "--no-fund",
                            "--ignore-scripts"] + PACKAGES,
                           capture_output=True, timeout=300)
        if p.returncode != 0 or not have_packages():
            pytest.skip("npm could not install the reflection client: "
                        + p.stderr.decode(errors="replace")[-500:])
    return MODULES


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_with_grpc_js(servers, node_modules, version):
    node = servers()
    env = dict(os.environ, NODE_PATH=node_modules)
    p = subprocess.run(["node", SCRIPT, f"127.0.0.1:{node.grpc_port}",
                        version], capture_output=True, env=env, timeout=60)
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    out = json.loads(p.stdout)
    assert out["services"] == ["grpc.health.v1.Health",
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
