/* test_raft_sim.c - deterministic randomized simulation of Raft clusters.
 *
 * A cluster of 3 or 5 cores (src/raft.c) runs on a discrete-event clock:
 * per-node ticks and clocks (cfg.clock, which the read leases and restored
 * promises are measured by: each incarnation's may run up to 30% off, its
 * ticks now and then late while its clock runs on, and in half the seeds
 * with Pre-Vote its election timeout is its own, short or long: a
 * follower restarted at once with a shorter one while its leader is cut
 * off must keep its earlier read-lease promise, measured on a faster
 * clock than the leader's; without Pre-Vote, a voter that stopped hearing
 * the leader asks for votes right after the leader is cut off, and the
 * others must refuse them within the lease), process pauses (a paused node's
 * events wait until it runs again), a network with per-message delay
 * (reordering), loss, duplication, stale copies delivered much later,
 * partitions (minority, majority, leader isolation, one direction of one link,
 * a bridge: two sides that reach each other only through one node, heal), every
 * message through the real codec (src/raft_codec.c: encoded and sealed with its
 * checksum, cut into random pieces for the frame parser, decoded, and required
 * to come out equal; now and then damaged by 1 to 3 flipped bits, and then
 * required to be refused by the checksum and lost), fake storage whose write of
 * a Ready completes after a random delay (one batch in flight per node, the
 * Ready's arrays used in place meanwhile), and crashes that lose what was not
 * durable (a write in flight is either lost or complete), of one node or of all
 * at once, followed by a restart through raft_restore_snapshot from the durable
 * state only. Clients propose (on the leader; on other nodes a proposal must be
 * refused with nothing changed), read, change membership and transfer
 * leadership at random.
 *
 * Snapshots: each node's state machine is the chained digest of the
 * entries it applied. Nodes snapshot it at random applied indexes (the
 * write takes a while and is lost in a crash), then compact the core and
 * the durable log with small trailing counts, so lagging, partitioned,
 * restarted and joining nodes catch up through InstallSnapshot. Transfers
 * take time, fail (raft_report_snapshot false), or vanish without a word;
 * an installed snapshot is durable only with its Ready.
 *
 * After every event the simulator checks, for the node concerned:
 *  - Election Safety: at most one leader per term, ever;
 *  - Log Matching: entries with the same index and term have the same
 *    content and the same history (a chained hash per (index, term),
 *    global over all nodes and all time);
 *  - commit never moves back (within one incarnation), commit <= last;
 *  - Leader Completeness: a leader of term T holds every entry known
 *    committed by a node whose term was < T;
 *  - State Machine Safety: every applied entry equals the committed entry
 *    of that index; each node applies 1, 2, 3, ... in order (after its
 *    snapshot); a node's state machine digest after applying i (or after
 *    installing a snapshot of i) equals the committed history up to i;
 *  - snapshots: a leader sends only its durable snapshot; a Ready only
 *    installs a snapshot the node received, with the conf it came with; a
 *    node's durable log is a valid continuation of its durable snapshot;
 *  - ReadIndex linearizability: a confirmed read index is >= the highest
 *    commit index any node knew when the read was requested;
 *  - forged messages (see forge()) are refused and change nothing.
 * Then liveness: after healing everything and restarting crashed nodes, a
 * leader must be elected and a proposal applied on every member within a
 * bound.
 *
 * Seeded: SIM_SEED=n runs one seed (SIM_TRACE=1 prints events),
 * SIM_SEEDS=k runs seeds 1..k (SIM_FIRST=s to start elsewhere). Built into
 * the unit tests (few seeds) and, with -DRAFT_SIM_MAIN, as the standalone
 * tests/unit/raft-sim used by `make test-sim`. */
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "pz.h"
#include "raft.h"
#include "raft_codec.h"

#ifndef RAFT_SIM_MAIN
#include "test.h"
#endif

#define SIM_MAXN 5
#define TICK_MS 10

enum ev_type {
    EV_TICK,
    EV_DELIVER,
    EV_PERSIST,
    EV_RESTART,
    EV_CRASH,
    EV_CHAOS,
    EV_CLIENT,
    EV_SNAP_DONE, /* a local snapshot file is durable */
    EV_XFER,      /* a snapshot transfer reaches its receiver */
    EV_REPORT,    /* the sender's transport reports a transfer's outcome */
};

/* A snapshot file: the state machine (a digest) and its meta. */
struct term_leader {
    uint64_t term, id; /* a term and its leader */
};

struct sim_snapshot {
    uint64_t index;        /* last index covered, 0: none */
    uint64_t term;         /* its term */
    struct raft_conf conf; /* configuration as of index */
    uint64_t digest;       /* state machine: chain of entries 1..index */
};

struct event {
    uint64_t time;            /* ms */
    uint64_t seq;             /* tie breaker: FIFO among equal times */
    int type;                 /* enum ev_type */
    int node;                 /* node index 1..n */
    uint64_t epoch;           /* node incarnation the event belongs to */
    struct raft_msg m;        /* EV_DELIVER, EV_XFER: deep copy */
    struct sim_snapshot snap; /* EV_SNAP_DONE, EV_XFER: the file */
    int peer;                 /* EV_XFER: sender; EV_REPORT: receiver */
    uint64_t peer_epoch;      /* EV_XFER: sender's incarnation */
    bool ok;                  /* EV_REPORT: outcome */
    bool report;              /* EV_XFER: the sender hears of delivery */
};

#define SIM_RX_FILES 4 /* snapshot files a node keeps received */

struct mirror {
    uint64_t term;       /* term of the entry */
    const uint8_t *data; /* payload pointer seen last (change detection) */
    size_t len;          /* payload length */
    uint8_t type;        /* entry type */
    uint64_t chain;      /* hash of the entry and all before it */
};

struct snode {
    uint64_t id;    /* 1..n */
    struct raft *r; /* NULL while down */
    uint64_t epoch; /* incarnation */
    bool founder;   /* bootstraps the initial cluster */
    /* durable storage */
    struct raft_hard_state hs; /* durable hard state */
    struct sim_snapshot dsnap; /* durable snapshot (index 0: none) */
    uint64_t dbase;            /* durable log starts after this index */
    struct raft_entry *log;    /* durable entries dbase+1..dbase+n_log */
    size_t n_log, cap_log;     /* used, allocated */
    /* the Readies being written, oldest first (pipelined: up to
     * max_readies of them), arrays owned by the core */
    struct raft_ready rds[RAFT_MAX_READIES];
    size_t n_rds;                /* taken and not advanced */
    uint64_t persist_at;         /* when the newest of them is durable */
    struct sim_snapshot install; /* rd.snapshot's file, if any */
    /* snapshot files received, not yet installed (lost in a crash) */
    struct sim_snapshot rx[SIM_RX_FILES]; /* ring of the latest */
    size_t n_rx;                          /* received so far */
    bool snap_busy; /* a local snapshot is being written */
    /* the state machine */
    uint64_t sm;              /* digest of what was applied (chain hash) */
    uint64_t applied;         /* last applied index */
    struct raft_conf sm_conf; /* configuration as of applied */
    /* checks */
    struct mirror *mir;      /* mirror of the core's log, by index-base-1 */
    size_t n_mir, cap_mir;   /* used, allocated */
    uint64_t mir_base;       /* index before mir[0] */
    uint64_t mir_base_chain; /* chain hash at mir_base */
    uint64_t commit;         /* last seen commit (this incarnation) */
    uint64_t lc_term;        /* term for which lc_checked holds */
    uint64_t lc_checked;     /* leader completeness checked up to */
    uint64_t checks;         /* check counter (full scans) */
    uint64_t marker_term;    /* liveness: term a marker was proposed */
    uint64_t marker_index;   /* liveness: its index */
    /* read leases: the largest lease_ns an earlier incarnation may still
     * have promised (durable, as the node driver keeps it), and when it
     * may be lowered to this incarnation's (by the node's clock, 0:
     * nothing to do) */
    uint64_t promised_ns;
    uint64_t promise_lower_at;
};

struct committed_rec {
    uint64_t chain;    /* chain hash of the committed entry */
    uint64_t term;     /* its term */
    uint64_t obs_term; /* term of the node that first saw it committed */
};

struct chain_slot {
    uint64_t index; /* 0: empty */
    uint64_t term;  /* entry term */
    uint64_t chain; /* chain hash */
};

struct read_rec {
    int node;          /* requesting node */
    uint64_t required; /* max commit known anywhere at request time */
    bool done;         /* answered or dropped */
};

struct sim {
    uint64_t seed;                     /* this run */
    uint64_t rng;                      /* simulator randomness */
    int n;                             /* nodes */
    uint64_t now;                      /* ms */
    uint64_t seq;                      /* event sequence */
    struct event **heap;               /* min-heap by (time, seq) */
    size_t n_heap, cap_heap;           /* used, allocated */
    struct snode nodes[SIM_MAXN + 1];  /* by id */
    int group[SIM_MAXN + 1];           /* partition group of each node */
    int loss_pct;                      /* message loss, percent */
    int dup_pct;                       /* duplication, percent */
    int max_delay;                     /* ms, usual delay bound */
    bool chaos;                        /* phase 1: faults on */
    int profile;                       /* 0 network-heavy, 1 crash-heavy,
                                          2 mixed, 3 leader churn */
    uint64_t chaos_gap;                /* ms between fault actions (max) */
    int crash_pct;                     /* share of crash actions */
    uint64_t restart_max;              /* ms before a crashed node restarts */
    uint64_t persist_max;              /* ms a write may take */
    int kill_leader_pct;               /* chance a new leader soon crashes */
    bool pre_vote, check_quorum;       /* core options of this run */
    bool lease;                        /* read leases (and boot refusal) */
    size_t max_inflight;               /* core option */
    size_t max_bytes;                  /* core option */
    int snap_pct;                      /* chance per Ready with applied
                                          entries to start a snapshot
                                          (0: never) */
    uint64_t snap_gap;                 /* entries since the last snapshot
                                          before another */
    uint64_t trail_max;                /* trailing entries kept, max */
    uint64_t snap_write_max;           /* ms a snapshot write may take */
    int xfer_fail_pct;                 /* transfers that fail */
    int xfer_silent_pct;               /* transfers lost without report */
    size_t max_readies;                /* Readies in flight per node */
    int take_pct;                      /* chance a pump takes a leader's
                                          messages mid-write */
    unsigned min_voters;               /* conf changes keep at least */
    int store_keep_pct;                /* compactions that keep the
                                          durable log (trailing below the
                                          snapshot on restart) */
    struct term_leader *lot;           /* every term's leader (terms
                                          past 2^61 after forged ones:
                                          not an array by term) */
    size_t n_lot, cap_lot;             /* used, allocated */
    struct committed_rec *committed;   /* by index-1 */
    size_t n_committed, cap_committed; /* used, allocated */
    struct chain_slot *chains;         /* open addressing (index, term) */
    size_t cap_chains, n_chains;       /* slots, used */
    struct read_rec *reads;            /* by ctx-1 */
    size_t n_reads, cap_reads;         /* used, allocated */
    uint64_t proposals;                /* counter for payloads */
    bool failed;                       /* an invariant broke */
    bool trace;                        /* print events */
    uint64_t events;                   /* processed */
    uint64_t stat_commits;             /* stats */
    uint64_t stat_reads;               /* confirmed reads */
    uint64_t stat_lease_reads;         /* of them, by a leader's lease */
    uint64_t stat_leaders;             /* leader elections seen */
    uint64_t stat_snaps;               /* local snapshots taken */
    uint64_t stat_installs;            /* snapshots installed */
    uint64_t forge_rng;                /* forged messages' randomness (its
                                          own, so seeds replay as before) */
    uint64_t stat_forged;              /* forged messages refused */
    uint64_t stat_forged_terms;        /* forged terms taken */
    uint64_t stat_past_bound;          /* leaders elected past 2^61 */
    uint64_t stat_pipelined;           /* Readies taken behind others */
    /* links cut one way: cut[a][b] drops what a sends to b */
    bool cut[SIM_MAXN + 1][SIM_MAXN + 1];
    uint64_t paused_until[SIM_MAXN + 1]; /* a paused process runs again */
    uint64_t tick_ms[SIM_MAXN + 1];      /* each node's tick, sim ms */
    /* Each node's clock (cfg.clock) runs at the rate of its ticks: a tick
     * is TICK_MS of its own time. It read clock_base ns at sim time
     * clock_from, and carries on across restarts (CLOCK_MONOTONIC); the
     * nodes' clocks start far apart. */
    uint64_t clock_base[SIM_MAXN + 1];
    uint64_t clock_from[SIM_MAXN + 1];
    struct sim_clock {
        struct sim *s;
        int id;
    } clocks[SIM_MAXN + 1];              /* cfg.clock_arg */
    bool vary_timings;                   /* election timeouts per
                                            incarnation: 5 to 10 ticks or
                                            25 to 40 */
    int election_ticks[SIM_MAXN + 1];    /* each incarnation's */
    bool shortest[SIM_MAXN + 1];         /* the next one: 5 ticks */
    uint64_t quick_until;                /* no quick restart before */
    uint64_t quiet_until;                /* no proposals before */
    int stale_y;                         /* to cut from quick_leader once
                                            its log is as long */
    uint64_t isolate_at;                 /* then cut quick_leader off */
    int quick_leader;                    /* the leader it cut off */
    uint64_t codec_rng;                  /* how frames are split (its own
                                            stream: events stay as they
                                            were) */
    uint64_t stat_frames;                /* messages through the codec */
    uint64_t stat_damaged;               /* frames damaged and refused */
    struct pz_buf codec_buf;             /* frames are encoded here */
    struct raft_frame_parser codec_fp;   /* and parsed by this one */
    uint64_t stat_pauses;                /* process pauses */
    uint64_t stat_blackouts;             /* all nodes down at once */
    uint64_t stat_oneway;                /* links cut one way */
    uint64_t stat_bridges;               /* bridge partitions */
    uint64_t stat_follower_props;        /* proposals refused by
                                            non-leaders */
    uint64_t stat_stale;                 /* stale copies delivered late */
};

static volatile sig_atomic_t cur_seed_for_signal;

static void sim_fail(struct sim *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void sim_fail(struct sim *s, const char *fmt, ...)
{
    if (s->failed)
        return;
    s->failed = true;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr,
            "SIM FAILURE seed=%" PRIu64 " n=%d t=%" PRIu64 "ms: ", s->seed,
            s->n, s->now);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr,
            "\n  reproduce: SIM_SEED=%" PRIu64 " SIM_TRACE=1 "
            "tests/unit/raft-sim\n",
            s->seed);
}

static void trace(struct sim *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void trace(struct sim *s, const char *fmt, ...)
{
    if (!s->trace)
        return;
    va_list ap;
    va_start(ap, fmt);
    printf("%6" PRIu64 " ", s->now);
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
}

static uint64_t rnd(struct sim *s, uint64_t n)
{
    return n ? pz_rand_next(&s->rng) % n : 0;
}

static bool chance(struct sim *s, int pct)
{
    return (int)rnd(s, 100) < pct;
}

/* --- event heap ----------------------------------------------------------- */

static bool ev_less(const struct event *a, const struct event *b)
{
    return a->time < b->time || (a->time == b->time && a->seq < b->seq);
}

static void heap_push(struct sim *s, struct event *e)
{
    if (s->n_heap == s->cap_heap) {
        s->cap_heap = s->cap_heap ? s->cap_heap * 2 : 256;
        s->heap = pz_realloc(s->heap, s->cap_heap * sizeof *s->heap);
    }
    size_t i = s->n_heap++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!ev_less(e, s->heap[p]))
            break;
        s->heap[i] = s->heap[p];
        i = p;
    }
    s->heap[i] = e;
}

static struct event *heap_pop(struct sim *s)
{
    if (s->n_heap == 0)
        return NULL;
    struct event *top = s->heap[0];
    struct event *last = s->heap[--s->n_heap];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        const struct event *best = last;
        if (l < s->n_heap && ev_less(s->heap[l], best)) {
            m = l;
            best = s->heap[l];
        }
        if (r < s->n_heap && ev_less(s->heap[r], best))
            m = r;
        if (m == i)
            break;
        s->heap[i] = s->heap[m];
        i = m;
    }
    if (s->n_heap > 0)
        s->heap[i] = last;
    return top;
}

static struct event *ev_new(struct sim *s, int type, int node, uint64_t delay)
{
    struct event *e = pz_calloc(1, sizeof *e);
    e->time = s->now + delay;
    e->seq = s->seq++;
    e->type = type;
    e->node = node;
    if (node > 0)
        e->epoch = s->nodes[node].epoch;
    return e;
}

static void msg_deep_copy(struct raft_msg *dst, const struct raft_msg *src)
{
    *dst = *src;
    if (src->n_entries == 0) {
        dst->entries = NULL;
        return;
    }
    dst->entries = pz_malloc(src->n_entries * sizeof *dst->entries);
    for (size_t i = 0; i < src->n_entries; i++) {
        dst->entries[i] = src->entries[i];
        dst->entries[i].data =
            src->entries[i].len
                ? pz_memdup(src->entries[i].data, src->entries[i].len)
                : NULL;
    }
}

static void msg_deep_free(struct raft_msg *m)
{
    for (size_t i = 0; i < m->n_entries; i++)
        pz_free(m->entries[i].data);
    pz_free(m->entries);
}

static void ssnap_free(struct sim_snapshot *f)
{
    raft_conf_free(&f->conf);
    memset(f, 0, sizeof *f);
}

static void ssnap_copy(struct sim_snapshot *dst, const struct sim_snapshot *src)
{
    if (dst == src)
        return;
    dst->index = src->index;
    dst->term = src->term;
    dst->digest = src->digest;
    raft_conf_copy(&dst->conf, &src->conf);
}

static bool conf_equal(const struct raft_conf *a, const struct raft_conf *b)
{
    if (a->n != b->n)
        return false;
    for (size_t i = 0; i < a->n; i++)
        if (a->servers[i].id != b->servers[i].id ||
            a->servers[i].voter != b->servers[i].voter ||
            strcmp(a->servers[i].meta, b->servers[i].meta) != 0)
            return false;
    return true;
}

static void ev_free(struct event *e)
{
    if (e->type == EV_DELIVER || e->type == EV_XFER)
        msg_deep_free(&e->m);
    ssnap_free(&e->snap);
    pz_free(e);
}

/* --- network -------------------------------------------------------------- */

static bool linked(const struct sim *s, uint64_t a, uint64_t b)
{
    return s->group[a] == s->group[b] && !s->cut[a][b];
}

static bool msg_equal(const struct raft_msg *a, const struct raft_msg *b)
{
    if (a->type != b->type || a->reject != b->reject ||
        a->transfer != b->transfer || a->from != b->from || a->to != b->to ||
        a->term != b->term || a->log_term != b->log_term ||
        a->index != b->index || a->commit != b->commit ||
        a->reject_hint != b->reject_hint || a->context != b->context ||
        a->lease_ns != b->lease_ns || a->n_entries != b->n_entries ||
        a->snap_index != b->snap_index || a->snap_term != b->snap_term)
        return false;
    for (size_t i = 0; i < a->n_entries; i++) {
        const struct raft_entry *x = &a->entries[i], *y = &b->entries[i];
        if (x->term != y->term || x->index != y->index || x->type != y->type ||
            x->len != y->len ||
            (x->len > 0 && memcmp(x->data, y->data, x->len) != 0))
            return false;
    }
    return true;
}

/* What the peer link does to a message: encode it as a frame
 * (src/raft_codec.c) sealed with its checksum, cut the bytes into random
 * pieces for the frame parser, decode the body. The receiver gets the
 * decoded message, which must equal what was sent. Under chaos a frame
 * is sometimes damaged on the way (1 to 3 bits flipped anywhere: length,
 * body, checksum); the parser must then refuse it, and the message is
 * lost (the real link closes and reconnects). Returns false when nothing
 * is delivered. */
static bool codec_copy(struct sim *s, struct raft_msg *dst,
                       const struct raft_msg *m)
{
    struct pz_buf b = s->codec_buf;
    pz_buf_reset(&b);
    int rc = raft_codec_encode_msg(&b, m, RAFT_FRAME_MAX);
    if (rc == 0)
        raft_codec_seal(&b, 0);
    bool damaged = false;
    if (rc == 0 && s->chaos && pz_rand_next(&s->codec_rng) % 200 == 0) {
        int nbits = 1 + (int)(pz_rand_next(&s->codec_rng) % 3);
        uint64_t bits[3];
        for (int i = 0; i < nbits; i++) {
            /* distinct bits: flipping one twice would undo it */
            bool again;
            do {
                bits[i] = pz_rand_next(&s->codec_rng) % ((uint64_t)b.len * 8);
                again = false;
                for (int j = 0; j < i; j++)
                    again |= bits[j] == bits[i];
            } while (again);
            b.data[bits[i] / 8] ^= (char)(1u << (bits[i] % 8));
        }
        damaged = true;
        s->stat_damaged++;
    }
    struct raft_frame_parser p = s->codec_fp;
    p.crc = true;
    const uint8_t *data = (const uint8_t *)b.data, *body = NULL;
    size_t off = 0, blen = 0;
    int st = RAFT_FRAME_NEED_MORE;
    while (rc == 0 && off < b.len && st == RAFT_FRAME_NEED_MORE) {
        size_t piece = 1 + (size_t)(pz_rand_next(&s->codec_rng) %
                                    (uint64_t)(b.len - off));
        if (pz_rand_next(&s->codec_rng) % 2)
            piece = b.len - off; /* mostly whole frames */
        size_t used = 0;
        st = raft_frame_parser_feed(&p, data + off, piece, &used, &body,
                                    &blen);
        off += used;
    }
    struct raft_decoded d = {0};
    if (damaged) {
        if (st == RAFT_FRAME_DONE)
            sim_fail(s, "a damaged frame (%s from %" PRIu64 " to %" PRIu64
                        ") passed the checksum",
                     raft_msg_type_name(m->type), m->from, m->to);
        raft_frame_parser_free(&p);
        raft_frame_parser_init(&p, RAFT_FRAME_MAX);
        s->codec_buf = b;
        s->codec_fp = p;
        return false;
    }
    if (rc != 0 || st != RAFT_FRAME_DONE || off != b.len ||
        raft_codec_decode(body, blen, &d) != 0 ||
        d.kind != RAFT_FRAME_MESSAGE || !msg_equal(&d.msg, m)) {
        sim_fail(s, "%s from %" PRIu64 " to %" PRIu64 " did not survive "
                    "the codec (encode %d, parse %d)",
                 raft_msg_type_name(m->type), m->from, m->to, rc, st);
        msg_deep_copy(dst, m);
    } else {
        msg_deep_copy(dst, &d.msg);
        s->stat_frames++;
    }
    raft_decoded_free(&d);
    if (st != RAFT_FRAME_DONE) { /* a broken frame leaves the parser so */
        raft_frame_parser_free(&p);
        raft_frame_parser_init(&p, RAFT_FRAME_MAX);
    }
    s->codec_buf = b; /* buffers kept for the next message */
    s->codec_fp = p;
    return true;
}

static uint64_t net_delay(struct sim *s)
{
    if (s->chaos && chance(s, 3))
        return 1 + rnd(s, 150); /* a slow path: reorders across terms */
    return 1 + rnd(s, (uint64_t)s->max_delay);
}

static void net_send(struct sim *s, const struct raft_msg *m)
{
    if (m->to < 1 || m->to > (uint64_t)s->n || m->to == m->from)
        return;
    if (!linked(s, m->from, m->to))
        return;
    int copies = 1;
    if (s->chaos && chance(s, s->loss_pct))
        copies = 0;
    else if (s->chaos && chance(s, s->dup_pct))
        copies = 2;
    for (int i = 0; i < copies; i++) {
        struct event *e = ev_new(s, EV_DELIVER, (int)m->to, net_delay(s));
        if (codec_copy(s, &e->m, m))
            heap_push(s, e);
        else
            pz_free(e);
    }
    bool vote = m->type == RAFT_MSG_VOTE || m->type == RAFT_MSG_PREVOTE;
    if (s->chaos && copies > 0 && chance(s, vote ? 20 : 2)) {
        /* A stale copy arrives much later (held in a send queue across a
         * reconnect): requests and answers of terms long gone reach
         * nodes that moved on. Vote requests get it most: a vote of an
         * old term granted by a node of a newer one breaks Election
         * Safety, and elections are rare events. */
        struct event *e =
            ev_new(s, EV_DELIVER, (int)m->to, 100 + rnd(s, 500));
        if (codec_copy(s, &e->m, m)) {
            heap_push(s, e);
            s->stat_stale++;
        } else {
            pz_free(e);
        }
    }
}

/* --- invariants ----------------------------------------------------------- */

static uint64_t entry_chain(uint64_t prev, const struct raft_entry *e)
{
    uint64_t h[4] = {prev, e->term, e->index, e->type};
    uint64_t x = pz_hash(h, sizeof h, 0x5eed);
    return x ^ pz_hash(e->data ? (const void *)e->data : (const void *)"",
                       e->len, x);
}

static size_t slot_hash(uint64_t index, uint64_t term)
{
    return (size_t)(index * 0x9E3779B97F4A7C15ull ^
                    term * 0xC2B2AE3D27D4EB4Full);
}

static void chains_grow(struct sim *s)
{
    size_t ncap = s->cap_chains ? s->cap_chains * 2 : 1024;
    struct chain_slot *n = pz_calloc(ncap, sizeof *n);
    for (size_t i = 0; i < s->cap_chains; i++) {
        struct chain_slot *c = &s->chains[i];
        if (c->index == 0)
            continue;
        size_t h = slot_hash(c->index, c->term);
        for (size_t k = h & (ncap - 1);; k = (k + 1) & (ncap - 1)) {
            if (n[k].index == 0) {
                n[k] = *c;
                break;
            }
        }
    }
    pz_free(s->chains);
    s->chains = n;
    s->cap_chains = ncap;
}

/* Log Matching: the first time (index, term) is seen its chain is recorded;
 * any later sighting anywhere must have the same chain. */
static void check_chain(struct sim *s, int node, uint64_t index, uint64_t term,
                        uint64_t chain)
{
    if ((s->n_chains + 1) * 2 > s->cap_chains)
        chains_grow(s);
    size_t h = slot_hash(index, term);
    for (size_t k = h & (s->cap_chains - 1);;
         k = (k + 1) & (s->cap_chains - 1)) {
        struct chain_slot *c = &s->chains[k];
        if (c->index == 0) {
            c->index = index;
            c->term = term;
            c->chain = chain;
            s->n_chains++;
            return;
        }
        if (c->index == index && c->term == term) {
            if (c->chain != chain)
                sim_fail(s,
                         "log matching: node %d entry %" PRIu64 " term %" PRIu64
                         " differs from another log's",
                         node, index, term);
            return;
        }
    }
}

static struct mirror *mir_at(struct snode *sn, uint64_t index)
{
    pz_assert(index > sn->mir_base && index <= sn->mir_base + sn->n_mir);
    return &sn->mir[index - sn->mir_base - 1];
}

static uint64_t mir_chain(struct snode *sn, uint64_t index)
{
    return index == sn->mir_base ? sn->mir_base_chain
                                 : mir_at(sn, index)->chain;
}

/* The core's log now starts after base (compaction, snapshot install or
 * restart): entries up to base are in its snapshot, so they must be
 * committed, and the boundary's term must be the committed one. */
static void rebase_mirror(struct sim *s, struct snode *sn, uint64_t base,
                          uint64_t base_term)
{
    if (base < sn->mir_base) {
        sim_fail(s, "node %d: log start went back %" PRIu64 " -> %" PRIu64,
                 (int)sn->id, sn->mir_base, base);
        return;
    }
    if (base > s->n_committed) {
        sim_fail(s,
                 "node %d: log compacted up to %" PRIu64 " but only %zu "
                 "entries are committed",
                 (int)sn->id, base, s->n_committed);
        return;
    }
    const struct committed_rec *c = &s->committed[base - 1];
    if (c->term != base_term) {
        sim_fail(s,
                 "node %d: snapshot/compaction boundary %" PRIu64
                 " has term %" PRIu64 ", committed entry has %" PRIu64,
                 (int)sn->id, base, base_term, c->term);
        return;
    }
    uint64_t k = base - sn->mir_base;
    if (k <= sn->n_mir) {
        if (mir_at(sn, base)->term == base_term &&
            mir_at(sn, base)->chain != c->chain)
            sim_fail(s,
                     "node %d: compacted entry %" PRIu64 " differs from "
                     "the committed one",
                     (int)sn->id, base);
        memmove(sn->mir, sn->mir + k, (sn->n_mir - k) * sizeof *sn->mir);
        sn->n_mir -= k;
    } else {
        sn->n_mir = 0;
    }
    sn->mir_base = base;
    sn->mir_base_chain = c->chain;
}

/* Refreshes the mirror of node's log; full scan sometimes, else from its
 * commit index (committed entries never change). */
static void update_mirror(struct sim *s, struct snode *sn,
                          const struct raft_status *st)
{
    uint64_t base = st->first_index - 1;
    if (base != sn->mir_base) {
        rebase_mirror(s, sn, base, st->compact_term);
        if (s->failed)
            return;
    }
    uint64_t last = raft_last_index(sn->r);
    uint64_t mir_last = sn->mir_base + sn->n_mir;
    uint64_t from = base + 1;
    bool full = ++sn->checks % 16 == 0;
    if (!full)
        from = PZ_MAX(base + 1, PZ_MIN(sn->commit, mir_last) + 1);
    if (from > last + 1)
        from = last + 1;
    uint64_t i = from;
    for (; i <= last && i <= mir_last; i++) {
        const struct raft_entry *e = raft_log_get(sn->r, i);
        const struct mirror *m = mir_at(sn, i);
        if (e->term != m->term || e->data != m->data || e->len != m->len ||
            e->type != m->type)
            break;
    }
    if (full && i <= mir_last && i <= sn->commit)
        sim_fail(s, "node %d: committed entry %" PRIu64 " changed", (int)sn->id,
                 i);
    if (sn->cap_mir < last - base) {
        sn->cap_mir = last - base + 64;
        sn->mir = pz_realloc(sn->mir, sn->cap_mir * sizeof *sn->mir);
    }
    sn->n_mir = last - base;
    for (; i <= last; i++) {
        const struct raft_entry *e = raft_log_get(sn->r, i);
        pz_assert(e != NULL && e->index == i);
        uint64_t prev = mir_chain(sn, i - 1);
        struct mirror *m = mir_at(sn, i);
        m->term = e->term;
        m->data = e->data;
        m->len = e->len;
        m->type = e->type;
        m->chain = entry_chain(prev, e);
        check_chain(s, (int)sn->id, i, e->term, m->chain);
    }
}

static void note_committed(struct sim *s, int node, uint64_t index,
                           uint64_t chain, uint64_t term, uint64_t obs_term)
{
    if (index <= s->n_committed) {
        if (s->committed[index - 1].chain != chain)
            sim_fail(s,
                     "state machine safety: node %d commits a different "
                     "entry %" PRIu64 " (term %" PRIu64 " vs %" PRIu64 ")",
                     node, index, term, s->committed[index - 1].term);
        return;
    }
    if (index != s->n_committed + 1) {
        sim_fail(s, "commit gap at %" PRIu64, index);
        return;
    }
    if (s->n_committed == s->cap_committed) {
        s->cap_committed = s->cap_committed ? s->cap_committed * 2 : 256;
        s->committed =
            pz_realloc(s->committed, s->cap_committed * sizeof *s->committed);
    }
    s->committed[s->n_committed++] = (struct committed_rec){
        .chain = chain, .term = term, .obs_term = obs_term};
    s->stat_commits++;
}

static void crash_and_restart(struct sim *s, int id);
static void quick_restart_behind_leader(struct sim *s, int l);
static void stale_candidate_behind_leader(struct sim *s, int l);

/* The leader recorded for term (0 if none yet), NULL if none and not
 * add; with add, a slot is made. Newest terms last: searched backwards. */
static uint64_t *leader_of_term(struct sim *s, uint64_t term, bool add)
{
    for (size_t i = s->n_lot; i-- > 0;)
        if (s->lot[i].term == term)
            return &s->lot[i].id;
    if (!add)
        return NULL;
    if (s->n_lot == s->cap_lot) {
        s->cap_lot = s->cap_lot * 2 + 16;
        s->lot = pz_realloc(s->lot, s->cap_lot * sizeof *s->lot);
    }
    s->lot[s->n_lot] = (struct term_leader){.term = term, .id = 0};
    return &s->lot[s->n_lot++].id;
}

static void check_node(struct sim *s, int id)
{
    struct snode *sn = &s->nodes[id];
    if (sn->r == NULL || s->failed)
        return;
    struct raft_status st;
    raft_status(sn->r, &st);
    update_mirror(s, sn, &st);
    if (s->failed)
        return;
    if (st.commit > st.last_index)
        sim_fail(s, "node %d commit %" PRIu64 " > last %" PRIu64, id, st.commit,
                 st.last_index);
    if (st.persisted_index > st.last_index)
        sim_fail(s, "node %d persisted > last", id);
    if (st.commit < sn->commit)
        sim_fail(s, "node %d commit went back %" PRIu64 " -> %" PRIu64, id,
                 sn->commit, st.commit);
    /* Register newly committed entries (and check them). Those in the
     * snapshot were checked when the mirror was rebased. */
    for (uint64_t i = PZ_MAX(sn->commit, sn->mir_base) + 1;
         i <= st.commit && !s->failed; i++)
        note_committed(s, id, i, mir_at(sn, i)->chain, mir_at(sn, i)->term,
                       st.term);
    if (st.commit > sn->commit)
        sn->commit = st.commit;
    /* Election Safety. */
    if (st.role == RAFT_LEADER) {
        uint64_t *l = leader_of_term(s, st.term, true);
        if (*l == 0) {
            *l = sn->id;
            s->stat_leaders++;
            if (st.term >= RAFT_TERM_BOUND)
                s->stat_past_bound++;
            trace(s, "node %d leader of term %" PRIu64, id, st.term);
            /* Kill some new leaders while their first entries are in
             * flight: leaves entries of older terms on minorities, the
             * material of Figure 3.7. */
            if (s->chaos && chance(s, s->kill_leader_pct))
                heap_push(s, ev_new(s, EV_CRASH, id, rnd(s, 30)));
        } else if (*l != sn->id) {
            sim_fail(s,
                     "election safety: term %" PRIu64 " has leaders %" PRIu64
                     " and %d",
                     st.term, *l, id);
        }
        /* Leader Completeness. */
        if (sn->lc_term != st.term) {
            sn->lc_term = st.term;
            sn->lc_checked = 0;
        }
        for (uint64_t i = PZ_MAX(sn->lc_checked, sn->mir_base) + 1;
             i <= s->n_committed; i++) {
            const struct committed_rec *c = &s->committed[i - 1];
            if (c->obs_term < st.term && (i > sn->mir_base + sn->n_mir ||
                                          mir_at(sn, i)->chain != c->chain)) {
                sim_fail(s,
                         "leader completeness: leader %d of term %" PRIu64
                         " lacks committed entry %" PRIu64,
                         id, st.term, i);
                break;
            }
            sn->lc_checked = i;
        }
    }
}

/* --- node I/O ------------------------------------------------------------- */

static uint64_t dlast(const struct snode *sn)
{
    return sn->dbase + sn->n_log;
}

static void dlog_pop(struct snode *sn)
{
    sn->n_log--;
    pz_free(sn->log[sn->n_log].data);
}

/* Drops durable entries <= upto (the store's compaction). */
static void dlog_compact(struct snode *sn, uint64_t upto)
{
    if (upto <= sn->dbase)
        return;
    size_t k = (size_t)PZ_MIN(upto - sn->dbase, (uint64_t)sn->n_log);
    for (size_t i = 0; i < k; i++)
        pz_free(sn->log[i].data);
    memmove(sn->log, sn->log + k, (sn->n_log - k) * sizeof *sn->log);
    sn->n_log -= k;
    sn->dbase = upto;
}

/* The durable entry at index, or NULL. */
static const struct raft_entry *dlog_at(const struct snode *sn, uint64_t index)
{
    if (index <= sn->dbase || index > dlast(sn))
        return NULL;
    return &sn->log[index - sn->dbase - 1];
}

/* One Ready's transaction: an installed snapshot replaces the whole log,
 * then the hard state, then the entries (after deleting those >= the
 * first). */
static void store_write(struct sim *s, struct snode *sn,
                        const struct raft_ready *rd)
{
    if (rd->snapshot != NULL) {
        ssnap_copy(&sn->dsnap, &sn->install);
        while (sn->n_log > 0)
            dlog_pop(sn);
        sn->dbase = rd->snapshot->index;
    }
    if (rd->hs_changed)
        sn->hs = rd->hs;
    for (size_t i = 0; i < rd->n_entries; i++) {
        const struct raft_entry *e = &rd->entries[i];
        if (e->index <= sn->dbase) {
            sim_fail(s,
                     "node %d writes entry %" PRIu64 " at or below its "
                     "compacted log (%" PRIu64 ")",
                     (int)sn->id, e->index, sn->dbase);
            return;
        }
        while (dlast(sn) >= e->index)
            dlog_pop(sn);
        pz_assert(dlast(sn) + 1 == e->index);
        if (sn->n_log == sn->cap_log) {
            sn->cap_log = sn->cap_log ? sn->cap_log * 2 : 64;
            sn->log = pz_realloc(sn->log, sn->cap_log * sizeof *sn->log);
        }
        sn->log[sn->n_log] = *e;
        sn->log[sn->n_log].data = e->len ? pz_memdup(e->data, e->len) : NULL;
        sn->n_log++;
    }
}

static void apply_entries(struct sim *s, struct snode *sn,
                          const struct raft_ready *rd)
{
    struct raft_status st;
    raft_status(sn->r, &st);
    for (size_t i = 0; i < rd->n_committed && !s->failed; i++) {
        const struct raft_entry *e = &rd->committed[i];
        if (e->index != sn->applied + 1) {
            sim_fail(s, "node %d applies %" PRIu64 " after %" PRIu64,
                     (int)sn->id, e->index, sn->applied);
            return;
        }
        if (e->index <= sn->mir_base || e->index > sn->mir_base + sn->n_mir ||
            mir_at(sn, e->index)->term != e->term) {
            sim_fail(s, "node %d applies an entry not in its log", (int)sn->id);
            return;
        }
        const struct raft_entry *d = dlog_at(sn, e->index);
        if (d == NULL || d->term != e->term) {
            sim_fail(s,
                     "node %d applies entry %" PRIu64 " that is not "
                     "durable locally",
                     (int)sn->id, e->index);
            return;
        }
        uint64_t chain = mir_at(sn, e->index)->chain;
        if (entry_chain(mir_chain(sn, e->index - 1), e) != chain) {
            sim_fail(s,
                     "node %d applied entry %" PRIu64 " differs from its "
                     "log",
                     (int)sn->id, e->index);
            return;
        }
        /* The state machine: everything applied so far, chained. */
        sn->sm = entry_chain(sn->sm, e);
        if (e->type == RAFT_ENTRY_CONF) {
            raft_conf_free(&sn->sm_conf);
            pz_assert(raft_conf_decode(e->data, e->len, &sn->sm_conf) == 0);
        }
        if (sn->sm != chain) {
            sim_fail(s,
                     "node %d: state machine after %" PRIu64 " differs "
                     "from its log's history",
                     (int)sn->id, e->index);
            return;
        }
        note_committed(s, (int)sn->id, e->index, sn->sm, e->term, st.term);
        sn->applied = e->index;
    }
}

static void check_reads(struct sim *s, struct snode *sn,
                        const struct raft_ready *rd)
{
    for (size_t i = 0; i < rd->n_read_states; i++) {
        uint64_t ctx = rd->read_states[i].ctx;
        if (ctx == 0 || ctx > s->n_reads) {
            sim_fail(s, "unknown read ctx %" PRIu64, ctx);
            return;
        }
        struct read_rec *rr = &s->reads[ctx - 1];
        if (rr->node != (int)sn->id || rr->done) {
            sim_fail(s, "read %" PRIu64 " answered twice or elsewhere", ctx);
            return;
        }
        rr->done = true;
        s->stat_reads++;
        if (rd->read_states[i].index < rr->required)
            sim_fail(s,
                     "linearizability: read %" PRIu64 " got index %" PRIu64
                     " < %" PRIu64 " committed before it was asked",
                     ctx, rd->read_states[i].index, rr->required);
    }
    for (size_t i = 0; i < rd->n_dropped_reads; i++) {
        uint64_t ctx = rd->dropped_reads[i];
        if (ctx == 0 || ctx > s->n_reads || s->reads[ctx - 1].done)
            sim_fail(s, "bad dropped read %" PRIu64, ctx);
        else
            s->reads[ctx - 1].done = true;
    }
}

/* The persistence contract, checked on every message as it leaves: an
 * acknowledgement covers only durable entries, a granted vote is durable,
 * and a (pre-)vote request never claims a log we do not have durably. */
static void push_report(struct sim *s, int leader, int to, bool ok,
                        uint64_t delay)
{
    struct event *e = ev_new(s, EV_REPORT, leader, delay);
    e->peer = to;
    e->ok = ok;
    heap_push(s, e);
}

/* The transport streams the durable snapshot file named by an
 * INSTALL_SNAPSHOT to its receiver, which hands the message to its core
 * once the whole file is there. It may fail (reported), or vanish. */
static void start_xfer(struct sim *s, struct snode *sn,
                       const struct raft_msg *m)
{
    if (m->snap_index == 0 || m->snap_index != sn->dsnap.index ||
        m->snap_term != sn->dsnap.term) {
        sim_fail(s,
                 "node %d sends snapshot %" PRIu64 "/%" PRIu64
                 ", its durable one is %" PRIu64 "/%" PRIu64,
                 (int)sn->id, m->snap_index, m->snap_term, sn->dsnap.index,
                 sn->dsnap.term);
        return;
    }
    struct raft_conf c;
    if (m->n_entries != 1 ||
        raft_conf_decode(m->entries[0].data, m->entries[0].len, &c) != 0) {
        sim_fail(s, "node %d: INSTALL_SNAPSHOT without a conf", (int)sn->id);
        return;
    }
    bool same = conf_equal(&c, &sn->dsnap.conf);
    raft_conf_free(&c);
    if (!same) {
        sim_fail(s,
                 "node %d: INSTALL_SNAPSHOT conf differs from the "
                 "snapshot file's",
                 (int)sn->id);
        return;
    }
    int to = (int)m->to;
    if (to < 1 || to > s->n || to == (int)sn->id)
        return;
    if (!linked(s, m->from, m->to)) {
        trace(s, "snapshot %" PRIu64 " %d->%d: no connection", m->snap_index,
              (int)sn->id, to);
        push_report(s, (int)sn->id, to, false, 1 + rnd(s, 20));
        return;
    }
    if (s->chaos && chance(s, s->xfer_silent_pct)) {
        trace(s, "snapshot %" PRIu64 " %d->%d: vanishes", m->snap_index,
              (int)sn->id, to);
        return;
    }
    if (s->chaos && chance(s, s->xfer_fail_pct)) {
        trace(s, "snapshot %" PRIu64 " %d->%d: fails", m->snap_index,
              (int)sn->id, to);
        push_report(s, (int)sn->id, to, false, 1 + rnd(s, 100));
        return;
    }
    struct event *e = ev_new(s, EV_XFER, to, 5 + rnd(s, s->chaos ? 150 : 30));
    msg_deep_copy(&e->m, m);
    ssnap_copy(&e->snap, &sn->dsnap);
    e->peer = (int)sn->id;
    e->peer_epoch = sn->epoch;
    e->report = !(s->chaos && chance(s, 5));
    heap_push(s, e);
    trace(s, "snapshot %" PRIu64 " %d->%d: streaming", m->snap_index,
          (int)sn->id, to);
}

/* An acknowledgement of index i to the leader of term T claims that our
 * durable log (snapshot included) matches that leader's log up to i: if
 * it still leads in T, the terms at i must agree (Log Matching, checked
 * globally, does the rest). */
static void check_ack(struct sim *s, struct snode *sn, const struct raft_msg *m)
{
    uint64_t i = m->index;
    if (i == 0 || m->to < 1 || m->to > (uint64_t)s->n)
        return;
    uint64_t dterm;
    const struct raft_entry *d = dlog_at(sn, i);
    if (d != NULL)
        dterm = d->term;
    else if (i == sn->dsnap.index)
        dterm = sn->dsnap.term;
    else if (i < sn->dsnap.index)
        dterm = s->committed[i - 1].term; /* in the snapshot */
    else
        return;
    struct snode *ln = &s->nodes[m->to];
    const uint64_t *lt = leader_of_term(s, m->term, false);
    if (ln->r == NULL || lt == NULL || *lt != m->to)
        return;
    struct raft_status st;
    raft_status(ln->r, &st);
    if (st.role != RAFT_LEADER || st.term != m->term)
        return;
    uint64_t lterm;
    if (i <= ln->mir_base)
        lterm = s->committed[i - 1].term;
    else if (i <= ln->mir_base + ln->n_mir)
        lterm = mir_at(ln, i)->term;
    else
        lterm = 0;
    if (lterm != dterm)
        sim_fail(s,
                 "node %d acks index %" PRIu64 " (durable term %" PRIu64
                 ") to the leader of term %" PRIu64 ", which has term %" PRIu64
                 " there",
                 (int)sn->id, i, dterm, m->term, lterm);
}

/* The persistence contract, checked on every message as it leaves: an
 * acknowledgement covers only durable entries that agree with the
 * leader's, a granted vote is durable, and a (pre-)vote request never
 * claims a log we do not have durably. */
static void send_checked(struct sim *s, struct snode *sn,
                         const struct raft_msg *m)
{
    if (m->type == RAFT_MSG_APPEND_RESP && !m->reject) {
        if (m->index > dlast(sn))
            sim_fail(s,
                     "node %d acks index %" PRIu64 " with %" PRIu64
                     " entries durable",
                     (int)sn->id, m->index, dlast(sn));
        else
            check_ack(s, sn, m);
    }
    if (m->type == RAFT_MSG_VOTE_RESP && !m->reject &&
        !(sn->hs.term > m->term ||
          (sn->hs.term == m->term && sn->hs.vote == m->to)))
        sim_fail(
            s, "node %d grants a vote in term %" PRIu64 " that is not durable",
            (int)sn->id, m->term);
    if (m->type == RAFT_MSG_VOTE &&
        !(sn->hs.term >= m->term && m->index <= dlast(sn)))
        sim_fail(s,
                 "node %d asks for votes before its term/vote/log are "
                 "durable",
                 (int)sn->id);
    /* A leader speaks for a term only once it is durable: after a crash
     * it could otherwise lead the same term again with another log. */
    if ((m->type == RAFT_MSG_APPEND || m->type == RAFT_MSG_HEARTBEAT ||
         m->type == RAFT_MSG_TIMEOUT_NOW ||
         m->type == RAFT_MSG_INSTALL_SNAPSHOT) &&
        sn->hs.term < m->term)
        sim_fail(s,
                 "node %d sends %d in term %" PRIu64
                 " with term %" PRIu64 " durable",
                 (int)sn->id, m->type, m->term, sn->hs.term);
    if (m->type == RAFT_MSG_INSTALL_SNAPSHOT)
        start_xfer(s, sn, m);
    else
        net_send(s, m);
}

/* rd.snapshot: load the state machine from the received file. */
static void install_snapshot(struct sim *s, struct snode *sn,
                             const struct raft_ready *rd)
{
    const struct raft_snapshot_meta *snap = rd->snapshot;
    const struct sim_snapshot *f = NULL;
    for (size_t k = 0; k < SIM_RX_FILES && k < sn->n_rx; k++)
        if (sn->rx[k].index == snap->index && sn->rx[k].term == snap->term)
            f = &sn->rx[k];
    if (f == NULL) {
        sim_fail(s,
                 "node %d installs snapshot %" PRIu64 "/%" PRIu64
                 " it never received",
                 (int)sn->id, snap->index, snap->term);
        return;
    }
    if (!conf_equal(&f->conf, &snap->conf))
        sim_fail(s,
                 "node %d installs a snapshot with another conf than "
                 "its file's",
                 (int)sn->id);
    if (rd->n_committed > 0)
        sim_fail(s,
                 "node %d: a Ready installing a snapshot applies "
                 "entries",
                 (int)sn->id);
    if (rd->hs.commit < snap->index)
        sim_fail(s,
                 "node %d: commit %" PRIu64 " below the installed "
                 "snapshot",
                 (int)sn->id, rd->hs.commit);
    if (rd->n_entries > 0 && rd->entries[0].index != snap->index + 1)
        sim_fail(s,
                 "node %d: entries after an installed snapshot start at "
                 "%" PRIu64,
                 (int)sn->id, rd->entries[0].index);
    /* State machine safety across installs. */
    if (snap->index > s->n_committed ||
        s->committed[snap->index - 1].chain != f->digest)
        sim_fail(s,
                 "node %d installs a snapshot of %" PRIu64 " that "
                 "differs from the committed history",
                 (int)sn->id, snap->index);
    if (snap->index <= sn->applied)
        sim_fail(s,
                 "node %d installs snapshot %" PRIu64 " at or below "
                 "applied %" PRIu64,
                 (int)sn->id, snap->index, sn->applied);
    if (s->failed)
        return;
    ssnap_copy(&sn->install, f);
    sn->sm = f->digest;
    sn->applied = snap->index;
    raft_conf_copy(&sn->sm_conf, &f->conf);
    s->stat_installs++;
    trace(s, "node %d installs snapshot %" PRIu64 "/%" PRIu64, (int)sn->id,
          snap->index, snap->term);
}

/* Sometimes snapshot the state machine at the applied index; the write
 * completes later (EV_SNAP_DONE), unless the node crashes first. */
static void maybe_snapshot(struct sim *s, int id)
{
    struct snode *sn = &s->nodes[id];
    if (s->snap_pct == 0 || sn->snap_busy ||
        sn->applied < sn->dsnap.index + s->snap_gap || !chance(s, s->snap_pct))
        return;
    struct raft_snapshot_meta meta;
    int rc = raft_snapshot_meta_at(sn->r, sn->applied, &meta);
    if (rc != 0) {
        sim_fail(s, "node %d: no snapshot meta at applied %" PRIu64 ": %s", id,
                 sn->applied, pz_strerror(rc));
        return;
    }
    if (!conf_equal(&meta.conf, &sn->sm_conf))
        sim_fail(s,
                 "node %d: snapshot conf at %" PRIu64 " differs from "
                 "the applied one",
                 id, sn->applied);
    if (meta.term != s->committed[sn->applied - 1].term)
        sim_fail(s, "node %d: snapshot term at %" PRIu64 " is %" PRIu64, id,
                 sn->applied, meta.term);
    struct event *e =
        ev_new(s, EV_SNAP_DONE, id, rnd(s, s->snap_write_max + 1));
    e->snap.index = meta.index;
    e->snap.term = meta.term;
    e->snap.conf = meta.conf; /* taken over */
    e->snap.digest = sn->sm;
    heap_push(s, e);
    sn->snap_busy = true;
    trace(s, "node %d snapshots at %" PRIu64, id, meta.index);
}

/* The snapshot file is durable: compact the core, then the stored log. */
static void snap_done(struct sim *s, int id, const struct sim_snapshot *f)
{
    struct snode *sn = &s->nodes[id];
    sn->snap_busy = false;
    if (f->index > sn->dsnap.index)
        ssnap_copy(&sn->dsnap, f);
    uint64_t trailing = rnd(s, s->trail_max + 1);
    int rc = raft_compact(sn->r, f->index, trailing);
    if (rc == PZ_ECANCELED) {
        trace(s, "node %d snapshot %" PRIu64 " obsolete", id, f->index);
        return;
    }
    if (rc != 0) {
        sim_fail(s, "node %d: compact at %" PRIu64 ": %s", id, f->index,
                 pz_strerror(rc));
        return;
    }
    s->stat_snaps++;
    struct raft_status st;
    raft_status(sn->r, &st);
    if (st.snap_index != f->index || st.snap_term != f->term)
        sim_fail(s,
                 "node %d: snapshot point %" PRIu64 "/%" PRIu64
                 " after compacting at %" PRIu64 "/%" PRIu64,
                 id, st.snap_index, st.snap_term, f->index, f->term);
    uint64_t upto = st.first_index - 1;
    trace(s, "node %d compacts at %" PRIu64 ", log from %" PRIu64, id, f->index,
          upto + 1);
    if (upto > sn->dbase && !chance(s, s->store_keep_pct)) {
        const struct raft_entry *d = dlog_at(sn, upto);
        if (d == NULL || d->term != st.compact_term) {
            sim_fail(s,
                     "node %d: compaction point %" PRIu64 " is not "
                     "durable with term %" PRIu64,
                     id, upto, st.compact_term);
            return;
        }
        dlog_compact(sn, upto);
    }
}

static void pump(struct sim *s, int id)
{
    struct snode *sn = &s->nodes[id];
    if (sn->r != NULL && sn->n_rds > 0 && !s->failed &&
        chance(s, s->take_pct)) {
        const struct raft_msg *ms;
        size_t n = raft_take_msgs(sn->r, &ms);
        for (size_t i = 0; i < n && !s->failed; i++)
            send_checked(s, sn, &ms[i]);
    }
    bool quick = false; /* reads answered: a leader's lease is fresh */
    while (sn->r != NULL && !s->failed && raft_has_ready(sn->r)) {
        if (sn->n_rds >= s->max_readies) {
            sim_fail(s, "node %d: raft_has_ready with %zu Readies in flight",
                     id, sn->n_rds);
            return;
        }
        struct raft_ready *rd = &sn->rds[sn->n_rds];
        raft_ready(sn->r, rd);
        if (rd->snapshot != NULL)
            install_snapshot(s, sn, rd);
        apply_entries(s, sn, rd);
        check_reads(s, sn, rd);
        quick |= rd->n_read_states > 0;
        if (rd->n_committed > 0 && !s->failed)
            maybe_snapshot(s, id);
        for (size_t i = 0; i < rd->n_msgs; i++)
            send_checked(s, sn, &rd->msgs[i]);
        bool write = rd->hs_changed || rd->n_entries > 0 ||
                     rd->snapshot != NULL;
        if (write || sn->n_rds > 0) {
            /* Pipelined: durable in the order taken, so one with nothing
             * to write waits for those before it. */
            s->stat_pipelined += sn->n_rds > 0;
            sn->n_rds++;
            uint64_t lat = !write || chance(s, 20)
                               ? 0
                               : rnd(s, s->persist_max + 1);
            sn->persist_at = PZ_MAX(sn->persist_at, s->now + lat);
            heap_push(s, ev_new(s, EV_PERSIST, id, sn->persist_at - s->now));
        } else {
            for (size_t i = 0; i < rd->n_msgs_after_persist; i++)
                send_checked(s, sn, &rd->msgs_after_persist[i]);
            raft_advance(sn->r, rd);
        }
    }
    if (quick && sn->r != NULL && !s->failed && s->chaos && s->lease &&
        (s->vary_timings || !s->pre_vote) && s->now >= s->quick_until &&
        chance(s, 50)) {
        struct raft_status st;
        raft_status(sn->r, &st);
        if (st.role == RAFT_LEADER && s->vary_timings)
            quick_restart_behind_leader(s, id);
        else if (st.role == RAFT_LEADER)
            stale_candidate_behind_leader(s, id);
    }
}

static void persist_done(struct sim *s, int id)
{
    struct snode *sn = &s->nodes[id];
    pz_assert(sn->n_rds > 0);
    /* The oldest: each EV_PERSIST is due no earlier than the one before. */
    struct raft_ready rd = sn->rds[0];
    memmove(sn->rds, sn->rds + 1, --sn->n_rds * sizeof rd);
    store_write(s, sn, &rd);
    for (size_t i = 0; i < rd.n_msgs_after_persist; i++)
        send_checked(s, sn, &rd.msgs_after_persist[i]);
    raft_advance(sn->r, &rd);
}

static uint64_t lease_reads_of(struct raft *r)
{
    if (r == NULL)
        return 0;
    struct raft_status st;
    raft_status(r, &st);
    return st.lease_reads;
}

static uint64_t node_clock_ns(const struct sim *s, int id)
{
    return s->clock_base[id] +
           (s->now - s->clock_from[id]) * 1000000u * TICK_MS / s->tick_ms[id];
}

static uint64_t sim_clock_ns(void *arg)
{
    const struct sim_clock *c = arg;
    return node_clock_ns(c->s, c->id);
}

/* A node's ticks, and with them its clock, run at another rate from now. */
static void set_tick_ms(struct sim *s, int id, uint64_t tick_ms)
{
    s->clock_base[id] = node_clock_ns(s, id);
    s->clock_from[id] = s->now;
    s->tick_ms[id] = tick_ms;
}

/* The clocks' rates differ by up to (TICK_MS + 3) / (TICK_MS - 3): what
 * one node measured as ns takes up to this long on another's clock. */
static uint64_t clock_margin_ns(uint64_t ns)
{
    return ns / (TICK_MS - 3) * (TICK_MS + 3);
}

static struct raft_config node_cfg(struct sim *s, int id)
{
    struct raft_config c = {
        .id = (uint64_t)id,
        .election_ticks = s->election_ticks[id],
        .heartbeat_ticks = 1,
        .seed = s->seed * 1000003u + (uint64_t)id * 7919u + s->nodes[id].epoch,
        .max_inflight_msgs = s->max_inflight,
        .max_bytes_per_msg = s->max_bytes,
        .pre_vote = s->pre_vote,
        .check_quorum = s->check_quorum,
        .max_readies = s->max_readies,
    };
    if (s->lease) {
        /* A follower's fastest clock ticks every TICK_MS - 3 ms: it
         * refuses votes for election_ticks - 1 of them at least after a
         * message arrived, less the millisecond of our event times; the
         * leader's slowest clock measures that as TICK_MS / (TICK_MS + 3)
         * of it. */
        c.lease_ns = (uint64_t)((c.election_ticks - 1) * (TICK_MS - 3) - 1) *
                     1000000u / (TICK_MS + 3) * TICK_MS;
        c.lease_reads = true;
        c.clock = sim_clock_ns;
        c.clock_arg = &s->clocks[id];
    }
    return c;
}

static void founders_conf(struct sim *s, struct raft_conf *c)
{
    raft_conf_init(c);
    int founders = s->n == 5 ? 3 : s->n;
    for (int i = 1; i <= founders; i++) {
        char meta[64];
        snprintf(meta, sizeof meta, "{\"name\":\"n%d\"}", i);
        raft_conf_add(c, (uint64_t)i, true, meta);
    }
}

/* What the node driver does with its promise: an earlier incarnation's
 * is handed to the restored core, with the clocks' margin (a leader
 * measured it on its own clock, this node measures it on its own), and
 * the durable one is raised before this incarnation promises more, or
 * lowered once the earlier one is over. */
static void keep_promise(struct sim *s, int id, uint64_t lease_ns)
{
    struct snode *sn = &s->nodes[id];
    uint64_t binds = clock_margin_ns(sn->promised_ns);
    raft_restore_promise(sn->r, binds);
    sn->promise_lower_at = 0;
    if (lease_ns >= sn->promised_ns)
        sn->promised_ns = lease_ns;
    else
        sn->promise_lower_at = node_clock_ns(s, id) + binds;
}

static void node_start(struct sim *s, int id)
{
    struct snode *sn = &s->nodes[id];
    /* Each incarnation may run with other timings than the one before
     * (an operator changed election-timeout), with a clock of its own. */
    s->election_ticks[id] = !s->vary_timings  ? 10
                            : s->shortest[id] ? 5
                            : chance(s, 50)   ? 5 + (int)rnd(s, 6)
                                              : 25 + (int)rnd(s, 16);
    /* Clocks drift: each incarnation ticks at its own rate, up to 30%
     * off (the election timeout in ticks then differs in time), and its
     * clock with them; half the time at one end or the other, where the
     * leases' margins are tight. */
    uint64_t tick = TICK_MS;
    if (s->chaos && s->shortest[id])
        tick = TICK_MS - 3;
    else if (s->chaos && chance(s, 30))
        tick = chance(s, 50)   ? TICK_MS - 3 + rnd(s, 7)
               : chance(s, 50) ? TICK_MS - 3
                               : TICK_MS + 3;
    set_tick_ms(s, id, tick);
    s->shortest[id] = false;
    struct raft_config cfg = node_cfg(s, id);
    char err[RAFT_ERRMSG_SIZE];
    sn->r = raft_new(&cfg, err);
    pz_assert(sn->r != NULL);
    if (sn->n_log == 0 && sn->hs.term == 0 && sn->founder &&
        sn->dsnap.index == 0) {
        struct raft_conf c;
        founders_conf(s, &c);
        pz_assert(raft_bootstrap(sn->r, &c) == 0);
        raft_conf_free(&c);
    } else {
        /* The durable log must continue the durable snapshot: no gap
         * after it; if it reaches into it, it reaches its index, with the
         * same term. */
        const struct raft_entry *at = dlog_at(sn, sn->dsnap.index);
        if (sn->dbase > sn->dsnap.index ||
            (sn->dbase < sn->dsnap.index && at == NULL && sn->n_log > 0) ||
            (at != NULL && at->term != sn->dsnap.term))
            sim_fail(s,
                     "node %d: durable log (from %" PRIu64 ") does not "
                     "continue its snapshot %" PRIu64 "/%" PRIu64,
                     id, sn->dbase + 1, sn->dsnap.index, sn->dsnap.term);
        struct raft_snapshot_meta meta = {.index = sn->dsnap.index,
                                          .term = sn->dsnap.term,
                                          .conf = sn->dsnap.conf};
        int rc = sn->dsnap.index > 0
                     ? raft_restore_snapshot(sn->r, &sn->hs, &meta, sn->log,
                                             sn->n_log)
                     : raft_restore(sn->r, &sn->hs, sn->log, sn->n_log);
        if (rc != 0)
            sim_fail(s, "node %d restore failed: %s", id, pz_strerror(rc));
    }
    if (s->lease)
        keep_promise(s, id, cfg.lease_ns);
    sn->n_rds = 0;
    sn->persist_at = 0;
    sn->n_mir = 0;
    sn->mir_base = 0;
    sn->mir_base_chain = 0;
    sn->commit = 0;
    /* The state machine comes back from the durable snapshot. */
    sn->sm = sn->dsnap.digest;
    sn->applied = sn->dsnap.index;
    raft_conf_copy(&sn->sm_conf, &sn->dsnap.conf);
    sn->snap_busy = false;
    sn->lc_term = 0;
    sn->lc_checked = 0;
    sn->marker_term = 0;
    heap_push(s, ev_new(s, EV_TICK, id, 1 + rnd(s, TICK_MS)));
    trace(s,
          "node %d up (epoch %" PRIu64 ", snapshot %" PRIu64
          ", %zu durable entries, term %" PRIu64 ", election %d ticks)",
          id, sn->epoch, sn->dsnap.index, sn->n_log, sn->hs.term,
          s->election_ticks[id]);
}

static void node_crash(struct sim *s, int id)
{
    struct snode *sn = &s->nodes[id];
    if (sn->r == NULL)
        return;
    /* A write in flight either reached the disk or not; of several, any
     * prefix did (they are written in order). */
    size_t kept = sn->n_rds == 1 ? (size_t)chance(s, 50)
                  : sn->n_rds > 1 ? (size_t)rnd(s, sn->n_rds + 1)
                                  : 0;
    for (size_t i = 0; i < kept; i++)
        store_write(s, sn, &sn->rds[i]);
    /* Received snapshot files not installed yet are garbage now. */
    for (size_t k = 0; k < SIM_RX_FILES; k++)
        ssnap_free(&sn->rx[k]);
    sn->n_rx = 0;
    ssnap_free(&sn->install);
    s->stat_lease_reads += lease_reads_of(sn->r);
    raft_free(sn->r);
    sn->r = NULL;
    sn->n_rds = 0;
    sn->epoch++;
    trace(s, "node %d crashed", id);
}

/* --- clients and chaos ---------------------------------------------------- */

static int up_count(const struct sim *s)
{
    int c = 0;
    for (int i = 1; i <= s->n; i++)
        c += s->nodes[i].r != NULL;
    return c;
}

static int pick_leader(struct sim *s)
{
    int cand[SIM_MAXN], nc = 0;
    for (int i = 1; i <= s->n; i++) {
        if (s->nodes[i].r == NULL)
            continue;
        struct raft_status st;
        raft_status(s->nodes[i].r, &st);
        if (st.role == RAFT_LEADER)
            cand[nc++] = i;
    }
    return nc ? cand[rnd(s, (uint64_t)nc)] : 0;
}

static int pick_up(struct sim *s)
{
    int cand[SIM_MAXN], nc = 0;
    for (int i = 1; i <= s->n; i++)
        if (s->nodes[i].r != NULL)
            cand[nc++] = i;
    return nc ? cand[rnd(s, (uint64_t)nc)] : 0;
}

static uint64_t max_commit_known(const struct sim *s)
{
    return s->n_committed;
}

static void propose(struct sim *s, int id)
{
    uint8_t buf[40];
    size_t len = 8 + rnd(s, 32);
    uint64_t k = ++s->proposals;
    for (size_t i = 0; i < len; i++)
        buf[i] = (uint8_t)(k >> (8 * (i % 8))) ^ (uint8_t)i;
    uint64_t idx, term;
    int rc = raft_propose(s->nodes[id].r, buf, len, &idx, &term);
    if (rc == 0)
        trace(s, "node %d proposes %" PRIu64 " at %" PRIu64 "/%" PRIu64, id, k,
              idx, term);
}

static void do_read(struct sim *s, int id)
{
    if (s->n_reads == s->cap_reads) {
        s->cap_reads = s->cap_reads ? s->cap_reads * 2 : 64;
        s->reads = pz_realloc(s->reads, s->cap_reads * sizeof *s->reads);
    }
    uint64_t ctx = s->n_reads + 1;
    int rc = raft_read_index(s->nodes[id].r, ctx);
    if (rc != 0)
        return;
    s->reads[s->n_reads++] = (struct read_rec){
        .node = id, .required = max_commit_known(s), .done = false};
    trace(s, "node %d read ctx %" PRIu64 " (needs >= %" PRIu64 ")", id, ctx,
          max_commit_known(s));
}

static void do_conf_change(struct sim *s, int id)
{
    const struct raft_conf *c = raft_conf_current(s->nodes[id].r, NULL);
    struct raft_conf_change cc = {0};
    uint64_t pick = 1 + rnd(s, (uint64_t)s->n);
    const struct raft_server *sv = raft_conf_get(c, pick);
    bool may_remove = s->pre_vote || s->check_quorum;
    if (sv == NULL) {
        cc.type = RAFT_CC_ADD_NONVOTER;
        cc.meta = "{\"name\":\"joiner\"}";
    } else if (!sv->voter) {
        cc.type = chance(s, 70) ? RAFT_CC_PROMOTE : RAFT_CC_REMOVE;
    } else {
        cc.type = chance(s, 50) ? RAFT_CC_DEMOTE : RAFT_CC_REMOVE;
        if (raft_conf_voters(c) <= s->min_voters)
            return;
    }
    if (!may_remove && (cc.type == RAFT_CC_REMOVE || cc.type == RAFT_CC_DEMOTE))
        return;
    cc.id = pick;
    uint64_t idx;
    int rc = raft_propose_conf(s->nodes[id].r, &cc, &idx, NULL);
    trace(s, "node %d conf change %d id %" PRIu64 ": %s", id, cc.type, pick,
          pz_strerror(rc));
}

/* A proposal on a node that does not lead is refused and changes
 * nothing (the driver forwards it to the leader instead). */
static void follower_propose(struct sim *s)
{
    int id = pick_up(s);
    if (!id)
        return;
    struct raft_status st;
    raft_status(s->nodes[id].r, &st);
    if (st.role == RAFT_LEADER)
        return;
    bool ready = raft_has_ready(s->nodes[id].r);
    uint8_t buf[8] = {'f', 'o', 'l', 'l', 'o', 'w', 'e', 'r'};
    uint64_t idx = 0, term = 0;
    int rc = raft_propose(s->nodes[id].r, buf, sizeof buf, &idx, &term);
    struct raft_status after;
    raft_status(s->nodes[id].r, &after);
    if (rc != PZ_ENOTLEADER || after.last_index != st.last_index ||
        after.term != st.term || after.commit != st.commit ||
        after.role != st.role || raft_has_ready(s->nodes[id].r) != ready)
        sim_fail(s, "node %d (not leading) took a proposal: %s", id,
                 pz_strerror(rc));
    s->stat_follower_props++;
}

static void client_action(struct sim *s)
{
    int l = pick_leader(s);
    if (chance(s, 5))
        follower_propose(s);
    uint64_t r = rnd(s, 100);
    if (s->now < s->quiet_until && (r < 60 || r >= 85))
        return; /* only reads (stale_candidate_behind_leader) */
    if (r < 60) {
        if (l)
            propose(s, l);
    } else if (r < 85) {
        int id = chance(s, 50) && l ? l : pick_up(s);
        /* the leader cut off by quick_restart_behind_leader, often */
        if (s->now < s->quick_until && s->nodes[s->quick_leader].r != NULL &&
            chance(s, 50))
            id = s->quick_leader;
        if (id)
            do_read(s, id);
    } else if (r < 93) {
        if (l)
            do_conf_change(s, l);
    } else if (l && !(s->now < s->quick_until && l == s->quick_leader)) {
        /* (not the leader cut off: a transfer gives its lease up) */
        uint64_t to = 1 + rnd(s, (uint64_t)s->n);
        int rc = raft_transfer_leader(s->nodes[l].r, to);
        trace(s, "node %d transfer to %" PRIu64 ": %s", l, to, pz_strerror(rc));
    }
    if (l)
        check_node(s, l);
}

static void heal(struct sim *s)
{
    for (int i = 1; i <= s->n; i++)
        s->group[i] = 0;
    memset(s->cut, 0, sizeof s->cut);
}

static void crash_and_restart(struct sim *s, int id)
{
    if (id && s->nodes[id].r != NULL && up_count(s) > 1) {
        node_crash(s, id);
        heap_push(s, ev_new(s, EV_RESTART, id, 5 + rnd(s, s->restart_max)));
    }
}

/* Every node down at once (a power cut of the whole cluster), each back
 * after its own delay. */
static void blackout(struct sim *s)
{
    for (int i = 1; i <= s->n; i++) {
        if (s->nodes[i].r == NULL)
            continue;
        node_crash(s, i);
        heap_push(s, ev_new(s, EV_RESTART, i, 5 + rnd(s, s->restart_max)));
    }
    s->stat_blackouts++;
    trace(s, "blackout: every node down");
}

/* The leader cut off right after a lease read, with the slowest clock
 * (its lease lasts longest), and the others' clocks the fastest (their
 * refusals end soonest). Most of the time the follower that promised the
 * longest comes back at once with the shortest election timeout: it must
 * keep its earlier promise (keep_promise, with the clocks' margin).
 * Otherwise it stays up, and its refusal ends as its ticks promised
 * (lease_ns). Either way the others must not elect a leader while the
 * old one still reads by its lease. */
static void quick_restart_behind_leader(struct sim *s, int l)
{
    /* of the leader's other voters that are up, the one that promised
     * the longest (the others may then elect a leader before its promise
     * is over) */
    const struct raft_conf *c = raft_conf_current(s->nodes[l].r, NULL);
    int f = 0;
    for (size_t i = 0; i < c->n; i++) {
        int id = (int)c->servers[i].id;
        if (c->servers[i].voter && id != l && s->nodes[id].r != NULL &&
            (f == 0 || s->election_ticks[id] > s->election_ticks[f]))
            f = id;
    }
    if (f == 0)
        return;
    /* where it matters: the leader's lease and the follower's promise
     * long, every other voter's refusal short */
    if (s->election_ticks[l] < 25 || s->election_ticks[f] < 25)
        return;
    for (size_t i = 0; i < c->n; i++) {
        int id = (int)c->servers[i].id;
        if (c->servers[i].voter && id != l && id != f &&
            s->election_ticks[id] > 10)
            return;
    }
    heal(s);
    s->group[l] = 1;
    set_tick_ms(s, l, TICK_MS + 3);
    for (size_t i = 0; i < c->n; i++) {
        int id = (int)c->servers[i].id;
        if (id != l && s->nodes[id].r != NULL)
            set_tick_ms(s, id, TICK_MS - 3);
    }
    s->quick_until = s->now + 300;
    s->quick_leader = l;
    if (chance(s, 30)) {
        trace(s, "isolate leader %d, clocks apart", l);
        return;
    }
    node_crash(s, f);
    s->shortest[f] = true;
    heap_push(s, ev_new(s, EV_RESTART, f, 1 + rnd(s, 10)));
    trace(s, "isolate leader %d, restart %d at once", l, f);
}

/* A bridge (Jepsen's nemesis): two sides that cannot reach each other,
 * and one node that is up, not the leader, and reaches both. The leader
 * (if any) is on one side: with the bridge it may keep a quorum, and its
 * lease, while the other side campaigns through the bridge, which must
 * refuse them while the leader counts on it. */
static void bridge(struct sim *s)
{
    int l = pick_leader(s);
    int cand[SIM_MAXN], nc = 0;
    for (int i = 1; i <= s->n; i++)
        if (i != l && s->nodes[i].r != NULL)
            cand[nc++] = i;
    if (nc == 0)
        return;
    int b = cand[rnd(s, (uint64_t)nc)];
    int side[SIM_MAXN + 1] = {0}, count[2] = {l != 0, 0};
    for (int i = 1; i <= s->n; i++)
        if (i != b && i != l)
            count[side[i] = (int)rnd(s, 2)]++;
    /* neither side empty, if the nodes allow */
    for (int i = 1; i <= s->n; i++)
        for (int k = 0; k < 2; k++)
            if (count[k] == 0 && i != b && i != l && count[1 - k] > 1) {
                count[side[i]]--;
                side[i] = k;
                count[k]++;
            }
    if (count[0] == 0 || count[1] == 0)
        return;
    heal(s);
    for (int i = 1; i <= s->n; i++)
        for (int j = 1; j <= s->n; j++)
            if (i != b && j != b && side[i] != side[j])
                s->cut[i][j] = true;
    s->stat_bridges++;
    trace(s, "bridge %d (leader %d)", b, l);
}

/* Without Pre-Vote: no entry is proposed; once a voter y's log is as
 * long as the leader's, y stops hearing the leader (the link to it cut
 * one way, stale_cut); just before its election timeout runs out, the
 * leader is cut off from everyone. y then asks for votes while the
 * others still refuse them within the lease: one that granted would
 * elect y while the old leader still reads by its lease. */
static void stale_cut(struct sim *s)
{
    int l = s->quick_leader, y = s->stale_y;
    if (s->nodes[l].r == NULL || s->nodes[y].r == NULL) {
        s->stale_y = 0;
        return;
    }
    struct raft_status ls, ys;
    raft_status(s->nodes[l].r, &ls);
    raft_status(s->nodes[y].r, &ys);
    if (ls.role != RAFT_LEADER || s->now >= s->quiet_until) {
        s->stale_y = 0;
        return;
    }
    if (ys.last_index != ls.last_index || ys.term != ls.term)
        return;
    s->stale_y = 0;
    s->cut[l][y] = true;
    uint64_t d = (uint64_t)(s->election_ticks[y] - 1) * s->tick_ms[y];
    s->isolate_at = s->now + d;
    s->quiet_until = s->isolate_at + 200;
    s->quick_until = s->isolate_at + 300;
    trace(s, "cut %d->%d, then leader %d off at %" PRIu64, l, y, l,
          s->isolate_at);
}

static void stale_candidate_behind_leader(struct sim *s, int l)
{
    const struct raft_conf *c = raft_conf_current(s->nodes[l].r, NULL);
    int cand[SIM_MAXN], nc = 0;
    for (size_t i = 0; i < c->n; i++) {
        int id = (int)c->servers[i].id;
        if (c->servers[i].voter && id != l && s->nodes[id].r != NULL)
            cand[nc++] = id;
    }
    if (nc < 2)
        return;
    heal(s);
    s->stale_y = cand[rnd(s, (uint64_t)nc)];
    s->quick_leader = l;
    s->quiet_until = s->now + 100; /* for y to catch up */
    s->quick_until = s->quiet_until;
}

static void chaos_action(struct sim *s)
{
    if (s->now < s->quick_until)
        return; /* the cut stays while the others elect a leader */
    if (chance(s, s->crash_pct)) {
        if (chance(s, 5))
            blackout(s);
        else
            crash_and_restart(s, chance(s, 50) ? pick_leader(s) : pick_up(s));
        return;
    }
    if (chance(s, 8)) {
        /* One direction of one link fails (a bad route or firewall rule):
         * a leader may hear its followers but not reach them, or a
         * candidate reach voters that cannot answer. */
        uint64_t a = 1 + rnd(s, (uint64_t)s->n), b = 1 + rnd(s, (uint64_t)s->n);
        if (a != b) {
            s->cut[a][b] = true;
            s->stat_oneway++;
            trace(s, "cut %" PRIu64 "->%" PRIu64, a, b);
        }
        return;
    }
    if (chance(s, 8)) {
        /* A process pause (GC, SIGSTOP, a swapped-out page): nothing it
         * would do happens until it runs again, then all at once. */
        int id = chance(s, 50) && pick_leader(s) ? pick_leader(s) : pick_up(s);
        if (id) {
            s->paused_until[id] = s->now + 20 + rnd(s, 300);
            s->stat_pauses++;
            trace(s, "pause %d until %" PRIu64, id, s->paused_until[id]);
        }
        return;
    }
    uint64_t r = rnd(s, 95);
    if (s->profile == 3) /* leader churn */
        r = chance(s, 50) ? 50 : chance(s, 60) ? 0 : r;
    if (r < 25) {
        heal(s);
        trace(s, "heal");
    } else if (r < 45) {
        /* random split: minority / majority */
        for (int i = 1; i <= s->n; i++)
            s->group[i] = (int)rnd(s, 2);
        trace(s, "partition");
    } else if (r < 60) {
        int l = pick_leader(s);
        if (l) {
            heal(s);
            s->group[l] = 1;
            trace(s, "isolate leader %d", l);
        }
    } else if (r < 70) {
        int id = 1 + (int)rnd(s, (uint64_t)s->n);
        s->group[id] = 2 + id;
        trace(s, "isolate %d", id);
    } else if (r >= 85) {
        bridge(s);
    } else {
        s->loss_pct = (int)rnd(s, 4) * 5;
        s->dup_pct = (int)rnd(s, 3) * 5;
        s->max_delay = 2 + (int)rnd(s, 20);
        trace(s, "net loss %d%% dup %d%% delay <= %d", s->loss_pct, s->dup_pct,
              s->max_delay);
    }
}

/* --- the run -------------------------------------------------------------- */

/* --- forged messages --------------------------------------------------------
 * Now and then, before a real message is delivered, the receiver gets a
 * forged variant no correct peer sends: the core must refuse it
 * (PZ_EINVAL) and change nothing. The variants: an APPEND whose previous
 * index is 0 with a term (once hung the node), an APPEND of a current or
 * newer term rewriting the receiver's last committed entry (once aborted
 * it), any message with a term beyond RAFT_LIMIT, and one whose term is
 * out of the receiver's reach (RAFT_TERM_BOUND): 2^62 - 1, once taken and
 * never left, or a leap and more past the reach. The last moves the
 * receiver's term up to its reach, and nothing else. And now and then a
 * forged term that is taken, no peer can tell it from a real one: just
 * below the bound, or at the receiver's reach (the most a message can
 * move it); the cluster must go on electing leaders past the bound. */
struct sim_seen {
    struct raft_status st;
    bool ready;
};

static struct sim_seen sim_observe(struct raft *r)
{
    struct sim_seen o;
    raft_status(r, &o.st);
    o.ready = raft_has_ready(r);
    return o;
}

static bool sim_same(const struct sim_seen *a, const struct sim_seen *b)
{
    return a->st.term == b->st.term && a->st.vote == b->st.vote &&
           a->st.commit == b->st.commit && a->st.role == b->st.role &&
           a->st.leader == b->st.leader &&
           a->st.last_index == b->st.last_index &&
           a->st.first_index == b->st.first_index && a->ready == b->ready;
}

/* The highest term a peer may make a node of term t take. */
static uint64_t sim_reach(uint64_t t)
{
    return PZ_MIN(PZ_MAX(t + RAFT_TERM_LEAP, RAFT_TERM_BOUND - 1),
                  RAFT_TERM_MAX);
}

/* Steps forged f into sn: it must be refused with nothing changed, but
 * its term moved up to moved_to if that is not 0 (then only the term,
 * vote, role and leader may differ, and the term must be moved_to). */
static void forge_step_moving(struct sim *s, struct snode *sn,
                              struct raft_msg *f, const char *what,
                              uint64_t moved_to)
{
    struct sim_seen before = sim_observe(sn->r);
    int rv = raft_step(sn->r, f);
    struct sim_seen after = sim_observe(sn->r);
    bool moved = moved_to != 0 && after.st.term == moved_to &&
                 after.st.role == RAFT_FOLLOWER && after.st.leader == 0 &&
                 after.st.commit == before.st.commit &&
                 after.st.last_index == before.st.last_index &&
                 after.st.first_index == before.st.first_index;
    if (rv != PZ_EINVAL)
        sim_fail(s, "node %" PRIu64 " took a forged %s (%d)", sn->id, what,
                 rv);
    else if (!sim_same(&before, &after) && !moved)
        sim_fail(s, "node %" PRIu64 " changed on a refused forged %s", sn->id,
                 what);
    else
        s->stat_forged++;
}

static void forge_step(struct sim *s, struct snode *sn, struct raft_msg *f,
                       const char *what)
{
    forge_step_moving(s, sn, f, what, 0);
}

/* A forged term out of sn's reach (2^62 - 1, or a leap and more past the
 * reach): refused, sn moved up to its reach. Or, one time in four, a term
 * it takes: just below the bound, or its reach. */
static void forge_term(struct sim *s, struct snode *sn,
                       const struct raft_msg *m)
{
    struct raft_status st;
    raft_status(sn->r, &st);
    uint64_t reach = sim_reach(st.term);
    uint64_t pick = pz_rand_next(&s->forge_rng) % 8;
    struct raft_msg f = {
        .type = RAFT_MSG_HEARTBEAT_RESP, .from = m->from, .to = m->to};
    if (pick < 2) {
        f.term = pick == 0
                     ? RAFT_TERM_BOUND - 1 - pz_rand_next(&s->forge_rng) % 4
                     : reach;
        int rv = raft_step(sn->r, &f);
        if (rv != 0)
            sim_fail(s,
                     "node %" PRIu64 " refused a forged term %" PRIu64
                     " in its reach (%d: %s)",
                     sn->id, f.term, rv, raft_errmsg(sn->r));
        trace(s, "forged term %" PRIu64 " taken by node %" PRIu64, f.term,
              sn->id);
        s->stat_forged_terms++;
        return;
    }
    if (reach >= RAFT_TERM_MAX)
        return;
    f.term = pick < 5 ? RAFT_TERM_MAX
                      : PZ_MIN(reach + RAFT_TERM_LEAP + 1 +
                                   pz_rand_next(&s->forge_rng) % 1000,
                               RAFT_TERM_MAX);
    forge_step_moving(s, sn, &f, "term out of reach", reach);
}

static void forge(struct sim *s, struct snode *sn, const struct raft_msg *m)
{
    uint64_t pick = pz_rand_next(&s->forge_rng) % 4;
    if (pick == 3) {
        forge_term(s, sn, m);
        return;
    }
    struct raft_msg f = *m;
    f.entries = NULL;
    f.n_entries = 0;
    if (pick == 0) {
        f.term = RAFT_LIMIT + pz_rand_next(&s->forge_rng) % 1000;
        forge_step(s, sn, &f, "huge term");
        return;
    }
    struct raft_status st;
    raft_status(sn->r, &st);
    f.type = RAFT_MSG_APPEND;
    f.term = PZ_MAX(PZ_MAX(m->term, st.term), 1);
    /* of a real message's term, which may be out of reach */
    uint64_t moved = f.term > sim_reach(st.term) ? sim_reach(st.term) : 0;
    if (pick == 1) {
        f.index = 0;
        f.log_term = 1 + pz_rand_next(&s->forge_rng) % f.term;
        forge_step_moving(s, sn, &f, "APPEND after index 0", moved);
        return;
    }
    /* Rewrite the last committed entry, if the log still holds it and
     * the one before it. */
    uint64_t c = PZ_MIN(st.commit, st.last_index);
    const struct raft_entry *ce = raft_log_get(sn->r, c);
    if (c < 2 || ce == NULL || c - 1 < st.first_index - 1)
        return;
    const struct raft_entry *pe = raft_log_get(sn->r, c - 1);
    uint64_t prev_term = pe ? pe->term : st.compact_term;
    if (ce->term >= f.term)
        f.term = ce->term + 1;
    struct raft_entry e = {.term = f.term, .index = c,
                           .type = RAFT_ENTRY_NOOP};
    f.index = c - 1;
    f.log_term = prev_term;
    f.entries = &e;
    f.n_entries = 1;
    forge_step_moving(s, sn, &f, "APPEND rewriting a committed entry",
                      f.term > sim_reach(st.term) ? sim_reach(st.term) : 0);
}

static void handle_event(struct sim *s, struct event *e)
{
    struct snode *sn = e->node > 0 ? &s->nodes[e->node] : NULL;
    if (sn != NULL && s->paused_until[e->node] > s->now &&
        e->type != EV_RESTART && e->type != EV_CRASH) {
        /* Paused: the event waits (in order) until the process runs. */
        struct event *later = ev_new(s, e->type, e->node,
                                     s->paused_until[e->node] - s->now);
        struct event tmp = *later;
        *later = *e;
        later->time = tmp.time;
        later->seq = tmp.seq;
        memset(e, 0, sizeof *e); /* ownership moved: ev_free frees nothing */
        heap_push(s, later);
        return;
    }
    switch (e->type) {
    case EV_TICK:
        if (sn->r == NULL || e->epoch != sn->epoch)
            return;
        if (sn->promise_lower_at != 0 &&
            node_clock_ns(s, e->node) >= sn->promise_lower_at) {
            sn->promised_ns = node_cfg(s, e->node).lease_ns;
            sn->promise_lower_at = 0;
        }
        raft_tick(sn->r);
        /* now and then late (a busy loop): the clock runs on */
        heap_push(s,
                  ev_new(s, EV_TICK, e->node,
                         s->tick_ms[e->node] +
                             (s->chaos && chance(s, 5) ? 1 + rnd(s, 3) : 0)));
        break;
    case EV_DELIVER:
        if (sn->r == NULL || !linked(s, e->m.from, e->m.to))
            return;
        if (s->trace)
            trace(s,
                  "%" PRIu64 "->%" PRIu64 " %s t%" PRIu64 " i%" PRIu64
                  " lt%" PRIu64 " c%" PRIu64 " n%zu%s ctx%" PRIu64,
                  e->m.from, e->m.to, raft_msg_type_name(e->m.type), e->m.term,
                  e->m.index, e->m.log_term, e->m.commit, e->m.n_entries,
                  e->m.reject ? " REJECT" : "", e->m.context);
        if (s->chaos && pz_rand_next(&s->forge_rng) % 50 == 0)
            forge(s, sn, &e->m);
        /* A message of a term out of reach (only past forged terms) is
         * refused, its receiver moved towards it (forge_term). */
        struct raft_status rst;
        raft_status(sn->r, &rst);
        int rv = raft_step(sn->r, &e->m);
        if (rv != 0 && (rv != PZ_EINVAL || e->m.term <= sim_reach(rst.term)))
            sim_fail(s, "node %d rejected a well-formed message", e->node);
        break;
    case EV_PERSIST:
        if (sn->r == NULL || e->epoch != sn->epoch)
            return;
        persist_done(s, e->node);
        break;
    case EV_RESTART:
        if (sn->r != NULL)
            return;
        node_start(s, e->node);
        break;
    case EV_CRASH:
        if (sn->r == NULL || e->epoch != sn->epoch || !s->chaos)
            return;
        crash_and_restart(s, e->node);
        return;
    case EV_SNAP_DONE:
        if (sn->r == NULL || e->epoch != sn->epoch)
            return; /* the write died with the node */
        snap_done(s, e->node, &e->snap);
        break;
    case EV_XFER: {
        /* The stream dies with its sender; the receiver must be the
         * incarnation it started with, and reachable. */
        if (s->nodes[e->peer].epoch != e->peer_epoch)
            return;
        bool ok = sn->r != NULL && e->epoch == sn->epoch &&
                  linked(s, (uint64_t)e->peer, (uint64_t)e->node);
        trace(s, "snapshot %" PRIu64 " %d->%d: %s", e->m.snap_index, e->peer,
              e->node, ok ? "received" : "broken");
        if (ok) {
            ssnap_copy(&sn->rx[sn->n_rx++ % SIM_RX_FILES], &e->snap);
            if (raft_step(sn->r, &e->m) != 0)
                sim_fail(s, "node %d rejected a well-formed snapshot", e->node);
        }
        if (e->report || !ok)
            push_report(s, e->peer, e->node, ok, 1 + rnd(s, 10));
        break;
    }
    case EV_REPORT:
        if (sn->r == NULL || e->epoch != sn->epoch)
            return;
        trace(s, "node %d: snapshot to %d %s", e->node, e->peer,
              e->ok ? "delivered" : "failed");
        raft_report_snapshot(sn->r, (uint64_t)e->peer, e->ok);
        break;
    case EV_CHAOS:
        if (s->chaos) {
            chaos_action(s);
            heap_push(s, ev_new(s, EV_CHAOS, 0, 10 + rnd(s, s->chaos_gap)));
        }
        return;
    case EV_CLIENT:
        if (s->chaos && s->stale_y != 0)
            stale_cut(s);
        if (s->chaos && s->isolate_at != 0 && s->now >= s->isolate_at) {
            s->isolate_at = 0;
            heal(s);
            s->group[s->quick_leader] = 1;
            trace(s, "isolate leader %d", s->quick_leader);
        }
        if (s->chaos) {
            client_action(s);
            heap_push(s, ev_new(s, EV_CLIENT, 0, 1 + rnd(s, 15)));
        }
        return;
    }
    check_node(s, e->node);
    pump(s, e->node);
    check_node(s, e->node);
}

static void run_until(struct sim *s, uint64_t end)
{
    while (!s->failed && s->n_heap > 0 && s->heap[0]->time <= end) {
        struct event *e = heap_pop(s);
        s->now = e->time;
        s->events++;
        handle_event(s, e);
        ev_free(e);
    }
    if (s->now < end)
        s->now = end;
}

/* Liveness: with everything healed and up, some leader must get a
 * proposal applied on every member of its configuration. */
static bool live_done(struct sim *s)
{
    int l = pick_leader(s);
    if (!l)
        return false;
    struct snode *ln = &s->nodes[l];
    struct raft_status st;
    raft_status(ln->r, &st);
    if (ln->marker_term != st.term) {
        uint8_t m[8] = {'m', 'a', 'r', 'k', 'e', 'r', 0, 0};
        uint64_t idx, term;
        if (raft_propose(ln->r, m, sizeof m, &idx, &term) == 0) {
            ln->marker_term = term;
            ln->marker_index = idx;
            trace(s, "liveness marker at %" PRIu64 "/%" PRIu64, idx, term);
            check_node(s, l);
            pump(s, l);
        }
        return false;
    }
    uint64_t idx = ln->marker_index;
    if (idx == 0 || st.commit < idx)
        return false;
    const struct raft_conf *c = raft_conf_current(ln->r, NULL);
    for (size_t i = 0; i < c->n; i++) {
        const struct snode *m = &s->nodes[c->servers[i].id];
        if (m->r == NULL || m->applied < idx)
            return false;
    }
    return true;
}

static void sim_free(struct sim *s)
{
    for (size_t i = 0; i < s->n_heap; i++)
        ev_free(s->heap[i]);
    pz_free(s->heap);
    for (int i = 1; i <= s->n; i++) {
        struct snode *sn = &s->nodes[i];
        raft_free(sn->r);
        for (size_t k = 0; k < sn->n_log; k++)
            pz_free(sn->log[k].data);
        pz_free(sn->log);
        pz_free(sn->mir);
        ssnap_free(&sn->dsnap);
        ssnap_free(&sn->install);
        for (size_t k = 0; k < SIM_RX_FILES; k++)
            ssnap_free(&sn->rx[k]);
        raft_conf_free(&sn->sm_conf);
    }
    pz_free(s->lot);
    pz_free(s->committed);
    pz_free(s->chains);
    pz_free(s->reads);
    pz_buf_free(&s->codec_buf);
    raft_frame_parser_free(&s->codec_fp);
}

struct sim_stats {
    uint64_t events;   /* events processed */
    uint64_t commits;  /* distinct committed entries */
    uint64_t reads;    /* confirmed reads */
    uint64_t lease_reads; /* of them, by a leader's lease */
    uint64_t leaders;  /* leaders elected */
    uint64_t snaps;    /* local snapshots taken (compactions) */
    uint64_t installs; /* snapshots installed from a leader */
    uint64_t forged;   /* forged messages refused */
    uint64_t forged_terms; /* forged terms taken */
    uint64_t past_bound;   /* leaders elected past 2^61 */
    uint64_t pipelined; /* Readies taken while others were in flight */
    uint64_t frames;   /* messages through the codec */
    uint64_t damaged;  /* frames damaged on the way, all refused */
    uint64_t stale;    /* stale copies delivered late */
    uint64_t oneway;   /* links cut one way */
    uint64_t bridges;  /* bridge partitions */
    uint64_t pauses;   /* process pauses */
    uint64_t blackouts; /* whole-cluster crashes */
    uint64_t follower_props; /* proposals refused by non-leaders */
};

/* Runs one seed; returns true if every check passed. */
static bool sim_run(uint64_t seed, int n, bool trace_on,
                    struct sim_stats *stats)
{
    struct sim *s = pz_calloc(1, sizeof *s);
    s->seed = seed;
    s->rng = seed * 0x2545F4914F6CDD1Dull + 17;
    s->n = n;
    s->forge_rng = seed ^ 0x666f726765ull;
    s->codec_rng = seed ^ 0x636f646563ull;
    pz_buf_init(&s->codec_buf);
    raft_frame_parser_init(&s->codec_fp, RAFT_FRAME_MAX);
    s->trace = trace_on;
    s->pre_vote = !chance(s, 20);
    s->check_quorum = !chance(s, 20);
    /* From the seed, not the run's generator: other choices stay put. */
    s->lease = s->check_quorum && seed % 3 != 0;
    s->max_inflight = 1 + rnd(s, 8);
    s->max_bytes = chance(s, 30) ? 1 : chance(s, 50) ? 64 : 4096;
    s->max_delay = 10;
    s->chaos = true;
    s->profile = (int)rnd(s, 4);
    static const uint64_t gap[] = {400, 150, 400, 120};
    static const int crash[] = {10, 60, 25, 30};
    static const uint64_t restart[] = {800, 200, 800, 150};
    static const int kill[] = {0, 40, 15, 50};
    s->chaos_gap = gap[s->profile];
    s->crash_pct = crash[s->profile];
    s->restart_max = restart[s->profile];
    s->kill_leader_pct = kill[s->profile];
    s->persist_max = chance(s, 30) ? 30 : 5;
    s->snap_pct = chance(s, 15) ? 0 : 5 + (int)rnd(s, 40);
    s->snap_gap = 1 + rnd(s, 10);
    s->trail_max = rnd(s, 6);
    s->snap_write_max = chance(s, 50) ? 5 : 60;
    s->xfer_fail_pct = (int)rnd(s, 3) * 10;
    s->xfer_silent_pct = (int)rnd(s, 2) * 5;
    s->store_keep_pct = (int)rnd(s, 2) * 30;
    s->take_pct = chance(s, 25) ? 0 : chance(s, 50) ? 100 : 30;
    /* Pipelined Readies in half the seeds, 2 to RAFT_MAX_READIES in
     * flight: from a hash of the seed, leaving the other choices of a seed
     * as they were. */
    uint64_t h = seed * 0x9E3779B97F4A7C15ull;
    s->max_readies =
        (h >> 63) ? 2 + (size_t)((h >> 32) % (RAFT_MAX_READIES - 1)) : 1;
    /* Timings that differ between nodes and between a node's
     * incarnations in half the seeds (another bit of the hash) with
     * Pre-Vote: without it, a node with a short timeout and a stale log
     * keeps resetting the others' timers with its vote requests, so that
     * one with a longer timeout never campaigns (as with slow clocks,
     * below). */
    s->vary_timings = s->pre_vote && ((h >> 20) & 1);
    s->min_voters = chance(s, 25) ? 1 : 2;
    cur_seed_for_signal = (sig_atomic_t)seed;
    trace(s,
          "seed %" PRIu64 " n=%d pre_vote=%d check_quorum=%d lease=%d "
          "timings=%d inflight=%zu readies=%zu bytes=%zu profile=%d "
          "persist<=%" PRIu64 " snap%%=%d gap=%" PRIu64 " trail<=%" PRIu64
          " xfer fail%%=%d "
          "silent%%=%d",
          seed, n, s->pre_vote, s->check_quorum, s->lease, s->vary_timings,
          s->max_inflight, s->max_readies, s->max_bytes, s->profile,
          s->persist_max, s->snap_pct, s->snap_gap, s->trail_max,
          s->xfer_fail_pct, s->xfer_silent_pct);
    int founders = n == 5 ? 3 : n;
    for (int i = 1; i <= n; i++) {
        s->nodes[i].id = (uint64_t)i;
        s->nodes[i].founder = i <= founders;
        s->clocks[i] = (struct sim_clock){.s = s, .id = i};
        s->clock_base[i] = (uint64_t)i * 1000000000000u;
        s->tick_ms[i] = TICK_MS;
        node_start(s, i);
    }
    heap_push(s, ev_new(s, EV_CHAOS, 0, 300 + rnd(s, 300)));
    heap_push(s, ev_new(s, EV_CLIENT, 0, 1));
    uint64_t chaos_end = 2500;
    run_until(s, chaos_end);

    /* Phase 2: heal, restart, calm network; must make progress. */
    s->chaos = false;
    heal(s);
    /* Liveness needs timing assumptions: no pauses, and clocks that agree
     * (with one voter's clock 30% slower and no Pre-Vote, the others'
     * vote requests can keep resetting the one electable node). */
    memset(s->paused_until, 0, sizeof s->paused_until);
    memset(s->shortest, 0, sizeof s->shortest);
    s->isolate_at = 0;
    s->stale_y = 0;
    for (int i = 1; i <= n; i++)
        set_tick_ms(s, i, TICK_MS);
    trace(s, "--- healing: liveness phase");
    for (int i = 1; i <= n; i++)
        if (s->nodes[i].r == NULL)
            node_start(s, i);
    uint64_t deadline = s->now + 5000;
    bool live = false;
    while (!s->failed && s->now < deadline) {
        run_until(s, s->now + TICK_MS);
        if (!s->failed && live_done(s)) {
            live = true;
            break;
        }
    }
    if (!s->failed && !live)
        sim_fail(s, "liveness: no proposal applied on all members within "
                    "5 s after healing");
    /* Every read must have been answered or dropped, or lost with a
     * message: nothing to check. */
    bool ok = !s->failed;
    if (stats) {
        stats->events += s->events;
        stats->commits += s->stat_commits;
        stats->reads += s->stat_reads;
        stats->lease_reads += s->stat_lease_reads;
        for (int i = 1; i <= s->n; i++)
            stats->lease_reads += lease_reads_of(s->nodes[i].r);
        stats->leaders += s->stat_leaders;
        stats->snaps += s->stat_snaps;
        stats->installs += s->stat_installs;
        stats->forged += s->stat_forged;
        stats->forged_terms += s->stat_forged_terms;
        stats->past_bound += s->stat_past_bound;
        stats->pipelined += s->stat_pipelined;
        stats->frames += s->stat_frames;
        stats->damaged += s->stat_damaged;
        stats->stale += s->stat_stale;
        stats->oneway += s->stat_oneway;
        stats->bridges += s->stat_bridges;
        stats->pauses += s->stat_pauses;
        stats->blackouts += s->stat_blackouts;
        stats->follower_props += s->stat_follower_props;
    }
    sim_free(s);
    pz_free(s);
    return ok;
}

#ifdef RAFT_SIM_MAIN
static uint64_t env_u64(const char *name, uint64_t dflt)
{
    const char *v = getenv(name);
    return v && *v ? strtoull(v, NULL, 10) : dflt;
}

static void on_abort(int sig)
{
    char buf[96];
    int n = snprintf(buf, sizeof buf,
                     "\nSIM CRASH (signal %d) at seed %ld: rerun with "
                     "SIM_SEED=%ld\n",
                     sig, (long)cur_seed_for_signal, (long)cur_seed_for_signal);
    if (n > 0)
        (void)!write(2, buf, (size_t)n);
    signal(sig, SIG_DFL);
    raise(sig);
}

/* Runs seeds [first, first+count); both cluster sizes alternate. */
static int sim_main_loop(uint64_t first, uint64_t count, bool verbose)
{
    signal(SIGABRT, on_abort);
    signal(SIGSEGV, on_abort);
    struct sim_stats st = {0};
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    uint64_t failed = 0;
    bool tr = env_u64("SIM_TRACE", 0) != 0;
    for (uint64_t seed = first; seed < first + count; seed++) {
        int n = seed % 2 ? 3 : 5;
        if (!sim_run(seed, n, tr, &st)) {
            failed++;
            if (failed >= 3)
                break;
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0.tv_sec) +
                  (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    if (verbose)
        printf("raft-sim: %" PRIu64 " seeds from %" PRIu64 ", %" PRIu64
               " failed; %.1f s (%.0f seeds/s), %" PRIu64 " events, %" PRIu64
               " committed entries, %" PRIu64 " reads (%" PRIu64
               " by a lease), %" PRIu64 " leaders, %" PRIu64
               " snapshots, %" PRIu64 " installs, %" PRIu64
               " forged messages refused, %" PRIu64
               " forged terms taken, %" PRIu64 " leaders past 2^61, %" PRIu64
               " frames decoded, %" PRIu64 " damaged frames refused, %" PRIu64
               " stale copies, %" PRIu64 " one-way cuts, %" PRIu64
               " bridges, %" PRIu64 " pauses, %" PRIu64 " blackouts, %" PRIu64
               " proposals refused by followers, %" PRIu64
               " Readies taken behind others in flight\n",
               count, first, failed, secs, (double)count / secs, st.events,
               st.commits, st.reads, st.lease_reads, st.leaders, st.snaps,
               st.installs, st.forged, st.forged_terms, st.past_bound,
               st.frames, st.damaged, st.stale, st.oneway, st.bridges,
               st.pauses, st.blackouts, st.follower_props, st.pipelined);
    return failed ? 1 : 0;
}

/* Throughput of the core alone: 3 nodes, instant network and disk, the
 * leader proposes batches of `batch` entries of 100 bytes per loop turn.
 * Measures entries committed and applied everywhere per second. */
struct bench_q {
    struct raft_msg *m; /* queued messages (deep copies) */
    size_t n, cap;      /* used, allocated */
};

static void bench_push(struct bench_q *q, const struct raft_msg *m)
{
    if (q->n == q->cap) {
        q->cap = q->cap ? q->cap * 2 : 1024;
        q->m = pz_realloc(q->m, q->cap * sizeof *q->m);
    }
    msg_deep_copy(&q->m[q->n++], m);
}

static uint64_t bench_pump(struct raft *r, struct bench_q *q)
{
    uint64_t applied = 0;
    while (raft_has_ready(r)) {
        struct raft_ready rd;
        raft_ready(r, &rd);
        for (size_t i = 0; i < rd.n_msgs; i++)
            bench_push(q, &rd.msgs[i]);
        for (size_t i = 0; i < rd.n_msgs_after_persist; i++)
            bench_push(q, &rd.msgs_after_persist[i]);
        if (rd.n_committed)
            applied = rd.committed[rd.n_committed - 1].index;
        raft_advance(r, &rd);
    }
    return applied;
}

static int bench(uint64_t total, size_t batch)
{
    struct raft *rs[4] = {NULL};
    struct raft_conf c;
    raft_conf_init(&c);
    for (uint64_t i = 1; i <= 3; i++)
        raft_conf_add(&c, i, true, "");
    for (uint64_t i = 1; i <= 3; i++) {
        struct raft_config cfg = {.id = i,
                                  .election_ticks = 10,
                                  .heartbeat_ticks = 1,
                                  .seed = i,
                                  .pre_vote = true,
                                  .check_quorum = true};
        rs[i] = raft_new(&cfg, NULL);
        raft_bootstrap(rs[i], &c);
    }
    raft_conf_free(&c);
    struct bench_q q = {0}, q2 = {0};
    uint64_t applied[4] = {0};
    raft_campaign(rs[1]);
    uint8_t payload[100];
    memset(payload, 'x', sizeof payload);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    uint64_t proposed = 0, msgs = 0, target = 0;
    for (;;) {
        if (proposed < total) {
            for (size_t k = 0; k < batch && proposed < total; k++) {
                uint64_t idx;
                if (raft_propose(rs[1], payload, sizeof payload, &idx, NULL) ==
                    0) {
                    proposed++;
                    target = idx;
                }
            }
        }
        for (int i = 1; i <= 3; i++) {
            uint64_t a = bench_pump(rs[i], &q);
            if (a)
                applied[i] = a;
        }
        if (q.n == 0) {
            if (proposed >= total && applied[1] >= target &&
                applied[2] >= target && applied[3] >= target)
                break;
            raft_tick(rs[1]); /* heartbeats spread the commit index */
            continue;
        }
        struct bench_q t = q;
        q = q2;
        q2 = t;
        for (size_t i = 0; i < q2.n; i++) {
            raft_step(rs[q2.m[i].to], &q2.m[i]);
            msg_deep_free(&q2.m[i]);
            msgs++;
        }
        q2.n = 0;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0.tv_sec) +
                  (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    printf("raft bench: %" PRIu64 " entries of 100 B, batch %zu: %.2f s, "
           "%.0f entries/s, %" PRIu64 " messages\n",
           total, batch, secs, (double)total / secs, msgs);
    for (int i = 1; i <= 3; i++)
        raft_free(rs[i]);
    pz_free(q.m);
    pz_free(q2.m);
    return 0;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    uint64_t nb = env_u64("SIM_BENCH", 0);
    if (nb)
        return bench(nb, (size_t)env_u64("SIM_BENCH_BATCH", 64));
    uint64_t one = env_u64("SIM_SEED", 0);
    if (one)
        return sim_main_loop(one, 1, true);
    uint64_t count = env_u64("SIM_SEEDS", 10000);
    uint64_t first = env_u64("SIM_FIRST", 1);
    return sim_main_loop(first, count, true);
}
#else
TEST(sim_3_nodes)
{
    for (uint64_t seed = 1; seed <= 40; seed += 2)
        CHECK(sim_run(seed, 3, false, NULL));
}

TEST(sim_5_nodes)
{
    for (uint64_t seed = 2; seed <= 40; seed += 2)
        CHECK(sim_run(seed, 5, false, NULL));
}

static const struct test_case cases[] = {TEST_ENTRY(sim_3_nodes),
                                         TEST_ENTRY(sim_5_nodes), TEST_END};

const struct test_suite suite_raft_sim = {"raft_sim", cases};
#endif
