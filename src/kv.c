/* kv.c - the key-value state machine: an incrementally rehashed hash table
 * of byte strings with a skiplist through the same entries, revisions, the
 * command codec and the running digest. Pure.
 *
 * Happy path: kv_apply() decodes a command from a committed Raft entry and
 * puts or deletes keys (a transaction first evaluates its comparisons);
 * reads call kv_get() or kv_range(). Each entry is one allocation holding
 * its hash, both lengths, its metadata, its skiplist links, the key and the
 * value.
 *
 * Layout (Redis dict): two bucket arrays t[0] and t[1]. Normally only t[0]
 * exists. A grow or shrink allocates t[1] and sets rehash_idx to 0; from
 * then on every get/set/del moves the chain of bucket t[0][rehash_idx] to
 * t[1] (skipping at most KV_REHASH_EMPTY_VISITS empty buckets), new keys
 * go to t[1], and lookups search both. When t[0] is empty it is freed and
 * t[1] becomes t[0]. Entries never move in memory during a rehash, only
 * their links change, which is why kv_get may rehash without invalidating
 * pointers it handed out.
 *
 * Failure modes: malformed commands are rejected before anything changes;
 * out of memory aborts in pz_malloc; a broken invariant trips pz_assert. */
#include "kv.h"

#include <string.h>

#define INITIAL_SIZE 4              /* smallest bucket array */
#define SHRINK_RATIO 8              /* shrink below one key per 8 buckets */
#define DEFAULT_SEED 0x6b76u        /* table seed of kv_new() */
#define DIGEST_SEED 0x70797a6462ull /* fixed: digests must match nodes */

/* One key: one allocation. What every key needs is kept to the minimum,
 * because it is paid per key (kv_mem.c measures it): the key's hash is not
 * stored (a rehash computes it again from the key, a lookup compares the
 * length and the bytes), and the lease id, with the links that put the
 * entry on its lease's list, is there only for a leased key. */
struct entry {
    struct entry *next;       /* next in the bucket chain */
    uint32_t klen : 31;       /* key length (KV_KEY_MAX fits) */
    uint32_t leased : 1;      /* lease != 0: a struct llink after fwd */
    uint32_t vlen : 28;       /* value length (KV_VALUE_MAX fits) */
    uint32_t level : 4;       /* skiplist levels, 1..KV_SKIP_LEVELS */
    uint64_t create_revision; /* struct kv_meta, less the lease */
    uint64_t mod_revision;
    uint64_t version;
    struct entry *fwd[]; /* level links, then (leased) a struct llink,
                            then the spans of links 1..level-1 (uint64_t,
                            spans_of), then key, value and a NUL */
};

/* A leased entry's lease and its place on that lease's list of keys. */
struct llink {
    struct entry *prev; /* NULL: first (the lease points at it) */
    struct entry *next; /* NULL: last */
    uint64_t lease;     /* 1..KV_LEASE_ID_MAX */
};

/* A lease (kv.h "Leases"). */
struct lease {
    uint64_t id;        /* 1..KV_LEASE_ID_MAX */
    uint64_t ttl;       /* seconds */
    struct entry *keys; /* attached entries, through their llink */
    size_t nkeys;       /* how many */
    bool unsorted;      /* keys attached since lease_sort_keys last ran */
};

struct table {
    struct entry **b; /* bucket array, NULL when size is 0 */
    size_t size;      /* number of buckets: 0 or a power of two */
    size_t used;      /* entries linked into this table */
};

struct kv {
    struct table t[2];  /* t[1] is used only while rehashing */
    struct entry *head[KV_SKIP_LEVELS]; /* skiplist heads */
    struct entry *tail[KV_SKIP_LEVELS]; /* last entry of each level, NULL:
                                           none; keys inserted in order (a
                                           snapshot's) are appended here */
    uint64_t hspan[KV_SKIP_LEVELS];     /* spans of the head's links */
    uint64_t tail_rank[KV_SKIP_LEVELS]; /* position of each tail (first
                                           key: 1), 0: none */
    uint64_t revision;                  /* see kv.h */
    kv_event_cb on_event;               /* watchers' hook, or NULL */
    void *event_arg;                    /* its argument */
    long rehash_idx;    /* next t[0] bucket to move; -1: not rehashing */
    uint64_t seed;      /* hash seed of this table */
    size_t bytes;       /* sum of key and value lengths */
    uint64_t digest;    /* sum of entry digests */
    struct kv_stats st; /* grow/shrink/rehash counters; kv_stats() fills
                           the rest */
    struct lease **leases; /* sorted by id */
    size_t nleases;        /* leases held */
    size_t cap_leases;     /* room in leases */
    kv_lease_cb on_lease;  /* the expiry tracker's hook, or NULL */
    void *lease_arg;       /* its argument */
    const struct kv_job *paused; /* a command paused between its steps
                                    (kv_apply_start), or NULL */
};

static inline struct llink *llink_of(const struct entry *e)
{
    return (struct llink *)(e->fwd + e->level);
}

/* Spans of e's links 1..level-1: element i - 1 is how many level-0 steps
 * (keys) link i skips to, its target's position minus e's; a link to NULL
 * has none (kept: the position of its level's tail, kv->tail_rank, so that
 * an append needs no update above its own levels). A level-0 link always
 * spans 1, so that one is not stored: a third of a span per key on
 * average. */
static inline uint64_t *spans_of(const struct entry *e)
{
    return (uint64_t *)((char *)(e->fwd + e->level) +
                        (e->leased ? sizeof(struct llink) : 0));
}

static inline uint8_t *entry_key(const struct entry *e)
{
    return (uint8_t *)(spans_of(e) + e->level - 1);
}

static inline uint8_t *entry_value(const struct entry *e)
{
    return entry_key(e) + e->klen;
}

static inline uint64_t entry_lease(const struct entry *e)
{
    return e->leased ? llink_of(e)->lease : 0;
}

static inline struct kv_meta entry_meta(const struct entry *e)
{
    return (struct kv_meta){.create_revision = e->create_revision,
                            .mod_revision = e->mod_revision,
                            .version = e->version,
                            .lease = entry_lease(e)};
}

static inline uint64_t entry_hash(const struct kv *kv, const struct entry *e)
{
    return pz_hash(entry_key(e), e->klen, kv->seed);
}

static uint64_t entry_digest(const void *key, size_t klen, const void *val,
                             size_t vlen, const struct kv_meta *m)
{
    uint8_t mb[32];
    pz_put_u64(mb, m->create_revision);
    pz_put_u64(mb + 8, m->mod_revision);
    pz_put_u64(mb + 16, m->version);
    pz_put_u64(mb + 24, m->lease);
    return pz_hash(mb, sizeof mb,
                   pz_hash(val, vlen, pz_hash(key, klen, DIGEST_SEED)));
}

static uint64_t e_digest(const struct entry *e)
{
    struct kv_meta m = entry_meta(e);
    return entry_digest(entry_key(e), e->klen, entry_value(e), e->vlen, &m);
}

static uint64_t revision_digest(uint64_t rev)
{
    uint8_t b[8];
    pz_put_u64(b, rev);
    return rev ? pz_hash(b, sizeof b, DIGEST_SEED + 1) : 0;
}

/* Levels from bits the bucket index does not use: one more per pair of
 * zero bits, p = 1/4. */
static unsigned level_of(uint64_t hash)
{
    unsigned l = 1;
    hash >>= 32;
    while (l < KV_SKIP_LEVELS && (hash & 3) == 0) {
        l++;
        hash >>= 2;
    }
    return l;
}

static struct entry *entry_new(uint64_t hash, const void *key, size_t klen,
                               const void *val, size_t vlen,
                               const struct kv_meta *m)
{
    unsigned level = level_of(hash);
    bool leased = m->lease != 0;
    struct entry *e =
        pz_malloc(sizeof(*e) + level * sizeof(e->fwd[0]) +
                  (level - 1) * sizeof(uint64_t) +
                  (leased ? sizeof(struct llink) : 0) + klen + vlen + 1);
    e->next = NULL;
    e->klen = (uint32_t)klen & 0x7fffffffu;
    e->leased = leased;
    e->vlen = (uint32_t)vlen;
    e->level = level & 0xf;
    e->create_revision = m->create_revision;
    e->mod_revision = m->mod_revision;
    e->version = m->version;
    if (leased)
        llink_of(e)->lease = m->lease;
    uint8_t *d = entry_key(e);
    if (klen)
        memcpy(d, key, klen);
    if (vlen)
        memcpy(d + klen, val, vlen);
    d[klen + vlen] = '\0';
    return e;
}

static void view_of(const struct entry *e, struct kv_view *v)
{
    v->key = entry_key(e);
    v->klen = e->klen;
    v->value = entry_value(e);
    v->vlen = e->vlen;
    v->meta = entry_meta(e);
}

static void table_alloc(struct table *t, size_t size)
{
    t->b = pz_calloc(size, sizeof(*t->b));
    t->size = size;
    t->used = 0;
}

static void table_free(struct table *t)
{
    pz_free(t->b);
    t->b = NULL;
    t->size = 0;
    t->used = 0;
}

static inline bool rehashing(const struct kv *kv)
{
    return kv->rehash_idx >= 0;
}

struct kv *kv_new_seeded(uint64_t seed)
{
    struct kv *kv = pz_calloc(1, sizeof(*kv));
    kv->rehash_idx = -1;
    kv->seed = seed;
    return kv;
}

struct kv *kv_new(void)
{
    return kv_new_seeded(DEFAULT_SEED);
}

void kv_free(struct kv *kv)
{
    if (kv == NULL)
        return;
    for (int i = 0; i < 2; i++) {
        struct table *t = &kv->t[i];
        for (size_t j = 0; j < t->size; j++) {
            struct entry *e = t->b[j];
            while (e) {
                struct entry *next = e->next;
                pz_free(e);
                e = next;
            }
        }
        table_free(t);
    }
    for (size_t i = 0; i < kv->nleases; i++)
        pz_free(kv->leases[i]);
    pz_free(kv->leases);
    pz_free(kv);
}

/* --- incremental rehashing --------------------------------------------- */

static void rehash_begin(struct kv *kv, size_t size)
{
    pz_assert(!rehashing(kv));
    table_alloc(&kv->t[1], size);
    kv->rehash_idx = 0;
    if (size > kv->t[0].size)
        kv->st.grows++;
    else
        kv->st.shrinks++;
}

/* When t[0] has no entries left, t[1] replaces it. */
static void finish_if_done(struct kv *kv)
{
    struct table *t0 = &kv->t[0], *t1 = &kv->t[1];
    if (!rehashing(kv) || t0->used > 0)
        return;
    table_free(t0);
    *t0 = *t1;
    t1->b = NULL;
    t1->size = 0;
    t1->used = 0;
    kv->rehash_idx = -1;
}

/* Move one non-empty bucket from t[0] to t[1], looking at no more than
 * KV_REHASH_EMPTY_VISITS empty buckets on the way; finish the rehash when
 * t[0] is empty. Called once per get/set/del while rehashing. */
static void rehash_step(struct kv *kv)
{
    if (!rehashing(kv))
        return;
    struct table *t0 = &kv->t[0], *t1 = &kv->t[1];
    uint64_t mask1 = t1->size - 1;
    uint64_t buckets = 0, entries = 0;
    int empty_left = KV_REHASH_EMPTY_VISITS;
    while (t0->used > 0) {
        pz_assert((size_t)kv->rehash_idx < t0->size);
        struct entry **slot = &t0->b[kv->rehash_idx];
        kv->rehash_idx++;
        buckets++;
        if (*slot == NULL) {
            if (--empty_left == 0)
                break;
            continue;
        }
        struct entry *e = *slot;
        *slot = NULL;
        while (e) {
            struct entry *next = e->next;
            struct entry **dst = &t1->b[entry_hash(kv, e) & mask1];
            e->next = *dst;
            *dst = e;
            t0->used--;
            t1->used++;
            entries++;
            e = next;
        }
        break;
    }
    kv->st.rehash_ops++;
    if (buckets > kv->st.max_step_buckets)
        kv->st.max_step_buckets = buckets;
    if (entries > kv->st.max_step_entries)
        kv->st.max_step_entries = entries;
    finish_if_done(kv);
}

bool kv_rehash(struct kv *kv, size_t steps)
{
    for (size_t i = 0; i < steps && rehashing(kv); i++)
        rehash_step(kv);
    return rehashing(kv);
}

static size_t next_pow2(size_t n)
{
    size_t s = INITIAL_SIZE;
    while (s < n)
        s *= 2;
    return s;
}

/* Before an insert: start growing at load factor 1. */
static void maybe_grow(struct kv *kv)
{
    if (rehashing(kv))
        return;
    if (kv->t[0].size == 0) {
        table_alloc(&kv->t[0], INITIAL_SIZE);
        return;
    }
    if (kv->t[0].used >= kv->t[0].size)
        rehash_begin(kv, kv->t[0].size * 2);
}

void kv_reserve(struct kv *kv, size_t n)
{
    if (rehashing(kv) || kv->t[0].used > 0 || n <= kv->t[0].size)
        return;
    table_free(&kv->t[0]);
    table_alloc(&kv->t[0], next_pow2(n));
}

size_t kv_heap_estimate(uint64_t nkeys, uint64_t kv_bytes)
{
    /* An entry: its header, 4/3 level links and 1/3 span on average, the
     * NUL, and malloc's 8-byte header and rounding to 16 (8 on average). */
    uint64_t per = sizeof(struct entry) +
                   (4 * sizeof(struct entry *) + sizeof(uint64_t)) / 3 + 1 + 8 +
                   8;
    uint64_t n = nkeys * per + kv_bytes;
    return n < SIZE_MAX ? (size_t)n : SIZE_MAX;
}

void kv_prefetch(const struct kv *kv, const void *key, size_t klen)
{
    const struct table *t = rehashing(kv) ? &kv->t[1] : &kv->t[0];
    if (t->size == 0)
        return;
    uint64_t h = pz_hash(key, klen, kv->seed);
    __builtin_prefetch(&t->b[h & (t->size - 1)], 1);
}

/* After a delete: start shrinking when fewer than 1/SHRINK_RATIO buckets
 * are used. The new size leaves room to grow by half before the next grow,
 * so alternating inserts and deletes near the threshold do not thrash. */
static void maybe_shrink(struct kv *kv)
{
    if (rehashing(kv))
        return;
    struct table *t0 = &kv->t[0];
    if (t0->size <= INITIAL_SIZE || t0->used * SHRINK_RATIO >= t0->size)
        return;
    rehash_begin(kv, next_pow2(t0->used * 2));
}

/* --- lookup ------------------------------------------------------------- */

/* The link pointing at the entry for key, or NULL. If which is not NULL it
 * receives the table holding the entry. */
static struct entry **find_link(struct kv *kv, uint64_t h, const void *key,
                                size_t klen, struct table **which)
{
    for (int i = 0; i < 2; i++) {
        struct table *t = &kv->t[i];
        if (t->size == 0)
            continue;
        size_t idx = h & (t->size - 1);
        /* Buckets of t[0] below rehash_idx have moved to t[1]. */
        if (i == 0 && rehashing(kv) && idx < (size_t)kv->rehash_idx)
            continue;
        for (struct entry **link = &t->b[idx]; *link; link = &(*link)->next) {
            struct entry *e = *link;
            if (e->klen == klen &&
                (klen == 0 || memcmp(entry_key(e), key, klen) == 0)) {
                if (which)
                    *which = t;
                return link;
            }
        }
        if (!rehashing(kv))
            break;
    }
    return NULL;
}

static struct entry *lookup(struct kv *kv, const void *key, size_t klen)
{
    if (klen > KV_KEY_MAX)
        return NULL;
    struct entry **link =
        find_link(kv, pz_hash(key, klen, kv->seed), key, klen, NULL);
    return link ? *link : NULL;
}

bool kv_get(struct kv *kv, const void *key, size_t klen, const uint8_t **val,
            size_t *vlen)
{
    rehash_step(kv);
    struct entry *e = lookup(kv, key, klen);
    if (e == NULL)
        return false;
    *val = entry_value(e);
    *vlen = e->vlen;
    return true;
}

bool kv_get_view(struct kv *kv, const void *key, size_t klen,
                 struct kv_view *out)
{
    rehash_step(kv);
    struct entry *e = lookup(kv, key, klen);
    if (e == NULL)
        return false;
    view_of(e, out);
    return true;
}

/* --- the ordered index ---------------------------------------------------- */

/* Bytewise order, a prefix before its extensions. */
static int bytes_cmp(const void *a, size_t alen, const void *b, size_t blen)
{
    size_t n = alen < blen ? alen : blen;
    int c = n ? memcmp(a, b, n) : 0;
    if (c)
        return c;
    return alen < blen ? -1 : alen > blen;
}

static inline int key_cmp(const struct entry *e, const void *key, size_t klen)
{
    return bytes_cmp(entry_key(e), e->klen, key, klen);
}

/* The entry whose level-i link is link, NULL for the head. */
static struct entry *sl_owner(const struct kv *kv, struct entry *const *link,
                              unsigned i)
{
    if (link == &kv->head[i])
        return NULL;
    return (struct entry *)((char *)(link - i) - offsetof(struct entry, fwd));
}

/* Where the span of link (at level i >= 1: level 0 spans 1) is kept. */
static uint64_t *link_span(struct kv *kv, struct entry **link, unsigned i)
{
    struct entry *o = sl_owner(kv, link, i);
    return o ? &spans_of(o)[i - 1] : &kv->hspan[i];
}

/* Fill upd[i] with the link at level i after which key belongs (the slot
 * that points at the first entry >= key), for every level, and rank[i]
 * (when not NULL) with the position of the entry holding that link (0:
 * the head; the first key is at 1), adding up the spans walked over;
 * returns the first entry >= key at level 0 (NULL: none). */
static struct entry *sl_search(const struct kv *kv, const void *key,
                               size_t klen, struct entry **upd[],
                               uint64_t rank[])
{
    struct entry *const *link = NULL;
    const struct entry *pred = NULL;
    uint64_t r = 0;
    for (int i = KV_SKIP_LEVELS - 1; i >= 0; i--) {
        for (;;) {
            link = pred ? &pred->fwd[i] : &kv->head[i];
            struct entry *nx = *link;
            if (nx == NULL || key_cmp(nx, key, klen) >= 0)
                break;
            if (rank)
                r += i == 0 ? 1 : pred ? spans_of(pred)[i - 1] : kv->hspan[i];
            pred = nx;
        }
        if (upd)
            upd[i] = (struct entry **)link;
        if (rank)
            rank[i] = r;
    }
    return *link;
}

static struct entry *sl_find(const struct kv *kv, const void *key, size_t klen,
                             struct entry **upd[])
{
    return sl_search(kv, key, klen, upd, NULL);
}

/* A key after every key held (a snapshot being loaded, keys written in
 * order) is appended at the tails without a search: loading n keys in
 * order costs O(n), not O(n log n) with a cache miss per step. The tails'
 * links to it span from their positions (tail_rank) to its own, n; the
 * levels above it do not change (links to NULL have no span): O(levels
 * of the key). Elsewhere, as Redis's zslInsert: each link the new entry
 * splits gives it the part past it, each link over it spans one more, and
 * so does the position of each tail after it. */
static void sl_insert(struct kv *kv, struct entry *e)
{
    struct entry **upd[KV_SKIP_LEVELS];
    uint64_t rank[KV_SKIP_LEVELS];
    if (kv->tail[0] == NULL ||
        key_cmp(kv->tail[0], entry_key(e), e->klen) < 0) {
        uint64_t n = kv->tail_rank[0] + 1; /* e's position */
        for (unsigned i = 0; i < e->level; i++) {
            struct entry *t = kv->tail[i];
            if (t)
                t->fwd[i] = e;
            else
                kv->head[i] = e;
            if (i > 0)
                *(t ? &spans_of(t)[i - 1] : &kv->hspan[i]) =
                    n - kv->tail_rank[i];
            e->fwd[i] = NULL;
            kv->tail[i] = e;
            kv->tail_rank[i] = n;
        }
        return;
    }
    sl_search(kv, entry_key(e), e->klen, upd, rank);
    for (unsigned i = 0; i < KV_SKIP_LEVELS; i++) {
        bool before_tail = *upd[i] != NULL;
        if (before_tail)
            kv->tail_rank[i]++;
        if (i >= e->level) {
            if (before_tail)
                (*link_span(kv, upd[i], i))++;
            continue;
        }
        if (i > 0) {
            uint64_t *sp = link_span(kv, upd[i], i);
            if (before_tail)
                spans_of(e)[i - 1] = *sp - (rank[0] - rank[i]);
            *sp = rank[0] - rank[i] + 1;
        }
        e->fwd[i] = *upd[i];
        *upd[i] = e;
        if (!before_tail) {
            kv->tail[i] = e;
            kv->tail_rank[i] = rank[0] + 1;
        }
    }
}

/* Unlink e; upd as sl_find left it for e's key. Each link to e takes over
 * e's span, each link over it spans one less, and so does the position of
 * each tail after it; a tail that goes is replaced by the entry linking
 * to it, whose position is the tail's less that link's span. */
static void sl_unlink(struct kv *kv, struct entry **upd[], struct entry *e)
{
    for (unsigned i = 0; i < KV_SKIP_LEVELS; i++) {
        if (i >= e->level) {
            if (*upd[i] != NULL) {
                (*link_span(kv, upd[i], i))--;
                kv->tail_rank[i]--;
            }
            continue;
        }
        pz_assert(*upd[i] == e);
        uint64_t *sp = i > 0 ? link_span(kv, upd[i], i) : NULL;
        if (e->fwd[i] != NULL) {
            if (sp)
                *sp += spans_of(e)[i - 1] - 1;
            kv->tail_rank[i]--;
        } else {
            kv->tail[i] = sl_owner(kv, upd[i], i);
            kv->tail_rank[i] -= sp ? *sp : 1;
        }
        *upd[i] = e->fwd[i];
    }
}

uint64_t kv_range_count(const struct kv *kv, const void *from, size_t flen,
                        const void *to, size_t tlen, bool to_end)
{
    uint64_t rank[KV_SKIP_LEVELS];
    sl_search(kv, from, flen, NULL, rank);
    uint64_t lo = rank[0];
    uint64_t hi = kv_count(kv);
    if (!to_end) {
        sl_search(kv, to, tlen, NULL, rank);
        hi = rank[0];
    }
    return hi > lo ? hi - lo : 0;
}

bool kv_index_check(const struct kv *kv)
{
    uint64_t n = kv_count(kv);
    for (unsigned i = 0; i < KV_SKIP_LEVELS; i++) {
        /* Walk level 0 numbering the keys from 1, and follow level i
         * along: each level-i link must reach the next entry of level > i
         * after exactly its span; the last is NULL, from the tail. */
        uint64_t pos = 0, from = 0, span = i ? kv->hspan[i] : 1;
        const struct entry *prev = NULL, *last = NULL, *want = kv->head[i];
        for (const struct entry *e = kv->head[0]; e; prev = e, e = e->fwd[0]) {
            pos++;
            if (prev && bytes_cmp(entry_key(prev), prev->klen, entry_key(e),
                                  e->klen) >= 0)
                return false; /* out of order */
            if (e->level <= i) {
                if (e == want)
                    return false; /* linked above its level */
                continue;
            }
            if (e != want || pos - from != span)
                return false; /* a level-i entry skipped, a span off */
            from = pos;
            want = e->fwd[i];
            span = i ? spans_of(e)[i - 1] : 1;
            last = e;
        }
        if (want != NULL || pos != n || kv->tail[i] != last ||
            kv->tail_rank[i] != from)
            return false;
    }
    return true;
}

/* --- the lease table ------------------------------------------------------ */

static uint64_t lease_digest(uint64_t id, uint64_t ttl)
{
    uint8_t b[16];
    pz_put_u64(b, id);
    pz_put_u64(b + 8, ttl);
    return pz_hash(b, sizeof b, DIGEST_SEED + 2);
}

/* Index of the first lease with an id >= id. */
static size_t lease_pos(const struct kv *kv, uint64_t id)
{
    size_t lo = 0, hi = kv->nleases;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (kv->leases[mid]->id < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static struct lease *lease_find(const struct kv *kv, uint64_t id)
{
    size_t i = lease_pos(kv, id);
    return i < kv->nleases && kv->leases[i]->id == id ? kv->leases[i] : NULL;
}

/* Add a lease known to be absent. */
static void lease_add(struct kv *kv, uint64_t id, uint64_t ttl)
{
    size_t i = lease_pos(kv, id);
    if (kv->nleases == kv->cap_leases) {
        kv->cap_leases = kv->cap_leases ? kv->cap_leases * 2 : 8;
        kv->leases =
            pz_realloc(kv->leases, kv->cap_leases * sizeof(*kv->leases));
    }
    memmove(kv->leases + i + 1, kv->leases + i,
            (kv->nleases - i) * sizeof(*kv->leases));
    struct lease *l = pz_calloc(1, sizeof(*l));
    l->id = id;
    l->ttl = ttl;
    kv->leases[i] = l;
    kv->nleases++;
    kv->digest += lease_digest(id, ttl);
}

/* Drop a lease that has no keys left. */
static void lease_drop(struct kv *kv, uint64_t id)
{
    size_t i = lease_pos(kv, id);
    pz_assert(i < kv->nleases && kv->leases[i]->id == id);
    struct lease *l = kv->leases[i];
    pz_assert(l->keys == NULL && l->nkeys == 0);
    kv->digest -= lease_digest(l->id, l->ttl);
    memmove(kv->leases + i, kv->leases + i + 1,
            (kv->nleases - i - 1) * sizeof(*kv->leases));
    kv->nleases--;
    pz_free(l);
    if (kv->nleases == 0) {
        pz_free(kv->leases);
        kv->leases = NULL;
        kv->cap_leases = 0;
    } else if (kv->cap_leases > 8 && kv->nleases * 4 < kv->cap_leases) {
        kv->cap_leases /= 2;
        kv->leases =
            pz_realloc(kv->leases, kv->cap_leases * sizeof(*kv->leases));
    }
}

static void lease_sort_keys(struct lease *l);

/* Put a leased entry at the front of its lease's list (which is then no
 * longer known to be in key order, unless it was empty). */
static void lease_attach(struct kv *kv, struct entry *e)
{
    pz_assert(e->leased);
    struct lease *l = lease_find(kv, entry_lease(e));
    pz_assert(l != NULL); /* checked before the put */
    if (l->keys)
        l->unsorted = true;
    struct llink *k = llink_of(e);
    k->prev = NULL;
    k->next = l->keys;
    if (l->keys)
        llink_of(l->keys)->prev = e;
    l->keys = e;
    l->nkeys++;
}

static void lease_detach(struct kv *kv, struct entry *e)
{
    pz_assert(e->leased);
    struct lease *l = lease_find(kv, entry_lease(e));
    pz_assert(l != NULL && l->nkeys > 0);
    struct llink *k = llink_of(e);
    if (k->prev)
        llink_of(k->prev)->next = k->next;
    else
        l->keys = k->next;
    if (k->next)
        llink_of(k->next)->prev = k->prev;
    l->nkeys--;
}

static size_t lease_nkeys(const struct kv *kv, const struct lease *l);

bool kv_lease_get(const struct kv *kv, uint64_t id, struct kv_lease *out)
{
    const struct lease *l = lease_find(kv, id);
    if (l == NULL)
        return false;
    out->id = l->id;
    out->ttl = l->ttl;
    out->nkeys = lease_nkeys(kv, l);
    return true;
}

size_t kv_lease_count(const struct kv *kv)
{
    return kv->nleases;
}

void kv_lease_at(const struct kv *kv, size_t i, struct kv_lease *out)
{
    pz_assert(i < kv->nleases);
    const struct lease *l = kv->leases[i];
    out->id = l->id;
    out->ttl = l->ttl;
    out->nkeys = lease_nkeys(kv, l);
}

int kv_lease_keys(struct kv *kv, uint64_t id, kv_view_cb cb, void *arg)
{
    struct lease *l = lease_find(kv, id);
    if (l)
        lease_sort_keys(l); /* the walk, and where it stops, alike on
                               every node */
    for (const struct entry *e = l ? l->keys : NULL; e;
         e = llink_of(e)->next) {
        struct kv_view v;
        view_of(e, &v);
        int rc = cb(arg, &v);
        if (rc)
            return rc;
    }
    return 0;
}

void kv_set_lease_cb(struct kv *kv, kv_lease_cb cb, void *arg)
{
    kv->on_lease = cb;
    kv->lease_arg = arg;
}

int kv_lease_restore(struct kv *kv, uint64_t id, uint64_t ttl)
{
    if (id == 0 || id > KV_LEASE_ID_MAX || ttl == 0 ||
        ttl > KV_LEASE_TTL_MAX || kv->nleases >= KV_LEASE_HARD_MAX ||
        lease_find(kv, id))
        return PZ_EINVAL;
    lease_add(kv, id, ttl);
    return 0;
}

/* --- mutations ------------------------------------------------------------ */

/* A new entry for a key known to be absent (h its hash), linked into the
 * hash table being filled and the ordered index, counted in bytes and
 * digest. */
static struct entry *insert_new(struct kv *kv, uint64_t h, const void *key,
                                size_t klen, const void *value, size_t vlen,
                                const struct kv_meta *meta)
{
    maybe_grow(kv);
    struct table *t = rehashing(kv) ? &kv->t[1] : &kv->t[0];
    struct entry *e = entry_new(h, key, klen, value, vlen, meta);
    struct entry **head = &t->b[h & (t->size - 1)];
    e->next = *head;
    *head = e;
    t->used++;
    sl_insert(kv, e);
    if (e->leased)
        lease_attach(kv, e);
    kv->bytes += klen + vlen;
    kv->digest += e_digest(e);
    return e;
}

/* A command in progress: its revision is taken on its first change. */
struct apply {
    struct kv *kv;
    bool bumped;                /* the revision was advanced for this command */
    const struct kv_sink *sink; /* where results go, or NULL */
};

/* A command being applied (kv_apply_start): a transaction between its
 * operations or inside a DELRANGE, or a REVOKE collecting, sorting or
 * deleting its keys. Everything that decides the outcome (decoding, the
 * comparisons, the checks of the branch, the revoke's checks) happens
 * once, at the start, on the table as the command found it; what is left
 * is only the work, done in the same order as in one go, so that the
 * table, its revision and digest, the events and the results end the same
 * whatever the budgets (test kv/job_chunked_vs_oneshot). */
struct kv_job {
    struct kv *kv;
    struct apply a;       /* revision bumped once, the sink */
    struct kv_result res; /* what the command did so far */
    struct kv_cmd c;      /* decoded; points into cmd */
    const uint8_t *cmd;   /* the command: the caller's bytes, then, once
                             paused, a copy (owned) */
    size_t len;           /* its length */
    bool owned;           /* cmd is the copy (pz_free) */
    struct {              /* the table as readers see it while paused */
        uint64_t revision;
        uint64_t digest;
        size_t keys;
        size_t bytes;
    } before;
    /* TXN: the branch taken and where it stands. */
    struct kv_op *ops; /* the branch (pz_free) */
    size_t n;          /* its operations */
    size_t i;          /* the next one, or the DELRANGE under way */
    bool in_op;        /* ops[i] (a DELRANGE) has begun */
    uint64_t count;    /* keys it deleted so far */
    bool ok;           /* every comparison held */
    /* REVOKE: the keys in bytewise order, then deleted one by one. */
    uint64_t lease;      /* the lease */
    uint64_t ttl;        /* its ttl, for the callback */
    int phase;           /* JOB_COLLECT .. JOB_DELETE */
    struct entry **keys; /* the lease's keys (pz_free) */
    struct entry **tmp;  /* the merge sort's other array (pz_free) */
    size_t nkeys;        /* how many */
    size_t got;          /* collected so far */
    struct entry *next;  /* the next key to collect */
    size_t width;        /* merge sort: length of the sorted runs */
    size_t lo, mid, hi;  /* the runs [lo, mid) and [mid, hi) merging */
    size_t li, ri, k;    /* next of each run, next slot written */
    bool merging;        /* lo..hi are set */
    size_t del;          /* keys[del] is the next to delete */
    unsigned cheap;      /* cheap steps not yet charged to the budget */
};

enum { JOB_COLLECT, JOB_SORT, JOB_DELETE };

/* l's keys as readers see them: while a REVOKE of l is paused, as many
 * as before it (the lease itself goes at its end). */
static size_t lease_nkeys(const struct kv *kv, const struct lease *l)
{
    const struct kv_job *j = kv->paused;
    if (j && j->c.op == KV_OP_REVOKE && j->lease == l->id)
        return j->nkeys;
    return l->nkeys;
}

static uint64_t apply_rev(struct apply *a)
{
    /* kv_apply_sink refused the command at KV_REVISION_MAX */
    pz_assert(a->bumped || a->kv->revision < KV_REVISION_MAX);
    if (!a->bumped) {
        a->kv->digest -= revision_digest(a->kv->revision);
        a->kv->revision++;
        a->kv->digest += revision_digest(a->kv->revision);
        a->bumped = true;
    }
    return a->kv->revision;
}

static void sink_item(struct apply *a, const struct entry *e)
{
    if (a->sink == NULL || a->sink->item == NULL)
        return;
    struct kv_view v;
    view_of(e, &v);
    a->sink->item(a->sink->arg, &v);
}

/* Values up to this size are overwritten in place even with an event
 * hook installed (the old value is copied for it on the stack). */
#define INPLACE_EVENT_MAX 1024

/* Put key = value. Returns 1 if it replaced a value, 0 if it created the
 * key (limits checked by the caller). */
static int do_put(struct apply *a, const void *key, size_t klen,
                  const void *value, size_t vlen, uint64_t lease)
{
    struct kv *kv = a->kv;
    rehash_step(kv);
    uint64_t h = pz_hash(key, klen, kv->seed);
    struct entry **link = find_link(kv, h, key, klen, NULL);
    uint64_t rev = apply_rev(a);
    if (link) {
        struct entry *old = *link;
        sink_item(a, old);
        struct kv_meta m = entry_meta(old);
        m.mod_revision = rev;
        m.version++;
        m.lease = lease;
        kv->digest -= e_digest(old);
        kv->bytes = kv->bytes - old->vlen + vlen;
        if (old->vlen == vlen && entry_lease(old) == lease &&
            (kv->on_event == NULL || vlen <= INPLACE_EVENT_MAX)) {
            /* Same size: overwritten in place, no new entry to allocate
             * and relink. Watchers get the old value from a copy. */
            uint8_t was[INPLACE_EVENT_MAX + 1];
            struct kv_view prev;
            if (kv->on_event) {
                view_of(old, &prev);
                if (vlen)
                    memcpy(was, prev.value, vlen);
                was[vlen] = '\0'; /* as a value from the table */
                prev.value = was;
            }
            if (vlen)
                memmove(entry_value(old), value, vlen); /* may overlap */
            old->mod_revision = m.mod_revision;
            old->version = m.version;
            kv->digest += e_digest(old);
            if (kv->on_event) {
                struct kv_view cur;
                view_of(old, &cur);
                kv->on_event(kv->event_arg, KV_TOP_PUT, &cur, &prev);
            }
            return 1;
        }
        /* Copy before freeing: value may point into old. Same hash, same
         * level: the new entry takes the old one's place in both indexes. */
        struct entry **upd[KV_SKIP_LEVELS];
        sl_find(kv, key, klen, upd);
        if (old->leased)
            lease_detach(kv, old);
        struct entry *e = entry_new(h, entry_key(old), klen, value, vlen, &m);
        pz_assert(e->level == old->level);
        for (unsigned i = 0; i < old->level; i++) {
            pz_assert(*upd[i] == old);
            e->fwd[i] = old->fwd[i];
            *upd[i] = e;
            if (kv->tail[i] == old)
                kv->tail[i] = e;
        }
        if (old->level > 1) /* the same place: the same spans */
            memcpy(spans_of(e), spans_of(old),
                   (old->level - 1u) * sizeof(uint64_t));
        e->next = old->next;
        *link = e;
        if (e->leased)
            lease_attach(kv, e);
        kv->digest += e_digest(e);
        if (kv->on_event) {
            struct kv_view cur, prev;
            view_of(e, &cur);
            view_of(old, &prev);
            kv->on_event(kv->event_arg, KV_TOP_PUT, &cur, &prev);
        }
        pz_free(old);
        return 1;
    }
    struct kv_meta m = {.create_revision = rev,
                        .mod_revision = rev,
                        .version = 1,
                        .lease = lease};
    struct entry *e = insert_new(kv, h, key, klen, value, vlen, &m);
    if (kv->on_event) {
        struct kv_view cur;
        view_of(e, &cur);
        kv->on_event(kv->event_arg, KV_TOP_PUT, &cur, NULL);
    }
    return 0;
}

/* Remove e (found through the hash table at link in table t, and in the
 * skiplist through upd). */
static void remove_entry(struct apply *a, struct entry **link, struct table *t,
                         struct entry **upd[], struct entry *e)
{
    struct kv *kv = a->kv;
    apply_rev(a);
    sink_item(a, e);
    *link = e->next;
    pz_assert(t->used > 0);
    t->used--;
    sl_unlink(kv, upd, e);
    if (e->leased)
        lease_detach(kv, e);
    kv->bytes -= (size_t)e->klen + e->vlen;
    kv->digest -= e_digest(e);
    if (kv->on_event) {
        struct kv_view prev;
        view_of(e, &prev);
        kv->on_event(kv->event_arg, KV_TOP_DEL, NULL, &prev);
    }
    pz_free(e);
    finish_if_done(kv);
    maybe_shrink(kv);
}

static int do_del(struct apply *a, const void *key, size_t klen)
{
    struct kv *kv = a->kv;
    rehash_step(kv);
    if (klen > KV_KEY_MAX)
        return 0;
    uint64_t h = pz_hash(key, klen, kv->seed);
    struct table *t;
    struct entry **link = find_link(kv, h, key, klen, &t);
    if (link == NULL)
        return 0;
    struct entry **upd[KV_SKIP_LEVELS];
    sl_find(kv, key, klen, upd);
    remove_entry(a, link, t, upd, *link);
    return 1;
}

static bool in_range(const struct entry *e, const void *to, size_t tlen,
                     bool to_end)
{
    return to_end || key_cmp(e, to, tlen) < 0;
}

/* Delete the keys in [from, to), at most *budget of them (taken off
 * *budget); *n counts them. Returns whether the range is empty now. The
 * keys go in order from the front of the range, so the links sl_find
 * found stay the ones to update for each next key, and a call after a
 * partial one starts at the first key left (those before it are gone). */
static bool do_delrange(struct apply *a, const void *from, size_t flen,
                        const void *to, size_t tlen, bool to_end,
                        uint64_t *budget, uint64_t *n)
{
    struct kv *kv = a->kv;
    struct entry **upd[KV_SKIP_LEVELS];
    struct entry *e = sl_find(kv, from, flen, upd);
    while (e && in_range(e, to, tlen, to_end)) {
        if (*budget == 0)
            return false;
        struct table *t;
        struct entry **link =
            find_link(kv, entry_hash(kv, e), entry_key(e), e->klen, &t);
        pz_assert(link && *link == e);
        remove_entry(a, link, t, upd, e);
        (*n)++;
        (*budget)--;
        e = *upd[0];
    }
    return true;
}

int kv_set(struct kv *kv, const void *key, size_t klen, const void *value,
           size_t vlen)
{
    if (klen > KV_KEY_MAX || vlen > KV_VALUE_MAX)
        return PZ_ETOOBIG;
    struct apply a = {.kv = kv};
    return do_put(&a, key, klen, value, vlen, 0);
}

int kv_del(struct kv *kv, const void *key, size_t klen)
{
    struct apply a = {.kv = kv};
    return do_del(&a, key, klen);
}

int kv_restore(struct kv *kv, const void *key, size_t klen, const void *value,
               size_t vlen, const struct kv_meta *meta)
{
    if (klen > KV_KEY_MAX || vlen > KV_VALUE_MAX)
        return PZ_ETOOBIG;
    rehash_step(kv);
    uint64_t h = pz_hash(key, klen, kv->seed);
    /* A key after every key held (the last of the ordered index) is not
     * held: no lookup. A snapshot's keys come in order, so loading one
     * does not pay a cache miss per key in the bucket chains. */
    bool after_all =
        kv->tail[0] == NULL || key_cmp(kv->tail[0], key, klen) < 0;
    if (!after_all && find_link(kv, h, key, klen, NULL))
        return PZ_EINVAL;
    if (meta->lease && lease_find(kv, meta->lease) == NULL)
        return PZ_ENOTFOUND;
    insert_new(kv, h, key, klen, value, vlen, meta);
    return 0;
}

void kv_set_revision(struct kv *kv, uint64_t rev)
{
    kv->digest -= revision_digest(kv->revision);
    kv->revision = rev;
    kv->digest += revision_digest(rev);
}

uint64_t kv_revision(const struct kv *kv)
{
    if (kv->paused)
        return kv->paused->before.revision;
    return kv->revision;
}

void kv_set_event_cb(struct kv *kv, kv_event_cb cb, void *arg)
{
    kv->on_event = cb;
    kv->event_arg = arg;
}

size_t kv_count(const struct kv *kv)
{
    if (kv->paused)
        return kv->paused->before.keys;
    return kv->t[0].used + kv->t[1].used;
}

size_t kv_bytes(const struct kv *kv)
{
    if (kv->paused)
        return kv->paused->before.bytes;
    return kv->bytes;
}

size_t kv_quota_bytes(const struct kv *kv)
{
    return kv_bytes(kv) + kv_count(kv) * KV_KEY_OVERHEAD;
}

uint64_t kv_digest(const struct kv *kv)
{
    if (kv->paused)
        return kv->paused->before.digest;
    return kv->digest;
}

uint64_t kv_apply_revision(const struct kv *kv)
{
    return kv->revision;
}

bool kv_paused(const struct kv *kv)
{
    return kv->paused != NULL;
}

static int add_digest(void *arg, const struct kv_view *v)
{
    *(uint64_t *)arg +=
        entry_digest(v->key, v->klen, v->value, v->vlen, &v->meta);
    return 0;
}

uint64_t kv_digest_compute(const struct kv *kv)
{
    uint64_t d = revision_digest(kv->revision);
    kv_foreach_view(kv, add_digest, &d);
    for (size_t i = 0; i < kv->nleases; i++)
        d += lease_digest(kv->leases[i]->id, kv->leases[i]->ttl);
    return d;
}

void kv_stats(const struct kv *kv, struct kv_stats *out)
{
    *out = kv->st;
    out->keys = kv_count(kv);
    out->bytes = kv->bytes;
    out->buckets[0] = kv->t[0].size;
    out->buckets[1] = kv->t[1].size;
    out->rehashing = rehashing(kv);
    /* Skiplist links: 4/3 per entry on average. */
    out->mem = sizeof(*kv) + kv->bytes +
               out->keys *
                   (sizeof(struct entry) + 1 + 4 * sizeof(struct entry *) / 3) +
               (kv->t[0].size + kv->t[1].size) * sizeof(struct entry *);
}

/* --- iteration ---------------------------------------------------------- */

static int visit_chain(const struct entry *e, kv_visit_cb cb, void *arg)
{
    for (; e; e = e->next) {
        int rc = cb(arg, entry_key(e), e->klen, entry_value(e), e->vlen);
        if (rc)
            return rc;
    }
    return 0;
}

int kv_foreach(const struct kv *kv, kv_visit_cb cb, void *arg)
{
    for (const struct entry *e = kv->head[0]; e; e = e->fwd[0]) {
        int rc = cb(arg, entry_key(e), e->klen, entry_value(e), e->vlen);
        if (rc)
            return rc;
    }
    return 0;
}

int kv_range(const struct kv *kv, const void *from, size_t flen, const void *to,
             size_t tlen, bool to_end, kv_view_cb cb, void *arg)
{
    const struct entry *e = sl_find(kv, from, flen, NULL);
    for (; e && in_range(e, to, tlen, to_end); e = e->fwd[0]) {
        struct kv_view v;
        view_of(e, &v);
        int rc = cb(arg, &v);
        if (rc)
            return rc;
    }
    return 0;
}

int kv_foreach_view(const struct kv *kv, kv_view_cb cb, void *arg)
{
    return kv_range(kv, "", 0, NULL, 0, true, cb, arg);
}

long kv_prefix_end(const void *prefix, size_t plen, uint8_t *out)
{
    const uint8_t *p = prefix;
    size_t n = plen;
    while (n > 0 && p[n - 1] == 0xff)
        n--;
    if (n == 0)
        return -1;
    memcpy(out, p, n);
    out[n - 1]++;
    return (long)n;
}

static uint64_t rev64(uint64_t v)
{
    v = ((v >> 1) & 0x5555555555555555ull) | ((v & 0x5555555555555555ull) << 1);
    v = ((v >> 2) & 0x3333333333333333ull) | ((v & 0x3333333333333333ull) << 2);
    v = ((v >> 4) & 0x0f0f0f0f0f0f0f0full) | ((v & 0x0f0f0f0f0f0f0f0full) << 4);
    return __builtin_bswap64(v);
}

/* Advance the reverse-binary cursor: increment the bits under mask counting
 * from the most significant one down, so a cursor keeps its meaning when the
 * table doubles or halves (Redis dict.c, dictScan). */
static inline uint64_t cursor_next(uint64_t v, uint64_t mask)
{
    v |= ~mask;
    v = rev64(v);
    v++;
    return rev64(v);
}

uint64_t kv_scan(const struct kv *kv, uint64_t cursor, kv_visit_cb cb,
                 void *arg)
{
    const struct table *small = &kv->t[0], *large = &kv->t[1];
    if (!rehashing(kv)) {
        if (small->size == 0)
            return 0;
        uint64_t m0 = small->size - 1;
        visit_chain(small->b[cursor & m0], cb, arg);
        return cursor_next(cursor, m0);
    }
    if (small->size > large->size) {
        const struct table *tmp = small;
        small = large;
        large = tmp;
    }
    uint64_t m0 = small->size - 1, m1 = large->size - 1;
    visit_chain(small->b[cursor & m0], cb, arg);
    /* Then every bucket of the larger table that is an expansion of that
     * one: the indices that agree with cursor on the bits of m0. */
    do {
        visit_chain(large->b[cursor & m1], cb, arg);
        cursor = cursor_next(cursor, m1);
    } while (cursor & (m0 ^ m1));
    return cursor;
}

/* --- command codec ------------------------------------------------------ */

static size_t varint_put(uint8_t *p, uint64_t v)
{
    size_t n = 0;
    while (v >= 0x80) {
        p[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    p[n++] = (uint8_t)v;
    return n;
}

/* Decode a shortest-form varint of at most maxb bytes (5 or 10) whose
 * value fits max. Returns 0 and advances *pos, or PZ_ECORRUPT. */
static int varint_get_n(const uint8_t *p, size_t len, size_t *pos, int maxb,
                        uint64_t max, uint64_t *out)
{
    uint64_t v = 0;
    for (int i = 0; i < maxb; i++) {
        if (*pos >= len)
            return PZ_ECORRUPT; /* truncated */
        uint8_t b = p[(*pos)++];
        if (i == 9 && (b & 0x7e))
            return PZ_ECORRUPT; /* over 64 bits */
        v |= (uint64_t)(b & 0x7f) << (7 * i);
        if (!(b & 0x80)) {
            if (b == 0 && i > 0)
                return PZ_ECORRUPT; /* not the shortest form */
            if (v > max)
                return PZ_ECORRUPT;
            *out = v;
            return 0;
        }
    }
    return PZ_ECORRUPT; /* too many bytes */
}

static int varint_get(const uint8_t *p, size_t len, size_t *pos, uint32_t *out)
{
    uint64_t v;
    int rc = varint_get_n(p, len, pos, 5, UINT32_MAX, &v);
    if (rc == 0)
        *out = (uint32_t)v;
    return rc;
}

static void encode(struct pz_buf *out, int op, const void *key, size_t klen,
                   const void *value, size_t vlen)
{
    uint8_t hdr[KV_CMD_OVERHEAD];
    size_t n = 0;
    hdr[n++] = (uint8_t)(KV_CMD_VERSION << 4 | op);
    n += varint_put(hdr + n, (uint32_t)klen);
    pz_buf_reserve(out, n + klen + 5 + vlen);
    pz_buf_append(out, hdr, n);
    pz_buf_append(out, key, klen);
    if (op == KV_OP_SET) {
        n = varint_put(hdr, (uint32_t)vlen);
        pz_buf_append(out, hdr, n);
        pz_buf_append(out, value, vlen);
    }
}

int kv_encode_set(struct pz_buf *out, const void *key, size_t klen,
                  const void *value, size_t vlen)
{
    if (klen > KV_KEY_MAX || vlen > KV_VALUE_MAX)
        return PZ_ETOOBIG;
    encode(out, KV_OP_SET, key, klen, value, vlen);
    return 0;
}

int kv_encode_del(struct pz_buf *out, const void *key, size_t klen)
{
    if (klen > KV_KEY_MAX)
        return PZ_ETOOBIG;
    encode(out, KV_OP_DEL, key, klen, NULL, 0);
    return 0;
}

/* --- version 3: leases --- */

static void put_varint(struct pz_buf *out, uint64_t v);
static void put_byte(struct pz_buf *out, int v);

static bool lease_id_ok(uint64_t id)
{
    return id >= 1 && id <= KV_LEASE_ID_MAX;
}

int kv_encode_set_lease(struct pz_buf *out, const void *key, size_t klen,
                        const void *value, size_t vlen, uint64_t lease)
{
    if (lease == 0)
        return kv_encode_set(out, key, klen, value, vlen);
    if (!lease_id_ok(lease))
        return PZ_EINVAL;
    if (klen > KV_KEY_MAX || vlen > KV_VALUE_MAX)
        return PZ_ETOOBIG;
    pz_buf_reserve(out, 1 + 5 + klen + 5 + vlen + 10);
    put_byte(out, KV_CMD_VERSION3 << 4 | 1);
    put_varint(out, klen);
    pz_buf_append(out, key, klen);
    put_varint(out, vlen);
    pz_buf_append(out, value, vlen);
    put_varint(out, lease);
    return 0;
}

int kv_encode_lease_grant(struct pz_buf *out, uint64_t id, uint64_t ttl)
{
    if (!lease_id_ok(id) || ttl == 0 || ttl > KV_LEASE_TTL_MAX)
        return PZ_EINVAL;
    put_byte(out, KV_CMD_VERSION3 << 4 | 2);
    put_varint(out, id);
    put_varint(out, ttl);
    return 0;
}

int kv_encode_lease_revoke(struct pz_buf *out, uint64_t id)
{
    if (!lease_id_ok(id))
        return PZ_EINVAL;
    put_byte(out, KV_CMD_VERSION3 << 4 | 3);
    put_varint(out, id);
    return 0;
}

/* --- version 2: transactions --- */

static void put_varint(struct pz_buf *out, uint64_t v)
{
    uint8_t b[10];
    pz_buf_append(out, b, varint_put(b, v));
}

static void put_field(struct pz_buf *out, const void *p, size_t n)
{
    put_varint(out, n);
    pz_buf_append(out, p, n);
}

static void put_byte(struct pz_buf *out, int v)
{
    uint8_t b = (uint8_t)v;
    pz_buf_append(out, &b, 1);
}

static int check_cmp(const struct kv_cmp *c)
{
    if (c->target < KV_CMP_VALUE || c->target > KV_CMP_LEASE ||
        c->result < KV_CMP_EQ || c->result > KV_CMP_GT)
        return PZ_EINVAL;
    if (c->klen > KV_KEY_MAX ||
        (c->target == KV_CMP_VALUE && c->vlen > KV_VALUE_MAX))
        return PZ_ETOOBIG;
    return 0;
}

static int check_op(const struct kv_op *o)
{
    int allowed = 0;
    switch (o->type) {
    case KV_TOP_PUT:
    case KV_TOP_DEL:
    case KV_TOP_GET:
        break;
    case KV_TOP_DELRANGE:
        allowed = KV_RANGE_TO_END;
        break;
    case KV_TOP_RANGE:
        allowed = KV_RANGE_TO_END | KV_RANGE_KEYS_ONLY | KV_RANGE_COUNT_ONLY;
        break;
    default:
        return PZ_EINVAL;
    }
    if (o->flags & ~allowed)
        return PZ_EINVAL;
    if ((o->flags & KV_RANGE_TO_END) && o->vlen != 0)
        return PZ_EINVAL;
    if (o->klen > KV_KEY_MAX)
        return PZ_ETOOBIG;
    if (o->type == KV_TOP_PUT && o->vlen > KV_VALUE_MAX)
        return PZ_ETOOBIG;
    if ((o->type == KV_TOP_DELRANGE || o->type == KV_TOP_RANGE) &&
        o->vlen > KV_KEY_MAX)
        return PZ_ETOOBIG;
    return 0;
}

static void put_op(struct pz_buf *out, const struct kv_op *o)
{
    put_byte(out, o->type);
    put_field(out, o->key, o->klen);
    switch (o->type) {
    case KV_TOP_PUT:
        put_field(out, o->value, o->vlen);
        put_varint(out, o->lease);
        break;
    case KV_TOP_DELRANGE:
    case KV_TOP_RANGE:
        put_byte(out, o->flags);
        put_field(out, o->value, o->vlen);
        if (o->type == KV_TOP_RANGE)
            put_varint(out, o->limit);
        break;
    default:
        break;
    }
}

int kv_encode_txn(struct pz_buf *out, const struct kv_cmp *cmps, size_t ncmp,
                  const struct kv_op *succ, size_t nsucc,
                  const struct kv_op *fail, size_t nfail)
{
    if (ncmp > KV_TXN_MAX || nsucc > KV_TXN_MAX || nfail > KV_TXN_MAX)
        return PZ_EINVAL;
    int rc;
    for (size_t i = 0; i < ncmp; i++)
        if ((rc = check_cmp(&cmps[i])) != 0)
            return rc;
    for (size_t i = 0; i < nsucc; i++)
        if ((rc = check_op(&succ[i])) != 0)
            return rc;
    for (size_t i = 0; i < nfail; i++)
        if ((rc = check_op(&fail[i])) != 0)
            return rc;
    put_byte(out, KV_CMD_VERSION2 << 4 | 1);
    put_varint(out, ncmp);
    for (size_t i = 0; i < ncmp; i++) {
        const struct kv_cmp *c = &cmps[i];
        put_byte(out, c->target);
        put_byte(out, c->result);
        put_field(out, c->key, c->klen);
        if (c->target == KV_CMP_VALUE)
            put_field(out, c->value, c->vlen);
        else
            put_varint(out, c->num);
    }
    put_varint(out, nsucc);
    for (size_t i = 0; i < nsucc; i++)
        put_op(out, &succ[i]);
    put_varint(out, nfail);
    for (size_t i = 0; i < nfail; i++)
        put_op(out, &fail[i]);
    return 0;
}

/* Read a length field and check it against its limit and what is left. */
static int get_field(const uint8_t *cmd, size_t len, size_t *pos,
                     uint32_t limit, const uint8_t **p, size_t *n)
{
    uint32_t v;
    int rc = varint_get(cmd, len, pos, &v);
    if (rc)
        return rc;
    if (v > len - *pos)
        return PZ_ECORRUPT; /* runs past the end */
    if (v > limit)
        return PZ_ETOOBIG;
    *p = cmd + *pos;
    *n = v;
    *pos += v;
    return 0;
}

static int get_byte(const uint8_t *p, size_t len, size_t *pos, int *out)
{
    if (*pos >= len)
        return PZ_ECORRUPT;
    *out = p[(*pos)++];
    return 0;
}

static int get_count(const uint8_t *p, size_t len, size_t *pos, size_t *out)
{
    uint32_t v;
    int rc = varint_get(p, len, pos, &v);
    if (rc)
        return rc;
    if (v > KV_TXN_MAX)
        return PZ_ETOOBIG;
    *out = v;
    return 0;
}

static int get_cmp(const uint8_t *p, size_t len, size_t *pos, struct kv_cmp *c)
{
    int rc;
    memset(c, 0, sizeof *c);
    if ((rc = get_byte(p, len, pos, &c->target)) != 0 ||
        (rc = get_byte(p, len, pos, &c->result)) != 0)
        return rc;
    if (c->target > KV_CMP_LEASE || c->result > KV_CMP_GT)
        return PZ_EINVAL;
    if ((rc = get_field(p, len, pos, KV_KEY_MAX, &c->key, &c->klen)) != 0)
        return rc;
    if (c->target == KV_CMP_VALUE)
        return get_field(p, len, pos, KV_VALUE_MAX, &c->value, &c->vlen);
    return varint_get_n(p, len, pos, 10, UINT64_MAX, &c->num);
}

static int get_op(const uint8_t *p, size_t len, size_t *pos, struct kv_op *o)
{
    int rc;
    memset(o, 0, sizeof *o);
    if ((rc = get_byte(p, len, pos, &o->type)) != 0)
        return rc;
    if (o->type < KV_TOP_PUT || o->type > KV_TOP_RANGE)
        return PZ_EINVAL;
    if ((rc = get_field(p, len, pos, KV_KEY_MAX, &o->key, &o->klen)) != 0)
        return rc;
    switch (o->type) {
    case KV_TOP_PUT:
        if ((rc = get_field(p, len, pos, KV_VALUE_MAX, &o->value, &o->vlen)) !=
            0)
            return rc;
        return varint_get_n(p, len, pos, 10, UINT64_MAX, &o->lease);
    case KV_TOP_DELRANGE:
    case KV_TOP_RANGE:
        if ((rc = get_byte(p, len, pos, &o->flags)) != 0 ||
            (rc = get_field(p, len, pos, KV_KEY_MAX, &o->value, &o->vlen)) != 0)
            return rc;
        if (o->type == KV_TOP_RANGE &&
            (rc = varint_get_n(p, len, pos, 10, UINT64_MAX, &o->limit)) != 0)
            return rc;
        return check_op(o);
    default:
        return 0;
    }
}

/* Walk a transaction body: with check, validate it and fill the counts
 * into c; otherwise fill the arrays that are not NULL. */
static int walk_txn(const uint8_t *p, size_t len, struct kv_cmd *c, bool check,
                    struct kv_cmp *cmps, struct kv_op *succ, struct kv_op *fail)
{
    size_t pos = 0, n;
    int rc;
    struct kv_cmp cm;
    struct kv_op op;
    if ((rc = get_count(p, len, &pos, &n)) != 0)
        return rc;
    if (check)
        c->ncmp = n;
    for (size_t i = 0; i < n; i++) {
        if ((rc = get_cmp(p, len, &pos, cmps ? &cmps[i] : &cm)) != 0)
            return rc;
    }
    for (int br = 0; br < 2; br++) {
        struct kv_op *arr = br == 0 ? succ : fail;
        if ((rc = get_count(p, len, &pos, &n)) != 0)
            return rc;
        if (check) {
            if (br == 0)
                c->nsucc = n;
            else
                c->nfail = n;
        }
        for (size_t i = 0; i < n; i++)
            if ((rc = get_op(p, len, &pos, arr ? &arr[i] : &op)) != 0)
                return rc;
    }
    if (pos != len)
        return PZ_ECORRUPT; /* trailing bytes */
    return 0;
}

void kv_txn_items(const struct kv_cmd *cmd, struct kv_cmp *cmps,
                  struct kv_op *succ, struct kv_op *fail)
{
    int rc = walk_txn(cmd->body, cmd->body_len, NULL, false, cmps, succ, fail);
    pz_assert(rc == 0); /* kv_decode checked it */
}

static int decode_v3(const uint8_t *cmd, size_t len, struct kv_cmd *out)
{
    struct kv_cmd c = {0};
    size_t pos = 1;
    int rc = 0;
    switch (cmd[0] & 0x0f) {
    case 1:
        c.op = KV_OP_SETL;
        if ((rc = get_field(cmd, len, &pos, KV_KEY_MAX, &c.key, &c.klen)) ||
            (rc = get_field(cmd, len, &pos, KV_VALUE_MAX, &c.value, &c.vlen)))
            return rc;
        break;
    case 2:
        c.op = KV_OP_GRANT;
        break;
    case 3:
        c.op = KV_OP_REVOKE;
        break;
    default:
        return PZ_EINVAL;
    }
    if ((rc = varint_get_n(cmd, len, &pos, 10, UINT64_MAX, &c.lease)) != 0)
        return rc;
    if (c.op == KV_OP_GRANT &&
        (rc = varint_get_n(cmd, len, &pos, 10, UINT64_MAX, &c.ttl)) != 0)
        return rc;
    if (pos != len)
        return PZ_ECORRUPT; /* trailing bytes */
    if (!lease_id_ok(c.lease) ||
        (c.op == KV_OP_GRANT && (c.ttl == 0 || c.ttl > KV_LEASE_TTL_MAX)))
        return PZ_EINVAL;
    *out = c;
    return 0;
}

int kv_decode(const uint8_t *cmd, size_t len, struct kv_cmd *out)
{
    if (len == 0)
        return PZ_EINVAL;
    struct kv_cmd c = {0};
    if (cmd[0] == (KV_CMD_VERSION2 << 4 | 1)) {
        c.op = KV_OP_TXN;
        c.body = cmd + 1;
        c.body_len = len - 1;
        int rc = walk_txn(c.body, c.body_len, &c, true, NULL, NULL, NULL);
        if (rc)
            return rc;
        *out = c;
        return 0;
    }
    if (cmd[0] >> 4 == KV_CMD_VERSION3)
        return decode_v3(cmd, len, out);
    if (cmd[0] >> 4 != KV_CMD_VERSION)
        return PZ_EINVAL;
    int op = cmd[0] & 0x0f;
    if (op != KV_OP_SET && op != KV_OP_DEL)
        return PZ_EINVAL;
    c.op = op;
    size_t pos = 1;
    int rc = get_field(cmd, len, &pos, KV_KEY_MAX, &c.key, &c.klen);
    if (rc == 0 && op == KV_OP_SET)
        rc = get_field(cmd, len, &pos, KV_VALUE_MAX, &c.value, &c.vlen);
    if (rc)
        return rc;
    if (pos != len)
        return PZ_ECORRUPT; /* trailing bytes */
    *out = c;
    return 0;
}

/* --- applying ------------------------------------------------------------- */

static bool cmp_holds(struct kv *kv, const struct kv_cmp *c)
{
    struct entry *e = lookup(kv, c->key, c->klen);
    int r;
    if (c->target == KV_CMP_VALUE) {
        if (e == NULL)
            return false;
        r = bytes_cmp(entry_value(e), e->vlen, c->value, c->vlen);
    } else {
        uint64_t v = 0;
        if (e) {
            switch (c->target) {
            case KV_CMP_VERSION:
                v = e->version;
                break;
            case KV_CMP_CREATE:
                v = e->create_revision;
                break;
            case KV_CMP_MOD:
                v = e->mod_revision;
                break;
            default:
                v = entry_lease(e);
                break;
            }
        }
        r = v < c->num ? -1 : v > c->num;
    }
    switch (c->result) {
    case KV_CMP_EQ:
        return r == 0;
    case KV_CMP_NE:
        return r != 0;
    case KV_CMP_LT:
        return r < 0;
    default:
        return r > 0;
    }
}

struct range_walk {
    struct apply *a;        /* results */
    const struct kv_op *op; /* the RANGE */
    uint64_t count;         /* keys returned (COUNT_ONLY: in the range) */
    uint64_t sent;          /* keys reported */
    bool more;              /* the limit left keys out */
};

static int range_visit(void *arg, const struct kv_view *v)
{
    struct range_walk *w = arg;
    if (w->op->limit && w->sent >= w->op->limit) {
        w->more = true; /* one past the limit: enough to know */
        return 1;
    }
    w->count++;
    w->sent++;
    const struct kv_sink *s = w->a->sink;
    if (s && s->item) {
        struct kv_view c = *v;
        if (w->op->flags & KV_RANGE_KEYS_ONLY) {
            c.value = NULL;
            c.vlen = 0;
        }
        s->item(s->arg, &c);
    }
    return 0;
}

static void run_op(struct apply *a, size_t i, const struct kv_op *o)
{
    const struct kv_sink *s = a->sink;
    uint64_t count = 0;
    bool more = false;
    if (s && s->op_begin)
        s->op_begin(s->arg, i, o);
    switch (o->type) {
    case KV_TOP_PUT:
        do_put(a, o->key, o->klen, o->value, o->vlen, o->lease);
        count = 1;
        break;
    case KV_TOP_DEL:
        count = (uint64_t)do_del(a, o->key, o->klen);
        break;
    case KV_TOP_DELRANGE: {
        uint64_t all = UINT64_MAX;
        do_delrange(a, o->key, o->klen, o->value, o->vlen,
                    o->flags & KV_RANGE_TO_END, &all, &count);
        break;
    }
    case KV_TOP_GET: {
        struct entry *e = lookup(a->kv, o->key, o->klen);
        if (e) {
            sink_item(a, e);
            count = 1;
        }
        break;
    }
    default: {
        struct range_walk w = {.a = a, .op = o};
        if (o->flags & KV_RANGE_COUNT_ONLY) /* O(log n), no walk */
            w.count = kv_range_count(a->kv, o->key, o->klen, o->value, o->vlen,
                                     o->flags & KV_RANGE_TO_END);
        else
            kv_range(a->kv, o->key, o->klen, o->value, o->vlen,
                     o->flags & KV_RANGE_TO_END, range_visit, &w);
        count = w.count;
        more = w.more;
        /* The walk stopped at the limit: the rest of the range is counted
         * without visiting it. */
        if (more && s && s->count_range)
            count = kv_range_count(a->kv, o->key, o->klen, o->value, o->vlen,
                                   o->flags & KV_RANGE_TO_END);
        break;
    }
    }
    if (s && s->op_end)
        s->op_end(s->arg, count, more);
}

/* --- range budget --------------------------------------------------------- */

struct budget_walk {
    uint64_t n, stop;
};

static int budget_visit(void *arg, const struct kv_view *v)
{
    struct budget_walk *w = arg;
    PZ_UNUSED(v);
    return ++w->n >= w->stop;
}

/* Keys operation o's walk visits on the table as it stands (run_op's
 * rule: a RANGE with a limit and without COUNT_ONLY stops one key past
 * it), counting at most stop (>= 1). A COUNT_ONLY RANGE walks nothing
 * now (kv_range_count) but still counts every key of its range, as it
 * always did: which transactions are refused is part of what the log
 * means, so it must not change between versions. */
static uint64_t op_keys(struct kv *kv, const struct kv_op *o, uint64_t stop)
{
    if (o->type != KV_TOP_RANGE)
        return 0;
    if (o->flags & KV_RANGE_COUNT_ONLY)
        return PZ_MIN(stop,
                      kv_range_count(kv, o->key, o->klen, o->value, o->vlen,
                                     o->flags & KV_RANGE_TO_END));
    struct budget_walk w = {0, stop};
    if (o->limit && !(o->flags & KV_RANGE_COUNT_ONLY) && o->limit < stop)
        w.stop = o->limit + 1;
    kv_range(kv, o->key, o->klen, o->value, o->vlen,
             o->flags & KV_RANGE_TO_END, budget_visit, &w);
    return w.n;
}

/* Does the branch of ops visit at most budget keys in its RANGE walks
 * (counted on the table before the branch runs)? At most budget + 1 keys
 * are visited to tell. */
static bool ops_within(struct kv *kv, const struct kv_op *ops, size_t n,
                       uint64_t budget)
{
    uint64_t used = 0;
    for (size_t i = 0; i < n; i++) {
        used += op_keys(kv, &ops[i], budget + 1 - used);
        if (used > budget)
            return false;
    }
    return true;
}

/* Evaluate c's comparisons; fill *ops (pz_free it) and *n with the branch
 * taken. Returns whether every comparison held. */
static bool txn_branch(struct kv *kv, const struct kv_cmd *c,
                       struct kv_op **ops, size_t *n)
{
    struct kv_cmp *cmps = pz_calloc(c->ncmp + 1, sizeof *cmps);
    struct kv_op *all = pz_calloc(c->nsucc + c->nfail + 1, sizeof *all);
    kv_txn_items(c, cmps, all, all + c->nsucc);
    bool ok = true;
    for (size_t i = 0; i < c->ncmp && ok; i++)
        ok = cmp_holds(kv, &cmps[i]);
    pz_free(cmps);
    if (!ok)
        memmove(all, all + c->nsucc, c->nfail * sizeof *all);
    *ops = all;
    *n = ok ? c->nsucc : c->nfail;
    return ok;
}

static bool txn_within(struct kv *kv, const struct kv_cmd *c,
                       uint64_t budget)
{
    struct kv_op *ops;
    size_t n;
    txn_branch(kv, c, &ops, &n);
    bool within = ops_within(kv, ops, n, budget);
    pz_free(ops);
    return within;
}

bool kv_cmd_txn_readonly(const struct kv_cmd *c)
{
    if (c->op != KV_OP_TXN)
        return false;
    struct kv_op *all = pz_calloc(c->nsucc + c->nfail + 1, sizeof *all);
    kv_txn_items(c, NULL, all, all + c->nsucc);
    bool ro = true;
    for (size_t i = 0; i < c->nsucc + c->nfail && ro; i++)
        ro = all[i].type == KV_TOP_GET || all[i].type == KV_TOP_RANGE;
    pz_free(all);
    return ro;
}

bool kv_txn_readonly(const uint8_t *cmd, size_t len)
{
    struct kv_cmd c;
    return kv_decode(cmd, len, &c) == 0 && kv_cmd_txn_readonly(&c);
}

int kv_cmd_txn_check(struct kv *kv, const struct kv_cmd *c, uint64_t budget)
{
    if (c->op != KV_OP_TXN)
        return KV_OK;
    return txn_within(kv, c, PZ_MIN(budget, (uint64_t)KV_TXN_KEYS_MAX))
               ? KV_OK
               : KV_ETXN_KEYS;
}

int kv_txn_check(struct kv *kv, const uint8_t *cmd, size_t len,
                 uint64_t budget)
{
    struct kv_cmd c;
    if (kv_decode(cmd, len, &c) != 0)
        return KV_OK;
    return kv_cmd_txn_check(kv, &c, budget);
}

static void run_op(struct apply *a, size_t i, const struct kv_op *o);

int kv_txn_read(struct kv *kv, const uint8_t *cmd, size_t len, uint64_t budget,
                struct kv_result *res, const struct kv_sink *sink)
{
    struct kv_cmd c;
    int rc = kv_decode(cmd, len, &c);
    if (rc)
        return rc;
    if (!kv_cmd_txn_readonly(&c))
        return PZ_EINVAL;
    memset(res, 0, sizeof *res);
    res->op = KV_OP_TXN;
    res->revision = kv->revision;
    struct kv_op *ops;
    size_t n;
    res->succeeded = txn_branch(kv, &c, &ops, &n);
    if (sink && sink->branch)
        sink->branch(sink->arg, res->succeeded);
    if (!ops_within(kv, ops, n, PZ_MIN(budget, (uint64_t)KV_TXN_KEYS_MAX))) {
        res->status = KV_ETXN_KEYS;
        res->succeeded = false;
    } else {
        struct apply a = {.kv = kv, .sink = sink};
        for (size_t i = 0; i < n; i++)
            run_op(&a, i, &ops[i]);
    }
    pz_free(ops);
    return 0;
}

/* Does every PUT among ops name a lease that exists (or none)? */
static bool ops_leases_ok(struct kv *kv, const struct kv_op *ops, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (ops[i].type == KV_TOP_PUT && ops[i].lease &&
            lease_find(kv, ops[i].lease) == NULL)
            return false;
    return true;
}

/* Does the branch hold an operation that writes (KV_REVISION_MAX)? */
static bool ops_write(const struct kv_op *ops, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (ops[i].type == KV_TOP_PUT || ops[i].type == KV_TOP_DEL ||
            ops[i].type == KV_TOP_DELRANGE)
            return true;
    return false;
}

/* Sort lease l's list of keys into bytewise key order, in place: a
 * bottom-up merge sort over the list's own links (O(n log n) compares, no
 * memory, no recursion, however many keys the lease holds), skipped when
 * no key was attached since the last sort (a detach keeps the order). The
 * list is kept in attach order, and a snapshot load rebuilds it in
 * another order, so a revoke that walked it as it is would delete the
 * keys, and report their events, in an order that differs between nodes
 * (etcd sorts them for the same reason), and so would a listing of them
 * (kv_lease_keys). Keys are distinct, so the order is total. */
static void lease_sort_keys(struct lease *l)
{
    struct entry *list = l->keys;
    if (list == NULL)
        return;
    if (!l->unsorted)
        return;
    for (size_t run = 1;; run *= 2) {
        struct entry *p = list, *head = NULL, *tail = NULL;
        size_t merges = 0;
        while (p) {
            /* Merge the run at p with the run of up to run keys after it. */
            merges++;
            struct entry *q = p;
            size_t pn = 0, qn = run;
            while (pn < run && q) {
                pn++;
                q = llink_of(q)->next;
            }
            while (pn > 0 || (qn > 0 && q)) {
                struct entry *e;
                if (pn > 0 && (qn == 0 || q == NULL ||
                               bytes_cmp(entry_key(p), p->klen, entry_key(q),
                                         q->klen) < 0)) {
                    e = p;
                    p = llink_of(p)->next;
                    pn--;
                } else {
                    e = q;
                    q = llink_of(q)->next;
                    qn--;
                }
                llink_of(e)->prev = tail;
                if (tail)
                    llink_of(tail)->next = e;
                else
                    head = e;
                tail = e;
            }
            p = q;
        }
        llink_of(tail)->next = NULL;
        list = head;
        if (merges <= 1)
            break;
    }
    l->keys = list;
    l->unsorted = false;
}

static void apply_grant(struct kv *kv, const struct kv_cmd *c,
                        struct kv_result *res)
{
    if (lease_find(kv, c->lease)) {
        res->status = KV_ELEASE_EXISTS;
        return;
    }
    if (kv->nleases >= KV_LEASE_HARD_MAX) {
        res->status = KV_ELEASE_FULL;
        return;
    }
    lease_add(kv, c->lease, c->ttl);
    if (kv->on_lease)
        kv->on_lease(kv->lease_arg, true, c->lease, c->ttl);
}

/* --- applying in steps ---------------------------------------------------- */

/* How many sort moves, or keys collected, count as one unit of budget (a
 * key deleted): they are a compare or a pointer copy, not a removal from
 * both indexes with its event. */
#define JOB_CHEAP_PER_UNIT 8
/* Bytes of a command done at once (a SET's value, copied) that count as
 * one unit more. */
#define JOB_BYTES_PER_UNIT 16384

/* Charge one cheap step (JOB_CHEAP_PER_UNIT to a unit). */
static void charge_cheap(struct kv_job *j, uint64_t *budget)
{
    if (++j->cheap >= JOB_CHEAP_PER_UNIT) {
        j->cheap = 0;
        if (*budget)
            (*budget)--;
    }
}

static int entry_cmp(const struct entry *a, const struct entry *b)
{
    return bytes_cmp(entry_key(a), a->klen, entry_key(b), b->klen);
}

/* Sort j->keys bytewise: a bottom-up merge sort between keys and tmp,
 * resumable at any element (no recursion, no state outside j). Returns
 * whether it is sorted (then in j->keys). */
static bool revoke_sort(struct kv_job *j, uint64_t *budget)
{
    while (j->width < j->nkeys) {
        if (!j->merging) {
            if (j->lo >= j->nkeys) { /* a pass is done: the runs double */
                struct entry **t = j->keys;
                j->keys = j->tmp;
                j->tmp = t;
                j->width *= 2;
                j->lo = 0;
                continue;
            }
            j->mid = PZ_MIN(j->lo + j->width, j->nkeys);
            j->hi = PZ_MIN(j->lo + 2 * j->width, j->nkeys);
            j->li = j->lo;
            j->ri = j->mid;
            j->k = j->lo;
            j->merging = true;
        }
        while (j->k < j->hi) {
            if (*budget == 0)
                return false;
            if (j->li < j->mid &&
                (j->ri >= j->hi ||
                 entry_cmp(j->keys[j->li], j->keys[j->ri]) < 0))
                j->tmp[j->k++] = j->keys[j->li++];
            else
                j->tmp[j->k++] = j->keys[j->ri++];
            charge_cheap(j, budget);
        }
        j->merging = false;
        j->lo = j->hi;
    }
    return true;
}

/* REVOKE's work: collect the keys, sort them (so that every node deletes
 * them, and reports their events, in the same order whatever order they
 * were attached in or a snapshot load rebuilt: as etcd), delete them (one
 * revision), then drop the lease. Returns whether it is done. */
static bool revoke_steps(struct kv_job *j, uint64_t *budget)
{
    struct kv *kv = j->kv;
    if (j->phase == JOB_COLLECT) {
        while (j->next) {
            if (*budget == 0)
                return false;
            j->keys[j->got++] = j->next;
            j->next = llink_of(j->next)->next;
            charge_cheap(j, budget);
        }
        pz_assert(j->got == j->nkeys);
        j->phase = JOB_SORT;
        j->width = 1;
    }
    if (j->phase == JOB_SORT) {
        if (!revoke_sort(j, budget))
            return false;
        j->phase = JOB_DELETE;
    }
    while (j->del < j->nkeys) {
        if (*budget == 0)
            return false;
        struct entry *e = j->keys[j->del++];
        struct table *t;
        struct entry **link =
            find_link(kv, entry_hash(kv, e), entry_key(e), e->klen, &t);
        pz_assert(link && *link == e);
        struct entry **upd[KV_SKIP_LEVELS];
        sl_find(kv, entry_key(e), e->klen, upd);
        remove_entry(&j->a, link, t, upd, e);
        j->res.deleted++;
        (*budget)--;
    }
    lease_drop(kv, j->lease);
    if (kv->on_lease)
        kv->on_lease(kv->lease_arg, false, j->lease, j->ttl);
    return true;
}

/* REVOKE's checks, then its job set up. Returns whether there is work. */
static bool revoke_start(struct kv_job *j)
{
    struct lease *l = lease_find(j->kv, j->c.lease);
    if (l == NULL) {
        j->res.status = KV_ELEASE_NOTFOUND;
        return false;
    }
    if (l->keys && j->kv->revision >= KV_REVISION_MAX) {
        j->res.status = KV_EREVISION;
        return false;
    }
    j->lease = l->id;
    j->ttl = l->ttl;
    j->nkeys = l->nkeys;
    j->next = l->keys;
    j->keys = pz_calloc(j->nkeys + 1, sizeof *j->keys);
    j->tmp = pz_calloc(j->nkeys + 1, sizeof *j->tmp);
    j->phase = JOB_COLLECT;
    return true;
}

/* A transaction's branch from operation j->i on; a DELRANGE goes on from
 * where it stopped. Returns whether it is done. */
static bool txn_steps(struct kv_job *j, uint64_t *budget)
{
    const struct kv_sink *s = j->a.sink;
    while (j->i < j->n) {
        if (*budget == 0)
            return false;
        const struct kv_op *o = &j->ops[j->i];
        if (o->type != KV_TOP_DELRANGE) {
            run_op(&j->a, j->i, o);
            j->i++;
            (*budget)--;
            continue;
        }
        if (!j->in_op) {
            if (s && s->op_begin)
                s->op_begin(s->arg, j->i, o);
            j->in_op = true;
            j->count = 0;
        }
        if (!do_delrange(&j->a, o->key, o->klen, o->value, o->vlen,
                         o->flags & KV_RANGE_TO_END, budget, &j->count))
            return false;
        if (s && s->op_end)
            s->op_end(s->arg, j->count, false);
        j->in_op = false;
        j->i++;
    }
    j->res.succeeded = j->ok;
    return true;
}

/* The checks and the outcome of the command, decided on the table as it
 * stands. Returns whether work is left for txn_steps/revoke_steps. */
static bool job_begin(struct kv_job *j)
{
    struct kv *kv = j->kv;
    struct kv_result *res = &j->res;
    const struct kv_cmd *c = &j->c;
    struct apply *a = &j->a;
    /* SET, SETL and DEL at the highest revision: refused (kv.h). */
    bool at_max = kv->revision >= KV_REVISION_MAX;
    switch (c->op) {
    case KV_OP_SET:
        if (at_max) {
            res->status = KV_EREVISION;
            break;
        }
        res->existed = do_put(a, c->key, c->klen, c->value, c->vlen, 0) == 1;
        break;
    case KV_OP_SETL:
        if (lease_find(kv, c->lease) == NULL) {
            res->status = KV_ELEASE_NOTFOUND;
            res->succeeded = false;
            break;
        }
        if (at_max) {
            res->status = KV_EREVISION;
            break;
        }
        res->existed =
            do_put(a, c->key, c->klen, c->value, c->vlen, c->lease) == 1;
        break;
    case KV_OP_DEL:
        if (at_max) {
            res->status = KV_EREVISION;
            break;
        }
        res->existed = do_del(a, c->key, c->klen) == 1;
        break;
    case KV_OP_GRANT:
        apply_grant(kv, c, res);
        break;
    case KV_OP_REVOKE:
        return revoke_start(j);
    default: {
        /* The compares are evaluated once, on the table before the
         * branch runs; the branch taken is checked, then run. */
        j->ok = txn_branch(kv, c, &j->ops, &j->n);
        if (a->sink && a->sink->branch)
            a->sink->branch(a->sink->arg, j->ok);
        if (!ops_leases_ok(kv, j->ops, j->n)) {
            res->status = KV_ELEASE_NOTFOUND;
            res->succeeded = false;
        } else if (!ops_within(kv, j->ops, j->n, KV_TXN_KEYS_MAX)) {
            res->status = KV_ETXN_KEYS;
            res->succeeded = false;
        } else if (at_max && ops_write(j->ops, j->n)) {
            res->status = KV_EREVISION;
        } else {
            return true;
        }
    }
    }
    return false;
}

/* Point p, if it points into the command, into its copy at delta. */
static void rebase(const struct kv_job *j, const uint8_t **p, ptrdiff_t delta)
{
    if (*p && *p >= j->cmd && *p <= j->cmd + j->len)
        *p += delta;
}

/* Paused for the first time: the command is copied, so that the caller's
 * bytes need not outlive the call, and everything decoded from it points
 * into the copy. */
static void job_own(struct kv_job *j)
{
    if (j->owned)
        return;
    uint8_t *copy = pz_malloc(j->len + 1);
    memcpy(copy, j->cmd, j->len);
    ptrdiff_t delta = copy - j->cmd;
    rebase(j, &j->c.key, delta);
    rebase(j, &j->c.value, delta);
    rebase(j, &j->c.body, delta);
    for (size_t i = 0; i < j->n; i++) {
        rebase(j, &j->ops[i].key, delta);
        rebase(j, &j->ops[i].value, delta);
    }
    j->cmd = copy;
    j->owned = true;
}

/* j is done: fill *res (may be NULL) and free j. */
static void job_finish(struct kv_job *j, struct kv_result *res)
{
    j->res.succeeded = j->res.succeeded && j->res.status == KV_OK;
    j->res.revision = j->kv->revision;
    if (res)
        *res = j->res;
    kv_job_free(j);
}

/* Run j's work within *budget (units used are taken off it); when it is
 * done, fill *res, free j and return true. Paused, the table keeps j as
 * what readers of its aggregates see (kv_revision and friends). */
static bool job_go(struct kv_job *j, uint64_t *budget, struct kv_result *res)
{
    struct kv *kv = j->kv;
    kv->paused = NULL; /* callbacks during the steps see the live table */
    uint64_t b = *budget ? *budget : 1; /* every call makes progress */
    bool done =
        j->c.op == KV_OP_REVOKE ? revoke_steps(j, &b) : txn_steps(j, &b);
    *budget = PZ_MIN(*budget, b);
    if (!done) {
        job_own(j);
        kv->paused = j;
        return false;
    }
    job_finish(j, res);
    return true;
}

int kv_apply_start(struct kv *kv, const uint8_t *cmd, size_t len,
                   const struct kv_sink *sink, uint64_t *budget,
                   struct kv_result *res, struct kv_job **job)
{
    pz_assert(kv->paused == NULL); /* one command at a time */
    *job = NULL;
    struct kv_cmd c;
    int rc = kv_decode(cmd, len, &c);
    if (rc) {
        *budget -= PZ_MIN(*budget, 1);
        return rc;
    }
    struct kv_job *j = pz_calloc(1, sizeof *j);
    j->kv = kv;
    j->c = c;
    j->cmd = cmd;
    j->len = len;
    j->a.kv = kv;
    j->a.sink = sink;
    j->before.revision = kv->revision;
    j->before.digest = kv->digest;
    j->before.keys = kv->t[0].used + kv->t[1].used;
    j->before.bytes = kv->bytes;
    j->res.op = c.op;
    j->res.status = KV_OK;
    j->res.succeeded = true;
    if (!job_begin(j)) {
        /* Done at once: one unit, and one per JOB_BYTES_PER_UNIT of the
         * command (its value copied into the table). */
        *budget -= PZ_MIN(*budget, 1 + (uint64_t)len / JOB_BYTES_PER_UNIT);
        job_finish(j, res);
        return 0;
    }
    uint64_t had = *budget;
    if (!job_go(j, budget, res))
        *job = j;
    else if (*budget == had) /* its steps found nothing to do */
        *budget -= PZ_MIN(*budget, 1);
    return 0;
}

bool kv_job_run(struct kv_job *job, uint64_t *budget, struct kv_result *res)
{
    pz_assert(job->kv->paused == job);
    return job_go(job, budget, res);
}

void kv_job_set_sink(struct kv_job *job, const struct kv_sink *sink)
{
    job->a.sink = sink;
}

void kv_job_free(struct kv_job *job)
{
    if (job == NULL)
        return;
    if (job->kv->paused == job)
        job->kv->paused = NULL;
    if (job->owned)
        pz_free((void *)job->cmd);
    pz_free(job->ops);
    pz_free(job->keys);
    pz_free(job->tmp);
    pz_free(job);
}

int kv_apply(struct kv *kv, const uint8_t *cmd, size_t len,
             struct kv_result *res)
{
    return kv_apply_sink(kv, cmd, len, res, NULL);
}

int kv_apply_sink(struct kv *kv, const uint8_t *cmd, size_t len,
                  struct kv_result *res, const struct kv_sink *sink)
{
    struct kv_job *job;
    uint64_t budget = UINT64_MAX;
    int rc = kv_apply_start(kv, cmd, len, sink, &budget, res, &job);
    pz_assert(job == NULL); /* no budget runs out */
    return rc;
}
