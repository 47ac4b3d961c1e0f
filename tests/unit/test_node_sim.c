/* test_node_sim.c - the real node driver (src/node*.c: the Ready cycle,
 * the request API, snapshot taking, shipping and installing, membership)
 * under a deterministic simulation.
 *
 * Up to NS_MAX nodes run in one process, each opened with node_open on an
 * I/O table of this file (node_io.h): a virtual clock; an in-memory store
 * whose jobs complete after a random delay and, on a crash, are either
 * durable whole or lost whole, as SQLite's transactions are; an in-memory
 * network that encodes every message and chunk with raft_codec (as the
 * wire does) and loses, delays and reorders them; a fake mandi for joins.
 * Snapshot files are real files in a directory per node under /dev/shm
 * (written synchronously instead of by a forked child). Everything that
 * varies comes from one seeded PRNG: a seed replays exactly.
 *
 * One run: three or five founders (initial-cluster); a client proposes
 * writes through node_propose on whichever node takes them and reads
 * with node_read (linearizable) on any node; the network loses (0-10%),
 * delays (1-25 ms) and so reorders frames, and now and then cuts one node
 * off (often the leader) for up to 2.5 s; single nodes crash and restart,
 * and rarely all of them at once (a power loss), each losing the store
 * job it had in flight or keeping it whole; a new node joins through
 * mandi, is sent snapshots (raft-snapshot-entries 40, trailing entries
 * 5) and promoted; a founder (maybe the leader) is removed with
 * node_remove_member and stops; then the network heals and the cluster
 * settles. Checked: no two leaders in one term (after every step); a read
 * sees every write acknowledged before it started; at the end every
 * acknowledged write is on every member with the same value and
 * revision, revisions follow acknowledgement order (a write acked before
 * another was proposed has the lower one), no two nodes applied different
 * entries at one index (checked as they apply), digests and revisions agree,
 * the joiner votes, the removed node is out and stopped. Snapshot
 * installs are counted and must occur.
 *
 * A unit suite with a few seeds and scripted runs (a fault placed where a
 * random run rarely puts it); with -DNODE_SIM_MAIN the standalone
 * tests/unit/node-sim used by `make test-sim`: NODE_SIM_SEEDS seeds
 * (150), NODE_SIM_SEED=n replays one, NODE_SIM_VERBOSE=1 says what each
 * seed did and logs the nodes, 2 names the node and time on each line. */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "kv.h"
#include "log.h"
#include "node_internal.h"
#include "pz.h"
#include "raft_codec.h"

#ifndef NODE_SIM_MAIN
#include "test.h"
#endif

#define NS_MAX 6 /* up to five founders and a joiner */
#define NS_MAX_MSGS 20000
#define NS_MAX_WRITES 4096

static int ns_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static struct ns_node *leader(void);

/* --- the world ------------------------------------------------------------ */

/* A store job: durable whole or not at all. */
struct ns_job {
    int job; /* 1 write, 2 install, 3 compact */
    bool job_hs;
    struct raft_hard_state jhs;
    struct raft_entry *jents;
    size_t jn;
    uint64_t jindex, jterm, jupto, jrows;
    uint64_t job_at; /* due (never before the job ahead of it) */
    node_io_done_cb cb;
};

#define NS_JOBS 16

struct ns_store {
    struct raft_hard_state hs;
    struct raft_entry *log; /* snap_index + 1 ... */
    size_t n;
    struct store_meta meta; /* snap_index, snap_term: the compaction point */
    struct ns_job q[NS_JOBS]; /* jobs in flight, in order: each completes
                                 after those before it (pipelined) */
    size_t nq;
    struct store_stats stats;
};

struct ns_node {
    int i;
    char name[16];
    char dir[256];
    struct pz_config cfg;
    struct node *n;  /* NULL: down */
    bool started;    /* ever opened */
    bool gone;       /* removed: stopped for good */
    bool stop_asked; /* its stop callback came */
    struct ns_store st;
    struct transport_config tc; /* callbacks only */
    uint64_t next_tick, tick_ms;
    void (*tick_cb)(void);
    uint64_t restart_at; /* down: when it comes back (0: never) */
    struct node_snap_load *load; /* a received snapshot loading */
    uint64_t load_at;            /* when its load completes */
    uint64_t checked;    /* applied entries compared up to here */
};

struct ns_msg {
    uint64_t at, seq;
    int from, to;
    uint8_t *buf;
    size_t len;
};

struct ns_mandi_job {
    uint64_t at;
    int node;
    int kind; /* 0: 204, 1: joins */
    mandi_client_cb cb;
    void *arg;
};

/* A linearizable read of a key whose write was acknowledged before the
 * read started: once node_read calls back, the key must be there. */
struct ns_read {
    struct node_req req; /* first */
    unsigned key;
    int node;
    struct ns_read *next;
};

struct ns_write {
    struct node_req req; /* first */
    unsigned key;
    int node;
    uint64_t proposed_at;
    bool live;
};

static struct {
    uint64_t seed, rng, now, seq;
    struct ns_node nodes[NS_MAX];
    int count;
    struct ns_msg *msgs;
    size_t nmsgs;
    struct ns_mandi_job mjobs[64];
    size_t nmjobs;
    struct mandi_join joins[NS_MAX];
    size_t njoins;
    /* faults */
    unsigned loss_pct;
    bool calm;        /* no loss, no crashes: the end */
    int cut;          /* a node cut off from the others, -1: none */
    uint64_t cut_end; /* until then */
    /* the client */
    struct ns_write *writes[NS_MAX_WRITES];
    unsigned nwrites;
    bool acked[NS_MAX_WRITES];
    uint64_t ack_rev[NS_MAX_WRITES], ack_at[NS_MAX_WRITES];
    uint64_t prop_at[NS_MAX_WRITES];
    unsigned nacked;
    struct ns_read *reads; /* in flight */
    unsigned nreads;       /* completed and checked */
    /* leaders by term */
    uint64_t *leader_of;
    size_t nterms;
    /* the term of the entry applied at each index, as first seen */
    uint64_t *applied_term;
    size_t napplied;
    char failed[512];
    /* figures */
    unsigned installs, crashes, cuts, leaders, powerloss;
    unsigned nospace_pm; /* per mille of writes refused for lack of space */
    uint64_t total_installs;
    /* a scripted fault (0: none): 1, the next compaction step of node
     * script_node fails for lack of space, then 2, every later one of its
     * steps stands but its vacuum finds no room */
    int script_phase, script_node;
    unsigned script_vacuums; /* its steps that stood without room */
    unsigned script_writes;  /* its log writes once the step failed */
    /* node i + 1 cannot record its read-lease promise (0: none) */
    int promise_full;
    uint64_t promised[NS_MAX]; /* lease_ns of each node's last
                                  HEARTBEAT_RESP */
    unsigned promises[NS_MAX]; /* how many it sent */
} W;

static int ns_fail(const char *fmt, ...)
{
    if (W.failed[0])
        return -1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(W.failed, sizeof W.failed, fmt, ap);
    va_end(ap);
    return -1;
}

static uint64_t rnd(void)
{
    return pz_rand_next(&W.rng);
}

static uint64_t rnd_in(uint64_t lo, uint64_t hi)
{
    return lo + rnd() % (hi - lo + 1);
}

static bool verbose_log; /* name the node in each log line */

static void use(struct ns_node *s)
{
    node_select(s->n);
    if (verbose_log) { /* node_open logs too: set before it */
        char p[48];
        snprintf(p, sizeof p, "t=%" PRIu64 " %s", W.now, s->name);
        pz_log_setup(PZ_LOG_DEBUG, p);
    }
}

/* --- the store ------------------------------------------------------------ */

static struct raft_entry *copy_entries(const struct raft_entry *e, size_t n)
{
    struct raft_entry *c = pz_calloc(n ? n : 1, sizeof *c);
    for (size_t i = 0; i < n; i++) {
        c[i] = e[i];
        c[i].data = NULL;
        if (e[i].len) {
            c[i].data = pz_malloc(e[i].len);
            memcpy(c[i].data, e[i].data, e[i].len);
        }
    }
    return c;
}

static uint64_t st_first(const struct ns_store *st)
{
    return st->meta.snap_index + 1;
}

static void st_truncate_from(struct ns_store *st, uint64_t index)
{
    while (st->n > 0 && st->log[st->n - 1].index >= index) {
        pz_free(st->log[st->n - 1].data);
        st->n--;
    }
}

static void st_append(struct ns_store *st, const struct raft_entry *e, size_t n)
{
    if (n == 0)
        return;
    st_truncate_from(st, e[0].index);
    st->log = pz_realloc(st->log, (st->n + n) * sizeof *st->log);
    struct raft_entry *c = copy_entries(e, n);
    memcpy(st->log + st->n, c, n * sizeof *c);
    pz_free(c);
    st->n += n;
}

static void st_drop_upto(struct ns_store *st, uint64_t upto, uint64_t term)
{
    size_t k = 0;
    while (k < st->n && st->log[k].index <= upto)
        pz_free(st->log[k++].data);
    memmove(st->log, st->log + k, (st->n - k) * sizeof *st->log);
    st->n -= k;
    st->meta.snap_index = upto;
    st->meta.snap_term = term;
}

/* The oldest job in flight becomes durable. */
static void st_apply_job(struct ns_store *st)
{
    struct ns_job *j = &st->q[0];
    if (j->job == 1 || j->job == 2) {
        if (j->job == 2) {
            st_truncate_from(st, 0);
            st->meta.snap_index = j->jindex;
            st->meta.snap_term = j->jterm;
        }
        st_append(st, j->jents, j->jn);
        if (j->job_hs)
            st->hs = j->jhs;
        st->stats.batches++;
        st->stats.entries += j->jn;
    } else if (j->job == 3) {
        uint64_t upto = j->jupto;
        if (upto > st->meta.snap_index + j->jrows)
            upto = st->meta.snap_index + j->jrows;
        uint64_t term = 0;
        for (size_t k = 0; k < st->n; k++)
            if (st->log[k].index == upto)
                term = st->log[k].term;
        if (term)
            st_drop_upto(st, upto, term);
    }
}

/* The oldest job leaves the queue. */
static void st_job_free(struct ns_store *st)
{
    struct ns_job *j = &st->q[0];
    for (size_t i = 0; i < j->jn; i++)
        pz_free(j->jents[i].data);
    pz_free(j->jents);
    memmove(st->q, st->q + 1, --st->nq * sizeof *st->q);
}

static int io_store_open(void *data, const char *dir, char *err, size_t errlen)
{
    PZ_UNUSED(data);
    PZ_UNUSED(dir);
    PZ_UNUSED(err);
    PZ_UNUSED(errlen);
    return 0;
}

static void io_store_close(void *data)
{
    PZ_UNUSED(data);
}

static int io_store_load_from(void *data, uint64_t from,
                              struct raft_hard_state *hs,
                              struct raft_entry **entries, size_t *n,
                              struct store_meta *meta)
{
    struct ns_store *st = &((struct ns_node *)data)->st;
    *hs = st->hs;
    if (meta)
        *meta = st->meta;
    size_t k = 0;
    while (k < st->n && st->log[k].index < from)
        k++;
    *n = st->n - k;
    /* As store.c: no entries, no array (the driver loads twice at start
     * and frees only the second). */
    *entries = *n ? copy_entries(st->log + k, *n) : NULL;
    return 0;
}

static int io_store_term(void *data, uint64_t index, uint64_t *term)
{
    struct ns_store *st = &((struct ns_node *)data)->st;
    *term = 0;
    if (index == st->meta.snap_index && index) {
        *term = st->meta.snap_term;
        return 0;
    }
    for (size_t k = 0; k < st->n; k++)
        if (st->log[k].index == index) {
            *term = st->log[k].term;
            return 0;
        }
    return PZ_ENOTFOUND;
}

/* As store.c: the stored entries index, index - 1, ... within both
 * bounds. */
static int io_store_trailing_from(void *data, uint64_t index,
                                  uint64_t max_entries, uint64_t max_bytes,
                                  uint64_t *from)
{
    struct ns_store *st = &((struct ns_node *)data)->st;
    uint64_t n = 0, bytes = 0;
    for (size_t k = st->n; k-- > 0 && n < max_entries;) {
        const struct raft_entry *e = &st->log[k];
        if (e->index > index)
            continue;
        if (e->index != index - n || e->len > max_bytes - bytes)
            break;
        bytes += e->len;
        n++;
    }
    *from = index - PZ_MIN(n, index);
    return 0;
}

static void io_store_meta_get(void *data, struct store_meta *meta)
{
    *meta = ((struct ns_node *)data)->st.meta;
}

static int io_store_meta_set(void *data, uint64_t cluster_id, uint64_t node_id,
                             const char *node_name)
{
    struct store_meta *m = &((struct ns_node *)data)->st.meta;
    if ((cluster_id && m->cluster_id && m->cluster_id != cluster_id) ||
        (node_id && m->node_id && m->node_id != node_id))
        return PZ_EINVAL;
    if (cluster_id)
        m->cluster_id = cluster_id;
    if (node_id)
        m->node_id = node_id;
    if (node_name && node_name[0])
        snprintf(m->node_name, sizeof m->node_name, "%s", node_name);
    return 0;
}

static int io_store_meta_set_incarnation(void *data, uint64_t inc)
{
    struct store_meta *m = &((struct ns_node *)data)->st.meta;
    if (m->incarnation && m->incarnation != inc)
        return PZ_EINVAL;
    m->incarnation = inc;
    return 0;
}

static int io_store_meta_set_promise(void *data, uint64_t promise_ns)
{
    struct ns_node *s = data;
    if (W.promise_full == s->i + 1)
        return PZ_ENOSPC;
    s->st.meta.promise_ns = promise_ns;
    return 0;
}

static size_t jobs_deepest; /* store jobs in flight at once, at most */
static size_t seed_deepest; /* ... in the seed running */
static uint64_t seeds_full; /* seeds that had NODE_READIES jobs at once */

static int st_submit(struct ns_node *s, int job,
                     const struct raft_hard_state *hs,
                     const struct raft_entry *e, size_t n, node_io_done_cb cb)
{
    struct ns_store *st = &s->st;
    if (st->nq == NS_JOBS)
        return ns_fail("%s: %d store jobs in flight", s->name, NS_JOBS);
    if (st->nq && (job == 3 || st->q[st->nq - 1].job == 3))
        return ns_fail("%s: a compaction step beside other jobs", s->name);
    if (n && job == 1 && st->nq == 0 &&
        (e[0].index < st_first(st) || e[0].index > st_first(st) + st->n))
        return ns_fail("%s: write at %" PRIu64 " outside the log [%" PRIu64
                       ", %" PRIu64 "]",
                       s->name, e[0].index, st_first(st), st_first(st) + st->n);
    if (W.script_phase == 2 && s->i == W.script_node && job != 3)
        W.script_writes++;
    struct ns_job *j = &st->q[st->nq];
    memset(j, 0, sizeof *j);
    j->job = job;
    j->job_hs = hs != NULL;
    if (hs)
        j->jhs = *hs;
    j->jents = copy_entries(e, n);
    j->jn = n;
    j->cb = cb;
    /* The disk is twenty times slower one second in four (a deep pipeline:
     * Readies pile up behind a slow COMMIT). */
    j->job_at = W.now + rnd_in(0, 15) * ((W.now / 1000) % 4 == 3 ? 20 : 1);
    if (st->nq && j->job_at < st->q[st->nq - 1].job_at)
        j->job_at = st->q[st->nq - 1].job_at;
    st->nq++;
    if (st->nq > jobs_deepest)
        jobs_deepest = st->nq;
    if (st->nq > seed_deepest)
        seed_deepest = st->nq;
    return 0;
}

static int io_store_write(void *data, const struct raft_hard_state *hs,
                          const struct raft_entry *e, size_t n,
                          node_io_done_cb cb)
{
    return st_submit(data, 1, hs, e, n, cb);
}

static uint64_t writes_now; /* store_write_now calls, all seeds */
static uint64_t writes_alone;     /* of them, of a batch of several entries
                                     by a follower whose clients are quiet */
static uint64_t writes_now_nospace; /* store_write_now refused for lack of
                                       space */
static uint64_t writes_pipelined; /* jobs done with others queued behind */
static uint64_t paused_turns;     /* loop turns ended with part of an entry
                                     applied (chunked applies) */
static uint64_t writes_nospace;   /* writes refused for lack of space */
static uint64_t vacuums_nospace;  /* compaction steps whose vacuum found no
                                     room (the step succeeds) */

/* Half the time the disk is fast and the load low (or the loop alone)... */
static bool io_store_write_now_ok(void *data, bool alone)
{
    PZ_UNUSED(alone);
    struct ns_node *s = data;
    return s->st.nq == 0 && rnd_in(0, 1) == 1;
}

/* ... and half of those the loop is idle: a small write runs on the
 * spot, else it goes to the store as usual. Alone, it always runs. */
static int io_store_write_now(void *data, bool alone,
                              const struct raft_hard_state *hs,
                              const struct raft_entry *e, size_t n)
{
    struct ns_node *s = data;
    if (!alone && rnd_in(0, 1) == 0)
        return 1;
    if (W.nospace_pm && !W.calm && rnd_in(0, 999) < W.nospace_pm) {
        writes_nospace++; /* nothing stored: store_write takes it again */
        writes_now_nospace++;
        return PZ_ENOSPC;
    }
    int rv = st_submit(s, 1, hs, e, n, NULL);
    if (rv)
        return rv;
    st_apply_job(&s->st);
    st_job_free(&s->st);
    writes_now++;
    if (alone && n > 1)
        writes_alone++;
    return 0;
}

/* A node's clients are quiet one time in four (more, and the followers
 * write on the loop so often that Readies seldom pile up behind a slow
 * COMMIT). */
static bool io_clients_quiet(void *data)
{
    PZ_UNUSED(data);
    return rnd_in(0, 3) == 0;
}

static int io_store_write_install(void *data, uint64_t index, uint64_t term,
                                  const struct raft_hard_state *hs,
                                  const struct raft_entry *e, size_t n,
                                  node_io_done_cb cb)
{
    struct ns_node *s = data;
    int rv = st_submit(s, 2, hs, e, n, cb);
    if (rv == 0) {
        s->st.q[s->st.nq - 1].jindex = index;
        s->st.q[s->st.nq - 1].jterm = term;
    }
    W.installs++;
    return rv;
}

static int io_store_compact_step(void *data, uint64_t upto, uint64_t max_rows,
                                 uint64_t max_bytes, node_io_done_cb cb)
{
    struct ns_node *s = data;
    PZ_UNUSED(max_bytes); /* the fake's rows carry no sizes */
    if (upto <= s->st.meta.snap_index || s->st.n == 0)
        return 1;
    int rv = st_submit(s, 3, NULL, NULL, 0, cb);
    if (rv == 0) {
        s->st.q[s->st.nq - 1].jupto = upto;
        s->st.q[s->st.nq - 1].jrows = max_rows;
    }
    return rv;
}

static bool io_store_busy(void *data)
{
    return ((struct ns_node *)data)->st.nq != 0;
}

static void io_store_stats(void *data, struct store_stats *st)
{
    const struct ns_store *s = &((struct ns_node *)data)->st;
    *st = s->stats;
    st->first_index = st_first(s);
    st->last_index = s->meta.snap_index;
    if (s->n > 0)
        st->last_index = PZ_MAX(st->last_index, s->log[s->n - 1].index);
}

static const char *io_store_errmsg(void *data)
{
    PZ_UNUSED(data);
    return "simulated store";
}

static const char *io_store_path(void *data)
{
    return ((struct ns_node *)data)->dir;
}

/* --- the network ---------------------------------------------------------- */

static struct ns_node *by_id(uint64_t id)
{
    for (int i = 0; i < W.count; i++)
        if (W.nodes[i].started && members_name_to_id(W.nodes[i].name) == id)
            return &W.nodes[i];
    return NULL;
}

static void queue_frame(struct ns_node *from, struct ns_node *to,
                        struct pz_buf *b)
{
    if (to == NULL || W.nmsgs >= NS_MAX_MSGS ||
        (!W.calm && rnd() % 100 < W.loss_pct) || from->i == W.cut ||
        to->i == W.cut) {
        pz_buf_free(b);
        return;
    }
    struct ns_msg *m = &W.msgs[W.nmsgs++];
    m->at = W.now + rnd_in(1, W.calm ? 3 : 25);
    m->seq = W.seq++;
    m->from = from->i;
    m->to = to->i;
    m->len = b->len;
    m->buf = pz_malloc(b->len ? b->len : 1);
    if (b->len)
        memcpy(m->buf, b->data, b->len);
    pz_buf_free(b);
}

static int io_tr_open(void *data, const struct transport_config *tc, char *err,
                      size_t errlen)
{
    PZ_UNUSED(err);
    PZ_UNUSED(errlen);
    struct ns_node *s = data;
    s->tc = *tc;
    return 0;
}

static void io_tr_close(void *data, void (*done)(void))
{
    PZ_UNUSED(data);
    done();
}

/* The persistence contract, checked as each message leaves: an accepted
 * APPEND_RESP claims the entries up to its index durable here (the store
 * holds them, or a snapshot past them), a granted vote claims the vote
 * durable. Completions reach the node after the store made the job
 * durable, so a message sent before its write is caught here, whatever
 * the crashes later do. */
static void check_durable(const struct ns_node *s, const struct raft_msg *m)
{
    const struct ns_store *st = &s->st;
    uint64_t last = st->meta.snap_index + st->n;
    if (m->type == RAFT_MSG_APPEND_RESP && !m->reject && m->index > last)
        ns_fail("%s acknowledges index %" PRIu64 " with %" PRIu64
                " durable",
                s->name, m->index, last);
    /* A grant is durable when the store holds that vote in that term, or
     * a later term: the node then never votes again in the grant's term
     * (a grant whose Ready waited behind a full disk while a higher term
     * reset the vote goes out once that later term is stored). */
    if (m->type == RAFT_MSG_VOTE_RESP && !m->reject &&
        st->hs.term <= m->term &&
        (st->hs.term != m->term || st->hs.vote != m->to))
        ns_fail("%s grants a vote in term %" PRIu64 " to %" PRIu64
                " with term %" PRIu64 " vote %" PRIu64 " durable",
                s->name, m->term, m->to, st->hs.term, st->hs.vote);
}

static void io_send(void *data, const struct raft_msg *m)
{
    check_durable(data, m);
    if (m->type == RAFT_MSG_HEARTBEAT_RESP) {
        const struct ns_node *s = data;
        W.promised[s->i] = m->lease_ns;
        W.promises[s->i]++;
    }
    struct pz_buf b;
    pz_buf_init(&b);
    if (raft_codec_encode_msg(&b, m, RAFT_FRAME_MAX) < 0) {
        pz_buf_free(&b);
        return;
    }
    queue_frame(data, by_id(m->to), &b);
}

static int io_send_chunk(void *data, uint64_t to,
                         const struct raft_snap_chunk *c)
{
    struct pz_buf b;
    pz_buf_init(&b);
    if (raft_codec_encode_chunk(&b, c, RAFT_FRAME_MAX) < 0) {
        pz_buf_free(&b);
        return PZ_ETOOBIG;
    }
    queue_frame(data, by_id(to), &b);
    return 0;
}

static int io_peer_stats(void *data, uint64_t id,
                         struct transport_peer_stats *ps)
{
    struct ns_node *s = data, *p = by_id(id);
    memset(ps, 0, sizeof *ps);
    if (p == NULL)
        return PZ_ENOTFOUND;
    ps->id = id;
    ps->connected = p->n != NULL;
    for (size_t i = 0; i < W.nmsgs; i++)
        if (W.msgs[i].from == s->i && W.msgs[i].to == p->i) {
            ps->queued_msgs++;
            ps->queued_bytes += W.msgs[i].len;
        }
    return 0;
}

static void io_tr_stats(void *data, struct transport_stats *st)
{
    PZ_UNUSED(data);
    memset(st, 0, sizeof *st);
}

static void io_set_peer(void *data, uint64_t id, const char *addr)
{
    PZ_UNUSED(data);
    PZ_UNUSED(id);
    PZ_UNUSED(addr);
}

static void io_remove_peer(void *data, uint64_t id)
{
    PZ_UNUSED(data);
    PZ_UNUSED(id);
}

static void io_probe(void *data, uint64_t id)
{
    /* An empty frame: the handshake alone (a removed node learns so). */
    struct pz_buf b;
    pz_buf_init(&b);
    queue_frame(data, by_id(id), &b);
}

/* What the handshake does on the first frame of a link, every frame here:
 * the joining node learns the cluster id, the acceptor's check_peer
 * refuses a removed member and tells it. true: deliver. */
static bool handshake(struct ns_node *from, struct ns_node *to)
{
    use(from);
    uint64_t since = from->tc.member_since ? from->tc.member_since(nd) : 0;
    uint64_t from_cluster = nd->cluster_id, inc = nd->incarnation;
    use(to);
    if (nd->cluster_id == 0 && from_cluster && to->tc.on_cluster_id)
        to->tc.on_cluster_id(nd, from_cluster);
    uint64_t ci = 0, ct = 0;
    int kind = to->tc.check_peer
                   ? to->tc.check_peer(nd, members_name_to_id(from->name), inc,
                                       since, &ci, &ct)
                   : TRANSPORT_PEER_MEMBER;
    if (kind == TRANSPORT_PEER_REMOVED) {
        use(from);
        if (from->tc.on_removed)
            from->tc.on_removed(nd, members_name_to_id(to->name), ci, ct);
        return false;
    }
    return kind != TRANSPORT_PEER_OTHER_INCARNATION;
}

static void deliver(struct ns_msg *m)
{
    struct ns_node *from = &W.nodes[m->from], *to = &W.nodes[m->to];
    if (to->n == NULL || from->n == NULL || !handshake(from, to) || m->len == 0)
        return;
    struct raft_decoded d;
    if (raft_codec_decode(m->buf + 4, m->len - 4, &d) < 0) {
        ns_fail("undecodable frame from %s", from->name);
        return;
    }
    use(to);
    if (d.kind == RAFT_FRAME_MESSAGE) {
        d.msg.from = members_name_to_id(from->name);
        to->tc.recv(nd, &d.msg);
    } else if (d.kind == RAFT_FRAME_CHUNK) {
        to->tc.on_chunk(nd, members_name_to_id(from->name), &d.chunk);
    }
    raft_decoded_free(&d);
}

/* --- snapshot writer, timer, clock, mandi --------------------------------- */

static int io_snap_write(void *data, const char *dir, const struct kv *kv,
                         const struct snapshot_point *at,
                         struct snapshot_child *c, char *err, size_t errlen)
{
    struct ns_node *s = data;
    /* A snapshot of part of an entry would be loaded as the state at
     * the entry before it (node.c, "applying in steps"). */
    if (kv_paused(kv))
        ns_fail("%s: snapshot at %" PRIu64 " taken with part of entry %" PRIu64
                " applied",
                s->name, at->index, at->index + 1);
    memset(c, 0, sizeof *c);
    int rv = snapshot_write(dir, kv, at, c->path, sizeof c->path, err, errlen);
    if (rv < 0)
        return rv;
    c->pid = 1; /* "running" until the next poll */
    c->index = at->index;
    c->term = at->term;
    c->started_ms = W.now;
    return 0;
}

static void io_snap_poll(void *data, struct snapshot_child *c, bool *done,
                         bool *ok)
{
    PZ_UNUSED(data);
    *done = true;
    *ok = c->pid != 0;
    c->pid = 0;
}

static void io_snap_kill(void *data, struct snapshot_child *c)
{
    PZ_UNUSED(data);
    c->pid = 0;
}

static uint64_t loads_held; /* loads whose INSTALL_SNAPSHOT came first */

/* A received snapshot loads "on another thread": done comes some steps
 * later, meanwhile the node goes on (messages, ticks, writes). */
static int io_snap_load(void *data, struct node_snap_load *job)
{
    struct ns_node *s = data;
    if (s->load)
        ns_fail("%s: a second snapshot load while one runs", s->name);
    s->load = job;
    s->load_at = W.now + rnd_in(0, 40);
    return 0;
}

static void io_snap_load_cancel(void *data, struct node_snap_load *job)
{
    struct ns_node *s = data;
    if (s->load != job)
        ns_fail("%s: cancelling a load that is not running", s->name);
    s->load = NULL;
    snapshot_receiver_abort(job->rx);
    kv_free(job->kv);
    pz_free(job);
}

static void load_complete(struct ns_node *s)
{
    struct node_snap_load *job = s->load;
    s->load = NULL;
    use(s);
    loads_held += nd->rx_install.len > 0;
    job->rc = snapshot_receiver_finish(job->rx, job->kv, NULL, 0, &job->meta,
                                       job->err, sizeof job->err);
    job->rx = NULL;
    job->done(job);
}

static uint64_t io_now(void *data)
{
    PZ_UNUSED(data);
    return W.now;
}

static uint64_t io_clock_ns(void *data)
{
    PZ_UNUSED(data);
    return W.now * 1000000u;
}

static void io_tick_start(void *data, uint64_t period, void (*cb)(void))
{
    struct ns_node *s = data;
    s->tick_ms = period;
    s->next_tick = W.now + period;
    s->tick_cb = cb;
}

static void io_tick_close(void *data, void (*done)(void))
{
    ((struct ns_node *)data)->tick_cb = NULL;
    done();
}

static int io_mandi_open(void *data, const struct pz_config *cfg, bool *on,
                         char *err, size_t errlen)
{
    PZ_UNUSED(data);
    PZ_UNUSED(err);
    PZ_UNUSED(errlen);
    *on = strcmp(cfg->mandi_addr, "none") != 0;
    return 0;
}

static void io_mandi_close(void *data)
{
    PZ_UNUSED(data);
}

static uint64_t mandi_job(void *data, int kind, mandi_client_cb cb, void *arg)
{
    if (W.nmjobs == PZ_ARRAY_SIZE(W.mjobs))
        return 0;
    W.mjobs[W.nmjobs++] = (struct ns_mandi_job){
        .at = W.now + rnd_in(1, 20),
        .node = ((struct ns_node *)data)->i,
        .kind = kind,
        .cb = cb,
        .arg = arg,
    };
    return W.seq++ + 1;
}

static uint64_t io_mandi_put_leader(void *data, const struct mandi_leader *li,
                                    mandi_client_cb cb, void *arg)
{
    PZ_UNUSED(li);
    return mandi_job(data, 0, cb, arg);
}

static uint64_t io_mandi_post_join(void *data, const struct mandi_join *j,
                                   mandi_client_cb cb, void *arg)
{
    size_t k = 0;
    while (k < W.njoins && strcmp(W.joins[k].id, j->id) != 0)
        k++;
    if (k == W.njoins && W.njoins < NS_MAX)
        W.njoins++;
    if (k < NS_MAX)
        W.joins[k] = *j;
    return mandi_job(data, 0, cb, arg);
}

static uint64_t io_mandi_get_joins(void *data, mandi_client_cb cb, void *arg)
{
    return mandi_job(data, 1, cb, arg);
}

static uint64_t io_mandi_delete_join(void *data, const char *id,
                                     mandi_client_cb cb, void *arg)
{
    for (size_t k = 0; k < W.njoins; k++)
        if (strcmp(W.joins[k].id, id) == 0)
            W.joins[k] = W.joins[--W.njoins];
    return mandi_job(data, 0, cb, arg);
}

static void mandi_complete(struct ns_mandi_job *j)
{
    struct ns_node *s = &W.nodes[j->node];
    if (s->n == NULL)
        return; /* the client went with its process */
    struct mandi_result res = {
        .err = 0, .http_status = j->kind == 1 ? 200 : 204, .message = ""};
    if (j->kind == 1) {
        res.joins = W.joins;
        res.n_joins = W.njoins;
    }
    use(s);
    j->cb(&res, j->arg);
}

static struct httpc *io_http_get(void *data, const char *addr, const char *path,
                                 const char *log_name, httpc_cb cb, void *arg)
{
    PZ_UNUSED(data);
    PZ_UNUSED(addr);
    PZ_UNUSED(path);
    PZ_UNUSED(log_name);
    PZ_UNUSED(cb);
    PZ_UNUSED(arg);
    return NULL; /* no HTTP between simulated nodes */
}

static void io_http_free(void *data, struct httpc *c)
{
    PZ_UNUSED(data);
    PZ_UNUSED(c);
}

static const struct node_io ns_io = {
    .now = io_now,
    .clock_ns = io_clock_ns,
    .tick_start = io_tick_start,
    .tick_close = io_tick_close,
    .store_open = io_store_open,
    .store_close = io_store_close,
    .store_load_from = io_store_load_from,
    .store_term = io_store_term,
    .store_trailing_from = io_store_trailing_from,
    .store_meta_get = io_store_meta_get,
    .store_meta_set = io_store_meta_set,
    .store_meta_set_incarnation = io_store_meta_set_incarnation,
    .store_meta_set_promise = io_store_meta_set_promise,
    .store_write = io_store_write,
    .store_write_now_ok = io_store_write_now_ok,
    .store_write_now = io_store_write_now,
    .clients_quiet = io_clients_quiet,
    .store_write_install = io_store_write_install,
    .store_compact_step = io_store_compact_step,
    .store_busy = io_store_busy,
    .store_stats = io_store_stats,
    .store_errmsg = io_store_errmsg,
    .store_path = io_store_path,
    .tr_open = io_tr_open,
    .tr_close = io_tr_close,
    .send = io_send,
    .send_chunk = io_send_chunk,
    .peer_stats = io_peer_stats,
    .tr_stats = io_tr_stats,
    .set_peer = io_set_peer,
    .remove_peer = io_remove_peer,
    .probe = io_probe,
    .snap_write = io_snap_write,
    .snap_poll = io_snap_poll,
    .snap_kill = io_snap_kill,
    .snap_load = io_snap_load,
    .snap_load_cancel = io_snap_load_cancel,
    .mandi_open = io_mandi_open,
    .mandi_close = io_mandi_close,
    .mandi_put_leader = io_mandi_put_leader,
    .mandi_post_join = io_mandi_post_join,
    .mandi_get_joins = io_mandi_get_joins,
    .mandi_delete_join = io_mandi_delete_join,
    .http_get = io_http_get,
    .http_free = io_http_free,
};

/* --- nodes: start, crash ---------------------------------------------------
 */

static void on_stop(const char *why)
{
    PZ_UNUSED(why);
    for (int i = 0; i < W.count; i++)
        if (W.nodes[i].n != NULL && W.nodes[i].n == node_current())
            W.nodes[i].stop_asked = true;
}

static void cfg_put(struct pz_config *c, const char *k, const char *v)
{
    char err[256];
    if (cfg_set(c, k, v, "sim", 0, err, sizeof err) < 0)
        ns_fail("config %s %s: %s", k, v, err);
}

static void node_setup(int i, int founders, bool founder, const char *root)
{
    struct ns_node *s = &W.nodes[i];
    memset(s, 0, sizeof *s);
    s->i = i;
    snprintf(s->name, sizeof s->name, "n%d", i + 1);
    snprintf(s->dir, sizeof s->dir, "%s/n%d", root, i + 1);
    mkdir(s->dir, 0700);
    cfg_init(&s->cfg);
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", 7001 + i);
    cfg_put(&s->cfg, "node-id", s->name);
    cfg_put(&s->cfg, "raft-addr", addr);
    cfg_put(&s->cfg, "raft-data", s->dir);
    cfg_put(&s->cfg, "heartbeat-interval", "50ms");
    cfg_put(&s->cfg, "election-timeout", "300ms");
    cfg_put(&s->cfg, "request-timeout", "2000ms");
    cfg_put(&s->cfg, "raft-snapshot-entries", "40");
    cfg_put(&s->cfg, "raft-trailing-entries", "5");
    cfg_put(&s->cfg, "mandi-addr", "http://127.0.0.1:1");
    if (founder) {
        char ic[256] = "";
        for (int k = 0; k < founders; k++)
            snprintf(ic + strlen(ic), sizeof ic - strlen(ic),
                     "%sn%d=127.0.0.1:%d", k ? "," : "", k + 1, 7001 + k);
        cfg_put(&s->cfg, "initial-cluster", ic);
    }
}

static void node_start(struct ns_node *s)
{
    struct node_io io = ns_io;
    io.data = s;
    io.seed = W.seed * 31 + (uint64_t)s->i + 1 + W.now;
    char err[512];
    use(s);
    if (node_open(&io, &s->cfg, on_stop, err, sizeof err) < 0) {
        ns_fail("%s: node_open: %s", s->name, err);
        return;
    }
    s->n = node_current();
    s->started = true;
    s->restart_at = 0;
    /* Seeds 1 mod 4: a budget of a few units a turn, so that a DELRANGE
     * of the d/ keys (client_write) is applied over several turns, at a
     * pace that differs between nodes, and so are a few SETs handed out
     * at once; 3 mod 4: 8 to 24, a follower's backlog spread over turns
     * (check_turn_budget); even seeds keep the default (a long pause
     * holds back the bursts that fill NODE_READIES). */
    node_set_apply_budget(W.seed % 4 == 1   ? 1 + (uint64_t)s->i % 3
                          : W.seed % 4 == 3 ? 8 + (uint64_t)s->i % 3 * 8
                                            : 0);
}

/* Free the client's requests that went down with node i. */
static void drop_writes_of(int i)
{
    for (unsigned k = 0; k < W.nwrites; k++) {
        struct ns_write *w = W.writes[k];
        if (w && w->live && w->node == i) {
            w->live = false;
            pz_free(w);
            W.writes[k] = NULL;
        }
    }
}

static void on_read(struct node_req *req, int status)
{
    struct ns_read *r = (struct ns_read *)req, **pp = &W.reads;
    while (*pp != r)
        pp = &(*pp)->next;
    *pp = r->next;
    if (kv_paused(node_kv()))
        ns_fail("%s: a read called back with part of an entry applied",
                W.nodes[r->node].name);
    if (status == 0) {
        /* Called back with the node selected: read its table. */
        char key[32];
        snprintf(key, sizeof key, "k%05u", r->key);
        struct kv_view v;
        if (!kv_get_view(node_kv(), key, strlen(key), &v) ||
            v.meta.mod_revision != W.ack_rev[r->key])
            ns_fail("%s: linearizable read of %s, acknowledged at revision "
                    "%" PRIu64 ", does not see it",
                    W.nodes[r->node].name, key, W.ack_rev[r->key]);
        W.nreads++;
    }
    pz_free(r);
}

static void client_read(void)
{
    if (W.nacked == 0)
        return;
    unsigned key = (unsigned)(rnd() % W.nwrites);
    while (!W.acked[key])
        key = (key + 1) % W.nwrites;
    struct ns_node *s = &W.nodes[rnd() % (uint64_t)W.count];
    if (s->n == NULL || s->stop_asked)
        return;
    use(s);
    struct ns_read *r = pz_calloc(1, sizeof *r);
    r->key = key;
    r->node = s->i;
    r->next = W.reads;
    W.reads = r;
    node_read(&r->req, false, on_read);
}

/* Free the reads that went down with node i (no callback comes). */
static void drop_reads_of(int i)
{
    struct ns_read **pp = &W.reads;
    while (*pp) {
        struct ns_read *r = *pp;
        if (r->node == i) {
            *pp = r->next;
            pz_free(r);
        } else {
            pp = &r->next;
        }
    }
}

static void node_down(struct ns_node *s)
{
    use(s);
    node_crash();
    s->n = NULL;
    drop_writes_of(s->i);
    drop_reads_of(s->i);
    /* Jobs in flight: each durable whole or lost whole, in order (any
     * prefix of them reached the disk). */
    size_t kept = s->st.nq == 1 ? (size_t)(rnd() % 2)
                  : s->st.nq > 1 ? (size_t)(rnd() % (s->st.nq + 1))
                                 : 0;
    for (size_t k = 0; s->st.nq > 0; k++) {
        if (k < kept)
            st_apply_job(&s->st);
        st_job_free(&s->st);
    }
    /* What was on the wire to or from it is lost with its links. */
    size_t k = 0;
    for (size_t i = 0; i < W.nmsgs; i++) {
        if (W.msgs[i].to == s->i || W.msgs[i].from == s->i)
            pz_free(W.msgs[i].buf);
        else
            W.msgs[k++] = W.msgs[i];
    }
    W.nmsgs = k;
}

static void node_free_all(struct ns_node *s)
{
    if (s->n)
        node_down(s);
    st_truncate_from(&s->st, 0);
    pz_free(s->st.log);
    cfg_free(&s->cfg);
}

/* --- the client ------------------------------------------------------------
 */

static void on_write(struct node_req *req, int status)
{
    struct ns_write *w = (struct ns_write *)req;
    if (status == 0 && w->req.res.status == KV_OK) {
        W.acked[w->key] = true;
        W.ack_rev[w->key] = w->req.res.revision;
        W.ack_at[w->key] = W.now;
        W.nacked++;
    }
    w->live = false;
    W.writes[w->key] = NULL;
    pz_free(w);
}

static void client_write(void)
{
    if (W.nwrites >= NS_MAX_WRITES)
        return;
    int start = (int)(rnd() % (uint64_t)W.count);
    for (int d = 0; d < W.count; d++) {
        struct ns_node *s = &W.nodes[(start + d) % W.count];
        if (s->n == NULL || s->stop_asked)
            continue;
        use(s);
        unsigned key = W.nwrites;
        char k[32], v[48];
        snprintf(k, sizeof k, "k%05u", key);
        snprintf(v, sizeof v, "v%u-%" PRIu64, key, W.seed);
        struct pz_buf cmd;
        pz_buf_init(&cmd);
        unsigned kind = key % 8;
        if (kind < 2) {
            /* With keys under d/ beside it, or after deleting them all
             * in one DELRANGE (applied in steps: node_set_apply_budget). */
            char dk[3][32];
            struct kv_op ops[4];
            memset(ops, 0, sizeof ops);
            ops[0] = (struct kv_op){.type = KV_TOP_PUT,
                                    .key = (const uint8_t *)k,
                                    .klen = strlen(k),
                                    .value = (const uint8_t *)v,
                                    .vlen = strlen(v)};
            size_t n = 1;
            if (kind == 0) {
                for (int j = 0; j < 3; j++) {
                    snprintf(dk[j], sizeof dk[j], "d/%05u/%d", key, j);
                    ops[n++] = (struct kv_op){.type = KV_TOP_PUT,
                                              .key = (const uint8_t *)dk[j],
                                              .klen = strlen(dk[j]),
                                              .value = (const uint8_t *)v,
                                              .vlen = strlen(v)};
                }
            } else {
                ops[1] = ops[0];
                ops[0] = (struct kv_op){.type = KV_TOP_DELRANGE,
                                        .key = (const uint8_t *)"d/",
                                        .klen = 2,
                                        .value = (const uint8_t *)"d0",
                                        .vlen = 2};
                n = 2;
            }
            kv_encode_txn(&cmd, NULL, 0, ops, n, NULL, 0);
        } else {
            kv_encode_set(&cmd, k, strlen(k), v, strlen(v));
        }
        struct ns_write *w = pz_calloc(1, sizeof *w);
        w->key = key;
        w->node = s->i;
        w->live = true;
        int rv =
            node_propose(&w->req, (const uint8_t *)cmd.data, cmd.len, on_write);
        pz_buf_free(&cmd);
        if (rv < 0) {
            pz_free(w);
            continue;
        }
        W.writes[key] = w;
        W.prop_at[key] = W.now;
        W.nwrites++;
        return;
    }
}

/* --- the loop ----------------------------------------------------------------
 */

static void check_leaders(void)
{
    for (int i = 0; i < W.count; i++) {
        struct ns_node *s = &W.nodes[i];
        if (s->n == NULL)
            continue;
        use(s);
        struct raft_status rs;
        raft_status(nd->raft, &rs);
        if (rs.role != RAFT_LEADER)
            continue;
        if (rs.term >= W.nterms) {
            size_t n = rs.term * 2 + 16;
            W.leader_of = pz_realloc(W.leader_of, n * sizeof *W.leader_of);
            memset(W.leader_of + W.nterms, 0,
                   (n - W.nterms) * sizeof *W.leader_of);
            W.nterms = n;
        }
        uint64_t id = members_name_to_id(s->name);
        if (W.leader_of[rs.term] && W.leader_of[rs.term] != id)
            ns_fail("two leaders in term %" PRIu64, rs.term);
        W.leaders += W.leader_of[rs.term] == 0;
        W.leader_of[rs.term] = id;
    }
}

/* State machine safety: every node applies the same entry (same term)
 * at an index. Entries compacted before they were looked at are
 * skipped. */
static void check_applied(struct ns_node *s)
{
    if (nd->applied < s->checked)
        s->checked = 0; /* restarted: from the log it has again */
    for (uint64_t i = s->checked + 1; i <= nd->applied; i++) {
        const struct raft_entry *e = raft_log_get(nd->raft, i);
        if (e == NULL)
            continue;
        if (i >= W.napplied) {
            size_t n = i * 2 + 64;
            W.applied_term =
                pz_realloc(W.applied_term, n * sizeof *W.applied_term);
            memset(W.applied_term + W.napplied, 0,
                   (n - W.napplied) * sizeof *W.applied_term);
            W.napplied = n;
        }
        if (W.applied_term[i] && W.applied_term[i] != e->term)
            ns_fail("%s applied entry %" PRIu64 " of term %" PRIu64
                    ", another node one of term %" PRIu64,
                    s->name, i, e->term, W.applied_term[i]);
        W.applied_term[i] = e->term;
    }
    s->checked = nd->applied;
}

/* Part of an entry applied: the applied index is the entry before it,
 * and no snapshot covers more (nothing durable holds part of it). */
static void check_paused(struct ns_node *s)
{
    if (!node_applying())
        return;
    paused_turns++;
    if (nd->snap_index > nd->applied)
        ns_fail("%s: snapshot at %" PRIu64 " past the applied index %" PRIu64
                " mid-entry",
                s->name, nd->snap_index, nd->applied);
    if (nd->applied + 1 != nd->ap.cur.index)
        ns_fail("%s: applied index %" PRIu64 " while entry %" PRIu64
                " is being applied",
                s->name, nd->applied, nd->ap.cur.index);
}

/* One loop turn applies at most its budget of commands (NODE_APPLY_BUDGET;
 * 1 to 24 on odd seeds): each revision costs a unit at least, and the
 * entries past the budget wait for the next turn, however many the core
 * handed out at once (a follower catching up). One more for a command in
 * steps that ends the turn's first call. Not across a table replaced by
 * a snapshot. */
static void check_turn_budget(struct ns_node *s, struct kv *kv, uint64_t rev)
{
    if (nd->kv != kv || kv_revision(kv) <= rev + nd->ap.budget + 1)
        return;
    ns_fail("%s: %" PRIu64
            " revisions applied in one loop turn, budget %" PRIu64,
            s->name, kv_revision(kv) - rev, nd->ap.budget);
}

static void settle_nodes(void)
{
    for (int round = 0; round < 4; round++) {
        bool work = false;
        for (int i = 0; i < W.count; i++) {
            struct ns_node *s = &W.nodes[i];
            if (s->n == NULL)
                continue;
            use(s);
            struct kv *kv = nd->kv;
            uint64_t rev = kv_revision(kv);
            node_before_sleep();
            node_write_now();
            check_turn_budget(s, kv, rev);
            check_applied(s);
            check_paused(s);
            work = work || node_has_work();
        }
        if (!work)
            break;
    }
    /* A node that asked to stop (removed) stops now. */
    for (int i = 0; i < W.count; i++) {
        struct ns_node *s = &W.nodes[i];
        if (s->n != NULL && s->stop_asked) {
            node_down(s);
            s->gone = true;
        }
    }
}

/* One step of the world: everything due at W.now. */
static void step(void)
{
    for (int i = 0; i < W.count; i++) {
        struct ns_node *s = &W.nodes[i];
        while (s->n && s->st.nq && s->st.q[0].job_at <= W.now) {
            struct ns_job *j = &s->st.q[0];
            bool scripted = j->job == 3 && s->i == W.script_node;
            if ((scripted && W.script_phase == 1) ||
                (W.nospace_pm && !W.calm && rnd_in(0, 999) < W.nospace_pm)) {
                /* The disk is full: the write (or compaction step) rolls
                 * back whole, and the store runs none of those queued
                 * behind it. */
                writes_nospace++;
                if (scripted && W.script_phase == 1)
                    W.script_phase = 2;
                int status = PZ_ENOSPC;
                while (s->n && s->st.nq) {
                    node_io_done_cb cb = s->st.q[0].cb;
                    st_job_free(&s->st);
                    use(s);
                    cb(status, status == PZ_ENOSPC ? "disk full (simulated)"
                                                   : "not run");
                    status = PZ_ECANCELED;
                }
                break;
            }
            if (s->st.nq > 1)
                writes_pipelined++;
            if ((scripted && W.script_phase == 2) ||
                (j->job == 3 && W.nospace_pm && !W.calm &&
                 rnd_in(0, 999) < 20 * W.nospace_pm)) {
                /* Its vacuum found no room: rolled back alone, the step
                 * stands (the store counts it; the node must not take it
                 * for a full disk). */
                s->st.stats.vacuum_nospace++;
                vacuums_nospace++;
                W.script_vacuums += scripted && W.script_phase == 2;
            }
            st_apply_job(&s->st);
            node_io_done_cb cb = j->cb;
            st_job_free(&s->st);
            use(s);
            cb(0, NULL);
        }
    }
    for (int i = 0; i < W.count; i++)
        if (W.nodes[i].n && W.nodes[i].load && W.nodes[i].load_at <= W.now)
            load_complete(&W.nodes[i]);
    for (size_t i = 0; i < W.nmsgs;) {
        if (W.msgs[i].at > W.now) {
            i++;
            continue;
        }
        struct ns_msg m = W.msgs[i];
        W.msgs[i] = W.msgs[--W.nmsgs]; /* order among due ones: any */
        deliver(&m);
        pz_free(m.buf);
    }
    for (size_t i = 0; i < W.nmjobs;) {
        if (W.mjobs[i].at > W.now) {
            i++;
            continue;
        }
        struct ns_mandi_job j = W.mjobs[i];
        W.mjobs[i] = W.mjobs[--W.nmjobs];
        mandi_complete(&j);
    }
    for (int i = 0; i < W.count; i++) {
        struct ns_node *s = &W.nodes[i];
        if (s->n && s->tick_cb && s->next_tick <= W.now) {
            s->next_tick += s->tick_ms;
            use(s);
            s->tick_cb();
        }
    }
    settle_nodes();
    check_leaders();
}

static int up_count(void)
{
    int n = 0;
    for (int i = 0; i < W.count; i++)
        n += W.nodes[i].n != NULL;
    return n;
}

static void chaos(void)
{
    if (W.cut >= 0 && (W.calm || W.now >= W.cut_end))
        W.cut = -1;
    if (W.calm)
        return;
    /* Now and then one node is cut off for a while (the leader, often:
     * the others elect another). */
    if (W.cut < 0 && rnd() % 2000 == 0) {
        struct ns_node *l = rnd() % 2 ? leader() : NULL;
        W.cut = l ? l->i : (int)(rnd() % (uint64_t)W.count);
        W.cut_end = W.now + rnd_in(300, 2500);
        W.cuts++;
    }
    /* Restarts that are due. */
    for (int i = 0; i < W.count; i++) {
        struct ns_node *s = &W.nodes[i];
        if (s->started && s->n == NULL && !s->gone && s->restart_at &&
            s->restart_at <= W.now)
            node_start(s);
    }
    /* A crash now and then, one node down at a time. */
    int live = 0;
    for (int i = 0; i < W.count; i++)
        live += W.nodes[i].started && !W.nodes[i].gone;
    /* Rarely, a power loss: every node at once, each losing the store
     * job it had in flight. */
    if (up_count() == live && rnd() % 6000 == 0) {
        for (int i = 0; i < W.count; i++) {
            struct ns_node *s = &W.nodes[i];
            if (s->n && !s->stop_asked) {
                node_down(s);
                s->restart_at = W.now + rnd_in(50, 1500);
            }
        }
        W.powerloss++;
        return;
    }
    if (up_count() == live && rnd() % 800 == 0) {
        struct ns_node *s = &W.nodes[rnd() % (uint64_t)W.count];
        if (s->n && !s->stop_asked) {
            node_down(s);
            s->restart_at = W.now + rnd_in(200, 3000);
            W.crashes++;
        }
    }
}

static struct ns_node *leader(void)
{
    for (int i = 0; i < W.count; i++) {
        struct ns_node *s = &W.nodes[i];
        if (s->n == NULL)
            continue;
        use(s);
        if (node_is_leader())
            return s;
    }
    return NULL;
}

static struct node_req remove_req;
static int remove_status = 1;

static void on_removed_done(struct node_req *req, int status)
{
    PZ_UNUSED(req);
    remove_status = status;
}

static void try_remove(int victim)
{
    struct ns_node *l = leader();
    if (l == NULL || remove_status == 0 || remove_req.queued)
        return;
    use(l);
    if (node_remove_member(&remove_req, W.nodes[victim].name, on_removed_done) <
        0)
        return;
}

/* Every member of the last committed configuration, as the leader sees it:
 * applied the same, digest and revision equal, acknowledged writes there. */
static bool converged(void)
{
    struct ns_node *l = leader();
    if (l == NULL)
        return false;
    use(l);
    struct raft_status rs;
    raft_status(nd->raft, &rs);
    uint64_t applied = nd->applied;
    /* Everything the leader holds committed, the entry it appended when
     * elected included: until then, what an earlier leader acknowledged
     * may not be committed again yet (commit stays where it was durable),
     * and the checks below would call it lost. */
    if (applied < rs.commit || rs.commit < rs.last_index)
        return false;
    for (int i = 0; i < W.count; i++) {
        struct ns_node *s = &W.nodes[i];
        if (!s->started || s->gone)
            continue;
        if (s->n == NULL)
            return false;
        use(s);
        /* An alarm raised just before the calm clears at the store's next
         * retry (NOSPACE_RETRY_MS): one that never does fails as "did not
         * converge". */
        if (nd->applied != applied || nd->store_busy || nd->alarm_disk)
            return false;
    }
    return true;
}

static void check_final(int victim, int joiner)
{
    struct ns_node *l = leader();
    if (l == NULL) {
        ns_fail("no leader at the end");
        return;
    }
    use(l);
    uint64_t digest = kv_digest(nd->kv), rev = kv_revision(nd->kv);
    const struct raft_conf *conf = raft_conf_current(nd->raft, NULL);
    const struct raft_server *j =
        raft_conf_get(conf, members_name_to_id(W.nodes[joiner].name));
    if (j == NULL || !j->voter)
        ns_fail("%s joined but is not a voter", W.nodes[joiner].name);
    if (raft_conf_get(conf, members_name_to_id(W.nodes[victim].name)))
        ns_fail("%s was removed but is in the configuration",
                W.nodes[victim].name);
    if (!W.nodes[victim].gone)
        ns_fail("%s was removed but did not stop", W.nodes[victim].name);
    for (int i = 0; i < W.count; i++) {
        struct ns_node *s = &W.nodes[i];
        if (s->n == NULL)
            continue;
        use(s);
        if (nd->alarm_disk) {
            /* The disk has had room since the calm began. */
            ns_fail("%s: the NOSPACE alarm is still up at the end", s->name);
            return;
        }
        if (kv_digest(nd->kv) != digest || kv_revision(nd->kv) != rev) {
            ns_fail("%s: digest %016" PRIx64 " rev %" PRIu64 ", leader %s "
                    "%016" PRIx64 " rev %" PRIu64,
                    s->name, kv_digest(nd->kv), kv_revision(nd->kv), l->name,
                    digest, rev);
            return;
        }
        for (unsigned k = 0; k < W.nwrites; k++) {
            if (!W.acked[k])
                continue;
            char key[32], v[48];
            snprintf(key, sizeof key, "k%05u", k);
            snprintf(v, sizeof v, "v%u-%" PRIu64, k, W.seed);
            struct kv_view view;
            if (!kv_get_view(nd->kv, key, strlen(key), &view) ||
                view.vlen != strlen(v) || memcmp(view.value, v, view.vlen) ||
                view.meta.mod_revision != W.ack_rev[k]) {
                ns_fail("%s: acknowledged write %s (revision %" PRIu64
                        ") missing or different",
                        s->name, key, W.ack_rev[k]);
                return;
            }
        }
    }
    /* Acknowledged before another was proposed: the lower revision. */
    for (unsigned a = 0; a < W.nwrites; a++)
        for (unsigned b = a + 1; b < W.nwrites; b++) /* proposed after a */
            if (W.acked[a] && W.acked[b] && W.ack_at[a] < W.prop_at[b] &&
                W.ack_rev[a] >= W.ack_rev[b])
                ns_fail("write %u acked at %" PRIu64 " before %u was proposed "
                        "but has revision %" PRIu64 " >= %" PRIu64,
                        a, W.ack_at[a], b, W.ack_rev[a], W.ack_rev[b]);
}

/* A fresh world for `seed`, its nodes' directories under root. */
static void world_begin(uint64_t seed, char *root, size_t len)
{
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(root, len, "%s/pyazdb-nodesim-%d-%" PRIu64, base, (int)getpid(),
             seed);
    mkdir(root, 0700);
    memset(&W, 0, sizeof W);
    W.seed = seed;
    W.rng = seed * 0x9e3779b97f4a7c15ull + 1;
    W.msgs = pz_calloc(NS_MAX_MSGS, sizeof *W.msgs);
}

static void world_end(const char *root)
{
    for (int i = 0; i < W.count; i++)
        node_free_all(&W.nodes[i]);
    for (unsigned k = 0; k < W.nwrites; k++)
        pz_free(W.writes[k]);
    for (size_t i = 0; i < W.nmsgs; i++)
        pz_free(W.msgs[i].buf);
    pz_free(W.msgs);
    pz_free(W.leader_of);
    pz_free(W.applied_term);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    if (system(cmd) != 0)
        fprintf(stderr, "node-sim: cannot remove %s\n", root);
}

/* One seed. 0 or -1 with W.failed. */
static int run_seed(uint64_t seed)
{
    char root[256];
    world_begin(seed, root, sizeof root);
    seed_deepest = 0;
    W.loss_pct = (unsigned)rnd_in(0, 10);
    /* A disk full now and then in a quarter of the seeds. */
    W.nospace_pm = seed % 4 == 1 ? 5 : 0;
    W.cut = -1;
    int founders = seed % 3 == 0 ? 5 : 3;
    W.count = founders + 1;
    remove_status = 1;
    memset(&remove_req, 0, sizeof remove_req);
    for (int i = 0; i < founders; i++)
        node_setup(i, founders, true, root);
    node_setup(founders, founders, false, root);
    for (int i = 0; i < founders && !W.failed[0]; i++)
        node_start(&W.nodes[i]);
    int joiner = founders;
    int victim = (int)rnd_in(0, (uint64_t)founders - 1);
    uint64_t join_at = rnd_in(2000, 4000), remove_at = join_at + 5000;
    uint64_t calm_at = remove_at + 4000, end = calm_at + 30000;
    uint64_t next_write = 100;
    for (W.now = 1; W.now < end && !W.failed[0]; W.now++) {
        if (W.now == join_at)
            node_start(&W.nodes[joiner]);
        if (W.now >= remove_at && !W.nodes[victim].gone && W.now % 50 == 0) {
            /* Wait for the joiner to vote before removing a founder. */
            struct ns_node *l = leader();
            if (l) {
                use(l);
                const struct raft_server *j =
                    raft_conf_get(raft_conf_current(nd->raft, NULL),
                                  members_name_to_id(W.nodes[joiner].name));
                if (j && j->voter)
                    try_remove(victim);
            }
        }
        if (W.now == calm_at)
            W.calm = true;
        if (W.calm) {
            for (int i = 0; i < W.count; i++) {
                struct ns_node *s = &W.nodes[i];
                if (s->started && !s->gone && s->n == NULL)
                    node_start(s);
            }
        }
        if (W.now >= next_write && W.now < calm_at) {
            client_write();
            if (rnd() % 3 == 0)
                client_read();
            /* Faster while the disk is slow (one second in four), so
             * that Readies pile up to NODE_READIES behind a slow COMMIT. */
            next_write = W.now + ((W.now / 1000) % 4 == 3 ? rnd_in(1, 12)
                                                          : rnd_in(5, 40));
        }
        chaos();
        step();
        if (W.calm && W.nodes[victim].gone && W.now % 100 == 0 && converged()) {
            check_final(victim, joiner);
            break;
        }
    }
    if (!W.failed[0] && W.now >= end) {
        char st[256] = "";
        for (int i = 0; i < W.count; i++) {
            struct ns_node *s = &W.nodes[i];
            if (s->n == NULL)
                continue;
            use(s);
            struct raft_status rs;
            raft_status(nd->raft, &rs);
            snprintf(st + strlen(st), sizeof st - strlen(st),
                     " %s:%s/t%" PRIu64 "/c%" PRIu64 "/a%" PRIu64, s->name,
                     raft_role_name(rs.role), rs.term, rs.commit, nd->applied);
        }
        ns_fail("did not converge (removed %s stopped: %d;%s)",
                W.nodes[victim].name, W.nodes[victim].gone, st);
    }
    W.total_installs = W.installs;
    if (seed_deepest >= NODE_READIES)
        seeds_full++;
    world_end(root);
    return W.failed[0] ? -1 : 0;
}

/* Seeds first..first+n-1; returns failures. */
static int run_seeds(uint64_t first, uint64_t n, bool verbose,
                     uint64_t *installs, unsigned *acked)
{
    int failures = 0;
    *installs = 0;
    *acked = 0;
    for (uint64_t s = first; s < first + n; s++) {
        int rv = run_seed(s);
        *installs += W.total_installs;
        *acked += W.nacked;
        if (rv < 0) {
            failures++;
            fprintf(stderr, "node-sim: seed %" PRIu64 " FAILED: %s\n", s,
                    W.failed);
        } else if (verbose) {
            fprintf(stderr,
                    "node-sim: seed %" PRIu64 " ok (%d nodes, %u acked, %u "
                    "reads, %u "
                    "crashes, %u power losses, %u cuts, %u leaders, %u "
                    "installs, t=%" PRIu64 " ms)\n",
                    s, W.count, W.nacked, W.nreads, W.crashes, W.powerloss,
                    W.cuts, W.leaders, W.installs, W.now);
        }
    }
    return failures;
}

#ifdef NODE_SIM_MAIN
static bool running;

/* A fail-stop inside the driver (core_fatal exits): say which seed. */
static void on_exit_report(void)
{
    if (running)
        fprintf(stderr,
                "node-sim: the process exited during seed %" PRIu64
                ": rerun with NODE_SIM_SEED=%" PRIu64 "\n",
                W.seed, W.seed);
}

static uint64_t env_u64(const char *name, uint64_t dflt)
{
    const char *v = getenv(name);
    return v && *v ? strtoull(v, NULL, 10) : dflt;
}

int main(void)
{
    bool verbose = env_u64("NODE_SIM_VERBOSE", 0) != 0;
    pz_log_setup(verbose ? PZ_LOG_INFO : PZ_LOG_ERROR, "");
    verbose_log = env_u64("NODE_SIM_VERBOSE", 0) > 1;
    uint64_t first = env_u64("NODE_SIM_SEED", 1);
    uint64_t n = getenv("NODE_SIM_SEED") ? 1 : env_u64("NODE_SIM_SEEDS", 150);
    struct timespec a, b;
    atexit(on_exit_report);
    running = true;
    clock_gettime(CLOCK_MONOTONIC, &a);
    uint64_t installs;
    unsigned acked;
    int failures = run_seeds(first, n, verbose, &installs, &acked);
    clock_gettime(CLOCK_MONOTONIC, &b);
    running = false;
    double secs =
        (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9;
    printf("node-sim: %" PRIu64 " seeds from %" PRIu64 ", %d failed, %u "
           "writes acknowledged, %" PRIu64 " snapshot installs, %" PRIu64
           " log writes on the loop (%" PRIu64 " of several entries by a "
           "follower alone, %" PRIu64 " refused for lack of space), %" PRIu64
           " with writes queued "
           "behind (at most %zu jobs at once, %d in %" PRIu64
           " seeds), %" PRIu64 " refused for "
           "lack of space, %" PRIu64 " vacuums without room, %.2f s "
           "(%.1f seeds/s)\n",
           n, first, failures, acked, installs, writes_now, writes_alone,
           writes_now_nospace, writes_pipelined, jobs_deepest, NODE_READIES,
           seeds_full, writes_nospace, vacuums_nospace, secs, (double)n / secs);
    if (failures == 0 && n >= 5 && installs == 0) {
        printf("node-sim: no snapshot was installed\n");
        return 1;
    }
    printf("node-sim: %" PRIu64 " loop turns ended mid-entry; %" PRIu64
           " snapshots' INSTALL_SNAPSHOT held until their table loaded\n",
           paused_turns, loads_held);
    if (failures == 0 && n >= 5 && loads_held == 0) {
        printf("node-sim: no INSTALL_SNAPSHOT came while its file loaded\n");
        return 1;
    }
    if (failures == 0 && n >= 5 && paused_turns == 0) {
        printf("node-sim: no entry was applied in steps\n");
        return 1;
    }
    if (failures == 0 && n >= 5 &&
        (writes_now == 0 || writes_alone == 0 || writes_now_nospace == 0)) {
        printf("node-sim: no log write ran on the loop, or none of several "
               "entries by a follower alone, or none was refused there for "
               "lack of space\n");
        return 1;
    }
    if (failures == 0 && n >= 5 && jobs_deepest < NODE_READIES) {
        printf("node-sim: never %d Readies in flight at once\n",
               NODE_READIES);
        return 1;
    }
    if (failures == 0 && n >= 5 && (writes_pipelined == 0 ||
                                    writes_nospace == 0 ||
                                    vacuums_nospace == 0)) {
        printf("node-sim: no write was pipelined, or none refused, or no "
               "vacuum found no room\n");
        return 1;
    }
    return failures ? 1 : 0;
}
#else
TEST(seeds)
{
    pz_log_setup(PZ_LOG_ERROR, "");
    uint64_t installs;
    unsigned acked;
    uint64_t paused = paused_turns;
    CHECK_EQ_INT(run_seeds(1, 3, false, &installs, &acked), 0);
    CHECK(acked > 0);
    CHECK(paused_turns > paused); /* entries were applied in steps */
    pz_log_setup(PZ_LOG_INFO, "");
}

/* Seeds that once failed. 676: a follower that received a snapshot and
 * then took one of its own at the same point refused every later
 * transfer and never caught up. 1181, 2029: a vote granted while the
 * disk was full went out once a later term was durable (safe; the check
 * wanted the grant's own term on disk). (A change of the code may send a seed
 * elsewhere; the long runs of make test-sim keep looking.) */
TEST(regression_seeds)
{
    static const uint64_t seeds[] = {676, 1181, 2029};
    uint64_t installs;
    unsigned acked;
    pz_log_setup(PZ_LOG_ERROR, "");
    for (size_t i = 0; i < sizeof seeds / sizeof seeds[0]; i++)
        CHECK_EQ_INT(run_seeds(seeds[i], 1, false, &installs, &acked), 0);
    pz_log_setup(PZ_LOG_INFO, "");
}

static int snap_now_status = 1;

static void on_snap_now(struct node_req *req, int status)
{
    PZ_UNUSED(req);
    snap_now_status = status;
}

/* A NOSPACE alarm raised by a compaction step comes down with the next
 * step whose rows commit, even when that step's vacuum finds no room and
 * no log write follows: an idle leader refused writes for good when the
 * node took the vacuum's failure for a full disk. Three founders, no
 * faults; the client writes, then stops; the leader snapshots, its first
 * compaction step fails for lack of space, every later one stands with a
 * vacuum that finds no room. */
TEST(compaction_step_clears_nospace_alarm)
{
    pz_log_setup(PZ_LOG_ERROR, "");
    snap_now_status = 1;
    char root[256];
    world_begin(7, root, sizeof root);
    W.cut = -1;
    W.count = 3;
    for (int i = 0; i < W.count; i++)
        node_setup(i, W.count, true, root);
    for (int i = 0; i < W.count; i++)
        node_start(&W.nodes[i]);
    for (W.now = 1; W.now < 3000 && !W.failed[0]; W.now++) {
        if (W.now % 20 == 0 && W.nwrites < 20)
            client_write();
        step();
    }
    CHECK_EQ_STR(W.failed, "");
    CHECK_EQ_INT((int)W.nacked, 20);
    CHECK(converged());
    struct ns_node *l = leader();
    CHECK(l != NULL);
    uint64_t from = l->st.meta.snap_index;
    W.script_node = l->i;
    W.script_phase = 1;
    struct node_req req = {0};
    use(l);
    CHECK_EQ_INT(node_snapshot_now(&req, on_snap_now), 0);
    bool raised = false;
    for (uint64_t end = W.now + 5000; W.now < end && !W.failed[0]; W.now++) {
        step();
        use(l);
        raised = raised || nd->alarm_disk;
    }
    CHECK_EQ_STR(W.failed, "");
    CHECK_EQ_INT(snap_now_status, 0);
    CHECK_EQ_INT(W.script_phase, 2); /* the step failed for lack of space */
    CHECK(raised);
    CHECK(W.script_vacuums >= 1); /* a step stood, its vacuum without room */
    CHECK_EQ_INT((int)W.script_writes, 0); /* no log write cleared it */
    CHECK(l->st.meta.snap_index > from);
    use(l);
    CHECK(!nd->alarm_disk);
    world_end(root);
    pz_log_setup(PZ_LOG_INFO, "");
}

/* A follower that cannot record a larger read-lease promise than its
 * raft.db holds (none, as an older version left it; a full disk) starts
 * anyway, promises leaders only what is recorded, and promises its own
 * once it could record it. */
TEST(unrecorded_promise_is_not_made)
{
    pz_log_setup(PZ_LOG_ERROR, "");
    char root[256];
    world_begin(11, root, sizeof root);
    W.cut = -1;
    W.calm = true;
    W.count = 3;
    for (int i = 0; i < W.count; i++)
        node_setup(i, W.count, true, root);
    for (int i = 0; i < W.count; i++)
        node_start(&W.nodes[i]);
    for (W.now = 1; W.now < 2000 && !W.failed[0]; W.now++) {
        if (W.now % 20 == 0 && W.nwrites < 10)
            client_write();
        step();
    }
    struct ns_node *l = leader();
    CHECK(l != NULL);
    struct ns_node *f = &W.nodes[(l->i + 1) % W.count];
    /* 90% of (59 ticks of 5 ms - 2 ms), its settings' promise */
    const uint64_t own = 263700000;
    CHECK(f->st.meta.promise_ns == own && W.promised[f->i] == own);
    node_down(f);
    f->st.meta.promise_ns = 0;
    W.promise_full = f->i + 1;
    node_start(f);
    unsigned seen = W.promises[f->i];
    for (uint64_t end = W.now + 2000; W.now < end && !W.failed[0]; W.now++)
        step();
    CHECK(W.promises[f->i] > seen);
    CHECK(W.promised[f->i] == 0);
    CHECK(f->st.meta.promise_ns == 0);
    W.promise_full = 0;
    for (uint64_t end = W.now + 2000; W.now < end && !W.failed[0]; W.now++)
        step();
    CHECK_EQ_STR(W.failed, "");
    CHECK(f->st.meta.promise_ns == own);
    CHECK(W.promised[f->i] == own);
    world_end(root);
    pz_log_setup(PZ_LOG_INFO, "");
}

static unsigned quota_acked, quota_failed;

static void on_quota_write(struct node_req *req, int status)
{
    if (status == 0 && req->res.status == KV_OK)
        quota_acked++;
    else
        quota_failed++;
    pz_free(req);
}

/* Propose n sets of size-byte values under prefix on node s, all in one
 * turn (nothing applies in between): how many were taken. */
static unsigned quota_burst(struct ns_node *s, const char *prefix, int n,
                            size_t size)
{
    use(s);
    char *v = pz_malloc(size);
    memset(v, 'v', size);
    unsigned taken = 0;
    for (int i = 0; i < n; i++) {
        char k[32];
        snprintf(k, sizeof k, "%s%02d", prefix, i);
        struct pz_buf cmd;
        pz_buf_init(&cmd);
        kv_encode_set(&cmd, k, strlen(k), v, size);
        struct node_req *req = pz_calloc(1, sizeof *req);
        int rv = node_propose(req, (const uint8_t *)cmd.data, cmd.len,
                              on_quota_write);
        pz_buf_free(&cmd);
        if (rv < 0)
            pz_free(req);
        else
            taken++;
    }
    pz_free(v);
    return taken;
}

/* quota-backend-bytes counts the writes a leader accepted and has not
 * applied yet: sets proposed in one turn pass the quota by no more than
 * one (all 20 were taken when only applied data counted); the count goes
 * back down as they apply, and to nothing when the leader loses its
 * leadership with writes in flight, so that writes are taken again. */
TEST(quota_counts_writes_in_flight)
{
    pz_log_setup(PZ_LOG_ERROR, "");
    quota_acked = quota_failed = 0;
    char root[256];
    world_begin(13, root, sizeof root);
    W.cut = -1;
    W.count = 3;
    for (int i = 0; i < W.count; i++) {
        node_setup(i, W.count, true, root);
        cfg_put(&W.nodes[i].cfg, "quota-backend-bytes", "16kb");
    }
    for (int i = 0; i < W.count; i++)
        node_start(&W.nodes[i]);
    for (W.now = 1; W.now < 2000 && leader() == NULL; W.now++)
        step();
    struct ns_node *l = leader();
    CHECK(l != NULL);
    /* 1000 + 3 + KV_KEY_OVERHEAD each: 14 fit in 16384. */
    const uint64_t one = 1000 + 3 + KV_KEY_OVERHEAD;
    CHECK_EQ_INT((int)quota_burst(l, "a", 20, 1000), 14);
    use(l);
    CHECK(nd->quota_pending_bytes == 14 * one);
    CHECK(nd->alarm_quota);
    for (uint64_t end = W.now + 3000;
         W.now < end && quota_acked + quota_failed < 14 && !W.failed[0];
         W.now++)
        step();
    CHECK_EQ_STR(W.failed, "");
    CHECK_EQ_INT((int)quota_acked, 14);
    use(l);
    CHECK(nd->quota_pending_bytes == 0);
    CHECK(kv_quota_bytes(nd->kv) == 14 * one);
    /* Make room: the alarm comes down (cron) and writes are taken. */
    use(l);
    for (int i = 0; i < 14; i++) {
        char k[32];
        snprintf(k, sizeof k, "a%02d", i);
        struct pz_buf cmd;
        pz_buf_init(&cmd);
        kv_encode_del(&cmd, k, strlen(k));
        struct node_req *req = pz_calloc(1, sizeof *req);
        CHECK_EQ_INT(node_propose(req, (const uint8_t *)cmd.data, cmd.len,
                                  on_quota_write),
                     0);
        pz_buf_free(&cmd);
    }
    for (uint64_t end = W.now + 3000; W.now < end && !W.failed[0]; W.now++) {
        step();
        use(l);
        if (!nd->alarm_quota)
            break;
    }
    use(l);
    CHECK(!nd->alarm_quota);
    CHECK(node_is_leader());
    /* Writes in flight, then the leader is cut off: it steps down and
     * counts nothing any more; the others elect a leader that takes the
     * quota's worth again. */
    CHECK_EQ_INT((int)quota_burst(l, "b", 5, 1000), 5);
    use(l);
    CHECK(nd->quota_pending_bytes == 5 * one);
    W.cut = l->i;
    W.cut_end = W.now + 100000;
    for (uint64_t end = W.now + 5000; W.now < end && !W.failed[0]; W.now++) {
        step();
        use(l);
        if (!node_is_leader())
            break;
    }
    use(l);
    CHECK(!node_is_leader());
    CHECK(nd->quota_pending_bytes == 0);
    struct ns_node *l2 = NULL;
    for (uint64_t end = W.now + 5000; W.now < end && !W.failed[0]; W.now++) {
        step();
        if ((l2 = leader()) != NULL && l2 != l)
            break;
    }
    CHECK(l2 != NULL && l2 != l);
    CHECK_EQ_INT((int)quota_burst(l2, "c", 20, 1000), 14);
    W.cut = -1;
    for (uint64_t end = W.now + 3000; W.now < end && !W.failed[0]; W.now++)
        step();
    CHECK_EQ_STR(W.failed, "");
    for (int i = 0; i < W.count; i++) {
        use(&W.nodes[i]);
        CHECK(nd->quota_pending_bytes == 0);
        CHECK(kv_quota_bytes(nd->kv) == 14 * one);
    }
    world_end(root);
    pz_log_setup(PZ_LOG_INFO, "");
}

/* A compaction step holds the node's writes while it runs: the prefix a
 * default snapshot leaves (65536 - 10240 rows) goes in several short
 * steps, a large backlog in steps of at most 20000. */
TEST(compact_rows)
{
    CHECK_EQ_INT((int)snaps_compact_rows(0), 2000);
    CHECK_EQ_INT((int)snaps_compact_rows(65536 - 10240), 3456);
    CHECK_EQ_INT((int)snaps_compact_rows(1000000), 20000);
    for (uint64_t left = 0; left < 400000; left += 997)
        CHECK(snaps_compact_rows(left) <= snaps_compact_rows(left + 997));
}

static const struct test_case cases[] = {
    TEST_ENTRY(seeds),
    TEST_ENTRY(regression_seeds),
    TEST_ENTRY(compact_rows),
    TEST_ENTRY(unrecorded_promise_is_not_made),
    TEST_ENTRY(compaction_step_clears_nospace_alarm),
    TEST_ENTRY(quota_counts_writes_in_flight),
    TEST_END};

const struct test_suite suite_node_sim = {"node_sim", cases};
#endif
