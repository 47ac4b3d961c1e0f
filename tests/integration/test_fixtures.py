"""The fixtures notice crashes: a server killed by a signal the test did
not send, or one that exits non-zero without the test waiting for it,
fails the test at teardown (and in leader_of), while the test's own kills
and the exits it waits for with wait_exit() do not."""
import os
import re
import signal

import pytest

import conftest
from conftest import Server, _factory
from test_cluster import leader_of, put


def teardown_of(tmp_path, request):
    """A private servers() factory and a function that runs its teardown,
    returning the pytest.fail message or None."""
    gen = _factory(Server, tmp_path, request, "node1")
    make = next(gen)

    def teardown():
        try:
            next(gen)
        except StopIteration:
            return None
        except pytest.fail.Exception as e:
            return str(e)
        raise AssertionError("the factory yielded twice")
    return make, teardown


def exit_99(s):
    """Make s exit by itself with status 99: a failure point in the next
    snapshot, asked for once something new was applied (else there is
    nothing to snapshot and the request returns at once)."""
    s.env["PYAZDB_FAILPOINT"] = "snapshot-before-rename"
    s.start()
    assert put(s, "k", "v")[0] == 204
    try:
        s.request("POST", "/admin/snapshot", timeout=5)
    except OSError:
        pass  # the failure point exits before the answer
    del s.env["PYAZDB_FAILPOINT"]


def test_a_crash_fails_the_test(tmp_path, request):
    make, teardown = teardown_of(tmp_path, request)
    s = make()
    pid = s.proc.pid
    # As a failed assertion would (abort): not s.signal(). Not SIGSEGV,
    # which the sanitizer builds catch, report and turn into exit 1.
    os.kill(pid, signal.SIGABRT)
    s.proc.wait(10)
    why = f"node1 (pid {pid}) was killed by SIGABRT"
    assert s.exit_problem() == why
    with pytest.raises(AssertionError, match=re.escape(why)):
        leader_of([s], timeout=2)
    with pytest.raises(AssertionError, match=re.escape(why)):
        s.wait_exit()  # `!= 0` on its result would accept a crash
    msg = teardown()
    assert msg is not None and why in msg


def test_an_exit_status_nobody_waited_for_fails_the_test(tmp_path,
                                                         request):
    make, teardown = teardown_of(tmp_path, request)
    s = make(start=False)
    exit_99(s)
    s.proc.wait(10)
    assert s.proc.returncode == 99
    why = f"node1 (pid {s.proc.pid}) exited with status 99"
    assert s.exit_problem().startswith(why)
    msg = teardown()
    assert msg is not None and why in msg


def test_own_kills_stops_and_waited_exits_are_fine(tmp_path, request):
    make, teardown = teardown_of(tmp_path, request)
    killed = make("node1")
    killed.kill()
    assert killed.proc.returncode == -signal.SIGKILL
    assert killed.exit_problem() is None
    paused = make("node2")
    paused.signal(signal.SIGSTOP)  # teardown's SIGTERM also resumes it
    stopped = make("node3")
    assert stopped.stop() == 0
    failed = make("node4", start=False)
    exit_99(failed)
    assert failed.wait_exit() == 99
    assert failed.exit_problem() is None
    # restarted: every process it ran is checked, the first one included
    failed.start()
    assert teardown() is None
    assert paused.proc.returncode == 0


def test_workers_take_ports_from_ranges_of_their_own(monkeypatch):
    """Side by side (pytest-xdist), each worker's listener ports come from
    its own slice of the range, and a worker forgets the ports it handed
    out longest ago rather than running out of its slice."""
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "4")
    spans = []
    for w in range(4):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", f"gw{w}")
        spans.append(conftest.listen_span())
    if spans[0] is None:
        pytest.skip("ephemeral range starts below 12000: the kernel chooses")
    for (lo, hi), (lo2, _) in zip(spans, spans[1:]):
        assert lo <= hi < lo2, spans
    lo, hi = spans[3]
    monkeypatch.setattr(conftest, "_handed_out", set())
    monkeypatch.setattr(conftest, "_handed_order",
                        conftest.collections.deque())
    ports = [conftest.free_port() for _ in range(hi - lo + 1)]
    assert all(lo <= p <= hi for p in ports)
    assert len(conftest._handed_out) <= (hi - lo + 1) // 2
