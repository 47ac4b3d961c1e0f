"""Server reflection with a real third-party client: the npm packages
grpc-js-reflection-client and @grpc/grpc-js (pure JavaScript), installed by
this test into a git-ignored folder (node_modules/ at the top of the tree)
on first use, with npm's cache under tests/integration/gen/ rather than in
$HOME. Node.js and npm come from scripts/install-deps.sh test; without
them, or when npm cannot install the packages, the test fails saying why:
it never passes, nor skips, without running."""
import json
import os
import shutil
import subprocess

import pytest

from grpc_helpers import ROOT

# Exact versions, so that a new release cannot change what this test runs
# (npm still resolves their own dependencies within their ranges).
PACKAGES = ["grpc-js-reflection-client@1.4.2", "@grpc/grpc-js@1.14.7"]
MODULES = os.path.join(ROOT, "node_modules")
CACHE = os.path.join(ROOT, "tests", "integration", "gen", "npm-cache")
SCRIPT = os.path.join(os.path.dirname(__file__), "reflection_client.js")


def have_packages():
    return all(os.path.isdir(os.path.join(MODULES, p)) for p in
               ("grpc-js-reflection-client", "@grpc/grpc-js"))


@pytest.fixture(scope="module")
def node_modules():
    missing = [t for t in ("node", "npm") if not shutil.which(t)]
    if missing:
        pytest.fail(" and ".join(missing) + " not found: run "
                    "scripts/install-deps.sh test (Debian's nodejs and npm)")
    if not have_packages():
        os.makedirs(CACHE, exist_ok=True)
        # Bounded: two packages and their dependencies (about 25 MB), a
        # minute per fetch, two retries, five minutes in all.
        try:
            p = subprocess.run(["npm", "install", "--prefix", ROOT,
                                "--cache", CACHE, "--prefer-offline",
                                "--no-save", "--no-package-lock",
                                "--no-audit", "--no-fund", "--ignore-scripts",
                                "--fetch-timeout=60000", "--fetch-retries=2"]
                               + PACKAGES, capture_output=True, timeout=300)
        except subprocess.TimeoutExpired:
            pytest.fail("npm install of the reflection client took over "
                        "300 s")
        if p.returncode != 0 or not have_packages():
            pytest.fail("npm could not install the reflection client "
                        f"(exit {p.returncode}): "
                        + p.stderr.decode(errors="replace")[-1000:])
    return MODULES


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
