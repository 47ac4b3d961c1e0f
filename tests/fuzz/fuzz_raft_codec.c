/* fuzz_raft_codec.c - the Raft peer link as transport.c reads it: length-
 * prefixed frames reassembled by raft_frame_parser_feed (the handshake
 * under a 64 KiB limit, then the link's own limit), each body decoded by
 * raft_codec_decode: Handshake, HandshakeReply, RaftMessage (every message
 * and entry type), SnapshotChunk.
 *
 * Input: byte 0 picks the frame limit after the handshake, whether the
 * frames after it carry checksums (a link whose handshake agreed on
 * them) and whether decoding runs out of memory (byte 1: at which
 * allocation); the rest is
 * the byte stream. It is fed whole, in random pieces and one byte at a
 * time: the frames must be the same every time. Every decoded frame must
 * re-encode (raft_codec_encode_*) to a frame that parses and decodes to
 * the same values (not necessarily as short: the encoder writes what the
 * decoder filled in); a failed decode leaves nothing to free (LeakSanitizer
 * checks the out-of-memory paths). Every body is also decoded by
 * protobuf-c (raft_codec_decode_pb): both must agree, as
 * tests/unit/codec_diff.h defines. */
#include "fuzz.h"

#include "pz.h"
#include "raft_codec.h"
#include "../unit/codec_diff.h"

#define HS_MAX (64u << 10) /* transport.c REPLY_MAX */
#define MAX_FRAMES 64

struct outcome {
    size_t n;                    /* frames */
    uint64_t digest[MAX_FRAMES]; /* of each body */
    int end;                     /* NEED_MORE or PZ_ETOOBIG */
};

static const char *s0(const char *s)
{
    return s ? s : "";
}

static bool eq_str(const char *a, const char *b)
{
    return strcmp(s0(a), s0(b)) == 0;
}

static bool eq_bytes(const uint8_t *a, size_t al, const uint8_t *b, size_t bl)
{
    return al == bl && (al == 0 || memcmp(a, b, al) == 0);
}

static void same_msg(const struct raft_msg *a, const struct raft_msg *b)
{
    FUZZ_CHECK(a->type == b->type && a->reject == b->reject &&
               a->transfer == b->transfer && a->from == b->from &&
               a->to == b->to && a->term == b->term &&
               a->log_term == b->log_term && a->index == b->index &&
               a->commit == b->commit && a->reject_hint == b->reject_hint &&
               a->context == b->context && a->lease_ns == b->lease_ns &&
               a->snap_index == b->snap_index && a->snap_term == b->snap_term);
    FUZZ_CHECK(eq_bytes(a->snap_data, a->snap_len, b->snap_data, b->snap_len));
    FUZZ_CHECK(a->n_entries == b->n_entries);
    for (size_t i = 0; i < a->n_entries; i++) {
        const struct raft_entry *x = &a->entries[i], *y = &b->entries[i];
        FUZZ_CHECK(x->term == y->term && x->index == y->index &&
                   x->type == y->type);
        FUZZ_CHECK(eq_bytes(x->data, x->len, y->data, y->len));
    }
}

/* A decoded frame makes sense on its own. */
static void check_decoded(const struct raft_decoded *d, size_t len)
{
    switch (d->kind) {
    case RAFT_FRAME_HANDSHAKE:
        FUZZ_CHECK(d->hs.name && d->hs.token && d->hs.http_addr &&
                   d->hs.grpc_addr && d->hs.raft_addr);
        break;
    case RAFT_FRAME_REPLY:
        FUZZ_CHECK(d->reply.name && d->reply.http_addr &&
                   d->reply.grpc_addr);
        FUZZ_CHECK(raft_hs_status_str(d->reply.status) != NULL);
        break;
    case RAFT_FRAME_MESSAGE: {
        const struct raft_msg *m = &d->msg;
        FUZZ_CHECK(m->type >= RAFT_MSG_APPEND && m->type < RAFT_MSG_TYPE_MAX);
        FUZZ_CHECK((m->n_entries == 0) == (m->entries == NULL));
        FUZZ_CHECK(m->n_entries <= len);
        FUZZ_CHECK(m->snap_len <= len && (m->snap_len == 0) ==
                                             (m->snap_data == NULL));
        for (size_t i = 0; i < m->n_entries; i++) {
            FUZZ_CHECK(m->entries[i].type <= RAFT_ENTRY_NOOP);
            FUZZ_CHECK(m->entries[i].len <= len);
            FUZZ_CHECK((m->entries[i].len == 0) ==
                       (m->entries[i].data == NULL));
        }
        break;
    }
    case RAFT_FRAME_CHUNK:
        FUZZ_CHECK(d->chunk.offset <= d->chunk.total);
        FUZZ_CHECK(d->chunk.len <= d->chunk.total - d->chunk.offset);
        FUZZ_CHECK(d->chunk.len <= len);
        break;
    default:
        FUZZ_CHECKF(0, "unknown frame kind %d", d->kind);
    }
}

/* Re-encode d, parse and decode the frame again: the same values. */
static void round_trip(const struct raft_decoded *d, size_t len)
{
    struct pz_buf b;
    int rv = 0;
    pz_buf_init(&b);
    switch (d->kind) {
    case RAFT_FRAME_HANDSHAKE:
        rv = raft_codec_encode_handshake(&b, &d->hs, RAFT_FRAME_MAX);
        break;
    case RAFT_FRAME_REPLY:
        rv = raft_codec_encode_reply(&b, &d->reply, RAFT_FRAME_MAX);
        break;
    case RAFT_FRAME_MESSAGE:
        rv = raft_codec_encode_msg(&b, &d->msg, RAFT_FRAME_MAX);
        break;
    case RAFT_FRAME_CHUNK:
        rv = raft_codec_encode_chunk(&b, &d->chunk, RAFT_FRAME_MAX);
        break;
    }
    FUZZ_CHECK(rv == 0);
    (void)len; /* the encoding may be longer than what came in: a field
                  the decoder fills in (e.g. from defaults) is written */

    struct raft_frame_parser p;
    const uint8_t *body = NULL;
    size_t blen = 0, used = 0;
    raft_frame_parser_init(&p, RAFT_FRAME_MAX);
    uint8_t *frame = fuzz_dup(b.data, b.len);
    rv = raft_frame_parser_feed(&p, frame, b.len, &used, &body, &blen);
    FUZZ_CHECK(rv == RAFT_FRAME_DONE && used == b.len);
    FUZZ_CHECK(blen + RAFT_FRAME_HDR == b.len);

    struct raft_decoded e;
    rv = raft_codec_decode(body, blen, &e);
    FUZZ_CHECKF(rv == 0, "own encoding does not decode: %d", rv);
    FUZZ_CHECK(e.kind == d->kind);
    switch (d->kind) {
    case RAFT_FRAME_HANDSHAKE:
        FUZZ_CHECK(e.hs.version == d->hs.version &&
                   e.hs.cluster_id == d->hs.cluster_id &&
                   e.hs.node_id == d->hs.node_id &&
                   e.hs.target_id == d->hs.target_id);
        FUZZ_CHECK(eq_str(e.hs.name, d->hs.name) &&
                   eq_str(e.hs.token, d->hs.token) &&
                   eq_str(e.hs.http_addr, d->hs.http_addr) &&
                   eq_str(e.hs.grpc_addr, d->hs.grpc_addr) &&
                   eq_str(e.hs.raft_addr, d->hs.raft_addr));
        break;
    case RAFT_FRAME_REPLY:
        FUZZ_CHECK(e.reply.status == d->reply.status &&
                   e.reply.version == d->reply.version &&
                   e.reply.node_id == d->reply.node_id &&
                   e.reply.conf_index == d->reply.conf_index);
        FUZZ_CHECK(eq_str(e.reply.name, d->reply.name) &&
                   eq_str(e.reply.http_addr, d->reply.http_addr) &&
                   eq_str(e.reply.grpc_addr, d->reply.grpc_addr));
        break;
    case RAFT_FRAME_MESSAGE:
        same_msg(&d->msg, &e.msg);
        break;
    case RAFT_FRAME_CHUNK:
        FUZZ_CHECK(e.chunk.term == d->chunk.term &&
                   e.chunk.snap_index == d->chunk.snap_index &&
                   e.chunk.snap_term == d->chunk.snap_term &&
                   e.chunk.offset == d->chunk.offset &&
                   e.chunk.total == d->chunk.total);
        FUZZ_CHECK(eq_bytes(e.chunk.data, e.chunk.len, d->chunk.data,
                            d->chunk.len));
        break;
    }
    raft_decoded_free(&e);
    free(frame);
    raft_frame_parser_free(&p);
    pz_buf_free(&b);
}

static void on_frame(const uint8_t *body, size_t len, long fail_at,
                     bool check)
{
    /* The body as the transport hands it: in the caller's buffer or the
     * parser's; a private copy makes any overread visible. */
    uint8_t *copy = fuzz_dup(body, len);
    struct raft_decoded d;
    if (fail_at <= 0) {
        bool skipped;
        int ours;
        const char *why = codec_diff_check(copy, len, &skipped, &ours);
        FUZZ_CHECKF(why == NULL, "against protobuf-c: %s", why);
    }
    memset(&d, 0x55, sizeof d);
    if (fail_at > 0)
        pz_alloc_fail_at(fail_at);
    int rv = raft_codec_decode(copy, len, &d);
    pz_alloc_fail_at(0);
    FUZZ_CHECKF(rv == 0 || rv == PZ_ECORRUPT || rv == PZ_EPROTO ||
                    rv == PZ_ETOOBIG ||
                    (rv == PZ_ENOMEM && fail_at > 0),
                "decode returned %d", rv);
    if (rv == 0) {
        if (check) {
            check_decoded(&d, len);
            round_trip(&d, len);
        }
    } else {
        FUZZ_CHECK(d.pb == NULL && d.msg.entries == NULL);
    }
    raft_decoded_free(&d); /* harmless after an error too */
    free(copy);
}

enum feed_mode { WHOLE, PIECES, BYTES };

static void feed(const uint8_t *data, size_t size, size_t max, bool crc,
                 long fail_at, enum feed_mode mode, struct outcome *o)
{
    struct raft_frame_parser p;
    uint64_t rng = fuzz_hash(data, size) ^ max;
    size_t pos = 0;
    memset(o, 0, sizeof *o);
    o->end = RAFT_FRAME_NEED_MORE;
    raft_frame_parser_init(&p, HS_MAX);
    while (pos < size) {
        size_t n = mode == WHOLE ? size - pos
                   : mode == BYTES ? 1
                                   : fuzz_piece(&rng, size - pos);
        uint8_t *piece = fuzz_dup(data + pos, n);
        size_t off = 0;
        bool dead = false;
        while (off < n) {
            const uint8_t *body = NULL;
            size_t blen = 0, used = SIZE_MAX, old_cap = p.cap;
            int rv =
                raft_frame_parser_feed(&p, piece + off, n - off, &used, &body,
                                       &blen);
            FUZZ_CHECK(used <= n - off);
            off += used;
            if (rv == PZ_ETOOBIG) {
                FUZZ_CHECK(p.body_len > p.max);
                o->end = rv;
                dead = true;
                break;
            }
            if (rv == PZ_ECORRUPT) {
                FUZZ_CHECK(p.crc);
                o->end = rv;
                dead = true;
                break;
            }
            if (rv == RAFT_FRAME_NEED_MORE) {
                FUZZ_CHECK(off == n);
                /* Buffers grow with what arrived, never to an announced
                 * length alone. */
                size_t total = p.body_len + (p.crc ? RAFT_FRAME_CRC : 0);
                FUZZ_CHECK(p.have <= total);
                FUZZ_CHECK(p.cap <= old_cap || p.cap <= total);
                FUZZ_CHECK(p.cap <= old_cap ||
                           p.cap <= PZ_MAX(PZ_MAX(2 * old_cap, 4096), p.have));
                break;
            }
            FUZZ_CHECK(rv == RAFT_FRAME_DONE && body != NULL);
            FUZZ_CHECK(blen <= p.max);
            if (p.crc) /* what passed carries its own checksum after it */
                FUZZ_CHECK(pz_get_u32(body + blen) ==
                           pz_crc32c(pz_crc32c(0, p.hdr, RAFT_FRAME_HDR), body,
                                     blen));
            if (o->n < MAX_FRAMES)
                o->digest[o->n] = fuzz_hash(body, blen) ^ blen;
            o->n++;
            on_frame(body, blen, fail_at, mode == WHOLE);
            /* After the first frame (the handshake) the link's limit, and
             * its checksums if agreed. */
            p.max = max;
            p.crc = crc;
        }
        free(piece);
        pos += n;
        if (dead)
            break;
    }
    raft_frame_parser_free(&p);
}

static void same(const struct outcome *a, const struct outcome *b)
{
    FUZZ_CHECK(a->n == b->n && a->end == b->end);
    for (size_t i = 0; i < a->n && i < MAX_FRAMES; i++)
        FUZZ_CHECK(a->digest[i] == b->digest[i]);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const size_t maxes[4] = {16, 256, 64u << 10, RAFT_FRAME_MAX};
    struct fz f;
    fz_init(&f, data, size);
    uint8_t mode = fz_u8(&f);
    size_t max = maxes[mode & 3];
    long fail_at = (mode & 4) ? 1 + fz_u8(&f) % 16 : 0;
    bool crc = (mode & 8) != 0;
    size_t len;
    const uint8_t *stream = fz_rest(&f, &len);

    struct outcome whole, other;
    feed(stream, len, max, crc, fail_at, WHOLE, &whole);
    feed(stream, len, max, crc, fail_at, PIECES, &other);
    same(&whole, &other);
    if (len <= 1024) {
        feed(stream, len, max, crc, fail_at, BYTES, &other);
        same(&whole, &other);
    }
    return 0;
}
