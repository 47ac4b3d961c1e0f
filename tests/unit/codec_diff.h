/* codec_diff.h - the differential check of raft_codec_decode (hand
 * written) against raft_codec_decode_pb (protobuf-c), shared by the unit
 * tests and the raft_codec fuzz target. Header-only: static functions.
 *
 * Both must accept a body with equal results, or refuse it with the same
 * code, except where:
 *   - either runs out of its allocation budget or memory (PZ_ETOOBIG,
 *     PZ_ENOMEM): they allocate differently;
 *   - the hand-written decoder refuses as PZ_ECORRUPT one of the
 *     constructs raft_codec.c lists (protobuf-c truncates or merges them,
 *     none of our senders writes them); codec_diff_documented() finds
 *     them in the body with a walker of its own. */
#ifndef CODEC_DIFF_H
#define CODEC_DIFF_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "raft_codec.h"

enum { CD_FRAME, CD_MSG, CD_ENTRY, CD_CHUNK, CD_OTHER };

/* A varint of at most max bytes at *p: its value (64 bits kept) and
 * whether it has more than 64 bits. */
static bool cd_varint(const uint8_t **p, const uint8_t *end, unsigned max,
                      uint64_t *v, bool *over)
{
    uint64_t x = 0;
    *over = false;
    for (unsigned i = 0; i < max && *p < end; i++) {
        uint8_t b = *(*p)++;
        if (i == 9 && b > 1)
            *over = true;
        if (i < 10)
            x |= (uint64_t)(b & 0x7f) << (7 * i);
        if (b < 0x80) {
            *v = x;
            return true;
        }
    }
    return false;
}

static bool cd_is_u32(int kind, uint64_t field)
{
    return (kind == CD_MSG && field == 1) || (kind == CD_ENTRY && field == 3);
}

/* protobuf-c reads a bool of any wire type. */
static bool cd_is_bool(int kind, uint64_t field)
{
    return kind == CD_MSG && (field == 2 || field == 3);
}

static bool cd_known_varint(int kind, uint64_t f)
{
    switch (kind) {
    case CD_MSG:
        return (f >= 1 && f <= 11) || f == 13 || f == 14 || f == 16;
    case CD_ENTRY:
        return f >= 1 && f <= 3;
    case CD_CHUNK:
        return (f >= 1 && f <= 4) || f == 6;
    default:
        return false;
    }
}

/* The body holds a construct the hand-written decoder refuses on
 * purpose (see raft_codec.c). */
static bool cd_walk(const uint8_t *p, const uint8_t *end, int kind)
{
    int bodies = 0;
    while (p < end) {
        uint64_t tag, v;
        bool over;
        const uint8_t *t0 = p;
        if (!cd_varint(&p, end, 5, &tag, &over))
            return false;
        uint64_t field = (tag >> 3) & UINT32_MAX;
        if (field == 0)
            return p - t0 > 1; /* protobuf-c: one-byte tag 0 only */
        switch (tag & 7) {
        case 0:
            if (!cd_varint(&p, end, 10, &v, &over))
                return false;
            if (cd_known_varint(kind, field) &&
                (over || (cd_is_u32(kind, field) && v > UINT32_MAX)))
                return true;
            break;
        case 1:
            if (end - p < 8)
                return false;
            p += 8;
            if (cd_is_bool(kind, field))
                return true;
            break;
        case 5:
            if (end - p < 4)
                return false;
            p += 4;
            if (cd_is_bool(kind, field))
                return true;
            break;
        case 2:
            if (!cd_varint(&p, end, 5, &v, &over))
                return false;
            if (v > UINT32_MAX)
                return true;
            if (v > (uint64_t)(end - p))
                return false;
            if (cd_is_bool(kind, field))
                return true;
            if (kind == CD_FRAME && field >= 1 && field <= 4) {
                if (++bodies > 1)
                    return true;
                if (cd_walk(p, p + v,
                            field == 3   ? CD_MSG
                            : field == 4 ? CD_CHUNK
                                         : CD_OTHER))
                    return true;
            } else if (kind == CD_MSG && field == 12 &&
                       cd_walk(p, p + v, CD_ENTRY)) {
                return true;
            }
            p += v;
            break;
        default:
            return false;
        }
    }
    return false;
}

static bool codec_diff_documented(const uint8_t *body, size_t len)
{
    return len > 0 && cd_walk(body, body + len, CD_FRAME);
}

static bool cd_bytes_eq(const uint8_t *a, size_t al, const uint8_t *b,
                        size_t bl)
{
    return al == bl && (al == 0 || memcmp(a, b, al) == 0);
}

static bool cd_str_eq(const char *a, const char *b)
{
    return strcmp(a ? a : "", b ? b : "") == 0;
}

static bool codec_diff_same(const struct raft_decoded *a,
                            const struct raft_decoded *b)
{
    if (a->kind != b->kind)
        return false;
    switch (a->kind) {
    case RAFT_FRAME_MESSAGE: {
        const struct raft_msg *x = &a->msg, *y = &b->msg;
        if (x->type != y->type || x->reject != y->reject ||
            x->transfer != y->transfer || x->from != y->from ||
            x->to != y->to || x->term != y->term ||
            x->log_term != y->log_term || x->index != y->index ||
            x->commit != y->commit || x->reject_hint != y->reject_hint ||
            x->context != y->context || x->lease_ns != y->lease_ns ||
            x->snap_index != y->snap_index || x->snap_term != y->snap_term ||
            !cd_bytes_eq(x->snap_data, x->snap_len, y->snap_data,
                         y->snap_len) ||
            (x->snap_len == 0) != (x->snap_data == NULL) ||
            x->n_entries != y->n_entries ||
            (x->n_entries == 0) != (x->entries == NULL))
            return false;
        for (size_t i = 0; i < x->n_entries; i++) {
            const struct raft_entry *e = &x->entries[i], *f = &y->entries[i];
            if (e->term != f->term || e->index != f->index ||
                e->type != f->type ||
                !cd_bytes_eq(e->data, e->len, f->data, f->len) ||
                (e->len == 0) != (e->data == NULL))
                return false;
        }
        return true;
    }
    case RAFT_FRAME_CHUNK:
        return a->chunk.term == b->chunk.term &&
               a->chunk.snap_index == b->chunk.snap_index &&
               a->chunk.snap_term == b->chunk.snap_term &&
               a->chunk.offset == b->chunk.offset &&
               a->chunk.total == b->chunk.total &&
               cd_bytes_eq(a->chunk.data, a->chunk.len, b->chunk.data,
                           b->chunk.len);
    case RAFT_FRAME_HANDSHAKE:
        return a->hs.version == b->hs.version &&
               a->hs.cluster_id == b->hs.cluster_id &&
               a->hs.node_id == b->hs.node_id &&
               a->hs.target_id == b->hs.target_id &&
               cd_str_eq(a->hs.name, b->hs.name) &&
               cd_str_eq(a->hs.token, b->hs.token) &&
               cd_str_eq(a->hs.raft_addr, b->hs.raft_addr);
    case RAFT_FRAME_REPLY:
        return a->reply.status == b->reply.status &&
               a->reply.node_id == b->reply.node_id &&
               cd_str_eq(a->reply.name, b->reply.name);
    default:
        return false;
    }
}

/* Decodes body both ways. NULL when they agree (or differ only as the
 * top of this file allows), else what differs. *skipped: a budget or
 * memory outcome made the comparison moot. */
static const char *codec_diff_check(const uint8_t *body, size_t len,
                                    bool *skipped, int *ours_rv)
{
    struct raft_decoded a, b;
    const char *why = NULL;
    int ra = raft_codec_decode(body, len, &a);
    int rb = raft_codec_decode_pb(body, len, &b);
    *skipped = false;
    *ours_rv = ra;
    if (ra == PZ_ETOOBIG || ra == PZ_ENOMEM || rb == PZ_ETOOBIG ||
        rb == PZ_ENOMEM)
        *skipped = true;
    else if (ra == 0 && rb == 0)
        why = codec_diff_same(&a, &b) ? NULL : "different values";
    else if (ra == PZ_ECORRUPT && rb != PZ_ECORRUPT)
        why = codec_diff_documented(body, len)
                  ? NULL
                  : "refused as corrupt, protobuf-c takes it";
    else if (ra != rb)
        why = "different results";
    raft_decoded_free(&a);
    raft_decoded_free(&b);
    return why;
}

#endif
