"""Clocks: timeouts, leases and elections use the monotonic clock, so a
jump of the wall clock (an NTP step, an operator's mistake) changes
nothing. The wall clock of two nodes is moved with libfaketime (Debian's
faketime package) while the cluster takes writes."""
import glob
import time

from test_cluster import leader_of, make_cluster, put, get


def faketime_lib():
    libs = glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1")
    assert libs, "libfaketime is missing: scripts/install-deps.sh test"
    return libs[0]


def test_wall_clock_jumps_change_nothing(servers, tmp_path):
    lib = faketime_lib()
    offsets = {}
    nodes = make_cluster(servers, start=False)
    for s in nodes:
        f = tmp_path / f"{s.name}.faketime"
        f.write_text("+0\n")
        offsets[s.name] = f
        s.env.update({
            "LD_PRELOAD": lib,
            "FAKETIME_TIMESTAMP_FILE": str(f),
            "FAKETIME_NO_CACHE": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            # the sanitizer runtimes want to be first; libfaketime is
            # harmless to them
            "ASAN_OPTIONS": "verify_asan_link_order=0:detect_leaks=1",
        })
    for s in nodes:
        s.start(wait=False)
    for s in nodes:
        s.wait_ready()
    lead = leader_of(nodes)
    term = lead.status()["term"]
    assert put(lead, "before", "1")[0] == 204
    follower = next(s for s in nodes if s is not lead)
    # the leader's clock jumps a day ahead, a follower's a day back
    offsets[lead.name].write_text("+1d\n")
    offsets[follower.name].write_text("-1d\n")
    # a line logged now carries the faked date (a snapshot says so)
    st, _, body = lead.request("POST", "/admin/snapshot", timeout=20)
    assert st in (200, 204), body
    day = time.strftime("%Y-%m-%dT", time.gmtime(time.time() + 86400))
    assert day in lead.read_log(), lead.read_log()
    deadline = time.time() + 3
    i = 0
    while time.time() < deadline:
        st, _, body = put(nodes[i % 3], f"k{i}", str(i))
        assert st == 204, body
        i += 1
    for s in nodes:
        assert get(s, f"k{i - 1}")[2] == str(i - 1).encode()
    # and back: a jump the other way
    offsets[lead.name].write_text("-1d\n")
    offsets[follower.name].write_text("+0\n")
    deadline = time.time() + 2
    while time.time() < deadline:
        st, _, body = put(nodes[i % 3], f"k{i}", str(i))
        assert st == 204, body
        i += 1
    # no election, no leader change, every node still agrees
    assert leader_of(nodes) is lead
    for s in nodes:
        assert s.status()["term"] == term, s.read_log()
