/* etcd_map.c - see etcd_map.h. */
#include "etcd_map.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "grpc_frame.h"

static int bytes_cmp(const uint8_t *a, size_t alen, const uint8_t *b,
                     size_t blen)
{
    size_t n = alen < blen ? alen : blen;
    int c = n ? memcmp(a, b, n) : 0;
    if (c != 0)
        return c;
    return alen < blen ? -1 : alen > blen ? 1 : 0;
}

int etcd_range_decode(const uint8_t *key, size_t klen, const uint8_t *end,
                      size_t elen, struct etcd_range *out)
{
    memset(out, 0, sizeof *out);
    if (klen == 0)
        return PZ_EINVAL;
    out->key = key;
    out->klen = klen;
    if (elen == 0) {
        out->single = true;
    } else if (elen == 1 && end[0] == 0) {
        out->to_end = true;
    } else {
        out->end = end;
        out->elen = elen;
        out->empty = bytes_cmp(end, elen, key, klen) <= 0;
    }
    return 0;
}

bool etcd_range_has(const struct etcd_range *r, const uint8_t *key, size_t klen)
{
    int c = bytes_cmp(key, klen, r->key, r->klen);
    if (r->single)
        return c == 0;
    if (c < 0 || r->empty)
        return false;
    return r->to_end || bytes_cmp(key, klen, r->end, r->elen) < 0;
}

bool etcd_range_overlap(const struct etcd_range *a, const struct etcd_range *b)
{
    if (a->empty || b->empty)
        return false;
    if (a->single)
        return etcd_range_has(b, a->key, a->klen);
    if (b->single)
        return etcd_range_has(a, b->key, b->klen);
    /* Two intervals [s, e): they meet when each starts before the other
     * ends. */
    bool a_before_b_end =
        b->to_end || bytes_cmp(a->key, a->klen, b->end, b->elen) < 0;
    bool b_before_a_end =
        a->to_end || bytes_cmp(b->key, b->klen, a->end, a->elen) < 0;
    return a_before_b_end && b_before_a_end;
}

/* A CREATE or MOD comparison with a positive operand v, in etcd's
 * numbers, onto the store's: a key that exists has revision r >= 1 here
 * and r + 1 >= 2 in etcd's numbers, one that does not 0 in both. So
 * etcd's "x = 1" never holds (and "x != 1" always does); otherwise x op v
 * is r op v - 1 for a key that exists, and holds for a missing key (0 op
 * v) as 0 op v - 1 does, except LESS than 1, which must hold for it: r <
 * 1 never holds for a key that exists, and 0 < 1 does. */
static int cmp_revision(int result, int64_t v, struct kv_cmp *c)
{
    if (v == 1 && (result == ETCD_CMP_EQUAL || result == ETCD_CMP_NOT_EQUAL)) {
        bool holds = result == ETCD_CMP_NOT_EQUAL;
        c->result = holds ? KV_CMP_NE : KV_CMP_LT;
        c->num = holds ? UINT64_MAX : 0; /* always holds: never holds */
        return 0;
    }
    c->num = result == ETCD_CMP_LESS && v == 1 ? 1 : (uint64_t)(v - 1);
    return 0;
}

int etcd_cmp_map(int result, int target, const uint8_t *key, size_t klen,
                 int target_case, int64_t num, const uint8_t *value,
                 size_t vlen, struct kv_cmp *c)
{
    static const int results[] = {[ETCD_CMP_EQUAL] = KV_CMP_EQ,
                                  [ETCD_CMP_GREATER] = KV_CMP_GT,
                                  [ETCD_CMP_LESS] = KV_CMP_LT,
                                  [ETCD_CMP_NOT_EQUAL] = KV_CMP_NE};
    static const int targets[] = {[ETCD_TGT_VERSION] = KV_CMP_VERSION,
                                  [ETCD_TGT_CREATE] = KV_CMP_CREATE,
                                  [ETCD_TGT_MOD] = KV_CMP_MOD,
                                  [ETCD_TGT_VALUE] = KV_CMP_VALUE,
                                  [ETCD_TGT_LEASE] = KV_CMP_LEASE};
    memset(c, 0, sizeof *c);
    if (result < 0 || result > ETCD_CMP_NOT_EQUAL || target < 0 ||
        target > ETCD_TGT_LEASE)
        return PZ_EINVAL;
    c->result = results[result];
    c->target = targets[target];
    c->key = key;
    c->klen = klen;
    if (target == ETCD_TGT_VALUE) {
        if (target_case == ETCD_TGT_VALUE) {
            c->value = value;
            c->vlen = vlen;
        } else {
            c->value = (const uint8_t *)"";
        }
        return 0;
    }
    if (target_case != target)
        num = 0;
    if ((target == ETCD_TGT_CREATE || target == ETCD_TGT_MOD) && num > 0)
        return cmp_revision(result, num, c);
    if (num >= 0) {
        c->num = (uint64_t)num;
    } else if (result == ETCD_CMP_GREATER || result == ETCD_CMP_NOT_EQUAL) {
        c->result = KV_CMP_NE; /* always holds */
        c->num = UINT64_MAX;
    } else {
        c->result = KV_CMP_LT; /* never holds */
        c->num = 0;
    }
    return 0;
}

bool etcd_filter_keep(const struct etcd_filter *f, const struct kv_meta *m)
{
    int64_t mod = etcd_key_rev(m->mod_revision),
            cre = etcd_key_rev(m->create_revision);
    /* As etcd: a bound other than 0 counts, a negative one too (a
     * maximum below 1 keeps nothing). */
    if (f->min_mod != 0 && mod < f->min_mod)
        return false;
    if (f->max_mod != 0 && mod > f->max_mod)
        return false;
    if (f->min_create != 0 && cre < f->min_create)
        return false;
    if (f->max_create != 0 && cre > f->max_create)
        return false;
    return true;
}

int etcd_sort_order(int order, int target)
{
    if (order == ETCD_SORT_NONE && target != ETCD_SORT_KEY)
        return ETCD_SORT_ASCEND;
    if (order == ETCD_SORT_ASCEND && target == ETCD_SORT_KEY)
        return ETCD_SORT_NONE; /* the table's order already */
    return order;
}

static int field_cmp(const struct kv_view *a, const struct kv_view *b,
                     int target)
{
    uint64_t x, y;
    switch (target) {
    case ETCD_SORT_VERSION:
        x = a->meta.version, y = b->meta.version;
        break;
    case ETCD_SORT_CREATE:
        x = a->meta.create_revision, y = b->meta.create_revision;
        break;
    case ETCD_SORT_MOD:
        x = a->meta.mod_revision, y = b->meta.mod_revision;
        break;
    case ETCD_SORT_VALUE:
        return bytes_cmp(a->value, a->vlen, b->value, b->vlen);
    default:
        return bytes_cmp(a->key, a->klen, b->key, b->klen);
    }
    return x < y ? -1 : x > y;
}

struct sort_ctx {
    int order, target;
};

static int view_cmp(const void *pa, const void *pb, void *arg)
{
    const struct sort_ctx *s = arg;
    const struct kv_view *a = pa, *b = pb;
    int c = field_cmp(a, b, s->target);
    if (s->order == ETCD_SORT_DESCEND)
        c = -c;
    if (c == 0) /* stable: keys ascending among equals */
        c = bytes_cmp(a->key, a->klen, b->key, b->klen);
    return c;
}

void etcd_sort_views(struct kv_view *v, size_t n, int order, int target)
{
    struct sort_ctx s = {order, target};
    if (n > 1 && order != ETCD_SORT_NONE)
        qsort_r(v, n, sizeof *v, view_cmp, &s);
}

/* The comparison a selection in (order, target) uses. */
static struct sort_ctx select_ctx(int order, int target)
{
    if (order == ETCD_SORT_NONE) /* the table's order: keys ascending */
        return (struct sort_ctx){ETCD_SORT_ASCEND, ETCD_SORT_KEY};
    return (struct sort_ctx){order, target};
}

bool etcd_select_takes(const struct kv_view *v, size_t n, size_t k,
                       const struct kv_view *x, int order, int target)
{
    struct sort_ctx s = select_ctx(order, target);
    return n < k || view_cmp(x, &v[0], &s) < 0;
}

/* x replaces the root of the n views and sinks below the views that come
 * after it. The root is never read. */
static void select_sink(struct kv_view *v, size_t n, const struct kv_view *x,
                        struct sort_ctx s)
{
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && view_cmp(&v[c + 1], &v[c], &s) > 0)
            c++;
        if (view_cmp(&v[c], x, &s) <= 0)
            break;
        v[i] = v[c];
        i = c;
    }
    v[i] = *x;
}

void etcd_select_replace(struct kv_view *v, size_t n, const struct kv_view *x,
                         int order, int target)
{
    select_sink(v, n, x, select_ctx(order, target));
}

void etcd_select_view(struct kv_view *v, size_t *n, size_t k,
                      const struct kv_view *x, int order, int target)
{
    struct sort_ctx s = select_ctx(order, target);
    if (*n < k) {
        /* Room left: x goes in at the bottom and rises past every view
         * that comes before it (the root is the one that comes last). */
        size_t i = (*n)++;
        while (i > 0 && view_cmp(&v[(i - 1) / 2], x, &s) < 0) {
            v[i] = v[(i - 1) / 2];
            i = (i - 1) / 2;
        }
        v[i] = *x;
        return;
    }
    if (view_cmp(x, &v[0], &s) >= 0)
        return; /* comes after every view kept: not among the first k */
    select_sink(v, *n, x, s);
}

int etcd_watch_keys(const uint8_t *key, size_t klen, const uint8_t *end,
                    size_t elen, struct etcd_watch_keys *out)
{
    static const uint8_t zero[1] = {0};
    memset(out, 0, sizeof *out);
    if (klen == 0) {
        key = zero;
        klen = 1;
    }
    struct etcd_range rg;
    etcd_range_decode(key, klen, end, elen, &rg);
    if (rg.empty)
        return PZ_EINVAL;
    out->from = pz_memdup(key, klen);
    out->flen = klen;
    if (rg.single) {
        out->to = pz_malloc(klen + 1);
        memcpy(out->to, key, klen);
        out->to[klen] = 0;
        out->tlen = klen + 1;
    } else if (!rg.to_end) {
        out->to = pz_memdup(end, elen);
        out->tlen = elen;
    }
    return 0;
}

void etcd_watch_keys_free(struct etcd_watch_keys *k)
{
    pz_free(k->from);
    pz_free(k->to);
    memset(k, 0, sizeof *k);
}

/* A negative start is refused, not answered as compacted: etcd 3.4 reads
 * it as a revision before its compaction point, which gives a store never
 * compacted a compact_revision of -1 (or, for -1, a watch from its next
 * sync), and one compacted its compaction point. Either way the client is
 * sent somewhere it never asked for: a client that resumes from
 * compact_revision would replay the whole history, or send -1 again. */
int etcd_watch_start(int64_t start_revision, uint64_t cur, uint64_t first,
                     uint64_t *start)
{
    if (start_revision < 0)
        return PZ_EINVAL;
    if (start_revision == 0) {
        *start = cur + 1;
        return 0;
    }
    uint64_t s = start_revision > 1 ? (uint64_t)start_revision - 1 : 1;
    if (s < first)
        return PZ_ENOTFOUND;
    *start = s;
    return 0;
}

int etcd_node_status(int rv, bool write, char *msg, size_t cap)
{
    const char *m;
    int code = GRPC_UNAVAILABLE;
    switch (rv) {
    case PZ_ENOTLEADER:
    case PZ_ENOLEADER:
        m = "etcdserver: no leader";
        break;
    case PZ_ETIMEDOUT:
        m = "etcdserver: request timed out";
        break;
    case PZ_ELEADERCHANGE:
        m = write ? "etcdserver: request timed out, possibly due to "
                    "previous leader failure"
                  : "etcdserver: leader changed";
        break;
    case PZ_EBUSY:
        m = "etcdserver: leader changed";
        break;
    case PZ_EOVERLOAD: /* etcd's ErrTooManyRequests */
        code = GRPC_RESOURCE_EXHAUSTED;
        m = "etcdserver: too many requests";
        break;
    case PZ_ESHUTDOWN:
        m = "etcdserver: server stopped";
        break;
    case PZ_ETOOBIG:
        code = GRPC_INVALID_ARGUMENT;
        m = "etcdserver: request is too large";
        break;
    case PZ_ENOSPC:
        code = GRPC_RESOURCE_EXHAUSTED;
        m = "etcdserver: mvcc: database space exceeded";
        break;
    default:
        snprintf(msg, cap, "etcdserver: %s failed: %s",
                 write ? "replication" : "read", pz_strerror(rv));
        return write ? GRPC_INTERNAL : GRPC_UNAVAILABLE;
    }
    snprintf(msg, cap, "%s", m);
    return code;
}
