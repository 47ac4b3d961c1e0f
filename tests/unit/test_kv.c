/* test_kv.c - the key-value state machine: table operations, incremental
 * rehashing, iteration and scanning during rehashes, the command codec and
 * its rejection of malformed input, digests, and a seeded randomized
 * comparison against a plain array model. */
#include <stdlib.h>
#include <time.h>

#include "kv.h"
#include "pz.h"
#include "test.h"

/* Look key up as a C string; NULL when absent. */
static const char *get_str(struct kv *kv, const char *key)
{
    const uint8_t *v;
    size_t vl;
    if (!kv_get(kv, key, strlen(key), &v, &vl))
        return NULL;
    return (const char *)v;
}

static bool has_value(struct kv *kv, const void *k, size_t kl, const void *v,
                      size_t vl)
{
    const uint8_t *got;
    size_t gotl;
    if (!kv_get(kv, k, kl, &got, &gotl))
        return false;
    return gotl == vl && (vl == 0 || memcmp(got, v, vl) == 0);
}

/* What quota-backend-bytes counts: key and value bytes and, per key,
 * KV_KEY_OVERHEAD, at least what a key's entry takes in the table
 * (kv_heap_estimate) and its bucket slot at the fullest load: empty
 * values cost the quota what they cost in memory. */
TEST(quota_bytes_count_keys)
{
    CHECK(KV_KEY_OVERHEAD >=
          kv_heap_estimate(1000, 0) / 1000 + 2 * sizeof(void *));
    struct kv *kv = kv_new();
    char k[16];
    for (int i = 0; i < 1000; i++) {
        snprintf(k, sizeof k, "%03d", i);
        CHECK_EQ_INT(kv_set(kv, k, 3, "", 0), 0);
    }
    CHECK_EQ_INT(kv_bytes(kv), 3000);
    CHECK_EQ_INT(kv_quota_bytes(kv), 1000 * (3 + KV_KEY_OVERHEAD));
    CHECK_EQ_INT(kv_set(kv, "000", 3, "abcd", 4), 1); /* replaced */
    CHECK_EQ_INT(kv_quota_bytes(kv), 1000 * (3 + KV_KEY_OVERHEAD) + 4);
    kv_free(kv);
}

TEST(basic_ops)
{
    struct kv *kv = kv_new();
    CHECK_EQ_INT(kv_count(kv), 0);
    CHECK(get_str(kv, "a") == NULL);
    CHECK_EQ_INT(kv_set(kv, "a", 1, "one", 3), 0);
    CHECK_EQ_INT(kv_set(kv, "bb", 2, "two", 3), 0);
    CHECK_EQ_INT(kv_count(kv), 2);
    CHECK_EQ_INT(kv_bytes(kv), 1 + 3 + 2 + 3);
    CHECK_EQ_STR(get_str(kv, "a"), "one");
    CHECK_EQ_STR(get_str(kv, "bb"), "two");
    CHECK(get_str(kv, "b") == NULL);
    CHECK_EQ_INT(kv_del(kv, "a", 1), 1);
    CHECK(get_str(kv, "a") == NULL);
    CHECK_EQ_INT(kv_count(kv), 1);
    CHECK_EQ_INT(kv_bytes(kv), 5);
    CHECK_EQ_INT(kv_quota_bytes(kv), 5 + KV_KEY_OVERHEAD);
    CHECK_EQ_INT(kv_del(kv, "bb", 2), 1);
    CHECK_EQ_INT(kv_count(kv), 0);
    CHECK_EQ_INT(kv_bytes(kv), 0);
    CHECK_EQ_INT(kv_quota_bytes(kv), 0);
    /* Empty again, but at revision 4: the digest says so. */
    CHECK_EQ_INT(kv_revision(kv), 4);
    CHECK(kv_digest(kv) != 0);
    CHECK(kv_digest(kv) == kv_digest_compute(kv));
    kv_free(kv);
    kv_free(NULL);
    kv = kv_new();
    CHECK(kv_digest(kv) == 0);
    CHECK_EQ_INT(kv_revision(kv), 0);
    kv_free(kv);
}

TEST(binary_keys_values)
{
    struct kv *kv = kv_new();
    static const uint8_t k1[] = {'a', 0, 'b'}, k2[] = {'a', 0, 'c'};
    static const uint8_t v1[] = {0, 0, 0}, v2[] = {1, 0, 2, 0};
    CHECK_EQ_INT(kv_set(kv, k1, 3, v1, 3), 0);
    CHECK_EQ_INT(kv_set(kv, k2, 3, v2, 4), 0);
    CHECK_EQ_INT(kv_set(kv, "a", 1, "plain", 5), 0);
    CHECK_EQ_INT(kv_set(kv, "", 0, "empty key", 9), 0);
    CHECK_EQ_INT(kv_set(kv, "ev", 2, "", 0), 0);
    CHECK_EQ_INT(kv_count(kv), 5);
    CHECK(has_value(kv, k1, 3, v1, 3));
    CHECK(has_value(kv, k2, 3, v2, 4));
    CHECK(has_value(kv, "a", 1, "plain", 5));
    CHECK(has_value(kv, "", 0, "empty key", 9));
    CHECK(has_value(kv, "ev", 2, "", 0));
    CHECK(!has_value(kv, k1, 2, "", 0)); /* "a\0" is not a key */
    /* The borrowed value is NUL-terminated past its length. */
    const uint8_t *v;
    size_t vl;
    CHECK(kv_get(kv, "a", 1, &v, &vl));
    CHECK_EQ_INT(v[vl], 0);
    CHECK_EQ_INT(kv_del(kv, k1, 3), 1);
    CHECK(!has_value(kv, k1, 3, v1, 3));
    CHECK(has_value(kv, k2, 3, v2, 4));
    CHECK_EQ_INT(kv_del(kv, "", 0), 1);
    CHECK_EQ_INT(kv_count(kv), 3);
    kv_free(kv);
}

TEST(overwrite)
{
    struct kv *kv = kv_new();
    CHECK_EQ_INT(kv_set(kv, "k", 1, "aaa", 3), 0);
    uint64_t d_aaa = kv_digest(kv);
    CHECK_EQ_INT(kv_set(kv, "k", 1, "bbb", 3), 1); /* same size */
    CHECK_EQ_STR(get_str(kv, "k"), "bbb");
    CHECK_EQ_INT(kv_set(kv, "k", 1, "longer value", 12), 1);
    CHECK_EQ_STR(get_str(kv, "k"), "longer value");
    CHECK_EQ_INT(kv_set(kv, "k", 1, "s", 1), 1);
    CHECK_EQ_STR(get_str(kv, "k"), "s");
    CHECK_EQ_INT(kv_count(kv), 1);
    CHECK_EQ_INT(kv_bytes(kv), 2);
    CHECK(kv_digest(kv) != d_aaa);
    /* The same value again is a new version at a new revision. */
    CHECK_EQ_INT(kv_set(kv, "k", 1, "aaa", 3), 1);
    CHECK(kv_digest(kv) != d_aaa);
    CHECK(kv_digest(kv) == kv_digest_compute(kv));
    struct kv_view v;
    CHECK(kv_get_view(kv, "k", 1, &v));
    CHECK(v.meta.create_revision == 1 && v.meta.mod_revision == 5 &&
          v.meta.version == 5 && v.meta.lease == 0);
    kv_free(kv);
}

TEST(value_aliases_table)
{
    struct kv *kv = kv_new();
    CHECK_EQ_INT(kv_set(kv, "a", 1, "0123456789", 10), 0);
    const uint8_t *v;
    size_t vl;
    /* Overwrite a with a suffix of its own value (size changes). */
    CHECK(kv_get(kv, "a", 1, &v, &vl));
    CHECK_EQ_INT(kv_set(kv, "a", 1, v + 3, vl - 3), 1);
    CHECK_EQ_STR(get_str(kv, "a"), "3456789");
    /* Same size, overlapping. */
    CHECK(kv_get(kv, "a", 1, &v, &vl));
    CHECK_EQ_INT(kv_set(kv, "a", 1, v, vl), 1);
    CHECK_EQ_STR(get_str(kv, "a"), "3456789");
    /* Another key from a's value, and a key taken from a's value. */
    CHECK(kv_get(kv, "a", 1, &v, &vl));
    CHECK_EQ_INT(kv_set(kv, "b", 1, v, vl), 0);
    CHECK(kv_get(kv, "a", 1, &v, &vl));
    CHECK_EQ_INT(kv_set(kv, v, 2, "x", 1), 0);
    CHECK_EQ_STR(get_str(kv, "34"), "x");
    CHECK_EQ_STR(get_str(kv, "b"), "3456789");
    CHECK(kv_digest(kv) == kv_digest_compute(kv));
    kv_free(kv);
}

TEST(delete_missing)
{
    struct kv *kv = kv_new();
    CHECK_EQ_INT(kv_del(kv, "nope", 4), 0); /* on a table never used */
    CHECK_EQ_INT(kv_set(kv, "x", 1, "1", 1), 0);
    CHECK_EQ_INT(kv_del(kv, "nope", 4), 0);
    CHECK_EQ_INT(kv_del(kv, "x", 1), 1);
    CHECK_EQ_INT(kv_del(kv, "x", 1), 0);
    CHECK_EQ_INT(kv_count(kv), 0);
    kv_free(kv);
}

TEST(too_big)
{
    struct kv *kv = kv_new();
    static const char small[8] = "k";
    /* Lengths are checked before anything is read. */
    CHECK_EQ_INT(kv_set(kv, small, KV_KEY_MAX + 1, "v", 1), PZ_ETOOBIG);
    CHECK_EQ_INT(kv_set(kv, "k", 1, small, KV_VALUE_MAX + 1), PZ_ETOOBIG);
    CHECK_EQ_INT(kv_del(kv, small, KV_KEY_MAX + 1), 0);
    CHECK_EQ_INT(kv_count(kv), 0);
    struct pz_buf b;
    pz_buf_init(&b);
    CHECK_EQ_INT(kv_encode_set(&b, small, KV_KEY_MAX + 1, "v", 1), PZ_ETOOBIG);
    CHECK_EQ_INT(kv_encode_set(&b, "k", 1, small, KV_VALUE_MAX + 1),
                 PZ_ETOOBIG);
    CHECK_EQ_INT(kv_encode_del(&b, small, KV_KEY_MAX + 1), PZ_ETOOBIG);
    /* with a lease too (a version-3 SET) */
    CHECK_EQ_INT(kv_encode_set_lease(&b, small, KV_KEY_MAX + 1, "v", 1, 5),
                 PZ_ETOOBIG);
    CHECK_EQ_INT(kv_encode_set_lease(&b, "k", 1, small, KV_VALUE_MAX + 1, 5),
                 PZ_ETOOBIG);
    CHECK_EQ_INT(b.len, 0);
    /* The largest key is accepted. */
    char *big = pz_calloc(1, KV_KEY_MAX);
    CHECK_EQ_INT(kv_set(kv, big, KV_KEY_MAX, "v", 1), 0);
    CHECK(has_value(kv, big, KV_KEY_MAX, "v", 1));
    pz_free(big);
    kv_free(kv);
}

/* --- growth, shrink, incremental rehashing ------------------------------ */

#define BIG_N 1000000

static size_t key_of(char *buf, size_t i)
{
    return (size_t)sprintf(buf, "key:%zu", i);
}

static size_t val_of(char *buf, size_t i)
{
    return (size_t)sprintf(buf, "v%zu-%zu", i * 7919, i % 13);
}

/* Track how long each rehash lasts, in operations, and the per-op bound. */
struct rehash_watch {
    uint64_t streak;     /* consecutive ops that ended with a rehash on */
    uint64_t max_streak; /* longest such run */
    uint64_t ops;        /* operations watched */
};

static void watch(struct kv *kv, struct rehash_watch *w)
{
    struct kv_stats st;
    kv_stats(kv, &st);
    w->ops++;
    if (st.rehashing) {
        w->streak++;
        if (w->streak > w->max_streak)
            w->max_streak = w->streak;
    } else {
        w->streak = 0;
    }
}

TEST(grow_to_1m_and_shrink)
{
    struct kv *kv = kv_new();
    char k[32], v[48];
    struct rehash_watch w = {0};
    size_t bytes = 0;
    for (size_t i = 0; i < BIG_N; i++) {
        size_t kl = key_of(k, i), vl = val_of(v, i);
        CHECK_EQ_INT(kv_set(kv, k, kl, v, vl), 0);
        bytes += kl + vl;
        watch(kv, &w);
    }
    struct kv_stats st;
    kv_stats(kv, &st);
    CHECK_EQ_INT(st.keys, BIG_N);
    CHECK_EQ_INT(st.bytes, bytes);
    CHECK_EQ_INT(st.grows, 18); /* 4 buckets doubled to 2^20 */
    CHECK_EQ_INT(st.shrinks, 0);
    CHECK_EQ_INT(st.buckets[0] + st.buckets[1], (size_t)1 << 20);
    /* Incremental: the last grow (2^19 -> 2^20 buckets) spread over at
     * least 2^19 / KV_REHASH_EMPTY_VISITS operations, and no operation
     * processed more than the bound. */
    CHECK(w.max_streak >= ((uint64_t)1 << 19) / KV_REHASH_EMPTY_VISITS);
    CHECK(st.max_step_buckets >= 1);
    CHECK(st.max_step_buckets <= KV_REHASH_EMPTY_VISITS);
    CHECK(st.max_step_entries <=
          32); /* one chain; a good hash keeps it short */
    CHECK(kv_digest(kv) == kv_digest_compute(kv));

    for (size_t i = 0; i < BIG_N; i++) {
        size_t kl = key_of(k, i), vl = val_of(v, i);
        CHECK(has_value(kv, k, kl, v, vl));
    }
    CHECK(get_str(kv, "key:1000000") == NULL);

    /* Delete the even keys, then check both halves. */
    w = (struct rehash_watch){0};
    for (size_t i = 0; i < BIG_N; i += 2) {
        size_t kl = key_of(k, i);
        CHECK_EQ_INT(kv_del(kv, k, kl), 1);
        watch(kv, &w);
    }
    CHECK_EQ_INT(kv_count(kv), BIG_N / 2);
    for (size_t i = 0; i < BIG_N; i++) {
        size_t kl = key_of(k, i), vl = val_of(v, i);
        if (i % 2)
            CHECK(has_value(kv, k, kl, v, vl));
        else
            CHECK(!kv_get(kv, k, kl, &(const uint8_t *){0}, &(size_t){0}));
    }
    /* Then the rest, from the top down. */
    for (size_t i = BIG_N - 1; i < BIG_N; i -= 2) {
        size_t kl = key_of(k, i);
        CHECK_EQ_INT(kv_del(kv, k, kl), 1);
        watch(kv, &w);
    }
    kv_stats(kv, &st);
    CHECK_EQ_INT(st.keys, 0);
    CHECK_EQ_INT(st.bytes, 0);
    CHECK(kv_digest(kv) == kv_digest_compute(kv));
    /* 2^20 -> 2^18 began at 131071 keys and, moving a sparse table one
     * bucket per delete, lasted until few keys were left; then a second
     * shrink. Idle-time rehashing finishes it. */
    CHECK(st.shrinks >= 2);
    /* The shrinks moved a sparse table: some step met the bound of empty
     * buckets, none went past it. */
    CHECK_EQ_INT(st.max_step_buckets, KV_REHASH_EMPTY_VISITS);
    CHECK(w.max_streak >= 10000); /* shrinks were incremental too */
    while (kv_rehash(kv, 100))
        ;
    kv_stats(kv, &st);
    CHECK(!st.rehashing);
    CHECK_EQ_INT(st.buckets[1], 0);
    CHECK(st.buckets[0] <= 256);
    kv_free(kv);
}

TEST(reserve_loads_without_rehashing)
{
    struct kv *kv = kv_new();
    kv_reserve(kv, 1000);
    struct kv_stats st;
    kv_stats(kv, &st);
    CHECK_EQ_INT(st.buckets[0], 1024);
    kv_reserve(kv, 10); /* smaller than what the empty table has: kept */
    kv_stats(kv, &st);
    CHECK_EQ_INT(st.buckets[0], 1024);
    char k[32], v[48];
    for (size_t i = 0; i < 1000; i++) {
        size_t kl = key_of(k, i), vl = val_of(v, i);
        CHECK_EQ_INT(kv_set(kv, k, kl, v, vl), 0);
    }
    kv_stats(kv, &st);
    CHECK_EQ_INT(st.keys, 1000);
    CHECK_EQ_INT(st.grows, 0);
    CHECK(!st.rehashing);
    /* a table holding keys is left alone; so is a smaller request */
    kv_reserve(kv, 100000);
    kv_reserve(kv, 10);
    kv_stats(kv, &st);
    CHECK_EQ_INT(st.buckets[0], 1024);
    for (size_t i = 0; i < 1000; i++) {
        size_t kl = key_of(k, i);
        const uint8_t *val;
        size_t vlen;
        CHECK(kv_get(kv, k, kl, &val, &vlen));
    }
    kv_free(kv);
}

/* A reservation of a power of two buckets takes exactly that many: n keys
 * fit in n buckets, the grow comes with key n + 1. */
TEST(reserve_power_of_two_exact)
{
    struct kv *kv = kv_new();
    kv_reserve(kv, 1024);
    struct kv_stats st;
    kv_stats(kv, &st);
    CHECK_EQ_INT(st.buckets[0], 1024);
    char k[32], v[48];
    for (size_t i = 0; i < 1024; i++) {
        size_t kl = key_of(k, i), vl = val_of(v, i);
        CHECK_EQ_INT(kv_set(kv, k, kl, v, vl), 0);
    }
    kv_stats(kv, &st);
    CHECK_EQ_INT(st.grows, 0);
    CHECK_EQ_INT(st.buckets[0], 1024);
    size_t kl = key_of(k, 1024), vl = val_of(v, 1024);
    CHECK_EQ_INT(kv_set(kv, k, kl, v, vl), 0);
    kv_stats(kv, &st);
    CHECK_EQ_INT(st.grows, 1);
    CHECK_EQ_INT(st.buckets[1], 2048);
    kv_free(kv);

    kv = kv_new();
    kv_reserve(kv, 4); /* the smallest array */
    kv_stats(kv, &st);
    CHECK_EQ_INT(st.buckets[0], 4);
    kv_free(kv);
}

/* Pointers from kv_get stay valid while gets advance a rehash. */
TEST(get_pointer_survives_rehash)
{
    struct kv *kv = kv_new();
    char k[32], v[48];
    size_t i = 0;
    struct kv_stats st;
    do {
        size_t kl = key_of(k, i), vl = val_of(v, i);
        kv_set(kv, k, kl, v, vl);
        i++;
        kv_stats(kv, &st);
    } while (!st.rehashing || i < 1000);
    const uint8_t *p;
    size_t pl;
    CHECK(kv_get(kv, "key:0", 5, &p, &pl));
    while (st.rehashing) {
        const uint8_t *q;
        size_t ql;
        CHECK(kv_get(kv, "key:1", 5, &q, &ql));
        kv_stats(kv, &st);
    }
    val_of(v, 0);
    CHECK_EQ_STR((const char *)p, v);
    kv_free(kv);
}

/* --- iteration ------------------------------------------------------------ */

#define SCAN_N 5000

struct visits {
    unsigned counts[SCAN_N]; /* visits of stable key s:<i> */
    size_t total;            /* all entries visited */
};

static int count_visit(void *arg, const uint8_t *key, size_t klen,
                       const uint8_t *value, size_t vlen)
{
    struct visits *vs = arg;
    char buf[32];
    PZ_UNUSED(value);
    PZ_UNUSED(vlen);
    vs->total++;
    if (klen < 2 || klen >= sizeof buf || memcmp(key, "s:", 2) != 0)
        return 0;
    memcpy(buf, key + 2, klen - 2);
    buf[klen - 2] = '\0';
    long i = strtol(buf, NULL, 10);
    if (i >= 0 && i < SCAN_N)
        vs->counts[i]++;
    return 0;
}

static void put_stable(struct kv *kv, size_t n)
{
    char k[32];
    for (size_t i = 0; i < n; i++) {
        size_t kl = (size_t)sprintf(k, "s:%zu", i);
        kv_set(kv, k, kl, "x", 1);
    }
}

static void put_extra(struct kv *kv, size_t i)
{
    char k[32];
    size_t kl = (size_t)sprintf(k, "x:%zu", i);
    kv_set(kv, k, kl, "y", 1);
}

static void del_extra(struct kv *kv, size_t i)
{
    char k[32];
    size_t kl = (size_t)sprintf(k, "x:%zu", i);
    kv_del(kv, k, kl);
}

TEST(foreach_during_rehash)
{
    struct kv *kv = kv_new();
    struct visits *vs = pz_calloc(1, sizeof(*vs));
    struct kv_stats st;
    size_t n = 0;
    char k[32];
    do { /* stop right after a grow began */
        size_t kl = (size_t)sprintf(k, "s:%zu", n++);
        kv_set(kv, k, kl, "x", 1);
        kv_stats(kv, &st);
    } while (!(st.rehashing && n > 1000));
    kv_foreach(kv, count_visit, vs);
    CHECK_EQ_INT(vs->total, n);
    for (size_t i = 0; i < n; i++)
        CHECK_EQ_INT(vs->counts[i], 1);
    pz_free(vs);
    kv_free(kv);
}

static int stop_at_third(void *arg, const uint8_t *key, size_t klen,
                         const uint8_t *value, size_t vlen)
{
    PZ_UNUSED(key);
    PZ_UNUSED(klen);
    PZ_UNUSED(value);
    PZ_UNUSED(vlen);
    return ++*(int *)arg == 3 ? 42 : 0;
}

TEST(foreach_stops)
{
    struct kv *kv = kv_new();
    put_stable(kv, 10);
    int n = 0;
    CHECK_EQ_INT(kv_foreach(kv, stop_at_third, &n), 42);
    CHECK_EQ_INT(n, 3);
    kv_free(kv);
}

/* A full scan of a table that grows by several powers of two while being
 * scanned, then one that shrinks, visits every stable key. */
TEST(scan_during_rehash)
{
    struct kv *kv = kv_new();
    struct visits *vs = pz_calloc(1, sizeof(*vs));
    struct kv_stats st;
    put_stable(kv, SCAN_N);
    size_t extra = 0;
    do { /* start a grow */
        put_extra(kv, extra++);
        kv_stats(kv, &st);
    } while (!st.rehashing);
    size_t size0 = st.buckets[0];

    uint64_t cursor = 0;
    size_t calls = 0, calls_rehashing = 0;
    do {
        kv_stats(kv, &st);
        calls_rehashing += st.rehashing;
        cursor = kv_scan(kv, cursor, count_visit, vs);
        calls++;
        for (int j = 0; j < 8 && extra < 60000; j++)
            put_extra(kv, extra++);
    } while (cursor != 0);
    for (size_t i = 0; i < SCAN_N; i++)
        CHECK(vs->counts[i] >= 1);
    kv_stats(kv, &st);
    CHECK(st.buckets[0] >= size0 * 4); /* grew twice or more meanwhile */
    CHECK(calls_rehashing > 100);
    CHECK(calls > 1000);

    /* Shrinking: delete every extra key while scanning. */
    memset(vs, 0, sizeof(*vs));
    uint64_t shrinks0 = st.shrinks;
    size_t next_del = 0;
    cursor = 0;
    calls_rehashing = 0;
    do {
        kv_stats(kv, &st);
        calls_rehashing += st.rehashing;
        cursor = kv_scan(kv, cursor, count_visit, vs);
        for (int j = 0; j < 64 && next_del < extra; j++)
            del_extra(kv, next_del++);
    } while (cursor != 0);
    for (size_t i = 0; i < SCAN_N; i++)
        CHECK(vs->counts[i] >= 1);
    kv_stats(kv, &st);
    CHECK(st.shrinks > shrinks0);
    CHECK(calls_rehashing > 10);

    /* A scan of a quiet table visits each key exactly once. */
    while (next_del < extra)
        del_extra(kv, next_del++);
    CHECK(!kv_rehash(kv, SIZE_MAX)); /* let any rehash finish */
    kv_stats(kv, &st);
    CHECK(!st.rehashing);
    memset(vs, 0, sizeof(*vs));
    cursor = 0;
    do
        cursor = kv_scan(kv, cursor, count_visit, vs);
    while (cursor != 0);
    CHECK_EQ_INT(vs->total, SCAN_N);
    for (size_t i = 0; i < SCAN_N; i++)
        CHECK_EQ_INT(vs->counts[i], 1);

    pz_free(vs);
    kv_free(kv);
}

TEST(scan_empty)
{
    struct kv *kv = kv_new();
    struct visits *vs = pz_calloc(1, sizeof(*vs));
    CHECK(kv_scan(kv, 0, count_visit, vs) == 0);
    CHECK_EQ_INT(vs->total, 0);
    pz_free(vs);
    kv_free(kv);
}

/* --- commands ------------------------------------------------------------- */

TEST(encode_format)
{
    struct pz_buf b;
    pz_buf_init(&b);
    CHECK_EQ_INT(kv_encode_set(&b, "k", 1, "v", 1), 0);
    static const uint8_t set_kv[] = {0x11, 1, 'k', 1, 'v'};
    CHECK_EQ_INT(b.len, sizeof set_kv);
    CHECK(memcmp(b.data, set_kv, sizeof set_kv) == 0);
    pz_buf_reset(&b);
    CHECK_EQ_INT(kv_encode_del(&b, "k", 1), 0);
    static const uint8_t del_k[] = {0x12, 1, 'k'};
    CHECK_EQ_INT(b.len, sizeof del_k);
    CHECK(memcmp(b.data, del_k, sizeof del_k) == 0);
    /* Appends; 200 = 0xc8 encodes as c8 01; empty value as 00. */
    char key[200];
    memset(key, 'z', sizeof key);
    CHECK_EQ_INT(kv_encode_set(&b, key, sizeof key, "", 0), 0);
    CHECK_EQ_INT(b.len, 3 + 1 + 2 + 200 + 1);
    const uint8_t *p = (const uint8_t *)b.data + 3;
    CHECK_EQ_INT(p[0], 0x11);
    CHECK_EQ_INT(p[1], 0xc8);
    CHECK_EQ_INT(p[2], 0x01);
    CHECK_EQ_INT(p[203], 0);
    struct kv_cmd c;
    CHECK_EQ_INT(kv_decode(p, b.len - 3, &c), 0);
    CHECK_EQ_INT(c.op, KV_OP_SET);
    CHECK_EQ_INT(c.klen, 200);
    CHECK_EQ_INT(c.vlen, 0);
    CHECK(c.key == p + 3);
    pz_buf_free(&b);
}

TEST(apply_roundtrip)
{
    struct kv *kv = kv_new();
    struct pz_buf b;
    struct kv_result res;
    static const uint8_t bk[] = {0, 'k', 0}, bv[] = {'v', 0, 0, 'w'};
    pz_buf_init(&b);
    kv_encode_set(&b, bk, sizeof bk, bv, sizeof bv);
    CHECK_EQ_INT(kv_apply(kv, (uint8_t *)b.data, b.len, &res), 0);
    CHECK_EQ_INT(res.op, KV_OP_SET);
    CHECK(!res.existed);
    CHECK(has_value(kv, bk, sizeof bk, bv, sizeof bv));
    CHECK_EQ_INT(kv_apply(kv, (uint8_t *)b.data, b.len, &res), 0);
    CHECK(res.existed);
    CHECK_EQ_INT(kv_count(kv), 1);

    pz_buf_reset(&b);
    kv_encode_del(&b, bk, sizeof bk);
    CHECK_EQ_INT(kv_apply(kv, (uint8_t *)b.data, b.len, &res), 0);
    CHECK_EQ_INT(res.op, KV_OP_DEL);
    CHECK(res.existed);
    CHECK_EQ_INT(kv_count(kv), 0);
    CHECK_EQ_INT(kv_apply(kv, (uint8_t *)b.data, b.len, NULL), 0);
    CHECK_EQ_INT(kv_apply(kv, (uint8_t *)b.data, b.len, &res), 0);
    CHECK(!res.existed);
    pz_buf_free(&b);
    kv_free(kv);
}

struct snap {
    size_t count;    /* kv_count */
    size_t bytes;    /* kv_bytes */
    uint64_t digest; /* kv_digest */
};

static struct snap snap_of(const struct kv *kv)
{
    return (struct snap){kv_count(kv), kv_bytes(kv), kv_digest(kv)};
}

static bool snap_eq(struct snap a, struct snap b)
{
    return a.count == b.count && a.bytes == b.bytes && a.digest == b.digest;
}

/* Apply must fail with want and leave the table as it was. */
#define CHECK_REJECT(kv, bytes, n, want)                                       \
    do {                                                                       \
        struct snap before_ = snap_of(kv);                                     \
        struct kv_result r_ = {-1, true};                                      \
        CHECK_EQ_INT(kv_apply(kv, bytes, n, &r_), want);                       \
        CHECK(snap_eq(before_, snap_of(kv)));                                  \
        CHECK_EQ_INT(r_.op, -1);                                               \
    } while (0)

TEST(apply_malformed)
{
    struct kv *kv = kv_new();
    put_stable(kv, 100);
    CHECK_EQ_INT(kv_set(kv, "ab", 2, "1", 1), 0);
    CHECK_EQ_INT(kv_set(kv, "a", 1, "2", 1), 0);
    static const uint8_t empty[1] = {0};
    CHECK_REJECT(kv, empty, 0, PZ_EINVAL);

    /* Unknown versions and ops. */
    static const uint8_t v0[] = {0x01, 1, 'a', 1, 'x'};
    static const uint8_t v2[] = {0x21, 1, 'a', 1, 'x'};
    static const uint8_t vf[] = {0xf2, 1, 'a'};
    static const uint8_t op0[] = {0x10, 1, 'a'};
    static const uint8_t op3[] = {0x13, 1, 'a'};
    static const uint8_t opf[] = {0x1f, 1, 'a'};
    CHECK_REJECT(kv, v0, sizeof v0, PZ_EINVAL);
    CHECK_REJECT(kv, v2, sizeof v2, PZ_EINVAL);
    CHECK_REJECT(kv, vf, sizeof vf, PZ_EINVAL);
    CHECK_REJECT(kv, op0, sizeof op0, PZ_EINVAL);
    CHECK_REJECT(kv, op3, sizeof op3, PZ_EINVAL);
    CHECK_REJECT(kv, opf, sizeof opf, PZ_EINVAL);

    /* Every truncation of valid commands (a DEL of "ab" cut to "a" must
     * not delete "a"). */
    struct pz_buf b;
    pz_buf_init(&b);
    kv_encode_set(&b, "ab", 2, "value", 5);
    for (size_t n = 1; n < b.len; n++)
        CHECK_REJECT(kv, (uint8_t *)b.data, n, PZ_ECORRUPT);
    pz_buf_reset(&b);
    kv_encode_del(&b, "ab", 2);
    for (size_t n = 1; n < b.len; n++)
        CHECK_REJECT(kv, (uint8_t *)b.data, n, PZ_ECORRUPT);
    static const uint8_t del_a_short[] = {0x12, 2, 'a'};
    CHECK_REJECT(kv, del_a_short, sizeof del_a_short, PZ_ECORRUPT);
    /* Trailing bytes. */
    static const uint8_t del_trail[] = {0x12, 1, 'a', 0};
    static const uint8_t set_trail[] = {0x11, 1, 'a', 1, 'x', 'y'};
    CHECK_REJECT(kv, del_trail, sizeof del_trail, PZ_ECORRUPT);
    CHECK_REJECT(kv, set_trail, sizeof set_trail, PZ_ECORRUPT);

    /* Bad varints and lengths past the end. */
    static const uint8_t long_varint[] = {0x12, 0x80, 0x80, 0x80,
                                          0x80, 0x80, 0x00, 'a'};
    static const uint8_t nonminimal[] = {0x12, 0x81, 0x00, 'a'};
    static const uint8_t klen_max32[] = {0x12, 0xff, 0xff, 0xff,
                                         0xff, 0x0f, 'a'};
    static const uint8_t klen_33bits[] = {0x12, 0xff, 0xff, 0xff,
                                          0xff, 0x1f, 'a'};
    static const uint8_t klen_2[] = {0x12, 0x02, 'a'};
    static const uint8_t vlen_huge[] = {0x11, 1,    'a',  0xff, 0xff,
                                        0xff, 0xff, 0x0f, 'x'};
    static const uint8_t vlen_cut[] = {0x11, 1, 'a', 0x80};
    static const uint8_t vlen_past[] = {0x11, 1, 'a', 3, 'x', 'y'};
    CHECK_REJECT(kv, long_varint, sizeof long_varint, PZ_ECORRUPT);
    CHECK_REJECT(kv, nonminimal, sizeof nonminimal, PZ_ECORRUPT);
    CHECK_REJECT(kv, klen_max32, sizeof klen_max32, PZ_ECORRUPT);
    CHECK_REJECT(kv, klen_33bits, sizeof klen_33bits, PZ_ECORRUPT);
    CHECK_REJECT(kv, klen_2, sizeof klen_2, PZ_ECORRUPT);
    CHECK_REJECT(kv, vlen_huge, sizeof vlen_huge, PZ_ECORRUPT);
    CHECK_REJECT(kv, vlen_cut, sizeof vlen_cut, PZ_ECORRUPT);
    CHECK_REJECT(kv, vlen_past, sizeof vlen_past, PZ_ECORRUPT);
    /* A 64-bit varint (a REVOKE's lease id) has 10 bytes at most: one
     * whose 10th byte goes on to an 11th is refused, not read on. */
    static const uint8_t lease_11_bytes[] = {
        0x33, 0x81, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01};
    CHECK_REJECT(kv, lease_11_bytes, sizeof lease_11_bytes, PZ_ECORRUPT);

    /* A key over the limit whose bytes are all there. */
    size_t n = 1 + 5 + KV_KEY_MAX + 1;
    uint8_t *big = pz_calloc(1, n);
    big[0] = 0x12;
    size_t pos = 1;
    uint32_t v = KV_KEY_MAX + 1;
    while (v >= 0x80) {
        big[pos++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    big[pos++] = (uint8_t)v;
    n = pos + KV_KEY_MAX + 1;
    CHECK_REJECT(kv, big, n, PZ_ETOOBIG);
    pz_free(big);

    /* Nothing above changed the table. */
    CHECK_EQ_INT(kv_count(kv), 102);
    CHECK_EQ_STR(get_str(kv, "a"), "2");
    CHECK_EQ_STR(get_str(kv, "ab"), "1");
    CHECK(kv_digest(kv) == kv_digest_compute(kv));
    pz_buf_free(&b);
    kv_free(kv);
}

/* Random byte flips of valid commands: rejected ones change nothing,
 * accepted ones do exactly what kv_decode says. */
TEST(apply_fuzz)
{
    struct kv *kv = kv_new();
    put_stable(kv, 50);
    uint64_t rng = 12345;
    struct pz_buf b;
    pz_buf_init(&b);
    int accepted = 0, rejected = 0;
    for (int iter = 0; iter < 20000; iter++) {
        pz_buf_reset(&b);
        char k[16];
        size_t kl = (size_t)sprintf(k, "s:%d", (int)(pz_rand_next(&rng) % 60));
        if (pz_rand_next(&rng) % 2)
            kv_encode_set(&b, k, kl, "value", pz_rand_next(&rng) % 6);
        else
            kv_encode_del(&b, k, kl);
        uint8_t *p = (uint8_t *)b.data;
        int flips = 1 + (int)(pz_rand_next(&rng) % 3);
        for (int f = 0; f < flips; f++)
            p[pz_rand_next(&rng) % b.len] ^=
                (uint8_t)(1u << (pz_rand_next(&rng) % 8));
        size_t len = b.len - (size_t)(pz_rand_next(&rng) % 2);
        struct snap before = snap_of(kv);
        struct kv_cmd c;
        int drc = kv_decode(p, len, &c);
        int rc = kv_apply(kv, p, len, NULL);
        CHECK_EQ_INT(rc, drc);
        if (rc) {
            CHECK(rc == PZ_EINVAL || rc == PZ_ECORRUPT);
            CHECK(snap_eq(before, snap_of(kv)));
            rejected++;
        } else if (c.op == KV_OP_SET) {
            CHECK(has_value(kv, c.key, c.klen, c.value, c.vlen));
            accepted++;
        } else if (c.op == KV_OP_DEL) {
            CHECK(!kv_get(kv, c.key, c.klen, &(const uint8_t *){0},
                          &(size_t){0}));
            accepted++;
        } else {
            /* a flipped version nibble: a lease command (a put naming a
             * lease that does not exist changes nothing) */
            CHECK(c.op == KV_OP_SETL || c.op == KV_OP_GRANT ||
                  c.op == KV_OP_REVOKE);
            if (c.op == KV_OP_SETL)
                CHECK(snap_eq(before, snap_of(kv)));
            accepted++;
        }
    }
    CHECK(accepted > 1000);
    CHECK(rejected > 1000);
    CHECK(kv_digest(kv) == kv_digest_compute(kv));
    pz_buf_free(&b);
    kv_free(kv);
}

/* --- digests -------------------------------------------------------------- */

TEST(digest_order_independent)
{
    /* The same commands on tables of different seeds (layouts): equal
     * digests. */
    struct kv *a = kv_new(), *b = kv_new_seeded(0xdeadbeef);
    char k[32], v[48];
    const size_t n = 20000;
    for (int t = 0; t < 2; t++) {
        struct kv *x = t ? b : a;
        for (size_t i = 0; i < n; i++) {
            size_t kl = key_of(k, i), vl = val_of(v, i);
            kv_set(x, k, kl, "old", 3);
            kv_set(x, k, kl, v, vl);
        }
        for (size_t i = 0; i < n; i += 3)
            kv_del(x, k, key_of(k, i));
    }
    CHECK(kv_digest(a) != 0);
    CHECK(kv_digest(a) == kv_digest(b));
    CHECK(kv_digest(a) == kv_digest_compute(a));
    CHECK(kv_digest(b) == kv_digest_compute(b));
    CHECK_EQ_INT(kv_bytes(a), kv_bytes(b));
    CHECK(kv_revision(a) == kv_revision(b));

    /* Same contents, other history (order of writes): metadata differ,
     * so do digests. */
    struct kv *c = kv_new(), *d = kv_new();
    kv_set(c, "x", 1, "1", 1);
    kv_set(c, "y", 1, "2", 1);
    kv_set(d, "y", 1, "2", 1);
    kv_set(d, "x", 1, "1", 1);
    CHECK(kv_revision(c) == kv_revision(d));
    CHECK(kv_digest(c) != kv_digest(d));
    /* A value moved to another key differs. */
    kv_set(a, "k", 1, "ey:5", 4);
    kv_set(b, "ke", 2, "y:5", 3);
    CHECK(kv_digest(a) != kv_digest(b));
    kv_free(a);
    kv_free(b);
    kv_free(c);
    kv_free(d);
}

/* --- randomized comparison with a reference model ------------------------- */

#define MODEL_KEYS 600
#define MODEL_VMAX 40

struct model {
    bool present[MODEL_KEYS];            /* key i exists */
    uint8_t val[MODEL_KEYS][MODEL_VMAX]; /* its value */
    size_t vlen[MODEL_KEYS];             /* its length */
    size_t count;                        /* keys present */
    size_t bytes;                        /* key + value bytes */
};

/* Keys are binary: a NUL, the index in 2 bytes, then some filler. */
static size_t model_key(uint8_t *k, size_t i)
{
    k[0] = 0;
    k[1] = (uint8_t)(i >> 8);
    k[2] = (uint8_t)i;
    size_t n = 3 + i % 5;
    for (size_t j = 3; j < n; j++)
        k[j] = (uint8_t)(j * 31 + i);
    return n;
}

struct model_visit {
    const struct model *m; /* expected contents */
    size_t *seen;          /* visits per key index */
    size_t bad;            /* entries not matching the model */
};

static int model_check_visit(void *arg, const uint8_t *key, size_t klen,
                             const uint8_t *value, size_t vlen)
{
    struct model_visit *mv = arg;
    if (klen < 3) {
        mv->bad++;
        return 0;
    }
    size_t i = (size_t)key[1] << 8 | key[2];
    uint8_t want[8];
    if (i >= MODEL_KEYS || !mv->m->present[i] || model_key(want, i) != klen ||
        memcmp(want, key, klen) != 0 || mv->m->vlen[i] != vlen ||
        (vlen && memcmp(mv->m->val[i], value, vlen) != 0))
        mv->bad++;
    else
        mv->seen[i]++;
    return 0;
}

static void model_check_all(struct kv *kv, const struct model *m)
{
    size_t seen[MODEL_KEYS] = {0};
    struct model_visit mv = {m, seen, 0};
    CHECK_EQ_INT(kv_count(kv), m->count);
    CHECK_EQ_INT(kv_bytes(kv), m->bytes);
    CHECK(kv_digest(kv) == kv_digest_compute(kv));
    kv_foreach(kv, model_check_visit, &mv);
    CHECK_EQ_INT(mv.bad, 0);
    for (size_t i = 0; i < MODEL_KEYS; i++)
        CHECK_EQ_INT(seen[i], m->present[i] ? 1 : 0);
    /* A scan with no mutation visits every key (at least once). */
    memset(seen, 0, sizeof seen);
    uint64_t cursor = 0;
    do
        cursor = kv_scan(kv, cursor, model_check_visit, &mv);
    while (cursor != 0);
    CHECK_EQ_INT(mv.bad, 0);
    for (size_t i = 0; i < MODEL_KEYS; i++)
        CHECK(m->present[i] ? seen[i] >= 1 : seen[i] == 0);
}

static void model_run(uint64_t seed)
{
    struct model *m = pz_calloc(1, sizeof(*m));
    struct kv *kv = kv_new_seeded(seed);
    struct pz_buf b;
    pz_buf_init(&b);
    uint64_t rng = seed;
    for (int iter = 0; iter < 60000; iter++) {
        /* Phases of mostly-set and mostly-delete to grow and shrink. */
        int set_pct = (iter / 5000) % 2 ? 5 : 80;
        size_t i = pz_rand_next(&rng) % MODEL_KEYS;
        uint8_t k[8];
        size_t kl = model_key(k, i);
        uint64_t r = pz_rand_next(&rng);
        bool via_apply = r & 1;
        int pct = (int)((r >> 1) % 100);
        if (pct < set_pct) {
            uint8_t v[MODEL_VMAX];
            size_t vl = (r >> 8) % (MODEL_VMAX + 1);
            for (size_t j = 0; j < vl; j++)
                v[j] = (uint8_t)(pz_rand_next(&rng) % 4); /* NULs likely */
            int rc;
            if (via_apply) {
                struct kv_result res;
                pz_buf_reset(&b);
                CHECK_EQ_INT(kv_encode_set(&b, k, kl, v, vl), 0);
                CHECK_EQ_INT(kv_apply(kv, (uint8_t *)b.data, b.len, &res), 0);
                CHECK_EQ_INT(res.op, KV_OP_SET);
                rc = res.existed;
            } else {
                rc = kv_set(kv, k, kl, v, vl);
            }
            CHECK_EQ_INT(rc, m->present[i] ? 1 : 0);
            if (m->present[i]) {
                m->bytes -= m->vlen[i];
            } else {
                m->count++;
                m->bytes += kl;
            }
            m->present[i] = true;
            memcpy(m->val[i], v, vl);
            m->vlen[i] = vl;
            m->bytes += vl;
        } else if (pct < 90) {
            int rc;
            if (via_apply) {
                struct kv_result res;
                pz_buf_reset(&b);
                CHECK_EQ_INT(kv_encode_del(&b, k, kl), 0);
                CHECK_EQ_INT(kv_apply(kv, (uint8_t *)b.data, b.len, &res), 0);
                CHECK_EQ_INT(res.op, KV_OP_DEL);
                rc = res.existed;
            } else {
                rc = kv_del(kv, k, kl);
            }
            CHECK_EQ_INT(rc, m->present[i] ? 1 : 0);
            if (m->present[i]) {
                m->count--;
                m->bytes -= kl + m->vlen[i];
            }
            m->present[i] = false;
        } else {
            const uint8_t *v;
            size_t vl;
            bool found = kv_get(kv, k, kl, &v, &vl);
            CHECK_EQ_INT(found, m->present[i]);
            if (found) {
                CHECK_EQ_INT(vl, m->vlen[i]);
                CHECK(vl == 0 || memcmp(v, m->val[i], vl) == 0);
            }
        }
        if (iter % 997 == 0) {
            model_check_all(kv, m);
            if (test_failed_flag)
                return;
        }
    }
    model_check_all(kv, m);
    struct kv_stats st;
    kv_stats(kv, &st);
    CHECK(st.grows > 0);
    CHECK(st.shrinks > 0);
    CHECK(st.max_step_buckets <= KV_REHASH_EMPTY_VISITS);
    pz_buf_free(&b);
    kv_free(kv);
    pz_free(m);
}

TEST(random_vs_model)
{
    static const uint64_t seeds[] = {1, 42, 0x5eed5eed, 20240601};
    for (size_t s = 0; s < PZ_ARRAY_SIZE(seeds); s++) {
        model_run(seeds[s]);
        if (test_failed_flag) {
            fprintf(stderr, "    model run failed with seed %" PRIu64 "\n",
                    seeds[s]);
            return;
        }
    }
}

/* --- transactions, ranges and revisions against a reference model -------- */

#define TM_KEYS 64

struct tmodel {
    bool present[TM_KEYS];
    uint8_t val[TM_KEYS];      /* one-byte values */
    struct kv_meta m[TM_KEYS]; /* expected metadata */
    uint64_t rev;              /* expected revision */
};

/* Two-byte keys whose bytewise order is their index order. */
static void tm_key(uint8_t *k, size_t i)
{
    k[0] = (uint8_t)('a' + i / 26);
    k[1] = (uint8_t)('a' + i % 26);
}

struct tm_collect {
    size_t n;
    uint8_t keys[TM_KEYS][2];
    struct kv_meta m[TM_KEYS];
    uint8_t val[TM_KEYS];
    bool bad;
};

static int tm_visit(void *arg, const struct kv_view *v)
{
    struct tm_collect *c = arg;
    if (c->n >= TM_KEYS || v->klen != 2 || v->vlen != 1) {
        c->bad = true;
        return 1;
    }
    memcpy(c->keys[c->n], v->key, 2);
    c->m[c->n] = v->meta;
    c->val[c->n] = v->value[0];
    c->n++;
    return 0;
}

static bool meta_eq(const struct kv_meta *a, const struct kv_meta *b)
{
    return a->create_revision == b->create_revision &&
           a->mod_revision == b->mod_revision && a->version == b->version &&
           a->lease == b->lease;
}

/* Collected items of a sink (GET/RANGE results). */
struct tm_sink {
    size_t items;
    uint64_t count;
    bool more;
};

static void tms_item(void *arg, const struct kv_view *v)
{
    (void)v;
    ((struct tm_sink *)arg)->items++;
}

static void tms_end(void *arg, uint64_t count, bool more)
{
    ((struct tm_sink *)arg)->count = count;
    ((struct tm_sink *)arg)->more = more;
}

static void tm_put(struct tmodel *m, size_t i, uint8_t v, bool *changed)
{
    if (!*changed) {
        m->rev++;
        *changed = true;
    }
    if (!m->present[i]) {
        m->present[i] = true;
        m->m[i] = (struct kv_meta){m->rev, m->rev, 1, 0};
    } else {
        m->m[i].mod_revision = m->rev;
        m->m[i].version++;
    }
    m->val[i] = v;
}

static void tm_del(struct tmodel *m, size_t i, bool *changed)
{
    if (!m->present[i])
        return;
    if (!*changed) {
        m->rev++;
        *changed = true;
    }
    m->present[i] = false;
}

static void tmodel_run(uint64_t seed)
{
    struct tmodel *m = pz_calloc(1, sizeof *m);
    struct kv *kv = kv_new_seeded(seed * 7 + 1);
    struct pz_buf b;
    pz_buf_init(&b);
    uint64_t rng = seed;
    for (int iter = 0; iter < 20000; iter++) {
        uint64_t r = pz_rand_next(&rng);
        size_t i = r % TM_KEYS, j = (r >> 8) % TM_KEYS;
        uint8_t ki[2], kj[2], v = (uint8_t)(r >> 16);
        tm_key(ki, i);
        tm_key(kj, j);
        if (j < i) {
            size_t t = i;
            i = j;
            j = t;
            uint8_t tk[2] = {ki[0], ki[1]};
            memcpy(ki, kj, 2);
            memcpy(kj, tk, 2);
        }
        bool changed = false;
        struct kv_result res;
        pz_buf_reset(&b);
        switch ((r >> 24) % 4) {
        case 0: { /* put through version 1 */
            CHECK_EQ_INT(kv_encode_set(&b, ki, 2, &v, 1), 0);
            CHECK_EQ_INT(kv_apply(kv, (uint8_t *)b.data, b.len, &res), 0);
            tm_put(m, i, v, &changed);
            break;
        }
        case 1: { /* delete-range [ki, kj) in a transaction */
            struct kv_op op = {.type = KV_TOP_DELRANGE,
                               .key = ki,
                               .klen = 2,
                               .value = kj,
                               .vlen = 2};
            CHECK_EQ_INT(kv_encode_txn(&b, NULL, 0, &op, 1, NULL, 0), 0);
            CHECK_EQ_INT(kv_apply(kv, (uint8_t *)b.data, b.len, &res), 0);
            CHECK(res.succeeded);
            for (size_t x = i; x < j; x++)
                tm_del(m, x, &changed);
            break;
        }
        default: { /* CAS on mod_revision (right half the time) */
            uint64_t want = m->present[i] ? m->m[i].mod_revision : 0;
            if (r & (1ull << 40))
                want += 1 + (r >> 41) % 3;
            struct kv_cmp c = {.target = want ? KV_CMP_MOD : KV_CMP_CREATE,
                               .result = KV_CMP_EQ,
                               .key = ki,
                               .klen = 2,
                               .num = want};
            struct kv_op ok[2] = {{.type = KV_TOP_PUT,
                                   .key = ki,
                                   .klen = 2,
                                   .value = &v,
                                   .vlen = 1},
                                  {.type = KV_TOP_DEL, .key = kj, .klen = 2}};
            struct kv_op no = {.type = KV_TOP_RANGE,
                               .key = ki,
                               .klen = 2,
                               .value = kj,
                               .vlen = 2};
            CHECK_EQ_INT(kv_encode_txn(&b, &c, 1, ok, 2, &no, 1), 0);
            struct tm_sink ts = {0};
            struct kv_sink sk = {
                .item = tms_item, .op_end = tms_end, .arg = &ts};
            CHECK_EQ_INT(kv_apply_sink(kv, (uint8_t *)b.data, b.len, &res, &sk),
                         0);
            uint64_t cur = m->present[i] ? m->m[i].mod_revision : 0;
            bool holds = cur == want;
            CHECK_EQ_INT(res.succeeded, holds);
            if (holds) {
                tm_put(m, i, v, &changed);
                tm_del(m, j, &changed); /* j == i: the put is undone */
            } else {
                uint64_t n = 0;
                for (size_t x = i; x < j; x++)
                    n += m->present[x];
                CHECK(ts.count == n && ts.items == n && !ts.more);
            }
            break;
        }
        }
        CHECK(res.revision == m->rev);
        CHECK(kv_revision(kv) == m->rev);
        if (iter % 101 == 0 || test_failed_flag) {
            struct tm_collect *c = pz_calloc(1, sizeof *c);
            kv_foreach_view(kv, tm_visit, c);
            size_t n = 0;
            bool ok = !c->bad;
            for (size_t x = 0; x < TM_KEYS && ok; x++) {
                if (!m->present[x])
                    continue;
                uint8_t k[2];
                tm_key(k, x);
                ok = n < c->n && memcmp(c->keys[n], k, 2) == 0 &&
                     meta_eq(&c->m[n], &m->m[x]) && c->val[n] == m->val[x];
                n++;
            }
            ok = ok && n == c->n;
            pz_free(c);
            CHECK(ok);
            CHECK(kv_digest(kv) == kv_digest_compute(kv));
        }
    }
    pz_buf_free(&b);
    kv_free(kv);
    pz_free(m);
}

/* The reference rule: -1, 0 or 1 as have is below, equal to or above want;
 * then whether `result` accepts that. */
static bool cmp_expect(int result, int order)
{
    switch (result) {
    case KV_CMP_EQ:
        return order == 0;
    case KV_CMP_NE:
        return order != 0;
    case KV_CMP_LT:
        return order < 0;
    default:
        return order > 0;
    }
}

/* Every comparison (target x result x operand) on a present key and on an
 * absent one, as the only comparison of a read-only transaction: it
 * succeeds exactly when the comparison holds. On an absent key a value
 * comparison never holds (there is no value, whatever the operator) and
 * the numeric targets read 0. */
TEST(txn_compare_table)
{
    struct kv *kv = kv_new();
    struct pz_buf b;
    pz_buf_init(&b);
    struct kv_result res;
    CHECK_EQ_INT(kv_encode_set(&b, "x", 1, "0", 1), 0); /* revision 1 */
    CHECK_EQ_INT(kv_apply(kv, (uint8_t *)b.data, b.len, &res), 0);
    b.len = 0;
    CHECK_EQ_INT(kv_encode_set(&b, "a", 1, "m", 1), 0); /* create: 2 */
    CHECK_EQ_INT(kv_apply(kv, (uint8_t *)b.data, b.len, &res), 0);
    b.len = 0;
    CHECK_EQ_INT(kv_encode_set(&b, "a", 1, "m", 1), 0); /* mod: 3, version 2 */
    CHECK_EQ_INT(kv_apply(kv, (uint8_t *)b.data, b.len, &res), 0);
    CHECK(res.revision == 3);
    /* a: value "m", version 2, create_revision 2, mod_revision 3, lease 0 */
    const uint64_t have[] = {0, 2, 2, 3, 0}; /* by target (VALUE unused) */
    const char *vals[] = {"l", "m", "n", "ma", ""};
    static const int targets[] = {KV_CMP_VALUE, KV_CMP_VERSION, KV_CMP_CREATE,
                                  KV_CMP_MOD, KV_CMP_LEASE};
    static const int results[] = {KV_CMP_EQ, KV_CMP_NE, KV_CMP_LT, KV_CMP_GT};
    size_t checked = 0;
    for (int present = 0; present < 2; present++) {
        for (size_t t = 0; t < 5; t++) {
            for (size_t r = 0; r < 4; r++) {
                for (int k = 0; k < 5; k++) {
                    struct kv_cmp c = {.target = targets[t],
                                       .result = results[r],
                                       .key = (const uint8_t *)(present
                                                                    ? "a"
                                                                    : "z"),
                                       .klen = 1};
                    bool want;
                    if (targets[t] == KV_CMP_VALUE) {
                        c.value = (const uint8_t *)vals[k];
                        c.vlen = strlen(vals[k]);
                        int o = strcmp("m", vals[k]);
                        want = present && cmp_expect(results[r],
                                                     (o > 0) - (o < 0));
                    } else {
                        c.num = (uint64_t)k; /* 0..4 */
                        uint64_t h = present ? have[t] : 0;
                        want = cmp_expect(results[r],
                                          h < c.num ? -1 : h > c.num);
                    }
                    b.len = 0;
                    CHECK_EQ_INT(kv_encode_txn(&b, &c, 1, NULL, 0, NULL, 0),
                                 0);
                    CHECK_EQ_INT(kv_apply(kv, (uint8_t *)b.data, b.len, &res),
                                 0);
                    if (res.succeeded != want)
                        fprintf(stderr,
                                "compare: key %s target %d result %d "
                                "operand %d: got %d, want %d\n",
                                present ? "a" : "z", targets[t], results[r], k,
                                res.succeeded, want);
                    CHECK_EQ_INT(res.succeeded, want);
                    CHECK(res.revision == 3); /* read-only: unchanged */
                    checked++;
                }
            }
        }
    }
    CHECK(checked == 2 * 5 * 4 * 5);
    pz_buf_free(&b);
    kv_free(kv);
}

TEST(txn_range_vs_model)
{
    uint64_t seed = (uint64_t)time(NULL);
    static const uint64_t fixed[] = {1, 99, 0};
    for (size_t s = 0; s < PZ_ARRAY_SIZE(fixed); s++) {
        uint64_t sd = fixed[s] ? fixed[s] : seed;
        tmodel_run(sd);
        if (test_failed_flag) {
            fprintf(stderr, "    model run failed with seed %" PRIu64 "\n", sd);
            return;
        }
    }
    printf("    txn model: seeds 1, 99, %" PRIu64 "\n", seed);
}

/* Commands of version 2 that are malformed are refused, by kv_decode and
 * kv_apply alike, and change nothing. */
TEST(txn_malformed)
{
    struct kv *kv = kv_new();
    kv_set(kv, "a", 1, "1", 1);
    uint64_t d = kv_digest(kv);
    static const struct {
        const char *bytes;
        size_t len;
        int rc;
    } cases[] = {
        {"\x21", 1, PZ_ECORRUPT},                 /* no counts */
        {"\x21\x00\x00", 3, PZ_ECORRUPT},         /* no failure count */
        {"\x21\x00\x00\x00\x00", 5, PZ_ECORRUPT}, /* trailing byte */
        {"\x21\x81\x01", 3, PZ_ETOOBIG},          /* 129 comparisons */
        {"\x21\x01\x05\x00\x01"
         "a"
         "\x00",
         6, PZ_EINVAL}, /* bad target */
        {"\x21\x01\x01\x04\x01"
         "a"
         "\x00",
         6, PZ_EINVAL}, /* bad result */
        {"\x21\x00\x01\x06\x01"
         "a",
         5, PZ_EINVAL}, /* bad op type */
        {"\x21\x00\x01\x05\x01"
         "a"
         "\x08\x00\x00\x00",
         9, PZ_EINVAL}, /* unknown range flag */
        {"\x21\x00\x01\x05\x01"
         "a"
         "\x01\x01"
         "b"
         "\x00\x00",
         10, PZ_EINVAL}, /* to-end with an end */
        {"\x21\x00\x01\x01\x01"
         "a"
         "\x01"
         "x"
         "\x80\x00\x00",
         10, PZ_ECORRUPT}, /* lease varint not shortest */
        {"\x21\x00\x01\x05\x01"
         "a"
         "\x00\x00"
         "\x81\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01"
         "\x00",
         20, PZ_ECORRUPT}, /* a limit varint going on past 10 bytes */
        {"\x22\x00\x00\x00", 4, PZ_EINVAL}, /* unknown v2 op */
        {"\x31\x00\x00\x00", 4, PZ_EINVAL}, /* unknown version */
    };
    for (size_t i = 0; i < PZ_ARRAY_SIZE(cases); i++) {
        struct kv_cmd c;
        const uint8_t *p = (const uint8_t *)cases[i].bytes;
        int rc = kv_decode(p, cases[i].len, &c);
        if (rc != cases[i].rc)
            fprintf(stderr, "    case %zu: %d\n", i, rc);
        CHECK_EQ_INT(rc, cases[i].rc);
        CHECK_EQ_INT(kv_apply(kv, p, cases[i].len, NULL), cases[i].rc);
        CHECK(kv_digest(kv) == d && kv_revision(kv) == 1);
    }
    /* The smallest valid one: no comparisons, no operations. */
    struct kv_result res;
    CHECK_EQ_INT(kv_apply(kv, (const uint8_t *)"\x21\x00\x00\x00", 4, &res), 0);
    CHECK(res.op == KV_OP_TXN && res.succeeded && res.revision == 1);
    /* The encoder refuses a PUT whose value is over the limit, in either
     * branch, before reading it (the value is never touched). */
    struct kv_op put = {.type = KV_TOP_PUT,
                        .key = (const uint8_t *)"k",
                        .klen = 1,
                        .value = (const uint8_t *)"v",
                        .vlen = KV_VALUE_MAX + 1};
    struct pz_buf b;
    pz_buf_init(&b);
    CHECK_EQ_INT(kv_encode_txn(&b, NULL, 0, &put, 1, NULL, 0), PZ_ETOOBIG);
    CHECK_EQ_INT(kv_encode_txn(&b, NULL, 0, NULL, 0, &put, 1), PZ_ETOOBIG);
    /* and a comparison of a target or result the decoder would refuse */
    struct kv_cmp cmp = {.target = KV_CMP_LEASE + 1,
                         .result = KV_CMP_EQ,
                         .key = (const uint8_t *)"a",
                         .klen = 1};
    CHECK_EQ_INT(kv_encode_txn(&b, &cmp, 1, NULL, 0, NULL, 0), PZ_EINVAL);
    cmp.target = KV_CMP_VERSION;
    cmp.result = KV_CMP_GT + 1;
    CHECK_EQ_INT(kv_encode_txn(&b, &cmp, 1, NULL, 0, NULL, 0), PZ_EINVAL);
    CHECK_EQ_INT(b.len, 0);
    pz_buf_free(&b);
    kv_free(kv);
}

/* What the watchers' hook saw. */
struct ev_log {
    int n;
    char line[16][48];
};

static void ev_cb(void *arg, int type, const struct kv_view *cur,
                  const struct kv_view *prev)
{
    struct ev_log *l = arg;
    if (l->n >= 16)
        return;
    const struct kv_view *k = cur ? cur : prev;
    snprintf(l->line[l->n++], sizeof l->line[0], "%s %.*s %.*s@%llu <%.*s>",
             type == KV_TOP_PUT ? "put" : "del", (int)k->klen,
             (const char *)k->key, cur ? (int)cur->vlen : 1,
             cur ? (const char *)cur->value : "-",
             (unsigned long long)(cur ? cur->meta.mod_revision : 0),
             prev ? (int)prev->vlen : 1,
             prev ? (const char *)prev->value : "-");
}

static void count_item(void *arg, const struct kv_view *v)
{
    (void)v;
    (*(int *)arg)++;
}

struct end_seen {
    uint64_t count;
    bool more;
};

static void end_item(void *arg, uint64_t count, bool more)
{
    struct end_seen *e = arg;
    e->count = count;
    e->more = more;
}

TEST(events_and_range_limits)
{
    struct kv *kv = kv_new();
    struct ev_log log = {0};
    kv_set_event_cb(kv, ev_cb, &log);
    kv_set(kv, "a", 1, "1", 1);
    kv_set(kv, "a", 1, "2", 1); /* same length: overwritten in place */
    kv_set(kv, "b", 1, "33", 2);
    kv_set(kv, "b", 1, "4444", 4); /* another length: a new entry */
    kv_del(kv, "zz", 2); /* absent: no event, no revision */
    struct pz_buf b;
    pz_buf_init(&b);
    struct kv_op dr = {.type = KV_TOP_DELRANGE, .flags = KV_RANGE_TO_END};
    CHECK_EQ_INT(kv_encode_txn(&b, NULL, 0, &dr, 1, NULL, 0), 0);
    struct kv_result res;
    CHECK_EQ_INT(kv_apply(kv, (uint8_t *)b.data, b.len, &res), 0);
    CHECK(res.revision == 5 && kv_count(kv) == 0);
    static const char *const want[] = {
        "put a 1@1 <->",     "put a 2@2 <1>", "put b 33@3 <->",
        "put b 4444@4 <33>", "del a -@0 <2>", "del b -@0 <4444>"};
    CHECK_EQ_INT(log.n, 6);
    for (int i = 0; i < 6; i++)
        CHECK_EQ_STR(log.line[i], want[i]);
    kv_set_event_cb(kv, NULL, NULL);
    /* A range stops one key past its limit and says more. */
    for (int i = 0; i < 50; i++) {
        char k[8];
        snprintf(k, sizeof k, "k%02d", i);
        kv_set(kv, k, 3, "v", 1);
    }
    int items = 0;
    struct end_seen end = {0};
    struct kv_sink sk = {.item = count_item, .op_end = end_item};
    struct kv_op rg = {.type = KV_TOP_RANGE,
                       .key = (const uint8_t *)"k1",
                       .klen = 2,
                       .value = (const uint8_t *)"k3",
                       .vlen = 2,
                       .limit = 4};
    for (int t = 0; t < 3; t++) {
        rg.limit = t == 0 ? 4 : t == 1 ? 20 : 0;
        rg.flags = t == 2 ? KV_RANGE_COUNT_ONLY : 0;
        items = 0;
        pz_buf_reset(&b);
        sk.arg = &items;
        sk.item = count_item;
        sk.op_end = NULL;
        CHECK_EQ_INT(kv_encode_txn(&b, NULL, 0, &rg, 1, NULL, 0), 0);
        CHECK_EQ_INT(kv_apply_sink(kv, (uint8_t *)b.data, b.len, &res, &sk),
                     0);
        sk.item = NULL;
        sk.op_end = end_item;
        sk.arg = &end;
        CHECK_EQ_INT(kv_apply_sink(kv, (uint8_t *)b.data, b.len, &res, &sk),
                     0);
        if (t == 0)
            CHECK(items == 4 && end.count == 4 && end.more);
        else if (t == 1)
            CHECK(items == 20 && end.count == 20 && !end.more);
        else
            CHECK(items == 0 && end.count == 20 && !end.more);
    }
    CHECK(res.revision == 55 && kv_revision(kv) == 55); /* reads: none */
    pz_buf_free(&b);
    kv_free(kv);
}

/* Items and the end of one operation, seen together. */
struct op_seen {
    int items;
    struct end_seen end;
};

static void seen_item(void *arg, const struct kv_view *v)
{
    count_item(&((struct op_seen *)arg)->items, v);
}

static void seen_end(void *arg, uint64_t count, bool more)
{
    end_item(&((struct op_seen *)arg)->end, count, more);
}

/* A sink with count_range is told every key of a range with a limit (as
 * etcd counts), while the walk still hands out the limit's keys only; in
 * a transaction that writes, the count is the table's at that operation.
 * The table and revision come out as without it. */
/* What a sink heard of a transaction's branch: 'S' or 'F' for the
 * branch, 'B' for each op_begin, in order. */
static void br_branch(void *arg, bool succeeded)
{
    char *heard = arg;
    strcat(heard, succeeded ? "S" : "F");
}

static void br_begin(void *arg, size_t i, const struct kv_op *op)
{
    PZ_UNUSED(i);
    PZ_UNUSED(op);
    char *heard = arg;
    strcat(heard, "B");
}

/* A sink learns the branch taken once, before the branch's first
 * operation, whether the transaction is applied (kv_apply_sink, in steps
 * or not) or only read (kv_txn_read): an etcd Txn's range answers from
 * the request operation of that branch (its sort is not in the command). */
TEST(txn_sink_branch)
{
    struct kv *kv = kv_new();
    kv_set(kv, "a", 1, "1", 1);
    struct pz_buf b;
    pz_buf_init(&b);
    char heard[16];
    struct kv_sink sk = {
        .branch = br_branch, .op_begin = br_begin, .arg = heard};
    struct kv_op rg = {.type = KV_TOP_RANGE,
                       .key = (const uint8_t *)"a",
                       .klen = 1,
                       .value = (const uint8_t *)"b",
                       .vlen = 1};
    struct kv_op put = {.type = KV_TOP_PUT,
                        .key = (const uint8_t *)"c",
                        .klen = 1,
                        .value = (const uint8_t *)"x",
                        .vlen = 1};
    struct kv_op two[2] = {rg, rg};
    struct kv_result res;
    for (int held = 0; held < 2; held++) {
        struct kv_cmp c = {.target = KV_CMP_VALUE,
                           .result = KV_CMP_EQ,
                           .key = (const uint8_t *)"a",
                           .klen = 1,
                           .value = (const uint8_t *)(held ? "1" : "2"),
                           .vlen = 1};
        /* read only: success has two ranges, failure one */
        pz_buf_reset(&b);
        heard[0] = 0;
        CHECK_EQ_INT(kv_encode_txn(&b, &c, 1, two, 2, &rg, 1), 0);
        CHECK_EQ_INT(kv_txn_read(kv, (uint8_t *)b.data, b.len, 100, &res, &sk),
                     0);
        CHECK_EQ_INT(res.succeeded, held);
        CHECK_EQ_STR(heard, held ? "SBB" : "FB");
        /* applied: success writes then reads, failure reads */
        struct kv_op w[2] = {put, rg};
        pz_buf_reset(&b);
        heard[0] = 0;
        CHECK_EQ_INT(kv_encode_txn(&b, &c, 1, w, 2, &rg, 1), 0);
        CHECK_EQ_INT(kv_apply_sink(kv, (uint8_t *)b.data, b.len, &res, &sk), 0);
        CHECK_EQ_INT(res.succeeded, held);
        CHECK_EQ_STR(heard, held ? "SBB" : "FB");
    }
    pz_buf_free(&b);
    kv_free(kv);
}

TEST(range_count_range)
{
    struct kv *kv = kv_new();
    for (int i = 0; i < 50; i++) {
        char k[8];
        snprintf(k, sizeof k, "k%02d", i);
        kv_set(kv, k, 3, "v", 1);
    }
    struct kv_op rg = {.type = KV_TOP_RANGE,
                       .key = (const uint8_t *)"k1",
                       .klen = 2,
                       .value = (const uint8_t *)"k3",
                       .vlen = 2};
    struct pz_buf b;
    pz_buf_init(&b);
    struct kv_result res;
    struct op_seen seen;
    struct kv_sink sk = {.item = seen_item,
                         .op_end = seen_end,
                         .arg = &seen,
                         .count_range = true};
    static const struct {
        uint64_t limit;
        int flags;
        int items;
        uint64_t count;
        bool more;
    } cases[] = {
        {4, 0, 4, 20, true},    /* stopped at the limit: all counted */
        {19, 0, 19, 20, true},  /* one key left out */
        {20, 0, 20, 20, false}, /* the limit takes them all */
        {0, 0, 20, 20, false},  /* no limit */
        {4, KV_RANGE_TO_END, 4, 40, true}, /* k1.. to the end */
        {3, KV_RANGE_KEYS_ONLY, 3, 20, true},
        {4, KV_RANGE_COUNT_ONLY, 0, 20, false},
    };
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        rg.limit = cases[t].limit;
        rg.flags = cases[t].flags;
        rg.vlen = rg.flags & KV_RANGE_TO_END ? 0 : 2; /* no end given */
        pz_buf_reset(&b);
        seen = (struct op_seen){0};
        CHECK_EQ_INT(kv_encode_txn(&b, NULL, 0, &rg, 1, NULL, 0), 0);
        CHECK_EQ_INT(kv_apply_sink(kv, (uint8_t *)b.data, b.len, &res, &sk), 0);
        CHECK_EQ_INT(seen.items, cases[t].items);
        CHECK(seen.end.count == cases[t].count);
        CHECK(seen.end.more == cases[t].more);
    }
    /* Without count_range the count is what was handed out. */
    rg.limit = 4;
    rg.flags = 0;
    rg.vlen = 2;
    sk.count_range = false;
    pz_buf_reset(&b);
    seen = (struct op_seen){0};
    CHECK_EQ_INT(kv_encode_txn(&b, NULL, 0, &rg, 1, NULL, 0), 0);
    CHECK_EQ_INT(kv_apply_sink(kv, (uint8_t *)b.data, b.len, &res, &sk), 0);
    CHECK(seen.items == 4 && seen.end.count == 4 && seen.end.more);
    /* After a put and a delete of the same transaction: the table as it
     * stands at the range (21 - 1 keys in [k1, k3)). */
    struct kv_op ops[3] = {
        {.type = KV_TOP_PUT,
         .key = (const uint8_t *)"k1x",
         .klen = 3,
         .value = (const uint8_t *)"v",
         .vlen = 1},
        {.type = KV_TOP_DEL, .key = (const uint8_t *)"k10", .klen = 3},
        rg};
    ops[2].limit = 2;
    uint64_t rev = kv_revision(kv);
    struct kv *twin = kv_new();
    for (int i = 0; i < 50; i++) {
        char k[8];
        snprintf(k, sizeof k, "k%02d", i);
        kv_set(twin, k, 3, "v", 1);
    }
    sk.count_range = true;
    pz_buf_reset(&b);
    seen = (struct op_seen){0};
    CHECK_EQ_INT(kv_encode_txn(&b, NULL, 0, ops, 3, NULL, 0), 0);
    CHECK_EQ_INT(kv_apply_sink(kv, (uint8_t *)b.data, b.len, &res, &sk), 0);
    CHECK(seen.end.count == 20 && seen.end.more);
    CHECK(res.revision == rev + 1);
    /* The same command on a twin table without a sink: the same state. */
    CHECK_EQ_INT(kv_apply(twin, (uint8_t *)b.data, b.len, &res), 0);
    CHECK(kv_revision(twin) == kv_revision(kv));
    CHECK(kv_count(twin) == kv_count(kv));
    CHECK(kv_digest(twin) == kv_digest(kv));
    pz_buf_free(&b);
    kv_free(twin);
    kv_free(kv);
}

/* Read-only transactions run without the log (kv_txn_read); the range
 * walks of a transaction are bounded by a budget of keys, checked before
 * anything runs, and at apply by KV_TXN_KEYS_MAX. */
TEST(txn_range_budget)
{
    struct kv *kv = kv_new();
    for (int i = 0; i < 1000; i++) {
        char k[8];
        snprintf(k, sizeof k, "k%04d", i);
        kv_set(kv, k, 5, "v", 1);
    }
    uint64_t rev = kv_revision(kv);
    struct pz_buf b;
    pz_buf_init(&b);
    struct kv_op all = {.type = KV_TOP_RANGE,
                        .flags = KV_RANGE_COUNT_ONLY,
                        .key = (const uint8_t *)"k",
                        .klen = 1,
                        .value = (const uint8_t *)"l",
                        .vlen = 1};
    struct kv_op one = all;
    one.flags = 0;
    one.limit = 2; /* visits 2 + 1 keys */
    struct kv_op put = {.type = KV_TOP_PUT,
                        .key = (const uint8_t *)"new",
                        .klen = 3,
                        .value = (const uint8_t *)"x",
                        .vlen = 1};
    CHECK_EQ_INT(kv_encode_txn(&b, NULL, 0, &all, 1, NULL, 0), 0);
    CHECK(kv_txn_readonly((uint8_t *)b.data, b.len));
    CHECK_EQ_INT(kv_txn_check(kv, (uint8_t *)b.data, b.len, 999),
                 KV_ETXN_KEYS);
    CHECK_EQ_INT(kv_txn_check(kv, (uint8_t *)b.data, b.len, 1000), KV_OK);
    struct kv_result res;
    struct end_seen end = {0};
    struct kv_sink sk = {.op_end = end_item, .arg = &end};
    CHECK_EQ_INT(kv_txn_read(kv, (uint8_t *)b.data, b.len, 999, &res, &sk), 0);
    CHECK(res.status == KV_ETXN_KEYS && !res.succeeded && end.count == 0);
    CHECK_EQ_INT(kv_txn_read(kv, (uint8_t *)b.data, b.len, 1000, &res, &sk),
                 0);
    CHECK(res.status == KV_OK && res.succeeded && end.count == 1000 &&
          res.revision == rev);
    /* A RANGE without limit walks exactly the keys of its range: here
     * the 100 from k0000 to k0099. */
    struct kv_op hundred = {.type = KV_TOP_RANGE,
                            .key = (const uint8_t *)"k00",
                            .klen = 3,
                            .value = (const uint8_t *)"k01",
                            .vlen = 3};
    pz_buf_reset(&b);
    CHECK_EQ_INT(kv_encode_txn(&b, NULL, 0, &hundred, 1, NULL, 0), 0);
    CHECK_EQ_INT(kv_txn_check(kv, (uint8_t *)b.data, b.len, 100), KV_OK);
    CHECK_EQ_INT(kv_txn_check(kv, (uint8_t *)b.data, b.len, 99), KV_ETXN_KEYS);
    /* 128 ranges of limit 2 visit 3 keys each. */
    struct kv_op many[KV_TXN_MAX];
    for (int i = 0; i < KV_TXN_MAX; i++)
        many[i] = one;
    pz_buf_reset(&b);
    CHECK_EQ_INT(kv_encode_txn(&b, NULL, 0, many, KV_TXN_MAX, NULL, 0), 0);
    CHECK_EQ_INT(kv_txn_check(kv, (uint8_t *)b.data, b.len, 3 * KV_TXN_MAX),
                 KV_OK);
    CHECK_EQ_INT(
        kv_txn_check(kv, (uint8_t *)b.data, b.len, 3 * KV_TXN_MAX - 1),
        KV_ETXN_KEYS);
    int items = 0;
    sk = (struct kv_sink){.item = count_item, .arg = &items};
    CHECK_EQ_INT(kv_txn_read(kv, (uint8_t *)b.data, b.len, 100000, &res, &sk),
                 0);
    CHECK(res.status == KV_OK && items == 2 * KV_TXN_MAX);
    /* A transaction that writes is no read. */
    struct kv_op w[2] = {put, all};
    pz_buf_reset(&b);
    CHECK_EQ_INT(kv_encode_txn(&b, NULL, 0, w, 2, NULL, 0), 0);
    CHECK(!kv_txn_readonly((uint8_t *)b.data, b.len));
    CHECK_EQ_INT(kv_txn_read(kv, (uint8_t *)b.data, b.len, 100000, &res, NULL),
                 PZ_EINVAL);
    CHECK_EQ_INT(kv_txn_check(kv, (uint8_t *)b.data, b.len, 10),
                 KV_ETXN_KEYS);
    /* The failure branch is the one counted when a comparison fails. */
    struct kv_cmp c = {.target = KV_CMP_VERSION,
                       .result = KV_CMP_EQ,
                       .key = (const uint8_t *)"k0000",
                       .klen = 5,
                       .num = 7};
    pz_buf_reset(&b);
    CHECK_EQ_INT(kv_encode_txn(&b, &c, 1, &all, 1, &one, 1), 0);
    CHECK_EQ_INT(kv_txn_check(kv, (uint8_t *)b.data, b.len, 3), KV_OK);
    c.num = 1;
    pz_buf_reset(&b);
    CHECK_EQ_INT(kv_encode_txn(&b, &c, 1, &all, 1, &one, 1), 0);
    CHECK_EQ_INT(kv_txn_check(kv, (uint8_t *)b.data, b.len, 3), KV_ETXN_KEYS);
    /* Apply refuses past KV_TXN_KEYS_MAX, whole: the put does not happen. */
    kv_reserve(kv, KV_TXN_KEYS_MAX + 1);
    for (uint32_t i = 1000; i <= KV_TXN_KEYS_MAX; i++) {
        char k[16];
        int n = snprintf(k, sizeof k, "k%07u", i);
        kv_set(kv, k, (size_t)n, "", 0);
    }
    rev = kv_revision(kv);
    pz_buf_reset(&b);
    CHECK_EQ_INT(kv_encode_txn(&b, NULL, 0, w, 2, NULL, 0), 0);
    CHECK_EQ_INT(kv_apply(kv, (uint8_t *)b.data, b.len, &res), 0);
    CHECK(res.status == KV_ETXN_KEYS && !res.succeeded);
    CHECK(kv_revision(kv) == rev && get_str(kv, "new") == NULL);
    kv_del(kv, "k0000", 5); /* now exactly KV_TXN_KEYS_MAX: applies */
    CHECK_EQ_INT(kv_apply(kv, (uint8_t *)b.data, b.len, &res), 0);
    CHECK(res.status == KV_OK && res.succeeded);
    CHECK_EQ_STR(get_str(kv, "new"), "x");
    pz_buf_free(&b);
    kv_free(kv);
}

/* Every key in order, strictly ascending, and as many as expected. */
struct order_check {
    char last[16];
    size_t lastlen;
    size_t n;
    bool bad;
};

static int order_visit(void *arg, const uint8_t *key, size_t klen,
                       const uint8_t *val, size_t vlen)
{
    struct order_check *c = arg;
    (void)val;
    (void)vlen;
    if (klen > sizeof c->last ||
        (c->n > 0 && (memcmp(c->last, key, PZ_MIN(klen, c->lastlen)) > 0 ||
                      (memcmp(c->last, key, PZ_MIN(klen, c->lastlen)) == 0 &&
                       c->lastlen >= klen)))) {
        c->bad = true;
        return 1;
    }
    memcpy(c->last, key, klen);
    c->lastlen = klen;
    c->n++;
    return 0;
}

static void check_order(struct kv *kv, size_t want)
{
    struct order_check c = {0};
    CHECK_EQ_INT(kv_foreach(kv, order_visit, &c), 0);
    CHECK(!c.bad);
    CHECK_EQ_INT(c.n, want);
    CHECK_EQ_INT(kv_count(kv), want);
}

static int first_key(void *arg, const struct kv_view *v)
{
    memcpy(arg, v->key, PZ_MIN(v->klen, 8u));
    return 1;
}

/* Keys inserted in order are appended at the skiplist's tails; the tails
 * must follow every change at the end of the list: the last keys deleted
 * (one by one and by range), the last key replaced by a put of another
 * size, keys inserted before the tail. */
TEST(append_in_order_keeps_tails)
{
    for (uint64_t seed = 1; seed <= 4; seed++) {
        struct kv *kv = kv_new_seeded(seed);
        char k[16];
        size_t n = 0;
        for (int i = 0; i < 4000; i++, n++) {
            snprintf(k, sizeof k, "k%06d", 2 * i);
            CHECK_EQ_INT(kv_set(kv, k, 7, "v", 1), 0);
        }
        check_order(kv, n);
        for (int i = 3999; i >= 3900; i--, n--) { /* the tail, one by one */
            snprintf(k, sizeof k, "k%06d", 2 * i);
            CHECK_EQ_INT(kv_del(kv, k, 7), 1);
        }
        check_order(kv, n);
        snprintf(k, sizeof k, "k%06d", 2 * 3899); /* the last, replaced */
        CHECK_EQ_INT(kv_set(kv, k, 7, "a longer value", 14), 1);
        for (int i = 3900; i < 5000; i++, n++) { /* appended again */
            snprintf(k, sizeof k, "k%06d", 2 * i);
            CHECK_EQ_INT(kv_set(kv, k, 7, "v", 1), 0);
        }
        check_order(kv, n);
        for (int i = 0; i < 5000; i += 7, n++) { /* before the tail */
            snprintf(k, sizeof k, "k%06d", 2 * i + 1);
            CHECK_EQ_INT(kv_set(kv, k, 7, "v", 1), 0);
        }
        check_order(kv, n);
        /* the end by range: keys >= k009000 */
        uint8_t cmd[64];
        struct pz_buf b = {0};
        struct kv_op op = {.type = KV_TOP_DELRANGE,
                           .key = (const uint8_t *)"k009000",
                           .klen = 7,
                           .flags = KV_RANGE_TO_END};
        CHECK_EQ_INT(kv_encode_txn(&b, NULL, 0, &op, 1, NULL, 0), 0);
        struct kv_result res;
        CHECK_EQ_INT(kv_apply(kv, (const uint8_t *)b.data, b.len, &res), 0);
        pz_buf_free(&b);
        /* even keys of i = 4500..4999, odd ones of i a multiple of 7 */
        n -= 500 + 72;
        CHECK(res.succeeded);
        check_order(kv, n);
        for (int i = 0; i < 100; i++, n++) {
            snprintf(k, sizeof k, "z%06d", i);
            CHECK_EQ_INT(kv_set(kv, k, 7, "v", 1), 0);
        }
        check_order(kv, n);
        memset(cmd, 0, sizeof cmd);
        kv_range(kv, "z000050", 7, NULL, 0, true, first_key, cmd);
        CHECK(memcmp(cmd, "z000050", 7) == 0);
        kv_free(kv);
    }
}

/* kv_restore skips the lookup for a key after every key held: a key equal
 * to the last one, or one held before it, is still refused, a key
 * between held ones is still taken, and a prefix of the last key (shorter,
 * so before it) is not taken for a key after it. */
TEST(restore_in_order_and_not)
{
    struct kv *kv = kv_new();
    struct kv_meta m = {.create_revision = 1, .mod_revision = 1,
                        .version = 1};
    CHECK_EQ_INT(kv_restore(kv, "b", 1, "1", 1, &m), 0);
    CHECK_EQ_INT(kv_restore(kv, "d", 1, "2", 1, &m), 0);
    CHECK_EQ_INT(kv_restore(kv, "dd", 2, "3", 1, &m), 0);
    CHECK_EQ_INT(kv_restore(kv, "dd", 2, "x", 1, &m), PZ_EINVAL);
    CHECK_EQ_INT(kv_restore(kv, "d", 1, "x", 1, &m), PZ_EINVAL);
    CHECK_EQ_INT(kv_restore(kv, "b", 1, "x", 1, &m), PZ_EINVAL);
    CHECK_EQ_INT(kv_restore(kv, "c", 1, "4", 1, &m), 0);
    CHECK_EQ_INT(kv_restore(kv, "", 0, "5", 1, &m), 0);
    CHECK_EQ_INT(kv_restore(kv, "", 0, "x", 1, &m), PZ_EINVAL);
    CHECK_EQ_INT(kv_count(kv), 5);
    check_order(kv, 5);
    const uint8_t *v;
    size_t vl;
    CHECK(kv_get(kv, "dd", 2, &v, &vl) && vl == 1 && v[0] == '3');
    CHECK(kv_get(kv, "c", 1, &v, &vl) && vl == 1 && v[0] == '4');
    CHECK(kv_digest_compute(kv) == kv_digest(kv));
    kv_free(kv);
}

/* At KV_REVISION_MAX a command that would change a key is refused whole
 * (KV_EREVISION), never wrapping the revision; reads, GRANT and a revoke
 * of a lease without keys still apply. */
TEST(revision_max_refuses_writes)
{
    struct kv *kv = kv_new();
    struct pz_buf b;
    pz_buf_init(&b);
    struct kv_result r;
    CHECK_EQ_INT(kv_encode_lease_grant(&b, 7, 60), 0);
    CHECK_EQ_INT(kv_apply(kv, (uint8_t *)b.data, b.len, &r), 0);
    pz_buf_reset(&b);
    CHECK_EQ_INT(kv_encode_set_lease(&b, "l", 1, "v", 1, 7), 0);
    CHECK_EQ_INT(kv_apply(kv, (uint8_t *)b.data, b.len, &r), 0);
    pz_buf_reset(&b);
    /* one below: the last write takes the highest revision */
    kv_set_revision(kv, KV_REVISION_MAX - 1);
    CHECK_EQ_INT(kv_encode_set(&b, "a", 1, "1", 1), 0);
    CHECK_EQ_INT(kv_apply(kv, (uint8_t *)b.data, b.len, &r), 0);
    CHECK(r.status == KV_OK && r.revision == KV_REVISION_MAX);
    uint64_t digest = kv_digest(kv);
    /* every writing command: refused, nothing changed */
    struct kv_op put = {.type = KV_TOP_PUT,
                        .key = (const uint8_t *)"b",
                        .klen = 1,
                        .value = (const uint8_t *)"2",
                        .vlen = 1};
    struct kv_op del = {
        .type = KV_TOP_DEL, .key = (const uint8_t *)"a", .klen = 1};
    struct kv_op get = {
        .type = KV_TOP_GET, .key = (const uint8_t *)"a", .klen = 1};
    struct kv_op getdel[2] = {get, del};
    for (int i = 0; i < 6; i++) {
        pz_buf_reset(&b);
        if (i == 0)
            CHECK_EQ_INT(kv_encode_set(&b, "a", 1, "3", 1), 0);
        else if (i == 1)
            CHECK_EQ_INT(kv_encode_set_lease(&b, "c", 1, "3", 1, 7), 0);
        else if (i == 2)
            CHECK_EQ_INT(kv_encode_del(&b, "a", 1), 0);
        else if (i == 3)
            CHECK_EQ_INT(kv_encode_txn(&b, NULL, 0, &put, 1, NULL, 0), 0);
        else if (i == 4)
            CHECK_EQ_INT(kv_encode_txn(&b, NULL, 0, getdel, 2, NULL, 0), 0);
        else
            CHECK_EQ_INT(kv_encode_lease_revoke(&b, 7), 0);
        CHECK_EQ_INT(kv_apply(kv, (uint8_t *)b.data, b.len, &r), 0);
        CHECK_EQ_INT(r.status, KV_EREVISION);
        CHECK(!r.succeeded && r.revision == KV_REVISION_MAX);
        CHECK(kv_revision(kv) == KV_REVISION_MAX);
        CHECK(kv_digest(kv) == digest && kv_count(kv) == 2);
    }
    /* what changes no key applies (the branch taken only reads) */
    pz_buf_reset(&b);
    CHECK_EQ_INT(kv_encode_txn(&b, NULL, 0, &get, 1, &del, 1), 0);
    CHECK_EQ_INT(kv_apply(kv, (uint8_t *)b.data, b.len, &r), 0);
    CHECK(r.status == KV_OK && r.succeeded);
    pz_buf_reset(&b);
    CHECK_EQ_INT(kv_encode_lease_grant(&b, 8, 60), 0);
    CHECK_EQ_INT(kv_apply(kv, (uint8_t *)b.data, b.len, &r), 0);
    CHECK_EQ_INT(r.status, KV_OK);
    pz_buf_reset(&b);
    CHECK_EQ_INT(kv_encode_lease_revoke(&b, 8), 0);
    CHECK_EQ_INT(kv_apply(kv, (uint8_t *)b.data, b.len, &r), 0);
    CHECK_EQ_INT(r.status, KV_OK);
    CHECK(kv_revision(kv) == KV_REVISION_MAX);
    CHECK(kv_digest_compute(kv) == kv_digest(kv));
    pz_buf_free(&b);
    kv_free(kv);
}

/* kv_foreach_view callback: restore each key into arg's table. */
struct load_copy {
    struct kv *to; /* the table loaded */
    int bad;       /* keys it refused */
};

static int restore_visit(void *arg, const struct kv_view *v)
{
    struct load_copy *lc = arg;
    if (kv_restore(lc->to, v->key, v->klen, v->value, v->vlen, &v->meta))
        lc->bad++;
    return 0;
}

/* Apply one encoded command to kv, which must take it. */
static bool apply_ok(struct kv *kv, struct pz_buf *b)
{
    struct kv_result r;
    bool ok = kv_apply(kv, (const uint8_t *)b->data, b->len, &r) == 0 &&
              r.status == KV_OK;
    pz_buf_reset(b);
    return ok;
}

static int span_count_visit(void *arg, const struct kv_view *v)
{
    PZ_UNUSED(v);
    (*(uint64_t *)arg)++;
    return 0;
}

/* kv_range_count against a walk of the range (no spans involved). */
static bool count_matches(struct kv *kv, const void *from, size_t flen,
                          const void *to, size_t tlen, bool to_end)
{
    uint64_t walked = 0;
    kv_range(kv, from, flen, to, tlen, to_end, span_count_visit, &walked);
    uint64_t got = kv_range_count(kv, from, flen, to, tlen, to_end);
    if (got != walked)
        fprintf(stderr, "    range count %" PRIu64 ", walk %" PRIu64 "\n", got,
                walked);
    return got == walked;
}

/* A random key of 0..4 letters of "abcd": short enough that keys repeat,
 * are prefixes of each other and fill prefix ranges. */
static size_t rand_key(uint64_t *st, char *k)
{
    size_t n = (size_t)(pz_rand_next(st) % 5);
    for (size_t i = 0; i < n; i++)
        k[i] = (char)('a' + pz_rand_next(st) % 4);
    return n;
}

/* kv_range_count for random ranges of every kind against a walk. */
static void check_counts(struct kv *kv, uint64_t *st)
{
    char a[8], b[8];
    uint8_t pe[8];
    CHECK(count_matches(kv, "", 0, NULL, 0, true)); /* the whole table */
    CHECK_EQ_INT(kv_range_count(kv, "", 0, NULL, 0, true), kv_count(kv));
    for (int i = 0; i < 40; i++) {
        size_t al = rand_key(st, a), bl = rand_key(st, b);
        CHECK(count_matches(kv, a, al, b, bl, false));  /* maybe to <= from */
        CHECK(count_matches(kv, a, al, a, al, false));  /* empty */
        CHECK(count_matches(kv, a, al, NULL, 0, true)); /* open-ended */
        a[al] = '\0'; /* [a, a "\0"): the key a alone */
        CHECK(count_matches(kv, a, al, a, al + 1, false));
        long pl = kv_prefix_end(a, al, pe); /* the prefix a */
        CHECK(count_matches(kv, a, al, pe, pl < 0 ? 0 : (size_t)pl, pl < 0));
    }
}

/* The order-statistic skiplist: after random inserts, deletes, in-place
 * and relinking replacements (leased or not), in-order appends, range
 * deletes, revokes, snapshot-style loads, grows, shrinks and rehash steps,
 * every level's links, tails and spans agree with a walk of the keys
 * (kv_index_check), and kv_range_count agrees with walks of random ranges:
 * empty, one key, prefixes, open-ended, the whole table. */
TEST(range_count_spans)
{
    struct pz_buf b;
    pz_buf_init(&b);
    for (uint64_t seed = 1; seed <= 6; seed++) {
        uint64_t st = seed * 0x9e3779b97f4a7c15ull;
        struct kv *kv = kv_new_seeded(seed);
        CHECK(kv_index_check(kv));
        check_counts(kv, &st);
        if (test_failed_flag)
            return;
        CHECK_EQ_INT(kv_encode_lease_grant(&b, 5, 60), 0);
        CHECK(apply_ok(kv, &b));
        uint64_t app = 0; /* in-order appends: "z" then a growing number */
        for (int round = 0; round < 60; round++) {
            for (int i = 0; i < 50; i++) {
                char k[16], v[40];
                size_t kl = rand_key(&st, k);
                size_t vl = (size_t)(pz_rand_next(&st) % 3) * 8;
                memset(v, 'v', sizeof v);
                switch (pz_rand_next(&st) % 8) {
                case 0:
                case 1: /* put: insert, or replace (in place or not) */
                    kv_set(kv, k, kl, v, vl);
                    break;
                case 2: /* a put attaching a lease: relinked, leased */
                    CHECK_EQ_INT(kv_encode_set_lease(&b, k, kl, v, vl, 5), 0);
                    CHECK(apply_ok(kv, &b));
                    break;
                case 3:
                case 4:
                    kv_del(kv, k, kl);
                    break;
                case 5: /* appended after every key */
                    kl = (size_t)snprintf(k, sizeof k, "z%08" PRIu64, app++);
                    CHECK_EQ_INT(kv_set(kv, k, kl, v, vl), 0);
                    break;
                case 6: { /* a range of keys deleted */
                    char e[8];
                    size_t el = rand_key(&st, e);
                    struct kv_op op = {.type = KV_TOP_DELRANGE,
                                       .key = (const uint8_t *)k,
                                       .klen = kl,
                                       .value = (const uint8_t *)e,
                                       .vlen = el};
                    CHECK_EQ_INT(kv_encode_txn(&b, NULL, 0, &op, 1, NULL, 0),
                                 0);
                    CHECK(apply_ok(kv, &b));
                    break;
                }
                default:
                    kv_rehash(kv, 1 + pz_rand_next(&st) % 4);
                }
            }
            if (round % 20 == 19) { /* the leased keys go, all at once */
                CHECK_EQ_INT(kv_encode_lease_revoke(&b, 5), 0);
                CHECK(apply_ok(kv, &b));
                CHECK_EQ_INT(kv_encode_lease_grant(&b, 5, 60), 0);
                CHECK(apply_ok(kv, &b));
            }
            CHECK(kv_index_check(kv));
            check_counts(kv, &st);
            if (test_failed_flag)
                return;
        }
        /* A snapshot-style load of what it holds into a fresh table (keys
         * in order, appended at the tails), then changes on top. */
        struct kv *ld = kv_new_seeded(seed + 100);
        CHECK_EQ_INT(kv_lease_restore(ld, 5, 60), 0);
        kv_reserve(ld, kv_count(kv));
        struct load_copy lc = {ld, 0};
        CHECK_EQ_INT(kv_foreach_view(kv, restore_visit, &lc), 0);
        CHECK(lc.bad == 0 && kv_count(ld) == kv_count(kv));
        kv_set_revision(ld, kv_revision(kv));
        CHECK(kv_digest(ld) == kv_digest(kv));
        CHECK(kv_index_check(ld));
        check_counts(ld, &st);
        for (int i = 0; i < 300; i++) {
            char k[8];
            size_t kl = rand_key(&st, k);
            if (i % 2)
                kv_del(ld, k, kl);
            else
                kv_set(ld, k, kl, "x", 1);
        }
        CHECK(kv_index_check(ld));
        check_counts(ld, &st);
        kv_free(ld);
        kv_free(kv);
        if (test_failed_flag)
            return;
    }
    pz_buf_free(&b);
}

/* --- applying in steps ------------------------------------------------------
 */

/* Everything a command reports, in order, as bytes to compare: events,
 * lease callbacks and sink calls of one table. */
static void jl_put(struct pz_buf *b, const void *p, size_t n)
{
    pz_buf_append(b, &n, sizeof n);
    if (n)
        pz_buf_append(b, p, n);
}

static void jl_view(struct pz_buf *b, const struct kv_view *v)
{
    if (v == NULL) {
        jl_put(b, "-", 1);
        return;
    }
    jl_put(b, v->key, v->klen);
    jl_put(b, v->value ? v->value : (const uint8_t *)"",
           v->value ? v->vlen : 0);
    pz_buf_append(b, &v->meta, sizeof v->meta);
}

static void jl_event(void *arg, int type, const struct kv_view *cur,
                     const struct kv_view *prev)
{
    struct pz_buf *b = arg;
    pz_buf_append(b, "E", 1);
    pz_buf_append(b, &type, sizeof type);
    jl_view(b, cur);
    jl_view(b, prev);
}

static void jl_lease(void *arg, bool granted, uint64_t id, uint64_t ttl)
{
    struct pz_buf *b = arg;
    pz_buf_append(b, granted ? "G" : "R", 1);
    pz_buf_append(b, &id, sizeof id);
    pz_buf_append(b, &ttl, sizeof ttl);
}

static void jl_begin(void *arg, size_t i, const struct kv_op *op)
{
    struct pz_buf *b = arg;
    pz_buf_append(b, "B", 1);
    pz_buf_append(b, &i, sizeof i);
    pz_buf_append(b, &op->type, sizeof op->type);
}

static void jl_item(void *arg, const struct kv_view *v)
{
    struct pz_buf *b = arg;
    pz_buf_append(b, "I", 1);
    jl_view(b, v);
}

static void jl_end(void *arg, uint64_t count, bool more)
{
    struct pz_buf *b = arg;
    pz_buf_append(b, "N", 1);
    pz_buf_append(b, &count, sizeof count);
    pz_buf_append(b, &more, sizeof more);
}

/* A random command over a small key space (two prefixes) and three
 * leases: sets, leased sets, deletes, grants, revokes and transactions
 * mixing every operation, DELRANGE over prefixes, ranges and the rest. */
static void job_cmd(struct pz_buf *b, uint64_t *rng)
{
    char k[16], e[16];
    int kl = sprintf(k, "%c/%02d", pz_rand_next(rng) % 2 ? 'a' : 'b',
                     (int)(pz_rand_next(rng) % 40));
    uint64_t lease = 1 + pz_rand_next(rng) % 3;
    switch (pz_rand_next(rng) % 8) {
    case 0:
        kv_encode_set(b, k, (size_t)kl, "v", pz_rand_next(rng) % 2);
        return;
    case 1:
    case 2:
        kv_encode_set_lease(b, k, (size_t)kl, "lv", 2, lease);
        return;
    case 3:
        kv_encode_del(b, k, (size_t)kl);
        return;
    case 4:
        if (pz_rand_next(rng) % 2)
            kv_encode_lease_grant(b, lease, 10);
        else
            kv_encode_lease_revoke(b, lease);
        return;
    default:
        break;
    }
    struct kv_cmp cmp = {.target = KV_CMP_VERSION,
                         .result = KV_CMP_GT,
                         .key = (const uint8_t *)k,
                         .klen = (size_t)kl,
                         .num = 0};
    struct kv_op ops[6];
    size_t n = 1 + pz_rand_next(rng) % 6;
    for (size_t i = 0; i < n; i++) {
        struct kv_op *o = &ops[i];
        memset(o, 0, sizeof *o);
        o->key = (const uint8_t *)k;
        o->klen = (size_t)kl;
        int el = sprintf(e, "b/%02d", (int)(pz_rand_next(rng) % 40));
        switch (pz_rand_next(rng) % 6) {
        case 0:
            o->type = KV_TOP_PUT;
            o->value = (const uint8_t *)"tv";
            o->vlen = 2;
            o->lease = pz_rand_next(rng) % 3 == 0 ? lease : 0;
            break;
        case 1:
            o->type = KV_TOP_DEL;
            break;
        case 2:
            o->type = KV_TOP_GET;
            break;
        case 3:
            o->type = KV_TOP_RANGE;
            o->value = (const uint8_t *)e;
            o->vlen = (size_t)el;
            o->limit = pz_rand_next(rng) % 4;
            break;
        default:
            o->type = KV_TOP_DELRANGE;
            o->key = (const uint8_t *)(pz_rand_next(rng) % 2 ? "a/" : "a/1");
            o->klen = strlen((const char *)o->key);
            o->value = (const uint8_t *)e;
            o->vlen = (size_t)el;
            if (pz_rand_next(rng) % 3 == 0)
                o->flags = KV_RANGE_TO_END;
            if (o->flags)
                o->vlen = 0;
            break;
        }
    }
    CHECK(kv_encode_txn(b, &cmp, 1, ops, n, ops + n / 2, n - n / 2) == 0);
}

/* One table applies every command in one go, the other in steps of a few
 * units (random budgets, 0 included): after each command both hold the
 * same keys, revision and digest, reported the same events, lease
 * callbacks, sink calls and result; while paused, the table shows the
 * revision, key count, bytes and digest from before the command. */
TEST(job_chunked_vs_oneshot)
{
    struct kv *one = kv_new_seeded(1), *step = kv_new_seeded(99);
    struct pz_buf lone, lstep, cmd;
    pz_buf_init(&lone);
    pz_buf_init(&lstep);
    pz_buf_init(&cmd);
    kv_set_event_cb(one, jl_event, &lone);
    kv_set_event_cb(step, jl_event, &lstep);
    kv_set_lease_cb(one, jl_lease, &lone);
    kv_set_lease_cb(step, jl_lease, &lstep);
    struct kv_sink sone = {jl_begin, jl_item, jl_end, &lone};
    struct kv_sink sstep = {jl_begin, jl_item, jl_end, &lstep};
    uint64_t rng = 4242;
    unsigned long pauses = 0, revoked = 0, ranged = 0;
    for (int iter = 0; iter < 30000; iter++) {
        pz_buf_reset(&cmd);
        pz_buf_reset(&lone);
        pz_buf_reset(&lstep);
        job_cmd(&cmd, &rng);
        if (test_failed_flag)
            break;
        uint64_t rev = kv_revision(step), dig = kv_digest(step);
        size_t keys = kv_count(step), bytes = kv_bytes(step);
        struct kv_result r1, r2;
        memset(&r1, 0, sizeof r1);
        memset(&r2, 0, sizeof r2);
        CHECK_EQ_INT(
            kv_apply_sink(one, (const uint8_t *)cmd.data, cmd.len, &r1, &sone),
            0);
        struct kv_job *job;
        /* The command's bytes change once started: a paused job holds a
         * copy. */
        struct pz_buf mine;
        pz_buf_init(&mine);
        pz_buf_append(&mine, cmd.data, cmd.len);
        uint64_t budget = pz_rand_next(&rng) % 3;
        CHECK_EQ_INT(kv_apply_start(step, (const uint8_t *)mine.data, mine.len,
                                    &sstep, &budget, &r2, &job),
                     0);
        memset(mine.data, 0xee, mine.len);
        pz_buf_free(&mine);
        while (job) {
            pauses++;
            CHECK(kv_paused(step));
            CHECK_EQ_INT(kv_revision(step), rev);
            CHECK_EQ_INT(kv_digest(step), dig);
            CHECK_EQ_INT(kv_count(step), keys);
            CHECK_EQ_INT(kv_bytes(step), bytes);
            budget = pz_rand_next(&rng) % 4;
            uint64_t had = budget;
            if (kv_job_run(job, &budget, &r2))
                job = NULL;
            CHECK(budget <= had);
        }
        CHECK(!kv_paused(step));
        if (r1.op == KV_OP_REVOKE && r1.deleted > 1)
            revoked++;
        if (r1.op == KV_OP_TXN && r1.succeeded)
            ranged++;
        CHECK_EQ_INT(r1.op, r2.op);
        CHECK_EQ_INT(r1.status, r2.status);
        CHECK_EQ_INT(r1.deleted, r2.deleted);
        CHECK_EQ_INT(r1.existed, r2.existed);
        CHECK_EQ_INT(r1.succeeded, r2.succeeded);
        CHECK_EQ_INT(r1.revision, r2.revision);
        CHECK_EQ_INT(kv_revision(one), kv_revision(step));
        CHECK_EQ_INT(kv_digest(one), kv_digest(step));
        CHECK_EQ_INT(kv_count(one), kv_count(step));
        CHECK_EQ_INT(lone.len, lstep.len);
        CHECK(lone.len == 0 || memcmp(lone.data, lstep.data, lone.len) == 0);
    }
    CHECK_EQ_INT(kv_digest_compute(step), kv_digest(step));
    CHECK(pauses > 1000);
    CHECK(revoked > 50);
    CHECK(ranged > 100);
    kv_free(one);
    kv_free(step);
    pz_buf_free(&lone);
    pz_buf_free(&lstep);
    pz_buf_free(&cmd);
}

/* A job dropped unfinished (the table is freed) leaks nothing and leaves
 * the table usable by kv_free; a big REVOKE and a big DELRANGE each pause
 * many times at a small budget. */
TEST(job_big_revoke_and_drop)
{
    struct kv *kv = kv_new();
    struct pz_buf cmd;
    pz_buf_init(&cmd);
    CHECK_EQ_INT(kv_apply(kv, (const uint8_t[]){0}, 0, NULL), PZ_EINVAL);
    kv_encode_lease_grant(&cmd, 7, 60);
    CHECK_EQ_INT(kv_apply(kv, (const uint8_t *)cmd.data, cmd.len, NULL), 0);
    for (int i = 0; i < 5000; i++) {
        char k[16];
        int kl = sprintf(k, "k/%05d", (i * 7919) % 5000);
        pz_buf_reset(&cmd);
        kv_encode_set_lease(&cmd, k, (size_t)kl, "v", 1, 7);
        CHECK_EQ_INT(kv_apply(kv, (const uint8_t *)cmd.data, cmd.len, NULL), 0);
    }
    uint64_t rev = kv_revision(kv);
    pz_buf_reset(&cmd);
    kv_encode_lease_revoke(&cmd, 7);
    struct kv_result r;
    struct kv_job *job;
    uint64_t budget = 100;
    CHECK_EQ_INT(kv_apply_start(kv, (const uint8_t *)cmd.data, cmd.len, NULL,
                                &budget, &r, &job),
                 0);
    CHECK_EQ_INT(budget, 0);
    int steps = 0;
    while (job) {
        struct kv_lease l;
        CHECK(kv_lease_get(kv, 7, &l));
        CHECK_EQ_INT(l.nkeys, 5000); /* as before, until the end */
        kv_lease_at(kv, 0, &l);
        CHECK_EQ_INT(l.nkeys, 5000);
        if (kv_job_run(job, &(uint64_t){100}, &r))
            break;
        steps++;
    }
    CHECK(steps > 50);
    CHECK_EQ_INT(r.deleted, 5000);
    CHECK_EQ_INT(r.revision, rev + 1);
    CHECK_EQ_INT(kv_count(kv), 0);
    CHECK_EQ_INT(kv_lease_count(kv), 0);
    /* Dropped halfway. */
    for (int i = 0; i < 1000; i++) {
        char k[16];
        int kl = sprintf(k, "p/%04d", i);
        kv_set(kv, k, (size_t)kl, "v", 1);
    }
    struct kv_op del = {.type = KV_TOP_DELRANGE,
                        .key = (const uint8_t *)"p/",
                        .klen = 2,
                        .flags = KV_RANGE_TO_END};
    pz_buf_reset(&cmd);
    CHECK_EQ_INT(kv_encode_txn(&cmd, NULL, 0, &del, 1, NULL, 0), 0);
    budget = 10;
    CHECK_EQ_INT(kv_apply_start(kv, (const uint8_t *)cmd.data, cmd.len, NULL,
                                &budget, &r, &job),
                 0);
    CHECK(job != NULL);
    CHECK(kv_paused(kv));
    CHECK_EQ_INT(kv_count(kv), 1000);
    kv_job_free(job);
    CHECK(!kv_paused(kv));
    CHECK_EQ_INT(kv_count(kv), 990);
    pz_buf_free(&cmd);
    kv_free(kv);
}

/* kv_apply_start of cmd with no sink. */
static int apply_in(struct kv *kv, const struct pz_buf *cmd, uint64_t *budget,
                    struct kv_result *r, struct kv_job **job)
{
    return kv_apply_start(kv, (const uint8_t *)cmd->data, cmd->len, NULL,
                          budget, r, job);
}

static void ops_ended(void *arg, uint64_t count, bool more)
{
    PZ_UNUSED(count);
    PZ_UNUSED(more);
    (*(int *)arg)++;
}

/* A paused transaction run with a spent budget makes progress by exactly
 * one step (a PUT): a caller out of budget still moves, and no faster. */
TEST(job_spent_budget_one_step)
{
    struct kv *kv = kv_new();
    struct kv_op puts[3];
    static const char *const keys[] = {"a", "b", "c"};
    for (int i = 0; i < 3; i++)
        puts[i] = (struct kv_op){.type = KV_TOP_PUT,
                                 .key = (const uint8_t *)keys[i],
                                 .klen = 1,
                                 .value = (const uint8_t *)"v",
                                 .vlen = 1};
    struct pz_buf cmd;
    pz_buf_init(&cmd);
    CHECK_EQ_INT(kv_encode_txn(&cmd, NULL, 0, puts, 3, NULL, 0), 0);
    int ended = 0;
    struct kv_sink sk = {.op_end = ops_ended, .arg = &ended};
    struct kv_result r;
    struct kv_job *job;
    uint64_t budget = 1;
    CHECK_EQ_INT(kv_apply_start(kv, (const uint8_t *)cmd.data, cmd.len, &sk,
                                &budget, &r, &job),
                 0);
    CHECK(job != NULL);
    CHECK_EQ_INT(ended, 1);
    CHECK_EQ_INT(budget, 0);
    CHECK(!kv_job_run(job, &budget, &r));
    CHECK_EQ_INT(ended, 2);
    CHECK_EQ_INT(budget, 0);
    CHECK(kv_job_run(job, &budget, &r));
    CHECK_EQ_INT(ended, 3);
    CHECK(r.status == KV_OK && r.succeeded);
    CHECK_EQ_INT(kv_count(kv), 3);
    CHECK_EQ_INT(kv_revision(kv), 1);
    pz_buf_free(&cmd);
    kv_free(kv);
}

/* Every command takes a unit at least: one done at once, one more per
 * 16 KiB of command; none below zero; a refused one counts as well. A
 * caller that stops at a spent budget thus stops between SETs. */
TEST(job_set_del_grant_charge)
{
    struct kv *kv = kv_new();
    struct pz_buf cmd;
    pz_buf_init(&cmd);
    struct kv_result r;
    struct kv_job *job;
    uint64_t budget = 10;
    kv_encode_set(&cmd, "a", 1, "v", 1);
    CHECK_EQ_INT(apply_in(kv, &cmd, &budget, &r, &job), 0);
    CHECK(job == NULL);
    CHECK_EQ_INT(budget, 9);
    pz_buf_reset(&cmd);
    kv_encode_del(&cmd, "a", 1);
    CHECK_EQ_INT(apply_in(kv, &cmd, &budget, &r, &job), 0);
    CHECK_EQ_INT(budget, 8);
    pz_buf_reset(&cmd);
    kv_encode_lease_grant(&cmd, 7, 60);
    CHECK_EQ_INT(apply_in(kv, &cmd, &budget, &r, &job), 0);
    CHECK_EQ_INT(budget, 7);
    pz_buf_reset(&cmd); /* refused: no such lease */
    kv_encode_set_lease(&cmd, "b", 1, "v", 1, 8);
    CHECK_EQ_INT(apply_in(kv, &cmd, &budget, &r, &job), 0);
    CHECK_EQ_INT(r.status, KV_ELEASE_NOTFOUND);
    CHECK_EQ_INT(budget, 6);
    static char big[40000];
    memset(big, 'x', sizeof big);
    pz_buf_reset(&cmd); /* 1 + 40,000 / 16,384 */
    kv_encode_set(&cmd, "c", 1, big, sizeof big);
    CHECK_EQ_INT(apply_in(kv, &cmd, &budget, &r, &job), 0);
    CHECK_EQ_INT(budget, 3);
    budget = 1;
    CHECK_EQ_INT(apply_in(kv, &cmd, &budget, &r, &job), 0);
    CHECK_EQ_INT(budget, 0);
    /* at 0: done all the same */
    CHECK_EQ_INT(apply_in(kv, &cmd, &budget, &r, &job), 0);
    CHECK(job == NULL);
    CHECK_EQ_INT(budget, 0);
    CHECK_EQ_INT(kv_count(kv), 1);
    /* Commands whose steps find nothing to do: a unit each all the same
     * (an empty transaction, a revoke of a lease with no key), and one
     * that does not decode. */
    budget = 10;
    pz_buf_reset(&cmd);
    CHECK_EQ_INT(kv_encode_txn(&cmd, NULL, 0, NULL, 0, NULL, 0), 0);
    CHECK_EQ_INT(apply_in(kv, &cmd, &budget, &r, &job), 0);
    CHECK(job == NULL);
    CHECK_EQ_INT(budget, 9);
    pz_buf_reset(&cmd);
    kv_encode_lease_revoke(&cmd, 7);
    CHECK_EQ_INT(apply_in(kv, &cmd, &budget, &r, &job), 0);
    CHECK(job == NULL);
    CHECK_EQ_INT(budget, 8);
    CHECK_EQ_INT(
        kv_apply_start(kv, (const uint8_t[]){0xff}, 1, NULL, &budget, &r, &job),
        PZ_EINVAL);
    CHECK_EQ_INT(budget, 7);
    pz_buf_free(&cmd);
    kv_free(kv);
}

static const struct test_case cases[] = {
    TEST_ENTRY(basic_ops),
    TEST_ENTRY(quota_bytes_count_keys),
    TEST_ENTRY(binary_keys_values),
    TEST_ENTRY(overwrite),
    TEST_ENTRY(value_aliases_table),
    TEST_ENTRY(delete_missing),
    TEST_ENTRY(too_big),
    TEST_ENTRY(grow_to_1m_and_shrink),
    TEST_ENTRY(reserve_loads_without_rehashing),
    TEST_ENTRY(reserve_power_of_two_exact),
    TEST_ENTRY(get_pointer_survives_rehash),
    TEST_ENTRY(foreach_during_rehash),
    TEST_ENTRY(foreach_stops),
    TEST_ENTRY(scan_during_rehash),
    TEST_ENTRY(scan_empty),
    TEST_ENTRY(encode_format),
    TEST_ENTRY(apply_roundtrip),
    TEST_ENTRY(apply_malformed),
    TEST_ENTRY(apply_fuzz),
    TEST_ENTRY(digest_order_independent),
    TEST_ENTRY(random_vs_model),
    TEST_ENTRY(job_chunked_vs_oneshot),
    TEST_ENTRY(job_big_revoke_and_drop),
    TEST_ENTRY(txn_compare_table),
    TEST_ENTRY(txn_range_vs_model),
    TEST_ENTRY(txn_malformed),
    TEST_ENTRY(events_and_range_limits),
    TEST_ENTRY(txn_sink_branch),
    TEST_ENTRY(range_count_range),
    TEST_ENTRY(txn_range_budget),
    TEST_ENTRY(job_set_del_grant_charge),
    TEST_ENTRY(job_spent_budget_one_step),
    TEST_ENTRY(append_in_order_keeps_tails),
    TEST_ENTRY(restore_in_order_and_not),
    TEST_ENTRY(revision_max_refuses_writes),
    TEST_ENTRY(range_count_spans),
    TEST_END};
const struct test_suite suite_kv = {"kv", cases};

