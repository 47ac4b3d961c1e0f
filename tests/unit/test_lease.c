/* test_lease.c - leases: the state machine's lease table (grant, revoke,
 * puts that attach and detach keys, refusals, the codec, digests, events,
 * a revoke's deletes in key order whatever the attach or restore order),
 * a seeded random comparison against a plain model, and the leader's
 * deadline tracker (lease.h) with an injected clock. */
#include <stdlib.h>

#include "kv.h"
#include "lease.h"
#include "pz.h"
#include "test.h"

static int apply_buf(struct kv *kv, struct pz_buf *b, struct kv_result *res)
{
    int rc = kv_apply(kv, (uint8_t *)b->data, b->len, res);
    pz_buf_reset(b);
    return rc;
}

static int grant(struct kv *kv, uint64_t id, uint64_t ttl)
{
    struct pz_buf b;
    struct kv_result res;
    pz_buf_init(&b);
    int rc = kv_encode_lease_grant(&b, id, ttl);
    if (rc == 0)
        rc = apply_buf(kv, &b, &res);
    pz_buf_free(&b);
    return rc ? rc : res.status;
}

static int revoke(struct kv *kv, uint64_t id, uint64_t *deleted)
{
    struct pz_buf b;
    struct kv_result res;
    pz_buf_init(&b);
    int rc = kv_encode_lease_revoke(&b, id);
    if (rc == 0)
        rc = apply_buf(kv, &b, &res);
    pz_buf_free(&b);
    if (deleted)
        *deleted = res.deleted;
    return rc ? rc : res.status;
}

static int put(struct kv *kv, const char *k, const char *v, uint64_t lease)
{
    struct pz_buf b;
    struct kv_result res;
    pz_buf_init(&b);
    int rc = kv_encode_set_lease(&b, k, strlen(k), v, strlen(v), lease);
    if (rc == 0)
        rc = apply_buf(kv, &b, &res);
    pz_buf_free(&b);
    return rc ? rc : res.status;
}

static uint64_t lease_of(struct kv *kv, const char *k)
{
    struct kv_view v;
    if (!kv_get_view(kv, k, strlen(k), &v))
        return UINT64_MAX;
    return v.meta.lease;
}

static size_t nkeys_of(struct kv *kv, uint64_t id)
{
    struct kv_lease l;
    return kv_lease_get(kv, id, &l) ? l.nkeys : (size_t)-1;
}

TEST(codec)
{
    struct pz_buf b;
    pz_buf_init(&b);
    CHECK_EQ_INT(kv_encode_lease_grant(&b, 300, 10), 0);
    static const uint8_t g[] = {0x32, 0xac, 0x02, 0x0a};
    CHECK(b.len == sizeof g && memcmp(b.data, g, sizeof g) == 0);
    struct kv_cmd c;
    CHECK_EQ_INT(kv_decode((uint8_t *)b.data, b.len, &c), 0);
    CHECK(c.op == KV_OP_GRANT && c.lease == 300 && c.ttl == 10);
    pz_buf_reset(&b);
    CHECK_EQ_INT(kv_encode_lease_revoke(&b, 5), 0);
    static const uint8_t r[] = {0x33, 0x05};
    CHECK(b.len == sizeof r && memcmp(b.data, r, sizeof r) == 0);
    pz_buf_reset(&b);
    CHECK_EQ_INT(kv_encode_set_lease(&b, "k", 1, "vv", 2, 5), 0);
    static const uint8_t s[] = {0x31, 1, 'k', 2, 'v', 'v', 5};
    CHECK(b.len == sizeof s && memcmp(b.data, s, sizeof s) == 0);
    CHECK_EQ_INT(kv_decode((uint8_t *)b.data, b.len, &c), 0);
    CHECK(c.op == KV_OP_SETL && c.lease == 5 && c.klen == 1 && c.vlen == 2);
    /* lease 0: a plain version-1 set */
    pz_buf_reset(&b);
    CHECK_EQ_INT(kv_encode_set_lease(&b, "k", 1, "vv", 2, 0), 0);
    CHECK(((uint8_t *)b.data)[0] == 0x11);
    /* out of range */
    pz_buf_reset(&b);
    CHECK_EQ_INT(kv_encode_lease_grant(&b, 0, 10), PZ_EINVAL);
    CHECK_EQ_INT(kv_encode_lease_grant(&b, KV_LEASE_ID_MAX + 1, 10),
                 PZ_EINVAL);
    CHECK_EQ_INT(kv_encode_lease_grant(&b, 1, 0), PZ_EINVAL);
    CHECK_EQ_INT(kv_encode_lease_grant(&b, 1, KV_LEASE_TTL_MAX + 1ull),
                 PZ_EINVAL);
    CHECK_EQ_INT(kv_encode_lease_revoke(&b, 0), PZ_EINVAL);
    CHECK_EQ_INT(kv_encode_set_lease(&b, "k", 1, "v", 1, KV_LEASE_ID_MAX + 1),
                 PZ_EINVAL);
    CHECK(b.len == 0);
    /* malformed bytes */
    static const struct {
        uint8_t p[8];
        size_t n;
        int rc;
    } bad[] = {
        {{0x32, 0x05}, 2, PZ_ECORRUPT},             /* no ttl */
        {{0x32, 0x05, 0x00}, 3, PZ_EINVAL},         /* ttl 0 */
        {{0x32, 0x00, 0x05}, 3, PZ_EINVAL},         /* id 0 */
        {{0x33, 0x05, 0x01}, 3, PZ_ECORRUPT},       /* trailing */
        {{0x33, 0x85}, 2, PZ_ECORRUPT},             /* truncated varint */
        {{0x33, 0x85, 0x00}, 3, PZ_ECORRUPT},       /* not shortest */
        {{0x34, 0x05}, 2, PZ_EINVAL},               /* unknown op */
        {{0x30, 0x05}, 2, PZ_EINVAL},               /* unknown op */
        {{0x31, 1, 'k', 1, 'v'}, 5, PZ_ECORRUPT},   /* no lease */
        {{0x31, 1, 'k', 1, 'v', 0}, 6, PZ_EINVAL},  /* lease 0 */
        {{0x31, 1, 'k', 5, 'v', 1}, 6, PZ_ECORRUPT}, /* value past end */
    };
    struct kv *kv = kv_new();
    for (size_t i = 0; i < PZ_ARRAY_SIZE(bad); i++) {
        CHECK_EQ_INT(kv_decode(bad[i].p, bad[i].n, &c), bad[i].rc);
        CHECK_EQ_INT(kv_apply(kv, bad[i].p, bad[i].n, NULL), bad[i].rc);
    }
    /* every truncation of a good command is refused */
    CHECK_EQ_INT(kv_encode_set_lease(&b, "key", 3, "val", 3, 1ull << 40), 0);
    for (size_t n = 0; n < b.len; n++)
        CHECK(kv_decode((uint8_t *)b.data, n, &c) < 0);
    CHECK(kv_digest(kv) == 0 && kv_lease_count(kv) == 0);
    pz_buf_free(&b);
    kv_free(kv);
}

/* A snapshot's leases come back with every id and ttl a GRANT accepts,
 * the largest included, and nothing a GRANT would refuse. */
TEST(restore_limits)
{
    struct kv *kv = kv_new();
    CHECK_EQ_INT(kv_lease_restore(kv, KV_LEASE_ID_MAX, 1), 0);
    CHECK_EQ_INT(kv_lease_restore(kv, 1, KV_LEASE_TTL_MAX), 0);
    CHECK_EQ_INT(kv_lease_restore(kv, 0, 10), PZ_EINVAL);
    CHECK_EQ_INT(kv_lease_restore(kv, KV_LEASE_ID_MAX + 1, 10), PZ_EINVAL);
    CHECK_EQ_INT(kv_lease_restore(kv, 2, 0), PZ_EINVAL);
    CHECK_EQ_INT(kv_lease_restore(kv, 2, KV_LEASE_TTL_MAX + 1ull), PZ_EINVAL);
    CHECK_EQ_INT(kv_lease_restore(kv, 1, 10), PZ_EINVAL); /* present */
    CHECK_EQ_INT(kv_lease_count(kv), 2);
    struct kv_lease l;
    CHECK(kv_lease_get(kv, KV_LEASE_ID_MAX, &l));
    CHECK(l.id == KV_LEASE_ID_MAX && l.ttl == 1 && l.nkeys == 0);
    CHECK(kv_lease_get(kv, 1, &l));
    CHECK(l.id == 1 && l.ttl == KV_LEASE_TTL_MAX && l.nkeys == 0);
    CHECK(kv_digest(kv) == kv_digest_compute(kv));
    /* a key restored on the largest id goes with its revoke */
    struct kv_meta m = {.create_revision = 1,
                        .mod_revision = 1,
                        .version = 1,
                        .lease = KV_LEASE_ID_MAX};
    CHECK_EQ_INT(kv_restore(kv, "k", 1, "v", 1, &m), 0);
    CHECK_EQ_INT(nkeys_of(kv, KV_LEASE_ID_MAX), 1);
    kv_set_revision(kv, 1);
    uint64_t deleted = 0;
    CHECK_EQ_INT(revoke(kv, KV_LEASE_ID_MAX, &deleted), KV_OK);
    CHECK_EQ_INT(deleted, 1);
    CHECK_EQ_INT(kv_count(kv), 0);
    CHECK_EQ_INT(kv_lease_count(kv), 1);
    kv_free(kv);
}

TEST(grant_put_revoke)
{
    struct kv *kv = kv_new();
    CHECK_EQ_INT(grant(kv, 7, 10), KV_OK);
    CHECK_EQ_INT(grant(kv, 7, 20), KV_ELEASE_EXISTS);
    struct kv_lease l;
    CHECK(kv_lease_get(kv, 7, &l) && l.ttl == 10 && l.nkeys == 0);
    CHECK(kv_revision(kv) == 0); /* a grant changes no key */
    uint64_t d0 = kv_digest(kv);
    CHECK(d0 != 0 && d0 == kv_digest_compute(kv));
    /* unknown lease: refused, nothing changes */
    CHECK_EQ_INT(put(kv, "a", "1", 8), KV_ELEASE_NOTFOUND);
    CHECK(kv_count(kv) == 0 && kv_revision(kv) == 0 && kv_digest(kv) == d0);
    CHECK_EQ_INT(put(kv, "a", "1", 7), KV_OK);
    CHECK_EQ_INT(put(kv, "b", "2", 7), KV_OK);
    CHECK_EQ_INT(put(kv, "c", "3", 0), KV_OK);
    CHECK(lease_of(kv, "a") == 7 && lease_of(kv, "c") == 0);
    CHECK(nkeys_of(kv, 7) == 2);
    /* overwrite with the same lease: same length (in place) and not */
    CHECK_EQ_INT(put(kv, "a", "x", 7), KV_OK);
    CHECK_EQ_INT(put(kv, "a", "xyz", 7), KV_OK);
    CHECK(nkeys_of(kv, 7) == 2);
    /* move b to another lease, a to none */
    CHECK_EQ_INT(grant(kv, 9, 5), KV_OK);
    CHECK_EQ_INT(put(kv, "b", "2", 9), KV_OK);
    CHECK(nkeys_of(kv, 7) == 1 && nkeys_of(kv, 9) == 1);
    kv_set(kv, "a", 1, "q", 1); /* a plain set detaches */
    CHECK(lease_of(kv, "a") == 0 && nkeys_of(kv, 7) == 0);
    CHECK_EQ_INT(put(kv, "a", "1", 7), KV_OK);
    CHECK(kv_del(kv, "a", 1) == 1 && nkeys_of(kv, 7) == 0);
    CHECK(kv_digest(kv) == kv_digest_compute(kv));
    /* revoke: attached keys go at one revision */
    CHECK_EQ_INT(put(kv, "d", "4", 9), KV_OK);
    CHECK_EQ_INT(put(kv, "e", "5", 9), KV_OK);
    uint64_t rev = kv_revision(kv), deleted = 0;
    CHECK_EQ_INT(revoke(kv, 9, &deleted), KV_OK);
    CHECK(deleted == 3 && kv_revision(kv) == rev + 1);
    CHECK(lease_of(kv, "b") == UINT64_MAX && lease_of(kv, "c") == 0);
    CHECK(!kv_lease_get(kv, 9, &l) && kv_lease_count(kv) == 1);
    CHECK_EQ_INT(revoke(kv, 9, NULL), KV_ELEASE_NOTFOUND);
    /* a lease without keys: the revision stays */
    rev = kv_revision(kv);
    CHECK_EQ_INT(revoke(kv, 7, &deleted), KV_OK);
    CHECK(deleted == 0 && kv_revision(kv) == rev && kv_lease_count(kv) == 0);
    CHECK(kv_digest(kv) == kv_digest_compute(kv));
    kv_free(kv);
}

static int count_del(void *arg, int type, const struct kv_view *cur,
                     const struct kv_view *prev)
{
    uint64_t *n = arg;
    if (type == KV_TOP_DEL && cur == NULL && prev && prev->meta.lease == 3)
        n[0]++;
    if (type == KV_TOP_PUT)
        n[1]++;
    return 0;
}

static void on_event(void *arg, int type, const struct kv_view *cur,
                     const struct kv_view *prev)
{
    count_del(arg, type, cur, prev);
}

static void on_lease(void *arg, bool granted, uint64_t id, uint64_t ttl)
{
    int64_t *s = arg;
    s[0] += granted ? (int64_t)id : -(int64_t)id;
    s[1] += (int64_t)ttl;
}

TEST(txn_leases_and_events)
{
    struct kv *kv = kv_new();
    uint64_t ev[2] = {0, 0};
    int64_t ls[2] = {0, 0};
    kv_set_event_cb(kv, on_event, ev);
    kv_set_lease_cb(kv, on_lease, ls);
    CHECK_EQ_INT(grant(kv, 3, 60), KV_OK);
    CHECK(ls[0] == 3 && ls[1] == 60);
    struct kv_op ops[2] = {
        {.type = KV_TOP_PUT,
         .key = (const uint8_t *)"x",
         .klen = 1,
         .value = (const uint8_t *)"1",
         .vlen = 1,
         .lease = 3},
        {.type = KV_TOP_PUT,
         .key = (const uint8_t *)"y",
         .klen = 1,
         .value = (const uint8_t *)"2",
         .vlen = 1,
         .lease = 4},
    };
    struct pz_buf b;
    pz_buf_init(&b);
    struct kv_result res;
    /* the second put names an unknown lease: the whole branch is refused */
    CHECK_EQ_INT(kv_encode_txn(&b, NULL, 0, ops, 2, NULL, 0), 0);
    CHECK_EQ_INT(apply_buf(kv, &b, &res), 0);
    CHECK(res.status == KV_ELEASE_NOTFOUND && !res.succeeded);
    CHECK(kv_count(kv) == 0 && kv_revision(kv) == 0 && ev[1] == 0);
    /* ... but only in the branch taken */
    struct kv_cmp cmp = {.target = KV_CMP_VERSION,
                         .result = KV_CMP_EQ,
                         .key = (const uint8_t *)"x",
                         .klen = 1,
                         .num = 5};
    CHECK_EQ_INT(kv_encode_txn(&b, &cmp, 1, &ops[1], 1, ops, 1), 0);
    CHECK_EQ_INT(apply_buf(kv, &b, &res), 0);
    CHECK(res.status == KV_OK && !res.succeeded && kv_count(kv) == 1);
    CHECK(lease_of(kv, "x") == 3 && nkeys_of(kv, 3) == 1);
    ops[1].lease = 3;
    CHECK_EQ_INT(kv_encode_txn(&b, NULL, 0, &ops[1], 1, NULL, 0), 0);
    CHECK_EQ_INT(apply_buf(kv, &b, &res), 0);
    CHECK(res.status == KV_OK && nkeys_of(kv, 3) == 2);
    /* revoke: one DEL event per key, one revision */
    uint64_t rev = kv_revision(kv);
    CHECK_EQ_INT(revoke(kv, 3, NULL), KV_OK);
    CHECK(ev[0] == 2 && kv_revision(kv) == rev + 1 && kv_count(kv) == 0);
    CHECK(ls[0] == 0);
    pz_buf_free(&b);
    kv_free(kv);
}

/* --- the order of a revoke's deletes -------------------------------------- */

#define RO_KEYS 263 /* keys on the revoked lease */

/* Key i of the revoked lease: "k" and i in decimal, unpadded (so "k10"
 * sorts before "k2"), and a few that only a bytewise compare of unsigned
 * bytes and lengths orders: a prefix of the others, a NUL inside, a byte
 * above 0x7f. Returns its length. */
static size_t ro_key(int i, char *k)
{
    switch (i) {
    case 0:
        k[0] = 'k';
        return 1;
    case 1:
        memcpy(k, "k\0", 2);
        return 2;
    case 2:
        memcpy(k, "k1\0z", 4);
        return 4;
    case 3:
        memcpy(k, "k\xff", 2);
        return 2;
    default:
        return (size_t)snprintf(k, 16, "k%d", i);
    }
}

/* The keys a table's events deleted, in the order reported. */
struct del_log {
    char key[RO_KEYS + 8][16];
    size_t len[RO_KEYS + 8];
    size_t n;
};

static void log_del(void *arg, int type, const struct kv_view *cur,
                    const struct kv_view *prev)
{
    struct del_log *d = arg;
    if (type != KV_TOP_DEL || cur != NULL || prev == NULL ||
        prev->klen > sizeof d->key[0] || d->n == RO_KEYS + 8)
        return;
    memcpy(d->key[d->n], prev->key, prev->klen);
    d->len[d->n++] = prev->klen;
}

/* Are the logged keys in strictly increasing bytewise order? */
static bool del_log_sorted(const struct del_log *d)
{
    for (size_t i = 1; i < d->n; i++) {
        size_t a = d->len[i - 1], b = d->len[i];
        int c = memcmp(d->key[i - 1], d->key[i], a < b ? a : b);
        if (c > 0 || (c == 0 && a >= b))
            return false;
    }
    return true;
}

static bool del_logs_equal(const struct del_log *x, const struct del_log *y)
{
    if (x->n != y->n)
        return false;
    for (size_t i = 0; i < x->n; i++)
        if (x->len[i] != y->len[i] ||
            memcmp(x->key[i], y->key[i], x->len[i]) != 0)
            return false;
    return true;
}

/* Every view of a table, borrowed (valid while it does not change). */
struct views {
    struct kv_view *v;
    size_t n;
};

static int collect_view(void *arg, const struct kv_view *v)
{
    struct views *a = arg;
    a->v[a->n++] = *v;
    return 0;
}

/* Revoke lease 5 of kv, logging the deletes into d. */
static int revoke_logged(struct kv *kv, struct del_log *d)
{
    d->n = 0;
    kv_set_event_cb(kv, log_del, d);
    uint64_t deleted = 0;
    int rc = revoke(kv, 5, &deleted);
    kv_set_event_cb(kv, NULL, NULL);
    return rc == KV_OK && deleted == d->n ? 0 : -1;
}

/* Up to max keys of a lease, as kv_lease_keys lists them, joined by ','. */
struct key_list {
    char s[256];
    size_t n, max;
};

static int list_key(void *arg, const struct kv_view *v)
{
    struct key_list *l = arg;
    if (l->max && l->n == l->max)
        return 1;
    size_t at = strlen(l->s);
    if (at + v->klen + 2 >= sizeof l->s)
        return -1;
    if (at)
        l->s[at++] = ',';
    memcpy(l->s + at, v->key, v->klen);
    l->s[at + v->klen] = '\0';
    l->n++;
    return 0;
}

static const char *lease_keys(struct kv *kv, uint64_t id, size_t max,
                              struct key_list *l)
{
    memset(l, 0, sizeof *l);
    l->max = max;
    int rc = kv_lease_keys(kv, id, list_key, l);
    return rc < 0 ? "(too long)" : l->s;
}

/* A lease's keys are listed in bytewise key order (LeaseTimeToLive's
 * keys, GET /lease?keys), whatever order they were attached in, after
 * later attaches and detaches, and on a table rebuilt as a snapshot load
 * does: every node answers alike, and a listing cut short (a size limit)
 * holds the same first keys everywhere. */
TEST(lease_keys_listed_in_key_order)
{
    struct kv *kv = kv_new();
    struct key_list l;
    CHECK_EQ_INT(grant(kv, 5, 60), KV_OK);
    CHECK_EQ_STR(lease_keys(kv, 5, 0, &l), "");
    static const char *const attach[] = {"q", "b\x80", "z",  "a",
                                         "b", "m",     "b1", "aa"};
    for (size_t i = 0; i < sizeof attach / sizeof attach[0]; i++)
        CHECK_EQ_INT(put(kv, attach[i], "v", 5), KV_OK);
    CHECK_EQ_STR(lease_keys(kv, 5, 0, &l), "a,aa,b,b1,b\x80,m,q,z");
    CHECK_EQ_STR(lease_keys(kv, 5, 3, &l), "a,aa,b"); /* cut short */
    CHECK_EQ_STR(lease_keys(kv, 5, 0, &l), "a,aa,b,b1,b\x80,m,q,z");
    /* attached later: a key before all, one after; detached: another
     * lease, none, a delete */
    CHECK_EQ_INT(grant(kv, 6, 60), KV_OK);
    CHECK_EQ_INT(put(kv, "0", "v", 5), KV_OK);
    CHECK_EQ_INT(put(kv, "zz", "v", 5), KV_OK);
    CHECK_EQ_INT(put(kv, "b", "v", 6), KV_OK);
    CHECK_EQ_INT(put(kv, "m", "v", 0), KV_OK);
    CHECK(kv_del(kv, "q", 1));
    CHECK_EQ_STR(lease_keys(kv, 5, 0, &l), "0,a,aa,b1,b\x80,z,zz");
    CHECK_EQ_INT(put(kv, "ab", "v", 5), KV_OK);
    CHECK_EQ_STR(lease_keys(kv, 5, 0, &l), "0,a,aa,ab,b1,b\x80,z,zz");
    CHECK_EQ_STR(lease_keys(kv, 6, 0, &l), "b");
    CHECK_EQ_STR(lease_keys(kv, 7, 0, &l), ""); /* no such lease */
    /* Rebuilt as a snapshot load does (key order), and reversed. */
    struct views all = {.v = pz_calloc(kv_count(kv), sizeof(struct kv_view))};
    CHECK_EQ_INT(kv_foreach_view(kv, collect_view, &all), 0);
    for (int r = 0; r < 2; r++) {
        struct kv *re = kv_new();
        CHECK_EQ_INT(kv_lease_restore(re, 5, 60), 0);
        CHECK_EQ_INT(kv_lease_restore(re, 6, 60), 0);
        for (size_t i = 0; i < all.n; i++) {
            const struct kv_view *v = &all.v[r ? all.n - 1 - i : i];
            CHECK_EQ_INT(
                kv_restore(re, v->key, v->klen, v->value, v->vlen, &v->meta),
                0);
        }
        CHECK_EQ_STR(lease_keys(re, 5, 4, &l), "0,a,aa,ab");
        CHECK_EQ_STR(lease_keys(re, 5, 0, &l), "0,a,aa,ab,b1,b\x80,z,zz");
        kv_free(re);
    }
    pz_free(all.v);
    kv_free(kv);
}

/* A revoke deletes its keys, and reports their events, in bytewise key
 * order: whatever order the keys were attached in (here scrambled, with
 * keys of another lease and without one around them), and the same on a
 * table rebuilt with kv_restore (a snapshot load: keys in key order, or
 * any other), so every node's watchers see one order, etcd's. */
TEST(revoke_deletes_in_key_order)
{
    struct kv *kv = kv_new();
    CHECK_EQ_INT(grant(kv, 5, 60), KV_OK);
    CHECK_EQ_INT(grant(kv, 6, 60), KV_OK);
    struct pz_buf b;
    pz_buf_init(&b);
    struct kv_result res;
    for (int j = 0; j < RO_KEYS; j++) {
        char k[16];
        int i = (j * 97 + 13) % RO_KEYS; /* a permutation: 97 and 263 prime */
        size_t kl = ro_key(i, k);
        CHECK_EQ_INT(kv_encode_set_lease(&b, k, kl, "v", 1, 5), 0);
        CHECK_EQ_INT(apply_buf(kv, &b, &res), 0);
        CHECK(res.status == KV_OK);
        if (j % 50 == 0) { /* neighbours that must stay */
            k[0] = 'j';
            CHECK_EQ_INT(put(kv, j % 100 ? "kz" : "k5x", "w", 6), KV_OK);
            kv_set(kv, k, kl, "w", 1);
        }
    }
    CHECK(nkeys_of(kv, 5) == RO_KEYS);
    struct del_log *d = pz_calloc(3, sizeof *d);
    struct kv *re[2] = {kv_new(), kv_new()};
    struct views all = {.v = pz_calloc(kv_count(kv), sizeof(struct kv_view))};
    CHECK_EQ_INT(kv_foreach_view(kv, collect_view, &all), 0);
    CHECK(all.n == kv_count(kv));
    /* The same table rebuilt as a snapshot load does (keys in key order),
     * and once more in the reverse order. */
    for (int r = 0; r < 2; r++) {
        CHECK_EQ_INT(kv_lease_restore(re[r], 5, 60), 0);
        CHECK_EQ_INT(kv_lease_restore(re[r], 6, 60), 0);
        for (size_t i = 0; i < all.n; i++) {
            const struct kv_view *v = &all.v[r ? all.n - 1 - i : i];
            CHECK_EQ_INT(
                kv_restore(re[r], v->key, v->klen, v->value, v->vlen, &v->meta),
                0);
        }
        kv_set_revision(re[r], kv_revision(kv));
        CHECK(kv_digest(re[r]) == kv_digest(kv));
    }
    pz_free(all.v);
    /* Attached in scrambled order: the deletes come out sorted; the
     * rebuilt tables give the same order. */
    size_t left = kv_count(kv) - RO_KEYS;
    CHECK_EQ_INT(revoke_logged(kv, &d[0]), 0);
    CHECK(d[0].n == RO_KEYS && kv_count(kv) == left);
    CHECK(del_log_sorted(&d[0]));
    for (int r = 0; r < 2; r++) {
        CHECK_EQ_INT(revoke_logged(re[r], &d[1 + r]), 0);
        CHECK(del_logs_equal(&d[0], &d[1 + r]));
        CHECK(kv_digest(re[r]) == kv_digest(kv));
    }
    pz_free(d);
    pz_buf_free(&b);
    kv_free(re[0]);
    kv_free(re[1]);
    kv_free(kv);
}

/* --- a random comparison against a plain model ---------------------------- */

#define M_KEYS 24
#define M_LEASES 6

struct model {
    bool present[M_KEYS];
    uint64_t lease[M_KEYS];
    bool granted[M_LEASES + 1];
    uint64_t ttl[M_LEASES + 1];
    uint64_t rev;
};

static bool model_matches(struct kv *kv, const struct model *m)
{
    size_t n = 0;
    for (int i = 0; i < M_KEYS; i++) {
        char k[8];
        snprintf(k, sizeof k, "k%02d", i);
        uint64_t l = lease_of(kv, k);
        if (m->present[i] != (l != UINT64_MAX))
            return false;
        if (m->present[i] && l != m->lease[i])
            return false;
        n += m->present[i];
    }
    if (n != kv_count(kv) || kv_revision(kv) != m->rev)
        return false;
    size_t nl = 0;
    for (uint64_t id = 1; id <= M_LEASES; id++) {
        struct kv_lease l;
        bool has = kv_lease_get(kv, id, &l);
        if (has != m->granted[id])
            return false;
        if (!has)
            continue;
        nl++;
        size_t att = 0;
        for (int i = 0; i < M_KEYS; i++)
            att += m->present[i] && m->lease[i] == id;
        if (l.ttl != m->ttl[id] || l.nkeys != att)
            return false;
    }
    return nl == kv_lease_count(kv) &&
           kv_digest(kv) == kv_digest_compute(kv);
}

TEST(random_vs_model)
{
    uint64_t seed = 0x1ea5e;
    struct kv *kv = kv_new();
    struct kv *twin = kv_new_seeded(99); /* the same commands elsewhere */
    struct model m = {0};
    struct pz_buf b;
    pz_buf_init(&b);
    for (int iter = 0; iter < 40000; iter++) {
        uint64_t r = pz_rand_next(&seed);
        int k = (int)(r % M_KEYS);
        uint64_t id = (r >> 8) % (M_LEASES + 1); /* 0: no lease */
        char key[8];
        snprintf(key, sizeof key, "k%02d", k);
        int what = (int)((r >> 16) % 10);
        if (what < 4) { /* put, plain or with a lease */
            bool txn = (r >> 24) & 1;
            if (txn) {
                struct kv_op o = {.type = KV_TOP_PUT,
                                  .key = (const uint8_t *)key,
                                  .klen = 3,
                                  .value = (const uint8_t *)"v",
                                  .vlen = 1 + (r >> 25) % 2,
                                  .lease = id};
                CHECK_EQ_INT(kv_encode_txn(&b, NULL, 0, &o, 1, NULL, 0), 0);
            } else {
                CHECK_EQ_INT(kv_encode_set_lease(&b, key, 3, "vv",
                                                 1 + (r >> 25) % 2, id),
                             0);
            }
            if (id == 0 || m.granted[id]) {
                m.present[k] = true;
                m.lease[k] = id;
                m.rev++;
            }
        } else if (what < 6) {
            CHECK_EQ_INT(kv_encode_del(&b, key, 3), 0);
            if (m.present[k]) {
                m.present[k] = false;
                m.rev++;
            }
        } else if (what < 8) {
            if (id == 0)
                id = 1;
            uint64_t ttl = 1 + (r >> 32) % 100;
            CHECK_EQ_INT(kv_encode_lease_grant(&b, id, ttl), 0);
            if (!m.granted[id]) {
                m.granted[id] = true;
                m.ttl[id] = ttl;
            }
        } else {
            if (id == 0)
                id = 1;
            CHECK_EQ_INT(kv_encode_lease_revoke(&b, id), 0);
            if (m.granted[id]) {
                bool any = false;
                for (int i = 0; i < M_KEYS; i++)
                    if (m.present[i] && m.lease[i] == id) {
                        m.present[i] = false;
                        any = true;
                    }
                m.rev += any;
                m.granted[id] = false;
            }
        }
        CHECK_EQ_INT(kv_apply(twin, (uint8_t *)b.data, b.len, NULL), 0);
        CHECK_EQ_INT(apply_buf(kv, &b, NULL), 0);
        if (iter % 97 == 0 || iter > 39900) {
            if (!model_matches(kv, &m))
                fprintf(stderr, "    seed 0x1ea5e, iteration %d\n", iter);
            CHECK(model_matches(kv, &m));
            CHECK(kv_digest(twin) == kv_digest(kv));
        }
    }
    pz_buf_free(&b);
    kv_free(twin);
    kv_free(kv);
}

/* --- the leader's deadlines ---------------------------------------------- */

TEST(tracker_deadlines)
{
    struct lease_tracker t;
    lease_tracker_init(&t);
    uint64_t ids[8], ms;
    lease_track(&t, 5, 10, 1000); /* applied at 1000: deadline 11000 */
    lease_track(&t, 2, 1, 1000);
    CHECK(lease_expired(&t, 1999, ids, 8) == 0);
    CHECK(lease_expired(&t, 2000, ids, 8) == 1 && ids[0] == 2);
    /* reported once while its revoke is pending */
    CHECK(lease_expired(&t, 2500, ids, 8) == 0);
    lease_retry(&t, 2);
    CHECK(lease_expired(&t, 2600, ids, 8) == 1 && ids[0] == 2);
    CHECK(lease_expired(&t, 2600 + LEASE_RETRY_MS, ids, 8) == 1);
    lease_untrack(&t, 2);
    CHECK(lease_remaining(&t, 5, 6000, &ms) && ms == 5000);
    CHECK(lease_keepalive(&t, 5, 6000) == LEASE_KA_RENEWED); /* to 16000 */
    CHECK(lease_expired(&t, 15999, ids, 8) == 0);
    CHECK(lease_keepalive(&t, 6, 6000) == LEASE_KA_UNTRACKED);
    CHECK(!lease_remaining(&t, 6, 6000, &ms));
    /* a new leader: full TTL from now, never earlier */
    lease_reset_all(&t, 15000);
    CHECK(lease_expired(&t, 24999, ids, 8) == 0);
    CHECK(lease_expired(&t, 25000, ids, 8) == 1 && ids[0] == 5);
    CHECK(lease_remaining(&t, 5, 26000, &ms) && ms == 0);
    /* max bounds what one call reports */
    for (uint64_t i = 10; i < 30; i++)
        lease_track(&t, i, 1, 0);
    CHECK(lease_expired(&t, 1000, ids, 8) == 8);
    CHECK(lease_expired(&t, 1000, ids, 8) == 8);
    CHECK(lease_expired(&t, 1000, ids, 8) == 4);
    lease_tracker_free(&t);
}

/* A keep-alive once the deadline passed renews nothing: the revoke the
 * leader proposed (or is about to) applies whatever the client is told,
 * so a renewal would promise a TTL that is not kept. */
TEST(tracker_keepalive_after_expiry)
{
    struct lease_tracker t;
    lease_tracker_init(&t);
    uint64_t ids[8], ms;
    lease_track(&t, 7, 1, 1000);                             /* deadline 2000 */
    CHECK(lease_keepalive(&t, 7, 1999) == LEASE_KA_RENEWED); /* 2999 */
    /* expired, the scan has not run yet */
    CHECK(lease_keepalive(&t, 7, 2999) == LEASE_KA_EXPIRED);
    CHECK(lease_expired(&t, 3000, ids, 8) == 1 && ids[0] == 7);
    /* its revoke is in flight */
    CHECK(lease_keepalive(&t, 7, 3001) == LEASE_KA_EXPIRED);
    CHECK(lease_remaining(&t, 7, 3001, &ms) && ms == 0);
    /* the proposal failed: it is still due, proposed again */
    lease_retry(&t, 7);
    CHECK(lease_keepalive(&t, 7, 3002) == LEASE_KA_EXPIRED);
    CHECK(lease_expired(&t, 3100, ids, 8) == 1 && ids[0] == 7);
    /* a new leader gives it its whole TTL again: renewable */
    lease_reset_all(&t, 4000);
    CHECK(lease_keepalive(&t, 7, 4500) == LEASE_KA_RENEWED); /* 5500 */
    CHECK(lease_expired(&t, 5499, ids, 8) == 0);
    lease_tracker_free(&t);
}

/* Random grants, keep-alives and leader changes with a clock: the tracker
 * never reports a lease before its last grant/keep-alive/leadership + ttl
 * (the rule the leader follows), and reports every one after. */
TEST(tracker_never_early)
{
    struct lease_tracker t;
    lease_tracker_init(&t);
    uint64_t seed = 77, now = 1;
    uint64_t base[16] = {0}, ttl[16] = {0};
    bool live[16] = {false};
    uint64_t ids[16];
    for (int iter = 0; iter < 20000; iter++) {
        uint64_t r = pz_rand_next(&seed);
        now += r % 700;
        uint64_t id = 1 + (r >> 12) % 15;
        switch ((r >> 20) % 6) {
        case 0:
            ttl[id] = 1 + (r >> 30) % 5;
            lease_track(&t, id, ttl[id], now);
            base[id] = now;
            live[id] = true;
            break;
        case 1:
            if (lease_keepalive(&t, id, now) == LEASE_KA_RENEWED) {
                CHECK(live[id]);
                if (now > base[id])
                    base[id] = now;
            }
            break;
        case 2:
            if ((r >> 40) % 8 == 0) { /* a leader change */
                lease_reset_all(&t, now);
                for (int i = 0; i < 16; i++)
                    base[i] = now;
            }
            break;
        default: {
            size_t n = lease_expired(&t, now, ids, 16);
            for (size_t i = 0; i < n; i++) {
                CHECK(live[ids[i]]);
                CHECK(now >= base[ids[i]] + ttl[ids[i]] * 1000);
                lease_untrack(&t, ids[i]); /* the revoke applied */
                live[ids[i]] = false;
            }
            for (int i = 1; i < 16; i++)
                if (live[i])
                    CHECK(now < base[i] + ttl[i] * 1000);
        }
        }
    }
    lease_tracker_free(&t);
}

/* Untracking an id that is not tracked changes nothing, whether the
 * tracker is empty or the id sorts after every tracked one. */
TEST(tracker_untrack_unknown)
{
    struct lease_tracker t;
    lease_tracker_init(&t);
    uint64_t ms;
    lease_untrack(&t, 3); /* empty */
    CHECK_EQ_INT(t.n, 0);
    lease_track(&t, 2, 1, 0);
    lease_track(&t, 4, 1, 0);
    lease_untrack(&t, 9); /* after every id */
    lease_untrack(&t, 3); /* between two */
    lease_untrack(&t, 1); /* before every id */
    CHECK_EQ_INT(t.n, 2);
    CHECK(lease_remaining(&t, 2, 0, &ms) && ms == 1000);
    CHECK(lease_remaining(&t, 4, 0, &ms) && ms == 1000);
    lease_untrack(&t, 4);
    lease_untrack(&t, 4);
    CHECK_EQ_INT(t.n, 1);
    lease_tracker_free(&t);
}

/* The milliseconds left count down to the deadline one by one: 1 just
 * before it, 0 at it and after. */
TEST(tracker_remaining_to_the_millisecond)
{
    struct lease_tracker t;
    lease_tracker_init(&t);
    uint64_t ms = 99;
    lease_track(&t, 1, 2, 500); /* deadline 2500 */
    CHECK(lease_remaining(&t, 1, 500, &ms) && ms == 2000);
    CHECK(lease_remaining(&t, 1, 2499, &ms) && ms == 1);
    CHECK(lease_remaining(&t, 1, 2500, &ms) && ms == 0);
    CHECK(lease_remaining(&t, 1, 9000, &ms) && ms == 0);
    lease_tracker_free(&t);
}

/* A lease found expired at time 0 (a clock that starts there) is marked
 * pending all the same: not reported again at the next scan. */
TEST(tracker_expired_at_time_zero_reported_once)
{
    struct lease_tracker t;
    lease_tracker_init(&t);
    uint64_t ids[4];
    lease_track(&t, 8, 0, 0); /* deadline 0 */
    CHECK(lease_expired(&t, 0, ids, 4) == 1 && ids[0] == 8);
    CHECK(lease_keepalive(&t, 8, 0) == LEASE_KA_EXPIRED);
    CHECK(lease_expired(&t, 0, ids, 4) == 0);
    CHECK(lease_expired(&t, LEASE_RETRY_MS - 1, ids, 4) == 0);
    lease_tracker_free(&t);
}

/* --- a small cluster over one log ----------------------------------------
 * Three nodes, each with its own table and deadline tracker, apply one
 * committed log at their own pace; their clocks have different offsets.
 * The leader changes at random (the new one resets every deadline to its
 * full TTL, as node_lease.c does), nodes restart (their table rebuilt
 * from the log, the tracker resynced), clients grant, attach keys, keep
 * leases alive through the leader (after it applied the whole log, as a
 * ReadIndex round makes it), and the leader proposes REVOKE for what its
 * tracker says expired. Checked: no expiry is decided before the grant's
 * commit + TTL or the last acknowledged keep-alive + TTL (global time),
 * nodes that applied the same log have equal digests, and once
 * keep-alives stop every lease is revoked. */

#define SIM_NODES 3
#define SIM_LOG 6000
#define SIM_IDS 400

struct snode {
    struct kv *kv;
    struct lease_tracker t;
    size_t applied; /* log entries applied */
    uint64_t off;   /* local clock = global + off */
    uint64_t now;   /* local time of the apply in progress */
};

struct sim {
    struct snode n[SIM_NODES];
    struct pz_buf log[SIM_LOG];
    size_t nlog;
    uint64_t T; /* global time, ms */
    int leader;
    uint64_t promised[SIM_IDS]; /* no expiry decided before this (T) */
    uint64_t ttl[SIM_IDS];
    uint64_t next_id;
    uint64_t rng;
};

static void sim_on_lease(void *arg, bool granted, uint64_t id, uint64_t ttl)
{
    struct snode *n = arg;
    if (granted)
        lease_track(&n->t, id, ttl, n->now);
    else
        lease_untrack(&n->t, id);
}

static void sim_resync(struct snode *n, uint64_t now)
{
    lease_tracker_clear(&n->t);
    kv_set_lease_cb(n->kv, sim_on_lease, n);
    for (size_t i = 0; i < kv_lease_count(n->kv); i++) {
        struct kv_lease l;
        kv_lease_at(n->kv, i, &l);
        lease_track(&n->t, l.id, l.ttl, now);
    }
}

static void sim_apply(struct sim *s, int i, size_t upto)
{
    struct snode *n = &s->n[i];
    n->now = s->T + n->off;
    while (n->applied < upto) {
        struct pz_buf *e = &s->log[n->applied++];
        struct kv_result res;
        pz_assert(kv_apply(n->kv, (uint8_t *)e->data, e->len, &res) == 0);
    }
}

static bool sim_append(struct sim *s, int (*enc)(struct pz_buf *, uint64_t,
                                                  uint64_t),
                       uint64_t a, uint64_t b)
{
    if (s->nlog == SIM_LOG)
        return false;
    pz_buf_init(&s->log[s->nlog]);
    pz_assert(enc(&s->log[s->nlog], a, b) == 0);
    s->nlog++;
    return true;
}

static int enc_grant(struct pz_buf *b, uint64_t id, uint64_t ttl)
{
    return kv_encode_lease_grant(b, id, ttl);
}

static int enc_revoke(struct pz_buf *b, uint64_t id, uint64_t unused)
{
    (void)unused;
    return kv_encode_lease_revoke(b, id);
}

static int enc_set(struct pz_buf *b, uint64_t key, uint64_t lease)
{
    char k[8];
    snprintf(k, sizeof k, "k%02u", (unsigned)key);
    return kv_encode_set_lease(b, k, 3, "v", 1, lease);
}

/* The leader's expiry scan; false if an expiry came early. */
static bool sim_expire(struct sim *s)
{
    struct snode *L = &s->n[s->leader];
    uint64_t ids[16];
    size_t n = lease_expired(&L->t, s->T + L->off, ids, 16);
    for (size_t i = 0; i < n; i++) {
        if (s->T < s->promised[ids[i]]) {
            fprintf(stderr, "    lease %llu expired at %llu, promised %llu\n",
                    (unsigned long long)ids[i], (unsigned long long)s->T,
                    (unsigned long long)s->promised[ids[i]]);
            return false;
        }
        sim_append(s, enc_revoke, ids[i], 0);
    }
    return true;
}

TEST(cluster_sim)
{
    for (uint64_t seed = 1; seed <= 20; seed++) {
        struct sim *s = pz_calloc(1, sizeof *s);
        s->rng = seed;
        s->T = 1000;
        s->next_id = 1;
        for (int i = 0; i < SIM_NODES; i++) {
            s->n[i].kv = kv_new_seeded(seed + (uint64_t)i);
            s->n[i].off = pz_rand_next(&s->rng) % 1000000;
            lease_tracker_init(&s->n[i].t);
            sim_resync(&s->n[i], s->T + s->n[i].off);
        }
        bool ok = true;
        for (int step = 0; step < 4000 && ok && s->nlog < SIM_LOG - 20;
             step++) {
            uint64_t r = pz_rand_next(&s->rng);
            s->T += r % 300;
            struct snode *L = &s->n[s->leader];
            int what = (int)((r >> 16) % 16);
            uint64_t id = 1 + (r >> 24) % (s->next_id ? s->next_id : 1);
            if (what < 2 && s->next_id < SIM_IDS) { /* grant */
                id = s->next_id++;
                s->ttl[id] = 1 + (r >> 40) % 4;
                s->promised[id] = s->T + s->ttl[id] * 1000;
                sim_append(s, enc_grant, id, s->ttl[id]);
            } else if (what < 4) { /* a put, with a lease or not */
                sim_append(s, enc_set, (r >> 32) % 20,
                           (r >> 45) % 3 ? (id < s->next_id ? id : 0) : 0);
            } else if (what < 8) { /* keep-alive, on the leader */
                sim_apply(s, s->leader, s->nlog);
                struct kv_lease l;
                enum lease_ka ka = LEASE_KA_EXPIRED;
                if (id < s->next_id && kv_lease_get(L->kv, id, &l))
                    ka = lease_keepalive(&L->t, id, s->T + L->off);
                if (ka != LEASE_KA_EXPIRED) { /* as node_lease.c */
                    if (ka == LEASE_KA_UNTRACKED)
                        lease_track(&L->t, id, l.ttl, s->T + L->off);
                    uint64_t p = s->T + l.ttl * 1000;
                    if (p > s->promised[id])
                        s->promised[id] = p;
                }
            } else if (what < 12) { /* a node applies some */
                int i = (int)((r >> 32) % SIM_NODES);
                size_t k = s->n[i].applied + (r >> 40) % 6;
                sim_apply(s, i, k < s->nlog ? k : s->nlog);
            } else if (what == 12) { /* a new leader */
                s->leader = (s->leader + 1 + (int)((r >> 32) % 2)) %
                            SIM_NODES;
                L = &s->n[s->leader];
                lease_reset_all(&L->t, s->T + L->off);
            } else if (what == 13) { /* a node restarts */
                int i = (int)((r >> 32) % SIM_NODES);
                struct snode *n = &s->n[i];
                size_t upto = n->applied;
                kv_free(n->kv);
                n->kv = kv_new_seeded(seed * 7 + (uint64_t)step);
                n->applied = 0;
                kv_set_lease_cb(n->kv, NULL, NULL);
                sim_apply(s, i, upto);
                sim_resync(n, s->T + n->off);
                if (i == s->leader) { /* it comes back a follower */
                    s->leader = (i + 1) % SIM_NODES;
                    L = &s->n[s->leader];
                    lease_reset_all(&L->t, s->T + L->off);
                }
            } else {
                ok = sim_expire(s);
            }
        }
        if (!ok)
            fprintf(stderr, "    seed %llu\n", (unsigned long long)seed);
        CHECK(ok);
        /* Keep-alives stop: the leader expires every lease. */
        for (int round = 0; round < 100; round++) {
            s->T += 200;
            sim_apply(s, s->leader, s->nlog);
            CHECK(sim_expire(s));
        }
        for (int i = 0; i < SIM_NODES; i++)
            sim_apply(s, i, s->nlog);
        for (int i = 0; i < SIM_NODES; i++) {
            CHECK(kv_digest(s->n[i].kv) == kv_digest(s->n[0].kv));
            CHECK(kv_digest(s->n[i].kv) == kv_digest_compute(s->n[i].kv));
            CHECK(kv_revision(s->n[i].kv) == kv_revision(s->n[0].kv));
            CHECK_EQ_INT(kv_lease_count(s->n[i].kv), 0);
        }
        CHECK(s->next_id > 20 && kv_revision(s->n[0].kv) > 50);
        for (int i = 0; i < SIM_NODES; i++) {
            kv_free(s->n[i].kv);
            lease_tracker_free(&s->n[i].t);
        }
        for (size_t i = 0; i < s->nlog; i++)
            pz_buf_free(&s->log[i]);
        pz_free(s);
    }
}

static const struct test_case cases[] = {
    TEST_ENTRY(codec),
    TEST_ENTRY(restore_limits),
    TEST_ENTRY(grant_put_revoke),
    TEST_ENTRY(txn_leases_and_events),
    TEST_ENTRY(revoke_deletes_in_key_order),
    TEST_ENTRY(lease_keys_listed_in_key_order),
    TEST_ENTRY(random_vs_model),
    TEST_ENTRY(tracker_deadlines),
    TEST_ENTRY(tracker_keepalive_after_expiry),
    TEST_ENTRY(tracker_never_early),
    TEST_ENTRY(tracker_untrack_unknown),
    TEST_ENTRY(tracker_remaining_to_the_millisecond),
    TEST_ENTRY(tracker_expired_at_time_zero_reported_once),
    TEST_ENTRY(cluster_sim),
    TEST_END};
const struct test_suite suite_lease = {"lease", cases};
