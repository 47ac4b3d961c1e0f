"""Removing a member and adding it again under the same name, as an
operator does it: remove, wipe the data dir, start the node to join. The
removal of an earlier incarnation must not stop the new one, the leader
must not promote a node that is gone, and a join request left by the
removed incarnation must not bring it back."""
import json
import pytest
import os
import shutil
import sqlite3
import time

from test_cluster import leader_of, put, get, wait_value
from test_join import cluster_view, grow, wait_voters


def incarnation(s):
    """The incarnation stored in a node's data dir (0 when none); the node
    must not be running (it holds its database locked)."""
    db = sqlite3.connect(f"file:{s.conf['raft-data']}/raft.db?mode=ro",
                         uri=True)
    try:
        row = db.execute(
            "SELECT value FROM meta WHERE key = 'incarnation'").fetchone()
    finally:
        db.close()
    return int(row[0]) if row else 0


def remove(leader, name):
    st, _, body = leader.request("DELETE", f"/cluster/members/{name}")
    assert st == 204, body


def wipe_and_join(s, mandi):
    shutil.rmtree(s.conf["raft-data"])
    s.conf["raft-bootstrap"] = "no"
    s.conf["mandi-addr"] = mandi.url
    s.write_conf()
    s.start()


def writes_survive_any_one_failure(nodes, key):
    """With every member up, kill each in turn: a write through one of the
    two others succeeds, then the killed node comes back and catches up."""
    for i, victim in enumerate(nodes):
        victim.kill()
        live = [s for s in nodes if s is not victim]
        lead = leader_of(live, timeout=20)
        st, _, body = put(lead, f"{key}{i}", str(i))
        assert st == 204, (victim.name, body)
        victim.start()
        wait_value(victim, f"{key}{i}", str(i))


def test_each_member_removed_wiped_and_added_again(servers, mandi):
    nodes = grow(servers, mandi, n=3)
    names = [s.name for s in nodes]
    lead = leader_of(nodes)
    assert put(lead, "before", "1")[0] == 204
    old_incs = {}
    for k, s in enumerate(nodes):
        lead = leader_of(nodes)  # may be s: it steps down at the commit
        remove(lead, s.name)
        assert s.proc.wait(timeout=20) == 0, s.read_log()
        old_incs[s.name] = incarnation(s)
        others = [x for x in nodes if x is not s]
        lead = leader_of(others, timeout=20)
        assert put(lead, f"while{k}", "x")[0] == 204
        wipe_and_join(s, mandi)
        c = wait_voters(lead, names, timeout=40)
        # the new incarnation replayed its old removal and is still up
        wait_value(s, f"while{k}", "x")
        assert s.proc.poll() is None, s.read_log()
        m = {x["id"]: x for x in c["members"]}[s.name]
        assert m["voter"], c
        assert get(s, "before")[2] == b"1"
    # full fault tolerance afterwards: any one node may fail
    writes_survive_any_one_failure(nodes, "after")
    for s in nodes:
        s.stop()
        assert incarnation(s) not in (0, old_incs[s.name])
    assert old_incs["node1"] == 0  # the founder's


def test_stale_join_request_does_not_bring_a_removed_member_back(
        servers, mandi):
    nodes = grow(servers, mandi, n=3)
    lead = leader_of(nodes)
    gone = next(s for s in nodes if s is not lead and s.name != "node1")
    founder = nodes[0] if nodes[0] is not lead else None
    remove(lead, gone.name)
    assert gone.proc.wait(timeout=20) == 0
    stale_inc = incarnation(gone)
    assert stale_inc != 0
    # what the removed incarnation would post: its own incarnation
    req = {"id": gone.name, "addr": f"127.0.0.1:{gone.raft_port}",
           "incarnation": stale_inc}
    st, _, body = mandi.request("POST", "/join-requests", json.dumps(req))
    assert st == 204, body
    removed = [gone.name]
    if founder is not None:
        # a founder has incarnation 0: a request without one (as the
        # original program's nodes post) is stale for it once removed
        remove(lead, founder.name)
        assert founder.proc.wait(timeout=20) == 0
        req = {"id": founder.name,
               "addr": f"127.0.0.1:{founder.raft_port}"}
        st, _, body = mandi.request("POST", "/join-requests",
                                    json.dumps(req))
        assert st == 204, body
        removed.append(founder.name)
    # the leader drops them instead of adding them
    deadline = time.time() + 20
    while time.time() < deadline:
        st, _, body = mandi.request("GET", "/join-requests")
        if json.loads(body) == []:
            break
        time.sleep(0.3)
    assert json.loads(body) == [], body
    for name in removed:
        assert f"join request of {name} is from the member removed" in \
            lead.read_log()
    time.sleep(3.5)  # one more poll of join requests
    ids = {m["id"] for m in cluster_view(lead)["members"]}
    assert not ids & set(removed), ids
    # the removed node itself, restarted on its old data, refuses to run
    gone.start(wait=False)
    assert gone.proc.wait(timeout=20) == 0
    assert "removed from the cluster" in gone.read_log()


def test_restarted_leader_still_tells_a_removed_member(servers):
    """The removals are in the configuration, not in the leader's memory:
    a removed member that was down through the removal and a restart of
    every other node is still told when it comes back."""
    from test_cluster import make_cluster
    nodes = make_cluster(servers)
    lead = leader_of(nodes)
    gone = next(s for s in nodes if s is not lead)
    assert put(lead, "k", "1")[0] == 204
    gone.kill()
    remove(lead, gone.name)
    rest = [s for s in nodes if s is not gone]
    for s in rest:
        s.stop()
    for s in rest:
        s.start(wait=False)
    for s in rest:
        s.wait_ready()
    leader_of(rest, timeout=20)
    gone.start(wait=False)
    assert gone.proc.wait(timeout=30) == 0, gone.read_log()
    assert "removed from the cluster (configuration entry" in gone.read_log()


def test_wiped_member_is_not_used_until_removed(servers, mandi):
    """A member whose data dir was lost, started again under its name
    without being removed first, would answer for a voter that forgot what
    it acknowledged. The others do not use it (it gets no entries and no
    votes count from it) and the leader does not add it; once the old
    member is removed it joins as a new incarnation."""
    nodes = grow(servers, mandi, n=3)
    lead = leader_of(nodes)
    wiped = next(s for s in nodes if s is not lead and s.name != "node1")
    assert put(lead, "k", "1")[0] == 204
    wiped.kill()
    wipe_and_join(wiped, mandi)
    deadline = time.time() + 10
    while "with another data dir" not in lead.read_log():
        assert time.time() < deadline, lead.read_log()
        time.sleep(0.2)
    time.sleep(4)  # a poll of join requests and a few redials
    log = lead.read_log()
    assert f"{wiped.name} asks to join with a new data dir, but " \
        f"{wiped.name} is a member" in log
    st = wiped.status()
    assert st["commit_index"] == 0, st  # it was sent nothing
    others = [s for s in nodes if s is not wiped]
    assert put(leader_of(others), "k2", "2")[0] == 204
    remove(leader_of(others), wiped.name)
    wait_voters(leader_of(others), [s.name for s in nodes], timeout=40)
    wait_value(wiped, "k2", "2")
    assert wiped.proc.poll() is None


def flip_one_byte(data_dir, marker):
    """Flip one byte inside the stored value that contains marker (in
    raft.db, or its WAL if not checkpointed yet); returns the file."""
    for name in ("raft.db", "raft.db-wal"):
        path = os.path.join(data_dir, name)
        if not os.path.exists(path):
            continue
        with open(path, "r+b") as f:
            data = f.read()
            at = data.find(marker)
            if at < 0:
                continue
            f.seek(at + 3)
            f.write(bytes([data[at + 3] ^ 0x01]))
            return path
    raise AssertionError(f"{marker!r} not found in {data_dir}")


@pytest.mark.parametrize("damage", ["page", "byte"])
def test_damaged_node_is_reseeded_from_the_cluster(servers, mandi, damage):
    """The README's recipe for a node whose raft.db is damaged (a page
    overwritten, or one byte of a value flipped, which only the entries'
    checksums see): it refuses to start, naming the file and what is
    wrong; remove it, wipe it, and it joins again with everything."""
    nodes = grow(servers, mandi, n=3)
    lead = leader_of(nodes)
    for i in range(50):
        assert put(lead, f"k{i}", "x" * 200)[0] == 204
    assert put(lead, "marked", "MARKER-" + "m" * 100)[0] == 204
    bad = next(s for s in nodes if s is not lead and s.name != "node1")
    wait_value(bad, "marked", "MARKER-" + "m" * 100)
    bad.stop()
    db = f"{bad.conf['raft-data']}/raft.db"
    if damage == "page":
        with open(db, "r+b") as f:
            f.seek(4096)  # page 2: the log's pages follow the schema
            f.write(b"\xff" * 4096)
    else:
        flip_one_byte(bad.conf["raft-data"], b"MARKER-")
    bad.start(wait=False)
    assert bad.wait_exit(20) != 0
    log = bad.read_log()
    assert "raft.db" in log
    if damage == "byte":
        assert "fails its checksum" in log and "log entry" in log, log
    others = [s for s in nodes if s is not bad]
    remove(leader_of(others), bad.name)
    wipe_and_join(bad, mandi)
    wait_voters(leader_of(others), [s.name for s in nodes], timeout=40)
    for i in range(50):
        assert get(bad, f"k{i}")[2] == b"x" * 200


def test_replaced_incarnation_is_told_when_it_returns(servers, mandi):
    """A member switched off, removed and replaced by a new data dir under
    its name (the recipe) comes back on its old data: the members tell it
    it was removed, although its id is a member again, and it stops."""
    import os
    nodes = grow(servers, mandi, n=3)
    lead = leader_of(nodes)
    old = next(s for s in nodes if s is not lead and s.name != "node1")
    assert put(lead, "k", "1")[0] == 204
    old.kill()
    others = [s for s in nodes if s is not old]
    remove(leader_of(others), old.name)
    data = old.conf["raft-data"]
    os.rename(data, data + ".old")
    old.conf["raft-bootstrap"] = "no"
    old.write_conf()
    old.start()  # the replacement: a new incarnation under the same name
    wait_voters(leader_of(others), [s.name for s in nodes], timeout=40)
    assert put(leader_of(nodes), "k2", "2")[0] == 204
    wait_value(old, "k2", "2")
    old.stop()
    os.rename(data, data + ".new")
    os.rename(data + ".old", data)
    old.start(wait=False)  # the old machine is back
    assert old.proc.wait(30) == 0, old.read_log()
    assert "removed from the cluster (configuration entry" in old.read_log()
    # the replacement, started again, is still the member
    old.stop()
    os.rename(data, data + ".old")
    os.rename(data + ".new", data)
    old.start()
    assert put(leader_of(nodes), "k3", "3")[0] == 204
    wait_value(old, "k3", "3")


def recipe(title):
    """The command lines of the README recipe that starts with **title**,
    comments and continuation comments dropped."""
    from test_readme import readme
    text = readme()
    start = text.index(f"**{title}")
    end = text.index("\n**", start + 2)
    lines = []
    for line in text[start:end].splitlines():
        if not line.startswith("    "):
            continue
        cmd = line.split("#", 1)[0].strip()
        if cmd:
            lines.append(cmd)
    return lines


def test_readme_recipes_remove_and_add_again(servers, mandi):
    """The README's first two recipes, their commands as printed: only the
    leader's address and node3's data dir are this test's own."""
    import subprocess
    nodes = grow(servers, mandi, n=3)
    node3 = nodes[2]
    lead = leader_of(nodes)
    assert put(lead, "k", "1")[0] == 204
    env = {"LEADER": f"127.0.0.1:{nodes[0].http_port}"}

    def sh(cmd):
        cmd = cmd.replace("/var/lib/pyazdb/node3", node3.conf["raft-data"])
        r = subprocess.run(["bash", "-c", cmd + " -s -o /dev/null -w "
                            "'%{http_code}'" if cmd.startswith("curl")
                            else cmd], capture_output=True, text=True,
                           timeout=30, env={**os.environ, **env})
        assert r.returncode == 0, (cmd, r.stderr)
        return r.stdout

    remove_steps = recipe("Remove a node for good")
    assert remove_steps == [
        "curl -X DELETE http://$LEADER/cluster/members/node3"]
    assert sh(remove_steps[0]) == "204"
    assert node3.proc.wait(20) == 0
    assert "removed from the cluster" in node3.read_log()

    steps = recipe("Add a removed node again")
    assert [s.split()[0] for s in steps] == ["curl", "rm", "pyazdb-server"]
    assert sh(steps[0]) == "404"  # done already: no such member
    sh(steps[1])
    assert not os.path.exists(node3.conf["raft-data"])
    # pyazdb-server node3.conf, with what the recipe's comment says
    assert steps[2] == "pyazdb-server node3.conf"
    node3.conf["raft-bootstrap"] = "no"
    node3.conf.pop("initial-cluster", None)
    node3.conf["mandi-addr"] = mandi.url
    node3.write_conf()
    node3.start()
    wait_voters(leader_of(nodes), [s.name for s in nodes], timeout=40)
    wait_value(node3, "k", "1")
