/* kv.h - the key-value state machine: a hash table of binary-safe byte
 * strings and the command format the Raft log carries. Pure: no I/O, no
 * clocks, no randomness; single-threaded like the rest of the process.
 *
 * Keys and values are arbitrary bytes (NUL included); the table copies
 * them. Lookups, inserts and deletes are O(1) on average. The table grows
 * (to twice its size) when it holds as many keys as buckets and shrinks when
 * it holds fewer keys than an eighth of its buckets; either way the move
 * from the old bucket array to the new one is incremental, as in Redis's
 * dict: every kv_get/kv_set/kv_del processes at most KV_REHASH_EMPTY_VISITS
 * indices of the old array and moves the chain of at most one of them, so
 * no operation stalls on a full rehash (kv_stats reports the maxima seen).
 *
 * Command format (version 1). A command is what kv_encode_* produce and
 * kv_apply consumes; it travels in Raft log entries unchanged, so the format
 * is part of the on-disk format and must stay decodable forever:
 *
 *   byte 0      (version << 4) | op: 0x11 SET, 0x12 DEL
 *   SET         varint klen, klen key bytes, varint vlen, vlen value bytes
 *   DEL         varint klen, klen key bytes
 *
 * A varint is unsigned LEB128 (7 bits per byte, least significant group
 * first, high bit = more), in its shortest form, at most 5 bytes. Nothing
 * may follow the last field. klen <= KV_KEY_MAX, vlen <= KV_VALUE_MAX. A new
 * version gets a new high nibble; old versions stay accepted.
 *
 * Digest: kv_digest() is the sum (mod 2^64) over all entries of a hash of
 * (key, value) with fixed seeds, kept up to date on every mutation. It does
 * not depend on insertion order, on the table seed or on the table size, so
 * two nodes that applied the same commands have equal digests. */
#ifndef PZ_KV_H
#define PZ_KV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pz.h"

#define KV_KEY_MAX (1u << 20)   /* longest key, bytes (1 MiB) */
#define KV_VALUE_MAX (1u << 28) /* longest value, bytes (256 MiB) */

#define KV_CMD_VERSION 1 /* version written by kv_encode_* */
#define KV_OP_SET 1      /* low nibble of byte 0: set key to value */
#define KV_OP_DEL 2      /* low nibble of byte 0: delete key */

/* Bucket indices one rehash step may look at without finding an entry
 * before it gives up for this operation (Redis uses 10 as well); also the
 * most indices any one step processes. */
#define KV_REHASH_EMPTY_VISITS 10

/* Longest encoding of a command header plus both length fields. */
#define KV_CMD_OVERHEAD (1 + 5 + 5)

struct kv;

/* A decoded command. key and value point into the command bytes. */
struct kv_cmd {
    int op;               /* KV_OP_SET or KV_OP_DEL */
    const uint8_t *key;   /* key bytes (borrowed) */
    size_t klen;          /* key length */
    const uint8_t *value; /* value bytes for SET, NULL for DEL */
    size_t vlen;          /* value length, 0 for DEL */
};

/* What kv_apply did. */
struct kv_result {
    int op;       /* KV_OP_SET or KV_OP_DEL */
    bool existed; /* key was present before: SET replaced, DEL removed it */
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

/* Order-independent digest of the contents, O(1) (see the file comment).
 * An empty table's digest is 0. */
uint64_t kv_digest(const struct kv *kv);
/* The same value recomputed from every entry, O(n): a self-check. */
uint64_t kv_digest_compute(const struct kv *kv);

void kv_stats(const struct kv *kv, struct kv_stats *out);

/* Visit every entry exactly once, in no particular order. Returns 0, or the
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

/* Decode cmd without applying it. Returns 0 and fills *out (pointers into
 * cmd), PZ_EINVAL for an unknown version or op (or len 0), PZ_ECORRUPT for
 * a truncated or malformed command (bad varint, length past the end,
 * trailing bytes), PZ_ETOOBIG for a length above its limit. */
int kv_decode(const uint8_t *cmd, size_t len, struct kv_cmd *out);

/* Decode and apply one command. Returns 0 and fills *res (may be NULL), or
 * one of kv_decode's errors, in which case the table is unchanged. Every
 * node applying the same commands in the same order reaches the same
 * contents. */
int kv_apply(struct kv *kv, const uint8_t *cmd, size_t len,
             struct kv_result *res);

#endif
