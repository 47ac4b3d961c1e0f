"""Configuration errors, --test-config, --help/--version, environment."""
import os
import subprocess

from conftest import SERVER, ROOT


def run(*args, env=None, timeout=10):
    e = {k: v for k, v in os.environ.items()
         if k not in ("NODE_ID", "RAFT_ADDR", "RAFT_DATA", "RAFT_LEADER",
                      "GRPC_ADDR", "HTTP_ADDR", "MANDI_ADDR")}
    e.update(env or {})
    return subprocess.run([SERVER, *args], capture_output=True, text=True,
                          timeout=timeout, env=e)


def test_version_and_help():
    r = run("--version")
    assert r.returncode == 0 and r.stdout.startswith("pyazdb-server ")
    r = run("--help")
    assert r.returncode == 0
    for d in ("node-id", "raft-addr", "http-addr", "max-clients"):
        assert d in r.stdout


def test_shipped_config_is_valid():
    r = run("--test-config", os.path.join(ROOT, "pyazdb.conf"))
    assert r.returncode == 0, r.stderr


def test_bad_config_names_file_and_line(tmp_path):
    p = tmp_path / "bad.conf"
    p.write_text("node-id n1\n\nmax-clients 0\n")
    r = run(str(p))
    assert r.returncode != 0
    assert f"{p}:3:" in r.stderr and "max-clients" in r.stderr
    p.write_text("# comment\nno-such-thing 1\n")
    r = run("--test-config", str(p))
    assert r.returncode != 0 and f"{p}:2:" in r.stderr
    assert "unknown directive" in r.stderr
    p.write_text("node-id a\nnode-id b\n")
    r = run(str(p))
    assert r.returncode != 0 and f"{p}:2:" in r.stderr


def test_cross_directive_error_names_file_and_line(tmp_path):
    """A rule between two directives names the line of the one it blames
    and where the other came from, at start as for a bad value, in both
    modes."""
    p = tmp_path / "f.conf"
    p.write_text("node-id n1\nheartbeat-interval 500ms\n"
                 "election-timeout 1s\n")
    r = run(str(p))
    assert r.returncode != 0
    assert (f"{p}:3: 'election-timeout' (1s) must be at least 3 x "
            f"'heartbeat-interval' (500ms, set at {p}:2)\n") in r.stderr
    r = run(str(p), "--election-timeout", "1200ms")
    assert r.returncode != 0
    assert (f"command line: 'election-timeout' (1200ms) must be at least "
            f"3 x 'heartbeat-interval' (500ms, set at {p}:2)") in r.stderr
    p.write_text("# listeners\nhttp-addr 127.0.0.1:8111\n")
    r = run(str(p), env={"GRPC_ADDR": ":8111"})
    assert r.returncode != 0
    assert (f"{p}:2: 'http-addr' (127.0.0.1:8111) and 'grpc-addr' (:8111, "
            f"set by environment GRPC_ADDR) must not use the same "
            f"port") in r.stderr
    p.write_text("log-level info\nmandi-addr https://127.0.0.1:7000\n")
    r = run("--mandi", str(p))
    assert r.returncode != 0
    assert (f"{p}:2: an https 'mandi-addr' needs 'tls-cert-file' and "
            f"'tls-key-file' in mandi mode") in r.stderr


def test_bad_flag_and_missing_file(tmp_path):
    r = run("--http-addr", "nonsense")
    assert r.returncode != 0 and "http-addr" in r.stderr
    r = run("--bogus", "1")
    assert r.returncode != 0 and "bogus" in r.stderr
    r = run(str(tmp_path / "missing.conf"))
    assert r.returncode != 0 and "missing.conf" in r.stderr


def test_open_cluster_only_on_loopback(tmp_path):
    """Without a cluster token anyone who reaches the Raft port could take
    part in the cluster: a node refuses to start on a Raft address that is
    not loopback, unless `cluster-token none` says so on purpose."""
    p = tmp_path / "open.conf"
    p.write_text("raft-addr 0.0.0.0:12000\n")
    r = run("--test-config", str(p))
    assert r.returncode != 0
    assert (f"{p}:1: 'raft-addr' (0.0.0.0:12000) is not a loopback "
            "address") in r.stderr
    assert "cluster-token none" in r.stderr
    r = run("--test-config", str(p), "--cluster-token", "none")
    assert r.returncode == 0, r.stderr
    r = run("--test-config", str(p), "--cluster-token", "s3cret")
    assert r.returncode == 0, r.stderr
    p.write_text("raft-addr 127.0.0.5:12000\n")
    r = run("--test-config", str(p))
    assert r.returncode == 0, r.stderr


def test_bad_environment_is_reported():
    r = run("--test-config", os.path.join(ROOT, "pyazdb.conf"),
            env={"HTTP_ADDR": "not-an-address"})
    assert r.returncode != 0 and "HTTP_ADDR" in r.stderr


def test_environment_and_flag_precedence(servers):
    # the file says one port, the environment another, the flag wins
    s = servers(start=False)
    env_port = s.http_port
    s.env["HTTP_ADDR"] = f"127.0.0.1:{env_port}"
    with open(s.conf_path) as f:
        conf = f.read().replace(f"127.0.0.1:{s.http_port}", "127.0.0.1:1")
    with open(s.conf_path, "w") as f:
        f.write(conf)
    s.start()  # waits for /health on env_port: the environment beat the file
    st, _, _ = s.request("GET", "/health")
    assert st == 200
    s.stop()
    from conftest import free_port
    flag_port = free_port()
    s.args = ["--http-addr", f"127.0.0.1:{flag_port}"]
    s.http_port = flag_port
    s.start()
    assert s.request("GET", "/health")[0] == 200


def test_port_in_use_is_a_clear_error(servers):
    a = servers()
    b = servers("node2", start=False, conf={"http-addr": f"127.0.0.1:{a.http_port}"})
    b.start(wait=False)
    assert b.wait_exit(10) != 0
    assert "cannot listen" in b.read_log()
