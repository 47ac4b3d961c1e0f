/* test_etcd_map.c - etcd's key range conventions, comparisons mapped onto
 * kv_cmp (checked by applying them to a real table), Range filters and
 * sort orders, the bounded selection of a sorted and limited Range, a
 * Watch's keys and start. */
#include <string.h>

#include "etcd_map.h"
#include "grpc_frame.h"
#include "kv.h"
#include "test.h"

#define B(s) (const uint8_t *)(s), (sizeof(s) - 1)

TEST(range_conventions)
{
    struct etcd_range r;
    CHECK_EQ_INT(etcd_range_decode(B(""), NULL, 0, &r), PZ_EINVAL);
    /* empty range_end: one key */
    CHECK_EQ_INT(etcd_range_decode(B("a"), NULL, 0, &r), 0);
    CHECK(r.single && !r.to_end && !r.empty);
    CHECK(etcd_range_has(&r, B("a")));
    CHECK(!etcd_range_has(&r, B("a0")));
    /* "\0": every key from key on */
    CHECK_EQ_INT(etcd_range_decode(B("b"), B("\0"), &r), 0);
    CHECK(r.to_end && !r.single);
    CHECK(!etcd_range_has(&r, B("a")));
    CHECK(etcd_range_has(&r, B("b")));
    CHECK(etcd_range_has(&r, B("\xff\xff")));
    /* the whole key space as etcdctl writes it: key "\0", end "\0" */
    CHECK_EQ_INT(etcd_range_decode(B("\0"), B("\0"), &r), 0);
    CHECK(r.to_end && etcd_range_has(&r, B("\x01")));
    /* a prefix as prefix+1 */
    CHECK_EQ_INT(etcd_range_decode(B("ab"), B("ac"), &r), 0);
    CHECK(!r.single && !r.to_end && !r.empty);
    CHECK(etcd_range_has(&r, B("ab")));
    CHECK(etcd_range_has(&r, B("ab\xff")));
    CHECK(!etcd_range_has(&r, B("ac")));
    CHECK(!etcd_range_has(&r, B("aa")));
    /* prefix with the table's own rule agrees */
    uint8_t end[8];
    CHECK_EQ_INT(kv_prefix_end(B("a\xff"), end), 1);
    CHECK_EQ_INT(end[0], 'b');
    /* range_end <= key: empty */
    CHECK_EQ_INT(etcd_range_decode(B("b"), B("a"), &r), 0);
    CHECK(r.empty && !etcd_range_has(&r, B("b")));
    CHECK_EQ_INT(etcd_range_decode(B("b"), B("b"), &r), 0);
    CHECK(r.empty);
}

/* Keys come as slices of a request's buffer, followed by other bytes
 * (no NUL): comparisons read only their own length. */
TEST(range_keys_are_slices)
{
    /* "abz": the key "ab" followed by a byte that sorts after "abc" */
    const uint8_t buf[] = {'a', 'b', 'z', 'b', 'b', 0xff};
    const uint8_t *ab = buf, *bb = buf + 3;
    struct etcd_range r;
    CHECK_EQ_INT(etcd_range_decode(ab, 2, B("abc"), &r), 0);
    CHECK(!r.empty);
    CHECK(etcd_range_has(&r, ab, 2));
    CHECK(etcd_range_has(&r, B("abb")));
    CHECK(!etcd_range_has(&r, B("abc")));
    /* the end a slice too: [a, ab) holds "a" and "aa", not "ab" */
    CHECK_EQ_INT(etcd_range_decode(B("a"), ab, 2, &r), 0);
    CHECK(!r.empty);
    CHECK(etcd_range_has(&r, B("aa")));
    CHECK(!etcd_range_has(&r, ab, 2));
    /* [ab, bb): a slice at each end, of the same length */
    CHECK_EQ_INT(etcd_range_decode(ab, 2, bb, 2, &r), 0);
    CHECK(!r.empty);
    CHECK(etcd_range_has(&r, B("ba")));
    CHECK(!etcd_range_has(&r, bb, 2));
    /* one key given as a slice matches only itself */
    CHECK_EQ_INT(etcd_range_decode(ab, 2, NULL, 0, &r), 0);
    CHECK(etcd_range_has(&r, B("ab")));
    CHECK(!etcd_range_has(&r, B("abz")));
}

TEST(watch_keys_and_start)
{
    struct etcd_watch_keys k;
    /* one key K: [K, K "\0") */
    CHECK_EQ_INT(etcd_watch_keys(B("ab"), NULL, 0, &k), 0);
    CHECK(k.flen == 2 && memcmp(k.from, "ab", 2) == 0);
    CHECK(k.tlen == 3 && memcmp(k.to, "ab\0", 3) == 0);
    etcd_watch_keys_free(&k);
    /* an empty key is "\0"; with "\0" as end: every key */
    CHECK_EQ_INT(etcd_watch_keys(NULL, 0, B("\0"), &k), 0);
    CHECK(k.flen == 1 && k.from[0] == 0 && k.to == NULL);
    etcd_watch_keys_free(&k);
    /* an empty key alone: the key "\0" */
    CHECK_EQ_INT(etcd_watch_keys(NULL, 0, NULL, 0, &k), 0);
    CHECK(k.flen == 1 && k.tlen == 2 && k.to[0] == 0 && k.to[1] == 0);
    etcd_watch_keys_free(&k);
    /* from key on */
    CHECK_EQ_INT(etcd_watch_keys(B("m"), B("\0"), &k), 0);
    CHECK(k.to == NULL && k.flen == 1 && k.from[0] == 'm');
    etcd_watch_keys_free(&k);
    /* a prefix as prefix+1 */
    CHECK_EQ_INT(etcd_watch_keys(B("p/"), B("p0"), &k), 0);
    CHECK(k.tlen == 2 && memcmp(k.to, "p0", 2) == 0);
    etcd_watch_keys_free(&k);
    /* end <= key: empty, nothing allocated */
    CHECK_EQ_INT(etcd_watch_keys(B("b"), B("a"), &k), PZ_EINVAL);
    CHECK(k.from == NULL && k.to == NULL);
    CHECK_EQ_INT(etcd_watch_keys(B("b"), B("b"), &k), PZ_EINVAL);

    /* start_revision in etcd's numbers (the store's + 1), *start in the
     * store's */
    uint64_t start = 0;
    CHECK(etcd_watch_start(0, 41, 5, &start) == 0 && start == 42);
    CHECK(etcd_watch_start(6, 41, 5, &start) == 0 && start == 5);
    CHECK(etcd_watch_start(100, 41, 5, &start) == 0 && start == 99);
    CHECK_EQ_INT(etcd_watch_start(5, 41, 5, &start), PZ_ENOTFOUND);
    /* etcd's 1 names no write: from the first, as 2 does */
    CHECK(etcd_watch_start(2, 41, 1, &start) == 0 && start == 1);
    CHECK(etcd_watch_start(1, 41, 1, &start) == 0 && start == 1);
    CHECK_EQ_INT(etcd_watch_start(1, 41, 2, &start), PZ_ENOTFOUND);
    /* negative: no revision, not compacted, whatever the history holds */
    CHECK_EQ_INT(etcd_watch_start(-1, 41, 1, &start), PZ_EINVAL);
    CHECK_EQ_INT(etcd_watch_start(-2, 41, 5, &start), PZ_EINVAL);
    CHECK_EQ_INT(etcd_watch_start(INT64_MIN, 0, 1, &start), PZ_EINVAL);
    CHECK(etcd_watch_start(1, 0, 1, &start) == 0 && start == 1);
}

TEST(range_overlap)
{
    struct etcd_range a, b;
    etcd_range_decode(B("k"), NULL, 0, &a);
    etcd_range_decode(B("k"), NULL, 0, &b);
    CHECK(etcd_range_overlap(&a, &b));
    etcd_range_decode(B("j"), B("l"), &b);
    CHECK(etcd_range_overlap(&a, &b) && etcd_range_overlap(&b, &a));
    etcd_range_decode(B("a"), B("k"), &b); /* end exclusive */
    CHECK(!etcd_range_overlap(&a, &b));
    etcd_range_decode(B("k\x01"), B("\0"), &b);
    CHECK(!etcd_range_overlap(&a, &b));
    etcd_range_decode(B("a"), B("c"), &a);
    etcd_range_decode(B("b"), B("\0"), &b);
    CHECK(etcd_range_overlap(&a, &b));
    etcd_range_decode(B("c"), B("\0"), &b);
    CHECK(!etcd_range_overlap(&a, &b));
    etcd_range_decode(B("z"), B("a"), &b); /* empty range */
    CHECK(!etcd_range_overlap(&a, &b));
}

/* Apply one mapped comparison to a table holding k (version 2, value
 * "v2"): 1 if it held, 0 if not, -1 if it could not be mapped or run. */
static int holds(struct kv *kv, int result, int target, int tcase, int64_t num,
                 const char *val, const char *key)
{
    struct kv_cmp c;
    if (etcd_cmp_map(result, target, (const uint8_t *)key, strlen(key), tcase,
                     num, (const uint8_t *)val, val ? strlen(val) : 0, &c) != 0)
        return -1;
    struct pz_buf cmd;
    pz_buf_init(&cmd);
    struct kv_result res;
    int rv = kv_encode_txn(&cmd, &c, 1, NULL, 0, NULL, 0);
    if (rv == 0)
        rv = kv_apply(kv, (uint8_t *)cmd.data, cmd.len, &res);
    pz_buf_free(&cmd);
    return rv != 0 ? -1 : res.succeeded;
}

TEST(compare_mapping)
{
    struct kv *kv = kv_new();
    kv_set(kv, B("k"), B("v1"));
    kv_set(kv, B("k"), B("v2")); /* version 2 */
    enum {
        EQ = ETCD_CMP_EQUAL,
        GT = ETCD_CMP_GREATER,
        LT = ETCD_CMP_LESS,
        NE = ETCD_CMP_NOT_EQUAL
    };
    int V = ETCD_TGT_VERSION, VAL = ETCD_TGT_VALUE;
    CHECK(holds(kv, EQ, V, V, 2, NULL, "k") == 1);
    CHECK(holds(kv, EQ, V, V, 1, NULL, "k") == 0);
    CHECK(holds(kv, GT, V, V, 1, NULL, "k") == 1);
    CHECK(holds(kv, GT, V, V, 2, NULL, "k") == 0);
    CHECK(holds(kv, LT, V, V, 3, NULL, "k") == 1);
    CHECK(holds(kv, NE, V, V, 3, NULL, "k") == 1);
    /* negative operands: etcd compares signed numbers */
    CHECK(holds(kv, GT, V, V, -1, NULL, "k") == 1);
    CHECK(holds(kv, LT, V, V, -1, NULL, "k") == 0);
    CHECK(holds(kv, EQ, V, V, -1, NULL, "k") == 0);
    CHECK(holds(kv, NE, V, V, -1, NULL, "k") == 1);
    CHECK(holds(kv, GT, V, V, -5, NULL, "absent") == 1);
    /* an operand of another oneof member counts as 0 */
    CHECK(holds(kv, GT, V, ETCD_TGT_MOD, 99, NULL, "k") == 1);
    /* absent key: version/create 0, so create = 0 means "missing" */
    CHECK(holds(kv, EQ, ETCD_TGT_CREATE, ETCD_TGT_CREATE, 0, NULL, "absent") ==
          1);
    CHECK(holds(kv, EQ, ETCD_TGT_CREATE, ETCD_TGT_CREATE, 0, NULL, "k") == 0);
    /* values bytewise; never true for a missing key */
    CHECK(holds(kv, EQ, VAL, VAL, 0, "v2", "k") == 1);
    CHECK(holds(kv, GT, VAL, VAL, 0, "v1", "k") == 1);
    CHECK(holds(kv, LT, VAL, VAL, 0, "v3", "k") == 1);
    CHECK(holds(kv, NE, VAL, VAL, 0, "zz", "absent") == 0);
    CHECK(holds(kv, NE, VAL, -1, 0, NULL, "k") == 1); /* no operand: "" */
    /* mod (the store's 2, etcd's 3) and lease */
    CHECK(holds(kv, EQ, ETCD_TGT_MOD, ETCD_TGT_MOD, 3, NULL, "k") == 1);
    CHECK(holds(kv, EQ, ETCD_TGT_MOD, ETCD_TGT_MOD, 2, NULL, "k") == 0);
    CHECK(holds(kv, EQ, ETCD_TGT_LEASE, ETCD_TGT_LEASE, 0, NULL, "k") == 1);
    struct kv_cmp c;
    CHECK_EQ_INT(etcd_cmp_map(4, V, B("k"), V, 0, NULL, 0, &c), PZ_EINVAL);
    CHECK_EQ_INT(etcd_cmp_map(EQ, 5, B("k"), V, 0, NULL, 0, &c), PZ_EINVAL);
    CHECK_EQ_INT(etcd_cmp_map(-1, V, B("k"), V, 0, NULL, 0, &c), PZ_EINVAL);
    kv_free(kv);
}

/* CREATE and MOD comparisons hold as etcd's do on etcd's numbers: a key
 * that exists at the store's revision r is at r + 1 there, a missing one
 * at 0. Every result, both targets, operands around the edges, for keys
 * written at the store's revisions 1 to 3 and a missing one. */
TEST(compare_revisions_in_etcd_numbers)
{
    struct kv *kv = kv_new();
    kv_set(kv, B("k"), B("v1")); /* create 1, mod 1 */
    kv_set(kv, B("k"), B("v2")); /* mod 2 */
    kv_set(kv, B("j"), B("v"));  /* create 3, mod 3 */
    struct {
        const char *key;
        int64_t create, mod; /* etcd's numbers */
    } keys[] = {{"k", 2, 3}, {"j", 4, 4}, {"absent", 0, 0}};
    int targets[] = {ETCD_TGT_CREATE, ETCD_TGT_MOD};
    int cases = 0;
    for (size_t k = 0; k < PZ_ARRAY_SIZE(keys); k++)
        for (size_t t = 0; t < 2; t++)
            for (int result = ETCD_CMP_EQUAL; result <= ETCD_CMP_NOT_EQUAL;
                 result++)
                for (int64_t v = -2; v <= 6; v++) {
                    int64_t x = targets[t] == ETCD_TGT_CREATE ? keys[k].create
                                                              : keys[k].mod;
                    bool want = result == ETCD_CMP_EQUAL     ? x == v
                                : result == ETCD_CMP_GREATER ? x > v
                                : result == ETCD_CMP_LESS    ? x < v
                                                             : x != v;
                    int got = holds(kv, result, targets[t], targets[t], v, NULL,
                                    keys[k].key);
                    if (got != (int)want)
                        fprintf(stderr, "    %s target %d result %d v %lld\n",
                                keys[k].key, targets[t], result, (long long)v);
                    CHECK_EQ_INT(got, (int)want);
                    cases++;
                }
    CHECK_EQ_INT(cases, 3 * 2 * 4 * 9);
    kv_free(kv);
}

static struct kv_view view(const char *k, const char *v, uint64_t cre,
                           uint64_t mod, uint64_t ver)
{
    struct kv_view x = {(const uint8_t *)k,
                        strlen(k),
                        (const uint8_t *)v,
                        strlen(v),
                        {cre, mod, ver, 0}};
    return x;
}

TEST(filters_and_sort)
{
    /* bounds in etcd's numbers: the store's create 3, mod 7 are etcd's 4
     * and 8 */
    struct etcd_filter f = {0, 0, 0, 0};
    struct kv_meta m = {3, 7, 2, 0};
    CHECK(etcd_filter_keep(&f, &m));
    f.min_mod = 9;
    CHECK(!etcd_filter_keep(&f, &m));
    f.min_mod = 8;
    f.max_mod = 8;
    CHECK(etcd_filter_keep(&f, &m));
    f.max_mod = 7;
    CHECK(!etcd_filter_keep(&f, &m));
    f.max_mod = 0;
    f.max_create = 3;
    CHECK(!etcd_filter_keep(&f, &m));
    f.max_create = 4;
    CHECK(etcd_filter_keep(&f, &m));
    f.max_create = 0;
    f.min_create = 5;
    CHECK(!etcd_filter_keep(&f, &m));
    /* etcd's election bound for a write at etcd's revision 2 (the store's
     * first): max_create_revision 1 keeps no key */
    struct kv_meta first = {1, 1, 1, 0};
    struct etcd_filter below = {0, 0, 0, 1};
    CHECK(!etcd_filter_keep(&below, &first));
    /* negative bounds count, as etcd's: a maximum below 1 keeps nothing,
     * a minimum below 1 everything */
    struct etcd_filter neg = {-1, 0, -5, 0};
    CHECK(etcd_filter_keep(&neg, &m));
    neg.max_mod = -1;
    CHECK(!etcd_filter_keep(&neg, &m));
    neg.max_mod = 0;
    neg.max_create = -3;
    CHECK(!etcd_filter_keep(&neg, &m));

    CHECK_EQ_INT(etcd_sort_order(ETCD_SORT_NONE, ETCD_SORT_KEY),
                 ETCD_SORT_NONE);
    CHECK_EQ_INT(etcd_sort_order(ETCD_SORT_NONE, ETCD_SORT_MOD),
                 ETCD_SORT_ASCEND);
    CHECK_EQ_INT(etcd_sort_order(ETCD_SORT_ASCEND, ETCD_SORT_KEY),
                 ETCD_SORT_NONE);
    CHECK_EQ_INT(etcd_sort_order(ETCD_SORT_DESCEND, ETCD_SORT_KEY),
                 ETCD_SORT_DESCEND);

    struct kv_view v[4] = {view("a", "z", 1, 9, 1), view("b", "y", 2, 5, 3),
                           view("c", "y", 3, 6, 2), view("d", "x", 4, 7, 1)};
    etcd_sort_views(v, 4, ETCD_SORT_DESCEND, ETCD_SORT_KEY);
    CHECK(v[0].key[0] == 'd' && v[3].key[0] == 'a');
    etcd_sort_views(v, 4, ETCD_SORT_ASCEND, ETCD_SORT_MOD);
    CHECK(v[0].key[0] == 'b' && v[1].key[0] == 'c' && v[2].key[0] == 'd' &&
          v[3].key[0] == 'a');
    /* equal values keep key order */
    etcd_sort_views(v, 4, ETCD_SORT_ASCEND, ETCD_SORT_VALUE);
    CHECK(v[0].key[0] == 'd' && v[1].key[0] == 'b' && v[2].key[0] == 'c' &&
          v[3].key[0] == 'a');
    etcd_sort_views(v, 4, ETCD_SORT_DESCEND, ETCD_SORT_VERSION);
    CHECK(v[0].key[0] == 'b' && v[1].key[0] == 'c' && v[2].key[0] == 'a' &&
          v[3].key[0] == 'd');
    etcd_sort_views(v, 4, ETCD_SORT_DESCEND, ETCD_SORT_CREATE);
    CHECK(v[0].key[0] == 'd' && v[3].key[0] == 'a');
}

/* Select the first k of n views, offered in the order given, and sort
 * them: true when they are exactly the first k of all n sorted (a copy),
 * in the same order. As a Txn's range does: a view is offered only when
 * etcd_select_takes says it enters (etcd_select_view while there is room,
 * then etcd_select_replace, which must evict the root without reading
 * it); and with etcd_select_view alone, offered every view. */
static bool select_same_one(const struct kv_view *in, size_t n, size_t k,
                            int order, int target, bool takes)
{
    struct kv_view all[64], heap[64];
    size_t kept = 0;
    for (size_t i = 0; i < n; i++) {
        if (!takes) {
            etcd_select_view(heap, &kept, k, &in[i], order, target);
            continue;
        }
        if (!etcd_select_takes(heap, kept, k, &in[i], order, target))
            continue;
        if (kept < k) {
            etcd_select_view(heap, &kept, k, &in[i], order, target);
            continue;
        }
        const uint8_t *root = heap[0].key;
        heap[0].key = heap[0].value = NULL; /* reused by the caller */
        etcd_select_replace(heap, kept, &in[i], order, target);
        for (size_t j = 0; j < kept; j++)
            if (heap[j].key == root || heap[j].key == NULL)
                return false; /* the root is still there */
    }
    if (n)
        memcpy(all, in, n * sizeof *in);
    /* NONE selects in the table's order: keys ascending */
    int o = order == ETCD_SORT_NONE ? ETCD_SORT_ASCEND : order;
    int t = order == ETCD_SORT_NONE ? ETCD_SORT_KEY : target;
    etcd_sort_views(all, n, o, t);
    etcd_sort_views(heap, kept, o, t);
    if (kept != (k < n ? k : n))
        return false;
    for (size_t i = 0; i < kept; i++)
        if (heap[i].key != all[i].key)
            return false;
    return true;
}

static bool select_same(const struct kv_view *in, size_t n, size_t k, int order,
                        int target)
{
    return select_same_one(in, n, k, order, target, false) &&
           select_same_one(in, n, k, order, target, true);
}

TEST(select_first_views)
{
    /* Equal fields come in key order, in both directions: the sort's
     * order, which a selection must give as well. */
    struct kv_view v[5] = {view("c", "1", 2, 9, 1), view("a", "1", 2, 7, 1),
                           view("e", "0", 1, 8, 2), view("b", "2", 3, 7, 1),
                           view("d", "1", 3, 6, 2)};
    struct kv_view h[5];
    size_t n = 0;
    for (size_t i = 0; i < 5; i++)
        etcd_select_view(h, &n, 2, &v[i], ETCD_SORT_DESCEND, ETCD_SORT_CREATE);
    CHECK_EQ_INT(n, 2);
    etcd_sort_views(h, n, ETCD_SORT_DESCEND, ETCD_SORT_CREATE);
    CHECK(h[0].key[0] == 'b' && h[1].key[0] == 'd');
    n = 0;
    for (size_t i = 0; i < 5; i++)
        etcd_select_view(h, &n, 3, &v[i], ETCD_SORT_ASCEND, ETCD_SORT_VALUE);
    etcd_sort_views(h, n, ETCD_SORT_ASCEND, ETCD_SORT_VALUE);
    CHECK_EQ_INT(n, 3);
    CHECK(h[0].key[0] == 'e' && h[1].key[0] == 'a' && h[2].key[0] == 'c');
    n = 0;
    for (size_t i = 0; i < 5; i++)
        etcd_select_view(h, &n, 1, &v[i], ETCD_SORT_ASCEND, ETCD_SORT_MOD);
    CHECK(n == 1 && h[0].key[0] == 'd');
    n = 0;
    for (size_t i = 0; i < 5; i++)
        etcd_select_view(h, &n, 1, &v[i], ETCD_SORT_DESCEND, ETCD_SORT_VERSION);
    CHECK(n == 1 && h[0].key[0] == 'd'); /* 'e' and 'd' at 2: 'd' first */
    n = 0;
    for (size_t i = 0; i < 5; i++)
        etcd_select_view(h, &n, 1, &v[i], ETCD_SORT_DESCEND, ETCD_SORT_KEY);
    CHECK(n == 1 && h[0].key[0] == 'e');

    /* Every target and order, k from 1 to past n, on views with many
     * equal fields offered in no particular order. */
    static char keys[40][4], vals[40][2];
    struct kv_view w[40];
    uint64_t x = 12345;
    for (size_t i = 0; i < 40; i++) {
        x = x * 6364136223846793005ULL + 1442695040888963407ULL;
        size_t kk = (i * 17) % 40; /* keys not in the order offered */
        keys[i][0] = (char)('a' + kk / 10);
        keys[i][1] = (char)('0' + kk % 10);
        keys[i][2] = 0;
        vals[i][0] = (char)('a' + (x >> 33) % 4);
        vals[i][1] = 0;
        w[i] = view(keys[i], vals[i], 1 + (x >> 40) % 5, 1 + (x >> 45) % 7,
                    1 + (x >> 50) % 3);
    }
    static const int targets[] = {ETCD_SORT_KEY, ETCD_SORT_VERSION,
                                  ETCD_SORT_CREATE, ETCD_SORT_MOD,
                                  ETCD_SORT_VALUE};
    static const int orders[] = {ETCD_SORT_NONE, ETCD_SORT_ASCEND,
                                 ETCD_SORT_DESCEND};
    static const size_t ks[] = {1, 2, 3, 7, 39, 40, 41, 64};
    for (size_t t = 0; t < PZ_ARRAY_SIZE(targets); t++)
        for (size_t o = 0; o < PZ_ARRAY_SIZE(orders); o++)
            for (size_t j = 0; j < PZ_ARRAY_SIZE(ks); j++)
                CHECK(select_same(w, 40, ks[j], orders[o], targets[t]));
    /* fewer views than k: all of them */
    CHECK(select_same(w, 1, 5, ETCD_SORT_ASCEND, ETCD_SORT_CREATE));
    CHECK(select_same(w, 0, 5, ETCD_SORT_DESCEND, ETCD_SORT_MOD));
}

/* etcd's rpctypes errors (etcd 3.4 api/v3rpc/rpctypes/error.go): what
 * clients match on, for the gRPC calls and the gateway alike. */
TEST(node_status)
{
    static const struct {
        int rv;
        bool write;
        int code;
        const char *msg; /* the whole message, or its start (ends in ": ") */
    } want[] = {
        {PZ_ENOLEADER, true, GRPC_UNAVAILABLE, "etcdserver: no leader"},
        {PZ_ENOTLEADER, false, GRPC_UNAVAILABLE, "etcdserver: no leader"},
        /* a refused proposal: the same answer for a write and a read */
        {PZ_EBUSY, true, GRPC_UNAVAILABLE, "etcdserver: leader changed"},
        {PZ_EBUSY, false, GRPC_UNAVAILABLE, "etcdserver: leader changed"},
        {PZ_EOVERLOAD, true, GRPC_RESOURCE_EXHAUSTED,
         "etcdserver: too many requests"},
        {PZ_ELEADERCHANGE, true, GRPC_UNAVAILABLE,
         "etcdserver: request timed out, possibly due to previous leader "
         "failure"},
        {PZ_ELEADERCHANGE, false, GRPC_UNAVAILABLE,
         "etcdserver: leader changed"},
        /* ErrGRPCRequestTooLarge */
        {PZ_ETOOBIG, true, GRPC_INVALID_ARGUMENT,
         "etcdserver: request is too large"},
        {PZ_ETIMEDOUT, false, GRPC_UNAVAILABLE,
         "etcdserver: request timed out"},
        {PZ_ESHUTDOWN, true, GRPC_UNAVAILABLE, "etcdserver: server stopped"},
        {PZ_ENOSPC, true, GRPC_RESOURCE_EXHAUSTED,
         "etcdserver: mvcc: database space exceeded"},
        {PZ_EIO, true, GRPC_INTERNAL, "etcdserver: replication failed: "},
        {PZ_EIO, false, GRPC_UNAVAILABLE, "etcdserver: read failed: "},
    };
    for (size_t i = 0; i < PZ_ARRAY_SIZE(want); i++) {
        char m[160];
        size_t n = strlen(want[i].msg);
        bool prefix = want[i].msg[n - 1] == ' ';
        CHECK_EQ_INT(etcd_node_status(want[i].rv, want[i].write, m, sizeof m),
                     want[i].code);
        CHECK(prefix ? strncmp(m, want[i].msg, n) == 0
                     : strcmp(m, want[i].msg) == 0);
    }
}

static const struct test_case cases[] = {
    TEST_ENTRY(range_conventions),
    TEST_ENTRY(range_keys_are_slices),
    TEST_ENTRY(range_overlap),
    TEST_ENTRY(watch_keys_and_start),
    TEST_ENTRY(compare_mapping),
    TEST_ENTRY(compare_revisions_in_etcd_numbers),
    TEST_ENTRY(filters_and_sort),
    TEST_ENTRY(select_first_views),
    TEST_ENTRY(node_status),
    TEST_END,
};

const struct test_suite suite_etcd_map = {"etcd_map", cases};
