/* test_transport.c - the Raft peer protocol.
 *
 * Codec (no sockets): round trips of every message type with entries
 * (empty and large payloads), handshakes, malformed and truncated bodies,
 * allocation failures, frames fed whole, in random pieces and one byte at a
 * time, and the frame size cap.
 *
 * Transport (a real libuv loop on 127.0.0.1, the conn layer flushed from a
 * prepare hook as the server does): two transports exchanging messages both
 * ways, handshake refusals and their log lines, a peer restarting on the
 * same port, queue caps dropping the oldest messages, bounded reconnect
 * attempts, garbage on an inbound connection, address changes, peer
 * mutual TLS (who is accepted without a cluster token, and to whom a
 * dialer sends its handshake), and a throughput figure. Every wait has a
 * deadline. */
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>
#include <uv.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "codec_diff.h"
#include "conn.h"
#include "log.h"
#include "raft.pb-c.h"
#include "raft_codec.h"
#include "test.h"
#include "tls.h"
#include "transport.h"

/* --- messages ------------------------------------------------------------ */

static uint8_t *pattern(size_t len, unsigned seed)
{
    uint8_t *p = pz_malloc(len ? len : 1);
    for (size_t i = 0; i < len; i++)
        p[i] = (uint8_t)(i * 31 + seed * 7 + (i >> 8));
    return p;
}

/* A message with every field set to a distinct value, n entries whose
 * payload sizes come from lens[] (NULL: 0..n-1 bytes). */
static void make_msg(struct raft_msg *m, uint8_t type, uint64_t from,
                     uint64_t to, uint64_t index, size_t n, const size_t *lens)
{
    memset(m, 0, sizeof *m);
    m->type = type;
    m->reject = index % 2 == 1;
    m->transfer = index % 3 == 0;
    m->from = from;
    m->to = to;
    m->term = 1000 + index;
    m->log_term = UINT64_MAX - index;
    m->index = index;
    m->commit = index / 2;
    m->reject_hint = index * 3;
    m->context = 0xabcdef0000000000ull + index;
    m->lease_ns = index * 7;
    m->n_entries = n;
    m->entries = n ? pz_calloc(n, sizeof *m->entries) : NULL;
    for (size_t i = 0; i < n; i++) {
        struct raft_entry *e = &m->entries[i];
        e->term = m->term - 1;
        e->index = index + i + 1;
        e->type = (uint8_t)(i % 3);
        e->len = lens ? lens[i] : i;
        e->data = e->len ? pattern(e->len, (unsigned)(index + i)) : NULL;
    }
}

static void free_msg(struct raft_msg *m)
{
    for (size_t i = 0; i < m->n_entries; i++)
        pz_free(m->entries[i].data);
    pz_free(m->entries);
    pz_free(m->snap_data);
    memset(m, 0, sizeof *m);
}

/* Field-by-field comparison, printing the first difference. */
static bool msg_equal(const struct raft_msg *a, const struct raft_msg *b)
{
#define SAME(f)                                                                \
    do {                                                                       \
        if (a->f != b->f) {                                                    \
            fprintf(stderr, "    field " #f ": %llu != %llu\n",                \
                    (unsigned long long)a->f, (unsigned long long)b->f);       \
            return false;                                                      \
        }                                                                      \
    } while (0)
    SAME(type);
    SAME(reject);
    SAME(transfer);
    SAME(from);
    SAME(to);
    SAME(term);
    SAME(log_term);
    SAME(index);
    SAME(commit);
    SAME(reject_hint);
    SAME(context);
    SAME(lease_ns);
    SAME(snap_index);
    SAME(snap_term);
    SAME(snap_len);
    SAME(n_entries);
    for (size_t i = 0; i < a->n_entries; i++) {
        const struct raft_entry *ea = &a->entries[i], *eb = &b->entries[i];
        SAME(entries[i].term);
        SAME(entries[i].index);
        SAME(entries[i].type);
        SAME(entries[i].len);
        if (ea->len && memcmp(ea->data, eb->data, ea->len) != 0) {
            fprintf(stderr, "    entry %zu data differs\n", i);
            return false;
        }
        if ((ea->data == NULL) != (eb->data == NULL)) {
            fprintf(stderr, "    entry %zu data NULL-ness differs\n", i);
            return false;
        }
    }
    if (a->snap_len && memcmp(a->snap_data, b->snap_data, a->snap_len)) {
        fprintf(stderr, "    snap_data differs\n");
        return false;
    }
#undef SAME
    return true;
}

/* One number standing for the whole message (fields, entries, data). */
static uint64_t msg_digest(const struct raft_msg *m)
{
    uint64_t f[] = {m->type,      m->reject,      m->transfer,  m->from,
                    m->to,        m->term,        m->log_term,  m->index,
                    m->commit,    m->reject_hint, m->context,   m->snap_index,
                    m->snap_term, m->snap_len,    m->n_entries, m->lease_ns};
    uint64_t h = pz_hash(f, sizeof f, 1);
    for (size_t i = 0; i < m->n_entries; i++) {
        const struct raft_entry *e = &m->entries[i];
        uint64_t g[] = {e->term, e->index, e->type, e->len};
        h = pz_hash(g, sizeof g, h);
        if (e->len)
            h = pz_hash(e->data, e->len, h);
    }
    if (m->snap_len)
        h = pz_hash(m->snap_data, m->snap_len, h);
    return h;
}

/* Encode m as a frame, check the prefix, decode the body, compare. */
static bool roundtrip(const struct raft_msg *m)
{
    struct pz_buf b;
    struct raft_decoded d;
    bool ok = false;
    pz_buf_init(&b);
    if (raft_codec_encode_msg(&b, m, RAFT_FRAME_MAX) != 0) {
        fprintf(stderr, "    encode failed\n");
        goto out;
    }
    if (b.len < RAFT_FRAME_HDR ||
        pz_get_u32((uint8_t *)b.data) != b.len - RAFT_FRAME_HDR) {
        fprintf(stderr, "    bad length prefix\n");
        goto out;
    }
    int rv = raft_codec_decode((uint8_t *)b.data + RAFT_FRAME_HDR,
                               b.len - RAFT_FRAME_HDR, &d);
    if (rv != 0) {
        fprintf(stderr, "    decode: %s\n", pz_strerror(rv));
        goto out;
    }
    ok = d.kind == RAFT_FRAME_MESSAGE && msg_equal(m, &d.msg);
    raft_decoded_free(&d);
out:
    pz_buf_free(&b);
    return ok;
}

/* --- codec tests ------------------------------------------------------- */

TEST(codec_roundtrip_every_type)
{
    static const size_t lens[] = {5, 0, 1, 300, 0, 70000};
    for (uint8_t type = RAFT_MSG_APPEND; type < RAFT_MSG_TYPE_MAX; type++) {
        for (size_t n = 0; n <= PZ_ARRAY_SIZE(lens); n += 3) {
            struct raft_msg m;
            make_msg(&m, type, 7, 9, 40 + type + n, n, lens);
            if (type == RAFT_MSG_INSTALL_SNAPSHOT) {
                m.snap_index = 12345;
                m.snap_term = 17;
                m.snap_len = 100000;
                m.snap_data = pattern(m.snap_len, 3);
            }
            bool ok = roundtrip(&m);
            if (!ok)
                fprintf(stderr, "    type %u, %zu entries\n", type, n);
            free_msg(&m);
            CHECK(ok);
        }
    }
    /* All-zero message apart from the type (proto3 omits zero fields). */
    struct raft_msg z = {.type = RAFT_MSG_HEARTBEAT};
    CHECK(roundtrip(&z));
    /* Extremes of every integer. */
    struct raft_msg x;
    make_msg(&x, RAFT_MSG_APPEND, UINT64_MAX, UINT64_MAX - 1, UINT64_MAX, 2,
             NULL);
    x.entries[0].term = UINT64_MAX;
    x.entries[1].index = UINT64_MAX;
    x.entries[1].type = RAFT_ENTRY_NOOP;
    bool ok = roundtrip(&x);
    free_msg(&x);
    CHECK(ok);
}

/* What protobuf-c packs for m, framed: the reference the hand-written
 * encoder must match byte for byte. */
static void pb_reference(struct pz_buf *out, const struct raft_msg *m)
{
    Pyazdb__Raft__RaftMessage pm = PYAZDB__RAFT__RAFT_MESSAGE__INIT;
    Pyazdb__Raft__Frame f = PYAZDB__RAFT__FRAME__INIT;
    size_t n = m->n_entries;
    Pyazdb__Raft__Entry *es = pz_calloc(n + 1, sizeof *es);
    Pyazdb__Raft__Entry **ps = pz_calloc(n + 1, sizeof *ps);
    for (size_t i = 0; i < n; i++) {
        Pyazdb__Raft__Entry init = PYAZDB__RAFT__ENTRY__INIT;
        es[i] = init;
        es[i].term = m->entries[i].term;
        es[i].index = m->entries[i].index;
        es[i].type = m->entries[i].type;
        es[i].data.len = m->entries[i].len;
        es[i].data.data = m->entries[i].data;
        ps[i] = &es[i];
    }
    pm.type = m->type;
    pm.reject = m->reject;
    pm.transfer = m->transfer;
    pm.from = m->from;
    pm.to = m->to;
    pm.term = m->term;
    pm.log_term = m->log_term;
    pm.index = m->index;
    pm.commit = m->commit;
    pm.reject_hint = m->reject_hint;
    pm.context = m->context;
    pm.lease_ns = m->lease_ns;
    pm.n_entries = n;
    pm.entries = n ? ps : NULL;
    pm.snap_index = m->snap_index;
    pm.snap_term = m->snap_term;
    pm.snap_data.len = m->snap_len;
    pm.snap_data.data = m->snap_data;
    f.body_case = PYAZDB__RAFT__FRAME__BODY_MESSAGE;
    f.message = &pm;
    size_t len = pyazdb__raft__frame__get_packed_size(&f);
    pz_buf_reserve(out, RAFT_FRAME_HDR + len);
    pz_put_u32((uint8_t *)out->data + out->len, (uint32_t)len);
    pyazdb__raft__frame__pack(
        &f, (uint8_t *)out->data + out->len + RAFT_FRAME_HDR);
    out->len += RAFT_FRAME_HDR + len;
    pz_free(es);
    pz_free(ps);
}

/* A value of a random size: zero, small, or anything up to UINT64_MAX. */
static uint64_t any_u64(uint64_t *rng)
{
    uint64_t r = pz_rand_next(rng);
    switch (r % 4) {
    case 0:
        return 0;
    case 1:
        return r >> 56;
    case 2:
        return pz_rand_next(rng) >> (r % 64);
    default:
        return UINT64_MAX - (r >> 60);
    }
}

/* A random message: every field zero, small or large, up to 20 entries
 * with payloads taken from data. */
static void random_msg(uint64_t *rng, struct raft_msg *mp,
                       struct raft_entry es[20], const uint8_t *data,
                       size_t size)
{
    struct raft_msg m = {0};
    m.type = (uint8_t)(pz_rand_next(rng) % RAFT_MSG_TYPE_MAX);
    m.reject = pz_rand_next(rng) & 1;
    m.transfer = pz_rand_next(rng) & 1;
    m.from = any_u64(rng);
    m.to = any_u64(rng);
    m.to = any_u64(rng);
    m.term = any_u64(rng);
    m.log_term = any_u64(rng);
    m.index = any_u64(rng);
    m.commit = any_u64(rng);
    m.reject_hint = any_u64(rng);
    m.context = any_u64(rng);
    m.lease_ns = any_u64(rng);
    m.n_entries = pz_rand_next(rng) % 21;
    for (size_t i = 0; i < m.n_entries; i++) {
        es[i].term = any_u64(rng);
        es[i].index = any_u64(rng);
        es[i].type = (uint8_t)(pz_rand_next(rng) % 3);
        es[i].len =
            pz_rand_next(rng) % 3 == 0 ? 0 : pz_rand_next(rng) % size;
        es[i].data = es[i].len ? (uint8_t *)data : NULL;
    }
    m.entries = m.n_entries ? es : NULL;
    m.snap_index = any_u64(rng);
    m.snap_term = any_u64(rng);
    m.snap_len =
        pz_rand_next(rng) % 4 == 0 ? pz_rand_next(rng) % size : 0;
    m.snap_data = m.snap_len ? (uint8_t *)data : NULL;
    *mp = m;
}

/* The hand-written RaftMessage encoder writes exactly protobuf-c's bytes
 * for proto/raft.proto: random messages, zero and extreme fields, empty
 * and non-empty payloads. */
TEST(codec_encode_matches_protobuf_c)
{
    uint64_t rng = 0x5eed;
    uint8_t data[300];
    for (size_t i = 0; i < sizeof data; i++)
        data[i] = (uint8_t)(i * 7);
    struct pz_buf got, want;
    pz_buf_init(&got);
    pz_buf_init(&want);
    for (int iter = 0; iter < 3000; iter++) {
        struct raft_entry es[20];
        struct raft_msg m;
        random_msg(&rng, &m, es, data, sizeof data);
        pz_buf_reset(&got);
        pz_buf_reset(&want);
        CHECK_EQ_INT(raft_codec_encode_msg(&got, &m, RAFT_FRAME_MAX), 0);
        pb_reference(&want, &m);
        CHECK_EQ_INT(got.len, want.len);
        if (got.len != want.len ||
            memcmp(got.data, want.data, got.len) != 0) {
            fprintf(stderr, "    differs at iteration %d\n", iter);
            CHECK(false);
            break;
        }
    }
    pz_buf_free(&got);
    pz_buf_free(&want);
}

TEST(codec_large_payloads)
{
    size_t lens[] = {8u << 20, 0, 1u << 20};
    struct raft_msg m;
    make_msg(&m, RAFT_MSG_APPEND, 1, 2, 5, 3, lens);
    CHECK(roundtrip(&m));
    /* Over a small limit: PZ_ETOOBIG and nothing appended. */
    struct pz_buf b;
    pz_buf_init(&b);
    pz_buf_append(&b, "x", 1);
    CHECK_EQ_INT(raft_codec_encode_msg(&b, &m, 1u << 20), PZ_ETOOBIG);
    CHECK_EQ_INT(b.len, 1);
    /* Exactly at the limit is fine. */
    pz_buf_reset(&b);
    CHECK_EQ_INT(raft_codec_encode_msg(&b, &m, RAFT_FRAME_MAX), 0);
    size_t body = b.len - RAFT_FRAME_HDR;
    pz_buf_reset(&b);
    CHECK_EQ_INT(raft_codec_encode_msg(&b, &m, body), 0);
    pz_buf_reset(&b);
    CHECK_EQ_INT(raft_codec_encode_msg(&b, &m, body - 1), PZ_ETOOBIG);
    pz_buf_free(&b);
    free_msg(&m);
}

TEST(codec_handshake_roundtrip)
{
    struct pz_buf b;
    struct raft_decoded d;
    pz_buf_init(&b);
    struct raft_handshake h = {
        .version = RAFT_PROTO_VERSION,
        .cluster_id = 0xfeedfacecafebeefull,
        .node_id = 3,
        .target_id = 2,
        .name = "node-3",
        .token = "s3cret",
    };
    CHECK_EQ_INT(raft_codec_encode_handshake(&b, &h, 4096), 0);
    CHECK_EQ_INT(raft_codec_decode((uint8_t *)b.data + 4, b.len - 4, &d), 0);
    CHECK_EQ_INT(d.kind, RAFT_FRAME_HANDSHAKE);
    CHECK_EQ_INT(d.hs.version, RAFT_PROTO_VERSION);
    CHECK(d.hs.cluster_id == h.cluster_id);
    CHECK_EQ_INT(d.hs.node_id, 3);
    CHECK_EQ_INT(d.hs.target_id, 2);
    CHECK_EQ_STR(d.hs.name, "node-3");
    CHECK_EQ_STR(d.hs.token, "s3cret");
    raft_decoded_free(&d);

    /* NULL strings travel as "". */
    struct raft_handshake h2 = {.version = 1, .node_id = 1};
    pz_buf_reset(&b);
    CHECK_EQ_INT(raft_codec_encode_handshake(&b, &h2, 4096), 0);
    CHECK_EQ_INT(raft_codec_decode((uint8_t *)b.data + 4, b.len - 4, &d), 0);
    CHECK_EQ_STR(d.hs.name, "");
    CHECK_EQ_STR(d.hs.token, "");
    raft_decoded_free(&d);

    struct raft_handshake_reply r = {
        .status = RAFT_HS_REMOVED,
        .version = 1,
        .node_id = 2,
        .name = "node-2",
        .conf_index = 42,
    };
    pz_buf_reset(&b);
    CHECK_EQ_INT(raft_codec_encode_reply(&b, &r, 4096), 0);
    CHECK_EQ_INT(raft_codec_decode((uint8_t *)b.data + 4, b.len - 4, &d), 0);
    CHECK_EQ_INT(d.kind, RAFT_FRAME_REPLY);
    CHECK_EQ_INT(d.reply.status, RAFT_HS_REMOVED);
    CHECK_EQ_INT(d.reply.conf_index, 42);
    CHECK_EQ_INT(d.reply.node_id, 2);
    CHECK_EQ_STR(d.reply.name, "node-2");
    raft_decoded_free(&d);
    CHECK_EQ_STR(raft_hs_status_str(RAFT_HS_NOT_MEMBER),
                 "not a member of the cluster");
    CHECK_EQ_STR(raft_hs_status_str(RAFT_HS_CLUSTER_MISMATCH),
                 "cluster id mismatch");
    CHECK_EQ_STR(raft_hs_status_str(99), "unknown status");
    /* A handshake too big for the limit. */
    pz_buf_reset(&b);
    CHECK_EQ_INT(raft_codec_encode_handshake(&b, &h, 10), PZ_ETOOBIG);
    pz_buf_free(&b);
}

static int decode_bytes(const uint8_t *p, size_t n)
{
    struct raft_decoded d;
    int rv = raft_codec_decode(p, n, &d);
    raft_decoded_free(&d);
    return rv;
}

TEST(codec_malformed_rejected)
{
    /* Not protobuf: a varint that never ends, a length past the end. */
    static const uint8_t junk1[] = {0xff, 0xff, 0xff};
    static const uint8_t junk2[] = {0x1a, 0x10, 0x08};
    /* Field 3 (message) sent as a varint: wrong wire type. */
    static const uint8_t wrong_wt[] = {0x18, 0x01};
    CHECK_EQ_INT(decode_bytes(junk1, sizeof junk1), PZ_ECORRUPT);
    CHECK_EQ_INT(decode_bytes(junk2, sizeof junk2), PZ_ECORRUPT);
    CHECK_EQ_INT(decode_bytes(wrong_wt, sizeof wrong_wt), PZ_ECORRUPT);
    /* Valid protobuf, invalid for us: an empty Frame, message type 0, 300
     * (would truncate into a uint8_t), RAFT_MSG_TYPE_MAX, entry type 3. */
    static const uint8_t empty_frame[] = {0};
    static const uint8_t type0[] = {0x1a, 0x00};
    static const uint8_t type300[] = {0x1a, 0x03, 0x08, 0xac, 0x02};
    static const uint8_t typemax[] = {0x1a, 0x02, 0x08, RAFT_MSG_TYPE_MAX};
    static const uint8_t etype3[] = {0x1a, 0x06, 0x08, 0x01,
                                     0x62, 0x02, 0x18, 0x03};
    static const uint8_t etype2[] = {0x1a, 0x06, 0x08, 0x01,
                                     0x62, 0x02, 0x18, 0x02};
    CHECK_EQ_INT(decode_bytes(empty_frame, 0), PZ_EPROTO);
    CHECK_EQ_INT(decode_bytes(type0, sizeof type0), PZ_EPROTO);
    CHECK_EQ_INT(decode_bytes(type300, sizeof type300), PZ_EPROTO);
    CHECK_EQ_INT(decode_bytes(typemax, sizeof typemax), PZ_EPROTO);
    CHECK_EQ_INT(decode_bytes(etype3, sizeof etype3), PZ_EPROTO);
    CHECK_EQ_INT(decode_bytes(etype2, sizeof etype2), 0);
    /* So does the path through protobuf-c (the reference the tests
     * compare the codec with). */
    static const uint8_t *const bad_msgs[] = {type0, type300, typemax, etype3};
    static const size_t bad_lens[] = {sizeof type0, sizeof type300,
                                      sizeof typemax, sizeof etype3};
    for (size_t i = 0; i < PZ_ARRAY_SIZE(bad_msgs); i++) {
        struct raft_decoded d;
        CHECK_EQ_INT(raft_codec_decode_pb(bad_msgs[i], bad_lens[i], &d),
                     PZ_EPROTO);
        raft_decoded_free(&d);
    }
    /* A length prefix of six bytes (2, written long): neither decoder
     * reads one over five bytes. */
    static const uint8_t long_len[] = {0x1a, 0x82, 0x80, 0x80, 0x80,
                                       0x80, 0x00, 0x08, 0x01};
    struct raft_decoded dpb;
    int pbrv = raft_codec_decode_pb(long_len, sizeof long_len, &dpb);
    raft_decoded_free(&dpb);
    CHECK(pbrv < 0);
    CHECK_EQ_INT(decode_bytes(long_len, sizeof long_len), PZ_ECORRUPT);
    /* A snapshot chunk whose bytes run past the snapshot's total size. */
    {
        static const uint8_t five[5] = {1, 2, 3, 4, 5};
        struct raft_snap_chunk c = {.term = 2,
                                    .snap_index = 9,
                                    .snap_term = 2,
                                    .offset = 10,
                                    .total = 14,
                                    .data = five,
                                    .len = 5};
        struct pz_buf cb;
        pz_buf_init(&cb);
        CHECK_EQ_INT(raft_codec_encode_chunk(&cb, &c, RAFT_FRAME_MAX), 0);
        CHECK_EQ_INT(decode_bytes((uint8_t *)cb.data + 4, cb.len - 4),
                     PZ_EPROTO);
        c.total = 15; /* exactly to the end: fine */
        pz_buf_reset(&cb);
        CHECK_EQ_INT(raft_codec_encode_chunk(&cb, &c, RAFT_FRAME_MAX), 0);
        CHECK_EQ_INT(decode_bytes((uint8_t *)cb.data + 4, cb.len - 4), 0);
        pz_buf_free(&cb);
    }

    /* Every truncation of a valid body fails: the Frame's only field is
     * length-delimited and covers the rest. */
    struct raft_msg m;
    make_msg(&m, RAFT_MSG_APPEND, 1, 2, 10, 4, NULL);
    struct pz_buf b;
    pz_buf_init(&b);
    CHECK_EQ_INT(raft_codec_encode_msg(&b, &m, RAFT_FRAME_MAX), 0);
    const uint8_t *body = (uint8_t *)b.data + 4;
    size_t len = b.len - 4;
    for (size_t cut = 1; cut < len; cut++) {
        uint8_t *copy = test_exact_copy(body, cut);
        int rv = decode_bytes(copy, cut);
        pz_free(copy);
        if (rv == 0)
            fprintf(stderr, "    truncation to %zu decoded\n", cut);
        CHECK(rv == PZ_ECORRUPT);
    }
    /* Random corruption: never a crash, never a read out of bounds. */
    uint64_t rng = 42;
    int accepted = 0, rejected = 0;
    for (int i = 0; i < 3000; i++) {
        uint8_t *copy = pz_memdup(body, len);
        int flips = 1 + (int)(pz_rand_next(&rng) % 4);
        for (int f = 0; f < flips; f++)
            copy[pz_rand_next(&rng) % len] = (uint8_t)pz_rand_next(&rng);
        int rv = decode_bytes(copy, len);
        pz_free(copy);
        CHECK(rv == 0 || rv == PZ_ECORRUPT || rv == PZ_EPROTO);
        if (rv == 0)
            accepted++;
        else
            rejected++;
    }
    CHECK(rejected > 0);
    CHECK(accepted > 0); /* payload bytes flip harmlessly */
    pz_buf_free(&b);
    free_msg(&m);
}

/* One random mutation of buf (len *n, room for 16 more bytes): a byte
 * overwritten, bytes inserted or removed, a cut, a field of any wire
 * type spliced in. */
static void mutate(uint64_t *rng, uint8_t *buf, size_t *n)
{
    size_t len = *n;
    size_t at = len ? pz_rand_next(rng) % (len + 1) : 0;
    switch (pz_rand_next(rng) % 6) {
    case 0:
        if (len)
            buf[pz_rand_next(rng) % len] = (uint8_t)pz_rand_next(rng);
        break;
    case 1: { /* a few random bytes in */
        size_t k = 1 + pz_rand_next(rng) % 4;
        memmove(buf + at + k, buf + at, len - at);
        for (size_t i = 0; i < k; i++)
            buf[at + i] = (uint8_t)pz_rand_next(rng);
        *n = len + k;
        break;
    }
    case 2: /* a byte out */
        if (at < len) {
            memmove(buf + at, buf + at + 1, len - at - 1);
            *n = len - 1;
        }
        break;
    case 3: /* cut */
        *n = at;
        break;
    case 4: { /* a plausible field: tag of a random field and wire type */
        static const uint8_t vals[][4] = {
            {0x00}, {0x7f}, {0xff, 0x01}, {0x80, 0x80, 0x80, 0x10},
        };
        uint8_t t = (uint8_t)((1 + pz_rand_next(rng) % 15) << 3 |
                              pz_rand_next(rng) % 8);
        const uint8_t *v = vals[pz_rand_next(rng) % 4];
        size_t vl = 1;
        while (vl < 4 && v[vl - 1] & 0x80)
            vl++;
        memmove(buf + at + 1 + vl, buf + at, len - at);
        buf[at] = t;
        memcpy(buf + at + 1, v, vl);
        *n = len + 1 + vl;
        break;
    }
    default: /* a byte bumped: lengths and varints off by one */
        if (len)
            buf[pz_rand_next(rng) % len] += 1;
        break;
    }
}

/* The hand-written decoder against protobuf-c's unpack: random messages,
 * chunks and handshakes, then random mutations of each, both decoders must
 * agree (codec_diff.h says where they may differ and why). */
TEST(codec_decode_matches_protobuf_c)
{
    uint64_t rng = 0xd1ff;
    uint8_t data[300];
    for (size_t i = 0; i < sizeof data; i++)
        data[i] = (uint8_t)(i * 13);
    struct pz_buf b;
    pz_buf_init(&b);
    int exact = 0, accepted = 0, refused = 0, documented = 0, skipped = 0;
    for (int iter = 0; iter < 3000; iter++) {
        struct raft_entry es[20];
        struct raft_msg m;
        pz_buf_reset(&b);
        if (iter % 10 == 9) {
            struct raft_snap_chunk c = {
                .term = any_u64(&rng), .snap_index = any_u64(&rng),
                .snap_term = any_u64(&rng), .offset = any_u64(&rng) % 500,
                .data = data, .len = pz_rand_next(&rng) % sizeof data};
            c.total = c.offset + c.len + any_u64(&rng) % 1000;
            CHECK_EQ_INT(raft_codec_encode_chunk(&b, &c, RAFT_FRAME_MAX), 0);
        } else if (iter % 50 == 7) {
            struct raft_handshake h = {.version = 1,
                                       .cluster_id = any_u64(&rng),
                                       .node_id = any_u64(&rng),
                                       .name = "n1",
                                       .token = "t"};
            CHECK_EQ_INT(
                raft_codec_encode_handshake(&b, &h, RAFT_FRAME_MAX), 0);
        } else {
            random_msg(&rng, &m, es, data, sizeof data);
            CHECK_EQ_INT(raft_codec_encode_msg(&b, &m, RAFT_FRAME_MAX), 0);
        }
        size_t len = b.len - RAFT_FRAME_HDR;
        bool skip;
        int rv;
        const char *why = codec_diff_check((uint8_t *)b.data + 4, len,
                                           &skip, &rv);
        if (why)
            fprintf(stderr, "    iteration %d: %s\n", iter, why);
        CHECK(why == NULL && !skip);
        exact += rv == 0;
        for (int k = 0; k < 8; k++) {
            size_t n = len;
            uint8_t *copy = pz_malloc(len + 16 * 4);
            memcpy(copy, b.data + 4, len);
            int muts = 1 + (int)(pz_rand_next(&rng) % 3);
            for (int j = 0; j < muts; j++)
                mutate(&rng, copy, &n);
            uint8_t *body = test_exact_copy(copy, n);
            why = codec_diff_check(body, n, &skip, &rv);
            if (why) {
                fprintf(stderr, "    iteration %d mutation %d: %s:", iter,
                        k, why);
                for (size_t i = 0; i < n && i < 64; i++)
                    fprintf(stderr, " %02x", body[i]);
                fprintf(stderr, "\n");
            }
            CHECK(why == NULL);
            skipped += skip;
            accepted += rv == 0;
            refused += rv != 0;
            documented += rv == PZ_ECORRUPT && codec_diff_documented(body, n);
            pz_free(body);
            pz_free(copy);
        }
    }
    /* The mutations reach both outcomes, and the refusals of our own. */
    CHECK(exact > 2000);
    CHECK(accepted > 1000 && refused > 1000);
    CHECK(documented > 0);
    CHECK(skipped < 100);
    pz_buf_free(&b);
}

/* What the hand-written decoder refuses though protobuf-c takes it: a
 * uint32 over 32 bits (protobuf-c keeps the low bits: type 2^32 + 1
 * would read as APPEND), a varint over 64 bits, a second body, a bool
 * sent as a fixed64, field 0 in a two-byte tag. */
TEST(codec_decode_refusals_of_its_own)
{
    static const uint8_t type_wraps[] = {
        0x1a, 0x06, 0x08, 0x81, 0x80, 0x80, 0x80, 0x10};
    static const uint8_t over64[] = {0x1a, 0x0d, 0x08, 0x01, 0x20,
                                     0xff, 0xff, 0xff, 0xff, 0xff,
                                     0xff, 0xff, 0xff, 0xff, 0x7f};
    static const uint8_t two_bodies[] = {0x1a, 0x02, 0x08, 0x01,
                                         0x1a, 0x02, 0x08, 0x02};
    static const uint8_t bool_fixed64[] = {0x1a, 0x0b, 0x08, 0x01, 0x11, 1,
                                           2,    3,    4,    5,    6,    7,
                                           8};
    static const uint8_t field0[] = {0x80, 0x00, 0x00, 0x1a, 0x02, 0x08,
                                     0x01};
    static const uint8_t *const bodies[] = {type_wraps, over64, two_bodies,
                                            bool_fixed64, field0};
    static const size_t lens[] = {sizeof type_wraps, sizeof over64,
                                  sizeof two_bodies, sizeof bool_fixed64,
                                  sizeof field0};
    for (size_t i = 0; i < PZ_ARRAY_SIZE(bodies); i++) {
        struct raft_decoded d;
        int rv = raft_codec_decode_pb(bodies[i], lens[i], &d);
        raft_decoded_free(&d);
        CHECK_EQ_INT(rv, 0); /* protobuf-c takes it */
        CHECK_EQ_INT(decode_bytes(bodies[i], lens[i]), PZ_ECORRUPT);
        CHECK(codec_diff_documented(bodies[i], lens[i]));
    }
}

/* Payloads are not copied: they point into the body decoded. */
TEST(codec_decode_payloads_in_place)
{
    static const size_t lens[] = {5, 0, 300};
    struct raft_msg m;
    make_msg(&m, RAFT_MSG_APPEND, 1, 2, 10, 3, lens);
    m.snap_len = 7;
    m.snap_data = pattern(m.snap_len, 9);
    struct pz_buf b;
    pz_buf_init(&b);
    CHECK_EQ_INT(raft_codec_encode_msg(&b, &m, RAFT_FRAME_MAX), 0);
    const uint8_t *body = (uint8_t *)b.data + 4, *end = body + b.len - 4;
    struct raft_decoded d;
    CHECK_EQ_INT(raft_codec_decode(body, b.len - 4, &d), 0);
    CHECK(msg_equal(&m, &d.msg));
    CHECK(d.msg.entries[0].data > body && d.msg.entries[0].data < end);
    CHECK(d.msg.entries[1].data == NULL);
    CHECK(d.msg.entries[2].data + 300 <= end);
    CHECK(d.msg.snap_data > body && d.msg.snap_data + 7 <= end);
    raft_decoded_free(&d);
    pz_buf_free(&b);
    free_msg(&m);
}

TEST(codec_decode_alloc_failure)
{
    struct raft_msg m;
    make_msg(&m, RAFT_MSG_APPEND, 1, 2, 10, 5, NULL);
    struct pz_buf b;
    pz_buf_init(&b);
    CHECK_EQ_INT(raft_codec_encode_msg(&b, &m, RAFT_FRAME_MAX), 0);
    int enomem = 0;
    for (long n = 1;; n++) {
        struct raft_decoded d;
        pz_alloc_fail_at(n);
        int rv = raft_codec_decode((uint8_t *)b.data + 4, b.len - 4, &d);
        pz_alloc_fail_at(0);
        if (rv == 0) {
            bool same = msg_equal(&m, &d.msg);
            raft_decoded_free(&d);
            CHECK(same);
            break; /* the Nth allocation is past the last one */
        }
        CHECK_EQ_INT(rv, PZ_ENOMEM);
        enomem++;
        CHECK(n < 1000);
    }
    CHECK(enomem >= 1); /* the entries array */
    pz_buf_free(&b);
    free_msg(&m);
}

/* Frames of these body sizes, concatenated. */
static void build_stream(struct pz_buf *s, struct raft_msg *msgs, size_t n)
{
    static const size_t lens[] = {0, 3, 5000, 1};
    pz_buf_init(s);
    for (size_t i = 0; i < n; i++) {
        make_msg(&msgs[i], (uint8_t)(RAFT_MSG_APPEND + i % 12), 1, 2, i + 1,
                 i % 5, lens);
        pz_assert(raft_codec_encode_msg(s, &msgs[i], RAFT_FRAME_MAX) == 0);
    }
}

/* Feed s in pieces (step 0: random 1..64 bytes); check every frame. */
static bool feed_stream(const struct pz_buf *s, struct raft_msg *msgs, size_t n,
                        size_t step)
{
    struct raft_frame_parser p;
    raft_frame_parser_init(&p, RAFT_FRAME_MAX);
    uint64_t rng = 7;
    size_t off = 0, got = 0;
    bool ok = true;
    const uint8_t *data = (const uint8_t *)s->data;
    while (off < s->len && ok) {
        size_t piece = step ? step : 1 + pz_rand_next(&rng) % 64;
        piece = PZ_MIN(piece, s->len - off);
        size_t in = 0;
        while (in < piece && ok) {
            const uint8_t *body;
            size_t blen, used;
            int r = raft_frame_parser_feed(&p, data + off + in, piece - in,
                                           &used, &body, &blen);
            in += used;
            if (r == RAFT_FRAME_NEED_MORE) {
                ok = in == piece;
                break;
            }
            if (r != RAFT_FRAME_DONE || got >= n) {
                ok = false;
                break;
            }
            struct raft_decoded d;
            ok = raft_codec_decode(body, blen, &d) == 0 &&
                 msg_equal(&msgs[got], &d.msg);
            raft_decoded_free(&d);
            got++;
        }
        off += piece;
    }
    raft_frame_parser_free(&p);
    if (got != n)
        fprintf(stderr, "    step %zu: %zu frames of %zu\n", step, got, n);
    return ok && got == n;
}

TEST(frame_parser_pieces)
{
    enum { N = 24 };
    struct raft_msg msgs[N];
    struct pz_buf s;
    build_stream(&s, msgs, N);
    bool whole = feed_stream(&s, msgs, N, s.len);
    bool bytewise = feed_stream(&s, msgs, N, 1);
    bool random = feed_stream(&s, msgs, N, 0);
    bool seven = feed_stream(&s, msgs, N, 7);
    for (int i = 0; i < N; i++)
        free_msg(&msgs[i]);
    pz_buf_free(&s);
    CHECK(whole);
    CHECK(bytewise);
    CHECK(random);
    CHECK(seven);
}

/* With checksums, a frame whose any one bit (or any two adjacent bits)
 * was flipped, in its length, body or checksum, is never handed out. */
TEST(frame_parser_checksum)
{
    struct raft_entry e = {.index = 9, .term = 3, .type = RAFT_ENTRY_NORMAL,
                           .data = (uint8_t *)"some entry bytes", .len = 16};
    struct raft_msg m = {.type = RAFT_MSG_APPEND, .from = 1, .to = 2,
                         .term = 3, .index = 8, .log_term = 3, .commit = 7,
                         .entries = &e, .n_entries = 1};
    struct pz_buf b;
    pz_buf_init(&b);
    CHECK_EQ_INT(raft_codec_encode_msg(&b, &m, RAFT_FRAME_MAX), 0);
    size_t plain = b.len;
    raft_codec_seal(&b, 0);
    CHECK_EQ_INT(b.len, plain + RAFT_FRAME_CRC);
    uint8_t *f = (uint8_t *)b.data;
    struct raft_frame_parser p;
    const uint8_t *body;
    size_t blen, used;
    /* Intact: one frame, every byte used, also fed a byte at a time. */
    raft_frame_parser_init(&p, RAFT_FRAME_MAX);
    p.crc = true;
    CHECK_EQ_INT(raft_frame_parser_feed(&p, f, b.len, &used, &body, &blen),
                 RAFT_FRAME_DONE);
    CHECK_EQ_INT(used, b.len);
    CHECK_EQ_INT(blen, plain - RAFT_FRAME_HDR);
    int r = RAFT_FRAME_NEED_MORE;
    for (size_t i = 0; i < b.len; i++) {
        r = raft_frame_parser_feed(&p, f + i, 1, &used, &body, &blen);
        CHECK_EQ_INT(used, 1);
        if (i + 1 < b.len)
            CHECK_EQ_INT(r, RAFT_FRAME_NEED_MORE);
    }
    CHECK_EQ_INT(r, RAFT_FRAME_DONE);
    struct raft_decoded d;
    CHECK_EQ_INT(raft_codec_decode(body, blen, &d), 0);
    CHECK(msg_equal(&m, &d.msg));
    raft_decoded_free(&d);
    raft_frame_parser_free(&p);
    size_t caught = 0, flips = 0;
    for (size_t bit = 0; bit < b.len * 8; bit++) {
        for (int width = 1; width <= 2 && bit + (size_t)width <= b.len * 8;
             width++) {
            for (int k = 0; k < width; k++)
                f[(bit + (size_t)k) / 8] ^= (uint8_t)(1u << ((bit + (size_t)k) % 8));
            raft_frame_parser_init(&p, 4096);
            p.crc = true;
            r = raft_frame_parser_feed(&p, f, b.len, &used, &body, &blen);
            /* Caught (checksum), too long for the limit, or still waiting
             * for bytes that a closed link will never bring. */
            bool ok = r == PZ_ECORRUPT || r == PZ_ETOOBIG ||
                      r == RAFT_FRAME_NEED_MORE;
            if (!ok)
                fprintf(stderr, "    flip of bit %zu (width %d) passed\n", bit,
                        width);
            CHECK(ok);
            caught += ok;
            flips++;
            raft_frame_parser_free(&p);
            for (int k = 0; k < width; k++)
                f[(bit + (size_t)k) / 8] ^= (uint8_t)(1u << ((bit + (size_t)k) % 8));
        }
    }
    CHECK_EQ_INT(caught, flips);
    /* Without checksums (a link to an older node), the frame without its
     * last 4 bytes is exactly the old format. */
    raft_frame_parser_init(&p, RAFT_FRAME_MAX);
    CHECK_EQ_INT(raft_frame_parser_feed(&p, f, plain, &used, &body, &blen),
                 RAFT_FRAME_DONE);
    CHECK_EQ_INT(used, plain);
    raft_frame_parser_free(&p);
    pz_buf_free(&b);
}

TEST(frame_parser_limit)
{
    struct raft_frame_parser p;
    const uint8_t *body;
    size_t blen, used;
    uint8_t hdr[4];
    raft_frame_parser_init(&p, 100);
    /* 100 bytes: accepted, assembled one byte at a time. */
    pz_put_u32(hdr, 100);
    for (int i = 0; i < 4; i++) {
        int r = raft_frame_parser_feed(&p, &hdr[i], 1, &used, &body, &blen);
        CHECK_EQ_INT(r, RAFT_FRAME_NEED_MORE);
        CHECK_EQ_INT(used, 1);
    }
    uint8_t byte = 0x5a;
    for (int i = 0; i < 99; i++)
        CHECK_EQ_INT(raft_frame_parser_feed(&p, &byte, 1, &used, &body, &blen),
                     RAFT_FRAME_NEED_MORE);
    CHECK_EQ_INT(raft_frame_parser_feed(&p, &byte, 1, &used, &body, &blen),
                 RAFT_FRAME_DONE);
    CHECK_EQ_INT(blen, 100);
    CHECK(body[0] == 0x5a && body[99] == 0x5a);
    /* An empty body completes with the prefix. */
    pz_put_u32(hdr, 0);
    CHECK_EQ_INT(raft_frame_parser_feed(&p, hdr, 4, &used, &body, &blen),
                 RAFT_FRAME_DONE);
    CHECK_EQ_INT(blen, 0);
    CHECK_EQ_INT(used, 4);
    /* 101 bytes: refused as soon as the prefix is complete, one byte at a
     * time too, before any body byte is buffered. */
    pz_put_u32(hdr, 101);
    for (int i = 0; i < 3; i++)
        CHECK_EQ_INT(
            raft_frame_parser_feed(&p, &hdr[i], 1, &used, &body, &blen),
            RAFT_FRAME_NEED_MORE);
    CHECK_EQ_INT(raft_frame_parser_feed(&p, &hdr[3], 1, &used, &body, &blen),
                 PZ_ETOOBIG);
    CHECK_EQ_INT(p.body_len, 101);
    /* And it stays refused. */
    CHECK_EQ_INT(raft_frame_parser_feed(&p, &byte, 1, &used, &body, &blen),
                 PZ_ETOOBIG);
    raft_frame_parser_free(&p);
    /* "GET " read as a length. */
    raft_frame_parser_init(&p, RAFT_FRAME_MAX);
    CHECK_EQ_INT(raft_frame_parser_feed(&p, (const uint8_t *)"GET / HTTP/1.1",
                                        14, &used, &body, &blen),
                 PZ_ETOOBIG);
    CHECK_EQ_INT(used, 4);
    raft_frame_parser_free(&p);
}

/* --- the loop ------------------------------------------------------------ */

#define MAX_NODES 6

struct tnode {
    struct transport *t; /* NULL when not running */
    uint64_t id;         /* node id */
    int port;            /* bound port */
    uint64_t *digests;   /* digest of every message received */
    uint64_t *indexes;   /* index of every message received */
    size_t n_got;        /* messages received */
    size_t cap;          /* room in digests/indexes */
    int ups, downs;      /* on_peer events */
    bool closed;         /* close callback fired */
    bool reply_in_recv;  /* echo every message back to its sender */
    bool close_in_recv;  /* close the transport on the first message */
    const char *invalid; /* on_recv calls every message invalid */
    int kind;            /* check_peer's verdict on every dialer */
    uint64_t member_id;  /* but this one's: a member (0: none) */
    uint64_t want_inc;   /* else: the incarnation check_peer expects of
                            every peer (0: any) */
    uint64_t kind_index; /* its conf_index (REMOVED) */
    int removed_calls;   /* on_removed events */
    uint64_t removed_from, removed_index, removed_term; /* the last one */
    int in_closed;       /* on_inbound_closed events */
    bool kind_set;       /* kind was chosen by the test */
    int infos;           /* on_peer_info events */
    bool info_dialed;    /* the last one's dialed flag */
    char info_raft[64];  /* and its Raft address */
};

static uv_loop_t loop;
static uv_prepare_t prep;
static uv_timer_t ticker;
static char log_path[64];
static struct tnode nodes[MAX_NODES];
static uv_tcp_t port_holder; /* see dead_port() */
static bool holding_port;    /* port_holder is open */

static void on_prep(uv_prepare_t *h)
{
    PZ_UNUSED(h);
    conn_before_sleep();
}

static void on_tick(uv_timer_t *h)
{
    PZ_UNUSED(h);
}

static size_t world_budget; /* max_partial_input of the next world_init */
static size_t world_hard;   /* hard_limit of the next world_init (0: 256 MiB) */

static void world_init(void)
{
    signal(SIGPIPE, SIG_IGN);
    memset(nodes, 0, sizeof nodes);
    holding_port = false;
    pz_assert(uv_loop_init(&loop) == 0);
    struct conn_limits lim = {
        .high_water = 1u << 20,
        .hard_limit = world_hard ? world_hard : 256u << 20,
        .idle_timeout = 0,
        .max_partial_input = world_budget,
    };
    world_budget = 0;
    world_hard = 0;
    conn_setup(&loop, &lim);
    uv_prepare_init(&loop, &prep);
    uv_prepare_start(&prep, on_prep);
    /* Wakes UV_RUN_ONCE up so that deadlines are checked. */
    uv_timer_init(&loop, &ticker);
    uv_timer_start(&ticker, on_tick, 5, 5);
    snprintf(log_path, sizeof log_path, "/tmp/pz-transport-XXXXXX");
    int fd = mkstemp(log_path);
    pz_assert(fd >= 0);
    close(fd);
    pz_log_setup(PZ_LOG_INFO, "t");
    pz_assert(pz_log_open(log_path) == 0);
}

static bool log_has(const char *needle)
{
    FILE *f = fopen(log_path, "r");
    if (f == NULL)
        return false;
    struct pz_buf b;
    pz_buf_init(&b);
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        pz_buf_append(&b, chunk, n);
    fclose(f);
    bool found = b.data && strstr(b.data, needle) != NULL;
    if (!found)
        fprintf(stderr, "    log lacks \"%s\"; log:\n%s", needle,
                b.data ? b.data : "");
    pz_buf_free(&b);
    return found;
}

typedef bool (*pred_fn)(void *arg);

/* Runs the loop until pred holds or ms pass. */
static bool run_until(pred_fn pred, void *arg, uint64_t ms)
{
    uv_update_time(&loop);
    uint64_t deadline = uv_now(&loop) + ms;
    while (!pred(arg)) {
        if (uv_now(&loop) >= deadline)
            return false;
        uv_run(&loop, UV_RUN_ONCE);
    }
    return true;
}

static bool never(void *arg)
{
    PZ_UNUSED(arg);
    return false;
}

static void run_for(uint64_t ms)
{
    run_until(never, NULL, ms);
}

static void on_closed(void *data);

static const char *on_recv(void *data, const struct raft_msg *m)
{
    struct tnode *n = data;
    if (n->invalid)
        return n->invalid;
    if (n->n_got == n->cap) {
        n->cap = n->cap ? n->cap * 2 : 64;
        n->digests = pz_realloc(n->digests, n->cap * sizeof *n->digests);
        n->indexes = pz_realloc(n->indexes, n->cap * sizeof *n->indexes);
    }
    n->digests[n->n_got] = msg_digest(m);
    n->indexes[n->n_got] = m->index;
    n->n_got++;
    if (n->close_in_recv && n->t) {
        transport_close(n->t, on_closed);
        n->t = NULL;
        return NULL;
    }
    if (n->reply_in_recv) {
        struct raft_msg r = {.type = RAFT_MSG_APPEND_RESP,
                             .from = m->to,
                             .to = m->from,
                             .index = m->index};
        transport_send(n->t, &r);
    }
    return NULL;
}

static int on_check_peer(void *data, uint64_t id, uint64_t incarnation,
                         uint64_t member_since, uint64_t *conf_index,
                         uint64_t *conf_term)
{
    struct tnode *n = data;
    PZ_UNUSED(member_since);
    if (n->want_inc != 0 && incarnation != n->want_inc)
        return TRANSPORT_PEER_OTHER_INCARNATION;
    if (n->member_id != 0 && id == n->member_id)
        return TRANSPORT_PEER_MEMBER;
    *conf_index = n->kind_index;
    *conf_term = 7;
    return n->kind;
}

static void on_removed(void *data, uint64_t id, uint64_t conf_index,
                       uint64_t conf_term)
{
    struct tnode *n = data;
    n->removed_calls++;
    n->removed_from = id;
    n->removed_index = conf_index;
    n->removed_term = conf_term;
}

static void on_inbound_closed(void *data, uint64_t id, bool last)
{
    PZ_UNUSED(last);
    struct tnode *n = data;
    PZ_UNUSED(id);
    n->in_closed++;
}

static void on_peer_info(void *data, uint64_t id, bool dialed,
                         const char *name, const char *raft, const char *http,
                         const char *grpc)
{
    struct tnode *n = data;
    PZ_UNUSED(id);
    PZ_UNUSED(name);
    PZ_UNUSED(http);
    PZ_UNUSED(grpc);
    n->infos++;
    n->info_dialed = dialed;
    snprintf(n->info_raft, sizeof n->info_raft, "%s", raft ? raft : "");
}

static void on_peer(void *data, uint64_t id, bool connected)
{
    struct tnode *n = data;
    PZ_UNUSED(id);
    if (connected)
        n->ups++;
    else
        n->downs++;
}

static void on_closed(void *data)
{
    struct tnode *n = data;
    n->closed = true;
}

/* Starts node slot i; port 0 picks one. Returns false if it cannot
 * listen. */
static bool start_node_cfg(int i, uint64_t id, int port,
                           const struct transport_config *base)
{
    struct tnode *n = &nodes[i];
    char addr[64], err[256] = "";
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    struct transport_config cfg = *base;
    cfg.listen_addr = addr;
    cfg.id = id;
    cfg.recv = on_recv;
    cfg.on_peer = on_peer;
    cfg.check_peer = on_check_peer;
    cfg.on_removed = on_removed;
    cfg.on_inbound_closed = on_inbound_closed;
    cfg.on_peer_info = on_peer_info;
    cfg.data = n;
    if (!n->kind_set)
        n->kind = TRANSPORT_PEER_MEMBER;
    cfg.seed = id * 1000 + 1;
    if (cfg.name == NULL)
        cfg.name = i == 0 ? "alpha" : i == 1 ? "bravo" : "charlie";
    n->id = id;
    n->closed = false;
    n->t = transport_new(&loop, &cfg, err, sizeof err);
    if (n->t == NULL) {
        fprintf(stderr, "    transport_new: %s\n", err);
        return false;
    }
    n->port = transport_port(n->t);
    return n->port > 0;
}

static bool start_node(int i, uint64_t id, uint64_t cluster, int port)
{
    struct transport_config cfg = {.cluster_id = cluster};
    return start_node_cfg(i, id, port, &cfg);
}

static void set_peer(int from, uint64_t id, int port)
{
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    pz_assert(transport_set_peer(nodes[from].t, id, addr) == 0);
}

static bool is_closed(void *arg)
{
    return ((struct tnode *)arg)->closed;
}

static bool stop_node(int i)
{
    struct tnode *n = &nodes[i];
    if (n->t == NULL)
        return true;
    transport_close(n->t, on_closed);
    n->t = NULL;
    return run_until(is_closed, n, 3000);
}

static void reset_received(struct tnode *n)
{
    n->n_got = 0;
}

/* Closes everything; returns uv_loop_close's result. */
static int world_close(void)
{
    for (int i = 0; i < MAX_NODES; i++) {
        if (!stop_node(i))
            fprintf(stderr, "    node slot %d did not close\n", i);
        pz_free(nodes[i].digests);
        pz_free(nodes[i].indexes);
        nodes[i].digests = NULL;
        nodes[i].indexes = NULL;
    }
    /* Let the conn layer reap what is left. */
    run_for(20);
    if (holding_port)
        uv_close((uv_handle_t *)&port_holder, NULL);
    uv_close((uv_handle_t *)&prep, NULL);
    uv_close((uv_handle_t *)&ticker, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    int rv = uv_loop_close(&loop);
    pz_log_close();
    unlink(log_path);
    if (conn_count() != 0)
        fprintf(stderr, "    %zu connections left\n", conn_count());
    return rv;
}

struct got_arg {
    struct tnode *n; /* node */
    size_t want;     /* messages */
};

static bool got_at_least(void *arg)
{
    struct got_arg *g = arg;
    return g->n->n_got >= g->want;
}

static bool wait_got(int i, size_t want, uint64_t ms)
{
    struct got_arg g = {&nodes[i], want};
    bool ok = run_until(got_at_least, &g, ms);
    if (!ok)
        fprintf(stderr, "    node slot %d got %zu of %zu messages\n", i,
                nodes[i].n_got, want);
    return ok;
}

static struct transport_peer_stats peer_stats(int i, uint64_t id)
{
    struct transport_peer_stats st;
    memset(&st, 0, sizeof st);
    pz_assert(transport_peer_stats(nodes[i].t, id, &st) == 0);
    return st;
}

/* Sends one test message i -> id with the given index; returns its
 * digest. */
static uint64_t send_msg(int i, uint64_t to, uint64_t index, size_t n_entries,
                         size_t data_len)
{
    struct raft_msg m;
    size_t lens[8];
    for (size_t k = 0; k < 8; k++)
        lens[k] = (data_len + k * 13) % (data_len + 1);
    make_msg(&m, n_entries ? RAFT_MSG_APPEND : RAFT_MSG_HEARTBEAT, nodes[i].id,
             to, index, n_entries, lens);
    uint64_t d = msg_digest(&m);
    int rv = transport_send(nodes[i].t, &m);
    free_msg(&m); /* the transport keeps nothing of m */
    pz_assert(rv == 0);
    return d;
}

/* --- transport tests ------------------------------------------------------ */

TEST(exchange_both_ways)
{
    enum { N = 2000 };
    static uint64_t want_ab[N], want_ba[N];
    world_init();
    CHECK(start_node(0, 1, 77, 0));
    CHECK(start_node(1, 2, 77, 0));
    set_peer(0, 2, nodes[1].port);
    set_peer(1, 1, nodes[0].port);
    /* Queued before any connection exists, interleaved both ways. */
    for (int i = 0; i < N; i++) {
        want_ab[i] = send_msg(0, 2, (uint64_t)i + 1, (size_t)(i % 4), 200);
        want_ba[i] = send_msg(1, 1, (uint64_t)i + 1, 0, 0);
    }
    CHECK(wait_got(1, N, 5000));
    CHECK(wait_got(0, N, 5000));
    for (int i = 0; i < N; i++) {
        CHECK_EQ_INT(nodes[1].indexes[i], i + 1);
        CHECK(nodes[1].digests[i] == want_ab[i]);
        CHECK(nodes[0].digests[i] == want_ba[i]);
    }
    struct transport_peer_stats st = peer_stats(0, 2);
    CHECK(st.connected);
    CHECK_EQ_INT(st.sent_msgs, N);
    CHECK_EQ_INT(st.dropped, 0);
    CHECK_EQ_INT(st.queued_msgs, 0);
    CHECK_EQ_INT(st.connects, 1);
    CHECK_EQ_INT(st.attempts, 1);
    CHECK_EQ_INT(st.reconnects, 0);
    CHECK_EQ_INT(nodes[0].ups, 1);
    CHECK_EQ_INT(nodes[0].downs, 0);
    struct transport_stats ts;
    transport_stats(nodes[1].t, &ts);
    CHECK_EQ_INT(ts.recv_msgs, N);
    CHECK_EQ_INT(ts.inbound, 1);
    CHECK_EQ_INT(ts.inbound_errors, 0);
    /* Two nodes of this version agree on frame checksums, and each frame
     * carries its 4 bytes both in what was sent and what was received. */
    CHECK(st.checksums);
    CHECK(peer_stats(1, 1).checksums);
    CHECK_EQ_INT(ts.recv_bytes, st.sent_bytes);
    /* Once connected, more messages flow with no new connection, also when
     * sent from inside the receive callback (a ping-pong). */
    nodes[1].reply_in_recv = true;
    reset_received(&nodes[0]);
    for (int i = 0; i < 100; i++)
        send_msg(0, 2, 5000 + (uint64_t)i, 1, 10);
    CHECK(wait_got(0, 100, 3000));
    CHECK_EQ_INT(nodes[0].indexes[99], 5099);
    CHECK_EQ_INT(peer_stats(0, 2).attempts, 1);
    CHECK(log_has("raft: connected to peer 2 'bravo'"));
    CHECK(log_has("raft: accepted node 1 'alpha'"));
    CHECK_EQ_INT(world_close(), 0);
}

struct refused_arg {
    int i;       /* node slot */
    uint64_t id; /* peer */
};

static bool refused(void *arg)
{
    struct refused_arg *r = arg;
    return peer_stats(r->i, r->id).refused >= 1;
}

TEST(refuse_cluster_id_mismatch)
{
    world_init();
    CHECK(start_node(0, 1, 0xa, 0));
    CHECK(start_node(1, 2, 0xb, 0));
    set_peer(0, 2, nodes[1].port);
    send_msg(0, 2, 1, 1, 10);
    struct refused_arg ra = {0, 2};
    CHECK(run_until(refused, &ra, 3000));
    run_for(300);
    char want[128];
    snprintf(want, sizeof want,
             "raft: peer 127.0.0.1:%d (node 2) refused us: cluster id "
             "mismatch\n",
             nodes[1].port);
    CHECK(log_has(want)); /* the refusal tells nothing of the acceptor */
    CHECK(log_has("raft: refusing 127.0.0.1:"));
    CHECK(log_has("(node 1 'alpha'): cluster id mismatch (theirs "
                  "000000000000000a, ours 000000000000000b)"));
    CHECK_EQ_INT(nodes[1].n_got, 0);
    struct transport_peer_stats st = peer_stats(0, 2);
    CHECK(!st.connected);
    CHECK_EQ_INT(st.connects, 0);
    CHECK_EQ_INT(st.queued_msgs, 1); /* still waiting, not lost */
    /* Backoff: a handful of attempts in ~0.3 s, not a storm. */
    CHECK(st.attempts >= 2 && st.attempts <= 5);
    struct transport_stats ts;
    transport_stats(nodes[1].t, &ts);
    CHECK(ts.inbound_refused >= 2);
    CHECK_EQ_INT(nodes[0].ups, 0);
    CHECK_EQ_INT(world_close(), 0);
}

/* A dialer without a cluster id (a node still joining) is no first
 * contact: two joining nodes never join each other's "cluster 0". */
TEST(refuse_a_dialer_without_a_cluster)
{
    world_init();
    CHECK(start_node(0, 1, 0, 0));
    CHECK(start_node(1, 2, 0, 0));
    set_peer(0, 2, nodes[1].port);
    send_msg(0, 2, 1, 1, 10);
    struct refused_arg ra = {0, 2};
    CHECK(run_until(refused, &ra, 3000));
    CHECK(log_has("(node 1 'alpha'): cluster id mismatch (theirs "
                  "0000000000000000, ours 0000000000000000)"));
    CHECK_EQ_INT(nodes[1].n_got, 0);
    CHECK_EQ_INT(world_close(), 0);
}

TEST(refuse_duplicate_id)
{
    world_init();
    CHECK(start_node(0, 1, 5, 0));
    CHECK(start_node(1, 1, 5, 0)); /* misconfigured: same id */
    set_peer(0, 2, nodes[1].port);
    send_msg(0, 2, 1, 0, 0);
    struct refused_arg ra = {0, 2};
    CHECK(run_until(refused, &ra, 3000));
    CHECK(log_has("refused us: duplicate node id\n"));
    CHECK(log_has("(node 1 'alpha'): duplicate node id (it uses our id 1)"));
    CHECK_EQ_INT(nodes[1].n_got, 0);
    CHECK_EQ_INT(world_close(), 0);
}

TEST(refuse_token_mismatch)
{
    world_init();
    struct transport_config ca = {.cluster_id = 5, .token = "alpha-token"};
    struct transport_config cb = {.cluster_id = 5, .token = "bravo-token"};
    struct transport_config cn = {.cluster_id = 5, .name = "charlie"};
    CHECK(start_node_cfg(0, 1, 0, &ca));
    CHECK(start_node_cfg(1, 2, 0, &cb));
    CHECK(start_node_cfg(2, 3, 0, &cn)); /* no token at all */
    set_peer(0, 2, nodes[1].port);
    set_peer(2, 2, nodes[1].port);
    send_msg(0, 2, 1, 0, 0);
    send_msg(2, 2, 1, 0, 0);
    struct refused_arg r0 = {0, 2}, r2 = {2, 2};
    CHECK(run_until(refused, &r0, 3000));
    CHECK(run_until(refused, &r2, 3000));
    CHECK(log_has("(node 2) refused us: cluster token mismatch"));
    CHECK(log_has("(node 1 'alpha'): cluster token mismatch"));
    CHECK(log_has("(node 3 'charlie'): cluster token mismatch"));
    CHECK_EQ_INT(nodes[1].n_got, 0);
    /* The right token gets in. */
    struct transport_config cd = {
        .cluster_id = 5, .token = "bravo-token", .name = "delta"};
    CHECK(start_node_cfg(3, 4, 0, &cd));
    set_peer(3, 2, nodes[1].port);
    send_msg(3, 2, 9, 1, 5);
    CHECK(wait_got(1, 1, 3000));
    CHECK_EQ_INT(nodes[1].indexes[0], 9);
    /* A node with no token configured accepts any token. */
    set_peer(0, 3, nodes[2].port);
    send_msg(0, 3, 10, 0, 0);
    CHECK(wait_got(2, 1, 3000));
    CHECK_EQ_INT(world_close(), 0);
}

TEST(refuse_wrong_node)
{
    world_init();
    CHECK(start_node(0, 1, 5, 0));
    CHECK(start_node(1, 2, 5, 0));
    set_peer(0, 3, nodes[1].port); /* node 3 believed to live there */
    send_msg(0, 3, 1, 0, 0);
    struct refused_arg ra = {0, 3};
    CHECK(run_until(refused, &ra, 3000));
    CHECK(log_has("(node 3) refused us: wrong node\n"));
    CHECK(log_has("(it wants node 3, we are 2)"));
    CHECK_EQ_INT(nodes[1].n_got, 0);
    CHECK_EQ_INT(world_close(), 0);
}

/* A hand-driven TCP client for what a transport would never send. */
struct raw {
    uv_tcp_t tcp;      /* socket */
    uv_connect_t creq; /* connect request */
    struct pz_buf in;  /* bytes received */
    int status;        /* connect status */
    bool connected;    /* connect done */
    bool eof;          /* EOF or read error seen */
    bool closed;       /* handle closed */
};

struct raw_write {
    uv_write_t req; /* request */
    char *mem;      /* copy of the bytes */
};

static void raw_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    static char buf[65536];
    PZ_UNUSED(h);
    PZ_UNUSED(hint);
    b->base = buf;
    b->len = sizeof buf;
}

static void raw_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    struct raw *r = s->data;
    if (n < 0) {
        r->eof = true;
        uv_read_stop(s);
        return;
    }
    pz_buf_append(&r->in, b->base, (size_t)n);
}

static void raw_connected(uv_connect_t *req, int status)
{
    struct raw *r = req->data;
    r->status = status;
    r->connected = true;
    if (status == 0)
        uv_read_start((uv_stream_t *)&r->tcp, raw_alloc, raw_read);
    else
        r->eof = true;
}

static bool raw_is_connected(void *arg)
{
    return ((struct raw *)arg)->connected;
}

static bool raw_connect(struct raw *r, int port)
{
    struct sockaddr_in sa;
    memset(r, 0, sizeof *r);
    pz_buf_init(&r->in);
    uv_tcp_init(&loop, &r->tcp);
    r->tcp.data = r;
    r->creq.data = r;
    uv_ip4_addr("127.0.0.1", port, &sa);
    if (uv_tcp_connect(&r->creq, &r->tcp, (struct sockaddr *)&sa,
                       raw_connected) != 0)
        return false;
    return run_until(raw_is_connected, r, 2000) && r->status == 0;
}

static void raw_written(uv_write_t *req, int status)
{
    struct raw_write *w = container_of(req, struct raw_write, req);
    PZ_UNUSED(status);
    pz_free(w->mem);
    pz_free(w);
}

static void raw_send(struct raw *r, const void *p, size_t n)
{
    struct raw_write *w = pz_malloc(sizeof *w);
    w->mem = pz_memdup(p, n);
    uv_buf_t b = uv_buf_init(w->mem, (unsigned)n);
    pz_assert(uv_write(&w->req, (uv_stream_t *)&r->tcp, &b, 1, raw_written) ==
              0);
}

static void raw_send_handshake_crc(struct raw *r, uint32_t version,
                                   uint64_t id, uint64_t cluster, bool crc)
{
    struct pz_buf b;
    pz_buf_init(&b);
    struct raft_handshake h = {.version = version,
                               .cluster_id = cluster,
                               .node_id = id,
                               .name = "raw",
                               .frame_crc = crc};
    pz_assert(raft_codec_encode_handshake(&b, &h, 4096) == 0);
    raw_send(r, b.data, b.len);
    pz_buf_free(&b);
}

static void raw_send_handshake(struct raw *r, uint32_t version, uint64_t id,
                               uint64_t cluster)
{
    raw_send_handshake_crc(r, version, id, cluster, false);
}

/* A heartbeat in a frame sealed with its checksum; flip: a bit of the
 * body to damage after sealing (-1: none). */
static void raw_send_sealed(struct raw *r, uint64_t from, uint64_t to,
                            uint64_t index, int flip)
{
    struct pz_buf b;
    struct raft_msg m = {
        .type = RAFT_MSG_HEARTBEAT, .from = from, .to = to, .index = index};
    pz_buf_init(&b);
    pz_assert(raft_codec_encode_msg(&b, &m, RAFT_FRAME_MAX) == 0);
    raft_codec_seal(&b, 0);
    if (flip >= 0)
        b.data[RAFT_FRAME_HDR + (size_t)flip / 8] ^= (char)(1 << (flip % 8));
    raw_send(r, b.data, b.len);
    pz_buf_free(&b);
}

static void raw_send_msg(struct raw *r, uint64_t from, uint64_t to)
{
    struct pz_buf b;
    struct raft_msg m = {
        .type = RAFT_MSG_HEARTBEAT, .from = from, .to = to, .index = 77};
    pz_buf_init(&b);
    pz_assert(raft_codec_encode_msg(&b, &m, RAFT_FRAME_MAX) == 0);
    raw_send(r, b.data, b.len);
    pz_buf_free(&b);
}

static bool raw_is_eof(void *arg)
{
    return ((struct raw *)arg)->eof;
}

static void raw_closed_cb(uv_handle_t *h)
{
    struct raw *r = h->data;
    r->closed = true;
}

static bool raw_is_closed(void *arg)
{
    return ((struct raw *)arg)->closed;
}

static void raw_close(struct raw *r)
{
    uv_close((uv_handle_t *)&r->tcp, raw_closed_cb);
    run_until(raw_is_closed, r, 1000);
    pz_buf_free(&r->in);
}

/* Decodes the one reply frame a raw client received. */
static int raw_reply(struct raw *r, struct raft_handshake_reply *out)
{
    struct raft_decoded d;
    if (r->in.len < 4 || pz_get_u32((uint8_t *)r->in.data) != r->in.len - 4)
        return -1;
    if (raft_codec_decode((uint8_t *)r->in.data + 4, r->in.len - 4, &d) != 0)
        return -1;
    int kind = d.kind;
    *out = d.reply;
    out->name = out->http_addr = out->grpc_addr = NULL;
    raft_decoded_free(&d);
    return kind == RAFT_FRAME_REPLY ? 0 : -1;
}

TEST(refuse_bad_version)
{
    world_init();
    CHECK(start_node(1, 2, 5, 0));
    struct raw r;
    CHECK(raw_connect(&r, nodes[1].port));
    raw_send_handshake(&r, 99, 7, 5);
    CHECK(run_until(raw_is_eof, &r, 3000)); /* answered, then closed */
    struct raft_handshake_reply rep;
    CHECK_EQ_INT(raw_reply(&r, &rep), 0);
    CHECK_EQ_INT(rep.status, RAFT_HS_BAD_VERSION);
    CHECK_EQ_INT(rep.version, RAFT_PROTO_VERSION);
    CHECK_EQ_INT(rep.node_id, 0); /* identity not disclosed */
    raw_close(&r);
    CHECK(log_has("(node 7 'raw'): unsupported protocol version (theirs 99, "
                  "ours 1)"));
    /* The next version and version 0 are others as well. */
    const uint32_t others[] = {RAFT_PROTO_VERSION + 1, 0};
    for (size_t i = 0; i < PZ_ARRAY_SIZE(others); i++) {
        CHECK(raw_connect(&r, nodes[1].port));
        raw_send_handshake(&r, others[i], 7, 5);
        CHECK(run_until(raw_is_eof, &r, 3000));
        CHECK_EQ_INT(raw_reply(&r, &rep), 0);
        CHECK_EQ_INT(rep.status, RAFT_HS_BAD_VERSION);
        raw_close(&r);
    }
    /* Node id 0 is refused too. */
    CHECK(raw_connect(&r, nodes[1].port));
    raw_send_handshake(&r, 1, 0, 5);
    CHECK(run_until(raw_is_eof, &r, 3000));
    CHECK_EQ_INT(raw_reply(&r, &rep), 0);
    CHECK_EQ_INT(rep.status, RAFT_HS_BAD_HANDSHAKE);
    raw_close(&r);
    CHECK_EQ_INT(world_close(), 0);
}

/* One bad client: connect, send what `kind` says, expect the transport to
 * close the connection and to log `why`. */
static bool garbage_case(int kind, const char *why)
{
    struct raw r;
    if (!raw_connect(&r, nodes[1].port))
        return false;
    static const char http[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    static const uint8_t junk[] = {0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0xff};
    switch (kind) {
    case 0:
        raw_send(&r, http, sizeof http - 1);
        break;
    case 1:
        raw_send(&r, junk, sizeof junk);
        break;
    case 2:
        raw_send_msg(&r, 7, 2);
        break;
    case 3:
        raw_send_handshake(&r, 1, 7, 5);
        raw_send_handshake(&r, 1, 7, 5);
        break;
    case 4:
        raw_send_handshake(&r, 1, 7, 5);
        raw_send_msg(&r, 8, 2);
        break;
    case 6: {
        /* Before the handshake only a small frame is accepted. */
        static const uint8_t big[] = {0x00, 0x01, 0x86, 0xa0, 1, 2, 3};
        raw_send(&r, big, sizeof big);
        break;
    }
    case 7:
        /* Checksums agreed, then a frame damaged after it was sealed. */
        raw_send_handshake_crc(&r, 1, 7, 5, true);
        raw_send_sealed(&r, 7, 2, 77, 13);
        break;
    case 5: {
        /* Huge length prefix after a good handshake. */
        static const uint8_t huge[] = {0x7f, 0xff, 0xff, 0xff, 1, 2, 3};
        raw_send_handshake(&r, 1, 7, 5);
        raw_send(&r, huge, sizeof huge);
        break;
    }
    }
    bool eof = run_until(raw_is_eof, &r, 3000);
    raw_close(&r);
    if (!eof)
        fprintf(stderr, "    case %d: connection not closed\n", kind);
    return eof && log_has(why);
}

/* A dialer that asks for checksums gets them checked, and its sealed
 * frames are delivered. */
TEST(sealed_frames_delivered)
{
    world_init();
    CHECK(start_node(0, 1, 5, 0));
    CHECK(start_node(1, 2, 5, 0));
    struct raw r;
    CHECK(raw_connect(&r, nodes[1].port));
    raw_send_handshake_crc(&r, 1, 1, 5, true);
    raw_send_sealed(&r, 1, 2, 41, -1);
    raw_send_sealed(&r, 1, 2, 42, -1);
    CHECK(wait_got(1, 2, 3000));
    CHECK_EQ_INT(nodes[1].indexes[0], 41);
    CHECK_EQ_INT(nodes[1].indexes[1], 42);
    raw_close(&r);
    CHECK_EQ_INT(world_close(), 0);
}

TEST(garbage_inbound_closed)
{
    world_init();
    CHECK(start_node(0, 1, 5, 0));
    CHECK(start_node(1, 2, 5, 0));
    CHECK(garbage_case(0, "frame of 1195725856 bytes exceeds the limit"));
    CHECK(garbage_case(1, "undecodable frame of 5 bytes (corrupt data)"));
    CHECK(garbage_case(2, "raft message before the handshake"));
    CHECK(garbage_case(3, "from node 7 at 127.0.0.1:"));
    CHECK(log_has("unexpected handshake"));
    CHECK(garbage_case(4, "message from node 8 on this link"));
    CHECK(garbage_case(5, "frame of 2147483647 bytes exceeds the limit"));
    CHECK(garbage_case(6, "frame of 100000 bytes exceeds the limit of "
                          "4096"));
    CHECK(garbage_case(7, "frame checksum mismatch (damaged on the way)"));
    struct transport_stats ts;
    transport_stats(nodes[1].t, &ts);
    CHECK_EQ_INT(ts.inbound_errors, 8);
    CHECK_EQ_INT(ts.inbound_corrupt, 1);
    CHECK_EQ_INT(ts.recv_msgs, 0);
    /* Still serving real peers. */
    set_peer(0, 2, nodes[1].port);
    send_msg(0, 2, 3, 2, 100);
    CHECK(wait_got(1, 1, 3000));
    CHECK_EQ_INT(nodes[1].indexes[0], 3);
    CHECK_EQ_INT(world_close(), 0);
}

struct link_arg {
    int i;          /* node slot */
    uint64_t id;    /* peer */
    bool connected; /* wanted state */
};

static bool link_is(void *arg)
{
    struct link_arg *l = arg;
    return peer_stats(l->i, l->id).connected == l->connected;
}

TEST(peer_restart)
{
    world_init();
    CHECK(start_node(0, 1, 5, 0));
    CHECK(start_node(1, 2, 5, 0));
    int port_b = nodes[1].port;
    set_peer(0, 2, port_b);
    set_peer(1, 1, nodes[0].port);
    send_msg(0, 2, 1, 1, 10);
    send_msg(1, 1, 1, 1, 10);
    CHECK(wait_got(1, 1, 3000));
    CHECK(wait_got(0, 1, 3000));
    /* B goes away: A sees its link drop (EOF) and retries with backoff. */
    CHECK(stop_node(1));
    struct link_arg down = {0, 2, false};
    CHECK(run_until(link_is, &down, 3000));
    CHECK_EQ_INT(nodes[0].downs, 1);
    for (int i = 0; i < 10; i++)
        send_msg(0, 2, 100 + (uint64_t)i, 1, 10);
    run_for(200); /* some refused connection attempts */
    struct transport_peer_stats st = peer_stats(0, 2);
    CHECK_EQ_INT(st.queued_msgs, 10);
    CHECK(st.attempts >= 2);
    /* B comes back on the same port: the queued messages arrive. */
    reset_received(&nodes[1]);
    CHECK(start_node(1, 2, 5, port_b));
    CHECK(wait_got(1, 10, 5000));
    for (int i = 0; i < 10; i++)
        CHECK_EQ_INT(nodes[1].indexes[i], 100 + i);
    st = peer_stats(0, 2);
    CHECK(st.connected);
    CHECK_EQ_INT(st.connects, 2);
    CHECK(st.reconnects >= 2);
    CHECK_EQ_INT(st.dropped, 0);
    CHECK_EQ_INT(nodes[0].ups, 2);
    /* And the new B reaches A. */
    reset_received(&nodes[0]);
    set_peer(1, 1, nodes[0].port);
    send_msg(1, 1, 55, 0, 0);
    CHECK(wait_got(0, 1, 3000));
    CHECK_EQ_INT(nodes[0].indexes[0], 55);
    CHECK(log_has("raft: peer 2 at 127.0.0.1:"));
    CHECK(log_has("connection lost"));
    CHECK_EQ_INT(world_close(), 0);
}

/* A peer that comes back and dials us is dialed back at once, not when
 * our backoff (here 3 s at least) runs out: a restarted follower hears
 * from its leader, whose messages go on our link, as soon as it is up. */
TEST(peer_back_is_redialed_at_once)
{
    world_init();
    struct transport_config slow = {.cluster_id = 5,
                                    .backoff_min_ms = 4000,
                                    .backoff_max_ms = 4000};
    CHECK(start_node_cfg(0, 1, 0, &slow));
    CHECK(start_node(1, 2, 5, 0));
    int port_b = nodes[1].port;
    set_peer(0, 2, port_b);
    set_peer(1, 1, nodes[0].port);
    send_msg(0, 2, 1, 1, 10);
    CHECK(wait_got(1, 1, 3000));
    CHECK(stop_node(1));
    struct link_arg down = {0, 2, false};
    CHECK(run_until(link_is, &down, 3000));
    send_msg(0, 2, 2, 1, 10); /* waits out the backoff: 3 to 5 s */
    run_for(100);
    CHECK_EQ_INT(peer_stats(0, 2).queued_msgs, 1);
    uv_update_time(&loop);
    uint64_t back = uv_now(&loop);
    reset_received(&nodes[1]);
    CHECK(start_node(1, 2, 5, port_b));
    set_peer(1, 1, nodes[0].port);
    send_msg(1, 1, 9, 1, 10); /* B dials A */
    CHECK(wait_got(1, 1, 2000));
    CHECK_EQ_INT(nodes[1].indexes[0], 2);
    uv_update_time(&loop);
    CHECK(uv_now(&loop) - back < 2000);
    CHECK(peer_stats(0, 2).connected);
    CHECK_EQ_INT(world_close(), 0);
}

/* A port nothing listens on: bound by a socket of ours that never
 * listens, so connecting is refused and no one else can take the port
 * while the test runs. */
static int dead_port(void)
{
    struct sockaddr_in sa;
    struct sockaddr_storage ss;
    int len = sizeof ss;
    pz_assert(!holding_port);
    uv_tcp_init(&loop, &port_holder);
    holding_port = true;
    uv_ip4_addr("127.0.0.1", 0, &sa);
    if (uv_tcp_bind(&port_holder, (struct sockaddr *)&sa, 0) != 0 ||
        uv_tcp_getsockname(&port_holder, (struct sockaddr *)&ss, &len) != 0)
        return -1;
    return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

TEST(queue_cap_drops_oldest)
{
    world_init();
    int port = dead_port();
    CHECK(port > 0);
    struct transport_config cfg = {.cluster_id = 5, .max_queue_msgs = 10};
    CHECK(start_node_cfg(0, 1, 0, &cfg));
    set_peer(0, 2, port);
    for (int i = 1; i <= 100; i++)
        send_msg(0, 2, (uint64_t)i, 1, 50);
    struct transport_peer_stats st = peer_stats(0, 2);
    CHECK_EQ_INT(st.queued_msgs, 10);
    CHECK_EQ_INT(st.dropped, 90);
    CHECK(st.queued_bytes > 0);
    run_for(100);
    st = peer_stats(0, 2);
    CHECK(st.attempts >= 2);
    CHECK_EQ_INT(st.queued_msgs, 10);
    /* The peer shows up (at a new address): the 10 newest arrive, in
     * order. */
    CHECK(start_node(1, 2, 5, 0));
    set_peer(0, 2, nodes[1].port);
    CHECK(wait_got(1, 10, 5000));
    run_for(50);
    CHECK_EQ_INT(nodes[1].n_got, 10);
    for (int i = 0; i < 10; i++)
        CHECK_EQ_INT(nodes[1].indexes[i], 91 + i);
    st = peer_stats(0, 2);
    CHECK_EQ_INT(st.dropped, 90);
    CHECK_EQ_INT(st.sent_msgs, 10);
    CHECK_EQ_INT(st.queued_msgs, 0);
    CHECK_EQ_INT(world_close(), 0);
}

TEST(queue_byte_cap)
{
    world_init();
    int port = dead_port();
    CHECK(port > 0);
    struct transport_config cfg = {.cluster_id = 5, .max_queue_bytes = 5000};
    CHECK(start_node_cfg(0, 1, 0, &cfg));
    set_peer(0, 2, port);
    for (int i = 1; i <= 50; i++)
        send_msg(0, 2, (uint64_t)i, 1, 1000);
    struct transport_peer_stats st = peer_stats(0, 2);
    CHECK(st.queued_bytes <= 5000);
    CHECK(st.queued_msgs >= 3 && st.queued_msgs <= 5);
    CHECK_EQ_INT(st.dropped + st.queued_msgs, 50);
    /* One message over the cap on its own is still kept (the newest). */
    send_msg(0, 2, 51, 1, 8000);
    st = peer_stats(0, 2);
    CHECK_EQ_INT(st.queued_msgs, 1);
    /* Over max_frame: refused at once and counted. */
    struct transport_config small = {.cluster_id = 5, .max_frame = 1000};
    CHECK(start_node_cfg(2, 3, 0, &small));
    set_peer(2, 2, port);
    struct raft_msg m;
    size_t lens[] = {2000};
    make_msg(&m, RAFT_MSG_APPEND, 3, 2, 1, 1, lens);
    CHECK_EQ_INT(transport_send(nodes[2].t, &m), PZ_ETOOBIG);
    free_msg(&m);
    CHECK_EQ_INT(peer_stats(2, 2).dropped, 1);
    CHECK_EQ_INT(world_close(), 0);
}

TEST(backoff_is_bounded)
{
    world_init();
    int port = dead_port();
    CHECK(port > 0);
    CHECK(start_node(0, 1, 5, 0));
    set_peer(0, 2, port);
    /* 600 messages over ~1.2 s to a dead peer: attempts follow the backoff
     * (50, 100, 200, 400, 800 ms +-25%), not the messages. */
    uv_update_time(&loop);
    uint64_t start = uv_now(&loop);
    uint64_t index = 1;
    while (uv_now(&loop) - start < 1200) {
        send_msg(0, 2, index++, 0, 0);
        uv_run(&loop, UV_RUN_ONCE);
    }
    struct transport_peer_stats st = peer_stats(0, 2);
    fprintf(stderr, "    %" PRIu64 " messages, %" PRIu64 " attempts\n",
            index - 1, st.attempts);
    CHECK(index > 100);
    CHECK(st.attempts >= 4 && st.attempts <= 7);
    CHECK_EQ_INT(st.reconnects, st.attempts - 1);
    CHECK_EQ_INT(st.connects, 0);
    /* The failure is logged once at warning level, not per attempt. */
    CHECK(log_has("connect: connection refused"));
    CHECK_EQ_INT(world_close(), 0);
}

TEST(change_and_remove_peer)
{
    world_init();
    CHECK(start_node(0, 1, 5, 0));
    CHECK(start_node(1, 2, 5, 0));
    CHECK(start_node(2, 2, 5, 0)); /* node 2, moved to another port */
    set_peer(0, 2, nodes[1].port);
    send_msg(0, 2, 1, 0, 0);
    CHECK(wait_got(1, 1, 3000));
    set_peer(0, 2, nodes[1].port); /* same address: nothing changes */
    CHECK_EQ_INT(nodes[0].downs, 0);
    set_peer(0, 2, nodes[2].port);
    CHECK_EQ_INT(nodes[0].downs, 1);
    send_msg(0, 2, 2, 0, 0);
    CHECK(wait_got(2, 1, 3000));
    CHECK_EQ_INT(nodes[2].indexes[0], 2);
    CHECK_EQ_INT(nodes[1].n_got, 1);
    CHECK(log_has("raft: peer 2 moves from"));
    /* Bad arguments. */
    CHECK_EQ_INT(transport_set_peer(nodes[0].t, 1, "127.0.0.1:1"), PZ_EINVAL);
    CHECK_EQ_INT(transport_set_peer(nodes[0].t, 0, "127.0.0.1:1"), PZ_EINVAL);
    CHECK_EQ_INT(transport_set_peer(nodes[0].t, 9, "nonsense"), PZ_EINVAL);
    /* Removed: sends fail and are counted as unroutable. */
    send_msg(0, 2, 3, 0, 0);
    CHECK_EQ_INT(transport_remove_peer(nodes[0].t, 2), 0);
    CHECK_EQ_INT(transport_remove_peer(nodes[0].t, 2), PZ_ENOTFOUND);
    struct raft_msg m = {.type = RAFT_MSG_HEARTBEAT, .from = 1, .to = 2};
    CHECK_EQ_INT(transport_send(nodes[0].t, &m), PZ_ENOTFOUND);
    struct transport_stats ts;
    transport_stats(nodes[0].t, &ts);
    CHECK_EQ_INT(ts.unroutable, 1);
    CHECK_EQ_INT(ts.peers, 0);
    CHECK_EQ_INT(world_close(), 0);
}

TEST(close_with_work_in_flight)
{
    world_init();
    CHECK(start_node(0, 1, 5, 0));
    CHECK(start_node(1, 2, 5, 0));
    int port = dead_port();
    set_peer(0, 2, nodes[1].port);
    set_peer(0, 3, port);
    send_msg(0, 2, 1, 1, 100);
    CHECK(wait_got(1, 1, 3000));
    /* Queued messages, a connection mid-handshake, one in backoff, one
     * READY with output pending: close drops it all, without leaks. */
    for (int i = 0; i < 50; i++) {
        send_msg(0, 2, 2 + (uint64_t)i, 3, 20000);
        send_msg(0, 3, 2 + (uint64_t)i, 0, 0);
    }
    transport_close(nodes[0].t, on_closed);
    nodes[0].t = NULL;
    CHECK(!nodes[0].closed); /* never from inside transport_close */
    CHECK(run_until(is_closed, &nodes[0], 3000));
    CHECK(start_node(3, 1, 5, 0));
    /* Closing from inside the receive callback: nothing more is delivered,
     * even frames that arrived in the same read. */
    nodes[1].close_in_recv = true;
    reset_received(&nodes[1]);
    set_peer(3, 2, nodes[1].port);
    for (int i = 0; i < 200; i++)
        send_msg(3, 2, 1 + (uint64_t)i, 0, 0);
    CHECK(run_until(is_closed, &nodes[1], 3000));
    CHECK_EQ_INT(nodes[1].n_got, 1);
    int port_b = nodes[1].port;
    nodes[1].close_in_recv = false;
    CHECK(start_node(1, 2, 5, port_b));
    /* Listening on a busy port fails cleanly. */
    char addr[64], err[256];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port_b);
    struct transport_config cfg = {
        .listen_addr = addr, .id = 9, .recv = on_recv};
    CHECK(transport_new(&loop, &cfg, err, sizeof err) == NULL);
    CHECK(strstr(err, "cannot listen") != NULL);
    CHECK_EQ_INT(world_close(), 0);
}

struct tp_arg {
    uint64_t next;  /* next index to send */
    uint64_t total; /* messages to send */
    size_t entries; /* entries per message */
    size_t len;     /* bytes per entry */
};

static bool tp_step(void *arg)
{
    struct tp_arg *a = arg;
    /* Keep a window of messages queued without hitting the cap. */
    while (a->next <= a->total && peer_stats(0, 2).queued_msgs < 2000) {
        struct raft_msg m = {
            .type = RAFT_MSG_APPEND, .from = 1, .to = 2, .index = a->next};
        struct raft_entry e[8];
        static uint8_t payload[4096];
        for (size_t i = 0; i < a->entries; i++) {
            e[i] = (struct raft_entry){.term = 1,
                                       .index = a->next + i,
                                       .data = payload,
                                       .len = a->len};
        }
        m.entries = a->entries ? e : NULL;
        m.n_entries = a->entries;
        pz_assert(transport_send(nodes[0].t, &m) == 0);
        a->next++;
    }
    return nodes[1].n_got >= a->total;
}

static bool throughput(uint64_t total, size_t entries, size_t len)
{
    struct tp_arg a = {1, total, entries, len};
    reset_received(&nodes[1]);
    uint64_t t0 = uv_hrtime();
    bool ok = run_until(tp_step, &a, 20000);
    double s = (double)(uv_hrtime() - t0) / 1e9;
    printf("    transport: %" PRIu64 " msgs x %zu entries x %zu B: %.0f "
           "msgs/s, %.1f MB/s payload\n",
           total, entries, len, (double)total / s,
           (double)total * (double)(entries * len) / s / 1e6);
    for (uint64_t i = 0; ok && i < total; i++)
        ok = nodes[1].indexes[i] == i + 1;
    return ok && peer_stats(0, 2).dropped == 0;
}

TEST(throughput)
{
    world_init();
    CHECK(start_node(0, 1, 5, 0));
    CHECK(start_node(1, 2, 5, 0));
    set_peer(0, 2, nodes[1].port);
    CHECK(throughput(200000, 0, 0));
    CHECK(throughput(50000, 8, 100));
    CHECK(throughput(2000, 4, 4096));
    /* Sequential round trips (request, reply from the receive callback):
     * the latency a replicated write pays per hop pair. */
    set_peer(1, 1, nodes[0].port);
    nodes[1].reply_in_recv = true;
    reset_received(&nodes[0]);
    uint64_t t0 = uv_hrtime();
    enum { RTT_N = 2000 };
    for (int i = 0; i < RTT_N; i++) {
        send_msg(0, 2, 1 + (uint64_t)i, 1, 100);
        CHECK(wait_got(0, (size_t)i + 1, 3000));
    }
    double us = (double)(uv_hrtime() - t0) / 1e3 / RTT_N;
    printf("    transport: %d sequential round trips, %.1f us each\n", RTT_N,
           us);
    CHECK_EQ_INT(world_close(), 0);
}

/* A frame packed with minimal entries cannot make the decoder allocate
 * much more than its own size (it once took 70 times as much): over the
 * budget it is refused. Real entries, with payloads, decode. */
TEST(codec_decode_budget)
{
    enum { N = 1000000 };
    struct raft_msg m = {.type = RAFT_MSG_APPEND, .from = 1, .to = 2,
                         .term = 3};
    m.entries = pz_calloc(N, sizeof *m.entries);
    m.n_entries = N; /* all-zero entries: 2 bytes each on the wire */
    struct pz_buf b;
    pz_buf_init(&b);
    CHECK_EQ_INT(raft_codec_encode_msg(&b, &m, RAFT_FRAME_MAX), 0);
    CHECK(b.len < 3 * N);
    CHECK_EQ_INT(decode_bytes((uint8_t *)b.data + 4, b.len - 4), PZ_ETOOBIG);
    /* Entries as a leader sends them: an index, a term, a command. */
    uint8_t cmd[12];
    memset(cmd, 'x', sizeof cmd);
    for (size_t i = 0; i < 20000; i++)
        m.entries[i] = (struct raft_entry){.term = 3, .index = 1000000 + i,
                                           .data = cmd, .len = sizeof cmd};
    m.n_entries = 20000;
    pz_buf_reset(&b);
    CHECK_EQ_INT(raft_codec_encode_msg(&b, &m, RAFT_FRAME_MAX), 0);
    struct raft_decoded d;
    CHECK_EQ_INT(raft_codec_decode((uint8_t *)b.data + 4, b.len - 4, &d), 0);
    CHECK_EQ_INT(d.msg.n_entries, 20000);
    CHECK_EQ_INT(d.msg.entries[19999].index, 1019999);
    raft_decoded_free(&d);
    pz_free(m.entries);
    pz_buf_free(&b);
}

/* A refusal tells the dialer nothing about the acceptor: no node id, no
 * name, no cluster id (a stranger used to learn the cluster id from one
 * refusal and get in with it). */
TEST(refusal_reveals_nothing)
{
    world_init();
    CHECK(start_node(1, 2, 0x5eed, 0));
    struct raw r;
    CHECK(raw_connect(&r, nodes[1].port));
    raw_send_handshake(&r, 1, 7, 0x1234);
    CHECK(run_until(raw_is_eof, &r, 3000));
    CHECK(r.in.len > 4);
    CHECK(memmem(r.in.data, r.in.len, "bravo", 5) == NULL);
    CHECK(memmem(r.in.data, r.in.len, "\xed\xbd\x01", 3) == NULL);
    struct raft_handshake_reply rep;
    CHECK_EQ_INT(raw_reply(&r, &rep), 0);
    CHECK_EQ_INT(rep.status, RAFT_HS_CLUSTER_MISMATCH);
    CHECK_EQ_INT(rep.node_id, 0);
    raw_close(&r);
    CHECK_EQ_INT(world_close(), 0);
}

/* An id the owner does not know gets in (a node behind the configuration
 * must hear from members added since), a few at a time; a removed member
 * is told, with the index and term of the configuration that removed it,
 * and its owner hears of it. */
TEST(strangers_and_removed)
{
    world_init();
    struct transport_config c1 = {.cluster_id = 5, .max_strangers = 2};
    nodes[1].kind = TRANSPORT_PEER_STRANGER;
    nodes[1].kind_set = true;
    CHECK(start_node_cfg(1, 2, 0, &c1));
    CHECK(start_node(0, 1, 5, 0));
    set_peer(0, 2, nodes[1].port);
    send_msg(0, 2, 1, 0, 0);
    CHECK(wait_got(1, 1, 3000));
    CHECK(log_has("(not in our configuration: a member we have not heard of "
                  "yet?)"));
    /* the stranger's own address is passed on so that it can be answered */
    CHECK_EQ_INT(nodes[1].infos, 1);
    CHECK(!nodes[1].info_dialed);
    /* two more strangers: the oldest link goes */
    struct raw r[2];
    for (int i = 0; i < 2; i++) {
        CHECK(raw_connect(&r[i], nodes[1].port));
        raw_send_handshake(&r[i], 1, 40 + (uint64_t)i, 5);
        run_for(100);
    }
    struct link_arg down = {0, 2, false};
    CHECK(run_until(link_is, &down, 3000));
    CHECK(log_has("closed to make room (2 links from ids not in the "
                  "configuration)"));
    for (int i = 0; i < 2; i++)
        raw_close(&r[i]);
    /* Now the acceptor says it removed us at entry 42. */
    nodes[1].kind = TRANSPORT_PEER_REMOVED;
    nodes[1].kind_index = 42;
    uint64_t deadline = uv_now(&loop) + 5000;
    while (nodes[0].removed_calls == 0 && uv_now(&loop) < deadline) {
        send_msg(0, 2, 2, 0, 0);
        run_for(50);
    }
    CHECK(nodes[0].removed_calls >= 1);
    CHECK_EQ_INT(nodes[0].removed_from, 2);
    CHECK_EQ_INT(nodes[0].removed_index, 42);
    CHECK_EQ_INT(nodes[0].removed_term, 7);
    CHECK(log_has("refused us: removed from the cluster (configuration entry "
                  "42)"));
    CHECK_EQ_INT(world_close(), 0);
}

/* A peer that presents a member's id with another incarnation (a data
 * dir wiped and started again under that name) is not used, whichever
 * side dials: refused as a dialer, dropped as an acceptor. */
TEST(other_incarnation_is_not_used)
{
    world_init();
    struct transport_config c1 = {.cluster_id = 5, .incarnation = 9};
    struct transport_config c2 = {.cluster_id = 5, .incarnation = 11};
    nodes[0].want_inc = 12; /* node 1 expects node 2 as incarnation 12 */
    CHECK(start_node_cfg(0, 1, 0, &c1));
    CHECK(start_node_cfg(1, 2, 0, &c2));
    set_peer(0, 2, nodes[1].port);
    set_peer(1, 1, nodes[0].port);
    for (int k = 0; k < 10; k++) {
        send_msg(0, 2, 1, 0, 0);
        send_msg(1, 1, 2, 0, 0);
        run_for(100);
    }
    CHECK_EQ_INT(nodes[0].n_got, 0);
    CHECK_EQ_INT(nodes[1].n_got, 0);
    CHECK(log_has("answers as 'bravo' with another data dir (incarnation "
                  "11)"));
    CHECK(log_has("refused us: a member of that name has another data dir"));
    /* The incarnation node 1 expects: both ways work. */
    nodes[0].want_inc = 11;
    nodes[1].want_inc = 9;
    send_msg(0, 2, 1, 0, 0);
    CHECK(wait_got(1, 1, 5000));
    send_msg(1, 1, 2, 0, 0);
    CHECK(wait_got(0, 1, 5000));
    CHECK_EQ_INT(world_close(), 0);
}

/* What a dialer says of its Raft address is passed on only to a joining
 * owner; what an acceptor we dialed says always is (dialed). */
TEST(peer_info_trust)
{
    world_init();
    CHECK(start_node(0, 1, 5, 0));
    CHECK(start_node(1, 2, 5, 0)); /* a member already: not joining */
    set_peer(0, 2, nodes[1].port);
    send_msg(0, 2, 1, 0, 0);
    CHECK(wait_got(1, 1, 3000));
    CHECK_EQ_INT(nodes[1].infos, 0); /* the dialer's claims: ignored */
    CHECK(nodes[0].infos >= 1 && nodes[0].info_dialed);
    CHECK_EQ_INT(stop_node(1), true);
    nodes[1].kind = TRANSPORT_PEER_JOINING;
    nodes[1].kind_set = true;
    reset_received(&nodes[1]);
    CHECK(start_node(1, 2, 5, 0));
    set_peer(0, 2, nodes[1].port);
    send_msg(0, 2, 1, 0, 0);
    CHECK(wait_got(1, 1, 5000));
    CHECK_EQ_INT(nodes[1].infos, 1);
    CHECK(!nodes[1].info_dialed);
    /* the listen address as configured (port 0 in these tests) */
    CHECK_EQ_STR(nodes[1].info_raft, "127.0.0.1:0");
    CHECK_EQ_INT(world_close(), 0);
}

/* A handshake must be complete within handshake_timeout_ms of the
 * accept: trickling one byte at a time does not extend it. */
TEST(handshake_deadline)
{
    world_init();
    struct transport_config cfg = {.cluster_id = 5,
                                   .handshake_timeout_ms = 400};
    CHECK(start_node_cfg(1, 2, 0, &cfg));
    struct pz_buf hs;
    pz_buf_init(&hs);
    struct raft_handshake h = {.version = 1, .cluster_id = 5, .node_id = 7,
                               .name = "slow"};
    CHECK_EQ_INT(raft_codec_encode_handshake(&hs, &h, 4096), 0);
    struct raw r;
    CHECK(raw_connect(&r, nodes[1].port));
    uint64_t t0 = uv_now(&loop);
    for (size_t i = 0; i + 1 < hs.len && !r.eof; i++) {
        raw_send(&r, hs.data + i, 1);
        run_for(40);
    }
    CHECK(run_until(raw_is_eof, &r, 3000));
    uint64_t took = uv_now(&loop) - t0;
    CHECK(took >= 350 && took < 1500);
    raw_close(&r);
    pz_buf_free(&hs);
    struct transport_stats ts;
    transport_stats(nodes[1].t, &ts);
    CHECK_EQ_INT(ts.inbound_timeouts, 1);
    CHECK(log_has("no handshake within 400 ms"));
    CHECK_EQ_INT(world_close(), 0);
}

/* Dialers that never finish their handshake cannot hold every slot: past
 * max_unauth the oldest goes, and a member still gets in at once. */
TEST(unauthenticated_dialers_evicted)
{
    enum { SILENT = 12 };
    world_init();
    struct transport_config cfg = {.cluster_id = 5, .max_unauth = 4};
    CHECK(start_node_cfg(1, 2, 0, &cfg));
    CHECK(start_node(0, 1, 5, 0));
    static struct raw rs[SILENT];
    for (int i = 0; i < SILENT; i++)
        CHECK(raw_connect(&rs[i], nodes[1].port));
    run_for(200);
    struct transport_stats ts;
    transport_stats(nodes[1].t, &ts);
    CHECK(ts.inbound <= 4);
    CHECK_EQ_INT(ts.inbound_evicted, SILENT - 4);
    int open = 0;
    for (int i = 0; i < SILENT; i++)
        open += !rs[i].eof;
    CHECK_EQ_INT(open, 4);
    CHECK(rs[SILENT - 1].eof == false); /* the newest stay */
    set_peer(0, 2, nodes[1].port);
    send_msg(0, 2, 1, 1, 10);
    CHECK(wait_got(1, 1, 2000));
    for (int i = 0; i < SILENT; i++)
        raw_close(&rs[i]);
    CHECK_EQ_INT(world_close(), 0);
}

/* A message the owner calls invalid closes the link, counted and logged;
 * the owner hears that the inbound link closed. */
TEST(invalid_message_closes_link)
{
    world_init();
    CHECK(start_node(0, 1, 5, 0));
    CHECK(start_node(1, 2, 5, 0));
    set_peer(0, 2, nodes[1].port);
    send_msg(0, 2, 1, 0, 0);
    CHECK(wait_got(1, 1, 3000));
    nodes[1].invalid = "APPEND contradicts a committed entry";
    send_msg(0, 2, 2, 0, 0);
    struct link_arg down = {0, 2, false};
    CHECK(run_until(link_is, &down, 3000));
    run_for(50);
    struct transport_stats ts;
    transport_stats(nodes[1].t, &ts);
    CHECK_EQ_INT(ts.inbound_invalid, 1);
    CHECK(nodes[1].in_closed >= 1);
    CHECK(log_has("closing connection from node 1 at 127.0.0.1:"));
    CHECK(log_has(": APPEND contradicts a committed entry"));
    /* The peer reconnects and valid traffic flows again. */
    nodes[1].invalid = NULL;
    send_msg(0, 2, 3, 0, 0);
    CHECK(wait_got(1, 2, 5000));
    CHECK_EQ_INT(world_close(), 0);
}

/* Partial frames count in the process's partial-input budget: a
 * stranger's handshake must fit in it, a member's frame is never refused
 * for it (clients meet the budget first). */
TEST(partial_frames_in_the_budget)
{
    world_budget = 8192;
    world_init();
    CHECK(start_node(0, 1, 5, 0));
    CHECK(start_node(1, 2, 5, 0));
    struct raw r[3];
    static const uint8_t hdr[] = {0, 0, 0x0f, 0xa0}; /* 4000 bytes */
    static uint8_t part[3000];
    for (int i = 0; i < 3; i++) {
        CHECK(raw_connect(&r[i], nodes[1].port));
        raw_send(&r[i], hdr, sizeof hdr);
        raw_send(&r[i], part, sizeof part);
        run_for(50);
    }
    CHECK(run_until(raw_is_eof, &r[2], 2000)); /* the third did not fit */
    CHECK(!r[0].eof && !r[1].eof);
    CHECK(log_has("over max-partial-input"));
    CHECK(conn_in_total() <= 8192);
    /* A member's frame bigger than the whole budget still arrives. */
    set_peer(0, 2, nodes[1].port);
    send_msg(0, 2, 1, 1, 200000); /* over one 64 KiB read: buffered */
    CHECK(wait_got(1, 1, 3000));
    for (int i = 0; i < 3; i++)
        raw_close(&r[i]);
    CHECK_EQ_INT(world_close(), 0);
}

/* Links from ids not in the configuration hold a quarter of the budget
 * at most, together: a frame past it closes the link. Once the
 * configuration names the id, the same link's frames are a member's. */
TEST(stranger_frames_share_a_quarter)
{
    world_budget = 400000; /* a quarter: 100,000 bytes */
    world_init();
    struct transport_config c1 = {.cluster_id = 5};
    nodes[1].kind = TRANSPORT_PEER_STRANGER;
    nodes[1].kind_set = true;
    CHECK(start_node_cfg(1, 2, 0, &c1));
    CHECK(start_node(0, 1, 5, 0));
    set_peer(0, 2, nodes[1].port);
    send_msg(0, 2, 1, 1, 100); /* small: a stranger's gets through */
    CHECK(wait_got(1, 1, 5000));
    send_msg(0, 2, 2, 1, 150000);
    struct link_arg down = {0, 2, false};
    CHECK(run_until(link_is, &down, 3000));
    CHECK(log_has("over the partial input allowed to links from ids not in "
                  "the configuration"));
    CHECK_EQ_INT(nodes[1].n_got, 1);
    send_msg(0, 2, 3, 1, 100);
    CHECK(wait_got(1, 2, 5000));
    /* the configuration caught up: the same link takes a big frame */
    nodes[1].kind = TRANSPORT_PEER_MEMBER;
    send_msg(0, 2, 4, 1, 150000);
    CHECK(wait_got(1, 3, 3000));
    CHECK(log_has("is in our configuration now"));
    CHECK(conn_in_total() <= 400000);
    CHECK_EQ_INT(world_close(), 0);
}

/* Making room for a stranger, a link whose id the configuration has
 * named since its handshake is a member's: not the one that goes. */
TEST(stranger_named_since_is_not_evicted)
{
    world_init();
    struct transport_config c1 = {.cluster_id = 5, .max_strangers = 1};
    nodes[1].kind = TRANSPORT_PEER_STRANGER;
    nodes[1].kind_set = true;
    CHECK(start_node_cfg(1, 2, 0, &c1));
    CHECK(start_node(0, 1, 5, 0));
    set_peer(0, 2, nodes[1].port);
    send_msg(0, 2, 1, 1, 100);
    CHECK(wait_got(1, 1, 5000));
    nodes[1].member_id = 1; /* the configuration caught up */
    struct raw r;
    CHECK(raw_connect(&r, nodes[1].port));
    raw_send_handshake(&r, 1, 40, 5);
    run_for(200);
    CHECK(!log_has("closed to make room"));
    send_msg(0, 2, 2, 1, 100);
    CHECK(wait_got(1, 2, 3000));
    CHECK_EQ_INT(nodes[0].downs, 0);
    raw_close(&r);
    CHECK_EQ_INT(world_close(), 0);
}

/* A frame larger than conn-hard-limit (a batch and one of the largest
 * entries, with a limit set low) still goes: the hard limit is for
 * clients, and the link closed on every attempt before. */
TEST(frames_past_the_hard_limit_go)
{
    world_hard = 1u << 20;
    world_init();
    CHECK(start_node(0, 1, 5, 0));
    CHECK(start_node(1, 2, 5, 0));
    set_peer(0, 2, nodes[1].port);
    send_msg(0, 2, 1, 1, 8u << 20);
    CHECK(wait_got(1, 1, 10000));
    CHECK(!log_has("bytes of output not read by the peer"));
    CHECK_EQ_INT(world_close(), 0);
}

/* --- peer mutual TLS ------------------------------------------------------ */

/* Certificates for the TLS tests: self-signed, each naming DNS:NAME, all
 * of them trusted through one CA file (the cluster's CA here: whatever it
 * holds chains). */
#define PKI_MAX 4
struct pki {
    char dir[64];
    char ca[128];
    char crt[PKI_MAX][128], key[PKI_MAX][128];
    int n;
};

static bool pki_add(struct pki *k, const char *name)
{
    int i = k->n++;
    char dir[sizeof k->dir];
    memcpy(dir, k->dir, sizeof dir);
    snprintf(k->crt[i], sizeof k->crt[i], "%s/%s.crt", dir, name);
    snprintf(k->key[i], sizeof k->key[i], "%s/%s.key", dir, name);
    EVP_PKEY *pk = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    if (pk == NULL || x == NULL)
        return false;
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), i + 1);
    X509_gmtime_adj(X509_getm_notBefore(x), -60);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600);
    X509_set_pubkey(x, pk);
    X509_NAME *nm = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(nm, "CN", MBSTRING_ASC,
                               (const unsigned char *)name, -1, -1, 0);
    X509_set_issuer_name(x, nm);
    char san[128];
    snprintf(san, sizeof san, "DNS:%s,IP:127.0.0.1", name);
    X509V3_CTX v3;
    X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
    X509_EXTENSION *ext =
        X509V3_EXT_conf_nid(NULL, &v3, NID_subject_alt_name, san);
    bool ok = ext != NULL && X509_add_ext(x, ext, -1) == 1 &&
              X509_sign(x, pk, EVP_sha256()) > 0;
    X509_EXTENSION_free(ext);
    FILE *f = fopen(k->crt[i], "w");
    FILE *fk = fopen(k->key[i], "w");
    FILE *fc = fopen(k->ca, "a");
    ok = ok && f && fk && fc && PEM_write_X509(f, x) == 1 &&
         PEM_write_X509(fc, x) == 1 &&
         PEM_write_PrivateKey(fk, pk, NULL, NULL, 0, NULL, NULL) == 1;
    if (f)
        fclose(f);
    if (fk)
        fclose(fk);
    if (fc)
        fclose(fc);
    X509_free(x);
    EVP_PKEY_free(pk);
    return ok;
}

/* Certificates naming each of names[0..n-1], in that order. */
static bool pki_make(struct pki *k, const char *const *names, int n)
{
    memset(k, 0, sizeof *k);
    snprintf(k->dir, sizeof k->dir, "/tmp/pz-tpki-XXXXXX");
    if (mkdtemp(k->dir) == NULL)
        return false;
    char dir[sizeof k->dir];
    memcpy(dir, k->dir, sizeof dir);
    snprintf(k->ca, sizeof k->ca, "%s/ca.crt", dir);
    for (int i = 0; i < n; i++)
        if (!pki_add(k, names[i]))
            return false;
    return true;
}

static void pki_drop(struct pki *k)
{
    for (int i = 0; i < k->n; i++) {
        unlink(k->crt[i]);
        unlink(k->key[i]);
    }
    unlink(k->ca);
    rmdir(k->dir);
}

/* Node ids of the names the TLS tests use (transport_config.name_to_id). */
static uint64_t tls_name_to_id(const char *name)
{
    static const char *const names[] = {"alpha", "bravo", "charlie", "mallory"};
    for (size_t i = 0; i < PZ_ARRAY_SIZE(names); i++)
        if (strcmp(name, names[i]) == 0)
            return i + 1;
    return 99;
}

/* The two slots (accepting, dialing) of a node showing certificate i. */
struct tls_pair {
    struct tls_slot in, out;
};

static bool tls_pair_load(struct tls_pair *p, const struct pki *k, int i)
{
    char err[256] = "";
    struct tls_opts o = {.server = true,
                         .cert_file = k->crt[i],
                         .key_file = k->key[i],
                         .ca_file = k->ca,
                         .client_auth = TLS_AUTH_REQUIRE};
    memset(p, 0, sizeof *p);
    if (tls_slot_load(&p->in, "raft", &o, err, sizeof err) < 0) {
        fprintf(stderr, "    tls_slot_load: %s\n", err);
        return false;
    }
    o.server = false;
    if (tls_slot_load(&p->out, "raft dialer", &o, err, sizeof err) < 0) {
        fprintf(stderr, "    tls_slot_load: %s\n", err);
        return false;
    }
    return true;
}

static void tls_pair_clear(struct tls_pair *p)
{
    tls_slot_clear(&p->in);
    tls_slot_clear(&p->out);
}

static bool tls_node(int i, uint64_t id, const struct tls_pair *p,
                     const char *name, const char *token)
{
    struct transport_config c = {.cluster_id = 5,
                                 .name = name,
                                 .token = token,
                                 .tls_in = &p->in,
                                 .tls_out = &p->out,
                                 .name_to_id = tls_name_to_id};
    return start_node_cfg(i, id, 0, &c);
}

/* With peer TLS, a dialer the configuration does not name is let in by
 * the cluster token, as without TLS (a node whose log is behind must
 * hear from members added since): a certificate of the cluster's CA
 * alone, with a token it does not hold, gets nothing. */
TEST(tls_strangers_show_the_token)
{
    static const char *const names[] = {"alpha", "bravo", "charlie"};
    struct pki k;
    struct tls_pair tp[3];
    CHECK(pki_make(&k, names, 3));
    for (int i = 0; i < 3; i++)
        CHECK(tls_pair_load(&tp[i], &k, i));
    world_init();
    nodes[0].kind = TRANSPORT_PEER_STRANGER;
    nodes[0].kind_set = true;
    CHECK(tls_node(0, 1, &tp[0], "alpha", "the-token"));
    CHECK(tls_node(1, 2, &tp[1], "bravo", "the-token"));
    CHECK(tls_node(2, 3, &tp[2], "charlie", "not-the-token"));
    set_peer(1, 1, nodes[0].port);
    send_msg(1, 1, 1, 0, 0);
    CHECK(wait_got(0, 1, 3000));
    CHECK(log_has("(not in our configuration: a member we have not heard of "
                  "yet?)"));
    set_peer(2, 1, nodes[0].port);
    send_msg(2, 1, 2, 0, 0);
    struct refused_arg r = {2, 1};
    CHECK(run_until(refused, &r, 3000));
    CHECK(log_has("(node 3 'charlie'): cluster token mismatch"));
    CHECK_EQ_INT(nodes[0].n_got, 1); /* bravo's message only */
    CHECK_EQ_INT(world_close(), 0);
    for (int i = 0; i < 3; i++)
        tls_pair_clear(&tp[i]);
    pki_drop(&k);
}

/* With peer TLS a dialer writes its handshake, which carries the cluster
 * token, only to an acceptor whose certificate names the member it
 * dialed: one answering at that address with another certificate of the
 * cluster's CA is dropped before it hears a byte (here it would refuse
 * a token it does not hold, so any handshake would show in its counters),
 * and the drop counts as a refusal. */
TEST(tls_handshake_only_to_the_dialed_member)
{
    static const char *const names[] = {"alpha", "bravo", "mallory"};
    struct pki k;
    struct tls_pair tp[3];
    CHECK(pki_make(&k, names, 3));
    for (int i = 0; i < 3; i++)
        CHECK(tls_pair_load(&tp[i], &k, i));
    world_init();
    CHECK(tls_node(0, 1, &tp[0], "alpha", "alpha-secret"));
    /* At bravo's address (node 2): mallory's certificate. */
    CHECK(tls_node(1, 2, &tp[2], "mallory", "not-the-token"));
    set_peer(0, 2, nodes[1].port);
    send_msg(0, 2, 1, 0, 0);
    struct refused_arg r = {0, 2};
    CHECK(run_until(refused, &r, 3000));
    run_for(300); /* anything written would have arrived */
    struct transport_stats st;
    transport_stats(nodes[1].t, &st);
    CHECK_EQ_INT(st.inbound_refused, 0);
    CHECK_EQ_INT(st.recv_msgs, 0);
    struct transport_peer_stats ps = peer_stats(0, 2);
    CHECK_EQ_INT(ps.connects, 0);
    CHECK(!ps.connected);
    CHECK(log_has("its TLS certificate does not name node 2: not sending it "
                  "our handshake"));
    /* Bravo's own certificate there: the link comes up. */
    CHECK(stop_node(1));
    CHECK(tls_node(1, 2, &tp[1], "bravo", "alpha-secret"));
    set_peer(0, 2, nodes[1].port);
    send_msg(0, 2, 2, 0, 0);
    CHECK(wait_got(1, 1, 5000));
    CHECK_EQ_INT(world_close(), 0);
    for (int i = 0; i < 3; i++)
        tls_pair_clear(&tp[i]);
    pki_drop(&k);
}

/* Peer TLS maps names to ids both ways (the acceptor: the name a dialer
 * claims; the dialer: the member it dialed, which it knows by id only),
 * so a transport given TLS slots without name_to_id is refused at
 * creation, instead of a dialer refusing every acceptor later. */
TEST(tls_needs_name_to_id)
{
    static const char *const names[] = {"alpha"};
    struct pki k;
    struct tls_pair tp;
    CHECK(pki_make(&k, names, 1));
    CHECK(tls_pair_load(&tp, &k, 0));
    world_init();
    char err[256] = "";
    struct transport_config cfg = {.listen_addr = "127.0.0.1:0",
                                   .id = 1,
                                   .recv = on_recv,
                                   .tls_out = &tp.out};
    CHECK(transport_new(&loop, &cfg, err, sizeof err) == NULL);
    CHECK_EQ_STR(err, "raft transport: peer TLS without name_to_id");
    cfg.tls_out = NULL;
    cfg.tls_in = &tp.in;
    err[0] = '\0';
    CHECK(transport_new(&loop, &cfg, err, sizeof err) == NULL);
    CHECK_EQ_STR(err, "raft transport: peer TLS without name_to_id");
    /* With it, or without TLS, the same config starts. */
    CHECK(tls_node(0, 1, &tp, "alpha", NULL));
    CHECK(start_node(1, 2, 0, 0));
    CHECK_EQ_INT(world_close(), 0);
    tls_pair_clear(&tp);
    pki_drop(&k);
}

static const struct test_case cases[] = {
    TEST_ENTRY(codec_roundtrip_every_type),
    TEST_ENTRY(codec_encode_matches_protobuf_c),
    TEST_ENTRY(codec_large_payloads),
    TEST_ENTRY(codec_handshake_roundtrip),
    TEST_ENTRY(codec_malformed_rejected),
    TEST_ENTRY(codec_decode_matches_protobuf_c),
    TEST_ENTRY(codec_decode_refusals_of_its_own),
    TEST_ENTRY(codec_decode_payloads_in_place),
    TEST_ENTRY(codec_decode_alloc_failure),
    TEST_ENTRY(frame_parser_pieces),
    TEST_ENTRY(frame_parser_checksum),
    TEST_ENTRY(sealed_frames_delivered),
    TEST_ENTRY(frame_parser_limit),
    TEST_ENTRY(exchange_both_ways),
    TEST_ENTRY(refuse_cluster_id_mismatch),
    TEST_ENTRY(refuse_a_dialer_without_a_cluster),
    TEST_ENTRY(refuse_duplicate_id),
    TEST_ENTRY(refuse_token_mismatch),
    TEST_ENTRY(refuse_wrong_node),
    TEST_ENTRY(refuse_bad_version),
    TEST_ENTRY(garbage_inbound_closed),
    TEST_ENTRY(codec_decode_budget),
    TEST_ENTRY(refusal_reveals_nothing),
    TEST_ENTRY(strangers_and_removed),
    TEST_ENTRY(other_incarnation_is_not_used),
    TEST_ENTRY(peer_info_trust),
    TEST_ENTRY(handshake_deadline),
    TEST_ENTRY(unauthenticated_dialers_evicted),
    TEST_ENTRY(invalid_message_closes_link),
    TEST_ENTRY(partial_frames_in_the_budget),
    TEST_ENTRY(stranger_frames_share_a_quarter),
    TEST_ENTRY(stranger_named_since_is_not_evicted),
    TEST_ENTRY(frames_past_the_hard_limit_go),
    TEST_ENTRY(tls_strangers_show_the_token),
    TEST_ENTRY(tls_handshake_only_to_the_dialed_member),
    TEST_ENTRY(tls_needs_name_to_id),
    TEST_ENTRY(peer_restart),
    TEST_ENTRY(peer_back_is_redialed_at_once),
    TEST_ENTRY(queue_cap_drops_oldest),
    TEST_ENTRY(queue_byte_cap),
    TEST_ENTRY(backoff_is_bounded),
    TEST_ENTRY(change_and_remove_peer),
    TEST_ENTRY(close_with_work_in_flight),
    TEST_ENTRY(throughput),
    TEST_END};
const struct test_suite suite_transport = {"transport", cases};
