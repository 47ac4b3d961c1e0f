/* raft.c - the pure Raft consensus core: log, elections, replication,
 * membership, leadership transfer, ReadIndex, snapshots and the Ready
 * cycle.
 *
 * Happy path: followers tick until an election timeout, run Pre-Vote, then
 * a real election; the winner appends a NOOP and replicates it; proposals
 * are appended to the leader's log and shipped in APPEND messages built
 * when the next Ready is assembled (so proposals of one loop turn share
 * messages); followers persist and acknowledge; the leader commits entries
 * of its term once a quorum of voters has them durably.
 *
 * Persistence: `persisted` is the last index durable locally that still
 * matches the in-memory log; `unsent` is the first index not yet handed to
 * the driver in a Ready. Truncation lowers both. Only entries <= persisted
 * are applied, and the leader counts itself at `persisted` (thesis
 * §10.2.1: it may replicate before its own write completes). Messages that
 * acknowledge state (APPEND_RESP, votes) go to msgs_after_persist.
 *
 * Entry payloads are reference counted (`rbuf`), so the log, messages in
 * the outbox and the Ready handed out can share them without copies and a
 * truncation never frees a payload still referenced by a Ready.
 *
 * Snapshots: the log holds entries offset+1..last; the entry at offset is
 * gone but its term is kept (the boundary). The snapshot point `snap`
 * (index, term, conf) satisfies offset <= snap.index <= commit: compaction
 * (raft_compact) moves it forward on the driver's word, keeping trailing
 * entries; a follower moves it with INSTALL_SNAPSHOT, which the next Ready
 * hands to the driver to install durably. A leader whose follower needs an
 * entry at or below offset sends the snapshot instead (progress SNAPSHOT).
 *
 * Failure modes: malformed peer messages return PZ_EINVAL and change
 * nothing; stale messages are ignored; broken invariants pz_assert. */
#include <stdio.h>
#include <string.h>

#include "pz.h"
#include "raft.h"

/* --- reference-counted payloads ------------------------------------------- */

struct rbuf {
    size_t refs; /* references (log, outbox, Readys) */
    size_t len;  /* payload bytes, which follow the header */
};

/* From the raft's fifo memory (log payloads, freed about oldest first by
 * compaction), or f NULL for a long-lived one. */
static uint8_t *rbuf_new(struct pz_fifo *f, const uint8_t *src, size_t len)
{
    if (len == 0)
        return NULL;
    struct rbuf *b = pz_fifo_alloc(f, sizeof *b + len);
    b->refs = 1;
    b->len = len;
    memcpy(b + 1, src, len);
    return (uint8_t *)(b + 1);
}

static void rbuf_ref(uint8_t *data)
{
    if (data != NULL)
        ((struct rbuf *)data - 1)->refs++;
}

static void rbuf_unref(uint8_t *data)
{
    if (data == NULL)
        return;
    struct rbuf *b = (struct rbuf *)data - 1;
    pz_assert(b->refs > 0);
    if (--b->refs == 0)
        pz_fifo_free(b);
}

/* dst shares src's payload. */
static void entry_share(struct raft_entry *dst, const struct raft_entry *src)
{
    *dst = *src;
    rbuf_ref(dst->data);
}

static void entries_release(struct raft_entry *e, size_t n)
{
    for (size_t i = 0; i < n; i++)
        rbuf_unref(e[i].data);
    pz_free(e);
}

/* --- the in-memory log ---------------------------------------------------- */

struct rlog {
    struct raft_entry *e; /* entries offset+1 .. offset+n */
    size_t n;             /* entries held */
    size_t cap;           /* allocated slots */
    uint64_t offset;      /* index before e[0] (compacted up to here) */
    uint64_t offset_term; /* term of the entry at offset */
};

static uint64_t log_last(const struct rlog *l)
{
    return l->offset + l->n;
}

/* Term at index, 0 if unknown (index 0, compacted, or past the end). */
static uint64_t log_term(const struct rlog *l, uint64_t index)
{
    if (index == l->offset)
        return l->offset_term;
    if (index < l->offset || index > log_last(l))
        return 0;
    return l->e[index - l->offset - 1].term;
}

static uint64_t log_last_term(const struct rlog *l)
{
    return log_term(l, log_last(l));
}

static struct raft_entry *log_at(const struct rlog *l, uint64_t index)
{
    if (index <= l->offset || index > log_last(l))
        return NULL;
    return &l->e[index - l->offset - 1];
}

/* Takes over e's payload reference. */
static void log_append(struct rlog *l, const struct raft_entry *e)
{
    pz_assert(e->index == log_last(l) + 1);
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 64;
        l->e = pz_realloc(l->e, l->cap * sizeof *l->e);
    }
    l->e[l->n++] = *e;
}

/* Deletes entries >= index. */
static void log_truncate(struct rlog *l, uint64_t index)
{
    pz_assert(index > l->offset);
    while (log_last(l) >= index) {
        l->n--;
        rbuf_unref(l->e[l->n].data);
    }
}

/* Deletes entries <= index (compaction); offset becomes index. */
static void log_compact(struct rlog *l, uint64_t index)
{
    pz_assert(index > l->offset && index <= log_last(l));
    size_t k = (size_t)(index - l->offset);
    uint64_t term = l->e[k - 1].term;
    for (size_t i = 0; i < k; i++)
        rbuf_unref(l->e[i].data);
    memmove(l->e, l->e + k, (l->n - k) * sizeof *l->e);
    l->n -= k;
    l->offset = index;
    l->offset_term = term;
}

/* Drops every entry: the log becomes empty after (index, term). */
static void log_reset(struct rlog *l, uint64_t index, uint64_t term)
{
    for (size_t i = 0; i < l->n; i++)
        rbuf_unref(l->e[i].data);
    l->n = 0;
    l->offset = index;
    l->offset_term = term;
}

static void log_free(struct rlog *l)
{
    for (size_t i = 0; i < l->n; i++)
        rbuf_unref(l->e[i].data);
    pz_free(l->e);
    memset(l, 0, sizeof *l);
}

/* --- growable arrays for outputs ------------------------------------------ */

struct msgvec {
    struct raft_msg *m; /* messages */
    size_t n;           /* used */
    size_t cap;         /* allocated */
};

static struct raft_msg *msgvec_push(struct msgvec *v)
{
    if (v->n == v->cap) {
        v->cap = v->cap ? v->cap * 2 : 16;
        v->m = pz_realloc(v->m, v->cap * sizeof *v->m);
    }
    struct raft_msg *m = &v->m[v->n++];
    memset(m, 0, sizeof *m);
    return m;
}

static void msg_release(struct raft_msg *m)
{
    entries_release(m->entries, m->n_entries);
    m->entries = NULL;
    m->n_entries = 0;
}

static void msgvec_clear(struct msgvec *v)
{
    for (size_t i = 0; i < v->n; i++)
        msg_release(&v->m[i]);
    v->n = 0;
}

static void msgvec_free(struct msgvec *v)
{
    msgvec_clear(v);
    pz_free(v->m);
    memset(v, 0, sizeof *v);
}

/* Send times of the last read rounds kept for the lease: a quorum's
 * acknowledgements older than that give none. */
#define RAFT_LEASE_RING 32

#define VEC_PUSH(arr, n, cap)                                                  \
    (((n) == (cap) ? ((cap) = (cap) ? (cap)*2 : 8,                             \
                      (arr) = pz_realloc((arr), (cap) * sizeof *(arr)))        \
                   : (arr)),                                                   \
     &(arr)[(n)++])

/* --- per-peer replication progress (leader) ------------------------------- */

struct progress {
    uint64_t id;           /* peer id (self included) */
    bool voter;            /* voter in the current conf */
    uint8_t state;         /* enum raft_progress_state */
    uint64_t match;        /* highest index known durable on the peer */
    uint64_t next;         /* next index to send */
    bool probe_sent;       /* probe: an APPEND is outstanding */
    uint64_t *infl;        /* replicate: last index of each APPEND in
                              flight, ring buffer */
    size_t infl_start;     /* ring head */
    size_t infl_n;         /* entries in the ring */
    bool recent_active;    /* heard from since the last quorum check */
    uint64_t last_contact; /* leader tick count when last heard from */
    uint64_t read_acked;   /* highest read round acknowledged this term */
    uint64_t read_ack_seq; /* when it acknowledged it (r->read_ack_seq) */
    uint64_t lease_ns;     /* the lease_ns of its last HEARTBEAT_RESP */
    uint64_t sent_commit;  /* last commit index sent to it */
    bool commit_now;       /* it needs the commit index at this flush,
                              not with its next APPEND or tick */
    bool want_empty;       /* send an APPEND even if it has no entries
                              (its prev index tells whether entries in
                              flight were lost) */
    uint64_t pending_snap; /* snapshot: index of the snapshot sent */
    int snap_elapsed;      /* snapshot: ticks without answer or report */
};

struct pending_read {
    uint64_t from;  /* 0: local; else the follower that forwarded it */
    uint64_t ctx;   /* caller's id of the read */
    uint64_t index; /* read index (valid once round != 0) */
    uint64_t round; /* heartbeat round confirming it; 0: waiting for the
                       leader's first commit of its term */
    uint64_t acker; /* voter whose own READ_INDEX acknowledged this leader
                       after the read began (confirm_reads), 0: none */
};

/* A read this follower forwarded to the leader, awaiting its answer. */
struct fwd_read {
    uint64_t ctx;  /* caller's id of the read */
    uint64_t tick; /* r->ticks when forwarded */
};

struct vote_rec {
    uint64_t id; /* voter */
    int8_t v;    /* 0 unknown, 1 granted, -1 rejected */
};

/* A Ready handed out: what must outlive the next raft_ready() while it is
 * in flight (pipelined Readies), and what raft_advance checks. */
struct ready_slot {
    struct raft_entry *entries; /* Ready.entries (shared payloads) */
    size_t n_entries;           /* count */
    struct msgvec after;        /* Ready.msgs_after_persist */
    uint64_t persist_index;     /* Ready.persist_index */
    uint64_t hs_term;           /* Ready.hs.term */
    uint64_t trunc_since;       /* lowest index truncated since it was
                                   taken (UINT64_MAX: none) */
};

struct raft {
    uint64_t id;            /* this node */
    struct pz_fifo mem;     /* where the log's payloads are cut from */
    struct raft_config cfg; /* configuration, defaults filled in */
    uint64_t rng;           /* PRNG state */
    bool fresh;             /* nothing happened yet (restore ok) */

    uint64_t term;   /* currentTerm */
    uint64_t vote;   /* votedFor */
    uint64_t commit; /* commitIndex */
    uint8_t role;    /* enum raft_role */
    uint64_t leader; /* known leader, 0 if none */

    struct rlog log;                /* the log */
    struct raft_snapshot_meta snap; /* snapshot point (index 0: none) */
    uint8_t *snap_conf;             /* rbuf: raft_conf_encode(snap.conf) */
    size_t snap_conf_len;           /* its bytes */
    bool snap_unsent;   /* installed from the leader, not yet in a Ready */
    bool snap_handed;   /* installed, in the Ready in flight */
    uint64_t persisted; /* last durable index matching the log */
    uint64_t unsent;    /* first index not handed to a Ready */
    uint64_t applied;   /* last index handed out as committed */
    bool apply_held;    /* raft_hold_apply: committed entries wait */
    bool caught_up;     /* term_catch_up moved the term, at ticks: */
    uint64_t caught_up_at;
    /* Readies handed out (oldest first): the in-flight ones, after
     * those advanced since the last raft_ready (freed by it). */
    struct ready_slot slots[RAFT_MAX_READIES];
    size_t slot_first;  /* ring position of the oldest */
    size_t n_slots;     /* slots used */
    size_t n_inflight;  /* of them, not advanced (the last ones) */

    struct raft_conf conf; /* current configuration */
    uint64_t conf_index;   /* index of its entry (snap.index if it came
                              with the snapshot; 0 if none) */
    bool prev_voter;       /* voter in the conf before that one */
    bool conf_changed;     /* since the previous Ready */

    int election_elapsed;   /* ticks since reset */
    int heartbeat_elapsed;  /* leader: ticks since last heartbeat */
    int randomized_timeout; /* [election, 2*election), or a fifth of
                               that while quick_start */
    bool quick_start;       /* a founding member of a cluster of several
                               voters that has seen no election yet */
    uint64_t ticks;         /* total ticks (leader contact times) */

    struct progress *prs; /* leader: one per conf server */
    size_t n_prs;         /* entries in prs */
    bool need_flush;      /* leader: appends may be due */
    bool commit_eager;    /* send every commit index at once */
    uint64_t transferee;  /* leader: transfer target, 0 if none */
    uint64_t uncommitted; /* leader: entry_cost of the entries it appended
                             in its term and has not handed out for apply
                             yet (cfg.max_uncommitted) */
    int transfer_elapsed; /* ticks since the transfer started */

    struct vote_rec *votes; /* (pre-)candidate: votes received */
    size_t n_votes;         /* entries in votes */

    uint64_t read_round;        /* leader: last read round sent */
    bool round_wanted;          /* leader: reads wait for a new round */
    bool round_partial;         /* leader: read_round went to a quorum of
                                   voters only, not to every follower */
    uint64_t read_ack_seq;      /* leader: read acknowledgements counted */
    uint64_t round_at[RAFT_LEASE_RING]; /* leader: when read round k went
                                           out (cfg.clock), at k % ring */
    bool lease_void;            /* leader: sent TIMEOUT_NOW in this term */
    uint64_t heard_at;          /* ticks when a leader was last heard
                                   from (kept through term changes) */
    bool heard;                 /* heard_at is set: a leader, or a restart
                                   with a term (cfg.lease_ns: tick 0) */
    uint64_t promised_until;    /* cfg.clock time until which an earlier
                                   run's promise holds (0: none;
                                   raft_restore_promise) */
    uint64_t promise_ns;        /* what HEARTBEAT_RESPs promise
                                   (cfg.lease_ns; raft_set_promise) */
    uint64_t lease_reads;       /* reads confirmed by the lease alone */
    struct pending_read *reads; /* leader: FIFO of unconfirmed reads */
    size_t n_reads;             /* entries in reads */
    size_t cap_reads;           /* allocated */
    struct fwd_read *fwd;       /* non-leader: forwarded, unanswered */
    size_t n_fwd, cap_fwd;      /* used, allocated */

    struct msgvec out;             /* messages to send now */
    struct msgvec out_after;       /* messages to send after persisting */
    struct msgvec taken;           /* raft_take_msgs' last hand-out */
    uint64_t durable_term;         /* term of the last advanced Ready */
    struct raft_read_state *rs;    /* confirmed reads */
    size_t n_rs, cap_rs;           /* used, allocated */
    uint64_t *dropped;             /* ctx of dropped local reads */
    size_t n_dropped, cap_dropped; /* used, allocated */

    struct raft_hard_state prev_hs; /* hard state of the previous Ready */
    struct raft_soft_state prev_ss; /* soft state of the previous Ready */

    /* What the last Ready points to, freed at the next raft_ready(). */
    struct msgvec rd_out;              /* Ready.msgs */
    struct raft_entry *rd_committed;   /* Ready.committed */
    size_t rd_n_committed;             /* count */
    struct raft_read_state *rd_rs;     /* Ready.read_states */
    uint64_t *rd_dropped;              /* Ready.dropped_reads */
    struct raft_snapshot_meta rd_snap; /* Ready.snapshot (a copy) */

    struct raft_peer_status *status_buf; /* raft_status peers */
    char errmsg[RAFT_ERRMSG_SIZE];       /* why the last raft_step
                                            refused a message */
};

static void become_follower(struct raft *r, uint64_t term, uint64_t leader);
static void campaign(struct raft *r, bool pre_vote, bool transfer);

/* --- small helpers -------------------------------------------------------- */

static struct raft_server *self_server(const struct raft *r)
{
    return raft_conf_get(&r->conf, r->id);
}

static bool is_voter(const struct raft *r)
{
    const struct raft_server *s = self_server(r);
    return s != NULL && s->voter;
}

/* Voters of the current configuration campaign; so does a server whose
 * latest configuration, still uncommitted, removed (or demoted) it while
 * the previous one had it as a voter. Thesis §4.2.2 lets a leader that is
 * not in Cnew manage the cluster until Cnew commits; without this rule, a
 * leader that removed itself and lost leadership (CheckQuorum) before the
 * entry committed may be the only server holding the entry: no one else
 * can win without its vote, and it would never run. Votes are still
 * counted in the current configuration only, so safety is unaffected. */
static bool promotable(const struct raft *r)
{
    return is_voter(r) || (r->conf_index > r->commit && r->prev_voter);
}

static size_t quorum(const struct raft *r)
{
    return raft_conf_voters(&r->conf) / 2 + 1;
}

/* A leader (with CheckQuorum), or a follower that heard from its leader
 * within the election timeout. */
static bool in_touch(const struct raft *r)
{
    if (r->role == RAFT_LEADER)
        return r->cfg.check_quorum;
    return r->leader != 0 && r->election_elapsed < r->cfg.election_ticks;
}

/* Whether an earlier run's promise (raft_restore_promise) may still hold:
 * no vote for another and no election of our own until it ends. */
static bool promise_holds(const struct raft *r)
{
    return r->promised_until != 0 &&
           r->cfg.clock(r->cfg.clock_arg) < r->promised_until;
}

/* Thesis §4.2.3: refuses votes "within the minimum election timeout of
 * hearing from a current leader", counted from the message itself: a
 * term learned since (say from a candidate's answer to our own stale
 * Pre-Vote) changes nothing, or a leader's read lease (lease_holds) that
 * counted on us could end early. A node restarted with a term counts as
 * having heard from one at its first tick (cfg.lease_ns), and refuses
 * while an earlier run's promise holds. A leader refuses with
 * CheckQuorum. */
static bool in_lease(const struct raft *r)
{
    if (r->role == RAFT_LEADER)
        return r->cfg.check_quorum;
    return (r->heard &&
            r->ticks - r->heard_at < (uint64_t)r->cfg.election_ticks) ||
           promise_holds(r);
}

static void heard_from_leader(struct raft *r)
{
    r->heard = true;
    r->heard_at = r->ticks;
}

/* A founding member of a new cluster (raft_bootstrap with several voters)
 * has no leader to wait for, no earlier leader's lease to respect and
 * nothing in its log the others lack: it stands after [1/5, 2/5) of an
 * election timeout instead of [1, 2), so that a new cluster has a leader
 * within a fraction of a second. A Pre-Vote that finds too few peers up
 * keeps the short timeout for the next attempt; any later term ends it (a
 * real election: a leader's term is always later than the bootstrap's).
 * Split votes stay rare: the timers still spread over a fifth of a timeout
 * (20 ticks by default), and a vote takes one round trip. etcd's
 * initial-election-tick-advance shortens a new member's first timeout
 * too, by moving its timer forward at start. */
static void reset_randomized_timeout(struct raft *r)
{
    uint64_t et = (uint64_t)r->cfg.election_ticks;
    int t = (int)(et + pz_rand_next(&r->rng) % et);
    r->randomized_timeout = r->quick_start ? PZ_MAX(t / 5, 1) : t;
}

static struct progress *progress_get(struct raft *r, uint64_t id)
{
    for (size_t i = 0; i < r->n_prs; i++)
        if (r->prs[i].id == id)
            return &r->prs[i];
    return NULL;
}

static struct raft_msg *new_msg(struct raft *r, bool after_persist,
                                uint8_t type, uint64_t to)
{
    struct raft_msg *m = msgvec_push(after_persist ? &r->out_after : &r->out);
    m->type = type;
    m->from = r->id;
    m->to = to;
    m->term = r->term;
    return m;
}

static void push_read_state(struct raft *r, uint64_t ctx, uint64_t index)
{
    struct raft_read_state *s = VEC_PUSH(r->rs, r->n_rs, r->cap_rs);
    s->ctx = ctx;
    s->index = index;
}

static void push_dropped(struct raft *r, uint64_t ctx)
{
    *VEC_PUSH(r->dropped, r->n_dropped, r->cap_dropped) = ctx;
}

/* Thesis §3.6.1: a voter denies its vote if its own log is more
 * up-to-date than the candidate's: compare the terms of the last entries,
 * then, if equal, the lengths. */
static bool log_up_to_date(const struct raft *r, uint64_t last_index,
                           uint64_t last_term)
{
    uint64_t my_term = log_last_term(&r->log);
    return last_term > my_term ||
           (last_term == my_term && last_index >= log_last(&r->log));
}

/* --- configuration tracking ----------------------------------------------- */

static void progress_reset(struct raft *r, struct progress *pr)
{
    pr->state = RAFT_PROGRESS_PROBE;
    pr->match = 0;
    pr->next = log_last(&r->log) + 1;
    pr->probe_sent = false;
    pr->infl_start = 0;
    pr->infl_n = 0;
    pr->recent_active = true;
    pr->last_contact = r->ticks;
    pr->read_acked = 0;
    pr->read_ack_seq = 0;
    pr->lease_ns = 0;
    pr->sent_commit = 0;
    pr->commit_now = false;
    pr->want_empty = false;
}

/* Leader: make prs mirror the configuration, keeping existing progress. */
static void sync_progress(struct raft *r)
{
    struct progress *n = pz_calloc(r->conf.n ? r->conf.n : 1, sizeof *n);
    for (size_t i = 0; i < r->conf.n; i++) {
        const struct raft_server *s = &r->conf.servers[i];
        struct progress *old = progress_get(r, s->id);
        if (old != NULL) {
            n[i] = *old;
            old->infl = NULL;
        } else {
            n[i].id = s->id;
            n[i].infl = pz_malloc(r->cfg.max_inflight_msgs * sizeof(uint64_t));
            progress_reset(r, &n[i]);
        }
        n[i].voter = s->voter;
        if (s->id == r->id) {
            n[i].match = r->persisted;
            n[i].next = log_last(&r->log) + 1;
        }
    }
    for (size_t i = 0; i < r->n_prs; i++)
        pz_free(r->prs[i].infl);
    pz_free(r->prs);
    r->prs = n;
    r->n_prs = r->conf.n;
}

static void clear_progress(struct raft *r)
{
    for (size_t i = 0; i < r->n_prs; i++)
        pz_free(r->prs[i].infl);
    pz_free(r->prs);
    r->prs = NULL;
    r->n_prs = 0;
}

/* Thesis §4.1: "a server always uses the latest configuration in its log,
 * regardless of whether the entry is committed". data must decode (checked
 * before the entry was accepted). */
static void apply_conf_entry(struct raft *r, const struct raft_entry *e)
{
    struct raft_conf c;
    int rc = raft_conf_decode(e->data, e->len, &c);
    pz_assert(rc == 0);
    r->prev_voter = is_voter(r);
    raft_conf_free(&r->conf);
    r->conf = c;
    r->conf_index = e->index;
    r->conf_changed = true;
    if (r->role == RAFT_LEADER)
        sync_progress(r);
}

/* The configuration from the log (restart, snapshot install, or after a
 * truncation removed the conf entry in use): the latest conf entry left
 * in the log, else the snapshot's (thesis §4.1, a log entry "that is
 * removed ... reverts to the previous configuration"). */
static void recompute_conf(struct raft *r)
{
    /* The two latest conf entries left: the previous one sets prev_voter,
     * the latest one the configuration. */
    const struct raft_entry *latest = NULL, *prev = NULL;
    for (uint64_t i = log_last(&r->log); i > r->log.offset && !prev; i--) {
        const struct raft_entry *e = log_at(&r->log, i);
        if (e->type != RAFT_ENTRY_CONF)
            continue;
        if (latest == NULL)
            latest = e;
        else
            prev = e;
    }
    /* The snapshot's conf comes before any entry left in the log. */
    raft_conf_copy(&r->conf, &r->snap.conf);
    r->conf_index = r->snap.index;
    r->conf_changed = true;
    r->prev_voter = false;
    if (prev != NULL)
        apply_conf_entry(r, prev);
    if (latest != NULL)
        apply_conf_entry(r, latest);
    else if (r->role == RAFT_LEADER)
        sync_progress(r);
}

/* The configuration as of index (snap.index <= index <= last): the latest
 * conf entry at or before index, else the snapshot's. Initializes out. */
static void conf_as_of(const struct raft *r, uint64_t index,
                       struct raft_conf *out)
{
    raft_conf_init(out);
    if (r->conf_index <= index) {
        /* The latest conf entry of the whole log is at or before index. */
        raft_conf_copy(out, &r->conf);
        return;
    }
    for (uint64_t i = index; i > r->snap.index; i--) {
        const struct raft_entry *e = log_at(&r->log, i);
        if (e->type == RAFT_ENTRY_CONF) {
            int rc = raft_conf_decode(e->data, e->len, out);
            pz_assert(rc == 0);
            return;
        }
    }
    raft_conf_copy(out, &r->snap.conf);
}

/* Records the snapshot point (conf copied) and its encoded conf, shared by
 * the INSTALL_SNAPSHOT messages built from it. */
static void snap_set(struct raft *r, uint64_t index, uint64_t term,
                     const struct raft_conf *conf)
{
    r->snap.index = index;
    r->snap.term = term;
    raft_conf_copy(&r->snap.conf, conf);
    uint8_t *buf;
    size_t len;
    raft_conf_encode(&r->snap.conf, &buf, &len);
    rbuf_unref(r->snap_conf);
    r->snap_conf = rbuf_new(NULL, buf, len); /* lives long */
    r->snap_conf_len = len;
    pz_free(buf);
}

/* Append an entry created here or received (takes the payload ref). */
static void append_entry(struct raft *r, const struct raft_entry *e)
{
    log_append(&r->log, e);
    if (e->type == RAFT_ENTRY_CONF)
        apply_conf_entry(r, log_at(&r->log, e->index));
}

static struct ready_slot *slot_at(struct raft *r, size_t i)
{
    return &r->slots[(r->slot_first + i) % RAFT_MAX_READIES];
}

/* Entries >= index left the log: a Ready in flight that wrote them no
 * longer makes them durable (raft_advance). */
static void note_truncated(struct raft *r, uint64_t index)
{
    for (size_t i = r->n_slots - r->n_inflight; i < r->n_slots; i++) {
        struct ready_slot *sl = slot_at(r, i);
        if (index < sl->trunc_since)
            sl->trunc_since = index;
    }
}

/* Acknowledgements not yet handed out that cover entries >= index, about
 * to be removed, would claim entries this node will never have durably:
 * drop them. */
static void drop_acks_from(struct raft *r, uint64_t index)
{
    size_t k = 0;
    for (size_t i = 0; i < r->out_after.n; i++) {
        struct raft_msg *m = &r->out_after.m[i];
        if (m->type == RAFT_MSG_APPEND_RESP && !m->reject &&
            m->index >= index) {
            msg_release(m);
            continue;
        }
        r->out_after.m[k++] = *m;
    }
    r->out_after.n = k;
}

/* Delete entries >= index (a follower's conflicting suffix). */
static void truncate_log(struct raft *r, uint64_t index)
{
    /* Committed entries are never overwritten (Figure 3.2, Leader
     * Completeness): a conflict there means a broken peer or bug. */
    pz_assert(index > r->commit);
    log_truncate(&r->log, index);
    note_truncated(r, index);
    if (r->persisted >= index)
        r->persisted = index - 1;
    if (r->unsent > index)
        r->unsent = index;
    drop_acks_from(r, index);
    if (r->conf_index >= index)
        recompute_conf(r);
}

/* --- ReadIndex bookkeeping ------------------------------------------------ */

/* A leader that loses leadership can confirm nothing: local reads are
 * reported in dropped_reads, forwarded ones refused to their follower. */
static void drop_reads(struct raft *r)
{
    for (size_t i = 0; i < r->n_reads; i++) {
        struct pending_read *pr = &r->reads[i];
        if (pr->from == 0) {
            push_dropped(r, pr->ctx);
        } else {
            struct raft_msg *m =
                new_msg(r, false, RAFT_MSG_READ_INDEX_RESP, pr->from);
            m->term = 0;
            m->reject = true;
            m->context = pr->ctx;
        }
    }
    r->n_reads = 0;
    r->round_wanted = false;
}

/* Forwarded reads: at most one answer per ctx (the network may duplicate
 * requests and answers); those whose leader went away or that got no
 * answer within an election timeout are dropped. */
static void drop_forwarded(struct raft *r, uint64_t older_than)
{
    size_t k = 0;
    for (size_t i = 0; i < r->n_fwd; i++) {
        if (r->fwd[i].tick < older_than)
            push_dropped(r, r->fwd[i].ctx);
        else
            r->fwd[k++] = r->fwd[i];
    }
    r->n_fwd = k;
}

static bool take_forwarded(struct raft *r, uint64_t ctx)
{
    for (size_t i = 0; i < r->n_fwd; i++) {
        if (r->fwd[i].ctx == ctx) {
            r->fwd[i] = r->fwd[--r->n_fwd];
            return true;
        }
    }
    return false;
}

static void release_read(struct raft *r, const struct pending_read *pr)
{
    if (pr->from == 0) {
        push_read_state(r, pr->ctx, pr->index);
    } else {
        struct raft_msg *m =
            new_msg(r, false, RAFT_MSG_READ_INDEX_RESP, pr->from);
        m->term = 0;
        m->index = pr->index;
        m->context = pr->ctx;
        /* It answers once it has applied up to pr->index. */
        struct progress *p = progress_get(r, pr->from);
        if (p != NULL && p->sent_commit < pr->index) {
            p->commit_now = true;
            r->need_flush = true;
        }
    }
}

static bool committed_in_term(const struct raft *r)
{
    return log_term(&r->log, r->commit) == r->term;
}

/* Thesis §6.4: "the leader needs to have committed an entry from its
 * current term" before serving reads: reads that arrived before get the
 * commit index once it has. */
static void assign_waiting_reads(struct raft *r)
{
    if (!committed_in_term(r))
        return;
    for (size_t i = 0; i < r->n_reads; i++) {
        if (r->reads[i].round == 0) {
            r->reads[i].index = r->commit;
            r->reads[i].round = r->read_round + 1;
            r->round_wanted = true;
        }
    }
}

/* A forwarded read also counts the follower that forwarded it: its
 * READ_INDEX, sent in this leader's term after the read reached it, says
 * that it had voted in no later term then, as its answer to a heartbeat
 * would. Any leader of a later term elected before the read began would
 * have needed a vote from every quorum, so one from this one, each of
 * which acknowledged this leader after the read began: there was none,
 * and every write acknowledged before the read is within this leader's
 * commit index. In a cluster of three voters the leader and that follower
 * are a quorum: the read needs no heartbeat round at all. */
static bool confirmed_with_acker(const struct raft *r,
                                 const struct pending_read *pr)
{
    size_t n = 0, nv = 0;
    for (size_t i = 0; i < r->n_prs; i++) {
        const struct progress *p = &r->prs[i];
        if (!p->voter)
            continue;
        nv++;
        n += p->id == r->id || p->id == pr->acker ||
             p->read_acked >= pr->round;
    }
    return n > nv / 2;
}

/* What a voter's progress says (the leader's own: UINT64_MAX). */
typedef uint64_t (*voter_value)(const struct raft *r,
                                const struct progress *pr);

/* The largest value that a quorum of voters reaches (0 if no voter). */
static uint64_t quorum_value(const struct raft *r, voter_value f)
{
    size_t nv = 0;
    uint64_t acks[64];
    uint64_t *a = r->n_prs <= 64 ? acks : pz_malloc(r->n_prs * sizeof *a);
    for (size_t i = 0; i < r->n_prs; i++) {
        if (!r->prs[i].voter)
            continue;
        a[nv++] = r->prs[i].id == r->id ? UINT64_MAX : f(r, &r->prs[i]);
    }
    uint64_t confirmed = 0;
    if (nv > 0) {
        /* quorum-th largest */
        for (size_t i = 1; i < nv; i++) {
            uint64_t x = a[i];
            size_t j = i;
            while (j > 0 && a[j - 1] < x) {
                a[j] = a[j - 1];
                j--;
            }
            a[j] = x;
        }
        confirmed = a[nv / 2];
    }
    if (a != acks)
        pz_free(a);
    return confirmed;
}

static uint64_t acked_round(const struct raft *r, const struct progress *pr)
{
    PZ_UNUSED(r);
    return pr->read_acked;
}

/* The highest read round that a quorum of voters acknowledged. */
static uint64_t quorum_acked_round(const struct raft *r)
{
    return quorum_value(r, acked_round);
}

/* Until when the voter refuses votes at least, by what it answered: the
 * send time of the last round it acknowledged plus the lease_ns it sent
 * (capped by ours: a peer's number is not trusted further); 0 if it
 * promised nothing (an older node, or none in this term). */
static uint64_t refusal_end(const struct raft *r, const struct progress *pr)
{
    uint64_t k = pr->read_acked;
    if (k == 0 || k + RAFT_LEASE_RING <= r->read_round || pr->lease_ns == 0)
        return 0;
    return r->round_at[k % RAFT_LEASE_RING] +
           PZ_MIN(pr->lease_ns, r->cfg.lease_ns);
}

/* Thesis §6.4.1: a follower that heard from the leader refuses votes for
 * an election timeout (in_lease), counted in its own ticks from when the
 * message arrived, which was after the leader sent it; its answer says
 * how long that is at least (its cfg.lease_ns: each node knows its own
 * timeout and tick, and an older node promises nothing). So while a
 * quorum of voters is known to refuse (refusal_end), no other leader can
 * be elected, and this leader's commit index holds every acknowledged
 * write, as a heartbeat round would confirm. A node restarted with a
 * term refuses for its first election timeout (raft_restore_snapshot),
 * or for what an earlier run promised if longer (raft_restore_promise):
 * it forgot what it promised; it promises only once its term is durable.
 * A leader that sent TIMEOUT_NOW gives its lease up for the term: the
 * target's VOTE is not refused, and the message may arrive after the
 * transfer was aborted.
 * *renew: less than half of the lease is left and no round is out (one
 * should go now, so that the reads to come need not wait for one). */
static bool lease_holds(const struct raft *r, uint64_t q, bool *renew)
{
    if (!r->cfg.lease_reads || r->role != RAFT_LEADER || r->lease_void)
        return false;
    uint64_t end = quorum_value(r, refusal_end);
    uint64_t now = r->cfg.clock(r->cfg.clock_arg);
    if (now >= end)
        return false;
    /* Renewed by the next round, unless one is already out (q: the
     * quorum's acknowledged round, quorum_acked_round). */
    *renew = q >= r->read_round &&
             end - now <= (end - r->round_at[q % RAFT_LEASE_RING]) / 2;
    return true;
}

/* Thesis §6.4 step 3: the leader "sends a new round of heartbeats and
 * waits for their acknowledgments from a majority": round k is confirmed
 * once a quorum of voters acknowledged a heartbeat of round >= k, which
 * were all sent after every read of round k was requested. While the
 * lease holds (lease_holds), every read is confirmed at once. */
static void confirm_reads(struct raft *r)
{
    if (r->n_reads == 0)
        return;
    uint64_t confirmed = quorum_acked_round(r);
    int lease = -1; /* not asked yet */
    bool renew = false;
    size_t k = 0;
    for (size_t i = 0; i < r->n_reads; i++) {
        struct pending_read *pr = &r->reads[i];
        bool ok =
            pr->round != 0 && (pr->round <= confirmed ||
                               (pr->acker != 0 && confirmed_with_acker(r, pr)));
        if (!ok && pr->round != 0) {
            if (lease < 0)
                lease = lease_holds(r, confirmed, &renew);
            ok = lease;
            r->lease_reads += lease;
        }
        if (ok)
            release_read(r, pr);
        else
            r->reads[k++] = *pr;
    }
    r->n_reads = k;
    if (renew)
        r->round_wanted = true;
}

/* Reads wait for a round already sent. */
static bool reads_waiting(const struct raft *r)
{
    for (size_t i = 0; i < r->n_reads; i++)
        if (r->reads[i].round != 0 && r->reads[i].round <= r->read_round)
            return true;
    return false;
}

/* A read from the local node (from 0) or forwarded by a follower, whose
 * READ_INDEX acknowledges this leader if acker is its id. */
static void add_read(struct raft *r, uint64_t from, uint64_t ctx,
                     uint64_t acker)
{
    struct pending_read *pr = VEC_PUSH(r->reads, r->n_reads, r->cap_reads);
    pr->from = from;
    pr->ctx = ctx;
    pr->index = 0;
    pr->round = 0;
    pr->acker = acker;
    if (committed_in_term(r)) {
        pr->index = r->commit;
        pr->round = r->read_round + 1;
        /* With a single voter (this leader), or this one and its acker a
         * quorum, nobody else must confirm. */
        confirm_reads(r);
        /* Reads keep their order: the last one left is this one if it
         * still waits, and then for a round. */
        if (r->n_reads > 0 && r->reads[r->n_reads - 1].round > r->read_round)
            r->round_wanted = true;
    }
}

/* A READ_INDEX from a member: the read and, if it was sent in this term
 * by a voter, that voter's acknowledgement (confirmed_with_acker). */
static void add_forwarded_read(struct raft *r, const struct raft_msg *m)
{
    const struct progress *p = progress_get(r, m->from);
    uint64_t acker =
        p != NULL && p->voter && m->log_term == r->term ? m->from : 0;
    add_read(r, m->from, m->context, acker);
}

/* --- role changes --------------------------------------------------------- */

static void reset(struct raft *r, uint64_t term)
{
    if (r->term != term) {
        r->term = term;
        r->vote = 0;
        r->quick_start = false;
    }
    r->leader = 0;
    r->election_elapsed = 0;
    r->heartbeat_elapsed = 0;
    reset_randomized_timeout(r);
    r->transferee = 0;
    r->transfer_elapsed = 0;
    r->lease_void = false;
    r->n_votes = 0;
    if (r->role == RAFT_LEADER)
        drop_reads(r);
    drop_forwarded(r, UINT64_MAX);
    r->n_reads = 0;
    r->round_wanted = false;
    r->round_partial = false;
    r->need_flush = false;
    clear_progress(r);
}

static void become_follower(struct raft *r, uint64_t term, uint64_t leader)
{
    reset(r, term);
    r->role = RAFT_FOLLOWER;
    r->leader = leader;
    if (leader != 0)
        heard_from_leader(r); /* the message that said so */
}

static void become_leader(struct raft *r)
{
    pz_assert(r->role == RAFT_CANDIDATE);
    reset(r, r->term);
    r->role = RAFT_LEADER;
    r->leader = r->id;
    r->read_round = 0;
    sync_progress(r);
    /* Thesis §6.4 / §3.6.2: a new leader commits a blank no-op entry of its
     * term, which also commits every earlier entry (Figure 3.7 rule). */
    struct raft_entry e = {.term = r->term,
                           .index = log_last(&r->log) + 1,
                           .type = RAFT_ENTRY_NOOP};
    append_entry(r, &e);
    r->uncommitted = 0; /* earlier terms' are not counted, nor the no-op */
    r->need_flush = true;
}

/* --- leader: replication -------------------------------------------------- */

static bool infl_full(const struct raft *r, const struct progress *pr)
{
    return pr->infl_n >= r->cfg.max_inflight_msgs;
}

static void infl_add(struct raft *r, struct progress *pr, uint64_t last)
{
    pz_assert(!infl_full(r, pr));
    size_t cap = r->cfg.max_inflight_msgs;
    pr->infl[(pr->infl_start + pr->infl_n) % cap] = last;
    pr->infl_n++;
}

/* Frees every in-flight APPEND whose last index is <= index. */
static void infl_free_to(struct raft *r, struct progress *pr, uint64_t index)
{
    size_t cap = r->cfg.max_inflight_msgs;
    while (pr->infl_n > 0 && pr->infl[pr->infl_start] <= index) {
        pr->infl_start = (pr->infl_start + 1) % cap;
        pr->infl_n--;
    }
}

static void infl_free_first(struct raft *r, struct progress *pr)
{
    if (pr->infl_n > 0) {
        pr->infl_start = (pr->infl_start + 1) % r->cfg.max_inflight_msgs;
        pr->infl_n--;
    }
}

static void become_probe(struct raft *r, struct progress *pr)
{
    PZ_UNUSED(r);
    pr->state = RAFT_PROGRESS_PROBE;
    pr->next = pr->match + 1;
    pr->probe_sent = false;
    pr->infl_start = 0;
    pr->infl_n = 0;
}

static void become_replicate(struct raft *r, struct progress *pr)
{
    PZ_UNUSED(r);
    pr->state = RAFT_PROGRESS_REPLICATE;
    pr->next = pr->match + 1;
    pr->probe_sent = false;
    pr->infl_start = 0;
    pr->infl_n = 0;
}

static bool progress_paused(const struct raft *r, const struct progress *pr)
{
    if (pr->state == RAFT_PROGRESS_PROBE)
        return pr->probe_sent;
    if (pr->state == RAFT_PROGRESS_SNAPSHOT)
        return true;
    return infl_full(r, pr);
}

/* Thesis §5.1: "the leader must occasionally send snapshots to followers
 * that lag behind", when it has discarded the next entry it needs to send.
 * One INSTALL_SNAPSHOT, then nothing but heartbeats until it is answered,
 * reported or times out. */
static void send_snapshot(struct raft *r, struct progress *pr)
{
    /* A snapshot installed from an earlier leader is sent on only once it
     * is durable here (the driver could not stream it before). The probe
     * is retried at a later flush. */
    if (r->snap_unsent || r->snap_handed)
        return;
    pz_assert(r->snap.index > 0 && r->snap.index >= r->log.offset);
    struct raft_msg *m = new_msg(r, false, RAFT_MSG_INSTALL_SNAPSHOT, pr->id);
    m->snap_index = r->snap.index;
    m->snap_term = r->snap.term;
    m->entries = pz_malloc(sizeof *m->entries);
    m->n_entries = 1;
    m->entries[0] = (struct raft_entry){.term = r->snap.term,
                                        .index = r->snap.index,
                                        .type = RAFT_ENTRY_CONF,
                                        .data = r->snap_conf,
                                        .len = r->snap_conf_len};
    rbuf_ref(r->snap_conf);
    pr->state = RAFT_PROGRESS_SNAPSHOT;
    pr->pending_snap = r->snap.index;
    pr->snap_elapsed = 0;
    pr->next = r->snap.index + 1;
    pr->probe_sent = false;
    pr->infl_start = 0;
    pr->infl_n = 0;
}

/* Sends one APPEND to pr if allowed (or the snapshot, if it needs
 * compacted entries). Empty APPENDs (commit updates) only if send_empty.
 * Returns whether an APPEND was sent (more may follow). */
static bool send_append(struct raft *r, struct progress *pr, bool send_empty)
{
    if (progress_paused(r, pr))
        return false;
    uint64_t last = log_last(&r->log);
    uint64_t prev = pr->next - 1;
    if (prev < r->log.offset) {
        send_snapshot(r, pr);
        return false;
    }
    size_t n = 0, bytes = 0;
    while (pr->next + n <= last) {
        const struct raft_entry *e = log_at(&r->log, pr->next + n);
        size_t cost = e->len + RAFT_ENTRY_OVERHEAD;
        if (n > 0 && bytes + cost > r->cfg.max_bytes_per_msg)
            break;
        bytes += cost;
        n++;
    }
    if (n == 0 && !send_empty)
        return false;
    struct raft_msg *m = new_msg(r, false, RAFT_MSG_APPEND, pr->id);
    m->index = prev;
    m->log_term = log_term(&r->log, prev);
    m->commit = r->commit;
    pr->sent_commit = r->commit;
    pr->commit_now = false;
    if (n > 0) {
        m->entries = pz_malloc(n * sizeof *m->entries);
        m->n_entries = n;
        for (size_t i = 0; i < n; i++)
            entry_share(&m->entries[i], log_at(&r->log, pr->next + i));
    }
    if (pr->state == RAFT_PROGRESS_REPLICATE) {
        /* Thesis §10.2.2 (pipelining): send the next batch without
         * waiting, optimistically advancing next. */
        if (n > 0) {
            pr->next += n;
            infl_add(r, pr, pr->next - 1);
        }
    } else {
        pr->probe_sent = true;
    }
    return true;
}

static void send_heartbeat(struct raft *r, struct progress *pr)
{
    struct raft_msg *m = new_msg(r, false, RAFT_MSG_HEARTBEAT, pr->id);
    /* The follower may not have the leader's log up to commit yet:
     * heartbeats carry min(commit, match). */
    m->commit = PZ_MIN(r->commit, pr->match);
    m->context = r->read_round;
    if (m->commit > pr->sent_commit)
        pr->sent_commit = m->commit;
}

static void bcast_heartbeat(struct raft *r)
{
    r->round_partial = false;
    for (size_t i = 0; i < r->n_prs; i++)
        if (r->prs[i].id != r->id)
            send_heartbeat(r, &r->prs[i]);
}

/* A follower that acknowledged the previous read round. */
static bool is_read_candidate(const struct raft *r, const struct progress *pr)
{
    return pr->id != r->id && pr->voter &&
           pr->read_acked == r->read_round - 1;
}

/* A read round needs the acknowledgements of a quorum only (thesis §6.4):
 * when enough voters acknowledged the previous round, round read_round
 * goes to just as many of them as make a quorum with the leader, the
 * ones that answered first. Each follower woken costs a context switch on
 * both sides and CPU the others wait for; on a loaded machine the one not
 * needed slows the answer down. If the round is not confirmed by the next
 * tick (a chosen voter went quiet) raft_tick sends it to every follower.
 * Returns false, sending nothing, when there is no such set. */
static bool heartbeat_quorum(struct raft *r)
{
    struct progress *self = progress_get(r, r->id);
    if (self == NULL || !self->voter || r->read_round < 2)
        return false; /* the first round of a term goes to everyone */
    size_t nv = 0;
    for (size_t i = 0; i < r->n_prs; i++)
        nv += r->prs[i].voter;
    size_t need = nv / 2, n = 0; /* with the leader: nv / 2 + 1 */
    for (size_t i = 0; i < r->n_prs; i++)
        n += is_read_candidate(r, &r->prs[i]);
    if (need == 0 || n < need)
        return false;
    /* the `need` earliest to acknowledge (every count is distinct) */
    uint64_t last = 0;
    for (size_t k = 0; k < need; k++) {
        struct progress *best = NULL;
        for (size_t i = 0; i < r->n_prs; i++) {
            struct progress *pr = &r->prs[i];
            if (is_read_candidate(r, pr) && pr->read_ack_seq > last &&
                (best == NULL || pr->read_ack_seq < best->read_ack_seq))
                best = pr;
        }
        pz_assert(best != NULL);
        send_heartbeat(r, best);
        last = best->read_ack_seq;
    }
    r->round_partial = true;
    return true;
}

static void send_timeout_now(struct raft *r, uint64_t to)
{
    r->lease_void = true; /* the target's votes bypass in_lease */
    new_msg(r, false, RAFT_MSG_TIMEOUT_NOW, to);
}

/* Whether pr must learn a commit index it was not sent yet at this flush,
 * in an APPEND of its own if no entries are due. Otherwise the commit
 * rides on its next APPEND or heartbeat, or goes out at the next tick
 * (raft_tick): at one write at a time this spares each follower a wakeup
 * (and the leader its answer) per write. Safety does not depend on when a
 * follower learns the commit index (thesis §3.5: followers apply what
 * the leader committed, whenever they hear of it); these need it now:
 * - a follower one of whose forwarded reads was released (it answers
 *   once it has applied up to the read index: pr->commit_now);
 * - a follower not yet told of a committed configuration entry (the
 *   leader may be stepping down, a node joining or leaving);
 * - every follower during a leadership transfer (the transferee should
 *   take over knowing what is committed);
 * - a follower being probed (no entries flow to carry it). */
static bool commit_due(const struct raft *r, const struct progress *pr)
{
    if (r->commit <= pr->sent_commit)
        return false;
    return pr->commit_now || r->commit_eager ||
           pr->state != RAFT_PROGRESS_REPLICATE || r->transferee != 0 ||
           (r->conf_index > pr->sent_commit && r->conf_index <= r->commit);
}

/* Ready-time flush: start a read round if reads wait for one, and send
 * every APPEND that is due (new entries, commit updates). */
static void leader_flush(struct raft *r)
{
    if (r->round_wanted) {
        r->round_wanted = false;
        r->read_round++;
        if (r->cfg.lease_reads)
            r->round_at[r->read_round % RAFT_LEASE_RING] =
                r->cfg.clock(r->cfg.clock_arg);
        if (!heartbeat_quorum(r))
            bcast_heartbeat(r);
    }
    if (!r->need_flush)
        return;
    r->need_flush = false;
    for (size_t i = 0; i < r->n_prs; i++) {
        struct progress *pr = &r->prs[i];
        if (pr->id == r->id)
            continue;
        bool empty = commit_due(r, pr) || pr->want_empty;
        pr->want_empty = false;
        while (send_append(r, pr, empty))
            empty = false;
    }
}

/* Figure 3.1 (Rules for Servers, leaders): "If there exists an N such that
 * N > commitIndex, a majority of matchIndex[i] >= N, and log[N].term ==
 * currentTerm: set commitIndex = N" (§3.6.2: never count replicas for an
 * entry of an earlier term, Figure 3.7). The leader counts itself only up
 * to its durable index. */
static bool maybe_commit(struct raft *r)
{
    uint64_t m[64];
    uint64_t *a = r->n_prs <= 64 ? m : pz_malloc(r->n_prs * sizeof *a);
    size_t nv = 0;
    for (size_t i = 0; i < r->n_prs; i++) {
        struct progress *pr = &r->prs[i];
        if (pr->id == r->id)
            pr->match = r->persisted;
        if (!pr->voter)
            continue;
        uint64_t x = pr->match;
        size_t j = nv++;
        while (j > 0 && a[j - 1] < x) {
            a[j] = a[j - 1];
            j--;
        }
        a[j] = x;
    }
    uint64_t n = nv ? a[nv / 2] : 0;
    if (a != m)
        pz_free(a);
    if (n <= r->commit || log_term(&r->log, n) != r->term)
        return false;
    r->commit = n;
    return true;
}

/* Everything that follows an advance of the leader's commit index. */
static void leader_committed(struct raft *r)
{
    r->need_flush = true;
    assign_waiting_reads(r);
    confirm_reads(r);
    /* Thesis §4.2.2: a leader that is not part of the new configuration
     * steps down once the Cnew entry is committed. */
    if (!is_voter(r) && r->commit >= r->conf_index) {
        /* Let the others learn the commit index first. */
        leader_flush(r);
        become_follower(r, r->term, 0);
    }
}

static void leader_maybe_commit(struct raft *r)
{
    if (maybe_commit(r))
        leader_committed(r);
}

/* --- elections ------------------------------------------------------------ */

static void vote_record(struct raft *r, uint64_t id, bool granted)
{
    /* Only members of the configuration can count (vote_tally), so only
     * they are recorded: the list stays as short as the configuration. */
    if (raft_conf_get(&r->conf, id) == NULL)
        return;
    for (size_t i = 0; i < r->n_votes; i++)
        if (r->votes[i].id == id)
            return; /* first answer counts */
    r->votes = pz_realloc(r->votes, (r->n_votes + 1) * sizeof *r->votes);
    r->votes[r->n_votes].id = id;
    r->votes[r->n_votes].v = granted ? 1 : -1;
    r->n_votes++;
}

/* 1: won, -1: lost, 0: pending. Only voters of the current conf count. */
static int vote_tally(const struct raft *r)
{
    size_t granted = 0, rejected = 0, nv = raft_conf_voters(&r->conf);
    for (size_t i = 0; i < r->n_votes; i++) {
        const struct raft_server *s = raft_conf_get(&r->conf, r->votes[i].id);
        if (s == NULL || !s->voter)
            continue;
        if (r->votes[i].v > 0)
            granted++;
        else
            rejected++;
    }
    if (granted >= nv / 2 + 1)
        return 1;
    if (rejected > nv - (nv / 2 + 1))
        return -1;
    return 0;
}

static void election_won(struct raft *r);

/* Thesis §3.4: a follower whose election timeout elapses "increments its
 * current term and transitions to candidate state. It then votes for
 * itself and issues RequestVote RPCs". With Pre-Vote (§9.6) it first asks
 * whether it could win, without changing its term. */
static void campaign(struct raft *r, bool pre_vote, bool transfer)
{
    /* At RAFT_TERM_MAX the next term would be RAFT_LIMIT, which every
     * peer refuses: the node stays a follower (see RAFT_TERM_BOUND). */
    if (!promotable(r) || r->role == RAFT_LEADER || r->term >= RAFT_TERM_MAX)
        return;
    uint64_t vote_term;
    if (pre_vote) {
        uint64_t term = r->term;
        reset(r, term);
        r->role = RAFT_PRE_CANDIDATE;
        vote_term = r->term + 1;
    } else {
        reset(r, r->term + 1);
        r->role = RAFT_CANDIDATE;
        r->vote = r->id;
        vote_term = r->term;
    }
    /* A candidate's vote for itself counts once it is durable (see
     * raft_advance): a lone voter would otherwise lead at once, and if it
     * crashed before its new term reached the disk it could lead the same
     * term again with another log, after non-voters had heard from it. */
    if (pre_vote || r->durable_term == r->term)
        vote_record(r, r->id, true);
    if (vote_tally(r) == 1) {
        election_won(r);
        return;
    }
    for (size_t i = 0; i < r->conf.n; i++) {
        const struct raft_server *s = &r->conf.servers[i];
        if (!s->voter || s->id == r->id)
            continue;
        /* A candidate's vote for itself and its term must be durable
         * before it asks for votes; a Pre-Vote changes nothing. */
        struct raft_msg *m = new_msg(
            r, !pre_vote, pre_vote ? RAFT_MSG_PREVOTE : RAFT_MSG_VOTE, s->id);
        m->term = vote_term;
        m->index = log_last(&r->log);
        m->log_term = log_last_term(&r->log);
        m->transfer = transfer;
    }
}

static void election_won(struct raft *r)
{
    if (r->role == RAFT_PRE_CANDIDATE)
        campaign(r, false, false);
    else
        become_leader(r);
}

/* RequestVote / Pre-Vote receiver (Figure 3.1 and thesis §9.6). */
static void handle_vote(struct raft *r, const struct raft_msg *m)
{
    bool pre = m->type == RAFT_MSG_PREVOTE;
    /* Figure 3.1: grant if votedFor is null or candidateId (and we do not
     * already follow a leader in this term); a Pre-Vote for a later term
     * can be granted regardless of our vote in the current one. */
    bool can_vote = r->vote == m->from || (r->vote == 0 && r->leader == 0) ||
                    (pre && m->term > r->term);
    /* A term may have been learned without a leader since we last heard
     * from one: no new vote within the timeout of that (in_lease), unless
     * the leader itself asked (TIMEOUT_NOW). */
    if (r->vote != m->from && !(m->type == RAFT_MSG_VOTE && m->transfer) &&
        in_lease(r))
        can_vote = false;
    bool grant = can_vote && log_up_to_date(r, m->index, m->log_term);
    uint8_t type = pre ? RAFT_MSG_PREVOTE_RESP : RAFT_MSG_VOTE_RESP;
    struct raft_msg *resp = new_msg(r, true, type, m->from);
    if (grant) {
        /* The pre-candidate only counts answers for its proposed term. */
        resp->term = m->term;
        if (!pre) {
            r->vote = m->from;
            r->election_elapsed = 0;
        }
    } else {
        resp->term = r->term;
        resp->reject = true;
    }
}

static void handle_vote_resp(struct raft *r, const struct raft_msg *m)
{
    bool pre = m->type == RAFT_MSG_PREVOTE_RESP;
    if (pre != (r->role == RAFT_PRE_CANDIDATE))
        return;
    uint64_t want = pre ? r->term + 1 : r->term;
    if (m->term != want && !(m->reject && m->term == r->term))
        return;
    vote_record(r, m->from, !m->reject);
    int t = vote_tally(r);
    /* A candidate leads only once its term is durable, even if a quorum
     * of others granted before (peers that answer a request not yet
     * sent): raft_advance ends the election then. Otherwise a crash
     * before the write could see it lead the same term twice. */
    if (t == 1 && (pre || r->durable_term == r->term))
        election_won(r);
    else if (t == -1)
        become_follower(r, r->term, 0);
}

/* --- followers: AppendEntries receiver ------------------------------------ */

static void commit_to(struct raft *r, uint64_t c)
{
    if (c > r->commit)
        r->commit = c;
}

static void send_append_resp(struct raft *r, uint64_t to, uint64_t index)
{
    struct raft_msg *m = new_msg(r, true, RAFT_MSG_APPEND_RESP, to);
    m->index = index;
}

/* A configuration entry a correct leader can write at index (for a
 * snapshot's, the snapshot index): it decodes, keeps at least one voter
 * (raft_propose_conf refuses to remove the last) and remembers only
 * removals made by entries up to index. */
static bool conf_data_valid(const uint8_t *data, size_t len, uint64_t index)
{
    struct raft_conf c;
    if (raft_conf_decode(data, len, &c) != 0)
        return false;
    bool ok = raft_conf_voters(&c) > 0 &&
              (c.n_removed == 0 || c.removed[c.n_removed - 1].index <= index);
    raft_conf_free(&c);
    return ok;
}

/* Validates the shape of an APPEND before anything changes: entries
 * follow prevLogIndex one by one, with terms from 1, never decreasing
 * from prevLogTerm and never above the leader's term. */
static const char *append_invalid(const struct raft_msg *m)
{
    if (m->index == 0 && m->log_term != 0)
        return "APPEND with a term for index 0";
    if (m->log_term > m->term)
        return "APPEND whose previous entry is newer than its term";
    uint64_t prev_term = m->log_term;
    for (size_t i = 0; i < m->n_entries; i++) {
        const struct raft_entry *e = &m->entries[i];
        if (e->index != m->index + 1 + i || e->index >= RAFT_LIMIT)
            return "APPEND with entries out of sequence";
        if (e->term == 0 || e->term < prev_term || e->term > m->term)
            return "APPEND with an entry term out of order";
        if (e->type > RAFT_ENTRY_NOOP || (e->len > 0 && e->data == NULL))
            return "APPEND with a malformed entry";
        if (e->type == RAFT_ENTRY_CONF &&
            !conf_data_valid(e->data, e->len, e->index))
            return "APPEND with an invalid configuration entry";
        prev_term = e->term;
    }
    return NULL;
}

/* An APPEND of a current or newer term never contradicts a committed
 * entry: its leader holds every entry committed before its term (Leader
 * Completeness, thesis §3.6.3) and every one it committed itself. Nor does
 * any leader's log break Log Matching against ours (§3.5: two entries with
 * the same index and term have the same prefix): once one of its entries
 * conflicts with ours, none after it can have the term of ours at its
 * index. Entries compacted into our snapshot are committed: the one at the
 * boundary must have its term, those before it no later one. A peer that
 * sends otherwise is broken or lying; following it would overwrite
 * committed or durable state. (A stale leader's APPEND may well conflict:
 * it is answered with our term before this check.) */
static const char *append_conflicts(const struct raft *r,
                                    const struct raft_msg *m)
{
    uint64_t last = log_last(&r->log);
    uint64_t upto = PZ_MIN(r->commit, last);
    uint64_t off = r->log.offset, off_term = r->log.offset_term;
    uint64_t prev = m->index;
    if (prev >= off && prev <= upto && log_term(&r->log, prev) != m->log_term)
        return "APPEND contradicts a committed entry (previous index)";
    if (prev < off && m->log_term > off_term)
        return "APPEND contradicts the snapshot (previous index)";
    bool conflict = false;
    for (size_t i = 0; i < m->n_entries; i++) {
        const struct raft_entry *e = &m->entries[i];
        if (e->index > last)
            break;
        if (e->index < off) {
            if (e->term > off_term)
                return "APPEND contradicts the snapshot";
            continue;
        }
        uint64_t mine = log_term(&r->log, e->index);
        if (mine != e->term) {
            if (e->index <= upto)
                return "APPEND contradicts a committed entry";
            conflict = true;
        } else if (conflict) {
            return "APPEND breaks Log Matching";
        }
    }
    return NULL;
}

/* Figure 3.1 (AppendEntries receiver implementation). */
static void handle_append(struct raft *r, const struct raft_msg *m)
{
    uint64_t last = log_last(&r->log);
    uint64_t prev = m->index, prev_term = m->log_term;
    const struct raft_entry *ents = m->entries;
    size_t n = m->n_entries;
    if (prev < r->log.offset) {
        /* Entries up to offset are compacted into our snapshot: they are
         * committed, so they match any current leader's log (Leader
         * Completeness). Skip them. */
        size_t skip = (size_t)PZ_MIN(r->log.offset - prev, (uint64_t)n);
        if (skip > 0) /* ents may be NULL with n == 0 (no NULL + 0) */
            ents += skip;
        n -= skip;
        prev += skip;
        if (prev < r->log.offset) {
            /* Nothing past our snapshot: our log matches up to commit. */
            send_append_resp(r, m->from, r->commit);
            return;
        }
        prev_term = r->log.offset_term;
    }
    /* 2. Reply false if log doesn't contain an entry at prevLogIndex whose
     * term matches prevLogTerm. */
    if (prev > last || log_term(&r->log, prev) != prev_term) {
        struct raft_msg *resp = new_msg(r, true, RAFT_MSG_APPEND_RESP, m->from);
        resp->reject = true;
        resp->index = prev;
        /* Thesis §5.3 (fast backtracking): report the conflicting term and
         * the first index we hold for it, or our last index + 1. */
        if (prev > last) {
            resp->log_term = 0;
            resp->reject_hint = last + 1;
        } else {
            uint64_t t = log_term(&r->log, prev);
            uint64_t i = prev;
            while (i > r->log.offset + 1 && i > r->commit + 1 &&
                   log_term(&r->log, i - 1) == t)
                i--;
            resp->log_term = t;
            resp->reject_hint = i;
        }
        return;
    }
    /* 3. If an existing entry conflicts with a new one (same index but
     * different terms), delete the existing entry and all that follow it.
     * 4. Append any new entries not already in the log. */
    size_t i = 0;
    for (; i < n; i++) {
        const struct raft_entry *e = &ents[i];
        if (e->index > log_last(&r->log))
            break;
        if (log_term(&r->log, e->index) != e->term) {
            truncate_log(r, e->index);
            break;
        }
    }
    for (; i < n; i++) {
        struct raft_entry e;
        e = ents[i];
        e.data = rbuf_new(&r->mem, ents[i].data, ents[i].len);
        append_entry(r, &e);
    }
    uint64_t last_new = prev + n;
    /* 5. If leaderCommit > commitIndex, set commitIndex =
     * min(leaderCommit, index of last new entry). */
    commit_to(r, PZ_MIN(m->commit, last_new));
    send_append_resp(r, m->from, last_new);
}

static void handle_heartbeat(struct raft *r, const struct raft_msg *m)
{
    /* The leader sends min(commit, our match): we hold those entries. */
    commit_to(r, PZ_MIN(m->commit, log_last(&r->log)));
    struct raft_msg *resp = new_msg(r, false, RAFT_MSG_HEARTBEAT_RESP, m->from);
    resp->context = m->context;
    /* in_lease from now on; a restart remembers that only once the term
     * is durable (raft_restore_snapshot) */
    if (r->durable_term == r->term)
        resp->lease_ns = r->promise_ns;
}

/* Validates the shape of an INSTALL_SNAPSHOT before anything changes. */
static const char *snapshot_invalid(const struct raft_msg *m)
{
    if (m->snap_index == 0 || m->snap_term == 0 || m->snap_term > m->term)
        return "INSTALL_SNAPSHOT with an impossible index or term";
    if (m->n_entries != 1)
        return "INSTALL_SNAPSHOT without exactly one entry";
    const struct raft_entry *e = &m->entries[0];
    if (e->type != RAFT_ENTRY_CONF || e->index != m->snap_index ||
        e->term != m->snap_term || (e->len > 0 && e->data == NULL) ||
        !conf_data_valid(e->data, e->len, e->index))
        return "INSTALL_SNAPSHOT with an invalid configuration";
    return NULL;
}

/* Thesis Figure 5.3 (InstallSnapshot receiver), whole snapshots: the
 * driver has received and checked the state machine file already. */
static void handle_snapshot(struct raft *r, const struct raft_msg *m)
{
    uint64_t si = m->snap_index, st = m->snap_term;
    if (si <= r->commit) {
        /* Everything it covers is committed here already (a duplicate, or
         * we caught up meanwhile): nothing to install. */
        send_append_resp(r, m->from, r->commit);
        return;
    }
    struct raft_conf c;
    int rc = raft_conf_decode(m->entries[0].data, m->entries[0].len, &c);
    pz_assert(rc == 0);
    if (log_term(&r->log, si) == st) {
        /* 6. "If existing log entry has same index and term as snapshot's
         * last included entry, retain log entries following it". They
         * match the leader's log up to si; acknowledgements already given
         * for them stay true. */
        log_compact(&r->log, si);
        r->persisted = PZ_MAX(r->persisted, si);
    } else {
        /* 7. "Discard the entire log". Our entry at si differs from a
         * committed one, so nothing after it can be committed. Entries
         * above our commit index may be replaced: acknowledgements of
         * them not handed out yet would claim what we will not hold. */
        drop_acks_from(r, r->commit + 1);
        log_reset(&r->log, si, st);
        note_truncated(r, si + 1);
        r->persisted = si;
    }
    snap_set(r, si, st, &c);
    raft_conf_free(&c);
    /* 8. "Reset state machine using snapshot contents": through the next
     * Ready, which also rewrites the stored log from si + 1 (the retained
     * suffix is handed again). */
    r->commit = si;
    r->applied = si;
    r->unsent = si + 1;
    r->snap_unsent = true;
    recompute_conf(r);
    send_append_resp(r, m->from, si);
}

/* --- leader: responses ---------------------------------------------------- */

static void maybe_send_timeout_now(struct raft *r, struct progress *pr)
{
    if (r->transferee == pr->id && pr->match == log_last(&r->log))
        send_timeout_now(r, pr->id);
}

static void handle_append_resp(struct raft *r, const struct raft_msg *m)
{
    struct progress *pr = progress_get(r, m->from);
    if (pr == NULL || pr->id == r->id)
        return;
    pr->recent_active = true;
    pr->last_contact = r->ticks;
    if (m->reject) {
        /* Stale rejections (for an index we already know matches, or not
         * the outstanding probe, or while a snapshot is on its way) carry
         * no news. */
        if (m->index <= pr->match || m->index > log_last(&r->log) ||
            pr->state == RAFT_PROGRESS_SNAPSHOT)
            return;
        if (pr->state == RAFT_PROGRESS_PROBE && m->index != pr->next - 1)
            return;
        uint64_t next = m->reject_hint;
        if (m->log_term != 0) {
            /* Thesis §5.3: if the leader has entries of the conflict
             * term, continue after its last one; else skip the whole
             * term. */
            uint64_t j = PZ_MIN(m->index, log_last(&r->log));
            while (j > r->log.offset && log_term(&r->log, j) > m->log_term)
                j--;
            if (j > r->log.offset && log_term(&r->log, j) == m->log_term)
                next = j + 1;
        }
        next = PZ_MIN(next, m->index);
        next = PZ_MAX(next, pr->match + 1);
        become_probe(r, pr);
        pr->next = next;
        r->need_flush = true;
        return;
    }
    if (m->index > log_last(&r->log))
        return; /* acknowledges entries we never had: ignore */
    if (m->index > pr->match) {
        pr->match = m->index;
        if (pr->next <= m->index)
            pr->next = m->index + 1;
        if (pr->state == RAFT_PROGRESS_PROBE)
            become_replicate(r, pr);
        else if (pr->state == RAFT_PROGRESS_REPLICATE)
            infl_free_to(r, pr, m->index);
        else if (pr->match >= pr->pending_snap || pr->match >= r->log.offset)
            /* The snapshot is installed, or entries can reach it again. */
            become_replicate(r, pr);
        r->need_flush = true;
        leader_maybe_commit(r);
        if (r->role != RAFT_LEADER)
            return;
        maybe_send_timeout_now(r, pr);
    } else if (pr->state == RAFT_PROGRESS_PROBE && pr->probe_sent &&
               m->index + 1 >= pr->next) {
        /* The outstanding probe was answered (e.g. it was empty). */
        pr->probe_sent = false;
        r->need_flush = true;
    }
}

static void handle_heartbeat_resp(struct raft *r, const struct raft_msg *m)
{
    struct progress *pr = progress_get(r, m->from);
    if (pr == NULL || pr->id == r->id)
        return;
    pr->recent_active = true;
    pr->last_contact = r->ticks;
    pr->probe_sent = false;
    if (pr->state == RAFT_PROGRESS_REPLICATE && infl_full(r, pr))
        infl_free_first(r, pr);
    if (pr->match < log_last(&r->log)) {
        /* Entries in flight may have been lost: an (empty) APPEND at next
         * gets them rejected and re-sent (probe). */
        pr->want_empty = true;
        r->need_flush = true;
    } else if (r->commit > pr->sent_commit) {
        r->need_flush = true;
    }
    if (m->context > pr->read_acked && m->context <= r->read_round) {
        /* The promise goes with the round this answer acknowledged (a
         * late answer of a restarted node may carry another one). */
        pr->lease_ns = m->lease_ns;
        pr->read_acked = m->context;
        pr->read_ack_seq = ++r->read_ack_seq;
        confirm_reads(r);
    }
}

static void step_leader(struct raft *r, const struct raft_msg *m)
{
    switch (m->type) {
    case RAFT_MSG_APPEND_RESP:
        handle_append_resp(r, m);
        break;
    case RAFT_MSG_HEARTBEAT_RESP:
        handle_heartbeat_resp(r, m);
        break;
    case RAFT_MSG_READ_INDEX:
        add_forwarded_read(r, m);
        break;
    default:
        break; /* APPEND/HEARTBEAT of our own term cannot come from another
                  leader (Election Safety); stale answers: ignore */
    }
}

static void step_candidate(struct raft *r, const struct raft_msg *m)
{
    switch (m->type) {
    case RAFT_MSG_APPEND:
    case RAFT_MSG_HEARTBEAT:
    case RAFT_MSG_INSTALL_SNAPSHOT:
        /* Thesis §3.4: "If the leader's term is at least as large as the
         * candidate's current term, then the candidate recognizes the
         * leader as legitimate and returns to follower state." */
        become_follower(r, m->term, m->from);
        if (m->type == RAFT_MSG_APPEND)
            handle_append(r, m);
        else if (m->type == RAFT_MSG_HEARTBEAT)
            handle_heartbeat(r, m);
        else
            handle_snapshot(r, m);
        break;
    case RAFT_MSG_PREVOTE_RESP:
    case RAFT_MSG_VOTE_RESP:
        handle_vote_resp(r, m);
        break;
    default:
        break;
    }
}

static void step_follower(struct raft *r, const struct raft_msg *m)
{
    switch (m->type) {
    case RAFT_MSG_APPEND:
        r->election_elapsed = 0;
        r->leader = m->from;
        heard_from_leader(r);
        handle_append(r, m);
        break;
    case RAFT_MSG_HEARTBEAT:
        r->election_elapsed = 0;
        r->leader = m->from;
        heard_from_leader(r);
        handle_heartbeat(r, m);
        break;
    case RAFT_MSG_INSTALL_SNAPSHOT:
        r->election_elapsed = 0;
        r->leader = m->from;
        heard_from_leader(r);
        handle_snapshot(r, m);
        break;
    case RAFT_MSG_TIMEOUT_NOW:
        /* Thesis §3.10: the target "starts a new election immediately",
         * without Pre-Vote: the leader asked for it. Only the leader we
         * follow may ask; anyone else would just disrupt the cluster. */
        if (m->from == r->leader)
            campaign(r, false, true);
        break;
    default:
        break;
    }
}

/* --- public: lifecycle ---------------------------------------------------- */

static void set_err(char *errmsg, const char *msg)
{
    if (errmsg != NULL)
        snprintf(errmsg, RAFT_ERRMSG_SIZE, "%s", msg);
}

struct raft *raft_new(const struct raft_config *cfg, char *errmsg)
{
    if (cfg->id == 0) {
        set_err(errmsg, "raft: id must be non-zero");
        return NULL;
    }
    if (cfg->election_ticks < 2 || cfg->heartbeat_ticks < 1 ||
        cfg->heartbeat_ticks >= cfg->election_ticks) {
        set_err(errmsg, "raft: need 1 <= heartbeat_ticks < election_ticks");
        return NULL;
    }
    if (cfg->lease_reads &&
        (cfg->clock == NULL || cfg->lease_ns == 0 || !cfg->check_quorum)) {
        set_err(errmsg, "raft: lease_reads needs clock, lease_ns and "
                        "check_quorum");
        return NULL;
    }
    if (cfg->max_readies > RAFT_MAX_READIES) {
        set_err(errmsg, "raft: max_readies above RAFT_MAX_READIES");
        return NULL;
    }
    struct raft *r = pz_calloc(1, sizeof *r);
    r->id = cfg->id;
    r->cfg = *cfg;
    r->promise_ns = cfg->lease_ns;
    if (r->cfg.max_inflight_msgs == 0)
        r->cfg.max_inflight_msgs = 256;
    if (r->cfg.max_readies == 0)
        r->cfg.max_readies = 1;
    if (r->cfg.max_bytes_per_msg == 0)
        r->cfg.max_bytes_per_msg = RAFT_MAX_BYTES_PER_MSG;
    if (r->cfg.snapshot_timeout_ticks <= 0)
        r->cfg.snapshot_timeout_ticks = 10 * cfg->election_ticks;
    r->rng = cfg->seed ^ (cfg->id * 0x9E3779B97F4A7C15ull);
    r->fresh = true;
    r->role = RAFT_FOLLOWER;
    r->unsent = 1;
    r->applied = cfg->applied;
    raft_conf_init(&r->conf);
    reset_randomized_timeout(r);
    r->prev_ss.role = RAFT_FOLLOWER;
    return r;
}

static void slot_clear(struct ready_slot *sl)
{
    msgvec_clear(&sl->after);
    entries_release(sl->entries, sl->n_entries);
    sl->entries = NULL;
    sl->n_entries = 0;
}

/* Frees what the previous Ready pointed to (and the Readies advanced
 * since), or with all, every Ready's (raft_free). */
static void free_handed(struct raft *r, bool all)
{
    while (r->n_slots > (all ? 0 : r->n_inflight)) {
        slot_clear(slot_at(r, 0));
        r->slot_first = (r->slot_first + 1) % RAFT_MAX_READIES;
        r->n_slots--;
    }
    if (all)
        r->n_inflight = 0;
    msgvec_clear(&r->rd_out);
    entries_release(r->rd_committed, r->rd_n_committed);
    r->rd_committed = NULL;
    r->rd_n_committed = 0;
    pz_free(r->rd_rs);
    r->rd_rs = NULL;
    pz_free(r->rd_dropped);
    r->rd_dropped = NULL;
    raft_conf_free(&r->rd_snap.conf);
    memset(&r->rd_snap, 0, sizeof r->rd_snap);
}

void raft_free(struct raft *r)
{
    if (r == NULL)
        return;
    free_handed(r, true);
    for (size_t i = 0; i < RAFT_MAX_READIES; i++)
        msgvec_free(&r->slots[i].after);
    msgvec_free(&r->rd_out);
    msgvec_free(&r->out);
    msgvec_free(&r->out_after);
    msgvec_free(&r->taken);
    log_free(&r->log);
    raft_conf_free(&r->conf);
    raft_conf_free(&r->snap.conf);
    rbuf_unref(r->snap_conf);
    clear_progress(r);
    pz_free(r->votes);
    pz_free(r->reads);
    pz_free(r->fwd);
    pz_free(r->rs);
    pz_free(r->dropped);
    pz_free(r->status_buf);
    pz_fifo_close(&r->mem);
    pz_free(r);
}

/* Checks a restored log (see raft_restore_snapshot) before anything is
 * kept. */
static bool restore_valid(const struct raft_hard_state *hs, uint64_t si,
                          uint64_t st, const struct raft_entry *entries,
                          size_t n)
{
    if (hs->term >= RAFT_LIMIT)
        return false;
    if (si > 0 && (st == 0 || st > hs->term))
        return false;
    uint64_t first = n ? entries[0].index : si + 1;
    if (si == 0 ? first != 1 : (first == 0 || first > si + 1))
        return false;
    /* A log reaching into the snapshot must reach its index: one that
     * ends inside it belongs to an older state (e.g. a received snapshot
     * whose install never became durable). */
    if (n > 0 && first <= si && first + n - 1 < si)
        return false;
    uint64_t prev_term = 0;
    for (size_t i = 0; i < n; i++) {
        const struct raft_entry *e = &entries[i];
        if (e->index != first + i || e->term < prev_term ||
            e->term > hs->term || e->term == 0 || e->type > RAFT_ENTRY_NOOP ||
            (e->len > 0 && e->data == NULL))
            return false;
        if ((e->index == si && e->term != st) ||
            (e->index < si && e->term > st) || (e->index > si && e->term < st))
            return false;
        if (e->type == RAFT_ENTRY_CONF) {
            struct raft_conf c;
            if (raft_conf_decode(e->data, e->len, &c) != 0)
                return false;
            raft_conf_free(&c);
        }
        prev_term = e->term;
    }
    return true;
}

int raft_restore(struct raft *r, const struct raft_hard_state *hs,
                 const struct raft_entry *entries, size_t n)
{
    return raft_restore_snapshot(r, hs, NULL, entries, n);
}

int raft_restore_snapshot(struct raft *r, const struct raft_hard_state *hs,
                          const struct raft_snapshot_meta *snap,
                          const struct raft_entry *entries, size_t n)
{
    if (!r->fresh)
        return PZ_EBUSY;
    uint64_t si = snap != NULL ? snap->index : 0;
    uint64_t st = si > 0 ? snap->term : 0;
    if (!restore_valid(hs, si, st, entries, n))
        return PZ_ECORRUPT;
    struct raft_conf sc;
    raft_conf_init(&sc);
    for (size_t i = 0; si > 0 && i < snap->conf.n; i++) {
        const struct raft_server *sv = &snap->conf.servers[i];
        if (raft_conf_add(&sc, sv->id, sv->voter, sv->meta) != 0) {
            raft_conf_free(&sc);
            return PZ_ECORRUPT;
        }
    }
    for (size_t i = 0; si > 0 && i < snap->conf.n_removed; i++) {
        const struct raft_removed *rm = &snap->conf.removed[i];
        if (rm->id == 0 || rm->index > si ||
            (i > 0 && rm->index <= snap->conf.removed[i - 1].index) ||
            raft_conf_removed(&sc, rm->id) != NULL) {
            raft_conf_free(&sc);
            return PZ_ECORRUPT;
        }
        raft_conf_note_removed(&sc, rm->id, rm->index, rm->term, rm->meta);
    }
    r->fresh = false;
    r->term = hs->term;
    /* It may have promised a leader to refuse votes (a HEARTBEAT_RESP in
     * a durable term) just before it stopped: it refuses for an election
     * timeout from now, as if it had just heard from one. */
    r->heard = r->cfg.lease_ns > 0 && hs->term > 0;
    r->heard_at = r->ticks;
    r->vote = hs->vote;
    r->durable_term = hs->term;
    if (si > 0)
        snap_set(r, si, st, &sc);
    raft_conf_free(&sc);
    /* The log starts after the snapshot, or after the first entry given
     * if trailing entries below the snapshot were kept (its term is the
     * boundary's). */
    size_t k = 0;
    if (n > 0 && entries[0].index <= si) {
        r->log.offset = entries[0].index;
        r->log.offset_term = entries[0].term;
        k = 1;
    } else {
        r->log.offset = si;
        r->log.offset_term = st;
    }
    for (; k < n; k++) {
        struct raft_entry e = entries[k];
        e.data = rbuf_new(&r->mem, entries[k].data, entries[k].len);
        log_append(&r->log, &e);
    }
    recompute_conf(r);
    r->commit = PZ_MAX(si, PZ_MIN(hs->commit, log_last(&r->log)));
    r->persisted = log_last(&r->log);
    r->unsent = r->persisted + 1;
    if (r->applied < si)
        r->applied = si;
    if (r->applied > r->commit)
        r->applied = r->commit;
    r->prev_hs.term = r->term;
    r->prev_hs.vote = r->vote;
    r->prev_hs.commit = r->commit;
    r->prev_ss.term = r->term;
    r->conf_changed = true;
    return 0;
}

int raft_bootstrap(struct raft *r, const struct raft_conf *conf)
{
    if (log_last(&r->log) != 0 || r->term != 0)
        return PZ_EBUSY;
    if (raft_conf_get(conf, r->id) == NULL || raft_conf_voters(conf) == 0)
        return PZ_EINVAL;
    for (size_t i = 0; i < conf->n; i++)
        if (conf->servers[i].id == 0)
            return PZ_EINVAL;
    struct raft_conf sorted;
    raft_conf_init(&sorted);
    for (size_t i = 0; i < conf->n; i++) {
        if (raft_conf_add(&sorted, conf->servers[i].id, conf->servers[i].voter,
                          conf->servers[i].meta) != 0) {
            raft_conf_free(&sorted);
            return PZ_EINVAL;
        }
    }
    uint8_t *buf;
    size_t len;
    raft_conf_encode(&sorted, &buf, &len);
    raft_conf_free(&sorted);
    r->fresh = false;
    r->term = 1;
    r->vote = 0;
    struct raft_entry e = {.term = 1, .index = 1, .type = RAFT_ENTRY_CONF};
    e.data = rbuf_new(&r->mem, buf, len);
    e.len = len;
    pz_free(buf);
    append_entry(r, &e);
    /* The entry is identical on every founding member: committed. */
    r->commit = 1;
    if (raft_conf_voters(conf) > 1) {
        /* raft_new's timeout, shortened (reset_randomized_timeout) */
        r->quick_start = true;
        r->randomized_timeout = PZ_MAX(r->randomized_timeout / 5, 1);
    }
    return 0;
}

/* --- public: inputs ------------------------------------------------------- */

void raft_tick(struct raft *r)
{
    r->fresh = false;
    r->ticks++;
    if (r->n_fwd > 0 && r->ticks > (uint64_t)r->cfg.election_ticks)
        drop_forwarded(r, r->ticks - (uint64_t)r->cfg.election_ticks);
    if (r->role != RAFT_LEADER) {
        r->election_elapsed++;
        if (r->promised_until != 0 && !promise_holds(r)) {
            /* Over: stand after a random part of a timeout, as if one had
             * just passed, not at once: nodes restarted together would
             * all stand at this tick and split the votes. */
            r->promised_until = 0;
            r->election_elapsed =
                PZ_MIN(r->election_elapsed, r->cfg.election_ticks);
            reset_randomized_timeout(r);
        }
        if (promotable(r) && r->election_elapsed >= r->randomized_timeout &&
            !promise_holds(r))
            campaign(r, r->cfg.pre_vote, false);
        return;
    }
    r->heartbeat_elapsed++;
    r->election_elapsed++;
    if (r->transferee != 0 && ++r->transfer_elapsed >= r->cfg.election_ticks) {
        /* Thesis §3.10: "if the transfer does not complete within about
         * an election timeout, the prior leader aborts the transfer and
         * resumes accepting client requests". */
        r->transferee = 0;
        r->transfer_elapsed = 0;
    }
    if (r->election_elapsed >= r->cfg.election_ticks) {
        r->election_elapsed = 0;
        if (r->cfg.check_quorum) {
            /* Thesis §6.2: "a leader steps down if an election timeout
             * elapses without a successful round of heartbeats to a
             * majority of its cluster". */
            size_t active = 0;
            for (size_t i = 0; i < r->n_prs; i++) {
                struct progress *pr = &r->prs[i];
                if (pr->voter && (pr->id == r->id || pr->recent_active))
                    active++;
                if (pr->id != r->id)
                    pr->recent_active = false;
            }
            if (active < quorum(r)) {
                become_follower(r, r->term, 0);
                return;
            }
        }
    }
    for (size_t i = 0; i < r->n_prs; i++) {
        struct progress *pr = &r->prs[i];
        if (pr->state == RAFT_PROGRESS_SNAPSHOT &&
            ++pr->snap_elapsed >= r->cfg.snapshot_timeout_ticks) {
            /* Lost without a word: probe again (and resend if needed). */
            become_probe(r, pr);
            r->need_flush = true;
        }
    }
    /* Commit indexes held back (commit_due) go out now: a follower's state
     * lags the leader's by at most a tick. */
    for (size_t i = 0; i < r->n_prs; i++) {
        struct progress *pr = &r->prs[i];
        if (pr->id != r->id && r->commit > pr->sent_commit) {
            pr->commit_now = true;
            r->need_flush = true;
        }
    }
    if (r->heartbeat_elapsed >= r->cfg.heartbeat_ticks) {
        r->heartbeat_elapsed = 0;
        bcast_heartbeat(r);
    } else if (r->round_partial && reads_waiting(r)) {
        bcast_heartbeat(r); /* the quorum chosen did not answer in time */
    }
}

/* What no correct peer sends, whatever our state: NULL if m is fine. */
static const char *msg_invalid(const struct raft_msg *m)
{
    if (m->type < RAFT_MSG_APPEND || m->type >= RAFT_MSG_TYPE_MAX)
        return "unknown message type";
    if (m->from == 0)
        return "message from node 0";
    if (m->term >= RAFT_LIMIT || m->log_term >= RAFT_LIMIT ||
        m->index >= RAFT_LIMIT || m->commit >= RAFT_LIMIT ||
        m->reject_hint >= RAFT_LIMIT || m->snap_index >= RAFT_LIMIT ||
        m->snap_term >= RAFT_LIMIT)
        return "term or index beyond any real log";
    if (m->n_entries > 0 && m->entries == NULL)
        return "entries missing";
    if (m->n_entries > 0 && m->type != RAFT_MSG_APPEND &&
        m->type != RAFT_MSG_INSTALL_SNAPSHOT)
        return "entries in a message that carries none";
    switch (m->type) {
    case RAFT_MSG_APPEND:
    case RAFT_MSG_HEARTBEAT:
    case RAFT_MSG_TIMEOUT_NOW:
    case RAFT_MSG_INSTALL_SNAPSHOT:
        if (m->term == 0)
            return "leader message with term 0";
        if (m->type == RAFT_MSG_APPEND)
            return append_invalid(m);
        if (m->type == RAFT_MSG_INSTALL_SNAPSHOT)
            return snapshot_invalid(m);
        return NULL;
    case RAFT_MSG_PREVOTE:
    case RAFT_MSG_VOTE:
        if (m->term == 0 || m->log_term > m->term)
            return "vote request with an impossible term";
        return NULL;
    default:
        return NULL;
    }
}

static int refuse(struct raft *r, const struct raft_msg *m, const char *why)
{
    snprintf(r->errmsg, sizeof r->errmsg, "%s %s from node %llu: %s",
             m->type < RAFT_MSG_TYPE_MAX ? "invalid" : "invalid message",
             m->type < RAFT_MSG_TYPE_MAX ? raft_msg_type_name(m->type) : "",
             (unsigned long long)m->from, why);
    return PZ_EINVAL;
}

const char *raft_errmsg(const struct raft *r)
{
    return r->errmsg;
}

/* The highest term a peer may make this node take (RAFT_TERM_BOUND): any
 * below the bound, at most RAFT_TERM_LEAP above ours past it. Every
 * message carries its sender's term (the terms inside it, of entries,
 * previous entries and snapshots, are checked against it), and any
 * message of a newer term but a Pre-Vote and its grant makes the receiver
 * take it. */
static uint64_t term_reach(const struct raft *r)
{
    uint64_t reach = PZ_MAX(r->term + RAFT_TERM_LEAP, RAFT_TERM_BOUND - 1);
    return PZ_MIN(reach, RAFT_TERM_MAX);
}

/* A message of a term out of reach is refused, but a node that trails a
 * cluster gone past the bound (after a forged term below it: the node
 * missed it, or is new) must catch up: it moves to its reach, so that
 * the next messages of its cluster's term come within it. Nothing tells
 * such a message from a forged one: that moves the node no further than
 * a term in reach would. At most once an election timeout: a burst of
 * forged messages moved a healthy follower a leap each, alone, far above
 * its cluster, which then climbed to it a leap an election without a
 * leader meanwhile (minutes for a few hundred messages); now a burst
 * moves it one leap, within its cluster's reach, and costs one election.
 * A node that trails by many leaps (only forged messages make that)
 * catches up one an election timeout. */
static void term_catch_up(struct raft *r)
{
    if (r->caught_up &&
        r->ticks - r->caught_up_at < (uint64_t)r->cfg.election_ticks)
        return;
    uint64_t reach = term_reach(r);
    if (reach > r->term) {
        r->fresh = false;
        r->caught_up = true;
        r->caught_up_at = r->ticks;
        become_follower(r, reach, 0);
    }
}

int raft_step(struct raft *r, const struct raft_msg *m)
{
    const char *why = msg_invalid(m);
    if (why != NULL)
        return refuse(r, m, why);
    if (m->to != r->id || m->from == r->id)
        return 0;
    if (m->term > term_reach(r)) {
        term_catch_up(r);
        return refuse(r, m, "term too far above ours, past 2^61");
    }
    if (m->type == RAFT_MSG_INSTALL_SNAPSHOT_RESP)
        return 0;
    if (m->type == RAFT_MSG_APPEND && m->term >= r->term &&
        (why = append_conflicts(r, m)) != NULL)
        return refuse(r, m, why);
    r->fresh = false;

    /* ReadIndex traffic is term-less: a confirmed read index stays valid
     * whatever happened to the terms since. */
    if (m->type == RAFT_MSG_READ_INDEX) {
        /* Only members read through us: the list of pending reads stays
         * bounded by what members ask. */
        if (r->role == RAFT_LEADER && progress_get(r, m->from) != NULL) {
            add_forwarded_read(r, m);
        } else {
            struct raft_msg *resp =
                new_msg(r, false, RAFT_MSG_READ_INDEX_RESP, m->from);
            resp->term = 0;
            resp->reject = true;
            resp->context = m->context;
        }
        return 0;
    }
    if (m->type == RAFT_MSG_READ_INDEX_RESP) {
        /* Reads were forwarded to the leader: an index from anyone else
         * could be any index (a refusal only makes the caller retry). */
        if ((!m->reject && m->from != r->leader) ||
            !take_forwarded(r, m->context))
            return 0; /* duplicate, or already dropped */
        if (m->reject)
            push_dropped(r, m->context);
        else
            push_read_state(r, m->context, m->index);
        return 0;
    }

    if (m->term > r->term) {
        if (m->type == RAFT_MSG_PREVOTE || m->type == RAFT_MSG_VOTE) {
            /* Thesis §4.2.3: "if a server receives a RequestVote request
             * within the minimum election timeout of hearing from a
             * current leader, it does not update its term or grant its
             * vote" (unless the leader itself asked, §3.10). */
            bool force = m->type == RAFT_MSG_VOTE && m->transfer;
            if (!force && in_lease(r))
                return 0;
        }
        if (m->type == RAFT_MSG_PREVOTE ||
            (m->type == RAFT_MSG_PREVOTE_RESP && !m->reject)) {
            /* Thesis §9.6: Pre-Vote does not change terms. A granted
             * answer carries the proposed term. */
        } else {
            /* Figure 3.1: "If RPC request or response contains term T >
             * currentTerm: set currentTerm = T, convert to follower". */
            bool from_leader = m->type == RAFT_MSG_APPEND ||
                               m->type == RAFT_MSG_HEARTBEAT ||
                               m->type == RAFT_MSG_INSTALL_SNAPSHOT;
            become_follower(r, m->term, from_leader ? m->from : 0);
        }
    } else if (m->term < r->term) {
        if (m->type == RAFT_MSG_APPEND || m->type == RAFT_MSG_HEARTBEAT ||
            m->type == RAFT_MSG_INSTALL_SNAPSHOT) {
            /* A stale leader: tell it our term so it steps down. Without
             * this, a node whose term grew while partitioned could never
             * rejoin: with leader stickiness nobody adopts its term
             * through its vote requests. */
            new_msg(r, false, RAFT_MSG_APPEND_RESP, m->from);
        } else if (m->type == RAFT_MSG_PREVOTE || m->type == RAFT_MSG_VOTE) {
            /* Figure 3.1 (RequestVote): "Reply false if term <
             * currentTerm", with currentTerm "for candidate to update
             * itself": a candidate that nobody else would tell about
             * newer terms (e.g. its peers have an older configuration)
             * could otherwise never win. */
            struct raft_msg *resp =
                new_msg(r, true,
                        m->type == RAFT_MSG_VOTE ? RAFT_MSG_VOTE_RESP
                                                 : RAFT_MSG_PREVOTE_RESP,
                        m->from);
            resp->reject = true;
        }
        return 0;
    }

    if (m->type == RAFT_MSG_PREVOTE || m->type == RAFT_MSG_VOTE) {
        handle_vote(r, m);
        return 0;
    }
    switch (r->role) {
    case RAFT_LEADER:
        step_leader(r, m);
        break;
    case RAFT_CANDIDATE:
    case RAFT_PRE_CANDIDATE:
        step_candidate(r, m);
        break;
    default:
        step_follower(r, m);
        break;
    }
    return 0;
}

/* What an entry of len payload bytes counts in r->uncommitted: empty ones
 * (the no-op) nothing, as in etcd-raft. */
static uint64_t entry_cost(size_t len)
{
    return len ? len + RAFT_UNCOMMITTED_OVERHEAD : 0;
}

/* Entries handed out for apply (n of them at e): those of the leader's
 * term no longer count in r->uncommitted. Not at commit: a leader whose
 * own disk is slower than its followers' has committed entries it has not
 * written, which it holds until it can apply them. */
static void handed_for_apply(struct raft *r, const struct raft_entry *e,
                             size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (e[i].term != r->term)
            continue; /* only this term's were counted (leader_append) */
        pz_assert(r->uncommitted >= entry_cost(e[i].len));
        r->uncommitted -= entry_cost(e[i].len);
    }
}

static void leader_append(struct raft *r, uint8_t type, const uint8_t *data,
                          size_t len, uint64_t *index, uint64_t *term)
{
    struct raft_entry e = {
        .term = r->term, .index = log_last(&r->log) + 1, .type = type};
    e.data = rbuf_new(&r->mem, data, len);
    e.len = len;
    append_entry(r, &e);
    r->uncommitted += entry_cost(len);
    r->need_flush = true;
    if (index != NULL)
        *index = e.index;
    if (term != NULL)
        *term = e.term;
    /* A single voter commits as soon as the entry is durable; nothing to
     * do here (advance recomputes the commit index). */
}

static int propose(struct raft *r, const uint8_t *data, size_t len,
                   bool bounded, uint64_t *index, uint64_t *term)
{
    if (r->role != RAFT_LEADER)
        return PZ_ENOTLEADER;
    if (r->transferee != 0)
        return PZ_EBUSY;
    /* etcd-raft's MaxUncommittedEntriesSize: without it a client that
     * writes faster than the followers take the log (or that resets each
     * write's stream as soon as it is sent, which frees every per-client
     * bound) grows the leader's memory without end. */
    if (bounded && r->cfg.max_uncommitted != 0 && r->uncommitted > 0 &&
        r->uncommitted + entry_cost(len) > r->cfg.max_uncommitted)
        return PZ_EOVERLOAD;
    leader_append(r, RAFT_ENTRY_NORMAL, data, len, index, term);
    return 0;
}

int raft_propose(struct raft *r, const uint8_t *data, size_t len,
                 uint64_t *index, uint64_t *term)
{
    return propose(r, data, len, true, index, term);
}

int raft_propose_unbounded(struct raft *r, const uint8_t *data, size_t len,
                           uint64_t *index, uint64_t *term)
{
    return propose(r, data, len, false, index, term);
}

int raft_propose_conf(struct raft *r, const struct raft_conf_change *cc,
                      uint64_t *index, uint64_t *term)
{
    if (r->role != RAFT_LEADER)
        return PZ_ENOTLEADER;
    if (r->transferee != 0)
        return PZ_EBUSY;
    /* Thesis §4.1: the leader must wait for the previous change to commit
     * before starting a new one; a conf entry of an earlier term counts
     * too until it is committed. And (Ongaro's 2015 correction to the
     * single-server algorithm, raft-dev "bug in single-server membership
     * changes"): not before the leader has committed an entry of its own
     * term, or an uncommitted conf entry of an earlier leader that this
     * leader never saw could form, with ours, two configurations without
     * overlapping majorities. */
    if (r->conf_index > r->commit || !committed_in_term(r))
        return PZ_EBUSY;
    struct raft_conf c;
    raft_conf_init(&c);
    raft_conf_copy(&c, &r->conf);
    struct raft_server *s = raft_conf_get(&c, cc->id);
    int rc = 0;
    switch (cc->type) {
    case RAFT_CC_ADD_NONVOTER:
        rc = raft_conf_add(&c, cc->id, false, cc->meta);
        break;
    case RAFT_CC_PROMOTE:
        if (s == NULL || s->voter)
            rc = PZ_EINVAL;
        else
            s->voter = true;
        break;
    case RAFT_CC_DEMOTE:
        if (s == NULL || !s->voter)
            rc = PZ_EINVAL;
        else
            s->voter = false;
        break;
    case RAFT_CC_REMOVE:
        if (s == NULL) {
            rc = PZ_EINVAL;
            break;
        }
        /* The entry goes at the end of the log in this term. */
        raft_conf_note_removed(&c, cc->id, log_last(&r->log) + 1, r->term,
                               s->meta);
        raft_conf_remove(&c, cc->id);
        break;
    default:
        rc = PZ_EINVAL;
        break;
    }
    if (rc == 0 && raft_conf_voters(&c) == 0)
        rc = PZ_EINVAL;
    if (rc != 0) {
        raft_conf_free(&c);
        return rc;
    }
    uint8_t *buf;
    size_t len;
    raft_conf_encode(&c, &buf, &len);
    raft_conf_free(&c);
    leader_append(r, RAFT_ENTRY_CONF, buf, len, index, term);
    pz_free(buf);
    return 0;
}

void raft_commit_eager(struct raft *r)
{
    r->commit_eager = true;
    r->need_flush = true;
}

int raft_transfer_leader(struct raft *r, uint64_t id)
{
    if (r->role != RAFT_LEADER)
        return PZ_ENOTLEADER;
    const struct raft_server *s = raft_conf_get(&r->conf, id);
    if (id == r->id || s == NULL || !s->voter)
        return PZ_EINVAL;
    if (r->transferee != 0)
        return PZ_EBUSY;
    r->transferee = id;
    r->transfer_elapsed = 0;
    struct progress *pr = progress_get(r, id);
    pz_assert(pr != NULL);
    /* Thesis §3.10: "the prior leader sends its log entries to the target
     * server" then "sends a TimeoutNow request". */
    if (pr->match == log_last(&r->log))
        send_timeout_now(r, id);
    else
        pr->want_empty = true;
    r->need_flush = true; /* and commit indexes held back (commit_due) */
    return 0;
}

int raft_read_index(struct raft *r, uint64_t ctx)
{
    r->fresh = false;
    if (r->role == RAFT_LEADER) {
        add_read(r, 0, ctx, 0);
        return 0;
    }
    if (r->leader == 0)
        return PZ_ENOLEADER;
    struct raft_msg *m = new_msg(r, false, RAFT_MSG_READ_INDEX, r->leader);
    m->term = 0;
    m->log_term = r->term; /* the term whose leader it asks */
    m->context = ctx;
    struct fwd_read *f = VEC_PUSH(r->fwd, r->n_fwd, r->cap_fwd);
    f->ctx = ctx;
    f->tick = r->ticks;
    return 0;
}

void raft_restore_promise(struct raft *r, uint64_t ns)
{
    if (ns > 0 && r->term > 0 && r->cfg.clock != NULL)
        r->promised_until = r->cfg.clock(r->cfg.clock_arg) + ns;
}

void raft_set_promise(struct raft *r, uint64_t ns)
{
    r->promise_ns = ns;
}

void raft_campaign(struct raft *r)
{
    r->fresh = false;
    campaign(r, r->cfg.pre_vote, false);
}

/* --- public: snapshots ---------------------------------------------------- */

int raft_snapshot_meta_at(const struct raft *r, uint64_t index,
                          struct raft_snapshot_meta *out)
{
    memset(out, 0, sizeof *out);
    raft_conf_init(&out->conf);
    if (index > r->applied || index < r->snap.index)
        return PZ_EINVAL;
    out->index = index;
    out->term = log_term(&r->log, index);
    conf_as_of(r, index, &out->conf);
    return 0;
}

int raft_compact(struct raft *r, uint64_t index, uint64_t trailing)
{
    if (index > r->applied)
        return PZ_EINVAL;
    if (index <= r->snap.index)
        return PZ_ECANCELED;
    /* index <= applied <= persisted: every entry dropped is durable, and
     * committed, so no truncation will ever need it back. */
    struct raft_conf c;
    conf_as_of(r, index, &c);
    snap_set(r, index, log_term(&r->log, index), &c);
    raft_conf_free(&c);
    uint64_t upto = trailing < index ? index - trailing : 0;
    if (upto > r->log.offset)
        log_compact(&r->log, upto);
    return 0;
}

uint64_t raft_trailing_within(const struct raft *r, uint64_t index,
                              uint64_t max_entries, uint64_t max_bytes)
{
    uint64_t n = 0, bytes = 0;
    while (n < max_entries && n < index) {
        const struct raft_entry *e = raft_log_get(r, index - n);
        if (e == NULL || e->len > max_bytes - bytes)
            break;
        bytes += e->len;
        n++;
    }
    return n;
}

int raft_report_snapshot(struct raft *r, uint64_t id, bool ok)
{
    if (r->role != RAFT_LEADER)
        return PZ_ENOTLEADER;
    struct progress *pr = progress_get(r, id);
    if (pr == NULL || pr->id == r->id || pr->state != RAFT_PROGRESS_SNAPSHOT)
        return 0;
    uint64_t pending = pr->pending_snap;
    become_probe(r, pr);
    if (ok) {
        /* Delivered: continue right after it once the follower answers
         * (its APPEND_RESP), or after a heartbeat answer if that got
         * lost; a follower that did not install it rejects the probe and
         * gets a new snapshot. */
        pr->next = pending + 1;
    }
    /* Failed: probe from match after the next heartbeat answer, which
     * sends a new snapshot if still needed (not in a tight loop). */
    pr->probe_sent = true;
    return 0;
}

/* --- public: Ready -------------------------------------------------------- */

static bool hs_equal(const struct raft_hard_state *a,
                     const struct raft_hard_state *b)
{
    return a->term == b->term && a->vote == b->vote && a->commit == b->commit;
}

static uint64_t apply_limit(const struct raft *r)
{
    return PZ_MIN(r->commit, r->persisted);
}

/* Whether another Ready may be taken now (whatever is in it). */
static bool ready_room(const struct raft *r)
{
    if (r->n_inflight >= r->cfg.max_readies)
        return false;
    /* A snapshot install rewrites the whole stored log: it goes alone. */
    return r->n_inflight == 0 || !(r->snap_unsent || r->snap_handed);
}

void raft_hold_apply(struct raft *r, bool hold)
{
    r->apply_held = hold;
}

struct raft_entry *raft_take_committed(struct raft *r, size_t *n)
{
    struct raft_entry *e = r->rd_committed;
    *n = r->rd_n_committed;
    r->rd_committed = NULL;
    r->rd_n_committed = 0;
    return e;
}

void raft_entries_free(struct raft_entry *e, size_t n)
{
    entries_release(e, n);
}

bool raft_has_ready(const struct raft *r)
{
    if (!ready_room(r))
        return false;
    struct raft_hard_state hs = {r->term, r->vote, r->commit};
    if (!hs_equal(&hs, &r->prev_hs))
        return true;
    if (r->role != r->prev_ss.role || r->leader != r->prev_ss.leader ||
        r->term != r->prev_ss.term)
        return true;
    if (r->unsent <= log_last(&r->log) || r->out.n || r->out_after.n ||
        r->n_rs || r->n_dropped || r->conf_changed || r->snap_unsent ||
        (!r->apply_held && apply_limit(r) > r->applied))
        return true;
    return r->role == RAFT_LEADER && (r->need_flush || r->round_wanted);
}

static struct raft_entry *share_range(const struct raft *r, uint64_t lo,
                                      uint64_t hi, size_t *n)
{
    *n = 0;
    if (lo > hi)
        return NULL;
    size_t cnt = (size_t)(hi - lo + 1);
    struct raft_entry *a = pz_malloc(cnt * sizeof *a);
    for (size_t i = 0; i < cnt; i++)
        entry_share(&a[i], log_at(&r->log, lo + i));
    *n = cnt;
    return a;
}

void raft_ready(struct raft *r, struct raft_ready *rd)
{
    pz_assert(ready_room(r));
    r->fresh = false;
    free_handed(r, false);
    struct ready_slot *sl = slot_at(r, r->n_slots);
    r->n_slots++;
    r->n_inflight++;
    if (r->role == RAFT_LEADER)
        leader_flush(r);
    memset(rd, 0, sizeof *rd);

    rd->ss.role = r->role;
    rd->ss.leader = r->leader;
    rd->ss.term = r->term;
    rd->ss_changed = rd->ss.role != r->prev_ss.role ||
                     rd->ss.leader != r->prev_ss.leader ||
                     rd->ss.term != r->prev_ss.term;
    r->prev_ss = rd->ss;

    rd->hs.term = r->term;
    rd->hs.vote = r->vote;
    rd->hs.commit = r->commit;
    rd->hs_changed = !hs_equal(&rd->hs, &r->prev_hs);
    r->prev_hs = rd->hs;

    uint64_t last = log_last(&r->log);
    sl->entries = share_range(r, r->unsent, last, &sl->n_entries);
    rd->entries = sl->entries;
    rd->n_entries = sl->n_entries;
    if (rd->n_entries > 0) {
        rd->persist_index = last;
        rd->persist_term = log_term(&r->log, last);
        r->unsent = last + 1;
    }

    if (r->snap_unsent) {
        /* Installed from the leader: the driver loads and persists it.
         * Nothing is applied on top before it is durable. */
        r->rd_snap.index = r->snap.index;
        r->rd_snap.term = r->snap.term;
        raft_conf_copy(&r->rd_snap.conf, &r->snap.conf);
        rd->snapshot = &r->rd_snap;
        r->snap_unsent = false;
        r->snap_handed = true;
    } else if (!r->apply_held) {
        uint64_t lim = apply_limit(r);
        r->rd_committed =
            share_range(r, r->applied + 1, lim, &r->rd_n_committed);
        rd->committed = r->rd_committed;
        rd->n_committed = r->rd_n_committed;
        if (r->role == RAFT_LEADER)
            handed_for_apply(r, r->rd_committed, r->rd_n_committed);
        if (lim > r->applied)
            r->applied = lim;
    }

    /* Hand the outbox over (swap, keeping allocations). */
    struct msgvec t = r->rd_out;
    r->rd_out = r->out;
    r->out = t;
    t = sl->after;
    sl->after = r->out_after;
    r->out_after = t;
    rd->msgs = r->rd_out.m;
    rd->n_msgs = r->rd_out.n;
    rd->msgs_after_persist = sl->after.m;
    rd->n_msgs_after_persist = sl->after.n;

    r->rd_rs = r->rs;
    rd->read_states = r->rs;
    rd->n_read_states = r->n_rs;
    r->rs = NULL;
    r->n_rs = r->cap_rs = 0;
    r->rd_dropped = r->dropped;
    rd->dropped_reads = r->dropped;
    rd->n_dropped_reads = r->n_dropped;
    r->dropped = NULL;
    r->n_dropped = r->cap_dropped = 0;

    rd->conf_changed = r->conf_changed;
    r->conf_changed = false;
    sl->persist_index = rd->persist_index;
    sl->hs_term = rd->hs.term;
    sl->trunc_since = UINT64_MAX;
}

bool raft_has_msgs(const struct raft *r)
{
    return r->role == RAFT_LEADER && r->durable_term == r->term &&
           (r->out.n > 0 || r->need_flush || r->round_wanted);
}

/* Thesis §10.2.1: "the leader can write to its disk in parallel with
 * replicating to the followers". A leader whose term (and so its vote for
 * itself) is durable sends nothing that depends on the Ready in flight:
 * its AppendEntries may carry entries it has not persisted yet (it counts
 * itself for them only once they are), heartbeats and TimeoutNow claim
 * nothing of its disk; what does (answers to vote requests) is in
 * out_after and stays there. So it may send the rest now rather than
 * after the write: heartbeats keep flowing through a slow fsync, and
 * followers start on new entries while the leader still writes older
 * ones. */
size_t raft_take_msgs(struct raft *r, const struct raft_msg **msgs)
{
    msgvec_clear(&r->taken);
    *msgs = NULL;
    /* (Always true of a leader: it wins only once its term is durable.) */
    if (r->role != RAFT_LEADER || r->durable_term != r->term)
        return 0;
    leader_flush(r); /* out_after (answers to votes) waits for the Ready */
    struct msgvec t = r->taken;
    r->taken = r->out;
    r->out = t;
    *msgs = r->taken.m;
    return r->taken.n;
}

void raft_advance(struct raft *r, const struct raft_ready *rd)
{
    pz_assert(r->n_inflight > 0);
    /* The oldest in flight: Readies are durable in the order taken. */
    struct ready_slot *sl = slot_at(r, r->n_slots - r->n_inflight);
    pz_assert(sl->persist_index == rd->persist_index &&
              sl->hs_term == rd->hs.term);
    r->n_inflight--;
    r->snap_handed = false; /* an installed snapshot in it is durable */
    r->durable_term = rd->hs.term;
    /* What was written counts for the log only where nothing was
     * truncated since the Ready was taken: below the lowest truncated
     * index the log is what went to disk. (Checking the term at
     * persist_index alone would trust Log Matching, which a lying peer can
     * break: the same index and term back with other contents.) */
    uint64_t upto = rd->persist_index;
    if (sl->trunc_since != UINT64_MAX && upto >= sl->trunc_since)
        upto = sl->trunc_since - 1;
    if (upto != 0 && upto > r->persisted &&
        (upto < rd->persist_index ||
         log_term(&r->log, upto) == rd->persist_term)) {
        r->persisted = upto;
        if (r->role == RAFT_LEADER) {
            struct progress *self = progress_get(r, r->id);
            if (self != NULL)
                self->match = r->persisted;
            leader_maybe_commit(r);
        }
    }
    if (r->role == RAFT_CANDIDATE && r->durable_term == r->term) {
        vote_record(r, r->id, true); /* now durable: it counts */
        if (vote_tally(r) == 1)
            become_leader(r);
    }
}

/* --- public: introspection ------------------------------------------------ */

void raft_status(struct raft *r, struct raft_status *st)
{
    memset(st, 0, sizeof *st);
    st->id = r->id;
    st->role = r->role;
    st->term = r->term;
    st->vote = r->vote;
    st->leader = r->leader;
    st->lease = in_touch(r);
    st->lease_reads = r->lease_reads;
    st->commit = r->commit;
    st->applied = r->applied;
    st->first_index = r->log.offset + 1;
    st->compact_term = r->log.offset_term;
    st->snap_index = r->snap.index;
    st->snap_term = r->snap.term;
    st->last_index = log_last(&r->log);
    st->last_term = log_last_term(&r->log);
    st->persisted_index = r->persisted;
    st->uncommitted = r->role == RAFT_LEADER ? r->uncommitted : 0;
    st->conf_index = r->conf_index;
    st->transferee = r->transferee;
    pz_free(r->status_buf);
    r->status_buf = NULL;
    if (r->role != RAFT_LEADER)
        return;
    r->status_buf = pz_calloc(r->n_prs ? r->n_prs : 1, sizeof *r->status_buf);
    size_t k = 0;
    for (size_t i = 0; i < r->n_prs; i++) {
        const struct progress *pr = &r->prs[i];
        if (pr->id == r->id)
            continue;
        struct raft_peer_status *ps = &r->status_buf[k++];
        ps->id = pr->id;
        ps->voter = pr->voter;
        ps->state = pr->state;
        ps->match = pr->match;
        ps->next = pr->next;
        ps->last_contact = r->ticks - pr->last_contact;
        ps->inflight = pr->infl_n;
        ps->pending_snap =
            pr->state == RAFT_PROGRESS_SNAPSHOT ? pr->pending_snap : 0;
    }
    st->n_peers = k;
    st->peers = r->status_buf;
}

const struct raft_conf *raft_conf_current(const struct raft *r, uint64_t *index)
{
    if (index != NULL)
        *index = r->conf_index;
    return &r->conf;
}

const struct raft_entry *raft_log_get(const struct raft *r, uint64_t index)
{
    return log_at(&r->log, index);
}

uint64_t raft_last_index(const struct raft *r)
{
    return log_last(&r->log);
}

const char *raft_role_name(uint8_t role)
{
    static const char *const names[] = {"follower", "pre-candidate",
                                        "candidate", "leader"};
    return role < PZ_ARRAY_SIZE(names) ? names[role] : "unknown";
}

const char *raft_msg_type_name(uint8_t type)
{
    static const char *const names[] = {"?",
                                        "APPEND",
                                        "APPEND_RESP",
                                        "HEARTBEAT",
                                        "HEARTBEAT_RESP",
                                        "PREVOTE",
                                        "PREVOTE_RESP",
                                        "VOTE",
                                        "VOTE_RESP",
                                        "TIMEOUT_NOW",
                                        "READ_INDEX",
                                        "READ_INDEX_RESP",
                                        "INSTALL_SNAPSHOT",
                                        "INSTALL_SNAPSHOT_RESP"};
    return type < PZ_ARRAY_SIZE(names) ? names[type] : "?";
}
