/* node_metrics.c - the node's figures in GET /metrics (node_metrics.h).
 *
 * Happy path: node_metrics_init adds a collector to stats.c -> the driver
 * reports events as they happen (counters and histograms below) -> a
 * scrape renders them, then the gauges read from raft_status, store_stats,
 * the transport and the data directory at that moment.
 *
 * Peer round trip: the time from a heartbeat sent to a peer to its answer
 * (one outstanding per peer; a heartbeat sent before the answer to the
 * previous one restarts the clock, so a lost answer is not counted).
 *
 * Failure modes: none; a figure that cannot be read (the database file
 * missing) is left out of the page. */
#include "node_metrics.h"

#include <stdio.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include "node_internal.h"
#include "stats.h"

#define MAX_RTT_PEERS 16 /* peers whose heartbeat is timed at once */
#define APP_LOST_NS (5 * 1000000000ull) /* an AppendEntries unanswered this
                                        long was lost */

static struct {
    bool on;                              /* node_metrics_init ran */
    struct metrics_family leader_changes; /* no labels */
    struct metrics_family elections;      /* no labels */
    struct metrics_family sent;           /* type */
    struct metrics_family recv;           /* type */
    struct metrics_series *sent_by[RAFT_MSG_TYPE_MAX]; /* sent's series by
                                                          type, once used */
    struct metrics_series *recv_by[RAFT_MSG_TYPE_MAX]; /* recv's */
    struct metrics_family read_rounds;                 /* no labels */
    struct metrics_family proposals;                   /* no labels */
    struct metrics_family proposals_failed;            /* no labels */
    struct metrics_family applied;                     /* no labels */
    struct metrics_family rtt;                         /* peer */
    struct metrics_family write_s;                     /* no labels */
    struct metrics_family fsync_s;                     /* no labels */
    struct metrics_family ckpt_s;                      /* no labels */
    struct metrics_family batch;                       /* no labels */
    struct metrics_family queue_s;                     /* no labels */
    struct metrics_family handback_s;                  /* no labels */
    struct metrics_family commit_s;                    /* no labels */
    struct metrics_family ack_s;                       /* peer */
    struct metrics_family compactions;                 /* no labels */
    struct metrics_family snaps;                       /* result */
    struct metrics_family snap_s;                      /* no labels */
    struct metrics_family step_s;                      /* no labels */
    struct metrics_family segments;                    /* no labels */
    struct metrics_family rows_deleted;                /* no labels */
    uint64_t steps;         /* store_stats.steps seen */
    uint64_t segs;          /* store_stats.segments_dropped seen */
    uint64_t rows_del;      /* store_stats.rows_deleted seen */
    uint64_t batches;       /* store_stats.batches seen */
    uint64_t sync_batches;  /* store_stats.sync_batches seen */
    uint64_t write_ns;      /* store_stats.write_ns seen */
    uint64_t ckpts;         /* store_stats.checkpoints seen */
    uint64_t ckpt_ns;       /* store_stats.checkpoint_ns seen */
    uint64_t last_read_ctx; /* read round last counted */
    double restore_s;       /* startup load time */
    double fork_s;          /* the newest snapshot's fork() */
    struct {
        uint64_t id;      /* peer, 0: free slot */
        uint64_t sent_ns; /* heartbeat sent, 0: none outstanding */
        uint64_t app_index; /* last index of the AppendEntries timed */
        uint64_t app_ns;    /* it was sent, 0: none outstanding */
    } hb[MAX_RTT_PEERS];
} nm;

static const char *const lbl_type[] = {"type", NULL};
static const char *const lbl_peer[] = {"peer", NULL};
static const char *const lbl_result[] = {"result", NULL};

static struct metrics_series *one(struct metrics_family *f)
{
    return metrics_get(f, NULL);
}

static const char *peer_name(uint64_t id)
{
    struct member *m = members_find(id);
    return m && m->name && m->name[0] ? m->name : "unknown";
}

/* --- events --------------------------------------------------------------- */

void node_metrics_soft_state(const struct raft_soft_state *ss)
{
    if (!nm.on)
        return;
    if (ss->leader != 0 && ss->leader != nd->leader)
        metrics_inc(one(&nm.leader_changes), 1);
    if (ss->role == RAFT_CANDIDATE && nd->role != RAFT_CANDIDATE)
        metrics_inc(one(&nm.elections), 1);
}

/* The type label: raft_msg_type_name's, in lower case. */
static const char *msg_type(uint8_t type)
{
    static const char *const names[] = {
        "unknown",          "append",
        "append_resp",      "heartbeat",
        "heartbeat_resp",   "prevote",
        "prevote_resp",     "vote",
        "vote_resp",        "timeout_now",
        "read_index",       "read_index_resp",
        "install_snapshot", "install_snapshot_resp"};
    _Static_assert(PZ_ARRAY_SIZE(names) == RAFT_MSG_TYPE_MAX,
                   "a name for every message type");
    return type < PZ_ARRAY_SIZE(names) ? names[type] : "unknown";
}

/* The series of m's type in f, looked up once per type. */
static struct metrics_series *
by_type(struct metrics_family *f, struct metrics_series **cache, uint8_t type)
{
    if (type >= RAFT_MSG_TYPE_MAX)
        type = 0;
    if (cache[type] == NULL)
        cache[type] = metrics_get(f, (const char *const[]){msg_type(type)});
    return cache[type];
}

/* The timing slot of peer id, taken if free; NULL if all are taken. */
static size_t peer_slot(uint64_t id, bool take)
{
    size_t free_slot = MAX_RTT_PEERS;
    for (size_t i = 0; i < MAX_RTT_PEERS; i++) {
        if (nm.hb[i].id == id)
            return i;
        if (nm.hb[i].id == 0 && free_slot == MAX_RTT_PEERS)
            free_slot = i;
    }
    if (take && free_slot < MAX_RTT_PEERS)
        nm.hb[free_slot].id = id;
    return take ? free_slot : MAX_RTT_PEERS;
}

void node_metrics_sent(const struct raft_msg *m)
{
    if (!nm.on)
        return;
    metrics_inc(by_type(&nm.sent, nm.sent_by, m->type), 1);
    if (m->type == RAFT_MSG_HEARTBEAT && m->context != 0 &&
        m->context != nm.last_read_ctx) {
        nm.last_read_ctx = m->context; /* one round reaches every peer */
        metrics_inc(one(&nm.read_rounds), 1);
    }
    bool app = m->type == RAFT_MSG_APPEND && m->n_entries > 0;
    if (m->type != RAFT_MSG_HEARTBEAT && !app)
        return;
    size_t i = peer_slot(m->to, true);
    if (i == MAX_RTT_PEERS)
        return;
    if (!app) {
        nm.hb[i].sent_ns = stats_now_ns();
    } else {
        /* Timed one at a time: those sent before its answer are not. One
         * unanswered for APP_LOST_NS was lost (a link that dropped, a
         * leadership lost and won again): time this one instead. */
        uint64_t now = stats_now_ns();
        if (nm.hb[i].app_ns == 0 || now - nm.hb[i].app_ns > APP_LOST_NS) {
            nm.hb[i].app_index = m->entries[m->n_entries - 1].index;
            nm.hb[i].app_ns = now;
        }
    }
}

void node_metrics_recv(const struct raft_msg *m)
{
    if (!nm.on)
        return;
    metrics_inc(by_type(&nm.recv, nm.recv_by, m->type), 1);
    if (m->type != RAFT_MSG_HEARTBEAT_RESP && m->type != RAFT_MSG_APPEND_RESP)
        return;
    size_t i = peer_slot(m->from, false);
    if (i == MAX_RTT_PEERS)
        return;
    struct metrics_family *f = NULL;
    uint64_t *sent = NULL;
    if (m->type == RAFT_MSG_HEARTBEAT_RESP && nm.hb[i].sent_ns) {
        f = &nm.rtt;
        sent = &nm.hb[i].sent_ns;
    } else if (m->type == RAFT_MSG_APPEND_RESP && nm.hb[i].app_ns) {
        if (m->reject) {
            nm.hb[i].app_ns = 0; /* it goes again: start over */
            return;
        }
        if (m->index < nm.hb[i].app_index)
            return; /* an answer to an earlier one */
        f = &nm.ack_s;
        sent = &nm.hb[i].app_ns;
    }
    if (f == NULL)
        return;
    double s = (double)(stats_now_ns() - *sent) / 1e9;
    *sent = 0;
    metrics_observe(metrics_get(f, (const char *const[]){peer_name(m->from)}),
                    s);
}

/* The store's checkpoints since the last look, each observed: exact in
 * count and sum, each at their mean if several ran meanwhile (a vacuum
 * step's, say, counted when the scrape comes). */
static void note_checkpoints(const struct store_stats *ss)
{
    if (ss->checkpoints < nm.ckpts) { /* a store opened anew */
        nm.ckpts = ss->checkpoints;
        nm.ckpt_ns = ss->checkpoint_ns;
    }
    uint64_t n = ss->checkpoints - nm.ckpts;
    if (n == 0)
        return;
    double mean = (double)(ss->checkpoint_ns - nm.ckpt_ns) / (double)n / 1e9;
    for (uint64_t i = 0; i < n; i++)
        metrics_observe(one(&nm.ckpt_s), mean);
    nm.ckpts = ss->checkpoints;
    nm.ckpt_ns = ss->checkpoint_ns;
}

void node_metrics_written(void)
{
    if (!nm.on)
        return;
    struct store_stats ss;
    NIO(store_stats, &ss);
    note_checkpoints(&ss);
    if (ss.batches != nm.batches) {
        metrics_observe(one(&nm.fsync_s), (double)ss.last_commit_ns / 1e9);
        metrics_observe(one(&nm.write_s),
                        (double)(ss.write_ns - nm.write_ns) / 1e9);
        metrics_observe(one(&nm.batch), (double)ss.last_batch_entries);
        if (ss.sync_batches == nm.sync_batches) { /* the thread pool's */
            metrics_observe(one(&nm.queue_s),
                            (double)ss.last_queue_ns / 1e9);
            metrics_observe(one(&nm.handback_s),
                            (double)ss.last_handback_ns / 1e9);
        }
    }
    nm.batches = ss.batches;
    nm.sync_batches = ss.sync_batches;
    nm.write_ns = ss.write_ns;
}

void node_metrics_applied(size_t n)
{
    if (nm.on && n)
        metrics_inc(one(&nm.applied), (double)n);
}

void node_metrics_proposed(int rv)
{
    if (!nm.on)
        return;
    metrics_inc(one(rv == 0 ? &nm.proposals : &nm.proposals_failed), 1);
}

void node_metrics_proposal_failed(void)
{
    if (nm.on)
        metrics_inc(one(&nm.proposals_failed), 1);
}

void node_metrics_committed(uint64_t proposed_ns)
{
    if (nm.on && proposed_ns)
        metrics_observe(one(&nm.commit_s),
                        (double)(stats_now_ns() - proposed_ns) / 1e9);
}

void node_metrics_compacted(void)
{
    if (!nm.on)
        return;
    metrics_inc(one(&nm.compactions), 1);
    struct store_stats ss;
    NIO(store_stats, &ss);
    if (ss.steps != nm.steps)
        metrics_observe(one(&nm.step_s), (double)ss.last_step_ns / 1e9);
    nm.steps = ss.steps;
    metrics_inc(one(&nm.segments), ss.segments_dropped - nm.segs);
    nm.segs = ss.segments_dropped;
    metrics_inc(one(&nm.rows_deleted), ss.rows_deleted - nm.rows_del);
    nm.rows_del = ss.rows_deleted;
}

void node_metrics_snapshot(bool ok, uint64_t started_ms)
{
    if (!nm.on)
        return;
    metrics_inc(
        metrics_get(&nm.snaps, (const char *const[]){ok ? "ok" : "failed"}), 1);
    uint64_t now_ms = stats_now_ns() / 1000000;
    if (ok && now_ms >= started_ms)
        metrics_observe(one(&nm.snap_s), (double)(now_ms - started_ms) / 1e3);
}

void node_metrics_snapshot_forked(uint64_t fork_us)
{
    nm.fork_s = (double)fork_us / 1e6;
}

void node_metrics_snapshot_cancelled(void)
{
    if (nm.on)
        metrics_inc(metrics_get(&nm.snaps, (const char *const[]){"cancelled"}),
                    1);
}

void node_metrics_restored(uint64_t started_ns)
{
    nm.restore_s = (double)(stats_now_ns() - started_ns) / 1e9;
}

/* --- the scrape ----------------------------------------------------------- */

static void gauge(struct pz_buf *b, const char *name, const char *help,
                  double v)
{
    metrics_render_one(b, name, METRICS_GAUGE, help, v);
}

static void counter(struct pz_buf *b, const char *name, const char *help,
                    double v)
{
    metrics_render_one(b, name, METRICS_COUNTER, help, v);
}

static size_t queue_len(const struct pz_queue *q)
{
    size_t n = 0;
    for (const struct pz_queue *e = q->next; e != q; e = e->next)
        n++;
    return n;
}

static uint64_t file_size(const char *path, const char *suffix)
{
    char p[4096];
    struct stat sb;
    snprintf(p, sizeof p, "%s%s", path, suffix);
    return stat(p, &sb) == 0 ? (uint64_t)sb.st_size : 0;
}

uint64_t node_db_size(void)
{
    const char *path = node_db_path();
    return path[0] ? file_size(path, "") + file_size(path, "-wal") : 0;
}

static void render_raft(struct pz_buf *b)
{
    struct raft_status rs;
    raft_status(nd->raft, &rs);
    gauge(b, "pyazdb_raft_term", "Current Raft term.", (double)rs.term);
    gauge(b, "pyazdb_raft_is_leader", "1 when this node is the leader.",
          rs.role == RAFT_LEADER);
    gauge(b, "pyazdb_raft_has_leader", "1 when a leader is known.",
          rs.leader != 0);
    gauge(b, "pyazdb_raft_commit_index", "Highest committed log index.",
          (double)rs.commit);
    gauge(b, "pyazdb_raft_applied_index",
          "Highest log index applied to the state machine.",
          (double)nd->applied);
    gauge(b, "pyazdb_raft_last_index", "Last log index.",
          (double)rs.last_index);
    gauge(b, "pyazdb_raft_persisted_index", "Last log index durable here.",
          (double)rs.persisted_index);
    gauge(b, "pyazdb_raft_uncommitted_bytes",
          "Leader: bytes of the entries it appended and has not committed "
          "and applied yet (refused past raft-max-uncommitted).",
          (double)rs.uncommitted);
    gauge(b, "pyazdb_raft_log_entries",
          "Log entries held (not yet compacted into a snapshot).",
          rs.last_index >= rs.first_index
              ? (double)(rs.last_index - rs.first_index + 1)
              : 0);
    gauge(b, "pyazdb_raft_proposals_pending",
          "Accepted writes waiting to be applied.",
          (double)queue_len(&nd->proposals));
    size_t voters = 0;
    for (size_t i = 0; i < nd->n_members; i++)
        voters += nd->members[i].voter;
    gauge(b, "pyazdb_raft_voters", "Voters in the current configuration.",
          (double)voters);
    metrics_render(b, &nm.leader_changes);
    metrics_render(b, &nm.elections);
    metrics_render(b, &nm.proposals);
    metrics_render(b, &nm.proposals_failed);
    metrics_render(b, &nm.applied);
    metrics_render(b, &nm.read_rounds);
    counter(b, "pyazdb_raft_lease_reads_total",
            "Linearizable reads confirmed by the leader's lease, without a "
            "heartbeat round of their own (raft-read-lease).",
            (double)rs.lease_reads);
    metrics_render(b, &nm.sent);
    metrics_render(b, &nm.recv);

    /* Leader only: one series per follower. */
    metrics_render_head(b, "pyazdb_raft_follower_lag_entries", METRICS_GAUGE,
                        "Leader only: entries of the leader's log a follower "
                        "has not acknowledged.");
    for (size_t i = 0; i < rs.n_peers; i++) {
        const struct raft_peer_status *p = &rs.peers[i];
        metrics_render_sample(
            b, "pyazdb_raft_follower_lag_entries", lbl_peer,
            (const char *const[]){peer_name(p->id)},
            rs.last_index > p->match ? (double)(rs.last_index - p->match) : 0);
    }
    metrics_render_head(b, "pyazdb_raft_follower_last_contact_seconds",
                        METRICS_GAUGE,
                        "Leader only: time since a follower was last heard "
                        "from.");
    for (size_t i = 0; i < rs.n_peers; i++) {
        const struct raft_peer_status *p = &rs.peers[i];
        metrics_render_sample(b, "pyazdb_raft_follower_last_contact_seconds",
                              lbl_peer, (const char *const[]){peer_name(p->id)},
                              (double)(p->last_contact * nd->tick_ms) / 1e3);
    }
    metrics_render(b, &nm.rtt);
    metrics_render(b, &nm.ack_s);
    metrics_render(b, &nm.commit_s);
}

static void render_storage(struct pz_buf *b)
{
    struct store_stats ss;
    NIO(store_stats, &ss);
    metrics_render(b, &nm.write_s);
    metrics_render(b, &nm.fsync_s);
    note_checkpoints(&ss);
    metrics_render(b, &nm.ckpt_s);
    metrics_render(b, &nm.batch);
    metrics_render(b, &nm.queue_s);
    metrics_render(b, &nm.handback_s);
    counter(b, "pyazdb_storage_loop_writes_total",
            "Log write transactions run on the event loop, with no "
            "thread-pool hand-off.",
            (double)ss.sync_batches);
    counter(b, "pyazdb_storage_hard_state_writes_total",
            "Log write transactions that also rewrote the hard state "
            "(term, vote, commit index).",
            (double)ss.hs_writes);
    counter(b, "pyazdb_storage_written_entries_total",
            "Log entries written to the database.", (double)ss.entries);
    counter(b, "pyazdb_storage_written_bytes_total",
            "Log entry payload bytes written to the database.",
            (double)ss.bytes);
    counter(b, "pyazdb_storage_checkpoint_failures_total",
            "WAL checkpoints that failed: the WAL keeps the pages, and "
            "grows until one succeeds.",
            (double)ss.checkpoint_failures);
    counter(b, "pyazdb_storage_vacuum_nospace_total",
            "Steps giving raft.db's free pages back to the file system that "
            "found no room (a full disk): the pages stay free in raft.db, "
            "and the next snapshot's compaction tries again.",
            (double)ss.vacuum_nospace);
    gauge(b, "pyazdb_storage_db_size_bytes",
          "Size of raft.db and its write-ahead log.", (double)node_db_size());
    struct statvfs fs;
    if (statvfs(nd->cfg->raft_data, &fs) == 0) {
        gauge(b, "pyazdb_storage_disk_free_bytes",
              "Bytes available to the server on the data directory's file "
              "system.",
              (double)fs.f_bavail * (double)fs.f_frsize);
        gauge(b, "pyazdb_storage_disk_size_bytes",
              "Size of the data directory's file system.",
              (double)fs.f_blocks * (double)fs.f_frsize);
    }
    metrics_render(b, &nm.compactions);
    metrics_render(b, &nm.step_s);
    metrics_render(b, &nm.segments);
    metrics_render(b, &nm.rows_deleted);
    metrics_render(b, &nm.snaps);
    metrics_render(b, &nm.snap_s);
    gauge(b, "pyazdb_snapshot_size_bytes",
          "File size of the newest local snapshot (0: none).",
          (double)nd->snap_size);
    gauge(b, "pyazdb_snapshot_index",
          "Raft index of the newest local snapshot (0: none).",
          (double)nd->snap_index);
    gauge(b, "pyazdb_snapshot_fork_seconds",
          "Time the fork() of the newest local snapshot started (finished "
          "or not) held the event loop (it copies the page tables: grows "
          "with the memory in use).",
          nm.fork_s);
    gauge(b, "pyazdb_startup_load_seconds",
          "Time to load the snapshot and log at startup.", nm.restore_s);
    gauge(b, "pyazdb_kv_keys", "Keys in the state machine.",
          (double)kv_count(nd->kv));
}

/* Per peer, from the transport's counters. */
static void peer_family(struct pz_buf *b, const char *name,
                        enum metrics_type type, const char *help, int which)
{
    metrics_render_head(b, name, type, help);
    for (size_t i = 0; i < nd->n_members; i++) {
        const struct member *m = &nd->members[i];
        struct transport_peer_stats ps;
        if (m->id == nd->id || NIO(peer_stats, m->id, &ps) < 0)
            continue;
        double v = which == 0   ? (double)ps.sent_msgs
                   : which == 1 ? (double)ps.sent_bytes
                   : which == 2 ? (double)ps.dropped
                   : which == 3 ? (double)ps.attempts
                   : which == 4 ? (double)ps.refused
                   : which == 5 ? (double)ps.connected
                                : (double)ps.queued_bytes;
        metrics_render_sample(b, name, lbl_peer,
                              (const char *const[]){peer_name(m->id)}, v);
    }
}

static void render_transport(struct pz_buf *b)
{
    peer_family(b, "pyazdb_transport_sent_messages_total", METRICS_COUNTER,
                "Messages handed to a peer connection.", 0);
    peer_family(b, "pyazdb_transport_sent_bytes_total", METRICS_COUNTER,
                "Bytes handed to a peer connection, framing included.", 1);
    peer_family(b, "pyazdb_transport_dropped_messages_total", METRICS_COUNTER,
                "Messages to a peer dropped (queue full, too large).", 2);
    peer_family(b, "pyazdb_transport_connect_attempts_total", METRICS_COUNTER,
                "Connection attempts to a peer.", 3);
    peer_family(b, "pyazdb_transport_handshakes_refused_total", METRICS_COUNTER,
                "Our handshakes a peer refused.", 4);
    peer_family(b, "pyazdb_transport_peer_up", METRICS_GAUGE,
                "1 while the link to a peer is up.", 5);
    peer_family(b, "pyazdb_transport_queued_bytes", METRICS_GAUGE,
                "Bytes waiting in a peer's send queue.", 6);
    struct transport_stats ts;
    NIO(tr_stats, &ts);
    counter(b, "pyazdb_transport_received_messages_total",
            "Messages received from peers.", (double)ts.recv_msgs);
    counter(b, "pyazdb_transport_received_bytes_total",
            "Frame bytes received from peers.", (double)ts.recv_bytes);
    gauge(b, "pyazdb_transport_inbound_connections",
          "Inbound peer connections open.", (double)ts.inbound);
    static const char *const lbl_reason[] = {"reason", NULL};
    const char *name = "pyazdb_transport_inbound_rejected_total";
    metrics_render_head(b, name, METRICS_COUNTER,
                        "Inbound peer connections refused or closed, by "
                        "reason.");
    struct {
        const char *reason;
        uint64_t v;
    } r[] = {{"handshake_refused", ts.inbound_refused},
             {"protocol_error",
              ts.inbound_errors - ts.inbound_invalid - ts.inbound_corrupt},
             {"invalid_message", ts.inbound_invalid},
             {"checksum_mismatch", ts.inbound_corrupt},
             {"handshake_timeout", ts.inbound_timeouts},
             {"evicted", ts.inbound_evicted}};
    for (size_t i = 0; i < PZ_ARRAY_SIZE(r); i++)
        metrics_render_sample(b, name, lbl_reason,
                              (const char *const[]){r[i].reason},
                              (double)r[i].v);
}

static void collect(struct pz_buf *b, void *arg)
{
    PZ_UNUSED(arg);
    if (!nd->open || nd->raft == NULL)
        return;
    render_raft(b);
    render_storage(b);
    render_transport(b);
}

void node_metrics_init(void)
{
    if (nm.on)
        return;
    nm.on = true;
    metrics_family_init(&nm.leader_changes, "pyazdb_raft_leader_changes_total",
                        METRICS_COUNTER, "Times a new leader became known.",
                        NULL, NULL, 0);
    metrics_family_init(
        &nm.elections, "pyazdb_raft_elections_total", METRICS_COUNTER,
        "Elections this node started as a candidate.", NULL, NULL, 0);
    metrics_family_init(&nm.sent, "pyazdb_raft_messages_sent_total",
                        METRICS_COUNTER,
                        "Raft messages sent, by type (heartbeat, "
                        "install_snapshot, ...).",
                        lbl_type, NULL, 0);
    metrics_family_init(&nm.recv, "pyazdb_raft_messages_received_total",
                        METRICS_COUNTER, "Raft messages received, by type.",
                        lbl_type, NULL, 0);
    metrics_family_init(
        &nm.read_rounds, "pyazdb_raft_read_index_rounds_total", METRICS_COUNTER,
        "ReadIndex heartbeat rounds started as leader.", NULL, NULL, 0);
    metrics_family_init(&nm.proposals, "pyazdb_raft_proposals_total",
                        METRICS_COUNTER, "Writes accepted by the leader.", NULL,
                        NULL, 0);
    metrics_family_init(&nm.proposals_failed,
                        "pyazdb_raft_proposals_failed_total", METRICS_COUNTER,
                        "Writes refused by the core or ended with an error "
                        "(leader change, timeout).",
                        NULL, NULL, 0);
    metrics_family_init(
        &nm.applied, "pyazdb_raft_applied_entries_total", METRICS_COUNTER,
        "Committed entries applied to the state machine.", NULL, NULL, 0);
    metrics_family_init(&nm.rtt, "pyazdb_raft_peer_rtt_seconds",
                        METRICS_HISTOGRAM,
                        "Heartbeat round trip to a peer (leader only).",
                        lbl_peer, metrics_latency_bounds, metrics_latency_n);
    metrics_family_init(&nm.write_s, "pyazdb_storage_write_duration_seconds",
                        METRICS_HISTOGRAM,
                        "Log write transactions, BEGIN to durable COMMIT "
                        "and the WAL checkpoint that may follow it.",
                        NULL, metrics_disk_bounds, metrics_disk_n);
    metrics_family_init(&nm.fsync_s, "pyazdb_storage_fsync_duration_seconds",
                        METRICS_HISTOGRAM,
                        "COMMIT of a log write (the WAL fsync).", NULL,
                        metrics_disk_bounds, metrics_disk_n);
    metrics_family_init(&nm.ckpt_s,
                        "pyazdb_storage_checkpoint_duration_seconds",
                        METRICS_HISTOGRAM,
                        "WAL checkpoints: after a log write that left the "
                        "WAL 1000 pages long, and in vacuum steps.",
                        NULL, metrics_disk_bounds, metrics_disk_n);
    metrics_family_init(&nm.batch, "pyazdb_storage_batch_entries",
                        METRICS_HISTOGRAM,
                        "Log entries per write transaction (per fsync).", NULL,
                        metrics_batch_bounds, metrics_batch_n);
    metrics_family_init(&nm.queue_s, "pyazdb_storage_queue_wait_seconds",
                        METRICS_HISTOGRAM,
                        "A log write's wait for a thread-pool worker.", NULL,
                        metrics_wait_bounds, metrics_wait_n);
    metrics_family_init(&nm.handback_s,
                        "pyazdb_storage_completion_wait_seconds",
                        METRICS_HISTOGRAM,
                        "A durable log write's wait for the loop to take its "
                        "completion.",
                        NULL, metrics_wait_bounds, metrics_wait_n);
    metrics_family_init(&nm.commit_s, "pyazdb_raft_commit_duration_seconds",
                        METRICS_HISTOGRAM,
                        "Leader only: a write's proposal to its commit and "
                        "apply.",
                        NULL, metrics_wait_bounds, metrics_wait_n);
    metrics_family_init(&nm.ack_s, "pyazdb_raft_append_ack_seconds",
                        METRICS_HISTOGRAM,
                        "Leader only: AppendEntries with new entries sent to "
                        "a follower until it acknowledges them (durable "
                        "there).",
                        lbl_peer, metrics_wait_bounds, metrics_wait_n);
    metrics_family_init(
        &nm.compactions, "pyazdb_storage_compaction_steps_total",
        METRICS_COUNTER, "Log compaction steps run after a snapshot.", NULL,
        NULL, 0);
    metrics_family_init(&nm.step_s,
                        "pyazdb_storage_compaction_step_duration_seconds",
                        METRICS_HISTOGRAM,
                        "A log compaction or vacuum step after a snapshot: "
                        "the log writes queued meanwhile wait behind it.",
                        NULL, metrics_disk_bounds, metrics_disk_n);
    metrics_family_init(&nm.segments,
                        "pyazdb_storage_compaction_segments_total",
                        METRICS_COUNTER,
                        "Log segments compaction dropped by emptying their "
                        "table at once.",
                        NULL, NULL, 0);
    metrics_family_init(&nm.rows_deleted,
                        "pyazdb_storage_compaction_rows_deleted_total",
                        METRICS_COUNTER,
                        "Log entries compaction deleted one by one (rows "
                        "beside later entries in their table).",
                        NULL, NULL, 0);
    metrics_family_init(&nm.snaps, "pyazdb_snapshots_total", METRICS_COUNTER,
                        "Local snapshots finished, by result.", lbl_result,
                        NULL, 0);
    metrics_family_init(&nm.snap_s, "pyazdb_snapshot_duration_seconds",
                        METRICS_HISTOGRAM,
                        "Time to write a local snapshot, fork to durable "
                        "file.",
                        NULL, metrics_latency_bounds, metrics_latency_n);
    /* Zero-valued series exist from the start, so rate() has a base. */
    struct metrics_family *plain[] = {
        &nm.leader_changes,   &nm.elections,   &nm.read_rounds, &nm.proposals,
        &nm.proposals_failed, &nm.applied,     &nm.write_s,     &nm.fsync_s,
        &nm.ckpt_s,           &nm.batch,       &nm.queue_s,     &nm.handback_s,
        &nm.commit_s,         &nm.compactions, &nm.step_s,      &nm.snap_s,
        &nm.segments,         &nm.rows_deleted};
    for (size_t i = 0; i < PZ_ARRAY_SIZE(plain); i++)
        one(plain[i]);
    stats_add_collector(collect, NULL);
}
