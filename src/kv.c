/* kv.c - the key-value state machine: an incrementally rehashed hash table
 * of byte strings, the command codec and the running digest. Pure.
 *
 * Happy path: kv_apply() decodes a command from a committed Raft entry and
 * calls kv_set() or kv_del(); reads call kv_get(). Each entry is one
 * allocation holding its hash, both lengths, the key and the value.
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

struct entry {
    struct entry *next; /* next in the bucket chain */
    uint64_t hash;      /* pz_hash of the key with the table seed */
    uint32_t klen;      /* key length */
    uint32_t vlen;      /* value length */
    uint8_t data[];     /* key, value, then a NUL */
};

struct table {
    struct entry **b; /* bucket array, NULL when size is 0 */
    size_t size;      /* number of buckets: 0 or a power of two */
    size_t used;      /* entries linked into this table */
};

struct kv {
    struct table t[2];  /* t[1] is used only while rehashing */
    long rehash_idx;    /* next t[0] bucket to move; -1: not rehashing */
    uint64_t seed;      /* hash seed of this table */
    size_t bytes;       /* sum of key and value lengths */
    uint64_t digest;    /* sum of entry digests */
    struct kv_stats st; /* grow/shrink/rehash counters; kv_stats() fills
                           the rest */
};

static inline uint8_t *entry_value(struct entry *e)
{
    return e->data + e->klen;
}

static uint64_t entry_digest(const void *key, size_t klen, const void *val,
                             size_t vlen)
{
    return pz_hash(val, vlen, pz_hash(key, klen, DIGEST_SEED));
}

static struct entry *entry_new(uint64_t hash, const void *key, size_t klen,
                               const void *val, size_t vlen)
{
    struct entry *e = pz_malloc(sizeof(*e) + klen + vlen + 1);
    e->next = NULL;
    e->hash = hash;
    e->klen = (uint32_t)klen;
    e->vlen = (uint32_t)vlen;
    if (klen)
        memcpy(e->data, key, klen);
    if (vlen)
        memcpy(e->data + klen, val, vlen);
    e->data[klen + vlen] = '\0';
    return e;
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
            struct entry **dst = &t1->b[e->hash & mask1];
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
            if (e->hash == h && e->klen == klen &&
                (klen == 0 || memcmp(e->data, key, klen) == 0)) {
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

bool kv_get(struct kv *kv, const void *key, size_t klen, const uint8_t **val,
            size_t *vlen)
{
    rehash_step(kv);
    if (klen > KV_KEY_MAX)
        return false;
    struct entry **link =
        find_link(kv, pz_hash(key, klen, kv->seed), key, klen, NULL);
    if (link == NULL)
        return false;
    *val = entry_value(*link);
    *vlen = (*link)->vlen;
    return true;
}

int kv_set(struct kv *kv, const void *key, size_t klen, const void *value,
           size_t vlen)
{
    if (klen > KV_KEY_MAX || vlen > KV_VALUE_MAX)
        return PZ_ETOOBIG;
    rehash_step(kv);
    uint64_t h = pz_hash(key, klen, kv->seed);
    uint64_t d = entry_digest(key, klen, value, vlen);
    struct entry **link = find_link(kv, h, key, klen, NULL);
    if (link) {
        struct entry *old = *link;
        kv->digest -=
            entry_digest(old->data, old->klen, entry_value(old), old->vlen);
        kv->digest += d;
        kv->bytes = kv->bytes - old->vlen + vlen;
        if (old->vlen == vlen) {
            if (vlen)
                memmove(entry_value(old), value, vlen); /* may overlap */
            return 1;
        }
        /* Copy before freeing: value may point into old. */
        struct entry *e = entry_new(h, old->data, klen, value, vlen);
        e->next = old->next;
        *link = e;
        pz_free(old);
        return 1;
    }
    maybe_grow(kv);
    struct table *t = rehashing(kv) ? &kv->t[1] : &kv->t[0];
    struct entry *e = entry_new(h, key, klen, value, vlen);
    struct entry **head = &t->b[h & (t->size - 1)];
    e->next = *head;
    *head = e;
    t->used++;
    kv->bytes += klen + vlen;
    kv->digest += d;
    return 0;
}

int kv_del(struct kv *kv, const void *key, size_t klen)
{
    rehash_step(kv);
    if (klen > KV_KEY_MAX)
        return 0;
    uint64_t h = pz_hash(key, klen, kv->seed);
    struct table *t;
    struct entry **link = find_link(kv, h, key, klen, &t);
    if (link == NULL)
        return 0;
    struct entry *e = *link;
    *link = e->next;
    pz_assert(t->used > 0);
    t->used--;
    kv->bytes -= (size_t)e->klen + e->vlen;
    kv->digest -= entry_digest(e->data, e->klen, entry_value(e), e->vlen);
    pz_free(e);
    finish_if_done(kv);
    maybe_shrink(kv);
    return 1;
}

size_t kv_count(const struct kv *kv)
{
    return kv->t[0].used + kv->t[1].used;
}

size_t kv_bytes(const struct kv *kv)
{
    return kv->bytes;
}

uint64_t kv_digest(const struct kv *kv)
{
    return kv->digest;
}

static int add_digest(void *arg, const uint8_t *key, size_t klen,
                      const uint8_t *value, size_t vlen)
{
    *(uint64_t *)arg += entry_digest(key, klen, value, vlen);
    return 0;
}

uint64_t kv_digest_compute(const struct kv *kv)
{
    uint64_t d = 0;
    kv_foreach(kv, add_digest, &d);
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
    out->mem = sizeof(*kv) + kv->bytes +
               out->keys * (sizeof(struct entry) + 1) +
               (kv->t[0].size + kv->t[1].size) * sizeof(struct entry *);
}

/* --- iteration ---------------------------------------------------------- */

static int visit_chain(const struct entry *e, kv_visit_cb cb, void *arg)
{
    for (; e; e = e->next) {
        int rc = cb(arg, e->data, e->klen, e->data + e->klen, e->vlen);
        if (rc)
            return rc;
    }
    return 0;
}

int kv_foreach(const struct kv *kv, kv_visit_cb cb, void *arg)
{
    for (int i = 0; i < 2; i++) {
        const struct table *t = &kv->t[i];
        for (size_t j = 0; j < t->size; j++) {
            int rc = visit_chain(t->b[j], cb, arg);
            if (rc)
                return rc;
        }
    }
    return 0;
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

static size_t varint_put(uint8_t *p, uint32_t v)
{
    size_t n = 0;
    while (v >= 0x80) {
        p[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    p[n++] = (uint8_t)v;
    return n;
}

/* Decode a shortest-form varint of at most 5 bytes that fits 32 bits.
 * Returns 0 and advances *pos, or PZ_ECORRUPT. */
static int varint_get(const uint8_t *p, size_t len, size_t *pos, uint32_t *out)
{
    uint64_t v = 0;
    for (int i = 0; i < 5; i++) {
        if (*pos >= len)
            return PZ_ECORRUPT; /* truncated */
        uint8_t b = p[(*pos)++];
        v |= (uint64_t)(b & 0x7f) << (7 * i);
        if (!(b & 0x80)) {
            if (b == 0 && i > 0)
                return PZ_ECORRUPT; /* not the shortest form */
            if (v > UINT32_MAX)
                return PZ_ECORRUPT;
            *out = (uint32_t)v;
            return 0;
        }
    }
    return PZ_ECORRUPT; /* more than 5 bytes */
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

int kv_decode(const uint8_t *cmd, size_t len, struct kv_cmd *out)
{
    if (len == 0)
        return PZ_EINVAL;
    if (cmd[0] >> 4 != KV_CMD_VERSION)
        return PZ_EINVAL;
    int op = cmd[0] & 0x0f;
    if (op != KV_OP_SET && op != KV_OP_DEL)
        return PZ_EINVAL;
    struct kv_cmd c = {.op = op};
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

int kv_apply(struct kv *kv, const uint8_t *cmd, size_t len,
             struct kv_result *res)
{
    struct kv_cmd c;
    int rc = kv_decode(cmd, len, &c);
    if (rc)
        return rc;
    if (c.op == KV_OP_SET)
        rc = kv_set(kv, c.key, c.klen, c.value, c.vlen);
    else
        rc = kv_del(kv, c.key, c.klen);
    pz_assert(rc >= 0); /* limits were checked by kv_decode */
    if (res) {
        res->op = c.op;
        res->existed = rc == 1;
    }
    return 0;
}
