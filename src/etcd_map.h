/* etcd_map.h - pure pieces of PyazDB's etcd v3 API (etcd_kv.c): etcd's
 * key range conventions, its comparisons mapped onto kv_cmp, the filters
 * and sort orders of a Range. No I/O.
 *
 * Key ranges (RangeRequest, DeleteRangeRequest): an empty range_end names
 * the one key `key`; range_end "\0" (one zero byte) names every key >= key;
 * any other range_end names [key, range_end), empty when range_end <= key.
 * etcd clients write a prefix p as [p, p+1) (the last byte not 0xff
 * incremented, trailing 0xff bytes dropped) and "every key" as key "\0",
 * range_end "\0". An empty key is refused ("etcdserver: key is not
 * provided"), as etcd does.
 *
 * Comparisons: etcd's results EQUAL, GREATER, LESS, NOT_EQUAL and targets
 * VERSION, CREATE, MOD, VALUE, LEASE map one to one onto kv_cmp's. etcd
 * compares signed 64-bit numbers, kv_cmp unsigned ones; every number a key
 * carries is >= 0, so a negative operand is rewritten to an unsigned
 * comparison with the same outcome (x > -1 always holds: x != 2^64-1;
 * x < -1 never does: x < 0). The operand is the oneof member matching the
 * target; another member (or none) counts as 0 or the empty value, as in
 * etcd.
 *
 * Revisions: the etcd API numbers them as etcd does. PyazDB's store
 * starts at revision 0 and its first write makes revision 1; etcd's
 * starts at 1 and its first write makes 2. etcd's clients rely on that:
 * 0 means "none" to them, and a revision of 1 never names a write. Its
 * election recipe, for one, waits for the keys created before its own
 * with max_create_revision = its write's revision - 1: for a write at
 * revision 1 that bound is 0, no bound at all, and a candidate whose
 * campaign was the store's first write waited for its own key to go.
 * So every revision the etcd API shows is the store's + 1 (etcd_rev; a
 * key's create revision 0, "none", stays 0: etcd_key_rev), and every one
 * a client sends is compared in etcd's numbers (etcd_filter_keep,
 * etcd_cmp_map, etcd_watch_start, and the callers' checks of a request's
 * revision against the node's). */
#ifndef PZ_ETCD_MAP_H
#define PZ_ETCD_MAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kv.h"

/* The etcd API's number for the store's revision rev (header revisions,
 * the revision a write made, compact_revision). */
static inline int64_t etcd_rev(uint64_t rev)
{
    return (int64_t)rev + 1;
}

/* The etcd API's number for a key's create or mod revision: 0 (none)
 * stays 0. */
static inline int64_t etcd_key_rev(uint64_t rev)
{
    return rev ? (int64_t)rev + 1 : 0;
}

/* etcd's enum values (etcd_rpc.proto). */
enum {
    ETCD_CMP_EQUAL = 0,
    ETCD_CMP_GREATER = 1,
    ETCD_CMP_LESS = 2,
    ETCD_CMP_NOT_EQUAL = 3
};
enum {
    ETCD_TGT_VERSION = 0,
    ETCD_TGT_CREATE = 1,
    ETCD_TGT_MOD = 2,
    ETCD_TGT_VALUE = 3,
    ETCD_TGT_LEASE = 4
};
enum { ETCD_SORT_NONE = 0, ETCD_SORT_ASCEND = 1, ETCD_SORT_DESCEND = 2 };
enum {
    ETCD_SORT_KEY = 0,
    ETCD_SORT_VERSION = 1,
    ETCD_SORT_CREATE = 2,
    ETCD_SORT_MOD = 3,
    ETCD_SORT_VALUE = 4
};

/* A key range decoded from (key, range_end). */
struct etcd_range {
    const uint8_t *key; /* first key (borrowed) */
    size_t klen;
    const uint8_t *end; /* exclusive end unless single or to_end */
    size_t elen;
    bool single; /* just `key` */
    bool to_end; /* every key >= key */
    bool empty;  /* range_end <= key: no key can match */
};

/* Decode etcd's conventions. Returns 0, or PZ_EINVAL for an empty key. */
int etcd_range_decode(const uint8_t *key, size_t klen, const uint8_t *end,
                      size_t elen, struct etcd_range *out);
/* True when the key lies in the range. */
bool etcd_range_has(const struct etcd_range *r, const uint8_t *key,
                    size_t klen);
/* True when two ranges share a key. */
bool etcd_range_overlap(const struct etcd_range *a, const struct etcd_range *b);

/* Map one comparison onto c (key borrowed); target_case is the oneof
 * member that is set (ETCD_TGT_*, or -1 when none), num its number or
 * value/vlen its bytes. Returns 0, or PZ_EINVAL for an unknown result or
 * target. */
int etcd_cmp_map(int result, int target, const uint8_t *key, size_t klen,
                 int target_case, int64_t num, const uint8_t *value,
                 size_t vlen, struct kv_cmp *c);

/* A Range's revision filters (0: no bound). */
/* A Range's revision bounds, as the request names them (etcd's numbers:
 * etcd_filter_keep compares the key's etcd_key_rev). */
struct etcd_filter {
    int64_t min_mod, max_mod, min_create, max_create;
};
bool etcd_filter_keep(const struct etcd_filter *f, const struct kv_meta *m);

/* The order a Range's results come in: etcd sorts ascending by default
 * when a target other than KEY is named, and keys come in ascending order
 * from the table. Returns the effective ETCD_SORT_* order. */
int etcd_sort_order(int order, int target);
/* Sort n views by target in order (ASCEND or DESCEND; stable for equal
 * fields: key order is kept). */
void etcd_sort_views(struct kv_view *v, size_t n, int order, int target);
/* Offer x to a bounded selection of the k views (k > 0) that come first
 * in the order etcd_sort_views gives (ASCEND or DESCEND by target, equal
 * fields in key order; NONE is key order): v holds the *n views kept so
 * far, as a heap whose root is the last of them, and has room for
 * min(*n + 1, k). A range sorted and limited keeps O(k) views this way, in
 * O(log k) per view, instead of all of them; etcd_sort_views then orders
 * the k. */
void etcd_select_view(struct kv_view *v, size_t *n, size_t k,
                      const struct kv_view *x, int order, int target);
/* Would etcd_select_view keep x (a selection of *n = n views, at most
 * k)? Either there is room, or x comes before the last view kept (the
 * root), which it would then evict. Lets a caller that keeps copies make
 * one only for a view that enters. */
bool etcd_select_takes(const struct kv_view *v, size_t n, size_t k,
                       const struct kv_view *x, int order, int target);
/* x, which etcd_select_takes says enters a full selection (n = k),
 * evicts the root: as etcd_select_view, but without reading the root, so
 * that the caller may reuse what the evicted view pointed to for x. */
void etcd_select_replace(struct kv_view *v, size_t n, const struct kv_view *x,
                         int order, int target);

/* A Watch's keys, from a WatchCreateRequest's key and range_end with
 * etcd's conventions for watches: an empty key is "\0" (the smallest
 * key); an empty range_end watches the one key, "\0" every key >= key,
 * anything else [key, range_end). The watch covers [from, to), to NULL
 * meaning no upper bound; one key K is [K, K "\0"). */
struct etcd_watch_keys {
    uint8_t *from; /* owned */
    size_t flen;
    uint8_t *to; /* owned; NULL: no upper bound */
    size_t tlen;
};
/* 0, or PZ_EINVAL for an empty range (range_end <= key: etcd's "mvcc:
 * watcher range is empty"; nothing is allocated then). */
int etcd_watch_keys(const uint8_t *key, size_t klen, const uint8_t *end,
                    size_t elen, struct etcd_watch_keys *out);
void etcd_watch_keys_free(struct etcd_watch_keys *k);

/* Where a watch starts, in the store's revisions: start_revision (etcd's
 * number) 0 means the revision after cur (the node's); 1 the store's
 * first write, as 2 does (no write is at etcd's revision 1); one before
 * first (the oldest revision the history holds) is compacted
 * (PZ_ENOTFOUND: the client is told etcd_rev(first)); a negative one
 * names no revision (PZ_EINVAL); else 0 and *start. */
int etcd_watch_start(int64_t start_revision, uint64_t cur, uint64_t first,
                     uint64_t *start);

/* etcd's answer to a node error rv (PZ_*) of a write or a read, for the
 * gRPC calls and the JSON gateway alike: returns the gRPC status code
 * (grpc_frame.h's GRPC_*) and writes the message (rpctypes' wording, which
 * clients match on) into msg. PZ_ENOTLEADER, which a call relays to the
 * leader instead when it can, answers as PZ_ENOLEADER. */
int etcd_node_status(int rv, bool write, char *msg, size_t cap);

#endif
