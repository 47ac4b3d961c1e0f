/* raft_codec.c - see raft_codec.h. Translates between the C structs and the
 * protobuf-c structs generated from proto/raft.proto, and reassembles
 * length-prefixed frames. Pure.
 *
 * Encoding builds the protobuf-c structs on the stack pointing at the
 * caller's memory (payloads are not copied twice), sizes the frame, then
 * packs it straight into the output buffer; Raft messages, the bulk of the
 * traffic, are written by hand instead (the same bytes, see
 * raft_codec_encode_msg). Decoding unpacks with an
 * allocator that goes through pz_malloc_try, so an allocation failure is an
 * error, not an abort, and every peer-controlled value is range-checked
 * before it is narrowed into struct raft_msg. */
#include "raft_codec.h"

#include <string.h>

#include "raft.pb-c.h"

#define PARSER_KEEP (1u << 20) /* parser buffer kept between frames */
#define PARSER_MIN_ALLOC 4096  /* first allocation for a split body */

const char *raft_hs_status_str(uint32_t status)
{
    switch (status) {
    case RAFT_HS_OK:
        return "ok";
    case RAFT_HS_BAD_VERSION:
        return "unsupported protocol version";
    case RAFT_HS_CLUSTER_MISMATCH:
        return "cluster id mismatch";
    case RAFT_HS_DUPLICATE_ID:
        return "duplicate node id";
    case RAFT_HS_BAD_TOKEN:
        return "cluster token mismatch";
    case RAFT_HS_WRONG_NODE:
        return "wrong node";
    case RAFT_HS_BAD_HANDSHAKE:
        return "invalid handshake";
    case RAFT_HS_NOT_MEMBER:
        return "not a member of the cluster";
    case RAFT_HS_REMOVED:
        return "removed from the cluster";
    case RAFT_HS_OTHER_INCARNATION:
        return "a member of that name has another data dir";
    default:
        return "unknown status";
    }
}

/* --- encoding --------------------------------------------------------- */

static int pack_frame(struct pz_buf *out, Pyazdb__Raft__Frame *f, size_t max)
{
    size_t n = pyazdb__raft__frame__get_packed_size(f);
    if (n > max || n > UINT32_MAX)
        return PZ_ETOOBIG;
    pz_buf_reserve(out, RAFT_FRAME_HDR + n);
    uint8_t *p = (uint8_t *)out->data + out->len;
    pz_put_u32(p, (uint32_t)n);
    size_t w = pyazdb__raft__frame__pack(f, p + RAFT_FRAME_HDR);
    pz_assert(w == n);
    out->len += RAFT_FRAME_HDR + n;
    out->data[out->len] = '\0'; /* pz_buf keeps a NUL after the data */
    return 0;
}

/* protobuf-c wants char * even for fields it only reads. */
static char *str_arg(const char *s)
{
    return (char *)(s ? s : "");
}

int raft_codec_encode_handshake(struct pz_buf *out,
                                const struct raft_handshake *h, size_t max)
{
    Pyazdb__Raft__Handshake ph = PYAZDB__RAFT__HANDSHAKE__INIT;
    Pyazdb__Raft__Frame f = PYAZDB__RAFT__FRAME__INIT;
    ph.version = h->version;
    ph.cluster_id = h->cluster_id;
    ph.node_id = h->node_id;
    ph.target_id = h->target_id;
    ph.name = str_arg(h->name);
    ph.token = str_arg(h->token);
    ph.http_addr = str_arg(h->http_addr);
    ph.grpc_addr = str_arg(h->grpc_addr);
    ph.raft_addr = str_arg(h->raft_addr);
    ph.incarnation = h->incarnation;
    ph.member_since = h->member_since;
    ph.frame_crc = h->frame_crc;
    f.body_case = PYAZDB__RAFT__FRAME__BODY_HANDSHAKE;
    f.handshake = &ph;
    return pack_frame(out, &f, max);
}

int raft_codec_encode_reply(struct pz_buf *out,
                            const struct raft_handshake_reply *r, size_t max)
{
    Pyazdb__Raft__HandshakeReply pr = PYAZDB__RAFT__HANDSHAKE_REPLY__INIT;
    Pyazdb__Raft__Frame f = PYAZDB__RAFT__FRAME__INIT;
    pr.status = (Pyazdb__Raft__HandshakeReply__Status)r->status;
    pr.version = r->version;
    pr.node_id = r->node_id;
    pr.name = str_arg(r->name);
    pr.http_addr = str_arg(r->http_addr);
    pr.grpc_addr = str_arg(r->grpc_addr);
    pr.conf_index = r->conf_index;
    pr.conf_term = r->conf_term;
    pr.incarnation = r->incarnation;
    pr.member_since = r->member_since;
    pr.frame_crc = r->frame_crc;
    f.body_case = PYAZDB__RAFT__FRAME__BODY_HANDSHAKE_REPLY;
    f.handshake_reply = &pr;
    return pack_frame(out, &f, max);
}

int raft_codec_encode_chunk(struct pz_buf *out,
                            const struct raft_snap_chunk *c, size_t max)
{
    Pyazdb__Raft__SnapshotChunk pc = PYAZDB__RAFT__SNAPSHOT_CHUNK__INIT;
    Pyazdb__Raft__Frame f = PYAZDB__RAFT__FRAME__INIT;
    pc.term = c->term;
    pc.snap_index = c->snap_index;
    pc.snap_term = c->snap_term;
    pc.offset = c->offset;
    pc.total = c->total;
    pc.data.len = c->len;
    pc.data.data = (uint8_t *)c->data;
    f.body_case = PYAZDB__RAFT__FRAME__BODY_CHUNK;
    f.chunk = &pc;
    return pack_frame(out, &f, max);
}

/* RaftMessage frames (every APPEND, to every follower) are written by
 * hand, byte for byte what protobuf-c packs for proto/raft.proto (proto3:
 * fields in number order, zero scalars and empty bytes left out, each
 * entry a length-delimited Entry even when empty), without building the
 * protobuf-c structs and walking their descriptors twice (size, pack).
 * Every tag below fits in one byte (field numbers under 16). */
#define PB_VARINT 0u
#define PB_LEN 2u
#define PB_TAG(field, wt) ((uint8_t)((field) << 3 | (wt)))

static size_t varint_len(uint64_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static uint8_t *put_varint(uint8_t *p, uint64_t v)
{
    while (v >= 0x80) {
        *p++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *p++ = (uint8_t)v;
    return p;
}

/* Size of a varint field, absent if 0: its tag (two bytes or more from
 * field 16 on) and its value. */
static size_t opt_varint_len_at(unsigned field, uint64_t v)
{
    return v ? varint_len((uint64_t)field << 3) + varint_len(v) : 0;
}

/* The same for fields 1 to 15 (a tag of one byte). */
static size_t opt_varint_len(uint64_t v)
{
    return opt_varint_len_at(1, v);
}

static uint8_t *put_opt_varint(uint8_t *p, unsigned field, uint64_t v)
{
    if (v == 0)
        return p;
    p = put_varint(p, (uint64_t)field << 3 | PB_VARINT);
    return put_varint(p, v);
}

static size_t opt_bytes_len(size_t len)
{
    return len ? 1 + varint_len(len) + len : 0;
}

static uint8_t *put_opt_bytes(uint8_t *p, unsigned field, const uint8_t *d,
                              size_t len)
{
    if (len == 0)
        return p;
    *p++ = PB_TAG(field, PB_LEN);
    p = put_varint(p, len);
    memcpy(p, d, len);
    return p + len;
}

static size_t entry_len(const struct raft_entry *e)
{
    return opt_varint_len(e->term) + opt_varint_len(e->index) +
           opt_varint_len(e->type) + opt_bytes_len(e->len);
}

static size_t msg_len(const struct raft_msg *m)
{
    size_t n = opt_varint_len(m->type) + opt_varint_len(m->reject) +
               opt_varint_len(m->transfer) + opt_varint_len(m->from) +
               opt_varint_len(m->to) + opt_varint_len(m->term) +
               opt_varint_len(m->log_term) + opt_varint_len(m->index) +
               opt_varint_len(m->commit) + opt_varint_len(m->reject_hint) +
               opt_varint_len(m->context);
    for (size_t i = 0; i < m->n_entries; i++) {
        size_t el = entry_len(&m->entries[i]);
        n += 1 + varint_len(el) + el;
    }
    return n + opt_varint_len(m->snap_index) + opt_varint_len(m->snap_term) +
           opt_bytes_len(m->snap_len) + opt_varint_len_at(16, m->lease_ns);
}

int raft_codec_encode_msg(struct pz_buf *out, const struct raft_msg *m,
                          size_t max)
{
    size_t ml = msg_len(m);
    size_t n = 1 + varint_len(ml) + ml; /* Frame { message = 3 } */
    if (n > max || n > UINT32_MAX)
        return PZ_ETOOBIG;
    pz_buf_reserve(out, RAFT_FRAME_HDR + n);
    uint8_t *p = (uint8_t *)out->data + out->len;
    uint8_t *start = p;
    pz_put_u32(p, (uint32_t)n);
    p += RAFT_FRAME_HDR;
    *p++ = PB_TAG(3, PB_LEN);
    p = put_varint(p, ml);
    p = put_opt_varint(p, 1, m->type);
    p = put_opt_varint(p, 2, m->reject);
    p = put_opt_varint(p, 3, m->transfer);
    p = put_opt_varint(p, 4, m->from);
    p = put_opt_varint(p, 5, m->to);
    p = put_opt_varint(p, 6, m->term);
    p = put_opt_varint(p, 7, m->log_term);
    p = put_opt_varint(p, 8, m->index);
    p = put_opt_varint(p, 9, m->commit);
    p = put_opt_varint(p, 10, m->reject_hint);
    p = put_opt_varint(p, 11, m->context);
    for (size_t i = 0; i < m->n_entries; i++) {
        const struct raft_entry *e = &m->entries[i];
        *p++ = PB_TAG(12, PB_LEN);
        p = put_varint(p, entry_len(e));
        p = put_opt_varint(p, 1, e->term);
        p = put_opt_varint(p, 2, e->index);
        p = put_opt_varint(p, 3, e->type);
        p = put_opt_bytes(p, 4, e->data, e->len);
    }
    p = put_opt_varint(p, 13, m->snap_index);
    p = put_opt_varint(p, 14, m->snap_term);
    p = put_opt_bytes(p, 15, m->snap_data, m->snap_len);
    p = put_opt_varint(p, 16, m->lease_ns);
    pz_assert((size_t)(p - start) == RAFT_FRAME_HDR + n);
    out->len += RAFT_FRAME_HDR + n;
    out->data[out->len] = '\0'; /* pz_buf keeps a NUL after the data */
    return 0;
}

/* --- decoding ----------------------------------------------------------- */

/* Allocations of one decode, charged against a budget proportional to
 * the frame's size; the counters tell an allocation failure and an
 * exhausted budget apart from bad input (protobuf-c reports all three as
 * NULL). */
struct decode_budget {
    size_t left;       /* bytes the decode may still allocate */
    unsigned failures; /* allocations that failed */
    bool over;         /* an allocation exceeded the budget */
};

static void *pb_alloc(void *ctx, size_t n)
{
    struct decode_budget *b = ctx;
    if (n > b->left) {
        b->over = true;
        return NULL;
    }
    void *p = pz_malloc_try(n);
    if (p == NULL) {
        b->failures++;
        return NULL;
    }
    b->left -= n;
    return p;
}

static void pb_free(void *ctx, void *p)
{
    PZ_UNUSED(ctx);
    pz_free(p);
}

static ProtobufCAllocator pb_free_allocator = {
    .alloc = pb_alloc, /* not used by free_unpacked */
    .free = pb_free,
    .allocator_data = NULL,
};

static int decode_msg(const Pyazdb__Raft__RaftMessage *pm, struct raft_msg *m,
                      struct decode_budget *b)
{
    if (pm->type < RAFT_MSG_APPEND || pm->type >= RAFT_MSG_TYPE_MAX)
        return PZ_EPROTO;
    m->type = (uint8_t)pm->type;
    m->reject = pm->reject;
    m->transfer = pm->transfer;
    m->from = pm->from;
    m->to = pm->to;
    m->term = pm->term;
    m->log_term = pm->log_term;
    m->index = pm->index;
    m->commit = pm->commit;
    m->reject_hint = pm->reject_hint;
    m->context = pm->context;
    m->lease_ns = pm->lease_ns;
    m->snap_index = pm->snap_index;
    m->snap_term = pm->snap_term;
    m->snap_len = pm->snap_data.len;
    m->snap_data = pm->snap_data.len ? pm->snap_data.data : NULL;
    m->n_entries = 0;
    m->entries = NULL;
    if (pm->n_entries == 0)
        return 0;
    for (size_t i = 0; i < pm->n_entries; i++)
        if (pm->entries[i]->type > RAFT_ENTRY_NOOP)
            return PZ_EPROTO;
    if (pm->n_entries > b->left / sizeof *m->entries)
        return PZ_ETOOBIG;
    m->entries = pz_malloc_try(pm->n_entries * sizeof *m->entries);
    if (m->entries == NULL)
        return PZ_ENOMEM;
    for (size_t i = 0; i < pm->n_entries; i++) {
        const Pyazdb__Raft__Entry *pe = pm->entries[i];
        struct raft_entry *e = &m->entries[i];
        e->term = pe->term;
        e->index = pe->index;
        e->type = (uint8_t)pe->type;
        e->len = pe->data.len;
        e->data = pe->data.len ? pe->data.data : NULL;
    }
    m->n_entries = pm->n_entries;
    return 0;
}

int raft_codec_decode_pb(const uint8_t *body, size_t len,
                         struct raft_decoded *d)
{
    static const uint8_t empty[1];
    struct decode_budget budget = {
        .left = len > (SIZE_MAX - RAFT_DECODE_SLACK) / 2
                    ? SIZE_MAX
                    : 2 * len + RAFT_DECODE_SLACK,
    };
    ProtobufCAllocator a = {
        .alloc = pb_alloc,
        .free = pb_free,
        .allocator_data = &budget,
    };
    memset(d, 0, sizeof *d);
    Pyazdb__Raft__Frame *f =
        pyazdb__raft__frame__unpack(&a, len, body ? body : empty);
    if (f == NULL)
        return budget.over       ? PZ_ETOOBIG
               : budget.failures ? PZ_ENOMEM
                                 : PZ_ECORRUPT;
    int rv = 0;
    switch (f->body_case) {
    case PYAZDB__RAFT__FRAME__BODY_HANDSHAKE: {
        const Pyazdb__Raft__Handshake *h = f->handshake;
        d->kind = RAFT_FRAME_HANDSHAKE;
        d->hs.version = h->version;
        d->hs.cluster_id = h->cluster_id;
        d->hs.node_id = h->node_id;
        d->hs.target_id = h->target_id;
        d->hs.name = h->name;
        d->hs.token = h->token;
        d->hs.http_addr = h->http_addr;
        d->hs.grpc_addr = h->grpc_addr;
        d->hs.raft_addr = h->raft_addr;
        d->hs.incarnation = h->incarnation;
        d->hs.member_since = h->member_since;
        d->hs.frame_crc = h->frame_crc;
        break;
    }
    case PYAZDB__RAFT__FRAME__BODY_HANDSHAKE_REPLY: {
        const Pyazdb__Raft__HandshakeReply *r = f->handshake_reply;
        d->kind = RAFT_FRAME_REPLY;
        d->reply.status = (uint32_t)r->status;
        d->reply.version = r->version;
        d->reply.node_id = r->node_id;
        d->reply.name = r->name;
        d->reply.http_addr = r->http_addr;
        d->reply.grpc_addr = r->grpc_addr;
        d->reply.conf_index = r->conf_index;
        d->reply.conf_term = r->conf_term;
        d->reply.incarnation = r->incarnation;
        d->reply.member_since = r->member_since;
        d->reply.frame_crc = r->frame_crc;
        break;
    }
    case PYAZDB__RAFT__FRAME__BODY_MESSAGE:
        d->kind = RAFT_FRAME_MESSAGE;
        rv = decode_msg(f->message, &d->msg, &budget);
        break;
    case PYAZDB__RAFT__FRAME__BODY_CHUNK: {
        const Pyazdb__Raft__SnapshotChunk *c = f->chunk;
        d->kind = RAFT_FRAME_CHUNK;
        d->chunk.term = c->term;
        d->chunk.snap_index = c->snap_index;
        d->chunk.snap_term = c->snap_term;
        d->chunk.offset = c->offset;
        d->chunk.total = c->total;
        d->chunk.data = c->data.data;
        d->chunk.len = c->data.len;
        if (c->offset > c->total || c->data.len > c->total - c->offset)
            rv = PZ_EPROTO;
        break;
    }
    default:
        rv = PZ_EPROTO;
        break;
    }
    if (rv < 0) {
        pz_free(d->msg.entries);
        pyazdb__raft__frame__free_unpacked(f, &pb_free_allocator);
        memset(d, 0, sizeof *d);
        return rv;
    }
    d->pb = f;
    return 0;
}

/* RaftMessage and SnapshotChunk frames, the bulk of what a follower
 * reads, are decoded by hand below: one pass over the body, no protobuf-c
 * structs, and payloads (entry data, snap_data, chunk data) left in the
 * body instead of copied; the only allocation is the entries array.
 * Handshakes (one per link) go through protobuf-c (raft_codec_decode_pb),
 * which also serves as the reference the unit tests and the fuzz target
 * compare this decoder against.
 *
 * It accepts what protobuf-c accepts for these messages (unknown fields of
 * any wire type but groups are skipped, a repeated scalar field keeps its
 * last value, varints need not be minimal), except for input none of our
 * encoders, nor protobuf-c's, ever writes, where protobuf-c silently
 * truncates or merges; those are refused as PZ_ECORRUPT:
 *   - a known varint field whose value does not fit (over 64 bits, or
 *     over 32 bits for a uint32 field such as type): protobuf-c keeps the
 *     low bits, which would turn garbage into a valid message type;
 *   - a bool field (reject, transfer) of another wire type than varint
 *     (protobuf-c reads a bool from whatever bytes the field has);
 *   - field number 0 in a tag of more than one byte (protobuf-c refuses
 *     it only in a one-byte tag);
 *   - a length prefix over 32 bits (protobuf-c keeps the low 32 and may
 *     find that many bytes);
 *   - a Frame with more than one body field (protobuf-c keeps the last or
 *     merges them).
 * Refusing closes that link; a peer of ours never sends such frames. */
struct rd {
    const uint8_t *p;   /* next byte */
    const uint8_t *end; /* end of the (sub)message */
};

/* A varint of at most 10 bytes, its value in 64 bits. */
static inline bool rd_varint(struct rd *r, uint64_t *v)
{
    const uint8_t *p = r->p;
    if (p < r->end && *p < 0x80) { /* the common case: one byte */
        *v = *p;
        r->p = p + 1;
        return true;
    }
    uint64_t x = 0;
    for (unsigned shift = 0; shift < 64; shift += 7) {
        if (p == r->end)
            return false;
        uint8_t b = *p++;
        if (shift == 63 && b > 1)
            return false; /* beyond 64 bits, or an 11th byte */
        x |= (uint64_t)(b & 0x7f) << shift;
        if (b < 0x80) {
            *v = x;
            r->p = p;
            return true;
        }
    }
    return false;
}

/* A varint of at most `max` bytes, whatever its value (unknown fields,
 * tags, lengths: protobuf-c's limits). */
static inline bool rd_skip_varint(struct rd *r, size_t max)
{
    for (size_t i = 0; i < max && r->p + i < r->end; i++)
        if (r->p[i] < 0x80) {
            r->p += i + 1;
            return true;
        }
    return false;
}

/* A tag: field number and wire type. protobuf-c reads at most 5 bytes;
 * field number 0 is refused. */
static inline bool rd_tag(struct rd *r, uint32_t *field, unsigned *wt)
{
    const uint8_t *p = r->p;
    uint64_t v;
    if (p < r->end && *p < 0x80) {
        v = *p;
        r->p = p + 1;
    } else if (!rd_skip_varint(r, 5)) {
        return false;
    } else {
        uint64_t x = 0;
        for (unsigned shift = 0; p < r->p; shift += 7)
            x |= (uint64_t)(*p++ & 0x7f) << shift;
        v = x;
    }
    *field = (uint32_t)(v >> 3); /* protobuf-c keeps 32 bits of it */
    *wt = (unsigned)(v & 7);
    return *field != 0;
}

/* The payload of a length-delimited field: its length prefix is at most
 * 5 bytes (protobuf-c) and the bytes are all there. */
static bool rd_len(struct rd *r, struct rd *sub)
{
    const uint8_t *p = r->p;
    uint64_t n;
    if (!rd_varint(r, &n) || r->p - p > 5 ||
        n > (uint64_t)(r->end - r->p))
        return false;
    sub->p = r->p;
    sub->end = r->p + n;
    r->p = sub->end;
    return true;
}

/* Skips a field of an unknown number. */
static inline bool rd_skip(struct rd *r, unsigned wt)
{
    struct rd sub;
    switch (wt) {
    case 0:
        return rd_skip_varint(r, 10);
    case 1:
        if (r->end - r->p < 8)
            return false;
        r->p += 8;
        return true;
    case 2:
        return rd_len(r, &sub);
    case 5:
        if (r->end - r->p < 4)
            return false;
        r->p += 4;
        return true;
    default: /* groups (3, 4) and 6, 7 */
        return false;
    }
}

static bool rd_u64(struct rd *r, unsigned wt, uint64_t *v)
{
    return wt == 0 && rd_varint(r, v);
}

static bool rd_u32(struct rd *r, unsigned wt, uint32_t *v)
{
    uint64_t x;
    if (!rd_u64(r, wt, &x) || x > UINT32_MAX)
        return false;
    *v = (uint32_t)x;
    return true;
}

static bool rd_bool(struct rd *r, unsigned wt, bool *v)
{
    uint64_t x;
    if (!rd_u64(r, wt, &x))
        return false;
    *v = x != 0;
    return true;
}

/* A bytes field: points into the body (NULL when empty). */
static bool rd_bytes(struct rd *r, unsigned wt, const uint8_t **data,
                     size_t *len)
{
    struct rd sub;
    if (wt != 2 || !rd_len(r, &sub))
        return false;
    *len = (size_t)(sub.end - sub.p);
    *data = *len ? sub.p : NULL;
    return true;
}

/* One Entry. Sets *bad_type for a type other than NORMAL/CONF/NOOP. */
static bool rd_entry(struct rd *r, struct raft_entry *e, bool *bad_type)
{
    uint32_t type = 0;
    const uint8_t *data = NULL;
    memset(e, 0, sizeof *e);
    while (r->p < r->end) {
        uint32_t field;
        unsigned wt;
        bool ok;
        if (!rd_tag(r, &field, &wt))
            return false;
        switch (field) {
        case 1:
            ok = rd_u64(r, wt, &e->term);
            break;
        case 2:
            ok = rd_u64(r, wt, &e->index);
            break;
        case 3:
            ok = rd_u32(r, wt, &type);
            break;
        case 4:
            ok = rd_bytes(r, wt, &data, &e->len);
            break;
        default:
            ok = rd_skip(r, wt);
            break;
        }
        if (!ok)
            return false;
    }
    if (type > RAFT_ENTRY_NOOP)
        *bad_type = true;
    e->type = (uint8_t)type;
    e->data = (uint8_t *)data; /* the core copies what it keeps */
    return true;
}

/* Counts the entries of a RaftMessage (field 12) in a first pass over
 * its fields, so that the entries array is allocated once, at its size,
 * and a frame packed with empty entries is refused before anything is
 * allocated. False if the fields do not parse. */
static bool count_entries(struct rd r, size_t *n)
{
    *n = 0;
    while (r.p < r.end) {
        uint32_t field;
        unsigned wt;
        if (!rd_tag(&r, &field, &wt) || !rd_skip(&r, wt))
            return false;
        *n += field == 12;
    }
    return true;
}

static int rd_msg(struct rd *r, struct raft_msg *m, size_t budget)
{
    uint32_t type = 0;
    const uint8_t *snap = NULL;
    bool bad_type = false;
    size_t cap;
    int rv = 0;
    if (!count_entries(*r, &cap))
        return PZ_ECORRUPT;
    if (cap > budget / sizeof *m->entries)
        return PZ_ETOOBIG;
    if (cap > 0 &&
        (m->entries = pz_malloc_try(cap * sizeof *m->entries)) == NULL)
        return PZ_ENOMEM;
    while (r->p < r->end && rv == 0) {
        uint32_t field;
        unsigned wt;
        bool ok;
        struct rd sub;
        if (!rd_tag(r, &field, &wt)) {
            rv = PZ_ECORRUPT;
            break;
        }
        switch (field) {
        case 1:
            ok = rd_u32(r, wt, &type);
            break;
        case 2:
            ok = rd_bool(r, wt, &m->reject);
            break;
        case 3:
            ok = rd_bool(r, wt, &m->transfer);
            break;
        case 4:
            ok = rd_u64(r, wt, &m->from);
            break;
        case 5:
            ok = rd_u64(r, wt, &m->to);
            break;
        case 6:
            ok = rd_u64(r, wt, &m->term);
            break;
        case 7:
            ok = rd_u64(r, wt, &m->log_term);
            break;
        case 8:
            ok = rd_u64(r, wt, &m->index);
            break;
        case 9:
            ok = rd_u64(r, wt, &m->commit);
            break;
        case 10:
            ok = rd_u64(r, wt, &m->reject_hint);
            break;
        case 11:
            ok = rd_u64(r, wt, &m->context);
            break;
        case 12:
            pz_assert(m->n_entries < cap);
            ok = wt == 2 && rd_len(r, &sub) &&
                 rd_entry(&sub, &m->entries[m->n_entries++], &bad_type);
            break;
        case 13:
            ok = rd_u64(r, wt, &m->snap_index);
            break;
        case 14:
            ok = rd_u64(r, wt, &m->snap_term);
            break;
        case 15:
            ok = rd_bytes(r, wt, &snap, &m->snap_len);
            break;
        case 16:
            ok = rd_u64(r, wt, &m->lease_ns);
            break;
        default:
            ok = rd_skip(r, wt);
            break;
        }
        if (!ok && rv == 0)
            rv = PZ_ECORRUPT;
    }
    m->snap_data = (uint8_t *)snap;
    if (rv == 0 && (bad_type || type < RAFT_MSG_APPEND ||
                    type >= RAFT_MSG_TYPE_MAX))
        rv = PZ_EPROTO;
    m->type = (uint8_t)type;
    if (m->n_entries == 0 || rv < 0) {
        pz_free(m->entries);
        m->entries = NULL;
        m->n_entries = 0;
    }
    return rv;
}

static int rd_chunk(struct rd *r, struct raft_snap_chunk *c)
{
    while (r->p < r->end) {
        uint32_t field;
        unsigned wt;
        bool ok;
        if (!rd_tag(r, &field, &wt))
            return PZ_ECORRUPT;
        switch (field) {
        case 1:
            ok = rd_u64(r, wt, &c->snap_index);
            break;
        case 2:
            ok = rd_u64(r, wt, &c->snap_term);
            break;
        case 3:
            ok = rd_u64(r, wt, &c->offset);
            break;
        case 4:
            ok = rd_u64(r, wt, &c->total);
            break;
        case 5:
            ok = rd_bytes(r, wt, &c->data, &c->len);
            break;
        case 6:
            ok = rd_u64(r, wt, &c->term);
            break;
        default:
            ok = rd_skip(r, wt);
            break;
        }
        if (!ok)
            return PZ_ECORRUPT;
    }
    if (c->offset > c->total || c->len > c->total - c->offset)
        return PZ_EPROTO;
    return 0;
}

int raft_codec_decode(const uint8_t *body, size_t len, struct raft_decoded *d)
{
    struct rd r, sub = {NULL, NULL};
    uint32_t kind = 0;
    memset(d, 0, sizeof *d);
    if (len == 0)
        return PZ_EPROTO; /* no body */
    r.p = body;
    r.end = body + len;
    while (r.p < r.end) {
        uint32_t field;
        unsigned wt;
        if (!rd_tag(&r, &field, &wt))
            return PZ_ECORRUPT;
        if (field >= 1 && field <= 4) {
            if (wt != 2 || kind != 0 || !rd_len(&r, &sub))
                return PZ_ECORRUPT;
            kind = field;
        } else if (!rd_skip(&r, wt)) {
            return PZ_ECORRUPT;
        }
    }
    int rv;
    switch (kind) {
    case 3:
        d->kind = RAFT_FRAME_MESSAGE;
        rv = rd_msg(&sub, &d->msg,
                     len > (SIZE_MAX - RAFT_DECODE_SLACK) / 2
                         ? SIZE_MAX
                         : 2 * len + RAFT_DECODE_SLACK);
        break;
    case 4:
        d->kind = RAFT_FRAME_CHUNK;
        rv = rd_chunk(&sub, &d->chunk);
        break;
    case 0:
        return PZ_EPROTO; /* no body */
    default:
        return raft_codec_decode_pb(body, len, d);
    }
    if (rv < 0)
        memset(d, 0, sizeof *d);
    return rv;
}

void raft_decoded_free(struct raft_decoded *d)
{
    if (d->pb)
        pyazdb__raft__frame__free_unpacked(d->pb, &pb_free_allocator);
    pz_free(d->msg.entries);
    memset(d, 0, sizeof *d);
}

/* --- incremental frame parser ------------------------------------------ */

void raft_frame_parser_init(struct raft_frame_parser *p, size_t max)
{
    memset(p, 0, sizeof *p);
    p->max = max;
}

void raft_frame_parser_free(struct raft_frame_parser *p)
{
    pz_free(p->buf);
    p->buf = NULL;
    p->cap = 0;
    p->have = 0;
    p->hdr_len = 0;
}

/* Makes room for `need` bytes of body (and checksum), growing
 * geometrically but never past the frame's announced size. */
static void parser_grow(struct raft_frame_parser *p, size_t need, size_t total)
{
    if (need <= p->cap)
        return;
    size_t cap = p->cap ? p->cap * 2 : PARSER_MIN_ALLOC;
    if (cap < need)
        cap = need;
    if (cap > total)
        cap = total;
    p->buf = pz_realloc(p->buf, cap);
    p->cap = cap;
}

void raft_codec_seal(struct pz_buf *out, size_t start)
{
    uint32_t crc = pz_crc32c(0, out->data + start, out->len - start);
    uint8_t t[RAFT_FRAME_CRC];
    pz_put_u32(t, crc);
    pz_buf_append(out, t, sizeof t);
}

/* The frame's checksum (after its body) matches its prefix and body. */
static bool frame_crc_ok(const struct raft_frame_parser *p, const uint8_t *f,
                         size_t body_len)
{
    uint32_t crc = pz_crc32c(pz_crc32c(0, p->hdr, RAFT_FRAME_HDR), f, body_len);
    return pz_get_u32(f + body_len) == crc;
}

int raft_frame_parser_feed(struct raft_frame_parser *p, const uint8_t *data,
                           size_t len, size_t *used, const uint8_t **body,
                           size_t *body_len)
{
    static const uint8_t empty[1];
    size_t off = 0;
    *used = 0;
    if (p->hdr_len == 0 && p->have == 0 && p->cap > PARSER_KEEP) {
        /* Do not keep a large frame's buffer around between frames. */
        pz_free(p->buf);
        p->buf = NULL;
        p->cap = 0;
    }
    if (p->hdr_len < RAFT_FRAME_HDR) {
        size_t take = PZ_MIN(RAFT_FRAME_HDR - p->hdr_len, len);
        if (take)
            memcpy(p->hdr + p->hdr_len, data, take);
        p->hdr_len += take;
        off += take;
        *used = off;
        if (p->hdr_len < RAFT_FRAME_HDR)
            return RAFT_FRAME_NEED_MORE;
        p->body_len = pz_get_u32(p->hdr);
        p->have = 0;
    }
    if (p->body_len > p->max)
        return PZ_ETOOBIG;
    size_t trailer = p->crc ? RAFT_FRAME_CRC : 0;
    size_t total = p->body_len + trailer;
    size_t rest = len - off;
    size_t want = total - p->have;
    const uint8_t *f;
    if (p->have == 0 && rest >= want) {
        /* The whole frame is in this input: hand it out in place. */
        f = want ? data + off : empty;
        *used = off + want;
    } else {
        size_t take = PZ_MIN(rest, want);
        parser_grow(p, p->have + take, total);
        if (take)
            memcpy(p->buf + p->have, data + off, take);
        p->have += take;
        *used = off + take;
        if (p->have < total)
            return RAFT_FRAME_NEED_MORE;
        f = p->buf;
    }
    p->hdr_len = 0;
    p->have = 0;
    if (trailer && !frame_crc_ok(p, f, p->body_len))
        return PZ_ECORRUPT;
    *body = f;
    *body_len = p->body_len;
    return RAFT_FRAME_DONE;
}
