/* test_grpc_frame.c - gRPC message framing fed whole, in pieces and one
 * byte at a time; status names; grpc-timeout; grpc-message encoding;
 * content-type rules. */
#include <stdlib.h>

#include "grpc_frame.h"
#include "test.h"

/* Three messages back to back: "abc", "" (empty), 300 bytes of 'x'. */
static void build_stream(struct pz_buf *b)
{
    char big[300];
    memset(big, 'x', sizeof big);
    pz_buf_init(b);
    grpc_frame_append(b, "abc", 3);
    grpc_frame_append(b, "", 0);
    grpc_frame_append(b, big, sizeof big);
}

/* Feed stream in pieces of `step` bytes; collect message lengths. */
static int feed_in_steps(const struct pz_buf *b, size_t step, size_t *lens,
                         int max_msgs, bool *payload_ok)
{
    struct grpc_reader r;
    int n = 0;
    grpc_reader_init(&r, 1000);
    *payload_ok = true;
    for (size_t off = 0; off < b->len;) {
        size_t chunk = PZ_MIN(step, b->len - off);
        size_t pos = 0;
        while (pos < chunk) {
            size_t used;
            int rv = grpc_reader_feed(&r, (const uint8_t *)b->data + off + pos,
                                      chunk - pos, &used);
            pos += used;
            if (rv == GRPC_READ_MESSAGE) {
                if (n < max_msgs)
                    lens[n] = r.msg.len;
                if (n == 0 && memcmp(r.msg.data, "abc", 3) != 0)
                    *payload_ok = false;
                if (n == 2 &&
                    (r.msg.data[0] != 'x' || r.msg.data[r.msg.len - 1] != 'x'))
                    *payload_ok = false;
                if (r.compressed)
                    *payload_ok = false;
                n++;
                grpc_reader_next(&r);
            } else if (rv != GRPC_READ_MORE) {
                n = -100;
                break;
            }
        }
        off += chunk;
    }
    if (grpc_reader_partial(&r))
        n = -200;
    grpc_reader_free(&r);
    return n;
}

TEST(reader_whole_and_pieces)
{
    struct pz_buf b;
    build_stream(&b);
    static const size_t steps[] = {1, 2, 3, 4, 5, 6, 7, 64, 1000};
    for (size_t i = 0; i < PZ_ARRAY_SIZE(steps); i++) {
        size_t lens[4] = {0};
        bool ok;
        int n = feed_in_steps(&b, steps[i], lens, 4, &ok);
        CHECK_EQ_INT(n, 3);
        CHECK(ok);
        CHECK_EQ_INT(lens[0], 3);
        CHECK_EQ_INT(lens[1], 0);
        CHECK_EQ_INT(lens[2], 300);
    }
    pz_buf_free(&b);
}

TEST(reader_stops_at_message_boundary)
{
    struct pz_buf b;
    build_stream(&b);
    struct grpc_reader r;
    grpc_reader_init(&r, 1000);
    size_t used;
    CHECK_EQ_INT(grpc_reader_feed(&r, (uint8_t *)b.data, b.len, &used),
                 GRPC_READ_MESSAGE);
    CHECK_EQ_INT(used, 8); /* only the first message */
    /* Feeding again before next() consumes nothing. */
    size_t used2 = 99;
    CHECK_EQ_INT(
        grpc_reader_feed(&r, (uint8_t *)b.data + used, b.len - used, &used2),
        GRPC_READ_MESSAGE);
    CHECK_EQ_INT(used2, 0);
    CHECK_EQ_INT(r.messages, 1);
    grpc_reader_next(&r);
    CHECK(!grpc_reader_partial(&r));
    grpc_reader_free(&r);
    pz_buf_free(&b);
}

TEST(reader_compressed_flag)
{
    uint8_t m[] = {1, 0, 0, 0, 2, 'h', 'i'};
    struct grpc_reader r;
    grpc_reader_init(&r, 10);
    size_t used;
    CHECK_EQ_INT(grpc_reader_feed(&r, m, sizeof m, &used), GRPC_READ_MESSAGE);
    CHECK(r.compressed);
    CHECK_EQ_INT(r.msg.len, 2);
    grpc_reader_next(&r);
    CHECK(!r.compressed);
    /* A reserved bit alone counts too: only a zero flag byte is plain. */
    uint8_t m2[] = {2, 0, 0, 0, 1, 'x'};
    CHECK_EQ_INT(grpc_reader_feed(&r, m2, sizeof m2, &used),
                 GRPC_READ_MESSAGE);
    CHECK(r.compressed);
    grpc_reader_free(&r);
}

TEST(reader_rejects_oversize_before_buffering)
{
    /* Prefix announces 11 bytes with a limit of 10: refused as soon as the
     * fifth prefix byte arrives, byte by byte, nothing buffered. */
    uint8_t m[] = {0, 0, 0, 0, 11, 'a', 'b'};
    struct grpc_reader r;
    grpc_reader_init(&r, 10);
    size_t used;
    for (int i = 0; i < 4; i++) {
        CHECK_EQ_INT(grpc_reader_feed(&r, m + i, 1, &used), GRPC_READ_MORE);
        CHECK_EQ_INT(used, 1);
        CHECK(grpc_reader_partial(&r));
    }
    CHECK_EQ_INT(grpc_reader_feed(&r, m + 4, 3, &used), GRPC_READ_TOO_BIG);
    CHECK_EQ_INT(used, 1);
    CHECK_EQ_INT(r.len, 11);
    CHECK_EQ_INT(r.msg.len, 0);
    CHECK(r.msg.cap == 0);
    /* Dead from now on. */
    CHECK_EQ_INT(grpc_reader_feed(&r, m + 5, 2, &used), GRPC_READ_TOO_BIG);
    CHECK_EQ_INT(used, 0);
    CHECK(!grpc_reader_partial(&r));
    grpc_reader_free(&r);

    /* 4 GiB - 1 announced: refused, no allocation. */
    uint8_t huge[] = {0, 0xff, 0xff, 0xff, 0xff};
    grpc_reader_init(&r, 4 << 20);
    CHECK_EQ_INT(grpc_reader_feed(&r, huge, 5, &used), GRPC_READ_TOO_BIG);
    CHECK(r.msg.cap == 0);
    grpc_reader_free(&r);

    /* Exactly the limit is fine. */
    uint8_t ok[15] = {0, 0, 0, 0, 10};
    grpc_reader_init(&r, 10);
    CHECK_EQ_INT(grpc_reader_feed(&r, ok, sizeof ok, &used), GRPC_READ_MESSAGE);
    CHECK_EQ_INT(r.msg.len, 10);
    grpc_reader_free(&r);
}

TEST(reader_truncated)
{
    /* A length prefix larger than the body that follows. */
    uint8_t m[] = {0, 0, 0, 0, 9, 'a', 'b', 'c'};
    struct grpc_reader r;
    grpc_reader_init(&r, 100);
    size_t used;
    CHECK(!grpc_reader_partial(&r));
    CHECK_EQ_INT(grpc_reader_feed(&r, m, sizeof m, &used), GRPC_READ_MORE);
    CHECK_EQ_INT(used, sizeof m);
    CHECK(grpc_reader_partial(&r));
    grpc_reader_free(&r);

    /* Only part of a prefix. */
    grpc_reader_init(&r, 100);
    CHECK_EQ_INT(grpc_reader_feed(&r, m, 3, &used), GRPC_READ_MORE);
    CHECK(grpc_reader_partial(&r));
    grpc_reader_free(&r);
}

TEST(reader_large_message_one_byte_at_a_time)
{
    struct pz_buf b;
    pz_buf_init(&b);
    size_t n = 200 * 1024;
    char *payload = pz_malloc(n);
    for (size_t i = 0; i < n; i++)
        payload[i] = (char)(i * 7);
    grpc_frame_append(&b, payload, n);
    struct grpc_reader r;
    grpc_reader_init(&r, n);
    int got = 0;
    for (size_t i = 0; i < b.len; i++) {
        size_t used;
        int rv = grpc_reader_feed(&r, (uint8_t *)b.data + i, 1, &used);
        CHECK_EQ_INT(used, 1);
        if (rv == GRPC_READ_MESSAGE) {
            CHECK_EQ_INT(i, b.len - 1);
            CHECK_EQ_INT(r.msg.len, n);
            CHECK(memcmp(r.msg.data, payload, n) == 0);
            got++;
        }
    }
    CHECK_EQ_INT(got, 1);
    grpc_reader_free(&r);
    pz_free(payload);
    pz_buf_free(&b);
}

TEST(frame_header)
{
    uint8_t h[5];
    grpc_frame_header(h, false, 0x01020304);
    CHECK(h[0] == 0 && h[1] == 1 && h[2] == 2 && h[3] == 3 && h[4] == 4);
    grpc_frame_header(h, true, 7);
    CHECK(h[0] == 1 && h[4] == 7);
}

TEST(status_names)
{
    CHECK_EQ_STR(grpc_status_name(GRPC_OK), "OK");
    CHECK_EQ_STR(grpc_status_name(3), "INVALID_ARGUMENT");
    CHECK_EQ_STR(grpc_status_name(4), "DEADLINE_EXCEEDED");
    CHECK_EQ_STR(grpc_status_name(8), "RESOURCE_EXHAUSTED");
    CHECK_EQ_STR(grpc_status_name(12), "UNIMPLEMENTED");
    CHECK_EQ_STR(grpc_status_name(13), "INTERNAL");
    CHECK_EQ_STR(grpc_status_name(14), "UNAVAILABLE");
    CHECK_EQ_STR(grpc_status_name(16), "UNAUTHENTICATED");
    CHECK_EQ_STR(grpc_status_name(17), "UNKNOWN");
    CHECK_EQ_STR(grpc_status_name(-1), "UNKNOWN");
    CHECK_EQ_INT(grpc_status_parse("0", 1), 0);
    CHECK_EQ_INT(grpc_status_parse("14", 2), 14);
    CHECK_EQ_INT(grpc_status_parse("", 0), -1);
    CHECK_EQ_INT(grpc_status_parse("1x", 2), -1);
    CHECK_EQ_INT(grpc_status_parse("100", 3), -1);
    CHECK_EQ_INT(grpc_status_from_http(404), GRPC_UNIMPLEMENTED);
    CHECK_EQ_INT(grpc_status_from_http(503), GRPC_UNAVAILABLE);
    CHECK_EQ_INT(grpc_status_from_http(415), GRPC_UNKNOWN);
}

static int parse_to(const char *s, uint64_t *ms)
{
    return grpc_timeout_parse(s, strlen(s), ms);
}

TEST(timeout_parse)
{
    uint64_t ms = 0;
    CHECK_EQ_INT(parse_to("1H", &ms), 0);
    CHECK_EQ_INT(ms, 3600000);
    CHECK_EQ_INT(parse_to("2M", &ms), 0);
    CHECK_EQ_INT(ms, 120000);
    CHECK_EQ_INT(parse_to("3S", &ms), 0);
    CHECK_EQ_INT(ms, 3000);
    CHECK_EQ_INT(parse_to("250m", &ms), 0);
    CHECK_EQ_INT(ms, 250);
    CHECK_EQ_INT(parse_to("1500u", &ms), 0);
    CHECK_EQ_INT(ms, 2); /* rounded up */
    CHECK_EQ_INT(parse_to("1n", &ms), 0);
    CHECK_EQ_INT(ms, 1);
    CHECK_EQ_INT(parse_to("0m", &ms), 0);
    CHECK_EQ_INT(ms, 0);
    CHECK_EQ_INT(parse_to("99999999H", &ms), 0);
    CHECK(ms == 99999999ull * 3600000ull);
    CHECK_EQ_INT(parse_to("999999999m", &ms), PZ_EINVAL); /* 9 digits */
    CHECK_EQ_INT(parse_to("m", &ms), PZ_EINVAL);
    CHECK_EQ_INT(parse_to("10", &ms), PZ_EINVAL);
    CHECK_EQ_INT(parse_to("10x", &ms), PZ_EINVAL);
    CHECK_EQ_INT(parse_to("-1S", &ms), PZ_EINVAL);
    CHECK_EQ_INT(parse_to("1 S", &ms), PZ_EINVAL);
    CHECK_EQ_INT(parse_to("", &ms), PZ_EINVAL);
}

TEST(timeout_format)
{
    char b[16];
    uint64_t back;
    CHECK_EQ_INT(grpc_timeout_format(250, b, sizeof b), 4);
    CHECK_EQ_STR(b, "250m");
    grpc_timeout_format(0, b, sizeof b);
    CHECK_EQ_STR(b, "0m");
    grpc_timeout_format(99999999, b, sizeof b);
    CHECK_EQ_STR(b, "99999999m");
    grpc_timeout_format(100000000, b, sizeof b);
    CHECK_EQ_STR(b, "100000S");
    grpc_timeout_format(100000001, b, sizeof b);
    CHECK_EQ_STR(b, "100001S"); /* rounded up */
    grpc_timeout_format(UINT64_MAX, b, sizeof b);
    CHECK_EQ_STR(b, "99999999H");
    /* Round trip never shortens a timeout. */
    static const uint64_t v[] = {1, 999, 123456789, 5000000000ull};
    for (size_t i = 0; i < PZ_ARRAY_SIZE(v); i++) {
        size_t n = grpc_timeout_format(v[i], b, sizeof b);
        CHECK_EQ_INT(grpc_timeout_parse(b, n, &back), 0);
        CHECK(back >= v[i]);
    }
}

static char *encode(const char *s, size_t len, size_t max)
{
    struct pz_buf b;
    pz_buf_init(&b);
    grpc_message_encode(&b, s, len, max);
    pz_buf_append(&b, "", 1);
    return b.data;
}

TEST(message_encode)
{
    char *e = encode("key is required", 15, 100);
    CHECK_EQ_STR(e, "key is required");
    pz_free(e);
    e = encode("50% done\n", 9, 100);
    CHECK_EQ_STR(e, "50%25 done%0A");
    pz_free(e);
    e = encode("caf\xc3\xa9", 5, 100);
    CHECK_EQ_STR(e, "caf%C3%A9");
    pz_free(e);
    /* Cut before the escape that does not fit. */
    e = encode("ab%cd", 5, 4);
    CHECK_EQ_STR(e, "ab");
    pz_free(e);
    /* Never inside a UTF-8 sequence: 3 + 6 bytes needed for "a\xc3\xa9". */
    e = encode("a\xc3\xa9z", 4, 6);
    CHECK_EQ_STR(e, "a");
    pz_free(e);
    e = encode("a\xc3\xa9z", 4, 7);
    CHECK_EQ_STR(e, "a%C3%A9");
    pz_free(e);
    /* Nor inside a 3-byte one (leads 0xE0 to 0xEF) or a 4-byte one:
     * 9 and 12 bytes, one short of the room needed. */
    static const char *const wide[] = {"a\xe0\xa0\x80", "a\xe2\x82\xac",
                                       "a\xef\xbf\xbf"};
    for (size_t i = 0; i < PZ_ARRAY_SIZE(wide); i++) {
        e = encode(wide[i], 4, 9);
        CHECK_EQ_STR(e, "a");
        pz_free(e);
    }
    e = encode("a\xe2\x82\xac", 4, 10);
    CHECK_EQ_STR(e, "a%E2%82%AC");
    pz_free(e);
    e = encode("a\xf0\x9f\x98\x80", 5, 12);
    CHECK_EQ_STR(e, "a");
    pz_free(e);
    /* A stray continuation byte or a truncated sequence goes alone. */
    e = encode("\xa9\xc3", 2, 100);
    CHECK_EQ_STR(e, "%A9%C3");
    pz_free(e);
    /* So do bytes that only look like a character: a lead byte before
     * another lead, 0xC0 (always overlong), 0xF5 (past U+10FFFF), each
     * cut at the first byte that does not fit. */
    e = encode("a\xc3\xc3", 3, 4);
    CHECK_EQ_STR(e, "a%C3");
    pz_free(e);
    e = encode("a\xc0\xaf", 3, 4);
    CHECK_EQ_STR(e, "a%C0");
    pz_free(e);
    e = encode("a\xf5\x80\x80\x80", 5, 6);
    CHECK_EQ_STR(e, "a%F5");
    pz_free(e);
}

static char *decode(const char *s)
{
    struct pz_buf b;
    pz_buf_init(&b);
    grpc_message_decode(&b, s, strlen(s));
    return b.data;
}

TEST(message_decode)
{
    char *d = decode("50%25 done%0A");
    CHECK_EQ_STR(d, "50% done\n");
    pz_free(d);
    d = decode("caf%C3%a9");
    CHECK_EQ_STR(d, "caf\xc3\xa9");
    pz_free(d);
    d = decode("bad %zz and %4");
    CHECK_EQ_STR(d, "bad %zz and %4");
    pz_free(d);
    d = decode("end%");
    CHECK_EQ_STR(d, "end%");
    pz_free(d);
    d = decode("");
    CHECK_EQ_STR(d, "");
    pz_free(d);
}

static bool ct(const char *s)
{
    return grpc_content_type_ok(s, strlen(s));
}

TEST(content_type)
{
    CHECK(ct("application/grpc"));
    CHECK(ct("application/grpc+proto"));
    CHECK(ct("application/grpc;charset=utf-8"));
    CHECK(ct("Application/GRPC"));
    CHECK(!ct("application/grpcx"));
    CHECK(!ct("application/json"));
    CHECK(!ct("application/grp"));
    CHECK(!ct("text/plain"));
    CHECK(!ct(""));
}

/* The payload buffer follows the bytes that arrived: at most twice them
 * (or 64 KiB), never past the announced length, exactly length + 1 once
 * complete; a large one is let go between messages. */
TEST(reader_buffer_follows_arrivals)
{
    size_t n = 1000 * 1000 + 7;
    struct pz_buf b;
    pz_buf_init(&b);
    char *payload = pz_calloc(1, n);
    grpc_frame_append(&b, payload, n);
    grpc_frame_append(&b, "ab", 2);
    struct grpc_reader r;
    grpc_reader_init(&r, 4 * 1000 * 1000);
    size_t off = 0, used;
    int rv = GRPC_READ_MORE;
    /* The prefix alone allocates nothing. */
    CHECK_EQ_INT(
        grpc_reader_feed(&r, (uint8_t *)b.data, GRPC_FRAME_HEADER, &used),
        GRPC_READ_MORE);
    off = used;
    CHECK_EQ_INT(r.msg.cap, 0);
    while (rv == GRPC_READ_MORE) {
        size_t step = PZ_MIN((size_t)16384, b.len - off);
        rv = grpc_reader_feed(&r, (uint8_t *)b.data + off, step, &used);
        off += used;
        CHECK(r.msg.cap <= PZ_MAX(2 * r.msg.len, (size_t)64 * 1024) + 1);
        CHECK(r.msg.cap <= n + 1);
    }
    CHECK_EQ_INT(rv, GRPC_READ_MESSAGE);
    CHECK_EQ_INT(r.msg.len, n);
    CHECK_EQ_INT(r.msg.cap, n + 1);
    grpc_reader_next(&r);
    CHECK_EQ_INT(r.msg.cap, 0); /* freed: over 64 KiB */
    CHECK_EQ_INT(
        grpc_reader_feed(&r, (uint8_t *)b.data + off, b.len - off, &used),
        GRPC_READ_MESSAGE);
    CHECK_EQ_INT(r.msg.len, 2);
    CHECK(r.msg.cap <= 3);
    grpc_reader_free(&r);
    pz_free(payload);
    pz_buf_free(&b);
}

/* Feed the scanner step bytes at a time; record, after each call, whether
 * it was in the preface and in a header block (one char each per byte
 * position reached: 'P' preface, 'H' header block, '.' neither). Returns
 * the header blocks it counted. */
static uint64_t scan_trace(const uint8_t *p, size_t len, size_t step, char *out)
{
    struct grpc_h2_scan sc;
    grpc_h2_scan_init(&sc);
    for (size_t off = 0; off < len; off += step) {
        size_t n = PZ_MIN(step, len - off);
        grpc_h2_scan_feed(&sc, p + off, n);
        for (size_t i = 0; i < n; i++)
            out[off + i] = grpc_h2_scan_in_preface(&sc)   ? 'P'
                           : grpc_h2_scan_in_headers(&sc) ? 'H'
                                                          : '.';
    }
    out[len] = '\0';
    return sc.blocks;
}

static size_t put_frame(uint8_t *p, uint32_t len, uint8_t type, uint8_t flags,
                        uint32_t stream)
{
    p[0] = (uint8_t)(len >> 16);
    p[1] = (uint8_t)(len >> 8);
    p[2] = (uint8_t)len;
    p[3] = type;
    p[4] = flags;
    pz_put_u32(p + 5, stream);
    memset(p + 9, 'x', len);
    return 9 + len;
}

TEST(h2_scan_preface_and_header_blocks)
{
    uint8_t in[256];
    size_t n = 0;
    memcpy(in, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 24);
    n += 24;
    n += put_frame(in + n, 6, 0x4, 0, 0); /* SETTINGS */
    size_t settings_end = n;
    n += put_frame(in + n, 0, 0x4, 0x1, 0); /* SETTINGS ACK */
    size_t block_start = n;
    n += put_frame(in + n, 3, 0x1, 0x1, 1); /* HEADERS, no END_HEADERS */
    n += put_frame(in + n, 2, 0x9, 0, 1);   /* CONTINUATION */
    size_t last_cont = n;
    n += put_frame(in + n, 2, 0x9, 0x4, 1); /* CONTINUATION, END_HEADERS */
    size_t block_end = n;
    n += put_frame(in + n, 4, 0x0, 0x1, 1); /* DATA */
    size_t data_end = n;
    n += put_frame(in + n, 5, 0x1, 0x4, 3); /* HEADERS, END_HEADERS */
    char whole[256], bytes[256], odd[256];
    CHECK_EQ_INT(scan_trace(in, n, n, whole), 2);
    CHECK_EQ_INT(scan_trace(in, n, 1, bytes), 2);
    CHECK_EQ_INT(scan_trace(in, n, 7, odd), 2);
    /* Fed whole: a closed header block, past the preface. */
    CHECK_EQ_INT(whole[n - 1], '.');
    for (size_t i = 0; i < n; i++) {
        char want = i + 1 < settings_end      ? 'P'
                    : i + 1 < block_start + 9 ? '.'
                    : i + 1 < block_end       ? 'H'
                    : i + 1 < data_end + 9    ? '.'
                    : i + 1 < n               ? 'H'
                                              : '.';
        if (bytes[i] != want)
            fprintf(stderr, "    byte %zu: %c, want %c\n", i, bytes[i], want);
        CHECK_EQ_INT(bytes[i], want);
        /* In pieces: the state after each piece is the byte-wise state at
         * the piece's last byte. */
        size_t last = PZ_MIN((i / 7) * 7 + 6, n - 1);
        CHECK_EQ_INT(odd[i], bytes[last]);
    }
    CHECK(last_cont > block_start);
}

static const struct test_case cases[] = {
    TEST_ENTRY(reader_whole_and_pieces),
    TEST_ENTRY(reader_stops_at_message_boundary),
    TEST_ENTRY(reader_compressed_flag),
    TEST_ENTRY(reader_rejects_oversize_before_buffering),
    TEST_ENTRY(reader_truncated),
    TEST_ENTRY(reader_large_message_one_byte_at_a_time),
    TEST_ENTRY(reader_buffer_follows_arrivals),
    TEST_ENTRY(h2_scan_preface_and_header_blocks),
    TEST_ENTRY(frame_header),
    TEST_ENTRY(status_names),
    TEST_ENTRY(timeout_parse),
    TEST_ENTRY(timeout_format),
    TEST_ENTRY(message_encode),
    TEST_ENTRY(message_decode),
    TEST_ENTRY(content_type),
    TEST_END,
};

const struct test_suite suite_grpc_frame = {"grpc_frame", cases};
