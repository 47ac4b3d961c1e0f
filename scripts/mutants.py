#!/usr/bin/env python3
"""Mutation checks: does the test suite catch deliberate bugs?

Each mutation below is one bug planted in a safety-critical line: a file,
the exact original text (it must occur exactly once in that file) and its
replacement, plus the narrow tests that should catch it. The script copies
the working tree into a scratch directory (the tree itself is never
touched), builds it once, then for each mutation: applies the edit, builds,
runs its tests with a time bound, reverts the edit. A mutation is caught
when one of its tests fails (or times out); it is missed when all pass.

    make test-mutants                       every mutation
    MUTANTS=name1,name2 make test-mutants   only those
    scripts/mutants.py --list               the names
    scripts/mutants.py --check              only check that every original
                                            text is found exactly once
    MUTANT_TIMEOUT=s                        bound on each test run (600 s);
                                            a run that hits it counts as
                                            caught (a hang fails make test)

Tests of a mutation, run in order until one fails:
    unit:SUITE[/TEST]      tests/unit/test-unit with that selection
    sim:N                  the Raft simulation over seeds 1..N
    nodesim:N              the simulation of the node driver, seeds 1..N
    py:EXPR                pytest tests/integration -k EXPR
    py:FILE::TEST          one integration test (FILE relative to
                           tests/integration)

The output is one line per mutation (caught/missed, by which test, time)
and the catch rate; the exit status is 1 if any mutation was missed or
could not be built, 2 if the list no longer matches the source (refresh
the mutation's `old` text after a merge). One mutant at a time: the
builds use `make -j2` and the tests are those of `make test`.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
PYTHON = os.environ.get("PYTHON", "/usr/bin/python3")
TEST_TIMEOUT = int(os.environ.get("MUTANT_TIMEOUT", "600"))  # per test


def M(name, path, old, new, tests, why=""):
    return {"name": name, "edits": [(path, old, new)], "tests": tests,
            "why": why}


RAFT = ["unit:raft", "sim:10000"]
AUTH = ["unit:auth", "unit:tokens", "py:test_auth.py"]
ETCDMAP = ["unit:etcd_map"]

MUTATIONS = [
    # --- elections and terms (src/raft.c) ------------------------------
    M("raft_step_lower_term_vote", "src/raft.c",
      "        } else if (m->type == RAFT_MSG_PREVOTE || m->type == RAFT_MSG_VOTE) {\n"
      "            /* Figure 3.1 (RequestVote): \"Reply false if term <",
      "        } else if (m->type == RAFT_MSG_VOTE) {\n"
      "            handle_vote(r, m);\n"
      "        } else if (m->type == RAFT_MSG_PREVOTE) {\n"
      "            /* Figure 3.1 (RequestVote): \"Reply false if term <",
      RAFT, "a VOTE of a lower term is handled like a current one"),
    M("raft_peer_terms_up_to_the_limit", "src/raft.c",
      "    uint64_t reach = PZ_MAX(r->term + RAFT_TERM_LEAP, RAFT_TERM_BOUND - 1);",
      "    uint64_t reach = PZ_MAX(r->term + RAFT_TERM_LEAP, RAFT_LIMIT - 1);",
      ["unit:raft/terms_without_room_refused", "sim:10000",
       "py:test_hostile_peers.py::test_terms_without_room_are_refused"],
      "the old bound (>= RAFT_LIMIT): one forged term 2^62 - 1 leaves the "
      "cluster without a leader for good"),
    M("raft_campaign_past_the_term_max", "src/raft.c",
      "    if (!promotable(r) || r->role == RAFT_LEADER || r->term >= RAFT_TERM_MAX)",
      "    if (!promotable(r) || r->role == RAFT_LEADER)",
      ["unit:raft/own_term_stops_at_the_max"],
      "a node at 2^62 - 1 campaigns for 2^62, past what any peer takes"),
    M("raft_trailing_node_never_catches_up", "src/raft.c",
      "    if (reach > r->term) {\n        r->fresh = false;",
      "    if (reach > r->term && false) {\n        r->fresh = false;",
      ["unit:raft/trailing_node_catches_up_past_the_bound", "sim:10000"],
      "a node left behind by a cluster gone past 2^61 refuses it for good"),
    M("raft_catch_up_on_every_refusal", "src/raft.c",
      "    if (r->caught_up &&\n"
      "        r->ticks - r->caught_up_at < (uint64_t)r->cfg.election_ticks)\n"
      "        return;\n",
      "",
      ["py:test_hostile_peers.py::"
       "test_a_burst_of_terms_without_room_costs_one_election",
       "unit:raft/trailing_node_catches_up_past_the_bound"],
      "a burst of forged messages past its reach moves a healthy follower "
      "a leap each, alone, far above its cluster, which then climbs to it "
      "a leap an election without a leader"),
    M("raft_leads_before_its_term_is_durable", "src/raft.c",
      "    if (t == 1 && (pre || r->durable_term == r->term))",
      "    if (t == 1)",
      ["unit:raft/candidate_leads_only_once_its_term_is_durable"],
      "two peers granting a vote before its request was sent make a "
      "candidate lead a term that is not on its disk yet; a crash then "
      "lets it lead that term again"),
    M("start_takes_a_term_without_room", "src/node.c",
      "    if (hs.term > RAFT_TERM_MAX) {",
      "    if (hs.term > RAFT_TERM_MAX && false) {",
      ["py:test_storage.py::test_term_without_room_is_refused_at_start"],
      "a node poisoned by an older version starts and never has a leader"),
    M("quick_start_outlives_the_first_election", "src/raft.c",
      "        r->vote = 0;\n        r->quick_start = false;\n",
      "        r->vote = 0;\n",
      ["unit:raft"], "a node that saw an election still stands early"),
    M("vote_grant_twice", "src/raft.c",
      "bool grant = can_vote && log_up_to_date(r, m->index, m->log_term);",
      "bool grant = can_vote || log_up_to_date(r, m->index, m->log_term);",
      RAFT, "a vote already given to another candidate is given again"),
    M("vote_ignores_log", "src/raft.c",
      "bool grant = can_vote && log_up_to_date(r, m->index, m->log_term);",
      "bool grant = can_vote && (log_up_to_date(r, m->index, m->log_term) || "
      "m->index > 0);",
      RAFT, "the election restriction (up-to-date log) is skipped"),
    M("log_up_to_date_ignores_length", "src/raft.c",
      "(last_term == my_term && last_index >= log_last(&r->log));",
      "(last_term == my_term && last_index + 1 >= log_last(&r->log));",
      RAFT, "a log one entry shorter (same last term) wins votes"),
    M("vote_tally_minority", "src/raft.c",
      "    if (granted >= nv / 2 + 1)\n        return 1;",
      "    if (granted >= nv / 2)\n        return 1;",
      RAFT, "an election is won without a majority"),
    M("self_vote_before_durable", "src/raft.c",
      "if (pre_vote || r->durable_term == r->term)",
      "if (pre_vote || r->durable_term <= r->term)",
      RAFT, "a candidate counts its own vote before its term is on disk"),
    M("vote_request_before_persist", "src/raft.c",
      "r, !pre_vote, pre_vote ? RAFT_MSG_PREVOTE : RAFT_MSG_VOTE, s->id);",
      "r, false, pre_vote ? RAFT_MSG_PREVOTE : RAFT_MSG_VOTE, s->id);",
      RAFT, "vote requests leave before the candidate's term is durable"),
    M("vote_resp_before_persist", "src/raft.c",
      "    struct raft_msg *resp = new_msg(r, true, type, m->from);",
      "    struct raft_msg *resp = new_msg(r, false, type, m->from);",
      RAFT, "a vote is granted before it is durable"),
    M("higher_term_ignored_by_leader", "src/raft.c",
      "            become_follower(r, m->term, from_leader ? m->from : 0);",
      "            if (r->role != RAFT_LEADER)\n"
      "                become_follower(r, m->term, from_leader ? m->from : 0);",
      RAFT, "a leader does not step down on a higher term"),
    M("stale_append_accepted", "src/raft.c",
      "    } else if (m->term < r->term) {\n"
      "        if (m->type == RAFT_MSG_APPEND ||",
      "    } else if (m->term < r->term && m->type != RAFT_MSG_APPEND) {\n"
      "        if (m->type == RAFT_MSG_APPEND ||",
      RAFT, "an APPEND from a deposed leader is followed"),
    M("vote_lease_ignored", "src/raft.c",
      "            if (!force && in_lease(r))\n                return 0;",
      "            if (!force && in_lease(r) && m->type == RAFT_MSG_PREVOTE)\n"
      "                return 0;",
      RAFT, "leader stickiness (thesis 4.2.3) dropped for real votes"),
    {"name": "follower_votes_within_its_lease",
     "edits": [("src/raft.c",
                "            if (!force && in_lease(r))\n"
                "                return 0;",
                "            if (!force && in_lease(r) &&\n"
                "                m->type == RAFT_MSG_PREVOTE)\n"
                "                return 0;"),
               ("src/raft.c",
                "        in_lease(r))\n        can_vote = false;",
                "        in_lease(r) && pre)\n        can_vote = false;")],
     "tests": ["sim:10000", "unit:raft"],
     "why": "without Pre-Vote, a follower grants a vote while a leader's "
            "lease counts on its refusal (both of its checks gone: each "
            "alone is the one above and learned_term_clears_the_refusal)"},
    M("check_quorum_off_by_one", "src/raft.c",
      "            if (active < quorum(r)) {",
      "            if (active + 1 < quorum(r)) {",
      RAFT, "a leader cut off from its majority keeps leading"),
    # --- commit rules ----------------------------------------------------
    M("commit_without_term_check", "src/raft.c",
      "if (n <= r->commit || log_term(&r->log, n) != r->term)",
      "if (n <= r->commit)",
      RAFT, "Figure 3.7: an old-term entry committed by counting"),
    M("commit_quorum_even", "src/raft.c",
      "    uint64_t n = nv ? a[nv / 2] : 0;",
      "    uint64_t n = nv ? a[(nv - 1) / 2] : 0;",
      RAFT, "with an even number of voters, half commit"),
    M("leader_self_ack_before_persist", "src/raft.c",
      "            pr->match = r->persisted;",
      "            pr->match = log_last(&r->log);",
      RAFT, "the leader counts its own entries before they are durable"),
    M("append_resp_before_persist", "src/raft.c",
      "    struct raft_msg *m = new_msg(r, true, RAFT_MSG_APPEND_RESP, to);",
      "    struct raft_msg *m = new_msg(r, false, RAFT_MSG_APPEND_RESP, to);",
      RAFT, "a follower acknowledges entries before they are durable"),
    M("append_prev_term_unchecked", "src/raft.c",
      "    if (prev > last || log_term(&r->log, prev) != prev_term) {",
      "    if (prev > last || (log_term(&r->log, prev) != prev_term && "
      "prev_term == 0)) {",
      RAFT, "AppendEntries consistency check without the term"),
    M("append_commit_unbounded", "src/raft.c",
      "    commit_to(r, PZ_MIN(m->commit, last_new));",
      "    commit_to(r, PZ_MIN(m->commit, log_last(&r->log)));",
      RAFT, "a follower commits entries past the ones the leader sent"),
    M("advance_ignores_truncation", "src/raft.c",
      "    if (sl->trunc_since != UINT64_MAX && upto >= sl->trunc_since)\n"
      "        upto = sl->trunc_since - 1;",
      "    if (sl->trunc_since != UINT64_MAX && upto > r->persisted + "
      "1000000000)\n        upto = sl->trunc_since - 1;",
      RAFT, "a write counts for entries truncated meanwhile"),
    M("restore_accepts_future_terms", "src/raft.c",
      "            e->term > hs->term || e->term == 0 || "
      "e->type > RAFT_ENTRY_NOOP ||",
      "            e->term == 0 || e->type > RAFT_ENTRY_NOOP ||",
      ["unit:raft", "unit:store"],
      "a stored log with terms above the stored term is accepted"),
    M("snapshot_keeps_stale_acks", "src/raft.c",
      "        drop_acks_from(r, r->commit + 1);\n        log_reset(",
      "        log_reset(",
      RAFT, "acks of entries a snapshot install discards still go out"),
    # --- reads ----------------------------------------------------------
    M("read_before_commit_in_term", "src/raft.c",
      "    return log_term(&r->log, r->commit) == r->term;",
      "    return log_term(&r->log, r->commit) <= r->term;",
      RAFT, "thesis 6.4: a new leader serves reads before its no-op commits"),
    M("read_without_quorum", "src/raft.c",
      "        confirmed = a[nv / 2];",
      "        confirmed = a[0];",
      RAFT, "a read index released without a quorum of heartbeats"),
    M("read_ack_of_any_term", "src/raft.c",
      "        p != NULL && p->voter && m->log_term == r->term ? m->from : 0;",
      "        p != NULL && p->voter ? m->from : 0;",
      RAFT, "a READ_INDEX sent in another term acknowledges this leader"),
    M("read_acker_without_quorum", "src/raft.c",
      "    return n > nv / 2;",
      "    return n >= nv / 2;",
      RAFT, "a forwarded read released with its follower short of a quorum"),
    M("read_index_from_anyone", "src/raft.c",
      "        if ((!m->reject && m->from != r->leader) ||",
      "        if ((!m->reject && m->from == 0) ||",
      RAFT, "a read index from a non-leader is trusted"),
    M("joiner_forgets_its_leaders_addresses", "src/node_members.c",
      "        if (!m->told)\n            take_early(m);",
      "        if (!m->told && m->id == 0)\n            take_early(m);",
      ["py:test_join.py::"
       "test_node_joining_a_founded_cluster_learns_every_members_addresses"],
      "a joining node drops what its leader's handshake told"),
    M("cluster_id_saved_after_a_write", "src/node_members.c",
      "    nd->cluster_id = id;\n    if (NIO(store_busy)) {",
      "    nd->cluster_id = id;\n    if (NIO(store_busy) || id != 0) {",
      ["py:test_powerloss.py::"
       "test_joining_node_keeps_its_cluster_id_through_a_power_cut"],
      "a joining node's cluster id waits for a log write to end and, with "
      "more writes queued, its acknowledgements go out first: a power cut "
      "brings it back with a log and cluster id 0"),
    M("node_read_before_apply", "src/node.c",
      "        if (r->index <= nd->applied)\n            reqs_done(r, 0);",
      "        if (r->index <= nd->applied || r->index > 0)\n"
      "            reqs_done(r, 0);",
      ["py:test_cluster.py::test_paused_leader_never_serves_stale_reads"],
      "a linearizable read answered before the read index is applied"),
    # --- persist before ack / vote (src/node.c, src/store.c) -------------
    M("node_ack_before_persist", "src/node.c",
      "        if (write_ready(q) < 0)\n"
      "            core_fatal(\"cannot write the Raft log: %s\", "
      "NIO(store_errmsg));\n    }",
      "        if (write_ready(q) < 0)\n"
      "            core_fatal(\"cannot write the Raft log: %s\", "
      "NIO(store_errmsg));\n"
      "        send_all(rd->msgs_after_persist, rd->n_msgs_after_persist);\n"
      "        rd->n_msgs_after_persist = 0;\n    }",
      ["nodesim:200",
       "py:test_powerloss.py::test_power_cut_keeps_acknowledged_writes",
       "py:test_powerloss.py::test_granted_vote_survives_a_power_cut"],
      "acks and votes leave before the store write is durable"),
    M("node_pipelined_ack_early", "src/node.c",
      "        if (!write && nd->n_rds == 0) {",
      "        if (!write) {",
      ["nodesim:200"],
      "a Ready with nothing to write is advanced, and acknowledges, "
      "before the writes ahead of it are durable"),
    M("store_runs_behind_failure", "src/store.c",
      "        if (s->halted) {\n            cancel_locked(s, b);",
      "        if (s->halted && b == NULL) {\n            cancel_locked(s, b);",
      ["unit:store/failed_write_cancels_beyond_its_transaction"],
      "a write queued behind a failed one still runs (a gap in the log)"),
    M("node_vote_not_persisted", "src/node.c",
      "    return rd->hs.term != nd->saved_term || rd->hs.vote != nd->saved_vote;",
      "    return rd->hs.term != nd->saved_term;",
      ["py:test_powerloss.py::test_granted_vote_survives_a_power_cut"],
      "a vote given in a term already on disk is not written before it goes"),
    {"name": "store_synchronous_normal",
     "edits": [("src/store.c",
                "                        \"PRAGMA synchronous = FULL;\"\n"
                "                        \"PRAGMA cell_size_check = ON;\"",
                "                        \"PRAGMA synchronous = NORMAL;\"\n"
                "                        \"PRAGMA cell_size_check = ON;\""),
               ("src/store.c",
                "    if (strcmp(row, \"2\") != 0) {",
                "    if (strcmp(row, \"1\") != 0) {")],
     "tests": ["py:test_powerloss.py::test_power_cut_keeps_acknowledged_writes"],
     "why": "WAL commits not fsynced (NORMAL loses commits on power loss)"},
    M("log_write_failure_ignored", "src/node.c",
      "    if (status < 0) {\n        /* A failed write or fsync may have",
      "    if (status < -100000) {\n        /* A failed write or fsync may have",
      ["py:test_storage.py::test_failed_log_write_stops_the_node"],
      "a failed log write is ignored (fail-stop dropped)"),
    # --- snapshots ------------------------------------------------------
    M("snapshot_checksum_ignored", "src/snapshot.c",
      "    if (m.checksum != r.crc) {",
      "    if (m.checksum != r.crc && m.checksum == 0) {",
      ["unit:snapshot"], "a snapshot whose checksum differs is loaded"),
    M("frame_checksum_ignored", "src/raft_codec.c",
      "    if (trailer && !frame_crc_ok(p, f, p->body_len))",
      "    if (trailer && !frame_crc_ok(p, f, p->body_len) && p->body_len > 1 << 20)",
      ["unit:transport/frame_parser_checksum", "sim:2000"],
      "a peer frame damaged on the way is handed to Raft"),
    M("frame_checksum_not_agreed", "src/transport.c",
      "    p->crc = r->frame_crc; /* an older acceptor leaves it out */",
      "    p->crc = false;",
      ["unit:transport/exchange_both_ways"],
      "nodes of this version talk without frame checksums"),
    M("snapshot_end_marker_ignored", "src/snapshot.c",
      "    if (memcmp(t, SNAPSHOT_END_MAGIC, 8) != 0) {",
      "    if (memcmp(t, SNAPSHOT_END_MAGIC, 1) != 0) {",
      ["unit:snapshot"], "a snapshot without its end marker is loaded"),
    M("snapshot_install_any_term", "src/node_snapshot.c",
      "           (nd->got_kv && m->snap_index == nd->got_index &&\n"
      "            m->snap_term == nd->got_term);",
      "           (nd->got_kv && m->snap_index == nd->got_index);",
      ["py:test_hostile_peers.py::"
       "test_install_message_must_name_the_received_file"],
      "an INSTALL_SNAPSHOT is stepped with a file of another term"),
    M("snapshot_drop_unlinks_local", "src/node_snapshot.c",
      "    if (local)\n        return;\n    char path[SNAPSHOT_PATH_MAX];",
      "    if (local && !local)\n        return;\n"
      "    char path[SNAPSHOT_PATH_MAX];",
      ["nodesim:1000"],
      "dropping a received snapshot unlinks the node's own at that point"),
    M("snapshot_dropped_before_install", "src/node_snapshot.c",
      "    return rs.snap_index == nd->got_index && rs.snap_term == nd->got_term;",
      "    return false && rs.snap_index == nd->got_index &&\n"
      "           rs.snap_term == nd->got_term;",
      ["nodesim:300"],
      "a received snapshot is dropped before the install the core took"),
    M("received_snapshot_not_fsynced", "src/snapshot.c",
      "    rc = fsync(r->fd) < 0 ? -errno : 0;\n    if (close(r->fd) < 0 && rc == 0)",
      "    rc = 0;\n    if (close(r->fd) < 0 && rc == 0)",
      ["py:test_powerloss.py::test_power_cuts_during_install_snapshot"],
      "a received snapshot is renamed into place and installed without an "
      "fsync: a power cut leaves the log compacted behind a file that is "
      "not there"),
    M("snapshot_loaded_on_the_loop", "src/node_io_uv.c",
      "    int rc = uv_queue_work(io.loop, &w->req, snap_load_work, "
      "snap_load_after);",
      "    int rc = (snap_load_work(&w->req), snap_load_after(&w->req, 0), 0);",
      ["py:test_snapshot.py::"
       "test_received_snapshot_loads_while_the_node_serves"],
      "a received snapshot is loaded on the loop: no client or peer is "
      "served until a large table is in memory"),
    M("install_dropped_during_load", "src/node_snapshot.c",
      "    if (m->type != RAFT_MSG_INSTALL_SNAPSHOT || nd->rx_load == NULL ||",
      "    if (true || nd->rx_load == NULL ||",
      ["py:test_snapshot.py::"
       "test_received_snapshot_loads_while_the_node_serves"],
      "the leader's INSTALL_SNAPSHOT that comes while its file loads is "
      "dropped: the install waits for the leader's timeout and a second "
      "transfer"),
    M("held_install_from_a_quiet_leader", "src/node_snapshot.c",
      "    } else if (rs.leader != d.msg.from || rs.term != d.msg.term || "
      "!rs.lease) {",
      "    } else if (false) {",
      ["py:test_snapshot.py::"
       "test_held_install_is_not_taken_from_a_quiet_leader"],
      "the INSTALL_SNAPSHOT held through a load is taken after its leader "
      "went quiet: fresh word from a dead leader delays the failover"),
    M("load_not_called_off", "src/snapshot.c",
      "        if ((i & 4095) == 0 && stop &&\n"
      "            __atomic_load_n(stop, __ATOMIC_RELAXED)) {",
      "        if (false && stop) {",
      ["unit:snapshot/receiver_load_called_off"],
      "a received snapshot's load called off by a closing node runs to its "
      "end: the stop waits for the whole table"),
    M("appends_refused_during_load", "src/node.c",
      "    if (m->type == RAFT_MSG_APPEND && nd->rx_load) {",
      "    if (m->type == RAFT_MSG_APPEND && nd->rx_load && false) {",
      ["py:test_snapshot.py::"
       "test_received_snapshot_loads_while_the_node_serves"],
      "a follower loading a received snapshot refuses the leader's probes, "
      "and the leader sends the whole file again at every heartbeat"),
    M("warm_main_thread_only", "src/pz.c",
      "    if (bytes < pz_warm_min)\n        return;",
      "    if (bytes < pz_warm_min || gettid() != getpid())\n        return;",
      ["unit:pz/warm_on_a_thread_maps_its_arena_in"],
      "a snapshot loaded on the thread pool goes without the heap warming "
      "(2.5 times slower on this VM)"),
    M("warm_ignores_the_hint", "src/pz.c",
      "    uintptr_t h = __atomic_load_n(&w->hint, __ATOMIC_RELAXED);",
      "    uintptr_t h = 0;",
      ["unit:pz/warm_on_a_thread_maps_its_arena_in"],
      "the warm thread maps a thread arena's runs in the order they were "
      "carved, not the one the load takes them in: the load faults through "
      "the runs it reaches first"),
    # --- tokens and sizes -------------------------------------------------
    M("bearer_prefix_accepted", "src/httpd.c",
      "           pz_token_equal(token, strlen(token), h, n);",
      "           pz_token_equal(token, strlen(token), h, "
      "PZ_MIN(n, strlen(token)));",
      ["unit:httpd", "py:test_membership.py"],
      "the node API accepts 'Bearer <token>junk'"),
    M("token_equal_ignores_length", "src/pz.c",
      "    volatile unsigned char diff = (unsigned char)(wlen != glen);",
      "    volatile unsigned char diff = (unsigned char)(glen > wlen);",
      ["unit:pz", "unit:httpd"], "a prefix of the token is accepted"),
    M("peer_token_skipped", "src/transport.c",
      "    if (t->token[0] && !pz_token_equal(t->token, strlen(t->token), "
      "hs->token,",
      "    if (t->token[0] && t->token[1] == '\\001' && "
      "!pz_token_equal(t->token, strlen(t->token), hs->token,",
      ["unit:transport", "py:test_hostile_peers.py"],
      "a Raft peer without the cluster token is accepted"),
    M("peer_cluster_id_unchecked", "src/transport.c",
      "        (t->cfg.cluster_id != 0 && hs->cluster_id != t->cfg.cluster_id)) {",
      "        (t->cfg.cluster_id == 1 && hs->cluster_id != t->cfg.cluster_id)) {",
      ["unit:transport",
       "py:test_storage.py::test_node_of_another_cluster_is_refused"],
      "a node of another cluster is accepted as a peer"),
    M("peer_duplicate_id_accepted", "src/transport.c",
      "    if (hs->node_id == t->cfg.id) {",
      "    if (hs->node_id == t->cfg.id && hs->node_id == 0) {",
      ["unit:transport", "py:test_hostile_peers.py"],
      "a peer using our own node id is accepted"),
    M("peer_version_unchecked", "src/transport.c",
      "    if (hs->version != RAFT_PROTO_VERSION) {",
      "    if (hs->version > RAFT_PROTO_VERSION + 1) {",
      ["unit:transport", "py:test_hostile_peers.py"],
      "a peer speaking another protocol version is accepted"),
    M("peer_reply_id_unchecked", "src/transport.c",
      "    if (r->node_id != p->id) {",
      "    if (r->node_id == 0 && r->node_id != p->id) {",
      ["unit:transport", "py:test_hostile_peers.py::"
       "test_dialled_peer_answering_as_another_node_is_not_used"],
      "a dialled peer answering as another node is used"),
    M("peertls_replaces_the_token", "src/config.c",
      "    if (c->cluster_token[0] != '\\0' || c->cluster_token_none ||\n        pz_split_hostport",
      "    if (c->cluster_token[0] != '\\0' || c->cluster_token_none ||\n        c->peer_tls_cert_file[0] != '\\0' ||\n        pz_split_hostport",
      ["py:test_tls.py::test_peer_tls_does_not_replace_the_token"],
      "with peer TLS and no token, any certificate of the CA naming some "
      "id gets a Raft link"),
    M("peertls_stranger_without_its_token", "src/transport.c",
      "    if (t->token[0] && !pz_token_equal(t->token, strlen(t->token), hs->token,",
      "    if (t->token[0] && !in->c->tls && !pz_token_equal(t->token, strlen(t->token), hs->token,",
      ["unit:transport/tls_strangers_show_the_token",
       "py:test_tls.py::test_peer_certificate_alone_opens_nothing"],
      "over peer TLS a certificate stands in for the cluster token"),
    M("peertls_handshake_before_cert_check", "src/transport.c",
      "    if (!tls_peer_names_id(c->tls, t->cfg.name_to_id, p->id)) {",
      "    if (!tls_peer_names_id(c->tls, t->cfg.name_to_id, p->id) && "
      "p->id == 0) {",
      ["unit:transport/tls_handshake_only_to_the_dialed_member",
       "py:test_tls.py::test_peer_handshake_only_to_the_dialed_member"],
      "the handshake (cluster token) goes to any acceptor with a "
      "certificate of the CA"),
    M("peertls_node_id_as_ip", "src/tls.c",
      "    return some_dns_name(cert, same_name, name);",
      "    if (is_ip(name))\n"
      "        return X509_check_ip_asc(cert, name, 0) == 1;\n"
      "    return some_dns_name(cert, same_name, name);",
      ["unit:tls/ip_looking_node_ids",
       "py:test_tls.py::test_peer_tls_node_ids_that_look_like_ips"],
      "an acceptor looks for an IP subjectAltName for a node id that reads "
      "as an address, the dialer and make-certs.sh for DNS:ID"),
    M("peertls_name_to_id_optional", "src/transport.c",
      "        (tls && cfg->name_to_id == NULL)) {",
      "        (tls && cfg->name_to_id == NULL && cfg->id == 0)) {",
      ["unit:transport/tls_needs_name_to_id"],
      "a transport with peer TLS and no name_to_id starts, and its dialer "
      "refuses every acceptor"),
    M("max_value_ignored", "src/http_parse.c",
      "    else if (op->value && op->vlen > lim->max_value)",
      "    else if (op->value && op->vlen > 2 * lim->max_value)",
      ["unit:http", "py:test_http.py"], "max-value-size not enforced"),
    M("max_key_ignored", "src/http_parse.c",
      "    if (op->key && op->klen > lim->max_key && op->kind != HTTP_OP_RANGE)",
      "    if (op->key && op->klen > 2 * lim->max_key && op->kind != "
      "HTTP_OP_RANGE)",
      ["unit:http", "py:test_http.py"], "max-key-size not enforced"),
    M("grpc_message_size_ignored", "src/grpc_frame.c",
      "            if (r->len > r->max) {",
      "            if (r->len > 2 * r->max) {",
      ["unit:grpc_frame", "unit:grpc"], "grpc-max-message not enforced"),
    M("compaction_steps_untimed", "src/store.c",
      "        s->stats.steps++;\n",
      "",
      ["py:test_log_space.py::test_raft_db_shrinks_after_compaction"],
      "compaction steps missing from their duration histogram"),
    M("tls_reason_is_the_library", "src/tls.c",
      "        if (cause == NULL && !names_a_library(r))",
      "        if (!names_a_library(r) || r != NULL)",
      ["py:test_tls.py::test_reload_certificates"],
      "a TLS file refused as 'PEM lib', OpenSSL's last reason"),
    M("tls_asks_for_a_passphrase", "src/tls.c",
      "    SSL_CTX_set_default_passwd_cb(ctx, no_passphrase);",
      "    (void)no_passphrase;",
      ["py:test_tls.py::test_encrypted_key_refused_without_asking"],
      "an encrypted key's passphrase asked for on the terminal: the loop "
      "waits"),
    M("tls_reason_hides_errno", "src/tls.c",
      "        if (ERR_SYSTEM_ERROR(e)) {",
      "        if (ERR_SYSTEM_ERROR(e) && e == 0) {",
      ["py:test_tls.py::test_bad_files_refused_at_start"],
      "a missing TLS file refused as 'system lib', not 'No such file'"),
    M("stranger_address_dialed_anywhere", "src/transport.c",
      "        (!stranger || addr_on_source(in->c, hs->raft_addr)))",
      "        (!stranger || addr_on_source(in->c, hs->raft_addr) || 1))",
      ["py:test_hostile_peers.py::"
       "test_stranger_cannot_make_the_node_dial_elsewhere"],
      "a stranger makes the node connect to any address it names"),
    M("peer_failures_always_warn", "src/transport.c",
      "                      : loud_level(p->t, &p->t->out_loud,",
      "                      : PZ_LOG_WARNING | 0 * loud_level(p->t, &p->t->out_loud,",
      ["py:test_hostile_peers.py::"
       "test_strangers_answered_cannot_flood_the_log"],
      "every failed dial to a stranger logged as a warning"),
    # --- configuration ------------------------------------------------------
    M("config_max_unchecked", "src/config.c",
      "        if (rc == -2 || out->i < d->min || out->i > d->max) {",
      "        if (rc == -2 || out->i < d->min) {",
      ["unit:config"], "numbers above their maximum are accepted"),
    M("config_tb_as_gb", "src/config.c",
      '{"t", TB}, {"tb", TB}, {NULL, 0},',
      '{"t", TB}, {"tb", GB}, {NULL, 0},',
      ["unit:config/parse_size_units"],
      "1tb read as 1gb, though the sample file gives limits in tb"),
    M("config_election_vs_heartbeat", "src/config.c",
      "    if (c->election_timeout_ms < 3 * c->heartbeat_interval_ms) {",
      "    if (c->election_timeout_ms < c->heartbeat_interval_ms) {",
      ["unit:config"],
      "an election timeout under 3 heartbeats is accepted"),
    M("config_token_blanks", "src/config.c",
      "        ok = v[i] > ' ' && v[i] < 0x7f;",
      "        ok = v[i] >= ' ' && v[i] < 0x7f;",
      ["unit:config"], "a cluster token with blanks is accepted"),
    # --- revisions, compare-and-set, transactions (src/kv.c) -------------
    M("kv_cmp_ne_as_eq", "src/kv.c",
      "    case KV_CMP_NE:\n        return r != 0;",
      "    case KV_CMP_NE:\n        return r == 0;",
      ["unit:kv", "py:test_coord.py"], "a != comparison holds on equality"),
    M("kv_cmp_value_of_absent_key", "src/kv.c",
      "        if (e == NULL)\n            return false;\n"
      "        r = bytes_cmp(",
      "        if (e == NULL)\n            return true;\n"
      "        r = bytes_cmp(",
      ["unit:kv", "py:test_coord.py"],
      "prev_value holds for a key that does not exist"),
    M("kv_revision_per_op", "src/kv.c",
      "    if (!a->bumped) {\n        a->kv->digest -= revision_digest(",
      "    if (a != NULL) {\n        a->kv->digest -= revision_digest(",
      ["unit:kv", "py:test_coord.py"],
      "a transaction advances the revision once per change, not once"),
    M("txn_range_budget_counts_one_more", "src/kv.c",
      "    struct budget_walk w = {0, stop};",
      "    struct budget_walk w = {1, stop};",
      ["unit:kv/txn_range_budget"],
      "a transaction whose RANGE reads exactly as many keys as allowed is "
      "refused as too big"),
    M("txn_put_value_over_limit_encoded", "src/kv.c",
      "    if (o->type == KV_TOP_PUT && o->vlen > KV_VALUE_MAX)",
      "    if (o->type != KV_TOP_PUT && o->vlen > KV_VALUE_MAX)",
      ["unit:kv/txn_malformed"],
      "a transaction PUT of a value over 256 MiB is encoded and proposed, "
      "then refused by every node at apply"),
    M("varint_eleventh_byte_read", "src/kv.c",
      "    for (int i = 0; i < maxb; i++) {",
      "    for (int i = 0; i <= maxb; i++) {",
      ["unit:kv/apply_malformed", "unit:kv/txn_malformed"],
      "a command with a 64-bit varint of 11 bytes is applied (its value "
      "shifted past 64 bits) instead of refused as corrupt"),
    M("lease_restore_refuses_max_id", "src/kv.c",
      "    if (id == 0 || id > KV_LEASE_ID_MAX || ttl == 0 ||",
      "    if (id == 0 || id >= KV_LEASE_ID_MAX || ttl == 0 ||",
      ["unit:lease/restore_limits"],
      "a snapshot holding a lease granted with the largest id cannot be "
      "loaded: the node fails to restart or to install it"),
    M("kv_reserve_doubles", "src/kv.c",
      "    while (s < n)\n        s *= 2;",
      "    while (s <= n)\n        s *= 2;",
      ["unit:kv/reserve_power_of_two_exact"],
      "a snapshot of 2^k keys loads into twice the buckets it needs "
      "(and a shrink keeps twice as many)"),
    M("job_spent_budget_two_steps", "src/kv.c",
      "    uint64_t b = *budget ? *budget : 1;",
      "    uint64_t b = *budget ? *budget : 2;",
      ["unit:kv/job_spent_budget_one_step"],
      "a paused command run with no budget left does two steps: the "
      "loop turn runs longer than its budget allows"),
    # --- out of space (src/node_nospace.c, src/node.c) ------------------
    M("nospace_alarm_ignored", "src/node_nospace.c",
      "    if (nd->alarm_disk)\n        return PZ_ENOSPC;",
      "    if (nd->alarm_disk && nd->alarm_quota)\n        return PZ_ENOSPC;",
      ["py:test_nospace.py"],
      "writes are proposed on a node whose disk is full"),
    M("quota_ignored", "src/node_nospace.c",
      "    if (add == 0 || after <= (uint64_t)quota) {",
      "    if (add == 0 || after <= UINT64_MAX / 2) {",
      ["py:test_nospace.py::test_quota_alarm_allows_deletes"],
      "quota-backend-bytes never raises the alarm"),
    M("quota_inflight_ignored", "src/node_nospace.c",
      "    uint64_t inflight = nd->role == RAFT_LEADER ? "
      "nd->quota_pending_bytes : 0;",
      "    uint64_t inflight = nd->role == RAFT_LEADER ? 0 : "
      "nd->quota_pending_bytes;",
      ["unit:node_sim/quota_counts_writes_in_flight",
       "py:test_nospace.py::test_quota_counts_writes_not_applied_yet"],
      "writes sent at once all pass the quota: only applied data counts"),
    M("quota_pending_kept_on_apply", "src/node.c",
      "    nospace_applied(e->index);\n",
      "",
      ["unit:node_sim/quota_counts_writes_in_flight",
       "py:test_nospace.py::test_quota_counts_writes_not_applied_yet"],
      "applied writes stay counted as in flight: the quota wedges writes"),
    M("quota_pending_kept_on_stepdown", "src/node.c",
      "        nospace_pending_clear(); /* the new leader counts its own */\n",
      "",
      ["unit:node_sim/quota_counts_writes_in_flight"],
      "a node that stops leading keeps counting writes that may never "
      "apply"),
    M("quota_key_overhead_ignored", "src/kv.c",
      "    return kv_bytes(kv) + kv_count(kv) * KV_KEY_OVERHEAD;",
      "    return kv_bytes(kv);",
      ["unit:kv/quota_bytes_count_keys",
       "py:test_nospace.py::test_quota_counts_a_cost_per_key"],
      "empty keys take about 20 times quota-backend-bytes in memory"),
    M("nospace_is_fatal", "src/node.c",
      "    if (status == PZ_ENOSPC || status == PZ_ECANCELED) {",
      "    if ((status == PZ_ENOSPC || status == PZ_ECANCELED) && "
      "status > 0) {",
      ["nodesim:200", "py:test_nospace.py"],
      "a full disk stops the node again"),
    M("vacuum_full_fails_batch", "src/store.c",
      "        b->vacuum_full = true;\n        return 0;",
      "        b->vacuum_full = true;\n        return rc;",
      ["unit:store/vacuum_without_room_fails_no_step"],
      "a vacuum that finds no room fails its compaction step, whose rows "
      "are gone"),
    M("vacuum_full_keeps_vacuuming", "src/store.c",
      "        s->free_pages = 0;\n        s->vacuum_level = 0;",
      "        s->vacuum_level = 0;",
      ["unit:store/vacuum_without_room_fails_no_step"],
      "the store retries a vacuum that found no room at once"),
    M("alarm_kept_on_vacuum_full", "src/node_snapshot.c",
      "            (!full || meta.snap_index > nd->compact_step_from))",
      "            !full)",
      ["unit:node_sim/compaction_step_clears_nospace_alarm"],
      "a compaction step whose rows committed leaves the NOSPACE alarm up "
      "when its vacuum found no room"),
    # --- clients that leave their answers unread (src/conn.c, grpc) ------
    M("send_timeout_ignored", "src/conn.c",
      "        if (c->send_timeout && stalled > c->send_timeout &&",
      "        if (0 && stalled > c->send_timeout &&",
      ["unit:httpd/unread_answer_is_dropped_after_the_body_deadline"],
      "an answer nobody reads is held as long as its client stays"),
    M("progress_by_socket_writes", "src/conn.c",
      "        sent -= PZ_MIN((uint64_t)queued, sent);",
      "        sent -= 0;",
      ["unit:httpd/unread_answer_is_dropped_after_the_body_deadline"],
      "a slow but steady reader is cut while a large send buffer drains"),
    M("evict_ignores_unread", "src/conn.c",
      "        stalled = out_stalled(c, now) >= CONN_EVICT_IDLE_MS;",
      "        stalled = false;",
      ["py:test_hostile_clients.py::"
       "test_answers_left_unread_do_not_hold_slots_or_memory"],
      "connections whose answers go unread keep new clients out"),
    M("output_budget_no_shedding", "src/conn.c",
      "    shed_stalled(c, max > n ? max - n : 0);",
      "    if (max == 1)\n        shed_stalled(c, max > n ? max - n : 0);",
      ["unit:httpd/stalled_answers_make_room_for_a_reader"],
      "connections stalled on their answers keep the output budget from a "
      "client that reads"),
    M("output_budget_ignored", "src/conn.c",
      "        !(c->flags & CONN_ADMITTED) || out_total + n <= max ||",
      "        !(c->flags & CONN_ADMITTED) || true ||",
      ["py:test_hostile_clients.py::"
       "test_answers_waiting_for_all_clients_are_bounded"],
      "answers waiting for clients are bounded per connection only"),
    M("forward_outside_output_budget", "src/http.c",
      "    if (!conn_output_room(h->hc.c, held)) {",
      "    if (held == 0 && !conn_output_room(h->hc.c, held)) {",
      ["py:test_hostile_clients.py::"
       "test_requests_forwarded_to_a_stalled_leader_are_bounded"],
      "a follower holds every request forwarded to a slow leader"),
    M("fwd_answer_outside_output_budget", "src/http.c",
      "    if (bytes && !conn_output_room(h->hc.c, bytes))",
      "    if (bytes && !conn_output_room(h->hc.c, bytes) && bytes == 1)",
      ["py:test_hostile_clients.py::"
       "test_answers_forwarded_from_the_leader_are_bounded"],
      "a follower holds every answer arriving from the leader whatever "
      "max-pending-output says (counted, never refused)"),
    M("httpc_answer_not_held", "src/httpc.c",
      "    bool asks = c->o.hold && r && r->written;",
      "    bool asks = !c->o.hold && r && r->written;",
      ["unit:httpd/client_holds_answers_as_granted",
       "py:test_hostile_clients.py::"
       "test_answers_forwarded_from_the_leader_are_bounded"],
      "the body of an answer arriving grows without asking opts.hold: a "
      "follower holds the leader's answers uncounted"),
    M("fwd_applied_write_said_busy", "src/http.c",
      "    if (h->hc.p.req.method == HTTP_GET ||\n",
      "    if (h->hc.p.req.method != HTTP_DELETE ||\n",
      ["py:test_hostile_clients.py::"
       "test_answers_forwarded_from_the_leader_are_bounded"],
      "a forwarded write the leader applied, whose answer had no room, is "
      "answered 503 retry later as if nothing was done"),
    M("grpc_range_not_held", "src/etcd_kv.c",
      "        if (!grpc_stream_hold_read(st, range_resume))",
      "        if (!grpc_stream_hold_read(st, range_resume) || 1)",
      ["py:test_hostile_clients.py::"
       "test_grpc_answers_wait_for_a_client_that_does_not_read"],
      "etcd Range answers are built at once for a client that reads none"),
    M("watch_queue_uncounted", "src/grpc.c",
      "    if (add > sub && !conn_output_fits(s->c, add - sub))",
      "    if (0 && add > sub && !conn_output_fits(s->c, add - sub))",
      ["py:test_hostile_clients.py::"
       "test_grpc_watch_answers_count_against_the_output_budget"],
      "revisions an etcd watch queues escape max-pending-output"),
    M("stall_ignores_held_answers", "src/conn.c",
      "    if (conn_output_pending(c) + c->out_held == 0) {",
      "    if (conn_output_pending(c) == 0) {",
      ["py:test_hostile_clients.py::"
       "test_grpc_client_that_never_opens_its_window_is_closed"],
      "answers a gRPC client gives no window for are held for ever"),
    M("join_requests_unbounded", "src/node_members.c",
      "        if (learners >= MEMBERS_MAX_NONVOTERS) {",
      "        if (learners >= MEMBERS_MAX_NONVOTERS && 0) {",
      ["py:test_join.py::test_join_requests_add_at_most_two_non_voters"],
      "every join request in mandi becomes a member"),
    M("gateway_watch_line_whole", "src/etcd_gateway.c",
      "    size_t room = HTTPD_STREAM_WANT - pending;",
      "    size_t room = SIZE_MAX;",
      ["py:test_hostile_clients.py::"
       "test_gateway_watch_lines_are_written_as_clients_read"],
      "a gateway watch's line waits whole for a client that reads none"),
    M("etcd_watch_revision_packed_whole", "src/etcd_watch.c",
      "        if (!ww->o.fragment && total > EW_WHOLE_MAX) {",
      "        if (0) {",
      ["py:test_hostile_clients.py::"
       "test_grpc_large_revisions_wait_in_the_history"],
      "a large revision is packed whole for every gRPC watch"),
    M("one_message_calls_held_open", "src/grpc.c",
      "           (st->m->outlives || (!st->was_forwarded && !st->one_message));",
      "           (st->m->outlives || !st->was_forwarded);",
      ["py:test_etcd_watch_lease.py::"
       "test_open_streams_hold_at_most_half_the_connections"],
      "the etcd gateway's keep-alives count as streams held open"),
    M("gateway_watch_never_slow", "src/etcd_gateway.c",
      "            g->turn.starved || watch_lag(&g->w) <= max_lag ||",
      "            g->turn.starved || (true || watch_lag(&g->w) <= max_lag) ||",
      ["py:test_etcd_gateway.py::test_watch_of_a_client_that_does_not_read"],
      "a gateway watch whose client reads nothing is never cancelled"),
    M("etcd_watch_never_slow", "src/etcd_watch.c",
      "            if (ww->w.state == WATCH_LIVE && watch_lag(&ww->w) > max_lag)",
      "            if (ww->w.state == WATCH_LIVE && watch_lag(&ww->w) > max_lag && 0)",
      ["py:test_etcd_watch_lease.py::test_watch_limits"],
      "a gRPC watch whose client reads nothing is never cancelled"),
    M("sse_watches_written_in_the_commit", "src/http_watch.c",
      "            turns_mark(&hw.turns, &ws->turn);\n        return;\n    }\n    const",
      "            { hw.turns.left = SIZE_MAX - 1; httpd_stream_kick(ws->hc);"
      " hw.turns.left = SIZE_MAX; }\n        return;\n    }\n    const",
      ["py:test_hostile_clients.py::"
       "test_large_revisions_for_many_sse_watches_do_not_hold_the_loop"],
      "GET /watch streams are written inside the commit that notifies them"),
    M("unpacked_requests_uncharged", "src/grpc.c",
      "    st->unpacked_bytes = bytes;",
      "    st->unpacked_bytes = 0 * bytes;",
      ["py:test_hostile_clients.py::"
       "test_requests_waiting_on_the_cluster_are_not_cut"],
      "an etcd call's unpacked request is not charged while it waits"),
    M("reset_streams_keep_their_charge", "src/grpc.c",
      "    conn_in_release(s->c, st->charged);\n    if (st->in_bq) {",
      "    conn_in_release(s->c, 0 * st->charged);\n    if (st->in_bq) {",
      ["py:test_hostile_clients.py::"
       "test_one_message_calls_and_resets_mid_message"],
      "a stream reset in the middle of its message keeps its budget"),
    M("one_message_header_ignored", "src/grpc.c",
      "            st->one_message = true;",
      "            st->one_message = false;",
      ["py:test_hostile_clients.py::"
       "test_one_message_calls_and_resets_mid_message"],
      "a keep-alive relayed as one message may stay open for good"),
    M("sse_streams_waiting_their_turn_judged_slow", "src/http_watch.c",
      "            conn_output_stalled(ws->hc->c) > WATCH_STALL_MS) {",
      "            now - ws->last_write > WATCH_STALL_MS) {",
      ["py:test_hostile_clients.py::"
       "test_large_revisions_for_many_sse_watches_do_not_hold_the_loop"],
      "a GET /watch stream waiting for the idle pass is cancelled as slow"),
    M("sse_watch_start_past_the_highest_revision", "src/http_parse.c",
      "        if (v > (KV_REVISION_MAX - d) / 10)",
      "        if (v > (UINT64_MAX - d) / 10)",
      ["unit:http/parse_revision",
       "py:test_watch.py::test_bad_parameters_are_400"],
      "a GET /watch start or Last-Event-ID past the highest revision is "
      "taken: a start that never comes, or a wrapped resume"),
    M("watch_streams_take_every_slot", "src/http_watch.c",
      "    return hw.n_streaming + etcd_gw_streams() < cap;",
      "    return cap > 0;",
      ["py:test_watch.py::test_watch_streams_take_at_most_half_the_clients"],
      "watch streams, never evicted, can hold every HTTP client slot"),
    M("open_streams_take_every_slot", "src/grpc.c",
      "        if (gs->open_ended_conns >= PZ_MAX(gs->ls.max_conns / 2, (size_t)1))",
      "        if (gs->open_ended_conns >= gs->ls.max_conns + 1)",
      ["py:test_etcd_watch_lease.py::"
       "test_open_streams_hold_at_most_half_the_connections"],
      "connections holding open streams can hold every gRPC client slot"),
    M("uncommitted_unbounded", "src/raft.c",
      "    if (bounded && r->cfg.max_uncommitted != 0 && r->uncommitted > 0 &&",
      "    if (bounded && false && r->uncommitted > 0 &&",
      ["py:test_hostile_clients.py::"
       "test_writes_beyond_what_the_cluster_commits_are_refused"],
      "the leader takes writes without bound while nothing commits"),
    M("open_streams_uncapped", "src/grpc.c",
      "    if (gs->open_ended_streams >= 2 * gs->ls.max_conns)",
      "    if (gs->open_ended_streams >= 2000 * gs->ls.max_conns)",
      ["py:test_hostile_clients.py::"
       "test_open_streams_are_capped_and_hold_no_budget"],
      "streams that stay open hold memory nothing bounds"),
    M("waiting_calls_uncharged", "src/grpc.c",
      "    bool waits = st->open_ended && !receiving(st);",
      "    bool waits = !receiving(st);",
      ["py:test_hostile_clients.py::"
       "test_requests_waiting_on_the_cluster_are_not_cut"],
      "calls waiting on the cluster hold memory no budget counts"),
    M("slow_readers_never_shed", "src/conn.c",
      "    if (t == 0 || c->drain_rate == UINT64_MAX)",
      "    if (t != 0 || c->drain_rate == UINT64_MAX)",
      ["unit:httpd/slow_readers_make_room_for_a_reader"],
      "a client reading a segment at a time holds its answer for good"),
    M("lease_outlives_the_refusal", "src/raft.c",
      "           PZ_MIN(pr->lease_ns, r->cfg.lease_ns);",
      "           2 * PZ_MIN(pr->lease_ns, r->cfg.lease_ns);",
      ["unit:raft/lease_reads"],
      "a leader's read lease lasts past the followers' refusal to vote"),
    M("lease_ignores_the_promise", "src/raft.c",
      "           PZ_MIN(pr->lease_ns, r->cfg.lease_ns);",
      "           r->cfg.lease_ns;",
      ["unit:raft/lease_counts_what_the_followers_promise"],
      "a leader counts on its own election timeout, not the followers'"),
    M("promise_before_the_term_is_durable", "src/raft.c",
      "    if (r->durable_term == r->term)\n        resp->lease_ns",
      "    if (r->durable_term <= r->term)\n        resp->lease_ns",
      ["unit:raft/restarted_node_refuses_votes_for_a_timeout"],
      "a node promises in a term a restart would not remember"),
    M("late_answer_sets_the_promise", "src/raft.c",
      "    if (m->context > pr->read_acked && m->context <= r->read_round) {",
      "    pr->lease_ns = m->lease_ns;\n"
      "    if (m->context > pr->read_acked && m->context <= r->read_round) {",
      ["unit:raft/lease_counts_what_the_followers_promise"],
      "a late answer's promise is paired with a later round"),
    M("restart_forgets_an_earlier_promise", "src/raft.c",
      "        r->promised_until = r->cfg.clock(r->cfg.clock_arg) + ns;",
      "        r->promised_until = 0 * ns;",
      ["sim:10000", "unit:raft/restarted_node_keeps_an_earlier_promise"],
      "a node restarted with a shorter election timeout votes within the "
      "promise of its run before"),
    M("restart_campaigns_within_an_earlier_promise", "src/raft.c",
      "        if (promotable(r) && r->election_elapsed >= r->randomized_timeout &&\n"
      "            !promise_holds(r))",
      "        if (promotable(r) && r->election_elapsed >= r->randomized_timeout)",
      ["sim:10000", "unit:raft/restarted_node_keeps_an_earlier_promise"],
      "a restarted node votes for itself within the promise of its run "
      "before"),
    M("node_forgets_an_earlier_promise", "src/node.c",
      "    raft_restore_promise(nd->raft, binds);",
      "    raft_restore_promise(nd->raft, 0 * binds);",
      ["py:test_cluster.py::"
       "test_restart_with_a_shorter_timeout_keeps_the_old_promise"],
      "the node does not hand the stored promise to the core"),
    M("node_keeps_a_promise_without_margin", "src/node.c",
      "    return promise_ns / 9 * 10;",
      "    return promise_ns;",
      ["py:test_cluster.py::"
       "test_restart_with_a_shorter_timeout_keeps_the_old_promise"],
      "a restarted node refuses for the promise itself, on a clock that may "
      "run 10% fast"),
    M("node_lowers_the_promise_early", "src/node.c",
      "(nd->promise_lower_at == 0 || NIO(clock_ns) < nd->promise_lower_at)",
      "(nd->promise_lower_at == 0 || NIO(clock_ns) < 0 * nd->promise_lower_at)",
      ["py:test_cluster.py::"
       "test_restart_with_a_shorter_timeout_keeps_the_old_promise"],
      "the record of an earlier promise goes before the promise does"),
    M("node_promises_more_than_it_stored", "src/node.c",
      "    int rv = NIO(store_meta_set_promise, nd->promise_ns);\n"
      "    if (rv == PZ_ENOSPC && m.promise_ns < nd->promise_ns) {",
      "    int rv = 0;\n"
      "    if (rv == PZ_ENOSPC && m.promise_ns < nd->promise_ns) {",
      ["py:test_cluster.py::"
       "test_restart_with_a_shorter_timeout_keeps_the_old_promise"],
      "a run promises more than the store records for the next one"),
    M("node_promises_what_it_could_not_record", "src/node.c",
      "        raft_set_promise(nd->raft, m.promise_ns);",
      "        raft_set_promise(nd->raft, nd->promise_ns);",
      ["unit:node_sim/unrecorded_promise_is_not_made"],
      "on a full disk a node promises leaders more than it recorded"),
    M("promise_end_stands_at_once", "src/raft.c",
      "                PZ_MIN(r->election_elapsed, r->cfg.election_ticks);",
      "                PZ_MAX(r->election_elapsed, r->cfg.election_ticks);",
      ["unit:raft/restarted_node_keeps_an_earlier_promise"],
      "nodes restarted together all stand at the tick their promises end"),
    M("lone_voter_campaigns_uncommitted", "src/node.c",
      "        st.commit >= conf_index)",
      "        (st.commit >= conf_index || 1))",
      ["py:test_cluster.py::"
       "test_lone_voter_with_an_uncommitted_removal_waits"],
      "a restarted lone voter elects itself while a leader that removed "
      "itself may still read by a lease counting on it"),
    M("lease_renewed_while_a_round_is_out", "src/raft.c",
      "    *renew = q >= r->read_round &&",
      "    *renew = q >= 0 * r->read_round &&",
      ["unit:raft/lease_reads"],
      "every read asks for a new round while a renewing one is out"),
    M("lease_without_check_quorum", "src/raft.c",
      "(cfg->clock == NULL || cfg->lease_ns == 0 || !cfg->check_quorum)) {",
      "(cfg->clock == NULL || cfg->lease_ns == 0)) {",
      ["unit:raft/new_rejects_bad_config"],
      "read leases accepted without CheckQuorum (a leader does not "
      "refuse votes)"),
    M("booting_nodes_vote_at_once", "src/raft.c",
      "    r->heard = r->cfg.lease_ns > 0 && hs->term > 0;",
      "    r->heard = false;",
      ["unit:raft/restarted_node_refuses_votes_for_a_timeout"],
      "a restarted follower votes at once, though a lease counts on it"),
    M("learned_term_clears_the_refusal", "src/raft.c",
      "        in_lease(r))\n        can_vote = false;",
      "        in_lease(r))\n        can_vote = can_vote;",
      ["unit:raft/"
       "vote_refused_within_the_timeout_of_a_leader_whatever_the_term"],
      "a follower that learned a term without a leader votes at once"),
    M("transfer_keeps_the_lease", "src/raft.c",
      "    r->lease_void = true; /* the target's votes bypass in_lease */",
      "    r->lease_void = false;",
      ["unit:raft/lease_given_up_by_a_transfer"],
      "a leader keeps its read lease after it sent TIMEOUT_NOW"),
    M("lease_never_used", "src/node.c",
      "        .lease_reads = cfg->raft_read_lease,",
      "        .lease_reads = false,",
      ["py:test_cluster.py::test_reads_on_the_leader_use_its_lease"],
      "raft-read-lease is ignored: every read waits for a round"),
    # --- log writes on the loop (src/node.c, src/conn.c) ------------------
    M("alone_ignores_clients", "src/node.c",
      "    bool alone = rd->ss.role == RAFT_FOLLOWER && nd->io.clients_quiet &&\n"
      "                 NIO(clients_quiet);",
      "    bool alone = rd->ss.role == RAFT_FOLLOWER;",
      ["py:test_metrics.py::test_followers_without_clients_write_on_the_loop"],
      "a follower with clients holds its loop through every batch's fsync"),
    M("client_input_not_noted", "src/conn.c",
      "        client_input_at = uv_now(loop);",
      "        (void)0;",
      ["py:test_metrics.py::test_followers_without_clients_write_on_the_loop"],
      "clients of a follower never count: it writes on the loop at any load"),
    M("alone_never", "src/node.c",
      "    bool alone = rd->ss.role == RAFT_FOLLOWER && nd->io.clients_quiet &&",
      "    bool alone = false && nd->io.clients_quiet &&",
      ["py:test_metrics.py::test_followers_without_clients_write_on_the_loop"],
      "a follower alone still hands every batch to a worker"),
    M("checkpoint_never", "src/store.c",
      "    if (rc == 0 && s->wal_frames >= CKPT_FRAMES)\n",
      "    if (rc == 0 && s->wal_frames < 0)\n",
      ["unit:store/wal_checkpointed_after_1000_frames"],
      "the WAL is never checkpointed while the node runs: it grows "
      "without bound and every fsync also writes the file's new size"),
    M("checkpoint_failure_silent", "src/store.c",
      "        ck->failures++;\n",
      "",
      ["unit:store/failed_checkpoints_keep_the_wal",
       "py:test_storage.py::test_failed_checkpoints_are_reported_and_lose_nothing"],
      "a checkpoint that fails is not counted: the WAL grows unseen"),
    M("strangers_frames_forced", "src/transport.c",
      "    if (!in->stranger) {\n        conn_in_force(in->c, n);",
      "    if (true) {\n        conn_in_force(in->c, n);",
      ["unit:transport/stranger_frames_share_a_quarter",
       "py:test_hostile_peers.py::"
       "test_strangers_partial_frames_leave_clients_their_budget"],
      "dialers not in the configuration take the whole partial-input "
      "budget from clients"),
    M("held_request_refused_and_freed", "src/httpd.c",
      "        if (!hc->answering) {\n            refuse_busy(hc);",
      "        if (true) {\n            refuse_busy(hc);",
      ["py:test_forward_retry.py::"
       "test_input_while_a_forward_is_held_does_not_free_it"],
      "input during a held request frees it while a forward still reads it"),
    M("ping_answers_are_progress", "src/conn.c",
      "        uint64_t ctrl = now_ctrl - c->stall_ctrl;",
      "        uint64_t ctrl = 0 * now_ctrl;",
      ["py:test_hostile_clients.py::"
       "test_pings_are_no_progress_for_answers_held_without_a_window"],
      "a client sending PINGs holds answers and budget without a window"),
    M("tls_ciphertext_is_activity", "src/conn.c",
      "    if (!c->tls || !tls_handshake_done(c->tls))\n        activity(c);",
      "    activity(c);",
      ["py:test_tls.py::test_trickled_records_do_not_hold_client_slots"],
      "clients trickling a TLS record are never idle: they hold every "
      "slot"),
    M("txn_keys_only_sorts_without_values", "src/etcd_kv.c",
      "bool by_value = (int)r->sort_target == ETCD_SORT_VALUE;",
      "bool by_value = false;",
      ["py:test_etcd.py::test_grpc_headers_and_errors"],
      "a txn's keys_only range sorted by value comes in key order"),
    M("txn_range_counts_the_walk", "src/kv.c",
      "        if (more && s && s->count_range)",
      "        if (more && s && s->count_range && !s->item)",
      ["unit:kv/range_count_range",
       "py:test_etcd.py::test_txn_range_count_is_the_whole_range"],
      "a txn's range with a limit counts only the limit + 1 keys walked, "
      "not the whole range as etcd and a plain Range"),
    M("ignore_value_trusts_a_lagging_leader", "src/etcd_kv.c",
      "        if (e->confirmed) {",
      "        if (e->confirmed || node_is_leader()) {",
      ["py:test_etcd.py::test_ignore_value_put_on_a_leader_still_applying"],
      "a put with ignore_value answers `key not found` from a leader's "
      "copy that has not applied a key written in an earlier term"),
    M("watch_cut_waits_for_a_timer", "src/etcd_watch.c",
      "        grpc_stream_flush(es->st); /* the reset; may free es */\n",
      "",
      ["py:test_hostile_clients.py::"
       "test_watch_cut_mid_revision_is_reset_at_once"],
      "a watch cut mid-revision is reset only when a timer flushes"),
    {"name": "marked_watch_escapes_the_caps",
     "edits": [("src/grpc.c",
                "           (st->m->outlives || (!st->was_forwarded && "
                "!st->one_message));",
                "           (!st->was_forwarded && !st->one_message);"),
               ("src/grpc.c",
                "    if (!streaming_request(st) && !st->m->outlives)",
                "    if (!streaming_request(st) && "
                "st->m->kind != M_HEALTH_WATCH)")],
     "tests": ["py:test_hostile_clients.py::"
               "test_marked_watches_are_open_streams"],
     "why": "a Watch marked as a one-message call stays open outside "
            "every cap"},
    M("trailers_uncounted", "src/grpc.c",
      "    st->hdr_bytes += namelen + valuelen + 32;\n",
      "    if (frame->headers.cat == NGHTTP2_HCAT_REQUEST)\n"
      "        st->hdr_bytes += namelen + valuelen + 32;\n",
      ["py:test_hostile_clients.py::"
       "test_hpack_bomb_in_request_headers_and_trailers"],
      "request trailers escape the header limit: an HPACK bomb costs "
      "seconds of CPU"),
    M("keepalive_renews_an_expired_lease", "src/lease.c",
      "    if (d->revoke_at || now >= d->deadline)\n        return LEASE_KA_EXPIRED;",
      "    if (false)\n        return LEASE_KA_EXPIRED;",
      ["unit:lease/tracker_keepalive_after_expiry",
       "py:test_etcd_watch_lease.py::"
       "test_keepalive_after_expiry_renews_nothing"],
      "a keep-alive renews a lease whose revoke is on its way: two lock "
      "holders"),
    M("watch_key_unbounded", "src/etcd_watch.c",
      "    size_t max_key = grpc_stream_server(es->st)->max_key;",
      "    size_t max_key = SIZE_MAX;",
      ["py:test_etcd_watch_lease.py::test_watch_key_over_max_key_size"],
      "a watch's key of any size is held for the watch's life"),
    M("watch_progress_two_before_start", "src/watch.c",
      "    return rev + 1 >= w->start;",
      "    return rev + 2 >= w->start;",
      ["unit:watch/progress_never_before_start"],
      "a progress report may name the revision two before a watch's "
      "start: a client resuming from it gets a revision it never asked for"),
    M("etcd_progress_notify_before_start", "src/etcd_watch.c",
      "                watch_caught_up(&ww->w) && watch_progress_ok(&ww->w, rev)) {",
      "                watch_caught_up(&ww->w) && (watch_progress_ok(&ww->w, rev) || rev)) {",
      ["py:test_etcd_watch_lease.py::"
       "test_progress_never_before_a_future_start",
       "py:test_etcd_watch_lease.py::"
       "test_progress_never_before_the_start_on_a_lagging_node"],
      "progress_notify reports name a lagging node's revision, below the "
      "watch's start: clientv3 resumes the watch before its start"),
    M("etcd_progress_request_before_start", "src/etcd_watch.c",
      "    if (es->head == NULL && es->progress_pending && progress_ok(es)) {",
      "    if (es->head == NULL && es->progress_pending && (progress_ok(es) || true)) {",
      ["py:test_etcd_watch_lease.py::"
       "test_progress_never_before_a_future_start",
       "py:test_etcd_watch_lease.py::"
       "test_progress_never_before_the_start_on_a_lagging_node"],
      "a progress request is answered at a revision below a watch's "
      "start: every watch of the stream resumes there"),
    M("etcd_progress_request_held_forever", "src/etcd_watch.c",
      "        if (es->progress_pending && es->head == NULL && !es->cut)",
      "        if (es->progress_pending && es->head == NULL && es->cut)",
      ["py:test_etcd_watch_lease.py::"
       "test_progress_never_before_a_future_start"],
      "a progress request held back for a watch's start is answered only "
      "once an event comes for the stream"),
    M("etcd_watch_negative_start_compacted", "src/etcd_map.c",
      "    if (start_revision < 0)\n        return PZ_EINVAL;",
      "    if (start_revision < 0)\n        return PZ_ENOTFOUND;",
      ["unit:etcd_map/watch_keys_and_start",
       "py:test_etcd_watch_lease.py::test_watch_negative_start_revision",
       "py:test_etcd_gateway.py::test_watch_negative_start_revision"],
      "a negative start_revision is answered as compacted: a client "
      "resuming from compact_revision replays the whole history"),
    M("one_client_takes_every_turn", "src/conn.c",
      "    size_t share = limits.turn_input ? limits.turn_input : CONN_TURN_INPUT;",
      "    size_t share = SIZE_MAX;",
      ["unit:httpd/one_client_takes_a_share_of_each_turn"],
      "a client sending as fast as it can delays every other client by "
      "all it sent"),
    M("snapshot_file_conf_unchecked", "src/node_snapshot.c",
      "    if (same)\n        return NULL;",
      "    if (same || len > 0)\n        return NULL;",
      ["py:test_hostile_peers.py::"
       "test_snapshot_file_configuration_must_be_the_messages"],
      "a received snapshot whose file names another configuration than "
      "its message is installed: the node restarts with it, or not at all"),
    M("join_lines_unbounded", "src/node_members.c",
      "                      JOIN_LOG_BURST, &dropped))\n        return;",
      "                      JOIN_LOG_BURST, &dropped) && false)\n"
      "        return;",
      ["py:test_join.py::test_lying_mandi_cannot_flood_the_log"],
      "a lying mandi fills the leader's log"),
    M("lowered_term_taken_for_a_new_node", "src/store.c",
      "    if (s->hs.term < PZ_MAX(s->last_term, s->meta.snap_term) ||",
      "    if (s->hs.term < PZ_MAX(s->last_term, s->meta.snap_term) && false &&",
      ["py:test_storage.py::test_lowered_hard_state_term_is_refused"],
      "a hard state whose term was lowered on disk: the node forms a new "
      "cluster over its log, or votes twice in a term"),
    M("data_dir_of_another_node_taken", "src/node.c",
      "    if (rv == 0 && check_owner(&meta, err, errlen) < 0) {",
      "    if (rv == 0 && check_owner(&meta, err, errlen) < 0 && false) {",
      ["py:test_storage.py::test_data_dir_of_another_node_is_refused"],
      "a node starts on another node's log and vote"),
    M("snapshot_name_and_header_disagree", "src/snapshot.c",
      "        if (lrc == 0 && (m.index != list[i].index || m.term != list[i].term)) {",
      "        if (lrc == 0 && false) {",
      ["unit:snapshot/name_and_header_disagree"],
      "a snapshot file whose name and header disagree is trusted"),
    M("tls_records_are_progress", "src/conn.c",
      "    return c->ctrl_sent + (c->tls ? tls_overhead(c->tls) : 0);",
      "    return c->ctrl_sent;",
      ["py:test_tls.py::test_pings_over_tls_are_no_progress_either"],
      "over TLS a client sending PINGs holds answers and budget without a "
      "window"),
    M("eviction_ignores_the_configuration", "src/transport.c",
      "            in_recheck(o); /* one our configuration names now stays */\n",
      "",
      ["unit:transport/stranger_named_since_is_not_evicted"],
      "a member's link is closed to make room for a stranger"),
    M("joining_first_contact_a_stranger", "src/transport.c",
      "(kind == TRANSPORT_PEER_JOINING && t->cfg.cluster_id != 0);",
      "(kind == TRANSPORT_PEER_JOINING);",
      ["py:test_hostile_peers.py::"
       "test_strangers_partial_frames_leave_clients_their_budget"],
      "a joining node's link from its leader can be pushed out by "
      "strangers"),
    M("config_rules_name_no_place", "src/config.c",
      "        r->at != NULL ? where_source(r->at, buf, sizeof buf, &line) : NULL;",
      "        r->at != NULL && line < 0 ? where_source(r->at, buf, sizeof buf, &line) : NULL;",
      ["unit:config/cross_field_names_the_place"],
      "an error between two directives names no file and line"),
    M("peer_frames_meet_the_hard_limit", "src/transport.c",
      "    c->flags |= CONN_OWN_BOUNDS;\n",
      "",
      ["unit:transport/frames_past_the_hard_limit_go"],
      "a Raft frame over conn-hard-limit closes the link on every attempt"),
    # --- tokens and key permissions (src/auth.c, src/tokens.c) ---------
    M("readonly_token_writes", "src/auth.c",
      "    if (write && !(t->rights & TOKEN_WRITE))\n        return deny(why, whylen, t, \"is read-only\");",
      "    if (write && !(t->rights & TOKEN_WRITE) && whylen == 0)\n        return deny(why, whylen, t, \"is read-only\");",
      AUTH, "a read-only token writes"),
    M("etcd_txn_failure_unchecked", "src/auth.c",
      "    if (rv == AUTH_OK)\n        rv = etcd_ops(t, q->failure, q->n_failure, depth, why, whylen);",
      "",
      AUTH, "an etcd Txn's failure branch escapes a token's prefixes"),
    M("etcd_nested_txn_unchecked", "src/auth.c",
      "            rv = etcd_txn(t, o->request_txn, depth + 1, why, whylen);",
      "            rv = depth > TXN_DEPTH_MAX ? etcd_txn(t, o->request_txn, depth + 1, why, whylen) : AUTH_OK;",
      AUTH, "a nested etcd Txn escapes a token's prefixes"),
    M("http_range_checked_at_its_key", "src/auth.c",
      "        return need_range(t, k, op->klen, (const uint8_t *)op->end, op->elen,\n                          op->to_end, why, whylen);",
      "        return need_key(t, k, op->klen, why, whylen);",
      AUTH, "GET /range is checked at its first key only"),
    M("http_watch_prefix_as_key", "src/auth.c",
      "        rv = need_range(t, (uint8_t *)pre, plen, end, el < 0 ? 0 : (size_t)el,\n                        el < 0, why, whylen);",
      "        rv = need_key(t, (uint8_t *)pre, plen, why, whylen); (void)el;",
      AUTH, "GET /watch?prefix= is checked as one key"),
    M("prefixed_token_is_admin", "src/auth.c",
      "    if (!(t->rights & TOKEN_WRITE) || token_restricted(t))\n        return deny(why, whylen, t,\n                    \"may not do this: it needs an rw token without prefixes\");",
      "    if (!(t->rights & TOKEN_WRITE))\n        return deny(why, whylen, t,\n                    \"may not do this: it needs an rw token without prefixes\");",
      AUTH, "a prefix-limited rw token does admin work"),
    M("http_txn_compares_unchecked", "src/auth.c",
      "    for (size_t i = 0; i < c.ncmp && rv == AUTH_OK; i++)\n        rv = need_key(t, cmps[i].key, cmps[i].klen, why, whylen);",
      "",
      AUTH, "an HTTP transaction's compares read outside a token's prefixes"),
    M("etcd_txn_compares_unchecked", "src/auth.c",
      "    for (size_t i = 0; i < q->n_compare && rv == AUTH_OK; i++)\n        rv = etcd_range(t, &q->compare[i]->key, &q->compare[i]->range_end,\n                        why, whylen);",
      "",
      AUTH, "an etcd Txn's compares read outside a token's prefixes"),
    M("prefixed_token_hashes_all", "src/auth.c",
      "        if (token_restricted(t))\n            return deny(why, whylen, t,\n                        \"may not do this: a hash covers every key\");",
      "",
      AUTH, "a prefix-limited token hashes every key"),
    M("http_txn_delete_range_as_key", "src/auth.c",
      "        if (o->type == KV_TOP_DELRANGE || o->type == KV_TOP_RANGE)",
      "        if (o->type == KV_TOP_RANGE)",
      AUTH, "an HTTP transaction's delete_range is checked at its first key only"),
    M("prefixed_token_lists_lease_keys", "src/auth.c",
      "        if (!op->keys_only)\n            return need(t, true, why, whylen);\n        /* its keys may lie anywhere */\n        __attribute__((fallthrough));",
      "        return need(t, true, why, whylen);",
      AUTH, "a prefix-limited token lists a lease's keys anywhere"),
    M("readonly_token_writes_grpc", "src/auth.c",
      "    if (rv == AUTH_OK)\n        rv = need(t, write, why, whylen);\n    if (rv == AUTH_OK)\n        rv = need_key(t, key, klen, why, whylen);",
      "    if (rv == AUTH_OK)\n        rv = need(t, write && klen == 0, why, whylen);\n    if (rv == AUTH_OK)\n        rv = need_key(t, key, klen, why, whylen);",
      AUTH, "a read-only token writes through PyazDB's gRPC API"),
    M("token_range_end_unbounded", "src/tokens.c",
      "        if (!to_end && cmp(to, tlen, p->end, (size_t)p->elen) <= 0)",
      "        if (!to_end && cmp(to, tlen, p->end, (size_t)p->elen) <= 1)",
      AUTH, "a range that ends past a token's prefix is allowed"),
    M("token_range_to_end_allowed", "src/tokens.c",
      "        if (p->elen < 0)\n            return true;",
      "        if (p->elen < 0 || to_end)\n            return true;",
      AUTH, "a range to the end of the keyspace is allowed to a prefix-limited token"),
    M("token_key_shorter_than_prefix", "src/tokens.c",
      "        if (klen >= p->len && memcmp(k, p->p, p->len) == 0)",
      "        if (memcmp(k, p->p, klen < p->len ? klen : p->len) == 0)",
      AUTH, "a key shorter than a token's prefix passes as inside it"),
    M("token_digest_first_byte", "src/tokens.c",
      "        int c = memcmp(d, t->digest, SHA256_SIZE);",
      "        int c = memcmp(d, t->digest, 1);",
      AUTH, "a wrong token whose digest begins as a real one's is taken"),
    M("token_lookup_misses_last", "src/tokens.c",
      "    size_t lo = 0, hi = s->n;",
      "    size_t lo = 0, hi = s->n - (s->n > 1);",
      ["unit:tokens/scale", "unit:tokens"],
      "the token of the greatest digest is never found"),
    M("token_repeat_missed", "src/tokens.c",
      "        if (i > 0 && same(v[head], v[i])) {",
      "        if (i > 1 && same(v[head], v[i])) {",
      ["unit:tokens/repeats", "unit:tokens"],
      "a repeated name or token first in sorted order is let through"),
    M("token_repeat_names_first_line", "src/tokens.c",
      "    int c = strcmp(x->name, y->name);\n    return c ? c : (x > y) - (x < y);",
      "    int c = strcmp(x->name, y->name);\n    return c ? c : (x < y) - (x > y);",
      ["unit:tokens/repeats", "unit:tokens"],
      "a repeated name is refused at the line it repeats, not at the repeat"),
    M("status_digest_for_anyone", "src/http.c",
      "    if (auth_http_sees_all(&h->hc.p.req)) {",
      "    if (auth_http_sees_all(&h->hc.p.req) || 1) {",
      ["py:test_auth.py::"
       "test_status_digest_only_for_tokens_that_read_every_key"],
      "an open /status lets anyone test a guess at a value against the "
      "digest"),
    M("prefixed_token_sees_the_digest", "src/auth.c",
      "    return t != NULL && !token_restricted(t);",
      "    return t != NULL;",
      AUTH, "a prefix-limited token tests guesses at other keys' values"),
    M("gateway_token_uncut", "src/etcd_gateway.c",
      "        g->cred = pz_strndup(av, PZ_MIN(an, TOKEN_MAX + 1));",
      "        g->cred = pz_strndup(av, an);",
      ["py:test_auth.py::test_etcd_json_gateway_with_tokens"],
      "a gateway token over the gRPC header limit gets 500, not 401"),
    # --- the store's history, metadata and leases (src/watch.c, src/kv.c,
    #     src/lease.c) ----------------------------------------------------
    M("watch_history_start_kept", "src/watch.c",
      "            drop_oldest(h);\n        h->first_rev = rev + 1;",
      "            drop_oldest(h);\n        h->first_rev = rev;",
      ["unit:watch"],
      "a watch may start at a revision the history dropped: its events "
      "are lost unseen"),
    M("watch_start_one_before_history", "src/watch.c",
      "    if (start < h->first_rev)\n        return PZ_ENOTFOUND;",
      "    if (start + 1 < h->first_rev)\n        return PZ_ENOTFOUND;",
      ["unit:watch"],
      "a watch one revision before the history starts, instead of compacted"),
    M("watch_range_end_inclusive", "src/watch.c",
      "    return w->to_end || keycmp(e->key, e->klen, w->to, w->tlen) < 0;",
      "    return w->to_end || keycmp(e->key, e->klen, w->to, w->tlen) <= 0;",
      ["unit:watch"],
      "a watch of [from, to) sees the key to"),
    M("watch_start_skips_its_revision", "src/watch.c",
      "        if (watch_event_at(h, mid)->rev < rev)",
      "        if (watch_event_at(h, mid)->rev <= rev)",
      ["unit:watch"],
      "a watch from revision R starts after R's events"),
    M("watch_reset_keeps_watchers", "src/watch.c",
      "        if (held || next_wanted(w) <= rev)\n            set_dirty(h, w);",
      "        if (held)\n            set_dirty(h, w);",
      ["unit:watch"],
      "watchers outlive a snapshot's reset of the history, missing the "
      "changes"),
    M("watch_reset_cancels_future_watchers", "src/watch.c",
      "        if (held || next_wanted(w) <= rev)\n            set_dirty(h, w);",
      "        if (held || next_wanted(w) > 0)\n            set_dirty(h, w);",
      ["unit:watch/reset_keeps_watchers_past_it",
       "py:test_watch.py::test_future_watch_survives_a_snapshot_installed_under_it"],
      "a snapshot cancels a watch starting after it as compacted, with a "
      "compact_revision below its start"),
    M("watch_reset_keeps_held_cursor", "src/watch.c",
      "        bool held = w->dirty && w->seq < h->committed_seq;",
      "        bool held = false;",
      ["unit:watch/reset_keeps_watchers_past_it"],
      "a watch delivering a revision piecewise outlives the reset that "
      "freed the revision's events"),
    M("watch_reset_keeps_watcher_wanting_its_revision", "src/watch.c",
      "        if (held || next_wanted(w) <= rev)\n            set_dirty(h, w);",
      "        if (held || next_wanted(w) < rev)\n            set_dirty(h, w);",
      ["unit:watch/reset_at_the_revision_wanted_next_cancels"],
      "a watch that wants exactly the revision a snapshot installs stays "
      "live and never sees that revision's changes"),
    M("watch_range_to_other_key_indexed_as_key", "src/watch.c",
      "    if (w->tlen == w->flen + 1 && w->to[w->flen] == 0 &&\n"
      "        (w->flen == 0 || memcmp(w->to, w->from, w->flen) == 0))",
      "    if (w->tlen == w->flen + 1 && w->to[w->flen] == 0)",
      ["unit:watch/range_ending_at_another_key_is_not_exact"],
      "a watch of [a, b\\0) is indexed as the key a alone: it never sees "
      "the changes to the other keys of its range"),
    M("watch_history_full_at_its_byte_limit", "src/watch.c",
      "           (h->count > h->lim.max_events || h->bytes > h->lim.max_bytes)) {",
      "           (h->count > h->lim.max_events || h->bytes >= h->lim.max_bytes)) {",
      ["unit:watch/history_at_its_limits_keeps_all"],
      "a history exactly at watch-history-bytes drops its oldest revision: "
      "a watch from it is refused as compacted"),
    M("lease_expires_early", "src/lease.c",
      "        if (now < d->deadline)\n            continue;",
      "        if (now + 500 < d->deadline)\n            continue;",
      ["unit:lease"],
      "a lease is revoked before its TTL passed"),
    M("lease_keepalive_shortens", "src/lease.c",
      "    if (now + d->ttl_ms > d->deadline)\n        d->deadline = now + d->ttl_ms; /* never shorten */",
      "    d->deadline = now + d->ttl_ms / 2;",
      ["unit:lease"],
      "a keep-alive shortens a lease's deadline"),
    M("kv_version_not_bumped", "src/kv.c",
      "        m.mod_revision = rev;\n        m.version++;",
      "        m.mod_revision = rev;",
      ["unit:kv", "unit:lease"],
      "an overwrite keeps the key's version"),
    M("kv_create_revision_moves", "src/kv.c",
      "        m.mod_revision = rev;\n        m.version++;",
      "        m.mod_revision = rev;\n        m.create_revision = rev;\n        m.version++;",
      ["unit:kv", "unit:lease"],
      "an overwrite moves the key's create_revision"),
    M("kv_inplace_keeps_lease", "src/kv.c",
      "        if (old->vlen == vlen && entry_lease(old) == lease &&",
      "        if (old->vlen == vlen &&",
      ["unit:kv", "unit:lease"],
      "a put with another lease of the same size keeps the old "
      "lease"),
    M("kv_delete_range_inclusive", "src/kv.c",
      "    return to_end || key_cmp(e, to, tlen) < 0;",
      "    return to_end || key_cmp(e, to, tlen) <= 0;",
      ["unit:kv", "unit:lease"],
      "a delete of [from, to) deletes to"),
    M("kv_replace_event_without_prev", "src/kv.c",
      "            view_of(old, &prev);\n            kv->on_event(kv->event_arg, KV_TOP_PUT, &cur, &prev);",
      "            view_of(old, &prev);\n            kv->on_event(kv->event_arg, KV_TOP_PUT, &cur, NULL);",
      ["unit:kv"],
      "a put replacing a value of another size gives watchers no "
      "prev_kv"),
    M("kv_revoke_in_list_order", "src/kv.c",
      "    struct entry *list = l->keys;\n    if (list == NULL)\n",
      "    struct entry *list = l->keys;\n    if (list == NULL || l->nkeys)\n",
      ["unit:lease/revoke_deletes_in_key_order",
       "unit:snapshot/revoke_order_survives_load"],
      "a revoke deletes its keys in the order of the lease's list (attach "
      "order, or a snapshot load's), which differs between nodes"),
    M("kv_revoke_sort_one_pass", "src/kv.c",
      "        if (merges <= 1)\n            break;",
      "        if (merges >= 1)\n            break;",
      ["unit:lease/revoke_deletes_in_key_order",
       "unit:snapshot/revoke_order_survives_load"],
      "a revoke's sort merges only runs of one key: the deletes come out "
      "partly sorted"),
    M("lease_keys_listed_unsorted", "src/kv.c",
      "    if (l)\n        lease_sort_keys(l);",
      "    if (l && l->nkeys > (size_t)1 << 40)\n        lease_sort_keys(l);",
      ["unit:lease/lease_keys_listed_in_key_order",
       "py:test_etcd_watch_lease.py::test_lease_keys_listed_in_key_order"],
      "LeaseTimeToLive lists a lease's keys in its list's order, which "
      "differs between nodes (attach order, a snapshot load's)"),
    M("lease_attach_keeps_sorted", "src/kv.c",
      "    if (l->keys)\n        l->unsorted = true;",
      "    if (l->keys && l->nkeys > (size_t)1 << 40)\n        l->unsorted = true;",
      ["unit:lease/lease_keys_listed_in_key_order",
       "unit:lease/revoke_deletes_in_key_order"],
      "a lease's list is taken as sorted after a key was attached: "
      "listings and revokes go in attach order"),
    # --- request bytes and forwarding (src/json.c, src/http_parse.c,
    #     src/fwd.c, src/http.c) ------------------------------------------
    M("json_surrogate_pair_wrong", "src/json.c",
      "                         ((unsigned long)lo - 0xDC00);",
      "                         ((unsigned long)lo - 0xDC01);",
      ["unit:json"], "a key or value escaped as a surrogate pair changes"),
    M("json_u64_wraps", "src/json.c",
      "        if (x > (UINT64_MAX - d) / 10)",
      "        if (x > UINT64_MAX / 10)",
      ["unit:json"], "a number past 2^64 wraps to a small one (a lease id, "
      "a revision condition)"),
    M("json_escaped_slash_wrong", "src/json.c",
      "            lit = e; /* '\"', '\\\\', '/' */",
      "            lit = e == '/' ? '\\\\' : e;",
      ["unit:json"], "a key sent as \"a\\/b\" is stored under another name"),
    M("json_backslash_at_the_end_taken", "src/json.c",
      "        if (c->i >= c->n)\n            return -1;\n        switch (c->s[c->i++]) {",
      "        if (c->i >= c->n)\n            return 0;\n        switch (c->s[c->i++]) {",
      ["unit:json/refuses_the_rest"],
      "a body cut after a backslash inside a string (\"abc\\) is taken "
      "as well-formed JSON"),
    M("json_ascii_run_takes_del", "src/json.c",
      "            while (run < n && p[run] >= 0x20 && p[run] < 0x7f &&",
      "            while (run < n && p[run] >= 0x20 && p[run] <= 0x7f &&",
      ["unit:json/put_string"],
      "a DEL after printable ASCII goes into JSON answers unescaped"),
    M("json_out_three_byte_floor_off", "src/pz.c",
      "    static const uint32_t least[] = {0, 0, 0x80, 0x800, 0x10000};",
      "    static const uint32_t least[] = {0, 0, 0x80, 0x801, 0x10000};",
      ["unit:json/put_string", "unit:pz/utf8_decode"],
      "a key or value holding U+0800 (the first 3-byte character) comes "
      "back in JSON answers as U+FFFD"),
    M("query_plus_in_path", "src/http_parse.c",
      "        while (run < n && s[run] != '%' && (s[run] != '+' || !plus_is_space))",
      "        while (run < n && s[run] != '%' && (s[run] != '+' || "
      "(!plus_is_space && n == 0)))",
      ["unit:http"], "a '+' in a path is taken for a space"),
    M("query_hex_swapped", "src/http_parse.c",
      "            c = (char)(hi * 16 + lo);",
      "            c = (char)(lo * 16 + hi);",
      ["unit:http"], "a percent-encoded byte of a key decodes wrong"),
    M("path_nul_taken", "src/http_parse.c",
      "    if (rv == 0 && memchr(path->data ? path->data : \"\", 0, path->len))\n        return PZ_EINVAL;",
      "    if (rv == 0 && memchr(path->data ? path->data : \"\", 0, path->len) && 0)\n        return PZ_EINVAL;",
      ["unit:http"], "a NUL byte in a path is taken"),
    M("pct_escape_cut_by_the_length", "src/http_parse.c",
      "            if (i + 2 >= n)\n                return PZ_EINVAL;",
      "            if (i + 1 >= n)\n                return PZ_EINVAL;",
      ["unit:http/query_decoding"],
      "a '%4' at the end of a path or query value is completed with the "
      "byte after it in memory instead of refused"),
    M("txn_op_without_a_key_taken", "src/http_parse.c",
      "        bytes_member(&body, \"key\", lim->max_key, st, &o->key, &o->klen, why);\n    if (hk < 0)",
      "        bytes_member(&body, \"key\", lim->max_key, st, &o->key, &o->klen, why);\n    if (hk <= 0)",
      ["unit:http/txn_requests"],
      "a /txn operation without a key runs on the empty key instead of a "
      "400 \"Missing key field\""),
    M("range_limit_zero_taken", "src/http_parse.c",
      "        if (vl == 0 || *e || v[0] == '-' || v[0] == '+' || l == 0 ||",
      "        if (vl == 0 || *e || v[0] == '-' || v[0] == '+' ||",
      ["unit:http"], "/range?limit=0 is taken as no limit"),
    M("forwarded_write_sent_twice", "src/fwd.c",
      "    if (!unsent && !(lost && r->idempotent))",
      "    if (!unsent && !lost)",
      ["py:test_forward_retry.py"], "a write lost after it reached the "
      "leader is forwarded again (applied twice)"),
    M("http_not_leader_refusal_relayed", "src/fwd.c",
      "    return res->status == 503 &&\n",
      "    return res->status == 0 &&\n",
      ["py:test_forward_retry.py::"
       "test_calls_refused_by_a_node_that_lost_the_election_go_to_the_winner"],
      "a forwarded request refused with 503 Not the leader (nothing was "
      "proposed) reaches the client instead of going to the next leader"),
    M("grpc_not_leader_refusal_relayed", "src/grpc.c",
      "    return call->unsent || strcmp(call->message, GRPC_NOT_LEADER_MSG) == 0 ||",
      "    return call->unsent || 0 ||",
      ["py:test_forward_retry.py::"
       "test_calls_refused_by_a_node_that_lost_the_election_go_to_the_winner"],
      "a relayed gRPC call refused with not the leader (nothing was "
      "proposed) reaches the client instead of going to the next leader"),
    M("grpc_relay_not_counted", "src/grpc.c",
      "    if (!conn_output_room(st->s->c, held)) {\n"
      "        finish(st, GRPC_UNAVAILABLE, GRPC_RELAY_BUSY_MSG);",
      "    if (!conn_output_room(st->s->c, held) && 0) {\n"
      "        finish(st, GRPC_UNAVAILABLE, GRPC_RELAY_BUSY_MSG);",
      ["py:test_hostile_clients.py::"
       "test_grpc_calls_relayed_to_a_stalled_leader_are_bounded"],
      "a follower relays every gRPC call to a stalled leader whatever "
      "max-pending-output says (only max-partial-input bounds them)"),
    M("every_forward_idempotent", "src/http.c",
      "    h->fwd.idempotent = req->method == HTTP_GET;",
      "    h->fwd.idempotent = true;",
      ["py:test_forward_retry.py"], "a forwarded write counts as a read and "
      "is sent again after a lost connection"),
    M("gateway_int64_past_its_maximum", "src/pbjson.c",
      "        if (mag > (uint64_t)hi)\n            return fail(d, \"integer out of range\");",
      "        if (mag > (uint64_t)hi + 1)\n            return fail(d, \"integer out of range\");",
      ["unit:pbjson"], "the gateway takes 2^63 for an int64 (a revision or "
      "lease id wraps negative)"),
    M("gateway_unsigned_minus_one", "src/pbjson.c",
      "        if (neg && mag != 0)",
      "        if (neg && mag > 1)",
      ["unit:pbjson"], "the gateway takes -1 for an unsigned field"),
    M("base64_data_after_padding", "src/http_parse.c",
      "                if (pad)\n                    return PZ_EINVAL; /* data after padding */",
      "",
      ["unit:http"], "a base64 key with data after its padding decodes "
      "(two encodings of one key)"),
    M("base64_padding_bits_unchecked", "src/http_parse.c",
      "        if ((pad == 1 && b[2]) || (pad == 2 && (b[1] || b[2])))",
      "        if (pad == 1 && b[2])",
      ["unit:http"], "a base64 key with bits under its padding decodes"),
    M("peer_name_any_case", "src/tls.c",
      "    return strcmp(name, want) == 0;",
      "    return strcasecmp(name, want) == 0;",
      ["unit:tls"], "a certificate for NODE1 speaks for the member node1"),
    M("conf_voter_byte_unchecked", "src/raft_conf.c",
      "        if (voter > 1 || ml > len - off || memchr(buf + off, 0, ml))",
      "        if (ml > len - off || memchr(buf + off, 0, ml))",
      ["unit:raft/conf_codec"], "a configuration with a voter byte of 2 "
      "decodes: two encodings of one configuration"),
    M("conf_trailing_bytes_taken", "src/raft_conf.c",
      "    if (off != len)\n        goto corrupt;\n    return 0;\ncorrupt:\n    raft_conf_free(out);",
      "    return 0;\ncorrupt:\n    raft_conf_free(out);",
      ["unit:raft/conf_codec"], "bytes after a configuration's last server "
      "are taken"),
    M("etcd_lease_ttl_zero_kept", "src/etcd_lease.c",
      "    if (ttl < 1)\n        ttl = 1;",
      "    if (ttl < 0)\n        ttl = 1;",
      ["py:test_etcd_watch_lease.py::test_lease_calls"],
      "an etcd lease granted with TTL 0 expires at once"),
    M("etcd_lease_max_ttl_loose", "src/etcd_lease.c",
      "    if ((uint64_t)ttl > node_lease_max_ttl()) {",
      "    if ((uint64_t)ttl > 2 * node_lease_max_ttl()) {",
      ["py:test_etcd_watch_lease.py::test_lease_calls"],
      "an etcd lease past lease-max-ttl is granted"),
    M("etcd_lease_ttl_rounded_up", "src/etcd_lease.c",
      "        r.ttl = (int64_t)(ms / 1000); /* etcd truncates */",
      "        r.ttl = (int64_t)((ms + 999) / 1000);",
      ["py:test_etcd_watch_lease.py::test_lease_calls"],
      "LeaseTimeToLive shows more time left than there is"),
    M("pb_length_one_past_the_end", "src/grpc_pb.c",
      "        if (get_varint(p, end, &v) < 0 || v > (uint64_t)(end - *p))",
      "        if (get_varint(p, end, &v) < 0 || v > (uint64_t)(end - *p) + 1)",
      ["unit:grpc_pb"], "a protobuf field one byte past the message is read"),
    M("pb_varint_past_64_bits", "src/grpc_pb.c",
      "        if (shift == 63 && b > 1)\n            return PZ_EINVAL; /* more than 64 bits */",
      "",
      ["unit:grpc_pb"], "a varint of more than 64 bits is taken, cut"),
    M("pb_groups_skipped", "src/grpc_pb.c",
      "    default: /* groups (3, 4) and 6, 7 */\n        return PZ_EINVAL;",
      "    default: /* groups (3, 4) and 6, 7 */\n        return 1;",
      ["unit:grpc_pb"], "groups and wire types 6 and 7 are skipped as if "
      "empty"),
    M("pb_stale_any_wire", "src/grpc_pb.c",
      "            if (f.wire != GRPC_PB_VARINT)\n                return PZ_EINVAL;\n            out->stale = f.v != 0;",
      "            out->stale = f.v != 0;",
      ["unit:grpc_pb"], "a Get's stale flag sent as bytes is taken"),
    M("raft_codec_length_prefix_long", "src/raft_codec.c",
      "    if (!rd_varint(r, &n) || r->p - p > 5 ||",
      "    if (!rd_varint(r, &n) || r->p - p > 10 ||",
      ["unit:transport/codec_malformed_rejected"],
      "a peer's length prefix over five bytes is read (protobuf-c refuses "
      "it)"),
    M("raft_chunk_past_total", "src/raft_codec.c",
      "    if (c->offset > c->total || c->len > c->total - c->offset)\n        return PZ_EPROTO;\n    return 0;",
      "    if (c->offset > c->total)\n        return PZ_EPROTO;\n    return 0;",
      ["unit:transport/codec_malformed_rejected"],
      "a snapshot chunk running past the snapshot's size is taken"),
    M("raft_u32_field_wraps", "src/raft_codec.c",
      "    if (!rd_u64(r, wt, &x) || x > UINT32_MAX)",
      "    if (!rd_u64(r, wt, &x))",
      ["unit:transport"], "a message type over 32 bits wraps to a valid "
      "one"),
    M("grpc_reserved_flag_plain", "src/grpc_frame.c",
      "            r->compressed = r->hdr[0] != 0;",
      "            r->compressed = (r->hdr[0] & 1) != 0;",
      ["unit:grpc_frame/reader_compressed_flag"],
      "a gRPC message whose flag byte has a reserved bit is read as "
      "plain"),
    M("grpc_timeout_microseconds_floor", "src/grpc_frame.c",
      "        *ms = (v + 999u) / 1000u;",
      "        *ms = v / 1000u;",
      ["unit:grpc_frame"], "a grpc-timeout under a millisecond is no "
      "deadline at all"),
    M("grpc_message_cut_inside_a_character", "src/grpc_frame.c",
      "        size_t seq = pz_utf8_decode(u, len - i, NULL);",
      "        size_t seq = pz_utf8_decode(u, len - i, NULL) > 1;",
      ["unit:grpc_frame/message_encode"],
      "a grpc-message cut at its size limit can end inside a character: "
      "clients get a status message that is not UTF-8"),
    M("mandi_overlong_utf8", "src/pz.c",
      "    if (v < least[len] || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff))",
      "    if ((v < least[len] && len == 2) || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff))",
      ["unit:mandi/parse_refuses_control_characters_and_implausible_addresses",
       "unit:pz/utf8_decode"], "an overlong UTF-8 form from mandi passes as text"),
    M("mandi_bidi_isolates", "src/pz.c",
      "           (cp >= 0x2066 && cp <= 0x2069);",
      "           (cp >= 0x2066 && cp <= 0x2065);",
      ["unit:mandi/parse_refuses_control_characters_and_implausible_addresses",
       "unit:log"],
      "a bidi isolate from mandi reorders a log line"),
    M("utf8_surrogate_half_taken", "src/pz.c",
      "    if (v < least[len] || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff))",
      "    if (v < least[len] || v > 0x10ffff || (v >= 0xd800 && v <= 0xdbff))",
      ["unit:pz/utf8_decode"],
      "a low surrogate (U+DC00..U+DFFF) passes as UTF-8: a key holding "
      "one is written into JSON answers as it is, which JSON parsers "
      "refuse"),
    M("utf8_past_last_code_point_taken", "src/pz.c",
      "    if (v < least[len] || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff))",
      "    if (v < least[len] || (v >= 0xd800 && v <= 0xdfff))",
      ["unit:pz/utf8_decode"],
      "lead bytes 0xF5 to 0xF7 and code points past U+10FFFF pass as "
      "UTF-8"),
    M("utf8_lead_f8_taken", "src/pz.c",
      "c < 0xf8 ? 4 : 0;",
      "c < 0xff ? 4 : 0;",
      ["unit:pz/utf8_decode"],
      "lead bytes 0xF8 to 0xFE are read as 4-byte leads: F8 90 80 80 "
      "passes as U+10000"),
    M("utf8_continuation_byte_taken_as_lead", "src/pz.c",
      "size_t len = c < 0xc0 ? 0 :",
      "size_t len = c < 0x80 ? 0 :",
      ["unit:pz/utf8_decode"],
      "a continuation byte first is read as a 2-byte lead: 9F BF passes "
      "as U+07FF"),
    M("grpc_message_groups_bytes_that_are_not_utf8", "src/grpc_frame.c",
      "        if (seq == 0)\n            seq = 1;",
      "        if (seq == 0)\n            seq = u[0] >= 0xC0 && u[0] <= 0xF7 ? (u[0] >= 0xF0 ? 4 : u[0] >= 0xE0 ? 3 : 2) : 1;\n        if (seq > len - i)\n            seq = 1;",
      ["unit:grpc_frame/message_encode"],
      "a grpc-message cut at its size limit drops bytes that are not "
      "UTF-8 with the ones after them, as if they began a character"),
    M("mandi_continuation_bits", "src/pz.c",
      "        if ((u[i] & 0xc0) != 0x80)",
      "        if ((u[i] & 0x80) != 0x80)",
      ["unit:mandi/parse_refuses_control_characters_and_implausible_addresses",
       "unit:pz/utf8_decode"], "a lead byte where a continuation belongs passes as UTF-8"),
    M("mandi_zone_any_text", "src/mandi_codec.c",
      "           (al - v6 > 1 && all_in(pct + 1, al - v6 - 1, HOST_CHARS));",
      "           (al - v6 > 1);",
      ["unit:mandi/parse_refuses_control_characters_and_implausible_addresses"], "an IPv6 zone of any bytes passes as an address"),
    M("log_bidi_controls_pass", "src/pz.c",
      "    return cp == 0x061c || cp == 0x200e || cp == 0x200f || cp == 0x2028 ||",
      "    return cp == 0x061c || cp == 0x200e || cp == 0x200f ||",
      ["unit:log/text_line_any_bytes"], "a line separator a client sent "
      "passes into a log line"),
    M("http_one_header_too_many", "src/http_parse.c",
      "    if (p->req.n_headers >= p->lim.max_headers)",
      "    if (p->req.n_headers > p->lim.max_headers)",
      ["unit:http/protocol_errors"], "a request with one header more than "
      "max-headers is taken"),
    M("http_chunk_size_unchecked", "src/http_parse.c",
      "    if (ll->content_length > p->lim.max_body - p->req.body.len)\n        return fail(p, 413, \"Request body too large\");\n    return 0;",
      "    if (ll->content_length > p->lim.max_body - p->req.body.len + (1u << 30))\n        return fail(p, 413, \"Request body too large\");\n    return 0;",
      ["unit:http/chunked_body_over_limit"], "a chunk announced over "
      "http-max-body waits for its bytes"),
    M("config_unit_multiplication_wraps", "src/config.c",
      "        if (v > INT64_MAX / u->mult)\n            return -2;",
      "",
      ["unit:config"], "a size whose unit multiplication wraps is taken "
      "as a small one"),
    M("snapshot_format_version_zero", "src/snapshot.c",
      "    if (version < 1 || version > SNAPSHOT_VERSION) {",
      "    if (version > SNAPSHOT_VERSION) {",
      ["unit:snapshot/corrupt_magic_version_lengths"], "a snapshot of format version 0 is read as a later one"),
    M("snapshot_created_at_zero", "src/snapshot.c",
      "    return km->create_revision >= 1 &&",
      "    return (km->create_revision >= 1 || km->mod_revision == 0) &&",
      ["unit:snapshot/corrupt_magic_version_lengths"], "a key created at revision 0 is loaded"),
    M("snapshot_version_past_its_writes", "src/snapshot.c",
      "           km->version <= km->mod_revision - km->create_revision + 1;",
      "           km->version <= km->mod_revision - km->create_revision + 2;",
      ["unit:snapshot/corrupt_magic_version_lengths"], "a key with more writes than its revisions is loaded"),
    M("store_negative_term_taken", "src/store.c",
      "    if (t < 0 || c < 0) {\n        set_err(err, errlen, \"%s: hard state has negative values\", s->path);",
      "    if (c < 0) {\n        set_err(err, errlen, \"%s: hard state has negative values\", s->path);",
      ["unit:store/tampered_rows_refused"], "a negative term on disk is read as a huge one"),
    M("store_log_start_unchecked", "src/store.c",
      "        if (i < 0 || (uint64_t)i != s->meta.snap_index + 1) {",
      "        if (i < 0 || (uint64_t)i <= s->meta.snap_index) {",
      ["unit:store/tampered_rows_refused"], "a restart that reads the log's end misses a gap at its "
      "start"),
    M("store_keeps_only_the_segment_past_the_goal", "src/store.c",
      "    unsigned keep = slots_of(s, upto + 1, last);",
      "    unsigned keep = slots_of(s, upto + 1, PZ_MIN(last, seg_end(s, upto + 1)));",
      ["unit:store/compaction_empties_whole_segments"],
      "compaction empties a table that also holds a later segment's "
      "entries, live ones"),
    M("store_overwrite_in_first_table_only", "src/store.c",
      "        unsigned m = slots_of(s, first, b->stored_last);",
      "        unsigned m = slots_of(s, first, seg_end(s, first));",
      ["unit:store/log_segments_hold_their_entries"],
      "a rewrite across segments leaves the old entries of the later ones "
      "in their tables"),
    M("store_install_leaves_a_table", "src/store.c",
      "        for (unsigned k = 0; k < LOG_SLOTS && rc == 0; k++)\n"
      "            rc =\n                run(s, s->slot[k].clear, b->err,",
      "        for (unsigned k = 0; k + 1 < LOG_SLOTS && rc == 0; k++)\n"
      "            rc =\n                run(s, s->slot[k].clear, b->err,",
      ["unit:store/compaction_empties_whole_segments"],
      "an installed snapshot leaves the old log's entries in one table"),
    M("store_misplaced_entry_taken", "src/store.c",
      "        if (have < 0 || (uint64_t)have != want) {",
      "        if (have < 0 || (uint64_t)have < want) {",
      ["unit:store/tampered_rows_refused"],
      "an entry outside its segment's table is taken (writes would miss "
      "it)"),
    M("store_vote_in_term_zero", "src/store.c",
      "        (s->hs.term == 0 && (s->last_index > 0 || s->hs.vote != 0))) {",
      "        (s->hs.term == 0 && s->last_index > 0)) {",
      ["unit:store/tampered_rows_refused"], "a vote stored in term 0 is taken for a new node's state"),
    M("store_meta_past_int64", "src/store.c",
      "        if (ok && (i == 1 || i == 5 || i == 6) && v > INT64_MAX)",
      "        if (ok && i == 1 && v > INT64_MAX)",
      ["unit:store/tampered_rows_refused"], "a snapshot term past 2^63 "
      "in raft.db's meta is taken"),
    M("range_from_before_its_prefix", "src/http_parse.c",
      "        if (hf && !(flen >= plen && memcmp(from, pre, plen) == 0)) {",
      "        if (hf && !(memcmp(from, pre, flen < plen ? flen : plen) == 0)) {",
      ["unit:http"], "/range?prefix=app/&from=ap reads keys before the "
      "prefix"),
    M("lease_ttl_zero_taken", "src/http_parse.c",
      "        op->lease_ttl == 0 || op->lease_ttl > KV_LEASE_TTL_MAX)",
      "        op->lease_ttl > KV_LEASE_TTL_MAX)",
      ["unit:http"], "POST /lease/grant with ttl 0 is taken"),
    M("etcd_watch_fragments_past_the_limit", "src/etcd_watch.c",
      "            while (j < n && (!ww->o.fragment || bytes + sizes[j] <= limit))",
      "            while (j < n && (!ww->o.fragment || bytes + sizes[j] <= 2 * limit))",
      ["py:test_etcd_watch_lease.py::"
       "test_watch_fragment_and_progress_notify"],
      "a fragmented watch answer passes grpc-max-message"),
    M("etcd_watch_noput_ignored", "src/etcd_watch.c",
      "    if ((put && o->noput) || (!put && o->nodel))",
      "    if (!put && o->nodel)",
      ["py:test_etcd_watch_lease.py", "py:test_etcd_gateway.py"],
      "a watch with the NOPUT filter sees puts"),
    M("conf_change_leaves_no_voter", "src/raft.c",
      "    if (rc == 0 && raft_conf_voters(&c) == 0)\n        rc = PZ_EINVAL;",
      "",
      ["unit:raft/conf_change_one_at_a_time"],
      "the last voter is removed: the cluster can never elect again"),
    M("conf_change_during_transfer", "src/raft.c",
      "    if (r->transferee != 0)\n        return PZ_EBUSY;\n    /* Thesis \u00a74.1",
      "    /* Thesis \u00a74.1",
      ["unit:raft/transfer_leadership"],
      "a configuration change starts while leadership moves"),
    M("transfer_to_a_non_voter", "src/raft.c",
      "    if (id == r->id || s == NULL || !s->voter)\n        return PZ_EINVAL;",
      "    if (id == r->id || s == NULL)\n        return PZ_EINVAL;",
      ["unit:raft/conf_change_one_at_a_time"],
      "leadership is handed to a non-voter"),
    M("vanished_clients_refused_as_remote", "src/conn.c",
      "    if (prv != 0) {\n        c->ops = &no_ops;",
      "    if (prv != 0 && ls->max_conns == 0) {\n        c->ops = &no_ops;",
      ["py:test_hostile_clients.py::"
       "test_clients_gone_before_accept_are_not_refusals"],
      "loopback clients gone before accept spend protected mode's "
      "warnings"),
    M("vote_while_following_a_leader", "src/raft.c",
      "    bool can_vote = r->vote == m->from || (r->vote == 0 && r->leader == 0) ||",
      "    bool can_vote = r->vote == m->from || r->vote == 0 ||",
      ["unit:raft/vote_refused_while_following_a_leader_of_the_term"],
      "a node following a leader votes for a rival of the same term: two "
      "leaders in one term"),
    M("quorum_of_an_even_count_halved", "src/raft.c",
      "    return raft_conf_voters(&r->conf) / 2 + 1;",
      "    return (raft_conf_voters(&r->conf) + 1) / 2;",
      ["unit:raft/commit_needs_three_of_four"],
      "a leader hearing from one of three other voters keeps leading"),
    M("check_quorum_counts_non_voters", "src/raft.c",
      "                if (pr->voter && (pr->id == r->id || pr->recent_active))",
      "                if (pr->id == r->id || pr->recent_active)",
      ["unit:raft/check_quorum_counts_voters_only"],
      "a leader cut off from its voters stays leader on non-voters' "
      "answers"),
    M("prevote_for_our_own_term", "src/raft.c",
      "                    (pre && m->term > r->term);",
      "                    (pre && m->term >= r->term);",
      ["unit:raft/prevote_for_our_term_respects_our_vote"],
      "a Pre-Vote for our own term is granted whatever our vote"),
    M("heartbeat_commits_past_the_log", "src/raft.c",
      "    commit_to(r, PZ_MIN(m->commit, log_last(&r->log)));\n    struct raft_msg *resp = new_msg(r, false, RAFT_MSG_HEARTBEAT_RESP, m->from);",
      "    commit_to(r, m->commit);\n    struct raft_msg *resp = new_msg(r, false, RAFT_MSG_HEARTBEAT_RESP, m->from);",
      ["unit:raft/heartbeat_commits_only_what_we_hold"],
      "a heartbeat commits entries the follower does not hold"),
    M("joining_dialer_taken_as_first_contact", "src/transport.c",
      "    if (hs->cluster_id == 0 ||\n        (t->cfg.cluster_id != 0 && hs->cluster_id != t->cfg.cluster_id)) {",
      "    if ((t->cfg.cluster_id != 0 && hs->cluster_id != t->cfg.cluster_id)) {",
      ["unit:transport/refuse_a_dialer_without_a_cluster"],
      "two joining nodes accept each other and join cluster 0"),
    M("handshake_node_id_zero_taken", "src/transport.c",
      "    if (hs->node_id == 0) {\n        refuse(in, RAFT_HS_BAD_HANDSHAKE, 0, 0, 0, \" (node id 0)\");\n        return;\n    }",
      "",
      ["unit:transport"], "a dialer claiming node id 0 is accepted"),
    M("wiped_member_added_back", "src/node_members.c",
      "        if (m && m->inc != j->incarnation) {",
      "        if (m && m->inc != j->incarnation && m->voter && 0) {",
      ["py:test_join.py"], "a member wiped and restarted joins again under "
      "its name, a voter that forgot what it acknowledged"),
    M("removed_incarnation_readded", "src/node_members.c",
      "        bool stale = !m && rm && meta_inc(rm->meta) == j->incarnation;",
      "        bool stale = false;",
      ["py:test_join.py"], "the join request of a removed incarnation adds "
      "it back"),
    M("grpc_kv_write_refused_as_success", "src/grpc.c",
      "    } else if (req->res.status == KV_EREVISION) {\n        /* Refused on every node as it applied: nothing was written. */",
      "    } else if (req->res.status == KV_EREVISION && st == NULL) {\n        /* Refused on every node as it applied: nothing was written. */",
      ["py:test_backup.py::"
       "test_restored_revision_at_the_maximum_refuses_writes"],
      "kv.KVService/Set answers success for a write refused at the "
      "highest revision"),
    M("sse_watch_to_equal_to_from", "src/http_watch.c",
      "            if (c > 0 || (c == 0 && tlen <= flen)) {",
      "            if (c > 0 || (c == 0 && tlen < flen)) {",
      ["py:test_watch.py::test_bad_parameters_are_400"],
      "/watch?from=b&to=b is taken, an empty range"),
    M("sse_watch_start_zero_replays", "src/http_watch.c",
      "        ws->start_given = ws->start > 0; /* 0: from now on */",
      "        ws->start_given = true; /* 0: from now on */",
      ["py:test_watch.py::test_resume_with_last_event_id_and_start_revision"],
      "/watch?start_revision=0 replays the history instead of starting "
      "now"),
    M("sse_watch_compacted_start_taken", "src/http_watch.c",
      "    if (ws->start < first) {\n        reply_compacted(ws, first);",
      "    if (ws->start < first && first == 0) {\n        reply_compacted(ws, first);",
      ["py:test_watch.py::test_start_older_than_history_is_410"],
      "a watch from a revision the history dropped starts anyway, its "
      "events lost"),
    M("interrupted_save_leaves_its_part", "src/cli_snapshot.c",
      "    cleanup_on_signals(part);\n    struct cli_conn c;",
      "    struct cli_conn c;",
      ["py:test_backup.py::test_interrupted_save_leaves_no_part_file"],
      "a save stopped by Ctrl-C leaves FILE.part, and every later save "
      "refuses"),
    M("cli_list_pages_mix_revisions", "src/cli.c",
      "    } else if (r != *rev && !*warned) {",
      "    } else if (r != *rev && r == 0) {",
      ["py:test_cli.py::test_list_notes_a_change_between_pages"],
      "list joins pages read at different revisions without a word: a "
      "key moved across a page boundary is missed silently"),
    M("cli_list_next_may_stand_still", "src/cli.c",
      "         (any && bytes_cmp(next, &last) <= 0))) {",
      "         (any && bytes_cmp(next, &last) < 0))) {",
      ["py:test_cli.py::test_list_refuses_a_next_that_does_not_move"],
      "a node answering the same next again keeps list going until "
      "--timeout"),
    M("cli_watch_rev_past_max_taken", "src/cli_watch.c",
      "st.floor == 0 ||\n                st.floor > KV_REVISION_MAX) {",
      "st.floor == 0) {",
      ["py:test_cli.py::test_watch_refuses_a_revision_out_of_range"],
      "watch --rev past the highest revision is taken: no event ever "
      "comes, and resuming adds one to it"),
    M("cli_watch_event_rev_unchecked", "src/cli_watch.c",
      "    return get_u64(obj, name, out) && *out <= KV_REVISION_MAX;",
      "    return get_u64(obj, name, out);",
      ["py:test_cli.py::test_watch_resumes_after_the_last_revision_whatever_a_node_sends"],
      "an event at revision 2^64 - 1 makes the last revision 'unknown': "
      "the watch resumes at --rev again and prints events twice"),
    # --- etcd ranges, compares, sorts (src/etcd_map.c) -----------------
    M("etcd_revisions_as_the_store_counts", "src/etcd_map.h",
      "    return (int64_t)rev + 1;\n",
      "    return (int64_t)rev;\n",
      ["py:test_etcd_watch_lease.py::test_etcdctl_elect_and_observe",
       "py:test_etcd.py::test_grpc_headers_and_errors"],
      "the etcd API shows the store's revisions, one lower than etcd's: "
      "a write at revision 1 makes etcd's election wait on max create "
      "revision 0, no bound, and a campaign that was the first write "
      "waits for its own key forever"),
    M("etcd_compare_revision_less_than_one", "src/etcd_map.c",
      "    c->num = result == ETCD_CMP_LESS && v == 1 ? 1 : (uint64_t)(v - 1);",
      "    c->num = (uint64_t)(v - 1);",
      ["unit:etcd_map/compare_revisions_in_etcd_numbers"],
      "an etcd compare `create < 1` (etcd's numbers) no longer holds for a "
      "missing key"),
    M("etcd_compare_revision_equal_one", "src/etcd_map.c",
      "    if (v == 1 && (result == ETCD_CMP_EQUAL || result == ETCD_CMP_NOT_EQUAL)) {",
      "    if (v == 1 && result == ETCD_CMP_NOT_EQUAL) {",
      ["unit:etcd_map/compare_revisions_in_etcd_numbers"],
      "an etcd compare `mod = 1` (no write is at etcd's revision 1) holds "
      "for a missing key"),
    M("etcd_filter_in_store_numbers", "src/etcd_map.c",
      "    int64_t mod = etcd_key_rev(m->mod_revision),",
      "    int64_t mod = (int64_t)m->mod_revision,",
      ["unit:etcd_map/filters_and_sort", "py:test_etcd.py::test_grpc_headers_and_errors"],
      "a Range's min/max_mod_revision filter compares the store's numbers "
      "with etcd's: one revision off"),
    M("etcd_watch_start_in_store_numbers", "src/etcd_map.c",
      "    uint64_t s = start_revision > 1 ? (uint64_t)start_revision - 1 : 1;",
      "    uint64_t s = (uint64_t)start_revision;",
      ["unit:etcd_map/watch_keys_and_start"],
      "a watch's start_revision is taken in the store's numbers: it "
      "starts one revision late, missing the revision asked for"),
    M("etcd_key_compare_reads_past_the_key", "src/etcd_map.c",
      "    size_t n = alen < blen ? alen : blen;\n    int c = n ? memcmp(a, b, n) : 0;\n    if (c != 0)",
      "    size_t n = alen < blen ? blen : alen;\n    int c = n ? memcmp(a, b, n) : 0;\n    if (c != 0)",
      ["unit:etcd_map/range_keys_are_slices"],
      "an etcd range compares keys past their length, reading the bytes "
      "that follow them in memory: a key in the range is left out (or one "
      "outside it taken) depending on what follows it"),
    M("etcd_range_end_equal_not_empty", "src/etcd_map.c",
      "        out->empty = bytes_cmp(end, elen, key, klen) <= 0;",
      "        out->empty = bytes_cmp(end, elen, key, klen) < 0;",
      ETCDMAP, "an etcd range whose end equals its key is not empty"),
    M("etcd_negative_max_mod_ignored", "src/etcd_map.c",
      "    if (f->max_mod != 0 && mod > f->max_mod)",
      "    if (f->max_mod > 0 && mod > f->max_mod)",
      ETCDMAP, "a negative max_mod_revision filter is ignored"),
    M("etcd_sort_descend_ignored", "src/etcd_map.c",
      "    if (s->order == ETCD_SORT_DESCEND)\n        c = -c;",
      "",
      ETCDMAP, "sort_order DESCEND sorts ascending"),
    M("etcd_select_sinks_wrong_child", "src/etcd_map.c",
      "        if (c + 1 < n && view_cmp(&v[c + 1], &v[c], &s) > 0)",
      "        if (c + 1 < n && view_cmp(&v[c + 1], &v[c], &s) < 0)",
      ["unit:etcd_map/select_first_views"],
      "a sorted, limited Range's selection sinks a view toward the wrong "
      "child: the heap no longer has the last view kept at its root, and "
      "views that come first are dropped"),
    M("range_select_keeps_only_limit", "src/etcd_kv.c",
      "            p.top = (size_t)q->limit + 1;",
      "            p.top = (size_t)q->limit;",
      ["py:test_etcd.py::test_sorted_limited_range_is_the_head_of_the_whole",
       "py:test_etcd.py::test_sorted_limited_ranges_same_as_etcd"],
      "a sorted (or filtered) limited Range selects limit views, not "
      "limit + 1: a filtered answer says more=false with keys left out"),
    M("txn_sorted_range_copies_every_key", "src/etcd_kv.c",
      "        e->pick = range_pick(ops[i]->request_range);",
      "        e->pick = (struct rpick){.keep = SIZE_MAX};",
      ["py:test_etcd.py::test_txn_sorted_limited_ranges_past_max_message",
       "py:test_range_count.py::"
       "test_sorted_limited_range_keeps_only_the_limit"],
      "a Txn's sorted, limited range copies every key of its range again: "
      "past grpc-max-message of keys and values it fails with `use a "
      "limit` although it has one"),
    M("txn_range_pick_ignores_branch", "src/etcd_kv.c",
      "    e->failure = !succeeded;",
      "    e->failure = false && !succeeded;",
      ["py:test_etcd.py::test_txn_sorted_limited_ranges_past_max_message"],
      "a Txn whose compares failed picks its ranges' keys by the success "
      "branch's requests: a range sorted the other way answers the wrong "
      "keys"),
    M("kv_sink_not_told_the_branch", "src/kv.c",
      "        if (a->sink && a->sink->branch)\n"
      "            a->sink->branch(a->sink->arg, j->ok);\n",
      "",
      ["unit:kv/txn_sink_branch",
       "py:test_etcd.py::test_txn_sorted_limited_ranges_past_max_message"],
      "a Txn that writes never tells its sink the branch taken: an etcd "
      "Txn's ranges in the failure branch are picked by the success "
      "branch's requests"),
    M("txn_range_eviction_still_counted", "src/etcd_kv.c",
      "        e->bytes -= out;\n",
      "",
      ["py:test_etcd.py::test_txn_sorted_limited_ranges_past_max_message"],
      "a Txn's sorted range frees the copies its selection evicts but "
      "still counts their bytes: past grpc-max-message of keys that once "
      "entered it fails with `use a limit`"),
    M("range_sorted_collects_every_view", "src/etcd_kv.c",
      "    if (l->top) {\n        if (l->n < l->top)\n            vlist_room",
      "    if (l->top && false) {\n        if (l->n < l->top)\n"
      "            vlist_room",
      ["py:test_range_count.py::test_sorted_limited_range_keeps_only_the_limit"],
      "a sorted, limited Range keeps every key's view again (right "
      "answers, but 64 bytes a key and a sort of them all in one turn)"),
    M("etcd_watch_key_sees_next", "src/etcd_map.c",
      "        out->to[klen] = 0;\n        out->tlen = klen + 1;",
      "        out->to[klen] = 1;\n        out->tlen = klen + 1;",
      ETCDMAP, "an etcd watch of one key also sees the keys after it"),
    M("etcd_compare_negative_less_holds", "src/etcd_map.c",
      "        c->result = KV_CMP_LT; /* never holds */\n        c->num = 0;",
      "        c->result = KV_CMP_NE;\n        c->num = UINT64_MAX;",
      ETCDMAP, "an etcd compare LESS than a negative number holds"),
    M("snapshot_revision_unbounded", "src/snapshot.c",
      "        if (m->revision > KV_REVISION_MAX) {",
      "        if (m->revision > KV_REVISION_MAX && false) {",
      ["unit:snapshot/points_out_of_range",
       "py:test_backup.py::test_restore_refuses_points_no_log_reaches"],
      "a backup's revision near 2^64 is restored: writes wrap it, etcd "
      "clients see it negative"),
    M("snapshot_points_checked_as_int64", "src/snapshot.c",
      "    if (m->index >= RAFT_LIMIT || m->term >= RAFT_LIMIT) {",
      "    if (m->index > INT64_MAX || m->term > INT64_MAX) {",
      ["unit:snapshot/points_out_of_range",
       "py:test_backup.py::test_restore_refuses_points_no_log_reaches"],
      "a backup at index or term 2^62 is restored, and no node can ever "
      "join the cluster it seeds"),
    M("restore_marker_ignored_at_start", "src/node.c",
      "    if (meta.restoring) {",
      "    if (meta.restoring && false) {",
      ["py:test_backup.py::test_restore_interrupted_while_starting_over",
       "py:test_backup.py::test_interrupted_restore_is_refused_then_restored_again"],
      "a data dir left by an interrupted --restore is taken for a new "
      "node's: it founds an empty cluster, the backup silently missing"),
    M("restore_db_created_unmarked", "src/store.c",
      "             restoring ? \", ('restoring', '1')\" : \"\");",
      "             restoring ? \"\" : \"\");",
      ["py:test_backup.py::test_restore_interrupted_while_starting_over",
       "py:test_backup.py::test_interrupted_restore_is_refused_then_restored_again"],
      "the raft.db a --restore creates does not say so: a crash before "
      "the restore's end leaves what a start takes for a new node"),
    M("new_data_dir_parent_unsynced", "src/store.c",
      "        ret = pz_fsync_path(p, true);\n        *slash = '/';",
      "        ret = 0;\n        *slash = '/';",
      ["py:test_fsync.py::test_a_new_data_dir_is_made_durable_in_its_parent"],
      "a new data dir's entry is never made durable: a power cut soon "
      "after the first start can lose the directory, raft.db with it"),
    M("kv_revision_wraps", "src/kv.c",
      "    bool at_max = kv->revision >= KV_REVISION_MAX;",
      "    bool at_max = false;",
      ["unit:kv/revision_max_refuses_writes"],
      "a write at the highest revision is applied past it"),
    M("restore_takes_point_zero", "src/node_snapshot.c",
      "    if (rv == 0 && (meta.index == 0 || meta.term == 0)) {",
      "    if (rv == 0 && (meta.index == 0 && meta.term == 0)) {",
      ["py:test_backup.py::test_restore_refuses_points_no_log_reaches"],
      "--restore of a backup at index or term 0 succeeds, and the node "
      "then refuses every start"),
    M("fifo_taken_for_a_file", "src/pz.c",
      "    return S_ISREG(st->st_mode) ||",
      "    return st != NULL ||",
      ["unit:snapshot/fifo_named_like_a_snapshot",
       "py:test_storage.py::test_fifo_config_and_token_files_are_refused"],
      "a FIFO named like a snapshot or a token file is read as one"),
    M("config_fifo_blocks_reload", "src/config.c",
      "    FILE *f = pz_fopen_regular(path, &why);\n    if (f == NULL) {\n        fmt_err(",
      "    FILE *f = fopen(path, \"rb\");\n    why = \"no such file\";\n    if (f == NULL) {\n        fmt_err(",
      ["py:test_storage.py::test_fifo_config_and_token_files_are_refused"],
      "a FIFO in place of the config file blocks the loop on SIGHUP"),
    M("reload_per_sighup", "src/reload.c",
      "    if (h->hups++ == 0)\n        uv_timer_start(&h->soon, on_hup_soon, 0, 0);",
      "    h->hups = 1;\n    on_hup_soon(&h->soon);",
      ["py:test_reload.py::test_sighup_burst_is_coalesced"],
      "every SIGHUP queued during a reload runs a reload of its own, back "
      "to back, while clients wait"),
    M("log_fifo_blocks", "src/pz.c",
      "    return open_regular(path, O_WRONLY | O_APPEND | O_CREAT);",
      "    return open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0666);",
      ["py:test_reload.py::test_fifo_log_file_at_start_is_an_error",
       "py:test_reload.py::test_fifo_log_file_on_reload_is_refused"],
      "a FIFO at the log-file path blocks the start, or the loop on SIGHUP"),
    M("sighup_kills_a_start", "src/main.c",
      "    signal(SIGHUP, SIG_IGN);",
      "    signal(SIGHUP, SIG_DFL);",
      ["py:test_reload.py::test_sighup_during_start_does_not_kill"],
      "a SIGHUP before the loop handles it ends the starting process"),
    M("reload_failure_counted_applied", "src/reload.c",
      "        if (g & no.failed) {",
      "        if (g & no.failed & RELOAD_PEER_TLS) {",
      ["py:test_tls.py::test_reload_summary_counts_tls_failures",
       "py:test_reload.py::test_reload_summary_counts_refused_token_changes"],
      "TLS or token files that failed to load are reported as applied"),
    M("reload_refused_path_kept", "src/reload.c",
      "            restart++;\n            set_from(&cand, &r->running, d);",
      "            restart++;",
      ["py:test_reload.py::test_reload_summary_counts_refused_token_changes"],
      "a change that needs a restart is stored as running: the next reload "
      "reports nothing changed"),
    M("send_timeout_lowered_under_an_answer", "src/conn.c",
      "        if (c->send_timeout && stalled > c->send_timeout &&",
      "        if (c->ls->send_timeout && stalled > c->ls->send_timeout &&",
      ["py:test_reload.py::test_lowered_timeouts_spare_open_connections"],
      "a reload lowering client-body-timeout cuts off answers being sent"),
    M("idle_timeout_lowered_under_a_connection", "src/conn.c",
      "        if (now - c->last_io > c->idle_timeout) {",
      "        if (now - c->last_io > limits.idle_timeout) {",
      ["py:test_reload.py::test_lowered_timeouts_spare_open_connections"],
      "a reload lowering client-idle-timeout closes connections already "
      "idle"),
    M("save_part_truncated_through_a_link", "src/cli_snapshot.c",
      "        open(part, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);",
      "        open(part, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);",
      ["py:test_backup.py::"
       "test_save_never_writes_through_an_existing_part_file"],
      "snapshot save truncates the file a planted FILE.part links to"),
    M("save_drip_never_ends", "src/cli_snapshot.c",
      "            if (window_bytes < SAVE_MIN_BYTES) {",
      "            if (window_bytes < 1) {",
      ["py:test_backup.py::test_save_gives_up_on_a_drip_and_on_a_huge_body"],
      "a node sending a byte now and then keeps snapshot save running "
      "forever"),
    M("grpc_txn_items_not_charged", "src/etcd_kv.c",
      "    if (!grpc_stream_reserve(e->st, est)) {",
      "    if (!grpc_stream_reserve(e->st, 0)) {",
      ["py:test_hostile_clients.py::"
       "test_grpc_txn_reads_are_charged_as_they_apply"],
      "a batch of small Txns copies every call's reads at apply time, "
      "outside max-pending-output"),
    M("http_txn_items_not_charged", "src/http.c",
      "        !out_room(h, h->out.len, kv_json_max(v))) {",
      "        !out_room(h, 0, kv_json_max(v))) {",
      ["py:test_hostile_clients.py::"
       "test_http_txn_results_are_charged_as_they_apply"],
      "/txn answers built at apply time are not counted while built: a "
      "batch holds them all past max-pending-output"),
    M("results_room_never_refused", "src/conn.c",
      "    return !conn_is_closing(c) && output_room(c, n);",
      "    return !conn_is_closing(c) || output_room(c, n);",
      ["py:test_hostile_clients.py::"
       "test_http_range_over_the_output_budget_is_not_built"],
      "ranges past max-pending-output are built whole, then refused and "
      "their connections closed"),
    M("json_str_one_escape_unescaped", "src/http_parse.c",
      "    if (extra == 0) {\n        if (n)",
      "    if (extra <= 1) {\n        if (n)",
      ["unit:http/json_strings"],
      "a value with one quote goes out unescaped: broken JSON"),
    M("backup_interval_ignored", "src/node_snapshot.c",
      "    if (nd->snap_child.pid != 0 || pz_queue_empty(&nd->snap_waiters) ||\n"
      "        NIO(now) < nd->backup_next_at)",
      "    if (nd->snap_child.pid != 0 || pz_queue_empty(&nd->snap_waiters) ||\n"
      "        (NIO(now) < nd->backup_next_at && false))",
      ["py:test_backup.py::test_backup_hangups_take_few_snapshots",
       "py:test_backup.py::test_concurrent_backups_share_one_snapshot"],
      "each backup after a write forks and writes the whole table again"),
    M("backup_snapshot_never_called_off", "src/node.c",
      "        if (req->backup)\n            snaps_backup_gone();",
      "        if (req->backup && false)\n            snaps_backup_gone();",
      ["py:test_backup.py::"
       "test_backup_snapshot_called_off_when_its_clients_go"],
      "a snapshot for backups whose clients all hung up is still written"),
    M("backup_hangup_unnoticed", "src/conn.c",
      "        if (nread == UV_EOF && (c->flags & CONN_EOF_CLOSES)) {",
      "        if (nread == UV_EOF && (c->flags & CONN_EOF_CLOSES) && false) {",
      ["py:test_backup.py::"
       "test_backup_snapshot_called_off_when_its_clients_go"],
      "a backup client that hung up is noticed only once its snapshot is "
      "written"),
    M("sse_progress_before_start", "src/http_watch.c",
      "            !watch_progress_ok(&ws->w, rev) ||\n",
      "",
      ["py:test_watch.py::test_progress_never_below_a_future_start"],
      "an SSE progress event names a revision before the watch's start"),
    M("done_turn_unbounded", "src/node.c",
      "        if (!first && NIO(clock_ns) > until) {",
      "        if (!first && NIO(clock_ns) > until && false) {",
      ["py:test_hostile_clients.py::"
       "test_many_costly_reads_do_not_hold_the_loop"],
      "every read a read index confirmed runs in one loop turn, holding "
      "the leader's heartbeats"),
    M("fd_limit_not_fitted", "src/conn.c",
      "    *per = (size_t)fit;\n",
      "    *per = want;\n",
      ["py:test_fd_limit.py::"
       "test_max_clients_fits_the_limit_and_floods_do_not_lock_out"],
      "max-clients past the open-files limit: a flood of idle connections "
      "locks every client and peer out"),
    M("fd_soft_limit_not_raised", "src/conn.c",
      "    if (rl.rlim_cur < need && rl.rlim_cur < rl.rlim_max) {",
      "    if (rl.rlim_cur < need && rl.rlim_cur < rl.rlim_max && false) {",
      ["py:test_fd_limit.py::test_soft_limit_is_raised_toward_max_clients"],
      "a shell's soft limit of 1024 lowers max-clients though the hard "
      "limit allows far more"),
    # --- relaying to a leader not known yet (src/grpc.c, src/http.c,
    #     src/node.c, src/etcd_lease.c) --------------------------------
    M("relay_without_leader_fails_at_once", "src/grpc.c",
      "        if (gs->be->wait_leader && st->leader_waits < 2) {",
      "        if (gs->be->wait_leader && st->leader_waits < 0) {",
      ["unit:grpc/relayed_call_waits_for_a_leader",
       "py:test_forward_retry.py::"
       "test_relayed_calls_wait_for_a_leader_after_a_restart"],
      "a gRPC or etcd call a follower relays with no leader known (an etcd "
      "Put with ignore_value) fails at once instead of waiting for one"),
    M("forwarded_call_refused_during_election", "src/grpc.c",
      "    if (rv == PZ_ENOLEADER && gs->be->wait_leader) {",
      "    if (rv == PZ_ENOLEADER && gs->be->wait_leader && "
      "!st->was_forwarded) {",
      ["unit:grpc/forwarded_call_waits_for_an_election_here"],
      "a write forwarded to a node that knows no leader fails at once, "
      "where an HTTP one waits for the election"),
    M("http_relay_without_leader_address", "src/http.c",
      "    if (addr == NULL && h->leader_waits < 2) {",
      "    if (addr == NULL && h->leader_waits < 0) {",
      ["py:test_forward_retry.py::"
       "test_calls_wait_for_the_address_of_a_known_leader"],
      "an HTTP write on a node that knows the leader but not its address "
      "gets 503 at once instead of waiting for it"),
    M("leader_wait_ignores_its_address", "src/node.c",
      "    if (members_leader_told())\n        reqs_done(req, 0);",
      "    if (nd->leader)\n        reqs_done(req, 0);",
      ["py:test_forward_retry.py::"
       "test_calls_wait_for_the_address_of_a_known_leader"],
      "a wait for a leader ends as soon as one is named, before this node "
      "can reach it: relayed calls fail at once just after a restart"),
    M("keepalive_relay_without_leader_fails", "src/etcd_lease.c",
      "    if (rv == PZ_ENOLEADER && !k->leader_waited &&",
      "    if (rv == PZ_ENOLEADER && k->leader_waited &&",
      ["py:test_forward_retry.py::"
       "test_relayed_calls_wait_for_a_leader_after_a_restart"],
      "a LeaseKeepAlive request on a node with no leader known fails at "
      "once instead of waiting for one"),
    M("keepalive_relay_failure_ends_stream", "src/etcd_lease.c",
      "    bool lost = call->unsent || call->status == GRPC_UNAVAILABLE ||\n"
      "                call->status == GRPC_DEADLINE_EXCEEDED;\n",
      "    bool lost = false;\n",
      ["py:test_etcd_lease_failover.py::"
       "test_keepalive_stream_survives_the_leader_killed",
       "py:test_etcd_lease_failover.py::"
       "test_keepalive_stream_survives_leadership_transfers"],
      "a LeaseKeepAlive relay that finds the leader gone ends the client's "
      "stream with UNAVAILABLE instead of going to the next leader"),
    M("keepalive_retry_deadline_from_each_try", "src/etcd_lease.c",
      "        k->charged = true;\n        k->leader_waited = false;\n",
      "        k->charged = true;\n        k->leader_waited = false;\n"
      "        k->deadline = now + grpc_stream_server(st)->retry_window;\n",
      ["py:test_etcd_lease_failover.py::"
       "test_keepalive_with_no_leader_fails_after_request_timeout"],
      "a LeaseKeepAlive relay that keeps failing goes again for ever: its "
      "request-timeout counts from the last try, not the first"),
    # --- a read-only Txn's results (src/etcd_kv.c) ---------------------
    M("txn_results_kept_with_the_stream", "src/etcd_kv.c",
      "     * tried again (put_ignore) has dropped its items already. */\n"
      "    ekv_items_free(e);\n",
      "     * tried again (put_ignore) has dropped its items already. */\n",
      ["py:test_hostile_clients.py::"
       "test_read_only_txn_answers_waiting_are_held_once"],
      "a Txn's copied results stay until its client has read the answer "
      "packed from them: held twice, once uncounted"),
    M("txn_reservation_kept_until_stream_end", "src/etcd_kv.c",
      "    grpc_stream_charge(st, 0, e->reserved);",
      "    grpc_stream_charge(st, 0, 0);",
      ["py:test_txn_limits.py::"
       "test_etcd_read_only_txns_give_their_budget_back"],
      "a Txn's reservation in max-pending-output is counted with its "
      "answer until the stream ends: a large answer is refused"),
    M("kv_span_kept_on_unlink", "src/kv.c",
      "                *sp += spans_of(e)[i - 1] - 1;",
      "                *sp += 0;",
      ["unit:kv/range_count_spans"],
      "a link to a removed key keeps its span: counts past it are off"),
    M("kv_span_tail_append_one", "src/kv.c",
      "                    n - kv->tail_rank[i];",
      "                    1;",
      ["unit:kv/range_count_spans"],
      "a key appended at the tails (a snapshot load) gets span 1 from "
      "every tail, however far behind it"),
    M("kv_span_lost_on_relink", "src/kv.c",
      "        if (old->level > 1) /* the same place: the same spans */",
      "        if (old->level > 1 && e == old) /* the same place: the same spans */",
      ["unit:kv/range_count_spans"],
      "a put that relinks a new entry in the old one's place leaves its "
      "spans unset"),
    M("etcd_count_walks_past_limit", "src/etcd_kv.c",
      "    return l->n >= l->keep || l->over;",
      "    return l->over;",
      ["py:test_range_count.py::"
       "test_limited_range_stops_its_walk_at_the_limit"],
      "an etcd Range with a limit walks the whole range for its count"),
    # --- applying in steps (src/kv.c, src/node.c, src/raft.c) ----------
    M("apply_budget_ignored", "src/node.c",
      "    nd->ap.left = nd->ap.budget;\n    if (nd->ap.job == NULL",
      "    nd->ap.left = UINT64_MAX;\n    if (nd->ap.job == NULL",
      ["py:test_chunked_apply.py::"
       "test_huge_prefix_delete_keeps_the_cluster_calm"],
      "a huge delete is applied in one loop turn again: heartbeats stop "
      "and the followers elect another leader"),
    M("set_charges_no_unit", "src/kv.c",
      "        *budget -= PZ_MIN(*budget, 1 + (uint64_t)len / JOB_BYTES_PER_UNIT);",
      "",
      ["unit:kv/job_set_del_grant_charge", "nodesim:150"],
      "SETs cost no apply budget: a follower catching up applies every "
      "entry handed out at once in one loop turn"),
    M("empty_command_costs_nothing", "src/kv.c",
      "    else if (*budget == had) /* its steps found nothing to do */\n"
      "        *budget -= PZ_MIN(*budget, 1);",
      "    else if (*budget == had + 1) /* its steps found nothing to do */\n"
      "        *budget -= PZ_MIN(*budget, 1);",
      ["unit:kv/job_set_del_grant_charge"],
      "a transaction whose branch is empty, or a revoke of a lease with no "
      "key, costs no apply budget: any number of them go in one turn"),
    M("spent_budget_applies_on", "src/node.c",
      "        if (nd->ap.left == 0 || !apply_entry(&rd->committed[i])) {",
      "        if (!apply_entry(&rd->committed[i])) {",
      ["nodesim:150"],
      "entries handed out past the turn's apply budget are applied in the "
      "same turn"),
    M("applied_index_before_entry_end", "src/node.c",
      "            nd->ap.req = w;\n            return false;",
      "            nd->ap.req = w;\n            nd->applied = e->index;\n"
      "            return false;",
      ["unit:node_sim/seeds", "nodesim:150"],
      "the applied index counts an entry of which only part is applied "
      "(a snapshot or a restart would keep half of it)"),
    M("stale_read_mid_entry", "src/node.c",
      "    if (kv_paused(nd->kv)) {\n        /* Part of an entry is applied",
      "    if (kv_paused(nd->kv) && false) {\n        /* Part of an entry "
      "is applied",
      ["unit:node_sim/seeds",
       "py:test_chunked_apply.py::"
       "test_huge_prefix_delete_keeps_the_cluster_calm"],
      "callbacks (stale reads among them) run with part of an entry "
      "applied and read half of it"),
    M("raft_hold_ignored", "src/raft.c",
      "    r->apply_held = hold;",
      "    r->apply_held = hold && false;",
      ["unit:raft/hold_apply_keeps_following", "unit:node_sim/seeds"],
      "the core hands out committed entries while one is being applied "
      "in steps"),
    M("job_frozen_revision_live", "src/kv.c",
      "    if (kv->paused)\n        return kv->paused->before.revision;",
      "    if (kv->paused && false)\n        return "
      "kv->paused->before.revision;",
      ["unit:kv/job_chunked_vs_oneshot"],
      "readers of the revision see the revision of an entry applied only "
      "in part"),
    M("delrange_resume_skips", "src/kv.c",
      "        (*budget)--;\n        e = *upd[0];",
      "        (*budget)--;\n        e = *upd[0];\n        if (*budget == 0 "
      "&& e)\n            e = e->fwd[0];",
      ["unit:kv/job_chunked_vs_oneshot"],
      "a DELRANGE that pauses skips a key when it goes on"),
    M("snapshot_fork_mid_entry", "src/node_snapshot.c",
      "bool snaps_can_fork(void)\n{\n    return !kv_paused(nd->kv);",
      "bool snaps_can_fork(void)\n{\n    return kv_paused(nd->kv) || true;",
      ["unit:node_sim/seeds", "nodesim:150"],
      "a snapshot is forked with part of an entry applied"),
    M("applied_entries_not_counted", "src/node.c",
      "    node_metrics_applied(1);\n",
      "",
      ["py:test_chunked_apply.py::"
       "test_huge_prefix_delete_keeps_the_cluster_calm"],
      "pyazdb_raft_applied_entries_total stops counting entries as they "
      "are applied"),
    M("range_limit_past_keys_holds_every_view", "src/etcd_kv.c",
      "                      .max = e->max_bytes}; /* stop past it */",
      "                      .max = SIZE_MAX}; /* stop past it */",
      ["py:test_range_count.py::"
       "test_range_with_a_limit_past_its_keys_holds_what_an_unlimited_one_does"],
      "a Range with a limit past its keys keeps a view of every key before "
      "it finds its answer too large"),
    M("range_sorted_limit_past_keys_unbounded", "src/etcd_kv.c",
      "        if (PZ_MIN(l->n, l->top - 1) > l->max / RANGE_KEY_COST)\n"
      "            l->over = true;\n",
      "",
      ["py:test_range_count.py::"
       "test_range_with_a_limit_past_its_keys_holds_what_an_unlimited_one_does"],
      "a sorted Range with a limit past its keys selects every view before "
      "it finds its answer too large"),
    M("conn_out_kept_after_sent", "src/conn.c",
      "            pz_buf_reset(&c->out);\n"
      "            pz_buf_trim(&c->out, OUT_KEEP_MAX);\n",
      "            pz_buf_reset(&c->out);\n",
      ["py:test_hostile_clients.py::"
       "test_answers_sent_leave_no_buffer_on_open_connections"],
      "an open connection keeps the buffer of its largest answer, "
      "uncounted"),
    M("conn_partly_sent_keeps_buffer", "src/conn.c",
      "        if (c->out.cap > OUT_KEEP_MAX && w->len < c->out.cap / 4) {",
      "        if (c->out.cap > OUT_KEEP_MAX && w->len < c->out.cap / 4 &&\n"
      "            false) {",
      ["py:test_hostile_clients.py::"
       "test_answers_partly_sent_hold_only_what_waits"],
      "the rest of an answer the kernel took most of holds the whole "
      "buffer while only the rest is counted"),
    M("conn_rest_from_start", "src/conn.c",
      "            memcpy(w->mem, c->out.data + off, w->len);",
      "            memcpy(w->mem, c->out.data, w->len);",
      ["py:test_hostile_clients.py::"
       "test_answers_partly_sent_hold_only_what_waits"],
      "the rest of an answer the kernel took part of is written from its "
      "start again, so the client reads some bytes twice"),
    M("conn_rest_written_from_start", "src/conn.c",
      "            base = c->out.data + off;",
      "            base = c->out.data;",
      ["py:test_hostile_clients.py::"
       "test_answer_the_kernel_took_part_of_is_read_whole"],
      "the write of an answer's rest, in its own buffer, starts again at "
      "the answer's first byte"),
    M("tls_plain_kept_after_sent", "src/tls.c",
      "    if (t->plain.len == 0)\n"
      "        pz_buf_trim(&t->plain, TLS_KEEP_MAX);\n",
      "",
      ["py:test_tls.py::"
       "test_answers_sent_leave_no_buffers_on_open_connections"],
      "a TLS connection keeps a plaintext queue the size of its largest "
      "answer"),
    M("tls_wbio_kept_after_sent", "src/tls.c",
      "    if (bm && bm->max > TLS_KEEP_MAX && BIO_ctrl_pending(t->wbio) == 0) {",
      "    if (bm && bm->max > TLS_KEEP_MAX && BIO_ctrl_pending(t->wbio) == 0 &&\n"
      "        false) {",
      ["py:test_tls.py::"
       "test_answers_sent_leave_no_buffers_on_open_connections"],
      "a TLS connection keeps a ciphertext buffer the size of its largest "
      "answer"),
    M("fwd_revision_not_relayed", "src/http.c",
      "            .has_revision = f->has_revision,",
      "            .has_revision = false,",
      ["py:test_cluster.py::test_forwarded_writes_keep_the_revision_header"],
      "a compare-and-set through a follower answers 204 without the "
      "revision it wrote at"),
    M("httpc_kept_buffer_not_held", "src/httpc.c",
      "    if (want <= c->body.cap && (!asks || c->granted >= c->body.cap))",
      "    if (want <= c->body.cap)",
      ["unit:httpd/client_answer_in_a_kept_buffer_is_held"],
      "an answer that fits the buffer an earlier one left is never "
      "counted"),
    M("httpc_cut_answer_buffer_kept", "src/httpc.c",
      "    pz_buf_trim(&c->body, KEEP_BODY);\n    c->granted = 0;",
      "    pz_buf_reset(&c->body);\n    c->granted = 0;",
      ["unit:httpd/client_answer_after_a_cut_one_is_held"],
      "the buffer of an answer cut by a broken connection stays at its "
      "size, uncounted, and the next answer uses it without asking"),
    M("fwd_read_txn_no_room_said_applied", "src/http.c",
      "        (status >= 200 && status <= 299 && h->fwd.nothing_written)) {",
      "        (status >= 200 && status <= 299 && !h->fwd.revision)) {",
      ["py:test_hostile_clients.py::"
       "test_forwarded_reads_with_no_room_are_refused_as_reads"],
      "a forwarded /txn whose branch only read, dropped for want of room, "
      "is reported as a write applied (500)"),
    M("fwd_no_leader_refusal_not_retried", "src/fwd.c",
      "(body_is(res, FWD_NOT_LEADER) || body_is(res, FWD_NO_LEADER));",
      "body_is(res, FWD_NOT_LEADER);",
      ["py:test_forward_retry.py::"
       "test_calls_refused_by_a_node_that_knows_no_leader_go_to_the_next"],
      "an HTTP write refused by a node that knows no leader comes back "
      "503 instead of going to the next leader"),
    M("grpc_no_leader_refusal_not_retried", "src/grpc.c",
      "           strcmp(call->message, GRPC_NO_LEADER_WRITE_MSG) == 0 ||\n",
      "",
      ["py:test_forward_retry.py::"
       "test_calls_refused_by_a_node_that_knows_no_leader_go_to_the_next"],
      "a gRPC write refused by a node that knows no leader comes back "
      "UNAVAILABLE instead of going to the next leader"),
    M("grpc_keepalive_relay_uncounted", "src/grpc.c",
      "        !grpc_stream_reserve(st, GRPC_RELAY_COST))",
      "        !grpc_stream_fits(st, GRPC_RELAY_COST))",
      ["py:test_hostile_clients.py::"
       "test_keepalives_relayed_to_a_stalled_leader_are_bounded"],
      "LeaseKeepAlive relays through a stalled leader hold memory that "
      "max-pending-output never sees"),
]


class ListMismatch(Exception):
    pass


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def check_edits(tree, m):
    """Each original text must occur exactly once (edits of one mutation
    apply in order, to the file as the earlier ones left it)."""
    texts = {}
    for path, old, new in m["edits"]:
        full = os.path.join(tree, path)
        if path not in texts:
            if not os.path.exists(full):
                raise ListMismatch(f"{m['name']}: {path} does not exist")
            texts[path] = read(full)
        n = texts[path].count(old)
        if n != 1:
            raise ListMismatch(
                f"{m['name']}: the original text occurs {n} times in {path} "
                f"(must be exactly once); refresh this mutation in "
                f"scripts/mutants.py. Text:\n{old}")
        texts[path] = texts[path].replace(old, new)
    return texts


def run(cmd, cwd, timeout, log):
    """(status, seconds): status 'pass', 'fail' or 'timeout'."""
    t0 = time.time()
    with open(log, "ab") as out:
        out.write(("\n$ " + " ".join(cmd) + "\n").encode())
        out.flush()
        p = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=out,
                             start_new_session=True)
        try:
            rc = p.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, 9)
            p.wait()
            return "timeout", time.time() - t0
    return ("pass" if rc == 0 else "fail"), time.time() - t0


def test_cmd(spec):
    kind, _, arg = spec.partition(":")
    if kind == "unit":
        return ["tests/unit/test-unit"] + arg.split()
    if kind == "sim":
        return ["env", f"SIM_SEEDS={int(arg)}", "tests/unit/raft-sim"]
    if kind == "nodesim":
        return ["env", f"NODE_SIM_SEEDS={int(arg)}", "tests/unit/node-sim"]
    if kind == "py":
        base = [PYTHON, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider"]
        if arg.startswith("test_"):
            return base + ["tests/integration/" + arg]
        return base + ["tests/integration", "-k", arg]
    raise SystemExit(f"unknown test kind in {spec!r}")


def build_targets(tests):
    t = set()
    for spec in tests:
        kind = spec.partition(":")[0]
        t.add({"unit": "tests/unit/test-unit", "sim": "tests/unit/raft-sim",
               "nodesim": "tests/unit/node-sim", "py": "all"}[kind])
        if kind == "py":  # the power-cut tests skip without it
            t.add("tests/powerloss/libpowerloss.so")
    return sorted(t)


def make(tree, targets, log):
    return run(["make", "-j2"] + targets, tree, 900, log)[0] == "pass"


def copy_tree(dst):
    skip = {".git", "run", "build", "__pycache__", ".pytest_cache"}
    shutil.copytree(ROOT, dst, symlinks=True,
                    ignore=lambda d, names: [n for n in names if n in skip])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--no-baseline", action="store_true",
                    help="skip running the selected tests unmutated first")
    ap.add_argument("--keep", action="store_true",
                    help="keep the scratch tree (its path is printed)")
    a = ap.parse_args()
    names = [m["name"] for m in MUTATIONS]
    if len(set(names)) != len(names):
        raise SystemExit("mutants: duplicate mutation names")
    if a.list:
        for m in MUTATIONS:
            print(f"{m['name']:34} {m['edits'][0][0]:22} {m['why']}")
        return 0
    chosen = MUTATIONS
    sel = os.environ.get("MUTANTS", "").strip()
    if sel:
        want = [s.strip() for s in sel.split(",") if s.strip()]
        unknown = [w for w in want if w not in names]
        if unknown:
            print("mutants: unknown mutation(s): " + ", ".join(unknown) +
                  " (scripts/mutants.py --list)", file=sys.stderr)
            return 2
        chosen = [m for m in MUTATIONS if m["name"] in want]
    try:
        for m in chosen:
            check_edits(ROOT, m)
    except ListMismatch as e:
        print(f"mutants: the list is out of date: {e}", file=sys.stderr)
        return 2
    if a.check:
        print(f"mutants: all {len(chosen)} mutations match the source")
        return 0

    scratch = tempfile.mkdtemp(prefix="pyazdb-mutants-")
    tree = os.path.join(scratch, "tree")
    logdir = os.path.join(scratch, "logs")
    os.makedirs(logdir)
    copy_tree(tree)
    print(f"mutants: scratch tree {tree}, logs in {logdir}", flush=True)
    targets = sorted({t for m in chosen for t in build_targets(m["tests"])})
    if not make(tree, targets, os.path.join(logdir, "base-build.log")):
        print("mutants: the unmutated tree does not build", file=sys.stderr)
        return 1
    if not a.no_baseline:
        specs = sorted({s for m in chosen for s in m["tests"]})
        for s in specs:
            st, dt = run(test_cmd(s), tree, TEST_TIMEOUT,
                         os.path.join(logdir, "baseline.log"))
            print(f"baseline  {s:60} {st} ({dt:.0f} s)", flush=True)
            if st != "pass":
                print("mutants: a selected test fails without any mutation; "
                      "see baseline.log", file=sys.stderr)
                return 1

    results = []
    t_start = time.time()
    for m in chosen:
        originals = {p: read(os.path.join(tree, p)) for p, _, _ in m["edits"]}
        texts = check_edits(tree, m)
        log = os.path.join(logdir, m["name"] + ".log")
        for p, t in texts.items():
            with open(os.path.join(tree, p), "w", encoding="utf-8") as f:
                f.write(t)
        t0 = time.time()
        verdict, by = "missed", ""
        try:
            if not make(tree, build_targets(m["tests"]), log):
                verdict, by = "no-build", "see log"
            else:
                for spec in m["tests"]:
                    st, _ = run(test_cmd(spec), tree, TEST_TIMEOUT, log)
                    if st != "pass":
                        verdict = "caught"
                        by = spec + (" (timeout)" if st == "timeout" else "")
                        break
        finally:
            for p, t in originals.items():
                full = os.path.join(tree, p)
                with open(full, "w", encoding="utf-8") as f:
                    f.write(t)
                # newer than any object built from the mutant
                now = time.time() + 1
                os.utime(full, (now, now))
        dt = time.time() - t0
        results.append((m["name"], verdict, by, dt))
        print(f"{verdict:8}  {m['name']:34} {by:56} {dt:5.0f} s", flush=True)

    caught = sum(1 for r in results if r[1] == "caught")
    print(f"\nmutants: {caught}/{len(results)} caught "
          f"({100.0 * caught / max(1, len(results)):.0f}%) in "
          f"{time.time() - t_start:.0f} s")
    bad = [r[0] for r in results if r[1] != "caught"]
    if bad:
        print("mutants: not caught: " + ", ".join(bad))
        print(f"mutants: logs kept in {logdir}")
    elif not a.keep:
        shutil.rmtree(scratch, ignore_errors=True)
    if a.keep:
        print(f"mutants: scratch tree kept: {tree}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
