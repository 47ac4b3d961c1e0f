/* grpc_pb.c - see grpc_pb.h. Pure. */
#include "grpc_pb.h"

#include <string.h>

/* Unpacked requests live for one call: their blocks come from the
 * small-block cache. */
static void *pb_alloc(void *data, size_t size)
{
    if (data)
        *(size_t *)data += size; /* grpc_pb_counting */
    return pz_cache_alloc(size);
}

static void pb_free(void *data, void *p)
{
    PZ_UNUSED(data);
    pz_cache_free(p);
}

ProtobufCAllocator grpc_pb_allocator = {pb_alloc, pb_free, NULL};

ProtobufCAllocator grpc_pb_counting(size_t *count)
{
    ProtobufCAllocator a = {pb_alloc, pb_free, count};
    return a;
}

static int get_varint(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
    uint64_t r = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (*p >= end)
            return PZ_EINVAL;
        uint8_t b = *(*p)++;
        if (shift == 63 && b > 1)
            return PZ_EINVAL; /* more than 64 bits */
        r |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *v = r;
            return 0;
        }
    }
    return PZ_EINVAL;
}

int grpc_pb_next(const uint8_t **p, const uint8_t *end, struct grpc_pb_field *f)
{
    uint64_t tag, v;
    if (*p >= end)
        return 0;
    if (get_varint(p, end, &tag) < 0)
        return PZ_EINVAL;
    if ((tag >> 3) == 0 || (tag >> 3) > 0x1fffffff)
        return PZ_EINVAL;
    memset(f, 0, sizeof *f);
    f->num = (uint32_t)(tag >> 3);
    f->wire = (int)(tag & 7);
    switch (f->wire) {
    case GRPC_PB_VARINT:
        return get_varint(p, end, &f->v) < 0 ? PZ_EINVAL : 1;
    case GRPC_PB_I64:
        if (end - *p < 8)
            return PZ_EINVAL;
        for (int i = 7; i >= 0; i--)
            f->v = f->v << 8 | (*p)[i];
        *p += 8;
        return 1;
    case GRPC_PB_I32:
        if (end - *p < 4)
            return PZ_EINVAL;
        for (int i = 3; i >= 0; i--)
            f->v = f->v << 8 | (*p)[i];
        *p += 4;
        return 1;
    case GRPC_PB_LEN:
        if (get_varint(p, end, &v) < 0 || v > (uint64_t)(end - *p))
            return PZ_EINVAL;
        f->data = *p;
        f->len = (size_t)v;
        *p += v;
        return 1;
    default: /* groups (3, 4) and 6, 7 */
        return PZ_EINVAL;
    }
}

static void put_raw_varint(struct pz_buf *b, uint64_t v)
{
    uint8_t tmp[10];
    size_t n = 0;
    do {
        tmp[n] = (uint8_t)(v & 0x7f);
        v >>= 7;
        if (v)
            tmp[n] |= 0x80;
        n++;
    } while (v);
    pz_buf_append(b, tmp, n);
}

void grpc_pb_put_varint(struct pz_buf *b, uint32_t num, uint64_t v)
{
    put_raw_varint(b, (uint64_t)num << 3 | GRPC_PB_VARINT);
    put_raw_varint(b, v);
}

void grpc_pb_put_bytes(struct pz_buf *b, uint32_t num, const void *p,
                       size_t len)
{
    put_raw_varint(b, (uint64_t)num << 3 | GRPC_PB_LEN);
    put_raw_varint(b, len);
    if (len)
        pz_buf_append(b, p, len);
}

void grpc_pb_put_len_head(struct pz_buf *b, uint32_t num, size_t len)
{
    put_raw_varint(b, (uint64_t)num << 3 | GRPC_PB_LEN);
    put_raw_varint(b, len);
}

size_t grpc_pb_len_head_size(uint32_t num, size_t len)
{
    size_t n = 2; /* the tag's last byte, the length's last byte */
    for (uint64_t t = (uint64_t)num << 3; t >= 0x80; t >>= 7)
        n++;
    for (uint64_t v = len; v >= 0x80; v >>= 7)
        n++;
    return n;
}

void grpc_pb_put_fixed(struct pz_buf *b, uint32_t num, int wire, uint64_t v)
{
    uint8_t t[8];
    size_t n = wire == GRPC_PB_I32 ? 4 : 8;
    put_raw_varint(b, (uint64_t)num << 3 |
                          (uint64_t)(n == 4 ? GRPC_PB_I32 : GRPC_PB_I64));
    for (size_t i = 0; i < n; i++)
        t[i] = (uint8_t)(v >> (8 * i));
    pz_buf_append(b, t, n);
}

void grpc_pb_put_varint_opt(struct pz_buf *b, uint32_t num, uint64_t v)
{
    if (v)
        grpc_pb_put_varint(b, num, v);
}

void grpc_pb_put_bytes_opt(struct pz_buf *b, uint32_t num, const void *p,
                           size_t len)
{
    if (len)
        grpc_pb_put_bytes(b, num, p, len);
}

/* --- kv messages ---------------------------------------------------------- */

static const uint8_t empty[1];

/* An empty message may come as (NULL, 0): an empty pz_buf. Arithmetic on
 * a null pointer is undefined even with 0, so such input points at empty
 * instead. */
static const uint8_t *nonnull(const uint8_t *p)
{
    return p ? p : empty;
}

int grpc_kv_req_decode(int kind, const uint8_t *p, size_t len,
                       struct grpc_kv_req *out)
{
    p = nonnull(p);
    const uint8_t *end = p + len;
    struct grpc_pb_field f;
    int rv;
    memset(out, 0, sizeof *out);
    out->kind = kind;
    out->key = empty;
    out->value = empty;
    while ((rv = grpc_pb_next(&p, end, &f)) == 1) {
        if (f.num == 1) {
            if (f.wire != GRPC_PB_LEN)
                return PZ_EINVAL;
            out->key = f.data;
            out->klen = f.len;
        } else if (f.num == 2 && kind == GRPC_KV_SET) {
            if (f.wire != GRPC_PB_LEN)
                return PZ_EINVAL;
            out->value = f.data;
            out->vlen = f.len;
        } else if (f.num == 2 && kind == GRPC_KV_GET) {
            if (f.wire != GRPC_PB_VARINT)
                return PZ_EINVAL;
            out->stale = f.v != 0;
        }
        /* anything else: unknown, skipped */
    }
    return rv < 0 ? PZ_EINVAL : 0;
}

void grpc_kv_req_encode(struct pz_buf *b, const struct grpc_kv_req *r)
{
    grpc_pb_put_bytes_opt(b, 1, r->key, r->klen);
    if (r->kind == GRPC_KV_SET)
        grpc_pb_put_bytes_opt(b, 2, r->value, r->vlen);
    else if (r->kind == GRPC_KV_GET)
        grpc_pb_put_varint_opt(b, 2, r->stale);
}

void grpc_kv_get_resp_encode(struct pz_buf *b, const void *value, size_t vlen,
                             bool found)
{
    grpc_pb_put_bytes_opt(b, 1, value, vlen);
    grpc_pb_put_varint_opt(b, 2, found);
}

void grpc_kv_ok_resp_encode(struct pz_buf *b, bool success)
{
    grpc_pb_put_varint_opt(b, 1, success);
}

int grpc_kv_get_resp_decode(const uint8_t *p, size_t len, const uint8_t **value,
                            size_t *vlen, bool *found)
{
    p = nonnull(p);
    const uint8_t *end = p + len;
    struct grpc_pb_field f;
    int rv;
    *value = empty;
    *vlen = 0;
    *found = false;
    while ((rv = grpc_pb_next(&p, end, &f)) == 1) {
        if (f.num == 1) {
            if (f.wire != GRPC_PB_LEN)
                return PZ_EINVAL;
            *value = f.data;
            *vlen = f.len;
        } else if (f.num == 2) {
            if (f.wire != GRPC_PB_VARINT)
                return PZ_EINVAL;
            *found = f.v != 0;
        }
    }
    return rv < 0 ? PZ_EINVAL : 0;
}

int grpc_kv_ok_resp_decode(const uint8_t *p, size_t len, bool *success)
{
    p = nonnull(p);
    const uint8_t *end = p + len;
    struct grpc_pb_field f;
    int rv;
    *success = false;
    while ((rv = grpc_pb_next(&p, end, &f)) == 1) {
        if (f.num == 1) {
            if (f.wire != GRPC_PB_VARINT)
                return PZ_EINVAL;
            *success = f.v != 0;
        }
    }
    return rv < 0 ? PZ_EINVAL : 0;
}
