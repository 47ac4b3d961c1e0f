/* grpc_pb.h - a minimal protobuf wire-format reader and writer, and the
 * kv.KVService messages built on it. Pure.
 *
 * Why not protobuf-c for kv.proto: protobuf-c maps proto3 `string` to a
 * NUL-terminated char *, so a key or value holding a NUL byte would be cut
 * short on decode and on encode. Keys and values are binary-safe everywhere
 * else (HTTP, the state machine), so the three kv messages are coded here
 * with explicit lengths; the encoding is byte-for-byte what any protobuf
 * library produces for them (fields in number order, proto3 defaults
 * omitted). The other services (health, reflection, cluster status) use
 * protobuf-c.
 *
 * Decoding follows protobuf rules: unknown fields are skipped, a repeated
 * scalar field keeps its last value, a known field with the wrong wire type
 * or a truncated field makes the whole message invalid (PZ_EINVAL). */
#ifndef PZ_GRPC_PB_H
#define PZ_GRPC_PB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "pz.h"

/* protobuf-c allocator backed by pz_malloc/pz_free, for every
 * *__unpack() and *__free_unpacked() call. */
extern ProtobufCAllocator grpc_pb_allocator;
/* The same, adding the size of each block it allocates to *count: what
 * an unpacked message holds (free it with either). */
ProtobufCAllocator grpc_pb_counting(size_t *count);

enum {
    GRPC_PB_VARINT = 0, /* wire type: varint */
    GRPC_PB_I64 = 1,    /* wire type: 8 bytes */
    GRPC_PB_LEN = 2,    /* wire type: length-delimited */
    GRPC_PB_I32 = 5,    /* wire type: 4 bytes */
};

struct grpc_pb_field {
    uint32_t num;        /* field number */
    int wire;            /* GRPC_PB_* */
    uint64_t v;          /* VARINT, I64, I32: the value */
    const uint8_t *data; /* LEN: the bytes (borrowed from the input) */
    size_t len;          /* LEN: their length */
};

/* Read the field at *p (before end) and advance *p past it. Returns 1 when
 * a field was read, 0 at the end of the input, PZ_EINVAL for malformed
 * input (bad varint, field number 0, group wire types, truncation). */
int grpc_pb_next(const uint8_t **p, const uint8_t *end,
                 struct grpc_pb_field *f);

/* Append one field. The _opt variants omit proto3 defaults (0, empty). */
void grpc_pb_put_varint(struct pz_buf *b, uint32_t num, uint64_t v);
void grpc_pb_put_bytes(struct pz_buf *b, uint32_t num, const void *p,
                       size_t len);
/* The head (tag and length) of a length-delimited field of len bytes,
 * which the caller appends; the bytes that head takes. */
void grpc_pb_put_len_head(struct pz_buf *b, uint32_t num, size_t len);
size_t grpc_pb_len_head_size(uint32_t num, size_t len);
/* A fixed-width field: wire GRPC_PB_I32 (the low 4 bytes of v) or
 * GRPC_PB_I64, little-endian. */
void grpc_pb_put_fixed(struct pz_buf *b, uint32_t num, int wire, uint64_t v);
void grpc_pb_put_varint_opt(struct pz_buf *b, uint32_t num, uint64_t v);
void grpc_pb_put_bytes_opt(struct pz_buf *b, uint32_t num, const void *p,
                           size_t len);

/* --- kv.KVService messages ---------------------------------------------- */

enum grpc_kv_kind {
    GRPC_KV_GET = 1, /* GetRequest: key = 1, stale = 2 */
    GRPC_KV_SET = 2, /* SetRequest: key = 1, value = 2 */
    GRPC_KV_DEL = 3, /* DeleteRequest: key = 1 */
};

/* A decoded request; pointers borrow the message bytes. */
struct grpc_kv_req {
    int kind;             /* enum grpc_kv_kind */
    const uint8_t *key;   /* key bytes ("" when absent) */
    size_t klen;          /* key length */
    const uint8_t *value; /* SET: value bytes ("" when absent) */
    size_t vlen;          /* SET: value length */
    bool stale;           /* GET: serve from local state, no leader check */
};

/* Returns 0 or PZ_EINVAL. Every decoder takes (NULL, 0) as an empty
 * message. */
int grpc_kv_req_decode(int kind, const uint8_t *p, size_t len,
                       struct grpc_kv_req *out);
/* Append the request message (for clients). */
void grpc_kv_req_encode(struct pz_buf *b, const struct grpc_kv_req *r);

/* GetResponse {value = 1, found = 2}; SetResponse/DeleteResponse
 * {success = 1}. */
void grpc_kv_get_resp_encode(struct pz_buf *b, const void *value, size_t vlen,
                             bool found);
void grpc_kv_ok_resp_encode(struct pz_buf *b, bool success);
/* For clients. value borrows the message. Returns 0 or PZ_EINVAL. */
int grpc_kv_get_resp_decode(const uint8_t *p, size_t len, const uint8_t **value,
                            size_t *vlen, bool *found);
int grpc_kv_ok_resp_decode(const uint8_t *p, size_t len, bool *success);

#endif
