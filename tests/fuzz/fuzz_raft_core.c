/* fuzz_raft_core.c - the Raft core (raft.h) driven by a sequence of
 * operations, as node.c drives it, with peers that say anything.
 *
 * Setup (first bytes): node 1 in a 3- or 5-voter configuration (maybe a
 * non-voter 6 too), Pre-Vote and CheckQuorum on or off, small inflight
 * and message-size limits; the node is bootstrapped or restored from a
 * generated log and snapshot, and then maybe made leader by a scripted
 * election (its peers grant every vote).
 *
 * Then each byte picks an operation: step a message of any type with
 * fuzzed fields and entries from any peer (some valid, some not); tick;
 * propose; propose a membership change; read_index; transfer leadership;
 * campaign; take a Ready (apply, send, start the write) and later make it
 * durable and advance, exactly as node.c's ready_cycle/on_written do (the
 * hard state is written only when term or vote changed or entries or a
 * snapshot come with it); take_msgs while a write is in flight; answer
 * the messages sent as well-behaved peers would; compact after a
 * "snapshot" of the applied state; report a snapshot transfer; crash and
 * restart from what was made durable (raft_restore_snapshot).
 *
 * Invariants, checked after every operation:
 *  - nothing aborts (pz_assert) and raft_step never fails on a
 *    well-formed message; a restart from the durable state is accepted;
 *  - the term never decreases (after a restart it is the durable one);
 *    the vote never changes within a term; no two votes are granted in
 *    one term to different candidates, across restarts; the node leads a
 *    term at most once;
 *  - commit never decreases (until a restart) and never exceeds the last
 *    index; applied <= commit; the snapshot point <= commit;
 *  - an entry handed out as committed is never handed out again, nor held
 *    in the log, with another term or data at the same index (replays
 *    after a restart must match, up to the commit index restored: the
 *    commit index is written lazily, so beyond it only a lying peer could
 *    replace an entry, and the core cannot tell);
 *  - the Ready contract of raft.h: committed entries contiguous from the
 *    last applied, durable and matching what was written; entries to
 *    persist contiguous, starting no later than the stored log's end + 1
 *    and after the stored snapshot; persist_index/persist_term describe
 *    them; a snapshot Ready carries no committed entries and hs.commit >=
 *    its index, and only moves the state machine forward; hs_changed and
 *    ss_changed tell the truth; messages come from the node, go to
 *    another node, carry no term above the node's (READ_INDEX traffic
 *    term 0), APPENDs hold contiguous entries of non-decreasing terms
 *    that (for the current leader) match its log; INSTALL_SNAPSHOT names
 *    a snapshot that is durable here; acknowledgements sent after a
 *    write (APPEND_RESP, VOTE_RESP) claim only what is then durable, and
 *    those sent before it only what already was; each read gets one
 *    outcome; Ready memory stays valid until the next raft_ready;
 *  - a message raft_step refuses (PZ_EINVAL) changes nothing and comes
 *    with a reason (raft_errmsg), but one of a term out of reach
 *    (RAFT_TERM_BOUND), which moves the node's term up to its reach and
 *    leaves its log alone.
 *
 * FUZZ_TRACE=1 prints each operation, the node's state and the stored
 * log, to follow a crashing input. */
#include "fuzz.h"

#include "pz.h"
#include "raft.h"

#define SELF 1
#define MAX_ID 7      /* peers 2..N, non-voter 6, unknown 7 */
#define MAX_OPS 400   /* operations per input */
#define MAX_SENT 64   /* messages remembered for answers */
#define MAX_SNAPS 64  /* durable snapshots remembered */

/* --- the driver's durable state (store.c + snapshot files) ---------------- */

struct sentry {
    uint64_t index, term;
    uint8_t type;
    uint8_t *data;
    size_t len;
};

struct store {
    struct raft_hard_state hs;      /* written hard state */
    bool have_snap;                 /* a durable snapshot exists */
    struct raft_snapshot_meta snap; /* it (conf owned) */
    uint64_t base;                  /* entries <= base dropped */
    struct sentry *e;               /* entries base+1 .. base+n */
    size_t n, cap;
};

/* What an index was handed out as, once committed. */
struct crec {
    bool set;
    uint64_t term;
    uint64_t hash;
};

/* A message sent, kept for a well-behaved answer. */
struct sent {
    uint8_t type;
    uint64_t to, term, index, log_term, context, snap_index;
    size_t n_entries;
    uint64_t last_entry; /* index of its last entry */
};

struct h {
    struct fz f;
    struct raft_config cfg;
    struct raft *r;
    size_t nvoters;
    bool nonvoter;
    struct raft_conf conf0;   /* initial configuration */
    uint8_t *confs[8];        /* encoded configuration variants */
    size_t conf_len[8];
    size_t n_confs;

    struct store st;
    uint64_t saved_term, saved_vote; /* node.c: last written term/vote */

    bool in_flight;          /* a Ready is taken and its write pending */
    struct raft_ready rd;    /* it */
    uint64_t rd_hash;        /* its entries' digest when taken */
    bool have_prev;          /* a Ready was taken since the start */
    struct raft_hard_state prev_hs;
    struct raft_soft_state prev_ss;

    uint64_t applied;        /* the state machine's applied index */
    struct crec *crec;       /* committed records by index */
    size_t ncrec;

    /* monotonic views */
    uint64_t epoch;          /* restarts so far */
    uint64_t term_floor, commit_floor;
    uint64_t last_term, last_vote;
    uint64_t vote_of[64];    /* (term mod 64) -> candidate granted */
    uint64_t vote_term[64];  /* the term of that slot */
    uint64_t led_term[64];   /* terms led, (term mod 64) */
    uint64_t led_epoch[64];

    uint64_t next_ctx;       /* read contexts handed out */
    uint64_t *pending;       /* contexts waiting for an outcome */
    size_t npending, cap_pending;

    struct sent sent[MAX_SENT];
    size_t nsent;

    uint64_t snaps[MAX_SNAPS][2]; /* durable snapshots (index, term) */
    size_t nsnaps;
};

static uint64_t hash_entry(uint8_t type, const uint8_t *d, size_t n)
{
    return fuzz_hash(d, n) ^ ((uint64_t)type << 56) ^ n;
}

/* --- helpers --------------------------------------------------------------- */

static void status(struct h *h, struct raft_status *s)
{
    raft_status(h->r, s);
}

static uint64_t store_last(const struct store *st)
{
    return st->base + st->n;
}

static const struct sentry *store_at(const struct store *st, uint64_t i)
{
    if (i <= st->base || i > store_last(st))
        return NULL;
    return &st->e[i - st->base - 1];
}

static void store_truncate(struct store *st, uint64_t from)
{
    while (st->n > 0 && store_last(st) >= from) {
        st->n--;
        free(st->e[st->n].data);
    }
}

static void store_drop_upto(struct store *st, uint64_t upto)
{
    size_t k = 0;
    while (k < st->n && st->e[k].index <= upto) {
        free(st->e[k].data);
        k++;
    }
    memmove(st->e, st->e + k, (st->n - k) * sizeof *st->e);
    st->n -= k;
    if (upto > st->base)
        st->base = upto;
}

static void store_append(struct store *st, const struct raft_entry *e)
{
    FUZZ_CHECKF(e->index == store_last(st) + 1,
                "entry %llu written after stored %llu",
                (unsigned long long)e->index,
                (unsigned long long)store_last(st));
    if (st->n == st->cap) {
        st->cap = st->cap ? st->cap * 2 : 64;
        st->e = realloc(st->e, st->cap * sizeof *st->e);
        FUZZ_CHECK(st->e != NULL);
    }
    struct sentry *s = &st->e[st->n++];
    s->index = e->index;
    s->term = e->term;
    s->type = e->type;
    s->len = e->len;
    s->data = e->len ? fuzz_dup(e->data, e->len) : NULL;
}

static void store_free(struct store *st)
{
    store_truncate(st, 0);
    free(st->e);
    raft_conf_free(&st->snap.conf);
    memset(st, 0, sizeof *st);
}

static void add_snap(struct h *h, uint64_t index, uint64_t term)
{
    if (h->nsnaps == MAX_SNAPS) {
        memmove(h->snaps, h->snaps + 1, (MAX_SNAPS - 1) * sizeof h->snaps[0]);
        h->nsnaps--;
    }
    h->snaps[h->nsnaps][0] = index;
    h->snaps[h->nsnaps][1] = term;
    h->nsnaps++;
}

static bool known_snap(const struct h *h, uint64_t index, uint64_t term)
{
    for (size_t i = 0; i < h->nsnaps; i++)
        if (h->snaps[i][0] == index && h->snaps[i][1] == term)
            return true;
    return false;
}

static void add_pending(struct h *h, uint64_t ctx)
{
    if (h->npending == h->cap_pending) {
        h->cap_pending = h->cap_pending ? 2 * h->cap_pending : 16;
        h->pending = realloc(h->pending, h->cap_pending * sizeof *h->pending);
        FUZZ_CHECK(h->pending != NULL);
    }
    h->pending[h->npending++] = ctx;
}

/* An outcome for ctx: it must be pending, and is no more. */
static void take_pending(struct h *h, uint64_t ctx)
{
    for (size_t i = 0; i < h->npending; i++) {
        if (h->pending[i] == ctx) {
            h->pending[i] = h->pending[--h->npending];
            return;
        }
    }
    FUZZ_CHECKF(0, "read ctx %llu: outcome for no pending read",
                (unsigned long long)ctx);
}

static struct crec *crec_at(struct h *h, uint64_t index)
{
    if (index >= h->ncrec) {
        if (index > 1000000)
            return NULL; /* wild indexes: not recorded */
        size_t n = h->ncrec ? h->ncrec : 64;
        while (n <= index)
            n *= 2;
        h->crec = realloc(h->crec, n * sizeof *h->crec);
        FUZZ_CHECK(h->crec != NULL);
        memset(h->crec + h->ncrec, 0, (n - h->ncrec) * sizeof *h->crec);
        h->ncrec = n;
    }
    return &h->crec[index];
}

/* --- invariants on the node's state ---------------------------------------- */

static void check_state(struct h *h)
{
    struct raft_status s;
    status(h, &s);
    FUZZ_CHECKF(s.term >= h->term_floor, "term went back from %llu to %llu",
                (unsigned long long)h->term_floor,
                (unsigned long long)s.term);
    if (s.term == h->last_term && h->last_vote != 0)
        FUZZ_CHECKF(s.vote == h->last_vote,
                    "vote changed within term %llu: %llu -> %llu",
                    (unsigned long long)s.term,
                    (unsigned long long)h->last_vote,
                    (unsigned long long)s.vote);
    h->term_floor = s.term;
    h->last_term = s.term;
    h->last_vote = s.vote;
    FUZZ_CHECKF(s.commit >= h->commit_floor, "commit went back %llu -> %llu",
                (unsigned long long)h->commit_floor,
                (unsigned long long)s.commit);
    h->commit_floor = s.commit;
    FUZZ_CHECKF(s.commit <= s.last_index, "commit %llu > last index %llu",
                (unsigned long long)s.commit,
                (unsigned long long)s.last_index);
    FUZZ_CHECK(s.applied <= s.commit);
    FUZZ_CHECK(s.persisted_index <= s.last_index);
    FUZZ_CHECK(s.first_index <= s.last_index + 1);
    FUZZ_CHECK(s.snap_index <= s.commit);
    FUZZ_CHECK(s.first_index - 1 <= s.snap_index || s.snap_index == 0);
    FUZZ_CHECK(s.conf_index <= s.last_index);
    if (s.role == RAFT_LEADER) {
        FUZZ_CHECK(s.leader == SELF);
        size_t k = s.term % 64;
        if (h->led_term[k] == s.term)
            FUZZ_CHECKF(h->led_epoch[k] == h->epoch,
                        "leads term %llu again after a restart",
                        (unsigned long long)s.term);
        h->led_term[k] = s.term;
        h->led_epoch[k] = h->epoch;
    }
    /* Committed entries still held keep their term and data. */
    uint64_t hi = PZ_MIN(s.last_index, (uint64_t)h->ncrec ? h->ncrec - 1 : 0);
    for (uint64_t i = s.first_index; i <= hi; i++) {
        const struct crec *c = &h->crec[i];
        if (!c->set)
            continue;
        const struct raft_entry *e = raft_log_get(h->r, i);
        FUZZ_CHECK(e != NULL);
        FUZZ_CHECKF(e->term == c->term &&
                        hash_entry(e->type, e->data, e->len) == c->hash,
                    "committed entry %llu (term %llu) now has term %llu "
                    "or other data",
                    (unsigned long long)i, (unsigned long long)c->term,
                    (unsigned long long)e->term);
    }
}

/* --- messages the node sends ----------------------------------------------- */

static void remember(struct h *h, const struct raft_msg *m)
{
    if (h->nsent == MAX_SENT) {
        memmove(h->sent, h->sent + 1, (MAX_SENT - 1) * sizeof h->sent[0]);
        h->nsent--;
    }
    struct sent *s = &h->sent[h->nsent++];
    s->type = m->type;
    s->to = m->to;
    s->term = m->term;
    s->index = m->index;
    s->log_term = m->log_term;
    s->context = m->context;
    s->snap_index = m->snap_index;
    s->n_entries = m->n_entries;
    s->last_entry = m->n_entries ? m->entries[m->n_entries - 1].index : 0;
}

/* A message as it leaves: durable_before tells whether it goes before
 * the Ready's write (then it may claim only what was already durable). */
static void check_msg(struct h *h, const struct raft_msg *m, uint64_t term,
                      bool before_write)
{
    struct raft_status s;
    status(h, &s);
    FUZZ_CHECK(m->from == SELF);
    FUZZ_CHECKF(m->to != SELF && m->to != 0, "message to %llu",
                (unsigned long long)m->to);
    FUZZ_CHECK(m->type >= RAFT_MSG_APPEND && m->type < RAFT_MSG_TYPE_MAX &&
               m->type != RAFT_MSG_INSTALL_SNAPSHOT_RESP);
    switch (m->type) {
    case RAFT_MSG_READ_INDEX:
    case RAFT_MSG_READ_INDEX_RESP:
        FUZZ_CHECK(m->term == 0);
        break;
    case RAFT_MSG_PREVOTE:
        FUZZ_CHECK(m->term <= term + 1);
        break;
    case RAFT_MSG_PREVOTE_RESP:
        break; /* a grant carries the term asked for */
    default:
        FUZZ_CHECKF(m->term <= term, "%s with term %llu above %llu",
                    raft_msg_type_name(m->type),
                    (unsigned long long)m->term, (unsigned long long)term);
    }
    if (m->type == RAFT_MSG_APPEND) {
        uint64_t prev = m->log_term;
        for (size_t i = 0; i < m->n_entries; i++) {
            const struct raft_entry *e = &m->entries[i];
            FUZZ_CHECK(e->index == m->index + 1 + i);
            FUZZ_CHECK(e->term >= prev && e->term <= m->term);
            FUZZ_CHECK(e->type <= RAFT_ENTRY_NOOP);
            prev = e->term;
            /* A leader's log only grows in its term. */
            if (s.role == RAFT_LEADER && m->term == s.term) {
                const struct raft_entry *le = raft_log_get(h->r, e->index);
                FUZZ_CHECK(le == NULL || (le->term == e->term &&
                                          le->len == e->len));
            }
        }
        FUZZ_CHECK(m->commit <= s.commit);
    }
    if (m->type == RAFT_MSG_HEARTBEAT)
        FUZZ_CHECK(m->commit <= s.commit);
    if (m->type == RAFT_MSG_INSTALL_SNAPSHOT) {
        FUZZ_CHECK(m->n_entries == 1);
        const struct raft_entry *e = &m->entries[0];
        FUZZ_CHECK(e->type == RAFT_ENTRY_CONF && e->index == m->snap_index &&
                   e->term == m->snap_term);
        struct raft_conf c;
        FUZZ_CHECK(raft_conf_decode(e->data, e->len, &c) == 0);
        raft_conf_free(&c);
        FUZZ_CHECKF(known_snap(h, m->snap_index, m->snap_term),
                    "INSTALL_SNAPSHOT of (%llu, %llu), not durable here",
                    (unsigned long long)m->snap_index,
                    (unsigned long long)m->snap_term);
    }
    if (m->type == RAFT_MSG_APPEND_RESP && !m->reject) {
        /* "my log matches yours up to index": durable up to there. */
        FUZZ_CHECKF(m->index <= store_last(&h->st),
                    "APPEND_RESP acknowledges %llu, durable %llu (%s)",
                    (unsigned long long)m->index,
                    (unsigned long long)store_last(&h->st),
                    before_write ? "before the write" : "after it");
    }
    if (m->type == RAFT_MSG_VOTE_RESP && !m->reject) {
        const struct raft_hard_state *d = &h->st.hs;
        FUZZ_CHECKF(d->term > m->term ||
                        (d->term == m->term && d->vote == m->to),
                    "vote for %llu in term %llu sent, durable: term %llu "
                    "vote %llu",
                    (unsigned long long)m->to, (unsigned long long)m->term,
                    (unsigned long long)d->term, (unsigned long long)d->vote);
        size_t k = m->term % 64;
        if (h->vote_term[k] == m->term)
            FUZZ_CHECKF(h->vote_of[k] == m->to,
                        "two votes in term %llu: %llu and %llu",
                        (unsigned long long)m->term,
                        (unsigned long long)h->vote_of[k],
                        (unsigned long long)m->to);
        h->vote_term[k] = m->term;
        h->vote_of[k] = m->to;
    }
    remember(h, m);
}

/* --- the Ready cycle, as node.c runs it ------------------------------------- */

static uint64_t entries_hash(const struct raft_entry *e, size_t n)
{
    uint64_t x = 0;
    for (size_t i = 0; i < n; i++)
        x = x * 31 + (hash_entry(e[i].type, e[i].data, e[i].len) ^
                      e[i].index ^ (e[i].term << 20));
    return x;
}

static void check_entries(struct h *h, const struct raft_ready *rd)
{
    const struct store *st = &h->st;
    if (rd->n_entries == 0) {
        FUZZ_CHECK(rd->persist_index == 0);
        return;
    }
    uint64_t first = rd->entries[0].index;
    uint64_t base = rd->snapshot ? rd->snapshot->index : st->base;
    uint64_t last = rd->snapshot ? rd->snapshot->index : store_last(st);
    FUZZ_CHECKF(first > base, "writes entry %llu at or below %llu",
                (unsigned long long)first, (unsigned long long)base);
    FUZZ_CHECKF(first <= last + 1, "writes entry %llu after stored %llu",
                (unsigned long long)first, (unsigned long long)last);
    if (rd->snapshot)
        FUZZ_CHECK(first == rd->snapshot->index + 1);
    uint64_t prev_term = 0;
    if (rd->snapshot)
        prev_term = rd->snapshot->term;
    else if (first - 1 == st->base && h->st.have_snap &&
             st->base == h->st.snap.index)
        prev_term = h->st.snap.term;
    else if (store_at(st, first - 1))
        prev_term = store_at(st, first - 1)->term;
    for (size_t i = 0; i < rd->n_entries; i++) {
        const struct raft_entry *e = &rd->entries[i];
        FUZZ_CHECK(e->index == first + i);
        FUZZ_CHECKF(e->term >= prev_term && e->term <= rd->hs.term,
                    "entry %llu term %llu (previous %llu, hs %llu)",
                    (unsigned long long)e->index, (unsigned long long)e->term,
                    (unsigned long long)prev_term,
                    (unsigned long long)rd->hs.term);
        FUZZ_CHECK(e->type <= RAFT_ENTRY_NOOP);
        FUZZ_CHECK((e->len == 0) == (e->data == NULL));
        prev_term = e->term;
    }
    FUZZ_CHECK(rd->persist_index == rd->entries[rd->n_entries - 1].index);
    FUZZ_CHECK(rd->persist_term == rd->entries[rd->n_entries - 1].term);
}

/* raft_ready + ready_apply + send_all(msgs): the first half. */
static void take_ready(struct h *h, bool even_if_empty)
{
    if (h->in_flight)
        return;
    if (!raft_has_ready(h->r) && !even_if_empty)
        return;
    struct raft_ready *rd = &h->rd;
    raft_ready(h->r, rd);
    FUZZ_CHECK(!raft_has_ready(h->r));
    h->in_flight = true;

    if (h->have_prev) {
        bool hs_same = rd->hs.term == h->prev_hs.term &&
                       rd->hs.vote == h->prev_hs.vote &&
                       rd->hs.commit == h->prev_hs.commit;
        FUZZ_CHECK(rd->hs_changed == !hs_same);
        bool ss_same = rd->ss.role == h->prev_ss.role &&
                       rd->ss.leader == h->prev_ss.leader &&
                       rd->ss.term == h->prev_ss.term;
        FUZZ_CHECK(rd->ss_changed == !ss_same);
        FUZZ_CHECK(rd->hs.term >= h->prev_hs.term);
    }
    h->have_prev = true;
    h->prev_hs = rd->hs;
    h->prev_ss = rd->ss;
    FUZZ_CHECK(rd->ss.term == rd->hs.term);

    check_entries(h, rd);
    h->rd_hash = entries_hash(rd->entries, rd->n_entries);

    if (rd->snapshot) {
        FUZZ_CHECK(rd->n_committed == 0);
        FUZZ_CHECK(rd->hs.commit >= rd->snapshot->index);
        FUZZ_CHECKF(rd->snapshot->index > h->applied,
                    "snapshot %llu would take the state machine back from "
                    "%llu",
                    (unsigned long long)rd->snapshot->index,
                    (unsigned long long)h->applied);
        h->applied = rd->snapshot->index; /* loaded from the file */
    }
    for (size_t i = 0; i < rd->n_committed; i++) {
        const struct raft_entry *e = &rd->committed[i];
        FUZZ_CHECKF(e->index == h->applied + 1,
                    "committed %llu after applied %llu",
                    (unsigned long long)e->index,
                    (unsigned long long)h->applied);
        FUZZ_CHECK(e->index <= rd->hs.commit);
        const struct sentry *se = store_at(&h->st, e->index);
        FUZZ_CHECKF(se != NULL && se->term == e->term &&
                        hash_entry(se->type, se->data, se->len) ==
                            hash_entry(e->type, e->data, e->len),
                    "committed entry %llu (term %llu) is not durable as such",
                    (unsigned long long)e->index,
                    (unsigned long long)e->term);
        struct crec *c = crec_at(h, e->index);
        uint64_t hh = hash_entry(e->type, e->data, e->len);
        if (c != NULL) {
            if (c->set)
                FUZZ_CHECKF(c->term == e->term && c->hash == hh,
                            "index %llu committed as term %llu, now %llu",
                            (unsigned long long)e->index,
                            (unsigned long long)c->term,
                            (unsigned long long)e->term);
            c->set = true;
            c->term = e->term;
            c->hash = hh;
        }
        h->applied = e->index;
    }
    for (size_t i = 0; i < rd->n_read_states; i++) {
        take_pending(h, rd->read_states[i].ctx);
        FUZZ_CHECK(rd->ss.role != RAFT_LEADER ||
                   rd->read_states[i].index <= rd->hs.commit);
    }
    for (size_t i = 0; i < rd->n_dropped_reads; i++)
        take_pending(h, rd->dropped_reads[i]);
    for (size_t i = 0; i < rd->n_msgs; i++)
        check_msg(h, &rd->msgs[i], rd->hs.term, true);
}

/* The write of the Ready in flight is durable: on_written. */
static void finish_ready(struct h *h)
{
    if (!h->in_flight)
        return;
    struct raft_ready *rd = &h->rd;
    /* Ready memory stays valid until the next raft_ready(). */
    FUZZ_CHECK(entries_hash(rd->entries, rd->n_entries) == h->rd_hash);
    bool hs_needed = rd->hs_changed && (rd->hs.term != h->saved_term ||
                                        rd->hs.vote != h->saved_vote);
    if (hs_needed || rd->n_entries || rd->snapshot) {
        struct store *st = &h->st;
        h->saved_term = rd->hs.term;
        h->saved_vote = rd->hs.vote;
        if (rd->snapshot) {
            store_truncate(st, 0);
            st->n = 0;
            st->base = rd->snapshot->index;
            st->have_snap = true;
            st->snap.index = rd->snapshot->index;
            st->snap.term = rd->snapshot->term;
            raft_conf_copy(&st->snap.conf, &rd->snapshot->conf);
            add_snap(h, rd->snapshot->index, rd->snapshot->term);
        }
        st->hs = rd->hs;
        if (rd->n_entries) {
            store_truncate(st, rd->entries[0].index);
            for (size_t i = 0; i < rd->n_entries; i++)
                store_append(st, &rd->entries[i]);
        }
    }
    for (size_t i = 0; i < rd->n_msgs_after_persist; i++)
        check_msg(h, &rd->msgs_after_persist[i], rd->hs.term, false);
    h->in_flight = false;
    raft_advance(h->r, rd);
}

/* A Ready that needs no write is finished at once (node.c). */
static bool needs_write(const struct h *h)
{
    const struct raft_ready *rd = &h->rd;
    bool hs_needed = rd->hs_changed && (rd->hs.term != h->saved_term ||
                                        rd->hs.vote != h->saved_vote);
    return hs_needed || rd->n_entries || rd->snapshot;
}

static void cycle(struct h *h)
{
    take_ready(h, false);
    if (h->in_flight)
        finish_ready(h);
}

/* --- inputs ------------------------------------------------------------------ */

/* What a refused message must leave as it was. */
struct seen {
    struct raft_status s;
    bool has_ready;
    uint64_t last_term;
};

static void look(struct h *h, struct seen *v)
{
    status(h, &v->s);
    v->s.peers = NULL; /* the buffer is reused by the next call */
    v->has_ready = raft_has_ready(h->r);
    v->last_term = v->s.last_term;
}

static void step(struct h *h, const struct raft_msg *m)
{
    struct seen before, after;
    look(h, &before);
    int rv = raft_step(h->r, m);
    bool bad_type = m->type < RAFT_MSG_APPEND || m->type >= RAFT_MSG_TYPE_MAX;
    FUZZ_CHECKF(rv == 0 || rv == PZ_EINVAL, "raft_step returned %d", rv);
    if (bad_type || m->from == 0)
        FUZZ_CHECK(rv == PZ_EINVAL);
    if (rv != 0) {
        /* Refused before anything changed, with a reason; but a term out
         * of reach (RAFT_TERM_BOUND) moves ours up to the reach, and
         * changes only the term and what goes with it (vote, role,
         * leader), never the log. */
        FUZZ_CHECK(raft_errmsg(h->r)[0] != '\0');
        look(h, &after);
        uint64_t reach =
            PZ_MIN(PZ_MAX(before.s.term + RAFT_TERM_LEAP, RAFT_TERM_BOUND - 1),
                   RAFT_TERM_MAX);
        if (after.s.term != before.s.term) {
            FUZZ_CHECKF(m->to == SELF && m->from != SELF && m->term > reach &&
                            after.s.term == reach &&
                            after.s.role == RAFT_FOLLOWER &&
                            after.s.leader == 0 && after.s.vote == 0 &&
                            after.s.commit == before.s.commit &&
                            after.s.applied == before.s.applied &&
                            after.s.last_index == before.s.last_index &&
                            after.s.last_term == before.s.last_term &&
                            after.s.first_index == before.s.first_index &&
                            after.s.snap_index == before.s.snap_index,
                        "refused %s (%s) changed the node past its term",
                        raft_msg_type_name(m->type), raft_errmsg(h->r));
            return;
        }
        FUZZ_CHECKF(memcmp(&before.s, &after.s, sizeof before.s) == 0 &&
                        before.has_ready == after.has_ready,
                    "refused %s (%s) changed the node",
                    raft_msg_type_name(m->type), raft_errmsg(h->r));
    }
}

/* The answer a well-behaved peer gives to a message of ours. */
static void answer(struct h *h, const struct sent *s, bool grant)
{
    struct raft_msg m;
    memset(&m, 0, sizeof m);
    m.from = s->to;
    m.to = SELF;
    m.term = s->term;
    switch (s->type) {
    case RAFT_MSG_APPEND:
        m.type = RAFT_MSG_APPEND_RESP;
        m.index = s->n_entries ? s->last_entry : s->index;
        if (!grant) {
            m.reject = true;
            m.index = s->index;
            m.reject_hint = s->index;
            m.log_term = s->log_term ? s->log_term - 1 : 0;
        }
        break;
    case RAFT_MSG_HEARTBEAT:
        m.type = RAFT_MSG_HEARTBEAT_RESP;
        m.context = s->context;
        /* a peer's promise (read leases): ours, or none (not granted) */
        m.lease_ns = grant ? h->cfg.lease_ns : 0;
        break;
    case RAFT_MSG_PREVOTE:
        m.type = RAFT_MSG_PREVOTE_RESP;
        m.reject = !grant;
        break;
    case RAFT_MSG_VOTE:
        m.type = RAFT_MSG_VOTE_RESP;
        m.reject = !grant;
        break;
    case RAFT_MSG_READ_INDEX: {
        struct raft_status st;
        status(h, &st);
        m.type = RAFT_MSG_READ_INDEX_RESP;
        m.term = 0;
        m.context = s->context;
        m.index = st.commit;
        m.reject = !grant;
        break;
    }
    case RAFT_MSG_INSTALL_SNAPSHOT:
        (void)raft_report_snapshot(h->r, s->to, grant);
        m.type = RAFT_MSG_APPEND_RESP;
        m.index = s->snap_index;
        break;
    default:
        return; /* answers, TIMEOUT_NOW: nothing */
    }
    step(h, &m);
}

static void answer_all(struct h *h, uint8_t mask)
{
    size_t n = h->nsent;
    struct sent copy[MAX_SENT];
    memcpy(copy, h->sent, n * sizeof copy[0]);
    h->nsent = 0;
    for (size_t i = 0; i < n; i++)
        if (!(mask >> (copy[i].to % 8) & 1))
            answer(h, &copy[i], true);
}

static uint64_t term_at(struct h *h, uint64_t index)
{
    const struct raft_entry *e = raft_log_get(h->r, index);
    if (e)
        return e->term;
    struct raft_status s;
    status(h, &s);
    if (index == s.first_index - 1)
        return s.compact_term;
    return 0;
}

static uint64_t pick_index(struct fz *f, const struct raft_status *s)
{
    switch (fz_u8(f) % 12) {
    case 0:
        return 0;
    case 1:
    case 2:
        return s->last_index;
    case 3:
        return s->last_index ? s->last_index - 1 : 0;
    case 4:
        return s->last_index + 1;
    case 5:
        return s->commit;
    case 6:
        return s->first_index - 1;
    case 7:
        return s->commit + 1;
    case 8:
        return s->commit ? s->commit - 1 : 0;
    case 9:
    case 10:
        return fz_range(f, 0, s->last_index + 3);
    default:
        return fz_u8(f) & 1 ? fz_u64(f) : UINT64_MAX - fz_u8(f) % 3;
    }
}

static uint64_t pick_term(struct fz *f, uint64_t cur)
{
    switch (fz_u8(f) % 10) {
    case 0:
    case 1:
    case 2:
    case 3:
        return cur;
    case 4:
    case 5:
        return cur + 1;
    case 6:
        return cur ? cur - 1 : 0;
    case 7:
        return cur + 2 + fz_u8(f) % 4;
    case 8:
        return fz_u8(f) % 4;
    default:
        return fz_u64(f);
    }
}

static uint64_t pick_from(struct fz *f)
{
    uint8_t b = fz_u8(f);
    if (b < 200)
        return 2 + b % 4; /* 2..5: peers (4, 5 only with 5 voters) */
    return b % (MAX_ID + 1); /* 0 (invalid), self, 6, 7 too */
}

static void fill_entries(struct h *h, struct raft_msg *m, struct raft_entry *es,
                         uint8_t (*bufs)[16], size_t max)
{
    struct fz *f = &h->f;
    size_t n = fz_u8(f) % (max + 1);
    uint64_t t = m->log_term;
    for (size_t i = 0; i < n; i++) {
        struct raft_entry *e = &es[i];
        memset(e, 0, sizeof *e);
        e->index = m->index + 1 + i;
        uint8_t how = fz_u8(f);
        if (how % 4 != 0 && m->term > t)
            t = fz_range(f, t ? t : 1, m->term);
        else if (t == 0 && m->term > 0)
            t = 1;
        e->term = t;
        switch (how / 4 % 8) {
        case 0:
        case 1:
        case 2:
        case 3: {
            e->type = RAFT_ENTRY_NORMAL;
            size_t len;
            const uint8_t *d = fz_bytes(f, 16, &len);
            memcpy(bufs[i], d, len);
            e->data = len ? bufs[i] : NULL;
            e->len = len;
            break;
        }
        case 4:
        case 5: {
            e->type = RAFT_ENTRY_CONF;
            size_t k = fz_u8(f) % h->n_confs;
            e->data = h->confs[k];
            e->len = h->conf_len[k];
            break;
        }
        case 6:
            e->type = RAFT_ENTRY_NOOP;
            break;
        default: /* broken: garbage conf, wrong index or term */
            e->type = fz_u8(f) % 4;
            e->data = bufs[i];
            e->len = 1 + fz_u8(f) % 8;
            memset(bufs[i], fz_u8(f), 16);
            if (fz_bool(f))
                e->index += fz_u8(f);
            if (fz_bool(f))
                e->term = fz_u64(f);
        }
    }
    m->entries = n ? es : NULL;
    m->n_entries = n;
}

static void op_step(struct h *h)
{
    struct fz *f = &h->f;
    struct raft_status s;
    status(h, &s);
    struct raft_msg m;
    struct raft_entry es[4];
    uint8_t bufs[4][16];
    memset(&m, 0, sizeof m);
    uint8_t t = fz_u8(f);
    m.type = t < 240 ? 1 + t % (RAFT_MSG_TYPE_MAX - 1) : t;
    m.from = pick_from(f);
    m.to = fz_u8(f) < 240 ? SELF : fz_u8(f) % (MAX_ID + 1);
    m.term = pick_term(f, s.term);
    uint8_t flags = fz_u8(f);
    m.reject = flags & 1;
    m.transfer = flags & 2;
    switch (m.type) {
    case RAFT_MSG_APPEND:
        m.index = pick_index(f, &s);
        m.log_term = (flags & 0x0c) ? term_at(h, m.index)
                                    : pick_term(f, s.term);
        m.commit = pick_index(f, &s);
        fill_entries(h, &m, es, bufs, 4);
        break;
    case RAFT_MSG_APPEND_RESP:
        m.index = pick_index(f, &s);
        m.log_term = pick_term(f, s.term);
        m.reject_hint = pick_index(f, &s);
        break;
    case RAFT_MSG_HEARTBEAT:
        m.commit = pick_index(f, &s);
        m.context = fz_u8(f) % 8;
        break;
    case RAFT_MSG_HEARTBEAT_RESP:
        m.context = fz_u8(f) % 8;
        break;
    case RAFT_MSG_PREVOTE:
    case RAFT_MSG_VOTE:
        m.index = pick_index(f, &s);
        m.log_term = (flags & 0x0c) ? s.last_term + (flags >> 4 & 1)
                                    : pick_term(f, s.term);
        break;
    case RAFT_MSG_READ_INDEX:
        m.term = 0;
        m.context = fz_u8(f);
        break;
    case RAFT_MSG_READ_INDEX_RESP:
        m.term = 0;
        m.context = h->npending && fz_bool(f)
                        ? h->pending[fz_u8(f) % h->npending]
                        : fz_u8(f);
        m.index = pick_index(f, &s);
        break;
    case RAFT_MSG_INSTALL_SNAPSHOT: {
        m.snap_index = pick_index(f, &s);
        if (fz_bool(f))
            m.snap_index += fz_u8(f) % 16;
        m.snap_term = (flags & 0x0c) ? term_at(h, m.snap_index)
                                     : pick_term(f, s.term);
        if (m.snap_term == 0 || m.snap_term > m.term)
            m.snap_term = m.term;
        size_t k = fz_u8(f) % h->n_confs;
        es[0] = (struct raft_entry){.term = m.snap_term,
                                    .index = m.snap_index,
                                    .type = RAFT_ENTRY_CONF,
                                    .data = h->confs[k],
                                    .len = h->conf_len[k]};
        if (flags & 0x40) { /* broken */
            es[0].index += flags >> 7;
            es[0].type = fz_u8(f) % 4;
        }
        m.entries = es;
        m.n_entries = 1;
        break;
    }
    default:
        break;
    }
    if (getenv("FUZZ_TRACE")) {
        fprintf(stderr,
                "step %s from %llu to %llu term %llu index %llu log_term %llu "
                "commit %llu snap %llu/%llu reject %d entries:",
                raft_msg_type_name(m.type), (unsigned long long)m.from,
                (unsigned long long)m.to, (unsigned long long)m.term,
                (unsigned long long)m.index, (unsigned long long)m.log_term,
                (unsigned long long)m.commit,
                (unsigned long long)m.snap_index,
                (unsigned long long)m.snap_term, m.reject);
        for (size_t i = 0; i < m.n_entries; i++)
            fprintf(stderr, " %llu/%llu/%u",
                    (unsigned long long)m.entries[i].index,
                    (unsigned long long)m.entries[i].term,
                    m.entries[i].type);
        fputc('\n', stderr);
    }
    step(h, &m);
}

static void op_propose_conf(struct h *h)
{
    struct fz *f = &h->f;
    struct raft_conf_change cc = {.type = 1 + fz_u8(f) % 5,
                                  .id = fz_u8(f) % (MAX_ID + 1),
                                  .meta = "m"};
    uint64_t index = 0, term = 0;
    int rv = raft_propose_conf(h->r, &cc, &index, &term);
    FUZZ_CHECK(rv == 0 || rv == PZ_ENOTLEADER || rv == PZ_EBUSY ||
               rv == PZ_EINVAL);
    if (rv == 0) {
        struct raft_status s;
        status(h, &s);
        FUZZ_CHECK(index == s.last_index && term == s.term);
        FUZZ_CHECK(s.conf_index == index);
    }
}

static void op_propose(struct h *h)
{
    size_t len;
    const uint8_t *d = fz_bytes(&h->f, 24, &len);
    uint64_t index = 0, term = 0;
    int rv = raft_propose(h->r, d, len, &index, &term);
    FUZZ_CHECK(rv == 0 || rv == PZ_ENOTLEADER || rv == PZ_EBUSY);
    if (rv == 0) {
        struct raft_status s;
        status(h, &s);
        FUZZ_CHECK(index == s.last_index && term == s.term);
        const struct raft_entry *e = raft_log_get(h->r, index);
        FUZZ_CHECK(e != NULL && e->len == len &&
                   (len == 0 || memcmp(e->data, d, len) == 0));
    }
}

/* A snapshot of the applied state is durable: compact (node.c
 * snapshot_poll), then drop the stored prefix when no write runs. */
static void op_compact(struct h *h)
{
    struct fz *f = &h->f;
    struct raft_status s;
    status(h, &s);
    uint64_t at = fz_u8(f) % 8 == 0 ? pick_index(f, &s)
                                     : fz_range(f, s.snap_index, s.applied);
    uint64_t trailing = fz_u8(f) % 6;
    struct raft_snapshot_meta meta;
    int rv = raft_snapshot_meta_at(h->r, at, &meta);
    FUZZ_CHECK(rv == 0 || rv == PZ_EINVAL);
    if (rv != 0) {
        FUZZ_CHECK(at > s.applied || at < s.snap_index);
        raft_conf_free(&meta.conf);
        return;
    }
    FUZZ_CHECK(meta.index == at);
    if (at == 0 || at <= s.snap_index || at > h->applied) {
        raft_conf_free(&meta.conf);
        rv = raft_compact(h->r, at, trailing);
        FUZZ_CHECK(rv == PZ_ECANCELED || rv == PZ_EINVAL);
        return;
    }
    /* The file (state machine as of at) is durable: it is a snapshot. */
    add_snap(h, meta.index, meta.term);
    rv = raft_compact(h->r, at, trailing);
    FUZZ_CHECK(rv == 0);
    h->st.have_snap = true;
    h->st.snap.index = meta.index;
    h->st.snap.term = meta.term;
    raft_conf_copy(&h->st.snap.conf, &meta.conf);
    raft_conf_free(&meta.conf);
    status(h, &s);
    FUZZ_CHECK(s.snap_index == at);
    if (!h->in_flight && s.first_index > 1)
        store_drop_upto(&h->st, s.first_index - 1);
}

static void dump_store(const struct store *st)
{
    fprintf(stderr, "store: hs term %llu vote %llu commit %llu; snapshot %s"
                    "%llu/%llu; base %llu; entries:",
            (unsigned long long)st->hs.term, (unsigned long long)st->hs.vote,
            (unsigned long long)st->hs.commit, st->have_snap ? "" : "(none) ",
            (unsigned long long)st->snap.index,
            (unsigned long long)st->snap.term, (unsigned long long)st->base);
    for (size_t i = 0; i < st->n; i++)
        fprintf(stderr, " %llu/%llu/%u", (unsigned long long)st->e[i].index,
                (unsigned long long)st->e[i].term, st->e[i].type);
    fputc('\n', stderr);
}

/* Crash and restart from what is durable (node.c restore()). */
static void restart(struct h *h)
{
    raft_free(h->r);
    h->in_flight = false;
    h->cfg.seed++;
    h->r = raft_new(&h->cfg, NULL);
    FUZZ_CHECK(h->r != NULL);
    struct store *st = &h->st;
    struct raft_entry *es = calloc(st->n ? st->n : 1, sizeof *es);
    FUZZ_CHECK(es != NULL);
    for (size_t i = 0; i < st->n; i++)
        es[i] = (struct raft_entry){.term = st->e[i].term,
                                    .index = st->e[i].index,
                                    .type = st->e[i].type,
                                    .data = st->e[i].data,
                                    .len = st->e[i].len};
    bool fresh = st->n == 0 && st->hs.term == 0 && !st->have_snap;
    if (fresh) {
        FUZZ_CHECK(raft_bootstrap(h->r, &h->conf0) == 0); /* nothing stored */
    } else {
        int rv = raft_restore_snapshot(h->r, &st->hs,
                                       st->have_snap ? &st->snap : NULL, es,
                                       st->n);
        if (rv != 0)
            dump_store(st);
        FUZZ_CHECKF(rv == 0, "restart from the durable state refused: %d", rv);
        if (h->cfg.clock != NULL) {
            /* what an earlier run may have promised (node.c keep_promise),
             * and what this one promises while it cannot record more */
            uint8_t p = fz_u8(&h->f);
            raft_restore_promise(h->r, (uint64_t)(p & 0x7f) * 1000000u);
            if (p & 0x80)
                raft_set_promise(h->r, h->cfg.lease_ns / 2);
        }
    }
    free(es);
    struct raft_status s;
    status(h, &s);
    FUZZ_CHECK(fresh || (s.term == st->hs.term && s.vote == st->hs.vote));
    h->saved_term = st->hs.term;
    h->saved_vote = st->hs.vote;
    h->epoch++;
    h->term_floor = s.term;
    h->last_term = s.term;
    h->last_vote = s.vote;
    h->commit_floor = s.commit;
    h->applied = st->have_snap ? st->snap.index : 0; /* replays after it */
    /* The commit index is written lazily (node.c): after a crash the core
     * knows entries as committed only up to the restored commit index. A
     * peer that lies can have later ones replaced, which no correct peer
     * does (Leader Completeness); their records go. */
    for (uint64_t i = s.commit + 1; i < h->ncrec; i++)
        h->crec[i].set = false;
    h->have_prev = false;
    h->npending = 0;
    h->nsent = 0;
}

/* --- setup ------------------------------------------------------------------- */

static void add_conf(struct h *h, const struct raft_conf *c)
{
    raft_conf_encode(c, &h->confs[h->n_confs], &h->conf_len[h->n_confs]);
    h->n_confs++;
}

static void make_confs(struct h *h)
{
    struct raft_conf c;
    raft_conf_init(&h->conf0);
    for (uint64_t id = 1; id <= h->nvoters; id++)
        raft_conf_add(&h->conf0, id, true, "");
    if (h->nonvoter)
        raft_conf_add(&h->conf0, 6, false, "learner");
    add_conf(h, &h->conf0);
    raft_conf_init(&c);
    raft_conf_copy(&c, &h->conf0);
    raft_conf_remove(&c, SELF); /* without this node */
    add_conf(h, &c);
    raft_conf_copy(&c, &h->conf0);
    raft_conf_get(&c, SELF)->voter = false; /* demoted */
    add_conf(h, &c);
    raft_conf_copy(&c, &h->conf0);
    raft_conf_remove(&c, 2);
    add_conf(h, &c);
    raft_conf_copy(&c, &h->conf0);
    raft_conf_remove(&c, 6);
    raft_conf_add(&c, 6, true, "six"); /* a sixth voter */
    add_conf(h, &c);
    raft_conf_free(&c);
    raft_conf_init(&c);
    raft_conf_add(&c, SELF, true, ""); /* alone */
    add_conf(h, &c);
    raft_conf_free(&c);
    raft_conf_add(&c, 2, true, ""); /* others only */
    raft_conf_add(&c, 3, true, "");
    add_conf(h, &c);
    raft_conf_free(&c);
}

/* A valid durable state to restart from: snapshot (maybe), log (maybe
 * reaching below the snapshot), hard state. */
static void restored_start(struct h *h)
{
    struct fz *f = &h->f;
    struct store *st = &h->st;
    uint64_t si = fz_u8(f) % 24;
    uint64_t sterm = si ? 1 + fz_u8(f) % 3 : 0;
    uint64_t below = fz_u8(f) % 4; /* trailing entries below si */
    uint64_t first = si ? si + 1 - PZ_MIN(si, below) : 1;
    uint64_t n = fz_u8(f) % 24;
    if (si && first <= si && first + n < si + 1)
        n = si + 1 - first;
    if (si == 0 && n == 0)
        n = 1;
    if (si) {
        st->have_snap = true;
        st->snap.index = si;
        st->snap.term = sterm;
        raft_conf_copy(&st->snap.conf, &h->conf0);
        add_snap(h, si, sterm);
    }
    st->base = first - 1;
    uint64_t term = 1;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t idx = first + i;
        struct raft_entry e = {.index = idx};
        uint64_t up = fz_u8(f) % 4 == 0;
        if (si && idx < si)
            term = PZ_MIN(sterm, term + up);
        else if (si && idx == si)
            term = sterm;
        else
            term = PZ_MAX(term, sterm) + up;
        e.term = term;
        uint8_t kind = fz_u8(f) % 8;
        uint8_t buf[8];
        if (idx == 1 || kind == 0) {
            size_t k = idx == 1 ? 0 : fz_u8(f) % h->n_confs;
            e.type = RAFT_ENTRY_CONF;
            e.data = h->confs[k];
            e.len = h->conf_len[k];
        } else if (kind == 1) {
            e.type = RAFT_ENTRY_NOOP;
        } else {
            e.type = RAFT_ENTRY_NORMAL;
            memset(buf, (int)idx, sizeof buf);
            e.data = buf;
            e.len = 1 + idx % 8;
        }
        store_append(st, &e);
    }
    uint64_t last_term = st->n ? st->e[st->n - 1].term : sterm;
    st->hs.term = PZ_MAX(last_term, sterm) + fz_u8(f) % 3;
    st->hs.vote = fz_u8(f) % (h->nvoters + 1);
    st->hs.commit = fz_range(f, 0, store_last(st));
    restart(h);
    h->epoch = 0;
}

/* Grant every vote the node asks for until it leads (or gives up). */
static void elect(struct h *h)
{
    raft_campaign(h->r);
    for (int i = 0; i < 8; i++) {
        cycle(h);
        answer_all(h, 0);
        struct raft_status s;
        status(h, &s);
        if (s.role == RAFT_LEADER)
            break;
    }
    check_state(h);
}

/* The lease's clock: ten milliseconds a tick. */
static uint64_t fz_now_ns;

static uint64_t fz_clock(void *arg)
{
    (void)arg;
    return fz_now_ns;
}

static void setup(struct h *h, const uint8_t *data, size_t size)
{
    memset(h, 0, sizeof *h);
    fz_init(&h->f, data, size);
    struct fz *f = &h->f;
    uint8_t b0 = fz_u8(f), b1 = fz_u8(f), b2 = fz_u8(f);
    static const size_t inflight[4] = {1, 2, 4, 256};
    static const size_t maxbytes[4] = {0, 1, 16, 64};
    h->nvoters = b0 & 1 ? 5 : 3;
    h->nonvoter = b0 & 0x20;
    h->cfg.id = SELF;
    h->cfg.heartbeat_ticks = 1 + b1 % 3;
    h->cfg.election_ticks = h->cfg.heartbeat_ticks + 2 + (b1 >> 2) % 8;
    h->cfg.seed = b2;
    h->cfg.pre_vote = b0 & 2;
    h->cfg.check_quorum = b0 & 4;
    h->cfg.max_inflight_msgs = inflight[b0 >> 6];
    h->cfg.max_bytes_per_msg = maxbytes[(b1 >> 5) & 3];
    h->cfg.snapshot_timeout_ticks = (b2 & 7) ? 0 : 3;
    if (h->cfg.check_quorum && (b2 & 8)) {
        fz_now_ns = 0;
        h->cfg.lease_ns =
            (uint64_t)(h->cfg.election_ticks - 1) * 10000000u - 1000000u;
        h->cfg.lease_reads = true;
        h->cfg.clock = fz_clock;
    }
    h->r = raft_new(&h->cfg, NULL);
    FUZZ_CHECK(h->r != NULL);
    make_confs(h);
    if (b0 & 0x10) {
        restored_start(h);
    } else {
        FUZZ_CHECK(raft_bootstrap(h->r, &h->conf0) == 0);
    }
    check_state(h);
    if (b0 & 0x08)
        elect(h);
}

static void teardown(struct h *h)
{
    raft_free(h->r);
    store_free(&h->st);
    raft_conf_free(&h->conf0);
    for (size_t i = 0; i < h->n_confs; i++)
        pz_free(h->confs[i]);
    free(h->crec);
    free(h->pending);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct h h;
    setup(&h, data, size);
    struct fz *f = &h.f;
    for (int ops = 0; ops < MAX_OPS && fz_left(f) > 0; ops++) {
        uint8_t op = fz_u8(f);
        switch (op % 24) {
        case 0:
        case 1:
        case 2:
        case 3:
        case 4:
        case 5:
            op_step(&h);
            break;
        case 6:
        case 7: {
            int n = 1 + fz_u8(f) % 8;
            for (int i = 0; i < n; i++) {
                fz_now_ns += 10000000u;
                raft_tick(h.r);
            }
            break;
        }
        case 8:
            op_propose(&h);
            break;
        case 9:
            op_propose_conf(&h);
            break;
        case 10: {
            uint64_t ctx = ++h.next_ctx;
            int rv = raft_read_index(h.r, ctx);
            FUZZ_CHECK(rv == 0 || rv == PZ_ENOLEADER);
            if (rv == 0)
                add_pending(&h, ctx);
            break;
        }
        case 11: {
            int rv = raft_transfer_leader(h.r, fz_u8(f) % (MAX_ID + 1));
            FUZZ_CHECK(rv == 0 || rv == PZ_ENOTLEADER || rv == PZ_EINVAL ||
                       rv == PZ_EBUSY);
            break;
        }
        case 12:
            raft_campaign(h.r);
            break;
        case 13:
        case 14:
            /* node.c: take a Ready; if it needs no write, finish it now */
            take_ready(&h, fz_u8(f) % 16 == 0);
            if (h.in_flight && !needs_write(&h))
                finish_ready(&h);
            break;
        case 15:
            finish_ready(&h);
            break;
        case 16: {
            /* The leader sends while its write is in flight. */
            const struct raft_msg *msgs;
            struct raft_status s;
            status(&h, &s);
            size_t n = raft_take_msgs(h.r, &msgs);
            FUZZ_CHECK(n == 0 || s.role == RAFT_LEADER);
            for (size_t i = 0; i < n; i++)
                check_msg(&h, &msgs[i], s.term, true);
            break;
        }
        case 17:
            op_compact(&h);
            break;
        case 18:
            (void)raft_report_snapshot(h.r, fz_u8(f) % (MAX_ID + 1),
                                       fz_bool(f));
            break;
        case 19:
            if (fz_u8(f) % 4 == 0)
                restart(&h);
            break;
        case 20:
        case 21: {
            /* Well-behaved peers answer what was sent (some stay mute). */
            uint8_t mask = fz_u8(f);
            answer_all(&h, (uint8_t)(mask & (mask >> 1)));
            break;
        }
        case 22:
            if (h.nsent > 0)
                answer(&h, &h.sent[fz_u8(f) % h.nsent], fz_u8(f) % 4 != 0);
            break;
        default:
            cycle(&h);
            answer_all(&h, 0);
            cycle(&h);
            break;
        }
        check_state(&h);
        if (getenv("FUZZ_TRACE")) {
            struct raft_status s;
            status(&h, &s);
            fprintf(stderr,
                    "op %d: role %d term %llu commit %llu persisted %llu "
                    "in flight %d first %llu last %llu snap %llu; ",
                    op % 24, s.role, (unsigned long long)s.term,
                    (unsigned long long)s.commit,
                    (unsigned long long)s.persisted_index, h.in_flight,
                    (unsigned long long)s.first_index,
                    (unsigned long long)s.last_index,
                    (unsigned long long)s.snap_index);
            dump_store(&h.st);
        }
    }
    teardown(&h);
    return 0;
}
