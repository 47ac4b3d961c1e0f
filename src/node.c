/* node.c - the node: the only place the Raft core meets I/O and time.
 *
 * Owns the state machine (kv), the Raft core, and every client request
 * waiting on them; reaches the log store, the peer transport and the tick
 * timer through its I/O table (node_io.h).
 *
 * Happy path, once per loop turn from the prepare hook (node_before_sleep),
 * the Ready cycle (docs/DESIGN.md, "The life of a write"):
 *   1. take a Ready; apply its committed entries (durable here already) and
 *      complete the writes and reads they unblock; at most a budget of
 *      work a turn: an entry that needs more goes on over the next turns
 *      ("applying in steps" below);
 *   2. send the messages that may go at once (the leader's AppendEntries
 *      go out before its own disk write: thesis §10.2.1);
 *   3. hand the hard state (when term or vote changed, hs_goes) and new
 *      entries to the store, which commits them in one SQLite transaction
 *      on libuv's thread pool while the loop goes on serving (group
 *      commit: whatever arrives meanwhile forms the next batch, so the
 *      batch grows with the load); up to NODE_READIES Readies are in
 *      flight, and the store writes them back to back, each batch
 *      starting as soon as the one before is durable (pipelined); a small
 *      Ready with nothing else pending on the loop (one request in
 *      flight) is written on the loop instead, once the turn's output is
 *      flushed (node_write_now): the two hand-offs cost more than its
 *      COMMIT;
 *   4. when a write is durable, and every one before it: send the
 *      messages that needed it (votes, acknowledgements), raft_advance
 *      (retire_durable).
 * Failure modes: a failed log write is fatal (fail-stop: log it and exit,
 * never go on with state that is not on disk), except for lack of space
 * (node_nospace.c: the Ready is written again until it fits, and client
 * writes are refused meanwhile). A request whose entry is
 * overwritten by another leader fails with PZ_ELEADERCHANGE; one that waits
 * longer than request-timeout fails with PZ_ETIMEDOUT (a write may still be
 * applied later). A database that fails its checks at start stops the
 * process with the reason. */
#include "node.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "failpoint.h"
#include "log.h"
#include "node_internal.h"
#include "node_lease.h"
#include "stats.h"
#include "watch.h"

/* The node the driver's code runs as: node_init's, or the one a test
 * selected (node_select). After node_close, an empty node that is not
 * open. */
static struct node closed_node;
struct node *nd = &closed_node;

void node_select(struct node *n)
{
    nd = n ? n : &closed_node;
    node_lease_use(nd->lease);
}

struct node *node_current(void)
{
    return nd == &closed_node ? NULL : nd;
}

static void on_kv_event(void *arg, int type, const struct kv_view *cur,
                        const struct kv_view *prev)
{
    PZ_UNUSED(arg);
    watch_hub_record(&nd->watch_hub, kv_apply_revision(nd->kv), type, cur,
                     prev);
}

void core_kv_replaced(void)
{
    kv_set_event_cb(nd->kv, on_kv_event, NULL);
    watch_hub_reset(&nd->watch_hub, kv_revision(nd->kv));
}

struct watch_hub *node_watch(void)
{
    return &nd->watch_hub;
}

void core_fatal(const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    /* Fail-stop: never go on with state that is not on disk or not as
     * the log says). */
    pz_error("%s; stopping", msg);
    exit(1);
}

static bool apply_entry(const struct raft_entry *e);
static void after_applied(void);
static struct node_req *read_by_ctx(uint64_t ctx);
static int read_start(struct node_req *req);
static void send_all(const struct raft_msg *msgs, size_t n);
static void soft_state_changed(const struct raft_soft_state *ss);
static void promise_record(void);
static void ready_apply(struct raft_ready *rd);
static void ready_cycle(void);
static void send_early(void);
static void on_written(int status, const char *errmsg);
static const char *on_recv(void *data, const struct raft_msg *m);
static int restore(char *err, size_t errlen);
static void on_transport_closed(void);
static void on_tick_closed(void);
static int write_ready(struct node_rd *q);

/* --- applying committed entries ------------------------------------------ */

/* The write waiting on exactly this entry, or NULL. */
static struct node_req *proposal_of(const struct raft_entry *e)
{
    struct pz_queue *q;
    PZ_QUEUE_FOREACH(q, &nd->proposals)
    {
        struct node_req *r = container_of(q, struct node_req, q);
        if (r->index >= e->index)
            return r->index == e->index && r->term == e->term ? r : NULL;
    }
    return NULL;
}

/* e is applied (res: what its command did): the applied index moves,
 * and the writes waiting on it, or on entries it replaced, complete. */
static void entry_applied(const struct raft_entry *e,
                          const struct kv_result *res)
{
    nd->applied = e->index;
    nd->applied_bytes += e->len + LOG_ENTRY_COST;
    node_metrics_applied(1);
    nospace_applied(e->index);
    /* Complete the writes waiting on this index. */
    while (!pz_queue_empty(&nd->proposals)) {
        struct node_req *r =
            container_of(pz_queue_head(&nd->proposals), struct node_req, q);
        if (r->index > e->index)
            break;
        if (r->index == e->index && r->term == e->term) {
            node_metrics_committed(r->proposed_ns);
            r->res = *res;
            reqs_done(r, 0);
        } else {
            /* Another leader's entry took this place: ours is lost. */
            reqs_done(r, PZ_ELEADERCHANGE);
        }
    }
}

/* The paused command's entry is done. */
static void cur_applied(const struct kv_result *res)
{
    nd->ap.job = NULL;
    nd->ap.req = NULL;
    watch_hub_commit(&nd->watch_hub);
    entry_applied(&nd->ap.cur, res);
}

/* Apply e within what is left of this turn's budget. Returns false if its
 * command paused (nd->ap.job goes on with it next turn). */
static bool apply_entry(const struct raft_entry *e)
{
    struct kv_result res = {0};
    if (e->type == RAFT_ENTRY_NORMAL) {
        struct node_req *w = proposal_of(e);
        struct kv_job *job;
        int rv = kv_apply_start(nd->kv, e->data, e->len, w ? w->sink : NULL,
                                &nd->ap.left, &res, &job);
        if (rv < 0) /* every node rejects it alike: state stays equal */
            pz_warn("entry %llu: undecodable command (%s), skipped",
                    (unsigned long long)e->index, pz_strerror(rv));
        if (job) {
            nd->ap.job = job;
            nd->ap.cur = *e;
            nd->ap.cur.data = NULL; /* the job holds its command */
            nd->ap.req = w;
            return false;
        }
        watch_hub_commit(&nd->watch_hub);
    } else if (e->type == RAFT_ENTRY_CONF) {
        members_conf_committed(e);
    }
    entry_applied(e, &res);
    return true;
}

/* --- applying in steps ------------------------------------------------------
 *
 * The loop that runs Raft and serves clients also applies, so an entry
 * whose command does work that grows with the table (a DELRANGE over many
 * keys, a REVOKE of a lease holding many) is applied in steps of at most
 * nd->ap.budget units (kv.h "applying in steps", about a key deleted
 * each) per loop turn, across as many turns as it takes; heartbeats,
 * appends, votes, ticks and client I/O go on in between. Invariants (each
 * tested: tests/unit test_kv.c job_*, test_node_sim.c, and
 * tests/integration/test_chunked_apply.py):
 *  - the applied index (nd->applied) moves only when an entry is wholly
 *    applied, and a snapshot is forked only between entries
 *    (snaps_can_fork), so nothing persisted ever holds part of an entry:
 *    a restart mid-entry applies it again from the log;
 *  - the table ends as after a one-shot apply (same revision, digest,
 *    events, results), on every node whatever its budget, because the
 *    outcome is decided at the start and the work is done in the same
 *    order;
 *  - no read sees part of an entry: while a command is paused
 *    (kv_paused), reads waiting for an index are not completed, callbacks
 *    of finished requests (stale and serializable reads included) wait
 *    (node_before_sleep), held gRPC answers go back through node_read
 *    (node_applying), and the aggregates (revision, key count, digest:
 *    /status, metrics, headers, watch starts) are those from before it;
 *    the revision's events reach watchers once, whole, at its end
 *    (watch_hub_commit);
 *  - the core hands out no further committed entries meanwhile
 *    (raft_hold_apply): they wait in the log, and a leader counts them in
 *    max_uncommitted, so clients cannot pile up work behind the entry;
 *    those handed with it wait in nd->ap.queue;
 *  - a term, leader or membership change mid-entry changes nothing about
 *    it (it is committed); a snapshot install and a close first finish it
 *    (apply_drain); a crash drops it with the table. */

/* rd's committed entries from `from` on wait for later turns: take them
 * from the core (no copy: a follower catching up is handed tens of
 * thousands at once, or large values) and hold the core's next ones. The
 * queue is empty here: the core hands out nothing while it is not. */
static void queue_entries(struct raft_ready *rd, size_t from)
{
    raft_hold_apply(nd->raft, true);
    pz_assert(nd->ap.queue == NULL);
    if (from == rd->n_committed)
        return;
    size_t n;
    nd->ap.queue = raft_take_committed(nd->raft, &n);
    pz_assert(nd->ap.queue == rd->committed && n == rd->n_committed);
    nd->ap.n = n;
    nd->ap.next = from;
    rd->committed = NULL; /* the queue's now */
    rd->n_committed = 0;
}

/* The queue is done with (or dropped): its entries go back to the core. */
static void queue_free(void)
{
    raft_entries_free(nd->ap.queue, nd->ap.n);
    nd->ap.queue = NULL;
    nd->ap.n = nd->ap.next = 0;
}

bool node_applying(void)
{
    return nd->ap.job != NULL;
}

/* Apply what waits, within the budget left this turn. Returns whether
 * everything is applied (the core may hand out more). */
static bool apply_pending(void)
{
    if (nd->ap.job) {
        struct kv_result res = {0};
        if (!kv_job_run(nd->ap.job, &nd->ap.left, &res))
            return false;
        cur_applied(&res);
    }
    while (nd->ap.next < nd->ap.n) {
        if (nd->ap.left == 0)
            return false;
        if (!apply_entry(&nd->ap.queue[nd->ap.next++]))
            return false;
    }
    queue_free();
    raft_hold_apply(nd->raft, false);
    return true;
}

/* Each loop turn: a new budget, and what waits goes on; when the last
 * waiting entry is done, what waited for it goes. */
static void apply_turn(void)
{
    nd->ap.left = nd->ap.budget;
    if (nd->ap.job == NULL && nd->ap.next == nd->ap.n)
        return;
    uint64_t before = nd->applied;
    apply_pending();
    if (nd->applied != before)
        after_applied();
}

/* Apply everything that waits, whatever it takes (a snapshot install is
 * about to replace the table, the node closes). */
static void apply_drain(void)
{
    uint64_t before = nd->applied;
    nd->ap.left = UINT64_MAX;
    pz_assert(apply_pending());
    nd->ap.left = nd->ap.budget;
    if (nd->applied != before)
        after_applied();
}

/* Drop what waits (a crash: the table goes too). */
static void apply_free(void)
{
    kv_job_free(nd->ap.job);
    nd->ap.job = NULL;
    nd->ap.req = NULL;
    queue_free();
}

/* Entries were applied outside a Ready: what waited for them goes. */
static void after_applied(void)
{
    snaps_maybe();
    snaps_after_entry();
    core_reads_check_applied();
}

void node_set_apply_budget(uint64_t units)
{
    nd->ap.budget = units ? units : NODE_APPLY_BUDGET;
}

void core_reads_check_applied(void)
{
    if (kv_paused(nd->kv))
        return; /* not with part of an entry applied: at its end */
    struct pz_queue *e = nd->reads_apply.next;
    while (e != &nd->reads_apply) {
        struct node_req *r = container_of(e, struct node_req, q);
        e = e->next;
        if (r->index <= nd->applied)
            reqs_done(r, 0);
    }
}

static struct node_req *read_by_ctx(uint64_t ctx)
{
    struct pz_queue *e;
    PZ_QUEUE_FOREACH(e, &nd->reads)
    {
        struct node_req *r = container_of(e, struct node_req, q);
        if (r->ctx == ctx)
            return r;
    }
    return NULL;
}

static int read_start(struct node_req *req)
{
    req->read_waits = false;
    req->ctx = ++nd->read_ctx;
    int rv = raft_read_index(nd->raft, req->ctx);
    if (rv == 0)
        reqs_link(&nd->reads, req);
    return rv;
}

/* --- the Ready cycle -------------------------------------------------------- */

static void send_all(const struct raft_msg *msgs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        node_metrics_sent(&msgs[i]);
        if (msgs[i].type == RAFT_MSG_INSTALL_SNAPSHOT)
            snaps_xfer_start(&msgs[i]); /* the file goes first */
        else
            NIO(send, &msgs[i]);
    }
}


static void soft_state_changed(const struct raft_soft_state *ss)
{
    node_metrics_soft_state(ss);
    bool was_leader = nd->role == RAFT_LEADER;
    if (ss->leader != nd->leader) {
        struct member *m = members_find(ss->leader);
        if (ss->leader == 0)
            pz_info("term %llu: no leader", (unsigned long long)ss->term);
        else
            pz_info("term %llu: leader is %s%s",
                    (unsigned long long)ss->term,
                    m && m->name[0] ? m->name : "(unknown)",
                    ss->leader == nd->id ? " (this node)" : "");
    }
    nd->leader = ss->leader;
    nd->role = ss->role;
    node_lease_role(ss->role == RAFT_LEADER, ss->term);
    /* Leadership transfers finish when the target leads. */
    struct pz_queue *e = nd->transfers.next;
    while (e != &nd->transfers) {
        struct node_req *r = container_of(e, struct node_req, q);
        e = e->next;
        if (ss->leader == r->member)
            reqs_done(r, 0);
        else if (ss->leader != 0 && ss->leader != nd->id)
            reqs_done(r, PZ_ELEADERCHANGE); /* someone else won */
    }
    if (was_leader && ss->role != RAFT_LEADER) {
        pz_info("stepped down in term %llu", (unsigned long long)ss->term);
        nospace_pending_clear(); /* the new leader counts its own */
    }
    if (!was_leader && ss->role == RAFT_LEADER)
        members_register_leader(); /* clients find the new leader at once */
    /* A founding member knows the others' Raft addresses only, and learns
     * their client addresses from the handshake of a link it dials: dial
     * a new leader now rather than at the next members_cron, as writes
     * here wait to be forwarded to it. */
    if (nd->leader && !members_leader_told())
        NIO(probe, nd->leader);
    /* Requests waiting for a leader: go. Reads retry ReadIndex. */
    core_leader_waits_wake();
}

void core_leader_waits_wake(void)
{
    if (nd->leader == 0)
        return;
    bool told = members_leader_told();
    struct pz_queue *e = nd->wait_leader.next;
    while (e != &nd->wait_leader) {
        struct node_req *r = container_of(e, struct node_req, q);
        e = e->next;
        /* A read asks the leader over Raft; the rest are proposed here
         * or forwarded to the leader's client address. */
        if (r->read_waits || told)
            reqs_done(r, 0);
    }
}

static void ready_apply(struct raft_ready *rd)
{
    if (rd->ss_changed)
        soft_state_changed(&rd->ss);
    if (rd->snapshot) {
        apply_drain(); /* the table is replaced: nothing half done */
        snaps_install(rd->snapshot);
    }
    /* The core hands out nothing while entries wait (raft_hold_apply). */
    pz_assert(rd->n_committed == 0 ||
              (nd->ap.job == NULL && nd->ap.next == nd->ap.n));
    size_t n_committed = rd->n_committed;
    for (size_t i = 0; i < n_committed; i++) {
        if (nd->ap.left == 0 || !apply_entry(&rd->committed[i])) {
            queue_entries(rd,
                          nd->ap.left == 0 && nd->ap.job == NULL ? i : i + 1);
            break;
        }
    }
    if (n_committed)
        snaps_maybe();
    if (rd->conf_changed)
        members_refresh();
    for (size_t i = 0; i < rd->n_read_states; i++) {
        struct node_req *r = read_by_ctx(rd->read_states[i].ctx);
        if (r == NULL)
            continue; /* cancelled or timed out */
        r->index = rd->read_states[i].index;
        pz_queue_remove(&r->q);
        reqs_link(&nd->reads_apply, r);
    }
    for (size_t i = 0; i < rd->n_dropped_reads; i++) {
        struct node_req *r = read_by_ctx(rd->dropped_reads[i]);
        if (r == NULL)
            continue;
        /* Leadership moved: wait for a leader and ask again. */
        pz_queue_remove(&r->q);
        r->queued = false;
        reqs_link(&nd->wait_leader, r);
        r->read_waits = true;
    }
    core_reads_check_applied();
}

/* Term and vote go to the disk with the write that follows their change
 * (Figure 3.1: before anything that depends on them is sent). The commit
 * index is only a hint for a restart (the leader tells it again, and the
 * restore clips it to the stored log), and rewriting the hard_state row
 * for it alone costs every COMMIT a second WAL page: it rides along with
 * a write at most every HS_COMMIT_EVERY_MS, and is saved at a clean
 * close that finds no write in flight (save_commit; a close that waits
 * for writes leaves the commit index as last written). */
#define HS_COMMIT_EVERY_MS 100

/* Whether rd's term or vote differ from those last handed to the store. */
static bool term_or_vote_moved(const struct raft_ready *rd)
{
    return rd->hs.term != nd->saved_term || rd->hs.vote != nd->saved_vote;
}

/* Whether rd's hard state goes with its write; if so, it is the one
 * handed to the store from now on. */
static bool hs_goes(const struct raft_ready *rd)
{
    uint64_t now = NIO(now);
    bool due = rd->snapshot || term_or_vote_moved(rd) ||
               (rd->hs.commit != nd->saved_commit && now >= nd->hs_commit_at);
    if (due) {
        nd->saved_term = rd->hs.term;
        nd->saved_vote = rd->hs.vote;
        nd->saved_commit = rd->hs.commit;
        nd->hs_commit_at = now + HS_COMMIT_EVERY_MS;
    }
    return due;
}

static struct node_rd *rd_at(size_t i)
{
    return &nd->rds[(nd->rd_first + i) % NODE_READIES];
}

/* Hand q's snapshot, hard state (if it goes) and entries to the store,
 * behind the writes already there. */
static int write_ready(struct node_rd *q)
{
    struct raft_ready *rd = &q->rd;
    int rv;
    if (rd->snapshot)
        rv = NIO(store_write_install, rd->snapshot->index, rd->snapshot->term,
                 &rd->hs, rd->entries, rd->n_entries, on_written);
    else
        rv = NIO(store_write, q->hs ? &rd->hs : NULL, rd->entries,
                 rd->n_entries, on_written);
    if (rv == 0) {
        q->state = RD_WRITING;
        nd->n_writing++;
    }
    return rv;
}

/* A Ready this small (low load: under load batches grow, and stay on the
 * thread pool, where the loop goes on serving through the fsync) may be
 * written on the loop thread (node_write_now) when nothing else waits:
 * one COMMIT with no hand-off to and from a worker, which at one request
 * in flight is a good part of a write's cost, on the followers and on
 * the leader alike (the leader applies nothing before its own write is
 * done, ready_cycle, so that write is on the critical path even when the
 * followers acknowledge first). The loop is held for one COMMIT at most,
 * and only while COMMITs are fast (the I/O table's store_write_now_ok).
 *
 * A follower whose clients are quiet (the I/O table's clients_quiet)
 * writes on the loop at any load (alone): its loop has no client to
 * serve, the leader's next entries wait in the socket meanwhile and make
 * the next batch, and the two hand-offs per batch are saved on both
 * followers (what else arrives waits for the COMMIT: docs/DESIGN.md). Up to
 * WRITE_ALONE_MAX_BYTES: a follower catching up gets larger Readies, whose
 * COMMIT a returning client would wait for. */
/* The most time one loop turn spends calling back requests that completed
 * (node_before_sleep): a read's callback runs the read (a sorted etcd
 * Range walks and sorts its whole range, about 0.1 s per million keys),
 * and fifty of them confirmed by one read index ran back to back in one
 * turn, holding a leader's heartbeats past the election timeout. Past
 * this the rest wait for the next turn, which first takes the timers and
 * the peers' messages. */
#define DONE_TURN_NS (10 * UINT64_C(1000000))
#define WRITE_NOW_MAX_ENTRIES 1
#define WRITE_NOW_MAX_BYTES (64 * 1024)
#define WRITE_ALONE_MAX_BYTES (1024 * 1024)

static bool write_now_fits(const struct raft_ready *rd)
{
    if (rd->snapshot || nd->io.store_write_now_ok == NULL)
        return false;
    bool alone = rd->ss.role == RAFT_FOLLOWER && nd->io.clients_quiet &&
                 NIO(clients_quiet);
    if (!alone && rd->n_entries > WRITE_NOW_MAX_ENTRIES)
        return false;
    size_t bytes = 0;
    for (size_t i = 0; i < rd->n_entries; i++)
        bytes += rd->entries[i].len;
    if (bytes > (alone ? WRITE_ALONE_MAX_BYTES : WRITE_NOW_MAX_BYTES) ||
        !NIO(store_write_now_ok, alone))
        return false;
    nd->write_alone = alone;
    return true;
}

/* Whether another Ready may be taken now: not during a compaction step,
 * a loop-thread write to come, or while Readies are owed to the store
 * (the core also stops at NODE_READIES in flight). */
static bool ready_room(void)
{
    return !nd->store_busy && !nd->write_now && !nd->ready_owed;
}

/* Send the acknowledgements of the oldest Readies whose writes (and those
 * of every Ready before them) are durable, and advance the core past
 * them, in the order taken. */
static void retire_durable(void)
{
    while (nd->n_rds > 0 && (rd_at(0)->state == RD_DURABLE ||
                             rd_at(0)->state == RD_NO_WRITE)) {
        struct raft_ready *rd = &rd_at(0)->rd;
        nd->rd_first = (nd->rd_first + 1) % NODE_READIES;
        nd->n_rds--;
        send_all(rd->msgs_after_persist, rd->n_msgs_after_persist);
        raft_advance(nd->raft, rd);
    }
}

/* Runs Ready cycles: each Ready that needs the disk goes to the store
 * behind those already there (up to NODE_READIES in flight), so that the
 * next batch is written as soon as the previous one is durable. */
static void ready_cycle(void)
{
    for (int rounds = 0;
         rounds < 8 && ready_room() && raft_has_ready(nd->raft); rounds++) {
        pz_assert(nd->n_rds < NODE_READIES);
        struct node_rd *q = rd_at(nd->n_rds);
        struct raft_ready *rd = &q->rd;
        raft_ready(nd->raft, rd);
        ready_apply(rd);
        send_all(rd->msgs, rd->n_msgs);
        /* Term and vote must be durable before anything that depends on
         * them (Figure 3.1); the commit index need not be (it is learned
         * again from the leader after a restart), so a Ready that only
         * moves it costs no fsync: it rides along with a later write. */
        bool hs_needed = rd->hs_changed && term_or_vote_moved(rd);
        bool write = hs_needed || rd->n_entries || rd->snapshot;
        if (!write && nd->n_rds == 0) {
            send_all(rd->msgs_after_persist, rd->n_msgs_after_persist);
            raft_advance(nd->raft, rd);
            continue;
        }
        /* Behind Readies in flight, one with nothing to write still waits
         * for them: its acknowledgements may be of their entries. */
        nd->n_rds++;
        q->state = RD_NO_WRITE;
        if (!write)
            continue;
        q->hs = hs_goes(rd);
        if (nd->n_rds == 1 && write_now_fits(rd)) {
            /* After the turn's output (the AppendEntries just sent) is
             * flushed: the followers write while we do. */
            q->state = RD_WRITING;
            nd->write_now = true;
            return;
        }
        if (write_ready(q) < 0)
            core_fatal("cannot write the Raft log: %s", NIO(store_errmsg));
    }
    if (nd->n_rds == 0 && !nd->store_busy && !raft_has_ready(nd->raft))
        snaps_compact_step();
}

bool node_write_now(void)
{
    if (!nd->open || !nd->write_now)
        return false;
    nd->write_now = false;
    struct node_rd *q = rd_at(0);
    struct raft_ready *rd = &q->rd;
    int rv = NIO(store_write_now, nd->write_alone, q->hs ? &rd->hs : NULL,
                 rd->entries, rd->n_entries);
    if (rv == 1) {
        /* Events wait on the loop: the thread pool, as usual. */
        if (write_ready(q) < 0)
            core_fatal("cannot write the Raft log: %s", NIO(store_errmsg));
        return false;
    }
    if (nd->io.update_time)
        NIO(update_time);
    nd->n_writing++; /* as if handed to the store: on_written counts it */
    on_written(rv, rv < 0 ? NIO(store_errmsg) : NULL);
    return true;
}

/* The leader replicates while the store is busy (Readies being written, a
 * compaction step): heartbeats keep flowing through a slow fsync and
 * followers start on new entries at once (raft_take_msgs). */
static void send_early(void)
{
    if (nd->n_rds == 0 && !nd->store_busy)
        return; /* ready_cycle sends them with the next Ready */
    const struct raft_msg *msgs;
    size_t n = raft_take_msgs(nd->raft, &msgs);
    send_all(msgs, n);
}

/* The oldest write in flight (completions come in the order handed). */
static struct node_rd *oldest_writing(void)
{
    for (size_t i = 0; i < nd->n_rds; i++)
        if (rd_at(i)->state == RD_WRITING)
            return rd_at(i);
    return NULL;
}

/* Out of space: write the owed Readies again, in order, once the store
 * has reported on every write it had (those behind the refused one were
 * cancelled). */
static void retry_owed(void)
{
    if (nd->n_writing > 0)
        return; /* the next tick */
    nd->retry_due = false;
    for (size_t i = 0; i < nd->n_rds; i++)
        if (rd_at(i)->state == RD_OWED && write_ready(rd_at(i)) < 0)
            core_fatal("cannot write the Raft log: %s", NIO(store_errmsg));
}

static void on_written(int status, const char *errmsg)
{
    pz_assert(nd->n_writing > 0);
    nd->n_writing--;
    if (nd->closing) {
        /* Nothing more is sent or advanced: the core goes with the
         * close, once the store has no write left. */
        if (nd->n_writing == 0)
            core_finish_close();
        return;
    }
    struct node_rd *q = oldest_writing();
    pz_assert(q != NULL);
    if (status == PZ_ENOSPC || status == PZ_ECANCELED) {
        /* Nothing of the Ready is stored (the store rolled it back, or
         * did not run it behind one it rolled back): it stays owed, as
         * if the disk were very slow, and is written again later;
         * nothing it acknowledges is sent, the core is not advanced. */
        q->state = RD_OWED;
        if (status == PZ_ENOSPC)
            core_nospace(errmsg ? errmsg : pz_strerror(status));
        nd->ready_owed = true;
        if (!nd->retry_due) {
            nd->retry_due = true;
            nd->retry_at = NIO(now) + NOSPACE_RETRY_MS;
        }
        return;
    }
    if (status < 0) {
        /* A failed write or fsync may have dropped dirty pages the kernel
         * still shows us (PostgreSQL's fsync lesson): never retry it, never
         * read it back; a restart recovers from what is on disk. */
        core_fatal("writing the Raft log failed: %s; after a failed write "
                   "or fsync the page cache cannot be trusted: restart the "
                   "node to recover from what is on disk",
                   errmsg ? errmsg : pz_strerror(status));
    }
    q->state = RD_DURABLE;
    if (nd->ready_owed) {
        bool owed = false;
        for (size_t i = 0; i < nd->n_rds; i++)
            owed |= rd_at(i)->state == RD_OWED;
        nd->ready_owed = owed;
    }
    if (!nd->ready_owed)
        core_space_back();
    node_metrics_written();
    if (nd->cluster_id_unsaved) {
        nd->cluster_id_unsaved = false;
        members_save_cluster_id(NULL, nd->cluster_id);
    }
    promise_record();
    if (q->rd.snapshot)
        pz_failpoint("install-stored"); /* durable, not yet acknowledged */
    retire_durable();
}

/* A message from a peer; the reason if the core calls it invalid (the
 * transport then closes the link). */
static const char *on_recv(void *data, const struct raft_msg *m)
{
    PZ_UNUSED(data);
    if (!nd->open)
        return NULL; /* closing: the core is about to go */
    if (nospace_frozen())
        return NULL; /* out of space: as if paused (see frozen) */
    if (!snaps_install_ready(m)) {
        if (snaps_install_later(m))
            return NULL; /* its file loads: the core gets it then */
        /* its file did not arrive whole: the leader retries */
        pz_debug("raft: INSTALL_SNAPSHOT %llu/%llu from node %llu without "
                 "its file: ignored",
                 (unsigned long long)m->snap_index,
                 (unsigned long long)m->snap_term,
                 (unsigned long long)m->from);
        return NULL;
    }
    if (m->type == RAFT_MSG_APPEND && nd->rx_load) {
        /* A received snapshot loads: the leader sent it because this
         * node's log lacks entries the leader no longer holds, so the core
         * would refuse the APPEND (or the leader's probe), and the leader
         * send the whole file again at once, every heartbeat until the
         * load ends. Dropped, as if lost: the leader probes again at its
         * next heartbeat, and that one goes through once the table is
         * installed. Heartbeats still count. */
        return NULL;
    }
    const char *refused = snaps_install_refused(m);
    if (refused)
        return refused;
    node_metrics_recv(m);
    struct raft_status rs;
    bool had = false;
    if (m->type == RAFT_MSG_INSTALL_SNAPSHOT) {
        raft_status(nd->raft, &rs);
        had = rs.snap_index == m->snap_index && rs.snap_term == m->snap_term;
    }
    if (raft_step(nd->raft, m) == PZ_EINVAL)
        return raft_errmsg(nd->raft);
    if (m->type == RAFT_MSG_INSTALL_SNAPSHOT) {
        /* Taken: the next Ready installs it. Not taken (we had it all
         * already, maybe at this very point by a snapshot of our own):
         * its table need not wait. */
        raft_status(nd->raft, &rs);
        if (!had && rs.snap_index == m->snap_index &&
            rs.snap_term == m->snap_term)
            nd->got_taken = true;
        else
            snaps_got_drop();
    }
    return NULL;
}

const char *core_on_recv(const struct raft_msg *m)
{
    return on_recv(NULL, m);
}

/* What this node promises a leader (raft_config.lease_ns): it refuses
 * votes until election_ticks ticks of its own passed after it heard from
 * the leader. Its first tick may come at once, and each later one at
 * least tick_ms after the one before in the loop's clock (libuv starts a
 * repeating timer again from the loop time it ran at); that clock is
 * whole milliseconds and may be a coarse one, up to 2 ms behind the
 * time: election_ticks - 1 ticks take at least that many tick_ms, less
 * 2 ms. The promise is 90% of that: a node's clock may run up to 10%
 * slower than the others'. Set even with raft-read-lease off, since
 * other nodes may lean on this node's refusals. */
static uint64_t lease_ns(int64_t election_ms, uint64_t tick_ms)
{
    uint64_t ticks = (uint64_t)election_ms / tick_ms;
    uint64_t least_ms = (ticks - 1) * tick_ms - 2;
    return least_ms * 1000000u / 10 * 9;
}

static uint64_t node_clock_ns(void *arg)
{
    PZ_UNUSED(arg);
    return NIO(clock_ns);
}

/* A WAL checkpoint that fails loses nothing (the WAL keeps the pages) but
 * leaves the WAL growing with every write until one succeeds: say so, at
 * most once a minute, and after each warning, say when the latest
 * checkpoint succeeded again. */
static void checkpoint_cron(uint64_t now)
{
    struct store_stats st;
    NIO(store_stats, &st);
    if (st.checkpoint_failures != nd->ckpt_failures_seen &&
        (!nd->ckpt_warned_once || now >= nd->ckpt_warned_at + 60000)) {
        pz_warn("cannot checkpoint the Raft log's WAL into raft.db: %s "
                "(%llu failed so far); the WAL keeps every write, and grows "
                "until a checkpoint succeeds",
                st.checkpoint_error ? st.checkpoint_error : "unknown error",
                (unsigned long long)st.checkpoint_failures);
        nd->ckpt_warned = nd->ckpt_warned_once = true;
        nd->ckpt_warned_at = now;
    }
    nd->ckpt_failures_seen = st.checkpoint_failures;
    if (nd->ckpt_warned && !st.checkpoint_failing) {
        pz_info("the Raft log's WAL checkpoints into raft.db again (%llu "
                "failed in all)",
                (unsigned long long)st.checkpoint_failures);
        nd->ckpt_warned = false;
    }
}

/* Read leases: a leader may count on this node's refusing votes for
 * lease_ns after each heartbeat it answers (raft_config.lease_ns). The
 * store keeps the longest promise a run may still be bound by, so that a
 * restart with settings that promise less still keeps an older, longer
 * one (raft_restore_promise): it is recorded before this run promises
 * more, and lowered once the earlier one is over (promise_record). */

/* How long a promise binds this node by its own clock: a running node
 * refuses for the time its ticks take, and promises 90% of that (see
 * lease_ns), so that a clock up to 10% faster than the leader's still
 * refuses for as long as the leader counts; a restarted one keeps the
 * same margin. */
static uint64_t promise_binds_ns(uint64_t promise_ns)
{
    return promise_ns / 9 * 10;
}

/* More than any settings promise (election-timeout is at most 60 s). */
#define PROMISE_MAX_NS (60 * UINT64_C(1000000000))

/* Records promise_ns while nothing else is written (promise_record). A
 * full disk is no error: until there is room the core promises what is
 * recorded, less than its settings allow. Any other failure fails the
 * store: the node stops, as for a failed log write. */
static int record_promise(void)
{
    int rv = NIO(store_meta_set_promise, nd->promise_ns);
    if (rv == PZ_ENOSPC || rv == 0)
        return rv;
    core_fatal("cannot record this node's read-lease promise: %s",
               NIO(store_errmsg));
    return rv;
}

static int keep_promise(char *err, size_t errlen)
{
    struct store_meta m;
    NIO(store_meta_get, &m);
    if (m.promise_ns > PROMISE_MAX_NS) {
        snprintf(err, errlen,
                 "%s: the recorded read-lease promise (%llu ns) is more "
                 "than any settings make: the file is damaged",
                 NIO(store_path), (unsigned long long)m.promise_ns);
        return PZ_ECORRUPT;
    }
    /* Only a node with a term can have promised anything. */
    uint64_t owed = nd->saved_term > 0 ? m.promise_ns : 0;
    uint64_t binds = promise_binds_ns(owed);
    raft_restore_promise(nd->raft, binds);
    if (owed > nd->promise_ns) {
        pz_info("refusing votes for %llu ms: an earlier run, with other "
                "election-timeout or heartbeat-interval settings, may have "
                "promised a leader that long",
                (unsigned long long)(binds / 1000000));
        nd->promise_lower_at = NIO(clock_ns) + binds;
        return 0;
    }
    if (m.promise_ns == nd->promise_ns)
        return 0;
    int rv = NIO(store_meta_set_promise, nd->promise_ns);
    if (rv == PZ_ENOSPC && m.promise_ns < nd->promise_ns) {
        pz_warn("cannot record this node's read-lease promise: %s; "
                "promising leaders %s until it can",
                NIO(store_errmsg),
                m.promise_ns ? "what is recorded" : "nothing");
        raft_set_promise(nd->raft, m.promise_ns);
        nd->promise_raise = true;
        return 0;
    }
    if (rv == PZ_ENOSPC) { /* lower: owes nothing, record it later */
        nd->promise_lower_at = NIO(clock_ns);
        return 0;
    }
    if (rv < 0)
        snprintf(err, errlen,
                 "cannot record this node's read-lease promise: %s",
                 NIO(store_errmsg));
    return rv;
}

/* A promise still to record: after an earlier, longer one is over, or
 * once a full disk has room. Tried once a second and after each log
 * write, whenever the store has nothing else to do. */
static void promise_record(void)
{
    if ((!nd->promise_raise &&
         (nd->promise_lower_at == 0 || NIO(clock_ns) < nd->promise_lower_at)) ||
        NIO(store_busy) || record_promise() != 0)
        return;
    if (nd->promise_raise) {
        pz_info("recorded this node's read-lease promise (%llu ms): "
                "promising it to leaders from now on",
                (unsigned long long)(nd->promise_ns / 1000000));
        raft_set_promise(nd->raft, nd->promise_ns);
    } else {
        pz_info("the earlier run's read-lease promise is over: recorded "
                "this run's (%llu ms)",
                (unsigned long long)(nd->promise_ns / 1000000));
    }
    nd->promise_raise = false;
    nd->promise_lower_at = 0;
}

/* A node at RAFT_TERM_MAX never stands for election again (reached only
 * through 2^45 forged messages, see RAFT_TERM_BOUND): say so once a
 * minute, rather than sit silently without a leader. */
static void term_max_cron(uint64_t now)
{
    struct raft_status rs;
    raft_status(nd->raft, &rs);
    if (rs.term < RAFT_TERM_MAX ||
        (nd->term_max_warned && now < nd->term_max_warned_at + 60000))
        return;
    pz_error("term %llu is the highest (2^62 - 1): this node can never "
             "be elected again; restore the cluster from a backup (README, "
             "\"Backup and restore\")",
             (unsigned long long)rs.term);
    nd->term_max_warned = true;
    nd->term_max_warned_at = now;
}

void node_tick(void)
{
    if (!nd->open)
        return; /* closing: waits for the store */
    uint64_t now = NIO(now);
    if (nd->retry_due && now >= nd->retry_at)
        retry_owed();
    if (!nospace_frozen())
        raft_tick(nd->raft);
    snaps_poll();
    snaps_xfer_pump();
    snaps_rx_check();
    reqs_expire(&nd->proposals, PZ_ETIMEDOUT);
    reqs_expire(&nd->reads, PZ_ETIMEDOUT);
    reqs_expire(&nd->reads_apply, PZ_ETIMEDOUT);
    /* With a leader known, what waited here was a read it kept refusing
     * or dropping: that is a timeout, not a missing leader. */
    reqs_expire(&nd->wait_leader, nd->leader ? PZ_ETIMEDOUT : PZ_ENOLEADER);
    reqs_expire(&nd->transfers, PZ_ETIMEDOUT);
    reqs_expire(&nd->conf_wait, PZ_EBUSY);
    members_conf_wait_retry();
    node_lease_tick();
    /* Reads the leader refused (it has not committed in its term yet)
     * wait here with a leader known: retry them, once per tick. */
    core_leader_waits_wake();
    /* By the clock (not by ticks, which run late on a loaded machine):
     * mandi registration and polling every mandi-interval, membership
     * housekeeping once a second. */
    if (now >= nd->mandi_at) {
        nd->mandi_at = now + (uint64_t)nd->cfg->mandi_interval_ms;
        members_mandi_cron();
    }
    if (now >= nd->cron_at) {
        nd->cron_at = now + 1000;
        members_cron();
        nospace_cron();
        checkpoint_cron(now);
        term_max_cron(now);
        promise_record();
    }
}

void node_before_sleep(void)
{
    if (!nd->open)
        return;
    apply_turn();
    ready_cycle();
    /* A snapshot transfer refills its peer's queue every loop turn (a
     * write that drained it wakes the loop), not only once per tick: once
     * the socket's buffer was full, the rest waited for the next tick. */
    if (nd->xfers)
        snaps_xfer_pump();
    if (kv_paused(nd->kv)) {
        /* Part of an entry is applied: callbacks (reads among them) wait
         * for its end. */
        send_early();
        return;
    }
    /* Callbacks may start new requests; those wait for the next turn. */
    struct pz_queue batch;
    pz_queue_init(&batch);
    while (!pz_queue_empty(&nd->done)) {
        struct pz_queue *e = pz_queue_head(&nd->done);
        pz_queue_remove(e);
        pz_queue_push(&batch, e);
    }
    uint64_t until = NIO(clock_ns) + DONE_TURN_NS;
    bool first = true; /* one at least, however the clock moved */
    while (!pz_queue_empty(&batch)) {
        if (!first && NIO(clock_ns) > until) {
            /* The rest go first in the next turn (node_has_work keeps
             * the loop from sleeping), after its timers and messages. */
            while (!pz_queue_empty(&nd->done)) {
                struct pz_queue *e = pz_queue_head(&nd->done);
                pz_queue_remove(e);
                pz_queue_push(&batch, e);
            }
            while (!pz_queue_empty(&batch)) {
                struct pz_queue *e = pz_queue_head(&batch);
                pz_queue_remove(e);
                pz_queue_push(&nd->done, e);
            }
            break;
        }
        first = false;
        struct node_req *r =
            container_of(pz_queue_head(&batch), struct node_req, q);
        pz_queue_remove(&r->q);
        r->queued = false;
        if (r->read_waits && r->status == 0) {
            /* A read that waited for a leader: ask for a read index now. */
            if (read_start(r) == 0)
                continue;
            r->status = PZ_ENOLEADER;
        }
        r->cb(r, r->status);
    }
    send_early(); /* including what those callbacks proposed */
}

bool node_has_work(void)
{
    return nd->open &&
           (nd->ap.job || nd->ap.next < nd->ap.n ||
            (!pz_queue_empty(&nd->done) && !kv_paused(nd->kv)) ||
            nd->write_now || (ready_room() && raft_has_ready(nd->raft)) ||
            ((nd->n_rds > 0 || nd->store_busy) && raft_has_msgs(nd->raft)));
}

int node_propose(struct node_req *req, const uint8_t *cmd, size_t len,
                 node_req_cb cb)
{
    return node_propose_sink(req, cmd, len, NULL, cb);
}

/* A read-only transaction, once the read is confirmed: run on the local
 * table (kv_txn_read), then the caller's callback. */
static void ro_txn_done(struct node_req *req, int status)
{
    uint8_t *cmd = req->ro_cmd;
    req->ro_cmd = NULL;
    if (status == 0)
        status = kv_txn_read(nd->kv, cmd, req->ro_len,
                             (uint64_t)nd->cfg->txn_max_range_keys, &req->res,
                             req->sink);
    pz_free(cmd);
    req->ro_cb(req, status);
}

int node_propose_sink(struct node_req *req, const uint8_t *cmd, size_t len,
                      const struct kv_sink *sink, node_req_cb cb)
{
    /* A transaction that only reads does not go through the log (where
     * every node would walk its ranges as it applies): a ReadIndex read,
     * then the local table, on whichever node has it (as etcd). */
    /* Decoded once for the checks below (apply decodes it again). */
    struct kv_cmd c;
    bool decoded = kv_decode(cmd, len, &c) == 0;
    if (decoded && kv_cmd_txn_readonly(&c)) {
        req->ro_cmd = pz_malloc(len + 1);
        memcpy(req->ro_cmd, cmd, len);
        req->ro_len = len;
        req->ro_cb = cb;
        int rr = node_read(req, false, ro_txn_done);
        req->sink = sink; /* after node_read, which resets it */
        return rr;
    }
    reqs_prepare(req, cb);
    req->sink = sink;
    uint64_t grow;
    int rv = nospace_check(decoded ? &c : NULL, &grow);
    if (rv < 0)
        return rv;
    if (nd->role != RAFT_LEADER)
        return nd->leader ? PZ_ENOTLEADER : PZ_ENOLEADER;
    /* Ranges over txn-max-range-keys: refused here, as apply would past
     * KV_TXN_KEYS_MAX, without a proposal. */
    if (decoded && kv_cmd_txn_check(nd->kv, &c,
                                    (uint64_t)nd->cfg->txn_max_range_keys) !=
                       KV_OK) {
        memset(&req->res, 0, sizeof req->res);
        req->res.op = KV_OP_TXN;
        req->res.status = KV_ETXN_KEYS;
        req->res.revision = kv_revision(nd->kv);
        reqs_done(req, 0);
        return 0;
    }
    rv = req->unbounded
             ? raft_propose_unbounded(nd->raft, cmd, len, &req->index,
                                      &req->term)
             : raft_propose(nd->raft, cmd, len, &req->index, &req->term);
    node_metrics_proposed(rv);
    req->proposed_ns = stats_now_ns();
    if (rv < 0)
        return rv;
    nospace_proposed(req->index, grow);
    reqs_link_proposal(req);
    return 0;
}

int node_read(struct node_req *req, bool stale, node_req_cb cb)
{
    reqs_prepare(req, cb);
    if (stale) {
        reqs_done(req, 0);
        return 0;
    }
    if (read_start(req) < 0) {
        req->read_waits = true;
        reqs_link(&nd->wait_leader, req);
    }
    return 0;
}

void node_wait_leader(struct node_req *req, node_req_cb cb)
{
    reqs_prepare(req, cb);
    if (members_leader_told())
        reqs_done(req, 0);
    else
        reqs_link(&nd->wait_leader, req);
}

void node_cancel(struct node_req *req)
{
    if (req == nd->ap.req) {
        /* Its entry goes on being applied; its results go nowhere. */
        kv_job_set_sink(nd->ap.job, NULL);
        nd->ap.req = NULL;
    }
    if (req->queued) {
        pz_queue_remove(&req->q);
        req->queued = false;
        if (req->backup)
            snaps_backup_gone();
    }
    pz_free(req->ro_cmd);
    req->ro_cmd = NULL;
}

const char *node_db_path(void)
{
    return nd->open ? NIO(store_path) : "";
}

struct kv *node_kv(void)
{
    return nd->kv;
}

bool node_is_leader(void)
{
    return nd->role == RAFT_LEADER;
}

/* A raft.db that holds nothing beside snapshot files: it was removed or
 * replaced by a new one, and starting as a new node would drop the state
 * the files hold (and bootstrap again, for a founder). Only a node that
 * joined may have one there legitimately: a received snapshot is renamed
 * into place before its install is written, and the data directory of a
 * joining node records an incarnation before it dials anyone. */
static int stray_snapshots(const struct store_meta *meta, char *err,
                           size_t errlen)
{
    const char *dir = nd->cfg->raft_data;
    struct snapshot_info *list;
    size_t n;
    char serr[SNAPSHOT_ERRMSG_SIZE];
    if (meta->incarnation != 0)
        return 0;
    if (snapshot_list(dir, &list, &n, serr, sizeof serr) < 0) {
        snprintf(err, errlen, "%s", serr);
        return PZ_EIO;
    }
    if (n == 0)
        return 0;
    snprintf(err, errlen,
             "%s holds no Raft state, but %s holds %zu snapshot file%s "
             "(newest %s): raft.db was removed or replaced; refusing to "
             "start as a new node",
             NIO(store_path), dir, n, n == 1 ? "" : "s", list[0].path);
    snapshot_list_free(list, n);
    return PZ_ECORRUPT;
}

/* A data directory that holds state names its node and has its id (both
 * written at the first start, before anything else): one whose name was
 * emptied would otherwise take another node's log and vote, and answer
 * with that node's id. The owner's name, when the meta lost it, comes
 * from the stored configuration. */
static int check_owner(const struct store_meta *meta, char *err, size_t errlen)
{
    const char *self = nd->cfg->node_id;
    if (meta->node_id == nd->id && meta->node_name[0])
        return 0; /* the name was compared before loading */
    char owner[STORE_NAME_MAX] = "";
    if (meta->node_id != 0)
        members_conf_name(meta->node_id, owner, sizeof owner);
    if (meta->node_id != nd->id && owner[0] && strcmp(owner, self) != 0)
        snprintf(err, errlen,
                 "%s belongs to node '%s' (node id %llu), but node-id is "
                 "'%s': refusing to start",
                 NIO(store_path), owner, (unsigned long long)meta->node_id,
                 self);
    else
        snprintf(err, errlen,
                 "%s holds Raft state but its node identity is damaged "
                 "(node name '%s', node id %llu; node-id '%s' has id %llu): "
                 "refusing to start",
                 NIO(store_path), meta->node_name,
                 (unsigned long long)meta->node_id, self,
                 (unsigned long long)nd->id);
    return PZ_ECONFIG;
}

static int restore(char *err, size_t errlen)
{
    struct raft_hard_state hs;
    struct raft_entry *ents = NULL;
    size_t n = 0;
    struct store_meta meta;
    /* The state only: the log comes with the snapshot (snaps_restore). */
    int rv = NIO(store_load_from, UINT64_MAX, &hs, &ents, &n, &meta);
    if (rv < 0) {
        snprintf(err, errlen, "%s", NIO(store_errmsg));
        return rv;
    }
    if (meta.restoring) {
        /* Seeded half way (node_restore_backup): no node's state, and
         * not a new node's either. */
        snprintf(err, errlen,
                 "an interrupted --restore left %s: run --restore again (it "
                 "starts over) or empty the directory",
                 nd->cfg->raft_data);
        store_entries_free(ents, n);
        return PZ_ECONFIG;
    }
    if (meta.node_name[0] && strcmp(meta.node_name, nd->cfg->node_id) != 0) {
        snprintf(err, errlen,
                 "%s belongs to node '%s', but node-id is '%s': refusing to "
                 "start",
                 NIO(store_path), meta.node_name, nd->cfg->node_id);
        store_entries_free(ents, n);
        return PZ_ECONFIG;
    }
    /* Nothing stored: no log, no snapshot point, term 0 (the store
     * refuses a term of 0 beside a log or a vote), and no snapshot file. */
    struct store_stats ss;
    NIO(store_stats, &ss);
    if (ss.last_index == 0 && meta.snap_index == 0 && hs.term == 0) {
        store_entries_free(ents, n);
        rv = stray_snapshots(&meta, err, errlen);
        return rv < 0 ? rv : 1;
    }
    if (hs.term > RAFT_TERM_MAX) {
        /* Only a forged term taken by an older version gets here (a lone
         * node went past 2^62 - 1): no election could ever succeed
         * (RAFT_TERM_BOUND). A node at RAFT_TERM_MAX starts: its cluster
         * may have a leader at that term to follow (term_max_cron says
         * it will never be elected itself). */
        snprintf(err, errlen,
                 "%s holds term %llu, past the highest (2^62 - 1): "
                 "this node could never be elected again (a forged term "
                 "taken by an older version?); restore the cluster from a "
                 "backup (README, \"Backup and restore\")",
                 NIO(store_path), (unsigned long long)hs.term);
        store_entries_free(ents, n);
        return PZ_ECORRUPT;
    }
    nd->cluster_id = meta.cluster_id;
    nd->incarnation = meta.incarnation;
    nd->saved_term = hs.term;
    nd->saved_vote = hs.vote;
    nd->saved_commit = hs.commit;
    struct raft_snapshot_meta snap;
    bool have = false;
    rv = snaps_restore(&meta, &ents, &n, &snap, &have, err, errlen);
    if (rv < 0) {
        store_entries_free(ents, n);
        return rv;
    }
    rv = raft_restore_snapshot(nd->raft, &hs, have ? &snap : NULL, ents, n);
    if (have) {
        pz_info("loaded snapshot at index %llu (%zu keys)",
                (unsigned long long)snap.index, kv_count(nd->kv));
        if (rv == 0)
            members_snapshot_committed(&snap.conf);
        raft_conf_free(&snap.conf);
    }
    if (rv == 0 && check_owner(&meta, err, errlen) < 0) {
        store_entries_free(ents, n);
        return PZ_ECONFIG;
    }
    if (rv == 0 && nd->removed) {
        store_entries_free(ents, n);
        snprintf(err, errlen,
                 "%s belongs to a member removed from the cluster: to join "
                 "again, start this node with an empty data dir",
                 NIO(store_path));
        return PZ_ECONFIG;
    }
    store_entries_free(ents, n);
    if (rv < 0) {
        snprintf(err, errlen, "%s: stored Raft state is inconsistent (%s)",
                 NIO(store_path), pz_strerror(rv));
        return rv;
    }
    pz_info("recovered term %llu, %zu log entries, commit %llu",
            (unsigned long long)hs.term, n, (unsigned long long)hs.commit);
    return 0;
}

/* A node with no state: bootstrap (initial-cluster, raft-bootstrap), or
 * get ready to join through mandi. */
static int start_fresh(char *err, size_t errlen)
{
    const struct pz_config *cfg = nd->cfg;
    if (cfg->initial_cluster[0] || cfg->raft_bootstrap)
        return members_bootstrap(err, errlen);
    /* Neither: join a running cluster through mandi. The cluster id comes
     * with the first member that dials us. */
    if (strcmp(cfg->mandi_addr, "none") == 0) {
        snprintf(err, errlen,
                 "no Raft state in %s and nothing to start from: set "
                 "initial-cluster, raft-bootstrap yes, or a mandi-addr to "
                 "join through (it is none)",
                 cfg->raft_data);
        return PZ_ECONFIG;
    }
    /* A joining node's data dir gets its incarnation, once. */
    struct store_meta sm;
    NIO(store_meta_get, &sm);
    nd->incarnation = sm.incarnation;
    uint64_t rng = nd->io.seed ^ nd->id;
    while (nd->incarnation == 0)
        nd->incarnation = pz_rand_next(&rng);
    int rv = NIO(store_meta_set, 0, nd->id, cfg->node_id);
    if (rv == 0)
        rv = NIO(store_meta_set_incarnation, nd->incarnation);
    if (rv < 0) {
        snprintf(err, errlen, "%s", NIO(store_errmsg));
        return rv;
    }
    pz_info("no Raft state and no initial-cluster or raft-bootstrap: "
            "asking to join through mandi at %s",
            cfg->mandi_addr);
    return 0;
}

/* raft-bind-source: the IP of raft-addr, not a name or a wildcard. */
static int bind_source(char *source, size_t len, char *err, size_t errlen)
{
    const struct pz_config *cfg = nd->cfg;
    source[0] = '\0';
    if (!cfg->raft_bind_source)
        return 0;
    int sport;
    struct sockaddr_in6 sa;
    if (pz_split_hostport(cfg->raft_addr, source, len, &sport) < 0 ||
        (uv_ip4_addr(source, 0, (struct sockaddr_in *)&sa) != 0 &&
         uv_ip6_addr(source, 0, &sa) != 0) ||
        strcmp(source, "0.0.0.0") == 0 || strcmp(source, "::") == 0) {
        snprintf(err, errlen,
                 "raft-bind-source needs a raft-addr with an IP address "
                 "(not '%s')",
                 cfg->raft_addr);
        return PZ_ECONFIG;
    }
    return 0;
}

static int open_transport(char *err, size_t errlen)
{
    const struct pz_config *cfg = nd->cfg;
    char source[256];
    if (bind_source(source, sizeof source, err, errlen) < 0)
        return PZ_ECONFIG;
    struct transport_config tc = {
        .listen_addr = cfg->raft_addr,
        .id = nd->id,
        .incarnation = nd->incarnation,
        .source_addr = source,
        .name = cfg->node_id,
        .cluster_id = nd->cluster_id,
        .token = cfg->cluster_token,
        .name_to_id = members_name_to_id,
        .http_addr = cfg->http_addr,
        .grpc_addr = cfg->grpc_addr,
        .recv = on_recv,
        .on_peer_info = members_on_peer_info,
        .check_peer = members_check_peer,
        .member_since = members_member_since,
        .on_removed = members_on_removed,
        .on_inbound_closed = snaps_on_inbound_closed,
        .on_cluster_id = members_save_cluster_id,
        .on_peer = snaps_on_peer_link,
        .on_chunk = snaps_on_chunk,
        .data = nd,
        .seed = nd->io.seed,
        /* A member may send frames up to RAFT_FRAME_MAX, whatever our own
         * limits (config refuses a max-value-size that would not fit). */
        .max_frame = RAFT_FRAME_MAX,
        /* An APPEND's batch may pass its soft cap by one entry. */
        .stranger_frame = RAFT_MAX_BYTES_PER_MSG +
                          (size_t)(cfg->max_key_size + cfg->max_value_size) +
                          64 * 1024,
    };
    return NIO(tr_open, &tc, err, errlen);
}

/* Free what node_open made, as far as it got (store, mandi: whether
 * they were opened). */
static void free_state(void)
{
    raft_conf_free(&nd->committed);
    nospace_pending_clear();
    apply_free(); /* its entries are the core's */
    raft_free(nd->raft);
    node_lease_free();
    kv_free(nd->kv);
    watch_hub_close(&nd->watch_hub);
    for (size_t i = 0; i < nd->n_members; i++)
        members_free_one(&nd->members[i]);
    for (size_t i = 0; i < nd->n_departed; i++)
        members_free_one(&nd->departed[i]);
    for (size_t i = 0; i < nd->n_early; i++)
        members_free_one(&nd->early[i]);
    pz_free(nd->members);
    pz_free(nd->view);
    pz_free(nd);
    node_select(NULL);
}

int node_open(const struct node_io *io, const struct pz_config *cfg,
              node_stop_cb stop, char *err, size_t errlen)
{
    int rv;
    nd = pz_calloc(1, sizeof *nd);
    nd->io = *io;
    if (nd->io.seed == 0)
        nd->io.seed = pz_seed();
    uint64_t seed = nd->io.seed;
    nd->cfg = cfg;
    nd->stop = stop;
    node_metrics_init();
    nd->lease = node_lease_init(nd->io.now, nd->io.data, cfg, seed);
    nd->kv = kv_new_seeded(seed);
    struct watch_limits wl = {
        .max_events = (size_t)cfg->watch_history_events,
        .max_bytes = (size_t)cfg->watch_history_bytes,
        .max_watchers = (size_t)cfg->max_watchers,
        .max_lag = (size_t)cfg->watch_max_buffer,
    };
    watch_hub_init(&nd->watch_hub, &wl);
    core_kv_replaced();
    nd->id = members_name_to_id(cfg->node_id);
    pz_queue_init(&nd->proposals);
    pz_queue_init(&nd->reads);
    pz_queue_init(&nd->reads_apply);
    nd->ap.budget = nd->ap.left = NODE_APPLY_BUDGET;
    pz_queue_init(&nd->wait_leader);
    pz_queue_init(&nd->transfers);
    pz_queue_init(&nd->conf_wait);
    pz_queue_init(&nd->snap_waiters);
    pz_queue_init(&nd->done);

    /* Time is ticks: ten per heartbeat interval. */
    nd->tick_ms = (uint64_t)PZ_MAX(1, cfg->heartbeat_interval_ms / 10);
    struct raft_config rc = {
        .id = nd->id,
        .heartbeat_ticks =
            (int)(cfg->heartbeat_interval_ms / (int64_t)nd->tick_ms),
        .election_ticks =
            (int)(cfg->election_timeout_ms / (int64_t)nd->tick_ms),
        .seed = seed ^ nd->id,
        .pre_vote = true,
        .check_quorum = true,
        .lease_ns = nd->promise_ns =
            lease_ns(cfg->election_timeout_ms, nd->tick_ms),
        .lease_reads = cfg->raft_read_lease,
        .clock = node_clock_ns,
        .max_readies = NODE_READIES,
        .max_uncommitted = (uint64_t)cfg->raft_max_uncommitted,
    };
    char rerr[RAFT_ERRMSG_SIZE];
    nd->raft = raft_new(&rc, rerr);
    if (nd->raft == NULL) {
        snprintf(err, errlen, "%s", rerr);
        free_state();
        return PZ_ECONFIG;
    }
    rv = NIO(store_open, cfg->raft_data, err, errlen);
    if (rv < 0) {
        free_state();
        return PZ_ECONFIG;
    }
    uint64_t load_ns = stats_now_ns();
    rv = restore(err, errlen);
    if (rv < 0)
        goto err_after_store;
    node_metrics_restored(load_ns);
    /* What a crash left of interrupted snapshot writes and transfers. */
    size_t stale = 0;
    char serr[SNAPSHOT_ERRMSG_SIZE];
    if (snapshot_remove_temp(cfg->raft_data, &stale, serr, sizeof serr) < 0)
        pz_warn("cannot remove temporary snapshot files: %s", serr);
    else if (stale > 0)
        pz_info("removed %zu temporary snapshot file%s left by a crash",
                stale, stale == 1 ? "" : "s");
    if (rv == 1 && start_fresh(err, errlen) < 0) /* no state yet */
        goto err_after_store;
    if (keep_promise(err, errlen) < 0)
        goto err_after_store;
    if (NIO(mandi_open, cfg, &nd->mandi_on, err, errlen) < 0)
        goto err_after_store;
    if (open_transport(err, errlen) < 0)
        goto err_after_mandi;
    members_refresh();
    /* The first housekeeping at the first tick: it opens a link to every
     * member (no leader yet), and the leader, seeing us dial, dials back
     * at once; a restarted follower otherwise waited for its election
     * timeout's pre-vote, or for the leader's backoff, to hear from it. */
    nd->cron_at = NIO(now);
    nd->mandi_at = NIO(now) + PZ_MIN((uint64_t)cfg->mandi_interval_ms, 1000);
    NIO(tick_start, nd->tick_ms, node_tick);
    nd->open = true;
    /* A lone voter need not wait for an election timeout, once its
     * configuration is committed. Until then a leader that removed itself
     * may still lead, reading by a lease that counts on this node's
     * promises: the node's ticks start the election, after its first
     * election timeout and any earlier run's promise (raft_campaign
     * would ignore both). */
    uint64_t conf_index;
    const struct raft_conf *conf = raft_conf_current(nd->raft, &conf_index);
    struct raft_status st;
    raft_status(nd->raft, &st);
    if (conf->n == 1 && conf->servers[0].id == nd->id &&
        st.commit >= conf_index)
        raft_campaign(nd->raft);
    return 0;

err_after_mandi:
    NIO(mandi_close);
err_after_store:
    NIO(store_close);
    free_state();
    return PZ_ECONFIG;
}

int node_init(uv_loop_t *loop, const struct pz_config *cfg, node_stop_cb stop,
              char *err, size_t errlen)
{
    struct node_io io;
    node_io_uv(&io, loop);
    return node_open(&io, cfg, stop, err, errlen);
}

/* Close order: the tick timer, then the transport (messages may arrive
 * until it is closed), then what they would have touched. */
static void on_transport_closed(void)
{
    NIO(store_close);
    void (*cb)(void) = nd->close_cb;
    free_state();
    if (cb)
        cb();
}

static void on_tick_closed(void)
{
    palarm_clear();
    if (nd->mandi_on)
        NIO(mandi_close);
    nd->mandi_on = false;
    NIO(tr_close, on_transport_closed);
}

void core_finish_close(void)
{
    NIO(tick_close, on_tick_closed);
}

/* Complete every waiting request with status, now. */
static void finish_all_now(int status)
{
    reqs_finish_all(&nd->proposals, status);
    reqs_finish_all(&nd->reads, status);
    reqs_finish_all(&nd->reads_apply, status);
    reqs_finish_all(&nd->wait_leader, status);
    reqs_finish_all(&nd->transfers, status);
    reqs_finish_all(&nd->conf_wait, status);
    reqs_finish_all(&nd->snap_waiters, status);
    while (!pz_queue_empty(&nd->done)) {
        struct node_req *r =
            container_of(pz_queue_head(&nd->done), struct node_req, q);
        pz_queue_remove(&r->q);
        r->queued = false;
        r->cb(r, r->status);
    }
}

/* At a clean close: the commit index, if it moved since it was last
 * written (hs_goes), so that a restart applies at once what was applied
 * before. Returns whether a write went to the store (on_written comes). */
static bool save_commit(void)
{
    struct raft_status rs;
    raft_status(nd->raft, &rs);
    uint64_t commit = PZ_MIN(rs.commit, rs.persisted_index);
    if (commit <= nd->saved_commit || nd->ready_owed)
        return false;
    struct raft_hard_state hs = {nd->saved_term, nd->saved_vote, commit};
    if (NIO(store_write, &hs, NULL, 0, on_written) < 0)
        return false; /* the store failed earlier: nothing more to save */
    nd->saved_commit = commit;
    nd->n_writing++;
    return true;
}

void node_drain(void)
{
    if (nd->open && nd->raft != NULL)
        raft_commit_eager(nd->raft);
}

void node_close(void (*cb)(void))
{
    if (!nd->open) {
        if (cb)
            cb();
        return;
    }
    apply_drain(); /* callbacks below may read the table */
    nd->open = false;
    nd->close_cb = cb;
    finish_all_now(PZ_ESHUTDOWN);
    snaps_close();
    if (nd->write_now) {
        /* Not written yet, nothing that needs it sent: dropped, as by
         * a crash before the write. */
        nd->write_now = false;
    }
    /* The store cannot close under a write in flight: on_written (or
     * on_compacted) finishes the close, after the last one. */
    nd->closing = true;
    if (nd->n_writing > 0 || nd->store_busy ||
        (!nd->ready_owed && save_commit()))
        return;
    core_finish_close();
}

void node_crash(void)
{
    /* Requests vanish with the process: unlink them, call nothing. */
    struct pz_queue *lists[] = {&nd->proposals,  &nd->reads,
                                &nd->reads_apply, &nd->wait_leader,
                                &nd->transfers,  &nd->conf_wait,
                                &nd->snap_waiters, &nd->done};
    for (size_t i = 0; i < PZ_ARRAY_SIZE(lists); i++)
        while (!pz_queue_empty(lists[i])) {
            struct node_req *r =
                container_of(pz_queue_head(lists[i]), struct node_req, q);
            pz_queue_remove(&r->q);
            r->queued = false;
        }
    snaps_close();
    palarm_clear();
    free_state();
}
