"""What a start that cannot succeed says, and what it leaves behind."""
import os
import shutil
import socket
import subprocess
import tempfile

import pytest

from conftest import SERVER, free_port


def node_args(data, http, grpc, raft):
    return ["--node-id", "node1", "--raft-data", data, "--raft-bootstrap",
            "yes", "--mandi-addr", "none",
            "--http-addr", f"127.0.0.1:{http}",
            "--grpc-addr", f"127.0.0.1:{grpc}",
            "--raft-addr", f"127.0.0.1:{raft}"]


def test_help_prints_usage_once():
    r = subprocess.run([SERVER, "--help"], capture_output=True, text=True,
                       timeout=10)
    assert r.returncode == 0
    assert r.stdout.count("Usage:") == 1, r.stdout
    assert "SIGHUP" in r.stdout
    assert "--log-level <debug|info|warning|error>  (default: info)  " \
        "[mandi too]  [reload]" in r.stdout


@pytest.mark.parametrize("busy", ["http", "grpc", "raft"])
def test_busy_port_leaves_no_data_dir(tmp_path, busy):
    ports = {"http": free_port(), "grpc": free_port(), "raft": free_port()}
    data = str(tmp_path / "data")
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", ports[busy]))
        s.listen()
        r = subprocess.run([SERVER] + node_args(data, ports["http"],
                                                ports["grpc"], ports["raft"]),
                           capture_output=True, text=True, timeout=20)
    assert r.returncode == 1
    assert (f"{busy}: cannot listen on 127.0.0.1:{ports[busy]}: Address "
            f"already in use") in r.stderr, r.stderr
    assert not os.path.exists(data), os.listdir(data)
    # and the same command starts once the port is free, bootstrapping then
    p = subprocess.Popen([SERVER] + node_args(data, ports["http"],
                                              ports["grpc"], ports["raft"]),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True)
    try:
        line = ""
        while "HTTP on" not in line:
            line = p.stderr.readline()
            assert line, "the node stopped"
        assert os.path.exists(os.path.join(data, "raft.db"))
    finally:
        p.terminate()
        assert p.wait(15) == 0


def run_as_other_user(args):
    """Run the server as nobody when we are root (root writes anywhere),
    as ourselves otherwise."""
    if os.geteuid() == 0:
        args = ["setpriv", "--reuid=65534", "--regid=65534",
                "--clear-groups"] + args
    return subprocess.run(args, capture_output=True, text=True, timeout=20)


def test_unwritable_data_dir_says_so():
    top = tempfile.mkdtemp(prefix="pyazdb-perm-")
    try:
        os.chmod(top, 0o755)
        data = os.path.join(top, "data")
        os.mkdir(data)
        if os.geteuid() == 0:
            os.chmod(data, 0o755)  # root's: nobody cannot write it
        else:
            os.chmod(data, 0o555)
        ports = [free_port() for _ in range(3)]
        r = run_as_other_user([SERVER] + node_args(data, *ports))
        assert r.returncode == 1
        assert f"raft-data: {data} is not writable by this process" \
            in r.stderr, r.stderr
        assert "check its owner and permissions" in r.stderr
        assert "unable to open database file" not in r.stderr
        assert os.listdir(data) == []
    finally:
        os.chmod(top, 0o700)
        for root, dirs, _ in os.walk(top):
            for d in dirs:
                os.chmod(os.path.join(root, d), 0o700)
        shutil.rmtree(top)
