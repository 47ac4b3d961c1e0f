/* etcd_kv.c - etcdserverpb.KV (etcd.h): Range, Put, DeleteRange, Txn,
 * Compact, and the helpers every etcd call shares.
 *
 * Range reads the local table once node_read says it may (ReadIndex, or at
 * once when serializable): one walk over [key, end) counts every key (etcd's
 * count ignores limit and filters) and collects views borrowed from the
 * table; then filters, sort and limit apply and the answer is packed before
 * the loop turns. Without a sort or a filter only the first `limit` views
 * are kept; sorted (or filtered) with a limit, only the `limit` + 1 views
 * that come first in the order asked (a bounded heap: etcd_select_view),
 * so a lock or election's "oldest key under a prefix" costs one walk and
 * O(limit) memory; sorted or filtered without a limit, every key's view
 * (a few pointers each) is. An answer whose keys and values would pass
 * grpc-max-message fails with RESOURCE_EXHAUSTED instead of being built.
 *
 * Put, DeleteRange and Txn each become one transaction command (kv.h) and
 * their results come back through a kv_sink while the command applies on
 * the leader: previous values (prev_kv), counts, a Txn's reads. Items are
 * copied out of the table only for operations that asked for them, and
 * for a range only those a Range of the same request would keep
 * (range_pick: the branch taken's request says, since the command carries
 * no sort): a sorted or filtered one with a limit holds at most the
 * limit + 1 keys that come first in its order, whatever it walks. At
 * most grpc-max-message bytes are held in all, each item counted with the
 * connection's answers against max-pending-output before it is copied
 * (grpc_stream_reserve): the results of every call a batch of writes
 * applies exist at once, before any is sent, so an item with no room
 * stops the copying and the call fails with RESOURCE_EXHAUSTED. Once the
 * answer is packed (and counts itself until it is written) the items and
 * their count are given back at once, not with the stream. Put with
 * ignore_value or ignore_lease needs the key's current value or lease, which
 * the command format cannot name: the leader reads the key, proposes a put
 * guarded by "mod_revision unchanged" carrying the old value or lease, and
 * tries again (at most IGNORE_TRIES times) when another write came between. */
#include "etcd.h"

#include <stdlib.h>
#include <string.h>

#include "conn.h"
#include "etcd_map.h"
#include "grpc_frame.h"
#include "grpc_pb.h"
#include "kv.h"
#include "node.h"

#define IGNORE_TRIES 8 /* Put with ignore_value/ignore_lease: retries */

/* --- shared helpers --------------------------------------------------------
 */

void etcd_header(Etcdserverpb__ResponseHeader *h, uint64_t rev,
                 const struct node_status *ns)
{
    Etcdserverpb__ResponseHeader init = ETCDSERVERPB__RESPONSE_HEADER__INIT;
    *h = init;
    h->revision = etcd_rev(rev);
    if (ns) {
        h->cluster_id = ns->cluster_id;
        h->member_id = ns->self_id;
        h->raft_term = ns->term;
    } else {
        node_ids(&h->cluster_id, &h->member_id, &h->raft_term);
    }
}

void etcd_reply(struct gstream *st, const ProtobufCMessage *m)
{
    size_t n = protobuf_c_message_get_packed_size(m);
    if (!grpc_stream_fits(st, n)) {
        /* Over max-pending-output: the connection is closing, the answer
         * would be dropped; it is not packed. */
        grpc_stream_fail(st, GRPC_RESOURCE_EXHAUSTED,
                         "etcdserver: the response would take the answers "
                         "waiting for clients past max-pending-output");
        return;
    }
    uint8_t *b = pz_malloc(n + 1);
    protobuf_c_message_pack(m, b);
    grpc_stream_reply(st, b, n);
    pz_free(b);
}

void etcd_node_error(struct gstream *st, int rv, bool write)
{
    if (rv == PZ_ENOTLEADER) {
        grpc_stream_forward(st);
        return;
    }
    char m[160];
    int code = etcd_node_status(rv, write, m, sizeof m);
    grpc_stream_fail(st, code, "%s", m);
}

ProtobufCMessage *etcd_unpack(struct gstream *st,
                              const ProtobufCMessageDescriptor *desc)
{
    ProtobufCMessage *m = grpc_stream_unpacked(st, desc);
    if (m)
        return m; /* the token check unpacked it */
    size_t len, held = 0;
    const uint8_t *msg = grpc_stream_msg(st, &len);
    ProtobufCAllocator a = grpc_pb_counting(&held);
    m = protobuf_c_message_unpack(desc, &a, len, msg);
    if (m == NULL) {
        grpc_stream_fail(st, GRPC_INVALID_ARGUMENT,
                         "request is not a valid %s message", desc->name);
        return NULL;
    }
    if (!grpc_stream_hold_unpacked(st, held)) {
        protobuf_c_message_free_unpacked(m, &grpc_pb_allocator);
        return NULL; /* ended: the budget is full */
    }
    return m;
}

void etcd_call(struct gstream *st, int call)
{
    if (grpc_stream_deadline_passed(st))
        return;
    if (call <= ETCD_COMPACT)
        etcd_kv_call(st, call);
    else if (call >= ETCD_LEASE_GRANT && call <= ETCD_LEASE_LEASES)
        etcd_lease_call(st, call);
    else
        etcd_cluster_call(st, call);
}

void etcd_stream_message(struct gstream *st, int call)
{
    if (call == ETCD_WATCH)
        etcd_watch_message(st);
    else
        etcd_lease_keepalive_message(st);
}

void etcd_stream_end(struct gstream *st, int call)
{
    if (call == ETCD_WATCH)
        etcd_watch_end(st);
    else
        etcd_lease_keepalive_end(st);
}

/* --- what a range keeps ------------------------------------------------- */

/* What a key counts in range_build's measure of an answer beside its key
 * and value bytes (its record's fields and framing, roughly). */
#define RANGE_KEY_COST 32

static bool range_has_filter(const Etcdserverpb__RangeRequest *q)
{
    return q->min_mod_revision != 0 || q->max_mod_revision != 0 ||
           q->min_create_revision != 0 || q->max_create_revision != 0;
}

/* Which of a range's keys its answer can be made of, from the request
 * alone: what a Range's walk collects (range_reply) and what a Txn's range
 * copies (sink_item) as the keys go by, before range_build filters, sorts
 * and limits them. */
struct rpick {
    struct etcd_filter f;
    bool filter; /* only the keys f keeps */
    size_t keep; /* then at most the first this many (SIZE_MAX: all) */
    size_t top;  /* > 0: only the top keys that come first in (order,
                    target), a bounded heap (etcd_select_view) */
    int order, target;
};

static struct rpick range_pick(const Etcdserverpb__RangeRequest *q)
{
    struct rpick p = {.f = {q->min_mod_revision, q->max_mod_revision,
                            q->min_create_revision, q->max_create_revision},
                      .filter = range_has_filter(q),
                      .keep = SIZE_MAX};
    bool sorted = (int)q->sort_order != ETCD_SORT_NONE;
    int order = etcd_sort_order(q->sort_order, q->sort_target);
    if (q->limit > 0) {
        /* range_build keeps the first limit views of its order (and one
         * more says `more`). Without a sort or a filter these are the
         * first limit + 1 keys (range_build's rule), as they are when the
         * order is the table's; else the limit + 1 views that come first
         * in it, whichever keys they are, are selected as the walk goes:
         * the same views range_build would sort first, without keeping
         * every other. */
        if ((!sorted && !p.filter) || order == ETCD_SORT_NONE) {
            p.keep = (size_t)q->limit + 1;
        } else {
            p.top = (size_t)q->limit + 1;
            p.order = order;
            p.target = (int)q->sort_target;
        }
    }
    return p;
}

/* --- per-call state ------------------------------------------------------ */

/* Results of one operation of a transaction (or of a Put/DeleteRange). */
struct eop {
    struct kv_view *items; /* copies (one allocation each, in .key) */
    size_t n, cap;
    uint64_t count; /* op_end's count */
    bool want;      /* keep its items */
    bool wrote;     /* it, or an earlier operation of the branch, wrote */
};

struct ekv {
    int call;
    ProtobufCMessage *req; /* the unpacked request */
    struct eop *ops;       /* per operation index of the branch taken */
    size_t nops;
    size_t cur;       /* operation being applied */
    size_t bytes;     /* bytes copied into items */
    size_t max_bytes; /* grpc-max-message */
    bool over;        /* items passed max_bytes: some were dropped */
    bool no_room;     /* an item had no room in max-pending-output */
    struct gstream *st; /* the call's stream */
    size_t reserved;    /* bytes counted for items (grpc_stream_reserve) */
    int cur_type;     /* KV_TOP_* of the operation being applied */
    bool wrote;       /* an operation so far changed the table */
    struct kv_sink sink;
    int tries; /* ignore_value/ignore_lease attempts */
    bool confirmed; /* put_ignore: its linearizable read was asked for */
    bool readonly; /* a Txn without writes (run after a read, not logged) */
    bool failure;  /* a Txn's compares failed: its failure branch runs */
    struct rpick pick; /* what the operation being applied keeps */
};

/* Free the items copied for e's operations. */
static void ekv_items_free(struct ekv *e)
{
    for (size_t i = 0; i < e->nops; i++) {
        for (size_t j = 0; j < e->ops[i].n; j++)
            pz_free((void *)e->ops[i].items[j].key);
        pz_free(e->ops[i].items);
        e->ops[i].items = NULL;
        e->ops[i].n = e->ops[i].cap = 0;
    }
    e->bytes = 0;
}

static void ekv_free(void *p)
{
    struct ekv *e = p;
    if (e == NULL)
        return;
    ekv_items_free(e);
    pz_cache_free(e->ops);
    if (e->req)
        protobuf_c_message_free_unpacked(e->req, &grpc_pb_allocator);
    pz_cache_free(e);
}

static void sink_branch(void *arg, bool succeeded)
{
    struct ekv *e = arg;
    e->failure = !succeeded;
}

static void sink_begin(void *arg, size_t i, const struct kv_op *op)
{
    struct ekv *e = arg;
    e->cur = i;
    e->cur_type = op->type;
    e->pick = (struct rpick){.keep = SIZE_MAX};
    if (e->call != ETCD_TXN || op->type != KV_TOP_RANGE)
        return;
    /* A Txn's range keeps what a Range of the same request would: the
     * command carries no sort, so the request of the branch taken says. */
    const Etcdserverpb__TxnRequest *q =
        (const Etcdserverpb__TxnRequest *)e->req;
    Etcdserverpb__RequestOp **ops = e->failure ? q->failure : q->success;
    size_t n = e->failure ? q->n_failure : q->n_success;
    if (i < n &&
        ops[i]->request_case == ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_RANGE)
        e->pick = range_pick(ops[i]->request_range);
}

static void kv_of_view(Mvccpb__KeyValue *kv, const struct kv_view *v,
                       bool keys_only);

/* An item's size in the answer: the record, its tag and length prefix. */
static size_t item_estimate(const struct kv_view *v)
{
    Mvccpb__KeyValue pb;
    kv_of_view(&pb, v, false);
    return mvccpb__key_value__get_packed_size(&pb) + 6;
}

/* Copy v out of the table into the items of the operation being applied,
 * as far as they are wanted and there is room. A range keeps what
 * e->pick says (range_pick): a sorted, limited one only the limit + 1
 * keys that come first in its order, as a heap whose root is the last of
 * them; a key that would not enter is not copied, and the copy a new one
 * evicts is freed and no longer counted, so what is held stays O(limit)
 * however many keys the range walks. */
static void sink_item(void *arg, const struct kv_view *v)
{
    struct ekv *e = arg;
    if (e->cur >= e->nops || !e->ops[e->cur].want || e->over || e->no_room)
        return;
    struct eop *o = &e->ops[e->cur];
    const struct rpick *p = &e->pick;
    if ((p->filter && !etcd_filter_keep(&p->f, &v->meta)) || o->n >= p->keep)
        return;
    bool full = p->top && o->n >= p->top; /* v evicts the root, if taken */
    if (p->top &&
        !etcd_select_takes(o->items, o->n, p->top, v, p->order, p->target))
        return;
    size_t vlen = v->value ? v->vlen : 0;
    size_t out = full ? o->items[0].klen + o->items[0].vlen : 0;
    if (e->bytes - out + v->klen + vlen > e->max_bytes) {
        e->over = true;
        return;
    }
    size_t est = item_estimate(v);
    if (!grpc_stream_reserve(e->st, est)) {
        e->no_room = true;
        return;
    }
    e->reserved += est;
    e->bytes += v->klen + vlen;
    uint8_t *b = NULL;
    if (full) {
        /* The root is evicted: no longer counted, and its copy's room
         * (out + 2 bytes) is v's when v fits, as it mostly does (keys
         * and values of a prefix alike), so that a walk every key of
         * which enters (an order against the keys') allocates nothing. */
        struct kv_view old = o->items[0];
        size_t oest = item_estimate(&old);
        grpc_stream_charge(e->st, 0, oest);
        e->reserved -= oest;
        e->bytes -= out;
        if (out >= v->klen + vlen)
            b = (uint8_t *)old.key;
        else
            pz_free((void *)old.key);
    } else if (o->n == o->cap) {
        o->cap = o->cap ? 2 * o->cap : 4;
        o->items = pz_realloc(o->items, o->cap * sizeof *o->items);
    }
    if (b == NULL)
        b = pz_malloc(v->klen + vlen + 2);
    memcpy(b, v->key, v->klen);
    b[v->klen] = 0;
    if (vlen)
        memcpy(b + v->klen + 1, v->value, vlen);
    b[v->klen + 1 + vlen] = 0;
    struct kv_view c = *v;
    c.key = b;
    c.value = v->value ? b + v->klen + 1 : NULL;
    c.vlen = vlen;
    if (full)
        etcd_select_replace(o->items, o->n, &c, p->order, p->target);
    else if (p->top)
        etcd_select_view(o->items, &o->n, p->top, &c, p->order, p->target);
    else
        o->items[o->n++] = c;
}

static void sink_end(void *arg, uint64_t count, bool more)
{
    struct ekv *e = arg;
    PZ_UNUSED(more);
    if (e->cur < e->nops)
        e->ops[e->cur].count = count;
    if (e->cur_type == KV_TOP_PUT ||
        ((e->cur_type == KV_TOP_DEL || e->cur_type == KV_TOP_DELRANGE) &&
         count > 0))
        e->wrote = true;
    if (e->cur < e->nops)
        e->ops[e->cur].wrote = e->wrote;
}

static struct ekv *ekv_new(struct gstream *st, int call, ProtobufCMessage *req,
                           size_t nops)
{
    /* Made and dropped for every call: from the small-block cache. */
    struct ekv *e = pz_cache_calloc(1, sizeof *e);
    e->call = call;
    e->req = req;
    e->nops = nops;
    e->ops = pz_cache_calloc(nops ? nops : 1, sizeof *e->ops);
    e->max_bytes = grpc_stream_server(st)->max_message;
    e->st = st;
    e->sink = (struct kv_sink){.branch = sink_branch,
                               .op_begin = sink_begin,
                               .item = sink_item,
                               .op_end = sink_end,
                               .arg = e,
                               .count_range = true};
    grpc_stream_set_ext(st, e, ekv_free);
    return e;
}

/* --- key-value records ---------------------------------------------------- */

static void kv_of_view(Mvccpb__KeyValue *kv, const struct kv_view *v,
                       bool keys_only)
{
    Mvccpb__KeyValue init = MVCCPB__KEY_VALUE__INIT;
    *kv = init;
    kv->key.data = (uint8_t *)v->key;
    kv->key.len = v->klen;
    if (!keys_only && v->value) {
        kv->value.data = (uint8_t *)v->value;
        kv->value.len = v->vlen;
    }
    kv->create_revision = etcd_key_rev(v->meta.create_revision);
    kv->mod_revision = etcd_key_rev(v->meta.mod_revision);
    kv->version = (int64_t)v->meta.version;
    kv->lease = (int64_t)v->meta.lease;
}

/* Views collected by a range walk. */
struct vlist {
    struct kv_view *v;
    size_t n, cap;
    uint64_t count; /* keys in the range */
    size_t keep;    /* collect at most this many (SIZE_MAX: all) */
    size_t top;     /* > 0: keep only the top views that come first in
                       (order, target), a heap (etcd_select_view) */
    int order, target;
    bool collect;   /* false: count only */
    const struct etcd_filter *filter; /* collect only what it keeps */
    bool values;    /* values count toward bytes (not keys_only) */
    size_t bytes;   /* range_build's measure of what was collected */
    size_t max;     /* the answer's bytes (range_build's measure) past
                       it: stop (grpc-max-message) */
    bool over;      /* max was passed: the answer cannot be built */
};

/* Make room for one more view. */
static void vlist_room(struct vlist *l)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 16;
        l->v = pz_realloc(l->v, l->cap * sizeof *l->v);
    }
}

static void vlist_push(struct vlist *l, const struct kv_view *v)
{
    vlist_room(l);
    l->v[l->n++] = *v;
}

static int vlist_visit(void *arg, const struct kv_view *v)
{
    struct vlist *l = arg;
    l->count++;
    if (!l->collect || l->n >= l->keep || l->over ||
        (l->filter && !etcd_filter_keep(l->filter, &v->meta)))
        return 0;
    if (l->top) {
        if (l->n < l->top)
            vlist_room(l);
        etcd_select_view(l->v, &l->n, l->top, v, l->order, l->target);
        /* The answer holds at least as many views as are kept, up to the
         * limit, and each counts at least RANGE_KEY_COST in it: past
         * max / RANGE_KEY_COST of them it cannot be built, whichever they
         * end up being. So a limit past the range holds no more views than
         * an unlimited range does. */
        if (PZ_MIN(l->n, l->top - 1) > l->max / RANGE_KEY_COST)
            l->over = true;
        return l->over; /* over: the rest is only counted */
    }
    vlist_push(l, v);
    /* The view kept past the limit only says `more`: not in the answer. */
    if (l->n < l->keep)
        l->bytes += v->klen + (l->values ? v->vlen : 0) + RANGE_KEY_COST;
    if (l->bytes > l->max)
        l->over = true;
    /* Past the limit, or over: the rest is only counted. */
    return l->n >= l->keep || l->over;
}

/* Filter, sort and limit the views of a range and fill r (kvs point into
 * the views; storage for them in *kvs_out, free with pz_free). Returns
 * false when the answer would pass max bytes. */
static bool range_build(const Etcdserverpb__RangeRequest *q, struct kv_view *v,
                        size_t n, uint64_t count, size_t max,
                        Etcdserverpb__RangeResponse *r,
                        Mvccpb__KeyValue **kvs_out)
{
    struct etcd_filter f = {q->min_mod_revision, q->max_mod_revision,
                            q->min_create_revision, q->max_create_revision};
    /* As etcd: without a sort order or a filter in the request, only the
     * first limit + 1 keys (in key order) are read, and a sort target
     * other than KEY then orders just those. */
    if (q->limit > 0 && (int)q->sort_order == ETCD_SORT_NONE &&
        !range_has_filter(q) && n > (uint64_t)q->limit + 1)
        n = (size_t)q->limit + 1;
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        if (etcd_filter_keep(&f, &v[i].meta))
            v[m++] = v[i];
    etcd_sort_views(v, m, etcd_sort_order(q->sort_order, q->sort_target),
                    q->sort_target);
    r->count = (int64_t)count;
    if (q->limit > 0 && m > (uint64_t)q->limit) {
        m = (size_t)q->limit;
        r->more = true;
    } else if (q->limit > 0 && !q->count_only && count > m &&
               !range_has_filter(q)) {
        r->more = true; /* keys past the limit were not collected */
    }
    if (q->count_only)
        m = 0;
    size_t bytes = 0;
    for (size_t i = 0; i < m; i++)
        bytes += v[i].klen + (q->keys_only ? 0 : v[i].vlen) + RANGE_KEY_COST;
    if (bytes > max)
        return false;
    Mvccpb__KeyValue *kvs = pz_calloc(m ? m : 1, sizeof *kvs);
    r->kvs = pz_calloc(m ? m : 1, sizeof *r->kvs);
    for (size_t i = 0; i < m; i++) {
        kv_of_view(&kvs[i], &v[i], q->keys_only);
        r->kvs[i] = &kvs[i];
    }
    r->n_kvs = m;
    *kvs_out = kvs;
    return true;
}

/* A request's revision (etcd's number; 0: the current one) against the
 * node's: only the current one can be read (there is no history). */
static int check_revision(struct gstream *st, int64_t want, uint64_t cur)
{
    if (want <= 0 || want == etcd_rev(cur))
        return 0;
    if (want > etcd_rev(cur))
        grpc_stream_fail(
            st, GRPC_OUT_OF_RANGE,
            "etcdserver: mvcc: required revision is a future revision");
    else
        grpc_stream_fail(
            st, GRPC_OUT_OF_RANGE,
            "etcdserver: mvcc: required revision has been compacted");
    return -1;
}

/* --- Range ------------------------------------------------------------ */

static void range_reply(struct gstream *st, struct ekv *e)
{
    const Etcdserverpb__RangeRequest *q =
        (const Etcdserverpb__RangeRequest *)e->req;
    struct kv *kv = node_kv();
    uint64_t rev = kv_revision(kv);
    if (check_revision(st, q->revision, rev) < 0)
        return;
    struct etcd_range rg;
    etcd_range_decode(q->key.data, q->key.len, q->range_end.data,
                      q->range_end.len, &rg);
    struct rpick p = range_pick(q);
    struct vlist l = {.keep = p.keep,
                      .top = p.top,
                      .order = p.order,
                      .target = p.target,
                      .collect = !q->count_only,
                      .values = !q->keys_only,
                      .max = e->max_bytes}; /* stop past it */
    if (p.filter)
        l.filter = &p.f; /* only the views the filter keeps */
    if (rg.single) {
        struct kv_view v;
        if (kv_get_view(kv, rg.key, rg.klen, &v))
            vlist_visit(&l, &v);
    } else if (!rg.empty) {
        /* What is not collected (all of it with count_only, what follows
         * the first limit + 1 keys) is counted without a walk, in
         * O(log n): count is every key of the range, as etcd's. */
        if (q->count_only || kv_range(kv, rg.key, rg.klen, rg.end, rg.elen,
                                      rg.to_end, vlist_visit, &l) != 0)
            l.count =
                kv_range_count(kv, rg.key, rg.klen, rg.end, rg.elen, rg.to_end);
    }
    Etcdserverpb__RangeResponse r = ETCDSERVERPB__RANGE_RESPONSE__INIT;
    Etcdserverpb__ResponseHeader h;
    etcd_header(&h, rev, NULL);
    r.header = &h;
    Mvccpb__KeyValue *kvs = NULL;
    if (l.over || !range_build(q, l.v, l.n, l.count, e->max_bytes, &r, &kvs)) {
        grpc_stream_fail(st, GRPC_RESOURCE_EXHAUSTED,
                         "etcdserver: range response is larger than "
                         "grpc-max-message (%zu bytes): use a limit",
                         e->max_bytes);
    } else {
        etcd_reply(st, &r.base);
    }
    pz_free(kvs);
    pz_free(r.kvs);
    pz_free(l.v);
}

/* A range held until its client had room for the answer. */
static void range_resume(struct gstream *st)
{
    range_reply(st, grpc_stream_ext(st));
}

static void on_read(struct node_req *req, int status)
{
    struct gstream *st = grpc_stream_of(req);
    struct ekv *e = grpc_stream_ext(st);
    grpc_stream_in_node(st, false);
    if (status < 0) {
        etcd_node_error(st, status, false);
    } else if (e->call == ETCD_RANGE) {
        if (!grpc_stream_hold_read(st, range_resume))
            range_reply(st, e);
    } else { /* ETCD_COMPACT */
        const Etcdserverpb__CompactionRequest *q =
            (const Etcdserverpb__CompactionRequest *)e->req;
        uint64_t rev = kv_revision(node_kv());
        if (q->revision > etcd_rev(rev)) {
            grpc_stream_fail(
                st, GRPC_OUT_OF_RANGE,
                "etcdserver: mvcc: required revision is a future revision");
        } else {
            Etcdserverpb__CompactionResponse r =
                ETCDSERVERPB__COMPACTION_RESPONSE__INIT;
            Etcdserverpb__ResponseHeader h;
            etcd_header(&h, rev, NULL);
            r.header = &h;
            etcd_reply(st, &r.base);
        }
    }
    grpc_stream_flush(st);
}

static void start_read(struct gstream *st, bool stale)
{
    grpc_stream_in_node(st, true);
    int rv = node_read(grpc_stream_req(st), stale, on_read);
    if (rv < 0) {
        grpc_stream_in_node(st, false);
        etcd_node_error(st, rv, false);
    }
}

static bool key_ok(struct gstream *st, size_t klen)
{
    if (klen == 0) {
        grpc_stream_fail(st, GRPC_INVALID_ARGUMENT,
                         "etcdserver: key is not provided");
        return false;
    }
    if (klen > grpc_stream_server(st)->max_key) {
        grpc_stream_fail(st, GRPC_INVALID_ARGUMENT,
                         "etcdserver: request is too large");
        return false;
    }
    return true;
}

/* --- writes ----------------------------------------------------------- */

static void write_done(struct node_req *req, int status);

static void on_leader_known(struct node_req *req, int status)
{
    struct gstream *st = grpc_stream_of(req);
    struct ekv *e = grpc_stream_ext(st);
    grpc_stream_in_node(st, false);
    if (status < 0)
        grpc_stream_fail(st, GRPC_UNAVAILABLE, "etcdserver: no leader");
    else
        etcd_kv_call(st, e->call); /* here, or forwarded */
    grpc_stream_flush(st);
}

static void propose(struct gstream *st, struct ekv *e, struct pz_buf *cmd)
{
    struct node_req *req = grpc_stream_req(st);
    grpc_stream_in_node(st, true);
    int rv = node_propose_sink(req, (const uint8_t *)cmd->data, cmd->len,
                               &e->sink, write_done);
    if (rv == 0)
        return;
    if (rv == PZ_ENOLEADER) {
        node_wait_leader(req, on_leader_known);
        return;
    }
    grpc_stream_in_node(st, false);
    etcd_node_error(st, rv, true);
}

static void fill_kv(Mvccpb__KeyValue *kv, const struct eop *o, size_t i)
{
    kv_of_view(kv, &o->items[i], false);
}

static void put_reply(struct gstream *st, struct ekv *e, uint64_t rev)
{
    const Etcdserverpb__PutRequest *q =
        (const Etcdserverpb__PutRequest *)e->req;
    Etcdserverpb__PutResponse r = ETCDSERVERPB__PUT_RESPONSE__INIT;
    Etcdserverpb__ResponseHeader h;
    Mvccpb__KeyValue prev;
    etcd_header(&h, rev, NULL);
    r.header = &h;
    if (q->prev_kv && e->ops[0].n > 0) {
        fill_kv(&prev, &e->ops[0], 0);
        r.prev_kv = &prev;
    }
    etcd_reply(st, &r.base);
}

static void del_fill(const Etcdserverpb__DeleteRangeRequest *q,
                     const struct eop *o, Etcdserverpb__DeleteRangeResponse *r,
                     Mvccpb__KeyValue **kvs_out)
{
    r->deleted = (int64_t)o->count;
    Mvccpb__KeyValue *kvs = NULL;
    if (q->prev_kv && o->n) {
        kvs = pz_calloc(o->n, sizeof *kvs);
        r->prev_kvs = pz_calloc(o->n, sizeof *r->prev_kvs);
        for (size_t i = 0; i < o->n; i++) {
            fill_kv(&kvs[i], o, i);
            r->prev_kvs[i] = &kvs[i];
        }
        r->n_prev_kvs = o->n;
    }
    *kvs_out = kvs;
}

static void txn_reply(struct gstream *st, struct ekv *e, uint64_t rev,
                      bool succeeded);

static void put_ignore(struct gstream *st, struct ekv *e);

static void write_done(struct node_req *req, int status)
{
    struct gstream *st = grpc_stream_of(req);
    struct ekv *e = grpc_stream_ext(st);
    grpc_stream_in_node(st, false);
    /* The items counted while they were copied: the answer made of them
     * counts itself as it is sent. */
    grpc_stream_charge(st, 0, e->reserved);
    e->reserved = 0;
    if (status < 0) {
        ekv_items_free(e);
        etcd_node_error(st, status, true);
        grpc_stream_flush(st);
        return;
    }
    uint64_t rev = req->res.revision;
    if (req->res.status == KV_ELEASE_NOTFOUND) {
        /* A put named a lease that does not exist: nothing was written. */
        grpc_stream_fail(st, GRPC_NOT_FOUND,
                         "etcdserver: requested lease not found");
    } else if (req->res.status == KV_EREVISION) {
        grpc_stream_fail(st, GRPC_RESOURCE_EXHAUSTED,
                         "etcdserver: the revision is at its maximum "
                         "(2^62 - 1): the write was refused, nothing was "
                         "done");
    } else if (req->res.status == KV_ETXN_KEYS) {
        grpc_stream_fail(st, GRPC_RESOURCE_EXHAUSTED,
                         "etcdserver: the txn's ranges would read more "
                         "than txn-max-range-keys keys: nothing was done");
    } else if (e->no_room && e->readonly) {
        grpc_stream_fail(st, GRPC_RESOURCE_EXHAUSTED,
                         "etcdserver: the txn response would take the "
                         "answers waiting for clients past "
                         "max-pending-output (%zu bytes): retry later",
                         conn_output_max());
    } else if (e->no_room) {
        grpc_stream_fail(st, GRPC_RESOURCE_EXHAUSTED,
                         "etcdserver: the write was applied at revision "
                         "%lld, but its response would take the answers "
                         "waiting for clients past max-pending-output (%zu "
                         "bytes)",
                         (long long)etcd_rev(rev), conn_output_max());
    } else if (e->over && e->readonly) {
        grpc_stream_fail(st, GRPC_RESOURCE_EXHAUSTED,
                         "etcdserver: the txn response is larger than "
                         "grpc-max-message (%zu bytes): use a limit",
                         e->max_bytes);
    } else if (e->over) {
        grpc_stream_fail(st, GRPC_RESOURCE_EXHAUSTED,
                         "etcdserver: the write was applied at revision "
                         "%lld, but its response is larger than "
                         "grpc-max-message (%zu bytes)",
                         (long long)etcd_rev(rev), e->max_bytes);
    } else if (e->call == ETCD_PUT) {
        const Etcdserverpb__PutRequest *q =
            (const Etcdserverpb__PutRequest *)e->req;
        if ((q->ignore_value || q->ignore_lease) && !req->res.succeeded) {
            /* The key changed between our read and the write. */
            if (++e->tries >= IGNORE_TRIES)
                grpc_stream_fail(st, GRPC_UNAVAILABLE,
                                 "etcdserver: request timed out");
            else
                put_ignore(st, e);
        } else {
            put_reply(st, e, rev);
        }
    } else if (e->call == ETCD_DELETE_RANGE) {
        const Etcdserverpb__DeleteRangeRequest *q =
            (const Etcdserverpb__DeleteRangeRequest *)e->req;
        Etcdserverpb__DeleteRangeResponse r =
            ETCDSERVERPB__DELETE_RANGE_RESPONSE__INIT;
        Etcdserverpb__ResponseHeader h;
        etcd_header(&h, rev, NULL);
        r.header = &h;
        Mvccpb__KeyValue *kvs;
        del_fill(q, &e->ops[0], &r, &kvs);
        etcd_reply(st, &r.base);
        pz_free(kvs);
        pz_free(r.prev_kvs);
    } else {
        txn_reply(st, e, rev, req->res.succeeded);
    }
    /* The answer is packed (it counts itself until it is written) or the
     * call failed: the copies it was made of go now, not with the stream
     * once its client has read the answer, which would hold the results
     * twice, once uncounted, for as long as the client takes. A Put
     * tried again (put_ignore) has dropped its items already. */
    ekv_items_free(e);
    grpc_stream_flush(st);
}

/* put_ignore, called again once the entry being applied is done, or once
 * its linearizable read is. */
static void put_ignore_later(struct node_req *req, int status)
{
    struct gstream *st = grpc_stream_of(req);
    grpc_stream_in_node(st, false);
    if (status < 0)
        etcd_node_error(st, status, false);
    else
        put_ignore(st, grpc_stream_ext(st));
    grpc_stream_flush(st);
}

/* Put with ignore_value/ignore_lease, on the leader: a put guarded by the
 * key's current mod_revision, carrying its current value or lease (read
 * between entries: with part of one applied, after it, through a stale
 * read whose callback waits for its end). A key found needs nothing more:
 * the guard is checked as the put applies, so a value read from a copy
 * that lags only gets the put tried again. A key missing is the answer
 * itself, so it must be linearizable: a leader new in its term may not
 * have applied yet what earlier terms committed (a key written there
 * would look missing), and a deposed one may lag. So a key missing is
 * looked up again after a linearizable read (node_read; with
 * raft-read-lease, no round of its own), and only then is it missing. */
static void put_ignore(struct gstream *st, struct ekv *e)
{
    if (node_applying()) {
        grpc_stream_in_node(st, true);
        int rv = node_read(grpc_stream_req(st), true, put_ignore_later);
        if (rv < 0) {
            grpc_stream_in_node(st, false);
            etcd_node_error(st, rv, false);
        }
        return;
    }
    const Etcdserverpb__PutRequest *q =
        (const Etcdserverpb__PutRequest *)e->req;
    if (!node_is_leader()) {
        /* Relayed to the leader; one relayed to us is refused as every
         * relayed call that finds a follower is (grpc_stream_forward), so
         * that its sender sends it again to the new leader. */
        etcd_node_error(st, PZ_ENOTLEADER, true);
        return;
    }
    struct kv_view v;
    if (!kv_get_view(node_kv(), q->key.data, q->key.len, &v)) {
        if (e->confirmed) {
            grpc_stream_fail(st, GRPC_INVALID_ARGUMENT,
                             "etcdserver: key not found");
            return;
        }
        e->confirmed = true;
        grpc_stream_in_node(st, true);
        int rv = node_read(grpc_stream_req(st), false, put_ignore_later);
        if (rv < 0) {
            grpc_stream_in_node(st, false);
            etcd_node_error(st, rv, false);
        }
        return;
    }
    struct kv_cmp c = {.target = KV_CMP_MOD,
                       .result = KV_CMP_EQ,
                       .key = q->key.data,
                       .klen = q->key.len,
                       .num = v.meta.mod_revision};
    struct kv_op op = {.type = KV_TOP_PUT,
                       .key = q->key.data,
                       .klen = q->key.len,
                       .value = q->ignore_value ? v.value : q->value.data,
                       .vlen = q->ignore_value ? v.vlen : q->value.len,
                       .lease =
                           q->ignore_lease ? v.meta.lease : (uint64_t)q->lease};
    struct pz_buf cmd;
    pz_buf_init(&cmd);
    int rv = kv_encode_txn(&cmd, &c, 1, &op, 1, NULL, 0);
    ekv_items_free(e);
    if (rv < 0)
        etcd_node_error(st, rv, true);
    else
        propose(st, e, &cmd);
    pz_buf_free(&cmd);
}

static void call_put(struct gstream *st)
{
    Etcdserverpb__PutRequest *q = (Etcdserverpb__PutRequest *)etcd_unpack(
        st, &etcdserverpb__put_request__descriptor);
    if (q == NULL)
        return;
    struct ekv *e = ekv_new(st, ETCD_PUT, &q->base, 1);
    e->ops[0].want = q->prev_kv;
    if (!key_ok(st, q->key.len))
        return;
    if (q->value.len > grpc_stream_server(st)->max_value) {
        grpc_stream_fail(st, GRPC_INVALID_ARGUMENT,
                         "etcdserver: request is too large");
        return;
    }
    if (q->ignore_value && q->value.len) {
        grpc_stream_fail(st, GRPC_INVALID_ARGUMENT,
                         "etcdserver: value is provided");
        return;
    }
    if (q->ignore_lease && q->lease) {
        grpc_stream_fail(st, GRPC_INVALID_ARGUMENT,
                         "etcdserver: lease is provided");
        return;
    }
    if (q->lease < 0 || (uint64_t)q->lease > KV_LEASE_ID_MAX) {
        grpc_stream_fail(st, GRPC_NOT_FOUND,
                         "etcdserver: requested lease not found");
        return;
    }
    if (q->ignore_value || q->ignore_lease) {
        put_ignore(st, e);
        return;
    }
    struct kv_op op = {.type = KV_TOP_PUT,
                       .key = q->key.data,
                       .klen = q->key.len,
                       .value = q->value.data,
                       .vlen = q->value.len,
                       .lease = (uint64_t)q->lease};
    struct pz_buf cmd;
    pz_buf_init(&cmd);
    int rv = kv_encode_txn(&cmd, NULL, 0, &op, 1, NULL, 0);
    if (rv < 0)
        etcd_node_error(st, rv, true);
    else
        propose(st, e, &cmd);
    pz_buf_free(&cmd);
}

/* A delete of an etcd range as one operation. */
static void del_op(const struct etcd_range *rg, struct kv_op *op)
{
    memset(op, 0, sizeof *op);
    op->key = rg->key;
    op->klen = rg->klen;
    if (rg->single) {
        op->type = KV_TOP_DEL;
    } else {
        op->type = KV_TOP_DELRANGE;
        op->flags = rg->to_end ? KV_RANGE_TO_END : 0;
        op->value = rg->end;
        op->vlen = rg->elen;
    }
}

static void call_delete_range(struct gstream *st)
{
    Etcdserverpb__DeleteRangeRequest *q =
        (Etcdserverpb__DeleteRangeRequest *)etcd_unpack(
            st, &etcdserverpb__delete_range_request__descriptor);
    if (q == NULL)
        return;
    struct ekv *e = ekv_new(st, ETCD_DELETE_RANGE, &q->base, 1);
    e->ops[0].want = q->prev_kv;
    if (!key_ok(st, q->key.len))
        return;
    struct etcd_range rg;
    etcd_range_decode(q->key.data, q->key.len, q->range_end.data,
                      q->range_end.len, &rg);
    struct kv_op op;
    del_op(&rg, &op);
    struct pz_buf cmd;
    pz_buf_init(&cmd);
    int rv = kv_encode_txn(&cmd, NULL, 0, rg.empty ? NULL : &op,
                           rg.empty ? 0 : 1, NULL, 0);
    if (rv < 0)
        etcd_node_error(st, rv, true);
    else
        propose(st, e, &cmd);
    pz_buf_free(&cmd);
}

/* --- Txn ---------------------------------------------------------------- */

/* One branch's operations: validated and mapped. Returns 0, or ends st. */
static int map_ops(struct gstream *st, Etcdserverpb__RequestOp **ops, size_t n,
                   struct kv_op *out, struct ekv *e)
{
    struct grpc_server *gs = grpc_stream_server(st);
    struct etcd_range *rgs = pz_calloc(n ? n : 1, sizeof *rgs);
    int rv = 0;
    for (size_t i = 0; i < n && rv == 0; i++) {
        Etcdserverpb__RequestOp *o = ops[i];
        struct kv_op *k = &out[i];
        memset(k, 0, sizeof *k);
        const ProtobufCBinaryData *key = NULL, *end = NULL;
        switch (o->request_case) {
        case ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_RANGE: {
            Etcdserverpb__RangeRequest *r = o->request_range;
            key = &r->key, end = &r->range_end;
            if (r->revision > 0) {
                grpc_stream_fail(st, GRPC_UNIMPLEMENTED,
                                 "etcdserver: a revision in a txn range is "
                                 "not supported by PyazDB (it keeps no "
                                 "history)");
                rv = -1;
            }
            e->ops[i].want = e->ops[i].want || !r->count_only;
            break;
        }
        case ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_PUT: {
            Etcdserverpb__PutRequest *p = o->request_put;
            key = &p->key;
            if (p->ignore_value || p->ignore_lease) {
                grpc_stream_fail(st, GRPC_UNIMPLEMENTED,
                                 "etcdserver: ignore_value and ignore_lease "
                                 "in a txn are not supported by PyazDB");
                rv = -1;
            } else if (p->lease < 0 || (uint64_t)p->lease > KV_LEASE_ID_MAX) {
                grpc_stream_fail(st, GRPC_NOT_FOUND,
                                 "etcdserver: requested lease not found");
                rv = -1;
            } else if (p->value.len > gs->max_value) {
                grpc_stream_fail(st, GRPC_INVALID_ARGUMENT,
                                 "etcdserver: request is too large");
                rv = -1;
            }
            e->ops[i].want = e->ops[i].want || p->prev_kv;
            break;
        }
        case ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_DELETE_RANGE: {
            Etcdserverpb__DeleteRangeRequest *d = o->request_delete_range;
            key = &d->key, end = &d->range_end;
            e->ops[i].want = e->ops[i].want || d->prev_kv;
            break;
        }
        case ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_TXN:
            grpc_stream_fail(st, GRPC_UNIMPLEMENTED,
                             "etcdserver: nested transactions (request_txn) "
                             "are not supported by PyazDB");
            rv = -1;
            break;
        default:
            grpc_stream_fail(st, GRPC_INVALID_ARGUMENT,
                             "etcdserver: a txn operation is empty");
            rv = -1;
        }
        if (rv < 0)
            break;
        if (!key_ok(st, key->len)) {
            rv = -1;
            break;
        }
        etcd_range_decode(key->data, key->len, end ? end->data : NULL,
                          end ? end->len : 0, &rgs[i]);
        switch (o->request_case) {
        case ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_RANGE:
            k->key = key->data, k->klen = key->len;
            if (rgs[i].single) {
                k->type = KV_TOP_GET;
            } else {
                k->type = KV_TOP_RANGE;
                Etcdserverpb__RangeRequest *r = o->request_range;
                /* keys_only drops the values in the store, unless they
                 * are sorted on (the answer drops them: kv_of_view). */
                bool by_value = (int)r->sort_target == ETCD_SORT_VALUE;
                k->flags = (rgs[i].to_end ? KV_RANGE_TO_END : 0) |
                           (r->count_only ? KV_RANGE_COUNT_ONLY : 0) |
                           (r->keys_only && !by_value ? KV_RANGE_KEYS_ONLY : 0);
                /* range_build's rule: without a sort or a filter only the
                 * first limit + 1 keys matter, so the walk stops there;
                 * count is still every key of the range, as a Range's
                 * (the sink's count_range, in O(log n)). */
                if (r->limit > 0 && (int)r->sort_order == ETCD_SORT_NONE &&
                    !range_has_filter(r) && !r->count_only)
                    k->limit = (uint64_t)r->limit + 1;
                /* An empty range as [key, key). */
                k->value = rgs[i].empty ? key->data : rgs[i].end;
                k->vlen = rgs[i].empty ? key->len : rgs[i].elen;
            }
            break;
        case ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_PUT:
            k->type = KV_TOP_PUT;
            k->key = key->data, k->klen = key->len;
            k->value = o->request_put->value.data;
            k->vlen = o->request_put->value.len;
            k->lease = (uint64_t)o->request_put->lease;
            break;
        default:
            del_op(&rgs[i], k);
            if (rgs[i].empty) { /* delete nothing: [key, key) */
                k->type = KV_TOP_DELRANGE;
                k->flags = 0;
                k->value = key->data;
                k->vlen = key->len;
            }
        }
    }
    /* etcd's rule: a put's key may appear in no other put and in no delete
     * range of the same branch. etcd checks the delete's [key, range_end)
     * as given, so a range_end "\0" (every key from key on) is an empty
     * interval there and conflicts with nothing: so here too. */
    for (size_t j = 0; j < n; j++)
        if (rgs[j].to_end)
            rgs[j].empty = true;
    for (size_t i = 0; i < n && rv == 0; i++) {
        if (out[i].type != KV_TOP_PUT)
            continue;
        for (size_t j = 0; j < n; j++) {
            if (j == i || out[j].type == KV_TOP_GET ||
                out[j].type == KV_TOP_RANGE ||
                (out[j].type == KV_TOP_PUT && j < i))
                continue;
            if (etcd_range_overlap(&rgs[i], &rgs[j])) {
                grpc_stream_fail(st, GRPC_INVALID_ARGUMENT,
                                 "etcdserver: duplicate key given in txn "
                                 "request");
                rv = -1;
                break;
            }
        }
    }
    pz_free(rgs);
    return rv;
}

static void call_txn(struct gstream *st)
{
    Etcdserverpb__TxnRequest *q = (Etcdserverpb__TxnRequest *)etcd_unpack(
        st, &etcdserverpb__txn_request__descriptor);
    if (q == NULL)
        return;
    if (q->n_compare > KV_TXN_MAX || q->n_success > KV_TXN_MAX ||
        q->n_failure > KV_TXN_MAX) {
        ekv_new(st, ETCD_TXN, &q->base, 0); /* frees q with the stream */
        grpc_stream_fail(st, GRPC_INVALID_ARGUMENT,
                         "etcdserver: too many operations in txn request");
        return;
    }
    size_t nops = PZ_MAX(q->n_success, q->n_failure);
    struct ekv *e = ekv_new(st, ETCD_TXN, &q->base, nops);
    struct kv_cmp *cmps = pz_calloc(q->n_compare + 1, sizeof *cmps);
    struct kv_op *succ = pz_calloc(q->n_success + 1, sizeof *succ);
    struct kv_op *fail = pz_calloc(q->n_failure + 1, sizeof *fail);
    int rv = 0;
    for (size_t i = 0; i < q->n_compare && rv == 0; i++) {
        Etcdserverpb__Compare *c = q->compare[i];
        if (c->range_end.len) {
            grpc_stream_fail(st, GRPC_UNIMPLEMENTED,
                             "etcdserver: a compare with range_end is not "
                             "supported by PyazDB");
            rv = -1;
            break;
        }
        if (!key_ok(st, c->key.len)) {
            rv = -1;
            break;
        }
        int tc = -1;
        int64_t num = 0;
        switch (c->target_union_case) {
        case ETCDSERVERPB__COMPARE__TARGET_UNION_VERSION:
            tc = ETCD_TGT_VERSION, num = c->version;
            break;
        case ETCDSERVERPB__COMPARE__TARGET_UNION_CREATE_REVISION:
            tc = ETCD_TGT_CREATE, num = c->create_revision;
            break;
        case ETCDSERVERPB__COMPARE__TARGET_UNION_MOD_REVISION:
            tc = ETCD_TGT_MOD, num = c->mod_revision;
            break;
        case ETCDSERVERPB__COMPARE__TARGET_UNION_VALUE:
            tc = ETCD_TGT_VALUE;
            break;
        case ETCDSERVERPB__COMPARE__TARGET_UNION_LEASE:
            tc = ETCD_TGT_LEASE, num = c->lease;
            break;
        default:
            break;
        }
        if (etcd_cmp_map(c->result, c->target, c->key.data, c->key.len, tc, num,
                         c->value.data, c->value.len, &cmps[i]) < 0) {
            grpc_stream_fail(st, GRPC_INVALID_ARGUMENT,
                             "etcdserver: unknown compare result or target");
            rv = -1;
        }
    }
    if (rv == 0)
        rv = map_ops(st, q->success, q->n_success, succ, e);
    if (rv == 0)
        rv = map_ops(st, q->failure, q->n_failure, fail, e);
    if (rv == 0) {
        e->readonly = true;
        for (size_t i = 0; i < q->n_success; i++)
            e->readonly = e->readonly && (succ[i].type == KV_TOP_GET ||
                                          succ[i].type == KV_TOP_RANGE);
        for (size_t i = 0; i < q->n_failure; i++)
            e->readonly = e->readonly && (fail[i].type == KV_TOP_GET ||
                                          fail[i].type == KV_TOP_RANGE);
        struct pz_buf cmd;
        pz_buf_init(&cmd);
        rv = kv_encode_txn(&cmd, cmps, q->n_compare, succ, q->n_success, fail,
                           q->n_failure);
        if (rv < 0)
            etcd_node_error(st, rv, true);
        else
            propose(st, e, &cmd);
        pz_buf_free(&cmd);
    }
    pz_free(cmps);
    pz_free(succ);
    pz_free(fail);
}

static void txn_reply(struct gstream *st, struct ekv *e, uint64_t rev,
                      bool succeeded)
{
    const Etcdserverpb__TxnRequest *q =
        (const Etcdserverpb__TxnRequest *)e->req;
    Etcdserverpb__RequestOp **ops = succeeded ? q->success : q->failure;
    size_t n = succeeded ? q->n_success : q->n_failure;
    Etcdserverpb__TxnResponse r = ETCDSERVERPB__TXN_RESPONSE__INIT;
    Etcdserverpb__ResponseHeader h;
    etcd_header(&h, rev, NULL);
    r.header = &h;
    r.succeeded = succeeded;
    /* Nested answers carry a header with only the revision, as etcd's: the
     * revision before the transaction until an operation writes, the
     * transaction's from that one on. */
    Etcdserverpb__ResponseHeader *rh = pz_calloc(n + 1, sizeof *rh);
    uint64_t rev_before = rev - (e->wrote ? 1 : 0);
    Etcdserverpb__ResponseOp *rops = pz_calloc(n + 1, sizeof *rops);
    Etcdserverpb__ResponseOp **rpp = pz_calloc(n + 1, sizeof *rpp);
    Etcdserverpb__RangeResponse *rr = pz_calloc(n + 1, sizeof *rr);
    Etcdserverpb__PutResponse *pr = pz_calloc(n + 1, sizeof *pr);
    Etcdserverpb__DeleteRangeResponse *dr = pz_calloc(n + 1, sizeof *dr);
    Mvccpb__KeyValue **store = pz_calloc(n + 1, sizeof *store);
    Mvccpb__KeyValue *prev = pz_calloc(n + 1, sizeof *prev);
    bool ok = true;
    for (size_t i = 0; i < n; i++) {
        Etcdserverpb__ResponseOp init = ETCDSERVERPB__RESPONSE_OP__INIT;
        rops[i] = init;
        rpp[i] = &rops[i];
        struct eop *o = &e->ops[i];
        Etcdserverpb__ResponseHeader hi = ETCDSERVERPB__RESPONSE_HEADER__INIT;
        rh[i] = hi;
        rh[i].revision = etcd_rev(rev_before + (o->wrote ? 1 : 0));
        switch (ops[i]->request_case) {
        case ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_RANGE: {
            Etcdserverpb__RangeResponse ri = ETCDSERVERPB__RANGE_RESPONSE__INIT;
            rr[i] = ri;
            rr[i].header = &rh[i];
            /* range_build filters and sorts in place: on a copy, since
             * the items own their bytes (freed once each). */
            struct kv_view *v = pz_malloc((o->n + 1) * sizeof *v);
            if (o->n)
                memcpy(v, o->items, o->n * sizeof *v);
            if (!range_build(ops[i]->request_range, v, o->n, o->count,
                             e->max_bytes, &rr[i], &store[i]))
                ok = false;
            pz_free(v);
            rops[i].response_case =
                ETCDSERVERPB__RESPONSE_OP__RESPONSE_RESPONSE_RANGE;
            rops[i].response_range = &rr[i];
            break;
        }
        case ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_PUT: {
            Etcdserverpb__PutResponse pi = ETCDSERVERPB__PUT_RESPONSE__INIT;
            pr[i] = pi;
            pr[i].header = &rh[i];
            if (ops[i]->request_put->prev_kv && o->n) {
                fill_kv(&prev[i], o, 0);
                pr[i].prev_kv = &prev[i];
            }
            rops[i].response_case =
                ETCDSERVERPB__RESPONSE_OP__RESPONSE_RESPONSE_PUT;
            rops[i].response_put = &pr[i];
            break;
        }
        default: {
            Etcdserverpb__DeleteRangeResponse di =
                ETCDSERVERPB__DELETE_RANGE_RESPONSE__INIT;
            dr[i] = di;
            dr[i].header = &rh[i];
            del_fill(ops[i]->request_delete_range, o, &dr[i], &store[i]);
            rops[i].response_case =
                ETCDSERVERPB__RESPONSE_OP__RESPONSE_RESPONSE_DELETE_RANGE;
            rops[i].response_delete_range = &dr[i];
        }
        }
    }
    r.responses = rpp;
    r.n_responses = n;
    if (ok)
        etcd_reply(st, &r.base);
    else if (e->readonly)
        grpc_stream_fail(st, GRPC_RESOURCE_EXHAUSTED,
                         "etcdserver: the txn response is larger than "
                         "grpc-max-message (%zu bytes): use a limit",
                         e->max_bytes);
    else
        grpc_stream_fail(st, GRPC_RESOURCE_EXHAUSTED,
                         "etcdserver: the txn was applied at revision %lld, "
                         "but its response is larger than grpc-max-message "
                         "(%zu bytes)",
                         (long long)etcd_rev(rev), e->max_bytes);
    for (size_t i = 0; i < n; i++) {
        pz_free(store[i]);
        pz_free(rr[i].kvs);
        pz_free(dr[i].prev_kvs);
    }
    pz_free(store);
    pz_free(rh);
    pz_free(prev);
    pz_free(rops);
    pz_free(rpp);
    pz_free(rr);
    pz_free(pr);
    pz_free(dr);
}

/* --- dispatch ------------------------------------------------------------ */

void etcd_kv_call(struct gstream *st, int call)
{
    switch (call) {
    case ETCD_RANGE: {
        Etcdserverpb__RangeRequest *q =
            (Etcdserverpb__RangeRequest *)etcd_unpack(
                st, &etcdserverpb__range_request__descriptor);
        if (q == NULL)
            return;
        ekv_new(st, ETCD_RANGE, &q->base, 0);
        if (!key_ok(st, q->key.len))
            return;
        if ((int)q->sort_order < 0 || (int)q->sort_order > ETCD_SORT_DESCEND ||
            (int)q->sort_target < 0 || (int)q->sort_target > ETCD_SORT_VALUE) {
            grpc_stream_fail(st, GRPC_INVALID_ARGUMENT,
                             "etcdserver: unknown sort order or target");
            return;
        }
        start_read(st, q->serializable);
        break;
    }
    case ETCD_PUT:
        call_put(st);
        break;
    case ETCD_DELETE_RANGE:
        call_delete_range(st);
        break;
    case ETCD_TXN:
        call_txn(st);
        break;
    case ETCD_COMPACT: {
        ProtobufCMessage *q =
            etcd_unpack(st, &etcdserverpb__compaction_request__descriptor);
        if (q == NULL)
            return;
        ekv_new(st, ETCD_COMPACT, q, 0);
        start_read(st, false);
        break;
    }
    default:
        grpc_stream_fail(st, GRPC_UNIMPLEMENTED, "unknown etcd KV call");
    }
}
