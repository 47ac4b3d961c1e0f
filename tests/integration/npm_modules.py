"""The npm packages that integration tests run under Node.js, installed on
first use into the git-ignored node_modules/ at the top of the tree, with
npm's cache under tests/integration/gen/ rather than in $HOME. One list
for every test: npm removes from node_modules/ whatever an install does
not name, so each install names them all. Node.js and npm come from
scripts/install-deps.sh test; without them, or when npm cannot install the
packages, the test using the fixture fails saying why: it never passes, nor
skips, without running."""
import fcntl
import os
import shutil
import subprocess

import pytest

from grpc_helpers import ROOT

# Exact versions, so that a new release cannot change what the tests run
# (npm still resolves their own dependencies within their ranges).
# grpc-js-reflection-client and @grpc/grpc-js: test_grpc_reflection.py;
# etcd3: test_etcd_npm.py.
PACKAGES = ["grpc-js-reflection-client@1.4.2", "@grpc/grpc-js@1.14.7",
            "etcd3@1.1.2"]
MODULES = os.path.join(ROOT, "node_modules")
CACHE = os.path.join(ROOT, "tests", "integration", "gen", "npm-cache")
LOCK = os.path.join(ROOT, "tests", "integration", "gen", "npm-install.lock")


def have_packages():
    return all(os.path.isfile(os.path.join(MODULES, p.rsplit("@", 1)[0],
                                           "package.json"))
               for p in PACKAGES)


@pytest.fixture(scope="session")
def node_modules():
    missing = [t for t in ("node", "npm") if not shutil.which(t)]
    if missing:
        pytest.fail(" and ".join(missing) + " not found: run "
                    "scripts/install-deps.sh test (Debian's nodejs and npm)")
    os.makedirs(CACHE, exist_ok=True)
    # One install at a time when tests run in several workers: the others
    # wait for it and find the packages there.
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _install()


def _install():
    if not have_packages():
        # Bounded: three packages and their dependencies (about 30 MB), a
        # minute per fetch, two retries, five minutes in all.
        try:
            p = subprocess.run(["npm", "install", "--prefix", ROOT,
                                "--cache", CACHE, "--prefer-offline",
                                "--no-save", "--no-package-lock",
                                "--no-audit", "--no-fund", "--ignore-scripts",
                                "--fetch-timeout=60000", "--fetch-retries=2"]
                               + PACKAGES, capture_output=True, timeout=300)
        except subprocess.TimeoutExpired:
            pytest.fail("npm install of " + " ".join(PACKAGES)
                        + " took over 300 s")
        if p.returncode != 0 or not have_packages():
            pytest.fail(f"npm could not install {' '.join(PACKAGES)} "
                        f"(exit {p.returncode}): "
                        + p.stderr.decode(errors="replace")[-1000:])
    return MODULES
