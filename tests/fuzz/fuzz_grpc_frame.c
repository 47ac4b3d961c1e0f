/* fuzz_grpc_frame.c - gRPC message framing as a stream's DATA payloads
 * reach it (grpc_reader_feed), and the header values a client controls
 * (grpc-timeout, content-type, grpc-status, grpc-message).
 *
 * Input: byte 0 picks the size limit (grpc-max-message), the rest is the
 * stream. It is fed whole, in random pieces and one byte at a time: the
 * messages and the final state must be the same every time. The header
 * parsers get slices of the input, with round trips where an encoder
 * exists (timeouts, grpc-message, grpc_frame_append). */
#include "fuzz.h"

#include "grpc_frame.h"
#include "pz.h"

#define MAX_MSGS 64

struct outcome {
    size_t n_msgs;           /* whole messages */
    uint64_t digest[MAX_MSGS]; /* flag, length and payload of each */
    int end;                 /* GRPC_READ_MORE or GRPC_READ_TOO_BIG */
    bool partial;            /* grpc_reader_partial at the end */
};

static uint64_t digest(bool compressed, const struct pz_buf *m)
{
    uint64_t h = fuzz_hash((const uint8_t *)(m->data ? m->data : ""), m->len);
    return h ^ (compressed ? 0x8000000000000000ull : 0) ^ (m->len << 1);
}

enum feed_mode { WHOLE, PIECES, BYTES };

static void feed(const uint8_t *data, size_t size, size_t max,
                 enum feed_mode mode, struct outcome *o)
{
    struct grpc_reader r;
    uint64_t rng = fuzz_hash(data, size) ^ max;
    size_t pos = 0;
    memset(o, 0, sizeof *o);
    o->end = GRPC_READ_MORE;
    grpc_reader_init(&r, max);
    while (pos < size) {
        size_t n = mode == WHOLE ? size - pos
                   : mode == BYTES ? 1
                                   : fuzz_piece(&rng, size - pos);
        uint8_t *piece = fuzz_dup(data + pos, n);
        size_t off = 0;
        bool dead = false;
        while (off < n) {
            size_t used = SIZE_MAX;
            int rv = grpc_reader_feed(&r, piece + off, n - off, &used);
            FUZZ_CHECK(used <= n - off);
            off += used;
            if (rv == GRPC_READ_TOO_BIG) {
                FUZZ_CHECK(r.dead && r.len > max);
                size_t u2 = 1;
                FUZZ_CHECK(grpc_reader_feed(&r, piece, n, &u2) ==
                               GRPC_READ_TOO_BIG &&
                           u2 == 0);
                o->end = rv;
                dead = true;
                break;
            }
            if (rv == GRPC_READ_MORE) {
                FUZZ_CHECK(off == n);
                break;
            }
            FUZZ_CHECK(rv == GRPC_READ_MESSAGE && r.ready);
            FUZZ_CHECK(r.msg.len == r.len && r.len <= max);
            FUZZ_CHECK(!grpc_reader_partial(&r));
            /* A ready reader takes nothing more until next(). */
            size_t u2 = 1;
            FUZZ_CHECK(grpc_reader_feed(&r, piece, n, &u2) ==
                           GRPC_READ_MESSAGE &&
                       u2 == 0);
            if (o->n_msgs < MAX_MSGS)
                o->digest[o->n_msgs] = digest(r.compressed, &r.msg);
            o->n_msgs++;
            FUZZ_CHECK(r.messages == o->n_msgs);
            grpc_reader_next(&r);
            FUZZ_CHECK(!grpc_reader_partial(&r));
        }
        free(piece);
        pos += n;
        if (dead)
            break;
    }
    o->partial = grpc_reader_partial(&r);
    if (o->end == GRPC_READ_MORE)
        FUZZ_CHECK(o->partial == (r.hdr_have > 0));
    grpc_reader_free(&r);
}

static void same(const struct outcome *a, const struct outcome *b)
{
    FUZZ_CHECK(a->n_msgs == b->n_msgs);
    for (size_t i = 0; i < a->n_msgs && i < MAX_MSGS; i++)
        FUZZ_CHECK(a->digest[i] == b->digest[i]);
    FUZZ_CHECK(a->end == b->end && a->partial == b->partial);
}

/* grpc-timeout: what parses formats back to a value that parses to at
 * least as much (formatting rounds up to fit 8 digits). */
static void check_timeout(const char *s, size_t len)
{
    uint64_t ms = 0;
    if (grpc_timeout_parse(s, len, &ms) != 0)
        return;
    FUZZ_CHECK(len >= 2 && len <= 9);
    char buf[32];
    size_t n = grpc_timeout_format(ms, buf, sizeof buf);
    FUZZ_CHECK(n >= 2 && n <= 9 && n == strlen(buf));
    uint64_t back = 0;
    FUZZ_CHECK(grpc_timeout_parse(buf, n, &back) == 0);
    FUZZ_CHECKF(back >= ms, "%.*s -> %llu ms -> %s -> %llu ms", (int)len, s,
                (unsigned long long)ms, buf, (unsigned long long)back);
    if (ms <= 99999999u)
        FUZZ_CHECK(back == ms);
}

/* grpc-message: the encoding is printable ASCII within the budget and
 * decodes to a prefix of the message (the whole of it when it fits). */
static void check_message(const char *msg, size_t len, size_t max_out)
{
    struct pz_buf enc, dec;
    pz_buf_init(&enc);
    pz_buf_init(&dec);
    grpc_message_encode(&enc, msg, len, max_out);
    FUZZ_CHECK(enc.len <= max_out);
    for (size_t i = 0; i < enc.len; i++)
        FUZZ_CHECK(enc.data[i] >= 0x20 && enc.data[i] <= 0x7e);
    grpc_message_decode(&dec, enc.data ? enc.data : "", enc.len);
    FUZZ_CHECK(dec.data != NULL && dec.data[dec.len] == '\0');
    FUZZ_CHECK(dec.len <= len && memcmp(dec.data, msg, dec.len) == 0);
    if (len * 3 <= max_out)
        FUZZ_CHECK(dec.len == len);
    pz_buf_free(&enc);
    pz_buf_free(&dec);

    /* Any header value decodes without trouble. */
    pz_buf_init(&dec);
    grpc_message_decode(&dec, msg, len);
    FUZZ_CHECK(dec.data != NULL && dec.len <= len && dec.data[dec.len] == 0);
    pz_buf_free(&dec);
}

static void check_headers(const uint8_t *data, size_t size)
{
    for (size_t off = 0; off < size && off < 64; off += 7) {
        const char *s = (const char *)data + off;
        size_t left = size - off;
        for (size_t len = 0; len <= left && len <= 10; len++) {
            check_timeout(s, len);
            int st = grpc_status_parse(s, len);
            FUZZ_CHECK(st == -1 || (st >= 0 && st <= 99));
            FUZZ_CHECK(grpc_status_name(st) != NULL);
        }
        bool ok = grpc_content_type_ok(s, left);
        FUZZ_CHECK(!ok || left >= 16);
    }
    size_t mlen = size < 2048 ? size : 2048;
    check_message((const char *)data, mlen, 1024);
    check_message((const char *)data, mlen, size % 64);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const size_t maxes[4] = {0, 16, 1024, 4 * 1024 * 1024};
    if (size == 0)
        return 0;
    size_t max = maxes[data[0] & 3];
    data++;
    size--;

    struct outcome whole, other;
    feed(data, size, max, WHOLE, &whole);
    feed(data, size, max, PIECES, &other);
    same(&whole, &other);
    if (size <= 1024) {
        feed(data, size, max, BYTES, &other);
        same(&whole, &other);
    }

    /* A framed copy of the input reads back as one message. */
    if (size <= max) {
        struct pz_buf f;
        struct grpc_reader r;
        size_t used;
        pz_buf_init(&f);
        grpc_frame_append(&f, data, size);
        FUZZ_CHECK(f.len == size + GRPC_FRAME_HEADER);
        grpc_reader_init(&r, max);
        FUZZ_CHECK(grpc_reader_feed(&r, (const uint8_t *)f.data, f.len,
                                    &used) == GRPC_READ_MESSAGE);
        FUZZ_CHECK(used == f.len && r.msg.len == size && !r.compressed);
        FUZZ_CHECK(size == 0 || memcmp(r.msg.data, data, size) == 0);
        grpc_reader_free(&r);
        pz_buf_free(&f);
    }

    check_headers(data, size);
    return 0;
}
