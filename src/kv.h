/* kv.h - the key-value state machine: binary-safe keys and values with
 * revision metadata, a hash table for point lookups, an ordered index for
 * range scans, and the command format the Raft log carries. Pure: no I/O,
 * no clocks, no randomness; single-threaded like the rest of the process.
 *
 * Keys and values are arbitrary bytes (NUL included); the table copies
 * them. Lookups, inserts and deletes are O(1) on average through the hash
 * table. The table grows (to twice its size) when it holds as many keys as
 * buckets and shrinks when it holds fewer keys than an eighth of its
 * buckets; either way the move from the old bucket array to the new one is
 * incremental, as in Redis's dict: every kv_get/kv_set/kv_del processes at
 * most KV_REHASH_EMPTY_VISITS indices of the old array and moves the chain
 * of at most one of them, so no operation stalls on a full rehash
 * (kv_stats reports the maxima seen).
 *
 * Revisions. The table has a 64-bit revision, 0 when new. Every command
 * that changes the table (a put, a delete that removed a key, a delete-range
 * that removed one, a transaction whose branch did either) advances it by
 * exactly one, and every key it changed gets that revision; a command that
 * changes nothing (a delete of an absent key, a failed comparison without
 * writes, a read-only transaction) leaves it alone, as etcd does, so that
 * each revision names one set of changes a watcher can be shown. Each key
 * carries (struct kv_meta) create_revision (revision of the put that
 * created it), mod_revision (of its last put), version (puts since it was
 * created, 1 after the first) and a lease id (0: none). All of it follows
 * from the commands alone: nodes that applied the same commands hold equal
 * metadata.
 *
 * Ordered index: a skiplist threaded through the same entries as the hash
 * table, keys in bytewise order (memcmp, a shorter key before its
 * extensions). Chosen over a B+ tree or a radix tree because:
 *  - it costs one pointer per level inside each entry (1.33 on average with
 *    p = 1/4) and no node of its own, so one key is still one allocation;
 *    a B+ tree needs separate nodes, their fill slack and rebalancing, a
 *    radix tree per-byte nodes that binary keys of any length make large;
 *  - entries never move, so pointers handed out stay valid while the hash
 *    table rehashes, and a range scan is a walk along level 0 after one
 *    O(log n) search: O(log n + k);
 *  - insert and delete touch only the neighbours of one entry;
 *  - it counts a range in O(log n) without visiting its keys: as in
 *    Redis's sorted sets, each link above level 0 carries its span (how
 *    many keys it skips, one 8-byte number; a level-0 link spans 1 and
 *    stores none, so 1/3 of a span per key), which gives a key's position
 *    on the way down a search, and a range's count is the difference of
 *    the positions of its ends (kv_range_count). Insert, delete and the
 *    in-order append keep the spans in O(KV_SKIP_LEVELS) more steps.
 * An entry's level comes from high bits of its seeded key hash (p = 1/4 per
 * extra level, at most KV_SKIP_LEVELS), so there is no random state to keep
 * and clients cannot pick keys that build a degenerate list. The layout
 * differs between nodes (the seed does); what is stored and what a scan
 * returns do not. Measured on 1M 16-byte keys with 100-byte values:
 * see docs/DESIGN.md ("The key-value table").
 *
 * Command format. A command is what kv_encode_* produce and kv_apply
 * consumes; it travels in Raft log entries unchanged, so the format is part
 * of the on-disk format and every version stays decodable forever.
 *
 *   byte 0      (version << 4) | op
 *   version 1:  0x11 SET, 0x12 DEL
 *     SET       varint klen, klen key bytes, varint vlen, vlen value bytes
 *     DEL       varint klen, klen key bytes
 *   version 2:  0x21 TXN
 *     TXN       varint ncmp, ncmp comparisons,
 *               varint nsucc, nsucc operations (run if all comparisons hold),
 *               varint nfail, nfail operations (run otherwise)
 *     comparison  byte target (KV_CMP_VALUE..KV_CMP_LEASE), byte result
 *               (KV_CMP_EQ..KV_CMP_GT), key field, then a value field for
 *               KV_CMP_VALUE, else a varint64 number
 *     operation   byte type (KV_TOP_PUT..KV_TOP_RANGE), key field, then
 *               PUT: value field, varint64 lease; DEL, GET: nothing;
 *               DELRANGE: byte flags, end field; RANGE: byte flags, end
 *               field, varint64 limit (0: none)
 *     flags     KV_RANGE_TO_END (no upper bound: the end field is empty),
 *               KV_RANGE_KEYS_ONLY, KV_RANGE_COUNT_ONLY (RANGE only)
 *   version 3:  leases (see "Leases" below)
 *     0x31 SETL  varint klen, klen key bytes, varint vlen, vlen value bytes,
 *                varint64 lease (1..KV_LEASE_ID_MAX): a set that attaches
 *                the key to a lease (kv_encode_set_lease; a set without a
 *                lease is still written as version 1)
 *     0x32 GRANT varint64 id (1..KV_LEASE_ID_MAX), varint64 ttl in seconds
 *                (1..KV_LEASE_TTL_MAX)
 *     0x33 REVOKE varint64 id (1..KV_LEASE_ID_MAX)
 *   A field is a varint length and that many bytes.
 *
 * A varint is unsigned LEB128 (7 bits per byte, least significant group
 * first, high bit = more), in its shortest form: at most 5 bytes and 32 bits
 * for lengths and counts, at most 10 bytes for varint64. Nothing may follow
 * the last field. Key fields are at most KV_KEY_MAX bytes, value fields at
 * most KV_VALUE_MAX; each list holds at most KV_TXN_MAX items. Plain sets
 * and deletes are still written as version 1. A new version gets a new high
 * nibble; old versions stay accepted.
 *
 * Semantics of a comparison: the key's field is compared with the given
 * one (values bytewise, numbers as unsigned integers). For an absent key
 * version, create_revision, mod_revision and lease are 0 (so
 * "create_revision = 0" means "does not exist"), and a value comparison is
 * false whatever the operator. A transaction's operations run in order;
 * reads see the writes before them; a RANGE's range is [key, end), or
 * [key, +inf) with KV_RANGE_TO_END.
 *
 * Leases. The table holds a lease table: id -> ttl (seconds), each with
 * the keys attached to it. A lease id is chosen by the proposer (a client
 * may name it; the HTTP API otherwise draws a random one) and GRANT of an
 * id that exists is refused at apply (KV_ELEASE_EXISTS), as is a grant
 * past KV_LEASE_HARD_MAX leases (KV_ELEASE_FULL): the outcome follows from
 * the log alone, so every node agrees, and no node needs the entry's index
 * to name it. Ids stay below 2^53 so that every JSON parser reads them
 * exactly. A put naming a lease (SETL, or a transaction PUT with a lease
 * other than 0) whose lease does not exist is refused whole at apply
 * (KV_ELEASE_NOTFOUND: a transaction checks every PUT of the branch it
 * takes before running any of it), changing nothing. A put replacing a
 * key's lease (0 included) detaches it from the old one. REVOKE deletes
 * every key attached, all at one new revision, in bytewise key order (the
 * same on every node, whatever order the keys were attached in or a
 * snapshot load rebuilt them in; as etcd), each reported as a KV_TOP_DEL
 * event like any delete, then drops the lease; revoking an
 * unknown id is KV_ELEASE_NOTFOUND. GRANT and a REVOKE of a lease without
 * keys change no key and leave the revision alone (as etcd). The table
 * knows no time: when a lease expires is the leader's business (lease.h);
 * an expiry is a REVOKE in the log. Attached keys are threaded on a doubly
 * linked list per lease through their entries (two pointers, in leased
 * entries only), so a revoke finds them in O(keys) (and sorts them,
 * O(keys log keys) compares, in two arrays of pointers it holds while it
 * runs, so that it can stop and go on: "applying in steps") and a detach
 * is O(1) after an O(log leases) lookup of the lease; a listing sorts the
 * list in place (no memory).
 *
 * Digest: kv_digest() is the sum (mod 2^64) over all entries of a hash of
 * (key, value, metadata) with fixed seeds, plus a hash of the revision when
 * it is not 0, plus a hash of (id, ttl) of each lease, kept up to date on
 * every mutation. It does not depend on
 * the table seed, the table size or the layout, so two nodes that applied
 * the same commands have equal digests; a table that never saw a write has
 * digest 0. */
#ifndef PZ_KV_H
#define PZ_KV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pz.h"

#define KV_KEY_MAX (1u << 20)   /* longest key, bytes (1 MiB) */
#define KV_VALUE_MAX (1u << 28) /* longest value, bytes (256 MiB) */

#define KV_CMD_VERSION 1  /* version of kv_encode_set/kv_encode_del */
#define KV_CMD_VERSION2 2 /* version of kv_encode_txn */
#define KV_OP_SET 1       /* v1 low nibble of byte 0: set key to value */
#define KV_OP_DEL 2       /* v1 low nibble of byte 0: delete key */
#define KV_OP_TXN 3       /* kv_cmd.op of a v2 transaction (byte 0x21) */

#define KV_CMD_VERSION3 3 /* version of the lease commands */
#define KV_OP_SETL 4      /* kv_cmd.op of 0x31: set with a lease */
#define KV_OP_GRANT 5     /* kv_cmd.op of 0x32: grant a lease */
#define KV_OP_REVOKE 6    /* kv_cmd.op of 0x33: revoke a lease */

#define KV_LEASE_ID_MAX ((1ull << 53) - 1) /* largest lease id */
#define KV_LEASE_TTL_MAX 315360000u /* longest TTL, seconds (10 years) */
#define KV_LEASE_HARD_MAX (1u << 20) /* most leases a table holds; the
                                        server's lease-max-count is lower */

/* kv_result.status: a command refused at apply, which changed nothing. */
enum {
    KV_OK = 0,
    KV_ELEASE_NOTFOUND = 1, /* a put or REVOKE named an unknown lease */
    KV_ELEASE_EXISTS = 2,   /* GRANT of an id that exists */
    KV_ELEASE_FULL = 3,     /* GRANT with KV_LEASE_HARD_MAX leases */
    KV_ETXN_KEYS = 4,       /* a TXN's RANGE walks would visit too many
                               keys (KV_TXN_KEYS_MAX, kv_txn_check) */
    KV_EREVISION = 5,       /* the command would change a key, and the
                               revision is at KV_REVISION_MAX */
};

/* The highest revision a table takes. Revisions stay below 2^62 as Raft's
 * terms and indexes do (RAFT_LIMIT): a command advances the revision by
 * one at most, so no real cluster gets near it, and every revision fits
 * etcd's signed 64-bit revisions with room to spare. At this revision a
 * command that would change a key (SET, SETL, DEL, a REVOKE of a lease
 * holding keys, a TXN whose branch taken holds a PUT, DEL or DELRANGE) is
 * refused whole at apply with KV_EREVISION, the same on every node, rather
 * than wrap the revision around; reads, GRANT and other revokes still
 * apply. A snapshot holding a higher revision is corrupt. */
#define KV_REVISION_MAX ((UINT64_C(1) << 62) - 1)

#define KV_TXN_MAX 128    /* most comparisons, and operations per branch */
/* Most keys the RANGE walks of the branch a transaction takes may visit,
 * counted on the table before the branch runs (a RANGE with a limit and
 * without COUNT_ONLY visits at most limit + 1; one with COUNT_ONLY counts
 * every key of its range although kv_range_count visits none, so that the
 * same log refuses the same transactions in every version): past it the
 * transaction is refused whole at apply (KV_ETXN_KEYS), the same on every
 * node. Servers
 * refuse lower budgets (txn-max-range-keys) before proposing. */
#define KV_TXN_KEYS_MAX 1000000
#define KV_SKIP_LEVELS 15 /* most levels of the ordered index */

/* Comparison targets and results (struct kv_cmp). */
enum {
    KV_CMP_VALUE = 0,   /* the value, bytewise */
    KV_CMP_VERSION = 1, /* version */
    KV_CMP_CREATE = 2,  /* create_revision */
    KV_CMP_MOD = 3,     /* mod_revision */
    KV_CMP_LEASE = 4,   /* lease id */
};
enum {
    KV_CMP_EQ = 0, /* = */
    KV_CMP_NE = 1, /* != */
    KV_CMP_LT = 2, /* key's field < given */
    KV_CMP_GT = 3, /* key's field > given */
};
/* Transaction operation types (struct kv_op). */
enum {
    KV_TOP_PUT = 1,      /* set key to value (and lease) */
    KV_TOP_DEL = 2,      /* delete key */
    KV_TOP_DELRANGE = 3, /* delete every key in [key, end) */
    KV_TOP_GET = 4,      /* read key */
    KV_TOP_RANGE = 5,    /* read the keys in [key, end), up to limit */
};
#define KV_RANGE_TO_END 0x01     /* no upper bound (end is empty) */
#define KV_RANGE_KEYS_ONLY 0x02  /* RANGE: keys and metadata, no values */
#define KV_RANGE_COUNT_ONLY 0x04 /* RANGE: only the count */

/* Bucket indices one rehash step may look at without finding an entry
 * before it gives up for this operation (Redis uses 10 as well); also the
 * most indices any one step processes. */
#define KV_REHASH_EMPTY_VISITS 10

/* Longest encoding of a command header plus both length fields. */
#define KV_CMD_OVERHEAD (1 + 5 + 5)

struct kv;

/* A key's metadata (see the file comment). */
struct kv_meta {
    uint64_t create_revision; /* revision of the put that created it */
    uint64_t mod_revision;    /* revision of its last put */
    uint64_t version;         /* puts since creation (1 after the first) */
    uint64_t lease;           /* lease id, 0: none */
};

/* One key as a read sees it. Pointers are borrowed from the table (valid
 * until the next change to it) or from a command. */
struct kv_view {
    const uint8_t *key;   /* key bytes */
    size_t klen;          /* key length */
    const uint8_t *value; /* value bytes (NUL after them when from the
                             table); NULL for keys_only */
    size_t vlen;          /* value length */
    struct kv_meta meta;  /* its metadata */
};

/* A comparison of a transaction. Pointers borrowed. */
struct kv_cmp {
    int target;           /* KV_CMP_VALUE ... KV_CMP_LEASE */
    int result;           /* KV_CMP_EQ ... KV_CMP_GT */
    const uint8_t *key;   /* key bytes */
    size_t klen;          /* key length */
    const uint8_t *value; /* KV_CMP_VALUE: value compared with */
    size_t vlen;          /* its length */
    uint64_t num;         /* other targets: number compared with */
};

/* An operation of a transaction. Pointers borrowed. */
struct kv_op {
    int type;             /* KV_TOP_* */
    int flags;            /* KV_RANGE_* (DELRANGE, RANGE) */
    const uint8_t *key;   /* key, or start of the range */
    size_t klen;          /* its length */
    const uint8_t *value; /* PUT: value; DELRANGE, RANGE: end (exclusive) */
    size_t vlen;          /* its length */
    uint64_t lease;       /* PUT: lease id (0: none) */
    uint64_t limit;       /* RANGE: most keys returned, 0: no limit */
};

/* Where kv_apply reports the results of a transaction's operations, in
 * order, for the branch it took (every member optional). Views are valid
 * during the call only. */
struct kv_sink {
    /* Operation i (0-based) of the branch begins. */
    void (*op_begin)(void *arg, size_t i, const struct kv_op *op);
    /* GET: the key if present; RANGE: each key returned (value NULL with
     * KV_RANGE_KEYS_ONLY); PUT, DEL, DELRANGE: each key's state before it
     * was changed (none for a PUT that created it). */
    void (*item)(void *arg, const struct kv_view *v);
    /* The operation ends. RANGE: count = keys returned (with
     * KV_RANGE_COUNT_ONLY or count_range: keys in the range,
     * kv_range_count's), more = the limit left keys out (the walk stops
     * one key past it); GET: 1 or 0; DEL, DELRANGE: keys deleted; PUT: 1. */
    void (*op_end)(void *arg, uint64_t count, bool more);
    void *arg; /* passed to each */
    /* RANGE without KV_RANGE_COUNT_ONLY: op_end's count is every key of
     * the range (kv_range_count's, O(log n)) also when the limit stopped
     * the walk, as etcd counts; the walk still stops one key past the
     * limit. The reader's choice, as the rest of the sink: it changes
     * what the reader is told, never what a command does to the table. */
    bool count_range;
    /* A transaction's compares are decided, before its first op_begin:
     * the branch taken (true: success). A reader that answers each
     * operation from its request (an etcd Txn's sorted ranges) learns here
     * which request operation i is. May be NULL. */
    void (*branch)(void *arg, bool succeeded);
};

/* Called for each change a command makes, in order (for watchers): type
 * KV_TOP_PUT with cur the key's new state and prev its old one (NULL when
 * it was created), or KV_TOP_DEL with cur NULL. Views valid during the
 * call only; the callback must not modify the table. */
typedef void (*kv_event_cb)(void *arg, int type, const struct kv_view *cur,
                            const struct kv_view *prev);

/* A decoded command. Pointers point into the command bytes. */
struct kv_cmd {
    int op;               /* KV_OP_SET, KV_OP_DEL, KV_OP_TXN, KV_OP_SETL,
                             KV_OP_GRANT or KV_OP_REVOKE */
    uint64_t lease;       /* SETL, GRANT, REVOKE: the lease id */
    uint64_t ttl;         /* GRANT: seconds */
    const uint8_t *key;   /* SET, SETL, DEL: key bytes (borrowed) */
    size_t klen;          /* key length */
    const uint8_t *value; /* value bytes for SET, SETL, NULL otherwise */
    size_t vlen;          /* value length, 0 unless SET, SETL */
    size_t ncmp;          /* TXN: comparisons */
    size_t nsucc;         /* TXN: operations of the success branch */
    size_t nfail;         /* TXN: operations of the failure branch */
    const uint8_t *body;  /* TXN: bytes after byte 0 (for kv_txn_*) */
    size_t body_len;      /* their length */
};

/* What kv_apply did. */
struct kv_result {
    int op;            /* kv_cmd.op */
    int status;        /* KV_OK, or why the command was refused (KV_E*):
                          then nothing changed */
    uint64_t deleted;  /* REVOKE: keys deleted */
    bool existed;      /* SET, SETL, DEL: the key was present before */
    bool succeeded;    /* TXN: every comparison held, the success branch
                          ran; SET, DEL: true */
    uint64_t revision; /* the table's revision after the command */
};

/* Counters for tests and INFO-style reporting. */
struct kv_stats {
    size_t keys;               /* number of keys */
    size_t bytes;              /* sum of key and value lengths */
    size_t mem;                /* estimate: entries plus bucket arrays */
    size_t buckets[2];         /* bucket array sizes: main, rehash target */
    bool rehashing;            /* a grow or shrink is in progress */
    uint64_t grows;            /* rehashes begun to a larger table */
    uint64_t shrinks;          /* rehashes begun to a smaller table */
    uint64_t rehash_ops;       /* operations that advanced a rehash */
    uint64_t max_step_buckets; /* most bucket indices one op processed */
    uint64_t max_step_entries; /* most entries one op moved */
};

/* Called for each entry by kv_foreach and kv_scan. The pointers are
 * borrowed for the duration of the call. The callback must not modify the
 * table. kv_foreach stops when it returns nonzero; kv_scan ignores it. */
typedef int (*kv_visit_cb)(void *arg, const uint8_t *key, size_t klen,
                           const uint8_t *value, size_t vlen);

/* An empty table. kv_new() uses a fixed hash seed; a server should use
 * kv_new_seeded() with a seed drawn at startup so that clients cannot
 * choose keys that all land in one bucket. The seed changes only the layout,
 * never what the table holds or its digest. Never returns NULL. */
struct kv *kv_new(void);
struct kv *kv_new_seeded(uint64_t seed);
/* Frees the table and every entry. NULL is fine. */
void kv_free(struct kv *kv);
/* Sizes an empty table for n keys at once (loading a snapshot), so that
 * the load does no rehashing. No effect on a table that holds keys. */
void kv_reserve(struct kv *kv, size_t n);
/* Heap bytes a table of nkeys keys whose keys and values add up to
 * kv_bytes takes, about (leases aside): what a load warms (pz_warm). */
size_t kv_heap_estimate(uint64_t nkeys, uint64_t kv_bytes);
/* A hint before inserting key soon (a snapshot loader reading ahead):
 * starts loading the bucket it goes to into the cache. Changes nothing. */
void kv_prefetch(const struct kv *kv, const void *key, size_t klen);

/* Set key to value, copying both. Returns 1 if an existing value was
 * replaced, 0 if the key is new, PZ_ETOOBIG if klen > KV_KEY_MAX or
 * vlen > KV_VALUE_MAX (table unchanged). key and value may point into the
 * table (e.g. a value obtained from kv_get). */
int kv_set(struct kv *kv, const void *key, size_t klen, const void *value,
           size_t vlen);

/* Delete key. Returns 1 if it was removed, 0 if it was absent. */
int kv_del(struct kv *kv, const void *key, size_t klen);

/* Look key up. On a hit stores a pointer to the value and its length and
 * returns true; the pointer is borrowed, valid until the next kv_set,
 * kv_del, kv_apply or kv_free on this table (kv_get and iteration do not
 * invalidate it). The value is followed by a NUL byte that is not part of
 * it, for callers that want a C string. On a miss returns false and leaves
 * *val and *vlen alone. May advance a rehash (never moves entries in
 * memory). */
bool kv_get(struct kv *kv, const void *key, size_t klen, const uint8_t **val,
            size_t *vlen);

/* Advance a grow or shrink in progress by up to `steps` rehash steps (each
 * as bounded as the one every get/set/del does). For idle time: a table
 * that sees no more operations keeps both bucket arrays until it is
 * rehashed (Redis's activerehashing in serverCron). Returns true while a
 * rehash is still in progress. */
bool kv_rehash(struct kv *kv, size_t steps);

size_t kv_count(const struct kv *kv); /* number of keys */
size_t kv_bytes(const struct kv *kv); /* sum of key and value lengths */
/* What a key costs in the table beside its key and value bytes, counted
 * by quota-backend-bytes (kv_quota_bytes): its entry with its skiplist
 * links and their spans and malloc's header and rounding (70 bytes,
 * kv_heap_estimate) and its bucket slot (8 to 16 bytes at the table's
 * load), rounded up. make bench-kv-mem measures 74 (190 bytes per key of
 * 16-byte keys with 100-byte values). */
#define KV_KEY_OVERHEAD 96
/* What quota-backend-bytes counts of the table: kv_bytes plus
 * KV_KEY_OVERHEAD per key. */
size_t kv_quota_bytes(const struct kv *kv);

/* Order-independent digest of the contents, O(1) (see the file comment).
 * An empty table's digest is 0. */
uint64_t kv_digest(const struct kv *kv);
/* The same value recomputed from every entry, O(n): a self-check. */
uint64_t kv_digest_compute(const struct kv *kv);

void kv_stats(const struct kv *kv, struct kv_stats *out);

/* Visit every entry exactly once, in key order. Returns 0, or the
 * first nonzero value the callback returned (iteration stops there). */
int kv_foreach(const struct kv *kv, kv_visit_cb cb, void *arg);

/* Incremental scan with a reverse-binary cursor, as Redis's SCAN: start
 * with cursor 0, pass each returned cursor back, stop when 0 comes back.
 * Each call visits one bucket of the main table plus the matching buckets of
 * the other table while rehashing. The table may be modified between calls
 * (and may grow, shrink or rehash): every key present for the whole scan is
 * visited at least once; a key may be visited more than once; keys added or
 * removed during the scan may or may not be visited. */
uint64_t kv_scan(const struct kv *kv, uint64_t cursor, kv_visit_cb cb,
                 void *arg);

/* Append an encoded command to out (existing contents are kept). Returns 0,
 * or PZ_ETOOBIG (out unchanged) if a length exceeds its limit. */
int kv_encode_set(struct pz_buf *out, const void *key, size_t klen,
                  const void *value, size_t vlen);
int kv_encode_del(struct pz_buf *out, const void *key, size_t klen);

/* A set attaching key to lease (version 3 SETL; lease 0: a plain version 1
 * set). PZ_EINVAL for a lease id above KV_LEASE_ID_MAX, PZ_ETOOBIG as
 * kv_encode_set. */
int kv_encode_set_lease(struct pz_buf *out, const void *key, size_t klen,
                        const void *value, size_t vlen, uint64_t lease);
/* GRANT id with ttl seconds, REVOKE id. PZ_EINVAL (out unchanged) for an
 * id or ttl outside its range. */
int kv_encode_lease_grant(struct pz_buf *out, uint64_t id, uint64_t ttl);
int kv_encode_lease_revoke(struct pz_buf *out, uint64_t id);

/* Append an encoded transaction (version 2) to out. Returns 0, or
 * PZ_EINVAL (out unchanged) if a list is longer than KV_TXN_MAX, a target,
 * result, type or flag is unknown, or PZ_ETOOBIG if a length exceeds its
 * limit. */
int kv_encode_txn(struct pz_buf *out, const struct kv_cmp *cmps, size_t ncmp,
                  const struct kv_op *succ, size_t nsucc,
                  const struct kv_op *fail, size_t nfail);

/* Walk a decoded transaction (cmd from kv_decode, op KV_OP_TXN): fill
 * cmps (cmd->ncmp entries), succ (cmd->nsucc) and fail (cmd->nfail); any
 * may be NULL to skip it. Pointers point into the command. */
void kv_txn_items(const struct kv_cmd *cmd, struct kv_cmp *cmps,
                  struct kv_op *succ, struct kv_op *fail);

/* Decode cmd without applying it. Returns 0 and fills *out (pointers into
 * cmd), PZ_EINVAL for an unknown version or op (or len 0), or an unknown
 * target, result, operation type or flag, PZ_ECORRUPT for a truncated or
 * malformed command (bad varint, length past the end, trailing bytes),
 * PZ_ETOOBIG for a length or count above its limit. */
int kv_decode(const uint8_t *cmd, size_t len, struct kv_cmd *out);

/* Decode and apply one command. Returns 0 and fills *res (may be NULL), or
 * one of kv_decode's errors, in which case the table is unchanged. Every
 * node applying the same commands in the same order reaches the same
 * contents. */
int kv_apply(struct kv *kv, const uint8_t *cmd, size_t len,
             struct kv_result *res);
/* kv_apply, reporting a transaction's results to sink (may be NULL). */
int kv_apply_sink(struct kv *kv, const uint8_t *cmd, size_t len,
                  struct kv_result *res, const struct kv_sink *sink);

/* --- applying in steps ---------------------------------------------------
 *
 * A command whose work grows with the table (a DELRANGE, a REVOKE of a
 * lease holding many keys) can be applied in steps, so that a process
 * serving other work between them is never held for long by one command.
 * kv_apply_start decides everything that the outcome depends on (decoding,
 * the comparisons, every check that refuses a command) on the table as it
 * stands, then does up to *budget units of work; kv_job_run does up to
 * *budget more; each takes the units it used off *budget. A unit is about
 * one key deleted (a removed key, or a few cheap steps: keys collected or
 * sorted); every call makes progress (a budget of 0 does one unit), and
 * work that cannot be cut (a PUT, a GET, a RANGE's walk, a transaction's
 * checks) counts one unit. Every command counts one unit at least (one
 * that finds nothing to do, one refused, one that does not decode), and
 * one done at once (SET, SETL, DEL, GRANT) one more per 16 KiB of its
 * encoding, so that a caller applying many of them in a row (a follower
 * catching up) can stop between them too. Invariants
 * (test kv/job_chunked_vs_oneshot):
 *  - the table, its revision and digest, every event and lease callback
 *    (in order), every sink call and the result end exactly as with
 *    kv_apply_sink, whatever the budgets;
 *  - while a job is paused (between calls), the aggregates readers see
 *    (kv_revision, kv_count, kv_bytes, kv_quota_bytes, kv_digest) are
 *    those from before the command; the keys themselves are partly
 *    changed, so a caller must read no key, range or lease, and apply no
 *    other command, until the job is done (kv_paused tells);
 *  - the sink must stay valid until the job is done (or is given another,
 *    kv_job_set_sink); cmd only during the call (a paused job keeps a
 *    copy). */
struct kv_job;

/* Decode cmd and apply it within *budget. Returns kv_decode's errors
 * (nothing changed, *job NULL), or 0: with *job NULL the command is done
 * and *res filled (res may be NULL), else go on with kv_job_run. */
int kv_apply_start(struct kv *kv, const uint8_t *cmd, size_t len,
                   const struct kv_sink *sink, uint64_t *budget,
                   struct kv_result *res, struct kv_job **job);
/* Up to *budget more units of job. true: done, *res filled (may be NULL),
 * job freed; false: paused again. */
bool kv_job_run(struct kv_job *job, uint64_t *budget, struct kv_result *res);
/* Where the rest of job's results go (NULL: nowhere; the sink's owner
 * went away). */
void kv_job_set_sink(struct kv_job *job, const struct kv_sink *sink);
/* Drop job unfinished (the table is about to be freed or replaced: it is
 * left half changed). NULL is fine. */
void kv_job_free(struct kv_job *job);
/* Is a job paused on the table? */
bool kv_paused(const struct kv *kv);
/* The revision of the command being applied (kv_revision less the
 * freezing while paused): for an event hook, which runs inside steps. */
uint64_t kv_apply_revision(const struct kv *kv);

/* Is cmd a transaction whose branches only read (GET, RANGE)? */
bool kv_txn_readonly(const uint8_t *cmd, size_t len);
/* The same for a command kv_decode filled. */
bool kv_cmd_txn_readonly(const struct kv_cmd *c);

/* KV_ETXN_KEYS if transaction cmd, applied to the table as it stands,
 * would visit more than budget keys (or KV_TXN_KEYS_MAX) in its RANGE
 * walks; KV_OK otherwise (and for any other command). Reads at most
 * budget + 1 keys. */
int kv_txn_check(struct kv *kv, const uint8_t *cmd, size_t len,
                 uint64_t budget);
/* The same for a command kv_decode filled. */
int kv_cmd_txn_check(struct kv *kv, const struct kv_cmd *c, uint64_t budget);

/* Run a read-only transaction (kv_txn_readonly) on the table without the
 * log: comparisons, then the branch taken reported to sink as kv_apply_sink
 * would, res->revision the table's. A branch over budget (as kv_txn_check)
 * runs nothing: res->status KV_ETXN_KEYS. Returns 0, kv_decode's errors,
 * or PZ_EINVAL for a command that is not a read-only transaction. */
int kv_txn_read(struct kv *kv, const uint8_t *cmd, size_t len, uint64_t budget,
                struct kv_result *res, const struct kv_sink *sink);

/* --- revisions and ordered reads ---------------------------------------- */

/* The table's revision (see the file comment). */
uint64_t kv_revision(const struct kv *kv);

/* Look key up with its metadata. true and *out filled (pointers borrowed
 * as kv_get's) or false. */
bool kv_get_view(struct kv *kv, const void *key, size_t klen,
                 struct kv_view *out);

/* Called by kv_range and kv_foreach_view for each key, in key order; a
 * nonzero return stops the walk. The callback must not modify the table. */
typedef int (*kv_view_cb)(void *arg, const struct kv_view *v);

/* Visit the keys k with from <= k < to (to_end: no upper bound, to
 * ignored) in key order: O(log n) to find the first, then O(1) each.
 * Returns 0, or the first nonzero value cb returned. */
int kv_range(const struct kv *kv, const void *from, size_t flen, const void *to,
             size_t tlen, bool to_end, kv_view_cb cb, void *arg);
/* Every key, in order, with its metadata. */
int kv_foreach_view(const struct kv *kv, kv_view_cb cb, void *arg);
/* How many keys k with from <= k < to (to_end: to ignored) the table
 * holds, 0 when to <= from: O(log n) whatever the count, from the spans
 * of the ordered index (the file comment), visiting no key. */
uint64_t kv_range_count(const struct kv *kv, const void *from, size_t flen,
                        const void *to, size_t tlen, bool to_end);
/* Check the ordered index against a walk of every key, O(n levels): keys
 * in order, each level's links and tails, every span. A self-check for
 * tests, as kv_digest_compute. */
bool kv_index_check(const struct kv *kv);

/* The smallest key greater than every key that starts with prefix: the end
 * of the prefix's range. Writes it to out (plen bytes at most) and returns
 * its length, or returns -1 when there is none (the prefix is empty or all
 * 0xff bytes: the range runs to the end). */
long kv_prefix_end(const void *prefix, size_t plen, uint8_t *out);

/* Install watchers' hook (NULL: none). Borrowed for the table's life. */
void kv_set_event_cb(struct kv *kv, kv_event_cb cb, void *arg);

/* --- leases -------------------------------------------------------------- */

/* One lease as reads see it. */
struct kv_lease {
    uint64_t id;  /* lease id */
    uint64_t ttl; /* granted time to live, seconds */
    size_t nkeys; /* keys attached */
};

/* Lease id: true and *out filled, or false. O(log leases). */
bool kv_lease_get(const struct kv *kv, uint64_t id, struct kv_lease *out);
size_t kv_lease_count(const struct kv *kv); /* leases held */
/* The i-th lease in id order (i < kv_lease_count). */
void kv_lease_at(const struct kv *kv, size_t i, struct kv_lease *out);
/* Visit the keys attached to lease id in bytewise key order, so that a
 * listing (and where a size limit cuts it) is the same on every node
 * whatever order the keys were attached in or a snapshot load rebuilt;
 * the lease's list is sorted in place for it, once after keys were
 * attached (O(n log n), no memory), so kv is not const. A nonzero return
 * stops the walk and is returned. 0 for an unknown id. */
int kv_lease_keys(struct kv *kv, uint64_t id, kv_view_cb cb, void *arg);

/* Called after a lease is granted (granted true) or revoked (false),
 * at apply, for the expiry tracker (lease.h). Borrowed like the event cb;
 * the callback must not modify the table. */
typedef void (*kv_lease_cb)(void *arg, bool granted, uint64_t id,
                            uint64_t ttl);
void kv_set_lease_cb(struct kv *kv, kv_lease_cb cb, void *arg);

/* --- snapshots ---------------------------------------------------------- */

/* Add lease id with ttl (loading a snapshot, before its keys): no callback.
 * PZ_EINVAL for an id or ttl out of range, an id present, or a full
 * table (KV_LEASE_HARD_MAX). */
int kv_lease_restore(struct kv *kv, uint64_t id, uint64_t ttl);

/* Insert key with exactly this metadata (loading a snapshot): no event, no
 * revision change. Returns 0, PZ_EINVAL if the key is present (table
 * unchanged), PZ_ENOTFOUND if meta->lease is not 0 and names no lease
 * (kv_lease_restore them first), PZ_ETOOBIG as kv_set. */
int kv_restore(struct kv *kv, const void *key, size_t klen, const void *value,
               size_t vlen, const struct kv_meta *meta);
/* Set the revision (loading a snapshot, after its keys). */
void kv_set_revision(struct kv *kv, uint64_t rev);

#endif
