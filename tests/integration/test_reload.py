"""SIGHUP reloads the configuration without stopping the process, and the
service manager hears of start, reload and stop by sd_notify.

The notify tests bind a Unix datagram socket of their own (a path, and an
abstract '@' name) and give it to the process as NOTIFY_SOCKET, as systemd
does for Type=notify units."""
import os
import signal
import socket
import time

import pytest

from conftest import free_port


def wait_log(s, text, timeout=10, start=0):
    """Wait until text is in s's log after offset start; returns the log."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        log = s.read_log()
        if text in log[start:]:
            return log
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in the log of {s.name}:\n"
                         + s.read_log())


def hup(s, conf_update=None, expect="reloaded:"):
    """Rewrite s's config with conf_update, send SIGHUP, wait for expect in
    the log after this point; returns the new part of the log."""
    start = len(s.read_log())
    if conf_update is not None:
        s.conf.update(conf_update)
        s.write_conf()
    s.proc.send_signal(signal.SIGHUP)
    log = wait_log(s, expect, start=start)
    return log[start:]


def idle_closed_within(s, seconds):
    """Open a connection, send nothing: True when the node closes it
    within seconds."""
    c = socket.create_connection(("127.0.0.1", s.http_port))
    c.settimeout(seconds)
    try:
        return c.recv(1) == b""
    except socket.timeout:
        return False
    except ConnectionResetError:
        return True
    finally:
        c.close()


def test_sighup_changes_log_level_and_limits(servers):
    s = servers(conf={"log-level": "info", "client-idle-timeout": "300s",
                      "client-header-timeout": "10s"})
    # info: debug lines are not shown; connections are not closed idle
    assert not idle_closed_within(s, 1.5)
    assert " D " not in s.read_log()

    new = hup(s, {"log-level": "debug", "client-idle-timeout": "500ms",
                  "client-header-timeout": "300ms"})
    assert "reload: log-level info -> debug" in new
    assert "reload: client-idle-timeout 300s -> 500ms" in new
    assert "reload: client-header-timeout 10s -> 300ms" in new
    assert "reloaded: 3 changes applied, 0 need a restart" in new
    # the node did not stop and serves as before
    assert s.proc.poll() is None
    st, _, _ = s.request("POST", "/set", body=b'{"key":"k","value":"v"}')
    assert st == 204
    # the new idle timeout, and its debug line now shows
    start = len(s.read_log())
    assert idle_closed_within(s, 3)
    wait_log(s, " D closing idle connection from", start=start)
    # the new header deadline: a request that never ends its headers
    c = socket.create_connection(("127.0.0.1", s.http_port))
    c.settimeout(5)
    c.sendall(b"GET /get?key=k HTTP/1.1\r\nHost: x\r\n")
    assert c.recv(4096).startswith(b"HTTP/1.1 408")
    c.close()

    # back to warning: info lines stop
    new = hup(s, {"log-level": "warning"}, expect="log-level debug -> warning")
    start = len(s.read_log())
    hup(s, expect="", conf_update=None)
    time.sleep(0.5)
    assert "received SIGHUP" not in s.read_log()[start:]
    st, _, body = s.request("GET", "/get?key=k")
    assert (st, body) == (200, b"v")
    assert s.stop() == 0


def conf_line(s, prefix):
    """The line number of the line of s's config file starting with
    prefix."""
    for n, line in enumerate(open(s.conf_path).read().splitlines(), 1):
        if line.startswith(prefix):
            return n
    raise AssertionError(prefix)


def test_sighup_bad_config_keeps_running_one(servers):
    s = servers(conf={"log-level": "info"})
    new = hup(s, {"log-level": "loud"}, expect="reload failed")
    n = conf_line(s, "log-level")
    assert (f"reload failed, keeping the running configuration: "
            f"{s.conf_path}:{n}: 'log-level' must be one of") in new, new
    assert """>>> 'log-level "loud"'""" in new
    assert s.proc.poll() is None
    # a value out of range; the valid line before it is not applied either
    s.conf["log-level"] = "debug"
    new = hup(s, {"max-clients": "0"}, expect="reload failed")
    n = conf_line(s, "max-clients")
    assert f"{s.conf_path}:{n}: 'max-clients' must be between" in new
    assert "log-level info -> debug" not in new
    st, _, _ = s.request("POST", "/set", body=b'{"key":"a","value":"b"}')
    assert st == 204
    # the running configuration was kept: a later good reload compares to it
    del s.conf["max-clients"]
    new = hup(s, {})
    assert "reload: log-level info -> debug" in new
    assert "1 change applied, 0 need a restart" in new
    assert s.stop() == 0


def test_sighup_cross_directive_error_names_the_line(servers):
    s = servers()
    new = hup(s, {"heartbeat-interval": "500ms"}, expect="reload failed")
    n = conf_line(s, "heartbeat-interval")
    assert (f"reload failed, keeping the running configuration: "
            f"{s.conf_path}:{n}: 'election-timeout' (1s, the default) must "
            f"be at least 3 x 'heartbeat-interval' (500ms)") in new, new
    assert s.proc.poll() is None
    assert s.request("GET", "/health")[0] == 200
    assert s.stop() == 0


def test_sighup_reports_what_needs_a_restart(servers):
    s = servers(conf={"log-level": "info", "cluster-token": "s3cret-one"})
    port = s.http_port
    new = hup(s, {"http-max-body": "8mb", "http-addr": "127.0.0.1:1",
                  "cluster-token": "s3cret-two"})
    assert ("reload: http-max-body changed (4mb -> 8mb) but needs a restart;"
            " still 4mb") in new
    assert "reload: http-addr changed" in new
    assert "reload: cluster-token changed ((secret) -> (secret))" in new
    assert "s3cret" not in s.read_log()
    assert "0 changes applied, 3 need a restart" in new
    # still on the old port
    st, _, _ = s.request("GET", "/status")
    assert st == 200 and s.http_port == port
    assert s.stop() == 0


def test_mandi_sighup(mandis):
    m = mandis(conf={"log-level": "info"})
    new = hup(m, {"log-level": "debug", "max-clients": "50",
                  "mandi-join-ttl": "1s"})
    assert "reload: log-level info -> debug" in new
    assert "reload: max-clients 10000 -> 50" in new
    assert "reload: mandi-join-ttl changed (30s -> 1s) but needs a restart" \
        in new
    # a directive mandi does not read is not reported
    new = hup(m, {"node-id": "other"})
    assert "node-id" not in new
    assert "0 changes applied, 1 needs a restart" in new  # mandi-join-ttl
    st, _, _ = m.request("GET", "/leader")
    assert st == 404
    assert m.stop() == 0


def recv_until(sock, want, timeout=10):
    """Datagrams from sock until one holds want; returns them all."""
    got = []
    deadline = time.time() + timeout
    while time.time() < deadline:
        sock.settimeout(max(0.01, deadline - time.time()))
        try:
            msg = sock.recv(4096).decode()
        except socket.timeout:
            break
        got.append(msg)
        if want in msg.split("\n"):
            return got
    raise AssertionError(f"no {want!r} from the process; got {got!r}")


@pytest.mark.parametrize("abstract", [False, True],
                         ids=["path", "abstract"])
def test_sd_notify(servers, tmp_path, abstract):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = f"pyazdb-test-notify-{os.getpid()}-{free_port()}"
        sock.bind("\0" + name)
        env = {"NOTIFY_SOCKET": "@" + name}
    else:
        path = str(tmp_path / "notify.sock")
        sock.bind(path)
        env = {"NOTIFY_SOCKET": path}
    with sock:
        s = servers(env=env, start=False)
        s.start(wait=False)
        got = recv_until(sock, "READY=1")
        # READY=1 comes once the node listens and has loaded its state
        st, _, _ = s.request("GET", "/status", timeout=2)
        assert st == 200
        assert any("STATUS=node node1: HTTP on" in m for m in got), got
        assert not any("STOPPING=1" in m for m in got)

        s.proc.send_signal(signal.SIGHUP)
        got = recv_until(sock, "READY=1")
        assert got[0].startswith("RELOADING=1\nMONOTONIC_USEC="), got
        usec = int(got[0].split("MONOTONIC_USEC=")[1].split("\n")[0])
        assert abs(usec / 1e6 - time.monotonic()) < 30
        assert "STATUS=reloaded: nothing changed" in got[-1]

        # a failed reload still ends in READY=1, saying why
        with open(s.conf_path, "a") as f:
            f.write("max-clients 0\n")
        s.proc.send_signal(signal.SIGHUP)
        got = recv_until(sock, "READY=1")
        assert got[0].startswith("RELOADING=1\n")
        assert "STATUS=reload failed, running configuration kept: " \
            in got[-1], got
        assert "'max-clients' must be between" in got[-1]

        s.proc.send_signal(signal.SIGTERM)
        recv_until(sock, "STOPPING=1")
        assert s.proc.wait(15) == 0


def test_sd_notify_mandi(mandis, tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "m.sock")
    sock.bind(path)
    with sock:
        m = mandis(env={"NOTIFY_SOCKET": path}, start=False)
        m.start(wait=False)
        got = recv_until(sock, "READY=1")
        st, _, _ = m.request("GET", "/leader", timeout=2)
        assert st == 404
        assert any("STATUS=mandi on " in g for g in got)
        m.proc.send_signal(signal.SIGTERM)
        recv_until(sock, "STOPPING=1")
        assert m.proc.wait(15) == 0


def test_sd_notify_unusable_socket_is_harmless(servers, tmp_path):
    """A NOTIFY_SOCKET nobody reads, or that is not an address at all,
    changes nothing: the node starts, reloads and stops as usual."""
    for bad in (str(tmp_path / "nobody.sock"), "relative/path", "@"):
        s = servers(name=f"n{free_port()}", env={"NOTIFY_SOCKET": bad})
        hup(s)
        assert s.stop() == 0


def test_sighup_reopens_and_moves_the_log_file(servers, tmp_path):
    first = str(tmp_path / "first.log")
    s = servers(conf={"log-file": first, "log-level": "info"})

    def read(path):
        with open(path, errors="replace") as f:
            return f.read()

    assert "HTTP on" in read(first)
    # logrotate: move the file away, SIGHUP, the node writes a new one
    os.rename(first, first + ".1")
    s.proc.send_signal(signal.SIGHUP)
    deadline = time.time() + 10
    while not (os.path.exists(first) and "reloaded: nothing changed"
               in read(first)):
        assert time.time() < deadline, read(first + ".1")
        time.sleep(0.05)
    assert "received SIGHUP" in read(first + ".1")

    # another file: said in both
    second = str(tmp_path / "second.log")
    s.conf["log-file"] = second
    s.write_conf()
    s.proc.send_signal(signal.SIGHUP)
    deadline = time.time() + 10
    while not (os.path.exists(second) and "reloaded:" in read(second)):
        assert time.time() < deadline, read(first)
        time.sleep(0.05)
    assert f"reload: log-file {first} -> {second}" in read(first)
    assert f"reload: log-file: now logging here (was {first})" \
        in read(second)
    assert "1 change applied" in read(second)

    # a file that cannot be opened: the log stays where it was
    s.conf["log-file"] = str(tmp_path / "no-such-dir" / "x.log")
    s.write_conf()
    start = len(read(second))
    s.proc.send_signal(signal.SIGHUP)
    deadline = time.time() + 10
    while "reloaded:" not in read(second)[start:]:
        assert time.time() < deadline, read(second)
        time.sleep(0.05)
    new = read(second)[start:]
    assert "reload: cannot open log-file" in new and \
        f"still logging to {second}" in new
    assert "the new log-file could not be opened" in new
    st, _, _ = s.request("GET", "/status")
    assert st == 200
    assert s.stop() == 0
    assert " I stopped" in read(second)


def pad_conf(s, lines=100000):
    """Append comment lines to s's config file (after write_conf): a few
    MB that make each read of it, at start or on a reload, take a few
    milliseconds."""
    with open(s.conf_path, "a") as f:
        f.write(("# " + "x" * 100 + "\n") * lines)


@pytest.fixture(scope="module")
def slow_tls(tmp_path_factory):
    """TLS files whose CA file holds the CA a hundred times: every reload
    reads it for each TLS slot, some tens of milliseconds in all."""
    import ssl
    import subprocess
    from conftest import ROOT
    d = str(tmp_path_factory.mktemp("pki"))
    make_certs = os.path.join(ROOT, "scripts", "make-certs.sh")
    for args in (["ca"], ["node", "node1", "127.0.0.1", "localhost"]):
        r = subprocess.run([make_certs, d] + args, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stderr
    ca = os.path.join(d, "ca.crt")
    with open(ca) as f, open(os.path.join(d, "many.crt"), "w") as out:
        out.write(f.read() * 100)
    conf = {"tls-cert-file": os.path.join(d, "node1.crt"),
            "tls-key-file": os.path.join(d, "node1.key"),
            "tls-ca-file": os.path.join(d, "many.crt")}
    return conf, ssl.create_default_context(cafile=ca)


@pytest.mark.serial  # the reloads' CPU time bounds /health at 2 s
def test_sighup_burst_is_coalesced(servers, slow_tls):
    """SIGHUPs that arrive while a reload runs are served by one reload
    (logrotate and a configuration manager at once, `systemctl reload`
    twice), not one each back to back while clients wait."""
    conf, ctx = slow_tls
    s = servers(conf=dict(conf, **{"log-level": "info"}), start=False)
    s.ssl_context = ctx
    s.start()
    start = len(s.read_log())
    for _ in range(200):
        os.kill(s.proc.pid, signal.SIGHUP)
        time.sleep(0.0001)  # each signal delivered, none merged
    t0 = time.time()
    assert s.request("GET", "/health", timeout=5)[0] == 200
    assert time.time() - t0 < 2
    # wait until the reloads are over: no new line for a second
    size, quiet = -1, 0
    while quiet < 20:
        n = len(s.read_log())
        quiet = quiet + 1 if n == size else 0
        size = n
        time.sleep(0.05)
    new = s.read_log()[start:]
    reloads = new.count("reloaded: nothing changed")
    assert 1 <= reloads <= 5, new[-3000:]
    # the signals did reach the process: the coalesced ones are counted
    heard = sum(int(line.split("SIGHUP (")[1].split()[0])
                for line in new.splitlines() if "received SIGHUP (" in line)
    heard += new.count("received SIGHUP\n")
    assert heard >= 20, new[-3000:]
    assert s.proc.poll() is None
    assert s.stop() == 0


def test_fifo_log_file_on_reload_is_refused(servers, tmp_path):
    """A FIFO where the log file was (logrotate moved the file, something
    else took its name), or named as the new log-file, is refused at once:
    nothing reads a FIFO, and waiting for a reader would stop the node."""
    path = str(tmp_path / "node.log")
    s = servers(conf={"log-file": path, "log-level": "info"})
    os.rename(path, path + ".1")
    os.mkfifo(path)
    try:
        s.proc.send_signal(signal.SIGHUP)
        # still logging to the file as it was (now node.log.1)
        deadline = time.time() + 10
        while "reloaded:" not in open(path + ".1").read():
            assert time.time() < deadline, open(path + ".1").read()
            time.sleep(0.05)
        old = open(path + ".1").read()
        assert (f"reload: cannot reopen log-file '{path}': not a regular "
                "file; still logging to the file as it was") in old
        assert ("reloaded: 0 changes applied, 1 failed (the log-file could "
                "not be reopened), 0 need a restart") in old
        st, _, _ = s.request("POST", "/set", body=b'{"key":"k","value":"v"}',
                             timeout=5)
        assert st == 204
        # a new log-file naming a FIFO: the same
        fifo2 = str(tmp_path / "other.fifo")
        os.mkfifo(fifo2)
        s.conf["log-file"] = fifo2
        s.write_conf()
        start = len(open(path + ".1").read())
        s.proc.send_signal(signal.SIGHUP)
        while "reloaded:" not in open(path + ".1").read()[start:]:
            assert time.time() < deadline + 10, open(path + ".1").read()
            time.sleep(0.05)
        new = open(path + ".1").read()[start:]
        assert (f"reload: cannot open log-file '{fifo2}': not a regular "
                f"file; still logging to {path}") in new
        assert "1 failed (the new log-file could not be opened)" in new
        assert s.request("GET", "/get?key=k", timeout=5)[0] == 200
        assert s.stop() == 0
    finally:
        # a node stuck opening a FIFO for writing goes on once it has a
        # reader: a failing run ends instead of hanging
        for f in (path, str(tmp_path / "other.fifo")):
            if os.path.exists(f):
                os.close(os.open(f, os.O_RDONLY | os.O_NONBLOCK))


@pytest.mark.parametrize("mode", ["node", "mandi"])
def test_fifo_log_file_at_start_is_an_error(servers, mandis, tmp_path, mode):
    fifo = str(tmp_path / "log.fifo")
    os.mkfifo(fifo)
    make = servers if mode == "node" else mandis
    s = make(conf={"log-file": fifo}, start=False)
    s.start(wait=False)
    try:
        assert s.wait_exit(timeout=10) == 1
    finally:
        os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
    assert (f"cannot open log-file '{fifo}': not a regular file"
            in s.read_log())


def opened(path, timeout=10):
    """A function that waits (up to timeout) until path is opened by
    anyone, by inotify, watching from the moment opened() returns."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_CLOEXEC)
    assert fd >= 0
    IN_OPEN = 0x20
    assert libc.inotify_add_watch(fd, path.encode(), IN_OPEN) >= 0

    def wait():
        import select
        try:
            r, _, _ = select.select([fd], [], [], timeout)
            assert r, f"{path} was not opened"
        finally:
            os.close(fd)
    return wait


@pytest.mark.parametrize("mode", ["node", "mandi"])
def test_sighup_during_start_does_not_kill(servers, mandis, mode):
    """A SIGHUP while the process starts (it reads its configuration, its
    token and TLS files, binds) is ignored: the process starts as if it had
    not come."""
    make = servers if mode == "node" else mandis
    s = make(conf={"log-level": "info"}, start=False)
    pad_conf(s)
    wait = opened(s.conf_path)
    s.start(wait=False)
    wait()  # main() is reading its configuration
    s.proc.send_signal(signal.SIGHUP)
    s.wait_ready()
    assert s.proc.poll() is None
    # and once it serves, SIGHUP reloads
    hup(s)
    assert s.stop() == 0


TOKEN = "grafana ro 0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f\n"


def test_reload_summary_counts_refused_token_changes(servers, tmp_path):
    """A client-token-file turned on (needs a restart) or one that no
    longer loads (the tokens in force stay) is not counted as applied, and
    the running configuration does not take it: the next reload says the
    same again."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKEN)
    with sock:
        s = servers(conf={"log-level": "info"},
                    env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock")})
        recv_until(sock, "READY=1")
        for _ in range(2):
            new = hup(s, {"client-token-file": str(tokens)})
            assert "client tokens turned on: needs a restart; still off" \
                in new
            assert "reloaded: 0 changes applied, 1 needs a restart" in new
            got = recv_until(sock, "READY=1")
            assert "STATUS=reloaded: 0 changes applied, 1 needs a restart" \
                in got[-1], got
        assert s.request("GET", "/get?key=k")[0] == 404  # still no tokens
        assert s.stop() == 0

    # tokens on; the file then replaced by one that does not load
    s = servers(name="node2", conf={"log-level": "info",
                                    "client-token-file": str(tokens)})
    tokens.write_text("grafana rx short\n")
    new = hup(s)
    assert "the tokens in force stay" in new
    assert ("reloaded: 0 changes applied, 1 failed (old client tokens "
            "kept), 0 need a restart") in new
    # another token file that does not load, with a change that does
    bad = tmp_path / "bad-tokens"
    bad.write_text("nonsense\n")
    new = hup(s, {"client-token-file": str(bad), "log-level": "debug"})
    assert ("reloaded: 1 change applied, 1 failed (old client tokens "
            "kept), 0 need a restart") in new
    # the refused path was not taken: once it loads, it is a change
    bad.write_text(TOKEN)
    new = hup(s)
    assert f"reload: client-token-file {bad}: 1 tokens" in new
    assert "reloaded: 1 change applied, 0 need a restart" in new
    assert s.stop() == 0


def test_lowered_timeouts_spare_open_connections(servers):
    """A reload that lowers client-body-timeout or client-idle-timeout does
    not cut off an answer already being sent to a slow reader, nor close a
    connection already idle: they keep the limits they were accepted with;
    new connections get the new ones."""
    s = servers(conf={"log-level": "info", "client-body-timeout": "60s",
                      "client-idle-timeout": "300s"})
    value = "x" * 900000
    for i in range(8):
        body = ('{"key":"big%d","value":"%s"}' % (i, value)).encode()
        assert s.request("POST", "/set", body=body)[0] == 204
    # a slow reader: a small receive window, then it stops reading
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect(("127.0.0.1", s.http_port))
    slow.sendall(b"GET /range?prefix=big HTTP/1.1\r\nHost: x\r\n\r\n")
    slow.settimeout(10)
    got = len(slow.recv(1000))
    # an idle keep-alive connection
    idle = socket.create_connection(("127.0.0.1", s.http_port))
    time.sleep(1.5)  # the answer's output waits unread
    hup(s, {"client-body-timeout": "1s", "client-idle-timeout": "500ms"})
    time.sleep(3)  # past both new limits
    # the idle connection still serves
    idle.settimeout(5)
    idle.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert idle.recv(4096).startswith(b"HTTP/1.1 200")
    idle.close()
    # the slow reader gets its whole answer
    total = got
    while True:
        b = slow.recv(1 << 20)
        if not b:
            break
        total += len(b)
        if total > 8 * 900000:
            break
    slow.close()
    assert total > 8 * 900000, total
    assert "bytes of output not read" not in s.read_log()
    # a new connection has the new idle timeout
    assert idle_closed_within(s, 3)
    assert s.stop() == 0
